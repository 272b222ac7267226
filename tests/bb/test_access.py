"""Access (spec section 8): a client sees and acts on its own tasks only;
root sees all; tasks of a client run as that client when forkqd is root.

forkqd runs as root here with --socket-mode 0666; the other user is
"nobody", whose requests come from a child process that drops to its uid
before connecting. Skipped when not run as root."""

import json
import os
import pwd
import re
import resource
import socket
import sqlite3
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fqtest                                             # noqa: E402
from fqtest import check_error, fq, wait_for              # noqa: E402

HOUR_MS = 3600 * 1000

# Runs as the other user: sends each request line, prints each answer line.
CLIENT = r"""
import json, os, socket, sys
uid, gid, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
s = socket.socket(socket.AF_UNIX)
s.connect(path)
f = s.makefile("rb")
for line in sys.stdin:
    s.sendall(line.encode())
    sys.stdout.write(f.readline().decode())
"""


class Access(fqtest.TestCase):

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest("needs root: forkqd must see two users")
        self.other = pwd.getpwnam("nobody")
        # The other user must reach the socket through the test's dirs.
        os.chmod(self.tmp, 0o755)

    def become(self, uid=None):
        """Drops this process to uid (default the other user's), with the
        other user's gid and no supplementary groups."""
        os.setgroups([])
        os.setgid(self.other.pw_gid)
        os.setuid(self.other.pw_uid if uid is None else uid)

    def start_daemon_as_other(self, extra_args):
        """A forkqd run by the other user, on a state dir it owns."""
        d = self.start_daemon(start=False, extra_args=extra_args)
        os.makedirs(d.dir, exist_ok=True)
        os.chmod(d.dir, 0o755)
        os.chown(d.dir, self.other.pw_uid, self.other.pw_gid)
        d.preexec = self.become
        d.start()
        return d

    def as_other(self, d, *requests, timeout=30, as_uid=None):
        text = "".join(json.dumps(r) + "\n" for r in requests)
        uid = self.other.pw_uid if as_uid is None else as_uid
        out = subprocess.run(
            [sys.executable, "-c", CLIENT, str(uid),
             str(self.other.pw_gid), d.sock],
            input=text, capture_output=True, text=True, timeout=timeout)
        self.assertEqual(out.returncode, 0, out.stderr)
        return [json.loads(line) for line in out.stdout.splitlines()]

    def backlog_as_other(self, d):
        """The events a watch backlog (no follow) shows the other user."""
        out = subprocess.run(
            [sys.executable, "-c", CLIENT.replace(
                "for line in sys.stdin:\n    s.sendall(line.encode())\n"
                "    sys.stdout.write(f.readline().decode())",
                "s.sendall(sys.stdin.read().encode())\n"
                "sys.stdout.write(f.read().decode())"),
             str(self.other.pw_uid), str(self.other.pw_gid), d.sock],
            input=json.dumps({"op": "watch", "backlog": 1000,
                              "follow": False}) + "\n",
            capture_output=True, text=True, timeout=30)
        lines = [json.loads(x) for x in out.stdout.splitlines()]
        self.assertEqual(lines[0], {"ok": True})
        return lines[1:]

    def test_a_task_has_its_users_groups(self):
        """A task of another user runs with the user's supplementary groups
        from the user database, as cron and systemd give them, besides the
        client's gid. forkqd runs in a mount namespace of its own whose
        /etc/group puts nobody in two groups (and root in a third)."""
        group = os.path.join(self.tmp, "group")
        with open("/etc/group") as f:
            text = f.read()
        with open(group, "w") as f:
            f.write(text.rstrip("\n") + "\nfqtest1:x:4242:nobody\n"
                    "fqtest2:x:4243:root,nobody\nfqtest3:x:4244:root\n")
        os.chmod(group, 0o644)
        bind = ["unshare", "--mount", "sh", "-c",
                'mount --bind "$0" /etc/group && exec "$@"', group]
        try:
            probe = subprocess.run(bind + ["id", "-G", "nobody"],
                                   capture_output=True, timeout=30)
        except FileNotFoundError:
            self.skipTest("no unshare(1) here")
        if probe.returncode != 0:
            self.skipTest("no mount namespace here: %r" % probe.stderr)
        if b"4242" not in probe.stdout.split():
            self.skipTest("group lookups here do not read /etc/group "
                          "(a cache such as nscd or sssd)")
        d = self.start_daemon(extra_args=["--socket-mode", "0666"],
                              start=False)
        d.wrapper = bind
        d.start()
        os.chmod(d.dir, 0o755)

        sub, = self.as_other(d, {"op": "submit", "argv": ["id", "-G"],
                                 "cwd": "/"})
        self.assertTrue(sub["ok"], sub)
        t = d.wait_final(sub["task"]["id"])
        self.assertEqual(t["state"], "succeeded", t)
        # As id(1) finds them there, which has the host's groups of
        # nobody too, if any.
        self.assertEqual(
            sorted(int(g) for g in d.output(t["id"]).split()),
            sorted(int(g) for g in probe.stdout.split()))

    def test_a_root_client_of_another_gid_runs_with_that_gid(self):
        """A task runs as the uid and gid of its client (spec 8): a root
        client whose gid is not forkqd's gets that gid, not forkqd's."""
        d = self.start_daemon(extra_args=["--socket-mode", "0666"])
        os.chmod(d.dir, 0o755)
        gid = self.other.pw_gid
        self.assertNotEqual(gid, os.getegid(), "the test needs two gids")
        sub, = self.as_other(d, {"op": "submit", "argv": [
            "/bin/sh", "-c", "id -u; id -g"], "cwd": "/"}, as_uid=0)
        self.assertTrue(sub["ok"], sub)
        t = d.wait_final(sub["task"]["id"])
        self.assertEqual(t["state"], "succeeded", t)
        self.assertEqual(d.output(t["id"]).split(), [b"0", str(gid).encode()])

    def test_users_see_their_own_tasks(self):
        d = self.start_daemon(extra_args=["--socket-mode", "0666"])
        os.chmod(d.dir, 0o755)
        mine = d.submit(fq("exit", 0))
        d.wait_final(mine["id"])

        sub, = self.as_other(d, {"op": "submit", "argv": ["id", "-u"],
                                 "cwd": "/"})
        self.assertTrue(sub["ok"], sub)
        theirs = sub["task"]
        self.assertEqual(theirs["uid"], self.other.pw_uid)
        t = d.wait_final(theirs["id"])
        self.assertEqual(t["state"], "succeeded", t)
        # Root's forkqd runs the task as the user who submitted it.
        self.assertEqual(d.output(theirs["id"]).strip(),
                         str(self.other.pw_uid).encode())

        answers = self.as_other(
            d, {"op": "get", "id": mine["id"]},
            {"op": "list"},
            {"op": "cancel", "id": mine["id"]},
            {"op": "output", "id": mine["id"]},
            {"op": "prune", "older_than_ms": 0})
        get_mine, lst, cancel, output, prune = answers
        self.assertEqual(get_mine["error"]["code"], "not_found", get_mine)
        self.assertEqual([x["id"] for x in lst["tasks"]], [theirs["id"]])
        self.assertEqual(cancel["error"]["code"], "not_found", cancel)
        self.assertEqual(output["error"]["code"], "not_found", output)
        self.assertEqual(prune["error"]["code"], "forbidden", prune)

        # A watch backlog shows the other user's task events, not root's.
        tasks = {e.get("task") for e in self.backlog_as_other(d)
                 if "task" in e}
        self.assertIn(theirs["id"], tasks)
        self.assertNotIn(mine["id"], tasks)

        # A unique key is its user's: the same key from another user is
        # another task, never an answer with (or a change to) root's.
        held = d.submit(fq("exit", 0), unique="nightly", delay_ms=600000)
        dup, = self.as_other(d, {"op": "submit", "argv": ["true"],
                                 "unique": "nightly", "debounce_ms": 100})
        self.assertTrue(dup["ok"], dup)
        self.assertNotIn("duplicate", dup)
        self.assertNotEqual(dup["task"]["id"], held["id"])
        self.assertEqual(dup["task"]["uid"], self.other.pw_uid)
        self.assertEqual(d.get(held["id"])["argv"], fq("exit", 0))
        d.ok({"op": "cancel", "id": held["id"]})
        d.wait_final(dup["task"]["id"])

        # Root sees all.
        self.assertEqual(sorted(x["id"] for x in d.list()),
                         sorted([mine["id"], theirs["id"], held["id"],
                                 dup["task"]["id"]]))

    def test_a_cron_entry_may_wait_only_on_its_owners_tasks(self):
        # As a submit's after: another user's task is not_found. It was
        # taken, and every firing then failed.
        d = self.start_daemon(extra_args=["--socket-mode", "0666"])
        os.chmod(d.dir, 0o755)
        roots = d.submit(fq("exit", 0))["id"]
        add, = self.as_other(d, {"op": "cron_add", "name": "w",
                                 "schedule": "0 4 * * *", "argv": ["true"],
                                 "after": [roots]})
        self.assertEqual(add["error"]["code"], "not_found", add)
        self.assertIn("after: no task %d" % roots, add["error"]["message"])
        lst, = self.as_other(d, {"op": "cron_list"})
        self.assertEqual(lst["crons"], [])

    def test_cron_names_are_each_users_own(self):
        # One name space: a user's cron_add of a name another user had
        # was refused as "another user's", which told of that entry, and
        # took the name from them.
        d = self.start_daemon(extra_args=["--socket-mode", "0666"])
        os.chmod(d.dir, 0o755)
        uid = self.other.pw_uid
        d.ok({"op": "cron_add", "name": "h", "schedule": "0 3 * * *",
              "argv": fq("exit", 0)})
        add, lst = self.as_other(
            d, {"op": "cron_add", "name": "h", "schedule": "0 4 * * *",
                "argv": ["true"]}, {"op": "cron_list"})
        self.assertIs(add["ok"], True, add)
        self.assertEqual([(c["name"], c["uid"], c["schedule"])
                          for c in lst["crons"]], [("h", uid, "0 4 * * *")])
        everyone = d.ok({"op": "cron_list"})["crons"]
        self.assertEqual(sorted((c["uid"], c["schedule"]) for c in everyone),
                         [(0, "0 3 * * *"), (uid, "0 4 * * *")])
        # Root's own goes first; then the one other user's.
        d.ok({"op": "cron_remove", "name": "h"})
        rest = d.ok({"op": "cron_list"})["crons"]
        self.assertEqual([c["uid"] for c in rest], [uid])
        # A user removes only their own, and names no other owner.
        rm, again, other = self.as_other(
            d, {"op": "cron_remove", "name": "h"},
            {"op": "cron_remove", "name": "h"},
            {"op": "cron_remove", "name": "h", "uid": 0})
        self.assertIs(rm["ok"], True, rm)
        self.assertEqual(again["error"]["code"], "not_found")
        self.assertEqual(other["error"]["code"], "forbidden")
        # Two users' "x", none of root's: root must name the owner.
        self.as_other(d, {"op": "cron_add", "name": "x", "schedule":
                          "0 5 * * *", "argv": ["true"]})
        third = 54321
        add, = self.as_other(d, {"op": "cron_add", "name": "x",
                                 "schedule": "0 6 * * *",
                                 "argv": ["true"]}, as_uid=third)
        self.assertIs(add["ok"], True, add)
        both = "users %d, %d" % tuple(sorted((uid, third)))
        check_error(self, d.request({"op": "cron_remove", "name": "x"}),
                    "conflict", both)
        rc, out, err = d.cli("cron", "list")
        self.assertEqual(rc, 0, err)
        self.assertIn("x (uid %d)" % uid, out)
        self.assertIn("x (uid %d)" % third, out)
        rc, out, err = d.cli("cron", "rm", "--uid", third, "x")
        self.assertEqual(rc, 0, out + err)
        d.ok({"op": "cron_remove", "name": "x"})     # the one left
        self.assertEqual(d.ok({"op": "cron_list"})["crons"], [])

    def test_an_entry_of_forkqds_own_user_fires_after_anyones_task(self):
        # forkqd run by a user takes that user for root: cron_add let its
        # entry wait on another user's task, and every firing then
        # failed "after: no task N".
        d = self.start_daemon_as_other(["--socket-mode", "0666"])
        roots = d.submit(fq("exit", 0))["id"]      # by uid 0, a client
        d.wait_final(roots)
        add, = self.as_other(d, {"op": "cron_add", "name": "dep",
                                 "schedule": "0 3 1 1 *", "argv": ["true"],
                                 "after": [roots]})
        self.assertIs(add["ok"], True, add)
        d.stop()
        db = sqlite3.connect(d.db)
        with db:
            db.execute("UPDATE crons SET next_run_at = ?",
                       (int(time.time() * 1000) - 60000,))
        db.close()
        d.start()
        ev = d.wait_event(lambda e: e.get("event") in ("cron.fired",
                                                       "cron.failed"),
                          what="the entry to fire")
        self.assertEqual(ev["event"], "cron.fired", ev)

    def test_cron_events_are_their_owners(self):
        """Events about a cron entry are its owner's (and root's): another
        user's watch backlog does not show them; its own entry's do."""
        d = self.start_daemon(extra_args=["--socket-mode", "0666"])
        os.chmod(d.dir, 0o755)
        d.ok({"op": "cron_add", "name": "roots-nightly",
              "schedule": "0 3 * * *", "argv": fq("exit", 0)})
        d.ok({"op": "cron_remove", "name": "roots-nightly"})
        add, = self.as_other(d, {"op": "cron_add", "name": "mine",
                                 "schedule": "0 4 * * *", "argv": ["true"]})
        self.assertTrue(add["ok"], add)
        names = [(e.get("event"), e.get("name"))
                 for e in self.backlog_as_other(d)]
        self.assertIn(("cron.added", "mine"), names)
        self.assertNotIn(("cron.added", "roots-nightly"), names)
        self.assertNotIn(("cron.removed", "roots-nightly"), names)
        # Root sees both users' entries' events.
        with d.connect() as c:
            c.send({"op": "watch", "backlog": 1000, "follow": False})
            self.assertEqual(c.recv(), {"ok": True})
            seen = [(e.get("event"), e.get("name")) for e in c.rest()]
        self.assertIn(("cron.added", "roots-nightly"), seen)
        self.assertIn(("cron.added", "mine"), seen)

    def test_a_socket_dir_it_cannot_search_is_said_as_such(self):
        # forkqd as nobody, its socket in a directory only root may
        # search: it said "cannot remove stale socket", of no socket.
        closed = os.path.join(self.tmp, "closed")
        os.mkdir(closed, 0o700)
        state = os.path.join(self.tmp, "nobody-state")
        os.mkdir(state, 0o700)
        os.chown(state, self.other.pw_uid, self.other.pw_gid)
        out = subprocess.run(
            [fqtest.FORKQD, "-D", state, "-s",
             os.path.join(closed, "forkq.sock")], preexec_fn=self.become,
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=60 * fqtest.SCALE)
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertIn("forkq.sock: Permission denied", out.stderr)
        self.assertNotIn("stale", out.stderr)


    def test_a_socket_open_to_others_is_warned_of_when_not_root(self):
        """Not root, forkqd runs every client's task as its own user, and
        a task reaches it as that user, who administers it: a socket open
        to others hands them that user's rights. It said nothing."""
        for mode, warned in (("0666", True), ("0600", False)):
            with self.subTest(mode=mode):
                d = self.start_daemon_as_other(["--socket-mode", mode])
                self.assertEqual(d.status()["pid"], d.pid)
                self.assertEqual(d.stop(), 0)
                self.assertEqual("forkqd is not root" in d.stderr(), warned,
                                 d.stderr())


    def connect_as_other(self, d, rcvbuf=None):
        """A connection to d made by the other user (forkqd takes its
        credentials at connect), handed back here."""
        return self.connect_many_as(d, self.other.pw_uid, 1, rcvbuf)[0]

    def test_a_reading_watcher_is_not_dropped_for_others_that_lag(self):
        """The other user's watchers of a full backlog never read, each
        short of its own 16 MiB, together past the 64 MiB of all
        watchers; root's watcher, which reads, sees root's events, which
        they cannot. It was dropped at the next line: past the bound of
        all watchers, whichever got a line was."""
        d = self.start_daemon(extra_args=["--socket-mode", "0666"])
        small = (json.dumps({"op": "submit", "delay_ms": HOUR_MS,
                             "argv": fq("exit", 0) + ["x" * 3400]}) +
                 "\n").encode()
        sub = self.connect_as_other(d)
        self.addCleanup(sub.close)
        sf = sub.makefile("rb")

        def submit_other(n):
            for i in range(0, n, 500):
                k = min(500, n - i)
                sub.sendall(small * k)
                for _ in range(k):
                    self.assertIs(json.loads(sf.readline())["ok"], True)
        submit_other(16384)         # the ring is full of theirs
        for _ in range(8):
            w = self.connect_as_other(d, 4096)
            self.addCleanup(w.close)
            w.sendall(b'{"op": "watch", "backlog": 16384}\n')
        got = {"dropped": False, "eof": False}

        def read_all():
            with socket.socket(socket.AF_UNIX) as h:
                h.connect(d.sock)
                h.sendall(b'{"op": "watch"}\n')
                for ln in h.makefile("rb"):
                    if b"watch.dropped" in ln:
                        got["dropped"] = True
                got["eof"] = True
        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        with d.connect(timeout=300) as c:
            for _ in range(1500):
                submit_other(1)     # evicts a line into each of theirs
                c.request({"op": "submit", "delay_ms": HOUR_MS,
                           "argv": fq("exit", 0) + ["y" * 150000]})
                if got["dropped"] or got["eof"]:
                    break
        self.assertFalse(got["dropped"] or got["eof"],
                         "root's reading watcher was dropped")
        d.stop()
        reader.join(30)


    def connect_many_as(self, d, uid, n, rcvbuf=None):
        """n connections to d made by uid (forkqd takes its credentials
        at connect), in the order made, handed back here."""
        a, b = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            try:
                self.become(uid)
                for i in range(0, n, 100):
                    socks = []
                    for _ in range(min(100, n - i)):
                        s = socket.socket(socket.AF_UNIX)
                        if rcvbuf:
                            s.setsockopt(socket.SOL_SOCKET,
                                         socket.SO_RCVBUF, rcvbuf)
                        s.connect(d.sock)
                        socks.append(s)
                    socket.send_fds(b, [b"x"], [s.fileno() for s in socks])
                    for s in socks:
                        s.close()
            finally:
                os._exit(0)
        b.close()
        conns = []
        try:
            while len(conns) < n:
                _, fds, _, _ = socket.recv_fds(a, 1, 100)
                self.assertTrue(fds, "the child connected %d of %d"
                                % (len(conns), n))
                conns += [socket.socket(fileno=fd) for fd in fds]
        finally:
            a.close()
            os.waitpid(pid, 0)
        for c in conns:
            self.addCleanup(c.close)
        return conns

    def start_open_with_fds(self, limit):
        """A forkqd others may reach, with a hard limit of limit fds."""
        d = self.start_daemon(extra_args=["--socket-mode", "0666"],
                              start=False)
        d.preexec = lambda: resource.setrlimit(resource.RLIMIT_NOFILE,
                                               (limit, limit))
        d.start()
        return d

    @staticmethod
    def status_of(conn):
        """The answer to a status request on conn: a refused connection
        holds its refusal, and its end."""
        conn.settimeout(60 * fqtest.SCALE)
        try:
            conn.sendall(b'{"op": "status"}\n')
        except (BrokenPipeError, ConnectionResetError):
            pass            # refused and closed before it sent
        line = b""
        while not line.endswith(b"\n"):
            got = conn.recv(4096)
            if not got:
                break
            line += got
        return json.loads(line)

    def taken_and_refused(self, conns):
        answers = [self.status_of(c) for c in conns]
        taken = [c for c, a in zip(conns, answers) if a["ok"]]
        refused = [a for a in answers if not a["ok"]]
        for a in refused:
            check_error(self, a, "unavailable")
        return taken, refused

    def test_users_cannot_take_the_fds_of_tasks_and_root(self):
        """Any user allowed on the socket could hold idle connections
        until forkqd had no fd left: root's clients were refused (forkq
        status exited 3) and task starts stalled. Now one user holds at
        most half of what the clients of users other than root may, and
        those together leave root a share and running tasks their fds."""
        d = self.start_open_with_fds(300)
        uid = self.other.pw_uid
        taken, refused = self.taken_and_refused(
            self.connect_many_as(d, uid, 200))
        self.assertTrue(taken and refused, "%d taken, %d refused" % (
            len(taken), len(refused)))
        msg = refused[0]["error"]["message"]
        self.assertIn("uid %d has %d connections" % (uid, len(taken)), msg)
        self.assertIn("the most one user may", msg)
        # A second user gets in; past its own half, the users' share is
        # spent, and a third is refused.
        more, refused2 = self.taken_and_refused(
            self.connect_many_as(d, uid - 1, 200))
        self.assertTrue(more and refused2)
        third, refused3 = self.taken_and_refused(
            self.connect_many_as(d, uid - 2, 1))
        self.assertEqual(third, [])
        self.assertIn("users hold %d connections" % (len(taken) +
                                                     len(more)),
                      refused3[0]["error"]["message"])
        # Root is still taken, and its tasks start.
        t = d.wait_final(d.submit(fq("exit", 0))["id"])
        self.assertEqual(t["state"], "succeeded")
        # A connection closed is one more for its user.
        taken[0].close()
        wait_for(lambda: self.taken_and_refused(
            self.connect_many_as(d, uid, 1))[0],
            what="a connection of the first user taken again")
        with open(d.stderr_path) as f:
            warnings = [ln for ln in f if "refusing connections" in ln]
        # Warned of, not once for each (one in 10 s).
        self.assertTrue(0 < len(warnings) < len(refused) + len(refused2),
                        warnings)
        self.assertTrue(d.alive())

    def test_the_bounds_follow_a_limit_changed_while_forkqd_runs(self):
        """The bounds were set once, at listen: an operator who changed
        forkqd's fd limit (prlimit(1)) got the old bounds all the same.
        Now they follow the limit. Lowered here (raising a hard limit
        takes CAP_SYS_RESOURCE, which a test may not have): one user's
        120 connections fit the bound of 600 fds (224), and not that of
        300 (93), so the next is refused."""
        d = self.start_open_with_fds(600)
        uid = self.other.pw_uid
        taken, refused = self.taken_and_refused(
            self.connect_many_as(d, uid, 120))
        self.assertEqual((len(taken), refused), (120, []))
        resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (300, 300))
        more, refused = self.taken_and_refused(
            self.connect_many_as(d, uid, 1))
        self.assertEqual(more, [])
        self.assertIn("uid %d has 120 connections" % uid,
                      refused[0]["error"]["message"])
        self.assertTrue(d.alive())

    def test_every_refusal_is_counted_in_a_warning(self):
        """Refusals are warned of once in 10 s, each warning counting
        those since the last: the refusals after the first warning of a
        burst waited for a refusal 10 s later, which may never come, and
        forkqd's stderr never told of them. Now the tail is told when the
        10 s are over. The counts of the warnings add up to the refusals
        the clients got."""
        d = self.start_open_with_fds(300)
        _, refused = self.taken_and_refused(
            self.connect_many_as(d, self.other.pw_uid, 200))
        self.assertGreater(len(refused), 1)

        def counted():
            with open(d.stderr_path) as f:
                return sum(int(m.group(1)) for m in re.finditer(
                    r"refusing connections.*: (\d+) since the last "
                    r"warning", f.read()))
        wait_for(lambda: counted() >= len(refused), timeout=60,
                 what="warnings counting %d refusals" % len(refused))
        self.assertEqual(counted(), len(refused))
        self.assertTrue(d.alive())

    def test_refusals_are_told_when_forkqd_stops(self):
        """A stop within 10 s of a warning: the refusals since were to be
        told when the 10 s were over, and forkqd was gone by then. It
        tells them as it stops taking connections."""
        d = self.start_open_with_fds(300)
        _, refused = self.taken_and_refused(
            self.connect_many_as(d, self.other.pw_uid, 200))
        self.assertGreater(len(refused), 1)
        d.stop()
        with open(d.stderr_path) as f:
            counts = [int(m.group(1)) for m in re.finditer(
                r"refusing connections.*: (\d+) since the last warning",
                f.read())]
        self.assertEqual(sum(counts), len(refused), counts)

    def test_refused_clients_in_a_loop_do_not_hold_the_others(self):
        """A user at its bound, connecting and closing in a loop from a
        few processes: each refusal is cheap, the accept queue never
        emptied, and forkqd stayed in its accept loop for seconds; root's
        requests on an open connection waited (2.6 s median). A bound far
        from both."""
        d = self.start_open_with_fds(300)
        uid = self.other.pw_uid
        taken, refused = self.taken_and_refused(
            self.connect_many_as(d, uid, 100))
        self.assertTrue(refused)
        flood_s = 6 * fqtest.SCALE
        # Root's connection is made first: the flood fills the listen
        # backlog, and a connect then fails at once (EAGAIN).
        c = d.connect()
        self.addCleanup(c.close)
        kids = []
        for _ in range(4):
            pid = os.fork()
            if pid == 0:
                try:
                    self.become(uid)
                    end = time.monotonic() + flood_s
                    while time.monotonic() < end:
                        with socket.socket(socket.AF_UNIX) as s:
                            try:
                                s.connect(d.sock)
                            except OSError:
                                pass
                finally:
                    os._exit(0)
            kids.append(pid)
        try:
            waits = []
            end = time.monotonic() + flood_s - 1
            while time.monotonic() < end:
                t0 = time.monotonic()
                self.assertIs(c.request({"op": "status"})["ok"], True)
                waits.append(time.monotonic() - t0)
                time.sleep(0.05)
        finally:
            for pid in kids:
                os.waitpid(pid, 0)
        waits.sort()
        self.assertLess(waits[len(waits) // 2], 1.0 * fqtest.SCALE,
                        "s, the median wait of root's status")
        self.assertTrue(d.alive())


class DatabaseMode(fqtest.TestCase):

    def test_a_new_database_is_its_owners_alone(self):
        # It holds every user's argv and env (--inherit-env sends a whole
        # environment). SQLite made it 0644 less the umask: readable by
        # all in a state dir made 0755 by someone else (a package).
        d = self.start_daemon(start=False)
        os.chmod(d.dir, 0o755)
        d.preexec = lambda: os.umask(0o022)
        d.start()
        d.wait_final(d.submit(fq("exit", 0))["id"])
        for name in ("forkq.db", "forkq.db-wal", "forkq.db-shm"):
            mode = os.stat(os.path.join(d.dir, name)).st_mode & 0o777
            self.assertEqual(mode, 0o600, "%s is %o" % (name, mode))
        self.assertEqual(d.stop(timeout=30), 0)


if __name__ == "__main__":
    fqtest.main()
