/* tests/unit/sessiond/test_golden_v3.c: every build must import the state
 * written by schema v3 (tests/golden/state-v3.bin): one chunk as a
 * schema-3 source with a store writes it, an item of member lists first,
 * then the session of state-v1.bin with 6 more lines numbered by its store
 * (100-103 and 105 in #baton, 104 in the query "bob"), the store durable
 * up to 104: #baton carries 100-103 as the range stored_from 100 /
 * stored_to 103 and inline the sample's 1, 2, 4 (adopted: not known to be
 * stored) and 105 (still in the store's queue); bob carries 104 as the
 * range 104-104 and the sample's 3 and 5 inline.
 *
 * File format: each item prefixed by its length (4 bytes, big-endian).
 *
 *   test_sessiond_golden_v3 V3             adopt V3, check, re-write
 *   test_sessiond_golden_v3 --generate V3  (re)write V3 (a released golden
 *                                          file never changes)
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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

#define DURABLE 104

static const char *v3_path;

static uint8_t *slurp(const char *path, size_t *len)
{
	FILE *fp = fopen(path, "rb");
	uint8_t *buf = malloc(1 << 20);

	if (!fp || !buf) {
		fprintf(stderr, "cannot open %s: %s\n", path, strerror(errno));
		exit(1);
	}
	*len = fread(buf, 1, 1 << 20, fp);
	fclose(fp);
	return buf;
}

static void pairs(int *ours, int *peers)
{
	for (int i = 0; i < 2; i++) {
		int sv[2];
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
			exit(1);
		ours[i] = sv[0];
		peers[i] = sv[1];
	}
}

/* The item without the informational addresses (recomputed from the
 * sockets, empty for socketpairs). */
static uint8_t *comparable(const uint8_t *in, size_t n, size_t *len)
{
	Baton__State__Item *g = baton__state__item__unpack(NULL, n, in);
	uint8_t *out;

	assert_non_null(g);
	free(g->session->upstream->peer);
	free(g->session->upstream->local);
	free(g->session->clients[0]->peer);
	free(g->session->clients[0]->local);
	g->session->upstream->peer = g->session->upstream->local = NULL;
	g->session->clients[0]->peer = g->session->clients[0]->local = NULL;
	*len = baton__state__item__get_packed_size(g);
	out = malloc(*len);
	baton__state__item__pack(g, out);
	baton__state__item__free_unpacked(g, NULL);
	return out;
}

static const Baton__State__Buffer *buffer(const Baton__State__Item *it,
					  const char *name)
{
	for (size_t i = 0; i < it->session->n_buffers; i++)
		if (strcmp(it->session->buffers[i]->name, name) == 0)
			return it->session->buffers[i];
	fail_msg("no buffer %s", name);
	return NULL;
}

static uint8_t *write_schema(struct bouncer_item *it, unsigned schema,
			     uint64_t durable, size_t *len, uint8_t **lbuf,
			     size_t *llen)
{
	struct state_ctx ctx = { .schema = schema, .store_durable = durable };
	struct state_result res;
	uint8_t *buf = NULL, **bufs = NULL;
	size_t *lens = NULL, n = 0;

	if (state_serialize(it, &ctx, &buf, len, &res) < 0)
		return NULL;
	if (lbuf) {
		if (state_serialize_lists(res.lists, res.nlists, 1 << 24, &bufs,
					  &lens, &n) < 0 || n != 1)
			return NULL;
		*lbuf = bufs[0];
		*llen = lens[0];
		free(bufs);
		free(lens);
	}
	free(res.lists);
	return buf;
}

static void test_adopt_v3(void **state)
{
	(void)state;
	int before = count_open_fds();
	struct event_base *base = event_base_new();
	struct bouncer *b = bouncer_new(base, NULL);
	struct bouncer_item *it = NULL, *sess = NULL;
	int ours[2], peers[2];
	char err[256] = "";
	size_t len, off = 0, nitems = 0, soff = 0, slen = 0;
	uint8_t *buf = slurp(v3_path, &len);

	pairs(ours, peers);
	while (off + 4 <= len) {
		size_t n = (size_t)buf[off] << 24 | (size_t)buf[off + 1] << 16 |
			   (size_t)buf[off + 2] << 8 | buf[off + 3];
		assert_true(off + 4 + n <= len);
		Baton__State__Item *pi = baton__state__item__unpack(NULL, n, buf + off + 4);
		assert_non_null(pi);
		if (nitems == 0) {
			assert_int_equal(pi->n_member_lists, 2);
		} else {
			const Baton__State__Buffer *cb = buffer(pi, "#baton");
			assert_true(cb->has_stored_from && cb->has_stored_to);
			assert_int_equal(cb->stored_from, 100);
			assert_int_equal(cb->stored_to, 103);
			assert_int_equal(cb->n_lines, 4);
			assert_int_equal(cb->lines[2]->seq, 4);
			assert_int_equal(cb->lines[3]->seq, 105);
			const Baton__State__Buffer *qb = buffer(pi, "bob");
			assert_int_equal(qb->n_lines, 2);
			assert_int_equal(qb->stored_from, 104);
			assert_int_equal(qb->stored_to, 104);
			assert_int_equal(pi->session->next_seq, 106);
			soff = off + 4;
			slen = n;
		}
		baton__state__item__free_unpacked(pi, NULL);
		int rc = bouncer_item_adopt(b, buf + off + 4, n, nitems ? ours : NULL,
					    nitems ? 2 : 0, &it, err, sizeof(err));
		if (rc < 0)
			fail_msg("golden v3 item %zu rejected: %s", nitems, err);
		if (it)
			sess = it;
		off += 4 + n;
		nitems++;
	}
	assert_int_equal(off, len);
	assert_int_equal(nitems, 2);
	assert_non_null(sess);
	bouncer_chunk_end(b, true);

	/* what it remembers, and nothing read */
	struct backlog *bl = sess->session->backlog;
	uint64_t f, t;
	assert_int_equal(backlog_cold_range(bl, "#BATON", &f, &t), 1);
	assert_int_equal(f, 100);
	assert_int_equal(t, 103);
	assert_int_equal(backlog_nlines(bl), 6);
	assert_int_equal(backlog_next_seq(bl), 106);

	/* written again in schema 3 (no store here: the ranges stay): the
	 * same session item */
	uint8_t *out, *want;
	size_t olen, wlen;
	out = write_schema(sess, STATE_SCHEMA_STORE_POS, 0, &olen, NULL, NULL);
	assert_non_null(out);
	want = comparable(buf + soff, slen, &wlen);
	assert_int_equal(olen, wlen);
	assert_memory_equal(out, want, wlen);
	free(out);
	free(want);
	/* in schema 1 (no store to read the ranges from): the inline lines */
	out = write_schema(sess, STATE_SCHEMA_INLINE, 0, &olen, NULL, NULL);
	Baton__State__Item *pi = baton__state__item__unpack(NULL, olen, out);
	assert_int_equal(buffer(pi, "#baton")->n_lines, 4);
	assert_false(buffer(pi, "#baton")->has_stored_from);
	baton__state__item__free_unpacked(pi, NULL);
	free(out);
	free(buf);
	bouncer_item_arm(sess);
	bouncer_free(b);
	event_base_free(base);
	close(peers[0]);
	close(peers[1]);
	assert_int_equal(count_open_fds(), before);
}

static int generate(const char *path)
{
	struct event_base *base = event_base_new();
	struct bouncer *b = bouncer_new(base, NULL);
	struct bouncer_item *it = NULL;
	int ours[2], peers[2];
	char err[256];
	size_t len, slen, llen;
	uint8_t *v1 = sample_item_pack(&len), *sbuf, *lbuf;
	FILE *fp = fopen(path, "wb");

	pairs(ours, peers);
	if (!fp || bouncer_item_adopt(b, v1, len, ours, 2, &it, err, sizeof(err)) < 0)
		return 1;
	bouncer_chunk_end(b, true);
	struct backlog *bl = it->session->backlog;
	static const struct { uint64_t seq; const char *buf, *line; } add[] = {
		{ 100, "#baton", ":bob!b@host.example PRIVMSG #baton :stored 100" },
		{ 101, "#baton", ":carol!c@host.example PRIVMSG #baton :stored 101" },
		{ 102, "#baton", ":bob!b@host.example PRIVMSG #baton :stored 102" },
		{ 103, "#baton", ":bob!b@host.example PRIVMSG #baton :stored 103" },
		{ 104, "bob", ":bob!b@host.example PRIVMSG alice :stored 104" },
		{ 105, "#baton", ":bob!b@host.example PRIVMSG #baton :queued 105" },
	};
	for (size_t i = 0; i < sizeof(add) / sizeof(add[0]); i++)
		if (backlog_append_at(bl, add[i].buf, add[i].seq,
				      1767225600000 + (int64_t)add[i].seq, add[i].line) < 0)
			return 1;
	bouncer_item_freeze(it);
	sbuf = write_schema(it, STATE_SCHEMA_STORE_POS, DURABLE, &slen, &lbuf, &llen);
	if (!sbuf)
		return 1;
	for (int i = 0; i < 2; i++) {
		uint8_t *p = i == 0 ? lbuf : sbuf;
		size_t n = i == 0 ? llen : slen;
		uint8_t hdr[4] = { n >> 24, n >> 16, n >> 8, n };
		if (fwrite(hdr, 1, 4, fp) != 4 || fwrite(p, 1, n, fp) != n)
			return 1;
	}
	if (fclose(fp) != 0)
		return 1;
	close(peers[0]);
	close(peers[1]);
	printf("wrote %s\n", path);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--generate") == 0)
		return generate(argv[2]);
	if (argc != 2) {
		fprintf(stderr, "usage: %s GOLDEN_V3 | --generate PATH\n", argv[0]);
		return 2;
	}
	v3_path = argv[1];
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_adopt_v3),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
