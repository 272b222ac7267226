/*
 * fuzz_cron.c: libFuzzer harness for cron.c's schedule parser, as
 * cron_add gets a "schedule" string: the input, NUL-terminated, goes to
 * cron_parse, and the masks of a schedule it accepts to cron_next from a
 * fixed time, in a zone with daylight saving time. cron_next must answer
 * a minute after that time or UNSET.
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "forkqd.h"

/* 2026-03-08T06:59:00Z, a minute before New York springs forward. */
#define FUZZ_NOW	1772953140000LL

int	LLVMFuzzerInitialize(int *, char ***);
int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	setenv("TZ", "America/New_York", 1);
	tzset();
	return (0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint64_t	 masks[5];
	char		*s, *cause = NULL;
	int64_t		 next;

	if (size > 4096)
		return (0);
	s = xmalloc(size + 1);
	memcpy(s, data, size);
	s[size] = '\0';

	if (cron_parse(s, masks, &cause) == 0) {
		if (cause != NULL)
			abort();
		next = cron_next(masks, FUZZ_NOW);
		if (next != UNSET && (next <= FUZZ_NOW || next % 60000 != 0))
			abort();
	} else {
		if (cause == NULL)
			abort();
		free(cause);
	}
	free(s);
	return (0);
}
