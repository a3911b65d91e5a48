/* sessiond/checkpoint.h: the worker's side of custody (docs/design.md §1,
 * "Custody"): the supervisor holds a duplicate of every live socket and a
 * log of every session's state, so that when this worker dies the next one
 * adopts the sessions instead of everyone reconnecting.
 *
 * Sockets. Every connection (conn.c) gets a custody id when it is built
 * (conn_new/conn_adopt) and its fd is duplicated into a CUSTODY message
 * (proto/control.proto) queued on the control channel without waiting
 * (control_queue_push_fds()); closing it queues a release of the id.
 *
 * The log. A memfd this worker creates, maps and hands to the supervisor
 * (first CUSTODY message), written with plain stores (no system call per
 * record). Layout (host byte order: only a process of the same host reads
 * it):
 *   header  CKPT_HEADER bytes: u32 magic CKPT_MAGIC, u32 version,
 *           u64 committed (bytes of records after the header that are
 *           whole: a record is written first, then committed, so a crash
 *           mid-record leaves it unread), u64 sessions recorded,
 *           i64 CLOCK_MONOTONIC ms of the last session record (status)
 *   records u32 type, u32 len, len bytes, padded to 8.
 * Record types (ids are custody ids, keys "user/network"):
 *   CKPT_SESSION  u32 nids, u32 keylen, u64 ids[nids], key, then a
 *                 state.proto Item exactly as a migration sends it (schema
 *                 1), whose fd_index i is the socket of ids[i]. Written at
 *                 the end of the loop iteration in which the session's
 *                 sockets changed (checkpoint_soon()), and after I/O at
 *                 most every [supervisor] custody_checkpoint_ms.
 *   CKPT_GONE     key: the session is no more.
 *   CKPT_READ     u64 id, u32 lines: a read of `lines` complete lines from
 *                 id, written before they are handled. The last record of
 *                 the log being a READ without its INPUT means the worker
 *                 died handling that input: the poison-pill marker.
 *   CKPT_INPUT    u64 id, then an encoded state.proto ConnRecovery
 *                 {input}: the unhandled input after that read.
 *   CKPT_WRITE    u64 id, then ConnRecovery {written, head}: how far the
 *                 stream got after the session's record.
 *   CKPT_DROP     u64 id, then ConnRecovery {drop}: the connection cannot
 *                 continue from what the log says (until a later CKPT_TLS
 *                 of the id says otherwise). A TLS connection writes one
 *                 before every recv() and every run of send()s, and a
 *                 CKPT_TLS after them: a crash in between (bytes that
 *                 may have left or entered the kernel unrecorded, a
 *                 record layer we cannot describe) closes it and counts
 *                 it, never resumes it with wrong sequence numbers.
 *   CKPT_TLS      u64 id, then ConnRecovery {written, head, input, tls}:
 *                 a TLS connection's whole position after a recv()+feed
 *                 (one before its lines are handled, its input without
 *                 them: a crash while handling them loses them, counted,
 *                 never handles them twice; another after if some stayed
 *                 unhandled) or after a run of send()s: its record
 *                 layer without record boundaries, so the sequence
 *                 numbers and keys (KeyUpdate included: the keys are in
 *                 every record), the partial record read (kept, not
 *                 refused: the window stays closed) and the ciphertext
 *                 not yet in the kernel (at most one application record,
 *                 conn.c encrypting one at a time under custody, and a
 *                 KeyUpdate or alert queued by a feed). Bounded
 *                 by CKPT_TLS_MAX. The latest one replaces every earlier
 *                 WRITE, INPUT and TLS record of the id and clears a DROP
 *                 before it.
 * The supervisor (supervisor/custody.h) concatenates a connection's
 * ConnRecovery records written after its session's record (protobuf
 * merges them: the latest of each field wins), then its latest CKPT_TLS
 * one, then drop if a DROP is the last word, into the item's Recovery
 * (with a CKPT_TLS last: drop and tls_resume, so that a release without
 * ConnRecovery.tls closes the connection rather than resume it with stale
 * sequence numbers).
 *
 * Compaction: once the log is past CKPT_COMPACT_MIN bytes and twice what
 * the live sessions' records take, a fresh memfd gets one record per
 * session and replaces the old one (a CUSTODY message with checkpoint).
 *
 * One per worker process (the event loop's thread only). Without
 * checkpoint_start() (custody off) every call below is a no-op.
 */
#ifndef BATON_SESSIOND_CHECKPOINT_H
#define BATON_SESSIOND_CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct bouncer;
struct control_queue;
struct conn;

#define CKPT_MAGIC 0x424b4331u /* "1CKB" */
#define CKPT_VERSION 1
#define CKPT_HEADER 64
#define CKPT_COMPACT_MIN (4u << 20)

enum ckpt_type {
	CKPT_SESSION = 1,
	CKPT_GONE = 2,
	CKPT_READ = 3,
	CKPT_INPUT = 4,
	CKPT_WRITE = 5,
	CKPT_DROP = 6,
	CKPT_TLS = 7,
};

/* The largest CKPT_TLS record (its ConnRecovery): one partial input record
 * (18 KiB at most), the unwritten ciphertext (one record under custody,
 * conn.c), the line buffer's rest (8.7 KiB) and the keys fit with room to
 * spare; a longer one (a peer's partial post-handshake message of up to
 * 128 KiB) is not written: a DROP instead. */
#define CKPT_TLS_MAX (64u << 10)

/* Start custody: create the log, hand it to the supervisor through q
 * (borrowed; it must outlive custody or checkpoint_stop() be called) and
 * write session records every interval_ms. 0 or -errno (custody stays off,
 * logged by the caller). Connections built before this call are not in
 * custody: call it before any socket exists. */
int checkpoint_start(struct event_base *base, struct bouncer *b,
		     struct control_queue *q, int interval_ms);
/* Custody ends (orphaned: the control channel is gone). */
void checkpoint_stop(void);
bool checkpoint_on(void);
/* checkpoint_start() for a worker adopted by a new supervisor (which holds
 * nothing): a fresh log and a fresh copy of every session's sockets. */
int checkpoint_restart(struct event_base *base, struct bouncer *b,
		       struct control_queue *q, int interval_ms);
/* Whether a conn's custody id belongs to the custody running now (not to
 * one stopped when the supervisor went away). */
bool checkpoint_id_current(uint64_t id);
/* Write the records due now, without waiting for the timer: right after a
 * migration committed here (adopted sessions have none yet; a crash before
 * the next tick would lose them all). */
void checkpoint_now(void);
/* The same at the end of this loop iteration: a session's structure
 * changed (a socket opened or closed, a client attached). Its record must
 * not wait for the timer: custody closes a held socket no record names. */
void checkpoint_soon(void);

/* A session's state changed in a way a crash must not lose for up to
 * custody_checkpoint_ms (its upstream registered, it joined or left a
 * channel): its record is written at the end of this loop iteration, as
 * for a socket change. Without custody a no-op. */
struct session;
void checkpoint_session_changed(struct session *s);

/* Hooks of conn.c. */
uint64_t checkpoint_conn_opened(int fd);  /* the custody id, 0: off */
void checkpoint_conn_closed(uint64_t id);
void checkpoint_conn_read(uint64_t id, uint32_t lines);
void checkpoint_conn_input(uint64_t id, const void *in, size_t len);
void checkpoint_conn_wrote(uint64_t id, uint64_t written, const void *head,
			   size_t headlen);
void checkpoint_conn_drop(uint64_t id);
/* TLS: the connection's whole position after a read or a write, as one
 * CKPT_TLS record: written and head as checkpoint_conn_wrote(), in the
 * unhandled input, and t's record layer (tls_record_save_progress()).
 * 0, or -errno (-EMSGSIZE past CKPT_TLS_MAX, -ENOMEM, -EPIPE for a dead
 * layer): nothing written, the caller records a DROP. */
struct tls_record;
int checkpoint_conn_tls(uint64_t id, uint64_t written, const void *head,
			size_t headlen, const void *in, size_t inlen,
			const struct tls_record *t);

/* Figures for STATUS (custody object of batonctl status). */
struct checkpoint_stats {
	uint64_t fds, sessions, bytes; /* held ids, sessions recorded, log size */
	int64_t age_ms;                 /* since the last session record */
	uint64_t records, session_records, compactions;
};
void checkpoint_stats(struct checkpoint_stats *out);

#endif
