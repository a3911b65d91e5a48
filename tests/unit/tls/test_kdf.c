/* tests/unit/tls/test_kdf.c: tls/kdf.c against published
 * known answers: HKDF (RFC 5869 A.1), the TLS 1.3 key schedule of RFC 8448
 * section 3 (Simple 1-RTT Handshake: handshake and application traffic
 * keys/IVs from their secrets), the widely used TLS 1.2 P_SHA256 PRF vector
 * (IETF TLS list), cross-checked against an independent P_SHA256 written
 * here with HMAC by the RFC 5246 definition, and the key block layout. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/hmac.h>

#include "tls/kdf.h"

/* Hex (spaces allowed) into out; returns the byte count. */
static size_t unhex(const char *s, uint8_t *out, size_t max)
{
	size_t n = 0;
	int hi = -1;

	for (; *s; s++) {
		int v = 0;

		if (*s == ' ' || *s == '\n')
			continue;
		if (*s >= '0' && *s <= '9')
			v = *s - '0';
		else if (*s >= 'a' && *s <= 'f')
			v = *s - 'a' + 10;
		else
			fail_msg("bad hex digit %c", *s);
		if (hi < 0) {
			hi = v;
		} else {
			assert_true(n < max);
			out[n++] = (uint8_t)(hi << 4 | v);
			hi = -1;
		}
	}
	assert_int_equal(hi, -1);
	return n;
}

static void assert_hex(const uint8_t *got, size_t len, const char *want)
{
	uint8_t w[256];
	size_t n = unhex(want, w, sizeof(w));

	assert_int_equal(n, len);
	assert_memory_equal(got, w, n);
}

static void test_hkdf_rfc5869(void **state)
{
	uint8_t ikm[22], salt[13], info[10], prk[32], okm[42];

	memset(ikm, 0x0b, sizeof(ikm));
	for (int i = 0; i < 13; i++)
		salt[i] = (uint8_t)i;
	for (int i = 0; i < 10; i++)
		info[i] = (uint8_t)(0xf0 + i);
	assert_int_equal(tls_hkdf_extract(EVP_sha256(), salt, sizeof(salt), ikm,
					  sizeof(ikm), prk), 0);
	assert_hex(prk, 32, "077709362c2e32df0ddc3f0dc47bba63"
			    "90b6c73bb50f9c3122ec844ad7c2b3e5");
	assert_int_equal(tls_hkdf_expand(EVP_sha256(), prk, 32, info,
					 sizeof(info), okm, sizeof(okm)), 0);
	assert_hex(okm, 42, "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db0"
			    "2d56ecc4c5bf34007208d5b887185865");
	/* too long for HKDF: 255 * HashLen + 1 */
	{
		static uint8_t big[255 * 32 + 1];

		assert_int_equal(tls_hkdf_expand(EVP_sha256(), prk, 32, NULL, 0,
						 big, sizeof(big)),
				 -EINVAL);
	}
}

/* RFC 8448 3: early secret (extract of zeros), and the traffic keys of the
 * handshake and application secrets printed there. */
static void test_rfc8448_key_schedule(void **state)
{
	static const struct {
		const char *secret, *key, *iv;
	} v[] = {
		/* {server} handshake */
		{ "b67b7d690cc16c4e75e54213cb2d37b4e9c912bcded9105d42befd59d391ad38",
		  "3fce516009c21727d0f2e4e86ee403bc", "5d313eb2671276ee13000b30" },
		/* {client} handshake */
		{ "b3eddb126e067f35a780b3abf45e2d8f3b1a950738f52e9600746a0e27a55a21",
		  "dbfaa693d1762c5b666af5d950258d01", "5bd3c71b836e0b76bb73265f" },
		/* {server} application */
		{ "a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643",
		  "9f02283b6c9c07efc26bb9f2ac92e356", "cf782b88dd83549aadf1e984" },
		/* {client} application */
		{ "9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5",
		  "17422dda596ed5d9acd890e3c63f5051", "5b78923dee08579033e523d9" },
	};
	uint8_t zeros[32] = { 0 }, early[32];

	assert_int_equal(tls_hkdf_extract(EVP_sha256(), NULL, 0, zeros, 32,
					  early), 0);
	assert_hex(early, 32, "33ad0a1c607ec03b09e6cd9893680ce2"
			      "10adf300aa1f2660e1b22e10f170f92a");
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		uint8_t secret[32], key[32], iv[12];

		unhex(v[i].secret, secret, sizeof(secret));
		assert_int_equal(tls13_traffic_key_iv(TLS_CIPHER_AES_128_GCM,
						      secret, 32, key, iv), 0);
		assert_hex(key, 16, v[i].key);
		assert_hex(iv, 12, v[i].iv);
	}
	/* wrong secret length for the suite */
	{
		uint8_t key[32], iv[12];

		assert_int_equal(tls13_traffic_key_iv(TLS_CIPHER_AES_256_GCM,
						      zeros, 32, key, iv),
				 -EINVAL);
	}
}

/* "traffic upd" = Expand-Label(secret, "traffic upd", "", 32) written out
 * by hand (HkdfLabel bytes) through the plain HKDF-Expand. */
static void test_next_traffic_secret(void **state)
{
	uint8_t s[32], want[32];
	const uint8_t label[] = { 0, 32, 17, 't', 'l', 's', '1', '3', ' ', 't',
				  'r', 'a', 'f', 'f', 'i', 'c', ' ', 'u', 'p',
				  'd', 0 };

	unhex("9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5",
	      s, sizeof(s));
	assert_int_equal(tls_hkdf_expand(EVP_sha256(), s, 32, label,
					 sizeof(label), want, 32), 0);
	assert_int_equal(tls13_next_traffic_secret(TLS_CIPHER_AES_128_GCM, s, 32), 0);
	assert_memory_equal(s, want, 32);
	/* the value Botan's test suite lists for RFC 8448's client
	 * application traffic secret 1 (not in the RFC itself) */
	assert_hex(s, 32, "fcdfcc72725aaee48bf64e4fd8b749cd"
			  "bdbab39d90da0b26e2245ca6ea167207");
}

/* P_SHA256 by RFC 5246 5, independently of EVP_KDF. */
static void p_sha256(const uint8_t *secret, size_t slen, const uint8_t *seed,
		     size_t seedlen, uint8_t *out, size_t outlen)
{
	uint8_t a[32], buf[32 + 512], h[32];
	unsigned int len;

	assert_true(seedlen <= 512);
	HMAC(EVP_sha256(), secret, (int)slen, seed, seedlen, a, &len);
	while (outlen) {
		size_t n = outlen < 32 ? outlen : 32;

		memcpy(buf, a, 32);
		memcpy(buf + 32, seed, seedlen);
		HMAC(EVP_sha256(), secret, (int)slen, buf, 32 + seedlen, h, &len);
		memcpy(out, h, n);
		out += n;
		outlen -= n;
		HMAC(EVP_sha256(), secret, (int)slen, a, 32, a, &len);
	}
}

static void test_tls12_prf(void **state)
{
	uint8_t secret[16], seed[16], out[100], ref[100], ls[10 + 16];

	unhex("9bbe436ba940f017b17652849a71db35", secret, sizeof(secret));
	unhex("a0ba9f936cda311827a6f796ffd5198c", seed, sizeof(seed));
	assert_int_equal(tls12_prf(EVP_sha256(), secret, 16, "test label", seed,
				   16, out, sizeof(out)), 0);
	assert_hex(out, 100,
		   "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a"
		   "6b301791e90d35c9c9a46b4e14baf9af0fa022f7077def17abfd3797c0564bab"
		   "4fbc91666e9def9b97fce34f796789baa48082d122ee42c5a72e5a5110fff701"
		   "87347b66");
	memcpy(ls, "test label", 10);
	memcpy(ls + 10, seed, 16);
	p_sha256(secret, 16, ls, sizeof(ls), ref, sizeof(ref));
	assert_memory_equal(out, ref, sizeof(ref));
}

/* Key block layout: client key, server key, client IV, server IV, from
 * PRF(master, "key expansion", server_random + client_random). */
static void test_tls12_key_block(void **state)
{
	static const enum tls_cipher ciphers[] = {
		TLS_CIPHER_AES_128_GCM, TLS_CIPHER_CHACHA20_POLY1305,
	};
	uint8_t master[48], cr[32], sr[32], seed[13 + 64], ref[2 * 32 + 2 * 12];

	for (int i = 0; i < 48; i++)
		master[i] = (uint8_t)(i * 7 + 1);
	for (int i = 0; i < 32; i++) {
		cr[i] = (uint8_t)(0xc0 + i);
		sr[i] = (uint8_t)(0x50 + i);
	}
	memcpy(seed, "key expansion", 13);
	memcpy(seed + 13, sr, 32);
	memcpy(seed + 45, cr, 32);
	for (size_t k = 0; k < 2; k++) {
		enum tls_cipher c = ciphers[k];
		size_t kl = tls_cipher_key_len(c), il = tls12_cipher_fixed_iv_len(c);
		struct tls_direction cl, sv;

		memset(&cl, 0xee, sizeof(cl));
		memset(&sv, 0xee, sizeof(sv));
		p_sha256(master, 48, seed, sizeof(seed), ref, 2 * kl + 2 * il);
		assert_int_equal(tls12_key_block(c, master, 48, cr, sr, &cl, &sv), 0);
		assert_memory_equal(cl.key, ref, kl);
		assert_memory_equal(sv.key, ref + kl, kl);
		assert_memory_equal(cl.iv, ref + 2 * kl, il);
		assert_memory_equal(sv.iv, ref + 2 * kl + il, il);
		assert_int_equal(cl.secret_len, 0);
	}
	/* AES-256-GCM suites use the SHA-384 PRF */
	{
		struct tls_direction cl, sv;
		uint8_t out[2 * 32 + 2 * 4];

		assert_int_equal(tls12_prf(EVP_sha384(), master, 48, "key expansion",
					   seed + 13, 64, out, sizeof(out)), 0);
		assert_int_equal(tls12_key_block(TLS_CIPHER_AES_256_GCM, master,
						 48, cr, sr, &cl, &sv), 0);
		assert_memory_equal(cl.key, out, 32);
		assert_memory_equal(sv.key, out + 32, 32);
		assert_memory_equal(cl.iv, out + 64, 4);
		assert_memory_equal(sv.iv, out + 68, 4);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hkdf_rfc5869),
		cmocka_unit_test(test_rfc8448_key_schedule),
		cmocka_unit_test(test_next_traffic_secret),
		cmocka_unit_test(test_tls12_prf),
		cmocka_unit_test(test_tls12_key_block),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
