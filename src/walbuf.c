/*
 * walbuf.c: the store's VFS, a thin layer over SQLite's own ("unix") that
 * gathers what SQLite writes to the WAL and hands it to the kernel in one
 * pwrite(2) per commit. SQLite writes each WAL frame with two pwrites, its
 * 24-byte header and then the page; a task's start or end is 10-14 frames,
 * so 20-28 system calls on the loop, between a task's exit and the next
 * spawn (bench: 25 pwrites per task before, under 2 after). No SQL here:
 * store.c opens its connection through this VFS, and nothing else does.
 *
 * Invariants:
 * - The buffer holds bytes contiguous in the WAL, from off; a write that
 *   does not follow them, or would overflow the buffer, writes them first.
 * - Only appends are held: writes at or past the furthest byte written
 *   since the WAL began again at offset 0. A write below it (a page
 *   written over within its transaction, or the frame headers SQLite
 *   rewrites after a commit to fix their checksums) goes through at once,
 *   after what is held, and its error is its caller's.
 * - The page that ends a commit (its frame header carries the database
 *   size, nonzero only in a commit frame) goes to the file in the same
 *   xWrite, so a failed write is the commit's error, as without this layer,
 *   and when SQLite's COMMIT returns the frames are in the file: store.c's
 *   own fdatasync of the WAL, and the wal-index header that shows the
 *   commit to other readers (the sqlite3 shell), come after.
 * - Any other call on the WAL or the database file writes the buffer out
 *   first, so SQLite never reads, syncs, truncates or locks past bytes it
 *   wrote. Where the call cannot fail (the shm barrier, or any call on the
 *   database file), a failed write is kept and returned by the WAL's next
 *   call, which may belong to a later transaction: late, not lost.
 * - One WAL is buffered at a time (forkqd has one connection); a second
 *   one opened meanwhile is written through.
 */
#include "config.h"

#include <sqlite3.h>
#include <string.h>

#include "forkqd.h"
#include "xmalloc.h"

/* Most bytes held: a commit of a loop pass is 10-100 KiB of 1 KiB pages. */
#define WALBUF_CAP		(128 * 1024)
#define WAL_FRAME_HDR		24	/* bytes; then the page */

struct walbuf_file {
	sqlite3_file	 base;		/* pMethods: walbuf_methods */
	sqlite3_file	*real;		/* the real file, right after this */
	int		 is_wal;	/* buffered */
	int		 ends_commit;	/* the next write is a commit's last */
	int		 kept_rc;	/* a failed write no call could return */
	sqlite3_int64	 appended;	/* end of the furthest write */
	sqlite3_int64	 off;		/* WAL offset of buf[0] */
	size_t		 len;		/* bytes in buf */
	unsigned char	*buf;		/* WALBUF_CAP, once written to */
};

static sqlite3_vfs		*real_vfs;
static sqlite3_vfs		 walbuf_vfs;
static struct walbuf_file	*buffered_wal;
static sqlite3_io_methods	 walbuf_methods[4];	/* by iVersion */

#define REAL(p)		(((struct walbuf_file *)(p))->real)
#define METHODS(p)	(REAL(p)->pMethods)

/* Writes out what the WAL's buffer holds; an SQLite result code. */
static int
walbuf_flush(struct walbuf_file *f)
{
	int	rc;

	/* ends_commit stays: if a call came between a commit's header and its
	 * page, the page must still go out in its own xWrite. */
	if (f == NULL)
		return (SQLITE_OK);
	if (f->len > 0) {
		rc = METHODS(f)->xWrite(f->real, f->buf, (int)f->len, f->off);
		f->len = 0;
		if (rc != SQLITE_OK && f->kept_rc == SQLITE_OK)
			f->kept_rc = rc;
	}
	rc = f->kept_rc;
	f->kept_rc = SQLITE_OK;
	return (rc);
}

/* Before a call on file p: the buffered WAL goes out. */
static int
walbuf_before(sqlite3_file *p)
{
	struct walbuf_file	*f = (struct walbuf_file *)p;
	int			 rc;

	if (f->is_wal)
		return (walbuf_flush(f));
	/* A call on the database file (locks, shm): keep any failure for the
	 * WAL's next call, which reports it. */
	if (buffered_wal != NULL && (rc = walbuf_flush(buffered_wal)) !=
	    SQLITE_OK)
		buffered_wal->kept_rc = rc;
	return (SQLITE_OK);
}

static int
walbuf_close(sqlite3_file *p)
{
	struct walbuf_file	*f = (struct walbuf_file *)p;
	int			 rc, rc_close;

	rc = walbuf_before(p);
	rc_close = METHODS(p)->xClose(f->real);
	if (buffered_wal == f)
		buffered_wal = NULL;
	free(f->buf);
	f->buf = NULL;
	return (rc != SQLITE_OK ? rc : rc_close);
}

static int
walbuf_read(sqlite3_file *p, void *buf, int n, sqlite3_int64 off)
{
	int	rc;

	if ((rc = walbuf_before(p)) != SQLITE_OK)
		return (rc);
	return (METHODS(p)->xRead(REAL(p), buf, n, off));
}

static int
walbuf_write(sqlite3_file *p, const void *buf, int n, sqlite3_int64 off)
{
	struct walbuf_file	*f = (struct walbuf_file *)p;
	const unsigned char	*b = buf;
	int			 rc, last, below, commit_hdr;

	if (!f->is_wal || n <= 0)
		return (METHODS(p)->xWrite(f->real, buf, n, off));
	if (off == 0)
		f->appended = 0;	/* the WAL begins again */
	/* A write tried counts as written, even when it fails below: what
	 * comes at its place later is an overwrite. */
	if (!(below = off < f->appended))
		f->appended = off + n;
	/* Bytes 4-7 of a frame header: the database size after a commit,
	 * 0 in every other frame. */
	commit_hdr = n == WAL_FRAME_HDR && (b[4] | b[5] | b[6] | b[7]) != 0;
	last = f->ends_commit;
	f->ends_commit = 0;
	if (f->kept_rc != SQLITE_OK || below ||
	    (f->len > 0 && (off != f->off + (sqlite3_int64)f->len ||
	    f->len + (size_t)n > WALBUF_CAP))) {
		if ((rc = walbuf_flush(f)) != SQLITE_OK)
			return (rc);
	}
	if (below || (size_t)n > WALBUF_CAP) {
		rc = METHODS(p)->xWrite(f->real, buf, n, off);
		/* A commit's page may still be held after its header. */
		if (rc == SQLITE_OK && commit_hdr)
			f->ends_commit = 1;
		return (rc);
	}
	if (f->buf == NULL)
		f->buf = xmalloc(WALBUF_CAP);
	if (f->len == 0)
		f->off = off;
	memcpy(f->buf + f->len, buf, (size_t)n);
	f->len += (size_t)n;
	if (commit_hdr)
		f->ends_commit = 1;
	return (last ? walbuf_flush(f) : SQLITE_OK);
}

static int
walbuf_truncate(sqlite3_file *p, sqlite3_int64 size)
{
	struct walbuf_file	*f = (struct walbuf_file *)p;
	int			 rc;

	if ((rc = walbuf_before(p)) != SQLITE_OK)
		return (rc);
	if (f->appended > size)
		f->appended = size;
	return (METHODS(p)->xTruncate(REAL(p), size));
}

static int
walbuf_sync(sqlite3_file *p, int flags)
{
	int	rc;

	if ((rc = walbuf_before(p)) != SQLITE_OK)
		return (rc);
	return (METHODS(p)->xSync(REAL(p), flags));
}

static int
walbuf_file_size(sqlite3_file *p, sqlite3_int64 *size)
{
	int	rc;

	if ((rc = walbuf_before(p)) != SQLITE_OK)
		return (rc);
	return (METHODS(p)->xFileSize(REAL(p), size));
}

static int
walbuf_lock(sqlite3_file *p, int level)
{
	int	rc;

	if ((rc = walbuf_before(p)) != SQLITE_OK)
		return (rc);
	return (METHODS(p)->xLock(REAL(p), level));
}

static int
walbuf_unlock(sqlite3_file *p, int level)
{
	int	rc;

	if ((rc = walbuf_before(p)) != SQLITE_OK)
		return (rc);
	return (METHODS(p)->xUnlock(REAL(p), level));
}

static int
walbuf_check_reserved(sqlite3_file *p, int *out)
{
	return (METHODS(p)->xCheckReservedLock(REAL(p), out));
}

static int
walbuf_file_control(sqlite3_file *p, int op, void *arg)
{
	int	rc;

	if ((rc = walbuf_before(p)) != SQLITE_OK)
		return (rc);
	return (METHODS(p)->xFileControl(REAL(p), op, arg));
}

static int
walbuf_sector_size(sqlite3_file *p)
{
	return (METHODS(p)->xSectorSize(REAL(p)));
}

static int
walbuf_device_characteristics(sqlite3_file *p)
{
	return (METHODS(p)->xDeviceCharacteristics(REAL(p)));
}

static int
walbuf_shm_map(sqlite3_file *p, int page, int size, int extend,
    void volatile **out)
{
	walbuf_before(p);
	return (METHODS(p)->xShmMap(REAL(p), page, size, extend, out));
}

static int
walbuf_shm_lock(sqlite3_file *p, int offset, int n, int flags)
{
	walbuf_before(p);
	return (METHODS(p)->xShmLock(REAL(p), offset, n, flags));
}

/* Before the wal-index header that shows a commit to other readers. */
static void
walbuf_shm_barrier(sqlite3_file *p)
{
	walbuf_before(p);
	METHODS(p)->xShmBarrier(REAL(p));
}

static int
walbuf_shm_unmap(sqlite3_file *p, int delete)
{
	walbuf_before(p);
	return (METHODS(p)->xShmUnmap(REAL(p), delete));
}

static int
walbuf_fetch(sqlite3_file *p, sqlite3_int64 off, int n, void **out)
{
	walbuf_before(p);
	return (METHODS(p)->xFetch(REAL(p), off, n, out));
}

static int
walbuf_unfetch(sqlite3_file *p, sqlite3_int64 off, void *page)
{
	return (METHODS(p)->xUnfetch(REAL(p), off, page));
}

static int
walbuf_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *p, int flags,
    int *out_flags)
{
	struct walbuf_file	*f = (struct walbuf_file *)p;
	int			 rc, version;

	memset(f, 0, sizeof *f);
	f->real = (sqlite3_file *)(f + 1);
	rc = real_vfs->xOpen(real_vfs, name, f->real, flags, out_flags);
	if (f->real->pMethods == NULL)
		return (rc);	/* nothing to close: pMethods stays NULL */
	/* Offer no more than the real file has. */
	version = f->real->pMethods->iVersion;
	if (version < 1 || version > 3)
		version = version < 1 ? 1 : 3;
	f->base.pMethods = &walbuf_methods[version];
	if (rc == SQLITE_OK && (flags & SQLITE_OPEN_WAL) &&
	    buffered_wal == NULL) {
		f->is_wal = 1;
		buffered_wal = f;
	}
	return (rc);
}

int
walbuf_register(void)
{
	static const sqlite3_io_methods template = {
		3,
		walbuf_close,
		walbuf_read,
		walbuf_write,
		walbuf_truncate,
		walbuf_sync,
		walbuf_file_size,
		walbuf_lock,
		walbuf_unlock,
		walbuf_check_reserved,
		walbuf_file_control,
		walbuf_sector_size,
		walbuf_device_characteristics,
		walbuf_shm_map,
		walbuf_shm_lock,
		walbuf_shm_barrier,
		walbuf_shm_unmap,
		walbuf_fetch,
		walbuf_unfetch,
	};
	int	v;

	if (real_vfs != NULL)
		return (0);
	if ((real_vfs = sqlite3_vfs_find(NULL)) == NULL)
		return (-1);
	for (v = 1; v <= 3; v++) {
		walbuf_methods[v] = template;
		walbuf_methods[v].iVersion = v;
	}
	walbuf_vfs = *real_vfs;
	walbuf_vfs.zName = WALBUF_VFS;
	walbuf_vfs.szOsFile = (int)sizeof(struct walbuf_file) +
	    real_vfs->szOsFile;
	walbuf_vfs.xOpen = walbuf_open;
	walbuf_vfs.pNext = NULL;
	if (sqlite3_vfs_register(&walbuf_vfs, 0) != SQLITE_OK) {
		real_vfs = NULL;
		return (-1);
	}
	return (0);
}
