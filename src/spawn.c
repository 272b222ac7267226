/*
 * spawn.c: starting a task's process. The only file with child-side code.
 *
 * The child is made with clone(CLONE_VM | CLONE_VFORK): it borrows forkqd's
 * memory until it execs, so the cost of a spawn does not grow with forkqd's
 * size as fork()'s page-table copy does, and forkqd is suspended meanwhile.
 * Everything the child needs (argv, envp, PATH candidates, fds, rlimits) is
 * prepared by the parent; the child only makes raw system calls. Because
 * memory is shared, the child reports an exec failure by storing errno in a
 * variable of the parent before it exits: when clone returns, that variable
 * is 0 if and only if the exec succeeded.
 *
 * A child with a cgroup is made in it by clone3(CLONE_INTO_CGROUP) where
 * the kernel and the build allow (x86-64, Linux 5.7); elsewhere, or where
 * clone3 is refused (a seccomp filter may answer ENOSYS), clone() makes it
 * and the child joins by writing cgroup.procs.
 */
#include "config.h"

#include <sys/prctl.h>
#include <sys/syscall.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forkqd.h"

#if defined(__x86_64__) && defined(SYS_clone3) && HAVE_DECL_CLONE_INTO_CGROUP
#include <linux/sched.h>
#define HAVE_CLONE3_SPAWN	1
#endif

/* Where in the child it failed; reported with errno. */
enum spawn_step {
	STEP_NONE,
	STEP_SETSID,
	STEP_IDS,
	STEP_RLIMIT,
	STEP_CHDIR,
	STEP_FDS,
	STEP_EXEC,
};

struct spawn_child_args {
	const struct spawn_req	*req;
	const int		*reset_sigs;	/* back to SIG_DFL */
	int			 nreset_sigs;
	int			 devnull;	/* forkqd's fd on /dev/null */
	int			 join_fd;	/* cgroup.procs to join, or -1 */
	sigset_t		 oldmask;
	int			 close_max;	/* highest fd to close */
	const struct rlimit	*nofile;	/* to restore, or NULL */
	char			*pathbuf;	/* PATH_MAX scratch */
	volatile int		 err;		/* errno of the failure */
	volatile int		 step;		/* enum spawn_step */
	volatile int		 rlimit;	/* STEP_RLIMIT: which, -1 own */
};

/* Child stack: the child runs little and never recurses. */
#define CHILD_STACK_SIZE	(64 * 1024)

/*
 * forkqd's open-file limit as it was given (tasks get it back) and the
 * highest fd a child may have to close.
 */
static struct rlimit	 nofile_given;
static int		 nofile_raised;
static int		 have_close_range = 1;
static int		 devnull = -1;	/* a task's stdin */

/*
 * The signals whose disposition in forkqd is not the default (its
 * handlers, SIGPIPE ignored, what it inherited ignored, real-time ones
 * included): the child resets these, not all 64, as forkqd waits for it.
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

static int
child_fd(int from, int to)
{
	if (from == to)
		return (fcntl(to, F_SETFD, 0));
	return (dup2(from, to) == -1 ? -1 : 0);
}

/*
 * ASYNC-SIGNAL-SAFE ONLY from here to the end of spawn_child_main: this runs
 * in the child, on memory shared with forkqd, before exec. No malloc, no
 * stdio, no logging, no locks; only system calls on prepared data.
 */
static int __attribute__((no_sanitize_address))
spawn_child_main(void *arg)
{
	struct spawn_child_args	*a = arg;
	const struct spawn_req	*r = a->req;
	struct sigaction	 sa;
	const char		*p, *end;
	size_t			 dirlen, namelen;
	int			 i, eacces = 0;

	/*
	 * Every disposition forkqd changed back to its default before signals
	 * are let in: forkqd's handlers must not run here on its memory, and
	 * what forkqd ignores (SIGPIPE, or what it inherited ignored) is not
	 * the task's.
	 */
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_DFL;
	for (i = 0; i < a->nreset_sigs; i++)
		(void)sigaction(a->reset_sigs[i], &sa, NULL);
	sigemptyset(&sa.sa_mask);
	(void)sigprocmask(SIG_SETMASK, &sa.sa_mask, NULL);

	/* Into the attempt's cgroup first: all it starts stays there. */
	if (a->join_fd != -1)
		(void)write(a->join_fd, "0", 1);

	a->step = STEP_SETSID;
	if (setsid() == -1)
		goto fail;

	a->step = STEP_IDS;
	if (r->uid != (uid_t)-1) {
		if (setgroups(1, &r->gid) == -1 || setgid(r->gid) == -1 ||
		    setuid(r->uid) == -1)
			goto fail;
	}
	/* After the id change, which clears it. */
	(void)prctl(PR_SET_PDEATHSIG, SIGKILL);
	a->step = STEP_CHDIR;
	if (chdir(r->cwd) == -1)
		goto fail;

	a->step = STEP_FDS;
	if (child_fd(a->devnull, 0) == -1)
		goto fail;
	if (child_fd(r->stdout_fd, 1) == -1 || child_fd(r->stderr_fd, 2) == -1)
		goto fail;
	if (child_fd(r->heartbeat_fd, SPAWN_HEARTBEAT_FD) == -1)
		goto fail;
	if (syscall(SYS_close_range, SPAWN_HEARTBEAT_FD + 1, ~0U, 0) == -1) {
		for (i = SPAWN_HEARTBEAT_FD + 1; i <= a->close_max; i++)
			(void)close(i);
	}

	/* Last: a low open-file limit must not stop the fd setup above. */
	a->step = STEP_RLIMIT;
	a->rlimit = -1;
	if (a->nofile != NULL && setrlimit(RLIMIT_NOFILE, a->nofile) == -1)
		goto fail;
	for (i = 0; i < RLIM_COUNT; i++) {
		a->rlimit = i;
		if (r->rlimit_set[i] &&
		    setrlimit(rlimit_names[i].resource, &r->rlimits[i]) == -1)
			goto fail;
	}

	a->step = STEP_EXEC;
	if (strchr(r->argv[0], '/') != NULL) {
		execve(r->argv[0], r->argv, r->envp);
		goto fail;
	}
	namelen = strlen(r->argv[0]);
	for (p = r->path; p != NULL; p = *end != '\0' ? end + 1 : NULL) {
		if ((end = strchr(p, ':')) == NULL)
			end = p + strlen(p);
		dirlen = end - p;
		if (dirlen == 0) {
			dirlen = 1;
			p = ".";
		}
		if (dirlen + 1 + namelen + 1 > PATH_MAX)
			continue;
		memcpy(a->pathbuf, p, dirlen);
		a->pathbuf[dirlen] = '/';
		memcpy(a->pathbuf + dirlen + 1, r->argv[0], namelen + 1);
		execve(a->pathbuf, r->argv, r->envp);
		if (errno == EACCES)
			eacces = 1;
		else if (errno != ENOENT && errno != ENOTDIR)
			goto fail;
		if (p[0] == '.' && dirlen == 1 && *end == '\0')
			break;
	}
	errno = eacces ? EACCES : ENOENT;
fail:
	a->err = errno != 0 ? errno : EINVAL;
	_exit(127);
}

#ifdef HAVE_CLONE3_SPAWN
/*
 * clone3 with the child running fn(arg) on ca's stack, then exiting with
 * its value; returns the pid, or -1 with errno. The child cannot come back
 * through this function as clone()'s child does not: its stack is new, and
 * a return would land on the suspended parent's frames. So the child side
 * is in assembly: rsp is the stack's (16-aligned) top, and the call leaves
 * fn the ABI's alignment. fn and arg ride in callee-saved registers, which
 * the child inherits.
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
 * Makes the child of a: in its cgroup by clone3 when there is one and
 * clone3 works, else by clone() with the child joining by itself.
 */
static pid_t
spawn_clone(struct spawn_child_args *a, char *stack)
{
	pid_t	pid;
#ifdef HAVE_CLONE3_SPAWN
	struct clone_args	ca;
	int			err;

	a->join_fd = -1;
	if (clone3_usable && a->req->cgroup_dir_fd != -1) {
		memset(&ca, 0, sizeof ca);
		ca.flags = CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP;
		ca.exit_signal = SIGCHLD;
		ca.stack = (uintptr_t)stack;
		ca.stack_size = CHILD_STACK_SIZE;
		ca.cgroup = (uint64_t)a->req->cgroup_dir_fd;
		if ((pid = clone3_run(&ca, spawn_child_main, a)) != -1) {
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
	a->join_fd = a->req->cgroup_fd;
	pid = clone(spawn_child_main, stack + CHILD_STACK_SIZE,
	    CLONE_VM | CLONE_VFORK | SIGCHLD, a);
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
	case STEP_SETSID:
		return ("setsid");
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

/*
 * Starts the process of req. Returns its pid (which is also its process
 * group and session id) with *err 0; when the child could not exec, returns
 * its pid (it has exited, to be reaped as usual) with *err set to the errno
 * and *step naming what failed, and -1 with *err when clone itself failed.
 */
pid_t
spawn_child(const struct spawn_req *req, int *err, const char **step)
{
	static char		*stack, *pathbuf;
	struct spawn_child_args	 a;
	sigset_t		 all;
	pid_t			 pid;

	if (stack == NULL) {
		stack = xmalloc(CHILD_STACK_SIZE);
		pathbuf = xmalloc(PATH_MAX);
	}
	if (nreset_sigs == -1)
		gather_reset_sigs();
	memset(&a, 0, sizeof a);
	a.req = req;
	a.reset_sigs = reset_sigs;
	a.nreset_sigs = nreset_sigs;
	a.devnull = devnull;
	a.pathbuf = pathbuf;
	a.close_max = have_close_range ? 0 : highest_open_fd();
	a.nofile = nofile_raised ? &nofile_given : NULL;

	/* No signal handler may run in the child on forkqd's memory. */
	sigfillset(&all);
	sigprocmask(SIG_SETMASK, &all, &a.oldmask);
	pid = spawn_clone(&a, stack);
	*err = pid == -1 ? errno : a.err;
	*step = pid == -1 ? "clone" : spawn_step_name(a.step, a.rlimit);
	sigprocmask(SIG_SETMASK, &a.oldmask, NULL);
	return (pid);
}

