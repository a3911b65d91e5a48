/* common/clock.c: see clock.h. */
#include "common/clock.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

int64_t clock_mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int64_t clock_mono_ms(void)
{
	return clock_mono_ns() / 1000000;
}

double clock_mono_s(void)
{
	return (double)clock_mono_ns() / 1e9;
}

int64_t clock_wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t clock_wall_s(void)
{
	return clock_wall_ms() / 1000;
}

/* ---- monotonic <-> wall ----
 * wall - mono, in ms. Both clocks are slewed alike (adjtime, NTP), so the
 * difference changes only when the wall clock is stepped; reading it anew
 * for every conversion would still jitter by a rounding step (the two
 * readings are never simultaneous), which would make a deadline move by
 * 1 ms each time it is serialized and adopted. So the offset is kept, and
 * followed only when it moved by more than that jitter. Relaxed atomics:
 * any thread may convert; a stale value is as good as a fresh one. */
static int64_t mono_wall_offset_ms; /* 0: not read yet */

static int64_t clock_offset_ms(void)
{
	/* The wall clock read between two monotonic reads, against their
	 * midpoint; of up to 4 tries the one with the tightest pair, so that
	 * a preemption between the reads (milliseconds on a busy machine)
	 * is not taken for a clock step. */
	int64_t ns = 0, best = INT64_MAX;

	for (int i = 0; i < 4 && best > 20000; i++) {
		struct timespec m1, w, m2;

		clock_gettime(CLOCK_MONOTONIC, &m1);
		clock_gettime(CLOCK_REALTIME, &w);
		clock_gettime(CLOCK_MONOTONIC, &m2);
		int64_t a = (int64_t)m1.tv_sec * 1000000000LL + m1.tv_nsec;
		int64_t b = (int64_t)m2.tv_sec * 1000000000LL + m2.tv_nsec;

		if (b - a < best) {
			best = b - a;
			ns = (int64_t)w.tv_sec * 1000000000LL + w.tv_nsec - (a + (b - a) / 2);
		}
	}
	/* to the nearest ms */
	int64_t off = ns >= 0 ? (ns + 500000) / 1000000 : -((-ns + 499999) / 1000000);
	int64_t kept = __atomic_load_n(&mono_wall_offset_ms, __ATOMIC_RELAXED);

	if (kept != 0 && off - kept <= 1 && kept - off <= 1)
		return kept;
	__atomic_store_n(&mono_wall_offset_ms, off, __ATOMIC_RELAXED);
	return off;
}

/* A time that lands on 0 ("none") moves 1 ms earlier instead. */
static int64_t nonzero(int64_t t)
{
	return t ? t : -1;
}

int64_t clock_mono_to_wall_ms(int64_t mono_ms)
{
	return mono_ms ? nonzero(mono_ms + clock_offset_ms()) : 0;
}

int64_t clock_wall_to_mono_ms(int64_t wall_ms)
{
	return wall_ms ? nonzero(wall_ms - clock_offset_ms()) : 0;
}

/* ---- IRCv3 server-time ---- */

void clock_format_server_time(int64_t wall_ms, char out[32])
{
	time_t sec = (time_t)(wall_ms / 1000);
	struct tm tm;
	char tmp[96];

	gmtime_r(&sec, &tm);
	snprintf(tmp, sizeof(tmp), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
		 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		 tm.tm_min, tm.tm_sec, (int)(wall_ms % 1000));
	snprintf(out, 32, "%.31s", tmp);
}

int clock_parse_server_time(const char *s, int64_t *wall_ms)
{
	struct tm tm;
	int frac = 0, nfrac = 0;

	memset(&tm, 0, sizeof(tm));
	const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!p)
		return -1;
	if (*p == '.') {
		p++;
		while (*p >= '0' && *p <= '9') {
			if (nfrac < 3) {
				frac = frac * 10 + (*p - '0');
				nfrac++;
			}
			p++;
		}
		while (nfrac < 3) {
			frac *= 10;
			nfrac++;
		}
	}
	if (*p != 'Z' && *p != '\0')
		return -1;
	*wall_ms = (int64_t)timegm(&tm) * 1000 + frac;
	return 0;
}
