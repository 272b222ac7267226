/*
 * conn.c: one client connection: non-blocking reads into a line buffer,
 * framing (one JSON object per line, at most FORKQ_MAX_LINE), dispatch of
 * each request to ops.c, and buffered answers.
 *
 * Invariants:
 * - Answers are only written from conn_flush_all(), which forkqd calls once
 *   per loop pass after the store committed: nothing is acknowledged before
 *   it is on disk, and one commit covers every request of the pass.
 * - A connection handles one request at a time; while an op holds it
 *   (wait, output with wait_ms) later lines stay buffered, so answers come
 *   back in request order.
 * - A connection is freed only from the top of a callback or the flush, so
 *   no caller ever holds a freed conn.
 */
#include "config.h"

#include <sys/queue.h>
#include <sys/socket.h>

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forkqd.h"

#define CONN_READ_CHUNK		(64 * 1024)
#define CONN_OUT_HIGH		(4 * 1024 * 1024)	/* stop reading */
#define CONN_OUT_KEEP		(64 * 1024)	/* output buffer kept when empty */
/*
 * All connections' unsent answers: past it, a connection that has some
 * is held too. 4 MiB each is no bound on hundreds of clients that send
 * and never read (300 of them took forkqd to 1.5 GB); one that reads its
 * answers has next to none unsent, and is not held.
 */
#define CONN_OUT_ALL_HIGH	(32 * 1024 * 1024)
#define CONN_WATCH_MAX		(16 * 1024 * 1024)	/* drop a watcher */
/*
 * All watchers' unsent lines: past it, a watcher with CONN_WATCH_LAG or
 * more of its own unsent is dropped too. 16 MiB each is no bound on
 * watchers that never read (400 took forkqd to 6.8 GB); one that reads
 * keeps up and has next to none, and is not dropped for the others.
 */
#define CONN_WATCH_ALL_MAX	(64 * 1024 * 1024)
#define CONN_WATCH_LAG		(1024 * 1024)
/* A dropped watcher that reads nothing for this long is closed. */
#define CONN_DROP_LINGER_S	10.0
#define CONN_HUP_CHECK_S	2.0	/* a half-closed client still there? */

/*
 * Most requests handled as they are read in one loop pass, over all
 * connections, and again most handled of what earlier passes left
 * (conn_resume_all): a client that pipelines thousands of submits must not
 * keep the exits and starts of tasks (and the other clients) waiting while
 * it is served. The rest waits, unread, for the next passes.
 */
#define CONN_REQUESTS_PER_PASS	256
/*
 * And most handled for this long: one request may cost a thousand times
 * another (a list of a MiB against a submit), and 256 lists held forkqd's
 * timers for 10 s. A pipelined burst of submits does not reach it.
 */
#define CONN_PASS_BUDGET_MS	20

/*
 * What is held behind the pass's commit, and what may replace it when the
 * commit (or its fsync) fails.
 */
enum staged_kind {
	STAGED_WRITE,	/* the answer of a change: if_failed if it failed */
	STAGED_READ,	/* an answer that read the store: "ask again" */
	STAGED_LINE,	/* an error answer or an event line: as it is */
};

struct staged {
	enum staged_kind	 kind;
	char			*text;
	size_t			 len;
	const char		*if_failed;	/* STAGED_WRITE's message, static */
	TAILQ_ENTRY(staged)	 entry;
};

struct conn {
	int			 fd;
	ev_io			 rio;
	ev_io			 wio;
	char			*in;
	size_t			 in_len;
	size_t			 in_cap;
	size_t			 in_scanned;	/* of in, known to hold no '\n' */
	char			*out;
	size_t			 out_len;
	size_t			 out_cap;
	size_t			 staged_len;	/* bytes in staged */
	uid_t			 uid;
	gid_t			 gid;
	pid_t			 pid;
	int			 busy;		/* an op holds the connection */
	int			 resume;	/* busy ended: process input */
	int			 backlog;	/* lines left for a later pass */
	int			 out_full;	/* its answers wait for the client */
	int			 watching;
	int			 eof;		/* the client sent all it will */
	int			 closing;	/* close once the output is out */
	int			 dropped;	/* a watcher let go: lingers */
	int			 out_mid_line;	/* out starts inside a line */
	ev_timer		 hup;		/* after eof: is the client gone? */
	TAILQ_HEAD(, staged)	 staged;	/* answers awaiting the commit */
	TAILQ_ENTRY(conn)	 entry;
};

static TAILQ_HEAD(, conn)	conns = TAILQ_HEAD_INITIALIZER(conns);
static size_t			nconns;

static void	conn_read_cb(struct ev_loop *, ev_io *, int);
static void	conn_write_cb(struct ev_loop *, ev_io *, int);
static void	conn_hup_cb(struct ev_loop *, ev_timer *, int);
static void	conn_process(struct conn *);

size_t
conn_count(void)
{
	return (nconns);
}

uid_t
conn_uid(struct conn *c)
{
	return (c->uid);
}

gid_t
conn_gid(struct conn *c)
{
	return (c->gid);
}

/* Root, or the user forkqd runs as, administers the daemon (spec 8). */
int
conn_is_root(struct conn *c)
{
	return (admit_is_admin(c->uid));
}

/* A client admit.c took (conn_free gives its place back). */
void
conn_accept(int fd, uid_t uid, gid_t gid, pid_t pid)
{
	struct conn	*c;

	c = xcalloc(1, sizeof *c);
	c->fd = fd;
	c->uid = uid;
	c->gid = gid;
	c->pid = pid;
	TAILQ_INIT(&c->staged);
	ev_io_init(&c->rio, conn_read_cb, fd, EV_READ);
	c->rio.data = c;
	ev_io_init(&c->wio, conn_write_cb, fd, EV_WRITE);
	c->wio.data = c;
	ev_timer_init(&c->hup, conn_hup_cb, CONN_HUP_CHECK_S,
	    CONN_HUP_CHECK_S);
	c->hup.data = c;
	ev_io_start(loop, &c->rio);
	TAILQ_INSERT_TAIL(&conns, c, entry);
	nconns++;
}

/* Answers held, over all connections, until the open transaction commits. */
static size_t	 staged_count;

/* Requests handled in this phase of the pass (CONN_REQUESTS_PER_PASS). */
static unsigned	 pass_requests;
static int64_t	 pass_began;	/* mono ms of its first */

/*
 * conn_output_pending() over all connections but watchers, whose lines
 * each has its own bound (CONN_WATCH_MAX): a lagging `forkq logs -f`
 * must not hold every other client.
 */
static size_t	 out_all;
static size_t	 watch_all;	/* the same over watchers */

/* c's unsent bytes changed by delta: counted in out_all or watch_all. */
static void
out_count(const struct conn *c, ssize_t delta)
{
	if (c->watching)
		watch_all += delta;
	else
		out_all += delta;
}

/* Has this phase of the pass had its share of requests, in number or time? */
static int
pass_spent(void)
{
	return (pass_requests >= CONN_REQUESTS_PER_PASS ||
	    (pass_requests > 0 &&
	    mono_ms() - pass_began >= CONN_PASS_BUDGET_MS));
}

/* What c has to send, whether the commit let it out yet or not. */
size_t
conn_output_pending(const struct conn *c)
{
	return (c->out_len + c->staged_len);
}

/* Do c's unsent answers hold its requests (CONN_OUT_HIGH, _ALL_HIGH)? */
static int
conn_output_holds(const struct conn *c)
{
	size_t	pending = conn_output_pending(c);

	return (pending >= CONN_OUT_HIGH ||
	    (pending > 0 && out_all >= CONN_OUT_ALL_HIGH));
}

/*
 * Reads c unless something holds its input back: answers piling up, lines
 * of its own still to handle, a held request with more than a line
 * waiting, or the end of its input. Called again when any of those may
 * have changed.
 */
static void
conn_read_update(struct conn *c)
{
	if (c->eof || c->closing || c->backlog || c->out_full ||
	    conn_output_holds(c) ||
	    (c->busy && c->in_len > FORKQ_MAX_LINE)) {
		ev_io_stop(loop, &c->rio);
		/*
		 * Held by an op with its input unread, c would learn of the
		 * client's going only from a read: the op (a wait on a task
		 * that never ends) would keep its fd for ever. Look now and
		 * then instead, as after its end of input.
		 */
		if (c->busy && !c->eof && !ev_is_active(&c->hup))
			ev_timer_start(loop, &c->hup);
	} else if (!ev_is_active(&c->rio))
		ev_io_start(loop, &c->rio);
}

static void
staged_free(struct conn *c, struct staged *st)
{
	c->staged_len -= st->len;
	out_count(c, -(ssize_t)st->len);
	staged_count--;
	free(st->text);
	free(st);
}

static void
conn_free(struct conn *c)
{
	struct staged	*st;

	while ((st = TAILQ_FIRST(&c->staged)) != NULL) {
		TAILQ_REMOVE(&c->staged, st, entry);
		staged_free(c, st);
	}
	ev_io_stop(loop, &c->rio);
	ev_io_stop(loop, &c->wio);
	ev_timer_stop(loop, &c->hup);
	event_unwatch(c);
	ops_conn_gone(c);
	close(c->fd);
	admit_release(c->uid);
	TAILQ_REMOVE(&conns, c, entry);
	nconns--;
	out_count(c, -(ssize_t)c->out_len);
	free(c->in);
	free(c->out);
	free(c);
}

static void
conn_append(struct conn *c, const char *data, size_t len)
{
	if (len == 0)
		return;
	if (c->out_len + len > c->out_cap) {
		while (c->out_len + len > c->out_cap)
			c->out_cap = c->out_cap == 0 ? 4096 : c->out_cap * 2;
		c->out = xrealloc(c->out, c->out_cap);
	}
	memcpy(c->out + c->out_len, data, len);
	c->out_len += len;
	out_count(c, (ssize_t)len);
}

/*
 * Holds text (consumed) until the commit settles; if_failed, a static
 * message, is what a failed commit answers instead.
 */
static void
conn_stage(struct conn *c, enum staged_kind kind, char *text, size_t len,
    const char *if_failed)
{
	struct staged	*st;

	st = xcalloc(1, sizeof *st);
	st->kind = kind;
	st->text = text;
	st->len = len;
	st->if_failed = if_failed;
	TAILQ_INSERT_TAIL(&c->staged, st, entry);
	c->staged_len += len;
	out_count(c, (ssize_t)len);
	staged_count++;
}

/* Does any answer wait for the disk? Then this pass commits and syncs. */
int
conn_answers_held(void)
{
	return (staged_count > 0);
}

/* Do answers of c wait for the disk (so a new one comes after them)? */
int
conn_has_held(const struct conn *c)
{
	return (!TAILQ_EMPTY(&c->staged));
}

/* Appends, or stages behind answers that wait for the commit. */
static void
conn_output(struct conn *c, const char *data, size_t len)
{
	char	*copy;

	if (TAILQ_EMPTY(&c->staged)) {
		conn_append(c, data, len);
		return;
	}
	copy = xmalloc(len + 1);
	memcpy(copy, data, len);
	copy[len] = '\0';
	conn_stage(c, STAGED_LINE, copy, len, NULL);
}

/*
 * Queues one line (with its newline) for c. A watcher that has fallen
 * CONN_WATCH_MAX behind is dropped, with a last line saying so: then -1
 * (event.c's watcher of c is gone), else 0.
 */
int
conn_send_line(struct conn *c, const char *line, size_t len)
{
	if (c->closing)
		return (0);
	if (c->watching && (conn_output_pending(c) + len > CONN_WATCH_MAX ||
	    (watch_all + len > CONN_WATCH_ALL_MAX &&
	    conn_output_pending(c) >= CONN_WATCH_LAG))) {
		conn_watch_drop(c);
		return (-1);
	}
	conn_output(c, line, len);
	return (0);
}

/* (Re)starts dropped watcher c's wait for it to read (conn_hup_cb). */
static void
conn_linger(struct conn *c)
{
	ev_timer_stop(loop, &c->hup);
	ev_timer_set(&c->hup, CONN_DROP_LINGER_S, 0.);
	ev_timer_start(loop, &c->hup);
}

/*
 * Drops watcher c, which fell too far behind, with a last line saying so
 * (an event like any other: every event has ts, spec 6).
 */
void
conn_watch_drop(struct conn *c)
{
	char	ts[RFC3339_LEN], dropped[256], *nl;
	size_t	keep;
	int	n;

	event_unwatch(c);
	/*
	 * What it has not read goes, but for the rest of a line it read in
	 * part: a watcher that reads no more would keep it for good.
	 */
	if (c->out_len > 0) {
		nl = memchr(c->out, '\n', c->out_len);
		keep = !c->out_mid_line ? 0 : nl != NULL ?
		    (size_t)(nl - c->out) + 1 : c->out_len;
		out_count(c, -(ssize_t)(c->out_len - keep));
		c->out_len = keep;
		c->out_cap = keep + 256;	/* and the notice */
		c->out = xrealloc(c->out, c->out_cap);
	}
	format_rfc3339_ms(wall_ms(), ts, sizeof ts);
	n = snprintf(dropped, sizeof dropped, "{\"ts\":\"%s\","
	    "\"level\":\"warn\",\"event\":\"watch.dropped\","
	    "\"message\":\"this watcher fell too far behind and was "
	    "disconnected\"}\n", ts);
	if (n > 0 && (size_t)n < sizeof dropped)
		conn_output(c, dropped, (size_t)n);
	c->closing = 1;
	ev_io_start(loop, &c->wio);
	/* Nor its fd: closed if it reads nothing for a while. */
	c->dropped = 1;
	conn_linger(c);
}

/* The text of answer o (consumed), with its newline. */
static char *
answer_text(json_t *o)
{
	char	*text;
	size_t	 len;

	text = proto_encode(o, 0, 2, &len);
	json_decref(o);
	if (text == NULL)
		return (xstrdup("{\"ok\":false,\"error\":{\"code\":"
		    "\"internal\",\"message\":\"cannot encode the answer\"}}\n"));
	/* The ops keep their answers within a line; this is the last net. */
	if (len + 1 > FORKQ_MAX_LINE) {
		free(text);
		return (xstrdup("{\"ok\":false,\"error\":{\"code\":"
		    "\"too_large\",\"message\":\"the answer would be longer "
		    "than 1 MiB\"}}\n"));
	}
	text[len] = '\n';
	text[len + 1] = '\0';
	return (text);
}

/*
 * Queues answer o (consumed) for c. While something forkqd wrote is not on
 * disk yet (an open transaction, a commit waiting for its fsync) the
 * answer may tell of it (a task that just ended, say), so it waits for the
 * commit and fsync at the end of the pass like the answers of writes do:
 * no answer gets ahead of the disk.
 */
void
conn_send(struct conn *c, json_t *o)
{
	/* An error tells of nothing in the store: it need not be replaced. */
	enum staged_kind	 kind = json_is_false(json_object_get(o, "ok")) ?
	    STAGED_LINE : STAGED_READ;
	char			*line = answer_text(o);

	if (!store_all_on_disk())
		conn_stage(c, kind, line, strlen(line), NULL);
	else {
		conn_output(c, line, strlen(line));
		free(line);
	}
}

/*
 * Queues answer o (consumed) for c at once: for answers made only of what
 * is committed (and of forkqd's own live facts), which need not wait.
 */
void
conn_send_now(struct conn *c, json_t *o)
{
	char	*line = answer_text(o);

	conn_output(c, line, strlen(line));
	free(line);
}

/*
 * Queues answer o (consumed) of a request that wrote to the store: it goes
 * out once this pass's commit succeeded; if the commit failed, an
 * "unavailable" error with message if_failed (static) goes instead. It is
 * built only then: most passes commit.
 */
void
conn_send_durable(struct conn *c, json_t *o, const char *if_failed)
{
	char	*line = answer_text(o);

	conn_stage(c, STAGED_WRITE, line, strlen(line), if_failed);
}

/*
 * After the pass's commit: release held answers, or what replaces them
 * when the commit failed (an answer's if_failed error, or for an answer that only
 * told of the store, an error to ask again) or when its fsync failed (an
 * error saying the change is made but not known to be on disk). A commit
 * that could not begin, with what came before it on disk (SETTLE_KEPT),
 * fails the changes only: the reads waited for that disk alone.
 */
void
conn_settle_all(enum settle how)
{
	struct conn	*c;
	struct staged	*st;
	json_t		*instead;
	char		*text;

	TAILQ_FOREACH(c, &conns, entry) {
		while ((st = TAILQ_FIRST(&c->staged)) != NULL) {
			TAILQ_REMOVE(&c->staged, st, entry);
			instead = NULL;
			if (how == SETTLE_UNSURE && st->kind == STAGED_WRITE)
				instead = proto_error("unavailable", "the "
				    "change was committed but could not be "
				    "confirmed on disk (fsync failed): look "
				    "before trying again");
			else if ((how == SETTLE_FAILED ||
			    how == SETTLE_KEPT) && st->kind == STAGED_WRITE)
				instead = proto_error("unavailable", "%s",
				    st->if_failed);
			else if (how == SETTLE_FAILED &&
			    st->kind == STAGED_READ)
				instead = proto_error("unavailable", "the "
				    "database could not commit what this "
				    "answer told of: ask again");
			else if (how == SETTLE_UNSURE &&
			    st->kind == STAGED_READ)
				instead = proto_error("unavailable", "what "
				    "this answer told of could not be "
				    "confirmed on disk (fsync failed): ask "
				    "again");
			if (instead != NULL) {
				text = answer_text(instead);
				conn_append(c, text, strlen(text));
				free(text);
			} else
				conn_append(c, st->text, st->len);
			staged_free(c, st);
		}
	}
}

/* The op that held c is over: go on with its buffered requests. */
void
conn_done(struct conn *c)
{
	c->busy = 0;
	c->resume = 1;
	conn_read_update(c);
}

/* An op holds c until conn_done: later requests wait their turn. */
void
conn_hold(struct conn *c)
{
	c->busy = 1;
}

/* Sends a last line and closes c once it is out. */
void
conn_drop(struct conn *c, const char *line)
{
	if (line != NULL)
		conn_append(c, line, strlen(line));
	c->closing = 1;
	ev_io_stop(loop, &c->rio);
	/* Its flush closes it, also where no pass end would come soon. */
	ev_io_start(loop, &c->wio);
}

static int
line_is_blank(const char *s, size_t len)
{
	size_t	i;

	for (i = 0; i < len; i++) {
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
			return (0);
	}
	return (1);
}

static void
conn_request(struct conn *c, const char *line, size_t len)
{
	json_error_t	 err;
	json_t		*req;

	if (line_is_blank(line, len))
		return;
	req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &err);
	if (req == NULL && json_error_code(&err) == json_error_null_character) {
		/* jansson's text names its own flag, not what was wrong. */
		conn_send(c, proto_error("bad_request", "malformed JSON: a "
		    "string holds \\u0000 (NUL), which no field takes (byte "
		    "%d)", err.position));
		return;
	}
	if (req == NULL) {
		conn_send(c, proto_error("bad_request", "malformed JSON: %s",
		    err.text));
		return;
	}
	if (!json_is_object(req)) {
		json_decref(req);
		conn_send(c, proto_error("bad_request",
		    "a request must be a JSON object"));
		return;
	}
	ops_dispatch(c, req);
	json_decref(req);
}

/*
 * Handles every complete line in c's buffer while nothing holds c: its
 * own answers piling up (a client that sends and does not read) hold it
 * until conn_flush has written enough of them.
 */
static void
conn_process(struct conn *c)
{
	char	*nl;
	size_t	 off = 0, len;

	/*
	 * A line that comes a little at a time is searched for its end
	 * from where the last search stopped: searched whole at each read,
	 * 20 clients adding a byte a ms to a 1 MB line took 85% of a core.
	 */
	c->resume = 0;
	c->backlog = 0;
	while (!c->busy && !c->watching && !c->closing && off < c->in_len) {
		if (conn_output_holds(c)) {
			c->out_full = 1;
			break;
		}
		if (pass_spent()) {
			/* Behind the others if it had its turn: clients take
			 * turns, and one that had none keeps its place. */
			c->backlog = c->resume = 1;
			if (off > 0) {
				TAILQ_REMOVE(&conns, c, entry);
				TAILQ_INSERT_TAIL(&conns, c, entry);
			}
			daemon_pass_again();
			break;
		}
		nl = memchr(c->in + off + c->in_scanned, '\n',
		    c->in_len - off - c->in_scanned);
		if (nl == NULL) {
			if (c->in_len - off >= FORKQ_MAX_LINE)
				goto too_large;
			if (!c->eof) {
				c->in_scanned = c->in_len - off;
				break;
			}
			nl = c->in + c->in_len;	/* last line, unterminated */
		}
		c->in_scanned = 0;
		len = nl - (c->in + off);
		if (len + 1 > FORKQ_MAX_LINE)
			goto too_large;
		if (!line_is_blank(c->in + off, len) && pass_requests++ == 0)
			pass_began = mono_ms();
		conn_request(c, c->in + off, len);
		off += len + 1;
	}
	if (off > c->in_len)
		off = c->in_len;
	if (off > 0) {
		memmove(c->in, c->in + off, c->in_len - off);
		c->in_len -= off;
	}
	if (c->eof && c->in_len == 0 && !c->busy && !c->watching)
		c->closing = 1;
	conn_read_update(c);
	return;

too_large:
	conn_send(c, proto_error("too_large", "request line over %d bytes",
	    FORKQ_MAX_LINE));
	c->in_len = c->in_scanned = 0;
	conn_drop(c, NULL);
}

/*
 * After end of input, or while its input waits unread: has the client
 * closed the connection (held answers and watch streams have nobody to go
 * to), or only shut its writing side, still reading (spec 7: one answer
 * per request)?
 */
static int
peer_gone(int fd)
{
	struct pollfd	pfd = { .fd = fd, .events = POLLOUT };

	if (poll(&pfd, 1, 0) == -1)
		return (1);
	return ((pfd.revents & (POLLHUP | POLLERR)) != 0);
}

static void
conn_hup_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	struct conn	*c = w->data;

	if (c->dropped)
		conn_free(c);			/* lingered long enough */
	else if (!c->busy && !c->watching)
		ev_timer_stop(loop, w);		/* answered: closing anyway */
	else if (peer_gone(c->fd))
		conn_free(c);
}

static void
conn_read_cb(struct ev_loop *l, ev_io *w, int revents)
{
	struct conn	*c = w->data;
	ssize_t		 n;

	if (c->backlog) {	/* what it sent before comes first */
		ev_io_stop(loop, w);
		return;
	}
	if (c->in_cap - c->in_len < CONN_READ_CHUNK) {
		/* Twice as much: a line read a byte at a time is not copied
		 * whole at each read. */
		c->in_cap = c->in_len + CONN_READ_CHUNK > 2 * c->in_cap ?
		    c->in_len + CONN_READ_CHUNK : 2 * c->in_cap;
		c->in = xrealloc(c->in, c->in_cap);
	}
	n = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
	if (n == -1) {
		if (errno == EAGAIN || errno == EINTR)
			return;
		conn_free(c);
		return;
	}
	if (n == 0) {
		ev_io_stop(loop, w);
		if ((c->watching || (c->busy && c->in_len == 0)) &&
		    peer_gone(c->fd)) {
			conn_free(c);
			return;
		}
		/* Only shut for writing: what is held still gets answered,
		 * unless the client closes meanwhile (looked at now and
		 * then: nothing else would tell). */
		c->eof = 1;
		if (c->watching || c->busy)
			ev_timer_start(loop, &c->hup);
	}
	c->in_len += n;
	if (c->watching) {
		/* A watcher's input means nothing. */
		c->in_len = c->in_scanned = 0;
		return;
	}
	conn_process(c);
}

/*
 * After a write: once c's answers hold it no more (conn_output_holds), the
 * lines they held back go on, from the next pass.
 */
/* Lets c's held lines go on from the next pass, if nothing holds them. */
static int
conn_output_release(struct conn *c)
{
	if (!c->out_full || conn_output_holds(c))
		return (0);
	c->out_full = 0;
	c->resume = 1;
	daemon_pass_again();
	return (1);
}

static void
conn_output_drained(struct conn *c)
{
	if (c->watching && !c->closing) {
		event_watch_resume(c);
		if (c->out_len > 0)
			ev_io_start(loop, &c->wio);
	}
	(void)conn_output_release(c);
	conn_read_update(c);
}

/*
 * All connections' answers went below CONN_OUT_ALL_HIGH: those held for
 * the others' go on too, not only the one whose client read.
 */
static void
conn_output_all_drained(void)
{
	struct conn	*c, *next;

	TAILQ_FOREACH_SAFE(c, &conns, entry, next) {
		if (conn_output_release(c))
			conn_read_update(c);
	}
}

/* Writes what it can; returns -1 when c was freed. */
static int
conn_flush(struct conn *c)
{
	ssize_t	n;
	size_t	off = 0;
	int	crossed;

	while (off < c->out_len) {
		n = write(c->fd, c->out + off, c->out_len - off);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && errno == EAGAIN)
			break;
		if (n <= 0) {
			conn_free(c);
			return (-1);
		}
		off += n;
	}
	if (off > 0) {
		c->out_mid_line = c->out[off - 1] != '\n';
		if (c->dropped)
			conn_linger(c);		/* it reads: not yet */
		memmove(c->out, c->out + off, c->out_len - off);
		c->out_len -= off;
		/* A watcher's are counted apart (CONN_WATCH_ALL_MAX). */
		crossed = !c->watching && out_all >= CONN_OUT_ALL_HIGH &&
		    out_all - off < CONN_OUT_ALL_HIGH;
		out_count(c, -(ssize_t)off);
		if (crossed)
			conn_output_all_drained();
	}
	if (c->out_len > 0) {
		ev_io_start(loop, &c->wio);
		conn_output_drained(c);
		return (0);
	}
	ev_io_stop(loop, &c->wio);
	/*
	 * All out: a buffer grown for a burst of large answers (4 MiB and
	 * more) goes, or every client that once had one would keep it.
	 */
	if (c->out_cap > CONN_OUT_KEEP) {
		free(c->out);
		c->out = NULL;
		c->out_cap = 0;
	}
	/* Not before its held answers are out: the flush after the pass's
	 * commit comes back for it. */
	if (c->closing && TAILQ_EMPTY(&c->staged)) {
		conn_free(c);
		return (-1);
	}
	conn_output_drained(c);
	return (0);
}

static void
conn_write_cb(struct ev_loop *l, ev_io *w, int revents)
{
	conn_flush(w->data);
}

/* Goes on with connections whose held request ended this pass. */
void
conn_resume_all(void)
{
	struct conn	*c, *next;

	pass_requests = 0;	/* a share of their own: no backlog starves */
	TAILQ_FOREACH_SAFE(c, &conns, entry, next) {
		/* Those after wait for another pass, which comes at once. */
		if (pass_spent()) {
			daemon_pass_again();
			break;
		}
		if (c->resume)
			conn_process(c);
	}
}

/*
 * The pass is over: requests read before the next one have a share of
 * their own, and come before what waits in backlogs (conn_resume_all), so
 * a lone request is not kept behind a pipelined burst.
 */
void
conn_pass_end(void)
{
	pass_requests = 0;
}

/* After the commit of a pass: send every queued answer. */
void
conn_flush_all(void)
{
	struct conn	*c, *next;

	TAILQ_FOREACH_SAFE(c, &conns, entry, next) {
		if (c->out_len > 0 || c->closing)
			conn_flush(c);
	}
}

void
conn_close_all(void)
{
	struct conn	*c;

	while ((c = TAILQ_FIRST(&conns)) != NULL)
		conn_free(c);
}

/* c now streams events until the client goes (the watch op). */
void
conn_set_watching(struct conn *c)
{
	/* Its lines are a watcher's from now on, out of out_all. */
	if (!c->watching) {
		out_all -= conn_output_pending(c);
		watch_all += conn_output_pending(c);
	}
	c->watching = 1;
}
