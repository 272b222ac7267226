/*
 * proto.c: the protocol's data, in and out (spec 7). Validates request
 * fields into the daemon's types, with a message naming the field on every
 * refusal, and encodes task and attempt objects. Pure: no I/O, no globals
 * but the read-only config defaults.
 */
#include "config.h"

#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "forkqd.h"

const struct rlimit_name rlimit_names[RLIM_COUNT] = {
	{ "cpu", RLIMIT_CPU, 0 },
	{ "as", RLIMIT_AS, 1 },
	{ "fsize", RLIMIT_FSIZE, 1 },
	{ "core", RLIMIT_CORE, 1 },
	{ "nofile", RLIMIT_NOFILE, 0 },
	{ "nproc", RLIMIT_NPROC, 0 },
};

/* Defaults of the CLI (spec 3), which the protocol shares. */
#define DEFAULT_BACKOFF_BASE_MS	1000
#define DEFAULT_BACKOFF_MAX_MS	(5 * 60 * 1000)
#define MAX_ATTEMPTS_LIMIT	1000000

/*
 * An error answer. The message is cut at 511 bytes and may quote what the
 * client sent (jansson's "near '...'" quotes raw bytes, up to where its
 * lexer stopped, possibly inside a character): invalid UTF-8 is replaced
 * with '?', or jansson would refuse the string and the client would get
 * an internal error instead.
 */
json_t *
proto_error(const char *code, const char *fmt, ...)
{
	va_list	 ap;
	char	 msg[512];

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	utf8_sanitize(msg);
	return (json_pack("{s:b, s:{s:s, s:s}}", "ok", 0, "error", "code",
	    code, "message", msg));
}

/*
 * Reads integer field name into *out when present (else leaves *out), and
 * checks min <= value <= max. Returns 1 when present, 0 when absent or null,
 * -1 with *cause on a wrong type or range.
 */
/* Is field name in req, and not null (which reads as absent)? */
static int
field_given(json_t *req, const char *name)
{
	json_t	*v = json_object_get(req, name);

	return (v != NULL && !json_is_null(v));
}

int
proto_get_int(json_t *req, const char *name, int64_t min, int64_t max,
    int64_t *out, char **cause)
{
	json_t		*v = json_object_get(req, name);
	json_int_t	 i;

	if (v == NULL || json_is_null(v))
		return (0);
	if (!json_is_integer(v)) {
		xasprintf(cause, "%s: must be an integer", name);
		return (-1);
	}
	i = json_integer_value(v);
	if (i < min || i > max) {
		xasprintf(cause, "%s: must be between %lld and %lld", name,
		    (long long)min, (long long)max);
		return (-1);
	}
	*out = i;
	return (1);
}

int
proto_get_id(json_t *req, const char *name, int required, int64_t *id,
    char **cause)
{
	int	rc;

	rc = proto_get_int(req, name, 1, INT64_MAX, id, cause);
	if (rc == 0 && required) {
		xasprintf(cause, "%s: required", name);
		return (-1);
	}
	return (rc);
}

int
proto_get_string(json_t *req, const char *name, const char **out,
    char **cause)
{
	json_t	*v = json_object_get(req, name);

	if (v == NULL || json_is_null(v))
		return (0);
	if (!json_is_string(v)) {
		xasprintf(cause, "%s: must be a string", name);
		return (-1);
	}
	*out = json_string_value(v);
	return (1);
}

int
proto_get_bool(json_t *req, const char *name, int *out, char **cause)
{
	json_t	*v = json_object_get(req, name);

	if (v == NULL || json_is_null(v))
		return (0);
	if (!json_is_boolean(v)) {
		xasprintf(cause, "%s: must be true or false", name);
		return (-1);
	}
	*out = json_is_true(v);
	return (1);
}

static int
parse_label(json_t *req, const char *name, char **out, char **cause)
{
	const char	*s;
	int		 rc;

	if ((rc = proto_get_string(req, name, &s, cause)) <= 0)
		return (rc);
	if (*s == '\0' || strlen(s) > FORKQ_MAX_LABEL) {
		xasprintf(cause, "%s: must be 1 to %d bytes", name,
		    FORKQ_MAX_LABEL);
		return (-1);
	}
	*out = xstrdup(s);
	return (1);
}

static int
parse_argv(json_t *req, struct task_spec *spec, char **cause)
{
	json_t		*argv = json_object_get(req, "argv"), *v;
	const char	*base;
	size_t		 i, len;

	if (argv == NULL) {
		xasprintf(cause, "argv: required");
		return (-1);
	}
	if (!json_is_array(argv) || json_array_size(argv) == 0) {
		xasprintf(cause, "argv: must be a non-empty array of strings");
		return (-1);
	}
	json_array_foreach(argv, i, v) {
		if (!json_is_string(v)) {
			xasprintf(cause, "argv[%zu]: must be a string", i);
			return (-1);
		}
	}
	if (*json_string_value(json_array_get(argv, 0)) == '\0') {
		xasprintf(cause, "argv[0]: must not be empty");
		return (-1);
	}
	spec->argv_json = proto_text(argv);
	if (spec->name == NULL) {
		base = json_string_value(json_array_get(argv, 0));
		if (strrchr(base, '/') != NULL)
			base = strrchr(base, '/') + 1;
		if (*base == '\0')
			base = "task";
		/* At most FORKQ_MAX_LABEL bytes, cut between characters: a
		 * name must stay UTF-8 to be a JSON string at all. */
		len = strlen(base);
		if (len > FORKQ_MAX_LABEL) {
			len = FORKQ_MAX_LABEL;
			while (len > 0 && ((unsigned char)base[len] & 0xc0) ==
			    0x80)
				len--;
		}
		spec->name = xstrndup(base, len);
	}
	return (0);
}

static int
parse_env(json_t *req, struct task_spec *spec, char **cause)
{
	json_t		*env = json_object_get(req, "env"), *v;
	const char	*k;

	if (env == NULL || json_is_null(env))
		return (0);
	if (!json_is_object(env)) {
		xasprintf(cause, "env: must be an object of strings");
		return (-1);
	}
	json_object_foreach(env, k, v) {
		if (!json_is_string(v)) {
			xasprintf(cause, "env.%s: must be a string", k);
			return (-1);
		}
		if (*k == '\0' || strchr(k, '=') != NULL) {
			xasprintf(cause, "env: bad variable name \"%s\"", k);
			return (-1);
		}
	}
	if (json_object_size(env) > 0)
		spec->env_json = proto_text(env);
	return (0);
}

static int
parse_rlimits(json_t *req, struct task_spec *spec, char **cause)
{
	json_t		*rl = json_object_get(req, "rlimits");
	const char	*k;
	json_t		*v;
	char		 field[64];
	int		 i;

	for (i = 0; i < RLIM_COUNT; i++)
		spec->rlimits[i] = UNSET;
	if (rl == NULL || json_is_null(rl))
		return (0);
	if (!json_is_object(rl)) {
		xasprintf(cause, "rlimits: must be an object");
		return (-1);
	}
	json_object_foreach(rl, k, v) {
		for (i = 0; i < RLIM_COUNT; i++) {
			if (strcmp(k, rlimit_names[i].name) == 0)
				break;
		}
		if (i == RLIM_COUNT) {
			xasprintf(cause, "rlimits.%s: unknown limit (use cpu, "
			    "as, fsize, core, nofile or nproc)", k);
			return (-1);
		}
		if (json_is_null(v))
			continue;	/* as every field: null is absent */
		snprintf(field, sizeof field, "rlimits.%s", k);
		if (!json_is_integer(v) || json_integer_value(v) < 0) {
			xasprintf(cause, "%s: must be a non-negative integer",
			    field);
			return (-1);
		}
		spec->rlimits[i] = json_integer_value(v);
	}
	return (0);
}

/* after: an array of task ids (spec 10); existence is the caller's check. */
static int
parse_after(json_t *req, struct task_spec *spec, char **cause)
{
	json_t	*a = json_object_get(req, "after"), *v;
	size_t	 i, n;

	if (a == NULL || json_is_null(a))
		return (0);
	if (!json_is_array(a)) {
		xasprintf(cause, "after: must be an array of task ids");
		return (-1);
	}
	spec->after = xreallocarray(NULL, json_array_size(a) + 1,
	    sizeof *spec->after);
	json_array_foreach(a, i, v) {
		if (!json_is_integer(v) || json_integer_value(v) < 1) {
			xasprintf(cause, "after[%zu]: must be a task id", i);
			return (-1);
		}
		spec->after[spec->nafter++] = json_integer_value(v);
	}
	/* Each once, in order: a task named twice is waited on once. */
	qsort(spec->after, spec->nafter, sizeof *spec->after, cmp_int64);
	for (i = n = 0; i < spec->nafter; i++) {
		if (n == 0 || spec->after[i] != spec->after[n - 1])
			spec->after[n++] = spec->after[i];
	}
	spec->nafter = n;
	return (0);
}

/*
 * How answers and events are written: compact, and fractions (stats'
 * success_rate) to 15 significant digits, as many as a double keeps of a
 * decimal: jansson's 17 wrote 4 of 5 as 0.80000000000000004.
 */
#define ENCODE_FLAGS	(JSON_COMPACT | JSON_REAL_PRECISION(15))

/*
 * o's compact JSON text in a new buffer, after head bytes left for the
 * caller and before tail more: answers and event lines are finished in
 * place, without another copy. Sets *len to the text's length; NULL when
 * jansson cannot encode o. A stack buffer takes the text first, so most
 * encodings cost one allocation of the exact size (json_dumps grows its
 * own buffer from 16 bytes, then copies it).
 */
char *
proto_encode(const json_t *o, size_t head, size_t tail, size_t *len)
{
	char	 first[4096], *buf;
	size_t	 n;

	if ((n = json_dumpb(o, first, sizeof first, ENCODE_FLAGS)) == 0)
		return (NULL);
	buf = xmalloc(head + n + tail);
	if (n <= sizeof first)
		memcpy(buf + head, first, n);
	else if (json_dumpb(o, buf + head, n, ENCODE_FLAGS) != n) {
		free(buf);
		return (NULL);
	}
	*len = n;
	return (buf);
}

/* The length of o's compact JSON text; 0 when it cannot be encoded. */
size_t
proto_size(const json_t *o)
{
	return (json_dumpb(o, NULL, 0, ENCODE_FLAGS));
}

/*
 * Appends o (consumed) to arr if it still fits in an answer line, counting
 * its bytes in *used (start at 0). Returns 0, or -1 (o dropped) when it
 * does not fit: the answer then says "more": true.
 */
int
proto_append_within(json_t *arr, json_t *o, size_t *used)
{
	size_t	sz = proto_size(o) + 1;

	if (*used + sz > PROTO_ANSWER_BUDGET) {
		json_decref(o);
		return (-1);
	}
	*used += sz;
	json_array_append_new(arr, o);
	return (0);
}

/* o's compact JSON as a string; NULL when it cannot be encoded. */
char *
proto_text(const json_t *o)
{
	char	*text;
	size_t	 len;

	if ((text = proto_encode(o, 0, 1, &len)) != NULL)
		text[len] = '\0';
	return (text);
}

/*
 * Validates a submit request into spec (which the caller clears with
 * task_spec_clear, also on failure). *cause must be NULL on entry; on
 * failure it is set to a message naming the field. Applies the CLI's defaults and
 * forkqd's --default-timeout / --default-retries.
 */
/*
 * A task's object goes out whole in answers (submit, get, list, wait),
 * and an answer is one line of at most 1 MiB (spec 7): its text fields
 * together must leave room for the rest of the object and some attempts.
 */
static int
check_task_size(const struct task_spec *spec, char **cause)
{
	/* argv and env are JSON already; the rest may grow 6-fold when
	 * escaped ("\u001f"); an id in after is at most 20 bytes. */
	size_t	n = strlen(spec->argv_json) + 6 * (strlen(spec->name) +
	    strlen(spec->queue)) + 21 * spec->nafter;

	if (spec->env_json != NULL)
		n += strlen(spec->env_json);
	if (spec->cwd != NULL)
		n += 6 * strlen(spec->cwd);
	if (spec->unique != NULL)
		n += 6 * strlen(spec->unique);
	if (n > PROTO_TASK_TEXT_MAX) {
		xasprintf(cause, "argv, env, cwd, name, queue, unique and "
		    "after: %zu bytes together, at most %d (a task must fit "
		    "in one answer line)", n, PROTO_TASK_TEXT_MAX);
		return (-1);
	}
	return (0);
}

int
proto_parse_submit(json_t *req, struct task_spec *spec, char **cause)
{
	const char	*s;
	int64_t		 v;
	int		 rc;

	memset(spec, 0, sizeof *spec);
	spec->delay_ms = spec->run_at = UNSET;
	spec->max_attempts = config.default_retries + 1;
	spec->timeout_ms = config.default_timeout_ms;
	spec->backoff_base_ms = DEFAULT_BACKOFF_BASE_MS;
	spec->backoff_max_ms = DEFAULT_BACKOFF_MAX_MS;

	if (parse_label(req, "name", &spec->name, cause) == -1 ||
	    parse_argv(req, spec, cause) == -1 ||
	    parse_env(req, spec, cause) == -1 ||
	    parse_rlimits(req, spec, cause) == -1)
		return (-1);
	if ((rc = parse_label(req, "queue", &spec->queue, cause)) == -1)
		return (-1);
	/* pause and resume take "*" for all queues: one so named could
	 * not be paused alone. */
	if (rc == 1 && strcmp(spec->queue, "*") == 0) {
		xasprintf(cause, "queue: \"*\" stands for all queues, not a "
		    "queue name");
		return (-1);
	}
	if (rc == 0)
		spec->queue = xstrdup("default");
	if (parse_label(req, "unique", &spec->unique, cause) == -1)
		return (-1);

	v = 0;
	if (proto_get_int(req, "priority", -1000, 1000, &v, cause) == -1)
		return (-1);
	spec->priority = (int)v;
	v = spec->max_attempts;
	if (proto_get_int(req, "max_attempts", 1, MAX_ATTEMPTS_LIMIT, &v,
	    cause) == -1)
		return (-1);
	spec->max_attempts = (int)v;
	if (proto_get_int(req, "timeout_ms", 0, FORKQ_MAX_DURATION_MS,
	    &spec->timeout_ms, cause) == -1 ||
	    proto_get_int(req, "heartbeat_timeout_ms", 0, FORKQ_MAX_DURATION_MS,
	    &spec->heartbeat_timeout_ms, cause) == -1 ||
	    proto_get_int(req, "backoff_base_ms", 0, FORKQ_MAX_DURATION_MS,
	    &spec->backoff_base_ms, cause) == -1 ||
	    proto_get_int(req, "backoff_max_ms", 0, FORKQ_MAX_DURATION_MS,
	    &spec->backoff_max_ms, cause) == -1 ||
	    proto_get_int(req, "delay_ms", 0, FORKQ_MAX_DURATION_MS,
	    &spec->delay_ms, cause) == -1)
		return (-1);
	/* What the client did not give yields to what it gave. */
	if (spec->backoff_max_ms < spec->backoff_base_ms &&
	    !field_given(req, "backoff_max_ms"))
		spec->backoff_max_ms = spec->backoff_base_ms;
	if (spec->backoff_max_ms < spec->backoff_base_ms &&
	    !field_given(req, "backoff_base_ms"))
		spec->backoff_base_ms = spec->backoff_max_ms;
	if (spec->backoff_max_ms < spec->backoff_base_ms) {
		xasprintf(cause, "backoff_max_ms: must not be below "
		    "backoff_base_ms");
		return (-1);
	}

	switch (proto_get_string(req, "run_at", &s, cause)) {
	case -1:
		free(*cause);
		*cause = NULL;
		if (!json_is_integer(json_object_get(req, "run_at"))) {
			xasprintf(cause, "run_at: must be an RFC 3339 time "
			    "(a string) or unix seconds (an integer)");
			return (-1);
		}
		/* Up to the year 9999, as far as RFC 3339 can write. */
		if (proto_get_int(req, "run_at", 0, TIME_MAX_MS / 1000, &v,
		    cause) == -1)
			return (-1);
		spec->run_at = v * 1000;
		break;
	case 1: {
		const char	*err;

		if (parse_time_ms(s, &spec->run_at, &err) == -1) {
			xasprintf(cause, "run_at: %s: %s", s, err);
			return (-1);
		}
		break;
	}
	}
	if (spec->run_at != UNSET && spec->delay_ms != UNSET) {
		xasprintf(cause, "run_at: give delay_ms or run_at, not both");
		return (-1);
	}

	if (parse_after(req, spec, cause) == -1 ||
	    proto_get_int(req, "debounce_ms", 0, FORKQ_MAX_DURATION_MS,
	    &spec->debounce_ms, cause) == -1)
		return (-1);
	if (spec->debounce_ms > 0 && spec->unique == NULL) {
		xasprintf(cause, "debounce_ms: needs unique (the key whose "
		    "bursts run once)");
		return (-1);
	}

	if (proto_get_string(req, "cwd", &s, cause) == 1) {
		if (*s != '/') {
			xasprintf(cause, "cwd: must be an absolute path");
			return (-1);
		}
		spec->cwd = xstrdup(s);
	} else if (*cause != NULL)
		return (-1);
	return (check_task_size(spec, cause));
}

json_t *
proto_time(int64_t ms)
{
	char	buf[RFC3339_LEN];

	if (ms == UNSET)
		return (json_null());
	format_rfc3339_ms(ms, buf, sizeof buf);
	return (json_string_nocheck(buf));	/* digits and punctuation */
}

static json_t *
int_or_null(int64_t v)
{
	return (v == UNSET ? json_null() : json_integer(v));
}

static json_t *
str_or_null(const char *s)
{
	return (s == NULL ? json_null() : json_string(s));
}

/* As str_or_null, for forkqd's own names (literals, ASCII). */
static json_t *
name_or_null(const char *s)
{
	return (s == NULL ? json_null() : json_string_nocheck(s));
}

static json_t *
signal_or_null(int sig)
{
	return (sig == 0 ? json_null() : name_or_null(signal_name(sig)));
}

static json_t *
parse_or_null(const char *text)
{
	json_t	*v;

	if (text == NULL || (v = json_loads(text, 0, NULL)) == NULL)
		return (json_null());
	return (v);
}

/*
 * The task object of spec 7. Its keys are literals, ASCII: the _nocheck
 * setters spare jansson a UTF-8 check of each (a submit's answer and
 * each get or list entry set 31).
 */
json_t *
proto_task_json(const struct task_rec *t)
{
	json_t	*o = json_object();

	json_object_set_new_nocheck(o, "id", json_integer(t->id));
	json_object_set_new_nocheck(o, "name", json_string(t->name));
	json_object_set_new_nocheck(o, "queue", json_string(t->queue));
	json_object_set_new_nocheck(o, "argv", parse_or_null(t->argv_json));
	json_object_set_new_nocheck(o, "state",
	    name_or_null(task_state_name(t->state)));
	json_object_set_new_nocheck(o, "priority", json_integer(t->priority));
	json_object_set_new_nocheck(o, "attempt", json_integer(t->attempt));
	json_object_set_new_nocheck(o, "max_attempts",
	    json_integer(t->max_attempts));
	json_object_set_new_nocheck(o, "created_at",
	    proto_time(t->created_at));
	json_object_set_new_nocheck(o, "run_at", proto_time(t->run_at));
	json_object_set_new_nocheck(o, "started_at",
	    proto_time(t->started_at));
	json_object_set_new_nocheck(o, "finished_at",
	    proto_time(t->finished_at));
	json_object_set_new_nocheck(o, "outcome",
	    name_or_null(outcome_name(t->outcome)));
	json_object_set_new_nocheck(o, "exit_code", int_or_null(t->exit_code));
	json_object_set_new_nocheck(o, "signal", signal_or_null(t->signal));
	json_object_set_new_nocheck(o, "error", str_or_null(t->error));
	json_object_set_new_nocheck(o, "progress", int_or_null(t->progress));
	json_object_set_new_nocheck(o, "progress_message",
	    str_or_null(t->progress_message));
	json_object_set_new_nocheck(o, "pid", int_or_null(t->pid));
	json_object_set_new_nocheck(o, "last_heartbeat_at",
	    proto_time(t->last_heartbeat_at));
	json_object_set_new_nocheck(o, "timeout_ms",
	    json_integer(t->timeout_ms));
	json_object_set_new_nocheck(o, "heartbeat_timeout_ms",
	    json_integer(t->heartbeat_timeout_ms));
	json_object_set_new_nocheck(o, "unique", str_or_null(t->unique));
	json_object_set_new_nocheck(o, "uid", json_integer(t->uid));
	/* Additions beyond spec 7, documented in doc/protocol.md. */
	json_object_set_new_nocheck(o, "backoff_base_ms",
	    json_integer(t->backoff_base_ms));
	json_object_set_new_nocheck(o, "backoff_max_ms",
	    json_integer(t->backoff_max_ms));
	json_object_set_new_nocheck(o, "cwd", str_or_null(t->cwd));
	json_object_set_new_nocheck(o, "env", parse_or_null(t->env_json));
	json_object_set_new_nocheck(o, "rlimits",
	    parse_or_null(t->rlimits_json));
	json_object_set_new_nocheck(o, "after", parse_or_null(t->after_json));
	return (o);
}

/* The attempt object of spec 7. */
json_t *
proto_attempt_json(const struct attempt_rec *a)
{
	return (json_pack("{s:i, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o,"
	    " s:o, s:o, s:o}",
	    "n", a->n,
	    "pid", int_or_null(a->pid),
	    "started_at", proto_time(a->started_at),
	    "finished_at", proto_time(a->finished_at),
	    "duration_ms", int_or_null(a->duration_ms),
	    "outcome", str_or_null(outcome_name(a->outcome)),
	    "exit_code", int_or_null(a->exit_code),
	    "signal", signal_or_null(a->signal),
	    "error", str_or_null(a->error),
	    "max_rss_kb", int_or_null(a->max_rss_kb),
	    "user_cpu_ms", int_or_null(a->user_cpu_ms),
	    "sys_cpu_ms", int_or_null(a->sys_cpu_ms)));
}

json_t *
proto_rlimits_json(const int64_t rlimits[RLIM_COUNT])
{
	json_t	*o = json_object();
	int	 i;

	for (i = 0; i < RLIM_COUNT; i++) {
		if (rlimits[i] != UNSET)
			json_object_set_new(o, rlimit_names[i].name,
			    json_integer(rlimits[i]));
	}
	return (o);
}
