/* sessiond/sasl_mech.h: the SASL mechanisms baton speaks to networks and
 * the AUTHENTICATE framing of IRCv3 sasl-3.1 (sasl_mech.c). Pure code: no
 * I/O, no logging, no clock; OpenSSL for the cryptography (PBKDF2, HMAC,
 * SHA-256, random nonces). The session side (what to send when, what a
 * failure does) is sessiond/sasl.h.
 *
 * Bounds: an AUTHENTICATE message (decoded) is at most SASL_MSG_MAX bytes in
 * either direction; what a network sends beyond that is refused
 * (sasl_in_feed() -> -EMSGSIZE), never buffered. SCRAM iteration counts
 * above SASL_SCRAM_MAX_ITER are refused (a hostile server could otherwise
 * make the worker's event loop spin in PBKDF2). PBKDF2 runs on the event
 * loop, once per connection, at the governor's pace: measured with
 * OpenSSL on the 2-core development machine, 4,096 iterations (RFC 7677's
 * minimum) take 1 ms, 64,000 15 ms, the bound
 * 100,000 about 23 ms.
 *
 * Ownership: every structure here is plain memory owned by its embedder;
 * secrets (salted password, keys) are wiped by sasl_scram_clear().
 */
#ifndef BATON_SESSIOND_SASL_MECH_H
#define BATON_SESSIOND_SASL_MECH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum sasl_mech {
	SASL_MECH_NONE = 0,
	SASL_MECH_PLAIN,
	SASL_MECH_EXTERNAL,
	SASL_MECH_SCRAM_SHA_256,
};

/* "PLAIN", "EXTERNAL", "SCRAM-SHA-256" (NULL for SASL_MECH_NONE). */
const char *sasl_mech_name(enum sasl_mech m);
/* The mechanism named `name` (case-insensitive), SASL_MECH_NONE if unknown. */
enum sasl_mech sasl_mech_parse(const char *name);
/* Whether the comma-separated list (the value of the `sasl=` cap or of
 * RPL_SASLMECHS) names m. An empty or NULL list says nothing: true. */
bool sasl_mech_in_list(const char *list, enum sasl_mech m);

/* Decoded bytes of one AUTHENTICATE message, each way. */
#define SASL_MSG_MAX 1024
/* Base64 characters per AUTHENTICATE line (sasl-3.1). */
#define SASL_CHUNK 400
#define SASL_B64_MAX (((SASL_MSG_MAX + 2) / 3) * 4)
#define SASL_SCRAM_MAX_ITER 100000

/* Emit one AUTHENTICATE parameter (a base64 chunk or "+") */
typedef void (*sasl_emit_fn)(void *arg, const char *param);

/* Frame `len` bytes as AUTHENTICATE parameters: base64 in chunks of
 * SASL_CHUNK characters, then "+" when the last chunk was full (or the
 * message is empty). Returns the number of parameters emitted, or
 * -EMSGSIZE past SASL_MSG_MAX (nothing emitted). */
int sasl_frame_out(const unsigned char *data, size_t len, sasl_emit_fn emit,
		   void *arg);

/* Reassembly of a message from the network. */
struct sasl_inbuf {
	char b64[SASL_B64_MAX + 1];
	size_t len;
};
/* Feed one AUTHENTICATE parameter. Returns 1 with the decoded message in
 * out[*outlen] (out holds SASL_MSG_MAX bytes; the buffer is reset), 0 when
 * more chunks must follow, -EMSGSIZE past SASL_B64_MAX characters, -EINVAL
 * for a chunk longer than SASL_CHUNK or that is not base64 (the buffer is
 * reset on errors too). */
int sasl_in_feed(struct sasl_inbuf *in, const char *param, unsigned char *out,
		 size_t *outlen);

/* PLAIN: authzid NUL authcid NUL passwd, authzid empty. Returns its length
 * or -EMSGSIZE when it does not fit out[cap]. */
int sasl_plain_message(const char *user, const char *pass, unsigned char *out,
		       size_t cap);

/* SCRAM-SHA-256 (RFC 5802, RFC 7677) client. Usernames are escaped
 * (',' -> "=2C", '=' -> "=3D"); no SASLprep (passwords are used as their
 * bytes: the same for ASCII passwords). */
struct sasl_scram {
	char nonce[64];          /* client nonce */
	char first_bare[SASL_MSG_MAX]; /* client-first-message-bare */
	unsigned char server_sig[32];
	int step;                /* 0 idle, 1 first sent, 2 final sent */
};
/* client-first-message into out (cap bytes). nonce NULL: a random one
 * (tests pass a fixed one). Returns its length, -EMSGSIZE or -EIO (no
 * randomness). */
int sasl_scram_first(struct sasl_scram *sc, const char *user,
		     const char *nonce, char *out, size_t cap);
/* server-first-message in, client-final-message out. Returns its length,
 * or -EPROTO (malformed, nonce not ours extended, mandatory extension),
 * -ERANGE (iteration count out of bounds), -EMSGSIZE, -EIO (OpenSSL). */
int sasl_scram_final(struct sasl_scram *sc, const char *server_first,
		     size_t len, const char *pass, char *out, size_t cap);
/* server-final-message: 0 when it proves the server knew the password,
 * -EACCES for a wrong signature or an "e=" error, -EPROTO malformed. */
int sasl_scram_verify(struct sasl_scram *sc, const char *server_final,
		      size_t len);
void sasl_scram_clear(struct sasl_scram *sc);

#endif
