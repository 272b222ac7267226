/*
 * trash.c: the captured output of pruned tasks, removed off the loop.
 *
 * Removing a task's output is an unlink per file and a rmdir, and on some
 * file systems (online discard, a busy or network disk) those take
 * milliseconds each: a prune of 500 tasks held the loop for seconds while
 * clients, heartbeats and exits waited. The loop now only renames each
 * pruned task's directory into STATE_DIR/output/.trash, one metadata
 * change, and a thread of this file empties that directory. What the
 * thread had not removed when forkqd stopped is still there at the next
 * start, and it goes on from there.
 *
 * A crash between the prune's commit and those moves left the output of
 * tasks no longer in the store in output/ for good. So the directories go
 * first into output/.pending, before the commit (trash_hold), and on from
 * there once it settled: into .trash when it went through, back when it
 * did not. At start, what is in .pending goes back when its task is in
 * the store, else into .trash.
 *
 * The thread touches nothing but .trash, and says nothing itself (the log
 * is the loop's): what it could not remove is counted, and the loop says
 * so at its next trash_put or at trash_stop.
 */
#include "config.h"

#include <sys/stat.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forkqd.h"

#define TRASH_NAME	".trash"
#define PENDING_NAME	".pending"
/* Unlinks between two looks at whether forkqd is stopping. */
#define STOP_CHECK_EVERY	64
/* How deep what was put by hand into an output directory is removed. */
#define REMOVE_DEPTH_MAX	8

static char		 output_path[PATH_MAX];	/* STATE_DIR/output */
static int		 output_fd = -1;	/* its fd */
static int		 trash_fd = -1;		/* its .trash */
static int		 pending_fd = -1;	/* its .pending */
static pthread_t	 trash_thread;
static int		 trash_started;		/* the thread runs */
static pthread_mutex_t	 trash_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t	 trash_cond = PTHREAD_COND_INITIALIZER;
/* Under trash_mutex: */
static int		 trash_added;	/* put since the thread last looked */
static int		 trash_stop_asked;
static unsigned		 trash_failures;	/* not yet said */
static char		 trash_failure[256];	/* the last of them */

/* Counts a failure to remove path (errno says why), to be said. */
static void
note_failure(const char *what, const char *path)
{
	int	err = errno;

	pthread_mutex_lock(&trash_mutex);
	trash_failures++;
	snprintf(trash_failure, sizeof trash_failure, "%s output/%s: %s",
	    what, path, strerror(err));
	pthread_mutex_unlock(&trash_mutex);
}

/* On the loop: says the failures counted since it last did. */
static void
trash_report(void)
{
	char		last[sizeof trash_failure];
	unsigned	n;

	pthread_mutex_lock(&trash_mutex);
	n = trash_failures;
	trash_failures = 0;
	strlcpy(last, trash_failure, sizeof last);
	pthread_mutex_unlock(&trash_mutex);
	if (n == 1)
		log_warnx("pruned output: %s", last);
	else if (n > 1)
		log_warnx("pruned output: %u files or directories could not be "
		    "removed; the last: %s", n, last);
}

/* Has trash_stop asked the thread to end? */
static int
stop_asked(void)
{
	int	asked;

	pthread_mutex_lock(&trash_mutex);
	asked = trash_stop_asked;
	pthread_mutex_unlock(&trash_mutex);
	return (asked);
}

/*
 * Removes entry name under dirfd, and what is in it when it is a
 * directory (a task's output holds files; anything else was put there by
 * hand, and goes too, to REMOVE_DEPTH_MAX). where names dirfd in what is
 * said. Counts what it could not remove. Returns 0, -1 when something is
 * left, -2 when trash_stop asked it to end first.
 */
static int
remove_entry(int dirfd, const char *where, const char *name, int depth)
{
	struct dirent	*de;
	DIR		*d;
	char		 path[PATH_MAX];
	unsigned	 n = 0;
	int		 fd, rc = 0, r;

	if (snprintf(path, sizeof path, "%s%s", where, name) >=
	    (int)sizeof path)
		path[0] = '\0';	/* said as "" in the rare message */
	/* No symlink followed: its target is not forkqd's to remove. */
	if ((fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
	    O_CLOEXEC)) == -1) {
		if (errno == ENOENT)
			return (0);
		if ((errno == ELOOP || errno == ENOTDIR) &&
		    (unlinkat(dirfd, name, 0) == 0 || errno == ENOENT))
			return (0);
		note_failure(errno == ELOOP || errno == ENOTDIR ? "unlink" :
		    "open", path);
		return (-1);
	}
	if ((d = fdopendir(fd)) == NULL) {
		note_failure("read", path);
		close(fd);
		return (-1);
	}
	strlcat(path, "/", sizeof path);
	while ((de = readdir(d)) != NULL) {
		if (dot_entry(de->d_name))
			continue;
		/* A shutdown waits for at most this many unlinks. */
		if (++n % STOP_CHECK_EVERY == 0 && stop_asked()) {
			closedir(d);
			return (-2);
		}
		if (unlinkat(fd, de->d_name, 0) == 0 || errno == ENOENT)
			continue;
		if (errno == EISDIR && depth < REMOVE_DEPTH_MAX) {
			if ((r = remove_entry(fd, path, de->d_name,
			    depth + 1)) == -2) {
				closedir(d);
				return (-2);
			}
			rc |= r;
			continue;
		}
		note_failure("unlink", path);
		rc = -1;
	}
	closedir(d);
	if (unlinkat(dirfd, name, AT_REMOVEDIR) == -1 && errno != ENOENT) {
		path[strlen(path) - 1] = '\0';
		note_failure("rmdir", path);
		rc = -1;
	}
	return (rc);
}

/*
 * A stream over the directory dirfd is open on, from its start, on an fd
 * of its own (a stream owns and moves its fd); NULL with errno set.
 */
static DIR *
dir_stream(int dirfd)
{
	DIR	*d;
	int	 fd, err;

	if ((fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) ==
	    -1)
		return (NULL);
	if ((d = fdopendir(fd)) == NULL) {
		err = errno;
		close(fd);
		errno = err;
	}
	return (d);
}

/*
 * One pass over .trash: removes what is there. What it cannot remove stays
 * and is tried again at the next pass.
 */
static void
trash_sweep(void)
{
	struct dirent	*de;
	DIR		*d;

	if ((d = dir_stream(trash_fd)) == NULL) {
		note_failure("read", TRASH_NAME);
		return;
	}
	while ((de = readdir(d)) != NULL) {
		if (dot_entry(de->d_name))
			continue;
		if (remove_entry(trash_fd, TRASH_NAME "/", de->d_name, 0) ==
		    -2 || stop_asked())
			break;
	}
	closedir(d);
}

static void *
trash_main(void *arg)
{
	pthread_mutex_lock(&trash_mutex);
	for (;;) {
		if (trash_stop_asked)
			break;
		trash_added = 0;
		pthread_mutex_unlock(&trash_mutex);
		trash_sweep();
		pthread_mutex_lock(&trash_mutex);
		while (!trash_added && !trash_stop_asked)
			pthread_cond_wait(&trash_cond, &trash_mutex);
	}
	pthread_mutex_unlock(&trash_mutex);
	return (NULL);
}

/* STATE_DIR/output's fd, opened again if it could not be at start. */
static int
output_dir_fd(void)
{
	if (output_fd == -1 && (output_fd = open(output_path, O_RDONLY |
	    O_DIRECTORY | O_CLOEXEC)) == -1)
		log_warn("open %s", output_path);
	return (output_fd);
}

/* Makes (if need be) and opens output/name; -1 when it cannot. */
static int
open_subdir(const char *name)
{
	if (mkdirat(output_fd, name, 0700) == -1 && errno != EEXIST)
		return (-1);
	return (openat(output_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
	    O_CLOEXEC));
}

/*
 * At start: output held for a prune whose commit a crash may have cut
 * goes back when its task is in the store, and into .trash when it is
 * not. Where the store cannot tell, it stays for the next start.
 */
static void
pending_settle_leftovers(void)
{
	struct dirent	*de;
	DIR		*d;
	const char	*errstr;
	int64_t		 id;
	int		 known;

	if ((d = dir_stream(pending_fd)) == NULL) {
		log_warn("%s/%s", output_path, PENDING_NAME);
		return;
	}
	while ((de = readdir(d)) != NULL) {
		if (dot_entry(de->d_name))
			continue;
		id = strtonum(de->d_name, 1, INT64_MAX, &errstr);
		known = errstr == NULL ? store_task_exists(id) : 0;
		if (known == -1)
			continue;
		if (renameat(pending_fd, de->d_name, known ? output_fd :
		    trash_fd, de->d_name) == -1)
			log_warn("%s/%s/%s", output_path, PENDING_NAME,
			    de->d_name);
	}
	closedir(d);
}

/*
 * Opens STATE_DIR/output/.trash and starts the thread that empties it
 * (first of what an earlier forkqd left). Without the thread, trash_put
 * removes at once, on the loop, as it must.
 */
void
trash_start(const char *state_dir)
{
	int		err;

	if (snprintf(output_path, sizeof output_path, "%s/output",
	    state_dir) >= (int)sizeof output_path)
		fatalx("state dir path too long");
	if (output_dir_fd() == -1)
		return;
	if ((trash_fd = open_subdir(TRASH_NAME)) == -1) {
		log_warn("%s/%s: pruned output is removed on the loop",
		    output_path, TRASH_NAME);
		return;
	}
	if ((pending_fd = open_subdir(PENDING_NAME)) == -1)
		log_warn("%s/%s: output pruned just before a crash may be left",
		    output_path, PENDING_NAME);
	else
		pending_settle_leftovers();
	trash_stop_asked = 0;
	if ((err = thread_start_quiet(&trash_thread, trash_main)) != 0) {
		errno = err;
		log_warn("a thread for pruned output; it is removed on the loop");
		return;
	}
	trash_started = 1;
}

/* Moves task id's output into .pending (hold) or back out of it. */
static void
pending_move(int64_t id, int hold)
{
	char	name[32];

	snprintf(name, sizeof name, "%" PRId64, id);
	if (pending_fd == -1 || output_dir_fd() == -1)
		return;
	if (renameat(hold ? output_fd : pending_fd, name, hold ? pending_fd :
	    output_fd, name) == -1 && errno != ENOENT)
		log_warn("%s/%s%s", output_path, hold ? "" : PENDING_NAME "/",
		    name);
}

/*
 * Before the commit of a prune: task id's output waits in .pending until
 * the commit settles (trash_put, trash_unhold).
 */
void
trash_hold(int64_t id)
{
	pending_move(id, 1);
}

/* The prune's commit failed: task id's output goes back. */
void
trash_unhold(int64_t id)
{
	pending_move(id, 0);
}

/*
 * The output of pruned task id goes: moved into .trash for the thread, or
 * removed here when there is no thread or the move fails (.trash removed
 * by hand, or an entry of the same name left there: ids are reused only
 * when a database was lost).
 */
void
trash_put(int64_t id)
{
	struct stat	st;
	char		name[32];
	int		from;

	snprintf(name, sizeof name, "%" PRId64, id);
	if (output_dir_fd() == -1)
		return;
	trash_report();
	/* Held in .pending (trash_hold), or still in output/. */
	from = pending_fd != -1 && fstatat(pending_fd, name, &st,
	    AT_SYMLINK_NOFOLLOW) == 0 ? pending_fd : output_fd;
	if (trash_started) {
		if (renameat(from, name, trash_fd, name) == 0) {
			pthread_mutex_lock(&trash_mutex);
			trash_added = 1;
			pthread_cond_signal(&trash_cond);
			pthread_mutex_unlock(&trash_mutex);
			return;
		}
		if (errno == ENOENT && fstatat(from, name, &st,
		    AT_SYMLINK_NOFOLLOW) == -1 && errno == ENOENT)
			return;	/* the task had no output */
	}
	(void)remove_entry(from, from == pending_fd ? PENDING_NAME "/" : "",
	    name, 0);
	trash_report();
}

/*
 * Stops the thread within STOP_CHECK_EVERY unlinks; what is left waits for
 * the next start.
 */
void
trash_stop(void)
{
	if (trash_started) {
		thread_stop(trash_thread, &trash_mutex, &trash_cond,
		    &trash_stop_asked);
		trash_started = 0;
	}
	trash_report();
	if (trash_fd != -1)
		close(trash_fd);
	if (pending_fd != -1)
		close(pending_fd);
	if (output_fd != -1)
		close(output_fd);
	trash_fd = pending_fd = output_fd = -1;
}
