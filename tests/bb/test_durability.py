"""Shutdown, crashes and the database (spec sections 2, 4.6, 9)."""

import fcntl
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fqtest                                             # noqa: E402
from fqtest import (ATTEMPT_FIELDS, FINAL, TASK_FIELDS, check_error, fq,
                    parse_ts, pid_alive, wait_for,
                    wait_gone)                            # noqa: E402

HOUR_MS = 3600 * 1000
SCHEMA_VERSION = 7      # PRAGMA user_version of a database forkqd made



def schema_of(d):
    """d's database: its user_version, the tasks table's columns, and its
    indexes (name: SQL)."""
    db = d.db_connect()
    try:
        (uv,) = db.execute("PRAGMA user_version").fetchone()
        cols = [r[1] for r in db.execute("PRAGMA table_info(tasks)")]
        index = dict(db.execute("SELECT name, sql FROM sqlite_master"
                                " WHERE type = 'index'"))
    finally:
        db.close()
    return uv, cols, index

class Shutdown(fqtest.TestCase):

    def test_graceful_shutdown_interrupts_and_requeues(self):
        d = self.start_daemon(extra_args=["--shutdown-grace", "2s"])
        gate = self.path("gate")
        short = d.submit(fq("sleep", 1), name="short")
        long = d.submit(fq("waitfile", gate, 120), name="long",
                        max_attempts=1)
        srun = d.wait_running_pid(short["id"])
        lrun = d.wait_running_pid(long["id"])
        self.track_pid(lrun["pid"])
        # Due during the grace, when a worker is free: must not start.
        late = d.submit(fq("exit", 0), name="late", delay_ms=500)
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)

        def refused():
            try:
                with d.connect(timeout=2):
                    return False
            except OSError:
                return True
        wait_for(refused, timeout=1.5, what="forkqd to stop accepting "
                 "connections once told to shut down")
        self.assertTrue(d.alive(), "still in the shutdown grace")
        rc = d.wait_exit(timeout=30)
        took = time.monotonic() - t0
        d.expect_alive = False
        self.assertEqual(rc, 0, "exit status after a graceful shutdown; "
                         "stderr:\n" + d.stderr()[-2000:])
        self.assertGreaterEqual(took, 1.9, "running tasks get the grace")
        self.assertLessEqual(took, 2 + 5 + 5 * fqtest.SCALE)
        self.assertFalse(pid_alive(lrun["pid"]), "the long task was stopped")
        self.assertFalse(pid_alive(srun["pid"]))

        # On disk, while forkqd is down.
        db = d.db_connect()
        try:
            rows = dict(db.execute("SELECT id, state FROM tasks"))
            self.assertEqual(rows[short["id"]], "succeeded")
            self.assertEqual(rows[late["id"]], "queued")
            (n,) = db.execute("SELECT count(*) FROM attempts "
                              "WHERE task_id = ?", (late["id"],)).fetchone()
            self.assertEqual(n, 0, "a task started during shutdown")
            self.assertEqual(rows[long["id"]], "queued",
                             "an interrupted task is queued again")
            att = db.execute("SELECT n, outcome, finished_at FROM attempts "
                             "WHERE task_id = ? ORDER BY n",
                             (long["id"],)).fetchall()
            self.assertEqual(len(att), 1)
            self.assertEqual(att[0][1], "interrupted")
            self.assertIsNotNone(att[0][2])
            (ma,) = db.execute("SELECT max_attempts FROM tasks WHERE id = ?",
                               (long["id"],)).fetchone()
            self.assertEqual(ma, 2, "interrupted raises max_attempts by one")
        finally:
            db.close()

        evs = d.events()
        names = [e["event"] for e in evs]
        self.assertIn("daemon.stopping", names)
        self.assertIn("daemon.stopped", names)
        stopping = [e for e in evs if e["event"] == "daemon.stopping"][-1]
        stopped = [e for e in evs if e["event"] == "daemon.stopped"][-1]
        self.assertEqual(stopping["running"], 2)
        self.assertEqual(stopped["running"], 0)
        stops = [e for e in evs if e["event"] == "task.stopping" and
                 e.get("task") == long["id"]]
        self.assertTrue(stops, "task.stopping for the interrupted task")
        self.assertEqual(stops[0]["reason"], "shutdown")
        self.assertEqual(stops[0]["signal"], "SIGTERM")

        self.touch(gate)
        d.start()
        t = d.wait_final(long["id"])
        self.assertEqual((t["state"], t["attempt"], t["max_attempts"]),
                         ("succeeded", 2, 2), json.dumps(t))
        self.assertEqual([a["outcome"] for a in t["attempts"]],
                         ["interrupted", "success"])
        s = d.get(short["id"])
        self.assertEqual((s["state"], s["attempt"]), ("succeeded", 1))

    def test_a_wait_on_a_running_task_is_answered_in_the_grace(self):
        # Every held wait was answered "unavailable" as the shutdown
        # began: `submit --wait` exited 1 while its task went on to
        # succeed in the grace. Waits on tasks that cannot end before the
        # exit (queued ones, or running ones the grace then stops) are
        # answered "unavailable", at once or at the exit.
        d = self.start_daemon(extra_args=["--shutdown-grace", "300s",
                                          "--kill-grace", "1s"])
        gate = self.path("gate")
        ends = d.submit(fq("waitfile", gate, 120))["id"]
        stopped = d.submit(fq("sleep", 600))["id"]
        for i in (ends, stopped):
            self.track_pid(d.wait_running_pid(i)["pid"])
        queued = d.submit(fq("exit", 0), delay_ms=HOUR_MS)["id"]
        with d.connect() as a, d.connect() as b, d.connect() as c:
            a.send({"op": "wait", "id": ends})
            b.send({"op": "wait", "id": queued})
            c.send({"op": "wait", "id": stopped})
            # Their bytes were in before this one's: read in its pass.
            d.status()
            d.signal(signal.SIGTERM)
            check_error(self, b.recv(timeout=60), "unavailable",
                        "shutting down")
            self.touch(gate)
            got = a.recv(timeout=60)
            self.assertIs(got["ok"], True, got)
            self.assertEqual(got["task"]["state"], "succeeded")
            # On a connection opened before: reads of what the grace lets
            # end are answered, changes are not.
            a.send({"op": "get", "id": ends})
            self.assertEqual(a.recv(timeout=60)["task"]["state"],
                             "succeeded")
            a.send({"op": "submit", "argv": fq("exit", 0)})
            check_error(self, a.recv(timeout=60), "unavailable",
                        "shutting down")
            a.send({"op": "output", "id": stopped, "wait_ms": 600000})
            b.send({"op": "status"})    # read after a's, as above
            self.assertIs(b.recv(timeout=60)["ok"], True)
            d.signal(signal.SIGTERM)    # the grace ends: stopped is
            check_error(self, c.recv(timeout=60), "unavailable",
                        "shutting down")
            got = a.recv(timeout=60)    # its attempt ended: no more comes
            self.assertIs(got["ok"], True, got)
            self.assertIs(got["eof"], True, got)
        self.assertEqual(d.wait_exit(timeout=60), 0, d.stderr()[-2000:])
        d.expect_alive = False

    def test_a_third_signal_kills_even_a_task_stopping_on_its_own(self):
        # The second SIGTERM ends the grace, the third kills: also a task
        # whose own timeout had it stopping when the first came (it once
        # sat out its whole --kill-grace).
        d = self.start_daemon(extra_args=["--shutdown-grace", "300s",
                                          "--kill-grace", "300s"])
        timed = d.submit(fq("ignore-term", 600, self.path("r1")),
                         timeout_ms=500, max_attempts=1)
        plain = d.submit(fq("ignore-term", 600, self.path("r2")))
        for t in (timed, plain):
            self.track_pid(d.wait_running_pid(t["id"])["pid"])

        def stopping(task, reason, sig):
            d.wait_event(lambda e: e.get("event") == "task.stopping" and
                         e.get("task") == task["id"] and
                         e.get("reason") == reason and
                         e.get("signal") == sig,
                         what="%s of task %d (%s)" % (sig, task["id"],
                                                     reason))
        stopping(timed, "timeout", "SIGTERM")
        d.signal(signal.SIGTERM)
        d.wait_event(lambda e: e.get("event") == "daemon.stopping")
        d.signal(signal.SIGTERM)
        stopping(plain, "shutdown", "SIGTERM")
        d.signal(signal.SIGTERM)
        stopping(timed, "timeout", "SIGKILL")
        stopping(plain, "shutdown", "SIGKILL")
        self.assertEqual(d.wait_exit(timeout=60), 0, d.stderr()[-2000:])
        d.expect_alive = False

    def test_sigint_is_graceful_too(self):
        d = self.start_daemon(extra_args=["--shutdown-grace", "1s"])
        t = d.submit(fq("exit", 0))
        d.wait_final(t["id"])
        d.signal(signal.SIGINT)
        self.assertEqual(d.wait_exit(timeout=30), 0)
        d.expect_alive = False

    def test_queued_tasks_survive_restart(self):
        d = self.start_daemon()
        ids = [d.submit(fq("exit", i), name="t%d" % i, priority=i,
                        delay_ms=HOUR_MS, env={"A": str(i)})["id"]
               for i in range(20)]
        d.kill9()
        d.start()
        for i, id in enumerate(ids):
            t = d.get(id)
            self.assertEqual((t["state"], t["name"], t["priority"],
                              t["argv"]),
                             ("queued", "t%d" % i, i, fq("exit", i)))


class Crash(fqtest.TestCase):

    def test_sigkill_while_running_then_restart(self):
        d = self.start_daemon()
        pidfile = self.path("gc.pid")
        t = d.submit(fq("until-attempt", 2, "grandchild", pidfile, 600, 600),
                     max_attempts=3, backoff_base_ms=100,
                     backoff_max_ms=100)
        gc = self.read_pidfile(pidfile)
        gc_start = fqtest.proc_stat(gc)[4]
        run = d.wait_running_pid(t["id"])
        task_start = fqtest.proc_stat(run["pid"])[4]
        self.track_pid(run["pid"])
        self.assertEqual(d.get(t["id"])["attempts"][0]["pid"], run["pid"])
        # The pid reaches the database a little after the start: the
        # crash comes once it is there (a crash before is the next test's).
        db = d.db_connect()
        self.addCleanup(db.close)
        fqtest.wait_for(lambda: db.execute(
            "SELECT 1 FROM attempts WHERE task_id = ? AND n = 1 AND pid = ?",
            (t["id"], run["pid"])).fetchone(), what="the attempt's pid")
        d.kill9()
        d.start()
        wait_gone(run["pid"], timeout=20, starttime=task_start,
                  what="the lost attempt's process %d to be killed at "
                  "restart" % run["pid"])
        wait_gone(gc, timeout=20, starttime=gc_start,
                  what="the lost attempt's setsid'd grandchild %d to be "
                  "killed at restart" % gc)
        t = d.wait_final(t["id"])
        self.assertEqual((t["state"], t["attempt"]), ("succeeded", 2),
                         json.dumps(t))
        a1, a2 = t["attempts"]
        self.assertEqual((a1["n"], a1["outcome"]), (1, "lost"))
        self.assertIsNotNone(a1["finished_at"])
        self.assertEqual(a1["pid"], run["pid"])
        self.assertEqual((a2["n"], a2["outcome"]), (2, "success"))
        ended = d.task_events(t["id"], "task.attempt_ended")
        self.assertIn("lost", [e["outcome"] for e in ended])

    def test_start_written_ahead_then_crash(self):
        # What a SIGKILL between a task's exec and the pass's commit
        # leaves: the attempt and the task running, written ahead of the
        # spawn with no pid, and the run going on. The next start stops
        # that run (found by its environment) and records the attempt
        # lost; the retry is attempt 2, never attempt 1 again.
        d = self.start_daemon()
        t = d.submit(fq("exit", 0), delay_ms=3600 * 1000, max_attempts=3,
                     backoff_base_ms=100, backoff_max_ms=100)
        self.assertEqual(d.stop(), 0)
        now = int(time.time() * 1000)
        db = sqlite3.connect(d.db)
        with db:
            db.execute("UPDATE tasks SET state = 'running', attempt = 1,"
                       " started_at = ?, run_at = ? WHERE id = ?",
                       (now, now, t["id"]))
            db.execute("INSERT INTO attempts (task_id, n, started_at)"
                       " VALUES (?, 1, ?)", (t["id"], now))
        db.close()
        env = dict(os.environ, FORKQ_TASK_ID=str(t["id"]),
                   FORKQ_ATTEMPT="1", FORKQ_SOCKET=d.sock)
        stray = self.track_proc(subprocess.Popen(
            fq("sleep", 600), env=env, stdin=subprocess.DEVNULL))
        d.start()
        self.assertEqual(stray.wait(timeout=20 * fqtest.SCALE), -9,
                         "the run of the unrecorded start was not killed")
        t = d.wait_final(t["id"])
        self.assertEqual((t["state"], t["attempt"]), ("succeeded", 2),
                         json.dumps(t))
        a1, a2 = t["attempts"]
        self.assertEqual((a1["n"], a1["outcome"], a1["pid"]),
                         (1, "lost", None))
        self.assertEqual((a2["n"], a2["outcome"]), (2, "success"))
        ended = d.task_events(t["id"], "task.attempt_ended")
        self.assertEqual([(e["attempt"], e["outcome"], e["pid"])
                          for e in ended][0], (1, "lost", None))

    def test_answered_cancel_survives_a_crash(self):
        # A running task that ignores SIGTERM is canceled (answered ok,
        # still running through the kill grace), then forkqd is killed:
        # the next start ends the attempt canceled, not lost and retried.
        d = self.start_daemon()
        ready = self.path("ready")
        t = d.submit(fq("ignore-term", 600, ready), max_attempts=3,
                     backoff_base_ms=100, backoff_max_ms=100)
        wait_for(lambda: os.path.exists(ready), what="the task running")
        run = d.wait_running_pid(t["id"])
        self.track_pid(run["pid"])
        ans = d.ok({"op": "cancel", "id": t["id"]})
        self.assertEqual(ans["task"]["state"], "running")
        d.kill9()
        d.start()
        t = d.wait_final(t["id"])
        self.assertEqual((t["state"], t["attempt"]), ("canceled", 1),
                         json.dumps(t))
        self.assertEqual(t["attempts"][0]["outcome"], "canceled")
        wait_gone(run["pid"], timeout=20, what="the canceled run")
        # A retry is a new run: that cancel does not carry over to it.
        d.ok({"op": "retry", "id": t["id"]})
        wait_for(lambda: d.get(t["id"])["attempt"] == 2 and
                 d.get(t["id"])["state"] == "running", what="attempt 2")
        db = d.db_connect()
        try:
            (flag,) = db.execute("SELECT cancel_requested FROM tasks"
                                 " WHERE id = ?", (t["id"],)).fetchone()
        finally:
            db.close()
        self.assertEqual(flag, 0)

    def test_recovery_spares_other_daemons_tasks(self):
        # Two forkqd on two state dirs: both number their first task 1.
        a = self.start_daemon()
        b = self.start_daemon()
        ta = a.submit(fq("sleep", 600), max_attempts=1)
        tb = b.submit(fq("sleep", 600))
        self.assertEqual(ta["id"], tb["id"])
        arun = a.wait_running_pid(ta["id"])
        brun = b.wait_running_pid(tb["id"])
        self.track_pid(arun["pid"])
        self.track_pid(brun["pid"])
        bstart = fqtest.proc_stat(brun["pid"])[4]
        a.kill9()
        a.start()
        t = a.wait_final(ta["id"])
        self.assertEqual(t["attempts"][0]["outcome"], "lost")
        wait_gone(arun["pid"], timeout=20)
        self.assertTrue(pid_alive(brun["pid"], bstart),
                        "recovery of one forkqd killed the task of another "
                        "forkqd (same task id, other state dir)")
        self.assertEqual(b.get(tb["id"])["state"], "running")

    def check_no_unfinished_attempts(self, d):
        db = d.db_connect()
        try:
            rows = db.execute(
                "SELECT a.task_id, a.n, t.state FROM attempts a "
                "JOIN tasks t ON t.id = a.task_id "
                "WHERE a.finished_at IS NULL AND t.state != 'running'"
            ).fetchall()
        finally:
            db.close()
        self.assertEqual(rows, [], "attempts without finished_at on tasks "
                         "that do not run (task, n, state)")

    def test_kill9_loop_loses_nothing(self):
        d = self.start_daemon(workers=2)
        rng = random.Random(int(os.environ.get("FORKQ_TEST_SEED",
                                               time.time())))
        acked = []
        rounds = 4
        for r in range(rounds):
            stop = threading.Event()
            got, misordered = [], []

            def submitter():
                # Pipelined in windows of 8, so requests are in flight
                # when forkqd dies.
                try:
                    with d.connect(timeout=20) as c:
                        for base in range(0, 200, 8):
                            if stop.is_set():
                                return
                            names = ["r%d-%d" % (r, i)
                                     for i in range(base, min(base + 8, 200))]
                            for i, name in enumerate(names):
                                argv = fq("sleep", 0.5) \
                                    if (base + i) % 20 == 0 else fq("exit", 0)
                                c.send({"op": "submit", "argv": argv,
                                        "name": name})
                            for name in names:
                                a = c.recv()
                                if a.get("ok") is True:
                                    if a["task"]["name"] != name:
                                        misordered.append((name, a))
                                    got.append(a["task"]["id"])
                except (AssertionError, OSError, ValueError):
                    pass

            th = threading.Thread(target=submitter)
            th.start()
            kill_after = rng.randint(1, 190)
            wait_for(lambda: len(got) >= kill_after or not th.is_alive(),
                     interval=0.001, what="submits to be acknowledged")
            d.kill9()
            stop.set()
            th.join(60)
            self.assertFalse(th.is_alive())
            self.assertEqual(misordered, [], "answers out of order")
            acked.extend(got)
            d.start()
            self.check_no_unfinished_attempts(d)

        self.assertGreater(len(acked), 0, "nothing was acknowledged")
        self.assertEqual(len(acked), len(set(acked)), "an id given twice")

        def settled():
            c = d.status()["counts"]
            return c["queued"] == 0 and c["running"] == 0
        wait_for(settled, timeout=120, interval=0.2,
                 what="every task to reach a final state")
        tasks = d.all_tasks()
        ids = [t["id"] for t in tasks]
        self.assertEqual(len(ids), len(set(ids)), "a task listed twice")
        missing = sorted(set(acked) - set(ids))
        self.assertEqual(missing, [], "acknowledged submits lost")
        for t in tasks:
            self.assertIn(t["state"], FINAL, json.dumps(t))
            if t["state"] != "succeeded":
                full = d.get(t["id"])
                self.assertEqual(
                    (full["state"],
                     {a["outcome"] for a in full["attempts"]}),
                    ("failed", {"lost"}), json.dumps(full))
        db = d.db_connect()
        try:
            (lost,) = db.execute("SELECT count(*) FROM attempts "
                                 "WHERE outcome = 'lost'").fetchone()
            sys.stderr.write("kill -9 loop: %d acknowledged, %d tasks, %d "
                             "lost attempts\n" % (len(acked), len(ids), lost))
            (n,) = db.execute("SELECT count(*) FROM attempts "
                              "WHERE finished_at IS NULL").fetchone()
            self.assertEqual(n, 0, "attempts left without finished_at")
            db_ids = [row[0] for row in db.execute("SELECT id FROM tasks")]
            self.assertEqual(sorted(db_ids), sorted(ids))
        finally:
            db.close()


    def test_attempts_left_running_that_cannot_be_read_stop_the_start(self):
        # Unread, the attempts a crash left running would stay running
        # for ever, with no process (spec 4.6: they are recorded lost):
        # forkqd must not start on a database where it cannot read them.
        d = self.start_daemon()
        t = d.submit(fq("sleep", 600), max_attempts=1)
        self.track_pid(d.wait_running_pid(t["id"])["pid"])
        d.kill9()
        db = sqlite3.connect(d.db, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            size = db.execute("PRAGMA page_size").fetchone()[0]
            pages = [r[0] for r in db.execute(
                "SELECT pageno FROM dbstat"
                " WHERE name = 'attempts_unfinished'")]
        except sqlite3.OperationalError as e:
            self.skipTest("no dbstat in this SQLite: %s" % e)
        finally:
            db.close()
        self.assertTrue(pages)
        with open(d.db, "r+b") as f:
            for page in pages:
                f.seek((page - 1) * size)
                f.write(b"\xff" * size)
        d.start(wait=False)
        rc = d.wait_exit(timeout=20)
        d.expect_alive = False
        self.assertNotEqual(rc, 0, "forkqd must not start")
        self.assertIn("cannot read the attempts left running", d.stderr())


class Daemonized(fqtest.TestCase):

    def test_daemon_mode_keeps_its_database_locks(self):
        """With --daemon, forkqd forks away from the process that opened
        the store. SQLite's locks must be the daemon's own: otherwise the
        last outside reader to close takes the WAL away from under it, and
        an acknowledged task is lost at the next crash."""
        d = self.start_daemon(start=False, extra_args=["--daemon"])
        pid = self.start_daemonized(d)
        a = d.submit(fq("exit", 0), delay_ms=HOUR_MS)
        # As `sqlite3 forkq.db "SELECT ..."` would (read-write: one that
        # can checkpoint and remove the WAL when it closes last).
        db = sqlite3.connect(d.db, timeout=30)
        db.execute("SELECT count(*) FROM tasks").fetchone()
        db.close()
        b = d.submit(fq("exit", 0), delay_ms=HOUR_MS)
        self.end_daemonized(pid, signal.SIGKILL)
        d.extra_args = []  # in the foreground now, for the harness
        d.start()
        ids = {t["id"] for t in d.all_tasks()}
        self.assertEqual(ids, {a["id"], b["id"]})


    def test_daemon_mode_exits_once_listening_or_says_why_not(self):
        """forkqd --daemon once exited 0 before the socket existed, and a
        start-up error after it went to /dev/null with a 0 exit. The
        parent now waits: 0 once the socket answers, else 1 with the
        error on its stderr."""
        d = self.start_daemon(start=False, extra_args=["--daemon"])
        p = subprocess.run(d.argv(), timeout=60 * fqtest.SCALE,
                           stdin=subprocess.DEVNULL, capture_output=True,
                           env=d.env, cwd=d.dir)
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(os.path.join(d.dir, "forkqd.pid")) as f:
            pid = int(f.read())
        self.track_pid(pid)
        # Answers at once: no wait for the socket to appear.
        self.assertIs(d.request({"op": "status"})["ok"], True)
        # A second one on the same socket, another state dir.
        other = self.start_daemon(start=False, extra_args=["--daemon"])
        other.sock = d.sock
        p = subprocess.run(other.argv(), timeout=60 * fqtest.SCALE,
                           stdin=subprocess.DEVNULL, capture_output=True,
                           env=other.env, cwd=other.dir)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(b"another forkqd is listening", p.stderr)
        # Nor is a pidfile left behind naming its dead pid.
        self.assertFalse(os.path.exists(os.path.join(other.dir,
                                                     "forkqd.pid")))
        self.end_daemonized(pid, signal.SIGTERM)
        self.assertFalse(os.path.exists(os.path.join(d.dir, "forkqd.pid")))

    def test_daemon_mode_leaves_the_callers_stderr_as_it_was(self):
        """With the event log on stderr (-l -), forkqd makes it
        non-blocking when it is a pipe: --daemon once did that to the
        caller's own pipe, where later writers then met EAGAIN."""
        d = self.start_daemon(start=False, extra_args=["--daemon", "-l",
                                                       "-"])
        r, w = os.pipe()
        try:
            p = subprocess.run(d.argv(), timeout=60 * fqtest.SCALE,
                               stdin=subprocess.DEVNULL, stdout=w, stderr=w,
                               env=d.env, cwd=d.dir)
            self.assertEqual(p.returncode, 0)
            with open(os.path.join(d.dir, "forkqd.pid")) as f:
                pid = int(f.read())
            self.track_pid(pid)
            self.assertFalse(fcntl.fcntl(w, fcntl.F_GETFL) & os.O_NONBLOCK)
            self.assertIs(d.request({"op": "status"})["ok"], True)
            self.end_daemonized(pid, signal.SIGTERM)
        finally:
            os.close(r)
            os.close(w)


# An LD_PRELOAD shim: pread(2) of forkq.db or its WAL fails with EIO while
# the file FQ_FAIL_READS names exists.
FAIL_READS_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int
failing(int fd)
{
	const char *trigger = getenv("FQ_FAIL_READS");
	char link[64], path[4096];
	ssize_t n;

	if (trigger == NULL || access(trigger, F_OK) != 0)
		return 0;
	snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
	if ((n = readlink(link, path, sizeof path - 1)) < 0)
		return 0;
	path[n] = '\0';
	return (n > 9 && strcmp(path + n - 9, "/forkq.db") == 0) ||
	    (n > 13 && strcmp(path + n - 13, "/forkq.db-wal") == 0);
}

/* pread and pread64 alike. */
#define FAILING_READ(name, off_type)					\
ssize_t									\
name(int fd, void *buf, size_t len, off_type off)			\
{									\
	static ssize_t (*real)(int, void *, size_t, off_type);		\
									\
	if (failing(fd)) {						\
		errno = EIO;						\
		return -1;						\
	}								\
	if (real == NULL)						\
		real = (ssize_t (*)(int, void *, size_t, off_type))	\
		    dlsym(RTLD_NEXT, #name);				\
	return real(fd, buf, len, off);					\
}

FAILING_READ(pread, off_t)
FAILING_READ(pread64, off64_t)
"""


class Database(fqtest.TestCase):

    def start_failing_reads(self):
        """A forkqd whose reads of its database fail (EIO) while the file
        it returns (the trigger) exists."""
        trigger = self.path("fail-reads")
        return self.start_daemon(env=self.preload_env(
            "failreads", FAIL_READS_SHIM, {"FQ_FAIL_READS": trigger})), \
            trigger

    def fail_reads(self, d, trigger):
        # Another writer's commit: forkqd's page cache is dropped, so what
        # it reads next comes from the files.
        db = sqlite3.connect(d.db, timeout=30)
        with db:
            db.execute("INSERT INTO paused VALUES ('drop-the-cache')")
            db.execute("DELETE FROM paused WHERE queue = 'drop-the-cache'")
        db.close()
        open(trigger, "w").close()

    def test_a_task_that_cannot_be_read_is_unavailable_not_missing(self):
        """A read of the database that fails does not say the task is not
        there: get, wait and a submit naming it in after answer
        unavailable, not not_found, and forkqd answers again once the
        reads work."""
        d, trigger = self.start_failing_reads()
        t = d.wait_final(d.submit(fq("exit", 0))["id"])
        self.fail_reads(d, trigger)
        for req in ({"op": "get", "id": t["id"]},
                    {"op": "wait", "id": t["id"], "timeout_ms": 1000},
                    {"op": "submit", "argv": fq("exit", 0),
                     "after": [t["id"]]}):
            with self.subTest(op=req["op"]):
                check_error(self, d.request(req), "unavailable")
        os.unlink(trigger)
        got = wait_for(lambda: d.request({"op": "get", "id": t["id"]})
                       .get("task"), what="get to answer again")
        self.assertEqual(got["state"], "succeeded", json.dumps(got))
        after = d.submit(fq("exit", 0), after=[t["id"]])
        self.assertEqual(d.wait_final(after["id"])["state"], "succeeded")

    def test_dependents_are_told_once_the_database_reads_again(self):
        """A task ends while its dependents cannot be read: they are told
        once reads work again. Before, the release was dropped, and B
        (after A) waited on A, which had succeeded, for good."""
        d, trigger = self.start_failing_reads()
        gate = self.path("gate")
        a = d.submit(fq("waitfile", gate, 60))
        b = d.submit(fq("exit", 0), after=[a["id"]])
        pid = d.wait_running_pid(a["id"])["pid"]
        self.fail_reads(d, trigger)
        self.touch(gate)
        fqtest.wait_gone(pid, what="A to end")
        wait_for(lambda: "reading dependents" in d.stderr(),
                 what="forkqd to fail reading A's dependents")
        os.unlink(trigger)
        b = d.wait_final(b["id"])
        self.assertEqual(b["state"], "succeeded", json.dumps(b))
        self.assertEqual(d.get(a["id"])["state"], "succeeded")

    def test_a_retry_whose_dependencies_cannot_be_read_is_unavailable(self):
        """retry of B (after A, which failed) when the read of B's
        dependencies fails: it was taken for none failed, B was queued
        with new attempts and waited on A for good (until a restart).
        Now the retry is refused and B stays as it was."""
        d, trigger = self.start_failing_reads()
        a = d.wait_final(d.submit(fq("exit", 1), max_attempts=1)["id"])
        b = d.wait_final(d.submit(fq("exit", 0), after=[a["id"]])["id"])
        self.assertEqual(b["state"], "canceled", json.dumps(b))
        # B's row in forkqd's cache, its dependencies not: the get reads
        # it after the other writer's commit dropped the cache.
        self.fail_reads(d, trigger)
        os.unlink(trigger)
        self.assertEqual(d.get(b["id"])["state"], "canceled")
        open(trigger, "w").close()
        ans = d.request({"op": "retry", "id": b["id"]})
        os.unlink(trigger)
        check_error(self, ans, "unavailable")
        self.assertIn("dependencies", ans["error"]["message"])
        got = d.get(b["id"])
        self.assertEqual((got["state"], got["max_attempts"]),
                         ("canceled", b["max_attempts"]), json.dumps(got))
        # Read again, the retry cancels it again at once, naming A.
        again = d.ok({"op": "retry", "id": b["id"]})["task"]
        self.assertEqual(again["state"], "canceled", json.dumps(again))
        self.assertIn(str(a["id"]), again["error"])

    def test_a_start_finishes_releases_left_undone(self):
        """forkqd at start tells dependents of the ends they missed (a
        release it could not read before it stopped): B, queued after A
        that failed, is canceled; C, after D that succeeded, runs. The
        database is set so by hand while forkqd is stopped."""
        self.d.ok({"op": "pause", "queue": "held"})
        a = self.d.submit(fq("exit", 0), queue="held")
        b = self.d.submit(fq("exit", 0), after=[a["id"]])
        d_ = self.d.submit(fq("exit", 0), queue="held")
        c = self.d.submit(fq("exit", 0), after=[d_["id"]])
        self.assertEqual(self.d.stop(), 0)
        db = sqlite3.connect(self.d.db, timeout=30)
        with db:
            for tid, st in ((a["id"], "failed"), (d_["id"], "succeeded")):
                db.execute("UPDATE tasks SET state = ?, finished_at ="
                           " created_at WHERE id = ?", (st, tid))
        db.close()
        self.d.start()
        b = self.d.wait_final(b["id"])
        self.assertEqual(b["state"], "canceled", json.dumps(b))
        self.assertIn(str(a["id"]), b["error"] or "")
        self.assertEqual(b["attempt"], 0)
        c = self.d.wait_final(c["id"])
        self.assertEqual(c["state"], "succeeded", json.dumps(c))
        # A sound database has no release left to do: not even for a task
        # that names one twice (it was counted twice as waited on).
        h = self.d.submit(fq("exit", 0), queue="held")
        x = self.d.submit(fq("exit", 0), after=[d_["id"], h["id"], h["id"]])
        self.assertEqual(x["after"], sorted({d_["id"], h["id"]}))
        self.d.stop()
        self.d.start()
        self.assertNotIn("did not know", self.d.stderr())
        self.assertEqual(self.d.get(x["id"])["state"], "queued")

    def test_answers_never_get_ahead_of_the_disk(self):
        """Attempt records are fsynced in groups, but an answer that tells
        of a change waits for its commit and fsync: what a client was told
        is on disk. A wait answered as a task ends races the group."""
        db = self.d.db_connect()
        self.addCleanup(db.close)
        for _ in range(20):
            t = self.d.submit(fq("exit", 0))
            ans = self.d.ok({"op": "wait", "id": t["id"],
                             "timeout_ms": 30000}, timeout=40)
            self.assertEqual(ans["task"]["state"], "succeeded", ans)
            row = db.execute(
                "SELECT t.state, a.outcome FROM tasks t JOIN attempts a"
                " ON a.task_id = t.id WHERE t.id = ?",
                (t["id"],)).fetchone()
            self.assertEqual(row, ("succeeded", "success"),
                             "the answer went out before its commit")
        ans = self.d.status()
        self.assertEqual(ans["counts"]["succeeded"], 20)
        (n,) = db.execute("SELECT count(*) FROM tasks WHERE state ="
                          " 'succeeded'").fetchone()
        self.assertEqual(n, 20, "status told of tasks not yet on disk")

    def test_recorded_start_time_is_the_kernels(self):
        """Recovery kills a recorded pid only when its start time still
        matches: forkqd computes it from the boot clock around clone(), and
        it must equal /proc's starttime exactly, for every task."""
        d = self.start_daemon(workers=12)
        ts = [d.submit(fq("sleep", 60)) for _ in range(12)]
        db = d.db_connect()
        self.addCleanup(db.close)
        for t in ts:
            pid = d.wait_running_pid(t["id"])["pid"]
            st = fqtest.proc_stat(pid)
            self.assertIsNotNone(st)

            def recorded():
                return db.execute(
                    "SELECT pid_start FROM attempts WHERE task_id = ?"
                    " AND n = 1 AND pid = ?", (t["id"], pid)).fetchone()
            (start,) = fqtest.wait_for(recorded, what="the attempt row")
            self.assertEqual(start, st[4], "pid_start of task %d" % t["id"])
        for t in ts:
            d.ok({"op": "cancel", "id": t["id"]})
        for t in ts:
            d.wait_final(t["id"])

    def test_idle_daemon_commits_soon(self):
        """With nobody asking, what forkqd did by itself still reaches the
        database: the task.succeeded event is followed by the row."""
        t = self.d.submit(fq("exit", 0))
        self.d.wait_event(lambda e: e.get("event") == "task.succeeded"
                          and e.get("task") == t["id"])
        db = self.d.db_connect()
        self.addCleanup(db.close)

        def on_disk():
            return db.execute("SELECT state FROM tasks WHERE id = ?",
                              (t["id"],)).fetchone() == ("succeeded",)
        fqtest.wait_for(on_disk, what="the task's end to be committed")

    def test_schema_wal_and_columns(self):
        t = self.d.submit(fq("exit", 0), env={"A": "b c"}, name="dbt")
        self.d.wait_final(t["id"])
        db = self.d.db_connect()
        try:
            (uv,) = db.execute("PRAGMA user_version").fetchone()
            self.assertGreaterEqual(uv, 1)
            (mode,) = db.execute("PRAGMA journal_mode").fetchone()
            self.assertEqual(mode.lower(), "wal")
            tcols = {r[1] for r in db.execute("PRAGMA table_info(tasks)")}
            acols = {r[1] for r in db.execute("PRAGMA table_info(attempts)")}
            self.assertEqual(sorted(set(TASK_FIELDS) - tcols), [],
                             "task fields missing from the tasks table")
            self.assertEqual(
                sorted(set(ATTEMPT_FIELDS + ("task_id",)) - acols), [],
                "attempt fields missing from the attempts table")
            self.assertIn("env", tcols)
            row = db.execute(
                "SELECT typeof(created_at), created_at, argv, env, state, "
                "name FROM tasks WHERE id = ?", (t["id"],)).fetchone()
            self.assertEqual(row[0], "integer", "times are integers (ms)")
            self.assertAlmostEqual(row[1] / 1000.0,
                                   parse_ts(t["created_at"]), delta=0.002)
            self.assertEqual(json.loads(row[2]), fq("exit", 0))
            self.assertEqual(json.loads(row[3]), {"A": "b c"})
            self.assertEqual(row[4:], ("succeeded", "dbt"))
            arow = db.execute(
                "SELECT n, typeof(started_at), outcome, exit_code "
                "FROM attempts WHERE task_id = ?", (t["id"],)).fetchall()
            self.assertEqual(arow, [(1, "integer", "success", 0)])
        finally:
            db.close()

    def test_newer_schema_refused(self):
        d = self.d
        d.submit(fq("exit", 0))
        self.assertEqual(d.stop(), 0)
        db = sqlite3.connect(d.db, timeout=30)
        try:
            (uv,) = db.execute("PRAGMA user_version").fetchone()
            db.execute("PRAGMA user_version = %d" % (uv + 100))
            db.commit()
        finally:
            db.close()
        d.start(wait=False)
        rc = d.wait_exit(timeout=20)
        d.expect_alive = False
        self.assertNotEqual(rc, 0, "forkqd must refuse a newer schema")
        err = d.stderr()
        self.assertRegex(err.lower(), r"version|schema|newer",
                         "a clear message: %r" % err)
        db = sqlite3.connect("file:%s?mode=ro" % d.db, uri=True)
        try:
            (uv2,) = db.execute("PRAGMA user_version").fetchone()
        finally:
            db.close()
        self.assertEqual(uv2, uv + 100, "the database was left alone")

    def test_foreign_database_refused(self):
        # An SQLite file of someone else's at the database path: the
        # first migration fails on its table, forkqd says so and exits,
        # and the file is left as it was.
        d = self.d
        self.assertEqual(d.stop(), 0)
        for name in os.listdir(d.dir):
            if name.startswith("forkq.db"):
                os.unlink(os.path.join(d.dir, name))
        db = sqlite3.connect(d.db)
        with db:
            db.execute("CREATE TABLE tasks (theirs TEXT)")
            db.execute("INSERT INTO tasks VALUES ('kept')")
        db.close()
        d.start(wait=False)
        rc = d.wait_exit(timeout=20)
        d.expect_alive = False
        self.assertEqual(rc, 1, d.stderr())
        self.assertIn("schema upgrade to version 1 failed: table tasks "
                      "already exists", d.stderr())
        db = sqlite3.connect("file:%s?mode=ro" % d.db, uri=True)
        try:
            self.assertEqual(db.execute("SELECT theirs FROM tasks")
                             .fetchall(), [("kept",)])
            (uv,) = db.execute("PRAGMA user_version").fetchone()
        finally:
            db.close()
        self.assertEqual(uv, 0)

    def test_upgrade_from_schema_2(self):
        # A database as forkqd wrote it with schema 2 (before
        # tasks.cancel_requested, and with the dispatch index by priority
        # alone) is upgraded in place, its tasks kept.
        d = self.d
        t = d.submit(fq("exit", 0))
        d.wait_final(t["id"])
        self.assertEqual(d.stop(), 0)
        db = sqlite3.connect(d.db)
        with db:
            db.execute("ALTER TABLE tasks DROP COLUMN cancel_requested")
            db.execute("DROP INDEX tasks_dispatch")
            db.execute("DROP INDEX tasks_dispatch_queue")
            db.execute("CREATE INDEX tasks_dispatch ON tasks(priority DESC,"
                       " run_at, id) WHERE state = 'queued'")
            db.execute("PRAGMA user_version = 2")
        db.close()
        d.start()
        self.assertEqual(d.get(t["id"])["state"], "succeeded")
        q = d.submit(fq("exit", 0), queue="later")
        self.assertEqual(d.wait_final(q["id"])["state"], "succeeded")
        uv, cols, index = schema_of(d)
        self.assertEqual(uv, SCHEMA_VERSION)
        self.assertIn("cancel_requested", cols)
        self.assertIn("(queue, priority DESC", index["tasks_dispatch_queue"])
        for name in ("tasks_dispatch", "tasks_dispatch_queue"):
            self.assertIn("waiting_on = 0", index[name])

    def test_upgrade_from_an_unreleased_schema_4(self):
        # Version 4 was, for a while, other indexes: a database left at
        # it had no tasks_dispatch_queue, and did not open.
        d = self.d
        t = d.submit(fq("exit", 0), delay_ms=HOUR_MS)
        self.assertEqual(d.stop(), 0)
        db = sqlite3.connect(d.db)
        with db:
            db.execute("DROP INDEX tasks_dispatch")
            db.execute("DROP INDEX tasks_dispatch_queue")
            db.execute("CREATE INDEX tasks_dispatch ON tasks(queue,"
                       " priority DESC, run_at, id) WHERE state = 'queued'"
                       " AND waiting_on = 0")
            db.execute("CREATE INDEX tasks_uid ON tasks(uid, id)")
            db.execute("PRAGMA user_version = 4")
        db.close()
        d.start()
        self.assertEqual(d.get(t["id"])["state"], "queued")
        u = d.wait_final(d.submit(fq("exit", 0))["id"])
        self.assertEqual(u["state"], "succeeded")
        uv, _, index = schema_of(d)
        self.assertEqual(uv, SCHEMA_VERSION)
        self.assertNotIn("tasks_uid", index)
        self.assertIn("(priority DESC", index["tasks_dispatch"])
        self.assertIn("(queue, priority DESC", index["tasks_dispatch_queue"])

    def test_upgrade_from_schema_5_keeps_cron_entries(self):
        # Version 6 makes a cron entry's name its owner's: the table is
        # made again with (uid, name) for its key, its entries kept.
        d = self.d
        for name in ("a", "b"):
            d.ok({"op": "cron_add", "name": name, "schedule": "0 3 * * *",
                  "argv": fq("exit", 0)})
        before = d.ok({"op": "cron_list"})["crons"]
        self.assertEqual(d.stop(), 0)
        db = sqlite3.connect(d.db)
        with db:
            db.execute("CREATE TABLE crons_v5 (name TEXT PRIMARY KEY,"
                       " schedule TEXT NOT NULL, request TEXT NOT NULL,"
                       " argv TEXT NOT NULL, next_run_at INTEGER NOT NULL,"
                       " last_run_at INTEGER, last_task INTEGER,"
                       " uid INTEGER NOT NULL, gid INTEGER NOT NULL)")
            db.execute("INSERT INTO crons_v5 SELECT name, schedule,"
                       " request, argv, next_run_at, last_run_at,"
                       " last_task, uid, gid FROM crons")
            db.execute("DROP TABLE crons")
            db.execute("ALTER TABLE crons_v5 RENAME TO crons")
            db.execute("PRAGMA user_version = 5")
        db.close()
        d.start()
        self.assertEqual(d.ok({"op": "cron_list"})["crons"], before)
        uv, _, index = schema_of(d)
        self.assertEqual(uv, SCHEMA_VERSION)
        # Version 7: cron finds what is due by an index.
        self.assertIn("crons_next_run", index)
        db = d.db_connect()
        try:
            (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE"
                                " name = 'crons'").fetchone()
        finally:
            db.close()
        self.assertIn("PRIMARY KEY (uid, name)", sql)

    def checkpoint_events(self, name):
        return [e for e in self.d.events() if e.get("event") == name]

    def hold_checkpoints_back_until_said(self):
        """Keeps a read transaction open on forkq.db while submitting,
        until forkqd says checkpoints are blocked: at 5 s, with 4,000
        frames in the WAL, once. Closes the reader."""
        db = self.d.db_connect()
        try:
            db.execute("BEGIN")
            db.execute("SELECT count(*) FROM tasks").fetchone()
            held = time.monotonic()
            # Each submit answered alone is a commit of a few pages: past
            # 4,000 frames in some hundreds, then one every 0.1 s.
            for _ in range(800):
                self.d.submit(fq("true"), delay_ms=3600000)
            if time.monotonic() - held < 4.5:
                self.assertEqual(
                    self.checkpoint_events("store.checkpoint_blocked"), [],
                    "said before the reader held on for 5 s")

            def said():
                self.d.submit(fq("true"), delay_ms=3600000)
                time.sleep(0.1)
                return self.checkpoint_events("store.checkpoint_blocked")
            got = fqtest.wait_for(said, what="store.checkpoint_blocked")
            self.assertGreaterEqual(time.monotonic() - held, 5.0)
            self.assertEqual(len(got), 1, json.dumps(got))
            self.assertEqual(got[0]["level"], "warn")
            self.assertGreaterEqual(got[0]["wal_bytes"], 4000 * 1024)
            self.assertIn("reader", got[0]["message"])
            self.assertEqual(
                self.checkpoint_events("store.checkpoint_resumed"), [])
        finally:
            db.close()

    def test_a_reader_holding_checkpoints_back_is_said(self):
        # An outside reader keeps a read transaction open: checkpoints
        # stop short of its snapshot and the WAL grows, and forkqd says
        # so. When the reader has gone, the next checkpoint gets to the
        # end, and forkqd says that too.
        self.hold_checkpoints_back_until_said()
        self.d.submit(fq("true"), delay_ms=3600000)
        self.d.wait_event(lambda e: e.get("event") ==
                          "store.checkpoint_resumed",
                          what="store.checkpoint_resumed")
        self.assertEqual(
            len(self.checkpoint_events("store.checkpoint_blocked")), 1)

    def test_a_wal_begun_again_by_another_ends_the_blockage(self):
        # The reader gone, someone else checkpoints the WAL to its end and
        # empties it (sqlite3 shell, a backup tool): forkqd's next commit
        # finds the WAL begun again, below the frames at which it would
        # checkpoint itself, and says the blockage is over.
        self.hold_checkpoints_back_until_said()
        db = sqlite3.connect(self.d.db, timeout=30)
        try:
            (busy, _, _) = db.execute(
                "PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            self.assertEqual(busy, 0, "the TRUNCATE checkpoint finished")
        finally:
            db.close()
        self.d.submit(fq("true"), delay_ms=3600000)
        self.d.wait_event(lambda e: e.get("event") ==
                          "store.checkpoint_resumed",
                          what="store.checkpoint_resumed")

    def test_readable_while_running(self):
        gate = self.path("gate")
        t = self.d.submit(fq("waitfile", gate, 60))
        self.d.wait_running_pid(t["id"])
        db = self.d.db_connect()
        try:
            (state,) = db.execute("SELECT state FROM tasks WHERE id = ?",
                                  (t["id"],)).fetchone()
            self.assertEqual(state, "running")
        finally:
            db.close()
        self.touch(gate)
        self.assertEqual(self.d.wait_final(t["id"])["state"], "succeeded")


if __name__ == "__main__":
    fqtest.main()
