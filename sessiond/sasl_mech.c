/* sessiond/sasl_mech.c: SASL mechanisms and AUTHENTICATE framing (see
 * sasl_mech.h for the contract). */
#include "sessiond/sasl_mech.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

static const char *const mech_names[] = {
	[SASL_MECH_NONE] = NULL,
	[SASL_MECH_PLAIN] = "PLAIN",
	[SASL_MECH_EXTERNAL] = "EXTERNAL",
	[SASL_MECH_SCRAM_SHA_256] = "SCRAM-SHA-256",
};

const char *sasl_mech_name(enum sasl_mech m)
{
	if ((size_t)m >= sizeof(mech_names) / sizeof(mech_names[0]))
		return NULL;
	return mech_names[m];
}

enum sasl_mech sasl_mech_parse(const char *name)
{
	for (size_t i = 1; name && i < sizeof(mech_names) / sizeof(mech_names[0]); i++)
		if (strcasecmp(name, mech_names[i]) == 0)
			return (enum sasl_mech)i;
	return SASL_MECH_NONE;
}

bool sasl_mech_in_list(const char *list, enum sasl_mech m)
{
	const char *want = sasl_mech_name(m);
	size_t wl;

	if (!want)
		return false;
	if (!list || !*list)
		return true;
	wl = strlen(want);
	for (const char *p = list; *p;) {
		size_t n = strcspn(p, ",");
		if (n == wl && strncasecmp(p, want, n) == 0)
			return true;
		p += n;
		if (*p == ',')
			p++;
	}
	return false;
}

/* ---- base64 (OpenSSL's block coder; padding checked here) ---- */

static size_t b64_encode(const unsigned char *in, size_t len, char *out)
{
	return (size_t)EVP_EncodeBlock((unsigned char *)out, in, (int)len);
}

/* Decode exactly `len` characters (a multiple of 4, standard alphabet,
 * padding only at the end). Returns the byte count or -EINVAL. */
static int b64_decode(const char *in, size_t len, unsigned char *out)
{
	size_t pad = 0;
	if (len % 4 != 0)
		return -EINVAL;
	if (len == 0)
		return 0;
	if (in[len - 1] == '=')
		pad++;
	if (in[len - 2] == '=')
		pad++;
	for (size_t i = 0; i < len - pad; i++)
		if (in[i] == '=')
			return -EINVAL;
	int n = EVP_DecodeBlock(out, (const unsigned char *)in, (int)len);
	if (n < 0 || (size_t)n < pad)
		return -EINVAL;
	return n - (int)pad;
}

int sasl_frame_out(const unsigned char *data, size_t len, sasl_emit_fn emit,
		   void *arg)
{
	char b64[SASL_B64_MAX + 1];
	char chunk[SASL_CHUNK + 1];
	int n = 0;

	if (len > SASL_MSG_MAX)
		return -EMSGSIZE;
	size_t bl = b64_encode(data, len, b64);
	size_t off = 0;
	while (off < bl) {
		size_t c = bl - off < SASL_CHUNK ? bl - off : SASL_CHUNK;
		memcpy(chunk, b64 + off, c);
		chunk[c] = '\0';
		emit(arg, chunk);
		n++;
		off += c;
	}
	/* An empty message, or one whose last chunk was full: "+" ends it. */
	if (bl % SASL_CHUNK == 0) {
		emit(arg, "+");
		n++;
	}
	return n;
}

int sasl_in_feed(struct sasl_inbuf *in, const char *param, unsigned char *out,
		 size_t *outlen)
{
	size_t pl = strlen(param);
	int rc;

	if (strcmp(param, "+") == 0) {
		pl = 0; /* ends the message (or is the empty message) */
	} else if (pl > SASL_CHUNK) {
		in->len = 0;
		return -EINVAL;
	} else if (in->len + pl > SASL_B64_MAX) {
		in->len = 0;
		return -EMSGSIZE;
	} else {
		memcpy(in->b64 + in->len, param, pl);
		in->len += pl;
		if (pl == SASL_CHUNK)
			return 0; /* a full chunk: more follows ("+" at least) */
	}
	/* Decoded in full here (EVP_DecodeBlock writes the padding's bytes
	 * too), then bounded to what the caller's buffer holds. */
	unsigned char tmp[SASL_B64_MAX / 4 * 3];
	in->b64[in->len] = '\0';
	rc = b64_decode(in->b64, in->len, tmp);
	in->len = 0;
	if (rc < 0)
		return rc;
	if (rc > SASL_MSG_MAX)
		return -EMSGSIZE;
	memcpy(out, tmp, (size_t)rc);
	*outlen = (size_t)rc;
	return 1;
}

int sasl_plain_message(const char *user, const char *pass, unsigned char *out,
		       size_t cap)
{
	size_t ul = strlen(user), pl = strlen(pass);
	if (ul + pl + 2 > cap || ul + pl + 2 > SASL_MSG_MAX)
		return -EMSGSIZE;
	/* authzid (empty) NUL authcid NUL passwd */
	out[0] = '\0';
	memcpy(out + 1, user, ul);
	out[1 + ul] = '\0';
	memcpy(out + 2 + ul, pass, pl);
	return (int)(ul + pl + 2);
}

/* ---- SCRAM-SHA-256 ---- */

static int scram_escape(const char *user, char *out, size_t cap)
{
	size_t n = 0;
	for (const char *p = user; *p; p++) {
		const char *rep = *p == ',' ? "=2C" : *p == '=' ? "=3D" : NULL;
		size_t rl = rep ? 3 : 1;
		if (n + rl >= cap)
			return -EMSGSIZE;
		if (rep)
			memcpy(out + n, rep, 3);
		else
			out[n] = *p;
		n += rl;
	}
	out[n] = '\0';
	return (int)n;
}

int sasl_scram_first(struct sasl_scram *sc, const char *user,
		     const char *nonce, char *out, size_t cap)
{
	char esc[SASL_MSG_MAX];
	int n;

	sasl_scram_clear(sc);
	if (nonce) {
		if (strlen(nonce) >= sizeof(sc->nonce))
			return -EMSGSIZE;
		snprintf(sc->nonce, sizeof(sc->nonce), "%s", nonce);
	} else {
		unsigned char rnd[24];
		if (RAND_bytes(rnd, sizeof(rnd)) != 1)
			return -EIO;
		/* 24 bytes: 32 base64 characters, none of them ',' */
		b64_encode(rnd, sizeof(rnd), sc->nonce);
	}
	if (scram_escape(user, esc, sizeof(esc)) < 0)
		return -EMSGSIZE;
	n = snprintf(sc->first_bare, sizeof(sc->first_bare), "n=%s,r=%s", esc,
		     sc->nonce);
	if (n < 0 || (size_t)n >= sizeof(sc->first_bare))
		return -EMSGSIZE;
	n = snprintf(out, cap, "n,,%s", sc->first_bare);
	if (n < 0 || (size_t)n >= cap)
		return -EMSGSIZE;
	sc->step = 1;
	return n;
}

/* The value of attribute `a` ("r", "s", "i", ...) of a SCRAM message in
 * m[len] into out: its length or -1. */
static int scram_attr(const char *m, size_t len, char a, char *out, size_t cap)
{
	size_t i = 0;
	while (i < len) {
		size_t e = i;
		while (e < len && m[e] != ',')
			e++;
		if (e - i >= 2 && m[i] == a && m[i + 1] == '=') {
			size_t vl = e - i - 2;
			if (vl >= cap)
				return -1;
			memcpy(out, m + i + 2, vl);
			out[vl] = '\0';
			return (int)vl;
		}
		i = e + 1;
	}
	return -1;
}

static bool hmac256(const unsigned char *key, size_t kl, const void *d,
		    size_t dl, unsigned char out[32])
{
	unsigned int ol = 32;
	return HMAC(EVP_sha256(), key, (int)kl, d, dl, out, &ol) != NULL && ol == 32;
}

int sasl_scram_final(struct sasl_scram *sc, const char *server_first,
		     size_t len, const char *pass, char *out, size_t cap)
{
	char nonce[SASL_MSG_MAX], salt64[SASL_MSG_MAX], iter[16];
	unsigned char salt[SASL_MSG_MAX];
	unsigned char salted[32], ckey[32], stored[32], csig[32], proof[32];
	unsigned char skey[32];
	char auth[3 * SASL_MSG_MAX + 8];
	char without[SASL_MSG_MAX + 16];
	char proof64[48];
	int rc = -EPROTO;

	if (sc->step != 1 || memchr(server_first, '\0', len))
		return -EPROTO;
	/* A mandatory extension ("m=") is one we do not know: refuse. */
	if (len >= 2 && server_first[0] == 'm' && server_first[1] == '=')
		return -EPROTO;
	if (scram_attr(server_first, len, 'r', nonce, sizeof(nonce)) < 0 ||
	    scram_attr(server_first, len, 's', salt64, sizeof(salt64)) < 0 ||
	    scram_attr(server_first, len, 'i', iter, sizeof(iter)) < 0)
		return -EPROTO;
	/* The server's nonce extends ours (and adds something). */
	size_t cn = strlen(sc->nonce);
	if (strncmp(nonce, sc->nonce, cn) != 0 || strlen(nonce) == cn)
		return -EPROTO;
	char *end;
	errno = 0;
	long it = strtol(iter, &end, 10);
	if (errno || *end || end == iter)
		return -EPROTO;
	if (it < 1 || it > SASL_SCRAM_MAX_ITER)
		return -ERANGE;
	int sl = b64_decode(salt64, strlen(salt64), salt);
	if (sl <= 0)
		return -EPROTO;
	int wl = snprintf(without, sizeof(without), "c=biws,r=%s", nonce);
	if (wl < 0 || (size_t)wl >= sizeof(without))
		return -EMSGSIZE;
	int al = snprintf(auth, sizeof(auth), "%s,%.*s,%s", sc->first_bare,
			  (int)len, server_first, without);
	if (al < 0 || (size_t)al >= sizeof(auth))
		return -EMSGSIZE;
	rc = -EIO;
	if (PKCS5_PBKDF2_HMAC(pass, (int)strlen(pass), salt, sl, (int)it,
			      EVP_sha256(), sizeof(salted), salted) != 1)
		goto out;
	if (!hmac256(salted, 32, "Client Key", 10, ckey) ||
	    SHA256(ckey, 32, stored) == NULL ||
	    !hmac256(stored, 32, auth, (size_t)al, csig) ||
	    !hmac256(salted, 32, "Server Key", 10, skey) ||
	    !hmac256(skey, 32, auth, (size_t)al, sc->server_sig))
		goto out;
	for (int i = 0; i < 32; i++)
		proof[i] = ckey[i] ^ csig[i];
	b64_encode(proof, 32, proof64);
	rc = snprintf(out, cap, "%s,p=%s", without, proof64);
	if (rc < 0 || (size_t)rc >= cap) {
		rc = -EMSGSIZE;
		goto out;
	}
	sc->step = 2;
out:
	OPENSSL_cleanse(salted, sizeof(salted));
	OPENSSL_cleanse(ckey, sizeof(ckey));
	OPENSSL_cleanse(stored, sizeof(stored));
	OPENSSL_cleanse(csig, sizeof(csig));
	OPENSSL_cleanse(skey, sizeof(skey));
	OPENSSL_cleanse(proof, sizeof(proof));
	return rc;
}

int sasl_scram_verify(struct sasl_scram *sc, const char *server_final,
		      size_t len)
{
	char v64[SASL_MSG_MAX];
	unsigned char v[SASL_MSG_MAX];

	if (sc->step != 2 || memchr(server_final, '\0', len))
		return -EPROTO;
	if (scram_attr(server_final, len, 'e', v64, sizeof(v64)) >= 0)
		return -EACCES;
	if (scram_attr(server_final, len, 'v', v64, sizeof(v64)) < 0)
		return -EPROTO;
	int n = b64_decode(v64, strlen(v64), v);
	if (n != 32)
		return -EPROTO;
	if (CRYPTO_memcmp(v, sc->server_sig, 32) != 0)
		return -EACCES;
	sc->step = 0;
	return 0;
}

void sasl_scram_clear(struct sasl_scram *sc)
{
	OPENSSL_cleanse(sc, sizeof(*sc));
}
