/* sessiond/conn.h: a line-oriented, non-blocking TCP connection on a raw fd.
 *
 * The input and output byte buffers are ours (no bufferevent) so that a
 * migration can serialize them exactly: conn_input()/conn_output() expose the
 * unprocessed input (a partial line and any complete lines not yet handed
 * out) and the unwritten output.
 *
 * Life cycle: conn_new()/conn_adopt() build a connection with no event armed;
 * conn_arm() adds the events; conn_freeze() removes them (no read or write
 * afterwards); conn_release() closes the fd and frees, sending nothing.
 *
 * Closing from inside a callback is safe: conn_close() marks the connection
 * dead (no further I/O, no further line callbacks) and the owner's close
 * callback runs later from the event loop, at a safe point, where the owner
 * frees it with conn_release().
 *
 * fd ownership: conn_new()/conn_adopt() take the fd in every case (also on
 * failure); conn_release() closes it.
 */
#ifndef BATON_SESSIOND_CONN_H
#define BATON_SESSIOND_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct conn;
struct health_link;
struct tls_record;
typedef struct ssl_ctx_st SSL_CTX;

#define CONN_MAX_LINE 8704             /* IRC_MAX_LINE: tags + message */
#define CONN_MAX_OUTPUT (4u << 20)     /* sendq bound: 4 MiB */

struct conn_ops {
	/* One complete line, NUL-terminated, writable. Lines end at a CR or
	 * an LF (a bare CR ends a line, as on ircds; the terminators are not
	 * part of it) and carry no NUL byte (dropped); empty lines are not
	 * reported. May call conn_close() or conn_send() on any connection. */
	void (*line)(struct conn *c, char *line, size_t len, void *arg);
	/* A connect in progress finished successfully (optional). */
	void (*connected)(struct conn *c, void *arg);
	/* The connection is dead (reason is a short text: "connection reset
	 * by peer", "sendq exceeded", ...). Runs from the event loop, never
	 * from inside another callback of this conn. The owner must call
	 * conn_release() (now or later) and not use the conn for I/O. */
	void (*closed)(struct conn *c, const char *reason, void *arg);
	/* Optional: the unwritten output fell below the low-water mark of a
	 * conn_watch_drain() (one-shot). Runs from the event loop; may call
	 * conn_send() (also past the mark) or conn_close(), must not release
	 * c. */
	void (*drained)(struct conn *c, void *arg);
	/* Optional: the TLS handshake of conn_start_tls() completed; lines
	 * flow from now on (conn_tls_info() describes the session). */
	void (*tls_ready)(struct conn *c, void *arg);
	/* Custody (sessiond/checkpoint.h): no copy of the socket goes to the
	 * supervisor until conn_custody_start() (a client: at login, so
	 * strangers' connections cannot fill the supervisor's fd table). */
	bool custody_deferred;
};

/* TLS handshakes that do not complete in this long close the connection
 * (unless conn_set_handshake_timeout() says otherwise: ircs clients get
 * [listen] tls_handshake_timeout). */
#define CONN_TLS_HANDSHAKE_TIMEOUT_S 30

/* A new connection on fd (non-blocking is set here). connecting: a
 * non-blocking connect() is in progress (EV_WRITE completes it).
 * Returns NULL on allocation failure (fd closed). */
struct conn *conn_new(struct event_base *base, int fd, bool connecting,
		      const struct conn_ops *ops, void *arg);

/* Same as conn_new() with restored buffers (copied). Buffers that no
 * connection of ours can hold are refused (conn_check_restore()): NULL with
 * errno EMSGSIZE (fd closed); NULL with errno ENOMEM on allocation failure. */
struct conn *conn_adopt(struct event_base *base, int fd, bool connecting,
			const void *in, size_t inlen, const void *out,
			size_t outlen, const struct conn_ops *ops, void *arg);

/* Could a connection hold these restored buffers? 0, or -EMSGSIZE: output
 * over the sendq bound (CONN_MAX_OUTPUT), or input whose unterminated tail
 * (after the last CR or LF) is over CONN_MAX_LINE. conn_adopt() applies it;
 * callers may check before taking any fd. */
int conn_check_restore(const void *in, size_t inlen, size_t outlen);

/* Change the callback argument (e.g. a pending client becoming attached). */
void conn_set_arg(struct conn *c, void *arg);

/* Add events (read, and write when output is pending or a connect is in
 * progress). Complete lines already buffered are processed from the event
 * loop right after (not inside this call). */
void conn_arm(struct conn *c);

/* Remove all events. flush: first write what the socket takes without
 * blocking (one attempt). No byte is read or written afterwards. */
void conn_freeze(struct conn *c, bool flush);

/* Append line + CRLF to the output buffer and arm EV_WRITE. A line longer
 * than CONN_MAX_LINE is truncated. Exceeding CONN_MAX_OUTPUT closes the
 * connection ("sendq exceeded"). Ignored on a dead connection. */
void conn_send(struct conn *c, const char *line);
void conn_sendf(struct conn *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Take back what was queued since stream offset `from` (a
 * conn_bytes_queued() value): labeled-response (client.c) rewrites a
 * command's reply lines before any of them leaves. Copies those bytes
 * (whole lines with their CRLF) into *out (malloc'd, the caller frees;
 * NULL with *len 0 when nothing was queued since) and removes them from
 * the output and from conn_bytes_queued(). -EAGAIN when part of them was
 * written already (conn_close() with flush), -ENOMEM; then nothing
 * changes. Only between the queueing and the next write: the caller's
 * same synchronous step. */
int conn_take_queued(struct conn *c, uint64_t from, char **out, size_t *len);

/* Input flow control: while held, nothing is read from the socket and no
 * line callback runs (lines already buffered wait); releasing reads again
 * and hands the buffered lines out from the event loop (not inside this
 * call). Used while a pending client's password is checked off the loop.
 * Kept across conn_freeze()/conn_arm(); not part of a migration. */
void conn_hold_lines(struct conn *c, bool hold);

/* Health checks (sessiond/health.h): every line queued from now on is
 * validated against l's peer (network or client) and, to a network, a
 * "PONG" answers the link's pending PINGs; lines read from a network link
 * start a read batch (relay latency). l (not owned) must outlive the
 * connection or be unset (NULL: no checks, the default). */
void conn_set_health(struct conn *c, struct health_link *l);

/* The sendq bound of this connection (0: CONN_MAX_OUTPUT): e.g. small for
 * clients that have not logged in. Checked by the next conn_send(). */
void conn_set_sendq(struct conn *c, size_t max_output);

/* The deadline of a TLS handshake started (or re-armed) after this call
 * (0: CONN_TLS_HANDSHAKE_TIMEOUT_S). */
void conn_set_handshake_timeout(struct conn *c, int ms);

/* Output flow control: the drained callback runs once (then the watch is
 * gone) as soon as the unwritten output is below low_water bytes: from the
 * event loop after a write, or on the next loop iteration if it already is
 * (also right after conn_arm() of a connection watched while frozen). Never
 * on a dead connection; ignored without a drained callback. A new call
 * replaces the mark. */
void conn_watch_drain(struct conn *c, size_t low_water);

/* Mark dead: no further I/O or line callbacks; the closed callback follows
 * from the event loop. flush: first try once to write pending output (used
 * for a final ERROR line). Idempotent (the first reason wins). Events of a
 * frozen connection are not re-added; its closed callback then runs once it
 * is armed again (or never, if it is released first). */
void conn_close(struct conn *c, const char *reason, bool flush);

/* Graceful end of our side: nothing more is queued (conn_send() is ignored
 * from now on); once the output buffer is written, shutdown(SHUT_WR) sends
 * our FIN after the last byte. Reading goes on (lines still reach the line
 * callback) until the peer closes (EOF: the closed callback runs and
 * conn_peer_closed() is true) or an error. An armed connection only. */
void conn_end_output(struct conn *c);

/* TLS. conn_start_tls(): OpenSSL runs a handshake on this connection
 * (handshake.h; client role with host for SNI/verification and an
 * optional "sha256:HEX" pin, or server role) before any line moves: output
 * queued meanwhile waits, and a connect in progress finishes first. Then
 * ops->tls_ready runs and every later byte goes through baton's record
 * layer (record.h), whose state conn_tls() exposes for a migration.
 * A failed or timed-out handshake closes the connection with a reason
 * that says why ("tls: certificate verify failed: ..."). The ctx is
 * referenced, not owned. -ENOMEM, or -EALREADY if TLS is already on.
 * close_notify: sent by conn_end_output() before our FIN and by
 * conn_close(flush); a peer's close_notify reads as the peer closing. */
int conn_start_tls(struct conn *c, SSL_CTX *ctx, bool server, const char *host,
		   const char *fingerprint);
/* Right after conn_adopt(): carry on with a restored record layer (taken;
 * plaintext it holds is handed out as lines once armed). */
void conn_attach_tls(struct conn *c, struct tls_record *t);
bool conn_in_handshake(const struct conn *c);
/* The record layer (NULL: plaintext, or still in the handshake). */
struct tls_record *conn_tls(const struct conn *c);
/* "TLSv1.3 TLS_AES_256_GCM_SHA384" (or "" without TLS). */
const char *conn_tls_info(const struct conn *c);

/* Close the fd and free. Sends nothing (no shutdown()). Accepts NULL. */
void conn_release(struct conn *c);
/* Close the fd now (nothing sent, no shutdown()), keep the memory for a
 * later conn_release(): a migration's source closes its copies of a
 * committed chunk's sockets at once and frees them after the migration
 * (sessiond/bouncer.h bouncer_item_release()). The connection must be
 * frozen (no event added). Accepts NULL; idempotent. */
void conn_close_fd_only(struct conn *c);

/* Delivery accounting. Two byte counters that only grow: bytes ever appended
 * to the output buffer ("queued") and bytes ever handed to the kernel
 * ("written"). An offset in that stream tells whether the peer has a byte:
 *
 * conn_bytes_queued(): the stream offset just past the last queued byte.
 * conn_bytes_acked(): how much of the stream the peer's TCP acknowledged:
 *   written minus the kernel's unacknowledged output (ioctl SIOCOUTQ). If
 *   the ioctl fails, best effort: every written byte counts as acknowledged.
 *   On a non-TCP socket (AF_UNIX: tests) every written byte counts: it is
 *   in the peer's receive queue, and closing our end does not take it back.
 *   Acknowledged is not read: a peer whose kernel took bytes that its
 *   application never read still counts them. Our FIN (conn_end_output())
 *   is not a stream byte and never counts.
 * conn_bytes_written(): the stream offset just past the last written byte.
 *
 * A connection adopted from a migration counts its restored output as
 * queued; conn_restore_in_flight() sets the origin so that offsets of the
 * previous process keep their meaning (see state.c). */
uint64_t conn_bytes_queued(const struct conn *c);
uint64_t conn_bytes_acked(const struct conn *c);
uint64_t conn_bytes_written(const struct conn *c);
/* Right after conn_adopt(): `in_flight` bytes written by the previous
 * process were unacknowledged when it serialized (they precede the restored
 * output in the stream): written = in_flight, queued = written + output. */
void conn_restore_in_flight(struct conn *c, uint64_t in_flight);

/* Before conn_release() of a connection that is going away for good (never
 * one whose socket another process keeps: the option is the socket's): if
 * the kernel still holds unacknowledged output, set SO_LINGER {1, 0} so the
 * close discards it with a RST instead of delivering it later. The caller
 * counted those bytes as not delivered (and will send them again elsewhere);
 * delivering them anyway would duplicate them. Output still in our buffer
 * is never sent after close either way. */
void conn_discard_unacked(struct conn *c);

/* Custody (sessiond/checkpoint.h): the id the supervisor holds this
 * socket under (0: none); whether it did I/O since the last session record
 * (checkpoint.c writes one then, and calls conn_checkpoint_taken()). */
uint64_t conn_custody_id(const struct conn *c);
/* Hand the supervisor its custody copy now if it has none yet (see
 * conn_ops.custody_deferred; a no-op with custody off). */
void conn_custody_start(struct conn *c);
bool conn_checkpoint_dirty(const struct conn *c);
void conn_checkpoint_taken(struct conn *c);

bool conn_is_dead(const struct conn *c);
/* The peer closed its side (a read returned EOF), as opposed to an error. */
bool conn_peer_closed(const struct conn *c);
bool conn_is_connecting(const struct conn *c);
int conn_fd(const struct conn *c);
const char *conn_close_reason(const struct conn *c);
const char *conn_input(const struct conn *c, size_t *len);
const char *conn_output(const struct conn *c, size_t *len);

/* "addr:port" of the peer / local end (static buffer per call site: the
 * result is copied into out[n]). Returns out ("" if unknown). */
char *conn_peer_name(const struct conn *c, char *out, size_t n);
char *conn_local_name(const struct conn *c, char *out, size_t n);

#endif
