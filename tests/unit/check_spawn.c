/*
 * check_spawn.c: unit tests of spawn.c with real processes: what a child
 * reports of its exec once reaped, the PATH search, and that children in
 * flight at once (forkqd does not wait for their exec where it can) each
 * run what their own request said, even when the caller reuses the request
 * as soon as spawn_child returns. And proctree.c's reader of /proc and
 * cgroupfs files, which tasks' environments and cgroups are read by.
 */
#include "config.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forkqd.h"
#include "check_run.h"

#define NOFILE	4	/* rlimit_names: "nofile" */

/* A NULL-terminated argv of string literals (-Wwrite-strings). */
#define ARGV(...)	((char *const *)(uintptr_t)(const char *const []){ \
			    __VA_ARGS__, NULL })

static char	 tmpdir[64];
static char	 noexec_dir[128];	/* holds a "true" that is no program */

static void
setup(void)
{
	char	path[PATH_MAX];
	int	fd;

	/* Anew for each test: with CK_FORK=no they share this process. */
	snprintf(tmpdir, sizeof tmpdir, "/tmp/check_spawn.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
	snprintf(noexec_dir, sizeof noexec_dir, "%s/noexec", tmpdir);
	ck_assert_int_eq(mkdir(noexec_dir, 0755), 0);
	snprintf(path, sizeof path, "%s/true", noexec_dir);
	ck_assert_int_ne(fd = open(path, O_WRONLY | O_CREAT, 0644), -1);
	close(fd);
	spawn_init();
}

static void
teardown(void)
{
	char	path[PATH_MAX];

	snprintf(path, sizeof path, "%s/true", noexec_dir);
	unlink(path);
	rmdir(noexec_dir);
	rmdir(tmpdir);
}

/* A request for argv with its output to out_fd (or /dev/null). */
static void
req_init(struct spawn_req *req, char *const *argv, const char *path,
    int out_fd)
{
	static const char *const	 envp[] = { "LC_ALL=C", NULL };
	static int			 null_fd = -1, hb[2] = { -1, -1 };

	if (null_fd == -1) {
		ck_assert_int_ne(null_fd = open("/dev/null", O_WRONLY), -1);
		ck_assert_int_eq(pipe(hb), 0);
	}
	memset(req, 0, sizeof *req);
	req->argv = argv;
	req->envp = (char *const *)(uintptr_t)envp;
	req->path = path;
	req->cwd = "/";
	req->stdout_fd = out_fd != -1 ? out_fd : null_fd;
	req->stderr_fd = null_fd;
	req->heartbeat_fd = hb[1];
	req->cgroup_fd = req->cgroup_dir_fd = -1;
	req->uid = (uid_t)-1;
}

/* Reaps pid; returns its wait status. */
static int
reap(pid_t pid)
{
	int	status;

	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	return (status);
}

static void
assert_exited(int status, int code)
{
	ck_assert(WIFEXITED(status));
	ck_assert_int_eq(WEXITSTATUS(status), code);
}

static void
assert_killed(int status, int sig)
{
	ck_assert(WIFSIGNALED(status));
	ck_assert_int_eq(WTERMSIG(status), sig);
}

/* Spawns req, reaps it, returns the exec's errno; *status its wait status. */
static int
run(const struct spawn_req *req, int *status, const char **step)
{
	struct spawn_status	st;
	pid_t			pid;

	ck_assert_int_gt(pid = spawn_child(req, &st), 0);
	*status = reap(pid);
	return (spawn_reaped(&st, step));
}

/* req's program runs and exits with code. */
static void
assert_runs(const struct spawn_req *req, int code)
{
	const char	*step;
	int		 status;

	ck_assert_int_eq(run(req, &status, &step), 0);
	assert_exited(status, code);
}

/* req's child fails before running anything: errno err at step. */
static void
assert_fails(const struct spawn_req *req, int err, const char *step_want)
{
	const char	*step;
	int		 status;

	ck_assert_int_eq(run(req, &status, &step), err);
	ck_assert_str_eq(step, step_want);
	assert_exited(status, 127);
}

START_TEST(test_exec_succeeds_status_is_the_programs)
{
	struct spawn_req	 req;

	req_init(&req, ARGV("/bin/sh", "-c", "exit 7"), NULL, -1);
	assert_runs(&req, 7);
}
END_TEST

START_TEST(test_missing_program_is_enoent_at_exec)
{
	struct spawn_req	 req;

	req_init(&req, ARGV("/nonexistent/prog"), NULL, -1);
	assert_fails(&req, ENOENT, "exec");
}
END_TEST

START_TEST(test_path_search_goes_past_unusable_entries)
{
	struct spawn_req	 req;
	char			 path[PATH_MAX * 2];

	/* Not a program (EACCES), missing (ENOENT), then the real one. */
	snprintf(path, sizeof path, "%s:%s/missing:/bin:/usr/bin",
	    noexec_dir, tmpdir);
	req_init(&req, ARGV("true"), path, -1);
	assert_runs(&req, 0);
}
END_TEST

START_TEST(test_path_search_with_only_unusable_is_eacces)
{
	struct spawn_req	 req;

	req_init(&req, ARGV("true"), noexec_dir, -1);
	assert_fails(&req, EACCES, "exec");
	req_init(&req, ARGV("no-such-program-here"), noexec_dir, -1);
	assert_fails(&req, ENOENT, "exec");
}
END_TEST

START_TEST(test_chdir_failure_is_named)
{
	struct spawn_req	 req;

	req_init(&req, ARGV("/bin/true"), NULL, -1);
	req.cwd = "/nonexistent/dir";
	assert_fails(&req, ENOENT, "chdir");
}
END_TEST

/*
 * Where the child joins its cgroup itself (no clone3), a join that fails
 * leaves it outside, where the stops of its task (which signal the
 * cgroup) would not reach it: it does not run. An fd open for reading
 * only makes the write fail.
 */
START_TEST(test_failed_cgroup_join_runs_nothing)
{
	struct spawn_req	 req;
	int			 fd;

	ck_assert_int_ne(fd = open("/dev/null", O_RDONLY | O_CLOEXEC), -1);
	req_init(&req, ARGV("/bin/true"), NULL, -1);
	req.cgroup_fd = fd;
	assert_fails(&req, EBADF, "joining its cgroup");
	close(fd);
}
END_TEST

START_TEST(test_rlimit_failure_names_the_limit)
{
	struct spawn_req	 req;

	req_init(&req, ARGV("/bin/true"), NULL, -1);
	req.rlimit_set[NOFILE] = 1;
	req.rlimits[NOFILE].rlim_cur = 64;
	req.rlimits[NOFILE].rlim_max = 32;	/* soft above hard: EINVAL */
	assert_fails(&req, EINVAL, "setrlimit nofile");
}
END_TEST

/*
 * Many children at once, the request scribbled over after each spawn: each
 * must run its own argv in its own cwd, with its own output pipe.
 */
#define NCHILDREN	24

START_TEST(test_children_in_flight_keep_their_own_request)
{
	struct spawn_req	 req;
	struct spawn_status	 st[NCHILDREN];
	const char		*argv[NCHILDREN][4];
	char			 script[NCHILDREN][64];
	char			 buf[128], want[128];
	pid_t			 pid[NCHILDREN];
	int			 out[NCHILDREN][2], i, status;
	const char		*step;
	ssize_t			 n;

	for (i = 0; i < NCHILDREN; i++) {
		ck_assert_int_eq(pipe2(out[i], O_CLOEXEC), 0);
		snprintf(script[i], sizeof script[i],
		    "echo child %d in \"$(pwd)\"", i);
		argv[i][0] = "/bin/sh";
		argv[i][1] = "-c";
		argv[i][2] = script[i];
		argv[i][3] = NULL;
		req_init(&req, (char *const *)(uintptr_t)argv[i], NULL,
		    out[i][1]);
		req.cwd = i % 2 ? tmpdir : "/";
		ck_assert_int_gt(pid[i] = spawn_child(&req, &st[i]), 0);
		memset(&req, 0xa5, sizeof req);
		close(out[i][1]);
	}
	for (i = 0; i < NCHILDREN; i++) {
		status = reap(pid[i]);
		ck_assert_int_eq(spawn_reaped(&st[i], &step), 0);
		assert_exited(status, 0);
		n = read(out[i][0], buf, sizeof buf - 1);
		ck_assert_int_gt(n, 0);
		buf[n] = '\0';
		snprintf(want, sizeof want, "child %d in %s\n", i,
		    i % 2 ? tmpdir : "/");
		ck_assert_str_eq(buf, want);
		close(out[i][0]);
	}
}
END_TEST

/*
 * A child of another user runs with the groups of its request, even when
 * the caller's list changes as soon as spawn_child returns (the slot keeps
 * a copy until the exec). Root only: setgroups.
 */
START_TEST(test_child_of_another_user_has_its_groups)
{
	struct spawn_req	 req;
	struct spawn_status	 st;
	gid_t			 groups[3] = { 65534, 4242, 4243 };
	char			 buf[128];
	pid_t			 pid;
	int			 out[2];
	const char		*step;
	ssize_t			 n;

	if (geteuid() != 0)
		return;
	ck_assert_int_eq(pipe2(out, O_CLOEXEC), 0);
	req_init(&req, ARGV("/usr/bin/id", "-G"), NULL, out[1]);
	req.uid = 65534;
	req.gid = 65534;
	req.groups = groups;
	req.ngroups = 3;
	ck_assert_int_gt(pid = spawn_child(&req, &st), 0);
	memset(groups, 0, sizeof groups);
	close(out[1]);
	assert_exited(reap(pid), 0);
	ck_assert_int_eq(spawn_reaped(&st, &step), 0);
	n = read(out[0], buf, sizeof buf - 1);
	ck_assert_int_gt(n, 0);
	buf[n] = '\0';
	ck_assert_str_eq(buf, "65534 4242 4243\n");
	close(out[0]);
}
END_TEST

/* usergroups.c's thread says a lookup ended on this pipe. */
static int	found_pipe[2] = { -1, -1 };

static void
groups_found(void)
{
	(void)!write(found_pipe[1], "x", 1);
}

static void
groups_setup(void)
{
	setup();
	ck_assert_int_eq(pipe(found_pipe), 0);
	usergroups_notify(groups_found);
}

static void
groups_teardown(void)
{
	usergroups_notify(NULL);
	usergroups_free_all();
	usergroups_set_lookup(NULL);
	close(found_pipe[0]);
	close(found_pipe[1]);
	teardown();
}

/* Waits for a lookup to end (bounded: a loaded machine), then takes it. */
static void
wait_groups_found(void)
{
	struct pollfd	pfd = { .fd = found_pipe[0], .events = POLLIN };
	char		c;

	ck_assert_int_eq(poll(&pfd, 1, 30000), 1);
	ck_assert_int_eq(read(found_pipe[0], &c, 1), 1);
	usergroups_collect();
}

/*
 * A uid the user database does not know gets its gid alone; a known one
 * its gid among its groups; the list is kept for the next start. Each is
 * known once its first lookup ended, not before.
 */
START_TEST(test_usergroups_of_unknown_and_known_users)
{
	const gid_t	*list, *again;
	int		 n, i, has_gid = 0;

	ck_assert_int_eq(usergroups_get(3999999, 4321, &list), 0);
	wait_groups_found();
	n = usergroups_get(3999999, 4321, &list);
	ck_assert_int_eq(n, 1);
	ck_assert_uint_eq(list[0], 4321);

	ck_assert_int_eq(usergroups_get(0, 4321, &list), 0);
	wait_groups_found();
	n = usergroups_get(0, 4321, &list);
	ck_assert_int_ge(n, 1);
	for (i = 0; i < n; i++)
		has_gid |= list[i] == 4321;
	ck_assert(has_gid);
	ck_assert_int_eq(usergroups_get(0, 4321, &again), n);
	ck_assert_ptr_eq(again, list);
}
END_TEST

/* A lookup that answers only once released, as a hung directory might. */
static int	release_pipe[2] = { -1, -1 };

static int
lookup_released(uid_t uid, gid_t gid, gid_t **list, int *n, char **why)
{
	struct pollfd	pfd = { .fd = release_pipe[0], .events = POLLIN };
	char		c = 'F';

	/* Bounded: were the caller held, the test must fail, not hang. */
	if (poll(&pfd, 1, 30000) != 1 || read(release_pipe[0], &c, 1) != 1 ||
	    c == 'F') {
		*list = NULL;
		*n = 0;
		*why = strdup("the directory failed");
		return (-1);
	}
	*list = calloc(2, sizeof **list);
	(*list)[0] = gid;
	(*list)[1] = (gid_t)c;
	*n = 2;
	return (0);
}

/*
 * A lookup that does not answer holds up nobody who asks: the caller (the
 * loop) is told to wait, however long the database takes, and gets the
 * groups once it answered. A failed first lookup gives the gid alone.
 */
START_TEST(test_usergroups_lookup_does_not_hold_the_caller)
{
	const gid_t	*list;

	ck_assert_int_eq(pipe(release_pipe), 0);
	usergroups_set_lookup(lookup_released);
	ck_assert_int_eq(usergroups_get(5000, 77, &list), 0);
	/* Asked again while it runs: still waiting, with no second lookup. */
	ck_assert_int_eq(usergroups_get(5000, 77, &list), 0);
	ck_assert_int_eq(usergroups_get(5001, 78, &list), 0);
	ck_assert_int_eq(write(release_pipe[1], "\x09", 1), 1);
	wait_groups_found();
	ck_assert_int_eq(usergroups_get(5000, 77, &list), 2);
	ck_assert_uint_eq(list[0], 77);
	ck_assert_uint_eq(list[1], 9);

	ck_assert_int_eq(write(release_pipe[1], "F", 1), 1);
	wait_groups_found();
	ck_assert_int_eq(usergroups_get(5001, 78, &list), 1);
	ck_assert_uint_eq(list[0], 78);
	close(release_pipe[0]);
	close(release_pipe[1]);
}
END_TEST

/*
 * A first lookup that does not answer holds a start back for a bounded
 * time: then the user's tasks start with its gid alone, and its answer,
 * when it comes, is what they get from then on.
 */
START_TEST(test_usergroups_first_wait_is_bounded)
{
	const gid_t	*list;
	int		 n = 0, i;

	ck_assert_int_eq(pipe(release_pipe), 0);
	usergroups_set_lookup(lookup_released);
	ck_assert_int_eq(usergroups_get(5002, 79, &list), 0);
	/* The bound is 5 s; asked again as the dispatch would. */
	for (i = 0; i < 300 && (n = usergroups_get(5002, 79, &list)) == 0;
	    i++)
		usleep(100 * 1000);
	ck_assert_int_eq(n, 1);
	ck_assert_uint_eq(list[0], 79);

	ck_assert_int_eq(write(release_pipe[1], "\x0b", 1), 1);
	wait_groups_found();
	ck_assert_int_eq(usergroups_get(5002, 79, &list), 2);
	ck_assert_uint_eq(list[1], 11);
	close(release_pipe[0]);
	close(release_pipe[1]);
}
END_TEST

static void
on_signal(int sig)
{
}

/*
 * A signal sent as soon as spawn_child returns is not lost, nor taken by
 * forkqd's handler in the child before its exec (then sleep would run on).
 */
START_TEST(test_signal_right_after_spawn_is_taken)
{
	struct spawn_req	 req;
	struct spawn_status	 st;
	pid_t			 pid;
	int			 status;

	ck_assert(signal(SIGTERM, on_signal) != SIG_ERR);
	req_init(&req, ARGV("/bin/sleep", "60"), NULL, -1);
	ck_assert_int_gt(pid = spawn_child(&req, &st), 0);
	ck_assert_int_eq(kill(pid, SIGTERM), 0);
	status = reap(pid);
	assert_killed(status, SIGTERM);
}
END_TEST

/* What forkqd ignores is not ignored in the task. */
START_TEST(test_ignored_signal_is_reset)
{
	struct spawn_req	 req;
	const char		*step;
	int			 status;

	ck_assert(signal(SIGINT, SIG_IGN) != SIG_ERR);
	req_init(&req, ARGV("/bin/sh", "-c", "kill -INT $$"), NULL, -1);
	ck_assert_int_eq(run(&req, &status, &step), 0);
	assert_killed(status, SIGINT);
}
END_TEST

/* proc_records' callback: counts records, keeping up to 4 short ones. */
struct records_seen {
	size_t	n;
	char	first[4][16];
};

static int
record_seen(const char *r, size_t len, void *arg)
{
	struct records_seen	*seen = arg;

	if (seen->n < 4 && len < sizeof seen->first[0])
		memcpy(seen->first[seen->n], r, len);
	seen->n++;
	return (0);
}

/*
 * A seq_file gives at most a page a read(2): cgroup.procs of a big task
 * was read up to its first 600 pids or so. /proc/self/maps is one too;
 * 300 mappings (alternately writable, so that none merge) make it some
 * 25 KiB.
 */
START_TEST(test_proc_records_reads_a_seq_file_to_its_end)
{
	struct records_seen	 seen;
	long			 page = sysconf(_SC_PAGESIZE);
	char			*m[300];
	size_t			 i;

	for (i = 0; i < 300; i++) {
		m[i] = mmap(NULL, (size_t)page, i % 2 ? PROT_READ :
		    PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		ck_assert(m[i] != MAP_FAILED);
	}
	memset(&seen, 0, sizeof seen);
	ck_assert_int_eq(proc_records("/proc/self/maps", '\n', record_seen,
	    &seen), 0);
	ck_assert_uint_ge(seen.n, 300);
	for (i = 0; i < 300; i++)
		munmap(m[i], (size_t)page);
}
END_TEST

/*
 * A record longer than the buffer (an environment variable of 20 KiB) is
 * skipped whole, the records around it are not, and a last one without
 * its separator counts.
 */
START_TEST(test_proc_records_skips_a_long_record)
{
	struct records_seen	 seen;
	char			 path[PATH_MAX], *big;
	size_t			 bigl = PROC_RECORD_MAX + 4000;
	int			 fd;

	snprintf(path, sizeof path, "%s/records", tmpdir);
	ck_assert_int_ne(fd = open(path, O_WRONLY | O_CREAT, 0600), -1);
	big = malloc(bigl);
	ck_assert_ptr_nonnull(big);
	memset(big, 'x', bigl);
	big[bigl - 1] = '\0';
	ck_assert_int_eq(write(fd, "A=1", 4), 4);
	ck_assert_int_eq(write(fd, big, bigl), (ssize_t)bigl);
	ck_assert_int_eq(write(fd, "B=2\0C=3", 7), 7);
	close(fd);
	free(big);
	memset(&seen, 0, sizeof seen);
	ck_assert_int_eq(proc_records(path, '\0', record_seen, &seen), 0);
	unlink(path);
	ck_assert_uint_eq(seen.n, 3);
	ck_assert_str_eq(seen.first[0], "A=1");
	ck_assert_str_eq(seen.first[1], "B=2");
	ck_assert_str_eq(seen.first[2], "C=3");
}
END_TEST

static Suite *
spawn_suite(void)
{
	Suite	*s = suite_create("spawn");
	TCase	*tc;

	tc = tcase_create("exec");
	tcase_add_checked_fixture(tc, setup, teardown);
	/* Real processes on a loaded machine: bound generously. */
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_exec_succeeds_status_is_the_programs);
	tcase_add_test(tc, test_missing_program_is_enoent_at_exec);
	tcase_add_test(tc, test_path_search_goes_past_unusable_entries);
	tcase_add_test(tc, test_path_search_with_only_unusable_is_eacces);
	tcase_add_test(tc, test_chdir_failure_is_named);
	tcase_add_test(tc, test_rlimit_failure_names_the_limit);
	tcase_add_test(tc, test_failed_cgroup_join_runs_nothing);
	tcase_add_test(tc, test_children_in_flight_keep_their_own_request);
	tcase_add_test(tc, test_signal_right_after_spawn_is_taken);
	tcase_add_test(tc, test_ignored_signal_is_reset);
	tcase_add_test(tc, test_child_of_another_user_has_its_groups);
	suite_add_tcase(s, tc);

	tc = tcase_create("usergroups");
	tcase_add_checked_fixture(tc, groups_setup, groups_teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_usergroups_of_unknown_and_known_users);
	tcase_add_test(tc, test_usergroups_lookup_does_not_hold_the_caller);
	tcase_add_test(tc, test_usergroups_first_wait_is_bounded);
	suite_add_tcase(s, tc);

	tc = tcase_create("proc_records");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_proc_records_reads_a_seq_file_to_its_end);
	tcase_add_test(tc, test_proc_records_skips_a_long_record);
	suite_add_tcase(s, tc);
	return (s);
}

int
main(void)
{
	return (check_run(spawn_suite()));
}
