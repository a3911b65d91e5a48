/* tests/unit/tls/test_record.c: tls/record.c.
 *
 * - RFC 8448 section 3 application records, both ways: decrypt them (with
 *   the NewSessionTicket and close_notify around them) and produce them
 *   byte for byte.
 * - Round trips through save/pack/unpack/load at random points of random
 *   streams in both directions, for every version x cipher, across
 *   automatic KeyUpdates, with exact plaintext and exact
 *   tls_record_plain_covered accounting.
 * - Post-handshake messages: KeyUpdate with update_requested (split over
 *   records, state saved in between), NewSessionTicket spanning records,
 *   HelloRequest in TLS 1.2.
 * - Custody (sessiond/checkpoint.h CKPT_TLS): a layer loaded from the
 *   progress recorded after its last read or write, in place of one that
 *   "died" (having maybe encrypted more), goes on with a peer that never
 *   restarted, exactly once both ways; a stale progress is refused by the
 *   peer.
 * - Malformed input ends the connection with the right alert, read back by
 *   the peer's own layer ("peer alert: ...").
 *
 * Records the peer "sends" here are sealed by an independent encoder
 * written in this file with plain EVP calls (it reproduces RFC 8448's
 * records, so it is checked too). Random choices come from a fixed seed
 * printed with every failure.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dlfcn.h>

#include <openssl/evp.h>

#include "tls/kdf.h"
#include "tls/record.h"
#include "tls.pb-c.h"

static uint64_t rng_state;

static uint64_t rnd(void)
{
	/* xorshift64* */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ull;
}

static size_t rnd_below(size_t n)
{
	return n ? (size_t)(rnd() % n) : 0;
}

static size_t unhex(const char *s, uint8_t *out, size_t max)
{
	size_t n = 0;
	int hi = -1;

	for (; *s; s++) {
		int v;

		if (*s == ' ' || *s == '\n')
			continue;
		v = (*s >= '0' && *s <= '9') ? *s - '0' : *s - 'a' + 10;
		if (hi < 0) {
			hi = v;
		} else {
			assert_true(n < max);
			out[n++] = (uint8_t)(hi << 4 | v);
			hi = -1;
		}
	}
	return n;
}

static const uint16_t versions[] = { TLS_VERSION_1_3, TLS_VERSION_1_2 };
static const enum tls_cipher ciphers[] = {
	TLS_CIPHER_AES_128_GCM, TLS_CIPHER_AES_256_GCM,
	TLS_CIPHER_CHACHA20_POLY1305,
};

/* --- an independent record sealer (the test's "peer") ----------------- */

struct sealer {
	uint16_t version;
	enum tls_cipher cipher;
	uint8_t secret[48];
	size_t secret_len;
	uint8_t key[32], iv[12];
	uint64_t seq, explicit_nonce;
};

static const EVP_CIPHER *evp_of(enum tls_cipher c)
{
	return c == TLS_CIPHER_AES_128_GCM ? EVP_aes_128_gcm()
	     : c == TLS_CIPHER_AES_256_GCM ? EVP_aes_256_gcm()
					   : EVP_chacha20_poly1305();
}

static void sealer_init(struct sealer *s, uint16_t version, enum tls_cipher c,
			const struct tls_direction *d, uint64_t explicit_nonce)
{
	memset(s, 0, sizeof(*s));
	s->version = version;
	s->cipher = c;
	s->seq = d->seq;
	s->explicit_nonce = explicit_nonce;
	memcpy(s->key, d->key, sizeof(s->key));
	memcpy(s->iv, d->iv, sizeof(s->iv));
	if (version == TLS_VERSION_1_3) {
		memcpy(s->secret, d->secret, d->secret_len);
		s->secret_len = d->secret_len;
		assert_int_equal(tls13_traffic_key_iv(c, s->secret, s->secret_len,
						      s->key, s->iv), 0);
	}
}

static void sealer_key_update(struct sealer *s)
{
	assert_int_equal(tls13_next_traffic_secret(s->cipher, s->secret,
						   s->secret_len), 0);
	assert_int_equal(tls13_traffic_key_iv(s->cipher, s->secret,
					      s->secret_len, s->key, s->iv), 0);
	s->seq = 0;
}

/* One record into out (returns its length). TLS 1.3: outer type 23,
 * inner plaintext data || inner_type || pad zeros (inner_type < 0: none).
 * TLS 1.2: outer type = type. */
static size_t seal(struct sealer *s, int type, const void *data, size_t len,
		   size_t pad, uint8_t *out)
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	bool v13 = s->version == TLS_VERSION_1_3;
	bool gcm = !v13 && s->cipher != TLS_CIPHER_CHACHA20_POLY1305;
	uint8_t nonce[12], aad[13], inner[20000], *p;
	size_t ilen = 0, body;
	int n;

	assert_non_null(ctx);
	if (len)
		memcpy(inner, data, len);
	ilen = len;
	if (v13) {
		if (type >= 0)
			inner[ilen++] = (uint8_t)type;
		memset(inner + ilen, 0, pad);
		ilen += pad;
	}
	body = ilen + 16 + (gcm ? 8 : 0);
	out[0] = v13 ? 23 : (uint8_t)type;
	out[1] = 3;
	out[2] = 3;
	out[3] = (uint8_t)(body >> 8);
	out[4] = (uint8_t)body;
	p = out + 5;
	if (gcm) {
		memcpy(nonce, s->iv, 4);
		for (int i = 0; i < 8; i++)
			p[i] = nonce[4 + i] = (uint8_t)(s->explicit_nonce >> (56 - 8 * i));
		p += 8;
		s->explicit_nonce++;
	} else {
		memcpy(nonce, s->iv, 12);
		for (int i = 0; i < 8; i++)
			nonce[4 + i] ^= (uint8_t)(s->seq >> (56 - 8 * i));
	}
	if (v13) {
		memcpy(aad, out, 5);
	} else {
		for (int i = 0; i < 8; i++)
			aad[i] = (uint8_t)(s->seq >> (56 - 8 * i));
		aad[8] = (uint8_t)type;
		aad[9] = aad[10] = 3;
		aad[11] = (uint8_t)(ilen >> 8);
		aad[12] = (uint8_t)ilen;
	}
	assert_true(EVP_EncryptInit_ex(ctx, evp_of(s->cipher), NULL, s->key, nonce) > 0);
	assert_true(EVP_EncryptUpdate(ctx, NULL, &n, aad, v13 ? 5 : 13) > 0);
	assert_true(EVP_EncryptUpdate(ctx, p, &n, inner, (int)ilen) > 0);
	assert_true(EVP_EncryptFinal_ex(ctx, p + n, &n) > 0);
	assert_true(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, 16, p + ilen) > 0);
	EVP_CIPHER_CTX_free(ctx);
	s->seq++;
	return 5 + body;
}

/* --- pairs of layers ------------------------------------------------- */

/* Keys for both directions: c2s is what the client writes. */
static void random_params(uint16_t version, enum tls_cipher c,
			  struct tls_record_params *client,
			  struct tls_record_params *server)
{
	struct tls_direction c2s, s2c;
	size_t hlen = tls13_cipher_hash_len(c);

	memset(&c2s, 0, sizeof(c2s));
	memset(&s2c, 0, sizeof(s2c));
	if (version == TLS_VERSION_1_3) {
		for (size_t i = 0; i < hlen; i++) {
			c2s.secret[i] = (uint8_t)rnd();
			s2c.secret[i] = (uint8_t)rnd();
		}
		c2s.secret_len = s2c.secret_len = hlen;
	} else {
		for (size_t i = 0; i < 32; i++) {
			c2s.key[i] = (uint8_t)rnd();
			s2c.key[i] = (uint8_t)rnd();
		}
		for (size_t i = 0; i < 12; i++) {
			c2s.iv[i] = (uint8_t)rnd();
			s2c.iv[i] = (uint8_t)rnd();
		}
		if (c != TLS_CIPHER_CHACHA20_POLY1305) {
			/* the 4-byte salt only */
			memset(c2s.iv + 4, 0, 8);
			memset(s2c.iv + 4, 0, 8);
		}
		c2s.seq = s2c.seq = 1; /* Finished was record 0 */
	}
	memset(client, 0, sizeof(*client));
	memset(server, 0, sizeof(*server));
	client->version = server->version = version;
	client->cipher = server->cipher = c;
	server->is_server = true;
	client->write = server->read = c2s;
	client->read = server->write = s2c;
	client->write_explicit_nonce = rnd();
	server->write_explicit_nonce = rnd();
}

/* Save, pack, unpack, load: what a migration does to the layer. */
static struct tls_record *migrate(struct tls_record *t)
{
	Baton__Tls__TlsState st = BATON__TLS__TLS_STATE__INIT, *un;
	struct tls_record *n;
	const char *err = NULL;
	uint8_t *buf;
	size_t len;

	assert_int_equal(tls_record_save(t, &st), 0);
	len = baton__tls__tls_state__get_packed_size(&st);
	buf = malloc(len + 1);
	assert_non_null(buf);
	assert_int_equal(baton__tls__tls_state__pack(&st, buf), len);
	tls_record_state_free_contents(&st);
	tls_record_free(t);
	un = baton__tls__tls_state__unpack(NULL, len, buf);
	assert_non_null(un);
	n = tls_record_load(un, &err);
	if (!n)
		fail_msg("load: %s", err);
	baton__tls__tls_state__free_unpacked(un, NULL);
	free(buf);
	return n;
}

/* Move up to max bytes of from's output into to. */
static enum tls_record_status transfer(struct tls_record *from,
				       struct tls_record *to, size_t max,
				       size_t *moved)
{
	size_t len;
	const uint8_t *p = tls_record_output(from, &len);
	enum tls_record_status st;

	if (len > max)
		len = max;
	st = tls_record_feed(to, p, len);
	tls_record_consume_output(from, len);
	if (moved)
		*moved = len;
	return st;
}

static uint8_t stream_byte(int dir, uint64_t i)
{
	return (uint8_t)((i * 131 + (uint64_t)dir * 77 + (i >> 9) * 17) ^ (i >> 17));
}

/* --- RFC 8448 -------------------------------------------------------- */

static const char rfc_c_ap[] =
	"9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5";
static const char rfc_s_ap[] =
	"a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643";
/* {server} NewSessionTicket (server application key, seq 0) */
static const char rfc_s_nst[] =
	"17030300de3a6b8f90414a97d6959c3487680de5134a2b240e6cffac116e95d41d6a"
	"f8f6b580dcf3d11d63c758db289a015940252f55713e061dc13e078891a38efbcf5753"
	"ad8ef170ad3c7353d16d9da773b9ca7f2b9fa1b6c0d4a3d03f75e09c30ba1e62972ac4"
	"6f75f7b981be63439b2999ce13064615139891d5e4c5b406f16e3fc181a77ca4758400"
	"25db2f0a77f81b5ab05b94c01346755f69232c86519d86cbeeac87aac347d143f9605d"
	"64f650db4d023e70e952ca49fe5137121c74bc2697687e248746d6df353005f3bce186"
	"96129c8153556b3b6c6779b37bf15985684f";
/* {client} application data 00..31 (client key, seq 0) */
static const char rfc_c_app[] =
	"1703030043a23f7054b62c94d0affafe8228ba55cbefacea42f914aa66bcab3f2b98"
	"19a8a5b46b395bd54a9a20441e2b62974e1f5a6292a2977014bd1e3deae63aeebb2169"
	"4915e4";
/* {server} the same 50 bytes (server key, seq 1) */
static const char rfc_s_app[] =
	"17030300432e937e11ef4ac740e538ad36005fc4a46932fc3225d05f82aa1b36e30e"
	"faf97d90e6dffc602dcb501a59a8fcc49c4bf2e5f0a21c0047c2abf332540dd032e167"
	"c2955d";
/* close_notify: client seq 1, server seq 2 */
static const char rfc_c_alert[] = "1703030013c9872760655666b74d7ff1153efd6db6d0b0e3";
static const char rfc_s_alert[] = "1703030013b58fd67166ebf599d24720cfbe7efa7a8864a9";

static struct tls_record *rfc_layer(bool server, uint64_t write_seq)
{
	struct tls_record_params p;
	struct tls_record *t;

	memset(&p, 0, sizeof(p));
	p.version = TLS_VERSION_1_3;
	p.cipher = TLS_CIPHER_AES_128_GCM;
	p.is_server = server;
	unhex(server ? rfc_s_ap : rfc_c_ap, p.write.secret, 32);
	unhex(server ? rfc_c_ap : rfc_s_ap, p.read.secret, 32);
	p.read.secret_len = p.write.secret_len = 32;
	p.write.seq = write_seq;
	t = tls_record_new(&p);
	assert_non_null(t);
	return t;
}

static void assert_output_hex(struct tls_record *t, const char *want)
{
	uint8_t w[512];
	size_t n = unhex(want, w, sizeof(w)), len;
	const uint8_t *out = tls_record_output(t, &len);

	assert_int_equal(len, n);
	assert_memory_equal(out, w, n);
	tls_record_consume_output(t, len);
}

static void test_rfc8448(void **state)
{
	uint8_t payload[50], rec[512];
	struct tls_record *client = rfc_layer(false, 0);
	struct tls_record *server = rfc_layer(true, 1); /* NST took seq 0 */
	struct sealer s;
	struct tls_direction d;
	const uint8_t *pt;
	size_t n, len;

	for (int i = 0; i < 50; i++)
		payload[i] = (uint8_t)i;

	/* encryption: byte-identical records */
	assert_int_equal(tls_record_write(client, payload, 50), TLS_RECORD_OK);
	assert_output_hex(client, rfc_c_app);
	assert_int_equal(tls_record_write(server, payload, 50), TLS_RECORD_OK);
	assert_output_hex(server, rfc_s_app);
	tls_record_close(client);
	assert_output_hex(client, rfc_c_alert);
	tls_record_close(server);
	assert_output_hex(server, rfc_s_alert);
	assert_int_equal(tls_record_write(client, "x", 1), TLS_RECORD_ERROR);

	/* the test's own sealer agrees */
	memset(&d, 0, sizeof(d));
	unhex(rfc_c_ap, d.secret, 32);
	d.secret_len = 32;
	sealer_init(&s, TLS_VERSION_1_3, TLS_CIPHER_AES_128_GCM, &d, 0);
	n = seal(&s, 23, payload, 50, 0, rec);
	{
		uint8_t w[100];

		assert_int_equal(unhex(rfc_c_app, w, sizeof(w)), n);
		assert_memory_equal(rec, w, n);
	}

	/* decryption: the client reads the server's flight after the
	 * handshake (NewSessionTicket ignored, data, close_notify), one byte
	 * at a time */
	tls_record_free(client);
	client = rfc_layer(false, 0);
	n = unhex(rfc_s_nst, rec, sizeof(rec));
	assert_int_equal(n, 5 + 0xde);
	n += unhex(rfc_s_app, rec + n, sizeof(rec) - n);
	n += unhex(rfc_s_alert, rec + n, sizeof(rec) - n);
	for (size_t i = 0; i + 1 < n; i++)
		assert_int_equal(tls_record_feed(client, rec + i, 1), TLS_RECORD_OK);
	assert_int_equal(tls_record_feed(client, rec + n - 1, 1), TLS_RECORD_CLOSED);
	assert_true(tls_record_peer_closed(client));
	pt = tls_record_plaintext(client, &len);
	assert_int_equal(len, 50);
	assert_memory_equal(pt, payload, 50);

	/* the server reads the client's data and close_notify in one go */
	tls_record_free(server);
	server = rfc_layer(true, 1);
	n = unhex(rfc_c_app, rec, sizeof(rec));
	n += unhex(rfc_c_alert, rec + n, sizeof(rec) - n);
	assert_int_equal(tls_record_feed(server, rec, n), TLS_RECORD_CLOSED);
	pt = tls_record_plaintext(server, &len);
	assert_int_equal(len, 50);
	assert_memory_equal(pt, payload, 50);
	/* more input after close_notify is ignored */
	assert_int_equal(tls_record_feed(server, "junk", 4), TLS_RECORD_CLOSED);
	assert_null(tls_record_error(server));

	tls_record_free(client);
	tls_record_free(server);
}

/* --- random streams through migrations --------------------------------- */

struct side {
	struct tls_record *t;
	uint64_t written;   /* plain bytes written by this side */
	uint64_t received;  /* plain bytes consumed and checked */
	uint64_t fed;       /* ciphertext of the peer fed to this side */
};

static void check_plain(struct side *s, int dir, size_t take, uint64_t seed)
{
	size_t len;
	const uint8_t *p = tls_record_plaintext(s->t, &len);

	if (take > len)
		take = len;
	for (size_t i = 0; i < take; i++)
		if (p[i] != stream_byte(dir, s->received + i))
			fail_msg("seed %" PRIu64 ": byte %" PRIu64 " wrong",
				 seed, s->received + i);
	tls_record_consume_plaintext(s->t, take);
	s->received += take;
}

static void run_stream(uint16_t version, enum tls_cipher c, uint64_t seed,
		       int iterations)
{
	static uint8_t buf[40000];
	struct tls_record_params pc, ps;
	struct side sd[2];
	uint64_t rekey = 3 + seed % 5;

	rng_state = seed;
	random_params(version, c, &pc, &ps);
	memset(sd, 0, sizeof(sd));
	sd[0].t = tls_record_new(&pc);
	sd[1].t = tls_record_new(&ps);
	assert_non_null(sd[0].t);
	assert_non_null(sd[1].t);
	for (int k = 0; k < 2; k++)
		tls_record_set_rekey_after(sd[k].t, rekey);

	for (int it = 0; it < iterations; it++) {
		int k = (int)(rnd() & 1); /* acting side; peer = !k */
		struct side *me = &sd[k], *peer = &sd[!k];
		size_t r = rnd_below(100), n, moved, avail;
		enum tls_record_status st;

		if (r < 30) {
			n = rnd_below(8) == 0 ? rnd_below(sizeof(buf))
					      : rnd_below(300);
			for (size_t i = 0; i < n; i++)
				buf[i] = stream_byte(k, me->written + i);
			assert_int_equal(tls_record_write(me->t, buf, n),
					 TLS_RECORD_OK);
			me->written += n;
		} else if (r < 65) {
			/* me -> peer, a random split */
			st = transfer(me->t, peer->t, 1 + rnd_below(rnd_below(4) ? 200 : 40000),
				      &moved);
			if (st != TLS_RECORD_OK)
				fail_msg("seed %" PRIu64 " it %d: feed: %s", seed,
					 it, tls_record_error(peer->t));
			peer->fed += moved;
			/* everything in complete records up to there was
			 * decrypted by the peer: exactly what covered says */
			tls_record_plaintext(peer->t, &avail);
			if (tls_record_plain_covered(me->t, peer->fed) !=
			    peer->received + avail)
				fail_msg("seed %" PRIu64 " it %d: covered %" PRIu64
					 " != delivered %" PRIu64, seed, it,
					 tls_record_plain_covered(me->t, peer->fed),
					 peer->received + avail);
		} else if (r < 85) {
			check_plain(me, !k, rnd_below(20000), seed);
		} else {
			me->t = migrate(me->t);
			tls_record_set_rekey_after(me->t, rekey);
		}
	}
	/* drain both ways */
	for (int k = 0; k < 2; k++) {
		size_t avail;

		assert_int_equal(transfer(sd[k].t, sd[!k].t, SIZE_MAX, NULL),
				 TLS_RECORD_OK);
		check_plain(&sd[!k], k, SIZE_MAX, seed);
		tls_record_plaintext(sd[!k].t, &avail);
		assert_int_equal(avail, 0);
		if (sd[!k].received != sd[k].written)
			fail_msg("seed %" PRIu64 ": received %" PRIu64
				 " of %" PRIu64, seed, sd[!k].received,
				 sd[k].written);
		assert_int_equal(tls_record_plain_total(sd[k].t), sd[k].written);
	}
	for (int k = 0; k < 2; k++) {
		assert_null(tls_record_error(sd[k].t));
		tls_record_free(sd[k].t);
	}
}

static void test_stream_migrations(void **state)
{
	uint64_t seed = 0x5eed0001;

	for (size_t v = 0; v < 2; v++)
		for (size_t c = 0; c < 3; c++) {
			print_message("version %04x %s seed %" PRIu64 "\n",
				      versions[v], tls_cipher_name(ciphers[c]), seed);
			run_stream(versions[v], ciphers[c], seed, 2500);
			seed++;
		}
}

/* --- post-handshake messages ------------------------------------------ */

struct victim {
	struct tls_record *v;      /* layer under test (server role unless
				      victim_init_as says client) */
	struct tls_record *mirror; /* reads what v writes */
	struct sealer peer;        /* writes what v reads */
	struct tls_record_params pc, ps;
};

static void victim_init_as(struct victim *x, uint16_t version,
			   enum tls_cipher c, bool server)
{
	struct tls_record_params *mine, *theirs;

	random_params(version, c, &x->pc, &x->ps);
	mine = server ? &x->ps : &x->pc;
	theirs = server ? &x->pc : &x->ps;
	x->v = tls_record_new(mine);
	/* the mirror is the other role, minus its write side (the sealer) */
	x->mirror = tls_record_new(theirs);
	assert_non_null(x->v);
	assert_non_null(x->mirror);
	sealer_init(&x->peer, version, c, &theirs->write,
		    theirs->write_explicit_nonce);
}

static void victim_init(struct victim *x, uint16_t version, enum tls_cipher c)
{
	victim_init_as(x, version, c, true);
}

static void victim_free(struct victim *x)
{
	tls_record_free(x->v);
	tls_record_free(x->mirror);
}

static void expect_plain(struct tls_record *t, const char *want)
{
	size_t len;
	const uint8_t *p = tls_record_plaintext(t, &len);

	assert_int_equal(len, strlen(want));
	assert_memory_equal(p, want, len);
	tls_record_consume_plaintext(t, len);
}

/* KeyUpdate(update_requested) split over two records with a migration
 * between them: v updates its read key, answers with its own KeyUpdate and
 * writes under the new key; all of it readable by the mirror. */
static void test_key_update_requested(void **state)
{
	rng_state = 42;
	for (size_t c = 0; c < 3; c++) {
		struct victim x;
		uint8_t rec[256];
		const uint8_t ku1[] = { 24, 0, 0 }, ku2[] = { 1, 1 };
		size_t n;

		/* a client: it is sent a NewSessionTicket below */
		victim_init_as(&x, TLS_VERSION_1_3, ciphers[c], false);
		n = seal(&x.peer, 22, ku1, 3, 0, rec);
		assert_int_equal(tls_record_feed(x.v, rec, n), TLS_RECORD_OK);
		x.v = migrate(x.v); /* partial handshake message saved */
		n = seal(&x.peer, 22, ku2, 2, 7, rec); /* padded, too */
		assert_int_equal(tls_record_feed(x.v, rec, n), TLS_RECORD_OK);
		sealer_key_update(&x.peer);
		n = seal(&x.peer, 23, "after", 5, 0, rec);
		assert_int_equal(tls_record_feed(x.v, rec, n), TLS_RECORD_OK);
		expect_plain(x.v, "after");
		/* v answered: its KeyUpdate, then data under the new key */
		assert_int_equal(tls_record_write(x.v, "hello", 5), TLS_RECORD_OK);
		x.v = migrate(x.v);
		assert_int_equal(tls_record_write(x.v, "again", 5), TLS_RECORD_OK);
		assert_int_equal(transfer(x.v, x.mirror, SIZE_MAX, NULL), TLS_RECORD_OK);
		expect_plain(x.mirror, "helloagain");

		/* several KeyUpdates and a NewSessionTicket in one record,
		 * KeyUpdate last: allowed; only one answer written by v...
		 * (each update_not_requested just moves the read key) */
		{
			uint8_t hs[64];
			size_t h = 0;

			hs[h++] = 4; hs[h++] = 0; hs[h++] = 0; hs[h++] = 3;
			hs[h++] = 1; hs[h++] = 2; hs[h++] = 3;
			hs[h++] = 24; hs[h++] = 0; hs[h++] = 0; hs[h++] = 1; hs[h++] = 0;
			n = seal(&x.peer, 22, hs, h, 0, rec);
			assert_int_equal(tls_record_feed(x.v, rec, n), TLS_RECORD_OK);
			sealer_key_update(&x.peer);
			n = seal(&x.peer, 23, "k", 1, 0, rec);
			assert_int_equal(tls_record_feed(x.v, rec, n), TLS_RECORD_OK);
			expect_plain(x.v, "k");
			tls_record_output(x.v, &n);
			assert_int_equal(n, 0); /* not requested: no answer */
		}
		victim_free(&x);
	}
}

/* A NewSessionTicket spanning three records, migrated between each: the
 * partial message travels in the state; it is ignored. */
static void test_ticket_spanning_records(void **state)
{
	rng_state = 43;
	for (size_t c = 0; c < 3; c++) {
		struct victim x;
		uint8_t nst[300], rec[512];
		size_t n;

		victim_init_as(&x, TLS_VERSION_1_3, ciphers[c], false);
		nst[0] = 4;
		nst[1] = 0;
		nst[2] = (uint8_t)((sizeof(nst) - 4) >> 8);
		nst[3] = (uint8_t)(sizeof(nst) - 4);
		for (size_t i = 4; i < sizeof(nst); i++)
			nst[i] = (uint8_t)i;
		n = seal(&x.peer, 22, nst, 2, 0, rec);
		assert_int_equal(tls_record_feed(x.v, rec, n), TLS_RECORD_OK);
		x.v = migrate(x.v);
		n = seal(&x.peer, 22, nst + 2, 100, 0, rec);
		assert_int_equal(tls_record_feed(x.v, rec, n), TLS_RECORD_OK);
		x.v = migrate(x.v);
		n = seal(&x.peer, 22, nst + 102, sizeof(nst) - 102, 0, rec);
		n += seal(&x.peer, 23, "data", 4, 0, rec + n);
		assert_int_equal(tls_record_feed(x.v, rec, n), TLS_RECORD_OK);
		expect_plain(x.v, "data");
		victim_free(&x);
	}
}

/* TLS 1.2 HelloRequest at a client: refused with a no_renegotiation
 * warning, the connection goes on. */
static void test_hello_request(void **state)
{
	rng_state = 44;
	for (size_t c = 0; c < 3; c++) {
		struct victim x;
		const uint8_t hr[4] = { 0, 0, 0, 0 };
		uint8_t rec[256];
		size_t n;

		victim_init_as(&x, TLS_VERSION_1_2, ciphers[c], false);
		n = seal(&x.peer, 22, hr, 4, 0, rec);
		n += seal(&x.peer, 23, "go", 2, 0, rec + n);
		assert_int_equal(tls_record_feed(x.v, rec, n), TLS_RECORD_OK);
		expect_plain(x.v, "go");
		tls_record_output(x.v, &n);
		assert_int_equal(n, 5 + 8 * (ciphers[c] != TLS_CIPHER_CHACHA20_POLY1305) + 2 + 16);
		/* the mirror reads the warning and carries on */
		assert_int_equal(tls_record_write(x.v, "on", 2), TLS_RECORD_OK);
		assert_int_equal(transfer(x.v, x.mirror, SIZE_MAX, NULL), TLS_RECORD_OK);
		expect_plain(x.mirror, "on");
		victim_free(&x);
	}
}

/* --- floods of records without application data ------------------------ */

/* Record sizes (TLS 1.3, or TLS 1.2 with an explicit nonce if gcm). */
#define KU_REC (5 + 4 + 1 + 1 + 16)

static size_t alert_rec_len(const struct victim *x)
{
	bool v13 = x->peer.version == TLS_VERSION_1_3;
	bool gcm = !v13 && x->peer.cipher != TLS_CIPHER_CHACHA20_POLY1305;

	return 5 + (gcm ? 8 : 0) + 2 + (v13 ? 1 : 0) + 16;
}

/* v is dead with `error`, and the mirror reads unexpected_message. */
static void expect_flood_death(struct victim *x, enum tls_record_status st,
			       const char *error)
{
	assert_int_equal(st, TLS_RECORD_ERROR);
	assert_true(tls_record_is_dead(x->v));
	assert_string_equal(tls_record_error(x->v), error);
	assert_int_equal(transfer(x->v, x->mirror, SIZE_MAX, NULL),
			 TLS_RECORD_ERROR);
	assert_string_equal(tls_record_error(x->mirror),
			    "peer alert: unexpected message");
}

/* n sealed KeyUpdates (the peer's key moves after each) into out. */
static size_t seal_key_updates(struct sealer *s, int n, uint8_t req,
			       uint8_t *out)
{
	const uint8_t ku[] = { 24, 0, 0, 1, req };
	size_t len = 0;

	for (int i = 0; i < n; i++) {
		len += seal(s, 22, ku, sizeof(ku), 0, out + len);
		sealer_key_update(s);
	}
	return len;
}

/* KeyUpdate(update_requested) floods: one answer per feed call, however
 * many requests; more than 32 in a row without data is fatal. */
static void test_key_update_flood(void **state)
{
	static uint8_t in[1000 * 64];
	const uint8_t ku[] = { 24, 0, 0, 1, 1 };

	rng_state = 52;
	for (size_t c = 0; c < 3; c++) {
		struct victim x;
		size_t n, len;
		char want[1001];

		/* 1000 requests in one feed, each followed by data */
		victim_init(&x, TLS_VERSION_1_3, ciphers[c]);
		n = 0;
		for (int i = 0; i < 1000; i++) {
			n += seal(&x.peer, 22, ku, sizeof(ku), 0, in + n);
			sealer_key_update(&x.peer);
			n += seal(&x.peer, 23, "x", 1, 0, in + n);
		}
		assert_int_equal(tls_record_feed(x.v, in, n), TLS_RECORD_OK);
		memset(want, 'x', 1000);
		want[1000] = 0;
		expect_plain(x.v, want);
		tls_record_output(x.v, &len);
		assert_int_equal(len, KU_REC); /* exactly one KeyUpdate */
		/* the mirror follows it and reads our next data */
		assert_int_equal(tls_record_write(x.v, "next", 4), TLS_RECORD_OK);
		assert_int_equal(transfer(x.v, x.mirror, SIZE_MAX, NULL),
				 TLS_RECORD_OK);
		expect_plain(x.mirror, "next");

		/* 32 in a row, then data: fine, twice (data resets the count),
		 * the second time across a migration */
		for (int round = 0; round < 2; round++) {
			n = seal_key_updates(&x.peer, 32, 1, in);
			n += seal(&x.peer, 23, "d", 1, 0, in + n);
			assert_int_equal(tls_record_feed(x.v, in, n), TLS_RECORD_OK);
			expect_plain(x.v, "d");
			tls_record_output(x.v, &len);
			assert_int_equal(len, KU_REC);
			assert_int_equal(tls_record_write(x.v, "r", 1), TLS_RECORD_OK);
			assert_int_equal(transfer(x.v, x.mirror, SIZE_MAX, NULL),
					 TLS_RECORD_OK);
			expect_plain(x.mirror, "r");
			x.v = migrate(x.v);
		}

		/* 33 in a row, over two feed calls: the 33rd is fatal */
		n = seal_key_updates(&x.peer, 20, 0, in);
		assert_int_equal(tls_record_feed(x.v, in, n), TLS_RECORD_OK);
		tls_record_output(x.v, &len);
		assert_int_equal(len, 0); /* not requested: no answer */
		n = seal_key_updates(&x.peer, 13, 1, in);
		expect_flood_death(&x, tls_record_feed(x.v, in, n),
				   "too many KeyUpdates in a row");
		victim_free(&x);

		/* 1000 in a row in one feed: dead, one alert written */
		victim_init(&x, TLS_VERSION_1_3, ciphers[c]);
		n = seal_key_updates(&x.peer, 1000, 1, in);
		assert_int_equal(tls_record_feed(x.v, in, n), TLS_RECORD_ERROR);
		tls_record_output(x.v, &len);
		assert_int_equal(len, alert_rec_len(&x));
		expect_flood_death(&x, TLS_RECORD_ERROR,
				   "too many KeyUpdates in a row");
		victim_free(&x);
	}
}

/* TLS 1.2 HelloRequest: fatal at a server; at a client at most one
 * no_renegotiation warning per feed call; a flood is fatal. TLS 1.3
 * NewSessionTicket: fatal at a server. */
static void test_hello_request_flood(void **state)
{
	static uint8_t in[65536], hrs[4 * 1000];
	const uint8_t hr[4] = { 0, 0, 0, 0 };

	rng_state = 53;
	memset(hrs, 0, sizeof(hrs));
	for (size_t c = 0; c < 3; c++) {
		struct victim x;
		size_t n, len;

		/* a server is never sent one */
		victim_init_as(&x, TLS_VERSION_1_2, ciphers[c], true);
		n = seal(&x.peer, 22, hr, 4, 0, in);
		expect_flood_death(&x, tls_record_feed(x.v, in, n),
				   "HelloRequest received by a server");
		victim_free(&x);

		victim_init_as(&x, TLS_VERSION_1_2, ciphers[c], false);
		/* 32 in one record, then data: one warning */
		n = seal(&x.peer, 22, hrs, 4 * 32, 0, in);
		n += seal(&x.peer, 23, "a", 1, 0, in + n);
		assert_int_equal(tls_record_feed(x.v, in, n), TLS_RECORD_OK);
		expect_plain(x.v, "a");
		tls_record_output(x.v, &len);
		assert_int_equal(len, alert_rec_len(&x));
		assert_true(len <= n);
		/* 20 records of one in one feed, then data: one warning */
		n = 0;
		for (int i = 0; i < 20; i++)
			n += seal(&x.peer, 22, hr, 4, 0, in + n);
		n += seal(&x.peer, 23, "b", 1, 0, in + n);
		assert_int_equal(tls_record_feed(x.v, in, n), TLS_RECORD_OK);
		expect_plain(x.v, "b");
		tls_record_output(x.v, &len);
		assert_int_equal(len, 2 * alert_rec_len(&x));
		/* the mirror reads both warnings and carries on */
		assert_int_equal(tls_record_write(x.v, "on", 2), TLS_RECORD_OK);
		assert_int_equal(transfer(x.v, x.mirror, SIZE_MAX, NULL),
				 TLS_RECORD_OK);
		expect_plain(x.mirror, "on");
		/* 1000 in one record: dead; one warning and the fatal alert */
		n = seal(&x.peer, 22, hrs, sizeof(hrs), 0, in);
		assert_int_equal(tls_record_feed(x.v, in, n), TLS_RECORD_ERROR);
		tls_record_output(x.v, &len);
		assert_int_equal(len, 2 * alert_rec_len(&x));
		expect_flood_death(&x, TLS_RECORD_ERROR,
				   "too many post-handshake messages in a row");
		victim_free(&x);

		/* TLS 1.3: a server is never sent a NewSessionTicket */
		{
			const uint8_t nst[] = { 4, 0, 0, 3, 1, 2, 3 };

			victim_init_as(&x, TLS_VERSION_1_3, ciphers[c], true);
			n = seal(&x.peer, 22, nst, sizeof(nst), 0, in);
			expect_flood_death(&x, tls_record_feed(x.v, in, n),
					   "NewSessionTicket received by a server");
			victim_free(&x);
		}
	}
}

/* Empty records, warning alerts and tickets count together: 32 in a row
 * are fine, the 33rd is fatal. */
static void test_empty_record_flood(void **state)
{
	static uint8_t in[65536];

	rng_state = 54;
	for (size_t v = 0; v < 2; v++)
		for (size_t c = 0; c < 3; c++) {
			bool v13 = versions[v] == TLS_VERSION_1_3;
			struct victim x;
			size_t n, len;

			victim_init_as(&x, versions[v], ciphers[c], false);
			for (int round = 0; round < 3; round++) {
				n = 0;
				for (int i = 0; i < 32; i++)
					n += seal(&x.peer, 23, NULL, 0, i % 3, in + n);
				n += seal(&x.peer, 23, "d", 1, 0, in + n);
				assert_int_equal(tls_record_feed(x.v, in, n),
						 TLS_RECORD_OK);
				expect_plain(x.v, "d");
			}
			n = 0;
			for (int i = 0; i < 33; i++)
				n += seal(&x.peer, 23, NULL, 0, 0, in + n);
			expect_flood_death(&x, tls_record_feed(x.v, in, n),
					   "too many empty records in a row");
			victim_free(&x);

			/* warning alerts (user_canceled) */
			victim_init_as(&x, versions[v], ciphers[c], false);
			n = 0;
			for (int i = 0; i < 32; i++)
				n += seal(&x.peer, 21, "\x01\x5a", 2, 0, in + n);
			n += seal(&x.peer, 23, "d", 1, 0, in + n);
			assert_int_equal(tls_record_feed(x.v, in, n), TLS_RECORD_OK);
			expect_plain(x.v, "d");
			n = 0;
			for (int i = 0; i < 33; i++)
				n += seal(&x.peer, 21, "\x01\x5a", 2, 0, in + n);
			expect_flood_death(&x, tls_record_feed(x.v, in, n),
					   "too many warning alerts in a row");
			victim_free(&x);

			/* mixed: 11 empty records, 11 warnings, then tickets
			 * (TLS 1.3) or HelloRequests (TLS 1.2) */
			victim_init_as(&x, versions[v], ciphers[c], false);
			n = 0;
			for (int i = 0; i < 11; i++) {
				n += seal(&x.peer, 23, NULL, 0, 0, in + n);
				n += seal(&x.peer, 21, "\x01\x5a", 2, 0, in + n);
			}
			for (int i = 0; i < 11; i++)
				n += seal(&x.peer, 22, v13 ? "\x04\x00\x00\x01\x00"
							 : "\x00\x00\x00\x00",
					  v13 ? 5 : 4, 0, in + n);
			expect_flood_death(&x, tls_record_feed(x.v, in, n),
					   "too many post-handshake messages in a row");
			tls_record_plaintext(x.v, &len);
			assert_int_equal(len, 0);
			victim_free(&x);
		}
}

/* --- allocation failure in the delivery bookkeeping --------------------- */

/* realloc, failing on demand (the layer's only use of it here is the
 * boundary array once the output queue has room). */
static bool realloc_fails;

void *realloc(void *p, size_t n)
{
	static void *(*real)(void *, size_t);

	if (realloc_fails && n)
		return NULL;
	if (!real)
		real = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
	return real(p, n);
}

static int realloc_works_again(void **state)
{
	realloc_fails = false; /* even after a crash inside the test */
	return 0;
}

/* The boundary array cannot grow and thinning frees nothing: no write out
 * of bounds, and plain_covered may be low, never high. */
static void test_boundary_alloc_failure(void **state)
{
	rng_state = 55;
	for (size_t c = 0; c < 3; c++) {
		struct victim x;
		uint8_t rec[128];
		const uint8_t ku[] = { 24, 0, 0, 1, 1 };
		uint64_t first;
		size_t n, len;

		/* no array yet (the output queue exists: our KeyUpdate) */
		victim_init(&x, TLS_VERSION_1_3, ciphers[c]);
		n = seal(&x.peer, 22, ku, sizeof(ku), 0, rec);
		assert_int_equal(tls_record_feed(x.v, rec, n), TLS_RECORD_OK);
		tls_record_output(x.v, &len);
		assert_int_equal(len, KU_REC);
		realloc_fails = true;
		assert_int_equal(tls_record_write(x.v, "abc", 3), TLS_RECORD_OK);
		realloc_fails = false;
		assert_true(tls_record_plain_covered(x.v, tls_record_cipher_total(x.v)) <= 3);
		assert_int_equal(tls_record_write(x.v, "d", 1), TLS_RECORD_OK);
		assert_int_equal(tls_record_plain_covered(x.v, tls_record_cipher_total(x.v)), 4);

		/* a loaded array holding exactly one entry, full */
		assert_int_equal(tls_record_write(x.v, "e", 1), TLS_RECORD_OK);
		first = tls_record_cipher_total(x.v);
		x.v = migrate(x.v);
		realloc_fails = true;
		assert_int_equal(tls_record_write(x.v, "f", 1), TLS_RECORD_OK);
		realloc_fails = false;
		assert_true(tls_record_plain_covered(x.v, first) <= 5);
		assert_int_equal(tls_record_plain_covered(x.v, tls_record_cipher_total(x.v)), 6);
		assert_int_equal(transfer(x.v, x.mirror, SIZE_MAX, NULL), TLS_RECORD_OK);
		expect_plain(x.mirror, "abcdef");
		victim_free(&x);
	}
}

/* --- malformed input --------------------------------------------------- */

enum mcase {
	M_BAD_TAG, M_FLIPPED_BODY, M_WRONG_SEQ, M_OVERSIZED_HEADER,
	M_PLAINTEXT_TOO_LONG, M_TOO_SHORT, M_BAD_VERSION, M_BAD_OUTER_TYPE,
	M_CCS, M_BAD_INNER_TYPE, M_ALL_ZERO_INNER, M_KEYUPDATE_NOT_LAST,
	M_UNKNOWN_HS, M_KEYUPDATE_IN_12, M_BAD_ALERT_LEN, M_INTERLEAVED,
	M_BAD_KEYUPDATE_VALUE, M_PEER_FATAL, M_COUNT
};

static const struct {
	const char *name;
	bool v13_only, v12_only;
	const char *error; /* our tls_record_error() */
	const char *alert; /* what the peer reads, NULL: no alert sent */
} mcases[M_COUNT] = {
	[M_BAD_TAG] = { "bad tag", 0, 0, "bad record mac", "bad record mac" },
	[M_FLIPPED_BODY] = { "flipped ciphertext", 0, 0, "bad record mac", "bad record mac" },
	[M_WRONG_SEQ] = { "skipped sequence number", 0, 0, "bad record mac", "bad record mac" },
	[M_OVERSIZED_HEADER] = { "oversized record", 0, 0, "record too long", "record overflow" },
	[M_PLAINTEXT_TOO_LONG] = { "plaintext over 2^14", 0, 0, "record plaintext too long", "record overflow" },
	[M_TOO_SHORT] = { "record shorter than its tag", 0, 0, "record too short", "decode error" },
	[M_BAD_VERSION] = { "record version 0x0301", 0, 0, "bad record version", "protocol version" },
	[M_BAD_OUTER_TYPE] = { "unknown record type", 0, 0, "unexpected record type 99", "unexpected message" },
	[M_CCS] = { "change_cipher_spec", 0, 0, "change_cipher_spec after the handshake", "unexpected message" },
	[M_BAD_INNER_TYPE] = { "unknown inner content type", 1, 0, "unexpected content type 25", "unexpected message" },
	[M_ALL_ZERO_INNER] = { "all-zero inner plaintext", 1, 0, "record without content type", "unexpected message" },
	[M_KEYUPDATE_NOT_LAST] = { "KeyUpdate not ending its record", 1, 0, "KeyUpdate not at the end of its record", "unexpected message" },
	[M_UNKNOWN_HS] = { "unknown handshake type", 0, 0, "unexpected handshake message 99", "unexpected message" },
	[M_KEYUPDATE_IN_12] = { "KeyUpdate in TLS 1.2", 0, 1, "unexpected handshake message 24", "unexpected message" },
	[M_BAD_ALERT_LEN] = { "3-byte alert", 0, 0, "bad alert length", "decode error" },
	[M_INTERLEAVED] = { "data inside a handshake message", 0, 0, "handshake message interrupted", "unexpected message" },
	[M_BAD_KEYUPDATE_VALUE] = { "KeyUpdate request 2", 1, 0, "bad KeyUpdate request", "illegal parameter" },
	[M_PEER_FATAL] = { "peer's fatal alert", 0, 0, "peer alert: handshake failure", NULL },
};

static size_t make_malformed(struct victim *x, enum mcase m, uint8_t *rec)
{
	bool v13 = x->peer.version == TLS_VERSION_1_3;
	static uint8_t big[16385];
	size_t n = 0;

	switch (m) {
	case M_BAD_TAG:
		n = seal(&x->peer, 23, "hi", 2, 0, rec);
		rec[n - 1] ^= 1;
		break;
	case M_FLIPPED_BODY:
		n = seal(&x->peer, 23, "hello world", 11, 0, rec);
		rec[n - 20] ^= 0x80;
		break;
	case M_WRONG_SEQ:
		x->peer.seq++;
		n = seal(&x->peer, 23, "hi", 2, 0, rec);
		break;
	case M_OVERSIZED_HEADER: {
		size_t len = (v13 ? 16384 + 256 : 16384 + 2048) + 1;

		rec[0] = 23; rec[1] = 3; rec[2] = 3;
		rec[3] = (uint8_t)(len >> 8); rec[4] = (uint8_t)len;
		n = 5; /* fails on the header alone */
		break;
	}
	case M_PLAINTEXT_TOO_LONG:
		memset(big, 'x', sizeof(big));
		n = seal(&x->peer, 23, big, sizeof(big), 0, rec);
		break;
	case M_TOO_SHORT:
		memcpy(rec, "\x17\x03\x03\x00\x03\x01\x02\x03", 8);
		n = 8;
		break;
	case M_BAD_VERSION:
		n = seal(&x->peer, 23, "hi", 2, 0, rec);
		rec[2] = 1;
		break;
	case M_BAD_OUTER_TYPE:
		n = seal(&x->peer, 23, "hi", 2, 0, rec);
		rec[0] = 99;
		break;
	case M_CCS:
		memcpy(rec, "\x14\x03\x03\x00\x01\x01", 6);
		n = 6;
		break;
	case M_BAD_INNER_TYPE:
		n = seal(&x->peer, 25, "hi", 2, 0, rec);
		break;
	case M_ALL_ZERO_INNER:
		n = seal(&x->peer, -1, NULL, 0, 9, rec);
		break;
	case M_KEYUPDATE_NOT_LAST: {
		const uint8_t hs[] = { 24, 0, 0, 1, 0, 4, 0, 0, 1, 0 };

		n = seal(&x->peer, 22, hs, sizeof(hs), 0, rec);
		break;
	}
	case M_UNKNOWN_HS: {
		const uint8_t hs[] = { 99, 0, 0, 2, 1, 2 };

		n = seal(&x->peer, 22, hs, sizeof(hs), 0, rec);
		break;
	}
	case M_KEYUPDATE_IN_12: {
		const uint8_t hs[] = { 24, 0, 0, 1, 1 };

		n = seal(&x->peer, 22, hs, sizeof(hs), 0, rec);
		break;
	}
	case M_BAD_ALERT_LEN:
		n = seal(&x->peer, 21, "\x02\x28\x00", 3, 0, rec);
		break;
	case M_INTERLEAVED: {
		const uint8_t hs[] = { 4, 0, 0, 9, 1, 2 };

		n = seal(&x->peer, 22, hs, sizeof(hs), 0, rec);
		n += seal(&x->peer, 23, "hi", 2, 0, rec + n);
		break;
	}
	case M_BAD_KEYUPDATE_VALUE: {
		const uint8_t hs[] = { 24, 0, 0, 1, 2 };

		n = seal(&x->peer, 22, hs, sizeof(hs), 0, rec);
		break;
	}
	case M_PEER_FATAL:
		n = seal(&x->peer, 21, "\x02\x28", 2, 0, rec);
		break;
	case M_COUNT:
		break;
	}
	return n;
}

static void test_malformed(void **state)
{
	static uint8_t rec[20000];

	rng_state = 45;
	for (size_t v = 0; v < 2; v++)
		for (size_t c = 0; c < 3; c++)
			for (int m = 0; m < M_COUNT; m++) {
				struct victim x;
				uint8_t good[64];
				size_t n, gn, len;
				char want[80];
				enum tls_record_status st = TLS_RECORD_OK;

				if ((mcases[m].v13_only && versions[v] != TLS_VERSION_1_3) ||
				    (mcases[m].v12_only && versions[v] != TLS_VERSION_1_2))
					continue;
				victim_init(&x, versions[v], ciphers[c]);
				/* a good record first, in the same input */
				gn = seal(&x.peer, 23, "ok", 2, 0, good);
				n = make_malformed(&x, (enum mcase)m, rec);
				assert_int_equal(tls_record_feed(x.v, good, gn), TLS_RECORD_OK);
				/* the bad bytes in random pieces */
				for (size_t off = 0; off < n && st == TLS_RECORD_OK;) {
					size_t k = 1 + rnd_below(n - off);

					st = tls_record_feed(x.v, rec + off, k);
					off += k;
				}
				if (st != TLS_RECORD_ERROR || !tls_record_error(x.v) ||
				    strcmp(tls_record_error(x.v), mcases[m].error))
					fail_msg("%04x %s, %s: status %d error \"%s\"",
						 versions[v], tls_cipher_name(ciphers[c]),
						 mcases[m].name, st,
						 tls_record_error(x.v) ? tls_record_error(x.v) : "(none)");
				expect_plain(x.v, "ok"); /* delivered before it */
				assert_true(tls_record_is_dead(x.v));
				assert_int_equal(tls_record_feed(x.v, good, gn), TLS_RECORD_ERROR);
				assert_int_equal(tls_record_write(x.v, "x", 1), TLS_RECORD_ERROR);
				{
					Baton__Tls__TlsState st2;

					assert_true(tls_record_save(x.v, &st2) < 0);
				}
				tls_record_output(x.v, &len);
				if (!mcases[m].alert) {
					assert_int_equal(len, 0);
				} else {
					/* the peer's layer parses our alert */
					assert_int_equal(transfer(x.v, x.mirror, SIZE_MAX, NULL),
							 TLS_RECORD_ERROR);
					snprintf(want, sizeof(want), "peer alert: %s",
						 mcases[m].alert);
					if (strcmp(tls_record_error(x.mirror), want))
						fail_msg("%s: peer read \"%s\", want \"%s\"",
							 mcases[m].name,
							 tls_record_error(x.mirror), want);
				}
				victim_free(&x);
			}
}

/* A truncated header (or record) is kept, survives a migration and
 * completes later; garbage never crashes and always ends in an error. */
static void test_partial_and_garbage(void **state)
{
	rng_state = 46;
	for (size_t v = 0; v < 2; v++)
		for (size_t c = 0; c < 3; c++) {
			struct victim x;
			uint8_t rec[128], junk[4096];
			size_t n, len;

			victim_init(&x, versions[v], ciphers[c]);
			n = seal(&x.peer, 23, "split", 5, 0, rec);
			for (size_t cut = 1; cut < n; cut += 3) {
				assert_int_equal(tls_record_feed(x.v, rec, cut), TLS_RECORD_OK);
				tls_record_plaintext(x.v, &len);
				assert_int_equal(len, 0);
				x.v = migrate(x.v);
				assert_int_equal(tls_record_feed(x.v, rec + cut, n - cut),
						 TLS_RECORD_OK);
				expect_plain(x.v, "split");
				n = seal(&x.peer, 23, "split", 5, 0, rec);
			}
			victim_free(&x);

			for (int round = 0; round < 200; round++) {
				enum tls_record_status st;

				victim_init(&x, versions[v], ciphers[c]);
				n = 1 + rnd_below(sizeof(junk));
				for (size_t i = 0; i < n; i++)
					junk[i] = (uint8_t)rnd();
				if (round & 1) { /* plausible header */
					junk[0] = 23;
					junk[1] = junk[2] = 3;
				}
				st = tls_record_feed(x.v, junk, n);
				if (st == TLS_RECORD_OK) {
					/* a partial record: complete it with more junk */
					st = tls_record_feed(x.v, junk, sizeof(junk));
					while (st == TLS_RECORD_OK)
						st = tls_record_feed(x.v, junk, sizeof(junk));
				}
				assert_int_equal(st, TLS_RECORD_ERROR);
				victim_free(&x);
			}
		}
}

/* --- limits and accounting ---------------------------------------------- */

/* TLS 1.3: our write key is updated every `rekey_after` records; the peer
 * follows (its read secret equals ours after the same number of updates). */
static void test_auto_rekey(void **state)
{
	rng_state = 47;
	for (size_t c = 0; c < 3; c++) {
		struct tls_record_params pc, ps;
		struct tls_record *a, *b;
		Baton__Tls__TlsState sa, sb;
		uint8_t secret[48];
		size_t hlen = tls13_cipher_hash_len(ciphers[c]);

		random_params(TLS_VERSION_1_3, ciphers[c], &pc, &ps);
		a = tls_record_new(&pc);
		b = tls_record_new(&ps);
		tls_record_set_rekey_after(a, 4);
		for (int i = 0; i < 20; i++)
			assert_int_equal(tls_record_write(a, "r", 1), TLS_RECORD_OK);
		assert_int_equal(transfer(a, b, SIZE_MAX, NULL), TLS_RECORD_OK);
		expect_plain(b, "rrrrrrrrrrrrrrrrrrrr");
		/* updates before records 4, 8, 12, 16: four */
		memcpy(secret, pc.write.secret, hlen);
		for (int i = 0; i < 4; i++)
			assert_int_equal(tls13_next_traffic_secret(ciphers[c], secret, hlen), 0);
		assert_int_equal(tls_record_save(a, &sa), 0);
		assert_int_equal(tls_record_save(b, &sb), 0);
		assert_int_equal(sa.write->secret.len, hlen);
		assert_memory_equal(sa.write->secret.data, secret, hlen);
		assert_memory_equal(sb.read->secret.data, secret, hlen);
		assert_int_equal(sa.write->seq, 4);
		assert_int_equal(sb.read->seq, 4);
		/* 24 records: 20 of data, 4 KeyUpdates */
		assert_int_equal(tls_record_cipher_total(a), 20 * (5 + 1 + 1 + 16) +
				 4 * (5 + 5 + 1 + 16));
		tls_record_state_free_contents(&sa);
		tls_record_state_free_contents(&sb);
		tls_record_free(a);
		tls_record_free(b);
	}
	/* TLS 1.2 has no KeyUpdate: the threshold changes nothing */
	{
		struct tls_record_params pc, ps;
		struct tls_record *a;

		random_params(TLS_VERSION_1_2, TLS_CIPHER_CHACHA20_POLY1305, &pc, &ps);
		a = tls_record_new(&pc);
		tls_record_set_rekey_after(a, 2);
		for (int i = 0; i < 10; i++)
			assert_int_equal(tls_record_write(a, "r", 1), TLS_RECORD_OK);
		assert_int_equal(tls_record_cipher_total(a), 10 * (5 + 1 + 16));
		tls_record_free(a);
	}
}

/* TLS 1.2: the connection stops before a sequence number would wrap. */
static void test_tls12_seq_limit(void **state)
{
	struct tls_record_params pc, ps;
	struct tls_record *a, *b;
	size_t len;

	rng_state = 48;
	random_params(TLS_VERSION_1_2, TLS_CIPHER_AES_128_GCM, &pc, &ps);
	pc.write.seq = ps.read.seq = UINT64_MAX - 2;
	a = tls_record_new(&pc);
	b = tls_record_new(&ps);
	assert_int_equal(tls_record_write(a, "a", 1), TLS_RECORD_OK);
	assert_int_equal(tls_record_write(a, "b", 1), TLS_RECORD_OK);
	tls_record_output(a, &len);
	assert_int_equal(tls_record_write(a, "c", 1), TLS_RECORD_ERROR);
	assert_string_equal(tls_record_error(a), "sequence numbers exhausted");
	{
		size_t len2;

		tls_record_output(a, &len2);
		assert_int_equal(len2, len); /* nothing more written */
	}
	assert_int_equal(transfer(a, b, SIZE_MAX, NULL), TLS_RECORD_OK);
	expect_plain(b, "ab");
	tls_record_free(a);
	tls_record_free(b);
}

/* TLS 1.2 AES-GCM: our explicit nonces continue the counter we were given
 * (OpenSSL's), across a migration; a reader accepts any, so only this
 * check would see a reused nonce. */
static void test_tls12_explicit_nonce(void **state)
{
	struct tls_record_params pc, ps;
	struct tls_record *a;
	const uint8_t *out;
	size_t len;

	rng_state = 51;
	random_params(TLS_VERSION_1_2, TLS_CIPHER_AES_256_GCM, &pc, &ps);
	pc.write_explicit_nonce = 0x0102030405060708ull;
	a = tls_record_new(&pc);
	assert_int_equal(tls_record_write(a, "a", 1), TLS_RECORD_OK);
	out = tls_record_output(a, &len);
	assert_int_equal(len, 5 + 8 + 1 + 16);
	assert_memory_equal(out + 5, "\x01\x02\x03\x04\x05\x06\x07\x08", 8);
	tls_record_consume_output(a, len);
	a = migrate(a);
	assert_int_equal(tls_record_write(a, "b", 1), TLS_RECORD_OK);
	out = tls_record_output(a, &len);
	assert_memory_equal(out + 5, "\x01\x02\x03\x04\x05\x06\x07\x09", 8);
	tls_record_free(a);
}

/* plain_covered: exact per record, unchanged by non-data records, carried
 * by save/load, and bounded (conservatively) when nobody asks. */
static void test_plain_covered(void **state)
{
	static uint8_t big[20000];
	struct tls_record_params pc, ps;
	struct tls_record *a, *b;
	uint64_t r1 = 5 + 10 + 1 + 16, r2 = 5 + 16384 + 1 + 16,
		 r3 = 5 + (20000 - 16384) + 1 + 16, ku = 5 + 5 + 1 + 16;

	rng_state = 49;
	random_params(TLS_VERSION_1_3, TLS_CIPHER_AES_128_GCM, &pc, &ps);
	a = tls_record_new(&pc);
	b = tls_record_new(&ps);
	tls_record_set_rekey_after(a, 3);
	assert_int_equal(tls_record_write(a, big, 10), TLS_RECORD_OK);
	assert_int_equal(tls_record_write(a, big, 0), TLS_RECORD_OK);
	assert_int_equal(tls_record_write(a, big, 20000), TLS_RECORD_OK);
	/* seq 3: a KeyUpdate record precedes the next data record */
	assert_int_equal(tls_record_write(a, big, 1), TLS_RECORD_OK);
	assert_int_equal(tls_record_plain_total(a), 20011);
	assert_int_equal(tls_record_cipher_total(a), r1 + r2 + r3 + ku + 5 + 1 + 1 + 16);
	assert_int_equal(tls_record_plain_covered(a, 0), 0);
	assert_int_equal(tls_record_plain_covered(a, r1 - 1), 0);
	assert_int_equal(tls_record_plain_covered(a, r1), 10);
	a = migrate(a);
	assert_int_equal(tls_record_plain_covered(a, r1 + r2 - 1), 10);
	assert_int_equal(tls_record_plain_covered(a, r1 + r2), 16394);
	assert_int_equal(tls_record_plain_covered(a, r1 + r2 + r3 + ku), 20010);
	assert_int_equal(tls_record_plain_covered(a, r1 + r2 + r3 + ku + 23), 20011);
	assert_int_equal(tls_record_plain_covered(a, UINT64_MAX), 20011);
	tls_record_free(a);

	/* 5000 one-byte records and nobody asks: bounded bookkeeping, the
	 * answer never exceeds the truth and is exact at the end */
	a = tls_record_new(&pc);
	for (int i = 0; i < 5000; i++)
		assert_int_equal(tls_record_write(a, "z", 1), TLS_RECORD_OK);
	{
		Baton__Tls__TlsState st;

		assert_int_equal(tls_record_save(a, &st), 0);
		assert_true(st.n_boundary_cipher <= 1024);
		assert_int_equal(st.n_boundary_cipher, st.n_boundary_plain);
		tls_record_state_free_contents(&st);
	}
	for (uint64_t k = 1; k <= 5000; k += 97) {
		uint64_t got = tls_record_plain_covered(a, k * (5 + 1 + 1 + 16));

		assert_true(got <= k);
	}
	assert_int_equal(tls_record_plain_covered(a, tls_record_cipher_total(a)), 5000);
	tls_record_free(a);
	tls_record_free(b);
}

static int free_direction_for_test(Baton__Tls__TlsState *st)
{
	free(st->read->secret.data);
	free(st->read->key.data);
	free(st->read->iv.data);
	free(st->read);
	st->read = NULL;
	return 0;
}

/* load refuses states it cannot use, with a reason. */
static void test_load_rejects(void **state)
{
	struct tls_record_params pc, ps;
	struct tls_record *a;
	Baton__Tls__TlsState st;
	const char *err;
	uint8_t junk[64] = { 23, 3, 3, 0, 20 };

	rng_state = 50;
	random_params(TLS_VERSION_1_3, TLS_CIPHER_AES_256_GCM, &pc, &ps);
	a = tls_record_new(&pc);
	assert_int_equal(tls_record_write(a, "abc", 3), TLS_RECORD_OK);

#define EXPECT_REJECT(mutate, reason)                                   \
	do {                                                            \
		assert_int_equal(tls_record_save(a, &st), 0);           \
		mutate;                                                 \
		err = NULL;                                             \
		assert_null(tls_record_load(&st, &err));                \
		assert_non_null(err);                                   \
		assert_string_equal(err, reason);                       \
		tls_record_state_free_contents(&st);                    \
	} while (0)

	EXPECT_REJECT(st.version = 0x0302, "unsupported TLS version");
	EXPECT_REJECT(st.cipher = 9, "unsupported cipher");
	EXPECT_REJECT(st.read->key.len = 16, "bad key length");
	EXPECT_REJECT(st.write->iv.len = 4, "bad iv length");
	EXPECT_REJECT(st.write->secret.len = 32, "bad secret length");
	EXPECT_REJECT(st.cipher = TLS_CIPHER_AES_128_GCM, "bad key length");
	EXPECT_REJECT(st.boundary_plain[0] = 99, "bad record boundaries");
	EXPECT_REJECT(st.n_boundary_plain = 0, "bad record boundaries");
	EXPECT_REJECT((st.has_input = 1, st.input.data = malloc(25),
		       memcpy(st.input.data, junk, 25), st.input.len = 25),
		      "input holds a complete record");
	EXPECT_REJECT((st.has_handshake = 1, st.handshake.data = malloc(6),
		       memcpy(st.handshake.data, "\x04\x00\x00\x02\x01\x02", 6),
		       st.handshake.len = 6),
		      "bad partial handshake message");
	EXPECT_REJECT((free_direction_for_test(&st)), "missing keys");
#undef EXPECT_REJECT
	/* and an unchanged one loads */
	assert_int_equal(tls_record_save(a, &st), 0);
	{
		struct tls_record *b = tls_record_load(&st, &err);

		assert_non_null(b);
		tls_record_free(b);
	}
	tls_record_state_free_contents(&st);
	tls_record_free(a);
}


/* --- custody: continued from the recorded progress --------------------- */

/* A byte pipe standing for the kernel's socket buffers. */
struct pipe {
	uint8_t *p;
	size_t off, len, cap;
};

static void pipe_put(struct pipe *q, const void *d, size_t n)
{
	if (n == 0)
		return;
	if (q->len + n > q->cap) {
		q->cap = (q->len + n) * 2;
		q->p = realloc(q->p, q->cap);
		assert_non_null(q->p);
	}
	memcpy(q->p + q->len, d, n);
	q->len += n;
}

/* What custody records after a read or a write (checkpoint_conn_tls()):
 * tls_record_save_progress(), packed. */
static size_t progress_pack(struct tls_record *t, uint8_t **out)
{
	Baton__Tls__TlsState st;
	size_t len;

	assert_int_equal(tls_record_save_progress(t, &st), 0);
	assert_int_equal(st.n_boundary_cipher, 0);
	assert_int_equal(st.n_boundary_plain, 0);
	len = baton__tls__tls_state__get_packed_size(&st);
	*out = realloc(*out, len + 1);
	assert_non_null(*out);
	assert_int_equal(baton__tls__tls_state__pack(&st, *out), len);
	tls_record_state_free_contents(&st);
	return len;
}

static struct tls_record *progress_load(const uint8_t *buf, size_t len)
{
	Baton__Tls__TlsState *un = baton__tls__tls_state__unpack(NULL, len, buf);
	const char *err = NULL;
	struct tls_record *t;

	assert_non_null(un);
	t = tls_record_load(un, &err);
	if (!t)
		fail_msg("load of the progress: %s", err);
	baton__tls__tls_state__free_unpacked(un, NULL);
	return t;
}

/* Our side (0) writes a record at a time (conn.c under custody) and hands
 * random parts of its output to the "kernel", reads random parts of what
 * the peer (1) put there; after each of those it records its progress.
 * Now and then "the process dies": it may have encrypted more, unrecorded,
 * and a new layer is loaded from the last progress in its place, its
 * streams going on from plain_total and the recorded received count. The
 * peer, never restarted, must read our stream exactly once and in order
 * across automatic KeyUpdates both ways (its own change our read key). */
static void run_crashes(uint16_t version, enum tls_cipher c, uint64_t seed,
			int iterations, int *crashes)
{
	static uint8_t buf[TLS_RECORD_MAX_PLAINTEXT];
	struct tls_record_params pc, ps;
	struct side sd[2];
	/* never NULL: feeding p + off with nothing in it is defined */
	struct pipe to_peer = { .p = malloc(1), .cap = 1 },
		    to_us = { .p = malloc(1), .cap = 1 };
	uint8_t *prog = NULL;
	size_t plen, max_plen = 0;
	uint64_t rec_received;
	uint64_t rekey = 3 + seed % 5;
	const uint8_t *p;

	rng_state = seed;
	random_params(version, c, &pc, &ps);
	memset(sd, 0, sizeof(sd));
	sd[0].t = tls_record_new(&pc);
	sd[1].t = tls_record_new(&ps);
	assert_non_null(sd[0].t);
	assert_non_null(sd[1].t);
	for (int k = 0; k < 2; k++)
		tls_record_set_rekey_after(sd[k].t, rekey);
	plen = progress_pack(sd[0].t, &prog);
	rec_received = 0;

	for (int it = 0; it < iterations; it++) {
		size_t r = rnd_below(100), n, len;

		if (r < 20) {
			/* ours: one record, only once the last one left */
			tls_record_output(sd[0].t, &len);
			if (len)
				continue;
			n = rnd_below(4) ? rnd_below(300) : rnd_below(sizeof(buf));
			for (size_t i = 0; i < n; i++)
				buf[i] = stream_byte(0, sd[0].written + i);
			assert_int_equal(tls_record_write(sd[0].t, buf, n), TLS_RECORD_OK);
			sd[0].written += n;
		} else if (r < 40) {
			/* ours: send() takes part of the output; recorded */
			p = tls_record_output(sd[0].t, &len);
			n = rnd_below(len + 1);
			pipe_put(&to_peer, p, n);
			tls_record_consume_output(sd[0].t, n);
			plen = progress_pack(sd[0].t, &prog);
			rec_received = sd[0].received;
		} else if (r < 55) {
			/* ours: recv() of part of what waits, fed; recorded */
			n = rnd_below(to_us.len - to_us.off + 1);
			if (tls_record_feed(sd[0].t, to_us.p + to_us.off, n) != TLS_RECORD_OK)
				fail_msg("seed %" PRIu64 " it %d: ours: %s", seed, it,
					 tls_record_error(sd[0].t));
			to_us.off += n;
			check_plain(&sd[0], 1, SIZE_MAX, seed);
			plen = progress_pack(sd[0].t, &prog);
			rec_received = sd[0].received;
		} else if (r < 70) {
			/* the peer writes, and sends all of it */
			n = rnd_below(2000);
			for (size_t i = 0; i < n; i++)
				buf[i] = stream_byte(1, sd[1].written + i);
			assert_int_equal(tls_record_write(sd[1].t, buf, n), TLS_RECORD_OK);
			sd[1].written += n;
			p = tls_record_output(sd[1].t, &len);
			pipe_put(&to_us, p, len);
			tls_record_consume_output(sd[1].t, len);
		} else if (r < 90) {
			/* the peer reads part of what we sent */
			n = rnd_below(to_peer.len - to_peer.off + 1);
			if (tls_record_feed(sd[1].t, to_peer.p + to_peer.off, n) != TLS_RECORD_OK)
				fail_msg("seed %" PRIu64 " it %d: peer: %s", seed, it,
					 tls_record_error(sd[1].t));
			to_peer.off += n;
			check_plain(&sd[1], 0, SIZE_MAX, seed);
		} else {
			/* crash: maybe after encrypting more, never recorded */
			tls_record_output(sd[0].t, &len);
			if (len == 0 && rnd_below(2)) {
				n = rnd_below(sizeof(buf));
				for (size_t i = 0; i < n; i++)
					buf[i] = stream_byte(0, sd[0].written + i);
				assert_int_equal(tls_record_write(sd[0].t, buf, n),
						 TLS_RECORD_OK);
			}
			tls_record_free(sd[0].t);
			sd[0].t = progress_load(prog, plen);
			tls_record_set_rekey_after(sd[0].t, rekey);
			sd[0].written = tls_record_plain_total(sd[0].t);
			sd[0].received = rec_received;
			(*crashes)++;
		}
		if (plen > max_plen)
			max_plen = plen;
	}
	/* drain both ways */
	p = tls_record_output(sd[0].t, &plen);
	pipe_put(&to_peer, p, plen);
	tls_record_consume_output(sd[0].t, plen);
	assert_int_equal(tls_record_feed(sd[1].t, to_peer.p + to_peer.off,
					 to_peer.len - to_peer.off), TLS_RECORD_OK);
	assert_int_equal(tls_record_feed(sd[0].t, to_us.p + to_us.off,
					 to_us.len - to_us.off), TLS_RECORD_OK);
	for (int k = 0; k < 2; k++) {
		check_plain(&sd[!k], k, SIZE_MAX, seed);
		if (sd[!k].received != sd[k].written)
			fail_msg("seed %" PRIu64 ": side %d received %" PRIu64
				 " of %" PRIu64, seed, !k, sd[!k].received,
				 sd[k].written);
	}
	for (int k = 0; k < 2; k++) {
		assert_null(tls_record_error(sd[k].t));
		tls_record_free(sd[k].t);
	}
	/* bounded: keys, one partial record read, one record unwritten */
	if (max_plen > 2 * (TLS_RECORD_MAX_PLAINTEXT + 2048) + 512)
		fail_msg("seed %" PRIu64 ": a progress of %zu bytes", seed, max_plen);
	free(prog);
	free(to_peer.p);
	free(to_us.p);
}

static void test_custody_progress(void **state)
{
	uint64_t seed = 0x5eed1001;
	int crashes = 0;

	(void)state;
	for (size_t v = 0; v < 2; v++)
		for (size_t c = 0; c < 3; c++) {
			print_message("version %04x %s seed %" PRIu64 "\n",
				      versions[v], tls_cipher_name(ciphers[c]), seed);
			run_crashes(versions[v], ciphers[c], seed, 3000, &crashes);
			seed++;
		}
	assert_true(crashes > 100);
}

/* The negative: a layer continued from a progress older than the last
 * send() (what a crash between the kernel taking bytes and the record
 * would give, which conn.c's DROP before every send() turns into a closed
 * connection) repeats a sequence number the peer already used: the peer
 * refuses the record (bad record mac). */
static void test_custody_stale_progress_refused(void **state)
{
	struct tls_record_params pc, ps;
	struct tls_record *a, *b;
	uint8_t *prog = NULL;
	size_t plen, len;
	const uint8_t *p;

	(void)state;
	for (size_t v = 0; v < 2; v++) {
		rng_state = 0x5eed2001 + v;
		random_params(versions[v], TLS_CIPHER_AES_128_GCM, &pc, &ps);
		a = tls_record_new(&pc);
		b = tls_record_new(&ps);
		assert_non_null(a);
		assert_non_null(b);
		plen = progress_pack(a, &prog);
		assert_int_equal(tls_record_write(a, "one\r\n", 5), TLS_RECORD_OK);
		p = tls_record_output(a, &len);
		assert_int_equal(tls_record_feed(b, p, len), TLS_RECORD_OK);
		tls_record_consume_output(a, len);
		expect_plain(b, "one\r\n");
		tls_record_free(a);
		a = progress_load(prog, plen); /* from before that send */
		assert_int_equal(tls_record_write(a, "two\r\n", 5), TLS_RECORD_OK);
		p = tls_record_output(a, &len);
		assert_int_equal(tls_record_feed(b, p, len), TLS_RECORD_ERROR);
		assert_string_equal(tls_record_error(b), "bad record mac");
		tls_record_free(a);
		tls_record_free(b);
	}
	free(prog);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rfc8448),
		cmocka_unit_test(test_stream_migrations),
		cmocka_unit_test(test_custody_progress),
		cmocka_unit_test(test_custody_stale_progress_refused),
		cmocka_unit_test(test_key_update_requested),
		cmocka_unit_test(test_ticket_spanning_records),
		cmocka_unit_test(test_hello_request),
		cmocka_unit_test(test_key_update_flood),
		cmocka_unit_test(test_hello_request_flood),
		cmocka_unit_test(test_empty_record_flood),
		cmocka_unit_test_teardown(test_boundary_alloc_failure,
					  realloc_works_again),
		cmocka_unit_test(test_malformed),
		cmocka_unit_test(test_partial_and_garbage),
		cmocka_unit_test(test_auto_rekey),
		cmocka_unit_test(test_tls12_seq_limit),
		cmocka_unit_test(test_tls12_explicit_nonce),
		cmocka_unit_test(test_plain_covered),
		cmocka_unit_test(test_load_rejects),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
