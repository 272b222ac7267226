/*
 * spill.c: the long lines of the event ring, kept on disk. The ring keeps
 * the last 16,384 events (spec 6 asks for at least 10,000) for `logs` and
 * watch backlogs. Most lines are a few hundred bytes, but task.submitted
 * carries the task's argv, up to about 1 MiB: held in memory, a few
 * thousand such submits would take gigabytes of forkqd. A line longer
 * than SPILL_MIN goes to STATE_DIR/events.spill instead, and the ring
 * keeps where it is.
 *
 * Lines are written one after the other and leave the ring oldest first,
 * so what is still kept is always the end of the file. The space of a
 * line that left is given back to the file system (a hole punched), and
 * once no kept line is in the file it is emptied. The file is forkqd's
 * own cache, made again at every start: nothing reads it but forkqd, and
 * nothing in it needs to survive a crash, so it is never synced.
 *
 * Invariants: spill_fd is -1 until the first long line; live counts the
 * kept lines in the file; end is where the next one goes.
 */
#include "config.h"

#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forkqd.h"
#include "xmalloc.h"

/*
 * Where holes cannot be punched (EOPNOTSUPP), dead lines take space until
 * the file is emptied: past this size no more lines are spilled (they
 * stay in memory, within the ring's byte bound) until then.
 */
#define SPILL_NO_HOLES_MAX	((int64_t)512 * 1024 * 1024)


static int	 spill_fd = -1;
static int	 spill_broken;	/* the file failed: long lines stay in memory */
static int	 spill_told;	/* an open failure was said */
static int	 no_holes;	/* the file system punches none */
static int64_t	 end;		/* bytes written since the file was emptied */
static int64_t	 hole_end;	/* [0, hole_end) given back already;
				 * a multiple of block */
static int64_t	 block = 4096;	/* the file system's; holes begin on one */
static size_t	 live;		/* kept lines in the file */
static char	*buf;		/* spill_read's, grown to the longest line */
static size_t	 buf_cap;

/* STATE_DIR/events.spill in path (len bytes); -1 when it is longer. */
static int
spill_path(char *path, size_t len)
{
	int	n = snprintf(path, len, "%s/events.spill", config.state_dir);

	return (n < 0 || (size_t)n >= len ? -1 : 0);
}

static int
spill_open(void)
{
	char		path[PATH_MAX];
	struct stat	st;

	if (spill_fd != -1)
		return (0);
	if (spill_broken)
		return (-1);
	if (spill_path(path, sizeof path) == -1) {
		spill_broken = 1;
		return (-1);
	}
	/* O_TRUNC: what a previous forkqd left is no ring of this one. */
	if ((spill_fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC |
	    O_NOFOLLOW, 0600)) == -1) {
		/* Out of fds is for now: the next long line tries again. */
		if (errno != EMFILE && errno != ENFILE)
			spill_broken = 1;
		if (!spill_told)
			log_warn("open %s; long events are kept in memory",
			    path);
		spill_told = 1;
		return (-1);
	}
	/* A hole frees only the blocks it covers whole. */
	if (fstat(spill_fd, &st) == 0 && st.st_blksize > block)
		block = st.st_blksize;
	return (0);
}

/*
 * Writes line (len bytes) to the file. Returns its offset, or -1 when it
 * could not be written: the caller keeps the line in memory then.
 */
int64_t
spill_write(const char *line, size_t len)
{
	int64_t	off = end;
	ssize_t	n;
	size_t	done = 0;

	if (spill_open() == -1 || (no_holes && end + (int64_t)len >
	    SPILL_NO_HOLES_MAX))
		return (-1);
	while (done < len) {
		if ((n = pwrite(spill_fd, line + done, len - done,
		    off + (int64_t)done)) == -1 && errno == EINTR)
			continue;
		if (n <= 0) {
			/* A full disk, say: this line stays in memory. */
			if (!spill_broken)
				log_warn("writing events.spill");
			spill_broken = 1;
			return (-1);
		}
		done += (size_t)n;
	}
	end += (int64_t)len;
	live++;
	return (off);
}

/*
 * The line of len bytes at off, valid until the next call; NULL when it
 * cannot be read back.
 */
const char *
spill_read(int64_t off, size_t len)
{
	ssize_t	n;
	size_t	done = 0;

	if (len > buf_cap) {
		buf = xrealloc(buf, len);
		buf_cap = len;
	}
	while (done < len) {
		if ((n = pread(spill_fd, buf + done, len - done,
		    off + (int64_t)done)) == -1 && errno == EINTR)
			continue;
		if (n <= 0) {
			log_warn("reading events.spill");
			return (NULL);
		}
		done += (size_t)n;
	}
	return (buf);
}

/* The line at off (len bytes) left the ring: its space is given back. */
void
spill_forget(int64_t off, size_t len)
{
	if (live > 0)
		live--;
	if (live == 0) {
		/* Nothing kept in it: empty, and written from the start. */
		if (ftruncate(spill_fd, 0) == 0)
			end = hole_end = 0;
		return;
	}
	/*
	 * Lines leave oldest first, so all before this one's end is dead:
	 * the hole reaches back to the last one's end, and the block two
	 * lines shared is given back with the second. (A hole of the line
	 * alone leaves such blocks allocated: a third of each 6 KB line.)
	 * Not on every file system (EOPNOTSUPP): the emptying does it.
	 */
	if (off + (int64_t)len > hole_end) {
		if (fallocate(spill_fd, FALLOC_FL_PUNCH_HOLE |
		    FALLOC_FL_KEEP_SIZE, hole_end, off + (off_t)len -
		    hole_end) == -1 && errno == EOPNOTSUPP)
			no_holes = 1;
		/* The next hole starts at the block this one ended in. */
		hole_end = (off + (int64_t)len) / block * block;
	}
}

/*
 * Closes and removes the file: at exit, where it goes with the ring, and
 * at start, where a forkqd that died may have left one.
 */
void
spill_reset(void)
{
	char	path[PATH_MAX];

	free(buf);
	buf = NULL;
	buf_cap = 0;
	if (spill_fd != -1)
		close(spill_fd);
	spill_fd = -1;
	spill_broken = spill_told = no_holes = 0;
	live = 0;
	end = hole_end = 0;
	if (spill_path(path, sizeof path) == 0)
		(void)unlink(path);
}
