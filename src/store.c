/*
 * store.c: the SQLite database, STATE_DIR/forkq.db. The only file that
 * includes <sqlite3.h>; everyone else calls store_* in the daemon's own types.
 *
 * Invariants:
 * - Statements are prepared once at open and reset after each use.
 * - Writes go into one open transaction that store_commit_as() ends at the
 *   end of each loop pass. Every commit is written to the WAL at once (so a
 *   crash of forkqd loses nothing committed), but the WAL is fsynced only
 *   when an answer waits for it (before the answer goes out: an
 *   acknowledged request is on disk) or, for what forkqd did by itself
 *   (attempts starting and ending, heartbeats), within a few ms
 *   (store_sync, timed by daemon.c). Many passes share one fsync, as many
 *   requests share one commit. SQLite runs with synchronous=NORMAL; the
 *   fsyncs are forkqd's own, of the WAL file; --sync normal leaves them
 *   out.
 * - Times are ms since the epoch; UNSET maps to NULL.
 * - Updates of tasks and attempts are full-state writes, kept in a journal
 *   until their transaction commits. When a commit fails (disk full,
 *   read-only file system, I/O error), the transaction is rolled back, the
 *   store is unhealthy and the journal is written again at the start of
 *   the next transaction, so the record catches up with what forkqd did
 *   once the fault clears; a change refused for a constraint, which no
 *   fault clearing would let in, is dropped (store_replay_refused). New
 *   tasks are not journaled: their submits are answered "unavailable"
 *   instead.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forkqd.h"
#include "rbtree.h"

static const char *const task_state_names[TASK_NSTATES] = {
	"queued", "running", "succeeded", "failed", "canceled"
};

static const char *const outcome_names[OUTCOME_COUNT] = {
	NULL, "success", "exit", "signal", "timeout", "heartbeat_lost",
	"exec_failed", "lost", "interrupted", "canceled"
};

/*
 * Schema migrations: migrations[v] upgrades user_version v to v+1. A new
 * version appends one entry and bumps STORE_SCHEMA_VERSION.
 */
static const char *const migrations[STORE_SCHEMA_VERSION] = {
	/* 0 -> 1: the first schema. */
	"CREATE TABLE tasks ("
	" id INTEGER PRIMARY KEY AUTOINCREMENT,"
	" name TEXT NOT NULL,"
	" queue TEXT NOT NULL,"
	" argv TEXT NOT NULL,"
	" env TEXT,"
	" cwd TEXT,"
	" state TEXT NOT NULL,"
	" priority INTEGER NOT NULL DEFAULT 0,"
	" attempt INTEGER NOT NULL DEFAULT 0,"
	" max_attempts INTEGER NOT NULL,"
	" attempts_per_run INTEGER NOT NULL,"
	" created_at INTEGER NOT NULL,"
	" run_at INTEGER NOT NULL,"
	" started_at INTEGER,"
	" finished_at INTEGER,"
	" outcome TEXT,"
	" exit_code INTEGER,"
	" signal TEXT,"
	" error TEXT,"
	" progress INTEGER,"
	" progress_message TEXT,"
	" pid INTEGER,"
	" last_heartbeat_at INTEGER,"
	" timeout_ms INTEGER NOT NULL DEFAULT 0,"
	" heartbeat_timeout_ms INTEGER NOT NULL DEFAULT 0,"
	" backoff_base_ms INTEGER NOT NULL,"
	" backoff_max_ms INTEGER NOT NULL,"
	" rlimits TEXT,"
	" \"unique\" TEXT,"
	" uid INTEGER NOT NULL,"
	" gid INTEGER NOT NULL);"
	"CREATE INDEX tasks_dispatch ON tasks(priority DESC, run_at, id)"
	" WHERE state = 'queued';"
	"CREATE INDEX tasks_next_run ON tasks(run_at) WHERE state = 'queued';"
	"CREATE INDEX tasks_state ON tasks(state, id);"
	"CREATE INDEX tasks_finished ON tasks(finished_at)"
	" WHERE finished_at IS NOT NULL;"
	"CREATE UNIQUE INDEX tasks_unique_live ON tasks(\"unique\")"
	" WHERE \"unique\" IS NOT NULL AND state IN ('queued', 'running');"
	"CREATE TABLE attempts ("
	" task_id INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,"
	" n INTEGER NOT NULL,"
	" pid INTEGER,"
	" pid_start INTEGER,"
	" started_at INTEGER NOT NULL,"
	" finished_at INTEGER,"
	" duration_ms INTEGER,"
	" outcome TEXT,"
	" exit_code INTEGER,"
	" signal TEXT,"
	" error TEXT,"
	" max_rss_kb INTEGER,"
	" user_cpu_ms INTEGER,"
	" sys_cpu_ms INTEGER,"
	" PRIMARY KEY (task_id, n));"
	"CREATE INDEX attempts_unfinished ON attempts(task_id)"
	" WHERE finished_at IS NULL;",
	/* 1 -> 2: spec 10: dependencies, paused queues, cron entries. */
	"ALTER TABLE tasks ADD COLUMN \"after\" TEXT;"
	"ALTER TABLE tasks ADD COLUMN waiting_on INTEGER NOT NULL DEFAULT 0;"
	"CREATE TABLE task_deps ("
	" task_id INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,"
	" after_id INTEGER NOT NULL,"
	" PRIMARY KEY (task_id, after_id));"
	"CREATE INDEX task_deps_after ON task_deps(after_id);"
	"CREATE TABLE paused (queue TEXT PRIMARY KEY);"
	/* A unique key is the submitting user's: one user's key is not
	 * another's task. */
	"DROP INDEX tasks_unique_live;"
	"CREATE UNIQUE INDEX tasks_unique_live ON tasks(uid, \"unique\")"
	" WHERE \"unique\" IS NOT NULL AND state IN ('queued', 'running');"
	"CREATE TABLE crons ("
	" name TEXT PRIMARY KEY,"
	" schedule TEXT NOT NULL,"
	" request TEXT NOT NULL,"
	" argv TEXT NOT NULL,"
	" next_run_at INTEGER NOT NULL,"
	" last_run_at INTEGER,"
	" last_task INTEGER,"
	" uid INTEGER NOT NULL,"
	" gid INTEGER NOT NULL);",
	/*
	 * 2 -> 3: a cancel of a running task is kept until its attempt ends,
	 * so a crash in between does not turn it into a retry.
	 */
	"ALTER TABLE tasks ADD COLUMN cancel_requested INTEGER NOT NULL"
	" DEFAULT 0;",
	/*
	 * 3 -> 4: nothing. Version 4 was an unreleased set of indexes, some
	 * of them wrong; 5 replaces whatever of them a database has.
	 */
	"",
	/*
	 * 4 -> 5: the dispatch indexes hold only tasks that could start
	 * (none waiting on another), and a second one leads with the queue:
	 * a dispatch walked every task waiting on another, and every due
	 * task of a paused or full queue (50,000 of them: 30 ms a start).
	 */
	"DROP INDEX IF EXISTS tasks_uid;"
	"DROP INDEX IF EXISTS tasks_queue;"
	"DROP INDEX IF EXISTS tasks_dispatch_queue;"
	"DROP INDEX tasks_dispatch;"
	"CREATE INDEX tasks_dispatch ON tasks(priority DESC, run_at, id)"
	" WHERE state = 'queued' AND waiting_on = 0;"
	"CREATE INDEX tasks_dispatch_queue ON tasks(queue, priority DESC,"
	" run_at, id) WHERE state = 'queued' AND waiting_on = 0;",
	/*
	 * 5 -> 6: a cron entry's name is its owner's (spec 8: a client sees
	 * its own entries only). With one name space, a user learned that
	 * another had an entry of a name, and could take names from them.
	 */
	"CREATE TABLE crons_v6 ("
	" name TEXT NOT NULL,"
	" schedule TEXT NOT NULL,"
	" request TEXT NOT NULL,"
	" argv TEXT NOT NULL,"
	" next_run_at INTEGER NOT NULL,"
	" last_run_at INTEGER,"
	" last_task INTEGER,"
	" uid INTEGER NOT NULL,"
	" gid INTEGER NOT NULL,"
	" PRIMARY KEY (uid, name));"
	"INSERT INTO crons_v6 (name, schedule, request, argv, next_run_at,"
	" last_run_at, last_task, uid, gid) SELECT name, schedule, request,"
	" argv, next_run_at, last_run_at, last_task, uid, gid FROM crons;"
	"DROP TABLE crons;"
	"ALTER TABLE crons_v6 RENAME TO crons;",
	/*
	 * 6 -> 7: cron finds what is due, and when it wakes next, by this
	 * index: it read every user's entries, with their requests of up to
	 * 64 KiB, at each firing and each cron op.
	 */
	"CREATE INDEX crons_next_run ON crons(next_run_at);",
};

#define TASK_COLUMNS \
	"id, name, queue, argv, env, cwd, \"unique\", rlimits, state," \
	" priority, attempt, max_attempts, attempts_per_run, created_at," \
	" run_at, started_at, finished_at, outcome, exit_code, signal, error," \
	" progress, progress_message, pid, last_heartbeat_at, timeout_ms," \
	" heartbeat_timeout_ms, backoff_base_ms, backoff_max_ms, uid, gid," \
	" \"after\", cancel_requested"

#define ATTEMPT_COLUMNS \
	"task_id, n, pid, pid_start, started_at, finished_at, duration_ms," \
	" outcome, exit_code, signal, error, max_rss_kb, user_cpu_ms, sys_cpu_ms"

enum stmt_id {
	ST_BEGIN,
	ST_COMMIT,
	ST_ROLLBACK,
	ST_INSERT,
	ST_UNIQUE_FIND,
	ST_GET,
	ST_ATTEMPTS,
	ST_LAST_PID,
	ST_LEVEL_BELOW,
	ST_DUE_AT_LEVEL,
	ST_QUEUE_AFTER,
	ST_PRIORITY_BELOW,
	ST_NEXT_DUE,
	ST_NEXT_RUN,
	ST_FIRST_RUN,
	ST_DEPS_INSERT,
	ST_DEPENDENTS,
	ST_FAILED_DEPENDENCY,
	ST_UNRELEASED,
	ST_DEP_RECOUNT,
	ST_ATTEMPT_INSERT,
	ST_ATTEMPT_END,
	ST_ATTEMPT_FORGET,
	ST_ATTEMPT_PID,
	ST_TASK_PID,
	ST_TASK_UPDATE,
	ST_PROGRESS,
	ST_COUNTS,
	ST_UNFINISHED,
	ST_PRUNE_FIND,
	ST_PRUNE_DELETE,
	ST_STATS_STEP,
	ST_TASK_UID,
	ST_COUNT
};

static const char *const stmt_sql[ST_COUNT] = {
	[ST_BEGIN] = "BEGIN IMMEDIATE",
	[ST_COMMIT] = "COMMIT",
	[ST_ROLLBACK] = "ROLLBACK",
	[ST_INSERT] = "INSERT INTO tasks (name, queue, argv, env, cwd,"
	    " \"unique\", rlimits, state, priority, attempt, max_attempts,"
	    " attempts_per_run, created_at, run_at, timeout_ms,"
	    " heartbeat_timeout_ms, backoff_base_ms, backoff_max_ms, uid, gid,"
	    " \"after\", waiting_on)"
	    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', ?8, 0, ?9, ?9, ?10,"
	    " ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
	[ST_UNIQUE_FIND] = "SELECT id FROM tasks WHERE \"unique\" = ?1"
	    " AND uid = ?2 AND state IN ('queued', 'running')",
	[ST_GET] = "SELECT " TASK_COLUMNS " FROM tasks WHERE id = ?1",
	[ST_ATTEMPTS] = "SELECT " ATTEMPT_COLUMNS " FROM attempts"
	    " WHERE task_id = ?1 ORDER BY n",
	[ST_LAST_PID] = "SELECT pid FROM attempts WHERE task_id = ?1"
	    " ORDER BY n DESC LIMIT 1",
	/* The dispatch's steps (store_next_due): over all queues... */
	[ST_LEVEL_BELOW] = "SELECT priority FROM tasks"
	    " INDEXED BY tasks_dispatch"
	    " WHERE state = 'queued' AND waiting_on = 0 AND priority < ?1"
	    " ORDER BY priority DESC LIMIT 1",
	[ST_DUE_AT_LEVEL] = "SELECT " TASK_COLUMNS " FROM tasks"
	    " INDEXED BY tasks_dispatch"
	    " WHERE state = 'queued' AND waiting_on = 0 AND priority = ?1"
	    " AND run_at <= ?2 AND id < ?3 ORDER BY run_at, id",
	/* ... and queue by queue. */
	[ST_QUEUE_AFTER] = "SELECT queue, priority FROM tasks"
	    " INDEXED BY tasks_dispatch_queue"
	    " WHERE state = 'queued' AND waiting_on = 0 AND queue > ?1"
	    " ORDER BY queue, priority DESC LIMIT 1",
	[ST_PRIORITY_BELOW] = "SELECT priority FROM tasks"
	    " INDEXED BY tasks_dispatch_queue"
	    " WHERE state = 'queued' AND waiting_on = 0 AND queue = ?1"
	    " AND priority < ?2 ORDER BY priority DESC LIMIT 1",
	[ST_NEXT_DUE] = "SELECT " TASK_COLUMNS " FROM tasks"
	    " INDEXED BY tasks_dispatch_queue"
	    " WHERE state = 'queued' AND waiting_on = 0 AND queue = ?1"
	    " AND priority = ?2 AND run_at <= ?3 AND id < ?4"
	    " ORDER BY run_at, id LIMIT 1",
	[ST_NEXT_RUN] = "SELECT min(run_at) FROM tasks INDEXED BY tasks_next_run"
	    " WHERE state = 'queued' AND run_at > ?1 AND waiting_on = 0",
	[ST_FIRST_RUN] = "SELECT min(run_at) FROM tasks INDEXED BY"
	    " tasks_next_run WHERE state = 'queued'",
	[ST_DEPS_INSERT] = "INSERT OR IGNORE INTO task_deps (task_id, after_id)"
	    " VALUES (?1, ?2)",
	[ST_DEPENDENTS] = "SELECT d.task_id FROM task_deps d"
	    " INDEXED BY task_deps_after JOIN tasks t ON t.id = d.task_id"
	    " WHERE d.after_id = ?1 AND t.state = 'queued' ORDER BY d.task_id",
	/*
	 * A dependency pruned since is no proof of success, unless the task
	 * started once: it did only after every one had succeeded, for good.
	 * One that failed is named before one pruned.
	 */
	[ST_FAILED_DEPENDENCY] = "SELECT d.after_id, a.state FROM task_deps d"
	    " JOIN tasks t ON t.id = d.task_id"
	    " LEFT JOIN tasks a ON a.id = d.after_id WHERE d.task_id = ?1"
	    " AND ((a.id IS NULL AND t.attempt = 0)"
	    " OR a.state IN ('failed', 'canceled'))"
	    " ORDER BY a.id IS NULL, d.after_id LIMIT 1",
	/* Read at start: by the dependencies, not by every queued task. */
	[ST_UNRELEASED] = "SELECT DISTINCT a.id, a.state FROM task_deps d"
	    " CROSS JOIN tasks t ON t.id = d.task_id"
	    " CROSS JOIN tasks a ON a.id = d.after_id"
	    " WHERE t.state = 'queued' AND (a.state IN ('failed', 'canceled')"
	    " OR (a.state = 'succeeded' AND t.waiting_on != (SELECT count(*)"
	    " FROM task_deps e JOIN tasks b ON b.id = e.after_id"
	    " WHERE e.task_id = t.id AND b.state != 'succeeded')))",
	[ST_DEP_RECOUNT] = "UPDATE tasks SET waiting_on = (SELECT count(*)"
	    " FROM task_deps d JOIN tasks a ON a.id = d.after_id"
	    " WHERE d.task_id = ?1 AND a.state != 'succeeded') WHERE id = ?1",
	[ST_ATTEMPT_INSERT] = "INSERT OR REPLACE INTO attempts (task_id, n, pid,"
	    " pid_start, started_at) VALUES (?1, ?2, ?3, ?4, ?5)",
	/*
	 * The end writes the pid too: a short attempt ends before forkqd
	 * writes it on its own (task.c, PID_WRITE_MS). An end that knows no
	 * pid (recovery's) leaves the stored one.
	 */
	[ST_ATTEMPT_END] = "UPDATE attempts SET finished_at = ?3,"
	    " duration_ms = ?4, outcome = ?5, exit_code = ?6, signal = ?7,"
	    " error = ?8, max_rss_kb = ?9, user_cpu_ms = ?10, sys_cpu_ms = ?11,"
	    " pid = coalesce(?12, pid), pid_start = coalesce(?13, pid_start)"
	    " WHERE task_id = ?1 AND n = ?2",
	/*
	 * The pid of a start written ahead. Narrow: a full task row write
	 * also rewrites the entry of every index, as it sets state.
	 */
	[ST_ATTEMPT_PID] = "UPDATE attempts SET pid = ?3, pid_start = ?4"
	    " WHERE task_id = ?1 AND n = ?2",
	[ST_TASK_PID] = "UPDATE tasks SET pid = ?2 WHERE id = ?1",
	[ST_TASK_UID] = "SELECT uid FROM tasks WHERE id = ?1",
	[ST_ATTEMPT_FORGET] = "DELETE FROM attempts WHERE task_id = ?1"
	    " AND n = ?2 AND finished_at IS NULL",
	[ST_TASK_UPDATE] = "UPDATE tasks SET state = ?2, attempt = ?3,"
	    " max_attempts = ?4, run_at = ?5, started_at = ?6, finished_at = ?7,"
	    " outcome = ?8, exit_code = ?9, signal = ?10, error = ?11,"
	    " progress = ?12, progress_message = ?13, pid = ?14,"
	    " last_heartbeat_at = ?15, cancel_requested = ?16 WHERE id = ?1",
	[ST_PROGRESS] = "UPDATE tasks SET last_heartbeat_at = ?2,"
	    " progress = ?3, progress_message = ?4 WHERE id = ?1",
	[ST_COUNTS] = "SELECT state, count(*) FROM tasks GROUP BY state",
	/* Recovery: the planner scanned every attempt (0.12 s a million). */
	[ST_UNFINISHED] = "SELECT " ATTEMPT_COLUMNS " FROM attempts"
	    " INDEXED BY attempts_unfinished"
	    " WHERE finished_at IS NULL ORDER BY task_id, n",
	/* Without INDEXED BY the planner took tasks_state and sorted every
	 * finished task for each batch: 0.6 s a batch at a million. */
	[ST_PRUNE_FIND] = "SELECT id, state FROM tasks"
	    " INDEXED BY tasks_finished"
	    " WHERE finished_at IS NOT NULL AND finished_at < ?1"
	    " AND state IN ('succeeded', 'failed', 'canceled')"
	    " ORDER BY finished_at LIMIT ?2",
	[ST_PRUNE_DELETE] = "DELETE FROM tasks WHERE id = ?1",
	/* Every scan binds both and resets it after each step: shared. */
	[ST_STATS_STEP] = "SELECT t.id, t.name, t.state, t.attempt,"
	    " t.created_at, t.uid, a.duration_ms FROM tasks t"
	    " LEFT JOIN attempts a ON a.task_id = t.id"
	    " AND a.outcome = 'success'"
	    " WHERE t.id > ?1 ORDER BY t.id LIMIT ?2",
};

static sqlite3		*db;
static sqlite3_stmt	*stmts[ST_COUNT];
static int		 in_txn;
static int		 txn_failed;		/* a write of this txn failed */
static int		 begin_failed;		/* this pass's BEGIN failed */
static int		 commit_kept_only;	/* the last commit had no txn */
static int64_t		 txn_first_insert;	/* 0 = no task inserted yet */
static int		 rolled_back;		/* store_take_rollback */
static int64_t		 rolled_back_from;
static uint64_t		 rollbacks;		/* ever: a stats scan looks */
static int		 inserted;		/* tasks committed, not dispatched */
static int		 replaying;
static char		 last_error[256];	/* why the last write failed */
static int		 dispatch_failed;	/* a dispatch read failed */

/*
 * Tasks per state, kept up to date as tasks change so that `status` (and
 * systemd's STATUS=) never scan the table: GROUP BY state walks every row,
 * which is tens of ms at a million tasks. state_counts follows what forkqd
 * did; committed_counts is its copy as of the last commit and
 * synced_counts as of the last fsync: what is on disk, which is what
 * store_counts() tells (so a status answer need not wait). After a
 * rollback state_counts is recounted from the table once the journal is
 * on disk.
 */
static int64_t		 state_counts[TASK_NSTATES];
static int64_t		 committed_counts[TASK_NSTATES];
static int64_t		 synced_counts[TASK_NSTATES];
static int		 counts_exact;

/*
 * forkq_tasks_total is a counter (spec 10): it may not go down when a
 * retry takes a task out of a final state or a prune deletes one, as a
 * count of rows does. From the first scrape it is the tasks in each final
 * state then, plus every task that reached that state since.
 */
static int64_t		 finals_reached[TASK_NSTATES];
static int		 finals_seeded;

static void	attempt_metrics_add(enum outcome, int64_t);

/*
 * The figures of store_attempt_metrics, kept up to date as attempts end,
 * so that a scrape does not read every attempt (0.14 s with a million, on
 * the loop). The first scrape computes them from the table; after it they
 * only grow, as counters must: a prune does not take its attempts out,
 * and an attempt's end taken back by a rollback was counted when it came
 * (the journal writes it again, uncounted).
 */
static struct {
	int		 valid;
	const int64_t	*bounds;	/* the caller's, kept */
	size_t		 n;
	int64_t		 outcomes[OUTCOME_COUNT];
	int64_t		*cum;		/* n of them */
	int64_t		 count;
	int64_t		 sum_ms;
} am;

#define BUSY_TIMEOUT_MS	5000	/* waiting on outside readers' locks */

static int		 wal_fd = -1;		/* forkq.db-wal, for fsync */
static char		*wal_path;		/* its path, made once */
static int64_t		 unsynced_since = -1;	/* mono ms, -1: all synced */
static int		 sync_failed;		/* until a checkpoint works */
static int		 wal_removed;		/* SQLite writes a deleted WAL */
static char		 sync_error[256];	/* what failed, for store_healthy */
static uint64_t		 commit_seq;		/* commits made */
static uint64_t		 synced_seq;		/* of them, known on disk */
/* The sync thread (store_sync_start): asked, result not taken yet. */
static int		 bgsync_busy;
static int64_t		 bgsync_next_since = -1; /* first commit after */
static void		 bgsync_committed(void);

/*
 * Checkpoints. forkqd runs them itself, as SQLite's automatic ones would
 * run (PASSIVE, once a commit leaves WAL_CHECKPOINT_FRAMES frames or more
 * in the WAL), to see how far each one got. A reader that keeps a read
 * transaction open (the sqlite3 shell left in a BEGIN, a backup) stops
 * them short of the end; the WAL cannot begin again meanwhile and grows by
 * every commit, about 10 pages a task, until the reader goes. Once they
 * have stopped short (or failed) for WAL_BLOCKED_MS and the WAL holds
 * WAL_BLOCKED_FRAMES, store.checkpoint_blocked says so, and again each
 * time the WAL doubled; store.checkpoint_resumed says when the WAL could
 * begin again. Both bounds: a short read (a query, a script polling the
 * database) holds a checkpoint back for a moment in the normal course,
 * and a database with 4 KiB pages reaches 4 MiB at each checkpoint.
 */
#define WAL_CHECKPOINT_FRAMES	1000		/* SQLite's default */
#define WAL_BLOCKED_FRAMES	(4 * WAL_CHECKPOINT_FRAMES)
#define WAL_BLOCKED_MS		5000
#define WAL_FRAME_HEADER	24
static int		 page_bytes = 1024;	/* the database's page size */
static int		 wal_frames;		/* at the last commit */
static int64_t		 wal_blocked_since = -1;	/* mono ms; -1: not */
static int		 wal_warned;		/* frames last said; 0: none */

/* fdatasync(2); tests count or fail the calls through this seam. */
int			(*store_fdatasync)(int) = fdatasync;
/* fsync(2) of the state directory, through a seam of its own. */
int			(*store_fsync_dir)(int) = fsync;

enum journal_kind { J_TASK, J_ATTEMPT_START, J_ATTEMPT_PID, J_ATTEMPT_END,
    J_ATTEMPT_FORGET, J_PROGRESS, J_DEPS, J_PAUSED };

struct journal_entry {
	enum journal_kind		 kind;
	struct task_rec			*task;		/* copy, or NULL */
	struct attempt_rec		*attempt;	/* copy, or NULL */
	int64_t				 id;		/* J_PROGRESS */
	int64_t				 hb_at;
	int64_t				 progress;
	char				*message;
	char				*queue;		/* J_PAUSED */
	int				 pause;
	TAILQ_ENTRY(journal_entry)	 entry;
};
static TAILQ_HEAD(, journal_entry) journal = TAILQ_HEAD_INITIALIZER(journal);
static size_t		 journal_len;

static int	store_replay(void);

const char *
task_state_name(enum task_state s)
{
	return (s < TASK_NSTATES ? task_state_names[s] : "unknown");
}

int
task_state_from_name(const char *name)
{
	int	i;

	for (i = 0; i < TASK_NSTATES; i++) {
		if (strcmp(name, task_state_names[i]) == 0)
			return (i);
	}
	return (-1);
}

const char *
outcome_name(enum outcome o)
{
	return (o < OUTCOME_COUNT ? outcome_names[o] : NULL);
}

enum outcome
outcome_from_name(const char *name)
{
	int	i;

	if (name == NULL)
		return (OUTCOME_NONE);
	for (i = 1; i < OUTCOME_COUNT; i++) {
		if (strcmp(name, outcome_names[i]) == 0)
			return (i);
	}
	return (OUTCOME_NONE);
}

/*
 * A write failed: last_error says how. Said on stderr, but the same error
 * again within STORE_SAY_AGAIN_MS only counted: a full disk fails the
 * retry every second (daemon.c) and each pass's writes, and an outage of
 * an hour was thousands of the same line. The count is said when another
 * error is, and when writes go through again (store_errors_end).
 */
#define STORE_SAY_AGAIN_MS	60000

static char	 err_said[sizeof last_error];	/* the last error said */
static int64_t	 err_said_ms = -1;
static long	 err_again;			/* of it, not said since */

/* The failures of err_said not said yet, if any. */
static void
store_errors_counted(void)
{
	if (err_again > 0)
		log_warnx("store: %ld more of: %s", err_again, err_said);
	err_again = 0;
}

static void
store_note_error(const char *what)
{
	int64_t	now = mono_ms();

	snprintf(last_error, sizeof last_error, "%s: %s", what,
	    sqlite3_errmsg(db));
	if (in_txn)
		txn_failed = 1;
	if (err_said_ms != -1 && now - err_said_ms < STORE_SAY_AGAIN_MS &&
	    strcmp(err_said, last_error) == 0) {
		err_again++;
		return;
	}
	store_errors_counted();
	log_warnx("store: %s", last_error);
	strlcpy(err_said, last_error, sizeof err_said);
	err_said_ms = now;
}

/* A commit went through: an outage's next error is said at once. */
static void
store_errors_end(void)
{
	if (err_said_ms == -1)
		return;
	store_errors_counted();
	err_said_ms = -1;
}

/*
 * An fsync (or the directory's) failed, last_error says how: nothing is
 * known to be on disk until a checkpoint works, and store_healthy says why
 * until then, whatever later commits do to last_error.
 */
static void
store_sync_failed(void)
{
	sync_failed = 1;
	strlcpy(sync_error, last_error, sizeof sync_error);
}

/*
 * A read failed: the op that asked answers an error, and nothing is marked
 * unhealthy (that is for writes, whose commit and retry clear it).
 */
static void
store_read_failed(const char *what)
{
	log_warnx("store: %s: %s", what, sqlite3_errmsg(db));
}

/* Runs a prepared statement to completion; returns the last sqlite code. */
static int
store_step_done(sqlite3_stmt *st, const char *what)
{
	int	rc;

	rc = sqlite3_step(st);
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
		store_note_error(what);
		return (rc);
	}
	return (SQLITE_OK);
}

/*
 * Counts tasks per state from the table (the slow, always right way).
 * Returns 0, or -1 when the table could not be read to the end.
 */
static int
counts_from_table(int64_t counts[TASK_NSTATES])
{
	sqlite3_stmt	*st = stmts[ST_COUNTS];
	int64_t		 got[TASK_NSTATES] = { 0 };
	int		 s, rc;

	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		s = task_state_from_name((const char *)
		    sqlite3_column_text(st, 0));
		if (s >= 0)
			got[s] = sqlite3_column_int64(st, 1);
	}
	sqlite3_reset(st);
	if (rc != SQLITE_DONE) {
		store_read_failed("counting tasks");
		return (-1);
	}
	memcpy(counts, got, sizeof got);
	return (0);
}

/* Opens the write transaction of this loop pass if none is open. */
static int
store_begin(void)
{
	/*
	 * After an I/O error (or a full disk with no statement journal)
	 * SQLite has rolled the whole transaction back itself and is in
	 * autocommit again: a write now would commit alone, answered as
	 * failed with the rest of the pass. It waits in the journal for the
	 * next pass's transaction instead.
	 */
	if (in_txn && txn_failed && sqlite3_get_autocommit(db))
		return (-1);
	if (in_txn)
		return (0);
	/*
	 * One BEGIN that waited out the busy timeout is enough for a pass:
	 * the journal keeps the pass's writes, and its commit fails anyway.
	 */
	if (begin_failed)
		return (-1);
	if (store_step_done(stmts[ST_BEGIN], "begin") != SQLITE_OK) {
		begin_failed = 1;
		return (-1);
	}
	in_txn = 1;
	txn_failed = 0;
	txn_first_insert = 0;
	if (!TAILQ_EMPTY(&journal) && store_replay() == -1) {
		txn_failed = 1;
		/* Rolled back by SQLite itself: the caller's write would
		 * commit alone (see above). */
		if (sqlite3_get_autocommit(db))
			return (-1);
	}
	return (0);
}

static void
journal_free(struct journal_entry *j)
{
	task_rec_free(j->task);
	attempt_rec_free(j->attempt);
	free(j->message);
	free(j->queue);
	free(j);
}

static void
journal_clear(void)
{
	struct journal_entry	*j;

	while ((j = TAILQ_FIRST(&journal)) != NULL) {
		TAILQ_REMOVE(&journal, j, entry);
		journal_free(j);
	}
	journal_len = 0;
}

/*
 * Ends the transaction of this pass; with sync, the WAL is fsynced too
 * (store_sync). Returns 0 when it is committed (and, asked, on disk); -1
 * when the commit failed and was rolled back (the journal will be written
 * again by the next transaction, see the top of this file); -2 when it is
 * committed but the sync failed.
 */
int
store_commit_as(int sync)
{
	begin_failed = 0;	/* the next pass may try again */
	commit_kept_only = 0;
	/*
	 * No transaction, but writes of this pass in the journal: their
	 * BEGIN failed (an outside writer held the lock past the busy
	 * timeout). They are not in the database, so not committed. Nothing
	 * was rolled back either: what earlier passes committed goes on disk
	 * all the same when asked, and the answers of reads, which waited
	 * for that alone, may go (store_commit_kept_only). Without this, a
	 * commit left unsynced when the lock came held every read back, and
	 * refused it, for as long as the lock lasted.
	 */
	if (!in_txn && !TAILQ_EMPTY(&journal)) {
		if (last_error[0] == '\0')
			snprintf(last_error, sizeof last_error,
			    "cannot begin a transaction");
		commit_kept_only = 1;
		if (sync)
			(void)store_sync();
		return (-1);
	}
	if (!in_txn)
		return (sync ? store_sync() : 0);
	if (!txn_failed &&
	    store_step_done(stmts[ST_COMMIT], "commit") == SQLITE_OK) {
		in_txn = 0;
		last_error[0] = '\0';
		store_errors_end();
		journal_clear();
		/* Unread, they are read again at the next commit. */
		if (!counts_exact && counts_from_table(state_counts) == 0)
			counts_exact = 1;
		memcpy(committed_counts, state_counts, sizeof state_counts);
		commit_seq++;
		if (unsynced_since == -1)
			unsynced_since = mono_ms();
		bgsync_committed();
		if (txn_first_insert != 0)
			inserted = 1;
		txn_first_insert = 0;
		return (sync ? store_sync() : 0);
	}
	if (sqlite3_get_autocommit(db) == 0)
		sqlite3_step(stmts[ST_ROLLBACK]);
	sqlite3_reset(stmts[ST_ROLLBACK]);
	counts_exact = 0;	/* inserts and deletes of the txn are gone */
	if (txn_first_insert != 0 && (rolled_back_from == 0 ||
	    txn_first_insert < rolled_back_from))
		rolled_back_from = txn_first_insert;
	rolled_back = 1;
	rollbacks++;
	in_txn = 0;
	txn_failed = 0;
	txn_first_insert = 0;
	if (last_error[0] == '\0')
		snprintf(last_error, sizeof last_error, "commit failed");
	return (-1);
}

/* Commits and syncs: for shutdown, recovery and tests. */
int
store_commit(void)
{
	return (store_commit_as(1));
}

/*
 * The WAL (and the database file) came into being since the last look:
 * their names are on disk only once their directory is synced. SQLite
 * does that at its own first sync of a new WAL, but with synchronous=
 * NORMAL that is the first checkpoint, and forkqd syncs the WAL itself:
 * until then a power failure could take the whole WAL, acknowledged
 * writes with it. Once per WAL, so cheap.
 */
static int
store_sync_dir(void)
{
	char	*path, *slash;
	int	 fd, rc = 0;

	path = xstrdup(sqlite3_db_filename(db, "main"));
	if ((slash = strrchr(path, '/')) != NULL)
		*(slash == path ? slash + 1 : slash) = '\0';
	else
		strlcpy(path, ".", strlen(path) + 1);
	if ((fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1 ||
	    (store_fsync_dir(fd) == -1 && errno != EINVAL)) {
		/* EINVAL: a file system that cannot sync a directory. */
		snprintf(last_error, sizeof last_error,
		    "fsync of the directory %s: %s", path, strerror(errno));
		rc = -1;
	}
	if (fd != -1)
		close(fd);
	free(path);
	return (rc);
}

/*
 * Opens forkq.db-wal for fsyncs (wal_fd) if it is not open yet. Returns 0,
 * or -2 with last_error set.
 */
static int
store_wal_open(void)
{
	struct stat	 st, at_path;
	const char	*path;
	int		 removed;

	if (wal_path == NULL)
		xasprintf(&wal_path, "%s-wal", sqlite3_db_filename(db,
		    "main"));
	path = wal_path;
	/*
	 * A WAL removed (it should not be), or removed and made again (a
	 * reader opening the database makes an empty one), is found by its
	 * inode; not while the sync thread may be using the fd. SQLite goes
	 * on writing the removed file through its own fd, where nothing
	 * survives a crash: store_retry() checkpoints what it holds into the
	 * database and makes a WAL again.
	 */
	if (wal_fd != -1 && !bgsync_busy) {
		if (fstat(wal_fd, &st) == -1 || st.st_nlink == 0)
			removed = 1;
		else if (stat(path, &at_path) == -1)
			removed = errno == ENOENT;
		else
			removed = at_path.st_dev != st.st_dev ||
			    at_path.st_ino != st.st_ino;
		if (removed) {
			close(wal_fd);
			wal_fd = -1;
			snprintf(last_error, sizeof last_error, "%s was "
			    "removed while forkqd ran", path);
			wal_removed = 1;
			store_sync_failed();
			return (-2);
		}
	}
	if (wal_fd != -1)
		return (0);
	if ((wal_fd = open(path, O_RDONLY | O_CLOEXEC)) == -1) {
		removed = errno == ENOENT;
		snprintf(last_error, sizeof last_error, "open %s: %s", path,
		    strerror(errno));
		if (removed) {
			wal_removed = 1;	/* as above */
			store_sync_failed();
		}
	}
	if (wal_fd == -1)
		return (-2);
	if (store_sync_dir() == -1) {
		close(wal_fd);
		wal_fd = -1;
		store_sync_failed();
		return (-2);
	}
	return (0);
}

/* Commits up to seq (with counts) are on disk. */
static void
store_synced_up_to(uint64_t seq, const int64_t counts[TASK_NSTATES])
{
	if (seq <= synced_seq)
		return;		/* a later sync told it already */
	synced_seq = seq;
	memcpy(synced_counts, counts, sizeof synced_counts);
	if (seq == commit_seq)
		unsynced_since = -1;
	else
		unsynced_since = bgsync_next_since;
}

/*
 * Puts every commit made so far on disk: one fdatasync of the WAL, which
 * holds them all in order. Returns 0, or -2 when it failed (last_error
 * says why): the commits are made but not known to be on disk.
 */
static int	bgsync_wait(void);

int
store_sync(void)
{
	if (sync_failed)
		return (-2);	/* until store_retry()'s checkpoint */
	if (unsynced_since == -1)
		return (0);
	/*
	 * A sync of the thread under way first, and its result: the kernel
	 * tells a write-back error once per open file, to whichever fsync
	 * comes first, so this one could succeed over the thread's failure.
	 */
	if (bgsync_busy) {
		if (bgsync_wait() != 0)
			return (-2);
		if (unsynced_since == -1)
			return (0);	/* it covered every commit */
	}
	if (!config.sync_normal) {
		if (store_wal_open() != 0)
			return (-2);
		if (store_fdatasync(wal_fd) == -1) {
			snprintf(last_error, sizeof last_error,
			    "fdatasync of the WAL: %s", strerror(errno));
			store_sync_failed();
			return (-2);
		}
	}
	store_synced_up_to(commit_seq, committed_counts);
	return (0);
}

/*
 * The sync thread. What forkqd did by itself (attempts starting and
 * ending) goes to disk within a few ms of its commit (daemon.c), and that
 * fdatasync took the loop 0.3-0.7 ms here, more on a busy disk: requests,
 * exits and heartbeats that came meanwhile waited. Now the loop asks this
 * thread (store_sync_start) and goes on; the thread tells it when the
 * sync is over (store_sync_notify), and store_sync_finish() takes the
 * result. Answers still sync on the loop (store_sync): they wait for the
 * disk in any case, and an fsync of theirs covers what the thread's
 * would. The thread makes no other call: SQLite stays the loop's.
 */
static pthread_t	 bgsync_thread;
static int		 bgsync_started;	/* the thread runs */
static pthread_mutex_t	 bgsync_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t	 bgsync_cond = PTHREAD_COND_INITIALIZER;
static pthread_cond_t	 bgsync_done = PTHREAD_COND_INITIALIZER;
/* Under bgsync_mutex: */
static int		 bgsync_fd = -1;	/* to sync now; -1: none asked */
static int		 bgsync_ended;		/* a sync ended, not taken */
static int		 bgsync_errno;		/* its failure, or 0 */
static int		 bgsync_stop;		/* store_close: end */
static void		(*bgsync_notify)(void);
/* The loop's: bgsync_busy and bgsync_next_since, above; */
static uint64_t		 bgsync_seq;		/* the last commit it covers */
static int64_t		 bgsync_counts[TASK_NSTATES];	/* as of then */

static void *
bgsync_main(void *arg)
{
	int	fd, rc, err;

	pthread_mutex_lock(&bgsync_mutex);
	for (;;) {
		while (bgsync_fd == -1 && !bgsync_stop)
			pthread_cond_wait(&bgsync_cond, &bgsync_mutex);
		if (bgsync_stop)
			break;
		fd = bgsync_fd;
		pthread_mutex_unlock(&bgsync_mutex);
		rc = store_fdatasync(fd);
		err = errno;
		pthread_mutex_lock(&bgsync_mutex);
		bgsync_fd = -1;
		bgsync_errno = rc == -1 ? err : 0;
		bgsync_ended = 1;
		pthread_cond_signal(&bgsync_done);
		/* Under the mutex: store_sync_notify(NULL) then waits. */
		if (bgsync_notify != NULL)
			bgsync_notify();
	}
	pthread_mutex_unlock(&bgsync_mutex);
	return (NULL);
}

/* A commit was made: if a sync under way does not cover it, note when. */
static void
bgsync_committed(void)
{
	if (bgsync_busy && bgsync_next_since == -1)
		bgsync_next_since = mono_ms();
}

/*
 * Who the sync thread calls when a sync ends, from that thread (so it
 * must be safe there: ev_async_send). NULL: nobody; once this returns, the
 * old one is not called again.
 */
void
store_sync_notify(void (*fn)(void))
{
	pthread_mutex_lock(&bgsync_mutex);
	bgsync_notify = fn;
	pthread_mutex_unlock(&bgsync_mutex);
}

static int
bgsync_start_thread(void)
{
	int		err;

	bgsync_stop = 0;
	if ((err = thread_start_quiet(&bgsync_thread, bgsync_main)) != 0) {
		errno = err;
		log_warn("a thread for fsyncs; they run on the loop");
		return (-1);
	}
	spawn_sched_thread(bgsync_thread);
	bgsync_started = 1;
	return (0);
}

static void
bgsync_stop_thread(void)
{
	if (!bgsync_started)
		return;
	thread_stop(bgsync_thread, &bgsync_mutex, &bgsync_cond, &bgsync_stop);
	bgsync_started = 0;
	bgsync_busy = 0;
	bgsync_fd = -1;
	bgsync_ended = 0;
}

/*
 * Puts the commits made so far on disk without waiting: the sync thread
 * does it, or this call when there is no thread. Returns 0 (asked, done,
 * nothing to do, or a sync already under way: store_sync_finish() tells),
 * or -2 when it failed at once (last_error says why).
 */
int
store_sync_start(void)
{
	if (sync_failed)
		return (-2);
	if (unsynced_since == -1 || bgsync_busy)
		return (0);
	if (config.sync_normal ||
	    (!bgsync_started && bgsync_start_thread() == -1))
		return (store_sync());
	if (store_wal_open() != 0)
		return (-2);
	bgsync_busy = 1;
	bgsync_seq = commit_seq;
	memcpy(bgsync_counts, committed_counts, sizeof bgsync_counts);
	bgsync_next_since = -1;
	pthread_mutex_lock(&bgsync_mutex);
	bgsync_fd = wal_fd;
	pthread_cond_signal(&bgsync_cond);
	pthread_mutex_unlock(&bgsync_mutex);
	return (0);
}

/*
 * Takes the result of the sync store_sync_start() asked for, once the
 * thread has told it ended. Returns 0 (on disk, or not ended yet), or -2
 * when it failed (last_error says why; the store is unhealthy until a
 * checkpoint, as after any failed fsync).
 */
int
store_sync_finish(void)
{
	int	ended, err;

	pthread_mutex_lock(&bgsync_mutex);
	ended = bgsync_ended;
	err = bgsync_errno;
	bgsync_ended = 0;
	pthread_mutex_unlock(&bgsync_mutex);
	if (!ended || !bgsync_busy)
		return (0);
	bgsync_busy = 0;
	if (err != 0) {
		snprintf(last_error, sizeof last_error,
		    "fdatasync of the WAL: %s", strerror(err));
		store_sync_failed();
		return (-2);
	}
	if (!sync_failed)
		store_synced_up_to(bgsync_seq, bgsync_counts);
	return (0);
}

/* Waits for the thread's sync under way to end; store_sync_finish(). */
static int
bgsync_wait(void)
{
	pthread_mutex_lock(&bgsync_mutex);
	while (!bgsync_ended)
		pthread_cond_wait(&bgsync_done, &bgsync_mutex);
	pthread_mutex_unlock(&bgsync_mutex);
	return (store_sync_finish());
}

/* Is a sync of the thread under way (asked, result not taken)? */
int
store_sync_pending(void)
{
	return (bgsync_busy);
}

/* ms since the oldest commit not yet on disk; -1 when all are. */
int64_t
store_unsynced_ms(void)
{
	return (unsynced_since == -1 ? -1 : mono_ms() - unsynced_since);
}

/*
 * Is everything forkqd wrote on disk (no open transaction, no commit
 * waiting for its fsync)? An answer that may tell of it waits until it is.
 */
int
store_all_on_disk(void)
{
	return (!in_txn && unsynced_since == -1);
}

/*
 * Did the last store_commit_as() fail only for want of a transaction (its
 * writes kept in the journal, nothing rolled back)?
 */
int
store_commit_kept_only(void)
{
	return (commit_kept_only);
}

/*
 * Is the store failing to sync (until a checkpoint works)? A sync asked
 * meanwhile would fail at once.
 */
int
store_sync_failing(void)
{
	return (sync_failed);
}

/*
 * Is a transaction open (forkqd wrote what is not committed yet)? Events
 * about it wait for its end (event.c).
 */
int
store_in_txn(void)
{
	return (in_txn);
}

/* *flag's value, cleared: what the store_take_* calls report. */
static int
take_flag(int *flag)
{
	int	v = *flag;

	*flag = 0;
	return (v);
}

/*
 * Did a commit fail (its transaction rolled back) since the last call?
 * Then *first_id is the first task id it took back (0: it inserted none):
 * every task from that id on is gone, and the id goes to the next task.
 * Forgets it.
 */
int
store_take_rollback(int64_t *first_id)
{
	*first_id = rolled_back_from;
	rolled_back_from = 0;
	return (take_flag(&rolled_back));
}

/* Did the last commit make new tasks due? (clears the flag) */
int
store_take_inserted(void)
{
	return (take_flag(&inserted));
}

/*
 * After the checkpoint that saved what SQLite held in a removed WAL: SQLite
 * leaves WAL mode (closing the removed file) and enters it again, which
 * makes forkq.db-wal anew. Refused while a reader holds the database;
 * tried again at the next retry. Returns 0 or -1.
 */
static int	exec_sql(const char *, char **);

static int
store_wal_remake(void)
{
	char	*cause = NULL;

	if (exec_sql("PRAGMA journal_mode = DELETE", &cause) == -1 ||
	    exec_sql("PRAGMA journal_mode = WAL", &cause) == -1) {
		snprintf(last_error, sizeof last_error,
		    "making the removed WAL again: %s", cause);
		free(cause);
		return (-1);
	}
	wal_removed = 0;
	return (0);
}

/* While unhealthy: try to write the journal again. 0 once it is on disk. */
int
store_retry(void)
{
	int	logged, done, rc;

	/*
	 * A transaction of the pass is open: the pass's own commit settles
	 * what it holds (a prune's output goes or stays by it). Committed or
	 * rolled back here, a prune's output was removed for rows that came
	 * back. Healthy, the store needs no retry.
	 */
	if (in_txn)
		return (last_error[0] == '\0' && !sync_failed ? 0 : -1);
	/*
	 * After a failed fsync the kernel may have dropped what it could not
	 * write, and a second fsync can succeed all the same: only a full
	 * checkpoint (the WAL rewritten into the database file, which is
	 * fsynced) puts the store back on known ground.
	 */
	if (sync_failed) {
		if (in_txn)
			return (-1);	/* next time, between transactions */
		/* Not waiting on readers: the loop must not stall; retry. */
		sqlite3_busy_timeout(db, 0);
		rc = sqlite3_wal_checkpoint_v2(db, NULL,
		    SQLITE_CHECKPOINT_TRUNCATE, &logged, &done);
		sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
		if (rc != SQLITE_OK) {
			store_note_error("checkpoint after a failed fsync");
			return (-1);
		}
		if (logged != done) {
			snprintf(last_error, sizeof last_error,
			    "checkpoint after a failed fsync: incomplete");
			return (-1);
		}
		if (wal_removed && store_wal_remake() == -1)
			return (-1);
		sync_failed = 0;
		unsynced_since = -1;
		synced_seq = commit_seq;
		memcpy(synced_counts, committed_counts,
		    sizeof committed_counts);
	}
	if (store_begin() == -1) {
		if (last_error[0] == '\0')
			snprintf(last_error, sizeof last_error,
			    "cannot begin a transaction");
		return (-1);
	}
	return (store_commit());
}

/*
 * What the journal keeps of task t: the fields ST_TASK_UPDATE writes,
 * nothing of what a task never changes (argv, env, ...).
 */
static struct task_rec *
task_rec_dup_update(const struct task_rec *t)
{
	struct task_rec	*c;

	c = xcalloc(1, sizeof *c);
	c->id = t->id;
	c->state = t->state;
	c->attempt = t->attempt;
	c->max_attempts = t->max_attempts;
	c->run_at = t->run_at;
	c->started_at = t->started_at;
	c->finished_at = t->finished_at;
	c->outcome = t->outcome;
	c->exit_code = t->exit_code;
	c->signal = t->signal;
	c->error = t->error != NULL ? xstrdup(t->error) : NULL;
	c->progress = t->progress;
	c->progress_message = t->progress_message != NULL ?
	    xstrdup(t->progress_message) : NULL;
	c->pid = t->pid;
	c->last_heartbeat_at = t->last_heartbeat_at;
	c->cancel_requested = t->cancel_requested;
	return (c);
}

static struct attempt_rec *
attempt_rec_dup(const struct attempt_rec *a)
{
	struct attempt_rec	*c;

	c = xmalloc(sizeof *c);
	*c = *a;
	c->error = a->error != NULL ? xstrdup(a->error) : NULL;
	return (c);
}

/* Keeps a write until its transaction commits (not while replaying). */
static void
journal_add(enum journal_kind kind, const struct task_rec *t,
    const struct attempt_rec *a)
{
	struct journal_entry	*j;

	if (replaying)
		return;
	/* A task's newest full state makes its older ones moot. */
	if (kind == J_TASK) {
		struct journal_entry	*old, *next;

		TAILQ_FOREACH_SAFE(old, &journal, entry, next) {
			if (old->kind == J_TASK && old->task->id == t->id) {
				TAILQ_REMOVE(&journal, old, entry);
				journal_free(old);
				journal_len--;
			}
		}
	}
	j = xcalloc(1, sizeof *j);
	j->kind = kind;
	j->task = t != NULL ? task_rec_dup_update(t) : NULL;
	j->attempt = a != NULL ? attempt_rec_dup(a) : NULL;
	TAILQ_INSERT_TAIL(&journal, j, entry);
	journal_len++;
}

/*
 * Opens the pass's transaction if need be, then journals a write. Begin
 * first: a new transaction replays the journal as it was, without this
 * entry. Returns store_begin()'s result (the entry is kept either way).
 */
static int
store_begin_journaled(enum journal_kind kind, const struct task_rec *t,
    const struct attempt_rec *a)
{
	int	began = store_begin();

	journal_add(kind, t, a);
	return (began);
}

/* The integer a PRAGMA answers, in *n. Returns 0, or -1. */
static int
store_pragma_int(const char *sql, int *n)
{
	sqlite3_stmt	*st;
	int		 rc = -1;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW) {
		*n = sqlite3_column_int(st, 0);
		rc = 0;
	}
	sqlite3_finalize(st);
	return (rc);
}

/* Returns 0 while the last write went through; else -1 and why. */
int
store_healthy(char **cause)
{
	if (sync_failed) {
		xasprintf(cause, "%s (until a checkpoint succeeds)",
		    sync_error[0] != '\0' ? sync_error : "an fsync failed");
		return (-1);
	}
	if (last_error[0] == '\0')
		return (0);
	*cause = xstrdup(last_error);
	return (-1);
}

static void
bind_int(sqlite3_stmt *st, int idx, int64_t v)
{
	if (v == UNSET)
		sqlite3_bind_null(st, idx);
	else
		sqlite3_bind_int64(st, idx, v);
}

static void
bind_text(sqlite3_stmt *st, int idx, const char *s)
{
	if (s == NULL)
		sqlite3_bind_null(st, idx);
	else
		sqlite3_bind_text(st, idx, s, -1, SQLITE_STATIC);
}

static int64_t
col_int(sqlite3_stmt *st, int idx)
{
	if (sqlite3_column_type(st, idx) == SQLITE_NULL)
		return (UNSET);
	return (sqlite3_column_int64(st, idx));
}

static char *
col_text(sqlite3_stmt *st, int idx)
{
	const unsigned char	*s;

	if ((s = sqlite3_column_text(st, idx)) == NULL)
		return (NULL);
	return (xstrdup((const char *)s));
}

static int
exec_sql(const char *sql, char **cause)
{
	char	*err = NULL;

	if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
		xasprintf(cause, "%s", err != NULL ? err : sqlite3_errmsg(db));
		sqlite3_free(err);
		return (-1);
	}
	return (0);
}

static int
store_migrate(char **cause)
{
	int		 version, v;
	char		*err = NULL;

	if (store_pragma_int("PRAGMA user_version", &version) == -1) {
		xasprintf(cause, "cannot read the schema version: %s",
		    sqlite3_errmsg(db));
		return (-1);
	}

	if (version > STORE_SCHEMA_VERSION) {
		xasprintf(cause, "the database has schema version %d, newer "
		    "than this forkqd understands (%d): use a newer forkqd",
		    version, STORE_SCHEMA_VERSION);
		return (-1);
	}
	if (version == STORE_SCHEMA_VERSION)
		return (0);
	if (exec_sql("BEGIN IMMEDIATE", cause) == -1)
		return (-1);
	for (v = version; v < STORE_SCHEMA_VERSION; v++) {
		if (exec_sql(migrations[v], &err) == -1) {
			xasprintf(cause, "schema upgrade to version %d failed: "
			    "%s", v + 1, err);
			free(err);
			/* Its own failure would add nothing to cause. */
			(void)sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
			return (-1);
		}
	}
	xasprintf(&err, "PRAGMA user_version = %d", STORE_SCHEMA_VERSION);
	if (exec_sql(err, cause) == -1 || exec_sql("COMMIT", cause) == -1) {
		free(err);
		return (-1);
	}
	free(err);
	return (0);
}

/* Checkpoints reach the end again, or the WAL began again. */
static void
store_wal_unblocked(void)
{
	if (wal_warned != 0) {
		log_info("store: checkpoints reach the end of the WAL again");
		event_emit(EV_LEVEL_INFO, "store.checkpoint_resumed", 0, NULL);
	}
	wal_warned = 0;
	wal_blocked_since = -1;
}

/* sqlite3_wal_hook: after each commit, with the frames in the WAL. */
static int
store_wal_hook(void *arg, sqlite3 *h, const char *schema, int frames)
{
	char	 why[160];
	int64_t	 now;
	int	 logged = 0, done = 0, rc, before = wal_frames;

	wal_frames = frames;
	/* Fewer than before: it began again (after a checkpoint of ours, an
	 * outside one, or store_retry's TRUNCATE). */
	if (frames < before)
		store_wal_unblocked();
	if (frames < WAL_CHECKPOINT_FRAMES)
		return (SQLITE_OK);
	rc = sqlite3_wal_checkpoint_v2(h, schema, SQLITE_CHECKPOINT_PASSIVE,
	    &logged, &done);
	if (rc == SQLITE_BUSY)
		return (SQLITE_OK);	/* another's checkpoint runs */
	if (rc == SQLITE_OK && done >= logged) {
		store_wal_unblocked();
		return (SQLITE_OK);
	}
	now = mono_ms();
	if (wal_blocked_since == -1)
		wal_blocked_since = now;
	if (now - wal_blocked_since < WAL_BLOCKED_MS ||
	    frames < (wal_warned != 0 ? 2 * wal_warned : WAL_BLOCKED_FRAMES))
		return (SQLITE_OK);
	wal_warned = frames;
	if (rc == SQLITE_OK)
		strlcpy(why, "a reader holds a transaction open on the "
		    "database: checkpoints cannot finish, and the WAL grows "
		    "until it goes", sizeof why);
	else
		snprintf(why, sizeof why, "checkpoints fail (%s), and the "
		    "WAL grows until one works", sqlite3_errstr(rc));
	log_warnx("store: %s (%d frames)", why, frames);
	event_emit(EV_LEVEL_WARN, "store.checkpoint_blocked", 0, json_pack(
	    "{s:I, s:s}", "wal_bytes", (json_int_t)frames * (page_bytes +
	    WAL_FRAME_HEADER), "message", why));
	return (SQLITE_OK);
}


/*
 * Opens (creating if needed) and upgrades the database in dir. On failure
 * returns -1 with *cause set; a database that is not one is never reset.
 */
int
store_open(const char *dir, char **cause)
{
	char		*path, *err = NULL;
	int		 i, fd;

	/*
	 * forkqd is one thread: SQLite needs no mutexes and no allocation
	 * statistics (both cost on every allocation). Only possible before
	 * SQLite initializes; later calls change nothing, harmlessly.
	 */
	(void)sqlite3_config(SQLITE_CONFIG_SINGLETHREAD);
	(void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
	xasprintf(&path, "%s/forkq.db", dir);
	if (walbuf_register() == -1) {
		xasprintf(cause, "%s: cannot register the %s VFS", path,
		    WALBUF_VFS);
		free(path);
		return (-1);
	}
	/*
	 * A new database is made 0600 here, not by SQLite (0644 less the
	 * umask): it holds every user's argv and env, and its state dir may
	 * be one made 0755 by someone else. SQLite gives the WAL and the
	 * shared-memory file the database's mode. An existing database keeps
	 * the mode its operator gave it.
	 */
	if ((fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC |
	    O_NOFOLLOW, 0600)) != -1)
		close(fd);
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE |
	    SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, WALBUF_VFS) !=
	    SQLITE_OK) {
		xasprintf(cause, "%s: %s", path, db != NULL ?
		    sqlite3_errmsg(db) : "cannot open");
		free(path);
		store_close();
		return (-1);
	}
	sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
	sqlite3_extended_result_codes(db, 1);
	/*
	 * 1 KiB pages for a new database (an existing one keeps its own):
	 * every commit writes each page it touched to the WAL, checksummed,
	 * and a task's few hundred bytes touch a leaf of the table and of
	 * each index three times in its life. With 4 KiB pages that was about
	 * 40 KiB of WAL per task; 1 KiB pages write a quarter of it and
	 * fsync it sooner (bench: 5-8% more tasks/s).
	 */
	/*
	 * journal_size_limit: a reader that holds a transaction open (the
	 * sqlite3 shell, left in a BEGIN) keeps checkpoints from finishing,
	 * and the WAL grows, 9 KB a task. SQLite never gives that space back
	 * by itself; with a limit it cuts the WAL back to it when the WAL
	 * begins again after the reader has gone. 4 MiB is past what the
	 * WAL reaches between the checkpoints of a busy forkqd (about 1 MiB),
	 * so the common case never truncates.
	 */
	if (exec_sql("PRAGMA page_size = 1024", &err) == -1 ||
	    exec_sql("PRAGMA journal_mode = WAL", &err) == -1 ||
	    exec_sql("PRAGMA journal_size_limit = 4194304", &err) == -1 ||
	    exec_sql("PRAGMA synchronous = NORMAL", &err) == -1 ||
	    exec_sql("PRAGMA foreign_keys = ON", &err) == -1 ||
	    store_migrate(&err) == -1) {
		xasprintf(cause, "%s: %s", path, err);
		free(err);
		free(path);
		store_close();
		return (-1);
	}
	if (store_pragma_int("PRAGMA page_size", &page_bytes) == -1 ||
	    page_bytes <= 0)
		page_bytes = 1024;
	sqlite3_wal_hook(db, store_wal_hook, NULL);
	for (i = 0; i < ST_COUNT; i++) {
		if (sqlite3_prepare_v3(db, stmt_sql[i], -1,
		    SQLITE_PREPARE_PERSISTENT, &stmts[i], NULL) != SQLITE_OK) {
			xasprintf(cause, "%s: preparing statement %d: %s",
			    path, i, sqlite3_errmsg(db));
			free(path);
			store_close();
			return (-1);
		}
	}
	if (counts_from_table(state_counts) == -1) {
		xasprintf(cause, "%s: counting tasks: %s", path,
		    sqlite3_errmsg(db));
		free(path);
		store_close();
		return (-1);
	}
	/*
	 * The WAL's fd for forkqd's fsyncs, now: taken at the first answer,
	 * it was one more fd to find when forkqd may have none left (clients
	 * up to RLIMIT_NOFILE), and the store then refused every write until
	 * a checkpoint. Should it fail here, nothing is said: the first sync
	 * of a pass tries again, and its failure goes where a failed sync
	 * goes (daemon.c's store_trouble, which retries). Said here, it
	 * would refuse every write with nothing to retry it.
	 */
	if (!config.sync_normal && store_wal_open() != 0) {
		sync_failed = 0;
		sync_error[0] = last_error[0] = '\0';
	}
	free(path);
	memcpy(committed_counts, state_counts, sizeof state_counts);
	memcpy(synced_counts, state_counts, sizeof state_counts);
	counts_exact = 1;
	return (0);
}

void
store_close(void)
{
	int	i;

	if (db == NULL)
		return;
	store_commit();
	store_errors_counted();
	for (i = 0; i < ST_COUNT; i++) {
		sqlite3_finalize(stmts[i]);
		stmts[i] = NULL;
	}
	sqlite3_close(db);
	db = NULL;
	bgsync_stop_thread();	/* it may be using wal_fd */
	if (wal_fd != -1)
		close(wal_fd);
	wal_fd = -1;
	free(wal_path);
	wal_path = NULL;
	journal_clear();
	free(am.cum);
	/*
	 * Another database may follow (the unit tests open one per test):
	 * nothing of this one's failures or counts carries over to it.
	 */
	memset(&am, 0, sizeof am);
	unsynced_since = bgsync_next_since = -1;
	in_txn = txn_failed = begin_failed = rolled_back = inserted = 0;
	replaying = sync_failed = wal_removed = dispatch_failed = 0;
	txn_first_insert = rolled_back_from = 0;
	wal_warned = wal_frames = 0;
	wal_blocked_since = -1;
	commit_seq = synced_seq = bgsync_seq = 0;
	bgsync_errno = 0;
	last_error[0] = sync_error[0] = '\0';
	memset(state_counts, 0, sizeof state_counts);
	memset(committed_counts, 0, sizeof committed_counts);
	memset(synced_counts, 0, sizeof synced_counts);
	counts_exact = finals_seeded = 0;
}

/*
 * The queued or running task of uid's with unique key, 0 when none is, -1
 * when the store could not tell: callers refuse then, as a write under a
 * key a live task holds would meet the unique index's refusal.
 */
int64_t
store_unique_find(const char *key, uid_t uid)
{
	sqlite3_stmt	*st = stmts[ST_UNIQUE_FIND];
	int64_t		 id = 0;
	int		 rc;

	bind_text(st, 1, key);
	sqlite3_bind_int64(st, 2, uid);
	if ((rc = sqlite3_step(st)) == SQLITE_ROW)
		id = sqlite3_column_int64(st, 0);
	else if (rc != SQLITE_DONE) {
		store_read_failed("reading unique keys");
		id = -1;
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return (id);
}

static int
store_exec_bind(const char *sql, const char *what, int64_t a, int64_t b,
    const char *text)
{
	sqlite3_stmt	*st;
	int		 rc;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
		store_note_error(what);
		return (-1);
	}
	sqlite3_bind_int64(st, 1, a);
	sqlite3_bind_int64(st, 2, b);
	if (text != NULL)
		sqlite3_bind_text(st, 3, text, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
		store_note_error(what);
		return (-1);
	}
	return (0);
}

static int
store_deps_insert(int64_t id, const struct task_spec *spec)
{
	sqlite3_stmt	*st = stmts[ST_DEPS_INSERT];
	size_t		 i;

	for (i = 0; i < spec->nafter; i++) {
		sqlite3_bind_int64(st, 1, id);
		sqlite3_bind_int64(st, 2, spec->after[i]);
		if (store_step_done(st, "insert dependency") != SQLITE_OK)
			return (-1);
	}
	return (0);
}

/*
 * The rows of st: column 0, an id, into *ids and, when states is not NULL,
 * column 1, a state's name, into *states; *n rows. The caller frees both.
 * Returns 0, or -1 (all NULL) when the store could not be read.
 */
static int
store_read_ids(sqlite3_stmt *st, const char *what, int64_t **ids,
    enum task_state **states, size_t *n)
{
	size_t	cap = 0;
	int	rc;

	*ids = NULL;
	if (states != NULL)
		*states = NULL;
	*n = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (*n == cap) {
			cap = cap == 0 ? 8 : cap * 2;
			*ids = xreallocarray(*ids, cap, sizeof **ids);
			if (states != NULL)
				*states = xreallocarray(*states, cap,
				    sizeof **states);
		}
		(*ids)[*n] = sqlite3_column_int64(st, 0);
		if (states != NULL)
			(*states)[*n] = (enum task_state)task_state_from_name(
			    (const char *)sqlite3_column_text(st, 1));
		(*n)++;
	}
	sqlite3_reset(st);
	if (rc == SQLITE_DONE)
		return (0);
	store_read_failed(what);
	free(*ids);
	*ids = NULL;
	if (states != NULL) {
		free(*states);
		*states = NULL;
	}
	*n = 0;
	return (-1);
}

/*
 * Queued tasks waiting on task id (run at every final transition, so
 * prepared once) into *ids, *n long; the caller frees them. Returns 0, or
 * -1 when the store could not be read.
 */
int
store_dependents(int64_t id, int64_t **ids, size_t *n)
{
	sqlite3_bind_int64(stmts[ST_DEPENDENTS], 1, id);
	return (store_read_ids(stmts[ST_DEPENDENTS], "reading dependents",
	    ids, NULL, n));
}

/*
 * Final tasks whose queued dependents do not show their end: a failed or
 * canceled one whose dependent is still queued, a succeeded one whose
 * dependent's count of what it still waits on is off. Ids into *ids, their
 * states into *states. Only a release that could not be read leaves such
 * a task behind (task_release_dependents); a sound database has none.
 */
int
store_unreleased_dependencies(int64_t **ids, enum task_state **states,
    size_t *n)
{
	return (store_read_ids(stmts[ST_UNRELEASED], "reading dependencies",
	    ids, states, n));
}

/*
 * The first task id waits on that ended failed or canceled (its state in
 * *state), or that is no longer there while id never started (pruned:
 * *state TASK_NSTATES); 0 when none is, -1 when the store could not tell.
 */
int64_t
store_failed_dependency(int64_t id, enum task_state *state)
{
	sqlite3_stmt	*st = stmts[ST_FAILED_DEPENDENCY];
	const char	*name;
	int64_t		 dep = 0;
	int		 rc;

	sqlite3_bind_int64(st, 1, id);
	if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		dep = sqlite3_column_int64(st, 0);
		name = (const char *)sqlite3_column_text(st, 1);
		*state = name == NULL ? TASK_NSTATES :
		    (enum task_state)task_state_from_name(name);
	} else if (rc != SQLITE_DONE) {
		store_read_failed("reading dependencies");
		dep = -1;
	}
	sqlite3_reset(st);
	return (dep);
}

/*
 * A dependency of task id ended well: recount what it still waits on. A
 * recount, not a decrement, so that writing it again (the journal) is
 * harmless.
 */
int
store_dependency_met(int64_t id)
{
	int	began;

	began = store_begin();
	if (!replaying) {
		struct journal_entry	*j = xcalloc(1, sizeof *j);

		j->kind = J_DEPS;
		j->id = id;
		TAILQ_INSERT_TAIL(&journal, j, entry);
		journal_len++;
	}
	if (began == -1)
		return (-1);
	sqlite3_bind_int64(stmts[ST_DEP_RECOUNT], 1, id);
	return (store_step_done(stmts[ST_DEP_RECOUNT], "dependency met") ==
	    SQLITE_OK ? 0 : -1);
}

/*
 * Debounce (spec 10): the queued, not yet started task id takes the new
 * argv, env and cwd of spec and runs at run_at.
 */
int
store_task_debounce(int64_t id, const struct task_spec *spec, int64_t run_at)
{
	sqlite3_stmt	*st;
	int		 rc;

	if (store_begin() == -1)
		return (-1);
	if (sqlite3_prepare_v2(db, "UPDATE tasks SET argv = ?2, env = ?3,"
	    " cwd = ?4, run_at = ?5 WHERE id = ?1", -1, &st,
	    NULL) != SQLITE_OK) {
		store_note_error("debounce");
		return (-1);
	}
	sqlite3_bind_int64(st, 1, id);
	bind_text(st, 2, spec->argv_json);
	bind_text(st, 3, spec->env_json);
	bind_text(st, 4, spec->cwd);
	sqlite3_bind_int64(st, 5, run_at);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE) {
		store_note_error("debounce");
		return (-1);
	}
	return (0);
}

/*
 * Paused queue names ("*" = all) into *out: the caller frees each and the
 * array. Returns -1, with nothing in *out, when the read failed.
 */
int
store_paused(char ***out, size_t *n)
{
	sqlite3_stmt	*st;
	size_t		 cap = 0, i;
	int		 rc;

	*out = NULL;
	*n = 0;
	if (sqlite3_prepare_v2(db, "SELECT queue FROM paused ORDER BY queue",
	    -1, &st, NULL) != SQLITE_OK) {
		store_read_failed("paused");
		return (-1);
	}
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (*n == cap) {
			cap = cap == 0 ? 8 : cap * 2;
			*out = xreallocarray(*out, cap, sizeof **out);
		}
		(*out)[(*n)++] = col_text(st, 0);
	}
	if (rc != SQLITE_DONE) {
		store_read_failed("paused");
		for (i = 0; i < *n; i++)
			free((*out)[i]);
		free(*out);
		*out = NULL;
		*n = 0;
	}
	sqlite3_finalize(st);
	return (rc == SQLITE_DONE ? 0 : -1);
}

/*
 * Pauses (or resumes) queue; "*" is all queues, and resuming it all.
 * Journaled like a task's change: the caller's paused list changes at
 * once, and a failed commit writes it again once the database recovers.
 */
int
store_set_paused(const char *queue, int paused)
{
	struct journal_entry	*j, *next;
	int			 began;

	began = store_begin();
	if (!replaying) {
		/* The newest for a queue makes its older ones moot. */
		TAILQ_FOREACH_SAFE(j, &journal, entry, next) {
			if (j->kind == J_PAUSED && strcmp(j->queue, queue) == 0) {
				TAILQ_REMOVE(&journal, j, entry);
				journal_free(j);
				journal_len--;
			}
		}
		j = xcalloc(1, sizeof *j);
		j->kind = J_PAUSED;
		j->queue = xstrdup(queue);
		j->pause = paused;
		TAILQ_INSERT_TAIL(&journal, j, entry);
		journal_len++;
	}
	if (began == -1)
		return (-1);
	if (paused)
		return (store_exec_bind("INSERT OR IGNORE INTO paused (queue)"
		    " VALUES (?3)", "pause", 0, 0, queue));
	if (strcmp(queue, "*") == 0)
		return (store_exec_bind("DELETE FROM paused WHERE ?1 = ?2",
		    "resume", 0, 0, NULL));
	return (store_exec_bind("DELETE FROM paused WHERE queue = ?3",
	    "resume", 0, 0, queue));
}

static struct cron_rec *
cron_from_row(sqlite3_stmt *st)
{
	struct cron_rec	*c = xcalloc(1, sizeof *c);

	c->name = col_text(st, 0);
	c->schedule = col_text(st, 1);
	c->request = col_text(st, 2);
	c->argv_json = col_text(st, 3);
	c->next_run_at = col_int(st, 4);
	c->last_run_at = col_int(st, 5);
	c->last_task = col_int(st, 6);
	c->uid = (uid_t)sqlite3_column_int64(st, 7);
	c->gid = (gid_t)sqlite3_column_int64(st, 8);
	return (c);
}

#define CRON_COLUMNS "name, schedule, request, argv, next_run_at," \
	" last_run_at, last_task, uid, gid"

/*
 * The cron entries that where (empty, or " WHERE ..." with a as ?1 and
 * UNSET as ?2) picks, by name, into *out (the caller frees them). Returns
 * -1, with nothing in *out, when the read failed.
 */
static int
store_cron_select(const char *where, int64_t a, struct cron_rec ***out,
    size_t *n)
{
	sqlite3_stmt	*st;
	size_t		 cap = 0, i;
	char		*sql;
	int		 rc;

	*out = NULL;
	*n = 0;
	xasprintf(&sql, "SELECT " CRON_COLUMNS " FROM crons%s ORDER BY name,"
	    " uid", where);
	rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
	free(sql);
	if (rc != SQLITE_OK) {
		store_read_failed("cron list");
		return (-1);
	}
	if (sqlite3_bind_parameter_count(st) >= 1)
		sqlite3_bind_int64(st, 1, a);
	if (sqlite3_bind_parameter_count(st) >= 2)
		sqlite3_bind_int64(st, 2, UNSET);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (*n == cap) {
			cap = cap == 0 ? 8 : cap * 2;
			*out = xreallocarray(*out, cap, sizeof **out);
		}
		(*out)[(*n)++] = cron_from_row(st);
	}
	if (rc != SQLITE_DONE) {
		store_read_failed("cron list");
		for (i = 0; i < *n; i++)
			cron_rec_free((*out)[i]);
		free(*out);
		*out = NULL;
		*n = 0;
	}
	sqlite3_finalize(st);
	return (rc == SQLITE_DONE ? 0 : -1);
}

/* Every cron entry, by name. */
int
store_cron_list(struct cron_rec ***out, size_t *n)
{
	return (store_cron_select("", 0, out, n));
}

/* The entries that are due at now: next_run_at at or before it. */
int
store_cron_due(int64_t now, struct cron_rec ***out, size_t *n)
{
	return (store_cron_select(" WHERE next_run_at <= ?1 AND"
	    " next_run_at != ?2", now, out, n));
}

/* uid's entries. */
int
store_cron_of(uid_t uid, struct cron_rec ***out, size_t *n)
{
	return (store_cron_select(" WHERE uid = ?1", uid, out, n));
}

/*
 * The uids with an entry called name, ascending, into *uids (freed by the
 * caller), *n of them. Read from the primary key's index alone: an admin's
 * cron_remove read every entry whole, requests of up to 64 KiB each.
 * Returns -1 when the read failed.
 */
int
store_cron_owners(const char *name, int64_t **uids, size_t *n)
{
	sqlite3_stmt	*st;
	int		 rc;

	*uids = NULL;
	*n = 0;
	if (sqlite3_prepare_v2(db, "SELECT uid FROM crons WHERE name = ?1"
	    " ORDER BY uid", -1, &st, NULL) != SQLITE_OK) {
		store_read_failed("cron owners");
		return (-1);
	}
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	rc = store_read_ids(st, "cron owners", uids, NULL, n);
	sqlite3_finalize(st);
	return (rc);
}

/*
 * When the next entry is due into *next (UNSET: none ever is). Returns -1
 * when the read failed.
 */
int
store_cron_next_run(int64_t *next)
{
	sqlite3_stmt	*st;
	int		 rc;

	*next = UNSET;
	if (sqlite3_prepare_v2(db, "SELECT min(next_run_at) FROM crons"
	    " WHERE next_run_at != ?1", -1, &st, NULL) != SQLITE_OK) {
		store_read_failed("cron next run");
		return (-1);
	}
	sqlite3_bind_int64(st, 1, UNSET);
	if ((rc = sqlite3_step(st)) == SQLITE_ROW &&
	    sqlite3_column_type(st, 0) != SQLITE_NULL)
		*next = sqlite3_column_int64(st, 0);
	else if (rc != SQLITE_ROW)
		store_read_failed("cron next run");
	sqlite3_finalize(st);
	return (rc == SQLITE_ROW ? 0 : -1);
}

/*
 * uid's entry called name into *out, NULL when there is none. Returns -1
 * when the read failed: "none" would be a guess.
 */
int
store_cron_get(uid_t uid, const char *name, struct cron_rec **out)
{
	sqlite3_stmt	*st;
	int		 rc;

	*out = NULL;
	if (sqlite3_prepare_v2(db, "SELECT " CRON_COLUMNS " FROM crons"
	    " WHERE uid = ?2 AND name = ?1", -1, &st, NULL) != SQLITE_OK) {
		store_read_failed("cron get");
		return (-1);
	}
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, uid);
	if ((rc = sqlite3_step(st)) == SQLITE_ROW)
		*out = cron_from_row(st);
	else if (rc != SQLITE_DONE)
		store_read_failed("cron get");
	sqlite3_finalize(st);
	return (rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -1);
}

int
store_cron_put(const struct cron_rec *c)
{
	sqlite3_stmt	*st;
	int		 rc;

	if (store_begin() == -1)
		return (-1);
	if (sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO crons ("
	    CRON_COLUMNS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)", -1,
	    &st, NULL) != SQLITE_OK) {
		store_note_error("cron put");
		return (-1);
	}
	bind_text(st, 1, c->name);
	bind_text(st, 2, c->schedule);
	bind_text(st, 3, c->request);
	bind_text(st, 4, c->argv_json);
	sqlite3_bind_int64(st, 5, c->next_run_at);
	bind_int(st, 6, c->last_run_at);
	bind_int(st, 7, c->last_task);
	sqlite3_bind_int64(st, 8, c->uid);
	sqlite3_bind_int64(st, 9, c->gid);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE) {
		store_note_error("cron put");
		return (-1);
	}
	return (0);
}

/* Removes uid's entry name: 1 when it was there, 0 when not, -1. */
int
store_cron_remove(uid_t uid, const char *name)
{
	if (store_begin() == -1 || store_exec_bind("DELETE FROM crons WHERE"
	    " uid = ?1 AND name = ?3", "cron remove", uid, 0, name) == -1)
		return (-1);
	return (sqlite3_changes(db) > 0);
}

void
cron_rec_free(struct cron_rec *c)
{
	if (c == NULL)
		return;
	free(c->name);
	free(c->schedule);
	free(c->request);
	free(c->argv_json);
	free(c);
}

/*
 * The row ST_INSERT wrote for spec, as task_rec_from_row reads it: the
 * values bound, and the columns left to their defaults (null, 0) for the
 * rest. rlimits and after, the JSON text bound, pass to it.
 */
static struct task_rec *
task_rec_inserted(const struct task_spec *spec, int64_t id, int64_t now,
    int64_t run_at, char *rlimits, char *after)
{
	struct task_rec	*t;

	t = xcalloc(1, sizeof *t);
	t->id = id;
	t->name = xstrdup(spec->name);
	t->queue = xstrdup(spec->queue);
	t->argv_json = xstrdup(spec->argv_json);
	t->env_json = spec->env_json != NULL ? xstrdup(spec->env_json) :
	    NULL;
	t->cwd = spec->cwd != NULL ? xstrdup(spec->cwd) : NULL;
	t->unique = spec->unique != NULL ? xstrdup(spec->unique) : NULL;
	t->rlimits_json = rlimits;
	t->state = TASK_QUEUED;
	t->priority = spec->priority;
	t->attempt = 0;
	t->max_attempts = t->attempts_per_run = spec->max_attempts;
	t->created_at = now;
	t->run_at = run_at;
	t->started_at = t->finished_at = UNSET;
	t->outcome = OUTCOME_NONE;
	t->exit_code = UNSET;
	t->signal = 0;
	t->progress = t->pid = t->last_heartbeat_at = UNSET;
	t->timeout_ms = spec->timeout_ms;
	t->heartbeat_timeout_ms = spec->heartbeat_timeout_ms;
	t->backoff_base_ms = spec->backoff_base_ms;
	t->backoff_max_ms = spec->backoff_max_ms;
	t->uid = spec->uid;
	t->gid = spec->gid;
	t->after_json = after;
	t->cancel_requested = 0;
	return (t);
}

/*
 * Inserts a task queued at task_spec_run_at. When spec->unique names
 * a live task, nothing is inserted: *id is that task and *duplicate 1.
 * When row is not NULL, a new task's row goes to *row (caller frees), as
 * store_task_get would read it back: a submit answers with it without
 * reading the row again. *row is NULL for a duplicate or on failure.
 */
int
store_task_insert(const struct task_spec *spec, int64_t now, int64_t *id,
    int *duplicate, struct task_rec **row)
{
	sqlite3_stmt	*st = stmts[ST_INSERT];
	json_t		*rl;
	char		*rlimits = NULL, *after;
	int64_t		 run_at;
	int		 rc;

	*duplicate = 0;
	if (row != NULL)
		*row = NULL;
	if (store_begin() == -1)
		return (-1);
	if (spec->unique != NULL &&
	    (*id = store_unique_find(spec->unique, spec->uid)) != 0) {
		if (*id == -1)
			return (-1);
		*duplicate = 1;
		return (0);
	}
	run_at = task_spec_run_at(spec, now);
	rl = proto_rlimits_json(spec->rlimits);
	if (json_object_size(rl) > 0)
		rlimits = json_dumps(rl, JSON_COMPACT);
	json_decref(rl);

	bind_text(st, 1, spec->name);
	bind_text(st, 2, spec->queue);
	bind_text(st, 3, spec->argv_json);
	bind_text(st, 4, spec->env_json);
	bind_text(st, 5, spec->cwd);
	bind_text(st, 6, spec->unique);
	bind_text(st, 7, rlimits);
	sqlite3_bind_int(st, 8, spec->priority);
	sqlite3_bind_int(st, 9, spec->max_attempts);
	sqlite3_bind_int64(st, 10, now);
	sqlite3_bind_int64(st, 11, run_at);
	sqlite3_bind_int64(st, 12, spec->timeout_ms);
	sqlite3_bind_int64(st, 13, spec->heartbeat_timeout_ms);
	sqlite3_bind_int64(st, 14, spec->backoff_base_ms);
	sqlite3_bind_int64(st, 15, spec->backoff_max_ms);
	sqlite3_bind_int64(st, 16, spec->uid);
	sqlite3_bind_int64(st, 17, spec->gid);
	after = NULL;
	if (spec->nafter > 0) {
		json_t	*a = json_array();
		size_t	 i;

		for (i = 0; i < spec->nafter; i++)
			json_array_append_new(a, json_integer(spec->after[i]));
		after = json_dumps(a, JSON_COMPACT);
		json_decref(a);
	}
	bind_text(st, 18, after);
	sqlite3_bind_int(st, 19, spec->waiting_on);
	rc = -1;
	if (store_step_done(st, "insert task") != SQLITE_OK)
		goto out;
	*id = sqlite3_last_insert_rowid(db);
	state_counts[TASK_QUEUED]++;
	if (store_deps_insert(*id, spec) == -1)
		goto out;
	if (txn_first_insert == 0)
		txn_first_insert = *id;
	if (row != NULL) {
		*row = task_rec_inserted(spec, *id, now, run_at, rlimits,
		    after);
		rlimits = after = NULL;		/* the row's now */
	}
	rc = 0;
out:
	free(rlimits);
	free(after);
	return (rc);
}

static struct task_rec *
task_rec_from_row(sqlite3_stmt *st)
{
	struct task_rec	*t;
	char		*s;

	t = xcalloc(1, sizeof *t);
	t->id = sqlite3_column_int64(st, 0);
	t->name = col_text(st, 1);
	t->queue = col_text(st, 2);
	t->argv_json = col_text(st, 3);
	t->env_json = col_text(st, 4);
	t->cwd = col_text(st, 5);
	t->unique = col_text(st, 6);
	t->rlimits_json = col_text(st, 7);
	s = col_text(st, 8);
	t->state = task_state_from_name(s);
	free(s);
	t->priority = sqlite3_column_int(st, 9);
	t->attempt = sqlite3_column_int(st, 10);
	t->max_attempts = sqlite3_column_int(st, 11);
	t->attempts_per_run = sqlite3_column_int(st, 12);
	t->created_at = col_int(st, 13);
	t->run_at = col_int(st, 14);
	t->started_at = col_int(st, 15);
	t->finished_at = col_int(st, 16);
	s = col_text(st, 17);
	t->outcome = outcome_from_name(s);
	free(s);
	t->exit_code = col_int(st, 18);
	s = col_text(st, 19);
	t->signal = s != NULL ? signal_number(s) : 0;
	free(s);
	t->error = col_text(st, 20);
	t->progress = col_int(st, 21);
	t->progress_message = col_text(st, 22);
	t->pid = col_int(st, 23);
	t->last_heartbeat_at = col_int(st, 24);
	t->timeout_ms = col_int(st, 25);
	t->heartbeat_timeout_ms = col_int(st, 26);
	t->backoff_base_ms = col_int(st, 27);
	t->backoff_max_ms = col_int(st, 28);
	t->uid = (uid_t)sqlite3_column_int64(st, 29);
	t->gid = (gid_t)sqlite3_column_int64(st, 30);
	t->after_json = col_text(st, 31);
	t->cancel_requested = sqlite3_column_int(st, 32);
	return (t);
}

/*
 * The owner of task id into *uid: 0; 1 when there is no such task, -1 when
 * the store could not be read.
 */
int
store_task_uid(int64_t id, uid_t *uid)
{
	sqlite3_stmt	*st = stmts[ST_TASK_UID];
	int		 rc;

	sqlite3_bind_int64(st, 1, id);
	if ((rc = sqlite3_step(st)) == SQLITE_ROW)
		*uid = (uid_t)sqlite3_column_int64(st, 0);
	else if (rc != SQLITE_DONE)
		store_read_failed("reading a task's owner");
	sqlite3_reset(st);
	return (rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? 1 : -1);
}

/* Is task id in the store? 1 or 0; -1 when the store could not tell. */
int
store_task_exists(int64_t id)
{
	sqlite3_stmt	*st = stmts[ST_TASK_UID];
	int		 rc;

	sqlite3_bind_int64(st, 1, id);
	rc = sqlite3_step(st);
	sqlite3_reset(st);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		store_read_failed("looking for a task");
		return (-1);
	}
	return (rc == SQLITE_ROW);
}

/*
 * Task id into *out, NULL when there is none. Returns 0, or -1 (*out NULL)
 * when the store could not be read: a task that may well exist, which
 * callers must not take for one that does not.
 */
int
store_task_find(int64_t id, struct task_rec **out)
{
	sqlite3_stmt	*st = stmts[ST_GET];
	int		 rc;

	*out = NULL;
	sqlite3_bind_int64(st, 1, id);
	if ((rc = sqlite3_step(st)) == SQLITE_ROW)
		*out = task_rec_from_row(st);
	else if (rc != SQLITE_DONE)
		store_read_failed("reading a task");
	sqlite3_reset(st);
	return (rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -1);
}

/* Task id, or NULL when there is none or it could not be read. */
struct task_rec *
store_task_get(int64_t id)
{
	struct task_rec	*t;

	(void)store_task_find(id, &t);
	return (t);
}

/*
 * Tasks matching f, newest first. Returns an array the caller frees with
 * its elements (task_rec_free), *n long; NULL when the read failed.
 */
struct task_rec **
store_task_list(const struct task_filter *f, size_t *n)
{
	sqlite3_stmt	 *st;
	struct task_rec	**out = NULL;
	char		  sql[1024];
	size_t		  cap;
	int		  rc;

	*n = 0;
	snprintf(sql, sizeof sql, "SELECT " TASK_COLUMNS " FROM tasks WHERE 1"
	    "%s%s%s%s ORDER BY id DESC LIMIT ?5",
	    f->state >= 0 ? " AND state = ?1" : "",
	    f->queue != NULL ? " AND queue = ?2" : "",
	    f->before_id > 0 ? " AND id < ?3" : "",
	    f->all_users ? "" : " AND uid = ?4");
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
		store_read_failed("list");
		return (NULL);
	}
	if (f->state >= 0)
		bind_text(st, 1, task_state_name(f->state));
	bind_text(st, 2, f->queue);
	sqlite3_bind_int64(st, 3, f->before_id);
	sqlite3_bind_int64(st, 4, f->uid);
	sqlite3_bind_int(st, 5, f->limit);
	out = xreallocarray(NULL, cap = 16, sizeof *out);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (*n == cap) {
			cap *= 2;
			out = xreallocarray(out, cap, sizeof *out);
		}
		out[(*n)++] = task_rec_from_row(st);
	}
	if (rc != SQLITE_DONE)
		store_read_failed("list");
	sqlite3_finalize(st);
	/* Part of the tasks would pass for all of them. */
	if (rc != SQLITE_DONE) {
		while (*n > 0)
			task_rec_free(out[--(*n)]);
		free(out);
		return (NULL);
	}
	return (out);
}

static struct attempt_rec *
attempt_rec_from_row(sqlite3_stmt *st)
{
	struct attempt_rec	*a;
	char			*s;

	a = xcalloc(1, sizeof *a);
	a->task_id = sqlite3_column_int64(st, 0);
	a->n = sqlite3_column_int(st, 1);
	a->pid = col_int(st, 2);
	a->pid_start = col_int(st, 3);
	a->started_at = col_int(st, 4);
	a->finished_at = col_int(st, 5);
	a->duration_ms = col_int(st, 6);
	s = col_text(st, 7);
	a->outcome = outcome_from_name(s);
	free(s);
	a->exit_code = col_int(st, 8);
	s = col_text(st, 9);
	a->signal = s != NULL ? signal_number(s) : 0;
	free(s);
	a->error = col_text(st, 10);
	a->max_rss_kb = col_int(st, 11);
	a->user_cpu_ms = col_int(st, 12);
	a->sys_cpu_ms = col_int(st, 13);
	return (a);
}

/*
 * The attempts of st, *n long; NULL when the read failed: part of them
 * would pass for all (at start-up, attempts left running would stay so).
 */
static struct attempt_rec **
attempts_collect(sqlite3_stmt *st, size_t *n, const char *what)
{
	struct attempt_rec	**out;
	size_t			  cap = 8;
	int			  rc;

	*n = 0;
	out = xreallocarray(NULL, cap, sizeof *out);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (*n == cap) {
			cap *= 2;
			out = xreallocarray(out, cap, sizeof *out);
		}
		out[(*n)++] = attempt_rec_from_row(st);
	}
	if (rc != SQLITE_DONE)
		store_read_failed(what);
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	if (rc != SQLITE_DONE) {
		while (*n > 0)
			attempt_rec_free(out[--(*n)]);
		free(out);
		return (NULL);
	}
	return (out);
}

struct attempt_rec **
store_attempts_get(int64_t task_id, size_t *n)
{
	sqlite3_bind_int64(stmts[ST_ATTEMPTS], 1, task_id);
	return (attempts_collect(stmts[ST_ATTEMPTS], n, "attempts"));
}

/* The pid of task_id's last attempt; 0 when it has none (or no pid). */
int64_t
store_last_attempt_pid(int64_t task_id)
{
	sqlite3_stmt	*st = stmts[ST_LAST_PID];
	int64_t		 pid = 0;

	sqlite3_bind_int64(st, 1, task_id);
	if (sqlite3_step(st) == SQLITE_ROW &&
	    sqlite3_column_type(st, 0) == SQLITE_INTEGER)
		pid = sqlite3_column_int64(st, 0);
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return (pid);
}

/* Attempts with no end: what was running when forkqd last stopped. */
struct attempt_rec **
store_unfinished_attempts(size_t *n)
{
	return (attempts_collect(stmts[ST_UNFINISHED], n,
	    "attempts left running"));
}

/* Is queue among the n names of names? */
static int
queue_listed(const char *queue, const char *const *names, size_t n)
{
	size_t	i;

	for (i = 0; i < n; i++) {
		if (strcmp(queue, names[i]) == 0)
			return (1);
	}
	return (0);
}

/*
 * A step of the dispatch's queries: 1 with a row, 0 at their end, -1 when
 * the read failed (said, and dispatch_failed set: no other task may start
 * in the place of one the store could not show).
 */
static void
dispatch_read_failed(const char *what)
{
	store_read_failed(what);
	dispatch_failed = 1;
}

static int
dispatch_step(sqlite3_stmt *st)
{
	int	rc = sqlite3_step(st);

	if (rc == SQLITE_ROW)
		return (1);
	if (rc == SQLITE_DONE)
		return (0);
	dispatch_read_failed("finding the next task to start");
	return (-1);
}

/* Column col of the row st is on, a NOT NULL text; NULL (said) on OOM. */
static const char *
dispatch_text(sqlite3_stmt *st, int col)
{
	const char	*s = (const char *)sqlite3_column_text(st, col);

	if (s == NULL)
		dispatch_read_failed("a queue's name");
	return (s);
}

/*
 * Did the last store_first_run_at(), store_next_due() or
 * store_next_run_at() fail to read? (clears it)
 */
int
store_take_dispatch_failed(void)
{
	return (take_flag(&dispatch_failed));
}

/*
 * The highest priority below *prio among the tasks of st's range, into
 * *prio: 1, 0 when there is none, -1 on a failed read. st is
 * ST_LEVEL_BELOW (queue NULL) or ST_PRIORITY_BELOW.
 */
static int
level_below(const char *queue, int64_t *prio)
{
	sqlite3_stmt	*st = stmts[queue == NULL ? ST_LEVEL_BELOW :
			    ST_PRIORITY_BELOW];
	int		 rc, i = 1;

	if (queue != NULL)
		bind_text(st, i++, queue);
	sqlite3_bind_int64(st, i, *prio);
	if ((rc = dispatch_step(st)) == 1)
		*prio = col_int(st, 0);
	sqlite3_reset(st);
	return (rc);
}

/*
 * The next queue name after *queue (NULL: the first; queue names are not
 * empty) with a task that could start, into *queue (freed by the caller),
 * and the highest priority among those tasks into *prio: 1, 0 when there
 * is none, -1 on a failed read.
 */
static int
next_queue(char **queue, int64_t *prio)
{
	sqlite3_stmt	*st = stmts[ST_QUEUE_AFTER];
	const char	*name;
	int		 rc;

	bind_text(st, 1, *queue != NULL ? *queue : "");
	if ((rc = dispatch_step(st)) == 1) {
		if ((name = dispatch_text(st, 0)) == NULL)
			rc = -1;
		else {
			free(*queue);
			*queue = xstrdup(name);
			*prio = col_int(st, 1);
		}
	}
	sqlite3_reset(st);
	return (rc);
}

/*
 * Rows of closed queues the walk in the one order reads before
 * next_due_by_queue() takes over: each costs a row read, each queue there
 * a seek or two.
 */
#define DISPATCH_SKIP_MAX	64

/*
 * The first due task in the one order, by priority level (a seek each)
 * and in a level by run_at and id. Returns 1 with *out (NULL: none), or 0
 * when DISPATCH_SKIP_MAX rows of closed queues came first, or -1 on a
 * failed read.
 */
static int
next_due_in_order(int64_t now, int64_t first, const char *const *full,
    size_t nfull, struct task_rec **out)
{
	sqlite3_stmt	*st = stmts[ST_DUE_AT_LEVEL];
	const char	*queue;
	int64_t		 prio = INT64_MAX;
	int		 rc, skipped = 0;

	*out = NULL;
	while ((rc = level_below(NULL, &prio)) == 1) {
		sqlite3_bind_int64(st, 1, prio);
		sqlite3_bind_int64(st, 2, now);
		sqlite3_bind_int64(st, 3, first);
		while ((rc = dispatch_step(st)) == 1) {
			/* Column 2 of TASK_COLUMNS. */
			if ((queue = dispatch_text(st, 2)) == NULL) {
				rc = -1;
				break;
			}
			if (!queue_listed(queue, full, nfull)) {
				*out = task_rec_from_row(st);
				break;
			}
			if (++skipped == DISPATCH_SKIP_MAX)
				break;
		}
		sqlite3_reset(st);
		if (rc == -1)
			return (-1);
		if (*out != NULL)
			return (1);
		if (skipped == DISPATCH_SKIP_MAX)
			return (0);
	}
	return (rc == -1 ? -1 : 1);
}

/* Does a start before b? Priority (higher first), then run_at, then id. */
static int
dispatch_before(const struct task_rec *a, const struct task_rec *b)
{
	if (a->priority != b->priority)
		return (a->priority > b->priority);
	if (a->run_at != b->run_at)
		return (a->run_at < b->run_at);
	return (a->id < b->id);
}

/*
 * The same, queue by queue, skipping closed ones: a seek per queue and per
 * priority level in it, down to the first level with a due task or to the
 * best found in another queue. For when closed queues hold many due tasks.
 * Returns 1 with *out (NULL: none), or -1 on a failed read.
 */
static int
next_due_by_queue(int64_t now, int64_t first, const char *const *full,
    size_t nfull, struct task_rec **out)
{
	sqlite3_stmt	*st = stmts[ST_NEXT_DUE];
	struct task_rec	*best = NULL, *t;
	char		*queue = NULL;
	int64_t		 prio;
	int		 rc;

	while ((rc = next_queue(&queue, &prio)) == 1) {
		if (queue_listed(queue, full, nfull))
			continue;
		do {
			if (best != NULL && prio < best->priority)
				break;	/* another queue's is better */
			bind_text(st, 1, queue);
			sqlite3_bind_int64(st, 2, prio);
			sqlite3_bind_int64(st, 3, now);
			sqlite3_bind_int64(st, 4, first);
			t = (rc = dispatch_step(st)) == 1 ?
			    task_rec_from_row(st) : NULL;
			sqlite3_reset(st);
			if (rc == -1)
				break;
			if (t == NULL)
				continue;
			if (best == NULL || dispatch_before(t, best)) {
				task_rec_free(best);
				best = t;
			} else
				task_rec_free(t);
			break;
		} while ((rc = level_below(queue, &prio)) == 1);
		if (rc == -1)
			break;
	}
	free(queue);
	if (rc == -1) {
		task_rec_free(best);
		return (-1);
	}
	*out = best;
	return (1);
}

/*
 * The first due queued task (priority, run_at, id order) whose queue is not
 * among the nfull closed (paused or full) queues, the caller frees it; NULL
 * when none is due, or when the store could not be read
 * (store_take_dispatch_failed says which). Tasks waiting on others are in
 * neither index, nor walked. In the one order first; where closed queues
 * hold many due tasks ahead of the rest, queue by queue.
 */
struct task_rec *
store_next_due(int64_t now, const char *const *full, size_t nfull)
{
	struct task_rec	*t = NULL;
	int64_t		 first;
	int		 rc;

	dispatch_failed = 0;
	/* A task not yet committed does not start: its submit may still fail. */
	first = txn_first_insert != 0 ? txn_first_insert : INT64_MAX;
	rc = next_due_in_order(now, first, full, nfull, &t);
	if (rc == 0)
		rc = next_due_by_queue(now, first, full, nfull, &t);
	return (rc == 1 ? t : NULL);
}

/*
 * The earliest run_at of any queued task, UNSET when none (or when the read
 * failed: store_take_dispatch_failed says): O(log n) on the partial index,
 * so the dispatcher learns cheaply that nothing is due yet.
 */
int64_t
store_first_run_at(void)
{
	sqlite3_stmt	*st = stmts[ST_FIRST_RUN];
	int64_t		 t = UNSET;

	dispatch_failed = 0;
	if (dispatch_step(st) == 1)
		t = col_int(st, 0);
	sqlite3_reset(st);
	return (t);
}

/*
 * The earliest run_at after now among queued tasks that wait for nothing
 * else; UNSET when there is none.
 */
int64_t
store_next_run_at(int64_t now)
{
	sqlite3_stmt	*st = stmts[ST_NEXT_RUN];
	int64_t		 t = UNSET;

	dispatch_failed = 0;
	sqlite3_bind_int64(st, 1, now);
	if (dispatch_step(st) == 1)
		t = col_int(st, 0);
	sqlite3_reset(st);
	return (t);
}

/* Writes every mutable column of t (see ST_TASK_UPDATE). */
int
store_task_update(const struct task_rec *t)
{
	sqlite3_stmt	*st = stmts[ST_TASK_UPDATE];

	if (store_begin_journaled(J_TASK, t, NULL) == -1)
		return (-1);
	sqlite3_bind_int64(st, 1, t->id);
	bind_text(st, 2, task_state_name(t->state));
	sqlite3_bind_int(st, 3, t->attempt);
	sqlite3_bind_int(st, 4, t->max_attempts);
	sqlite3_bind_int64(st, 5, t->run_at);
	bind_int(st, 6, t->started_at);
	bind_int(st, 7, t->finished_at);
	bind_text(st, 8, outcome_name(t->outcome));
	bind_int(st, 9, t->exit_code);
	bind_text(st, 10, t->signal != 0 ? signal_name(t->signal) : NULL);
	bind_text(st, 11, t->error);
	bind_int(st, 12, t->progress);
	bind_text(st, 13, t->progress_message);
	bind_int(st, 14, t->pid);
	bind_int(st, 15, t->last_heartbeat_at);
	sqlite3_bind_int(st, 16, t->cancel_requested);
	return (store_step_done(st, "update task") == SQLITE_OK ? 0 : -1);
}

/* ?1-?4 of an attempt's statements: which attempt, and its process. */
static void
bind_attempt_process(sqlite3_stmt *st, const struct attempt_rec *a)
{
	sqlite3_bind_int64(st, 1, a->task_id);
	sqlite3_bind_int(st, 2, a->n);
	bind_int(st, 3, a->pid);
	bind_int(st, 4, a->pid_start);
}

/* Records the start of attempt a and the task's new running state t. */
int
store_attempt_started(const struct task_rec *t, const struct attempt_rec *a)
{
	sqlite3_stmt	*st = stmts[ST_ATTEMPT_INSERT];

	if (store_begin_journaled(J_ATTEMPT_START, NULL, a) == -1)
		return (-1);
	bind_attempt_process(st, a);
	sqlite3_bind_int64(st, 5, a->started_at);
	if (store_step_done(st, "insert attempt") != SQLITE_OK)
		return (-1);
	return (t != NULL ? store_task_update(t) : 0);
}

/*
 * The process of attempt a (written ahead, task_prepare) has its pid now:
 * a->pid and a->pid_start go to the attempt and the pid to its task.
 */
int
store_attempt_pid(const struct attempt_rec *a)
{
	sqlite3_stmt	*st = stmts[ST_ATTEMPT_PID];

	if (store_begin_journaled(J_ATTEMPT_PID, NULL, a) == -1)
		return (-1);
	bind_attempt_process(st, a);
	if (store_step_done(st, "attempt pid") != SQLITE_OK)
		return (-1);
	st = stmts[ST_TASK_PID];
	sqlite3_bind_int64(st, 1, a->task_id);
	bind_int(st, 2, a->pid);
	return (store_step_done(st, "task pid") == SQLITE_OK ? 0 : -1);
}

/*
 * Takes back attempt n of a task, written ahead of a spawn that did not
 * happen (task_spawn): its row goes. The caller writes the task again.
 */
int
store_attempt_forget(int64_t task_id, int n)
{
	sqlite3_stmt		*st = stmts[ST_ATTEMPT_FORGET];
	struct attempt_rec	 a;

	memset(&a, 0, sizeof a);
	a.task_id = task_id;
	a.n = n;
	if (store_begin_journaled(J_ATTEMPT_FORGET, NULL, &a) == -1)
		return (-1);
	sqlite3_bind_int64(st, 1, task_id);
	sqlite3_bind_int(st, 2, n);
	return (store_step_done(st, "forget attempt") == SQLITE_OK ? 0 : -1);
}

/*
 * Records the end of attempt a and the task's state t after it. Both are
 * journaled whatever fails: the task's state once went unwritten when the
 * attempt's write could not begin, and the task stayed running for good.
 */
int
store_attempt_ended(const struct task_rec *t, const struct attempt_rec *a)
{
	sqlite3_stmt	*st = stmts[ST_ATTEMPT_END];
	int		 rc = -1, ended = 1;

	if (store_begin_journaled(J_ATTEMPT_END, NULL, a) != -1) {
		sqlite3_bind_int64(st, 1, a->task_id);
		sqlite3_bind_int(st, 2, a->n);
		sqlite3_bind_int64(st, 3, a->finished_at);
		sqlite3_bind_int64(st, 4, a->duration_ms);
		bind_text(st, 5, outcome_name(a->outcome));
		bind_int(st, 6, a->exit_code);
		bind_text(st, 7, a->signal != 0 ? signal_name(a->signal) :
		    NULL);
		bind_text(st, 8, a->error);
		bind_int(st, 9, a->max_rss_kb);
		bind_int(st, 10, a->user_cpu_ms);
		bind_int(st, 11, a->sys_cpu_ms);
		/* A pid of 0 or UNSET is not known here: the stored one
		 * stays. */
		bind_int(st, 12, a->pid > 0 ? a->pid : UNSET);
		bind_int(st, 13, a->pid > 0 ? a->pid_start : UNSET);
		if (store_step_done(st, "end attempt") == SQLITE_OK) {
			rc = 0;
			ended = sqlite3_changes(db) > 0;	/* its row */
		}
	}
	/*
	 * Counted when it comes, written or only journaled: the journal's
	 * write of it again (replaying) is not counted again.
	 */
	if (am.valid && !replaying && ended)
		attempt_metrics_add(a->outcome, a->duration_ms);
	if (t != NULL && store_task_update(t) == -1)
		rc = -1;
	return (rc);
}

int
store_task_progress(int64_t id, int64_t hb_at, int64_t progress,
    const char *message)
{
	sqlite3_stmt	*st = stmts[ST_PROGRESS];
	int		 began;

	began = store_begin();
	if (!replaying) {
		struct journal_entry	*j, *old, *next;

		/* Only a task's newest progress matters. */
		TAILQ_FOREACH_SAFE(old, &journal, entry, next) {
			if (old->kind == J_PROGRESS && old->id == id) {
				TAILQ_REMOVE(&journal, old, entry);
				journal_free(old);
				journal_len--;
			}
		}
		j = xcalloc(1, sizeof *j);
		j->kind = J_PROGRESS;
		j->id = id;
		j->hb_at = hb_at;
		j->progress = progress;
		j->message = message != NULL ? xstrdup(message) : NULL;
		TAILQ_INSERT_TAIL(&journal, j, entry);
		journal_len++;
	}
	if (began == -1)
		return (-1);
	sqlite3_bind_int64(st, 1, id);
	bind_int(st, 2, hb_at);
	bind_int(st, 3, progress);
	bind_text(st, 4, message);
	return (store_step_done(st, "progress") == SQLITE_OK ? 0 : -1);
}

/* Tasks per state as on disk (as of the last fsync). */
int
store_counts(int64_t counts[TASK_NSTATES])
{
	memcpy(counts, synced_counts, sizeof synced_counts);
	return (0);
}

/* Tasks per state as forkqd has them, on disk or not. */
void
store_counts_live(int64_t counts[TASK_NSTATES])
{
	memcpy(counts, state_counts, sizeof state_counts);
}

/* A task went from one state to another (task_set_state says so). */
void
store_count_transition(enum task_state from, enum task_state to)
{
	if (from == to || from >= TASK_NSTATES || to >= TASK_NSTATES)
		return;
	state_counts[from]--;
	state_counts[to]++;
	if (finals_seeded && task_state_final(to))
		finals_reached[to]++;
}

/*
 * Tasks that reached each final state: those in it at the first call, and
 * every one that reached it since (retried or pruned, or not). Never goes
 * down while forkqd runs.
 */
void
store_finals_reached(int64_t counts[TASK_NSTATES])
{
	if (!finals_seeded) {
		memcpy(finals_reached, state_counts, sizeof state_counts);
		finals_seeded = 1;
	}
	memcpy(counts, finals_reached, sizeof finals_reached);
}

/*
 * Deletes up to batch final tasks that finished before cutoff, with their
 * attempts. Returns how many, or -1; *ids (caller frees) lists them so the
 * caller can remove their captured output.
 */
int64_t
store_prune(int64_t cutoff, int batch, int64_t **ids, size_t *nids)
{
	sqlite3_stmt	*find = stmts[ST_PRUNE_FIND];
	sqlite3_stmt	*del = stmts[ST_PRUNE_DELETE];
	size_t		 i;
	int		*states, s, rc = SQLITE_DONE;

	*ids = NULL;
	*nids = 0;
	if (store_begin() == -1)
		return (-1);
	sqlite3_bind_int64(find, 1, cutoff);
	sqlite3_bind_int(find, 2, batch);
	*ids = xreallocarray(NULL, batch > 0 ? batch : 1, sizeof **ids);
	states = xreallocarray(NULL, batch > 0 ? batch : 1, sizeof *states);
	while (*nids < (size_t)batch &&
	    (rc = sqlite3_step(find)) == SQLITE_ROW) {
		states[*nids] = task_state_from_name((const char *)
		    sqlite3_column_text(find, 1));
		(*ids)[(*nids)++] = sqlite3_column_int64(find, 0);
	}
	/*
	 * A failed read is not "nothing left": say so and delete nothing (it
	 * wrote nothing, so the pass's other changes stand).
	 */
	if (*nids < (size_t)batch && rc != SQLITE_DONE) {
		store_read_failed("prune");
		sqlite3_reset(find);
		*nids = 0;
		free(states);
		return (-1);
	}
	sqlite3_reset(find);
	for (i = 0; i < *nids; i++) {
		sqlite3_bind_int64(del, 1, (*ids)[i]);
		if (store_step_done(del, "prune") != SQLITE_OK) {
			free(states);
			return (-1);
		}
		if ((s = states[i]) >= 0)
			state_counts[s]--;
	}
	free(states);
	return ((int64_t)*nids);
}

/* One more ended attempt in the kept figures. */
static void
attempt_metrics_add(enum outcome o, int64_t d)
{
	size_t	i;

	if (o != OUTCOME_NONE)
		am.outcomes[o]++;
	am.count++;
	am.sum_ms += d;
	for (i = 0; i < am.n; i++) {
		if (d <= am.bounds[i])
			am.cum[i]++;
	}
}

/*
 * Adds the ends only the journal holds (their write failed, and is to be
 * made again): the table does not have them yet, and their write, when
 * replayed, does not count them. Returns SQLITE_DONE, or a failed read's
 * code.
 */
static int
attempt_metrics_journaled(void)
{
	struct journal_entry	*j;
	sqlite3_stmt		*st;
	int			 rc = SQLITE_DONE;

	if (TAILQ_EMPTY(&journal))
		return (rc);
	if ((rc = sqlite3_prepare_v2(db, "SELECT 1 FROM attempts WHERE"
	    " task_id = ?1 AND n = ?2 AND finished_at IS NOT NULL", -1, &st,
	    NULL)) != SQLITE_OK)
		return (rc);
	rc = SQLITE_DONE;
	TAILQ_FOREACH(j, &journal, entry) {
		if (j->kind != J_ATTEMPT_END)
			continue;
		sqlite3_bind_int64(st, 1, j->attempt->task_id);
		sqlite3_bind_int(st, 2, j->attempt->n);
		rc = sqlite3_step(st);
		sqlite3_reset(st);
		if (rc == SQLITE_DONE)		/* not in the table yet */
			attempt_metrics_add(j->attempt->outcome,
			    j->attempt->duration_ms);
		else if (rc != SQLITE_ROW)
			break;
		rc = SQLITE_DONE;
	}
	sqlite3_finalize(st);
	return (rc);
}

/* Computes the kept figures from every attempt in the table. */
static int
attempt_metrics_read(void)
{
	sqlite3_stmt	*st;
	enum outcome	 o;
	int		 rc;

	memset(am.outcomes, 0, sizeof am.outcomes);
	memset(am.cum, 0, sizeof(int64_t) * am.n);
	am.count = am.sum_ms = 0;
	if (sqlite3_prepare_v2(db, "SELECT outcome, duration_ms FROM attempts"
	    " WHERE outcome IS NOT NULL OR duration_ms IS NOT NULL", -1, &st,
	    NULL) != SQLITE_OK) {
		store_read_failed("attempt metrics");
		return (-1);
	}
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		o = sqlite3_column_type(st, 0) == SQLITE_NULL ? OUTCOME_NONE :
		    outcome_from_name((const char *)sqlite3_column_text(st, 0));
		if (sqlite3_column_type(st, 1) != SQLITE_NULL)
			attempt_metrics_add(o, sqlite3_column_int64(st, 1));
		else if (o != OUTCOME_NONE)
			am.outcomes[o]++;
	}
	sqlite3_finalize(st);
	if (rc == SQLITE_DONE)
		rc = attempt_metrics_journaled();
	if (rc != SQLITE_DONE)
		store_read_failed("attempt metrics");
	return (rc == SQLITE_DONE ? 0 : -1);
}

/*
 * Over every attempt kept: counts per outcome, and a histogram of ended
 * attempts' durations: cum[i] counts those of at most bounds[i] ms
 * (cumulative, as Prometheus wants), *count all, *sum_ms their total.
 * bounds must stay valid: the figures are kept with it (see am).
 */
int
store_attempt_metrics(int64_t outcomes[OUTCOME_COUNT], const int64_t *bounds,
    size_t n, int64_t *cum, int64_t *count, int64_t *sum_ms)
{
	if (!am.valid || am.bounds != bounds || am.n != n) {
		am.valid = 0;
		am.bounds = bounds;
		am.n = n;
		am.cum = xreallocarray(am.cum, n > 0 ? n : 1, sizeof *am.cum);
		if (attempt_metrics_read() == -1)
			return (-1);
		am.valid = 1;
	}
	memcpy(outcomes, am.outcomes, sizeof am.outcomes);
	memcpy(cum, am.cum, sizeof(int64_t) * n);
	*count = am.count;
	*sum_ms = am.sum_ms;
	return (0);
}

/* Nearest-rank percentile of sorted v[0..n-1]; n > 0. */
static int64_t
percentile(const int64_t *v, size_t n, int pct)
{
	size_t	rank = (n * (size_t)pct + 99) / 100;

	return (v[rank > 0 ? rank - 1 : 0]);
}

/* One task name's figures while store_stats reads the tasks. */
struct stats_acc {
	RB_ENTRY(stats_acc)	 entry;
	struct name_stats	 ns;
	int64_t			 attempts;	/* of its finished tasks */
	int64_t			*durations;	/* of successful attempts */
	size_t			 ndurations, cap;
};
RB_HEAD(stats_by_name, stats_acc);

static int
stats_acc_cmp(const struct stats_acc *a, const struct stats_acc *b)
{
	return (strcmp(a->ns.name, b->ns.name));
}
RB_GENERATE_STATIC(stats_by_name, stats_acc, entry, stats_acc_cmp)

static struct stats_acc *
stats_acc_of(struct stats_by_name *tree, const char *name, size_t *n)
{
	struct stats_acc	 key, *acc;

	key.ns.name = (char *)name;
	if ((acc = RB_FIND(stats_by_name, tree, &key)) != NULL)
		return (acc);
	acc = xcalloc(1, sizeof *acc);
	acc->ns.name = xstrdup(name);
	RB_INSERT(stats_by_name, tree, acc);
	(*n)++;
	return (acc);
}

static void
stats_acc_free(struct stats_acc *acc)
{
	free(acc->ns.name);
	free(acc->durations);
	free(acc);
}

/* The accumulated figures of acc as the answer gives them. */
static void
stats_acc_finish(struct stats_acc *acc, struct name_stats *out)
{
	int64_t	finished;

	*out = acc->ns;
	/* Over the finished tasks, as success_rate: a queued task's 0 so
	 * far is no figure of how many a task of the name takes. */
	finished = acc->ns.succeeded + acc->ns.failed + acc->ns.canceled;
	out->mean_attempts = finished > 0 ?
	    (double)acc->attempts / (double)finished : 0.0;
	out->p50_ms = out->p95_ms = out->max_ms = UNSET;
	if (acc->ndurations > 0) {
		qsort(acc->durations, acc->ndurations, sizeof(int64_t),
		    cmp_int64);
		out->p50_ms = percentile(acc->durations, acc->ndurations, 50);
		out->p95_ms = percentile(acc->durations, acc->ndurations, 95);
		out->max_ms = acc->durations[acc->ndurations - 1];
	}
	free(acc->durations);
	free(acc);
}

/*
 * A stats scan: per task name (or only name when not NULL), over the tasks
 * created since since, their counts, mean attempts and the durations of
 * their successful attempts. The tasks are read in id order, some
 * thousands per call of store_stats_step, each joined to its successful
 * attempt (a task has at most one): one query over a million tasks held
 * the loop for most of a second, and a query per name scanned the
 * attempts once per name. Filtering happens here rather than in SQL so
 * that each step reads a bounded number of rows, however rare the name.
 */
struct stats_scan {
	struct stats_by_name	 tree;
	size_t			 n;		/* names in tree */
	int64_t			 after;		/* last task id read */
	int64_t			 since;
	char			*name;
	uid_t			 uid;
	int			 all_users;
	uint64_t		 rollbacks;	/* when it (last) began */
	int			 restarts;	/* after a rollback */
};

/* Scans started again after rollbacks before one answers that it failed. */
#define STATS_RESTARTS_MAX	3

/* Forgets what sc counted so far. */
static void
stats_scan_clear(struct stats_scan *sc)
{
	struct stats_acc	*acc, *next;

	RB_FOREACH_SAFE(acc, stats_by_name, &sc->tree, next) {
		RB_REMOVE(stats_by_name, &sc->tree, acc);
		stats_acc_free(acc);
	}
	sc->n = 0;
	sc->after = 0;
}

struct stats_scan *
store_stats_begin(int64_t since, const char *name, uid_t uid, int all_users)
{
	struct stats_scan	*sc;

	sc = xcalloc(1, sizeof *sc);
	RB_INIT(&sc->tree);
	sc->since = since;
	sc->name = name != NULL ? xstrdup(name) : NULL;
	sc->uid = uid;
	sc->all_users = all_users;
	sc->rollbacks = rollbacks;
	return (sc);
}

/* Counts the task of the statement's current row in sc. */
static void
stats_scan_row(struct stats_scan *sc, sqlite3_stmt *st)
{
	struct stats_acc	*acc;
	const char		*name = (const char *)sqlite3_column_text(st, 1);

	if (name == NULL || (sc->name != NULL && strcmp(name, sc->name) != 0) ||
	    sqlite3_column_int64(st, 4) < sc->since ||
	    (!sc->all_users && sqlite3_column_int64(st, 5) != (int64_t)sc->uid))
		return;
	acc = stats_acc_of(&sc->tree, name, &sc->n);
	acc->ns.tasks++;
	switch (task_state_from_name((const char *)sqlite3_column_text(st,
	    2))) {
	case TASK_SUCCEEDED:
		acc->ns.succeeded++;
		break;
	case TASK_FAILED:
		acc->ns.failed++;
		break;
	case TASK_CANCELED:
		acc->ns.canceled++;
		break;
	default:
		goto durations;	/* mean_attempts is over finished tasks */
	}
	acc->attempts += sqlite3_column_int64(st, 3);
durations:
	if (sqlite3_column_type(st, 6) == SQLITE_NULL)
		return;
	if (acc->ndurations == acc->cap) {
		acc->cap = acc->cap == 0 ? 64 : acc->cap * 2;
		acc->durations = xreallocarray(acc->durations, acc->cap,
		    sizeof *acc->durations);
	}
	acc->durations[acc->ndurations++] = sqlite3_column_int64(st, 6);
}

/*
 * Reads up to rows more tasks into sc. Returns 1 when there are more, 0
 * when every task was read, -1 when the read failed or commits kept
 * failing while it read (the scan is then only good for store_stats_free).
 * No read transaction stays open between steps: a long one would keep the
 * WAL from being checkpointed.
 */
int
store_stats_step(struct stats_scan *sc, int rows)
{
	sqlite3_stmt	*st = stmts[ST_STATS_STEP];
	int		 rc, read = 0;

	/*
	 * The scan reads this connection's own uncommitted writes: after a
	 * rollback it may have counted tasks that never were. It starts
	 * again, unless commits keep failing.
	 */
	if (rollbacks != sc->rollbacks) {
		if (++sc->restarts > STATS_RESTARTS_MAX) {
			log_warnx("store: stats: commits kept failing while it "
			    "read");
			return (-1);
		}
		stats_scan_clear(sc);
		sc->rollbacks = rollbacks;
	}
	sqlite3_bind_int64(st, 1, sc->after);
	sqlite3_bind_int(st, 2, rows);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		sc->after = sqlite3_column_int64(st, 0);
		stats_scan_row(sc, st);
		read++;
	}
	sqlite3_reset(st);
	if (rc != SQLITE_DONE) {
		store_read_failed("stats");
		return (-1);
	}
	return (read == rows);
}

void
store_stats_free(struct stats_scan *sc)
{
	if (sc == NULL)
		return;
	stats_scan_clear(sc);
	free(sc->name);
	free(sc);
}

/*
 * The figures of a finished scan, which it frees: an array sorted by name
 * that the caller frees (and each ->name), *n its length.
 */
struct name_stats *
store_stats_end(struct stats_scan *sc, size_t *n)
{
	struct stats_acc	*acc, *next;
	struct name_stats	*out;
	size_t			 i = 0;

	out = xreallocarray(NULL, sc->n > 0 ? sc->n : 1, sizeof *out);
	RB_FOREACH_SAFE(acc, stats_by_name, &sc->tree, next) {
		RB_REMOVE(stats_by_name, &sc->tree, acc);
		stats_acc_finish(acc, &out[i++]);
	}
	*n = sc->n;
	store_stats_free(sc);
	return (out);
}

/* The task a kept change is of; 0 for the paused queues. */
static int64_t
journal_task(const struct journal_entry *j)
{
	if (j->kind == J_PAUSED)
		return (0);
	return (j->task != NULL ? j->task->id : j->attempt != NULL ?
	    j->attempt->task_id : j->id);
}

/*
 * A kept change the database refused for a constraint (a unique index, a
 * foreign key, a trigger of an operator's) is refused again at every
 * try: kept, it would fail every commit, every submit with it, until a
 * restart. It is dropped instead, loudly, with every other kept change of
 * its task: its attempt's end written without the task's state would
 * leave the task running for good, where with neither the next start
 * finds the attempt unfinished and records it lost, as after a crash.
 * The pass still fails, as changes of the task may be in it already; the
 * retry (a second later) writes the rest. Returns 1 when j was dropped.
 */
static int
store_replay_refused(struct journal_entry *j)
{
	struct journal_entry	*k, *next;
	int64_t			 id = journal_task(j);
	char			 why[256];

	if ((sqlite3_errcode(db) & 0xff) != SQLITE_CONSTRAINT)
		return (0);
	strlcpy(why, sqlite3_errmsg(db), sizeof why);
	TAILQ_FOREACH_SAFE(k, &journal, entry, next) {
		if (k == j || (id > 0 && journal_task(k) == id)) {
			TAILQ_REMOVE(&journal, k, entry);
			journal_free(k);
			journal_len--;
		}
	}
	if (id > 0)
		log_warnx("store: a change to task %" PRId64 " can never be "
		    "written (%s): its kept changes are dropped, and the next "
		    "start records its attempt as lost", id, why);
	else
		log_warnx("store: a change to the paused queues can never be "
		    "written (%s): dropped", why);
	event_emit(EV_LEVEL_ERROR, "store.dropped", id, json_pack("{s:s}",
	    "error", why));
	return (1);
}

/* Writes the journal again, in order, inside the open transaction. */
static int
store_replay(void)
{
	struct journal_entry	*j;
	int			 rc = 0;

	replaying = 1;
	log_info("store: writing %zu kept changes again", journal_len);
	TAILQ_FOREACH(j, &journal, entry) {
		struct task_rec	*exists;
		int64_t		 id = journal_task(j);

		if (j->kind == J_PAUSED) {
			if ((rc = store_set_paused(j->queue, j->pause)) == -1) {
				(void)store_replay_refused(j);
				break;
			}
			continue;
		}
		/*
		 * A task pruned since has nothing left to update; one that
		 * could not be read is tried again with the rest next time.
		 */
		if ((rc = store_task_find(id, &exists)) == -1)
			break;
		if (exists == NULL)
			continue;
		task_rec_free(exists);
		switch (j->kind) {
		case J_TASK:
			rc = store_task_update(j->task);
			break;
		case J_ATTEMPT_START:
			rc = store_attempt_started(NULL, j->attempt);
			break;
		case J_ATTEMPT_PID:
			rc = store_attempt_pid(j->attempt);
			break;
		case J_ATTEMPT_END:
			rc = store_attempt_ended(NULL, j->attempt);
			break;
		case J_ATTEMPT_FORGET:
			rc = store_attempt_forget(j->attempt->task_id,
			    j->attempt->n);
			break;
		case J_PROGRESS:
			rc = store_task_progress(j->id, j->hb_at, j->progress,
			    j->message);
			break;
		case J_DEPS:
			rc = store_dependency_met(j->id);
			break;
		case J_PAUSED:
			break;	/* above */
		}
		if (rc == -1) {
			(void)store_replay_refused(j);
			break;
		}
	}
	replaying = 0;
	return (rc);
}

void
task_rec_free(struct task_rec *t)
{
	if (t == NULL)
		return;
	free(t->name);
	free(t->queue);
	free(t->argv_json);
	free(t->env_json);
	free(t->cwd);
	free(t->unique);
	free(t->rlimits_json);
	free(t->error);
	free(t->progress_message);
	free(t->after_json);
	free(t);
}

void
attempt_rec_free(struct attempt_rec *a)
{
	if (a == NULL)
		return;
	free(a->error);
	free(a);
}

/*
 * When the task of spec, submitted at now, is to run: at run_at, after
 * delay_ms, or now; a debounce (spec 10) waits its duration at least, so a
 * burst's submits, the first as the next, move it to the later of the two.
 */
int64_t
task_spec_run_at(const struct task_spec *spec, int64_t now)
{
	int64_t	at = now;

	if (spec->run_at != UNSET)
		at = spec->run_at;
	else if (spec->delay_ms != UNSET)
		at = now + spec->delay_ms;
	if (spec->debounce_ms > 0 && now + spec->debounce_ms > at)
		at = now + spec->debounce_ms;
	return (at);
}

void
task_spec_clear(struct task_spec *s)
{
	free(s->name);
	free(s->queue);
	free(s->argv_json);
	free(s->env_json);
	free(s->cwd);
	free(s->unique);
	free(s->after);
	memset(s, 0, sizeof *s);
}
