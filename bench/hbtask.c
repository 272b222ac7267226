/*
 * hbtask.c: a task for bench/run.py that heartbeats and does nothing else.
 *
 *	hbtask SECONDS [INTERVAL_MS [progress|stdout]]
 *
 * Writes "\n" (with "progress": "progress N\n", N counting 0 to 100 and
 * round again) to the fd in $FORKQ_HEARTBEAT_FD (with "stdout": a line of
 * 60 bytes to standard output) every INTERVAL_MS (default 100, i.e. 10 Hz)
 * for SECONDS, sleeping with nanosleep in between; exits 0
 * then, 1 on a usage error, 2 when the fd is missing or a write fails (forkqd
 * closed the pipe). No stdio on the hot path, no shell.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int
main(int argc, char **argv)
{
	struct timespec	 next, now;
	const char	*s;
	long		 seconds, interval_ms;
	long long	 end_ns, now_ns;
	char		 line[64] = "\n";
	int		 fd, progress, len = 1, n = 0;

	if (argc < 2 || (seconds = strtol(argv[1], NULL, 10)) <= 0)
		return (1);
	interval_ms = argc > 2 ? strtol(argv[2], NULL, 10) : 100;
	if (interval_ms <= 0)
		return (1);
	progress = argc > 3 && strcmp(argv[3], "progress") == 0;
	if (argc > 3 && strcmp(argv[3], "stdout") == 0) {
		fd = STDOUT_FILENO;
		len = snprintf(line, sizeof line, "%59s\n", "a log line");
	} else if ((s = getenv("FORKQ_HEARTBEAT_FD")) == NULL)
		return (2);
	else
		fd = (int)strtol(s, NULL, 10);

	clock_gettime(CLOCK_MONOTONIC, &next);
	end_ns = next.tv_sec * 1000000000LL + next.tv_nsec +
	    seconds * 1000000000LL;
	for (;;) {
		if (progress)
			len = snprintf(line, sizeof line, "progress %d\n",
			    n++ % 101);
		if (write(fd, line, len) != len)
			return (2);
		/* Absolute deadlines, so the rate does not drift with load. */
		next.tv_nsec += interval_ms * 1000000L;
		while (next.tv_nsec >= 1000000000L) {
			next.tv_nsec -= 1000000000L;
			next.tv_sec++;
		}
		clock_gettime(CLOCK_MONOTONIC, &now);
		now_ns = now.tv_sec * 1000000000LL + now.tv_nsec;
		if (now_ns >= end_ns)
			return (0);
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next,
		    NULL) == EINTR)
			;
	}
}
