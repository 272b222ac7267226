/*
 * heartbeat.c: the loop the heartbeat pipes of running tasks are watched
 * in, and how often it is read.
 *
 * Read as each line came, 1,000 tasks heartbeating at 10 Hz woke forkqd
 * about 900 times a second (the main loop's 1 ms I/O collection already
 * merging some), and the wake-ups, more than the reads, cost it 4.4% of a
 * core (bench/run.py --case hb). So the pipes are watched in a loop of
 * their own, embedded in forkqd's (ev_embed, ev.pod): when one has
 * something to read, every pipe that has is read, and the pipes then rest
 * HEARTBEAT_REST_S. While lines keep coming, forkqd wakes for them once
 * per rest, whatever the number of tasks (the same bench: 6 wake-ups a
 * second, 0.9% of a core). A rest that finds nothing to read ends the
 * resting, and the next line is read as soon as it comes.
 *
 * What this costs: a line is read at most HEARTBEAT_REST_S after it was
 * written, so last_heartbeat_at and a task.progress event may be that
 * late, and a heartbeat_timeout counts from the read, so a lost heartbeat
 * may be found that much later too. Never sooner: when a task's heartbeat
 * timer fires, task.c reads that task's pipe before it judges, and the end
 * of an attempt reads what is left. A round empties each pipe it reads,
 * so only a task that writes more than a pipe's worth (64 KiB) of lines
 * between two rounds waits in write(2) for the next.
 *
 * Only ev_io watchers may live in the embedded loop (ev.pod); the tasks'
 * timers stay in forkqd's. Where an embeddable loop cannot be had, the
 * pipes are watched in forkqd's loop, as before.
 */
#include "config.h"

#include <ev.h>

#include "forkqd.h"

#define HEARTBEAT_REST_S	0.25

static struct ev_loop	*hb_loop;	/* NULL: the pipes are in forkqd's */
static ev_embed		 hb_embed;
static ev_timer		 hb_rest;
static unsigned		 hb_reads;	/* callbacks run by the last sweep */

/* Runs the callbacks of the pipes a sweep found readable, counting them. */
static void
heartbeat_invoke(struct ev_loop *l)
{
	hb_reads += ev_pending_count(l);
	ev_invoke_pending(l);
}

/* Reads every pipe that has something; returns how many did. */
static unsigned
heartbeat_sweep(void)
{
	hb_reads = 0;
	ev_run(hb_loop, EVRUN_NOWAIT);
	return (hb_reads);
}

/* A pipe became readable: read them all, then rest. */
static void
heartbeat_ready_cb(struct ev_loop *l, ev_embed *w, int revents)
{
	heartbeat_sweep();
	ev_embed_stop(l, w);
	ev_timer_again(l, &hb_rest);
}

/* The rest is over: read what came meanwhile, or watch again. */
static void
heartbeat_rest_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	if (heartbeat_sweep() > 0)
		return;		/* lines still come: rest again (repeat) */
	ev_timer_stop(l, w);
	ev_embed_start(l, &hb_embed);
}

/*
 * Makes the heartbeat loop and embeds it in outer. Not being able to is no
 * failure: heartbeat_loop() is then outer itself.
 */
void
heartbeat_init(struct ev_loop *outer)
{
	unsigned	backend = EVBACKEND_EPOLL & ev_embeddable_backends() &
			    ev_supported_backends();

	if (backend == 0 || (hb_loop = ev_loop_new(backend)) == NULL) {
		log_warnx("no loop of their own for heartbeat pipes: each line "
		    "is read as it comes");
		return;
	}
	ev_set_invoke_pending_cb(hb_loop, heartbeat_invoke);
	ev_embed_init(&hb_embed, heartbeat_ready_cb, hb_loop);
	ev_init(&hb_rest, heartbeat_rest_cb);
	hb_rest.repeat = HEARTBEAT_REST_S;
	ev_embed_start(outer, &hb_embed);
}

/* The loop a task's heartbeat watcher goes in. */
struct ev_loop *
heartbeat_loop(void)
{
	return (hb_loop != NULL ? hb_loop : loop);
}

/* After the last task's watcher stopped, before outer goes. */
void
heartbeat_fini(struct ev_loop *outer)
{
	if (hb_loop == NULL)
		return;
	ev_timer_stop(outer, &hb_rest);
	ev_embed_stop(outer, &hb_embed);
	ev_loop_destroy(hb_loop);
	hb_loop = NULL;
}
