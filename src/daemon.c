/*
 * daemon.c: the life of the running daemon: the loop and its signal
 * watchers, the per-pass hook that groups commits, retention, and shutdown.
 * main() in forkqd.c parses options and calls daemon_run().
 *
 * The loop is libev's, created with ev_loop_new rather than the default
 * loop: the default loop reaps every child itself with waitpid(), which
 * throws away the rusage forkqd records for each attempt. Here SIGCHLD is an
 * ordinary ev_signal watcher and forkqd reaps with wait4().
 *
 * Signals come through a signalfd (EVFLAG_SIGNALFD): libev blocks them and
 * reads them with the loop's other fds. A handler instead cost each task's
 * SIGCHLD a signal frame, an interrupted epoll_wait and a write and read of
 * libev's eventfd (4,000 pipelined /bin/true: 2.5 system calls fewer per
 * task, ~3% more tasks/s). A child inherits the mask: spawn.c empties it.
 */
#include "config.h"

#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "forkqd.h"

struct config	 config;
struct ev_loop	*loop;
int64_t		 started_mono;

static int		 shutting_down;
static ev_signal	 sig_term, sig_int, sig_hup, sig_chld;
static ev_prepare	 pass_hook;
static ev_idle		 pass_again;	/* one more pass, not blocking */
static ev_timer		 grace_timer;
static ev_timer		 retention_timer;
static ev_timer		 store_retry_timer;	/* while the store is failing */
static ev_timer		 sync_timer;	/* fsyncs what no answer waited for */
static ev_async		 sync_ended;	/* ... on the sync thread (store.c) */
static ev_async		 groups_found;	/* ... on usergroups.c's thread */

#define STORE_RETRY_INTERVAL	1.0	/* s between attempts to write again */
#define SHUTDOWN_STORE_TRIES	50	/* 0.1 s apart, at exit (store_write_kept) */

/*
 * What forkqd did by itself (attempts starting and ending, heartbeats) is
 * committed every pass but fsynced within SYNC_LATER_MS, so that a stream
 * of short tasks shares one fsync between many passes; answers never wait
 * for that timer (see store.c). After a quiet spell (no deferred fsync for
 * SYNC_QUIET_MS) the first one comes within SYNC_SOON_MS: sparse commits
 * gain nothing by waiting, and the next answer's fsync then finds less to
 * write (bench latency case, submits paced at 100/s on an idle forkqd: p50
 * 0.35-0.39 ms against 0.52-0.53; the same under load and throughput).
 */
#define SYNC_LATER_MS		10
#define SYNC_SOON_MS		2
#define SYNC_QUIET_MS		5

/* Most children reaped in one callback: a storm of exits must not starve
 * the socket and the commit (they resume on the next pass). */
#define REAP_PER_PASS		256
#define RETENTION_INTERVAL	3600.0	/* s: spec 10 says at least hourly */

static int	store_write_kept(void);

int
daemon_shutting_down(void)
{
	return (shutting_down);
}

/* The signals the loop takes; forkqd.c blocks them from its start. */
static const int	loop_signal_numbers[] = {
	SIGCHLD, SIGTERM, SIGINT, SIGHUP
};
#define NLOOP_SIGNALS \
	(sizeof loop_signal_numbers / sizeof loop_signal_numbers[0])

void
loop_signals(sigset_t *set)
{
	size_t	i;

	sigemptyset(set);
	for (i = 0; i < NLOOP_SIGNALS; i++)
		sigaddset(set, loop_signal_numbers[i]);
}

/*
 * Blocked, the loop's signals reach its signalfd. Where libev could not
 * make one (signalfd(2) refused by a seccomp filter, say), it installed
 * handlers instead, which get nothing while the signals stay blocked: no
 * task would be reaped, no SIGTERM heard. Those are unblocked.
 */
static void
loop_signals_by_handlers(void)
{
	struct sigaction	sa;
	sigset_t		handled;
	size_t			i;

	sigemptyset(&handled);
	for (i = 0; i < NLOOP_SIGNALS; i++) {
		if (sigaction(loop_signal_numbers[i], NULL, &sa) == 0 &&
		    sa.sa_handler != SIG_DFL)
			sigaddset(&handled, loop_signal_numbers[i]);
	}
	if (sigprocmask(SIG_UNBLOCK, &handled, NULL) == -1)
		log_warn("sigprocmask");
}

/* After an attempt ends: is a shutdown now complete? */
void
daemon_stopped_check(void)
{
	if (shutting_down && task_running_count() == 0)
		ev_break(loop, EVBREAK_ALL);
}

static void
grace_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	task_stop_all(STOP_SHUTDOWN);
}

static void
shutdown_begin(void)
{
	if (shutting_down) {
		/*
		 * A second request ends the grace: tasks are stopped now
		 * (SIGTERM, --kill-grace, SIGKILL); a third skips to SIGKILL.
		 */
		if (ev_is_active(&grace_timer)) {
			ev_timer_stop(loop, &grace_timer);
			task_stop_all(STOP_SHUTDOWN);
		} else
			task_stop_all(STOP_SHUTDOWN);
		return;
	}
	shutting_down = 1;
	notify_stopping();
	event_emit(EV_LEVEL_INFO, "daemon.stopping", 0, json_pack("{s:I}",
	    "running", (json_int_t)task_running_count()));
	server_close();
	ops_shutdown(0);
	ev_timer_stop(loop, &retention_timer);
	if (task_running_count() == 0) {
		ev_break(loop, EVBREAK_ALL);
		return;
	}
	ev_timer_set(&grace_timer, (double)config.shutdown_grace_ms / 1000.0,
	    0.);
	ev_timer_start(loop, &grace_timer);
}

static void
signal_cb(struct ev_loop *l, ev_signal *w, int revents)
{
	switch (w->signum) {
	case SIGTERM:
	case SIGINT:
		shutdown_begin();
		break;
	case SIGHUP:
		event_reopen_log();
		break;
	}
}

static void
sigchld_cb(struct ev_loop *l, ev_signal *w, int revents)
{
	struct rusage	ru;
	pid_t		pid;
	int		status, n;

	for (n = 0; n < REAP_PER_PASS; n++) {
		pid = wait4(-1, &status, WNOHANG, &ru);
		if (pid == -1 && errno == EINTR)
			continue;
		if (pid <= 0)
			return;
		task_reaped(pid, status, &ru);
	}
	ev_feed_event(loop, w, EV_SIGNAL);	/* more next pass */
}

/*
 * With many tasks running, their heartbeats and exits come in a stream of
 * single events: letting libev gather I/O for a millisecond turns thousands
 * of wake-ups a second into hundreds. With few tasks running, answers go
 * out at once.
 */
#define BUSY_TASKS		64
#define BUSY_COLLECT_S		0.001

static void
io_collect_adapt(void)
{
	static int	busy;
	int		now_busy = task_running_count() >= BUSY_TASKS;

	if (now_busy != busy) {
		busy = now_busy;
		ev_set_io_collect_interval(loop, busy ? BUSY_COLLECT_S : 0.);
	}
}

/* The store failed to write or sync: say so once and retry every second. */
static void
store_trouble(void)
{
	char	*cause = NULL;

	if (ev_is_active(&store_retry_timer))
		return;
	store_healthy(&cause);
	event_emit(EV_LEVEL_ERROR, "store.failed", 0, json_pack("{s:s}",
	    "error", cause != NULL ? cause : "commit failed"));
	free(cause);
	ev_timer_again(loop, &store_retry_timer);
}

/* When the last deferred fsync ended, on the monotonic clock (ms). */
static int64_t	sync_deferred_ended;

/*
 * Commits not yet on disk get their fsync within SYNC_LATER_MS, also while
 * commits fail (an outside writer holding the lock, a full disk): what
 * was committed before is still to be made durable. Not while syncs fail:
 * store_retry_cb tries every second, and a sync would fail at once, and be
 * asked again at once, each loop pass.
 */
static void
sync_later(void)
{
	int64_t	age = store_unsynced_ms(), within;

	if (store_sync_pending())
		return;	/* sync_ended_cb comes back here */
	if (store_sync_failing()) {
		ev_timer_stop(loop, &sync_timer);
		return;
	}
	if (age < 0) {
		ev_timer_stop(loop, &sync_timer);
		return;
	}
	if (!ev_is_active(&sync_timer)) {
		within = mono_ms() - sync_deferred_ended >= SYNC_QUIET_MS ?
		    SYNC_SOON_MS : SYNC_LATER_MS;
		ev_timer_set(&sync_timer, age >= within ? 0. :
		    (double)(within - age) / 1000.0, 0.);
		ev_timer_start(loop, &sync_timer);
	}
}

/* The fsync goes to the sync thread: the loop does not wait for it. */
static void
sync_timer_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	if (store_sync_start() != 0)
		store_trouble();
	else if (!store_sync_pending()) {
		sync_deferred_ended = mono_ms();
		notify_status_changed();	/* done here: no thread */
	}
}

/* From the sync thread, when its fsync ended. */
static void
sync_ended_send(void)
{
	ev_async_send(loop, &sync_ended);
}

static void
sync_ended_cb(struct ev_loop *l, ev_async *w, int revents)
{
	sync_deferred_ended = mono_ms();
	if (store_sync_finish() != 0) {
		store_trouble();
		return;
	}
	notify_status_changed();	/* its counts are those on disk */
	sync_later();	/* commits since it was asked */
}

/* From usergroups.c's thread, when a lookup ended. */
static void
groups_found_send(void)
{
	ev_async_send(loop, &groups_found);
}

/* A first start held for its user's groups may go now. */
static void
groups_found_cb(struct ev_loop *l, ev_async *w, int revents)
{
	usergroups_collect();
	sched_kick();
}

/* store_commit_as(sync), and the events that waited for it go out. */
static int
commit_with_events(int sync)
{
	int	rc;

	rc = store_commit_as(sync);
	event_release();
	return (rc);
}

/* What held answers get, from store_commit_as()'s return. */
static enum settle
settle_of(int rc)
{
	if (rc == -1 && store_commit_kept_only() && store_all_on_disk())
		return (SETTLE_KEPT);
	return (rc == 0 ? SETTLE_DONE : rc == -1 ? SETTLE_FAILED :
	    SETTLE_UNSURE);
}

/*
 * Commits what the pass wrote (and fsyncs it when sync), then sends the
 * answers that waited for it, or what replaces them when it failed.
 * dispatch_next: this pass starts tasks next, so tasks just committed need
 * no pass of their own. Returns store_commit_as()'s result.
 */
static int
commit_and_answer(int sync, int dispatch_next)
{
	int	rc, committed;

	rc = commit_with_events(sync);
	committed = rc == 0;
	if (committed && sync)
		notify_status_changed();
	if (!committed) {
		store_trouble();
		event_release();	/* store.failed, before the answers */
	}
	sync_later();
	ops_commit_settled(rc != -1);
	conn_settle_all(settle_of(rc));
	conn_flush_all();
	if (committed && store_take_inserted()) {
		/* Tasks just committed may start. */
		sched_kick();
		if (!dispatch_next)
			daemon_pass_again();
	}
	return (rc);
}

/*
 * Once per loop pass, before forkqd sleeps: go on with connections that
 * were held, start due tasks, commit everything the pass wrote in one
 * transaction, fsync it if an answer waits for it, and only then send the
 * answers. Answers already waiting (submits read this pass) are committed
 * and sent before any task starts: where spawn.c must wait for a child's
 * exec (CLONE_VFORK), that can take milliseconds on a busy machine.
 */
static void
pass_cb(struct ev_loop *l, ev_prepare *w, int revents)
{
	conn_resume_all();
	if (conn_answers_held() && commit_and_answer(1, 1) == -1) {
		conn_pass_end();
		return;		/* store_trouble() retries; nothing starts */
	}
	sched_dispatch();
	io_collect_adapt();
	commit_and_answer(conn_answers_held() || shutting_down, 0);
	conn_pass_end();
}

/*
 * Commits what the pass wrote so far, and settles what waited on it (held
 * answers, pruned output), before the processes of the pass's starts
 * exist: the attempts they write ahead (task_prepare) must be on disk
 * first, and a commit in the middle of a pass must settle like the one at
 * its end. The dispatch is over by then: tasks this commit makes startable
 * (submitted earlier in the pass) get a pass of their own. Returns
 * store_commit_as()'s result.
 */
int
daemon_commit_now(void)
{
	/* An answer held meanwhile (a task that failed at once: its wait)
	 * goes out only once on disk, as at the end of the pass. */
	return (commit_and_answer(conn_answers_held(), 0));
}

/* Runs one more loop pass without waiting for an event. */
void
daemon_pass_again(void)
{
	ev_idle_start(loop, &pass_again);
}

static void
pass_again_cb(struct ev_loop *l, ev_idle *w, int revents)
{
	ev_idle_stop(loop, w);
}

/*
 * The store failed to commit: running tasks go on, submits are refused,
 * and every second forkqd tries to write what it kept (store.c) again.
 */
static void
store_retry_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	int	rc;

	rc = store_retry();
	event_release();
	if (rc != 0)
		return;	/* still failing; the timer repeats */
	ev_timer_stop(loop, w);
	event_emit(EV_LEVEL_INFO, "store.recovered", 0, NULL);
	sched_kick();
	cron_store_recovered();
}

static void
retention_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	int64_t	n;

	n = ops_prune_batch(wall_ms() - config.retention_ms);
	if (n > 0)
		event_emit_unkept(-1, EV_LEVEL_INFO, "daemon.pruned", json_pack(
		    "{s:I}", "pruned", (json_int_t)n));
	/* A full batch: more to do, in small steps between other work; a
	 * store that refused: again in a minute. */
	w->repeat = n >= 500 ? 0.05 : n == -1 ? 60.0 : RETENTION_INTERVAL;
	ev_timer_again(loop, w);
}

/*
 * Not root, forkqd runs every client's task as its own user, and a task
 * reaches forkqd as that user, who administers it (spec 8): a socket
 * others may use (its mode, however it was made) hands them those rights.
 */
static void
warn_open_socket(void)
{
	struct stat	sb;

	if (geteuid() != 0 && stat(config.socket_path, &sb) == 0 &&
	    (sb.st_mode & 066) != 0)
		log_warnx("%s is open to others (mode %04o) and forkqd is not "
		    "root: their tasks run as uid %lu and may act as forkqd's "
		    "admin through it", config.socket_path,
		    (unsigned)(sb.st_mode & 07777), (unsigned long)geteuid());
}

/*
 * Runs forkqd until a shutdown completes: recovery of what a previous run
 * left, the socket, the loop. Returns 0, 1 when the store could not take
 * what forkqd did before it stopped (store_write_kept), or -1 with *cause
 * when the socket cannot be had.
 */
int
daemon_run(char **cause)
{
	sigset_t	signals;
	int		rc;

	if ((loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_SIGNALFD)) == NULL) {
		*cause = xstrdup("cannot create the event loop");
		return (-1);
	}
	if (rounds_init(loop, cause) == -1)
		return (-1);
	started_mono = mono_ms();
	spill_reset();	/* the ring's of a forkqd that died */
	event_start();
	ev_signal_init(&sig_term, signal_cb, SIGTERM);
	ev_signal_init(&sig_int, signal_cb, SIGINT);
	ev_signal_init(&sig_hup, signal_cb, SIGHUP);
	ev_signal_init(&sig_chld, sigchld_cb, SIGCHLD);
	ev_signal_start(loop, &sig_term);
	ev_signal_start(loop, &sig_int);
	ev_signal_start(loop, &sig_hup);
	ev_signal_start(loop, &sig_chld);
	loop_signals_by_handlers();
	ev_prepare_init(&pass_hook, pass_cb);
	ev_prepare_start(loop, &pass_hook);
	ev_idle_init(&pass_again, pass_again_cb);
	ev_init(&grace_timer, grace_cb);
	ev_init(&retention_timer, retention_cb);
	ev_init(&store_retry_timer, store_retry_cb);
	ev_init(&sync_timer, sync_timer_cb);
	ev_async_init(&sync_ended, sync_ended_cb);
	ev_async_start(loop, &sync_ended);
	store_sync_notify(sync_ended_send);
	ev_async_init(&groups_found, groups_found_cb);
	ev_async_start(loop, &groups_found);
	usergroups_notify(groups_found_send);
	store_retry_timer.repeat = STORE_RETRY_INTERVAL;
	if (config.retention_ms > 0) {
		retention_timer.repeat = 60.0;	/* first pass soon after start */
		ev_timer_again(loop, &retention_timer);
	}

	cgroup_init(config.cgroup_mode);
	sched_init();	/* first: it refuses to start without the paused list */
	task_recover();
	task_release_unreleased();
	commit_with_events(1);
	cron_init();
	if (server_listen(config.socket_path, config.socket_mode,
	    config.socket_gid, cause) == -1)
		return (-1);
	warn_open_socket();
	trash_start(config.state_dir);
	event_emit(EV_LEVEL_INFO, "daemon.started", 0, json_pack(
	    "{s:s, s:I, s:s, s:s, s:i}", "version", FORKQ_VERSION,
	    "pid", (json_int_t)getpid(), "socket", config.socket_path,
	    "state_dir", config.state_dir, "workers", config.workers));
	notify_ready();

	ev_run(loop, 0);
	notify_stop();

	event_emit(EV_LEVEL_INFO, "daemon.stopped", 0, json_pack("{s:I}",
	    "running", (json_int_t)task_running_count()));
	/* Waits on tasks the grace did not see end. */
	ops_shutdown(1);
	/* The loop may have stopped inside a callback: settle what it left. */
	rc = commit_with_events(1);
	ops_commit_settled(rc != -1);
	trash_stop();
	conn_settle_all(settle_of(rc));
	conn_flush_all();
	conn_close_all();
	server_close();
	cgroup_fini();
	task_release_drop();
	usergroups_notify(NULL);	/* before the loop it wakes goes */
	usergroups_free_all();
	store_sync_notify(NULL);	/* likewise */
	ev_async_stop(loop, &sync_ended);
	ev_async_stop(loop, &groups_found);
	rounds_fini(loop);
	/*
	 * Where libev took the signals by handlers, one coming after the loop
	 * is freed (an orphan's end, a second SIGTERM) would be fed to it:
	 * blocked, they wait for the exit. Not by ev_signal_stop, which
	 * unblocks them from a signalfd, and a SIGTERM would then end forkqd
	 * before its store is closed.
	 */
	loop_signals(&signals);
	if (sigprocmask(SIG_BLOCK, &signals, NULL) == -1)
		log_warn("sigprocmask");
	ev_loop_destroy(loop);
	loop = NULL;
	return (store_write_kept() == 0 ? 0 : 1);
}

/*
 * At the end of a shutdown, while the store refuses writes (a full disk):
 * what forkqd kept to write again would go with it, and the next start
 * would find the tasks it ran still running, and record them lost. A few
 * more tries; if they fail, the loss is said, and the exit is not a
 * graceful one. Returns 0 when nothing is left unwritten.
 */
static int
store_write_kept(void)
{
	struct timespec	 pause = { 0, 100 * 1000 * 1000 };
	char		*cause = NULL;
	int		 tries;

	for (tries = 0; store_healthy(&cause) == -1; tries++) {
		if (tries == SHUTDOWN_STORE_TRIES) {
			log_warnx("store: %s; forkqd stops without its last "
			    "changes known to be on disk: the next start may "
			    "find attempts it ended still running, and record "
			    "them as lost", cause);
			free(cause);
			return (-1);
		}
		free(cause);
		cause = NULL;
		nanosleep(&pause, NULL);
		(void)store_retry();
		event_release();
	}
	return (0);
}
