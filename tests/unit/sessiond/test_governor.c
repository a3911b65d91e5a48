/* tests/unit/sessiond/test_governor.c: the reconnect governor alone
 * (sessiond/governor.c: pure logic, so time and random numbers are the
 * test's): bucket pace, burst, per-address cap, fair order, pool spreading,
 * throttle backoff, migration merge, reply classification, backoff jitter. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sessiond/governor.h"

#define T0 1700000000000LL /* a CLOCK_REALTIME ms value */

static struct governor *gov(int per_min, int burst, int cap,
			    const char *const *addrs, size_t n)
{
	struct governor_limits lim = { per_min, burst, cap };
	struct governor *g = governor_new("net", &lim, addrs, n, T0);
	assert_non_null(g);
	return g;
}

static void waiters_init(struct governor_waiter *w, size_t n)
{
	memset(w, 0, n * sizeof(*w));
	for (size_t i = 0; i < n; i++) {
		w[i].arg = &w[i];
		w[i].prefer = -1;
	}
}

/* Drive the governor like bouncer.c does: at each due time, grant all that
 * may go. Records grant times; returns the number granted by `until`. */
static struct governor_waiter *granted[64]; /* who, in grant order (run) */

static size_t run(struct governor *g, int64_t from, int64_t until,
		  int64_t *times, size_t *addrs, size_t max)
{
	size_t n = 0;
	int64_t now = from;
	while (now <= until) {
		struct governor_waiter *w;
		size_t a;
		while ((w = governor_next(g, now, &a)) != NULL) {
			assert_true(n < max);
			times[n] = now;
			addrs[n] = a;
			granted[n] = w;
			n++;
		}
		int64_t due = governor_next_due(g, now);
		if (due < 0)
			break;
		assert_true(due > now); /* otherwise next() would have granted */
		now = due;
	}
	return n;
}

/* 20 sessions, 4 per minute, burst 4, no cap: 4 at once, then one every
 * 15 s exactly, in the order they became due. */
static void test_pace_and_order(void **state)
{
	struct governor *g = gov(4, 4, 0, NULL, 0);
	struct governor_waiter w[20];
	int64_t t[20];
	size_t a[20];

	(void)state;
	waiters_init(w, 20);
	/* queued in reverse due order: the queue sorts by due time */
	for (int i = 19; i >= 0; i--)
		assert_int_equal(governor_request(g, &w[i], T0 + i), 0);
	assert_int_equal(governor_queued(g), 20);
	size_t n = run(g, T0 + 100, T0 + 10 * 60000, t, a, 20);
	assert_int_equal(n, 20);
	for (size_t i = 0; i < 4; i++)
		assert_int_equal(t[i], T0 + 100);
	for (size_t i = 4; i < 20; i++)
		assert_int_equal(t[i], T0 + 100 + (int64_t)(i - 3) * 15000);
	for (size_t i = 0; i < 20; i++)
		assert_ptr_equal(granted[i], &w[i]); /* oldest due first */
	/* the bucket bound holds for every window: at most burst + rate*T */
	for (size_t i = 0; i < n; i++)
		for (size_t j = i; j < n; j++)
			assert_true((int64_t)(j - i + 1) <= 4 + (t[j] - t[i]) * 4 / 60000);
	assert_int_equal(governor_queued(g), 0);
	governor_free(g);
}

/* Equal due times go out in arrival order (ties broken FIFO). */
static void test_fifo_ties(void **state)
{
	struct governor *g = gov(60, 1, 0, NULL, 0);
	struct governor_waiter w[5], *got;
	size_t a;

	(void)state;
	waiters_init(w, 5);
	for (int i = 0; i < 5; i++)
		governor_request(g, &w[i], T0);
	for (int i = 0; i < 5; i++) {
		int64_t now = T0 + i * 1000;
		got = governor_next(g, now, &a);
		assert_ptr_equal(got, &w[i]);
		assert_null(governor_next(g, now, &a)); /* one per second */
	}
	governor_free(g);
}

/* Cap per address: with 3 slots, the 4th waits however many tokens there
 * are, until a release; next_due says so (-1). */
static void test_cap_and_release(void **state)
{
	struct governor *g = gov(0, 0, 3, NULL, 0); /* no rate limit */
	struct governor_waiter w[5];
	size_t a;

	(void)state;
	waiters_init(w, 5);
	for (int i = 0; i < 5; i++)
		governor_request(g, &w[i], T0);
	for (int i = 0; i < 3; i++)
		assert_ptr_equal(governor_next(g, T0, &a), &w[i]);
	assert_null(governor_next(g, T0 + 3600000, &a));
	assert_int_equal(governor_next_due(g, T0), -1);
	assert_int_equal(governor_in_use(g, 0), 3);
	governor_release(g, 0);
	assert_int_equal(governor_next_due(g, T0), T0);
	assert_ptr_equal(governor_next(g, T0, &a), &w[3]);
	assert_null(governor_next(g, T0, &a));
	governor_free(g);
}

/* A pool spreads sessions over its addresses (fewest connections first),
 * each with its own bucket and cap; with the pool full, sessions wait. */
static void test_pool_spread(void **state)
{
	static const char *const pool[] = { "127.0.0.2", "127.0.0.3", "127.0.0.4" };
	struct governor *g = gov(4, 2, 3, pool, 3);
	struct governor_waiter w[12];
	int64_t t[12];
	size_t a[12];
	unsigned per[3] = { 0 };

	(void)state;
	waiters_init(w, 12);
	for (int i = 0; i < 12; i++)
		governor_request(g, &w[i], T0);
	size_t n = run(g, T0, T0 + 3600000, t, a, 12);
	assert_int_equal(n, 9); /* 3 addresses x 3 slots; 3 wait */
	for (size_t i = 0; i < 6; i++)
		assert_int_equal(t[i], T0); /* burst 2 per address */
	for (size_t i = 0; i < n; i++)
		per[a[i]]++;
	assert_int_equal(per[0], 3);
	assert_int_equal(per[1], 3);
	assert_int_equal(per[2], 3);
	/* the first 6 alternate over the pool: no address takes two before
	 * every address took one */
	assert_int_not_equal(a[0], a[1]);
	assert_int_not_equal(a[1], a[2]);
	assert_int_equal(governor_queued(g), 3);
	assert_int_equal(governor_next_due(g, T0 + 3600000), -1);
	/* cancel of queued waiters (sessions freed) leaves a sane queue */
	for (int i = 9; i < 12; i++)
		governor_cancel(g, &w[i]);
	assert_int_equal(governor_queued(g), 0);
	governor_free(g);
}

/* A waiter's preferred address wins when eligible. */
static void test_prefer(void **state)
{
	static const char *const pool[] = { "10.0.0.1", "10.0.0.2" };
	struct governor *g = gov(4, 4, 3, pool, 2);
	struct governor_waiter w;
	size_t a = 9;

	(void)state;
	waiters_init(&w, 1);
	w.prefer = governor_find_addr(g, "10.0.0.2");
	assert_int_equal(w.prefer, 1);
	governor_request(g, &w, T0);
	assert_ptr_equal(governor_next(g, T0, &a), &w);
	assert_int_equal(a, 1);
	governor_free(g);
}

/* A throttle reply blocks the address (not just the session) for base,
 * then 2x base, ...; a success resets the strikes; other addresses go on. */
static void test_throttle(void **state)
{
	static const char *const pool[] = { "10.0.0.1", "10.0.0.2" };
	struct governor *g = gov(4, 4, 0, pool, 2);
	struct governor_waiter w[3];
	size_t a;

	(void)state;
	waiters_init(w, 3);
	assert_int_equal(governor_throttle(g, 0, T0, 60000, 300000), T0 + 60000);
	assert_int_equal(governor_throttle(g, 0, T0, 60000, 300000), T0 + 120000);
	assert_int_equal(governor_throttle(g, 1, T0, 60000, 300000), T0 + 60000);
	for (int i = 0; i < 3; i++)
		governor_request(g, &w[i], T0);
	assert_null(governor_next(g, T0 + 59999, &a));
	assert_int_equal(governor_next_due(g, T0), T0 + 60000);
	assert_non_null(governor_next(g, T0 + 60000, &a));
	assert_int_equal(a, 1);
	/* bucket 1 was emptied by the throttle and refilled 4 in 60 s */
	assert_non_null(governor_next(g, T0 + 60000, &a));
	assert_int_equal(a, 1);
	assert_non_null(governor_next(g, T0 + 120000, &a));
	governor_success(g, 0);
	assert_int_equal(governor_throttle(g, 0, T0 + 200000, 60000, 300000),
			 T0 + 260000);
	/* capped */
	for (int i = 0; i < 10; i++)
		governor_throttle(g, 1, T0, 60000, 300000);
	struct governor_bucket_state st;
	governor_bucket_get(g, 1, T0, &st);
	assert_int_equal(st.throttled_until_ms, T0 + 300000);
	governor_free(g);
}

/* Migration: a snapshot taken on one side and merged on the other keeps
 * the pace (the merge never yields more tokens than either side had). */
static void test_snapshot_merge(void **state)
{
	struct governor *src = gov(4, 4, 3, NULL, 0);
	struct governor *dst;
	struct governor_waiter w[8];
	struct governor_bucket_state st;
	int64_t t[8];
	size_t a[8];

	(void)state;
	waiters_init(w, 8);
	for (int i = 0; i < 3; i++)
		governor_request(src, &w[i], T0);
	for (int i = 0; i < 3; i++)
		assert_non_null(governor_next(src, T0, &a[0]));
	governor_throttle(src, 0, T0, 1000, 1000); /* until T0+1000 */
	governor_bucket_get(src, 0, T0 + 500, &st);
	assert_int_equal(st.level, 500 * 4); /* emptied at T0, +0.5 s refill */
	assert_int_equal(st.throttled_until_ms, T0 + 1000);
	assert_int_equal(st.strikes, 1);

	/* the target starts with a full bucket; the merge takes the lower */
	struct governor_limits lim = { 4, 4, 3 };
	dst = governor_new("net", &lim, NULL, 0, T0 + 600);
	governor_bucket_merge(dst, 0, T0 + 600, &st);
	struct governor_bucket_state back;
	governor_bucket_get(dst, 0, T0 + 600, &back);
	assert_int_equal(back.level, 600 * 4);
	assert_int_equal(back.throttled_until_ms, T0 + 1000);
	/* merging an older, fuller snapshot changes nothing */
	struct governor_bucket_state old = { .level = 4 * 60000, .as_of_ms = T0 - 5000 };
	governor_bucket_merge(dst, 0, T0 + 600, &old);
	governor_bucket_get(dst, 0, T0 + 600, &back);
	assert_int_equal(back.level, 600 * 4);
	/* a hostile negative level is an empty bucket, not a block forever */
	struct governor_bucket_state bad = { .level = -(1LL << 60), .as_of_ms = T0 + 600 };
	governor_bucket_merge(dst, 0, T0 + 600, &bad);
	governor_bucket_get(dst, 0, T0 + 600, &back);
	assert_int_equal(back.level, 0);
	/* the 8 queued at the target: first token at T0+600+15000 */
	for (int i = 0; i < 8; i++)
		governor_request(dst, &w[i], T0);
	size_t n = run(dst, T0 + 600, T0 + 600 + 60000, t, a, 8);
	assert_int_equal(n, 3); /* cap 3 (adopted connections aside) */
	assert_int_equal(t[0], T0 + 600 + 15000);
	assert_int_equal(t[1], T0 + 600 + 30000);
	for (int i = 0; i < 8; i++)
		governor_cancel(dst, &w[i]);
	governor_free(src);
	governor_free(dst);
}

/* Adopted connections occupy slots without spending tokens. */
static void test_occupy(void **state)
{
	struct governor *g = gov(4, 4, 3, NULL, 0);
	struct governor_waiter w;
	size_t a;

	(void)state;
	waiters_init(&w, 1);
	governor_occupy(g, 0);
	governor_occupy(g, 0);
	governor_occupy(g, 0);
	governor_request(g, &w, T0);
	assert_null(governor_next(g, T0, &a));
	governor_release(g, 0);
	assert_non_null(governor_next(g, T0, &a));
	governor_free(g);
}

static void test_classify(void **state)
{
	(void)state;
	/* throttles */
	assert_int_equal(governor_classify("ERROR", "Trying to reconnect too fast."), GOV_THROTTLE);
	assert_int_equal(governor_classify("ERROR", "Connection refused, too many connections from your IP address"), GOV_THROTTLE);
	assert_int_equal(governor_classify("ERROR", "Closing Link: 127.0.0.1 (Throttled: Reconnecting too fast) -Email admin@x"), GOV_THROTTLE);
	assert_int_equal(governor_classify("ERROR", "Closing Link: x (Too many host connections (local))"), GOV_THROTTLE);
	assert_int_equal(governor_classify("ERROR", "Closing link: (u@1.2.3.4) [No more connections allowed from your host via this connect class (local)]"), GOV_THROTTLE);
	/* bans */
	assert_int_equal(governor_classify("ERROR", "Closing Link: x (K-Lined)"), GOV_BAN);
	assert_int_equal(governor_classify("ERROR", "Closing Link: x (G-Lined: spam)"), GOV_BAN);
	assert_int_equal(governor_classify("ERROR", "Closing Link: x (Z-Lined)"), GOV_BAN);
	assert_int_equal(governor_classify("ERROR", "You are banned from this server"), GOV_BAN);
	assert_int_equal(governor_classify("465", "You are banned from this server- spam"), GOV_BAN);
	assert_int_equal(governor_classify("463", "Your host isn't among the privileged"), GOV_BAN);
	/* neither */
	assert_int_equal(governor_classify("ERROR", "Closing Link: x (Ping timeout: 240 seconds)"), GOV_NONE);
	assert_int_equal(governor_classify("ERROR", "Server going down"), GOV_NONE);
	assert_int_equal(governor_classify("474", "Cannot join channel (+b) -- You are banned"), GOV_NONE);
	assert_int_equal(governor_classify("NOTICE", "too fast"), GOV_NONE);
	assert_int_equal(governor_classify(NULL, NULL), GOV_NONE);
	assert_int_equal(governor_classify("ERROR", NULL), GOV_NONE);
}

static void test_backoff(void **state)
{
	(void)state;
	/* rnd 0: the low end (-20%); rnd = span: the high end (+20%) */
	assert_int_equal(governor_backoff_ms(1, 2000, 300000, 0), 1600);
	assert_int_equal(governor_backoff_ms(1, 2000, 300000, 800), 2400);
	assert_int_equal(governor_backoff_ms(0, 2000, 300000, 0), 1600);
	assert_int_equal(governor_backoff_ms(3, 2000, 300000, 0), 6400);
	assert_int_equal(governor_backoff_ms(40, 2000, 300000, 0), 240000);
	assert_int_equal(governor_backoff_ms(UINT32_MAX, 2000, 300000, 120000), 360000);
	/* jitter spreads: 1000 draws cover the range, never outside */
	int64_t lo = INT64_MAX, hi = 0;
	srandom(42);
	for (int i = 0; i < 1000; i++) {
		int64_t d = governor_backoff_ms(2, 1000, 300000, (uint32_t)random());
		assert_true(d >= 1600 && d <= 2400);
		lo = d < lo ? d : lo;
		hi = d > hi ? d : hi;
	}
	assert_true(lo < 1650 && hi > 2350);
}

/* Why the queue waits (the text users and `batonctl status` get): full
 * slots, a throttled address, an empty bucket, or nothing. */
static void test_wait_reason(void **state)
{
	static const char *const pool[] = { "10.0.0.1", "10.0.0.2" };
	struct governor *g = gov(4, 1, 1, pool, 2);
	struct governor_waiter w[4];
	size_t a;

	(void)state;
	waiters_init(w, 4);
	assert_int_equal(governor_capacity(g), 2);
	assert_int_equal(governor_max_per_addr(g), 1);
	assert_int_equal(governor_wait_reason(g, T0), GOV_WAIT_NONE); /* empty */
	for (int i = 0; i < 4; i++)
		governor_request(g, &w[i], T0);
	assert_int_equal(governor_wait_reason(g, T0), GOV_WAIT_NONE); /* may go */
	assert_non_null(governor_next(g, T0, &a));
	assert_non_null(governor_next(g, T0, &a));
	assert_int_equal(governor_wait_reason(g, T0), GOV_WAIT_SLOTS);
	assert_string_equal(governor_wait_name(GOV_WAIT_SLOTS), "slots");
	/* a slot frees, but its bucket (burst 1) is empty for 15 s */
	governor_release(g, 0);
	assert_int_equal(governor_wait_reason(g, T0 + 1000), GOV_WAIT_PACED);
	assert_int_equal(governor_wait_reason(g, T0 + 15000), GOV_WAIT_NONE);
	/* the network refuses that address: throttled, not paced */
	governor_throttle(g, 0, T0 + 15000, 60000, 300000);
	assert_int_equal(governor_throttled(g, T0 + 15000), 1);
	assert_int_equal(governor_wait_reason(g, T0 + 15000), GOV_WAIT_THROTTLED);
	assert_int_equal(governor_wait_reason(g, T0 + 75000), GOV_WAIT_NONE);
	assert_int_equal(governor_throttled(g, T0 + 75000), 0);
	/* the queue's waiters can be walked (notices to each) */
	assert_int_equal(governor_queued(g), 2);
	assert_non_null(governor_waiter_at(g, 1));
	assert_null(governor_waiter_at(g, 2));
	for (int i = 0; i < 4; i++)
		governor_cancel(g, &w[i]);
	governor_free(g);
	/* no limit: capacity 0 */
	g = gov(0, 0, 0, NULL, 0);
	assert_int_equal(governor_capacity(g), 0);
	governor_free(g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pace_and_order),
		cmocka_unit_test(test_fifo_ties),
		cmocka_unit_test(test_cap_and_release),
		cmocka_unit_test(test_pool_spread),
		cmocka_unit_test(test_prefer),
		cmocka_unit_test(test_throttle),
		cmocka_unit_test(test_snapshot_merge),
		cmocka_unit_test(test_occupy),
		cmocka_unit_test(test_classify),
		cmocka_unit_test(test_backoff),
		cmocka_unit_test(test_wait_reason),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
