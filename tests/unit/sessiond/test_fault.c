/* tests/unit/sessiond/test_fault.c: sessiond/fault.c (fault builds only):
 * the fault chosen from the basename of argv[0], the version it shows, and
 * what each kind does at its hooks (drop and dup 1 in 50, a malformed line
 * every 100th line to a network only, PINGs not answered, memory leaked). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "baton_version.h"
#include "sessiond/fault.h"
#include "sessiond/health.h"

static void test_kind_from_argv0(void **state)
{
	static const struct {
		const char *argv0;
		int kind;
	} cases[] = {
		{ "baton-sessiond-fault-drop", FAULT_DROP },
		{ "/x/y/baton-sessiond-fault-dup", FAULT_DUP },
		{ "./baton-sessiond-fault-latency", FAULT_LATENCY },
		{ "baton-sessiond-fault-leak", FAULT_LEAK },
		{ "baton-sessiond-fault-crash", FAULT_CRASH },
		{ "baton-sessiond-fault-malformed", FAULT_MALFORMED },
		{ "baton-sessiond-fault-noping", FAULT_NOPING },
		{ "baton-sessiond-fault-poison", FAULT_POISON },
		{ "baton-sessiond-fault-wedge", FAULT_WEDGE },
		{ "baton-sessiond-fault-tlsgap", FAULT_TLSGAP },
		{ "baton-sessiond", FAULT_NONE },
		{ "/usr/lib/baton/baton-sessiond-faulty", FAULT_NONE },
		{ "/tmp/baton-sessiond-fault-drop/baton-sessiond", FAULT_NONE },
		{ "", FAULT_NONE },
		{ NULL, FAULT_NONE },
		{ "baton-sessiond-fault-", -1 },
		{ "baton-sessiond-fault-Drop", -1 },
		{ "baton-sessiond-fault-drop2", -1 },
		{ "baton-sessiond-fault-none", -1 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int k = fault_kind_from_argv0(cases[i].argv0);
		if (k != cases[i].kind)
			fail_msg("%s: kind %d, want %d", cases[i].argv0 ? cases[i].argv0 : "(null)",
				 k, cases[i].kind);
	}
	assert_string_equal(fault_kind_name(FAULT_MALFORMED), "malformed");
}

static void test_select_and_version(void **state)
{
	assert_int_equal(fault_select("/bin/baton-sessiond-fault-nope"), -1);
	assert_int_equal(fault_select("/bin/baton-sessiond-faulty"), 0);
	assert_int_equal(fault_current(), FAULT_NONE);
	assert_string_equal(fault_version(), BATON_VERSION "+fault-none");
	assert_int_equal(fault_select("/bin/baton-sessiond-fault-noping"), 0);
	assert_int_equal(fault_current(), FAULT_NOPING);
	assert_string_equal(fault_version(), BATON_VERSION "+fault-noping");
	assert_string_equal(SESSIOND_VERSION, BATON_VERSION "+fault-noping");
	assert_true(FAULT_NOPING());
	assert_int_equal(FAULT_RELAY_COPIES(), 1);
	/* a name that names no fault: the environment may (custody's
	 * restarted workers run a copy named baton-sessiond) */
	setenv("BATON_FAULT_KIND", "poison", 1);
	assert_int_equal(fault_select("/x/baton-sessiond"), 0);
	assert_int_equal(fault_current(), FAULT_POISON);
	setenv("BATON_FAULT_KIND", "bogus", 1);
	assert_int_equal(fault_select("/x/baton-sessiond"), -1);
	unsetenv("BATON_FAULT_KIND");
	assert_int_equal(fault_select("/x/baton-sessiond"), 0);
	assert_int_equal(fault_current(), FAULT_NONE);
}

static void test_relay_faults(void **state)
{
	unsigned zeros = 0, twos = 0;

	assert_int_equal(fault_select("baton-sessiond-fault-drop"), 0);
	assert_false(FAULT_NOPING());
	for (int i = 1; i <= 500; i++) {
		unsigned c = FAULT_RELAY_COPIES();
		if (c == 0) {
			assert_int_equal(i % 50, 0);
			zeros++;
		}
	}
	assert_int_equal(zeros, 10);

	assert_int_equal(fault_select("baton-sessiond-fault-dup"), 0);
	for (int i = 1; i <= 500; i++)
		if (FAULT_RELAY_COPIES() == 2)
			twos++;
	assert_int_equal(twos, 10);
}

static void test_malformed(void **state)
{
	struct health h;

	health_init(&h);
	struct health_link net = { .h = &h, .peer = HEALTH_PEER_NETWORK };
	unsigned bad = 0;

	assert_int_equal(fault_select("baton-sessiond-fault-malformed"), 0);
	for (int i = 1; i <= 300; i++) {
		assert_null(FAULT_NETWORK_WRITE(&h.client_link)); /* clients: never */
		assert_null(FAULT_NETWORK_WRITE(NULL));
		const char *l = FAULT_NETWORK_WRITE(&net);
		if (l) {
			assert_int_equal(i % FAULT_MALFORMED_EVERY, 0);
			/* what the validator must catch */
			assert_non_null(health_line_check(l, strlen(l), HEALTH_PEER_NETWORK));
			bad++;
		}
	}
	assert_int_equal(bad, 300 / FAULT_MALFORMED_EVERY);
	assert_int_equal(fault_select("baton-sessiond-fault-drop"), 0);
	for (int i = 0; i < 300; i++)
		assert_null(FAULT_NETWORK_WRITE(&net));
}

static void test_leak(void **state)
{
	/* Only that it runs and leaks per line (RSS growth is the
	 * integration's to see). */
	assert_int_equal(fault_select("baton-sessiond-fault-leak"), 0);
	for (int i = 0; i < 10; i++)
		FAULT_UPSTREAM_LINE();
	assert_int_equal(FAULT_RELAY_COPIES(), 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_kind_from_argv0),
		cmocka_unit_test(test_select_and_version),
		cmocka_unit_test(test_relay_faults),
		cmocka_unit_test(test_malformed),
		cmocka_unit_test(test_leak),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
