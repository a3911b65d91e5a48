/* tls/kdf.h: the key derivations baton's TLS record layer needs
 * (record.h) and the handshake hand-over feeds it (handshake.h):
 * HKDF (RFC 5869), HKDF-Expand-Label and the traffic key schedule of TLS 1.3
 * (RFC 8446 7.1, 7.2, 7.3), and the TLS 1.2 PRF key block (RFC 5246 5, 6.3)
 * for the AEAD suites. All through OpenSSL 3.0 EVP_KDF ("HKDF",
 * "TLS1-PRF").
 *
 * Every function returns 0 or a negative errno (-EINVAL on bad arguments,
 * -EIO when OpenSSL fails) and writes nothing it was not asked for. Callers
 * own every buffer and wipe secrets themselves.
 */
#ifndef BATON_TLS_KDF_H
#define BATON_TLS_KDF_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "tls/record.h"

/* Lengths by suite: AEAD key (16 or 32), TLS 1.3 hash (32 or 48; NULL/0 for
 * an unknown cipher). TLS 1.2 fixed IV: 4 bytes for AES-GCM (the implicit
 * salt, RFC 5288), 12 for ChaCha20-Poly1305 (RFC 7905). */
size_t tls_cipher_key_len(enum tls_cipher c);
size_t tls13_cipher_hash_len(enum tls_cipher c);
const EVP_MD *tls13_cipher_md(enum tls_cipher c);
size_t tls12_cipher_fixed_iv_len(enum tls_cipher c);

/* HKDF-Extract(salt, ikm) into prk (EVP_MD_get_size(md) bytes). A NULL salt
 * means hash-length zeros (RFC 5869 2.2). */
int tls_hkdf_extract(const EVP_MD *md, const uint8_t *salt, size_t salt_len,
		     const uint8_t *ikm, size_t ikm_len, uint8_t *prk);

/* HKDF-Expand(prk, info, out_len). */
int tls_hkdf_expand(const EVP_MD *md, const uint8_t *prk, size_t prk_len,
		    const uint8_t *info, size_t info_len, uint8_t *out,
		    size_t out_len);

/* HKDF-Expand-Label(secret, label, context, out_len) of RFC 8446 7.1; label
 * without the "tls13 " prefix (added here), at most 249 bytes. */
int tls13_hkdf_expand_label(const EVP_MD *md, const uint8_t *secret,
			    size_t secret_len, const char *label,
			    const uint8_t *context, size_t context_len,
			    uint8_t *out, size_t out_len);

/* Traffic key and IV of a TLS 1.3 traffic secret (RFC 8446 7.3): key gets
 * tls_cipher_key_len(c) bytes, iv 12. secret_len must be the suite's hash
 * length. */
int tls13_traffic_key_iv(enum tls_cipher c, const uint8_t *secret,
			 size_t secret_len, uint8_t *key, uint8_t iv[12]);

/* application_traffic_secret_N+1 = HKDF-Expand-Label(secret_N,
 * "traffic upd", "", Hash.length) (RFC 8446 7.2), replacing secret in
 * place. */
int tls13_next_traffic_secret(enum tls_cipher c, uint8_t *secret,
			      size_t secret_len);

/* PRF(secret, label, seed) of TLS 1.2 (RFC 5246 5) with the given hash
 * (SHA-256 for every suite baton supports except the *_SHA384 ones). */
int tls12_prf(const EVP_MD *md, const uint8_t *secret, size_t secret_len,
	      const char *label, const uint8_t *seed, size_t seed_len,
	      uint8_t *out, size_t out_len);

/* The TLS 1.2 key block of an AEAD suite (RFC 5246 6.3: PRF(master,
 * "key expansion", server_random + client_random)), laid out as
 * client_write_key, server_write_key, client_write_IV, server_write_IV.
 * Fills key and iv of both directions' structs (secret_len 0; seq left
 * alone). The PRF hash is SHA-384 for AES-256-GCM (the *_GCM_SHA384
 * suites), SHA-256 otherwise. */
int tls12_key_block(enum tls_cipher c, const uint8_t *master,
		    size_t master_len, const uint8_t client_random[32],
		    const uint8_t server_random[32],
		    struct tls_direction *client, struct tls_direction *server);

#endif
