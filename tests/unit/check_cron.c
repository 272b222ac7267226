/*
 * check_cron.c: unit tests of cron.c's schedule parser (spec 10): the masks
 * cron_parse makes of fields, lists, ranges and steps, the schedules it
 * refuses, and cron_next in UTC. Check's per-test timeout turns a parser
 * that loops into a failure.
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
/* The mask bits that are values, without the "*" marker (bit 63). */
#define VALUES(m)	((m) & ~BIT(63))

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
	ck_assert(masks[3] & BIT(63));
	ck_assert_uint_eq(VALUES(masks[4]), BIT(0));	/* 7 is Sunday, 0 */
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
	tcase_add_test(tc, test_parse_huge_step);
	tcase_add_test(tc, test_next_utc);
	suite_add_tcase(s, tc);

	return (s);
}

int
main(void)
{
	return (check_run(cron_suite()));
}
