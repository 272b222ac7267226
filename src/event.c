/*
 * event.c: the structured events of spec 6. Each event becomes one JSON
 * line that goes to the ring of recent events kept for `logs` and watch
 * backlogs, to every watching connection whose filter matches, and to the
 * log file. A line is written by one write(2), never split, so lines of
 * other writers of a shared stderr never cut into one; the lines released
 * together (after a commit) share that write, up to LOG_BATCH_MAX (a
 * task's start and end are three or four events, and a write each was a
 * tenth of forkqd's system calls). To a pipe or a socket a write is whole
 * lines of at most PIPE_BUF, which the kernel keeps together; a write to a
 * file or a terminal goes in whole. The log has a commit's lines before
 * the answers and watchers of that commit get anything.
 *
 * Every event waits (in order, with the time it happened) for the next
 * commit of the store, at the latest the one at the end of the loop pass
 * it was emitted in (daemon.c): a crash cannot leave a line about a
 * change that was never committed, even one whose event comes before its
 * write (task.attempt_ended, then the attempt's row). When the commit
 * fails, the events of what it took back for good are dropped: the tasks
 * it inserted (a task.submitted of a submit that was refused: its id goes
 * to the next task), a prune, a cron entry added or removed. The others
 * go out, as the changes they tell of did happen and are written once the
 * store recovers (store.c's journal).
 *
 * Invariants: the ring holds at most EVENT_RING_SIZE lines and at most
 * event_ring_bytes_max bytes of them, oldest dropped first, those longer
 * than SPILL_MIN on disk (spill.c); ring_bytes is their total; the log fd is always open (stderr when no file);
 * held events go out in the order they happened, only log.dropped (about
 * the log itself) going out at once.
 */
#include "config.h"

#include <sys/param.h>
#include <sys/queue.h>
#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forkqd.h"

/* Spec 6 asks for at least 10,000 kept events. */
#define EVENT_RING_SIZE	16384
/*
 * Most bytes the kept events' lines may take, in memory and spilled
 * together: 16,384 task.submitted of 1 MiB argvs each would be 16 GiB,
 * next to the database. The oldest go first past it, so the ring keeps
 * fewer than 10,000 events only when they average over 26 KiB.
 */
#define EVENT_RING_BYTES	((size_t)256 * 1024 * 1024)
size_t		event_ring_bytes_max = EVENT_RING_BYTES;	/* tests' seam */

struct event_line {
	char	*line;		/* with its newline; NULL when spilled */
	size_t	 len;
	int	 spilled;	/* on disk (spill.c), at spill_off */
	int64_t	 spill_off;
	int64_t	 task;		/* 0 = not a task event */
	int64_t	 owner;		/* uid of a user's daemon event, -1 = all;
				 * of a task event once looked up, else -2;
				 * -3: its task is gone (root's alone) */
};

/*
 * A watcher reads the ring at its own pace, from its own place (next):
 * its backlog, then each event as it comes. It takes lines while its
 * connection has less than WATCH_CHUNK to send, and goes on as the
 * client reads (event_watch_resume), so a backlog of any size costs no
 * more memory than the ring. One that falls CONN_WATCH_MAX of new events
 * behind, or out of the ring, is dropped.
 */
#define WATCH_CHUNK	(256 * 1024)
#define WATCH_BEHIND_MAX (16 * 1024 * 1024)

struct watcher {
	struct conn		*conn;
	int64_t			 task;		/* 0 = all */
	int			 root;		/* sees every task's events */
	uid_t			 uid;		/* else only this user's */
	uint64_t		 next;		/* ring seq it reads next */
	uint64_t		 end;		/* without follow: where it ends */
	uint64_t		 live;		/* first seq after its backlog */
	size_t			 behind;	/* bytes of those not sent */
	TAILQ_ENTRY(watcher)	 entry;
};

static int	watcher_pump(struct watcher *);
static void	ring_slot_clear(struct event_line *);

/* An event waiting for the commit of what it tells of. */
struct held_event {
	char			*line;		/* the JSON line */
	size_t			 len;
	char			*human;		/* --log-format text, or NULL */
	int64_t			 task;
	int64_t			 owner;
	int			 unkept;	/* event_emit_unkept */
	STAILQ_ENTRY(held_event) entry;
};

static struct event_line	 ring[EVENT_RING_SIZE];
static STAILQ_HEAD(, held_event) held = STAILQ_HEAD_INITIALIZER(held);
static size_t			 ring_next;	/* slot of the next event */
static size_t			 ring_count;
static size_t			 ring_bytes;	/* of the kept lines */
static uint64_t			 ring_seq;	/* events ever put in it */
static TAILQ_HEAD(, watcher)	 watchers = TAILQ_HEAD_INITIALIZER(watchers);
static int			 log_fd = STDERR_FILENO;
static char			*log_path;
static int			 log_text;	/* --log-format text */

/*
 * A log that is a pipe or a socket (the journal's stream, a logger under
 * s6 or runit) is written without blocking: what the reader has not taken
 * yet waits here, up to LOG_PENDING_MAX, then lines are dropped and
 * counted, and a log.dropped line says how many once it drains.
 */
#define LOG_PENDING_MAX	(8 * 1024 * 1024)
#define LOG_FLUSH_MS	2000	/* at exit, wait no longer for a reader */
static int			 log_async;
static int			 log_is_pipe;	/* a pipe or a socket */
static ev_io			 log_io;
static char			*log_pend;
static size_t			 log_pend_len;
static size_t			 log_pend_cap;
static uint64_t			 log_dropped;
/*
 * A line only partly written (a full disk) that could not be cut off the
 * log again: the next line starts with a newline, so that it and the
 * ones after it stay whole.
 */
static int			 log_torn;

/* The lines of one event_release() for the log, written at its end. */
#define LOG_BATCH_MAX	(64 * 1024)
static char			*log_batch;
static size_t			 log_batch_len;
static size_t			 log_batch_cap;
static size_t			 log_batch_lines;

static void	event_flush_pending(void);
static void	event_send(struct held_event *);

static const char *const level_names[] = { "debug", "info", "warn", "error" };

/*
 * A file whose last line has no newline was cut by a crash (a SIGKILL can
 * stop a write of many pages part way): the first line written now would
 * run on from it, and neither would parse. The cut line is ended first.
 */
static void
end_torn_line(int fd, const char *path)
{
	struct stat	st;
	char		last;
	int		rfd;

	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode) || st.st_size == 0)
		return;
	/* fd is write-only: the last byte is read through a second open. */
	if ((rfd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)) ==
	    -1)
		return;
	if (pread(rfd, &last, 1, st.st_size - 1) == 1 && last != '\n' &&
	    write(fd, "\n", 1) != 1)
		log_warn("ending the cut last line of %s", path);
	close(rfd);
}

/*
 * With nonblock (a reopen, on the loop) a FIFO without a reader is an
 * error (ENXIO) instead of a wait for one that would hold the loop.
 */
static int
event_open_fd(const char *path, int nonblock, char **cause)
{
	int	fd;

	/* A log on a terminal must not become forkqd's controlling one,
	 * which its tasks would share (spawn.c). */
	if ((fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC |
	    O_NOCTTY | (nonblock ? O_NONBLOCK : 0), 0640)) == -1) {
		xasprintf(cause, "%s: %s", path, strerror(errno));
		return (-1);
	}
	end_torn_line(fd, path);
	return (fd);
}

/* --log-format text: the log gets "ts level event key=value ..." lines. */
void
event_set_text(int text)
{
	log_text = text;
}

/*
 * May s go bare into a text line? Not when it holds a space, a quote or
 * an '=' (it would read as more than one value), nor a control character
 * of C0, DEL or C1 (U+0080 to U+009F, 0xc2 0x80-0x9f in UTF-8): a task's
 * name or message could move a terminal's cursor and forge a line.
 */
static int
text_bare(const char *s)
{
	const unsigned char	*p = (const unsigned char *)s;

	if (*p == '\0')
		return (0);
	for (; *p != '\0'; p++) {
		if (*p <= ' ' || *p == 0x7f || *p == '"' || *p == '=' ||
		    *p == '\\' || (*p == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f))
			return (0);
	}
	return (1);
}

/*
 * The short human form of event o for the log: strings bare when they
 * may be (text_bare), everything else as JSON, all but ASCII escaped.
 * Caller frees.
 */
static char *
event_text_line(json_t *o)
{
	const char	*k;
	json_t		*v;
	char		*line = NULL, *val, *tmp;
	size_t		 len = 0;
	FILE		*f;

	if ((f = open_memstream(&line, &len)) == NULL)
		return (NULL);
	fprintf(f, "%s %s %s", json_string_value(json_object_get(o, "ts")),
	    json_string_value(json_object_get(o, "level")),
	    json_string_value(json_object_get(o, "event")));
	json_object_foreach(o, k, v) {
		if (strcmp(k, "ts") == 0 || strcmp(k, "level") == 0 ||
		    strcmp(k, "event") == 0)
			continue;
		if (json_is_string(v) && text_bare(json_string_value(v))) {
			fprintf(f, " %s=%s", k, json_string_value(v));
			continue;
		}
		tmp = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY |
		    JSON_ENSURE_ASCII);
		val = tmp != NULL ? tmp : xstrdup("?");
		fprintf(f, " %s=%s", k, val);
		free(val);
	}
	fputc('\n', f);
	fclose(f);
	return (line);
}

/* Opens the event log for appending; "-" or NULL is stderr. */
int
event_open_log(const char *path, char **cause)
{
	int	fd;

	if (path == NULL || strcmp(path, "-") == 0)
		return (0);
	if ((fd = event_open_fd(path, 0, cause)) == -1)
		return (-1);
	log_fd = fd;
	log_path = xstrdup(path);
	return (0);
}

/* Lines the log lost are told of in a log.dropped event. */
static void
event_tell_dropped(void)
{
	uint64_t	dropped;

	if ((dropped = log_dropped) > 0) {
		log_dropped = 0;
		event_emit(EV_LEVEL_ERROR, "log.dropped", 0, json_pack("{s:I}",
		    "lines", (json_int_t)dropped));
	}
}

/*
 * SIGHUP: reopen the log at its path, so a rotated file is let go. The old
 * fd is closed only once the new one is open: no line is misplaced, and
 * what a reader of the old one did not take within LOG_FLUSH_MS is told
 * of in the new one.
 */
void
event_reopen_log(void)
{
	char	*cause;
	int	 fd;

	if (log_path == NULL)
		return;
	if ((fd = event_open_fd(log_path, 1, &cause)) == -1) {
		/*
		 * Into the log still open too: under --daemon stderr is
		 * /dev/null, and a rotation that will delete the old file
		 * must not go unnoticed.
		 */
		log_warnx("reopening the log: %s", cause);
		event_emit(EV_LEVEL_ERROR, "daemon.log_reopen_failed", 0,
		    json_pack("{s:s, s:s}", "path", log_path, "error", cause));
		free(cause);
		return;
	}
	event_flush_pending();
	close(log_fd);
	log_fd = fd;
	log_torn = 0;	/* the old file's; the new one starts clean */
	event_start();
	event_emit(EV_LEVEL_INFO, "daemon.log_reopened", 0,
	    json_pack("{s:s}", "path", log_path));
	event_tell_dropped();
}

void
event_close(void)
{
	struct watcher	*w;
	size_t		 i;

	event_release();	/* after the store's last commit */
	while ((w = TAILQ_FIRST(&watchers)) != NULL) {
		TAILQ_REMOVE(&watchers, w, entry);
		free(w);
	}
	for (i = 0; i < EVENT_RING_SIZE; i++)
		ring_slot_clear(&ring[i]);
	ring_count = ring_next = ring_bytes = 0;
	spill_reset();
	event_flush_pending();
	free(log_pend);
	log_pend = NULL;
	log_pend_cap = 0;
	free(log_batch);
	log_batch = NULL;
	log_batch_cap = 0;
	if (log_fd != STDERR_FILENO)
		close(log_fd);
	log_fd = STDERR_FILENO;
	free(log_path);
	log_path = NULL;
}

/*
 * How much of buf (len bytes) to write at once: to a pipe, whole lines of
 * at most PIPE_BUF bytes in all, which the kernel writes whole or not at
 * all, so a reader that stalls never leaves half a line in the pipe; a
 * longer line goes alone. To a file, everything.
 */
static size_t
log_chunk(const char *buf, size_t len)
{
	const char	*nl;

	if (!log_is_pipe || len <= PIPE_BUF)
		return (len);
	if ((nl = memrchr(buf, '\n', PIPE_BUF)) != NULL)
		return ((size_t)(nl - buf) + 1);
	if ((nl = memchr(buf, '\n', len)) != NULL)
		return ((size_t)(nl - buf) + 1);
	return (len);
}

/*
 * A write of nlines whole lines to the log failed after written bytes of
 * them went in (a full disk, a file size limit). The lines not all in are
 * counted dropped. A reader of the log must never see a line cut short and
 * joined to the next: a log file of forkqd's own (--log) is cut back to
 * where that line began; on a shared stderr, whose other writers may have
 * written since, the next line starts on a line of its own.
 */
static void
event_log_failed(const char *buf, size_t written, size_t nlines)
{
	struct stat	 st;
	const char	*nl;
	size_t		 whole = 0, in = 0;
	off_t		 end, frag;

	if (log_async)
		return;		/* a pipe: lines go whole or not at all */
	for (nl = buf; (nl = memchr(nl, '\n', written - (size_t)(nl - buf))) !=
	    NULL; nl++) {
		in++;
		whole = (size_t)(nl - buf) + 1;
	}
	log_dropped += nlines - in;
	if ((frag = (off_t)(written - whole)) == 0)
		return;
	/* Appending, forkqd's offset is the end of its own write: only if
	 * nobody wrote after it is the fragment the file's end. */
	if (log_path != NULL && fstat(log_fd, &st) == 0 && S_ISREG(st.st_mode) &&
	    (end = lseek(log_fd, 0, SEEK_CUR)) == st.st_size &&
	    end >= frag && ftruncate(log_fd, end - frag) == 0)
		return;
	log_torn = 1;
}

/* Writes all of buf to the log; 0, or -1 with written bytes of it in. */
static int
event_log_write(const char *buf, size_t len, size_t *written)
{
	ssize_t	n;

	*written = 0;
	while (*written < len) {
		n = write(log_fd, buf + *written,
		    log_chunk(buf + *written, len - *written));
		if (n == -1 && errno == EINTR)
			continue;
		if (n == 0)
			errno = EIO;	/* not EAGAIN left from before */
		if (n <= 0)
			return (-1);
		*written += n;
	}
	return (0);
}

/*
 * Writes nlines whole lines (len bytes) to the log. Returns -1 when some
 * could be neither written nor kept for later: counted in log_dropped,
 * except on a pipe whose reader is gone (nobody to tell).
 */
static int
event_write_log(const char *line, size_t len, size_t nlines)
{
	size_t	written;

	if (log_async && log_pend_len > 0) {
		if (log_pend_len + len > LOG_PENDING_MAX) {
			log_dropped += nlines;
			return (-1);
		}
		goto keep;
	}
	if (log_torn) {
		if (event_log_write("\n", 1, &written) == -1) {
			log_dropped += nlines;
			return (-1);
		}
		log_torn = 0;
	}
	if (event_log_write(line, len, &written) == -1) {
		if (errno == EAGAIN && log_async) {
			line += written;
			len -= written;
			goto keep;
		}
		/* Nowhere to report it now: the log is the report. */
		event_log_failed(line, written, nlines);
		return (-1);
	}
	return (0);
keep:
	if (log_pend_len + len > log_pend_cap) {
		log_pend_cap = log_pend_len + len + 65536;
		log_pend = xrealloc(log_pend, log_pend_cap);
	}
	memcpy(log_pend + log_pend_len, line, len);
	log_pend_len += len;
	/* Without a loop (at exit) event_close() waits for the reader. */
	if (loop != NULL)
		ev_io_start(loop, &log_io);
	return (0);
}

/*
 * A diagnostic line of log.c's (with its newline), when the event log is
 * forkqd's stderr written without blocking: it joins the events' lines,
 * whole, where a write of its own could land in the middle of one that
 * went in only in part. Returns 0 when the caller writes it itself. With
 * flush (a fatal error: forkqd exits next) it waits for the reader, as
 * at a normal exit.
 */
int
event_log_diagnostic(const char *line, size_t len, int flush)
{
	if (!log_async || log_fd != STDERR_FILENO)
		return (0);
	(void)event_write_log(line, len, 1);
	if (flush)
		event_flush_pending();
	return (1);
}

static void
event_log_io_cb(struct ev_loop *l, ev_io *w, int revents)
{
	ssize_t		n;
	size_t		off = 0;

	while (off < log_pend_len) {
		n = write(log_fd, log_pend + off,
		    log_chunk(log_pend + off, log_pend_len - off));
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && errno == EAGAIN)
			break;
		if (n <= 0) {
			off = log_pend_len;	/* the reader is gone */
			break;
		}
		off += n;
	}
	memmove(log_pend, log_pend + off, log_pend_len - off);
	log_pend_len -= off;
	if (log_pend_len > 0)
		return;
	ev_io_stop(loop, w);
	event_tell_dropped();
}

/*
 * Once the loop exists: a pipe or socket log goes non-blocking (a slow
 * reader must not stall forkqd). Files and terminals stay as they are.
 */
void
event_start(void)
{
	struct stat	st;
	int		fl;

	log_async = log_is_pipe = 0;
	ev_io_init(&log_io, event_log_io_cb, log_fd, EV_WRITE);
	if (fstat(log_fd, &st) == -1 ||
	    !(S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)))
		return;
	/* Whole lines of at most PIPE_BUF per write, blocking or not. */
	log_is_pipe = 1;
	if ((fl = fcntl(log_fd, F_GETFL)) == -1 ||
	    fcntl(log_fd, F_SETFL, fl | O_NONBLOCK) == -1)
		return;
	log_async = 1;
}

/*
 * At exit (or before a reopen): what waits goes out, but a reader that
 * does not take it within LOG_FLUSH_MS is not waited for.
 */
static void
event_flush_pending(void)
{
	struct pollfd	pfd;
	int64_t		deadline = mono_ms() + LOG_FLUSH_MS;
	ssize_t		n;
	size_t		off = 0;

	if (loop != NULL)
		ev_io_stop(loop, &log_io);
	while (off < log_pend_len && mono_ms() < deadline) {
		pfd.fd = log_fd;
		pfd.events = POLLOUT;
		if (poll(&pfd, 1, (int)(deadline - mono_ms())) <= 0)
			continue;
		n = write(log_fd, log_pend + off,
		    log_chunk(log_pend + off, log_pend_len - off));
		if (n > 0)
			off += n;
		else if (n == -1 && errno != EAGAIN && errno != EINTR)
			break;
	}
	/* What the reader did not take in time: counted, as when full. */
	for (; off < log_pend_len; off++) {
		if (log_pend[off] == '\n')
			log_dropped++;
	}
	log_pend_len = 0;
}

/*
 * May a watcher (filter, root, uid) see event line e? A task's events are
 * its owner's and root's; daemon events (task 0) are everyone's but those
 * about one user's things (a cron entry), which are that user's and
 * root's (spec 8).
 */
static int
event_visible(int64_t filter, int root, uid_t uid, struct event_line *e)
{
	uid_t	owner;

	if (filter != 0 && filter != e->task)
		return (0);
	if (root)
		return (1);
	if (e->task == 0)
		return (e->owner == -1 || e->owner == (int64_t)uid);
	/* Once per kept event: a backlog must not read the store per
	 * watcher and line, a pruned task's included. */
	if (e->owner == -2) {
		switch (task_owner(e->task, &owner)) {
		case 0:
			e->owner = (int64_t)owner;
			break;
		case 1:
			e->owner = -3;
			break;
		default:
			break;		/* ask again next time */
		}
	}
	return (e->owner == (int64_t)uid);
}

/*
 * The JSON line of an event: ts, level, event and task first, then the
 * keys of fields (may be NULL). The first four are forkqd's own words and
 * numbers (event names are literals, no quoting needed), so only fields
 * goes through the encoder, which spares building and copying a second
 * object per event: events are most of forkqd's JSON output.
 */
static char *
event_json_line(const char *ts, enum event_level level, const char *name,
    int64_t task, json_t *fields, size_t *len)
{
	char	 head[256], digits[20], *p;
	char	*line;
	size_t	 hlen, blen;
	int	 n = 0;

	/* snprintf cost more than the rest of the head: a line per event. */
	if (strlen(name) > 64)
		return (NULL);
	p = stpcpy(head, "{\"ts\":\"");
	p = stpcpy(p, ts);
	p = stpcpy(p, "\",\"level\":\"");
	p = stpcpy(p, level_names[level]);
	p = stpcpy(p, "\",\"event\":\"");
	p = stpcpy(p, name);
	*p++ = '"';
	if (task > 0) {
		p = stpcpy(p, ",\"task\":");
		do
			digits[n++] = (char)('0' + task % 10);
		while ((task /= 10) > 0);
		while (n > 0)
			*p++ = digits[--n];
	}
	hlen = (size_t)(p - head);
	if (fields != NULL && json_object_size(fields) > 0) {
		/* The fields' "{...}" follows the head, its brace a comma. */
		if ((line = proto_encode(fields, hlen, 2, &blen)) == NULL)
			return (NULL);
		line[hlen] = ',';
		*len = hlen + blen;
	} else {
		line = xmalloc(hlen + 3);
		line[hlen] = '}';
		*len = hlen + 1;
	}
	memcpy(line, head, hlen);
	line[*len] = '\n';
	line[++*len] = '\0';
	return (line);
}

/*
 * Emits event name (a literal) at level. task is the task id or 0; fields
 * (an object, may be NULL) is consumed and its keys follow ts, level, event
 * and task.
 */
void
event_emit(enum event_level level, const char *name, int64_t task,
    json_t *fields)
{
	event_emit_as(-1, level, name, task, fields);
}

/*
 * Event name (a literal) as held_event, its time now; NULL when it cannot
 * be encoded. fields is consumed.
 */
static struct held_event *
event_format(int64_t owner, enum event_level level, const char *name,
    int64_t task, json_t *fields)
{
	struct held_event	*h;
	char			 ts[RFC3339_LEN], *text, *human = NULL;
	size_t			 len;

	format_rfc3339_ms(wall_ms(), ts, sizeof ts);
	text = event_json_line(ts, level, name, task, fields, &len);
	if (log_text && text != NULL) {
		json_t		*o;
		const char	*k;
		json_t		*v;

		o = json_pack("{s:s, s:s, s:s}", "ts", ts, "level",
		    level_names[level], "event", name);
		if (task > 0)
			json_object_set_new(o, "task", json_integer(task));
		if (fields != NULL) {
			json_object_foreach(fields, k, v)
				json_object_set(o, k, v);
		}
		human = event_text_line(o);
		json_decref(o);
	}
	json_decref(fields);
	if (text == NULL) {
		free(human);
		return (NULL);
	}
	h = xcalloc(1, sizeof *h);
	h->line = text;
	h->len = len;
	h->human = human;
	h->task = task;
	h->owner = owner;
	return (h);
}

static void
held_event_free(struct held_event *h)
{
	free(h->line);
	free(h->human);
	free(h);
}

/*
 * Queues h (NULL: nothing) behind the held events, until the next commit
 * (event_release). Not sent at once when no transaction is open: the write
 * it tells of may come next and open one.
 */
static void
event_hold(struct held_event *h, int unkept)
{
	if (h == NULL)
		return;
	h->unkept = unkept;
	STAILQ_INSERT_TAIL(&held, h, entry);
}

/*
 * event_emit for a daemon event about what belongs to user owner (-1:
 * nobody's): only that user and root see it in `logs` and `watch`.
 */
void
event_emit_as(int64_t owner, enum event_level level, const char *name,
    int64_t task, json_t *fields)
{
	event_hold(event_format(owner, level, name, task, fields), 0);
}

/*
 * event_emit_as for a daemon event about a change that a failed commit
 * takes back for good (store.c keeps no journal of it: a prune, a cron
 * entry): the event is dropped with it.
 */
void
event_emit_unkept(int64_t owner, enum event_level level, const char *name,
    json_t *fields)
{
	event_hold(event_format(owner, level, name, 0, fields), 1);
}

/*
 * Writes the lines batched for the log. A log file that takes lines again
 * after it failed gets, at once, a line saying how many it missed (it
 * tells of the log, not of the store), so that whether that line went in
 * too is known here.
 */
static void
event_log_batch_flush(void)
{
	struct held_event	*report;
	uint64_t		 dropped;
	int			 logged;

	if (log_batch_lines == 0)
		return;
	logged = event_write_log(log_batch, log_batch_len, log_batch_lines);
	log_batch_len = log_batch_lines = 0;
	if (logged == 0 && !log_async && (dropped = log_dropped) > 0) {
		log_dropped = 0;
		if ((report = event_format(-1, EV_LEVEL_ERROR, "log.dropped",
		    0, json_pack("{s:I}", "lines", (json_int_t)dropped))) !=
		    NULL)
			event_send(report);
		event_log_batch_flush();
		if (log_dropped > 0)
			log_dropped += dropped;	/* that line did not go either */
	}
}

/* Adds line to the log's batch, writing the batch first if it is full. */
static void
event_log_batch_add(const char *line, size_t len)
{
	if (log_batch_len > 0 && log_batch_len + len > LOG_BATCH_MAX)
		event_log_batch_flush();
	if (log_batch_len + len > log_batch_cap) {
		log_batch_cap = MAX(log_batch_len + len, LOG_BATCH_MAX);
		log_batch = xrealloc(log_batch, log_batch_cap);
	}
	memcpy(log_batch + log_batch_len, line, len);
	log_batch_len += len;
	log_batch_lines++;
}

/*
 * Sends w event e, the one at w->next. Returns -1 when that dropped the
 * watcher, which fell too far behind (w is gone), else 0.
 */
static int
watcher_send(struct watcher *w, const struct event_line *e)
{
	const char	*line = e->spilled ? spill_read(e->spill_off, e->len) :
			    e->line;

	/* One that cannot be read back is left out, as if not kept. */
	if (line != NULL && conn_send_line(w->conn, line, e->len) == -1)
		return (-1);
	if (w->next >= w->live)
		w->behind -= e->len;
	return (0);
}

/* Empties a slot of the ring. */
static void
ring_slot_clear(struct event_line *slot)
{
	if (slot->spilled)
		spill_forget(slot->spill_off, slot->len);
	free(slot->line);
	slot->line = NULL;
	slot->spilled = 0;
}

/*
 * The oldest kept event, in slot, is about to go: a watcher that has not
 * read it yet gets it now, past its pacing, so that a slow reader of a
 * backlog loses nothing; the 16 MiB it may then fall behind
 * (conn_send_line) is what bounds it, as before the pacing.
 */
static void
event_evict(struct event_line *slot, uint64_t seq)
{
	struct watcher	*w, *next;

	TAILQ_FOREACH_SAFE(w, &watchers, entry, next) {
		if (w->next != seq || w->next >= w->end)
			continue;
		if (event_visible(w->task, w->root, w->uid, slot) &&
		    watcher_send(w, slot) == -1)
			continue;	/* dropped: w is gone */
		w->next++;
	}
}

/* The oldest kept event leaves the ring. */
static void
ring_drop_oldest(void)
{
	struct event_line	*slot = &ring[(ring_next + EVENT_RING_SIZE -
				    ring_count) % EVENT_RING_SIZE];

	event_evict(slot, ring_seq - ring_count);
	ring_bytes -= slot->len;
	ring_slot_clear(slot);
	slot->len = 0;
	ring_count--;
}

/* How many events the ring keeps, and (bytes) their lines' size. */
size_t
event_kept(size_t *bytes)
{
	*bytes = ring_bytes;
	return (ring_count);
}

/*
 * Sends held event h to the ring and the watchers, and its line to the
 * log's batch (event_log_batch_flush writes it); frees h.
 */
static void
event_send(struct held_event *h)
{
	struct event_line	*slot;
	struct watcher		*w, *next;

	/* First: a full batch is written here, and a log.dropped that
	 * follows it must come before h in the ring and to watchers too. */
	if (h->human != NULL)
		event_log_batch_add(h->human, strlen(h->human));
	else
		event_log_batch_add(h->line, h->len);

	if (ring_count == EVENT_RING_SIZE)
		ring_drop_oldest();	/* the one at ring_next */
	slot = &ring[ring_next];
	slot->len = h->len;
	if (h->len > SPILL_MIN &&
	    (slot->spill_off = spill_write(h->line, h->len)) != -1) {
		slot->spilled = 1;
		free(h->line);
	} else
		slot->line = h->line;
	slot->task = h->task;
	slot->owner = h->task > 0 ? -2 : h->owner;
	ring_bytes += slot->len;
	ring_next = (ring_next + 1) % EVENT_RING_SIZE;
	ring_count++;
	ring_seq++;
	free(h->human);
	free(h);
	while (ring_bytes > event_ring_bytes_max && ring_count > 1)
		ring_drop_oldest();
	TAILQ_FOREACH_SAFE(w, &watchers, entry, next) {
		if (ring_seq - 1 < w->end &&
		    event_visible(w->task, w->root, w->uid, slot)) {
			w->behind += slot->len;
			if (w->behind > WATCH_BEHIND_MAX) {
				conn_watch_drop(w->conn);	/* frees w */
				continue;
			}
		}
		watcher_pump(w);
	}
}

/*
 * Unless the store's transaction is still open: the held events go out in
 * order, but not, after a failed commit, those of the changes it took back
 * for good: the tasks it inserted (task ids only grow, so they are the
 * ones from its first insert on) and what event_emit_unkept told of.
 * Called after every commit attempt, and so at the end of every loop
 * pass, before anything else can emit an event.
 */
void
event_release(void)
{
	struct held_event	*h;
	int64_t			 lost_from = 0;
	int			 rolled_back;

	if (store_in_txn())
		return;
	rolled_back = store_take_rollback(&lost_from);
	while ((h = STAILQ_FIRST(&held)) != NULL) {
		STAILQ_REMOVE_HEAD(&held, entry);
		if (rolled_back && (h->unkept ||
		    (lost_from > 0 && h->task >= lost_from)))
			held_event_free(h);
		else
			event_send(h);
	}
	/* Before the answers and the watchers' lines of this commit go out
	 * (conn_flush_all): a client that has its answer finds the event in
	 * the log. */
	event_log_batch_flush();
}

/* Do events wait for the store's commit (event_release)? */
int
event_any_held(void)
{
	return (!STAILQ_EMPTY(&held));
}

/*
 * Sends w's connection the lines it may see from w->next on, while it has
 * less than WATCH_CHUNK to send. A watcher without follow ends at w->end:
 * its connection closes once that is out. Returns -1 when w was freed.
 */
static int
watcher_pump(struct watcher *w)
{
	struct event_line	*e;
	struct conn		*c = w->conn;

	for (; w->next < ring_seq && w->next < w->end; w->next++) {
		if (w->next < ring_seq - ring_count) {
			conn_watch_drop(c);	/* out of the ring: frees w */
			return (-1);
		}
		e = &ring[w->next % EVENT_RING_SIZE];
		if (!event_visible(w->task, w->root, w->uid, e))
			continue;
		if (conn_output_pending(c) >= WATCH_CHUNK)
			return (0);	/* event_watch_resume goes on */
		if (watcher_send(w, e) == -1)
			return (-1);	/* dropped: w is gone */
	}
	if (w->next == w->end) {
		conn_drop(c, NULL);
		event_unwatch(c);
		return (-1);
	}
	return (0);
}

/*
 * Sends c up to backlog kept events matching task (0 = all), oldest first,
 * then, with follow, every new one until event_unwatch; without, c closes
 * after the backlog. The caller has marked c watching.
 */
void
event_watch(struct conn *c, int64_t task, int backlog, int follow)
{
	struct watcher	*w;
	size_t		 i, found = 0;
	uint64_t	 seq, start = ring_seq;

	w = xcalloc(1, sizeof *w);
	w->conn = c;
	w->task = task;
	w->root = conn_is_root(c);
	w->uid = conn_uid(c);
	/* Walk back to find where the backlog begins. */
	for (i = 0; i < ring_count && found < (size_t)backlog; i++) {
		seq = ring_seq - 1 - i;
		if (event_visible(task, w->root, w->uid,
		    &ring[seq % EVENT_RING_SIZE])) {
			found++;
			start = seq;
		}
	}
	w->next = start;
	w->live = ring_seq;
	w->end = follow ? UINT64_MAX : ring_seq;
	TAILQ_INSERT_TAIL(&watchers, w, entry);
	(void)watcher_pump(w);
}

/* c, a watcher, has written out what it had: it reads on. */
void
event_watch_resume(struct conn *c)
{
	struct watcher	*w;

	TAILQ_FOREACH(w, &watchers, entry) {
		if (w->conn == c) {
			(void)watcher_pump(w);
			return;
		}
	}
}

void
event_unwatch(struct conn *c)
{
	struct watcher	*w, *next;

	TAILQ_FOREACH_SAFE(w, &watchers, entry, next) {
		if (w->conn == c) {
			TAILQ_REMOVE(&watchers, w, entry);
			free(w);
		}
	}
}
