/* Tests of supervisor/gates.c: each gate trips on what it exists for and
 * stays quiet on a healthy pair; statistical gates wait for min_lines and
 * trip only after trip_samples failing samples in a row; differential
 * delivery tolerates timing at the edges and catches a steady 2 % loss or
 * duplication; the first gate that trips leads the reason. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "common/config.h"
#include "supervisor/gates.h"

#define NB 14

/* One worker's cumulative counters, as the HEALTH answers would carry. */
struct fake {
	Baton__Control__Health h;
	uint64_t buckets[NB];
	Baton__Control__ChannelDelivery ch, *chp[1];
};

static void fake_init(struct fake *f, unsigned sessions)
{
	memset(f, 0, sizeof(*f));
	baton__control__health__init(&f->h);
	f->h.has_sessions = 1;
	f->h.sessions = sessions;
	f->h.relay_latency_buckets = f->buckets;
	f->h.n_relay_latency_buckets = NB;
	baton__control__channel_delivery__init(&f->ch);
	f->ch.network = "net";
	f->ch.channel = "#chat";
	f->chp[0] = &f->ch;
	f->h.channels = f->chp;
	f->h.n_channels = 1;
}

/* One interval: lines relayed (all at the bound `bucket`: cumulative, so
 * in every bucket from there on), the channel
 * delivery of `sessions` stable sessions getting `per_session` lines each,
 * CPU, RSS growth. */
static void fake_step(struct fake *f, unsigned lines, int bucket,
		      unsigned sessions, double per_session, double cpu,
		      uint64_t rss_add)
{
	f->h.upstream_lines += lines;
	f->h.lines_relayed += lines;
	for (int i = bucket; i < NB; i++)
		f->buckets[i] += lines;
	f->ch.sessions = sessions;
	f->ch.lines = (uint64_t)(per_session * sessions + 0.5);
	f->h.cpu_s += cpu;
	f->h.rss_bytes += rss_add;
}

static const struct baton_config *cfg(void)
{
	static struct baton_config c;

	c = *config_default_values();
	c.canary_min_lines = 100;
	c.canary_trip_samples = 3;
	return &c;
}

/* n healthy samples of both groups; the cohort's tweak applied. */
static struct gates *run(int n, void (*tweak)(struct fake *t, int i))
{
	struct gates *g = gates_new(cfg());
	struct fake t, s;

	fake_init(&t, 20);
	fake_init(&s, 180);
	t.h.rss_bytes = s.h.rss_bytes = 50 << 20;
	for (int i = 0; i < n; i++) {
		fake_step(&t, 100, 2, 5, 10, 0.01, 1000);
		fake_step(&s, 900, 2, 40, 10, 0.09, 9000);
		if (tweak)
			tweak(&t, i);
		gates_observe(g, &t.h, 100.0 + i, &s.h, 100.0 + i);
	}
	return g;
}

static enum gate_verdict verdict(const struct gates *g, const char *name)
{
	struct gate_view v;

	for (size_t i = 0; i < gates_count(g); i++) {
		gates_view(g, i, &v);
		if (strcmp(v.name, name) == 0)
			return v.verdict;
	}
	fail_msg("no gate %s", name);
	return GATE_WAITING;
}

static void test_healthy_pair_passes(void **state)
{
	struct gates *g = run(30, NULL);

	assert_null(gates_tripped(g));
	assert_int_equal(verdict(g, "relay_latency_p99"), GATE_PASS);
	assert_int_equal(verdict(g, "delivery"), GATE_PASS);
	assert_int_equal(verdict(g, "cpu_per_1000_lines"), GATE_PASS);
	gates_free(g);
}

static void drop_2pct(struct fake *t, int i)
{
	t->ch.lines = (uint64_t)(9.8 * t->ch.sessions + 0.5); /* 2 % of 10 lost */
}

static void test_delivery_catches_loss(void **state)
{
	struct gates *g = run(30, drop_2pct);

	assert_string_equal(gates_tripped(g), "delivery");
	assert_non_null(strstr(gates_reason(g), "lost"));
	gates_free(g);
}

static void dup_2pct(struct fake *t, int i)
{
	t->ch.lines = (uint64_t)(10.2 * t->ch.sessions + 0.5);
}

static void test_delivery_catches_duplicates(void **state)
{
	struct gates *g = run(30, dup_2pct);

	assert_string_equal(gates_tripped(g), "delivery");
	assert_non_null(strstr(gates_reason(g), "duplicated"));
	gates_free(g);
}

/* Timing at the sample edges: lines counted in one interval here and in
 * the next one there (three lines of the cohort late, then caught up). */
static void jitter(struct fake *t, int i)
{
	t->ch.lines = (uint64_t)(10 * t->ch.sessions) + (i % 2 ? 3 : -3);
}

static void test_delivery_tolerates_edges(void **state)
{
	struct gates *g = run(60, jitter);

	assert_null(gates_tripped(g));
	gates_free(g);
}

/* Regression (CI, canary of the noping build): a burst of 5 lines counted
 * in the cohort's interval and in the control's next one put the sum at
 * +5 over a tolerance of 4.7 for one sample, and delivery tripped on a
 * build that lost nothing. A difference over the tolerance for fewer than
 * trip_samples samples in a row cancels and must not trip. */
static void burst_at_edge(struct fake *t, int i)
{
	long extra = i % 10 == 5 ? 12 : i % 10 == 6 ? -12 : 0;

	t->ch.lines = (uint64_t)((long)(10 * t->ch.sessions) + extra);
}

static void test_delivery_burst_at_edge_does_not_trip(void **state)
{
	struct gates *g = run(60, burst_at_edge);

	assert_null(gates_tripped(g));
	assert_int_equal(verdict(g, "delivery"), GATE_PASS);
	gates_free(g);
}

/* ... while the same surplus that stays (12 lines duplicated once) trips
 * after trip_samples samples. */
static void dup_once(struct fake *t, int i)
{
	t->ch.lines = (uint64_t)(10 * t->ch.sessions) + (i == 5 ? 12 : 0);
}

static void test_delivery_lasting_surplus_trips(void **state)
{
	struct gates *g = run(60, dup_once);

	assert_string_equal(gates_tripped(g), "delivery");
	assert_non_null(strstr(gates_reason(g), "for 3 samples in a row"));
	gates_free(g);
}

/* The cohort's worker answers each sample later than the control's (a
 * busy loop): its intervals are longer, its counts larger, nothing lost. */
static void test_delivery_scales_by_answer_time(void **state)
{
	struct gates *g = gates_new(cfg());
	struct fake t, s;
	double at = 100;

	fake_init(&t, 20);
	fake_init(&s, 180);
	for (int i = 0; i < 40; i++) {
		/* alternately 0 and 80 ms late: intervals 1.08 s and 0.92 s */
		double late = i % 2 ? 0.08 : 0;

		fake_step(&t, 100, 2, 5, 10 * (1 + (i % 2 ? 0.08 : -0.08)), 0.01, 0);
		fake_step(&s, 900, 2, 40, 10, 0.09, 0);
		if (i == 0)
			fake_step(&t, 0, 2, 5, 10, 0, 0);
		gates_observe(g, &t.h, at + late, &s.h, at);
		at += 1;
	}
	assert_null(gates_tripped(g));
	gates_free(g);
}

static void slow(struct fake *t, int i)
{
	/* every line at 100 ms instead of 2 ms */
	for (int k = 2; k < 7; k++)
		t->buckets[k] -= 100;
}

static void test_latency_trips_after_samples(void **state)
{
	struct gates *g = gates_new(cfg());
	struct fake t, s;

	fake_init(&t, 20);
	fake_init(&s, 180);
	/* below min_lines: waiting, never tripping */
	fake_step(&t, 10, 7, 5, 10, 0, 0);
	fake_step(&s, 10, 2, 40, 10, 0, 0);
	gates_observe(g, &t.h, 1, &s.h, 1);
	gates_observe(g, &t.h, 2, &s.h, 2);
	assert_int_equal(verdict(g, "relay_latency_p99"), GATE_WAITING);
	gates_free(g);

	/* the first sample is the baseline: 3 failing samples take 4 */
	g = run(3, slow);
	assert_int_equal(verdict(g, "relay_latency_p99"), GATE_FAILING);
	assert_null(gates_tripped(g));
	gates_free(g);
	g = run(4, slow);
	assert_string_equal(gates_tripped(g), "relay_latency_p99");
	gates_free(g);
}

/* Slow and therefore behind: 2 % of the lines not yet delivered at each
 * sample. The latency gate judges, not delivery (a loss with normal
 * latency is test_delivery_catches_loss). */
static void slow_and_behind(struct fake *t, int i)
{
	slow(t, i);
	drop_2pct(t, i);
}

static void test_late_lines_are_the_latency_gates(void **state)
{
	struct gates *g = run(30, slow_and_behind);

	assert_string_equal(gates_tripped(g), "relay_latency_p99");
	assert_int_not_equal(verdict(g, "delivery"), GATE_TRIPPED);
	gates_free(g);
}

static void leak(struct fake *t, int i)
{
	t->h.rss_bytes += 20 << 20; /* 1 MiB per session per sample (second) */
}

static void test_rss_growth(void **state)
{
	struct gates *g = run(30, leak);

	assert_string_equal(gates_tripped(g), "rss_growth_per_session");
	gates_free(g);
}

static void protocol(struct fake *t, int i)
{
	if (i == 5)
		t->h.protocol_errors = 1;
}

static void test_hard_gate_trips_at_once(void **state)
{
	struct gates *g = run(6, protocol);

	assert_string_equal(gates_tripped(g), "protocol_errors");
	gates_free(g);
}

static void test_first_trip_leads(void **state)
{
	struct gates *g = run(10, NULL);

	gates_trip(g, "worker_crash", 1, "pid 1 exited: killed by signal 6");
	gates_trip(g, "watchdog", 9, "later");
	assert_string_equal(gates_tripped(g), "worker_crash");
	assert_non_null(strstr(gates_reason(g), "signal 6"));
	gates_free(g);
}

static void test_p99(void **state)
{
	uint64_t base[NB] = { 0 }, now[NB] = { 0 };

	assert_true(gates_p99(now, base, NB) < 0);
	/* 990 at 0.5 ms, 10 at 0.5 s (cumulative counts) */
	for (int i = 0; i < NB; i++)
		now[i] = i < 9 ? 990 : 1000;
	assert_true(gates_p99(now, base, NB) == 0.0005);
	for (int i = 0; i < NB; i++)
		now[i] = i < 9 ? 989 : 1000;
	assert_true(gates_p99(now, base, NB) == 0.5);
	for (int i = 0; i < NB; i++)
		now[i] = i < NB - 1 ? 0 : 1000; /* all beyond 5 s */
	assert_true(gates_p99(now, base, NB) == 10.0);
}

/* BUG (review): error_numerics_per_session_hour has no minimum count of
 * events: one 4xx numeric (a user's /msg to a nick that left: 401) in a
 * small cohort (--users alice: 1 session) is 1 / 1 session / (5 s / 3600)
 * = 720 per session-hour against a threshold of 120, and it stays above
 * the threshold for the next 25 s because the rate is cumulative since the
 * baseline, so trip_samples failing samples in a row come at once and the
 * canary rolls back a healthy build. One event is no statistic: the gate
 * must not judge on it. */
static void test_one_error_numeric_in_small_cohort_is_no_alarm(void **state)
{
	struct gates *g = gates_new(cfg());
	struct fake t, s;

	fake_init(&t, 1);
	fake_init(&s, 180);
	t.h.rss_bytes = s.h.rss_bytes = 50 << 20;
	for (int i = 0; i < 30; i++) {
		fake_step(&t, 100, 2, 1, 10, 0.01, 0);
		fake_step(&s, 900, 2, 40, 10, 0.09, 0);
		if (i == 5)
			t.h.upstream_error_numerics = 1; /* one 401 */
		gates_observe(g, &t.h, 100.0 + i, &s.h, 100.0 + i);
	}
	assert_null(gates_tripped(g));
	gates_free(g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_healthy_pair_passes),
		cmocka_unit_test(test_delivery_catches_loss),
		cmocka_unit_test(test_delivery_catches_duplicates),
		cmocka_unit_test(test_delivery_tolerates_edges),
		cmocka_unit_test(test_delivery_burst_at_edge_does_not_trip),
		cmocka_unit_test(test_delivery_lasting_surplus_trips),
		cmocka_unit_test(test_delivery_scales_by_answer_time),
		cmocka_unit_test(test_latency_trips_after_samples),
		cmocka_unit_test(test_late_lines_are_the_latency_gates),
		cmocka_unit_test(test_rss_growth),
		cmocka_unit_test(test_hard_gate_trips_at_once),
		cmocka_unit_test(test_first_trip_leads),
		cmocka_unit_test(test_p99),
		cmocka_unit_test(test_one_error_numeric_in_small_cohort_is_no_alarm),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
