"""The socket protocol (spec section 7): answer shapes, bad requests,
framing, pipelining."""

import base64
import json
import os
import signal
import socket
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fqtest                                             # noqa: E402
from fqtest import (MAX_LINE, STATES, check_error, fq,
                    parse_ts, wait_for)                   # noqa: E402

HOUR_MS = 3600 * 1000


class ProtocolShapes(fqtest.TestCase):

    def test_submit_answer_has_every_field(self):
        before = time.time()
        ans = self.d.ok({"op": "submit", "argv": fq("sleep", 0),
                         "delay_ms": HOUR_MS})
        self.assertIs(ans["ok"], True)
        self.assertNotIn(ans.get("duplicate"), (True,),
                         "a plain submit is no duplicate")
        t = ans["task"]
        self.check_task_shape(t)
        self.assertIsInstance(t["id"], int)
        self.assertEqual(t["name"], "fqtask", "default name is the "
                         "basename of PROGRAM")
        self.assertEqual(t["queue"], "default")
        self.assertEqual(t["argv"], fq("sleep", 0))
        self.assertEqual(t["state"], "queued")
        self.assertEqual(t["priority"], 0)
        self.assertEqual(t["attempt"], 0)
        self.assertEqual(t["max_attempts"], 3, "default retries 2")
        self.assertEqual(t["uid"], os.getuid())
        created = parse_ts(t["created_at"])
        self.assertGreater(created, before - 2)
        self.assertLess(created, time.time() + 2)
        run_at = parse_ts(t["run_at"])
        self.assertAlmostEqual(run_at - created, 3600, delta=2)
        for k in ("started_at", "finished_at", "outcome", "exit_code",
                  "signal", "error", "progress", "progress_message", "pid",
                  "last_heartbeat_at", "unique"):
            self.assertIsNone(t[k], "%s of a new task must be null: %s"
                              % (k, json.dumps(t)))
        for k in ("timeout_ms", "heartbeat_timeout_ms"):
            self.assertIn(t[k], (None, 0), "%s unset: null or 0" % k)

    def test_submit_fields_echoed(self):
        t = self.d.submit(fq("sleep", 0), name="my name", queue="q1",
                          priority=-1000, timeout_ms=5000,
                          heartbeat_timeout_ms=7000, max_attempts=5,
                          delay_ms=HOUR_MS, unique="u-1")
        self.check_task_shape(t)
        self.assertEqual((t["name"], t["queue"], t["priority"],
                          t["timeout_ms"], t["heartbeat_timeout_ms"],
                          t["max_attempts"], t["unique"]),
                         ("my name", "q1", -1000, 5000, 7000, 5, "u-1"))
        t2 = self.d.submit(fq("sleep", 0), priority=1000, delay_ms=HOUR_MS)
        self.assertEqual(t2["priority"], 1000)
        self.assertGreater(t2["id"], t["id"])

    def test_run_at_field(self):
        # TIME as the CLI takes it: unix seconds or RFC 3339.
        at = int(time.time()) + 7200
        t = self.d.submit(fq("sleep", 0), run_at=at)
        self.assertAlmostEqual(parse_ts(t["run_at"]), at, delta=1.5)
        self.assertEqual(t["state"], "queued")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at + 60))
        t = self.d.submit(fq("sleep", 0), run_at=stamp)
        self.assertAlmostEqual(parse_ts(t["run_at"]), at + 60, delta=1.5)
        check_error(self, self.d.request({"op": "submit",
                                          "argv": fq("sleep", 0),
                                          "run_at": "tomorrowish"}),
                    "bad_request", "run_at")
        # To the last ms of 9999, as RFC 3339 or unix seconds in a string
        # (refused before as outside the years, or past 2169).
        for at, want in (("9999-12-31T23:59:59.999Z",
                          "9999-12-31T23:59:59.999Z"),
                         ("253402300799", "9999-12-31T23:59:59.000Z")):
            t = self.d.submit(fq("sleep", 0), run_at=at)
            self.assertEqual(t["run_at"], want)
            self.d.ok({"op": "cancel", "id": t["id"]})

    def test_get_finished_task_and_attempt_shape(self):
        t = self.d.submit(fq("exit", 0))
        ans = self.d.ok({"op": "get", "id": t["id"]})
        self.check_task_shape(ans["task"])
        self.assertIsInstance(ans["task"].get("attempts"), list)
        done = self.d.wait_final(t["id"])
        self.check_task_shape(done)
        self.assertEqual(done["state"], "succeeded")
        self.assertEqual(done["outcome"], "success")
        self.assertEqual(done["exit_code"], 0)
        self.assertIsNone(done["signal"])
        self.assertIsNone(done["error"])
        self.assertEqual(done["attempt"], 1)
        started = parse_ts(done["started_at"])
        finished = parse_ts(done["finished_at"])
        self.assertLessEqual(parse_ts(done["created_at"]), started + 0.001)
        self.assertLessEqual(started, finished)
        atts = done["attempts"]
        self.assertEqual(len(atts), 1, json.dumps(done))
        a = atts[0]
        self.check_attempt_shape(a)
        self.assertEqual(a["n"], 1)
        self.assertIsInstance(a["pid"], int)
        self.assertGreater(a["pid"], 0)
        self.assertEqual(parse_ts(a["started_at"]), started)
        self.assertGreaterEqual(parse_ts(a["finished_at"]),
                                parse_ts(a["started_at"]))
        self.assertIsInstance(a["duration_ms"], int)
        self.assertGreaterEqual(a["duration_ms"], 0)
        self.assertEqual((a["outcome"], a["exit_code"], a["signal"],
                          a["error"]), ("success", 0, None, None))
        for k in ("max_rss_kb", "user_cpu_ms", "sys_cpu_ms"):
            self.assertIsInstance(a[k], int, "%s: %s" % (k, json.dumps(a)))
            self.assertGreaterEqual(a[k], 0)
        self.assertGreater(a["max_rss_kb"], 0, "a process uses some memory")

    def test_max_rss_is_not_forkqds_peak(self):
        # A task shares forkqd's memory until its exec, and the kernel then
        # takes the larger peak for the task's: /bin/true's max_rss_kb was
        # forkqd's highest size ever, here after one large list answer.
        self.check_max_rss(self.d, self.d.pid)

    def test_max_rss_is_not_forkqds_peak_under_daemon(self):
        # The reset went to the process that forked the daemon, gone.
        d = self.start_daemon(start=False, extra_args=["--daemon"])
        pid = self.start_daemonized(d)
        self.check_max_rss(d, pid)
        self.end_daemonized(pid, signal.SIGTERM)

    def check_max_rss(self, d, pid):
        for _ in range(30):
            d.submit(["/bin/true", "x" * 500000], delay_ms=HOUR_MS)
        d.ok({"op": "list", "limit": 100})
        peak = fqtest.status_kb(pid, "VmHWM")
        if peak - fqtest.vm_rss_kb(pid) < 8000:
            self.skipTest("forkqd's peak did not rise above its size")
        t = d.wait_final(d.submit(["/bin/true"])["id"])
        self.assertLess(t["attempts"][0]["max_rss_kb"], peak - 4000,
                        "forkqd's peak was %d kB" % peak)

    def test_list_shape_order_and_filters(self):
        ids = []
        for i in range(4):
            ids.append(self.d.submit(
                fq("sleep", 0), name="n%d" % i, delay_ms=HOUR_MS,
                queue="qa" if i % 2 else "qb")["id"])
        tasks = self.d.list()
        for t in tasks:
            self.check_task_shape(t)
        self.assertEqual([t["id"] for t in tasks], sorted(ids, reverse=True),
                         "newest first")
        self.assertEqual([t["id"] for t in self.d.list(limit=2)],
                         sorted(ids, reverse=True)[:2])
        self.assertEqual([t["id"] for t in self.d.list(queue="qa")],
                         [ids[3], ids[1]])
        self.assertEqual([t["id"] for t in self.d.list(before_id=ids[2])],
                         [ids[1], ids[0]])
        self.assertEqual([t["id"] for t in self.d.list(state="queued")],
                         sorted(ids, reverse=True))
        self.assertEqual(self.d.list(state="running"), [])
        self.assertEqual(self.d.list(state="succeeded"), [])

    def test_status_shape_counts_every_state(self):
        st = self.d.status()
        self.assertIsInstance(st["version"], str)
        self.assertTrue(st["version"])
        self.assertEqual(st["pid"], self.d.pid)
        self.assertIsInstance(st["uptime_ms"], int)
        self.assertGreaterEqual(st["uptime_ms"], 0)
        self.assertEqual(st["workers"], 2)
        self.assertEqual(st["counts"], {s: 0 for s in STATES},
                         "every state, zeros included")
        self.d.submit(fq("sleep", 0), delay_ms=HOUR_MS)
        t = self.d.submit(fq("exit", 0))
        self.d.wait_final(t["id"])
        st2 = self.d.status()
        self.assertEqual(st2["counts"], dict({s: 0 for s in STATES},
                                             queued=1, succeeded=1))
        self.assertGreaterEqual(st2["uptime_ms"], st["uptime_ms"])

    def test_wait_op(self):
        t = self.d.submit(fq("sleep", 2))
        ans = self.d.ok({"op": "wait", "id": t["id"], "timeout_ms": 100})
        self.assertIs(ans.get("timed_out"), True, ans)
        # A null timeout_ms is no timeout, not 0 ("do not wait").
        ans = self.d.ok({"op": "wait", "id": t["id"], "timeout_ms": None},
                        timeout=40)
        self.assertNotIn(ans.get("timed_out"), (True,))
        self.assertEqual(ans["task"]["state"], "succeeded")
        ans = self.d.ok({"op": "wait", "id": t["id"], "timeout_ms": 30000},
                        timeout=40)
        self.assertNotIn(ans.get("timed_out"), (True,))
        self.assertEqual(ans["task"]["state"], "succeeded")

    def test_missing_ids_are_not_found(self):
        self.d.submit(fq("sleep", 0), delay_ms=HOUR_MS)
        for op in ("get", "cancel", "retry", "wait", "output"):
            with self.subTest(op=op):
                ans = self.d.request({"op": op, "id": 987654})
                check_error(self, ans, "not_found")
        ans = self.d.request({"op": "watch", "task": 987654,
                              "follow": False})
        check_error(self, ans, "not_found")

    def test_prune(self):
        done = self.d.submit(fq("exit", 0))
        self.d.wait_final(done["id"])
        queued = self.d.submit(fq("exit", 0), delay_ms=HOUR_MS)
        # A null older_than_ms is absent, not 0 (which prunes everything).
        check_error(self, self.d.request({"op": "prune",
                                          "older_than_ms": None}),
                    "bad_request", "older_than_ms")
        self.assertEqual(self.d.get(done["id"])["state"], "succeeded")
        ans = self.d.request({"op": "prune", "older_than_ms": 0})
        if os.getuid() != 0:
            check_error(self, ans, "forbidden")
            return
        self.assertIs(ans.get("ok"), True, ans)
        self.assertEqual(ans["pruned"], 1)
        check_error(self, self.d.request({"op": "get", "id": done["id"]}),
                    "not_found")
        self.assertEqual(self.d.get(queued["id"])["state"], "queued")
        ans = self.d.ok({"op": "prune", "older_than_ms": HOUR_MS})
        self.assertEqual(ans["pruned"], 0)

    def test_prune_in_batches(self):
        # More tasks than one batch of the prune (500): it goes on over
        # several loop passes and answers once, with every task counted.
        if os.getuid() != 0:
            self.skipTest("prune is for root or forkqd's own user")
        ran = [self.d.submit(fq("output", 10)) for _ in range(2)]
        for t in ran:
            self.d.wait_final(t["id"])
        outdir = os.path.join(self.d.dir, "output")
        self.assertTrue(os.path.isdir(os.path.join(outdir,
                                                   str(ran[0]["id"]))))
        keep = self.d.submit(fq("exit", 0), delay_ms=HOUR_MS)
        self.assertEqual(self.d.stop(), 0)
        now = int(time.time() * 1000)
        self.d.insert_canceled_tasks([("old", now - 5000, now - 4000 + i)
                                      for i in range(1234)])
        self.d.start()
        ans = self.d.ok({"op": "prune", "older_than_ms": 0}, timeout=120)
        self.assertEqual(ans["pruned"], 1236)
        self.assertEqual([t["id"] for t in self.d.all_tasks()],
                         [keep["id"]])
        for t in ran:
            self.assertFalse(os.path.exists(os.path.join(outdir,
                                                         str(t["id"]))))
        self.assertEqual(self.d.status()["counts"]["canceled"], 0)

    def test_pruned_output_is_removed_off_the_loop(self):
        # Removing output is an unlink per file, milliseconds each on some
        # file systems: a prune of 500 tasks held every client for
        # seconds. The loop only moves the directory into output/.trash.
        if os.getuid() != 0:
            self.skipTest("prune is for root or forkqd's own user")
        t = self.d.wait_final(self.d.submit(fq("output", 10))["id"])
        outdir = os.path.join(self.d.dir, "output")
        mine = os.path.join(outdir, str(t["id"]))
        # About a second of unlinks for the thread (0.45 s for 40,000 on
        # ext4 here): the prune's answer comes long before they are done.
        for i in range(100000):
            os.close(os.open(os.path.join(mine, "x%d" % i),
                             os.O_CREAT | os.O_WRONLY, 0o600))
        trashed = os.path.join(outdir, ".trash", str(t["id"]))
        with self.d.connect() as c:
            self.assertEqual(c.request({"op": "prune", "older_than_ms": 0})
                             ["pruned"], 1)
            self.assertFalse(os.path.exists(mine))
            self.assertTrue(os.path.isdir(trashed),
                            "the output was removed before the answer")
        # 100,000 unlinks: about 1 s of CPU, minutes on a starved machine.
        wait_for(lambda: not os.path.exists(trashed), timeout=300,
                 what="the thread to remove the pruned output")

    def test_pruned_output_goes_whatever_was_put_in_it(self):
        # By hand: a directory with a file in it, and a symlink to a
        # directory whose file must stay. Both were left in .trash for
        # good, and said again at every prune. Then .trash itself removed
        # by hand: the next pruned output was left in output/ for good.
        if os.getuid() != 0:
            self.skipTest("prune is for root or forkqd's own user")
        outdir = os.path.join(self.d.dir, "output")
        t = self.d.wait_final(self.d.submit(fq("output", 10))["id"])
        mine = os.path.join(outdir, str(t["id"]))
        os.makedirs(os.path.join(mine, "sub", "deeper"))
        open(os.path.join(mine, "sub", "deeper", "f"), "w").close()
        keep = self.path("keep")
        os.mkdir(keep)
        open(os.path.join(keep, "precious"), "w").close()
        os.symlink(keep, os.path.join(mine, "link"))
        # A prune takes what finished before its cutoff, in whole ms.
        wait_for(lambda: time.time() > parse_ts(t["finished_at"]) + 0.002)
        self.assertEqual(self.d.ok({"op": "prune", "older_than_ms": 0})
                         ["pruned"], 1)
        wait_for(lambda: os.listdir(os.path.join(outdir, ".trash")) == [],
                 what="the thread to empty .trash")
        self.assertTrue(os.path.exists(os.path.join(keep, "precious")))
        os.rmdir(os.path.join(outdir, ".trash"))
        u = self.d.wait_final(self.d.submit(fq("output", 10))["id"])
        self.assertTrue(os.path.isdir(os.path.join(outdir, str(u["id"]))))
        wait_for(lambda: time.time() > parse_ts(u["finished_at"]) + 0.002)
        self.assertEqual(self.d.ok({"op": "prune", "older_than_ms": 0})
                         ["pruned"], 1)
        self.assertFalse(os.path.exists(os.path.join(outdir, str(u["id"]))))
        self.assertNotIn("could not", self.d.stderr())

    def test_output_left_in_trash_is_removed_at_start(self):
        self.assertEqual(self.d.stop(), 0)
        left = os.path.join(self.d.dir, "output", ".trash", "999")
        os.makedirs(left)
        for name in ("1.out", "1.err"):
            open(os.path.join(left, name), "w").close()
        self.d.start()
        wait_for(lambda: not os.path.exists(left),
                 what="what a stopped forkqd left in .trash to go")

    def test_output_held_for_a_prune_a_crash_cut_is_settled_at_start(self):
        # A crash between a prune's commit and the moves of its tasks'
        # output left that output in output/ for good (7 of 10 kills
        # during a prune). It now waits in output/.pending from before
        # the commit; the next start sends back what the store still has
        # and removes the rest.
        kept = self.d.wait_final(self.d.submit(fq("output", 10))["id"])
        self.assertEqual(self.d.stop(), 0)
        outdir = os.path.join(self.d.dir, "output")
        pending = os.path.join(outdir, ".pending")
        os.makedirs(pending, exist_ok=True)
        os.rename(os.path.join(outdir, str(kept["id"])),
                  os.path.join(pending, str(kept["id"])))
        gone = os.path.join(pending, "987654")
        os.mkdir(gone)
        open(os.path.join(gone, "1.out"), "w").close()
        self.d.start()
        wait_for(lambda: os.listdir(pending) == [] and
                 os.listdir(os.path.join(outdir, ".trash")) == [],
                 what=".pending and .trash to be settled")
        self.assertEqual(self.d.output(kept["id"]), b"abcdefghij")
        self.assertFalse(os.path.exists(os.path.join(outdir, "987654")))

    def test_status_after_pipelined_submit_counts_it(self):
        """status tells the counts on disk at once, but one pipelined
        behind a submit comes after that submit's answer and counts it."""
        line = (json.dumps({"op": "submit", "argv": fq("exit", 0),
                            "delay_ms": HOUR_MS}) + "\n"
                + json.dumps({"op": "status"}) + "\n")
        with self.d.connect() as c:
            c.send_raw(line.encode())
            sub = c.recv()
            st = c.recv()
        self.assertIs(sub.get("ok"), True, sub)
        self.assertEqual(st["status"]["counts"]["queued"], 1, st)

    def test_status_counts_follow_the_table(self):
        """status keeps its counts in memory; after every kind of change
        (submit, run, fail, cancel, dependency cancel, retry, prune, crash
        recovery) they must agree with the tasks table on disk."""
        def agree():
            counts = self.d.status()["counts"]
            db = self.d.db_connect()
            try:
                rows = dict(db.execute("SELECT state, count(*) FROM tasks"
                                       " GROUP BY state").fetchall())
            finally:
                db.close()
            want = {s: rows.get(s, 0) for s in STATES}
            return counts if counts == want else None

        def check(what):
            fqtest.wait_for(agree, what="status counts to match the table "
                            "after " + what)

        ok = self.d.submit(fq("exit", 0))
        bad = self.d.submit(fq("exit", 3), max_attempts=1)
        later = self.d.submit(fq("exit", 0), delay_ms=HOUR_MS)
        self.d.wait_final(ok["id"])
        self.d.wait_final(bad["id"])
        check("runs")
        self.d.ok({"op": "cancel", "id": later["id"]})
        dep = self.d.submit(fq("exit", 0), after=[bad["id"]])
        self.d.wait_final(dep["id"])
        check("cancels")
        self.d.ok({"op": "retry", "id": bad["id"]})
        self.d.wait_final(bad["id"])
        check("a retry")
        if os.getuid() == 0:
            self.d.ok({"op": "prune", "older_than_ms": 0})
            check("a prune")
        long = self.d.submit(fq("sleep", 60))
        self.d.submit(fq("exit", 0), delay_ms=HOUR_MS)
        self.d.wait_running_pid(long["id"])
        self.d.kill9()
        self.d.restart()
        check("crash recovery")
        self.d.ok({"op": "cancel", "id": long["id"]})
        self.d.wait_final(long["id"])
        check("a cancel of a running task")

    def test_long_default_name_is_cut_between_characters(self):
        # The name defaults to argv[0]'s base name, at most 256 bytes; a
        # cut inside a character would leave a name JSON cannot carry.
        # (byte 256 falls in the middle of the 128th "\u00e9")
        t = self.d.submit(["/opt/a" + "\u00e9" * 200], delay_ms=HOUR_MS)
        self.assertEqual(t.get("name"), "a" + "\u00e9" * 127, t)
        self.assertEqual(self.d.get(t["id"])["name"], "a" + "\u00e9" * 127)

    def test_unknown_fields_ignored(self):
        ans = self.d.request({"op": "submit", "argv": fq("exit", 0),
                              "frobnication": {"x": [1, 2]}, "zz": None})
        self.assertIs(ans.get("ok"), True, ans)
        ans = self.d.request({"op": "status", "whatever": 1})
        self.assertIs(ans.get("ok"), True, ans)


BAD = [
    # (what, raw line, field the message must name or None)
    ("malformed JSON", b'{"op": "status"', None),
    ("not JSON at all", b"hello there", None),
    ("invalid UTF-8", b'{"op": "\xff\xfe"}', None),
    # jansson's message quotes the line up to a bad escape, here inside
    # a two-byte character: the answer must still be an answer.
    ("bad escape before a multibyte character", b'{"op": "\\u0\xd0\x9a"}',
     None),
    # jansson's message named a flag of its own (JSON_ALLOW_NUL).
    ("a NUL in a string", b'{"op": "submit", "argv": ["/bin/true"], '
     b'"cwd": "/tmp/\\u0000x"}', "(NUL)"),
    ("array", b'["op", "status"]', None),
    ("string", b'"status"', None),
    ("number", b"42", None),
    ("null", b"null", None),
    ("no op", b'{"argv": ["x"]}', "op"),
    ("op not a string", b'{"op": 7}', "op"),
    ("unknown op", b'{"op": "frobnicate"}', "op"),
    ("missing argv", b'{"op": "submit"}', "argv"),
    ("argv null", b'{"op": "submit", "argv": null}', "argv"),
    ("argv empty", b'{"op": "submit", "argv": []}', "argv"),
    ("argv a string", b'{"op": "submit", "argv": "/bin/true"}', "argv"),
    ("argv not strings", b'{"op": "submit", "argv": ["/bin/true", 1]}',
     "argv"),
    ("argv nested", b'{"op": "submit", "argv": [["/bin/true"]]}', "argv"),
    ("priority 1001", b'{"op": "submit", "argv": ["/bin/true"], '
     b'"priority": 1001}', "priority"),
    ("priority -1001", b'{"op": "submit", "argv": ["/bin/true"], '
     b'"priority": -1001}', "priority"),
    ("priority a string", b'{"op": "submit", "argv": ["/bin/true"], '
     b'"priority": "high"}', "priority"),
    ("priority a fraction", b'{"op": "submit", "argv": ["/bin/true"], '
     b'"priority": 1.5}', "priority"),
    ("negative timeout_ms", b'{"op": "submit", "argv": ["/bin/true"], '
     b'"timeout_ms": -1}', "timeout_ms"),
    ("negative heartbeat_timeout_ms", b'{"op": "submit", "argv": '
     b'["/bin/true"], "heartbeat_timeout_ms": -5}', "heartbeat_timeout_ms"),
    ("max_attempts 0", b'{"op": "submit", "argv": ["/bin/true"], '
     b'"max_attempts": 0}', "max_attempts"),
    ("env value a number", b'{"op": "submit", "argv": ["/bin/true"], '
     b'"env": {"K": 1}}', "env"),
    ("env an array", b'{"op": "submit", "argv": ["/bin/true"], '
     b'"env": ["K=V"]}', "env"),
    ("name a number", b'{"op": "submit", "argv": ["/bin/true"], '
     b'"name": 5}', "name"),
    ("rlimits value a string", b'{"op": "submit", "argv": ["/bin/true"], '
     b'"rlimits": {"nofile": "many"}}', ("rlimits", "nofile")),
    ("duplicate key", b'{"op": "submit", "argv": ["/bin/true"], '
     b'"argv": ["/bin/false"]}', "argv"),
    ("duplicate op", b'{"op": "status", "op": "status"}', "op"),
    ("get id a string", b'{"op": "get", "id": "abc"}', "id"),
    ("get without id", b'{"op": "get"}', "id"),
    ("list limit a string", b'{"op": "list", "limit": "ten"}', "limit"),
    ("run_at a boolean", b'{"op": "submit", "argv": ["/bin/true"], '
     b'"run_at": true}', "run_at"),
    ("run_at a fraction", b'{"op": "submit", "argv": ["/bin/true"], '
     b'"run_at": 1.5}', "run_at"),
    ("run_at after 9999", b'{"op": "submit", "argv": ["/bin/true"], '
     b'"run_at": 253402300800}', "run_at"),
    # Offsets that take the time outside what RFC 3339 writes in UTC.
    ("run_at after 9999 in UTC", b'{"op": "submit", "argv": ["/bin/true"], '
     b'"run_at": "9999-12-31T23:59:59-23:59"}', "run_at"),
    ("run_at before 0000 in UTC", b'{"op": "submit", "argv": ["/bin/true"],'
     b' "run_at": "0000-01-01T00:00:00+00:01"}', "run_at"),
]


class SlowReaders(fqtest.TestCase):

    def test_answers_a_client_leaves_unread_hold_its_requests(self):
        # 1,000 gets of a 200 KB task at once, from a client that reads
        # nothing for now: forkqd once answered every line it had read
        # into memory (200 MB here). It stops at 4 MiB of answers, and
        # goes on as the client reads them. The bound leaves room for what
        # AddressSanitizer keeps of freed memory (some 50 MB here).
        big = self.d.submit(fq("exit", 0) + ["x" * 200000],
                            delay_ms=3600 * 1000)
        rss0 = fqtest.vm_rss_kb(self.d.pid)
        c = self.d.connect()
        line = (json.dumps({"op": "get", "id": big["id"]}) + "\n").encode()
        c.send_raw(line * 1000)
        with self.d.connect() as other:
            for _ in range(20):     # loop passes go by meanwhile
                self.assertIs(other.request({"op": "status"})["ok"], True)
        grown = fqtest.vm_rss_kb(self.d.pid) - rss0
        self.assertLess(grown, 100 * 1024, "kB more after the gets")
        for _ in range(1000):
            ans = c.recv()
            self.assertEqual(ans["task"]["id"], big["id"])
        c.close()


    def test_many_clients_that_leave_answers_unread_are_held_together(self):
        # 40 clients, each with 40 gets of a 200 KB task unread: 4 MiB
        # each was the only bound (160 MB here; 300 such clients took
        # forkqd to 1.5 GB). Past 32 MiB unsent over all clients, each
        # that has some is held; a client that reads is still answered,
        # and every held one gets all its answers once it reads.
        asan = os.environ.get("ASAN_OPTIONS")
        d = self.start_daemon(env={"ASAN_OPTIONS": (asan + ":" if asan
                                                    else "") +
                                   "quarantine_size_mb=0"})
        big = d.submit(fq("exit", 0) + ["x" * 200000], delay_ms=3600 * 1000)
        rss0 = fqtest.vm_rss_kb(d.pid)
        line = (json.dumps({"op": "get", "id": big["id"]}) + "\n").encode()
        hogs = [d.connect(timeout=120) for _ in range(40)]
        try:
            for c in hogs:
                c.send_raw(line * 40)
            with d.connect() as other:
                for _ in range(20):     # loop passes go by meanwhile
                    self.assertIs(other.request({"op": "status"})["ok"],
                                  True)
            grown = fqtest.vm_rss_kb(d.pid) - rss0
            self.assertLess(grown, 80 * 1024, "kB more after the gets")
            for c in hogs:
                for _ in range(40):
                    self.assertEqual(c.recv()["task"]["id"], big["id"])
        finally:
            for c in hogs:
                c.close()

    def test_costly_requests_do_not_hold_timers_back(self):
        """Clients send lists of a MiB each, 8 a client, and go. forkqd
        handled 256 of them before its timers had a turn: a 500 ms
        timeout fired seconds late. A pass now handles requests for 20 ms
        at most."""
        with self.d.connect() as c:
            line = json.dumps({"op": "submit", "argv": fq("exit", 0),
                               "delay_ms": 3600 * 1000}) + "\n"
            c.send_raw(line.encode() * 4000)
            for _ in range(4000):
                self.assertIs(c.recv()["ok"], True)
        t = self.d.submit(fq("sleep", 60), timeout_ms=500, max_attempts=1)
        self.d.wait_running_pid(t["id"])
        burst = b'{"op": "list", "limit": 100000}\n' * 8
        for _ in range(40):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(self.d.sock)
                s.sendall(burst)
        t = self.d.wait_final(t["id"], timeout=120)
        self.assertEqual(t["outcome"], "timeout", json.dumps(t))
        self.assertLess(t["attempts"][0]["duration_ms"],
                        2500 * fqtest.SCALE, "the timeout fired that late")

    def test_a_held_client_that_leaves_unread_lines_is_let_go(self):
        # A wait on a task that will not end for an hour, then more than a
        # line's worth of requests, then the client goes: forkqd once kept
        # the connection (and its fd) until the task ended, as it reads
        # nothing more while the wait holds it.
        later = self.d.submit(fq("exit", 0), delay_ms=3600 * 1000)
        fds = lambda: len(os.listdir("/proc/%d/fd" % self.d.pid))
        with self.d.connect() as a:
            # Answered after the submit's connection's end was seen: on a
            # loaded machine the count taken before that never came back.
            a.request({"op": "status"})
            base = fds()
            for _ in range(3):
                c = self.d.connect()
                c.send({"op": "wait", "id": later["id"]})
                c.send_raw(b'{"op":"status"}\n' * (MAX_LINE // 16 + 64))
                c.close()
            fqtest.wait_for(
                lambda: fds() == base,
                what="forkqd to close the connections of clients gone")


class SocketPath(fqtest.TestCase):

    def test_a_file_that_is_not_a_socket_is_left_alone(self):
        d = self.start_daemon(start=False)
        os.makedirs(os.path.dirname(d.sock), exist_ok=True)
        with open(d.sock, "w") as f:
            f.write("precious\n")
        d.start(wait=False)
        self.assertEqual(d.wait_exit(), 1, d.stderr())
        d.expect_alive = False
        self.assertIn("not a socket", d.stderr())
        with open(d.sock) as f:
            self.assertEqual(f.read(), "precious\n")


class BadRequests(fqtest.TestCase):

    def test_a_line_that_comes_a_byte_at_a_time_costs_little(self):
        # Each read searched the whole line so far for its end, and grew
        # its buffer by a copy of it: 20 clients adding a byte a ms to a
        # 1 MB line took 85% of a core. (Not a benchmark: a bound far
        # from both.)
        clients = [self.d.connect() for _ in range(20)]
        try:
            for c in clients:
                c.send_raw(b'{"op":"status","pad":"' + b"x" * 1000000)
            before = fqtest.cpu_seconds(self.d.pid)
            end = time.monotonic() + 3
            while time.monotonic() < end:
                for c in clients:
                    c.send_raw(b"x")
                time.sleep(0.001)
            used = fqtest.cpu_seconds(self.d.pid) - before
            for c in clients:
                c.send_raw(b'"}\n')
            for c in clients:
                self.assertIs(c.recv().get("ok"), True)
        finally:
            for c in clients:
                c.close()
        # 0.2 s here now; 1.7 to 2.1 s before.
        self.assertLess(used, 1.0, "CPU seconds for 3 s of trickle")

    def test_bad_requests_keep_the_connection(self):
        with self.d.connect() as c:
            for what, line, field in BAD:
                with self.subTest(what):
                    c.send_raw(line + b"\n")
                    ans = c.recv()
                    check_error(self, ans, "bad_request", field)
                    good = c.request({"op": "status"})
                    self.assertIs(good.get("ok"), True,
                                  "connection unusable after %s: %r"
                                  % (what, good))
        st = self.d.status()
        self.assertEqual(sum(st["counts"].values()), 0,
                         "a bad request created a task: %r" % st["counts"])

    def test_bad_fields_of_other_ops(self):
        t = self.d.submit(fq("exit", 0))
        self.d.wait_final(t["id"])
        cases = [
            ({"op": "output", "id": t["id"], "stream": "stdin"}, "stream"),
            ({"op": "output", "id": t["id"], "offset": -1}, "offset"),
            ({"op": "wait", "id": t["id"], "timeout_ms": "soon"},
             "timeout_ms"),
            ({"op": "watch", "backlog": "all"}, "backlog"),
            ({"op": "list", "state": "sleeping"}, "state"),
            ({"op": "cancel", "id": [t["id"]]}, "id"),
        ]
        with self.d.connect() as c:
            for req, field in cases:
                with self.subTest(req=req):
                    check_error(self, c.request(req), "bad_request", field)
            self.assertIs(c.request({"op": "get", "id": t["id"]})["ok"],
                          True)

    def test_empty_lines_ignored(self):
        with self.d.connect() as c:
            c.send_raw(b"\n\n" + json.dumps({"op": "status"}).encode() +
                       b"\n\n\n" +
                       json.dumps({"op": "get", "id": 424242}).encode() +
                       b"\n\n")
            a1 = c.recv()
            self.assertIs(a1.get("ok"), True, a1)
            self.assertIn("status", a1)
            a2 = c.recv()
            check_error(self, a2, "not_found")
            a3 = c.request({"op": "get", "id": 424243})
            check_error(self, a3, "not_found")
            self.assertIn("status", c.request({"op": "status"}),
                          "an empty line got an answer")

    def test_line_of_exactly_1mib_is_accepted(self):
        req = {"op": "submit", "argv": fq("exit", 0), "pad": ""}
        base = len(json.dumps(req).encode()) + 1
        req["pad"] = "x" * (MAX_LINE - base)
        line = json.dumps(req).encode() + b"\n"
        self.assertEqual(len(line), MAX_LINE)
        with self.d.connect() as c:
            c.send_raw(line)
            ans = c.recv()
            self.assertIs(ans.get("ok"), True,
                          "a 1 MiB line (newline included) is allowed: %r"
                          % {k: v for k, v in ans.items() if k != "task"})

    def test_answers_stay_within_1mib(self):
        """An answer is a line of at most 1 MiB too: a task whose object
        could not fit is refused, list stops at what fits, and output
        carries no more bytes than fit once in base64."""
        big = MAX_LINE - 1000
        ans = self.d.request({"op": "submit",
                              "argv": fq("exit", 0) + ["x" * big]})
        check_error(self, ans, "bad_request", "argv")
        # after counts too: ids in the task object take room.
        ans = self.d.request({"op": "submit",
                              "after": list(range(1, 8001)),
                              "argv": fq("exit", 0) + ["x" * 900000]})
        check_error(self, ans, "bad_request", "after")
        ids = []
        with self.d.connect() as c:
            for i in range(3):
                c.send({"op": "submit", "delay_ms": HOUR_MS,
                        "argv": fq("exit", 0) + [str(i) * 400000]})
                line = c.readline()
                self.assertLessEqual(len(line) + 1, MAX_LINE)
                ids.append(json.loads(line)["task"]["id"])
            c.send({"op": "list", "limit": 10})
            line = c.readline()
            self.assertLessEqual(len(line) + 1, MAX_LINE)
            a = json.loads(line)
            got = [t["id"] for t in a["tasks"]]
            self.assertEqual((got, a["more"]), ([ids[2], ids[1]], True))
            rest = c.request({"op": "list", "before_id": got[-1]})
            self.assertEqual([t["id"] for t in rest["tasks"]], [ids[0]])
            self.assertIs(rest["more"], False)
        # forkq list asks again for what did not fit; with --json it
        # prints each answer as forkqd sent it, a line each.
        rc, out, err = self.d.cli("list", "--json", "--limit", "10")
        self.assertEqual(rc, 0, err)
        lines = out.splitlines()
        for line in lines:
            self.assertLessEqual(len(line.encode()) + 1, MAX_LINE)
        pages = [json.loads(line) for line in lines]
        self.assertEqual([p["more"] for p in pages], [True, False])
        self.assertEqual([t["id"] for p in pages for t in p["tasks"]],
                         ids[::-1])
        rc, out, err = self.d.cli("list", "--limit", "10")
        self.assertEqual(rc, 0, err)
        self.assertEqual([int(line.split()[0]) for line in
                          out.splitlines()[1:]], ids[::-1])

        size = MAX_LINE + 5000
        t = self.d.submit(fq("output", size), timeout_ms=60000)
        self.assertEqual(self.d.wait_final(t["id"])["state"], "succeeded")
        with self.d.connect() as c:
            data = b""
            for _ in range(10):
                c.send({"op": "output", "id": t["id"], "offset": len(data),
                        "limit": MAX_LINE})
                line = c.readline()
                self.assertLessEqual(len(line) + 1, MAX_LINE)
                a = json.loads(line)
                data += base64.b64decode(a["data_b64"])
                self.assertEqual(a["offset"], len(data))
                if a["eof"]:
                    break
        self.assertEqual(len(data), size)

    def test_too_large_closes_connection_daemon_serves_on(self):
        other = self.d.connect()
        try:
            self.assertIs(other.request({"op": "status"})["ok"], True)
            req = {"op": "submit", "argv": fq("exit", 0), "pad": ""}
            base = len(json.dumps(req).encode()) + 1
            req["pad"] = "x" * (MAX_LINE - base + 1)
            line = json.dumps(req).encode() + b"\n"
            self.assertEqual(len(line), MAX_LINE + 1)
            with self.d.connect() as c:
                try:
                    c.send_raw(line)
                    c.send_raw(json.dumps({"op": "status"}).encode() +
                               b"\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass
                ans = c.recv()
                check_error(self, ans, "too_large")
                self.assertTrue(c.at_eof(), "connection must be closed")
            self.assertIs(other.request({"op": "status"})["ok"], True,
                          "another connection stopped working")
            st = self.d.status()
            self.assertEqual(sum(st["counts"].values()), 0,
                             "the oversized submit was acted on")
        finally:
            other.close()

    def test_endless_line_without_newline(self):
        with self.d.connect() as c:
            sent = 0
            try:
                while sent < 3 * MAX_LINE:
                    c.send_raw(b"a" * 65536)
                    sent += 65536
            except (BrokenPipeError, ConnectionResetError):
                pass
            ans = c.recv()
            check_error(self, ans, "too_large")
        self.assertIs(self.d.request({"op": "status"})["ok"], True)

    def test_pipelining_50_requests(self):
        keep = self.d.submit(fq("sleep", 0), name="keep", delay_ms=HOUR_MS)
        reqs = []
        for i in range(50):
            if i % 3 == 0:
                reqs.append({"op": "submit", "argv": fq("sleep", 0),
                             "name": "p%d" % i, "delay_ms": HOUR_MS})
            elif i % 3 == 1:
                reqs.append({"op": "get", "id": keep["id"]})
            else:
                reqs.append({"op": "get", "id": 900000 + i})
        with self.d.connect() as c:
            c.send_raw(b"".join(json.dumps(r).encode() + b"\n"
                                for r in reqs))
            answers = [c.recv() for _ in reqs]
        last_id = keep["id"]
        for i, (r, a) in enumerate(zip(reqs, answers)):
            with self.subTest(i=i):
                if r["op"] == "submit":
                    self.assertIs(a.get("ok"), True, a)
                    self.assertEqual(a["task"]["name"], r["name"],
                                     "answer %d out of order" % i)
                    self.assertGreater(a["task"]["id"], last_id)
                    last_id = a["task"]["id"]
                elif r["id"] == keep["id"]:
                    self.assertIs(a.get("ok"), True, a)
                    self.assertEqual(a["task"]["id"], keep["id"])
                else:
                    check_error(self, a, "not_found")

    def test_partial_line_in_pieces(self):
        name = "h\u00e9llo \u2713 \U0001f600"
        line = json.dumps({"op": "submit", "argv": fq("exit", 0),
                           "name": name, "delay_ms": HOUR_MS},
                          ensure_ascii=False).encode("utf-8") + b"\n"
        line += json.dumps({"op": "status"}).encode() + b"\n"
        # Cut inside the 4-byte emoji too.
        cut = line.index("\U0001f600".encode()) + 2
        pieces = [line[:5], line[5:20], line[20:cut], line[cut:-10],
                  line[-10:]]
        with self.d.connect() as c:
            for p in pieces:
                c.send_raw(p)
                time.sleep(0.2)
            a = c.recv()
            self.assertIs(a.get("ok"), True, a)
            self.assertEqual(a["task"]["name"], name)
            self.assertIn("status", c.recv())
        self.assertEqual(self.d.get(a["task"]["id"])["name"], name)

    def test_held_answer_reaches_a_client_that_shut_its_writing(self):
        # A client may send its request and shut its writing side: the
        # held wait is still answered (one answer per request), then the
        # connection ends.
        t = self.d.submit(fq("sleep", 1))
        with self.d.connect() as c:
            c.send({"op": "wait", "id": t["id"]})
            c.sock.shutdown(socket.SHUT_WR)
            ans = c.recv()
            self.assertEqual(ans["task"]["state"], "succeeded", ans)
            self.assertTrue(c.at_eof())

    def test_half_closed_client_that_then_closes_is_let_go(self):
        # Its held wait must not keep the connection until the task ends.
        fds = lambda: len(os.listdir("/proc/%d/fd" % self.d.proc.pid))
        with self.d.connect() as a:
            t = a.request({"op": "submit", "argv": fq("sleep", 0),
                           "delay_ms": HOUR_MS})["task"]
            # Answered after every earlier connection's end was seen:
            # forkqd's fds are now its own and a's.
            a.request({"op": "status"})
            base = fds()
            with self.d.connect() as c:
                c.send({"op": "wait", "id": t["id"]})
                c.sock.shutdown(socket.SHUT_WR)
                fqtest.wait_for(lambda: fds() == base + 1,
                                what="the held connection")
            fqtest.wait_for(lambda: fds() == base, timeout=30,
                            what="the closed connection to be let go")

    def test_pipelined_bursts_on_three_connections_at_once(self):
        """Bursts longer than forkqd handles in one pass, from clients at
        the same time: each gets every answer, in its own order, while a
        lone request on a fourth connection is answered too."""
        n = 400
        conns = [self.d.connect() for _ in range(3)]
        try:
            for k, c in enumerate(conns):
                c.send_raw(b"".join(
                    json.dumps({"op": "submit", "argv": fq("sleep", 0),
                                "name": "c%d-%d" % (k, i),
                                "delay_ms": HOUR_MS}).encode() + b"\n"
                    for i in range(n)))
            self.assertIs(self.d.request({"op": "status"})["ok"], True)
            for k, c in enumerate(conns):
                names = [c.recv()["task"]["name"] for _ in range(n)]
                self.assertEqual(names, ["c%d-%d" % (k, i)
                                         for i in range(n)])
        finally:
            for c in conns:
                c.close()
        self.assertEqual(self.d.status()["counts"]["queued"], 3 * n)

    def test_client_vanishing_does_not_hurt(self):
        # Half a request, then gone.
        c = self.d.connect()
        c.send_raw(b'{"op": "sub')
        c.close()
        # Many requests, then gone without reading the answers.
        c = self.d.connect()
        c.send_raw((json.dumps({"op": "status"}).encode() + b"\n") * 200)
        c.close()
        # A watcher that goes away.
        c = self.d.connect()
        self.assertIs(c.request({"op": "watch"})["ok"], True)
        c.close()
        t = self.d.submit(fq("exit", 0))
        self.assertEqual(self.d.wait_final(t["id"])["state"], "succeeded")
        self.assertIs(self.d.request({"op": "status"})["ok"], True)

    def test_many_connections_at_once(self):
        conns = []
        try:
            for _ in range(60):
                conns.append(self.d.connect())
            for i, c in enumerate(conns):
                c.send({"op": "get", "id": 5000 + i})
            for c in reversed(conns):
                check_error(self, c.recv(), "not_found")
        finally:
            for c in conns:
                c.close()


if __name__ == "__main__":
    fqtest.main()
