/*
 * check_util.c: unit tests of util.c, the pure parsing and formatting shared
 * by forkq and forkqd: durations, sizes, times, duration display and signal
 * names.
 */
#include "config.h"

#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"
#include "check_run.h"

/* 2026-11-22T09:30:00Z in ms since the epoch. */
#define T_2026_11_22_0930	1795339800000LL

/*
 * Asserts that parse_duration_ms accepts s as want ms. A macro, so a failure
 * names the test's line.
 */
#define ASSERT_DURATION(s, want) do {					\
	int64_t		 ms_ = -1;					\
	const char	*err_ = NULL;					\
									\
	ck_assert_msg(parse_duration_ms((s), &ms_, &err_) == 0,		\
	    "\"%s\" refused: %s", (s), err_ != NULL ? err_ : "?");	\
	ck_assert_int_eq(ms_, (want));					\
} while (0)

/* Asserts that parse_duration_ms refuses s with a reason. */
#define ASSERT_DURATION_BAD(s) do {					\
	int64_t		 ms_ = -1;					\
	const char	*err_ = NULL;					\
									\
	ck_assert_msg(parse_duration_ms((s), &ms_, &err_) == -1,	\
	    "\"%s\" accepted as %lld", (s), (long long)ms_);		\
	ck_assert_ptr_nonnull(err_);					\
} while (0)

/* Refused, saying why: err holds why. */
#define ASSERT_DURATION_BAD_BECAUSE(s, why) do {			\
	int64_t		 ms_ = -1;					\
	const char	*err_ = NULL;					\
									\
	ck_assert_int_eq(parse_duration_ms((s), &ms_, &err_), -1);	\
	ck_assert_ptr_nonnull(strstr(err_, (why)));			\
} while (0)

#define ASSERT_SIZE(s, want) do {					\
	int64_t		 b_ = -1;					\
	const char	*err_ = NULL;					\
									\
	ck_assert_msg(parse_size((s), &b_, &err_) == 0,			\
	    "\"%s\" refused: %s", (s), err_ != NULL ? err_ : "?");	\
	ck_assert_int_eq(b_, (want));					\
} while (0)

#define ASSERT_SIZE_BAD(s) do {						\
	int64_t		 b_ = -1;					\
	const char	*err_ = NULL;					\
									\
	ck_assert_msg(parse_size((s), &b_, &err_) == -1,		\
	    "\"%s\" accepted as %lld", (s), (long long)b_);		\
	ck_assert_ptr_nonnull(err_);					\
} while (0)

#define ASSERT_TIME(s, want) do {					\
	int64_t		 t_ = -1;					\
	const char	*err_ = NULL;					\
									\
	ck_assert_msg(parse_time_ms((s), &t_, &err_) == 0,		\
	    "\"%s\" refused: %s", (s), err_ != NULL ? err_ : "?");	\
	ck_assert_int_eq(t_, (want));					\
} while (0)

#define ASSERT_TIME_BAD(s) do {						\
	int64_t		 t_ = -1;					\
	const char	*err_ = NULL;					\
									\
	ck_assert_msg(parse_time_ms((s), &t_, &err_) == -1,		\
	    "\"%s\" accepted as %lld", (s), (long long)t_);		\
	ck_assert_ptr_nonnull(err_);					\
} while (0)

#define ASSERT_FORMAT_DURATION(ms, want) do {				\
	char	buf_[32];						\
									\
	format_duration((ms), buf_, sizeof buf_);			\
	ck_assert_str_eq(buf_, (want));					\
} while (0)

START_TEST(test_duration_milliseconds)
{
	ASSERT_DURATION("250ms", 250);
}
END_TEST

START_TEST(test_duration_seconds)
{
	ASSERT_DURATION("30s", 30000);
}
END_TEST

START_TEST(test_duration_minutes)
{
	ASSERT_DURATION("5m", 300000);
}
END_TEST

START_TEST(test_duration_hours)
{
	ASSERT_DURATION("2h", 7200000);
}
END_TEST

START_TEST(test_duration_days)
{
	ASSERT_DURATION("1d", 86400000);
}
END_TEST

START_TEST(test_duration_bare_number_is_seconds)
{
	ASSERT_DURATION("7", 7000);
}
END_TEST

START_TEST(test_duration_zero)
{
	ASSERT_DURATION("0", 0);
	ASSERT_DURATION("0ms", 0);
}
END_TEST

START_TEST(test_duration_rejects_empty)
{
	ASSERT_DURATION_BAD("");
}
END_TEST

START_TEST(test_duration_rejects_negative)
{
	ASSERT_DURATION_BAD_BECAUSE("-1", "negative");
	ASSERT_DURATION_BAD_BECAUSE("-1s", "negative");
}
END_TEST

START_TEST(test_duration_rejects_unknown_unit)
{
	ASSERT_DURATION_BAD("5x");
}
END_TEST

START_TEST(test_duration_rejects_fraction)
{
	/* Said to be an unknown unit. */
	ASSERT_DURATION_BAD_BECAUSE("1.5s", "fraction");
}
END_TEST

START_TEST(test_duration_rejects_unit_alone)
{
	ASSERT_DURATION_BAD("s");
}
END_TEST

START_TEST(test_duration_rejects_overflow)
{
	ASSERT_DURATION_BAD("99999999999999999999");
}
END_TEST

START_TEST(test_duration_rejects_over_100_years)
{
	ASSERT_DURATION_BAD("36501d");
	ASSERT_DURATION_BAD("3153600000001ms");
}
END_TEST

START_TEST(test_duration_accepts_100_years)
{
	ASSERT_DURATION("36500d", FORKQ_MAX_DURATION_MS);
}
END_TEST

START_TEST(test_size_bare_number_is_bytes)
{
	ASSERT_SIZE("512", 512);
}
END_TEST

START_TEST(test_size_kibibytes)
{
	ASSERT_SIZE("64K", 65536);
}
END_TEST

START_TEST(test_size_gibibytes)
{
	ASSERT_SIZE("2G", 2LL * 1024 * 1024 * 1024);
}
END_TEST

START_TEST(test_size_tebibytes)
{
	ASSERT_SIZE("1T", 1024LL * 1024 * 1024 * 1024);
}
END_TEST

START_TEST(test_size_lowercase_unit)
{
	ASSERT_SIZE("64k", 65536);
	ASSERT_SIZE("3m", 3LL * 1024 * 1024);
}
END_TEST

START_TEST(test_size_rejects_unknown_unit)
{
	ASSERT_SIZE_BAD("5X");
	ASSERT_SIZE_BAD("5KB");
}
END_TEST

START_TEST(test_size_rejects_fraction_saying_so)
{
	int64_t		 b = -1;
	const char	*err = NULL;

	ck_assert_int_eq(parse_size("1.5G", &b, &err), -1);
	ck_assert_ptr_nonnull(strstr(err, "fraction"));
}
END_TEST

START_TEST(test_size_rejects_unit_alone)
{
	ASSERT_SIZE_BAD("K");
}
END_TEST

START_TEST(test_size_rejects_empty)
{
	ASSERT_SIZE_BAD("");
}
END_TEST

START_TEST(test_size_rejects_overflow)
{
	ASSERT_SIZE_BAD("99999999999999999999");
}
END_TEST

START_TEST(test_size_rejects_unit_overflow)
{
	/* 2^23 T is 2^63 bytes, one past INT64_MAX. */
	ASSERT_SIZE_BAD("8388608T");
	ASSERT_SIZE("8388607T", 8388607LL << 40);
}
END_TEST

START_TEST(test_time_rfc3339_utc)
{
	ASSERT_TIME("2026-11-22T09:30:00Z", T_2026_11_22_0930);
}
END_TEST

START_TEST(test_time_rfc3339_fraction)
{
	ASSERT_TIME("2026-11-22T09:30:00.123Z", T_2026_11_22_0930 + 123);
}
END_TEST

START_TEST(test_time_rfc3339_fraction_beyond_ms_truncated)
{
	ASSERT_TIME("2026-11-22T09:30:00.123999Z", T_2026_11_22_0930 + 123);
}
END_TEST

START_TEST(test_time_rfc3339_positive_offset)
{
	/* 09:30 at +02:00 is 07:30 UTC. */
	ASSERT_TIME("2026-11-22T09:30:00+02:00",
	    T_2026_11_22_0930 - 2 * 3600 * 1000);
}
END_TEST

START_TEST(test_time_rfc3339_negative_offset)
{
	ASSERT_TIME("2026-11-22T09:30:00-01:30",
	    T_2026_11_22_0930 + 90 * 60 * 1000);
}
END_TEST

START_TEST(test_time_unix_seconds)
{
	ASSERT_TIME("1700000000", 1700000000000LL);
}
END_TEST

START_TEST(test_time_rejects_bad_month)
{
	ASSERT_TIME_BAD("2026-13-01T00:00:00Z");
}
END_TEST

START_TEST(test_time_rejects_words)
{
	ASSERT_TIME_BAD("yesterday");
}
END_TEST

START_TEST(test_time_rejects_empty)
{
	ASSERT_TIME_BAD("");
}
END_TEST

START_TEST(test_time_rejects_missing_zone)
{
	ASSERT_TIME_BAD("2026-11-22T09:30:00");
}
END_TEST

START_TEST(test_time_rejects_trailing_garbage)
{
	ASSERT_TIME_BAD("2026-11-22T09:30:00Zjunk");
}
END_TEST

/* The years 0000 to 9999 in UTC, to the last ms, in either form. */
START_TEST(test_time_range_is_what_rfc3339_writes)
{
	ASSERT_TIME("9999-12-31T23:59:59.999Z", TIME_MAX_MS);
	ASSERT_TIME("253402300799", TIME_MAX_MS - 999);
	ASSERT_TIME("0000-01-01T00:00:00Z", TIME_MIN_MS);
	ASSERT_TIME_BAD("253402300800");
	ASSERT_TIME_BAD("9999-12-31T23:59:59-00:01");
	ASSERT_TIME_BAD("0000-01-01T00:00:00+00:01");
}
END_TEST

START_TEST(test_format_local_time_before_1970_and_year_0)
{
	char	buf[32];

	ck_assert_int_eq(setenv("TZ", "UTC", 1), 0);
	tzset();
	format_local_time(-500, buf, sizeof buf);
	ck_assert_str_eq(buf, "1969-12-31 23:59:59");
	format_local_time(TIME_MIN_MS, buf, sizeof buf);
	ck_assert_str_eq(buf, "0000-01-01 00:00:00");
	format_local_time(TIME_MAX_MS, buf, sizeof buf);
	ck_assert_str_eq(buf, "9999-12-31 23:59:59");
}
END_TEST

START_TEST(test_format_rfc3339_shape)
{
	char	buf[RFC3339_LEN];

	format_rfc3339_ms(T_2026_11_22_0930 + 123, buf, sizeof buf);
	ck_assert_str_eq(buf, "2026-11-22T09:30:00.123Z");
}
END_TEST

START_TEST(test_format_rfc3339_epoch)
{
	char	buf[RFC3339_LEN];

	format_rfc3339_ms(0, buf, sizeof buf);
	ck_assert_str_eq(buf, "1970-01-01T00:00:00.000Z");
}
END_TEST

START_TEST(test_format_rfc3339_seconds_reused_right)
{
	char	buf[RFC3339_LEN];

	/* The date part is kept from one call to the next within a second. */
	format_rfc3339_ms(T_2026_11_22_0930 + 5, buf, sizeof buf);
	ck_assert_str_eq(buf, "2026-11-22T09:30:00.005Z");
	format_rfc3339_ms(T_2026_11_22_0930 + 999, buf, sizeof buf);
	ck_assert_str_eq(buf, "2026-11-22T09:30:00.999Z");
	format_rfc3339_ms(T_2026_11_22_0930 + 1000, buf, sizeof buf);
	ck_assert_str_eq(buf, "2026-11-22T09:30:01.000Z");
	format_rfc3339_ms(-1, buf, sizeof buf);
	ck_assert_str_eq(buf, "1969-12-31T23:59:59.999Z");
	format_rfc3339_ms(T_2026_11_22_0930 + 50, buf, 10);	/* too small */
	ck_assert_str_eq(buf, "");
}
END_TEST

START_TEST(test_format_rfc3339_round_trip)
{
	static const int64_t	 times[] = {
		0, 999, 1700000000000LL, T_2026_11_22_0930 + 123,
		4102444799999LL,	/* 2099-12-31T23:59:59.999Z */
	};
	char			 buf[RFC3339_LEN];
	const char		*err;
	int64_t			 back;
	size_t			 i;

	for (i = 0; i < sizeof times / sizeof times[0]; i++) {
		format_rfc3339_ms(times[i], buf, sizeof buf);
		err = NULL;
		ck_assert_msg(parse_time_ms(buf, &back, &err) == 0,
		    "\"%s\" refused: %s", buf, err != NULL ? err : "?");
		ck_assert_int_eq(back, times[i]);
	}
}
END_TEST

START_TEST(test_format_duration_milliseconds)
{
	ASSERT_FORMAT_DURATION(250, "250ms");
}
END_TEST

START_TEST(test_format_duration_seconds_one_decimal)
{
	ASSERT_FORMAT_DURATION(1200, "1.2s");
}
END_TEST

START_TEST(test_format_duration_minutes_two_digit_seconds)
{
	ASSERT_FORMAT_DURATION(65000, "1m05s");
}
END_TEST

START_TEST(test_format_duration_hours_and_days)
{
	ASSERT_FORMAT_DURATION(2 * 3600000 + 5 * 60000, "2h05m");
	ASSERT_FORMAT_DURATION(86400000 + 2 * 3600000, "1d02h");
}
END_TEST

START_TEST(test_signal_name_known)
{
	ck_assert_str_eq(signal_name(9), "SIGKILL");
	ck_assert_str_eq(signal_name(15), "SIGTERM");
}
END_TEST

START_TEST(test_signal_name_unknown_number)
{
	ck_assert_str_eq(signal_name(200), "SIG200");
}
END_TEST

START_TEST(test_signal_number_full_name)
{
	ck_assert_int_eq(signal_number("SIGTERM"), 15);
}
END_TEST

START_TEST(test_signal_number_without_prefix)
{
	ck_assert_int_eq(signal_number("KILL"), 9);
}
END_TEST

START_TEST(test_signal_number_unknown)
{
	ck_assert_int_eq(signal_number("SIGBOGUS"), -1);
	ck_assert_int_eq(signal_number("bogus"), -1);
	ck_assert_int_eq(signal_number(""), -1);
	/* A number is digits only. */
	ck_assert_int_eq(signal_number("+9"), -1);
	ck_assert_int_eq(signal_number(" 9"), -1);
	ck_assert_int_eq(signal_number("SIG9x"), -1);
	ck_assert_int_eq(signal_number("SIG40"), 40);
	ck_assert_int_eq(signal_number("65"), -1);
}
END_TEST

START_TEST(test_parse_whole_takes_digits_alone)
{
	const char	*errstr;

	ck_assert_int_eq(parse_whole("42", 0, 100, &errstr), 42);
	ck_assert_ptr_null(errstr);
	ck_assert_int_eq(parse_whole("-3", -5, 5, &errstr), -3);
	ck_assert_ptr_null(errstr);
	/* strtonum alone would take the first two. */
	parse_whole(" 5", 0, 100, &errstr);
	ck_assert_str_eq(errstr, "invalid");
	parse_whole("+5", 0, 100, &errstr);
	ck_assert_str_eq(errstr, "invalid");
	parse_whole("5 ", 0, 100, &errstr);
	ck_assert_str_eq(errstr, "invalid");
	parse_whole("", 0, 100, &errstr);
	ck_assert_str_eq(errstr, "invalid");
	parse_whole("-", 0, 100, &errstr);
	ck_assert_str_eq(errstr, "invalid");
	parse_whole("-1", 0, 100, &errstr);
	ck_assert_str_eq(errstr, "too small");
	parse_whole("101", 0, 100, &errstr);
	ck_assert_str_eq(errstr, "too large");
}
END_TEST

static Suite *
util_suite(void)
{
	Suite	*s = suite_create("util");
	TCase	*tc;

	tc = tcase_create("duration");
	tcase_add_test(tc, test_duration_milliseconds);
	tcase_add_test(tc, test_duration_seconds);
	tcase_add_test(tc, test_duration_minutes);
	tcase_add_test(tc, test_duration_hours);
	tcase_add_test(tc, test_duration_days);
	tcase_add_test(tc, test_duration_bare_number_is_seconds);
	tcase_add_test(tc, test_duration_zero);
	tcase_add_test(tc, test_duration_rejects_empty);
	tcase_add_test(tc, test_duration_rejects_negative);
	tcase_add_test(tc, test_duration_rejects_unknown_unit);
	tcase_add_test(tc, test_duration_rejects_fraction);
	tcase_add_test(tc, test_duration_rejects_unit_alone);
	tcase_add_test(tc, test_duration_rejects_overflow);
	tcase_add_test(tc, test_duration_rejects_over_100_years);
	tcase_add_test(tc, test_duration_accepts_100_years);
	suite_add_tcase(s, tc);

	tc = tcase_create("size");
	tcase_add_test(tc, test_size_bare_number_is_bytes);
	tcase_add_test(tc, test_size_kibibytes);
	tcase_add_test(tc, test_size_gibibytes);
	tcase_add_test(tc, test_size_tebibytes);
	tcase_add_test(tc, test_size_lowercase_unit);
	tcase_add_test(tc, test_size_rejects_unknown_unit);
	tcase_add_test(tc, test_size_rejects_fraction_saying_so);
	tcase_add_test(tc, test_size_rejects_unit_alone);
	tcase_add_test(tc, test_size_rejects_empty);
	tcase_add_test(tc, test_size_rejects_overflow);
	tcase_add_test(tc, test_size_rejects_unit_overflow);
	suite_add_tcase(s, tc);

	tc = tcase_create("time");
	tcase_add_test(tc, test_time_rfc3339_utc);
	tcase_add_test(tc, test_time_rfc3339_fraction);
	tcase_add_test(tc, test_time_rfc3339_fraction_beyond_ms_truncated);
	tcase_add_test(tc, test_time_rfc3339_positive_offset);
	tcase_add_test(tc, test_time_rfc3339_negative_offset);
	tcase_add_test(tc, test_time_unix_seconds);
	tcase_add_test(tc, test_time_rejects_bad_month);
	tcase_add_test(tc, test_time_rejects_words);
	tcase_add_test(tc, test_time_rejects_empty);
	tcase_add_test(tc, test_time_rejects_missing_zone);
	tcase_add_test(tc, test_time_rejects_trailing_garbage);
	tcase_add_test(tc, test_time_range_is_what_rfc3339_writes);
	tcase_add_test(tc, test_format_local_time_before_1970_and_year_0);
	tcase_add_test(tc, test_format_rfc3339_shape);
	tcase_add_test(tc, test_format_rfc3339_epoch);
	tcase_add_test(tc, test_format_rfc3339_seconds_reused_right);
	tcase_add_test(tc, test_format_rfc3339_round_trip);
	suite_add_tcase(s, tc);

	tc = tcase_create("format_duration");
	tcase_add_test(tc, test_format_duration_milliseconds);
	tcase_add_test(tc, test_format_duration_seconds_one_decimal);
	tcase_add_test(tc, test_format_duration_minutes_two_digit_seconds);
	tcase_add_test(tc, test_format_duration_hours_and_days);
	suite_add_tcase(s, tc);

	tc = tcase_create("signal");
	tcase_add_test(tc, test_signal_name_known);
	tcase_add_test(tc, test_signal_name_unknown_number);
	tcase_add_test(tc, test_signal_number_full_name);
	tcase_add_test(tc, test_signal_number_without_prefix);
	tcase_add_test(tc, test_signal_number_unknown);
	tcase_add_test(tc, test_parse_whole_takes_digits_alone);
	suite_add_tcase(s, tc);

	return (s);
}

int
main(void)
{
	return (check_run(util_suite()));
}
