/*
 * ops.c: the protocol ops of spec 7, one function each, found through one
 * table. An op validates its request (proto.c), acts through the store and
 * the task module, and queues exactly one answer, except watch, which then
 * streams. Ops that may hold their answer (wait, output with wait_ms) park a
 * struct pending that a task's end, a change of the output file or a timer
 * releases; nothing here polls.
 */
#include "config.h"

#include <sys/queue.h>
#include <sys/stat.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forkqd.h"

#define LIST_DEFAULT_LIMIT	100
#define LIST_MAX_LIMIT		100000
#define LIST_PAGE		256	/* tasks read from the store at once */
#define OUTPUT_DEFAULT_LIMIT	65536
#define OUTPUT_MAX_LIMIT	(1024 * 1024)
/* Bytes one answer carries: their base64 (4 per 3) fits in a line. */
#define OUTPUT_MAX_READ		(3 * ((FORKQ_MAX_LINE - FORKQ_ANSWER_MARGIN) / 4))
#define PRUNE_BATCH		500

enum pending_kind { PENDING_WAIT, PENDING_OUTPUT, PENDING_PRUNE,
	PENDING_STATS, PENDING_WATCH };

/*
 * Tasks a stats op reads per loop pass (a few ms): with a million tasks
 * kept, reading them at once held every client and task for most of a
 * second.
 */
#define STATS_ROWS_PER_PASS	4096

struct pending {
	enum pending_kind	 kind;
	struct conn		*conn;
	int64_t			 id;
	json_t			*req;		/* output: the request, kept */
	int64_t			 cutoff;	/* prune: finished before */
	int64_t			 pruned;	/* prune: tasks so far */
	struct stats_scan	*scan;		/* stats: the tasks read so far */
	int			 backlog;	/* watch: events to replay */
	ev_timer		 timer;
	TAILQ_ENTRY(pending)	 entry;
	TAILQ_ENTRY(pending)	 turn;		/* stats: in stats_turns */
};

static TAILQ_HEAD(, pending)	pendings = TAILQ_HEAD_INITIALIZER(pendings);

/*
 * The stats ops under way, in the order they take their turns: one step
 * of one of them per loop pass, however many there are, so that a pass
 * reads at most STATS_ROWS_PER_PASS tasks for all of them together.
 */
static TAILQ_HEAD(, pending)	stats_turns =
				    TAILQ_HEAD_INITIALIZER(stats_turns);
static ev_timer			stats_timer;
static int			stats_timer_ready;

struct op {
	const char	*name;
	void		 (*fn)(struct conn *, json_t *);
	/*
	 * Taken on a connection opened before a shutdown began: reads of
	 * the tasks the grace lets end (a client following one), not
	 * changes.
	 */
	int		 in_shutdown;
};

static void	op_submit(struct conn *, json_t *);
static void	op_get(struct conn *, json_t *);
static void	op_list(struct conn *, json_t *);
static void	op_cancel(struct conn *, json_t *);
static void	op_retry(struct conn *, json_t *);
static void	op_wait(struct conn *, json_t *);
static void	op_status(struct conn *, json_t *);
static void	op_watch(struct conn *, json_t *);
static void	op_output(struct conn *, json_t *);
static void	op_prune(struct conn *, json_t *);
static void	op_stats(struct conn *, json_t *);
static void	op_pause(struct conn *, json_t *);
static void	op_resume(struct conn *, json_t *);
static void	op_metrics(struct conn *, json_t *);
static int	output_answer(struct conn *, json_t *, int);
static void	output_no_fd_cb(struct ev_loop *, ev_timer *, int);

/* How often held outputs that found no fd for their file try again. */
#define OUTPUT_NO_FD_RETRY	0.1
static ev_timer	output_no_fd_timer;

static const struct op ops[] = {
	{ "submit", op_submit, 0 },
	{ "get", op_get, 1 },
	{ "list", op_list, 0 },
	{ "cancel", op_cancel, 0 },
	{ "retry", op_retry, 0 },
	{ "wait", op_wait, 1 },
	{ "status", op_status, 1 },
	{ "watch", op_watch, 0 },
	{ "output", op_output, 1 },
	{ "prune", op_prune, 0 },
	{ "stats", op_stats, 0 },
	{ "metrics", op_metrics, 0 },
	{ "pause", op_pause, 0 },
	{ "resume", op_resume, 0 },
	{ "cron_add", cron_op_add, 0 },
	{ "cron_list", cron_op_list, 0 },
	{ "cron_remove", cron_op_remove, 0 },
};

static void
send_bad(struct conn *c, char *cause)
{
	conn_send(c, proto_error("bad_request", "%s", cause));
	free(cause);
}

/* The error of a change made in memory whose commit failed: it is kept. */
static const char change_kept[] = "the database could not commit this change "
    "yet; forkqd keeps it and writes it once the database recovers";

static void
send_shutting_down(struct conn *c)
{
	conn_send(c, proto_error("unavailable", "forkqd is shutting down"));
}

/*
 * In a shutdown, a wait or an output of task id is held only while the
 * task runs: nothing else can settle it before the exit. Else answered
 * unavailable, and 1 returned.
 */
static int
refused_in_shutdown(struct conn *c, int64_t id)
{
	if (!daemon_shutting_down() || task_find(id) != NULL)
		return (0);
	send_shutting_down(c);
	return (1);
}

/* The store could not be read: what (the tasks, the attempts) is named. */
static void
send_read_failed(struct conn *c, const char *what)
{
	conn_send(c, proto_error("unavailable", "could not read %s from the "
	    "database", what));
}

/* Answers {"ok":true, ...o} (o consumed), "ok" first for human readers. */
static void
send_ok(struct conn *c, json_t *o)
{
	json_t	*a = json_pack("{s:b}", "ok", 1);

	json_object_update(a, o);
	json_decref(o);
	conn_send(c, a);
}

void
ops_dispatch(struct conn *c, json_t *req)
{
	const char	*name;
	json_t		*op = json_object_get(req, "op");
	size_t		 i;

	if (op == NULL || !json_is_string(op)) {
		conn_send(c, proto_error("bad_request",
		    "op: required, a string"));
		return;
	}
	name = json_string_value(op);
	for (i = 0; i < sizeof ops / sizeof ops[0]; i++) {
		if (strcmp(name, ops[i].name) != 0)
			continue;
		if (daemon_shutting_down() && !ops[i].in_shutdown) {
			send_shutting_down(c);
			return;
		}
		ops[i].fn(c, req);
		return;
	}
	conn_send(c, proto_error("bad_request", "op: unknown op \"%s\"", name));
}

/*
 * The task id of req's field for c: NULL (answered) when invalid, missing
 * or not c's to see.
 */
static struct task_rec *
visible_task(struct conn *c, json_t *req, const char *field)
{
	struct task_rec	*t;
	char		*cause = NULL;
	int64_t		 id;

	if (proto_get_id(req, field, 1, &id, &cause) == -1) {
		send_bad(c, cause);
		return (NULL);
	}
	if (store_task_find(id, &t) == -1) {
		send_read_failed(c, "the task");
		return (NULL);
	}
	if (t == NULL || (!conn_is_root(c) && t->uid != conn_uid(c))) {
		conn_send(c, proto_error("not_found", "%s: no task %" PRId64,
		    field, id));
		task_rec_free(t);
		return (NULL);
	}
	task_overlay(t);
	return (t);
}

static void
send_task(struct conn *c, struct task_rec *t, const char *extra)
{
	json_t	*o = json_object();

	json_object_set_new(o, "task", proto_task_json(t));
	if (extra != NULL)
		json_object_set_new(o, extra, json_true());
	send_ok(c, o);
}

/*
 * The answer to a write: sent only once it is committed (conn.c). If the
 * commit fails, a change store.c journals (kept) is written when the
 * database recovers ("pending"); anything else, a new task or a submit's
 * debounce, is gone with it ("nothing was done").
 */
static void
send_task_durable(struct conn *c, struct task_rec *t, const char *extra,
    int kept)
{
	json_t	*a = json_object();

	json_object_set_new_nocheck(a, "ok", json_true());
	json_object_set_new_nocheck(a, "task", proto_task_json(t));
	if (extra != NULL)
		json_object_set_new_nocheck(a, extra, json_true());
	conn_send_durable(c, a, kept ? change_kept : "the database could not "
	    "commit the task; nothing was done (see forkqd's log)");
}

/* Refuses a write while the store cannot take one. Returns -1 if so. */
static int
refuse_if_unhealthy(struct conn *c)
{
	char	*cause = NULL;

	if (store_healthy(&cause) == 0)
		return (0);
	conn_send(c, proto_error("unavailable", "the database cannot take "
	    "writes: %s", cause));
	free(cause);
	return (-1);
}

/*
 * Task id as one in a submit's after: there, and uid's unless root. NULL
 * with *code and *cause (caller frees) when not: not_found, or unavailable
 * when the store could not be read.
 */
struct task_rec *
ops_after_task(int64_t id, uid_t uid, int root, const char **code,
    char **cause)
{
	struct task_rec	*dep;

	if (store_task_find(id, &dep) == -1) {
		*code = "unavailable";
		xasprintf(cause, "after: could not read task %lld from the "
		    "database", (long long)id);
		return (NULL);
	}
	if (dep != NULL && (root || dep->uid == uid))
		return (dep);
	task_rec_free(dep);
	*code = "not_found";
	xasprintf(cause, "after: no task %lld", (long long)id);
	return (NULL);
}

/*
 * Adds the task of spec (submit and cron firings). root: may name any
 * task in after. Returns 0 with *id (and *duplicate when unique matched),
 * and with out, the task as it now is (the caller frees it); -1 with *code
 * and *cause (caller frees) when refused.
 */
int
ops_submit_spec(struct task_spec *spec, int root, int64_t *id,
    int *duplicate, struct task_rec **out, const char **code, char **cause)
{
	struct task_rec	*t, *dep;
	int64_t		 failed_dep = 0;
	const char	*failed_state = NULL;
	size_t		 i;

	spec->waiting_on = 0;
	for (i = 0; i < spec->nafter; i++) {
		if ((dep = ops_after_task(spec->after[i], spec->uid, root,
		    code, cause)) == NULL)
			return (-1);
		if ((dep->state == TASK_FAILED || dep->state == TASK_CANCELED) &&
		    failed_dep == 0) {
			failed_dep = dep->id;
			failed_state = task_state_name(dep->state);
		} else if (dep->state != TASK_SUCCEEDED)
			spec->waiting_on++;
		task_rec_free(dep);
	}
	if (store_task_insert(spec, wall_ms(), id, duplicate, &t) == -1 ||
	    (*duplicate && (t = store_task_get(*id)) == NULL)) {
		*code = "unavailable";
		xasprintf(cause, "cannot store the task");
		return (-1);
	}
	if (*duplicate) {
		/* Debounce: a burst moves the one queued task (spec 10). */
		if (spec->debounce_ms > 0 && t->state == TASK_QUEUED &&
		    t->attempt == 0) {
			if (store_task_debounce(t->id, spec,
			    task_spec_run_at(spec, wall_ms())) == -1) {
				task_rec_free(t);
				*code = "unavailable";
				xasprintf(cause, "cannot store the debounce");
				return (-1);
			}
			sched_kick();	/* the timer must follow the new run_at */
			task_rec_free(t);
			if ((t = store_task_get(*id)) == NULL) {
				*code = "unavailable";
				xasprintf(cause, "cannot read the task back");
				return (-1);
			}
		}
		goto done;
	}
	event_emit(EV_LEVEL_INFO, "task.submitted", *id, json_pack(
	    "{s:s, s:s, s:o}", "name", t->name, "queue", t->queue,
	    "argv", json_loads(t->argv_json, 0, NULL)));
	if (failed_dep != 0) {
		char	*why;

		xasprintf(&why, "dependency task %lld ended %s",
		    (long long)failed_dep, failed_state);
		task_finish_final(t, OUTCOME_CANCELED, why);
		free(why);
	}
	sched_kick();
	notify_status_changed();
done:
	if (out != NULL)
		*out = t;
	else
		task_rec_free(t);
	return (0);
}

static void
op_submit(struct conn *c, json_t *req)
{
	struct task_spec	 spec;
	struct task_rec		*t;
	const char		*code;
	char			*cause = NULL;
	int64_t			 id;
	int			 duplicate;

	if (refuse_if_unhealthy(c) == -1)
		return;
	if (proto_parse_submit(req, &spec, &cause) == -1) {
		task_spec_clear(&spec);
		send_bad(c, cause);
		return;
	}
	spec.uid = conn_uid(c);
	spec.gid = conn_gid(c);
	if (ops_submit_spec(&spec, conn_is_root(c), &id, &duplicate, &t,
	    &code, &cause) == -1) {
		task_spec_clear(&spec);
		conn_send(c, proto_error(code, "%s", cause));
		free(cause);
		return;
	}
	task_spec_clear(&spec);
	if (t == NULL) {
		conn_send(c, proto_error("internal", "task %lld vanished",
		    (long long)id));
		return;
	}
	task_overlay(t);
	/* Neither a new task nor a debounce is journaled. */
	send_task_durable(c, t, duplicate ? "duplicate" : NULL, 0);
	task_rec_free(t);
}

static void
op_pause_resume(struct conn *c, json_t *req, int pause)
{
	const char	*queue = NULL;
	char		*cause = NULL;
	int		 rc;

	if (proto_get_string(req, "queue", &queue, &cause) == -1) {
		send_bad(c, cause);
		return;
	}
	if (!conn_is_root(c)) {
		conn_send(c, proto_error("forbidden", "%s is for root or "
		    "forkqd's own user", pause ? "pause" : "resume"));
		return;
	}
	if (queue != NULL && (*queue == '\0' || strcmp(queue, "*") == 0)) {
		conn_send(c, proto_error("bad_request", "queue: not a queue "
		    "name"));
		return;
	}
	/* Taken, it changed nothing: a queue is not let out of "all". */
	if (!pause && queue != NULL && sched_all_paused()) {
		conn_send(c, proto_error("conflict", "queue: all queues are "
		    "paused; resume with no queue resumes them all"));
		return;
	}
	rc = sched_set_paused(queue, pause);
	event_emit(EV_LEVEL_INFO, pause ? "daemon.paused" : "daemon.resumed",
	    0, json_pack("{s:o}", "queue", queue != NULL ? json_string(queue) :
	    json_null()));
	if (rc == -1) {
		conn_send(c, proto_error("unavailable", "%s", change_kept));
		return;
	}
	conn_send_durable(c, json_pack("{s:b}", "ok", 1), change_kept);
}

static void
op_pause(struct conn *c, json_t *req)
{
	op_pause_resume(c, req, 1);
}

static void
op_resume(struct conn *c, json_t *req)
{
	op_pause_resume(c, req, 0);
}

static void
op_get(struct conn *c, json_t *req)
{
	struct task_rec		 *t;
	struct attempt_rec	**as;
	json_t			 *o, *arr, **objs;
	size_t			  n, i, first = 0, size;

	if ((t = visible_task(c, req, "id")) == NULL)
		return;
	if ((as = store_attempts_get(t->id, &n)) == NULL) {
		send_read_failed(c, "the attempts");
		task_rec_free(t);
		return;
	}
	o = proto_task_json(t);
	arr = json_array();
	/* The latest attempts that fit in the answer line; an addition
	 * counts the older ones left out (thousands of retries). */
	objs = xcalloc(n + 1, sizeof *objs);
	size = proto_size(o);
	if (n > 0)
		task_attempt_overlay(as[n - 1]);
	for (i = n; i > 0; i--) {
		objs[i - 1] = proto_attempt_json(as[i - 1]);
		size += proto_size(objs[i - 1]) + 1;
		if (size > PROTO_ANSWER_BUDGET) {
			first = i;
			break;
		}
	}
	for (i = 0; i < n; i++) {
		if (i >= first)
			json_array_append_new(arr, objs[i]);
		else
			json_decref(objs[i]);	/* NULL but the one cut */
		attempt_rec_free(as[i]);
	}
	free(objs);
	free(as);
	json_object_set_new(o, "attempts", arr);
	if (first > 0)
		json_object_set_new(o, "attempts_omitted",
		    json_integer((json_int_t)first));
	send_ok(c, json_pack("{s:o}", "task", o));
	task_rec_free(t);
}

static void
op_list(struct conn *c, json_t *req)
{
	struct task_filter	  f;
	struct task_rec		**ts;
	const char		 *state = NULL;
	char			 *cause = NULL;
	json_t			 *arr;
	int64_t			  limit = LIST_DEFAULT_LIMIT, before = 0;
	size_t			  n, i, size = 0;
	int			  more = 0;

	memset(&f, 0, sizeof f);
	f.state = -1;
	if (proto_get_string(req, "state", &state, &cause) == -1 ||
	    proto_get_string(req, "queue", &f.queue, &cause) == -1 ||
	    proto_get_int(req, "limit", 1, LIST_MAX_LIMIT, &limit,
	    &cause) == -1 ||
	    proto_get_int(req, "before_id", 1, INT64_MAX, &before,
	    &cause) == -1) {
		send_bad(c, cause);
		return;
	}
	if (state != NULL && (f.state = task_state_from_name(state)) == -1) {
		conn_send(c, proto_error("bad_request", "state: unknown state "
		    "\"%s\"", state));
		return;
	}
	f.before_id = before;
	f.all_users = conn_is_root(c);
	f.uid = conn_uid(c);
	arr = json_array();
	/*
	 * Fewer than limit when more would not fit in one line, and "more":
	 * the client asks again before the last id it got. Read a page at a
	 * time: a line holds some 1,700 tasks, and reading all of a limit
	 * of 100,000 took a tenth of a second.
	 */
	while (!more && limit > 0) {
		f.limit = (int)(limit < LIST_PAGE ? limit : LIST_PAGE);
		if ((ts = store_task_list(&f, &n)) == NULL) {
			json_decref(arr);
			send_read_failed(c, "the tasks");
			return;
		}
		for (i = 0; i < n && !more; i++) {
			task_overlay(ts[i]);
			more = proto_append_within(arr,
			    proto_task_json(ts[i]), &size) == -1;
			f.before_id = ts[i]->id;
		}
		for (i = 0; i < n; i++)
			task_rec_free(ts[i]);
		free(ts);
		if (n < (size_t)f.limit)
			break;		/* no more to read */
		limit -= (int64_t)n;
	}
	send_ok(c, json_pack("{s:o, s:b}", "tasks", arr, "more", more));
}

static void
op_cancel(struct conn *c, json_t *req)
{
	struct task_rec	*t;
	struct task	*running;

	if (refuse_if_unhealthy(c) == -1 ||
	    (t = visible_task(c, req, "id")) == NULL)
		return;
	switch (t->state) {
	case TASK_QUEUED:
		task_finish_final(t, OUTCOME_CANCELED, NULL);
		break;
	case TASK_RUNNING:
		if ((running = task_find(t->id)) != NULL)
			task_stop(running, STOP_CANCEL);
		break;
	default:
		conn_send(c, proto_error("conflict", "task %" PRId64 " is "
		    "already %s", t->id, task_state_name(t->state)));
		task_rec_free(t);
		return;
	}
	send_task_durable(c, t, NULL, 1);
	task_rec_free(t);
}

static void
op_retry(struct conn *c, json_t *req)
{
	struct task_rec	*t;
	int64_t		 other;

	if (refuse_if_unhealthy(c) == -1 ||
	    (t = visible_task(c, req, "id")) == NULL)
		return;
	if (t->state != TASK_FAILED && t->state != TASK_CANCELED) {
		conn_send(c, proto_error("conflict", "task %" PRId64 " is %s: "
		    "only failed or canceled tasks can be retried", t->id,
		    task_state_name(t->state)));
		task_rec_free(t);
		return;
	}
	/*
	 * Back to queued, it would hold its unique key again: not while
	 * another task holds it (the store's index would refuse the write,
	 * and with it the whole pass).
	 */
	if (t->unique != NULL && (other = store_unique_find(t->unique,
	    t->uid)) != 0) {
		if (other == -1)
			conn_send(c, proto_error("unavailable", "task %" PRId64
			    ": its unique key could not be read", t->id));
		else
			conn_send(c, proto_error("conflict", "task %" PRId64
			    ": its unique key is held by task %" PRId64 ", "
			    "which is queued or running", t->id, other));
		task_rec_free(t);
		return;
	}
	if (task_retry(t) == -1) {
		conn_send(c, proto_error("unavailable", "task %" PRId64 ": its "
		    "dependencies could not be read", t->id));
		task_rec_free(t);
		return;
	}
	send_task_durable(c, t, NULL, 1);
	task_rec_free(t);
}

static void
pending_free(struct pending *p)
{
	TAILQ_REMOVE(&pendings, p, entry);
	if (p->kind == PENDING_STATS)
		TAILQ_REMOVE(&stats_turns, p, turn);
	ev_timer_stop(loop, &p->timer);
	json_decref(p->req);
	store_stats_free(p->scan);
	free(p);
}

/* Answers the pending wait p from the store and releases its conn. */
static void
wait_answer(struct pending *p, int timed_out)
{
	struct task_rec	*t;
	struct conn	*c = p->conn;

	if (store_task_find(p->id, &t) == -1)
		send_read_failed(c, "the task");
	else if (t == NULL)
		conn_send(c, proto_error("not_found", "id: task %" PRId64
		    " is gone", p->id));
	else {
		task_overlay(t);
		send_task(c, t, timed_out ? "timed_out" : NULL);
		task_rec_free(t);
	}
	pending_free(p);
	conn_done(c);
}

static void
wait_timer_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	wait_answer(w->data, 1);
}

static struct pending *
pending_new(struct conn *c, enum pending_kind kind, int64_t id,
    int64_t timeout_ms, void (*cb)(struct ev_loop *, ev_timer *, int))
{
	struct pending	*p;

	p = xcalloc(1, sizeof *p);
	p->kind = kind;
	p->conn = c;
	p->id = id;
	ev_init(&p->timer, cb);
	p->timer.data = p;
	if (timeout_ms > 0) {
		ev_timer_set(&p->timer, (double)timeout_ms / 1000.0, 0.);
		ev_timer_start(loop, &p->timer);
	}
	TAILQ_INSERT_TAIL(&pendings, p, entry);
	conn_hold(c);
	return (p);
}

static void
op_wait(struct conn *c, json_t *req)
{
	struct task_rec	*t;
	char		*cause = NULL;
	int64_t		 timeout = 0;
	int		 has_timeout;

	/* null is as good as absent: wait as long as it takes. */
	if ((has_timeout = proto_get_int(req, "timeout_ms", 0,
	    FORKQ_MAX_DURATION_MS, &timeout, &cause)) == -1) {
		send_bad(c, cause);
		return;
	}
	if ((t = visible_task(c, req, "id")) == NULL)
		return;
	if (t->state == TASK_SUCCEEDED || t->state == TASK_FAILED ||
	    t->state == TASK_CANCELED)
		send_task(c, t, NULL);
	else if (has_timeout && timeout == 0)
		send_task(c, t, "timed_out");
	else if (!refused_in_shutdown(c, t->id))
		pending_new(c, PENDING_WAIT, t->id, timeout, wait_timer_cb);
	task_rec_free(t);
}

/* A task became final: answer whoever waits on it. */
void
ops_task_final(int64_t id)
{
	struct pending	*p, *next;

	TAILQ_FOREACH_SAFE(p, &pendings, entry, next) {
		if (p->kind == PENDING_WAIT && p->id == id)
			wait_answer(p, 0);
	}
	/* A task that ends before any attempt has no output to wait for. */
	ops_output_wake(id);
}

static void
op_status(struct conn *c, json_t *req)
{
	int64_t		 counts[TASK_NSTATES];
	json_t		*cj, *pq, *a;
	int		 i, all, held;

	/*
	 * The counts on disk, at once; but after answers of c that wait for
	 * the disk (a pipelined submit, say), the counts that include them,
	 * sent after them.
	 */
	held = conn_has_held(c);
	if (held)
		store_counts_live(counts);
	else
		store_counts(counts);
	pq = sched_paused_json(&all);
	cj = json_object();
	for (i = 0; i < TASK_NSTATES; i++)
		json_object_set_new(cj, task_state_name(i),
		    json_integer(counts[i]));
	a = json_pack("{s:b, s:{s:s, s:I, s:I, s:i, s:o, s:I, s:s, s:b, s:o,"
	    " s:o}}", "ok", 1, "status",
	    "version", FORKQ_VERSION,
	    "pid", (json_int_t)getpid(),
	    "uptime_ms", (json_int_t)(mono_ms() - started_mono),
	    "workers", config.workers,
	    "counts", cj,
	    "running", (json_int_t)task_running_count(),
	    "containment", cgroup_mode(),
	    "paused", all,
	    "paused_queues", pq,
	    "held", sched_held_json());
	if (held)
		conn_send(c, a);
	else
		conn_send_now(c, a);
}

/* Answers a watch: ok, the backlog, then the events that follow. */
static void
watch_begin(struct conn *c, int64_t task, int backlog, int follow)
{
	send_ok(c, json_object());
	conn_set_watching(c);
	event_watch(c, task, backlog, follow);
}

/*
 * A deferred watch (op_watch, never one that follows), after the commit
 * that let its events out.
 */
static void
watch_step_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	struct pending	*p = w->data;
	struct conn	*c = p->conn;

	watch_begin(c, p->id, p->backlog, 0);
	pending_free(p);
	conn_done(c);
}

static void
op_watch(struct conn *c, json_t *req)
{
	char		*cause = NULL;
	int64_t		 task = 0, backlog = 0;
	int		 follow = 1;
	struct task_rec	*t;
	struct pending	*p;

	if (proto_get_id(req, "task", 0, &task, &cause) == -1 ||
	    proto_get_int(req, "backlog", 0, INT32_MAX, &backlog,
	    &cause) == -1 ||
	    proto_get_bool(req, "follow", &follow, &cause) == -1) {
		send_bad(c, cause);
		return;
	}
	if (task > 0) {
		if ((t = visible_task(c, req, "task")) == NULL)
			return;
		task_rec_free(t);
	}
	/*
	 * Events of this pass wait for its commit (event.c): a backlog read
	 * now would miss them, a submit pipelined just before on this
	 * connection among them. Without follow, it is read after the
	 * commit, next pass. A watch that follows is registered at once and
	 * gets them as they go out: deferred, it would miss all but the
	 * newest of what goes out meanwhile.
	 */
	if (backlog > 0 && !follow && event_any_held()) {
		p = pending_new(c, PENDING_WATCH, task, 0, watch_step_cb);
		p->backlog = (int)backlog;
		ev_timer_set(&p->timer, 0., 0.);
		ev_timer_start(loop, &p->timer);
		return;
	}
	watch_begin(c, task, (int)backlog, follow);
}

static char *
base64_encode(const unsigned char *in, size_t len)
{
	static const char	 tbl[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	char			*out, *p;
	size_t			 i;
	uint32_t		 v;

	out = p = xmalloc((len + 2) / 3 * 4 + 1);
	for (i = 0; i + 2 < len; i += 3) {
		v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		*p++ = tbl[v >> 18];
		*p++ = tbl[(v >> 12) & 63];
		*p++ = tbl[(v >> 6) & 63];
		*p++ = tbl[v & 63];
	}
	if (i < len) {
		v = (uint32_t)in[i] << 16;
		if (i + 1 < len)
			v |= (uint32_t)in[i + 1] << 8;
		*p++ = tbl[v >> 18];
		*p++ = tbl[(v >> 12) & 63];
		*p++ = i + 1 < len ? tbl[(v >> 6) & 63] : '=';
		*p++ = '=';
	}
	*p = '\0';
	return (out);
}

static void
output_timer_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	struct pending	*p = w->data;
	struct conn	*c = p->conn;

	output_answer(c, p->req, 0);
	pending_free(p);
	conn_done(c);
}

/*
 * Task id wrote output, or an attempt of it ended (-1: any task, for a
 * retry): outputs held on it answer if they now have something to say.
 */
void
ops_output_wake(int64_t id)
{
	struct pending	*p, *next;
	struct conn	*c;

	TAILQ_FOREACH_SAFE(p, &pendings, entry, next) {
		if (p->kind != PENDING_OUTPUT || (id != -1 && p->id != id))
			continue;
		c = p->conn;
		if (output_answer(c, p->req, 1)) {
			pending_free(p);
			conn_done(c);
		}
	}
}

/*
 * A held output found no fd for its file: nothing else would wake it when
 * fds come back (the task may have written all it will for a while).
 */
static void
output_no_fd_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	ops_output_wake(-1);
}

/*
 * Answers an output request, or with may_hold, returns 0 without answering
 * when there is nothing new yet and the attempt still runs. Returns 1 when
 * answered (or refused).
 */
static int
output_answer(struct conn *c, json_t *req, int may_hold)
{
	struct task_rec	*t;
	const char	*stream = "stdout";
	char		*cause = NULL, path[PATH_MAX], *b64;
	unsigned char	*buf;
	int64_t		 attempt = 0, offset = 0, limit = OUTPUT_DEFAULT_LIMIT;
	int64_t		 wait_ms = 0;
	struct stat	 st;
	ssize_t		 n = 0;
	int		 fd, running, is_err, never, err;

	if (proto_get_string(req, "stream", &stream, &cause) == -1 ||
	    proto_get_int(req, "attempt", 1, INT32_MAX, &attempt,
	    &cause) == -1 ||
	    proto_get_int(req, "offset", 0, INT64_MAX, &offset, &cause) == -1 ||
	    proto_get_int(req, "limit", 1, OUTPUT_MAX_LIMIT, &limit,
	    &cause) == -1 ||
	    proto_get_int(req, "wait_ms", 0, FORKQ_MAX_DURATION_MS, &wait_ms,
	    &cause) == -1) {
		send_bad(c, cause);
		return (1);
	}
	if (strcmp(stream, "stdout") != 0 && strcmp(stream, "stderr") != 0) {
		conn_send(c, proto_error("bad_request", "stream: must be "
		    "\"stdout\" or \"stderr\""));
		return (1);
	}
	is_err = strcmp(stream, "stderr") == 0;
	if ((t = visible_task(c, req, "id")) == NULL)
		return (1);
	if (attempt == 0)
		attempt = t->attempt;
	if (attempt > t->attempt) {
		conn_send(c, proto_error("not_found", "attempt: task %" PRId64
		    " has no attempt %" PRId64, t->id, attempt));
		task_rec_free(t);
		return (1);
	}
	running = attempt > 0 && task_attempt_running(t->id, (int)attempt);
	/* limit may be 1 MiB, but the answer is a line of at most that. */
	if (limit > OUTPUT_MAX_READ)
		limit = OUTPUT_MAX_READ;
	/* Ended without an attempt (canceled while queued): nothing comes. */
	never = attempt == 0 && task_state_final(t->state);
	buf = xmalloc(limit);
	fd = -1;
	if (attempt > 0) {
		task_output_path(t->id, (int)attempt, is_err, path,
		    sizeof path);
		fd = open(path, O_RDONLY | O_CLOEXEC);
	}
	/*
	 * No file: the stream wrote nothing (yet). Any other failure (out of
	 * file descriptors) is no answer about the output: "eof" with no
	 * bytes would tell the client there was none.
	 */
	if ((attempt > 0 && fd == -1 && errno != ENOENT) ||
	    (fd != -1 && (n = pread(fd, buf, limit, offset)) < 0)) {
		err = errno;
		if (fd != -1)
			close(fd);
		free(buf);
		/* Held, it tries again a little later. */
		if ((err == EMFILE || err == ENFILE) && may_hold &&
		    wait_ms > 0 && running) {
			/* Set, not initialised: it may be pending still. */
			if (!ev_is_active(&output_no_fd_timer)) {
				ev_set_cb(&output_no_fd_timer,
				    output_no_fd_cb);
				ev_timer_set(&output_no_fd_timer,
				    OUTPUT_NO_FD_RETRY, 0.);
				ev_timer_start(loop, &output_no_fd_timer);
			}
			task_rec_free(t);
			return (0);
		}
		conn_send(c, proto_error("unavailable", "cannot read the "
		    "output of task %" PRId64 ": %s", t->id, strerror(err)));
		task_rec_free(t);
		return (1);
	}
	if (fd != -1) {
		if (fstat(fd, &st) == -1)
			st.st_size = offset + n;
		close(fd);
	} else
		st.st_size = 0;
	if (n == 0 && may_hold && wait_ms > 0 && (running ||
	    (attempt == 0 && !never))) {
		free(buf);
		task_rec_free(t);
		return (0);
	}
	b64 = base64_encode(buf, n);
	free(buf);
	send_ok(c, json_pack("{s:s, s:I, s:b, s:i}", "data_b64", b64,
	    "offset", (json_int_t)(offset + n), "eof", never || (!running &&
	    attempt > 0 && offset + n >= st.st_size),
	    "attempt", (int)attempt));
	free(b64);
	task_rec_free(t);
	return (1);
}

static void
op_output(struct conn *c, json_t *req)
{
	struct pending	*p;
	int64_t		 wait_ms = 0, id = 0;
	char		*cause = NULL;

	if (output_answer(c, req, 1))
		return;
	/* Nothing yet: hold until output, the attempt's end or wait_ms. */
	proto_get_int(req, "wait_ms", 0, FORKQ_MAX_DURATION_MS, &wait_ms,
	    &cause);
	proto_get_id(req, "id", 1, &id, &cause);
	free(cause);
	if (refused_in_shutdown(c, id))
		return;
	p = pending_new(c, PENDING_OUTPUT, id, wait_ms, output_timer_cb);
	p->req = json_incref(req);
}

/* Released pending ops of a connection that went away. */
void
ops_conn_gone(struct conn *c)
{
	struct pending	*p, *next;

	TAILQ_FOREACH_SAFE(p, &pendings, entry, next) {
		if (p->conn == c)
			pending_free(p);
	}
}

/*
 * forkqd is stopping. At its start (final 0), a held request that cannot
 * be settled before the exit is answered unavailable: all of them but a
 * wait or an output of a running task, which the shutdown grace may let
 * end (spec 4.6), and whose client would otherwise be told "unavailable"
 * of a task that then succeeds. At the exit (final 1), the rest are.
 */
void
ops_shutdown(int final)
{
	struct pending	*p, *next;
	struct conn	*c;

	TAILQ_FOREACH_SAFE(p, &pendings, entry, next) {
		if (!final && (p->kind == PENDING_WAIT ||
		    p->kind == PENDING_OUTPUT) && task_find(p->id) != NULL)
			continue;
		c = p->conn;
		send_shutting_down(c);
		pending_free(p);
		conn_done(c);
	}
	ev_timer_stop(loop, &stats_timer);
}

/* Tasks pruned in this pass: their output goes once it is committed. */
static int64_t	*pruned_ids;
static size_t	 npruned;

/* Deletes one batch of tasks finished before cutoff; returns how many. */
int64_t
ops_prune_batch(int64_t cutoff)
{
	int64_t	*ids, n;
	size_t	 nids, i;
	char	*cause = NULL;

	/*
	 * Not while the store is failing: the commit of its retries would end
	 * this transaction outside the pass that settles the pruned output.
	 */
	if (store_healthy(&cause) == -1) {
		free(cause);
		return (-1);
	}
	n = store_prune(cutoff, PRUNE_BATCH, &ids, &nids);
	for (i = 0; i < nids; i++)
		trash_hold(ids[i]);	/* a crash now must not leave it */
	if (nids > 0) {
		pruned_ids = xreallocarray(pruned_ids, npruned + nids,
		    sizeof *pruned_ids);
		memcpy(pruned_ids + npruned, ids, nids * sizeof *ids);
		npruned += nids;
	}
	free(ids);
	return (n);
}

/*
 * The pass's commit settled: the output of the tasks it pruned goes now
 * that their rows are gone for good; if it was rolled back, both stay.
 */
void
ops_commit_settled(int committed)
{
	size_t	i;

	for (i = 0; i < npruned; i++) {
		if (committed)
			trash_put(pruned_ids[i]);
		else
			trash_unhold(pruned_ids[i]);
	}
	free(pruned_ids);
	pruned_ids = NULL;
	npruned = 0;
}

/*
 * One batch of a prune op per loop pass, each committed by its pass: one
 * transaction for a million tasks held the loop for minutes (its WAL grew
 * past 200 MB, and every page read searched it), while heartbeats, exits
 * and clients waited.
 */
static void
prune_step_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	struct pending	*p = w->data;
	struct conn	*c = p->conn;
	int64_t		 n;

	if ((n = ops_prune_batch(p->cutoff)) == PRUNE_BATCH) {
		p->pruned += n;
		/* The next, after this pass's commit. */
		ev_timer_set(w, 0., 0.);
		ev_timer_start(loop, w);
		return;
	}
	if (n == -1)	/* batches committed before stay pruned */
		conn_send(c, proto_error("unavailable", "prune failed in the "
		    "store"));
	else
		send_ok(c, json_pack("{s:I}", "pruned",
		    (json_int_t)(p->pruned + n)));
	pending_free(p);
	conn_done(c);
}

static void
op_prune(struct conn *c, json_t *req)
{
	struct pending	*p;
	char		*cause = NULL;
	int64_t		 older = 0;
	int		 rc;

	/* A null must not read as 0, "everything finished". */
	if ((rc = proto_get_int(req, "older_than_ms", 0,
	    FORKQ_MAX_DURATION_MS, &older, &cause)) == -1) {
		send_bad(c, cause);
		return;
	}
	if (rc == 0) {
		conn_send(c, proto_error("bad_request",
		    "older_than_ms: required"));
		return;
	}
	if (!conn_is_root(c)) {
		conn_send(c, proto_error("forbidden",
		    "prune is for root or forkqd's own user"));
		return;
	}
	p = pending_new(c, PENDING_PRUNE, 0, 0, prune_step_cb);
	p->cutoff = wall_ms() - older;
	ev_timer_set(&p->timer, 0., 0.);
	ev_timer_start(loop, &p->timer);
}

static json_t *
ms_or_null(int64_t v)
{
	return (v == UNSET ? json_null() : json_integer(v));
}

/* Sends the stats answer of ns[0..n-1], and frees ns. */
static void
send_stats(struct conn *c, struct name_stats *ns, size_t n)
{
	json_t	*arr;
	int64_t	 finished;
	size_t	 i, size = 0;
	int	 more = 0;

	arr = json_array();
	for (i = 0; i < n; i++) {
		finished = ns[i].succeeded + ns[i].failed + ns[i].canceled;
		if (!more && proto_append_within(arr, json_pack("{s:s, s:I, s:I, s:I,"
		    " s:I, s:f, s:f, s:o, s:o, s:o}",
		    "name", ns[i].name,
		    "tasks", (json_int_t)ns[i].tasks,
		    "succeeded", (json_int_t)ns[i].succeeded,
		    "failed", (json_int_t)ns[i].failed,
		    "canceled", (json_int_t)ns[i].canceled,
		    "success_rate", finished > 0 ?
		    (double)ns[i].succeeded / (double)finished : 0.0,
		    "mean_attempts", ns[i].mean_attempts,
		    "p50_ms", ms_or_null(ns[i].p50_ms),
		    "p95_ms", ms_or_null(ns[i].p95_ms),
		    "max_ms", ms_or_null(ns[i].max_ms)), &size) == -1)
			more = 1;
		free(ns[i].name);
	}
	free(ns);
	send_ok(c, json_pack("{s:o, s:b}", "stats", arr, "more", more));
}

/* The next pass gives the next stats op its turn, if one waits. */
static void
stats_next_turn(void)
{
	if (!TAILQ_EMPTY(&stats_turns) && !ev_is_active(&stats_timer)) {
		ev_timer_set(&stats_timer, 0., 0.);
		ev_timer_start(loop, &stats_timer);
	}
}

/*
 * One more part of the tasks of the stats op whose turn it is; its answer
 * once all are read, else it goes to the back of the line.
 */
static void
stats_turn_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	struct pending		*p;
	struct conn		*c;
	struct name_stats	*ns;
	size_t			 n;
	int			 rc;

	if ((p = TAILQ_FIRST(&stats_turns)) == NULL)
		return;
	c = p->conn;
	if ((rc = store_stats_step(p->scan, STATS_ROWS_PER_PASS)) == 1) {
		TAILQ_REMOVE(&stats_turns, p, turn);
		TAILQ_INSERT_TAIL(&stats_turns, p, turn);
		stats_next_turn();
		return;
	}
	if (rc == -1)
		/* Figures of part of the tasks would pass for all of them. */
		send_read_failed(c, "the tasks");
	else {
		ns = store_stats_end(p->scan, &n);
		p->scan = NULL;
		send_stats(c, ns, n);
	}
	pending_free(p);
	conn_done(c);
	stats_next_turn();
}

static void
op_stats(struct conn *c, json_t *req)
{
	struct pending		*p;
	const char		*name = NULL;
	char			*cause = NULL;
	int64_t			 since = 0;

	if (proto_get_int(req, "since_ms", 0, FORKQ_MAX_DURATION_MS, &since,
	    &cause) == -1 ||
	    proto_get_string(req, "name", &name, &cause) == -1) {
		send_bad(c, cause);
		return;
	}
	p = pending_new(c, PENDING_STATS, 0, 0, NULL);
	p->scan = store_stats_begin(since > 0 ? wall_ms() - since : 0, name,
	    conn_uid(c), conn_is_root(c));
	if (!stats_timer_ready) {
		ev_init(&stats_timer, stats_turn_cb);
		stats_timer_ready = 1;
	}
	TAILQ_INSERT_TAIL(&stats_turns, p, turn);
	stats_next_turn();
}

/* Bucket bounds of forkq_attempt_duration_seconds, in ms. */
static const int64_t duration_buckets[] = {
	10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
	300000, 900000, 3600000, 14400000
};
#define NBUCKETS	(sizeof duration_buckets / sizeof duration_buckets[0])

/* The Prometheus text exposition format (version 0.0.4). */
static void
op_metrics(struct conn *c, json_t *req)
{
	int64_t		 states[TASK_NSTATES], finals[TASK_NSTATES];
	int64_t		 outcomes[OUTCOME_COUNT];
	int64_t		 cum[NBUCKETS], count, sum_ms;
	char		*text = NULL;
	size_t		 len = 0, i;
	FILE		*f;

	/* Zeros for counters that could not be read would read as a reset. */
	if (store_attempt_metrics(outcomes, duration_buckets, NBUCKETS, cum,
	    &count, &sum_ms) == -1) {
		send_read_failed(c, "the attempts");
		return;
	}
	if ((f = open_memstream(&text, &len)) == NULL) {
		conn_send(c, proto_error("internal", "open_memstream failed"));
		return;
	}
	store_counts(states);
	store_finals_reached(finals);
	fprintf(f, "# HELP forkq_tasks_total Tasks that reached a final "
	    "state, by state (those forkqd knew of at its first scrape, "
	    "and each since, retried or pruned or not).\n"
	    "# TYPE forkq_tasks_total counter\n");
	for (i = TASK_SUCCEEDED; i < TASK_NSTATES; i++)
		fprintf(f, "forkq_tasks_total{state=\"%s\"} %lld\n",
		    task_state_name(i), (long long)finals[i]);
	fprintf(f, "# HELP forkq_attempts_total Ended attempts by outcome "
	    "(those forkqd knew of at its first scrape, and each since, "
	    "pruned or not).\n"
	    "# TYPE forkq_attempts_total counter\n");
	for (i = OUTCOME_SUCCESS; i < OUTCOME_COUNT; i++)
		fprintf(f, "forkq_attempts_total{outcome=\"%s\"} %lld\n",
		    outcome_name(i), (long long)outcomes[i]);
	fprintf(f, "# HELP forkq_tasks_queued Tasks waiting to start.\n"
	    "# TYPE forkq_tasks_queued gauge\n"
	    "forkq_tasks_queued %lld\n"
	    "# HELP forkq_tasks_running Tasks running now.\n"
	    "# TYPE forkq_tasks_running gauge\n"
	    "forkq_tasks_running %zu\n",
	    (long long)states[TASK_QUEUED], task_running_count());
	fprintf(f, "# HELP forkq_attempt_duration_seconds Wall time of ended "
	    "attempts.\n"
	    "# TYPE forkq_attempt_duration_seconds histogram\n");
	for (i = 0; i < NBUCKETS; i++)
		fprintf(f, "forkq_attempt_duration_seconds_bucket{le=\"%g\"} "
		    "%lld\n", (double)duration_buckets[i] / 1000.0,
		    (long long)cum[i]);
	fprintf(f, "forkq_attempt_duration_seconds_bucket{le=\"+Inf\"} "
	    "%lld\n"
	    "forkq_attempt_duration_seconds_sum %.3f\n"
	    "forkq_attempt_duration_seconds_count %lld\n",
	    (long long)count, (double)sum_ms / 1000.0, (long long)count);
	fclose(f);
	send_ok(c, json_pack("{s:s}", "text", text));
	free(text);
}
