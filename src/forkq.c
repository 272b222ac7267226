/*
 * forkq.c: the command-line client (spec 3 and 10). Owns option parsing, the
 * command table (one cmd_* function per command) and the rendering of
 * answers for humans. A command builds one request, hands it to request(),
 * and prints the answer; under --json it prints the answer line exactly as
 * received. client.c owns the socket and the line framing.
 *
 * Exit statuses: 0 success, 1 the daemon answered an error, 2 usage error,
 * 3 the daemon could not be reached; wait and submit --wait exit with the
 * task's own status (task_exit_status). Every error is one stderr line
 * starting "forkq: ".
 */
#include "config.h"

#include <sys/ioctl.h>
#include <sys/types.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "client.h"
#include "util.h"
#include "xmalloc.h"

#define EXIT_DAEMON		1
#define EXIT_USAGE		2
#define EXIT_UNREACHABLE	3
/* A task that timed out or lost its heartbeat, as timeout(1) reports it. */
#define EXIT_TIMEDOUT		124

/*
 * wait slices: without a TTY one long wait per round trip; with one, short
 * enough for the progress line to feel live.
 */
#define WAIT_SLICE_MS		600000
#define WAIT_TTY_SLICE_MS	500

/*
 * Bytes asked for per output request. base64 grows data by 4/3 and the whole
 * answer must stay under FORKQ_MAX_LINE, so well under 768 KiB.
 */
#define OUTPUT_CHUNK		(256 * 1024)
/* How long one output -f request may be held by forkqd. */
#define OUTPUT_WAIT_MS		10000

/* Heartbeat lines up to PIPE_BUF reach forkqd in one piece (pipe(7)). */
#define HEARTBEAT_MAX		PIPE_BUF

#define PROGRESS_BAR_WIDTH	20

/* forkqd accepts max_attempts up to a million. */
#define MAX_RETRIES		999999

/* The most tasks forkqd lists in one answer: LIST_MAX_LIMIT in ops.c. */
#define LIST_MAX_LIMIT		100000
#define LIST_DEFAULT_LIMIT	100	/* spec 7 */

/* Long-only options: values outside the range of characters. */
enum {
	OPT_JSON = 256,
	OPT_NAME,
	OPT_QUEUE,
	OPT_PRIORITY,
	OPT_TIMEOUT,
	OPT_HEARTBEAT_TIMEOUT,
	OPT_RETRIES,
	OPT_BACKOFF,
	OPT_DELAY,
	OPT_AT,
	OPT_RLIMIT,
	OPT_CWD,
	OPT_ENV,
	OPT_INHERIT_ENV,
	OPT_UNIQUE,
	OPT_WAIT,
	OPT_AFTER,
	OPT_DEBOUNCE,
	OPT_STATE,
	OPT_LIMIT,
	OPT_BEFORE,
	OPT_TASK,
	OPT_STDERR,
	OPT_ATTEMPT,
	OPT_PROGRESS,
	OPT_OLDER_THAN,
	OPT_SINCE,
	OPT_UID,
};

#define OPTIONS_COMMON							\
	{ "json", no_argument, NULL, OPT_JSON },			\
	{ "help", no_argument, NULL, 'h' }

struct cmd_entry {
	const char	*name;
	const char	*usage;		/* what follows the name */
	const char	*desc;		/* one line for --help */
	int		(*exec)(int, char **);
};

/* Rows of cells printed in aligned columns; the cells are owned. */
struct table {
	size_t	  ncols;
	size_t	  ncells;
	char	**cells;
};

static int	cmd_submit(int, char **);
static int	cmd_status(int, char **);
static int	cmd_list(int, char **);
static int	cmd_show(int, char **);
static int	cmd_cancel(int, char **);
static int	cmd_retry(int, char **);
static int	cmd_wait(int, char **);
static int	cmd_logs(int, char **);
static int	cmd_output(int, char **);
static int	cmd_heartbeat(int, char **);
static int	cmd_prune(int, char **);
static int	cmd_cron(int, char **);
static int	cmd_pause(int, char **);
static int	cmd_resume(int, char **);
static int	cmd_stats(int, char **);
static int	cmd_metrics(int, char **);

/* The submit options cron add takes too (see cron_refused). */
#define TASK_OPTIONS_USAGE						\
	"[--queue NAME] [--priority N]\n"				\
	"\t[--timeout DURATION] [--heartbeat-timeout DURATION]\n"	\
	"\t[--retries N] [--backoff BASE[:MAX]] [--rlimit NAME=VALUE]\n"	\
	"\t[--cwd DIR] [--env K=V] [--inherit-env] [--after ID] [--json]"

static const struct cmd_entry cmd_table[] = {
	{ "submit", "[--name NAME] " TASK_OPTIONS_USAGE "\n"
	    "\t[--delay DURATION | --at TIME] [--unique KEY]\n"
	    "\t[--debounce DURATION] [--wait] [--] PROGRAM [ARG...]",
	    "queue a task; print its id", cmd_submit },
	{ "status", "[--json]",
	    "daemon summary: version, pid, uptime, workers, counts",
	    cmd_status },
	{ "list", "[--state STATE] [--queue QUEUE] [--limit N] [--before ID] "
	    "[--json]",
	    "tasks, newest first", cmd_list },
	{ "show", "[--json] ID",
	    "one task with all its attempts", cmd_show },
	{ "cancel", "[--json] ID",
	    "cancel a queued or running task", cmd_cancel },
	{ "retry", "[--json] ID",
	    "requeue a failed or canceled task", cmd_retry },
	{ "wait", "[--json] ID...",
	    "block until the tasks are finished; exit with their status",
	    cmd_wait },
	{ "logs", "[-f] [-n N] [--task ID] [--json]",
	    "print recent events; -f follows new ones", cmd_logs },
	{ "output", "[-f] [--stderr] [--attempt N] [--json] ID",
	    "print a task's captured stdout or stderr", cmd_output },
	{ "heartbeat", "[--progress N] [MESSAGE]",
	    "inside a task: send a heartbeat or progress", cmd_heartbeat },
	{ "prune", "--older-than DURATION [--json]",
	    "delete tasks finished longer ago than DURATION", cmd_prune },
	{ "cron", "add NAME SCHEDULE " TASK_OPTIONS_USAGE
	    "\n\t[--delay DURATION] [--] PROGRAM [ARG...]\n"
	    "       forkq cron list [--json]\n"
	    "       forkq cron rm [--json] [--uid UID] NAME",
	    "add, list or remove recurring tasks", cmd_cron },
	{ "pause", "[--json] [QUEUE]",
	    "stop starting tasks (of QUEUE, or all)", cmd_pause },
	{ "resume", "[--json] [QUEUE]",
	    "start tasks again (of QUEUE, or all)", cmd_resume },
	{ "stats", "[--since DURATION] [--name NAME] [--json]",
	    "per-name success rates and durations", cmd_stats },
	{ "metrics", "[--json]",
	    "Prometheus text exposition", cmd_metrics },
};
#define NCOMMANDS	(sizeof cmd_table / sizeof cmd_table[0])

static const char		*socket_opt;	/* -s, NULL if not given */
static char			*socket_path;	/* resolved at first connect */
static struct client		*conn;
static const struct cmd_entry	*cmd_current;
static int			 json_output;	/* --json of this command */
static int			 progress_shown; /* a line is on stderr */

extern char **environ;

static void	sanitize(char *);

/*
 * One error line on stderr: "forkq: " and what went wrong. What it quotes
 * (the user's words, forkqd's message) may hold a newline or an escape:
 * control characters go out as '?', so the error stays one line (spec 3).
 */
static void
vsay(const char *fmt, va_list ap)
{
	char	*line;

	fflush(stdout);
	if (vasprintf(&line, fmt, ap) == -1) {
		fputs("forkq: out of memory\n", stderr);
		return;
	}
	sanitize(line);
	fprintf(stderr, "forkq: %s\n", line);
	free(line);
}

static void __attribute__((format(printf, 1, 2)))
say(const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	vsay(fmt, ap);
	va_end(ap);
}

static void __attribute__((noreturn, format(printf, 2, 3)))
die(int status, const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	vsay(fmt, ap);
	va_end(ap);
	exit(status);
}

#define usage_error(...)	die(EXIT_USAGE, __VA_ARGS__)

static void
usage(FILE *f)
{
	size_t	i;

	fprintf(f, "usage: forkq [-s SOCKET] COMMAND [ARGS...]\n"
	    "       forkq --help | --version\n\ncommands:\n");
	for (i = 0; i < NCOMMANDS; i++)
		fprintf(f, "  %-10s %s\n", cmd_table[i].name,
		    cmd_table[i].desc);
	fprintf(f, "\nRun 'forkq COMMAND --help' for a command's arguments;"
	    " see forkq(1).\n");
}

static void __attribute__((noreturn))
cmd_usage(void)
{
	printf("usage: forkq %s %s\n", cmd_current->name, cmd_current->usage);
	exit(0);
}

/*
 * The long option arg ("--NAME" or "--NAME=VALUE") names, as getopt_long
 * matches it: the exact name, else the one option NAME abbreviates. Sets
 * *nmatch to the number of options NAME is a prefix of.
 */
static const struct option *
long_option(const struct option *longopts, const char *arg, size_t *nmatch)
{
	const struct option	*o, *found = NULL;
	size_t			 len;

	*nmatch = 0;
	arg += 2;
	if ((len = strcspn(arg, "=")) == 0)
		return (NULL);
	for (o = longopts; o->name != NULL; o++) {
		if (strncmp(o->name, arg, len) != 0)
			continue;
		if (o->name[len] == '\0') {
			*nmatch = 1;
			return (o);
		}
		found = o;
		(*nmatch)++;
	}
	return (*nmatch == 1 ? found : NULL);
}

/*
 * Reports what getopt_long refused (ch '?' or ':'), naming the option as
 * it was typed. optopt cannot say that alone: it is 0 for an unknown or
 * ambiguous long option and the val of a long option missing or given a
 * value, which may be a letter ("--help=1" sets 'h'). A long option is
 * argv[optind - 1], which getopt_long has stepped past; an unknown letter
 * may sit inside a cluster ("-fx"), where optind has not moved.
 */
static void __attribute__((noreturn))
bad_option(int ch, char **argv, const struct option *longopts)
{
	const struct option	*o;
	const char		*prefix = "", *sep = "", *arg;
	size_t			 nmatch = 0;
	int			 len;

	if (cmd_current != NULL) {
		prefix = cmd_current->name;
		sep = ": ";
	}
	arg = argv[optind - 1];
	o = NULL;
	if (strncmp(arg, "--", 2) == 0)
		o = long_option(longopts, arg, &nmatch);
	if (strncmp(arg, "--", 2) != 0 ||
	    (optopt != 0 && (o == NULL || o->val != optopt))) {
		if (ch == ':') {
			usage_error("%s%s-%c needs a value", prefix, sep,
			    optopt);
		}
		usage_error("%s%sunknown option '-%c'", prefix, sep, optopt);
	}
	len = strcspn(arg, "=");
	if (ch == ':')
		usage_error("%s%s%.*s needs a value", prefix, sep, len, arg);
	if (optopt != 0) {
		usage_error("%s%soption '%.*s' takes no value", prefix, sep,
		    len, arg);
	}
	if (nmatch > 1) {
		usage_error("%s%sambiguous option '%.*s'", prefix, sep, len,
		    arg);
	}
	usage_error("%s%sunknown option '%.*s'", prefix, sep, len, arg);
}

/* Task ids are positive integers (spec 3). */
static int64_t
parse_id(const char *what, const char *s)
{
	const char	*errstr;
	long long	 id;

	id = parse_whole(s, 1, LLONG_MAX, &errstr);
	if (errstr != NULL)
		usage_error("%s: not a task id: %s", what, s);
	return (id);
}

static long long
parse_number(const char *opt, const char *s, long long min, long long max)
{
	const char	*errstr;
	long long	 n;

	n = parse_whole(s, min, max, &errstr);
	if (errstr != NULL && strcmp(errstr, "invalid") == 0)
		usage_error("%s: '%s' is not a whole number", opt, s);
	if (errstr != NULL)
		usage_error("%s: must be %lld..%lld", opt, min, max);
	return (n);
}

static int64_t
parse_duration(const char *opt, const char *s)
{
	const char	*errstr;
	int64_t		 ms;

	if (parse_duration_ms(s, &ms, &errstr) == -1)
		usage_error("%s %s: %s", opt, s, errstr);
	return (ms);
}

/* A JSON string from user input, which must be UTF-8 for the protocol. */
static json_t *
user_string(const char *what, const char *s)
{
	json_t	*v;

	if ((v = json_string(s)) == NULL)
		usage_error("%s: not valid UTF-8", what);
	return (v);
}

/* A task's or queue's name from opt: what forkqd takes (1 to 256 bytes). */
static json_t *
user_label(const char *opt, const char *s)
{
	if (*s == '\0' || strlen(s) > FORKQ_MAX_LABEL)
		usage_error("%s: must be 1 to %d bytes", opt, FORKQ_MAX_LABEL);
	return (user_string(opt, s));
}

/*
 * The request a command is building, held here too: a usage error found
 * while parsing its options exits with it unsent, and it must then still
 * be reachable (leak checkers), whatever registers the compiler chose.
 */
static json_t	*req_building;

static json_t *
req_new(const char *op)
{
	json_t	*req;

	req = json_object();
	json_object_set_new(req, "op", json_string(op));
	req_building = req;
	return (req);
}

static void
req_set_int(json_t *req, const char *key, json_int_t n)
{
	json_object_set_new(req, key, json_integer(n));
}

/* The string value of key, NULL if absent or not a string. */
static const char *
jstr(const json_t *obj, const char *key)
{
	return (json_string_value(json_object_get(obj, key)));
}

/* Connects on first use; unreachable is exit status 3. */
static struct client *
connection(void)
{
	const char	*env;
	char		 buf[4096];

	if (conn != NULL)
		return (conn);
	if (socket_opt != NULL)
		socket_path = xstrdup(socket_opt);
	else if ((env = getenv("FORKQ_SOCKET")) != NULL && *env != '\0')
		socket_path = xstrdup(env);
	else if (default_socket_path(buf, sizeof buf) == 0)
		socket_path = xstrdup(buf);
	else {
		die(EXIT_UNREACHABLE, "no socket path: use -s or set "
		    "FORKQ_SOCKET (HOME is not set)");
	}
	if ((conn = client_connect(socket_path)) == NULL) {
		die(EXIT_UNREACHABLE, "cannot connect to %s: %s", socket_path,
		    strerror(errno));
	}
	return (conn);
}

/*
 * The next line from forkqd, valid until the next call; 0 at the end of
 * the stream. A read error means forkqd went away: exit status 3.
 */
static int
next_line(char **line, size_t *len)
{
	int	rv;

	if ((rv = client_read_line(connection(), line, len)) != -1)
		return (rv);
	if (errno == EPROTO)
		die(EXIT_UNREACHABLE, "%s: connection closed inside an answer",
		    socket_path);
	if (errno == EMSGSIZE)
		die(EXIT_DAEMON, "%s: answer longer than 1 MiB", socket_path);
	die(EXIT_UNREACHABLE, "reading from %s: %s", socket_path,
	    strerror(errno));
}

/*
 * Sends req (taking ownership) and returns its parsed answer, owned by the
 * caller; the answer line is copied to *linep unless linep is NULL. An error
 * answer ends the program with status 1, after printing the line to stdout
 * under --json.
 */
static json_t	*request_answer(json_t *, char **, int);

static json_t *
request(json_t *req, char **linep)
{
	return (request_answer(req, linep, 1));
}

/*
 * As request(), but an error answer is said on stderr (and printed under
 * --json) and NULL returned, unless fatal.
 */
static json_t *
request_answer(json_t *req, char **linep, int fatal)
{
	json_t		*ans, *err;
	json_error_t	 jerr;
	char		*line;
	size_t		 len;
	const char	*message, *code;

	if (client_send(connection(), req) == -1) {
		if (errno == EMSGSIZE)
			usage_error("request too large (limit 1 MiB)");
		die(EXIT_UNREACHABLE, "writing to %s: %s", socket_path,
		    strerror(errno));
	}
	if (req == req_building)
		req_building = NULL;
	json_decref(req);
	if (next_line(&line, &len) == 0)
		die(EXIT_UNREACHABLE, "%s: connection closed by forkqd",
		    socket_path);
	if ((ans = json_loadb(line, len, 0, &jerr)) == NULL)
		die(EXIT_DAEMON, "invalid answer from forkqd: %s", jerr.text);
	if (!json_is_object(ans))
		die(EXIT_DAEMON, "invalid answer from forkqd: not an object");
	if (!json_is_true(json_object_get(ans, "ok"))) {
		if (json_output)
			printf("%s\n", line);
		err = json_object_get(ans, "error");
		if ((message = jstr(err, "message")) == NULL)
			message = "request failed";
		if ((code = jstr(err, "code")) == NULL)
			code = "unknown";
		if (fatal)
			die(EXIT_DAEMON, "%s (%s)", message, code);
		say("%s (%s)", message, code);
		json_decref(ans);
		return (NULL);
	}
	if (linep != NULL)
		*linep = xstrdup(line);
	return (ans);
}

/* Sends req and prints the answer: the line under --json, else through fn. */
static void
exchange(json_t *req, void (*fn)(json_t *))
{
	json_t	*ans;
	char	*line;

	ans = request(req, &line);
	if (json_output)
		printf("%s\n", line);
	else if (fn != NULL)
		fn(ans);
	/* cron list and stats cannot page: say that some were left out. */
	if (json_is_true(json_object_get(ans, "more")))
		fprintf(stderr, "forkq: more than fits in one answer: not all "
		    "are shown\n");
	free(line);
	json_decref(ans);
}

/*
 * Parses a command that takes only --json and --help, and checks that it
 * got min..max operands, named by what. Returns the index of the first.
 */
static int
parse_plain(int argc, char **argv, const char *what, int min, int max)
{
	static const struct option	 longopts[] = {
		OPTIONS_COMMON,
		{ NULL, 0, NULL, 0 }
	};
	char				*name;
	int				 ch, n;

	optind = 0;
	while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		switch (ch) {
		case OPT_JSON:
			json_output = 1;
			break;
		case 'h':
			cmd_usage();
			/* NOTREACHED */
		default:
			bad_option(ch, argv, longopts);
		}
	}
	/* A subcommand ("cron rm") is named by both words. */
	if (strcmp(argv[0], cmd_current->name) == 0)
		name = xstrdup(argv[0]);
	else
		xasprintf(&name, "%s %s", cmd_current->name, argv[0]);
	n = argc - optind;
	if (n < min)
		usage_error("%s: missing %s", name, what);
	if (n > max)
		usage_error("%s: unexpected argument %s", name,
		    argv[optind + max]);
	free(name);
	return (optind);
}

/* --- formatting --------------------------------------------------------- */

static void
table_init(struct table *t, size_t ncols)
{
	t->ncols = ncols;
	t->ncells = 0;
	t->cells = NULL;
}

/*
 * Appends a cell, row by row; takes ownership of s. Control characters
 * (names, schedules, commands are the users') go out as '?': a tab would
 * break the columns, an escape drive the terminal.
 */
static void
table_add(struct table *t, char *s)
{
	sanitize(s);
	t->cells = xreallocarray(t->cells, t->ncells + 1, sizeof *t->cells);
	t->cells[t->ncells++] = s;
}

static void
table_addf(struct table *t, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void
table_addf(struct table *t, const char *fmt, ...)
{
	va_list	 ap;
	char	*s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) == -1)
		die(EXIT_DAEMON, "out of memory");
	va_end(ap);
	table_add(t, s);
}

/* Prints the rows with columns two spaces apart, then frees the cells. */
static void
table_print(struct table *t)
{
	size_t	*width, row, col, len;
	char	*cell;

	width = xcalloc(t->ncols, sizeof *width);
	for (row = 0; row < t->ncells; row++) {
		len = strlen(t->cells[row]);
		if (len > width[row % t->ncols])
			width[row % t->ncols] = len;
	}
	for (row = 0; row < t->ncells; row += t->ncols) {
		for (col = 0; col < t->ncols && row + col < t->ncells; col++) {
			cell = t->cells[row + col];
			if (col == t->ncols - 1)
				printf("%s\n", cell);
			else
				printf("%-*s  ", (int)width[col], cell);
			free(cell);
		}
	}
	free(width);
	free(t->cells);
	t->cells = NULL;
	t->ncells = 0;
}

/* A JSON value for a human: strings bare, null as "-". Caller frees. */
static char *
str_value(const json_t *v)
{
	char	*s;

	switch (json_typeof(v)) {
	case JSON_STRING:
		return (xstrdup(json_string_value(v)));
	case JSON_INTEGER:
		xasprintf(&s, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
		return (s);
	case JSON_REAL:
		xasprintf(&s, "%g", json_real_value(v));
		return (s);
	case JSON_TRUE:
		return (xstrdup("true"));
	case JSON_FALSE:
		return (xstrdup("false"));
	case JSON_NULL:
		return (xstrdup("-"));
	default:
		if ((s = json_dumps(v, JSON_COMPACT)) == NULL)
			return (xstrdup("?"));
		return (s);
	}
}

/* An RFC 3339 time as local time; "-" when unset. Caller frees. */
static char *
str_time(const json_t *v)
{
	const char	*errstr;
	char		 buf[64];
	int64_t		 ms;

	if (!json_is_string(v))
		return (xstrdup("-"));
	if (parse_time_ms(json_string_value(v), &ms, &errstr) == -1)
		return (xstrdup(json_string_value(v)));
	format_local_time(ms, buf, sizeof buf);
	return (xstrdup(buf));
}

/* Milliseconds as "1.2s"; "-" when unset, zero as "none" if asked. */
static char *
str_duration(const json_t *v, int zero_is_none)
{
	char	buf[32];

	if (!json_is_integer(v))
		return (xstrdup("-"));
	if (zero_is_none && json_integer_value(v) == 0)
		return (xstrdup("none"));
	format_duration(json_integer_value(v), buf, sizeof buf);
	return (xstrdup(buf));
}

/* argv as a shell would need it typed, so it can be copied back. */
static char *
str_argv(const json_t *argv)
{
	static const char	 safe[] = "abcdefghijklmnopqrstuvwxyz"
				     "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
				     "_-+=.,/:@%";
	const json_t		*v;
	const char		*s;
	char			*out, *o;
	size_t			 i, size = 1;

	if (!json_is_array(argv))
		return (str_value(argv));
	/* Worst case: every byte a quote, written as '\'' (4 bytes). */
	json_array_foreach(argv, i, v)
		size += 4 * json_string_length(v) + 3;
	o = out = xmalloc(size);
	json_array_foreach(argv, i, v) {
		if ((s = json_string_value(v)) == NULL)
			continue;
		if (o != out)
			*o++ = ' ';
		if (*s != '\0' && strspn(s, safe) == strlen(s)) {
			o = stpcpy(o, s);
			continue;
		}
		*o++ = '\'';
		for (; *s != '\0'; s++) {
			if (*s == '\'')
				o = stpcpy(o, "'\\''");
			else
				*o++ = *s;
		}
		*o++ = '\'';
	}
	*o = '\0';
	return (out);
}

/*
 * Replaces control characters, which could drive the terminal, with '?':
 * C0 and DEL, and the C1 controls in UTF-8 (U+0080-U+009F, "\xc2\x80" to
 * "\xc2\x9f": U+009B is a CSI) as "??".
 */
static void
sanitize(char *s)
{
	for (; *s != '\0'; s++) {
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			*s = '?';
		else if ((unsigned char)s[0] == 0xc2 &&
		    (unsigned char)s[1] >= 0x80 && (unsigned char)s[1] <= 0x9f) {
			s[0] = s[1] = '?';
			s++;
		}
	}
}

/* Cuts s to at most max bytes without splitting a UTF-8 sequence. */
static void
utf8_truncate(char *s, size_t max)
{
	if (strlen(s) <= max)
		return;
	while (max > 0 && ((unsigned char)s[max] & 0xc0) == 0x80)
		max--;
	s[max] = '\0';
}

/* --- submit and cron add ------------------------------------------------ */

static void
submit_rlimit(json_t *rlimits, const char *arg)
{
	static const struct {
		const char	*name;
		int		 is_size; /* bytes with units, or a count */
	} names[] = {
		{ "cpu", 0 }, { "as", 1 }, { "fsize", 1 }, { "core", 1 },
		{ "nofile", 0 }, { "nproc", 0 },
	};
	const char	*eq, *errstr;
	char		*name;
	int64_t		 value;
	size_t		 i;

	if ((eq = strchr(arg, '=')) == NULL)
		usage_error("--rlimit: expected NAME=VALUE: %s", arg);
	name = xstrndup(arg, eq - arg);
	for (i = 0; i < sizeof names / sizeof names[0]; i++) {
		if (strcmp(names[i].name, name) == 0)
			break;
	}
	if (i == sizeof names / sizeof names[0]) {
		usage_error("--rlimit: unknown limit %s (use cpu, as, fsize, "
		    "core, nofile or nproc)", name);
	}
	if (names[i].is_size) {
		if (parse_size(eq + 1, &value, &errstr) == -1)
			usage_error("--rlimit %s: %s", name, errstr);
	} else {
		value = parse_whole(eq + 1, 0, LLONG_MAX, &errstr);
		if (errstr != NULL)
			usage_error("--rlimit %s: %s: %s", name, eq + 1, errstr);
	}
	req_set_int(rlimits, name, value);
	free(name);
}

static void
submit_env(json_t *env, const char *opt, const char *kv)
{
	const char	*eq;
	char		*key;

	if ((eq = strchr(kv, '=')) == NULL || eq == kv)
		usage_error("%s: expected K=V: %s", opt, kv);
	key = xstrndup(kv, eq - kv);
	if (json_object_set_new(env, key, user_string(opt, eq + 1)) == -1)
		usage_error("%s: not valid UTF-8", opt);
	free(key);
}

/* The whole environment first, so that --env overrides it. */
static json_t *
submit_inherit_env(void)
{
	json_t	*env = json_object();
	char	**ep, *eq, *key;
	json_t	*v;

	for (ep = environ; *ep != NULL; ep++) {
		if ((eq = strchr(*ep, '=')) == NULL || eq == *ep)
			continue;
		key = xstrndup(*ep, eq - *ep);
		/* The protocol is UTF-8: such a variable cannot travel. */
		if ((v = json_string(eq + 1)) == NULL ||
		    json_object_set_new(env, key, v) == -1) {
			sanitize(key);
			fprintf(stderr, "forkq: --inherit-env: skipping %s: "
			    "not valid UTF-8\n", key);
		}
		free(key);
	}
	return (env);
}

/* The directory the task starts in: --cwd made absolute, else ours. */
static json_t *
submit_cwd(const char *dir)
{
	char	*here, *path;
	json_t	*v;

	if (dir != NULL && *dir == '/')
		return (user_string("--cwd", dir));
	if ((here = getcwd(NULL, 0)) == NULL)
		die(EXIT_DAEMON, "getcwd: %s", strerror(errno));
	if (dir != NULL)
		xasprintf(&path, "%s/%s", here, dir);
	else
		path = xstrdup(here);
	v = user_string("--cwd", path);
	free(path);
	free(here);
	return (v);
}

static void
submit_backoff(json_t *req, const char *arg)
{
	char	*base, *max;
	int64_t	 base_ms, max_ms;

	base = xstrdup(arg);
	if ((max = strchr(base, ':')) != NULL)
		*max++ = '\0';
	/* Each part named by what it is: "--backoff : not a number". */
	if (*base == '\0' || (max != NULL && *max == '\0'))
		usage_error("--backoff %s: %s is empty (BASE[:MAX])", arg,
		    *base == '\0' ? "BASE" : "MAX");
	base_ms = parse_duration("--backoff", base);
	req_set_int(req, "backoff_base_ms", base_ms);
	if (max != NULL) {
		max_ms = parse_duration("--backoff", max);
		if (max_ms < base_ms)
			usage_error("--backoff: MAX is less than BASE");
		req_set_int(req, "backoff_max_ms", max_ms);
	}
	free(base);
}

/*
 * The submit options cron add refuses rather than drop: forkqd keeps the
 * request's "name" as the entry's name and gives every firing the unique
 * key "cron:NAME" (spec 10), so these could never take effect.
 */
static const struct {
	int		 opt;
	const char	*name;
	const char	*why;
} cron_refused[] = {
	{ OPT_NAME, "--name", "the entry's NAME names its tasks too" },
	{ OPT_UNIQUE, "--unique", "every firing has the unique key cron:NAME" },
	{ OPT_DEBOUNCE, "--debounce", "a firing that finds the previous run "
	    "queued or running is skipped, not debounced" },
	{ OPT_WAIT, "--wait", "the entry's tasks are submitted when it fires" },
	{ OPT_AT, "--at", "each firing starts at the schedule (--delay puts "
	    "each one off)" },
};

static void
cron_add_check_option(int ch)
{
	size_t	i;

	for (i = 0; i < sizeof cron_refused / sizeof cron_refused[0]; i++) {
		if (cron_refused[i].opt == ch)
			usage_error("cron add: %s: %s", cron_refused[i].name,
			    cron_refused[i].why);
	}
}

/*
 * Parses the submit options and PROGRAM [ARG...] into req, for submit and
 * cron add. waitp is NULL for cron add, which refuses the options in
 * cron_refused. Options stop at the first operand ("+"): the task's own
 * arguments are never ours.
 */
static void
submit_parse(int argc, char **argv, json_t *req, int *waitp)
{
	static const struct option	 longopts[] = {
		{ "name", required_argument, NULL, OPT_NAME },
		{ "queue", required_argument, NULL, OPT_QUEUE },
		{ "priority", required_argument, NULL, OPT_PRIORITY },
		{ "timeout", required_argument, NULL, OPT_TIMEOUT },
		{ "heartbeat-timeout", required_argument, NULL,
		    OPT_HEARTBEAT_TIMEOUT },
		{ "retries", required_argument, NULL, OPT_RETRIES },
		{ "backoff", required_argument, NULL, OPT_BACKOFF },
		{ "delay", required_argument, NULL, OPT_DELAY },
		{ "at", required_argument, NULL, OPT_AT },
		{ "rlimit", required_argument, NULL, OPT_RLIMIT },
		{ "cwd", required_argument, NULL, OPT_CWD },
		{ "env", required_argument, NULL, OPT_ENV },
		{ "inherit-env", no_argument, NULL, OPT_INHERIT_ENV },
		{ "unique", required_argument, NULL, OPT_UNIQUE },
		{ "wait", no_argument, NULL, OPT_WAIT },
		{ "after", required_argument, NULL, OPT_AFTER },
		{ "debounce", required_argument, NULL, OPT_DEBOUNCE },
		OPTIONS_COMMON,
		{ NULL, 0, NULL, 0 }
	};
	json_t		*rlimits, *env, *after, *args, *v;
	const char	*cwd = NULL, *errstr;
	char		 buf[RFC3339_LEN];
	int		 ch, inherit = 0, when = 0, i;
	int64_t		 at;

	rlimits = json_object();
	env = json_object();
	after = json_array();
	optind = 0;
	while ((ch = getopt_long(argc, argv, "+:h", longopts, NULL)) != -1) {
		if (waitp == NULL)
			cron_add_check_option(ch);
		switch (ch) {
		case OPT_NAME:
			json_object_set_new(req, "name",
			    user_label("--name", optarg));
			break;
		case OPT_QUEUE:
			json_object_set_new(req, "queue",
			    user_label("--queue", optarg));
			break;
		case OPT_PRIORITY:
			req_set_int(req, "priority", parse_number("--priority",
			    optarg, -1000, 1000));
			break;
		case OPT_TIMEOUT:
			req_set_int(req, "timeout_ms",
			    parse_duration("--timeout", optarg));
			break;
		case OPT_HEARTBEAT_TIMEOUT:
			req_set_int(req, "heartbeat_timeout_ms",
			    parse_duration("--heartbeat-timeout", optarg));
			break;
		case OPT_RETRIES:
			req_set_int(req, "max_attempts", parse_number(
			    "--retries", optarg, 0, MAX_RETRIES) + 1);
			break;
		case OPT_BACKOFF:
			submit_backoff(req, optarg);
			break;
		case OPT_DELAY:
		case OPT_AT:
			if (when != 0 && when != ch)
				usage_error("--delay and --at exclude each "
				    "other");
			when = ch;
			if (ch == OPT_DELAY) {
				req_set_int(req, "delay_ms",
				    parse_duration("--delay", optarg));
				break;
			}
			if (parse_time_ms(optarg, &at, &errstr) == -1)
				usage_error("--at %s: %s", optarg, errstr);
			format_rfc3339_ms(at, buf, sizeof buf);
			json_object_set_new(req, "run_at", json_string(buf));
			break;
		case OPT_RLIMIT:
			submit_rlimit(rlimits, optarg);
			break;
		case OPT_CWD:
			cwd = optarg;
			break;
		case OPT_ENV:
			submit_env(env, "--env", optarg);
			break;
		case OPT_INHERIT_ENV:
			inherit = 1;
			break;
		case OPT_UNIQUE:
			json_object_set_new(req, "unique",
			    user_string("--unique", optarg));
			break;
		case OPT_WAIT:
			*waitp = 1;
			break;
		case OPT_AFTER:
			json_array_append_new(after,
			    json_integer(parse_id("--after", optarg)));
			break;
		case OPT_DEBOUNCE:
			req_set_int(req, "debounce_ms",
			    parse_duration("--debounce", optarg));
			break;
		case OPT_JSON:
			json_output = 1;
			break;
		case 'h':
			cmd_usage();
			/* NOTREACHED */
		default:
			bad_option(ch, argv, longopts);
		}
	}
	if (optind >= argc)
		usage_error("%s: missing PROGRAM", cmd_current->name);
	if (json_object_get(req, "debounce_ms") != NULL &&
	    json_object_get(req, "unique") == NULL)
		usage_error("--debounce needs --unique");

	args = json_array();
	for (i = optind; i < argc; i++) {
		if ((v = json_string(argv[i])) == NULL) {
			usage_error("argument %d is not valid UTF-8 (the "
			    "protocol carries UTF-8 only)", i - optind);
		}
		json_array_append_new(args, v);
	}
	json_object_set_new(req, "argv", args);
	json_object_set_new(req, "cwd", submit_cwd(cwd));

	if (json_object_size(rlimits) > 0)
		json_object_set(req, "rlimits", rlimits);
	json_decref(rlimits);
	if (inherit) {
		v = submit_inherit_env();
		json_object_update(v, env);
		json_decref(env);
		env = v;
	}
	if (json_object_size(env) > 0)
		json_object_set(req, "env", env);
	json_decref(env);
	if (json_array_size(after) > 0)
		json_object_set(req, "after", after);
	json_decref(after);
}

/* --- waiting ------------------------------------------------------------ */

static int
state_is_final(const char *state)
{
	return (state != NULL && (strcmp(state, "succeeded") == 0 ||
	    strcmp(state, "failed") == 0 || strcmp(state, "canceled") == 0));
}

/* The exit status a finished task stands for (spec 3). */
static int
task_exit_status(const json_t *task)
{
	const char	*state, *outcome, *sig, *errstr;
	json_int_t	 code;
	int		 n;

	state = jstr(task, "state");
	if (state != NULL && strcmp(state, "succeeded") == 0)
		return (0);
	if (state == NULL || strcmp(state, "canceled") == 0)
		return (1);
	if ((outcome = jstr(task, "outcome")) == NULL)
		return (1);
	if (strcmp(outcome, "exit") == 0 || strcmp(outcome, "success") == 0) {
		code = json_integer_value(json_object_get(task, "exit_code"));
		return (code > 0 && code < 256 ? (int)code : 1);
	}
	if (strcmp(outcome, "signal") == 0) {
		if ((sig = jstr(task, "signal")) == NULL)
			return (1);
		/* signal_name() writes signals it cannot name as "SIG<n>". */
		if ((n = signal_number(sig)) == -1 &&
		    strncmp(sig, "SIG", 3) == 0)
			n = strtonum(sig + 3, 1, 127, &errstr);
		return (n > 0 && n < 128 ? 128 + n : 1);
	}
	if (strcmp(outcome, "timeout") == 0 ||
	    strcmp(outcome, "heartbeat_lost") == 0)
		return (EXIT_TIMEDOUT);
	return (1);
}

static int
term_width(void)
{
	struct winsize	ws;

	if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == -1 || ws.ws_col == 0)
		return (80);
	return (ws.ws_col);
}

static void
progress_clear(void)
{
	if (!progress_shown)
		return;
	fputs("\r\033[K", stderr);
	fflush(stderr);
	progress_shown = 0;
}

/* Redraws the one-line progress display on stderr (a terminal). */
static void
progress_show(int64_t id, const json_t *task)
{
	const json_t	*progress;
	const char	*state, *message;
	char		 bar[PROGRESS_BAR_WIDTH + 1], *text;
	json_int_t	 pct;
	int		 fill;

	if ((state = jstr(task, "state")) == NULL)
		state = "?";
	progress = json_object_get(task, "progress");
	if (json_is_integer(progress)) {
		pct = json_integer_value(progress);
		if (pct < 0)
			pct = 0;
		if (pct > 100)
			pct = 100;
		fill = pct * PROGRESS_BAR_WIDTH / 100;
		memset(bar, '#', fill);
		memset(bar + fill, ' ', PROGRESS_BAR_WIDTH - fill);
		bar[PROGRESS_BAR_WIDTH] = '\0';
		message = jstr(task, "progress_message");
		xasprintf(&text, "task %lld %s [%s] %3d%% %s", (long long)id,
		    state, bar, (int)pct, message != NULL ? message : "");
	} else
		xasprintf(&text, "task %lld %s", (long long)id, state);
	sanitize(text);
	utf8_truncate(text, term_width() - 1);
	fprintf(stderr, "\r\033[K%s", text);
	fflush(stderr);
	progress_shown = 1;
	free(text);
}

/* The task for the progress line: from a timed-out wait, else a get. */
static void
progress_update(int64_t id, const json_t *ans)
{
	json_t	*req, *got;

	if (json_is_object(json_object_get(ans, "task"))) {
		progress_show(id, json_object_get(ans, "task"));
		return;
	}
	req = req_new("get");
	req_set_int(req, "id", id);
	got = request(req, NULL);
	progress_show(id, json_object_get(got, "task"));
	json_decref(got);
}

/*
 * Blocks until task id is final. Returns the final wait answer (caller
 * frees) and its line in *linep (caller frees), or NULL when the daemon
 * refused the wait (said on stderr: no such task, say).
 */
static json_t *
wait_task(int64_t id, char **linep)
{
	json_t	*req, *ans;
	int	 tty = isatty(STDERR_FILENO);

	for (;;) {
		req = req_new("wait");
		req_set_int(req, "id", id);
		req_set_int(req, "timeout_ms",
		    tty ? WAIT_TTY_SLICE_MS : WAIT_SLICE_MS);
		if ((ans = request_answer(req, linep, 0)) == NULL)
			break;
		if (!json_is_true(json_object_get(ans, "timed_out")))
			break;
		if (tty)
			progress_update(id, ans);
		free(*linep);
		json_decref(ans);
	}
	progress_clear();
	return (ans);
}

/*
 * Waits for each task in turn. 0 if all succeeded, else the status of the
 * first (in argument order) that did not.
 */
static int
wait_ids(const int64_t *ids, size_t n)
{
	json_t	*ans;
	char	*line;
	size_t	 i;
	int	 status = 0, st;

	for (i = 0; i < n; i++) {
		/* An id the daemon refuses (said on stderr) counts as 1 in
		 * its place: the tasks after it are still waited for. */
		if ((ans = wait_task(ids[i], &line)) == NULL) {
			if (status == 0)
				status = EXIT_DAEMON;
			continue;
		}
		if (json_output)
			printf("%s\n", line);
		fflush(stdout);
		st = task_exit_status(json_object_get(ans, "task"));
		if (status == 0)
			status = st;
		free(line);
		json_decref(ans);
	}
	return (status);
}

/* --- commands ----------------------------------------------------------- */

static int
cmd_submit(int argc, char **argv)
{
	json_t		*req, *ans;
	int64_t		 id;
	char		*line;
	int		 wait = 0;

	req = req_new("submit");
	submit_parse(argc, argv, req, &wait);
	ans = request(req, &line);
	id = json_integer_value(json_object_get(json_object_get(ans, "task"),
	    "id"));
	if (id <= 0)
		die(EXIT_DAEMON, "invalid answer from forkqd: no task id");
	if (json_output)
		printf("%s\n", line);
	else
		printf("%lld\n", (long long)id);
	free(line);
	json_decref(ans);
	if (!wait)
		return (0);
	fflush(stdout);
	return (wait_ids(&id, 1));
}

static void
print_status(json_t *ans)
{
	static const char	*states[] = {
		"queued", "running", "succeeded", "failed", "canceled"
	};
	const json_t		*st, *counts, *v;
	const char		*key;
	char			*s;
	size_t			 i;

	st = json_object_get(ans, "status");
	s = str_value(json_object_get(st, "version"));
	printf("version: %s\n", s);
	free(s);
	s = str_value(json_object_get(st, "pid"));
	printf("pid: %s\n", s);
	free(s);
	s = str_duration(json_object_get(st, "uptime_ms"), 0);
	printf("uptime: %s\n", s);
	free(s);
	s = str_value(json_object_get(st, "workers"));
	printf("workers: %s\n", s);
	free(s);
	if ((v = json_object_get(st, "paused")) != NULL)
		printf("paused: %s\n", json_is_true(v) ? "yes" : "no");
	v = json_object_get(st, "paused_queues");
	if (json_array_size(v) > 0) {
		s = str_value(v);
		printf("paused queues: %s\n", s);
		free(s);
	}
	if ((key = jstr(st, "held")) != NULL)
		printf("held: %s\n", key);
	counts = json_object_get(st, "counts");
	for (i = 0; i < sizeof states / sizeof states[0]; i++) {
		s = str_value(json_object_get(counts, states[i]));
		printf("%s: %s\n", states[i], strcmp(s, "-") ? s : "0");
		free(s);
	}
	json_object_foreach((json_t *)counts, key, v) {
		for (i = 0; i < sizeof states / sizeof states[0]; i++) {
			if (strcmp(key, states[i]) == 0)
				break;
		}
		if (i == sizeof states / sizeof states[0]) {
			s = str_value(v);
			printf("%s: %s\n", key, s);
			free(s);
		}
	}
}

static int
cmd_status(int argc, char **argv)
{
	parse_plain(argc, argv, NULL, 0, 0);
	exchange(req_new("status"), print_status);
	return (0);
}

/* When a queued task will next be considered, or "-". */
static char *
list_next_run(const json_t *task)
{
	const json_t	*run_at = json_object_get(task, "run_at");
	const char	*state, *errstr;
	char		*s, *t;
	json_int_t	 attempt;
	int64_t		 ms;

	state = jstr(task, "state");
	if (state == NULL || strcmp(state, "queued") != 0 ||
	    !json_is_string(run_at))
		return (xstrdup("-"));
	attempt = json_integer_value(json_object_get(task, "attempt"));
	if (attempt == 0 && (parse_time_ms(json_string_value(run_at), &ms,
	    &errstr) == -1 || ms <= wall_ms()))
		return (xstrdup("-"));
	s = str_time(run_at);
	if (attempt == 0)
		return (s);
	xasprintf(&t, "%s (retry)", s);
	free(s);
	return (t);
}

static void
print_list(json_t *ans)
{
	const json_t	*tasks, *task;
	struct table	 t;
	size_t		 i;

	table_init(&t, 7);
	table_add(&t, xstrdup("ID"));
	table_add(&t, xstrdup("STATE"));
	table_add(&t, xstrdup("NAME"));
	table_add(&t, xstrdup("QUEUE"));
	table_add(&t, xstrdup("ATTEMPT"));
	table_add(&t, xstrdup("CREATED"));
	table_add(&t, xstrdup("NEXT RUN"));
	tasks = json_object_get(ans, "tasks");
	json_array_foreach(tasks, i, task) {
		table_add(&t, str_value(json_object_get(task, "id")));
		table_add(&t, str_value(json_object_get(task, "state")));
		table_add(&t, str_value(json_object_get(task, "name")));
		table_add(&t, str_value(json_object_get(task, "queue")));
		table_addf(&t, "%" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT,
		    json_integer_value(json_object_get(task, "attempt")),
		    json_integer_value(json_object_get(task, "max_attempts")));
		table_add(&t, str_time(json_object_get(task, "created_at")));
		table_add(&t, list_next_run(task));
	}
	table_print(&t);
}

/*
 * Prints up to limit tasks of list request req (consumed). An answer holds
 * what fits in one line and says "more" when it left tasks out: ask again
 * before the last id, until limit or the end. With --json each answer is
 * printed as it came, a line each: merged, they would be a line forkqd
 * never sent, and could pass the 1 MiB of a line.
 */
static void
list_pages(json_t *req, int64_t limit)
{
	json_t	*all = NULL, *ans, *tasks, *last;
	size_t	 got = 0;
	int	 more, stuck;
	char	*line = NULL;

	do {
		req_set_int(req, "limit", limit - (int64_t)got);
		ans = request(json_incref(req), json_output ? &line : NULL);
		tasks = json_object_get(ans, "tasks");
		if (json_output) {
			printf("%s\n", line);
			free(line);
		} else if (all == NULL)
			all = json_incref(ans);
		else
			json_array_extend(json_object_get(all, "tasks"), tasks);
		got += json_array_size(tasks);
		last = json_array_get(tasks, json_array_size(tasks) - 1);
		more = json_is_true(json_object_get(ans, "more")) &&
		    got < (size_t)limit;
		/* A task alone too long for an answer: no id to go on from. */
		stuck = more && last == NULL;
		if (more && !stuck)
			req_set_int(req, "before_id", json_integer_value(
			    json_object_get(last, "id")));
		json_decref(ans);
	} while (more && !stuck);
	json_decref(req);
	if (!json_output)
		print_list(all);
	json_decref(all);
	if (stuck) {
		fflush(stdout);
		die(EXIT_DAEMON, "a task %s does not fit in an answer line: the "
		    "list stops there", got == 0 ? "to list" : "after these");
	}
}

static int
cmd_list(int argc, char **argv)
{
	static const struct option	 longopts[] = {
		{ "state", required_argument, NULL, OPT_STATE },
		{ "queue", required_argument, NULL, OPT_QUEUE },
		{ "limit", required_argument, NULL, OPT_LIMIT },
		{ "before", required_argument, NULL, OPT_BEFORE },
		OPTIONS_COMMON,
		{ NULL, 0, NULL, 0 }
	};
	json_t				*req;
	int64_t				 limit = LIST_DEFAULT_LIMIT;
	int				 ch;

	req = req_new("list");
	optind = 0;
	while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		switch (ch) {
		case OPT_STATE:
			if (strcmp(optarg, "queued") != 0 &&
			    strcmp(optarg, "running") != 0 &&
			    !state_is_final(optarg)) {
				usage_error("--state: must be queued, running, "
				    "succeeded, failed or canceled");
			}
			json_object_set_new(req, "state", json_string(optarg));
			break;
		case OPT_QUEUE:
			json_object_set_new(req, "queue",
			    user_label("--queue", optarg));
			break;
		case OPT_LIMIT:
			limit = parse_number("--limit", optarg, 1,
			    LIST_MAX_LIMIT);
			break;
		case OPT_BEFORE:
			req_set_int(req, "before_id",
			    parse_id("--before", optarg));
			break;
		case OPT_JSON:
			json_output = 1;
			break;
		case 'h':
			cmd_usage();
			/* NOTREACHED */
		default:
			bad_option(ch, argv, longopts);
		}
	}
	if (optind < argc)
		usage_error("list: unexpected argument %s", argv[optind]);
	list_pages(req, limit);
	return (0);
}

/* Does key name a count of ms ("timeout_ms")? */
static int
is_ms_key(const char *key)
{
	size_t	len = strlen(key);

	return (len > 3 && strcmp(key + len - 3, "_ms") == 0);
}

/* A field show does not know, formatted by its name's unit suffix. */
static char *
str_extra(const char *key, const json_t *v)
{
	size_t	len = strlen(key);

	if (len > 3 && strcmp(key + len - 3, "_at") == 0 && json_is_string(v))
		return (str_time(v));
	return (str_value(v));
}

/* One "key: value" line of show, keys aligned. Takes ownership of value. */
static void
show_line(const char *key, char *value)
{
	sanitize(value);
	printf("%s:%*s%s\n", key, (int)(21 - strlen(key)), "", value);
	free(value);
}

/*
 * A field in ms, shown as a duration ("1h00m"): its label loses the _ms
 * it no longer is ("timeout: 1h00m", not "timeout_ms: 1h00m").
 */
static void
show_duration_line(const char *key, const json_t *v, int zero_is_none)
{
	char	label[64];
	size_t	len = strlen(key);

	if (is_ms_key(key) && len - 3 < sizeof label) {
		memcpy(label, key, len - 3);
		label[len - 3] = '\0';
		key = label;
	}
	show_line(key, str_duration(v, zero_is_none));
}

static void
show_attempts(const json_t *attempts)
{
	const json_t	*a, *sig;
	struct table	 t;
	json_int_t	 cpu;
	char		*s, buf[32];
	size_t		 i;

	table_init(&t, 9);
	table_add(&t, xstrdup("N"));
	table_add(&t, xstrdup("STARTED"));
	table_add(&t, xstrdup("DURATION"));
	table_add(&t, xstrdup("OUTCOME"));
	table_add(&t, xstrdup("EXIT/SIGNAL"));
	table_add(&t, xstrdup("PID"));
	table_add(&t, xstrdup("CPU"));
	table_add(&t, xstrdup("MAXRSS"));
	table_add(&t, xstrdup("ERROR"));
	json_array_foreach(attempts, i, a) {
		table_add(&t, str_value(json_object_get(a, "n")));
		table_add(&t, str_time(json_object_get(a, "started_at")));
		table_add(&t, str_duration(json_object_get(a, "duration_ms"),
		    0));
		if (json_is_string(json_object_get(a, "outcome")))
			table_add(&t, str_value(json_object_get(a, "outcome")));
		else if (json_is_null(json_object_get(a, "finished_at")))
			table_add(&t, xstrdup("(running)"));
		else
			table_add(&t, xstrdup("-"));
		sig = json_object_get(a, "signal");
		if (json_is_string(sig))
			table_add(&t, str_value(sig));
		else
			table_add(&t, str_value(json_object_get(a,
			    "exit_code")));
		table_add(&t, str_value(json_object_get(a, "pid")));
		if (json_is_integer(json_object_get(a, "user_cpu_ms"))) {
			cpu = json_integer_value(json_object_get(a,
			    "user_cpu_ms")) + json_integer_value(
			    json_object_get(a, "sys_cpu_ms"));
			format_duration(cpu, buf, sizeof buf);
			table_add(&t, xstrdup(buf));
		} else
			table_add(&t, xstrdup("-"));
		if (json_is_integer(json_object_get(a, "max_rss_kb"))) {
			table_addf(&t, "%" JSON_INTEGER_FORMAT "K",
			    json_integer_value(json_object_get(a,
			    "max_rss_kb")));
		} else
			table_add(&t, xstrdup("-"));
		s = str_value(json_object_get(a, "error"));
		sanitize(s);
		table_add(&t, s);
	}
	table_print(&t);
}

static void
print_show(json_t *ans)
{
	enum field_kind { F_VALUE, F_TIME, F_DURATION, F_ARGV };
	static const struct {
		const char	*key;
		enum field_kind	 kind;
	} fields[] = {
		{ "id", F_VALUE }, { "name", F_VALUE }, { "state", F_VALUE },
		{ "queue", F_VALUE }, { "argv", F_ARGV },
		{ "priority", F_VALUE }, { "attempt", F_VALUE },
		{ "max_attempts", F_VALUE }, { "created_at", F_TIME },
		{ "run_at", F_TIME }, { "started_at", F_TIME },
		{ "finished_at", F_TIME }, { "outcome", F_VALUE },
		{ "exit_code", F_VALUE }, { "signal", F_VALUE },
		{ "error", F_VALUE }, { "progress", F_VALUE },
		{ "progress_message", F_VALUE }, { "pid", F_VALUE },
		{ "last_heartbeat_at", F_TIME }, { "timeout_ms", F_DURATION },
		{ "heartbeat_timeout_ms", F_DURATION }, { "unique", F_VALUE },
		{ "uid", F_VALUE },
	};
	const json_t	*task, *v;
	const char	*key;
	size_t		 i, nfields = sizeof fields / sizeof fields[0];

	task = json_object_get(ans, "task");
	for (i = 0; i < nfields; i++) {
		v = json_object_get(task, fields[i].key);
		switch (fields[i].kind) {
		case F_TIME:
			show_line(fields[i].key, str_time(v));
			break;
		case F_DURATION:
			show_duration_line(fields[i].key, v, 1);
			break;
		case F_ARGV:
			show_line(fields[i].key, str_argv(v));
			break;
		default:
			show_line(fields[i].key, str_value(v));
			break;
		}
	}
	/* Fields beyond spec 7 (cwd, env, after...) as the daemon sent them. */
	json_object_foreach((json_t *)task, key, v) {
		if (strcmp(key, "attempts") == 0)
			continue;
		for (i = 0; i < nfields; i++) {
			if (strcmp(key, fields[i].key) == 0)
				break;
		}
		if (i < nfields)
			continue;
		if (is_ms_key(key) && json_is_integer(v))
			show_duration_line(key, v, 0);
		else
			show_line(key, str_extra(key, v));
	}
	v = json_object_get(task, "attempts");
	if (json_array_size(v) > 0) {
		printf("\n");
		show_attempts(v);
	}
}

/* Commands of the form "forkq CMD [--json] ID" sending {op, id}. */
static void
cmd_id_op(int argc, char **argv, const char *op, void (*fn)(json_t *))
{
	json_t	*req;
	int	 i;

	i = parse_plain(argc, argv, "ID", 1, 1);
	req = req_new(op);
	req_set_int(req, "id", parse_id(argv[0], argv[i]));
	exchange(req, fn);
}

static int
cmd_show(int argc, char **argv)
{
	cmd_id_op(argc, argv, "get", print_show);
	return (0);
}

static void
print_id_state(json_t *ans)
{
	const json_t	*task = json_object_get(ans, "task");
	char		*id, *state;

	id = str_value(json_object_get(task, "id"));
	state = str_value(json_object_get(task, "state"));
	printf("%s %s\n", id, state);
	free(id);
	free(state);
}

static int
cmd_cancel(int argc, char **argv)
{
	cmd_id_op(argc, argv, "cancel", print_id_state);
	return (0);
}

static int
cmd_retry(int argc, char **argv)
{
	cmd_id_op(argc, argv, "retry", print_id_state);
	return (0);
}

static int
cmd_wait(int argc, char **argv)
{
	int64_t	*ids;
	int	 i, first, status;

	first = parse_plain(argc, argv, "ID", 1, INT_MAX);
	ids = xreallocarray(NULL, argc - first, sizeof *ids);
	for (i = first; i < argc; i++)
		ids[i - first] = parse_id("wait", argv[i]);
	status = wait_ids(ids, argc - first);
	free(ids);
	return (status);
}

/* One event field as key=value; strings quoted only when they must be. */
static void
logs_field(const char *key, const json_t *v)
{
	const char	*s;
	char		*out;

	if (json_is_null(v))
		return;
	s = json_string_value(v);
	if (s != NULL && *s != '\0' && strpbrk(s, " \"=\\") == NULL) {
		out = xstrdup(s);
		sanitize(out);
	} else if (s == NULL && !json_is_array(v) && !json_is_object(v))
		out = str_value(v);
	else if ((out = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY)) == NULL)
		out = xstrdup("?");
	printf(" %s=%s", key, out);
	free(out);
}

/* "local-time level event task= attempt= pid= other=..." */
static void
logs_print(const char *line, size_t len)
{
	static const char	*first[] = { "task", "attempt", "pid" };
	static const char	*skip[] = { "ts", "level", "event", "task",
				    "attempt", "pid" };
	json_t			*ev, *v;
	const char		*key, *ts, *level, *event, *errstr;
	char			 buf[64];
	int64_t			 ms;
	size_t			 i;

	if ((ev = json_loadb(line, len, 0, NULL)) == NULL) {
		printf("%.*s\n", (int)len, line);
		return;
	}
	ts = jstr(ev, "ts");
	if (ts != NULL && parse_time_ms(ts, &ms, &errstr) == 0) {
		format_local_time(ms, buf, sizeof buf);
		printf("%s.%03d", buf, (int)(ms % 1000));
	} else
		printf("%s", ts != NULL ? ts : "-");
	level = jstr(ev, "level");
	event = jstr(ev, "event");
	printf(" %s %s", level ? level : "-", event ? event : "-");
	for (i = 0; i < sizeof first / sizeof first[0]; i++) {
		if ((v = json_object_get(ev, first[i])) != NULL)
			logs_field(first[i], v);
	}
	json_object_foreach(ev, key, v) {
		for (i = 0; i < sizeof skip / sizeof skip[0]; i++) {
			if (strcmp(key, skip[i]) == 0)
				break;
		}
		if (i == sizeof skip / sizeof skip[0])
			logs_field(key, v);
	}
	printf("\n");
	json_decref(ev);
}

/* Is this line the watch.dropped forkqd sends a lagging watcher last? */
static int
is_drop_notice(const char *line, size_t len)
{
	json_t	*ev;
	int	 drop;

	if (memmem(line, len, "watch.dropped", 13) == NULL ||
	    (ev = json_loadb(line, len, 0, NULL)) == NULL)
		return (0);
	drop = jstr(ev, "event") != NULL &&
	    strcmp(jstr(ev, "event"), "watch.dropped") == 0;
	json_decref(ev);
	return (drop);
}

static int
cmd_logs(int argc, char **argv)
{
	static const struct option	 longopts[] = {
		{ "follow", no_argument, NULL, 'f' },
		{ "lines", required_argument, NULL, 'n' },
		{ "task", required_argument, NULL, OPT_TASK },
		OPTIONS_COMMON,
		{ NULL, 0, NULL, 0 }
	};
	json_t				*req;
	char				*line;
	size_t				 len;
	int				 ch, follow = 0, dropped = 0;
	long long			 backlog = 100;

	req = req_new("watch");
	optind = 0;
	while ((ch = getopt_long(argc, argv, ":fn:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'f':
			follow = 1;
			break;
		case 'n':
			backlog = parse_number("-n", optarg, 0, INT_MAX);
			break;
		case OPT_TASK:
			req_set_int(req, "task", parse_id("--task", optarg));
			break;
		case OPT_JSON:
			json_output = 1;
			break;
		case 'h':
			cmd_usage();
			/* NOTREACHED */
		default:
			bad_option(ch, argv, longopts);
		}
	}
	if (optind < argc)
		usage_error("logs: unexpected argument %s", argv[optind]);
	req_set_int(req, "backlog", backlog);
	json_object_set_new(req, "follow", json_boolean(follow));
	json_decref(request(req, NULL));
	while (next_line(&line, &len) == 1) {
		dropped = is_drop_notice(line, len);
		if (json_output)
			printf("%.*s\n", (int)len, line);
		else
			logs_print(line, len);
		if (fflush(stdout) == EOF)
			return (0);
	}
	/* Following, the stream ends only when forkqd goes or drops us. */
	if (follow && dropped)
		die(EXIT_DAEMON, "%s: dropped by forkqd, this reader having "
		    "fallen too far behind", socket_path);
	if (follow)
		die(EXIT_UNREACHABLE, "%s: connection closed by forkqd",
		    socket_path);
	return (0);
}

/*
 * Writes one output answer's bytes to stdout; returns how many there were.
 * Under --json the answer line is printed instead.
 */
static size_t
output_write(const json_t *ans, const char *line)
{
	const char	*b64;
	unsigned char	*buf;
	ssize_t		 n;
	size_t		 len;

	if ((b64 = jstr(ans, "data_b64")) == NULL)
		die(EXIT_DAEMON, "invalid answer from forkqd: no data_b64");
	len = strlen(b64);
	buf = xmalloc(len / 4 * 3 + 1);
	if ((n = client_b64_decode(b64, len, buf)) == -1)
		die(EXIT_DAEMON, "invalid answer from forkqd: bad base64");
	if (json_output)
		printf("%s\n", line);
	else
		fwrite(buf, 1, n, stdout);
	free(buf);
	fflush(stdout);
	return (n);
}

static int
cmd_output(int argc, char **argv)
{
	static const struct option	 longopts[] = {
		{ "follow", no_argument, NULL, 'f' },
		{ "stderr", no_argument, NULL, OPT_STDERR },
		{ "attempt", required_argument, NULL, OPT_ATTEMPT },
		OPTIONS_COMMON,
		{ NULL, 0, NULL, 0 }
	};
	json_t				*req, *ans, *next;
	const char			*stream = "stdout";
	char				*line;
	int				 ch, follow = 0, done;
	long long			 attempt = 0;
	int64_t				 id, offset = 0;
	size_t				 n;

	optind = 0;
	while ((ch = getopt_long(argc, argv, ":fh", longopts, NULL)) != -1) {
		switch (ch) {
		case 'f':
			follow = 1;
			break;
		case OPT_STDERR:
			stream = "stderr";
			break;
		case OPT_ATTEMPT:
			attempt = parse_number("--attempt", optarg, 1,
			    INT_MAX);
			break;
		case OPT_JSON:
			json_output = 1;
			break;
		case 'h':
			cmd_usage();
			/* NOTREACHED */
		default:
			bad_option(ch, argv, longopts);
		}
	}
	if (optind != argc - 1) {
		usage_error(optind == argc ? "output: missing ID" :
		    "output: too many arguments");
	}
	id = parse_id("output", argv[optind]);

	do {
		req = req_new("output");
		req_set_int(req, "id", id);
		json_object_set_new(req, "stream", json_string(stream));
		if (attempt != 0)
			req_set_int(req, "attempt", attempt);
		req_set_int(req, "offset", offset);
		req_set_int(req, "limit", OUTPUT_CHUNK);
		req_set_int(req, "wait_ms", follow ? OUTPUT_WAIT_MS : 0);
		ans = request(req, &line);
		n = output_write(ans, line);
		done = json_is_true(json_object_get(ans, "eof")) ||
		    (!follow && n == 0);
		next = json_object_get(ans, "offset");
		offset = json_is_integer(next) ? json_integer_value(next) :
		    offset + (int64_t)n;
		/* -f follows the attempt it began with (spec 3), also when
		 * a retry starts another between two requests. */
		next = json_object_get(ans, "attempt");
		if (attempt == 0 && json_is_integer(next))
			attempt = json_integer_value(next);
		free(line);
		json_decref(ans);
	} while (!done && !ferror(stdout));
	return (0);
}

/*
 * The heartbeat pipe forkqd gives a task (spec 5); a usage error, saying
 * which, when FORKQ_HEARTBEAT_FD is unset, not a number or not open.
 */
static int
heartbeat_fd(void)
{
	const char	*env, *errstr;
	int		 fd;

	if ((env = getenv("FORKQ_HEARTBEAT_FD")) == NULL) {
		usage_error("heartbeat: not inside a forkq task "
		    "(FORKQ_HEARTBEAT_FD is not set)");
	}
	fd = strtonum(env, 0, INT_MAX, &errstr);
	if (errstr != NULL) {
		usage_error("heartbeat: FORKQ_HEARTBEAT_FD='%s' is not a file "
		    "descriptor number", env);
	}
	if (fcntl(fd, F_GETFD) == -1) {
		usage_error("heartbeat: FORKQ_HEARTBEAT_FD=%d is not an open "
		    "file descriptor", fd);
	}
	return (fd);
}

static int
cmd_heartbeat(int argc, char **argv)
{
	static const struct option	 longopts[] = {
		{ "progress", required_argument, NULL, OPT_PROGRESS },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	char				*msg = NULL, *line, *next, *p;
	long long			 progress = -1;
	ssize_t				 n;
	int				 ch, fd, i;

	optind = 0;
	while ((ch = getopt_long(argc, argv, "+:h", longopts, NULL)) != -1) {
		switch (ch) {
		case OPT_PROGRESS:
			progress = parse_number("--progress", optarg, 0, 100);
			break;
		case 'h':
			cmd_usage();
			/* NOTREACHED */
		default:
			bad_option(ch, argv, longopts);
		}
	}
	fd = heartbeat_fd();

	/* Words join like echo(1); a newline would make two heartbeats. */
	for (i = optind; i < argc; i++) {
		xasprintf(&next, "%s%s%s", msg ? msg : "", msg ? " " : "",
		    argv[i]);
		free(msg);
		msg = next;
	}
	for (p = msg; p != NULL && *p != '\0'; p++) {
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	}
	if (progress >= 0)
		xasprintf(&line, "progress %lld%s%s", progress,
		    msg ? " " : "", msg ? msg : "");
	else
		line = xstrdup(msg ? msg : "");
	utf8_truncate(line, HEARTBEAT_MAX - 1);
	next = line;
	xasprintf(&line, "%s\n", next);
	free(next);

	/* A pipe forkqd no longer reads is an error to report (EPIPE). */
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
		die(EXIT_DAEMON, "signal: %s", strerror(errno));
	while ((n = write(fd, line, strlen(line))) == -1 && errno == EINTR)
		;
	if (n == -1)
		die(EXIT_DAEMON, "heartbeat: %s", strerror(errno));
	if ((size_t)n != strlen(line))
		die(EXIT_DAEMON, "heartbeat: short write");
	free(line);
	free(msg);
	return (0);
}

static void
print_prune(json_t *ans)
{
	json_int_t	n;

	n = json_integer_value(json_object_get(ans, "pruned"));
	printf("pruned %" JSON_INTEGER_FORMAT " %s\n", n,
	    n == 1 ? "task" : "tasks");
}

static int
cmd_prune(int argc, char **argv)
{
	static const struct option	 longopts[] = {
		{ "older-than", required_argument, NULL, OPT_OLDER_THAN },
		OPTIONS_COMMON,
		{ NULL, 0, NULL, 0 }
	};
	json_t				*req;
	int				 ch, have = 0;

	req = req_new("prune");
	optind = 0;
	while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		switch (ch) {
		case OPT_OLDER_THAN:
			req_set_int(req, "older_than_ms",
			    parse_duration("--older-than", optarg));
			have = 1;
			break;
		case OPT_JSON:
			json_output = 1;
			break;
		case 'h':
			cmd_usage();
			/* NOTREACHED */
		default:
			bad_option(ch, argv, longopts);
		}
	}
	if (!have)
		usage_error("prune: --older-than is required");
	if (optind < argc)
		usage_error("prune: unexpected argument %s", argv[optind]);
	exchange(req, print_prune);
	return (0);
}

static void
print_cron_add(json_t *ans)
{
	const json_t	*cron = json_object_get(ans, "cron");
	char		*name, *next;

	name = str_value(json_object_get(cron, "name"));
	next = str_time(json_object_get(cron, "next_run_at"));
	sanitize(name);
	printf("%s: %snext run %s\n", name, json_is_true(json_object_get(ans,
	    "replaced")) ? "replaced; " : "", next);
	free(name);
	free(next);
}

static void
print_cron_list(json_t *ans)
{
	const json_t	*crons, *c, *uid;
	struct table	 t;
	char		*s;
	size_t		 i;

	table_init(&t, 6);
	table_add(&t, xstrdup("NAME"));
	table_add(&t, xstrdup("SCHEDULE"));
	table_add(&t, xstrdup("NEXT RUN"));
	table_add(&t, xstrdup("LAST RUN"));
	table_add(&t, xstrdup("LAST TASK"));
	table_add(&t, xstrdup("COMMAND"));
	crons = json_object_get(ans, "crons");
	json_array_foreach(crons, i, c) {
		/* Root sees every user's; names are per user. */
		s = str_value(json_object_get(c, "name"));
		uid = json_object_get(c, "uid");
		if (json_is_integer(uid) &&
		    json_integer_value(uid) != (json_int_t)getuid()) {
			table_addf(&t, "%s (uid %" JSON_INTEGER_FORMAT ")", s,
			    json_integer_value(uid));
			free(s);
		} else
			table_add(&t, s);
		table_add(&t, str_value(json_object_get(c, "schedule")));
		table_add(&t, str_time(json_object_get(c, "next_run_at")));
		table_add(&t, str_time(json_object_get(c, "last_run_at")));
		table_add(&t, str_value(json_object_get(c, "last_task")));
		table_add(&t, str_argv(json_object_get(c, "argv")));
	}
	table_print(&t);
}

static int
cmd_cron_add(int argc, char **argv)
{
	json_t	*req;

	if (argc > 1 && (strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "--help") == 0))
		cmd_usage();
	if (argc < 3)
		usage_error("cron add: missing NAME or SCHEDULE");
	/* "cron add --json @daily ..." made an entry named "--json". */
	if (argv[1][0] == '-')
		usage_error("cron add: NAME \"%s\" starts with '-': options "
		    "come after NAME and SCHEDULE", argv[1]);
	req = req_new("cron_add");
	json_object_set_new(req, "name", user_string("cron add", argv[1]));
	json_object_set_new(req, "schedule",
	    user_string("cron add", argv[2]));
	/* The submit options follow SCHEDULE, which stands in as argv[0]. */
	submit_parse(argc - 2, argv + 2, req, NULL);
	exchange(req, print_cron_add);
	return (0);
}

/* cron rm [--uid UID] NAME: root names the owner when several users
 * have an entry of that name. */
static int
cmd_cron_rm(int argc, char **argv)
{
	static const struct option	 longopts[] = {
		OPTIONS_COMMON,
		{ "uid", required_argument, NULL, OPT_UID },
		{ NULL, 0, NULL, 0 }
	};
	json_t				*req;
	long long			 uid = -1;
	int				 ch;

	optind = 0;
	while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		switch (ch) {
		case OPT_UID:
			uid = parse_number("--uid", optarg, 0, UINT32_MAX);
			break;
		case OPT_JSON:
			json_output = 1;
			break;
		case 'h':
			cmd_usage();
			/* NOTREACHED */
		default:
			bad_option(ch, argv, longopts);
		}
	}
	if (optind == argc)
		usage_error("cron rm: missing NAME");
	if (optind < argc - 1)
		usage_error("cron rm: unexpected argument %s",
		    argv[optind + 1]);
	req = req_new("cron_remove");
	json_object_set_new(req, "name", user_string("cron rm",
	    argv[optind]));
	if (uid != -1)
		req_set_int(req, "uid", uid);
	exchange(req, NULL);
	return (0);
}

static int
cmd_cron(int argc, char **argv)
{
	if (argc < 2)
		usage_error("cron: missing subcommand (add, list or rm)");
	if (strcmp(argv[1], "add") == 0)
		return (cmd_cron_add(argc - 1, argv + 1));
	if (strcmp(argv[1], "list") == 0) {
		parse_plain(argc - 1, argv + 1, NULL, 0, 0);
		exchange(req_new("cron_list"), print_cron_list);
		return (0);
	}
	if (strcmp(argv[1], "rm") == 0)
		return (cmd_cron_rm(argc - 1, argv + 1));
	if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)
		cmd_usage();
	usage_error("cron: unknown subcommand %s (add, list or rm)", argv[1]);
}

/* pause and resume: {op, queue?}, nothing printed but under --json. */
static void
cmd_queue_op(int argc, char **argv, const char *op)
{
	json_t	*req;
	int	 i;

	i = parse_plain(argc, argv, NULL, 0, 1);
	req = req_new(op);
	if (i < argc)
		json_object_set_new(req, "queue", user_string(op, argv[i]));
	exchange(req, NULL);
}

static int
cmd_pause(int argc, char **argv)
{
	cmd_queue_op(argc, argv, "pause");
	return (0);
}

static int
cmd_resume(int argc, char **argv)
{
	cmd_queue_op(argc, argv, "resume");
	return (0);
}

static void
print_stats(json_t *ans)
{
	const json_t	*stats, *s;
	struct table	 t;
	size_t		 i;

	table_init(&t, 10);
	table_add(&t, xstrdup("NAME"));
	table_add(&t, xstrdup("TASKS"));
	table_add(&t, xstrdup("SUCCEEDED"));
	table_add(&t, xstrdup("FAILED"));
	table_add(&t, xstrdup("CANCELED"));
	table_add(&t, xstrdup("SUCCESS"));
	table_add(&t, xstrdup("ATTEMPTS"));
	table_add(&t, xstrdup("P50"));
	table_add(&t, xstrdup("P95"));
	table_add(&t, xstrdup("MAX"));
	stats = json_object_get(ans, "stats");
	json_array_foreach(stats, i, s) {
		table_add(&t, str_value(json_object_get(s, "name")));
		table_add(&t, str_value(json_object_get(s, "tasks")));
		table_add(&t, str_value(json_object_get(s, "succeeded")));
		table_add(&t, str_value(json_object_get(s, "failed")));
		table_add(&t, str_value(json_object_get(s, "canceled")));
		if (json_is_number(json_object_get(s, "success_rate")))
			table_addf(&t, "%.1f%%", 100 * json_number_value(
			    json_object_get(s, "success_rate")));
		else
			table_add(&t, xstrdup("-"));
		if (json_is_number(json_object_get(s, "mean_attempts")))
			table_addf(&t, "%.2f", json_number_value(
			    json_object_get(s, "mean_attempts")));
		else
			table_add(&t, xstrdup("-"));
		table_add(&t, str_duration(json_object_get(s, "p50_ms"), 0));
		table_add(&t, str_duration(json_object_get(s, "p95_ms"), 0));
		table_add(&t, str_duration(json_object_get(s, "max_ms"), 0));
	}
	table_print(&t);
}

static int
cmd_stats(int argc, char **argv)
{
	static const struct option	 longopts[] = {
		{ "since", required_argument, NULL, OPT_SINCE },
		{ "name", required_argument, NULL, OPT_NAME },
		OPTIONS_COMMON,
		{ NULL, 0, NULL, 0 }
	};
	json_t				*req;
	int				 ch;

	req = req_new("stats");
	optind = 0;
	while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		switch (ch) {
		case OPT_SINCE:
			req_set_int(req, "since_ms",
			    parse_duration("--since", optarg));
			break;
		case OPT_NAME:
			json_object_set_new(req, "name",
			    user_label("--name", optarg));
			break;
		case OPT_JSON:
			json_output = 1;
			break;
		case 'h':
			cmd_usage();
			/* NOTREACHED */
		default:
			bad_option(ch, argv, longopts);
		}
	}
	if (optind < argc)
		usage_error("stats: unexpected argument %s", argv[optind]);
	exchange(req, print_stats);
	return (0);
}

static void
print_metrics(json_t *ans)
{
	const char	*text;

	if ((text = jstr(ans, "text")) != NULL)
		fputs(text, stdout);
}

static int
cmd_metrics(int argc, char **argv)
{
	parse_plain(argc, argv, NULL, 0, 0);
	exchange(req_new("metrics"), print_metrics);
	return (0);
}

/* --- main --------------------------------------------------------------- */

static const struct cmd_entry *
cmd_find(const char *name)
{
	size_t	i;

	for (i = 0; i < NCOMMANDS; i++) {
		if (strcmp(cmd_table[i].name, name) == 0)
			return (&cmd_table[i]);
	}
	return (NULL);
}

int
main(int argc, char **argv)
{
	static const struct option	 longopts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 }
	};
	const struct cmd_entry		*cmd;
	int				 ch, status;

	/*
	 * A closed stdout ends forkq as it ends any filter ("forkq list |
	 * head"), whatever disposition we inherited. The socket is written
	 * with MSG_NOSIGNAL, so a vanished daemon is still reported.
	 */
	if (signal(SIGPIPE, SIG_DFL) == SIG_ERR)
		die(EXIT_DAEMON, "signal: %s", strerror(errno));
	opterr = 0;
	while ((ch = getopt_long(argc, argv, "+:s:hV", longopts, NULL)) != -1) {
		switch (ch) {
		case 's':
			socket_opt = optarg;
			break;
		case 'h':
			usage(stdout);
			return (0);
		case 'V':
			printf("forkq %s\n", FORKQ_VERSION);
			return (0);
		default:
			bad_option(ch, argv, longopts);
		}
	}
	argc -= optind;
	argv += optind;
	if (argc == 0)
		usage_error("missing command (see forkq --help)");
	if ((cmd = cmd_find(argv[0])) == NULL)
		usage_error("unknown command %s (see forkq --help)", argv[0]);
	cmd_current = cmd;
	status = cmd->exec(argc, argv);

	client_free(conn);
	free(socket_path);
	if (fflush(stdout) == EOF || ferror(stdout))
		die(EXIT_DAEMON, "stdout: %s", strerror(errno));
	return (status);
}
