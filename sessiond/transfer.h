/* sessiond/transfer.h: one side of a migration of this worker's items
 * (sessions and pending clients, sessiond/bouncer.h) over a handoff channel
 * (handoff/protocol.h). The source freezes, serializes and sends its items in
 * chunks; the target adopts them. Each side reports progress and one final
 * result through the callbacks, which sessiond/control_channel.c forwards to the
 * supervisor.
 *
 * Ownership: a transfer owns itself, the channel and the peer pidfd from
 * a successful *_start() until it has called report->finished (once),
 * after which it is gone; the items stay the bouncer's throughout (frozen
 * ones are thawed or released by the transfer, never freed by it).
 *
 * Fault injection for the integration tests: when the environment names a
 * file in BATON_FAULT_FILE and it holds a line "ROLE:POINT" or
 * "ROLE:POINT@CHUNK" (default chunk 0), the migration applies that fault
 * (tests/integration/test_faults.py; README "Testing").
 */
#ifndef BATON_SESSIOND_TRANSFER_H
#define BATON_SESSIOND_TRANSFER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct event_base;
struct bouncer;
struct transfer;

struct transfer_result {
	bool committed;
	char reason[256];
	uint32_t sessions, connections, fds;
	double freeze_max_ms, total_ms;
	/* the longest chunk freeze, split (source): freeze + serialize,
	 * target adopt until PREPARED, COMMIT until COMMITTED */
	double freeze_serialize_ms, freeze_prepare_ms, freeze_commit_ms;
	uint32_t chunks, chunks_committed;
	/* source: connections left behind because their TLS handshake was
	 * still running after handshake_budget_ms (closed, counted) */
	uint32_t handshakes_left;
	/* source: sessions whose state was over what one message carries and
	 * was shrunk to fit (bouncer_item_serialize_within()): how many, and
	 * the backlog lines, clients and member lists they gave up. Done in
	 * this process whatever the outcome. */
	uint32_t shrunk_sessions, shrunk_lines, shrunk_clients, shrunk_member_lists;
	/* source: bytes of state written (every item sent), and the backlog
	 * lines that stayed in the store (schema 3) */
	uint64_t state_bytes, lines_in_store;
};

/* Which sessions a partial move (a canary's) takes: those whose user is in
 * users, or whose network is in networks, or whose user falls below
 * percent_x100 in common/cohort.h. Borrowed for transfer_out_start() only
 * (copied). A partial move leaves pending clients and the listeners here
 * and this worker keeps serving; NULL selector: a full migration. */
struct transfer_select {
	char **users;
	size_t nusers;
	char **networks;
	size_t nnetworks;
	uint32_t percent_x100;
};

struct transfer_report {
	void (*progress)(void *arg, uint32_t done, uint32_t total);
	/* Called once; the migration object is freed right after it returns. */
	void (*finished)(void *arg, const struct transfer_result *res);
	void *arg;
};

/* Start sending every item of b (channel ownership transferred). Returns 0
 * (report->finished follows) or -errno (nothing was frozen). */
/* A chunk holds at most chunk_items items and closes early once its
 * serialized state reaches chunk_bytes; an item bigger than chunk_bytes
 * travels alone in its chunk. Every item's state is made to fit one
 * message (bouncer_item_serialize_within()), so one oversized session never
 * fails the migration of everyone. */
/* peer_pidfd: the target's pidfd from the supervisor, or -1 (ownership
 * transferred, like channel). handshake_budget_ms: TLS handshakes in
 * progress get this long to finish before the first freeze (0: no wait);
 * those still running then stay behind (result: handshakes_left).
 * schema: the state schema to write (sessiond/state.h; 1: what every
 * release reads, 2: member lists shared per chunk), the supervisor's
 * choice from both workers' ranges (control.proto Migrate.schema). */
int transfer_out_start(struct event_base *base, struct bouncer *b, int channel,
		      pid_t peer_pid, int peer_pidfd, int timeout_ms,
		      unsigned chunk_items, size_t chunk_bytes,
		      int handshake_budget_ms, unsigned schema,
		      const struct transfer_select *sel,
		      const struct transfer_report *report);

/* Start receiving items into b (channel ownership transferred). */
/* partial: a canary's move (this worker keeps what it has and serves the
 * sessions as they arrive; the reconnect governors are released at the
 * end instead of waiting for ACCEPT). */
int transfer_in_start(struct event_base *base, struct bouncer *b, int channel,
		     int timeout_ms, bool partial,
		     const struct transfer_report *report);

/* The fault named for `role` ("source"/"target") in BATON_FAULT_FILE, or NULL.
 * Returns a static string. */
const char *transfer_fault(const char *role);

#endif
