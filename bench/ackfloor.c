/*
 * ackfloor.c: the floor under a durable submit, for bench/run.py: a server
 * that makes each request line durable and answers it, and does nothing
 * else.
 *
 *	ackfloor SOCKET FILE
 *
 * Listens on the Unix socket SOCKET and serves one connection: for each line
 * it reads, it writes 1 KiB (one page of forkqd's WAL) to FILE, over 1 MiB
 * it keeps allocated, fdatasyncs FILE, and answers "{\"ok\":true}\n". Exits
 * 0 when the client closes, 1 on a usage error, 2 when a call fails.
 */
#include <sys/socket.h>
#include <sys/un.h>

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#define PAGE	1024
#define PAGES	1024

int
main(int argc, char **argv)
{
	static const char	 ok[] = "{\"ok\":true}\n";
	struct sockaddr_un	 sun = { .sun_family = AF_UNIX };
	char			 buf[65536], page[PAGE];
	ssize_t			 n, i;
	long			 next = 0;
	int			 lfd, cfd, fd;

	if (argc != 3 || strlen(argv[1]) >= sizeof sun.sun_path)
		return (1);
	memset(page, 'x', sizeof page);
	if ((fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
	    0600)) == -1 || posix_fallocate(fd, 0, PAGE * PAGES) != 0 ||
	    fsync(fd) == -1)
		return (2);
	strcpy(sun.sun_path, argv[1]);
	if ((lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1 ||
	    bind(lfd, (struct sockaddr *)&sun, sizeof sun) == -1 ||
	    listen(lfd, 1) == -1 || (cfd = accept(lfd, NULL, NULL)) == -1)
		return (2);
	while ((n = read(cfd, buf, sizeof buf)) > 0) {
		for (i = 0; i < n; i++) {
			if (buf[i] != '\n')
				continue;
			if (pwrite(fd, page, PAGE, (next++ % PAGES) * PAGE) !=
			    PAGE || fdatasync(fd) == -1 ||
			    write(cfd, ok, sizeof ok - 1) != sizeof ok - 1)
				return (2);
		}
	}
	return (n == 0 ? 0 : 2);
}
