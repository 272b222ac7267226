"""The structured event log (spec section 6), `logs`, `watch`, SIGHUP."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fqtest                                             # noqa: E402
from fqtest import LEVELS, TS_RE, check_error, fq, wait_for  # noqa: E402


class Events(fqtest.TestCase):

    def test_watcher_too_far_behind_is_dropped_with_a_last_event(self):
        # A watcher that reads nothing while 20 MiB of events go by is
        # cut off after a last line, an event like any other (with ts).
        w = self.d.connect()
        self.assertIs(w.request({"op": "watch"})["ok"], True)
        with self.d.connect() as c:
            for i in range(100):
                c.send({"op": "submit", "delay_ms": 3600 * 1000,
                        "argv": fq("exit", 0) + ["x" * 200000]})
                self.assertIs(c.recv()["ok"], True)
        last = w.rest()[-1]
        w.close()
        self.assertEqual(last["event"], "watch.dropped", last)
        self.assertEqual(last["level"], "warn")
        self.assertRegex(last["ts"], TS_RE)

    def test_watchers_that_never_read_are_bounded_together(self):
        """Watchers of a full backlog that never read nor close: each took
        every event the ring let go, up to 16 MiB (8 here: 128 MiB), and
        kept it, and its fd, once dropped (400 took forkqd to 6.8 GB).
        Past 64 MiB over all watchers one 1 MiB or more behind is dropped
        too; a dropped one keeps a line at most, and is closed once it
        has read nothing for 10 s. A watcher that reads is not dropped
        for the others."""
        asan = os.environ.get("ASAN_OPTIONS")
        d = self.start_daemon(env={"ASAN_OPTIONS": (asan + ":" if asan
                                                    else "") +
                                   "quarantine_size_mb=0"})
        fds = lambda: len(os.listdir("/proc/%d/fd" % d.pid))
        # Lines of 3.5 KB, kept in memory (a longer one is spilled).
        line = (json.dumps({"op": "submit", "delay_ms": 3600 * 1000,
                            "argv": fq("exit", 0) + ["x" * 3400]}) +
                "\n").encode()

        def submit(n):
            with d.connect(timeout=300) as c:
                for i in range(0, n, 500):
                    c.send_raw(line * min(500, n - i))
                    for _ in range(min(500, n - i)):
                        self.assertIs(c.recv()["ok"], True)
        submit(16384)       # the ring is full
        with d.connect() as c:
            c.request({"op": "status"})
            base_fds = fds()
        ws = []
        for _ in range(8):
            s = socket.socket(socket.AF_UNIX)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(d.sock)
            s.sendall(b'{"op": "watch", "backlog": 16384}\n')
            ws.append(s)
        reader_events = []

        def read_all():
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(d.sock)
                s.sendall(b'{"op": "watch"}\n')
                f = s.makefile("rb")
                for ln in f:
                    reader_events.append(json.loads(ln).get("event"))
        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        peak, stop = [0], threading.Event()

        def sample():
            while not stop.wait(0.05):
                peak[0] = max(peak[0], fqtest.vm_rss_kb(d.pid) or 0)
        sampler = threading.Thread(target=sample, daemon=True)
        try:
            rss0 = fqtest.vm_rss_kb(d.pid)
            sampler.start()
            submit(6000)    # each evicts a line into every watcher
            stop.set()
            sampler.join()
            self.assertLess(peak[0] - rss0, 100 * 1024,
                            "kB more at most with 8 watchers that never "
                            "read")
            wait_for(lambda: fds() <= base_fds + 1, timeout=40,
                     what="forkqd to close the dropped watchers")
            self.assertGreater(reader_events.count("task.submitted"), 0)
            self.assertNotIn("watch.dropped", reader_events)
        finally:
            stop.set()
            for s in ws:
                s.close()
            d.stop()
            reader.join(30)

    def test_a_large_backlog_is_paced_and_arrives_whole(self):
        # 20 MB of events in the ring, asked for as a backlog by three
        # watchers that do not read yet: forkqd once copied all of it for
        # each (60 MB), or cut it off at 16 MiB; it now sends each as its
        # client reads, and every line arrives, the newest included.
        ids = []
        with self.d.connect() as c:
            for i in range(100):
                c.send({"op": "submit", "delay_ms": 3600 * 1000,
                        "argv": fq("exit", 0) + ["x" * 200000]})
                ans = c.recv()
                self.assertIs(ans["ok"], True)
                ids.append(ans["task"]["id"])
        rss0 = fqtest.vm_rss_kb(self.d.pid)
        ws = []
        for _ in range(3):
            w = self.d.connect()
            w.send({"op": "watch", "backlog": 1000, "follow": False})
            ws.append(w)
        with self.d.connect() as other:
            for _ in range(20):     # loop passes go by meanwhile
                self.assertIs(other.request({"op": "status"})["ok"], True)
        self.assertLess(fqtest.vm_rss_kb(self.d.pid) - rss0, 30 * 1024,
                        "kB more with the three backlogs unread")
        for w in ws:
            lines = w.rest()
            w.close()
            self.assertIs(lines[0].get("ok"), True, lines[0])
            submitted = [e["task"] for e in lines[1:]
                         if e.get("event") == "task.submitted"]
            self.assertEqual(submitted, ids)
            self.assertNotIn("watch.dropped",
                             {e.get("event") for e in lines})

    def test_long_events_are_kept_on_disk_and_come_back_whole(self):
        # task.submitted carries the argv: kept in memory, 300 submits of
        # 100 KB took 30 MB of forkqd (16,384 of them, 1.6 GB). A line
        # over 4 KiB is kept in STATE_DIR/events.spill; a backlog gets it
        # back as the log has it. ASan's quarantine of freed memory would
        # hide the difference: none for this forkqd.
        asan = os.environ.get("ASAN_OPTIONS")
        d = self.start_daemon(env={"ASAN_OPTIONS": (asan + ":" if asan
                                                    else "") +
                                   "quarantine_size_mb=0"})
        spill = os.path.join(d.dir, "events.spill")

        def submit(c, i):
            c.send({"op": "submit", "delay_ms": 3600 * 1000,
                    "argv": fq("exit", 0) + ["%d" % i + "x" * 100000]})
            self.assertIs(c.recv()["ok"], True)
        with d.connect() as c:
            for i in range(20):
                submit(c, i)
            rss0 = fqtest.vm_rss_kb(d.pid)
            for i in range(20, 320):
                submit(c, i)
        grown = fqtest.vm_rss_kb(d.pid) - rss0
        self.assertLess(grown, 12 * 1024, "kB more after 30 MB of events")
        self.assertGreater(os.path.getsize(spill), 300 * 100000)
        with d.connect() as w:
            w.send({"op": "watch", "backlog": 100000, "follow": False})
            lines = w.rest()
        self.assertIs(lines[0].get("ok"), True, lines[0])
        self.assertEqual(lines[1:], d.events())
        argvs = [e["argv"][-1] for e in lines if e.get("event") ==
                 "task.submitted"]
        self.assertEqual(argvs, ["%d" % i + "x" * 100000
                                 for i in range(320)])
        d.stop()
        self.assertFalse(os.path.exists(spill), "removed at exit")
        # One left by a forkqd that died is no ring of the next one.
        with open(spill, "wb") as f:
            f.write(b"stale" * 1000)
        d.start()
        self.assertFalse(os.path.exists(spill), "removed at start")

    def test_a_slow_reader_of_a_backlog_loses_none_of_it(self):
        # A backlog of the whole ring, read slowly while as many new
        # events push its oldest out: the pacing once let the watcher fall
        # out of the ring and be dropped after some 3 MB.
        line = (json.dumps({"op": "submit", "argv": fq("exit", 0),
                            "delay_ms": 3600 * 1000}) + "\n").encode()

        def submit(n):
            # Sent from a thread: forkqd reads no more of a client that
            # leaves 4 MiB of answers unread.
            with self.d.connect(timeout=120) as c:
                th = threading.Thread(target=c.send_raw, args=(line * n,))
                th.start()
                ids = [c.recv()["task"]["id"] for _ in range(n)]
                th.join()
                return ids
        ids = submit(17000)
        w = self.d.connect(timeout=120)
        w.send({"op": "watch", "backlog": 16384, "follow": False})
        self.assertIs(w.recv()["ok"], True)
        submit(8000)
        lines = w.rest()
        w.close()
        self.assertNotIn("watch.dropped", {e.get("event") for e in lines})
        got = [e["task"] for e in lines if e.get("event") == "task.submitted"]
        self.assertEqual(got, ids[-16384:])

    def check_common(self, ev):
        self.assertRegex(ev.get("ts", ""), TS_RE, json.dumps(ev))
        self.assertIn(ev.get("level"), LEVELS, json.dumps(ev))
        self.assertIsInstance(ev.get("event"), str, json.dumps(ev))

    def test_daemon_started(self):
        ev = self.d.wait_event(lambda e: e.get("event") == "daemon.started",
                               what="daemon.started")
        self.check_common(ev)
        self.assertEqual(ev["level"], "info")
        self.assertEqual(ev["version"], self.d.status()["version"])
        self.assertEqual(ev["pid"], self.d.pid)
        self.assertEqual(os.path.realpath(ev["socket"]),
                         os.path.realpath(self.d.sock))
        self.assertEqual(os.path.realpath(ev["state_dir"]),
                         os.path.realpath(self.d.dir))
        self.assertEqual(ev["workers"], 2)

    def test_task_lifecycle_events(self):
        t = self.d.submit(fq("exit", 0), name="life", queue="qz")
        t = self.d.wait_final(t["id"])
        id = t["id"]
        self.d.wait_event(lambda e: e.get("event") == "task.succeeded"
                          and e.get("task") == id, what="task.succeeded")
        evs = self.d.task_events(id)
        for e in evs:
            self.check_common(e)
        names = [e["event"] for e in evs]
        self.assertEqual(names, ["task.submitted", "task.started",
                                 "task.attempt_ended", "task.succeeded"],
                         json.dumps(evs))
        sub, start, ended, done = evs
        self.assertEqual((sub["name"], sub["queue"], sub["argv"],
                          sub["level"]),
                         ("life", "qz", fq("exit", 0), "info"))
        pid = t["attempts"][0]["pid"]
        self.assertEqual((start["name"], start["attempt"], start["pid"],
                          start["level"]), ("life", 1, pid, "info"))
        self.assertEqual((ended["attempt"], ended["outcome"],
                          ended["exit_code"], ended["signal"],
                          ended["error"], ended["pid"], ended["level"]),
                         (1, "success", 0, None, None, pid, "info"))
        self.assertIsInstance(ended["duration_ms"], int)
        self.assertEqual((done["attempts"], done["level"]), (1, "info"))
        stamps = [e["ts"] for e in evs]
        self.assertEqual(stamps, sorted(stamps), "events in time order")

    def test_signal_attempt_event(self):
        t = self.d.submit(fq("signal", "KILL"), max_attempts=1)
        self.d.wait_final(t["id"])
        ev = self.d.wait_event(lambda e: e.get("event") ==
                               "task.attempt_ended" and
                               e.get("task") == t["id"])
        self.assertEqual((ev["outcome"], ev["exit_code"], ev["signal"],
                          ev["level"]), ("signal", None, "SIGKILL", "warn"))

    def test_every_line_well_formed(self):
        t = self.d.submit(fq("exit", 3), max_attempts=2,
                          backoff_base_ms=100, backoff_max_ms=100)
        self.d.wait_final(t["id"])
        c = self.d.submit(fq("sleep", 60))
        self.d.wait_running_pid(c["id"])
        self.d.ok({"op": "cancel", "id": c["id"]})
        self.d.wait_final(c["id"])
        self.d.wait_event(lambda e: e.get("event") == "task.canceled")
        with open(self.d.log, "rb") as f:
            data = f.read()
        self.assertTrue(data.endswith(b"\n"))
        for line in data.split(b"\n")[:-1]:
            ev = json.loads(line)
            self.check_common(ev)
            if ev["event"].startswith("task."):
                self.assertIsInstance(ev.get("task"), int, line)

    def test_logs_json_last_n(self):
        for _ in range(3):
            t = self.d.submit(fq("exit", 0))
            self.d.wait_final(t["id"])
        self.d.wait_event(lambda e: e.get("event") == "task.succeeded" and
                          e.get("task") == t["id"])
        rc, out, err = self.d.cli("logs", "-n", "5", "--json")
        self.assertEqual(rc, 0, err)
        lines = out.splitlines()
        self.assertEqual(len(lines), 5, out)
        got = [json.loads(l) for l in lines]
        for e in got:
            self.check_common(e)
        want = self.d.events()[-5:]
        self.assertEqual([(e["ts"], e["event"], e.get("task")) for e in got],
                         [(e["ts"], e["event"], e.get("task")) for e in want],
                         "the last 5 events, oldest first")
        rc, out, err = self.d.cli("logs", "--task", t["id"], "--json")
        self.assertEqual(rc, 0, err)
        evs = [json.loads(l) for l in out.splitlines()]
        self.assertTrue(evs)
        self.assertTrue(all(e.get("task") == t["id"] for e in evs), out)
        self.assertEqual(evs[0]["event"], "task.submitted")
        rc, out, err = self.d.cli("logs")
        self.assertEqual(rc, 0, err)
        self.assertIn("task.succeeded", out)
        self.assertIn("daemon.started", out)

    def test_logs_follow(self):
        self.d.wait_event(lambda e: e.get("event") == "daemon.started")
        p = self.track_proc(subprocess.Popen(
            [fqtest.FORKQ, "-s", self.d.sock, "logs", "-f", "-n", "1000",
             "--json"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=fqtest.client_env()))
        out = fqtest.JsonLines(p.stdout)

        def saw(pred):
            return any(pred(e) for e in out.lines())
        # The backlog first: then it is connected and following.
        wait_for(lambda: saw(lambda e: e.get("event") == "daemon.started"),
                 what="forkq logs -f to print the backlog")
        t = self.d.submit(fq("exit", 0))
        wait_for(lambda: saw(lambda e: e.get("task") == t["id"] and
                             e.get("event") == "task.succeeded"),
                 what="forkq logs -f to show the new task's events")
        self.assertIsNone(p.poll(), "forkq logs -f keeps following")

    def test_watch_backlog_no_follow(self):
        t = self.d.submit(fq("exit", 0))
        self.d.wait_final(t["id"])
        self.d.wait_event(lambda e: e.get("event") == "task.succeeded")
        with self.d.connect() as c:
            c.send({"op": "watch", "backlog": 3, "follow": False})
            self.assertEqual(c.recv(), {"ok": True})
            evs = [c.recv() for _ in range(3)]
            self.assertTrue(c.at_eof(), "closed after the backlog")
        for e in evs:
            self.check_common(e)
        self.assertEqual(evs[-1]["event"], "task.succeeded")
        with self.d.connect() as c:
            c.send({"op": "watch", "task": t["id"], "backlog": 1000,
                    "follow": False})
            self.assertEqual(c.recv(), {"ok": True})
            got = c.rest()
        self.assertEqual([e["event"] for e in got],
                         ["task.submitted", "task.started",
                          "task.attempt_ended", "task.succeeded"])
        self.assertTrue(all(e["task"] == t["id"] for e in got))
        with self.d.connect() as c:
            c.send({"op": "watch", "follow": False})
            self.assertEqual(c.recv(), {"ok": True})
            self.assertTrue(c.at_eof(), "backlog 0, no follow: just closed")

    def test_watch_backlog_after_a_pipelined_submit(self):
        """A backlog read right behind a submit on the same connection
        (one write, one read by forkqd) has that submit's event: the
        event waits for the commit, and so does the backlog."""
        with self.d.connect() as c:
            c.send_raw(json.dumps({"op": "submit", "argv": fq("exit", 0),
                                   "delay_ms": 3600 * 1000}).encode()
                       + b"\n" + json.dumps({"op": "watch", "backlog": 1,
                                              "follow": False}).encode()
                       + b"\n")
            t = c.recv()["task"]
            self.assertEqual(c.recv(), {"ok": True})
            got = c.rest()
        self.assertEqual([(e["event"], e.get("task")) for e in got],
                         [("task.submitted", t["id"])])

    def test_watch_follow_behind_pipelined_submits_misses_none(self):
        """A following watch read in the same pass as submits before it
        gets every one of their events, not only the newest backlog."""
        n = 20
        sub = json.dumps({"op": "submit", "argv": fq("exit", 0),
                          "delay_ms": 3600 * 1000}).encode() + b"\n"
        with self.d.connect() as c:
            c.send_raw(sub * n + json.dumps({"op": "watch", "backlog": 1,
                                             "follow": True}).encode()
                       + b"\n")
            ids = {c.recv()["task"]["id"] for _ in range(n)}
            self.assertEqual(c.recv(), {"ok": True})
            seen = set()
            while seen != ids:
                e = c.recv()
                if e.get("event") == "task.submitted":
                    seen.add(e["task"])

    def test_watch_follow(self):
        with self.d.connect() as c:
            c.send({"op": "watch"})
            self.assertEqual(c.recv(), {"ok": True})
            t = self.d.submit(fq("exit", 0))
            seen = []
            while not seen or seen[-1] != "task.succeeded":
                e = c.recv()
                self.check_common(e)
                if e.get("task") == t["id"]:
                    seen.append(e["event"])
            self.assertEqual(seen, ["task.submitted", "task.started",
                                    "task.attempt_ended", "task.succeeded"])
            # A watching connection answers nothing else but stays open.
            other = self.d.request({"op": "status"})
            self.assertIs(other["ok"], True)

    def test_watch_missing_task(self):
        check_error(self, self.d.request({"op": "watch", "task": 424242}),
                    "not_found")

    def test_a_line_cut_by_a_crash_is_ended_before_the_next_start_writes(self):
        # A SIGKILL stopped a write of many pages part way; the next
        # forkqd appended its first line to the cut one, and neither
        # parsed.
        d = self.start_daemon(start=False)
        cut = b'{"ts":"2026-01-01T00:00:00.000Z","level":"info","event":"tas'
        with open(d.log, "wb") as f:
            f.write(b'{"event":"whole"}\n' + cut)
        d.start()

        def lines():
            with open(d.log, "rb") as f:
                return f.read().split(b"\n")
        wait_for(lambda: any(b'"daemon.started"' in ln
                             for ln in lines()[:-1]),
                 what="daemon.started in the log")
        lines = lines()
        self.assertEqual(lines[:2], [b'{"event":"whole"}', cut])
        for line in lines[2:-1]:
            json.loads(line)

    def test_a_failed_reopen_is_said_in_the_log_still_open(self):
        # A directory where the log was: the reopen fails, which went only
        # to stderr (/dev/null under --daemon), while rotation would go on
        # to delete the file forkqd still writes.
        d = self.d
        old = self.rotate_log(d)
        os.mkdir(d.log)
        d.signal(signal.SIGHUP)
        ev = d.wait_event(lambda e: e.get("event") ==
                          "daemon.log_reopen_failed", path=old,
                          what="daemon.log_reopen_failed in the old file")
        self.assertEqual((ev["level"], ev["path"]), ("error", d.log))
        self.assertIn("directory", ev["error"].lower())
        t = d.wait_final(d.submit(fq("exit", 0))["id"])
        d.wait_event(lambda e: e.get("event") == "task.succeeded" and
                     e.get("task") == t["id"], path=old,
                     what="later events in the old file")
        os.rmdir(d.log)

    def rotate_log(self, d):
        """Once forkqd has logged its start, moves its log aside, as
        logrotate does before the SIGHUP; the old path."""
        d.wait_event(lambda e: e.get("event") == "daemon.started")
        old = d.log + ".1"
        os.rename(d.log, old)
        return old

    def test_sighup_reopens_log(self):
        d = self.d
        old = self.rotate_log(d)
        d.signal(signal.SIGHUP)
        deadline = time.monotonic() + 20 * fqtest.SCALE
        probes = 0
        start = time.monotonic()
        while not os.path.exists(d.log):
            self.assertLess(time.monotonic(), deadline,
                            "no new log file at %s after SIGHUP" % d.log)
            if time.monotonic() - start > 2 and probes < 20:
                d.submit(fq("exit", 0), name="probe")
                probes += 1
            time.sleep(0.1)
        t = d.submit(fq("exit", 0), name="after-hup")
        d.wait_final(t["id"])
        d.wait_event(lambda e: e.get("event") == "task.succeeded" and
                     e.get("task") == t["id"],
                     what="the new task's events in the reopened log")
        old_events = d.events(old)
        self.assertEqual(old_events[0]["event"], "daemon.started")
        self.assertFalse([e for e in old_events if e.get("task") == t["id"]],
                         "events after SIGHUP went to the renamed file")
        self.assertTrue(d.alive(), "SIGHUP must not stop forkqd")
        # Appending: a second SIGHUP keeps what is there.
        before = len(d.events())
        d.signal(signal.SIGHUP)
        t2 = d.submit(fq("exit", 0))
        d.wait_final(t2["id"])
        d.wait_event(lambda e: e.get("event") == "task.succeeded" and
                     e.get("task") == t2["id"])
        self.assertGreater(len(d.events()), before)
        self.assertTrue(any(e.get("task") == t["id"] for e in d.events()),
                        "reopening must append, not truncate")

    def test_log_format_text(self):
        d = self.start_daemon(extra_args=["--log-format", "text"])
        t = d.submit(fq("exit", 3), max_attempts=1)
        d.wait_final(t["id"])
        # The log reads "ts level event key=value ..."; watchers get JSON.
        line_re = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "
                             r"(debug|info|warn|error) [a-z_.]+( \S+=.*)?$")

        def ended():
            with open(d.log) as f:
                lines = f.read().splitlines()
            return [x for x in lines if " task.attempt_ended " in x] or None
        ended_line, = wait_for(ended, what="task.attempt_ended in the log")
        with open(d.log) as f:
            for line in f.read().splitlines():
                self.assertRegex(line, line_re)
        self.assertIn(" outcome=exit ", ended_line)
        self.assertIn(" exit_code=3 ", ended_line)
        self.assertIn(" task=%d " % t["id"], ended_line)
        with d.connect() as c:
            c.send({"op": "watch", "backlog": 1, "follow": False})
            self.assertEqual(c.recv(), {"ok": True})
            self.assertEqual(c.recv()["event"], "task.failed")

    def test_log_format_text_escapes_control_characters(self):
        """A task's name went into a text log raw when it held no space,
        quote or '=': a carriage return and an escape sequence in it
        forged a line on a terminal."""
        d = self.start_daemon(extra_args=["--log-format", "text"])
        for name in ("job\r\x1b[2Kforged", "a\u009bb", "del\x7f"):
            with self.subTest(name=name):
                t = d.submit(fq("exit", 0), name=name)
                d.wait_final(t["id"])

                def submitted():
                    with open(d.log, "rb") as f:
                        lines = f.read().splitlines()
                    return [x for x in lines if b" task.submitted " in x
                            and b" task=%d " % t["id"] in x] or None
                line, = wait_for(submitted, what="task.submitted")
                # DEL is quoted, not escaped: JSON leaves it, and
                # terminals do nothing with it.
                self.assertIsNone(re.search(rb"[\x00-\x1f]|\xc2[\x80-\x9f]",
                                            line), line)
                quoted = re.search(rb' name=("(?:[^"\\]|\\.)*") ', line)
                self.assertIsNotNone(quoted, line)
                self.assertEqual(json.loads(quoted.group(1)), name)

    def test_stuck_log_reader_does_not_stall_forkqd(self):
        # The log is a FIFO whose reader never reads (a wedged logger):
        # forkqd must go on answering and still stop when asked.
        fifo = self.path("log.fifo")
        os.mkfifo(fifo)
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, reader)
        d = self.start_daemon(extra_args=["-l", fifo])
        n = 1500
        with d.connect() as c:
            for i in range(n):
                c.send({"op": "submit", "argv": fq("exit", 0),
                        "name": "x" * 200, "max_attempts": 1})
            ids = [c.recv(timeout=60)["task"]["id"] for _ in range(n)]
        self.assertEqual(d.wait_final(ids[-1], timeout=120)["state"],
                         "succeeded")
        self.assertEqual(d.stop(timeout=30), 0)
        data = b""
        while True:
            try:
                chunk = os.read(reader, 1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        lines = data.decode().splitlines()
        self.assertGreater(len(lines), 0)
        for line in lines:
            json.loads(line)

    def test_diagnostics_on_a_shared_stderr_do_not_cut_event_lines(self):
        # The event log on forkqd's stderr, a pipe read late (a logger
        # under s6 or runit): forkqd's own warnings (here: each task's
        # output cannot be kept, and its notify socket is missing) once
        # went to the fd between the part of an event line that went in
        # and the rest of it.
        fifo = self.path("stderr.fifo")
        os.mkfifo(fifo)
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, reader)
        writer = os.open(fifo, os.O_WRONLY)
        d = self.start_daemon(extra_args=["-l", "-"], start=False, env={
            "NOTIFY_SOCKET": self.path("no-such-notify-socket")})
        d.preexec = lambda: os.dup2(writer, 2)
        try:
            d.start()
        finally:
            os.close(writer)    # forkqd's copy is the last: EOF at its end
        for i in range(1, 61):  # a file where each task's output goes
            open(os.path.join(d.dir, "output", str(i)), "w").close()
        go, chunks, ids = threading.Event(), [], []

        def read_all():     # from when the submits are in, to the end
            go.wait()
            os.set_blocking(reader, True)
            while True:
                chunk = os.read(reader, 1 << 20)
                if not chunk:
                    return
                chunks.append(chunk)
        th = threading.Thread(target=read_all)
        th.start()
        try:
            with d.connect() as c:
                for i in range(60):
                    c.send({"op": "submit", "argv": fq("argv") +
                            ["y" * 10000], "max_attempts": 1})
                    a = c.recv(timeout=60)
                    self.assertIs(a["ok"], True)
                    ids.append(a["task"]["id"])
            for i in ids:       # each output's warning is in
                d.wait_final(i)
        finally:
            go.set()
        self.assertEqual(d.stop(timeout=30), 0)
        th.join(fqtest.DEADLINE)
        lines = b"".join(chunks).decode().splitlines()
        warned = [ln for ln in lines if ln.startswith("forkqd: ")]
        self.assertTrue(any("notify" in ln for ln in warned), warned)
        self.assertGreater(len(warned), 30, "a warning for each output")
        for line in lines:
            if line.startswith("forkqd: "):
                self.assertNotIn('"event"', line)
            else:
                json.loads(line)

    def test_sighup_with_no_reader_on_the_log_fifo_does_not_hang(self):
        # -l names a FIFO whose reader went away: the reopen of SIGHUP
        # once waited in open(2) for a new one, with the whole loop.
        fifo = self.path("log.fifo")
        os.mkfifo(fifo)
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        d = self.start_daemon(extra_args=["-l", fifo])
        os.close(reader)
        d.signal(signal.SIGHUP)
        t = d.submit(fq("exit", 0))
        self.assertEqual(d.wait_final(t["id"])["state"], "succeeded")
        wait_for(lambda: "reopening the log" in d.stderr(),
                 what="forkqd to say it could not reopen the log")
        self.assertEqual(d.stop(timeout=30), 0)

    def test_log_appends_across_restarts(self):
        d = self.d
        d.wait_event(lambda e: e.get("event") == "daemon.started")
        self.assertEqual(d.stop(), 0)
        d.start()
        d.wait_event(lambda e: e.get("event") == "daemon.started" and
                     e.get("pid") == d.pid)
        starts = [e for e in d.events() if e["event"] == "daemon.started"]
        self.assertEqual(len(starts), 2, "the log is opened for appending")


if __name__ == "__main__":
    fqtest.main()
