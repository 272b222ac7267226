/*
 * capture.c: a task's stdout or stderr, captured per attempt. The task
 * writes into a pipe; forkqd moves what arrives into
 * STATE_DIR/output/ID/N.out (or .err) with splice(2), so the bytes never
 * enter user space. The file is created with the first byte: a task that
 * writes nothing costs no inode, which is most of what starting a small
 * task would otherwise cost on the file system.
 *
 * Past --max-output bytes, or once the file failed (a full disk), the
 * stream is still read, so the task does not block on a full pipe, but
 * what it writes is dropped; the event task.output_truncated says so once.
 *
 * A stream starts in rounds.c's set, read with the heartbeats a rest apart
 * (1,000 tasks writing a line to stdout at 10 Hz woke forkqd 960 times a
 * second and cost it 8.7% of a core; in rounds, 1.8%: bench/run.py --case
 * hb); one that brings much to a round, or some to several in a row
 * (CAPTURE_QUIET below), leaves the set for an ev_io of its own in the
 * loop, read as it comes, so a chatty task is not held up by the rests.
 *
 * forkqd out of file descriptors for a moment does not drop output: a
 * stream whose file cannot be opened keeps the bytes it read, stops
 * reading its pipe (the task waits on it once full) and tries again every
 * STARVED_RETRY, for STARVED_MAX_MS at most, after which it is dropped as
 * a failed file is; at the attempt's end a spare fd, kept for this, opens
 * the file.
 *
 * Invariants: the pipe's read end is non-blocking and close-on-exec; it is
 * watched (rounds.c: in the set, or as it comes) from capture_start to
 * capture_close, and unwatched before it is closed, and while held (not
 * read: held bytes wait for a file); readers of the
 * output op are woken after every chunk (ops_output_wake), so nothing polls
 * the file; kept never passes --max-output.
 */
#include "config.h"

#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forkqd.h"

/* Most bytes moved per callback, so one chatty task cannot hog the loop. */
#define CAPTURE_PER_CALLBACK	(1024 * 1024)
/* Calls of it at an attempt's end: past what any pipe holds (1 MiB). */
#define CAPTURE_FINISH_CALLS	64
#define CAPTURE_CHUNK		(64 * 1024)
/*
 * When a stream leaves the rounds. A pipe is full, and its writer waits,
 * when its slots are (16 by default, 2 or 1 for the pipes of a user past
 * pipe-user-pages-soft, as the kernel goes). write(2)s merge into a
 * slot's page, so a writer that filled the pipe between two rounds
 * brought a page or more: past
 * CAPTURE_QUIET, half the smallest pipe's pages, it leaves at once. A slot
 * of splice(2), sendfile(2) or vmsplice(2) takes no more, however little
 * it holds: 16 chunks of 100 bytes fill a pipe with 1,600. So a stream
 * that brought CAPTURE_BUSY_SLOT bytes a slot or more in
 * CAPTURE_BUSY_ROUNDS rounds in a row leaves too: a writer of such chunks
 * of 32 bytes or more is held for at most that many rests. A line of up
 * to 200 bytes ten times a second stays (at the default rest, in a pipe
 * of 16 slots).
 */
#define CAPTURE_QUIET		2048
#define CAPTURE_BUSY_SLOT	32
#define CAPTURE_BUSY_ROUNDS	3
#define STARVED_RETRY		0.1	/* s between opens tried without fds */
/*
 * How long a stream waits for an fd before its output is dropped after
 * all: the fds may be held by clients waiting on this very task, which
 * would wait on its full pipe for ever.
 */
#define STARVED_MAX_MS		2000

static TAILQ_HEAD(, capture) starved = TAILQ_HEAD_INITIALIZER(starved);
static ev_timer	 starved_timer;
static int	 finish_spare = -1;	/* for capture_finish's open */
#define STARVED_LOG_S		10
static int64_t	 starved_logged_ms = -1;

/* Holds the spare fd for capture_finish's open, if one is to be had. */
static void
spare_keep(void)
{
	if (finish_spare == -1)
		finish_spare = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static size_t	capture_move(struct capture *);
static void	capture_ready(void *);
static void	capture_keep(struct capture *, const char *, size_t, size_t);
static void	capture_starved_cb(struct ev_loop *, ev_timer *, int);

/*
 * What the task writes is being dropped: past --max-output (error NULL),
 * or because the file failed (error says how). Said once per stream, in
 * task.output_truncated.
 */
static void
capture_dropping(struct capture *c, const char *error)
{
	if (c->truncated)
		return;
	c->truncated = 1;
	event_emit(EV_LEVEL_WARN, "task.output_truncated", c->task_id,
	    json_pack("{s:i, s:I, s:s, s:o}", "attempt", c->attempt, "pid",
	    (json_int_t)c->pid, "stream", c->is_err ? "stderr" : "stdout",
	    error != NULL ? "error" : "limit", error != NULL ?
	    json_string(error) : json_integer(config.max_output)));
}

/*
 * The file failed (errno; what names the call and the path): the rest of
 * the stream is dropped, so the task is not held up on a full pipe, and
 * the loss is said, not only to forkqd's stderr.
 */
static void
capture_broke(struct capture *c, const char *what)
{
	char	error[PATH_MAX + 128];

	snprintf(error, sizeof error, "%s: %s", what, strerror(errno));
	log_warnx("output of task %lld: %s", (long long)c->task_id, error);
	c->broken = 1;
	capture_dropping(c, error);
}

/*
 * Opens c's file. Returns 0; -1 when it failed (said, and the stream is
 * dropped from now on); -2 when forkqd is out of file descriptors, to be
 * tried again.
 */
static int
capture_open_file(struct capture *c)
{
	char	path[PATH_MAX], what[PATH_MAX + 16];
	int	flags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW;

	if (task_output_path(c->task_id, 0, 0, path, sizeof path) == -1) {
		errno = ENAMETOOLONG;
		capture_broke(c, "the output path");
		return (-1);
	}
	if (mkdir(path, 0700) == -1 && errno != EEXIST) {
		snprintf(what, sizeof what, "mkdir %s", path);
		capture_broke(c, what);
		return (-1);
	}
	if (c->chown && chown(path, c->uid, c->gid) == -1)
		log_warn("chown %s", path);
	task_output_path(c->task_id, c->attempt, c->is_err, path, sizeof path);
	/*
	 * Not O_APPEND: splice(2) refuses append-mode files. O_NOFOLLOW: the
	 * directory is the task's user's; forkqd may be root.
	 */
	if ((c->file_fd = open(path, flags, 0600)) == -1 &&
	    (errno == EMFILE || errno == ENFILE) && c->finishing &&
	    finish_spare != -1) {
		/* One open at a time ends an attempt: the spare is for it. */
		close(finish_spare);
		finish_spare = -1;
		c->file_fd = open(path, flags, 0600);
	}
	if (c->file_fd == -1) {
		if ((errno == EMFILE || errno == ENFILE) && !c->finishing)
			return (-2);	/* held: capture_starve */
		snprintf(what, sizeof what, "open %s", path);
		capture_broke(c, what);
		return (-1);
	}
	if (c->chown && fchown(c->file_fd, c->uid, c->gid) == -1)
		log_warn("chown %s", path);
	return (0);
}

static void
capture_close(struct capture *c)
{
	if (c->held != NULL) {
		TAILQ_REMOVE(&starved, c, starved);
		free(c->held);
		c->held = NULL;
		c->nheld = 0;
	}
	rounds_unwatch(&c->round);
	if (c->pipe_fd != -1)
		close(c->pipe_fd);
	if (c->file_fd != -1)
		close(c->file_fd);
	c->pipe_fd = c->file_fd = -1;
}

/* How many more bytes the file may take, at most CAPTURE_CHUNK. */
static size_t
capture_room(const struct capture *c)
{
	int64_t	room;

	if (config.max_output == 0)
		return (CAPTURE_CHUNK);
	room = config.max_output - c->kept;
	return (room <= 0 ? 0 : room < CAPTURE_CHUNK ? (size_t)room :
	    CAPTURE_CHUNK);
}

/*
 * No fd for c's file: its first bytes (buf, n) wait in memory, and its
 * pipe is not read until the timer opens the file.
 */
static void
capture_starve(struct capture *c, const char *buf, size_t n)
{
	c->held = xmalloc(n);
	memcpy(c->held, buf, n);
	c->nheld = n;
	c->held_ms = mono_ms();
	rounds_unwatch(&c->round);
	/* Said once a STARVED_LOG_S at most: fds may come and go. */
	if (TAILQ_EMPTY(&starved) && (starved_logged_ms == -1 ||
	    mono_ms() - starved_logged_ms >= STARVED_LOG_S * 1000)) {
		log_warnx("out of file descriptors: output of task %lld waits "
		    "for its file", (long long)c->task_id);
		starved_logged_ms = mono_ms();
	}
	if (!ev_is_active(&starved_timer)) {
		ev_set_cb(&starved_timer, capture_starved_cb);
		ev_timer_set(&starved_timer, STARVED_RETRY, STARVED_RETRY);
		ev_timer_start(loop, &starved_timer);
	}
	TAILQ_INSERT_TAIL(&starved, c, starved);
}

/* Is output waiting for an fd for its file? */
int
capture_starving(void)
{
	return (!TAILQ_EMPTY(&starved));
}

/*
 * Takes c's held bytes to its file, opened now (0), or not (-2: still no
 * fd; -1: the file failed, and the stream is dropped). Either way but -2,
 * its pipe is read again. Without try, no open is tried: c gives up if it
 * waited long enough.
 */
static int
capture_unstarve(struct capture *c, int try)
{
	char	*held = c->held;
	size_t	 n = c->nheld;
	int	 rc = -2;

	if (try)
		rc = capture_open_file(c);
	if (rc == -2) {
		if (mono_ms() - c->held_ms < STARVED_MAX_MS)
			return (-2);
		errno = EMFILE;
		capture_broke(c, "no file descriptor for the output file");
		rc = -1;
	}
	TAILQ_REMOVE(&starved, c, starved);
	c->held = NULL;
	c->nheld = 0;
	capture_keep(c, held, n, n);
	free(held);
	/* At the end, task.c wakes readers once the attempt is over. */
	if (c->finishing)
		return (rc);
	if (rounds_watch(&c->round, c->pipe_fd, capture_ready, c) == -1)
		log_warn("output of task %lld: pipe not in the epoll set; "
		    "read as it comes", (long long)c->task_id);
	if (rc == 0)
		ops_output_wake(c->task_id);
	return (rc);
}

static void
capture_starved_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	struct capture	*c, *next;
	int		 try = 1;

	/* After one open failed, the others (held later) only give up. */
	TAILQ_FOREACH_SAFE(c, &starved, starved, next) {
		if (capture_unstarve(c, try) == -2)
			try = 0;
	}
	if (TAILQ_EMPTY(&starved))
		ev_timer_stop(loop, w);
}

/* Keeps what read(2) took: the first bytes, or all where splice cannot. */
static void
capture_keep(struct capture *c, const char *buf, size_t n, size_t room)
{
	ssize_t	w;
	int	rc;

	if (c->broken)
		return;
	if (n > room) {
		capture_dropping(c, NULL);
		n = room;
	}
	if (n == 0)
		return;
	if (c->file_fd == -1 && (rc = capture_open_file(c)) != 0) {
		if (rc == -2)
			capture_starve(c, buf, n);
		return;
	}
	if ((w = write(c->file_fd, buf, n)) > 0)
		c->kept += w;
	if (w != (ssize_t)n) {
		if (w >= 0)
			errno = ENOSPC;	/* a short write: the disk is full */
		capture_broke(c, "writing the output file");
	}
}

/*
 * Moves what the pipe holds into the file, and closes the pipe at EOF.
 * Returns the bytes moved.
 */
static size_t
capture_move(struct capture *c)
{
	char	buf[CAPTURE_CHUNK];
	ssize_t	n;
	size_t	moved = 0, room, want;

	while (moved < CAPTURE_PER_CALLBACK && c->held == NULL) {
		room = capture_room(c);
		if (c->file_fd == -1 || c->broken || c->no_splice ||
		    room == 0) {
			/* The first bytes go by read(2), to make the file. */
			want = sizeof buf;
			if ((n = read(c->pipe_fd, buf, want)) > 0)
				capture_keep(c, buf, n, room);
		} else {
			want = room;
			n = splice(c->pipe_fd, NULL, c->file_fd, NULL, want,
			    SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
			if (n == -1 && errno == EINVAL) {
				/* No splice to this file system: copy. */
				c->no_splice = 1;
				continue;
			}
			if (n > 0)
				c->kept += n;
		}
		if (n == -1 && (errno == EAGAIN || errno == EINTR))
			break;
		if (n == -1 && !c->broken) {
			capture_broke(c, "moving output to its file");
			continue;
		}
		if (n <= 0) {
			capture_close(c);
			break;
		}
		moved += n;
		/* Short: the pipe is empty (a read or splice of a pipe takes
		 * all it holds, up to want); no call to be told EAGAIN. */
		if ((size_t)n < want)
			break;
	}
	return (moved);
}

/*
 * How many slots c's pipe has now (the task may resize it), asked of the
 * kernel only when it matters: most streams never bring enough. One, the
 * fewest, when it will not say.
 */
static size_t
capture_slots(const struct capture *c)
{
	long	page = sysconf(_SC_PAGESIZE);
	int	size = fcntl(c->pipe_fd, F_GETPIPE_SZ);

	return (size > 0 && page > 0 && size >= page ? (size_t)(size / page) :
	    1);
}

/*
 * Readable (rounds.c): in a round, a busy stream leaves the rounds
 * (CAPTURE_QUIET); out of them, as it comes.
 */
static void
capture_ready(void *data)
{
	struct capture	*c = data;
	unsigned long	 round = rounds_current();
	size_t		 moved;

	/* Readers of the output op learn of every chunk: nothing polls. Not
	 * of bytes held for want of a file: they would find none. */
	if ((moved = capture_move(c)) > 0 && c->held == NULL)
		ops_output_wake(c->task_id);
	if (c->pipe_fd == -1 || !c->round.in_set)
		return;
	/* Once a round: a round of many pipes may read one twice. */
	if (moved >= CAPTURE_BUSY_SLOT && moved <= CAPTURE_QUIET &&
	    c->busy_round != round &&
	    moved >= capture_slots(c) * CAPTURE_BUSY_SLOT) {
		c->busy_rounds = c->busy_round + 1 == round ?
		    c->busy_rounds + 1 : 1;
		c->busy_round = round;
	}
	if (moved <= CAPTURE_QUIET && (c->busy_round != round ||
	    c->busy_rounds < CAPTURE_BUSY_ROUNDS))
		return;
	rounds_no_rest(&c->round);
}

/*
 * Prepares capture c of attempt n of task id. Returns the write end for
 * the child (close-on-exec; the parent closes it after the spawn), or -1.
 */
int
capture_open(struct capture *c, int64_t id, int n, int is_err, uid_t uid,
    gid_t gid)
{
	int	p[2];

	memset(c, 0, sizeof *c);
	c->pipe_fd = c->file_fd = -1;
	c->task_id = id;
	c->attempt = n;
	c->is_err = is_err;
	c->uid = uid;
	c->gid = gid;
	c->chown = running_as_root();
	if (pipe2(p, O_CLOEXEC) == -1)
		return (-1);
	if (fcntl(p[0], F_SETFL, O_NONBLOCK) == -1)
		log_warn("fcntl output pipe");
	c->pipe_fd = p[0];
	spare_keep();	/* after the pipe, which needs the fd more */
	return (p[1]);
}

void
capture_start(struct capture *c, pid_t pid)
{
	c->pid = pid;
	if (c->pipe_fd != -1 && rounds_watch(&c->round, c->pipe_fd,
	    capture_ready, c) == -1)
		log_warn("output of task %lld: pipe not in the epoll set; "
		    "read as it comes", (long long)c->task_id);
}

/*
 * At the end of an attempt, when nothing of the task is alive: take what
 * is left in the pipe (at most its capacity, as the writers are gone; a
 * pipe root made larger than a call moves is read to its end), then close.
 * A pipe still open after that has a writer forkqd cannot see, and is
 * closed all the same. Readers are not woken here: the task still counts
 * as running, and they would be told the attempt goes on (eof false) for
 * bytes that are its last. task.c wakes them once it has ended.
 */
void
capture_finish(struct capture *c)
{
	int	i;

	c->finishing = 1;
	if (c->held != NULL)
		(void)capture_unstarve(c, 1);
	for (i = 0; c->pipe_fd != -1 && i < CAPTURE_FINISH_CALLS; i++) {
		if (capture_move(c) == 0)
			break;
	}
	capture_close(c);
	spare_keep();
}
