/*
 * spawnloop.c: the physical baseline for bench/run.py: runs /bin/true with
 * posix_spawn (vfork+exec in glibc) and records nothing.
 *
 *	spawnloop N J [RATE]
 *
 * Starts N processes of /bin/true, at most J at a time, and reaps each. With
 * RATE (per second) it starts them no faster than that, as a steady load;
 * without, as fast as they end: the most tasks per second this machine can
 * run with J in flight. Prints "N SECONDS" when done. Exit 0, 1 on a usage
 * error, 2 when a spawn or a wait fails.
 */
#include <sys/wait.h>

#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

extern char **environ;

static double
now_s(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
}

int
main(int argc, char **argv)
{
	char	*av[] = { "/bin/true", NULL };
	struct timespec	 pause;
	double	 t0, rate = 0., due;
	long	 n, j, started = 0, done = 0, inflight = 0;
	pid_t	 pid;

	if (argc < 3 || (n = strtol(argv[1], NULL, 10)) <= 0 ||
	    (j = strtol(argv[2], NULL, 10)) <= 0)
		return (1);
	if (argc > 3 && (rate = strtod(argv[3], NULL)) < 0.)
		return (1);
	t0 = now_s();
	while (done < n) {
		while (inflight < j && started < n) {
			if (rate > 0. &&
			    (due = t0 + (double)started / rate) > now_s()) {
				if (inflight > 0)
					break;	/* reap meanwhile */
				due -= now_s();
				pause.tv_sec = (time_t)due;
				pause.tv_nsec = (long)((due -
				    (double)pause.tv_sec) * 1e9);
				nanosleep(&pause, NULL);
				continue;
			}
			if (posix_spawn(&pid, av[0], NULL, NULL, av,
			    environ) != 0)
				return (2);
			started++;
			inflight++;
		}
		if (wait(NULL) == -1)
			return (2);
		inflight--;
		done++;
	}
	printf("%ld %.6f\n", n, now_s() - t0);
	return (0);
}
