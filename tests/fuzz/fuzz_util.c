/*
 * fuzz_util.c: libFuzzer harness for util.c's parsers of user text. The
 * input, as a NUL-terminated string, goes to parse_duration_ms,
 * parse_size, parse_time_ms and signal_number; a copy goes through
 * utf8_sanitize, whose result must be valid UTF-8 (jansson must take it)
 * of the same length.
 */
#include "config.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char	*err;
	char		*s, buf[RFC3339_LEN];
	int64_t		 v;
	int		 sig;
	json_t		*j;

	s = malloc(size + 1);
	if (s == NULL)
		return (0);
	memcpy(s, data, size);
	s[size] = '\0';

	err = NULL;
	if (parse_duration_ms(s, &v, &err) == 0) {
		if (v < 0 || v > FORKQ_MAX_DURATION_MS)
			abort();
		format_duration(v, buf, sizeof buf);
	} else if (err == NULL)
		abort();
	err = NULL;
	if (parse_size(s, &v, &err) == 0) {
		if (v < 0)
			abort();
	} else if (err == NULL)
		abort();
	err = NULL;
	if (parse_time_ms(s, &v, &err) == 0)
		format_rfc3339_ms(v, buf, sizeof buf);
	else if (err == NULL)
		abort();
	if ((sig = signal_number(s)) != -1) {
		if (sig < 1 || sig > 64)
			abort();
		(void)signal_name(sig);
	}

	utf8_sanitize(s);
	if (strlen(s) != strnlen((const char *)data, size))
		abort();
	if ((j = json_string(s)) == NULL)
		abort();
	json_decref(j);

	free(s);
	return (0);
}
