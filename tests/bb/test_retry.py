"""Retries, backoff, delays, `retry`, unique keys (spec sections 4.1-4.3)."""

import json
import os
import sys
import threading

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fqtest                                             # noqa: E402
from fqtest import check_error, fq, parse_ts, wait_for    # noqa: E402

SLACK = 1.5 * fqtest.SCALE
HOUR_MS = 3600 * 1000


class Retry(fqtest.TestCase):

    def test_fails_twice_then_succeeds(self):
        t = self.d.submit(fq("counter", self.path("cnt"), 2),
                          max_attempts=4, backoff_base_ms=100,
                          backoff_max_ms=200)
        t = self.d.wait_final(t["id"])
        self.assertEqual((t["state"], t["attempt"], t["max_attempts"],
                          t["outcome"], t["exit_code"]),
                         ("succeeded", 3, 4, "success", 0), json.dumps(t))
        self.assertEqual([(a["n"], a["outcome"], a["exit_code"])
                          for a in t["attempts"]],
                         [(1, "exit", 1), (2, "exit", 1), (3, "success", 0)])
        with open(self.path("cnt")) as f:
            self.assertEqual(f.read().strip(), "3")

        evs = self.d.task_events(t["id"])
        ended = [e for e in evs if e["event"] == "task.attempt_ended"]
        self.assertEqual(len(ended), 3, json.dumps(evs))
        for e, (n, outcome, code, level) in zip(
                ended, [(1, "exit", 1, "warn"), (2, "exit", 1, "warn"),
                        (3, "success", 0, "info")]):
            self.assertEqual((e["attempt"], e["outcome"], e["exit_code"],
                              e["signal"], e["level"]),
                             (n, outcome, code, None, level), json.dumps(e))
            self.assertIsInstance(e["duration_ms"], int)
            self.assertIn("error", e)
            self.assertIsInstance(e.get("pid"), int)
        sched = [e for e in evs if e["event"] == "task.retry_scheduled"]
        self.assertEqual([e["attempt"] for e in sched], [2, 3],
                         "retry_scheduled names the next attempt")
        for e, d_ms in zip(sched, (100, 200)):
            self.assertEqual(e["level"], "warn")
            self.assertGreaterEqual(e["delay_ms"], d_ms // 2)
            self.assertLessEqual(e["delay_ms"], d_ms)
        done = [e for e in evs if e["event"] == "task.succeeded"]
        self.assertEqual(len(done), 1)
        self.assertEqual((done[0]["attempts"], done[0]["level"]), (3, "info"))
        started = [e for e in evs if e["event"] == "task.started"]
        self.assertEqual([e["attempt"] for e in started], [1, 2, 3])

    def test_cli_retries_and_wait(self):
        rc, out, err = self.d.cli("submit", "--retries", "3", "--backoff",
                                  "100ms:200ms", "--wait", "--",
                                  *fq("counter", self.path("cnt"), 2))
        self.assertEqual(rc, 0, err)
        t = self.d.get(int(out.split()[0]))
        self.assertEqual((t["attempt"], t["max_attempts"]), (3, 4))

    def test_retries_exhausted(self):
        t = self.d.submit(fq("counter", self.path("cnt"), 99),
                          max_attempts=3, backoff_base_ms=100,
                          backoff_max_ms=100)
        t = self.d.wait_final(t["id"])
        self.assertEqual((t["state"], t["attempt"], t["outcome"],
                          t["exit_code"]), ("failed", 3, "exit", 1),
                         json.dumps(t))
        self.assertEqual([a["n"] for a in t["attempts"]], [1, 2, 3])
        self.assertTrue(all(a["outcome"] == "exit" for a in t["attempts"]))
        ev = self.d.wait_event(lambda e: e.get("event") == "task.failed"
                               and e.get("task") == t["id"])
        self.assertEqual(ev["attempts"], 3)
        self.assertIn(ev["level"], ("warn", "error"))
        rc, _, err = self.d.cli("wait", t["id"])
        self.assertEqual(rc, 1, err)

    def test_backoff_gaps(self):
        rc, out, err = self.d.cli("submit", "--retries", "3", "--backoff",
                                  "1s:3s", "--",
                                  *fq("counter", self.path("cnt"), 99))
        self.assertEqual(rc, 0, err)
        t = self.d.wait_final(int(out), timeout=60)
        self.assertEqual((t["state"], t["attempt"]), ("failed", 4),
                         json.dumps(t))
        atts = t["attempts"]
        for n, d in ((1, 1.0), (2, 2.0), (3, 3.0)):
            gap = parse_ts(atts[n]["started_at"]) - \
                parse_ts(atts[n - 1]["finished_at"])
            with self.subTest(after_attempt=n):
                self.assertGreaterEqual(gap, d / 2 - 0.01,
                                        "retry %d came too early" % n)
                self.assertLessEqual(gap, d + SLACK)
        sched = self.d.task_events(t["id"], "task.retry_scheduled")
        self.assertEqual([e["attempt"] for e in sched], [2, 3, 4])
        for e, d in zip(sched, (1000, 2000, 3000)):
            self.assertGreaterEqual(e["delay_ms"], d // 2)
            self.assertLessEqual(e["delay_ms"], d)

    def test_a_retry_due_at_once_keeps_its_priority(self):
        """A retry due at once competes by priority for the slot its
        failure frees: with one worker, A (priority 100, backoff 0) runs
        its second attempt before C (priority 0), which waited longer."""
        d = self.start_daemon(workers=1)
        gate = self.path("gate")
        a = d.submit(["/bin/sh", "-c", 'while [ ! -e "$1" ]; do sleep 0.05;'
                      ' done; exit 1', "sh", gate], priority=100,
                     max_attempts=2, backoff_base_ms=0)
        d.wait_running_pid(a["id"])
        c = d.submit(fq("exit", 0))
        self.touch(gate)
        self.assertEqual(d.wait_final(a["id"])["attempt"], 2)
        d.wait_final(c["id"])
        started = [e["task"] for e in d.events()
                   if e.get("event") == "task.started"]
        self.assertEqual(started, [a["id"], a["id"], c["id"]])

    def test_events_between_attempts_carry_the_last_pid(self):
        # Spec 6: once started, task events carry attempt and pid, also
        # those of the retry op and of a cancel while a retry waits; a
        # retry is logged at warn.
        t = self.d.submit(fq("exit", 1), max_attempts=1)
        t = self.d.wait_final(t["id"])
        pid = t["attempts"][0]["pid"]
        self.d.ok({"op": "retry", "id": t["id"]})
        t = self.d.wait_final(t["id"])
        ev = self.d.task_events(t["id"], "task.retry_scheduled")
        self.assertEqual([(e["attempt"], e.get("pid"), e["level"])
                          for e in ev], [(2, pid, "warn")], ev)

        t = self.d.submit(fq("exit", 1), max_attempts=2,
                          backoff_base_ms=3600 * 1000)
        wait_for(lambda: self.d.get(t["id"])["attempt"] == 1 and
                 self.d.get(t["id"])["state"] == "queued",
                 what="attempt 1 to end")
        pid = self.d.get(t["id"])["attempts"][0]["pid"]
        self.d.ok({"op": "cancel", "id": t["id"]})
        ev = self.d.task_events(t["id"], "task.canceled")
        self.assertEqual([(e["attempt"], e.get("pid")) for e in ev],
                         [(1, pid)], ev)

    def test_retries_zero_is_one_attempt(self):
        rc, out, err = self.d.cli("submit", "--retries", "0", "--",
                                  *fq("exit", 1))
        self.assertEqual(rc, 0, err)
        t = self.d.wait_final(int(out))
        self.assertEqual((t["state"], t["attempt"], t["max_attempts"],
                          len(t["attempts"])), ("failed", 1, 1, 1))

    def test_default_retries_flag(self):
        d = self.start_daemon(extra_args=["--default-retries", "0"])
        t = d.submit(fq("exit", 1))
        self.assertEqual(t["max_attempts"], 1)
        self.assertEqual(d.wait_final(t["id"])["attempt"], 1)
        d5 = self.start_daemon(extra_args=["--default-retries", "5"])
        self.assertEqual(d5.submit(fq("exit", 0))["max_attempts"], 6)
        self.assertEqual(self.d.submit(fq("exit", 0))["max_attempts"], 3)

    def test_other_outcomes_are_retried(self):
        cases = [(fq("signal", "KILL"), {}, "signal"),
                 (fq("sleep", 60), {"timeout_ms": 500}, "timeout"),
                 (fq("sleep", 60), {"heartbeat_timeout_ms": 500},
                  "heartbeat_lost")]
        ids = []
        for argv, extra, outcome in cases:
            ids.append(self.d.submit(argv, max_attempts=2,
                                     backoff_base_ms=100,
                                     backoff_max_ms=100, **extra)["id"])
        for id, (_, _, outcome) in zip(ids, cases):
            with self.subTest(outcome=outcome):
                t = self.d.wait_final(id)
                self.assertEqual([a["outcome"] for a in t["attempts"]],
                                 [outcome, outcome], json.dumps(t))
                self.assertEqual(t["state"], "failed")

    def test_delay_holds_the_start(self):
        rc, out, err = self.d.cli("submit", "--delay", "2s", "--",
                                  *fq("exit", 0))
        self.assertEqual(rc, 0, err)
        id = int(out)
        t = self.d.get(id)
        self.assertEqual(t["state"], "queued")
        self.assertAlmostEqual(parse_ts(t["run_at"]) -
                               parse_ts(t["created_at"]), 2.0, delta=0.2)
        t = self.d.wait_final(id)
        wait = parse_ts(t["started_at"]) - parse_ts(t["created_at"])
        self.assertGreaterEqual(wait, 1.99)
        self.assertLessEqual(wait, 2.0 + SLACK)

    def test_delay_ms_protocol(self):
        t = self.d.submit(fq("exit", 0), delay_ms=1500)
        t = self.d.wait_final(t["id"])
        wait = parse_ts(t["started_at"]) - parse_ts(t["created_at"])
        self.assertGreaterEqual(wait, 1.49)
        self.assertLessEqual(wait, 1.5 + SLACK)

    def test_retry_requeues_failed(self):
        cnt = self.path("cnt")
        t = self.d.submit(fq("counter", cnt, 2), max_attempts=2,
                          backoff_base_ms=100, backoff_max_ms=100)
        t = self.d.wait_final(t["id"])
        self.assertEqual((t["state"], t["attempt"]), ("failed", 2))
        ans = self.d.ok({"op": "retry", "id": t["id"]})
        self.assertIn(ans["task"]["state"], ("queued", "running",
                                             "succeeded"))
        self.assertEqual(ans["task"]["max_attempts"], 4,
                         "raised by the attempts it was submitted with")
        t = self.d.wait_final(t["id"])
        self.assertEqual((t["state"], t["attempt"], t["max_attempts"]),
                         ("succeeded", 3, 4), json.dumps(t))
        self.assertEqual([a["n"] for a in t["attempts"]], [1, 2, 3],
                         "attempts numbered on, history kept")
        self.assertEqual([a["outcome"] for a in t["attempts"]],
                         ["exit", "exit", "success"])

    def test_retry_refused_while_another_task_holds_its_unique_key(self):
        # Queued again, the failed task would hold its key beside the one
        # that took it since: the store's index refused that write, and
        # with it every commit after, until forkqd restarted.
        t = self.d.submit(fq("exit", 1), unique="k", max_attempts=1)
        self.assertEqual(self.d.wait_final(t["id"])["state"], "failed")
        holder = self.d.submit(fq("exit", 0), unique="k",
                               delay_ms=3600 * 1000)
        check_error(self, self.d.request({"op": "retry", "id": t["id"]}),
                    "conflict", "task %d" % holder["id"])
        after = self.d.submit(fq("exit", 0))
        self.assertEqual(self.d.wait_final(after["id"])["state"],
                         "succeeded")
        self.d.ok({"op": "cancel", "id": holder["id"]})
        ans = self.d.ok({"op": "retry", "id": t["id"]})
        self.assertIn(ans["task"]["state"], ("queued", "running", "failed"))

    def test_retry_requeues_canceled_at_once(self):
        t = self.d.submit(fq("exit", 0), delay_ms=HOUR_MS)
        self.d.ok({"op": "cancel", "id": t["id"]})
        rc, out, err = self.d.cli("retry", t["id"])
        self.assertEqual(rc, 0, err)
        t = self.d.wait_final(t["id"])
        self.assertEqual((t["state"], t["attempt"], t["max_attempts"]),
                         ("succeeded", 1, 6), json.dumps(t))

    def test_unique_answers_existing(self):
        a = self.d.ok({"op": "submit", "argv": fq("exit", 0),
                       "unique": "k1", "delay_ms": HOUR_MS})
        self.assertNotIn(a.get("duplicate"), (True,))
        b = self.d.ok({"op": "submit", "argv": fq("exit", 1),
                       "unique": "k1", "delay_ms": HOUR_MS})
        self.assertIs(b.get("duplicate"), True, b)
        self.assertEqual(b["task"]["id"], a["task"]["id"])
        self.assertEqual(b["task"]["argv"], fq("exit", 0),
                         "the existing task is unchanged")
        other = self.d.ok({"op": "submit", "argv": fq("exit", 0),
                           "unique": "k2", "delay_ms": HOUR_MS})
        self.assertNotEqual(other["task"]["id"], a["task"]["id"])
        rc, out, err = self.d.cli("submit", "--unique", "k1", "--",
                                  *fq("exit", 0))
        self.assertEqual((rc, out.strip()), (0, str(a["task"]["id"])), err)
        self.assertEqual(len(self.d.list()), 2)
        # Once final, the key is free again.
        self.d.ok({"op": "cancel", "id": a["task"]["id"]})
        c = self.d.ok({"op": "submit", "argv": fq("exit", 0),
                       "unique": "k1"})
        self.assertNotIn(c.get("duplicate"), (True,))
        self.assertNotEqual(c["task"]["id"], a["task"]["id"])

    def test_unique_also_matches_running(self):
        gate = self.path("gate")
        a = self.d.submit(fq("waitfile", gate, 60), unique="run-key")
        self.d.wait_running_pid(a["id"])
        b = self.d.ok({"op": "submit", "argv": fq("exit", 0),
                       "unique": "run-key"})
        self.assertIs(b.get("duplicate"), True, b)
        self.assertEqual(b["task"]["id"], a["id"])
        self.touch(gate)
        self.d.wait_final(a["id"])

    def test_unique_under_concurrent_submits(self):
        n = 20
        self.d.wait_ready()
        barrier = threading.Barrier(n)
        answers = [None] * n
        errors = []

        def client(i):
            try:
                c = self.d.connect()
                try:
                    barrier.wait(30)
                    answers[i] = c.request(
                        {"op": "submit", "argv": fq("exit", 0),
                         "unique": "race", "delay_ms": HOUR_MS,
                         "name": "c%d" % i})
                finally:
                    c.close()
            except Exception as e:      # reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=client, args=(i,))
                   for i in range(n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        self.assertEqual(errors, [])
        self.assertTrue(all(a is not None and a.get("ok") is True
                            for a in answers), answers)
        ids = {a["task"]["id"] for a in answers}
        self.assertEqual(len(ids), 1, "one task for the key: %s" % ids)
        fresh = [a for a in answers if a.get("duplicate") is not True]
        self.assertEqual(len(fresh), 1, "exactly one submit created it")
        self.assertEqual(len(self.d.list()), 1)
        self.assertEqual(self.d.status()["counts"]["queued"], 1)

    def test_wait_op_on_retried_task_waits_for_final(self):
        t = self.d.submit(fq("counter", self.path("cnt"), 1),
                          max_attempts=2, backoff_base_ms=500,
                          backoff_max_ms=500)
        ans = self.d.ok({"op": "wait", "id": t["id"], "timeout_ms": 30000},
                        timeout=40)
        self.assertEqual((ans["task"]["state"], ans["task"]["attempt"]),
                         ("succeeded", 2))

    def test_max_attempts_stays_an_int_however_often_retried(self):
        # Each retry raises max_attempts by the attempts of one run: with
        # a million a run, 2,148 retries went past 2^31 and it read
        # negative. Starting is paused, so each retry's cancel comes first.
        self.d.ok({"op": "pause"})
        t = self.d.submit(fq("exit", 0), max_attempts=1000000)
        self.d.ok({"op": "cancel", "id": t["id"]})
        pair = (json.dumps({"op": "retry", "id": t["id"]}) + "\n" +
                json.dumps({"op": "cancel", "id": t["id"]}) + "\n").encode()
        with self.d.connect(timeout=120) as c:
            c.send_raw(pair * 2200)
            for _ in range(2 * 2200):
                self.assertIs(c.recv()["ok"], True)
        t = self.d.get(t["id"])
        self.assertEqual((t["state"], t["max_attempts"]),
                         ("canceled", 2 ** 31 - 1), json.dumps(t))

    def test_unique_must_be_a_string(self):
        check_error(self, self.d.request({"op": "submit", "argv": fq(),
                                          "unique": 5}),
                    "bad_request", "unique")


if __name__ == "__main__":
    fqtest.main()
