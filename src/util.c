/*
 * util.c: parsing and formatting shared by forkq and forkqd. Every function
 * is pure apart from reading the clocks and the environment. forkq is
 * linked static where it can (configure.ac): nothing here may need glibc's
 * run-time modules (NSS lookups such as getpwnam, iconv, dlopen), which the
 * link refuses with --fatal-warnings.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

/* Splits "123unit" into the number and its unit; rejects signs and overflow. */
static int
split_number(const char *s, int64_t *num, const char **unit, const char **errstr)
{
	char		*end;
	long long	 v;

	if (s != NULL && *s == '-' && isdigit((unsigned char)s[1])) {
		*errstr = "must not be negative";
		return (-1);
	}
	if (s == NULL || !isdigit((unsigned char)*s)) {
		*errstr = "not a number";
		return (-1);
	}
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno == ERANGE) {
		*errstr = "too large";
		return (-1);
	}
	if (*end == '.' && isdigit((unsigned char)end[1])) {
		*errstr = "a whole number, no fraction";
		return (-1);
	}
	*num = v;
	*unit = end;
	return (0);
}

int
parse_duration_ms(const char *s, int64_t *ms, const char **errstr)
{
	static const struct {
		const char	*name;
		int64_t		 ms;
	} units[] = {
		{ "ms", 1 }, { "", 1000 }, { "s", 1000 }, { "m", 60000 },
		{ "h", 3600000 }, { "d", 86400000 },
	};
	int64_t		 num;
	const char	*unit;
	size_t		 i;

	if (split_number(s, &num, &unit, errstr) == -1)
		return (-1);
	for (i = 0; i < sizeof units / sizeof units[0]; i++) {
		if (strcmp(unit, units[i].name) != 0)
			continue;
		if (num > FORKQ_MAX_DURATION_MS / units[i].ms) {
			*errstr = "too large";
			return (-1);
		}
		*ms = num * units[i].ms;
		return (0);
	}
	*errstr = "unknown unit (use ms, s, m, h or d)";
	return (-1);
}

int
parse_size(const char *s, int64_t *bytes, const char **errstr)
{
	static const char	 units[] = "KMGT";
	int64_t			 num, mult = 1;
	const char		*unit, *p;

	if (split_number(s, &num, &unit, errstr) == -1)
		return (-1);
	if (*unit != '\0') {
		if (unit[1] != '\0' || (p = strchr(units,
		    toupper((unsigned char)*unit))) == NULL) {
			*errstr = "unknown unit (use K, M, G or T)";
			return (-1);
		}
		mult = (int64_t)1 << (10 * (p - units + 1));
	}
	if (num > INT64_MAX / mult) {
		*errstr = "too large";
		return (-1);
	}
	*bytes = num * mult;
	return (0);
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar. */
static int64_t
days_from_civil(int64_t y, int m, int d)
{
	int64_t	era, yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = y - era * 400;
	doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return (era * 146097 + doe - 719468);
}

/* n digits at s as a number, or -1 when they are not all digits. */
static int
fixed_digits(const char *s, int n)
{
	int	v = 0, i;

	for (i = 0; i < n; i++) {
		if (!isdigit((unsigned char)s[i]))
			return (-1);
		v = v * 10 + (s[i] - '0');
	}
	return (v);
}

static int
days_in_month(int y, int m)
{
	static const int	days[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30,
				    31, 30, 31 };

	if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
		return (29);
	return (days[m - 1]);
}

int
parse_time_ms(const char *s, int64_t *ms, const char **errstr)
{
	int		 y, mo, d, h, mi, sec, oh, om;
	int64_t		 frac = 0, scale = 1000, t;
	const char	*p;
	char		*end;
	long long	 v;

	if (s == NULL || *s == '\0') {
		*errstr = "empty time";
		return (-1);
	}
	for (p = s; isdigit((unsigned char)*p); p++)
		;
	if (*p == '\0') {
		errno = 0;
		v = strtoll(s, &end, 10);
		if (errno == ERANGE || v > TIME_MAX_MS / 1000)
			goto range;
		*ms = v * 1000;
		return (0);
	}
	/* YYYY-MM-DDTHH:MM:SS, fixed widths, digits only. */
	if (strlen(s) < 20 || s[4] != '-' || s[7] != '-' ||
	    (s[10] != 'T' && s[10] != 't' && s[10] != ' ') || s[13] != ':' ||
	    s[16] != ':')
		goto bad;
	if ((y = fixed_digits(s, 4)) < 0 || (mo = fixed_digits(s + 5, 2)) < 0 ||
	    (d = fixed_digits(s + 8, 2)) < 0 || (h = fixed_digits(s + 11, 2)) < 0 ||
	    (mi = fixed_digits(s + 14, 2)) < 0 ||
	    (sec = fixed_digits(s + 17, 2)) < 0)
		goto bad;
	if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) ||
	    h > 23 || mi > 59 || sec > 60)
		goto bad;
	p = s + 19;
	if (*p == '.') {
		p++;
		if (!isdigit((unsigned char)*p))
			goto bad;
		for (; isdigit((unsigned char)*p); p++) {
			if (scale > 1) {
				scale /= 10;
				frac += (*p - '0') * scale;
			}
		}
	}
	t = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec;
	if (*p == 'Z' || *p == 'z')
		p++;
	else if (*p == '+' || *p == '-') {
		if (strlen(p) != 6 || p[3] != ':' ||
		    (oh = fixed_digits(p + 1, 2)) < 0 || oh > 23 ||
		    (om = fixed_digits(p + 4, 2)) < 0 || om > 59)
			goto bad;
		t -= (*p == '+' ? 1 : -1) * (oh * 3600 + om * 60);
		p += 6;
	} else
		goto bad;
	if (*p != '\0')
		goto bad;
	/* An offset can take a time past the years RFC 3339 writes in UTC. */
	t = t * 1000 + frac;
	if (t < TIME_MIN_MS || t > TIME_MAX_MS)
		goto range;
	*ms = t;
	return (0);
bad:
	*errstr = "not an RFC 3339 time or unix seconds";
	return (-1);
range:
	*errstr = "outside the years 0000 to 9999 in UTC";
	return (-1);
}

/*
 * Replaces every byte of s that is not part of valid UTF-8 with '?', in
 * place, so text from a task can always go into JSON.
 */
void
utf8_sanitize(char *s)
{
	unsigned char	*p = (unsigned char *)s;
	int		 n, i;

	while (*p != '\0') {
		if (*p < 0x80) {
			p++;
			continue;
		}
		if (*p >= 0xc2 && *p <= 0xdf)
			n = 1;
		else if (*p >= 0xe0 && *p <= 0xef)
			n = 2;
		else if (*p >= 0xf0 && *p <= 0xf4)
			n = 3;
		else
			n = -1;
		for (i = 1; n > 0 && i <= n; i++) {
			if ((p[i] & 0xc0) != 0x80)
				n = -1;
		}
		/* Overlongs, surrogates and > U+10FFFF. */
		if (n == 2 && ((p[0] == 0xe0 && p[1] < 0xa0) ||
		    (p[0] == 0xed && p[1] > 0x9f)))
			n = -1;
		if (n == 3 && ((p[0] == 0xf0 && p[1] < 0x90) ||
		    (p[0] == 0xf4 && p[1] > 0x8f)))
			n = -1;
		if (n < 0)
			*p++ = '?';
		else
			p += n + 1;
	}
}

/*
 * "YYYY-MM-DDTHH:MM:SS.mmmZ". Every event has one and most fall in the
 * same second as the one before: the date and time part is formatted once
 * per second, the milliseconds by hand.
 */
void
format_rfc3339_ms(int64_t ms, char *buf, size_t len)
{
	static time_t	last_t;
	static int	last_ok;	/* last holds last_t's text */
	static char	last[64];	/* "YYYY-MM-DDTHH:MM:SS" */
	struct tm	tm;
	time_t		t = (time_t)(ms / 1000);
	int		frac = (int)(ms % 1000);
	size_t		n;

	if (frac < 0) {
		frac += 1000;
		t--;
	}
	if (!last_ok || t != last_t) {
		gmtime_r(&t, &tm);
		snprintf(last, sizeof last, "%04d-%02d-%02dT%02d:%02d:%02d",
		    tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		    tm.tm_min, tm.tm_sec);
		last_t = t;
		last_ok = 1;
	}
	n = strlen(last);
	if (len < n + 6) {
		if (len > 0)
			buf[0] = '\0';
		return;
	}
	memcpy(buf, last, n);
	buf[n] = '.';
	buf[n + 1] = (char)('0' + frac / 100);
	buf[n + 2] = (char)('0' + frac / 10 % 10);
	buf[n + 3] = (char)('0' + frac % 10);
	buf[n + 4] = 'Z';
	buf[n + 5] = '\0';
}

void
format_local_time(int64_t ms, char *buf, size_t len)
{
	struct tm	tm;
	time_t		t = (time_t)(ms / 1000);

	if (ms % 1000 < 0)
		t--;		/* down, not toward zero, before 1970 */
	localtime_r(&t, &tm);
	/* Not strftime's %Y, which writes the year 0 as "0". */
	snprintf(buf, len, "%04d-%02d-%02d %02d:%02d:%02d", tm.tm_year + 1900,
	    tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

void
format_duration(int64_t ms, char *buf, size_t len)
{
	if (ms < 0)
		ms = 0;
	if (ms < 1000)
		snprintf(buf, len, "%" PRId64 "ms", ms);
	else if (ms < 60000)
		snprintf(buf, len, "%" PRId64 ".%" PRId64 "s", ms / 1000,
		    (ms % 1000) / 100);
	else if (ms < 3600000)
		snprintf(buf, len, "%" PRId64 "m%02" PRId64 "s", ms / 60000,
		    (ms / 1000) % 60);
	else if (ms < 86400000)
		snprintf(buf, len, "%" PRId64 "h%02" PRId64 "m", ms / 3600000,
		    (ms / 60000) % 60);
	else
		snprintf(buf, len, "%" PRId64 "d%02" PRId64 "h", ms / 86400000,
		    (ms / 3600000) % 24);
}

static const struct {
	int		 num;
	const char	*name;
} signals[] = {
	{ SIGHUP, "SIGHUP" }, { SIGINT, "SIGINT" }, { SIGQUIT, "SIGQUIT" },
	{ SIGILL, "SIGILL" }, { SIGTRAP, "SIGTRAP" }, { SIGABRT, "SIGABRT" },
	{ SIGBUS, "SIGBUS" }, { SIGFPE, "SIGFPE" }, { SIGKILL, "SIGKILL" },
	{ SIGUSR1, "SIGUSR1" }, { SIGSEGV, "SIGSEGV" }, { SIGUSR2, "SIGUSR2" },
	{ SIGPIPE, "SIGPIPE" }, { SIGALRM, "SIGALRM" }, { SIGTERM, "SIGTERM" },
	{ SIGCHLD, "SIGCHLD" }, { SIGCONT, "SIGCONT" }, { SIGSTOP, "SIGSTOP" },
	{ SIGTSTP, "SIGTSTP" }, { SIGTTIN, "SIGTTIN" }, { SIGTTOU, "SIGTTOU" },
	{ SIGURG, "SIGURG" }, { SIGXCPU, "SIGXCPU" }, { SIGXFSZ, "SIGXFSZ" },
	{ SIGVTALRM, "SIGVTALRM" }, { SIGPROF, "SIGPROF" },
	{ SIGWINCH, "SIGWINCH" }, { SIGIO, "SIGIO" }, { SIGPWR, "SIGPWR" },
	{ SIGSYS, "SIGSYS" },
};

const char *
signal_name(int sig)
{
	static char	buf[16];
	size_t		i;

	for (i = 0; i < sizeof signals / sizeof signals[0]; i++) {
		if (signals[i].num == sig)
			return (signals[i].name);
	}
	snprintf(buf, sizeof buf, "SIG%d", sig);
	return (buf);
}

long long
parse_whole(const char *s, long long min, long long max, const char **errstr)
{
	const char	*digits = *s == '-' ? s + 1 : s;

	if (*digits < '0' || *digits > '9') {
		*errstr = "invalid";
		return (0);
	}
	return (strtonum(s, min, max, errstr));
}

int
signal_number(const char *name)
{
	const char	*errstr;
	size_t		 i;
	int		 n;

	if (strncmp(name, "SIG", 3) == 0)
		name += 3;
	/* "SIG40": the form signal_name gives numbers it has no name for. */
	if (isdigit((unsigned char)*name)) {
		n = (int)parse_whole(name, 1, 64, &errstr);
		return (errstr == NULL ? n : -1);
	}
	for (i = 0; i < sizeof signals / sizeof signals[0]; i++) {
		if (strcmp(signals[i].name + 3, name) == 0)
			return (signals[i].num);
	}
	return (-1);
}

int64_t
wall_ms(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return ((int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

int
cmp_int64(const void *a, const void *b)
{
	int64_t	x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x < y ? -1 : x > y);
}

int64_t
mono_ms(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

void
strv_free(char **v)
{
	size_t	i;

	if (v == NULL)
		return;
	for (i = 0; v[i] != NULL; i++)
		free(v[i]);
	free(v);
}

/* Is the effective uid root? Asked once: forkqd never changes it. */
int
running_as_root(void)
{
	static int	root = -1;

	if (root == -1)
		root = geteuid() == 0;
	return (root);
}

/* The effective gid, asked once likewise (task.c asks at each start). */
gid_t
running_egid(void)
{
	static int	asked;
	static gid_t	egid;

	if (!asked) {
		egid = getegid();
		asked = 1;
	}
	return (egid);
}

int
default_state_dir(char *buf, size_t len)
{
	const char	*xdg, *home;
	int		 n;

	if (geteuid() == 0)
		n = snprintf(buf, len, "/var/lib/forkq");
	else if ((xdg = getenv("XDG_STATE_HOME")) != NULL && *xdg == '/')
		n = snprintf(buf, len, "%s/forkq", xdg);
	else if ((home = getenv("HOME")) != NULL && *home == '/')
		n = snprintf(buf, len, "%s/.local/state/forkq", home);
	else
		return (-1);
	return (n < 0 || (size_t)n >= len ? -1 : 0);
}

int
default_socket_path(char *buf, size_t len)
{
	const char	*xdg;
	char		 dir[4096];
	int		 n;

	if (geteuid() == 0)
		n = snprintf(buf, len, "/run/forkq/forkq.sock");
	else if ((xdg = getenv("XDG_RUNTIME_DIR")) != NULL && *xdg == '/')
		n = snprintf(buf, len, "%s/forkq.sock", xdg);
	else {
		if (default_state_dir(dir, sizeof dir) == -1)
			return (-1);
		n = snprintf(buf, len, "%s/forkq.sock", dir);
	}
	return (n < 0 || (size_t)n >= len ? -1 : 0);
}

int
dot_entry(const char *name)
{
	return (strcmp(name, ".") == 0 || strcmp(name, "..") == 0);
}

int
thread_start_quiet(pthread_t *thread, void *(*fn)(void *))
{
	sigset_t	all, old;
	int		err;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	err = pthread_create(thread, NULL, fn, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return (err);
}

void
thread_stop(pthread_t thread, pthread_mutex_t *mutex, pthread_cond_t *cond,
    int *stop)
{
	pthread_mutex_lock(mutex);
	*stop = 1;
	pthread_cond_signal(cond);
	pthread_mutex_unlock(mutex);
	pthread_join(thread, NULL);
}
