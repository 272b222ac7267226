/*
 * check_event.c: unit tests of the event log's writes (event.c). The
 * events released together (after a commit) go to the log in one write
 * of whole lines; these tests hold it to what one write per line
 * promised: every line in order, and after a write that went in only in
 * part (a file size limit, as a full disk would do), only whole lines in
 * the file, the rest counted in the log.dropped line that follows once the
 * log takes lines again.
 */
#include "config.h"

#include <sys/resource.h>
#include <sys/stat.h>

#include <check.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forkqd.h"
#include "check_db.h"
#include "check_run.h"

static char	dir[64];
static char	log_file[PATH_MAX];

/* The log may grow to max bytes; RLIM_INFINITY: as the hard limit lets it. */
static void
log_may_grow_to(rlim_t max)
{
	struct rlimit	rl;

	ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &rl), 0);
	rl.rlim_cur = max == RLIM_INFINITY ? rl.rlim_max : max;
	ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
}

static void
setup(void)
{
	char	*cause = NULL;

	/* A write past the file size limit fails (EFBIG), as forkqd has it. */
	signal(SIGXFSZ, SIG_IGN);
	check_tmpdir_make(dir, sizeof dir, "event");
	snprintf(log_file, sizeof log_file, "%s/events.log", dir);
	ck_assert_int_eq(event_open_log(log_file, &cause), 0);
	event_start();
}

static void
teardown(void)
{
	log_may_grow_to(RLIM_INFINITY);
	event_close();
	check_tmpdir_remove(dir);
}

/* The log's lines, parsed; each must be a whole JSON object. */
static json_t *
log_lines(void)
{
	json_t		*lines = json_array(), *o;
	json_error_t	 err;
	char		*buf = NULL;
	size_t		 cap = 0;
	ssize_t		 n;
	FILE		*f;

	ck_assert_ptr_nonnull(f = fopen(log_file, "r"));
	while ((n = getline(&buf, &cap, f)) != -1) {
		ck_assert_msg(n > 0 && buf[n - 1] == '\n',
		    "a line of the log is not whole: %s", buf);
		o = json_loads(buf, 0, &err);
		ck_assert_msg(o != NULL, "not JSON: %s (%s)", buf, err.text);
		json_array_append_new(lines, o);
	}
	free(buf);
	fclose(f);
	return (lines);
}

static const char *
line_event(json_t *lines, size_t i)
{
	return (json_string_value(json_object_get(json_array_get(lines, i),
	    "event")));
}

static json_int_t
line_int(json_t *lines, size_t i, const char *key)
{
	return (json_integer_value(json_object_get(json_array_get(lines, i),
	    key)));
}

static off_t
log_size(void)
{
	struct stat	st;

	ck_assert_int_eq(stat(log_file, &st), 0);
	return (st.st_size);
}

/*
 * The log holds the n test events of want (their i, in order), then a
 * log.dropped telling of dropped lines.
 */
static void
assert_logged_then_dropped(const int *want, size_t n, json_int_t dropped)
{
	json_t	*lines = log_lines();
	size_t	 i;

	ck_assert_uint_eq(json_array_size(lines), n + 1);
	for (i = 0; i < n; i++)
		ck_assert_int_eq(line_int(lines, i, "i"), want[i]);
	ck_assert_str_eq(line_event(lines, n), "log.dropped");
	ck_assert_int_eq(line_int(lines, n, "lines"), dropped);
	json_decref(lines);
}

/* Emits test.event with field i and a pad of padlen bytes. */
static void
emit_padded(int i, size_t padlen)
{
	char	*pad = malloc(padlen + 1);

	ck_assert_ptr_nonnull(pad);
	memset(pad, 'x', padlen);
	pad[padlen] = '\0';
	event_emit(EV_LEVEL_INFO, "test.event", 0,
	    json_pack("{s:i, s:s}", "i", i, "pad", pad));
	free(pad);
}

START_TEST(test_released_events_all_logged_in_order)
{
	json_t	*lines;
	int	 i;

	for (i = 0; i < 5; i++)
		emit_padded(i, 10);
	event_release();
	lines = log_lines();
	ck_assert_uint_eq(json_array_size(lines), 5);
	for (i = 0; i < 5; i++) {
		ck_assert_str_eq(line_event(lines, i), "test.event");
		ck_assert_int_eq(line_int(lines, i, "i"), i);
	}
	json_decref(lines);
}
END_TEST

/* More than one batch's worth at once: split, nothing lost or reordered. */
START_TEST(test_release_larger_than_a_batch)
{
	json_t	*lines;
	int	 i, n = 400;

	for (i = 0; i < n; i++)
		emit_padded(i, 1000);	/* ~400 KiB in all */
	event_release();
	lines = log_lines();
	ck_assert_uint_eq(json_array_size(lines), (size_t)n);
	for (i = 0; i < n; i++)
		ck_assert_int_eq(line_int(lines, i, "i"), i);
	json_decref(lines);
}
END_TEST

/*
 * Three lines released together, the file allowed to grow by the first and
 * half the second: the first stays, the half line is cut off, and the two
 * missed are told of after the next line that goes in.
 */
START_TEST(test_partly_written_release_keeps_whole_lines)
{
	off_t	one;

	/* The size of one such line, from a release of its own. */
	emit_padded(0, 200);
	event_release();
	one = log_size();
	ck_assert_int_gt(one, 200);

	log_may_grow_to((rlim_t)(one + one + one / 2));
	emit_padded(1, 200);
	emit_padded(2, 200);
	emit_padded(3, 200);
	event_release();
	ck_assert_int_eq(log_size(), one + one);

	log_may_grow_to(RLIM_INFINITY);
	emit_padded(4, 200);
	event_release();

	assert_logged_then_dropped((const int []){ 0, 1, 4 }, 3, 2);
}
END_TEST

/* Nothing of a release fits: all of it is counted. */
START_TEST(test_release_that_writes_nothing_counts_every_line)
{
	emit_padded(0, 50);
	event_release();
	log_may_grow_to((rlim_t)log_size());
	emit_padded(1, 50);
	emit_padded(2, 50);
	emit_padded(3, 50);
	event_release();
	log_may_grow_to(RLIM_INFINITY);
	emit_padded(4, 50);
	event_release();

	assert_logged_then_dropped((const int []){ 0, 4 }, 2, 3);
}
END_TEST

/* A line longer than SPILL_MIN is kept in events.spill, not in memory. */
START_TEST(test_long_line_is_kept_in_the_spill_file)
{
	char		path[PATH_MAX];
	struct stat	st;
	off_t		one;

	config.state_dir = dir;
	snprintf(path, sizeof path, "%s/events.spill", dir);
	emit_padded(0, 100);
	event_release();
	one = log_size();
	ck_assert_int_eq(stat(path, &st), -1);
	emit_padded(1, SPILL_MIN + 100);
	event_release();
	/* The spill file holds the second line, as the log does. */
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(st.st_size, log_size() - one);
}
END_TEST

/*
 * The ring keeps at most event_ring_bytes_max bytes of lines, the oldest
 * going first: 16,384 events of 1 MiB argvs were 16 GiB.
 */
START_TEST(test_ring_bounded_by_bytes)
{
	size_t	bytes, kept, line;
	int	i;

	config.state_dir = dir;
	event_ring_bytes_max = 64 * 1024;
	emit_padded(0, 5000);
	event_release();
	ck_assert_uint_eq(event_kept(&line), 1);
	for (i = 1; i < 100; i++)
		emit_padded(i, 5000);
	event_release();
	kept = event_kept(&bytes);
	event_ring_bytes_max = (size_t)256 * 1024 * 1024;
	/* Lines differ by the digits of i: a byte or two. */
	ck_assert_uint_le(bytes, 64 * 1024);
	ck_assert_uint_gt(bytes + line + 2, 64 * 1024);
	ck_assert_uint_eq(kept, bytes / line);
}
END_TEST

static void
spill_setup(void)
{
	check_tmpdir_make(dir, sizeof dir, "spill");
	config.state_dir = dir;
}

static void
spill_teardown(void)
{
	spill_reset();
	check_tmpdir_remove(dir);
}

static char *
line_of(int c, size_t len)
{
	char	*line = malloc(len);

	ck_assert_ptr_nonnull(line);
	memset(line, c, len);
	line[len - 1] = '\n';
	return (line);
}

static off_t
spill_size(void)
{
	char		path[PATH_MAX];
	struct stat	st;

	snprintf(path, sizeof path, "%s/events.spill", dir);
	if (stat(path, &st) == -1)
		return (-1);
	return (st.st_size);
}

/*
 * Lines come back as written, also once older ones were forgotten; with
 * none kept the file is emptied and written from the start again; at
 * close it goes.
 */
START_TEST(test_spill_reads_back_forgets_and_empties)
{
	char		*a = line_of('a', 5000), *b = line_of('b', 7000);
	char		*c = line_of('c', 6000);
	int64_t		 oa, ob, oc;
	const char	*got;

	ck_assert_int_eq(oa = spill_write(a, 5000), 0);
	ck_assert_int_eq(ob = spill_write(b, 7000), 5000);
	ck_assert_ptr_nonnull(got = spill_read(oa, 5000));
	ck_assert_mem_eq(got, a, 5000);
	spill_forget(oa, 5000);
	ck_assert_ptr_nonnull(got = spill_read(ob, 7000));
	ck_assert_mem_eq(got, b, 7000);
	ck_assert_int_eq(spill_size(), 12000);
	spill_forget(ob, 7000);
	ck_assert_int_eq(spill_size(), 0);
	ck_assert_int_eq(oc = spill_write(c, 6000), 0);
	ck_assert_ptr_nonnull(got = spill_read(oc, 6000));
	ck_assert_mem_eq(got, c, 6000);
	spill_reset();
	ck_assert_int_eq(spill_size(), -1);
	free(a);
	free(b);
	free(c);
}
END_TEST

/* Can holes be punched in a file of dir (not on every file system)? */
static int
holes_punched_here(void)
{
	char	path[PATH_MAX];
	int	fd, ok;

	snprintf(path, sizeof path, "%s/probe", dir);
	ck_assert_int_ne(fd = open(path, O_RDWR | O_CREAT, 0600), -1);
	ck_assert_int_eq(ftruncate(fd, 65536), 0);
	ok = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
	    4096) == 0;
	close(fd);
	unlink(path);
	return (ok);
}

/*
 * Lines a little over a block, forgotten oldest first: the blocks two
 * neighbours share are given back too. A hole of each line alone once
 * left them allocated, the file growing by a block a line.
 */
START_TEST(test_spill_gives_back_shared_blocks)
{
	char		*line = line_of('x', 4200), path[PATH_MAX];
	int64_t		 offs[40];
	struct stat	 st;
	int		 i;

	if (!holes_punched_here())
		return;		/* the emptying alone gives space back */
	for (i = 0; i < 40; i++)
		ck_assert_int_ne(offs[i] = spill_write(line, 4200), -1);
	for (i = 0; i < 39; i++)
		spill_forget(offs[i], 4200);
	snprintf(path, sizeof path, "%s/events.spill", dir);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(st.st_size, 40 * 4200);
	/* The last line, within three blocks (and their neighbours). */
	ck_assert_int_le((int64_t)st.st_blocks * 512, 4 * 4096);
	free(line);
}
END_TEST

static Suite *
event_suite(void)
{
	Suite	*s = suite_create("event");
	TCase	*tc = tcase_create("log");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_released_events_all_logged_in_order);
	tcase_add_test(tc, test_release_larger_than_a_batch);
	tcase_add_test(tc, test_partly_written_release_keeps_whole_lines);
	tcase_add_test(tc, test_release_that_writes_nothing_counts_every_line);
	tcase_add_test(tc, test_long_line_is_kept_in_the_spill_file);
	tcase_add_test(tc, test_ring_bounded_by_bytes);
	suite_add_tcase(s, tc);

	tc = tcase_create("spill");
	tcase_add_checked_fixture(tc, spill_setup, spill_teardown);
	tcase_add_test(tc, test_spill_reads_back_forgets_and_empties);
	tcase_add_test(tc, test_spill_gives_back_shared_blocks);
	suite_add_tcase(s, tc);
	return (s);
}

int
main(void)
{
	return (check_run(event_suite()));
}
