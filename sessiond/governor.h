/* sessiond/governor.h: the reconnect governor of one network (docs/design.md §7).
 *
 * IRC networks limit connects per source address (Solanum: 4 per 60 s) and
 * concurrent connections per address (Solanum and InspIRCd 3, ngIRCd 5); a
 * host that exceeds them is throttled or K-lined. Every upstream connect of a
 * network goes through its governor:
 *
 *   - one source address per entry of the network's `bind` pool (or a single
 *     "" entry: the kernel chooses), each with a token bucket of connection
 *     attempts (connects_per_minute, connect_burst), a cap on concurrent
 *     connections (max_connections_per_ip) and a throttled-until deadline;
 *   - sessions that want to connect wait in one queue ordered by the time
 *     they became due (then by arrival), so after a netsplit, a server or a
 *     baton restart they go out at the buckets' pace, oldest first, and never
 *     all at once.
 *
 * Pure logic: no I/O, no clock, no randomness; times (CLOCK_MONOTONIC ms,
 * clock_mono_ms(): a wall-clock step neither opens nor closes a bucket;
 * state.c converts migrated buckets to and from the wire's wall-clock ms)
 * and random numbers are passed in, so tests are deterministic. The event loop
 * side (a timer calling governor_next() when governor_next_due() says so)
 * lives in sessiond/bouncer.c.
 *
 * Ownership: the governor owns its buckets and the queue's array; waiters
 * are owned by the caller (embedded in a session) and must be cancelled
 * before they are freed.
 */
#ifndef BATON_SESSIOND_GOVERNOR_H
#define BATON_SESSIOND_GOVERNOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct governor;

/* Limits; a value <= 0 means "no limit" (configs built in code by unit
 * tests; the config parser always sets 1 or more, default 4 / 4 / 3). */
struct governor_limits {
	int connects_per_minute;
	int connect_burst;
	int max_per_addr;
};

/* A queued request. Public so that it can be embedded in its owner (no
 * allocation per request); the fields are the governor's. */
struct governor_waiter {
	void *arg;          /* the owner's, returned by governor_next() */
	int64_t wanted_at;  /* when it became due: the queue order */
	uint64_t order;     /* arrival, breaks ties */
	size_t heap_pos;    /* position + 1 in the queue, 0: not queued */
	int prefer;         /* address index it used last, -1: none */
};

/* What a bucket looks like in migrated state (proto/state.proto
 * GovernorBucket): the level is exact at as_of_ms and refills from there. */
struct governor_bucket_state {
	int64_t level;          /* tokens * 60000 (see governor.c) */
	int64_t as_of_ms;
	int64_t throttled_until_ms; /* 0: not throttled */
	uint32_t strikes;       /* throttle replies since the last success */
};

/* addrs: the source address pool (copied); naddrs 0: one entry "" (the
 * kernel chooses). now_ms: the buckets start full at this time. Returns NULL
 * on allocation failure. */
struct governor *governor_new(const char *network,
			      const struct governor_limits *lim,
			      const char *const *addrs, size_t naddrs,
			      int64_t now_ms);
void governor_free(struct governor *g); /* accepts NULL; queue must be empty */

const char *governor_network(const struct governor *g);
size_t governor_naddrs(const struct governor *g);
/* Address i of the pool ("" for the kernel's choice). */
const char *governor_addr(const struct governor *g, size_t i);
/* Index of addr in the pool, or -1. */
int governor_find_addr(const struct governor *g, const char *addr);
size_t governor_queued(const struct governor *g);
/* Queued waiter i (0 <= i < governor_queued(), in no particular order). */
struct governor_waiter *governor_waiter_at(const struct governor *g, size_t i);
unsigned governor_in_use(const struct governor *g, size_t i);

/* Queue w (not queued yet) with its due time. Returns 0 or -ENOMEM. */
int governor_request(struct governor *g, struct governor_waiter *w,
		     int64_t wanted_at);
/* Take w out of the queue if it is queued (no-op otherwise). */
void governor_cancel(struct governor *g, struct governor_waiter *w);
static inline bool governor_waiting(const struct governor_waiter *w)
{
	return w->heap_pos != 0;
}

/* If the oldest waiter may connect at `now` (an address with a free slot, a
 * token and no throttle), take it out of the queue, spend the token, take
 * the slot and return it with its address index in *addr. NULL otherwise.
 * Address choice: the waiter's preferred address when it is eligible, else
 * the eligible one with the fewest connections (spreads the pool), then the
 * fullest bucket, then the lowest index. */
struct governor_waiter *governor_next(struct governor *g, int64_t now,
				      size_t *addr);
/* When governor_next() may succeed next: `now` if it would now, a later
 * time (a token refills or a throttle ends), or -1 if nothing is queued or
 * only a released slot can unblock the queue (governor_release()). */
int64_t governor_next_due(const struct governor *g, int64_t now);

/* A connection that never passed through governor_next() occupies address i
 * (adopted in a migration). Spends no token. */
void governor_occupy(struct governor *g, size_t i);
/* The connection on address i closed: its slot is free. */
void governor_release(struct governor *g, size_t i);

/* The network refused us for connecting too often / too many connections
 * from address i: the bucket is emptied and the address blocked for
 * base_ms * 2^(strikes) (capped at max_ms), strikes counted until
 * governor_success(). Returns the deadline. */
int64_t governor_throttle(struct governor *g, size_t i, int64_t now,
			  int64_t base_ms, int64_t max_ms);
/* A connection on address i registered: throttle strikes reset. */
void governor_success(struct governor *g, size_t i);

/* Migration: the state of bucket i at `now`, and a merge of a migrated
 * bucket into address i. The merge is conservative (the lower level after
 * both refilled up to now, the later throttle deadline, the higher strikes),
 * so a merged governor never allows more than either side would. */
void governor_bucket_get(const struct governor *g, size_t i, int64_t now,
			 struct governor_bucket_state *out);
void governor_bucket_merge(struct governor *g, size_t i, int64_t now,
			   const struct governor_bucket_state *in);

/* Why the oldest waiter is not connected at `now`, for the messages that
 * tell a waiting user and the operator (bouncer.c, `batonctl status`):
 *   GOV_WAIT_NONE       nothing is queued, or it may connect now;
 *   GOV_WAIT_SLOTS      every source address holds max_connections_per_ip
 *                       connections: only a closed connection, another
 *                       `bind` address or a higher limit lets it in (it
 *                       waits forever if the pool is smaller than the
 *                       sessions);
 *   GOV_WAIT_THROTTLED  every address with a free slot was refused by the
 *                       network (governor_throttle()) and is blocked;
 *   GOV_WAIT_PACED      an address is free but its connect bucket is
 *                       empty: the next token comes soon. */
enum governor_wait {
	GOV_WAIT_NONE = 0,
	GOV_WAIT_SLOTS,
	GOV_WAIT_THROTTLED,
	GOV_WAIT_PACED,
};
enum governor_wait governor_wait_reason(const struct governor *g, int64_t now);
const char *governor_wait_name(enum governor_wait w);
/* Sessions that can be connected at once: addresses x max_connections_per_ip
 * (0: no limit). */
unsigned governor_capacity(const struct governor *g);
int governor_max_per_addr(const struct governor *g);
/* Addresses blocked by a throttle at `now`. */
size_t governor_throttled(const struct governor *g, int64_t now);

/* ---- reply classification and backoff (pure helpers) ---- */

enum governor_verdict {
	GOV_NONE = 0,
	GOV_THROTTLE, /* too fast / too many connections: the address backs off */
	GOV_BAN,      /* K/G/Z/D-line, 465, 463: the session backs off long */
	GOV_AUTH,     /* SASL failed (sessiond/sasl.h): the session backs off long */
};
/* Classify a server line that ends a connection: command "ERROR" with its
 * text, or a numeric ("465", "463") with its text. */
enum governor_verdict governor_classify(const char *command, const char *text);

/* Exponential backoff with +-20% jitter: min_ms * 2^(failures-1), capped at
 * max_ms, failures >= 1 (0 is treated as 1). rnd: any random number. */
int64_t governor_backoff_ms(uint32_t failures, int64_t min_ms, int64_t max_ms,
			    uint32_t rnd);

#endif
