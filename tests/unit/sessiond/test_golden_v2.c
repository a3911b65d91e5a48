/* tests/unit/sessiond/test_golden_v2.c: every build must import the state
 * written by schema v2 (tests/golden/state-v2.bin): the items of one chunk
 * as a schema-2 source writes them, an item of member lists first, then
 * the session that refers to them (the session of state-v1.bin).
 *
 * File format: each item prefixed by its length (4 bytes, big-endian).
 *
 *   test_sessiond_golden_v2 V2 V1        adopt V2, compare with V1
 *   test_sessiond_golden_v2 --generate V2  (re)write V2 (from sample_state.c,
 *                                          adopted and re-written in
 *                                          schema 2; a released golden file
 *                                          never changes)
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
#include "sessiond/bouncer.h"
#include "sessiond/state.h"

static const char *v2_path, *v1_path;

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
		assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
		ours[i] = sv[0];
		peers[i] = sv[1];
	}
}

/* v1 without the informational addresses (recomputed from the sockets). */
static uint8_t *v1_comparable(size_t *len)
{
	size_t glen;
	uint8_t *golden = slurp(v1_path, &glen);
	Baton__State__Item *g = baton__state__item__unpack(NULL, glen, golden);
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
	free(golden);
	return out;
}

static void test_adopt_v2(void **state)
{
	int before = count_open_fds();
	struct event_base *base = event_base_new();
	struct bouncer *b = bouncer_new(base, NULL);
	struct bouncer_item *it = NULL, *sess = NULL;
	int ours[2], peers[2];
	char err[256] = "";
	size_t len, off = 0, nitems = 0;
	uint8_t *buf = slurp(v2_path, &len);

	pairs(ours, peers);
	while (off + 4 <= len) {
		size_t n = (size_t)buf[off] << 24 | (size_t)buf[off + 1] << 16 |
			   (size_t)buf[off + 2] << 8 | buf[off + 3];
		assert_true(off + 4 + n <= len);
		Baton__State__Item *pi = baton__state__item__unpack(NULL, n, buf + off + 4);
		assert_non_null(pi);
		/* item 0: the lists (2 channels), item 1: the session */
		if (nitems == 0) {
			assert_int_equal(pi->n_member_lists, 2);
			assert_null(pi->session);
		} else {
			assert_non_null(pi->session);
			for (size_t i = 0; i < pi->session->n_channels; i++) {
				assert_true(pi->session->channels[i]->members_shared);
				assert_int_equal(pi->session->channels[i]->n_members, 0);
			}
		}
		baton__state__item__free_unpacked(pi, NULL);
		int rc = bouncer_item_adopt(b, buf + off + 4, n, nitems ? ours : NULL,
					    nitems ? 2 : 0, &it, err, sizeof(err));
		if (rc < 0)
			fail_msg("golden v2 item %zu rejected: %s", nitems, err);
		if (it)
			sess = it;
		off += 4 + n;
		nitems++;
	}
	assert_int_equal(off, len);
	assert_int_equal(nitems, 2);
	assert_non_null(sess);
	bouncer_chunk_end(b, true); /* the chunk commits (arming would queue a PING) */

	/* The same session as v1's, member lists included. */
	uint8_t *out, *want;
	size_t olen, wlen, nfds;
	const int *fds;
	assert_int_equal(bouncer_item_serialize(sess, &out, &olen, &fds, &nfds), 0);
	want = v1_comparable(&wlen);
	assert_int_equal(olen, wlen);
	assert_memory_equal(out, want, wlen);
	free(out);
	free(want);
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
	struct bouncer_pack pk = { .schema = STATE_SCHEMA_SHARED };
	int ours[2], peers[2];
	char err[256];
	size_t len, slen, nlists, nl, nfds;
	uint8_t *v1 = sample_item_pack(&len), *sbuf, **lb;
	size_t *ll;
	void **lists;
	const int *fds;
	FILE *fp = fopen(path, "wb");

	for (int i = 0; i < 2; i++) {
		int sv[2];
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
			return 1;
		ours[i] = sv[0];
		peers[i] = sv[1];
	}
	if (!fp || bouncer_item_adopt(b, v1, len, ours, 2, &it, err, sizeof(err)) < 0)
		return 1;
	bouncer_chunk_end(b, true);
	bouncer_pack_chunk_begin(&pk);
	if (bouncer_item_serialize_within(it, 1 << 24, &sbuf, &slen, &fds, &nfds, &pk,
					  &lists, &nlists) < 0 ||
	    bouncer_pack_add_lists(&pk, lists, nlists) < 0 ||
	    bouncer_pack_lists(&pk, 1 << 24, &lb, &ll, &nl) < 0 || nl != 1)
		return 1;
	for (size_t i = 0; i <= nl; i++) {
		uint8_t *p = i < nl ? lb[i] : sbuf;
		size_t n = i < nl ? ll[i] : slen;
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
	if (argc != 3) {
		fprintf(stderr, "usage: %s GOLDEN_V2 GOLDEN_V1 | --generate PATH\n", argv[0]);
		return 2;
	}
	v2_path = argv[1];
	v1_path = argv[2];
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_adopt_v2),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
