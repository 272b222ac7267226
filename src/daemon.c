/*
 * daemon.c: the life of the running daemon: the loop and its signal
 * watchers, the per-pass hook that groups commits, retention, and shutdown.
 * main() in forkqd.c parses options and calls daemon_run().
 *
 * The loop is libev's, created with ev_loop_new rather than the default
 * loop: the default loop reaps every child itself with waitpid(), which
 * throws away the rusage forkqd records for each attempt. Here SIGCHLD is an
 * ordinary ev_signal watcher and forkqd reaps with wait4().
 */
#include "config.h"

#include <sys/resource.h>
#include <sys/wait.h>

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
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
static ev_timer		 commit_timer;	/* ends a transaction left open */

#define STORE_RETRY_INTERVAL	1.0	/* s between attempts to write again */

/*
 * Group commit. A transaction that no answer waits for (attempts starting
 * and ending, heartbeats) stays open for up to GROUP_COMMIT_MS or
 * GROUP_COMMIT_MAX changes, so that a stream of short tasks shares one
 * fsync between many passes instead of paying one per pass. An answer,
 * a shutdown or the limits end it at the end of the pass.
 */
#define GROUP_COMMIT_MS		10
#define GROUP_COMMIT_MAX	1024

/* Most children reaped in one callback: a storm of exits must not starve
 * the socket and the commit (they resume on the next pass). */
#define REAP_PER_PASS		256
#define RETENTION_INTERVAL	3600.0	/* s: spec 10 says at least hourly */

int
daemon_shutting_down(void)
{
	return (shutting_down);
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
	ops_shutdown();
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

	/* Freed slots go to the next tasks before what ended is recorded. */
	task_hold_records();
	for (n = 0; n < REAP_PER_PASS; n++) {
		pid = wait4(-1, &status, WNOHANG, &ru);
		if (pid == -1 && errno == EINTR)
			continue;
		if (pid <= 0)
			break;
		task_reaped(pid, status, &ru);
	}
	if (n == REAP_PER_PASS)
		ev_feed_event(loop, w, EV_SIGNAL);	/* more next pass */
	sched_dispatch();
	task_release_records();
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

/* May the open transaction take in the changes of more passes? */
static int
commit_can_wait(void)
{
	int64_t	age = store_txn_age_ms();

	if (age < 0 || conn_answers_held() || shutting_down ||
	    age >= GROUP_COMMIT_MS || store_txn_changes() >= GROUP_COMMIT_MAX)
		return (0);
	if (!ev_is_active(&commit_timer)) {
		ev_timer_set(&commit_timer,
		    (double)(GROUP_COMMIT_MS - age) / 1000.0, 0.);
		ev_timer_start(loop, &commit_timer);
	}
	return (1);
}

/* The commit timer only wakes the loop: its pass then commits. */
static void
commit_timer_cb(struct ev_loop *l, ev_timer *w, int revents)
{
}

/*
 * Once per loop pass, before forkqd sleeps: go on with connections that
 * were held, start due tasks, commit what the passes wrote in one
 * transaction (see GROUP_COMMIT_MS), and only then send the answers.
 */
static void
pass_cb(struct ev_loop *l, ev_prepare *w, int revents)
{
	char	*cause = NULL;
	int	 committed;

	conn_resume_all();
	sched_dispatch();
	io_collect_adapt();
	if (commit_can_wait()) {
		conn_flush_all();
		event_flush();
		return;
	}
	ev_timer_stop(loop, &commit_timer);
	committed = store_commit() == 0;
	conn_settle_all(committed);
	conn_flush_all();
	if (committed && store_take_inserted()) {
		/* Tasks just committed may start: run a pass without waiting. */
		sched_kick();
		ev_idle_start(loop, &pass_again);
	}
	if (!committed && !ev_is_active(&store_retry_timer)) {
		store_healthy(&cause);
		event_emit(EV_LEVEL_ERROR, "store.failed", 0, json_pack(
		    "{s:s}", "error", cause != NULL ? cause : "commit failed"));
		free(cause);
		ev_timer_again(loop, &store_retry_timer);
	}
	event_flush();
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
	if (store_retry() == -1)
		return;	/* still failing; the timer repeats */
	ev_timer_stop(loop, w);
	event_emit(EV_LEVEL_INFO, "store.recovered", 0, NULL);
	sched_kick();
}

static void
retention_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	int64_t	n;

	n = ops_prune_batch(wall_ms() - config.retention_ms);
	if (n > 0)
		event_emit(EV_LEVEL_INFO, "daemon.pruned", 0, json_pack(
		    "{s:I}", "pruned", (json_int_t)n));
	/* A full batch: more to do, in small steps between other work. */
	w->repeat = n >= 500 ? 0.05 : RETENTION_INTERVAL;
	ev_timer_again(loop, w);
}

/*
 * Runs forkqd until a shutdown completes: recovery of what a previous run
 * left, the socket, the loop. Returns 0, or -1 with *cause when the socket
 * cannot be had.
 */
int
daemon_run(char **cause)
{
	if ((loop = ev_loop_new(EVFLAG_AUTO)) == NULL) {
		*cause = xstrdup("cannot create the event loop");
		return (-1);
	}
	started_mono = mono_ms();
	event_start();
	ev_signal_init(&sig_term, signal_cb, SIGTERM);
	ev_signal_init(&sig_int, signal_cb, SIGINT);
	ev_signal_init(&sig_hup, signal_cb, SIGHUP);
	ev_signal_init(&sig_chld, sigchld_cb, SIGCHLD);
	ev_signal_start(loop, &sig_term);
	ev_signal_start(loop, &sig_int);
	ev_signal_start(loop, &sig_hup);
	ev_signal_start(loop, &sig_chld);
	ev_prepare_init(&pass_hook, pass_cb);
	ev_prepare_start(loop, &pass_hook);
	ev_idle_init(&pass_again, pass_again_cb);
	ev_init(&grace_timer, grace_cb);
	ev_init(&retention_timer, retention_cb);
	ev_init(&store_retry_timer, store_retry_cb);
	ev_init(&commit_timer, commit_timer_cb);
	store_retry_timer.repeat = STORE_RETRY_INTERVAL;
	if (config.retention_ms > 0) {
		retention_timer.repeat = 60.0;	/* first pass soon after start */
		ev_timer_again(loop, &retention_timer);
	}

	cgroup_init(config.cgroup_mode);
	task_recover();
	store_commit();
	sched_init();
	cron_init();
	if (server_listen(config.socket_path, config.socket_mode,
	    config.socket_gid, cause) == -1)
		return (-1);
	event_emit(EV_LEVEL_INFO, "daemon.started", 0, json_pack(
	    "{s:s, s:I, s:s, s:s, s:i}", "version", FORKQ_VERSION,
	    "pid", (json_int_t)getpid(), "socket", config.socket_path,
	    "state_dir", config.state_dir, "workers", config.workers));
	notify_ready();

	ev_run(loop, 0);
	notify_stop();

	event_emit(EV_LEVEL_INFO, "daemon.stopped", 0, json_pack("{s:I}",
	    "running", (json_int_t)task_running_count()));
	store_commit();
	conn_flush_all();
	conn_close_all();
	server_close();
	cgroup_fini();
	ev_loop_destroy(loop);
	loop = NULL;
	return (0);
}
