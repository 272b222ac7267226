/*
 * sched.c: which queued task starts next, and when. Queued tasks live in
 * the store, not in memory: a dispatch asks the store for the first due task
 * (priority, then run_at, then id) while a worker slot is free. When none is
 * due, one timer sleeps until the earliest run_at. Dispatch runs once per
 * loop pass (sched_kick marks it wanted), so a burst of submits or exits
 * costs one query per started task, not one per event.
 *
 * It also owns what holds starting back (spec 10): paused queues (kept in
 * the store), per-queue limits (--queue), and the load and memory bounds
 * (--max-load, --min-free-mem), read from /proc only when a task is due.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "forkqd.h"

/*
 * run_at is wall-clock time, so the wait for it is too (a periodic, in
 * libev's absolute mode): a relative timer counts on the monotonic clock,
 * and after the wall clock was set forward, or the host resumed from a
 * suspend, a due task waited for as long as it had been due to wait.
 */
static ev_periodic sched_timer;		/* earliest future run_at */
static ev_timer	 hold_timer;		/* tries again while held, or
					   after a failed read */
static int	 sched_wanted;
static char	**paused;		/* queue names, "*" = all */
static size_t	 npaused;
static char	 held[256];		/* why starting is held, "" = it is not */

/* Most tasks started in one loop pass, so clients and reaping keep flowing. */
#define SCHED_MAX_STARTS_PER_PASS	64
/*
 * Most starts behind one commit (task_start_prepared): a crash of forkqd
 * between that commit and their spawns costs each of them an attempt,
 * recorded lost, so the batch stays short.
 */
#define SCHED_STARTS_PER_COMMIT		8
#define HOLD_RECHECK			5.0	/* s between readings while held */

static void
sched_timer_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	sched_kick();
}

static void
sched_due_cb(struct ev_loop *l, ev_periodic *w, int revents)
{
	sched_kick();
}

void
sched_init(void)
{
	ev_periodic_init(&sched_timer, sched_due_cb, 0., 0., NULL);
	ev_init(&hold_timer, sched_timer_cb);
	hold_timer.repeat = HOLD_RECHECK;
	/* Running a paused queue is not a fallback: no start without it. */
	if (store_paused(&paused, &npaused) == -1)
		fatalx("cannot read the paused queues from the database");
	sched_kick();
}

void
sched_kick(void)
{
	sched_wanted = 1;
}

static int
is_paused(const char *queue)
{
	size_t	i;

	for (i = 0; i < npaused; i++) {
		if (strcmp(paused[i], queue) == 0)
			return (1);
	}
	return (0);
}

/*
 * The paused list after store_set_paused(queue, pause) did the same to the
 * table (or journaled it, to do once the database recovers): kept in memory
 * rather than read again, which could fail after the write went through.
 * In the table's order (by name, bytewise).
 */
static void
paused_apply(const char *queue, int pause)
{
	size_t	i, j;

	if (pause) {
		if (is_paused(queue))
			return;
		paused = xreallocarray(paused, npaused + 1, sizeof *paused);
		for (i = npaused; i > 0 && strcmp(paused[i - 1], queue) > 0; i--)
			paused[i] = paused[i - 1];
		paused[i] = xstrdup(queue);
		npaused++;
		return;
	}
	for (i = j = 0; i < npaused; i++) {
		if (strcmp(queue, "*") == 0 || strcmp(paused[i], queue) == 0)
			free(paused[i]);
		else
			paused[j++] = paused[i];
	}
	npaused = j;
}

/*
 * pause / resume: queue NULL means all. Takes effect at once; returns -1
 * when the store could not take it yet (it keeps it and writes it later).
 */
int
sched_set_paused(const char *queue, int pause)
{
	int	rc;

	if (queue == NULL)
		queue = "*";
	rc = store_set_paused(queue, pause);
	paused_apply(queue, pause);
	sched_kick();
	return (rc);
}

/* Are all queues paused (pause with no queue)? */
int
sched_all_paused(void)
{
	return (is_paused("*"));
}

/* status: "paused" is set in *all; the array lists the named queues. */
json_t *
sched_paused_json(int *all)
{
	json_t	*a = json_array();
	size_t	 i;

	*all = is_paused("*");
	for (i = 0; i < npaused; i++) {
		if (strcmp(paused[i], "*") != 0)
			json_array_append_new(a, json_string(paused[i]));
	}
	return (a);
}

json_t *
sched_held_json(void)
{
	return (held[0] != '\0' ? json_string(held) : json_null());
}

static double
load_bound_now(void)
{
	struct tm	tm;
	time_t		now = time(NULL);
	double		bound = -1;
	size_t		i;
	int		m;

	localtime_r(&now, &tm);
	m = tm.tm_hour * 60 + tm.tm_min;
	for (i = 0; i < config.nload_bounds; i++) {
		const struct load_bound	*b = &config.load_bounds[i];

		if (b->from_min < 0) {
			if (bound < 0)
				bound = b->load;
		} else if (b->from_min <= b->to_min ?
		    (m >= b->from_min && m < b->to_min) :
		    (m >= b->from_min || m < b->to_min))
			return (b->load);	/* a window wins */
	}
	return (bound);
}

/* Fills held[] when a bound holds starting back; returns whether one does. */
static int
sched_check_holds(void)
{
	double		 bound, load;
	long		 cpus;
	long long	 avail_kb;
	char		 line[256];
	FILE		*f;

	held[0] = '\0';
	if ((bound = load_bound_now()) >= 0 &&
	    (f = fopen("/proc/loadavg", "re")) != NULL) {
		cpus = sysconf(_SC_NPROCESSORS_ONLN);
		if (fscanf(f, "%lf", &load) == 1 && cpus > 0 &&
		    load / cpus > bound)
			snprintf(held, sizeof held, "the 1-minute load per CPU "
			    "is %.3g, above the bound of %g (--max-load)",
			    load / cpus, bound);
		fclose(f);
		if (held[0] != '\0')
			return (1);
	}
	if (config.min_free_mem > 0 &&
	    (f = fopen("/proc/meminfo", "re")) != NULL) {
		while (fgets(line, sizeof line, f) != NULL) {
			if (sscanf(line, "MemAvailable: %lld kB",
			    &avail_kb) != 1)
				continue;
			if (avail_kb * 1024 < config.min_free_mem)
				snprintf(held, sizeof held, "MemAvailable is "
				    "%lld MiB, below the bound of %lld MiB "
				    "(--min-free-mem)", avail_kb / 1024,
				    (long long)(config.min_free_mem >> 20));
			break;
		}
		fclose(f);
	}
	return (held[0] != '\0');
}

/*
 * Queues that may not start a task now, paused or at their limit, into out
 * (room for npaused + config.nqueue_limits). Returns how many.
 */
static size_t
sched_closed_queues(const char **out)
{
	size_t	n = 0, i;

	for (i = 0; i < npaused; i++)
		out[n++] = paused[i];
	for (i = 0; i < config.nqueue_limits; i++) {
		if (task_running_in_queue(config.queue_limits[i].name) >=
		    (size_t)config.queue_limits[i].limit)
			out[n++] = config.queue_limits[i].name;
	}
	return (n);
}

/* Starts due tasks while slots are free; run from the loop's prepare hook. */
void
sched_dispatch(void)
{
	struct task_rec	*t;
	const char	**closed = NULL;
	char		*cause = NULL;
	int64_t		 next, now;
	size_t		 nclosed;
	uid_t		 uid;
	int		 started = 0, rc;

	if (!sched_wanted || daemon_shutting_down())
		return;
	/*
	 * A new task's pipes would take the fds that output of running
	 * ones waits for: starts wait (capture.c's retries wake the loop).
	 */
	if (capture_starving()) {
		snprintf(held, sizeof held, "output of a running task waits "
		    "for a file descriptor");
		return;
	}
	/* Start nothing the store could not record. */
	if (store_healthy(&cause) == -1) {
		free(cause);
		return;
	}
	sched_wanted = 0;
	ev_periodic_stop(loop, &sched_timer);
	ev_timer_stop(loop, &hold_timer);
	held[0] = '\0';
	now = wall_ms();
	next = store_first_run_at();
	if (store_take_dispatch_failed())
		goto retry;
	/* Nothing due at all: skip the dispatch queries. */
	if (next == UNSET || next > now)
		goto sleep;
	/* Starts are prepared, then committed together and spawned. */
	closed = xreallocarray(NULL, npaused + config.nqueue_limits + 1,
	    sizeof *closed);
	while (task_running_count() < (size_t)config.workers &&
	    !is_paused("*")) {
		if (started == SCHED_MAX_STARTS_PER_PASS) {
			free(closed);
			task_start_prepared();
			sched_wanted = 1;	/* go on next pass, at once */
			daemon_pass_again();
			return;
		}
		nclosed = sched_closed_queues(closed);
		if ((t = store_next_due(now, closed, nclosed)) == NULL)
			break;
		if ((config.nload_bounds > 0 || config.min_free_mem > 0) &&
		    sched_check_holds()) {
			free(closed);
			task_rec_free(t);
			task_start_prepared();
			ev_timer_again(loop, &hold_timer);
			return;
		}
		uid = t->uid;
		if ((rc = task_prepare(t)) == 1) {
			/* Its end kicks the dispatch; past the wait, this. */
			snprintf(held, sizeof held, "the first start of uid %lu "
			    "waits for its groups from the user database",
			    (unsigned long)uid);
			ev_timer_again(loop, &hold_timer);
		}
		if (rc != 0)
			break;
		if (++started % SCHED_STARTS_PER_COMMIT == 0 &&
		    task_start_prepared() == -1)
			break;	/* a failed commit or clone: try again later */
	}
	free(closed);
	task_start_prepared();
	if (store_take_dispatch_failed())
		goto retry;
	if (task_running_count() >= (size_t)config.workers)
		return;	/* an exit will kick us */
sleep:
	next = store_next_run_at(now);
	if (store_take_dispatch_failed())
		goto retry;
	if (next != UNSET) {
		ev_periodic_set(&sched_timer, (double)(next > now ? next :
		    now + 1) / 1000.0, 0., NULL);
		ev_periodic_start(loop, &sched_timer);
	}
	return;
retry:
	/* Due tasks the store could not show: ask again later. */
	ev_timer_again(loop, &hold_timer);
}

/*
 * d = min(max, base * 2^(n-1)) for failed attempt n >= 1, saturating
 * instead of overflowing (spec 4.3).
 */
int64_t
sched_backoff_ms(int64_t base, int64_t max, int n)
{
	int64_t	d = base;

	if (n < 1)
		n = 1;
	if (base <= 0)
		return (0);
	while (--n > 0 && d < max) {
		if (d > INT64_MAX / 2) {
			d = INT64_MAX;
			break;
		}
		d *= 2;
	}
	return (d < max ? d : max);
}

/*
 * A delay drawn uniformly from [d/2, d] with d = sched_backoff_ms(...). rnd
 * is arc4random_uniform in forkqd, a fixed function in the tests.
 */
int64_t
sched_backoff_delay(int64_t base, int64_t max, int n,
    uint32_t (*rnd)(uint32_t))
{
	int64_t		d = sched_backoff_ms(base, max, n), lo, span;

	lo = d / 2;
	span = d - lo;
	if (span <= 0)
		return (d);
	/* Spans over 2^32-1 ms (49 days) are drawn in units of 1024 ms. */
	if (span >= UINT32_MAX)
		return (lo + (int64_t)rnd((uint32_t)(span >> 10)) * 1024);
	return (lo + rnd((uint32_t)span + 1));
}
