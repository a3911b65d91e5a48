/* Unit tests of common/clock.c: IRCv3 server-time format and parse, and
 * the monotonic <-> wall conversion of timers that travel in migrated state
 * (exact within a process, following a step of the wall clock). The wall
 * clock is stepped by interposing clock_gettime() (this executable's
 * definition wins over libc's for common/clock.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/clock.h"

static int64_t wall_step_ms; /* added to every CLOCK_REALTIME reading */

int clock_gettime(clockid_t id, struct timespec *ts)
{
	int rc = (int)syscall(SYS_clock_gettime, id, ts);

	if (rc == 0 && id == CLOCK_REALTIME && wall_step_ms) {
		int64_t ns = (int64_t)ts->tv_sec * 1000000000LL + ts->tv_nsec +
			     wall_step_ms * 1000000LL;
		ts->tv_sec = (time_t)(ns / 1000000000LL);
		ts->tv_nsec = (long)(ns % 1000000000LL);
	}
	return rc;
}

static int64_t absdiff(int64_t a, int64_t b)
{
	return a > b ? a - b : b - a;
}

static void test_mono_wall(void **state)
{
	int64_t mono = clock_mono_ms(), wall = clock_wall_ms();

	/* 0 is "none" on both sides */
	assert_int_equal(clock_mono_to_wall_ms(0), 0);
	assert_int_equal(clock_wall_to_mono_ms(0), 0);
	/* now is now */
	assert_true(absdiff(clock_mono_to_wall_ms(mono), wall) <= 2);
	assert_true(absdiff(clock_wall_to_mono_ms(wall), mono) <= 2);
	/* within a process a deadline survives any number of trips exactly
	 * (a migration back and forth must not move it) */
	int64_t v[] = { mono, mono + 60000, mono - 3600000, 1, -1, mono + 1 };
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		int64_t t = v[i];
		for (int k = 0; k < 1000; k++)
			t = clock_wall_to_mono_ms(clock_mono_to_wall_ms(t));
		assert_int_equal(t, v[i]);
	}
	/* no other time lands on 0 */
	int64_t off = clock_mono_to_wall_ms(1) - 1;
	assert_int_equal(clock_wall_to_mono_ms(off), -1);
	assert_int_not_equal(clock_mono_to_wall_ms(-off), 0);
}

/* A deadline serialized before a step and adopted after it moves with the
 * step (the wire is wall-clock: the price of the released format), and one
 * serialized after the step means the same monotonic time as before. */
static void test_mono_wall_step(void **state)
{
	int64_t due = clock_mono_ms() + 30000;
	int64_t wire = clock_mono_to_wall_ms(due), w0 = clock_wall_ms();

	wall_step_ms = 3600000;
	assert_true(absdiff(clock_wall_ms(), w0 + 3600000) < 1000); /* stepped */
	assert_true(absdiff(clock_mono_to_wall_ms(due), wire + 3600000) <= 1);
	assert_true(absdiff(clock_wall_to_mono_ms(clock_mono_to_wall_ms(due)), due) <= 1);
	assert_true(absdiff(clock_wall_to_mono_ms(wire), due - 3600000) <= 1);
	wall_step_ms = -3600000;
	assert_true(absdiff(clock_mono_to_wall_ms(due), wire - 3600000) <= 1);
	assert_int_equal(clock_wall_to_mono_ms(clock_mono_to_wall_ms(due)), due);
	wall_step_ms = 0;
	assert_true(absdiff(clock_mono_to_wall_ms(due), wire) <= 1);
	/* the monotonic clock never moved */
	assert_true(absdiff(clock_mono_ms(), due - 30000) < 1000);
}

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
		cmocka_unit_test(test_mono_wall),
		cmocka_unit_test(test_mono_wall_step),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
