/*
 * spawnloop.c: the physical baseline for bench/run.py: runs /bin/true with
 * posix_spawn (vfork+exec in glibc) and records nothing.
 *
 *	spawnloop [-p] [-w US] N J [RATE]
 *
 * Starts N processes of /bin/true, at most J at a time, and reaps each. With
 * RATE (per second) it starts them no faster than that, as a steady load;
 * without, as fast as they end: the most tasks per second this machine can
 * run with J in flight. With -p each process gets what forkqd gives every
 * task that has a cgroup: its own process group, and pipes on stdout,
 * stderr and fd 3 (the heartbeat) whose read ends are polled until EOF,
 * with a pidfd for its exit; a slot is free once its process is reaped
 * and its pipes are at EOF. With -w, each slot that comes free costs US
 * microseconds of this process's CPU before anything else (a busy loop on
 * its own CPU clock): a supervisor that spends that much per task, one
 * task after another, and does nothing else; run.py sets it to forkqd's
 * CPU per task above this loop's, to show how much of forkq's distance to
 * the limit that CPU alone explains. Prints "N SECONDS SELF CHILDREN" when done:
 * the seconds it took, then the CPU seconds (user and system) that
 * spawnloop used itself and that its reaped children used, for run.py's
 * account of the cores.
 * Exit 0, 1 on a usage error, 2 when a call fails.
 */
#define _GNU_SOURCE	/* pipe2 */

#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_J	64
#define NPIPES	3	/* stdout, stderr, heartbeat */

extern char **environ;

struct slot {
	pid_t	pid;		/* -1: free */
	int	reaped;
	int	pidfd;		/* -p: readable once it exits, or -1 */
	int	fd[NPIPES];	/* read ends, -1 once at EOF */
};

/* User plus system seconds of who (RUSAGE_SELF or RUSAGE_CHILDREN). */
static double
cpu_s(int who)
{
	struct rusage	ru;

	if (getrusage(who, &ru) == -1)
		return (-1.);
	return ((double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
	    (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
}

static double
now_s(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
}

/* Spends us microseconds of this thread's CPU time (not wall time: a
 * preempted loop would spend less than asked). */
static void
spend_cpu(double us)
{
	struct timespec	ts;
	double		start, t;

	if (us <= 0. || clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == -1)
		return;
	start = (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
	do {
		if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == -1)
			return;
		t = (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
	} while (t - start < us);
}

/* Starts /bin/true in s: bare, or with forkqd's process group and pipes. */
static int
start(struct slot *s, int pipes)
{
	static char			*av[] = { "/bin/true", NULL };
	posix_spawn_file_actions_t	 fa;
	posix_spawnattr_t		 at;
	int				 p[NPIPES][2], k, rc;

	for (k = 0; k < NPIPES; k++)
		s->fd[k] = -1;
	s->reaped = 0;
	s->pidfd = -1;
	if (!pipes)
		return (posix_spawn(&s->pid, av[0], NULL, NULL, av, environ));
	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&at);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP);
	for (k = 0; k < NPIPES; k++) {
		if (pipe2(p[k], O_CLOEXEC) == -1 ||
		    fcntl(p[k][0], F_SETFL, O_NONBLOCK) == -1)
			return (-1);
		posix_spawn_file_actions_adddup2(&fa, p[k][1], k + 1);
	}
	rc = posix_spawn(&s->pid, av[0], &fa, &at, av, environ);
	for (k = 0; k < NPIPES; k++) {
		close(p[k][1]);
		s->fd[k] = p[k][0];
	}
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	if (rc == 0 && (s->pidfd = (int)syscall(SYS_pidfd_open, s->pid,
	    0)) == -1)
		return (-1);
	return (rc);
}

/* Waits for the next exit or EOF; returns how many slots came free. */
static int
settle(struct slot *slots, long j, int pipes)
{
	struct pollfd	pfd[MAX_J * (NPIPES + 1)];
	char		buf[4096];
	pid_t		pid;
	long		i;
	int		k, n = 0, freed = 0;

	if (pipes) {
		for (i = 0; i < j; i++) {
			if (slots[i].pid == -1)
				continue;
			if (!slots[i].reaped) {
				pfd[n].fd = slots[i].pidfd;
				pfd[n++].events = POLLIN;
			}
			for (k = 0; k < NPIPES; k++) {
				if (slots[i].fd[k] == -1)
					continue;
				pfd[n].fd = slots[i].fd[k];
				pfd[n++].events = POLLIN;
			}
		}
	}
	if (n > 0) {
		if (poll(pfd, n, -1) == -1)
			return (-1);
		for (i = 0; i < j; i++)
			for (k = 0; k < NPIPES; k++) {
				if (slots[i].pid == -1 || slots[i].fd[k] == -1 ||
				    read(slots[i].fd[k], buf, sizeof buf) != 0)
					continue;
				close(slots[i].fd[k]);
				slots[i].fd[k] = -1;
			}
	}
	while ((pid = waitpid(-1, NULL, n > 0 ? WNOHANG : 0)) > 0) {
		for (i = 0; i < j; i++)
			if (slots[i].pid == pid)
				slots[i].reaped = 1;
		if (n == 0)
			break;
	}
	for (i = 0; i < j; i++) {
		if (slots[i].pid == -1 || !slots[i].reaped)
			continue;
		for (k = 0; k < NPIPES && slots[i].fd[k] == -1; k++)
			;
		if (k == NPIPES) {
			if (slots[i].pidfd != -1)
				close(slots[i].pidfd);
			slots[i].pid = -1;
			freed++;
		}
	}
	return (freed);
}

int
main(int argc, char **argv)
{
	struct slot	 slots[MAX_J];
	struct timespec	 pause;
	double		 t0, rate = 0., due, work_us = 0.;
	long		 n, j, i, started = 0, done = 0, inflight = 0;
	int		 pipes = 0, freed;

	for (;;) {
		if (argc > 1 && strcmp(argv[1], "-p") == 0) {
			pipes = 1;
			argc--;
			argv++;
		} else if (argc > 2 && strcmp(argv[1], "-w") == 0) {
			if ((work_us = strtod(argv[2], NULL)) < 0.)
				return (1);
			argc -= 2;
			argv += 2;
		} else
			break;
	}
	if (argc < 3 || (n = strtol(argv[1], NULL, 10)) <= 0 ||
	    (j = strtol(argv[2], NULL, 10)) <= 0 || j > MAX_J)
		return (1);
	if (argc > 3 && (rate = strtod(argv[3], NULL)) < 0.)
		return (1);
	for (i = 0; i < j; i++)
		slots[i].pid = -1;
	t0 = now_s();
	while (done < n) {
		for (i = 0; i < j && inflight < j && started < n; i++) {
			if (slots[i].pid != -1)
				continue;
			if (rate > 0. &&
			    (due = t0 + (double)started / rate) > now_s()) {
				if (inflight > 0)
					break;	/* reap meanwhile */
				due -= now_s();
				pause.tv_sec = (time_t)due;
				pause.tv_nsec = (long)((due -
				    (double)pause.tv_sec) * 1e9);
				nanosleep(&pause, NULL);
			}
			if (start(&slots[i], pipes) != 0)
				return (2);
			started++;
			inflight++;
		}
		if ((freed = settle(slots, j, pipes)) == -1)
			return (2);
		spend_cpu(work_us * freed);
		inflight -= freed;
		done += freed;
	}
	printf("%ld %.6f %.6f %.6f\n", n, now_s() - t0, cpu_s(RUSAGE_SELF),
	    cpu_s(RUSAGE_CHILDREN));
	return (0);
}
