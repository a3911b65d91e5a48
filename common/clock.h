/* common/clock.h: the one set of clock readings used by every baton program.
 *
 * Policy: anything that measures an interval or fires later (timeouts,
 * keepalive, backoff, deadlines, latencies, rate limits) uses the monotonic
 * clock, so a step of the wall clock neither fires nor suppresses it. The
 * wall clock is for what a human or a peer reads as a date: IRC server-time
 * tags, backlog timestamps, log lines, "time" fields in JSON, release
 * history.
 *
 * Timers that leave the process (proto/state.proto: a session's deadlines,
 * handed to another worker, possibly an older release that reads them as
 * CLOCK_REALTIME ms) travel in wall-clock terms: the sender converts with
 * clock_mono_to_wall_ms(), the receiver with clock_wall_to_mono_ms(). A
 * wall-clock step between the two shifts those deadlines by the step (the
 * price of the released wire format); inside a process nothing does.
 */
#ifndef BATON_COMMON_CLOCK_H
#define BATON_COMMON_CLOCK_H

#include <stdint.h>

int64_t clock_mono_ms(void);  /* CLOCK_MONOTONIC, milliseconds */
int64_t clock_mono_ns(void);  /* CLOCK_MONOTONIC, nanoseconds */
double clock_mono_s(void);    /* CLOCK_MONOTONIC, seconds */
int64_t clock_wall_ms(void);  /* CLOCK_REALTIME, ms since the epoch */
int64_t clock_wall_s(void);   /* CLOCK_REALTIME, s since the epoch */

/* A CLOCK_MONOTONIC time in ms as CLOCK_REALTIME ms and back, as of now
 * (wall = mono - clock_mono_ms() + clock_wall_ms()). 0 means "none" on both
 * sides and stays 0; no other time converts to 0. The offset between the
 * clocks is read at ns precision and kept until the wall clock moves by more
 * than 1 ms against the monotonic one (a step), so within a process
 * mono -> wall -> mono gives back the same value, and between two
 * processes it is off by at most 1 ms. */
int64_t clock_mono_to_wall_ms(int64_t mono_ms);
int64_t clock_wall_to_mono_ms(int64_t wall_ms);

/* IRCv3 server-time: "YYYY-MM-DDThh:mm:ss.sssZ" (UTC) of a wall-clock time
 * in ms, and its parse (fraction optional, any number of digits, "Z" or
 * nothing at the end). parse: 0, or -1 if s is not such a time. */
void clock_format_server_time(int64_t wall_ms, char out[32]);
int clock_parse_server_time(const char *s, int64_t *wall_ms);

#endif
