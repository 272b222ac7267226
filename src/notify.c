/*
 * notify.c: the init system's readiness protocol (sd_notify(3)), spoken
 * directly: one datagram to $NOTIFY_SOCKET per message, so forkqd needs no
 * libsystemd. Without NOTIFY_SOCKET it does nothing and arms no timer.
 *
 * Sends READY=1 once the socket listens, STATUS= with the running and
 * queued counts when they change (at most once a second), WATCHDOG=1 at
 * half of WATCHDOG_USEC from a loop timer (so a wedged loop is caught), and
 * STOPPING=1 at shutdown.
 */
#include "config.h"

#include <sys/socket.h>
#include <sys/un.h>

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forkqd.h"

#define STATUS_MIN_INTERVAL	1.0	/* s between STATUS= messages */
#define READY_RETRY		0.2	/* s between tries of a READY=1 lost */

static int	parent_fd = -1;	/* --daemon: the parent waits on it */
static ev_timer	watchdog_timer;
static ev_timer	status_timer;
static ev_timer	ready_timer;
static int	status_dirty;
static char	last_status[128];

static int
notify_enabled(void)
{
	const char	*path = getenv("NOTIFY_SOCKET");

	return (path != NULL && (path[0] == '/' || path[0] == '@'));
}

/*
 * The errno of the last message that did not go, 0 after one that went.
 * A failure is said when it is new, not at every message: a socket that
 * is gone would otherwise put a line in the log every second.
 */
static int	last_failure;

/*
 * Sends one message; 0 when it went, -1 (errno set, EAGAIN for a full
 * queue) when it did not.
 */
int
notify_send(const char *fmt, ...)
{
	struct sockaddr_un	 sun;
	const char		*path = getenv("NOTIFY_SOCKET");
	char			 msg[512];
	socklen_t		 len;
	va_list			 ap;
	ssize_t			 rc;
	int			 fd, err = 0;

	if (!notify_enabled() || strlen(path) >= sizeof sun.sun_path)
		return (0);
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);

	memset(&sun, 0, sizeof sun);
	sun.sun_family = AF_UNIX;
	memcpy(sun.sun_path, path, strlen(path));
	if (path[0] == '@')
		sun.sun_path[0] = '\0';	/* abstract namespace */
	len = offsetof(struct sockaddr_un, sun_path) + strlen(path);
	if ((fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) == -1) {
		err = errno;
		if (err != last_failure)	/* out of fds: not at every tick */
			log_warn("notify socket");
		last_failure = err;
		errno = err;
		return (-1);
	}
	/*
	 * Never wait: a listener that stopped reading (its queue full) once
	 * held the whole loop in sendto, SIGTERM included. Its messages are
	 * dropped.
	 */
	if ((rc = sendto(fd, msg, strlen(msg), MSG_NOSIGNAL | MSG_DONTWAIT,
	    (struct sockaddr *)&sun, len)) == -1) {
		err = errno;
		if (err == last_failure)
			;	/* said already */
		else if (err == EAGAIN)
			log_warnx("notify %s: its listener reads nothing; "
			    "messages are dropped until it does", path);
		else
			log_warnx("notify %s: %s; messages are dropped until "
			    "one goes", path, strerror(err));
		last_failure = err;
	} else if (last_failure != 0) {
		log_warnx("notify %s: messages go again", path);
		last_failure = 0;
	}
	close(fd);
	if (rc == -1)
		errno = err;
	return (rc == -1 ? -1 : 0);
}

static void
watchdog_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	(void)notify_send("WATCHDOG=1");
}

static void
notify_status_send(void)
{
	int64_t	counts[TASK_NSTATES];
	char	status[128];

	store_counts(counts);
	snprintf(status, sizeof status, "%zu running, %lld queued",
	    task_running_count(), (long long)counts[TASK_QUEUED]);
	if (strcmp(status, last_status) != 0) {
		if (notify_send("STATUS=%s", status) == 0)
			strlcpy(last_status, status, sizeof last_status);
		else
			status_dirty = 1;	/* a full queue: next tick */
	}
}

static void
status_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	if (status_dirty) {
		status_dirty = 0;
		notify_status_send();
		ev_timer_again(loop, w);	/* hold the next one a while */
	} else
		ev_timer_stop(loop, w);	/* no tick while nothing changes */
}

/* Something that STATUS= shows may have changed. */
void
notify_status_changed(void)
{
	if (!notify_enabled())
		return;
	status_dirty = 1;
	if (!ev_is_active(&status_timer)) {
		status_dirty = 0;
		notify_status_send();
		ev_timer_again(loop, &status_timer);
	}
}

static void
ready_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	if (notify_send("READY=1\nMAINPID=%d", (int)getpid()) == 0 ||
	    errno != EAGAIN)
		ev_timer_stop(loop, w);
}

/*
 * --daemon: the parent forkqd.c's detach() left waits on fd until the
 * socket listens; the terminal stays this process's stdio until then.
 */
void
notify_parent(int fd)
{
	parent_fd = fd;
}

/* Tells the parent of --daemon that forkqd is ready, and lets go of its
 * terminal: stdio goes to /dev/null, as daemon(3) does. */
static void
notify_parent_ready(void)
{
	int	fd;

	if (parent_fd == -1)
		return;
	if ((fd = open("/dev/null", O_RDWR | O_CLOEXEC)) == -1)
		log_warn("open /dev/null");
	else {
		if (dup2(fd, STDIN_FILENO) == -1 ||
		    dup2(fd, STDOUT_FILENO) == -1 ||
		    dup2(fd, STDERR_FILENO) == -1)
			log_warn("dup2 /dev/null");
		close(fd);
	}
	if (write(parent_fd, "r", 1) != 1)
		log_warn("telling the parent forkqd is ready");
	close(parent_fd);
	parent_fd = -1;
}

/* Once the socket listens: READY=1, and the watchdog if asked for. */
void
notify_ready(void)
{
	const char	*usec, *pid, *errstr;
	long long	 us;

	notify_parent_ready();

	ev_init(&status_timer, status_cb);
	status_timer.repeat = STATUS_MIN_INTERVAL;
	ev_init(&watchdog_timer, watchdog_cb);
	if (!notify_enabled())
		return;
	/*
	 * A READY=1 lost to a full queue would leave the unit starting
	 * until systemd's start timeout failed it: it goes again until one
	 * gets through.
	 */
	ev_timer_init(&ready_timer, ready_cb, READY_RETRY, READY_RETRY);
	if (notify_send("READY=1\nMAINPID=%d", (int)getpid()) == -1 &&
	    errno == EAGAIN)
		ev_timer_start(loop, &ready_timer);
	notify_status_changed();
	if ((usec = getenv("WATCHDOG_USEC")) == NULL)
		return;
	pid = getenv("WATCHDOG_PID");
	if (pid != NULL && strtonum(pid, 1, INT32_MAX, &errstr) != getpid())
		return;
	us = strtonum(usec, 1, INT64_MAX, &errstr);
	if (errstr != NULL) {
		log_warnx("WATCHDOG_USEC=%s is %s", usec, errstr);
		return;
	}
	watchdog_timer.repeat = (double)us / 2e6;
	ev_timer_again(loop, &watchdog_timer);
	(void)notify_send("WATCHDOG=1");
}

void
notify_stopping(void)
{
	ev_timer_stop(loop, &status_timer);
	ev_timer_stop(loop, &ready_timer);
	(void)notify_send("STOPPING=1");
}

void
notify_stop(void)
{
	ev_timer_stop(loop, &watchdog_timer);
	ev_timer_stop(loop, &status_timer);
	ev_timer_stop(loop, &ready_timer);
}
