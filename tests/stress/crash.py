#!/usr/bin/env python3
"""
Crash-consistency stress of forkqd (Python 3, stdlib only; `make stress`).

  crash.py --bin BUILDDIR/src --dir WORKDIR --seed N [--kills 90]
      [--fodder 5000] [--workers 4] [--clients 4] [--pace 1.0]

Runs forkqd as its own child (the harness is a child subreaper and reaps
everything; it kills only the forkqd it started). Several client threads
pipeline a mix of submits (tasks that log "$FORKQ_TASK_ID $FORKQ_ATTEMPT
$$" to WORKDIR/runs.log: short, failing, flaky, long, one leaving a
grandchild), a chaos thread sends cancel and retry bursts, and forkqd is
SIGKILLed and restarted at random moments: plain, right after chosen event
lines, after cancel/retry bursts, and during prunes. Then everything is
let finish and the invariants are checked against the API, the tables,
the tasks' own log of their runs and the processes left (see check_*):
every acknowledged task exists and is final, attempt rows are consistent,
every run is an attempt row and no attempt number runs twice, an answered
cancel is kept, status counts equal the table, nothing outlives the
shutdown, the event log parses and names only tasks the table has. Writes WORKDIR/report.json and prints a
summary; exit status 0 when no violation was found, 1 otherwise. A round
takes 1-3 minutes.

An attempt that recovery closed (lost, or canceled when its cancel was
answered before the kill) while its pid was not yet written (forkqd
commits an attempt before it spawns, and its pid up to 10 ms after) has
pid null: that is counted, not a violation (doc/protocol.md). Each attempt
has at most one task.attempt_ended line, and its outcome is the row's: an
end that a kill kept from its commit must not have one, as recovery writes
its own.
"""
import argparse
import collections
import ctypes
import json
import os
import random
import signal
import socket
import sqlite3
import sys
import threading
import time

FINAL = ("succeeded", "failed", "canceled")
RETRYABLE = ("exit", "signal", "timeout", "heartbeat_lost", "lost")
PR_SET_CHILD_SUBREAPER = 36


def now_ms():
    return int(time.time() * 1000)


def log(*a):
    print("[%8.3f]" % (time.monotonic() - T0), *a, flush=True)


T0 = time.monotonic()


# --------------------------------------------------------------------------
# Process management: one reaper thread owns every wait.
class Reaper(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.cond = threading.Condition()
        self.exited = {}

    def run(self):
        while True:
            try:
                pid, status, _ru = os.wait4(-1, 0)
            except ChildProcessError:
                time.sleep(0.01)
                continue
            except InterruptedError:
                continue
            with self.cond:
                self.exited[pid] = status
                self.cond.notify_all()

    def wait(self, pid, timeout):
        end = time.monotonic() + timeout
        with self.cond:
            while pid not in self.exited:
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.exited.pop(pid)

    def done(self, pid):
        with self.cond:
            return pid in self.exited


def proc_env(pid):
    try:
        with open("/proc/%d/environ" % pid, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    env = {}
    for kv in raw.split(b"\0"):
        if b"=" in kv:
            k, v = kv.split(b"=", 1)
            env[k.decode(errors="replace")] = v.decode(errors="replace")
    return env


def proc_stat(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
    except OSError:
        return None
    rest = s[s.rindex(")") + 2:].split()
    return {"state": rest[0], "ppid": int(rest[1]), "comm": s[s.index("(") + 1:s.rindex(")")]}


def scan_run_procs(run_id):
    """Live (non-zombie) processes whose environment carries our run id."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        pid = int(d)
        st = proc_stat(pid)
        if st is None or st["state"] in ("Z", "X"):
            continue
        env = proc_env(pid)
        if env is None or env.get("CRASH_RUN") != run_id:
            continue
        out.append({"pid": pid, "ppid": st["ppid"], "comm": st["comm"],
                    "task": env.get("FORKQ_TASK_ID"),
                    "attempt": env.get("FORKQ_ATTEMPT")})
    return out


# --------------------------------------------------------------------------
class Daemon:
    def __init__(self, args, reaper):
        self.bin = os.path.join(args.bin, "forkqd")
        self.dir = args.dir
        self.sock = os.path.join(args.dir, "sock")
        self.reaper = reaper
        self.pid = None
        self.spawned_at = None
        self.starts = 0
        self.kills = 0
        self.failed_starts = []
        self.argv = [self.bin, "-D", self.dir, "-s", self.sock,
                     "-l", os.path.join(self.dir, "events.log"),
                     "-j", str(args.workers), "--cgroup", "off"]

    def spawn(self):
        errfd = os.open(os.path.join(self.dir, "forkqd.stderr"),
                        os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        fa = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
              (os.POSIX_SPAWN_DUP2, errfd, 1),
              (os.POSIX_SPAWN_DUP2, errfd, 2)]
        with open(os.path.join(self.dir, "forkqd.stderr"), "a") as f:
            f.write("=== start %d at %d\n" % (self.starts + 1, now_ms()))
        self.pid = os.posix_spawn(self.bin, self.argv, dict(os.environ),
                                  file_actions=fa)
        os.close(errfd)
        self.spawned_at = time.monotonic()
        self.starts += 1
        return self.pid

    def wait_ready(self, timeout=20.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.reaper.done(self.pid):
                st = self.reaper.wait(self.pid, 0)
                self.failed_starts.append({"pid": self.pid, "status": st})
                log("forkqd %d exited during start, status %r" % (self.pid, st))
                return False
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(5)
                s.connect(self.sock)
                s.sendall(b'{"op":"status"}\n')
                line = s.makefile("rb").readline()
                s.close()
                if line and json.loads(line).get("ok"):
                    return True
            except (OSError, ValueError):
                pass
            time.sleep(0.005)
        return False

    def start(self):
        for _ in range(5):
            self.spawn()
            if self.wait_ready():
                return True
            if self.failed_starts and self.failed_starts[-1]["pid"] == self.pid:
                pass    # it exited; wait_ready logged and reaped it
            elif not self.reaper.done(self.pid):
                # Never became ready: a finding in itself; kill it.
                log("forkqd %d not ready in time" % self.pid)
                self.failed_starts.append({"pid": self.pid, "status": "not ready"})
                os.kill(self.pid, signal.SIGKILL)
                self.reaper.wait(self.pid, 10)
            time.sleep(0.2)
        raise RuntimeError("forkqd does not start")

    def kill9(self):
        os.kill(self.pid, signal.SIGKILL)
        st = self.reaper.wait(self.pid, 20)
        if st is None:
            raise RuntimeError("forkqd %d did not die after SIGKILL" % self.pid)
        self.kills += 1
        self.pid = None

    def term(self, timeout=120):
        os.kill(self.pid, signal.SIGTERM)
        st = self.reaper.wait(self.pid, timeout)
        self.pid = None
        return st


# --------------------------------------------------------------------------
class Conn:
    """One JSON-lines connection; raises OSError when the daemon is gone."""

    def __init__(self, path, timeout=60):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.f = self.s.makefile("rb")

    def send(self, reqs):
        self.s.sendall(b"".join(json.dumps(r).encode() + b"\n" for r in reqs))

    def recv(self):
        line = self.f.readline()
        if not line:
            raise ConnectionResetError("EOF")
        if not line.endswith(b"\n"):
            raise ConnectionResetError("torn answer line")
        return json.loads(line)

    def call(self, req):
        self.send([req])
        return self.recv()

    def close(self):
        try:
            self.f.close()
            self.s.close()
        except OSError:
            pass


def connect_retry(path, stop, timeout=60):
    while not stop.is_set():
        try:
            return Conn(path, timeout)
        except OSError:
            time.sleep(0.01)
    return None


# --------------------------------------------------------------------------
class State:
    """Everything the harness saw, for the checks."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = {}          # name -> {"kind", "fodder", "t"}
        self.acked = {}         # name -> id
        self.unanswered = set()  # names sent, no answer
        self.refused = {}       # name -> error answer
        self.ops = []           # (t_sent, t_ans or None, op, id, answer or None)
        self.retry_sent = collections.Counter()
        self.retry_acked = collections.Counter()
        self.cancel_acked = collections.defaultdict(list)  # id -> [(t, state)]
        self.last_retry_sent_t = {}
        self.prunes = []        # {"t_sent", "older", "cutoff_max", "answer"}
        self.orphans_after_kill = []   # per kill: list of procs
        self.survivors = []     # procs alive after the restart's recovery
        self.timeouts = []      # answers that never came with a live daemon
        self.notes = []
        self.event_kills = []
        self.lost_before_pid = 0   # lost attempts whose pid was not written


KINDS = [
    # name, weight, argv builder
    ("true", 30),
    ("fail", 12),
    ("rec", 30),
    ("recfail", 10),
    ("recflaky", 8),
    ("reclong", 5),
    ("recbg", 5),
]


def task_argv(kind, logpath, rng):
    rec = 'echo "$FORKQ_TASK_ID $FORKQ_ATTEMPT $$" >> %s' % logpath
    if kind == "true":
        return ["/bin/true"]
    if kind == "fail":
        return ["sh", "-c", "exit 1"]
    if kind == "rec":
        return ["sh", "-c", rec + "; sleep 0.1"]
    if kind == "recfail":
        return ["sh", "-c", rec + "; sleep 0.05; exit 3"]
    if kind == "recflaky":
        return ["sh", "-c", rec + '; sleep 0.05; [ "$FORKQ_ATTEMPT" -ge 2 ]']
    if kind == "reclong":
        return ["sh", "-c", rec + "; sleep %.1f" % rng.uniform(0.8, 2.5)]
    if kind == "recbg":
        # leaves a grandchild in its process group: forkqd must stop it
        return ["sh", "-c", rec + "; (sleep 4 &) ; sleep 0.2"]
    raise ValueError(kind)


class Submitter(threading.Thread):
    def __init__(self, cid, args, st, stop, rng, fodder=False, total=None):
        super().__init__(daemon=True)
        self.cid, self.args, self.st, self.stop = cid, args, st, stop
        self.rng, self.fodder, self.total = rng, fodder, total
        self.seq = 0
        self.sock = os.path.join(args.dir, "sock")
        self.logpath = os.path.join(args.dir, "runs.log")

    def make(self):
        self.seq += 1
        if self.fodder:
            kind = "fodder"
            argv = ["/bin/true"]
        else:
            kind = self.rng.choices([k for k, _ in KINDS],
                                    [w for _, w in KINDS])[0]
            argv = task_argv(kind, self.logpath, self.rng)
        name = "c%d-%d-%s" % (self.cid, self.seq, kind)
        req = {"op": "submit", "argv": argv, "name": name, "max_attempts": 3,
               "backoff_base_ms": 100, "backoff_max_ms": 1500,
               "env": {"CRASH_RUN": self.args.run_id}}
        if self.rng.random() < 0.1:
            req["priority"] = self.rng.randint(-5, 5)
        return name, kind, req

    def run(self):
        c = None
        done = 0
        while not self.stop.is_set():
            if self.total is not None and done >= self.total:
                return
            if c is None:
                c = connect_retry(self.sock, self.stop)
                if c is None:
                    return
            k = self.rng.randint(1, 50 if self.fodder else 12)
            if self.total is not None:
                k = min(k, self.total - done)
            batch = [self.make() for _ in range(k)]
            t = now_ms()
            with self.st.lock:
                for name, kind, _ in batch:
                    self.st.sent[name] = {"kind": kind, "fodder": self.fodder,
                                          "t": t}
                    self.st.unanswered.add(name)
            done += k
            try:
                c.send([r for _, _, r in batch])
                for name, kind, _ in batch:
                    a = c.recv()
                    with self.st.lock:
                        self.st.unanswered.discard(name)
                        if a.get("ok"):
                            self.st.acked[name] = a["task"]["id"]
                            if a["task"]["name"] != name:
                                self.st.notes.append(("answer name mismatch", name, a))
                        else:
                            self.st.refused[name] = a
            except socket.timeout:
                with self.st.lock:
                    self.st.timeouts.append(("submit", self.cid, now_ms()))
                c.close()
                c = None
            except (OSError, ValueError):
                c.close()
                c = None
            if not self.fodder:
                time.sleep(self.rng.uniform(0.05, 0.5) * self.args.pace)


class Chaos(threading.Thread):
    """cancel / retry ops, a few at a time, and bursts when asked."""

    def __init__(self, args, st, stop, rng):
        super().__init__(daemon=True)
        self.args, self.st, self.stop, self.rng = args, st, stop, rng
        self.sock = os.path.join(args.dir, "sock")
        self.burst_req = threading.Event()
        self.burst_sent = threading.Event()

    def pick_ids(self, n):
        with self.st.lock:
            ids = [i for nm, i in self.st.acked.items()
                   if not self.st.sent[nm]["fodder"]]
        if not ids:
            return []
        # bias to recent tasks (still queued or running) and to running ones
        recent = ids[-200:]
        running = []
        try:
            con = db_connect(os.path.join(self.args.dir, "forkq.db"))
            running = [r[0] for r in con.execute(
                "SELECT id FROM tasks WHERE state = 'running'")]
            con.close()
        except sqlite3.Error:
            pass
        out = []
        for _ in range(n):
            r = self.rng.random()
            if running and r < 0.3:
                out.append(self.rng.choice(running))
            else:
                out.append(self.rng.choice(recent if r < 0.8 else ids))
        return out

    def run(self):
        c = None
        while not self.stop.is_set():
            burst = self.burst_req.wait(self.rng.uniform(0.2, 0.8))
            if self.stop.is_set():
                return
            if c is None:
                c = connect_retry(self.sock, self.stop)
                if c is None:
                    return
            n = self.rng.randint(60, 200) if burst else self.rng.randint(2, 15)
            ids = self.pick_ids(n)
            reqs = []
            for i in ids:
                op = "cancel" if self.rng.random() < 0.55 else "retry"
                reqs.append({"op": op, "id": i})
            t = now_ms()
            recs = []
            with self.st.lock:
                for r in reqs:
                    rec = [t, None, r["op"], r["id"], None]
                    self.st.ops.append(rec)
                    recs.append(rec)
                    if r["op"] == "retry":
                        self.st.retry_sent[r["id"]] += 1
                        self.st.last_retry_sent_t[r["id"]] = t
            try:
                c.send(reqs)
                if burst:
                    self.burst_req.clear()
                    self.burst_sent.set()
                for rec in recs:
                    a = c.recv()
                    ta = now_ms()
                    with self.st.lock:
                        rec[1] = ta
                        rec[4] = a
                        if a.get("ok"):
                            tid = rec[3]
                            if rec[2] == "retry":
                                self.st.retry_acked[tid] += 1
                            else:
                                self.st.cancel_acked[tid].append(
                                    (ta, a["task"]["state"]))
            except socket.timeout:
                with self.st.lock:
                    self.st.timeouts.append(("chaos", now_ms()))
                c.close()
                c = None
            except (OSError, ValueError):
                if burst:
                    self.burst_req.clear()
                    self.burst_sent.set()
                c.close()
                c = None


def wait_event(path, needles, timeout):
    """Polls the events log from its current end until a line containing
    one of needles appears; returns that line (or None on timeout)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        off = os.fstat(fd).st_size
        buf = b""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            chunk = os.pread(fd, 65536, off)
            if chunk:
                off += len(chunk)
                buf += chunk
                lines = buf.split(b"\n")
                buf = lines.pop()
                for ln in lines:
                    for nd in needles:
                        if nd in ln:
                            return ln
            else:
                time.sleep(0.0002)
        return None
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
def db_connect(path):
    con = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=30)
    con.row_factory = sqlite3.Row
    return con


def db_snapshot(dbpath):
    con = db_connect(dbpath)
    try:
        tasks = {r["id"]: dict(r) for r in con.execute("SELECT * FROM tasks")}
        atts = collections.defaultdict(list)
        for r in con.execute("SELECT * FROM attempts ORDER BY task_id, n"):
            atts[r["task_id"]].append(dict(r))
        counts = {r[0]: r[1] for r in
                  con.execute("SELECT state, count(*) FROM tasks GROUP BY state")}
        return tasks, atts, counts
    finally:
        con.close()


def wait_fodder_final(dbpath, st, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with st.lock:
            ids = {i for n, i in st.acked.items() if st.sent[n]["fodder"]}
        con = db_connect(dbpath)
        rows = con.execute("SELECT id, state, finished_at FROM tasks").fetchall()
        con.close()
        byid = {r[0]: (r[1], r[2]) for r in rows}
        if all(i in byid and byid[i][0] in FINAL for i in ids):
            return max((byid[i][1] for i in ids), default=0), byid
        time.sleep(0.2)
    return None, None


def events_first_bad(path):
    """Lines of the events log that do not parse (each with where and why),
    how many lines there are, and how many were cut by a kill. A line a
    SIGKILL cut short (a write of many pages can stop part way), which the
    next forkqd ended with a newline, is the start of one event: it is
    counted apart, not as bad. Two events run together are bad."""
    bad, cut = [], 0
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    last = len(lines) - 1
    if lines and lines[-1] == b"":
        lines.pop()
        last = len(lines)
    for i, ln in enumerate(lines):
        try:
            o = json.loads(ln)
            if not isinstance(o, dict) or "event" not in o or "ts" not in o:
                bad.append((i + 1, ln[:300].decode(errors="replace"), "not an event"))
        except ValueError as e:
            if ln.startswith(b'{"ts":') and ln.count(b'{"ts":') == 1:
                cut += 1        # cut by a kill, then ended
                continue
            bad.append((i + 1, ln[:300].decode(errors="replace"), str(e)))
    return bad, len(lines), cut


# --------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kills", type=int, default=70)
    ap.add_argument("--fodder", type=int, default=3000)
    ap.add_argument("--fodder-kills", type=int, default=8)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--pace", type=float, default=1.0,
                    help="multiplies the submitters' pauses")
    ap.add_argument("--drain-timeout", type=float, default=300)
    args = ap.parse_args()
    # Tasks run in / and write their run lines here: absolute paths.
    args.dir, args.bin = os.path.abspath(args.dir), os.path.abspath(args.bin)
    args.run_id = "r%d-%d" % (args.seed, os.getpid())
    rng = random.Random(args.seed)

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
    if os.path.exists(args.dir):
        sys.exit("%s exists; use a fresh directory" % args.dir)
    os.makedirs(args.dir)
    dbpath = os.path.join(args.dir, "forkq.db")
    reaper = Reaper()
    reaper.start()
    st = State()
    d = Daemon(args, reaper)
    sockpath = d.sock
    log("run", args.run_id, "dir", args.dir, "seed", args.seed)

    def kill_and_restart(tag):
        d.kill9()
        time.sleep(0.002)
        orph = scan_run_procs(args.run_id)
        st.orphans_after_kill.append({"kill": d.kills, "tag": tag, "procs": orph})
        d.start()
        # recovery ran before the socket listened: what of the orphans is
        # still alive (and not a process of the new forkqd) survived it
        alive = {p["pid"]: p for p in scan_run_procs(args.run_id)}
        for p in orph:
            q = alive.get(p["pid"])
            if q is not None and q["task"] == p["task"] and q["attempt"] == p["attempt"]:
                st.survivors.append(dict(p, kill=d.kills, tag=tag,
                                         t=now_ms()))

    # ---------------------------------------------------------------- phase 0
    d.start()
    stop_fodder = threading.Event()
    fodder_threads = [Submitter(100 + i, args, st, stop_fodder,
                                random.Random(rng.random()), fodder=True,
                                total=args.fodder // 2) for i in range(2)]
    for t in fodder_threads:
        t.start()
    for k in range(args.fodder_kills):
        time.sleep(rng.uniform(0.05, 0.8))
        kill_and_restart("fodder")
    for t in fodder_threads:
        t.join(120)
    stop_fodder.set()
    t_fodder_done, byid = wait_fodder_final(dbpath, st, 120)
    if t_fodder_done is None:
        st.notes.append("fodder tasks did not all become final within 120 s")
        t_fodder_done = now_ms()
    n_fodder_acked = sum(1 for n in st.acked if st.sent[n]["fodder"])
    early_missing = [(n, i) for n, i in st.acked.items()
                     if st.sent[n]["fodder"] and i not in byid]
    log("phase 0: %d fodder acked, %d kills so far, %d missing" %
        (n_fodder_acked, d.kills, len(early_missing)))
    prune_cutoff = t_fodder_done + 300
    time.sleep(max(0, (prune_cutoff + 2500 - now_ms()) / 1000.0))
    t_stress = now_ms()

    # ---------------------------------------------------------------- phase 1
    stop = threading.Event()
    subs = [Submitter(i, args, st, stop, random.Random(rng.random()))
            for i in range(args.clients)]
    chaos = Chaos(args, st, stop, random.Random(rng.random()))
    for t in subs + [chaos]:
        t.start()
    prune_kill_at = sorted(rng.sample(range(5, args.kills), 2))
    for k in range(args.kills):
        if k in prune_kill_at:
            # prune of many tasks, SIGKILL once its first batches are
            # committed (the table is watched read-only)
            time.sleep(rng.uniform(0.3, 1.0))
            con = db_connect(dbpath)
            n0 = con.execute("SELECT count(*) FROM tasks").fetchone()[0]
            c = connect_retry(sockpath, threading.Event())
            older = now_ms() - prune_cutoff
            rec = {"t_sent": now_ms(), "older": older, "answer": None,
                   "killed": True, "rows_before": n0}
            c.send([{"op": "prune", "older_than_ms": older}])
            want = rng.choice([1, 500, 1000, 2500])
            end = time.monotonic() + 5
            while time.monotonic() < end:
                n1 = con.execute("SELECT count(*) FROM tasks").fetchone()[0]
                if n0 - n1 >= want:
                    break
                time.sleep(0.0005)
            rec["rows_at_kill"] = n1
            con.close()
            c.s.setblocking(False)
            try:
                rec["answer"] = json.loads(c.f.readline() or b"null")
            except (OSError, ValueError, TypeError):
                pass
            st.prunes.append(rec)
            kill_and_restart("prune")
            c.close()
            continue
        if rng.random() < 0.35:
            # SIGKILL right after an event, in the pass that logged it
            needle = rng.choice([b'"task.started"', b'"task.started"',
                                 b'"task.attempt_ended"', b'"task.submitted"',
                                 b'"task.retry_scheduled"', b'"reason":"cancel"',
                                 b'"task.canceled"', b'"task.succeeded"'])
            ln = wait_event(os.path.join(args.dir, "events.log"), [needle], 3.0)
            kill_and_restart("after " + needle.decode() if ln else "plain(no event)")
            if ln:
                st.event_kills.append(ln.decode(errors="replace")[:300])
            continue
        if rng.random() < 0.12:
            # a burst of cancel/retry ops, SIGKILL while forkqd works on it
            time.sleep(rng.uniform(0.2, 0.6))
            chaos.burst_sent.clear()
            chaos.burst_req.set()
            chaos.burst_sent.wait(10)
            time.sleep(rng.uniform(0.0, 0.03))
            kill_and_restart("burst")
            continue
        r = rng.random()
        if r < 0.2:
            up = rng.uniform(1.0, 3.0)
        else:
            up = rng.uniform(0.010, 0.500)
        if rng.random() < 0.3:
            # counted from the spawn: may land during recovery
            time.sleep(max(0, d.spawned_at + up - time.monotonic()))
        else:
            time.sleep(up)
        kill_and_restart("plain")
    log("phase 1 done: %d kills, %d starts" % (d.kills, d.starts))
    stop.set()
    chaos.burst_req.set()
    for t in subs + [chaos]:
        t.join(90)
    alive_threads = [t.name for t in subs + [chaos] if t.is_alive()]
    if alive_threads:
        st.notes.append(("client threads still blocked", alive_threads))

    # ---------------------------------------------------------------- phase 2
    c = connect_retry(sockpath, threading.Event())
    older = now_ms() - prune_cutoff
    t0 = now_ms()
    a = c.call({"op": "prune", "older_than_ms": older})
    st.prunes.append({"t_sent": t0, "older": older, "answer": a,
                      "killed": False})
    c.close()
    log("final prune:", a)

    end = time.monotonic() + args.drain_timeout
    status = None
    while time.monotonic() < end:
        c = connect_retry(sockpath, threading.Event())
        status = c.call({"op": "status"})
        c.close()
        cnt = status["status"]["counts"]
        if cnt["queued"] == 0 and cnt["running"] == 0:
            break
        time.sleep(0.5)
    drained = status is not None and status["status"]["counts"]["queued"] == 0 \
        and status["status"]["counts"]["running"] == 0
    log("drained=%s status=%s" % (drained, status and status["status"]["counts"]))
    time.sleep(0.3)

    # ---------------------------------------------------------------- checks
    V = []   # violations: (invariant, text, evidence)

    def viol(inv, text, **ev):
        V.append({"inv": inv, "text": text, "evidence": ev})

    if not drained:
        viol(1, "queued/running did not reach 0 within the drain bound",
             status=status)
    # A forkqd that does not come back after a kill is a lost supervisor.
    for fs in d.failed_starts:
        viol(0, "forkqd failed to start again after a kill", start=fs)

    # invariant 4: status counts vs the table, while forkqd runs and is idle
    # (only meaningful once drained: a busy forkqd changes rows meanwhile)
    c = connect_retry(sockpath, threading.Event())
    status = c.call({"op": "status"})["status"]
    tasks, atts, counts = db_snapshot(dbpath)
    for s in (("queued", "running", "succeeded", "failed", "canceled")
              if drained else ()):
        if status["counts"].get(s) != counts.get(s, 0):
            viol(4, "status count differs from the table", state=s,
                 status=status["counts"].get(s), table=counts.get(s, 0))

    # list paging through before_id must give exactly the table's ids
    listed, before, pages = [], None, 0
    while True:
        req = {"op": "list", "limit": rng.choice([37, 100, 250])}
        if before is not None:
            req["before_id"] = before
        a = c.call(req)
        pages += 1
        if not a.get("ok"):
            viol(7, "list failed", answer=a)
            break
        ids = [t["id"] for t in a["tasks"]]
        if not ids:
            break
        listed += ids
        before = ids[-1]
        if pages > 100000:
            break
    if drained and listed != sorted(tasks, reverse=True):
        viol(7, "list paging does not give the table's ids newest first",
             listed=len(listed), table=len(tasks),
             missing=sorted(set(tasks) - set(listed))[:20],
             extra=sorted(set(listed) - set(tasks))[:20])

    # get for every acked id still in the table, compared with the rows
    get_ids = sorted(set(st.acked.values()) & set(tasks)) if drained else []
    for i in range(0, len(get_ids), 200):
        chunk = get_ids[i:i + 200]
        c.send([{"op": "get", "id": x} for x in chunk])
        for x in chunk:
            a = c.recv()
            if not a.get("ok"):
                viol(7, "get of a task in the table failed", id=x, answer=a)
                continue
            t = a["task"]
            row = tasks[x]
            for f in ("state", "attempt", "max_attempts", "name", "outcome"):
                if t[f] != row[f]:
                    viol(7, "get differs from the row", id=x, field=f,
                         get=t[f], row=row[f])
            ga = [(o["n"], o["outcome"], o["pid"]) for o in t["attempts"]]
            ra = [(o["n"], o["outcome"], o["pid"]) for o in atts.get(x, [])]
            if ga != ra and not t.get("attempts_omitted"):
                viol(7, "get attempts differ from the rows", id=x, get=ga, rows=ra)
    c.close()

    # --- final shutdown and orphans (invariant 5)
    st_term = d.term(120)
    time.sleep(0.3)
    leftovers = scan_run_procs(args.run_id)
    if st_term is None or not os.WIFEXITED(st_term) or os.WEXITSTATUS(st_term) != 0:
        viol(5, "forkqd did not exit 0 after SIGTERM", status=st_term)
    if leftovers:
        viol(5, "task processes outlived the final shutdown", procs=leftovers)

    tasks, atts, counts = db_snapshot(dbpath)
    name_to_ids = collections.defaultdict(list)
    for t in tasks.values():
        name_to_ids[t["name"]].append(t["id"])

    # --- invariant 1: every acked id exists, with its name, and is final
    pruned_ok = set()
    for nm, i in st.acked.items():
        t = tasks.get(i)
        fod = st.sent[nm]["fodder"]
        if t is None:
            if fod:
                pruned_ok.add(i)
                continue
            viol(1, "acknowledged task missing", name=nm, id=i)
            continue
        if t["name"] != nm:
            viol(1, "acknowledged id now holds another task", id=i,
                 acked_name=nm, row_name=t["name"])
        if t["state"] not in FINAL:
            viol(1, "acknowledged task not final", id=i, state=t["state"])
    for nm, ids in name_to_ids.items():
        if len(ids) > 1:
            viol(1, "one submit stored twice", name=nm, ids=ids)
        if nm not in st.sent:
            viol(1, "task in the table that no one submitted", name=nm, ids=ids)
    unacked_present = sorted(n for n in st.unanswered if n in name_to_ids)
    refused_present = sorted(n for n in st.refused if n in name_to_ids)
    if refused_present:
        viol(1, "a refused submit was stored", names=refused_present[:20])
    fodder_left = [i for nm, i in st.acked.items()
                   if st.sent[nm]["fodder"] and i in tasks]
    final_prune = st.prunes[-1]["answer"] if st.prunes else None
    if fodder_left:
        viol(8, "fodder tasks left after the final prune", n=len(fodder_left),
             sample=fodder_left[:10])

    # orphan attempt rows (prune must take attempts with their task)
    orphan_att = [k for k in atts if k not in tasks]
    if orphan_att:
        viol(8, "attempt rows of deleted tasks", task_ids=orphan_att[:20],
             n=len(orphan_att))
    outdir = os.path.join(args.dir, "output")
    leaked_out = []
    if os.path.isdir(outdir):
        leaked_out = [int(x) for x in os.listdir(outdir)
                      if x.isdigit() and int(x) not in tasks]
    if leaked_out:
        viol(8, "output directories of deleted tasks", task_ids=leaked_out[:20],
             n=len(leaked_out))

    # --- invariant 2: attempts rows agree with the task
    by_outcome = collections.Counter()
    op_idx = collections.defaultdict(list)
    for j, o in enumerate(st.ops):
        op_idx[o[3]].append(j)
    cancel_running_lost = []
    for i, t in tasks.items():
        rows = atts.get(i, [])
        ns = [r["n"] for r in rows]
        for r in rows:
            by_outcome[r["outcome"]] += 1
        ev = dict(id=i, name=t["name"], state=t["state"], attempt=t["attempt"],
                  max_attempts=t["max_attempts"],
                  rows=[(r["n"], r["outcome"], r["pid"], r["started_at"],
                         r["finished_at"]) for r in rows])
        if ns != list(range(1, t["attempt"] + 1)):
            viol(2, "attempt rows are not 1..attempt", **ev)
        if any(r["finished_at"] is None or r["outcome"] is None for r in rows):
            viol(2, "unfinished attempt row after shutdown", **ev)
        if t["attempt"] > t["max_attempts"]:
            viol(2, "more attempts than max_attempts", **ev)
        n_int = sum(1 for r in rows if r["outcome"] == "interrupted")
        per = t["attempts_per_run"]
        base = t["max_attempts"] - n_int
        if per and base % per == 0:
            r_applied = base // per - 1
            if r_applied > st.retry_sent.get(i, 0):
                viol(2, "max_attempts raised more than retries sent", **ev,
                     retries_sent=st.retry_sent.get(i, 0))
            if r_applied < st.retry_acked.get(i, 0):
                viol(2, "acknowledged retry not reflected in max_attempts",
                     **ev, retries_acked=st.retry_acked.get(i, 0))
        else:
            viol(2, "max_attempts not explained by retries and interrupts",
                 **ev)
        succ = [r for r in rows if r["outcome"] == "success"]
        last = rows[-1]["outcome"] if rows else None
        if t["state"] == "succeeded":
            if last != "success" or len(succ) != 1:
                viol(2, "succeeded without a last successful attempt", **ev)
        elif succ:
            viol(2, "a successful attempt on a task that did not succeed", **ev)
        if t["state"] == "failed":
            if last == "exec_failed":
                pass
            elif last in RETRYABLE:
                if t["attempt"] != t["max_attempts"]:
                    viol(2, "failed with attempts left", **ev)
            else:
                viol(2, "failed without a failing last attempt", **ev)
        if t["state"] == "canceled":
            sent_cancel = any(st.ops[j][2] == "cancel" for j in op_idx.get(i, []))
            if not sent_cancel:
                viol(2, "canceled with no cancel sent", **ev)
        # an acknowledged cancel that answered "canceled" is final unless a
        # retry of the task was sent after it (one connection: send order is
        # processing order)
        for j in op_idx.get(i, []):
            o = st.ops[j]
            if o[2] != "cancel" or not (o[4] or {}).get("ok"):
                continue
            later_retry = any(st.ops[k][2] == "retry" for k in op_idx[i] if k > j)
            sstate = o[4]["task"]["state"]
            if later_retry:
                continue
            if sstate == "canceled" and t["state"] != "canceled":
                viol(2, "acknowledged cancel undone", **ev, cancel_ack_t=o[1])
            if sstate == "running" and t["state"] != "canceled":
                cancel_running_lost.append((i, o[1], t["state"], ev["rows"]))

    # --- invariant 3: runs.log against the attempt rows
    runs = collections.defaultdict(list)
    runlog = os.path.join(args.dir, "runs.log")
    n_runs = 0
    bad_runlines = []
    if os.path.exists(runlog):
        with open(runlog) as f:
            for ln in f:
                p = ln.split()
                if len(p) != 3 or not all(x.isdigit() for x in p):
                    bad_runlines.append(ln)
                    continue
                runs[(int(p[0]), int(p[1]))].append(int(p[2]))
                n_runs += 1
    if bad_runlines:
        viol(3, "malformed lines in runs.log", lines=bad_runlines[:5])
    att_keys = {(r["task_id"], r["n"]): r for rows in atts.values() for r in rows}
    for (tid, n), pids in sorted(runs.items()):
        if tid not in tasks:
            viol(3, "a run of a task not in the table", task=tid, attempt=n, pids=pids)
            continue
        r = att_keys.get((tid, n))
        if r is None:
            viol(3, "a run with no attempt row", task=tid, attempt=n, pids=pids,
                 rows=[(x["n"], x["outcome"], x["pid"]) for x in atts.get(tid, [])])
        if len(pids) > 1:
            viol(3, "one attempt number used by several runs", task=tid,
                 attempt=n, pids=pids, row_pid=r and r["pid"],
                 rows=[(x["n"], x["outcome"], x["pid"]) for x in atts.get(tid, [])])
        elif r is not None and r["pid"] is None and (
                r["outcome"] == "lost" or (r["error"] or "").endswith(
                    "forkqd stopped before the attempt ended")):
            st.lost_before_pid += 1
        elif r is not None and r["pid"] != pids[0]:
            viol(3, "the run's pid is not the attempt row's", task=tid,
                 attempt=n, run_pid=pids[0], row_pid=r["pid"])
    for (tid, n), r in att_keys.items():
        kind = st.sent.get(tasks[tid]["name"], {}).get("kind", "")
        if kind.startswith("rec") and r["outcome"] in ("success", "exit") \
                and (tid, n) not in runs:
            viol(3, "an attempt that ran to its end left no run line",
                 task=tid, attempt=n, outcome=r["outcome"])

    # --- invariant 6: events log
    evpath = os.path.join(args.dir, "events.log")
    bad_ev, n_ev, cut_lines = events_first_bad(evpath)
    for ln, text, err in bad_ev:
        viol(6, "events log line does not parse", line=ln, line_text=text,
             error=err)
    # task.started events against the rows (pid per (task, attempt)), and
    # task.submitted against the table: an event goes out once its change
    # is committed, so a kill cannot leave one naming a task the table
    # lacks, whose id the next task then takes under another name.
    started_ev = collections.defaultdict(set)
    ended_ev = collections.defaultdict(list)
    submitted_misnamed = []
    with open(evpath, "rb") as f:
        for ln in f:
            try:
                o = json.loads(ln)
            except ValueError:
                continue
            if o.get("event") == "task.started":
                started_ev[(o["task"], o["attempt"])].add(o["pid"])
            elif o.get("event") == "task.attempt_ended":
                ended_ev[(o["task"], o["attempt"])].append(o.get("outcome"))
            elif (o.get("event") == "task.submitted" and o["task"] in tasks
                  and tasks[o["task"]]["name"] != o.get("name")):
                submitted_misnamed.append((o["task"], o.get("name"),
                                           tasks[o["task"]]["name"]))
    ended_twice = [k for k, c in ended_ev.items() if len(c) > 1]
    if ended_twice:
        viol(6, "task.attempt_ended logged twice for one attempt (the first "
             "for an end that was never committed)", n=len(ended_twice),
             sample=sorted(ended_twice)[:10])
    # An end's event goes out after its commit: the row must say the same.
    ended_unlike_row = []
    for (tid, n), outcomes in sorted(ended_ev.items()):
        if tid not in tasks:
            continue	# pruned since
        r = att_keys.get((tid, n))
        if r is None or any(o != r["outcome"] for o in outcomes):
            ended_unlike_row.append((tid, n, outcomes, r and r["outcome"]))
    if ended_unlike_row:
        viol(6, "task.attempt_ended logged for an end the attempt row does "
             "not have", n=len(ended_unlike_row),
             sample=ended_unlike_row[:10])
    if submitted_misnamed:
        viol(6, "task.submitted logged for a task the table does not have "
             "(its id went to another task)", n=len(submitted_misnamed),
             sample=submitted_misnamed[:10])
    ev_unrecorded = []
    ev_multi = []
    for (tid, n), pids in started_ev.items():
        if tid not in tasks:
            continue
        r = att_keys.get((tid, n))
        if r is None:
            ev_unrecorded.append((tid, n, sorted(pids)))
        elif len(pids) > 1:
            ev_multi.append((tid, n, sorted(pids), r["pid"], r["outcome"]))
    if ev_multi:
        viol(3, "task.started logged with several pids for one attempt number",
             n=len(ev_multi), sample=ev_multi[:10])
    if ev_unrecorded:
        viol(3, "task.started logged for attempts not in the table",
             n=len(ev_unrecorded), sample=ev_unrecorded[:10])

    # orphans that survived a restart's recovery
    if st.survivors:
        viol(5, "task processes survived the recovery of the next start",
             n=len(st.survivors), sample=st.survivors[:10])

    # ---------------------------------------------------------------- report
    vids = set()
    for v in V:
        for key in ("id", "task"):
            if isinstance(v["evidence"].get(key), int):
                vids.add(v["evidence"][key])
    ops_of_violating = {i: [st.ops[j] for j in op_idx.get(i, [])] for i in sorted(vids)}
    rep = {
        "ops_of_violating_tasks": ops_of_violating,
        "run_id": args.run_id, "seed": args.seed, "dir": args.dir,
        "submits_sent": len(st.sent), "acked": len(st.acked),
        "fodder_acked": n_fodder_acked,
        "unanswered": len(st.unanswered),
        "unanswered_but_stored": len(unacked_present),
        "refused": len(st.refused),
        "refused_sample": list(st.refused.items())[:5],
        "cancel_retry_ops_sent": len(st.ops),
        "cancel_retry_ops_answered": sum(1 for o in st.ops if o[4] is not None),
        "cancel_acked": sum(len(v) for v in st.cancel_acked.values()),
        "retry_acked": sum(st.retry_acked.values()),
        "kills": d.kills, "starts": d.starts,
        "failed_starts": d.failed_starts,
        "prunes": st.prunes,
        "prune_pruned_total_final": final_prune,
        "tasks_in_table": len(tasks), "counts": counts,
        "attempt_outcomes": dict(by_outcome),
        "runs_logged": n_runs, "events_lines": n_ev,
        "events_lines_cut_by_kills": cut_lines,
        "event_triggered_kills": len(st.event_kills),
        "kill_tags": collections.Counter(x["tag"] for x in st.orphans_after_kill),
        "orphans_seen_after_kills": sum(len(x["procs"]) for x in st.orphans_after_kill),
        "survivors": len(st.survivors),
        "lost_before_pid_written": st.lost_before_pid,
        "output_dirs_of_deleted_tasks": len(leaked_out),
        "cancel_of_running_acked_but_not_canceled": cancel_running_lost[:20],
        "n_cancel_of_running_acked_but_not_canceled": len(cancel_running_lost),
        "timeouts": st.timeouts, "notes": [str(x) for x in st.notes],
        "early_missing_fodder": early_missing[:20],
        "violations": V,
    }
    with open(os.path.join(args.dir, "report.json"), "w") as f:
        json.dump(rep, f, indent=1, default=str)
    short = {k: v for k, v in rep.items() if k not in ("violations", "prunes", "ops_of_violating_tasks",
             "cancel_of_running_acked_but_not_canceled", "survivors")}
    print(json.dumps(short, indent=1, default=str))
    print("prunes:", json.dumps(st.prunes, default=str))
    byinv = collections.defaultdict(list)
    for v in V:
        byinv[(v["inv"], v["text"])].append(v)
    print("\n%d violations" % len(V))
    for (inv, text), vs in sorted(byinv.items()):
        print("  inv %s: %s  x%d" % (inv, text, len(vs)))
        for v in vs[:3]:
            print("     ", json.dumps(v["evidence"], default=str)[:700])
    sys.exit(1 if V else 0)


if __name__ == "__main__":
    main()
