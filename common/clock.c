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
