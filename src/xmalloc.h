/*
 * xmalloc.h: allocation that cannot fail. Running out of memory is fatal in
 * forkq and forkqd alike (the tmux convention): callers never check.
 */
#ifndef FORKQ_XMALLOC_H
#define FORKQ_XMALLOC_H

#include <stddef.h>

void	*xmalloc(size_t);
void	*xcalloc(size_t, size_t);
void	*xrealloc(void *, size_t);
void	*xreallocarray(void *, size_t, size_t);
char	*xstrdup(const char *);
char	*xstrndup(const char *, size_t);
int	 xasprintf(char **, const char *, ...)
	    __attribute__((format(printf, 2, 3)));

#endif
