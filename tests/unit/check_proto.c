/*
 * check_proto.c: unit tests of proto.c: validating submit requests into a
 * task_spec (defaults, every refusal naming its field) and encoding task,
 * attempt and error objects (spec 7).
 */
#include "config.h"

#include <check.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "forkqd.h"
#include "check_run.h"

/* 2026-11-22T09:30:00Z in ms since the epoch. */
#define T_2026_11_22_0930	1795339800000LL

static void
proto_setup(void)
{
	config.default_retries = 2;
	config.default_timeout_ms = 0;
}

/*
 * Runs proto_parse_submit on the JSON text req. spec is always filled (the
 * caller clears it); *cause is NULL unless refused.
 */
static int
parse(const char *text, struct task_spec *spec, char **cause)
{
	json_error_t	 jerr;
	json_t		*req;
	int		 rc;

	req = json_loads(text, 0, &jerr);
	ck_assert_msg(req != NULL, "bad test JSON %s: %s", text, jerr.text);
	*cause = NULL;
	rc = proto_parse_submit(req, spec, cause);
	json_decref(req);
	return (rc);
}

/* Asserts that req is refused with a cause that starts with field. */
static void
assert_refused(const char *req, const char *field)
{
	struct task_spec	 spec;
	char			*cause = NULL;
	int			 rc;

	rc = parse(req, &spec, &cause);
	task_spec_clear(&spec);
	ck_assert_msg(rc == -1, "%s: accepted", req);
	ck_assert_msg(cause != NULL, "%s: refused without a cause", req);
	ck_assert_msg(strncmp(cause, field, strlen(field)) == 0,
	    "%s: cause \"%s\" does not name %s", req, cause, field);
	free(cause);
}

/* Parses req, which must be accepted, into spec. */
static void
parse_ok(const char *req, struct task_spec *spec)
{
	char	*cause = NULL;
	int	 rc;

	rc = parse(req, spec, &cause);
	ck_assert_msg(rc == 0, "%s: refused: %s", req,
	    cause != NULL ? cause : "(no cause)");
	ck_assert_ptr_null(cause);
}

START_TEST(test_submit_minimal_defaults)
{
	struct task_spec	spec;
	int			i;

	parse_ok("{\"argv\":[\"echo\",\"hi\"]}", &spec);
	ck_assert_str_eq(spec.name, "echo");
	ck_assert_str_eq(spec.queue, "default");
	ck_assert_str_eq(spec.argv_json, "[\"echo\",\"hi\"]");
	ck_assert_ptr_null(spec.env_json);
	ck_assert_ptr_null(spec.cwd);
	ck_assert_ptr_null(spec.unique);
	ck_assert_int_eq(spec.priority, 0);
	ck_assert_int_eq(spec.max_attempts, 3);
	ck_assert_int_eq(spec.timeout_ms, 0);
	ck_assert_int_eq(spec.heartbeat_timeout_ms, 0);
	ck_assert_int_eq(spec.backoff_base_ms, 1000);
	ck_assert_int_eq(spec.backoff_max_ms, 300000);
	ck_assert_int_eq(spec.delay_ms, UNSET);
	ck_assert_int_eq(spec.run_at, UNSET);
	for (i = 0; i < RLIM_COUNT; i++)
		ck_assert_int_eq(spec.rlimits[i], UNSET);
	task_spec_clear(&spec);
}
END_TEST

START_TEST(test_submit_default_timeout_from_config)
{
	struct task_spec	spec;

	config.default_timeout_ms = 60000;
	config.default_retries = 0;
	parse_ok("{\"argv\":[\"echo\"]}", &spec);
	ck_assert_int_eq(spec.timeout_ms, 60000);
	ck_assert_int_eq(spec.max_attempts, 1);
	task_spec_clear(&spec);
}
END_TEST

START_TEST(test_submit_name_is_argv0_basename)
{
	struct task_spec	spec;

	parse_ok("{\"argv\":[\"/bin/true\"]}", &spec);
	ck_assert_str_eq(spec.name, "true");
	task_spec_clear(&spec);
}
END_TEST

START_TEST(test_submit_explicit_fields)
{
	struct task_spec	spec;

	parse_ok("{\"argv\":[\"sleep\",\"1\"], \"name\":\"nap\","
	    " \"queue\":\"slow\", \"unique\":\"k1\", \"priority\":-1000,"
	    " \"max_attempts\":7, \"timeout_ms\":5000,"
	    " \"heartbeat_timeout_ms\":2000, \"backoff_base_ms\":10,"
	    " \"backoff_max_ms\":20, \"delay_ms\":1500, \"cwd\":\"/tmp\","
	    " \"env\":{\"A\":\"1\"}}", &spec);
	ck_assert_str_eq(spec.name, "nap");
	ck_assert_str_eq(spec.queue, "slow");
	ck_assert_str_eq(spec.unique, "k1");
	ck_assert_int_eq(spec.priority, -1000);
	ck_assert_int_eq(spec.max_attempts, 7);
	ck_assert_int_eq(spec.timeout_ms, 5000);
	ck_assert_int_eq(spec.heartbeat_timeout_ms, 2000);
	ck_assert_int_eq(spec.backoff_base_ms, 10);
	ck_assert_int_eq(spec.backoff_max_ms, 20);
	ck_assert_int_eq(spec.delay_ms, 1500);
	ck_assert_int_eq(spec.run_at, UNSET);
	ck_assert_str_eq(spec.cwd, "/tmp");
	ck_assert_str_eq(spec.env_json, "{\"A\":\"1\"}");
	task_spec_clear(&spec);
}
END_TEST

START_TEST(test_submit_priority_bounds_accepted)
{
	struct task_spec	spec;

	parse_ok("{\"argv\":[\"x\"], \"priority\":1000}", &spec);
	ck_assert_int_eq(spec.priority, 1000);
	task_spec_clear(&spec);
}
END_TEST

START_TEST(test_submit_run_at_rfc3339)
{
	struct task_spec	spec;

	parse_ok("{\"argv\":[\"x\"], \"run_at\":\"2026-11-22T09:30:00Z\"}",
	    &spec);
	ck_assert_int_eq(spec.run_at, T_2026_11_22_0930);
	ck_assert_int_eq(spec.delay_ms, UNSET);
	task_spec_clear(&spec);
}
END_TEST

START_TEST(test_submit_run_at_unix_seconds)
{
	struct task_spec	spec;

	parse_ok("{\"argv\":[\"x\"], \"run_at\":1700000000}", &spec);
	ck_assert_int_eq(spec.run_at, 1700000000000LL);
	task_spec_clear(&spec);
}
END_TEST

START_TEST(test_submit_rlimits_in_order)
{
	struct task_spec	spec;

	ck_assert_str_eq(rlimit_names[0].name, "cpu");
	ck_assert_str_eq(rlimit_names[1].name, "as");
	ck_assert_str_eq(rlimit_names[2].name, "fsize");
	ck_assert_str_eq(rlimit_names[3].name, "core");
	ck_assert_str_eq(rlimit_names[4].name, "nofile");
	ck_assert_str_eq(rlimit_names[5].name, "nproc");
	parse_ok("{\"argv\":[\"x\"], \"rlimits\":{\"nproc\":6, \"nofile\":5,"
	    " \"core\":0, \"fsize\":3, \"as\":2, \"cpu\":1}}", &spec);
	ck_assert_int_eq(spec.rlimits[0], 1);
	ck_assert_int_eq(spec.rlimits[1], 2);
	ck_assert_int_eq(spec.rlimits[2], 3);
	ck_assert_int_eq(spec.rlimits[3], 0);
	ck_assert_int_eq(spec.rlimits[4], 5);
	ck_assert_int_eq(spec.rlimits[5], 6);
	task_spec_clear(&spec);
}
END_TEST

START_TEST(test_submit_rlimits_partial_leaves_rest_unset)
{
	struct task_spec	spec;

	parse_ok("{\"argv\":[\"x\"], \"rlimits\":{\"nofile\":64}}", &spec);
	ck_assert_int_eq(spec.rlimits[0], UNSET);
	ck_assert_int_eq(spec.rlimits[4], 64);
	ck_assert_int_eq(spec.rlimits[5], UNSET);
	task_spec_clear(&spec);
	/* null is absent, as for every field (it was refused). */
	parse_ok("{\"argv\":[\"x\"], \"rlimits\":{\"cpu\":null,"
	    " \"nofile\":64}}", &spec);
	ck_assert_int_eq(spec.rlimits[0], UNSET);
	ck_assert_int_eq(spec.rlimits[4], 64);
	task_spec_clear(&spec);
}
END_TEST

START_TEST(test_refuse_argv_missing)
{
	assert_refused("{}", "argv");
}
END_TEST

START_TEST(test_refuse_argv_empty)
{
	assert_refused("{\"argv\":[]}", "argv");
}
END_TEST

START_TEST(test_refuse_argv_not_strings)
{
	assert_refused("{\"argv\":[1]}", "argv");
	assert_refused("{\"argv\":[\"echo\", null]}", "argv[1]");
}
END_TEST

START_TEST(test_refuse_argv_string)
{
	assert_refused("{\"argv\":\"str\"}", "argv");
}
END_TEST

START_TEST(test_refuse_argv0_empty)
{
	assert_refused("{\"argv\":[\"\"]}", "argv[0]");
}
END_TEST

START_TEST(test_refuse_priority_too_high)
{
	assert_refused("{\"argv\":[\"x\"], \"priority\":1001}", "priority");
}
END_TEST

START_TEST(test_refuse_priority_too_low)
{
	assert_refused("{\"argv\":[\"x\"], \"priority\":-1001}", "priority");
}
END_TEST

START_TEST(test_refuse_priority_string)
{
	assert_refused("{\"argv\":[\"x\"], \"priority\":\"x\"}", "priority");
}
END_TEST

START_TEST(test_refuse_timeout_negative)
{
	assert_refused("{\"argv\":[\"x\"], \"timeout_ms\":-1}", "timeout_ms");
}
END_TEST

START_TEST(test_refuse_heartbeat_timeout_fraction)
{
	assert_refused("{\"argv\":[\"x\"], \"heartbeat_timeout_ms\":1.5}",
	    "heartbeat_timeout_ms");
}
END_TEST

START_TEST(test_refuse_max_attempts_zero)
{
	assert_refused("{\"argv\":[\"x\"], \"max_attempts\":0}",
	    "max_attempts");
}
END_TEST

START_TEST(test_refuse_env_value_not_string)
{
	assert_refused("{\"argv\":[\"x\"], \"env\":{\"A\":1}}", "env");
}
END_TEST

START_TEST(test_refuse_env_array)
{
	assert_refused("{\"argv\":[\"x\"], \"env\":[]}", "env");
}
END_TEST

START_TEST(test_refuse_env_name_with_equals)
{
	assert_refused("{\"argv\":[\"x\"], \"env\":{\"A=B\":\"1\"}}", "env");
}
END_TEST

START_TEST(test_refuse_rlimits_unknown)
{
	assert_refused("{\"argv\":[\"x\"], \"rlimits\":{\"bogus\":1}}",
	    "rlimits.bogus");
}
END_TEST

START_TEST(test_refuse_rlimits_negative)
{
	assert_refused("{\"argv\":[\"x\"], \"rlimits\":{\"cpu\":-1}}",
	    "rlimits.cpu");
}
END_TEST

START_TEST(test_refuse_cwd_relative)
{
	assert_refused("{\"argv\":[\"x\"], \"cwd\":\"tmp\"}", "cwd");
}
END_TEST

START_TEST(test_refuse_cwd_not_string)
{
	assert_refused("{\"argv\":[\"x\"], \"cwd\":1}", "cwd");
}
END_TEST

START_TEST(test_refuse_delay_and_run_at)
{
	struct task_spec	 spec;
	char			*cause = NULL;

	ck_assert_int_eq(parse("{\"argv\":[\"x\"], \"delay_ms\":1000,"
	    " \"run_at\":1700000000}", &spec, &cause), -1);
	task_spec_clear(&spec);
	ck_assert_ptr_nonnull(cause);
	ck_assert_ptr_nonnull(strstr(cause, "run_at"));
	ck_assert_ptr_nonnull(strstr(cause, "delay_ms"));
	free(cause);
}
END_TEST

START_TEST(test_refuse_run_at_bad_time)
{
	assert_refused("{\"argv\":[\"x\"], \"run_at\":\"yesterday\"}",
	    "run_at");
}
END_TEST

START_TEST(test_refuse_run_at_fraction)
{
	assert_refused("{\"argv\":[\"x\"], \"run_at\":1.5}", "run_at");
}
END_TEST

START_TEST(test_refuse_name_empty)
{
	assert_refused("{\"argv\":[\"x\"], \"name\":\"\"}", "name");
}
END_TEST

START_TEST(test_refuse_backoff_max_below_base)
{
	assert_refused("{\"argv\":[\"x\"], \"backoff_base_ms\":5000,"
	    " \"backoff_max_ms\":10}", "backoff_max_ms");
}
END_TEST

/*
 * One bound given alone moves the default of the other past it, either
 * way (a max alone below the default base was refused).
 */
START_TEST(test_backoff_bound_alone_moves_the_default)
{
	struct task_spec	spec;

	parse_ok("{\"argv\":[\"x\"], \"backoff_max_ms\":500}", &spec);
	ck_assert_int_eq(spec.backoff_base_ms, 500);
	ck_assert_int_eq(spec.backoff_max_ms, 500);
	task_spec_clear(&spec);
	parse_ok("{\"argv\":[\"x\"], \"backoff_base_ms\":600000}", &spec);
	ck_assert_int_eq(spec.backoff_base_ms, 600000);
	ck_assert_int_eq(spec.backoff_max_ms, 600000);
	task_spec_clear(&spec);
}
END_TEST

/* A task_rec with every field set; free with task_rec_free. */
static struct task_rec *
make_task(void)
{
	struct task_rec	*t;

	t = xcalloc(1, sizeof *t);
	t->id = 42;
	t->name = xstrdup("nap");
	t->queue = xstrdup("slow");
	t->argv_json = xstrdup("[\"sleep\",\"5\"]");
	t->env_json = xstrdup("{\"A\":\"1\"}");
	t->cwd = xstrdup("/tmp");
	t->unique = xstrdup("key-1");
	t->rlimits_json = xstrdup("{\"nofile\":64}");
	t->state = TASK_FAILED;
	t->priority = 7;
	t->attempt = 2;
	t->max_attempts = 3;
	t->attempts_per_run = 3;
	t->created_at = T_2026_11_22_0930;
	t->run_at = T_2026_11_22_0930 + 1000;
	t->started_at = T_2026_11_22_0930 + 2000;
	t->finished_at = T_2026_11_22_0930 + 3123;
	t->outcome = OUTCOME_SIGNAL;
	t->exit_code = 137;
	t->signal = SIGKILL;
	t->error = xstrdup("killed");
	t->progress = 50;
	t->progress_message = xstrdup("half");
	t->pid = 4321;
	t->last_heartbeat_at = T_2026_11_22_0930 + 2500;
	t->timeout_ms = 60000;
	t->heartbeat_timeout_ms = 5000;
	t->backoff_base_ms = 1000;
	t->backoff_max_ms = 300000;
	t->uid = 1000;
	t->gid = 1000;
	return (t);
}

/* The task of make_task with every nullable field unset. */
static struct task_rec *
make_task_unset(void)
{
	struct task_rec	*t = make_task();

	free(t->unique);
	free(t->error);
	free(t->progress_message);
	t->unique = t->error = t->progress_message = NULL;
	t->state = TASK_QUEUED;
	t->started_at = t->finished_at = t->last_heartbeat_at = UNSET;
	t->outcome = OUTCOME_NONE;
	t->exit_code = t->progress = t->pid = UNSET;
	t->signal = 0;
	return (t);
}

static void
assert_str_field(json_t *o, const char *key, const char *want)
{
	json_t	*v = json_object_get(o, key);

	ck_assert_msg(json_is_string(v), "%s: not a string", key);
	ck_assert_str_eq(json_string_value(v), want);
}

static void
assert_int_field(json_t *o, const char *key, json_int_t want)
{
	json_t	*v = json_object_get(o, key);

	ck_assert_msg(json_is_integer(v), "%s: not an integer", key);
	ck_assert_int_eq(json_integer_value(v), want);
}

static void
assert_null_field(json_t *o, const char *key)
{
	ck_assert_msg(json_is_null(json_object_get(o, key)),
	    "%s: present and null expected", key);
}

START_TEST(test_task_json_has_every_spec_field)
{
	static const char *const keys[] = {
		"id", "name", "queue", "argv", "state", "priority", "attempt",
		"max_attempts", "created_at", "run_at", "started_at",
		"finished_at", "outcome", "exit_code", "signal", "error",
		"progress", "progress_message", "pid", "last_heartbeat_at",
		"timeout_ms", "heartbeat_timeout_ms", "unique", "uid",
	};
	struct task_rec	*t = make_task_unset();
	json_t		*o;
	size_t		 i;

	o = proto_task_json(t);
	ck_assert_ptr_nonnull(o);
	for (i = 0; i < sizeof keys / sizeof keys[0]; i++)
		ck_assert_msg(json_object_get(o, keys[i]) != NULL,
		    "task object lacks %s", keys[i]);
	json_decref(o);
	task_rec_free(t);
}
END_TEST

START_TEST(test_task_json_values)
{
	struct task_rec	*t = make_task();
	json_t		*o, *argv;

	o = proto_task_json(t);
	assert_int_field(o, "id", 42);
	assert_str_field(o, "name", "nap");
	assert_str_field(o, "queue", "slow");
	argv = json_object_get(o, "argv");
	ck_assert(json_is_array(argv));
	ck_assert_uint_eq(json_array_size(argv), 2);
	ck_assert_str_eq(json_string_value(json_array_get(argv, 0)), "sleep");
	ck_assert_str_eq(json_string_value(json_array_get(argv, 1)), "5");
	assert_str_field(o, "state", "failed");
	assert_int_field(o, "priority", 7);
	assert_int_field(o, "attempt", 2);
	assert_int_field(o, "max_attempts", 3);
	assert_str_field(o, "outcome", "signal");
	assert_int_field(o, "exit_code", 137);
	assert_str_field(o, "error", "killed");
	assert_int_field(o, "progress", 50);
	assert_str_field(o, "progress_message", "half");
	assert_int_field(o, "pid", 4321);
	assert_int_field(o, "timeout_ms", 60000);
	assert_int_field(o, "heartbeat_timeout_ms", 5000);
	assert_str_field(o, "unique", "key-1");
	assert_int_field(o, "uid", 1000);
	json_decref(o);
	task_rec_free(t);
}
END_TEST

START_TEST(test_task_json_signal_by_name)
{
	struct task_rec	*t = make_task();
	json_t		*o;

	o = proto_task_json(t);
	assert_str_field(o, "signal", "SIGKILL");
	json_decref(o);
	task_rec_free(t);
}
END_TEST

START_TEST(test_task_json_times_rfc3339)
{
	struct task_rec	*t = make_task();
	json_t		*o;

	o = proto_task_json(t);
	assert_str_field(o, "created_at", "2026-11-22T09:30:00.000Z");
	assert_str_field(o, "run_at", "2026-11-22T09:30:01.000Z");
	assert_str_field(o, "started_at", "2026-11-22T09:30:02.000Z");
	assert_str_field(o, "finished_at", "2026-11-22T09:30:03.123Z");
	assert_str_field(o, "last_heartbeat_at", "2026-11-22T09:30:02.500Z");
	json_decref(o);
	task_rec_free(t);
}
END_TEST

START_TEST(test_task_json_unset_fields_null)
{
	struct task_rec	*t = make_task_unset();
	json_t		*o;

	o = proto_task_json(t);
	assert_str_field(o, "state", "queued");
	assert_null_field(o, "started_at");
	assert_null_field(o, "finished_at");
	assert_null_field(o, "last_heartbeat_at");
	assert_null_field(o, "outcome");
	assert_null_field(o, "exit_code");
	assert_null_field(o, "signal");
	assert_null_field(o, "error");
	assert_null_field(o, "progress");
	assert_null_field(o, "progress_message");
	assert_null_field(o, "pid");
	assert_null_field(o, "unique");
	json_decref(o);
	task_rec_free(t);
}
END_TEST

START_TEST(test_task_json_extra_fields)
{
	struct task_rec	*t = make_task();
	json_t		*o, *v;

	o = proto_task_json(t);
	assert_int_field(o, "backoff_base_ms", 1000);
	assert_int_field(o, "backoff_max_ms", 300000);
	assert_str_field(o, "cwd", "/tmp");
	v = json_object_get(o, "env");
	ck_assert(json_is_object(v));
	ck_assert_str_eq(json_string_value(json_object_get(v, "A")), "1");
	v = json_object_get(o, "rlimits");
	ck_assert(json_is_object(v));
	ck_assert_int_eq(json_integer_value(json_object_get(v, "nofile")), 64);
	json_decref(o);
	task_rec_free(t);
}
END_TEST

/* An ended attempt with every field set. */
static void
make_attempt(struct attempt_rec *a)
{
	memset(a, 0, sizeof *a);
	a->task_id = 42;
	a->n = 2;
	a->pid = 4321;
	a->pid_start = 99999;
	a->started_at = T_2026_11_22_0930;
	a->finished_at = T_2026_11_22_0930 + 1500;
	a->duration_ms = 1500;
	a->outcome = OUTCOME_EXIT;
	a->exit_code = 3;
	a->signal = SIGTERM;
	a->error = xstrdup("exited 3");
	a->max_rss_kb = 2048;
	a->user_cpu_ms = 120;
	a->sys_cpu_ms = 30;
}

START_TEST(test_attempt_json_values)
{
	struct attempt_rec	 a;
	json_t			*o;

	make_attempt(&a);
	o = proto_attempt_json(&a);
	ck_assert_ptr_nonnull(o);
	ck_assert_uint_eq(json_object_size(o), 12);
	assert_int_field(o, "n", 2);
	assert_int_field(o, "pid", 4321);
	assert_str_field(o, "started_at", "2026-11-22T09:30:00.000Z");
	assert_str_field(o, "finished_at", "2026-11-22T09:30:01.500Z");
	assert_int_field(o, "duration_ms", 1500);
	assert_str_field(o, "outcome", "exit");
	assert_int_field(o, "exit_code", 3);
	assert_str_field(o, "signal", "SIGTERM");
	assert_str_field(o, "error", "exited 3");
	assert_int_field(o, "max_rss_kb", 2048);
	assert_int_field(o, "user_cpu_ms", 120);
	assert_int_field(o, "sys_cpu_ms", 30);
	json_decref(o);
	free(a.error);
}
END_TEST

START_TEST(test_attempt_json_running_fields_null)
{
	struct attempt_rec	 a;
	json_t			*o;

	make_attempt(&a);
	free(a.error);
	a.error = NULL;
	a.finished_at = a.duration_ms = a.exit_code = UNSET;
	a.max_rss_kb = a.user_cpu_ms = a.sys_cpu_ms = UNSET;
	a.outcome = OUTCOME_NONE;
	a.signal = 0;
	o = proto_attempt_json(&a);
	ck_assert_ptr_nonnull(o);
	assert_int_field(o, "n", 2);
	assert_int_field(o, "pid", 4321);
	assert_str_field(o, "started_at", "2026-11-22T09:30:00.000Z");
	assert_null_field(o, "finished_at");
	assert_null_field(o, "duration_ms");
	assert_null_field(o, "outcome");
	assert_null_field(o, "exit_code");
	assert_null_field(o, "signal");
	assert_null_field(o, "error");
	assert_null_field(o, "max_rss_kb");
	assert_null_field(o, "user_cpu_ms");
	assert_null_field(o, "sys_cpu_ms");
	json_decref(o);
}
END_TEST

START_TEST(test_error_shape)
{
	json_t	*o, *err;

	o = proto_error("bad_request", "argv: %s", "required");
	ck_assert_ptr_nonnull(o);
	ck_assert_uint_eq(json_object_size(o), 2);
	ck_assert(json_is_false(json_object_get(o, "ok")));
	err = json_object_get(o, "error");
	ck_assert(json_is_object(err));
	ck_assert_uint_eq(json_object_size(err), 2);
	assert_str_field(err, "code", "bad_request");
	assert_str_field(err, "message", "argv: required");
	json_decref(o);
}
END_TEST

/*
 * A message that quotes broken UTF-8 (jansson's "near '...'" can end
 * inside a character), or is cut inside one at 511 bytes, still makes an
 * answer, with '?' for the bad bytes.
 */
START_TEST(test_error_message_invalid_utf8)
{
	json_t		*o;
	const char	*msg;
	char		 long_msg[600];
	size_t		 i;

	o = proto_error("bad_request", "malformed JSON: %s",
	    "invalid escape near '\"\\u0\xd0'");
	ck_assert_ptr_nonnull(o);
	msg = json_string_value(json_object_get(json_object_get(o, "error"),
	    "message"));
	ck_assert_str_eq(msg, "malformed JSON: invalid escape near '\"\\u0?'");
	json_decref(o);

	/* "\xc3\xa9" (e acute) from byte 10 on: byte 510 starts one, the
	 * last byte vsnprintf keeps. */
	memset(long_msg, 'a', 10);
	for (i = 10; i + 2 < sizeof long_msg; i += 2) {
		long_msg[i] = '\xc3';
		long_msg[i + 1] = '\xa9';
	}
	long_msg[i] = '\0';
	o = proto_error("bad_request", "%s", long_msg);
	ck_assert_ptr_nonnull(o);
	msg = json_string_value(json_object_get(json_object_get(o, "error"),
	    "message"));
	ck_assert_uint_eq(strlen(msg), 511);
	ck_assert_int_eq(msg[510], '?');
	json_decref(o);
}
END_TEST

START_TEST(test_time_unset_is_null)
{
	json_t	*v;

	v = proto_time(UNSET);
	ck_assert(json_is_null(v));
	json_decref(v);
	v = proto_time(T_2026_11_22_0930 + 123);
	ck_assert_str_eq(json_string_value(v), "2026-11-22T09:30:00.123Z");
	json_decref(v);
}
END_TEST

START_TEST(test_rlimits_json_only_set_limits)
{
	int64_t	 rl[RLIM_COUNT];
	json_t	*o;
	int	 i;

	for (i = 0; i < RLIM_COUNT; i++)
		rl[i] = UNSET;
	rl[0] = 10;
	rl[3] = 0;
	o = proto_rlimits_json(rl);
	ck_assert_uint_eq(json_object_size(o), 2);
	assert_int_field(o, "cpu", 10);
	assert_int_field(o, "core", 0);
	json_decref(o);
}
END_TEST

static Suite *
proto_suite(void)
{
	Suite	*s = suite_create("proto");
	TCase	*tc;

	tc = tcase_create("submit");
	tcase_add_checked_fixture(tc, proto_setup, NULL);
	tcase_add_test(tc, test_submit_minimal_defaults);
	tcase_add_test(tc, test_submit_default_timeout_from_config);
	tcase_add_test(tc, test_submit_name_is_argv0_basename);
	tcase_add_test(tc, test_submit_explicit_fields);
	tcase_add_test(tc, test_submit_priority_bounds_accepted);
	tcase_add_test(tc, test_submit_run_at_rfc3339);
	tcase_add_test(tc, test_submit_run_at_unix_seconds);
	tcase_add_test(tc, test_submit_rlimits_in_order);
	tcase_add_test(tc, test_submit_rlimits_partial_leaves_rest_unset);
	suite_add_tcase(s, tc);

	tc = tcase_create("refuse");
	tcase_add_checked_fixture(tc, proto_setup, NULL);
	tcase_add_test(tc, test_refuse_argv_missing);
	tcase_add_test(tc, test_refuse_argv_empty);
	tcase_add_test(tc, test_refuse_argv_not_strings);
	tcase_add_test(tc, test_refuse_argv_string);
	tcase_add_test(tc, test_refuse_argv0_empty);
	tcase_add_test(tc, test_refuse_priority_too_high);
	tcase_add_test(tc, test_refuse_priority_too_low);
	tcase_add_test(tc, test_refuse_priority_string);
	tcase_add_test(tc, test_refuse_timeout_negative);
	tcase_add_test(tc, test_refuse_heartbeat_timeout_fraction);
	tcase_add_test(tc, test_refuse_max_attempts_zero);
	tcase_add_test(tc, test_refuse_env_value_not_string);
	tcase_add_test(tc, test_refuse_env_array);
	tcase_add_test(tc, test_refuse_env_name_with_equals);
	tcase_add_test(tc, test_refuse_rlimits_unknown);
	tcase_add_test(tc, test_refuse_rlimits_negative);
	tcase_add_test(tc, test_refuse_cwd_relative);
	tcase_add_test(tc, test_refuse_cwd_not_string);
	tcase_add_test(tc, test_refuse_delay_and_run_at);
	tcase_add_test(tc, test_refuse_run_at_bad_time);
	tcase_add_test(tc, test_refuse_run_at_fraction);
	tcase_add_test(tc, test_refuse_name_empty);
	tcase_add_test(tc, test_refuse_backoff_max_below_base);
	tcase_add_test(tc, test_backoff_bound_alone_moves_the_default);
	suite_add_tcase(s, tc);

	tc = tcase_create("encode");
	tcase_add_test(tc, test_task_json_has_every_spec_field);
	tcase_add_test(tc, test_task_json_values);
	tcase_add_test(tc, test_task_json_signal_by_name);
	tcase_add_test(tc, test_task_json_times_rfc3339);
	tcase_add_test(tc, test_task_json_unset_fields_null);
	tcase_add_test(tc, test_task_json_extra_fields);
	tcase_add_test(tc, test_attempt_json_values);
	tcase_add_test(tc, test_attempt_json_running_fields_null);
	tcase_add_test(tc, test_error_shape);
	tcase_add_test(tc, test_error_message_invalid_utf8);
	tcase_add_test(tc, test_time_unset_is_null);
	tcase_add_test(tc, test_rlimits_json_only_set_limits);
	suite_add_tcase(s, tc);

	return (s);
}

int
main(void)
{
	return (check_run(proto_suite()));
}
