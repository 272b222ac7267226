/*
 * check_cron.c: unit tests of cron.c's schedule parser (spec 10): the masks
 * cron_parse makes of fields, lists, ranges and steps, the schedules it
 * refuses, and cron_next in UTC and across New York's clock changes.
 * Check's per-test timeout turns a parser that loops into a failure.
 */
#include "config.h"

#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "forkqd.h"
#include "check_run.h"

/* 2026-11-22T09:30:00Z in ms since the epoch, a Sunday. */
#define T_2026_11_22_0930	1795339800000LL

#define BIT(v)	((uint64_t)1 << (v))
/* The mask bits that are values, without the "*" marker (bit 62). */
#define VALUES(m)	((m) & ~BIT(62))

static void
cron_setup(void)
{
	setenv("TZ", "UTC", 1);
	tzset();
}

/* Asserts that sched parses; its masks land in masks. */
static void
parse_ok(const char *sched, uint64_t masks[5])
{
	char	*cause = NULL;

	ck_assert_msg(cron_parse(sched, masks, &cause) == 0,
	    "\"%s\" refused: %s", sched, cause != NULL ? cause : "?");
	ck_assert_ptr_null(cause);
}

/* Asserts that sched is refused with a cause naming the schedule. */
static void
assert_refused(const char *sched)
{
	uint64_t	 masks[5];
	char		*cause = NULL;

	ck_assert_msg(cron_parse(sched, masks, &cause) == -1,
	    "\"%s\" accepted", sched);
	ck_assert_ptr_nonnull(cause);
	ck_assert_msg(strncmp(cause, "schedule:", 9) == 0, "cause \"%s\"",
	    cause);
	free(cause);
}

START_TEST(test_parse_fields)
{
	uint64_t	masks[5];

	parse_ok("5/15 0-4/2 1,15 * 7", masks);
	ck_assert_uint_eq(VALUES(masks[0]), BIT(5) | BIT(20) | BIT(35) |
	    BIT(50));
	ck_assert_uint_eq(VALUES(masks[1]), BIT(0) | BIT(2) | BIT(4));
	ck_assert_uint_eq(VALUES(masks[2]), BIT(1) | BIT(15));
	ck_assert(masks[3] & BIT(62));
	ck_assert_uint_eq(VALUES(masks[4]), BIT(0));	/* 7 is Sunday, 0 */
}
END_TEST

/* Month and weekday names, as crontab(5) takes them: any case, in ranges. */
START_TEST(test_parse_names)
{
	uint64_t	masks[5], numbers[5];

	parse_ok("0 9 * jan,JUN-aug mon-fri", masks);
	parse_ok("0 9 * 1,6-8 1-5", numbers);
	ck_assert_uint_eq(masks[3], numbers[3]);
	ck_assert_uint_eq(masks[4], numbers[4]);
	parse_ok("0 0 * Dec Sun", masks);
	ck_assert_uint_eq(VALUES(masks[3]), BIT(12));
	ck_assert_uint_eq(VALUES(masks[4]), BIT(0));
	parse_ok("0 0 * feb-nov/3 sat", masks);
	ck_assert_uint_eq(VALUES(masks[3]), BIT(2) | BIT(5) | BIT(8) |
	    BIT(11));
	ck_assert_uint_eq(VALUES(masks[4]), BIT(6));
	/* Sunday ends a range of names as 7: the weekend as written. */
	parse_ok("0 0 * * sat-sun", masks);
	ck_assert_uint_eq(VALUES(masks[4]), BIT(0) | BIT(6));
	parse_ok("0 0 * * fri-SUN", masks);
	ck_assert_uint_eq(VALUES(masks[4]), BIT(0) | BIT(5) | BIT(6));
	parse_ok("0 0 * * sun-sun", masks);
	ck_assert_uint_eq(VALUES(masks[4]), BIT(0));
	assert_refused("0 0 * * 5-0");
	/* Names only where they mean something, and whole. */
	assert_refused("mon * * * *");
	assert_refused("0 jan * * *");
	assert_refused("0 0 sun * *");
	assert_refused("0 0 * * jan");
	assert_refused("0 0 * january *");
	assert_refused("0 0 * * mo");
	assert_refused("0 0 * * fri-mon");
	assert_refused("0 0 * */jan *");
}
END_TEST

START_TEST(test_parse_refused)
{
	assert_refused("* * * *");
	assert_refused("* * * * * *");
	assert_refused("60 * * * *");
	assert_refused("* * 0 * *");
	assert_refused("5-1 * * * *");
	assert_refused("*/0 * * * *");
	assert_refused("*/ * * * *");
	assert_refused("a * * * *");
	assert_refused("*/+5 * * * *");
	assert_refused("*/-5 * * * *");
	/* Empty list items (strtok_r passed over them). */
	assert_refused("1,,2 * * * *");
	assert_refused(",1 * * * *");
	assert_refused("* 1, * * *");
	assert_refused("* * * * ,");
}
END_TEST

/* Entries stored before empty items were refused go on firing. */
START_TEST(test_parse_stored_takes_empty_items)
{
	uint64_t	 masks[5];
	char		*cause = NULL;

	ck_assert_int_eq(cron_parse_stored("0,,30 * * * *", masks, &cause), 0);
	ck_assert_ptr_null(cause);
	ck_assert_uint_eq(VALUES(masks[0]), BIT(0) | BIT(30));
	ck_assert_int_eq(cron_parse_stored("60 * * * *", masks, &cause), -1);
	free(cause);
}
END_TEST

/*
 * A step past the field's range leaves the first value alone. Found by
 * fuzzing: the step went through (int), so a step of 4294967296 was 0 (a
 * loop without end: forkqd hung in cron_add) and one that strtol
 * saturated was -1 (a negative shift, then no end either).
 */
START_TEST(test_parse_huge_step)
{
	uint64_t	masks[5];

	parse_ok("*/60 * * * *", masks);
	ck_assert_uint_eq(VALUES(masks[0]), BIT(0));
	parse_ok("10/4294967296 * * * *", masks);
	ck_assert_uint_eq(VALUES(masks[0]), BIT(10));
	parse_ok("*/2147483648 1-23/9223372036854775807 * * *", masks);
	ck_assert_uint_eq(VALUES(masks[0]), BIT(0));
	ck_assert_uint_eq(VALUES(masks[1]), BIT(1));
	assert_refused("*/99999999999999999999999 * * * *");
}
END_TEST

START_TEST(test_next_utc)
{
	uint64_t	masks[5];

	parse_ok("@daily", masks);
	/* 2026-11-23T00:00:00Z */
	ck_assert_int_eq(cron_next(masks, T_2026_11_22_0930),
	    1795392000000LL);
	parse_ok("*/15 * * * *", masks);
	ck_assert_int_eq(cron_next(masks, T_2026_11_22_0930),
	    T_2026_11_22_0930 + 15 * 60000);
	parse_ok("0 0 31 2 *", masks);
	ck_assert_int_eq(cron_next(masks, T_2026_11_22_0930), UNSET);
	/* Both days restricted: either matches (Friday 2026-11-27). */
	parse_ok("0 0 1 * 5", masks);
	ck_assert_int_eq(cron_next(masks, T_2026_11_22_0930),
	    1795737600000LL);
	/*
	 * A day field starting with "*" is not restricted, as in vixie cron:
	 * days 1, 11, 21, 31 that are Fridays (2026-12-11), where reading
	 * "*\/10" as restricted gave the first Friday.
	 */
	parse_ok("0 0 */10 * 5", masks);
	ck_assert_int_eq(cron_next(masks, T_2026_11_22_0930),
	    1796947200000LL);
	parse_ok("0 0 1 * */2", masks);
	/* Day 1 on a Sunday, Tuesday, Thursday or Saturday: 2026-12-01 Tue. */
	ck_assert_int_eq(cron_next(masks, T_2026_11_22_0930),
	    1796083200000LL);
}
END_TEST

/*
 * An offset with seconds (a local mean time): the local minute starts 16 s
 * into UTC's. The walk began at UTC's minute and stepped back to the
 * local one before it: a firing was due again at once, for ever.
 */
START_TEST(test_next_offset_with_seconds)
{
	uint64_t	masks[5];
	int64_t		after = T_2026_11_22_0930 + 20 * 1000, next;
	time_t		t;
	struct tm	tm;
	int		i;

	setenv("TZ", "XST-0:00:16", 1);
	tzset();
	parse_ok("* * * * *", masks);
	for (i = 0; i < 3; i++) {
		next = cron_next(masks, after);
		ck_assert_msg(next > after, "%lld not after %lld",
		    (long long)next, (long long)after);
		t = (time_t)(next / 1000);
		ck_assert_ptr_nonnull(localtime_r(&t, &tm));
		ck_assert_int_eq(tm.tm_sec, 0);
		ck_assert_int_le(next - after, 60000);
		after = next;
	}
	/* 09:30:00 UTC is 09:30:16 local: 10:00 local is 09:59:44 UTC. */
	parse_ok("0 10 * * *", masks);
	ck_assert_int_eq(cron_next(masks, T_2026_11_22_0930),
	    T_2026_11_22_0930 + (29 * 60 + 44) * 1000);
}
END_TEST

/* New York's rules as a POSIX TZ string: no tzdata needed. */
static void
dst_setup(void)
{
	setenv("TZ", "EST5EDT,M3.2.0,M11.1.0", 1);
	tzset();
}

/* Seconds since the epoch, as ms. */
#define S(t)	((int64_t)(t) * 1000)
/* 2026-11-01, the clocks go back at 06:00Z (02:00 EDT -> 01:00 EST). */
#define NOV1_0000_EDT	1793505600
#define NOV1_0100_EDT	1793509200
#define NOV1_0130_EDT	(NOV1_0100_EDT + 1800)
#define NOV1_0100_EST	1793512800
#define NOV1_0130_EST	(NOV1_0100_EST + 1800)
#define NOV1_0200_EST	(NOV1_0100_EST + 3600)
#define NOV2_0100_EST	1793599200
/* 2026-03-08, the clocks go forward at 07:00Z (02:00 EST -> 03:00 EDT). */
#define MAR8_0000_EST	1772946000
#define MAR8_0130_EST	1772951400
#define MAR8_0300_EDT	1772953200
#define MAR9_0230_EDT	1773037800

/* The firings of sched after start, n of them, one after the other. */
static void
assert_firings(const char *sched, int64_t start, const int64_t *want, int n)
{
	uint64_t	masks[5];
	int64_t		t = start;
	int		i;

	parse_ok(sched, masks);
	for (i = 0; i < n; i++) {
		t = cron_next(masks, t);
		ck_assert_msg(t == want[i], "\"%s\" firing %d: %lld, not %lld",
		    sched, i, (long long)(t / 1000), (long long)(want[i] / 1000));
	}
}

/*
 * The hour the clocks repeat: a wildcard entry (minute or hour field
 * starting with "*") fires in both passes, as in vixie cron; a fixed time
 * fires once, in the first.
 */
START_TEST(test_next_fall_back)
{
	const int64_t	half_hourly[] = { S(NOV1_0100_EDT), S(NOV1_0130_EDT),
	    S(NOV1_0100_EST), S(NOV1_0130_EST), S(NOV1_0200_EST) };
	const int64_t	hourly[] = { S(NOV1_0100_EDT), S(NOV1_0100_EST),
	    S(NOV1_0200_EST) };
	const int64_t	in_one[] = { S(NOV1_0100_EDT), S(NOV1_0130_EDT),
	    S(NOV1_0100_EST), S(NOV1_0130_EST), S(NOV2_0100_EST) };
	const int64_t	fixed[] = { S(NOV1_0130_EDT),
	    S(NOV2_0100_EST + 1800) };

	assert_firings("*/30 * * * *", S(NOV1_0000_EDT + 3000), half_hourly, 5);
	assert_firings("@hourly", S(NOV1_0000_EDT + 60), hourly, 3);
	assert_firings("*/30 1 * * *", S(NOV1_0000_EDT), in_one, 5);
	assert_firings("30 1 * * *", S(NOV1_0000_EDT), fixed, 2);
}
END_TEST

/* A fixed time fires in the first pass only, also when the walk starts in
 * the second (just after a firing at the end of the first). */
START_TEST(test_next_fall_back_fixed_time_once)
{
	const int64_t	once[] = { S(NOV1_0100_EDT + 59 * 60),
	    S(NOV2_0100_EST + 59 * 60) };
	uint64_t	masks[5];

	assert_firings("59 1 * * *", S(NOV1_0000_EDT), once, 2);
	parse_ok("45 1 * * *", masks);
	ck_assert_int_eq(cron_next(masks, S(NOV1_0100_EST + 600)),
	    S(NOV2_0100_EST + 45 * 60));
}
END_TEST

/*
 * Dublin's rules, whose DST is in winter (GMT, 0) and standard time in
 * summer (IST, +1): mktime answers a time in the skipped hour with an
 * earlier one. The walk must neither stall there (Check's timeout) nor
 * answer a time before the start, and a time in the gap fires as late as
 * the clocks moved, as where DST is in summer.
 */
START_TEST(test_next_negative_dst)
{
	/* 2025-03-30: 01:00 GMT -> 02:00 IST at 01:00Z. */
	const int64_t	noon[] = { S(1743249600 + 86400 - 3600) };
	const int64_t	half_hourly[] = { S(1743296400), S(1743296400 + 1800) };

	setenv("TZ", "IST-1GMT0,M10.5.0,M3.5.0/1", 1);
	tzset();
	assert_firings("0 12 * * *", S(1743249600), noon, 1);
	assert_firings("*/30 * * * *", S(1743294600), half_hourly, 2);
	/* 01:30 does not come on the 30th: 02:30 IST, then 01:30 IST. */
	assert_firings("30 1 * * *", S(1743249600), (const int64_t[]){
	    S(1743294600 + 3600), S(1743294600 + 86400) }, 2);
	/* 01:00 and 02:00 are one time that night: one firing. */
	assert_firings("0 1,2 * * *", S(1743249600), (const int64_t[]){
	    S(1743296400), S(1743296400 + 86400 - 3600) }, 2);
}
END_TEST

/*
 * Nuuk's clocks (since 2024) go from 23:00 on a Saturday to 00:00 on the
 * Sunday: 23:30 that Saturday fires at 00:30 on the Sunday, the day its
 * later reading falls on. It was once lost, for a year with a day of
 * month given.
 */
START_TEST(test_next_skipped_time_read_on_the_next_day)
{
	const int64_t	daily[] = { S(1743298200), S(1743381000) };

	setenv("TZ", "<-02>2<-01>,M3.5.0/-1,M10.5.0/0", 1);
	tzset();
	/* From Saturday 2025-03-29 20:00 (22:00Z). */
	assert_firings("30 23 * * *", S(1743285600), daily, 2);
	assert_firings("30 23 29 3 *", S(1743285600), daily, 1);
}
END_TEST

/*
 * Lord Howe's clocks go forward by 30 minutes, 02:00 to 02:30, on
 * 2025-10-05 (at 15:30Z the day before). The skipped times' later readings
 * fall on times that exist (02:15 on 02:45): those were once walked past,
 * and 02:30 and 02:45 did not fire that day.
 */
START_TEST(test_next_half_hour_change)
{
	const int64_t	start = S(1759584600);		/* 10-04 13:30Z */
	const int64_t	at_0230 = S(1759591800), at_0245 = S(1759592700);

	setenv("TZ", "LHST-10:30LHDT-11,M10.1.0,M4.1.0", 1);
	tzset();
	assert_firings("30 2 * * *", start, &at_0230, 1);
	assert_firings("45 2 * * *", start, &at_0245, 1);
	assert_firings("0 2 * * *", start, &at_0230, 1);	/* skipped */
	assert_firings("15 2 * * *", start, &at_0245, 1);	/* skipped */
}
END_TEST

/*
 * A zone with a 30-minute DST in winter, which ends at 01:00: the clocks
 * go from 01:00 to 01:30 (at 00:30Z). mktime answers 01:15 with a time
 * before the change, still after the walk's last minute: that was once
 * fired, at 00:45, a time of other fields.
 */
START_TEST(test_next_half_hour_change_in_winter_dst)
{
	setenv("TZ", "XST-1XDT-0:30,M10.5.0,M3.5.0/1", 1);
	tzset();
	assert_firings("15 1 * * *", S(1743294600 - 3 * 3600),
	    (const int64_t[]){ S(1743294600 + 15 * 60) }, 1);
}
END_TEST

/*
 * The hour the clocks skip: a time in it fires as late as the clocks
 * moved, once, and the next day as usual; nothing is repeated.
 */
START_TEST(test_next_spring_forward)
{
	const int64_t	half_hourly[] = { S(MAR8_0130_EST), S(MAR8_0300_EDT),
	    S(MAR8_0300_EDT + 1800) };
	const int64_t	skipped[] = { S(MAR8_0300_EDT + 1800),
	    S(MAR9_0230_EDT) };
	const int64_t	two_and_three[] = { S(MAR8_0300_EDT + 1800),
	    S(MAR9_0230_EDT), S(MAR9_0230_EDT + 3600) };

	assert_firings("*/30 * * * *", S(MAR8_0130_EST - 60), half_hourly, 3);
	assert_firings("30 2 * * *", S(MAR8_0000_EST), skipped, 2);
	/* 02:30 and 03:30 are one time that night: one firing. */
	assert_firings("30 2,3 * * *", S(MAR8_0000_EST), two_and_three, 3);
	/* The first real time after the gap is walked to from inside it. */
	assert_firings("0 3 * * *", S(MAR8_0000_EST - 86400),
	    (const int64_t[]){ S(MAR8_0000_EST - 86400 + 3 * 3600),
	    S(MAR8_0300_EDT) }, 2);
	assert_firings("0 */3 * * *", S(MAR8_0000_EST + 60),
	    (const int64_t[]){ S(MAR8_0300_EDT) }, 1);
	/*
	 * Every skipped time fires, each as late as the clocks moved, also
	 * after one of them did, and from a start after the change.
	 */
	assert_firings("*/20 2 * * *", S(MAR8_0000_EST), (const int64_t[]){
	    S(MAR8_0300_EDT), S(MAR8_0300_EDT + 1200),
	    S(MAR8_0300_EDT + 2400), S(MAR9_0230_EDT - 1800) }, 4);
	assert_firings("59 1,2 * * *", S(MAR8_0000_EST), (const int64_t[]){
	    S(MAR8_0300_EDT - 60), S(MAR8_0300_EDT + 3540) }, 2);
	assert_firings("10 2 * * *", S(MAR8_0300_EDT + 300), (const int64_t[]){
	    S(MAR8_0300_EDT + 600) }, 1);
}
END_TEST

/*
 * Chile's clocks go from 00:00 to 01:00 (at 24:00 on a Saturday): a daily
 * entry at midnight fires at 01:00 that Sunday, not a day later.
 */
START_TEST(test_next_spring_forward_at_midnight)
{
	const int64_t	daily[] = { S(1788667200), S(1788750000) };

	setenv("TZ", "<-04>4<-03>,M9.1.6/24,M4.1.6/24", 1);
	tzset();
	assert_firings("@daily", S(1788580800 + 60), daily, 2);
}
END_TEST

/*
 * Around both changes of a zone, from every seventh minute: the next
 * firing is later than the start and its local time matches the schedule,
 * or is a time the clocks skip, fired as late as they moved.
 */
static void
assert_later_and_matching(const int64_t starts[2], int skip_mon,
    int skip_mday, int skip_hour)
{
	static const char *const scheds[] = { "*/30 * * * *", "0 * * * *",
	    "30 1 * * *", "* 1 * * *", "15,45 0-3 * * *", "*/7 */2 * * *",
	    "30 2 * * *" };
	uint64_t	masks[5];
	struct tm	tm;
	time_t		secs;
	int64_t		t, next;
	size_t		i, j;
	int		skipped_hour;

	for (i = 0; i < sizeof scheds / sizeof scheds[0]; i++) {
		parse_ok(scheds[i], masks);
		for (j = 0; j < 2; j++) {
			for (t = starts[j]; t < starts[j] + S(6 * 3600);
			    t += S(7 * 60)) {
				next = cron_next(masks, t);
				ck_assert_msg(next > t, "\"%s\" from %lld: %lld",
				    scheds[i], (long long)t, (long long)next);
				secs = (time_t)(next / 1000);
				localtime_r(&secs, &tm);
				skipped_hour = tm.tm_mon == skip_mon &&
				    tm.tm_mday == skip_mday &&
				    tm.tm_hour == skip_hour + 1 &&
				    (masks[1] >> skip_hour & 1);
				ck_assert_msg((masks[0] >> tm.tm_min & 1) &&
				    ((masks[1] >> tm.tm_hour & 1) ||
				    skipped_hour),
				    "\"%s\" fires at %02d:%02d", scheds[i],
				    tm.tm_hour, tm.tm_min);
			}
		}
	}
}

START_TEST(test_next_later_and_matching_across_changes)
{
	const int64_t	new_york[] = { S(NOV1_0000_EDT - 3600),
	    S(MAR8_0000_EST - 3600) };
	/* 2025-10-26 01:00Z (02:00 IST -> 01:00 GMT); 2025-03-30 01:00Z. */
	const int64_t	dublin[] = { S(1761440400 - 3 * 3600),
	    S(1743296400 - 3 * 3600) };

	/* The hour skipped: 02:xx on March 8th, fired at 03:xx. */
	assert_later_and_matching(new_york, 2, 8, 2);
	setenv("TZ", "IST-1GMT0,M10.5.0,M3.5.0/1", 1);
	tzset();
	/* 01:xx on March 30th, fired at 02:xx. */
	assert_later_and_matching(dublin, 2, 30, 1);
}
END_TEST

/* Did a minute in the 3 hours before t read as tm (a repeated hour)? */
static int
oracle_second_pass(time_t t, const struct tm *tm)
{
	struct tm	before;
	time_t		b;

	for (b = t - 60; b >= t - 3 * 3600; b -= 60) {
		localtime_r(&b, &before);
		if (before.tm_mday == tm->tm_mday &&
		    before.tm_hour == tm->tm_hour && before.tm_min == tm->tm_min)
			return (1);
	}
	return (0);
}

/*
 * The oracle of a daily "m h * * *": the first minute after start whose
 * local time reads h:m, the first pass of a repeated hour only; or, on a
 * day the clocks skip h:m (no minute reads as it), its later reading (h:m
 * at the offset before the change), if that comes first. Brute force,
 * minute by minute.
 */
static time_t
oracle_daily(int h, int m, time_t start)
{
	struct tm	tm, w;
	time_t		t, best = -1, naive, later, day;
	long		offs[2];
	int		noffs, k, i, exists;

	for (t = start / 60 * 60 + 60; t < start + 2 * 86400; t += 60) {
		localtime_r(&t, &tm);
		if (tm.tm_hour == h && tm.tm_min == m &&
		    !oracle_second_pass(t, &tm)) {
			best = t;
			break;
		}
	}
	for (day = start - 86400; day <= start + 86400; day += 43200) {
		localtime_r(&day, &tm);
		memset(&w, 0, sizeof w);
		w.tm_year = tm.tm_year;
		w.tm_mon = tm.tm_mon;
		w.tm_mday = tm.tm_mday;
		w.tm_hour = h;
		w.tm_min = m;
		naive = timegm(&w);
		/* The offsets in force within a day of it (one or two). */
		noffs = 0;
		for (k = 0; k <= 96; k++) {
			t = naive - 86400 + k * 1800;
			localtime_r(&t, &tm);
			for (i = 0; i < noffs && offs[i] != tm.tm_gmtoff; i++)
				;
			if (i == noffs && noffs < 2)
				offs[noffs++] = tm.tm_gmtoff;
		}
		exists = 0;
		for (i = 0; i < noffs; i++) {
			t = naive - offs[i];
			localtime_r(&t, &tm);
			if (tm.tm_mday == w.tm_mday && tm.tm_hour == h &&
			    tm.tm_min == m)
				exists = 1;
		}
		if (exists || noffs < 2)
			continue;
		later = naive - (offs[0] < offs[1] ? offs[0] : offs[1]);
		if (later > start && (best == -1 || later < best))
			best = later;
	}
	return (best);
}

/*
 * Daily entries at every tenth minute of the hours around the changes,
 * from starts every 17 minutes over the 6 hours around each change,
 * forward and back, against the oracle: New York, Dublin (DST in
 * winter), Lord Howe (30 minutes), Nuuk (23:00 to 00:00), Chile (24:00
 * to 01:00).
 */
START_TEST(test_next_daily_against_brute_force)
{
	static const struct {
		const char	*tz;
		time_t		 change;	/* forward, then back */
	} zones[] = {
		{ "EST5EDT,M3.2.0,M11.1.0", 1772953200 },
		{ "EST5EDT,M3.2.0,M11.1.0", 1793512800 },
		{ "IST-1GMT0,M10.5.0,M3.5.0/1", 1743296400 },
		{ "IST-1GMT0,M10.5.0,M3.5.0/1", 1761440400 },
		{ "LHST-10:30LHDT-11,M10.1.0,M4.1.0", 1759591800 },
		{ "LHST-10:30LHDT-11,M10.1.0,M4.1.0", 1775314800 },
		{ "<-02>2<-01>,M3.5.0/-1,M10.5.0/0", 1743296400 },
		{ "<-02>2<-01>,M3.5.0/-1,M10.5.0/0", 1761440400 },
		{ "<-04>4<-03>,M9.1.6/24,M4.1.6/24", 1788667200 },
		{ "<-04>4<-03>,M9.1.6/24,M4.1.6/24", 1775358000 },
	};
	static const int	hours[] = { 0, 1, 2, 3, 22, 23 };
	uint64_t		masks[5];
	char			sched[32];
	size_t			z, hi;
	int			m;
	time_t			start, want;
	int64_t			got;

	for (z = 0; z < sizeof zones / sizeof zones[0]; z++) {
		setenv("TZ", zones[z].tz, 1);
		tzset();
		for (hi = 0; hi < sizeof hours / sizeof hours[0]; hi++) {
			for (m = 0; m < 60; m += 10) {
				snprintf(sched, sizeof sched, "%d %d * * *",
				    m, hours[hi]);
				parse_ok(sched, masks);
				for (start = zones[z].change - 3 * 3600;
				    start < zones[z].change + 3 * 3600;
				    start += 17 * 60) {
					want = oracle_daily(hours[hi], m, start);
					got = cron_next(masks, S(start));
					ck_assert_msg(got == S(want),
					    "%s \"%s\" from %lld: %lld, not "
					    "%lld", zones[z].tz, sched,
					    (long long)start,
					    (long long)(got / 1000),
					    (long long)want);
				}
			}
		}
	}
}
END_TEST

static Suite *
cron_suite(void)
{
	Suite	*s = suite_create("cron");
	TCase	*tc = tcase_create("parse");

	tcase_add_checked_fixture(tc, cron_setup, NULL);
	tcase_add_test(tc, test_parse_fields);
	tcase_add_test(tc, test_parse_refused);
	tcase_add_test(tc, test_parse_names);
	tcase_add_test(tc, test_parse_stored_takes_empty_items);
	tcase_add_test(tc, test_parse_huge_step);
	tcase_add_test(tc, test_next_utc);
	suite_add_tcase(s, tc);

	tc = tcase_create("dst");
	/* The brute-force oracle takes seconds under a sanitizer and load. */
	tcase_set_timeout(tc, 60);
	tcase_add_checked_fixture(tc, dst_setup, NULL);
	tcase_add_test(tc, test_next_fall_back);
	tcase_add_test(tc, test_next_fall_back_fixed_time_once);
	tcase_add_test(tc, test_next_negative_dst);
	tcase_add_test(tc, test_next_half_hour_change);
	tcase_add_test(tc, test_next_daily_against_brute_force);
	tcase_add_test(tc, test_next_skipped_time_read_on_the_next_day);
	tcase_add_test(tc, test_next_half_hour_change_in_winter_dst);
	tcase_add_test(tc, test_next_spring_forward);
	tcase_add_test(tc, test_next_spring_forward_at_midnight);
	tcase_add_test(tc, test_next_later_and_matching_across_changes);
	tcase_add_test(tc, test_next_offset_with_seconds);
	suite_add_tcase(s, tc);

	return (s);
}

int
main(void)
{
	return (check_run(cron_suite()));
}
