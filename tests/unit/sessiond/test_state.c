/* tests/unit/sessiond/test_state.c: serialization of bouncer items
 * (sessiond/state.c through the bouncer.h item interface): exact round
 * trips, validation of adopted input without fd leaks, and that an adopted
 * item resumes I/O exactly where the state says once armed. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "state.pb-c.h"

#include "sample_state.h"
#include "sessiond/backlog.h"
#include "sessiond/bouncer.h"
#include "sessiond/item.h"
#include "sessiond/session.h"
#include "sessiond/state.h"


static struct bouncer_item *adopt_ok(struct bouncer *b, const uint8_t *buf,
				     size_t len, int *fds, size_t nfds)
{
	struct bouncer_item *it = NULL;
	char err[256] = "";
	int rc = bouncer_item_adopt(b, buf, len, fds, nfds, &it, err, sizeof(err));
	if (rc < 0)
		fail_msg("adopt failed: %s (%d)", err, rc);
	assert_non_null(it);
	return it;
}

/* The sample with the informational peer/local fields removed: what our
 * serializer must reproduce byte for byte (socketpairs have no address). */
static uint8_t *sample_without_addresses(const uint8_t *buf, size_t len,
					 size_t *outlen)
{
	Baton__State__Item *item = baton__state__item__unpack(NULL, len, buf);
	assert_non_null(item);
	Baton__State__Connection *conns[16];
	size_t n = 0;
	if (item->session) {
		if (item->session->upstream)
			conns[n++] = item->session->upstream;
		for (size_t i = 0; i < item->session->n_clients; i++)
			conns[n++] = item->session->clients[i];
	} else {
		conns[n++] = item->pending;
	}
	for (size_t i = 0; i < n; i++) {
		free(conns[i]->peer);
		free(conns[i]->local);
		conns[i]->peer = conns[i]->local = NULL;
	}
	*outlen = baton__state__item__get_packed_size(item);
	uint8_t *out = malloc(*outlen);
	baton__state__item__pack(item, out);
	baton__state__item__free_unpacked(item, NULL);
	return out;
}

static void roundtrip(struct fixture *f, uint8_t *(*pack)(size_t *), size_t nfds)
{
	size_t len, alen, blen, elen, n1, n2;
	uint8_t *a = NULL, *bb = NULL;
	const int *ifds;
	int ours[4], peers[4], ours2[4], peers2[4];
	struct bouncer *b2 = bouncer_new(f->base, NULL);

	uint8_t *buf = pack(&len);
	make_pairs(ours, peers, nfds);
	struct bouncer_item *it = adopt_ok(f->b, buf, len, ours, nfds);
	assert_int_equal(bouncer_item_nfds(it), nfds);
	assert_int_equal(bouncer_item_serialize(it, &a, &alen, &ifds, &n1), 0);
	assert_int_equal(n1, nfds);
	for (size_t i = 0; i < nfds; i++)
		assert_int_equal(ifds[i], ours[i]); /* fd_index order kept */

	/* adopt what we serialized into a second bouncer: identical again */
	make_pairs(ours2, peers2, nfds);
	struct bouncer_item *it2 = adopt_ok(b2, a, alen, ours2, nfds);
	assert_int_equal(bouncer_item_serialize(it2, &bb, &blen, &ifds, &n2), 0);
	assert_int_equal(alen, blen);
	assert_memory_equal(a, bb, alen);

	/* and nothing of the original was lost or changed on the way */
	uint8_t *expect = sample_without_addresses(buf, len, &elen);
	assert_int_equal(alen, elen);
	assert_memory_equal(a, expect, elen);

	bouncer_item_discard(it);
	bouncer_item_discard(it2);
	bouncer_free(b2);
	close_all(peers, nfds);
	close_all(peers2, nfds);
	free(expect);
	free(buf);
	free(a);
	free(bb);
}

static void test_roundtrip_session(void **state)
{
	roundtrip(*state, sample_item_pack, 2);
}

static void test_roundtrip_pending(void **state)
{
	roundtrip(*state, sample_pending_pack, 1);
}

/* Adopt must fail with rc and a reason containing `why`, and close every
 * fd it was given. */
static void expect_reject(struct bouncer *b, const uint8_t *buf, size_t len,
			  int *fds, size_t nfds, int rc_expected, const char *why)
{
	struct bouncer_item *it = (void *)1;
	char err[256] = "";
	int before = count_open_fds();
	int rc = bouncer_item_adopt(b, buf, len, fds, nfds, &it, err, sizeof(err));
	assert_int_equal(rc, rc_expected);
	assert_null(it);
	if (!strstr(err, why))
		fail_msg("reason '%s' does not mention '%s'", err, why);
	assert_int_equal(count_open_fds(), before - (int)nfds);
}

typedef void (*mutate_fn)(Baton__State__Item *item);

static uint8_t *sample_mutated(mutate_fn fn, size_t *len)
{
	size_t l;
	uint8_t *buf = sample_item_pack(&l);
	Baton__State__Item *item = baton__state__item__unpack(NULL, l, buf);
	assert_non_null(item);
	fn(item);
	*len = baton__state__item__get_packed_size(item);
	uint8_t *out = malloc(*len);
	baton__state__item__pack(item, out);
	baton__state__item__free_unpacked(item, NULL);
	free(buf);
	return out;
}

/* Delivery accounting of the sample client (delivered_seq 5, 70 bytes of
 * output): seqs 4 and 5 queued in its output buffer, not acknowledged. */
static void set_delivery(Baton__State__Item *item, uint64_t acked,
			 uint64_t d4, uint64_t d5, uint64_t echo_delivered)
{
	Baton__State__Connection *pc = item->session->clients[0];
	Baton__State__Delivery *d = malloc(sizeof(*d));
	baton__state__delivery__init(d);
	d->has_acked_seq = 1;
	d->acked_seq = acked;
	d->n_marks = 2;
	d->marks = malloc(2 * sizeof(*d->marks));
	uint64_t dist[2] = { d4, d5 }, seq[2] = { 4, 5 };
	for (int i = 0; i < 2; i++) {
		d->marks[i] = malloc(sizeof(*d->marks[i]));
		baton__state__delivery_mark__init(d->marks[i]);
		d->marks[i]->distance = dist[i];
		d->marks[i]->seq = seq[i];
	}
	d->has_delivered_seq = 1;
	d->delivered_seq = echo_delivered;
	d->has_output_len = 1;
	d->output_len = pc->output.len;
	pc->delivery = d;
}

static void good_delivery(Baton__State__Item *item) { set_delivery(item, 3, 30, 0, 5); }
static void delivery_seq_order(Baton__State__Item *item) { set_delivery(item, 4, 30, 0, 5); }
static void delivery_distance_order(Baton__State__Item *item) { set_delivery(item, 3, 0, 30, 5); }
static void delivery_distance_range(Baton__State__Item *item) { set_delivery(item, 3, 70, 0, 5); }
static void delivery_acked_high(Baton__State__Item *item) { set_delivery(item, 6, 30, 0, 5); }
/* written by a newer worker, passed on by an older one that sent more */
static void delivery_stale(Baton__State__Item *item) { set_delivery(item, 3, 700, 0, 4); }

static uint8_t *sample_delivery_pack(size_t *len)
{
	return sample_mutated(good_delivery, len);
}

static void test_roundtrip_delivery(void **state)
{
	roundtrip(*state, sample_delivery_pack, 2);
}

/* Bad delivery accounting is rejected; a stale one (its echo of
 * delivered_seq does not match) is adopted without its marks. */
static void test_delivery_checks(void **state)
{
	struct fixture *f = *state;
	mutate_fn bad[] = { delivery_seq_order, delivery_distance_order,
			    delivery_distance_range, delivery_acked_high };
	const char *why[] = { "seq", "distance", "distance", "acked_seq" };
	int ours[2], peers[2];
	size_t mlen, alen, nfds;
	const int *fds;
	uint8_t *m, *a;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		m = sample_mutated(bad[i], &mlen);
		make_pairs(ours, peers, 2);
		expect_reject(f->b, m, mlen, ours, 2, -EINVAL, why[i]);
		close_all(peers, 2);
		free(m);
	}
	m = sample_mutated(delivery_stale, &mlen);
	make_pairs(ours, peers, 2);
	struct bouncer_item *it = adopt_ok(f->b, m, mlen, ours, 2);
	assert_int_equal(bouncer_item_serialize(it, &a, &alen, &fds, &nfds), 0);
	Baton__State__Item *item = baton__state__item__unpack(NULL, alen, a);
	const Baton__State__Delivery *d = item->session->clients[0]->delivery;
	assert_non_null(d); /* acked_seq 3 kept as a lower bound */
	assert_int_equal(d->acked_seq, 3);
	assert_int_equal(d->n_marks, 0);
	assert_int_equal(d->delivered_seq, 5);
	baton__state__item__free_unpacked(item, NULL);
	bouncer_item_discard(it);
	close_all(peers, 2);
	free(a);
	free(m);
}

static void dup_index(Baton__State__Item *item)
{
	item->session->clients[0]->fd_index = 0;
}

static void bad_next_seq(Baton__State__Item *item)
{
	item->session->next_seq = 3;
}

static void wrong_role(Baton__State__Item *item)
{
	item->session->clients[0]->role = BATON__STATE__CONN_ROLE__CONN_ROLE_UPSTREAM;
}

static void seq_not_increasing(Baton__State__Item *item)
{
	Baton__State__Buffer *b = item->session->buffers[0];
	Baton__State__BacklogLine *t = b->lines[0];
	b->lines[0] = b->lines[1];
	b->lines[1] = t;
}

static void test_adopt_rejects(void **state)
{
	struct fixture *f = *state;
	int ours[3], peers[3];
	size_t len, mlen;
	uint8_t *buf = sample_item_pack(&len);
	uint8_t *m;

	/* only one fd for two connections */
	make_pairs(ours, peers, 1);
	expect_reject(f->b, buf, len, ours, 1, -EINVAL, "out of range");
	close_all(peers, 1);

	/* two connections on the same fd_index */
	m = sample_mutated(dup_index, &mlen);
	make_pairs(ours, peers, 2);
	expect_reject(f->b, m, mlen, ours, 2, -EINVAL, "used twice");
	close_all(peers, 2);
	free(m);

	/* an fd the state does not mention */
	make_pairs(ours, peers, 3);
	expect_reject(f->b, buf, len, ours, 3, -EINVAL, "not referenced");
	close_all(peers, 3);

	/* not a socket */
	int p[2];
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	make_pairs(ours, peers, 1);
	ours[1] = p[0];
	expect_reject(f->b, buf, len, ours, 2, -ENOTSOCK, "not a socket");
	close(p[1]);
	close_all(peers, 1);

	/* a datagram socket */
	int d[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, d), 0);
	make_pairs(ours, peers, 1);
	ours[1] = d[0];
	expect_reject(f->b, buf, len, ours, 2, -EPROTOTYPE, "not a stream socket");
	close(d[1]);
	close_all(peers, 1);

	/* truncated protobuf */
	make_pairs(ours, peers, 2);
	expect_reject(f->b, buf, len / 2, ours, 2, -EBADMSG, "decode");
	close_all(peers, 2);

	/* wrong connection role */
	m = sample_mutated(wrong_role, &mlen);
	make_pairs(ours, peers, 2);
	expect_reject(f->b, m, mlen, ours, 2, -EINVAL, "role");
	close_all(peers, 2);
	free(m);

	/* next_seq not above the stored lines */
	m = sample_mutated(bad_next_seq, &mlen);
	make_pairs(ours, peers, 2);
	expect_reject(f->b, m, mlen, ours, 2, -EINVAL, "next_seq");
	close_all(peers, 2);
	free(m);

	/* backlog seqs out of order inside a buffer */
	m = sample_mutated(seq_not_increasing, &mlen);
	make_pairs(ours, peers, 2);
	expect_reject(f->b, m, mlen, ours, 2, -EINVAL, "seq");
	close_all(peers, 2);
	free(m);

	/* the same session twice */
	make_pairs(ours, peers, 2);
	struct bouncer_item *it = adopt_ok(f->b, buf, len, ours, 2);
	int ours2[2], peers2[2];
	make_pairs(ours2, peers2, 2);
	expect_reject(f->b, buf, len, ours2, 2, -EEXIST, "already exists");
	close_all(peers2, 2);
	bouncer_item_discard(it);
	close_all(peers, 2);

	struct bouncer_stats st;
	bouncer_stats(f->b, &st);
	assert_int_equal(st.sessions, 0);
	free(buf);
}

static void add_unknown(ProtobufCMessage *m, uint32_t tag, ProtobufCWireType wt,
			const void *data, size_t len)
{
	ProtobufCMessageUnknownField *f = malloc(sizeof(*f));
	f->tag = tag;
	f->wire_type = wt;
	f->len = len;
	f->data = malloc(len);
	memcpy(f->data, data, len);
	m->n_unknown_fields = 1;
	m->unknown_fields = f;
}

/* Fields from a newer schema survive a pass through this worker (proto
 * rule 4), so a rollback after an upgrade loses nothing the newer version
 * wrote. */
static void test_unknown_fields_preserved(void **state)
{
	struct fixture *f = *state;
	size_t len, l2, alen, elen, nfds;
	const int *fds;
	uint8_t *buf = sample_item_pack(&len), *a;
	int ours[2], peers[2];

	Baton__State__Item *item = baton__state__item__unpack(NULL, len, buf);
	add_unknown(&item->session->base, 99, PROTOBUF_C_WIRE_TYPE_VARINT, "\x2a", 1);
	add_unknown(&item->session->upstream->base, 98,
		    PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED, "\x02hi", 3);
	add_unknown(&item->session->channels[1]->base, 97,
		    PROTOBUF_C_WIRE_TYPE_VARINT, "\x01", 1);
	l2 = baton__state__item__get_packed_size(item);
	uint8_t *b2 = malloc(l2);
	baton__state__item__pack(item, b2);
	baton__state__item__free_unpacked(item, NULL);

	make_pairs(ours, peers, 2);
	struct bouncer_item *it = adopt_ok(f->b, b2, l2, ours, 2);
	assert_int_equal(bouncer_item_serialize(it, &a, &alen, &fds, &nfds), 0);
	uint8_t *expect = sample_without_addresses(b2, l2, &elen);
	assert_int_equal(alen, elen);
	assert_memory_equal(a, expect, elen);
	item = baton__state__item__unpack(NULL, alen, a);
	assert_int_equal(item->session->base.n_unknown_fields, 1);
	assert_int_equal(item->session->base.unknown_fields[0].tag, 99);
	assert_int_equal(item->session->upstream->base.n_unknown_fields, 1);
	assert_int_equal(item->session->channels[1]->base.n_unknown_fields, 1);
	baton__state__item__free_unpacked(item, NULL);

	bouncer_item_discard(it);
	close_all(peers, 2);
	free(expect);
	free(a);
	free(b2);
	free(buf);
}

/* Corrupted states never crash the adopter or leak an fd: each is either
 * rejected (fds closed) or adopted whole (and then serializes). */
static void test_adopt_mutations(void **state)
{
	struct fixture *f = *state;
	size_t len;
	uint8_t *buf = sample_item_pack(&len);
	uint8_t *m = malloc(len);
	unsigned seed = 12345;
	int adopted = 0;

	for (int i = 0; i < 3000; i++) {
		int ours[2], peers[2];
		size_t mlen = len;
		memcpy(m, buf, len);
		int flips = 1 + (int)(rand_r(&seed) % 4);
		for (int j = 0; j < flips; j++)
			m[rand_r(&seed) % len] ^= (uint8_t)(1u << (rand_r(&seed) % 8));
		if (rand_r(&seed) % 4 == 0)
			mlen = rand_r(&seed) % len;
		make_pairs(ours, peers, 2);
		int before = count_open_fds();
		struct bouncer_item *it = NULL;
		char err[256];
		int rc = bouncer_item_adopt(f->b, m, mlen, ours, 2, &it, err, sizeof(err));
		if (rc == 0) {
			uint8_t *out;
			size_t olen, nfds;
			const int *fds;
			adopted++;
			assert_int_equal(bouncer_item_serialize(it, &out, &olen, &fds, &nfds), 0);
			free(out);
			assert_int_equal(nfds, 2);
			bouncer_item_discard(it);
		} else {
			assert_null(it);
			assert_true(err[0] != '\0');
		}
		assert_int_equal(count_open_fds(), before - 2);
		close_all(peers, 2);
	}
	assert_true(adopted > 0); /* e.g. flips inside backlog text */
	free(m);
	free(buf);
}

static void run_loop(struct event_base *base, int rounds)
{
	for (int i = 0; i < rounds; i++)
		event_base_loop(base, EVLOOP_NONBLOCK);
}

/* Read what is available on fd (non-blocking, after a short poll). */
static size_t read_avail(int fd, char *out, size_t n)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	size_t got = 0;
	while (got + 1 < n && poll(&pfd, 1, 50) > 0) {
		ssize_t r = recv(fd, out + got, n - 1 - got, MSG_DONTWAIT);
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	out[got] = '\0';
	return got;
}

/* Armed after adoption, the session writes the unflushed output, completes
 * the partial input line with the bytes that follow, stores it with the next
 * seq and relays it; frozen again, it reads nothing more. */
static void test_arm_resumes_io(void **state)
{
	struct fixture *f = *state;
	int ours[2], peers[2];
	size_t len;
	char got[4096];
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	uint8_t *buf = sample_item_pack_at(&len, (int64_t)ts.tv_sec * 1000);

	make_pairs(ours, peers, 2);
	struct bouncer_item *it = adopt_ok(f->b, buf, len, ours, 2);
	/* no I/O before arm */
	assert_int_equal(read_avail(peers[0], got, sizeof(got)), 0);
	assert_int_equal(send(peers[0], "ne\r\n", 4, 0), 4);
	run_loop(f->base, 3);
	assert_int_equal(read_avail(peers[1], got, sizeof(got)), 0);

	bouncer_item_arm(it);
	run_loop(f->base, 5);
	read_avail(peers[0], got, sizeof(got));
	/* the restored output first, then the adoption PING (health.h) */
	assert_string_equal(got, "PRIVMSG #baton :queued but not written\r\n"
				 "PING :baton-adopt-1\r\n");
	read_avail(peers[1], got, sizeof(got));
	/* the client's unflushed output first, then the completed line */
	assert_non_null(strstr(got, ":bob!b@host.example NOTICE alice :ok\r\n@time="));
	assert_non_null(strstr(got, " :bob!b@host.example PRIVMSG #baton :a partial line\r\n"));

	/* the upstream answers PING itself and does not relay it */
	assert_int_equal(send(peers[0], "PING :xyz\r\n", 11, 0), 11);
	run_loop(f->base, 5);
	read_avail(peers[0], got, sizeof(got));
	assert_string_equal(got, "PONG :xyz\r\n");
	assert_int_equal(read_avail(peers[1], got, sizeof(got)), 0);

	/* frozen: bytes stay in the kernel, and end up in the state */
	bouncer_item_freeze(it);
	assert_int_equal(send(peers[0], ":x!y@z PRIVMSG #baton :later\r\n:x!y@z PRI", 40, 0), 40);
	run_loop(f->base, 5);
	assert_int_equal(read_avail(peers[1], got, sizeof(got)), 0);
	uint8_t *out;
	size_t olen, nfds;
	const int *fds;
	assert_int_equal(bouncer_item_serialize(it, &out, &olen, &fds, &nfds), 0);
	Baton__State__Item *item = baton__state__item__unpack(NULL, olen, out);
	assert_non_null(item);
	assert_int_equal(item->session->next_seq, 7);
	assert_int_equal(item->session->clients[0]->delivered_seq, 6);
	assert_false(item->session->upstream->has_input); /* nothing read */
	assert_false(item->session->upstream->has_output);
	baton__state__item__free_unpacked(item, NULL);
	free(out);

	/* thawed: resumes reading */
	bouncer_item_thaw(it);
	run_loop(f->base, 5);
	read_avail(peers[1], got, sizeof(got));
	assert_non_null(strstr(got, ":x!y@z PRIVMSG #baton :later\r\n"));
	bouncer_item_freeze(it);
	assert_int_equal(bouncer_item_serialize(it, &out, &olen, &fds, &nfds), 0);
	item = baton__state__item__unpack(NULL, olen, out);
	assert_int_equal(item->session->upstream->input.len, 10); /* ":x!y@z PRI" */
	assert_memory_equal(item->session->upstream->input.data, ":x!y@z PRI", 10);
	baton__state__item__free_unpacked(item, NULL);
	free(out);

	bouncer_item_release(it);
	close_all(peers, 2);
	free(buf);
}


/* ---- state schema 3: positions in the store ---- */

/* The sample's #baton buffer as schema 3 carries it when its store has
 * committed its lines (1, 2, 4): no lines, the range 1-4. */
static void drop_lines(Baton__State__Buffer *b)
{
	for (size_t i = 0; i < b->n_lines; i++)
		baton__state__backlog_line__free_unpacked(b->lines[i], NULL);
	b->n_lines = 0;
}

static void cold_baton(Baton__State__Item *item)
{
	Baton__State__Buffer *b = item->session->buffers[0];
	drop_lines(b);
	b->has_stored_from = b->has_stored_to = 1;
	b->stored_from = 1;
	b->stored_to = 4;
}

static void cold_beyond_next(Baton__State__Item *item)
{
	cold_baton(item);
	item->session->buffers[0]->stored_to = 6; /* next_seq is 6 */
}

static void cold_from_zero(Baton__State__Item *item)
{
	cold_baton(item);
	item->session->buffers[0]->stored_from = 0;
}

static void cold_reversed(Baton__State__Item *item)
{
	cold_baton(item);
	item->session->buffers[0]->stored_from = 5;
}

static void cold_half(Baton__State__Item *item)
{
	cold_baton(item);
	item->session->buffers[0]->has_stored_to = 0;
}

static void cold_below_dropped(Baton__State__Item *item)
{
	cold_baton(item);
	item->session->buffers[0]->has_dropped_seq = 1;
	item->session->buffers[0]->dropped_seq = 1;
}

/* Schema >= 2 writes the member lists apart: the lists item (one here)
 * is returned in *lbuf when lbuf is not NULL. */
static uint8_t *ser_schema_lists(struct bouncer_item *it, unsigned schema,
				 uint64_t durable, size_t *len, size_t *stored,
				 uint8_t **lbuf, size_t *llen)
{
	struct state_ctx ctx = { .schema = schema, .store_durable = durable };
	struct state_result res;
	uint8_t *buf = NULL, **bufs = NULL;
	size_t *lens = NULL, n = 0;

	assert_int_equal(state_serialize(it, &ctx, &buf, len, &res), 0);
	if (lbuf) {
		assert_int_equal(state_serialize_lists(res.lists, res.nlists, 1 << 24,
						       &bufs, &lens, &n), 0);
		assert_int_equal(n, 1);
		*lbuf = bufs[0];
		*llen = lens[0];
		free(bufs);
		free(lens);
	}
	free(res.lists);
	if (stored)
		*stored = res.lines_stored;
	return buf;
}

static uint8_t *ser_schema(struct bouncer_item *it, unsigned schema,
			   uint64_t durable, size_t *len, size_t *stored)
{
	return ser_schema_lists(it, schema, durable, len, stored, NULL, NULL);
}

static Baton__State__Buffer *find_buffer(Baton__State__Item *item, const char *name)
{
	for (size_t i = 0; i < item->session->n_buffers; i++)
		if (strcmp(item->session->buffers[i]->name, name) == 0)
			return item->session->buffers[i];
	fail_msg("no buffer %s", name);
	return NULL;
}

/* A schema-3 state adopts (the range remembered, nothing read), is written
 * again the same in schema 3 (also with no store here: the range stays),
 * round trips byte for byte through a second worker; schema 1 without a
 * store to read the range from carries the inline lines only. */
static void test_schema3_store_pos_roundtrip(void **state)
{
	struct fixture *f = *state;
	struct bouncer *b2 = bouncer_new(f->base, NULL);
	int ours[2], peers[2], ours2[2], peers2[2];
	size_t len, alen, blen, clen, stored;
	uint64_t from, to;
	uint8_t *buf = sample_mutated(cold_baton, &len);

	make_pairs(ours, peers, 2);
	struct bouncer_item *it = adopt_ok(f->b, buf, len, ours, 2);
	struct backlog *bl = it->session->backlog;
	assert_int_equal(backlog_cold_range(bl, "#BATON", &from, &to), 1);
	assert_int_equal(from, 1);
	assert_int_equal(to, 4);
	assert_int_equal(backlog_nlines(bl), 2); /* bob's */
	assert_int_equal(backlog_cold_after(bl, 2, NULL), 4); /* "default" at 2 */
	assert_int_equal(backlog_cold_after(bl, 4, NULL), 0); /* "phone" at 4 */

	uint8_t *lists = NULL;
	size_t llen = 0;
	uint8_t *a = ser_schema_lists(it, STATE_SCHEMA_STORE_POS, 0, &alen, &stored,
				      &lists, &llen);
	assert_int_equal(stored, 0);
	Baton__State__Item *pi = baton__state__item__unpack(NULL, alen, a);
	assert_non_null(pi);
	Baton__State__Buffer *pb = find_buffer(pi, "#baton");
	assert_int_equal(pb->n_lines, 0);
	assert_true(pb->has_stored_from && pb->has_stored_to);
	assert_int_equal(pb->stored_from, 1);
	assert_int_equal(pb->stored_to, 4);
	assert_int_equal(find_buffer(pi, "bob")->n_lines, 2);
	baton__state__item__free_unpacked(pi, NULL);

	make_pairs(ours2, peers2, 2);
	struct bouncer_item *none = (void *)1;
	char err[256] = "";
	if (bouncer_item_adopt(b2, lists, llen, NULL, 0, &none, err, sizeof(err)) < 0)
		fail_msg("lists: %s", err);
	struct bouncer_item *it2 = adopt_ok(b2, a, alen, ours2, 2);
	bouncer_chunk_end(b2, true);
	uint8_t *bb = ser_schema(it2, STATE_SCHEMA_STORE_POS, 0, &blen, NULL);
	assert_int_equal(alen, blen);
	assert_memory_equal(a, bb, alen);

	/* schema 1 (a rollback) from a worker without a store: the range
	 * cannot be read, only the inline lines travel, no range fields */
	uint8_t *c = ser_schema(it2, STATE_SCHEMA_INLINE, 0, &clen, NULL);
	pi = baton__state__item__unpack(NULL, clen, c);
	pb = find_buffer(pi, "#baton");
	assert_int_equal(pb->n_lines, 0);
	assert_false(pb->has_stored_from || pb->has_stored_to);
	baton__state__item__free_unpacked(pi, NULL);

	bouncer_item_discard(it);
	bouncer_item_discard(it2);
	bouncer_free(b2);
	close_all(peers, 2);
	close_all(peers2, 2);
	free(buf);
	free(a);
	free(bb);
	free(c);
	free(lists);
}

/* Lines with store seqs up to the store's durable seq leave the state;
 * the newer ones (the store's queue) and those not known to be stored
 * (the adopted sample's) travel inline; schema 2 and no store: all. */
static void test_schema3_omits_committed(void **state)
{
	struct fixture *f = *state;
	int ours[2], peers[2];
	size_t len, alen, blen, stored;
	uint8_t *buf = sample_item_pack(&len);

	make_pairs(ours, peers, 2);
	struct bouncer_item *it = adopt_ok(f->b, buf, len, ours, 2);
	struct backlog *bl = it->session->backlog;
	for (uint64_t seq = 10; seq <= 14; seq++) /* as the store numbers them */
		assert_int_equal(backlog_append_at(bl, "#baton", seq, 0, ":x PRIVMSG #baton :s"), 0);
	uint8_t *a = ser_schema(it, STATE_SCHEMA_STORE_POS, 12, &alen, &stored);
	assert_int_equal(stored, 3);
	Baton__State__Item *pi = baton__state__item__unpack(NULL, alen, a);
	Baton__State__Buffer *pb = find_buffer(pi, "#baton");
	assert_int_equal(pb->n_lines, 5); /* 1, 2, 4 (adopted), 13, 14 (queued) */
	assert_int_equal(pb->lines[2]->seq, 4);
	assert_int_equal(pb->lines[3]->seq, 13);
	assert_int_equal(pb->stored_from, 10);
	assert_int_equal(pb->stored_to, 12);
	assert_int_equal(find_buffer(pi, "bob")->n_lines, 2);
	assert_false(find_buffer(pi, "bob")->has_stored_from);
	baton__state__item__free_unpacked(pi, NULL);

	/* no store (durable 0) or an older receiver: every line inline */
	uint8_t *b = ser_schema(it, STATE_SCHEMA_STORE_POS, 0, &blen, &stored);
	assert_int_equal(stored, 0);
	pi = baton__state__item__unpack(NULL, blen, b);
	assert_int_equal(find_buffer(pi, "#baton")->n_lines, 8);
	baton__state__item__free_unpacked(pi, NULL);
	free(b);
	b = ser_schema(it, STATE_SCHEMA_SHARED, 12, &blen, &stored);
	assert_int_equal(stored, 0);
	pi = baton__state__item__unpack(NULL, blen, b);
	assert_int_equal(find_buffer(pi, "#baton")->n_lines, 8);
	baton__state__item__free_unpacked(pi, NULL);
	assert_true(alen < blen);

	bouncer_item_discard(it);
	close_all(peers, 2);
	free(buf);
	free(a);
	free(b);
}

/* Hostile ranges: beyond next_seq (a position past the store's end the
 * session itself never numbered), 0, reversed, half, at dropped_seq. */
static void test_schema3_rejects(void **state)
{
	struct fixture *f = *state;
	static const struct { mutate_fn fn; const char *why; } bad[] = {
		{ cold_beyond_next, "next_seq" },
		{ cold_from_zero, "bad stored range" },
		{ cold_reversed, "bad stored range" },
		{ cold_half, "bad stored range" },
		{ cold_below_dropped, "bad stored range" },
	};
	int ours[2], peers[2];
	size_t mlen;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint8_t *m = sample_mutated(bad[i].fn, &mlen);
		make_pairs(ours, peers, 2);
		expect_reject(f->b, m, mlen, ours, 2, -EINVAL, bad[i].why);
		close_all(peers, 2);
		free(m);
	}
	struct bouncer_stats st;
	bouncer_stats(f->b, &st);
	assert_int_equal(st.sessions, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_roundtrip_session, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_roundtrip_pending, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_roundtrip_delivery, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_delivery_checks, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_adopt_rejects, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_arm_resumes_io, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_unknown_fields_preserved, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_adopt_mutations, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_schema3_store_pos_roundtrip, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_schema3_omits_committed, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_schema3_rejects, fixture_setup, fixture_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
