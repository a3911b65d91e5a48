/* tls/record.c: baton's TLS record layer (sans-I/O). See
 * record.h for the contract; RFC 8446 5 (TLS 1.3 records), RFC 5246
 * 6.2.3.3 + RFC 5288 (TLS 1.2 AES-GCM), RFC 7905 (ChaCha20-Poly1305).
 *
 * Cost model: thousands of these are saved and loaded in one migration, and
 * every IRC line goes through them. So: one EVP_CIPHER_CTX per direction,
 * keyed once per traffic key (a record only re-initialises the nonce);
 * ciphertext is decrypted straight into the plaintext queue and encrypted
 * straight into the output queue; the queues are byte buffers with a
 * consumed offset whose growth is amortised. No allocation per record.
 */
#include "tls/record.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "tls/kdf.h"
#include "tls.pb-c.h"

#define CT_APPLICATION_DATA 23
#define CT_ALERT 21
#define CT_HANDSHAKE 22
#define CT_CHANGE_CIPHER_SPEC 20

#define HS_HELLO_REQUEST 0
#define HS_NEW_SESSION_TICKET 4
#define HS_KEY_UPDATE 24

#define ALERT_CLOSE_NOTIFY 0
#define ALERT_UNEXPECTED_MESSAGE 10
#define ALERT_BAD_RECORD_MAC 20
#define ALERT_RECORD_OVERFLOW 22
#define ALERT_ILLEGAL_PARAMETER 47
#define ALERT_DECODE_ERROR 50
#define ALERT_PROTOCOL_VERSION 70
#define ALERT_INTERNAL_ERROR 80
#define ALERT_USER_CANCELED 90
#define ALERT_NO_RENEGOTIATION 100

#define TAG_LEN 16
#define HEADER_LEN 5
#define EXPLICIT_NONCE_LEN 8 /* TLS 1.2 AES-GCM */
/* Largest protected record body (after the 5-byte header). */
#define MAX_CT13 (TLS_RECORD_MAX_PLAINTEXT + 256)
#define MAX_CT12 (TLS_RECORD_MAX_PLAINTEXT + 2048)
/* Largest post-handshake message we buffer: a NewSessionTicket with a
 * maximal ticket (2^16-1) and extensions (2^16-1) plus its fixed fields. */
#define MAX_HS_MSG (2 * 65536 + 512)
/* Unacknowledged record boundaries kept before the older half is thinned
 * (see boundary_push). */
#define MAX_BOUNDARIES 1024
/* Records and post-handshake messages that carry no application data
 * (KeyUpdate, NewSessionTicket, HelloRequest, tolerated warning alerts,
 * empty application data records) allowed back to back; one more is a
 * fatal unexpected_message. They cost us work (a key derivation, an
 * answer) and move nothing; BoringSSL uses the same bound. */
#define MAX_IDLE_IN_ROW 32

/* A byte queue: live data is p[off, len). */
struct buf {
	uint8_t *p;
	size_t off, len, cap;
};

struct boundary {
	uint64_t cipher_end, plain_end;
};

struct tls_record {
	uint16_t version;
	enum tls_cipher cipher;
	bool is_server;
	struct tls_direction rd, wr;
	uint64_t write_explicit_nonce;
	/* Keyed with rd.key / wr.key; owned, freed with the layer. */
	EVP_CIPHER_CTX *rctx, *wctx;

	struct buf in;    /* ciphertext of an incomplete record */
	struct buf plain; /* decrypted application data not yet taken */
	struct buf hs;    /* an incomplete post-handshake message */
	struct buf out;   /* ciphertext not yet taken by the owner */

	bool dead, close_sent, close_received, key_update_pending;
	uint64_t rekey_after;
	/* Records/messages without application data since the last one with
	 * some (MAX_IDLE_IN_ROW). Not saved: a migration resets it, which a
	 * peer cannot trigger; exactness is not needed for a DoS bound. */
	unsigned idle_in_row;
	/* A no_renegotiation warning was written during this feed call: at
	 * most one per call, however many HelloRequests came. */
	bool reneg_refused;

	uint64_t plain_total, cipher_total, plain_covered;
	struct boundary *bd; /* bd[bd_off, bd_off + bd_len) live */
	size_t bd_off, bd_len, bd_cap;

	const char *error; /* static text or errbuf */
	char errbuf[64];
};

/* --- ciphers, fetched once -------------------------------------------- */

static EVP_CIPHER *fetched[4];
static pthread_once_t fetch_once = PTHREAD_ONCE_INIT;

static void fetch_ciphers(void)
{
	/* Explicit fetches: an EVP_aes_128_gcm() in EVP_CipherInit_ex would
	 * be fetched again at each keying (every load of a migrated
	 * connection). Never freed: they live as long as the library. */
	fetched[TLS_CIPHER_AES_128_GCM] = EVP_CIPHER_fetch(NULL, "AES-128-GCM", NULL);
	fetched[TLS_CIPHER_AES_256_GCM] = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
	fetched[TLS_CIPHER_CHACHA20_POLY1305] =
		EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
}

static const EVP_CIPHER *cipher_get(enum tls_cipher c)
{
	pthread_once(&fetch_once, fetch_ciphers);
	if (c < TLS_CIPHER_AES_128_GCM || c > TLS_CIPHER_CHACHA20_POLY1305)
		return NULL;
	return fetched[c];
}

const char *tls_cipher_name(enum tls_cipher c)
{
	switch (c) {
	case TLS_CIPHER_AES_128_GCM:
		return "TLS_AES_128_GCM_SHA256";
	case TLS_CIPHER_AES_256_GCM:
		return "TLS_AES_256_GCM_SHA384";
	case TLS_CIPHER_CHACHA20_POLY1305:
		return "TLS_CHACHA20_POLY1305_SHA256";
	}
	return "unknown";
}

static const char *alert_name(uint8_t desc)
{
	switch (desc) {
	case 0: return "close notify";
	case 10: return "unexpected message";
	case 20: return "bad record mac";
	case 21: return "decryption failed";
	case 22: return "record overflow";
	case 40: return "handshake failure";
	case 42: return "bad certificate";
	case 43: return "unsupported certificate";
	case 44: return "certificate revoked";
	case 45: return "certificate expired";
	case 46: return "certificate unknown";
	case 47: return "illegal parameter";
	case 48: return "unknown CA";
	case 49: return "access denied";
	case 50: return "decode error";
	case 51: return "decrypt error";
	case 70: return "protocol version";
	case 71: return "insufficient security";
	case 80: return "internal error";
	case 86: return "inappropriate fallback";
	case 90: return "user canceled";
	case 100: return "no renegotiation";
	case 109: return "missing extension";
	case 110: return "unsupported extension";
	case 112: return "unrecognized name";
	case 113: return "bad certificate status response";
	case 115: return "unknown PSK identity";
	case 116: return "certificate required";
	case 120: return "no application protocol";
	}
	return NULL;
}

/* --- byte queues ------------------------------------------------------ */

static size_t buf_avail(const struct buf *b)
{
	return b->len - b->off;
}

/* Room for n more bytes at p + len. Consumed bytes are reclaimed by moving
 * the live data down only when they are at least as many as the live ones,
 * so the moves stay amortised O(1) per byte. */
static const uint8_t *buf_data(const struct buf *b)
{
	return b->p ? b->p + b->off : NULL;
}

static int buf_reserve(struct buf *b, size_t n)
{
	size_t live = b->len - b->off, cap;
	uint8_t *np;

	if (b->cap - b->len >= n)
		return 0;
	if (b->off && b->off >= live) {
		memmove(b->p, b->p + b->off, live);
		b->off = 0;
		b->len = live;
		if (b->cap - b->len >= n)
			return 0;
	}
	if (n > SIZE_MAX / 2 - b->len)
		return -ENOMEM;
	cap = b->cap ? b->cap * 2 : 256;
	if (cap < b->len + n)
		cap = b->len + n;
	np = realloc(b->p, cap);
	if (!np)
		return -ENOMEM;
	b->p = np;
	b->cap = cap;
	return 0;
}

static int buf_append(struct buf *b, const void *d, size_t n)
{
	if (!n)
		return 0;
	if (buf_reserve(b, n) < 0)
		return -ENOMEM;
	memcpy(b->p + b->len, d, n);
	b->len += n;
	return 0;
}

static void buf_consume(struct buf *b, size_t n)
{
	if (n > buf_avail(b))
		n = buf_avail(b);
	b->off += n;
	if (b->off == b->len)
		b->off = b->len = 0;
}

static void buf_free(struct buf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

/* --- keys ------------------------------------------------------------- */

static size_t iv_len(const struct tls_record *t)
{
	if (t->version == TLS_VERSION_1_3)
		return 12;
	return tls12_cipher_fixed_iv_len(t->cipher);
}

/* (Re)key a direction's context with d->key; the nonce is set per record. */
static int ctx_key(const struct tls_record *t, EVP_CIPHER_CTX *ctx,
		   const struct tls_direction *d, int enc)
{
	const EVP_CIPHER *c = cipher_get(t->cipher);

	if (!c || EVP_CipherInit_ex(ctx, c, NULL, d->key, NULL, enc) <= 0)
		return -EIO;
	return 0;
}

/* TLS 1.3 KeyUpdate of one direction: next secret, its key and IV, seq 0. */
static int direction_update(struct tls_record *t, struct tls_direction *d,
			    EVP_CIPHER_CTX *ctx, int enc)
{
	if (tls13_next_traffic_secret(t->cipher, d->secret, d->secret_len) < 0 ||
	    tls13_traffic_key_iv(t->cipher, d->secret, d->secret_len, d->key,
				 d->iv) < 0)
		return -EIO;
	d->seq = 0;
	return ctx_key(t, ctx, d, enc);
}

/* The per-record nonce: iv XOR the sequence number left-padded to 12
 * bytes (TLS 1.3, TLS 1.2 ChaCha20); TLS 1.2 AES-GCM: the 4-byte salt and
 * the 8-byte explicit nonce. */
static void make_nonce(const struct tls_record *t, const struct tls_direction *d,
		       const uint8_t *explicit_nonce, uint8_t nonce[12])
{
	if (explicit_nonce) {
		memcpy(nonce, d->iv, 4);
		memcpy(nonce + 4, explicit_nonce, 8);
		return;
	}
	memcpy(nonce, d->iv, 12);
	for (int i = 0; i < 8; i++)
		nonce[4 + i] ^= (uint8_t)(d->seq >> (56 - 8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static bool gcm12(const struct tls_record *t)
{
	return t->version == TLS_VERSION_1_2 &&
	       t->cipher != TLS_CIPHER_CHACHA20_POLY1305;
}

/* --- delivery accounting ---------------------------------------------- */

/* Remember that the cipher stream up to cipher_end carries the plain stream
 * up to plain_end. When too many are unacknowledged (an owner that never
 * asks), every other entry of the older half is dropped: an offset then
 * finds an earlier boundary, so the answer can only be lower than the
 * truth, never claim bytes that were not covered. */
static void boundary_push(struct tls_record *t, uint64_t cipher_end,
			  uint64_t plain_end)
{
	if (t->bd_off + t->bd_len == t->bd_cap) {
		if (t->bd_off) {
			memmove(t->bd, t->bd + t->bd_off,
				t->bd_len * sizeof(*t->bd));
			t->bd_off = 0;
		}
		if (t->bd_len == t->bd_cap) {
			size_t cap = t->bd_cap ? t->bd_cap * 2 : 16;
			struct boundary *nb = NULL;

			if (t->bd_len < MAX_BOUNDARIES)
				nb = realloc(t->bd, cap * sizeof(*nb));
			if (nb) {
				t->bd = nb;
				t->bd_cap = cap;
			} else {
				size_t half = t->bd_len / 2, j = 0;

				for (size_t i = 0; i < t->bd_len; i++)
					if (i >= half || i % 2)
						t->bd[j++] = t->bd[i];
				t->bd_len = j;
			}
		}
		/* Growing failed and thinning freed nothing (0 or 1 entries):
		 * drop the oldest, or with no array at all this one. Either way
		 * an answer can only be lower than the truth. */
		if (t->bd_len == t->bd_cap) {
			if (!t->bd_cap)
				return;
			memmove(t->bd, t->bd + 1,
				(t->bd_len - 1) * sizeof(*t->bd));
			t->bd_len--;
		}
	}
	t->bd[t->bd_off + t->bd_len++] = (struct boundary){ cipher_end, plain_end };
}

uint64_t tls_record_plain_covered(struct tls_record *t, uint64_t cipher_off)
{
	while (t->bd_len && t->bd[t->bd_off].cipher_end <= cipher_off) {
		t->plain_covered = t->bd[t->bd_off].plain_end;
		t->bd_off++;
		t->bd_len--;
	}
	if (!t->bd_len)
		t->bd_off = 0;
	return t->plain_covered;
}

uint64_t tls_record_plain_total(const struct tls_record *t)
{
	return t->plain_total;
}

uint64_t tls_record_cipher_total(const struct tls_record *t)
{
	return t->cipher_total;
}

/* --- writing ---------------------------------------------------------- */

/* Protect one record of `type` holding data[0, len) (len at most
 * TLS_RECORD_MAX_PLAINTEXT) and append it to the output. The caller checked
 * that the sequence number may be used. */
static int write_record(struct tls_record *t, uint8_t type, const void *data,
			size_t len)
{
	bool v13 = t->version == TLS_VERSION_1_3, gcm = gcm12(t);
	size_t body = len + TAG_LEN + (v13 ? 1 : 0) + (gcm ? EXPLICIT_NONCE_LEN : 0);
	uint8_t nonce[12], aad[13], *rec, *p;
	size_t aad_len;
	int n;

	if (buf_reserve(&t->out, HEADER_LEN + body) < 0)
		return -ENOMEM;
	rec = t->out.p + t->out.len;
	rec[0] = v13 ? CT_APPLICATION_DATA : type;
	rec[1] = 3;
	rec[2] = 3;
	rec[3] = (uint8_t)(body >> 8);
	rec[4] = (uint8_t)body;
	p = rec + HEADER_LEN;
	if (v13) {
		memcpy(aad, rec, HEADER_LEN); /* the record header */
		aad_len = HEADER_LEN;
		make_nonce(t, &t->wr, NULL, nonce);
	} else {
		/* seq_num || type || version || length of the plaintext */
		put_u64(aad, t->wr.seq);
		aad[8] = type;
		aad[9] = 3;
		aad[10] = 3;
		aad[11] = (uint8_t)(len >> 8);
		aad[12] = (uint8_t)len;
		aad_len = 13;
		if (gcm) {
			put_u64(p, t->write_explicit_nonce);
			make_nonce(t, &t->wr, p, nonce);
			p += EXPLICIT_NONCE_LEN;
		} else {
			make_nonce(t, &t->wr, NULL, nonce);
		}
	}
	if (EVP_EncryptInit_ex(t->wctx, NULL, NULL, NULL, nonce) <= 0 ||
	    EVP_EncryptUpdate(t->wctx, NULL, &n, aad, (int)aad_len) <= 0)
		return -EIO;
	if (len) {
		if (EVP_EncryptUpdate(t->wctx, p, &n, data, (int)len) <= 0 ||
		    (size_t)n != len)
			return -EIO;
		p += len;
	}
	if (v13) {
		/* TLSInnerPlaintext: content || type, no padding */
		if (EVP_EncryptUpdate(t->wctx, p, &n, &type, 1) <= 0 || n != 1)
			return -EIO;
		p++;
	}
	if (EVP_EncryptFinal_ex(t->wctx, p, &n) <= 0 || n != 0 ||
	    EVP_CIPHER_CTX_ctrl(t->wctx, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, p) <= 0)
		return -EIO;

	t->out.len += HEADER_LEN + body;
	t->wr.seq++;
	if (gcm)
		t->write_explicit_nonce++;
	t->cipher_total += HEADER_LEN + body;
	if (type == CT_APPLICATION_DATA) {
		t->plain_total += len;
		boundary_push(t, t->cipher_total, t->plain_total);
	}
	return 0;
}

/* May we protect one more record? TLS 1.2 sequence numbers must never
 * wrap (the last usable one is 2^64 - 2: after it seq would be 2^64 - 1,
 * the value that marks exhaustion). */
static bool write_seq_ok(const struct tls_record *t)
{
	return t->wr.seq < UINT64_MAX;
}

/* Fatal: remember why, queue a fatal alert (level 2) unless nothing may be
 * written any more, and refuse everything from now on. alert < 0: none
 * (the peer's alert, or our sequence numbers are exhausted). */
static enum tls_record_status fail(struct tls_record *t, int alert,
				   const char *why)
{
	if (t->dead)
		return TLS_RECORD_ERROR;
	t->dead = true;
	t->error = why;
	if (alert >= 0 && !t->close_sent && write_seq_ok(t)) {
		uint8_t a[2] = { 2, (uint8_t)alert };

		(void)write_record(t, CT_ALERT, a, sizeof(a));
	}
	t->close_sent = true;
	return TLS_RECORD_ERROR;
}

/* Our KeyUpdate (TLS 1.3), then the new write key: every later record is
 * under it. */
static int send_key_update(struct tls_record *t, uint8_t request)
{
	uint8_t m[5] = { HS_KEY_UPDATE, 0, 0, 1, request };

	if (!write_seq_ok(t))
		return -ERANGE;
	if (write_record(t, CT_HANDSHAKE, m, sizeof(m)) < 0)
		return -EIO;
	t->key_update_pending = false;
	return direction_update(t, &t->wr, t->wctx, 1);
}

enum tls_record_status tls_record_write(struct tls_record *t, const void *data,
					size_t len)
{
	const uint8_t *d = data;

	if (t->dead || t->close_sent)
		return TLS_RECORD_ERROR;
	while (len) {
		size_t n = len < TLS_RECORD_MAX_PLAINTEXT ? len
							  : TLS_RECORD_MAX_PLAINTEXT;

		if (t->version == TLS_VERSION_1_3 &&
		    (t->wr.seq >= t->rekey_after || t->key_update_pending) &&
		    send_key_update(t, 0) < 0)
			return fail(t, ALERT_INTERNAL_ERROR, "key update failed");
		if (!write_seq_ok(t))
			return fail(t, -1, "sequence numbers exhausted");
		if (write_record(t, CT_APPLICATION_DATA, d, n) < 0)
			return fail(t, ALERT_INTERNAL_ERROR,
				    "record encryption failed");
		d += n;
		len -= n;
	}
	return TLS_RECORD_OK;
}

void tls_record_close(struct tls_record *t)
{
	uint8_t a[2] = { 1, ALERT_CLOSE_NOTIFY };

	if (t->dead || t->close_sent)
		return;
	t->close_sent = true;
	if (write_seq_ok(t))
		(void)write_record(t, CT_ALERT, a, sizeof(a));
}

/* --- reading ---------------------------------------------------------- */

/* One more record or message without application data (see
 * MAX_IDLE_IN_ROW); `why` names the kind for the error. */
static enum tls_record_status idle_one(struct tls_record *t, const char *why)
{
	if (++t->idle_in_row > MAX_IDLE_IN_ROW)
		return fail(t, ALERT_UNEXPECTED_MESSAGE, why);
	return TLS_RECORD_OK;
}

static enum tls_record_status handle_handshake(struct tls_record *t,
					       const uint8_t *d, size_t n)
{
	if (n == 0)
		return fail(t, ALERT_UNEXPECTED_MESSAGE,
			    "empty handshake record");
	if (buf_append(&t->hs, d, n) < 0)
		return fail(t, ALERT_INTERNAL_ERROR, "out of memory");
	while (buf_avail(&t->hs) >= 4) {
		const uint8_t *m = t->hs.p + t->hs.off;
		size_t mlen = (size_t)m[1] << 16 | (size_t)m[2] << 8 | m[3];
		size_t rest;

		if (mlen > MAX_HS_MSG)
			return fail(t, ALERT_DECODE_ERROR,
				    "handshake message too long");
		if (buf_avail(&t->hs) < 4 + mlen)
			break;
		/* bytes after this message: all from the current record */
		rest = buf_avail(&t->hs) - 4 - mlen;
		if (t->version == TLS_VERSION_1_3 && m[0] == HS_NEW_SESSION_TICKET) {
			/* only a server sends them */
			if (t->is_server)
				return fail(t, ALERT_UNEXPECTED_MESSAGE,
					    "NewSessionTicket received by a server");
			if (idle_one(t, "too many post-handshake messages in a row") !=
			    TLS_RECORD_OK)
				return TLS_RECORD_ERROR;
			/* ignored: we never resume (the handshake side sets no
			 * session cache) */
		} else if (t->version == TLS_VERSION_1_3 && m[0] == HS_KEY_UPDATE) {
			uint8_t req;

			/* before the key derivation it would cost */
			if (idle_one(t, "too many KeyUpdates in a row") !=
			    TLS_RECORD_OK)
				return TLS_RECORD_ERROR;
			if (mlen != 1)
				return fail(t, ALERT_DECODE_ERROR,
					    "bad KeyUpdate length");
			/* RFC 8446 5.1: handshake messages must not span a
			 * key change */
			if (rest)
				return fail(t, ALERT_UNEXPECTED_MESSAGE,
					    "KeyUpdate not at the end of its record");
			req = m[4];
			if (req > 1)
				return fail(t, ALERT_ILLEGAL_PARAMETER,
					    "bad KeyUpdate request");
			if (direction_update(t, &t->rd, t->rctx, 0) < 0)
				return fail(t, ALERT_INTERNAL_ERROR,
					    "key update failed");
			/* update_requested: answer with ours (not requesting)
			 * unless we closed. Only noted here: tls_record_feed
			 * sends one answer when it is done, however many
			 * requests came (RFC 8446 4.6.3 asks for one before
			 * our next application data). */
			if (req == 1 && !t->close_sent)
				t->key_update_pending = true;
		} else if (t->version == TLS_VERSION_1_2 &&
			   m[0] == HS_HELLO_REQUEST) {
			uint8_t a[2] = { 1, ALERT_NO_RENEGOTIATION };

			/* only a server sends them (RFC 5246 7.4.1.1) */
			if (t->is_server)
				return fail(t, ALERT_UNEXPECTED_MESSAGE,
					    "HelloRequest received by a server");
			if (idle_one(t, "too many post-handshake messages in a row") !=
			    TLS_RECORD_OK)
				return TLS_RECORD_ERROR;
			if (mlen != 0)
				return fail(t, ALERT_DECODE_ERROR,
					    "bad HelloRequest length");
			/* refused with a warning, at most one per feed call;
			 * the connection goes on */
			if (!t->reneg_refused && !t->close_sent &&
			    write_seq_ok(t)) {
				if (write_record(t, CT_ALERT, a, sizeof(a)) < 0)
					return fail(t, ALERT_INTERNAL_ERROR,
						    "record encryption failed");
				t->reneg_refused = true;
			}
		} else {
			snprintf(t->errbuf, sizeof(t->errbuf),
				 "unexpected handshake message %u", m[0]);
			return fail(t, ALERT_UNEXPECTED_MESSAGE, t->errbuf);
		}
		buf_consume(&t->hs, 4 + mlen);
	}
	return TLS_RECORD_OK;
}

static enum tls_record_status handle_alert(struct tls_record *t,
					   const uint8_t *d, size_t n)
{
	const char *name;

	if (n != 2)
		return fail(t, ALERT_DECODE_ERROR, "bad alert length");
	if (d[1] == ALERT_CLOSE_NOTIFY) {
		t->close_received = true;
		return TLS_RECORD_CLOSED;
	}
	/* Warnings that do not end the connection: user_canceled (precedes a
	 * close_notify), and in TLS 1.2 no_renegotiation (a peer refusing a
	 * renegotiation we never ask for). Every other alert is fatal. */
	if (d[0] == 1 && (d[1] == ALERT_USER_CANCELED ||
			  (t->version == TLS_VERSION_1_2 &&
			   d[1] == ALERT_NO_RENEGOTIATION)))
		return idle_one(t, "too many warning alerts in a row");
	name = alert_name(d[1]);
	if (name)
		snprintf(t->errbuf, sizeof(t->errbuf), "peer alert: %s", name);
	else
		snprintf(t->errbuf, sizeof(t->errbuf), "peer alert: %u", d[1]);
	return fail(t, -1, t->errbuf); /* never answer an alert */
}

/* Validate the header of the next record (as soon as its 5 bytes are
 * there, so an oversized record fails before it is buffered). */
static enum tls_record_status check_header(struct tls_record *t,
					   const uint8_t *h)
{
	size_t rlen = (size_t)h[3] << 8 | h[4];
	bool v13 = t->version == TLS_VERSION_1_3;
	size_t min = TAG_LEN + (v13 ? 1 : 0) + (gcm12(t) ? EXPLICIT_NONCE_LEN : 0);

	if (h[0] == CT_CHANGE_CIPHER_SPEC)
		return fail(t, ALERT_UNEXPECTED_MESSAGE,
			    "change_cipher_spec after the handshake");
	if (v13 ? h[0] != CT_APPLICATION_DATA
		: (h[0] != CT_APPLICATION_DATA && h[0] != CT_ALERT &&
		   h[0] != CT_HANDSHAKE)) {
		snprintf(t->errbuf, sizeof(t->errbuf),
			 "unexpected record type %u", h[0]);
		return fail(t, ALERT_UNEXPECTED_MESSAGE, t->errbuf);
	}
	if (h[1] != 3 || h[2] != 3)
		return fail(t, ALERT_PROTOCOL_VERSION, "bad record version");
	if (rlen > (v13 ? MAX_CT13 : MAX_CT12))
		return fail(t, ALERT_RECORD_OVERFLOW, "record too long");
	if (rlen < min)
		return fail(t, ALERT_DECODE_ERROR, "record too short");
	return TLS_RECORD_OK;
}

/* Decrypt and dispatch one complete record (header checked). The
 * plaintext is decrypted into the free space of the plaintext queue and
 * committed there only if it is application data. */
static enum tls_record_status open_record(struct tls_record *t,
					  const uint8_t *rec, size_t rlen)
{
	bool v13 = t->version == TLS_VERSION_1_3, gcm = gcm12(t);
	const uint8_t *ct = rec + HEADER_LEN;
	size_t ct_len = rlen - TAG_LEN, n_content;
	uint8_t nonce[12], aad[13], type, *dst;
	size_t aad_len;
	int n, m;

	if (t->rd.seq == UINT64_MAX)
		return fail(t, ALERT_INTERNAL_ERROR,
			    "read sequence numbers exhausted");
	if (v13) {
		memcpy(aad, rec, HEADER_LEN);
		aad_len = HEADER_LEN;
		make_nonce(t, &t->rd, NULL, nonce);
	} else {
		if (gcm) {
			make_nonce(t, &t->rd, ct, nonce);
			ct += EXPLICIT_NONCE_LEN;
			ct_len -= EXPLICIT_NONCE_LEN;
		} else {
			make_nonce(t, &t->rd, NULL, nonce);
		}
		if (ct_len > TLS_RECORD_MAX_PLAINTEXT)
			return fail(t, ALERT_RECORD_OVERFLOW,
				    "record plaintext too long");
		put_u64(aad, t->rd.seq);
		aad[8] = rec[0];
		aad[9] = rec[1];
		aad[10] = rec[2];
		aad[11] = (uint8_t)(ct_len >> 8);
		aad[12] = (uint8_t)ct_len;
		aad_len = 13;
	}
	if (buf_reserve(&t->plain, ct_len + 1) < 0)
		return fail(t, ALERT_INTERNAL_ERROR, "out of memory");
	dst = t->plain.p + t->plain.len;
	if (EVP_DecryptInit_ex(t->rctx, NULL, NULL, NULL, nonce) <= 0 ||
	    EVP_DecryptUpdate(t->rctx, NULL, &n, aad, (int)aad_len) <= 0 ||
	    EVP_DecryptUpdate(t->rctx, dst, &n, ct, (int)ct_len) <= 0 ||
	    EVP_CIPHER_CTX_ctrl(t->rctx, EVP_CTRL_AEAD_SET_TAG, TAG_LEN,
				(void *)(ct + ct_len)) <= 0 ||
	    EVP_DecryptFinal_ex(t->rctx, dst + n, &m) <= 0 ||
	    (size_t)(n + m) != ct_len)
		return fail(t, ALERT_BAD_RECORD_MAC, "bad record mac");
	t->rd.seq++;

	if (v13) {
		/* TLSInnerPlaintext: content || type || zeros */
		size_t i = ct_len;

		if (ct_len > TLS_RECORD_MAX_PLAINTEXT + 1)
			return fail(t, ALERT_RECORD_OVERFLOW,
				    "record plaintext too long");
		while (i && dst[i - 1] == 0)
			i--;
		if (!i)
			return fail(t, ALERT_UNEXPECTED_MESSAGE,
				    "record without content type");
		type = dst[i - 1];
		n_content = i - 1;
	} else {
		type = rec[0];
		n_content = ct_len;
	}

	/* RFC 8446 5.1: handshake messages are not interleaved with other
	 * record types */
	if (type != CT_HANDSHAKE && buf_avail(&t->hs))
		return fail(t, ALERT_UNEXPECTED_MESSAGE,
			    "handshake message interrupted");
	switch (type) {
	case CT_APPLICATION_DATA:
		if (!n_content)
			return idle_one(t, "too many empty records in a row");
		t->plain.len += n_content; /* committed */
		t->idle_in_row = 0;
		return TLS_RECORD_OK;
	case CT_ALERT:
		return handle_alert(t, dst, n_content);
	case CT_HANDSHAKE:
		return handle_handshake(t, dst, n_content);
	case CT_CHANGE_CIPHER_SPEC:
		return fail(t, ALERT_UNEXPECTED_MESSAGE,
			    "change_cipher_spec after the handshake");
	}
	snprintf(t->errbuf, sizeof(t->errbuf), "unexpected content type %u",
		 type);
	return fail(t, ALERT_UNEXPECTED_MESSAGE, t->errbuf);
}

enum tls_record_status tls_record_feed(struct tls_record *t, const void *data,
				       size_t len)
{
	enum tls_record_status st = TLS_RECORD_OK;

	if (t->dead)
		return TLS_RECORD_ERROR;
	if (t->close_received)
		return TLS_RECORD_CLOSED; /* nothing counts after close_notify */
	t->reneg_refused = false;
	if (buf_append(&t->in, data, len) < 0)
		return fail(t, ALERT_INTERNAL_ERROR, "out of memory");
	while (st == TLS_RECORD_OK && buf_avail(&t->in) >= HEADER_LEN) {
		const uint8_t *h = t->in.p + t->in.off;
		size_t rlen = (size_t)h[3] << 8 | h[4];

		st = check_header(t, h);
		if (st != TLS_RECORD_OK || buf_avail(&t->in) < HEADER_LEN + rlen)
			break;
		st = open_record(t, h, rlen);
		buf_consume(&t->in, HEADER_LEN + rlen);
	}
	/* One answer to every update_requested of this call (a dead layer
	 * sent its alert under the old key: no answer). */
	if (!t->dead && t->key_update_pending && !t->close_sent &&
	    send_key_update(t, 0) < 0)
		st = fail(t, ALERT_INTERNAL_ERROR, "key update failed");
	if (t->dead || t->close_received)
		buf_free(&t->in);
	return st;
}

const uint8_t *tls_record_plaintext(const struct tls_record *t, size_t *len)
{
	*len = buf_avail(&t->plain);
	return buf_data(&t->plain);
}

void tls_record_consume_plaintext(struct tls_record *t, size_t n)
{
	buf_consume(&t->plain, n);
}

const uint8_t *tls_record_output(const struct tls_record *t, size_t *len)
{
	*len = buf_avail(&t->out);
	return buf_data(&t->out);
}

void tls_record_consume_output(struct tls_record *t, size_t n)
{
	buf_consume(&t->out, n);
}

/* --- life cycle ------------------------------------------------------- */

void tls_record_set_rekey_after(struct tls_record *t, uint64_t records)
{
	t->rekey_after = records ? records : 1;
}

bool tls_record_is_dead(const struct tls_record *t)
{
	return t->dead;
}

bool tls_record_peer_closed(const struct tls_record *t)
{
	return t->close_received;
}

const char *tls_record_error(const struct tls_record *t)
{
	return t->dead ? t->error : NULL;
}

uint16_t tls_record_version(const struct tls_record *t)
{
	return t->version;
}

enum tls_cipher tls_record_cipher(const struct tls_record *t)
{
	return t->cipher;
}

void tls_record_free(struct tls_record *t)
{
	if (!t)
		return;
	EVP_CIPHER_CTX_free(t->rctx); /* wipes the key schedule */
	EVP_CIPHER_CTX_free(t->wctx);
	buf_free(&t->in);
	buf_free(&t->plain);
	buf_free(&t->hs);
	buf_free(&t->out);
	free(t->bd);
	OPENSSL_cleanse(t, sizeof(*t));
	free(t);
}

/* A layer without keys yet: NULL for an unsupported version or cipher. */
static struct tls_record *record_alloc(uint32_t version, uint32_t cipher)
{
	struct tls_record *t;

	if ((version != TLS_VERSION_1_2 && version != TLS_VERSION_1_3) ||
	    !cipher_get((enum tls_cipher)cipher))
		return NULL;
	t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->version = (uint16_t)version;
	t->cipher = (enum tls_cipher)cipher;
	t->rekey_after = TLS_RECORD_REKEY_AFTER;
	t->rctx = EVP_CIPHER_CTX_new();
	t->wctx = EVP_CIPHER_CTX_new();
	if (!t->rctx || !t->wctx) {
		tls_record_free(t);
		return NULL;
	}
	return t;
}

static bool all_zero(const uint8_t *p, size_t n)
{
	uint8_t acc = 0;

	for (size_t i = 0; i < n; i++)
		acc |= p[i];
	return acc == 0;
}

struct tls_record *tls_record_new(const struct tls_record_params *p)
{
	struct tls_record *t = record_alloc(p->version, p->cipher);
	size_t hlen = tls13_cipher_hash_len(p->cipher);
	struct tls_direction *dirs[2];

	if (!t)
		return NULL;
	t->is_server = p->is_server;
	t->rd = p->read;
	t->wr = p->write;
	dirs[0] = &t->rd;
	dirs[1] = &t->wr;
	for (int i = 0; i < 2; i++) {
		struct tls_direction *d = dirs[i];

		if (t->version == TLS_VERSION_1_3) {
			if (d->secret_len != hlen)
				goto fail;
			/* key and iv left zero: derived from the secret */
			if (all_zero(d->key, sizeof(d->key)) &&
			    all_zero(d->iv, sizeof(d->iv)) &&
			    tls13_traffic_key_iv(t->cipher, d->secret,
						 d->secret_len, d->key,
						 d->iv) < 0)
				goto fail;
		} else {
			OPENSSL_cleanse(d->secret, sizeof(d->secret));
			d->secret_len = 0;
		}
	}
	if (gcm12(t))
		t->write_explicit_nonce = p->write_explicit_nonce;
	if (ctx_key(t, t->rctx, &t->rd, 0) < 0 ||
	    ctx_key(t, t->wctx, &t->wr, 1) < 0)
		goto fail;
	return t;
fail:
	tls_record_free(t);
	return NULL;
}

/* --- serialization ---------------------------------------------------- */

static int dup_bytes(ProtobufCBinaryData *b, const void *p, size_t n)
{
	b->len = n;
	b->data = NULL;
	if (!n)
		return 0;
	b->data = malloc(n);
	if (!b->data)
		return -ENOMEM;
	memcpy(b->data, p, n);
	return 0;
}

static void wipe_bytes(ProtobufCBinaryData *b)
{
	if (b->data)
		OPENSSL_cleanse(b->data, b->len);
	free(b->data);
	b->data = NULL;
	b->len = 0;
}

static Baton__Tls__TlsDirection *save_direction(const struct tls_record *t,
						const struct tls_direction *d)
{
	Baton__Tls__TlsDirection *o = malloc(sizeof(*o));

	if (!o)
		return NULL;
	baton__tls__tls_direction__init(o);
	o->seq = d->seq;
	if (dup_bytes(&o->key, d->key, tls_cipher_key_len(t->cipher)) < 0 ||
	    dup_bytes(&o->iv, d->iv, iv_len(t)) < 0 ||
	    dup_bytes(&o->secret, d->secret, d->secret_len) < 0) {
		wipe_bytes(&o->key);
		wipe_bytes(&o->iv);
		wipe_bytes(&o->secret);
		free(o);
		return NULL;
	}
	o->has_secret = d->secret_len > 0;
	return o;
}

static void free_direction(Baton__Tls__TlsDirection *d)
{
	if (!d)
		return;
	wipe_bytes(&d->secret);
	wipe_bytes(&d->key);
	wipe_bytes(&d->iv);
	free(d);
}

void tls_record_state_free_contents(Baton__Tls__TlsState *st)
{
	if (!st)
		return;
	free_direction(st->read);
	free_direction(st->write);
	free(st->input.data);
	free(st->plaintext.data);
	free(st->handshake.data);
	free(st->output.data);
	free(st->boundary_cipher);
	free(st->boundary_plain);
	baton__tls__tls_state__init(st);
}

static int save_impl(const struct tls_record *t, Baton__Tls__TlsState *st,
		     bool boundaries)
{
	baton__tls__tls_state__init(st);
	/* A dead layer has nothing worth carrying: its owner closes it. */
	if (t->dead)
		return -EPIPE;
	st->version = t->version;
	st->cipher = t->cipher;
	st->has_is_server = true;
	st->is_server = t->is_server;
	st->read = save_direction(t, &t->rd);
	st->write = save_direction(t, &t->wr);
	if (!st->read || !st->write)
		goto nomem;
	if (gcm12(t)) {
		st->has_write_explicit_nonce = true;
		st->write_explicit_nonce = t->write_explicit_nonce;
	}
	if (dup_bytes(&st->input, buf_data(&t->in), buf_avail(&t->in)) < 0 ||
	    dup_bytes(&st->plaintext, buf_data(&t->plain),
		      buf_avail(&t->plain)) < 0 ||
	    dup_bytes(&st->handshake, buf_data(&t->hs), buf_avail(&t->hs)) < 0 ||
	    dup_bytes(&st->output, buf_data(&t->out), buf_avail(&t->out)) < 0)
		goto nomem;
	st->has_input = st->input.len > 0;
	st->has_plaintext = st->plaintext.len > 0;
	st->has_handshake = st->handshake.len > 0;
	st->has_output = st->output.len > 0;
	st->has_close_sent = t->close_sent;
	st->close_sent = t->close_sent;
	st->has_close_received = t->close_received;
	st->close_received = t->close_received;
	st->has_key_update_pending = t->key_update_pending;
	st->key_update_pending = t->key_update_pending;
	st->has_plain_total = st->has_cipher_total = st->has_plain_covered = true;
	st->plain_total = t->plain_total;
	st->cipher_total = t->cipher_total;
	st->plain_covered = t->plain_covered;
	if (boundaries && t->bd_len) {
		st->boundary_cipher = malloc(t->bd_len * sizeof(uint64_t));
		st->boundary_plain = malloc(t->bd_len * sizeof(uint64_t));
		if (!st->boundary_cipher || !st->boundary_plain)
			goto nomem;
		for (size_t i = 0; i < t->bd_len; i++) {
			st->boundary_cipher[i] = t->bd[t->bd_off + i].cipher_end;
			st->boundary_plain[i] = t->bd[t->bd_off + i].plain_end;
		}
		st->n_boundary_cipher = st->n_boundary_plain = t->bd_len;
	}
	return 0;
nomem:
	tls_record_state_free_contents(st);
	return -ENOMEM;
}

int tls_record_save(const struct tls_record *t, Baton__Tls__TlsState *st)
{
	return save_impl(t, st, true);
}

int tls_record_save_progress(const struct tls_record *t,
			     Baton__Tls__TlsState *st)
{
	/* Without the boundaries, tls_record_plain_covered() answers
	 * plain_covered until new records are written: low, never high. */
	return save_impl(t, st, false);
}

static const char *load_direction(struct tls_record *t,
				  const Baton__Tls__TlsDirection *s,
				  struct tls_direction *d)
{
	if (!s)
		return "missing keys";
	if (s->key.len != tls_cipher_key_len(t->cipher) || !s->key.data)
		return "bad key length";
	if (s->iv.len != iv_len(t) || !s->iv.data)
		return "bad iv length";
	if (t->version == TLS_VERSION_1_3) {
		if (!s->has_secret ||
		    s->secret.len != tls13_cipher_hash_len(t->cipher) ||
		    !s->secret.data)
			return "bad secret length";
		memcpy(d->secret, s->secret.data, s->secret.len);
		d->secret_len = s->secret.len;
	} else if (s->has_secret && s->secret.len) {
		return "bad secret length";
	}
	memcpy(d->key, s->key.data, s->key.len);
	memcpy(d->iv, s->iv.data, s->iv.len);
	d->seq = s->seq;
	return NULL;
}

struct tls_record *tls_record_load(const Baton__Tls__TlsState *st,
				   const char **err)
{
	struct tls_record *t;
	const char *e = NULL;
	size_t max_ct;

	if (!st) {
		*err = "no state";
		return NULL;
	}
	if (st->version != TLS_VERSION_1_2 && st->version != TLS_VERSION_1_3) {
		*err = "unsupported TLS version";
		return NULL;
	}
	t = record_alloc(st->version, st->cipher);
	if (!t) {
		*err = cipher_get((enum tls_cipher)st->cipher) ? "out of memory"
							       : "unsupported cipher";
		return NULL;
	}
	t->is_server = st->has_is_server && st->is_server;
	if ((e = load_direction(t, st->read, &t->rd)) ||
	    (e = load_direction(t, st->write, &t->wr)))
		goto fail;
	if (gcm12(t))
		t->write_explicit_nonce = st->has_write_explicit_nonce
						  ? st->write_explicit_nonce : 0;

	/* Partial input: less than one record, with a header we accept. */
	max_ct = t->version == TLS_VERSION_1_3 ? MAX_CT13 : MAX_CT12;
	if (st->has_input && st->input.len) {
		const uint8_t *h = st->input.data;

		if (!h || st->input.len > HEADER_LEN + max_ct) {
			e = "bad partial record";
			goto fail;
		}
		if (st->input.len >= HEADER_LEN &&
		    st->input.len >= HEADER_LEN + ((size_t)h[3] << 8 | h[4])) {
			e = "input holds a complete record";
			goto fail;
		}
	}
	if (st->has_handshake && st->handshake.len) {
		const uint8_t *m = st->handshake.data;

		if (!m || st->handshake.len > 4 + MAX_HS_MSG ||
		    (st->handshake.len >= 4 &&
		     st->handshake.len >= 4 + ((size_t)m[1] << 16 |
					       (size_t)m[2] << 8 | m[3]))) {
			e = "bad partial handshake message";
			goto fail;
		}
	}
	if ((st->has_plaintext && st->plaintext.len && !st->plaintext.data) ||
	    (st->has_output && st->output.len && !st->output.data)) {
		e = "bad buffers";
		goto fail;
	}
	t->close_sent = st->has_close_sent && st->close_sent;
	t->close_received = st->has_close_received && st->close_received;
	t->key_update_pending = st->has_key_update_pending &&
				st->key_update_pending;
	if (t->key_update_pending && t->version != TLS_VERSION_1_3) {
		e = "KeyUpdate pending in TLS 1.2";
		goto fail;
	}
	t->plain_total = st->has_plain_total ? st->plain_total : 0;
	t->cipher_total = st->has_cipher_total ? st->cipher_total : 0;
	t->plain_covered = st->has_plain_covered ? st->plain_covered : 0;
	if (st->n_boundary_cipher != st->n_boundary_plain ||
	    t->plain_covered > t->plain_total) {
		e = "bad record boundaries";
		goto fail;
	}
	if (st->n_boundary_cipher) {
		uint64_t lc = 0, lp = t->plain_covered;

		t->bd = malloc(st->n_boundary_cipher * sizeof(*t->bd));
		if (!t->bd) {
			e = "out of memory";
			goto fail;
		}
		t->bd_cap = st->n_boundary_cipher;
		for (size_t i = 0; i < st->n_boundary_cipher; i++) {
			uint64_t c = st->boundary_cipher[i], p = st->boundary_plain[i];

			if ((i && c <= lc) || p <= lp || c > t->cipher_total ||
			    p > t->plain_total) {
				e = "bad record boundaries";
				goto fail;
			}
			t->bd[i] = (struct boundary){ c, p };
			lc = c;
			lp = p;
		}
		t->bd_len = st->n_boundary_cipher;
	}

	if (ctx_key(t, t->rctx, &t->rd, 0) < 0 ||
	    ctx_key(t, t->wctx, &t->wr, 1) < 0) {
		e = "cipher setup failed";
		goto fail;
	}
	if ((st->has_input &&
	     buf_append(&t->in, st->input.data, st->input.len) < 0) ||
	    (st->has_plaintext &&
	     buf_append(&t->plain, st->plaintext.data, st->plaintext.len) < 0) ||
	    (st->has_handshake &&
	     buf_append(&t->hs, st->handshake.data, st->handshake.len) < 0) ||
	    (st->has_output &&
	     buf_append(&t->out, st->output.data, st->output.len) < 0)) {
		e = "out of memory";
		goto fail;
	}
	/* A sender that deferred its answer to update_requested: ours goes
	 * out now, before anything else we write. */
	if (t->key_update_pending && !t->close_sent &&
	    send_key_update(t, 0) < 0) {
		e = "key update failed";
		goto fail;
	}
	return t;
fail:
	*err = e;
	tls_record_free(t);
	return NULL;
}
