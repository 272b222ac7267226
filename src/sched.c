/*
 * sched.c: which queued task starts next, and when. Queued tasks live in
 * the store, not in memory: a dispatch asks the store for the first due task
 * (priority, then run_at, then id) while a worker slot is free. When none is
 * due, one timer sleeps until the earliest run_at. Dispatch runs once per
 * loop pass (sched_kick marks it wanted), so a burst of submits or exits
 * costs one query per started task, not one per event.
 */
#include "config.h"

#include <stdlib.h>

#include "forkqd.h"

static ev_timer	sched_timer;		/* earliest future run_at */
static int	sched_wanted;

/* Most tasks started in one loop pass, so clients and reaping keep flowing. */
#define SCHED_MAX_STARTS_PER_PASS	64

static void
sched_timer_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	sched_kick();
}

void
sched_init(void)
{
	ev_init(&sched_timer, sched_timer_cb);
	sched_kick();
}

void
sched_kick(void)
{
	sched_wanted = 1;
}

/* Starts due tasks while slots are free; run from the loop's prepare hook. */
void
sched_dispatch(void)
{
	struct task_rec	*t;
	int64_t		 id, next, now;
	int		 started = 0;

	char		*cause = NULL;

	if (!sched_wanted || daemon_shutting_down())
		return;
	/* Start nothing the store could not record. */
	if (store_healthy(&cause) == -1) {
		free(cause);
		return;
	}
	sched_wanted = 0;
	ev_timer_stop(loop, &sched_timer);
	now = wall_ms();
	while (task_running_count() < (size_t)config.workers) {
		if (started == SCHED_MAX_STARTS_PER_PASS) {
			sched_wanted = 1;	/* go on next pass */
			return;
		}
		if ((id = store_next_due(now, NULL, 0)) == 0)
			break;
		if ((t = store_task_get(id)) == NULL)
			break;
		if (task_start(t) == -1)
			break;
		started++;
	}
	if (task_running_count() >= (size_t)config.workers)
		return;	/* an exit will kick us */
	next = store_next_run_at();
	if (next != UNSET) {
		double	after = (double)(next - now) / 1000.0;

		ev_timer_set(&sched_timer, after > 0.001 ? after : 0.001, 0.);
		ev_timer_start(loop, &sched_timer);
	}
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
