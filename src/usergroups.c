/*
 * usergroups.c: the supplementary groups another user's task runs with.
 * A root forkqd runs a task as the uid and gid of the client that
 * submitted it; its other groups are the user's in the user database, as
 * cron, at and systemd give them (getgrouplist(3), what initgroups sets),
 * looked up at each start: a user added to a group since the submit has
 * it, one taken out of it has it no more.
 *
 * The lookup runs on forkqd's loop and may reach a directory service
 * (NSS), so each (uid, gid) is kept for USERGROUPS_TTL_MS: a change of
 * membership reaches tasks within that time. A uid the database does not
 * know runs with its gid alone, as before there were groups. A lookup that
 * fails keeps what was known, and is tried again after USERGROUPS_RETRY_MS
 * (getgrouplist says no failure: groups only a directory that is down
 * knows are missing from its answer until it is back).
 * Not solved: a directory service that does not answer holds the loop up
 * as long as its NSS module waits.
 *
 * The groups are those of getgrouplist(name, client's gid): cron and
 * systemd pass the passwd entry's gid instead, which differs only when
 * the client ran under another group (sg, newgrp).
 */
#include "config.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forkqd.h"
#include "rbtree.h"
#include "xmalloc.h"

#define USERGROUPS_TTL_MS	(60 * 1000)
#define USERGROUPS_RETRY_MS	(5 * 1000)	/* after a failed lookup */

struct usergroups {
	RB_ENTRY(usergroups)	 entry;
	uid_t			 uid;
	gid_t			 gid;
	int64_t			 refresh_ms;	/* mono_ms() to look again */
	int			 n;
	gid_t			*list;
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

static struct usergroups_tree	cache = RB_INITIALIZER(&cache);

/*
 * The passwd entry's name of uid into *name: 0, or 1 when the database has
 * no such uid, or -1 when the lookup failed (said).
 */
static int
user_name(uid_t uid, char **name)
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
	log_warnx("looking up uid %lu: %s", (unsigned long)uid, strerror(rc));
	return (-1);
}

/*
 * The groups of name, gid among them, into *list (allocated): their
 * number, or -1 when the lookup failed (said). More than the kernel takes
 * are cut to its most, with a warning.
 */
static int
user_groups(const char *name, gid_t gid, gid_t **list)
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
			log_warnx("%s is in %d groups; its tasks get the first "
			    "%d", name, got, n);
			return (n);
		}
		free(*list);
		*list = NULL;
		log_warnx("groups of %s: the user database gave no count",
		    name);
		return (-1);
	}
}

/*
 * Fills e from the user database. A lookup that failed keeps the list e
 * had (the gid alone at first) and is tried again sooner.
 */
static void
usergroups_fetch(struct usergroups *e)
{
	gid_t	*list = NULL;
	char	*name = NULL;
	int	 rc, n = 1;

	if ((rc = user_name(e->uid, &name)) == 0)
		n = user_groups(name, e->gid, &list);
	free(name);
	/* From the lookup's end: one that timed out took its own while. */
	if (rc == -1 || n == -1) {
		if (e->list == NULL) {
			e->list = xmalloc(sizeof *e->list);
			e->list[0] = e->gid;
			e->n = 1;
		}
		e->refresh_ms = mono_ms() + USERGROUPS_RETRY_MS;
		log_warnx("uid %lu: its tasks keep %s for now",
		    (unsigned long)e->uid, e->n > 1 ? "the groups it had" :
		    "its gid alone");
		return;
	}
	if (rc == 1) {
		list = xmalloc(sizeof *list);
		list[0] = e->gid;
	}
	free(e->list);
	e->list = list;
	e->n = n;
	e->refresh_ms = mono_ms() + USERGROUPS_TTL_MS;
}

/*
 * The groups of uid's tasks (gid among them) into *list, which stays good
 * until the next call; returns their number, at least 1.
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
		usergroups_fetch(e);
		RB_INSERT(usergroups_tree, &cache, e);
	} else if (mono_ms() >= e->refresh_ms)
		usergroups_fetch(e);
	*list = e->list;
	return (e->n);
}

void
usergroups_free_all(void)
{
	struct usergroups	*e, *next;

	RB_FOREACH_SAFE(e, usergroups_tree, &cache, next) {
		RB_REMOVE(usergroups_tree, &cache, e);
		free(e->list);
		free(e);
	}
}
