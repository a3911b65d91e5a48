/* tests/fuzz/fuzz_tls_record.c: libFuzzer target for tls/record.c.
 *
 * Input: byte 0 picks the version, cipher and role; then operations, each
 *   u8 op, u16 len (little endian), len bytes
 * op & 3:
 *   0: the bytes go to the layer raw (ciphertext as a hostile peer sends it)
 *   1: the bytes are sealed as one record by the peer's key (TLS 1.3: byte 0
 *      is the inner content type, op >> 2 zero bytes of padding follow the
 *      content; TLS 1.2: byte 0 is the record type), so the fuzzer reaches
 *      everything after decryption: handshake messages, alerts, KeyUpdate
 *   2: the peer switches to its next traffic secret (after it "sent" a
 *      KeyUpdate), or, in TLS 1.2, the layer is saved, packed, unpacked and
 *      loaded again
 *   3: the layer writes len bytes, is migrated (save/pack/unpack/load) and
 *      hands its plaintext back
 * Whatever the layer writes is read by a second layer holding the mirrored
 * keys: it must never fail unless our layer died and told it with an
 * alert. A dead layer must say why and refuse everything after. One feed
 * call writes at most a few records (a no_renegotiation warning, one
 * KeyUpdate, a fatal alert), whatever it was given: no amplification.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "tls/kdf.h"
#include "tls/record.h"
#include "tls.pb-c.h"

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

/* One record (see test_record.c for the commented twin). */
static size_t seal(struct sealer *s, const uint8_t *data, size_t len,
		   size_t pad, uint8_t *out)
{
	static uint8_t inner[16384 + 256];
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	bool v13 = s->version == TLS_VERSION_1_3;
	bool gcm = !v13 && s->cipher != TLS_CIPHER_CHACHA20_POLY1305;
	uint8_t nonce[12], aad[13], type, *p;
	size_t ilen, body;
	int n;

	if (!ctx || len == 0)
		abort();
	type = data[0];
	data++;
	len--;
	if (len > 16384)
		len = 16384;
	memcpy(inner, data, len);
	ilen = len;
	if (v13) {
		inner[ilen++] = type;
		memset(inner + ilen, 0, pad);
		ilen += pad;
	}
	body = ilen + 16 + (gcm ? 8 : 0);
	out[0] = v13 ? 23 : type;
	out[1] = out[2] = 3;
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
		aad[8] = type;
		aad[9] = aad[10] = 3;
		aad[11] = (uint8_t)(ilen >> 8);
		aad[12] = (uint8_t)ilen;
	}
	if (EVP_EncryptInit_ex(ctx, evp_of(s->cipher), NULL, s->key, nonce) <= 0 ||
	    EVP_EncryptUpdate(ctx, NULL, &n, aad, v13 ? 5 : 13) <= 0 ||
	    EVP_EncryptUpdate(ctx, p, &n, inner, (int)ilen) <= 0 ||
	    EVP_EncryptFinal_ex(ctx, p + n, &n) <= 0 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, 16, p + ilen) <= 0)
		abort();
	EVP_CIPHER_CTX_free(ctx);
	s->seq++;
	return 5 + body;
}

static struct tls_record *migrate(struct tls_record *t)
{
	Baton__Tls__TlsState st = BATON__TLS__TLS_STATE__INIT, *un;
	struct tls_record *n;
	const char *err = NULL;
	uint8_t *buf;
	size_t len;

	if (tls_record_save(t, &st) < 0) {
		if (!tls_record_is_dead(t))
			abort(); /* only a dead layer refuses */
		return t;
	}
	len = baton__tls__tls_state__get_packed_size(&st);
	buf = malloc(len + 1);
	if (!buf || baton__tls__tls_state__pack(&st, buf) != len)
		abort();
	tls_record_state_free_contents(&st);
	un = baton__tls__tls_state__unpack(NULL, len, buf);
	if (!un)
		abort();
	n = tls_record_load(un, &err);
	if (!n)
		abort(); /* our own saved state must load */
	baton__tls__tls_state__free_unpacked(un, NULL);
	free(buf);
	tls_record_free(t);
	return n;
}

/* What the layer wrote goes to the mirror. */
static void drain(struct tls_record *t, struct tls_record *mirror)
{
	size_t len;
	const uint8_t *p = tls_record_output(t, &len);
	enum tls_record_status st = tls_record_feed(mirror, p, len);

	tls_record_consume_output(t, len);
	if (st == TLS_RECORD_ERROR) {
		const char *e = tls_record_error(mirror);

		/* or the mirror's own flood limit: the fuzzer can have v
		 * answer many KeyUpdate requests or HelloRequests (one per
		 * feed call) with no data in between */
		if (e && !strncmp(e, "too many ", 9))
			return;
		if (!tls_record_is_dead(t) || !e || strncmp(e, "peer alert: ", 12))
			abort();
	}
	tls_record_plaintext(mirror, &len);
	tls_record_consume_plaintext(mirror, len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t rec[16384 + 512], wbuf[65536];
	struct tls_record_params pv, pm;
	struct tls_record *v, *m;
	struct sealer s;
	enum tls_cipher c;
	uint16_t version;
	size_t hlen;
	bool pv_server;

	if (size < 1)
		return 0;
	version = (data[0] & 1) ? TLS_VERSION_1_2 : TLS_VERSION_1_3;
	c = (enum tls_cipher)(1 + (data[0] >> 1) % 3);
	pv_server = ((data[0] >> 1) / 3) & 1;
	data++;
	size--;
	hlen = tls13_cipher_hash_len(c);

	/* fixed keys: v reads what s seals and writes what m reads */
	memset(&pv, 0, sizeof(pv));
	pv.version = version;
	pv.cipher = c;
	pv.is_server = pv_server;
	for (size_t i = 0; i < sizeof(pv.read.key); i++) {
		pv.read.key[i] = (uint8_t)(i + 1);
		pv.write.key[i] = (uint8_t)(i + 101);
	}
	for (size_t i = 0; i < 12; i++) {
		pv.read.iv[i] = (uint8_t)(i + 51);
		pv.write.iv[i] = (uint8_t)(i + 151);
	}
	if (version == TLS_VERSION_1_3) {
		memset(pv.read.key, 0, sizeof(pv.read.key));
		memset(pv.write.key, 0, sizeof(pv.write.key));
		memset(pv.read.iv, 0, 12);
		memset(pv.write.iv, 0, 12);
		memset(pv.read.secret, 0x11, hlen);
		memset(pv.write.secret, 0x22, hlen);
		pv.read.secret_len = pv.write.secret_len = hlen;
	} else if (c != TLS_CIPHER_CHACHA20_POLY1305) {
		memset(pv.read.iv + 4, 0, 8);
		memset(pv.write.iv + 4, 0, 8);
	}
	pv.write_explicit_nonce = 77;
	pm = pv;
	pm.read = pv.write;
	pm.write = pv.read;
	pm.write_explicit_nonce = 5;
	pm.is_server = !pv_server;
	v = tls_record_new(&pv);
	m = tls_record_new(&pm);
	if (!v || !m)
		abort();
	memset(&s, 0, sizeof(s));
	s.version = version;
	s.cipher = c;
	s.explicit_nonce = 5;
	memcpy(s.key, pv.read.key, 32);
	memcpy(s.iv, pv.read.iv, 12);
	if (version == TLS_VERSION_1_3) {
		memcpy(s.secret, pv.read.secret, hlen);
		s.secret_len = hlen;
		if (tls13_traffic_key_iv(c, s.secret, hlen, s.key, s.iv) < 0)
			abort();
	}

	while (size >= 3) {
		uint8_t op = data[0];
		size_t len = data[1] | ((size_t)data[2] << 8);
		enum tls_record_status st = TLS_RECORD_OK;
		size_t out_before, out_after;

		data += 3;
		size -= 3;
		if (len > size)
			len = size;
		tls_record_output(v, &out_before);
		switch (op & 3) {
		case 0:
			st = tls_record_feed(v, data, len);
			break;
		case 1:
			if (len)
				st = tls_record_feed(v, rec,
						     seal(&s, data, len, op >> 2, rec));
			break;
		case 2:
			if (version == TLS_VERSION_1_3) {
				if (tls13_next_traffic_secret(c, s.secret, hlen) < 0 ||
				    tls13_traffic_key_iv(c, s.secret, hlen, s.key,
							 s.iv) < 0)
					abort();
				s.seq = 0;
			} else {
				v = migrate(v);
			}
			break;
		case 3: {
			size_t n = len * 16 > sizeof(wbuf) ? sizeof(wbuf) : len * 16;
			size_t plen;

			memset(wbuf, op, n);
			st = tls_record_write(v, wbuf, n);
			if (st == TLS_RECORD_OK && op & 4)
				tls_record_close(v);
			v = migrate(v);
			tls_record_plaintext(v, &plen);
			tls_record_consume_plaintext(v, plen);
			break;
		}
		}
		tls_record_output(v, &out_after);
		if ((op & 3) < 2 && out_after > out_before + 3 * 32)
			abort(); /* a feed wrote more than three small records */
		if (st == TLS_RECORD_ERROR &&
		    (!tls_record_error(v) && !tls_record_is_dead(v)) &&
		    (op & 3) != 3)
			abort(); /* feed errors always come with a reason */
		if (tls_record_is_dead(v) &&
		    (!tls_record_error(v) ||
		     tls_record_feed(v, "x", 1) != TLS_RECORD_ERROR ||
		     tls_record_write(v, "x", 1) != TLS_RECORD_ERROR))
			abort();
		drain(v, m);
		data += len;
		size -= len;
	}
	tls_record_free(v);
	tls_record_free(m);
	return 0;
}
