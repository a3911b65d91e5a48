/* tls/handshake.c: OpenSSL runs the handshake, then we take the
 * keys out and hand the connection to tls_record (see handshake.h).
 *
 * Where each fact of docs/design.md §4 is handled:
 * - TLS 1.3 secrets: keylog_cb() (CLIENT_/SERVER_TRAFFIC_SECRET_0), mapped
 *   from the SSL* to our object through SSL ex_data.
 * - TLS 1.2 keys: export_tls12() expands the master secret and both randoms
 *   into the key block (kdf.h).
 * - Sequence numbers: counted, not assumed. Our BIO sees every byte that
 *   crosses the socket in both directions (struct rec_watch), so TLS 1.2
 *   sequence numbers are the records after each side's ChangeCipherSpec
 *   (Finished: 1/1), and a TLS 1.3 server's write sequence is the number of
 *   records it wrote after reading the client's Finished (the session
 *   tickets; 0 with our server context, num_tickets 0).
 * - Read-ahead off and our BIO reads only what OpenSSL asks for, so no byte
 *   after the handshake is consumed; SSL_has_pending() is still checked.
 * - TLS 1.2 AES-GCM explicit nonce: the write watcher keeps the explicit
 *   nonce of the last record we wrote after our ChangeCipherSpec (the
 *   Finished); the record layer continues at +1.
 * - SSL_free without SSL_shutdown; SSL_OP_NO_RENEGOTIATION in every context.
 */
#include "tls/handshake.h"
#include "tls/kdf.h"
#include "tls/record.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

/* What tls_record implements, and nothing else. */
#define TLS12_CIPHERS                                                         \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"          \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"          \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define TLS13_SUITES                                                          \
	"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"                      \
	"TLS_CHACHA20_POLY1305_SHA256"

#define SHA256_LEN 32

#define REC_CHANGE_CIPHER_SPEC 20

/* Follows one direction's record stream, byte by byte as it crossed the
 * socket (any split). Only the framing is parsed; bodies are not kept. */
struct rec_watch {
	uint8_t hdr[5];
	size_t hdr_got;
	size_t body_left;       /* of the current record */
	size_t body_seen;
	uint8_t nonce[8];       /* first 8 body bytes (TLS 1.2 explicit nonce) */
	uint64_t records;       /* complete records */
	bool after_ccs;         /* a ChangeCipherSpec record went by */
	uint64_t after_ccs_records; /* complete records after the last CCS */
	bool have_nonce;
	uint64_t last_nonce;    /* of the last complete record after the CCS */
};

struct tls_handshake {
	SSL_CTX *ctx;           /* referenced */
	SSL *ssl;               /* owned until finish/free; NULL after */
	int fd;                 /* not owned */
	bool server;
	bool done;
	bool failed;
	bool spent;             /* finish() ran */

	bool has_pin;
	uint8_t pin[SHA256_LEN];

	struct rec_watch rd, wr;
	uint64_t wr_records_at_read; /* wr.records at the last successful read */
	bool peer_eof;          /* read(2) returned 0 */
	int sys_errno;          /* last socket error, 0 if none */
	char alert[96];         /* alert received from the peer, "" if none */

	/* TLS 1.3 traffic secrets from the keylog callback. */
	uint8_t client_secret[48], server_secret[48];
	size_t client_secret_len, server_secret_len;

	char describe[96];
	char peer_fp[7 + 2 * SHA256_LEN + 1];
	char error[256];
};

/* Process-wide, created once: the ex_data index that maps an SSL* to its
 * tls_handshake, and our BIO_METHOD. Never freed (static lifetime). */
static CRYPTO_ONCE once = CRYPTO_ONCE_STATIC_INIT;
static int hs_ex_index = -1;
static BIO_METHOD *fd_bio_method;

static int fd_bio_write(BIO *b, const char *buf, int len);
static int fd_bio_read(BIO *b, char *buf, int len);
static long fd_bio_ctrl(BIO *b, int cmd, long num, void *ptr);
static int fd_bio_create(BIO *b);

static void init_once(void)
{
	BIO_METHOD *m;

	hs_ex_index = SSL_get_ex_new_index(0, "baton tls_handshake", NULL, NULL,
					   NULL);
	m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK,
			 "baton handshake fd");
	if (!m)
		return;
	if (!BIO_meth_set_write(m, fd_bio_write) ||
	    !BIO_meth_set_read(m, fd_bio_read) ||
	    !BIO_meth_set_ctrl(m, fd_bio_ctrl) ||
	    !BIO_meth_set_create(m, fd_bio_create)) {
		BIO_meth_free(m);
		return;
	}
	fd_bio_method = m;
}

static bool init(void)
{
	return CRYPTO_THREAD_run_once(&once, init_once) && hs_ex_index >= 0 &&
	       fd_bio_method;
}

static struct tls_handshake *hs_of(const SSL *ssl)
{
	return ssl && hs_ex_index >= 0 ? SSL_get_ex_data(ssl, hs_ex_index) :
					 NULL;
}

/* ---- errors ---------------------------------------------------------- */

/* "PREFIX: reason" from the OpenSSL error queue (most recent error), which
 * is then cleared. */
static void ssl_error_text(char *buf, size_t len, const char *prefix)
{
	unsigned long e = ERR_peek_error(); /* the root cause comes first */
	const char *reason = e ? ERR_reason_error_string(e) : NULL;
	char tmp[160];

	if (!buf || !len)
		goto out;
	if (reason) {
		snprintf(buf, len, "%s: %s", prefix, reason);
	} else if (e) {
		ERR_error_string_n(e, tmp, sizeof(tmp));
		snprintf(buf, len, "%s: %s", prefix, tmp);
	} else {
		snprintf(buf, len, "%s", prefix);
	}
out:
	ERR_clear_error();
}

static void fingerprint_text(const uint8_t md[SHA256_LEN], char *out,
			     size_t len)
{
	static const char hex[] = "0123456789abcdef";
	size_t i;

	if (len < 7 + 2 * SHA256_LEN + 1) {
		if (len)
			out[0] = '\0';
		return;
	}
	memcpy(out, "sha256:", 7);
	for (i = 0; i < SHA256_LEN; i++) {
		out[7 + 2 * i] = hex[md[i] >> 4];
		out[7 + 2 * i + 1] = hex[md[i] & 15];
	}
	out[7 + 2 * SHA256_LEN] = '\0';
}

static bool cert_sha256(X509 *x, uint8_t md[SHA256_LEN])
{
	unsigned int n = 0;

	return X509_digest(x, EVP_sha256(), md, &n) && n == SHA256_LEN;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* "sha256:HEX", colons between digits allowed, any case. */
static bool parse_pin(const char *s, uint8_t out[SHA256_LEN])
{
	size_t n = 0;
	int hi = -1, v;

	if (strncasecmp(s, "sha256:", 7))
		return false;
	for (s += 7; *s; s++) {
		if (*s == ':' && hi < 0)
			continue;
		if ((v = hexval((unsigned char)*s)) < 0)
			return false;
		if (hi < 0) {
			hi = v;
			continue;
		}
		if (n == SHA256_LEN)
			return false;
		out[n++] = (uint8_t)(hi << 4 | v);
		hi = -1;
	}
	return n == SHA256_LEN && hi < 0;
}

/* ---- the BIO on the fd ------------------------------------------------ */

static uint64_t be64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

static void watch(struct rec_watch *w, const uint8_t *p, size_t len)
{
	size_t n;

	while (len) {
		if (w->hdr_got < sizeof(w->hdr)) {
			w->hdr[w->hdr_got++] = *p++;
			len--;
			if (w->hdr_got < sizeof(w->hdr))
				continue;
			w->body_left = (size_t)w->hdr[3] << 8 | w->hdr[4];
			w->body_seen = 0;
			if (w->body_left)
				continue;
		} else {
			n = len < w->body_left ? len : w->body_left;
			for (size_t i = 0; i < n && w->body_seen + i < 8; i++)
				w->nonce[w->body_seen + i] = p[i];
			w->body_seen += n;
			w->body_left -= n;
			p += n;
			len -= n;
			if (w->body_left)
				continue;
		}
		/* a complete record */
		w->records++;
		if (w->hdr[0] == REC_CHANGE_CIPHER_SPEC) {
			w->after_ccs = true;
			w->after_ccs_records = 0;
			w->have_nonce = false;
		} else if (w->after_ccs) {
			w->after_ccs_records++;
			w->have_nonce = w->body_seen >= 8;
			if (w->have_nonce)
				w->last_nonce = be64(w->nonce);
		}
		w->hdr_got = 0;
	}
}

static int fd_bio_create(BIO *b)
{
	BIO_set_init(b, 1);
	return 1;
}

/* send(2) with MSG_NOSIGNAL so a reset peer is an error here, not SIGPIPE;
 * write(2) if the fd is not a socket. EAGAIN: retry later. */
static int fd_bio_write(BIO *b, const char *buf, int len)
{
	struct tls_handshake *hs = BIO_get_data(b);
	ssize_t n;

	BIO_clear_retry_flags(b);
	do {
		n = send(hs->fd, buf, (size_t)len, MSG_NOSIGNAL);
		if (n < 0 && errno == ENOTSOCK)
			n = write(hs->fd, buf, (size_t)len);
	} while (n < 0 && errno == EINTR);
	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			BIO_set_retry_write(b);
		else
			hs->sys_errno = errno;
		return -1;
	}
	watch(&hs->wr, (const uint8_t *)buf, (size_t)n);
	return (int)n;
}

/* Exactly what OpenSSL asks for: with read-ahead off that is a record
 * header, then its body, so nothing past the last handshake record is
 * ever taken from the socket. */
static int fd_bio_read(BIO *b, char *buf, int len)
{
	struct tls_handshake *hs = BIO_get_data(b);
	ssize_t n;

	BIO_clear_retry_flags(b);
	do
		n = read(hs->fd, buf, (size_t)len);
	while (n < 0 && errno == EINTR);
	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			BIO_set_retry_read(b);
		else
			hs->sys_errno = errno;
		return -1;
	}
	if (n == 0) {
		hs->peer_eof = true;
		return 0;
	}
	watch(&hs->rd, (const uint8_t *)buf, (size_t)n);
	hs->wr_records_at_read = hs->wr.records;
	return (int)n;
}

static long fd_bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	struct tls_handshake *hs = BIO_get_data(b);

	switch (cmd) {
	case BIO_CTRL_FLUSH:
		return 1; /* nothing buffered here */
	case BIO_CTRL_EOF:
		return hs && hs->peer_eof;
	default:
		return 0;
	}
}

/* ---- OpenSSL callbacks ------------------------------------------------ */

/* TLS 1.3: "LABEL <client random hex> <secret hex>". Only the first
 * application traffic secrets are logged; later ones (KeyUpdate) are the
 * record layer's business. */
static void keylog_cb(const SSL *ssl, const char *line)
{
	struct tls_handshake *hs = hs_of(ssl);
	const char *sp;
	uint8_t *dst;
	size_t *dst_len, n = 0;
	int hi, lo;

	if (!hs)
		return;
	if (!strncmp(line, "CLIENT_TRAFFIC_SECRET_0 ", 24)) {
		dst = hs->client_secret;
		dst_len = &hs->client_secret_len;
	} else if (!strncmp(line, "SERVER_TRAFFIC_SECRET_0 ", 24)) {
		dst = hs->server_secret;
		dst_len = &hs->server_secret_len;
	} else {
		return;
	}
	sp = strchr(line + 24, ' ');
	if (!sp)
		return;
	for (sp++; sp[0] && sp[1] && n < 48; sp += 2) {
		if ((hi = hexval((unsigned char)sp[0])) < 0 ||
		    (lo = hexval((unsigned char)sp[1])) < 0)
			break;
		dst[n++] = (uint8_t)(hi << 4 | lo);
	}
	*dst_len = n;
}

static void info_cb(const SSL *ssl, int where, int ret)
{
	struct tls_handshake *hs = hs_of(ssl);

	if (hs && (where & SSL_CB_ALERT) && (where & SSL_CB_READ) &&
	    !hs->alert[0])
		snprintf(hs->alert, sizeof(hs->alert), "tls alert: %s",
			 SSL_alert_desc_string_long(ret));
}

/* With a pin, the pin is the trust: chain and name errors are accepted and
 * only the leaf's fingerprint decides (checked again after the handshake,
 * so a chain that never reaches depth 0 here cannot skip it). */
static int verify_cb(int ok, X509_STORE_CTX *xs)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(
		xs, SSL_get_ex_data_X509_STORE_CTX_idx());
	struct tls_handshake *hs = hs_of(ssl);
	uint8_t md[SHA256_LEN];
	char want[80], got[80];
	X509 *leaf;

	if (!hs || !hs->has_pin)
		return ok;
	if (X509_STORE_CTX_get_error_depth(xs) != 0)
		return 1;
	leaf = X509_STORE_CTX_get_current_cert(xs);
	if (!leaf || !cert_sha256(leaf, md)) {
		snprintf(hs->error, sizeof(hs->error),
			 "fingerprint check failed: no peer certificate");
		X509_STORE_CTX_set_error(xs, X509_V_ERR_APPLICATION_VERIFICATION);
		return 0;
	}
	if (CRYPTO_memcmp(md, hs->pin, SHA256_LEN)) {
		fingerprint_text(hs->pin, want, sizeof(want));
		fingerprint_text(md, got, sizeof(got));
		snprintf(hs->error, sizeof(hs->error),
			 "fingerprint mismatch: expected %s got %s", want, got);
		X509_STORE_CTX_set_error(xs, X509_V_ERR_APPLICATION_VERIFICATION);
		return 0;
	}
	return 1;
}

/* ---- contexts ----------------------------------------------------------- */

static SSL_CTX *ctx_common(const SSL_METHOD *method, char *errbuf,
			   size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(method);

	if (!ctx) {
		ssl_error_text(errbuf, errlen, "cannot create TLS context");
		return NULL;
	}
	if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
	    !SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS) ||
	    !SSL_CTX_set_ciphersuites(ctx, TLS13_SUITES)) {
		ssl_error_text(errbuf, errlen, "cannot restrict TLS ciphers");
		SSL_CTX_free(ctx);
		return NULL;
	}
	/* No renegotiation (the record layer refuses it) and no TLS 1.2
	 * tickets; nothing here resumes sessions. */
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET);
	SSL_CTX_set_read_ahead(ctx, 0);
	SSL_CTX_set_keylog_callback(ctx, keylog_cb);
	return ctx;
}

SSL_CTX *tls_client_ctx_new(const struct tls_client_options *o, char *errbuf,
			    size_t errlen)
{
	char what[512];
	SSL_CTX *ctx;

	if (!init()) {
		snprintf(errbuf, errlen, "cannot initialise OpenSSL");
		return NULL;
	}
	ctx = ctx_common(TLS_client_method(), errbuf, errlen);
	if (!ctx)
		return NULL;
	if (o->ca_file) {
		if (!SSL_CTX_load_verify_locations(ctx, o->ca_file, NULL)) {
			snprintf(what, sizeof(what), "cannot load CA file %s",
				 o->ca_file);
			goto fail;
		}
	} else if (!SSL_CTX_set_default_verify_paths(ctx)) {
		snprintf(what, sizeof(what), "cannot load the system CA store");
		goto fail;
	}
	if (o->cert_file) {
		const char *key = o->key_file ? o->key_file : o->cert_file;

		if (!SSL_CTX_use_certificate_chain_file(ctx, o->cert_file)) {
			snprintf(what, sizeof(what),
				 "cannot load client certificate %s",
				 o->cert_file);
			goto fail;
		}
		if (!SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM)) {
			snprintf(what, sizeof(what),
				 "cannot load client key %s", key);
			goto fail;
		}
		if (!SSL_CTX_check_private_key(ctx)) {
			snprintf(what, sizeof(what),
				 "client key %s does not match certificate %s",
				 key, o->cert_file);
			goto fail;
		}
	}
	/* verify_cb only matters with a pin (tls_handshake_new sets
	 * SSL_VERIFY_PEER per connection then, even without verify). */
	SSL_CTX_set_verify(ctx, o->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE,
			   verify_cb);
	return ctx;
fail:
	ssl_error_text(errbuf, errlen, what);
	SSL_CTX_free(ctx);
	return NULL;
}

SSL_CTX *tls_server_ctx_new(const char *cert_file, const char *key_file,
			    char *errbuf, size_t errlen)
{
	char what[512];
	SSL_CTX *ctx;

	if (!init()) {
		snprintf(errbuf, errlen, "cannot initialise OpenSSL");
		return NULL;
	}
	ctx = ctx_common(TLS_server_method(), errbuf, errlen);
	if (!ctx)
		return NULL;
	if (!key_file)
		key_file = cert_file;
	if (!SSL_CTX_use_certificate_chain_file(ctx, cert_file)) {
		snprintf(what, sizeof(what), "cannot load certificate %s",
			 cert_file);
		goto fail;
	}
	if (!SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM)) {
		snprintf(what, sizeof(what), "cannot load key %s", key_file);
		goto fail;
	}
	if (!SSL_CTX_check_private_key(ctx)) {
		snprintf(what, sizeof(what),
			 "key %s does not match certificate %s", key_file,
			 cert_file);
		goto fail;
	}
	/* TLS 1.3 tickets would be written under the application key inside
	 * SSL_accept (they are counted in any case, see export); no session
	 * cache: every handshake is a full one. */
	SSL_CTX_set_num_tickets(ctx, 0);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	return ctx;
fail:
	ssl_error_text(errbuf, errlen, what);
	SSL_CTX_free(ctx);
	return NULL;
}

void tls_ctx_set_versions(SSL_CTX *ctx, int min_version, int max_version)
{
	SSL_CTX_set_min_proto_version(ctx,
				      min_version ? min_version : TLS1_2_VERSION);
	SSL_CTX_set_max_proto_version(ctx, max_version);
}

/* ---- the handshake ------------------------------------------------------ */

static bool is_ip_literal(const char *host)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, host, buf) == 1 ||
	       inet_pton(AF_INET6, host, buf) == 1;
}

struct tls_handshake *tls_handshake_new(SSL_CTX *ctx, int fd, bool server,
					const char *host,
					const char *fingerprint)
{
	struct tls_handshake *hs = NULL;
	BIO *bio = NULL;

	if (!init())
		return NULL;
	hs = calloc(1, sizeof(*hs));
	if (!hs)
		return NULL;
	hs->fd = fd;
	hs->server = server;
	if (!SSL_CTX_up_ref(ctx))
		goto fail;
	hs->ctx = ctx;
	/* A context not made by tls_*_ctx_new() still needs our keylog
	 * callback (it replaces any other). */
	if (SSL_CTX_get_keylog_callback(ctx) != keylog_cb)
		SSL_CTX_set_keylog_callback(ctx, keylog_cb);
	hs->ssl = SSL_new(ctx);
	if (!hs->ssl || !SSL_set_ex_data(hs->ssl, hs_ex_index, hs))
		goto fail;
	bio = BIO_new(fd_bio_method);
	if (!bio)
		goto fail;
	BIO_set_data(bio, hs);
	SSL_set_bio(hs->ssl, bio, bio); /* one reference, now the SSL's */
	SSL_set_read_ahead(hs->ssl, 0);
	SSL_set_info_callback(hs->ssl, info_cb);
	if (server) {
		SSL_set_accept_state(hs->ssl);
		return hs;
	}
	SSL_set_connect_state(hs->ssl);
	if (host && *host) {
		if (is_ip_literal(host)) {
			/* RFC 6066: no SNI for addresses */
			if (!X509_VERIFY_PARAM_set1_ip_asc(
				    SSL_get0_param(hs->ssl), host))
				goto fail;
		} else if (!SSL_set_tlsext_host_name(hs->ssl, host) ||
			   !SSL_set1_host(hs->ssl, host)) {
			goto fail;
		}
	}
	if (fingerprint) {
		if (!parse_pin(fingerprint, hs->pin)) {
			/* reported by the first step, where errors go */
			snprintf(hs->error, sizeof(hs->error),
				 "bad fingerprint \"%s\": expected sha256:HEX "
				 "(64 hex digits)", fingerprint);
			hs->failed = true;
		}
		hs->has_pin = true;
		SSL_set_verify(hs->ssl, SSL_VERIFY_PEER, verify_cb);
	}
	ERR_clear_error();
	return hs;
fail:
	ERR_clear_error();
	tls_handshake_free(hs);
	return NULL;
}

static void set_failure(struct tls_handshake *hs, int ssl_err)
{
	long vr;

	hs->failed = true;
	if (hs->error[0]) /* set by verify_cb: the most precise reason */
		goto out;
	if (hs->alert[0]) {
		snprintf(hs->error, sizeof(hs->error), "%s", hs->alert);
		goto out;
	}
	if (hs->sys_errno) {
		snprintf(hs->error, sizeof(hs->error), "socket error: %s",
			 strerror(hs->sys_errno));
		goto out;
	}
	if (hs->peer_eof) {
		snprintf(hs->error, sizeof(hs->error),
			 "peer closed during handshake");
		goto out;
	}
	vr = SSL_get_verify_result(hs->ssl);
	if (!hs->server && (SSL_get_verify_mode(hs->ssl) & SSL_VERIFY_PEER) &&
	    vr != X509_V_OK) {
		snprintf(hs->error, sizeof(hs->error),
			 "certificate verify failed: %s",
			 X509_verify_cert_error_string(vr));
		goto out;
	}
	if (ssl_err == SSL_ERROR_SSL) {
		ssl_error_text(hs->error, sizeof(hs->error), "tls error");
		return;
	}
	snprintf(hs->error, sizeof(hs->error), "tls handshake failed");
out:
	ERR_clear_error();
}

/* Handshake complete: check the pin on the leaf (again: see verify_cb),
 * and keep what describe/peer_fingerprint report after the SSL is gone. */
static bool handshake_done(struct tls_handshake *hs)
{
	X509 *peer = SSL_get0_peer_certificate(hs->ssl);
	const SSL_CIPHER *c = SSL_get_current_cipher(hs->ssl);
	uint8_t md[SHA256_LEN];
	char want[80];
	bool have_md = peer && cert_sha256(peer, md);

	snprintf(hs->describe, sizeof(hs->describe), "%s %s",
		 SSL_get_version(hs->ssl), c ? SSL_CIPHER_get_name(c) : "?");
	if (have_md)
		fingerprint_text(md, hs->peer_fp, sizeof(hs->peer_fp));
	if (!hs->has_pin)
		return true;
	if (!have_md) {
		snprintf(hs->error, sizeof(hs->error),
			 "fingerprint check failed: no peer certificate");
		return false;
	}
	if (CRYPTO_memcmp(md, hs->pin, SHA256_LEN)) {
		fingerprint_text(hs->pin, want, sizeof(want));
		snprintf(hs->error, sizeof(hs->error),
			 "fingerprint mismatch: expected %s got %s", want,
			 hs->peer_fp);
		return false;
	}
	return true;
}

enum tls_handshake_status tls_handshake_step(struct tls_handshake *hs)
{
	int r;

	if (hs->failed || hs->spent)
		return TLS_HANDSHAKE_ERROR;
	if (hs->done)
		return TLS_HANDSHAKE_DONE;
	ERR_clear_error();
	hs->sys_errno = 0;
	r = SSL_do_handshake(hs->ssl);
	if (r == 1) {
		if (!handshake_done(hs)) {
			hs->failed = true;
			return TLS_HANDSHAKE_ERROR;
		}
		hs->done = true;
		return TLS_HANDSHAKE_DONE;
	}
	r = SSL_get_error(hs->ssl, r);
	if (r == SSL_ERROR_WANT_READ)
		return TLS_HANDSHAKE_WANT_READ;
	if (r == SSL_ERROR_WANT_WRITE)
		return TLS_HANDSHAKE_WANT_WRITE;
	set_failure(hs, r);
	return TLS_HANDSHAKE_ERROR;
}

const char *tls_handshake_error(const struct tls_handshake *hs)
{
	return hs->error[0] ? hs->error : "no error";
}

const char *tls_handshake_describe(const struct tls_handshake *hs)
{
	return hs->describe;
}

const char *tls_handshake_peer_fingerprint(const struct tls_handshake *hs)
{
	return hs->peer_fp;
}

/* ---- taking the keys out ---------------------------------------------- */

struct suite {
	uint16_t id; /* IANA */
	uint16_t version;
	enum tls_cipher cipher;
	size_t hash_len; /* TLS 1.3: length of the traffic secrets */
};

static const struct suite suites[] = {
	{ 0x1301, TLS_VERSION_1_3, TLS_CIPHER_AES_128_GCM, 32 },
	{ 0x1302, TLS_VERSION_1_3, TLS_CIPHER_AES_256_GCM, 48 },
	{ 0x1303, TLS_VERSION_1_3, TLS_CIPHER_CHACHA20_POLY1305, 32 },
	{ 0xc02b, TLS_VERSION_1_2, TLS_CIPHER_AES_128_GCM, 32 },
	{ 0xc02f, TLS_VERSION_1_2, TLS_CIPHER_AES_128_GCM, 32 },
	{ 0xc02c, TLS_VERSION_1_2, TLS_CIPHER_AES_256_GCM, 48 },
	{ 0xc030, TLS_VERSION_1_2, TLS_CIPHER_AES_256_GCM, 48 },
	{ 0xcca9, TLS_VERSION_1_2, TLS_CIPHER_CHACHA20_POLY1305, 32 },
	{ 0xcca8, TLS_VERSION_1_2, TLS_CIPHER_CHACHA20_POLY1305, 32 },
};

static int export_tls13(struct tls_handshake *hs, const struct suite *s,
			struct tls_record_params *p, const char **err)
{
	struct tls_direction *cl = hs->server ? &p->read : &p->write;
	struct tls_direction *sv = hs->server ? &p->write : &p->read;

	if (hs->client_secret_len != s->hash_len ||
	    hs->server_secret_len != s->hash_len) {
		*err = "TLS 1.3 traffic secrets were not captured (keylog callback)";
		return -EINVAL;
	}
	memcpy(cl->secret, hs->client_secret, s->hash_len);
	cl->secret_len = s->hash_len;
	memcpy(sv->secret, hs->server_secret, s->hash_len);
	sv->secret_len = s->hash_len;
	/* The client's last handshake records (Finished) are under the
	 * handshake keys, and it reads nothing after the server's Finished:
	 * 0/0. A server has read the client's Finished last; whatever it
	 * wrote after that (session tickets, none with our context) was under
	 * the application key. */
	p->read.seq = 0;
	p->write.seq = hs->server ? hs->wr.records - hs->wr_records_at_read : 0;
	return 0;
}

static int export_tls12(struct tls_handshake *hs, const struct suite *s,
			struct tls_record_params *p, const char **err)
{
	SSL_SESSION *sess = SSL_get_session(hs->ssl);
	uint8_t master[48], client_random[32], server_random[32];
	struct tls_direction *cl = hs->server ? &p->read : &p->write;
	struct tls_direction *sv = hs->server ? &p->write : &p->read;
	int r = -EINVAL;

	if (!sess || SSL_SESSION_get_master_key(sess, master, sizeof(master)) !=
			     sizeof(master) ||
	    SSL_get_client_random(hs->ssl, client_random,
				  sizeof(client_random)) != 32 ||
	    SSL_get_server_random(hs->ssl, server_random,
				  sizeof(server_random)) != 32) {
		*err = "TLS 1.2 master secret or randoms unavailable";
		goto out;
	}
	/* RFC 5246 6.3 (AEAD suites: no MAC keys) */
	if (tls12_key_block(s->cipher, master, sizeof(master), client_random,
			    server_random, cl, sv) < 0) {
		*err = "TLS 1.2 key block derivation failed";
		goto out;
	}
	/* Each side's Finished is record 0 under the new keys; count what
	 * crossed the socket rather than assume it. */
	if (!hs->wr.after_ccs || !hs->rd.after_ccs) {
		*err = "TLS 1.2 handshake without ChangeCipherSpec";
		goto out;
	}
	p->write.seq = hs->wr.after_ccs_records;
	p->read.seq = hs->rd.after_ccs_records;
	if (s->cipher != TLS_CIPHER_CHACHA20_POLY1305) {
		if (!hs->wr.have_nonce) {
			*err = "TLS 1.2 explicit nonce of our Finished not seen";
			goto out;
		}
		p->write_explicit_nonce = hs->wr.last_nonce + 1;
	}
	r = 0;
out:
	OPENSSL_cleanse(master, sizeof(master));
	return r;
}

int tls_handshake_export(struct tls_handshake *hs,
			 struct tls_record_params *p, const char **err)
{
	const SSL_CIPHER *c;
	const struct suite *s = NULL;
	SSL_SESSION *sess;
	uint16_t id;
	int r;

	memset(p, 0, sizeof(*p));
	if (!hs->done || !hs->ssl) {
		*err = "TLS handshake not finished";
		return -EINVAL;
	}
	/* Read-ahead is off, so this cannot happen with a conforming peer;
	 * if it did, those bytes would be lost to the record layer. */
	if (SSL_has_pending(hs->ssl)) {
		*err = "OpenSSL holds data read past the handshake";
		return -EINVAL;
	}
	sess = SSL_get_session(hs->ssl);
	if (sess && SSL_SESSION_get_max_fragment_length(sess) !=
			    TLSEXT_max_fragment_length_DISABLED) {
		*err = "peer negotiated max_fragment_length (unsupported)";
		return -EINVAL;
	}
	c = SSL_get_current_cipher(hs->ssl);
	id = c ? SSL_CIPHER_get_protocol_id(c) : 0;
	for (size_t i = 0; i < sizeof(suites) / sizeof(suites[0]); i++)
		if (suites[i].id == id)
			s = &suites[i];
	if (!s || SSL_version(hs->ssl) != s->version) {
		*err = "negotiated cipher not supported by the record layer";
		return -EINVAL;
	}
	p->version = s->version;
	p->cipher = s->cipher;
	p->is_server = hs->server;
	r = s->version == TLS_VERSION_1_3 ? export_tls13(hs, s, p, err) :
					     export_tls12(hs, s, p, err);
	if (r < 0)
		OPENSSL_cleanse(p, sizeof(*p));
	return r;
}

struct tls_record *tls_handshake_finish(struct tls_handshake *hs,
					const char **err)
{
	struct tls_record_params p;
	struct tls_record *rec = NULL;

	if (hs->spent) {
		*err = "TLS handshake already finished";
		return NULL;
	}
	if (tls_handshake_export(hs, &p, err) < 0)
		goto out;
	rec = tls_record_new(&p);
	OPENSSL_cleanse(&p, sizeof(p));
	if (!rec)
		*err = "cannot create the TLS record layer";
out:
	/* No SSL_shutdown: a close_notify would end the connection the
	 * record layer now carries. */
	SSL_free(hs->ssl);
	hs->ssl = NULL;
	hs->spent = true;
	return rec;
}

void tls_handshake_free(struct tls_handshake *hs)
{
	if (!hs)
		return;
	SSL_free(hs->ssl); /* no SSL_shutdown: see finish */
	SSL_CTX_free(hs->ctx);
	OPENSSL_cleanse(hs, sizeof(*hs));
	free(hs);
}

char *tls_cert_file_fingerprint(const char *cert_file)
{
	uint8_t md[SHA256_LEN];
	char *out = NULL;
	X509 *x = NULL;
	FILE *f = fopen(cert_file, "re");

	if (!f)
		return NULL;
	x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	if (!x || !cert_sha256(x, md))
		goto out;
	out = malloc(7 + 2 * SHA256_LEN + 1);
	if (out)
		fingerprint_text(md, out, 7 + 2 * SHA256_LEN + 1);
out:
	X509_free(x);
	ERR_clear_error();
	return out;
}
