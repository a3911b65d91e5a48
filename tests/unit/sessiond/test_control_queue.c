/* tests/unit/sessiond/test_control_queue.c: the worker's sends to the
 * supervisor (sessiond/control_queue.c) never wait. With a supervisor end
 * that does not read (a socketpair with small buffers), pushes return at
 * once, a 10 ms timer keeps firing on time, samples are coalesced to one
 * per type (the bound), must-deliver messages are all kept; once the peer
 * reads, everything arrives whole and in order (multi-fragment messages
 * included), the newest sample last. A broken channel drops the queue; the
 * flush at exit waits for a reader and gives up at its timeout. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "control.pb-c.h"

#include "common/clock.h"
#include "common/control.h"
#include "common/frame.h"
#include "sessiond/control_queue.h"

#define BIG 200000 /* a STATUS of four fragments */

static char *big_version;

struct pair {
	int worker, supervisor;
};

static void pair_open(struct pair *p, int sndbuf)
{
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
	p->worker = sv[0];
	p->supervisor = sv[1];
	if (sndbuf > 0)
		setsockopt(p->worker, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	evutil_make_socket_nonblocking(p->worker);
	evutil_make_socket_nonblocking(p->supervisor);
}

static int push_status(struct control_queue *q, uint32_t seq, bool big)
{
	Baton__Control__Status st = BATON__CONTROL__STATUS__INIT;

	st.has_pid = 1;
	st.pid = seq;
	st.version = big ? big_version : (char *)"small";
	return control_queue_push(q, CONTROL_STATUS, &st.base, CONTROL_QUEUE_SAMPLE);
}

static int push_result(struct control_queue *q, uint32_t seq)
{
	Baton__Control__MigrationResult r = BATON__CONTROL__MIGRATION_RESULT__INIT;

	r.committed = true;
	r.reason = (char *)"";
	r.has_sessions = 1;
	r.sessions = seq;
	return control_queue_push(q, CONTROL_MIGRATION_RESULT, &r.base,
				  CONTROL_QUEUE_MUST);
}

/* What the supervisor reads: type and sequence number of each message. */
struct got {
	int n;
	uint8_t type[4096];
	uint32_t seq[4096];
	size_t len[4096];
};

static int read_one(int fd, struct got *g, int timeout_ms)
{
	struct frame_msg m;
	int r = frame_recv(fd, &m, timeout_ms);

	if (r < 0)
		return r;
	assert_true(g->n < 4096);
	g->type[g->n] = m.type;
	g->len[g->n] = m.len;
	if (m.type == CONTROL_STATUS) {
		Baton__Control__Status *st =
			baton__control__status__unpack(NULL, m.len, m.data);
		assert_non_null(st);
		g->seq[g->n] = st->pid;
		baton__control__status__free_unpacked(st, NULL);
	} else if (m.type == CONTROL_MIGRATION_RESULT) {
		Baton__Control__MigrationResult *mr =
			baton__control__migration_result__unpack(NULL, m.len, m.data);
		assert_non_null(mr);
		g->seq[g->n] = mr->sessions;
		baton__control__migration_result__free_unpacked(mr, NULL);
	}
	g->n++;
	frame_msg_clear(&m);
	return 0;
}

struct reader {
	int fd;
	struct got *g;
	uint32_t until; /* the MIGRATION_RESULT that ends the reading */
	volatile bool done;
};

/* The supervisor: starts after 100 ms, reads until result `until`. */
static void *reader_main(void *arg)
{
	struct reader *rd = arg;
	int64_t t0 = clock_mono_ms();

	usleep(100 * 1000);
	while (clock_mono_ms() - t0 < 5000) {
		int r = read_one(rd->fd, rd->g, 1000);

		if (r == -EAGAIN) {
			usleep(1000);
			continue;
		}
		if (r < 0)
			break;
		if (rd->g->type[rd->g->n - 1] == CONTROL_MIGRATION_RESULT &&
		    rd->g->seq[rd->g->n - 1] == rd->until)
			break;
	}
	rd->done = true;
	return NULL;
}

struct ticker {
	struct event *ev;
	int ticks;
	int64_t last, worst_gap;
};

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct ticker *t = arg;
	int64_t now = clock_mono_ms();

	if (t->last && now - t->last > t->worst_gap)
		t->worst_gap = now - t->last;
	t->last = now;
	t->ticks++;
}

static void test_fast_path(void **state)
{
	struct event_base *base = event_base_new();
	struct pair p;
	struct control_queue *q;
	struct control_queue_stats st;
	struct got *g = calloc(1, sizeof(*g));

	pair_open(&p, 0);
	q = control_queue_new(base, p.worker);
	assert_int_equal(push_status(q, 1, false), 0);
	assert_int_equal(push_result(q, 2), 0);
	control_queue_stats(q, &st);
	assert_int_equal(st.queued, 0); /* sent on the spot */
	assert_int_equal(st.sent, 2);
	assert_int_equal(st.deferred, 0);
	assert_int_equal(read_one(p.supervisor, g, 100), 0);
	assert_int_equal(read_one(p.supervisor, g, 100), 0);
	assert_int_equal(g->type[0], CONTROL_STATUS);
	assert_int_equal(g->seq[0], 1);
	assert_int_equal(g->type[1], CONTROL_MIGRATION_RESULT);
	control_queue_free(q);
	close(p.worker);
	close(p.supervisor);
	event_base_free(base);
	free(g);
	(void)state;
}

static void test_supervisor_not_reading(void **state)
{
	struct event_base *base = event_base_new();
	struct pair p;
	struct control_queue *q;
	struct control_queue_stats st;
	struct ticker t = { 0 };
	struct timeval tv10 = { 0, 10000 };
	struct got *g = calloc(1, sizeof(*g));
	int64_t t0, worst_push = 0;
	uint32_t seq = 0, results = 0;

	pair_open(&p, 131072);
	q = control_queue_new(base, p.worker);
	t.ev = event_new(base, -1, EV_PERSIST, tick_cb, &t);
	event_add(t.ev, &tv10);

	/* 1 s of a busy worker: a big STATUS every 2 ms, a result every
	 * 100 ms, the supervisor reading nothing. */
	t0 = clock_mono_ms();
	while (clock_mono_ms() - t0 < 1000) {
		struct timeval tv2 = { 0, 2000 };
		int64_t p0 = clock_mono_ms();

		assert_int_equal(push_status(q, ++seq, true), 0);
		if (seq % 50 == 0)
			assert_int_equal(push_result(q, ++results), 0);
		if (clock_mono_ms() - p0 > worst_push)
			worst_push = clock_mono_ms() - p0;
		event_base_loopexit(base, &tv2);
		event_base_dispatch(base);
		control_queue_stats(q, &st);
		/* the bound: results, one STATUS partly sent, one waiting */
		assert_true(st.queued <= results + 2);
	}
	assert_true(worst_push < 20);
	assert_true(t.ticks >= 70);        /* the loop went on ... */
	assert_true(t.worst_gap < 100);    /* ... on time */
	control_queue_stats(q, &st);
	assert_true(st.replaced > 100);
	assert_true(control_queue_waiting(q, CONTROL_STATUS));
	assert_true(st.queued_bytes <= (size_t)(results + 2) * (BIG + 64));

	/* the supervisor reads again (its own thread, like its own process:
	 * it waits for a message's later fragments while our loop sends
	 * them): the write event drains the queue, a last result ends it */
	struct reader rd = { .fd = p.supervisor, .g = g, .until = 9999 };
	pthread_t th;

	assert_int_equal(pthread_create(&th, NULL, reader_main, &rd), 0);
	assert_int_equal(push_result(q, 9999), 0);
	for (int i = 0; i < 3000 && !rd.done; i++) {
		struct timeval tv1 = { 0, 1000 };

		event_base_loopexit(base, &tv1);
		event_base_dispatch(base);
	}
	pthread_join(th, NULL);
	control_queue_stats(q, &st);
	assert_int_equal(st.queued, 0);
	assert_true(g->n >= 2);
	assert_int_equal(g->type[g->n - 1], CONTROL_MIGRATION_RESULT);
	assert_int_equal(g->seq[g->n - 1], 9999);
	g->n--;
	/* every result, in order; statuses in increasing order, the newest
	 * one last; everything whole */
	uint32_t r = 0, last_status = 0;

	for (int i = 0; i < g->n; i++) {
		if (g->type[i] == CONTROL_MIGRATION_RESULT) {
			assert_int_equal(g->seq[i], ++r);
		} else {
			assert_int_equal(g->type[i], CONTROL_STATUS);
			assert_true(g->seq[i] > last_status);
			assert_true(g->len[i] > BIG);
			last_status = g->seq[i];
		}
	}
	assert_int_equal(r, results);
	assert_int_equal(last_status, seq);
	event_free(t.ev);
	control_queue_free(q);
	close(p.worker);
	close(p.supervisor);
	event_base_free(base);
	free(g);
	(void)state;
}

static void test_health_waits(void **state)
{
	struct event_base *base = event_base_new();
	struct pair p;
	struct control_queue *q;
	Baton__Control__Health h = BATON__CONTROL__HEALTH__INIT;

	pair_open(&p, 131072);
	q = control_queue_new(base, p.worker);
	/* fill the socket with something big, then a HEALTH waits */
	assert_int_equal(push_status(q, 1, true), 0);
	assert_int_equal(push_status(q, 2, true), 0);
	assert_false(control_queue_waiting(q, CONTROL_HEALTH));
	assert_int_equal(control_queue_push(q, CONTROL_HEALTH, &h.base,
					    CONTROL_QUEUE_SAMPLE), 0);
	assert_true(control_queue_waiting(q, CONTROL_HEALTH));
	assert_false(control_queue_waiting(q, CONTROL_PROGRESS));
	control_queue_free(q); /* drops what is queued */
	close(p.worker);
	close(p.supervisor);
	event_base_free(base);
	(void)state;
}

static void test_broken(void **state)
{
	struct event_base *base = event_base_new();
	struct pair p;
	struct control_queue *q;
	struct control_queue_stats st;

	pair_open(&p, 131072);
	q = control_queue_new(base, p.worker);
	assert_int_equal(push_status(q, 1, true), 0);
	assert_int_equal(push_result(q, 1), 0);
	close(p.supervisor); /* the supervisor is gone */
	event_base_loop(base, EVLOOP_NONBLOCK);
	control_queue_stats(q, &st);
	assert_int_equal(st.queued, 0);
	assert_int_equal(push_result(q, 2), -EPIPE);
	control_queue_free(q);
	close(p.worker);
	event_base_free(base);
	(void)state;
}

static void test_flush_at_exit(void **state)
{
	struct event_base *base = event_base_new();
	struct pair p;
	struct control_queue *q;
	struct got *g = calloc(1, sizeof(*g));
	struct reader rd;
	pthread_t th;
	int64_t t0;

	/* nobody reads: the flush gives up at its timeout */
	pair_open(&p, 131072);
	q = control_queue_new(base, p.worker);
	assert_int_equal(push_status(q, 1, true), 0);
	assert_int_equal(push_status(q, 2, true), 0);
	assert_int_equal(push_result(q, 1), 0);
	t0 = clock_mono_ms();
	assert_int_equal(control_queue_flush(q, 200), -ETIMEDOUT);
	assert_true(clock_mono_ms() - t0 >= 190);
	assert_true(clock_mono_ms() - t0 < 1000);
	control_queue_free(q);
	close(p.worker);
	close(p.supervisor);

	/* a reader (late): the result queued behind a big STATUS leaves */
	pair_open(&p, 131072);
	q = control_queue_new(base, p.worker);
	assert_int_equal(push_status(q, 1, true), 0);
	assert_int_equal(push_status(q, 2, true), 0);
	assert_int_equal(push_result(q, 7), 0);
	rd.fd = p.supervisor;
	rd.g = g;
	rd.until = 7;
	rd.done = false;
	assert_int_equal(pthread_create(&th, NULL, reader_main, &rd), 0);
	assert_int_equal(control_queue_flush(q, 2000), 0);
	close(p.worker); /* the reader sees EOF after the result */
	pthread_join(th, NULL);
	assert_int_equal(g->n, 3);
	assert_int_equal(g->type[0], CONTROL_STATUS);
	assert_int_equal(g->type[1], CONTROL_STATUS);
	assert_int_equal(g->type[2], CONTROL_MIGRATION_RESULT);
	control_queue_free(q);
	close(p.supervisor);
	event_base_free(base);
	free(g);
	(void)state;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fast_path),
		cmocka_unit_test(test_supervisor_not_reading),
		cmocka_unit_test(test_health_waits),
		cmocka_unit_test(test_broken),
		cmocka_unit_test(test_flush_at_exit),
	};
	int rc;

	big_version = malloc(BIG + 1);
	memset(big_version, 'v', BIG);
	big_version[BIG] = '\0';
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	free(big_version);
	return rc;
}
