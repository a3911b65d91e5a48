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

struct event_base;
struct conn;

#define CONN_MAX_LINE 8704             /* IRC_MAX_LINE: tags + message */
#define CONN_MAX_OUTPUT (4u << 20)     /* sendq bound: 4 MiB */

struct conn_ops {
	/* One complete line (CR/LF stripped, NUL-terminated, writable). May
	 * call conn_close() or conn_send() on any connection. */
	void (*line)(struct conn *c, char *line, size_t len, void *arg);
	/* A connect in progress finished successfully (optional). */
	void (*connected)(struct conn *c, void *arg);
	/* The connection is dead (reason is a short text: "connection reset
	 * by peer", "sendq exceeded", ...). Runs from the event loop, never
	 * from inside another callback of this conn. The owner must call
	 * conn_release() (now or later) and not use the conn for I/O. */
	void (*closed)(struct conn *c, const char *reason, void *arg);
};

/* A new connection on fd (non-blocking is set here). connecting: a
 * non-blocking connect() is in progress (EV_WRITE completes it).
 * Returns NULL on allocation failure (fd closed). */
struct conn *conn_new(struct event_base *base, int fd, bool connecting,
		      const struct conn_ops *ops, void *arg);

/* Same as conn_new() with restored buffers (copied). */
struct conn *conn_adopt(struct event_base *base, int fd, bool connecting,
			const void *in, size_t inlen, const void *out,
			size_t outlen, const struct conn_ops *ops, void *arg);

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

/* Mark dead: no further I/O or line callbacks; the closed callback follows
 * from the event loop. flush: first try once to write pending output (used
 * for a final ERROR line). Idempotent (the first reason wins). Events of a
 * frozen connection are not re-added; its closed callback then runs once it
 * is armed again (or never, if it is released first). */
void conn_close(struct conn *c, const char *reason, bool flush);

/* Close the fd and free. Sends nothing (no shutdown()). Accepts NULL. */
void conn_release(struct conn *c);

bool conn_is_dead(const struct conn *c);
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
