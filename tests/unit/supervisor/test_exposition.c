/* Tests of supervisor/exposition.c's writers: label values and HELP texts
 * are escaped, values are Prometheus floats, histograms are cumulative with
 * +Inf, _sum and _count, the freeze histogram observes in seconds. (The
 * whole exposition of a running supervisor goes through `promtool check
 * metrics` in tests/integration/test_metrics.py.) */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "supervisor/exposition.h"

/* The buffer's text, NUL-terminated (static, for one assertion). */
static const char *text(struct evbuffer *b)
{
	static char out[8192];
	size_t n = evbuffer_get_length(b);

	assert_true(n < sizeof(out));
	evbuffer_copyout(b, out, n);
	out[n] = '\0';
	evbuffer_drain(b, n);
	return out;
}

/* A version or role with quotes, backslashes or a newline must not end the
 * label value or the line. */
static void test_label_values_escaped(void **state)
{
	struct evbuffer *b = evbuffer_new();
	struct expo_label l[] = {
		{ "version", "1.0\"x\\y\nz" },
		{ "role", NULL },
	};

	expo_sample(b, "baton_x", l, 2, 3);
	assert_string_equal(text(b),
		"baton_x{version=\"1.0\\\"x\\\\y\\nz\",role=\"\"} 3\n");
	expo_sample(b, "baton_y", NULL, 0, 0.25);
	assert_string_equal(text(b), "baton_y 0.25\n");
	evbuffer_free(b);
}

static void test_help_escaped_and_type(void **state)
{
	struct evbuffer *b = evbuffer_new();

	expo_family(b, "baton_x", "gauge", "a \"quoted\" \\ help\nline");
	assert_string_equal(text(b),
		"# HELP baton_x a \"quoted\" \\\\ help\\nline\n"
		"# TYPE baton_x gauge\n");
	evbuffer_free(b);
}

static void test_special_values(void **state)
{
	struct evbuffer *b = evbuffer_new();

	expo_sample(b, "a", NULL, 0, INFINITY);
	expo_sample(b, "b", NULL, 0, -INFINITY);
	expo_sample(b, "c", NULL, 0, NAN);
	expo_sample(b, "d", NULL, 0, 12345678901.0);
	assert_string_equal(text(b), "a +Inf\nb -Inf\nc NaN\nd 12345678901\n");
	evbuffer_free(b);
}

/* Freeze times arrive in ms and are observed in s; buckets are
 * cumulative, the +Inf bucket is the count. */
static void test_histogram(void **state)
{
	static const double bounds[] = { 0.001, 0.01, 0.1 };
	struct evbuffer *b = evbuffer_new();
	struct expo_label l[] = { { "pid", "7" } };
	struct expo_hist h;

	expo_hist_init(&h, bounds, 3);
	expo_hist_observe(&h, 0.0005);
	expo_hist_observe(&h, 0.01);   /* on a bound: le is "<=" */
	expo_hist_observe(&h, 5.0);
	expo_hist_observe(&h, NAN);    /* ignored */
	expo_hist_write(b, "baton_h_seconds", l, 1, &h);
	assert_string_equal(text(b),
		"baton_h_seconds_bucket{pid=\"7\",le=\"0.001\"} 1\n"
		"baton_h_seconds_bucket{pid=\"7\",le=\"0.01\"} 2\n"
		"baton_h_seconds_bucket{pid=\"7\",le=\"0.1\"} 2\n"
		"baton_h_seconds_bucket{pid=\"7\",le=\"+Inf\"} 3\n"
		"baton_h_seconds_sum{pid=\"7\"} 5.0105\n"
		"baton_h_seconds_count{pid=\"7\"} 3\n");
	/* Without labels: le alone. */
	expo_hist_write(b, "baton_h_seconds", NULL, 0, &h);
	assert_non_null(strstr(text(b), "baton_h_seconds_bucket{le=\"+Inf\"} 3\n"));
	evbuffer_free(b);
}

/* The relay latency bounds are sessiond/health.h's: 13 finite + +Inf. */
static void test_bounds(void **state)
{
	assert_int_equal(expo_relay_latency_nbounds, 13);
	assert_true(expo_relay_latency_bounds[0] == 0.0005);
	assert_true(expo_relay_latency_bounds[12] == 5);
	assert_true(expo_freeze_bounds[0] == 0.001);
	assert_true(expo_freeze_bounds[expo_freeze_nbounds - 1] == 10);
	for (size_t i = 1; i < expo_freeze_nbounds; i++)
		assert_true(expo_freeze_bounds[i] > expo_freeze_bounds[i - 1]);
	assert_true(expo_freeze_nbounds <= EXPO_HISTOGRAM_MAX_BOUNDS);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_label_values_escaped),
		cmocka_unit_test(test_help_escaped_and_type),
		cmocka_unit_test(test_special_values),
		cmocka_unit_test(test_histogram),
		cmocka_unit_test(test_bounds),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
