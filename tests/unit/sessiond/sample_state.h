/* tests/unit/sessiond/sample_state.h: a realistic state.proto Item built
 * field by field (not through the bouncer), shared by the round-trip tests
 * and the golden file generator. */
#ifndef BATON_TESTS_SAMPLE_STATE_H
#define BATON_TESTS_SAMPLE_STATE_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct bouncer;

/* One session alice/example: 2 channels with members and topics, 5 backlog
 * lines in 2 buffers, 2 delivery positions, an upstream connection
 * (fd_index 0) with a partial input line and unflushed output, and one
 * attached client (fd_index 1). Returns a malloc'd packed Item. */
uint8_t *sample_item_pack(size_t *len);

/* The same with the connection timers (connected, last receive, next ping)
 * relative to now_ms instead of the fixed 2025 date, for tests that run
 * the loop after arming (a year-old last receive is a ping timeout). */
uint8_t *sample_item_pack_at(size_t *len, int64_t now_ms);

/* A pending client (fd_index 0) in the middle of CAP negotiation. */
uint8_t *sample_pending_pack(size_t *len);

/* Number of open fds of this process (/proc/self/fd). */
int count_open_fds(void);

/* cmocka fixture shared by the state tests: an event base and a bouncer
 * without config; teardown asserts that no fd leaked. */
struct fixture {
	struct event_base *base;
	struct bouncer *b;
	int baseline_fds;
};
int fixture_setup(void **state);
int fixture_teardown(void **state);

/* n AF_UNIX stream socketpairs: ours[i] <-> peers[i]. */
void make_pairs(int *ours, int *peers, size_t n);
void close_all(int *fds, size_t n);

#endif
