/*
 * server.c: the listening Unix socket. Owns its fd and path: creates the
 * socket with the requested mode and group, refuses to steal a socket a
 * live forkqd answers on, accepts clients with their credentials
 * (SO_PEERCRED) and hands them to conn.c.
 */
#include "config.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forkqd.h"

static int	 listen_fd = -1;
static ev_io	 listen_io;
static char	*listen_path;

static void
server_accept_cb(struct ev_loop *l, ev_io *w, int revents)
{
	struct ucred	cred;
	socklen_t	len = sizeof cred;
	int		fd;

	for (;;) {
		fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK |
		    SOCK_CLOEXEC);
		if (fd == -1) {
			if (errno == EMFILE || errno == ENFILE)
				log_warn("accept: out of file descriptors");
			else if (errno != EAGAIN && errno != EINTR &&
			    errno != ECONNABORTED)
				log_warn("accept");
			return;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred,
		    &len) == -1) {
			log_warn("SO_PEERCRED");
			close(fd);
			continue;
		}
		conn_accept(fd, cred.uid, cred.gid, cred.pid);
	}
}

/* Is something answering on path? Then it is not stale. */
static int
server_in_use(const struct sockaddr_un *sun)
{
	int	fd, rc;

	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1)
		return (0);
	rc = connect(fd, (const struct sockaddr *)sun, sizeof *sun);
	close(fd);
	return (rc == 0);
}

int
server_listen(const char *path, mode_t mode, gid_t gid, char **cause)
{
	struct sockaddr_un	 sun;
	char			*dir;
	mode_t			 old;

	memset(&sun, 0, sizeof sun);
	sun.sun_family = AF_UNIX;
	if (strlcpy(sun.sun_path, path, sizeof sun.sun_path) >=
	    sizeof sun.sun_path) {
		xasprintf(cause, "socket path too long: %s", path);
		return (-1);
	}
	dir = xstrdup(path);
	if (mkdir(dirname(dir), 0755) == -1 && errno != EEXIST) {
		xasprintf(cause, "cannot create the socket's directory %s: %s",
		    dir, strerror(errno));
		free(dir);
		return (-1);
	}
	free(dir);
	if (server_in_use(&sun)) {
		xasprintf(cause, "%s: another forkqd is listening there", path);
		return (-1);
	}
	if (unlink(path) == -1 && errno != ENOENT) {
		xasprintf(cause, "cannot remove stale socket %s: %s", path,
		    strerror(errno));
		return (-1);
	}
	if ((listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK |
	    SOCK_CLOEXEC, 0)) == -1) {
		xasprintf(cause, "socket: %s", strerror(errno));
		return (-1);
	}
	/* Born with the final mode: no window where others may connect. */
	old = umask(~mode & 0777);
	if (bind(listen_fd, (struct sockaddr *)&sun, sizeof sun) == -1) {
		umask(old);
		xasprintf(cause, "bind %s: %s", path, strerror(errno));
		close(listen_fd);
		listen_fd = -1;
		return (-1);
	}
	umask(old);
	if (chmod(path, mode) == -1 ||
	    (gid != (gid_t)-1 && chown(path, (uid_t)-1, gid) == -1)) {
		xasprintf(cause, "setting mode/group of %s: %s", path,
		    strerror(errno));
		close(listen_fd);
		listen_fd = -1;
		return (-1);
	}
	if (listen(listen_fd, 512) == -1) {
		xasprintf(cause, "listen %s: %s", path, strerror(errno));
		close(listen_fd);
		listen_fd = -1;
		return (-1);
	}
	listen_path = xstrdup(path);
	ev_io_init(&listen_io, server_accept_cb, listen_fd, EV_READ);
	ev_io_start(loop, &listen_io);
	return (0);
}

/* Stops accepting and removes the socket file. */
void
server_close(void)
{
	if (listen_fd == -1)
		return;
	ev_io_stop(loop, &listen_io);
	close(listen_fd);
	listen_fd = -1;
	if (unlink(listen_path) == -1 && errno != ENOENT)
		log_warn("unlink %s", listen_path);
	free(listen_path);
	listen_path = NULL;
}
