/* tests/unit/sessiond/test_recovery.c: a custody restore's Recovery
 * (proto/state.proto; sessiond/checkpoint.h, supervisor/custody.h) applied
 * by state.c on adoption: the input after the dead worker's last read
 * replaces the recorded one, output it already wrote is never sent again
 * (cut from the recorded output, or only the rest of a cut line when it
 * wrote past it), a dropped connection's socket is closed, and a TLS
 * connection's recorded record layer replaces the session record's. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "state.pb-c.h"
#include "tls.pb-c.h"
#include "tls/record.h"

#include "sample_state.h"
#include "sessiond/bouncer.h"

struct rec {
	uint64_t written;
	const char *input, *head;
	bool drop;
};

/* The sample item with a Recovery for its two connections. */
static uint8_t *sample_recovered(const struct rec *r, size_t *len)
{
	size_t l;
	uint8_t *buf = sample_item_pack(&l);
	Baton__State__Item *item = baton__state__item__unpack(NULL, l, buf);
	Baton__State__Recovery rv = BATON__STATE__RECOVERY__INIT;
	Baton__State__ConnRecovery c[2] = { BATON__STATE__CONN_RECOVERY__INIT,
					    BATON__STATE__CONN_RECOVERY__INIT };
	Baton__State__ConnRecovery *cp[2] = { &c[0], &c[1] };

	assert_non_null(item);
	for (int i = 0; i < 2; i++) {
		if (r[i].written) {
			c[i].has_written = 1;
			c[i].written = r[i].written;
		}
		if (r[i].input) {
			c[i].has_input = 1;
			c[i].input.data = (uint8_t *)r[i].input;
			c[i].input.len = strlen(r[i].input);
		}
		if (r[i].head) {
			c[i].has_head = 1;
			c[i].head.data = (uint8_t *)r[i].head;
			c[i].head.len = strlen(r[i].head);
		}
		if (r[i].drop) {
			c[i].has_drop = 1;
			c[i].drop = 1;
		}
	}
	rv.n_conns = 2;
	rv.conns = cp;
	item->recovery = &rv;
	*len = baton__state__item__get_packed_size(item);
	uint8_t *out = malloc(*len);
	baton__state__item__pack(item, out);
	item->recovery = NULL; /* ours, on the stack */
	baton__state__item__free_unpacked(item, NULL);
	free(buf);
	return out;
}

/* Adopt, serialize again, return the unpacked result. */
static Baton__State__Item *adopt_round(struct bouncer *b, const struct rec *r,
				       int *peers, struct bouncer_item **it)
{
	int ours[2];
	char err[256] = "";
	size_t len, olen, nfds;
	uint8_t *buf = sample_recovered(r, &len), *out;
	const int *fds;

	make_pairs(ours, peers, 2);
	*it = NULL;
	if (bouncer_item_adopt(b, buf, len, ours, 2, it, err, sizeof(err)) < 0)
		fail_msg("adopt failed: %s", err);
	assert_int_equal(bouncer_item_serialize(*it, &out, &olen, &fds, &nfds), 0);
	Baton__State__Item *item = baton__state__item__unpack(NULL, olen, out);
	assert_non_null(item);
	free(out);
	free(buf);
	return item;
}

static void assert_bytes(const ProtobufCBinaryData *d, protobuf_c_boolean has,
			 const char *want)
{
	size_t n = strlen(want);

	if (n == 0) {
		assert_true(!has || d->len == 0);
		return;
	}
	assert_true(has);
	assert_int_equal(d->len, n);
	assert_memory_equal(d->data, want, n);
}

static const char up_out[] = "PRIVMSG #baton :queued but not written\r\n";
static const char cl_out[] =
	"@time=2025-11-27T08:00:05.000Z :bob!b@host.example NOTICE alice :ok\r\n";

static void test_written_within_output(void **state)
{
	struct fixture *f = *state;
	struct rec r[2] = { { .written = 8, .input = ":bob!b@h PRIVMSG #baton :new par" },
			    { .written = 31 } };
	int peers[2];
	struct bouncer_item *it;
	Baton__State__Item *item = adopt_round(f->b, r, peers, &it);
	const Baton__State__Connection *up = item->session->upstream;
	const Baton__State__Connection *cl = item->session->clients[0];

	/* the input of the last read replaces the recorded partial line */
	assert_bytes(&up->input, up->has_input, ":bob!b@h PRIVMSG #baton :new par");
	/* what was written after the record is not sent again */
	assert_bytes(&up->output, up->has_output, up_out + 8);
	assert_bytes(&cl->output, cl->has_output, cl_out + 31);
	baton__state__item__free_unpacked(item, NULL);
	bouncer_item_discard(it);
	close_all(peers, 2);
}

static void test_written_past_output(void **state)
{
	struct fixture *f = *state;
	/* the recorded output and more went out; the last write cut a line:
	 * only its rest follows */
	struct rec r[2] = { { .written = sizeof(up_out) - 1 },
			    { .written = sizeof(cl_out) - 1 + 40, .head = "he line\r\n" } };
	int peers[2];
	struct bouncer_item *it;
	Baton__State__Item *item = adopt_round(f->b, r, peers, &it);

	assert_bytes(&item->session->upstream->output, item->session->upstream->has_output, "");
	assert_bytes(&item->session->clients[0]->output, item->session->clients[0]->has_output,
		     "he line\r\n");
	baton__state__item__free_unpacked(item, NULL);
	bouncer_item_discard(it);
	close_all(peers, 2);
}

static void test_drop_closes_the_socket(void **state)
{
	struct fixture *f = *state;
	struct rec r[2] = { { 0 }, { .drop = true } };
	int peers[2];
	struct bouncer_item *it;
	Baton__State__Item *item = adopt_round(f->b, r, peers, &it);
	char c;

	/* the real client socket was closed by the adopter: its peer sees EOF */
	assert_int_equal(recv(peers[1], &c, 1, MSG_DONTWAIT), 0);
	/* the upstream's socket is still ours: nothing to read, no EOF */
	assert_int_equal(recv(peers[0], &c, 1, MSG_DONTWAIT), -1);
	assert_int_equal(errno, EAGAIN);
	baton__state__item__free_unpacked(item, NULL);
	bouncer_item_discard(it);
	close_all(peers, 2);
}

/* A TLS 1.3 record layer's saved state with these sequence numbers
 * (malloc'd contents: tls_record_state_free_contents()). */
static Baton__Tls__TlsState *tls_state(uint64_t rseq, uint64_t wseq)
{
	struct tls_record_params p;
	struct tls_record *t;
	Baton__Tls__TlsState *st = calloc(1, sizeof(*st));

	memset(&p, 0, sizeof(p));
	p.version = TLS_VERSION_1_3;
	p.cipher = TLS_CIPHER_AES_128_GCM;
	memset(p.read.secret, 1, 32);
	memset(p.write.secret, 2, 32);
	p.read.secret_len = p.write.secret_len = 32;
	p.read.seq = rseq;
	p.write.seq = wseq;
	t = tls_record_new(&p);
	assert_non_null(t);
	assert_non_null(st);
	assert_int_equal(tls_record_save_progress(t, st), 0);
	tls_record_free(t);
	return st;
}

/* Custody, TLS (checkpoint.h CKPT_TLS): the upstream's record layer in
 * the Recovery replaces the session record's (the sequence numbers moved
 * on after it); a Recovery layer for a connection the session record has
 * none for (plaintext there, or in its handshake) cannot be used: that
 * connection is closed. */
static void test_tls_layer_replaced(void **state)
{
	struct fixture *f = *state;
	size_t l, len, olen, nfds;
	uint8_t *buf = sample_item_pack(&l), *out;
	Baton__State__Item *item = baton__state__item__unpack(NULL, l, buf);
	Baton__State__Recovery rv = BATON__STATE__RECOVERY__INIT;
	Baton__State__ConnRecovery c[2] = { BATON__STATE__CONN_RECOVERY__INIT,
					    BATON__STATE__CONN_RECOVERY__INIT };
	Baton__State__ConnRecovery *cp[2] = { &c[0], &c[1] };
	Baton__Tls__TlsState *recorded = tls_state(3, 5), *moved = tls_state(40, 70),
			     *stray = tls_state(1, 1);
	Baton__State__Connection *up;
	int ours[2], peers[2];
	const int *fds;
	struct bouncer_item *it = NULL;
	char err[256] = "", ch;

	assert_non_null(item);
	up = item->session->upstream;
	up->tls = recorded;
	up->has_transport = 1;
	up->transport = 1;
	c[0].tls = moved;
	/* as the supervisor sends it: drop for releases without tls,
	 * tls_resume for this one (test_custody.c) */
	c[0].has_drop = c[0].drop = 1;
	c[0].has_tls_resume = c[0].tls_resume = 1;
	c[1].tls = stray; /* the client is plaintext in the record */
	rv.n_conns = 2;
	rv.conns = cp;
	item->recovery = &rv;
	len = baton__state__item__get_packed_size(item);
	out = malloc(len);
	baton__state__item__pack(item, out);
	item->recovery = NULL;
	up->tls = NULL;
	baton__state__item__free_unpacked(item, NULL);
	free(buf);
	make_pairs(ours, peers, 2);
	if (bouncer_item_adopt(f->b, out, len, ours, 2, &it, err, sizeof(err)) < 0)
		fail_msg("adopt failed: %s", err);
	free(out);
	assert_int_equal(bouncer_item_serialize(it, &out, &olen, &fds, &nfds), 0);
	item = baton__state__item__unpack(NULL, olen, out);
	assert_non_null(item);
	free(out);
	up = item->session->upstream;
	assert_non_null(up->tls);
	assert_int_equal(up->tls->read->seq, 40);
	assert_int_equal(up->tls->write->seq, 70);
	/* the client's socket was closed by the adopter: its peer sees EOF */
	assert_int_equal(recv(peers[1], &ch, 1, MSG_DONTWAIT), 0);
	baton__state__item__free_unpacked(item, NULL);
	bouncer_item_discard(it);
	close_all(peers, 2);
	for (Baton__Tls__TlsState **t = (Baton__Tls__TlsState *[]){ recorded, moved, stray, NULL };
	     *t; t++) {
		tls_record_state_free_contents(*t);
		free(*t);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_written_within_output, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_written_past_output, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_drop_closes_the_socket, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_tls_layer_replaced, fixture_setup, fixture_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
