/* common/clock.h: the one set of clock readings used by every baton program.
 *
 * Policy: anything that measures an interval or fires later (timeouts,
 * keepalive, backoff, deadlines, latencies) uses the monotonic
 * clock, so a step of the wall clock neither fires nor suppresses it. The
 * wall clock is for what a human or a peer reads as a date: IRC server-time
 * tags, backlog timestamps, log lines, "time" fields in JSON, release
 * history.
 * CLOCK_MONOTONIC is one clock for every process of the host, so a
 * monotonic deadline can pass between two workers on the same host; state
 * that leaves the host or is written to disk carries wall-clock times.
 */
#ifndef BATON_COMMON_CLOCK_H
#define BATON_COMMON_CLOCK_H

#include <stdint.h>

int64_t clock_mono_ms(void);  /* CLOCK_MONOTONIC, milliseconds */
int64_t clock_mono_ns(void);  /* CLOCK_MONOTONIC, nanoseconds */
double clock_mono_s(void);    /* CLOCK_MONOTONIC, seconds */
int64_t clock_wall_ms(void);  /* CLOCK_REALTIME, ms since the epoch */
int64_t clock_wall_s(void);   /* CLOCK_REALTIME, s since the epoch */

/* IRCv3 server-time: "YYYY-MM-DDThh:mm:ss.sssZ" (UTC) of a wall-clock time
 * in ms, and its parse (fraction optional, any number of digits, "Z" or
 * nothing at the end). parse: 0, or -1 if s is not such a time. */
void clock_format_server_time(int64_t wall_ms, char out[32]);
int clock_parse_server_time(const char *s, int64_t *wall_ms);

#endif
