/*
 * server.c: the listening Unix socket. Owns its fd and path: creates the
 * socket with the requested mode and group, refuses to steal a socket a
 * live forkqd answers on, accepts clients with their credentials
 * (SO_PEERCRED) and hands them to conn.c. Under systemd socket activation
 * the socket is the one systemd passed (and its path systemd's to remove).
 */
#include "config.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forkqd.h"

static int	 listen_fd = -1;
static ev_io	 listen_io;
static char	*listen_path;
static int	 activated;	/* the socket came from systemd */
static int	 adopted_fd = -1;	/* server_adopt's, for server_listen */

#define SD_LISTEN_FDS_START	3	/* sd_listen_fds(3) */

/*
 * Out of file descriptors, a client left in the backlog keeps the socket
 * readable and the loop would spin on accept. forkqd keeps one fd spare to
 * take such a client, tell it why and close it; without one, it stops
 * accepting for a moment.
 */
static int	 spare_fd = -1;
static ev_timer	 accept_pause;
static long long refused;		/* since the last log line */
static ev_tstamp fds_logged;
#define ACCEPT_PAUSE_S		0.1
#define ACCEPTS_PER_CALLBACK	64
#define OUT_OF_FDS_LOG_S	10.0

static const char out_of_fds_answer[] = "{\"ok\":false,\"error\":{"
    "\"code\":\"unavailable\",\"message\":\"forkqd is out of file "
    "descriptors: try again later\"}}\n";

static void
spare_open(void)
{
	if (spare_fd == -1 &&
	    (spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) == -1)
		log_warn("open /dev/null (the spare fd)");
}

static void
accept_pause_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	spare_open();
	if (listen_fd != -1)
		ev_io_start(loop, &listen_io);
}

/*
 * accept failed with EMFILE or ENFILE: refuse the next client with the
 * spare fd. Returns 0 when one was refused (there may be more), -1 when
 * accepting stopped for now.
 */
static int
server_out_of_fds(void)
{
	int	fd = -1, err = 0, rc = -1;

	if (ev_now(loop) - fds_logged >= OUT_OF_FDS_LOG_S) {
		if (refused == 0)
			log_warnx("out of file descriptors: refusing new "
			    "clients until some close (RLIMIT_NOFILE)");
		else
			log_warnx("out of file descriptors: %lld clients "
			    "refused since the last warning", refused);
		fds_logged = ev_now(loop);
		refused = 0;
	}
	if (spare_fd != -1) {
		close(spare_fd);
		spare_fd = -1;
		fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK |
		    SOCK_CLOEXEC);
		err = fd == -1 ? errno : 0;
		if (fd != -1) {
			/* A new socket's buffer takes it; if not, it is gone. */
			(void)send(fd, out_of_fds_answer,
			    sizeof out_of_fds_answer - 1, MSG_NOSIGNAL);
			close(fd);
			refused++;
			rc = 0;
		}
		spare_open();
		if (err == EAGAIN)
			return (-1);	/* nobody left waiting */
		if (err == EINTR || err == ECONNABORTED)
			rc = 0;		/* try the next one */
	}
	if (spare_fd == -1 || (fd == -1 && rc == -1)) {
		ev_io_stop(loop, &listen_io);
		ev_timer_set(&accept_pause, ACCEPT_PAUSE_S, 0.);
		ev_timer_start(loop, &accept_pause);
		return (-1);
	}
	return (rc);
}

/* Tells a client admit.c refused why, in an answer line, and closes it. */
static void
server_refuse(int fd, const char *why)
{
	json_t	*ans;
	char	*line;
	size_t	 len;

	ans = proto_error("unavailable", "%s", why);
	if ((line = proto_encode(ans, 0, 1, &len)) != NULL) {
		line[len] = '\n';
		/* A new socket's buffer takes it; if not, it is gone. */
		(void)send(fd, line, len + 1, MSG_NOSIGNAL);
	}
	free(line);
	json_decref(ans);
	close(fd);
}

static void
server_accept_cb(struct ev_loop *l, ev_io *w, int revents)
{
	struct ucred	cred;
	socklen_t	len = sizeof cred;
	char		why[512];
	int		fd, n;

	/*
	 * A bounded number per callback: clients that connect and close in
	 * a loop, refused at once (admit.c), kept the queue from emptying,
	 * and forkqd in here, for seconds: answers, exits and timers waited.
	 * The socket stays readable; the loop comes back to it.
	 */
	for (n = 0; n < ACCEPTS_PER_CALLBACK; n++) {
		fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK |
		    SOCK_CLOEXEC);
		if (fd == -1) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EMFILE || errno == ENFILE) {
				if (server_out_of_fds() == 0)
					continue;
				return;
			}
			if (errno != EAGAIN)
				log_warn("accept");
			return;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred,
		    &len) == -1) {
			log_warn("SO_PEERCRED");
			close(fd);
			continue;
		}
		if (admit_client(cred.uid, why, sizeof why) == -1) {
			server_refuse(fd, why);
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

/* "a Unix datagram socket, not listening", for what systemd passed. */
static const char *
socket_described(int type, int listening, sa_family_t family)
{
	static char	 buf[96];
	const char	*fam, *kind;

	if (type == -1)
		return ("not a socket");
	switch (family) {
	case AF_UNIX:
		fam = "a Unix";
		break;
	case AF_INET:
		fam = "an IPv4";
		break;
	case AF_INET6:
		fam = "an IPv6";
		break;
	default:
		fam = "a non-Unix";
		break;
	}
	kind = type == SOCK_STREAM ? "stream" : type == SOCK_DGRAM ?
	    "datagram" : type == SOCK_SEQPACKET ? "seqpacket" : "other";
	snprintf(buf, sizeof buf, "%s %s socket, %s", fam, kind,
	    listening ? "listening" : "not listening");
	return (buf);
}

/*
 * systemd socket activation (the sd_listen_fds(3) protocol, spoken
 * directly): when LISTEN_PID is forkqd's pid and LISTEN_FDS is 1, fd 3 is
 * the listening socket, bound with the unit's mode and owner. Asked once,
 * at start, before --daemon changes the pid (server_adopt). Returns that
 * fd, -1 when forkqd was not given one, or -2 with *cause when what it was
 * given cannot serve as forkqd's socket at path.
 */
static int
server_activated(const char *path, char **cause)
{
	const char		*pid_s, *fds_s, *errstr;
	struct sockaddr_un	 sun;
	socklen_t		 len = sizeof sun;
	char			 got[sizeof sun.sun_path + 1];
	long long		 pid, nfds;
	int			 fd = SD_LISTEN_FDS_START, type, acc, fl;
	socklen_t		 olen = sizeof type;

	pid_s = getenv("LISTEN_PID");
	fds_s = getenv("LISTEN_FDS");
	if (pid_s == NULL || fds_s == NULL)
		return (-1);
	pid = strtonum(pid_s, 1, INT32_MAX, &errstr);
	if (errstr != NULL || pid != getpid())
		return (-1);
	nfds = strtonum(fds_s, 0, 64, &errstr);
	if (errstr != NULL)
		nfds = -1;
	/* Not for the tasks (they are kept out of their environment too). */
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	if (nfds == 0)
		return (-1);	/* none passed: forkqd makes its own */
	if (nfds != 1) {
		xasprintf(cause, "systemd passed %s sockets (LISTEN_FDS): "
		    "forkqd takes exactly one", nfds == -1 ? "a bad number of" :
		    "several");
		return (-2);
	}
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &olen) == -1)
		type = -1;
	olen = sizeof acc;
	if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &olen) == -1)
		acc = 0;
	memset(&sun, 0, sizeof sun);
	if (getsockname(fd, (struct sockaddr *)&sun, &len) == -1)
		sun.sun_family = AF_UNSPEC;
	if (type != SOCK_STREAM || !acc || sun.sun_family != AF_UNIX) {
		xasprintf(cause, "the socket systemd passed (fd 3) is %s: "
		    "forkqd takes a listening Unix stream socket",
		    socket_described(type, acc, sun.sun_family));
		return (-2);
	}
	/* sun_path need not end in a NUL: compare it as a bounded string. */
	memset(got, 0, sizeof got);
	if (len > sizeof sun)
		len = sizeof sun;
	if (len > offsetof(struct sockaddr_un, sun_path))
		memcpy(got, sun.sun_path, len -
		    offsetof(struct sockaddr_un, sun_path));
	if (strcmp(got, path) != 0) {
		xasprintf(cause, "the socket systemd passed is %s, not %s: "
		    "make the unit's ListenStream= and forkqd's -s agree",
		    got[0] != '\0' ? got : "unnamed", path);
		return (-2);
	}
	if ((fl = fcntl(fd, F_GETFL)) == -1 ||
	    fcntl(fd, F_SETFL, fl | O_NONBLOCK) == -1 ||
	    fcntl(fd, F_SETFD, FD_CLOEXEC) == -1) {
		xasprintf(cause, "the socket systemd passed: fcntl: %s",
		    strerror(errno));
		return (-2);
	}
	return (fd);
}

/*
 * At start, before anything may fork: takes the socket systemd passed, if
 * any, for server_listen. Returns 0, or -1 with *cause.
 */
int
server_adopt(const char *path, char **cause)
{
	if ((adopted_fd = server_activated(path, cause)) == -2) {
		adopted_fd = -1;
		return (-1);
	}
	return (0);
}

static void
server_start_accepting(void)
{
	ev_io_init(&listen_io, server_accept_cb, listen_fd, EV_READ);
	ev_io_start(loop, &listen_io);
	ev_init(&accept_pause, accept_pause_cb);
	spare_open();
	admit_init();
}

int
server_listen(const char *path, mode_t mode, gid_t gid, char **cause)
{
	struct sockaddr_un	 sun;
	struct stat		 st;
	char			*dir;
	mode_t			 old;
	int			 fd = adopted_fd;

	if (fd >= 0) {
		listen_fd = fd;
		activated = 1;
		listen_path = xstrdup(path);
		server_start_accepting();
		log_info("listening on %s, passed by systemd", path);
		if (mode != 0600 || gid != (gid_t)-1)
			log_warnx("--socket-mode and --socket-group do not "
			    "apply to the socket systemd passed: set SocketMode= "
			    "and SocketGroup= in its unit");
		return (0);
	}

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
	/* Only a socket is stale: any other file there is someone's. */
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			xasprintf(cause, "%s exists and is not a socket", path);
			return (-1);
		}
		if (unlink(path) == -1 && errno != ENOENT) {
			xasprintf(cause, "cannot remove stale socket %s: %s",
			    path, strerror(errno));
			return (-1);
		}
	} else if (errno != ENOENT) {
		/* Not "stale socket": there may be none (a directory that
		 * cannot be searched). */
		xasprintf(cause, "socket %s: %s", path, strerror(errno));
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
	server_start_accepting();
	return (0);
}

/* Stops accepting and removes the socket file (unless systemd's). */
void
server_close(void)
{
	if (listen_fd == -1)
		return;
	ev_io_stop(loop, &listen_io);
	ev_timer_stop(loop, &accept_pause);
	if (spare_fd != -1) {
		close(spare_fd);
		spare_fd = -1;
	}
	close(listen_fd);
	listen_fd = -1;
	admit_fini();
	if (!activated && unlink(listen_path) == -1 && errno != ENOENT)
		log_warn("unlink %s", listen_path);
	free(listen_path);
	listen_path = NULL;
}
