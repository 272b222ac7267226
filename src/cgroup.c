/*
 * cgroup.c: a cgroup v2 per attempt, where the host offers one. The child
 * joins its attempt's cgroup before exec (spawn.c writes "0" to the
 * cgroup.procs fd the parent opened), so everything the task starts stays
 * in it whatever it does with sessions and process groups: stopping is
 * cgroup.kill, and "nothing left" is cgroup.events saying "populated 0".
 * Where clone3 can, the child is made in its cgroup instead
 * (CLONE_INTO_CGROUP, by the directory's fd): moving a process between
 * cgroups takes a lock every fork in the system waits on, and costs the
 * spawn more than the write.
 *
 * The cgroups are reused: an attempt takes an empty one from a pool (or
 * makes one) and gives it back when it ends, so a short task costs no
 * mkdir/rmdir on cgroupfs. A pooled cgroup keeps its cgroup.procs and
 * cgroup.events open (pread at offset 0 reads the current state), so an
 * attempt opens nothing there either. At start every cgroup under forkqd's
 * parent is killed and removed: whatever is in one is left from a forkqd
 * that died.
 *
 * In force when forkqd's own cgroup (from /proc/self/cgroup, under the
 * cgroup2 mount) lets it create children and has cgroup.kill (Linux 5.14):
 * forkqd run by root outside systemd, or under systemd with Delegate=yes.
 * Otherwise, or with --cgroup off, task.c falls back to proctree.c.
 */
#include "config.h"

#include <sys/stat.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "forkqd.h"

struct cgroup {
	char	*path;
	int	 dir_fd;	/* the directory, for CLONE_INTO_CGROUP */
	int	 procs_fd;	/* the child writes "0" to it to join */
	int	 events_fd;	/* "populated 0|1" */
	int	 seen_empty;	/* its last read said "populated 0" */
	int	 spoiled;	/* maybe killed or frozen: not to be reused */
};

/* New names tried past leftovers before an attempt goes without one. */
#define ACQUIRE_TRIES		64
/* How deep the cgroups a task made under its own are removed. */
#define REMOVE_DEPTH_MAX	16

static char		*cg_base;	/* forkqd's cgroup dir, NULL = off */
static struct cgroup	**cg_free;	/* empty cgroups to reuse */
static size_t		 cg_nfree;
static unsigned	 cg_next;	/* suffix of the next cgroup made */

static void	cgroup_clear_leftovers(void);
static void	cgroup_free(struct cgroup *);
static int	cgroup_events(struct cgroup *);
static void	remove_tree(const char *, int);

static int
read_small(const char *path, char *buf, size_t len)
{
	ssize_t	n;
	int	fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1)
		return (-1);
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return (-1);
	buf[n] = '\0';
	return (0);
}

static int
write_small(const char *path, const char *s)
{
	ssize_t	n;
	int	fd;

	if ((fd = open(path, O_WRONLY | O_CLOEXEC)) == -1)
		return (-1);
	n = write(fd, s, strlen(s));
	close(fd);
	return (n == (ssize_t)strlen(s) ? 0 : -1);
}

/* The cgroup2 mount point, from /proc/self/mountinfo. */
static char *
cgroup2_mount(void)
{
	FILE	*f;
	char	 line[4096], *mnt = NULL, *sep, *p;
	int	 field;

	if ((f = fopen("/proc/self/mountinfo", "re")) == NULL)
		return (NULL);
	while (mnt == NULL && fgets(line, sizeof line, f) != NULL) {
		/* "id parent maj:min root mountpoint opts... - fstype ..." */
		if ((sep = strstr(line, " - ")) == NULL ||
		    strncmp(sep + 3, "cgroup2 ", 8) != 0)
			continue;
		p = line;
		for (field = 0; field < 4 && p != NULL; field++) {
			p = strchr(p, ' ');
			if (p != NULL)
				p++;
		}
		if (p != NULL && (sep = strchr(p, ' ')) != NULL)
			mnt = xstrndup(p, sep - p);
	}
	fclose(f);
	return (mnt);
}

/*
 * Decides whether per-attempt cgroups are in force. mode: 0 off, 1 auto.
 * Never fails: without them, task.c uses the process tree.
 */
void
cgroup_init(int mode)
{
	char		*mnt, line[4096], probe[PATH_MAX], path[PATH_MAX + 32];
	struct stat	 st;
	FILE		*f;
	char		*rel = NULL;

	if (mode == 0 || (mnt = cgroup2_mount()) == NULL)
		return;
	if ((f = fopen("/proc/self/cgroup", "re")) != NULL) {
		while (fgets(line, sizeof line, f) != NULL) {
			if (strncmp(line, "0::", 3) == 0) {
				line[strcspn(line, "\n")] = '\0';
				rel = xstrdup(line + 3);
				break;
			}
		}
		fclose(f);
	}
	if (rel == NULL) {
		free(mnt);
		return;
	}
	/*
	 * One parent per state dir (named by its device and inode, which a
	 * restart finds again): two forkqd number their tasks alike.
	 */
	if (stat(config.state_dir, &st) == -1) {
		free(mnt);
		free(rel);
		return;
	}
	xasprintf(&cg_base, "%s%s/forkq.%llx.%llx", mnt, strcmp(rel, "/") == 0 ?
	    "" : rel, (unsigned long long)st.st_dev,
	    (unsigned long long)st.st_ino);
	free(mnt);
	free(rel);
	/* Can we make it, and does it have cgroup.kill? */
	snprintf(probe, sizeof probe, "%s", cg_base);
	snprintf(path, sizeof path, "%s/cgroup.kill", probe);
	if ((mkdir(probe, 0755) == -1 && errno != EEXIST) ||
	    access(path, W_OK) == -1) {
		log_info("cgroup v2 not usable at %s: using the process tree",
		    cg_base);
		rmdir(probe);
		free(cg_base);
		cg_base = NULL;
		return;
	}
	cgroup_clear_leftovers();
}

/* At exit: the state dir's parent cgroup goes if nothing is left in it. */
void
cgroup_fini(void)
{
	size_t	i;

	for (i = 0; i < cg_nfree; i++) {
		remove_tree(cg_free[i]->path, 0);
		cgroup_free(cg_free[i]);
	}
	free(cg_free);
	cg_free = NULL;
	cg_nfree = 0;
	if (cg_base != NULL)
		(void)rmdir(cg_base);
	free(cg_base);
	cg_base = NULL;
}

const char *
cgroup_mode(void)
{
	return (cg_base != NULL ? "cgroup" : "process-tree");
}

static void
cgroup_free(struct cgroup *cg)
{
	if (cg->dir_fd != -1)
		close(cg->dir_fd);
	if (cg->procs_fd != -1)
		close(cg->procs_fd);
	if (cg->events_fd != -1)
		close(cg->events_fd);
	free(cg->path);
	free(cg);
}

/*
 * Removes the empty cgroup at path and the cgroups a task made under it,
 * deepest first (rmdir refuses a cgroup with children). Says what it could
 * not remove.
 */
static void
remove_tree(const char *path, int depth)
{
	struct dirent	*de;
	DIR		*d;
	char		 sub[PATH_MAX];

	if (depth < REMOVE_DEPTH_MAX && (d = opendir(path)) != NULL) {
		while ((de = readdir(d)) != NULL) {
			if (de->d_type != DT_DIR || dot_entry(de->d_name))
				continue;
			if (snprintf(sub, sizeof sub, "%s/%s", path,
			    de->d_name) < (int)sizeof sub)
				remove_tree(sub, depth + 1);
		}
		closedir(d);
	}
	if (rmdir(path) == -1 && errno != ENOENT)
		log_warn("rmdir %s", path);
}

/* Opens the files of cg a pooled cgroup keeps. */
static int
cgroup_open_files(struct cgroup *cg)
{
	char	path[PATH_MAX];

	if ((cg->dir_fd = open(cg->path, O_RDONLY | O_DIRECTORY |
	    O_CLOEXEC)) == -1) {
		log_warn("open %s", cg->path);
		return (-1);
	}
	snprintf(path, sizeof path, "%s/cgroup.procs", cg->path);
	if ((cg->procs_fd = open(path, O_WRONLY | O_CLOEXEC)) == -1) {
		log_warn("open %s", path);
		return (-1);
	}
	snprintf(path, sizeof path, "%s/cgroup.events", cg->path);
	if ((cg->events_fd = open(path, O_RDONLY | O_CLOEXEC)) == -1) {
		log_warn("open %s", path);
		return (-1);
	}
	return (0);
}

/*
 * A cgroup for an attempt, from the pool or made now. Returns NULL when
 * cgroups are not in force or none could be had: then the attempt goes
 * without. The caller gives it back with cgroup_release.
 */
struct cgroup *
cgroup_acquire(void)
{
	struct cgroup	*cg;
	int		 tries;

	if (cg_base == NULL)
		return (NULL);
	while (cg_nfree > 0) {
		cg = cg_free[--cg_nfree];
		/*
		 * Removed by hand since it was pooled, a child made in it
		 * would fail to start (ENODEV), as exec_failed; frozen, it
		 * would never run.
		 */
		if (cgroup_events(cg) == 0 && !cg->spoiled) {
			cg->seen_empty = 0;
			return (cg);
		}
		log_warnx("%s is gone or was changed since it was pooled: "
		    "not reused", cg->path);
		remove_tree(cg->path, 0);
		cgroup_free(cg);
	}
	cg = xcalloc(1, sizeof *cg);
	cg->dir_fd = cg->procs_fd = cg->events_fd = -1;
	/*
	 * Only a cgroup made now: one that is there already is a leftover
	 * that could not be removed, maybe with cgroup.kill written (see
	 * cgroup_release), and a child made in it would die at once.
	 */
	for (tries = 0;; tries++) {
		free(cg->path);
		xasprintf(&cg->path, "%s/%u", cg_base, cg_next++);
		if (mkdir(cg->path, 0755) == 0)
			break;
		if (errno != EEXIST || tries == ACQUIRE_TRIES) {
			log_warn("mkdir %s", cg->path);
			cgroup_free(cg);
			return (NULL);
		}
	}
	if (cgroup_open_files(cg) == -1) {
		(void)rmdir(cg->path);
		cgroup_free(cg);
		return (NULL);
	}
	return (cg);
}

/* The fd on cg's cgroup.procs the child joins by (close-on-exec). */
int
cgroup_join_fd(const struct cgroup *cg)
{
	return (cg->procs_fd);
}

/* The fd on cg's directory, to be made in it by clone3 (close-on-exec). */
int
cgroup_dir_fd(const struct cgroup *cg)
{
	return (cg->dir_fd);
}

/* Does this cgroup.events text say "KEY 1"? (KEY with its space.) */
static int
events_say(const char *buf, const char *key)
{
	const char	*p = strstr(buf, key);

	return (p != NULL && p[strlen(key)] == '1');
}

/*
 * Reads cg's cgroup.events: 1 populated, 0 empty, -1 unreadable (the
 * cgroup was removed from under forkqd).
 */
static int
cgroup_events(struct cgroup *cg)
{
	char	buf[256];
	ssize_t	n;
	int	populated;

	cg->seen_empty = 0;
	if ((n = pread(cg->events_fd, buf, sizeof buf - 1, 0)) < 0)
		return (-1);
	buf[n] = '\0';
	populated = events_say(buf, "populated ");
	cg->seen_empty = !populated;
	if (events_say(buf, "frozen "))
		cg->spoiled = 1;	/* see cgroup_release */
	return (populated);
}

/*
 * The attempt of cg is over: an empty cgroup goes back to the pool; one
 * still populated, or gone, is let go. The last read is trusted when it
 * said empty: only a process in a cgroup (by forking) or forkqd's child
 * (by joining, before its exec) puts one in it, and by now the child is
 * reaped. (task.c reads it once the child is reaped, to see whether the
 * task left anything: that read is not made twice.)
 */
void
cgroup_release(struct cgroup *cg)
{
	int		empty = cg->seen_empty || cgroup_events(cg) == 0;
	struct stat	st;

	/*
	 * A cgroup the task made under its own (a directory: cgroupfs counts
	 * them in the link count) stays with a pooled one: it would be the
	 * next task's, and forkqd's rmdir of it at exit would fail.
	 */
	if (empty && !cg->spoiled && (fstat(cg->dir_fd, &st) == -1 ||
	    st.st_nlink > 2))
		cg->spoiled = 1;

	/*
	 * Once cgroup.kill was written to a cgroup, some kernels (6.18 among
	 * them) SIGKILL every child clone3 makes in it later; a frozen one
	 * (cgroup.freeze) would hold every next task stopped. Either way,
	 * every next task would fail at its start: such a cgroup is removed,
	 * not reused.
	 */
	if (cg->spoiled && empty) {
		remove_tree(cg->path, 0);
		cgroup_free(cg);
		return;
	}
	if (empty) {
		cg_free = xreallocarray(cg_free, cg_nfree + 1,
		    sizeof *cg_free);
		cg_free[cg_nfree++] = cg;
		return;
	}
	log_warnx("%s still has processes or is gone: not reused", cg->path);
	cgroup_free(cg);
}

/* Is any process left in cg? (A cgroup that is gone holds none.) */
int
cgroup_populated(struct cgroup *cg)
{
	return (cgroup_events(cg) == 1);
}

/* Is any process left in the cgroup at path? */
static int
path_populated(const char *path)
{
	char	file[PATH_MAX + 32], buf[256];

	snprintf(file, sizeof file, "%s/cgroup.events", path);
	if (read_small(file, buf, sizeof buf) == -1)
		return (0);
	return (events_say(buf, "populated "));
}

/* One line of cgroup.procs: a pid to send signal *arg to. */
static int
signal_listed(const char *line, size_t len, void *arg)
{
	const int	*sig = arg;
	char		 num[16];
	const char	*errstr;
	pid_t		 pid;

	if (len == 0 || len >= sizeof num)
		return (0);
	memcpy(num, line, len);
	num[len] = '\0';
	pid = (pid_t)strtonum(num, 1, INT32_MAX, &errstr);
	if (errstr == NULL && kill_waking(pid, *sig) == -1 &&
	    errno != ESRCH)
		log_warn("kill %d", (int)pid);
	return (0);
}

/*
 * Sends sig to every process in the cgroup at path, populated or not as
 * its cgroup.events said (SIGKILL through cgroup.kill, which also catches
 * what forks meanwhile). Returns whether any was left.
 */
static int
path_signal(const char *cg, int populated, int sig)
{
	char	path[PATH_MAX];

	if (!populated)
		return (0);
	if (sig == 0)
		return (1);
	if (sig == SIGKILL) {
		snprintf(path, sizeof path, "%s/cgroup.kill", cg);
		if (write_small(path, "1") == 0)
			return (1);
	}
	/* Read to its end: a seq_file gives a page (some 600 pids) a read. */
	snprintf(path, sizeof path, "%s/cgroup.procs", cg);
	(void)proc_records(path, '\n', signal_listed, &sig);
	return (1);
}

/* Sends sig (0: just look) to every process in cg. Any left? */
int
cgroup_signal(struct cgroup *cg, int sig)
{
	int	left = path_signal(cg->path, cgroup_populated(cg), sig);

	if (left && sig == SIGKILL)
		cg->spoiled = 1;
	return (left);
}

/*
 * What ran in cg may have written its cgroup.kill or cgroup.freeze itself
 * (a root task can): its main process died of SIGKILL, or it left
 * processes whose end forkqd did not see. Neither is known for sure, so cg
 * is not reused: a mkdir for the next attempt costs less than a pool that
 * kills every task after it.
 */
void
cgroup_spoil(struct cgroup *cg)
{
	cg->spoiled = 1;
}

/*
 * At start: every cgroup under forkqd's parent holds what a dead forkqd
 * left running. Kill it all (bounded wait: SIGKILL can only be delayed by
 * uninterruptible sleep) and remove the cgroups.
 */
static void
cgroup_clear_leftovers(void)
{
	struct timespec	 ts = { 0, 20 * 1000 * 1000 };
	struct dirent	*de;
	DIR		*d;
	char		 cg[PATH_MAX];
	int		 tries;

	if ((d = opendir(cg_base)) == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		if (de->d_type != DT_DIR || dot_entry(de->d_name))
			continue;
		snprintf(cg, sizeof cg, "%s/%s", cg_base, de->d_name);
		for (tries = 0; tries < 250 &&
		    path_signal(cg, path_populated(cg), SIGKILL); tries++)
			nanosleep(&ts, NULL);
		remove_tree(cg, 0);
	}
	closedir(d);
}
