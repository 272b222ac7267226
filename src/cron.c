/*
 * cron.c: recurring tasks (spec 10). Each entry, kept in the store, holds a
 * five-field schedule (or @hourly, @daily, @weekly, @monthly; month and
 * weekday names as crontab(5) takes them) in forkqd's local time and the
 * submit fields of its task. One ev_periodic sleeps until the earliest
 * next_run_at (wall-clock time, so a changed clock is followed); a firing
 * submits the task with unique key "cron:NAME", so runs of one entry never
 * overlap: a firing that finds the last run still queued or running is
 * skipped and logged as cron.skipped. At start, a firing missed while forkqd
 * was down runs once.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "forkqd.h"

/* Field i of a schedule: minute, hour, day of month, month, day of week. */
static const struct {
	const char	*name;
	int		 min;
	int		 max;
} cron_fields[5] = {
	{ "minute", 0, 59 }, { "hour", 0, 23 }, { "day of month", 1, 31 },
	{ "month", 1, 12 }, { "day of week", 0, 7 },
};

/*
 * Bit 62: the field starts with "*" ("*", "*\/15"), as vixie cron tells
 * its fields apart. An entry whose minute or hour field does is a wildcard
 * entry, which runs in both passes of an hour the clocks repeat (see
 * cron_next); a day of month or of week that does leaves the other to
 * decide the day alone (cron_day_ok).
 */
#define CRON_WILD	((uint64_t)1 << 62)
#define CRON_FLAGS	CRON_WILD
/* Search at most this far for the next firing (Feb 30 never comes). */
#define CRON_HORIZON_DAYS	(366 * 5)
/* A cron entry's stored request: many of them fit in one cron_list. */
#define CRON_REQUEST_MAX	(64 * 1024)

static ev_periodic	cron_timer;

/*
 * One value of field i at s: digits, or in the month and day-of-week fields
 * a name's first three letters in any case ("jan", "MON"), as crontab(5)
 * takes them. *end is left after it. -1 when s holds neither.
 */
static int
parse_value(const char *s, int i, long *v, char **end)
{
	static const char *const names[2][12] = {
		{ "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug",
		  "sep", "oct", "nov", "dec" },
		{ "sun", "mon", "tue", "wed", "thu", "fri", "sat" },
	};
	int	k;

	if (isdigit((unsigned char)*s)) {
		*v = strtol(s, end, 10);	/* LONG_MAX is out of range */
		return (0);
	}
	if (i < 3)
		return (-1);
	for (k = 0; k < 12 && names[i - 3][k] != NULL; k++) {
		if (strncasecmp(s, names[i - 3][k], 3) == 0 &&
		    !isalpha((unsigned char)s[3])) {
			*v = cron_fields[i].min + k;
			*end = (char *)s + 3;
			return (0);
		}
	}
	return (-1);
}

static int
parse_field(const char *s, int i, int strict, uint64_t *mask, char **cause)
{
	char		*copy, *item, *save = NULL, *slash, *dash, *end;
	long		 lo, hi, step, v;

	*mask = *s == '*' ? CRON_WILD : 0;
	/*
	 * strtok_r would pass over the empty item of "1,,2" or "1,". Entries
	 * stored before they were refused still parse (cron_parse_stored).
	 */
	if (strict && (*s == ',' || (*s != '\0' && s[strlen(s) - 1] == ',') ||
	    strstr(s, ",,") != NULL))
		goto bad_nofree;
	copy = xstrdup(s);
	for (item = strtok_r(copy, ",", &save); item != NULL;
	    item = strtok_r(NULL, ",", &save)) {
		step = 1;
		if ((slash = strchr(item, '/')) != NULL) {
			*slash++ = '\0';
			errno = 0;
			/* Digits only: strtol would also take "+5", " 5". */
			if (!isdigit((unsigned char)*slash))
				goto bad;
			step = strtol(slash, &end, 10);
			if (*slash == '\0' || *end != '\0' || step < 1 ||
			    errno == ERANGE)
				goto bad;
		}
		if (strcmp(item, "*") == 0) {
			lo = cron_fields[i].min;
			hi = cron_fields[i].max;
		} else {
			if (parse_value(item, i, &lo, &end) == -1)
				goto bad;
			hi = lo;
			if ((dash = end, *dash == '-')) {
				if (parse_value(dash + 1, i, &hi, &end) == -1)
					goto bad;
				/* "sat-sun", "fri-sun": Sunday as 7 ends
				 * a range of names. */
				if (i == 4 && hi == 0 && lo > 0 &&
				    isalpha((unsigned char)dash[1]))
					hi = 7;
			} else if (slash != NULL)
				hi = cron_fields[i].max;	/* "5/15" = 5-max/15 */
			if (*end != '\0')
				goto bad;
		}
		if (lo < cron_fields[i].min || hi > cron_fields[i].max || lo > hi)
			goto bad;
		/* A step past hi leaves lo alone; v + step could overflow. */
		for (v = lo;; v += step) {
			*mask |= (uint64_t)1 << (i == 4 && v == 7 ? 0 : v);
			if (hi - v < step)
				break;
		}
	}
	free(copy);
	if ((*mask & ~CRON_FLAGS) == 0)
		goto bad_nofree;
	return (0);
bad:
	free(copy);
bad_nofree:
	xasprintf(cause, "schedule: bad %s field \"%s\" (%d-%d%s, *, lists, "
	    "ranges, /steps)", cron_fields[i].name, s, cron_fields[i].min,
	    cron_fields[i].max, i == 3 ? " or jan-dec" : i == 4 ?
	    " or sun-sat" : "");
	return (-1);
}

static int	cron_parse_as(const char *, int, uint64_t[5], char **);

/* Parses a schedule into five masks; -1 with *cause naming the field. */
int
cron_parse(const char *sched, uint64_t masks[5], char **cause)
{
	return (cron_parse_as(sched, 1, masks, cause));
}

/* As cron_parse, for a stored entry's schedule: also as it was once taken. */
int
cron_parse_stored(const char *sched, uint64_t masks[5], char **cause)
{
	return (cron_parse_as(sched, 0, masks, cause));
}

static int
cron_parse_as(const char *sched, int strict, uint64_t masks[5], char **cause)
{
	static const struct {
		const char	*name;
		const char	*expansion;
	} macros[] = {
		{ "@hourly", "0 * * * *" }, { "@daily", "0 0 * * *" },
		{ "@midnight", "0 0 * * *" }, { "@weekly", "0 0 * * 0" },
		{ "@monthly", "0 0 1 * *" }, { "@yearly", "0 0 1 1 *" },
		{ "@annually", "0 0 1 1 *" },
	};
	char	*copy, *f[6], *save = NULL;
	size_t	 i;
	int	 n = 0;

	for (i = 0; i < sizeof macros / sizeof macros[0]; i++) {
		if (strcmp(sched, macros[i].name) == 0) {
			sched = macros[i].expansion;
			break;
		}
	}
	copy = xstrdup(sched);
	for (f[n] = strtok_r(copy, " \t", &save); f[n] != NULL && n < 5;
	    f[n] = strtok_r(NULL, " \t", &save))
		n++;
	if (n != 5 || f[5] != NULL) {
		free(copy);
		xasprintf(cause, "schedule: \"%s\" needs five fields (minute "
		    "hour day-of-month month day-of-week) or @hourly, @daily, "
		    "@weekly, @monthly", sched);
		return (-1);
	}
	for (i = 0; i < 5; i++) {
		if (parse_field(f[i], (int)i, strict, &masks[i], cause) == -1) {
			free(copy);
			return (-1);
		}
	}
	free(copy);
	return (0);
}

static int
has(uint64_t mask, int v)
{
	return ((mask & ((uint64_t)1 << v)) != 0);
}

/* Does the schedule's day match the date of tm? */
static int
cron_day_ok(const uint64_t masks[5], const struct tm *tm)
{
	int	dom_ok = has(masks[2], tm->tm_mday);
	int	dow_ok = has(masks[4], tm->tm_wday);

	/*
	 * Both restricted: either matches. As in vixie cron and cronie, a
	 * field starting with "*" is not restricted ("*\/10" with a weekday:
	 * those days that are also that weekday).
	 */
	if (!(masks[2] & CRON_WILD) && !(masks[4] & CRON_WILD))
		return (dom_ok || dow_ok);
	return (dom_ok && dow_ok);
}

/* Do tm's fields, minutes and up, read as w's? */
static int
cron_same_minute(const struct tm *w, const struct tm *tm)
{
	return (w->tm_year == tm->tm_year && w->tm_mon == tm->tm_mon &&
	    w->tm_mday == tm->tm_mday && w->tm_hour == tm->tm_hour &&
	    w->tm_min == tm->tm_min);
}

/*
 * The instant the offset changes in (lo, hi], lo's being off_lo; 0 when
 * localtime fails.
 */
static time_t
cron_change_in(time_t lo, time_t hi, long off_lo)
{
	struct tm	tm;
	time_t		mid;

	while (hi - lo > 1) {
		mid = lo + (hi - lo) / 2;
		if (localtime_r(&mid, &tm) == NULL)
			return (0);
		if (tm.tm_gmtoff == off_lo)
			lo = mid;
		else
			hi = mid;
	}
	return (hi);
}

/*
 * The start of the first local minute after s. Today's zones are whole
 * minutes off UTC, so that is UTC's; an offset with seconds (a local mean
 * time, a TZ string such as "XST-0:00:16") starts the local minute within
 * UTC's, and a walk from UTC's started before the minute it was in: each
 * firing found itself due again, hundreds of runs a second.
 */
static time_t
cron_minute_after(time_t s)
{
	struct tm	tm;

	if (localtime_r(&s, &tm) == NULL)
		return (s / 60 * 60 + 60);
	return (s - tm.tm_sec + 60);
}

/* Does tm match the month, day, hour and minute fields of masks? */
static int
cron_fields_match(const uint64_t masks[5], const struct tm *tm)
{
	return (has(masks[3], tm->tm_mon + 1) && cron_day_ok(masks, tm) &&
	    has(masks[1], tm->tm_hour) && has(masks[0], tm->tm_min));
}

/*
 * Is *want (fields as the walk left them; *tm and *t what mktime made of
 * them) a time the clocks skip? Such a time has two readings, at the
 * offsets before and after the change, neither of which reads back as
 * it, and mktime answers either: the later one where DST is in summer,
 * the earlier one where it is in winter (Europe/Dublin). If so: *t
 * becomes the later reading (02:30 for 01:30 when the clocks go from 01:00
 * to 02:00; the next day's 00:30 for 23:30 where they go from 23:00 to
 * 00:00, America/Nuuk), *tm want's fields brought into range (24:00 is
 * the next day's 00:00), *change the instant the clocks changed, and it
 * returns 1.
 */
static int
cron_skipped(const struct tm *want, struct tm *tm, time_t *t, time_t *change)
{
	struct tm	w = *want, late_tm, early_tm;
	time_t		other, early, late;

	/* timegm: the fields brought into range with no zone's rules. */
	w.tm_isdst = 0;
	if ((other = timegm(&w)) == (time_t)-1)
		return (0);
	other -= tm->tm_gmtoff;
	if (other == *t)
		return (0);	/* one reading: a time that exists */
	early = other < *t ? other : *t;
	late = other < *t ? *t : other;
	if (localtime_r(&late, &late_tm) == NULL ||
	    localtime_r(&early, &early_tm) == NULL ||
	    cron_same_minute(&w, &late_tm) || cron_same_minute(&w, &early_tm))
		return (0);
	/* The change lies between the readings, where the offset moves. */
	if ((*change = cron_change_in(early, late, early_tm.tm_gmtoff)) == 0)
		return (0);
	*t = late;
	*tm = w;
	return (1);
}

/* The most the clocks go forward at once (30 minutes or an hour today). */
#define CRON_GAP_MAX	(3 * 3600)

/*
 * When the clocks went forward less than their jump before s, the times
 * they skipped still fire, at their later readings, in [change, change +
 * jump): the first of them that matches, at or after s, in ms; else
 * UNSET. The field walk from s sees only the fields after the change:
 * without this, a start in that window (a restart, a new entry, or a
 * firing of an earlier skipped time) left the skipped times still to
 * fire that day out.
 */
static int64_t
cron_next_skipped(const uint64_t masks[5], time_t s)
{
	struct tm	now, before, f;
	time_t		lo = s - CRON_GAP_MAX, change, t, naive;
	long		jump;

	if (localtime_r(&s, &now) == NULL || localtime_r(&lo, &before) == NULL ||
	    (jump = now.tm_gmtoff - before.tm_gmtoff) <= 0 ||
	    (change = cron_change_in(lo, s, before.tm_gmtoff)) == 0)
		return (UNSET);		/* no change forward since lo */
	for (t = s; t < change + jump; t += 60) {
		/* The skipped fields whose later reading is t. */
		naive = t + before.tm_gmtoff;
		if (gmtime_r(&naive, &f) == NULL)
			return (UNSET);
		if (cron_fields_match(masks, &f))
			return ((int64_t)t * 1000);
	}
	return (UNSET);
}

/*
 * The first local time after after_ms whose fields match, walking the
 * fields. The walk only goes forward in real time. A time the clocks skip
 * has its fields matched as wanted and fires as late as the clocks moved:
 * 02:30 on the night the clocks go from 02:00 to 03:00 fires at 03:30, as
 * systemd's timers do, where skipping it would leave a daily entry out
 * for a day (cron_skipped). An earlier answer of mktime that is not a
 * skipped time (the first pass of a repeated hour) has the walk go on
 * from the next real minute instead of stepping the same hour for ever.
 */
static int64_t
cron_next_by_fields(const uint64_t masks[5], int64_t after_ms)
{
	struct tm	tm, want;
	time_t		t = cron_minute_after((time_t)(after_ms / 1000)), limit;
	time_t		prev = t - 60, change;
	int64_t		skipped;

	limit = t + (time_t)CRON_HORIZON_DAYS * 86400;
	if ((skipped = cron_next_skipped(masks, t)) != UNSET)
		limit = (time_t)(skipped / 1000) + 1;	/* only earlier ones */
	if (localtime_r(&t, &tm) == NULL)
		return (UNSET);
	tm.tm_sec = 0;
	for (;;) {
		want = tm;
		if ((t = mktime(&tm)) == (time_t)-1 || t >= limit)
			break;
		if (cron_skipped(&want, &tm, &t, &change)) {
			/*
			 * Every real time from the change on is still to be
			 * walked, however far the skipped times' later
			 * readings reach (with a 30-minute change, into times
			 * that exist: Australia/Lord_Howe).
			 */
			prev = change - 60;
			goto check;
		}
		if (t <= prev) {
			t = prev + 60;
			if (localtime_r(&t, &tm) == NULL)
				return (UNSET);
		}
		prev = t;
check:
		if (!has(masks[3], tm.tm_mon + 1)) {
			tm.tm_mon++;
			tm.tm_mday = 1;
			tm.tm_hour = tm.tm_min = 0;
			tm.tm_isdst = -1;
			continue;
		}
		if (!cron_day_ok(masks, &tm)) {
			tm.tm_mday++;
			tm.tm_hour = tm.tm_min = 0;
			tm.tm_isdst = -1;
			continue;
		}
		if (!has(masks[1], tm.tm_hour)) {
			tm.tm_hour++;
			tm.tm_min = 0;
			tm.tm_isdst = -1;
			continue;
		}
		if (!has(masks[0], tm.tm_min)) {
			tm.tm_min++;
			tm.tm_isdst = -1;
			continue;
		}
		if (skipped != UNSET && skipped < (int64_t)t * 1000)
			break;
		return ((int64_t)t * 1000);
	}
	return (skipped);	/* UNSET when none */
}

/*
 * How far past a firing the second pass of a repeated hour can lie: the
 * clocks go back by an hour, by two in a few zones' history.
 */
#define CRON_REPEAT_SPAN	(3 * 3600)

/* Is minute t the second pass of a local time the clocks repeated? */
static int
cron_second_pass(time_t t)
{
	struct tm	now, before, first;
	time_t		b = t - CRON_REPEAT_SPAN;

	if (localtime_r(&t, &now) == NULL || localtime_r(&b, &before) == NULL ||
	    before.tm_gmtoff <= now.tm_gmtoff)
		return (0);	/* the clocks did not go back since */
	b = t - (before.tm_gmtoff - now.tm_gmtoff);
	if (localtime_r(&b, &first) == NULL)
		return (0);
	return (first.tm_min == now.tm_min && first.tm_hour == now.tm_hour &&
	    first.tm_mday == now.tm_mday && first.tm_mon == now.tm_mon &&
	    first.tm_year == now.tm_year);
}

/*
 * The first minute strictly after after_ms (ms epoch) that the schedule
 * matches, in local time; UNSET when none comes within CRON_HORIZON_DAYS.
 *
 * When the clocks go back, the hour before the change comes twice. A
 * fixed time in it (30 1 * * *) fires once, in the first pass: a second
 * pass found by the walk (which starts inside it after a firing late in
 * the first) is passed over. A wildcard entry (its minute or hour field
 * starts with "*") fires in both passes, as in vixie cron: "*\/30 * * * *"
 * must not go quiet for an hour. The walk goes from the first pass
 * straight on past the second, so for a wildcard entry the minutes up to
 * its result (within CRON_REPEAT_SPAN, past which no second pass can be)
 * are also tried one by one, in real time.
 */
int64_t
cron_next(const uint64_t masks[5], int64_t after_ms)
{
	struct tm	tm;
	int64_t		next = cron_next_by_fields(masks, after_ms);
	time_t		t, end;

	if (!(masks[0] & CRON_WILD) && !(masks[1] & CRON_WILD)) {
		while (next != UNSET && cron_second_pass((time_t)(next / 1000)))
			next = cron_next_by_fields(masks, next);
		return (next);
	}
	t = cron_minute_after((time_t)(after_ms / 1000));
	end = t + CRON_REPEAT_SPAN;
	if (next != UNSET && next / 1000 < end)
		end = (time_t)(next / 1000);
	for (; t < end; t += 60) {
		if (localtime_r(&t, &tm) != NULL && cron_fields_match(masks, &tm))
			return ((int64_t)t * 1000);
	}
	return (next);
}

static json_t *
cron_json(const struct cron_rec *c)
{
	json_t	*argv = json_loads(c->argv_json, 0, NULL);

	return (json_pack("{s:s, s:I, s:s, s:o, s:o, s:o, s:o}",
	    "name", c->name, "uid", (json_int_t)c->uid,
	    "schedule", c->schedule,
	    "argv", argv != NULL ? argv : json_null(),
	    "next_run_at", proto_time(c->next_run_at),
	    "last_run_at", proto_time(c->last_run_at),
	    "last_task", c->last_task == UNSET ? json_null() :
	    json_integer(c->last_task)));
}

/* Submits c's task now and moves c to its next firing. */
static void
cron_fire(struct cron_rec *c, int64_t now)
{
	struct task_spec	 spec;
	json_t			*req;
	uint64_t		 masks[5];
	const char		*code;
	char			*cause = NULL;
	int64_t			 id;
	int			 duplicate;

	/* Cleared below also when the request is not JSON and never parsed. */
	memset(&spec, 0, sizeof spec);
	/* A run_at, which cron_add now refuses, would hold every firing of
	 * an entry stored before until that one time. */
	if ((req = json_loads(c->request, 0, NULL)) != NULL)
		json_object_del(req, "run_at");
	if (req == NULL || proto_parse_submit(req, &spec, &cause) == -1) {
		event_emit_as(c->uid, EV_LEVEL_ERROR, "cron.failed", 0,
		    json_pack("{s:s, s:s}", "name", c->name, "error",
		    cause != NULL ?
		    cause : "stored request is not JSON"));
		free(cause);
		cause = NULL;
		task_spec_clear(&spec);
	} else {
		free(spec.unique);
		xasprintf(&spec.unique, "cron:%s", c->name);
		/*
		 * Named after the entry, not its program: list and stats
		 * tell one entry's runs from another's (sh -c, say), and
		 * cron_add's "name" is the submit field of that name too.
		 */
		free(spec.name);
		spec.name = xstrdup(c->name);
		/* A debounce moved the queued run on at every firing, so it
		 * never ran; cron_op_add refuses it, entries stored before
		 * lose it here. */
		spec.debounce_ms = 0;
		spec.uid = c->uid;
		spec.gid = c->gid;
		/* Root as conn_is_root has it: cron_add let such an entry
		 * wait on any task (cron_check_after). */
		if (ops_submit_spec(&spec, c->uid == 0 || c->uid == geteuid(),
		    &id, &duplicate, NULL, &code, &cause) == -1) {
			event_emit_as(c->uid, EV_LEVEL_ERROR, "cron.failed",
			    0, json_pack("{s:s, s:s}", "name", c->name,
			    "error", cause));
			free(cause);
		} else if (duplicate)
			event_emit(EV_LEVEL_WARN, "cron.skipped", id, json_pack(
			    "{s:s, s:s}", "name", c->name, "reason",
			    "the previous run is still queued or running"));
		else {
			event_emit(EV_LEVEL_INFO, "cron.fired", id, json_pack(
			    "{s:s}", "name", c->name));
			c->last_task = id;
		}
		task_spec_clear(&spec);
	}
	json_decref(req);
	c->last_run_at = now;
	/*
	 * cron_add parsed the schedule; one that no longer parses (a damaged
	 * or hand-edited store) would stay due and fire at once, for ever:
	 * the entry stops, and says why.
	 */
	if (cron_parse_stored(c->schedule, masks, &cause) == 0)
		c->next_run_at = cron_next(masks, now);
	else {
		c->next_run_at = UNSET;
		event_emit_as(c->uid, EV_LEVEL_ERROR, "cron.failed", 0,
		    json_pack("{s:s, s:s+}", "name", c->name, "error",
		    "stored schedule: ", cause));
		free(cause);
	}
	store_cron_put(c);
}

/*
 * After a failed read of the entries, cron_run tries again after
 * CRON_RETRY_MS, twice as long after each failure that follows, up to
 * CRON_RETRY_MAX_MS: a damaged table must not fill the log.
 */
#define CRON_RETRY_MS		5000
#define CRON_RETRY_MAX_MS	(10 * 60 * 1000)
static int64_t		 cron_retry_ms = CRON_RETRY_MS;

/* Fires every entry that is due and sleeps until the next. */
static void
cron_run(int from_timer)
{
	struct cron_rec	**cs;
	size_t		  n, i;
	int64_t		  now = wall_ms(), next = UNSET;
	int		  rc;

	/*
	 * Without the entries, nothing would wake cron again. Only the
	 * timer's own tries back off: a cron op meanwhile must not push the
	 * next firing further away.
	 */
	/*
	 * What is due, then when the next is, by the index: every user's
	 * entries, read whole at each firing and cron op, took seconds.
	 * A firing writes its entry's next run; one the store did not take
	 * leaves the entry due, and is tried again as after a failed read,
	 * not at once.
	 */
	rc = store_cron_due(now, &cs, &n);
	for (i = 0; i < n; i++) {
		cron_fire(cs[i], now);
		cron_rec_free(cs[i]);
	}
	free(cs);
	if (rc == -1 || store_cron_next_run(&next) == -1 ||
	    (next != UNSET && next <= now)) {
		next = now + cron_retry_ms;
		if (from_timer)
			cron_retry_ms = cron_retry_ms * 2 > CRON_RETRY_MAX_MS ?
			    CRON_RETRY_MAX_MS : cron_retry_ms * 2;
	} else
		cron_retry_ms = CRON_RETRY_MS;
	ev_periodic_stop(loop, &cron_timer);
	if (next != UNSET) {
		ev_periodic_set(&cron_timer, (double)next / 1000.0, 0., NULL);
		ev_periodic_start(loop, &cron_timer);
	}
}

static void
cron_timer_cb(struct ev_loop *l, ev_periodic *w, int revents)
{
	if (!daemon_shutting_down())
		cron_run(1);
}

/*
 * The store takes writes again. A firing whose commit it refused was
 * rolled back with its entry's next run, which the store still has as
 * due; the timer, set from the firing, slept on to the next one, and the
 * run was lost. It runs now.
 */
void
cron_store_recovered(void)
{
	if (!daemon_shutting_down())
		cron_run(0);
}

void
cron_init(void)
{
	ev_periodic_init(&cron_timer, cron_timer_cb, 0., 0., NULL);
	cron_run(0);
}

/* The entries could not be read: not "none", an error. */
static void
send_unreadable(struct conn *c)
{
	conn_send(c, proto_error("unavailable", "cannot read the cron "
	    "entries"));
}

/*
 * The tasks an entry's runs wait for (after) are there and the client's,
 * or root's to name; else the answer is not_found (unavailable when the
 * store could not be read) and -1.
 */
static int
cron_check_after(struct conn *c, const struct task_spec *spec)
{
	struct task_rec	*dep;
	const char	*code;
	char		*cause = NULL;
	size_t		 i;

	for (i = 0; i < spec->nafter; i++) {
		if ((dep = ops_after_task(spec->after[i], conn_uid(c),
		    conn_is_root(c), &code, &cause)) == NULL) {
			conn_send(c, proto_error(code, "%s", cause));
			free(cause);
			return (-1);
		}
		task_rec_free(dep);
	}
	return (0);
}

void
cron_op_add(struct conn *c, json_t *req)
{
	struct cron_rec		 cr, *old;
	struct task_spec	 spec;
	const char		*name = NULL, *sched = NULL;
	uint64_t		 masks[5];
	char			*cause = NULL;
	json_t			*fields;
	int64_t			 next;
	int			 replaced;

	memset(&spec, 0, sizeof spec);
	if (proto_get_string(req, "name", &name, &cause) == -1 ||
	    proto_get_string(req, "schedule", &sched, &cause) == -1) {
		conn_send(c, proto_error("bad_request", "%s", cause));
		free(cause);
		return;
	}
	if (name == NULL || *name == '\0' || strlen(name) > 200) {
		conn_send(c, proto_error("bad_request", "name: required, 1 to "
		    "200 bytes"));
		return;
	}
	if (sched == NULL) {
		conn_send(c, proto_error("bad_request", "schedule: required"));
		return;
	}
	if (cron_parse(sched, masks, &cause) == -1 ||
	    proto_parse_submit(req, &spec, &cause) == -1) {
		conn_send(c, proto_error("bad_request", "%s", cause));
		free(cause);
		task_spec_clear(&spec);
		return;
	}
	if (spec.debounce_ms > 0) {
		conn_send(c, proto_error("bad_request", "debounce_ms: a firing "
		    "that finds the previous run queued or running is "
		    "skipped, not debounced"));
		task_spec_clear(&spec);
		return;
	}
	/* Taken, a key was dropped: each firing has cron:NAME (spec 10). */
	if (spec.unique != NULL) {
		conn_send(c, proto_error("bad_request", "unique: every firing "
		    "has the unique key cron:NAME"));
		task_spec_clear(&spec);
		return;
	}
	/*
	 * A run_at holds the firings until that one time, and each firing
	 * skipped meanwhile (the first run still queued): not a schedule.
	 */
	if (spec.run_at != UNSET) {
		conn_send(c, proto_error("bad_request", "run_at: a cron "
		    "entry's runs start at its schedule (delay_ms puts each "
		    "one off)"));
		task_spec_clear(&spec);
		return;
	}
	/* As a submit's (spec 7): at firing, each would fail for good. */
	if (cron_check_after(c, &spec) == -1) {
		task_spec_clear(&spec);
		return;
	}
	/* "0 0 31 2 *" parses, but an entry that never fires is a mistake. */
	if ((next = cron_next(masks, wall_ms())) == UNSET) {
		conn_send(c, proto_error("bad_request", "schedule: \"%s\" "
		    "matches no date in the next %d years", sched,
		    CRON_HORIZON_DAYS / 366));
		task_spec_clear(&spec);
		return;
	}
	/*
	 * Names are per user: this replaces only the client's own entry,
	 * and says so ("replaced"), not to overwrite one unawares.
	 */
	if (store_cron_get(conn_uid(c), name, &old) == -1) {
		task_spec_clear(&spec);
		send_unreadable(c);
		return;
	}
	replaced = old != NULL;
	cron_rec_free(old);
	memset(&cr, 0, sizeof cr);
	cr.name = (char *)name;
	cr.schedule = (char *)sched;
	fields = json_deep_copy(req);
	json_object_del(fields, "op");
	json_object_del(fields, "name");
	json_object_del(fields, "schedule");
	cr.request = json_dumps(fields, JSON_COMPACT);
	json_decref(fields);
	/* Entries are listed together, in one answer line. */
	if (cr.request == NULL || strlen(cr.request) > CRON_REQUEST_MAX) {
		conn_send(c, proto_error("bad_request", "argv, env and the "
		    "other fields of a cron entry: at most %d bytes together",
		    CRON_REQUEST_MAX));
		free(cr.request);
		task_spec_clear(&spec);
		return;
	}
	cr.argv_json = spec.argv_json;
	cr.next_run_at = next;
	cr.last_run_at = cr.last_task = UNSET;
	cr.uid = conn_uid(c);
	cr.gid = conn_gid(c);
	if (store_cron_put(&cr) == -1) {
		conn_send(c, proto_error("unavailable", "cannot store the "
		    "entry"));
	} else {
		event_emit_unkept(cr.uid, EV_LEVEL_INFO, "cron.added",
		    json_pack("{s:s, s:s}", "name", name, "schedule", sched));
		conn_send_durable(c, json_pack("{s:b, s:o, s:b}", "ok", 1,
		    "cron", cron_json(&cr), "replaced", replaced), "the "
		    "database could not commit this change");
		cron_run(0);
	}
	free(cr.request);
	task_spec_clear(&spec);
}

void
cron_op_list(struct conn *c, json_t *req)
{
	struct cron_rec	**cs;
	json_t		 *arr = json_array();
	size_t		  n, i, size = 0;
	int		  more = 0;

	/* A user's own alone: not every user's, read whole. */
	if ((conn_is_root(c) ? store_cron_list(&cs, &n) :
	    store_cron_of(conn_uid(c), &cs, &n)) == -1) {
		json_decref(arr);
		send_unreadable(c);
		return;
	}
	for (i = 0; i < n; i++) {
		/* What fits in one answer line; "more" if not all did. */
		if (!more &&
		    proto_append_within(arr, cron_json(cs[i]), &size) == -1)
			more = 1;
		cron_rec_free(cs[i]);
	}
	free(cs);
	conn_send(c, json_pack("{s:b, s:o, s:b}", "ok", 1, "crons", arr,
	    "more", more));
}

/*
 * Whose entry name a cron_remove without uid means: the client's own; for
 * root, its own if it has one, else the one user's who has an entry of
 * that name. -1 when answered (none, several, or unreadable).
 */
static int64_t
cron_owner_of(struct conn *c, const char *name)
{
	int64_t		 *uids, own = conn_uid(c), other = -1;
	size_t		  n, i, others = 0;
	int		  has_own = 0;
	char		 *list = NULL, *s;

	if (!conn_is_root(c))
		return (own);
	if (store_cron_owners(name, &uids, &n) == -1) {
		send_unreadable(c);
		return (-1);
	}
	for (i = 0; i < n; i++) {
		if (uids[i] == own)
			has_own = 1;
		else {
			others++;
			other = uids[i];
			xasprintf(&s, "%s%s%lld", list != NULL ? list : "",
			    list != NULL ? ", " : "", (long long)other);
			free(list);
			list = s;
		}
	}
	free(uids);
	if (!has_own && others > 1) {
		conn_send(c, proto_error("conflict", "name: users %s each "
		    "have an entry \"%s\"; name the owner (uid)", list, name));
		free(list);
		return (-1);
	}
	free(list);
	return (has_own || others == 0 ? own : other);
}

void
cron_op_remove(struct conn *c, json_t *req)
{
	struct cron_rec	*cr;
	const char	*name = NULL;
	char		*cause = NULL;
	int64_t		 owner = 0;
	int		 has_uid;

	if (proto_get_string(req, "name", &name, &cause) == -1 ||
	    name == NULL) {
		conn_send(c, proto_error("bad_request", "%s", cause != NULL ?
		    cause : "name: required"));
		free(cause);
		return;
	}
	if ((has_uid = proto_get_int(req, "uid", 0, UINT32_MAX, &owner,
	    &cause)) == -1) {
		conn_send(c, proto_error("bad_request", "%s", cause));
		free(cause);
		return;
	}
	if (has_uid && owner != (int64_t)conn_uid(c) && !conn_is_root(c)) {
		conn_send(c, proto_error("forbidden", "uid: only root may "
		    "remove another user's entry"));
		return;
	}
	if (!has_uid && (owner = cron_owner_of(c, name)) < 0)
		return;		/* answered */
	if (store_cron_get((uid_t)owner, name, &cr) == -1) {
		send_unreadable(c);
		return;
	}
	if (cr == NULL) {
		conn_send(c, proto_error("not_found", "name: no cron entry "
		    "\"%s\"", name));
		return;
	}
	cron_rec_free(cr);
	if (store_cron_remove((uid_t)owner, name) == -1) {
		conn_send(c, proto_error("unavailable", "cannot remove the "
		    "entry"));
		return;
	}
	event_emit_unkept(owner, EV_LEVEL_INFO, "cron.removed",
	    json_pack("{s:s}", "name", name));
	conn_send_durable(c, json_pack("{s:b}", "ok", 1), "the database could "
	    "not commit this change");
	cron_run(0);
}
