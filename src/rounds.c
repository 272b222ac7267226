/*
 * rounds.c: the pipes of running tasks that say little (heartbeats, and
 * stdout and stderr while they stay quiet), and how often they are read.
 *
 * Read as each line came, 1,000 tasks heartbeating at 10 Hz woke forkqd
 * about 900 times a second (the main loop's 1 ms I/O collection already
 * merging some), and the wake-ups, more than the reads, cost it 4.4% of a
 * core (bench/run.py --case hb); the same tasks writing a line to stdout
 * at 10 Hz cost it 8.7%. So the pipes are in an epoll set of their own,
 * and forkqd's loop watches that set's fd: when a pipe has something to
 * read, every pipe that has is read (a round), and the set then rests,
 * unwatched, for --heartbeat-rest (0.25 s by default). While lines keep
 * coming, forkqd wakes for them once per rest, whatever the number of
 * tasks (the same bench: 6 wake-ups a second, 0.9% of a core; 1.8% for
 * the stdout lines, most of it their writes to the files). A round
 * that finds nothing ends the resting, and the next line is read as soon
 * as it comes; a task writing slower than the rest so costs two wake-ups
 * a line instead of one. A rest of 0 reads each line as it comes.
 *
 * What this costs: a line is read at most a rest after it was written, so
 * last_heartbeat_at, a task.progress event and captured output may be that
 * late, and a heartbeat_timeout counts from the read, so a lost heartbeat
 * may be found that much later too. Never sooner: when a task's heartbeat
 * timer fires, task.c reads that task's pipe before it judges, and the end
 * of an attempt reads what is left. A round empties each pipe it reads, so
 * only a task that writes more than its pipe holds (16 slots: 64 KiB of
 * write(2)s by default, 8 KiB for a user other than root past
 * pipe-user-pages-soft, less where splice(2) or sendfile(2) fill slots
 * with small chunks) between two rounds waits in write(2) for the next;
 * capture.c takes a stream that writes more than a little in a round, or
 * some in several rounds in a row, out of the set, to be read as it
 * comes.
 *
 * The set is a plain epoll fd, not a second libev loop embedded in the
 * first: libev may close and remake a loop's epoll fd (when it finds its
 * kernel state stale, as a pipe closed here but still open in a child
 * being spawned makes it), and the outer loop would go on watching the
 * old one. A pipe leaves the set (rounds_unwatch) before forkqd closes it,
 * so no event ever names a reader that has gone.
 *
 * A pipe the set cannot take (out of epoll watches or memory), or one
 * taken out of it (rounds_no_rest), is watched here too, by an ev_io of
 * its own in the loop: its reader does not care which.
 */
#include "config.h"

#include <sys/epoll.h>

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "forkqd.h"

#define ROUND_EVENTS		256	/* pipes per epoll_wait */
#define ROUND_WAITS		16	/* epoll_waits per round, at most */

static int		 round_epfd = -1;
static ev_io		 round_watch;	/* round_epfd, in forkqd's loop */
static ev_timer		 round_rest;
static unsigned long	 round_seq;	/* rounds read so far */

/* Reads every pipe that has something; returns how many had. */
static unsigned
rounds_read(void)
{
	struct epoll_event	 ev[ROUND_EVENTS];
	struct round_pipe	*rp;
	unsigned		 got = 0;
	int			 i, n, waits;

	round_seq++;
	for (waits = 0; waits < ROUND_WAITS; waits++) {
		if ((n = epoll_wait(round_epfd, ev, ROUND_EVENTS, 0)) == -1) {
			if (errno == EINTR)
				continue;
			log_warn("epoll_wait of the tasks' pipes");
			break;
		}
		/* Each reads its own pipe only: no event of the batch goes
		 * stale meanwhile. */
		for (i = 0; i < n; i++) {
			rp = ev[i].data.ptr;
			rp->ready(rp->data);
		}
		got += n;
		if (n < ROUND_EVENTS)
			break;
	}
	return (got);
}

/* A pipe became readable: a round, then rest (unless rests are 0). */
static void
rounds_ready_cb(struct ev_loop *l, ev_io *w, int revents)
{
	rounds_read();
	if (round_rest.repeat == 0.)
		return;
	ev_io_stop(l, w);
	ev_timer_again(l, &round_rest);
}

/* The rest is over: read what came meanwhile, or watch again. */
static void
rounds_rest_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	if (rounds_read() > 0)
		return;		/* lines still come: rest again (repeat) */
	ev_timer_stop(l, w);
	ev_io_start(l, &round_watch);
}

/* Makes the set and watches it in l. Returns 0, or -1 with *cause. */
int
rounds_init(struct ev_loop *l, char **cause)
{
	if ((round_epfd = epoll_create1(EPOLL_CLOEXEC)) == -1) {
		xasprintf(cause, "epoll_create1 for the tasks' pipes: %s",
		    strerror(errno));
		return (-1);
	}
	ev_io_init(&round_watch, rounds_ready_cb, round_epfd, EV_READ);
	ev_init(&round_rest, rounds_rest_cb);
	round_rest.repeat = (double)config.heartbeat_rest_ms / 1000.0;
	ev_io_start(l, &round_watch);
	return (0);
}

/* Which round this is: consecutive rounds have consecutive numbers. */
unsigned long
rounds_current(void)
{
	return (round_seq);
}

/* A pipe out of the set is readable: as it comes, in forkqd's loop. */
static void
rounds_io_cb(struct ev_loop *l, ev_io *w, int revents)
{
	struct round_pipe	*rp = w->data;

	rp->ready(rp->data);
}

/*
 * Watches fd, a task's pipe (its read end, non-blocking), in the set:
 * ready(data) is called in each round that finds it readable (or at its
 * end). Returns 0, or -1 with errno where the set cannot take it (out of
 * epoll watches or memory): it is then watched in the loop and read as it
 * comes, as a full pipe left unread would hold its task in write(2).
 */
int
rounds_watch(struct round_pipe *rp, int fd, void (*ready)(void *),
    void *data)
{
	struct epoll_event	ev;
	int			saved;

	rp->ready = ready;
	rp->data = data;
	rp->fd = fd;
	ev_io_init(&rp->io, rounds_io_cb, fd, EV_PIPE_READ);
	rp->io.data = rp;
	memset(&ev, 0, sizeof ev);
	ev.events = EPOLLIN;
	ev.data.ptr = rp;
	if (round_epfd != -1 &&
	    epoll_ctl(round_epfd, EPOLL_CTL_ADD, fd, &ev) == 0) {
		rp->in_set = 1;
		return (0);
	}
	saved = round_epfd == -1 ? EBADF : errno;
	ev_io_start(loop, &rp->io);
	errno = saved;
	return (-1);
}

/* rp's pipe leaves the set: it is read as it comes from now on. */
void
rounds_no_rest(struct round_pipe *rp)
{
	if (!rp->in_set)
		return;
	rounds_unwatch(rp);
	ev_io_start(loop, &rp->io);
}

/*
 * Stops watching rp's pipe, if it was; before it is closed, always: a
 * copy of it in a child being spawned would keep it in the set after the
 * close, and its events would name a reader that has gone.
 */
void
rounds_unwatch(struct round_pipe *rp)
{
	ev_io_stop(loop, &rp->io);
	if (!rp->in_set)
		return;
	rp->in_set = 0;
	if (epoll_ctl(round_epfd, EPOLL_CTL_DEL, rp->fd, NULL) == -1 &&
	    errno != ENOENT)
		log_warn("taking pipe %d out of its epoll set", rp->fd);
}

/* After the last task ended, before l goes. */
void
rounds_fini(struct ev_loop *l)
{
	if (round_epfd == -1)
		return;
	ev_timer_stop(l, &round_rest);
	ev_io_stop(l, &round_watch);
	close(round_epfd);
	round_epfd = -1;
}
