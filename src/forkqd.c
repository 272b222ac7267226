/*
 * forkqd.c: main: options, the state dir and its lock, the database and
 * the log, then daemon_run(). Start-up failures end here with a message.
 */
#include "config.h"

#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <libutil.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "forkqd.h"

/* How long a start waits for the lock of a forkqd that is gone: 5 s. */
#define LOCK_TRIES	500

static struct pidfh	*pidfh;

static void __attribute__((noreturn))
usage(int status)
{
	fprintf(status == 0 ? stdout : stderr,
	    "usage: forkqd [-s SOCKET] [-D STATE_DIR] [-j WORKERS] [-l LOGFILE] "
	    "[options]\n"
	    "  -s, --socket PATH            where to listen\n"
	    "  -D, --state-dir DIR          database and captured output\n"
	    "  -j, --workers N              most tasks running at once\n"
	    "  -l, --log PATH               event log (JSON lines), - = stderr\n"
	    "      --log-format json|text   the log's form (default json)\n"
	    "      --cgroup auto|off        a cgroup v2 per attempt where "
	    "possible (default auto)\n"
	    "      --kill-grace DURATION    SIGTERM to SIGKILL (default 5s)\n"
	    "      --heartbeat-rest DURATION  heartbeat and quiet output "
	    "pipes read at most this often while lines come (default 250ms, "
	    "0 = each line)\n"
	    "      --shutdown-grace DURATION  time tasks get at shutdown "
	    "(default 30s)\n"
	    "      --default-timeout DURATION  per attempt, for tasks that "
	    "set none\n"
	    "      --default-retries N      retries for tasks that set none "
	    "(default 2)\n"
	    "      --retention DURATION     prune finished tasks older than "
	    "this (default 7d, 0 keeps all)\n"
	    "      --socket-mode MODE       socket permissions (default 0600)\n"
	    "      --socket-group GROUP     socket group\n"
	    "      --daemon                 detach and write a pidfile\n"
	    "      --sync full|normal       fsync before answers (full, "
	    "default) or never\n"
	    "      --queue NAME=N           at most N tasks of queue NAME at "
	    "once\n"
	    "      --max-load [HH:MM-HH:MM=]L  start nothing while the load "
	    "per CPU is above L\n"
	    "      --min-free-mem SIZE      start nothing while MemAvailable is "
	    "below SIZE\n"
	    "      --max-output SIZE        captured per stream and attempt "
	    "(default 1G, 0 = no cap)\n"
	    "  -v, --verbose                more diagnostics on stderr\n"
	    "  -h, --help                   this text\n"
	    "  -V, --version                the version\n");
	exit(status);
}

/* A bad option value is a usage error: exit status 2 (forkqd(8)). */
static void __attribute__((noreturn, format(printf, 1, 2)))
usage_errorx(const char *fmt, ...)
{
	va_list	ap;

	fputs("forkqd: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

/* A path given to opt: "" would be named by a later error as nothing. */
static const char *
path_arg(const char *opt, const char *arg)
{
	if (*arg == '\0')
		usage_errorx("%s: an empty path", opt);
	return (arg);
}

/* The value of option opt, read by parse (a duration or a size). */
static int64_t
unit_arg(const char *opt, const char *arg,
    int (*parse)(const char *, int64_t *, const char **))
{
	const char	*err;
	int64_t		 v;

	if (parse(arg, &v, &err) == -1)
		usage_errorx("%s: %s: %s", opt, arg, err);
	return (v);
}

#define duration_arg(opt, arg)	unit_arg(opt, arg, parse_duration_ms)
#define size_arg(opt, arg)	unit_arg(opt, arg, parse_size)

/* An option of two words: 0 for the first, 1 for the second. */
static int
choice_arg(const char *opt, const char *arg, const char *zero,
    const char *one)
{
	if (strcmp(arg, zero) == 0)
		return (0);
	if (strcmp(arg, one) == 0)
		return (1);
	usage_errorx("%s: %s: use %s or %s", opt, arg, zero, one);
}

/*
 * --queue NAME=N: at most N tasks of queue NAME at once. A later one for the
 * same NAME replaces the earlier, as a later option does (a drop-in of a
 * unit adds to its command line); both were in force, the smaller winning.
 */
static void
parse_queue_limit(const char *arg)
{
	const char	*eq = strrchr(arg, '='), *errstr;	/* a=b=3 */
	struct queue_limit *q;
	size_t		 i;
	int		 n;

	if (eq == NULL || eq == arg)
		usage_errorx("--queue: %s: use NAME=N", arg);
	n = (int)parse_whole(eq + 1, 1, 100000, &errstr);
	if (errstr != NULL)
		usage_errorx("--queue: %s: N is %s", arg, errstr);
	for (i = 0; i < config.nqueue_limits; i++) {
		q = &config.queue_limits[i];
		if (strlen(q->name) == (size_t)(eq - arg) &&
		    strncmp(q->name, arg, eq - arg) == 0) {
			q->limit = n;
			return;
		}
	}
	config.queue_limits = xreallocarray(config.queue_limits,
	    config.nqueue_limits + 1, sizeof *config.queue_limits);
	q = &config.queue_limits[config.nqueue_limits++];
	q->name = xstrndup(arg, eq - arg);
	q->limit = n;
}

/* --max-load L or --max-load HH:MM-HH:MM=L (load per online CPU). */
static void
parse_max_load(const char *arg)
{
	struct load_bound	 b;
	const char		*num = arg;
	char			*end;
	size_t			 i;
	int			 h1, m1, h2, m2, n = 0;

	b.from_min = b.to_min = -1;
	if (strchr(arg, '=') != NULL) {
		if (sscanf(arg, "%2d:%2d-%2d:%2d=%n", &h1, &m1, &h2, &m2,
		    &n) != 4 || n == 0 || h1 > 23 || h2 > 24 || m1 > 59 ||
		    m2 > 59 || h1 < 0 || h2 < 0 || m1 < 0 || m2 < 0 ||
		    (h2 == 24 && m2 != 0))
			usage_errorx("--max-load: %s: use L or "
			    "HH:MM-HH:MM=L", arg);
		b.from_min = h1 * 60 + m1;
		b.to_min = h2 * 60 + m2;
		/* It would never apply: a whole day is 00:00-24:00. */
		if (b.from_min == b.to_min)
			usage_errorx("--max-load: %s: the window is empty",
			    arg);
		num = arg + n;
	}
	b.load = strtod(num, &end);
	if (end == num || *end != '\0' || !(b.load >= 0) || isinf(b.load))
		usage_errorx("--max-load: %s: the bound must be a finite "
		    "number >= 0", arg);
	/* One bound without a window: a later one replaces it. */
	for (i = 0; b.from_min < 0 && i < config.nload_bounds; i++) {
		if (config.load_bounds[i].from_min < 0) {
			config.load_bounds[i] = b;
			return;
		}
	}
	config.load_bounds = xreallocarray(config.load_bounds,
	    config.nload_bounds + 1, sizeof *config.load_bounds);
	config.load_bounds[config.nload_bounds++] = b;
}

static void
parse_options(int argc, char **argv)
{
	enum {
		OPT_KILL_GRACE = 256, OPT_SHUTDOWN_GRACE, OPT_DEFAULT_TIMEOUT,
		OPT_DEFAULT_RETRIES, OPT_RETENTION, OPT_SOCKET_MODE,
		OPT_SOCKET_GROUP, OPT_DAEMON, OPT_SYNC, OPT_QUEUE, OPT_MAX_LOAD,
		OPT_MIN_FREE_MEM, OPT_LOG_FORMAT, OPT_CGROUP,
		OPT_MAX_OUTPUT, OPT_HEARTBEAT_REST
	};
	static const struct option longopts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "state-dir", required_argument, NULL, 'D' },
		{ "workers", required_argument, NULL, 'j' },
		{ "log", required_argument, NULL, 'l' },
		{ "kill-grace", required_argument, NULL, OPT_KILL_GRACE },
		{ "heartbeat-rest", required_argument, NULL,
		    OPT_HEARTBEAT_REST },
		{ "shutdown-grace", required_argument, NULL,
		    OPT_SHUTDOWN_GRACE },
		{ "default-timeout", required_argument, NULL,
		    OPT_DEFAULT_TIMEOUT },
		{ "default-retries", required_argument, NULL,
		    OPT_DEFAULT_RETRIES },
		{ "retention", required_argument, NULL, OPT_RETENTION },
		{ "socket-mode", required_argument, NULL, OPT_SOCKET_MODE },
		{ "socket-group", required_argument, NULL, OPT_SOCKET_GROUP },
		{ "daemon", no_argument, NULL, OPT_DAEMON },
		{ "sync", required_argument, NULL, OPT_SYNC },
		{ "queue", required_argument, NULL, OPT_QUEUE },
		{ "max-load", required_argument, NULL, OPT_MAX_LOAD },
		{ "min-free-mem", required_argument, NULL, OPT_MIN_FREE_MEM },
		{ "max-output", required_argument, NULL, OPT_MAX_OUTPUT },
		{ "log-format", required_argument, NULL, OPT_LOG_FORMAT },
		{ "cgroup", required_argument, NULL, OPT_CGROUP },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 }
	};
	static char	 statebuf[PATH_MAX], sockbuf[PATH_MAX];
	static char	 sockenv[PATH_MAX];
	char		 cwd[PATH_MAX];
	const char	*errstr, *xdg;
	struct group	*gr;
	char		*end;
	long		 mode;
	static char	 progname[] = "forkqd";
	char		**args;
	int		 ch, verbose = 0;

	/*
	 * getopt_long names the program by argv[0] in what it refuses:
	 * "/usr/sbin/forkqd: unrecognized option", where forkqd's own
	 * errors say "forkqd:". It reads (and permutes) a copy named so.
	 */
	args = xreallocarray(NULL, (size_t)argc + 1, sizeof *args);
	memcpy(args, argv, ((size_t)argc + 1) * sizeof *args);
	args[0] = progname;
	argv = args;

	config.workers = (int)sysconf(_SC_NPROCESSORS_ONLN);
	if (config.workers < 1)
		config.workers = 1;
	config.kill_grace_ms = 5000;
	config.heartbeat_rest_ms = DEFAULT_HEARTBEAT_REST_MS;
	config.shutdown_grace_ms = 30000;
	config.default_retries = 2;
	config.retention_ms = 7LL * 86400 * 1000;
	config.max_output = DEFAULT_MAX_OUTPUT;
	config.socket_mode = 0600;
	config.socket_gid = (gid_t)-1;
	config.cgroup_mode = 1;

	while ((ch = getopt_long(argc, argv, "s:D:j:l:vhV", longopts,
	    NULL)) != -1) {
		switch (ch) {
		case 's':
			config.socket_path = path_arg("-s", optarg);
			break;
		case 'D':
			config.state_dir = path_arg("-D", optarg);
			break;
		case 'j':
			config.workers = (int)parse_whole(optarg, 1, 100000,
			    &errstr);
			if (errstr != NULL)
				usage_errorx("-j: %s is %s (1..100000)", optarg,
				    errstr);
			break;
		case 'l':
			config.log_path = path_arg("-l", optarg);
			break;
		case OPT_KILL_GRACE:
			config.kill_grace_ms = duration_arg("--kill-grace",
			    optarg);
			break;
		case OPT_HEARTBEAT_REST:
			config.heartbeat_rest_ms = duration_arg(
			    "--heartbeat-rest", optarg);
			if (config.heartbeat_rest_ms > MAX_HEARTBEAT_REST_MS)
				usage_errorx("--heartbeat-rest: %s is more than "
				    "a minute", optarg);
			break;
		case OPT_SHUTDOWN_GRACE:
			config.shutdown_grace_ms = duration_arg(
			    "--shutdown-grace", optarg);
			break;
		case OPT_DEFAULT_TIMEOUT:
			config.default_timeout_ms = duration_arg(
			    "--default-timeout", optarg);
			break;
		case OPT_DEFAULT_RETRIES:
			config.default_retries = (int)parse_whole(optarg, 0,
			    999999, &errstr);
			if (errstr != NULL)
				usage_errorx("--default-retries: %s is %s",
				    optarg, errstr);
			break;
		case OPT_RETENTION:
			config.retention_ms = duration_arg("--retention",
			    optarg);
			break;
		case OPT_SOCKET_MODE:
			/* Octal digits alone: strtol takes " 6", "+6" and "". */
			errno = 0;
			mode = strtol(optarg, &end, 8);
			if (optarg[0] < '0' || optarg[0] > '7' || errno != 0 ||
			    *end != '\0' || mode < 0 || mode > 0777)
				usage_errorx("--socket-mode: %s is not an "
				    "octal mode", optarg);
			config.socket_mode = (mode_t)mode;
			break;
		case OPT_SOCKET_GROUP:
			if ((gr = getgrnam(optarg)) != NULL)
				config.socket_gid = gr->gr_gid;
			else {
				config.socket_gid = (gid_t)parse_whole(optarg, 0,
				    INT32_MAX, &errstr);
				if (errstr != NULL)
					usage_errorx("--socket-group: no "
					    "group %s", optarg);
			}
			break;
		case OPT_DAEMON:
			config.daemonize = 1;
			break;
		case OPT_QUEUE:
			parse_queue_limit(optarg);
			break;
		case OPT_MAX_LOAD:
			parse_max_load(optarg);
			break;
		case OPT_MIN_FREE_MEM:
			config.min_free_mem = size_arg("--min-free-mem",
			    optarg);
			break;
		case OPT_MAX_OUTPUT:
			config.max_output = size_arg("--max-output", optarg);
			break;
		case OPT_CGROUP:
			config.cgroup_mode = choice_arg("--cgroup", optarg,
			    "off", "auto");
			break;
		case OPT_LOG_FORMAT:
			event_set_text(choice_arg("--log-format", optarg,
			    "json", "text"));
			break;
		case OPT_SYNC:
			config.sync_normal = choice_arg("--sync", optarg,
			    "full", "normal");
			break;
		case 'v':
			verbose++;
			break;
		case 'h':
			usage(0);
		case 'V':
			printf("forkqd %s\n", FORKQ_VERSION);
			exit(0);
		default:
			usage(2);
		}
	}
	if (optind != argc) {
		fprintf(stderr, "forkqd: unexpected argument '%s'\n",
		    argv[optind]);
		usage(2);
	}
	free(args);
	log_init(verbose);

	if (config.state_dir == NULL) {
		if (default_state_dir(statebuf, sizeof statebuf) == -1)
			fatalx("no state dir: give -D or set HOME");
		config.state_dir = statebuf;
	}
	if (config.socket_path == NULL) {
		if (geteuid() != 0 && ((xdg = getenv("XDG_RUNTIME_DIR")) ==
		    NULL || *xdg != '/'))
			snprintf(sockbuf, sizeof sockbuf, "%s/forkq.sock",
			    config.state_dir);
		else if (default_socket_path(sockbuf, sizeof sockbuf) == -1)
			fatalx("no socket path: give -s");
		config.socket_path = sockbuf;
	}
	/*
	 * A task starts in a directory of its own, so FORKQ_SOCKET names the
	 * socket from /: forkq inside a task reaches this forkqd. The socket
	 * is bound by the path given, which may fit sun_path where the
	 * absolute one would not.
	 */
	if (config.socket_path[0] == '/')
		config.socket_env = config.socket_path;
	else if (getcwd(cwd, sizeof cwd) == NULL)
		fatal("-s %s: the working directory", config.socket_path);
	else if (snprintf(sockenv, sizeof sockenv, "%s/%s", cwd,
	    config.socket_path) >= (int)sizeof sockenv)
		fatalx("-s %s: too long from /", config.socket_path);
	else
		config.socket_env = sockenv;
	if (config.socket_env != config.socket_path &&
	    strlen(config.socket_env) >= sizeof(((struct sockaddr_un *)
	    NULL)->sun_path))
		log_warnx("%s is too long for a socket address: forkq inside a "
		    "task cannot reach this forkqd by FORKQ_SOCKET",
		    config.socket_env);
}

/* mkdir -p with mode for the last component. */
static void
make_state_dir(const char *dir)
{
	char	path[PATH_MAX], *p;

	if (strlcpy(path, dir, sizeof path) >= sizeof path)
		fatalx("state dir path too long");
	for (p = path + 1; *p != '\0'; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(path, 0755) == -1 && errno != EEXIST)
			fatal("mkdir %s", path);
		*p = '/';
	}
	if (mkdir(path, 0700) == -1 && errno != EEXIST)
		fatal("cannot create state dir %s", path);
	snprintf(path, sizeof path, "%s/output", dir);
	if (mkdir(path, 0700) == -1 && errno != EEXIST)
		fatal("mkdir %s", path);
}

/* Tasks and sockets assume 0, 1 and 2 exist: fill gaps with /dev/null. */
static void
ensure_std_fds(void)
{
	int	fd;

	while ((fd = open("/dev/null", O_RDWR)) != -1 && fd <= 2)
		;
	if (fd > 2)
		close(fd);
}

/*
 * At any exit of forkqd once it holds the lock, fatal ones included: a
 * pidfile left naming a dead pid would one day name another program,
 * which `kill $(cat forkqd.pid)` would then end. Only in the process that
 * took the lock: the --daemon parent leaves by _exit().
 */
static pid_t	 pidfile_owner;

static void
remove_pidfile(void)
{
	if (pidfh != NULL && getpid() == pidfile_owner)
		pidfile_remove(pidfh);
	pidfh = NULL;
}

/*
 * Takes the state dir's lock (the pidfile's). When it is held but the
 * forkqd whose pid the file holds is gone, the holder is a process that
 * forkqd was starting when it died (a task before its exec shares the
 * lock until then): the lock comes free within moments, so wait for it,
 * a while, rather than fail a restart. Another live forkqd is an error
 * at once.
 */
static void
lock_state_dir(const char *path)
{
	struct timespec	 pause = { 0, 10 * 1000 * 1000 };
	pid_t		 other;
	int		 tries;

	for (tries = 0; tries < LOCK_TRIES; tries++) {
		if ((pidfh = pidfile_open(path, 0600, &other)) != NULL)
			break;
		if (errno != EEXIST)
			fatal("cannot lock state dir %s (%s)",
			    config.state_dir, path);
		/* It runs (EPERM: as another user, so alive too). */
		if (other > 0 && (kill(other, 0) == 0 || errno == EPERM))
			break;
		nanosleep(&pause, NULL);
	}
	if (pidfh == NULL)
		fatalx("state dir %s is locked: another forkqd (pid %d) is "
		    "using it", config.state_dir, (int)other);
	pidfile_owner = getpid();
	if (atexit(remove_pidfile) != 0)
		fatalx("atexit");
	/* Its lock must not outlive forkqd in a program a task execs. */
	if (fcntl(pidfile_fileno(pidfh), F_SETFD, FD_CLOEXEC) == -1)
		fatal("fcntl %s", path);
}

/*
 * --daemon: into the background, in a session of its own. The parent
 * exits only once the child listens (notify_ready writes a byte to the
 * ready pipe), 0 then, or 1 when the child ended first: forkqd --daemon &&
 * forkq status finds the socket, and an error at start-up reaches the
 * caller. Until then the child's stderr is a pipe of its own, which the
 * parent copies to the caller's: forkqd may make its stderr non-blocking
 * (the event log's "-"), which must not change the caller's file.
 */
static void
detach(void)
{
	struct pollfd	pfd[2];
	sigset_t	signals;
	char		buf[4096];
	int		ready[2], err[2], status, is_ready = 0, open_fds = 2, i;
	pid_t		pid;
	ssize_t		n;

	if (pipe2(ready, O_CLOEXEC) == -1 || pipe2(err, O_CLOEXEC) == -1)
		fatal("pipe");
	if ((pid = fork()) == -1)
		fatal("fork");
	if (pid > 0) {
		/* Waiting, it ends as its caller asks (^C), as before main. */
		loop_signals(&signals);
		(void)sigprocmask(SIG_UNBLOCK, &signals, NULL);
		close(ready[1]);
		close(err[1]);
		pfd[0].fd = ready[0];
		pfd[1].fd = err[0];
		pfd[0].events = pfd[1].events = POLLIN;
		while (open_fds > 0) {
			if (poll(pfd, 2, -1) == -1) {
				if (errno == EINTR)
					continue;
				break;
			}
			for (i = 0; i < 2; i++) {
				if (pfd[i].revents == 0)
					continue;
				n = read(pfd[i].fd, buf, sizeof buf);
				if (n == -1 && errno == EINTR)
					continue;
				if (n <= 0) {
					pfd[i].fd = -1;	/* poll skips it */
					open_fds--;
				} else if (i == 0)
					is_ready = 1;
				else
					(void)write(STDERR_FILENO, buf, (size_t)n);
			}
		}
		if (is_ready)
			_exit(0);
		/* Gone before it was ready: it said why on stderr. */
		while (waitpid(pid, &status, 0) == -1 && errno == EINTR)
			;
		_exit(1);
	}
	/* First: a fatal error from here on removes the pidfile too. */
	pidfile_owner = getpid();
	close(ready[0]);
	close(err[0]);
	if (dup2(err[1], STDERR_FILENO) == -1)
		fatal("dup2");
	close(err[1]);
	if (setsid() == -1)
		fatal("setsid");
	notify_parent(ready[1]);
}

int
main(int argc, char **argv)
{
	char		 path[PATH_MAX], *cause = NULL;
	sigset_t	 signals;
	int		 rc;

	/*
	 * The loop's signals wait, blocked, until its signalfd takes them
	 * (daemon.c): a SIGHUP for a log rotation, or a SIGTERM, during
	 * start-up would otherwise end forkqd at once, the SIGTERM without
	 * its shutdown. Tasks get an empty mask (spawn.c).
	 */
	loop_signals(&signals);
	if (sigprocmask(SIG_BLOCK, &signals, NULL) == -1)
		fatal("sigprocmask");
	ensure_std_fds();
	parse_options(argc, argv);
	make_state_dir(config.state_dir);

	/* The pidfile's lock is the state dir's lock. */
	snprintf(path, sizeof path, "%s/forkqd.pid", config.state_dir);
	lock_state_dir(path);
	spawn_init();
	/* Before --daemon: LISTEN_PID names the pid systemd started. */
	if (server_adopt(config.socket_path, &cause) == -1)
		fatalx("%s", cause);
	if (store_open(config.state_dir, &cause) == -1)
		fatalx("cannot open the database: %s", cause);
	if (event_open_log(config.log_path, &cause) == -1)
		fatalx("cannot open the log: %s", cause);

	signal(SIGPIPE, SIG_IGN);
	/* Under a file size limit, a write past it fails (EFBIG) instead. */
	signal(SIGXFSZ, SIG_IGN);
	/*
	 * The signals the loop takes (daemon.c) through a signalfd: libev
	 * installs no handler, so one ignored by whoever started forkqd
	 * would stay so. SIGCHLD ignored has the kernel reap every task
	 * itself: no attempt would ever end.
	 */
	signal(SIGCHLD, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	if (config.daemonize) {
		detach();
		/*
		 * SQLite's POSIX locks stay with the parent that exited: open
		 * the store again, or the last reader to close (sqlite3 in a
		 * shell) would take the WAL away from under forkqd. The first
		 * open above reported any problem while stderr was there.
		 */
		store_close();
		if (store_open(config.state_dir, &cause) == -1)
			fatalx("cannot open the database: %s", cause);
	}
	spawn_sched_init();	/* after daemon(): reset-on-fork acts there */
	/* After daemon(): the attribute is not inherited across fork. */
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) == -1)
		log_warn("PR_SET_CHILD_SUBREAPER: orphans of tasks will "
		    "escape forkqd");
	if (pidfile_write(pidfh) == -1)
		log_warn("writing %s", path);

	if ((rc = daemon_run(&cause)) == -1)
		fatalx("%s", cause);
	store_close();
	event_close();
	remove_pidfile();
	return (rc);
}
