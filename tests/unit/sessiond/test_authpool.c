/* tests/unit/sessiond/test_authpool.c: password checks off the event loop
 * (sessiond/authpool.c): results come back through the loop with their ids,
 * the queue holds at most queue_max checks, and freeing the pool with
 * checks in flight delivers nothing more and leaks nothing. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <event2/event.h>

#include "sessiond/authpool.h"

/* crypt("secret", "$6$testsalt$"), precomputed (ASan's crypt_r interceptor
 * crashes when a test calls crypt_r itself). */
#define SECRET_HASH "$6$testsalt$51yaaBMXXXt5vK522YOlIMZ267vqHtMIzc2klcsu3EEv/bkRDU9g3UmkypXf.NvlpPpIPK1nX5zdbCeJBiQbB/"
/* Slow on purpose (~50-100 ms): jobs stay queued while the test submits. */
#define SLOW_SETTING "$6$rounds=300000$slowsalt$"

struct results {
	int n;
	uint64_t id[64];
	bool ok[64];
};

static void on_done(uint64_t id, bool ok, void *arg)
{
	struct results *r = arg;

	assert_true(r->n < 64);
	r->id[r->n] = id;
	r->ok[r->n] = ok;
	r->n++;
}

static void pump_until(struct event_base *base, struct results *r, int n)
{
	for (int i = 0; i < 20000 && r->n < n; i++) {
		struct timeval tv = { 0, 1000 };

		event_base_loopexit(base, &tv);
		event_base_dispatch(base);
	}
	assert_int_equal(r->n, n);
}

static bool got(const struct results *r, uint64_t id, bool *ok)
{
	for (int i = 0; i < r->n; i++)
		if (r->id[i] == id) {
			*ok = r->ok[i];
			return true;
		}
	return false;
}

/* Right and wrong passwords, a missing one, an empty hash: each result
 * arrives once, on the loop, under its id. */
static void test_results(void **state)
{
	struct event_base *base = event_base_new();
	struct results r = { 0 };
	struct authpool *p = authpool_new(base, 2, 16, on_done, &r);
	bool ok;

	assert_non_null(p);
	assert_int_equal(authpool_submit(p, 1, "secret", SECRET_HASH), 0);
	assert_int_equal(authpool_submit(p, 2, "wrong", SECRET_HASH), 0);
	assert_int_equal(authpool_submit(p, 3, NULL, SECRET_HASH), 0);
	assert_int_equal(authpool_submit(p, 4, "secret", ""), 0);
	assert_int_equal(r.n, 0); /* never inside submit */
	pump_until(base, &r, 4);
	assert_true(got(&r, 1, &ok) && ok);
	assert_true(got(&r, 2, &ok) && !ok);
	assert_true(got(&r, 3, &ok) && !ok);
	assert_true(got(&r, 4, &ok) && !ok);
	assert_int_equal(authpool_busy(p), 0);
	authpool_free(p);
	event_base_free(base);
}

/* The queue bound: queue_max checks (waiting and running) are taken, the
 * next one is refused with -EAGAIN until a result came back. */
static void test_queue_bound(void **state)
{
	struct event_base *base = event_base_new();
	struct results r = { 0 };
	struct authpool *p = authpool_new(base, 1, 4, on_done, &r);

	assert_non_null(p);
	for (uint64_t id = 1; id <= 4; id++) /* at the limit */
		assert_int_equal(authpool_submit(p, id, "x", SLOW_SETTING), 0);
	assert_int_equal(authpool_submit(p, 5, "x", SLOW_SETTING), -EAGAIN); /* past it */
	assert_int_equal(authpool_busy(p), 4);
	pump_until(base, &r, 1);
	assert_int_equal(authpool_submit(p, 6, "secret", SECRET_HASH), 0);
	pump_until(base, &r, 5);
	authpool_free(p);
	event_base_free(base);
}

/* Regression guard for the client side: freeing the pool while checks are
 * queued and running waits for the running one, drops the rest and
 * delivers nothing afterwards (ASan: nothing leaks). */
static void test_free_in_flight(void **state)
{
	struct event_base *base = event_base_new();
	struct results r = { 0 };
	struct authpool *p = authpool_new(base, 1, 8, on_done, &r);

	assert_non_null(p);
	for (uint64_t id = 1; id <= 8; id++)
		assert_int_equal(authpool_submit(p, id, "x", SLOW_SETTING), 0);
	authpool_free(p);
	event_base_loop(base, EVLOOP_NONBLOCK);
	assert_int_equal(r.n, 0);
	event_base_free(base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_results),
		cmocka_unit_test(test_queue_bound),
		cmocka_unit_test(test_free_in_flight),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
