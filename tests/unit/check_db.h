/*
 * check_db.h: what the suites that work on real files share: a temporary
 * directory per test case (made by its fixture, then removed with all it
 * holds), and, for those that run SQLite, SQL a test needs to succeed.
 */
#ifndef FORKQ_CHECK_DB_H
#define FORKQ_CHECK_DB_H

#include <sys/stat.h>

#include <check.h>
#include <ftw.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>

/* Makes dir (len bytes) a new directory /tmp/forkq-check-NAME-XXXXXX. */
static inline void
check_tmpdir_make(char *dir, size_t len, const char *name)
{
	snprintf(dir, len, "/tmp/forkq-check-%s-XXXXXX", name);
	ck_assert_ptr_nonnull(mkdtemp(dir));
}

static inline int
check_tmpdir_remove_cb(const char *path, const struct stat *sb, int flag,
    struct FTW *ftw)
{
	return (remove(path));
}

/* Removes dir and everything under it. */
static inline void
check_tmpdir_remove(const char *dir)
{
	nftw(dir, check_tmpdir_remove_cb, 8, FTW_DEPTH | FTW_PHYS);
}

/* Runs sql on db; the test fails, naming it, if it does not succeed. */
static inline void
check_sql_ok(sqlite3 *db, const char *sql)
{
	char	*err = NULL;

	ck_assert_msg(sqlite3_exec(db, sql, NULL, NULL, &err) == SQLITE_OK,
	    "%s: %s", sql, err != NULL ? err : "?");
}

#endif
