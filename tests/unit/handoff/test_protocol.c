/* tests/unit/handoff/test_protocol.c: handoff/protocol.c — the source and
 * target state machines in one process with one event_base, and a target
 * driven by a hand-written (misbehaving) source and vice versa. Every test
 * ends with an fd count equal to the one it started with. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "handoff.pb-c.h"
#include "common/frame.h"
#include "handoff/protocol.h"

#define MAX_FDS 64
#define MAX_PHASES 32

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	assert_non_null(d);
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct ctx {
	struct event_base *base;
	struct event *guard;

	/* target side */
	struct handoff_target *t;
	int fail_at_index;            /* prepare fails at this index (-1: never) */
	int prepares, commits, aborts;
	bool done;
	int done_result;
	uint32_t done_chunks;
	char done_reason[256];
	char abort_reason[256];
	char payloads[8][128];        /* "chunk/index:payload-prefix" */
	int npayloads;
	size_t big_len;               /* length of a large payload seen */
	int pending[MAX_FDS];         /* fds of prepared, uncommitted items */
	int npending;
	int adopted[MAX_FDS];         /* fds of committed items, in order */
	int nadopted;
	enum handoff_phase tphases[MAX_PHASES];
	int ntphases;
	bool prepared_sent;

	/* source side */
	struct handoff_source *src;
	int src_cbs;
	int src_result[4];
	uint32_t src_chunk[4];
	char src_reason[256];
	enum handoff_phase sphases[MAX_PHASES];
	int nsphases;
	const struct handoff_item *next_items; /* sent from cb after chunk 0 */
	size_t next_n;
	int *src_fds_to_close;        /* closed by the source after commit */
	int nsrc_fds;
};

static int t_prepare(void *arg, uint32_t chunk, uint32_t index,
		     const uint8_t *payload, size_t len, int *fds, size_t nfds,
		     char *reason, size_t reason_len)
{
	struct ctx *c = arg;

	c->prepares++;
	if ((int)index == c->fail_at_index) {
		for (size_t i = 0; i < nfds; i++)
			close(fds[i]);
		snprintf(reason, reason_len, "nope");
		return -EINVAL;
	}
	if (len > 1000)
		c->big_len = len;
	if (c->npayloads < 8)
		snprintf(c->payloads[c->npayloads++], 128, "%u/%u:%.*s", chunk,
			 index, (int)(len > 40 ? 40 : len), (const char *)payload);
	for (size_t i = 0; i < nfds; i++) {
		assert_true(c->npending < MAX_FDS);
		c->pending[c->npending++] = fds[i];
	}
	return 0;
}

static void t_commit(void *arg, uint32_t chunk)
{
	struct ctx *c = arg;

	c->commits++;
	for (int i = 0; i < c->npending; i++)
		c->adopted[c->nadopted++] = c->pending[i];
	c->npending = 0;
}

static void t_abort(void *arg, uint32_t chunk, const char *reason)
{
	struct ctx *c = arg;

	c->aborts++;
	snprintf(c->abort_reason, sizeof(c->abort_reason), "%s", reason);
	for (int i = 0; i < c->npending; i++)
		close(c->pending[i]);
	c->npending = 0;
}

static void t_done(void *arg, int result, const char *reason, uint32_t chunks)
{
	struct ctx *c = arg;

	assert_false(c->done); /* exactly once */
	c->done = true;
	c->done_result = result;
	c->done_chunks = chunks;
	snprintf(c->done_reason, sizeof(c->done_reason), "%s", reason);
	/* Freeing from inside done must be safe (STYLE.md rule 8). */
	handoff_target_free(c->t);
	c->t = NULL;
}

static const struct handoff_target_ops ops = {
	.prepare = t_prepare,
	.commit = t_commit,
	.abort = t_abort,
	.done = t_done,
};

static void t_phase(void *arg, enum handoff_phase p, uint32_t chunk)
{
	struct ctx *c = arg;

	if (c->ntphases < MAX_PHASES)
		c->tphases[c->ntphases++] = p;
	if (p == HANDOFF_PHASE_PREPARED_SENT)
		c->prepared_sent = true;
}

static void s_phase(void *arg, enum handoff_phase p, uint32_t chunk)
{
	struct ctx *c = arg;

	if (c->nsphases < MAX_PHASES)
		c->sphases[c->nsphases++] = p;
}

static void s_cb(struct handoff_source *src, uint32_t chunk, int result,
		 const char *reason, void *arg)
{
	struct ctx *c = arg;

	assert_ptr_equal(src, c->src);
	assert_non_null(reason);
	assert_true(c->src_cbs < 4);
	c->src_chunk[c->src_cbs] = chunk;
	c->src_result[c->src_cbs] = result;
	c->src_cbs++;
	snprintf(c->src_reason, sizeof(c->src_reason), "%s", reason);
	if (result == 0) {
		/* Committed: the source closes its copies. */
		for (int i = 0; i < c->nsrc_fds; i++)
			close(c->src_fds_to_close[i]);
		c->nsrc_fds = 0;
	}
	if (result == 0 && c->next_items) {
		/* Start the next chunk from inside the callback. */
		const struct handoff_item *items = c->next_items;

		c->next_items = NULL;
		assert_int_equal(handoff_source_send_chunk(src, items, c->next_n), 0);
		return;
	}
	if (result == 0)
		assert_int_equal(handoff_source_finish(src), 0);
	/* Freeing from inside cb must be safe too. */
	handoff_source_free(src);
	c->src = NULL;
}

static void guard_cb(evutil_socket_t fd, short what, void *arg)
{
}

static void ctx_init(struct ctx *c)
{
	struct timeval tv = { 0, 10000 };

	*c = (struct ctx){ .fail_at_index = -1 };
	c->base = event_base_new();
	assert_non_null(c->base);
	/* Keeps EVLOOP_ONCE from blocking forever when nothing else is armed. */
	c->guard = event_new(c->base, -1, EV_PERSIST, guard_cb, NULL);
	event_add(c->guard, &tv);
}

static void ctx_fini(struct ctx *c)
{
	handoff_target_free(c->t);
	handoff_source_free(c->src);
	for (int i = 0; i < c->npending; i++)
		close(c->pending[i]);
	for (int i = 0; i < c->nadopted; i++)
		close(c->adopted[i]);
	event_free(c->guard);
	event_base_free(c->base);
}

/* Run the loop until *flag or ms pass. */
static bool run_until(struct ctx *c, const bool *flag, int ms)
{
	int64_t end = now_ms() + ms;

	while (!*flag && now_ms() < end)
		event_base_loop(c->base, EVLOOP_ONCE);
	return *flag;
}

static void run_for(struct ctx *c, int ms)
{
	bool never = false;

	run_until(c, &never, ms);
}

static struct handoff_target *target_on(struct ctx *c, int sock, int timeout)
{
	c->t = handoff_target_new(c->base, sock, timeout, &ops, c);
	assert_non_null(c->t);
	handoff_target_set_phase_hook(c->t, t_phase, c);
	return c->t;
}

/* ---- a hand-written source ---- */

static void raw_pb(int sock, uint8_t type, const ProtobufCMessage *m,
		   const int *fds, size_t nfds)
{
	size_t len = protobuf_c_message_get_packed_size(m);
	uint8_t *buf = malloc(len + 1);

	assert_non_null(buf);
	protobuf_c_message_pack(m, buf);
	assert_int_equal(frame_send(sock, type, buf, len, fds, nfds, 1000), 0);
	free(buf);
}

static void raw_begin(int sock, uint32_t chunk, uint32_t items, uint32_t fds)
{
	Baton__Handoff__Begin b = BATON__HANDOFF__BEGIN__INIT;

	b.chunk = chunk;
	b.items = items;
	b.fds = fds;
	raw_pb(sock, HANDOFF_BEGIN, &b.base, NULL, 0);
}

/* ITEM announcing `declared` fds with `attached` fresh pipe ends attached. */
static void raw_item(int sock, uint32_t index, const char *payload,
		     uint32_t declared, size_t attached)
{
	Baton__Handoff__Item it = BATON__HANDOFF__ITEM__INIT;
	int fds[8];

	assert_true(attached <= 8);
	for (size_t i = 0; i < attached; i++)
		assert_true((fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0);
	it.index = index;
	it.payload.data = (uint8_t *)payload;
	it.payload.len = strlen(payload);
	it.fds = declared;
	raw_pb(sock, HANDOFF_ITEM, &it.base, fds, attached);
	for (size_t i = 0; i < attached; i++)
		close(fds[i]);
}

#define RAW_CHUNK_MSG(fn, Type, TYPE, INIT)                                \
	static void fn(int sock, uint32_t chunk)                           \
	{                                                                  \
		Baton__Handoff__##Type m = INIT;                           \
		m.chunk = chunk;                                           \
		raw_pb(sock, HANDOFF_##TYPE, &m.base, NULL, 0);            \
	}
RAW_CHUNK_MSG(raw_end, End, END, BATON__HANDOFF__END__INIT)
RAW_CHUNK_MSG(raw_commit, Commit, COMMIT, BATON__HANDOFF__COMMIT__INIT)

static void raw_done(int sock, uint32_t chunks)
{
	Baton__Handoff__Done d = BATON__HANDOFF__DONE__INIT;

	d.chunks = chunks;
	raw_pb(sock, HANDOFF_DONE, &d.base, NULL, 0);
}

static void raw_abort(int sock, uint32_t chunk, const char *reason)
{
	Baton__Handoff__Abort a = BATON__HANDOFF__ABORT__INIT;

	a.chunk = chunk;
	a.reason = (char *)reason;
	raw_pb(sock, HANDOFF_ABORT, &a.base, NULL, 0);
}

/* Read what the target sent until nothing is left; return the type of the
 * last message (0 if none) and copy an ABORT reason. */
static int drain(int sock, char *abort_reason, size_t len)
{
	struct frame_msg m;
	int last = 0;

	while (frame_recv(sock, &m, 50) == 0) {
		last = m.type;
		assert_int_equal(m.nfds, 0);
		if (m.type == HANDOFF_ABORT && abort_reason) {
			Baton__Handoff__Abort *a =
				baton__handoff__abort__unpack(NULL, m.len, m.data);

			assert_non_null(a);
			snprintf(abort_reason, len, "%s", a->reason ? a->reason : "");
			baton__handoff__abort__free_unpacked(a, NULL);
		}
		frame_msg_clear(&m);
	}
	return last;
}

/* A child that only waits to be killed (it dies with us too): a real pid
 * for the source's kill-and-confirm path. */
static pid_t fork_paused_child(void)
{
	pid_t child = fork();

	assert_true(child >= 0);
	if (child == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		for (;;)
			pause();
	}
	return child;
}

/* ---- source and target together ---- */

struct pipes {
	int r[4], w[4];
};

static void test_happy_path_two_chunks(void **state)
{
	int base = count_fds();
	struct ctx c;
	struct pipes p;
	int sv[2];
	size_t big_len = 200 * 1024; /* fragmented ITEM */
	char *big = malloc(big_len);
	int src_fds[4];
	struct handoff_item chunk0[3], chunk1[1];
	static const enum handoff_phase sexp[] = {
		HANDOFF_PHASE_BEGIN_SENT, HANDOFF_PHASE_END_SENT,
		HANDOFF_PHASE_PREPARED_RECEIVED, HANDOFF_PHASE_COMMIT_SENT,
	};
	static const enum handoff_phase texp[] = {
		HANDOFF_PHASE_BEGIN_RECEIVED, HANDOFF_PHASE_END_RECEIVED,
		HANDOFF_PHASE_PREPARED_SENT, HANDOFF_PHASE_COMMIT_RECEIVED,
	};

	assert_non_null(big);
	memset(big, 'B', big_len);
	memcpy(big, "big-item", 8);
	for (int i = 0; i < 4; i++) {
		int fd[2];

		assert_int_equal(pipe2(fd, O_CLOEXEC), 0);
		p.r[i] = fd[0];
		p.w[i] = fd[1];
		src_fds[i] = fd[1];
	}
	chunk0[0] = (struct handoff_item){ "alice", 5, &src_fds[0], 1 };
	chunk0[1] = (struct handoff_item){ "bob", 3, &src_fds[1], 2 };
	chunk0[2] = (struct handoff_item){ "", 0, NULL, 0 };
	chunk1[0] = (struct handoff_item){ big, big_len, &src_fds[3], 1 };

	ctx_init(&c);
	assert_int_equal(frame_socketpair(sv), 0);
	c.src = handoff_source_new(c.base, sv[0], 0, 2000, s_cb, &c);
	assert_non_null(c.src);
	handoff_source_set_phase_hook(c.src, s_phase, &c);
	target_on(&c, sv[1], 2000);

	c.next_items = chunk1;
	c.next_n = 1;
	/* The source closes all its copies once chunk 0 commits; chunk 1's
	 * fd is closed below after the final commit. */
	c.src_fds_to_close = src_fds;
	c.nsrc_fds = 3;
	assert_int_equal(handoff_source_send_chunk(c.src, chunk0, 3), 0);
	assert_int_equal(handoff_source_send_chunk(c.src, chunk0, 3), -EBUSY);
	assert_true(run_until(&c, &c.done, 5000));
	close(src_fds[3]);

	assert_int_equal(c.src_cbs, 2);
	assert_int_equal(c.src_chunk[0], 0);
	assert_int_equal(c.src_result[0], 0);
	assert_int_equal(c.src_chunk[1], 1);
	assert_int_equal(c.src_result[1], 0);
	assert_null(c.src); /* freed inside cb */

	assert_int_equal(c.done_result, 0);
	assert_int_equal(c.done_chunks, 2);
	assert_int_equal(c.commits, 2);
	assert_int_equal(c.aborts, 0);
	assert_int_equal(c.npayloads, 4);
	assert_string_equal(c.payloads[0], "0/0:alice");
	assert_string_equal(c.payloads[1], "0/1:bob");
	assert_string_equal(c.payloads[2], "0/2:");
	assert_memory_equal(c.payloads[3], "1/0:big-itemBBB", 15);
	assert_int_equal(c.big_len, big_len);

	/* The adopted fds are the very pipes the source sent. */
	assert_int_equal(c.nadopted, 4);
	for (int i = 0; i < 4; i++) {
		char buf[4] = "";

		assert_true(fcntl(c.adopted[i], F_GETFD) & FD_CLOEXEC);
		assert_int_equal(write(c.adopted[i], "z", 1), 1);
		/* src_fds[1] and [2] both went with item 1 */
		assert_int_equal(read(p.r[i], buf, sizeof(buf)), 1);
		assert_int_equal(buf[0], 'z');
	}

	assert_int_equal(c.nsphases, 8);
	assert_int_equal(c.ntphases, 8);
	for (int i = 0; i < 8; i++) {
		assert_int_equal(c.sphases[i], sexp[i % 4]);
		assert_int_equal(c.tphases[i], texp[i % 4]);
	}

	for (int i = 0; i < 4; i++)
		close(p.r[i]);
	ctx_fini(&c);
	free(big);
	assert_int_equal(count_fds(), base);
}

/* The target's prepare fails on item 1: it aborts the chunk (item 0's fds
 * closed by the abort op), sends ABORT, and the source reports the chunk
 * aborted with the target's reason. */
static void test_target_aborts_on_prepare_failure(void **state)
{
	int base = count_fds();
	struct ctx c;
	int sv[2];
	int fds[3];
	struct handoff_item items[3];

	for (int i = 0; i < 3; i++)
		assert_true((fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0);
	for (int i = 0; i < 3; i++)
		items[i] = (struct handoff_item){ "item", 4, &fds[i], 1 };

	ctx_init(&c);
	c.fail_at_index = 1;
	assert_int_equal(frame_socketpair(sv), 0);
	c.src = handoff_source_new(c.base, sv[0], 0, 2000, s_cb, &c);
	assert_non_null(c.src);
	target_on(&c, sv[1], 2000);
	assert_int_equal(handoff_source_send_chunk(c.src, items, 3), 0);
	assert_true(run_until(&c, &c.done, 5000));
	run_until(&c, (bool[]){ false }, 50);
	assert_int_equal(c.src_cbs, 1);
	assert_int_equal(c.src_result[0], -ECANCELED);
	assert_string_equal(c.src_reason, "nope");
	assert_int_equal(c.done_result, -EINVAL);
	assert_string_equal(c.done_reason, "nope");
	assert_int_equal(c.aborts, 1);
	assert_int_equal(c.commits, 0);
	assert_int_equal(c.npending, 0);
	assert_int_equal(c.done_chunks, 0);

	for (int i = 0; i < 3; i++)
		close(fds[i]);
	ctx_fini(&c);
	assert_int_equal(count_fds(), base);
}

/* A target that never answers: the source times out, queues ABORT, then
 * reports -ETIMEDOUT; a dead source refuses further chunks. */
static void test_source_timeout(void **state)
{
	int base = count_fds();
	struct ctx c;
	int sv[2];
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	struct handoff_item item = { "x", 1, &fd, 1 };
	struct frame_msg m;
	int types[4];
	int64_t t0;
	bool got_cb = false;

	ctx_init(&c);
	assert_int_equal(frame_socketpair(sv), 0);
	c.src = handoff_source_new(c.base, sv[0], 0, 100, s_cb, &c);
	assert_non_null(c.src);
	/* keep c.src alive after cb for the -EPIPE check */
	struct handoff_source *src = c.src;

	t0 = now_ms();
	assert_int_equal(handoff_source_send_chunk(src, &item, 1), 0);
	while (c.src_cbs == 0 && now_ms() - t0 < 3000)
		event_base_loop(c.base, EVLOOP_ONCE);
	got_cb = c.src_cbs == 1;
	assert_true(got_cb);
	assert_true(now_ms() - t0 >= 90); /* libevent clock: ~ms early */
	assert_int_equal(c.src_result[0], -ETIMEDOUT);
	assert_null(c.src); /* s_cb freed it */
	(void)src;

	/* What the target would have read: BEGIN, ITEM (+fd), END, ABORT. */
	for (int i = 0; i < 4; i++) {
		assert_int_equal(frame_recv(sv[1], &m, 100), 0);
		types[i] = m.type;
		if (m.type == HANDOFF_ABORT) {
			Baton__Handoff__Abort *a =
				baton__handoff__abort__unpack(NULL, m.len, m.data);

			assert_non_null(a);
			assert_int_equal(a->chunk, 0);
			assert_non_null(strstr(a->reason, "timed out"));
			baton__handoff__abort__free_unpacked(a, NULL);
		}
		frame_msg_clear(&m);
	}
	assert_int_equal(types[0], HANDOFF_BEGIN);
	assert_int_equal(types[1], HANDOFF_ITEM);
	assert_int_equal(types[2], HANDOFF_END);
	assert_int_equal(types[3], HANDOFF_ABORT);
	/* The source was freed in cb: its end is closed now. */
	assert_int_equal(frame_recv(sv[1], &m, 100), -ECONNRESET);

	close(sv[1]);
	close(fd);
	ctx_fini(&c);
	assert_int_equal(count_fds(), base);
}

static void nocb(struct handoff_source *src, uint32_t chunk, int result,
		 const char *reason, void *arg)
{
	fail_msg("no callback expected after a synchronous failure");
}

/* The channel is full and nobody reads: send_chunk fails, ABORT cannot be
 * queued either, so the source kills the target (peer_pid) and returns only
 * once it is dead; later calls get -EPIPE. */
static void test_source_kills_unresponsive_target(void **state)
{
	int base = count_fds();
	struct event_base *eb = event_base_new();
	struct handoff_source *src;
	struct handoff_item items[64];
	char payload[1024];
	int sv[2];
	int small = 4096;
	int status;
	pid_t child;

	memset(payload, 'p', sizeof(payload));
	for (int i = 0; i < 64; i++)
		items[i] = (struct handoff_item){ payload, sizeof(payload), NULL, 0 };
	child = fork_paused_child();
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
	assert_int_equal(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small,
				    sizeof(small)), 0);
	src = handoff_source_new(eb, sv[0], child, 100, nocb, NULL);
	assert_non_null(src);
	assert_int_equal(handoff_source_send_chunk(src, items, 64), -ETIMEDOUT);
	/* Already dead (a zombie) when send_chunk returned. */
	assert_int_equal(waitpid(child, &status, WNOHANG), child);
	assert_true(WIFSIGNALED(status));
	assert_int_equal(WTERMSIG(status), SIGKILL);
	assert_int_equal(handoff_source_send_chunk(src, items, 1), -EPIPE);
	assert_int_equal(handoff_source_finish(src), -EPIPE);
	handoff_source_free(src);
	close(sv[1]);
	event_base_free(eb);
	assert_int_equal(count_fds(), base);
}

static void test_source_rejects_bad_items(void **state)
{
	int base = count_fds();
	struct event_base *eb = event_base_new();
	struct handoff_source *src;
	struct handoff_item item = { NULL, 3, NULL, 0 };
	struct frame_msg m;
	int sv[2];

	assert_int_equal(frame_socketpair(sv), 0);
	src = handoff_source_new(eb, sv[0], 0, 100, nocb, NULL);
	assert_non_null(src);
	assert_int_equal(handoff_source_send_chunk(src, &item, 1), -EINVAL);
	item = (struct handoff_item){ "x", 1, NULL, 1 };
	assert_int_equal(handoff_source_send_chunk(src, &item, 1), -EINVAL);
	item = (struct handoff_item){ "x", 1, (int[]){ 0 }, FRAME_MAX_FDS + 1 };
	assert_int_equal(handoff_source_send_chunk(src, &item, 1), -EINVAL);
	assert_int_equal(handoff_source_send_chunk(src, NULL, 1), -EINVAL);
	/* Nothing went out; the channel is still usable. */
	assert_int_equal(frame_recv(sv[1], &m, 0), -ETIMEDOUT);
	assert_int_equal(handoff_source_finish(src), 0);
	assert_int_equal(frame_recv(sv[1], &m, 100), 0);
	assert_int_equal(m.type, HANDOFF_DONE);
	frame_msg_clear(&m);
	handoff_source_free(src);
	handoff_source_free(NULL);
	handoff_target_free(NULL);
	close(sv[1]);
	event_base_free(eb);
	assert_int_equal(count_fds(), base);
}

/* ---- a misbehaving source against the real target ---- */

struct bad_case {
	const char *name;
	void (*script)(int sock);
	int result;            /* expected done() result */
	int aborts;            /* expected ops->abort calls */
	uint32_t committed;
	const char *reason;    /* substring of the done/ABORT reason */
};

static void bad_malformed_item(int s)
{
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

	raw_begin(s, 0, 1, 1);
	assert_int_equal(frame_send(s, HANDOFF_ITEM, "\xff\xff\xff", 3,
					    &fd, 1, 1000), 0);
	close(fd);
}

static void bad_too_few_items(int s)
{
	raw_begin(s, 0, 2, 1);
	raw_item(s, 0, "a", 1, 1);
	raw_end(s, 0);
}

static void bad_too_many_items(int s)
{
	raw_begin(s, 0, 1, 0);
	raw_item(s, 0, "a", 0, 0);
	raw_item(s, 1, "b", 2, 2);
}

static void bad_item_index(int s)
{
	raw_begin(s, 0, 2, 0);
	raw_item(s, 1, "b", 0, 0);
}

static void bad_item_fd_count(int s)
{
	raw_begin(s, 0, 1, 2);
	raw_item(s, 0, "a", 2, 1);
}

static void bad_extra_fds(int s)
{
	raw_begin(s, 0, 2, 1);
	raw_item(s, 0, "a", 1, 1);
	raw_item(s, 1, "b", 2, 2);
}

static void bad_missing_fds(int s)
{
	raw_begin(s, 0, 1, 3);
	raw_item(s, 0, "a", 1, 1);
	raw_end(s, 0);
}

static void bad_fds_on_end(int s)
{
	Baton__Handoff__End e = BATON__HANDOFF__END__INIT;
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

	raw_begin(s, 0, 0, 0);
	raw_pb(s, HANDOFF_END, &e.base, &fd, 1);
	close(fd);
}

static void bad_commit_first(int s)
{
	raw_commit(s, 0);
}

static void bad_item_before_begin(int s)
{
	raw_item(s, 0, "a", 1, 1);
}

static void bad_begin_twice(int s)
{
	raw_begin(s, 0, 1, 0);
	raw_begin(s, 0, 1, 0);
}

static void bad_chunk_skipped(int s)
{
	raw_begin(s, 1, 1, 0);
}

static void bad_chunk_skipped_later(int s)
{
	raw_begin(s, 0, 1, 1);
	raw_item(s, 0, "a", 1, 1);
	raw_end(s, 0);
	raw_commit(s, 0); /* the target reads it after sending PREPARED */
	raw_begin(s, 2, 0, 0);
}

static void bad_commit_wrong_chunk(int s)
{
	raw_begin(s, 0, 1, 1);
	raw_item(s, 0, "a", 1, 1);
	raw_end(s, 0);
	raw_commit(s, 1);
}

static void bad_unknown_type(int s)
{
	assert_int_equal(frame_send(s, 42, "", 0, NULL, 0, 1000), 0);
}

static void bad_done_count(int s)
{
	raw_done(s, 3);
}

static void bad_broken_frame(int s)
{
	raw_begin(s, 0, 1, 1);
	assert_int_equal(send(s, "garbage-that-is-no-frame", 24, 0), 24);
}

static void src_abort_mid_chunk(int s)
{
	raw_begin(s, 0, 2, 1);
	raw_item(s, 0, "a", 1, 1);
	raw_abort(s, 0, "operator said no");
}

static void src_eof_before_end(int s)
{
	raw_begin(s, 0, 2, 1);
	raw_item(s, 0, "a", 1, 1);
	raw_item(s, 1, "b", 0, 0);
	/* the runner closes the channel */
}

static const struct bad_case bad_cases[] = {
	{ "malformed ITEM", bad_malformed_item, -EPROTO, 1, 0, "malformed ITEM" },
	{ "too few items", bad_too_few_items, -EPROTO, 1, 0, "END after 1 items" },
	{ "too many items", bad_too_many_items, -EPROTO, 1, 0, "beyond" },
	{ "item index", bad_item_index, -EPROTO, 1, 0, "index 1, expected 0" },
	{ "item fd count", bad_item_fd_count, -EPROTO, 1, 0, "announces 2 fds but carries 1" },
	{ "extra fds", bad_extra_fds, -EPROTO, 1, 0, "exceeds" },
	{ "missing fds", bad_missing_fds, -EPROTO, 1, 0, "END after 1 fds" },
	{ "fds on END", bad_fds_on_end, -EPROTO, 1, 0, "fds attached to END" },
	{ "COMMIT first", bad_commit_first, -EPROTO, 0, 0, "unexpected COMMIT" },
	{ "ITEM before BEGIN", bad_item_before_begin, -EPROTO, 0, 0, "unexpected ITEM" },
	{ "BEGIN twice", bad_begin_twice, -EPROTO, 1, 0, "unexpected BEGIN" },
	{ "chunk skipped", bad_chunk_skipped, -EPROTO, 0, 0, "expected chunk 0" },
	{ "chunk skipped later", bad_chunk_skipped_later, -EPROTO, 0, 1, "expected chunk 1" },
	{ "COMMIT wrong chunk", bad_commit_wrong_chunk, -EPROTO, 1, 0, "COMMIT of chunk 1" },
	{ "unknown type", bad_unknown_type, -EPROTO, 0, 0, "type 42" },
	{ "DONE count", bad_done_count, -EPROTO, 0, 0, "DONE after 3" },
	{ "broken frame", bad_broken_frame, -EPROTO, 1, 0, "channel" },
	{ "ABORT mid-chunk", src_abort_mid_chunk, -ECANCELED, 1, 0, "operator said no" },
	{ "EOF before END", src_eof_before_end, -ECONNRESET, 1, 0, "closed" },
};

static void run_bad_case(const struct bad_case *bc)
{
	int base = count_fds();
	struct ctx c;
	char sent_reason[256] = "";
	int sv[2];
	int last;
	bool eof = bc->script == src_eof_before_end;

	ctx_init(&c);
	assert_int_equal(frame_socketpair(sv), 0);
	target_on(&c, sv[1], 2000);
	bc->script(sv[0]);
	if (eof)
		close(sv[0]);
	if (!run_until(&c, &c.done, 3000))
		fail_msg("%s: target not done", bc->name);
	if (c.done_result != bc->result || c.aborts != bc->aborts ||
	    c.done_chunks != bc->committed || !strstr(c.done_reason, bc->reason))
		fail_msg("%s: done(%d, \"%s\", %u) aborts=%d", bc->name,
			 c.done_result, c.done_reason, c.done_chunks, c.aborts);
	if (bc->aborts)
		assert_string_equal(c.abort_reason, c.done_reason);
	if (!eof) {
		last = drain(sv[0], sent_reason, sizeof(sent_reason));
		if (bc->result == -ECANCELED) {
			/* The source aborted: nothing to answer. */
			assert_int_not_equal(last, HANDOFF_ABORT);
		} else {
			if (last != HANDOFF_ABORT || !strstr(sent_reason, bc->reason))
				fail_msg("%s: last sent %d \"%s\"", bc->name, last,
					 sent_reason);
		}
		close(sv[0]);
	}
	assert_int_equal(c.npending, 0); /* abort op closed them */
	ctx_fini(&c);
	if (count_fds() != base)
		fail_msg("%s: fd leak: %d != %d", bc->name, count_fds(), base);
}

static void test_target_rejects_bad_sources(void **state)
{
	for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++)
		run_bad_case(&bad_cases[i]);
}

/* EOF while PREPARED: the source died without COMMIT or ABORT, so it never
 * resumed; the target commits on its own. The PREPARED state has no timeout:
 * waiting well beyond timeout_ms changes nothing. */
static void test_target_commits_on_eof_after_prepared(void **state)
{
	int base = count_fds();
	struct ctx c;
	int sv[2];

	ctx_init(&c);
	assert_int_equal(frame_socketpair(sv), 0);
	target_on(&c, sv[1], 50);
	raw_begin(sv[0], 0, 1, 2);
	raw_item(sv[0], 0, "session", 2, 2);
	raw_end(sv[0], 0);
	assert_true(run_until(&c, &c.prepared_sent, 2000));
	run_for(&c, 200); /* 4x the timeout */
	assert_false(c.done);
	assert_int_equal(drain(sv[0], NULL, 0), HANDOFF_PREPARED);
	close(sv[0]);
	assert_true(run_until(&c, &c.done, 2000));
	assert_int_equal(c.done_result, 0);
	assert_int_equal(c.done_chunks, 1);
	assert_int_equal(c.commits, 1);
	assert_int_equal(c.aborts, 0);
	assert_int_equal(c.nadopted, 2);
	assert_non_null(strstr(c.done_reason, "committed"));
	ctx_fini(&c);
	assert_int_equal(count_fds(), base);
}

/* A source that never sends BEGIN: the target gives up after timeout_ms and
 * says so. */
static void test_target_timeout(void **state)
{
	int base = count_fds();
	struct ctx c;
	char reason[256] = "";
	int sv[2];
	int64_t t0 = now_ms();

	ctx_init(&c);
	assert_int_equal(frame_socketpair(sv), 0);
	target_on(&c, sv[1], 100);
	raw_begin(sv[0], 0, 1, 1);
	assert_true(run_until(&c, &c.done, 3000));
	assert_true(now_ms() - t0 >= 90); /* libevent's cached clock: ~ms early */
	assert_int_equal(c.done_result, -ETIMEDOUT);
	assert_int_equal(c.aborts, 1);
	assert_int_equal(drain(sv[0], reason, sizeof(reason)), HANDOFF_ABORT);
	assert_non_null(strstr(reason, "timed out"));
	close(sv[0]);
	ctx_fini(&c);
	assert_int_equal(count_fds(), base);
}

/* An ABORT in PREPARED state discards the chunk. */
static void test_target_abort_after_prepared(void **state)
{
	int base = count_fds();
	struct ctx c;
	int sv[2];

	ctx_init(&c);
	assert_int_equal(frame_socketpair(sv), 0);
	target_on(&c, sv[1], 1000);
	raw_begin(sv[0], 0, 1, 1);
	raw_item(sv[0], 0, "s", 1, 1);
	raw_end(sv[0], 0);
	raw_abort(sv[0], 0, "gate tripped");
	assert_true(run_until(&c, &c.done, 2000));
	assert_int_equal(c.done_result, -ECANCELED);
	assert_string_equal(c.done_reason, "gate tripped");
	assert_int_equal(c.aborts, 1);
	assert_int_equal(c.commits, 0);
	close(sv[0]);
	ctx_fini(&c);
	assert_int_equal(count_fds(), base);
}

/* Drive a source against a hand-written target: read the chunk, then let
 * `answer` reply. Returns the source's cb result. */
static void read_chunk(int sock, int n_items)
{
	struct frame_msg m;

	for (int i = 0; i < n_items + 2; i++) {
		assert_int_equal(frame_recv(sock, &m, 1000), 0);
		frame_msg_clear(&m);
	}
}

/* As a raw target on sock: read the one-item chunk 0 the source under c
 * sent, answer PREPARED, and pump c's loop until its COMMIT arrives. */
static void raw_prepared_expect_commit(struct ctx *c, int sock)
{
	Baton__Handoff__Prepared p = BATON__HANDOFF__PREPARED__INIT;
	struct frame_msg m;
	int r;

	read_chunk(sock, 1);
	p.chunk = 0;
	raw_pb(sock, HANDOFF_PREPARED, &p.base, NULL, 0);
	while ((r = frame_recv(sock, &m, 0)) == -EAGAIN ||
	       r == -ETIMEDOUT)
		event_base_loop(c->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	assert_int_equal(r, 0);
	assert_int_equal(m.type, HANDOFF_COMMIT);
	frame_msg_clear(&m);
}

static void keep_cb(struct handoff_source *src, uint32_t chunk, int result,
		    const char *reason, void *arg)
{
	struct ctx *c = arg;

	c->src_result[c->src_cbs++] = result;
	snprintf(c->src_reason, sizeof(c->src_reason), "%s", reason);
}

/* A PREPARED for the wrong chunk, or a message the source never expects, is
 * a protocol error: ABORT is queued and the chunk reported aborted. */
static void test_source_rejects_bad_answers(void **state)
{
	static const uint8_t answers[] = { HANDOFF_PREPARED, HANDOFF_BEGIN,
					   HANDOFF_PREPARED };
	int base = count_fds();

	for (size_t k = 0; k < sizeof(answers); k++) {
		Baton__Handoff__Prepared p = BATON__HANDOFF__PREPARED__INIT;
		struct handoff_item item = { "x", 1, NULL, 0 };
		char reason[256] = "";
		struct ctx c;
		int sv[2];

		ctx_init(&c);
		assert_int_equal(frame_socketpair(sv), 0);
		c.src = handoff_source_new(c.base, sv[0], 0, 1000, keep_cb, &c);
		assert_non_null(c.src);
		assert_int_equal(handoff_source_send_chunk(c.src, &item, 1), 0);
		read_chunk(sv[1], 1);
		p.chunk = 5;
		if (k == 2) {
			/* right chunk, but an fd attached */
			int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

			p.chunk = 0;
			raw_pb(sv[1], answers[k], &p.base, &fd, 1);
			close(fd);
		} else {
			raw_pb(sv[1], answers[k], &p.base, NULL, 0);
		}
		while (c.src_cbs == 0)
			event_base_loop(c.base, EVLOOP_ONCE);
		assert_int_equal(c.src_result[0], -EPROTO);
		assert_int_equal(drain(sv[1], reason, sizeof(reason)), HANDOFF_ABORT);
		assert_string_equal(reason, c.src_reason);
		assert_int_equal(handoff_source_send_chunk(c.src, &item, 1), -EPIPE);
		close(sv[1]);
		ctx_fini(&c);
	}
	assert_int_equal(count_fds(), base);
}

/* The target closes the channel while the source waits for PREPARED: the
 * chunk is aborted with -ECONNRESET, and a target whose end is closed cannot
 * commit on its own, so it is not killed (peer_pid is alive afterwards). */
static void test_source_target_closed(void **state)
{
	int base = count_fds();
	struct handoff_item item = { "x", 1, NULL, 0 };
	struct ctx c;
	int sv[2];
	int status;
	pid_t child;

	ctx_init(&c);
	/* Fork first: a child holding a copy of sv[1] would keep it open. */
	child = fork_paused_child();
	assert_int_equal(frame_socketpair(sv), 0);
	c.src = handoff_source_new(c.base, sv[0], child, 1000, keep_cb, &c);
	assert_non_null(c.src);
	assert_int_equal(handoff_source_send_chunk(c.src, &item, 1), 0);
	close(sv[1]);
	while (c.src_cbs == 0)
		event_base_loop(c.base, EVLOOP_ONCE);
	assert_int_equal(c.src_result[0], -ECONNRESET);
	assert_int_equal(waitpid(child, &status, WNOHANG), 0); /* alive */
	kill(child, SIGKILL);
	assert_int_equal(waitpid(child, &status, 0), child);
	ctx_fini(&c);
	assert_int_equal(count_fds(), base);
}


/* Regression: the source used to treat a chunk as committed as soon as COMMIT
 * was queued, so a target that died between PREPARED and arming took the
 * chunk's sessions with it. Now the source waits for COMMITTED: no ack (EOF
 * or timeout) means the target never touched the sockets; the source makes
 * sure it is dead and resumes (result < 0). With the ack, result 0. */
static void test_source_waits_for_committed(void **state)
{
	enum { ACK, EOF_AFTER_COMMIT, SILENT };
	int base = count_fds();

	for (int mode = ACK; mode <= SILENT; mode++) {
		Baton__Handoff__Committed ack = BATON__HANDOFF__COMMITTED__INIT;
		struct handoff_item item = { "x", 1, NULL, 0 };
		struct ctx c;
		int sv[2], status;
		pid_t child;

		ctx_init(&c);
		child = fork_paused_child();
		assert_int_equal(frame_socketpair(sv), 0);
		c.src = handoff_source_new(c.base, sv[0], child, 300, keep_cb, &c);
		assert_non_null(c.src);
		assert_int_equal(handoff_source_send_chunk(c.src, &item, 1), 0);
		/* The source answers COMMIT but reports nothing yet. */
		raw_prepared_expect_commit(&c, sv[1]);
		assert_int_equal(c.src_cbs, 0);
		if (mode == ACK) {
			ack.chunk = 0;
			raw_pb(sv[1], HANDOFF_COMMITTED, &ack.base, NULL, 0);
		} else if (mode == EOF_AFTER_COMMIT) {
			close(sv[1]);
			sv[1] = -1;
		}
		while (c.src_cbs == 0)
			event_base_loop(c.base, EVLOOP_ONCE);
		if (mode == ACK) {
			assert_int_equal(c.src_result[0], 0);
			assert_int_equal(waitpid(child, &status, WNOHANG), 0);
			kill(child, SIGKILL);
			assert_int_equal(waitpid(child, &status, 0), child);
		} else if (mode == EOF_AFTER_COMMIT) {
			/* The target's end closed before any COMMITTED: it never
			 * acknowledged, so it never touched the sockets. Resume
			 * without killing anyone. */
			assert_int_equal(c.src_result[0], -ECONNRESET);
			assert_int_equal(waitpid(child, &status, WNOHANG), 0);
			kill(child, SIGKILL);
			assert_int_equal(waitpid(child, &status, 0), child);
		} else {
			assert_int_equal(c.src_result[0], -ETIMEDOUT);
			/* The target was killed before the source resumed. */
			assert_int_equal(waitpid(child, &status, 0), child);
			assert_true(WIFSIGNALED(status));
			assert_int_equal(WTERMSIG(status), SIGKILL);
		}
		if (sv[1] >= 0)
			close(sv[1]);
		ctx_fini(&c);
	}
	assert_int_equal(count_fds(), base);
}

/* As a raw source on sock: send a one-item chunk 0 to the target driven by
 * c, run c's loop until PREPARED comes back, then send COMMIT. */
static void raw_chunk_until_commit(struct ctx *c, int sock)
{
	Baton__Handoff__Begin b = BATON__HANDOFF__BEGIN__INIT;
	Baton__Handoff__Item it = BATON__HANDOFF__ITEM__INIT;
	Baton__Handoff__End e = BATON__HANDOFF__END__INIT;
	Baton__Handoff__Commit cm = BATON__HANDOFF__COMMIT__INIT;
	struct frame_msg m;
	int r;

	b.chunk = 0;
	b.items = 1;
	b.fds = 0;
	raw_pb(sock, HANDOFF_BEGIN, &b.base, NULL, 0);
	it.index = 0;
	it.payload.data = (uint8_t *)"p";
	it.payload.len = 1;
	raw_pb(sock, HANDOFF_ITEM, &it.base, NULL, 0);
	e.chunk = 0;
	raw_pb(sock, HANDOFF_END, &e.base, NULL, 0);
	while ((r = frame_recv(sock, &m, 0)) == -EAGAIN ||
	       r == -ETIMEDOUT)
		event_base_loop(c->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	assert_int_equal(r, 0);
	assert_int_equal(m.type, HANDOFF_PREPARED);
	frame_msg_clear(&m);
	cm.chunk = 0;
	raw_pb(sock, HANDOFF_COMMIT, &cm.base, NULL, 0);
}

/* The target queues COMMITTED before it arms anything (ops->commit). */
static void test_target_acks_commit_before_arming(void **state)
{
	int base = count_fds();
	struct frame_msg m;
	struct ctx c;
	int sv[2];

	ctx_init(&c);
	assert_int_equal(frame_socketpair(sv), 0);
	c.t = handoff_target_new(c.base, sv[1], 1000, &ops, &c);
	assert_non_null(c.t);
	raw_chunk_until_commit(&c, sv[0]);
	while (c.commits == 0)
		event_base_loop(c.base, EVLOOP_ONCE);
	assert_int_equal(frame_recv(sv[0], &m, 0), 0);
	assert_int_equal(m.type, HANDOFF_COMMITTED);
	frame_msg_clear(&m);
	close(sv[0]);
	ctx_fini(&c);
	assert_int_equal(count_fds(), base);
}

/* Regression: a source whose COMMITTED timer fired in the same loop pass as
 * the read event carrying COMMITTED killed the target and resumed sessions
 * the target already served. Both events are made ready before the loop
 * runs: whichever fires first, the chunk must be reported committed. */
static void test_source_timer_races_committed(void **state)
{
	Baton__Handoff__Committed ack = BATON__HANDOFF__COMMITTED__INIT;
	struct handoff_item item = { "x", 1, NULL, 0 };
	struct timespec ts = { 0, 80 * 1000000L };
	int base = count_fds();
	struct ctx c;
	int sv[2], status;
	pid_t child;

	ctx_init(&c);
	child = fork_paused_child();
	assert_int_equal(frame_socketpair(sv), 0);
	c.src = handoff_source_new(c.base, sv[0], child, 50, keep_cb, &c);
	assert_non_null(c.src);
	assert_int_equal(handoff_source_send_chunk(c.src, &item, 1), 0);
	raw_prepared_expect_commit(&c, sv[1]);
	/* Let the 50 ms COMMITTED timer expire while the loop is not running,
	 * then queue COMMITTED: both are ready in the next pass. */
	nanosleep(&ts, NULL);
	ack.chunk = 0;
	raw_pb(sv[1], HANDOFF_COMMITTED, &ack.base, NULL, 0);
	while (c.src_cbs == 0)
		event_base_loop(c.base, EVLOOP_ONCE);
	assert_int_equal(c.src_result[0], 0);
	assert_int_equal(waitpid(child, &status, WNOHANG), 0); /* not killed */
	kill(child, SIGKILL);
	assert_int_equal(waitpid(child, &status, 0), child);
	close(sv[1]);
	ctx_fini(&c);
	assert_int_equal(count_fds(), base);
}

/* Regression: a source that died right after sending COMMIT made the target
 * abort the chunk (COMMITTED could not be sent: EPIPE) and close every
 * socket of it, although that source could never resume them. */
static void test_target_commits_when_source_dies_after_commit(void **state)
{
	int base = count_fds();
	struct ctx c;
	int sv[2];

	ctx_init(&c);
	assert_int_equal(frame_socketpair(sv), 0);
	c.t = handoff_target_new(c.base, sv[1], 1000, &ops, &c);
	assert_non_null(c.t);
	raw_chunk_until_commit(&c, sv[0]);
	close(sv[0]); /* the source dies */
	while (!c.done && c.commits == 0 && c.aborts == 0)
		event_base_loop(c.base, EVLOOP_ONCE);
	assert_int_equal(c.commits, 1);
	assert_int_equal(c.aborts, 0);
	ctx_fini(&c);
	assert_int_equal(count_fds(), base);
}

static int free_in_prepare(void *arg, uint32_t chunk, uint32_t index,
			   const uint8_t *payload, size_t len, int *fds,
			   size_t nfds, char *reason, size_t reason_len)
{
	struct ctx *c = arg;

	for (size_t i = 0; i < nfds; i++)
		close(fds[i]);
	c->prepares++;
	handoff_target_free(c->t);
	c->t = NULL;
	return 0;
}

/* Freeing the target from inside an op is safe: nothing else is called and
 * the channel is closed when the callback unwinds. */
static void test_target_free_inside_prepare(void **state)
{
	static const struct handoff_target_ops fops = {
		free_in_prepare, t_commit, t_abort, t_done,
	};
	int base = count_fds();
	struct frame_msg m;
	struct ctx c;
	int sv[2];

	ctx_init(&c);
	assert_int_equal(frame_socketpair(sv), 0);
	c.t = handoff_target_new(c.base, sv[1], 1000, &fops, &c);
	assert_non_null(c.t);
	raw_begin(sv[0], 0, 2, 2);
	raw_item(sv[0], 0, "a", 1, 1);
	raw_item(sv[0], 1, "b", 1, 1);
	raw_end(sv[0], 0);
	run_for(&c, 100);
	assert_int_equal(c.prepares, 1);
	assert_false(c.done);
	assert_int_equal(c.aborts, 0);
	assert_int_equal(frame_recv(sv[0], &m, 100), -ECONNRESET);
	close(sv[0]);
	ctx_fini(&c);
	assert_int_equal(count_fds(), base);
}

static void test_new_rejects_bad_arguments(void **state)
{
	int base = count_fds();
	struct event_base *eb = event_base_new();
	int sv[2];

	/* The channel is transferred even on failure: it is closed. */
	assert_int_equal(frame_socketpair(sv), 0);
	assert_null(handoff_source_new(eb, sv[0], 0, 100, NULL, NULL));
	assert_int_equal(errno, EINVAL);
	assert_null(handoff_target_new(eb, sv[1], 100, NULL, NULL));
	assert_int_equal(errno, EINVAL);
	assert_null(handoff_target_new(NULL, -1, 100, &ops, NULL));
	event_base_free(eb);
	assert_int_equal(count_fds(), base);
}

/* ---- pipelining (handoff_source_set_pipeline) ---- */

/* One ordered log of both sides' phases and the source's outcomes. */
static char plog[48][24];
static int nplog;

static void plog_add(const char *who, const char *what, uint32_t chunk)
{
	if (nplog < 48)
		snprintf(plog[nplog++], sizeof(plog[0]), "%s:%s%u", who, what,
			 chunk);
}

static int plog_at(const char *ev)
{
	for (int i = 0; i < nplog; i++)
		if (strcmp(plog[i], ev) == 0)
			return i;
	fail_msg("event %s not logged", ev);
	return -1;
}

static const char *phase_word(enum handoff_phase p)
{
	switch (p) {
	case HANDOFF_PHASE_BEGIN_SENT: case HANDOFF_PHASE_BEGIN_RECEIVED: return "BEGIN";
	case HANDOFF_PHASE_END_SENT: case HANDOFF_PHASE_END_RECEIVED: return "END";
	case HANDOFF_PHASE_PREPARED_RECEIVED: case HANDOFF_PHASE_PREPARED_SENT: return "PREPARED";
	default: return "COMMIT";
	}
}

static void p_sphase(void *arg, enum handoff_phase p, uint32_t chunk)
{
	plog_add("S", phase_word(p), chunk);
}

static void p_tphase(void *arg, enum handoff_phase p, uint32_t chunk)
{
	plog_add("T", phase_word(p), chunk);
	t_phase(arg, p, chunk);
}

/* Records every outcome in order; after the last chunk committed, DONE. */
static void p_cb(struct handoff_source *src, uint32_t chunk, int result,
		 const char *reason, void *arg)
{
	struct ctx *c = arg;

	plog_add("S", result == 0 ? "COMMITTED" : "ABORTED", chunk);
	assert_true(c->src_cbs < 4);
	c->src_chunk[c->src_cbs] = chunk;
	c->src_result[c->src_cbs] = result;
	c->src_cbs++;
	snprintf(c->src_reason, sizeof(c->src_reason), "%s", reason);
	if (result == 0) {
		for (int i = 0; i < c->nsrc_fds; i++)
			close(c->src_fds_to_close[i]);
		c->nsrc_fds = 0;
	}
	if (result == 0 && chunk == 1)
		assert_int_equal(handoff_source_finish(src), 0);
}

/* COMMIT of `chunk` is out: send the next chunk at once. */
static void p_ready(struct handoff_source *src, uint32_t chunk, void *arg)
{
	struct ctx *c = arg;

	plog_add("S", "READY", chunk);
	if (c->next_items) {
		const struct handoff_item *items = c->next_items;

		c->next_items = NULL;
		assert_int_equal(handoff_source_send_chunk(src, items, c->next_n), 0);
		/* A window of two: no third chunk before COMMITTED. */
		assert_int_equal(handoff_source_send_chunk(src, items, c->next_n),
				 -EBUSY);
	}
}

/* The source sends chunk 1 as soon as COMMIT of chunk 0 is out, before it
 * has read chunk 0's COMMITTED (the two chunks overlap: the target
 * acknowledges and arms chunk 0 while chunk 1 is already on the channel),
 * and the target still sees COMMIT{0} before BEGIN{1} (what every target
 * release expects), commits in order, and arms each chunk after its
 * COMMITTED. */
static void test_pipeline_overlaps_chunks(void **state)
{
	int base = count_fds();
	struct handoff_item chunk0[1], chunk1[1];
	int fds[2][2], src_fds[2];
	struct ctx c;
	int sv[2];

	nplog = 0;
	for (int i = 0; i < 2; i++) {
		assert_int_equal(pipe2(fds[i], O_CLOEXEC), 0);
		src_fds[i] = fds[i][1];
	}
	chunk0[0] = (struct handoff_item){ "alice", 5, &src_fds[0], 1 };
	chunk1[0] = (struct handoff_item){ "bob", 3, &src_fds[1], 1 };
	ctx_init(&c);
	assert_int_equal(frame_socketpair(sv), 0);
	c.src = handoff_source_new(c.base, sv[0], 0, 2000, p_cb, &c);
	assert_non_null(c.src);
	handoff_source_set_phase_hook(c.src, p_sphase, &c);
	handoff_source_set_pipeline(c.src, p_ready, &c);
	c.t = handoff_target_new(c.base, sv[1], 2000, &ops, &c);
	assert_non_null(c.t);
	handoff_target_set_phase_hook(c.t, p_tphase, &c);
	c.next_items = chunk1;
	c.next_n = 1;
	c.src_fds_to_close = src_fds;
	c.nsrc_fds = 1;
	assert_int_equal(handoff_source_send_chunk(c.src, chunk0, 1), 0);
	/* Not before COMMIT of chunk 0. */
	assert_int_equal(handoff_source_send_chunk(c.src, chunk1, 1), -EBUSY);
	assert_true(run_until(&c, &c.done, 5000));
	close(src_fds[1]);

	for (int i = 0; i < nplog; i++)
		print_message("  %s\n", plog[i]);
	/* Overlap: chunk 1 went out before chunk 0's COMMITTED was read. */
	assert_true(plog_at("S:BEGIN1") < plog_at("S:COMMITTED0"));
	assert_true(plog_at("S:END1") < plog_at("S:COMMITTED0"));
	/* ... but behind COMMIT{0}, and only then. */
	assert_true(plog_at("S:COMMIT0") < plog_at("S:READY0"));
	assert_true(plog_at("S:READY0") < plog_at("S:BEGIN1"));
	/* The target: COMMIT{0} before BEGIN{1}, commits in order. */
	assert_true(plog_at("T:COMMIT0") < plog_at("T:BEGIN1"));
	assert_true(plog_at("T:COMMIT1") > plog_at("T:PREPARED1"));
	/* Outcomes in order, each once. */
	assert_int_equal(c.src_cbs, 2);
	assert_int_equal(c.src_chunk[0], 0);
	assert_int_equal(c.src_result[0], 0);
	assert_int_equal(c.src_chunk[1], 1);
	assert_int_equal(c.src_result[1], 0);
	assert_int_equal(c.done_result, 0);
	assert_int_equal(c.done_chunks, 2);
	assert_int_equal(c.commits, 2);
	assert_int_equal(c.aborts, 0);
	assert_int_equal(c.nadopted, 2);
	for (int i = 0; i < 2; i++) {
		char buf[2];

		assert_int_equal(write(c.adopted[i], "z", 1), 1);
		assert_int_equal(read(fds[i][0], buf, 1), 1);
		close(fds[i][0]);
	}
	ctx_fini(&c);
	assert_int_equal(count_fds(), base);
}

/* Read one chunk of n items from a raw target's end; its number. */
static uint32_t raw_read_chunk(int sock, int n_items)
{
	struct frame_msg m;
	uint32_t chunk;
	Baton__Handoff__Begin *b;

	assert_int_equal(frame_recv(sock, &m, 1000), 0);
	assert_int_equal(m.type, HANDOFF_BEGIN);
	b = baton__handoff__begin__unpack(NULL, m.len, m.data);
	assert_non_null(b);
	chunk = b->chunk;
	baton__handoff__begin__free_unpacked(b, NULL);
	frame_msg_clear(&m);
	read_chunk(sock, n_items - 1); /* the ITEMs and END */
	return chunk;
}

/* Chunk 1 is out behind COMMIT{0} when chunk 0 fails. Whatever becomes of
 * chunk 0, chunk 1 was never committed: it is reported aborted (so the
 * caller thaws it), after chunk 0's outcome, exactly once, and the target
 * can never commit it on its own (ABORT{1} is queued or it is dead).
 *  - EOF_NO_ACK: the target closes before COMMITTED{0}: both resume.
 *  - ACK_THEN_SILENT: COMMITTED{0} arrives (chunk 0 is the target's), then
 *    nothing: chunk 1 times out waiting for PREPARED, ABORT{1} is queued.
 *  - SILENT: no COMMITTED{0}: the target is killed, both resume, and
 *    ABORT{1} sits on the channel. */
static void test_pipeline_second_chunk_aborted_with_first(void **state)
{
	enum { EOF_NO_ACK, ACK_THEN_SILENT, SILENT };
	int base = count_fds();

	for (int mode = EOF_NO_ACK; mode <= SILENT; mode++) {
		Baton__Handoff__Prepared p = BATON__HANDOFF__PREPARED__INIT;
		Baton__Handoff__Committed ack = BATON__HANDOFF__COMMITTED__INIT;
		struct handoff_item item0 = { "x", 1, NULL, 0 };
		struct handoff_item item1 = { "y", 1, NULL, 0 };
		struct frame_msg m;
		struct ctx c;
		int sv[2], status, r;
		pid_t child;

		nplog = 0;
		ctx_init(&c);
		child = fork_paused_child();
		assert_int_equal(frame_socketpair(sv), 0);
		c.src = handoff_source_new(c.base, sv[0], child, 300, p_cb, &c);
		assert_non_null(c.src);
		handoff_source_set_phase_hook(c.src, p_sphase, &c);
		handoff_source_set_pipeline(c.src, p_ready, &c);
		c.next_items = &item1;
		c.next_n = 1;
		assert_int_equal(handoff_source_send_chunk(c.src, &item0, 1), 0);
		assert_int_equal(raw_read_chunk(sv[1], 1), 0);
		p.chunk = 0;
		raw_pb(sv[1], HANDOFF_PREPARED, &p.base, NULL, 0);
		while ((r = frame_recv(sv[1], &m, 0)) == -EAGAIN ||
		       r == -ETIMEDOUT)
			event_base_loop(c.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		assert_int_equal(r, 0);
		assert_int_equal(m.type, HANDOFF_COMMIT);
		frame_msg_clear(&m);
		/* Chunk 1 followed COMMIT{0} at once. */
		assert_int_equal(raw_read_chunk(sv[1], 1), 1);
		assert_int_equal(c.src_cbs, 0);
		if (mode == EOF_NO_ACK) {
			close(sv[1]);
			sv[1] = -1;
		} else if (mode == ACK_THEN_SILENT) {
			assert_false(handoff_source_committed_queued(c.src));
			ack.chunk = 0;
			raw_pb(sv[1], HANDOFF_COMMITTED, &ack.base, NULL, 0);
			/* Seen on the channel before the loop reads it. */
			assert_true(handoff_source_committed_queued(c.src));
		}
		while (c.src_cbs < 2)
			event_base_loop(c.base, EVLOOP_ONCE);
		run_for(&c, 50);
		assert_int_equal(c.src_cbs, 2); /* each once */
		assert_int_equal(c.src_chunk[0], 0);
		assert_int_equal(c.src_chunk[1], 1);
		assert_true(c.src_result[1] < 0);
		if (mode == ACK_THEN_SILENT)
			assert_int_equal(c.src_result[0], 0);
		else
			assert_true(c.src_result[0] < 0);
		/* Nothing more goes out. */
		assert_int_equal(handoff_source_send_chunk(c.src, &item0, 1), -EPIPE);
		if (mode != EOF_NO_ACK) {
			Baton__Handoff__Abort *a;

			/* The target can never commit chunk 1 on EOF. */
			assert_int_equal(frame_recv(sv[1], &m, 100), 0);
			assert_int_equal(m.type, HANDOFF_ABORT);
			a = baton__handoff__abort__unpack(NULL, m.len, m.data);
			assert_non_null(a);
			assert_int_equal(a->chunk, 1);
			baton__handoff__abort__free_unpacked(a, NULL);
			frame_msg_clear(&m);
		}
		if (mode == SILENT) {
			/* Killed before anything was resumed. */
			assert_int_equal(waitpid(child, &status, 0), child);
			assert_true(WIFSIGNALED(status));
		} else {
			assert_int_equal(waitpid(child, &status, WNOHANG), 0);
			kill(child, SIGKILL);
			assert_int_equal(waitpid(child, &status, 0), child);
		}
		if (sv[1] >= 0)
			close(sv[1]);
		ctx_fini(&c);
	}
	assert_int_equal(count_fds(), base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_happy_path_two_chunks),
		cmocka_unit_test(test_target_aborts_on_prepare_failure),
		cmocka_unit_test(test_source_timeout),
		cmocka_unit_test(test_source_kills_unresponsive_target),
		cmocka_unit_test(test_source_rejects_bad_items),
		cmocka_unit_test(test_target_rejects_bad_sources),
		cmocka_unit_test(test_target_commits_on_eof_after_prepared),
		cmocka_unit_test(test_target_timeout),
		cmocka_unit_test(test_target_abort_after_prepared),
		cmocka_unit_test(test_source_rejects_bad_answers),
		cmocka_unit_test(test_source_target_closed),
		cmocka_unit_test(test_source_waits_for_committed),
		cmocka_unit_test(test_target_acks_commit_before_arming),
		cmocka_unit_test(test_source_timer_races_committed),
		cmocka_unit_test(test_target_commits_when_source_dies_after_commit),
		cmocka_unit_test(test_target_free_inside_prepare),
		cmocka_unit_test(test_new_rejects_bad_arguments),
		cmocka_unit_test(test_pipeline_overlaps_chunks),
		cmocka_unit_test(test_pipeline_second_chunk_aborted_with_first),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
