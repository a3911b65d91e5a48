/* peer: see peer.h. */
#include "peer.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/tcp.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

struct peer {
	struct bufferevent *bev;
	peer_line_cb on_line;
	peer_close_cb on_close;
	void *arg;
	int depth;        /* inside our callbacks */
	bool free_me;     /* peer_free() called while depth > 0 */
	bool dead;        /* on_close delivered or freed */
	bool shut_wr;     /* peer_shutdown_write(): FIN after the output */
};

static void peer_destroy(struct peer *p)
{
	bufferevent_free(p->bev); /* closes the socket (BEV_OPT_CLOSE_ON_FREE) */
	free(p);
}

static void lost(struct peer *p, const char *reason)
{
	if (p->dead)
		return;
	p->dead = true;
	bufferevent_disable(p->bev, EV_READ | EV_WRITE);
	if (p->on_close)
		p->on_close(p, reason, p->arg);
}

static void read_cb(struct bufferevent *bev, void *arg)
{
	struct peer *p = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	size_t len;
	char *line;

	p->depth++;
	while (!p->free_me && !p->dead &&
	       (line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF)) != NULL) {
		if (len > 5 && !memcmp(line, "PING ", 5)) {
			line[1] = 'O';
			peer_send(p, line, len);
		} else if (p->on_line) {
			p->on_line(p, line, len, p->arg);
		}
		free(line);
	}
	p->depth--;
	if (p->free_me && !p->depth)
		peer_destroy(p);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
	struct peer *p = arg;
	if (p->shut_wr && !evbuffer_get_length(bufferevent_get_output(bev)))
		shutdown(bufferevent_getfd(bev), SHUT_WR);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct peer *p = arg;
	char why[128];

	if (what & BEV_EVENT_CONNECTED) {
		int one = 1;
		setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		return;
	}
	p->depth++;
	/* lines that arrived with the EOF first */
	if (what & BEV_EVENT_EOF)
		read_cb(bev, p);
	if (!p->free_me) {
		if (what & BEV_EVENT_ERROR)
			snprintf(why, sizeof(why), "error: %s",
				 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
		else
			snprintf(why, sizeof(why), "eof");
		lost(p, why);
	}
	p->depth--;
	if (p->free_me && !p->depth)
		peer_destroy(p);
}

struct peer *peer_connect(struct event_base *base, const struct sockaddr_in *addr,
			  peer_line_cb on_line, peer_close_cb on_close, void *arg)
{
	struct peer *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (!p->bev) {
		free(p);
		errno = ENOMEM;
		return NULL;
	}
	p->on_line = on_line;
	p->on_close = on_close;
	p->arg = arg;
	bufferevent_setcb(p->bev, read_cb, write_cb, event_cb, p);
	if (bufferevent_socket_connect(p->bev, (const struct sockaddr *)addr, sizeof(*addr)) < 0) {
		int e = errno ? errno : ECONNREFUSED;
		bufferevent_free(p->bev);
		free(p);
		errno = e;
		return NULL;
	}
	bufferevent_enable(p->bev, EV_READ | EV_WRITE);
	return p;
}

int peer_send(struct peer *p, const char *line, size_t len)
{
	if (p->dead || p->free_me || p->shut_wr)
		return -EPIPE;
	struct evbuffer *out = bufferevent_get_output(p->bev);
	if (evbuffer_add(out, line, len) < 0 || evbuffer_add(out, "\r\n", 2) < 0)
		return -ENOMEM;
	return 0;
}

int peer_sendf(struct peer *p, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		return -EINVAL;
	return peer_send(p, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

void peer_shutdown_write(struct peer *p)
{
	if (p->dead || p->shut_wr)
		return;
	p->shut_wr = true;
	if (!evbuffer_get_length(bufferevent_get_output(p->bev)))
		shutdown(bufferevent_getfd(p->bev), SHUT_WR);
}

void peer_free(struct peer *p)
{
	if (!p)
		return;
	p->on_line = NULL;
	p->on_close = NULL;
	p->dead = true;
	if (p->depth) {
		p->free_me = true;
		return;
	}
	peer_destroy(p);
}

void peer_set_arg(struct peer *p, peer_line_cb on_line, peer_close_cb on_close, void *arg)
{
	p->on_line = on_line;
	p->on_close = on_close;
	p->arg = arg;
}

size_t peer_output_pending(const struct peer *p)
{
	return evbuffer_get_length(bufferevent_get_output(p->bev));
}

int peer_fd(const struct peer *p)
{
	return bufferevent_getfd(p->bev);
}
