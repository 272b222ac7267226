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
 * know runs with its gid alone, as before there were groups.
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

struct usergroups {
	RB_ENTRY(usergroups)	 entry;
	uid_t			 uid;
	gid_t			 gid;
	int64_t			 fetched_ms;	/* mono_ms() of the lookup */
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

/* The passwd entry's name of uid into name, or -1 (unknown, or failed). */
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
	if (rc != 0 || found == NULL) {
		if (rc != 0)
			log_warnx("looking up uid %lu: %s; its tasks get its "
			    "gid alone", (unsigned long)uid, strerror(rc));
		free(buf);
		return (-1);
	}
	*name = xstrdup(pw.pw_name);
	free(buf);
	return (0);
}

/* Fills e from the user database: at least e->gid. */
static void
usergroups_fetch(struct usergroups *e)
{
	char	*name;
	long	 max;
	int	 n;

	e->n = 1;
	e->list = xreallocarray(e->list, 1, sizeof *e->list);
	e->list[0] = e->gid;
	e->fetched_ms = mono_ms();
	if (user_name(e->uid, &name) == -1)
		return;
	n = 16;
	for (;;) {
		gid_t	*list = xreallocarray(NULL, (size_t)n, sizeof *list);
		int	 got = n;

		if (getgrouplist(name, e->gid, list, &got) != -1) {
			free(e->list);
			e->list = list;
			e->n = got;
			break;
		}
		free(list);
		/* got is the number needed; a bad NSS module may not set it. */
		if (got <= n || got > 65536)
			break;
		n = got;
	}
	free(name);
	/* setgroups refuses more than the kernel's most. */
	max = sysconf(_SC_NGROUPS_MAX);
	if (max > 0 && e->n > max) {
		log_warnx("uid %lu is in %d groups; its tasks get the first %ld",
		    (unsigned long)e->uid, e->n, max);
		e->n = (int)max;
	}
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
	} else if (mono_ms() - e->fetched_ms >= USERGROUPS_TTL_MS)
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
