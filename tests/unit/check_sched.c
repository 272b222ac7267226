/*
 * check_sched.c: unit tests of the pure parts of dispatch: the backoff
 * (sched.c), its jittered delay drawn through a fake random source, and the
 * task state transition table (task.c). Run under -fsanitize=undefined too,
 * so the saturation cases also prove there is no signed overflow.
 */
#include "config.h"

#include <check.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>

#include "forkqd.h"
#include "check_run.h"

#define BASE	1000
#define MAX	300000

/* The largest argument any fake rnd was called with; 0 = never called. */
static uint32_t	rnd_last_bound;

static uint32_t
rnd_zero(uint32_t bound)
{
	rnd_last_bound = bound;
	return (0);
}

static uint32_t
rnd_top(uint32_t bound)
{
	rnd_last_bound = bound;
	return (bound > 0 ? bound - 1 : 0);
}

/* Real-ish: uniform enough over [0, bound), seeded for repeatability. */
static uint32_t
rnd_random(uint32_t bound)
{
	rnd_last_bound = bound;
	ck_assert_uint_gt(bound, 0);
	return ((uint32_t)((uint64_t)random() % bound));
}

START_TEST(test_backoff_first_attempt_is_base)
{
	ck_assert_int_eq(sched_backoff_ms(BASE, MAX, 1), 1000);
}
END_TEST

START_TEST(test_backoff_doubles_per_attempt)
{
	ck_assert_int_eq(sched_backoff_ms(BASE, MAX, 2), 2000);
	ck_assert_int_eq(sched_backoff_ms(BASE, MAX, 3), 4000);
	ck_assert_int_eq(sched_backoff_ms(BASE, MAX, 9), 256000);
}
END_TEST

START_TEST(test_backoff_capped_at_max)
{
	ck_assert_int_eq(sched_backoff_ms(BASE, MAX, 10), MAX);
	ck_assert_int_eq(sched_backoff_ms(BASE, MAX, 50), MAX);
}
END_TEST

START_TEST(test_backoff_attempt_zero_treated_as_one)
{
	ck_assert_int_eq(sched_backoff_ms(BASE, MAX, 0), 1000);
	ck_assert_int_eq(sched_backoff_ms(BASE, MAX, -5), 1000);
	ck_assert_int_eq(sched_backoff_ms(BASE, MAX, INT_MIN), 1000);
}
END_TEST

START_TEST(test_backoff_huge_attempt_saturates)
{
	ck_assert_int_eq(sched_backoff_ms(BASE, MAX, 10000), MAX);
	ck_assert_int_eq(sched_backoff_ms(BASE, MAX, INT_MAX), MAX);
}
END_TEST

START_TEST(test_backoff_huge_base_saturates)
{
	ck_assert_int_eq(sched_backoff_ms(INT64_MAX / 2 + 1, MAX, 1), MAX);
	ck_assert_int_eq(sched_backoff_ms(INT64_MAX / 2 + 1, MAX, 2), MAX);
	ck_assert_int_eq(sched_backoff_ms(INT64_MAX / 2 + 1, MAX, 10000), MAX);
}
END_TEST

START_TEST(test_backoff_no_overflow_with_unbounded_max)
{
	ck_assert_int_eq(sched_backoff_ms(INT64_MAX / 2 + 1, INT64_MAX, 2),
	    INT64_MAX);
	ck_assert_int_eq(sched_backoff_ms(BASE, INT64_MAX, 10000), INT64_MAX);
	ck_assert_int_eq(sched_backoff_ms(INT64_MAX, INT64_MAX, INT_MAX),
	    INT64_MAX);
}
END_TEST

START_TEST(test_backoff_zero_base_is_zero)
{
	ck_assert_int_eq(sched_backoff_ms(0, MAX, 1), 0);
	ck_assert_int_eq(sched_backoff_ms(0, MAX, 10000), 0);
}
END_TEST

START_TEST(test_delay_low_draw_is_half)
{
	ck_assert_int_eq(sched_backoff_delay(BASE, MAX, 1, rnd_zero), 500);
	ck_assert_int_eq(sched_backoff_delay(BASE, MAX, 3, rnd_zero), 2000);
}
END_TEST

START_TEST(test_delay_high_draw_is_full)
{
	ck_assert_int_eq(sched_backoff_delay(BASE, MAX, 1, rnd_top), 1000);
	ck_assert_int_eq(sched_backoff_delay(BASE, MAX, 3, rnd_top), 4000);
	ck_assert_int_eq(sched_backoff_delay(BASE, MAX, 100, rnd_top), MAX);
}
END_TEST

START_TEST(test_delay_odd_backoff_bounds)
{
	/* d = 3: lo = 1, the draw covers 1..3. */
	ck_assert_int_eq(sched_backoff_delay(3, MAX, 1, rnd_zero), 1);
	ck_assert_int_eq(sched_backoff_delay(3, MAX, 1, rnd_top), 3);
	/* d = 1: lo = 0, the draw covers 0..1. */
	ck_assert_int_eq(sched_backoff_delay(1, MAX, 1, rnd_zero), 0);
	ck_assert_int_eq(sched_backoff_delay(1, MAX, 1, rnd_top), 1);
}
END_TEST

START_TEST(test_delay_zero_backoff_skips_rnd)
{
	rnd_last_bound = 0;
	ck_assert_int_eq(sched_backoff_delay(0, MAX, 1, rnd_random), 0);
	ck_assert_uint_eq(rnd_last_bound, 0);
}
END_TEST

START_TEST(test_delay_random_draws_within_bounds)
{
	int64_t	d, v;
	int	n, i;

	srandom(12345);
	for (n = 1; n <= 12; n++) {
		d = sched_backoff_ms(BASE, MAX, n);
		for (i = 0; i < 2000; i++) {
			v = sched_backoff_delay(BASE, MAX, n, rnd_random);
			ck_assert_int_ge(v, d / 2);
			ck_assert_int_le(v, d);
		}
	}
}
END_TEST

START_TEST(test_delay_random_draws_reach_both_halves)
{
	int64_t	v;
	int	i, low = 0, high = 0;

	srandom(54321);
	for (i = 0; i < 1000; i++) {
		v = sched_backoff_delay(BASE, MAX, 1, rnd_random);
		if (v < 750)
			low++;
		else
			high++;
	}
	ck_assert_int_gt(low, 100);
	ck_assert_int_gt(high, 100);
}
END_TEST

START_TEST(test_delay_span_over_uint32_within_bounds)
{
	int64_t	d, v;
	int	i;

	/* d = 100 years: the span d/2 is far over UINT32_MAX ms. */
	d = sched_backoff_ms(FORKQ_MAX_DURATION_MS, FORKQ_MAX_DURATION_MS, 1);
	ck_assert_int_eq(d, FORKQ_MAX_DURATION_MS);
	ck_assert_int_gt(d - d / 2, UINT32_MAX);

	v = sched_backoff_delay(d, d, 1, rnd_zero);
	ck_assert_int_eq(v, d / 2);
	ck_assert_uint_gt(rnd_last_bound, 1);
	v = sched_backoff_delay(d, d, 1, rnd_top);
	ck_assert_int_ge(v, d / 2);
	ck_assert_int_le(v, d);
	srandom(777);
	for (i = 0; i < 2000; i++) {
		v = sched_backoff_delay(d, d, 1, rnd_random);
		ck_assert_int_ge(v, d / 2);
		ck_assert_int_le(v, d);
	}
}
END_TEST

START_TEST(test_delay_span_just_under_uint32_within_bounds)
{
	int64_t	d = 2 * (int64_t)UINT32_MAX - 2, v;

	/* span = UINT32_MAX - 1: the widest span drawn in ms units. */
	v = sched_backoff_delay(d, d, 1, rnd_top);
	ck_assert_uint_eq(rnd_last_bound, UINT32_MAX);
	ck_assert_int_eq(v, d);
	v = sched_backoff_delay(d, d, 1, rnd_zero);
	ck_assert_int_eq(v, d / 2);
}
END_TEST

START_TEST(test_transition_queued_to_running_ok)
{
	ck_assert(task_transition_ok(TASK_QUEUED, TASK_RUNNING));
}
END_TEST

START_TEST(test_transition_queued_to_canceled_ok)
{
	ck_assert(task_transition_ok(TASK_QUEUED, TASK_CANCELED));
}
END_TEST

START_TEST(test_transition_running_to_queued_ok)
{
	ck_assert(task_transition_ok(TASK_RUNNING, TASK_QUEUED));
}
END_TEST

START_TEST(test_transition_running_to_succeeded_ok)
{
	ck_assert(task_transition_ok(TASK_RUNNING, TASK_SUCCEEDED));
}
END_TEST

START_TEST(test_transition_running_to_failed_ok)
{
	ck_assert(task_transition_ok(TASK_RUNNING, TASK_FAILED));
}
END_TEST

START_TEST(test_transition_running_to_canceled_ok)
{
	ck_assert(task_transition_ok(TASK_RUNNING, TASK_CANCELED));
}
END_TEST

START_TEST(test_transition_from_succeeded_refused)
{
	int	to;

	for (to = 0; to < TASK_NSTATES; to++)
		ck_assert_msg(!task_transition_ok(TASK_SUCCEEDED, to),
		    "succeeded -> %s allowed", task_state_name(to));
}
END_TEST

START_TEST(test_transition_failed_to_queued_ok)
{
	ck_assert(task_transition_ok(TASK_FAILED, TASK_QUEUED));
}
END_TEST

START_TEST(test_transition_canceled_to_queued_ok)
{
	ck_assert(task_transition_ok(TASK_CANCELED, TASK_QUEUED));
}
END_TEST

START_TEST(test_transition_queued_to_succeeded_refused)
{
	ck_assert(!task_transition_ok(TASK_QUEUED, TASK_SUCCEEDED));
	ck_assert(!task_transition_ok(TASK_QUEUED, TASK_FAILED));
}
END_TEST

START_TEST(test_transition_to_same_state_refused)
{
	int	s;

	for (s = 0; s < TASK_NSTATES; s++)
		ck_assert_msg(!task_transition_ok(s, s), "%s -> %s allowed",
		    task_state_name(s), task_state_name(s));
}
END_TEST

START_TEST(test_transition_final_to_other_final_refused)
{
	ck_assert(!task_transition_ok(TASK_FAILED, TASK_SUCCEEDED));
	ck_assert(!task_transition_ok(TASK_FAILED, TASK_RUNNING));
	ck_assert(!task_transition_ok(TASK_CANCELED, TASK_FAILED));
	ck_assert(!task_transition_ok(TASK_CANCELED, TASK_RUNNING));
}
END_TEST

START_TEST(test_transition_out_of_range_refused)
{
	ck_assert(!task_transition_ok(TASK_NSTATES, TASK_QUEUED));
	ck_assert(!task_transition_ok(TASK_QUEUED, TASK_NSTATES));
}
END_TEST

static Suite *
sched_suite(void)
{
	Suite	*s = suite_create("sched");
	TCase	*tc;

	tc = tcase_create("backoff");
	tcase_add_test(tc, test_backoff_first_attempt_is_base);
	tcase_add_test(tc, test_backoff_doubles_per_attempt);
	tcase_add_test(tc, test_backoff_capped_at_max);
	tcase_add_test(tc, test_backoff_attempt_zero_treated_as_one);
	tcase_add_test(tc, test_backoff_huge_attempt_saturates);
	tcase_add_test(tc, test_backoff_huge_base_saturates);
	tcase_add_test(tc, test_backoff_no_overflow_with_unbounded_max);
	tcase_add_test(tc, test_backoff_zero_base_is_zero);
	suite_add_tcase(s, tc);

	tc = tcase_create("delay");
	tcase_add_test(tc, test_delay_low_draw_is_half);
	tcase_add_test(tc, test_delay_high_draw_is_full);
	tcase_add_test(tc, test_delay_odd_backoff_bounds);
	tcase_add_test(tc, test_delay_zero_backoff_skips_rnd);
	tcase_add_test(tc, test_delay_random_draws_within_bounds);
	tcase_add_test(tc, test_delay_random_draws_reach_both_halves);
	tcase_add_test(tc, test_delay_span_over_uint32_within_bounds);
	tcase_add_test(tc, test_delay_span_just_under_uint32_within_bounds);
	suite_add_tcase(s, tc);

	tc = tcase_create("transition");
	tcase_add_test(tc, test_transition_queued_to_running_ok);
	tcase_add_test(tc, test_transition_queued_to_canceled_ok);
	tcase_add_test(tc, test_transition_running_to_queued_ok);
	tcase_add_test(tc, test_transition_running_to_succeeded_ok);
	tcase_add_test(tc, test_transition_running_to_failed_ok);
	tcase_add_test(tc, test_transition_running_to_canceled_ok);
	tcase_add_test(tc, test_transition_from_succeeded_refused);
	tcase_add_test(tc, test_transition_failed_to_queued_ok);
	tcase_add_test(tc, test_transition_canceled_to_queued_ok);
	tcase_add_test(tc, test_transition_queued_to_succeeded_refused);
	tcase_add_test(tc, test_transition_to_same_state_refused);
	tcase_add_test(tc, test_transition_final_to_other_final_refused);
	tcase_add_test(tc, test_transition_out_of_range_refused);
	suite_add_tcase(s, tc);

	return (s);
}

int
main(void)
{
	return (check_run(sched_suite()));
}
