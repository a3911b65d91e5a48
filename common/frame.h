/* common/frame.h: framed messages with attached fds over SOCK_SEQPACKET.
 *
 * Every datagram starts with a 16-byte header (all fields little endian):
 *
 *   0  u16 magic   0xBA70
 *   2  u8  version FRAME_VERSION
 *   3  u8  type    caller-defined (1..255; 0 is invalid)
 *   4  u16 flags   FRAME_F_MORE: another fragment of this message follows
 *   6  u16 nfds    fds attached to this datagram (first fragment only)
 *   8  u32 length  payload bytes in this datagram
 *  12  u32 total   payload bytes of the whole message (same in every fragment)
 *
 * A message larger than one datagram is sent as fragments of at most
 * FRAME_FRAGMENT bytes; the receiver reassembles them. fds ride on the
 * first fragment, at most FRAME_MAX_FDS (253, SCM_MAX_FD) per message.
 *
 * fd ownership: sending *borrows* the fds (the kernel duplicates them in
 * flight; the caller still owns and must close its copies). Receiving hands
 * every fd out exactly once in the message; on any error every fd received so
 * far is closed before returning. Received fds are O_CLOEXEC.
 *
 * Library code: returns 0 or a negative errno, never logs, never exits.
 */
#ifndef BATON_COMMON_FRAME_H
#define BATON_COMMON_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FRAME_MAGIC 0xBA70
#define FRAME_VERSION 1
#define FRAME_HEADER 16
#define FRAME_F_MORE 0x0001
#define FRAME_MAX_FDS 253
#define FRAME_FRAGMENT (60 * 1024)
#define FRAME_MAX_MESSAGE (16u * 1024 * 1024)

struct frame_msg {
	uint8_t type;
	uint8_t *data;       /* owned; NUL-terminated for convenience (not counted) */
	size_t len;
	int *fds;            /* owned, each fd handed out exactly once */
	size_t nfds;
	size_t fds_lost;     /* frame_recv_lossy() only: fds the sender attached
			      * that the kernel could not install (we were at
			      * our RLIMIT_NOFILE); always the last ones */
};

/* Send one message. `sock` may be blocking or non-blocking; for a
 * non-blocking socket the call waits with poll() up to `timeout_ms` in total
 * (-1: forever) for room. Returns 0, -EINVAL (bad arguments: type 0,
 * nfds > FRAME_MAX_FDS, len > FRAME_MAX_MESSAGE),
 * -ETIMEDOUT, -EPIPE / other -errno from sendmsg. */
int frame_send(int sock, uint8_t type, const void *data, size_t len,
		       const int *fds, size_t nfds, int timeout_ms);

/* Where a frame_send_nowait() of one message stands. Start from
 * { 0 }; the same message (type, data, len, fds) must be passed on every
 * call until it returns 0. */
struct frame_cursor {
	size_t off;   /* payload bytes already sent */
	bool started; /* the first fragment (with the fds) is sent */
};

/* Send the fragments of one message that fit now, never waiting.
 * Returns 0 when the whole message is sent; -EAGAIN when the socket is
 * full (cur says how far it got: call again when it is writable; nothing
 * was sent if !cur->started); -EINVAL as frame_send() (or a
 * cursor past the message); other -errno from sendmsg (the channel is
 * broken if cur->started: a message is partly sent). */
int frame_send_nowait(int sock, uint8_t type, const void *data,
			      size_t len, const int *fds, size_t nfds,
			      struct frame_cursor *cur);

/* Receive one whole message (all fragments). Waits up to `timeout_ms` in
 * total for the fragments after the first, and for the first too when the
 * socket is blocking (non-blocking socket with nothing queued: -EAGAIN at
 * once).
 * Returns 0 and fills *msg, or: -ECONNRESET (peer closed: orderly EOF),
 * -EPROTO (bad magic/version/type, length mismatch, truncated datagram
 * (MSG_TRUNC), MSG_CTRUNC, fds on a non-first fragment, fd count differing
 * from the header, message too large), -EAGAIN, -ETIMEDOUT, -errno. */
int frame_recv(int sock, struct frame_msg *msg, int timeout_ms);

/* frame_recv(), except that MSG_CTRUNC on the first fragment (the
 * receiver is at its fd limit: the kernel installed the first fds and
 * dropped the rest) is not an error: the message is returned with the fds
 * that arrived and msg->fds_lost saying how many did not. For messages
 * whose fds are expendable copies (CUSTODY): the caller checks fds_lost
 * for every other type. */
int frame_recv_lossy(int sock, struct frame_msg *msg, int timeout_ms);

/* Free data and close every fd still held in msg (set an fd to -1 to take
 * it). Accepts NULL. */
void frame_msg_clear(struct frame_msg *msg);

/* Take fd `i` out of msg (the message forgets it). Returns -1 if out of range
 * or already taken. */
int frame_msg_take_fd(struct frame_msg *msg, size_t i);

/* socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC) with both ends sized
 * for fragments. Returns 0 or -errno. */
int frame_socketpair(int sv[2]);

#endif
