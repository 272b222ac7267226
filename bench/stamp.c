/*
 * stamp.c: a task for bench/run.py that records when it started.
 *
 *	stamp FILE
 *
 * Reads CLOCK_REALTIME first thing in main, then writes it to FILE as
 * decimal nanoseconds and a newline. Raw syscalls only, so the figure is
 * the moment the program began running its own code (after exec and the
 * dynamic loader). Exit 0, or 1 when FILE cannot be written.
 */
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

int
main(int argc, char **argv)
{
	struct timespec	 ts;
	char		 buf[32], *p = buf + sizeof buf;
	unsigned long long v;
	int		 fd;

	clock_gettime(CLOCK_REALTIME, &ts);
	if (argc < 2)
		return (1);
	v = (unsigned long long)ts.tv_sec * 1000000000ULL +
	    (unsigned long long)ts.tv_nsec;
	*--p = '\n';
	do {
		*--p = (char)('0' + v % 10);
		v /= 10;
	} while (v != 0);
	fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd == -1 || write(fd, p, (size_t)(buf + sizeof buf - p)) == -1)
		return (1);
	return (close(fd) == 0 ? 0 : 1);
}
