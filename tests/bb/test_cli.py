"""The programs' command lines (spec sections 1-3): help, version, exit
statuses, human and --json output, the state dir lock."""

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
from fqtest import (FORKQ, FORKQD, client_env, fq, parse_ts,
                    run_cli)                              # noqa: E402


def run_forkqd(*args, timeout=30):
    p = subprocess.run([FORKQD] + list(args), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout * fqtest.SCALE)
    return (p.returncode, p.stdout.decode("utf-8", "replace"),
            p.stderr.decode("utf-8", "replace"))



def run_cli_against(path, serve, *args):
    """run_cli(*args) against a fake forkqd listening at path, which hands
    its one client to serve(conn) and then closes it."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(30 * fqtest.SCALE)

    def accept_one():
        try:
            conn, _ = srv.accept()
            serve(conn)
            conn.close()
        except OSError:
            pass

    t = threading.Thread(target=accept_one)
    t.start()
    try:
        return run_cli(*args, sock=path)
    finally:
        t.join(60 * fqtest.SCALE)
        srv.close()

class Cli(fqtest.TestCase):

    def submit_id(self, *args, **kw):
        rc, out, err = self.d.cli("submit", *args, **kw)
        self.assertEqual(rc, 0, "forkq submit: " + err)
        self.assertRegex(out, r"^[0-9]+\n$", "submit prints the id")
        return int(out)

    def assert_forkq_error(self, err):
        self.assertRegex(err, r"^forkq: \S",
                         "errors go to stderr starting with 'forkq: '")
        self.assertEqual(len(err.strip().splitlines()), 1,
                         "one line: %r" % err)

    # help and version

    def test_forkq_help_and_version(self):
        rc, out, err = run_cli("--help")
        self.assertEqual(rc, 0, err)
        for cmd in ("submit", "status", "list", "show", "cancel", "retry",
                    "wait", "logs", "output", "heartbeat", "prune"):
            self.assertIn(cmd, out, "--help mentions %s" % cmd)
        rc, out, err = run_cli("--version")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"\d+\.\d+")

    def test_forkqd_help_and_version(self):
        rc, out, err = run_forkqd("--help")
        self.assertEqual(rc, 0, err)
        for flag in ("--socket", "--state-dir", "--workers", "--log",
                     "--kill-grace", "--shutdown-grace", "--heartbeat-rest"):
            self.assertIn(flag, out, "forkqd --help mentions %s" % flag)
        rc, out, err = run_forkqd("--version")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"\d+\.\d+")

    def test_versions_agree(self):
        _, cout, _ = run_cli("--version")
        _, dout, _ = run_forkqd("--version")
        v = self.d.status()["version"]
        self.assertIn(v, cout)
        self.assertIn(v, dout)

    def test_forkqd_bad_option(self):
        # getopt's own refusals were named by forkqd's path, not "forkqd:".
        for args in (("--no-such-option",), ("-x",), ("--kill-grace",)):
            with self.subTest(args=args):
                rc, out, err = run_forkqd(*args)
                self.assertEqual(rc, 2, err)
                self.assertTrue(err.startswith("forkqd: "), err)
        rc, out, err = run_forkqd("-j", "zero", "-D", self.path("x"),
                                  "-s", self.path("x.sock"))
        self.assertNotEqual(rc, 0)
        self.assertTrue("worker" in err.lower() or "-j" in err, err)

    def test_forkqd_bad_option_values_exit_2(self):
        cases = [(("-j", "0"), "-j"), (("--kill-grace", "5x"), "--kill-grace"),
                 (("--sync", "bogus"), "--sync"),
                 (("--cgroup", "maybe"), "--cgroup"),
                 (("--queue", "q"), "--queue"),
                 (("--max-load", "abc"), "--max-load"),
                 (("--max-load", "08:00-08:00=1"), "--max-load"),
                 (("--max-load", "nan"), "--max-load"),
                 (("--max-load", "08:00-24:30=1"), "--max-load"),
                 (("--min-free-mem", "5Q"), "--min-free-mem"),
                 (("--max-output", "-1"), "--max-output"),
                 (("--heartbeat-rest", "fast"), "--heartbeat-rest"),
                 (("--heartbeat-rest", "2m"), "--heartbeat-rest"),
                 (("--socket-mode", "999"), "--socket-mode"),
                 # strtol took these: "" made a socket of mode 0000.
                 (("--socket-mode", ""), "--socket-mode"),
                 (("--socket-mode", " 666"), "--socket-mode"),
                 (("--socket-mode", "+666"), "--socket-mode"),
                 (("-j", " 2"), "-j"), (("-j", "+2"), "-j"),
                 (("--retention", "7w"), "--retention"),
                 (("--default-retries", "-1"), "--default-retries"),
                 # Named by a later error as nothing ("state dir : ...").
                 (("-D", ""), "-D"), (("-s", ""), "-s"), (("-l", ""), "-l")]
        state = self.path("st")
        for args, opt in cases:
            with self.subTest(args=args):
                rc, out, err = run_forkqd("-D", state, "-s",
                                          self.path("st.sock"), *args)
                self.assertEqual(rc, 2, "forkqd %s: %s" % (args, err))
                self.assertRegex(err, r"^forkqd: " + re.escape(opt) + ":")
                self.assertEqual(len(err.splitlines()), 1, err)
        self.assertFalse(os.path.exists(state), "nothing was started")

    def test_forkqd_stray_operand_named(self):
        rc, out, err = run_forkqd("-D", self.path("st"), "-s",
                                  self.path("st.sock"), "extra")
        self.assertEqual(rc, 2, err)
        self.assertEqual(err.splitlines()[0],
                         "forkqd: unexpected argument 'extra'")

    # exit statuses

    def test_usage_errors_exit_2(self):
        cases = [(), ("frobnicate",), ("submit",), ("submit", "--"),
                 ("submit", "--priority", "high", "--", "/bin/true"),
                 ("submit", "--timeout", "soon", "--", "/bin/true"),
                 ("submit", "--rlimit", "as=lots", "--", "/bin/true"),
                 ("submit", "--env", "NOEQUALS", "--", "/bin/true"),
                 ("submit", "--no-such-flag", "--", "/bin/true"),
                 ("show",), ("show", "abc"), ("cancel",), ("wait",),
                 ("output",), ("logs", "-n", "many"),
                 ("prune",), ("list", "--limit", "x")]
        for args in cases:
            with self.subTest(args=args):
                rc, out, err = self.d.cli(*args)
                self.assertEqual(rc, 2, "forkq %s: %s%s" % (
                    " ".join(args), out, err))
                self.assert_forkq_error(err)
        self.assertEqual(self.d.status()["counts"]["queued"], 0)

    def test_option_errors_name_the_option_as_typed(self):
        cases = [
            (("status", "--help=1"),
             "status: option '--help' takes no value"),
            (("--version=1",), "option '--version' takes no value"),
            (("list", "--json=yes"), "list: option '--json' takes no value"),
            (("logs", "--follow=1"),
             "logs: option '--follow' takes no value"),
            (("logs", "--lines"), "logs: --lines needs a value"),
            (("logs", "-n"), "logs: -n needs a value"),
            (("logs", "-fx"), "logs: unknown option '-x'"),
            (("logs", "--no-such=1"), "logs: unknown option '--no-such'"),
            (("submit", "--d", "1s", "true"),
             "submit: ambiguous option '--d'"),
            (("--socket",), "--socket needs a value"),
            # forkqd refused these: exit 1, as if it were forkqd's fault.
            (("submit", "--name", "", "true"),
             "--name: must be 1 to 256 bytes"),
            (("submit", "--queue", "q" * 257, "true"),
             "--queue: must be 1 to 256 bytes"),
            # A range said nothing of a value that was no number.
            (("submit", "--priority", "abc", "true"),
             "--priority: 'abc' is not a whole number"),
            # "--backoff : not a number" showed the empty part alone.
            (("submit", "--backoff", "1s:", "true"),
             "--backoff 1s:: MAX is empty (BASE[:MAX])"),
            (("submit", "--backoff", ":5m", "true"),
             "--backoff :5m: BASE is empty (BASE[:MAX])"),
        ]
        for args, want in cases:
            with self.subTest(args=args):
                rc, out, err = run_cli(*args)
                self.assertEqual((rc, err), (2, "forkq: %s\n" % want))

    def test_unreachable_socket_exits_3(self):
        for args in (("status",), ("submit", "--", "/bin/true"),
                     ("list",), ("show", "1")):
            with self.subTest(args=args):
                rc, out, err = run_cli(*args,
                                       sock=self.path("nowhere.sock"))
                self.assertEqual(rc, 3, out + err)
                self.assert_forkq_error(err)
        # A socket file with no one listening.
        import socket
        dead = self.path("dead.sock")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(dead)
        s.close()
        rc, out, err = run_cli("status", sock=dead)
        self.assertEqual(rc, 3, out + err)

    def test_daemon_error_exits_1(self):
        rc, out, err = self.d.cli("show", "987654")
        self.assertEqual(rc, 1, out + err)
        self.assert_forkq_error(err)
        id = self.submit_id("--", *fq("exit", 0))
        self.d.wait_final(id)
        rc, out, err = self.d.cli("cancel", id)
        self.assertEqual(rc, 1, out + err)
        self.assert_forkq_error(err)
        rc, out, err = self.d.cli("retry", id)
        self.assertEqual(rc, 1, out + err)

    def test_an_error_quoting_a_newline_is_one_line(self):
        # The user's words, or forkqd's message quoting them, went out
        # raw: a newline or an escape in them split the error line.
        for args, rc in ((("submit", "--at", "x\ny", "--", "true"), 2),
                         (("cron", "rm", "a\nb\x1b[2J"), 1),
                         (("bo\ngus",), 2)):
            with self.subTest(args=args):
                got, out, err = self.d.cli(*args)
                self.assertEqual(got, rc, out + err)
                self.assert_forkq_error(err)
                self.assertNotIn("\x1b", err)

    def test_tables_show_no_control_characters(self):
        # Names, schedules and commands are the users': printed raw in
        # the stats and cron tables, a tab broke the columns and an
        # escape drove the terminal.
        id = self.submit_id("--name", "a\tb\x1b[31m\u009b2J", "--",
                            *fq("exit", 0))
        self.d.wait_final(id)
        self.d.ok({"op": "cron_add", "name": "c\x1b[2J",
                   "schedule": "0\t3 * * *", "argv": ["x\ty"]})
        for args, shown in ((("stats",), "a?b?[31m??2J"),
                            (("cron", "list"), "c?[2J")):
            with self.subTest(args=args):
                rc, out, err = self.d.cli(*args)
                self.assertEqual(rc, 0, err)
                self.assertIn(shown, out)
                self.assertNotIn("\x1b", out)
                self.assertNotIn("\u009b", out)
                self.assertNotIn("\t", out)

    def test_closed_stdout_ends_by_sigpipe(self):
        id = self.submit_id("--", *fq("output", 1000))
        self.d.wait_final(id)
        for args in (("list",), ("output", id), ("logs", "-f")):
            with self.subTest(args=args):
                r, w = os.pipe()
                os.close(r)
                try:
                    p = subprocess.Popen(
                        [FORKQ, "-s", self.d.sock] + [str(a) for a in args],
                        stdin=subprocess.DEVNULL, stdout=w,
                        stderr=subprocess.PIPE, env=client_env())
                finally:
                    os.close(w)
                self.track_proc(p)
                _, err = p.communicate(timeout=30 * fqtest.SCALE)
                self.assertEqual((p.returncode, err), (-signal.SIGPIPE, b""))

    def test_daemon_gone_while_sending_exits_3(self):
        # A request larger than the socket buffer, to a peer that closes
        # without reading: the write fails, which must not kill forkq.
        path = self.path("closing.sock")
        env = ["--env=K%d=%s" % (i, "x" * 90000) for i in range(10)]
        rc, out, err = run_cli_against(
            path, lambda conn: None, "submit", *env, "--", "true")
        self.assertEqual(rc, 3, out + err)
        self.assert_forkq_error(err)

    def test_logs_follow_says_when_forkqd_goes(self):
        # It exited 0 in silence, where wait and output -f exit 3.
        d = self.start_daemon()
        p = self.track_proc(subprocess.Popen(
            [FORKQ, "-s", d.sock, "logs", "-f"], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=client_env()))
        self.assertIn(b"daemon.started", p.stdout.readline())
        d.stop()
        out, err = p.communicate(timeout=30 * fqtest.SCALE)
        self.assertEqual(p.returncode, 3, out + err)
        self.assertIn(b"connection closed by forkqd", err)

    def test_logs_follow_dropped_for_lagging_exits_1(self):
        # The last line forkqd sends a watcher it drops is watch.dropped.
        path = self.path("dropping.sock")

        def answer_then_drop(conn):
            conn.makefile("rb").readline()
            conn.sendall(b'{"ok":true}\n{"ts":"2026-01-01T00:00:00.000Z"'
                         b',"level":"warn","event":"watch.dropped",'
                         b'"behind_bytes":16777216}\n')

        rc, out, err = run_cli_against(path, answer_then_drop,
                                       "logs", "-f")
        self.assertEqual(rc, 1, out + err)
        self.assertIn("watch.dropped", out)
        self.assertIn("dropped by forkqd", err)

    def test_list_says_when_a_task_does_not_fit_an_answer(self):
        # An answer with no task but "more": the next task alone did not
        # fit in a line. list stopped there with exit 0, the older tasks
        # silently missing.
        path = self.path("stuck.sock")
        task = {"id": 5, "name": "five", "queue": "default", "argv": ["x"],
                "state": "succeeded", "priority": 0, "attempt": 1,
                "max_attempts": 3, "created_at": "2026-01-01T00:00:00.000Z",
                "run_at": "2026-01-01T00:00:00.000Z"}
        asked = []

        def one_page_then_stuck(conn):
            f = conn.makefile("rb")
            asked.append(json.loads(f.readline()))
            conn.sendall(json.dumps({"ok": True, "tasks": [task],
                                     "more": True}).encode() + b"\n")
            asked.append(json.loads(f.readline()))
            conn.sendall(b'{"ok":true,"tasks":[],"more":true}\n')

        rc, out, err = run_cli_against(path, one_page_then_stuck, "list")
        self.assertEqual(rc, 1, out + err)
        self.assert_forkq_error(err)
        self.assertIn("does not fit", err)
        self.assertRegex(out, r"(?m)^5\s+succeeded\s+five",
                         "what came is shown")
        self.assertEqual(asked[1].get("before_id"), 5)

    def test_socket_from_environment(self):
        rc, out, err = run_cli("status", env=client_env(
            {"FORKQ_SOCKET": self.d.sock}))
        self.assertEqual(rc, 0, err)
        self.assertIn(str(self.d.pid), out)
        # -s wins over the environment.
        rc, out, err = run_cli("status", sock=self.d.sock, env=client_env(
            {"FORKQ_SOCKET": self.path("nowhere.sock")}))
        self.assertEqual(rc, 0, err)

    # submit

    def test_submit_prints_id_and_options_land(self):
        now = time.time()
        id = self.submit_id("--name", "nm", "--queue", "qq",
                            "--priority", "-7", "--timeout", "2m",
                            "--heartbeat-timeout", "30", "--retries", "4",
                            "--delay", "1h", "--unique", "key1", "--",
                            *fq("exit", 0))
        t = self.d.get(id)
        self.assertEqual((t["name"], t["queue"], t["priority"],
                          t["timeout_ms"], t["heartbeat_timeout_ms"],
                          t["max_attempts"], t["unique"], t["state"]),
                         ("nm", "qq", -7, 120000, 30000, 5, "key1",
                          "queued"))
        self.assertAlmostEqual(parse_ts(t["run_at"]), now + 3600, delta=5)
        self.assertEqual(t["argv"], fq("exit", 0))

    def test_submit_durations(self):
        for text, ms in (("250ms", 250), ("30s", 30000), ("5m", 300000),
                         ("2h", 7200000), ("1d", 86400000), ("45", 45000)):
            with self.subTest(text=text):
                id = self.submit_id("--timeout", text, "--delay", "1h",
                                    "--", *fq("exit", 0))
                self.assertEqual(self.d.get(id)["timeout_ms"], ms)

    def test_submit_at(self):
        at = int(time.time()) + 5000
        id = self.submit_id("--at", str(at), "--", *fq("exit", 0))
        self.assertAlmostEqual(parse_ts(self.d.get(id)["run_at"]), at,
                               delta=1.5)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at + 60))
        id = self.submit_id("--at", stamp, "--", *fq("exit", 0))
        self.assertAlmostEqual(parse_ts(self.d.get(id)["run_at"]), at + 60,
                               delta=1.5)

    def test_submit_at_takes_the_years_0000_to_9999(self):
        """The last second of 9999 in unix seconds was refused as past
        2169; a time an offset takes outside the years went to forkqd as
        year 10000 or -001, which it refused as malformed (exit 1)."""
        for at, run_at in (("253402300799", "9999-12-31T23:59:59.000Z"),
                           ("9999-12-31T23:59:59.500Z",
                            "9999-12-31T23:59:59.500Z")):
            with self.subTest(at=at):
                id = self.submit_id("--at", at, "--", *fq("exit", 0))
                self.assertEqual(self.d.get(id)["run_at"], run_at)
        for at in ("253402300800", "9999-12-31T23:59:59-00:01",
                   "0000-01-01T00:00:00+00:01"):
            with self.subTest(at=at):
                rc, out, err = self.d.cli("submit", "--at", at, "--",
                                          *fq("exit", 0))
                self.assertEqual(rc, 2, out + err)
                self.assertIn("outside the years 0000 to 9999", err)

    def test_show_pads_the_year_0_and_floors_times_before_1970(self):
        for run_at, shown in (("1969-12-31T23:59:59.500Z",
                               "1969-12-31 23:59:59"),
                              ("0000-01-01T00:00:00Z",
                               "0000-01-01 00:00:00")):
            with self.subTest(run_at=run_at):
                t = self.d.submit(fq("exit", 0), run_at=run_at)
                self.d.wait_final(t["id"])
                rc, out, err = self.d.cli("show", str(t["id"]),
                                          env={"TZ": "UTC"})
                self.assertEqual(rc, 0, out + err)
                self.assertRegex(out, r"run_at:\s+%s\n" % shown)

    def test_submit_default_name_is_basename(self):
        id = self.submit_id("--delay", "1h", "--", *fq("exit", 0))
        self.assertEqual(self.d.get(id)["name"], "fqtask")

    def test_submit_wait_exit_status(self):
        for argv, want in ((fq("exit", 0), 0), (fq("exit", 5), 5),
                           (fq("signal", "KILL"), 137)):
            with self.subTest(argv=argv):
                rc, out, err = self.d.cli("submit", "--retries", "0",
                                          "--wait", "--", *argv)
                self.assertEqual(rc, want, err)
                self.assertRegex(out, r"^[0-9]+\n",
                                 "submit --wait prints the id first")
                t = self.d.get(int(out.split()[0]))
                self.assertIn(t["state"], fqtest.FINAL)

    def test_wait_status_is_the_first_not_succeeded_in_order(self):
        # Spec 4: the status the first task (in argument order) that did
        # not succeed would give alone. A later id that does not exist
        # once ended the wait with 1 instead; it is said, and counts 1 in
        # its own place.
        t = self.submit_id("--retries", "0", "--", *fq("exit", 3))
        self.d.wait_final(t)
        rc, out, err = self.d.cli("wait", str(t), "99999")
        self.assertEqual(rc, 3, err)
        self.assertIn("99999", err)
        ok = self.submit_id("--", *fq("exit", 0))
        rc, out, err = self.d.cli("wait", str(ok), "99999", str(t))
        self.assertEqual(rc, 1, err)

    # list, show, status

    def test_list_human(self):
        a = self.submit_id("--name", "alpha-task", "--", *fq("exit", 0))
        b = self.submit_id("--name", "beta-task", "--delay", "1h", "--",
                           *fq("exit", 0))
        self.d.wait_final(a)
        rc, out, err = self.d.cli("list")
        self.assertEqual(rc, 0, err)
        for s in (str(a), str(b), "alpha-task", "beta-task", "succeeded",
                  "queued"):
            self.assertIn(s, out)
        self.assertLess(out.index("beta-task"), out.index("alpha-task"),
                        "newest first")
        rc, out, err = self.d.cli("list", "--state", "queued")
        self.assertEqual(rc, 0, err)
        self.assertIn("beta-task", out)
        self.assertNotIn("alpha-task", out)
        rc, out, err = self.d.cli("list", "--limit", "1")
        self.assertEqual(rc, 0, err)
        self.assertIn("beta-task", out)
        self.assertNotIn("alpha-task", out)
        # A control character in a name or a queue would drive the
        # terminal, or break the columns (a tab).
        self.submit_id("--name", "n\x1b[2J", "--queue", "q\tr\x1b[H",
                       "--delay", "1h", "--", *fq("exit", 0))
        rc, out, err = self.d.cli("list", "--limit", "1")
        self.assertEqual(rc, 0, err)
        self.assertIn("n?[2J", out)
        self.assertIn("q?r?[H", out)
        self.assertNotIn("\x1b", out)
        self.assertNotIn("\t", out)

    def test_list_limit_is_the_daemons(self):
        rc, out, err = self.d.cli("list", "--limit", "100001")
        self.assertEqual(rc, 2, out + err)
        self.assertEqual(err, "forkq: --limit: must be 1..100000\n")
        rc, out, err = self.d.cli("list", "--limit", "100000")
        self.assertEqual(rc, 0, err)

    def test_show_human(self):
        id = self.submit_id("--name", "showme", "--retries", "0", "--",
                            *fq("exit", 4))
        self.d.wait_final(id)
        rc, out, err = self.d.cli("show", id)
        self.assertEqual(rc, 0, err)
        for s in (str(id), "showme", "failed", "exit", "4"):
            self.assertIn(s, out)

    def test_show_labels_durations_without_ms(self):
        # "timeout_ms: 1h00m" named a unit its value no longer had.
        id = self.submit_id("--timeout", "1h", "--backoff", "2s:1m",
                            "--delay", "1h", "--", *fq("exit", 0))
        rc, out, err = self.d.cli("show", id)
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"(?m)^timeout:\s+1h00m$")
        self.assertRegex(out, r"(?m)^backoff_base:\s+2\.0s$")
        self.assertRegex(out, r"(?m)^backoff_max:\s+1m00s$")
        self.assertNotIn("_ms:", out)

    def test_status_human(self):
        self.submit_id("--delay", "1h", "--", *fq("exit", 0))
        rc, out, err = self.d.cli("status")
        self.assertEqual(rc, 0, err)
        st = self.d.status()
        for s in (st["version"], str(self.d.pid), "queued", "running",
                  "succeeded", "failed", "canceled"):
            self.assertIn(s, out)

    def test_json_output(self):
        id = self.submit_id("--", *fq("exit", 0))
        self.d.wait_final(id)
        for args, key in ((("status", "--json"), "status"),
                          (("list", "--json"), "tasks"),
                          (("show", "--json", id), "task")):
            with self.subTest(args=args):
                rc, out, err = self.d.cli(*args)
                self.assertEqual(rc, 0, err)
                self.assertEqual(len(out.splitlines()), 1,
                                 "one JSON line: %r" % out[:300])
                v = json.loads(out)
                self.assertIs(v["ok"], True)
                self.assertIn(key, v)
        rc, out, _ = self.d.cli("show", "--json", id)
        task = json.loads(out)["task"]
        self.assertEqual(task["id"], id)
        self.assertEqual(len(task["attempts"]), 1)

    def test_cancel_and_retry_commands(self):
        id = self.submit_id("--delay", "1h", "--", *fq("exit", 0))
        rc, out, err = self.d.cli("cancel", id)
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.d.get(id)["state"], "canceled")
        rc, out, err = self.d.cli("retry", id)
        self.assertEqual(rc, 0, err)
        t = self.d.wait_final(id)
        self.assertEqual(t["state"], "succeeded")

    # cron

    def test_cron_add_refuses_name_unique_debounce(self):
        for opt, value in (("--name", "other"), ("--unique", "key"),
                           ("--debounce", "1s"), ("--wait", None),
                           ("--at", "2099-01-01T00:00:00Z")):
            with self.subTest(opt=opt):
                args = [opt] + ([value] if value is not None else [])
                rc, out, err = self.d.cli("cron", "add", "entry", "@daily",
                                          *args, "--", *fq("exit", 0))
                self.assertEqual(rc, 2, out + err)
                self.assert_forkq_error(err)
                self.assertIn("cron add: %s: " % opt, err)
        self.assertEqual(self.d.ok({"op": "cron_list"})["crons"], [])
        rc, out, err = self.d.cli("cron", "--help")
        self.assertEqual(rc, 0, err)
        for opt in ("--name", "--unique", "--debounce", "--wait", "--at"):
            self.assertNotIn(opt, out)
        rc, out, err = self.d.cli("cron", "add", "entry", "@daily",
                                  "--queue", "q", "--", *fq("exit", 0))
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"^entry: next run ")
        crons = self.d.ok({"op": "cron_list"})["crons"]
        self.assertEqual([c["name"] for c in crons], ["entry"])
        # The same name again replaces the entry, and says so.
        rc, out, err = self.d.cli("cron", "add", "entry", "@hourly",
                                  "--", *fq("exit", 0))
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"^entry: replaced; next run ")
        crons = self.d.ok({"op": "cron_list"})["crons"]
        self.assertEqual([(c["name"], c["schedule"]) for c in crons],
                         [("entry", "@hourly")])

    def test_cron_add_options_before_name_are_refused(self):
        # "cron add --json @daily -- true" made an entry named "--json".
        rc, out, err = self.d.cli("cron", "add", "--json", "@daily", "--",
                                  *fq("exit", 0))
        self.assertEqual(rc, 2, out + err)
        self.assert_forkq_error(err)
        self.assertIn("starts with '-'", err)
        self.assertEqual(self.d.ok({"op": "cron_list"})["crons"], [])

    # heartbeat

    def test_heartbeat_outside_a_task_exits_2(self):
        rc, out, err = run_cli("heartbeat")
        self.assertEqual(rc, 2, out + err)
        self.assert_forkq_error(err)
        rc, out, err = run_cli("heartbeat", "--progress", "10", "msg")
        self.assertEqual(rc, 2, out + err)

    def test_heartbeat_fd_errors_say_which(self):
        for value, want in ((None, "FORKQ_HEARTBEAT_FD is not set"),
                            ("abc", "FORKQ_HEARTBEAT_FD='abc' is not a "
                             "file descriptor number"),
                            ("99", "FORKQ_HEARTBEAT_FD=99 is not an open "
                             "file descriptor")):
            with self.subTest(value=value):
                env = client_env()
                if value is not None:
                    env["FORKQ_HEARTBEAT_FD"] = value
                rc, out, err = run_cli("heartbeat", "hi", env=env)
                self.assertEqual(rc, 2, out + err)
                self.assert_forkq_error(err)
                self.assertIn(want, err)

    def test_heartbeat_inside_a_task(self):
        id = self.submit_id("--heartbeat-timeout", "20s", "--",
                            FORKQ, "heartbeat", "--progress", "40",
                            "indexing files")
        t = self.d.wait_final(id)
        self.assertEqual(t["state"], "succeeded", json.dumps(t))
        self.assertEqual(t["progress"], 40)
        self.assertEqual(t["progress_message"], "indexing files")
        self.assertIsNotNone(t["last_heartbeat_at"])

    # access

    def test_socket_mode(self):
        import stat
        mode = stat.S_IMODE(os.stat(self.d.sock).st_mode)
        self.assertEqual(mode, 0o600, "default socket mode %o" % mode)
        d2 = self.start_daemon(extra_args=["--socket-mode", "0660"])
        mode = stat.S_IMODE(os.stat(d2.sock).st_mode)
        self.assertEqual(mode, 0o660, "--socket-mode 0660 gave %o" % mode)

    # the state dir lock

    def test_lock_of_a_forkqd_that_is_gone_is_waited_for(self):
        # The pidfile names a forkqd that is gone, and another process
        # still holds the lock for a moment (as a task that forkqd was
        # starting when it was killed does until its exec): a new forkqd
        # waits for the lock instead of refusing to start.
        d = self.d
        self.assertEqual(d.stop(), 0)
        gone = subprocess.Popen(["true"])
        gone.wait()
        pidfile = os.path.join(d.dir, "forkqd.pid")
        with open(pidfile, "w") as f:
            f.write("%d" % gone.pid)   # as pidfile_write(3) writes it
        # The holder lets go when told (a line on its stdin), so that
        # forkqd meets the lock for sure, however slow its start.
        holder = subprocess.Popen(
            [sys.executable, "-c",
             "import fcntl, sys\n"
             "f = open(sys.argv[1], 'r+')\n"
             "fcntl.flock(f, fcntl.LOCK_EX)\n"
             "print('locked', flush=True)\n"
             "sys.stdin.readline()\n", pidfile],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(holder.stdout.readline().strip(), "locked")
            d.start(wait=False)
            # Held for 1 s of forkqd's life: it must neither give up nor
            # start serving meanwhile (its lock check comes within ms).
            time.sleep(1.0 * fqtest.SCALE)
            self.assertTrue(d.alive(), d.stderr())
            with socket.socket(socket.AF_UNIX) as s:
                self.assertNotEqual(s.connect_ex(d.sock), 0,
                                    "forkqd listens without the lock")
        finally:
            holder.stdin.close()
            holder.wait()
            holder.stdout.close()
        d.wait_ready()
        t = d.submit(fq("exit", 0))
        self.assertEqual(d.wait_final(t["id"])["state"], "succeeded")

    def check_second_daemon_refused(self, same_socket):
        first = self.d
        second = fqtest.Daemon(first.dir, workers=1)
        if not same_socket:
            second.sock = os.path.join(self.tmp, "second.sock")
        second.log = os.path.join(self.tmp, "second.log")
        self._daemons.append(second)
        second.start(wait=False)
        rc = second.wait_exit(timeout=20)
        second.expect_alive = False
        self.assertNotEqual(rc, 0, "the second forkqd must fail")
        err = second.stderr()
        self.assertTrue(re.search(r"lock|already|running|in use", err, re.I)
                        or first.dir in err,
                        "message names the lock or the state dir: %r" % err)
        # The first still serves, on its own socket, with its data.
        id = first.submit(fq("exit", 0))["id"]
        self.assertEqual(first.wait_final(id)["state"], "succeeded")
        self.assertTrue(first.alive())

    def test_second_daemon_on_same_state_dir_refused(self):
        self.check_second_daemon_refused(same_socket=False)

    def test_second_daemon_same_socket_does_not_steal_it(self):
        self.check_second_daemon_refused(same_socket=True)


if __name__ == "__main__":
    fqtest.main()
