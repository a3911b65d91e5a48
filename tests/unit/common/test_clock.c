/* Unit tests of common/clock.c: IRCv3 server-time format and parse. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/clock.h"

static void test_server_time(void **state)
{
	char out[32];
	int64_t t = 0;

	clock_format_server_time(1735689600123LL, out);
	assert_string_equal(out, "2025-01-01T00:00:00.123Z");
	assert_int_equal(clock_parse_server_time(out, &t), 0);
	assert_int_equal(t, 1735689600123LL);
	/* fraction optional, more digits cut, no Z accepted */
	assert_int_equal(clock_parse_server_time("2025-01-01T00:00:00Z", &t), 0);
	assert_int_equal(t, 1735689600000LL);
	assert_int_equal(clock_parse_server_time("2025-01-01T00:00:00.5", &t), 0);
	assert_int_equal(t, 1735689600500LL);
	assert_int_equal(clock_parse_server_time("2025-01-01T00:00:00.123456Z", &t), 0);
	assert_int_equal(t, 1735689600123LL);
	assert_int_equal(clock_parse_server_time("2025-01-01T00:00:00+01:00", &t), -1);
	assert_int_equal(clock_parse_server_time("yesterday", &t), -1);
	assert_int_equal(clock_parse_server_time("", &t), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_server_time),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
