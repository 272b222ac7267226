/*
 * admit.c: which clients forkqd takes, by the file descriptor each one
 * holds until it closes. forkqd's fds are bounded (RLIMIT_NOFILE, raised
 * to the hard limit at start) and running tasks need theirs: pipes,
 * output files, a cgroup's files. Any user allowed on the socket could
 * take them all with idle connections; root's clients were then refused
 * and task starts stalled until that user let go.
 *
 * So the clients of users other than root and forkqd's own (who
 * administer it, spec 8) are bounded:
 * - together, by what is left once the fds of --workers running tasks
 *   (ADMIT_FDS_PER_WORKER each) and forkqd's own (ADMIT_FDS_OWN) are set
 *   aside, less a share kept for the admins (an eighth, within
 *   ADMIT_ADMIN_SHARE_MIN and _MAX);
 * - each user, by half of that, so that one user cannot shut out all
 *   others.
 * Admins are not bounded here: they could as well raise the limit or stop
 * forkqd. Out of fds all the same, server.c's spare refuses anyone.
 */
#include "config.h"

#include <sys/resource.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "forkqd.h"
#include "rbtree.h"
#include "xmalloc.h"

/* What a running task holds: 3 pipes, 2 output files, 3 cgroup files, and
 * its pipes' other ends for a moment at its start. */
#define ADMIT_FDS_PER_WORKER	12
/* forkqd's own: the database's 4, the log, the loop's, spares, output
 * readers and the like. */
#define ADMIT_FDS_OWN		64
/* The admins' share of the clients' fds: an eighth, within these. */
#define ADMIT_ADMIN_SHARE_MIN	4
#define ADMIT_ADMIN_SHARE_MAX	64
#define ADMIT_LOG_S		10	/* between warnings of refusals */

struct admit_user {
	uid_t			 uid;
	size_t			 conns;
	RB_ENTRY(admit_user)	 entry;
};
RB_HEAD(admit_users, admit_user);

static int
admit_user_cmp(const struct admit_user *a, const struct admit_user *b)
{
	return (a->uid < b->uid ? -1 : a->uid > b->uid);
}
RB_GENERATE_STATIC(admit_users, admit_user, entry, admit_user_cmp)

static struct admit_users users = RB_INITIALIZER(&users);
static size_t	users_conns;	/* of all users but the admins */
static size_t	users_max;	/* the most of those */
static size_t	user_max;	/* the most of one user */
static long long refused;	/* since the last warning */
static uid_t	refused_uid;	/* the last refused */
static int64_t	logged_ms = -1;
/*
 * Refusals within ADMIT_LOG_S of a warning are said by the next one, at
 * the end of that time: a burst's tail would otherwise wait for a refusal
 * that may never come.
 */
static ev_timer	tail_timer;

/* Root, or the user forkqd runs as, administers the daemon (spec 8). */
int
admit_is_admin(uid_t uid)
{
	static uid_t	self = (uid_t)-1;

	if (self == (uid_t)-1)
		self = geteuid();
	return (uid == 0 || uid == self);
}

static void	admit_tail_cb(struct ev_loop *, ev_timer *, int);

/*
 * Sets the bounds from forkqd's fd limit, as it is now: at start, once it
 * is final (spawn_init raised it), and again when an operator changed it
 * since (prlimit(1)). With workers whose fds the limit could not hold
 * anyway, the clients still get a quarter of it.
 */
static void
admit_bounds(void)
{
	static int	set;
	static rlim_t	set_from;	/* the limit they were set from */
	struct rlimit	rl;
	size_t		fds, kept, pool, admins;

	if (getrlimit(RLIMIT_NOFILE, &rl) == -1) {
		if (set)
			return;		/* keep them */
		log_warn("getrlimit RLIMIT_NOFILE");
		rl.rlim_cur = 1024;
	}
	if (set && rl.rlim_cur == set_from)
		return;
	set = 1;
	set_from = rl.rlim_cur;
	fds = rl.rlim_cur > INT_MAX ? INT_MAX : (size_t)rl.rlim_cur;
	kept = (size_t)config.workers * ADMIT_FDS_PER_WORKER + ADMIT_FDS_OWN;
	pool = fds > kept + fds / 4 ? fds - kept : fds / 4;
	admins = pool / 8;
	if (admins < ADMIT_ADMIN_SHARE_MIN)
		admins = ADMIT_ADMIN_SHARE_MIN;
	if (admins > ADMIT_ADMIN_SHARE_MAX)
		admins = ADMIT_ADMIN_SHARE_MAX;
	users_max = pool > admins ? pool - admins : 1;
	user_max = users_max / 2 > 0 ? users_max / 2 : 1;
	log_debug("admit: %zu connections for users other than the admins, "
	    "%zu for one", users_max, user_max);
}

void
admit_init(void)
{
	admit_bounds();
	ev_init(&tail_timer, admit_tail_cb);
}

static void
admit_warn(void)
{
	log_warnx("refusing connections at their bound (the last of uid %lu): "
	    "%lld since the last warning", (unsigned long)refused_uid, refused);
	logged_ms = mono_ms();
	refused = 0;
}

static void
admit_tail_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	if (refused > 0)
		admit_warn();
}

/*
 * forkqd takes no more connections: the refusals since the last warning
 * are told now, as their timer will not run.
 */
void
admit_fini(void)
{
	ev_timer_stop(loop, &tail_timer);
	if (refused > 0)
		admit_warn();
}

static void
admit_refused(uid_t uid)
{
	int64_t	since = mono_ms() - logged_ms;

	refused++;
	refused_uid = uid;
	if (logged_ms == -1 || since >= ADMIT_LOG_S * 1000) {
		admit_warn();
		return;
	}
	if (!ev_is_active(&tail_timer)) {
		ev_timer_set(&tail_timer,
		    (double)(ADMIT_LOG_S * 1000 - since) / 1000.0, 0.);
		ev_timer_start(loop, &tail_timer);
	}
}

/*
 * Counts a new connection of uid, or refuses it. Returns 0 when taken
 * (admit_release() gives it back), -1 when refused, with why set to what
 * the client is told.
 */
int
admit_client(uid_t uid, char *why, size_t len)
{
	struct admit_user	 key, *u;

	if (admit_is_admin(uid))
		return (0);
	admit_bounds();
	key.uid = uid;
	u = RB_FIND(admit_users, &users, &key);
	if (u != NULL && u->conns >= user_max) {
		snprintf(why, len, "uid %lu has %zu connections to forkqd open, "
		    "the most one user may (its file descriptors are kept for "
		    "tasks and other users): close some and try again",
		    (unsigned long)uid, u->conns);
		admit_refused(uid);
		return (-1);
	}
	if (users_conns >= users_max) {
		snprintf(why, len, "users hold %zu connections to forkqd open, "
		    "the most they may (its file descriptors are kept for "
		    "tasks and root): try again later", users_conns);
		admit_refused(uid);
		return (-1);
	}
	if (u == NULL) {
		u = xcalloc(1, sizeof *u);
		u->uid = uid;
		RB_INSERT(admit_users, &users, u);
	}
	u->conns++;
	users_conns++;
	return (0);
}

/* A connection of uid that admit_client() took has closed. */
void
admit_release(uid_t uid)
{
	struct admit_user	 key, *u;

	if (admit_is_admin(uid))
		return;
	key.uid = uid;
	if ((u = RB_FIND(admit_users, &users, &key)) == NULL)
		return;
	users_conns--;
	if (--u->conns == 0) {
		RB_REMOVE(admit_users, &users, u);
		free(u);
	}
}
