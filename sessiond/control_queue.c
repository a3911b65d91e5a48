/* sessiond/control_queue.c: see control_queue.h. */
#include "sessiond/control_queue.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/clock.h"
#include "common/frame.h"
#include "common/log.h"

struct cq_msg {
	struct cq_msg *next;
	enum control_type type;
	enum control_queue_kind kind;
	uint8_t *data;
	size_t len;
	int *fds; /* owned (control_queue_push_fds), closed once sent or dropped */
	size_t nfds;
	struct frame_cursor cur;
};

struct control_queue {
	int fd;
	struct event *ev; /* EV_WRITE, added while something waits */
	struct cq_msg *head, *tail;
	size_t n, bytes, must_bytes;
	bool broken;
	uint64_t sent, replaced, deferred;
};

static void cq_msg_free(struct cq_msg *m)
{
	if (m == NULL)
		return;
	free(m->data);
	for (size_t i = 0; i < m->nfds; i++)
		close(m->fds[i]);
	free(m->fds);
	free(m);
}

static void cq_drop_all(struct control_queue *q)
{
	while (q->head != NULL) {
		struct cq_msg *m = q->head;

		q->head = m->next;
		cq_msg_free(m);
	}
	q->tail = NULL;
	q->n = q->bytes = q->must_bytes = 0;
	if (q->ev != NULL)
		event_del(q->ev);
}

static void cq_pop(struct control_queue *q)
{
	struct cq_msg *m = q->head;

	q->head = m->next;
	if (q->head == NULL)
		q->tail = NULL;
	q->n--;
	q->bytes -= m->len;
	if (m->kind == CONTROL_QUEUE_MUST)
		q->must_bytes -= m->len;
	q->sent++;
	cq_msg_free(m);
}

/* Send from the head while the socket takes it. 0: empty; -EAGAIN: full;
 * other -errno: broken (the queue is dropped). */
static int cq_drain(struct control_queue *q)
{
	while (q->head != NULL) {
		struct cq_msg *m = q->head;
		int r = frame_send_nowait(q->fd, (uint8_t)m->type, m->data,
						  m->len, m->fds, m->nfds, &m->cur);

		if (r == -EAGAIN)
			return r;
		if (r < 0) {
			log_error("worker", "control channel: cannot send to the supervisor: %s (%zu messages dropped)",
				  strerror(-r), q->n);
			q->broken = true;
			cq_drop_all(q);
			return r;
		}
		cq_pop(q);
	}
	return 0;
}

static void cq_writable(evutil_socket_t fd, short what, void *arg)
{
	struct control_queue *q = arg;

	(void)fd;
	(void)what;
	if (cq_drain(q) != -EAGAIN && q->ev != NULL)
		event_del(q->ev);
}

struct control_queue *control_queue_new(struct event_base *base, int fd)
{
	struct control_queue *q = calloc(1, sizeof(*q));

	if (q == NULL)
		return NULL;
	q->fd = fd;
	q->ev = event_new(base, fd, EV_WRITE | EV_PERSIST, cq_writable, q);
	if (q->ev == NULL) {
		free(q);
		errno = ENOMEM;
		return NULL;
	}
	return q;
}

void control_queue_free(struct control_queue *q)
{
	if (q == NULL)
		return;
	cq_drop_all(q);
	event_free(q->ev);
	free(q);
}

static struct cq_msg *cq_waiting(const struct control_queue *q,
				 enum control_type type)
{
	for (struct cq_msg *m = q->head; m != NULL; m = m->next)
		if (m->type == type && m->kind == CONTROL_QUEUE_SAMPLE &&
		    !m->cur.started)
			return m;
	return NULL;
}

bool control_queue_waiting(const struct control_queue *q,
			   enum control_type type)
{
	return cq_waiting(q, type) != NULL;
}

static int cq_push(struct control_queue *q, enum control_type type,
		   const ProtobufCMessage *msg, enum control_queue_kind kind,
		   int *fds, size_t nfds);

int control_queue_push(struct control_queue *q, enum control_type type,
		       const ProtobufCMessage *msg,
		       enum control_queue_kind kind)
{
	return cq_push(q, type, msg, kind, NULL, 0);
}

int control_queue_push_fds(struct control_queue *q, enum control_type type,
			   const ProtobufCMessage *msg, int *fds, size_t nfds)
{
	int *own = NULL;
	int r;

	if (nfds > FRAME_MAX_FDS)
		r = -EINVAL;
	else if (nfds > 0 && (own = malloc(nfds * sizeof(int))) == NULL)
		r = -ENOMEM;
	else {
		if (nfds > 0)
			memcpy(own, fds, nfds * sizeof(int));
		/* takes own and the fds in every case */
		return cq_push(q, type, msg, CONTROL_QUEUE_MUST, own, nfds);
	}
	for (size_t i = 0; i < nfds; i++)
		close(fds[i]);
	return r;
}

static int cq_fail(int *fds, size_t nfds, int r)
{
	for (size_t i = 0; i < nfds; i++)
		close(fds[i]);
	free(fds);
	return r;
}

static int cq_push(struct control_queue *q, enum control_type type,
		   const ProtobufCMessage *msg, enum control_queue_kind kind,
		   int *fds, size_t nfds)
{
	size_t len;
	uint8_t *buf;
	struct cq_msg *m;

	if (q == NULL || msg == NULL)
		return cq_fail(fds, nfds, -EINVAL);
	if (q->broken)
		return cq_fail(fds, nfds, -EPIPE);
	len = protobuf_c_message_get_packed_size(msg);
	if (len > FRAME_MAX_MESSAGE)
		return cq_fail(fds, nfds, -EINVAL);
	if (kind == CONTROL_QUEUE_MUST &&
	    q->must_bytes + len > CONTROL_QUEUE_MUST_MAX_BYTES)
		return cq_fail(fds, nfds, -ENOBUFS);
	buf = malloc(len ? len : 1);
	if (buf == NULL)
		return cq_fail(fds, nfds, -ENOMEM);
	protobuf_c_message_pack(msg, buf);

	if (kind == CONTROL_QUEUE_SAMPLE && (m = cq_waiting(q, type)) != NULL) {
		/* The newer sample takes the waiting one's place. */
		q->bytes = q->bytes - m->len + len;
		free(m->data);
		m->data = buf;
		m->len = len;
		q->replaced++;
		return 0;
	}
	m = calloc(1, sizeof(*m));
	if (m == NULL) {
		free(buf);
		return cq_fail(fds, nfds, -ENOMEM);
	}
	m->type = type;
	m->kind = kind;
	m->data = buf;
	m->len = len;
	m->fds = fds;
	m->nfds = nfds;
	if (q->tail != NULL)
		q->tail->next = m;
	else
		q->head = m;
	q->tail = m;
	q->n++;
	q->bytes += len;
	if (kind == CONTROL_QUEUE_MUST)
		q->must_bytes += len;
	if (q->n > 1) {
		q->deferred++;
		return 0; /* behind others: the write event sends it */
	}
	/* Alone: try now (the usual case, no loop round trip). */
	int r = cq_drain(q);

	if (r == -EAGAIN) {
		q->deferred++;
		event_add(q->ev, NULL);
		return 0;
	}
	return r < 0 ? -EPIPE : 0;
}

int control_queue_flush(struct control_queue *q, int timeout_ms)
{
	int64_t deadline = clock_mono_ms() + timeout_ms;

	if (q == NULL)
		return 0;
	for (;;) {
		struct pollfd pfd = { .fd = q->fd, .events = POLLOUT };
		int64_t left;
		int r = cq_drain(q);

		if (r != -EAGAIN)
			return r;
		left = deadline - clock_mono_ms();
		if (left <= 0)
			break;
		if (poll(&pfd, 1, left > INT_MAX ? INT_MAX : (int)left) < 0 &&
		    errno != EINTR)
			break;
	}
	log_warn("worker", "control channel: %zu messages not sent at exit (supervisor not reading)",
		 q->n);
	cq_drop_all(q);
	return -ETIMEDOUT;
}

void control_queue_stats(const struct control_queue *q,
			 struct control_queue_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (q == NULL)
		return;
	out->queued = q->n;
	out->queued_bytes = q->bytes;
	out->sent = q->sent;
	out->replaced = q->replaced;
	out->deferred = q->deferred;
}
