/* tls/kdf.c: HKDF, the TLS 1.3 traffic key schedule and the TLS 1.2
 * PRF key block, over OpenSSL 3.0 EVP_KDF. See kdf.h. */
#include "tls/kdf.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

/* Fetched once per process: an implicit fetch per call costs more than the
 * derivation (a KeyUpdate must stay cheap). Never freed; they live as long
 * as the library. */
static EVP_KDF *kdf_hkdf, *kdf_prf;
static pthread_once_t kdf_once = PTHREAD_ONCE_INIT;

static void kdf_fetch(void)
{
	kdf_hkdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	kdf_prf = EVP_KDF_fetch(NULL, "TLS1-PRF", NULL);
}

size_t tls_cipher_key_len(enum tls_cipher c)
{
	switch (c) {
	case TLS_CIPHER_AES_128_GCM:
		return 16;
	case TLS_CIPHER_AES_256_GCM:
	case TLS_CIPHER_CHACHA20_POLY1305:
		return 32;
	}
	return 0;
}

const EVP_MD *tls13_cipher_md(enum tls_cipher c)
{
	switch (c) {
	case TLS_CIPHER_AES_128_GCM:
	case TLS_CIPHER_CHACHA20_POLY1305:
		return EVP_sha256();
	case TLS_CIPHER_AES_256_GCM:
		return EVP_sha384();
	}
	return NULL;
}

size_t tls13_cipher_hash_len(enum tls_cipher c)
{
	switch (c) {
	case TLS_CIPHER_AES_128_GCM:
	case TLS_CIPHER_CHACHA20_POLY1305:
		return 32;
	case TLS_CIPHER_AES_256_GCM:
		return 48;
	}
	return 0;
}

size_t tls12_cipher_fixed_iv_len(enum tls_cipher c)
{
	switch (c) {
	case TLS_CIPHER_AES_128_GCM:
	case TLS_CIPHER_AES_256_GCM:
		return 4;
	case TLS_CIPHER_CHACHA20_POLY1305:
		return 12;
	}
	return 0;
}

/* One EVP_KDF derivation with the given parameters. */
static int kdf_derive(EVP_KDF *kdf, const OSSL_PARAM *params, uint8_t *out,
		      size_t out_len)
{
	EVP_KDF_CTX *kctx;
	int r = -EIO;

	if (!kdf)
		return -EIO;
	kctx = EVP_KDF_CTX_new(kdf);
	if (!kctx)
		return -ENOMEM;
	if (EVP_KDF_derive(kctx, out, out_len, params) > 0)
		r = 0;
	EVP_KDF_CTX_free(kctx);
	return r;
}

int tls_hkdf_extract(const EVP_MD *md, const uint8_t *salt, size_t salt_len,
		     const uint8_t *ikm, size_t ikm_len, uint8_t *prk)
{
	static const uint8_t zeros[EVP_MAX_MD_SIZE];
	int mode = EVP_KDF_HKDF_MODE_EXTRACT_ONLY;
	OSSL_PARAM params[5], *p = params;
	int hlen;

	pthread_once(&kdf_once, kdf_fetch);
	if (!md || !prk || (!ikm && ikm_len))
		return -EINVAL;
	hlen = EVP_MD_get_size(md);
	if (hlen <= 0)
		return -EINVAL;
	if (!salt) {
		salt = zeros;
		salt_len = (size_t)hlen;
	}
	*p++ = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode);
	*p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
						(char *)EVP_MD_get0_name(md), 0);
	/* An empty IKM is legal (RFC 8446 uses zeros, never empty, but HKDF
	 * allows it); OpenSSL wants a non-NULL pointer. */
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY,
						 (void *)(ikm ? ikm : zeros),
						 ikm_len);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT,
						 (void *)salt, salt_len);
	*p = OSSL_PARAM_construct_end();
	return kdf_derive(kdf_hkdf, params, prk, (size_t)hlen);
}

int tls_hkdf_expand(const EVP_MD *md, const uint8_t *prk, size_t prk_len,
		    const uint8_t *info, size_t info_len, uint8_t *out,
		    size_t out_len)
{
	int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
	OSSL_PARAM params[5], *p = params;
	int hlen;

	pthread_once(&kdf_once, kdf_fetch);
	if (!md || !prk || !out || (!info && info_len))
		return -EINVAL;
	hlen = EVP_MD_get_size(md);
	/* RFC 5869: L <= 255 * HashLen; the PRK is at least HashLen. */
	if (hlen <= 0 || out_len == 0 || out_len > 255 * (size_t)hlen ||
	    prk_len < (size_t)hlen)
		return -EINVAL;
	*p++ = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode);
	*p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
						(char *)EVP_MD_get0_name(md), 0);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY,
						 (void *)prk, prk_len);
	if (info_len)
		*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO,
							 (void *)info,
							 info_len);
	*p = OSSL_PARAM_construct_end();
	return kdf_derive(kdf_hkdf, params, out, out_len);
}

int tls13_hkdf_expand_label(const EVP_MD *md, const uint8_t *secret,
			    size_t secret_len, const char *label,
			    const uint8_t *context, size_t context_len,
			    uint8_t *out, size_t out_len)
{
	/* struct { uint16 length; opaque label<7..255> = "tls13 " + Label;
	 *          opaque context<0..255>; } HkdfLabel; */
	static const char prefix[] = "tls13 ";
	uint8_t info[2 + 1 + 255 + 1 + 255];
	size_t llen, plen = sizeof(prefix) - 1, n = 0;
	int r;

	if (!label || (!context && context_len))
		return -EINVAL;
	llen = strlen(label);
	if (plen + llen > 255 || context_len > 255 || out_len > 0xffff)
		return -EINVAL;
	info[n++] = (uint8_t)(out_len >> 8);
	info[n++] = (uint8_t)out_len;
	info[n++] = (uint8_t)(plen + llen);
	memcpy(info + n, prefix, plen);
	n += plen;
	memcpy(info + n, label, llen);
	n += llen;
	info[n++] = (uint8_t)context_len;
	if (context_len)
		memcpy(info + n, context, context_len);
	n += context_len;
	r = tls_hkdf_expand(md, secret, secret_len, info, n, out, out_len);
	OPENSSL_cleanse(info, sizeof(info));
	return r;
}

int tls13_traffic_key_iv(enum tls_cipher c, const uint8_t *secret,
			 size_t secret_len, uint8_t *key, uint8_t iv[12])
{
	const EVP_MD *md = tls13_cipher_md(c);
	int r;

	if (!md || secret_len != tls13_cipher_hash_len(c) || !key || !iv)
		return -EINVAL;
	r = tls13_hkdf_expand_label(md, secret, secret_len, "key", NULL, 0,
				    key, tls_cipher_key_len(c));
	if (r == 0)
		r = tls13_hkdf_expand_label(md, secret, secret_len, "iv", NULL,
					    0, iv, 12);
	return r;
}

int tls13_next_traffic_secret(enum tls_cipher c, uint8_t *secret,
			      size_t secret_len)
{
	const EVP_MD *md = tls13_cipher_md(c);
	uint8_t next[48];
	int r;

	if (!md || !secret || secret_len != tls13_cipher_hash_len(c))
		return -EINVAL;
	r = tls13_hkdf_expand_label(md, secret, secret_len, "traffic upd",
				    NULL, 0, next, secret_len);
	if (r == 0)
		memcpy(secret, next, secret_len);
	OPENSSL_cleanse(next, sizeof(next));
	return r;
}

int tls12_prf(const EVP_MD *md, const uint8_t *secret, size_t secret_len,
	      const char *label, const uint8_t *seed, size_t seed_len,
	      uint8_t *out, size_t out_len)
{
	OSSL_PARAM params[5], *p = params;
	size_t llen;

	pthread_once(&kdf_once, kdf_fetch);
	if (!md || !secret || !label || (!seed && seed_len) || !out ||
	    out_len == 0)
		return -EINVAL;
	llen = strlen(label);
	*p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
						(char *)EVP_MD_get0_name(md), 0);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET,
						 (void *)secret, secret_len);
	/* OpenSSL concatenates every seed parameter: label, then seed. */
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED,
						 (void *)label, llen);
	if (seed_len)
		*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED,
							 (void *)seed,
							 seed_len);
	*p = OSSL_PARAM_construct_end();
	return kdf_derive(kdf_prf, params, out, out_len);
}

int tls12_key_block(enum tls_cipher c, const uint8_t *master,
		    size_t master_len, const uint8_t client_random[32],
		    const uint8_t server_random[32],
		    struct tls_direction *client, struct tls_direction *server)
{
	size_t klen = tls_cipher_key_len(c), ivlen = tls12_cipher_fixed_iv_len(c);
	const EVP_MD *md = c == TLS_CIPHER_AES_256_GCM ? EVP_sha384()
						       : EVP_sha256();
	uint8_t seed[64], block[2 * 32 + 2 * 12];
	int r;

	if (!klen || !master || !master_len || !client_random ||
	    !server_random || !client || !server)
		return -EINVAL;
	memcpy(seed, server_random, 32);
	memcpy(seed + 32, client_random, 32);
	r = tls12_prf(md, master, master_len, "key expansion", seed,
		      sizeof(seed), block, 2 * klen + 2 * ivlen);
	if (r == 0) {
		memset(client->key, 0, sizeof(client->key));
		memset(server->key, 0, sizeof(server->key));
		memset(client->iv, 0, sizeof(client->iv));
		memset(server->iv, 0, sizeof(server->iv));
		memcpy(client->key, block, klen);
		memcpy(server->key, block + klen, klen);
		memcpy(client->iv, block + 2 * klen, ivlen);
		memcpy(server->iv, block + 2 * klen + ivlen, ivlen);
		client->secret_len = server->secret_len = 0;
	}
	OPENSSL_cleanse(block, sizeof(block));
	return r;
}
