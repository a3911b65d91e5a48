/* sessiond/peer.c: see peer.h. */
#include "sessiond/peer.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/control.h"
#include "common/log.h"
#include "common/frame.h"

/* Frames handled per readable event, so a busy link cannot starve the
 * loop (the rest stays queued; the event fires again). */
#define PEER_FRAMES_PER_EVENT 64

struct peer {
	int fd;
	struct event *ev;
	peer_arrived_fn fn;
	void *arg;
};

static void peer_close(struct peer *p)
{
	if (p->ev != NULL) {
		event_free(p->ev);
		p->ev = NULL;
	}
	if (p->fd >= 0) {
		close(p->fd);
		p->fd = -1;
	}
}

/* One frame; false when the link is done (EOF or error) or empty. */
static bool peer_read_one(struct peer *p)
{
	struct frame_msg msg = { 0 };
	char err[160] = "";
	int *fds = NULL;
	int r = frame_recv(p->fd, &msg, 1000);

	if (r == -EAGAIN)
		return false;
	if (r < 0) {
		if (r == -ECONNRESET)
			log_info("peer", "the other worker closed the link");
		else
			log_warn("peer", "link: %s: closing it", strerror(-r));
		peer_close(p);
		return false;
	}
	if (msg.type != PEER_FORWARD) {
		log_warn("peer", "unexpected frame type %u on the link (dropped)",
			 msg.type);
		goto out;
	}
	fds = calloc(msg.nfds ? msg.nfds : 1, sizeof(*fds));
	if (fds == NULL) {
		log_error("peer", "out of memory: forwarded client dropped");
		goto out;
	}
	for (size_t i = 0; i < msg.nfds; i++)
		fds[i] = frame_msg_take_fd(&msg, i);
	r = p->fn(p->arg, msg.data, msg.len, fds, msg.nfds, err, sizeof(err));
	if (r < 0)
		log_warn("peer", "forwarded client refused: %s", err);
out:
	free(fds);
	frame_msg_clear(&msg);
	return true;
}

static void peer_readable(evutil_socket_t fd, short what, void *arg)
{
	struct peer *p = arg;

	for (int i = 0; i < PEER_FRAMES_PER_EVENT && p->fd >= 0; i++)
		if (!peer_read_one(p))
			break;
}

struct peer *peer_new(struct event_base *base, int fd, peer_arrived_fn fn,
		      void *arg)
{
	struct peer *p = calloc(1, sizeof(*p));

	if (p == NULL) {
		close(fd);
		return NULL;
	}
	p->fd = fd;
	p->fn = fn;
	p->arg = arg;
	evutil_make_socket_nonblocking(fd);
	p->ev = event_new(base, fd, EV_READ | EV_PERSIST, peer_readable, p);
	if (p->ev == NULL || event_add(p->ev, NULL) < 0) {
		peer_free(p);
		return NULL;
	}
	return p;
}

void peer_free(struct peer *p)
{
	if (p == NULL)
		return;
	peer_close(p);
	free(p);
}

bool peer_alive(const struct peer *p)
{
	return p != NULL && p->fd >= 0;
}

int peer_send(struct peer *p, const uint8_t *buf, size_t len, const int *fds,
	      size_t nfds)
{
	if (p == NULL || p->fd < 0)
		return -ENOTCONN;
	return frame_send(p->fd, PEER_FORWARD, buf, len, fds, nfds,
				  PEER_SEND_TIMEOUT_MS);
}

void peer_drain(struct peer *p)
{
	while (p->fd >= 0 && peer_read_one(p))
		;
}
