/*
 * fqtask: plays the tasks the black-box tests need, well-behaved or not.
 *
 * One program, one subcommand per behaviour (see usage() below).  It uses
 * only libc, prints nothing it is not asked to, and exits 2 on a usage
 * error so a test that passes a wrong argument fails visibly.  Times are
 * seconds (fractions allowed) unless the name says _ms.
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static void
usage(void)
{
	fprintf(stderr,
	    "usage: fqtask COMMAND [ARGS]\n"
	    "  sleep SECS                 sleep, exit 0\n"
	    "  exit N                     exit with status N\n"
	    "  spin SECS                  burn CPU for SECS of wall-clock time\n"
	    "  spin-cpu SECS              burn CPU until it has used SECS of it\n"
	    "  signal SIG                 raise SIG (number or name)\n"
	    "  ignore-term SECS [READY]   ignore SIGTERM, create READY, sleep\n"
	    "  grandchild PIDFILE [SECS [PARENT_SECS]]\n"
	    "                             leave a setsid'd grandchild sleeping\n"
	    "                             SECS (600); then sleep PARENT_SECS\n"
	    "                             (0: exit 0 at once)\n"
	    "  groupchild PIDFILE [SECS [PARENT_SECS]]\n"
	    "                             the same with a child left in the\n"
	    "                             task's session, in a group of its own,\n"
	    "                             with an empty environment\n"
	    "  fds                        list open fds (stdout), details (stderr)\n"
	    "  rlimits                    print NAME soft hard\n"
	    "  env                        print the environment\n"
	    "  argv [ARG...]              print each ARG followed by a NUL byte\n"
	    "  pwd                        print the working directory\n"
	    "  stdin                      print what fd 0 is and bytes read\n"
	    "  tty                        print \"tty\" if /dev/tty opens (a\n"
	    "                             controlling terminal), else\n"
	    "                             \"no tty: errno N\"\n"
	    "  signals                    print \"blocked\" and \"ignored\", each\n"
	    "                             with the signals so, by number\n"
	    "  heartbeat INTERVAL_MS COUNT [progress|LINE]\n"
	    "                             write COUNT lines to FORKQ_HEARTBEAT_FD\n"
	    "  hbscript ITEM...           per ITEM: @SECS sleeps, ?PATH waits for\n"
	    "                             PATH to exist (10 min at most), !PATH\n"
	    "                             creates PATH, %%close closes the fd,\n"
	    "                             anything else is written\n"
	    "                             as a line to FORKQ_HEARTBEAT_FD\n"
	    "  output BYTES [stderr]      write BYTES bytes of a fixed pattern\n"
	    "  counter FILE FAILS         count runs in FILE; exit 1 while the\n"
	    "                             count <= FAILS, then 0\n"
	    "  drip N INTERVAL_MS         print \"line I\" N times, INTERVAL_MS apart\n"
	    "  waitfile PATH SECS         exit 0 once PATH exists, 1 after SECS\n"
	    "  until-attempt N COMMAND [ARGS]\n"
	    "                             run COMMAND while FORKQ_ATTEMPT < N,\n"
	    "                             else exit 0\n"
	    "  span FILE SECS             write start and end times (CLOCK_MONOTONIC\n"
	    "                             ns) to FILE around a sleep\n");
	exit(2);
}

static double
parse_double(const char *s)
{
	char	*end;
	double	 v;

	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || end == s || *end != '\0' || v < 0) {
		fprintf(stderr, "fqtask: bad number: %s\n", s);
		exit(2);
	}
	return v;
}

static long long
parse_ll(const char *s)
{
	char		*end;
	long long	 v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0') {
		fprintf(stderr, "fqtask: bad integer: %s\n", s);
		exit(2);
	}
	return v;
}

/* Sleep for secs seconds, resuming after signal handlers. */
static void
sleep_secs(double secs)
{
	struct timespec	ts;

	ts.tv_sec = (time_t)secs;
	ts.tv_nsec = (long)((secs - (double)ts.tv_sec) * 1e9);
	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

static long long
clock_ns(clockid_t id)
{
	struct timespec	ts;

	clock_gettime(id, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long long
mono_ns(void)
{
	return clock_ns(CLOCK_MONOTONIC);
}

/* Write all of buf to fd; 0 or -1. */
static int
write_all(int fd, const void *buf, size_t len)
{
	const char	*p = buf;
	ssize_t		 n;

	while (len > 0) {
		n = write(fd, p, len);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Write text to path atomically (temporary file and rename). */
static void
write_file_atomic(const char *path, const char *text)
{
	char	tmp[PATH_MAX];
	int	fd;

	if (snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid()) >=
	    (int)sizeof tmp) {
		fprintf(stderr, "fqtask: path too long\n");
		exit(2);
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd == -1 || write_all(fd, text, strlen(text)) == -1 ||
	    close(fd) == -1 || rename(tmp, path) == -1) {
		perror("fqtask: write_file_atomic");
		exit(3);
	}
}

static const struct {
	const char	*name;
	int		 sig;
} signals[] = {
	{ "HUP", SIGHUP }, { "INT", SIGINT }, { "QUIT", SIGQUIT },
	{ "ILL", SIGILL }, { "ABRT", SIGABRT }, { "FPE", SIGFPE },
	{ "KILL", SIGKILL }, { "SEGV", SIGSEGV }, { "PIPE", SIGPIPE },
	{ "ALRM", SIGALRM }, { "TERM", SIGTERM }, { "USR1", SIGUSR1 },
	{ "USR2", SIGUSR2 }, { "BUS", SIGBUS }, { "XCPU", SIGXCPU },
	{ "XFSZ", SIGXFSZ },
};

static int
parse_signal(const char *s)
{
	size_t	i;

	if (strncmp(s, "SIG", 3) == 0)
		s += 3;
	for (i = 0; i < sizeof signals / sizeof signals[0]; i++)
		if (strcmp(s, signals[i].name) == 0)
			return signals[i].sig;
	return (int)parse_ll(s);
}

static int
cmd_signal(const char *name)
{
	struct rlimit	 rl = { 0, 0 };
	struct sigaction sa;
	sigset_t	 set;
	int		 sig = parse_signal(name);

	/* No core file: the test wants the signal, not the dump. */
	setrlimit(RLIMIT_CORE, &rl);
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_DFL;
	sigaction(sig, &sa, NULL);
	sigemptyset(&set);
	sigaddset(&set, sig);
	sigprocmask(SIG_UNBLOCK, &set, NULL);
	raise(sig);
	fprintf(stderr, "fqtask: still alive after signal %d\n", sig);
	return 3;
}

static int
cmd_ignore_term(double secs, const char *ready)
{
	signal(SIGTERM, SIG_IGN);
	if (ready != NULL)
		write_file_atomic(ready, "ready\n");
	sleep_secs(secs);
	return 0;
}

/* Once what was left wrote pidfile (100 s at most), sleeps parent_secs. */
static int
await_pidfile(const char *pidfile, double parent_secs)
{
	int	i;

	for (i = 0; i < 10000 && access(pidfile, F_OK) == -1; i++)
		sleep_secs(0.01);
	if (access(pidfile, F_OK) == -1) {
		fprintf(stderr, "fqtask: what was left wrote no pidfile\n");
		return 3;
	}
	if (parent_secs > 0)
		sleep_secs(parent_secs);
	return 0;
}

/*
 * A child that stays in the task's session, in a process group of its own,
 * and has an empty environment (an exec of this program's sleep): no
 * group, environment or FORKQ_TASK_ID ties it to the task, only its
 * session.
 */
static int
cmd_groupchild(const char *pidfile, double secs, double parent_secs)
{
	char	 buf[32], secs_arg[32];
	char	*empty[] = { NULL };
	pid_t	 child;

	unlink(pidfile);
	snprintf(secs_arg, sizeof secs_arg, "%g", secs);
	child = fork();
	if (child == -1) {
		perror("fqtask: fork");
		return 3;
	}
	if (child == 0) {
		if (setpgid(0, 0) == -1)
			_exit(3);
		snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
		write_file_atomic(pidfile, buf);
		execle("/proc/self/exe", "fqtask", "sleep", secs_arg,
		    (char *)NULL, empty);
		_exit(3);
	}
	return (await_pidfile(pidfile, parent_secs));
}

static int
cmd_grandchild(const char *pidfile, double secs, double parent_secs)
{
	char	buf[32];
	pid_t	child, gc;
	int	status;

	unlink(pidfile);
	child = fork();
	if (child == -1) {
		perror("fqtask: fork");
		return 3;
	}
	if (child == 0) {
		if (setsid() == -1)
			_exit(3);
		gc = fork();
		if (gc == -1)
			_exit(3);
		if (gc > 0)
			_exit(0);
		snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
		write_file_atomic(pidfile, buf);
		sleep_secs(secs);
		_exit(0);
	}
	while (waitpid(child, &status, 0) == -1 && errno == EINTR)
		;
	return (await_pidfile(pidfile, parent_secs));
}

static int
cmd_fds(void)
{
	struct dirent	*de;
	DIR		*d;
	char		 path[sizeof("/proc/self/fd/") + 256], target[PATH_MAX];
	const char	*hb;
	ssize_t		 n;
	int		 dfd;

	if ((d = opendir("/proc/self/fd")) == NULL) {
		perror("fqtask: opendir");
		return 3;
	}
	dfd = dirfd(d);
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		if (atoi(de->d_name) == dfd)
			continue;
		printf("%s\n", de->d_name);
		snprintf(path, sizeof path, "/proc/self/fd/%s", de->d_name);
		n = readlink(path, target, sizeof target - 1);
		target[n < 0 ? 0 : n] = '\0';
		fprintf(stderr, "fd %s -> %s\n", de->d_name, target);
	}
	closedir(d);
	hb = getenv("FORKQ_HEARTBEAT_FD");
	fprintf(stderr, "FORKQ_HEARTBEAT_FD=%s\n", hb != NULL ? hb : "");
	return 0;
}

static void
print_limit(const char *name, int resource)
{
	struct rlimit	rl;

	if (getrlimit(resource, &rl) == -1) {
		printf("%s error error\n", name);
		return;
	}
	printf("%s ", name);
	if (rl.rlim_cur == RLIM_INFINITY)
		printf("unlimited ");
	else
		printf("%llu ", (unsigned long long)rl.rlim_cur);
	if (rl.rlim_max == RLIM_INFINITY)
		printf("unlimited\n");
	else
		printf("%llu\n", (unsigned long long)rl.rlim_max);
}

static int
cmd_rlimits(void)
{
	print_limit("cpu", RLIMIT_CPU);
	print_limit("as", RLIMIT_AS);
	print_limit("fsize", RLIMIT_FSIZE);
	print_limit("core", RLIMIT_CORE);
	print_limit("nofile", RLIMIT_NOFILE);
	print_limit("nproc", RLIMIT_NPROC);
	return 0;
}

/* The signals blocked, then those ignored, as the task was started. */
static int
cmd_signals(void)
{
	struct sigaction	sa;
	sigset_t		mask;
	int			sig;

	if (sigprocmask(SIG_BLOCK, NULL, &mask) == -1)
		return 1;
	printf("blocked");
	for (sig = 1; sig < NSIG; sig++)
		if (sigismember(&mask, sig) == 1)
			printf(" %d", sig);
	printf("\nignored");
	for (sig = 1; sig < NSIG; sig++)
		if (sigaction(sig, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN)
			printf(" %d", sig);
	printf("\n");
	return 0;
}

static int
cmd_stdin(void)
{
	char		target[PATH_MAX], buf[4096];
	ssize_t		n;
	long long	total = 0;

	n = readlink("/proc/self/fd/0", target, sizeof target - 1);
	target[n < 0 ? 0 : n] = '\0';
	printf("stdin %s\n", n < 0 ? "closed" : target);
	for (;;) {
		n = read(0, buf, sizeof buf);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		total += n;
	}
	printf("read %lld %s\n", total, n == 0 ? "eof" : strerror(errno));
	return 0;
}

static int
heartbeat_fd(void)
{
	const char	*s = getenv("FORKQ_HEARTBEAT_FD");

	if (s == NULL) {
		fprintf(stderr, "fqtask: FORKQ_HEARTBEAT_FD not set\n");
		exit(3);
	}
	return (int)parse_ll(s);
}

static int
cmd_heartbeat(long long interval_ms, long long count, const char *what)
{
	char		line[256];
	long long	i;
	int		fd = heartbeat_fd();

	for (i = 1; i <= count; i++) {
		if (what != NULL && strcmp(what, "progress") == 0)
			snprintf(line, sizeof line, "progress %lld\n",
			    i * 100 / count);
		else
			snprintf(line, sizeof line, "%s\n",
			    what != NULL ? what : "beat");
		if (write_all(fd, line, strlen(line)) == -1) {
			perror("fqtask: heartbeat write");
			return 3;
		}
		sleep_secs((double)interval_ms / 1000.0);
	}
	return 0;
}

/* Wait until path exists, at most secs seconds; 0 or -1. */
static int
wait_for_file(const char *path, double secs)
{
	long long	deadline = mono_ns() + (long long)(secs * 1e9);

	while (access(path, F_OK) == -1) {
		if (mono_ns() >= deadline)
			return -1;
		sleep_secs(0.02);
	}
	return 0;
}

static int
cmd_hbscript(int nitems, char **items)
{
	int	fd = heartbeat_fd(), i;

	for (i = 0; i < nitems; i++) {
		if (items[i][0] == '@')
			sleep_secs(parse_double(items[i] + 1));
		else if (items[i][0] == '?') {
			if (wait_for_file(items[i] + 1, 600) == -1) {
				fprintf(stderr, "fqtask: no %s\n", items[i] + 1);
				return 3;
			}
		} else if (items[i][0] == '!')
			write_file_atomic(items[i] + 1, "\n");
		else if (strcmp(items[i], "%close") == 0)
			close(fd);
		else if (write_all(fd, items[i], strlen(items[i])) == -1 ||
		    write_all(fd, "\n", 1) == -1) {
			perror("fqtask: heartbeat write");
			return 3;
		}
	}
	return 0;
}

/* Byte i of the output pattern; the tests compute the same. */
static char
pattern_byte(long long i)
{
	if (i % 64 == 63)
		return '\n';
	return (char)('a' + i % 26);
}

static int
cmd_output(long long bytes, int fd)
{
	char		buf[8192];
	long long	i = 0;
	size_t		n;

	while (i < bytes) {
		for (n = 0; n < sizeof buf && i < bytes; n++, i++)
			buf[n] = pattern_byte(i);
		if (write_all(fd, buf, n) == -1) {
			perror("fqtask: write");
			return 3;
		}
	}
	return 0;
}

static int
cmd_counter(const char *path, long long fails)
{
	char		buf[64];
	FILE		*f;
	long long	count = 0;

	if ((f = fopen(path, "r")) != NULL) {
		if (fgets(buf, sizeof buf, f) != NULL)
			count = strtoll(buf, NULL, 10);
		fclose(f);
	}
	count++;
	snprintf(buf, sizeof buf, "%lld\n", count);
	write_file_atomic(path, buf);
	printf("run %lld\n", count);
	return count <= fails ? 1 : 0;
}

static int
cmd_span(const char *path, double secs)
{
	char	buf[64];
	int	fd;

	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC,
	    0644);
	if (fd == -1) {
		perror("fqtask: open");
		return 3;
	}
	snprintf(buf, sizeof buf, "%lld\n", mono_ns());
	write_all(fd, buf, strlen(buf));
	sleep_secs(secs);
	snprintf(buf, sizeof buf, "%lld\n", mono_ns());
	write_all(fd, buf, strlen(buf));
	close(fd);
	return 0;
}

int
main(int argc, char **argv)
{
	const char	*cmd;
	char		 cwd[PATH_MAX];
	char		**e;
	int		 i;

	if (argc < 2)
		usage();
	cmd = argv[1];
	argc -= 2;
	argv += 2;

	if (strcmp(cmd, "sleep") == 0 && argc == 1) {
		sleep_secs(parse_double(argv[0]));
		return 0;
	}
	/* spin: wall-clock time; spin-cpu: its own CPU time, however
	 * little of a CPU a loaded machine gives it. */
	if ((strcmp(cmd, "spin") == 0 || strcmp(cmd, "spin-cpu") == 0) &&
	    argc == 1) {
		clockid_t clock = strcmp(cmd, "spin") == 0 ?
		    CLOCK_MONOTONIC : CLOCK_PROCESS_CPUTIME_ID;
		long long end = clock_ns(clock) +
		    (long long)(parse_double(argv[0]) * 1e9);
		volatile unsigned long x = 0;

		while (clock_ns(clock) < end)
			for (i = 0; i < 100000; i++)
				x += (unsigned long)i;
		return 0;
	}
	if (strcmp(cmd, "exit") == 0 && argc == 1)
		return (int)parse_ll(argv[0]);
	if (strcmp(cmd, "signal") == 0 && argc == 1)
		return cmd_signal(argv[0]);
	if (strcmp(cmd, "ignore-term") == 0 && (argc == 1 || argc == 2))
		return cmd_ignore_term(parse_double(argv[0]),
		    argc == 2 ? argv[1] : NULL);
	if (strcmp(cmd, "grandchild") == 0 && argc >= 1 && argc <= 3)
		return cmd_grandchild(argv[0],
		    argc >= 2 ? parse_double(argv[1]) : 600,
		    argc >= 3 ? parse_double(argv[2]) : 0);
	if (strcmp(cmd, "groupchild") == 0 && argc >= 1 && argc <= 3)
		return cmd_groupchild(argv[0],
		    argc >= 2 ? parse_double(argv[1]) : 600,
		    argc >= 3 ? parse_double(argv[2]) : 0);
	if (strcmp(cmd, "fds") == 0 && argc == 0)
		return cmd_fds();
	if (strcmp(cmd, "rlimits") == 0 && argc == 0)
		return cmd_rlimits();
	if (strcmp(cmd, "env") == 0 && argc == 0) {
		for (e = environ; *e != NULL; e++)
			printf("%s\n", *e);
		return 0;
	}
	if (strcmp(cmd, "argv") == 0) {
		for (i = 0; i < argc; i++) {
			fputs(argv[i], stdout);
			putchar('\0');
		}
		return 0;
	}
	if (strcmp(cmd, "pwd") == 0 && argc == 0) {
		if (getcwd(cwd, sizeof cwd) == NULL) {
			perror("fqtask: getcwd");
			return 3;
		}
		printf("%s\n", cwd);
		return 0;
	}
	if (strcmp(cmd, "stdin") == 0 && argc == 0)
		return cmd_stdin();
	if (strcmp(cmd, "signals") == 0 && argc == 0)
		return cmd_signals();
	if (strcmp(cmd, "tty") == 0 && argc == 0) {
		int	fd = open("/dev/tty", O_RDWR | O_NOCTTY);

		if (fd == -1)
			printf("no tty: errno %d\n", errno);
		else
			printf("tty\n");
		return 0;
	}
	if (strcmp(cmd, "heartbeat") == 0 && (argc == 2 || argc == 3))
		return cmd_heartbeat(parse_ll(argv[0]), parse_ll(argv[1]),
		    argc == 3 ? argv[2] : NULL);
	if (strcmp(cmd, "hbscript") == 0)
		return cmd_hbscript(argc, argv);
	if (strcmp(cmd, "drip") == 0 && argc == 2) {
		long long n = parse_ll(argv[0]), k;

		for (k = 1; k <= n; k++) {
			printf("line %lld\n", k);
			fflush(stdout);
			if (k < n)
				sleep_secs((double)parse_ll(argv[1]) / 1000.0);
		}
		return 0;
	}
	if (strcmp(cmd, "waitfile") == 0 && argc == 2)
		return wait_for_file(argv[0], parse_double(argv[1])) == 0 ? 0 : 1;
	if (strcmp(cmd, "until-attempt") == 0 && argc >= 2) {
		const char *a = getenv("FORKQ_ATTEMPT");

		if (a == NULL || parse_ll(a) >= parse_ll(argv[0]))
			return 0;
		argv[0] = argv[-1];
		return main(argc, argv);
	}
	if (strcmp(cmd, "output") == 0 && (argc == 1 || argc == 2)) {
		if (argc == 2 && strcmp(argv[1], "stderr") != 0)
			usage();
		return cmd_output(parse_ll(argv[0]), argc == 2 ? 2 : 1);
	}
	if (strcmp(cmd, "counter") == 0 && argc == 2)
		return cmd_counter(argv[0], parse_ll(argv[1]));
	if (strcmp(cmd, "span") == 0 && argc == 2)
		return cmd_span(argv[0], parse_double(argv[1]));
	usage();
	return 2;
}
