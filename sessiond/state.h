/* sessiond/state.h: (de)serialization of bouncer items to/from
 * proto/state.proto Item — the heart of a hot upgrade.
 *
 * Serialization is deterministic: the same objects always give the same
 * bytes, and serialize -> adopt -> serialize is byte-identical (tested).
 * Connections refer to their sockets by fd_index: the position in the item's
 * fd array, which is [upstream (if any), clients in order] for a session and
 * [the socket] for a pending client.
 */
#ifndef BATON_SESSIOND_STATE_H
#define BATON_SESSIOND_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct baton_config;
struct bouncer;
struct bouncer_item;

/* ---- why every session can always migrate ----
 * A session travels as one ITEM: at most HANDOFF_ITEM_MAX_PAYLOAD bytes
 * (16 MiB - 32, handoff/protocol.h) and at most 253 fds
 * (FRAME_MAX_FDS).
 *
 * fds: the upstream and the attached clients, 1 + max_clients_per_session
 * <= 1 + 252 (the key's maximum; client.c refuses clients beyond it).
 *
 * Bytes, protobuf sizes of everything but the attached clients (a field is
 * a tag of 1 byte, 2 for field numbers >= 16, a length varint of 1-4 bytes
 * and its data; L = IRC_MAX_LINE = 8704 bounds every string taken from a
 * line, and a length below 16,384 takes 2 bytes):
 *   Item.session tag and length                               5
 *   scalars (STATE_SCALARS_MAX):                         53,577
 *     user, network (config section names, < 200)  2 x 203 = 406
 *     nick, user_modes, away, server_name, welcome,
 *     userhost                               6 x (L + 4) = 52,248
 *     myinfo (< 512: h_004), source_addr (an address) 515 + 49
 *     next_seq, reconnect_at_ms, reconnect_failures,
 *     backlog_evicted_seq                        11 + 11 + 6 + 12
 *     sasl_failure (< SASL_REASON_MAX = 300, sasl.c) 2 + 2 + 299,
 *     sasl_failure_at_ms 2 + 11                               316
 *     quarantined (custody) 2 + 1                                3
 *   isupport: SESSION_MAX_ISUPPORT x (3 + 510)               51,300
 *   caps (upstream, acknowledged): the 11 wanted caps (upstream.c,
 *     151 bytes with their tags and lengths)                     192
 *   channels: max_channels x STATE_CHANNEL_MAX (18,012): tag and
 *     length 5, name 3 + 510 (SESSION_MAX_CHANNEL_NAME), topic and
 *     setter 2 x (3 + L), topic_time 11, modes 2 + 63, 2 flags x 2
 *   members: member_list_bytes (session.c counts each member as its
 *     nick + SESSION_MEMBER_COST = 24 >= tag 1, length 2, nick 3 + n,
 *     prefixes 2 + 15; a rename over the bound drops that channel's list)
 *   backlog (backlog.c keeps every total after each store):
 *     backlog_session_bytes (text of the lines + names of the buffers)
 *     + BACKLOG_LINE_OVERHEAD (28) x backlog_session_lines
 *     + STATE_BUFFER_OVERHEAD (42) x backlog_buffers (tag and length 6,
 *       the name's tag and length 3, dropped_seq 11, schema 3's
 *       stored_from and stored_to 2 x 11)
 *   positions: SESSION_MAX_POSITIONS x (2 + 2 + 64 + 11) = 64 x 79 = 5,056
 *   upstream connection: STATE_CONN_MAX = 4,785,403:
 *     tag and length 5; role, fd_index, addresses (2 x 81), reg_phase,
 *     caps (the wanted ones and "sasl"), 5 times, flags (+ sasl_state: 3),
 *     transport, TLS tag and length: 439;
 *     nick_attempt L;
 *     input < 64 KiB: a frozen connection holds at most one read
 *       (its buffer grows to the power of two above a partial line + 16 KiB)
 *       and a partial line (< CONN_MAX_LINE: longer ones close it);
 *     output + TLS ciphertext: CONN_MAX_OUTPUT (4 MiB; conn_send()
 *       refuses beyond: "sendq exceeded") + 320 KiB + 1 KiB: ciphertext is
 *       made a 64 KiB slice at a time, only when none is waiting, and
 *       reading stops while 256 KiB of it wait (KeyUpdate answers);
 *     the rest of the TLS state, 187,711: keys 2 x 111, partial record
 *       18,437 + 4, undelivered plaintext 16,896 + 4, partial
 *       post-handshake message 131,584 + 4 (record.c MAX_HS_MSG),
 *       record boundaries 2 x 10,244, counters and flags < 150.
 * state_bound() adds these up for a config; at the defaults (250
 * channels, 2 MiB of member lists, 4 MiB / 20,000 lines / 100 buffers of
 * backlog):
 *   5 + 53,577 + 51,300 + 192 + 250 x 18,012 + 2,097,152 + 4,194,304
 *   + 28 x 20,000 + 42 x 100 + 5,056 + 4,785,403 = 16,254,189 bytes,
 * 522,995 below HANDOFF_ITEM_MAX_PAYLOAD (16,777,184). The worker's
 * preflight refuses a config whose bound is over it
 * (state_check_config()); tests/unit/sessiond/test_bigstate.c builds a
 * session at every bound and checks that it serializes within
 * state_bound().
 *
 * Not in the bound: the attached clients (each a connection as above plus
 * its client name, nick, user and delivery marks) and the governors'
 * snapshot that rides on one item. A session whose clients' output does not
 * fit is shrunk (bouncer_item_serialize_within(): its clients with the most
 * unwritten output are disconnected first), and the snapshot waits for an
 * item with room for it. Unknown fields kept from a newer sender add what
 * that sender added (its own state fitted its own message). */
#define STATE_SCALARS_MAX 53577
#define STATE_ISUPPORT_MAX 51300
#define STATE_CAPS_MAX 192
#define STATE_CHANNEL_MAX 18012
#define STATE_BUFFER_OVERHEAD 42
#define STATE_POSITIONS_MAX 5056
#define STATE_CONN_MAX 4785403

/* The largest serialized session (without its clients) that cfg's bounds
 * allow (NULL: the defaults). */
size_t state_bound(const struct baton_config *cfg);
/* 0 if state_bound(cfg) fits one migration message, else -EMSGSIZE with
 * the numbers in why[n]. */
int state_check_config(const struct baton_config *cfg, char *why, size_t n);

/* ---- schemas ----
 * 1 (0.1.0): every session carries its channels' members (Channel.members).
 * 2: a session refers to the shared list of its network and channel
 *    (Channel.members_shared), which travels once per chunk in an item of
 *    member lists (Item.member_lists) ahead of the sessions. Written only
 *    when the supervisor says the receiver reads it (control.proto
 *    Migrate.schema); every build reads both. */
#define STATE_SCHEMA_INLINE 1
#define STATE_SCHEMA_SHARED 2
/* 3: with a store, a backlog buffer carries the lines its store has
 *    committed as a position, the range of seqs they span
 *    (Buffer.stored_from/stored_to), and inline only the others: lines
 *    still in the store's queue (not durable: they must travel) or not
 *    known to be in this worker's store (numbered by the backlog, or
 *    adopted from a migration). The receiver's backlog remembers the range
 *    (backlog.h) and a client's replay reads it back from the store
 *    (history.h), off the event loop, when the client needs it: adoption
 *    reads nothing. Without a store (ctx.store_durable 0) every line is
 *    inline, as in schema 2. */
#define STATE_SCHEMA_STORE_POS 3

struct shared_channel;
struct governor_snapshot;

/* What one serialization gets: the schema to write and the governors'
 * snapshot to carry (NULL: none; bouncer.c builds it when one is due).
 * state.c reads nothing else of the worker's state. */
struct state_ctx {
	unsigned schema;
	const struct governor_snapshot *governor;
	/* schema >= 3: the worker's store's durable seq (store_durable_seq():
	 * every line with a store seq up to it is committed); 0: no store,
	 * every backlog line inline */
	uint64_t store_durable;
	/* schema < 3 from a backlog that holds cold ranges (a schema-3
	 * adoption not read back yet): their lines, read from the store
	 * (history_cold_lines()), inlined into their buffers in seq order;
	 * sorted by (target, seq). NULL: none. */
	const struct state_cold_line *cold;
	size_t ncold;
	/* schema >= 2 without its shared member lists: every channel's
	 * members inline, as schema 1 (a record that must stand alone: a
	 * custody checkpoint) */
	bool members_inline;
};

/* One line of a cold range (history_cold_lines()); target is the store's
 * (history_fold_target() of the buffer's name). */
struct state_cold_line {
	uint64_t seq;
	int64_t time_ms;
	char *target, *line;
};

/* What it gives back (the caller adds the counts up). */
struct state_result {
	bool governor_sent; /* ctx->governor went into the item */
	/* a connection left out because its TLS handshake was still running
	 * (an upstream: the session travels without it and the new process
	 * connects again) */
	unsigned handshakes_left;
	/* schema 2: the shared lists the item refers to, to be written once
	 * in its chunk (state_serialize_lists()); malloc'd, the caller frees
	 * the array (the lists are the sessions'). */
	struct shared_channel **lists;
	size_t nlists;
	/* schema 3: backlog lines left out (committed in the store) */
	size_t lines_stored;
};

/* Pack a frozen item. *buf is malloc'd (caller frees). it->fds/it->nfds are
 * (re)built to list its sockets in fd_index order. Returns 0 or -errno
 * (*res then holds nothing to free). */
int state_serialize(struct bouncer_item *it, const struct state_ctx *ctx,
		    uint8_t **buf, size_t *len, struct state_result *res);

/* Pack shared member lists (schema 2) into as few items as fit `max` bytes
 * each: *bufs[0..*n) malloc'd (caller frees each and the arrays). A list
 * alone over max (it cannot be: the session bounds hold each list within
 * member_list_bytes, state_check_config()) is cut to fit, logged.
 * Returns 0 or -ENOMEM. */
int state_serialize_lists(struct shared_channel *const *lists, size_t nlists,
			  size_t max, uint8_t ***bufs, size_t **lens, size_t *n);

/* Decode and validate one item and build its objects (no I/O, no events
 * armed). Takes ownership of fds[0..nfds) in every case: on failure every fd
 * is closed. Returns 0 with *out set (state ITEM_ADOPTED, not registered in
 * the bouncer), or -errno with a reason in err[errlen]. Whether the session
 * already exists is the caller's check (bouncer.c).
 * An item of member lists (schema 2) builds them for the open chunk
 * (chanstore_incoming()) and sets *out to NULL. A session's shared
 * reference to a list its chunk did not bring, a list twice in a chunk, a
 * member twice in a list: refused. A list over this worker's bounds is
 * kept for the chunk, and each session that refers to it has the channel
 * untracked (as a schema-1 list over the bounds).
 * governor: the governors' snapshot the item carried, decoded (NULL if
 * none; caller frees with state_governor_free()), which the caller merges. */
int state_adopt(struct bouncer *b, const uint8_t *buf, size_t len, int *fds,
		size_t nfds, struct bouncer_item **out,
		struct governor_snapshot **governor, char *err, size_t errlen);

/* The governors' state of a migration (proto GovernorState), between
 * bouncer.c (which reads and merges the governors) and state.c. */
struct governor_snapshot_bucket {
	char *network, *addr;
	int64_t level;
	int64_t as_of_ms, throttled_until_ms; /* CLOCK_MONOTONIC ms (state.c converts) */
	uint32_t strikes;
	bool has_level, has_as_of_ms;
};
struct governor_snapshot {
	struct governor_snapshot_bucket *v;
	size_t n;
};
void state_governor_free(struct governor_snapshot *g); /* accepts NULL */

#endif
