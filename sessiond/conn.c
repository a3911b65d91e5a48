/* sessiond/conn.c: see conn.h. */
#include "sessiond/conn.h"
#include "sessiond/checkpoint.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/sockios.h>

#include <event2/event.h>

#include "tls/handshake.h"
#include "tls/record.h"
#include "sessiond/fault.h"
#include "sessiond/health.h"

/* Bytes [off, len) of data are live. */
struct buf {
	char *data;
	size_t off, len, cap;
};

struct conn {
	struct event_base *base;
	int fd;
	struct event *rev, *wev;
	/* Deferred work run from the event loop: the closed callback of a
	 * dead connection, or processing lines buffered before conn_arm(). */
	struct event *defer;
	struct buf in, out;
	/* Stream offsets (conn.h, delivery accounting): only grow. */
	uint64_t queued_total, written_total;
	bool tcp; /* SIOCOUTQ counts unacknowledged bytes (conn_kernel_outq) */
	const struct conn_ops *ops;
	void *arg;
	struct health_link *hl; /* conn_set_health(); NULL: not checked */
	bool armed;
	bool connecting;
	bool dead;
	bool close_notified;
	bool in_lines; /* inside process_lines(): no nested processing */
	bool peer_eof;     /* recv() returned 0: the peer sent its FIN */
	bool output_ended; /* conn_end_output(): nothing more is queued */
	bool fin_sent;     /* shutdown(SHUT_WR) done after the last byte */
	bool held;         /* conn_hold_lines(): not reading, no line callbacks */
	size_t max_output; /* conn_set_sendq(); 0: CONN_MAX_OUTPUT */
	int hs_timeout_ms; /* conn_set_handshake_timeout(); 0: the default */
	bool drain_watch;  /* conn_watch_drain(): drained callback pending */
	size_t drain_low;  /* ... once the unwritten output is below this */
	/* TLS (conn_start_tls): while hs is set OpenSSL owns the socket's
	 * bytes and in/out wait; afterwards tls carries every byte: `out`
	 * holds plaintext not yet encrypted, the record layer the ciphertext
	 * not yet written. written_total counts plaintext given to it. */
	struct tls_handshake *hs;
	struct event *hs_timer;
	struct tls_record *tls;
	bool tls_close_sent;   /* close_notify queued */
	bool tls_read_paused;  /* too much ciphertext waiting: not reading */
	uint64_t tls_cipher_acked; /* highest ciphertext offset seen acked */
	bool tls_mid_line;     /* the last record ended inside a line */
	/* custody: the last read brought no plaintext (only part of a
	 * record), so no CKPT_TLS followed its DROP: a crash closes the
	 * connection rather than the log taking the partial record again at
	 * every byte a peer trickles (conn_tls_read) */
	bool tls_ckpt_skipped;
	char tls_info[96];
	char reason[160];
	/* custody (checkpoint.h): our id at the supervisor (0: none), the
	 * written_total of the last session record, I/O since it */
	uint64_t custody_id;
	uint64_t ckpt_base;
	bool ckpt_dirty;
};

static void buf_free(struct buf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

static void buf_compact(struct buf *b)
{
	if (b->off == 0)
		return;
	memmove(b->data, b->data + b->off, b->len - b->off);
	b->len -= b->off;
	b->off = 0;
}

static int buf_reserve(struct buf *b, size_t more)
{
	if (b->len + more <= b->cap)
		return 0;
	buf_compact(b);
	if (b->len + more <= b->cap)
		return 0;
	size_t cap = b->cap ? b->cap : 512;
	while (cap < b->len + more)
		cap *= 2;
	char *p = realloc(b->data, cap);
	if (!p)
		return -ENOMEM;
	b->data = p;
	b->cap = cap;
	return 0;
}

static int buf_append(struct buf *b, const void *p, size_t n)
{
	if (n == 0)
		return 0;
	if (buf_reserve(b, n) < 0)
		return -ENOMEM;
	memcpy(b->data + b->len, p, n);
	b->len += n;
	return 0;
}

static void conn_schedule_defer(struct conn *c)
{
	if (c->armed && c->defer)
		event_active(c->defer, 0, 0);
}

static void conn_mark_dead(struct conn *c, const char *reason)
{
	if (c->dead)
		return;
	c->dead = true;
	snprintf(c->reason, sizeof(c->reason), "%s", reason);
	if (c->rev)
		event_del(c->rev);
	if (c->wev)
		event_del(c->wev);
	conn_schedule_defer(c);
}

/* Output not yet on the socket: plaintext, plus ciphertext with TLS. */
static size_t unwritten(const struct conn *c)
{
	size_t cipher = 0;

	if (c->tls)
		(void)tls_record_output(c->tls, &cipher);
	return c->out.len - c->out.off + cipher;
}

/* Encrypt at most this much plaintext ahead of the socket: the rest stays
 * plaintext in `out`, where a migration carries it cheaply. */
#define CONN_TLS_SLICE 65536
/* Ciphertext the record layer may hold before we stop reading: our own
 * output is encrypted a slice at a time, so only a peer that makes us write
 * (KeyUpdate answers, alerts) and never reads gets here; reading resumes
 * once the socket took it. */
#define CONN_TLS_READ_PAUSE (256u << 10)

/* Custody, TLS (checkpoint.h CKPT_TLS): the connection's whole position,
 * the record layer included; `in` is the input left unhandled (NULL: the
 * line buffer as it is). A layer that cannot be recorded (dead, too large,
 * no memory) leaves a DROP as the last word: a crash closes it. */
static void conn_checkpoint_tls(struct conn *c, const char *in, size_t inlen)
{
	const char *rest = c->out.data ? c->out.data + c->out.off : "";
	size_t left = c->out.len - c->out.off, head = 0;

	if (c->custody_id == 0 || c->tls == NULL)
		return;
	c->ckpt_dirty = true;
	if (in == NULL) {
		in = c->in.data ? c->in.data + c->in.off : "";
		inlen = c->in.len - c->in.off;
	}
	if (left > 0 && c->tls_mid_line) {
		/* the rest of the line the last record cut (conn_checkpoint_wrote) */
		const char *nl = memchr(rest, '\n', left);

		head = nl ? (size_t)(nl - rest) + 1 : left;
	}
	if (checkpoint_conn_tls(c->custody_id, c->written_total - c->ckpt_base,
				rest, head, in, inlen, c->tls) < 0)
		checkpoint_conn_drop(c->custody_id);
}

/* TLS: write the record layer's ciphertext; encrypt more plaintext as the
 * socket takes it. Returns 0, or -errno (-EPROTO: the record layer is dead,
 * reason in c->reason via the caller).
 * Custody: one record is encrypted at a time (so what is produced and not
 * yet in the kernel, which CKPT_TLS carries, is at most one record), a DROP
 * is recorded before the first send() and the position after the last: the
 * write sequence number recorded is always that of records the kernel took
 * whole or whose rest is in the record. */
static int conn_tls_write_some(struct conn *c)
{
	size_t slice = c->custody_id ? TLS_RECORD_MAX_PLAINTEXT : CONN_TLS_SLICE;
	bool sending = false;
	int rc = 0;

	for (;;) {
		size_t clen;
		const uint8_t *cdata = tls_record_output(c->tls, &clen);

		if (clen == 0) {
			size_t plen = c->out.len - c->out.off;

			if (plen == 0 || c->tls_close_sent)
				break;
			if (plen > slice)
				plen = slice;
			if (tls_record_write(c->tls, c->out.data + c->out.off,
					     plen) != TLS_RECORD_OK) {
				rc = -EPROTO;
				break;
			}
			c->out.off += plen;
			c->written_total += plen;
			c->tls_mid_line = c->out.data[c->out.off - 1] != '\n';
			c->ckpt_dirty = true;
			continue;
		}
		if (c->custody_id && !sending)
			checkpoint_conn_drop(c->custody_id);
		sending = true;
		ssize_t n = send(c->fd, cdata, clen, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				rc = -errno;
			break;
		}
		tls_record_consume_output(c->tls, (size_t)n);
	}
	if (c->out.off == c->out.len)
		c->out.off = c->out.len = 0;
	if (sending)
		conn_checkpoint_tls(c, NULL, 0);
	return rc;
}

/* Custody: how far the stream got since the session's record, and the
 * rest of a line cut by a short write (so a new worker never starts the
 * next line inside it). */
static void conn_checkpoint_wrote(struct conn *c)
{
	const char *rest = c->out.data + c->out.off;
	size_t left = c->out.len - c->out.off, head = 0;

	if (c->custody_id == 0)
		return;
	c->ckpt_dirty = true;
	if (left > 0 && c->out.off > 0 && c->out.data[c->out.off - 1] != '\n') {
		const char *nl = memchr(rest, '\n', left);

		head = nl ? (size_t)(nl - rest) + 1 : left;
	}
	checkpoint_conn_wrote(c->custody_id, c->written_total - c->ckpt_base,
			      rest, head);
}

/* One non-blocking attempt to write pending output. Returns 0, or -errno
 * for a hard error (the caller closes). */
static int conn_write_some(struct conn *c)
{
	if (c->hs)
		return 0; /* the handshake comes first; output waits */
	if (c->tls)
		return conn_tls_write_some(c);
	while (c->out.len > c->out.off) {
		ssize_t n = send(c->fd, c->out.data + c->out.off,
				 c->out.len - c->out.off, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return -errno;
		}
		c->out.off += (size_t)n;
		c->written_total += (uint64_t)n;
		conn_checkpoint_wrote(c);
	}
	c->out.off = c->out.len = 0;
	return 0;
}

static void conn_write_failed(struct conn *c, int rc)
{
	char why[160];

	if (rc == -EPROTO && c->tls)
		snprintf(why, sizeof(why), "tls: %s",
			 tls_record_error(c->tls) ? tls_record_error(c->tls) : "cannot encrypt");
	else
		snprintf(why, sizeof(why), "write error: %s", strerror(-rc));
	conn_mark_dead(c, why);
}

/* After conn_end_output(), once every queued byte is written: our FIN. */
static void conn_maybe_shutdown(struct conn *c)
{
	if (!c->output_ended || c->fin_sent || c->dead || c->connecting ||
	    c->hs || c->out.len > c->out.off)
		return;
	if (c->tls && !c->tls_close_sent) {
		/* close_notify after the last byte, then our FIN. */
		tls_record_close(c->tls);
		c->tls_close_sent = true;
		(void)conn_write_some(c);
	}
	if (unwritten(c) > 0) {
		if (c->armed)
			event_add(c->wev, NULL);
		return;
	}
	c->fin_sent = true;
	if (shutdown(c->fd, SHUT_WR) < 0 && errno != ENOTCONN) {
		char why[128];
		snprintf(why, sizeof(why), "shutdown: %s", strerror(errno));
		conn_mark_dead(c, why);
	}
}


/* Length of the line at p (up to its CR or LF), or avail if unterminated. */
static size_t line_length(const char *p, size_t avail)
{
	size_t n = 0;

	while (n < avail && p[n] != '\r' && p[n] != '\n')
		n++;
	return n;
}

static void conn_process_lines(struct conn *c)
{
	/* A line is copied out and consumed before its callback runs, so a
	 * freeze inside the callback serializes only what is still unread.
	 * A bare CR ends a line like an LF does (as ircds do), and NUL bytes
	 * are dropped: no line handed out holds a CR, an LF or a NUL, so none
	 * can reach the backlog or the state (whose adopter refuses line
	 * breaks: one such line would veto every migration). */
	char line[CONN_MAX_LINE + 1];

	if (c->in_lines)
		return;
	c->in_lines = true;
	if (c->hl && c->hl->peer == HEALTH_PEER_NETWORK && c->in.len > c->in.off)
		health_read_batch(c->hl->h);
	while (!c->dead && c->armed && !c->held && c->in.len > c->in.off) {
		char *start = c->in.data + c->in.off;
		size_t avail = c->in.len - c->in.off;
		size_t n = line_length(start, avail);
		if (n == avail) {
			if (avail > CONN_MAX_LINE)
				conn_mark_dead(c, "line too long (max 8704 bytes)");
			break;
		}
		c->in.off += n + 1;
		if (n > CONN_MAX_LINE) {
			conn_mark_dead(c, "line too long (max 8704 bytes)");
			break;
		}
		size_t len = 0;
		for (size_t i = 0; i < n; i++)
			if (start[i] != '\0')
				line[len++] = start[i];
		if (len == 0)
			continue;
		line[len] = '\0';
		c->ops->line(c, line, len, c->arg);
	}
	if (c->in.off == c->in.len)
		c->in.off = c->in.len = 0;
	c->in_lines = false;
}

/* Plaintext the record layer decrypted moves to the line buffer. */
static int conn_tls_take_plaintext(struct conn *c)
{
	size_t n;
	const uint8_t *p = tls_record_plaintext(c->tls, &n);

	if (n == 0)
		return 0;
	if (buf_append(&c->in, p, n) < 0)
		return -ENOMEM;
	tls_record_consume_plaintext(c->tls, n);
	return 0;
}

static void conn_tls_read(struct conn *c)
{
	/* Up to one full record and a bit per wakeup, like the plaintext
	 * path's 16 KiB. */
	uint8_t cbuf[16384 + 512];
	const char *eof = NULL;
	char why[160];
	size_t pending;
	size_t tail = 0;
	ssize_t n;

	/* custody: a crash between the recv() and the record of what it
	 * consumed closes the connection (CKPT_DROP) */
	if (c->custody_id)
		checkpoint_conn_drop(c->custody_id);
	n = recv(c->fd, cbuf, sizeof(cbuf), MSG_DONTWAIT);
	if (n > 0) {
		size_t had = c->in.len - c->in.off;
		enum tls_record_status st = tls_record_feed(c->tls, cbuf, (size_t)n);

		if (conn_tls_take_plaintext(c) < 0) {
			conn_mark_dead(c, "out of memory");
			return;
		}
		if (c->custody_id) {
			const char *in = c->in.data ? c->in.data + c->in.off : "";
			size_t len = c->in.len - c->in.off;
			uint32_t lines = 0;

			/* fault builds only (fault.h tlsgap): a crash here */
			FAULT_TLS_READ(in + had, len - had);

			for (size_t i = had; i < len; i++)
				lines += in[i] == '\n';
			/* before the lines are handled: the poison-pill marker,
			 * then the position, with the complete lines counted
			 * as handled (a crash while handling them loses them,
			 * never handles them twice) */
			checkpoint_conn_read(c->custody_id, lines);
			while (tail < len && in[len - tail - 1] != '\r' &&
			       in[len - tail - 1] != '\n')
				tail++;
			/* No new plaintext: part of a record (or a record
			 * without data). Its DROP stays the last word until a
			 * read completes a record: each CKPT_TLS carries the
			 * partial record whole, so a peer sending one byte at a
			 * time would otherwise write the record's size into
			 * the log per byte (the reviewer's 8 KB record trickled:
			 * 12 MB of log, 3 compactions). */
			c->tls_ckpt_skipped = len == had;
			if (!c->tls_ckpt_skipped)
				conn_checkpoint_tls(c, in + len - tail, tail);
		}
		if (st == TLS_RECORD_CLOSED) {
			c->peer_eof = true;
			eof = "connection closed by peer (TLS close_notify)";
		} else if (st == TLS_RECORD_ERROR) {
			/* what the peer sent is malformed: its doing (health.h) */
			snprintf(why, sizeof(why), "tls from the peer: %s",
				 tls_record_error(c->tls) ? tls_record_error(c->tls) : "record error");
			eof = why;
			(void)conn_write_some(c); /* our alert, best effort */
		}
	} else {
		if (n == 0) {
			c->peer_eof = true;
			eof = "connection closed by peer";
		} else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
			snprintf(why, sizeof(why), "read error: %s", strerror(errno));
			eof = why;
		}
		if (!c->tls_ckpt_skipped)
			conn_checkpoint_tls(c, NULL, 0); /* nothing consumed */
	}
	/* A KeyUpdate answer (or an alert) waits in the output. */
	(void)tls_record_output(c->tls, &pending);
	if (!eof && pending > 0 && !event_pending(c->wev, EV_WRITE, NULL))
		event_add(c->wev, NULL);
	if (!eof && pending > CONN_TLS_READ_PAUSE) {
		event_del(c->rev);
		c->tls_read_paused = true;
	}
	conn_process_lines(c);
	if (n > 0 && c->custody_id) {
		/* not every line was handled (held, dead): say what is left */
		if (c->in.len - c->in.off != tail && !c->tls_ckpt_skipped)
			conn_checkpoint_tls(c, NULL, 0);
		/* handled to the end: the marker's other half */
		checkpoint_conn_input(c->custody_id, NULL, 0);
	}
	if (eof)
		conn_mark_dead(c, eof);
}

static void conn_handshake_done(struct conn *c)
{
	const char *err = NULL;
	struct tls_record *t;
	char why[160];

	snprintf(c->tls_info, sizeof(c->tls_info), "%s",
		 tls_handshake_describe(c->hs));
	t = tls_handshake_finish(c->hs, &err);
	tls_handshake_free(c->hs);
	c->hs = NULL;
	if (c->hs_timer)
		event_del(c->hs_timer);
	if (t == NULL) {
		snprintf(why, sizeof(why), "tls: %s", err ? err : "handshake failed");
		conn_mark_dead(c, why);
		return;
	}
	c->tls = t;
	if (conn_tls_take_plaintext(c) < 0) {
		conn_mark_dead(c, "out of memory");
		return;
	}
	if (c->ops->tls_ready) {
		c->ops->tls_ready(c, c->arg);
		if (c->dead || !c->armed)
			return;
	}
	if (unwritten(c) > 0)
		event_add(c->wev, NULL);
	else
		event_del(c->wev);
	if (c->in.len > c->in.off || c->drain_watch)
		conn_schedule_defer(c);
	conn_maybe_shutdown(c);
}

static void conn_handshake_step(struct conn *c)
{
	char why[160];

	switch (tls_handshake_step(c->hs)) {
	case TLS_HANDSHAKE_DONE:
		conn_handshake_done(c);
		break;
	case TLS_HANDSHAKE_WANT_READ:
		event_del(c->wev); /* the read event is always on */
		break;
	case TLS_HANDSHAKE_WANT_WRITE:
		event_add(c->wev, NULL);
		break;
	default:
		snprintf(why, sizeof(why), "tls: %s",
			 tls_handshake_error(c->hs));
		conn_mark_dead(c, why);
		break;
	}
}

static struct timeval conn_hs_timeout(const struct conn *c)
{
	int ms = c->hs_timeout_ms > 0 ? c->hs_timeout_ms :
					CONN_TLS_HANDSHAKE_TIMEOUT_S * 1000;
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	return tv;
}

static void conn_hs_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;

	if (c->hs && !c->dead)
		conn_mark_dead(c, "tls: handshake timed out");
}

static void conn_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	const char *eof = NULL;
	char why[128];

	if (c->dead || !c->armed)
		return;
	if (c->hs) {
		conn_handshake_step(c);
		return;
	}
	if (c->tls) {
		conn_tls_read(c);
		return;
	}
	if (buf_reserve(&c->in, 16384) < 0) {
		conn_mark_dead(c, "out of memory");
		return;
	}
	ssize_t n = recv(fd, c->in.data + c->in.len, c->in.cap - c->in.len,
			 MSG_DONTWAIT);
	if (n > 0) {
		if (c->custody_id) {
			uint32_t lines = 0;
			const char *p = c->in.data + c->in.len;

			for (ssize_t i = 0; i < n; i++)
				lines += p[i] == '\n';
			/* before the lines are handled: the poison-pill marker */
			checkpoint_conn_read(c->custody_id, lines);
			c->ckpt_dirty = true;
		}
		c->in.len += (size_t)n;
	} else if (n == 0) {
		c->peer_eof = true;
		eof = "connection closed by peer";
	} else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
		snprintf(why, sizeof(why), "read error: %s", strerror(errno));
		eof = why;
	}
	/* Lines that arrived before the EOF are still processed. */
	conn_process_lines(c);
	if (n > 0 && c->custody_id)
		checkpoint_conn_input(c->custody_id, c->in.data + c->in.off,
				      c->in.len - c->in.off);
	if (eof)
		conn_mark_dead(c, eof);
}

static void conn_write_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	char why[128];

	if (c->dead || !c->armed)
		return;
	if (c->connecting) {
		int err = 0;
		socklen_t len = sizeof(err);
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
			err = errno;
		if (err == EINPROGRESS || err == EALREADY)
			return;
		if (err) {
			snprintf(why, sizeof(why), "connect failed: %s", strerror(err));
			conn_mark_dead(c, why);
			return;
		}
		c->connecting = false;
		event_add(c->rev, NULL);
		if (c->ops->connected)
			c->ops->connected(c, c->arg);
		if (c->dead || !c->armed)
			return;
	}
	if (c->hs) {
		conn_handshake_step(c);
		if (c->dead || !c->armed || c->hs)
			return;
	}
	int rc = conn_write_some(c);
	if (rc < 0) {
		conn_write_failed(c, rc);
		return;
	}
	if (c->tls_read_paused && unwritten(c) < CONN_TLS_READ_PAUSE / 2) {
		c->tls_read_paused = false;
		if (!c->held)
			event_add(c->rev, NULL);
	}
	if (c->drain_watch && unwritten(c) < c->drain_low) {
		c->drain_watch = false;
		c->ops->drained(c, c->arg); /* may queue more or close */
		if (c->dead || !c->armed)
			return;
	}
	if (unwritten(c) == 0) {
		event_del(c->wev);
		conn_maybe_shutdown(c);
	}
}

static void conn_defer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;

	if (c->dead) {
		if (!c->close_notified) {
			c->close_notified = true;
			/* The owner may release c in here: touch nothing after. */
			c->ops->closed(c, c->reason, c->arg);
		}
		return;
	}
	conn_process_lines(c);
	if (!c->dead && c->armed && !c->connecting && c->drain_watch &&
	    unwritten(c) < c->drain_low) {
		c->drain_watch = false;
		c->ops->drained(c, c->arg);
	}
}

int conn_check_restore(const void *in, size_t inlen, size_t outlen)
{
	const char *p = in;
	size_t tail = 0; /* bytes after the last CR or LF */

	if (outlen > CONN_MAX_OUTPUT)
		return -EMSGSIZE;
	while (tail < inlen && p[inlen - tail - 1] != '\r' &&
	       p[inlen - tail - 1] != '\n')
		tail++;
	return tail > CONN_MAX_LINE ? -EMSGSIZE : 0;
}

struct conn *conn_adopt(struct event_base *base, int fd, bool connecting,
			const void *in, size_t inlen, const void *out,
			size_t outlen, const struct conn_ops *ops, void *arg)
{
	struct conn *c = NULL;
	int err = ENOMEM;

	if (conn_check_restore(in, inlen, outlen) < 0) {
		err = EMSGSIZE;
		goto fail;
	}
	c = calloc(1, sizeof(*c));
	if (!c)
		goto fail;
	c->base = base;
	c->fd = fd;
	c->ops = ops;
	c->arg = arg;
	c->connecting = connecting;
	c->rev = event_new(base, fd, EV_READ | EV_PERSIST, conn_read_cb, c);
	c->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, conn_write_cb, c);
	c->defer = event_new(base, -1, 0, conn_defer_cb, c);
	if (!c->rev || !c->wev || !c->defer)
		goto fail;
	if (buf_append(&c->in, in, inlen) < 0 || buf_append(&c->out, out, outlen) < 0)
		goto fail;
	c->queued_total = outlen;
	int proto = 0;
	socklen_t plen = sizeof(proto);
	c->tcp = getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &plen) == 0 &&
		 proto == IPPROTO_TCP;
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0 && !(fl & O_NONBLOCK))
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	if (!ops->custody_deferred)
		c->custody_id = checkpoint_conn_opened(fd);
	c->ckpt_dirty = true;
	return c;
fail:
	if (c) {
		c->fd = -1;
		conn_release(c);
	}
	if (fd >= 0)
		close(fd);
	errno = err;
	return NULL;
}

struct conn *conn_new(struct event_base *base, int fd, bool connecting,
		      const struct conn_ops *ops, void *arg)
{
	int one = 1;
	/* Fails harmlessly on non-TCP sockets (tests use socketpairs). */
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return conn_adopt(base, fd, connecting, NULL, 0, NULL, 0, ops, arg);
}

void conn_set_arg(struct conn *c, void *arg)
{
	c->arg = arg;
}

void conn_arm(struct conn *c)
{
	if (c->armed)
		return;
	c->armed = true;
	if (c->dead) {
		conn_schedule_defer(c);
		return;
	}
	if (c->connecting) {
		event_add(c->wev, NULL);
		return;
	}
	if (c->hs) {
		/* The handshake's first flight (client) needs no read. */
		struct timeval tv = conn_hs_timeout(c);

		event_add(c->rev, NULL);
		evtimer_add(c->hs_timer, &tv);
		event_add(c->wev, NULL);
		return;
	}
	if (!c->held && !c->tls_read_paused)
		event_add(c->rev, NULL);
	if (unwritten(c) > 0)
		event_add(c->wev, NULL);
	if (c->in.len > c->in.off || c->drain_watch)
		conn_schedule_defer(c);
}

void conn_hold_lines(struct conn *c, bool hold)
{
	if (c->held == hold)
		return;
	c->held = hold;
	if (!c->armed || c->dead || c->connecting || c->hs)
		return;
	if (hold) {
		event_del(c->rev);
		return;
	}
	if (!c->tls_read_paused)
		event_add(c->rev, NULL);
	if (c->in.len > c->in.off)
		conn_schedule_defer(c);
}

void conn_set_health(struct conn *c, struct health_link *l)
{
	c->hl = l;
}

void conn_set_sendq(struct conn *c, size_t max_output)
{
	c->max_output = max_output;
}

void conn_set_handshake_timeout(struct conn *c, int ms)
{
	c->hs_timeout_ms = ms;
}

void conn_watch_drain(struct conn *c, size_t low_water)
{
	if (c->dead || !c->ops->drained)
		return;
	c->drain_watch = true;
	c->drain_low = low_water;
	/* Below the mark already: no write is coming to notice it. */
	if (unwritten(c) < low_water)
		conn_schedule_defer(c);
}

void conn_freeze(struct conn *c, bool flush)
{
	if (flush && !c->dead && !c->connecting && unwritten(c) > 0) {
		int rc = conn_write_some(c);
		if (rc < 0)
			conn_write_failed(c, rc);
	}
	c->armed = false;
	event_del(c->rev);
	event_del(c->wev);
	event_del(c->defer);
	if (c->hs_timer)
		event_del(c->hs_timer);
}

/* The lowest place a line is queued: checked here (health.h). */
static void conn_queue(struct conn *c, const char *line)
{
	if (c->dead || c->output_ended)
		return;
	size_t n = strlen(line);
	if (c->hl && !health_line_out(c->hl, line, n))
		return; /* malformed, to a network: never sent (health.h) */
	if (n > CONN_MAX_LINE)
		n = CONN_MAX_LINE;
	if (unwritten(c) + n + 2 > (c->max_output ? c->max_output : CONN_MAX_OUTPUT)) {
		conn_mark_dead(c, "sendq exceeded");
		return;
	}
	if (buf_reserve(&c->out, n + 2) < 0) {
		conn_mark_dead(c, "out of memory");
		return;
	}
	memcpy(c->out.data + c->out.len, line, n);
	c->out.data[c->out.len + n] = '\r';
	c->out.data[c->out.len + n + 1] = '\n';
	c->out.len += n + 2;
	c->queued_total += n + 2;
	if (c->armed && !c->connecting && !event_pending(c->wev, EV_WRITE, NULL))
		event_add(c->wev, NULL);
}

void conn_send(struct conn *c, const char *line)
{
	/* fault builds only (fault.h): a malformed line first, now and then */
	const char *bad = FAULT_NETWORK_WRITE(c->hl);

	if (bad)
		conn_queue(c, bad);
	conn_queue(c, line);
}

int conn_take_queued(struct conn *c, uint64_t from, char **out, size_t *len)
{
	uint64_t n = c->queued_total > from ? c->queued_total - from : 0;

	*out = NULL;
	*len = 0;
	if (n == 0)
		return 0;
	if (n > c->out.len - c->out.off)
		return -EAGAIN; /* written already: too late to change */
	char *copy = malloc((size_t)n);
	if (!copy)
		return -ENOMEM;
	memcpy(copy, c->out.data + c->out.len - n, (size_t)n);
	c->out.len -= (size_t)n;
	c->queued_total -= n;
	*out = copy;
	*len = (size_t)n;
	return 0;
}

void conn_sendf(struct conn *c, const char *fmt, ...)
{
	char line[CONN_MAX_LINE + 1];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	conn_send(c, line);
}

void conn_close(struct conn *c, const char *reason, bool flush)
{
	if (c->dead)
		return;
	if (flush && !c->connecting && c->armed) {
		(void)conn_write_some(c);
		/* close_notify says "nothing more": only true when every
		 * line reached the record layer (the socket took it all). */
		if (c->tls && !c->tls_close_sent && c->out.len == c->out.off) {
			tls_record_close(c->tls);
			c->tls_close_sent = true;
			(void)conn_write_some(c);
		}
	}
	conn_mark_dead(c, reason);
}

void conn_end_output(struct conn *c)
{
	c->output_ended = true;
	if (c->armed)
		conn_maybe_shutdown(c);
}

void conn_release(struct conn *c)
{
	if (!c)
		return;
	if (c->rev)
		event_free(c->rev);
	if (c->wev)
		event_free(c->wev);
	if (c->defer)
		event_free(c->defer);
	if (c->hs_timer)
		event_free(c->hs_timer);
	tls_handshake_free(c->hs);  /* no close_notify: the socket may live on */
	tls_record_free(c->tls);
	checkpoint_conn_closed(c->custody_id);
	if (c->fd >= 0)
		close(c->fd);
	buf_free(&c->in);
	buf_free(&c->out);
	free(c);
}

void conn_close_fd_only(struct conn *c)
{
	if (!c || c->fd < 0)
		return;
	checkpoint_conn_closed(c->custody_id);
	c->custody_id = 0;
	close(c->fd);
	c->fd = -1;
}

uint64_t conn_custody_id(const struct conn *c)
{
	return c->custody_id;
}

void conn_custody_start(struct conn *c)
{
	if (c != NULL && c->fd >= 0 &&
	    (c->custody_id == 0 || !checkpoint_id_current(c->custody_id))) {
		c->custody_id = checkpoint_conn_opened(c->fd);
		c->ckpt_dirty = true;
	}
}

bool conn_checkpoint_dirty(const struct conn *c)
{
	return c->ckpt_dirty;
}

void conn_checkpoint_taken(struct conn *c)
{
	c->ckpt_base = c->written_total;
	c->ckpt_dirty = false;
}

uint64_t conn_bytes_queued(const struct conn *c)
{
	return c->queued_total;
}

/* The kernel's unacknowledged output, or -errno. Only TCP has such bytes:
 * what is written to an AF_UNIX socket already sits in the peer's receive
 * queue, readable whatever we do (its SIOCOUTQ counts buffer memory, not
 * bytes, so it is not asked). */
static int conn_kernel_outq(const struct conn *c, uint64_t *outq)
{
	int n = 0;

	if (!c->tcp) {
		*outq = 0;
		return 0;
	}
	if (ioctl(c->fd, SIOCOUTQ, &n) < 0)
		return -errno;
	*outq = n > 0 ? (uint64_t)n : 0;
	return 0;
}

/* TLS: the peer has the plaintext of every record whose ciphertext its TCP
 * acknowledged; the record layer maps ciphertext offsets to plaintext. */
static uint64_t conn_tls_acked(const struct conn *cc, uint64_t outq)
{
	struct conn *c = (struct conn *)cc; /* bookkeeping only */
	size_t pending;
	uint64_t sent, acked, plain_total, covered;

	(void)tls_record_output(c->tls, &pending);
	sent = tls_record_cipher_total(c->tls) - pending;
	acked = outq >= sent ? 0 : sent - outq;
	if (acked < c->tls_cipher_acked)
		acked = c->tls_cipher_acked;
	c->tls_cipher_acked = acked;
	plain_total = tls_record_plain_total(c->tls);
	covered = tls_record_plain_covered(c->tls, acked);
	if (covered > plain_total || plain_total - covered > c->written_total)
		return 0;
	return c->written_total - (plain_total - covered);
}

uint64_t conn_bytes_acked(const struct conn *c)
{
	uint64_t outq = 0;

	if (conn_kernel_outq(c, &outq) < 0)
		return c->written_total; /* best effort (conn.h) */
	/* After shutdown() the kernel counts our FIN as one more unacknowledged
	 * byte until the peer acknowledges it; it is not part of the stream. */
	if (c->fin_sent && outq > 0)
		outq--;
	if (c->tls)
		return conn_tls_acked(c, outq);
	/* More in the kernel than we wrote: bytes of a previous process whose
	 * state did not say (older sender); nothing of ours is acked yet. */
	return outq >= c->written_total ? 0 : c->written_total - outq;
}

uint64_t conn_bytes_written(const struct conn *c)
{
	return c->written_total;
}

void conn_restore_in_flight(struct conn *c, uint64_t in_flight)
{
	c->written_total = in_flight;
	c->queued_total = in_flight + (c->out.len - c->out.off);
}

void conn_discard_unacked(struct conn *c)
{
	uint64_t outq = 0;
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };

	if (c->fd < 0 || conn_kernel_outq(c, &outq) < 0 || outq == 0)
		return;
	(void)setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	/* The linger above resets the connection at the close of the socket's
	 * last fd. With custody the supervisor holds a duplicate, so our close
	 * is not the last: the kernel went on delivering what the position
	 * says will be replayed (duplicates at the next attach, seen in the
	 * TLS acceptance run once custody was on by default). connect() to
	 * AF_UNSPEC disconnects the socket itself, whatever fds refer to it
	 * (tcp_disconnect(): RST, the send queue purged). */
	struct sockaddr unspec = { .sa_family = AF_UNSPEC };
	(void)connect(c->fd, &unspec, sizeof(unspec));
}

bool conn_is_dead(const struct conn *c)
{
	return c->dead;
}

bool conn_peer_closed(const struct conn *c)
{
	return c->peer_eof;
}

bool conn_is_connecting(const struct conn *c)
{
	return c->connecting;
}

int conn_fd(const struct conn *c)
{
	return c->fd;
}

const char *conn_close_reason(const struct conn *c)
{
	return c->dead ? c->reason : NULL;
}

const char *conn_input(const struct conn *c, size_t *len)
{
	*len = c->in.len - c->in.off;
	return c->in.data ? c->in.data + c->in.off : "";
}

const char *conn_output(const struct conn *c, size_t *len)
{
	*len = c->out.len - c->out.off;
	return c->out.data ? c->out.data + c->out.off : "";
}

static char *format_sockaddr(const struct sockaddr_storage *ss, char *out,
			     size_t n)
{
	char host[INET6_ADDRSTRLEN] = "";

	out[0] = '\0';
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const void *)ss;
		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		snprintf(out, n, "%s:%u", host, ntohs(sin->sin_port));
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const void *)ss;
		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
		snprintf(out, n, "[%s]:%u", host, ntohs(sin6->sin6_port));
	}
	return out;
}

char *conn_peer_name(const struct conn *c, char *out, size_t n)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	memset(&ss, 0, sizeof(ss));
	if (getpeername(c->fd, (struct sockaddr *)&ss, &len) < 0) {
		out[0] = '\0';
		return out;
	}
	return format_sockaddr(&ss, out, n);
}

char *conn_local_name(const struct conn *c, char *out, size_t n)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	memset(&ss, 0, sizeof(ss));
	if (getsockname(c->fd, (struct sockaddr *)&ss, &len) < 0) {
		out[0] = '\0';
		return out;
	}
	return format_sockaddr(&ss, out, n);
}

int conn_start_tls(struct conn *c, SSL_CTX *ctx, bool server, const char *host,
		   const char *fingerprint)
{
	if (c->hs || c->tls)
		return -EALREADY;
	c->hs = tls_handshake_new(ctx, c->fd, server, host, fingerprint);
	if (c->hs_timer == NULL)
		c->hs_timer = evtimer_new(c->base, conn_hs_timeout_cb, c);
	if (c->hs == NULL || c->hs_timer == NULL) {
		tls_handshake_free(c->hs);
		c->hs = NULL;
		return -ENOMEM;
	}
	struct timeval tv = conn_hs_timeout(c);
	evtimer_add(c->hs_timer, &tv);
	if (c->armed && !c->connecting && !c->dead)
		event_add(c->wev, NULL); /* first step from the loop */
	return 0;
}

void conn_attach_tls(struct conn *c, struct tls_record *t)
{
	c->tls = t;
	snprintf(c->tls_info, sizeof(c->tls_info), "%s %s",
		 tls_record_version(t) == TLS_VERSION_1_3 ? "TLSv1.3" : "TLSv1.2",
		 tls_cipher_name(tls_record_cipher(t)));
	if (conn_tls_take_plaintext(c) < 0)
		conn_mark_dead(c, "out of memory");
}

bool conn_in_handshake(const struct conn *c)
{
	return c->hs != NULL;
}

struct tls_record *conn_tls(const struct conn *c)
{
	return c->tls;
}

const char *conn_tls_info(const struct conn *c)
{
	return c->tls_info;
}
