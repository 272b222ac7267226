"""Scheduling and control (spec section 10): queues, pause/resume, holds,
dependencies, debounce, statistics, metrics, cron."""

import collections
import json
import os
import re
import sqlite3
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fqtest                                             # noqa: E402
from fqtest import check_error, fq, parse_ts, wait_for    # noqa: E402

HOUR_MS = 3600 * 1000


def read_span(path):
    with open(path) as f:
        a, b = (int(x) for x in f.read().split())
    return a / 1e9, b / 1e9


def max_overlap(spans):
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    cur = best = 0
    for _, delta in points:
        cur += delta
        best = max(best, cur)
    return best


class Queues(fqtest.TestCase):

    def assert_stays(self, d, id, state, secs=1.0):
        """A bounded negative check: the task keeps state for secs."""
        end = time.monotonic() + secs
        while time.monotonic() < end:
            self.assertEqual(d.get(id)["state"], state)
            time.sleep(0.05)

    def run_slow_and_fast(self, nfast, paused, limits=("slow=1",)):
        """3 tasks of queue slow (limit 1, or as limits say) and nfast
        others on 3 workers, submitted while starting is paused when
        paused; waits for all to succeed. Returns (the slow spans' overlap,
        everyone's overlap)."""
        args = []
        for limit in limits:
            args += ["--queue", limit]
        d = self.start_daemon(workers=3, extra_args=args)
        if paused:
            d.ok({"op": "pause"})
        slow = [d.submit(fq("span", self.path("s%d" % i), 0.5),
                         queue="slow")["id"] for i in range(3)]
        fast = [d.submit(fq("span", self.path("f%d" % i), 0.5))["id"]
                for i in range(nfast)]
        if paused:
            d.ok({"op": "resume"})
        for id in slow + fast:
            self.assertEqual(d.wait_final(id, timeout=60)["state"],
                             "succeeded")
        spans = [read_span(self.path(n)) for n in
                 ["s%d" % i for i in range(3)] +
                 ["f%d" % i for i in range(nfast)]]
        return max_overlap(spans[:3]), max_overlap(spans)

    def test_queue_limit(self):
        slow, everything = self.run_slow_and_fast(2, paused=False)
        self.assertEqual(slow, 1, "queue slow=1 ran two at once")
        self.assertGreaterEqual(everything, 2,
                                "other queues use the other workers")
        self.assertLessEqual(everything, 3)

    def test_a_later_limit_of_a_queue_replaces_the_earlier(self):
        # Both were in force, the smaller winning.
        slow, _ = self.run_slow_and_fast(0, paused=True,
                                         limits=("slow=1", "slow=2"))
        self.assertEqual(slow, 2, "queue slow=2 did not run two at once")

    def test_limits_hold_for_starts_of_one_pass(self):
        """Tasks that are all due when starting resumes start in one loop
        pass, sharing one commit: the workers and the queue limit count the
        starts of that pass too."""
        slow, everything = self.run_slow_and_fast(4, paused=True)
        self.assertEqual(slow, 1, "queue slow=1 ran two at once")
        self.assertEqual(everything, 3,
                         "not three at once, with three workers")

    def test_pause_and_resume_all(self):
        st = self.d.status()
        self.assertIs(st.get("paused"), False)
        self.assertEqual(st.get("paused_queues"), [])
        self.d.ok({"op": "pause"})
        st = self.d.status()
        self.assertIs(st["paused"], True)
        t = self.d.submit(fq("exit", 0))
        self.assert_stays(self.d, t["id"], "queued")
        # One queue is not let out of "all": said, not answered ok with
        # nothing done.
        check_error(self, self.d.request({"op": "resume", "queue":
                                          "default"}),
                    "conflict", "resume with no queue")
        self.assert_stays(self.d, t["id"], "queued", 0.2)
        self.d.ok({"op": "resume"})
        self.assertEqual(self.d.wait_final(t["id"])["state"], "succeeded")
        self.assertIs(self.d.status()["paused"], False)

    def test_star_is_no_queue_name(self):
        # "*" is all queues to pause and resume: a queue so named could
        # not be paused alone.
        check_error(self, self.d.request({"op": "submit", "argv":
                                          fq("exit", 0), "queue": "*"}),
                    "bad_request", "queue")

    def test_pause_one_queue_persists(self):
        self.d.ok({"op": "pause", "queue": "q1"})
        st = self.d.status()
        self.assertEqual((st["paused"], st["paused_queues"]),
                         (False, ["q1"]))
        held = self.d.submit(fq("exit", 0), queue="q1")
        free = self.d.submit(fq("exit", 0))
        self.assertEqual(self.d.wait_final(free["id"])["state"], "succeeded")
        self.assert_stays(self.d, held["id"], "queued", 0.5)
        self.d.restart()
        self.assertEqual(self.d.status()["paused_queues"], ["q1"],
                         "paused state persists across restarts")
        self.assert_stays(self.d, held["id"], "queued", 0.5)
        rc, out, err = self.d.cli("resume", "q1")
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.d.wait_final(held["id"])["state"],
                         "succeeded")

    def test_every_paused_queue_holds_among_many(self):
        # The dispatcher once kept only the first 64 closed queues: the
        # 65th paused queue (in sorted order) started its tasks.
        names = ["q%02d" % i for i in range(70)]
        for name in names:
            self.d.ok({"op": "pause", "queue": name})
        held = [self.d.submit(fq("exit", 0), queue=name)
                for name in names[-3:]]
        free = self.d.submit(fq("exit", 0))
        self.assertEqual(self.d.wait_final(free["id"])["state"], "succeeded")
        for t in held:
            self.assert_stays(self.d, t["id"], "queued", 0.5)

    def test_held_by_free_memory(self):
        d = self.start_daemon(extra_args=["--min-free-mem", "1T"])
        t = d.submit(fq("exit", 0))
        self.assert_stays(d, t["id"], "queued")
        held = d.status().get("held")
        self.assertIsInstance(held, str, "status says why starting is held")
        self.assertRegex(held.lower(), r"mem")
        self.assertIsNone(self.d.status().get("held"))


class Dependencies(fqtest.TestCase):

    def test_after_waits_for_success(self):
        gate = self.path("gate")
        a = self.d.submit(fq("waitfile", gate, 60))
        b = self.d.submit(fq("exit", 0), after=[a["id"]])
        self.d.wait_running_pid(a["id"])
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            self.assertEqual(self.d.get(b["id"])["state"], "queued")
            time.sleep(0.05)
        self.touch(gate)
        b = self.d.wait_final(b["id"])
        self.assertEqual(b["state"], "succeeded")
        self.assertGreaterEqual(parse_ts(b["started_at"]),
                                parse_ts(self.d.get(a["id"])["finished_at"]))

    def test_released_dependent_keeps_its_priority(self):
        """A dependent released by its dependency's end competes by
        priority for the slot that end frees: with one worker, B (priority
        100, after A) starts before C (priority 0) that waited longer."""
        d = self.start_daemon(workers=1)
        gate = self.path("gate")
        a = d.submit(fq("waitfile", gate, 60))
        b = d.submit(fq("exit", 0), after=[a["id"]], priority=100)
        c = d.submit(fq("exit", 0))
        d.wait_running_pid(a["id"])
        self.touch(gate)
        d.wait_final(b["id"])
        d.wait_final(c["id"])
        started = [e["task"] for e in d.events()
                   if e.get("event") == "task.started"]
        self.assertEqual(started, [a["id"], b["id"], c["id"]])

    def test_after_failed_cancels(self):
        a = self.d.submit(fq("exit", 1), max_attempts=1)
        b = self.d.submit(fq("exit", 0), after=[a["id"]])
        b = self.d.wait_final(b["id"])
        self.assertEqual(b["state"], "canceled", json.dumps(b))
        self.assertIn(str(a["id"]), b["error"] or "",
                      "error names the dependency")
        self.assertEqual(b["attempt"], 0)

    def prune_between(self, older, newer):
        """Prunes the final tasks that ended at or before the time
        `older` (a finished_at) but not those that ended at `newer`."""
        gap = parse_ts(newer) - parse_ts(older)
        self.assertGreater(gap, 1.0, "room to cut between")
        cut = (parse_ts(older) + parse_ts(newer)) / 2
        return self.d.ok({"op": "prune", "older_than_ms":
                          int((time.time() - cut) * 1000)})["pruned"]

    def test_a_retry_once_its_failed_dependency_is_pruned_is_canceled(self):
        """A dependent retried after its failed dependency was pruned:
        nothing shows the dependency succeeded, so the retry is canceled
        again, naming it. The pruned row was taken for a met dependency,
        and the task ran (spec 10: only after every listed task
        succeeded)."""
        if os.geteuid() != 0:
            self.skipTest("prune is root's")
        a = self.d.submit(fq("exit", 1), max_attempts=1)
        b = self.d.submit(fq("exit", 0), after=[a["id"]])
        self.assertEqual(self.d.wait_final(b["id"])["state"], "canceled")
        a = self.d.wait_final(a["id"])
        # Not a wait for an event: b must end again well after a did.
        time.sleep(max(0.0, parse_ts(a["finished_at"]) + 2 * fqtest.SCALE -
                       time.time()))
        self.d.ok({"op": "retry", "id": b["id"]})
        b = self.d.wait_final(b["id"])
        self.assertEqual(b["state"], "canceled", json.dumps(b))
        self.assertEqual(self.prune_between(a["finished_at"],
                                            b["finished_at"]), 1)
        check_error(self, self.d.request({"op": "get", "id": a["id"]}),
                    "not_found")
        self.d.ok({"op": "retry", "id": b["id"]})
        b = self.d.wait_final(b["id"])
        self.assertEqual((b["state"], b["attempt"]), ("canceled", 0),
                         json.dumps(b))
        self.assertIn("dependency task %d" % a["id"], b["error"] or "")

    def test_a_retry_of_a_dependent_that_ran_needs_no_pruned_dependency(self):
        """A dependent that ran had every dependency succeeded, for good:
        after they were pruned, a retry of it (it failed on its own) runs
        again."""
        if os.geteuid() != 0:
            self.skipTest("prune is root's")
        a = self.d.submit(fq("exit", 0))
        b = self.d.submit(["/bin/sh", "-c", "sleep %.1f; exit 3" %
                           (2 * fqtest.SCALE)], after=[a["id"]],
                          max_attempts=1)
        b = self.d.wait_final(b["id"])
        self.assertEqual((b["state"], b["attempt"]), ("failed", 1),
                         json.dumps(b))
        a = self.d.get(a["id"])
        self.assertEqual(self.prune_between(a["finished_at"],
                                            b["finished_at"]), 1)
        self.d.ok({"op": "retry", "id": b["id"]})
        b = self.d.wait_final(b["id"])
        self.assertEqual((b["state"], b["attempt"],
                          b["attempts"][-1]["outcome"]), ("failed", 2, "exit"),
                         json.dumps(b))

    def test_after_missing_is_not_found(self):
        check_error(self, self.d.request({"op": "submit",
                                          "argv": fq("exit", 0),
                                          "after": [987654]}), "not_found")

    def test_cli_after(self):
        a = self.d.submit(fq("exit", 0))
        rc, out, err = self.d.cli("submit", "--after", a["id"], "--wait",
                                  "--", *fq("exit", 0))
        self.assertEqual(rc, 0, err)

    def test_a_dependent_retried_after_its_dependency_succeeded_runs(self):
        # B was canceled while A ran; A succeeded while B was final, so
        # nothing counted A's success for B: its retry waited for good.
        gate = self.path("gate")
        a = self.d.submit(fq("waitfile", gate, 60))
        b = self.d.submit(fq("exit", 0), after=[a["id"]])
        self.d.ok({"op": "cancel", "id": b["id"]})
        self.touch(gate)
        self.assertEqual(self.d.wait_final(a["id"])["state"], "succeeded")
        self.d.ok({"op": "retry", "id": b["id"]})
        b = self.d.wait_final(b["id"])
        self.assertEqual(b["state"], "succeeded", json.dumps(b))

    def test_a_dependent_retried_follows_its_dependency_now(self):
        # A fails: B is canceled. Retried while A is still failed, B is
        # canceled again at once; once A succeeded on its own retry, B's
        # retry runs it.
        a = self.d.submit(fq("until-attempt", 2, "exit", 1), max_attempts=1)
        b = self.d.submit(fq("exit", 0), after=[a["id"]])
        first = self.d.wait_final(b["id"])
        self.assertEqual(first["state"], "canceled")
        b = self.d.ok({"op": "retry", "id": b["id"]})["task"]
        self.assertEqual(b["state"], "canceled", json.dumps(b))
        self.assertEqual(b["error"], "dependency task %d ended failed"
                         % a["id"])
        # A run that could not start adds no attempts.
        self.assertEqual(b["max_attempts"], first["max_attempts"])
        self.d.ok({"op": "retry", "id": a["id"]})
        self.assertEqual(self.d.wait_final(a["id"])["state"], "succeeded")
        self.d.ok({"op": "retry", "id": b["id"]})
        b = self.d.wait_final(b["id"])
        self.assertEqual((b["state"], b["error"]), ("succeeded", None),
                         json.dumps(b))


class Debounce(fqtest.TestCase):

    def test_burst_runs_once_after_the_last(self):
        ids, last = [], None
        for i in range(3):
            ans = self.d.ok({"op": "submit", "argv": fq("argv", "v%d" % i),
                             "unique": "deb", "debounce_ms": 1500})
            last = time.time()
            ids.append(ans["task"]["id"])
            if i:
                self.assertIs(ans.get("duplicate"), True, ans)
            time.sleep(0.3)
        self.assertEqual(len(set(ids)), 1)
        t = self.d.wait_final(ids[0])
        self.assertEqual(t["argv"], fq("argv", "v2"), "the last submit wins")
        self.assertEqual(self.d.output(t["id"]), b"v2\0")
        self.assertGreaterEqual(parse_ts(t["started_at"]), last + 1.5 - 0.1)
        self.assertEqual(len(self.d.list()), 1)

    def test_a_delay_and_a_debounce_take_the_later(self):
        """With a delay too, each submit of a burst moves the start to the
        later of the two. The first took the delay alone, the next the
        debounce alone: a second submit made an hour's delay two
        seconds."""
        hour, deb = 3600 * 1000, 2000
        for first, again, at_least in ((hour, hour, hour),
                                       (0, 0, deb), (hour, 0, deb),
                                       (0, hour, hour)):
            with self.subTest(first=first, again=again):
                key = "k%d-%d" % (first, again)
                runs = []
                for delay in (first, again):
                    before = time.time()
                    ans = self.d.ok({"op": "submit", "argv": fq("exit", 0),
                                     "unique": key, "debounce_ms": deb,
                                     "delay_ms": delay})
                    got = parse_ts(ans["task"]["run_at"]) - before
                    self.assertGreaterEqual(got, max(delay, deb) / 1000
                                            - 0.01, ans)
                    runs.append(got)
                self.assertGreaterEqual(runs[1], at_least / 1000 - 0.01)
                self.d.ok({"op": "cancel", "id": ans["task"]["id"]})


class Stats(fqtest.TestCase):

    def test_stats(self):
        for argv in (fq("exit", 0), fq("exit", 0), fq("exit", 1)):
            t = self.d.submit(argv, name="st", max_attempts=1)
            self.d.wait_final(t["id"])
        self.d.submit(fq("exit", 0), name="other")
        ans = self.d.ok({"op": "stats", "name": "st"})
        rows = ans["stats"]
        self.assertEqual([r["name"] for r in rows], ["st"])
        r = rows[0]
        self.assertEqual((r["tasks"], r["succeeded"], r["failed"],
                          r["canceled"]), (3, 2, 1, 0))
        self.assertAlmostEqual(r["success_rate"], 2 / 3, places=3)
        self.assertAlmostEqual(r["mean_attempts"], 1.0, places=3)
        # Written to 17 digits, 2 / 3 read 0.66666666666666663.
        with self.d.connect() as c:
            c.send({"op": "stats", "name": "st"})
            line = c.readline()
        self.assertIn(b'"success_rate":0.666666666666667,', line)
        for k in ("p50_ms", "p95_ms", "max_ms"):
            self.assertIsInstance(r[k], (int, float))
        self.assertLessEqual(r["p50_ms"], r["p95_ms"])
        self.assertLessEqual(r["p95_ms"], r["max_ms"])

    def test_stats_figures(self):
        # Tasks written into the store while forkqd is stopped, so every
        # duration, and so every figure, is known.
        now = int(time.time() * 1000)
        old = now - 10 * 24 * HOUR_MS
        tasks = [  # name, created_at, state, [(outcome, duration_ms)]
            ("a", now, "succeeded", [("success", 10)]),
            ("a", now, "succeeded", [("exit", 500), ("success", 30)]),
            ("a", now, "failed", [("exit", 1000)] * 3),
            ("a", now, "canceled", []),
            ("a", now, "succeeded", [("success", 20)]),
            ("b", now, "failed", [("exit", 5)]),
            ("c", old, "succeeded", [("success", 7)]),
        ]
        self.d.stop()
        db = sqlite3.connect(self.d.db)
        with db:
            for name, created, state, attempts in tasks:
                cur = db.execute(
                    "INSERT INTO tasks (name, queue, argv, state, attempt,"
                    " max_attempts, attempts_per_run, created_at, run_at,"
                    " finished_at, backoff_base_ms, backoff_max_ms, uid,"
                    " gid) VALUES (?, 'default', '[\"true\"]', ?, ?, 3, 3,"
                    " ?, ?, ?, 1000, 60000, ?, ?)",
                    (name, state, len(attempts), created, created,
                     created + 5000, os.getuid(), os.getgid()))
                for n, (outcome, ms) in enumerate(attempts, 1):
                    db.execute(
                        "INSERT INTO attempts (task_id, n, pid, started_at,"
                        " finished_at, duration_ms, outcome, exit_code)"
                        " VALUES (?, ?, 99999, ?, ?, ?, ?, ?)",
                        (cur.lastrowid, n, created, created + ms, ms,
                         outcome, 0 if outcome == "success" else 1))
            # Queued for a retry after two attempts: a task, but no
            # figure of how many attempts one of "a" takes.
            db.execute(
                "INSERT INTO tasks (name, queue, argv, state, attempt,"
                " max_attempts, attempts_per_run, created_at, run_at,"
                " backoff_base_ms, backoff_max_ms, uid, gid) VALUES ('a',"
                " 'default', '[\"true\"]', 'queued', 2, 3, 3, ?, ?, 1000,"
                " 60000, ?, ?)", (now, now + 10 * 24 * HOUR_MS, os.getuid(),
                                  os.getgid()))
        db.close()
        self.d.start()

        def rows(**req):
            return [(r["name"], r["tasks"], r["succeeded"], r["failed"],
                     r["canceled"], round(r["success_rate"], 6),
                     round(r["mean_attempts"], 6), r["p50_ms"], r["p95_ms"],
                     r["max_ms"])
                    for r in self.d.ok(dict(op="stats", **req))["stats"]]

        a = ("a", 6, 3, 1, 1, 0.6, 1.4, 20, 30, 30)
        b = ("b", 1, 0, 1, 0, 0.0, 1.0, None, None, None)
        c = ("c", 1, 1, 0, 0, 1.0, 1.0, 7, 7, 7)
        self.assertEqual(rows(), [a, b, c])
        self.assertEqual(rows(since_ms=24 * HOUR_MS), [a, b])
        self.assertEqual(rows(name="b"), [b])
        self.assertEqual(rows(name="nosuch"), [])

    def test_stats_over_more_tasks_than_one_pass_reads(self):
        # forkqd reads the tasks of stats ops some thousands per loop
        # pass, all ops together: each op's figures must be those of all
        # the tasks, filters included; a request pipelined behind one
        # must be answered after it; two from two clients take turns; and
        # a client that leaves halfway must leave forkqd serving.
        done = []
        for argv in (fq("exit", 0), fq("exit", 1)):
            t = self.d.submit(argv, name="s0", max_attempts=1)
            done.append(self.d.wait_final(t["id"]))
        self.d.stop()
        now = int(time.time() * 1000)
        old = now - 10 * 24 * HOUR_MS
        n = 10000
        self.d.insert_canceled_tasks([("s%d" % (i % 3),
                                       old if i < n // 2 else now, now)
                                      for i in range(n)])
        self.d.start()

        def counts(rows):
            return {r["name"]: (r["tasks"], r["succeeded"], r["failed"],
                                r["canceled"]) for r in rows}
        per = {k: sum(1 for i in range(n) if i % 3 == k) for k in range(3)}
        new = {k: sum(1 for i in range(n // 2, n) if i % 3 == k)
               for k in range(3)}
        c = self.d.connect()
        try:
            c.send({"op": "stats"})
            c.send({"op": "stats", "since_ms": 24 * HOUR_MS, "name": "s1"})
            c.send({"op": "status"})
            everything, recent, status = c.recv(), c.recv(), c.recv()
        finally:
            c.close()
        self.assertEqual(counts(everything["stats"]), {
            "s0": (per[0] + 2, 1, 1, per[0]),
            "s1": (per[1], 0, 0, per[1]),
            "s2": (per[2], 0, 0, per[2])})
        self.assertIsInstance(everything["stats"][0]["p50_ms"], int)
        self.assertEqual(counts(recent["stats"]),
                         {"s1": (new[1], 0, 0, new[1])})
        self.assertIn("counts", status["status"])

        # Two at once from two clients take turns, each with its figures.
        c1, c2 = self.d.connect(), self.d.connect()
        try:
            c1.send({"op": "stats"})
            c2.send({"op": "stats", "name": "s2"})
            both, only = c1.recv(), c2.recv()
        finally:
            c1.close()
            c2.close()
        self.assertEqual(counts(both["stats"]), counts(everything["stats"]))
        self.assertEqual(counts(only["stats"]), {"s2": (per[2], 0, 0, per[2])})

        c = self.d.connect()
        c.send({"op": "stats"})
        c.close()
        self.assertEqual(counts(self.d.ok({"op": "stats", "name": "s2"})
                                ["stats"]), {"s2": (per[2], 0, 0, per[2])})

    def test_stats_on_a_damaged_table_is_an_error_not_a_part(self):
        # A leaf of the tasks table overwritten on disk: stats and list
        # must not answer what they could read as if it were all, and a
        # failed read must not stop forkqd taking submits.
        self.d.stop()
        now = int(time.time() * 1000)
        self.d.insert_canceled_tasks([("n%d" % (i % 2), now, now)
                                      for i in range(6000)])
        smash_leaf(self.d.db, "tasks")
        self.d.start()
        check_error(self, self.d.request({"op": "stats"}), "unavailable")
        # A list reads only what fits in its answer: the pages before the
        # damage are whole (and say more), the one that reaches it fails.
        req = {"op": "list", "limit": 100000}
        while True:
            ans = self.d.request(req)
            if not ans.get("ok"):
                break
            self.assertIs(ans["more"], True, "a list ended at the damage")
            req["before_id"] = ans["tasks"][-1]["id"]
        check_error(self, ans, "unavailable")
        t = self.d.submit(fq("exit", 0))
        self.assertEqual(self.d.wait_final(t["id"])["state"], "succeeded")

    def test_a_store_whose_tasks_cannot_be_counted_is_refused(self):
        # The counts of status and metrics start from one count of the
        # table. A damaged index under it must stop forkqd at start-up,
        # saying why, not leave it running on counts read in part.
        self.d.stop()
        now = int(time.time() * 1000)
        self.d.insert_canceled_tasks([("n", now, now) for i in range(6000)])
        smash_leaf(self.d.db, "tasks_state")
        self.d.start(wait=False)
        rc = self.d.wait_exit(timeout=20)
        self.d.expect_alive = False
        self.assertEqual(rc, 1, self.d.stderr())
        self.assertIn("counting tasks", self.d.stderr())
        self.assertIn(self.d.db, self.d.stderr())

    def test_metrics_follow_the_attempts_table(self):
        # The attempt figures are kept in memory as attempts end: they must
        # stay what the attempts table says, through new attempts of every
        # kind, and attempts after a prune, plus what the prune took: they
        # are counters, which never go down while forkqd runs. A restart
        # counts the table again.
        pruned_outcomes, pruned_durs = collections.Counter(), []

        def table():
            db = sqlite3.connect("file:%s?mode=ro" % self.d.db, uri=True)
            try:
                outcomes = dict(db.execute(
                    "SELECT outcome, count(*) FROM attempts"
                    " WHERE outcome IS NOT NULL GROUP BY outcome"))
                durs = [d for (d,) in db.execute(
                    "SELECT duration_ms FROM attempts"
                    " WHERE duration_ms IS NOT NULL")]
            finally:
                db.close()
            return outcomes, durs

        def check():
            text = self.d.ok({"op": "metrics"})["text"]
            outcomes, durs = table()
            outcomes = dict(collections.Counter(outcomes) + pruned_outcomes)
            durs = durs + pruned_durs
            got = {k: int(float(v)) for k, v in re.findall(
                r'forkq_attempts_total\{outcome="(\w+)"\} (\S+)', text)}
            self.assertEqual({k: v for k, v in got.items() if v}, outcomes)
            buckets = re.findall(r'forkq_attempt_duration_seconds_bucket'
                                 r'\{le="([^"]+)"\} (\S+)', text)
            self.assertGreater(len(buckets), 2)
            for le, n in buckets:
                bound = float("inf") if le == "+Inf" else float(le) * 1000
                self.assertEqual(int(float(n)),
                                 sum(1 for d in durs if d <= bound), le)
            self.assertEqual(int(float(re.search(
                r"(?m)^forkq_attempt_duration_seconds_count (\S+)$",
                text).group(1))), len(durs))
            self.assertAlmostEqual(float(re.search(
                r"(?m)^forkq_attempt_duration_seconds_sum (\S+)$",
                text).group(1)), sum(durs) / 1000.0, places=3)
            return len(durs)

        def run_mix():
            ids = [self.d.submit(fq("exit", 0))["id"] for _ in range(3)]
            ids.append(self.d.submit(fq("sleep", "0.3"))["id"])
            ids.append(self.d.submit(fq("exit", 3), max_attempts=2,
                                     backoff_base_ms=1,
                                     backoff_max_ms=1)["id"])
            ids.append(self.d.submit(fq("sleep", "30"), timeout_ms=200,
                                     max_attempts=1)["id"])
            slow = self.d.submit(fq("sleep", "30"))["id"]
            wait_for(lambda: self.d.get(slow)["state"] == "running", 30)
            self.d.ok({"op": "cancel", "id": slow})
            for i in ids + [slow]:
                self.d.wait_final(i)

        self.assertEqual(check(), 0)
        run_mix()
        self.assertEqual(check(), 8)
        outcomes, durs = table()
        self.assertEqual(self.d.ok({"op": "prune", "older_than_ms": 0})
                         ["pruned"], 7)
        self.assertEqual(table(), ({}, []))
        pruned_outcomes.update(outcomes)
        pruned_durs.extend(durs)
        self.assertEqual(check(), 8)
        run_mix()
        self.assertEqual(check(), 16)
        self.d.restart()
        pruned_outcomes.clear()
        del pruned_durs[:]
        self.assertEqual(check(), 8)

    def test_tasks_total_never_goes_down(self):
        # It counted the tasks in each final state: a retry took one out
        # of "failed", a prune took them all, and Prometheus read each
        # drop as a restart of the counter.
        def totals():
            text = self.d.ok({"op": "metrics"})["text"]
            return {k: int(float(v)) for k, v in re.findall(
                r'forkq_tasks_total\{state="(\w+)"\} (\S+)', text)}
        ok = self.d.submit(fq("exit", 0))["id"]
        bad = self.d.submit(fq("exit", 3), max_attempts=1)["id"]
        self.d.wait_final(ok)
        self.d.wait_final(bad)
        self.assertEqual(totals(), {"succeeded": 1, "failed": 1,
                                    "canceled": 0})
        # Paused, so the retried task is still queued when counted: it
        # fails again within milliseconds of starting.
        self.d.ok({"op": "pause"})
        self.d.ok({"op": "retry", "id": bad})
        self.assertEqual(totals()["failed"], 1)
        self.d.ok({"op": "resume"})
        self.assertEqual(self.d.wait_final(bad)["state"], "failed")
        self.assertEqual(totals(), {"succeeded": 1, "failed": 2,
                                    "canceled": 0})
        pruned = []         # a task that ended this ms is not older
        wait_for(lambda: pruned.append(self.d.ok(
            {"op": "prune", "older_than_ms": 0})["pruned"]) or
            sum(pruned) == 2, what="both tasks to be pruned")
        self.assertEqual(totals(), {"succeeded": 1, "failed": 2,
                                    "canceled": 0})
        held = self.d.submit(fq("exit", 0), delay_ms=3600 * 1000)["id"]
        self.d.ok({"op": "cancel", "id": held})
        self.assertEqual(self.d.wait_final(held)["state"], "canceled")
        self.assertEqual(totals(), {"succeeded": 1, "failed": 2,
                                    "canceled": 1})
        self.d.restart()
        self.assertEqual(totals(), {"succeeded": 0, "failed": 0,
                                    "canceled": 1})

    def test_metrics(self):
        t = self.d.submit(fq("exit", 0))
        self.d.wait_final(t["id"])
        text = self.d.ok({"op": "metrics"})["text"]
        self.assertRegex(text, r'(?m)^forkq_tasks_total\{state="succeeded"\}'
                         r' 1(\.0)?$')
        self.assertRegex(text, r'(?m)^forkq_attempts_total\{outcome='
                         r'"success"\} 1(\.0)?$')
        self.assertRegex(text, r"(?m)^forkq_tasks_queued 0(\.0)?$")
        self.assertRegex(text, r"(?m)^forkq_tasks_running 0(\.0)?$")
        self.assertRegex(text, r"(?m)^forkq_attempt_duration_seconds_bucket"
                         r'\{le="\+Inf"\} 1(\.0)?$')
        self.assertRegex(text, r"(?m)^# TYPE forkq_attempt_duration_seconds "
                         r"histogram$")
        rc, out, err = self.d.cli("metrics")
        self.assertEqual(rc, 0, err)
        self.assertIn("forkq_tasks_total", out)


def smash_leaf(db_path, *btrees):
    """Overwrites the middle leaf page of each b-tree named (a table or
    an index) on disk, forkqd stopped: reads that reach it fail. Returns
    the bytes each page held before."""
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (page_size,) = db.execute("PRAGMA page_size").fetchone()
    chosen = []
    for name in btrees:
        leaves = [p for (p,) in db.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf'"
            " ORDER BY pageno", (name,))]
        chosen.append(leaves[len(leaves) // 2])
    db.close()
    before = []
    with open(db_path, "r+b") as f:
        for pageno in chosen:
            f.seek((pageno - 1) * page_size)
            before.append(f.read(page_size))
            f.seek((pageno - 1) * page_size)
            f.write(b"\xff" * page_size)
    return before


class Cron(fqtest.TestCase):

    def test_cron_ops_do_not_read_every_entry(self):
        """Each cron_add, and each firing, read every user's entries with
        their requests: with 1,000 entries of 60 KB, 10 adds cost forkqd
        some 5 s of CPU, its loop held meanwhile. What is due and when
        the next is come from an index now. (A bound far from both, not
        a benchmark.)"""
        self.d.ok({"op": "cron_add", "name": "seed",
                   "schedule": "0 0 1 1 *", "argv": fq("exit", 0)})
        self.d.stop()
        db = sqlite3.connect(self.d.db)
        with db:
            (req, argv, nxt, uid, gid) = db.execute(
                "SELECT request, argv, next_run_at, uid, gid FROM crons"
                " WHERE name = 'seed'").fetchone()
            big = json.loads(req)
            big["argv"] = big["argv"] + ["x" * 60000]
            db.executemany(
                "INSERT INTO crons (name, schedule, request, argv,"
                " next_run_at, uid, gid) VALUES (?, '0 0 1 1 *', ?, ?, ?,"
                " ?, ?)", [("big%04d" % i, json.dumps(big), argv, nxt,
                            uid, gid) for i in range(1000)])
        db.close()
        self.d.start()
        before = fqtest.cpu_seconds(self.d.pid)
        for i in range(10):
            self.d.ok({"op": "cron_add", "name": "small%d" % i,
                       "schedule": "0 0 1 1 *", "argv": fq("exit", 0)})
        self.assertLess(fqtest.cpu_seconds(self.d.pid) - before, 2.0,
                        "s of CPU for 10 cron_add")
        # An admin's cron_remove without uid (whose entry?) read them all
        # too.
        before = fqtest.cpu_seconds(self.d.pid)
        for i in range(10):
            self.d.ok({"op": "cron_remove", "name": "small%d" % i})
        self.assertLess(fqtest.cpu_seconds(self.d.pid) - before, 2.0,
                        "s of CPU for 10 cron_remove")

    def test_damaged_entries_are_an_error_not_a_part(self):
        # A leaf of the crons table overwritten on disk: cron_list must
        # not answer the entries it could read as if they were all, an
        # entry that cannot be read must not count as absent (cron_add
        # would replace another user's), and forkqd goes on taking
        # submits.
        names = ["e%03d" % i for i in range(80)]
        for name in names:
            self.d.ok({"op": "cron_add", "name": name,
                       "schedule": "0 0 1 1 *",
                       "argv": fq("echo", "x" * 300)})
        self.d.stop()
        (page,) = smash_leaf(self.d.db, "crons")
        lost = [n for n in names if n.encode() in page]
        self.assertTrue(lost and len(lost) < len(names) // 2, lost)
        self.d.start()
        check_error(self, self.d.request({"op": "cron_list"}),
                    "unavailable", "cron")
        check_error(self, self.d.request(
            {"op": "cron_remove", "name": lost[0]}), "unavailable", "cron")
        t = self.d.submit(fq("exit", 0))
        self.assertEqual(self.d.wait_final(t["id"])["state"], "succeeded")

    def test_stored_entry_that_no_longer_parses_fails_once(self):
        # A request that is not JSON, or a schedule that no longer parses
        # (a damaged or hand-edited store): the due entry says cron.failed,
        # forkqd goes on, and the entry whose schedule is gone stops
        # instead of staying due for ever.
        for name in ("badreq", "badsched"):
            self.d.ok({"op": "cron_add", "name": name,
                       "schedule": "0 0 1 1 *", "argv": fq("exit", 0)})
        self.d.stop()
        db = sqlite3.connect(self.d.db)
        past = int(time.time() * 1000) - 60000
        db.execute("UPDATE crons SET request = 'not json', next_run_at = ?"
                   " WHERE name = 'badreq'", (past,))
        db.execute("UPDATE crons SET schedule = 'every day',"
                   " next_run_at = ? WHERE name = 'badsched'", (past,))
        db.commit()
        db.close()
        self.d.start()
        for name, error in (("badreq", "not JSON"),
                            ("badsched", "stored schedule")):
            ev = self.d.wait_event(
                lambda e, n=name: e.get("event") == "cron.failed" and
                e.get("name") == n, what="cron.failed for " + name)
            self.assertIn(error, ev["error"])
        crons = {c["name"]: c for c in self.d.ok({"op": "cron_list"})["crons"]}
        self.assertIsNone(crons["badsched"]["next_run_at"])
        self.assertGreater(parse_ts(crons["badreq"]["next_run_at"]),
                           time.time())
        t = self.d.submit(fq("exit", 0))
        self.assertEqual(self.d.wait_final(t["id"])["state"], "succeeded")
        failed = [e for e in self.d.events()
                  if e.get("event") == "cron.failed"]
        self.assertEqual(len(failed), 2, failed)

    def test_after_names_a_task_and_run_at_and_unique_are_refused(self):
        # Taken, an after naming no task failed every firing, a run_at
        # held every firing until that one time, and a unique key was
        # dropped (each firing has cron:NAME).
        check_error(self, self.d.request(
            {"op": "cron_add", "name": "a", "schedule": "* * * * *",
             "argv": fq("exit", 0), "after": [99999]}),
            "not_found", "after: no task 99999")
        check_error(self, self.d.request(
            {"op": "cron_add", "name": "a", "schedule": "* * * * *",
             "argv": fq("exit", 0), "run_at": "2099-01-01T00:00:00Z"}),
            "bad_request", "run_at")
        check_error(self, self.d.request(
            {"op": "cron_add", "name": "a", "schedule": "* * * * *",
             "argv": fq("exit", 0), "unique": "k"}),
            "bad_request", "unique")
        self.assertEqual(self.d.ok({"op": "cron_list"})["crons"], [])
        dep = self.d.submit(fq("exit", 0))["id"]
        self.d.ok({"op": "cron_add", "name": "a", "schedule": "* * * * *",
                   "argv": fq("exit", 0), "after": [dep],
                   "delay_ms": 1000})

    def test_a_stored_run_at_is_dropped_at_firing(self):
        # cron_add took a run_at once: every firing of such an entry was
        # held until that one time.
        self.d.ok({"op": "cron_add", "name": "late", "schedule":
                   "0 0 1 1 *", "argv": fq("exit", 0)})
        self.d.stop()
        db = sqlite3.connect(self.d.db)
        req = json.loads(db.execute("SELECT request FROM crons WHERE"
                                    " name = 'late'").fetchone()[0])
        req["run_at"] = "2099-01-01T00:00:00Z"
        with db:
            db.execute("UPDATE crons SET request = ?, next_run_at = ?",
                       (json.dumps(req), int(time.time() * 1000) - 60000))
        db.close()
        self.d.start()
        ev = self.d.wait_event(lambda e: e.get("event") == "cron.fired",
                               what="the stored entry to fire")
        self.assertEqual(self.d.wait_final(ev["task"])["state"],
                         "succeeded")

    def test_a_debounce_is_refused_and_a_stored_one_ignored(self):
        # Each firing's debounce moved the queued run on by debounce_ms,
        # so a minutely entry with a 90 s debounce never ran.
        check_error(self, self.d.request(
            {"op": "cron_add", "name": "deb", "schedule": "* * * * *",
             "argv": fq("exit", 0), "unique": "x", "debounce_ms": 90000}),
            "bad_request", "skipped, not debounced")
        self.d.ok({"op": "cron_add", "name": "deb", "schedule": "0 0 1 1 *",
                   "argv": fq("exit", 0)})
        self.d.stop()
        db = sqlite3.connect(self.d.db)
        req = json.loads(db.execute("SELECT request FROM crons WHERE"
                                    " name = 'deb'").fetchone()[0])
        req.update(unique="x", debounce_ms=3600 * 1000)
        db.execute("UPDATE crons SET request = ?, next_run_at = ? WHERE"
                   " name = 'deb'", (json.dumps(req),
                                     int(time.time() * 1000) - 60000))
        db.commit()
        db.close()
        self.d.start()
        ev = self.d.wait_event(lambda e: e.get("event") == "cron.fired",
                               what="the stored entry to fire")
        t = self.d.wait_final(ev["task"])
        self.assertEqual(t["state"], "succeeded", json.dumps(t))

    def test_a_firing_is_named_after_its_entry(self):
        # Named after the program, the runs of every "sh -c" entry were
        # one name to list and stats.
        self.d.ok({"op": "cron_add", "name": "nightly-report",
                   "schedule": "0 0 1 1 *", "argv": fq("exit", 0)})
        self.d.stop()
        db = sqlite3.connect(self.d.db)
        with db:
            db.execute("UPDATE crons SET next_run_at = ?",
                       (int(time.time() * 1000) - 60000,))
        db.close()
        self.d.start()
        ev = self.d.wait_event(lambda e: e.get("event") == "cron.fired",
                               what="the entry to fire")
        t = self.d.wait_final(ev["task"])
        self.assertEqual((t["name"], t["state"]),
                         ("nightly-report", "succeeded"), json.dumps(t))
        rows = self.d.ok({"op": "stats", "name": "nightly-report"})["stats"]
        self.assertEqual([(r["name"], r["succeeded"]) for r in rows],
                         [("nightly-report", 1)])

    def test_unreadable_paused_queues_refuse_start(self):
        # Starting with no record of which queues are paused would run
        # them: forkqd says why and does not start.
        self.d.ok({"op": "pause", "queue": "q1"})
        self.d.stop()
        smash_leaf(self.d.db, "paused", "sqlite_autoindex_paused_1")
        self.d.start(wait=False)
        rc = self.d.wait_exit(timeout=20)
        self.d.expect_alive = False
        self.assertEqual(rc, 1, self.d.stderr())
        self.assertIn("cannot read the paused queues", self.d.stderr())

    def test_add_list_remove(self):
        before = time.time()
        ans = self.d.ok({"op": "cron_add", "name": "c1",
                         "schedule": "*/5 * * * *", "argv": fq("exit", 0)})
        c = ans["cron"]
        self.assertIs(ans["replaced"], False)
        self.assertEqual((c["name"], c["schedule"], c["argv"],
                          c["last_run_at"], c["last_task"]),
                         ("c1", "*/5 * * * *", fq("exit", 0), None, None))
        nxt = parse_ts(c["next_run_at"])
        self.assertGreater(nxt, before)
        self.assertLessEqual(nxt, before + 300 + 1)
        self.assertEqual(time.localtime(nxt).tm_min % 5, 0)
        self.assertEqual(time.localtime(nxt).tm_sec, 0)
        check_error(self, self.d.request(
            {"op": "cron_add", "name": "bad", "schedule": "61 * * * *",
             "argv": fq("exit", 0)}), "bad_request", "schedule")
        # Valid fields, but no such date: an entry that would never fire.
        check_error(self, self.d.request(
            {"op": "cron_add", "name": "bad", "schedule": "0 0 31 2 *",
             "argv": fq("exit", 0)}), "bad_request", "schedule")
        self.d.ok({"op": "cron_add", "name": "c2", "schedule": "@daily",
                   "argv": fq("exit", 0)})
        names = sorted(x["name"] for x in self.d.ok(
            {"op": "cron_list"})["crons"])
        self.assertEqual(names, ["c1", "c2"])
        self.d.restart()
        names = sorted(x["name"] for x in self.d.ok(
            {"op": "cron_list"})["crons"])
        self.assertEqual(names, ["c1", "c2"], "entries persist")
        self.d.ok({"op": "cron_remove", "name": "c1"})
        check_error(self, self.d.request({"op": "cron_remove",
                                          "name": "c1"}), "not_found")
        rc, out, err = self.d.cli("cron", "list", "--json")
        self.assertEqual(rc, 0, err)
        self.assertEqual([x["name"] for x in json.loads(out)["crons"]],
                         ["c2"])

    def test_fires_each_minute(self):
        rc, out, err = self.d.cli("cron", "add", "every", "* * * * *",
                                  "--", *fq("exit", 0))
        self.assertEqual(rc, 0, err)
        task = wait_for(lambda: next(iter(self.d.list()), None),
                        timeout=75, interval=0.5,
                        what="the cron entry to fire within a minute")
        self.assertEqual(task["unique"], "cron:every")
        t = self.d.wait_final(task["id"])
        self.assertEqual(t["state"], "succeeded")
        started = parse_ts(t["created_at"])
        self.assertLess(started % 60, 5, "fired at the top of a minute")
        c = [x for x in self.d.ok({"op": "cron_list"})["crons"]
             if x["name"] == "every"][0]
        self.assertEqual(c["last_task"], t["id"])
        self.assertIsNotNone(c["last_run_at"])
        self.assertTrue(re.match(r"^\d{4}-", c["next_run_at"]))


if __name__ == "__main__":
    fqtest.main()
