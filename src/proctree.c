/*
 * proctree.c: finding every process a task started, so that nothing it
 * started outlives it (spec 4.4), where it has no cgroup (cgroup.c). Such a
 * task's main process leads its own session and process group (spawn.c),
 * forkqd is a child subreaper, and the task's environment carries
 * FORKQ_TASK_ID. A process belongs to task T when
 * it is in T's process group or session, descends from such a process, or is
 * an orphan re-parented to forkqd (or, at recovery, anywhere) whose
 * environment names T. Only a process that leaves the session and also
 * scrubs its environment escapes, and then only while forkqd cannot see its
 * ancestry. Read from /proc on demand: nothing here runs on a timer.
 */
#include "config.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "forkqd.h"

/*
 * The pids forkqd itself started lately, by pid modulo the table size: a
 * pid found here is exactly one of ours (a task's main process, never a
 * descendant of another task), if it was started after the task it is
 * looked at for (seq): an entry from before the pids last wrapped around
 * holds a number the kernel may have handed out again since.
 */
#define SPAWNED_SLOTS	4096
static struct {
	pid_t		pid;
	uint64_t	seq;	/* its proctree_note_spawn(), from 1 */
} spawned[SPAWNED_SLOTS];
static uint64_t	spawn_seq;

/*
 * The pid shortcuts below hold while the kernel has not handed out every
 * pid since a task started: a task younger than this (ms) cannot have seen
 * that, as long as no host forks more than 200,000 processes a second
 * (several times what a large machine does) and half the pid space is
 * free: 80 ms at 32,768 pids, 10 s at 4,194,304. 0 (pid_max unknown): any
 * task may have.
 */
#define FORKS_PER_MS_MAX	200
static int64_t	wrap_free_ms = -1;

/* How far past a task's pid the cheap check below looks. */
#define QUICK_SPAN	256

struct proc {
	pid_t	pid;
	pid_t	ppid;
	pid_t	pgrp;
	pid_t	sid;
	int	tty_nr;		/* controlling terminal, 0 = none */
	char	state;
	int	member;
};

static ssize_t
read_file(const char *path, char *buf, size_t len)
{
	ssize_t	n;
	size_t	off = 0;
	int	fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1)
		return (-1);
	while (off < len - 1) {
		n = read(fd, buf + off, len - 1 - off);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		off += n;
	}
	close(fd);
	buf[off] = '\0';
	return ((ssize_t)off);
}

/*
 * Calls fn(record, length, arg) for each record of the file at path, records
 * ending in sep (a last one without it counts too), reading the file to its
 * end: a kernel seq_file (cgroup.procs) gives at most a page per read(2),
 * and /proc/PID/environ may be larger than any buffer. A record longer than
 * PROC_RECORD_MAX is skipped: no record this looks for is that long. fn
 * returns nonzero to stop. Returns 0, or -1 when the file could not be
 * opened or read.
 */
int
proc_records(const char *path, int sep, int (*fn)(const char *, size_t,
    void *), void *arg)
{
	char	 buf[PROC_RECORD_MAX], *p, *end, *hit;
	size_t	 have = 0;
	ssize_t	 n;
	int	 fd, rc = 0, skipping = 0;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1)
		return (-1);
	for (;;) {
		n = read(fd, buf + have, sizeof buf - have);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0) {
			rc = n == 0 ? 0 : -1;
			break;
		}
		have += (size_t)n;
		end = buf + have;
		for (p = buf; (hit = memchr(p, sep, (size_t)(end - p))) != NULL;
		    p = hit + 1) {
			if (!skipping && fn(p, (size_t)(hit - p), arg) != 0)
				goto done;
			skipping = 0;
		}
		if (p == buf && have == sizeof buf) {
			skipping = 1;	/* a record longer than buf */
			have = 0;
		} else {
			have = (size_t)(end - p);
			memmove(buf, p, have);
		}
	}
	if (rc == 0 && have > 0 && !skipping)
		(void)fn(buf, have, arg);
done:
	close(fd);
	return (rc);
}

/*
 * Did a read of /proc/PID/... fail because the process is gone (or is not
 * forkqd's to read), not for want of a file descriptor or memory? Only
 * then may a scan go on without it: a process left out of a scan for
 * EMFILE is a descendant that outlives its task (spec 4.4).
 */
static int
proc_gone(int err)
{
	return (err == ENOENT || err == ESRCH || err == EACCES ||
	    err == EPERM);
}

/*
 * Parses /proc/PID/stat; returns 0, or -1 with errno, which proc_gone()
 * tells apart.
 */
static int
proc_read(pid_t pid, struct proc *p, int64_t *start)
{
	char		 path[64], buf[1024], *s;
	long long	 v;
	int		 field;

	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	errno = ENOENT;		/* an empty file: the process is gone */
	if (read_file(path, buf, sizeof buf) <= 0)
		return (-1);
	errno = ENOENT;
	/* comm may hold spaces and parentheses: fields follow the last ')'. */
	if ((s = strrchr(buf, ')')) == NULL || s[1] != ' ')
		return (-1);
	s += 2;
	p->pid = pid;
	p->member = 0;
	if (sscanf(s, "%c %d %d %d %d", &p->state, &p->ppid, &p->pgrp,
	    &p->sid, &p->tty_nr) != 5)
		return (-1);
	if (start != NULL) {
		/* starttime is field 22; the state is field 3. */
		for (field = 3; field < 22 && s != NULL; field++) {
			s = strchr(s, ' ');
			if (s != NULL)
				s++;
		}
		if (s == NULL || sscanf(s, "%lld", &v) != 1)
			return (-1);
		*start = v;
	}
	return (0);
}

/*
 * The boot clock now in clock ticks, the unit and origin of /proc/PID/stat's
 * starttime: the kernel takes a new process's starttime from the same clock
 * inside clone(), so a spawn that reads this before and after, and gets the
 * same tick twice, knows the child's starttime without reading /proc.
 */
int64_t
proctree_ticks_now(void)
{
	static long	hz;
	struct timespec	ts;

	if (hz == 0 && (hz = sysconf(_SC_CLK_TCK)) <= 0)
		hz = 100;
	if (clock_gettime(CLOCK_BOOTTIME, &ts) == -1)
		return (-1);
	return ((int64_t)ts.tv_sec * hz + ts.tv_nsec / (1000000000L / hz));
}

/* The start time of pid in clock ticks after boot; -1 when it is gone. */
int64_t
proctree_start_time(pid_t pid)
{
	struct proc	p;
	int64_t		start;

	if (proc_read(pid, &p, &start) == -1)
		return (-1);
	return (start);
}

/*
 * Does forkqd have a controlling terminal? When /proc cannot tell, it is
 * taken to have one.
 */
int
proctree_self_has_tty(void)
{
	struct proc	p;

	if (proc_read(getpid(), &p, NULL) == -1)
		return (1);
	return (p.tty_nr != 0);
}

struct environ_want {
	char	id[64];		/* FORKQ_TASK_ID=N */
	size_t	idl;
	int	found_id;
	int	found_sock;
};

/* Is e (len bytes, no NUL) "FORKQ_SOCKET=" then path? */
static int
environ_is_socket(const char *e, size_t len, const char *path)
{
	size_t	pl = strlen(path);

	return (len == 13 + pl && memcmp(e, "FORKQ_SOCKET=", 13) == 0 &&
	    memcmp(e + 13, path, pl) == 0);
}

/*
 * The socket is matched as tasks are told it, from /. Not as -s gave it,
 * as forkqd told it before: two forkqd started with "-s forkq.sock" in two
 * directories would each take the other's tasks for theirs.
 */
static int
environ_entry(const char *e, size_t len, void *arg)
{
	struct environ_want	*w = arg;

	if (len == w->idl && memcmp(e, w->id, len) == 0)
		w->found_id = 1;
	else if (environ_is_socket(e, len, config.socket_env))
		w->found_sock = 1;
	return (w->found_id && w->found_sock);
}

/*
 * Does pid's environment name this task of this forkqd? Both the task id
 * and the socket must match: two forkqd on two state dirs number their
 * tasks alike. The whole environment is read: a task's own variables come
 * before forkqd's, and may be larger than a buffer.
 */
static int
environ_names_task(pid_t pid, int64_t task_id)
{
	struct environ_want	w;
	char			path[64];

	memset(&w, 0, sizeof w);
	w.idl = (size_t)snprintf(w.id, sizeof w.id, "FORKQ_TASK_ID=%" PRId64,
	    task_id);
	snprintf(path, sizeof path, "/proc/%d/environ", (int)pid);
	if (proc_records(path, '\0', environ_entry, &w) == -1 &&
	    !proc_gone(errno))
		return (-1);	/* not known */
	return (w.found_id && w.found_sock);
}

/* Could the pids have gone all the way round in a task of this age (ms)? */
static int
pids_may_have_cycled(int64_t age_ms)
{
	char		 buf[32];
	const char	*errstr;
	long long	 pid_max;

	if (wrap_free_ms == -1) {
		wrap_free_ms = 0;
		if (read_file("/proc/sys/kernel/pid_max", buf, sizeof buf) > 0) {
			buf[strcspn(buf, "\n")] = '\0';
			pid_max = strtonum(buf, 1, INT32_MAX, &errstr);
			if (errstr == NULL)
				wrap_free_ms = pid_max / 2 / FORKS_PER_MS_MAX;
		}
	}
	return (age_ms < 0 || age_ms >= wrap_free_ms);
}

/* The last pid the kernel handed out, or -1. */
static long
last_pid(void)
{
	char		 buf[32];
	const char	*errstr;
	long		 v;

	if (read_file("/proc/sys/kernel/ns_last_pid", buf, sizeof buf) <= 0)
		return (-1);
	buf[strcspn(buf, "\n")] = '\0';
	v = (long)strtonum(buf, 1, INT32_MAX, &errstr);
	return (errstr != NULL ? -1 : v);
}

/*
 * The processes of /proc with pid >= min_pid (0 = all). Every process a
 * task started was created after the task, so while pids have not wrapped
 * around since, it has a higher pid: reading only those keeps the scan at
 * an exit cheap on a busy host. Returns 0 with *list (free it), or -1 when
 * /proc could not be read whole.
 */
static int
proc_list(pid_t min_pid, struct proc **list, size_t *n)
{
	DIR		*d;
	struct dirent	*de;
	struct proc	*procs = NULL;
	size_t		 cap = 0;
	const char	*errstr;
	pid_t		 pid;

	*n = 0;
	*list = NULL;
	if ((d = opendir("/proc")) == NULL) {
		log_warn("opendir /proc");
		return (-1);
	}
	errno = 0;
	while ((de = readdir(d)) != NULL) {
		if (!isdigit((unsigned char)de->d_name[0]))
			continue;
		pid = (pid_t)strtonum(de->d_name, 1, INT32_MAX, &errstr);
		if (errstr != NULL || pid < min_pid)
			continue;
		if (*n == cap) {
			cap = cap == 0 ? 256 : cap * 2;
			procs = xreallocarray(procs, cap, sizeof *procs);
		}
		if (proc_read(pid, &procs[*n], NULL) == 0)
			(*n)++;
		else if (!proc_gone(errno)) {
			log_warn("reading /proc/%d/stat", (int)pid);
			goto fail;
		}
		errno = 0;
	}
	if (errno != 0) {
		log_warn("reading /proc");
		goto fail;
	}
	closedir(d);
	*list = procs;
	return (0);
fail:
	closedir(d);
	free(procs);
	*n = 0;
	return (-1);
}

/*
 * kill(2), and SIGCONT after a SIGTERM that went: a stopped process acts
 * on SIGTERM only once continued. A task stopped by SIGSTOP, or by SIGTSTP
 * where its process group is not orphaned (a task in forkqd's session),
 * would otherwise wait for the SIGKILL of the kill grace, which needs no
 * such help.
 */
int
kill_waking(pid_t pid, int sig)
{
	if (kill(pid, sig) == -1)
		return (-1);
	if (sig == SIGTERM)
		(void)kill(pid, SIGCONT);
	return (0);
}

/*
 * Fills out with up to max live pids belonging to the task whose main
 * process was main_pid (its session and group id), started age_ms ago
 * (-1: unknown). With anywhere, orphans are looked for under any parent,
 * not just forkqd (recovery after a crash, when they were re-parented
 * elsewhere). *held says whether some process, a zombie included, still has
 * main_pid as its group or session id: the kernel hands the number out
 * again only once none has. Returns how many were found, or -1 when /proc
 * could not be read whole (out of file descriptors): what is left is not
 * known.
 */
static ssize_t
collect(pid_t main_pid, int64_t age_ms, int64_t task_id, int anywhere,
    int match_group, pid_t *out, size_t max, int *held)
{
	struct proc	*procs;
	size_t		 n, i, found = 0;
	pid_t		 self = getpid(), min_pid = 0;
	int		 changed, named, in_ids;

	/*
	 * Below main_pid only if the pids wrapped around since it started: a
	 * last pid past it again then says nothing, and a long task is read
	 * whole.
	 */
	if (!anywhere && main_pid > 1 && last_pid() >= main_pid &&
	    !pids_may_have_cycled(age_ms))
		min_pid = main_pid;
	if (proc_list(min_pid, &procs, &n) == -1)
		return (-1);
	*held = 0;
	for (i = 0; i < n; i++) {
		struct proc	*p = &procs[i];

		if (p->pid == self)
			continue;
		in_ids = main_pid > 1 &&
		    (p->pgrp == main_pid || p->sid == main_pid);
		if (in_ids)
			*held = 1;
		if (match_group && in_ids)
			p->member = 1;
		else if ((anywhere || p->ppid == self) && task_id > 0) {
			if ((named = environ_names_task(p->pid,
			    task_id)) == -1) {
				log_warn("reading /proc/%d/environ",
				    (int)p->pid);
				free(procs);
				return (-1);
			}
			p->member = named;
		}
	}
	do {
		changed = 0;
		for (i = 0; i < n; i++) {
			size_t	j;

			if (procs[i].member)
				continue;
			for (j = 0; j < n; j++) {
				if (procs[j].member &&
				    procs[j].pid == procs[i].ppid) {
					procs[i].member = changed = 1;
					break;
				}
			}
		}
	} while (changed);
	for (i = 0; i < n && found < max; i++) {
		if (procs[i].member && procs[i].state != 'Z' &&
		    procs[i].pid != self)
			out[found++] = procs[i].pid;
	}
	free(procs);
	return (found);
}

/* Notes a task's main process; what proctree_signal's seq wants. */
uint64_t
proctree_note_spawn(pid_t pid)
{
	spawned[pid % SPAWNED_SLOTS].pid = pid;
	spawned[pid % SPAWNED_SLOTS].seq = ++spawn_seq;
	return (spawn_seq);
}

/*
 * After main_pid (a task's main process, reaped; its spawn seq, age_ms
 * ago) exited: can anything of the task be left? Not if its process group
 * is empty and every pid handed out since it started went to a task forkqd
 * started after it: a descendant would have needed a pid of its own. Saves
 * the /proc walk for the common task that starts nothing; any doubt
 * answers "maybe".
 */
static int
nothing_left_quick(pid_t main_pid, uint64_t seq, int64_t age_ms)
{
	long	last;
	pid_t	p;

	if (kill(-main_pid, 0) == 0 || errno != ESRCH)
		return (0);
	if (seq == 0 || pids_may_have_cycled(age_ms))
		return (0);
	if ((last = last_pid()) < main_pid || last - main_pid > QUICK_SPAN)
		return (0);
	for (p = main_pid + 1; p <= last; p++) {
		if (spawned[p % SPAWNED_SLOTS].pid != p ||
		    spawned[p % SPAWNED_SLOTS].seq <= seq)
			return (0);
	}
	return (1);
}

/*
 * Sends sig to the task's process group and to every process of the task
 * found by collect(). seq is what proctree_note_spawn said of main_pid and
 * age_ms how long ago that was (0 and -1: not known, as at recovery). With
 * *group_gone, main_pid's group and session are no longer the task's (the
 * number may have been reused): they are neither signalled nor matched.
 * With reaped (main_pid was reaped), a scan that finds no process left in
 * that group or session sets *group_gone: a process that left the group but
 * not the session keeps the number the task's until then. Returns how
 * many live processes were found: 0 means nothing of the task is left.
 * When /proc could not be read it says 1: the caller tries again later
 * (task.c's sweep), as it does for a process that lingers.
 */
size_t
proctree_signal(pid_t main_pid, pid_t anywhere, int64_t task_id, int sig,
    int reaped, int *group_gone, uint64_t seq, int64_t age_ms)
{
	pid_t	pids[1024];
	ssize_t	n, i;
	int	held;

	if (sig == 0 && !anywhere && main_pid > 1 &&
	    nothing_left_quick(main_pid, seq, age_ms))
		return (0);
	if (main_pid > 1 && !*group_gone)
		(void)kill_waking(-main_pid, sig);
	n = collect(main_pid, age_ms, task_id, anywhere != 0, !*group_gone,
	    pids, sizeof pids / sizeof pids[0], &held);
	if (n == -1)
		return (1);	/* not known: as if something were left */
	if (reaped && !held)
		*group_gone = 1;
	for (i = 0; i < n; i++) {
		if (kill_waking(pids[i], sig) == -1 && errno != ESRCH)
			log_warn("kill %d", (int)pids[i]);
	}
	return ((size_t)n);
}
