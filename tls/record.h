/* tls/record.h: baton's own TLS record layer (sans-I/O), used for
 * every byte of a TLS connection after OpenSSL finished the handshake
 * (handshake.h). Its whole state is ours, so it can be serialized and
 * carried to another process with the socket (docs/design.md §4).
 *
 * No I/O and no IRC knowledge: the owner reads ciphertext from the socket and
 * feeds it in (tls_record_feed), takes decrypted plaintext out
 * (tls_record_plaintext / tls_record_consume_plaintext), hands plaintext in
 * for sending (tls_record_write) and writes the produced ciphertext
 * (tls_record_output / tls_record_consume_output).
 *
 * Supported: TLS 1.3 (TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384,
 * TLS_CHACHA20_POLY1305_SHA256) and TLS 1.2 ECDHE with AES-128/256-GCM and
 * CHACHA20-POLY1305 (RFC 5288, RFC 7905). Post-handshake: KeyUpdate both ways
 * (update_requested answered once per tls_record_feed call, however many
 * came), NewSessionTicket ignored by a client (unexpected_message at a
 * server), alerts (close_notify sent and honoured; fatal alerts end the
 * connection), records fragmented at 16 KiB. Write-side usage limits only:
 * TLS 1.3 updates our write key before TLS_RECORD_REKEY_AFTER records; TLS
 * 1.2 has no key update and defines no usage limit (AES-GCM included) short
 * of the 2^64 sequence space, so the layer only stops writing (fatal)
 * before our sequence number would wrap. Read-side limits are not enforced (the peer
 * keeps its own; we only refuse a read sequence number that would wrap).
 * Renegotiation (TLS 1.2 HelloRequest) is refused by a client with a
 * no_renegotiation warning alert (at most one per feed call) and is an
 * unexpected_message at a server.
 *
 * Flood limits (as BoringSSL): more than 32 records or post-handshake
 * messages in a row without application data (KeyUpdate, NewSessionTicket,
 * HelloRequest, tolerated warning alerts, empty application data records)
 * are a fatal unexpected_message ("too many ... in a row"). So one feed
 * call writes at most a no_renegotiation warning, one KeyUpdate and a fatal
 * alert, whatever its size. The count is not saved: a migration resets it.
 *
 * Errors: a malformed or unauthentic record queues the matching fatal alert
 * (decode_error, bad_record_mac, record_overflow, unexpected_message,
 * decrypt_error...) in the output, and the layer is then dead: every later
 * call fails with the same error. Never aborts, never reads past its input.
 *
 * Secrets: tls_record_free() wipes keys (OPENSSL_cleanse). Saved state
 * contains traffic secrets: it travels only over the handoff socket, never
 * to disk.
 */
#ifndef BATON_TLS_RECORD_H
#define BATON_TLS_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct Baton__Tls__TlsState; /* proto/tls.proto */

#define TLS_RECORD_MAX_PLAINTEXT 16384
/* Our write key is updated (TLS 1.3) after this many records (far below
 * the AES-GCM confidentiality limit of 2^24.5 full records, RFC 8446 5.5). */
#define TLS_RECORD_REKEY_AFTER (1ull << 23)

enum tls_cipher {
	TLS_CIPHER_AES_128_GCM = 1,
	TLS_CIPHER_AES_256_GCM = 2,
	TLS_CIPHER_CHACHA20_POLY1305 = 3,
};

#define TLS_VERSION_1_2 0x0303
#define TLS_VERSION_1_3 0x0304

/* One direction's keys. TLS 1.3: secret (hash length: 32 for SHA-256, 48 for
 * SHA-384) is the current traffic secret; key and iv are derived from it (the
 * caller may leave them zero: tls_record_new() derives them). TLS 1.2:
 * secret unused; key and iv from the key block (iv: 4 bytes of fixed salt for
 * AES-GCM, 12 bytes for ChaCha20-Poly1305). */
struct tls_direction {
	uint8_t secret[48];
	size_t secret_len;
	uint8_t key[32];
	uint8_t iv[12];
	uint64_t seq; /* sequence number of the next record */
};

struct tls_record_params {
	uint16_t version;          /* TLS_VERSION_1_2 or TLS_VERSION_1_3 */
	enum tls_cipher cipher;
	bool is_server;            /* our role: a server refuses
				      NewSessionTicket and HelloRequest */
	struct tls_direction read, write;
	/* TLS 1.2 AES-GCM only: the explicit nonce of our next record
	 * (OpenSSL starts its counter at a random value and increments it
	 * per record; we continue it). */
	uint64_t write_explicit_nonce;
};

enum tls_record_status {
	TLS_RECORD_OK = 0,
	TLS_RECORD_CLOSED = 1,     /* peer sent close_notify: no more input */
	TLS_RECORD_ERROR = -1,     /* fatal: alert queued (or received) */
};

struct tls_record;

/* A record layer with these keys (copied; the caller wipes its copy).
 * NULL on allocation failure or unsupported version/cipher. */
struct tls_record *tls_record_new(const struct tls_record_params *p);
void tls_record_free(struct tls_record *t); /* wipes; accepts NULL */

/* Ciphertext from the socket (any split: partial records are kept).
 * Decrypts every complete record: application data goes to the plaintext
 * queue, post-handshake messages are handled (any KeyUpdate with
 * update_requested: one KeyUpdate of ours queued in the output at the end
 * of the call), alerts end the connection. Returns TLS_RECORD_OK, TLS_RECORD_CLOSED (close_notify seen;
 * plaintext before it is still available) or TLS_RECORD_ERROR. */
enum tls_record_status tls_record_feed(struct tls_record *t, const void *data,
				       size_t len);

/* Decrypted application data not yet taken. */
const uint8_t *tls_record_plaintext(const struct tls_record *t, size_t *len);
void tls_record_consume_plaintext(struct tls_record *t, size_t n);

/* Encrypt len bytes of application data (split into records of at most
 * TLS_RECORD_MAX_PLAINTEXT) and append them to the output. TLS_RECORD_ERROR
 * on a dead layer or after close. */
enum tls_record_status tls_record_write(struct tls_record *t, const void *data,
					size_t len);

/* Queue close_notify (once); nothing may be written after it. */
void tls_record_close(struct tls_record *t);

/* Ciphertext waiting to be written to the socket. */
const uint8_t *tls_record_output(const struct tls_record *t, size_t *len);
void tls_record_consume_output(struct tls_record *t, size_t n);

/* Delivery accounting across the encryption. Byte streams: "plain" counts
 * application bytes ever given to tls_record_write(), "cipher" counts
 * ciphertext bytes ever produced. tls_record_plain_covered(t, cipher_off)
 * returns how much of the plain stream is contained in complete records
 * within the first cipher_off bytes of the cipher stream (e.g. what the
 * peer's TCP acknowledged). Only offsets at or past the last value asked
 * are valid (bookkeeping of older records is dropped). If more than 1024
 * records stay unasked, older boundaries are thinned: answers may then be
 * lower than exact (never higher), and exact again at cipher_total. If
 * memory for the bookkeeping cannot be had, boundaries are dropped: again
 * answers may be low, never high. */
uint64_t tls_record_plain_total(const struct tls_record *t);
uint64_t tls_record_cipher_total(const struct tls_record *t);
uint64_t tls_record_plain_covered(struct tls_record *t, uint64_t cipher_off);

/* Tests only: update our write key after this many records instead of
 * TLS_RECORD_REKEY_AFTER (TLS 1.3), so the automatic KeyUpdate can be
 * exercised. Not saved: a loaded layer uses the default again. */
void tls_record_set_rekey_after(struct tls_record *t, uint64_t records);

bool tls_record_is_dead(const struct tls_record *t);
bool tls_record_peer_closed(const struct tls_record *t);
/* The fatal reason ("bad record mac", "peer alert: handshake failure",
 * ...), or NULL while healthy. */
const char *tls_record_error(const struct tls_record *t);
uint16_t tls_record_version(const struct tls_record *t);
enum tls_cipher tls_record_cipher(const struct tls_record *t);
const char *tls_cipher_name(enum tls_cipher c); /* IANA-style name */

/* Serialization (proto/tls.proto TlsState): keys, sequence numbers, the
 * partial input record, undelivered plaintext, a partial handshake message,
 * unwritten ciphertext, the counters and the unacknowledged record
 * boundaries. save fills *out (allocated members freed with
 * tls_record_state_free_contents); load validates everything and returns
 * NULL with *err set ("bad key length", ...) on a state it cannot use.
 * save returns -EPIPE for a dead layer (nothing worth carrying), -ENOMEM.
 * free_contents is for states filled by save; unpacked ones are freed with
 * protobuf-c's free_unpacked. load does no key derivation (cheap). */
int tls_record_save(const struct tls_record *t, struct Baton__Tls__TlsState *out);
void tls_record_state_free_contents(struct Baton__Tls__TlsState *st);
/* tls_record_save() without the unacknowledged record boundaries (up to
 * 1024 pairs): what custody records after each read and write
 * (sessiond/checkpoint.h CKPT_TLS), bounded by the partial records and the
 * unwritten output. A layer loaded from it answers
 * tls_record_plain_covered() low (never high) until its own records are
 * acknowledged. Same errors as save. */
int tls_record_save_progress(const struct tls_record *t,
			     struct Baton__Tls__TlsState *out);
struct tls_record *tls_record_load(const struct Baton__Tls__TlsState *st,
				   const char **err);

#endif
