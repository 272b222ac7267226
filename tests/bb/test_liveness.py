"""Keeping tasks alive and stopping them (spec sections 4.4, 5): heartbeats,
timeouts, kill grace, process trees, cancel, progress."""

import ctypes
import errno
import fcntl
import json
import os
import platform
import signal
import struct
import subprocess
import sys
import termios
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fqtest                                             # noqa: E402
from fqtest import (check_error, fq, parse_ts, pid_alive, wait_for,
                    wait_gone)                            # noqa: E402

SLACK = 3.0 * fqtest.SCALE      # seconds a loaded machine may add


def run_secs(task):
    return parse_ts(task["finished_at"]) - parse_ts(task["started_at"])


class Heartbeats(fqtest.TestCase):

    def test_no_heartbeat_is_lost(self):
        t = self.d.submit(fq("sleep", 60), heartbeat_timeout_ms=1000,
                          max_attempts=1)
        t = self.d.wait_final(t["id"])
        self.assertEqual((t["state"], t["outcome"]),
                         ("failed", "heartbeat_lost"), json.dumps(t))
        self.assertGreaterEqual(run_secs(t), 0.99)
        self.assertLessEqual(run_secs(t), 1.0 + SLACK)
        rc, _, err = self.d.cli("wait", t["id"])
        self.assertEqual(rc, 124, err)
        stops = self.d.task_events(t["id"], "task.stopping")
        self.assertEqual([(e.get("reason"), e.get("signal"), e["level"])
                          for e in stops],
                         [("heartbeat_lost", "SIGTERM", "warn")],
                         json.dumps(stops))

    def test_heartbeats_reset_the_clock(self):
        t = self.d.submit(fq("hbscript", "beat", "@0.5", "beat", "@0.5",
                             "beat", "@60"),
                          heartbeat_timeout_ms=1500, max_attempts=1)
        t = self.d.wait_final(t["id"])
        self.assertEqual(t["outcome"], "heartbeat_lost", json.dumps(t))
        self.assertIsNotNone(t["last_heartbeat_at"])
        # Lost one timeout after the last beat, which came 1 s in or later.
        self.assertGreaterEqual(run_secs(t), 2.45)
        self.assertLessEqual(run_secs(t), 2.5 + SLACK)
        self.assertAlmostEqual(parse_ts(t["finished_at"]) -
                               parse_ts(t["last_heartbeat_at"]), 1.5,
                               delta=SLACK)

    def test_heartbeating_task_survives(self):
        t = self.d.submit(fq("heartbeat", 200, 20),
                          heartbeat_timeout_ms=1000, max_attempts=1)
        t = self.d.wait_final(t["id"])
        self.assertEqual((t["state"], t["outcome"]),
                         ("succeeded", "success"), json.dumps(t))
        self.assertGreaterEqual(run_secs(t), 3.0, "ran past 3 timeouts")
        self.assertIsNotNone(t["last_heartbeat_at"])

    def test_heartbeats_waiting_when_forkqd_was_held_up_count(self):
        # forkqd stopped for twice the timeout while the task goes on
        # beating: when it resumes, the due timer and the beats waiting in
        # the pipe come together, and the beats were first.
        t = self.d.submit(fq("heartbeat", 100, 60),
                          heartbeat_timeout_ms=1000, max_attempts=1)
        wait_for(lambda: self.d.get(t["id"])["last_heartbeat_at"]
                 is not None, what="a first heartbeat")
        self.d.signal(signal.SIGSTOP)
        try:
            time.sleep(2.0)
        finally:
            self.d.signal(signal.SIGCONT)
        t = self.d.wait_final(t["id"])
        self.assertEqual((t["state"], t["outcome"]),
                         ("succeeded", "success"), json.dumps(t))
        self.assertEqual(self.d.task_events(t["id"], "task.stopping"), [])

    def test_a_timeout_shorter_than_the_pipes_rest(self):
        # forkqd reads heartbeat pipes in rounds, a rest apart while lines
        # keep coming (rounds.c): a deadline shorter than the rest
        # finds its task's lines unread, and must read them before it
        # judges. The beats are ten to a timeout.
        d = self.start_daemon(extra_args=["--heartbeat-rest", "2s"])
        t = d.submit(fq("heartbeat", 100, 40),
                     heartbeat_timeout_ms=1000, max_attempts=1)
        t = d.wait_final(t["id"])
        self.assertEqual((t["state"], t["outcome"]),
                         ("succeeded", "success"), json.dumps(t))
        self.assertEqual(d.task_events(t["id"], "task.stopping"), [])

    def test_no_rest_reads_each_line(self):
        # --heartbeat-rest 0: the pipes are watched all the time; the
        # lines are all read and the deadline holds.
        d = self.start_daemon(extra_args=["--heartbeat-rest", "0"])
        t = d.submit(fq("heartbeat", 50, 30, "progress"),
                     heartbeat_timeout_ms=1000, max_attempts=1)
        t = d.wait_final(t["id"])
        self.assertEqual((t["state"], t["outcome"], t["progress"]),
                         ("succeeded", "success", 100), json.dumps(t))
        lost = d.submit(fq("sleep", 60), heartbeat_timeout_ms=500,
                        max_attempts=1)
        self.assertEqual(d.wait_final(lost["id"])["outcome"],
                         "heartbeat_lost")

    def test_a_chatty_task_is_not_held_to_a_chunk_per_round(self):
        # 1 MB of lines as fast as the task can write them. Read a 4 KiB
        # chunk per round, 0.25 s apart, they would hold the task in
        # write(2) for a minute; a round empties the pipe, so it takes
        # seconds.
        t = self.d.submit(fq("heartbeat", 0, 5000, "x" * 200),
                          max_attempts=1)
        t = self.d.wait_final(t["id"])
        self.assertEqual((t["state"], t["outcome"]),
                         ("succeeded", "success"), json.dumps(t))
        self.assertLess(run_secs(t), 30.0, json.dumps(t))

    def test_malformed_lines_are_heartbeats(self):
        items = []
        for i in range(12):
            items += [("progress 101", "progress -1", "progress abc",
                       "garbage \x01 line", "progress")[i % 5], "@0.3"]
        t = self.d.submit(fq("hbscript", *items),
                          heartbeat_timeout_ms=1500, max_attempts=1)
        t = self.d.wait_final(t["id"])
        self.assertEqual((t["state"], t["outcome"]),
                         ("succeeded", "success"), json.dumps(t))
        self.assertIsNone(t["progress"],
                          "no malformed line sets progress")

    def test_closing_the_fd_is_allowed(self):
        t = self.d.submit(fq("hbscript", "%close", "@1.5"))
        t = self.d.wait_final(t["id"])
        self.assertEqual((t["state"], t["outcome"]),
                         ("succeeded", "success"), json.dumps(t))
        self.assertGreaterEqual(run_secs(t), 1.45,
                                "the attempt ended when the task closed "
                                "its heartbeat fd, not when it exited")

    def test_last_line_before_exit_is_kept(self):
        # Written just before the process exits: the line is still read.
        ids = [self.d.submit(fq("hbscript", "progress 40 last words"))["id"]
               for _ in range(10)]
        got = []
        for id in ids:
            t = self.d.wait_final(id)
            got.append((t["state"], t["progress"], t["progress_message"]))
        self.assertEqual(got, [("succeeded", 40, "last words")] * 10)

    def test_rapid_progress_live_and_in_the_database(self):
        # Lines faster than forkqd writes progress to the store: answers
        # show the newest at once, every line is an event, and the
        # database catches up while the task still runs.
        go = self.path("go")
        lines = ["progress %d step %d" % (p, p) for p in range(1, 31)]
        t = self.d.submit(fq("hbscript", *lines, "?" + go))
        id = t["id"]
        t = wait_for(lambda: (lambda x: x if x["progress"] == 30 else None)(
            self.d.get(id)), what="progress 30")
        self.assertEqual((t["state"], t["progress_message"]),
                         ("running", "step 30"))
        self.assertEqual(self.d.list(state="running")[0]["progress"], 30)

        def in_db():
            db = self.d.db_connect()
            try:
                row = db.execute("SELECT progress, progress_message FROM"
                                 " tasks WHERE id = ?", (id,)).fetchone()
            finally:
                db.close()
            return row if row == (30, "step 30") else None
        wait_for(in_db, what="progress 30 in the database")
        self.assertEqual(self.d.get(id)["state"], "running")
        self.touch(go)
        t = self.d.wait_final(id)
        self.assertEqual((t["state"], t["progress"], t["progress_message"]),
                         ("succeeded", 30, "step 30"))
        self.assertEqual([e["progress"] for e in
                          self.d.task_events(id, "task.progress")],
                         list(range(1, 31)))

    def test_a_flood_of_progress_lines_is_coalesced_in_events(self):
        # One event a line made a task writing progress in a loop fill the
        # log at 100 MB/s. A burst goes out line by line, then 20 a
        # second, the newest of what came meanwhile; the last always shows.
        go = self.path("go")
        n = 300
        lines = ["progress %d m%d" % (i % 101, i) for i in range(n)]
        t0 = time.monotonic()
        id = self.d.submit(fq("hbscript", *lines, "?" + go))["id"]
        last = "m%d" % (n - 1)
        self.d.wait_event(lambda e: e.get("event") == "task.progress" and
                          e.get("task") == id and e["message"] == last,
                          what="the last line's event")
        evs = self.d.task_events(id, "task.progress")
        allowed = 100 + 20 * (time.monotonic() - t0) + 1
        self.assertLessEqual(len(evs), allowed, "events for %d lines" % n)
        self.assertEqual([e["message"] for e in evs[:100]],
                         ["m%d" % i for i in range(100)],
                         "the burst goes out line by line")
        self.touch(go)
        self.assertEqual(self.d.wait_final(id)["progress"], (n - 1) % 101)

    def test_progress(self):
        go1, go2, mark, go3 = (self.path(n) for n in ("go1", "go2",
                                                      "mark", "go3"))
        t = self.d.submit(fq("hbscript", "progress 40 indexing files",
                             "?" + go1, "progress 70", "?" + go2,
                             "progress 101", "progress -3", "progress x y",
                             "progress 50.5 half", "progress +5",
                             "!" + mark, "?" + go3))
        id = t["id"]
        t = wait_for(lambda: (lambda x: x if x["progress"] == 40 else None)(
            self.d.get(id)), what="progress 40")
        self.assertEqual(t["progress_message"], "indexing files")
        self.assertEqual(t["state"], "running")
        ev = self.d.wait_event(lambda e: e.get("event") == "task.progress"
                               and e.get("task") == id,
                               what="task.progress event")
        self.assertEqual(ev["progress"], 40)
        self.assertEqual(ev["message"], "indexing files")
        self.assertEqual((ev.get("attempt"), ev.get("pid"), ev["level"]),
                         (1, t["pid"], "info"))
        self.touch(go1)
        t = wait_for(lambda: (lambda x: x if x["progress"] == 70 else None)(
            self.d.get(id)), what="progress 70")
        self.assertIsNone(t["progress_message"],
                          "`progress N` clears the message")
        self.touch(go2)
        wait_for(lambda: os.path.exists(mark), what="malformed lines sent")
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            t = self.d.get(id)
            self.assertEqual((t["progress"], t["progress_message"]),
                             (70, None), "malformed progress changed it")
            time.sleep(0.05)
        self.touch(go3)
        t = self.d.wait_final(id)
        self.assertEqual(t["state"], "succeeded")
        self.assertEqual(t["progress"], 70, "progress stays after the end")
        evs = self.d.task_events(id, "task.progress")
        self.assertEqual([(e["progress"], e["message"]) for e in evs],
                         [(40, "indexing files"), (70, None)])


class Stopping(fqtest.TestCase):

    DAEMON_ARGS = ("--kill-grace", "1s")

    def test_timeout(self):
        rc, out, err = self.d.cli("submit", "--timeout", "1s", "--retries",
                                  "0", "--wait", "--", *fq("sleep", 60))
        self.assertEqual(rc, 124, err)
        t = self.d.get(int(out.split()[0]))
        self.assertEqual((t["state"], t["outcome"]), ("failed", "timeout"),
                         json.dumps(t))
        self.assertGreaterEqual(run_secs(t), 0.99)
        self.assertLessEqual(run_secs(t), 1.0 + SLACK)
        self.assertFalse(pid_alive(t["attempts"][0]["pid"]))

    def test_default_timeout(self):
        d = self.start_daemon(extra_args=["--default-timeout", "1s",
                                          "--kill-grace", "1s"])
        t = d.submit(fq("sleep", 60), max_attempts=1)
        self.assertEqual(t["timeout_ms"], 1000,
                         "--default-timeout fills timeout_ms at submit")
        t = d.wait_final(t["id"])
        self.assertEqual(t["outcome"], "timeout", json.dumps(t))
        t2 = d.submit(fq("sleep", 0), timeout_ms=5000)
        self.assertEqual(t2["timeout_ms"], 5000)

    def test_tasks_run_after_one_whose_leftovers_needed_sigkill(self):
        """With a cgroup, the SIGKILL is cgroup.kill; on some kernels every
        child clone3 made in that cgroup afterwards was killed at once, so
        with one worker (the same pooled cgroup) every next task died."""
        d = self.start_daemon(workers=1, extra_args=self.DAEMON_ARGS)
        # Ignored before the fork: sleep ignores SIGTERM from its start.
        t = d.submit(["sh", "-c", 'trap "" TERM; sleep 300 & exit 0'],
                     max_attempts=1)
        t = d.wait_final(t["id"])
        stops = d.task_events(t["id"], "task.stopping")
        self.assertEqual([e.get("signal") for e in stops],
                         ["SIGTERM", "SIGKILL"], json.dumps(stops))
        for _ in range(3):
            u = d.wait_final(d.submit(fq("exit", 0), max_attempts=1)["id"])
            self.assertEqual((u["state"], u["attempts"][0]["signal"]),
                             ("succeeded", None), json.dumps(u))

    def test_stopped_task_gets_sigterm(self):
        """A task stopped (here by SIGSTOP; with a cgroup, where its group
        is not orphaned, SIGTSTP does it too) is continued after the SIGTERM
        of a cancel, so the SIGTERM ends it: no SIGKILL after the kill
        grace, made long so that a slow machine cannot reach it."""
        d = self.start_daemon(extra_args=tuple(self.DAEMON_ARGS) +
                              ("--kill-grace", "10m"))
        t = d.submit(fq("signal", str(int(signal.SIGSTOP))), max_attempts=1)
        pid = d.wait_running_pid(t["id"])["pid"]
        self.track_pid(pid)
        wait_for(lambda: (fqtest.proc_stat(pid) or "?")[0] == "T",
                 what="the task to stop itself")
        d.ok({"op": "cancel", "id": t["id"]})
        t = d.wait_final(t["id"])
        self.assertEqual(t["state"], "canceled", json.dumps(t))
        self.assertEqual(t["attempts"][0]["signal"], "SIGTERM",
                         json.dumps(t))
        stops = d.task_events(t["id"], "task.stopping")
        self.assertEqual([e.get("signal") for e in stops], ["SIGTERM"],
                         json.dumps(stops))

    def test_sigterm_ignored_then_sigkill_after_grace(self):
        ready = self.path("ready")
        t = self.d.submit(fq("ignore-term", 60, ready), timeout_ms=2000,
                          max_attempts=1)
        run = self.d.wait_running_pid(t["id"])
        self.track_pid(run["pid"])
        wait_for(lambda: os.path.exists(ready), what="task ready")
        t = self.d.wait_final(t["id"])
        self.assertEqual((t["state"], t["outcome"]), ("failed", "timeout"),
                         json.dumps(t))
        self.assertFalse(pid_alive(run["pid"]))
        stops = self.d.task_events(t["id"], "task.stopping")
        self.assertEqual([(e.get("reason"), e.get("signal")) for e in stops],
                         [("timeout", "SIGTERM"), ("timeout", "SIGKILL")],
                         json.dumps(stops))
        for e in stops:
            self.assertEqual(e["level"], "warn")
            self.assertEqual(e.get("attempt"), 1)
            self.assertEqual(e.get("pid"), run["pid"])
        gap = parse_ts(stops[1]["ts"]) - parse_ts(stops[0]["ts"])
        self.assertGreaterEqual(gap, 0.99, "SIGKILL came before kill-grace")
        self.assertLessEqual(gap, 1.0 + SLACK)
        self.assertGreaterEqual(run_secs(t), 2.9)

    def test_cancel_during_a_timeout_stop_wins(self):
        # The task ignores SIGTERM, so its timeout stop waits out the
        # kill-grace; a cancel then must end it canceled, not retried.
        ready = self.path("ready")
        t = self.d.submit(fq("ignore-term", 60, ready), timeout_ms=500,
                          max_attempts=3)
        run = self.d.wait_running_pid(t["id"])
        self.track_pid(run["pid"])
        self.d.wait_event(lambda e: e.get("event") == "task.stopping" and
                          e.get("task") == t["id"], what="the timeout stop")
        self.d.ok({"op": "cancel", "id": t["id"]})
        t = self.d.wait_final(t["id"])
        self.assertEqual((t["state"], t["outcome"]),
                         ("canceled", "canceled"), json.dumps(t))
        self.assertEqual([a["outcome"] for a in t["attempts"]], ["canceled"])

    def check_grandchild_gone(self, parent_secs, timeout_ms, outcome,
                              state, reason, how="grandchild", **fields):
        pidfile = self.path("gc.pid")
        t = self.d.submit(fq(how, pidfile, 600, parent_secs),
                          timeout_ms=timeout_ms, max_attempts=1, **fields)
        gc = self.read_pidfile(pidfile)
        st = fqtest.proc_stat(gc)
        gc_start = st[4] if st is not None else None
        t = self.d.wait_final(t["id"])
        self.assertEqual((t["state"], t["outcome"]), (state, outcome),
                         json.dumps(t))
        if gc_start is not None:
            wait_gone(gc, timeout=2, starttime=gc_start,
                      what="the setsid'd grandchild %d to be gone once the "
                      "attempt has ended" % gc)
        self.assertFalse(pid_alive(t["attempts"][0]["pid"]))
        reasons = {e.get("reason")
                   for e in self.d.task_events(t["id"], "task.stopping")}
        self.assertIn(reason, reasons)

    def test_grandchild_killed_on_timeout(self):
        self.check_grandchild_gone(600, 1500, "timeout", "failed",
                                   "timeout")

    def test_grandchild_killed_when_task_exits(self):
        self.check_grandchild_gone(0, 0, "success", "succeeded", "exited")

    def test_child_left_in_the_session_alone_is_killed(self):
        # It left the task's process group and environment but not its
        # session: without a cgroup, the task's group emptied and forkqd
        # stopped matching by session too, so it outlived the task.
        self.check_grandchild_gone(0, 0, "success", "succeeded", "exited",
                                   how="groupchild")

    def test_grandchild_killed_behind_a_large_environment(self):
        # The grandchild is known by FORKQ_TASK_ID and FORKQ_SOCKET in its
        # environment, which come after the task's own variables: 70 KB of
        # them once hid the two from a read of the first 64 KiB.
        self.check_grandchild_gone(0, 0, "success", "succeeded", "exited",
                                   env={"BIG": "x" * 70000})

    def test_cancel_queued(self):
        t = self.d.submit(fq("exit", 0), delay_ms=3600000)
        ans = self.d.ok({"op": "cancel", "id": t["id"]})
        self.assertEqual(ans["task"]["state"], "canceled")
        t = self.d.get(t["id"])
        self.assertEqual((t["state"], t["attempt"], t["attempts"]),
                         ("canceled", 0, []))
        ev = self.d.wait_event(lambda e: e.get("event") == "task.canceled"
                               and e.get("task") == t["id"])
        self.assertEqual(ev["attempts"], 0)
        rc, _, err = self.d.cli("wait", t["id"])
        self.assertEqual(rc, 1, err)

    def test_cancel_running(self):
        t = self.d.submit(fq("sleep", 60))
        run = self.d.wait_running_pid(t["id"])
        t0 = time.monotonic()
        ans = self.d.ok({"op": "cancel", "id": t["id"]})
        self.assertLess(time.monotonic() - t0, SLACK)
        self.assertIn(ans["task"]["state"], ("running", "canceled"))
        t = self.d.wait_final(t["id"])
        self.assertEqual((t["state"], t["outcome"], t["attempt"]),
                         ("canceled", "canceled", 1), json.dumps(t))
        self.assertEqual(t["attempts"][-1]["outcome"], "canceled")
        self.assertFalse(pid_alive(run["pid"]))
        stops = self.d.task_events(t["id"], "task.stopping")
        self.assertEqual((stops[0].get("reason"), stops[0].get("signal")),
                         ("cancel", "SIGTERM"), json.dumps(stops))
        time.sleep(1.5)
        self.assertEqual(self.d.get(t["id"])["attempt"], 1,
                         "a canceled task is not retried")

    def test_cancel_final_is_conflict(self):
        t = self.d.submit(fq("exit", 0))
        self.d.wait_final(t["id"])
        check_error(self, self.d.request({"op": "cancel", "id": t["id"]}),
                    "conflict")
        c = self.d.submit(fq("exit", 0), delay_ms=3600000)
        self.d.ok({"op": "cancel", "id": c["id"]})
        check_error(self, self.d.request({"op": "cancel", "id": c["id"]}),
                    "conflict")

    def test_retry_of_unfinished_or_succeeded_is_conflict(self):
        q = self.d.submit(fq("exit", 0), delay_ms=3600000)
        check_error(self, self.d.request({"op": "retry", "id": q["id"]}),
                    "conflict")
        r = self.d.submit(fq("sleep", 60))
        self.d.wait_running_pid(r["id"])
        check_error(self, self.d.request({"op": "retry", "id": r["id"]}),
                    "conflict")
        self.d.ok({"op": "cancel", "id": r["id"]})
        s = self.d.submit(fq("exit", 0))
        self.d.wait_final(s["id"])
        check_error(self, self.d.request({"op": "retry", "id": s["id"]}),
                    "conflict")


class StoppingProcessTree(Stopping):
    """The same stops with cgroups off: forkqd finds what a task started
    through /proc and its subreaper (the method where no cgroup v2 subtree
    is to be had)."""
    DAEMON_ARGS = ("--kill-grace", "1s", "--cgroup", "off")

    def test_containment_reported(self):
        self.assertEqual(self.d.status()["containment"], "process-tree")


def ns_members(ns):
    """Host pids of the processes in pid namespace ns (a readlink)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink("/proc/%s/ns/pid" % name) == ns:
                    out.append(int(name))
            except OSError:
                pass
    return out


class PidNamespace(fqtest.TestCase):
    """forkqd in a pid namespace of its own, where a task may move the
    namespace's last pid (ns_last_pid): the next task started gets the pid
    after it, as nothing else forks there."""

    NS_ARGS = ("--kill-grace", "1s", "--cgroup", "off")

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest("needs root, for a pid namespace")
        probe = subprocess.run(["unshare", "-pf", "--mount-proc", "true"],
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        if probe.returncode != 0:
            self.skipTest("unshare -pf --mount-proc is refused here")
        self.nsd = self.start_daemon(extra_args=self.NS_ARGS, start=False)
        self.nsd.wrapper = ["unshare", "-pf", "--kill-child", "--mount-proc"]
        self.nsd.start()
        kids = wait_for(lambda: fqtest.children_of(self.nsd.pid),
                        what="forkqd under unshare")
        self.ns = os.readlink("/proc/%d/ns/pid" % kids[0])
        self.forkqd_pid = kids[0]
        self.addCleanup(self.stop_ns)

    def stop_ns(self):
        # unshare --fork ignores SIGTERM: forkqd gets it, and unshare ends
        # with it (the namespace, and anything left in it, with them).
        self.nsd.expect_alive = False
        if self.nsd.alive():
            os.kill(self.forkqd_pid, signal.SIGTERM)
            self.nsd.wait_exit()

    def run_and_check_nothing_left(self, script):
        t = self.nsd.submit(["/bin/sh", "-c", script], max_attempts=1)
        t = self.nsd.wait_final(t["id"])
        self.assertEqual(t["state"], "succeeded", json.dumps(t))
        wait_for(lambda: ns_members(self.ns) == [self.forkqd_pid],
                 what="nothing but forkqd left in its namespace (%r)"
                 % [(p, fqtest.proc_stat(p)) for p in ns_members(self.ns)])

    def set_last_pid(self, pid):
        """The next task started gets pid + 1."""
        t = self.nsd.submit(["/bin/sh", "-c",
                             "echo %d > /proc/sys/kernel/ns_last_pid" % pid],
                            max_attempts=1)
        self.assertEqual(self.nsd.wait_final(t["id"])["state"], "succeeded")


    # The pids cannot go all the way round in a few ms (proctree.c assumes
    # no more than 200 forks a ms, and half the pid space free): a test
    # that moves the last pid back acts as if they did, so the tasks it
    # looks at must be as old as one that saw them wrap would be, 10.5 s
    # for the 4,194,304 pids of a new namespace here.

    def wrap_time(self):
        out = self.path("pid_max")
        t = self.nsd.submit(["/bin/sh", "-c",
                             "cat /proc/sys/kernel/pid_max > " + out],
                            max_attempts=1)
        self.assertEqual(self.nsd.wait_final(t["id"])["state"], "succeeded")
        with open(out) as f:
            return int(f.read()) / 2 / 200 / 1000 + 0.2


class PidsWrapping(PidNamespace):
    """What a task leaves must be found when the pids wrap around, with
    cgroups off."""

    def test_child_below_the_main_pid_after_a_wrap(self):
        # The task's main process is 3001; its background child, made
        # after the pids "wrapped", is 11; by the task's end the last pid
        # is past the main one again.
        secs = self.wrap_time()
        self.set_last_pid(3000)
        self.run_and_check_nothing_left(
            "echo 10 > /proc/sys/kernel/ns_last_pid; sleep 300 & "
            "echo 5000 > /proc/sys/kernel/ns_last_pid; sleep %.1f" % secs)

    def test_daemon_on_a_pid_forkqd_spawned_before_the_wrap(self):
        # Tasks take pids 6001-6006; the pids "wrap"; the next task is
        # 6001 again and its setsid'd child 6002, a number forkqd's table
        # of its own spawns still holds from before.
        self.set_last_pid(6000)
        for _ in range(6):
            t = self.nsd.submit(["/bin/true"], max_attempts=1)
            self.nsd.wait_final(t["id"])
        self.set_last_pid(6000)
        self.run_and_check_nothing_left("setsid sleep 302 & sleep 0.01")


class PidReuse(PidNamespace):
    """A task's pid is free again once its main process is reaped, while
    forkqd may still be stopping what the task left (here for the whole
    kill grace): the next task may get it."""

    NS_ARGS = ("--kill-grace", "10m", "--cgroup", "off")

    def test_the_next_task_on_a_stopping_ones_pid(self):
        # Once, the second task was not recorded in forkqd's table by pid
        # (the first held the pid there): when it exited, its end was taken
        # for the first one's, and it stayed running for good.
        secs = self.wrap_time()
        ready = self.path("ready")
        a = self.nsd.submit(["/bin/sh", "-c",
                             'setsid %s </dev/null >/dev/null 2>&1 & '
                             'while [ ! -e %s ]; do sleep 0.01; done'
                             % (" ".join(fq("ignore-term", 600, ready)),
                                ready)], max_attempts=1)
        self.nsd.wait_event(lambda e: e.get("event") == "task.stopping" and
                            e.get("task") == a["id"],
                            what="the stop of what the first task left")
        pid = self.nsd.get(a["id"])["attempts"][0]["pid"]
        # Not a wait for an event: the pids could not have wrapped sooner.
        time.sleep(secs)
        self.set_last_pid(pid - 1)
        b = self.nsd.submit(fq("exit", 0), max_attempts=1)
        b = self.nsd.wait_final(b["id"])
        self.assertEqual(b["attempts"][0]["pid"], pid, json.dumps(b))
        self.assertEqual((b["state"], b["attempts"][0]["outcome"]),
                         ("succeeded", "success"), json.dumps(b))
        self.assertEqual(self.nsd.get(a["id"])["state"], "running",
                         "the first one is still stopping what it left")
        for p in ns_members(self.ns):
            if p != self.forkqd_pid:
                os.kill(p, signal.SIGKILL)
        a = self.nsd.wait_final(a["id"])
        self.assertEqual((a["state"], a["attempts"][0]["outcome"]),
                         ("succeeded", "success"), json.dumps(a))


# Shell: $cg is the task's own cgroup directory.
OWN_CGROUP_SH = ('mnt=$(awk \'$3 == "cgroup2" {print $2; exit}\' '
                 '/proc/self/mounts); '
                 'cg="$mnt$(sed -n "s/^0:://p" /proc/self/cgroup)"; ')


def cgroup_base_of(d):
    """The directory under which forkqd d makes its tasks' cgroups."""
    with open("/proc/%d/cgroup" % d.pid) as f:
        rel = next(line.strip()[3:] for line in f if line.startswith("0::"))
    with open("/proc/self/mountinfo") as f:
        mnt = next(line.split()[4] for line in f if " - cgroup2 " in line)
    st = os.stat(d.dir)
    return os.path.join(mnt + (rel if rel != "/" else ""),
                        "forkq.%x.%x" % (st.st_dev, st.st_ino))


class Containment(fqtest.TestCase):

    def test_cgroup_per_attempt_where_possible(self):
        d = self.start_daemon(extra_args=("-v",))
        st = d.status()
        self.assertIn(st["containment"], ("cgroup", "process-tree"))
        if st["containment"] != "cgroup":
            self.skipTest("no usable cgroup v2 here (needs root and a "
                          "cgroup2 mount)")
        t = d.wait_final(d.submit(
            ["sh", "-c", "cat /proc/self/cgroup"])["id"])
        out = d.output(t["id"]).decode()
        self.assertRegex(out, r"(?m)^0::.*/forkq\.[0-9a-f]+\.[0-9a-f]+/[0-9]+$",
                         out)
        if built_with_clone3():
            self.assertIn("tasks are made in their cgroup by clone3",
                          d.stderr())

    def test_a_killed_cgroup_with_a_child_cgroup_is_not_reused(self):
        # The task makes a cgroup under its own, so the rmdir of its
        # (killed) cgroup failed; the next forkqd took the leftover
        # directory by its number, and every child clone3 made there
        # was SIGKILLed at once.
        d = self.start_daemon(workers=1, extra_args=("--kill-grace", "1s"))
        if d.status()["containment"] != "cgroup":
            self.skipTest("no usable cgroup v2 here")
        # Its name starting with ".", .sub was once passed over as "."
        # or "..", and left its parent in place.
        script = (OWN_CGROUP_SH + 'mkdir "$cg/sub" "$cg/.sub" || exit 9; '
                  'trap "" TERM; sleep 300')
        t = d.wait_final(d.submit(["sh", "-c", script], timeout_ms=1000,
                                  max_attempts=1)["id"])
        self.assertEqual(t["outcome"], "timeout", json.dumps(t))
        for restart in (False, True):
            if restart:
                d.stop()
                d.start()
            u = d.wait_final(d.submit(fq("exit", 0), max_attempts=1)["id"])
            self.assertEqual((u["state"], u["attempts"][0]["signal"]),
                             ("succeeded", None), json.dumps(u))
        base = cgroup_base_of(d)
        self.assertTrue(os.path.isdir(base), base)
        self.assertEqual(d.stop(), 0)
        self.assertFalse(os.path.exists(base),
                         "forkqd's cgroups are all gone at its exit")

    def test_cgroups_a_task_made_under_its_own_go_with_it(self):
        # A task that made a cgroup under its own and ended well: its
        # cgroup went back to the pool with the new one in it, for the
        # next task, and forkqd's rmdir at exit failed, leaving its
        # cgroups behind.
        d = self.start_daemon(workers=1)
        if d.status()["containment"] != "cgroup":
            self.skipTest("no usable cgroup v2 here")
        t = d.wait_final(d.submit(["sh", "-c", OWN_CGROUP_SH +
                                   'mkdir "$cg/sub" || exit 9; echo "$cg"'],
                                  max_attempts=1)["id"])
        self.assertEqual(t["state"], "succeeded", json.dumps(t))
        made = d.output(t["id"]).decode().strip()
        self.assertFalse(os.path.exists(os.path.join(made, "sub")),
                         "the task's cgroup went with the one it made")
        u = d.wait_final(d.submit(["sh", "-c", OWN_CGROUP_SH +
                                   'ls "$cg" | grep -x sub; exit 0'],
                                  max_attempts=1)["id"])
        self.assertEqual((u["state"], d.output(u["id"])), ("succeeded", b""),
                         "the next task's cgroup has no sub")
        base = cgroup_base_of(d)
        self.assertEqual(d.stop(), 0)
        self.assertFalse(os.path.exists(base),
                         "forkqd's cgroups are all gone at its exit")

    def test_a_pooled_cgroup_removed_by_hand_is_not_reused(self):
        # An empty cgroup waits in a pool for the next task; removed from
        # under forkqd meanwhile, the next task failed to join it and
        # ended exec_failed, without a retry.
        d = self.start_daemon(workers=1)
        if d.status()["containment"] != "cgroup":
            self.skipTest("no usable cgroup v2 here")
        t = d.wait_final(d.submit(["sh", "-c", OWN_CGROUP_SH + 'echo "$cg"'],
                                  max_attempts=1)["id"])
        self.assertEqual(t["state"], "succeeded", json.dumps(t))
        os.rmdir(d.output(t["id"]).decode().strip())
        u = d.wait_final(d.submit(fq("exit", 0), max_attempts=1)["id"])
        self.assertEqual(u["state"], "succeeded", json.dumps(u))

    def test_a_task_that_kills_or_freezes_its_cgroup_spoils_no_other(self):
        # A root task may write its own cgroup.kill or cgroup.freeze: the
        # cgroup went back to the pool, and every task after it was
        # SIGKILLed at its start (the kill) or never ran (the freeze).
        d = self.start_daemon(workers=1, extra_args=("--kill-grace", "1s"))
        if d.status()["containment"] != "cgroup":
            self.skipTest("no usable cgroup v2 here")
        for what, script, timeout_ms in (
                ("kill", OWN_CGROUP_SH + 'echo 1 > "$cg/cgroup.kill"; exit 0',
                 0),
                ("freeze", OWN_CGROUP_SH +
                 'echo 1 > "$cg/cgroup.freeze"; exit 3',
                 1000)):
            t = d.wait_final(d.submit(["sh", "-c", script],
                                      timeout_ms=timeout_ms,
                                      max_attempts=1)["id"])
            self.assertEqual(t["state"], "failed", json.dumps(t))
            for _ in range(2):
                u = d.wait_final(d.submit(fq("exit", 0), timeout_ms=20000,
                                          max_attempts=1)["id"])
                self.assertEqual((u["state"], u["attempts"][0]["signal"]),
                                 ("succeeded", None),
                                 "after the %s: %s" % (what, json.dumps(u)))

    # Each of the two ways to contain a task, and what it says.
    MODES = ((("--cgroup", "off"), "process-tree"), ((), None))

    def open_terminal(self):
        """A new pseudo-terminal, closed at cleanup; returns its slave."""
        master, slave = os.openpty()
        self.addCleanup(os.close, master)
        self.addCleanup(close_quietly, slave)
        return slave

    def test_session_by_containment(self):
        """A task leads its own process group either way. It leads its own
        session only without a cgroup, where forkqd finds what it left by
        session (proctree.c); with one it stays in forkqd's, as a session
        per task would be a scheduler group (autogroup) per task."""
        for args, mode in self.MODES:
            d = self.start_daemon(extra_args=args)
            containment = d.status()["containment"]
            if mode is not None:
                self.assertEqual(containment, mode)
            t = d.submit(fq("sleep", 30))
            pid = d.wait_running_pid(t["id"])["pid"]
            # Running, to forkqd, from its clone: the group comes after.
            st = wait_for(lambda: fqtest.leader_stat(pid),
                          what="task %d to lead its group" % pid)
            if containment == "cgroup":
                self.assertEqual(st[3], fqtest.proc_stat(d.pid)[3],
                                 "with a cgroup: forkqd's session")
            else:
                self.assertEqual(st[3], pid, "without: its own session")
            d.ok({"op": "cancel", "id": t["id"]})
            d.wait_final(t["id"])

    def test_no_controlling_terminal(self):
        """forkqd started on a terminal does not lend it to its tasks, in
        its session or in their own: /dev/tty does not open in a task."""
        for args, mode in self.MODES:
            slave = self.open_terminal()
            d = self.start_daemon(start=False, extra_args=args)
            d.preexec = lambda slave=slave: take_terminal(slave)
            d.start()
            containment = d.status()["containment"]
            self.assertNotEqual(fqtest.tty_nr(d.pid), 0,
                                "forkqd has a terminal")
            t = d.wait_final(d.submit(fq("tty"))["id"])
            self.assertEqual(t["state"], "succeeded", t)
            self.assertEqual(d.output(t["id"]).decode(),
                             "no tty: errno %d\n" % errno.ENXIO,
                             "containment %s" % containment)
            self.assertNotEqual(fqtest.tty_nr(d.pid), 0, "forkqd keeps it")
            d.stop()
        if containment != "cgroup":
            self.skipTest("no usable cgroup v2 here: a task in forkqd's "
                          "session was not tried")

    def test_terminal_not_dropped_means_own_session(self):
        """Where /dev/tty cannot take forkqd's terminal away from a task
        (here it is /dev/null, in a mount namespace of forkqd's own), the
        task leads a session of its own instead, which has no terminal."""
        if not can_unshare_mounts():
            self.skipTest("no mount namespace to be had (needs root with "
                          "CAP_SYS_ADMIN)")
        slave = self.open_terminal()
        libc = ctypes.CDLL(None, use_errno=True)

        def on_terminal_without_dev_tty():
            take_terminal(slave)
            if libc.unshare(CLONE_NEWNS) != 0 or \
                    libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE,
                               None) != 0 or \
                    libc.mount(b"/dev/null", b"/dev/tty", None, MS_BIND,
                               None) != 0:
                raise OSError(ctypes.get_errno(), "/dev/tty as /dev/null")
        d = self.start_daemon(start=False)
        d.preexec = on_terminal_without_dev_tty
        d.start()
        if d.status()["containment"] != "cgroup":
            self.skipTest("no usable cgroup v2 here: every task has a "
                          "session of its own anyway")
        self.assertNotEqual(fqtest.tty_nr(d.pid), 0,
                            "forkqd has a terminal")
        t = d.submit(fq("sleep", 30))
        pid = d.wait_running_pid(t["id"])["pid"]
        st = wait_for(lambda: fqtest.leader_stat(pid),
                      what="task %d to lead its group" % pid)
        self.assertEqual(st[3], pid, "a session of its own")
        self.assertEqual(fqtest.tty_nr(pid), 0, "without the terminal")
        d.ok({"op": "cancel", "id": t["id"]})
        d.wait_final(t["id"])

    def test_cgroup_joined_where_clone3_is_refused(self):
        """Where a seccomp filter answers clone3 with ENOSYS (as container
        profiles do), forkqd says so once and its tasks join their cgroup
        by cgroup.procs instead of being made in it."""
        if not built_with_clone3():
            self.skipTest("this forkqd does not use clone3 (x86-64 "
                          "with CLONE_INTO_CGROUP in the headers)")
        d = self.start_daemon(start=False, extra_args=("-v",))
        d.preexec = clone3_refuser()
        d.start()
        if d.status()["containment"] != "cgroup":
            self.skipTest("no usable cgroup v2 here (needs root and a "
                          "cgroup2 mount)")
        for _ in range(2):
            t = d.wait_final(d.submit(
                ["sh", "-c", "cat /proc/self/cgroup"])["id"])
            self.assertEqual(t["state"], "succeeded", t)
            out = d.output(t["id"]).decode()
            self.assertRegex(
                out, r"(?m)^0::.*/forkq\.[0-9a-f]+\.[0-9a-f]+/[0-9]+$", out)
        self.assertEqual(d.stderr().count("clone3 into a cgroup"), 1,
                         d.stderr())
        self.assertNotIn("made in their cgroup by clone3", d.stderr())


# <sched.h> and <sys/mount.h>, for a private /dev/tty.
CLONE_NEWNS = 0x00020000
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18


def can_unshare_mounts():
    """Whether this process may make a mount namespace (tried in a child:
    unshare(2) would move this one)."""
    pid = os.fork()
    if pid == 0:
        rc = ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNS)
        os._exit(0 if rc == 0 else 1)
    return os.waitpid(pid, 0)[1] == 0


def take_terminal(slave):
    """In a child before its exec: a new session with the terminal slave
    as its controlling terminal."""
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)


def close_quietly(fd):
    try:
        os.close(fd)
    except OSError:
        pass


def built_with_clone3():
    """Whether forkqd makes tasks in their cgroup by clone3: on x86-64,
    when configure found CLONE_INTO_CGROUP."""
    if platform.machine() != "x86_64":
        return False
    try:
        with open(os.path.join(fqtest.BUILDDIR, "config.h")) as f:
            return "#define HAVE_DECL_CLONE_INTO_CGROUP 1" in f.read()
    except OSError:
        return False


def clone3_refuser():
    """A preexec_fn after which clone3 fails with ENOSYS in the process
    and all it starts (a seccomp filter, x86-64 only). The filter and libc
    are made ready here, before the fork: the child only calls prctl."""
    def insn(code, jt, jf, k):
        return struct.pack("=HBBI", code, jt, jf, k)
    ld_w_abs, jeq_k, ret_k = 0x20, 0x15, 0x06
    allow, errno_ret = 0x7fff0000, 0x00050000
    prog = b"".join((
        insn(ld_w_abs, 0, 0, 4),                # seccomp_data.arch
        insn(jeq_k, 1, 0, 0xc000003e),          # AUDIT_ARCH_X86_64
        insn(ret_k, 0, 0, allow),
        insn(ld_w_abs, 0, 0, 0),                # seccomp_data.nr
        insn(jeq_k, 0, 1, 435),                 # __NR_clone3
        insn(ret_k, 0, 0, errno_ret | errno.ENOSYS),
        insn(ret_k, 0, 0, allow)))
    filt = ctypes.create_string_buffer(prog, len(prog))
    fprog = ctypes.create_string_buffer(
        struct.pack("@HP", len(prog) // 8, ctypes.addressof(filt)))
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2

    def refuse():
        if prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0 or \
                prctl(pr_set_seccomp, seccomp_mode_filter, fprog, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl seccomp")
    refuse.keep = (filt, fprog)     # alive until the fork
    return refuse


class StubbornCancel(fqtest.TestCase):
    """Default kill grace (5 s): cancel answers at once, the task stays
    running until its process is gone."""

    def test_cancel_answers_at_once_task_stays_running(self):
        ready = self.path("ready")
        t = self.d.submit(fq("ignore-term", 60, ready))
        run = self.d.wait_running_pid(t["id"])
        self.track_pid(run["pid"])
        wait_for(lambda: os.path.exists(ready), what="task ready")
        t0 = time.monotonic()
        ans = self.d.ok({"op": "cancel", "id": t["id"]})
        self.assertLess(time.monotonic() - t0, 2.0 * fqtest.SCALE,
                        "cancel must answer at once")
        self.assertEqual(ans["task"]["state"], "running")
        self.assertEqual(self.d.get(t["id"])["state"], "running",
                         "running until its processes are gone")
        self.assertTrue(pid_alive(run["pid"]))
        t = self.d.wait_final(t["id"])
        took = time.monotonic() - t0
        self.assertEqual((t["state"], t["outcome"]),
                         ("canceled", "canceled"), json.dumps(t))
        self.assertGreaterEqual(took, 4.5, "SIGKILL before the 5 s grace")
        self.assertLessEqual(took, 5.0 + SLACK)
        self.assertFalse(pid_alive(run["pid"]))


if __name__ == "__main__":
    fqtest.main()
