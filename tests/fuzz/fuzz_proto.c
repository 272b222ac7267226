/*
 * fuzz_proto.c: libFuzzer harness for a request line as forkqd reads it
 * (conn.c conn_request): the bytes up to the first newline go through
 * json_loadb with JSON_REJECT_DUPLICATES; an object then goes through
 * proto_parse_submit and the proto_get_* readers the ops use, and every
 * refusal through proto_error as the ops answer it. Checks that an
 * accepted spec is whole, that a refusal has a cause, that every answer
 * can be encoded, and (with ASan) that nothing leaks.
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "forkqd.h"

int	LLVMFuzzerInitialize(int *, char ***);
int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

/* The answer forkqd would send for a refusal must encode. */
static void
answer(json_t *o)
{
	char	*text;
	size_t	 len;

	if (o == NULL || (text = proto_encode(o, 0, 1, &len)) == NULL)
		abort();
	free(text);
	json_decref(o);
}

static void
refused(char *cause)
{
	if (cause == NULL)
		abort();
	answer(proto_error("bad_request", "%s", cause));
	free(cause);
}

/* A string from a spec must go back out as a JSON string. */
static void
check_string(const char *s)
{
	json_t	*v;

	if (s == NULL || (v = json_string(s)) == NULL)
		abort();
	json_decref(v);
}

static void
check_json(const char *text)
{
	json_t	*v;

	if (text == NULL)
		return;
	if ((v = json_loads(text, 0, NULL)) == NULL)
		abort();
	json_decref(v);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	/* forkqd's defaults (forkqd.c). */
	config.default_retries = 2;
	config.default_timeout_ms = 0;
	return (0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const	 ids[] = { "id", "after_id", "limit" };
	static const char *const	 strs[] = { "op", "state", "queue",
					    "name", "unique", "schedule" };
	const uint8_t			*nl;
	struct task_spec		 spec;
	json_error_t			 err;
	json_t				*req;
	const char			*s;
	char				*cause = NULL;
	int64_t				 v;
	size_t				 i;

	/* One line, as conn_process cuts it; longer ones are refused. */
	if ((nl = memchr(data, '\n', size)) != NULL)
		size = nl - data;
	if (size + 1 > FORKQ_MAX_LINE)
		return (0);

	req = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES,
	    &err);
	if (req == NULL) {
		answer(proto_error("bad_request", "malformed JSON: %s",
		    err.text));
		return (0);
	}
	if (!json_is_object(req)) {
		json_decref(req);
		return (0);
	}

	if (proto_parse_submit(req, &spec, &cause) == 0) {
		if (cause != NULL)
			abort();
		check_string(spec.name);
		check_string(spec.queue);
		if (spec.unique != NULL)
			check_string(spec.unique);
		if (spec.cwd != NULL)
			check_string(spec.cwd);
		if (spec.argv_json == NULL)
			abort();
		check_json(spec.argv_json);
		check_json(spec.env_json);
		if (spec.max_attempts < 1 || spec.timeout_ms < 0 ||
		    spec.backoff_max_ms < spec.backoff_base_ms)
			abort();
	} else
		refused(cause);
	task_spec_clear(&spec);

	for (i = 0; i < sizeof ids / sizeof ids[0]; i++) {
		cause = NULL;
		if (proto_get_id(req, ids[i], 0, &v, &cause) == -1)
			refused(cause);
		else if (cause != NULL)
			abort();
	}
	cause = NULL;
	if (proto_get_int(req, "priority", -1000, 1000, &v, &cause) == -1)
		refused(cause);
	for (i = 0; i < sizeof strs / sizeof strs[0]; i++) {
		cause = NULL;
		if (proto_get_string(req, strs[i], &s, &cause) == -1)
			refused(cause);
	}

	json_decref(req);
	return (0);
}
