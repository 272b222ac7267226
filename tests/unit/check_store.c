/*
 * check_store.c: unit tests of store.c against a temporary database: the
 * schema and its migrations, the task and attempt round trips, the unique
 * key, dispatch order, counts and pruning.
 *
 * Each test gets its own directory under a per-test-case temporary base; the
 * test case's unchecked teardown removes the base, so a failed test (whose
 * forked child never reaches its teardown) leaves nothing behind either.
 */
#include "config.h"

#include <sys/stat.h>

#include <check.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forkqd.h"
#include "check_db.h"
#include "check_run.h"

#define NOW	1700000000000LL	/* ms, the "now" of every insert */


/*
 * forkqd starts only committed tasks (a submit may still fail at commit),
 * so the dispatch query is asked after a commit, as in the daemon's loop.
 */
static int64_t
next_due_id(int64_t now, const char *const *full, size_t nfull)
{
	struct task_rec	*t = store_next_due(now, full, nfull);
	int64_t		 id = t != NULL ? t->id : 0;

	task_rec_free(t);
	return (id);
}

static int64_t
next_due_committed(int64_t now, const char *const *full, size_t nfull)
{
	ck_assert_int_eq(store_commit(), 0);
	return (next_due_id(now, full, nfull));
}

static char	base_dir[64];		/* per test case */
static char	test_dir[128];		/* per test, holds forkq.db */

static void
base_setup(void)
{
	check_tmpdir_make(base_dir, sizeof base_dir, "store");
}

static void
base_teardown(void)
{
	check_tmpdir_remove(base_dir);
}

static void
dir_setup(void)
{
	snprintf(test_dir, sizeof test_dir, "%s/t-XXXXXX", base_dir);
	ck_assert_ptr_nonnull(mkdtemp(test_dir));
}

static void
db_path(char *buf, size_t len, const char *suffix)
{
	snprintf(buf, len, "%s/forkq.db%s", test_dir, suffix);
}

static void
store_setup(void)
{
	char	*cause = NULL;

	dir_setup();
	ck_assert_msg(store_open(test_dir, &cause) == 0, "store_open: %s",
	    cause != NULL ? cause : "?");
}

static void
remove_db_files(void)
{
	static const char *const suffixes[] = {
		"", "-wal", "-shm", "-journal"
	};
	char			 path[256];
	size_t			 i;

	for (i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
		db_path(path, sizeof path, suffixes[i]);
		unlink(path);
	}
}

static void
store_teardown(void)
{
	store_close();
	remove_db_files();
	rmdir(test_dir);
}

/* A second connection to forkq.db, as any other reader would open it. */
static sqlite3 *
db_connect(void)
{
	sqlite3	*h = NULL;
	char	 path[256];

	db_path(path, sizeof path, "");
	ck_assert_int_eq(sqlite3_open_v2(path, &h, SQLITE_OPEN_READWRITE |
	    SQLITE_OPEN_CREATE, NULL), SQLITE_OK);
	return (h);
}

/* The single integer that sql returns, through a second connection. */
static int64_t
db_int(const char *sql)
{
	sqlite3		*h = db_connect();
	sqlite3_stmt	*st;
	int64_t		 v;

	ck_assert_int_eq(sqlite3_prepare_v2(h, sql, -1, &st, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
	v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(h);
	return (v);
}

/* A spec with every field set; clear with task_spec_clear. */
static void
full_spec(struct task_spec *spec)
{
	int	i;

	memset(spec, 0, sizeof *spec);
	spec->name = xstrdup("nap");
	spec->queue = xstrdup("slow");
	spec->argv_json = xstrdup("[\"sleep\",\"5\"]");
	spec->env_json = xstrdup("{\"A\":\"1\"}");
	spec->cwd = xstrdup("/tmp");
	spec->unique = xstrdup("key-1");
	spec->priority = -7;
	spec->max_attempts = 4;
	spec->timeout_ms = 60000;
	spec->heartbeat_timeout_ms = 5000;
	spec->backoff_base_ms = 250;
	spec->backoff_max_ms = 8000;
	spec->delay_ms = UNSET;
	spec->run_at = NOW + 123;
	for (i = 0; i < RLIM_COUNT; i++)
		spec->rlimits[i] = UNSET;
	spec->rlimits[0] = 10;		/* cpu */
	spec->rlimits[4] = 64;		/* nofile */
	spec->uid = 1001;
	spec->gid = 1002;
}

/* The least spec: no env, cwd, unique, rlimits; run now. */
static void
min_spec(struct task_spec *spec, const char *queue, int priority,
    int64_t run_at)
{
	int	i;

	memset(spec, 0, sizeof *spec);
	spec->name = xstrdup("t");
	spec->queue = xstrdup(queue);
	spec->argv_json = xstrdup("[\"true\"]");
	spec->priority = priority;
	spec->max_attempts = 1;
	spec->backoff_base_ms = 1000;
	spec->backoff_max_ms = 300000;
	spec->delay_ms = UNSET;
	spec->run_at = run_at;
	for (i = 0; i < RLIM_COUNT; i++)
		spec->rlimits[i] = UNSET;
	spec->uid = 1000;
	spec->gid = 1000;
}

/* Inserts spec at NOW, which must not be a duplicate; returns the id. */
static int64_t
insert_spec(const struct task_spec *spec)
{
	int64_t	id = 0;
	int	dup = -1;

	ck_assert_int_eq(store_task_insert(spec, NOW, &id, &dup, NULL), 0);
	ck_assert_int_eq(dup, 0);
	ck_assert_int_gt(id, 0);
	return (id);
}

static int64_t
add_task(const char *queue, int priority, int64_t run_at)
{
	struct task_spec	spec;
	int64_t			id;

	min_spec(&spec, queue, priority, run_at);
	id = insert_spec(&spec);
	task_spec_clear(&spec);
	return (id);
}

static int64_t
add_unique(const char *key)
{
	struct task_spec	spec;
	int64_t			id;

	min_spec(&spec, "default", 0, UNSET);
	spec.unique = xstrdup(key);
	id = insert_spec(&spec);
	task_spec_clear(&spec);
	return (id);
}

/*
 * Moves task id to state, finished at finished_at (UNSET for none), telling
 * the counts as task_set_state() does.
 */
static void
set_state(int64_t id, enum task_state state, int64_t finished_at)
{
	struct task_rec	*t;

	t = store_task_get(id);
	ck_assert_ptr_nonnull(t);
	store_count_transition(t->state, state);
	t->state = state;
	t->finished_at = finished_at;
	ck_assert_int_eq(store_task_update(t), 0);
	task_rec_free(t);
}

static void
start_attempt(int64_t id, int n, int64_t pid, int64_t started_at)
{
	struct task_rec		*t;
	struct attempt_rec	 a;

	t = store_task_get(id);
	ck_assert_ptr_nonnull(t);
	store_count_transition(t->state, TASK_RUNNING);
	t->state = TASK_RUNNING;
	t->attempt = n;
	t->pid = pid;
	t->started_at = started_at;
	memset(&a, 0, sizeof a);
	a.task_id = id;
	a.n = n;
	a.pid = pid;
	a.pid_start = 5000 + n;
	a.started_at = started_at;
	a.finished_at = UNSET;
	ck_assert_int_eq(store_attempt_started(t, &a), 0);
	task_rec_free(t);
}

static void
free_attempts(struct attempt_rec **as, size_t n)
{
	size_t	i;

	for (i = 0; i < n; i++)
		attempt_rec_free(as[i]);
	free(as);
}

static void
free_tasks(struct task_rec **ts, size_t n)
{
	size_t	i;

	for (i = 0; i < n; i++)
		task_rec_free(ts[i]);
	free(ts);
}

START_TEST(test_open_creates_db_with_schema_version)
{
	char		path[256];
	struct stat	sb;

	db_path(path, sizeof path, "");
	ck_assert_int_eq(stat(path, &sb), 0);
	ck_assert_int_eq(db_int("PRAGMA user_version"), STORE_SCHEMA_VERSION);
}
END_TEST

START_TEST(test_open_uses_wal_journal)
{
	sqlite3		*h = db_connect();
	sqlite3_stmt	*st;

	ck_assert_int_eq(sqlite3_prepare_v2(h, "PRAGMA journal_mode", -1, &st,
	    NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
	ck_assert_str_eq((const char *)sqlite3_column_text(st, 0), "wal");
	sqlite3_finalize(st);
	sqlite3_close(h);
}
END_TEST

START_TEST(test_open_is_healthy)
{
	char	*cause = NULL;

	ck_assert_int_eq(store_healthy(&cause), 0);
	ck_assert_ptr_null(cause);
}
END_TEST

START_TEST(test_reopen_keeps_tasks)
{
	struct task_rec	*t;
	char		*cause = NULL;
	int64_t		 id;

	id = add_task("default", 0, UNSET);
	ck_assert_int_eq(store_commit(), 0);
	store_close();
	ck_assert_int_eq(store_open(test_dir, &cause), 0);
	t = store_task_get(id);
	ck_assert_ptr_nonnull(t);
	ck_assert_int_eq(t->id, id);
	task_rec_free(t);
	ck_assert_int_eq(db_int("PRAGMA user_version"), STORE_SCHEMA_VERSION);
}
END_TEST

START_TEST(test_close_commits_pending_writes)
{
	add_task("default", 0, UNSET);
	store_close();
	ck_assert_int_eq(db_int("SELECT count(*) FROM tasks"), 1);
}
END_TEST

START_TEST(test_insert_visible_to_others_after_commit)
{
	add_task("default", 0, UNSET);
	ck_assert_int_eq(db_int("SELECT count(*) FROM tasks"), 0);
	ck_assert_int_eq(store_commit(), 0);
	ck_assert_int_eq(db_int("SELECT count(*) FROM tasks"), 1);
}
END_TEST

START_TEST(test_insert_get_round_trip)
{
	struct task_spec	 spec;
	struct task_rec		*t;
	json_t			*rl;
	int64_t			 id;

	full_spec(&spec);
	id = insert_spec(&spec);
	task_spec_clear(&spec);
	ck_assert_int_eq(store_commit(), 0);

	t = store_task_get(id);
	ck_assert_ptr_nonnull(t);
	ck_assert_int_eq(t->id, id);
	ck_assert_str_eq(t->name, "nap");
	ck_assert_str_eq(t->queue, "slow");
	ck_assert_str_eq(t->argv_json, "[\"sleep\",\"5\"]");
	ck_assert_str_eq(t->env_json, "{\"A\":\"1\"}");
	ck_assert_str_eq(t->cwd, "/tmp");
	ck_assert_str_eq(t->unique, "key-1");
	ck_assert_ptr_nonnull(t->rlimits_json);
	rl = json_loads(t->rlimits_json, 0, NULL);
	ck_assert_ptr_nonnull(rl);
	ck_assert_uint_eq(json_object_size(rl), 2);
	ck_assert_int_eq(json_integer_value(json_object_get(rl, "cpu")), 10);
	ck_assert_int_eq(json_integer_value(json_object_get(rl, "nofile")), 64);
	json_decref(rl);
	ck_assert_int_eq(t->state, TASK_QUEUED);
	ck_assert_int_eq(t->priority, -7);
	ck_assert_int_eq(t->attempt, 0);
	ck_assert_int_eq(t->max_attempts, 4);
	ck_assert_int_eq(t->attempts_per_run, 4);
	ck_assert_int_eq(t->created_at, NOW);
	ck_assert_int_eq(t->run_at, NOW + 123);
	ck_assert_int_eq(t->started_at, UNSET);
	ck_assert_int_eq(t->finished_at, UNSET);
	ck_assert_int_eq(t->outcome, OUTCOME_NONE);
	ck_assert_int_eq(t->exit_code, UNSET);
	ck_assert_int_eq(t->signal, 0);
	ck_assert_ptr_null(t->error);
	ck_assert_int_eq(t->progress, UNSET);
	ck_assert_ptr_null(t->progress_message);
	ck_assert_int_eq(t->pid, UNSET);
	ck_assert_int_eq(t->last_heartbeat_at, UNSET);
	ck_assert_int_eq(t->timeout_ms, 60000);
	ck_assert_int_eq(t->heartbeat_timeout_ms, 5000);
	ck_assert_int_eq(t->backoff_base_ms, 250);
	ck_assert_int_eq(t->backoff_max_ms, 8000);
	ck_assert_uint_eq(t->uid, 1001);
	ck_assert_uint_eq(t->gid, 1002);
	task_rec_free(t);
}
END_TEST

/* Is string a as b, NULL included? */
static void
assert_same_str(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		ck_assert_ptr_eq(a, b);
	else
		ck_assert_str_eq(a, b);
}

/* The row store_task_insert hands back is the one store_task_get reads. */
static void
assert_row_as_read_back(struct task_spec *spec)
{
	struct task_rec	*row, *t;
	int64_t		 id = 0;
	int		 dup = -1;

	ck_assert_int_eq(store_task_insert(spec, NOW, &id, &dup, &row), 0);
	ck_assert_int_eq(dup, 0);
	ck_assert_ptr_nonnull(row);
	t = store_task_get(id);
	ck_assert_ptr_nonnull(t);
	ck_assert_int_eq(row->id, t->id);
	assert_same_str(row->name, t->name);
	assert_same_str(row->queue, t->queue);
	assert_same_str(row->argv_json, t->argv_json);
	assert_same_str(row->env_json, t->env_json);
	assert_same_str(row->cwd, t->cwd);
	assert_same_str(row->unique, t->unique);
	assert_same_str(row->rlimits_json, t->rlimits_json);
	ck_assert_int_eq(row->state, t->state);
	ck_assert_int_eq(row->priority, t->priority);
	ck_assert_int_eq(row->attempt, t->attempt);
	ck_assert_int_eq(row->max_attempts, t->max_attempts);
	ck_assert_int_eq(row->attempts_per_run, t->attempts_per_run);
	ck_assert_int_eq(row->created_at, t->created_at);
	ck_assert_int_eq(row->run_at, t->run_at);
	ck_assert_int_eq(row->started_at, t->started_at);
	ck_assert_int_eq(row->finished_at, t->finished_at);
	ck_assert_int_eq(row->outcome, t->outcome);
	ck_assert_int_eq(row->exit_code, t->exit_code);
	ck_assert_int_eq(row->signal, t->signal);
	assert_same_str(row->error, t->error);
	ck_assert_int_eq(row->progress, t->progress);
	assert_same_str(row->progress_message, t->progress_message);
	ck_assert_int_eq(row->pid, t->pid);
	ck_assert_int_eq(row->last_heartbeat_at, t->last_heartbeat_at);
	ck_assert_int_eq(row->timeout_ms, t->timeout_ms);
	ck_assert_int_eq(row->heartbeat_timeout_ms, t->heartbeat_timeout_ms);
	ck_assert_int_eq(row->backoff_base_ms, t->backoff_base_ms);
	ck_assert_int_eq(row->backoff_max_ms, t->backoff_max_ms);
	assert_same_str(row->after_json, t->after_json);
	ck_assert_uint_eq(row->uid, t->uid);
	ck_assert_uint_eq(row->gid, t->gid);
	ck_assert_int_eq(row->cancel_requested, t->cancel_requested);
	task_rec_free(row);
	task_rec_free(t);
}

START_TEST(test_insert_row_as_read_back)
{
	struct task_spec	spec;
	int64_t			dep;

	min_spec(&spec, "default", 0, UNSET);
	assert_row_as_read_back(&spec);
	task_spec_clear(&spec);

	dep = add_task("default", 0, UNSET);
	full_spec(&spec);
	spec.after = xcalloc(1, sizeof *spec.after);
	spec.after[0] = dep;
	spec.nafter = 1;
	spec.waiting_on = 1;
	assert_row_as_read_back(&spec);
	task_spec_clear(&spec);
}
END_TEST

START_TEST(test_insert_absent_fields_null)
{
	struct task_rec	*t;
	int64_t		 id;

	id = add_task("default", 0, UNSET);
	t = store_task_get(id);
	ck_assert_ptr_nonnull(t);
	ck_assert_ptr_null(t->env_json);
	ck_assert_ptr_null(t->cwd);
	ck_assert_ptr_null(t->unique);
	ck_assert_ptr_null(t->rlimits_json);
	task_rec_free(t);
}
END_TEST

START_TEST(test_insert_run_at_defaults_to_now)
{
	struct task_rec	*t;

	t = store_task_get(add_task("default", 0, UNSET));
	ck_assert_ptr_nonnull(t);
	ck_assert_int_eq(t->run_at, NOW);
	task_rec_free(t);
}
END_TEST

START_TEST(test_insert_delay_sets_run_at)
{
	struct task_spec	 spec;
	struct task_rec		*t;

	min_spec(&spec, "default", 0, UNSET);
	spec.delay_ms = 30000;
	t = store_task_get(insert_spec(&spec));
	task_spec_clear(&spec);
	ck_assert_ptr_nonnull(t);
	ck_assert_int_eq(t->run_at, NOW + 30000);
	task_rec_free(t);
}
END_TEST

START_TEST(test_get_missing_is_null)
{
	ck_assert_ptr_null(store_task_get(12345));
}
END_TEST

START_TEST(test_ids_increase)
{
	int64_t	a, b, c;

	a = add_task("default", 0, UNSET);
	b = add_task("default", 0, UNSET);
	c = add_task("other", 5, UNSET);
	ck_assert_int_gt(b, a);
	ck_assert_int_gt(c, b);
}
END_TEST

START_TEST(test_ids_not_reused_after_prune)
{
	int64_t	 a, b, *ids;
	size_t	 n;

	a = add_task("default", 0, UNSET);
	set_state(a, TASK_CANCELED, NOW);
	ck_assert_int_eq(store_prune(NOW + 1, 10, &ids, &n), 1);
	free(ids);
	b = add_task("default", 0, UNSET);
	ck_assert_int_gt(b, a);
}
END_TEST

START_TEST(test_update_round_trip)
{
	struct task_rec	*t;
	int64_t		 id;

	id = add_task("default", 0, UNSET);
	t = store_task_get(id);
	ck_assert_ptr_nonnull(t);
	t->state = TASK_FAILED;
	t->attempt = 2;
	t->max_attempts = 5;
	t->run_at = NOW + 1;
	t->started_at = NOW + 2;
	t->finished_at = NOW + 3;
	t->outcome = OUTCOME_EXIT;
	t->exit_code = 3;
	t->signal = SIGTERM;
	t->error = xstrdup("exited 3");
	t->progress = 80;
	t->progress_message = xstrdup("almost");
	t->pid = 4321;
	t->last_heartbeat_at = NOW + 4;
	ck_assert_int_eq(store_task_update(t), 0);
	task_rec_free(t);

	t = store_task_get(id);
	ck_assert_ptr_nonnull(t);
	ck_assert_int_eq(t->state, TASK_FAILED);
	ck_assert_int_eq(t->attempt, 2);
	ck_assert_int_eq(t->max_attempts, 5);
	ck_assert_int_eq(t->attempts_per_run, 1);
	ck_assert_int_eq(t->run_at, NOW + 1);
	ck_assert_int_eq(t->started_at, NOW + 2);
	ck_assert_int_eq(t->finished_at, NOW + 3);
	ck_assert_int_eq(t->outcome, OUTCOME_EXIT);
	ck_assert_int_eq(t->exit_code, 3);
	ck_assert_int_eq(t->signal, SIGTERM);
	ck_assert_str_eq(t->error, "exited 3");
	ck_assert_int_eq(t->progress, 80);
	ck_assert_str_eq(t->progress_message, "almost");
	ck_assert_int_eq(t->pid, 4321);
	ck_assert_int_eq(t->last_heartbeat_at, NOW + 4);
	task_rec_free(t);
}
END_TEST

START_TEST(test_update_back_to_null)
{
	struct task_rec	*t;
	int64_t		 id;

	id = add_task("default", 0, UNSET);
	t = store_task_get(id);
	t->exit_code = 1;
	t->signal = SIGKILL;
	t->error = xstrdup("x");
	t->pid = 1;
	ck_assert_int_eq(store_task_update(t), 0);
	free(t->error);
	t->error = NULL;
	t->exit_code = t->pid = UNSET;
	t->signal = 0;
	ck_assert_int_eq(store_task_update(t), 0);
	task_rec_free(t);

	t = store_task_get(id);
	ck_assert_int_eq(t->exit_code, UNSET);
	ck_assert_int_eq(t->signal, 0);
	ck_assert_ptr_null(t->error);
	ck_assert_int_eq(t->pid, UNSET);
	task_rec_free(t);
}
END_TEST

START_TEST(test_progress_round_trip)
{
	struct task_rec	*t;
	int64_t		 id;

	id = add_task("default", 0, UNSET);
	ck_assert_int_eq(store_task_progress(id, NOW + 9, 42, "step 2"), 0);
	t = store_task_get(id);
	ck_assert_int_eq(t->last_heartbeat_at, NOW + 9);
	ck_assert_int_eq(t->progress, 42);
	ck_assert_str_eq(t->progress_message, "step 2");
	task_rec_free(t);
}
END_TEST

START_TEST(test_unique_duplicate_while_queued)
{
	struct task_spec	spec;
	int64_t			first, id = 0;
	int			dup = 0;

	first = add_unique("k");
	min_spec(&spec, "default", 0, UNSET);
	spec.unique = xstrdup("k");
	ck_assert_int_eq(store_task_insert(&spec, NOW, &id, &dup, NULL), 0);
	task_spec_clear(&spec);
	ck_assert_int_eq(dup, 1);
	ck_assert_int_eq(id, first);
	ck_assert_int_eq(db_int("SELECT count(*) FROM tasks"), 0);
	ck_assert_int_eq(store_commit(), 0);
	ck_assert_int_eq(db_int("SELECT count(*) FROM tasks"), 1);
}
END_TEST

START_TEST(test_unique_duplicate_while_running)
{
	struct task_spec	spec;
	int64_t			first, id = 0;
	int			dup = 0;

	first = add_unique("k");
	set_state(first, TASK_RUNNING, UNSET);
	min_spec(&spec, "default", 0, UNSET);
	spec.unique = xstrdup("k");
	ck_assert_int_eq(store_task_insert(&spec, NOW, &id, &dup, NULL), 0);
	task_spec_clear(&spec);
	ck_assert_int_eq(dup, 1);
	ck_assert_int_eq(id, first);
}
END_TEST

START_TEST(test_unique_free_after_final)
{
	int64_t	first, second;

	first = add_unique("k");
	set_state(first, TASK_SUCCEEDED, NOW);
	second = add_unique("k");
	ck_assert_int_gt(second, first);
}
END_TEST

START_TEST(test_unique_other_key_inserted)
{
	int64_t	a, b;

	a = add_unique("k1");
	b = add_unique("k2");
	ck_assert_int_ne(a, b);
}
END_TEST

START_TEST(test_list_newest_first_filtered)
{
	struct task_filter	  f;
	struct task_rec		**ts;
	size_t			  n;
	int64_t			  a, b, c;

	a = add_task("default", 0, UNSET);
	b = add_task("other", 0, UNSET);
	c = add_task("default", 0, UNSET);
	set_state(c, TASK_RUNNING, UNSET);

	memset(&f, 0, sizeof f);
	f.state = -1;
	f.limit = 10;
	f.all_users = 1;
	ts = store_task_list(&f, &n);
	ck_assert_uint_eq(n, 3);
	ck_assert_int_eq(ts[0]->id, c);
	ck_assert_int_eq(ts[1]->id, b);
	ck_assert_int_eq(ts[2]->id, a);
	free_tasks(ts, n);

	f.queue = "default";
	f.state = TASK_QUEUED;
	ts = store_task_list(&f, &n);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(ts[0]->id, a);
	free_tasks(ts, n);

	/* None is an empty list; NULL is for a read that failed. */
	f.queue = "nosuch";
	ts = store_task_list(&f, &n);
	ck_assert_ptr_nonnull(ts);
	ck_assert_uint_eq(n, 0);
	free_tasks(ts, n);
}
END_TEST

START_TEST(test_next_due_priority_first)
{
	int64_t	low, high;

	low = add_task("default", 0, NOW - 5000);
	high = add_task("default", 10, NOW);
	ck_assert_int_gt(high, low);
	ck_assert_int_eq(next_due_committed(NOW, NULL, 0), high);
}
END_TEST

START_TEST(test_next_due_earlier_run_at_first)
{
	int64_t	later, earlier;

	later = add_task("default", 0, NOW - 1000);
	earlier = add_task("default", 0, NOW - 2000);
	ck_assert_int_gt(earlier, later);
	ck_assert_int_eq(next_due_committed(NOW, NULL, 0), earlier);
}
END_TEST

START_TEST(test_next_due_lower_id_first)
{
	int64_t	a;

	a = add_task("default", 0, NOW);
	add_task("default", 0, NOW);
	ck_assert_int_eq(next_due_committed(NOW, NULL, 0), a);
}
END_TEST

START_TEST(test_next_due_full_order)
{
	int64_t	ids[4], got;
	size_t	i;

	/* Inserted in an order unlike the dispatch order. */
	ids[3] = add_task("default", -1, NOW - 9000);
	ids[2] = add_task("default", 0, NOW);
	ids[1] = add_task("default", 0, NOW - 1);
	ids[0] = add_task("default", 5, NOW);
	for (i = 0; i < 4; i++) {
		got = next_due_committed(NOW, NULL, 0);
		ck_assert_int_eq(got, ids[i]);
		set_state(got, TASK_RUNNING, UNSET);
	}
	ck_assert_int_eq(next_due_committed(NOW, NULL, 0), 0);
}
END_TEST

START_TEST(test_next_due_future_not_due)
{
	int64_t	future;

	future = add_task("default", 100, NOW + 1);
	ck_assert_int_eq(next_due_committed(NOW, NULL, 0), 0);
	ck_assert_int_eq(next_due_committed(NOW + 1, NULL, 0), future);
}
END_TEST

START_TEST(test_next_due_none_is_zero)
{
	ck_assert_int_eq(next_due_committed(NOW, NULL, 0), 0);
}
END_TEST

START_TEST(test_next_due_not_before_commit)
{
	int64_t	id;

	id = add_task("default", 0, NOW);
	ck_assert_int_eq(next_due_id(NOW, NULL, 0), 0);
	ck_assert_int_eq(store_commit(), 0);
	ck_assert_int_eq(next_due_id(NOW, NULL, 0), id);
	ck_assert_int_eq(store_take_inserted(), 1);
	ck_assert_int_eq(store_take_inserted(), 0);
}
END_TEST

START_TEST(test_next_due_skips_non_queued)
{
	int64_t	a, b;

	a = add_task("default", 9, NOW);
	b = add_task("default", 0, NOW);
	set_state(a, TASK_CANCELED, NOW);
	ck_assert_int_eq(next_due_committed(NOW, NULL, 0), b);
}
END_TEST

START_TEST(test_next_due_skips_full_queues)
{
	static const char *const full[] = { "busy", "also-busy" };
	int64_t			 free_id;

	add_task("busy", 9, NOW);
	add_task("also-busy", 8, NOW);
	free_id = add_task("default", 0, NOW);
	ck_assert_int_eq(next_due_committed(NOW, full, 2), free_id);
	ck_assert_int_eq(next_due_committed(NOW, full, 2), free_id);
	set_state(free_id, TASK_RUNNING, UNSET);
	ck_assert_int_eq(next_due_committed(NOW, full, 2), 0);
}
END_TEST

START_TEST(test_next_due_across_queues)
{
	static const char *const full[] = { "b" };
	int64_t			 a3, b3, c3, a5;

	/* Across queues the order is the one order; a delayed higher
	 * priority holds nothing back. */
	a5 = add_task("a", 5, NOW + 1000);
	a3 = add_task("a", 3, NOW - 10);
	b3 = add_task("b", 3, NOW - 20);
	c3 = add_task("c", 3, NOW - 20);
	add_task("c", 1, NOW - 5000);
	ck_assert_int_eq(next_due_committed(NOW, full, 1), c3);
	ck_assert_int_eq(next_due_committed(NOW, NULL, 0), b3);
	set_state(b3, TASK_RUNNING, UNSET);
	ck_assert_int_eq(next_due_committed(NOW, NULL, 0), c3);
	set_state(c3, TASK_RUNNING, UNSET);
	ck_assert_int_eq(next_due_committed(NOW, NULL, 0), a3);
	ck_assert_int_eq(next_due_committed(NOW + 1000, NULL, 0), a5);
}
END_TEST

START_TEST(test_next_due_past_many_of_a_closed_queue)
{
	static const char *const full[] = { "busy" };
	int64_t			 low, later;
	int			 i;

	/* More due tasks of a closed queue ahead than the walk in the one
	 * order steps over: then queue by queue, in the same order. */
	for (i = 0; i < 200; i++)
		add_task("busy", 5, NOW - 1000);
	later = add_task("z", 1, NOW - 10);
	low = add_task("a", 1, NOW - 20);
	add_task("a", 0, NOW - 5000);
	ck_assert_int_eq(next_due_committed(NOW, full, 1), low);
	set_state(low, TASK_RUNNING, UNSET);
	ck_assert_int_eq(next_due_committed(NOW, full, 1), later);
}
END_TEST

START_TEST(test_next_run_at_min_of_queued)
{
	int64_t	early;

	add_task("default", 0, NOW + 5000);
	early = add_task("default", 0, NOW + 1000);
	add_task("default", 9, NOW + 3000);
	ck_assert_int_eq(store_next_run_at(NOW), NOW + 1000);
	set_state(early, TASK_RUNNING, UNSET);
	ck_assert_int_eq(store_next_run_at(NOW), NOW + 3000);
}
END_TEST

/* Only future run_at count: a due task is the dispatcher's, not the timer's. */
START_TEST(test_next_run_at_ignores_past)
{
	add_task("default", 0, NOW - 1000);
	ck_assert_int_eq(store_next_run_at(NOW), UNSET);
	add_task("default", 0, NOW + 2000);
	ck_assert_int_eq(store_next_run_at(NOW), NOW + 2000);
}
END_TEST

START_TEST(test_next_run_at_unset_when_none)
{
	int64_t	id;

	ck_assert_int_eq(store_next_run_at(NOW), UNSET);
	id = add_task("default", 0, NOW);
	set_state(id, TASK_SUCCEEDED, NOW);
	ck_assert_int_eq(store_next_run_at(NOW), UNSET);
}
END_TEST

START_TEST(test_unsynced_commits_until_synced)
{
	int64_t	counts[TASK_NSTATES];

	ck_assert_int_eq(store_commit(), 0);
	ck_assert_int_eq(store_all_on_disk(), 1);
	ck_assert_int_eq(store_unsynced_ms(), -1);

	add_task("default", 0, NOW);
	ck_assert_int_eq(store_all_on_disk(), 0);	/* open transaction */
	ck_assert_int_eq(store_commit_as(0), 0);
	/* Committed (other connections see it) but not yet fsynced. */
	ck_assert_int_eq(db_int("SELECT count(*) FROM tasks"), 1);
	ck_assert_int_eq(store_all_on_disk(), 0);
	ck_assert_int_ge(store_unsynced_ms(), 0);
	store_counts(counts);
	ck_assert_int_eq(counts[TASK_QUEUED], 0);	/* what is on disk */
	store_counts_live(counts);
	ck_assert_int_eq(counts[TASK_QUEUED], 1);

	ck_assert_int_eq(store_sync(), 0);
	ck_assert_int_eq(store_all_on_disk(), 1);
	ck_assert_int_eq(store_unsynced_ms(), -1);
	store_counts(counts);
	ck_assert_int_eq(counts[TASK_QUEUED], 1);

	/* A synced commit needs no further sync. */
	add_task("default", 0, NOW);
	ck_assert_int_eq(store_commit_as(1), 0);
	ck_assert_int_eq(store_all_on_disk(), 1);
	store_counts(counts);
	ck_assert_int_eq(counts[TASK_QUEUED], 2);
}
END_TEST

static int	fake_syncs;
static int	fake_sync_errno;	/* 0: succeed */

static int
fake_fdatasync(int fd)
{
	fake_syncs++;
	if (fake_sync_errno != 0) {
		errno = fake_sync_errno;
		return (-1);
	}
	return (0);
}

static int	fake_dir_syncs;
static int	fake_dir_sync_errno;	/* 0: succeed */

static int
fake_fsync_dir(int fd)
{
	struct stat	sb;

	ck_assert_int_eq(fstat(fd, &sb), 0);
	ck_assert(S_ISDIR(sb.st_mode));
	fake_dir_syncs++;
	if (fake_dir_sync_errno != 0) {
		errno = fake_dir_sync_errno;
		return (-1);
	}
	return (0);
}

/*
 * A new WAL's name is synced (its directory) as the store opens, before
 * any fsync of the WAL counts, once per WAL; a directory that cannot be
 * synced at all (EINVAL) is no failure, any other error is.
 */
START_TEST(test_sync_syncs_the_directory_of_a_new_wal)
{
	char	*cause = NULL;

	store_fdatasync = fake_fdatasync;
	store_fsync_dir = fake_fsync_dir;
	fake_syncs = fake_dir_syncs = 0;
	fake_sync_errno = fake_dir_sync_errno = 0;
	store_close();
	ck_assert_int_eq(store_open(test_dir, &cause), 0);
	ck_assert_int_eq(fake_dir_syncs, 1);
	add_task("default", 0, NOW);
	ck_assert_int_eq(store_commit_as(1), 0);
	ck_assert_int_eq(fake_syncs, 1);
	add_task("default", 0, NOW);
	ck_assert_int_eq(store_commit_as(1), 0);
	ck_assert_int_eq(fake_dir_syncs, 1);
	ck_assert_int_eq(fake_syncs, 2);

	/* Closed and opened again: the WAL is made anew. */
	store_close();
	fake_dir_sync_errno = EINVAL;
	ck_assert_int_eq(store_open(test_dir, &cause), 0);
	ck_assert_int_eq(fake_dir_syncs, 2);
	add_task("default", 0, NOW);
	ck_assert_int_eq(store_commit_as(1), 0);
	ck_assert_int_eq(store_healthy(&cause), 0);

	/* At open a failure is not told: the first sync tries again, and
	 * its failure is a failed sync's, which forkqd retries. */
	store_close();
	fake_dir_sync_errno = EIO;
	ck_assert_int_eq(store_open(test_dir, &cause), 0);
	ck_assert_int_eq(fake_dir_syncs, 3);
	ck_assert_int_eq(store_healthy(&cause), 0);
	add_task("default", 0, NOW);
	ck_assert_int_eq(store_commit_as(1), -2);
	ck_assert_int_eq(fake_dir_syncs, 4);
	ck_assert_int_eq(store_healthy(&cause), -1);
	ck_assert_ptr_nonnull(strstr(cause, "directory"));
	free(cause);
	store_fdatasync = fdatasync;
	store_fsync_dir = fsync;
}
END_TEST

START_TEST(test_sync_only_when_asked_and_failure_is_kept)
{
	char		*cause = NULL, path[256];
	struct stat	 sb;

	store_fdatasync = fake_fdatasync;
	fake_syncs = 0;
	fake_sync_errno = 0;
	add_task("default", 0, NOW);
	ck_assert_int_eq(store_commit_as(0), 0);
	ck_assert_int_eq(fake_syncs, 0);
	ck_assert_int_eq(store_sync(), 0);
	ck_assert_int_eq(fake_syncs, 1);
	ck_assert_int_eq(store_sync(), 0);	/* nothing new to sync */
	ck_assert_int_eq(fake_syncs, 1);
	add_task("default", 0, NOW);
	ck_assert_int_eq(store_commit_as(1), 0);
	ck_assert_int_eq(fake_syncs, 2);

	/* A failed fsync: committed, not on disk, the store unhealthy. */
	fake_sync_errno = EIO;
	add_task("default", 0, NOW);
	ck_assert_int_eq(store_commit_as(1), -2);
	ck_assert_int_eq(db_int("SELECT count(*) FROM tasks"), 3);
	ck_assert_int_eq(store_all_on_disk(), 0);
	ck_assert_int_eq(store_healthy(&cause), -1);
	ck_assert_ptr_nonnull(strstr(cause, "fdatasync"));
	free(cause);
	cause = NULL;
	/* A later commit (and a second fsync, which would succeed) does not
	 * make it healthy: only store_retry()'s full checkpoint does. */
	fake_sync_errno = 0;
	add_task("default", 0, NOW);
	ck_assert_int_eq(store_commit_as(1), -2);
	ck_assert_int_eq(store_sync(), -2);
	ck_assert_int_eq(store_healthy(&cause), -1);
	free(cause);
	cause = NULL;
	ck_assert_int_eq(store_retry(), 0);
	/* The checkpoint was TRUNCATE: everything went to the database file. */
	db_path(path, sizeof path, "-wal");
	ck_assert_int_eq(stat(path, &sb), 0);
	ck_assert_int_eq(sb.st_size, 0);
	ck_assert_int_eq(store_all_on_disk(), 1);
	ck_assert_int_eq(store_healthy(&cause), 0);
	store_fdatasync = fdatasync;
}
END_TEST

/*
 * The sync thread: store_sync_start() returns at once, the thread calls
 * store_fdatasync and then the notify function (from the thread), and
 * store_sync_finish() takes the result. Pipes hand over between the test
 * and the thread, so every wait is for an event (bounded by poll).
 */
static int	bg_ended[2] = { -1, -1 };	/* notify -> test */
static int	bg_entered[2] = { -1, -1 };	/* gated sync -> test */
static int	bg_release[2] = { -1, -1 };	/* test -> gated sync */
static int	bg_syncs;

static void
bg_notify(void)
{
	char	c = 'n';

	(void)write(bg_ended[1], &c, 1);
}

static int
bg_gated_fdatasync(int fd)
{
	char	c = 'e';

	bg_syncs++;
	(void)write(bg_entered[1], &c, 1);
	if (read(bg_release[0], &c, 1) != 1 || c == 'f') {
		errno = EIO;
		return (-1);
	}
	return (0);
}

/* Waits (30 s at most) for a byte on fd. */
static void
bg_wait(int fd)
{
	struct pollfd	pfd = { .fd = fd, .events = POLLIN };
	char		c;

	ck_assert_int_eq(poll(&pfd, 1, 30000), 1);
	ck_assert_int_eq(read(fd, &c, 1), 1);
}

static void
bg_setup(void)
{
	ck_assert_int_eq(pipe(bg_ended), 0);
	ck_assert_int_eq(pipe(bg_entered), 0);
	ck_assert_int_eq(pipe(bg_release), 0);
	bg_syncs = 0;
	store_fdatasync = bg_gated_fdatasync;
	store_sync_notify(bg_notify);
}

/* Starts a sync of what is committed; returns once the thread is in it. */
static void
bg_start(void)
{
	ck_assert_int_eq(store_sync_start(), 0);
	ck_assert_int_eq(store_sync_pending(), 1);
	bg_wait(bg_entered[0]);
}

/* bg_setup(), one task committed but not synced, and its sync under way. */
static void
bg_start_one(void)
{
	bg_setup();
	add_task("default", 0, NOW);
	ck_assert_int_eq(store_commit_as(0), 0);
	bg_start();
}

/* Back to the real fdatasync, and nobody told. */
static void
bg_teardown(void)
{
	store_sync_notify(NULL);
	store_fdatasync = fdatasync;
}

/* Lets the sync the thread is in end (fail: with EIO); waits for notify. */
static void
bg_end(int fail)
{
	char	c = fail ? 'f' : 'o';

	ck_assert_int_eq(write(bg_release[1], &c, 1), 1);
	bg_wait(bg_ended[0]);
}

START_TEST(test_sync_thread_puts_commits_on_disk)
{
	int64_t	counts[TASK_NSTATES];

	bg_setup();
	add_task("default", 0, NOW);
	ck_assert_int_eq(store_commit_as(0), 0);
	ck_assert_int_ge(store_unsynced_ms(), 0);
	bg_start();
	/* Under way: not on disk yet, and a second start asks nothing. */
	ck_assert_int_eq(store_all_on_disk(), 0);
	ck_assert_int_eq(store_sync_start(), 0);
	store_counts(counts);
	ck_assert_int_eq(counts[TASK_QUEUED], 0);
	bg_end(0);
	ck_assert_int_eq(store_sync_pending(), 1);	/* until taken */
	ck_assert_int_eq(store_sync_finish(), 0);
	ck_assert_int_eq(store_sync_pending(), 0);
	ck_assert_int_eq(store_all_on_disk(), 1);
	store_counts(counts);
	ck_assert_int_eq(counts[TASK_QUEUED], 1);
	ck_assert_int_eq(bg_syncs, 1);
	/* Nothing new: nothing asked. */
	ck_assert_int_eq(store_sync_start(), 0);
	ck_assert_int_eq(store_sync_pending(), 0);
	bg_teardown();
}
END_TEST

/* A commit made while the thread syncs is not covered by that sync. */
START_TEST(test_sync_thread_leaves_later_commits_unsynced)
{
	int64_t	counts[TASK_NSTATES];

	bg_start_one();
	add_task("default", 0, NOW);
	ck_assert_int_eq(store_commit_as(0), 0);
	bg_end(0);
	ck_assert_int_eq(store_sync_finish(), 0);
	ck_assert_int_ge(store_unsynced_ms(), 0);
	store_counts(counts);
	ck_assert_int_eq(counts[TASK_QUEUED], 1);	/* the first only */
	/* The next sync takes the second. */
	bg_start();
	bg_end(0);
	ck_assert_int_eq(store_sync_finish(), 0);
	ck_assert_int_eq(store_unsynced_ms(), -1);
	store_counts(counts);
	ck_assert_int_eq(counts[TASK_QUEUED], 2);
	bg_teardown();
}
END_TEST

/*
 * An answer's sync on the loop while the thread's is under way waits for
 * it and takes its result first, then covers what came since. (The gate
 * is opened before: the loop now waits in store_commit_as.)
 */
START_TEST(test_sync_thread_result_older_than_a_loop_sync)
{
	int64_t	counts[TASK_NSTATES];
	char	c = 'o';

	bg_start_one();
	add_task("default", 0, NOW);
	store_fdatasync = fdatasync;	/* the loop's own, not gated */
	ck_assert_int_eq(write(bg_release[1], &c, 1), 1);
	ck_assert_int_eq(store_commit_as(1), 0);
	ck_assert_int_eq(store_all_on_disk(), 1);
	ck_assert_int_eq(store_sync_pending(), 0);
	ck_assert_int_eq(store_sync_finish(), 0);	/* taken already */
	store_counts(counts);
	ck_assert_int_eq(counts[TASK_QUEUED], 2);
	store_sync_notify(NULL);
}
END_TEST

/*
 * The kernel tells a write-back error to one fsync of an open file: when
 * the thread's got it, the loop's may succeed. An answer's sync must not
 * then say its commit is on disk.
 */
START_TEST(test_sync_thread_failure_not_hidden_by_a_loop_sync)
{
	char	*cause = NULL, c = 'f';

	bg_start_one();
	add_task("default", 0, NOW);
	store_fdatasync = fdatasync;	/* the loop's own would succeed */
	ck_assert_int_eq(write(bg_release[1], &c, 1), 1);
	ck_assert_int_eq(store_commit_as(1), -2);
	ck_assert_int_eq(store_all_on_disk(), 0);
	ck_assert_int_eq(store_healthy(&cause), -1);
	free(cause);
	ck_assert_int_eq(store_retry(), 0);
	store_sync_notify(NULL);
}
END_TEST

/* The thread's failed fsync makes the store unhealthy, like the loop's. */
START_TEST(test_sync_thread_failure_is_kept)
{
	char	*cause = NULL;

	bg_start_one();
	bg_end(1);
	ck_assert_int_eq(store_sync_finish(), -2);
	ck_assert_int_eq(store_all_on_disk(), 0);
	ck_assert_int_eq(store_healthy(&cause), -1);
	ck_assert_ptr_nonnull(strstr(cause, "fdatasync"));
	free(cause);
	ck_assert_int_eq(store_sync_start(), -2);
	store_fdatasync = fdatasync;
	ck_assert_int_eq(store_retry(), 0);
	ck_assert_int_eq(store_all_on_disk(), 1);
	store_sync_notify(NULL);
}
END_TEST

/* store_close waits for a sync under way and ends the thread. */
START_TEST(test_sync_thread_ends_with_the_store)
{
	char	*cause = NULL, c = 'o';

	bg_start_one();
	/* Released before the close, which then joins the thread. */
	ck_assert_int_eq(write(bg_release[1], &c, 1), 1);
	store_sync_notify(NULL);
	store_fdatasync = fdatasync;
	store_close();
	ck_assert_int_eq(store_open(test_dir, &cause), 0);
	ck_assert_int_eq(store_sync_pending(), 0);
	ck_assert_int_eq(db_int("SELECT count(*) FROM tasks"), 1);
}
END_TEST

START_TEST(test_counts_per_state)
{
	int64_t	counts[TASK_NSTATES], id, *ids;
	size_t	nids;
	int	i;

	ck_assert_int_eq(store_counts(counts), 0);
	for (i = 0; i < TASK_NSTATES; i++)
		ck_assert_int_eq(counts[i], 0);

	add_task("default", 0, NOW);
	add_task("default", 0, NOW);
	id = add_task("default", 0, NOW);
	set_state(id, TASK_RUNNING, UNSET);
	id = add_task("default", 0, NOW);
	set_state(id, TASK_FAILED, NOW);
	id = add_task("default", 0, NOW);
	set_state(id, TASK_CANCELED, NOW);
	id = add_task("default", 0, NOW);
	set_state(id, TASK_CANCELED, NOW);

	/* The counts are what is on disk: nothing until the commit. */
	ck_assert_int_eq(store_counts(counts), 0);
	for (i = 0; i < TASK_NSTATES; i++)
		ck_assert_int_eq(counts[i], 0);
	ck_assert_int_eq(store_commit(), 0);
	ck_assert_int_eq(store_counts(counts), 0);
	ck_assert_int_eq(counts[TASK_QUEUED], 2);
	ck_assert_int_eq(counts[TASK_RUNNING], 1);
	ck_assert_int_eq(counts[TASK_SUCCEEDED], 0);
	ck_assert_int_eq(counts[TASK_FAILED], 1);
	ck_assert_int_eq(counts[TASK_CANCELED], 2);
	ck_assert_int_eq(db_int("SELECT count(*) FROM tasks WHERE"
	    " state = 'canceled'"), 2);

	/* A prune takes the tasks it deletes out of the counts. */
	ck_assert_int_eq(store_prune(NOW + 1, 100, &ids, &nids), 3);
	free(ids);
	ck_assert_int_eq(store_commit(), 0);
	ck_assert_int_eq(store_counts(counts), 0);
	ck_assert_int_eq(counts[TASK_QUEUED], 2);
	ck_assert_int_eq(counts[TASK_RUNNING], 1);
	ck_assert_int_eq(counts[TASK_FAILED], 0);
	ck_assert_int_eq(counts[TASK_CANCELED], 0);
}
END_TEST

/* A task whose attempt 1 started written ahead: no pid yet. */
static int64_t
start_written_ahead(void)
{
	struct attempt_rec	**as;
	size_t			  n;
	int64_t			  id;

	id = add_task("default", 0, NOW);
	start_attempt(id, 1, UNSET, NOW + 10);
	as = store_attempts_get(id, &n);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(as[0]->pid, UNSET);
	free_attempts(as, n);
	return (id);
}

/*
 * A commit that fails while a stats scan reads (the attempt of a task that
 * is not there: its foreign key fails the pass) starts the scan again, and
 * its figures are still those of every task; commits that keep failing
 * end it.
 */
START_TEST(test_stats_scan_starts_again_after_a_rollback)
{
	struct stats_scan	*sc;
	struct name_stats	*ns;
	struct attempt_rec	 a;
	size_t			 n, i;
	int			 rc, failures;

	for (i = 0; i < 5000; i++)
		add_task("default", 0, NOW);
	ck_assert_int_eq(store_commit_as(0), 0);
	memset(&a, 0, sizeof a);
	a.task_id = 999999;
	a.n = 1;
	a.pid = a.pid_start = a.finished_at = UNSET;
	a.started_at = NOW;

	sc = store_stats_begin(0, NULL, 0, 1);
	ck_assert_int_eq(store_stats_step(sc, 4096), 1);
	ck_assert_int_eq(store_attempt_started(NULL, &a), -1);
	ck_assert_int_eq(store_commit_as(0), -1);
	while ((rc = store_stats_step(sc, 4096)) == 1)
		;
	ck_assert_int_eq(rc, 0);
	ns = store_stats_end(sc, &n);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(ns[0].name, "t");
	ck_assert_int_eq(ns[0].tasks, 5000);
	free(ns[0].name);
	free(ns);

	/* A failing pass after every step. */
	sc = store_stats_begin(0, NULL, 0, 1);
	for (failures = 0; (rc = store_stats_step(sc, 4096)) == 1;
	    failures++) {
		ck_assert_int_eq(store_attempt_started(NULL, &a), -1);
		ck_assert_int_eq(store_commit_as(0), -1);
	}
	ck_assert_int_eq(rc, -1);
	ck_assert_int_eq(failures, 4);
	store_stats_free(sc);
}
END_TEST

/* A short attempt ends before its pid was written: the end writes it. */
START_TEST(test_attempt_end_writes_the_pid)
{
	struct task_rec		 *t;
	struct attempt_rec	  a, **as;
	size_t			  n;
	int64_t			  id;

	id = start_written_ahead();

	t = store_task_get(id);
	t->state = TASK_SUCCEEDED;
	t->pid = UNSET;
	t->finished_at = NOW + 20;
	memset(&a, 0, sizeof a);
	a.task_id = id;
	a.n = 1;
	a.pid = 4444;
	a.pid_start = 6006;
	a.finished_at = NOW + 20;
	a.duration_ms = 10;
	a.outcome = OUTCOME_SUCCESS;
	a.exit_code = 0;
	ck_assert_int_eq(store_attempt_ended(t, &a), 0);
	task_rec_free(t);

	as = store_attempts_get(id, &n);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(as[0]->pid, 4444);
	ck_assert_int_eq(as[0]->pid_start, 6006);
	ck_assert_int_eq(as[0]->outcome, OUTCOME_SUCCESS);
	free_attempts(as, n);
}
END_TEST

START_TEST(test_attempt_round_trip)
{
	struct task_rec		 *t;
	struct attempt_rec	  a, **as;
	size_t			  n;
	int64_t			  id;

	id = add_task("default", 0, NOW);
	start_attempt(id, 1, 4321, NOW + 10);

	t = store_task_get(id);
	t->state = TASK_FAILED;
	t->finished_at = NOW + 1510;
	memset(&a, 0, sizeof a);
	a.task_id = id;
	a.n = 1;
	a.finished_at = NOW + 1510;
	a.duration_ms = 1500;
	a.outcome = OUTCOME_SIGNAL;
	a.exit_code = UNSET;
	a.signal = SIGKILL;
	a.error = xstrdup("killed");
	a.max_rss_kb = 2048;
	a.user_cpu_ms = 120;
	a.sys_cpu_ms = 30;
	ck_assert_int_eq(store_attempt_ended(t, &a), 0);
	free(a.error);
	task_rec_free(t);

	as = store_attempts_get(id, &n);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(as[0]->task_id, id);
	ck_assert_int_eq(as[0]->n, 1);
	ck_assert_int_eq(as[0]->pid, 4321);
	ck_assert_int_eq(as[0]->pid_start, 5001);
	ck_assert_int_eq(as[0]->started_at, NOW + 10);
	ck_assert_int_eq(as[0]->finished_at, NOW + 1510);
	ck_assert_int_eq(as[0]->duration_ms, 1500);
	ck_assert_int_eq(as[0]->outcome, OUTCOME_SIGNAL);
	ck_assert_int_eq(as[0]->exit_code, UNSET);
	ck_assert_int_eq(as[0]->signal, SIGKILL);
	ck_assert_str_eq(as[0]->error, "killed");
	ck_assert_int_eq(as[0]->max_rss_kb, 2048);
	ck_assert_int_eq(as[0]->user_cpu_ms, 120);
	ck_assert_int_eq(as[0]->sys_cpu_ms, 30);
	free_attempts(as, n);

	t = store_task_get(id);
	ck_assert_int_eq(t->state, TASK_FAILED);
	ck_assert_int_eq(t->finished_at, NOW + 1510);
	task_rec_free(t);
}
END_TEST

START_TEST(test_attempt_started_updates_task)
{
	struct task_rec	*t;
	int64_t		 id;

	id = add_task("default", 0, NOW);
	start_attempt(id, 1, 4321, NOW + 10);
	t = store_task_get(id);
	ck_assert_int_eq(t->state, TASK_RUNNING);
	ck_assert_int_eq(t->attempt, 1);
	ck_assert_int_eq(t->pid, 4321);
	ck_assert_int_eq(t->started_at, NOW + 10);
	task_rec_free(t);
}
END_TEST

/* A start written ahead has no pid; store_attempt_pid adds it, only it. */
START_TEST(test_attempt_pid_after_write_ahead)
{
	struct attempt_rec	**as, a;
	struct task_rec		 *t;
	size_t			  n;
	int64_t			  id;

	id = start_written_ahead();

	memset(&a, 0, sizeof a);
	a.task_id = id;
	a.n = 1;
	a.pid = 4321;
	a.pid_start = 777;
	ck_assert_int_eq(store_attempt_pid(&a), 0);
	ck_assert_int_eq(store_commit(), 0);
	as = store_attempts_get(id, &n);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(as[0]->pid, 4321);
	ck_assert_int_eq(as[0]->pid_start, 777);
	ck_assert_int_eq(as[0]->started_at, NOW + 10);
	ck_assert_int_eq(as[0]->finished_at, UNSET);
	free_attempts(as, n);
	t = store_task_get(id);
	ck_assert_int_eq(t->pid, 4321);
	ck_assert_int_eq(t->state, TASK_RUNNING);
	ck_assert_int_eq(t->attempt, 1);
	ck_assert_int_eq(t->started_at, NOW + 10);
	task_rec_free(t);
}
END_TEST

START_TEST(test_attempt_running_fields_null)
{
	struct attempt_rec	**as;
	size_t			  n;
	int64_t			  id;

	id = add_task("default", 0, NOW);
	start_attempt(id, 1, 4321, NOW + 10);
	as = store_attempts_get(id, &n);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(as[0]->finished_at, UNSET);
	ck_assert_int_eq(as[0]->duration_ms, UNSET);
	ck_assert_int_eq(as[0]->outcome, OUTCOME_NONE);
	ck_assert_int_eq(as[0]->exit_code, UNSET);
	ck_assert_int_eq(as[0]->signal, 0);
	ck_assert_ptr_null(as[0]->error);
	ck_assert_int_eq(as[0]->max_rss_kb, UNSET);
	free_attempts(as, n);
}
END_TEST

START_TEST(test_attempt_ended_without_task)
{
	struct attempt_rec	  a, **as;
	size_t			  n;
	int64_t			  id;

	id = add_task("default", 0, NOW);
	start_attempt(id, 1, 4321, NOW);
	memset(&a, 0, sizeof a);
	a.task_id = id;
	a.n = 1;
	a.finished_at = NOW + 5;
	a.duration_ms = 5;
	a.outcome = OUTCOME_SUCCESS;
	a.exit_code = 0;
	a.max_rss_kb = a.user_cpu_ms = a.sys_cpu_ms = UNSET;
	ck_assert_int_eq(store_attempt_ended(NULL, &a), 0);
	as = store_attempts_get(id, &n);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(as[0]->outcome, OUTCOME_SUCCESS);
	ck_assert_int_eq(as[0]->exit_code, 0);
	free_attempts(as, n);
}
END_TEST

START_TEST(test_attempts_ordered_by_n)
{
	struct attempt_rec	**as;
	size_t			  n;
	int64_t			  id, other;

	id = add_task("default", 0, NOW);
	other = add_task("default", 0, NOW);
	start_attempt(id, 2, 200, NOW + 2);
	start_attempt(other, 1, 300, NOW + 3);
	start_attempt(id, 1, 100, NOW + 1);
	as = store_attempts_get(id, &n);
	ck_assert_uint_eq(n, 2);
	ck_assert_int_eq(as[0]->n, 1);
	ck_assert_int_eq(as[0]->pid, 100);
	ck_assert_int_eq(as[1]->n, 2);
	ck_assert_int_eq(as[1]->pid, 200);
	free_attempts(as, n);
}
END_TEST

START_TEST(test_attempts_none)
{
	struct attempt_rec	**as;
	size_t			  n = 99;
	int64_t			  id;

	id = add_task("default", 0, NOW);
	as = store_attempts_get(id, &n);
	ck_assert_uint_eq(n, 0);
	free_attempts(as, n);
}
END_TEST

START_TEST(test_unfinished_attempts_only_open)
{
	struct attempt_rec	  a, **as;
	size_t			  n;
	int64_t			  done, open1, open2;

	done = add_task("default", 0, NOW);
	open1 = add_task("default", 0, NOW);
	open2 = add_task("default", 0, NOW);
	start_attempt(done, 1, 10, NOW);
	start_attempt(open2, 1, 30, NOW);
	start_attempt(open1, 1, 20, NOW);
	memset(&a, 0, sizeof a);
	a.task_id = done;
	a.n = 1;
	a.finished_at = NOW + 1;
	a.duration_ms = 1;
	a.outcome = OUTCOME_SUCCESS;
	a.exit_code = 0;
	a.max_rss_kb = a.user_cpu_ms = a.sys_cpu_ms = UNSET;
	ck_assert_int_eq(store_attempt_ended(NULL, &a), 0);

	as = store_unfinished_attempts(&n);
	ck_assert_uint_eq(n, 2);
	ck_assert_int_eq(as[0]->task_id, open1);
	ck_assert_int_eq(as[0]->pid, 20);
	ck_assert_int_eq(as[0]->pid_start, 5001);
	ck_assert_int_eq(as[0]->finished_at, UNSET);
	ck_assert_int_eq(as[1]->task_id, open2);
	free_attempts(as, n);
}
END_TEST

START_TEST(test_prune_deletes_old_final_with_attempts)
{
	struct attempt_rec	**as;
	int64_t			 *ids, old1, old2;
	size_t			  n, na;

	old1 = add_task("default", 0, NOW);
	start_attempt(old1, 1, 10, NOW);
	set_state(old1, TASK_SUCCEEDED, NOW + 200);
	old2 = add_task("default", 0, NOW);
	set_state(old2, TASK_FAILED, NOW + 100);

	ck_assert_int_eq(store_prune(NOW + 1000, 100, &ids, &n), 2);
	ck_assert_uint_eq(n, 2);
	/* Oldest finished first. */
	ck_assert_int_eq(ids[0], old2);
	ck_assert_int_eq(ids[1], old1);
	free(ids);
	ck_assert_ptr_null(store_task_get(old1));
	ck_assert_ptr_null(store_task_get(old2));
	as = store_attempts_get(old1, &na);
	ck_assert_uint_eq(na, 0);
	free_attempts(as, na);
	ck_assert_int_eq(store_commit(), 0);
	ck_assert_int_eq(db_int("SELECT count(*) FROM attempts"), 0);
}
END_TEST

START_TEST(test_prune_keeps_queued_running_and_recent)
{
	struct task_rec	*t;
	int64_t		*ids, queued, running, recent, old;
	size_t		 n;

	queued = add_task("default", 0, NOW);
	running = add_task("default", 0, NOW);
	set_state(running, TASK_RUNNING, UNSET);
	recent = add_task("default", 0, NOW);
	set_state(recent, TASK_CANCELED, NOW + 5000);
	old = add_task("default", 0, NOW);
	set_state(old, TASK_CANCELED, NOW);

	ck_assert_int_eq(store_prune(NOW + 5000, 100, &ids, &n), 1);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(ids[0], old);
	free(ids);
	t = store_task_get(queued);
	ck_assert_ptr_nonnull(t);
	task_rec_free(t);
	t = store_task_get(running);
	ck_assert_ptr_nonnull(t);
	task_rec_free(t);
	t = store_task_get(recent);
	ck_assert_ptr_nonnull(t);
	task_rec_free(t);
}
END_TEST

START_TEST(test_prune_respects_batch)
{
	int64_t	*ids, a, b;
	size_t	 n;

	a = add_task("default", 0, NOW);
	set_state(a, TASK_SUCCEEDED, NOW + 1);
	b = add_task("default", 0, NOW);
	set_state(b, TASK_SUCCEEDED, NOW + 2);

	ck_assert_int_eq(store_prune(NOW + 100, 1, &ids, &n), 1);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(ids[0], a);
	free(ids);
	ck_assert_int_eq(store_prune(NOW + 100, 1, &ids, &n), 1);
	ck_assert_int_eq(ids[0], b);
	free(ids);
	ck_assert_int_eq(store_prune(NOW + 100, 1, &ids, &n), 0);
	ck_assert_uint_eq(n, 0);
	free(ids);
}
END_TEST

START_TEST(test_open_refuses_newer_schema)
{
	sqlite3	*h;
	char	*cause = NULL;

	h = db_connect();
	check_sql_ok(h, "CREATE TABLE keep (x); PRAGMA user_version = 99");
	sqlite3_close(h);

	ck_assert_int_eq(store_open(test_dir, &cause), -1);
	ck_assert_ptr_nonnull(cause);
	ck_assert_msg(strstr(cause, "version") != NULL &&
	    strstr(cause, "99") != NULL, "cause: %s", cause);
	free(cause);
	store_close();
	ck_assert_int_eq(db_int("PRAGMA user_version"), 99);
	ck_assert_int_eq(db_int("SELECT count(*) FROM sqlite_master"
	    " WHERE name = 'keep'"), 1);
}
END_TEST

START_TEST(test_open_upgrades_empty_db)
{
	sqlite3	*h;
	char	*cause = NULL;

	h = db_connect();
	check_sql_ok(h, "PRAGMA user_version = 0");
	sqlite3_close(h);

	ck_assert_msg(store_open(test_dir, &cause) == 0, "store_open: %s",
	    cause != NULL ? cause : "?");
	ck_assert_int_eq(db_int("PRAGMA user_version"), STORE_SCHEMA_VERSION);
	ck_assert_int_eq(db_int("SELECT count(*) FROM sqlite_master"
	    " WHERE type = 'table' AND name IN ('tasks', 'attempts')"), 2);
	ck_assert_int_gt(add_task("default", 0, NOW), 0);
	ck_assert_int_eq(store_commit(), 0);
	ck_assert_int_eq(db_int("SELECT count(*) FROM tasks"), 1);
}
END_TEST

/*
 * A database of schema version 1 (before dependencies, paused queues and
 * cron entries) is upgraded in place, keeping its tasks.
 */
START_TEST(test_open_upgrades_v1_db)
{
	struct task_rec	*t;
	sqlite3		*h;
	char		*cause = NULL;
	int64_t		 id;

	ck_assert_int_eq(store_open(test_dir, &cause), 0);
	id = add_task("old", 3, NOW);
	ck_assert_int_eq(store_commit(), 0);
	store_close();

	/* Take the database back to what version 1 wrote (what versions 2
	 * to 4 added or changed goes). */
	h = db_connect();
	check_sql_ok(h, "DROP INDEX tasks_dispatch");
	check_sql_ok(h, "DROP INDEX tasks_dispatch_queue");
	check_sql_ok(h, "CREATE INDEX tasks_dispatch ON tasks(priority DESC,"
	    " run_at, id) WHERE state = 'queued'");
	check_sql_ok(h, "DROP TABLE task_deps");
	check_sql_ok(h, "DROP TABLE paused");
	check_sql_ok(h, "DROP TABLE crons");
	check_sql_ok(h, "ALTER TABLE tasks DROP COLUMN \"after\"");
	check_sql_ok(h, "ALTER TABLE tasks DROP COLUMN waiting_on");
	check_sql_ok(h, "ALTER TABLE tasks DROP COLUMN cancel_requested");
	check_sql_ok(h, "PRAGMA user_version = 1");
	sqlite3_close(h);

	ck_assert_msg(store_open(test_dir, &cause) == 0, "store_open: %s",
	    cause != NULL ? cause : "?");
	ck_assert_int_eq(db_int("PRAGMA user_version"), STORE_SCHEMA_VERSION);
	ck_assert_int_eq(db_int("SELECT count(*) FROM sqlite_master"
	    " WHERE type = 'table' AND name IN ('task_deps', 'paused',"
	    " 'crons')"), 3);
	t = store_task_get(id);
	ck_assert_ptr_nonnull(t);
	ck_assert_str_eq(t->queue, "old");
	ck_assert_int_eq(t->priority, 3);
	ck_assert_ptr_null(t->after_json);
	task_rec_free(t);
	ck_assert_int_eq(next_due_id(NOW, NULL, 0), id);
}
END_TEST

/*
 * A new database gets 1 KiB pages (less WAL per commit); one made with
 * another page size keeps it and works as before.
 */
START_TEST(test_open_page_size_new_and_kept)
{
	sqlite3	*h;
	char	*cause = NULL;

	ck_assert_int_eq(store_open(test_dir, &cause), 0);
	ck_assert_int_eq(db_int("PRAGMA page_size"), 1024);
	store_close();
	remove_db_files();

	h = db_connect();
	check_sql_ok(h, "PRAGMA page_size = 4096; CREATE TABLE keep (x);"
	    " PRAGMA journal_mode = WAL");
	sqlite3_close(h);
	ck_assert_msg(store_open(test_dir, &cause) == 0, "store_open: %s",
	    cause != NULL ? cause : "?");
	ck_assert_int_eq(db_int("PRAGMA page_size"), 4096);
	ck_assert_int_gt(add_task("default", 0, NOW), 0);
	ck_assert_int_eq(store_commit(), 0);
	ck_assert_int_eq(db_int("SELECT count(*) FROM tasks"), 1);
}
END_TEST

static Suite *
store_suite(void)
{
	Suite	*s = suite_create("store");
	TCase	*tc;

	/*
	 * First, so that under CK_FORK=no the refused open does not find
	 * statements finalized by an earlier store_close (which leaves
	 * stmts[] dangling).
	 */
	tc = tcase_create("migrate");
	tcase_add_unchecked_fixture(tc, base_setup, base_teardown);
	tcase_add_checked_fixture(tc, dir_setup, store_teardown);
	tcase_add_test(tc, test_open_refuses_newer_schema);
	tcase_add_test(tc, test_open_upgrades_empty_db);
	tcase_add_test(tc, test_open_upgrades_v1_db);
	tcase_add_test(tc, test_open_page_size_new_and_kept);
	suite_add_tcase(s, tc);

	tc = tcase_create("open");
	tcase_add_unchecked_fixture(tc, base_setup, base_teardown);
	tcase_add_checked_fixture(tc, store_setup, store_teardown);
	tcase_add_test(tc, test_open_creates_db_with_schema_version);
	tcase_add_test(tc, test_open_uses_wal_journal);
	tcase_add_test(tc, test_open_is_healthy);
	tcase_add_test(tc, test_reopen_keeps_tasks);
	tcase_add_test(tc, test_close_commits_pending_writes);
	tcase_add_test(tc, test_insert_visible_to_others_after_commit);
	suite_add_tcase(s, tc);

	tc = tcase_create("task");
	tcase_add_unchecked_fixture(tc, base_setup, base_teardown);
	tcase_add_checked_fixture(tc, store_setup, store_teardown);
	tcase_add_test(tc, test_insert_get_round_trip);
	tcase_add_test(tc, test_insert_row_as_read_back);
	tcase_add_test(tc, test_insert_absent_fields_null);
	tcase_add_test(tc, test_insert_run_at_defaults_to_now);
	tcase_add_test(tc, test_insert_delay_sets_run_at);
	tcase_add_test(tc, test_get_missing_is_null);
	tcase_add_test(tc, test_ids_increase);
	tcase_add_test(tc, test_ids_not_reused_after_prune);
	tcase_add_test(tc, test_update_round_trip);
	tcase_add_test(tc, test_update_back_to_null);
	tcase_add_test(tc, test_progress_round_trip);
	tcase_add_test(tc, test_unique_duplicate_while_queued);
	tcase_add_test(tc, test_unique_duplicate_while_running);
	tcase_add_test(tc, test_unique_free_after_final);
	tcase_add_test(tc, test_unique_other_key_inserted);
	tcase_add_test(tc, test_list_newest_first_filtered);
	suite_add_tcase(s, tc);

	tc = tcase_create("dispatch");
	tcase_add_unchecked_fixture(tc, base_setup, base_teardown);
	tcase_add_checked_fixture(tc, store_setup, store_teardown);
	tcase_add_test(tc, test_next_due_priority_first);
	tcase_add_test(tc, test_next_due_earlier_run_at_first);
	tcase_add_test(tc, test_next_due_lower_id_first);
	tcase_add_test(tc, test_next_due_full_order);
	tcase_add_test(tc, test_next_due_future_not_due);
	tcase_add_test(tc, test_next_due_none_is_zero);
	tcase_add_test(tc, test_next_due_not_before_commit);
	tcase_add_test(tc, test_next_due_skips_non_queued);
	tcase_add_test(tc, test_next_due_skips_full_queues);
	tcase_add_test(tc, test_next_due_across_queues);
	tcase_add_test(tc, test_next_due_past_many_of_a_closed_queue);
	tcase_add_test(tc, test_next_run_at_min_of_queued);
	tcase_add_test(tc, test_next_run_at_unset_when_none);
	tcase_add_test(tc, test_next_run_at_ignores_past);
	tcase_add_test(tc, test_unsynced_commits_until_synced);
	tcase_add_test(tc, test_sync_only_when_asked_and_failure_is_kept);
	tcase_add_test(tc, test_sync_syncs_the_directory_of_a_new_wal);
	tcase_add_test(tc, test_sync_thread_puts_commits_on_disk);
	tcase_add_test(tc, test_sync_thread_leaves_later_commits_unsynced);
	tcase_add_test(tc, test_sync_thread_result_older_than_a_loop_sync);
	tcase_add_test(tc, test_sync_thread_failure_not_hidden_by_a_loop_sync);
	tcase_add_test(tc, test_sync_thread_failure_is_kept);
	tcase_add_test(tc, test_sync_thread_ends_with_the_store);
	tcase_add_test(tc, test_counts_per_state);
	suite_add_tcase(s, tc);

	tc = tcase_create("attempt");
	tcase_add_unchecked_fixture(tc, base_setup, base_teardown);
	tcase_add_checked_fixture(tc, store_setup, store_teardown);
	tcase_add_test(tc, test_attempt_round_trip);
	tcase_add_test(tc, test_attempt_end_writes_the_pid);
	tcase_add_test(tc, test_stats_scan_starts_again_after_a_rollback);
	tcase_add_test(tc, test_attempt_started_updates_task);
	tcase_add_test(tc, test_attempt_pid_after_write_ahead);
	tcase_add_test(tc, test_attempt_running_fields_null);
	tcase_add_test(tc, test_attempt_ended_without_task);
	tcase_add_test(tc, test_attempts_ordered_by_n);
	tcase_add_test(tc, test_attempts_none);
	tcase_add_test(tc, test_unfinished_attempts_only_open);
	suite_add_tcase(s, tc);

	tc = tcase_create("prune");
	tcase_add_unchecked_fixture(tc, base_setup, base_teardown);
	tcase_add_checked_fixture(tc, store_setup, store_teardown);
	tcase_add_test(tc, test_prune_deletes_old_final_with_attempts);
	tcase_add_test(tc, test_prune_keeps_queued_running_and_recent);
	tcase_add_test(tc, test_prune_respects_batch);
	suite_add_tcase(s, tc);

	return (s);
}

int
main(void)
{
	return (check_run(store_suite()));
}
