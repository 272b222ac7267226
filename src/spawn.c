/*
 * spawn.c: starting a task's process. The only file with child-side code.
 *
 * The child is made with clone(CLONE_VM): it borrows forkqd's memory until
 * it execs, so the cost of a spawn does not grow with forkqd's size as
 * fork()'s page-table copy does. Everything the child needs (argv, envp, the
 * paths to try, fds, rlimits) is prepared by the parent in a slot of its
 * own, with the child's stack; the child makes raw system calls on it and
 * nothing else.
 *
 * Where the child's system calls touch no memory of forkqd's but the slot
 * (x86-64: made by inline assembly, so not even errno is written), forkqd
 * does not wait for the exec: it goes on with its loop while the child
 * execs on another CPU. The kernel clears the slot's tid word when the
 * child execs or exits (CLONE_CHILD_CLEARTID), which frees the slot for the
 * next spawn. Elsewhere, and under valgrind (which supports no such clone),
 * CLONE_VFORK suspends forkqd until then, as posix_spawn does.
 *
 * The child reports a failure by storing the errno and the step in the
 * caller's struct spawn_status before it exits: once the child is reaped,
 * err is not 0 if and only if it failed before or at its exec.
 *
 * A child with a cgroup is made in it by clone3(CLONE_INTO_CGROUP) where
 * the kernel and the build allow (x86-64, Linux 5.7); elsewhere, or where
 * clone3 is refused (a seccomp filter may answer ENOSYS), clone() makes it
 * and the child joins by writing cgroup.procs.
 */
#include "config.h"

#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/queue.h>
#include <sys/syscall.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif

#include "forkqd.h"
#include "xmalloc.h"

#if defined(__x86_64__) && defined(SYS_clone3) && HAVE_DECL_CLONE_INTO_CGROUP
#include <linux/sched.h>
#define HAVE_CLONE3_SPAWN	1
#endif

#if defined(SYS_sched_setattr) && defined(SYS_sched_getattr)
#define HAVE_SCHED_ATTR	1
/*
 * The kernel's struct sched_attr (sched_setattr(2)), by a name of ours:
 * <linux/sched/types.h> clashes with glibc's <sched.h>, and glibc 2.41
 * declares its own under _GNU_SOURCE.
 */
struct kernel_sched_attr {
	uint32_t	size;
	uint32_t	sched_policy;
	uint64_t	sched_flags;
	int32_t		sched_nice;
	uint32_t	sched_priority;
	uint64_t	sched_runtime;	/* SCHED_OTHER's: the slice (6.12) */
	uint64_t	sched_deadline;
	uint64_t	sched_period;
	uint32_t	sched_util_min;
	uint32_t	sched_util_max;
};
#ifndef SCHED_FLAG_RESET_ON_FORK
#define SCHED_FLAG_RESET_ON_FORK	0x01
#endif
#endif

/* The child's system calls write no errno: forkqd need not wait for it. */
#if defined(__x86_64__)
#define HAVE_RAW_SYSCALLS	1
#endif

/* The 32-bit id calls where the plain ones take 16-bit ids (i386). */
#ifdef SYS_setuid32
#define CHILD_SYS_SETGROUPS	SYS_setgroups32
#define CHILD_SYS_SETGID	SYS_setgid32
#define CHILD_SYS_SETUID	SYS_setuid32
#else
#define CHILD_SYS_SETGROUPS	SYS_setgroups
#define CHILD_SYS_SETGID	SYS_setgid
#define CHILD_SYS_SETUID	SYS_setuid
#endif

/* Where in the child it failed; reported with errno. */
enum spawn_step {
	STEP_NONE,
	STEP_CGROUP,
	STEP_FDS,
	STEP_SETSID,
	STEP_SETPGID,
	STEP_IDS,
	STEP_CHDIR,
	STEP_RLIMIT,
	STEP_EXEC,
};

/* A limit as prlimit64 takes it, whatever the width of rlim_t. */
struct child_rlimit {
	uint64_t	cur;
	uint64_t	max;
};

struct spawn_child_args {
	const struct spawn_req	*req;
	char			**paths;	/* to exec, owned; NULL if direct */
	int			 direct;	/* argv[0] named a path */
	const int		*reset_sigs;	/* back to SIG_DFL */
	int			 nreset_sigs;
	int			 devnull;	/* forkqd's fd on /dev/null */
	int			 join_fd;	/* cgroup.procs to join, or -1 */
	int			 close_max;	/* highest fd to close */
	int			 restore_nofile;
	int			 drop_slice;	/* forkqd's short time slice */
	uint64_t		 slice;		/* for the task instead */
	int			 drop_tty;	/* forkqd has a controlling tty */
	int			 yield_first;	/* forkqd is not waiting for it */
	struct child_rlimit	 nofile;	/* forkqd's as it was given */
	struct child_rlimit	 rlimits[RLIM_COUNT];
	struct spawn_status	*status;	/* the caller's */
};

/* Child stack: the child runs little and never recurses. */
#define CHILD_STACK_SIZE	(64 * 1024)

/*
 * What one child borrows until it has exec'd or exited: its stack and
 * everything it reads. tid is set before the clone and cleared by the
 * kernel at the child's exec or exit; only then, or once the child is
 * reaped (some kernels leave tid alone when the child dumps core), may
 * the slot be reused.
 */
struct spawn_slot {
	TAILQ_ENTRY(spawn_slot)	 entry;
	pid_t			 tid;
	struct spawn_req	 req;		/* the caller's, copied */
	gid_t			*groups;	/* req.groups, copied */
	int			 groups_room;
	struct spawn_child_args	 args;
	char			 stack[CHILD_STACK_SIZE]
				    __attribute__((aligned(16)));
};
TAILQ_HEAD(spawn_slots, spawn_slot);

/* Slots of children not yet exec'd, and ones kept for the next spawns. */
static struct spawn_slots slots_busy = TAILQ_HEAD_INITIALIZER(slots_busy);
static struct spawn_slots slots_free = TAILQ_HEAD_INITIALIZER(slots_free);
static int		  nslots_free;
#define SLOTS_KEPT		8

/*
 * forkqd's open-file limit as it was given (tasks get it back) and the
 * highest fd a child may have to close.
 */
static struct rlimit	 nofile_given;
static int		 nofile_raised;
static int		 have_close_range = 1;
static int		 devnull = -1;	/* a task's stdin */
static int		 clear_refs = -1;	/* /proc/self/clear_refs, -2: none */
static int		 has_tty = -1;	/* a controlling terminal, -1 = not known */

/* Whether forkqd waits for each child's exec (CLONE_VFORK). */
static int		 spawn_waits = 1;

/*
 * forkqd took a short time slice, which its children must not keep: they
 * get back the one it was given (ns).
 */
static int		 slice_taken;
static uint64_t		 slice_given;

/* forkqd's real-time policy and priority; policy 0: none. */
static int		 rt_policy;
static int		 rt_priority;

/*
 * forkqd's time slice, in ns: about one wake-up's work (a pass that starts
 * a task takes ~125 us). Linux's least (sched_attr(7): 0.1 ms).
 */
#define FORKQD_SLICE_NS		100000

/*
 * The signals whose disposition in forkqd is not the default (its
 * handlers, SIGPIPE ignored, what it inherited ignored, real-time ones
 * included): the child resets these, not all 64, for fewer system calls
 * before its exec.
 * Gathered at the first spawn, once forkqd has set its signals up.
 */
static int		 reset_sigs[_NSIG];
static int		 nreset_sigs = -1;

static void
gather_reset_sigs(void)
{
	struct sigaction	sa;
	int			i;

	nreset_sigs = 0;
	for (i = 1; i < _NSIG; i++) {
		if (i == SIGKILL || i == SIGSTOP)
			continue;
		if (sigaction(i, NULL, &sa) == -1 ||
		    (!(sa.sa_flags & SA_SIGINFO) && sa.sa_handler == SIG_DFL))
			continue;
		reset_sigs[nreset_sigs++] = i;
	}
}

#ifdef HAVE_SCHED_ATTR
/*
 * forkqd started under a real-time policy (an operator's choice, for the
 * quickest answers under load: forkqd(8)) gives its tasks none: they are
 * batch work, and one that spins must not take a CPU from everything else.
 * Reset-on-fork makes its children SCHED_OTHER at nice 0 or above (and
 * lets a SCHED_DEADLINE forkqd start tasks at all; --daemon's fork comes
 * before, and fails there). Anyone may set it.
 */
static void
sched_realtime_reset_on_fork(struct kernel_sched_attr *attr)
{
	if (attr->sched_flags & SCHED_FLAG_RESET_ON_FORK)
		return;
	attr->sched_flags |= SCHED_FLAG_RESET_ON_FORK;
	if (syscall(SYS_sched_setattr, 0, attr, 0) == -1)
		log_warn("sched_setattr: reset-on-fork (tasks would run with "
		    "forkqd's real-time policy)");
	else
		log_info("real-time policy %u: tasks get SCHED_OTHER",
		    attr->sched_policy);
	if (attr->sched_policy == SCHED_FIFO ||
	    attr->sched_policy == SCHED_RR) {
		rt_policy = (int)attr->sched_policy;
		rt_priority = (int)attr->sched_priority;
	}
}

/*
 * A short time slice for forkqd (Linux 6.12's EEVDF scheduler): a woken
 * task with a shorter slice than the one running may preempt it, so a
 * submit, a child's exit or a heartbeat does not wait for a task's exec to
 * give up the CPU (up to its 0.7-3 ms slice). forkqd's share of the CPU is
 * its weight's, as before: only when it runs changes. Kept as given when
 * its slice is already as short. Kernels before 6.12 take the call and
 * ignore the slice, as does SCHED_IDLE: the slice is read back.
 */
static void
sched_slice_take(struct kernel_sched_attr *attr)
{
	if (attr->sched_runtime != 0 && attr->sched_runtime <= FORKQD_SLICE_NS)
		return;
	slice_given = attr->sched_runtime;
	attr->sched_runtime = FORKQD_SLICE_NS;
	if (syscall(SYS_sched_setattr, 0, attr, 0) == -1) {
		log_info("sched_setattr: %s; forkqd keeps its time slice",
		    strerror(errno));
		return;
	}
	memset(attr, 0, sizeof *attr);
	if (syscall(SYS_sched_getattr, 0, attr, sizeof *attr, 0) == -1 ||
	    attr->sched_runtime != FORKQD_SLICE_NS)
		return;		/* not taken: children have nothing to undo */
	/* With reset-on-fork, the kernel gives children the default. */
	slice_taken = !(attr->sched_flags & SCHED_FLAG_RESET_ON_FORK);
	log_info("time slice %d us (was %llu us)", FORKQD_SLICE_NS / 1000,
	    (unsigned long long)slice_given / 1000);
}
#endif

/*
 * forkqd's own scheduling, once it is the process that will run (after
 * --daemon's fork, which reset-on-fork would act on): a short slice under
 * the fair policies, reset-on-fork under the real-time ones. Other
 * policies (sched_ext's) are left as given.
 */
void
spawn_sched_init(void)
{
#ifdef HAVE_SCHED_ATTR
	struct kernel_sched_attr	attr;

	memset(&attr, 0, sizeof attr);
	if (syscall(SYS_sched_getattr, 0, &attr, sizeof attr, 0) == -1) {
		log_info("sched_getattr: %s; forkqd keeps its scheduling",
		    strerror(errno));
		return;
	}
	switch (attr.sched_policy) {
	case SCHED_OTHER:
	case SCHED_BATCH:
	case SCHED_IDLE:
		sched_slice_take(&attr);
		break;
	case SCHED_FIFO:
	case SCHED_RR:
#ifdef SCHED_DEADLINE
	case SCHED_DEADLINE:
#endif
		sched_realtime_reset_on_fork(&attr);
		break;
	default:
		break;
	}
#endif
}

/*
 * A thread the loop waits on (the sync thread: an answer may wait for its
 * fsync) gets forkqd's real-time policy, which reset-on-fork took from it:
 * else the loop would wait for it behind the tasks, whose CPU it shares.
 */
void
spawn_sched_thread(pthread_t thread)
{
	struct sched_param	sp;
	int			err;

	if (rt_policy == 0)
		return;
	memset(&sp, 0, sizeof sp);
	sp.sched_priority = rt_priority;
	if ((err = pthread_setschedparam(thread, rt_policy, &sp)) != 0) {
		errno = err;
		log_warn("pthread_setschedparam (the sync thread runs under "
		    "SCHED_OTHER)");
	}
}

/*
 * forkqd holds a few fds per running task (pipes, a pooled cgroup's
 * files): with many workers the soft limit init systems hand out (often
 * 1024) would run out. Raise it to the hard limit for forkqd only; tasks
 * get the limit forkqd was given, unless they set "nofile" themselves.
 */
void
spawn_init(void)
{
	struct rlimit	rl;

	if (getrlimit(RLIMIT_NOFILE, &nofile_given) == -1) {
		log_warn("getrlimit RLIMIT_NOFILE");
		return;
	}
	rl = nofile_given;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
			nofile_raised = 1;
		else
			log_warn("raising RLIMIT_NOFILE to %llu",
			    (unsigned long long)rl.rlim_max);
	}
	if ((devnull = open("/dev/null", O_RDONLY | O_CLOEXEC)) == -1)
		fatal("open /dev/null");
	/* Closing nothing tells whether close_range (Linux 5.9) works here. */
	if (syscall(SYS_close_range, ~0U, ~0U, 0) == -1)
		have_close_range = 0;
#ifdef HAVE_RAW_SYSCALLS
	spawn_waits = 0;
#ifdef RUNNING_ON_VALGRIND
	if (RUNNING_ON_VALGRIND)
		spawn_waits = 1;
#endif
#endif
}

/*
 * Without close_range the child closes fds one by one up to this: forkqd's
 * highest open fd (the limit may be a million; the fds are a few dozen).
 */
static int
highest_open_fd(void)
{
	DIR		*d;
	struct dirent	*de;
	const char	*errstr;
	int		 fd, max = 1024;

	if ((d = opendir("/proc/self/fd")) == NULL)
		return (max);
	max = 0;
	while ((de = readdir(d)) != NULL) {
		fd = (int)strtonum(de->d_name, 0, INT_MAX, &errstr);
		if (errstr == NULL && fd > max)
			max = fd;
	}
	closedir(d);
	return (max);
}

/*
 * ASYNC-SIGNAL-SAFE ONLY from here to the end of child-side code: this runs
 * in the child, on memory shared with forkqd, before exec. No malloc, no
 * stdio, no logging, no locks, no libc call that may write errno (forkqd
 * may be running meanwhile): only the system calls below on the slot.
 */

/*
 * The child's code is not instrumented: the sanitizers' and profilers'
 * per-thread state is forkqd's loop thread's, which runs meanwhile.
 */
#if defined(__has_attribute)
#if __has_attribute(no_profile_instrument_function)
#define CHILD_NO_PROFILE	__attribute__((no_profile_instrument_function))
#endif
#endif
#ifndef CHILD_NO_PROFILE
#define CHILD_NO_PROFILE
#endif
#define CHILD_SIDE	__attribute__((no_sanitize("address", "thread", \
			    "undefined"), no_instrument_function)) \
			    CHILD_NO_PROFILE

/* A system call; returns its result, or -errno. */
static inline long CHILD_SIDE
child_syscall(long nr, long a1, long a2, long a3, long a4)
{
#ifdef HAVE_RAW_SYSCALLS
	register long	r10 __asm__("r10") = a4;
	long		ret;

	__asm__ __volatile__("syscall"
	    : "=a"(ret)
	    : "0"(nr), "D"(a1), "S"(a2), "d"(a3), "r"(r10)
	    : "rcx", "r11", "memory");
	return (ret);
#else
	/* Only with CLONE_VFORK: the errno written is forkqd's, suspended. */
	long	ret = syscall(nr, a1, a2, a3, a4);

	return (ret == -1 ? -errno : ret);
#endif
}

#ifdef HAVE_RAW_SYSCALLS
/*
 * x86-64's kernel sigaction for SIG_DFL with no flags and an empty mask,
 * and its empty sigset, are all zeroes.
 */
static const unsigned long	child_sig_default[4];
static const unsigned long	child_sigset_empty[1];
#define CHILD_SIGSET_SIZE	sizeof child_sigset_empty

static void CHILD_SIDE
child_sig_reset(const int *sigs, int n)
{
	int	i;

	for (i = 0; i < n; i++)
		(void)child_syscall(SYS_rt_sigaction, sigs[i],
		    (long)child_sig_default, 0, CHILD_SIGSET_SIZE);
	(void)child_syscall(SYS_rt_sigprocmask, SIG_SETMASK,
	    (long)child_sigset_empty, 0, CHILD_SIGSET_SIZE);
}
#else
/* forkqd is suspended (CLONE_VFORK): libc's calls, whose structs vary. */
static void CHILD_SIDE
child_sig_reset(const int *sigs, int n)
{
	struct sigaction	sa;
	int			i;

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_DFL;
	for (i = 0; i < n; i++)
		(void)sigaction(sigs[i], &sa, NULL);
	sigemptyset(&sa.sa_mask);
	(void)sigprocmask(SIG_SETMASK, &sa.sa_mask, NULL);
}
#endif

static long CHILD_SIDE
child_fd(int from, int to)
{
	if (from == to)
		return (child_syscall(SYS_fcntl, to, F_SETFD, 0, 0));
	return (child_syscall(SYS_dup3, from, to, 0, 0));
}

/*
 * Gives up forkqd's controlling terminal, for this process alone: from a
 * process that does not lead its session, TIOCNOTTY only forgets the
 * terminal. Before setpgid: the fallback, setsid, is refused to a group
 * leader. (An open of /dev/tty never waits for a carrier: the kernel
 * makes it non-blocking.) Returns 1 when no controlling terminal is left,
 * 0 when that failed.
 */
static int CHILD_SIDE
child_drop_tty(void)
{
	long	fd, e;

	fd = child_syscall(SYS_openat, AT_FDCWD, (long)"/dev/tty",
	    O_RDWR | O_NOCTTY | O_CLOEXEC, 0);
	if (fd == -ENXIO)
		return (1);	/* none (any more) */
	if (fd < 0)
		return (0);
	e = child_syscall(SYS_ioctl, fd, TIOCNOTTY, 0, 0);
	(void)child_syscall(SYS_close, fd, 0, 0, 0);
	return (e == 0);
}

/* Tries each path to argv[0]: a failure is final only when it names one. */
static long CHILD_SIDE
child_exec(const struct spawn_child_args *a)
{
	const struct spawn_req	*r = a->req;
	char *const		*p;
	long			 e;
	int			 eacces = 0;

	if (a->direct)
		return (child_syscall(SYS_execve, (long)r->argv[0],
		    (long)r->argv, (long)r->envp, 0));
	for (p = a->paths; *p != NULL; p++) {
		e = child_syscall(SYS_execve, (long)*p, (long)r->argv,
		    (long)r->envp, 0);
		if (e == -EACCES)
			eacces = 1;
		else if (e != -ENOENT && e != -ENOTDIR)
			return (e);
	}
	return (eacces ? -EACCES : -ENOENT);
}

#ifdef HAVE_SCHED_ATTR
/*
 * Back to the time slice forkqd was given, with the policy and nice value
 * as they are now (forkqd may have been reniced since it started). Best
 * effort: else the task runs with forkqd's short slice, preempted more
 * often.
 */
static void CHILD_SIDE
child_drop_slice(uint64_t slice)
{
	struct kernel_sched_attr	attr;

	attr.size = sizeof attr;	/* what getattr writes, and setattr reads */
	if (child_syscall(SYS_sched_getattr, 0, (long)&attr, sizeof attr,
	    0) < 0)
		return;
	attr.sched_runtime = slice;
	(void)child_syscall(SYS_sched_setattr, 0, (long)&attr, 0, 0);
}
#endif

static int CHILD_SIDE
spawn_child_main(void *arg)
{
	struct spawn_child_args	*a = arg;
	const struct spawn_req	*r = a->req;
	struct spawn_status	*st = a->status;
	long			 e;
	int			 i;

	/*
	 * A newborn may start on forkqd's CPU and preempt it, and would keep
	 * the CPU through its exec (up to about 0.5 ms; under load, at one
	 * spawn in five), which an answer or the next reap waits out.
	 * Yielding first pushes the child's deadline back, so forkqd, or a
	 * task due before it, runs first: measured, submit p99 under load
	 * fell by 0.4 ms. Not when forkqd waits for the exec (CLONE_VFORK):
	 * there it would only wait longer.
	 */
	if (a->yield_first)
		(void)child_syscall(SYS_sched_yield, 0, 0, 0, 0);

	/*
	 * Into the attempt's cgroup first: all it starts stays there. A task
	 * left outside it would be out of reach of its stops, which signal
	 * the cgroup: it does not run.
	 */
	if (a->join_fd != -1) {
		st->step = STEP_CGROUP;
		if ((e = child_syscall(SYS_write, a->join_fd, (long)"0", 1,
		    0)) < 0)
			goto fail;
	}

	st->step = STEP_FDS;
	if ((e = child_fd(a->devnull, 0)) < 0 ||
	    (e = child_fd(r->stdout_fd, 1)) < 0 ||
	    (e = child_fd(r->stderr_fd, 2)) < 0 ||
	    (e = child_fd(r->heartbeat_fd, SPAWN_HEARTBEAT_FD)) < 0)
		goto fail;
	if (child_syscall(SYS_close_range, SPAWN_HEARTBEAT_FD + 1, ~0U, 0,
	    0) < 0) {
		for (i = SPAWN_HEARTBEAT_FD + 1; i <= a->close_max; i++)
			(void)child_syscall(SYS_close, i, 0, 0, 0);
	}

	/*
	 * Its own process group; its own session only when forkqd asks (a
	 * task without a cgroup, whose leftovers proctree.c finds by session),
	 * or when it cannot let go of forkqd's controlling terminal otherwise.
	 * A session is a scheduler group of its own (autogroup), which costs
	 * each spawn an allocation per CPU and gives each task the CPU share
	 * of a whole login session against forkqd's neighbours.
	 */
	if (r->own_session || (a->drop_tty && !child_drop_tty())) {
		st->step = STEP_SETSID;
		if ((e = child_syscall(SYS_setsid, 0, 0, 0, 0)) < 0)
			goto fail;
	} else {
		st->step = STEP_SETPGID;
		if ((e = child_syscall(SYS_setpgid, 0, 0, 0, 0)) < 0)
			goto fail;
	}

	/*
	 * Every disposition forkqd changed back to its default before signals
	 * are let in: forkqd's handlers must not run here on its memory, and
	 * what forkqd ignores (SIGPIPE, or what it inherited ignored) is not
	 * the task's. Not before the child has a group of its own: a signal
	 * to forkqd's group (^C on its terminal) would end it here.
	 */
	child_sig_reset(a->reset_sigs, a->nreset_sigs);
#ifdef HAVE_SCHED_ATTR
	if (a->drop_slice)
		child_drop_slice(a->slice);
#endif

	st->step = STEP_IDS;
	if (r->uid != (uid_t)-1) {
		if ((e = child_syscall(CHILD_SYS_SETGROUPS, r->ngroups,
		    (long)r->groups, 0, 0)) < 0 ||
		    (e = child_syscall(CHILD_SYS_SETGID, r->gid, 0, 0, 0)) < 0 ||
		    (e = child_syscall(CHILD_SYS_SETUID, r->uid, 0, 0, 0)) < 0)
			goto fail;
	}
	/* After the id change, which clears it. */
	(void)child_syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0);
	st->step = STEP_CHDIR;
	if ((e = child_syscall(SYS_chdir, (long)r->cwd, 0, 0, 0)) < 0)
		goto fail;

	/* Last: a low open-file limit must not stop the fd setup above. */
	st->step = STEP_RLIMIT;
	st->rlimit = -1;
	if (a->restore_nofile && (e = child_syscall(SYS_prlimit64, 0,
	    RLIMIT_NOFILE, (long)&a->nofile, 0)) < 0)
		goto fail;
	for (i = 0; i < RLIM_COUNT; i++) {
		st->rlimit = i;
		if (r->rlimit_set[i] && (e = child_syscall(SYS_prlimit64, 0,
		    rlimit_names[i].resource, (long)&a->rlimits[i], 0)) < 0)
			goto fail;
	}

	st->step = STEP_EXEC;
	e = child_exec(a);
fail:
	st->err = e < 0 ? (int)-e : EINVAL;
	return (127);
}

#ifdef HAVE_CLONE3_SPAWN
/*
 * clone3 with the child running fn(arg) on ca's stack, then exiting with
 * its value; returns the pid, or -1 with errno. The child cannot come back
 * through this function as clone()'s child does not: its stack is new, and
 * a return would land on the parent's frames. So the child side is in
 * assembly: rsp is the stack's (16-aligned) top, and the call leaves fn
 * the ABI's alignment. fn and arg ride in callee-saved registers, which the
 * child inherits.
 */
static pid_t
clone3_run(struct clone_args *ca, int (*fn)(void *), void *arg)
{
	register long		 ret __asm__("rax") = SYS_clone3;
	register void		*args __asm__("rdi") = ca;
	register size_t		 size __asm__("rsi") = sizeof *ca;
	register int		(*child_fn)(void *) __asm__("r12") = fn;
	register void		*child_arg __asm__("r13") = arg;

	__asm__ __volatile__(
	    "syscall\n\t"
	    "testq %%rax, %%rax\n\t"
	    "jnz 1f\n\t"
	    "xorl %%ebp, %%ebp\n\t"
	    "movq %%r13, %%rdi\n\t"
	    "callq *%%r12\n\t"
	    "movl %%eax, %%edi\n\t"
	    "movl %[exit_nr], %%eax\n\t"
	    "syscall\n\t"
	    "hlt\n"
	    "1:"
	    : "+r"(ret)
	    : "r"(args), "r"(size), "r"(child_fn), "r"(child_arg),
	      [exit_nr] "i"(SYS_exit)
	    : "rcx", "r11", "memory", "cc");
	if (ret < 0) {
		errno = (int)-ret;
		return (-1);
	}
	return ((pid_t)ret);
}
#endif
/* End of child-side code. */

/* Is clone3 with CLONE_INTO_CGROUP still worth a try here? */
#ifdef HAVE_CLONE3_SPAWN
static int	clone3_usable = 1;
static int	clone3_told;	/* -v said it is used (1) or failed (2) */
#endif

/*
 * Makes the child of slot s: in its cgroup by clone3 when there is one and
 * clone3 works, else by clone() with the child joining by itself.
 */
static pid_t
spawn_clone(struct spawn_slot *s)
{
	int	flags = CLONE_VM | CLONE_CHILD_CLEARTID |
		    (spawn_waits ? CLONE_VFORK : 0);
	pid_t	pid;
#ifdef HAVE_CLONE3_SPAWN
	struct clone_args	ca;
	int			err;
#endif

	s->args.yield_first = !(flags & CLONE_VFORK);
#ifdef HAVE_CLONE3_SPAWN
	s->args.join_fd = -1;
	if (clone3_usable && s->req.cgroup_dir_fd != -1) {
		memset(&ca, 0, sizeof ca);
		ca.flags = (uint64_t)flags | CLONE_INTO_CGROUP;
		ca.child_tid = (uintptr_t)&s->tid;
		ca.exit_signal = SIGCHLD;
		ca.stack = (uintptr_t)s->stack;
		ca.stack_size = CHILD_STACK_SIZE;
		ca.cgroup = (uint64_t)s->req.cgroup_dir_fd;
		if ((pid = clone3_run(&ca, spawn_child_main, &s->args)) != -1) {
			if (clone3_told == 0)
				log_info("tasks are made in their cgroup by "
				    "clone3");
			clone3_told = 1;
			return (pid);
		}
		/*
		 * Not this kernel, or refused by a filter (ENOSYS, or EPERM
		 * from older container profiles): the older way from now on.
		 * Other errors may be this cgroup's: this task only.
		 */
		err = errno;
		if (err == ENOSYS || err == EINVAL || err == E2BIG ||
		    err == EPERM)
			clone3_usable = 0;
		if (clone3_told != 2)
			log_info("clone3 into a cgroup: %s; tasks join their "
			    "cgroup by cgroup.procs%s", strerror(err),
			    clone3_usable ? " when it fails" : "");
		clone3_told = 2;
	}
#endif
	s->args.join_fd = s->req.cgroup_fd;
	pid = clone(spawn_child_main, s->stack + CHILD_STACK_SIZE,
	    flags | SIGCHLD, &s->args, NULL, NULL, &s->tid);
	return (pid);
}

/* What failed, for the attempt's error: the rlimit named as submitted. */
static const char *
spawn_step_name(int step, int rlimit)
{
	/* In the order of rlimit_names (proto.c). */
	static const char *const rlimit_steps[RLIM_COUNT] = {
		"setrlimit cpu", "setrlimit as", "setrlimit fsize",
		"setrlimit core", "setrlimit nofile", "setrlimit nproc",
	};

	if (step == STEP_RLIMIT && rlimit >= 0 && rlimit < RLIM_COUNT)
		return (rlimit_steps[rlimit]);
	switch (step) {
	case STEP_CGROUP:
		return ("joining its cgroup");
	case STEP_SETSID:
		return ("setsid");
	case STEP_SETPGID:
		return ("setpgid");
	case STEP_IDS:
		return ("setting uid/gid");
	case STEP_RLIMIT:
		return ("setrlimit");
	case STEP_CHDIR:
		return ("chdir");
	case STEP_FDS:
		return ("setting up fds");
	default:
		return ("exec");
	}
}

static void
child_rlimit_set(struct child_rlimit *to, const struct rlimit *from)
{
	to->cur = from->rlim_cur == RLIM_INFINITY ? UINT64_MAX :
	    (uint64_t)from->rlim_cur;
	to->max = from->rlim_max == RLIM_INFINITY ? UINT64_MAX :
	    (uint64_t)from->rlim_max;
}

/*
 * The paths execvp would try for name along path, as execvp builds them:
 * an empty element is the current directory. NULL-terminated, owned.
 */
static char **
exec_paths(const char *name, const char *path)
{
	const char	*p, *end;
	char		**paths;
	size_t		 n = 1, len, namelen = strlen(name);

	if (path == NULL)
		return (xcalloc(1, sizeof *paths));
	for (p = path; (p = strchr(p, ':')) != NULL; p++)
		n++;
	paths = xcalloc(n + 1, sizeof *paths);
	n = 0;
	for (p = path; p != NULL; p = *end != '\0' ? end + 1 : NULL) {
		if ((end = strchr(p, ':')) == NULL)
			end = p + strlen(p);
		len = (size_t)(end - p);
		if (len + 1 + namelen + 1 > PATH_MAX)
			continue;
		xasprintf(&paths[n++], "%.*s/%s", len == 0 ? 1 : (int)len,
		    len == 0 ? "." : p, name);
	}
	return (paths);
}

static void
spawn_slot_put(struct spawn_slot *s)
{
	strv_free(s->args.paths);
	s->args.paths = NULL;
	if (nslots_free < SLOTS_KEPT) {
		TAILQ_INSERT_HEAD(&slots_free, s, entry);
		nslots_free++;
	} else {
		free(s->groups);
		free(s);
	}
}

/* The slots of children that have exec'd or exited are free again. */
static void
spawn_slots_reclaim(void)
{
	struct spawn_slot	*s, *next;

	TAILQ_FOREACH_SAFE(s, &slots_busy, entry, next) {
		if (__atomic_load_n(&s->tid, __ATOMIC_ACQUIRE) != 0)
			continue;
		TAILQ_REMOVE(&slots_busy, s, entry);
		spawn_slot_put(s);
	}
}

static struct spawn_slot *
spawn_slot_get(void)
{
	struct spawn_slot	*s;

	spawn_slots_reclaim();
	if ((s = TAILQ_FIRST(&slots_free)) == NULL) {
		s = xmalloc(sizeof *s);
		s->groups = NULL;
		s->groups_room = 0;
		return (s);
	}
	TAILQ_REMOVE(&slots_free, s, entry);
	nslots_free--;
	return (s);
}

/* Fills the slot for req: the child will read nothing but the slot. */
static void
spawn_slot_fill(struct spawn_slot *s, const struct spawn_req *req,
    struct spawn_status *st)
{
	struct spawn_child_args	*a = &s->args;
	int			 i;

	if (nreset_sigs == -1)
		gather_reset_sigs();
	/* At the first spawn: after --daemon let go of the terminal forkqd
	 * started with. */
	if (has_tty == -1)
		has_tty = proctree_self_has_tty();
	s->req = *req;
	if (req->uid != (uid_t)-1 && req->ngroups < 1) {
		/* No list: the gid alone, not setgroups(0) (none at all). */
		s->req.groups = &s->req.gid;
		s->req.ngroups = 1;
	} else if (req->uid != (uid_t)-1) {
		/* The caller's list may change before the child's exec. */
		if (req->ngroups > s->groups_room) {
			s->groups = xreallocarray(s->groups,
			    (size_t)req->ngroups, sizeof *s->groups);
			s->groups_room = req->ngroups;
		}
		memcpy(s->groups, req->groups,
		    (size_t)req->ngroups * sizeof *s->groups);
		s->req.groups = s->groups;
	}
	memset(a, 0, sizeof *a);
	a->req = &s->req;
	a->direct = strchr(req->argv[0], '/') != NULL;
	a->paths = a->direct ? NULL : exec_paths(req->argv[0], req->path);
	a->reset_sigs = reset_sigs;
	a->nreset_sigs = nreset_sigs;
	a->devnull = devnull;
	a->join_fd = -1;
	a->close_max = have_close_range ? 0 : highest_open_fd();
	a->restore_nofile = nofile_raised;
	a->drop_slice = slice_taken;
	a->slice = slice_given;
	a->drop_tty = has_tty;
	child_rlimit_set(&a->nofile, &nofile_given);
	for (i = 0; i < RLIM_COUNT; i++)
		child_rlimit_set(&a->rlimits[i], &req->rlimits[i]);
	memset(st, 0, sizeof *st);
	a->status = st;
	s->tid = -1;	/* until the kernel clears it */
}

/*
 * Starts the process of req. Returns its pid (which is also its process
 * group id, and its session id with own_session), or -1 with errno when
 * clone itself failed. Whether the exec succeeded, st tells once the
 * child is reaped (spawn_reaped). req is copied, but not what it points
 * to: st, argv, envp, cwd and their strings must stay in place until the
 * child is reaped, as the child may still read them (or write st) after
 * this returns.
 */
pid_t
spawn_child(const struct spawn_req *req, struct spawn_status *st)
{
	struct spawn_slot	*s;
	sigset_t		 all, old;
	pid_t			 pid;
	int			 err;

	s = spawn_slot_get();
	spawn_slot_fill(s, req, st);

	/* No signal handler may run in the child on forkqd's memory. */
	sigfillset(&all);
	sigprocmask(SIG_SETMASK, &all, &old);
	pid = spawn_clone(s);
	if (pid == -1 && errno == EINVAL && !spawn_waits) {
		/* A clone the kernel (or an emulator) does not take. */
		log_info("clone without CLONE_VFORK: %s; forkqd waits for "
		    "each exec from now on", strerror(errno));
		spawn_waits = 1;
		pid = spawn_clone(s);
	}
	err = errno;
	sigprocmask(SIG_SETMASK, &old, NULL);
	if (pid == -1) {
		spawn_slot_put(s);
		errno = err;
		return (-1);
	}
	/*
	 * With CLONE_VFORK the child is done with the slot by now, or has a
	 * copy of its own where the clone was run as a fork (valgrind), whose
	 * tid would never be cleared here.
	 */
	if (spawn_waits)
		spawn_slot_put(s);
	else
		TAILQ_INSERT_TAIL(&slots_busy, s, entry);
	return (pid);
}

/*
 * Before children are made: forkqd's peak resident size goes back to its
 * current one. A child shares forkqd's memory until its exec, where the
 * kernel takes the larger of the two peaks for the child's (ru_maxrss):
 * every task's max_rss_kb was forkqd's highest ever (57 MB for /bin/true,
 * after one large list answer). Now it is at least forkqd's current size.
 */
void
spawn_forget_peak(void)
{
	/*
	 * Opened at the first use, not at start: --daemon forks after that,
	 * and the parent's /proc/self is not the daemon's. Without it (no
	 * /proc), a task's max_rss_kb keeps forkqd's peak.
	 */
	if (clear_refs == -1 && (clear_refs = open("/proc/self/clear_refs",
	    O_WRONLY | O_CLOEXEC)) == -1) {
		if (errno == EMFILE || errno == ENFILE)
			return;		/* out of fds for now: next time */
		log_warn("opening /proc/self/clear_refs (tasks' max_rss_kb "
		    "will count forkqd's peak size)");
		clear_refs = -2;
	}
	if (clear_refs == -2)
		return;
	if (pwrite(clear_refs, "5", 1, 0) == -1) {
		log_warn("writing /proc/self/clear_refs (tasks' max_rss_kb "
		    "will count forkqd's peak size)");
		close(clear_refs);
		clear_refs = -2;
	}
}

/*
 * Once the child of st is reaped: frees what it borrowed, and returns the
 * errno of its failure before or at its exec, with *step naming what
 * failed. 0 means it did not fail: it exec'd, or a signal ended it first.
 */
int
spawn_reaped(const struct spawn_status *st, const char **step)
{
	struct spawn_slot	*s;

	TAILQ_FOREACH(s, &slots_busy, entry) {
		if (s->args.status == st) {
			TAILQ_REMOVE(&slots_busy, s, entry);
			spawn_slot_put(s);
			break;
		}
	}
	*step = spawn_step_name(st->step, st->rlimit);
	return (st->err);
}
