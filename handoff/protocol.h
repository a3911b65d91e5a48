/* handoff/protocol.h: the two-phase, chunked migration of docs/design.md §2 over
 * one SOCK_SEQPACKET channel, driven by a libevent loop. No IRC knowledge:
 * an item is an opaque payload plus the fds that belong to it.
 *
 * Per chunk (its own transaction):
 *   source                         target
 *   BEGIN{chunk, items, fds}  -->
 *   ITEM{index, payload, fds}* -->  ops->prepare() per item (no I/O on fds)
 *   END{chunk}                -->
 *                             <--  PREPARED{chunk}   (or ABORT{reason})
 *   COMMIT{chunk}             -->
 *                             <--  COMMITTED{chunk}, then ops->commit():
 *                                  arm and resume
 *   (source closes its copies)
 * and, after the last chunk, DONE{chunks}.
 *
 * Pipelined (handoff_source_set_pipeline()), the source sends BEGIN{k+1}
 * right behind COMMIT{k}, while the target acknowledges and arms chunk k:
 *   COMMIT{k}, BEGIN{k+1}, ITEM*, END{k+1}  -->
 *                             <--  COMMITTED{k}, PREPARED{k+1}
 * The target's view is unchanged (every message in the same order), so a
 * target of any release takes it.
 *
 * Invariants kept here (tests/unit/handoff prove them):
 *  - The source never reports a chunk aborted before ABORT is queued on the
 *    channel, or, when it cannot be queued within the timeout, before the
 *    target process is known dead (kill + pidfd). So a target that holds
 *    PREPARED and sees EOF without COMMIT or ABORT may commit on its own.
 *  - Every message is validated exactly: phase, chunk number, item index
 *    order, item count, per-item and total fd counts. Anything else is a
 *    protocol error: the target aborts the chunk (closing every fd it
 *    received) and sends ABORT; the source aborts the chunk.
 *  - The target performs no I/O on adopted fds before commit, and commits
 *    only once COMMITTED is queued. So the source, having sent COMMIT,
 *    resumes when the target dies before acknowledging (EOF without
 *    COMMITTED: the target never touched the sockets), and when the
 *    acknowledgement times out it first kills the target and waits until
 *    it is gone. A target dying between PREPARED and arming costs nothing.
 *  - In PREPARED state the target waits for COMMIT, ABORT or EOF without a
 *    timeout (only the source may decide); otherwise each wait is bounded by
 *    timeout_ms.
 *
 * Library code: no logging above debug, never exits; errors are -errno.
 */
#ifndef BATON_HANDOFF_PROTOCOL_H
#define BATON_HANDOFF_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/frame.h"

struct event_base;

/* Frame types used on a migration channel (common/frame.h `type`). */
enum handoff_type {
	HANDOFF_BEGIN = 1,
	HANDOFF_ITEM = 2,
	HANDOFF_END = 3,
	HANDOFF_PREPARED = 4,
	HANDOFF_COMMIT = 5,
	HANDOFF_ABORT = 6,
	HANDOFF_DONE = 7,
	HANDOFF_COMMITTED = 8,
};

/* Phases reported to an optional observer (logging, metrics, and the fault
 * injection of the integration tests: sessiond's BATON_FAULT). The observer
 * runs synchronously at that point of the protocol and must not free the
 * source or target. */
enum handoff_phase {
	HANDOFF_PHASE_BEGIN_SENT = 1,      /* source, after BEGIN is queued */
	HANDOFF_PHASE_END_SENT,            /* source, after END is queued */
	HANDOFF_PHASE_PREPARED_RECEIVED,   /* source, before COMMIT is sent */
	HANDOFF_PHASE_COMMIT_SENT,         /* source */
	HANDOFF_PHASE_BEGIN_RECEIVED,      /* target */
	HANDOFF_PHASE_END_RECEIVED,        /* target, all items prepared */
	HANDOFF_PHASE_PREPARED_SENT,       /* target */
	HANDOFF_PHASE_COMMIT_RECEIVED,     /* target, before ops->commit */
};
typedef void (*handoff_phase_fn)(void *arg, enum handoff_phase phase,
				 uint32_t chunk);

/* The largest payload one ITEM can carry: its frame holds the protobuf Item
 * (index, fd count, payload) within FRAME_MAX_MESSAGE, at most
 * 1 + 5 + 1 + 5 + 1 + 4 bytes more than the payload. */
#define HANDOFF_ITEM_MAX_PAYLOAD (FRAME_MAX_MESSAGE - 32)

/* ---- source ---- */

struct handoff_source;

/* One item of a chunk. payload and fds are borrowed for the duration of
 * handoff_source_send_chunk(); the source keeps owning its fds until the
 * chunk is committed (then it closes them itself) or aborted (then it
 * resumes with them). */
struct handoff_item {
	const void *payload;
	size_t len;
	const int *fds;
	size_t nfds; /* <= FRAME_MAX_FDS */
};

/* Outcome of one chunk: result 0 = committed (COMMITTED arrived; the caller
 * now closes its copies and forgets the items), negative errno = aborted
 * (the caller unfreezes the items and keeps serving); reason is a short
 * human-readable text (never NULL). Called exactly once per successfully
 * started chunk, from the event loop (never from inside send_chunk). */
typedef void (*handoff_source_cb)(struct handoff_source *src, uint32_t chunk,
				  int result, const char *reason, void *arg);

/* channel: one end of the migration socketpair; ownership transferred (closed
 * by handoff_source_free). peer_pid: the target's pid (0 if unknown; used only
 * for the kill-before-resume fallback). timeout_ms bounds each send and each
 * wait for PREPARED or COMMITTED. */
struct handoff_source *handoff_source_new(struct event_base *base, int channel,
					  pid_t peer_pid, int timeout_ms,
					  handoff_source_cb cb, void *arg);

/* Send one chunk (BEGIN, ITEMs, END) now, synchronously (bounded by
 * timeout_ms), then wait asynchronously for the answer. Only one chunk may be
 * outstanding, or two with pipelining (handoff_source_set_pipeline(): the
 * second only once COMMIT of the first is out). Returns 0 when the chunk went out (cb follows), or -errno when
 * it could not be sent (no cb follows; ABORT was sent or the target killed as
 * for any abort: the caller unfreezes now). -EBUSY if a chunk is outstanding;
 * -EPIPE once the channel is dead. */
int handoff_source_send_chunk(struct handoff_source *src,
			      const struct handoff_item *items, size_t n);

/* Pipelining. Without it a source is stop-and-wait: the next chunk goes out
 * after the outstanding one's COMMITTED. With it, `fn` is called (from the
 * event loop, like cb) as soon as COMMIT{chunk} is queued, and the caller may
 * then send chunk + 1 at once, while the target acknowledges and arms
 * `chunk` and before COMMITTED{chunk} is read: a window of two chunks.
 * The target sees exactly the messages of a stop-and-wait source in the
 * same order (COMMIT{k} before BEGIN{k+1}), so every target of every
 * release takes it; nothing is negotiated. Guarantees kept:
 *  - cb reports chunks in order, each exactly once; chunk + 1 is never
 *    reported before `chunk`.
 *  - A failure while both are out reports `chunk` as before (committed if
 *    COMMITTED{chunk} is in, else as for any chunk after COMMIT), then
 *    chunk + 1 aborted, after ABORT{chunk + 1} is queued or the target is
 *    known dead (it never got a COMMIT, so it can only be resumed).
 *  - If chunk + 1 cannot be sent, send_chunk returns -errno for it as
 *    always (the caller thaws it now); `chunk` still gets its cb, and no
 *    chunk follows (the source ends after it).
 * fn may be NULL (stop-and-wait). */
typedef void (*handoff_source_ready_fn)(struct handoff_source *src,
					uint32_t chunk, void *arg);
void handoff_source_set_pipeline(struct handoff_source *src,
				 handoff_source_ready_fn fn, void *arg);

/* Whether the outstanding chunk's COMMITTED is already on the channel,
 * unread (a peek, nothing consumed; cb still reports it from the loop). A
 * pipelining caller busy with the next chunk uses it to see when the
 * previous chunk's freeze really ended: the target arms right after
 * queueing COMMITTED. */
bool handoff_source_committed_queued(struct handoff_source *src);

/* No more chunks: send DONE. Returns 0 or -errno. */
int handoff_source_finish(struct handoff_source *src);

void handoff_source_set_phase_hook(struct handoff_source *src,
				   handoff_phase_fn fn, void *arg);

/* The target's pidfd (ownership transferred), used to kill the target and
 * confirm its death when an abort cannot otherwise be made safe. Open it in
 * the target's parent before the target can be reaped (the supervisor does),
 * so it can never name a recycled pid; without it the source falls back to
 * pidfd_open(peer_pid) at kill time. */
void handoff_source_set_peer_pidfd(struct handoff_source *src, int pidfd);

/* Accepts NULL. Never sends anything (an outstanding chunk must have been
 * resolved by cb, or the caller accepts that the target will see EOF). */
void handoff_source_free(struct handoff_source *src);

/* ---- target ---- */

struct handoff_target;

struct handoff_target_ops {
	/* Decode and build one item without any I/O on its fds. Takes
	 * ownership of fds[0..nfds) in every case (on error it must close
	 * them). Return 0, or -errno and a reason in reason[reason_len]
	 * (the chunk is then aborted). */
	int (*prepare)(void *arg, uint32_t chunk, uint32_t index,
		       const uint8_t *payload, size_t len, int *fds,
		       size_t nfds, char *reason, size_t reason_len);
	/* Arm and resume everything prepared in this chunk. */
	void (*commit)(void *arg, uint32_t chunk);
	/* Discard everything prepared in this chunk (closing its fds). */
	void (*abort)(void *arg, uint32_t chunk, const char *reason);
	/* The migration is over: result 0 after DONE (or after committing on
	 * EOF in PREPARED state), -errno otherwise. chunks_committed counts
	 * the committed chunks. No other op is called after done. */
	void (*done)(void *arg, int result, const char *reason,
		     uint32_t chunks_committed);
};

/* channel: ownership transferred. ops and arg must outlive the target. */
struct handoff_target *handoff_target_new(struct event_base *base, int channel,
					  int timeout_ms,
					  const struct handoff_target_ops *ops,
					  void *arg);
void handoff_target_set_phase_hook(struct handoff_target *t,
				   handoff_phase_fn fn, void *arg);
void handoff_target_free(struct handoff_target *t); /* accepts NULL */

#endif
