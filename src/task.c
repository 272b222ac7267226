/*
 * task.c: running tasks and the task state machine.
 *
 * Owns struct task, the in-memory half of a running attempt: its process,
 * heartbeat pipe and timers. Queued and final tasks exist only in the store.
 *
 * Invariants:
 * - Every state change goes through task_set_state(), which checks the
 *   transition against the table below, persists it and emits its event.
 * - An attempt ends when its main process is reaped and nothing else of the
 *   task is left alive (spec 4.4); whatever is left is stopped first.
 * - A struct task is freed only after all its watchers are stopped and its
 *   heartbeat fd is closed.
 */
#include "config.h"

#include <sys/queue.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "forkqd.h"
#include "rbtree.h"

extern char **environ;

#define HB_LINE_MAX		1024	/* longer heartbeat lines are cut */
#define HB_CHUNK		4096	/* bytes of heartbeat lines per read */
#define HB_CHUNKS_PER_ROUND	16	/* a pipe's worth (64 KiB) */
#define SWEEP_INTERVAL		0.05	/* s between checks for leftovers */
#define SWEEP_GIVE_UP_MS	30000	/* after SIGKILL, stop waiting */
#define PROGRESS_WRITE_MS	1000	/* a task's progress to the store */
/*
 * task.progress events per task: a burst of PROGRESS_EVENT_BURST, then
 * PROGRESS_EVENT_RATE a second. Past that, lines are coalesced (the newest
 * goes out when the rate allows): a task writing progress lines in a loop
 * made 4 million events in 5 s, 600 MB of log.
 */
#define PROGRESS_EVENT_BURST	100
#define PROGRESS_EVENT_RATE	20
#define PID_WRITE_MS		10	/* a running task's pid to the store */

/* What a start written ahead changed of rec besides its state. */
struct start_undo {
	int64_t	 started_at;
	int64_t	 progress;
	char	*progress_message;
	int64_t	 last_heartbeat_at;
};

/*
 * A start written ahead, its process not spawned yet: the starts of a loop
 * pass share one commit (task_start_prepared; sched.c bounds how many),
 * where each had one of its own (pipelined /bin/true at -j 8: 1.77
 * commits per task, 0.88 shared).
 */
struct prepared_start {
	struct task			*t;
	struct task_rec			*rec;	/* owned, then the task's */
	struct spawn_req		 req;
	char				**argv;
	char				**envp;
	size_t				 nowned;	/* of envp's strings */
	int				 hb[2];		/* heartbeat pipe */
	int				 outfd;		/* the task's ends */
	int				 errfd;
	struct start_undo		 undo;
	TAILQ_ENTRY(prepared_start)	 entry;
};
static TAILQ_HEAD(, prepared_start) prepared =
    TAILQ_HEAD_INITIALIZER(prepared);
static size_t	nprepared;

struct task {
	int64_t			 id;
	struct task_rec		*rec;		/* owned */
	pid_t			 pid;		/* main process = pgid */
	int			 attempt;
	int64_t			 start_mono;	/* ms */
	uint64_t		 spawn_seq;	/* proctree_note_spawn's */
	int64_t			 start_wall;	/* ms epoch */
	int64_t			 pid_start;	/* /proc starttime */

	struct spawn_status	 spawn;		/* the child's, until reaped */
	char			**argv;		/* read by the child until */
	char			**envp;		/* it execs: kept till reaped */
	size_t			 envp_owned;
	int			 exec_err;	/* errno, 0 = exec succeeded */
	const char		*exec_step;

	struct cgroup		*cg;		/* its cgroup, NULL = none */

	struct capture		 out;		/* stdout */
	struct capture		 err;		/* stderr */

	int			 hb_fd;		/* read end, -1 once closed */
	struct round_pipe	 hb_round;	/* watched in rounds.c's set */
	char			 hb_buf[HB_LINE_MAX];
	size_t			 hb_len;
	int			 hb_skip;	/* discarding an overlong line */
	unsigned long		 hb_lines;	/* heartbeats read so far */
	int64_t			 progress_written;	/* mono ms, 0 = never */
	ev_timer		 progress_timer;	/* writes a held one */
	double			 progress_tokens;	/* events allowed now */
	int64_t			 progress_tokens_at;	/* mono ms, 0 = full */
	ev_timer		 progress_ev_timer;	/* sends a held one */
	ev_timer		 pid_timer;	/* writes the pid, if still running */

	ev_timer		 timeout_timer;
	ev_timer		 hb_timer;
	ev_timer		 kill_timer;
	ev_timer		 sweep_timer;

	enum stop_reason	 stop_reason;
	int			 group_gone;	/* its pgid may be reused now */
	int			 cancel;	/* canceled, whatever stops it */
	int			 shutdown_told;	/* a shutdown stop came */
	int64_t			 kill_mono;	/* when SIGKILL went, 0 = not yet */

	int			 reaped;
	int			 status;	/* wait status */
	struct rusage		 ru;
	int64_t			 end_mono;

	RB_ENTRY(task)		 by_id;
	RB_ENTRY(task)		 by_pid;
};

static void	task_exec_data_free(struct task *);

static int
task_cmp_id(struct task *a, struct task *b)
{
	return (a->id < b->id ? -1 : a->id > b->id);
}

static int
task_cmp_pid(struct task *a, struct task *b)
{
	return (a->pid < b->pid ? -1 : a->pid > b->pid);
}

RB_HEAD(tasks_id, task);
RB_HEAD(tasks_pid, task);
RB_GENERATE_STATIC(tasks_id, task, by_id, task_cmp_id)
RB_GENERATE_STATIC(tasks_pid, task, by_pid, task_cmp_pid)

static struct tasks_id	tasks_by_id = RB_INITIALIZER(&tasks_by_id);
static struct tasks_pid	tasks_by_pid = RB_INITIALIZER(&tasks_by_pid);
static size_t		tasks_running;

/*
 * Legal transitions (spec 4.1), after s6's explicit state table: queued
 * starts or is canceled; running ends in any state, back to queued for a
 * retry; failed and canceled go back to queued only by the retry op.
 */
static const unsigned char transitions[TASK_NSTATES][TASK_NSTATES] = {
	/* to:	      queued running succeeded failed canceled */
	[TASK_QUEUED]	 = { 0, 1, 0, 0, 1 },
	[TASK_RUNNING]	 = { 1, 0, 1, 1, 1 },
	[TASK_SUCCEEDED] = { 0, 0, 0, 0, 0 },
	[TASK_FAILED]	 = { 1, 0, 0, 0, 0 },
	[TASK_CANCELED]	 = { 1, 0, 0, 0, 0 },
};

int
task_transition_ok(enum task_state from, enum task_state to)
{
	if (from >= TASK_NSTATES || to >= TASK_NSTATES)
		return (0);
	return (transitions[from][to]);
}

int
task_state_final(enum task_state s)
{
	return (s == TASK_SUCCEEDED || s == TASK_FAILED || s == TASK_CANCELED);
}

static int	task_set_state(struct task_rec *, enum task_state,
		    const struct attempt_rec *);

/*
 * The pid of rec's last attempt, 0 when none: task events carry it once
 * the task has started (spec 6), also when no attempt is at hand (a
 * cancel or retry between attempts).
 */
static int64_t
last_attempt_pid(const struct task_rec *rec)
{
	return (rec->attempt > 0 ? store_last_attempt_pid(rec->id) : 0);
}

/* Tasks that became final and whose dependents are still to be told. */
struct finished {
	int64_t			 id;
	enum task_state		 state;
	TAILQ_ENTRY(finished)	 entry;
};
static TAILQ_HEAD(, finished) finished_list =
    TAILQ_HEAD_INITIALIZER(finished_list);
static int		 releasing;

/* How soon a release the store could not read is tried again. */
#define RELEASE_RETRY_INTERVAL	1.0
static ev_timer		 release_retry_timer;

static void		 task_release_pending(void);
static void		 release_retry_cb(struct ev_loop *, ev_timer *, int);

/*
 * Tells the dependents of f that it ended. Returns -1 when the store could
 * not be read; what was done stays done, and doing it again is harmless:
 * a canceled dependent is no longer queued, and a recount is a recount.
 */
static int
task_release_one(const struct finished *f)
{
	struct task_rec	*dep;
	int64_t		*ids;
	size_t		 n, i;
	char		*why;
	int		 rc = 0;

	if (store_dependents(f->id, &ids, &n) == -1)
		return (-1);
	for (i = 0; i < n && rc == 0; i++) {
		if (f->state == TASK_SUCCEEDED) {
			/* A failed write is journaled, not lost. */
			(void)store_dependency_met(ids[i]);
			continue;
		}
		if (store_task_find(ids[i], &dep) == -1) {
			rc = -1;
			break;
		}
		if (dep == NULL || dep->state != TASK_QUEUED) {
			task_rec_free(dep);
			continue;
		}
		xasprintf(&why, "dependency task %lld ended %s",
		    (long long)f->id, task_state_name(f->state));
		free(dep->error);
		dep->error = why;
		task_set_state(dep, TASK_CANCELED, NULL);
		task_rec_free(dep);
	}
	free(ids);
	return (rc);
}

/*
 * Tries the releases again in a while. Not while the store replays what
 * it could not write: a cancel of a dependent journaled there would be
 * found undone, and made (and told) twice.
 */
static void
release_retry(void)
{
	/* Expired but not yet called back, it is pending: not to be set. */
	if (ev_is_active(&release_retry_timer) ||
	    ev_is_pending(&release_retry_timer))
		return;
	ev_timer_init(&release_retry_timer, release_retry_cb,
	    RELEASE_RETRY_INTERVAL, 0.);
	ev_timer_start(loop, &release_retry_timer);
}

static void
release_retry_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	char	*cause = NULL;

	(void)l;
	(void)w;
	(void)revents;
	if (store_healthy(&cause) == -1) {
		free(cause);
		release_retry();
		return;
	}
	task_release_pending();
}

/*
 * Works through finished_list: a worklist, not recursion, so a long chain
 * of dependents cancels in a loop. A release the store could not read
 * stays first on the list and is tried again in a while: its dependents
 * would otherwise stay queued for good.
 */
static void
task_release_pending(void)
{
	struct finished	*f;

	if (releasing)
		return;		/* the loop below gets to it */
	releasing = 1;
	while ((f = TAILQ_FIRST(&finished_list)) != NULL) {
		if (task_release_one(f) == -1) {
			release_retry();
			break;
		}
		TAILQ_REMOVE(&finished_list, f, entry);
		free(f);
	}
	releasing = 0;
	sched_kick();
}

/*
 * Task id became final: tasks waiting on it (submit --after) wait on one
 * fewer when it succeeded, and are canceled when it did not (spec 10).
 */
static void
task_release_dependents(int64_t id, enum task_state st)
{
	struct finished	*f;

	f = xcalloc(1, sizeof *f);
	f->id = id;
	f->state = st;
	TAILQ_INSERT_TAIL(&finished_list, f, entry);
	task_release_pending();
}

/* At exit: the next start does what is left (task_release_unreleased). */
void
task_release_drop(void)
{
	struct finished	*f;

	ev_timer_stop(loop, &release_retry_timer);
	while ((f = TAILQ_FIRST(&finished_list)) != NULL) {
		TAILQ_REMOVE(&finished_list, f, entry);
		free(f);
	}
}

/*
 * At start: finish the releases a previous forkqd could not read (it may
 * have stopped before its retry). A sound database has none to do.
 */
void
task_release_unreleased(void)
{
	enum task_state	*states;
	int64_t		*ids;
	size_t		 n, i;

	if (store_unreleased_dependencies(&ids, &states, &n) == -1)
		fatalx("cannot read the dependencies of queued tasks from "
		    "the database");
	for (i = 0; i < n; i++) {
		log_warnx("task %" PRId64 ": its dependents did not know it "
		    "ended %s; told now", ids[i], task_state_name(states[i]));
		task_release_dependents(ids[i], states[i]);
	}
	free(ids);
	free(states);
}

/*
 * The one place a task changes state. Checks the transition, persists the
 * task (with the attempt a when one starts or ends), emits the state's event
 * and wakes whoever waits on a final task. Returns -1 when the store failed.
 */
static int
task_set_state(struct task_rec *rec, enum task_state to,
    const struct attempt_rec *a)
{
	enum task_state	from = rec->state;
	int		rc;

	if (!task_transition_ok(from, to))
		fatalx("task %" PRId64 ": illegal transition %s -> %s",
		    rec->id, task_state_name(from), task_state_name(to));
	rec->state = to;
	store_count_transition(from, to);
	if (task_state_final(to))
		rec->finished_at = wall_ms();
	else
		rec->finished_at = UNSET;
	if (a != NULL && to == TASK_RUNNING)
		rc = store_attempt_started(rec, a);
	else if (a != NULL)
		rc = store_attempt_ended(rec, a);
	else
		rc = store_task_update(rec);

	/* task.started waits for the pid: task_spawn emits it. */
	switch (to) {
	case TASK_SUCCEEDED:
	case TASK_FAILED:
	case TASK_CANCELED: {
		json_t	*f = json_object();
		int64_t	 pid;

		json_object_set_new_nocheck(f, "attempts",
		    json_integer(rec->attempt));
		/* Spec 6: task events carry attempt and pid once started. */
		if (rec->attempt > 0)
			json_object_set_new_nocheck(f, "attempt",
			    json_integer(rec->attempt));
		pid = a != NULL ? a->pid : last_attempt_pid(rec);
		if (pid > 0)
			json_object_set_new_nocheck(f, "pid",
			    json_integer(pid));
		event_emit(to == TASK_SUCCEEDED ? EV_LEVEL_INFO :
		    EV_LEVEL_WARN, to == TASK_SUCCEEDED ? "task.succeeded" :
		    to == TASK_FAILED ? "task.failed" : "task.canceled",
		    rec->id, f);
		}
		ops_task_final(rec->id);
		task_release_dependents(rec->id, to);
		break;
	case TASK_QUEUED:
		sched_kick();
		break;
	default:
		break;
	}
	if (from == TASK_RUNNING)
		sched_kick();
	notify_status_changed();
	return (rc);
}

/* What becomes of a task after an attempt with this outcome (spec 4.2). */
static enum task_state
task_after_outcome(enum outcome o, int attempt, int max_attempts)
{
	switch (o) {
	case OUTCOME_SUCCESS:
		return (TASK_SUCCEEDED);
	case OUTCOME_CANCELED:
		return (TASK_CANCELED);
	case OUTCOME_EXEC_FAILED:
		return (TASK_FAILED);
	case OUTCOME_INTERRUPTED:
		return (TASK_QUEUED);
	default:
		return (attempt < max_attempts ? TASK_QUEUED : TASK_FAILED);
	}
}

/* max_attempts raised by n, kept an int however often it is raised. */
static void
raise_max_attempts(struct task_rec *rec, int n)
{
	rec->max_attempts = rec->max_attempts > INT_MAX - n ? INT_MAX :
	    rec->max_attempts + n;
}

/*
 * Records the end of attempt a of rec (which a's fields describe), then
 * moves the task on: retry with backoff, requeue, or a final state. Shared
 * by live attempts and by recovery of lost ones.
 */
static void
task_attempt_finish(struct task_rec *rec, struct attempt_rec *a)
{
	enum task_state	 next;
	int64_t		 delay;
	json_t		*fields, *err;
	const char	*outcome;

	rec->outcome = a->outcome;
	rec->exit_code = a->exit_code;
	rec->signal = a->signal;
	free(rec->error);
	rec->error = a->error != NULL ? xstrdup(a->error) : NULL;
	rec->pid = UNSET;

	/*
	 * Built key by key: json_pack cost twice as much, parsing its format
	 * and checking the UTF-8 of each literal key. Like json_pack, no
	 * fields at all when there is no outcome name or the error is text
	 * jansson refuses (not UTF-8).
	 */
	outcome = outcome_name(a->outcome);
	err = a->error == NULL ? json_null() : json_string(a->error);
	fields = NULL;
	if (outcome == NULL)
		json_decref(err);
	else if (err != NULL) {
		fields = json_object();
		json_object_set_new_nocheck(fields, "attempt",
		    json_integer(a->n));
		/* A pid is unknown only for a start written ahead and then
		 * lost. */
		json_object_set_new_nocheck(fields, "pid", a->pid == UNSET ?
		    json_null() : json_integer(a->pid));
		json_object_set_new_nocheck(fields, "outcome",
		    json_string_nocheck(outcome));
		json_object_set_new_nocheck(fields, "exit_code",
		    a->exit_code == UNSET ? json_null() :
		    json_integer(a->exit_code));
		json_object_set_new_nocheck(fields, "signal", a->signal == 0 ?
		    json_null() : json_string_nocheck(signal_name(a->signal)));
		json_object_set_new_nocheck(fields, "duration_ms",
		    json_integer(a->duration_ms));
		json_object_set_new_nocheck(fields, "error", err);
	}
	event_emit(a->outcome == OUTCOME_SUCCESS ? EV_LEVEL_INFO :
	    EV_LEVEL_WARN, "task.attempt_ended", rec->id, fields);

	next = task_after_outcome(a->outcome, rec->attempt, rec->max_attempts);
	if (next == TASK_QUEUED && a->outcome == OUTCOME_INTERRUPTED) {
		/* An interrupted attempt uses up nothing (spec 4.2). */
		raise_max_attempts(rec, 1);
		rec->run_at = wall_ms();
	} else if (next == TASK_QUEUED) {
		delay = sched_backoff_delay(rec->backoff_base_ms,
		    rec->backoff_max_ms, a->n, arc4random_uniform);
		rec->run_at = wall_ms() + delay;
		event_emit(EV_LEVEL_WARN, "task.retry_scheduled", rec->id,
		    json_pack("{s:i, s:I, s:o}", "attempt", rec->attempt + 1,
		    "delay_ms", (json_int_t)delay, "pid", a->pid == UNSET ?
		    json_null() : json_integer(a->pid)));
	}
	task_set_state(rec, next, a);
}

/* Cancels or otherwise ends a task that is not running (cancel of queued). */
void
task_finish_final(struct task_rec *rec, enum outcome o, const char *error)
{
	if (error != NULL) {
		free(rec->error);
		rec->error = xstrdup(error);
	}
	task_set_state(rec, o == OUTCOME_CANCELED ? TASK_CANCELED :
	    TASK_FAILED, NULL);
}

/*
 * A task requeued by a retry may wait on tasks that changed while it was
 * final (retried themselves, ended, or pruned): it waits on those that have
 * not succeeded, and is canceled again at once if one of them (dep, ended
 * st) ended failed or canceled, as at its submit (spec 10), or is gone.
 */
static void
task_recheck_dependencies(struct task_rec *rec, int64_t dep,
    enum task_state st)
{
	char	*why;

	if (dep > 0) {
		if (st == TASK_NSTATES)
			xasprintf(&why, "dependency task %lld is no longer "
			    "there (pruned): it may not have succeeded",
			    (long long)dep);
		else
			xasprintf(&why, "dependency task %lld ended %s",
			    (long long)dep, task_state_name(st));
		task_finish_final(rec, OUTCOME_CANCELED, why);
		free(why);
	} else
		(void)store_dependency_met(rec->id);	/* a recount */
}

/*
 * The retry op: a failed or canceled task gets a fresh set of attempts.
 * Returns -1, with nothing done, when its dependencies could not be read:
 * taken for none failed, it was queued waiting on them for good.
 */
int
task_retry(struct task_rec *rec)
{
	enum task_state	 dep_state = TASK_NSTATES;
	json_t		*f;
	int64_t		 dep, pid = last_attempt_pid(rec);

	if ((dep = store_failed_dependency(rec->id, &dep_state)) == -1)
		return (-1);
	/*
	 * With a dependency still failed, task_recheck_dependencies cancels
	 * it again at once: no attempts for a run that cannot start (each
	 * such retry raised max_attempts).
	 */
	if (dep == 0)
		raise_max_attempts(rec, rec->attempts_per_run);
	rec->run_at = wall_ms();
	rec->cancel_requested = 0;	/* that cancel was for the last run */
	f = json_pack("{s:i, s:i}", "attempt", rec->attempt + 1, "delay_ms", 0);
	if (pid > 0)
		json_object_set_new(f, "pid", json_integer(pid));
	/* warn, as for every retry (spec 6). */
	event_emit(EV_LEVEL_WARN, "task.retry_scheduled", rec->id, f);
	task_set_state(rec, TASK_QUEUED, NULL);
	task_recheck_dependencies(rec, dep, dep_state);
	return (0);
}

struct task *
task_find(int64_t id)
{
	struct task	key;

	key.id = id;
	return (RB_FIND(tasks_id, &tasks_by_id, &key));
}

/*
 * The user task id belongs to: from memory while it runs, else the store.
 * Returns 0; 1 when there is no such task, -1 when the store could not
 * tell.
 */
int
task_owner(int64_t id, uid_t *uid)
{
	struct task	*t;

	if ((t = task_find(id)) != NULL) {
		*uid = t->rec->uid;
		return (0);
	}
	return (store_task_uid(id, uid));
}

/* Tasks running, and starts prepared to run in this pass (task_prepare). */
size_t
task_running_count(void)
{
	return (tasks_running + nprepared);
}

/* task_running_count() of one queue. */
size_t
task_running_in_queue(const char *queue)
{
	struct task		*t;
	struct prepared_start	*p;
	size_t			 n = 0;

	RB_FOREACH(t, tasks_id, &tasks_by_id) {
		if (strcmp(t->rec->queue, queue) == 0)
			n++;
	}
	TAILQ_FOREACH(p, &prepared, entry) {
		if (strcmp(p->rec->queue, queue) == 0)
			n++;
	}
	return (n);
}

/* Copies what only memory knows of a running task into a fresh store row. */
void
task_overlay(struct task_rec *rec)
{
	struct task	*t;

	if ((t = task_find(rec->id)) == NULL)
		return;
	rec->pid = t->rec->pid;		/* the store's is PID_WRITE_MS late */
	rec->last_heartbeat_at = t->rec->last_heartbeat_at;
	/* The store may be up to PROGRESS_WRITE_MS behind. */
	rec->progress = t->rec->progress;
	free(rec->progress_message);
	rec->progress_message = t->rec->progress_message != NULL ?
	    xstrdup(t->rec->progress_message) : NULL;
}

/* The same for a stored attempt: its pid, if forkqd has not written it. */
void
task_attempt_overlay(struct attempt_rec *a)
{
	struct task	*t;

	if ((t = task_find(a->task_id)) == NULL || t->attempt != a->n)
		return;
	a->pid = t->pid;
	a->pid_start = t->pid_start;
}

/*
 * Is attempt n of task id still running? Until task_attempt_end, reaped or
 * not: after its main process exits, what it left behind may write to the
 * output pipes until it is stopped, and the output op must not say eof
 * before that (spec: "-f follows until that attempt ends").
 */
int
task_attempt_running(int64_t id, int n)
{
	struct task	*t;

	return ((t = task_find(id)) != NULL && t->attempt == n);
}

int
task_output_path(int64_t id, int n, int is_stderr, char *buf, size_t len)
{
	int	r;

	if (n > 0)
		r = snprintf(buf, len, "%s/output/%" PRId64 "/%d.%s",
		    config.state_dir, id, n, is_stderr ? "err" : "out");
	else
		r = snprintf(buf, len, "%s/output/%" PRId64, config.state_dir,
		    id);
	return (r < 0 || (size_t)r >= len ? -1 : 0);
}

/* Closes t's heartbeat pipe, if still open, unwatched first (rounds.c). */
static void
task_hb_close(struct task *t)
{
	rounds_unwatch(&t->hb_round);
	if (t->hb_fd == -1)
		return;
	close(t->hb_fd);
	t->hb_fd = -1;
}

static void
task_free(struct task *t)
{
	ev_timer_stop(loop, &t->timeout_timer);
	ev_timer_stop(loop, &t->hb_timer);
	ev_timer_stop(loop, &t->kill_timer);
	ev_timer_stop(loop, &t->sweep_timer);
	ev_timer_stop(loop, &t->progress_timer);
	ev_timer_stop(loop, &t->progress_ev_timer);
	ev_timer_stop(loop, &t->pid_timer);
	task_hb_close(t);
	capture_finish(&t->out);
	capture_finish(&t->err);
	if (t->cg != NULL)
		cgroup_release(t->cg);
	task_exec_data_free(t);
	task_rec_free(t->rec);
	free(t);
}

/*
 * Bytes of a program or directory an attempt's error quotes: the task
 * object holds them already, and with a second whole copy in its error a
 * task near the size submit allows no longer fits in an answer line (spec
 * 7): get, wait and list failed on it for good.
 */
#define ERROR_QUOTE_MAX		256

/* "PREFIX NAME: why", NAME (UTF-8) cut at a character past the bound. */
static char *
error_quoting(const char *prefix, const char *name, int err)
{
	size_t	n = strlen(name);
	char	*s;

	if (n <= ERROR_QUOTE_MAX) {
		xasprintf(&s, "%s %s: %s", prefix, name, strerror(err));
		return (s);
	}
	for (n = ERROR_QUOTE_MAX; n > 0 &&
	    ((unsigned char)name[n] & 0xc0) == 0x80; n--)
		;	/* back to the start of the character cut */
	xasprintf(&s, "%s %.*s...: %s", prefix, (int)n, name, strerror(err));
	return (s);
}

/* "exec PROGRAM: why", the program as the task named it (argv[0]). */
static char *
exec_error(const char *argv_json, int err)
{
	json_t		*argv = json_loads(argv_json, 0, NULL);
	const char	*program = json_string_value(json_array_get(argv, 0));
	char		*s;

	s = error_quoting("exec", program != NULL ? program : "?", err);
	json_decref(argv);
	return (s);
}

/*
 * Did the main process use (used_ms of CPU, from its rusage) its rlimit
 * cpu, whose hard limit the kernel enforces by SIGKILL? The rusage counts
 * the children it waited for too, so this may say yes for a SIGKILL from
 * elsewhere, never no for the limit's.
 */
static int
cpu_limit_reached(const struct task *t, int64_t used_ms)
{
	json_t		*o;
	json_int_t	 limit_s = -1;

	if (t->rec->rlimits_json == NULL ||
	    (o = json_loads(t->rec->rlimits_json, 0, NULL)) == NULL)
		return (0);
	if (json_is_integer(json_object_get(o, "cpu")))
		limit_s = json_integer_value(json_object_get(o, "cpu"));
	json_decref(o);
	if (limit_s < 0 || limit_s > INT64_MAX / 1000)
		return (0);	/* none, or one no process reaches */
	/*
	 * The kernel checks the limit against its own sampling of the time
	 * used, rusage reports another: a 1 s limit killed tasks that
	 * reported 972 ms. Slack of 5% and 250 ms, far from a kill -9 of a
	 * task that used little.
	 */
	return (used_ms + 250 + limit_s * 50 >= limit_s * 1000);
}

static char *
attempt_error(struct task *t, enum outcome o, int64_t cpu_ms)
{
	char	*s = NULL, dur[32];
	int	 sig = WIFSIGNALED(t->status) ? WTERMSIG(t->status) : 0;

	switch (o) {
	case OUTCOME_EXEC_FAILED:
		if (strcmp(t->exec_step, "chdir") == 0)
			s = error_quoting("cwd", t->rec->cwd != NULL ?
			    t->rec->cwd : "/", t->exec_err);
		else if (strcmp(t->exec_step, "exec") == 0)
			s = exec_error(t->rec->argv_json, t->exec_err);
		else
			xasprintf(&s, "%s: %s", t->exec_step,
			    strerror(t->exec_err));
		break;
	case OUTCOME_TIMEOUT:
		format_duration(t->rec->timeout_ms, dur, sizeof dur);
		xasprintf(&s, "timed out after %s", dur);
		break;
	case OUTCOME_HEARTBEAT_LOST:
		format_duration(t->rec->heartbeat_timeout_ms, dur, sizeof dur);
		xasprintf(&s, "no heartbeat for %s", dur);
		break;
	case OUTCOME_INTERRUPTED:
		xasprintf(&s, "forkqd shut down while it ran");
		break;
	case OUTCOME_SIGNAL:
		if (sig == SIGXCPU)
			xasprintf(&s, "cpu time limit (rlimit cpu) exceeded");
		else if (sig == SIGXFSZ)
			xasprintf(&s, "file size limit (rlimit fsize) "
			    "exceeded");
		else if (sig == SIGKILL && cpu_limit_reached(t, cpu_ms))
			xasprintf(&s, "killed by SIGKILL: the rlimit cpu "
			    "hard limit was reached");
		else if (sig == SIGSEGV && t->rec->rlimits_json != NULL &&
		    strstr(t->rec->rlimits_json, "\"as\"") != NULL)
			/* A stack or mapping that could not grow. */
			xasprintf(&s, "killed by SIGSEGV (the rlimit as, if "
			    "it was reached)");
		break;
	default:
		break;
	}
	return (s);
}

static ssize_t	task_hb_read(struct task *);
static void	task_progress_event(struct task *);
static int	task_kill_all(struct task *, int);

/*
 * Reads what is in the heartbeat pipe now: at the attempt's end, lines
 * written just before the task exited; when the heartbeat timer fires,
 * lines the loop has not read yet. The read end is non-blocking.
 */
static void
task_hb_drain(struct task *t)
{
	int	i;

	for (i = 0; i < 64 && t->hb_fd != -1; i++) {
		if (task_hb_read(t) <= 0)
			break;
	}
}

/* The attempt is over: main reaped and nothing else left. */
static void
task_attempt_end(struct task *t)
{
	struct attempt_rec	 a;
	struct task_rec		*rec = t->rec;
	enum outcome		 o;

	task_hb_drain(t);
	if (ev_is_active(&t->progress_ev_timer)) {
		/* The last progress shows before the end. */
		ev_timer_stop(loop, &t->progress_ev_timer);
		task_progress_event(t);
	}
	capture_finish(&t->out);
	capture_finish(&t->err);

	memset(&a, 0, sizeof a);
	a.task_id = t->id;
	a.n = t->attempt;
	a.pid = t->pid;
	a.pid_start = t->pid_start;	/* the end writes them (store.c) */
	a.finished_at = wall_ms();
	a.duration_ms = t->end_mono - t->start_mono;
	a.exit_code = UNSET;
	if (t->exec_err != 0)
		;	/* the 127 of the failed child is not the task's */
	else if (WIFEXITED(t->status))
		a.exit_code = WEXITSTATUS(t->status);
	else if (WIFSIGNALED(t->status))
		a.signal = WTERMSIG(t->status);
	a.max_rss_kb = t->ru.ru_maxrss;
	a.user_cpu_ms = t->ru.ru_utime.tv_sec * 1000 +
	    t->ru.ru_utime.tv_usec / 1000;
	a.sys_cpu_ms = t->ru.ru_stime.tv_sec * 1000 +
	    t->ru.ru_stime.tv_usec / 1000;

	if (t->exec_err != 0)
		o = OUTCOME_EXEC_FAILED;
	else if (t->cancel)
		o = OUTCOME_CANCELED;	/* a cancel wins over any other stop */
	else {
		switch (t->stop_reason) {
		case STOP_TIMEOUT:
			o = OUTCOME_TIMEOUT;
			break;
		case STOP_HEARTBEAT_LOST:
			o = OUTCOME_HEARTBEAT_LOST;
			break;
		case STOP_CANCEL:
			o = OUTCOME_CANCELED;
			break;
		case STOP_SHUTDOWN:
			o = OUTCOME_INTERRUPTED;
			break;
		default:
			if (WIFEXITED(t->status))
				o = WEXITSTATUS(t->status) == 0 ?
				    OUTCOME_SUCCESS : OUTCOME_EXIT;
			else
				o = OUTCOME_SIGNAL;
			break;
		}
	}
	a.outcome = o;
	a.error = attempt_error(t, o, a.user_cpu_ms + a.sys_cpu_ms);

	RB_REMOVE(tasks_id, &tasks_by_id, t);
	if (!t->reaped)
		RB_REMOVE(tasks_pid, &tasks_by_pid, t);
	tasks_running--;
	t->rec = NULL;
	task_free(t);

	task_attempt_finish(rec, &a);
	free(a.error);
	ops_output_wake(rec->id);
	task_rec_free(rec);
	daemon_stopped_check();
}

/* Ends the attempt if nothing of the task is left; else keeps sweeping. */
static void
task_check_leftovers(struct task *t)
{
	/* Once SIGKILL went, every sweep sends it again: a fork loop must not
	 * outrun one scan. */
	if (!task_kill_all(t, t->kill_mono != 0 ? SIGKILL : 0)) {
		task_attempt_end(t);
		return;
	}
	if (t->kill_mono != 0 && mono_ms() - t->kill_mono > SWEEP_GIVE_UP_MS) {
		event_emit(EV_LEVEL_ERROR, "task.stuck", t->id, json_pack(
		    "{s:s}", "message", "processes survived SIGKILL; "
		    "recording the attempt as ended"));
		task_attempt_end(t);
		return;
	}
	if (!ev_is_active(&t->sweep_timer))
		ev_timer_again(loop, &t->sweep_timer);
}

/*
 * Sends sig (0: just look) to everything of t: its cgroup when it has one,
 * else its process tree. Returns whether anything of it is left.
 */
static int
task_kill_all(struct task *t, int sig)
{
	/*
	 * Just after its spawn the main process may not lead its group yet
	 * (spawn.c does not wait for its exec): then it alone is signalled,
	 * by pid, which is safe while it is unreaped. It takes the signal
	 * once it has reset its dispositions.
	 */
	if (!t->reaped && sig != 0 && kill(-t->pid, 0) == -1 &&
	    errno == ESRCH)
		(void)kill_waking(t->pid, sig);
	if (t->cg != NULL)
		return (cgroup_signal(t->cg, sig));
	/*
	 * Once the main process is reaped its number stays reserved only as
	 * long as some process is in its group or session: once none is, the
	 * number may go to an unrelated group, so proctree.c matches the task
	 * by environment and ancestry alone from then on.
	 */
	return (proctree_signal(t->pid, 0, t->id, sig, t->reaped,
	    &t->group_gone, t->spawn_seq, mono_ms() - t->start_mono) > 0);
}

static const char *
stop_reason_name(enum stop_reason r)
{
	switch (r) {
	case STOP_TIMEOUT:
		return ("timeout");
	case STOP_HEARTBEAT_LOST:
		return ("heartbeat_lost");
	case STOP_CANCEL:
		return ("cancel");
	case STOP_SHUTDOWN:
		return ("shutdown");
	default:
		return ("exited");
	}
}

static void
task_signal(struct task *t, int sig)
{
	task_kill_all(t, sig);
	event_emit(EV_LEVEL_WARN, "task.stopping", t->id, json_pack(
	    "{s:i, s:I, s:s, s:s}", "attempt", t->attempt, "pid",
	    (json_int_t)t->pid, "reason", stop_reason_name(t->stop_reason),
	    "signal", signal_name(sig)));
}

/*
 * Stops the attempt: SIGTERM to everything of the task now, SIGKILL after
 * --kill-grace. The first reason given is the one recorded.
 */
void
task_stop(struct task *t, enum stop_reason reason)
{
	if (reason == STOP_CANCEL && !t->cancel) {
		t->cancel = 1;
		/*
		 * Kept in the store, so that recovery ends the attempt as
		 * canceled should forkqd die before the task does: the cancel
		 * was answered, a retry would go back on it.
		 */
		t->rec->cancel_requested = 1;
		store_task_update(t->rec);
	}
	if (t->stop_reason != STOP_NONE) {
		/*
		 * A shutdown told again stops at once (spec 4.6 / #5), also a
		 * task already stopping for a reason of its own (a timeout,
		 * say) when the first came: the operator's "stop now" is
		 * for every task.
		 */
		if (reason == STOP_SHUTDOWN && (t->stop_reason ==
		    STOP_SHUTDOWN || t->shutdown_told) && t->kill_mono == 0) {
			ev_timer_stop(loop, &t->kill_timer);
			ev_feed_event(loop, &t->kill_timer, EV_TIMER);
		}
		if (reason == STOP_SHUTDOWN)
			t->shutdown_told = 1;
		return;
	}
	t->stop_reason = reason;
	ev_timer_stop(loop, &t->timeout_timer);
	ev_timer_stop(loop, &t->hb_timer);
	task_signal(t, SIGTERM);
	/* The grace counts from the SIGTERM (and its event's time), not from
	 * the pass's start: a /proc scan before it took some of it. */
	ev_now_update(loop);
	ev_timer_set(&t->kill_timer, (double)config.kill_grace_ms / 1000.0,
	    0.);
	ev_timer_start(loop, &t->kill_timer);
	if (t->reaped)
		task_check_leftovers(t);
}

void
task_stop_all(enum stop_reason reason)
{
	struct task	*t, *next;

	RB_FOREACH_SAFE(t, tasks_id, &tasks_by_id, next)
		task_stop(t, reason);
}

static void
task_kill_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	struct task	*t = w->data;

	t->kill_mono = mono_ms();
	task_signal(t, SIGKILL);
	if (t->reaped)
		task_check_leftovers(t);
}

static void
task_sweep_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	struct task	*t = w->data;

	ev_timer_stop(loop, w);
	if (t->reaped)
		task_check_leftovers(t);
}

static void
task_timeout_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	task_stop(w->data, STOP_TIMEOUT);
}

/*
 * No heartbeat was read for heartbeat_timeout_ms. The loop may have been
 * held up meanwhile (a long request, forkqd stopped or the machine
 * suspended), and libev runs a due timer before the reads that became
 * ready with it: heartbeats already waiting in the pipe were written
 * before this check, so the task is alive.
 */
static void
task_hb_timer_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	struct task	*t = w->data;
	unsigned long	 seen = t->hb_lines;

	task_hb_drain(t);
	if (t->hb_lines != seen)
		return;		/* task_heartbeat_line set the clock again */
	task_stop(t, STOP_HEARTBEAT_LOST);
}

/*
 * Writes t's progress to the store, at most once per PROGRESS_WRITE_MS: a
 * row update per line cost 10% of a core with 1,000 tasks sending 10 a
 * second. Answers show the live progress (task_overlay) and the end of
 * the attempt writes the whole row, so only readers of the database see
 * it late, by at most that long. due: the timer fired.
 */
static void
task_progress_write(struct task *t, int due)
{
	int64_t	now = mono_ms(), wait;

	if (!due && ev_is_active(&t->progress_timer))
		return;		/* held: the timer writes the newest */
	wait = t->progress_written + PROGRESS_WRITE_MS - now;
	if (!due && t->progress_written != 0 && wait > 0) {
		ev_timer_set(&t->progress_timer, (double)wait / 1000.0, 0.);
		ev_timer_start(loop, &t->progress_timer);
		return;
	}
	t->progress_written = now;
	store_task_progress(t->id, t->rec->last_heartbeat_at,
	    t->rec->progress, t->rec->progress_message);
}

static void
task_progress_timer_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	task_progress_write(w->data, 1);
}

/* task.progress with t's newest progress. */
static void
task_progress_event(struct task *t)
{
	event_emit(EV_LEVEL_INFO, "task.progress", t->id, json_pack(
	    "{s:i, s:I, s:I, s:o}", "attempt", t->attempt, "pid",
	    (json_int_t)t->pid, "progress", (json_int_t)t->rec->progress,
	    "message", t->rec->progress_message != NULL ?
	    json_string(t->rec->progress_message) : json_null()));
}

/* Refills t's allowance of progress events; how many it has now. */
static double
task_progress_tokens(struct task *t)
{
	int64_t	now = mono_ms();

	if (t->progress_tokens_at == 0)
		t->progress_tokens = PROGRESS_EVENT_BURST;
	else
		t->progress_tokens += (double)(now - t->progress_tokens_at) *
		    PROGRESS_EVENT_RATE / 1000.0;
	if (t->progress_tokens > PROGRESS_EVENT_BURST)
		t->progress_tokens = PROGRESS_EVENT_BURST;
	t->progress_tokens_at = now;
	return (t->progress_tokens);
}

/*
 * The progress changed: its event goes now if the allowance has one, else
 * the timer sends the newest once it has (one held at a time).
 */
static void
task_progress_changed(struct task *t)
{
	double	tokens;

	if (ev_is_active(&t->progress_ev_timer))
		return;		/* held: the timer sends the newest */
	if ((tokens = task_progress_tokens(t)) >= 1.0) {
		t->progress_tokens -= 1.0;
		task_progress_event(t);
		return;
	}
	ev_timer_set(&t->progress_ev_timer, (1.0 - tokens) /
	    PROGRESS_EVENT_RATE + 0.001, 0.);
	ev_timer_start(loop, &t->progress_ev_timer);
}

static void
task_progress_ev_timer_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	struct task	*t = w->data;

	(void)task_progress_tokens(t);
	t->progress_tokens -= 1.0;
	task_progress_event(t);
}

/* One heartbeat line: "progress N [MESSAGE]" also sets the progress. */
static void
task_heartbeat_line(struct task *t, char *line)
{
	struct task_rec	*rec = t->rec;
	const char	*errstr, *msg;
	char		 num[8];
	size_t		 len;
	long long	 p;

	t->hb_lines++;
	rec->last_heartbeat_at = wall_ms();
	utf8_sanitize(line);
	if (t->rec->heartbeat_timeout_ms > 0 && t->stop_reason == STOP_NONE &&
	    !t->reaped)
		ev_timer_again(loop, &t->hb_timer);
	if (strncmp(line, "progress ", 9) != 0)
		return;
	line += 9;
	len = strcspn(line, " ");
	/* N is digits only: strtonum would also take "+5" or "-0". */
	if (len == 0 || len >= sizeof num || strspn(line, "0123456789") != len)
		return;
	memcpy(num, line, len);
	num[len] = '\0';
	p = strtonum(num, 0, 100, &errstr);
	if (errstr != NULL)
		return;
	/* "progress 80 " has no message: it clears it, as "progress 80". */
	msg = line[len] == ' ' && line[len + 1] != '\0' ? line + len + 1 :
	    NULL;
	rec->progress = p;
	free(rec->progress_message);
	rec->progress_message = msg != NULL ? xstrdup(msg) : NULL;
	task_progress_write(t, 0);
	task_progress_changed(t);
}

/*
 * Reads one chunk of heartbeat lines. Returns the bytes read, 0 at EOF (the
 * pipe is then closed) and -1 when nothing is there yet.
 */
static ssize_t
task_hb_read(struct task *t)
{
	char		 buf[HB_CHUNK], *nl, *p;
	ssize_t		 n;
	size_t		 take;

	n = read(t->hb_fd, buf, sizeof buf);
	if (n == -1 && (errno == EAGAIN || errno == EINTR))
		return (-1);
	if (n <= 0) {
		/* The task closed the fd: allowed (spec 5). */
		task_hb_close(t);
		return (0);
	}
	for (p = buf; p < buf + n; p = nl + 1) {
		nl = memchr(p, '\n', buf + n - p);
		take = (nl != NULL ? nl : buf + n) - p;
		if (!t->hb_skip) {
			if (t->hb_len + take >= sizeof t->hb_buf - 1) {
				take = sizeof t->hb_buf - 1 - t->hb_len;
				t->hb_skip = 1;
			}
			memcpy(t->hb_buf + t->hb_len, p, take);
			t->hb_len += take;
		}
		if (nl == NULL)
			break;
		t->hb_buf[t->hb_len] = '\0';
		if (t->hb_len > 0 && t->hb_buf[t->hb_len - 1] == '\r')
			t->hb_buf[t->hb_len - 1] = '\0';
		task_heartbeat_line(t, t->hb_buf);
		t->hb_len = 0;
		t->hb_skip = 0;
	}
	return (n);
}

/*
 * Task data's heartbeat pipe is readable (rounds.c). It is read until a
 * short read, 64 KiB (a default pipe's worth) at most: the pipes are read
 * in rounds, and a task that wrote more than a chunk since the last one
 * would otherwise wait in write(2), on a full pipe, for the rounds to
 * catch up.
 */
static void
task_heartbeat_ready(void *data)
{
	int	i;

	for (i = 0; i < HB_CHUNKS_PER_ROUND; i++) {
		if (task_hb_read(data) != HB_CHUNK)
			break;
	}
}

/* The main process of a task, or an orphan of one, was reaped. */
void
task_reaped(pid_t pid, int status, const struct rusage *ru)
{
	struct task	 key, *t;
	int		 left;

	key.pid = pid;
	if ((t = RB_FIND(tasks_pid, &tasks_by_pid, &key)) == NULL) {
		/* An orphan re-parented to us: a stopping task may be done. */
		RB_FOREACH(t, tasks_id, &tasks_by_id) {
			if (t->reaped)
				ev_timer_again(loop, &t->sweep_timer);
		}
		return;
	}
	/*
	 * Found by id from now on: the number may go to another process,
	 * even to the next task, while this one's leftovers are stopped.
	 */
	RB_REMOVE(tasks_pid, &tasks_by_pid, t);
	t->reaped = 1;
	t->status = status;
	t->ru = *ru;
	t->end_mono = mono_ms();
	task_exec_data_free(t);
	if ((t->exec_err = spawn_reaped(&t->spawn, &t->exec_step)) != 0)
		t->pid_start = UNSET;	/* no process of the task ran */
	ev_timer_stop(loop, &t->timeout_timer);
	ev_timer_stop(loop, &t->hb_timer);
	if (t->exec_err != 0) {
		task_attempt_end(t);
		return;
	}
	left = task_kill_all(t, 0);
	if (t->cg != NULL && (left || (WIFSIGNALED(status) &&
	    WTERMSIG(status) == SIGKILL)))
		cgroup_spoil(t->cg);
	if (!left) {
		task_attempt_end(t);
		return;
	}
	if (t->stop_reason == STOP_NONE)
		task_stop(t, STOP_EXITED);
	else
		task_check_leftovers(t);
}

static char **
argv_from_json(const char *text)
{
	json_t	*a, *v;
	char	**argv;
	size_t	 i;

	if ((a = json_loads(text, 0, NULL)) == NULL || !json_is_array(a)) {
		json_decref(a);
		return (NULL);
	}
	argv = xcalloc(json_array_size(a) + 1, sizeof *argv);
	json_array_foreach(a, i, v)
		argv[i] = xstrdup(json_string_value(v));
	json_decref(a);
	return (argv);
}

/*
 * Variables of forkqd's environment a task does not get: the ones forkqd
 * sets itself, and the init system's messages to forkqd (sd_notify(3) asks
 * that they not reach children; socket activation's likewise).
 */
static int
env_reserved(const char *key)
{
	static const char *const reserved[] = {
		"FORKQ_TASK_ID", "FORKQ_ATTEMPT", "FORKQ_HEARTBEAT_FD",
		"FORKQ_SOCKET", "NOTIFY_SOCKET", "WATCHDOG_USEC",
		"WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
	};
	size_t	i;

	for (i = 0; i < sizeof reserved / sizeof reserved[0]; i++) {
		if (strcmp(key, reserved[i]) == 0)
			return (1);
	}
	return (0);
}

static int
env_key_is(const char *entry, const char *key, size_t keylen)
{
	return (strncmp(entry, key, keylen) == 0 && entry[keylen] == '=');
}

/*
 * forkqd's environment without the variables no task inherits, gathered
 * once: forkqd never changes its environment. The strings are environ's.
 * fixed_env: the FORKQ_ variables that are the same for every task.
 */
static char	**base_env;
static size_t	  base_nenv;
static char	 *fixed_env[2];

static void
base_env_init(void)
{
	size_t	i, n = 0;

	for (i = 0; environ[i] != NULL; i++)
		;
	base_env = xcalloc(i + 1, sizeof *base_env);
	for (i = 0; environ[i] != NULL; i++) {
		const char	*eq = strchr(environ[i], '=');
		size_t		 kl = eq != NULL ? (size_t)(eq - environ[i]) : 0;
		char		 key[256];

		if (eq == NULL || kl >= sizeof key)
			continue;
		memcpy(key, environ[i], kl);
		key[kl] = '\0';
		if (!env_reserved(key))
			base_env[n++] = environ[i];
	}
	base_nenv = n;
	xasprintf(&fixed_env[0], "FORKQ_HEARTBEAT_FD=%d", SPAWN_HEARTBEAT_FD);
	/* An addition: `forkq` inside a task reaches the forkqd running it. */
	xasprintf(&fixed_env[1], "FORKQ_SOCKET=%s", config.socket_env);
}

/* Does the request's env (NULL: none) set the variable of entry? */
static int
env_overrides(json_t *env, const char *entry)
{
	const char	*eq;
	char		 key[256], *k;
	int		 found;

	if (env == NULL || (eq = strchr(entry, '=')) == NULL)
		return (0);
	if ((size_t)(eq - entry) < sizeof key) {
		memcpy(key, entry, eq - entry);
		key[eq - entry] = '\0';
		return (json_object_get(env, key) != NULL);
	}
	k = xstrndup(entry, eq - entry);
	found = json_object_get(env, k) != NULL;
	free(k);
	return (found);
}

/*
 * forkqd's environment, then the request's env over it, then the FORKQ_
 * variables over both (spec 5). The first *nowned strings are the
 * result's own (envp_free); the rest are forkqd's environ, borrowed: a
 * spawn copies no more than it must. *path points into the result.
 */
static char **
envp_build(const struct task_rec *rec, int attempt, const char **path,
    size_t *nowned)
{
	json_t		*env = NULL, *v;
	const char	*k;
	char		**envp;
	size_t		 n = 0, i;

	if (base_env == NULL)
		base_env_init();
	if (rec->env_json != NULL)
		env = json_loads(rec->env_json, 0, NULL);
	envp = xcalloc(base_nenv + json_object_size(env) + 5, sizeof *envp);
	json_object_foreach(env, k, v) {
		if (strcmp(k, "FORKQ_TASK_ID") == 0 ||
		    strcmp(k, "FORKQ_ATTEMPT") == 0 ||
		    strcmp(k, "FORKQ_HEARTBEAT_FD") == 0 ||
		    strcmp(k, "FORKQ_SOCKET") == 0)
			continue;
		xasprintf(&envp[n++], "%s=%s", k, json_string_value(v));
	}
	xasprintf(&envp[n++], "FORKQ_TASK_ID=%" PRId64, rec->id);
	xasprintf(&envp[n++], "FORKQ_ATTEMPT=%d", attempt);
	*nowned = n;
	envp[n++] = fixed_env[0];
	envp[n++] = fixed_env[1];
	for (i = 0; i < base_nenv; i++) {
		if (!env_overrides(env, base_env[i]))
			envp[n++] = base_env[i];
	}
	json_decref(env);
	envp[n] = NULL;
	*path = "/usr/local/bin:/usr/bin:/bin";
	for (i = 0; i < n; i++) {
		if (env_key_is(envp[i], "PATH", 4)) {
			*path = envp[i] + 5;
			break;
		}
	}
	return (envp);
}

static void
envp_free(char **envp, size_t nowned)
{
	size_t	i;

	if (envp == NULL)
		return;
	for (i = 0; i < nowned; i++)
		free(envp[i]);
	free(envp);
}

/* Once the child is reaped: it read them until its exec. */
static void
task_exec_data_free(struct task *t)
{
	strv_free(t->argv);
	envp_free(t->envp, t->envp_owned);
	t->argv = t->envp = NULL;
}

static void
rlimits_from_json(const char *text, struct spawn_req *req)
{
	json_t	*o, *v;
	int	 i;

	if (text == NULL || (o = json_loads(text, 0, NULL)) == NULL)
		return;
	for (i = 0; i < RLIM_COUNT; i++) {
		if ((v = json_object_get(o, rlimit_names[i].name)) == NULL ||
		    !json_is_integer(v))
			continue;
		req->rlimit_set[i] = 1;
		req->rlimits[i].rlim_cur = req->rlimits[i].rlim_max =
		    (rlim_t)json_integer_value(v);
	}
	json_decref(o);
}

/*
 * A running task's pid goes to the store PID_WRITE_MS after its start, not
 * at once: most short tasks end first, and their end writes it (store.c),
 * which saves a commit of its own per task (pipelined /bin/true: 6% fewer
 * instructions, 11% fewer WAL writes and a third fewer lock calls per
 * task). Answers show it at once (task_overlay); only
 * readers of the database see it late, and recovery finds a task without
 * it by FORKQ_TASK_ID (task_recover), as after any crash before the write.
 */
static void
task_pid_timer_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	struct task		*t = w->data;
	struct attempt_rec	 a;

	memset(&a, 0, sizeof a);
	a.task_id = t->id;
	a.n = t->attempt;
	a.pid = t->pid;
	a.pid_start = t->pid_start;
	store_attempt_pid(&a);
}

/*
 * Writes the attempt rec is about to start, and rec running with it, into
 * the pass's transaction; task_start_prepared() commits it before the
 * process exists. Written after the spawn, in the pass's commit, a crash
 * between the two lost the run from the record: its processes lived on
 * unseen and its attempt number ran again. Now recovery finds the attempt
 * unfinished, stops what the task started (by FORKQ_TASK_ID, when the pid
 * never got written) and records it lost. The task's row goes with it, so
 * that readers of the database never see an unfinished attempt on a queued
 * task. The commit is not fsynced: a crash of forkqd keeps it, and a crash
 * of the machine ends the task too. The pid follows once it is known
 * (task_pid_timer_cb, or the attempt's end).
 */
static int
task_write_ahead(struct task_rec *rec, struct start_undo *u)
{
	struct attempt_rec	a;

	memset(&a, 0, sizeof a);
	a.task_id = rec->id;
	a.n = rec->attempt + 1;
	a.pid = UNSET;
	a.pid_start = UNSET;
	a.started_at = wall_ms();
	a.exit_code = UNSET;
	u->started_at = rec->started_at;
	u->progress = rec->progress;
	u->progress_message = rec->progress_message;
	u->last_heartbeat_at = rec->last_heartbeat_at;
	rec->attempt = a.n;
	rec->pid = UNSET;
	rec->started_at = a.started_at;
	rec->progress = UNSET;
	rec->progress_message = NULL;
	rec->last_heartbeat_at = UNSET;
	return (task_set_state(rec, TASK_RUNNING, &a));
}

/* The start written ahead stands: what it replaced goes. */
static void
task_write_ahead_done(struct start_undo *u)
{
	free(u->progress_message);
	u->progress_message = NULL;
}

/*
 * Takes back a start written ahead whose process will not be: rec is
 * queued again as it was (the last attempt's progress too), with no
 * attempt of that number. The caller writes rec.
 */
static void
task_write_ahead_undo(struct task_rec *rec, struct start_undo *u)
{
	store_attempt_forget(rec->id, rec->attempt);
	store_count_transition(TASK_RUNNING, TASK_QUEUED);
	rec->state = TASK_QUEUED;
	rec->attempt--;
	rec->started_at = u->started_at;
	rec->progress = u->progress;
	free(rec->progress_message);
	rec->progress_message = u->progress_message;
	u->progress_message = NULL;
	rec->last_heartbeat_at = u->last_heartbeat_at;
}

/*
 * A start that will not be: everything prepared for it goes, and rec stays
 * queued, to be tried again a little later. Frees p.
 */
static void
task_start_abandon(struct prepared_start *p)
{
	struct task	*t = p->t;
	struct task_rec	*rec = p->rec;

	if (t->cg != NULL)
		cgroup_release(t->cg);
	if (p->outfd != -1)
		close(p->outfd);
	if (p->errfd != -1)
		close(p->errfd);
	capture_finish(&t->out);
	capture_finish(&t->err);
	free(t);
	if (p->hb[0] != -1) {
		close(p->hb[0]);
		close(p->hb[1]);
	}
	strv_free(p->argv);
	envp_free(p->envp, p->nowned);
	rec->run_at = wall_ms() + 1000;
	store_task_update(rec);
	task_rec_free(rec);
	free(p);
}

/* task_start_abandon() of a start already written ahead. */
static void
task_start_take_back(struct prepared_start *p)
{
	task_write_ahead_undo(p->rec, &p->undo);
	task_start_abandon(p);
}


/*
 * A start failed for want of a resource: its pipes (out of fds), or its
 * process (clone: out of processes for forkqd's user). The task stays
 * queued and the scheduler tries again soon, so each is said at most
 * every START_FAILED_LOG_S, with how many failed between: a clone failing
 * for every queued task wrote 752 lines in 10 s.
 */
#define START_FAILED_LOG_S	10

struct start_failures {
	const char	*what;
	int64_t		 logged_ms;	/* -1: never */
	long		 since;
};
static struct start_failures	prepare_failures = {
	"cannot prepare its attempt", -1, 0 };
static struct start_failures	clone_failures = {
	"cannot make its process (clone)", -1, 0 };

static void
task_start_failed(struct start_failures *f, int64_t id)
{
	int	err = errno;

	if (f->logged_ms != -1 &&
	    mono_ms() - f->logged_ms < START_FAILED_LOG_S * 1000) {
		f->since++;
		return;
	}
	errno = err;
	if (f->since > 0)
		log_warn("task %" PRId64 ": %s (and %ld more since the last "
		    "warning)", id, f->what, f->since);
	else
		log_warn("task %" PRId64 ": %s", id, f->what);
	f->logged_ms = mono_ms();
	f->since = 0;
}

/*
 * Whether rec's task takes its client's ids (spec 8: a task runs as the
 * uid and gid of the client): when forkqd is root and they are not its
 * own. A root client whose gid is another runs with that gid.
 */
static int
task_runs_as_client(const struct task_rec *rec)
{
	return (running_as_root() && (rec->uid != 0 ||
	    rec->gid != running_egid()));
}

/*
 * Prepares the next attempt of queued task rec and writes its start ahead
 * (ownership of rec passes). Returns 0 when it waits for
 * task_start_prepared(), or when rec failed at once (its stored argv is
 * not an array); -1, with rec left queued and retried a little later, when
 * forkqd could not prepare a process at all (out of fds); 1, with rec left
 * queued, while the groups of rec's user are looked up for the first
 * time: the end of the lookup kicks the dispatch.
 */
int
task_prepare(struct task_rec *rec)
{
	struct prepared_start	*p;
	struct task		*t;
	struct spawn_req	*req;
	char			**argv;
	const gid_t		*groups;

	if (task_runs_as_client(rec) &&
	    usergroups_get(rec->uid, rec->gid, &groups) == 0) {
		task_rec_free(rec);
		return (1);
	}
	if ((argv = argv_from_json(rec->argv_json)) == NULL) {
		free(rec->error);
		rec->error = xstrdup("stored argv is not a JSON array");
		task_set_state(rec, TASK_FAILED, NULL);
		task_rec_free(rec);
		return (0);
	}
	p = xcalloc(1, sizeof *p);
	p->rec = rec;
	p->argv = argv;
	p->hb[0] = p->hb[1] = p->outfd = p->errfd = -1;
	t = p->t = xcalloc(1, sizeof *t);
	t->hb_fd = -1;
	t->out.pipe_fd = t->out.file_fd = -1;
	t->err.pipe_fd = t->err.file_fd = -1;
	if ((p->outfd = capture_open(&t->out, rec->id, rec->attempt + 1, 0,
	    rec->uid, rec->gid)) == -1 ||
	    (p->errfd = capture_open(&t->err, rec->id, rec->attempt + 1, 1,
	    rec->uid, rec->gid)) == -1 ||
	    pipe2(p->hb, O_CLOEXEC) == -1 ||
	    /* Only forkqd's end: a task may expect a blocking fd. */
	    fcntl(p->hb[0], F_SETFL, O_NONBLOCK) == -1) {
		task_start_failed(&prepare_failures, rec->id);
		task_start_abandon(p);
		return (-1);
	}
	req = &p->req;
	p->envp = envp_build(rec, rec->attempt + 1, &req->path, &p->nowned);
	req->argv = p->argv;
	req->envp = p->envp;
	req->cwd = rec->cwd != NULL ? rec->cwd : "/";
	req->stdout_fd = p->outfd;
	req->stderr_fd = p->errfd;
	req->heartbeat_fd = p->hb[1];
	req->uid = (uid_t)-1;
	if (task_runs_as_client(rec)) {
		req->uid = rec->uid;
		req->gid = rec->gid;
	}
	rlimits_from_json(rec->rlimits_json, req);
	t->cg = cgroup_acquire();
	req->cgroup_fd = t->cg != NULL ? cgroup_join_fd(t->cg) : -1;
	req->cgroup_dir_fd = t->cg != NULL ? cgroup_dir_fd(t->cg) : -1;
	/* Without a cgroup, proctree.c finds what it leaves by session. */
	req->own_session = t->cg == NULL;

	if (task_write_ahead(rec, &p->undo) == -1) {
		log_warnx("task %" PRId64 ": its start could not be recorded",
		    rec->id);
		task_start_take_back(p);
		return (-1);
	}
	TAILQ_INSERT_TAIL(&prepared, p, entry);
	nprepared++;
	return (0);
}

/*
 * Spawns the process of prepared start p, its start committed, and runs
 * the task from there. Frees p. Returns -1, with the task queued again,
 * when the clone failed.
 */
static int
task_spawn(struct prepared_start *p)
{
	struct task	*t = p->t;
	struct task_rec	*rec = p->rec;
	pid_t		 pid;
	int64_t		 ticks_before, ticks_after;

	/*
	 * Known since the prepare; taken here, not kept from there: the list
	 * is the cache's, good until the next usergroups_collect() (on the
	 * loop, not in this pass), and spawn_child copies it.
	 */
	if (p->req.uid != (uid_t)-1 && (p->req.ngroups =
	    usergroups_get(p->req.uid, p->req.gid, &p->req.groups)) < 1) {
		/* task_prepare saw them known: not to run without them. */
		log_warnx("task %" PRId64 ": its user's groups are not known",
		    rec->id);
		task_start_take_back(p);
		return (-1);
	}
	ticks_before = proctree_ticks_now();
	pid = spawn_child(&p->req, &t->spawn);
	ticks_after = proctree_ticks_now();
	if (pid == -1) {
		task_start_failed(&clone_failures, rec->id);
		task_start_take_back(p);
		return (-1);
	}
	task_write_ahead_done(&p->undo);
	t->spawn_seq = proctree_note_spawn(pid);
	close(p->outfd);
	close(p->errfd);
	close(p->hb[1]);
	t->argv = p->argv;
	t->envp = p->envp;
	t->envp_owned = p->nowned;
	t->hb_fd = p->hb[0];
	free(p);

	t->id = rec->id;
	t->rec = rec;
	t->pid = pid;
	t->attempt = rec->attempt;
	t->start_mono = mono_ms();
	t->start_wall = rec->started_at;
	/* The child's starttime lies between: read /proc only if they differ. */
	if (ticks_before == ticks_after && ticks_before != -1)
		t->pid_start = ticks_before;
	else
		t->pid_start = proctree_start_time(pid);
	ev_init(&t->timeout_timer, task_timeout_cb);
	t->timeout_timer.data = t;
	ev_init(&t->hb_timer, task_hb_timer_cb);
	t->hb_timer.data = t;
	ev_init(&t->progress_timer, task_progress_timer_cb);
	t->progress_timer.data = t;
	ev_init(&t->progress_ev_timer, task_progress_ev_timer_cb);
	t->progress_ev_timer.data = t;
	ev_init(&t->kill_timer, task_kill_cb);
	t->kill_timer.data = t;
	ev_init(&t->sweep_timer, task_sweep_cb);
	t->sweep_timer.repeat = SWEEP_INTERVAL;
	t->sweep_timer.data = t;
	RB_INSERT(tasks_id, &tasks_by_id, t);
	/* Unique: the kernel reuses no unreaped pid, and reaped ones leave. */
	if (RB_INSERT(tasks_pid, &tasks_by_pid, t) != NULL)
		fatalx("pid %d of task %" PRId64 " already taken", (int)pid,
		    rec->id);
	tasks_running++;

	rec->pid = pid;
	ev_timer_init(&t->pid_timer, task_pid_timer_cb,
	    (double)PID_WRITE_MS / 1000.0, 0.);
	t->pid_timer.data = t;
	event_emit(EV_LEVEL_INFO, "task.started", rec->id,
	    json_pack("{s:s, s:i, s:I}", "name", rec->name, "attempt",
	    rec->attempt, "pid", (json_int_t)pid));

	capture_start(&t->out, pid);
	capture_start(&t->err, pid);
	/* Timers count from now, not from when this loop pass began. */
	ev_now_update(loop);
	ev_timer_start(loop, &t->pid_timer);
	if (rounds_watch(&t->hb_round, t->hb_fd, task_heartbeat_ready, t) ==
	    -1)
		log_warn("task %" PRId64 ": heartbeat pipe not in the epoll "
		    "set; read as each line comes", rec->id);
	if (rec->timeout_ms > 0) {
		ev_timer_set(&t->timeout_timer,
		    (double)rec->timeout_ms / 1000.0, 0.);
		ev_timer_start(loop, &t->timeout_timer);
	}
	if (rec->heartbeat_timeout_ms > 0) {
		t->hb_timer.repeat = (double)rec->heartbeat_timeout_ms / 1000.0;
		ev_timer_again(loop, &t->hb_timer);
	}
	return (0);
}

/*
 * Commits the starts task_prepare() wrote ahead in this pass, then spawns
 * their processes, in the order they were prepared. When the commit fails
 * none of them starts, and each stays queued, to be tried again a little
 * later. Returns -1 when a start did not happen, 0 otherwise.
 */
int
task_start_prepared(void)
{
	struct prepared_start	*p;
	int			 committed, rc = 0;

	if (TAILQ_EMPTY(&prepared))
		return (0);
	committed = daemon_commit_now() != -1;
	if (committed)
		spawn_forget_peak();
	while ((p = TAILQ_FIRST(&prepared)) != NULL) {
		TAILQ_REMOVE(&prepared, p, entry);
		nprepared--;
		if (!committed) {
			log_warnx("task %" PRId64 ": its start could not be "
			    "recorded", p->rec->id);
			task_start_take_back(p);
			rc = -1;
		} else if (task_spawn(p) == -1)
			rc = -1;
	}
	return (rc);
}

/*
 * At start: attempts the store says were running belonged to a forkqd that
 * died. Kill what is left of them (the main process only if its pid still
 * has the recorded start time, so a reused pid is never hit), record them
 * as lost and let the retry rules decide (spec 4.6).
 */
void
task_recover(void)
{
	struct attempt_rec	**as, *a;
	struct task_rec		 *rec;
	struct timespec		  ts = { 0, 20 * 1000 * 1000 };
	size_t			  n, i;
	pid_t			  pid;
	int			  tries, group_gone;

	/* Unread, they would stay running for ever (spec 4.6: lost). */
	if ((as = store_unfinished_attempts(&n)) == NULL)
		fatalx("cannot read the attempts left running from the "
		    "database");
	for (i = 0; i < n; i++) {
		a = as[i];
		group_gone = 0;		/* stays so: the pid is not reaped */
		pid = 0;
		if (a->pid > 1 && a->pid_start != UNSET &&
		    proctree_start_time((pid_t)a->pid) == a->pid_start)
			pid = (pid_t)a->pid;
		/*
		 * Bounded: SIGKILL cannot be refused, only delayed by D state.
		 * (What was in cgroups is gone already: cgroup_init.)
		 */
		for (tries = 0; tries < 250; tries++) {
			if (proctree_signal(pid, 1, a->task_id, SIGKILL, 0,
			    &group_gone, 0, -1) == 0)
				break;
			nanosleep(&ts, NULL);
		}
		a->finished_at = wall_ms();
		a->duration_ms = a->finished_at - a->started_at;
		a->outcome = OUTCOME_LOST;
		a->exit_code = UNSET;
		a->signal = 0;
		free(a->error);
		a->error = xstrdup("forkqd stopped while it ran");
		/* Unread, it would stay running for ever, as above. */
		if (store_task_find(a->task_id, &rec) == -1)
			fatalx("cannot read task %" PRId64 ", left running, "
			    "from the database", a->task_id);
		if (rec != NULL && rec->cancel_requested &&
		    rec->state == TASK_RUNNING &&
		    rec->attempt == a->n) {
			/* The cancel was answered before forkqd stopped. */
			a->outcome = OUTCOME_CANCELED;
			free(a->error);
			a->error = xstrdup("canceled; forkqd stopped before "
			    "the attempt ended");
		}
		if (rec == NULL ||
		    rec->state != TASK_RUNNING || rec->attempt != a->n) {
			store_attempt_ended(NULL, a);
			task_rec_free(rec);
			attempt_rec_free(a);
			continue;
		}
		task_attempt_finish(rec, a);
		task_rec_free(rec);
		attempt_rec_free(a);
	}
	free(as);
}
