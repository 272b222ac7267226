#!/usr/bin/env python3
"""make bench: forkq's performance figures, each beside a baseline or target
measured in the same run.

    python3 bench/run.py --bin-dir src [--case NAME]... [--scale] [--dir DIR]
    make bench [BENCHFLAGS='--case hb --perf-dir /tmp/p']

Cases (default: all of them; --case picks some, repeatable or comma-separated):

  throughput  N submits of /bin/true pipelined on one connection to a fresh
              forkqd, until all succeeded, against `seq N | xargs -P J -n1
              /bin/true`, and against the physical limit: posix_spawn of
              /bin/true with as many in flight, recording nothing
              (bench/spawnloop.c), bare and with the pipes and process
              group forkqd gives each task; then ../shared/bench/peers.py if it
              is beside the checkout (--no-peers skips it). It also splits
              the cores' time per task, for forkq and for the limit: the
              supervisor's own CPU, the tasks' (reaped children, from
              /proc/PID/stat or getrusage; each from its clone to its exit,
              exec and the dynamic loader included), idle (/proc/stat), and
              the rest (the client, the kernel's threads). Last, what
              forkqd's own CPU explains of its distance to the limit: the
              limit again with forkqd's CPU per task above spawnloop's
              spent serially after each exit (spawnloop -w), and the limit
              against serial CPU per task from 0 to 300 µs, with the CPU
              per task at which it falls to 0.8 of itself.
  hb          forkqd's CPU (utime+stime from /proc) over 10 s while 1,000
              running tasks (bench/hbtask.c) heartbeat at 10 Hz, without and
              with heartbeat_timeout_ms, and with "progress N" lines (each
              one a task.progress event); and while they write a 60-byte
              line to stdout at 10 Hz instead (captured output, not in the
              target). Target < 5% of one core; baseline:
              the same 1,000 tasks running silent. --perf-dir DIR also
              records forkqd with perf during the windows (perf's own cost
              then inflates the CPU figure).
  retry       lag from a retry's due time (attempt 1's end + delay_ms, from
              the event log) to attempt 2's start (`get`), over 200 tasks
              that fail once; baseline: the same lag for delayed first starts.
  rss         forkqd's RSS fresh, then at 0 queued once 20,000 tasks ran
              (its event ring and SQLite's page cache full, as in a forkqd
              at work), and with 100,000 delayed tasks queued (each read
              when the stream is quiet), and the submit rate of the first and
              the last 10,000, pipelined with a bounded window on one
              connection; baseline for the rate: the same submits while the
              only worker is busy (the dispatch then queries nothing).
              --scale: 1,000,000 tasks, RSS at 0, 100k and 1M (minutes).
  sync        --sync full against --sync normal, 3 alternating rounds:
              sequential submit round trips (p50/p99 of 2,000) and 10,000
              pipelined submits (rate); the submits queue behind a busy
              worker, so the figures are the submit path and its commit.
  recovery    time from exec to an answered `status` after SIGKILL, with
              100,000 delayed tasks in the store and 2 running (their
              processes must be gone after the restart); baseline: empty
              store.
  latency     submit round trips (100/s) while a second connection offers
              1,000 tasks/s of /bin/true, against the same idle, and
              against the floor: the same round trips to a server that
              only makes each line durable (bench/ackfloor.c: 1 KiB
              written and fdatasynced), idle and while bench/spawnloop.c
              runs /bin/true at the rate forkqd ran, and against a
              forkqd with --sync normal under the same load (no fsync:
              what is left is the CPUs' contention); start
              latency from the submit's answer to the task's first
              instruction (bench/stamp.c), against posix_spawn of the same
              program from here, sample for sample.
  profile     forkqd under valgrind --tool=callgrind while N (--profile-n,
              default 2,000) pipelined /bin/true run, j workers: its
              user-space instructions per task, split by where they are
              (forkqd's own code, SQLite, jansson, malloc and free, the
              rest of libc, libev), and the functions that cost most.
              Instruction counts repeat from run to run where timings do
              not, so this is the figure to compare two builds by; it
              leaves out the kernel's share (system time). Skipped when
              valgrind is not installed.

Ends with one summary block: a line per figure with its baseline or target
and the command that reproduces it. Before each case it prints how busy the
CPUs were with others' work: figures taken on a busy machine are noise. This
is a benchmark, not a test: it fails only when forkqd answers with errors or
stops responding.

Standard library and a C compiler (cc, or $CC) for the helpers. Every
process it starts is stopped by pid; task processes are found by a marker in
their environment and killed by pid; its temp dirs are removed."""
import argparse, calendar, json, math, os, random, resource, shlex
import shutil, signal
import socket, statistics, subprocess, sys, tempfile, threading, time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
CLK_TCK = os.sysconf("SC_CLK_TCK")
MARK = "FORKQ_BENCH_RUN"	# in every task's env: value = this run's root
LIGHT_CASES = ["throughput", "hb", "retry", "rss", "sync", "recovery",
               "latency", "profile"]
DELAY_1H = 3600 * 1000


class BenchError(Exception):
    pass


def pctl(xs, q):
    """Nearest-rank percentile of xs (q in 0..100)."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return s[k]


def ts_ms(s):
    """RFC 3339 UTC with milliseconds ('2026-11-22T09:30:00.123Z') -> ms."""
    secs = calendar.timegm(time.strptime(s[:19], "%Y-%m-%dT%H:%M:%S"))
    frac = s[20:-1] if len(s) > 20 and s[19] == "." else "0"
    return secs * 1000 + int((frac + "000")[:3])


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def machine_busy(secs=0.5):
    """Percent of all CPUs busy over secs, from /proc/stat: called between
    cases, when nothing of ours runs, it is what others use."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]
        return sum(v[:8]), idle
    t0, i0 = snap()
    time.sleep(secs)
    t1, i1 = snap()
    return 100.0 * (1 - (i1 - i0) / max(1, t1 - t0))


def idle_s():
    """Idle seconds of all CPUs together since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[3] + v[4]) / CLK_TCK


def cpu_s(pid):
    """(own, children's) CPU seconds, user and system, of pid: children's
    are those of the children it reaped (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        v = f.read().rsplit(")", 1)[1].split()
    return ((int(v[11]) + int(v[12])) / CLK_TCK,
            (int(v[13]) + int(v[14])) / CLK_TCK)


class CoreSplit:
    """Where the cores' time went over a run, in µs per task: the
    supervisor's own CPU, its tasks', idle and the rest."""

    def __init__(self, n, secs, own, tasks, idle):
        ncpu = os.cpu_count() or 1
        per = 1e6 / n
        self.own, self.tasks, self.idle = own * per, tasks * per, idle * per
        self.rest = max(0.0, ncpu * secs * per - self.own - self.tasks -
                        self.idle)

    @staticmethod
    def median(splits):
        med = statistics.median
        out = CoreSplit.__new__(CoreSplit)
        for k in ("own", "tasks", "idle", "rest"):
            setattr(out, k, med(getattr(x, k) for x in splits))
        return out

    def text(self, own_name):
        return (f"{own_name} {self.own:.0f}, tasks {self.tasks:.0f}, "
                f"idle {self.idle:.0f}, rest {self.rest:.0f}")


def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k] = v.strip()
    except OSError:
        pass
    return out


def kb(field):
    return int(field.split()[0]) if field else 0


def raise_nofile():
    """preexec for forkqd: soft RLIMIT_NOFILE up to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (hard if hard != resource.RLIM_INFINITY
                            else 1 << 20, hard))


class Conn:
    """One client connection: JSON lines out, answer lines in."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.r = self.s.makefile("rb")

    def send(self, req):
        self.s.sendall(req if isinstance(req, bytes)
                       else (json.dumps(req) + "\n").encode())

    def recv(self):
        line = self.r.readline()
        if not line:
            raise BenchError("forkqd closed the connection")
        return json.loads(line)

    def call(self, req):
        self.send(req)
        ans = self.recv()
        if not ans.get("ok"):
            raise BenchError(f"{req.get('op')} refused: {ans}")
        return ans

    def close(self):
        self.r.close()
        self.s.close()

    def pipeline_window(self, line, n, window=2000, chunk=500, marks=()):
        """Pipelines `line` n times with at most `window` requests in flight
        (one thread: sends a chunk whenever that many answers came back), so
        answer times follow the server's progress rather than the buffers'.
        Returns (t0, {count: monotonic time}) for each count in marks and
        n."""
        marks = set(marks) | {n}
        times = {}
        sent = got = 0
        readline = self.r.readline
        t0 = time.monotonic()
        while got < n:
            while sent < n and sent - got <= window - chunk:
                k = min(chunk, n - sent)
                self.s.sendall(line * k)
                sent += k
            ans = readline()
            got += 1
            if not ans.startswith(b'{"ok":true'):
                raise BenchError(f"answer {got} of {n} not ok: "
                                 f"{ans[:300]!r}")
            if got in marks:
                times[got] = time.monotonic()
        return t0, times

    def pipeline(self, line, n, marks=(), at_mark=None, chunk=2000):
        """Sends `line` n times from a thread while reading the n answers
        here. Returns (t0, {count: monotonic time}) for each count in marks
        (and n); at_mark(count) runs as each mark is reached."""
        err = []

        def writer():
            try:
                left = n
                while left > 0:
                    k = min(chunk, left)
                    self.s.sendall(line * k)
                    left -= k
            except OSError as e:
                err.append(e)

        marks = set(marks) | {n}
        times = {}
        th = threading.Thread(target=writer, daemon=True)
        t0 = time.monotonic()
        th.start()
        readline = self.r.readline
        for i in range(1, n + 1):
            ans = readline()
            if not ans.startswith(b'{"ok":true'):
                raise BenchError(f"answer {i} of {n} not ok: "
                                 f"{ans[:300]!r}")
            if i == n:
                self.last = ans
            if i in marks:
                times[i] = time.monotonic()
                if at_mark:
                    at_mark(i)
        th.join()
        if err:
            raise BenchError(f"writing submits: {err[0]}")
        return t0, times


class Forkqd:
    """A forkqd on its own state dir, socket and event log."""

    def __init__(self, ctx, workers, extra=(), state_dir=None, wrapper=()):
        self.ctx = ctx
        self.dir = state_dir or tempfile.mkdtemp(prefix="forkqd-",
                                                 dir=ctx.root)
        self.sock = os.path.join(self.dir, "forkq.sock")
        self.log = os.path.join(self.dir, "events.log")
        self.argv = list(wrapper) + [
                     os.path.join(ctx.bindir, "forkqd"), "-D", self.dir,
                     "-s", self.sock, "-j", str(workers), "-l", self.log,
                     "--retention", "0", "--shutdown-grace", "0",
                     "--kill-grace", "1s"] + list(extra)
        self.proc = None
        self.startup_s = self.start()

    def start(self, timeout=600):
        """Execs forkqd; returns the seconds from exec to the first answered
        `status` (polled every ms)."""
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL,
                                     preexec_fn=raise_nofile)
        self.ctx.procs.append(self.proc)
        deadline = t0 + timeout
        self.accept_s = None
        while True:
            try:
                c = Conn(self.sock)
                if self.accept_s is None:
                    self.accept_s = time.monotonic() - t0
                try:
                    c.send(b'{"op":"status"}\n')
                    if c.recv().get("ok"):
                        return time.monotonic() - t0
                finally:
                    c.close()
            except (OSError, ValueError, BenchError):
                pass
            if self.proc.poll() is not None:
                raise BenchError(f"forkqd exited with {self.proc.returncode}"
                                 f" during start-up: {' '.join(self.argv)}")
            if time.monotonic() > deadline:
                raise BenchError(f"forkqd did not answer within {timeout} s")
            time.sleep(0.001)

    @property
    def pid(self):
        return self.proc.pid

    def conn(self):
        return Conn(self.sock)

    def request(self, req):
        c = self.conn()
        try:
            return c.call(req)
        finally:
            c.close()

    def counts(self):
        return self.request({"op": "status"})["status"]["counts"]

    def wait_counts(self, pred, timeout, what, poll=0.05):
        deadline = time.monotonic() + timeout
        while True:
            counts = self.counts()
            if pred(counts):
                return counts
            if time.monotonic() > deadline:
                raise BenchError(f"not {what} after {timeout} s: {counts}")
            time.sleep(poll)

    def cpu_s(self, split=False):
        """utime + stime of forkqd, seconds (from /proc/PID/stat); with
        split, the pair (utime, stime)."""
        with open(f"/proc/{self.pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        u, s = int(rest[11]) / CLK_TCK, int(rest[12]) / CLK_TCK
        return (u, s) if split else u + s

    def mem(self):
        st = proc_status(self.pid)
        return {k: kb(st.get(k)) for k in
                ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM")}

    def ctx_switches(self):
        st = proc_status(self.pid)
        return (int(st.get("voluntary_ctxt_switches", 0)) +
                int(st.get("nonvoluntary_ctxt_switches", 0)))

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            print(f"  forkqd {self.pid} did not stop within 60 s of SIGTERM;"
                  " SIGKILL", flush=True)
            self.proc.kill()
            self.proc.wait()


class Ctx:
    def __init__(self, a):
        self.a = a
        self.bindir = os.path.abspath(a.bin_dir)
        self.root = tempfile.mkdtemp(prefix="forkq-bench-", dir=a.dir)
        self.procs = []		# every Popen we started
        self.rows = []		# (case, figure, value, baseline)
        self.env = {MARK: self.root}
        self.helpers = {}
        self.busy = []		# cases that started on a loaded machine

    def row(self, case, figure, value, baseline):
        self.rows.append((case, figure, value, baseline))
        print(f"  {figure}: {value}   [{baseline}]", flush=True)

    def helper(self, name):
        """Compiles bench/NAME.c into the temp dir once; returns its path."""
        if name not in self.helpers:
            out = os.path.join(self.root, name)
            cc = shlex.split(os.environ.get("CC") or "cc")
            subprocess.run(cc + ["-O2", "-o", out,
                            os.path.join(BENCH_DIR, name + ".c")], check=True)
            self.helpers[name] = out
        return self.helpers[name]

    def submit_line(self, argv, mark=True, **fields):
        """One submit request line; mark=False leaves out the MARK env (for
        /bin/true, which cannot outlive anything: its env costs a little)."""
        req = {"op": "submit", "argv": argv, "max_attempts": 1}
        if mark:
            req["env"] = self.env
        req.update(fields)
        return (json.dumps(req, separators=(",", ":")) + "\n").encode()

    def command(self, case):
        cmd = f"python3 bench/run.py --bin-dir src --case {case}"
        if case == "rss" and self.a.scale:
            cmd += " --scale"
        return cmd

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.kill_marked_tasks()
        shutil.rmtree(self.root, ignore_errors=True)

    def kill_marked_tasks(self):
        """SIGKILLs, by pid, any task process left from this run: those
        whose environment carries MARK=root."""
        tag = f"{MARK}={self.root}".encode()
        left = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                with open(f"/proc/{d}/environ", "rb") as f:
                    if tag in f.read().split(b"\0"):
                        left.append(int(d))
            except OSError:
                continue
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return left


def stopping(ctx, *daemons):
    for d in daemons:
        if d is not None:
            d.stop()
    left = ctx.kill_marked_tasks()
    if left:
        print(f"  note: {len(left)} task processes outlived their forkqd "
              f"and were killed by pid: {left[:10]}", flush=True)


# --- throughput ------------------------------------------------------------

def case_throughput(ctx):
    a = ctx.a
    fq, xa, ratio, limit, limit_setup, ratio_limit = [], [], [], [], [], []
    fq_split, limit_split, as_cpu, curves = [], [], [], []
    line = ctx.submit_line(["/bin/true"], mark=False)
    for rep in range(a.reps):
        d = Forkqd(ctx, a.j)
        try:
            c = d.conn()
            cpu0, idle0 = cpu_s(d.proc.pid), idle_s()
            t0, times = c.pipeline(line, a.n)
            # Wait for the last task, then poll until every one is done.
            c.call({"op": "wait", "id": json.loads(c.last)["task"]["id"]})
            c.close()
            counts = d.wait_counts(
                lambda k: k["queued"] == 0 and k["running"] == 0, 300,
                "all finished", poll=0.002)
            t = time.monotonic() - t0
            cpu1, idle1 = cpu_s(d.proc.pid), idle_s()
            rss = d.mem()["VmRSS"]
        finally:
            stopping(ctx, d)
        fq_split.append(CoreSplit(a.n, t, cpu1[0] - cpu0[0],
                                  cpu1[1] - cpu0[1], idle1 - idle0))
        if counts["succeeded"] != a.n:
            raise BenchError(f"only {counts['succeeded']} of {a.n} "
                             "succeeded")
        t1 = time.monotonic()
        subprocess.run(f"seq {a.n} | xargs -P {a.j} -n1 /bin/true",
                       shell=True, check=True)
        tx = time.monotonic() - t1
        sp, split = spawn_rate(ctx, a.n, a.j)
        spp, _ = spawn_rate(ctx, a.n, a.j, setup=True)
        limit_split.append(split)
        # The limit, spending what forkqd spent per task above it.
        extra = max(0.0, fq_split[-1].own - split.own)
        as_cpu.append(((a.n / t) / spawn_rate(ctx, a.n, a.j,
                                              work_us=extra)[0], extra))
        curves.append([sp] + [spawn_rate(ctx, a.n, a.j, work_us=w)[0]
                              for w in CURVE_US[1:]])
        fq.append(a.n / t)
        xa.append(a.n / tx)
        limit.append(sp)
        limit_setup.append(spp)
        ratio.append((a.n / t) / (a.n / tx))
        ratio_limit.append((a.n / t) / sp)
        print(f"  rep {rep + 1}: forkq {a.n / t:.0f} tasks/s, "
              f"xargs -P{a.j} {a.n / tx:.0f} tasks/s, posix_spawn "
              f"{sp:.0f} tasks/s (with a task's pipes and group "
              f"{spp:.0f}), forkqd RSS after {rss} kB", flush=True)
    med = statistics.median
    ctx.row("throughput", f"throughput, {a.n} x /bin/true, j={a.j}",
            f"{med(fq):.0f} tasks/s",
            f"xargs -P{a.j}: {med(xa):.0f} tasks/s; "
            f"ratio {med(ratio):.2f}")
    ctx.row("throughput", f"throughput against the limit, j={a.j}",
            f"{med(ratio_limit):.2f}",
            f"posix_spawn {a.j} in flight (bench/spawnloop.c): "
            f"{med(limit):.0f} tasks/s; with each task's pipes and "
            f"process group as forkqd sets them up (spawnloop -p): "
            f"{med(limit_setup):.0f} tasks/s")
    ncpu = os.cpu_count() or 1
    ctx.row("throughput", f"throughput: {ncpu} cores' time per task, µs",
            CoreSplit.median(fq_split).text("forkqd"),
            "posix_spawn limit: " +
            CoreSplit.median(limit_split).text("spawnloop"))
    share, extra = (med(x[i] for x in as_cpu) for i in (0, 1))
    curve = [(w, med(c[i] for c in curves))
             for i, w in enumerate(CURVE_US)]
    at = serial_cpu_at(curve, 0.8)
    print("  the limit against serial CPU per task: " +
          ", ".join(f"{w} µs {r:.0f}/s" for w, r in curve), flush=True)
    ctx.row("throughput", "throughput against the limit spending forkqd's "
            "CPU per task",
            f"{share:.2f}",
            f"forkqd's CPU above spawnloop's: {extra:.0f} µs a task, "
            f"spent serially after each exit (spawnloop -w); the limit "
            f"falls to 0.8 of itself at "
            f"{'over 300' if at is None else f'{at:.0f}'} µs a task")
    peers = os.path.join(BENCH_DIR, "..", "..", "shared", "bench",
                         "peers.py")
    if os.path.exists(peers) and not a.no_peers:
        print("--- peers.py ---", flush=True)
        p = subprocess.Popen([sys.executable, peers, "--bin-dir", ctx.bindir,
                              "-n", str(a.n), "-j", str(a.j)])
        ctx.procs.append(p)
        p.wait()


def spawn_rate(ctx, n, j, setup=False, work_us=0.0):
    """Tasks/s of bench/spawnloop.c: n x /bin/true by posix_spawn, j in
    flight, nothing recorded: the physical limit forkq is measured
    against; with setup, each with the pipes (stdout, stderr, heartbeat)
    and process group forkqd gives a task; with work_us, that much CPU
    spent after each exit before the next start. Returns (tasks/s,
    CoreSplit)."""
    idle0 = idle_s()
    out = subprocess.run([ctx.helper("spawnloop")] + (["-p"] if setup
                                                      else []) +
                         (["-w", f"{work_us:.0f}"] if work_us > 0 else []) +
                         [str(n), str(j)],
                         check=True, capture_output=True, text=True).stdout
    idle1 = idle_s()
    _, secs, own, tasks = (float(x) for x in out.split())
    return n / secs, CoreSplit(n, secs, own, tasks, idle1 - idle0)


# µs of serial CPU per task at which the limit is measured (spawnloop -w);
# at 0 it is the bare limit itself.
CURVE_US = (0, 50, 100, 150, 200, 250, 300)


def serial_cpu_at(curve, share):
    """From curve, [(µs of serial CPU per task, tasks/s)] rising in µs
    from 0: the µs at which the rate falls to share of the first, by
    linear interpolation; None if it does not within the curve."""
    goal = share * curve[0][1]
    for (w0, r0), (w1, r1) in zip(curve, curve[1:]):
        if r1 <= goal < r0:
            return w0 + (w1 - w0) * (r0 - goal) / (r0 - r1)
    return None


# --- hb: heartbeat cost ----------------------------------------------------

def case_hb(ctx):
    a = ctx.a
    hb = ctx.helper("hbtask")
    n, window = a.hb_tasks, a.hb_window
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4 * n + 64:
        print(f"  note: RLIMIT_NOFILE hard limit {hard} < {4 * n + 64}; "
              "forkqd may defer starts", flush=True)
    # The tasks live far longer than the measurement; forkqd's shutdown
    # (shutdown-grace 0) stops them.
    life = 3600
    variants = [	# label, heartbeat interval (ms, 0 = silent), fields
        ("silent (baseline)", 0, {}),
        ("10 Hz", 100, {}),
        ("10 Hz + heartbeat_timeout 5s", 100, {"heartbeat_timeout_ms": 5000}),
        ("10 Hz progress lines", 100, {}),
        ("10 Hz stdout lines", 100, {}),
    ]
    res = {}
    for label, interval, extra in variants:
        # A silent task writes its first heartbeat, then sleeps an hour.
        argv = [hb, str(life), str(interval or 3600 * 1000)]
        if "progress" in label:
            argv.append("progress")
        elif "stdout" in label:
            argv.append("stdout")
        d = Forkqd(ctx, n)
        try:
            c = d.conn()
            c.pipeline(ctx.submit_line(argv, name="hb", **extra), n)
            c.close()
            d.wait_counts(lambda k: k["running"] == n, 300,
                          f"all {n} running")
            time.sleep(2)		# every task past its first heartbeat
            perf = None
            if a.perf_dir and interval:
                data = os.path.join(os.path.abspath(a.perf_dir),
                                    "hb-%s.data" % (
                                        "timeout" if extra else "progress"
                                        if "progress" in label else "stdout"
                                        if "stdout" in label else "plain"))
                perf = subprocess.Popen(
                    ["perf", "record", "-q", "-e", "cpu-clock", "-g", "-p",
                     str(d.pid), "-o", data, "--", "sleep", str(window)],
                    stdout=subprocess.DEVNULL)
                ctx.procs.append(perf)
            (u0, s0), cs0, t0 = (d.cpu_s(True), d.ctx_switches(),
                                 time.monotonic())
            time.sleep(window)
            (u1, s1), cs1, t1 = (d.cpu_s(True), d.ctx_switches(),
                                 time.monotonic())
            cpu0, cpu1 = u0 + s0, u1 + s1
            if perf is not None:
                perf.wait()
                print(f"  perf data: {data}  (perf report -i {data} "
                      "--comm forkqd --no-children)", flush=True)
            share = 100.0 * (cpu1 - cpu0) / (t1 - t0)
            wake = (cs1 - cs0) / (t1 - t0)
            counts = d.counts()
            fresh, sample = 0, 0
            if interval and "stdout" not in label:
                now = time.time() * 1000
                tasks = d.request({"op": "list", "state": "running",
                                   "limit": 100})["tasks"]
                for t in tasks:
                    sample += 1
                    if (t["last_heartbeat_at"] and
                            now - ts_ms(t["last_heartbeat_at"]) < 1000):
                        fresh += 1
            res[label] = share
            print(f"  {label}: forkqd CPU {share:.2f}% of one core "
                  f"(user {100 * (u1 - u0) / (t1 - t0):.1f}%, sys "
                  f"{100 * (s1 - s0) / (t1 - t0):.1f}%) over "
                  f"{t1 - t0:.1f} s, {wake:.0f} context switches/s, "
                  f"running {counts['running']}/{n}"
                  + (f", heartbeat < 1 s old in {fresh}/{sample} sampled"
                     if sample else ""), flush=True)
            if counts["running"] != n:
                print(f"  WARNING: {n - counts['running']} tasks stopped "
                      f"during the window: {counts}", flush=True)
        finally:
            stopping(ctx, d)
    base = res["silent (baseline)"]
    for label in ("10 Hz", "10 Hz + heartbeat_timeout 5s",
                  "10 Hz progress lines"):
        ctx.row("hb", f"forkqd CPU share, {n} tasks heartbeating {label}",
                f"{res[label]:.2f}% of one core",
                f"target < 5%; same {n} tasks silent: {base:.2f}%")
    ctx.row("hb", f"forkqd CPU share, {n} tasks writing 10 Hz stdout lines",
            f"{res['10 Hz stdout lines']:.2f}% of one core",
            f"no target (captured output); same {n} tasks silent: "
            f"{base:.2f}%")


# --- retry: due time to start ----------------------------------------------

def case_retry(ctx):
    a = ctx.a
    n, rate = a.retry_tasks, a.retry_rate
    d = Forkqd(ctx, 8)
    try:
        c = d.conn()
        fail = {"argv": ["sh", "-c", 'test "$FORKQ_ATTEMPT" -ge 2 || exit 1'],
                "backoff_base_ms": 1000, "backoff_max_ms": 1000,
                "max_attempts": 3, "name": "retry"}
        fails, delayed = [], []
        rnd = random.Random(1)
        t0 = time.monotonic()
        for i in range(n):
            c.send(ctx.submit_line(**fail))
            fails.append(c.recv()["task"]["id"])
            c.send(ctx.submit_line(["/bin/true"], name="delayed",
                                   delay_ms=rnd.randint(500, 1000)))
            delayed.append(c.recv()["task"]["id"])
            pause = t0 + (i + 1) / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        tasks = {}
        for i in fails + delayed:
            ans = c.call({"op": "wait", "id": i, "timeout_ms": 60000})
            if ans.get("timed_out"):
                raise BenchError(f"task {i} not final after 60 s")
            tasks[i] = c.call({"op": "get", "id": i})["task"]
        c.close()
    finally:
        stopping(ctx, d)
    end1, delay = {}, {}
    with open(d.log) as f:
        for line in f:
            e = json.loads(line)
            if e["event"] == "task.attempt_ended" and e["attempt"] == 1:
                end1[e["task"]] = ts_ms(e["ts"])
            elif e["event"] == "task.retry_scheduled" and e["attempt"] == 2:
                delay[e["task"]] = e["delay_ms"]
    lag, lag_runat, lag_delayed = [], [], []
    for i in fails:
        t = tasks[i]
        if t["state"] != "succeeded" or len(t["attempts"]) != 2:
            raise BenchError(f"task {i}: expected 2 attempts, got {t}")
        start2 = ts_ms(t["attempts"][1]["started_at"])
        lag.append(start2 - (end1[i] + delay[i]))
        lag_runat.append(start2 - ts_ms(t["run_at"]))
    for i in delayed:
        t = tasks[i]
        lag_delayed.append(ts_ms(t["started_at"]) - ts_ms(t["run_at"]))

    def three(xs):
        return f"{pctl(xs, 50):.0f} / {pctl(xs, 99):.0f} / {max(xs):.0f} ms"

    print(f"  {n} retries (paced {rate}/s); lag against the stored run_at: "
          f"p50/p99/max {three(lag_runat)}", flush=True)
    ctx.row("retry", f"retry start lag p50/p99/max ({n} tasks)", three(lag),
            "target ~0 (ms timestamps); delayed first starts: "
            + three(lag_delayed))


# --- rss: memory with queued tasks -----------------------------------------

# Tasks run to the end before the warm reading at 0 queued, so that forkqd's
# two bounded caches are full, as in a forkqd that has been at work: the ring
# of recent events (event.c; 4 events a task) and SQLite's page cache (2 MB
# by default; 5,000 tasks' rows left it short of full here, 20,000 fill it).
RSS_WARMUP_TASKS = 20000


def rss_run(ctx, n, step, blocked):
    """A fresh forkqd takes n delayed submits on one connection, pipelined
    with a bounded window; the memory is read when the stream is quiet, at
    0, 100,000 and n. Unless blocked, the fresh forkqd's memory is "fresh",
    and it runs RSS_WARMUP_TASKS tasks to the end before the reading at 0:
    what its bounded caches take then is there whatever is queued. blocked:
    one worker, held by a sleeping task, so the dispatch after each pass
    returns before it queries the store. Returns ({count: memory}, rates
    per step)."""
    d = Forkqd(ctx, 1 if blocked else 2)
    what = "workers busy" if blocked else "workers free"
    mem = {}
    try:
        if blocked:
            d.request({"op": "submit", "argv": ["sleep", "3600"],
                       "max_attempts": 1, "env": ctx.env, "name": "blocker"})
            d.wait_counts(lambda k: k["running"] == 1, 30, "blocker running")
        else:
            time.sleep(1)
            mem["fresh"] = d.mem()
            c = d.conn()
            c.pipeline(ctx.submit_line(["/bin/true"], mark=False),
                       RSS_WARMUP_TASKS)
            c.close()
            d.wait_counts(lambda k: k["succeeded"] == RSS_WARMUP_TASKS, 300,
                          "the warm-up tasks succeeded")
        time.sleep(1)
        mem[0] = d.mem()
        c = d.conn()
        line = ctx.submit_line(["/bin/true"], mark=False, delay_ms=DELAY_1H)
        done, rates, spent = 0, [], 0.0
        for upto in sorted({min(n, 100000), n}):
            t0, times = c.pipeline_window(
                line, upto - done, marks=range(step, upto - done + 1, step))
            prev = t0
            for i in range(step, upto - done + 1, step):
                rates.append(step / (times[i] - prev))
                prev = times[i]
            spent += times[upto - done] - t0
            done = upto
            time.sleep(1)
            mem[done] = d.mem()
        c.close()
        counts = d.counts()
    finally:
        stopping(ctx, d)
    if counts["queued"] != n:
        print(f"  WARNING: {counts['queued']} queued, expected {n}")
    every = max(1, len(rates) // 10)
    print(f"  {what}: submit rate per 10k (tasks/s): " + ", ".join(
        f"{(k + 1) * step // 1000}k:{r:.0f}" for k, r in enumerate(rates)
        if k % every == 0 or k == len(rates) - 1), flush=True)
    print(f"  {what}: {n} submits in {spent:.1f} s ({n / spent:.0f}/s)",
          flush=True)
    return mem, rates


def case_rss(ctx):
    a = ctx.a
    n = 1000000 if a.scale else 100000
    step = 10000
    mem, rates = rss_run(ctx, n, step, False)
    for k in ["fresh"] + sorted(k for k in mem if k != "fresh"):
        m = mem[k]
        when = ("fresh, before any task" if k == "fresh" else
                f"with {k} queued" + (f" ({RSS_WARMUP_TASKS} tasks ran before)"
                                      if k == 0 else ""))
        print(f"  RSS {when}: {m['VmRSS']} kB (anon {m['RssAnon']},"
              f" file {m['RssFile']}, shmem {m['RssShmem']}; peak so far "
              f"{m['VmHWM']})", flush=True)
    _, brates = rss_run(ctx, n, step, True)
    at0 = mem[0]["VmRSS"]

    def against_0(k):
        return f"{mem[k]['VmRSS'] / at0:.2f}x the same forkqd at 0 queued"

    ctx.row("rss", "forkqd RSS, 100,000 delayed tasks queued",
            f"{mem[100000]['VmRSS']} kB",
            f"{against_0(100000)} ({at0} kB, after {RSS_WARMUP_TASKS} tasks "
            f"ran); fresh: {mem['fresh']['VmRSS']} kB")
    if n > 100000:
        ctx.row("rss", f"forkqd RSS, {n:,} delayed tasks queued",
                f"{mem[n]['VmRSS']} kB",
                f"{against_0(n)}; at 100,000: {mem[100000]['VmRSS']} kB")
    ctx.row("rss", f"submit rate, last 10k of {n:,} delayed",
            f"{rates[-1]:.0f} /s",
            f"first 10k: {rates[0]:.0f} /s; workers busy (no dispatch "
            f"query): first {brates[0]:.0f}, last {brates[-1]:.0f} /s")


# --- sync: --sync full against normal --------------------------------------

def case_sync(ctx):
    a = ctx.a
    nseq, npipe, rounds = a.sync_seq, a.sync_pipe, 3
    res = {"full": [], "normal": []}
    for r in range(rounds):
        for mode in ("full", "normal"):
            res[mode].append(sync_round(ctx, mode, nseq, npipe))
    med = statistics.median
    out = {}
    for mode, rs in res.items():
        out[mode] = tuple(med(x[k] for x in rs) for k in range(3))
        print(f"  --sync {mode}: sequential p50 {out[mode][0]:.2f} ms, p99 "
              f"{out[mode][1]:.2f} ms; pipelined {out[mode][2]:.0f} "
              f"submits/s (medians of {rounds} rounds)", flush=True)
    f, n = out["full"], out["normal"]
    ctx.row("sync", f"sequential submit RTT p50/p99, --sync full ({nseq})",
            f"{f[0]:.2f} / {f[1]:.2f} ms",
            f"--sync normal: {n[0]:.2f} / {n[1]:.2f} ms")
    ctx.row("sync", f"pipelined submits, --sync full ({npipe})",
            f"{f[2]:.0f} /s", f"--sync normal: {n[2]:.0f} /s")


def sync_round(ctx, mode, nseq, npipe):
    """(p50 ms, p99 ms, pipelined rate) for one fresh forkqd --sync mode.
    One worker, held by a sleeping task: the submits queue due but none
    starts, so the figures are the submit path and its commit."""
    d = Forkqd(ctx, 1, extra=["--sync", mode])
    try:
        d.request({"op": "submit", "argv": ["sleep", "3600"],
                   "max_attempts": 1, "env": ctx.env, "name": "blocker"})
        d.wait_counts(lambda k: k["running"] == 1, 30, "blocker running")
        c = d.conn()
        line = ctx.submit_line(["/bin/true"], mark=False, name="sync")
        lat = [submit_rtt_ms(c, line) for _ in range(nseq)]
        t0, times = c.pipeline(line, npipe)
        c.close()
    finally:
        stopping(ctx, d)
    return pctl(lat, 50), pctl(lat, 99), npipe / (times[npipe] - t0)


# --- recovery: start-up with a big store -----------------------------------

def case_recovery(ctx):
    a = ctx.a
    n = a.recovery_tasks
    empty = Forkqd(ctx, 2)
    stopping(ctx, empty)
    base = []
    for _ in range(3):
        base.append(empty.start())
        empty.kill9()
    d = Forkqd(ctx, 2)
    lost_pids = []
    try:
        c = d.conn()
        for _ in range(2):
            c.call({"op": "submit", "argv": ["sleep", "600"],
                    "max_attempts": 1, "env": ctx.env, "name": "running"})
        d.wait_counts(lambda k: k["running"] == 2, 30, "2 running")
        for t in d.request({"op": "list", "state": "running"})["tasks"]:
            lost_pids.append(t["pid"])
        t0, times = c.pipeline(ctx.submit_line(["/bin/true"],
                                               delay_ms=DELAY_1H), n)
        c.close()
        print(f"  store built: {n} delayed + 2 running in "
              f"{times[n] - t0:.1f} s; db "
              f"{os.path.getsize(os.path.join(d.dir, 'forkq.db')) >> 20} MiB",
              flush=True)
        d.kill9()
        startup, accept = [], []
        for k in range(3):
            startup.append(d.start())
            accept.append(d.accept_s)
            if k == 0:
                counts = d.counts()
                alive = [p for p in lost_pids if os.path.exists(
                    f"/proc/{p}") and "sleep" in open(
                    f"/proc/{p}/cmdline").read()]
                print(f"  first restart: {startup[0] * 1000:.0f} ms; counts "
                      f"{counts}; lost tasks' processes still alive: "
                      f"{alive or 'none'}", flush=True)
            d.kill9()
    finally:
        stopping(ctx, d)
    ms = [x * 1000 for x in startup]
    print(f"  restarts after SIGKILL: {', '.join(f'{x:.0f}' for x in ms)} ms"
          f" (the first one also recovers 2 running attempts); socket "
          f"accepting after {', '.join(f'{x * 1000:.0f}' for x in accept)} "
          "ms", flush=True)
    ctx.row("recovery", f"start-up to answered status, {n:,} tasks, median of"
            " 3 SIGKILL restarts", f"{statistics.median(ms):.0f} ms",
            f"empty store: {statistics.median(base) * 1000:.0f} ms; "
            f"first restart (2 lost attempts) {ms[0]:.0f} ms")


# --- latency: submits under load, start latency -----------------------------

def loader_main(sock, rate, seconds, line):
    """Hidden mode: pipelines `line` at `rate` per second for `seconds` on
    one connection, reading answers in a thread; prints the counts."""
    c = Conn(sock)
    got = [0, 0]

    def reader():
        rl = c.r.readline
        while True:
            ans = rl()
            if not ans:
                return
            got[0 if ans.startswith(b'{"ok":true') else 1] += 1

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    sent, t0 = 0, time.monotonic()
    while True:
        el = time.monotonic() - t0
        if el >= seconds:
            break
        want = int(el * rate) + 1
        if want > sent:
            c.s.sendall(line * (want - sent))
            sent = want
        time.sleep(0.005)
    deadline = time.monotonic() + 60
    while sum(got) < sent and time.monotonic() < deadline:
        time.sleep(0.01)
    print(json.dumps({"sent": sent, "ok": got[0], "refused": got[1]}),
          flush=True)


def submit_rtt_ms(c, line):
    """One submit line sent and its answer read on c: the round trip in
    ms (a refusal ends the benchmark)."""
    t = time.perf_counter()
    c.s.sendall(line)
    ans = c.r.readline()
    ms = (time.perf_counter() - t) * 1000
    if not ans.startswith(b'{"ok":true'):
        raise BenchError(f"submit refused: {ans[:300]!r}")
    return ms


def measure_rtts(c, line, count, rate):
    lat, t0 = [], time.monotonic()
    for i in range(count):
        lat.append(submit_rtt_ms(c, line))
        pause = t0 + (i + 1) / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    return lat


def ack_floor(ctx, rate, idle_count, busy_count, load_rate, j):
    """Round trips (ms) to bench/ackfloor.c, which makes each line durable
    (1 KiB written and fdatasynced beside forkqd's state dirs) and answers:
    the floor under a durable submit here. Measured like forkq's, idle and
    while bench/spawnloop.c runs /bin/true at load_rate, j at a time.
    Returns (idle, busy)."""
    sock = os.path.join(ctx.root, "ackfloor.sock")
    srv = subprocess.Popen([ctx.helper("ackfloor"), sock,
                            os.path.join(ctx.root, "ackfloor.data")])
    ctx.procs.append(srv)
    load = None
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                c = Conn(sock)
                break
            except OSError:
                if time.monotonic() > deadline or srv.poll() is not None:
                    raise BenchError("ackfloor did not start listening")
                time.sleep(0.01)
        line = b'{"op":"submit"}\n'
        idle = measure_rtts(c, line, idle_count, rate)
        warm = 1
        secs = warm + busy_count / rate + 1
        load = subprocess.Popen([ctx.helper("spawnloop"),
                                 str(int(load_rate * secs)), str(j),
                                 str(load_rate)], stdout=subprocess.DEVNULL)
        ctx.procs.append(load)
        time.sleep(warm)
        busy = measure_rtts(c, line, busy_count, rate)
        c.close()
        srv.wait(10)
        load.wait(secs + 30)
    finally:
        for p in (srv, load):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    return idle, busy


def rtts_under_load(ctx, d, c, line, probe_rate):
    """Submit round trips (ms) on c, probe_rate a second for the load
    window, while a second connection (a process of its own) offers
    --load-rate submits a second. Returns (rtts, tasks run per second
    in the window, tasks queued at its end, the loader's counts)."""
    a = ctx.a
    warm, window = 2, a.load_window
    lline = line.decode().strip().replace("probe", "load")
    loader = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--bin-dir",
         ctx.bindir, "--_loader", d.sock, str(a.load_rate),
         str(warm + window + 1), lline],
        stdout=subprocess.PIPE, text=True)
    ctx.procs.append(loader)
    try:
        time.sleep(warm)
        k0, t0 = d.counts(), time.monotonic()
        busy = measure_rtts(c, line, window * probe_rate, probe_rate)
        k1, t1 = d.counts(), time.monotonic()
        out = loader.communicate(timeout=120)[0]
    finally:
        if loader.poll() is None:
            loader.kill()
            loader.wait()
    ran = (k1["succeeded"] - k0["succeeded"]) / (t1 - t0)
    return busy, ran, k1["queued"], out


def rtts_of_a_new_forkqd(ctx, line, probe_rate, extra=(), wrapper=()):
    """rtts_under_load's round trips on a forkqd of its own, started with
    extra arguments or under a wrapper command, and stopped."""
    d = Forkqd(ctx, ctx.a.j, extra=extra, wrapper=wrapper)
    try:
        c = d.conn()
        rtts, _, _, _ = rtts_under_load(ctx, d, c, line, probe_rate)
        c.close()
    finally:
        stopping(ctx, d)
    return rtts


def case_latency(ctx):
    a = ctx.a
    stamp = ctx.helper("stamp")
    nstart, probe_rate = a.start_samples, 100
    d = Forkqd(ctx, a.j)
    try:
        c = d.conn()
        line = ctx.submit_line(["/bin/true"], mark=False, name="probe")
        idle = measure_rtts(c, line, 5 * probe_rate, probe_rate)
        d.wait_counts(lambda k: k["queued"] == 0 and k["running"] == 0, 60,
                      "idle")
        # Start latency, idle: the submit's answer to the stamp, each
        # sample followed by one of the floor (posix_spawn of the same
        # helper from here), so both see the same machine.
        sfile = os.path.join(ctx.root, "stamp.out")
        fq, fq_send, floor = [], [], []
        sline = ctx.submit_line([stamp, sfile], name="stamp")
        for _ in range(nstart):
            t_send = time.time_ns()
            c.send(sline)
            raw = c.r.readline()
            t_ans = time.time_ns()
            ans = json.loads(raw)
            if not ans.get("ok"):
                raise BenchError(f"submit refused: {ans}")
            w = c.call({"op": "wait", "id": ans["task"]["id"],
                        "timeout_ms": 30000})
            if w["task"]["state"] != "succeeded":
                raise BenchError(f"stamp task did not succeed: {w}")
            with open(sfile) as f:
                t_run = int(f.read())
            fq.append((t_run - t_ans) / 1e6)
            fq_send.append((t_run - t_send) / 1e6)
            os.unlink(sfile)
            t = time.time_ns()
            pid = os.posix_spawn(stamp, [stamp, sfile], {})
            os.waitpid(pid, 0)
            with open(sfile) as f:
                floor.append((int(f.read()) - t) / 1e6)
            os.unlink(sfile)
        # Under load.
        busy, ran, backlog, out = rtts_under_load(ctx, d, c, line,
                                                  probe_rate)
        c.close()
        d.wait_counts(lambda k: k["queued"] == 0 and k["running"] == 0, 120,
                      "idle after the load")
    finally:
        stopping(ctx, d)
    # The same without any fsync (--sync normal): what of the round trip
    # is the disk, and what is the CPUs' contention under the load.
    nosync = rtts_of_a_new_forkqd(ctx, line, probe_rate,
                                  extra=("--sync", "normal"))
    # The same with forkqd under SCHED_FIFO 1, as an operator may run it
    # (forkqd(8), contrib/systemd): a newborn task no longer takes
    # forkqd's CPU until its exit. Where we may (root, CAP_SYS_NICE).
    fifo = None
    if shutil.which("chrt") and subprocess.run(
            ["chrt", "-f", "1", "true"], capture_output=True,
            check=False).returncode == 0:
        fifo = rtts_of_a_new_forkqd(ctx, line, probe_rate,
                                    wrapper=("chrt", "-f", "1"))
    fifo_text = (f"; forkqd under chrt -f 1 (SCHED_FIFO): "
                 f"{pctl(fifo, 50):.2f} / {pctl(fifo, 99):.2f} ms"
                 if fifo else "; SCHED_FIFO not permitted here")
    print(f"  loader: {out.strip()}; tasks run during the window "
          f"{ran:.0f}/s, queued at its end {backlog}", flush=True)
    print(f"  submit RTT idle p50/p99 {pctl(idle, 50):.2f} / "
          f"{pctl(idle, 99):.2f} ms; under load {pctl(busy, 50):.2f} / "
          f"{pctl(busy, 99):.2f} ms (max {max(busy):.1f}); the same with "
          f"--sync normal (no fsync) {pctl(nosync, 50):.2f} / "
          f"{pctl(nosync, 99):.2f} ms{fifo_text}", flush=True)
    f_idle, f_busy = ack_floor(ctx, probe_rate, len(idle), len(busy), ran,
                               a.j)
    print(f"  durable-ack floor idle p50/p99 {pctl(f_idle, 50):.2f} / "
          f"{pctl(f_idle, 99):.2f} ms; under {ran:.0f} posix_spawns/s "
          f"{pctl(f_busy, 50):.2f} / {pctl(f_busy, 99):.2f} ms", flush=True)
    print(f"  start latency p50/p99 {pctl(fq, 50):.2f} / {pctl(fq, 99):.2f}"
          f" ms (from sending the submit: {pctl(fq_send, 50):.2f} / "
          f"{pctl(fq_send, 99):.2f} ms); posix_spawn floor "
          f"{pctl(floor, 50):.2f} / {pctl(floor, 99):.2f} ms", flush=True)
    ctx.row("latency", f"submit RTT p50/p99 while running {ran:.0f} tasks/s",
            f"{pctl(busy, 50):.2f} / {pctl(busy, 99):.2f} ms",
            f"idle: {pctl(idle, 50):.2f} / {pctl(idle, 99):.2f} ms; "
            f"durable-ack floor (bench/ackfloor.c) under the same rate of "
            f"posix_spawn: {pctl(f_busy, 50):.2f} / "
            f"{pctl(f_busy, 99):.2f} ms, idle: {pctl(f_idle, 50):.2f} / "
            f"{pctl(f_idle, 99):.2f} ms; forkqd --sync normal (no fsync) "
            f"under the same load: {pctl(nosync, 50):.2f} / "
            f"{pctl(nosync, 99):.2f} ms{fifo_text}")
    ctx.row("latency", f"start latency p50/p99 (answer -> task's first "
            f"instruction, {nstart} idle)",
            f"{pctl(fq, 50):.2f} / {pctl(fq, 99):.2f} ms",
            f"posix_spawn floor: {pctl(floor, 50):.2f} / "
            f"{pctl(floor, 99):.2f} ms")


def callgrind_self_costs(path):
    """Self instruction counts from a callgrind output file: per object
    (library or program) and per (object, function). A cost line right
    after a calls= line is the callee's inclusive cost, not self cost."""
    names = {"ob": {}, "fn": {}}
    by_ob, by_fn = {}, {}
    ob = fn = "?"
    after_calls = False
    total = None

    def name(kind, rest):
        rest = rest.strip()
        if rest.startswith("("):
            key, _, nm = rest[1:].partition(")")
            nm = nm.strip()
            if nm:
                names[kind][key] = nm
            return names[kind].get(key, "?")
        return rest

    with open(path) as f:
        for line in f:
            if line.startswith("ob="):
                ob = name("ob", line[3:])
            elif line.startswith("fn="):
                fn = name("fn", line[3:])
            elif line.startswith(("cob=", "cfn=", "cfi=", "cfl=")):
                kind = {"cob": "ob", "cfn": "fn"}.get(line[:3])
                if kind:
                    name(kind, line[4:])
            elif line.startswith("calls="):
                after_calls = True
            elif line.startswith("summary:"):
                total = int(line.split()[1])
            elif line[:1].isdigit() or line[:1] in "+-*":
                parts = line.split()
                if len(parts) >= 2 and not after_calls:
                    cost = int(parts[1])
                    by_ob[ob] = by_ob.get(ob, 0) + cost
                    by_fn[(ob, fn)] = by_fn.get((ob, fn), 0) + cost
                after_calls = False
    return total, by_ob, by_fn


def cost_group(ob, fn):
    """Which part of forkqd an object and function belong to."""
    base = os.path.basename(ob)
    if base.startswith("libsqlite3"):
        return "SQLite"
    if base.startswith("libjansson"):
        return "jansson"
    if base.startswith("libev"):
        return "libev"
    if base.startswith("libc.so"):
        if any(k in fn for k in ("malloc", "free", "calloc", "realloc",
                                 "_int_", "tcache", "consolidate")):
            return "malloc/free"
        return "rest of libc"
    if base == "forkqd":
        return "forkqd's own code"
    return "other"


def case_profile(ctx):
    a = ctx.a
    figure = f"forkqd user-space instructions per task, {a.profile_n} x " \
             f"/bin/true, j={a.j} (callgrind)"
    vg = shutil.which("valgrind")
    if vg is None:
        ctx.row("profile", figure, "skipped", "valgrind is not installed")
        return
    out = os.path.join(ctx.root, "callgrind.out")
    d = Forkqd(ctx, a.j, wrapper=[vg, "--tool=callgrind",
                                  f"--callgrind-out-file={out}"])
    try:
        c = d.conn()
        c.pipeline(ctx.submit_line(["/bin/true"], mark=False), a.profile_n)
        c.call({"op": "wait", "id": json.loads(c.last)["task"]["id"]})
        c.close()
        counts = d.wait_counts(
            lambda k: k["queued"] == 0 and k["running"] == 0, 600,
            "all finished")
    finally:
        stopping(ctx, d)	# callgrind writes its file as forkqd exits
    if counts["succeeded"] != a.profile_n:
        raise BenchError(f"only {counts['succeeded']} of {a.profile_n} "
                         "succeeded")
    total, by_ob, by_fn = callgrind_self_costs(out)
    groups = {}
    for (ob, fn), cost in by_fn.items():
        g = cost_group(ob, fn)
        groups[g] = groups.get(g, 0) + cost
    total = total or sum(groups.values())
    split = ", ".join(f"{g} {100 * v / total:.0f}%" for g, v in
                      sorted(groups.items(), key=lambda kv: -kv[1]))
    print(f"  {total:,} instructions in all (start-up and shutdown "
          f"included); by part: {split}", flush=True)
    top = sorted(by_fn.items(), key=lambda kv: -kv[1])[:8]
    for (ob, fn), cost in top:
        print(f"    {100 * cost / total:5.1f}%  {fn} "
              f"({os.path.basename(ob)})", flush=True)
    ctx.row("profile", figure, f"{total / a.profile_n / 1000:.0f}k",
            split)


CASES = {"throughput": case_throughput, "hb": case_hb, "retry": case_retry,
         "rss": case_rss, "sync": case_sync, "recovery": case_recovery,
         "latency": case_latency, "profile": case_profile}


def summary(ctx, failed):
    rows = ctx.rows
    print()
    print(f"=== forkq bench summary: {time.strftime('%Y-%m-%d %H:%M:%S')}, "
          f"{os.cpu_count()} CPUs, state dirs under "
          f"{os.path.dirname(ctx.root)}, load average now {loadavg():.2f} "
          f"===")
    if rows:
        w1 = max(len(r[1]) for r in rows)
        w2 = max(len(r[2]) for r in rows)
        w3 = max(len(r[3]) for r in rows)
        for case, fig, val, base in rows:
            print(f"{fig:<{w1}}  {val:>{w2}}  | {base:<{w3}}  | "
                  f"{ctx.command(case)}")
    if ctx.busy:
        print(f"(others kept the CPUs over 15% busy before: "
              f"{', '.join(ctx.busy)}; rerun those on an idle machine)")
    for case, err in failed:
        print(f"{case}: FAILED: {err}  | {ctx.command(case)}")


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--case", action="append",
                    help="one of: " + ", ".join(CASES) + " (default: all)")
    ap.add_argument("--scale", action="store_true",
                    help="rss with 1,000,000 tasks (minutes)")
    ap.add_argument("--dir", default=None,
                    help="where the temp state dirs go (default: $TMPDIR)")
    ap.add_argument("-n", type=int, default=2000, help="throughput tasks")
    ap.add_argument("-j", type=int, default=os.cpu_count() or 2,
                    help="workers for throughput and latency")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--hb-tasks", type=int, default=1000)
    ap.add_argument("--hb-window", type=float, default=10)
    ap.add_argument("--perf-dir", default=None,
                    help="hb: perf record forkqd during the windows, into "
                    "DIR/hb-*.data (diagnosis; perf adds its own cost)")
    ap.add_argument("--retry-tasks", type=int, default=200)
    ap.add_argument("--retry-rate", type=float, default=25)
    ap.add_argument("--sync-seq", type=int, default=2000)
    ap.add_argument("--sync-pipe", type=int, default=10000)
    ap.add_argument("--recovery-tasks", type=int, default=100000)
    ap.add_argument("--load-rate", type=int, default=1000)
    ap.add_argument("--load-window", type=int, default=10)
    ap.add_argument("--start-samples", type=int, default=200)
    ap.add_argument("--profile-n", type=int, default=2000,
                    help="profile: tasks run under callgrind")
    ap.add_argument("--_loader", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._loader:
        sock, rate, secs, line = a._loader
        loader_main(sock, int(rate), float(secs), (line + "\n").encode())
        return
    names = []
    for c in a.case or LIGHT_CASES:
        for name in c.split(","):
            if name not in CASES:
                ap.error(f"unknown case {name!r}; cases: {', '.join(CASES)}")
            names.append(name)
    ctx = Ctx(a)
    failed = []
    try:
        for name in names:
            busy = machine_busy()
            print(f"--- {name} --- (CPU busy before it, others' work: "
                  f"{busy:.0f}%)", flush=True)
            if busy > 15:
                ctx.busy.append(name)
                print("  note: the machine is not idle; these figures will "
                      "be noisy", flush=True)
            t = time.monotonic()
            try:
                CASES[name](ctx)
            except (BenchError, OSError, subprocess.SubprocessError,
                    KeyError, ValueError) as e:
                failed.append((name, e))
                print(f"  FAILED: {e}", flush=True)
            print(f"  ({time.monotonic() - t:.0f} s)", flush=True)
    finally:
        ctx.cleanup()
    summary(ctx, failed)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
