/*
 * log.c: diagnostics for whoever runs forkqd, on stderr, in the OpenBSD
 * shape (log_warn appends strerror(errno), fatal exits). These are not the
 * structured events of event.c: they say what went wrong inside forkqd.
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "forkqd.h"

static int	log_verbose;

void
log_init(int verbose)
{
	log_verbose = verbose;
}

static void
log_vwrite(const char *prefix, const char *fmt, va_list ap, int with_errno,
    int fatal_error)
{
	char	msg[1024], line[1400];
	int	saved = errno, n;

	vsnprintf(msg, sizeof msg, fmt, ap);
	if (with_errno)
		n = snprintf(line, sizeof line, "forkqd: %s%s: %s\n", prefix,
		    msg, strerror(saved));
	else
		n = snprintf(line, sizeof line, "forkqd: %s%s\n", prefix, msg);
	if (n < 0)
		n = 0;
	else if ((size_t)n >= sizeof line) {
		n = sizeof line - 1;
		line[n - 1] = '\n';
	}
	/* One line, whole: stderr may be the event log too. */
	if (!event_log_diagnostic(line, (size_t)n, fatal_error))
		fputs(line, stderr);
	errno = saved;
}

void
log_warn(const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	log_vwrite("", fmt, ap, 1, 0);
	va_end(ap);
}

void
log_warnx(const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	log_vwrite("", fmt, ap, 0, 0);
	va_end(ap);
}

void
log_info(const char *fmt, ...)
{
	va_list	ap;

	if (log_verbose < 1)
		return;
	va_start(ap, fmt);
	log_vwrite("", fmt, ap, 0, 0);
	va_end(ap);
}

void
log_debug(const char *fmt, ...)
{
	va_list	ap;

	if (log_verbose < 2)
		return;
	va_start(ap, fmt);
	log_vwrite("debug: ", fmt, ap, 0, 0);
	va_end(ap);
}

void
fatal(const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	log_vwrite("", fmt, ap, 1, 1);
	va_end(ap);
	exit(1);
}

void
fatalx(const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	log_vwrite("", fmt, ap, 0, 1);
	va_end(ap);
	exit(1);
}
