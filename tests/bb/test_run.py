"""Running tasks (spec sections 4.2, 4.5, 5): argv, environment, fds,
limits, outcomes, concurrency, priorities, captured output, `forkq wait`."""

import base64
import errno
import json
import os
import re
import resource
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fqtest                                             # noqa: E402
from fqtest import FQTASK, fq, parse_ts, pattern          # noqa: E402


def max_overlap(spans):
    """Most spans (start, end) open at once."""
    points = [(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans]
    points.sort(key=lambda p: (p[0], p[1]))     # ends before starts
    cur = best = 0
    for _, delta in points:
        cur += delta
        best = max(best, cur)
    return best


def read_span(path):
    with open(path) as f:
        nums = [int(x) for x in f.read().split()]
    assert len(nums) == 2, "span file %s: %r" % (path, nums)
    return nums[0] / 1e9, nums[1] / 1e9


class Run(fqtest.TestCase):

    def run_task(self, argv, **fields):
        t = self.d.submit(argv, **fields)
        return self.d.wait_final(t["id"])

    def env_of(self, task):
        out = self.d.output(task["id"]).decode("utf-8", "surrogateescape")
        env = {}
        for line in out.splitlines():
            k, sep, v = line.partition("=")
            if sep:
                env[k] = v
        return env

    def test_success(self):
        t = self.run_task(fq("exit", 0))
        self.assertEqual((t["state"], t["outcome"], t["exit_code"],
                          t["attempt"], len(t["attempts"])),
                         ("succeeded", "success", 0, 1, 1), json.dumps(t))

    def test_argv_byte_exact(self):
        args = ["with space", "double\"quote", "single'quote", "",
                "back\\slash", "new\nline", "tab\there", "$HOME", "*",
                "\u00fcn\u00efc\u00f8d\u00e9 \u2713 \U0001f600", "-x",
                "--", "  lead and trail  ", ""]
        t = self.run_task(fq("argv", *args))
        self.assertEqual(t["state"], "succeeded", json.dumps(t))
        self.assertEqual(t["argv"], fq("argv", *args))
        out = self.d.output(t["id"])
        want = b"".join(a.encode() + b"\0" for a in args)
        self.assertEqual(out, want)

    def test_argv_byte_exact_through_cli(self):
        args = ["a b", "", "qu\"o't", "\u00e9\u2713", "--wait", "-s"]
        rc, out, err = self.d.cli("submit", "--", FQTASK, "argv", *args)
        self.assertEqual(rc, 0, err)
        id = int(out.strip())
        t = self.d.wait_final(id)
        self.assertEqual(t["argv"], [FQTASK, "argv"] + args)
        rc, out, err = self.d.cli("output", id, raw=True)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, b"".join(a.encode() + b"\0" for a in args))

    def test_program_looked_up_in_path(self):
        t = self.run_task(["fqtask", "exit", "0"],
                          env={"PATH": os.path.dirname(FQTASK) +
                               ":/usr/bin:/bin"})
        self.assertEqual((t["state"], t["outcome"]),
                         ("succeeded", "success"), json.dumps(t))

    def test_environment(self):
        t = self.run_task(fq("env"), env={"K1": "v1",
                                          "K2": "with space = and more",
                                          "K3": ""})
        env = self.env_of(t)
        self.assertEqual(env.get("FORKQ_TASK_ID"), str(t["id"]))
        self.assertEqual(env.get("FORKQ_ATTEMPT"), "1")
        self.assertRegex(env.get("FORKQ_HEARTBEAT_FD", ""), r"^[0-9]+$")
        self.assertGreaterEqual(int(env["FORKQ_HEARTBEAT_FD"]), 3)
        self.assertEqual(env.get("K1"), "v1")
        self.assertEqual(env.get("K2"), "with space = and more")
        self.assertEqual(env.get("K3"), "")
        self.assertEqual(env.get("FQBB_DAEMON_MARK"), "from-forkqd",
                         "the task gets forkqd's own environment")

    def test_env_cannot_override_forkq_variables(self):
        t = self.run_task(fq("env"), env={"FORKQ_TASK_ID": "999999",
                                          "FORKQ_ATTEMPT": "77",
                                          "FORKQ_HEARTBEAT_FD": "99"})
        env = self.env_of(t)
        self.assertEqual(env.get("FORKQ_TASK_ID"), str(t["id"]))
        self.assertEqual(env.get("FORKQ_ATTEMPT"), "1")
        self.assertNotEqual(env.get("FORKQ_HEARTBEAT_FD"), "99")
        self.assertEqual(len([k for k in self.d.output(t["id"]).split(b"\n")
                              if k.startswith(b"FORKQ_TASK_ID=")]), 1,
                         "FORKQ_TASK_ID appears once")

    def test_init_system_variables_stay_with_forkqd(self):
        # sd_notify(3): the notify and watchdog variables are forkqd's, not
        # its children's. A path nobody listens on: forkqd's sends just fail.
        d = self.start_daemon(env={
            "NOTIFY_SOCKET": self.path("nobody.sock"),
            "WATCHDOG_USEC": "600000000", "LISTEN_FDS": "0"})
        t = d.wait_final(d.submit(fq("env"))["id"])
        out = d.output(t["id"]).decode("utf-8", "surrogateescape")
        names = {line.partition("=")[0] for line in out.splitlines()}
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_FDS"):
            self.assertNotIn(name, names)
        self.assertIn("FQBB_DAEMON_MARK", names)
        self.assertIn("FORKQ_SOCKET", names)

    def test_a_relative_socket_is_absolute_to_tasks(self):
        # forkqd -s rel.sock, relative to its own directory: a task starts
        # in / and reaches its forkqd by FORKQ_SOCKET all the same.
        d = self.start_daemon(start=False)
        d.sock = os.path.join(d.dir, "rel.sock")
        argv = d.argv
        d.argv = lambda: ["rel.sock" if a == d.sock else a for a in argv()]
        d.start()
        t = d.wait_final(d.submit([fqtest.FORKQ, "status"])["id"])
        self.assertEqual((t["state"], t["exit_code"]), ("succeeded", 0),
                         d.output(t["id"], stream="stderr"))
        t = d.wait_final(d.submit(fq("env"))["id"])
        self.assertIn("FORKQ_SOCKET=%s\n" % os.path.join(
            os.path.realpath(d.dir), "rel.sock"), d.output(t["id"]).decode())

    def test_cli_env_and_inherit_env(self):
        cenv = fqtest.client_env({"FQ_CLIENT_ONLY": "client-value"})
        rc, out, err = self.d.cli("submit", "--env", "K=V", "--env",
                                  "EQ=a=b", "--", *fq("env"), env=cenv)
        self.assertEqual(rc, 0, err)
        env = self.env_of(self.d.wait_final(int(out)))
        self.assertEqual(env.get("K"), "V")
        self.assertEqual(env.get("EQ"), "a=b")
        self.assertNotIn("FQ_CLIENT_ONLY", env,
                         "without --inherit-env the client's environment "
                         "is not sent")
        rc, out, err = self.d.cli("submit", "--inherit-env", "--",
                                  *fq("env"), env=cenv)
        self.assertEqual(rc, 0, err)
        env = self.env_of(self.d.wait_final(int(out)))
        self.assertEqual(env.get("FQ_CLIENT_ONLY"), "client-value")

    def test_own_process_group(self):
        """(Its session: test_liveness.Containment.)"""
        t = self.d.submit(fq("sleep", 30))
        run = self.d.wait_running_pid(t["id"])
        # Running, to forkqd, from its clone: the group comes after.
        st = fqtest.wait_for(lambda: fqtest.leader_stat(run["pid"]),
                             what="the task to lead its own group")
        self.assertNotEqual(st[2], os.getpgrp())
        self.assertNotEqual(st[2], fqtest.proc_stat(self.d.pid)[2])
        self.d.ok({"op": "cancel", "id": t["id"]})
        self.d.wait_final(t["id"])

    def test_stdin_is_dev_null(self):
        t = self.run_task(fq("stdin"))
        self.assertEqual(self.d.output(t["id"]).decode(),
                         "stdin /dev/null\nread 0 eof\n")

    def test_signals_unblocked_and_default(self):
        """forkqd takes its own signals through a signalfd, with them
        blocked; its tasks must start with none blocked and none
        ignored (SIGPIPE, which forkqd ignores, included)."""
        t = self.run_task(fq("signals"))
        self.assertEqual(self.d.output(t["id"]).decode(),
                         "blocked\nignored\n")

    def test_tasks_end_when_forkqd_was_started_ignoring_sigchld(self):
        """An ignored SIGCHLD survives exec; with it, the kernel would
        reap the tasks itself and forkqd never see one end."""
        d = self.start_daemon(start=False)
        d.preexec = lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        d.start()
        t = d.submit(fq("exit", 3), max_attempts=1)
        fin = d.wait_final(t["id"])
        self.assertEqual((fin["state"], fin["outcome"], fin["exit_code"]),
                         ("failed", "exit", 3), json.dumps(fin))

    def test_signals_reach_forkqd_without_a_signalfd(self):
        """Where signalfd(2) is refused (a seccomp filter), libev takes
        forkqd's signals by handlers: forkqd, which blocks them from its
        start, must then unblock them, or no task end (SIGCHLD) and no
        SIGTERM would ever reach it."""
        d = self.start_daemon(env=self.preload_env(
            "nosignalfd", "#include <errno.h>\n#include <signal.h>\n"
            "int signalfd(int fd, const sigset_t *m, int flags)\n"
            "{ errno = ENOSYS; return -1; }\n"))
        with open("/proc/%d/status" % d.pid) as f:
            caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", f.read(),
                                   re.M).group(1), 16)
        self.assertTrue(caught & (1 << (signal.SIGTERM - 1)),
                        "libev took SIGTERM by a handler (the shim works)")
        t = d.wait_final(d.submit(fq("exit", 0))["id"])
        self.assertEqual(t["state"], "succeeded", json.dumps(t))
        self.assertEqual(d.stop(), 0, "SIGTERM heard: a graceful exit")

    def test_cwd(self):
        sub = self.path("work dir")
        os.mkdir(sub)
        t = self.run_task(fq("pwd"), cwd=sub)
        self.assertEqual(self.d.output(t["id"]).decode(), sub + "\n")
        t = self.run_task(fq("pwd"))
        self.assertEqual(self.d.output(t["id"]).decode(), "/\n",
                         "without cwd the task runs in /")
        rc, out, err = self.d.cli("submit", "--", *fq("pwd"), cwd=sub)
        self.assertEqual(rc, 0, err)
        self.d.wait_final(int(out))
        self.assertEqual(self.d.output(int(out)).decode(), sub + "\n",
                         "the CLI sends its own working directory")
        other = self.path("other")
        os.mkdir(other)
        rc, out, err = self.d.cli("submit", "--cwd", other, "--",
                                  *fq("pwd"), cwd=sub)
        self.assertEqual(rc, 0, err)
        self.d.wait_final(int(out))
        self.assertEqual(self.d.output(int(out)).decode(), other + "\n")

    def test_a_long_program_that_does_not_exec_stays_readable(self):
        """The error of a failed exec quotes the program cut short: whole,
        it made a task with a long argv[0] too large for an answer line
        (spec 7), and get, wait and list failed on it for good."""
        # 256 bytes are quoted, but not the first byte of a character:
        # the cut comes before the é at bytes 255 and 256.
        program = "/nonexistent/" + "p" * 242 + "\u00e9" + "p" * 131000
        t = self.d.submit([program] + ["a" * 120000] * 7, max_attempts=1)
        fin = self.d.wait_final(t["id"])
        self.assertEqual((fin["state"], fin["outcome"]),
                         ("failed", "exec_failed"))
        err = fin["error"]
        self.assertEqual(err[:err.index("...: ") + 5],
                         "exec %s...: " % program[:255], err[:300])
        self.assertIn(err[err.index("...: ") + 5:],
                      (os.strerror(errno.ENAMETOOLONG),
                       os.strerror(errno.ENOENT)))
        self.assertEqual(self.d.ok({"op": "list", "limit": 1})["tasks"][0]
                         ["id"], t["id"])

    def test_missing_cwd_is_exec_failed(self):
        t = self.run_task(fq("pwd"), cwd=self.path("no-such-dir"))
        self.assertEqual((t["state"], t["outcome"], t["attempt"]),
                         ("failed", "exec_failed", 1), json.dumps(t))
        self.assertIsInstance(t["error"], str)

    def test_no_leaked_fds(self):
        # Another task running makes its pipes exist in forkqd meanwhile.
        blocker = self.d.submit(fq("sleep", 30))
        self.d.wait_running_pid(blocker["id"])
        t = self.run_task(fq("fds"))
        self.assertEqual(t["state"], "succeeded", json.dumps(t))
        fds = sorted(int(x) for x in self.d.output(t["id"]).split())
        detail = self.d.output(t["id"], stream="stderr").decode()
        hb = int(detail.rsplit("FORKQ_HEARTBEAT_FD=", 1)[1].split()[0])
        self.assertEqual(fds, sorted([0, 1, 2, hb]),
                         "only 0, 1, 2 and the heartbeat fd; the task "
                         "saw:\n" + detail)
        self.d.ok({"op": "cancel", "id": blocker["id"]})

    def test_rlimits_cli(self):
        rc, out, err = self.d.cli(
            "submit", "--rlimit", "nofile=64", "--rlimit", "as=512M",
            "--rlimit", "cpu=30", "--rlimit", "fsize=1M", "--rlimit",
            "core=0", "--rlimit", "nproc=4096", "--", *fq("rlimits"))
        self.assertEqual(rc, 0, err)
        t = self.d.wait_final(int(out))
        self.assertEqual(t["state"], "succeeded", json.dumps(t))
        lim = {}
        for line in self.d.output(t["id"]).decode().splitlines():
            name, soft, hard = line.split()
            lim[name] = (soft, hard)
        self.assertEqual(lim["nofile"], ("64", "64"))
        self.assertEqual(lim["as"], (str(512 << 20), str(512 << 20)))
        self.assertEqual(lim["cpu"], ("30", "30"))
        self.assertEqual(lim["fsize"], (str(1 << 20), str(1 << 20)))
        self.assertEqual(lim["core"], ("0", "0"))
        self.assertEqual(lim["nproc"], ("4096", "4096"))

    def test_rlimit_that_cannot_be_set_is_named(self):
        # More open files than the kernel allows anyone (fs.nr_open).
        t = self.run_task(fq("exit", 0), rlimits={"nofile": 99999999999},
                          max_attempts=1)
        self.assertEqual((t["state"], t["outcome"]),
                         ("failed", "exec_failed"), json.dumps(t))
        self.assertIn("setrlimit nofile", t["error"])

    def test_rlimits_protocol(self):
        t = self.run_task(fq("rlimits"),
                          rlimits={"nofile": 100, "as": 256 << 20})
        out = self.d.output(t["id"]).decode()
        self.assertIn("nofile 100 100\n", out)
        self.assertIn("as %d %d\n" % (256 << 20, 256 << 20), out)

    def test_open_file_limit_raised_for_forkqd_only(self):
        """forkqd raises its own soft RLIMIT_NOFILE to the hard limit (a
        thousand running tasks need thousands of fds), but a task gets the
        limit forkqd was given, or the one it asks for."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard <= 200:
            self.skipTest("hard RLIMIT_NOFILE too low to test")
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
        try:
            d = self.start_daemon()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        with open("/proc/%d/limits" % d.pid) as f:
            line = [x for x in f if x.startswith("Max open files")][0]
        want = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
        self.assertEqual(line.split()[3:5], [want, want], line)
        t = d.submit(fq("rlimits"))
        d.wait_final(t["id"])
        self.assertIn("nofile 128 %s\n" % (
            "unlimited" if hard == resource.RLIM_INFINITY else hard),
            d.output(t["id"]).decode())
        t = d.submit(fq("rlimits"), rlimits={"nofile": 100})
        d.wait_final(t["id"])
        self.assertIn("nofile 100 100\n", d.output(t["id"]).decode())

        # With more fds open in forkqd than the limit it was given (client
        # connections here), a task still starts and gets that limit.
        if hard != resource.RLIM_INFINITY and hard < 400:
            return
        conns = [d.connect() for _ in range(200)]
        try:
            for c in conns:
                c.request({"op": "status"})
            t = d.submit(fq("rlimits"))
            t = d.wait_final(t["id"])
            self.assertEqual(t["state"], "succeeded", t)
            self.assertIn("nofile 128 ", d.output(t["id"]).decode())
        finally:
            for c in conns:
                c.close()

    def test_short_time_slice_for_forkqd_only(self):
        """forkqd takes a 0.1 ms time slice (Linux 6.12), so it preempts a
        task's exec when a submit or an exit wakes it; a task gets back the
        slice forkqd was given, and the nice value forkqd has now."""
        def slice_of(pid):
            try:
                with open("/proc/%s/sched" % pid) as f:
                    for line in f:
                        if line.startswith("se.slice"):
                            return int(line.split(":")[1])
            except OSError:
                pass
            return None
        release = tuple(int(x) for x in
                        re.findall(r"\d+", os.uname().release)[:2])
        given = slice_of("self")
        if release < (6, 12) or given is None:
            self.skipTest("no custom time slices here (Linux 6.12)")
        self.assertEqual(slice_of(self.d.pid), 100000)
        # The kernel holds a niceness at 19: a run under nice 17 or more
        # gets 19, not 3 more than its own.
        nicer = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 3)
        os.setpriority(os.PRIO_PROCESS, self.d.pid, nicer)
        t = self.run_task(["sh", "-c", "grep ^se.slice /proc/$$/sched; nice"])
        out = self.d.output(t["id"]).decode().split("\n")
        self.assertEqual(int(out[0].split(":")[1]), given, out)
        self.assertEqual(int(out[1]), nicer, out)

    def test_realtime_forkqd_runs_tasks_under_sched_other(self):
        """An operator may run forkqd under a real-time policy (chrt,
        systemd's CPUSchedulingPolicy): its tasks get none, as with
        reset-on-fork, so a spinning task cannot take a CPU for good. With
        --daemon too, whose fork must not take the policy from forkqd."""
        def fifo_threads(pid):
            fifo = []
            for tid in os.listdir("/proc/%d/task" % pid):
                try:
                    policy = os.sched_getscheduler(int(tid))
                except OSError:
                    continue        # a thread that ended meanwhile
                if policy & ~getattr(os, "SCHED_RESET_ON_FORK", 0) == \
                        os.SCHED_FIFO:
                    fifo.append(tid)
            return fifo

        try:
            probe = subprocess.run(["chrt", "-f", "1", "true"],
                                   capture_output=True, timeout=30)
        except FileNotFoundError:
            self.skipTest("no chrt(1) here")
        if probe.returncode != 0:
            self.skipTest("no real-time policy for us: %r" % probe.stderr)
        for daemonize in (False, True):
            d = self.start_daemon(
                start=False, extra_args=["--daemon"] if daemonize else [])
            d.wrapper = ["chrt", "-f", "1"]
            if daemonize:
                pid = self.start_daemonized(d)
            else:
                pid = d.start().pid
            self.assertEqual(os.sched_getscheduler(pid) &
                             ~getattr(os, "SCHED_RESET_ON_FORK", 0),
                             os.SCHED_FIFO, "daemonize=%s" % daemonize)
            t = d.submit(["sh", "-c", "chrt -p $$; nice"])
            t = d.wait_final(t["id"])
            self.assertEqual(t["state"], "succeeded", t)
            out = d.output(t["id"]).decode().splitlines()
            self.assertTrue(out[0].endswith(": SCHED_OTHER"), out)
            self.assertEqual(out[-1], "0", out)
            # The sync thread, which an answer may wait for, is forkqd's
            # policy again (it starts at the first fsync after a commit).
            fqtest.wait_for(lambda: len(fifo_threads(pid)) >= 2,
                            what="forkqd's sync thread under SCHED_FIFO")
            if daemonize:
                self.end_daemonized(pid, signal.SIGTERM)

    def test_cpu_limit_kills_task(self):
        # Until 30 s of its own CPU: 30 s of wall time gave a starved
        # machine's task less than the 1 s limit.
        t = self.d.submit(fq("spin-cpu", 30), rlimits={"cpu": 1},
                          max_attempts=1)
        t = self.d.wait_final(t["id"], timeout=300)
        self.assertEqual((t["state"], t["outcome"]), ("failed", "signal"),
                         json.dumps(t))
        self.assertIn(t["signal"], ("SIGXCPU", "SIGKILL"), json.dumps(t))
        self.assertIn("rlimit cpu", t["attempts"][0]["error"] or "")

    def test_a_sigkill_under_a_cpu_limit_not_reached_is_not_blamed_on_it(self):
        """The error named the limit for any SIGKILL under one."""
        t = self.d.submit(fq("sleep", 60), rlimits={"cpu": 100},
                          max_attempts=1)
        pid = self.d.wait_running_pid(t["id"])["pid"]
        os.kill(pid, signal.SIGKILL)
        t = self.d.wait_final(t["id"])
        self.assertEqual((t["outcome"], t["signal"]), ("signal", "SIGKILL"),
                         json.dumps(t))
        self.assertIsNone(t["attempts"][0]["error"], json.dumps(t))

    def test_sigsegv_under_an_address_space_limit_says_so(self):
        # Its error was null, though the limit is the likely cause.
        t = self.run_task(fq("signal", "SEGV"), rlimits={"as": 1 << 30},
                          max_attempts=1)
        self.assertEqual((t["outcome"], t["signal"]), ("signal", "SIGSEGV"),
                         json.dumps(t))
        self.assertIn("rlimit as", t["attempts"][0]["error"] or "")

    def test_exec_failed_not_retried(self):
        cases = [["/nonexistent/program"], ["no-such-program-fq-xyz"]]
        noexec = self.path("noexec")
        with open(noexec, "w") as f:
            f.write("#!/bin/sh\nexit 0\n")
        os.chmod(noexec, stat.S_IRUSR | stat.S_IWUSR)
        cases.append([noexec])
        for argv in cases:
            with self.subTest(argv=argv):
                t = self.run_task(argv)
                self.assertEqual((t["state"], t["outcome"], t["attempt"]),
                                 ("failed", "exec_failed", 1),
                                 json.dumps(t))
                self.assertEqual(t["max_attempts"], 3)
                self.assertIsInstance(t["error"], str)
                self.assertTrue(t["error"])
                self.assertEqual(len(t["attempts"]), 1)
                a = t["attempts"][0]
                self.assertEqual(a["outcome"], "exec_failed")
                self.assertIsInstance(a["error"], str)
                self.assertTrue(a["error"].startswith("exec %s: " % argv[0]),
                                "the error names the program: %s"
                                % a["error"])

    def test_exit_code(self):
        t = self.run_task(fq("exit", 3), max_attempts=1)
        self.assertEqual((t["state"], t["outcome"], t["exit_code"],
                          t["signal"]), ("failed", "exit", 3, None),
                         json.dumps(t))
        a = t["attempts"][0]
        self.assertEqual((a["outcome"], a["exit_code"], a["signal"]),
                         ("exit", 3, None))

    def test_own_signal(self):
        for sig, name in (("KILL", "SIGKILL"), ("SEGV", "SIGSEGV"),
                          ("TERM", "SIGTERM")):
            with self.subTest(sig=name):
                t = self.run_task(fq("signal", sig), max_attempts=1)
                self.assertEqual((t["state"], t["outcome"], t["signal"],
                                  t["exit_code"]),
                                 ("failed", "signal", name, None),
                                 json.dumps(t))
                self.assertEqual(t["attempts"][0]["signal"], name)

    def check_concurrency(self, workers, ntasks, secs):
        d = self.start_daemon(workers=workers)
        ids = []
        for i in range(ntasks):
            ids.append(d.submit(fq("span", self.path("span%d" % i),
                                   secs))["id"])
        for id in ids:
            t = d.wait_final(id, timeout=60)
            self.assertEqual(t["state"], "succeeded", json.dumps(t))
        spans = [read_span(self.path("span%d" % i)) for i in range(ntasks)]
        return max_overlap(spans)

    def test_one_worker_runs_one_at_a_time(self):
        self.assertEqual(self.check_concurrency(1, 4, 0.4), 1)

    def test_two_workers_run_two_at_a_time(self):
        self.assertEqual(self.check_concurrency(2, 6, 1.0), 2)

    def test_status_running_never_above_workers(self):
        d = self.start_daemon(workers=2)
        ids = [d.submit(fq("sleep", 0.3))["id"] for _ in range(6)]
        for _ in range(40):
            counts = d.status()["counts"]
            self.assertLessEqual(counts["running"], 2, counts)
        for id in ids:
            d.wait_final(id, timeout=60)

    def test_priority_order(self):
        d = self.start_daemon(workers=1)
        gate = self.path("gate")
        blocker = d.submit(fq("waitfile", gate, 60))
        d.wait_running_pid(blocker["id"])
        prios = [("low", -5), ("high", 10), ("mid1", 0), ("mid2", 0),
                 ("top", 1000), ("bottom", -1000)]
        ids = {}
        for name, p in prios:
            ids[name] = d.submit(fq("span", self.path(name), 0.05),
                                 name=name, priority=p)["id"]
        # Same priority, higher id, but due earlier: before mid1 and mid2.
        rc, out, err = d.cli("submit", "--name", "mid0", "--at",
                             str(int(time.time()) - 3600), "--",
                             *fq("span", self.path("mid0"), 0.05))
        self.assertEqual(rc, 0, err)
        ids["mid0"] = int(out)
        self.touch(gate)
        for name in ids:
            t = d.wait_final(ids[name], timeout=60)
            self.assertEqual(t["state"], "succeeded", json.dumps(t))
        starts = sorted((read_span(self.path(n))[0], n) for n in ids)
        self.assertEqual([n for _, n in starts],
                         ["top", "high", "mid0", "mid1", "mid2", "low",
                          "bottom"])

    def test_output_offsets_and_eof(self):
        size = 200000
        t = self.run_task(fq("output", size))
        self.assertEqual(t["state"], "succeeded")
        a = self.d.ok({"op": "output", "id": t["id"]})
        chunk = base64.b64decode(a["data_b64"])
        self.assertEqual(len(chunk), 65536, "default limit 65536 bytes")
        self.assertEqual(a["offset"], 65536)
        self.assertIs(a["eof"], False)
        a = self.d.ok({"op": "output", "id": t["id"], "offset": 1000,
                       "limit": 10})
        self.assertEqual(base64.b64decode(a["data_b64"]),
                         pattern(1010)[1000:])
        self.assertEqual(a["offset"], 1010)
        self.assertIs(a["eof"], False)
        a = self.d.ok({"op": "output", "id": t["id"], "offset": size - 5,
                       "limit": 100})
        self.assertEqual(base64.b64decode(a["data_b64"]),
                         pattern(size)[-5:])
        self.assertEqual(a["offset"], size)
        self.assertIs(a["eof"], True)
        self.assertEqual(self.d.output(t["id"]), pattern(size))
        self.assertEqual(self.d.output(t["id"], stream="stderr"), b"")
        rc, out, err = self.d.cli("output", t["id"], raw=True)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, pattern(size))

    def test_large_output_is_drained(self):
        size = 3 * 1024 * 1024 + 17
        t = self.run_task(fq("output", size), timeout_ms=60000)
        self.assertEqual((t["state"], t["outcome"]),
                         ("succeeded", "success"), json.dumps(t))
        self.assertEqual(self.d.output(t["id"]), pattern(size))

    def test_a_chatty_stream_is_not_held_by_the_rests(self):
        # Quiet output pipes are read in rounds, a rest apart (rounds.c);
        # one that brings more than a little in a round is read as it
        # comes from then on. Held to a pipe per 2 s rest, these 8 MiB
        # would take over four minutes, past the task's timeout.
        d = self.start_daemon(extra_args=["--heartbeat-rest", "2s"])
        size = 8 * 1024 * 1024
        t = d.wait_final(d.submit(fq("output", size), timeout_ms=60000,
                                  max_attempts=1)["id"])
        self.assertEqual((t["state"], t["outcome"]),
                         ("succeeded", "success"), json.dumps(t))
        self.assertEqual(d.output(t["id"]), pattern(size))

    def test_a_stream_of_small_sendfile_chunks_is_not_held(self):
        # A sendfile(2) chunk takes a slot of the pipe of its own, so 16
        # chunks of 100 bytes fill it: each round then brings 1,600
        # bytes, too few to say "busy", while the task waits. Several
        # such rounds in a row take the stream out of the rounds; held to
        # a pipe per 2 s rest, these 200,000 bytes would take over four
        # minutes, past the task's timeout.
        # A pipe of fewer slots (a user past pipe-user-pages-soft gets
        # two; here the task leaves its pipe one) fills with fewer bytes,
        # and is judged by the slots it has now: "late" shrinks it once
        # forkqd has read a first chunk (and could have asked its size).
        d = self.start_daemon(extra_args=["--heartbeat-rest", "2s"])
        size = 200000
        src = self.path("chunks")
        with open(src, "wb") as f:
            f.write(pattern(size))
        script = ("import array, fcntl, os, sys, termios, time\n"
                  "def unread():\n"
                  "    n = array.array('i', [0])\n"
                  "    fcntl.ioctl(1, termios.FIONREAD, n)\n"
                  "    return n[0]\n"
                  "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
                  "off = 0\n"
                  "if sys.argv[2] == 'late':\n"
                  "    off = os.sendfile(1, fd, 0, 100)\n"
                  "    while unread() > 0:\n"
                  "        time.sleep(0.01)\n"
                  "if sys.argv[2] != 'default':\n"
                  "    fcntl.fcntl(1, fcntl.F_SETPIPE_SZ, 4096)\n"
                  "end = int(sys.argv[3])\n"
                  "while off < end:\n"
                  "    off += os.sendfile(1, fd, off, min(100, end - off))\n")
        # The one-slot pipe is read a chunk at a time once out: less.
        for pipe, n in (("default", size), ("shrink", size // 4),
                        ("late", size // 4)):
            with self.subTest(pipe=pipe):
                t = d.wait_final(d.submit(
                    [sys.executable, "-c", script, src, pipe, str(n)],
                    timeout_ms=60000, max_attempts=1)["id"])
                self.assertEqual((t["state"], t["outcome"]),
                                 ("succeeded", "success"), json.dumps(t))
                self.assertEqual(d.output(t["id"]), pattern(n))

    def test_output_stderr(self):
        t = self.run_task(fq("output", 3000, "stderr"))
        self.assertEqual(self.d.output(t["id"], stream="stderr"),
                         pattern(3000))
        self.assertEqual(self.d.output(t["id"]), b"")
        rc, out, err = self.d.cli("output", "--stderr", t["id"], raw=True)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, pattern(3000))

    def test_output_per_attempt(self):
        t = self.run_task(fq("counter", self.path("cnt"), 1),
                          backoff_base_ms=100, backoff_max_ms=100)
        self.assertEqual((t["state"], t["attempt"]), ("succeeded", 2))
        self.assertEqual(self.d.output(t["id"]), b"run 2\n")
        self.assertEqual(self.d.output(t["id"], attempt=1), b"run 1\n")
        self.assertEqual(self.d.output(t["id"], attempt=2), b"run 2\n")
        rc, out, err = self.d.cli("output", "--attempt", "1", t["id"])
        self.assertEqual((rc, out), (0, "run 1\n"), err)

    def test_output_follow(self):
        t = self.d.submit(fq("drip", 5, 300))
        rc, out, err = self.d.cli("output", "-f", t["id"], timeout=60)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, "".join("line %d\n" % i for i in range(1, 6)))

    def test_output_follows_until_the_attempt_ends(self):
        # The main process exits at once; what it left behind ignores
        # SIGTERM and writes until --kill-grace's SIGKILL. The attempt
        # ends then, not at the main process's exit: `output -f` follows
        # until it, and gets all that was written.
        d = self.start_daemon(extra_args=["--kill-grace", "3s"])
        # The main process exits only once the other ignores SIGTERM.
        script = ('(trap "" TERM; : >"$0"; i=0; while :; do '
                  'echo left $i; i=$((i+1)); sleep 0.1; done) & '
                  'while [ ! -e "$0" ]; do sleep 0.01; done; echo main')
        t = d.submit(["/bin/sh", "-c", script, self.path("ignoring")],
                     max_attempts=1)
        rc, out, err = d.cli("output", "-f", t["id"], timeout=60)
        self.assertEqual(rc, 0, err)
        d.wait_final(t["id"])
        self.assertEqual(out.encode(), d.output(t["id"]))
        self.assertGreater(out.count("left"), 5, out)

    def test_output_answered_at_the_attempts_end_says_eof(self):
        # The last bytes, read from the pipe as the attempt ended, woke a
        # held output while forkqd still counted the task as running: the
        # answer said eof false for an attempt that was over. A follower
        # asked again (at a shutdown, of a forkqd gone: output -f exited
        # 3), and one on the default attempt went on to the next.
        # Once a round has read "first", the pipes rest for 10 s: "last",
        # written then, is read only as the attempt ends.
        d = self.start_daemon(extra_args=["--heartbeat-rest", "10s"])
        gate = self.path("gate")
        t = d.submit(["/bin/sh", "-c", 'echo first; while [ ! -e "$0" ]; '
                      'do sleep 0.05; done; echo last', gate],
                     max_attempts=1)
        with d.connect() as c:
            first = c.request({"op": "output", "id": t["id"], "attempt": 1,
                               "wait_ms": 30000}, timeout=60)
            self.assertEqual(base64.b64decode(first["data_b64"]),
                             b"first\n", first)
            c.send({"op": "output", "id": t["id"], "attempt": 1,
                    "offset": first["offset"], "wait_ms": 30000})
            self.touch(gate)
            last = c.recv(timeout=60)
        self.assertEqual(base64.b64decode(last["data_b64"]), b"last\n", last)
        self.assertTrue(last["eof"], "the bytes read at the attempt's "
                        "end go out with eof: %r" % last)

    def test_output_of_a_task_that_never_ran(self):
        # Canceled while queued: no attempt will come, so a held output
        # ends (eof) at the cancel, and `output -f` does not wait forever.
        t = self.d.submit(fq("exit", 0), delay_ms=3600 * 1000)
        with self.d.connect() as c:
            c.send({"op": "output", "id": t["id"], "wait_ms": 3600 * 1000})
            self.d.ok({"op": "cancel", "id": t["id"]})
            a = c.recv()
        self.assertTrue(a.get("ok"), a)
        self.assertEqual((a["data_b64"], a["offset"], a["eof"]),
                         ("", 0, True), a)
        rc, out, err = self.d.cli("output", "-f", t["id"], timeout=60)
        self.assertEqual((rc, out), (0, ""), err)

    def test_output_while_running(self):
        t = self.d.submit(fq("drip", 4, 500))
        self.d.wait_running_pid(t["id"])
        data, offset, eof = b"", 0, False
        for _ in range(100):
            a = self.d.ok({"op": "output", "id": t["id"], "offset": offset,
                           "wait_ms": 2000})
            data += base64.b64decode(a["data_b64"])
            offset = a["offset"]
            if a["eof"]:
                eof = True
                break
        self.assertTrue(eof)
        self.assertEqual(data, b"line 1\nline 2\nline 3\nline 4\n")
        self.assertEqual(offset, len(data))

    def test_wait_exit_status(self):
        cases = [(fq("exit", 0), 0), (fq("exit", 7), 7),
                 (fq("exit", 1), 1), (fq("signal", "KILL"), 128 + 9),
                 (fq("signal", "TERM"), 128 + 15),
                 (["/nonexistent/prog"], 1)]
        ids = []
        for argv, want in cases:
            id = self.d.submit(argv, max_attempts=1)["id"]
            ids.append(id)
            with self.subTest(argv=argv):
                rc, out, err = self.d.cli("wait", id)
                self.assertEqual(rc, want, "forkq wait: %s" % err)
        # Several ids: the first that did not succeed decides.
        rc, _, err = self.d.cli("wait", ids[0], ids[1], ids[3])
        self.assertEqual(rc, 7, err)
        rc, _, err = self.d.cli("wait", ids[0], ids[3], ids[1])
        self.assertEqual(rc, 137, err)
        rc, _, err = self.d.cli("wait", ids[0], ids[0])
        self.assertEqual(rc, 0, err)

    def test_wait_blocks_until_final(self):
        gate = self.path("gate")
        t = self.d.submit(fq("waitfile", gate, 60))
        p = self.track_proc(subprocess.Popen(
            [fqtest.FORKQ, "-s", self.d.sock, "wait", str(t["id"])],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env=fqtest.client_env()))
        self.d.wait_running_pid(t["id"])
        self.assertIsNone(p.poll(), "forkq wait returned early")
        self.touch(gate)
        self.assertEqual(p.wait(30), 0)

    def test_times_are_consistent(self):
        t = self.run_task(fq("sleep", 0.5))
        c, s, f = (parse_ts(t[k]) for k in ("created_at", "started_at",
                                            "finished_at"))
        self.assertLessEqual(c, s + 0.001)
        self.assertGreaterEqual(f - s, 0.45)
        self.assertGreaterEqual(t["attempts"][0]["duration_ms"], 450)


class OutputCap(fqtest.TestCase):
    """--max-output: what a stream holds past the cap is dropped, the task
    is not held up by it, and one event says so."""

    def test_output_past_the_cap_is_dropped_and_said_once(self):
        d = self.start_daemon(extra_args=["--max-output", "10K"])
        size = 3 * 1024 * 1024
        over = d.wait_final(d.submit(fq("output", size))["id"])
        self.assertEqual((over["state"], over["outcome"]),
                         ("succeeded", "success"), json.dumps(over))
        self.assertEqual(d.output(over["id"]), pattern(size)[:10240])
        # Exactly the cap, on stderr: all kept, nothing said.
        full = d.wait_final(d.submit(fq("output", 10240, "stderr"))["id"])
        self.assertEqual(full["state"], "succeeded", json.dumps(full))
        self.assertEqual(d.output(full["id"], stream="stderr"),
                         pattern(10240))
        d.wait_event(lambda e: e.get("task") == full["id"] and
                     e.get("event") == "task.succeeded")
        said = [e for e in d.events()
                if e.get("event") == "task.output_truncated"]
        self.assertEqual(len(said), 1, said)
        started = d.task_events(over["id"], "task.started")
        self.assertEqual(
            {k: said[0].get(k) for k in ("task", "attempt", "pid", "stream",
                                         "limit", "level")},
            {"task": over["id"], "attempt": 1, "pid": started[0]["pid"],
             "stream": "stdout", "limit": 10240, "level": "warn"})

    def test_zero_is_no_cap(self):
        d = self.start_daemon(extra_args=["--max-output", "0"])
        size = 200000
        t = d.wait_final(d.submit(fq("output", size))["id"])
        self.assertEqual(d.output(t["id"]), pattern(size))
        self.assertEqual([e for e in d.events()
                          if e.get("event") == "task.output_truncated"], [])


if __name__ == "__main__":
    fqtest.main()
