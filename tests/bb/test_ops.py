"""Operations: forkqd under an init system (spec sections 2 and 4.6).

The sd_notify protocol as systemd would see it (a datagram socket of the
test's own), real supervision by runit's runsv (and s6-supervise, where
installed) with the run scripts in contrib/, the Python client in
contrib/clients against a real forkqd, the systemd unit (checked by
systemd-analyze where it exists), the bash completion, and lint of the man
pages. A tool that is not installed skips its test, naming it.
"""

import importlib.util
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fqtest                                             # noqa: E402
from fqtest import (DEADLINE, SRCDIR, fq, pid_alive, proc_stat,
                    wait_for, wait_gone)                  # noqa: E402

CONTRIB = os.path.join(SRCDIR, "contrib")
UNIT = os.path.join(CONTRIB, "systemd", "forkqd.service")
DEFAULTS = os.path.join(CONTRIB, "systemd", "forkqd.default")
CLIENT_PY = os.path.join(CONTRIB, "clients", "forkq.py")
COMPLETION = os.path.join(CONTRIB, "completion", "forkq.bash")
RUN_SCRIPTS = ("runit/forkqd/run", "runit/forkqd/log/run", "s6/forkqd/run",
               "s6/forkqd/finish", "s6/forkqd/log/run")
WATCHDOG_USEC = 400000


# --- the readiness protocol's receiving end ----------------------------------

class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's notify socket:
    every message is kept, with the monotonic time it arrived. When a
    message carries READY=1 the reader tries, at once, to connect to
    ready_probe (forkqd's socket) and records whether that worked."""

    def __init__(self, path, ready_probe=None):
        self.path = path
        self.ready_probe = ready_probe
        self.ready_probe_error = "no READY=1 seen"
        self.msgs = []              # (monotonic seconds, text)
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        addr = "\0" + path[1:] if path.startswith("@") else path
        self.sock.bind(addr)
        self.sock.settimeout(0.1)
        self.stopped = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while not self.stopped:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            text = data.decode("utf-8", "replace")
            if "READY=1" in text.split("\n") and self.ready_probe:
                self.ready_probe_error = self._probe()
            with self.lock:
                self.msgs.append((time.monotonic(), text))

    def _probe(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(5)
            s.connect(self.ready_probe)
            return None
        except OSError as e:
            return "connect(%s) right after READY=1: %s" % (
                self.ready_probe, e)
        finally:
            s.close()

    def close(self):
        self.stopped = True
        self.thread.join(5)
        self.sock.close()
        if not self.path.startswith("@"):
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def messages(self):
        with self.lock:
            return list(self.msgs)

    def texts(self):
        return [m for _, m in self.messages()]

    def with_var(self, name):
        """(time, value) of each message that assigns name."""
        out = []
        for t, m in self.messages():
            for line in m.split("\n"):
                if line.startswith(name + "="):
                    out.append((t, line[len(name) + 1:]))
        return out

    def wait_var(self, name, value=None, after=0, timeout=None):
        """Wait for a message assigning name (=value, if given) that
        arrived after the monotonic time `after`; (time, value)."""
        def cond():
            for t, v in self.with_var(name):
                if t > after and (value is None or v == value):
                    return (t, v)
            return None
        return wait_for(cond, timeout, what="%s=%s from forkqd (got %r)"
                        % (name, value if value is not None else "...",
                           self.texts()[-10:]))


class OpsTestCase(fqtest.TestCase):

    def notify_socket(self, path=None, probe=None):
        n = NotifySocket(path or self.path("notify.sock"), probe)
        self.addCleanup(n.close)
        return n

    def notify_daemon(self, n, workers=2, watchdog_usec=WATCHDOG_USEC,
                      extra_env=None, argv_prefix=None):
        """A forkqd (not yet started) whose NOTIFY_SOCKET is n."""
        d = self.start_daemon(workers=workers, start=False)
        n.ready_probe = d.sock
        for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            d.env.pop(k, None)
        d.env["NOTIFY_SOCKET"] = n.path
        if watchdog_usec is not None:
            d.env["WATCHDOG_USEC"] = str(watchdog_usec)
        if extra_env:
            d.env.update(extra_env)
        if argv_prefix:
            d.wrapper = list(argv_prefix)
        return d


# --- sd_notify ---------------------------------------------------------------

class Notify(OpsTestCase):

    def test_a_listener_that_reads_nothing_holds_nothing_up(self):
        # Its queue full, sendto waited: the loop stopped for good, and
        # SIGTERM with it (signals come through the loop).
        path = self.path("deaf.sock")
        deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        deaf.bind(path)
        self.addCleanup(deaf.close)
        d = self.start_daemon(start=False)
        for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            d.env.pop(k, None)
        d.env.update(NOTIFY_SOCKET=path, WATCHDOG_USEC="20000")
        d.start()
        # WATCHDOG=1 every 10 ms: the queue is full within a few tens.
        wait_for(lambda: "reads nothing" in d.stderr(),
                 what="forkqd to find its listener's queue full")
        for _ in range(20):
            self.assertIs(d.request({"op": "status"})["ok"], True)
        t = d.wait_final(d.submit(fq("exit", 0))["id"])
        self.assertEqual(t["state"], "succeeded")
        self.assertEqual(d.stop(timeout=30), 0)
        self.assertEqual(d.stderr().count("reads nothing"), 1, d.stderr())

    def test_a_missing_socket_is_said_once_until_it_comes(self):
        # Said at every message, it put a line in the log at each
        # watchdog tick and each STATUS=, for as long as forkqd ran.
        path = self.path("later.sock")
        d = self.start_daemon(start=False)
        for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            d.env.pop(k, None)
        d.env.update(NOTIFY_SOCKET=path, WATCHDOG_USEC="20000")
        d.start()
        missing = "No such file or directory; messages are dropped"
        wait_for(lambda: missing in d.stderr(),
                 what="forkqd to say its notify socket is missing")
        # A task of 0.5 s: some 50 watchdog ticks fail meanwhile.
        t = d.wait_final(d.submit(fq("sleep", "0.5"))["id"])
        self.assertEqual(t["state"], "succeeded")
        self.assertEqual(d.stderr().count(missing), 1, d.stderr())
        n = self.notify_socket(path)
        n.wait_var("WATCHDOG", "1")
        wait_for(lambda: "messages go again" in d.stderr(),
                 what="forkqd to say its messages go again")
        # Gone again: a new failure, said again.
        n.close()
        wait_for(lambda: d.stderr().count(missing) == 2,
                 what="forkqd to say its notify socket is gone again")
        self.assertEqual(d.stop(timeout=30), 0)

    def test_a_ready_lost_to_a_full_queue_is_sent_again(self):
        # Lost, it left a Type=notify unit starting until systemd's start
        # timeout failed it.
        path = self.path("busy.sock")
        busy = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        busy.bind(path)
        self.addCleanup(busy.close)
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(filler.close)
        filler.setblocking(False)
        queued = 0
        try:
            while True:
                filler.sendto(b"X=1", path)
                queued += 1
        except BlockingIOError:
            pass
        d = self.start_daemon(start=False)
        for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            d.env.pop(k, None)
        d.env["NOTIFY_SOCKET"] = path
        d.start()
        wait_for(lambda: "reads nothing" in d.stderr(),
                 what="forkqd to find the queue full")
        busy.settimeout(30 * fqtest.SCALE)
        got = [busy.recv(4096) for _ in range(queued)]
        self.assertEqual(set(got), {b"X=1"})
        # Room again: READY=1 comes on its own (a STATUS= may come first).
        for _ in range(5):
            msg = busy.recv(4096).decode().split("\n")
            if "READY=1" in msg:
                break
        self.assertIn("READY=1", msg)
        self.assertIn("MAINPID=%d" % d.pid, msg)
        # The STATUS= lost the same way goes too, with nothing changed.
        while "STATUS=0 running, 0 queued" not in msg:
            msg = busy.recv(4096).decode().split("\n")

    def test_ready_status_watchdog_stopping(self):
        n = self.notify_socket()
        d = self.notify_daemon(n, workers=1)
        d.start(wait=False)

        t_ready, _ = n.wait_var("READY", "1", timeout=20)
        self.assertIsNone(n.ready_probe_error,
                          "READY=1 only once the socket accepts")
        first = n.texts()[0].split("\n")
        self.assertEqual(first[0], "READY=1", "READY=1 comes first")
        self.assertIn("MAINPID=%d" % d.pid, first, "READY=1 names the pid")
        d.wait_ready()

        # STATUS= right after READY=1, then on every change.
        _, st = n.wait_var("STATUS", timeout=5)
        self.assertEqual(st, "0 running, 0 queued")
        t0 = time.monotonic()
        a = d.submit(fq("sleep", 60))
        d.wait_running_pid(a["id"])
        n.wait_var("STATUS", "1 running, 0 queued", after=t0)
        b = d.submit(fq("sleep", 60))
        c = d.submit(fq("sleep", 60))
        n.wait_var("STATUS", "1 running, 2 queued", after=t0)
        for t in (a, b, c):
            d.ok({"op": "cancel", "id": t["id"]})
        for t in (a, b, c):
            d.wait_final(t["id"])
        n.wait_var("STATUS", "0 running, 0 queued", after=t0)

        statuses = n.with_var("STATUS")
        vals = [v for _, v in statuses]
        for i in range(1, len(vals)):
            self.assertNotEqual(vals[i], vals[i - 1],
                                "STATUS= sent only when it changes: %r"
                                % vals)
        gaps = [round(statuses[i][0] - statuses[i - 1][0], 3)
                for i in range(1, len(statuses))]
        self.assertTrue(all(g >= 0.8 for g in gaps),
                        "STATUS= at most once a second: gaps %r for %r"
                        % (gaps, vals))

        # WATCHDOG=1 every WATCHDOG_USEC/2 (0.2 s) from READY=1 on.
        wait_for(lambda: len(n.with_var("WATCHDOG")) >= 8,
                 what="8 WATCHDOG=1 messages")
        dogs = [t for t, v in n.with_var("WATCHDOG")]
        self.assertEqual({v for _, v in n.with_var("WATCHDOG")}, {"1"})
        self.assertGreaterEqual(dogs[0], t_ready)
        gaps = [dogs[i] - dogs[i - 1] for i in range(1, len(dogs))]
        mean = sum(gaps) / len(gaps)
        # Over two gaps: a reader thread held up gets a late one and the
        # next together (0.29 s, then 0.006 s on a starved machine).
        pairs = [dogs[i] - dogs[i - 2] for i in range(2, len(dogs))]
        self.assertGreaterEqual(min(pairs), 0.2,
                                "WATCHDOG=1 not more often than asked: %r"
                                % gaps)
        self.assertTrue(0.15 <= mean <= 0.3 * fqtest.SCALE,
                        "WATCHDOG=1 about every 0.2 s: mean gap %.3f s, "
                        "gaps %r" % (mean, gaps))

        # STOPPING=1 as soon as SIGTERM is taken, then a clean exit.
        t1 = time.monotonic()
        d.signal(signal.SIGTERM)
        n.wait_var("STOPPING", "1", after=t1)
        self.assertEqual(d.wait_exit(), 0, d.stderr()[-2000:])
        d.expect_alive = False
        self.assertEqual(len(n.with_var("READY")), 1, "one READY=1")

    def test_stopping_before_the_grace_ends(self):
        n = self.notify_socket()
        d = self.notify_daemon(n, watchdog_usec=None)
        d.extra_args = ["--shutdown-grace", "3s", "--kill-grace", "1s"]
        d.start()
        t = d.submit(fq("sleep", 60))
        self.track_pid(d.wait_running_pid(t["id"])["pid"])
        t1 = time.monotonic()
        d.signal(signal.SIGTERM)
        n.wait_var("STOPPING", "1", after=t1, timeout=2)
        self.assertTrue(d.alive(), "STOPPING=1 comes when the shutdown "
                        "begins, not when it ends")
        self.assertEqual(d.wait_exit(), 0, d.stderr()[-2000:])
        d.expect_alive = False
        self.assertEqual(n.with_var("WATCHDOG"), [],
                         "no WATCHDOG=1 without WATCHDOG_USEC")

    def test_watchdog_pid(self):
        # WATCHDOG_PID names forkqd itself (as systemd sets it): pings.
        n = self.notify_socket()
        d = self.notify_daemon(n, argv_prefix=[
            "/bin/sh", "-c", 'WATCHDOG_PID=$$; export WATCHDOG_PID; '
            'exec "$0" "$@"'])
        d.start()
        wait_for(lambda: len(n.with_var("WATCHDOG")) >= 3,
                 what="WATCHDOG=1 with WATCHDOG_PID = forkqd's pid")
        self.assertEqual(d.stop(), 0)

        # WATCHDOG_PID names another process: the watchdog is not forkqd's.
        n2 = self.notify_socket(self.path("notify2.sock"))
        d2 = self.notify_daemon(n2, extra_env={"WATCHDOG_PID": "1"})
        d2.start()
        n2.wait_var("READY", "1")
        time.sleep(5 * WATCHDOG_USEC / 2e6)     # five periods: none due
        self.assertEqual(n2.with_var("WATCHDOG"), [],
                         "no WATCHDOG=1 when WATCHDOG_PID is not forkqd")
        self.assertEqual(d2.stop(), 0)

    def test_abstract_notify_socket(self):
        name = "@fqtest-notify-%d-%d" % (os.getpid(), time.monotonic_ns())
        n = self.notify_socket(name)
        d = self.notify_daemon(n, watchdog_usec=None)
        d.start(wait=False)
        n.wait_var("READY", "1", timeout=20)
        self.assertIsNone(n.ready_probe_error)
        self.assertEqual(d.stop(), 0)
        n.wait_var("STOPPING", "1")


# --- real supervision --------------------------------------------------------

# Plays systemd's part in socket activation: binds and listens on a Unix
# socket, puts it at fd 3, sets LISTEN_PID to the pid that execs forkqd.
ACTIVATE = r"""
import os, socket, sys
path, nfds = sys.argv[1], sys.argv[2]
kind = os.environ.pop("ACTIVATE_KIND", "listening")
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM if kind == "datagram"
                  else socket.SOCK_STREAM)
try:
    os.unlink(path)
except FileNotFoundError:
    pass
s.bind(path)
os.chmod(path, 0o600)
if kind == "listening":
    s.listen(16)
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = nfds
os.execv(sys.argv[3], sys.argv[3:])
"""


class SocketActivation(OpsTestCase):

    def activated(self, listen_path=None, nfds="1"):
        """A forkqd (not started) given a listening socket at
        listen_path (default: its own socket path) the way systemd gives
        one, with LISTEN_FDS=nfds."""
        d = self.start_daemon(start=False)
        d.wrapper = [sys.executable, "-c", ACTIVATE,
                     listen_path or d.sock, nfds]
        return d

    def test_no_socket_passed_makes_its_own(self):
        d = self.activated(self.path("unused.sock"), nfds="0")
        d.start()
        d.status()
        t = d.submit(fq("exit", 0))
        self.assertEqual(d.wait_final(t["id"])["state"], "succeeded")
        self.assertEqual(d.stop(), 0)
        self.assertFalse(os.path.exists(d.sock),
                         "a socket forkqd made is removed at exit")

    def test_daemon_mode_takes_the_passed_socket(self):
        """--daemon changes the pid LISTEN_PID names: the socket is
        taken before."""
        d = self.activated()
        d.extra_args.append("--daemon")
        pid = self.start_daemonized(d)
        t = d.submit(fq("exit", 0))
        self.assertEqual(d.wait_final(t["id"])["state"], "succeeded")
        self.end_daemonized(pid, signal.SIGTERM)

    def test_serves_on_the_socket_systemd_passed(self):
        d = self.activated()
        d.extra_args = ["--socket-mode", "0666"]
        d.start()
        # The socket listens before forkqd runs (systemd's): ready is
        # when forkqd answers.
        d.status()
        self.assertIn("SocketMode=", d.stderr(),
                      "--socket-mode cannot apply: forkqd says so")
        self.assertEqual(stat.S_IMODE(os.stat(d.sock).st_mode), 0o600,
                         "the passed socket keeps its own mode")
        t = d.submit(fq("env"))
        self.assertEqual(d.wait_final(t["id"])["state"], "succeeded")
        env = d.output(t["id"]).decode()
        self.assertNotIn("LISTEN_FDS=", env)
        self.assertNotIn("LISTEN_PID=", env)
        self.assertEqual(d.stop(), 0)
        self.assertTrue(os.path.exists(d.sock),
                        "the socket is systemd's: forkqd leaves it")

    def test_a_socket_of_another_kind_is_refused_by_what_it_is(self):
        for kind, said in (("datagram", "a Unix datagram socket"),
                           ("bound", "a Unix stream socket, not listening")):
            with self.subTest(kind=kind):
                d = self.activated()
                d.env["ACTIVATE_KIND"] = kind
                d.start(wait=False)
                self.assertNotEqual(d.wait_exit(), 0)
                d.expect_alive = False
                self.assertIn("(fd 3) is %s" % said, d.stderr())

    def test_a_socket_elsewhere_is_refused(self):
        d = self.activated(self.path("elsewhere.sock"))
        d.start(wait=False)
        self.assertNotEqual(d.wait_exit(), 0)
        d.expect_alive = False
        self.assertIn("elsewhere.sock", d.stderr())
        self.assertIn("ListenStream", d.stderr())


class Supervised(OpsTestCase):
    """forkqd run by a real supervisor from contrib/'s run scripts."""

    def service_dir(self, flavour, state, parent=None):
        """A copy of contrib/FLAVOUR/forkqd in parent (default a new
        directory) with a conf pointing at the build and at a state dir
        under the test's tmp; its path."""
        svc = os.path.join(parent or self.path("sv-" + flavour), "forkqd")
        src = os.path.join(CONTRIB, flavour, "forkqd")
        for root, dirs, files in os.walk(src):
            rel = os.path.relpath(root, src)
            os.makedirs(os.path.join(svc, rel), exist_ok=True)
            for f in files:
                dst = os.path.join(svc, rel, f)
                shutil.copyfile(os.path.join(root, f), dst)
                # The source may be read-only (make distcheck).
                os.chmod(dst, 0o755 if os.access(os.path.join(root, f),
                                                 os.X_OK) else 0o644)
        self.logdir = self.path("sv-" + flavour + "-log")
        with open(os.path.join(svc, "conf"), "w") as f:
            f.write("FORKQD='%s'\nFORKQD_STATE_DIR='%s'\n"
                    "FORKQD_SOCKET='%s'\nFORKQD_LOGDIR='%s'\n"
                    "FORKQD_OPTS='-j 2 --shutdown-grace 2s "
                    "--kill-grace 1s'\n"
                    % (fqtest.FORKQD, state, os.path.join(state, "forkq.sock"),
                       self.logdir))
        return svc

    def env(self):
        env = fqtest.client_env()
        env.pop("NOTIFY_SOCKET", None)
        return env

    def answering_pid(self, d, not_pid=None):
        """Wait until forkqd answers status with a pid other than not_pid;
        that pid."""
        def cond():
            try:
                pid = d.request({"op": "status"}, timeout=5)["status"]["pid"]
            except (OSError, AssertionError, KeyError, TypeError):
                return None
            return pid if pid != not_pid else None
        return wait_for(cond, what="forkqd to answer status%s" % (
            "" if not_pid is None else " with a pid other than %d"
            % not_pid))

    def crash_and_recover(self, d, pidfile_of):
        """Submit a task whose first attempt runs long, SIGKILL forkqd, and
        check the supervisor's new forkqd records it lost and runs it
        again. pidfile_of(): the supervisor's idea of forkqd's pid."""
        pid1 = self.answering_pid(d)
        self.assertEqual(pidfile_of(), pid1)
        self.track_pid(pid1)
        t = d.submit(fq("until-attempt", 2, "sleep", 600), name="long",
                     max_attempts=3, backoff_base_ms=100,
                     backoff_max_ms=100)
        run = d.wait_running_pid(t["id"])
        self.track_pid(run["pid"])
        os.kill(pid1, signal.SIGKILL)
        wait_gone(pid1, what="the killed forkqd %d to be gone" % pid1)
        pid2 = self.answering_pid(d, not_pid=pid1)
        self.track_pid(pid2)
        self.assertEqual(pidfile_of(), pid2, "the supervisor runs the "
                         "forkqd that answers")
        done = d.wait_final(t["id"])
        self.assertEqual(done["state"], "succeeded", json.dumps(done))
        outcomes = [a["outcome"] for a in done["attempts"]]
        self.assertEqual(outcomes, ["lost", "success"], json.dumps(done))
        self.assertFalse(pid_alive(run["pid"]),
                         "the lost attempt's process was killed")
        return pid2

    def check_nothing_left(self, pids):
        for pid in pids:
            wait_gone(pid, timeout=10, what="pid %d to be gone" % pid)
        left = [p for p in fqtest.children_of(os.getpid())
                if pid_alive(p)]
        self.assertEqual(left, [], "processes left behind: %r" % [
            (p, proc_stat(p)) for p in left])

    def test_runsv_restarts_and_stops(self):
        for tool in ("runsv", "sv", "svlogd"):
            if shutil.which(tool) is None:
                self.skipTest("%s not installed (Debian package runit; "
                              "contrib/bootstrap installs it)" % tool)
        state = self.path("state")
        svc = self.service_dir("runit", state)
        d = fqtest.Daemon(state)        # a handle on the socket only
        err = open(self.path("runsv.stderr"), "wb")
        self.addCleanup(err.close)
        runsv = self.track_proc(subprocess.Popen(
            ["runsv", svc], stdin=subprocess.DEVNULL, stdout=err,
            stderr=err, env=self.env()))

        def supervised_pid():
            try:
                with open(os.path.join(svc, "supervise", "pid")) as f:
                    return int(f.read().strip() or 0)
            except (OSError, ValueError):
                return None
        pid2 = self.crash_and_recover(d, supervised_pid)

        # stderr went to the log service, svlogd.
        current = os.path.join(self.logdir, "current")
        wait_for(lambda: b"daemon.started" in read_bytes(current),
                 what="forkqd's events in %s" % current)
        logger = [p for p in fqtest.children_of(runsv.pid)
                  if pid_alive(p) and p != pid2]

        # sv down: SIGTERM, forkqd shuts down cleanly.
        p = subprocess.run(["sv", "-w", str(int(DEADLINE)), "down", svc],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           env=self.env(), timeout=DEADLINE + 10)
        self.assertEqual(p.returncode, 0, p.stdout)
        wait_gone(pid2, what="forkqd to stop on sv down")
        wait_for(lambda: b"daemon.stopped" in read_bytes(current),
                 what="daemon.stopped in the log")
        p = subprocess.run(["sv", "status", svc], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, env=self.env(),
                           timeout=30)
        self.assertTrue(p.stdout.startswith(b"down:"), p.stdout)
        self.assertNotIn(b"want up", p.stdout)

        # sv exit: runsv and its logger go too; nothing is left.
        p = subprocess.run(["sv", "exit", svc], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, env=self.env(),
                           timeout=30)
        self.assertEqual(p.returncode, 0, p.stdout)
        try:
            runsv.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            self.fail("runsv did not exit on sv exit")
        self.check_nothing_left([pid2] + logger)

    def test_s6_svscan_restarts_and_stops(self):
        for tool in ("s6-svscan", "s6-svscanctl", "s6-supervise", "s6-svc",
                     "s6-svstat", "s6-log"):
            if shutil.which(tool) is None:
                self.skipTest("%s not installed (Debian package s6)" % tool)
        state = self.path("state")
        scandir = self.path("scan")
        svc = self.service_dir("s6", state, parent=scandir)
        d = fqtest.Daemon(state)
        errf = open(self.path("s6-svscan.stderr"), "wb")
        self.addCleanup(errf.close)
        scan = self.track_proc(subprocess.Popen(
            ["s6-svscan", scandir], stdin=subprocess.DEVNULL, stdout=errf,
            stderr=errf, env=self.env()))

        def supervised_pid():
            p = subprocess.run(["s6-svstat", "-p", svc],
                               stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, env=self.env(),
                               timeout=30)
            try:
                pid = int(p.stdout.strip())
            except ValueError:
                return None
            return pid if pid > 0 else None
        pid2 = self.crash_and_recover(d, supervised_pid)
        # stderr went to the logger, s6-log.
        current = os.path.join(self.logdir, "current")
        wait_for(lambda: b"daemon.started" in read_bytes(current),
                 what="forkqd's events in %s" % current)

        p = subprocess.run(["s6-svc", "-wD", "-T", str(int(DEADLINE * 1000)),
                            "-d", svc], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, env=self.env(),
                           timeout=DEADLINE + 10)
        self.assertEqual(p.returncode, 0, p.stdout)
        wait_gone(pid2, what="forkqd to stop on s6-svc -d")
        wait_for(lambda: b"daemon.stopped" in read_bytes(current),
                 what="daemon.stopped in the log")
        p = subprocess.run(["s6-svstat", "-o", "up,exitcode", svc],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           env=self.env(), timeout=30)
        self.assertEqual(p.stdout.split(), [b"false", b"0"],
                         "down, after exit status 0")

        # s6-svscanctl -t: the supervisors and the logger go too.
        tree = fqtest.children_of(scan.pid)
        for pid in list(tree):
            tree += fqtest.children_of(pid)
        p = subprocess.run(["s6-svscanctl", "-t", scandir],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           env=self.env(), timeout=30)
        self.assertEqual(p.returncode, 0, p.stdout)
        try:
            scan.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            self.fail("s6-svscan did not exit on s6-svscanctl -t")
        self.check_nothing_left([pid2] + tree)


# --- the Python client -------------------------------------------------------

def read_bytes(path):
    """The content of path; b"" while it does not exist."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def load_client():
    spec = importlib.util.spec_from_file_location("forkq_client", CLIENT_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class PythonClient(OpsTestCase):

    def setUp(self):
        super().setUp()
        self.fqpy = load_client()

    def py(self, *args, timeout=60):
        p = subprocess.run(
            [sys.executable, CLIENT_PY, "--socket", self.d.sock] +
            [str(a) for a in args], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=fqtest.client_env(), timeout=timeout * fqtest.SCALE,
            cwd=self.tmp)
        return (p.returncode, p.stdout.decode("utf-8", "replace"),
                p.stderr.decode("utf-8", "replace"))

    def test_class_submit_watch_wait_get(self):
        with self.fqpy.Client(self.d.sock, timeout=DEADLINE) as c:
            self.assertEqual(c.status()["pid"], self.d.pid)
            gate = self.path("gate")
            t = c.submit(fq("waitfile", gate, 60), name="pyc",
                         env={"K": "V"})
            self.assertEqual((t["name"], t["state"] in ("queued", "running")),
                             ("pyc", True))
            events = c.watch(task=t["id"], backlog=1000)
            self.touch(gate)
            seen = []
            for ev in events:
                self.assertEqual(ev.get("task"), t["id"], ev)
                seen.append(ev["event"])
                if ev["event"] in self.fqpy.FINAL_EVENTS:
                    break
            events.close()
            self.assertEqual(seen, ["task.submitted", "task.started",
                                    "task.attempt_ended", "task.succeeded"])
            done = c.wait(t["id"])
            self.assertEqual(done["state"], "succeeded")
            got = c.get(t["id"])
            self.assertEqual([a["outcome"] for a in got["attempts"]],
                             ["success"])
            self.assertEqual(self.fqpy.task_exit_status(got), 0)
            with self.assertRaises(self.fqpy.Error) as cm:
                c.get(t["id"] + 1000)
            self.assertEqual(cm.exception.code, "not_found")
            # The connection is still usable after an error answer.
            self.assertEqual(c.get(t["id"])["id"], t["id"])
            s = c.submit(fq("sleep", 30))
            w = c.wait(s["id"], timeout_ms=100)
            self.assertIs(w.get("timed_out"), True)
            self.assertEqual(c.cancel(s["id"])["id"], s["id"])
            self.assertEqual(c.wait(s["id"])["state"], "canceled")
        with self.assertRaises(self.fqpy.ConnectError):
            self.fqpy.Client(self.path("nothing.sock")).status()

    def test_cli_submit_wait_events(self):
        rc, out, err = self.py("submit", "--name", "clitask", "--env",
                               "A=1", "--", *fq("exit", 0))
        self.assertEqual(rc, 0, err)
        id = int(out.strip())
        rc, out, err = self.py("wait", id)
        self.assertEqual((rc, out), (0, ""), err)
        rc, out, err = self.py("events", "--task", id, "--no-follow")
        self.assertEqual(rc, 0, err)
        evs = [json.loads(line) for line in out.splitlines()]
        self.assertEqual([e["event"] for e in evs],
                         ["task.submitted", "task.started",
                          "task.attempt_ended", "task.succeeded"], out)
        self.assertEqual({e["task"] for e in evs}, {id})
        self.assertEqual(evs[0]["name"], "clitask")
        task = self.d.get(id)
        self.assertEqual(task["argv"], fq("exit", 0))

        # Exit statuses as forkq(1)'s.
        rc, out, err = self.py("submit", "--retries", "0", "--wait", "--",
                               *fq("exit", 7))
        self.assertEqual(rc, 7, err)
        rc, out, err = self.py("submit", "--retries", "0", "--wait", "--",
                               *fq("signal", "KILL"))
        self.assertEqual(rc, 128 + 9, err)
        rc, out, err = self.py("get", 99999)
        self.assertEqual(rc, 1)
        self.assertIn("forkq.py: ", err)
        rc, out, err = self.py("submit")
        self.assertEqual(rc, 2)
        # Usage errors as forkq(1)'s: a priority out of range went to
        # forkqd (exit 1), a bad duration named the parsing function.
        for args, what in ((("--priority", "5000"), "priority"),
                           (("--timeout", "1.5s"), "duration"),
                           (("--timeout", "99999999999999d"), "100 years"),
                           (("--timeout", "\u0663s"), "duration"),
                           (("--retries", "-5"), "retries")):
            with self.subTest(args=args):
                rc, out, err = self.py("submit", *args, "--",
                                       *fq("exit", 0))
                self.assertEqual(rc, 2, err)
                self.assertIn(what, err)
                self.assertNotIn("parse_duration_ms", err)

    def test_cli_events_follow(self):
        p = self.track_proc(subprocess.Popen(
            [sys.executable, CLIENT_PY, "--socket", self.d.sock, "events",
             "--backlog", "0"], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=fqtest.client_env(),
            # Python takes no Ctrl-C it started with ignored (a suite run
            # in the background by a non-interactive shell).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)))
        out = fqtest.JsonLines(p.stdout)
        # It prints nothing until it has subscribed and something happens:
        # submit tasks until one's events show up.
        ids = []

        def saw_one():
            ids.append(self.d.submit(fq("exit", 0))["id"])
            return any(e.get("event") == "task.succeeded" and
                       e.get("task") in ids for e in out.lines())
        wait_for(saw_one, interval=0.3, what="events printed as they happen")
        self.assertIsNone(p.poll(), "events follows until stopped")
        p.send_signal(signal.SIGINT)
        self.assertEqual(p.wait(DEADLINE), 130)
        p.stdout.close()

    def test_default_socket(self):
        env = {"FORKQ_SOCKET": "/x/y.sock"}
        old = {k: os.environ.get(k) for k in ("FORKQ_SOCKET",)}
        try:
            os.environ.update(env)
            self.assertEqual(self.fqpy.default_socket(), "/x/y.sock")
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.assertEqual(self.fqpy.parse_duration_ms("250ms"), 250)
        self.assertEqual(self.fqpy.parse_duration_ms("2"), 2000)
        self.assertEqual(self.fqpy.parse_duration_ms("1d"), 86400000)


# --- the files in contrib/ and doc/ ------------------------------------------

class Files(OpsTestCase):

    def unit(self):
        """The unit's [Service] keys: name -> list of values."""
        out, section = {}, None
        with open(UNIT) as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                if line.startswith("["):
                    section = line
                    continue
                k, v = line.split("=", 1)
                out.setdefault((section, k), []).append(v)
        return out

    def test_unit_settings(self):
        u = self.unit()

        def one(k, section="[Service]"):
            v = u.get((section, k))
            self.assertIsNotNone(v, "%s %s= missing" % (section, k))
            self.assertEqual(len(v), 1, k)
            return v[0]
        self.assertEqual(one("Type"), "notify")
        self.assertEqual(one("NotifyAccess"), "main")
        self.assertEqual(one("WatchdogSec"), "30s")
        self.assertEqual(one("KillMode"), "mixed")
        self.assertEqual(one("Restart"), "on-failure")
        self.assertEqual(one("StateDirectory"), "forkq")
        self.assertEqual(one("RuntimeDirectory"), "forkq")
        self.assertEqual(one("RuntimeDirectoryPreserve"), "yes")
        self.assertEqual(one("PrivateTmp"), "no")
        self.assertEqual(one("EnvironmentFile"), "-/etc/default/forkqd")
        self.assertNotIn(("[Service]", "NoNewPrivileges"), u,
                         "setuid programs must keep working in tasks")
        stop = one("TimeoutStopSec")
        self.assertTrue(stop.endswith("s"))
        self.assertGreater(int(stop[:-1]), 30 + 5,
                           "above --shutdown-grace + --kill-grace")
        exec_start = one("ExecStart").split()
        self.assertEqual(exec_start[0], "/usr/sbin/forkqd")
        self.assertEqual(exec_start[-1], "$FORKQD_OPTS")
        self.assertIn("/var/lib/forkq", exec_start)
        self.assertIn("/run/forkq/forkq.sock", exec_start)
        self.assertEqual(one("WantedBy", "[Install]"), "multi-user.target")
        with open(DEFAULTS) as f:
            self.assertIn("FORKQD_OPTS=", f.read())

    def test_systemd_analyze_verify(self):
        if shutil.which("systemd-analyze") is None:
            self.skipTest("systemd-analyze not installed")
        # As `make install` does: ExecStart at the built forkqd. The man
        # pages of Documentation= are looked up in a MANPATH of our own.
        unit = self.path("forkqd.service")
        with open(UNIT) as f:
            text = f.read()
        with open(unit, "w") as f:
            f.write(text.replace("/usr/sbin/forkqd", fqtest.FORKQD))
        for page, sec in (("forkq.1", "1"), ("forkqd.8", "8")):
            os.makedirs(self.path("man", "man" + sec), exist_ok=True)
            shutil.copyfile(os.path.join(SRCDIR, "doc", page),
                            self.path("man", "man" + sec, page))
        env = fqtest.client_env({"MANPATH": self.path("man"),
                                 "SYSTEMD_LOG_LEVEL": "notice"})
        # The socket unit beside it, as installed: it activates the service.
        shutil.copyfile(os.path.join(os.path.dirname(UNIT), "forkqd.socket"),
                        self.path("forkqd.socket"))
        p = subprocess.run(["systemd-analyze", "verify", unit,
                            self.path("forkqd.socket")],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, env=env, timeout=120)
        out = p.stdout.decode("utf-8", "replace")
        self.assertEqual((p.returncode, out), (0, ""),
                         "systemd-analyze verify forkqd.service forkqd.socket")

    def test_mandoc_lint(self):
        if shutil.which("mandoc") is None:
            self.skipTest("mandoc not installed")
        p = subprocess.run(
            ["mandoc", "-Tlint", "-Wwarning",
             os.path.join(SRCDIR, "doc", "forkq.1"),
             os.path.join(SRCDIR, "doc", "forkqd.8")],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, timeout=60)
        self.assertEqual((p.returncode, p.stdout.decode()), (0, ""))

    def test_run_scripts(self):
        for rel in RUN_SCRIPTS:
            path = os.path.join(CONTRIB, rel)
            self.assertTrue(os.access(path, os.X_OK), "%s executable" % rel)
            p = subprocess.run(["/bin/sh", "-n", path],
                               stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=30)
            self.assertEqual((p.returncode, p.stdout), (0, b""), rel)
        self.assertTrue(os.access(CLIENT_PY, os.X_OK))

    def complete(self, *words):
        """COMPREPLY of forkq's completion for these words (the last one
        being completed), as a sorted list."""
        if shutil.which("bash") is None:
            self.skipTest("bash not installed")
        script = (
            'source "$1"; shift; COMP_WORDS=("$@"); '
            'COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMP_LINE="$*"; '
            'COMP_POINT=${#COMP_LINE}; _forkq; '
            'printf "%s\\n" "${COMPREPLY[@]}"')
        env = fqtest.client_env({"PATH": os.path.join(fqtest.BUILDDIR, "src")
                                 + ":" + os.environ.get("PATH", "")})
        p = subprocess.run(["bash", "--norc", "-c", script, "bash",
                            COMPLETION] + list(words),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=env, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stderr, b"")
        return sorted(w for w in p.stdout.decode().split("\n") if w)

    def test_bash_completion(self):
        c = self.complete
        cmds = c("forkq", "")
        for cmd in ("submit", "status", "list", "show", "cancel", "retry",
                    "wait", "logs", "output", "heartbeat", "prune", "cron",
                    "pause", "resume", "stats", "metrics"):
            self.assertIn(cmd, cmds)
        self.assertEqual(c("forkq", "-s", "/x.sock", "st"),
                         ["stats", "status"])
        self.assertEqual(c("forkq", "list", "--state", ""),
                         sorted(fqtest.STATES))
        self.assertEqual(c("forkq", "list", "--state", "=", "s"),
                         ["succeeded"])
        self.assertEqual(c("forkq", "submit", "--rlimit", ""),
                         ["as=", "core=", "cpu=", "fsize=", "nofile=",
                          "nproc="])
        opts = c("forkq", "submit", "--")
        for o in ("--name", "--queue", "--priority", "--timeout",
                  "--heartbeat-timeout", "--retries", "--backoff",
                  "--delay", "--at", "--rlimit", "--cwd", "--env",
                  "--inherit-env", "--unique", "--wait"):
            self.assertIn(o, opts)
        self.assertEqual(c("forkq", "submit", "--he"),
                         ["--heartbeat-timeout", "--help"])
        # After the options comes the task's own command line.
        self.assertIn("sh", c("forkq", "submit", "--name", "x", "--", "sh"))
        self.assertEqual(c("forkq", "submit", "--rlimit", "cpu", "=", "1",
                           "sleep", "--r"), [])
        self.assertEqual(c("forkq", "cron", ""), ["add", "list", "rm"])
        self.assertIn("-f", c("forkq", "logs", "-"))
        # Task ids come from the daemon.
        t = self.d.submit(fq("exit", 0))
        self.assertIn(str(t["id"]), c("forkq", "-s", self.d.sock, "show",
                                      ""))
        # However the socket is given (these two found none).
        self.assertIn(str(t["id"]), c("forkq", "--socket", "=", self.d.sock,
                                      "show", ""))
        self.assertIn(str(t["id"]), c("forkq", "-s" + self.d.sock, "show",
                                      ""))
        # A value, not the options again.
        self.assertEqual(c("forkq", "logs", "--lines", ""), [])


if __name__ == "__main__":
    fqtest.main()
