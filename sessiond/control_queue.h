/* sessiond/control_queue.h: what this worker sends the supervisor on the
 * control channel (common/control.h), sent without ever waiting.
 *
 * Every message the worker sends from its event loop (STATUS, HEALTH,
 * PROGRESS, MIGRATION_RESULT) is packed and handed to this queue. What the
 * socket takes now goes out at once (fragment by fragment,
 * common/frame.h: frame_send_nowait()); the rest waits in order and
 * an EV_WRITE event sends it when the socket has room. A supervisor that
 * stops reading delays its own answers, never the worker's relay.
 *
 * Bound and policy. Every message is of one of two kinds:
 *  - CONTROL_QUEUE_SAMPLE (STATUS, HEALTH, PROGRESS of items_done): at most
 *    one of each type waits unsent. A newer sample replaces the waiting one
 *    of its type in place (same position: order relative to the other
 *    messages is kept); a sample whose first fragment left is never
 *    replaced. STATUS and PROGRESS figures are absolute, so only the latest
 *    matters. HEALTH carries differential delivery counts (health.h: building
 *    a sample consumes its interval), so replacing one would lose an
 *    interval: the caller asks control_queue_waiting() first and lets the
 *    waiting HEALTH answer the new request too (its interval just ends
 *    earlier; the next sample covers the rest). Samples therefore hold at
 *    most one message per type plus the one being sent.
 *  - CONTROL_QUEUE_MUST (MIGRATION_RESULT, the PROGRESS announcing
 *    source_sessions, anything else): never dropped nor coalesced. There are
 *    one or two per migration, and a worker runs one migration at a time,
 *    so they bound themselves; CONTROL_QUEUE_MUST_MAX_BYTES is a last line
 *    (-ENOBUFS past it, logged by the caller) against a bug. READY is not
 *    queued: it is sent before the event loop exists
 *    (control_channel_send_ready()).
 * At exit, control_queue_flush() waits (bounded) for what is still queued,
 * so a MIGRATION_RESULT queued just before an EXIT still leaves.
 *
 * A send error other than "full" (EPIPE: the supervisor is gone) breaks
 * the queue: everything queued is dropped, later pushes return -EPIPE (the
 * read side sees the EOF and the worker exits).
 *
 * The fd is borrowed (the control channel owns it). Not thread-safe: the
 * event loop's thread only.
 */
#ifndef BATON_SESSIOND_CONTROL_QUEUE_H
#define BATON_SESSIOND_CONTROL_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "common/control.h"

#define CONTROL_QUEUE_MUST_MAX_BYTES (64u * 1024 * 1024)

struct event_base;
struct control_queue;

enum control_queue_kind {
	CONTROL_QUEUE_SAMPLE,
	CONTROL_QUEUE_MUST,
};

struct control_queue_stats {
	size_t queued;      /* messages waiting (incl. one partly sent) */
	size_t queued_bytes;
	uint64_t sent;      /* messages sent whole */
	uint64_t replaced;  /* samples replaced by a newer one before leaving */
	uint64_t deferred;  /* messages that had to wait for room */
};

/* NULL with errno set on failure. */
struct control_queue *control_queue_new(struct event_base *base, int fd);
void control_queue_free(struct control_queue *q); /* drops what is queued; accepts NULL */

/* Pack msg and send or queue it. 0 (sent or queued), -EPIPE (broken,
 * see above), -ENOBUFS (CONTROL_QUEUE_MUST_MAX_BYTES), -ENOMEM,
 * -EINVAL. Never waits. */
int control_queue_push(struct control_queue *q, enum control_type type,
		       const ProtobufCMessage *msg,
		       enum control_queue_kind kind);

/* A CONTROL_QUEUE_MUST message with fds attached (custody): the fds are
 * taken in every case (closed once sent, or on failure). Same returns. */
int control_queue_push_fds(struct control_queue *q, enum control_type type,
			   const ProtobufCMessage *msg, int *fds, size_t nfds);

/* A sample of `type` is queued and not started (a push would replace it). */
bool control_queue_waiting(const struct control_queue *q,
			   enum control_type type);

/* Off the event loop only (exit): send what is queued, waiting at most
 * timeout_ms in total for room. 0 or -ETIMEDOUT / -errno (what is left is
 * dropped). */
int control_queue_flush(struct control_queue *q, int timeout_ms);

void control_queue_stats(const struct control_queue *q,
			 struct control_queue_stats *out);

#endif
