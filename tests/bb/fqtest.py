"""Shared harness for forkq's black-box tests.

Each test gets a temporary directory and, on first use of ``self.d``, a real
forkqd on it (state dir, socket and event log inside), reached over its real
Unix socket.  Nothing is mocked.  Every wait polls a condition with a bound;
every process a test starts is stopped by pid in tearDown, and, since this
process makes itself a child subreaper, so is anything the tasks leave behind.

Environment:
  FORKQ_BUILDDIR   where src/forkqd, src/forkq and tests/helpers/fqtask are
                   (default: the repository holding this file)
  FORKQ_SRCDIR     the source tree (default: the same)
  FORKQ_TEST_SCALE multiply every deadline (default 1)
  FORKQ_TEST_KEEP  keep each test's temporary directory when set
"""

import base64
import calendar
import ctypes
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.environ.get("FORKQ_SRCDIR") or os.path.normpath(
    os.path.join(HERE, "..", ".."))
BUILDDIR = os.environ.get("FORKQ_BUILDDIR") or SRCDIR
FORKQD = os.path.join(BUILDDIR, "src", "forkqd")
FORKQ = os.path.join(BUILDDIR, "src", "forkq")
FQTASK_SRC = os.path.join(SRCDIR, "tests", "helpers", "fqtask.c")

SCALE = float(os.environ.get("FORKQ_TEST_SCALE") or 1)
DEADLINE = 30 * SCALE           # default bound for any wait, seconds
POLL = 0.03                     # polling interval, seconds

STATES = ("queued", "running", "succeeded", "failed", "canceled")
FINAL = ("succeeded", "failed", "canceled")
TASK_FIELDS = (
    "id", "name", "queue", "argv", "state", "priority", "attempt",
    "max_attempts", "created_at", "run_at", "started_at", "finished_at",
    "outcome", "exit_code", "signal", "error", "progress",
    "progress_message", "pid", "last_heartbeat_at", "timeout_ms",
    "heartbeat_timeout_ms", "unique", "uid")
ATTEMPT_FIELDS = (
    "n", "pid", "started_at", "finished_at", "duration_ms", "outcome",
    "exit_code", "signal", "error", "max_rss_kb", "user_cpu_ms",
    "sys_cpu_ms")
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LEVELS = ("debug", "info", "warn", "error")
MAX_LINE = 1024 * 1024

PR_SET_CHILD_SUBREAPER = 36


def _make_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "prctl(PR_SET_CHILD_SUBREAPER): " + os.strerror(e))


_make_subreaper()


# --- the helper task program -------------------------------------------------

def _find_fqtask():
    """The fqtask binary: the build's when it is up to date, else one
    compiled here from the source (for runs by hand before `make check`)."""
    built = os.path.join(BUILDDIR, "tests", "helpers", "fqtask")
    try:
        src_mtime = os.stat(FQTASK_SRC).st_mtime
    except OSError:
        src_mtime = None
    if os.access(built, os.X_OK) and (
            src_mtime is None or os.stat(built).st_mtime >= src_mtime):
        return built
    if src_mtime is None:
        raise RuntimeError("no fqtask at %s and no source at %s"
                           % (built, FQTASK_SRC))
    with open(FQTASK_SRC, "rb") as f:
        digest = hashlib.sha1(f.read()).hexdigest()[:12]
    out = os.path.join(tempfile.gettempdir(),
                       "fqtask-%d-%s" % (os.getuid(), digest))
    if not os.access(out, os.X_OK):
        cc = os.environ.get("CC") or "cc"
        tmp = "%s.%d" % (out, os.getpid())
        subprocess.run([cc, "-O1", "-Wall", "-Wextra", "-o", tmp,
                        FQTASK_SRC], check=True, timeout=120)
        os.rename(tmp, out)
    return out


def _check_binaries():
    missing = [p for p in (FORKQD, FORKQ) if not os.access(p, os.X_OK)]
    if missing:
        sys.stderr.write("forkq black-box tests: not built: %s\n"
                         % ", ".join(missing))
        # Under `make check` (FORKQ_BUILDDIR set) a missing binary is a hard
        # error; by hand, a skip.
        sys.exit(99 if os.environ.get("FORKQ_BUILDDIR") else 77)


_check_binaries()
FQTASK = _find_fqtask()


def fq(*args):
    """argv running the helper task program with these arguments."""
    return [FQTASK] + [str(a) for a in args]


def pattern(n):
    """The first n bytes fqtask's `output` subcommand writes."""
    return bytes(10 if i % 64 == 63 else 97 + i % 26 for i in range(n))


# --- waiting and time --------------------------------------------------------

def wait_for(cond, timeout=None, interval=POLL, what="condition"):
    """Poll cond() until it returns a true value and return that value;
    raise AssertionError after timeout seconds (default DEADLINE)."""
    timeout = DEADLINE if timeout is None else timeout * SCALE
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s"
                                 % (timeout, what))
        time.sleep(interval)


def parse_ts(s):
    """Seconds since the epoch of an RFC 3339 UTC `...T..:..:...mmmZ`
    string; AssertionError for any other form."""
    if not isinstance(s, str) or not TS_RE.match(s):
        raise AssertionError("not a YYYY-MM-DDTHH:MM:SS.mmmZ time: %r" % (s,))
    return calendar.timegm(time.strptime(s[:19], "%Y-%m-%dT%H:%M:%S")) + \
        int(s[20:23]) / 1000.0


# --- processes ---------------------------------------------------------------

def stat_fields(pid):
    """/proc/PID/stat's fields from the third (state) on, or None."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # comm, in parentheses, may hold anything: the fields follow the last.
    return data[data.rindex(")") + 2:].split()


def cpu_seconds(pid):
    """The user and system CPU time pid has used, in seconds."""
    rest = stat_fields(pid)
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def proc_stat(pid):
    """(state, ppid, pgrp, session, starttime) of pid, or None."""
    rest = stat_fields(pid)
    if rest is None:
        return None
    # rest[0] is field 3 (state); starttime is field 22.
    return (rest[0], int(rest[1]), int(rest[2]), int(rest[3]), int(rest[19]))


def leader_stat(pid):
    """proc_stat(pid) once pid leads its process group, else None."""
    st = proc_stat(pid)
    return st if st is not None and st[2] == pid else None


def tty_nr(pid):
    """The controlling terminal of pid (0: none), from /proc."""
    return int(stat_fields(pid)[4])


def status_kb(pid, field):
    """A kB figure of pid's /proc status (VmRSS, VmHWM)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s for %d" % (field, pid))


def vm_rss_kb(pid):
    """pid's resident set size, kB (VmRSS)."""
    return status_kb(pid, "VmRSS")


def pid_alive(pid, starttime=None):
    """True while pid exists, is not a zombie and (given starttime) is the
    same process."""
    st = proc_stat(pid)
    if st is None or st[0] in ("Z", "X", "x"):
        return False
    return starttime is None or st[4] == starttime


def children_of(ppid):
    """Pids whose parent is ppid."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = proc_stat(int(name))
        if st is not None and st[1] == ppid:
            out.append(int(name))
    return out


class JsonLines:
    """The JSON lines a following process (forkq logs -f, events) has
    printed so far, read without blocking from its stdout pipe."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.buf = b""
        os.set_blocking(pipe.fileno(), False)

    def lines(self):
        try:
            chunk = self.pipe.read()
        except BlockingIOError:
            chunk = None
        if chunk:
            self.buf += chunk
        return [json.loads(x) for x in self.buf.split(b"\n")[:-1]]


def wait_gone(pid, timeout=None, starttime=None, what=None):
    wait_for(lambda: not pid_alive(pid, starttime), timeout,
             what=what or "process %d to be gone" % pid)


# --- the protocol ------------------------------------------------------------

class Connection:
    """One client connection: send request lines, read answer lines."""

    def __init__(self, path, timeout=None):
        self.timeout = DEADLINE if timeout is None else timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        self.buf = b""
        self.eof = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, obj):
        self.send_raw(json.dumps(obj).encode() + b"\n")

    def readline(self, timeout=None):
        """The next line without its newline, or None at end of stream."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            if self.eof:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no answer line within %.1fs (have %r)"
                                     % (timeout, self.buf[:200]))
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def recv(self, timeout=None):
        """The next answer, parsed."""
        line = self.readline(timeout)
        if line is None:
            raise AssertionError("connection closed instead of an answer")
        try:
            v = json.loads(line)
        except ValueError:
            raise AssertionError("answer is not JSON: %r" % line[:300])
        if not isinstance(v, dict):
            raise AssertionError("answer is not an object: %r" % line[:300])
        return v

    def request(self, obj, timeout=None):
        self.send(obj)
        return self.recv(timeout)

    def rest(self, timeout=None):
        """Every line left until the server closes the connection, parsed
        (a watch without follow, a dropped watcher)."""
        out = []
        while True:
            line = self.readline(timeout)
            if line is None:
                return out
            out.append(json.loads(line))

    def at_eof(self, timeout=None):
        """True when the server closes the connection (with nothing more
        sent) within timeout."""
        line = self.readline(timeout)
        if line is not None:
            raise AssertionError("expected end of stream, got %r"
                                 % line[:300])
        return True


def check_error(test, ans, code, field=None):
    """Assert ans is an error answer with this code (and, given field, a
    message naming it)."""
    test.assertIs(ans.get("ok"), False, "expected an error answer: %r" % ans)
    err = ans.get("error")
    test.assertIsInstance(err, dict, "error is not an object: %r" % ans)
    test.assertEqual(err.get("code"), code, "wrong error code: %r" % ans)
    test.assertIsInstance(err.get("message"), str, "no message: %r" % ans)
    test.assertTrue(err["message"], "empty message: %r" % ans)
    if field is not None:
        names = (field,) if isinstance(field, str) else field
        test.assertTrue(
            any(n.lower() in err["message"].lower() for n in names),
            "message does not name %s: %r" % (" or ".join(names), ans))


# --- the daemon --------------------------------------------------------------

class Daemon:
    """A real forkqd on a directory: state dir, socket and event log."""

    def __init__(self, dir, workers=2, extra_args=(), env=None):
        self.dir = dir
        os.makedirs(dir, exist_ok=True)
        self.sock = os.path.join(dir, "forkq.sock")
        self.log = os.path.join(dir, "events.log")
        self.db = os.path.join(dir, "forkq.db")
        self.workers = workers
        self.extra_args = list(extra_args)
        self.env = dict(os.environ)
        for k in ("FORKQ_SOCKET", "FORKQ_TASK_ID", "FORKQ_ATTEMPT",
                  "FORKQ_HEARTBEAT_FD"):
            self.env.pop(k, None)
        self.env["FQBB_DAEMON_MARK"] = "from-forkqd"
        if env:
            self.env.update(env)
        self.proc = None
        self.starts = 0
        self.stderr_path = None
        self.expect_alive = False
        self.preexec = None     # run in the child before forkqd's exec
        self.wrapper = []       # a command forkqd runs under (unshare, chrt)
        self.stderr_dir = dir   # where forkqd.N.stderr go

    # life cycle

    def argv(self):
        return self.wrapper + [FORKQD, "-D", self.dir, "-s", self.sock,
                "-j", str(self.workers), "-l", self.log] + self.extra_args

    def start(self, wait=True):
        assert self.proc is None or self.proc.poll() is not None, \
            "daemon already running"
        self.starts += 1
        self.stderr_path = os.path.join(self.stderr_dir,
                                        "forkqd.%d.stderr" % self.starts)
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=err,
                stderr=err, env=self.env, cwd=self.dir,
                preexec_fn=self.preexec)
        self.expect_alive = True
        if wait:
            self.wait_ready()
        return self

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    def wait_ready(self, timeout=20):
        deadline = time.monotonic() + timeout * SCALE
        while True:
            if self.proc.poll() is not None:
                self.expect_alive = False
                raise AssertionError(
                    "forkqd exited with status %s before accepting "
                    "connections; stderr:\n%s"
                    % (self.proc.returncode, self.stderr()[-3000:]))
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.settimeout(5)
                    s.connect(self.sock)
                    return
                finally:
                    s.close()
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise AssertionError(
                    "forkqd accepted no connection on %s within %ds; "
                    "stderr:\n%s" % (self.sock, timeout,
                                     self.stderr()[-3000:]))
            time.sleep(POLL)

    def wait_exit(self, timeout=None):
        """Wait (bounded) for forkqd to exit; its status."""
        timeout = DEADLINE if timeout is None else timeout * SCALE
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("forkqd did not exit within %.0fs"
                                 % timeout)

    def signal(self, sig):
        if self.alive():
            os.kill(self.proc.pid, sig)

    def stop(self, timeout=None):
        """SIGTERM, wait (bounded), then SIGKILL.  Returns the exit status,
        or None when it had to be killed."""
        self.expect_alive = False
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            return self.proc.returncode
        timeout = DEADLINE if timeout is None else timeout * SCALE
        try:
            os.kill(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            return None

    def kill9(self):
        self.expect_alive = False
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(DEADLINE)

    def restart(self):
        self.stop()
        return self.start()

    # the protocol

    def connect(self, timeout=None):
        return Connection(self.sock, timeout)

    def request(self, obj, timeout=None):
        """Send one request on a fresh connection; the answer."""
        with self.connect(timeout) as c:
            return c.request(obj, timeout)

    def ok(self, obj, timeout=None):
        """request(), asserting the answer is ok."""
        ans = self.request(obj, timeout)
        if ans.get("ok") is not True:
            raise AssertionError("request %s failed: %r"
                                 % (json.dumps(obj)[:300], ans))
        return ans

    def submit(self, argv, **fields):
        """Submit; the task object."""
        req = {"op": "submit", "argv": list(argv)}
        req.update(fields)
        ans = self.ok(req)
        if not isinstance(ans.get("task"), dict):
            raise AssertionError("submit answer without task: %r" % ans)
        return ans["task"]

    def get(self, id):
        return self.ok({"op": "get", "id": id})["task"]

    def status(self):
        return self.ok({"op": "status"})["status"]

    def list(self, **fields):
        req = {"op": "list"}
        req.update(fields)
        return self.ok(req)["tasks"]

    def all_tasks(self):
        """Every task, following before_id pages."""
        out, before = [], None
        for _ in range(10000):
            req = {"limit": 100}
            if before is not None:
                req["before_id"] = before
            page = self.list(**req)
            if not page:
                return out
            out.extend(page)
            before = page[-1]["id"]
        raise AssertionError("list pagination does not end")

    def wait_state(self, id, states, timeout=None):
        """Poll get until the task's state is one of states; the task."""
        if isinstance(states, str):
            states = (states,)
        last = [None]

        def cond():
            last[0] = self.get(id)
            return last[0] if last[0]["state"] in states else None
        try:
            return wait_for(cond, timeout,
                            what="task %s to be %s" % (id, "/".join(states)))
        except AssertionError as e:
            raise AssertionError("%s; task is %s" % (e, json.dumps(last[0])))

    def wait_final(self, id, timeout=None):
        return self.wait_state(id, FINAL, timeout)

    def wait_running_pid(self, id, timeout=None):
        """Wait until the task runs with a pid; the task."""
        def cond():
            t = self.get(id)
            if t["state"] in FINAL:
                raise AssertionError("task %s ended before it was seen "
                                     "running: %s" % (id, json.dumps(t)))
            return t if t["state"] == "running" and t.get("pid") else None
        return wait_for(cond, timeout, what="task %s to run" % id)

    def output(self, id, stream="stdout", attempt=None, timeout=None):
        """All the captured bytes of an ended attempt, read with the
        output op until eof; the bound is on a wait without new bytes (a
        starved machine reads megabytes slowly, but reads)."""
        data, offset = b"", 0
        bound = DEADLINE if timeout is None else timeout * SCALE
        deadline = time.monotonic() + bound
        while True:
            req = {"op": "output", "id": id, "stream": stream,
                   "offset": offset, "wait_ms": 1000}
            if attempt is not None:
                req["attempt"] = attempt
            ans = self.ok(req)
            chunk = base64.b64decode(ans["data_b64"])
            data += chunk
            if ans["offset"] != offset + len(chunk):
                raise AssertionError(
                    "output offset %r after reading %d bytes from %d"
                    % (ans["offset"], len(chunk), offset))
            offset = ans["offset"]
            if ans["eof"] is True:
                return data
            if chunk:
                deadline = time.monotonic() + bound
            elif time.monotonic() >= deadline:
                raise AssertionError("output of task %s never reached eof"
                                     % id)
            if not chunk:
                time.sleep(POLL)

    # the event log

    def events(self, path=None):
        """The event log, parsed (a partial last line is left out)."""
        try:
            with open(path or self.log, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        out = []
        lines = data.split(b"\n")
        for line in lines[:-1]:
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                raise AssertionError("event log line is not JSON: %r"
                                     % line[:300])
            if not isinstance(ev, dict):
                raise AssertionError("event is not an object: %r"
                                     % line[:300])
            out.append(ev)
        return out

    def wait_event(self, pred, timeout=None, what="event", path=None):
        """Poll the event log (or the log file at path) until an event
        matches pred; that event."""
        def cond():
            for ev in self.events(path):
                if pred(ev):
                    return ev
            return None
        return wait_for(cond, timeout, what=what)

    def task_events(self, id, name=None):
        return [e for e in self.events() if e.get("task") == id and
                (name is None or e.get("event") == name)]

    # the client

    def cli(self, *args, env=None, input=None, timeout=60, raw=False,
            cwd=None, sock=True):
        """Run `forkq -s SOCK ARGS...`; (status, stdout, stderr)."""
        return run_cli(*args, env=env, input=input, timeout=timeout,
                       raw=raw, cwd=cwd,
                       sock=self.sock if sock is True else sock)

    # the database

    def db_connect(self):
        """A read-only connection to forkq.db."""
        return sqlite3.connect("file:%s?mode=ro" % self.db, uri=True,
                               timeout=30)

    def insert_canceled_tasks(self, rows):
        """Writes tasks straight into forkq.db while forkqd is stopped:
        one per (name, created_at, finished_at), canceled before they
        ran, owned by this user. For stores bigger than a test can fill
        through forkqd in good time."""
        db = sqlite3.connect(self.db)
        with db:
            db.executemany(
                "INSERT INTO tasks (name, queue, argv, state, max_attempts,"
                " attempts_per_run, created_at, run_at, finished_at,"
                " backoff_base_ms, backoff_max_ms, uid, gid) VALUES"
                " (?, 'default', '[\"true\"]', 'canceled', 1, 1, ?, ?, ?,"
                " 1000, 60000, ?, ?)",
                [(name, created, created, finished, os.getuid(),
                  os.getgid()) for name, created, finished in rows])
        db.close()


def client_env(extra=None):
    env = dict(os.environ)
    for k in ("FORKQ_SOCKET", "FORKQ_TASK_ID", "FORKQ_ATTEMPT",
              "FORKQ_HEARTBEAT_FD"):
        env.pop(k, None)
    if extra:
        env.update(extra)
    return env


def run_cli(*args, env=None, input=None, timeout=60, raw=False, cwd=None,
            sock=None, prog=None):
    argv = [prog or FORKQ]
    if sock:
        argv += ["-s", sock]
    argv += [str(a) for a in args]
    if isinstance(input, str):
        input = input.encode()
    try:
        p = subprocess.run(argv, input=input,
                           stdin=None if input is not None
                           else subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=env if env is not None else client_env(),
                           timeout=timeout * SCALE, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("%s did not finish within %ds (stdout %r, "
                             "stderr %r)" % (" ".join(argv), timeout,
                                             e.stdout, e.stderr))
    if raw:
        return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")
    return (p.returncode, p.stdout.decode("utf-8", "replace"),
            p.stderr.decode("utf-8", "replace"))


# --- the test case -----------------------------------------------------------

def _tmp_base():
    base = tempfile.gettempdir()
    # Unix socket paths are limited to 107 bytes.
    return base if len(base) <= 40 else "/tmp"


class TestCase(unittest.TestCase):
    """Gives each test self.tmp and, on first use, self.d: a forkqd with
    WORKERS workers and DAEMON_ARGS, stopped with everything else at the
    end."""

    WORKERS = 2
    DAEMON_ARGS = ()
    maxDiff = 4000

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="fq-", dir=_tmp_base())
        self._daemons = []
        self._pids = []
        self._procs = []
        self._d = None
        self._d_lock = threading.Lock()
        self.addCleanup(self._cleanup)

    @property
    def d(self):
        with self._d_lock:
            if self._d is None:
                self._d = self.start_daemon()
            return self._d

    def start_daemon(self, workers=None, extra_args=None, dir=None,
                     env=None, start=True):
        """A new forkqd (started unless start is false) on dir (default a
        fresh directory under self.tmp)."""
        if dir is None:
            dir = os.path.join(self.tmp, "d%d" % len(self._daemons))
        d = Daemon(dir, self.WORKERS if workers is None else workers,
                   self.DAEMON_ARGS if extra_args is None else extra_args,
                   env)
        self._daemons.append(d)
        if start:
            d.start()
        return d

    def track_pid(self, pid):
        """Have tearDown kill pid (checked by start time) if it lives."""
        st = proc_stat(pid)
        if st is not None:
            self._pids.append((pid, st[4]))

    def track_proc(self, p):
        """Have tearDown kill and reap a Popen."""
        self._procs.append(p)
        return p

    def start_daemonized(self, d):
        """Runs d's argv (with --daemon) to its exit, then waits until
        the daemon it left answers; the daemon's pid (tracked)."""
        subprocess.run(d.argv(), check=True, timeout=60 * SCALE,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env=d.env, cwd=d.dir)
        pidfile = os.path.join(d.dir, "forkqd.pid")

        def answering():
            try:
                with open(pidfile) as f:
                    pid = int(f.read().strip() or 0)
                d.request({"op": "status"})
                return pid or None
            except (OSError, ValueError):
                return None
        pid = wait_for(answering, what="the daemonized forkqd to answer")
        self.track_pid(pid)
        return pid

    def end_daemonized(self, pid, sig):
        """Sends a daemonized forkqd sig and reaps it (the harness is a
        subreaper: it is ours)."""
        os.kill(pid, sig)
        wait_gone(pid)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass

    def read_pidfile(self, path, timeout=None):
        """Wait for a pid file written by fqtask; the pid (tracked)."""
        def cond():
            try:
                with open(path) as f:
                    s = f.read().strip()
                return int(s) if s else None
            except (OSError, ValueError):
                return None
        pid = wait_for(cond, timeout, what="pid file %s" % path)
        self.track_pid(pid)
        return pid

    def path(self, *names):
        return os.path.join(self.tmp, *names)

    def preload_env(self, name, source, extra=None):
        """The environment that has forkqd load a shim compiled from C
        source (with $CC, else cc), plus extra; skips the test when there
        is no compiler."""
        cc = (shlex.split(os.environ.get("CC", "")) or
              [shutil.which("cc") or shutil.which("gcc")])
        if cc[0] is None:
            self.skipTest("no C compiler for the %s shim" % name)
        src, shim = self.path(name + ".c"), self.path(name + ".so")
        with open(src, "w") as f:
            f.write(source)
        subprocess.run(cc + ["-shared", "-fPIC", "-o", shim, src, "-ldl"],
                       check=True)
        # An ASan forkqd wants its runtime first: the shim comes before.
        asan = os.environ.get("ASAN_OPTIONS", "")
        env = {"LD_PRELOAD": shim, "ASAN_OPTIONS": asan +
               (":" if asan else "") + "verify_asan_link_order=0"}
        env.update(extra or {})
        return env

    def touch(self, path):
        with open(path, "w") as f:
            f.write("\n")

    def check_task_shape(self, task):
        self.assertIsInstance(task, dict)
        missing = [k for k in TASK_FIELDS if k not in task]
        self.assertEqual(missing, [], "task object lacks fields %s: %s"
                         % (missing, json.dumps(task)))

    def check_attempt_shape(self, att):
        self.assertIsInstance(att, dict)
        missing = [k for k in ATTEMPT_FIELDS if k not in att]
        self.assertEqual(missing, [], "attempt object lacks fields %s: %s"
                         % (missing, json.dumps(att)))

    def _cleanup(self):
        problems = []
        for d in self._daemons:
            if d.expect_alive and d.proc is not None and \
                    d.proc.poll() is not None:
                problems.append(
                    "forkqd (pid %d) died during the test with status %s; "
                    "stderr:\n%s" % (d.proc.pid, d.proc.returncode,
                                     d.stderr()[-3000:]))
            running = d.expect_alive and d.alive()
            try:
                rc = d.stop(timeout=5)
            except Exception as e:      # go on stopping the rest
                problems.append("stopping forkqd: %r" % (e,))
                continue
            # A graceful stop exits 0; under the sanitizers a leak or an
            # error found at exit makes it non-zero (LeakSanitizer: 23).
            if running and rc not in (0, None):
                problems.append(
                    "forkqd (pid %d) exited with status %s when stopped; "
                    "stderr:\n%s" % (d.proc.pid, rc, d.stderr()[-3000:]))
        for p in self._procs:
            if p.poll() is None:
                try:
                    p.kill()
                except ProcessLookupError:
                    pass
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    problems.append("pid %d would not die" % p.pid)
        for pid, start in self._pids:
            if pid_alive(pid, start):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        kill_strays()
        for d in self._daemons:
            remove_cgroups(d.dir)
        if os.environ.get("FORKQ_TEST_KEEP"):
            sys.stderr.write("kept %s\n" % self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if problems:
            self.fail("\n".join(problems))


def remove_cgroups(state_dir):
    """Remove the (empty) cgroups a forkqd on state_dir made (forkqd
    --cgroup auto: forkq.DEV.INO under its cgroup), which a forkqd killed
    with SIGKILL leaves behind."""
    try:
        st = os.stat(state_dir)
        with open("/proc/self/mountinfo") as f:
            mnt = next((line.split()[4] for line in f
                        if " - cgroup2 " in line), None)
        with open("/proc/self/cgroup") as f:
            rel = next((line.strip()[3:] for line in f
                        if line.startswith("0::")), None)
    except (OSError, StopIteration):
        return
    if mnt is None or rel is None:
        return
    base = os.path.join(mnt + (rel if rel != "/" else ""),
                        "forkq.%x.%x" % (st.st_dev, st.st_ino))
    if not os.path.isdir(base):
        return
    for name in os.listdir(base):
        path = os.path.join(base, name)
        if os.path.isfile(os.path.join(path, "cgroup.procs")):
            try:
                os.rmdir(path)
            except OSError:
                pass
    try:
        os.rmdir(base)
    except OSError:
        pass


def kill_strays():
    """Kill (by pid) whatever was reparented to this subreaper, and reap
    every exited child."""
    for _ in range(50):
        kids = [p for p in children_of(os.getpid()) if pid_alive(p)]
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        reap()
        if not kids:
            break
        time.sleep(0.02)
    reap()


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main():
    unittest.main(verbosity=2)
