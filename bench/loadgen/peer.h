/* peer: one IRC connection on the shared event loop (a libevent
 * bufferevent), line-oriented, answering PING itself.
 *
 * Callbacks: on_line(peer, line, len, arg) for every received line (CRLF
 * stripped, NUL-terminated, writable), on_close(peer, reason, arg) once when
 * the connection is lost from the other side (EOF, error, failed connect).
 * Our own peer_free() never calls on_close. A peer may be freed from inside
 * its own callbacks: the free is deferred until the callback returns.
 *
 * Memory: a bufferevent and its two evbuffers (a few hundred bytes idle);
 * input is consumed line by line, so only a partial line stays buffered. */
#ifndef LOADGEN_PEER_H
#define LOADGEN_PEER_H

#include <stddef.h>
#include <netinet/in.h>

struct event_base;
struct peer;

typedef void (*peer_line_cb)(struct peer *p, char *line, size_t len, void *arg);
typedef void (*peer_close_cb)(struct peer *p, const char *reason, void *arg);

/* Starts a non-blocking connect; NULL on immediate failure (errno set). */
struct peer *peer_connect(struct event_base *base, const struct sockaddr_in *addr,
			  peer_line_cb on_line, peer_close_cb on_close, void *arg);
/* Queues one line (CRLF appended). Returns 0, or -EPIPE on a dead peer. */
int peer_send(struct peer *p, const char *line, size_t len);
int peer_sendf(struct peer *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Sends our FIN once the queued output is written (shutdown(SHUT_WR));
 * reading continues until the other side closes (on_close). */
void peer_shutdown_write(struct peer *p);
/* Closes from our side at once; no callback follows. Accepts NULL. */
void peer_free(struct peer *p);
void peer_set_arg(struct peer *p, peer_line_cb on_line, peer_close_cb on_close, void *arg);
size_t peer_output_pending(const struct peer *p);
int peer_fd(const struct peer *p);

#endif
