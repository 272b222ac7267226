/*
 * rbtree.h: <sys/tree.h> as forkqd uses it. libbsd's RB_GENERATE_STATIC
 * marks its functions __unused, which BSD's <sys/cdefs.h> defines and
 * glibc's does not.
 */
#ifndef FORKQ_RBTREE_H
#define FORKQ_RBTREE_H

#include <sys/cdefs.h>
#ifndef __unused
#define __unused	__attribute__((__unused__))
#endif
#include <sys/tree.h>

#endif
