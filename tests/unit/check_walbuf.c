/*
 * check_walbuf.c: unit tests of walbuf.c, the store's VFS, with SQLite
 * itself on a temporary database in WAL mode: a writer connection through
 * the VFS (as store.c opens its own), and a reader through SQLite's
 * default VFS, as a user's sqlite3 shell reads forkqd's database.
 *
 * What they hold it to: a commit is in the WAL file when COMMIT returns
 * (the reader sees it while the writer stays open); a write that fails
 * fails the commit it belongs to, the frame headers rewritten after the
 * commit's last page among them; transactions larger than the buffer,
 * frames written over within a transaction, and frames written again
 * after a rollback read back whole.
 */
#include "config.h"

#include <sys/resource.h>
#include <sys/stat.h>

#include <check.h>
#include <errno.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forkqd.h"
#include "check_db.h"
#include "check_run.h"

static char	base_dir[64];		/* per test case */
static char	db_file[160];		/* per test */
static sqlite3	*writer;		/* through WALBUF_VFS */
static sqlite3	*reader;		/* through the default VFS */

static void
base_setup(void)
{
	check_tmpdir_make(base_dir, sizeof base_dir, "walbuf");
}

static void
base_teardown(void)
{
	check_tmpdir_remove(base_dir);
}

/* The writer as store.c sets up its connection, and a table to fill. */
static void
db_setup(void)
{
	char	dir[128];

	snprintf(dir, sizeof dir, "%s/t-XXXXXX", base_dir);
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(db_file, sizeof db_file, "%s/test.db", dir);
	ck_assert_int_eq(walbuf_register(), 0);
	ck_assert_int_eq(sqlite3_open_v2(db_file, &writer,
	    SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, WALBUF_VFS),
	    SQLITE_OK);
	check_sql_ok(writer, "PRAGMA page_size = 1024");
	check_sql_ok(writer, "PRAGMA journal_mode = WAL");
	check_sql_ok(writer, "PRAGMA synchronous = NORMAL");
	check_sql_ok(writer, "CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)");
	ck_assert_int_eq(sqlite3_open_v2(db_file, &reader,
	    SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
}

static void
db_teardown(void)
{
	sqlite3_vfs	*unix_vfs = sqlite3_vfs_find("unix");

	sqlite3_close(reader);
	sqlite3_close(writer);
	reader = writer = NULL;
	if (unix_vfs != NULL)
		unix_vfs->xSetSystemCall(unix_vfs, NULL, NULL);
}

/* Rows n, and the sum of their ids and body lengths, as db sees them. */
static void
read_rows(sqlite3 *db, int64_t *n, int64_t *sum)
{
	sqlite3_stmt	*st;

	ck_assert_int_eq(sqlite3_prepare_v2(db, "SELECT count(*),"
	    " coalesce(sum(id + length(body)), 0) FROM t", -1, &st, NULL),
	    SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
	*n = sqlite3_column_int64(st, 0);
	*sum = sqlite3_column_int64(st, 1);
	sqlite3_finalize(st);
}

/* Inserts ids from..to-1 with bodies of len bytes, in db's transaction. */
static int
insert_rows(sqlite3 *db, int from, int to, int len)
{
	sqlite3_stmt	*st;
	char		*body;
	int		 id, rc = SQLITE_OK;

	body = malloc((size_t)len + 1);
	ck_assert_ptr_nonnull(body);
	memset(body, 'x', (size_t)len);
	body[len] = '\0';
	ck_assert_int_eq(sqlite3_prepare_v2(db, "INSERT INTO t (id, body)"
	    " VALUES (?1, ?2)", -1, &st, NULL), SQLITE_OK);
	for (id = from; id < to && rc == SQLITE_OK; id++) {
		sqlite3_bind_int(st, 1, id);
		sqlite3_bind_text(st, 2, body, len, SQLITE_STATIC);
		rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK :
		    sqlite3_errcode(db);
		sqlite3_reset(st);
	}
	sqlite3_finalize(st);
	free(body);
	return (rc);
}

/* Rows from..to-1 of len bytes, in one transaction of the writer's. */
static void
commit_rows(int from, int to, int len)
{
	check_sql_ok(writer, "BEGIN");
	ck_assert_int_eq(insert_rows(writer, from, to, len), SQLITE_OK);
	check_sql_ok(writer, "COMMIT");
}

static int64_t
expected_sum(int from, int to, int len)
{
	int64_t	sum = 0;
	int	id;

	for (id = from; id < to; id++)
		sum += id + len;
	return (sum);
}

START_TEST(test_commit_is_in_the_wal_when_commit_returns)
{
	int64_t	n, sum;

	commit_rows(1, 40, 300);
	/* The writer stays open: the rows are only in its WAL. */
	read_rows(reader, &n, &sum);
	ck_assert_int_eq(n, 39);
	ck_assert_int_eq(sum, expected_sum(1, 40, 300));

	commit_rows(40, 41, 10);
	read_rows(reader, &n, &sum);
	ck_assert_int_eq(n, 40);
}
END_TEST

START_TEST(test_transaction_larger_than_the_buffer)
{
	int64_t	n, sum;

	/* About 1.5 MiB of pages, many times what the buffer holds. */
	commit_rows(1, 3001, 500);
	read_rows(reader, &n, &sum);
	ck_assert_int_eq(n, 3000);
	ck_assert_int_eq(sum, expected_sum(1, 3001, 500));
	read_rows(writer, &n, &sum);
	ck_assert_int_eq(n, 3000);
}
END_TEST

START_TEST(test_frames_written_again_after_a_rollback)
{
	int64_t	n, sum;

	/* A small page cache spills the transaction's pages into the WAL
	 * before its commit; the rollback leaves them there, past the last
	 * commit, and the next transaction writes over them. */
	check_sql_ok(writer, "PRAGMA cache_size = 8");
	check_sql_ok(writer, "BEGIN");
	ck_assert_int_eq(insert_rows(writer, 1, 500, 400), SQLITE_OK);
	check_sql_ok(writer, "ROLLBACK");
	commit_rows(1000, 1100, 200);
	read_rows(reader, &n, &sum);
	ck_assert_int_eq(n, 100);
	ck_assert_int_eq(sum, expected_sum(1000, 1100, 200));
	check_sql_ok(reader, "PRAGMA integrity_check");
}
END_TEST

START_TEST(test_frames_rewritten_within_a_transaction)
{
	int64_t	n, sum;

	/* Pages spilled early and changed again are written over in place,
	 * behind the end of the WAL: not contiguous with what came last. */
	check_sql_ok(writer, "PRAGMA cache_size = 8");
	check_sql_ok(writer, "BEGIN");
	ck_assert_int_eq(insert_rows(writer, 1, 400, 300), SQLITE_OK);
	check_sql_ok(writer, "UPDATE t SET body = body || 'yy'");
	check_sql_ok(writer, "UPDATE t SET body = body || 'z' WHERE id % 2 = 0");
	check_sql_ok(writer, "COMMIT");
	read_rows(reader, &n, &sum);
	ck_assert_int_eq(n, 399);
	ck_assert_int_eq(sum, expected_sum(1, 400, 302) + 199);
	check_sql_ok(reader, "PRAGMA integrity_check");
}
END_TEST

/*
 * Faults in the writes under the VFS: the unix VFS's pwrite (or pwrite64,
 * as SQLite was built) replaced by one that fails what the test names;
 * db_teardown puts SQLite's own back.
 */
static sqlite3_syscall_ptr	 real_pwrite, real_pwrite64;
static off_t			 written_end[256];	/* by fd */
static int			 fail_header_rewrites;
static size_t			 fail_longer_than;	/* 0 = none */
static off_t			 fail_at = -1;
static int			 failed;		/* writes failed */

/*
 * Fails the commit frame's header when SQLite writes it again, below the
 * end of what it wrote to the file: after a commit whose transaction wrote
 * pages over in place, SQLite rewrites the frame headers from there on to
 * fix their checksums, and the commit frame's comes last, after the page
 * that ends the commit. And writes longer than fail_longer_than, or
 * starting at fail_at.
 */
static int
write_fails(int fd, const unsigned char *b, size_t n, off_t off)
{
	int	fail = 0;

	if (fd < 0 || fd >= 256)
		return (0);
	if (fail_header_rewrites && n == 24 && off < written_end[fd] &&
	    (b[4] | b[5] | b[6] | b[7]) != 0)
		fail = 1;
	if ((fail_longer_than > 0 && n > fail_longer_than) || off == fail_at)
		fail = 1;
	if (fail) {
		failed++;
		errno = EIO;
		return (1);
	}
	if (off + (off_t)n > written_end[fd])
		written_end[fd] = off + (off_t)n;
	return (0);
}

static ssize_t
faulty_pwrite(int fd, const void *buf, size_t n, off_t off)
{
	ssize_t	(*pw)(int, const void *, size_t, off_t) =
	    (ssize_t (*)(int, const void *, size_t, off_t))real_pwrite;

	return (write_fails(fd, buf, n, off) ? -1 : pw(fd, buf, n, off));
}

static ssize_t
faulty_pwrite64(int fd, const void *buf, size_t n, off64_t off)
{
	ssize_t	(*pw)(int, const void *, size_t, off64_t) =
	    (ssize_t (*)(int, const void *, size_t, off64_t))real_pwrite64;

	return (write_fails(fd, buf, n, (off_t)off) ? -1 :
	    pw(fd, buf, n, off));
}

static void
faults_install(void)
{
	sqlite3_vfs	*unix_vfs = sqlite3_vfs_find("unix");

	ck_assert_ptr_nonnull(unix_vfs);
	real_pwrite = unix_vfs->xGetSystemCall(unix_vfs, "pwrite");
	real_pwrite64 = unix_vfs->xGetSystemCall(unix_vfs, "pwrite64");
	ck_assert(real_pwrite != NULL || real_pwrite64 != NULL);
	if (real_pwrite != NULL)
		ck_assert_int_eq(unix_vfs->xSetSystemCall(unix_vfs, "pwrite",
		    (sqlite3_syscall_ptr)faulty_pwrite), SQLITE_OK);
	if (real_pwrite64 != NULL)
		ck_assert_int_eq(unix_vfs->xSetSystemCall(unix_vfs,
		    "pwrite64", (sqlite3_syscall_ptr)faulty_pwrite64),
		    SQLITE_OK);
}

START_TEST(test_failed_header_rewrite_fails_its_commit)
{
	int64_t	n, sum;

	faults_install();
	check_sql_ok(writer, "PRAGMA cache_size = 8");
	check_sql_ok(writer, "BEGIN");
	ck_assert_int_eq(insert_rows(writer, 1, 300, 300), SQLITE_OK);
	check_sql_ok(writer, "UPDATE t SET body = body || 'yy'");
	fail_header_rewrites = 1;
	ck_assert_msg(sqlite3_exec(writer, "COMMIT", NULL, NULL, NULL) !=
	    SQLITE_OK, "COMMIT succeeded without its rewritten header");
	fail_header_rewrites = 0;
	ck_assert_int_eq(failed, 1);
	if (!sqlite3_get_autocommit(writer))
		sqlite3_exec(writer, "ROLLBACK", NULL, NULL, NULL);
	read_rows(reader, &n, &sum);
	ck_assert_int_eq(n, 0);
}
END_TEST

/*
 * The VFS alone, on a WAL file: the buffer's write fails as it overflows,
 * at frame k. A commit frame written later in that frame's place has its
 * header written below what was tried, so through at once; its page must
 * still go out (and fail) in its own xWrite, not wait behind the header.
 */
START_TEST(test_commit_page_in_place_of_a_failed_write)
{
	sqlite3_vfs		*vfs = sqlite3_vfs_find(WALBUF_VFS);
	sqlite3_file		*wal;
	unsigned char		 hdr[24], page[1024];
	char			 path[192];
	sqlite3_int64		 off = 32;
	int			 out, k, rc = SQLITE_OK;

	ck_assert_ptr_nonnull(vfs);
	faults_install();
	snprintf(path, sizeof path, "%s-wal", db_file);
	wal = calloc(1, (size_t)vfs->szOsFile);
	ck_assert_ptr_nonnull(wal);
	/* The writer's own WAL is buffered already: close the writer. */
	sqlite3_close(writer);
	writer = NULL;
	ck_assert_int_eq(vfs->xOpen(vfs, path, wal, SQLITE_OPEN_READWRITE |
	    SQLITE_OPEN_CREATE | SQLITE_OPEN_WAL, &out), SQLITE_OK);
	memset(hdr, 0, sizeof hdr);
	memset(page, 'p', sizeof page);
	fail_longer_than = 4096;	/* only the buffer's own writes */
	for (k = 0; k < 10000; k++) {
		if ((rc = wal->pMethods->xWrite(wal, hdr, 24, off)) !=
		    SQLITE_OK ||
		    (rc = wal->pMethods->xWrite(wal, page, 1024, off + 24)) !=
		    SQLITE_OK)
			break;
		off += 24 + 1024;
	}
	ck_assert_int_ne(rc, SQLITE_OK);
	fail_longer_than = 0;
	hdr[7] = 1;			/* a commit frame, in frame k's place */
	ck_assert_int_eq(wal->pMethods->xWrite(wal, hdr, 24, off), SQLITE_OK);
	fail_at = off + 24;
	failed = 0;
	ck_assert_msg(wal->pMethods->xWrite(wal, page, 1024, off + 24) !=
	    SQLITE_OK, "the commit's page was held past its xWrite");
	ck_assert_int_eq(failed, 1);
	fail_at = -1;
	wal->pMethods->xClose(wal);
	free(wal);
}
END_TEST

/*
 * A commit small enough to be held whole until its last frame: the file
 * size limit lets none of it into the WAL, so its one write fails, and
 * COMMIT must say so. Were the write left for later (the shm barrier,
 * which cannot fail), COMMIT would succeed with nothing in the file.
 */
START_TEST(test_failed_write_fails_its_commit)
{
	struct rlimit	rl;
	struct stat	st;
	char		wal[192];
	int64_t		n, sum;
	int		rc;

	commit_rows(1, 5, 100);
	snprintf(wal, sizeof wal, "%s-wal", db_file);
	ck_assert_int_eq(stat(wal, &st), 0);

	signal(SIGXFSZ, SIG_IGN);
	ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &rl), 0);
	rl.rlim_cur = (rlim_t)st.st_size;
	ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
	check_sql_ok(writer, "BEGIN");
	ck_assert_int_eq(insert_rows(writer, 5, 8, 100), SQLITE_OK);
	rc = sqlite3_exec(writer, "COMMIT", NULL, NULL, NULL);
	ck_assert_msg(rc != SQLITE_OK, "COMMIT succeeded without its write");
	if (!sqlite3_get_autocommit(writer))
		sqlite3_exec(writer, "ROLLBACK", NULL, NULL, NULL);

	rl.rlim_cur = rl.rlim_max;
	ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
	read_rows(reader, &n, &sum);
	ck_assert_int_eq(n, 4);
	/* And the writer goes on once the file may grow again. */
	commit_rows(5, 8, 100);
	read_rows(reader, &n, &sum);
	ck_assert_int_eq(n, 7);
	ck_assert_int_eq(sum, expected_sum(1, 8, 100));
}
END_TEST

static Suite *
walbuf_suite(void)
{
	Suite	*s = suite_create("walbuf");
	TCase	*tc = tcase_create("wal");

	tcase_add_unchecked_fixture(tc, base_setup, base_teardown);
	tcase_add_checked_fixture(tc, db_setup, db_teardown);
	tcase_add_test(tc, test_commit_is_in_the_wal_when_commit_returns);
	tcase_add_test(tc, test_transaction_larger_than_the_buffer);
	tcase_add_test(tc, test_frames_written_again_after_a_rollback);
	tcase_add_test(tc, test_frames_rewritten_within_a_transaction);
	tcase_add_test(tc, test_failed_write_fails_its_commit);
	tcase_add_test(tc, test_failed_header_rewrite_fails_its_commit);
	tcase_add_test(tc, test_commit_page_in_place_of_a_failed_write);
	suite_add_tcase(s, tc);
	return (s);
}

int
main(void)
{
	return (check_run(walbuf_suite()));
}
