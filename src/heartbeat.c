/*
 * heartbeat.c: the heartbeat pipes of running tasks, and how often they
 * are read.
 *
 * Read as each line came, 1,000 tasks heartbeating at 10 Hz woke forkqd
 * about 900 times a second (the main loop's 1 ms I/O collection already
 * merging some), and the wake-ups, more than the reads, cost it 4.4% of a
 * core (bench/run.py --case hb). So the pipes are in an epoll set of their
 * own, and forkqd's loop watches that set's fd: when a pipe has something
 * to read, every pipe that has is read (a round), and the set then rests,
 * unwatched, for --heartbeat-rest (0.25 s by default). While lines keep
 * coming, forkqd wakes for them once per rest, whatever the number of
 * tasks (the same bench: 6 wake-ups a second, 0.9% of a core). A round
 * that finds nothing ends the resting, and the next line is read as soon
 * as it comes; a task beating slower than the rest so costs two wake-ups
 * a line instead of one. A rest of 0 reads each line as it comes.
 *
 * What this costs: a line is read at most a rest after it was written, so
 * last_heartbeat_at and a task.progress event may be that late, and a
 * heartbeat_timeout counts from the read, so a lost heartbeat may be
 * found that much later too. Never sooner: when a task's heartbeat timer
 * fires, task.c reads that task's pipe before it judges, and the end of
 * an attempt reads what is left. A round empties each pipe it reads, so
 * only a task that writes more than its pipe holds (64 KiB by default, 8
 * KiB for a user other than root past pipe-user-pages-soft) between two
 * rounds waits in write(2) for the next.
 *
 * The set is a plain epoll fd, not a second libev loop embedded in the
 * first: libev may close and remake a loop's epoll fd (when it finds its
 * kernel state stale, as a pipe closed here but still open in a child
 * being spawned makes it), and the outer loop would go on watching the
 * old one. A pipe leaves the set (heartbeat_remove) before forkqd closes
 * it, so no event ever names a task that has gone.
 */
#include "config.h"

#include <sys/epoll.h>

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "forkqd.h"

#define HEARTBEAT_EVENTS	256	/* pipes per epoll_wait */
#define HEARTBEAT_WAITS		16	/* epoll_waits per round, at most */

static int		 hb_epfd = -1;
static ev_io		 hb_watch;	/* hb_epfd, in forkqd's loop */
static ev_timer		 hb_rest;

/* Reads every pipe that has something; returns how many had. */
static unsigned
heartbeat_round(void)
{
	struct epoll_event	 ev[HEARTBEAT_EVENTS];
	unsigned		 got = 0;
	int			 i, n, waits;

	for (waits = 0; waits < HEARTBEAT_WAITS; waits++) {
		if ((n = epoll_wait(hb_epfd, ev, HEARTBEAT_EVENTS, 0)) == -1) {
			if (errno == EINTR)
				continue;
			log_warn("epoll_wait of the heartbeat pipes");
			break;
		}
		/* Each reads its own pipe only: no event of the batch goes
		 * stale meanwhile. */
		for (i = 0; i < n; i++)
			task_heartbeat_ready(ev[i].data.ptr);
		got += n;
		if (n < HEARTBEAT_EVENTS)
			break;
	}
	return (got);
}

/* A pipe became readable: a round, then rest (unless rests are 0). */
static void
heartbeat_ready_cb(struct ev_loop *l, ev_io *w, int revents)
{
	heartbeat_round();
	if (hb_rest.repeat == 0.)
		return;
	ev_io_stop(l, w);
	ev_timer_again(l, &hb_rest);
}

/* The rest is over: read what came meanwhile, or watch again. */
static void
heartbeat_rest_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	if (heartbeat_round() > 0)
		return;		/* lines still come: rest again (repeat) */
	ev_timer_stop(l, w);
	ev_io_start(l, &hb_watch);
}

/* Makes the set and watches it in l. Returns 0, or -1 with *cause. */
int
heartbeat_init(struct ev_loop *l, char **cause)
{
	if ((hb_epfd = epoll_create1(EPOLL_CLOEXEC)) == -1) {
		xasprintf(cause, "epoll_create1 for the heartbeat pipes: %s",
		    strerror(errno));
		return (-1);
	}
	ev_io_init(&hb_watch, heartbeat_ready_cb, hb_epfd, EV_READ);
	ev_init(&hb_rest, heartbeat_rest_cb);
	hb_rest.repeat = (double)config.heartbeat_rest_ms / 1000.0;
	ev_io_start(l, &hb_watch);
	return (0);
}

/*
 * Adds a task's pipe (its read end, non-blocking) to the set: data is what
 * task_heartbeat_ready() gets when it is readable. Returns 0, or -1 with
 * errno.
 */
int
heartbeat_add(int fd, void *data)
{
	struct epoll_event	ev;

	if (hb_epfd == -1) {
		errno = EBADF;
		return (-1);
	}
	memset(&ev, 0, sizeof ev);
	ev.events = EPOLLIN;
	ev.data.ptr = data;
	return (epoll_ctl(hb_epfd, EPOLL_CTL_ADD, fd, &ev));
}

/*
 * Takes fd out of the set; before it is closed, always: a copy of it in a
 * child being spawned would keep it in the set after the close.
 */
void
heartbeat_remove(int fd)
{
	if (hb_epfd != -1 && epoll_ctl(hb_epfd, EPOLL_CTL_DEL, fd, NULL) ==
	    -1 && errno != ENOENT)
		log_warn("taking heartbeat pipe %d out of its epoll set", fd);
}

/* After the last task ended, before l goes. */
void
heartbeat_fini(struct ev_loop *l)
{
	if (hb_epfd == -1)
		return;
	ev_timer_stop(l, &hb_rest);
	ev_io_stop(l, &hb_watch);
	close(hb_epfd);
	hb_epfd = -1;
}
