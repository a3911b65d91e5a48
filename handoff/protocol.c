/* handoff/protocol.c: source and target state machines of the chunked,
 * two-phase migration (protocol.h, docs/design.md §2).
 *
 * Every message is one frame (frame.h) whose type is an enum handoff_type and
 * whose payload is the matching protobuf-c message of proto/handoff.proto.
 * Only ITEM frames carry fds, exactly as many as Item.fds says.
 *
 * Both sides own their channel fd and switch it to O_NONBLOCK: reads are
 * driven by libevent (a spurious wakeup returns -EAGAIN), sends wait with
 * poll() inside frame_send(), bounded by timeout_ms.
 *
 * User callbacks (source cb, target ops) may free the object they belong to:
 * every libevent callback counts its nesting in `depth`, *_free() inside a
 * callback only marks the object, and the outermost callback frees it on its
 * way out (STYLE.md rule 8). After every user call the code checks
 * `free_pending` and touches nothing else if it is set.
 */
#include "handoff/protocol.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "handoff.pb-c.h"
#include "common/clock.h"
#include "common/frame.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

/* How long the source waits for a target it had to SIGKILL to be gone. Once
 * SIGKILL is delivered the target runs no more user code, so it can no longer
 * commit on its own; the wait only makes "dead" observable, hence a bound. */
#define KILL_WAIT_MS 2000
#define REASON_MAX 256
/* Messages the target handles per wakeup before yielding to the loop. */
#define TARGET_BATCH 256

/* ---- shared helpers ---- */

static const char *type_name(unsigned type)
{
	switch (type) {
	case HANDOFF_BEGIN: return "BEGIN";
	case HANDOFF_ITEM: return "ITEM";
	case HANDOFF_END: return "END";
	case HANDOFF_PREPARED: return "PREPARED";
	case HANDOFF_COMMIT: return "COMMIT";
	case HANDOFF_ABORT: return "ABORT";
	case HANDOFF_DONE: return "DONE";
	case HANDOFF_COMMITTED: return "COMMITTED";
	default: return "unknown message";
	}
}

/* Milliseconds left until deadline (-1: no deadline), never negative. */
static int remaining_ms(int64_t deadline)
{
	int64_t left;

	if (deadline < 0)
		return -1;
	left = deadline - clock_mono_ms();
	if (left < 0)
		return 0;
	return left > INT32_MAX ? INT32_MAX : (int)left;
}

static int set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

/* Arm `ev` to fire after timeout_ms (a negative timeout: never). */
static int arm_timer(struct event *ev, int timeout_ms)
{
	struct timeval tv;

	if (timeout_ms < 0)
		return event_del(ev) < 0 ? -ENOMEM : 0;
	tv.tv_sec = timeout_ms / 1000;
	tv.tv_usec = (timeout_ms % 1000) * 1000;
	return event_add(ev, &tv) < 0 ? -ENOMEM : 0;
}

/* Pack `m` and send it as one frame of `type` with fds attached. */
static int send_pb(int sock, uint8_t type, const ProtobufCMessage *m,
		   const int *fds, size_t nfds, int timeout_ms)
{
	uint8_t small[128];
	uint8_t *buf = small;
	size_t len = protobuf_c_message_get_packed_size(m);
	int r;

	if (len > FRAME_MAX_MESSAGE)
		return -EMSGSIZE;
	if (len > sizeof(small)) {
		buf = malloc(len);
		if (!buf)
			return -ENOMEM;
	}
	protobuf_c_message_pack(m, buf);
	r = frame_send(sock, type, buf, len, fds, nfds, timeout_ms);
	if (buf != small)
		free(buf);
	return r;
}

static int send_abort(int sock, uint32_t chunk, const char *reason,
		      int timeout_ms)
{
	Baton__Handoff__Abort a = BATON__HANDOFF__ABORT__INIT;

	a.chunk = chunk;
	a.reason = (char *)reason;
	return send_pb(sock, HANDOFF_ABORT, &a.base, NULL, 0, timeout_ms);
}

/* Copy the reason of an ABORT payload (or a fallback) into out. */
static void abort_reason(const struct frame_msg *m, const char *fallback,
			 char *out, size_t outlen)
{
	Baton__Handoff__Abort *a =
		baton__handoff__abort__unpack(NULL, m->len, m->data);

	snprintf(out, outlen, "%s",
		 a && a->reason && a->reason[0] ? a->reason : fallback);
	baton__handoff__abort__free_unpacked(a, NULL);
}

/* ---- source ---- */

enum source_state {
	SRC_IDLE,     /* no chunk outstanding; src->chunk is the next number */
	SRC_WAITING,  /* chunk src->chunk sent, waiting for PREPARED/ABORT */
	SRC_COMMITTING, /* COMMIT sent, waiting for COMMITTED */
	SRC_DEAD,     /* a chunk was aborted: the migration is over */
	SRC_FINISHED, /* DONE sent */
};

struct handoff_source {
	struct event_base *base;
	int fd;
	pid_t peer_pid;
	int peer_pidfd;         /* the target's pidfd (owned), or -1 */
	int timeout_ms;
	handoff_source_cb cb;
	void *arg;
	handoff_phase_fn phase_fn;
	void *phase_arg;
	struct event *ev_read;  /* channel readable, only while SRC_WAITING */
	struct event *ev_timer; /* PREPARED / COMMITTED wait bound */
	enum source_state state;
	uint32_t chunk;
	/* Pipelining (handoff_source_set_pipeline()): chunk + 1 went out
	 * behind COMMIT{chunk} (state SRC_COMMITTING) and waits for its
	 * PREPARED once COMMITTED{chunk} is in. */
	handoff_source_ready_fn ready_fn;
	void *ready_arg;
	bool second;
	bool no_more;           /* a second chunk failed to go out: none follows */
	int depth;              /* nesting of our libevent callbacks */
	bool free_pending;
};

static void source_phase(struct handoff_source *src, enum handoff_phase p,
			 uint32_t chunk)
{
	if (src->phase_fn)
		src->phase_fn(src->phase_arg, p, chunk);
}

/* Make sure the target can never commit the current chunk on its own, so the
 * caller may resume (the invariant of protocol.h): queue ABORT; if that is
 * impossible, kill the target and wait (bounded) until it is gone.
 *
 * -EPIPE / -ECONNRESET from the send mean the target's end of the channel is
 * closed in every process: nobody can see an EOF-in-PREPARED any more, so
 * nobody can commit on its own, and a target that merely closed its end (it
 * aborted, or is exiting) is not killed. */
static bool source_kill_target(struct handoff_source *src);

/* The same for `chunk` without touching the state (the chunk before it may
 * still wait for COMMITTED). */
static void source_abort_chunk(struct handoff_source *src, uint32_t chunk,
			       const char *reason)
{
	int r = send_abort(src->fd, chunk, reason, src->timeout_ms);

	if (r == 0 || r == -EPIPE || r == -ECONNRESET)
		return;
	source_kill_target(src);
}

static void source_abort_channel(struct handoff_source *src, const char *reason)
{
	event_del(src->ev_read);
	event_del(src->ev_timer);
	src->state = SRC_DEAD;
	source_abort_chunk(src, src->chunk, reason);
}

/* SIGKILL the target and wait (bounded) until it has exited. Returns true
 * once it is known dead: it can then neither commit on its own nor touch a
 * socket. The pidfd should come from the target's parent (the supervisor
 * opens it before the target can be reaped, so it always names the right
 * process); without one, a pidfd is opened from the pid now, which could hit
 * a pid recycled since the target was reaped (only tests run that way). */
static bool source_kill_target(struct handoff_source *src)
{
	struct pollfd pfd = { .fd = src->peer_pidfd, .events = POLLIN };
	int64_t deadline = clock_mono_ms() + KILL_WAIT_MS;
	bool own = false, dead = false;
	int r;

	if (pfd.fd < 0) {
		if (src->peer_pid <= 0)
			return false;
		pfd.fd = (int)syscall(SYS_pidfd_open, src->peer_pid, 0);
		if (pfd.fd < 0)
			return errno == ESRCH; /* ESRCH: already gone */
		own = true;
	}
	/* ESRCH: it has exited already (the pidfd still says so below). */
	if (syscall(SYS_pidfd_send_signal, pfd.fd, SIGKILL, NULL, 0) == 0 ||
	    errno == ESRCH) {
		/* A pidfd becomes readable when the process has exited. */
		while ((r = poll(&pfd, 1, remaining_ms(deadline))) < 0 &&
		       errno == EINTR)
			;
		dead = r > 0;
	}
	if (own)
		close(pfd.fd);
	return dead;
}

/* Read what the target queued without waiting: true if COMMITTED for the
 * outstanding chunk is among it. A timer can fire in the same loop pass as
 * the read event that would have delivered the acknowledgement, and every
 * queued datagram is read before EOF is reported. */
static bool source_drain_committed(struct handoff_source *src)
{
	struct frame_msg m;
	bool found = false;

	while (!found && frame_recv(src->fd, &m, 0) == 0) {
		if (m.type == HANDOFF_COMMITTED && m.nfds == 0) {
			Baton__Handoff__Committed *c =
				baton__handoff__committed__unpack(NULL, m.len,
								   m.data);

			found = c && c->chunk == src->chunk;
			baton__handoff__committed__free_unpacked(c, NULL);
		}
		frame_msg_clear(&m);
	}
	return found;
}

/* Report the outcome of the outstanding chunk. The caller must not touch
 * src afterwards (cb may have freed it, or started the next chunk). */
static void source_report(struct handoff_source *src, uint32_t chunk,
			  int result, const char *reason)
{
	src->cb(src, chunk, result, reason, src->arg);
}

/* Async abort of the outstanding chunk (timeout, EOF, malformed answer).
 *
 * After COMMIT went out an ABORT is useless (the target reads COMMIT first).
 * Then: a COMMITTED already queued means committed. EOF without one means
 * the target closed its end before acknowledging, so it never touched the
 * chunk's sockets: resume. Otherwise the target is killed; once it is known
 * dead, a COMMITTED that made it into the channel still means committed (the
 * sessions died with the target: the supervisor restarts them), and none
 * means resume. A target that can be neither heard nor killed keeps the
 * chunk (reported committed) rather than two processes serving the same
 * sockets. */
static void source_fail(struct handoff_source *src, int err, const char *reason)
{
	uint32_t chunk = src->chunk;
	bool second = src->second;

	src->second = false;
	if (src->state == SRC_COMMITTING) {
		const char *outcome = NULL;

		event_del(src->ev_read);
		event_del(src->ev_timer);
		if (source_drain_committed(src))
			outcome = "committed";
		else if (err != -ECONNRESET) {
			if (!source_kill_target(src))
				outcome = "committed (no COMMITTED, and the target could not be confirmed dead)";
			else if (source_drain_committed(src))
				outcome = "committed (the target died after acknowledging)";
		}
		/* The chunk that went out behind COMMIT never got a COMMIT of
		 * its own: it aborts whatever became of this one. ABORT queued
		 * (or the target dead) before it is reported, as for any
		 * chunk, so the target cannot commit it on EOF. */
		if (second)
			source_abort_chunk(src, chunk + 1, reason);
		if (outcome != NULL) {
			src->state = second || src->no_more ? SRC_DEAD : SRC_IDLE;
			src->chunk++;
			source_report(src, chunk, 0, outcome);
			if (second && !src->free_pending)
				source_report(src, chunk + 1, err, reason);
			return;
		}
		src->state = SRC_DEAD;
		source_report(src, chunk, err, reason);
		if (second && !src->free_pending)
			source_report(src, chunk + 1, err, reason);
		return;
	}
	source_abort_channel(src, reason);
	source_report(src, chunk, err, reason);
}

static void source_destroy(struct handoff_source *src)
{
	if (src->ev_read)
		event_free(src->ev_read);
	if (src->ev_timer)
		event_free(src->ev_timer);
	if (src->fd >= 0)
		close(src->fd);
	if (src->peer_pidfd >= 0)
		close(src->peer_pidfd);
	free(src);
}

static void source_handle(struct handoff_source *src, struct frame_msg *m)
{
	char reason[REASON_MAX];
	uint32_t chunk = src->chunk;

	if (m->nfds > 0) {
		snprintf(reason, sizeof(reason), "target sent fds with %s",
			 type_name(m->type));
		source_fail(src, -EPROTO, reason);
		return;
	}
	if (m->type == HANDOFF_COMMITTED && src->state == SRC_COMMITTING) {
		Baton__Handoff__Committed *c =
			baton__handoff__committed__unpack(NULL, m->len, m->data);
		bool ok = c && c->chunk == chunk;

		baton__handoff__committed__free_unpacked(c, NULL);
		if (!ok) {
			source_fail(src, -EPROTO, "malformed COMMITTED or wrong chunk");
			return;
		}
		event_del(src->ev_timer);
		src->chunk++;
		if (src->second) {
			/* The next chunk is out: now its PREPARED is awaited. */
			src->second = false;
			src->state = SRC_WAITING;
			if (arm_timer(src->ev_timer, src->timeout_ms) < 0) {
				source_report(src, chunk, 0, "committed");
				if (!src->free_pending)
					source_fail(src, -ENOMEM, "cannot arm the PREPARED timer");
				return;
			}
		} else {
			event_del(src->ev_read);
			src->state = src->no_more ? SRC_DEAD : SRC_IDLE;
		}
		source_report(src, chunk, 0, "committed");
		return;
	}
	if (m->type == HANDOFF_PREPARED && src->state == SRC_WAITING) {
		Baton__Handoff__Prepared *p =
			baton__handoff__prepared__unpack(NULL, m->len, m->data);
		Baton__Handoff__Commit c = BATON__HANDOFF__COMMIT__INIT;
		bool ok = p && p->chunk == chunk;
		int r;

		baton__handoff__prepared__free_unpacked(p, NULL);
		if (!ok) {
			source_fail(src, -EPROTO, "malformed PREPARED or wrong chunk");
			return;
		}
		source_phase(src, HANDOFF_PHASE_PREPARED_RECEIVED, chunk);
		c.chunk = chunk;
		r = send_pb(src->fd, HANDOFF_COMMIT, &c.base, NULL, 0,
			    src->timeout_ms);
		if (r < 0) {
			/* One small datagram: not queued at all, so ABORT (or
			 * the kill) still keeps the target from committing. */
			snprintf(reason, sizeof(reason), "cannot send COMMIT: %s",
				 strerror(-r));
			source_fail(src, r, reason);
			return;
		}
		src->state = SRC_COMMITTING;
		source_phase(src, HANDOFF_PHASE_COMMIT_SENT, chunk);
		if (arm_timer(src->ev_timer, src->timeout_ms) < 0) {
			source_fail(src, -ENOMEM, "cannot arm the COMMITTED timer");
			return;
		}
		/* COMMIT is on the channel: the next chunk may follow it now
		 * (the target reads it after COMMIT, as from any source). */
		if (src->ready_fn && !src->no_more && !src->free_pending)
			src->ready_fn(src, chunk, src->ready_arg);
		return;
	}
	if (m->type == HANDOFF_ABORT && src->state == SRC_WAITING) {
		/* The target already aborted: nothing to send back, nobody to
		 * kill. */
		abort_reason(m, "aborted by target", reason, sizeof(reason));
		event_del(src->ev_read);
		event_del(src->ev_timer);
		src->state = SRC_DEAD;
		source_report(src, chunk, -ECANCELED, reason);
		return;
	}
	snprintf(reason, sizeof(reason), "unexpected %s from target",
		 type_name(m->type));
	source_fail(src, -EPROTO, reason);
}

static void source_enter(struct handoff_source *src)
{
	src->depth++;
}

static void source_leave(struct handoff_source *src)
{
	if (--src->depth == 0 && src->free_pending)
		source_destroy(src);
}

static void source_on_read(evutil_socket_t fd, short what, void *arg)
{
	struct handoff_source *src = arg;
	struct frame_msg m;
	char reason[REASON_MAX];
	int r;

	if ((src->state != SRC_WAITING && src->state != SRC_COMMITTING) ||
	    src->free_pending)
		return;
	source_enter(src);
	r = frame_recv(src->fd, &m, src->timeout_ms);
	if (r == 0) {
		source_handle(src, &m);
		frame_msg_clear(&m);
	} else if (r == -ECONNRESET) {
		source_fail(src, r, "target closed the channel");
	} else if (r != -EAGAIN) {
		snprintf(reason, sizeof(reason), "channel: %s", strerror(-r));
		source_fail(src, r, reason);
	}
	source_leave(src);
}

static void source_on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct handoff_source *src = arg;

	if ((src->state != SRC_WAITING && src->state != SRC_COMMITTING) ||
	    src->free_pending)
		return;
	source_enter(src);
	source_fail(src, -ETIMEDOUT, src->state == SRC_WAITING ?
		    "timed out waiting for PREPARED" :
		    "timed out waiting for COMMITTED");
	source_leave(src);
}

struct handoff_source *handoff_source_new(struct event_base *base, int channel,
					  pid_t peer_pid, int timeout_ms,
					  handoff_source_cb cb, void *arg)
{
	struct handoff_source *src = NULL;
	int err;

	if (!base || channel < 0 || !cb) {
		err = EINVAL;
		goto fail;
	}
	err = -set_nonblock(channel);
	if (err)
		goto fail;
	src = calloc(1, sizeof(*src));
	if (!src) {
		err = ENOMEM;
		goto fail;
	}
	*src = (struct handoff_source){ .base = base, .fd = channel,
					.peer_pid = peer_pid,
					.peer_pidfd = -1,
					.timeout_ms = timeout_ms, .cb = cb,
					.arg = arg, .state = SRC_IDLE };
	src->ev_read = event_new(base, channel, EV_READ | EV_PERSIST,
				 source_on_read, src);
	src->ev_timer = evtimer_new(base, source_on_timer, src);
	if (!src->ev_read || !src->ev_timer) {
		source_destroy(src); /* closes channel */
		errno = ENOMEM;
		return NULL;
	}
	return src;
fail:
	/* Ownership of channel was transferred: close it on failure too. */
	if (channel >= 0)
		close(channel);
	errno = err;
	return NULL;
}

int handoff_source_send_chunk(struct handoff_source *src,
			      const struct handoff_item *items, size_t n)
{
	Baton__Handoff__Begin b = BATON__HANDOFF__BEGIN__INIT;
	Baton__Handoff__End e = BATON__HANDOFF__END__INIT;
	char reason[REASON_MAX];
	uint64_t total_fds = 0;
	int64_t deadline;
	uint32_t chunk;
	bool behind = false; /* goes out behind COMMIT of the outstanding one */
	int r;

	if (!src)
		return -EINVAL;
	if (src->state == SRC_COMMITTING && src->ready_fn && !src->second &&
	    !src->no_more && !src->free_pending)
		behind = true;
	else if (src->state == SRC_WAITING || src->state == SRC_COMMITTING)
		return -EBUSY;
	else if (src->state != SRC_IDLE || src->free_pending)
		return -EPIPE;
	chunk = behind ? src->chunk + 1 : src->chunk;
	if ((n > 0 && !items) || n > UINT32_MAX)
		return -EINVAL;
	/* Validate everything before the first byte goes out, so -EINVAL
	 * leaves the channel untouched and usable. */
	for (size_t i = 0; i < n; i++) {
		Baton__Handoff__Item it = BATON__HANDOFF__ITEM__INIT;

		if (items[i].nfds > FRAME_MAX_FDS ||
		    (items[i].nfds > 0 && !items[i].fds) ||
		    (items[i].len > 0 && !items[i].payload))
			return -EINVAL;
		it.index = (uint32_t)i;
		it.payload.len = items[i].len;
		it.payload.data = (uint8_t *)items[i].payload;
		it.fds = (uint32_t)items[i].nfds;
		if (items[i].len > FRAME_MAX_MESSAGE ||
		    protobuf_c_message_get_packed_size(&it.base) >
			    FRAME_MAX_MESSAGE)
			return -EINVAL;
		total_fds += items[i].nfds;
	}
	if (total_fds > UINT32_MAX)
		return -EINVAL;

	/* One bound for the whole chunk, not per frame. */
	deadline = src->timeout_ms < 0 ? -1 : clock_mono_ms() + src->timeout_ms;

	b.chunk = chunk;
	b.items = (uint32_t)n;
	b.fds = (uint32_t)total_fds;
	r = send_pb(src->fd, HANDOFF_BEGIN, &b.base, NULL, 0,
		    remaining_ms(deadline));
	if (r < 0)
		goto fail;
	source_phase(src, HANDOFF_PHASE_BEGIN_SENT, chunk);

	for (size_t i = 0; i < n; i++) {
		Baton__Handoff__Item it = BATON__HANDOFF__ITEM__INIT;

		it.index = (uint32_t)i;
		it.payload.len = items[i].len;
		it.payload.data = (uint8_t *)items[i].payload;
		it.fds = (uint32_t)items[i].nfds;
		r = send_pb(src->fd, HANDOFF_ITEM, &it.base, items[i].fds,
			    items[i].nfds, remaining_ms(deadline));
		if (r < 0)
			goto fail;
	}

	e.chunk = chunk;
	r = send_pb(src->fd, HANDOFF_END, &e.base, NULL, 0,
		    remaining_ms(deadline));
	if (r < 0)
		goto fail;
	source_phase(src, HANDOFF_PHASE_END_SENT, chunk);

	if (behind) {
		/* ev_read and the COMMITTED timer run already; the PREPARED
		 * timer starts when COMMITTED{chunk - 1} arrives. */
		src->second = true;
		return 0;
	}
	if (event_add(src->ev_read, NULL) < 0 ||
	    arm_timer(src->ev_timer, src->timeout_ms) < 0) {
		r = -ENOMEM;
		goto fail;
	}
	src->state = SRC_WAITING;
	return 0;

fail:
	/* Possibly a partial message is on the channel: the target will see a
	 * broken frame or ABORT and abort; either way it never reaches
	 * PREPARED for this chunk. */
	snprintf(reason, sizeof(reason), "source could not send chunk %u: %s",
		 chunk, strerror(-r));
	if (behind) {
		/* The chunk before it waits for COMMITTED on: its outcome is
		 * still reported through cb; no chunk follows. */
		src->no_more = true;
		source_abort_chunk(src, chunk, reason);
		return r;
	}
	source_abort_channel(src, reason);
	return r;
}

int handoff_source_finish(struct handoff_source *src)
{
	Baton__Handoff__Done d = BATON__HANDOFF__DONE__INIT;
	int r;

	if (!src)
		return -EINVAL;
	if (src->state == SRC_WAITING || src->state == SRC_COMMITTING)
		return -EBUSY;
	if (src->state != SRC_IDLE || src->free_pending)
		return -EPIPE;
	d.chunks = src->chunk; /* every chunk so far was committed */
	r = send_pb(src->fd, HANDOFF_DONE, &d.base, NULL, 0, src->timeout_ms);
	src->state = r < 0 ? SRC_DEAD : SRC_FINISHED;
	return r;
}

void handoff_source_set_phase_hook(struct handoff_source *src,
				   handoff_phase_fn fn, void *arg)
{
	if (!src)
		return;
	src->phase_fn = fn;
	src->phase_arg = arg;
}

void handoff_source_set_pipeline(struct handoff_source *src,
				  handoff_source_ready_fn fn, void *arg)
{
	if (!src)
		return;
	src->ready_fn = fn;
	src->ready_arg = arg;
}

bool handoff_source_committed_queued(struct handoff_source *src)
{
	uint8_t hdr[FRAME_HEADER];
	ssize_t n;

	if (!src || src->state != SRC_COMMITTING || src->free_pending)
		return false;
	/* The first datagram the target sends after COMMIT{chunk} is
	 * COMMITTED{chunk} (or nothing): its header's type says enough. */
	n = recv(src->fd, hdr, sizeof(hdr), MSG_PEEK | MSG_DONTWAIT);
	return n == (ssize_t)sizeof(hdr) && hdr[3] == HANDOFF_COMMITTED;
}

void handoff_source_set_peer_pidfd(struct handoff_source *src, int pidfd)
{
	if (!src) {
		if (pidfd >= 0)
			close(pidfd);
		return;
	}
	if (src->peer_pidfd >= 0)
		close(src->peer_pidfd);
	src->peer_pidfd = pidfd;
}

void handoff_source_free(struct handoff_source *src)
{
	if (!src)
		return;
	if (src->depth > 0) {
		/* Inside our own callback: the outermost one frees. */
		event_del(src->ev_read);
		event_del(src->ev_timer);
		src->free_pending = true;
		return;
	}
	source_destroy(src);
}

/* ---- target ---- */

enum target_state {
	T_WAIT_BEGIN, /* expecting BEGIN{t->chunk}, DONE or ABORT */
	T_IN_CHUNK,   /* BEGIN accepted: ITEMs, then END */
	T_PREPARED,   /* PREPARED sent: COMMIT or ABORT, no timeout */
	T_FINISHED,   /* done() called */
};

struct handoff_target {
	struct event_base *base;
	int fd;
	int timeout_ms;
	const struct handoff_target_ops *ops;
	void *arg;
	handoff_phase_fn phase_fn;
	void *phase_arg;
	struct event *ev_read;
	struct event *ev_timer;
	enum target_state state;
	uint32_t chunk;      /* open chunk, or the next one expected */
	uint32_t items;      /* announced by BEGIN */
	uint32_t fds;        /* announced by BEGIN */
	uint32_t next_index; /* next ITEM index expected */
	uint32_t fds_seen;   /* fds received in this chunk so far */
	uint32_t committed;
	int depth;
	bool free_pending;
};

static bool target_chunk_open(const struct handoff_target *t)
{
	return t->state == T_IN_CHUNK || t->state == T_PREPARED;
}

static void target_phase(struct handoff_target *t, enum handoff_phase p)
{
	if (t->phase_fn)
		t->phase_fn(t->phase_arg, p, t->chunk);
}

/* End of the migration: done() is the last user call. */
static void target_finish(struct handoff_target *t, int result,
			  const char *reason)
{
	t->state = T_FINISHED;
	event_del(t->ev_read);
	event_del(t->ev_timer);
	t->ops->done(t->arg, result, reason, t->committed);
}

/* Discard the open chunk (if any), tell the source, and finish with err. */
static void target_fail(struct handoff_target *t, int err, const char *reason)
{
	if (target_chunk_open(t)) {
		t->ops->abort(t->arg, t->chunk, reason);
		if (t->free_pending)
			return;
	}
	/* Best effort: the source may be gone; it aborts on its own then. */
	(void)send_abort(t->fd, t->chunk, reason, t->timeout_ms);
	target_finish(t, err, reason);
}

static void target_protocol_error(struct handoff_target *t, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void target_protocol_error(struct handoff_target *t, const char *fmt, ...)
{
	char reason[REASON_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	target_fail(t, -EPROTO, reason);
}

static const char *target_state_name(const struct handoff_target *t)
{
	switch (t->state) {
	case T_WAIT_BEGIN: return "waiting for BEGIN";
	case T_IN_CHUNK: return "inside a chunk";
	case T_PREPARED: return "prepared";
	default: return "finished";
	}
}

static void target_on_begin(struct handoff_target *t, struct frame_msg *m)
{
	Baton__Handoff__Begin *b =
		baton__handoff__begin__unpack(NULL, m->len, m->data);

	if (!b) {
		target_protocol_error(t, "malformed BEGIN");
		return;
	}
	if (b->chunk != t->chunk) {
		target_protocol_error(t, "BEGIN of chunk %u, expected chunk %u",
				      b->chunk, t->chunk);
		baton__handoff__begin__free_unpacked(b, NULL);
		return;
	}
	t->items = b->items;
	t->fds = b->fds;
	t->next_index = 0;
	t->fds_seen = 0;
	t->state = T_IN_CHUNK;
	baton__handoff__begin__free_unpacked(b, NULL);
	target_phase(t, HANDOFF_PHASE_BEGIN_RECEIVED);
}

static void target_on_item(struct handoff_target *t, struct frame_msg *m)
{
	Baton__Handoff__Item *it = NULL;
	char reason[REASON_MAX] = "";
	int r;

	if (t->next_index >= t->items) {
		target_protocol_error(t, "ITEM beyond the %u announced", t->items);
		return;
	}
	it = baton__handoff__item__unpack(NULL, m->len, m->data);
	if (!it) {
		target_protocol_error(t, "malformed ITEM %u", t->next_index);
		return;
	}
	if (it->index != t->next_index) {
		target_protocol_error(t, "ITEM index %u, expected %u",
				      it->index, t->next_index);
		goto out;
	}
	if (it->fds != m->nfds) {
		target_protocol_error(t, "ITEM %u announces %u fds but carries %zu",
				      it->index, it->fds, m->nfds);
		goto out;
	}
	if (m->nfds > (size_t)(t->fds - t->fds_seen)) {
		target_protocol_error(t, "ITEM %u exceeds the %u fds announced",
				      it->index, t->fds);
		goto out;
	}

	/* prepare() owns the fds from here in every case. */
	r = t->ops->prepare(t->arg, t->chunk, it->index, it->payload.data,
			    it->payload.len, m->fds, m->nfds, reason,
			    sizeof(reason));
	for (size_t i = 0; i < m->nfds; i++)
		m->fds[i] = -1; /* transferred to prepare() */
	if (t->free_pending)
		goto out;
	if (r != 0) {
		if (!reason[0])
			snprintf(reason, sizeof(reason),
				 "prepare of item %u failed: %s", it->index,
				 strerror(r < 0 ? -r : EINVAL));
		target_fail(t, r < 0 ? r : -EINVAL, reason);
		goto out;
	}
	t->fds_seen += (uint32_t)m->nfds;
	t->next_index++;
out:
	baton__handoff__item__free_unpacked(it, NULL);
}

static void target_on_end(struct handoff_target *t, struct frame_msg *m)
{
	Baton__Handoff__End *e = baton__handoff__end__unpack(NULL, m->len, m->data);
	Baton__Handoff__Prepared p = BATON__HANDOFF__PREPARED__INIT;
	char reason[REASON_MAX];
	uint32_t chunk;
	int r;

	if (!e) {
		target_protocol_error(t, "malformed END");
		return;
	}
	chunk = e->chunk;
	baton__handoff__end__free_unpacked(e, NULL);
	if (chunk != t->chunk) {
		target_protocol_error(t, "END of chunk %u inside chunk %u",
				      chunk, t->chunk);
		return;
	}
	if (t->next_index != t->items) {
		target_protocol_error(t, "END after %u items, %u announced",
				      t->next_index, t->items);
		return;
	}
	if (t->fds_seen != t->fds) {
		target_protocol_error(t, "END after %u fds, %u announced",
				      t->fds_seen, t->fds);
		return;
	}
	target_phase(t, HANDOFF_PHASE_END_RECEIVED);

	p.chunk = t->chunk;
	r = send_pb(t->fd, HANDOFF_PREPARED, &p.base, NULL, 0, t->timeout_ms);
	if (r < 0) {
		snprintf(reason, sizeof(reason), "cannot send PREPARED: %s",
			 strerror(-r));
		target_fail(t, r, reason);
		return;
	}
	/* From here only the source decides: no timeout (protocol.h). */
	t->state = T_PREPARED;
	event_del(t->ev_timer);
	target_phase(t, HANDOFF_PHASE_PREPARED_SENT);
}

static void target_on_commit(struct handoff_target *t, struct frame_msg *m)
{
	Baton__Handoff__Commit *c =
		baton__handoff__commit__unpack(NULL, m->len, m->data);
	Baton__Handoff__Committed ack = BATON__HANDOFF__COMMITTED__INIT;
	uint32_t chunk;
	int r;

	if (!c) {
		target_protocol_error(t, "malformed COMMIT");
		return;
	}
	chunk = c->chunk;
	baton__handoff__commit__free_unpacked(c, NULL);
	if (chunk != t->chunk) {
		target_protocol_error(t, "COMMIT of chunk %u, prepared %u",
				      chunk, t->chunk);
		return;
	}
	target_phase(t, HANDOFF_PHASE_COMMIT_RECEIVED);
	/* Acknowledge before arming: a source that gets no COMMITTED knows we
	 * never touched the sockets and resumes them (protocol.h). */
	ack.chunk = chunk;
	r = send_pb(t->fd, HANDOFF_COMMITTED, &ack.base, NULL, 0, t->timeout_ms);
	/* -EPIPE / -ECONNRESET: the source is gone after sending COMMIT. Having
	 * sent it, the source resumes only after killing us, so nobody else
	 * will serve these sockets: commit. Any other failure (a source that
	 * stopped reading) aborts; that source will time out and kill us. */
	if (r < 0 && r != -EPIPE && r != -ECONNRESET) {
		char reason[REASON_MAX];

		snprintf(reason, sizeof(reason), "cannot send COMMITTED: %s",
			 strerror(-r));
		t->ops->abort(t->arg, chunk, reason);
		if (t->free_pending)
			return;
		target_finish(t, r, reason);
		return;
	}
	t->state = T_WAIT_BEGIN;
	t->committed++;
	t->chunk++;
	t->ops->commit(t->arg, chunk);
}

static void target_on_done(struct handoff_target *t, struct frame_msg *m)
{
	Baton__Handoff__Done *d = baton__handoff__done__unpack(NULL, m->len, m->data);
	uint32_t chunks;

	if (!d) {
		target_protocol_error(t, "malformed DONE");
		return;
	}
	chunks = d->chunks;
	baton__handoff__done__free_unpacked(d, NULL);
	if (chunks != t->committed) {
		target_protocol_error(t, "DONE after %u chunks, %u committed",
				      chunks, t->committed);
		return;
	}
	target_finish(t, 0, "done");
}

static void target_on_abort(struct handoff_target *t, struct frame_msg *m)
{
	char reason[REASON_MAX];

	/* Whatever chunk it names, an ABORT ends the migration: aborting is
	 * always the safe direction. */
	abort_reason(m, "aborted by source", reason, sizeof(reason));
	if (target_chunk_open(t)) {
		t->ops->abort(t->arg, t->chunk, reason);
		if (t->free_pending)
			return;
	}
	target_finish(t, -ECANCELED, reason);
}

/* Dispatch one message; the allowed types depend on the phase. */
static void target_handle(struct handoff_target *t, struct frame_msg *m)
{
	if (m->nfds > 0 && m->type != HANDOFF_ITEM) {
		target_protocol_error(t, "%zu fds attached to %s", m->nfds,
				      type_name(m->type));
		return;
	}
	if (m->type == HANDOFF_ABORT) {
		target_on_abort(t, m);
		return;
	}
	switch (t->state) {
	case T_WAIT_BEGIN:
		if (m->type == HANDOFF_BEGIN)
			target_on_begin(t, m);
		else if (m->type == HANDOFF_DONE)
			target_on_done(t, m);
		else
			goto unexpected;
		return;
	case T_IN_CHUNK:
		if (m->type == HANDOFF_ITEM)
			target_on_item(t, m);
		else if (m->type == HANDOFF_END)
			target_on_end(t, m);
		else
			goto unexpected;
		return;
	case T_PREPARED:
		if (m->type == HANDOFF_COMMIT)
			target_on_commit(t, m);
		else
			goto unexpected;
		return;
	case T_FINISHED:
		return;
	}
unexpected:
	target_protocol_error(t, "unexpected %s (type %u) %s",
			      type_name(m->type), m->type, target_state_name(t));
}

/* The channel failed (EOF, broken frame, fragment timeout). */
static void target_channel_error(struct handoff_target *t, int err)
{
	char reason[REASON_MAX];

	if (err != -ECONNRESET) {
		snprintf(reason, sizeof(reason), "channel: %s", strerror(-err));
		target_fail(t, err, reason);
		return;
	}
	switch (t->state) {
	case T_PREPARED:
		/* The source sends ABORT before it resumes (or kills us), so
		 * EOF without either means it is dead and never resumed the
		 * chunk: committing is the only way not to lose it. */
		t->committed++;
		t->ops->commit(t->arg, t->chunk);
		if (t->free_pending)
			return;
		target_finish(t, 0, "source gone after PREPARED: committed");
		return;
	case T_IN_CHUNK:
		t->ops->abort(t->arg, t->chunk, "source closed the channel");
		if (t->free_pending)
			return;
		target_finish(t, -ECONNRESET, "source closed the channel");
		return;
	default:
		target_finish(t, -ECONNRESET, "source closed the channel before DONE");
		return;
	}
}

static void target_destroy(struct handoff_target *t)
{
	if (t->ev_read)
		event_free(t->ev_read);
	if (t->ev_timer)
		event_free(t->ev_timer);
	if (t->fd >= 0)
		close(t->fd);
	free(t);
}

static void target_leave(struct handoff_target *t)
{
	/* Each wait outside PREPARED is bounded: restart the clock. */
	if (!t->free_pending &&
	    (t->state == T_WAIT_BEGIN || t->state == T_IN_CHUNK) &&
	    arm_timer(t->ev_timer, t->timeout_ms) < 0)
		target_fail(t, -ENOMEM, "cannot arm timer");
	if (--t->depth == 0 && t->free_pending)
		target_destroy(t);
}

static void target_on_read(evutil_socket_t fd, short what, void *arg)
{
	struct handoff_target *t = arg;

	if (t->state == T_FINISHED || t->free_pending)
		return;
	t->depth++;
	for (int i = 0; i < TARGET_BATCH; i++) {
		struct frame_msg m;
		int r;

		if (t->state == T_FINISHED || t->free_pending)
			break;
		r = frame_recv(t->fd, &m, t->timeout_ms);
		if (r == -EAGAIN)
			break;
		if (r < 0) {
			target_channel_error(t, r);
			break;
		}
		target_handle(t, &m);
		frame_msg_clear(&m); /* closes fds nobody took */
	}
	target_leave(t);
}

static void target_on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct handoff_target *t = arg;
	char reason[REASON_MAX];

	if (t->state == T_FINISHED || t->state == T_PREPARED || t->free_pending)
		return;
	t->depth++;
	snprintf(reason, sizeof(reason), "timed out %s",
		 target_state_name(t));
	target_fail(t, -ETIMEDOUT, reason);
	target_leave(t);
}

struct handoff_target *handoff_target_new(struct event_base *base, int channel,
					  int timeout_ms,
					  const struct handoff_target_ops *ops,
					  void *arg)
{
	struct handoff_target *t = NULL;
	int err;

	if (!base || channel < 0 || !ops || !ops->prepare || !ops->commit ||
	    !ops->abort || !ops->done) {
		err = EINVAL;
		goto fail;
	}
	err = -set_nonblock(channel);
	if (err)
		goto fail;
	t = calloc(1, sizeof(*t));
	if (!t) {
		err = ENOMEM;
		goto fail;
	}
	*t = (struct handoff_target){ .base = base, .fd = channel,
				      .timeout_ms = timeout_ms, .ops = ops,
				      .arg = arg, .state = T_WAIT_BEGIN };
	t->ev_read = event_new(base, channel, EV_READ | EV_PERSIST,
			       target_on_read, t);
	t->ev_timer = evtimer_new(base, target_on_timer, t);
	if (!t->ev_read || !t->ev_timer || event_add(t->ev_read, NULL) < 0 ||
	    arm_timer(t->ev_timer, timeout_ms) < 0) {
		target_destroy(t); /* closes channel */
		errno = ENOMEM;
		return NULL;
	}
	return t;
fail:
	/* Ownership of channel was transferred: close it on failure too. */
	if (channel >= 0)
		close(channel);
	errno = err;
	return NULL;
}

void handoff_target_set_phase_hook(struct handoff_target *t,
				   handoff_phase_fn fn, void *arg)
{
	if (!t)
		return;
	t->phase_fn = fn;
	t->phase_arg = arg;
}

void handoff_target_free(struct handoff_target *t)
{
	if (!t)
		return;
	if (t->depth > 0) {
		/* Inside our own callback: the outermost one frees. */
		event_del(t->ev_read);
		event_del(t->ev_timer);
		t->free_pending = true;
		return;
	}
	target_destroy(t);
}
