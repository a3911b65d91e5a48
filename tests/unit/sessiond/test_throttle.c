/* tests/unit/sessiond/test_throttle.c: the failed-login throttle alone
 * (sessiond/throttle.c: pure logic, time is the test's): free failures,
 * doubling delays up to the cap, success forgets, expiry, and the bound on
 * the table (eviction of the oldest key), checks in flight, the bound on a
 * key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sessiond/throttle.h"

#define T0 1000000LL /* a monotonic ms value */

static struct throttle *thr(unsigned free_failures, int64_t max_ms, size_t max_entries)
{
	struct throttle_limits lim = { free_failures, max_ms, max_entries };
	struct throttle *t = throttle_new(&lim);

	assert_non_null(t);
	return t;
}

/* Regression (issue 8 #6): wrong passwords were never throttled (2,000 at
 * 423/s from one address). Now the first `free` failures cost nothing, the
 * next ones block the key for 1, 2, 4, ... s up to the cap. */
static void test_free_then_doubling_to_cap(void **state)
{
	struct throttle *t = thr(5, 8000, 100);
	int64_t now = T0;

	for (int i = 0; i < 5; i++) {
		assert_int_equal(throttle_wait(t, "10.0.0.1", now), 0);
		assert_int_equal(throttle_failed(t, "10.0.0.1", now), 0); /* at the limit */
		now += 10;
	}
	/* past it: blocked 1 s, then 2, 4, 8, 8 (the cap) */
	const int64_t want[] = { 1000, 2000, 4000, 8000, 8000 };
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		assert_int_equal(throttle_failed(t, "10.0.0.1", now), want[i]);
		assert_int_equal(throttle_wait(t, "10.0.0.1", now), want[i]);
		assert_int_equal(throttle_wait(t, "10.0.0.1", now + want[i] - 1), 1);
		assert_int_equal(throttle_wait(t, "10.0.0.1", now + want[i]), 0);
		/* another key is not affected */
		assert_int_equal(throttle_wait(t, "10.0.0.2", now), 0);
		now += want[i];
	}
	throttle_free(t);
}

/* A success forgets the key's failures; free_failures 0 blocks from the
 * first failure. */
static void test_forget_and_zero_free(void **state)
{
	struct throttle *t = thr(0, 300000, 100);

	assert_int_equal(throttle_failed(t, "alice", T0), 1000);
	assert_int_equal(throttle_failed(t, "alice", T0 + 1000), 2000);
	throttle_forget(t, "alice");
	assert_int_equal(throttle_wait(t, "alice", T0 + 1000), 0);
	assert_int_equal(throttle_failed(t, "alice", T0 + 1000), 1000);
	throttle_forget(t, "nobody"); /* unknown: nothing */
	throttle_free(t);
}

/* An attempt charged before its outcome was known and then refunded leaves
 * the key as it was: within the free failures, no block. */
static void test_refund(void **state)
{
	struct throttle *t = thr(1, 300000, 100);

	assert_int_equal(throttle_failed(t, "a", T0), 0);
	assert_int_equal(throttle_failed(t, "a", T0), 1000); /* charged */
	throttle_refund(t, "a");                             /* it was right */
	assert_int_equal(throttle_wait(t, "a", T0), 0);
	assert_int_equal(throttle_failed(t, "a", T0), 1000); /* the 2nd failure again */
	throttle_refund(t, "nobody");
	throttle_free(t);
}

/* On probation: a key at (or past) its free failures, whose next failure
 * blocks it; unknown keys and keys below the limit are not. */
static void test_probation(void **state)
{
	struct throttle *t = thr(2, 300000, 100);

	assert_false(throttle_probation(t, "a", T0));
	assert_int_equal(throttle_failed(t, "a", T0), 0);
	assert_false(throttle_probation(t, "a", T0)); /* below the limit */
	assert_int_equal(throttle_failed(t, "a", T0), 0);
	assert_true(throttle_probation(t, "a", T0));  /* at it */
	throttle_refund(t, "a");
	assert_false(throttle_probation(t, "a", T0));
	throttle_free(t);
}

/* A key is forgotten 2 * max_delay after its last failure (the table does
 * not keep every address that ever failed). */
static void test_expiry(void **state)
{
	struct throttle *t = thr(1, 4000, 100);

	assert_int_equal(throttle_failed(t, "a", T0), 0);
	assert_int_equal(throttle_failed(t, "a", T0 + 1), 1000);
	assert_int_equal(throttle_failed(t, "b", T0 + 5000), 0);
	assert_int_equal(throttle_count(t, T0 + 5000), 2);
	assert_int_equal(throttle_count(t, T0 + 1 + 8000), 2); /* at the limit */
	assert_int_equal(throttle_count(t, T0 + 1 + 8001), 1); /* past it: a gone */
	/* a came back fresh: its free failure again */
	assert_int_equal(throttle_failed(t, "a", T0 + 9000), 0);
	assert_int_equal(throttle_count(t, T0 + 5000 + 8001), 1);
	throttle_free(t);
}

/* The table holds at most max_entries keys: at the limit every key is
 * kept; past it the key whose last failure is oldest goes, so a flood of
 * new addresses cannot grow memory. */
static void test_bounded(void **state)
{
	struct throttle *t = thr(0, 300000, 64);
	char key[32];

	for (int i = 0; i < 64; i++) {
		snprintf(key, sizeof(key), "k%d", i);
		assert_int_equal(throttle_failed(t, key, T0 + i), 1000);
	}
	assert_int_equal(throttle_count(t, T0 + 64), 64);
	/* k0 fails again: now the newest, k1 the oldest */
	assert_int_equal(throttle_failed(t, "k0", T0 + 100), 2000);
	for (int i = 0; i < 1000; i++) {
		snprintf(key, sizeof(key), "flood%d", i);
		assert_true(throttle_failed(t, key, T0 + 200) >= 0);
		assert_int_equal(throttle_count(t, T0 + 200), 64);
	}
	assert_int_equal(throttle_wait(t, "k1", T0 + 200), 0); /* evicted */
	throttle_free(t);
}

/* Regression (review S1): checks in flight did not count, so guesses sent in
 * parallel were all checked before the first failure. free 2: two checks in
 * flight put the key on probation and make it busy; when both fail the next
 * check is charged at its start and blocks the key; right ones end and take
 * the key off probation again. */
static void test_inflight(void **state)
{
	struct throttle *t = thr(2, 300000, 100);
	int64_t d;

	assert_int_equal(throttle_begin(t, "a", T0, &d), 0);
	assert_false(throttle_probation(t, "a", T0));
	assert_int_equal(throttle_begin(t, "a", T0, &d), 0);
	assert_true(throttle_probation(t, "a", T0));
	assert_true(throttle_busy(t, "a", T0)); /* wait for those two */
	assert_false(throttle_busy(t, "b", T0));
	/* both right: nothing counted, the key is gone */
	assert_int_equal(throttle_end(t, "a", false, T0), 0);
	assert_false(throttle_busy(t, "a", T0));
	assert_int_equal(throttle_end(t, "a", false, T0), 0);
	assert_int_equal(throttle_count(t, T0), 0);
	/* two in flight fail: free failures, no block; probation, not busy */
	assert_int_equal(throttle_begin(t, "a", T0, &d), 0);
	assert_int_equal(throttle_begin(t, "a", T0, &d), 0);
	assert_int_equal(throttle_end(t, "a", true, T0), 0);
	assert_true(throttle_busy(t, "a", T0));
	assert_int_equal(throttle_end(t, "a", true, T0), 0);
	assert_false(throttle_busy(t, "a", T0));
	assert_true(throttle_probation(t, "a", T0));
	/* the next check is charged at its start and blocks */
	assert_int_equal(throttle_begin(t, "a", T0, &d), 1);
	assert_int_equal(d, 1000);
	assert_int_equal(throttle_wait(t, "a", T0), 1000);
	throttle_refund(t, "a"); /* it was right (or dropped) */
	assert_int_equal(throttle_wait(t, "a", T0), 0);
	/* a success forgets failures, not checks in flight */
	assert_int_equal(throttle_begin(t, "a", T0, &d), 1);
	throttle_refund(t, "a");
	assert_int_equal(throttle_begin(t, "c", T0, &d), 0);
	assert_int_equal(throttle_failed(t, "c", T0), 0);
	assert_int_equal(throttle_failed(t, "c", T0), 0);
	throttle_forget(t, "c");
	assert_int_equal(throttle_wait(t, "c", T0), 0);
	assert_int_equal(throttle_end(t, "c", false, T0), 0);
	assert_int_equal(throttle_end(t, "nobody", false, T0), 0);
	throttle_free(t);
}

/* Regression (review S3): a key was stored whole, so 8 KB user names kept
 * 16 KB each; now keys are told apart by their first THROTTLE_KEY_MAX
 * bytes, which is all an entry keeps. */
static void test_long_keys(void **state)
{
	struct throttle *t = thr(0, 300000, 100);
	char a[9000], b[9000];

	memset(a, 'x', sizeof(a) - 1);
	a[sizeof(a) - 1] = '\0';
	memcpy(b, a, sizeof(b));
	b[sizeof(b) - 2] = 'y';
	assert_int_equal(throttle_failed(t, a, T0), 1000);
	assert_int_equal(throttle_wait(t, b, T0), 1000); /* the same key */
	a[THROTTLE_KEY_MAX] = '\0';
	assert_int_equal(throttle_wait(t, a, T0), 1000);
	a[THROTTLE_KEY_MAX - 1] = '\0';
	assert_int_equal(throttle_wait(t, a, T0), 0); /* shorter: another */
	assert_int_equal(throttle_count(t, T0), 1);
	throttle_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_free_then_doubling_to_cap),
		cmocka_unit_test(test_forget_and_zero_free),
		cmocka_unit_test(test_refund),
		cmocka_unit_test(test_probation),
		cmocka_unit_test(test_expiry),
		cmocka_unit_test(test_bounded),
		cmocka_unit_test(test_inflight),
		cmocka_unit_test(test_long_keys),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
