/* common/frame.c: framed messages with attached fds over SOCK_SEQPACKET.
 *
 * Wire format and fd ownership: see frame.h. Implementation notes:
 *  - Every sendmsg/recvmsg uses MSG_DONTWAIT and waits with poll(), so the
 *    timeouts hold whether the caller's socket is blocking or not (a blocking
 *    socket is therefore bounded by timeout_ms on send as well).
 *  - SOCK_SEQPACKET keeps datagram boundaries and sendmsg queues a datagram
 *    whole or not at all, so a fragment is the unit of atomicity. A message
 *    whose send fails after some fragments went out leaves a partial message
 *    on the channel; the receiver detects it (timeout, or a next datagram that
 *    is not a matching fragment) and the caller must treat the channel as
 *    broken. migration.c does.
 *  - A datagram larger than HEADER + FRAGMENT is never sent by this code; the
 *    receiver's buffer is exactly that size, so such a datagram arrives with
 *    MSG_TRUNC and is a protocol error.
 */
#include "common/frame.h"

#include "common/clock.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Socket buffer asked for by frame_socketpair(). A migration chunk is sent
 * synchronously before the source waits for PREPARED, so the whole chunk
 * (e.g. 256 items of ~4 KiB plus per-datagram kernel overhead) should fit in
 * the queue even when the target is slow to read. The kernel doubles it. */
#define FRAME_SOCKBUF (8 * 1024 * 1024)

/* Room for FRAME_MAX_FDS fds in one SCM_RIGHTS cmsg. */
#define FRAME_CMSG_SPACE CMSG_SPACE(FRAME_MAX_FDS * sizeof(int))

struct frame_header {
	uint16_t magic;
	uint8_t version;
	uint8_t type;
	uint16_t flags;
	uint16_t nfds;
	uint32_t length;
	uint32_t total;
};

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = v & 0xff;
	p[1] = v >> 8;
}

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = v & 0xff;
	p[1] = (v >> 8) & 0xff;
	p[2] = (v >> 16) & 0xff;
	p[3] = v >> 24;
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
	       ((uint32_t)p[3] << 24);
}

static void header_encode(uint8_t out[FRAME_HEADER],
			  const struct frame_header *h)
{
	put16(out + 0, h->magic);
	out[2] = h->version;
	out[3] = h->type;
	put16(out + 4, h->flags);
	put16(out + 6, h->nfds);
	put32(out + 8, h->length);
	put32(out + 12, h->total);
}

static void header_decode(struct frame_header *h,
			  const uint8_t in[FRAME_HEADER])
{
	h->magic = get16(in + 0);
	h->version = in[2];
	h->type = in[3];
	h->flags = get16(in + 4);
	h->nfds = get16(in + 6);
	h->length = get32(in + 8);
	h->total = get32(in + 12);
}

/* Deadline for a timeout in ms (-1: none). */
static int64_t deadline_after(int timeout_ms)
{
	return timeout_ms < 0 ? -1 : clock_mono_ms() + timeout_ms;
}

/* Wait until `sock` has `events` or the deadline passes. Returns 0 (ready,
 * including POLLHUP/POLLERR: the next syscall reports those), -ETIMEDOUT or
 * -errno. */
static int wait_for(int sock, short events, int64_t deadline)
{
	struct pollfd pfd = { .fd = sock, .events = events };
	int r;

	for (;;) {
		int wait = -1;

		if (deadline >= 0) {
			int64_t left = deadline - clock_mono_ms();

			if (left < 0)
				left = 0;
			wait = left > INT_MAX ? INT_MAX : (int)left;
		}
		r = poll(&pfd, 1, wait);
		if (r > 0)
			return 0;
		if (r == 0)
			return -ETIMEDOUT;
		if (errno != EINTR)
			return -errno;
	}
}

/* Send the fragment of `payload` that starts at `off` (fds on the first
 * one) with one sendmsg, without waiting. Returns the payload bytes it
 * carried (0 for an empty message), -EAGAIN when the socket has no room
 * for the whole datagram, or another -errno. */
static ssize_t send_fragment(int sock, uint8_t type, const uint8_t *payload,
			     size_t len, size_t off, bool first, const int *fds,
			     size_t nfds)
{
	union {
		char buf[FRAME_CMSG_SPACE];
		struct cmsghdr align;
	} control;
	size_t chunk = len - off;
	uint8_t hdr[FRAME_HEADER];
	struct frame_header h;
	struct iovec iov[2];
	struct msghdr mh;
	ssize_t n;

	if (chunk > FRAME_FRAGMENT)
		chunk = FRAME_FRAGMENT;
	h = (struct frame_header){
		.magic = FRAME_MAGIC,
		.version = FRAME_VERSION,
		.type = type,
		.flags = off + chunk < len ? FRAME_F_MORE : 0,
		.nfds = first ? (uint16_t)nfds : 0,
		.length = (uint32_t)chunk,
		.total = (uint32_t)len,
	};
	header_encode(hdr, &h);

	iov[0] = (struct iovec){ .iov_base = hdr, .iov_len = sizeof(hdr) };
	iov[1] = (struct iovec){ .iov_base = (void *)(payload ? payload + off : NULL),
				 .iov_len = chunk };
	mh = (struct msghdr){ .msg_iov = iov, .msg_iovlen = chunk ? 2 : 1 };
	if (first && nfds > 0) {
		struct cmsghdr *c;

		memset(&control, 0, sizeof(control));
		mh.msg_control = control.buf;
		mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
	}
	do
		n = sendmsg(sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EWOULDBLOCK ? -EAGAIN : -errno;
	/* SEQPACKET: a datagram is queued whole or not at all. */
	if ((size_t)n != sizeof(hdr) + chunk)
		return -EIO;
	return (ssize_t)chunk;
}

static bool send_args_ok(int sock, uint8_t type, const void *data, size_t len,
			 const int *fds, size_t nfds)
{
	return !(sock < 0 || type == 0 || nfds > FRAME_MAX_FDS ||
		 len > FRAME_MAX_MESSAGE || (len > 0 && !data) ||
		 (nfds > 0 && !fds));
}

int frame_send(int sock, uint8_t type, const void *data, size_t len,
		       const int *fds, size_t nfds, int timeout_ms)
{
	int64_t deadline = deadline_after(timeout_ms);
	size_t off = 0;
	bool first = true;

	if (!send_args_ok(sock, type, data, len, fds, nfds))
		return -EINVAL;

	/* One datagram per fragment; an empty message is one empty fragment. */
	do {
		ssize_t n;

		for (;;) {
			int r;

			n = send_fragment(sock, type, data, len, off, first, fds,
					  nfds);
			if (n >= 0)
				break;
			if (n != -EAGAIN)
				return (int)n;
			r = wait_for(sock, POLLOUT, deadline);
			if (r < 0)
				return r;
		}
		off += (size_t)n;
		first = false;
	} while (off < len);
	return 0;
}

int frame_send_nowait(int sock, uint8_t type, const void *data,
			      size_t len, const int *fds, size_t nfds,
			      struct frame_cursor *cur)
{
	if (!cur || !send_args_ok(sock, type, data, len, fds, nfds) ||
	    cur->off > len || (cur->started && cur->off == len))
		return -EINVAL;
	do {
		ssize_t n = send_fragment(sock, type, data, len, cur->off,
					  !cur->started, fds, nfds);

		if (n < 0)
			return (int)n;
		cur->off += (size_t)n;
		cur->started = true;
	} while (cur->off < len);
	return 0;
}

static void close_fds(int *fds, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (fds[i] >= 0)
			close(fds[i]);
		fds[i] = -1;
	}
}

/* Collect every fd of every SCM_RIGHTS cmsg into out[] (capacity
 * FRAME_MAX_FDS; more cannot arrive in one datagram since the kernel
 * caps a sendmsg at SCM_MAX_FD, but any excess is closed and counted so the
 * caller can reject the datagram). Other cmsgs (e.g. SCM_CREDENTIALS if someone set
 * SO_PASSCRED) are ignored. Returns the number of fds received. */
static size_t collect_fds(struct msghdr *mh, int *out)
{
	size_t n = 0;

	for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
		size_t k;
		const unsigned char *p;

		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS ||
		    c->cmsg_len < CMSG_LEN(0))
			continue;
		k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		p = CMSG_DATA(c);
		for (size_t i = 0; i < k; i++) {
			int fd;

			memcpy(&fd, p + i * sizeof(int), sizeof(int));
			if (n < FRAME_MAX_FDS)
				out[n] = fd;
			else
				close(fd);
			n++;
		}
	}
	return n;
}

/* Receive one datagram into buf (HEADER + FRAGMENT bytes). Waits for it
 * (deadline) only if `wait` is set. On success *got is the datagram size,
 * the fds are in fds[0..*nfds) (owned by the caller, even on -EPROTO from
 * truncation: the caller closes them). */
static int recv_datagram(int sock, uint8_t *buf, size_t cap, bool wait,
			 int64_t deadline, size_t *got, int *fds, size_t *nfds,
			 int *flags)
{
	union {
		char buf[FRAME_CMSG_SPACE];
		struct cmsghdr align;
	} control;
	struct iovec iov = { .iov_base = buf, .iov_len = cap };
	struct msghdr mh;
	ssize_t n;
	bool reset = false;

	*nfds = 0;
	for (;;) {
		int r;

		mh = (struct msghdr){ .msg_iov = &iov, .msg_iovlen = 1,
				      .msg_control = control.buf,
				      .msg_controllen = sizeof(control.buf) };
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
		if (n >= 0)
			break;
		if (errno == EINTR)
			continue;
		/* A peer that closes while it still has unread datagrams of
		 * ours makes the kernel report ECONNRESET once, *before* the
		 * datagrams it queued for us (e.g. its ABORT). Those are still
		 * there: read them; the EOF comes after them. */
		if (errno == ECONNRESET && !reset) {
			reset = true;
			continue;
		}
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
		if (!wait)
			return -EAGAIN;
		r = wait_for(sock, POLLIN, deadline);
		if (r < 0)
			return r;
	}
	*nfds = collect_fds(&mh, fds);
	if (*nfds > FRAME_MAX_FDS) {
		/* The excess is already closed; no header can announce it. */
		close_fds(fds, FRAME_MAX_FDS);
		*nfds = 0;
		return -EPROTO;
	}
	*flags = mh.msg_flags;
	*got = (size_t)n;
	return 0;
}

static int recv_msg(int sock, struct frame_msg *msg, int timeout_ms,
		    bool lossy_fds)
{
	int fds[FRAME_MAX_FDS];
	size_t nfds = 0;
	uint8_t *buf = NULL;
	uint8_t *data = NULL;
	int *msgfds = NULL;
	size_t msgnfds = 0;
	size_t lost = 0;
	size_t off = 0;
	uint32_t total = 0;
	uint8_t type = 0;
	bool first = true;
	bool blocking;
	int64_t deadline;
	int fl;
	int r;

	if (!msg)
		return -EINVAL;
	*msg = (struct frame_msg){ 0 };
	if (sock < 0)
		return -EINVAL;
	fl = fcntl(sock, F_GETFL);
	if (fl < 0)
		return -errno;
	blocking = !(fl & O_NONBLOCK);

	buf = malloc(FRAME_HEADER + FRAME_FRAGMENT);
	if (!buf)
		return -ENOMEM;

	/* One bound for the whole message: a peer trickling fragments cannot
	 * hold the caller for more than timeout_ms. The first fragment is
	 * waited for only on a blocking socket (frame.h). */
	deadline = deadline_after(timeout_ms);
	for (;;) {
		struct frame_header h;
		size_t got = 0;
		int flags = 0;
		size_t received_fds;

		r = recv_datagram(sock, buf, FRAME_HEADER + FRAME_FRAGMENT,
				  !first || blocking, deadline, &got, fds, &nfds,
				  &flags);
		if (r < 0)
			goto out;
		received_fds = nfds;
		if (first && nfds > 0) {
			/* Hand the fds over to the message right away so every
			 * error path below closes them through one place. */
			msgfds = malloc(nfds * sizeof(int));
			if (!msgfds) {
				close_fds(fds, nfds);
				nfds = 0;
				r = -ENOMEM;
				goto out;
			}
			memcpy(msgfds, fds, nfds * sizeof(int));
			msgnfds = nfds;
			nfds = 0;
		}
		if (nfds > 0) { /* fds on a later fragment */
			close_fds(fds, nfds);
			nfds = 0;
			r = -EPROTO;
			goto out;
		}
		if (got == 0 && !(flags & MSG_TRUNC)) {
			/* Orderly EOF (an empty datagram is no valid frame
			 * either, so treating it as EOF loses nothing). */
			r = -ECONNRESET;
			goto out;
		}
		bool ctrunc = (flags & MSG_CTRUNC) != 0;

		/* MSG_CTRUNC: we are at our fd limit and the kernel installed
		 * only the first fds (frame.h, frame_recv_lossy()). */
		if ((flags & MSG_TRUNC) || got < FRAME_HEADER ||
		    (ctrunc && (!lossy_fds || !first))) {
			r = -EPROTO;
			goto out;
		}
		header_decode(&h, buf);
		if (h.magic != FRAME_MAGIC ||
		    h.version != FRAME_VERSION || h.type == 0 ||
		    h.length != got - FRAME_HEADER ||
		    h.total > FRAME_MAX_MESSAGE ||
		    (ctrunc ? h.nfds <= received_fds || h.nfds > FRAME_MAX_FDS
			    : h.nfds != received_fds) ||
		    (h.flags & ~FRAME_F_MORE)) {
			r = -EPROTO;
			goto out;
		}
		if (first) {
			lost = ctrunc ? h.nfds - received_fds : 0;
			type = h.type;
			total = h.total;
			data = malloc((size_t)total + 1);
			if (!data) {
				r = -ENOMEM;
				goto out;
			}
		} else if (h.type != type || h.total != total) {
			r = -EPROTO;
			goto out;
		}
		/* Every fragment but the last carries at least one byte and the
		 * last one ends exactly at `total`: reassembly terminates and
		 * never overruns. */
		if (h.length > total - off) {
			r = -EPROTO;
			goto out;
		}
		if (h.flags & FRAME_F_MORE) {
			if (h.length == 0 || off + h.length == total) {
				r = -EPROTO;
				goto out;
			}
		} else if (off + h.length != total) {
			r = -EPROTO;
			goto out;
		}
		memcpy(data + off, buf + FRAME_HEADER, h.length);
		off += h.length;
		first = false;
		if (!(h.flags & FRAME_F_MORE))
			break;
	}

	data[total] = '\0';
	msg->type = type;
	msg->data = data;
	msg->len = total;
	msg->fds = msgfds;
	msg->nfds = msgnfds;
	msg->fds_lost = lost;
	data = NULL;   /* transferred to msg */
	msgfds = NULL; /* transferred to msg */
	msgnfds = 0;
	r = 0;
out:
	if (msgfds)
		close_fds(msgfds, msgnfds);
	free(msgfds);
	free(data);
	free(buf);
	return r;
}

int frame_recv(int sock, struct frame_msg *msg, int timeout_ms)
{
	return recv_msg(sock, msg, timeout_ms, false);
}

int frame_recv_lossy(int sock, struct frame_msg *msg, int timeout_ms)
{
	return recv_msg(sock, msg, timeout_ms, true);
}

void frame_msg_clear(struct frame_msg *msg)
{
	if (!msg)
		return;
	if (msg->fds)
		close_fds(msg->fds, msg->nfds);
	free(msg->fds);
	free(msg->data);
	*msg = (struct frame_msg){ 0 };
}

int frame_msg_take_fd(struct frame_msg *msg, size_t i)
{
	int fd;

	if (!msg || !msg->fds || i >= msg->nfds)
		return -1;
	fd = msg->fds[i];
	msg->fds[i] = -1;
	return fd;
}

/* Raise one buffer size: SO_*BUFFORCE ignores net.core.[rw]mem_max but needs
 * CAP_NET_ADMIN; without it, fall back to the capped SO_*BUF. Best effort:
 * a smaller buffer only means smaller chunks fit without waiting. */
static void raise_buf(int fd, int force_opt, int opt)
{
	int v = FRAME_SOCKBUF;

	if (setsockopt(fd, SOL_SOCKET, force_opt, &v, sizeof(v)) == 0)
		return;
	(void)setsockopt(fd, SOL_SOCKET, opt, &v, sizeof(v));
}

int frame_socketpair(int sv[2])
{
	if (!sv)
		return -EINVAL;
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	for (int i = 0; i < 2; i++) {
		raise_buf(sv[i], SO_SNDBUFFORCE, SO_SNDBUF);
		raise_buf(sv[i], SO_RCVBUFFORCE, SO_RCVBUF);
	}
	return 0;
}
