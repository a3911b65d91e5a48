/* tls/handshake.h: OpenSSL performs the TLS handshake (client or
 * server role, non-blocking, driven by the owner's event loop); then the
 * connection's keys and sequence numbers are taken out and the SSL object is
 * dropped without SSL_shutdown (no close_notify), and baton's own record
 * layer (record.h) carries every later byte. docs/design.md §4 lists the
 * OpenSSL facts this relies on; the comments in handshake.c say where
 * each is handled.
 *
 * The SSL object talks to the socket through a BIO of ours that reads only
 * what OpenSSL asks for (read-ahead stays off, so no byte after the last
 * handshake record is consumed) and watches what OpenSSL writes (TLS 1.2
 * AES-GCM: the explicit nonce of our Finished record, which we continue).
 *
 * fd ownership: the handshake uses the fd and never closes it.
 */
#ifndef BATON_TLS_HANDSHAKE_H
#define BATON_TLS_HANDSHAKE_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

struct tls_record;
struct tls_record_params;

/* Client context options (upstream connections). */
struct tls_client_options {
	bool verify;             /* verify the chain and host name (default yes) */
	const char *ca_file;     /* PEM bundle; NULL: the system CA store */
	const char *cert_file;   /* client certificate (CertFP) or NULL */
	const char *key_file;    /* its key (NULL: in cert_file) */
};

/* A client SSL_CTX restricted to what tls_record supports (TLS 1.2 ECDHE
 * AES-GCM/ChaCha20 and the three TLS 1.3 suites), renegotiation off.
 * NULL with err (static text or written into errbuf) on failure: an
 * unreadable CA file, a certificate and key that do not match, ... */
SSL_CTX *tls_client_ctx_new(const struct tls_client_options *o, char *errbuf,
			    size_t errlen);

/* A server SSL_CTX with this certificate chain and key (PEM). No session
 * tickets (TLS 1.3 num_tickets 0: OpenSSL would otherwise write them under
 * the application key inside SSL_accept). NULL with errbuf on failure. */
SSL_CTX *tls_server_ctx_new(const char *cert_file, const char *key_file,
			    char *errbuf, size_t errlen);

/* Restrict versions (tests and the bench): TLS1_2_VERSION or
 * TLS1_3_VERSION; 0 for no limit on that side (the minimum stays TLS 1.2:
 * the record layer has nothing older). */
void tls_ctx_set_versions(SSL_CTX *ctx, int min_version, int max_version);

enum tls_handshake_status {
	TLS_HANDSHAKE_DONE = 0,
	TLS_HANDSHAKE_WANT_READ = 1,
	TLS_HANDSHAKE_WANT_WRITE = 2,
	TLS_HANDSHAKE_ERROR = -1,
};

struct tls_handshake;

/* Start a handshake on a connected (or connecting: the first step then
 * waits for writability) non-blocking socket.
 * server: our role. host: client role only, the server name for SNI (not
 * sent for IP literals) and for host-name verification when the context
 * verifies. fingerprint: client role only, "sha256:HEX" (colons allowed,
 * any case) that the peer's leaf certificate must match; with a pin the
 * chain is not required to verify (the pin is the trust). NULL on
 * allocation failure. The ctx is referenced (SSL_CTX_up_ref). */
struct tls_handshake *tls_handshake_new(SSL_CTX *ctx, int fd, bool server,
					const char *host,
					const char *fingerprint);

/* Run as far as the socket allows. WANT_READ / WANT_WRITE: call again when
 * the fd is readable / writable. On TLS_HANDSHAKE_ERROR,
 * tls_handshake_error() says why in words an operator can act on
 * ("certificate verify failed: certificate has expired", "unknown CA",
 * "fingerprint mismatch: expected sha256:... got sha256:...", "peer closed
 * during handshake", "tls alert: handshake failure", "socket error:
 * Connection refused", ...). In TLS 1.3 a client's handshake is done before
 * the server has checked the client certificate: a rejection of ours
 * arrives as an alert in the record layer (tls_record_error()). */
enum tls_handshake_status tls_handshake_step(struct tls_handshake *hs);
const char *tls_handshake_error(const struct tls_handshake *hs);

/* After TLS_HANDSHAKE_DONE: the record layer for this connection (its keys,
 * sequence numbers, any plaintext OpenSSL had already decrypted), and the
 * SSL object is freed without a close_notify. NULL with *err on failure (an
 * unsupported cipher negotiated, a missing secret). The handshake object is
 * spent either way: free it with tls_handshake_free(). */
struct tls_record *tls_handshake_finish(struct tls_handshake *hs,
					const char **err);

/* After TLS_HANDSHAKE_DONE: the connection's keys and sequence numbers as
 * tls_record_new() takes them, without building the record layer or freeing
 * the SSL object (what tls_handshake_finish() uses; also for installing the
 * same state into kernel TLS, and for tests that check the keys against
 * the peer's). The caller wipes *p (OPENSSL_cleanse). 0, or -EINVAL with
 * *err (unsupported cipher, missing secret, data OpenSSL already read past
 * the handshake). */
int tls_handshake_export(struct tls_handshake *hs,
			 struct tls_record_params *p, const char **err);

/* "TLSv1.3 TLS_AES_256_GCM_SHA384" once negotiated; the peer leaf
 * certificate's "sha256:HEX" fingerprint or "" without one. */
const char *tls_handshake_describe(const struct tls_handshake *hs);
const char *tls_handshake_peer_fingerprint(const struct tls_handshake *hs);

/* Free (no close_notify, no socket I/O). Accepts NULL. */
void tls_handshake_free(struct tls_handshake *hs);

/* "sha256:HEX" of a PEM certificate file's first certificate, for docs and
 * tests (NULL on failure; malloc'd). */
char *tls_cert_file_fingerprint(const char *cert_file);

#endif
