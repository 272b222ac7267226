/*
 * check_run.h: what every Check suite binary's main does: run the suite,
 * exit 1 if any test failed (automake's harness reads the status).
 */
#ifndef FORKQ_CHECK_RUN_H
#define FORKQ_CHECK_RUN_H

#include <check.h>

static inline int
check_run(Suite *s)
{
	SRunner	*sr;
	int	 failures;

	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failures = srunner_ntests_failed(sr);
	srunner_free(sr);
	return (failures ? 1 : 0);
}

#endif
