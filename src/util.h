/*
 * util.h: small pure helpers shared by forkq and forkqd: parsing durations,
 * sizes and times as the spec writes them, formatting times and durations,
 * signal names, clocks and the default paths. Nothing here touches the event
 * loop, the store or global state.
 */
#ifndef FORKQ_UTIL_H
#define FORKQ_UTIL_H

#include <sys/types.h>

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

/* Longest request or answer line, newline included (spec 7). */
#define FORKQ_MAX_LINE		(1024 * 1024)
/* What an answer may hold besides its task objects and other bulk. */
#define FORKQ_ANSWER_MARGIN	4096

/* Longest task name or queue name, in bytes; the shortest is 1. */
#define FORKQ_MAX_LABEL		256

/* Largest duration we accept anywhere: 100 years, in ms. */
#define FORKQ_MAX_DURATION_MS	(100LL * 365 * 86400 * 1000)

/*
 * "250ms", "30s", "5m", "2h", "1d"; a bare number is seconds. Returns 0 and
 * sets *ms, or -1 and sets *errstr to a static reason.
 */
int		 parse_duration_ms(const char *, int64_t *, const char **);

/*
 * strtonum(3) of a number written as digits alone, or a minus and digits:
 * strtonum itself takes " 5" and "+5" but refuses "5 ".
 */
long long	 parse_whole(const char *, long long, long long, const char **);

/* "512", "64K", "2G" (powers of 1024); a bare number is bytes. */
int		 parse_size(const char *, int64_t *, const char **);

/*
 * RFC 3339 ("2026-11-22T09:30:00Z", fraction and offset allowed) or unix
 * seconds, from the year 0000 to 9999 in UTC: as far as RFC 3339 writes,
 * which is how forkq gives times back.
 */
/* 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z */
#define TIME_MIN_MS	(-62167219200LL * 1000)
#define TIME_MAX_MS	(253402300799LL * 1000 + 999)
int		 parse_time_ms(const char *, int64_t *, const char **);

/* "2026-11-22T09:30:00.123Z"; buf of at least 32 bytes. */
#define RFC3339_LEN	32
void		 format_rfc3339_ms(int64_t, char *, size_t);

/* Local time "2026-11-22 10:30:00" for humans. */
void		 format_local_time(int64_t, char *, size_t);

/* "250ms", "1.2s", "5m03s", "2h05m", "1d02h". */
void		 format_duration(int64_t, char *, size_t);

/* "SIGKILL" for 9; a static "SIG<n>" form for unknown numbers. */
const char	*signal_name(int);
/* 9 for "SIGKILL" or "KILL"; -1 when unknown. */
int		 signal_number(const char *);

/* Replaces invalid UTF-8 bytes with '?', in place. */
void		 utf8_sanitize(char *);
/* Frees a NULL-terminated array of strings and the array; NULL is none. */
void		 strv_free(char **);

int64_t		 wall_ms(void);		/* ms since the Unix epoch */
int64_t		 mono_ms(void);		/* ms on CLOCK_MONOTONIC */
int		 cmp_int64(const void *, const void *);	/* for qsort */
int		 running_as_root(void);
gid_t		 running_egid(void);
/* Is a directory entry's name "." or ".."? */
int		 dot_entry(const char *);
/*
 * pthread_create with every signal blocked in the new thread (they are the
 * loop's, through libev's signalfd); 0 or the error number.
 */
int		 thread_start_quiet(pthread_t *, void *(*)(void *));
/*
 * Sets *stop under mutex, wakes the thread waiting on cond, and joins it:
 * the end of a worker thread that loops until told to stop.
 */
void		 thread_stop(pthread_t, pthread_mutex_t *, pthread_cond_t *,
		    int *);

/*
 * The daemon's default state dir and socket for the calling user (spec 2).
 * Return 0, or -1 when no path can be formed (no HOME).
 */
int		 default_state_dir(char *, size_t);
int		 default_socket_path(char *, size_t);

#endif
