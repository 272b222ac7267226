/*
 * forkqd.h: the daemon's one internal header: forward declarations, the
 * enums and records shared between modules, and prototypes grouped by the
 * file that owns them. Structs private to one file (struct conn, struct task)
 * stay in that file.
 */
#ifndef FORKQD_H
#define FORKQD_H

#include <sys/types.h>
#include <sys/queue.h>
#include <sys/resource.h>

#include <ev.h>
#include <jansson.h>
#include <signal.h>
#include <stdint.h>

#include "util.h"
#include "xmalloc.h"

struct cgroup;
struct conn;
struct stats_scan;
struct task;

/* Task states (spec 4.1). The order is the order of status counts. */
enum task_state {
	TASK_QUEUED,
	TASK_RUNNING,
	TASK_SUCCEEDED,
	TASK_FAILED,
	TASK_CANCELED,
	TASK_NSTATES
};

/* Attempt outcomes (spec 4.2). OUTCOME_NONE is SQL/JSON null. */
enum outcome {
	OUTCOME_NONE,
	OUTCOME_SUCCESS,
	OUTCOME_EXIT,
	OUTCOME_SIGNAL,
	OUTCOME_TIMEOUT,
	OUTCOME_HEARTBEAT_LOST,
	OUTCOME_EXEC_FAILED,
	OUTCOME_LOST,
	OUTCOME_INTERRUPTED,
	OUTCOME_CANCELED,
	OUTCOME_COUNT
};

/* Why forkqd stops an attempt (spec 6, task.stopping). */
/* How the commit (and fsync) that held answers wait for went. */
enum settle {
	SETTLE_DONE,		/* on disk: the answers go */
	SETTLE_FAILED,		/* rolled back: errors go instead */
	SETTLE_UNSURE,		/* committed, the fsync failed */
	SETTLE_KEPT,		/* not begun, kept to write again; what came
				   before is on disk: reads go, writes fail */
};

enum stop_reason {
	STOP_NONE,
	STOP_TIMEOUT,
	STOP_HEARTBEAT_LOST,
	STOP_CANCEL,
	STOP_SHUTDOWN,
	STOP_EXITED
};

/* The resource limits a task may set (spec 4.5), in this order. */
#define RLIM_COUNT	6
struct rlimit_name {
	const char	*name;
	int		 resource;
	int		 is_size;	/* value parsed as a size on the CLI */
};
extern const struct rlimit_name rlimit_names[RLIM_COUNT];

#define UNSET	INT64_MIN	/* an integer field that is null */

/* Everything a submit asks for, validated (proto.c fills it). */
struct task_spec {
	char		*name;
	char		*queue;
	char		*argv_json;	/* JSON array text */
	char		*env_json;	/* JSON object text, NULL = none */
	char		*cwd;		/* NULL = "/" */
	char		*unique;	/* NULL = none */
	int		 priority;
	int		 max_attempts;
	int64_t		 timeout_ms;		/* 0 = none */
	int64_t		 heartbeat_timeout_ms;	/* 0 = none */
	int64_t		 backoff_base_ms;
	int64_t		 backoff_max_ms;
	int64_t		 delay_ms;		/* UNSET unless given */
	int64_t		 run_at;		/* ms epoch, UNSET unless given */
	int64_t		 rlimits[RLIM_COUNT];	/* UNSET = not set */
	int64_t		*after;			/* ids this task waits for */
	size_t		 nafter;
	int64_t		 debounce_ms;		/* 0 = none (needs unique) */
	int		 waiting_on;		/* of after, not yet succeeded */
	uid_t		 uid;
	gid_t		 gid;
};

/* One row of the tasks table. Strings owned; free with task_rec_free. */
struct task_rec {
	int64_t		 id;
	char		*name;
	char		*queue;
	char		*argv_json;
	char		*env_json;
	char		*cwd;
	char		*unique;
	char		*rlimits_json;
	enum task_state	 state;
	int		 priority;
	int		 attempt;
	int		 max_attempts;
	int		 attempts_per_run;	/* max_attempts as submitted */
	int64_t		 created_at;		/* ms epoch */
	int64_t		 run_at;
	int64_t		 started_at;		/* UNSET = null */
	int64_t		 finished_at;
	enum outcome	 outcome;
	int64_t		 exit_code;
	int		 signal;		/* 0 = null */
	char		*error;
	int64_t		 progress;		/* UNSET = null */
	char		*progress_message;
	int64_t		 pid;
	int64_t		 last_heartbeat_at;
	int64_t		 timeout_ms;
	int64_t		 heartbeat_timeout_ms;
	int64_t		 backoff_base_ms;
	int64_t		 backoff_max_ms;
	char		*after_json;	/* JSON array of ids, NULL = none */
	uid_t		 uid;
	gid_t		 gid;
	int		 cancel_requested;	/* running, canceled: stopping */
};

/* One row of the attempts table. */
struct attempt_rec {
	int64_t		 task_id;
	int		 n;
	int64_t		 pid;
	int64_t		 pid_start;	/* /proc starttime, clock ticks */
	int64_t		 started_at;
	int64_t		 finished_at;	/* UNSET while running */
	int64_t		 duration_ms;
	enum outcome	 outcome;
	int64_t		 exit_code;
	int		 signal;
	char		*error;
	int64_t		 max_rss_kb;
	int64_t		 user_cpu_ms;
	int64_t		 sys_cpu_ms;
};

/* Filter of the list op. */
struct task_filter {
	int		 state;		/* -1 = any */
	const char	*queue;		/* NULL = any */
	int64_t		 before_id;	/* 0 = none */
	int		 limit;
	int		 all_users;
	uid_t		 uid;
};

/* One recurring task (spec 10, cron). Strings owned. */
struct cron_rec {
	char		*name;
	char		*schedule;
	char		*request;	/* the submit fields, JSON object text */
	char		*argv_json;
	int64_t		 next_run_at;	/* ms epoch */
	int64_t		 last_run_at;	/* UNSET = never */
	int64_t		 last_task;	/* UNSET = none */
	uid_t		 uid;
	gid_t		 gid;
};

/* Per-name statistics of the stats op (spec 10). */
struct name_stats {
	char		*name;
	int64_t		 tasks;
	int64_t		 succeeded;
	int64_t		 failed;
	int64_t		 canceled;
	double		 mean_attempts;
	int64_t		 p50_ms;	/* of successful attempts, UNSET = none */
	int64_t		 p95_ms;
	int64_t		 max_ms;
};

/* The daemon's options, read-only once the loop runs (forkqd.c). */
struct config {
	const char	*socket_path;		/* as given: it is bound so */
	const char	*socket_env;		/* from /: tasks' FORKQ_SOCKET */
	const char	*state_dir;
	const char	*log_path;		/* NULL or "-" = stderr */
	int		 workers;
	int64_t		 kill_grace_ms;
	int64_t		 heartbeat_rest_ms;	/* 0 = read each line */
	int64_t		 shutdown_grace_ms;
	int64_t		 default_timeout_ms;	/* 0 = none */
	int		 default_retries;
	int64_t		 retention_ms;		/* 0 = keep all */
	mode_t		 socket_mode;
	gid_t		 socket_gid;		/* (gid_t)-1 = the daemon's */
	int		 daemonize;
	int		 sync_normal;		/* --sync normal */
	int		 cgroup_mode;		/* --cgroup: 0 off, 1 auto */
	struct queue_limit {
		char	*name;
		int	 limit;
	}		*queue_limits;		/* --queue NAME=N */
	size_t		 nqueue_limits;
	struct load_bound {
		int	 from_min;		/* minute of day, -1 = always */
		int	 to_min;
		double	 load;			/* per online CPU */
	}		*load_bounds;		/* --max-load */
	size_t		 nload_bounds;
	int64_t		 min_free_mem;		/* bytes, 0 = none */
	int64_t		 max_output;		/* per stream and attempt, 0 = none */
};
/*
 * What one stream of one attempt may fill in the state dir: a task that
 * logs without end must not fill the disk the database is on.
 */
#define DEFAULT_MAX_OUTPUT	((int64_t)1 << 30)
extern struct config config;
extern struct ev_loop *loop;
extern int64_t	 started_mono;

/* daemon.c */
int		 daemon_run(char **);
int		 daemon_shutting_down(void);
void		 loop_signals(sigset_t *);
void		 daemon_pass_again(void);
int		 daemon_commit_now(void);
void		 daemon_stopped_check(void);

/* log.c: diagnostics for operators (stderr), OpenBSD style. */
void		 log_init(int);
void		 log_warn(const char *, ...) __attribute__((format(printf, 1, 2)));
void		 log_warnx(const char *, ...) __attribute__((format(printf, 1, 2)));
void		 log_info(const char *, ...) __attribute__((format(printf, 1, 2)));
void		 log_debug(const char *, ...) __attribute__((format(printf, 1, 2)));
void		 fatal(const char *, ...)
		    __attribute__((format(printf, 1, 2), noreturn));
void		 fatalx(const char *, ...)
		    __attribute__((format(printf, 1, 2), noreturn));

/* event.c: the JSON-lines events, their ring and their watchers. */
enum event_level { EV_LEVEL_DEBUG, EV_LEVEL_INFO, EV_LEVEL_WARN, EV_LEVEL_ERROR };
int		 event_open_log(const char *, char **);
void		 event_set_text(int);
void		 event_start(void);
void		 event_reopen_log(void);
void		 event_close(void);
void		 event_release(void);
int		 event_any_held(void);
void		 event_emit(enum event_level, const char *, int64_t, json_t *);
void		 event_emit_as(int64_t, enum event_level, const char *, int64_t,
		    json_t *);
void		 event_emit_unkept(int64_t, enum event_level, const char *,
		    json_t *);
void		 event_watch(struct conn *, int64_t, int, int);
void		 event_watch_resume(struct conn *);
int		 event_log_diagnostic(const char *, size_t, int);
void		 event_unwatch(struct conn *);
size_t		 event_kept(size_t *);
extern size_t	 event_ring_bytes_max;

/* walbuf.c: the store's VFS, one pwrite(2) of the WAL per commit. */
#define WALBUF_VFS		"forkq-walbuf"
int		 walbuf_register(void);

/* store.c: the only file that speaks SQL. */
#define STORE_SCHEMA_VERSION	7
int		 store_open(const char *, char **);
void		 store_close(void);
int		 store_commit(void);
int		 store_retry(void);
int		 store_take_inserted(void);
int		 store_healthy(char **);
int		 store_task_insert(const struct task_spec *, int64_t, int64_t *,
		    int *, struct task_rec **);
int		 store_task_find(int64_t, struct task_rec **);
struct task_rec	*store_task_get(int64_t);
int		 store_task_uid(int64_t, uid_t *);
int		 store_task_exists(int64_t);
int64_t		 store_unique_find(const char *, uid_t);
struct task_rec	**store_task_list(const struct task_filter *, size_t *);
struct attempt_rec **store_attempts_get(int64_t, size_t *);
int64_t		 store_last_attempt_pid(int64_t);
struct task_rec	*store_next_due(int64_t, const char *const *, size_t);
int		 store_take_dispatch_failed(void);
int64_t		 store_next_run_at(int64_t);
int64_t		 store_first_run_at(void);
int		 store_attempt_started(const struct task_rec *,
		    const struct attempt_rec *);
int		 store_attempt_ended(const struct task_rec *,
		    const struct attempt_rec *);
int		 store_attempt_pid(const struct attempt_rec *);
int		 store_attempt_forget(int64_t, int);
int		 store_task_update(const struct task_rec *);
int		 store_task_progress(int64_t, int64_t, int64_t, const char *);
int		 store_counts(int64_t[TASK_NSTATES]);
void		 store_count_transition(enum task_state, enum task_state);
int		 store_commit_as(int);
int		 store_sync(void);
int		 store_sync_start(void);
int		 store_sync_finish(void);
int		 store_sync_pending(void);
void		 store_sync_notify(void (*)(void));
extern int	(*store_fdatasync)(int);
extern int	(*store_fsync_dir)(int);
int64_t		 store_unsynced_ms(void);
int		 store_all_on_disk(void);
int		 store_commit_kept_only(void);
int		 store_sync_failing(void);
int		 store_in_txn(void);
int		 store_take_rollback(int64_t *);
void		 store_counts_live(int64_t[TASK_NSTATES]);
void		 store_finals_reached(int64_t[TASK_NSTATES]);
struct attempt_rec **store_unfinished_attempts(size_t *);
int64_t		 store_prune(int64_t, int, int64_t **, size_t *);
int		 store_attempt_metrics(int64_t[OUTCOME_COUNT], const int64_t *,
		    size_t, int64_t *, int64_t *, int64_t *);
struct stats_scan *store_stats_begin(int64_t, const char *, uid_t, int);
int		 store_stats_step(struct stats_scan *, int);
struct name_stats *store_stats_end(struct stats_scan *, size_t *);
void		 store_stats_free(struct stats_scan *);
int		 store_dependents(int64_t, int64_t **, size_t *);
int		 store_unreleased_dependencies(int64_t **, enum task_state **,
		    size_t *);
int64_t		 store_failed_dependency(int64_t, enum task_state *);
int		 store_dependency_met(int64_t);
int		 store_task_debounce(int64_t, const struct task_spec *, int64_t);
int		 store_paused(char ***, size_t *);
int		 store_set_paused(const char *, int);
int		 store_cron_list(struct cron_rec ***, size_t *);
int		 store_cron_due(int64_t, struct cron_rec ***, size_t *);
int		 store_cron_of(uid_t, struct cron_rec ***, size_t *);
int		 store_cron_next_run(int64_t *);
int		 store_cron_owners(const char *, int64_t **, size_t *);
int		 store_cron_get(uid_t, const char *, struct cron_rec **);
int		 store_cron_put(const struct cron_rec *);
int		 store_cron_remove(uid_t, const char *);
void		 cron_rec_free(struct cron_rec *);
void		 task_rec_free(struct task_rec *);
void		 attempt_rec_free(struct attempt_rec *);
void		 task_spec_clear(struct task_spec *);
int64_t		 task_spec_run_at(const struct task_spec *, int64_t);
const char	*task_state_name(enum task_state);
int		 task_state_from_name(const char *);
const char	*outcome_name(enum outcome);
enum outcome	 outcome_from_name(const char *);

/* proto.c: requests in, task and attempt objects out. Pure. */
/*
 * Most bytes of a task's text fields: its object must fit an answer, with
 * room for the rest (error, progress_message: a few KiB at most).
 */
#define PROTO_TASK_TEXT_MAX	(FORKQ_MAX_LINE - 64 * 1024)
/* Room for the objects of one answer line. */
#define PROTO_ANSWER_BUDGET	(FORKQ_MAX_LINE - FORKQ_ANSWER_MARGIN)
int		 proto_parse_submit(json_t *, struct task_spec *, char **);
int		 proto_get_id(json_t *, const char *, int, int64_t *, char **);
int		 proto_get_int(json_t *, const char *, int64_t, int64_t,
		    int64_t *, char **);
int		 proto_get_string(json_t *, const char *, const char **,
		    char **);
int		 proto_get_bool(json_t *, const char *, int *, char **);
json_t		*proto_task_json(const struct task_rec *);
json_t		*proto_attempt_json(const struct attempt_rec *);
json_t		*proto_time(int64_t);
char		*proto_encode(const json_t *, size_t, size_t, size_t *);
char		*proto_text(const json_t *);
size_t		 proto_size(const json_t *);
int		 proto_append_within(json_t *, json_t *, size_t *);
json_t		*proto_error(const char *, const char *, ...)
		    __attribute__((format(printf, 2, 3)));
json_t		*proto_rlimits_json(const int64_t[RLIM_COUNT]);

/* admit.c: which clients forkqd takes, by the fds they hold. */
int		 admit_is_admin(uid_t);
void		 admit_init(void);
void		 admit_fini(void);
int		 admit_client(uid_t, char *, size_t);
void		 admit_release(uid_t);

/* server.c: the listening socket. */
int		 server_adopt(const char *, char **);
int		 server_listen(const char *, mode_t, gid_t, char **);
void		 server_close(void);

/* conn.c: one client connection. */
void		 conn_accept(int, uid_t, gid_t, pid_t);
void		 conn_send(struct conn *, json_t *);
void		 conn_send_durable(struct conn *, json_t *, const char *);
void		 conn_send_now(struct conn *, json_t *);
void		 conn_settle_all(enum settle);
int		 conn_answers_held(void);
int		 conn_has_held(const struct conn *);
int		 conn_send_line(struct conn *, const char *, size_t);
void		 conn_watch_drop(struct conn *);
size_t		 conn_output_pending(const struct conn *);
void		 conn_done(struct conn *);
void		 conn_drop(struct conn *, const char *);
uid_t		 conn_uid(struct conn *);
gid_t		 conn_gid(struct conn *);
int		 conn_is_root(struct conn *);
void		 conn_hold(struct conn *);
void		 conn_set_watching(struct conn *);
void		 conn_flush_all(void);
void		 conn_resume_all(void);
void		 conn_pass_end(void);
void		 conn_close_all(void);
size_t		 conn_count(void);

/* ops.c: the protocol ops. */
void		 ops_dispatch(struct conn *, json_t *);
void		 ops_task_final(int64_t);
void		 ops_output_wake(int64_t);
void		 ops_conn_gone(struct conn *);
void		 ops_shutdown(int);
int64_t		 ops_prune_batch(int64_t);
void		 ops_commit_settled(int);
struct task_rec	*ops_after_task(int64_t, uid_t, int, const char **,
		    char **);
int		 ops_submit_spec(struct task_spec *, int, int64_t *, int *,
		    struct task_rec **, const char **, char **);

/* cron.c: recurring tasks (spec 10). */
void		 cron_init(void);
void		 cron_store_recovered(void);
void		 cron_op_add(struct conn *, json_t *);
void		 cron_op_list(struct conn *, json_t *);
void		 cron_op_remove(struct conn *, json_t *);
int		 cron_parse(const char *, uint64_t[5], char **);
int		 cron_parse_stored(const char *, uint64_t[5], char **);
int64_t		 cron_next(const uint64_t[5], int64_t);

/* trash.c: the output of pruned tasks, removed by a thread of its own. */
void		 trash_start(const char *);
void		 trash_hold(int64_t);
void		 trash_unhold(int64_t);
void		 trash_put(int64_t);
void		 trash_stop(void);

/* task.c: running tasks and the state machine. */
int		 task_prepare(struct task_rec *);
int		 task_start_prepared(void);
struct task	*task_find(int64_t);
int		 task_owner(int64_t, uid_t *);
void		 task_stop(struct task *, enum stop_reason);
void		 task_stop_all(enum stop_reason);
size_t		 task_running_count(void);
size_t		 task_running_in_queue(const char *);
void		 task_reaped(pid_t, int, const struct rusage *);
void		 task_overlay(struct task_rec *);
void		 task_attempt_overlay(struct attempt_rec *);
void		 task_finish_final(struct task_rec *, enum outcome, const char *);
int		 task_retry(struct task_rec *);
int		 task_output_path(int64_t, int, int, char *, size_t);
int		 task_attempt_running(int64_t, int);
int		 task_transition_ok(enum task_state, enum task_state);
int		 task_state_final(enum task_state);	/* succeeded, failed, canceled */
void		 task_recover(void);
void		 task_release_unreleased(void);
void		 task_release_drop(void);

/* rounds.c: the tasks' quiet pipes (heartbeats, output), read in rounds. */
#define DEFAULT_HEARTBEAT_REST_MS	250
#define MAX_HEARTBEAT_REST_MS		60000
struct round_pipe {
	void		(*ready)(void *);	/* readable: ready(data) */
	void		*data;
	int		 fd;
	int		 in_set;	/* else watched by io, or not at all */
	ev_io		 io;		/* out of the set: read as it comes */
};
int		 rounds_init(struct ev_loop *, char **);
int		 rounds_watch(struct round_pipe *, int, void (*)(void *),
		    void *);
void		 rounds_no_rest(struct round_pipe *);
void		 rounds_unwatch(struct round_pipe *);
unsigned long	 rounds_current(void);
void		 rounds_fini(struct ev_loop *);

/* spill.c: the event ring's long lines, kept on disk. */
#define SPILL_MIN	4096	/* bytes; longer lines are spilled */
int64_t		 spill_write(const char *, size_t);
const char	*spill_read(int64_t, size_t);
void		 spill_forget(int64_t, size_t);
void		 spill_reset(void);

/* capture.c: a task's stdout or stderr, pipe to file. */
struct capture {
	int64_t		 task_id;
	int		 attempt;
	int		 is_err;
	int		 pipe_fd;	/* read end, -1 once closed */
	int		 file_fd;	/* -1 until the first byte */
	int		 broken;	/* the file failed: drop output */
	int64_t		 kept;		/* bytes in the file */
	int		 truncated;	/* kept reached --max-output */
	pid_t		 pid;		/* the attempt's, for the event */
	int		 no_splice;	/* copy with read/write instead */
	int		 chown;		/* running as root: file to the task's user */
	uid_t		 uid;
	gid_t		 gid;
	struct round_pipe round;	/* in rounds.c's set while quiet */
	unsigned long	 busy_round;	/* the last round it brought much */
	int		 busy_rounds;	/* ... and how many in a row */
	char		*held;		/* first bytes, no fd for the file yet */
	size_t		 nheld;
	int64_t		 held_ms;	/* since when (mono_ms) */
	int		 finishing;	/* in capture_finish */
	TAILQ_ENTRY(capture) starved;	/* in capture.c's list while held */
};
int		 capture_open(struct capture *, int64_t, int, int, uid_t, gid_t);
void		 capture_start(struct capture *, pid_t);
void		 capture_finish(struct capture *);
int		 capture_starving(void);

/*
 * What the read end of a task's pipe is watched for. The kernel never says
 * a read end is writable, but libev reads a hang-up as both events: with
 * EV_READ alone it answers the close of each pipe's last writer with an
 * EPOLL_CTL_MOD that drops EV_WRITE again, a system call per pipe of every
 * task for nothing. The callbacks take either event for "readable".
 */
#define EV_PIPE_READ	(EV_READ | EV_WRITE)

/* cgroup.c: a cgroup v2 per attempt, where the host offers one. */
void		 cgroup_init(int);
void		 cgroup_fini(void);
const char	*cgroup_mode(void);
struct cgroup	*cgroup_acquire(void);
int		 cgroup_join_fd(const struct cgroup *);
int		 cgroup_dir_fd(const struct cgroup *);
void		 cgroup_release(struct cgroup *);
int		 cgroup_populated(struct cgroup *);
int		 cgroup_signal(struct cgroup *, int);
void		 cgroup_spoil(struct cgroup *);

/* usergroups.c: another user's supplementary groups, for its tasks. */
typedef int	(*usergroups_lookup_fn)(uid_t, gid_t, gid_t **, int *,
		    char **);
void		 usergroups_notify(void (*)(void));
void		 usergroups_set_lookup(usergroups_lookup_fn);
int		 usergroups_get(uid_t, gid_t, const gid_t **);
void		 usergroups_collect(void);
void		 usergroups_free_all(void);

/* spawn.c: fork and exec, the only child-side code. */
struct spawn_req {
	char *const	*argv;
	char *const	*envp;
	const char	*path;		/* the task's PATH, for argv[0] lookup */
	const char	*cwd;
	int		 stdout_fd;
	int		 stderr_fd;
	int		 heartbeat_fd;
	int		 cgroup_fd;	/* cgroup.procs to join, -1 = none */
	int		 cgroup_dir_fd;	/* its directory, for clone3 */
	struct rlimit	 rlimits[RLIM_COUNT];
	int		 rlimit_set[RLIM_COUNT];
	uid_t		 uid;		/* (uid_t)-1 = keep */
	gid_t		 gid;
	const gid_t	*groups;	/* with uid: all its groups (copied) */
	int		 ngroups;
	int		 own_session;	/* setsid; else only its own group */
};
/* What a child says of its exec; written by the child, read once reaped. */
struct spawn_status {
	volatile int	 err;		/* errno of a failure before exec */
	volatile int	 step;		/* where it failed (spawn.c) */
	volatile int	 rlimit;	/* which rlimit, -1 = forkqd's own */
};
#define SPAWN_HEARTBEAT_FD	3
void		 spawn_init(void);
void		 spawn_sched_init(void);
void		 spawn_sched_thread(pthread_t);
pid_t		 spawn_child(const struct spawn_req *, struct spawn_status *);
void		 spawn_forget_peak(void);
int		 spawn_reaped(const struct spawn_status *, const char **);

/* sched.c: dispatch order, slots and backoff. */
void		 sched_init(void);
int		 sched_set_paused(const char *, int);
int		 sched_all_paused(void);
json_t		*sched_paused_json(int *);
json_t		*sched_held_json(void);
void		 sched_kick(void);
void		 sched_dispatch(void);
int64_t		 sched_backoff_ms(int64_t, int64_t, int);
int64_t		 sched_backoff_delay(int64_t, int64_t, int, uint32_t (*)(uint32_t));

/* proctree.c: finding what a task left behind, by /proc. */
int64_t		 proctree_start_time(pid_t);
int		 proctree_self_has_tty(void);
int64_t		 proctree_ticks_now(void);
size_t		 proctree_signal(pid_t, pid_t, int64_t, int, int, int *,
		    uint64_t, int64_t);
int		 kill_waking(pid_t, int);
#define PROC_RECORD_MAX	(16 * 1024)	/* bytes; longer records are skipped */
int		 proc_records(const char *, int, int (*)(const char *, size_t,
		    void *), void *);
uint64_t	 proctree_note_spawn(pid_t);

/* notify.c: the init system's readiness protocol. */
int		 notify_send(const char *, ...) __attribute__((format(printf, 1, 2)));
void		 notify_ready(void);
void		 notify_parent(int);
void		 notify_status_changed(void);
void		 notify_stopping(void);
void		 notify_stop(void);

#endif
