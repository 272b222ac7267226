/*
 * usergroups.c: the supplementary groups another user's task runs with.
 * A root forkqd runs a task as the uid and gid of the client that
 * submitted it; its other groups are the user's in the user database, as
 * cron, at and systemd give them (getgrouplist(3), what initgroups sets),
 * looked up at each start: a user added to a group since the submit has
 * it, one taken out of it has it no more.
 *
 * The user database may be a directory service (NSS: sssd, nslcd), which
 * may take its timeout to answer, or never answer: the lookups run on a
 * thread of their own, never on forkqd's loop. Each (uid, gid) is kept
 * for USERGROUPS_TTL_MS, and a change of membership reaches tasks within
 * that time: past it, starts go on with the list known while a new lookup
 * runs. Only the first start of a (uid, gid) waits for its lookup: the
 * dispatch holds starting back meanwhile (tasks are started in order), and
 * says so in status. A uid the database does not know runs with its gid
 * alone, as before there were groups. A lookup that fails keeps what was
 * known (the gid alone at first), and is tried again USERGROUPS_RETRY_MS
 * after it ended (getgrouplist says no failure: groups only a directory
 * that is down knows are missing from its answer until it is back). A
 * first lookup with no answer after USERGROUPS_WAIT_MS counts as failed
 * until its answer comes: starting is held back that long at most.
 * Lookups run one at a time, so one that never ends leaves every later one
 * to that bound, and the lists known to their last refresh.
 *
 * The groups are those of getgrouplist(name, client's gid): cron and
 * systemd pass the passwd entry's gid instead, which differs only when
 * the client ran under another group (sg, newgrp).
 */
#include "config.h"

#include <sys/queue.h>

#include <errno.h>
#include <grp.h>
#include <pthread.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forkqd.h"
#include "rbtree.h"
#include "xmalloc.h"

#define USERGROUPS_TTL_MS	(60 * 1000)
#define USERGROUPS_RETRY_MS	(5 * 1000)	/* after a failed lookup */
#define USERGROUPS_WAIT_MS	(5 * 1000)	/* for a first answer */
#define USERGROUPS_THREAD_RETRY_MS (60 * 1000)	/* when none could start */

/* A uid's entry: what forkqd knows of its groups, and when to ask again. */
struct usergroups {
	RB_ENTRY(usergroups)	 entry;
	uid_t			 uid;
	gid_t			 gid;
	int64_t			 refresh_ms;	/* mono_ms() to look again */
	int			 asked;		/* a lookup is under way */
	int64_t			 asked_ms;	/* since when, mono_ms() */
	int			 n;
	gid_t			*list;		/* NULL until the first answer */
};

static int
usergroups_cmp(const struct usergroups *a, const struct usergroups *b)
{
	if (a->uid != b->uid)
		return (a->uid < b->uid ? -1 : 1);
	if (a->gid != b->gid)
		return (a->gid < b->gid ? -1 : 1);
	return (0);
}

RB_HEAD(usergroups_tree, usergroups);
RB_GENERATE_STATIC(usergroups_tree, usergroups, entry, usergroups_cmp)

/* The loop's alone: the thread sees lookups, never entries. */
static struct usergroups_tree	cache = RB_INITIALIZER(&cache);

/*
 * A lookup, asked by the loop and answered by the thread. rc: 0 the groups
 * are in list, 1 the database has no such uid, -1 the lookup failed.
 * Whatever should be said goes in why (the thread does not log).
 */
struct usergroups_lookup {
	TAILQ_ENTRY(usergroups_lookup)	 entry;
	uid_t				 uid;
	gid_t				 gid;
	int				 rc;
	int				 n;
	gid_t				*list;
	char				*why;
};
TAILQ_HEAD(usergroups_lookups, usergroups_lookup);

/* The thread's, under lookup_mutex: what to look up, what was found. */
static pthread_mutex_t		 lookup_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t		 lookup_cond = PTHREAD_COND_INITIALIZER;
static struct usergroups_lookups lookups_asked =
    TAILQ_HEAD_INITIALIZER(lookups_asked);
static struct usergroups_lookups lookups_done =
    TAILQ_HEAD_INITIALIZER(lookups_done);
static void			(*lookup_done_notify)(void);
static usergroups_lookup_fn	 lookup_fn;	/* NULL: the user database */

/* The loop's: whether the thread runs. */
static enum {
	THREAD_NOT_YET,
	THREAD_RUNNING,
	THREAD_NONE,		/* none could start: lookups run on the loop */
} thread_state;
static int64_t			 thread_retry_ms;

/*
 * The passwd entry's name of uid into *name: 0, or 1 when the database has
 * no such uid, or -1 when the lookup failed (why set).
 */
static int
user_name(uid_t uid, char **name, char **why)
{
	struct passwd	 pw, *found;
	char		*buf = NULL;
	size_t		 size = 1024;
	int		 rc;

	for (;;) {
		buf = xrealloc(buf, size);
		rc = getpwuid_r(uid, &pw, buf, size, &found);
		if (rc != ERANGE || size >= 1024 * 1024)
			break;
		size *= 2;
	}
	if (rc == 0 && found != NULL)
		*name = xstrdup(pw.pw_name);
	free(buf);
	if (rc == 0)
		return (found != NULL ? 0 : 1);
	/*
	 * Not "not found", though getpwuid_r(3) lists ENOENT and others as
	 * that on some systems: an NSS module whose service is down (nslcd,
	 * sssd) answers ENOENT too, and the groups known would be dropped.
	 */
	xasprintf(why, "looking up uid %lu: %s", (unsigned long)uid,
	    strerror(rc));
	return (-1);
}

/*
 * The groups of name, gid among them, into *list (allocated): their
 * number, or -1 when the lookup failed (why set). More than the kernel
 * takes are cut to its most, said in why.
 */
static int
user_groups(const char *name, gid_t gid, gid_t **list, char **why)
{
	long	 max = sysconf(_SC_NGROUPS_MAX);
	int	 n = 16, got;

	if (max <= 0 || max > 65536)
		max = 65536;
	for (;;) {
		*list = xreallocarray(NULL, (size_t)n, sizeof **list);
		got = n;
		if (getgrouplist(name, gid, *list, &got) != -1)
			return (got);
		if (got > n && n < max) {
			/* got is the number needed. */
			free(*list);
			n = got < max ? got : (int)max;
			continue;
		}
		if (got > n) {
			/* glibc filled the first n. */
			xasprintf(why, "%s is in %d groups; its tasks get the "
			    "first %d", name, got, n);
			return (n);
		}
		free(*list);
		*list = NULL;
		xasprintf(why, "groups of %s: the user database gave no count",
		    name);
		return (-1);
	}
}

/* The lookup in the user database (usergroups_lookup_fn). */
static int
usergroups_database_lookup(uid_t uid, gid_t gid, gid_t **list, int *n, char **why)
{
	char	*name = NULL;
	int	 rc;

	*list = NULL;
	*n = 0;
	if ((rc = user_name(uid, &name, why)) == 0 &&
	    (*n = user_groups(name, gid, list, why)) == -1)
		rc = -1;
	free(name);
	return (rc);
}

static void
usergroups_lookup_run(struct usergroups_lookup *l, usergroups_lookup_fn fn)
{
	l->rc = (fn != NULL ? fn : usergroups_database_lookup)(l->uid, l->gid,
	    &l->list, &l->n, &l->why);
}

/* The lookup thread: one at a time, in the order asked. */
static void *
usergroups_thread_main(void *arg)
{
	struct usergroups_lookup	*l;
	usergroups_lookup_fn		 fn;

	for (;;) {
		pthread_mutex_lock(&lookup_mutex);
		while ((l = TAILQ_FIRST(&lookups_asked)) == NULL)
			pthread_cond_wait(&lookup_cond, &lookup_mutex);
		TAILQ_REMOVE(&lookups_asked, l, entry);
		fn = lookup_fn;
		pthread_mutex_unlock(&lookup_mutex);

		usergroups_lookup_run(l, fn);

		/* Told under the lock: usergroups_notify(NULL) waits for it. */
		pthread_mutex_lock(&lookup_mutex);
		TAILQ_INSERT_TAIL(&lookups_done, l, entry);
		if (lookup_done_notify != NULL)
			lookup_done_notify();
		pthread_mutex_unlock(&lookup_mutex);
	}
	return (NULL);
}

/*
 * done is called on the lookup thread each time a lookup ended: the loop
 * then calls usergroups_collect(). NULL: no more calls once this returns.
 */
void
usergroups_notify(void (*done)(void))
{
	pthread_mutex_lock(&lookup_mutex);
	lookup_done_notify = done;
	pthread_mutex_unlock(&lookup_mutex);
}

/* For tests: lookups by fn instead of the user database (NULL: back). */
void
usergroups_set_lookup(usergroups_lookup_fn fn)
{
	pthread_mutex_lock(&lookup_mutex);
	lookup_fn = fn;
	pthread_mutex_unlock(&lookup_mutex);
}

/* e's list, the gid alone, unless it has one. */
static void
usergroups_gid_alone(struct usergroups *e)
{
	if (e->list != NULL)
		return;
	e->list = xmalloc(sizeof *e->list);
	e->list[0] = e->gid;
	e->n = 1;
}

/* What lookup l found becomes e's, and what it had to say is said. */
static void
usergroups_apply(struct usergroups *e, struct usergroups_lookup *l)
{
	if (l->why != NULL)
		log_warnx("%s", l->why);
	e->asked = 0;
	if (l->rc == 0 && l->n < 1) {
		/* getgrouplist counts the gid: none is no answer. */
		log_warnx("uid %lu: the user database gave no groups",
		    (unsigned long)e->uid);
		l->rc = -1;
	}
	/* From the lookup's end: one that timed out took its own while. */
	if (l->rc == -1) {
		usergroups_gid_alone(e);
		e->refresh_ms = mono_ms() + USERGROUPS_RETRY_MS;
		log_warnx("uid %lu: its tasks keep %s for now",
		    (unsigned long)e->uid, e->n > 1 ? "the groups it had" :
		    "its gid alone");
		free(l->list);
		return;
	}
	free(e->list);
	e->list = NULL;
	if (l->rc == 1) {
		usergroups_gid_alone(e);
		free(l->list);
	} else {
		e->list = l->list;
		e->n = l->n;
	}
	e->refresh_ms = mono_ms() + USERGROUPS_TTL_MS;
}

/* The thread runs, or has just been started; 0 when there is none. */
static int
usergroups_thread_up(void)
{
	pthread_t	thread;
	int		err;

	if (thread_state == THREAD_RUNNING)
		return (1);
	if (thread_state == THREAD_NONE && mono_ms() < thread_retry_ms)
		return (0);
	if ((err = thread_start_quiet(&thread, usergroups_thread_main)) != 0) {
		errno = err;
		log_warn("a thread for user database lookups (they run on "
		    "forkqd's loop for a minute)");
		thread_state = THREAD_NONE;
		thread_retry_ms = mono_ms() + USERGROUPS_THREAD_RETRY_MS;
		return (0);
	}
	pthread_detach(thread);
	thread_state = THREAD_RUNNING;
	return (1);
}

/*
 * A lookup for e, on the thread. Without a thread (none could be made),
 * it runs here, on the loop, as the only way left.
 */
static void
usergroups_ask(struct usergroups *e)
{
	struct usergroups_lookup	*l;

	if (e->asked)
		return;
	l = xcalloc(1, sizeof *l);
	l->uid = e->uid;
	l->gid = e->gid;
	if (!usergroups_thread_up()) {
		pthread_mutex_lock(&lookup_mutex);
		usergroups_lookup_run(l, lookup_fn);
		pthread_mutex_unlock(&lookup_mutex);
		usergroups_apply(e, l);
		free(l->why);
		free(l);
		return;
	}
	e->asked = 1;
	e->asked_ms = mono_ms();
	pthread_mutex_lock(&lookup_mutex);
	TAILQ_INSERT_TAIL(&lookups_asked, l, entry);
	pthread_cond_signal(&lookup_cond);
	pthread_mutex_unlock(&lookup_mutex);
}

/*
 * On the loop, once the thread said a lookup ended: the answers go into
 * the cache. Lists given out by usergroups_get() before are good until
 * here.
 */
void
usergroups_collect(void)
{
	struct usergroups_lookups	 done = TAILQ_HEAD_INITIALIZER(done);
	struct usergroups		 key, *e;
	struct usergroups_lookup	*l;

	pthread_mutex_lock(&lookup_mutex);
	TAILQ_CONCAT(&done, &lookups_done, entry);
	pthread_mutex_unlock(&lookup_mutex);
	while ((l = TAILQ_FIRST(&done)) != NULL) {
		TAILQ_REMOVE(&done, l, entry);
		key.uid = l->uid;
		key.gid = l->gid;
		if ((e = RB_FIND(usergroups_tree, &cache, &key)) != NULL)
			usergroups_apply(e, l);
		else
			free(l->list);	/* the cache was emptied since */
		free(l->why);
		free(l);
	}
}

/*
 * The groups of uid's tasks (gid among them) into *list, which stays good
 * until the next usergroups_collect(); returns their number, at least 1.
 * Returns 0 while the first lookup of (uid, gid) runs, for at most
 * USERGROUPS_WAIT_MS: the notify function says when it ended.
 */
int
usergroups_get(uid_t uid, gid_t gid, const gid_t **list)
{
	struct usergroups	 key, *e;

	key.uid = uid;
	key.gid = gid;
	if ((e = RB_FIND(usergroups_tree, &cache, &key)) == NULL) {
		e = xcalloc(1, sizeof *e);
		e->uid = uid;
		e->gid = gid;
		RB_INSERT(usergroups_tree, &cache, e);
	}
	if (e->list == NULL || mono_ms() >= e->refresh_ms)
		usergroups_ask(e);
	if (e->list == NULL && mono_ms() - e->asked_ms >= USERGROUPS_WAIT_MS) {
		/* Its answer, when it comes, replaces this. */
		log_warnx("uid %lu: no answer from the user database in %d s; "
		    "its tasks start with its gid alone meanwhile",
		    (unsigned long)uid, USERGROUPS_WAIT_MS / 1000);
		usergroups_gid_alone(e);
	}
	if (e->list == NULL)
		return (0);
	*list = e->list;
	return (e->n);
}

/*
 * At forkqd's end. The thread is left as it is: it may be waiting on a
 * directory service that does not answer, and ends with the process.
 */
void
usergroups_free_all(void)
{
	struct usergroups	*e, *next;

	RB_FOREACH_SAFE(e, usergroups_tree, &cache, next) {
		RB_REMOVE(usergroups_tree, &cache, e);
		free(e->list);
		free(e);
	}
	usergroups_collect();
}
