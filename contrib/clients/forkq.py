#!/usr/bin/env python3
"""forkq.py: a forkq client in Python's standard library alone.

forkqd speaks JSON lines over a Unix stream socket (doc/protocol.md): one
request object per line, one answer line per request, in order; `watch`
answers {"ok":true} and then streams event lines. This module shows that
nothing more than that is needed. As a library:

    import forkq
    with forkq.Client() as c:          # the socket the forkq CLI would use
        task = c.submit(["sh", "-c", "echo hi"], name="hi", max_attempts=3)
        for ev in c.watch(task=task["id"], backlog=1000):
            print(ev["event"])
            if ev["event"] in forkq.FINAL_EVENTS:
                break
        done = c.wait(task["id"])              # the task once it is final
        print(done["state"], c.get(task["id"])["attempts"])

As a command:

    forkq.py [-s SOCKET] submit [--name N] [--queue Q] [--wait] -- CMD...
    forkq.py [-s SOCKET] wait ID...
    forkq.py [-s SOCKET] events [--task ID] [--backlog N] [--no-follow]
    forkq.py [-s SOCKET] get ID | status

Exit status as forkq(1)'s: 0 success, 1 the daemon answered with an error,
2 usage error, 3 the daemon could not be reached; `wait` and `submit --wait`
exit with the task's status (its exit code, 128+N for signal N, 124 for a
timeout or a lost heartbeat, 1 otherwise).
"""

import argparse
import json
import os
import re
import signal
import socket
import sys

__all__ = ["Client", "Error", "ConnectError", "default_socket",
           "parse_duration_ms", "task_exit_status", "FINAL_STATES",
           "FINAL_EVENTS"]

FINAL_STATES = ("succeeded", "failed", "canceled")
FINAL_EVENTS = ("task.succeeded", "task.failed", "task.canceled")
MAX_LINE = 1024 * 1024          # bytes, newline included (protocol limit)


class Error(Exception):
    """The daemon answered {"ok":false}: .code (e.g. "not_found") and
    .message, or the connection broke mid-answer (code "internal")."""

    def __init__(self, code, message):
        Exception.__init__(self, "%s: %s" % (code, message))
        self.code = code
        self.message = message


class ConnectError(OSError):
    """The daemon could not be reached at the socket."""


def default_socket():
    """The socket path the forkq CLI would use: $FORKQ_SOCKET, else the
    daemon's default for this user (forkqd(8))."""
    path = os.environ.get("FORKQ_SOCKET")
    if path:
        return path
    if os.geteuid() == 0:
        return "/run/forkq/forkq.sock"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and xdg.startswith("/"):
        return os.path.join(xdg, "forkq.sock")
    state = os.environ.get("XDG_STATE_HOME")
    if not state or not state.startswith("/"):
        state = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "forkq", "forkq.sock")


_UNITS = {"ms": 1, "s": 1000, "m": 60000, "h": 3600000, "d": 86400000}
MAX_DURATION_MS = 100 * 365 * 86400000      # forkq(1)'s bound


def parse_duration_ms(s):
    """Milliseconds of a forkq duration: 250ms, 30s, 5m, 2h, 1d; a bare
    number is seconds. ValueError otherwise."""
    m = re.match(r"^([0-9]+)(ms|s|m|h|d)?$", s.strip())
    if m is None:
        raise ValueError("not a duration: %r" % s)
    ms = int(m.group(1)) * _UNITS[m.group(2) or "s"]
    if ms > MAX_DURATION_MS:
        raise ValueError("a duration of 100 years at most: %r" % s)
    return ms


def _signal_number(name):
    """SIGKILL -> 9; forkqd writes signals it cannot name as SIG<n>."""
    try:
        return int(signal.Signals[name])
    except (KeyError, TypeError):
        pass
    m = re.match(r"^SIG(\d+)$", name or "")
    return int(m.group(1)) if m else None


def task_exit_status(task):
    """The exit status `forkq wait` gives for a final task (as forkq(1))."""
    state = task.get("state")
    if state == "succeeded":
        return 0
    if state is None or state == "canceled":
        return 1
    outcome = task.get("outcome")
    if outcome in ("exit", "success"):
        code = task.get("exit_code")
        return code if isinstance(code, int) and 0 < code < 256 else 1
    if outcome == "signal":
        n = _signal_number(task.get("signal"))
        return 128 + n if n and 0 < n < 128 else 1
    if outcome in ("timeout", "heartbeat_lost"):
        return 124
    return 1


class _Lines:
    """One connection to forkqd: request lines out, answer lines in."""

    def __init__(self, path, timeout):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise ConnectError(e.errno, "cannot connect to %s: %s"
                               % (path, e.strerror or e))
        self.file = self.sock.makefile("rb")

    def send(self, obj):
        line = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
        if len(line) > MAX_LINE:
            raise Error("too_large", "request over 1 MiB")
        self.sock.sendall(line)

    def recv(self):
        """The next line parsed, or None at end of stream."""
        line = self.file.readline(MAX_LINE + 1)
        if not line:
            return None
        if not line.endswith(b"\n"):
            raise Error("internal", "answer line cut short")
        return json.loads(line)

    def close(self):
        self.file.close()
        self.sock.close()


class Client:
    """A connection to forkqd for requests (one at a time, in order).
    `watch` opens a connection of its own. Methods raise Error when the
    daemon answers with an error, ConnectError when it cannot be reached.
    timeout: seconds for connecting and for each answer (None: no bound;
    `wait` requests are held by the daemon until the task is final)."""

    def __init__(self, path=None, timeout=None):
        self.path = path or default_socket()
        self.timeout = timeout
        self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, req):
        """Send one request object; its answer (ok true), or Error."""
        if self._conn is None:
            self._conn = _Lines(self.path, self.timeout)
        try:
            self._conn.send(req)
            ans = self._conn.recv()
        except BaseException:
            self.close()        # the stream is out of step: start anew
            raise
        if ans is None:
            self.close()
            raise Error("internal", "forkqd closed the connection")
        if ans.get("ok") is not True:
            err = ans.get("error") or {}
            raise Error(err.get("code", "internal"),
                        err.get("message", "no message"))
        return ans

    def submit(self, argv, **fields):
        """Queue a task running argv; the task object. fields are the
        submit op's (name, queue, priority, timeout_ms, max_attempts, env,
        cwd, unique, ...). Without cwd the task runs in /."""
        req = dict(fields, op="submit", argv=[str(a) for a in argv])
        return self.request(req)["task"]

    def get(self, id):
        """The task with its attempts."""
        return self.request({"op": "get", "id": int(id)})["task"]

    def list(self, **fields):
        return self.request(dict(fields, op="list"))["tasks"]

    def cancel(self, id):
        return self.request({"op": "cancel", "id": int(id)})["task"]

    def status(self):
        return self.request({"op": "status"})["status"]

    def wait(self, id, timeout_ms=None):
        """Block until the task is final; the task object. With timeout_ms
        it may come back earlier with "timed_out": true."""
        req = {"op": "wait", "id": int(id)}
        if timeout_ms is not None:
            req["timeout_ms"] = int(timeout_ms)
        ans = self.request(req)
        task = ans["task"]
        if ans.get("timed_out"):
            task = dict(task, timed_out=True)
        return task

    def watch(self, task=None, backlog=0, follow=True):
        """Events as dicts, from a connection of its own: up to backlog
        kept events first, then (follow) new ones as they happen. It is
        subscribed when this returns, so nothing done afterwards is missed.
        Close the generator (or leave the loop and drop it) to stop."""
        conn = _Lines(self.path, self.timeout)
        try:
            req = {"op": "watch", "backlog": int(backlog),
                   "follow": bool(follow)}
            if task is not None:
                req["task"] = int(task)
            conn.send(req)
            ans = conn.recv()
            if ans is None or ans.get("ok") is not True:
                err = (ans or {}).get("error") or {}
                raise Error(err.get("code", "internal"),
                            err.get("message", "watch refused"))
            conn.sock.settimeout(None)  # events come when they come
        except BaseException:
            conn.close()
            raise
        return self._events(conn)

    @staticmethod
    def _events(conn):
        try:
            while True:
                ev = conn.recv()
                if ev is None:
                    return
                yield ev
        finally:
            conn.close()


# --- the command line --------------------------------------------------------

def _duration_arg(s):
    try:
        return parse_duration_ms(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def _retries_arg(s):
    if re.match(r"^[0-9]+$", s) is None:
        raise argparse.ArgumentTypeError("not a number of retries: %r" % s)
    return int(s)


def _priority_arg(s):
    """-1000 to 1000, as forkq(1) checks it: a usage error, exit 2."""
    v = int(s) if re.match(r"^-?[0-9]+$", s) else None
    if v is None or not -1000 <= v <= 1000:
        raise argparse.ArgumentTypeError("not a priority from -1000 to "
                                         "1000: %r" % s)
    return v


def _parser():
    p = argparse.ArgumentParser(
        prog="forkq.py", description="A forkq client in plain Python.")
    p.add_argument("-s", "--socket", help="forkqd's socket (default: "
                   "$FORKQ_SOCKET, else the daemon's default)")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("submit", help="queue a task; print its id")
    s.add_argument("--name")
    s.add_argument("--queue")
    s.add_argument("--priority", type=_priority_arg)
    s.add_argument("--timeout", type=_duration_arg, metavar="DURATION")
    s.add_argument("--retries", type=_retries_arg, metavar="N")
    s.add_argument("--env", action="append", default=[], metavar="K=V")
    s.add_argument("--cwd", metavar="DIR",
                   help="working directory (default: this one)")
    s.add_argument("--unique", metavar="KEY")
    s.add_argument("--wait", action="store_true",
                   help="wait for the task; exit with its status")
    s.add_argument("argv", nargs=argparse.REMAINDER,
                   metavar="-- PROGRAM [ARG...]")

    w = sub.add_parser("wait", help="wait for tasks; exit with their status")
    w.add_argument("ids", nargs="+", type=int, metavar="ID")

    e = sub.add_parser("events", help="print events as JSON lines")
    e.add_argument("--task", type=int, metavar="ID")
    e.add_argument("--backlog", type=int, default=100, metavar="N",
                   help="kept events to print first (default 100)")
    e.add_argument("--no-follow", action="store_true",
                   help="stop after the backlog")

    g = sub.add_parser("get", help="one task with its attempts, as JSON")
    g.add_argument("id", type=int, metavar="ID")

    sub.add_parser("status", help="the daemon's summary, as JSON")
    return p


def _wait_status(client, ids):
    first = None
    for id in ids:
        st = task_exit_status(client.wait(id))
        if st != 0 and first is None:
            first = st
    return first or 0


def _submit(client, a, usage):
    argv = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
    if not argv:
        usage("submit: no PROGRAM given")
    req = {"cwd": os.path.abspath(a.cwd or os.getcwd())}
    for k in ("name", "queue", "priority", "unique"):
        if getattr(a, k) is not None:
            req[k] = getattr(a, k)
    if a.timeout is not None:
        req["timeout_ms"] = a.timeout
    if a.retries is not None:
        req["max_attempts"] = a.retries + 1
    env = {}
    for kv in a.env:
        if "=" not in kv or kv.startswith("="):
            usage("--env: %r is not K=V" % kv)
        k, v = kv.split("=", 1)
        env[k] = v
    if env:
        req["env"] = env
    task = client.submit(argv, **req)
    print(task["id"], flush=True)
    return _wait_status(client, [task["id"]]) if a.wait else 0


def main(args=None):
    p = _parser()

    def usage(msg):
        p.print_usage(sys.stderr)
        sys.stderr.write("forkq.py: %s\n" % msg)
        sys.exit(2)

    a = p.parse_args(args)
    try:
        with Client(a.socket) as c:
            if a.cmd == "submit":
                return _submit(c, a, usage)
            if a.cmd == "wait":
                return _wait_status(c, a.ids)
            if a.cmd == "get":
                print(json.dumps(c.get(a.id)))
                return 0
            if a.cmd == "status":
                print(json.dumps(c.status()))
                return 0
            if a.cmd == "events":
                for ev in c.watch(task=a.task, backlog=a.backlog,
                                  follow=not a.no_follow):
                    sys.stdout.write(json.dumps(ev) + "\n")
                    sys.stdout.flush()
                return 0
    except ConnectError as e:
        sys.stderr.write("forkq.py: %s\n" % e.strerror)
        return 3
    except Error as e:
        sys.stderr.write("forkq.py: %s\n" % e.message)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
