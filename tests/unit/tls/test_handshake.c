/* tests/unit/tls/test_handshake.c: tls/handshake.c against
 * a real OpenSSL peer in the same process. Our side talks to a socketpair
 * fd as sessiond would; the peer's SSL sits on memory BIOs that the test
 * shuttles to and from the other end, so the test holds a transcript of
 * every byte we sent (to check TLS 1.2 explicit nonces on the wire).
 *
 * Certificates are made at test time (EVP/X509 API) in a mkdtemp folder
 * that is removed afterwards: a CA, a server certificate for localhost and
 * 127.0.0.1, an expired one, one for a wrong name, one from an unknown CA,
 * and a client certificate.
 *
 * Interop per suite and role: keys checked against the peer's (TLS 1.3
 * secrets from the peer's keylog, TLS 1.2 key block derived here from the
 * peer's master secret), then tls_record carries data both ways while the
 * peer still uses SSL_read/SSL_write, KeyUpdates (TLS 1.3), a save/load
 * through the packed protobuf state in the middle of a record, and
 * close_notify both ways. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "tls/handshake.h"
#include "tls/record.h"
#include "tls.pb-c.h"

/* ---- certificates ------------------------------------------------------- */

static char dir[160];
static char ca_pem[200], server_pem[200], server_key[200], expired_pem[200],
	wrongname_pem[200], unknownca_pem[200], client_pem[200],
	client_key[200], other_ca_pem[200];

static void write_pem(const char *path, X509 *x, EVP_PKEY *k)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	if (x)
		assert_int_equal(PEM_write_X509(f, x), 1);
	if (k)
		assert_int_equal(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL,
						      NULL), 1);
	assert_int_equal(fclose(f), 0);
}

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX v3;
	X509_EXTENSION *e;

	X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
	e = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
	assert_non_null(e);
	assert_int_equal(X509_add_ext(x, e, -1), 1);
	X509_EXTENSION_free(e);
}

/* issuer NULL: self-signed CA. Validity in seconds relative to now. */
static X509 *make_cert(EVP_PKEY *key, const char *cn, const char *san,
		       X509 *issuer, EVP_PKEY *issuer_key, long from, long to)
{
	static long serial = 1;
	X509 *x = X509_new();
	X509_NAME *name;

	assert_non_null(x);
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
	X509_gmtime_adj(X509_getm_notBefore(x), from);
	X509_gmtime_adj(X509_getm_notAfter(x), to);
	X509_set_pubkey(x, key);
	name = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
				   (const unsigned char *)cn, -1, -1, 0);
	X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
	if (!issuer) {
		add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE");
		add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign");
		add_ext(x, x, NID_subject_key_identifier, "hash");
	} else {
		add_ext(x, issuer, NID_basic_constraints, "CA:FALSE");
		add_ext(x, issuer, NID_authority_key_identifier, "keyid");
		if (san)
			add_ext(x, issuer, NID_subject_alt_name, san);
	}
	assert_true(X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) > 0);
	return x;
}

static int make_certs(void **state)
{
	EVP_PKEY *ca_k = EVP_EC_gen("P-256"), *other_k = EVP_EC_gen("P-256");
	EVP_PKEY *srv_k = EVP_RSA_gen(2048), *cli_k = EVP_EC_gen("P-256");
	X509 *ca, *other, *x;
	const char *good_san = "DNS:localhost,IP:127.0.0.1";

	assert_non_null(ca_k);
	assert_non_null(srv_k);
	snprintf(dir, sizeof(dir), "%s/baton-tlshs-XXXXXX",
		 getenv("TMPDIR") && getenv("TMPDIR")[0] ? getenv("TMPDIR") : "/tmp");
	assert_non_null(mkdtemp(dir));
#define P(var, name) snprintf(var, sizeof(var), "%s/" name, dir)
	P(ca_pem, "ca.pem");
	P(other_ca_pem, "other-ca.pem");
	P(server_pem, "server.pem");
	P(server_key, "server.key");
	P(expired_pem, "expired.pem");
	P(wrongname_pem, "wrongname.pem");
	P(unknownca_pem, "unknownca.pem");
	P(client_pem, "client.pem");
	P(client_key, "client.key");
#undef P
	ca = make_cert(ca_k, "baton test CA", NULL, NULL, NULL, -3600, 86400);
	other = make_cert(other_k, "some other CA", NULL, NULL, NULL, -3600,
			  86400);
	write_pem(ca_pem, ca, NULL);
	write_pem(other_ca_pem, other, NULL);
	write_pem(server_key, NULL, srv_k);
	x = make_cert(srv_k, "localhost", good_san, ca, ca_k, -3600, 86400);
	write_pem(server_pem, x, NULL);
	X509_free(x);
	x = make_cert(srv_k, "localhost", good_san, ca, ca_k, -3 * 86400,
		      -2 * 86400);
	write_pem(expired_pem, x, NULL);
	X509_free(x);
	x = make_cert(srv_k, "other.example", "DNS:other.example,IP:10.9.8.7",
		      ca, ca_k, -3600, 86400);
	write_pem(wrongname_pem, x, NULL);
	X509_free(x);
	x = make_cert(srv_k, "localhost", good_san, other, other_k, -3600,
		      86400);
	write_pem(unknownca_pem, x, NULL);
	X509_free(x);
	x = make_cert(cli_k, "baton-user", NULL, ca, ca_k, -3600, 86400);
	write_pem(client_pem, x, NULL);
	write_pem(client_key, NULL, cli_k);
	X509_free(x);
	X509_free(ca);
	X509_free(other);
	EVP_PKEY_free(ca_k);
	EVP_PKEY_free(other_k);
	EVP_PKEY_free(srv_k);
	EVP_PKEY_free(cli_k);
	*state = NULL;
	return 0;
}

static int remove_certs(void **state)
{
	const char *files[] = { ca_pem, other_ca_pem, server_pem, server_key,
				expired_pem, wrongname_pem, unknownca_pem,
				client_pem, client_key };

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
		unlink(files[i]);
	rmdir(dir);
	return 0;
}

/* ---- the peer and the link ---------------------------------------------- */

/* What the peer's callbacks saw. */
struct peer_log {
	uint8_t client_secret[48], server_secret[48];
	size_t client_secret_len, server_secret_len;
	int key_updates_received, key_updates_sent;
};

static int peer_log_index = -1;

static int hexval(int c)
{
	return c <= '9' ? c - '0' : (c | 32) - 'a' + 10;
}

static void peer_keylog(const SSL *ssl, const char *line)
{
	struct peer_log *lg = SSL_get_ex_data(ssl, peer_log_index);
	uint8_t *dst;
	size_t *n;
	const char *p;

	if (!strncmp(line, "CLIENT_TRAFFIC_SECRET_0 ", 24)) {
		dst = lg->client_secret;
		n = &lg->client_secret_len;
	} else if (!strncmp(line, "SERVER_TRAFFIC_SECRET_0 ", 24)) {
		dst = lg->server_secret;
		n = &lg->server_secret_len;
	} else {
		return;
	}
	p = strchr(line + 24, ' ') + 1;
	for (*n = 0; p[0] && p[1] && *n < 48; p += 2)
		dst[(*n)++] = (uint8_t)(hexval(p[0]) << 4 | hexval(p[1]));
}

static void peer_msg(int write_p, int version, int content_type,
		     const void *buf, size_t len, SSL *ssl, void *arg)
{
	struct peer_log *lg = SSL_get_ex_data(ssl, peer_log_index);
	const uint8_t *b = buf;

	if (!lg || content_type != SSL3_RT_HANDSHAKE || len < 1 || b[0] != 24)
		return;
	if (write_p)
		lg->key_updates_sent++;
	else
		lg->key_updates_received++;
}

struct link {
	int fd_ours, fd_peer;  /* socketpair ends, non-blocking */
	SSL *peer;
	BIO *peer_in, *peer_out; /* memory BIOs owned by the SSL */
	struct peer_log log;
	uint8_t *sent;         /* transcript of every byte we sent */
	size_t sent_len, sent_cap;
	uint8_t pending[1 << 17]; /* peer bytes not yet written to fd_peer */
	size_t pending_len;
	bool peer_fd_closed;
};

static void set_nonblock(int fd)
{
	assert_int_equal(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
}

/* peer_cert NULL: a client peer. */
static SSL_CTX *peer_ctx(bool server, const char *cert, int version,
			 const char *cipher)
{
	SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() :
					    TLS_client_method());

	assert_non_null(ctx);
	if (cert) {
		assert_int_equal(SSL_CTX_use_certificate_chain_file(ctx, cert), 1);
		assert_int_equal(SSL_CTX_use_PrivateKey_file(ctx, server_key,
							     SSL_FILETYPE_PEM), 1);
	}
	if (version) {
		SSL_CTX_set_min_proto_version(ctx, version);
		SSL_CTX_set_max_proto_version(ctx, version);
	}
	if (cipher && version == TLS1_3_VERSION)
		assert_int_equal(SSL_CTX_set_ciphersuites(ctx, cipher), 1);
	else if (cipher)
		assert_int_equal(SSL_CTX_set_cipher_list(ctx, cipher), 1);
	SSL_CTX_set_keylog_callback(ctx, peer_keylog);
	SSL_CTX_set_msg_callback(ctx, peer_msg);
	return ctx;
}

static struct link *link_new(SSL_CTX *pctx, bool peer_server)
{
	struct link *l = calloc(1, sizeof(*l));
	int sv[2];

	assert_non_null(l);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	l->fd_ours = sv[0];
	l->fd_peer = sv[1];
	set_nonblock(sv[0]);
	set_nonblock(sv[1]);
	l->peer = SSL_new(pctx);
	assert_non_null(l->peer);
	if (peer_log_index < 0)
		peer_log_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	SSL_set_ex_data(l->peer, peer_log_index, &l->log);
	l->peer_in = BIO_new(BIO_s_mem());
	l->peer_out = BIO_new(BIO_s_mem());
	BIO_set_mem_eof_return(l->peer_in, -1); /* empty: retry, not EOF */
	SSL_set_bio(l->peer, l->peer_in, l->peer_out);
	if (peer_server)
		SSL_set_accept_state(l->peer);
	else
		SSL_set_connect_state(l->peer);
	return l;
}

static void link_free(struct link *l)
{
	SSL_free(l->peer);
	close(l->fd_ours);
	if (!l->peer_fd_closed)
		close(l->fd_peer);
	free(l->sent);
	free(l);
}

/* Move bytes between fd_peer and the peer's memory BIOs, both ways. */
static void shuttle(struct link *l)
{
	uint8_t buf[16384];
	ssize_t n;
	int m;

	if (l->peer_fd_closed)
		return;
	while ((n = read(l->fd_peer, buf, sizeof(buf))) > 0) {
		if (l->sent_len + (size_t)n > l->sent_cap) {
			l->sent_cap = (l->sent_len + (size_t)n) * 2;
			l->sent = realloc(l->sent, l->sent_cap);
			assert_non_null(l->sent);
		}
		memcpy(l->sent + l->sent_len, buf, (size_t)n);
		l->sent_len += (size_t)n;
		assert_int_equal(BIO_write(l->peer_in, buf, (int)n), (int)n);
	}
	while (l->pending_len < sizeof(l->pending) &&
	       (m = BIO_read(l->peer_out, l->pending + l->pending_len,
			     (int)(sizeof(l->pending) - l->pending_len))) > 0)
		l->pending_len += (size_t)m;
	if (l->pending_len) {
		n = write(l->fd_peer, l->pending, l->pending_len);
		if (n < 0)
			assert_true(errno == EAGAIN);
		if (n > 0) {
			memmove(l->pending, l->pending + n, l->pending_len - (size_t)n);
			l->pending_len -= (size_t)n;
		}
	}
}

struct hs_result {
	enum tls_handshake_status ours;
	bool peer_ok;
	char peer_err[200];
};

/* Both handshakes as far as they go, alternating. */
static struct hs_result run_handshake(struct link *l, struct tls_handshake *hs)
{
	struct hs_result res = { TLS_HANDSHAKE_WANT_WRITE, false, "" };
	bool peer_failed = false;
	int r, after_ours_ended = 0;

	for (int i = 0; i < 2000; i++) {
		if (res.ours > 0)
			res.ours = tls_handshake_step(hs);
		shuttle(l);
		if (!res.peer_ok && !peer_failed) {
			ERR_clear_error();
			r = SSL_do_handshake(l->peer);
			if (r == 1) {
				res.peer_ok = true;
			} else {
				r = SSL_get_error(l->peer, r);
				if (r != SSL_ERROR_WANT_READ &&
				    r != SSL_ERROR_WANT_WRITE) {
					peer_failed = true;
					ERR_error_string_n(ERR_peek_error(),
							   res.peer_err,
							   sizeof(res.peer_err));
				}
			}
		}
		shuttle(l);
		if (res.ours <= 0 && (res.peer_ok || peer_failed))
			break;
		if (res.ours == TLS_HANDSHAKE_ERROR && ++after_ours_ended > 20)
			break;
	}
	return res;
}

/* ---- TLS 1.2 key check and nonce transcript ------------------------------ */

/* RFC 5246 key block, derived here independently of tls/kdf.c,
 * from the peer's view of the session. */
static void tls12_expected_keys(SSL *peer, const char *md, size_t key_len,
				size_t iv_len, struct tls_direction *client,
				struct tls_direction *server)
{
	uint8_t master[48], seed[64], block[2 * 32 + 2 * 12];
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "TLS1-PRF", NULL);
	EVP_KDF_CTX *kctx = EVP_KDF_CTX_new(kdf);
	OSSL_PARAM params[5], *p = params;
	size_t need = 2 * key_len + 2 * iv_len;

	assert_int_equal(SSL_SESSION_get_master_key(SSL_get_session(peer), master,
						    48), 48);
	SSL_get_server_random(peer, seed, 32);
	SSL_get_client_random(peer, seed + 32, 32);
	*p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
						(char *)md, 0);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, master,
						 48);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED,
						 "key expansion", 13);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, seed, 64);
	*p = OSSL_PARAM_construct_end();
	assert_int_equal(EVP_KDF_derive(kctx, block, need, params), 1);
	memcpy(client->key, block, key_len);
	memcpy(server->key, block + key_len, key_len);
	memcpy(client->iv, block + 2 * key_len, iv_len);
	memcpy(server->iv, block + 2 * key_len + iv_len, iv_len);
	EVP_KDF_CTX_free(kctx);
	EVP_KDF_free(kdf);
}

/* Explicit nonces (first 8 body bytes) of the records we sent after our
 * ChangeCipherSpec, in order. Returns their count. */
static size_t sent_nonces(const struct link *l, uint64_t *out, size_t max)
{
	size_t off = 0, n = 0, len;
	bool after_ccs = false;

	while (off + 5 <= l->sent_len) {
		len = (size_t)l->sent[off + 3] << 8 | l->sent[off + 4];
		if (off + 5 + len > l->sent_len)
			break;
		if (l->sent[off] == 20) {
			after_ccs = true;
		} else if (after_ccs && len >= 8 && n < max) {
			uint64_t v = 0;

			for (int i = 0; i < 8; i++)
				v = v << 8 | l->sent[off + 5 + i];
			out[n++] = v;
		}
		off += 5 + len;
	}
	return n;
}

/* ---- the record layer against the peer ----------------------------------- */

static void our_flush(struct link *l, struct tls_record *rec)
{
	const uint8_t *out;
	size_t n;
	ssize_t w;

	while ((out = tls_record_output(rec, &n)) && n) {
		w = write(l->fd_ours, out, n);
		if (w < 0) {
			assert_true(errno == EAGAIN);
			return;
		}
		tls_record_consume_output(rec, (size_t)w);
	}
}

/* Feed at most max bytes from the socket (0: all there is). */
static enum tls_record_status our_read(struct link *l, struct tls_record *rec,
				       size_t max)
{
	uint8_t buf[8192];
	enum tls_record_status st = TLS_RECORD_OK;
	size_t want;
	ssize_t n;

	for (;;) {
		want = max && max < sizeof(buf) ? max : sizeof(buf);
		n = read(l->fd_ours, buf, want);
		if (n <= 0)
			break;
		st = tls_record_feed(rec, buf, (size_t)n);
		if (st != TLS_RECORD_OK)
			break;
		if (max && (max -= (size_t)n) == 0)
			break;
	}
	return st;
}

static void pattern(uint8_t *b, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		b[i] = (uint8_t)(seed * 131 + i * 7 + (i >> 8));
}

/* We write n bytes; the peer reads them with SSL_read. */
static void ours_to_peer(struct link *l, struct tls_record *rec, size_t n,
			 unsigned seed)
{
	uint8_t *want = malloc(n), *got = malloc(n);
	size_t have = 0;
	int r;

	pattern(want, n, seed);
	assert_int_equal(tls_record_write(rec, want, n), TLS_RECORD_OK);
	for (int i = 0; i < 1000 && have < n; i++) {
		our_flush(l, rec);
		shuttle(l);
		while (have < n &&
		       (r = SSL_read(l->peer, got + have, (int)(n - have))) > 0)
			have += (size_t)r;
		if (have < n)
			assert_int_equal(SSL_get_error(l->peer, r),
					 SSL_ERROR_WANT_READ);
		shuttle(l); /* the peer may answer (KeyUpdate) */
	}
	assert_int_equal(have, n);
	assert_memory_equal(want, got, n);
	free(want);
	free(got);
}

static size_t take_plaintext(struct tls_record *rec, uint8_t *dst, size_t room)
{
	const uint8_t *p;
	size_t n;

	p = tls_record_plaintext(rec, &n);
	if (n > room)
		n = room;
	if (n)
		memcpy(dst, p, n);
	tls_record_consume_plaintext(rec, n);
	return n;
}

/* The peer writes n bytes with SSL_write; we read them. */
static void peer_to_ours(struct link *l, struct tls_record *rec, size_t n,
			 unsigned seed)
{
	uint8_t *want = malloc(n), *got = malloc(n);
	size_t have = 0;

	pattern(want, n, seed);
	assert_int_equal(SSL_write(l->peer, want, (int)n), (int)n);
	for (int i = 0; i < 1000 && have < n; i++) {
		shuttle(l);
		assert_int_equal(our_read(l, rec, 0), TLS_RECORD_OK);
		have += take_plaintext(rec, got + have, n - have);
		our_flush(l, rec); /* an answer to update_requested */
	}
	assert_int_equal(have, n);
	assert_memory_equal(want, got, n);
	free(want);
	free(got);
}

/* Migration: the packed state, as it would travel, into a new layer. */
static struct tls_record *save_load(struct tls_record *rec)
{
	Baton__Tls__TlsState st = BATON__TLS__TLS_STATE__INIT, *back;
	uint8_t *buf;
	size_t len;
	const char *err = NULL;
	struct tls_record *next;

	assert_int_equal(tls_record_save(rec, &st), 0);
	len = baton__tls__tls_state__get_packed_size(&st);
	buf = malloc(len);
	assert_int_equal(baton__tls__tls_state__pack(&st, buf), len);
	tls_record_state_free_contents(&st);
	tls_record_free(rec);
	back = baton__tls__tls_state__unpack(NULL, len, buf);
	assert_non_null(back);
	next = tls_record_load(back, &err);
	if (!next)
		fail_msg("tls_record_load: %s", err ? err : "?");
	baton__tls__tls_state__free_unpacked(back, NULL);
	OPENSSL_cleanse(buf, len);
	free(buf);
	return next;
}

/* ---- the interop cases ----------------------------------------------------- */

struct suite_case {
	int version;
	const char *cipher; /* OpenSSL name */
	enum tls_cipher ours;
	const char *md;     /* TLS 1.2 PRF hash */
	size_t key_len, iv_len;
};

static const struct suite_case cases[] = {
	{ TLS1_2_VERSION, "ECDHE-RSA-AES128-GCM-SHA256", TLS_CIPHER_AES_128_GCM,
	  "SHA256", 16, 4 },
	{ TLS1_2_VERSION, "ECDHE-RSA-AES256-GCM-SHA384", TLS_CIPHER_AES_256_GCM,
	  "SHA384", 32, 4 },
	{ TLS1_2_VERSION, "ECDHE-RSA-CHACHA20-POLY1305",
	  TLS_CIPHER_CHACHA20_POLY1305, "SHA256", 32, 12 },
	{ TLS1_3_VERSION, "TLS_AES_128_GCM_SHA256", TLS_CIPHER_AES_128_GCM,
	  NULL, 16, 12 },
	{ TLS1_3_VERSION, "TLS_AES_256_GCM_SHA384", TLS_CIPHER_AES_256_GCM,
	  NULL, 32, 12 },
	{ TLS1_3_VERSION, "TLS_CHACHA20_POLY1305_SHA256",
	  TLS_CIPHER_CHACHA20_POLY1305, NULL, 32, 12 },
};

/* Handshake for one case and role; the params checked against the
 * peer's view. Returns the handshake object, DONE. */
static struct tls_handshake *handshake_case(const struct suite_case *c,
					    bool we_are_server, int tickets,
					    struct link **lp, SSL_CTX **pctxp,
					    SSL_CTX **ctxp)
{
	struct tls_client_options o = { .verify = true, .ca_file = ca_pem };
	char err[256] = "";
	SSL_CTX *ctx, *pctx;
	struct tls_handshake *hs;
	struct hs_result res;
	struct tls_record_params p;
	const char *perr = NULL;
	struct link *l;

	ctx = we_are_server ? tls_server_ctx_new(server_pem, server_key, err,
						 sizeof(err)) :
			      tls_client_ctx_new(&o, err, sizeof(err));
	if (!ctx)
		fail_msg("ctx: %s", err);
	tls_ctx_set_versions(ctx, c->version, c->version);
	if (tickets >= 0) /* a server context not as tls_server_ctx_new made it */
		SSL_CTX_set_num_tickets(ctx, (size_t)tickets);
	pctx = peer_ctx(!we_are_server, we_are_server ? NULL : server_pem,
			c->version, c->cipher);
	l = link_new(pctx, !we_are_server);
	hs = tls_handshake_new(ctx, l->fd_ours, we_are_server,
			       we_are_server ? NULL : "localhost", NULL);
	assert_non_null(hs);
	res = run_handshake(l, hs);
	if (res.ours != TLS_HANDSHAKE_DONE)
		fail_msg("%s: our handshake: %s (peer: %s)", c->cipher,
			 tls_handshake_error(hs), res.peer_err);
	assert_true(res.peer_ok);
	assert_non_null(strstr(tls_handshake_describe(hs), c->cipher));

	assert_int_equal(tls_handshake_export(hs, &p, &perr), 0);
	assert_int_equal(p.cipher, c->ours);
	assert_int_equal(p.is_server, we_are_server);
	if (c->version == TLS1_3_VERSION) {
		const uint8_t *cl = l->log.client_secret, *sv = l->log.server_secret;
		size_t sl = c->ours == TLS_CIPHER_AES_256_GCM ? 48 : 32;

		assert_int_equal(p.version, TLS_VERSION_1_3);
		assert_int_equal(l->log.client_secret_len, sl);
		assert_int_equal(l->log.server_secret_len, sl);
		assert_int_equal(p.write.secret_len, sl);
		assert_int_equal(p.read.secret_len, sl);
		assert_memory_equal(p.write.secret, we_are_server ? sv : cl, sl);
		assert_memory_equal(p.read.secret, we_are_server ? cl : sv, sl);
		assert_int_equal(p.read.seq, 0);
		assert_int_equal(p.write.seq, tickets > 0 ? tickets : 0);
	} else {
		struct tls_direction cl = { 0 }, sv = { 0 };
		uint64_t nonces[4];
		size_t nn = sent_nonces(l, nonces, 4);

		assert_int_equal(p.version, TLS_VERSION_1_2);
		tls12_expected_keys(l->peer, c->md, c->key_len, c->iv_len, &cl,
				    &sv);
		assert_memory_equal(p.write.key, (we_are_server ? &sv : &cl)->key,
				    c->key_len);
		assert_memory_equal(p.read.key, (we_are_server ? &cl : &sv)->key,
				    c->key_len);
		assert_memory_equal(p.write.iv, (we_are_server ? &sv : &cl)->iv,
				    c->iv_len);
		assert_memory_equal(p.read.iv, (we_are_server ? &cl : &sv)->iv,
				    c->iv_len);
		assert_int_equal(p.read.seq, 1);
		assert_int_equal(p.write.seq, 1);
		if (c->ours != TLS_CIPHER_CHACHA20_POLY1305) {
			/* our Finished is the one record after our CCS */
			assert_int_equal(nn, 1);
			assert_int_equal(p.write_explicit_nonce, nonces[0] + 1);
		} else {
			assert_int_equal(p.write_explicit_nonce, 0);
		}
	}
	OPENSSL_cleanse(&p, sizeof(p));
	*lp = l;
	*pctxp = pctx;
	*ctxp = ctx;
	return hs;
}

/* The record layer from tls_handshake_finish() against the peer. */
static void interop(const struct suite_case *c, bool we_are_server)
{
	struct link *l;
	SSL_CTX *ctx, *pctx;
	struct tls_handshake *hs = handshake_case(c, we_are_server, -1, &l,
						  &pctx, &ctx);
	const char *err = NULL;
	struct tls_record *rec = tls_handshake_finish(hs, &err);
	bool tls13 = c->version == TLS1_3_VERSION;
	size_t before, n;
	uint8_t got[10000];
	int r;

	if (!rec)
		fail_msg("finish: %s", err);
	tls_handshake_free(hs);
	assert_int_equal(tls_record_cipher(rec), c->ours);

	/* several KB both ways, more than one record each */
	ours_to_peer(l, rec, 40000, 1);
	peer_to_ours(l, rec, 40000, 2);
	ours_to_peer(l, rec, 1, 3);
	peer_to_ours(l, rec, 1, 4);

	if (tls13) {
		/* the peer updates its key and asks for ours: our answer is
		 * a KeyUpdate the peer receives before our next data */
		assert_int_equal(SSL_key_update(l->peer, SSL_KEY_UPDATE_REQUESTED), 1);
		peer_to_ours(l, rec, 5000, 5);
		ours_to_peer(l, rec, 5000, 6);
		assert_int_equal(l->log.key_updates_sent, 1);
		assert_int_equal(l->log.key_updates_received, 1);
		/* not requested: we must not answer */
		assert_int_equal(SSL_key_update(l->peer,
						SSL_KEY_UPDATE_NOT_REQUESTED), 1);
		peer_to_ours(l, rec, 3000, 7);
		ours_to_peer(l, rec, 3000, 8);
		assert_int_equal(l->log.key_updates_sent, 2);
		assert_int_equal(l->log.key_updates_received, 1);
	}

	/* migration in the middle of a record: part of the peer's record is
	 * fed, the plaintext before it is not taken yet */
	assert_int_equal(SSL_write(l->peer, "first ", 6), 6);
	pattern(got, sizeof(got), 9);
	assert_int_equal(SSL_write(l->peer, got, sizeof(got)), (int)sizeof(got));
	shuttle(l);
	assert_int_equal(our_read(l, rec, 6 + 5 + 16 + (tls13 ? 1 : 0) + 5 +
						  100), TLS_RECORD_OK);
	rec = save_load(rec);
	assert_int_equal(our_read(l, rec, 0), TLS_RECORD_OK);
	{
		uint8_t all[6 + sizeof(got)], want[sizeof(got)];
		size_t have = 0;

		have = take_plaintext(rec, all, sizeof(all));
		assert_int_equal(have, sizeof(all));
		assert_memory_equal(all, "first ", 6);
		pattern(want, sizeof(want), 9);
		assert_memory_equal(all + 6, want, sizeof(want));
	}
	rec = save_load(rec);
	ours_to_peer(l, rec, 20000, 10);
	peer_to_ours(l, rec, 20000, 11);
	if (tls13) {
		/* a KeyUpdate after the migration: the loaded secrets step */
		assert_int_equal(SSL_key_update(l->peer, SSL_KEY_UPDATE_REQUESTED), 1);
		peer_to_ours(l, rec, 100, 12);
		ours_to_peer(l, rec, 100, 13);
		assert_int_equal(l->log.key_updates_received, 2);
	}

	if (c->version == TLS1_2_VERSION &&
	    c->ours != TLS_CIPHER_CHACHA20_POLY1305) {
		/* on the wire: our explicit nonces continue OpenSSL's
		 * counter, one per record, across the migrations */
		uint64_t nonces[64];
		size_t k = sent_nonces(l, nonces, 64);

		/* Finished + 3 + 1 + 2 records of data */
		assert_int_equal(k, 7);
		for (size_t i = 1; i < k; i++)
			assert_int_equal(nonces[i], nonces[i - 1] + 1);
	}

	/* close_notify: ours first, then the peer's */
	before = l->sent_len;
	tls_record_close(rec);
	our_flush(l, rec);
	shuttle(l);
	assert_true(l->sent_len > before);
	r = SSL_read(l->peer, got, sizeof(got));
	assert_int_equal(r, 0);
	assert_int_equal(SSL_get_error(l->peer, r), SSL_ERROR_ZERO_RETURN);
	assert_true(SSL_shutdown(l->peer) >= 0);
	shuttle(l);
	assert_int_equal(our_read(l, rec, 0), TLS_RECORD_CLOSED);
	assert_true(tls_record_peer_closed(rec));
	(void)tls_record_plaintext(rec, &n);
	assert_int_equal(n, 0);

	tls_record_free(rec);
	link_free(l);
	SSL_CTX_free(pctx);
	SSL_CTX_free(ctx);
}

/* The handshake alone: keys, sequence numbers, nonce (handshake_case). */
static void handshake_only(const struct suite_case *c, bool we_are_server)
{
	struct link *l;
	SSL_CTX *ctx, *pctx;
	struct tls_handshake *hs = handshake_case(c, we_are_server, -1, &l,
						  &pctx, &ctx);

	tls_handshake_free(hs);
	link_free(l);
	SSL_CTX_free(pctx);
	SSL_CTX_free(ctx);
}

#define CASE(i)                                                               \
	static void test_hs_client_##i(void **s) { handshake_only(&cases[i], false); } \
	static void test_hs_server_##i(void **s) { handshake_only(&cases[i], true); }  \
	static void test_client_##i(void **s) { interop(&cases[i], false); }  \
	static void test_server_##i(void **s) { interop(&cases[i], true); }
CASE(0)
CASE(1)
CASE(2)
CASE(3)
CASE(4)
CASE(5)

/* A TLS 1.3 server context that does write tickets inside SSL_accept: they
 * are counted into our write sequence number (a wrong count would fail the
 * peer's first SSL_read with bad_record_mac). */
static void test_server_tickets_counted(void **s)
{
	struct link *l;
	SSL_CTX *ctx, *pctx;
	struct tls_handshake *hs = handshake_case(&cases[3], true, 2, &l, &pctx,
						  &ctx);
	const char *err = NULL;
	struct tls_record *rec = tls_handshake_finish(hs, &err);

	if (!rec)
		fail_msg("finish: %s", err);
	tls_handshake_free(hs);
	ours_to_peer(l, rec, 3000, 1);
	peer_to_ours(l, rec, 3000, 2);
	tls_record_free(rec);
	link_free(l);
	SSL_CTX_free(pctx);
	SSL_CTX_free(ctx);
}

/* A TLS 1.3 client may send data right behind its Finished, before our
 * server step has read the Finished: OpenSSL must leave it in the socket
 * (read-ahead off, our BIO reads what it is asked) for the record layer. */
static void test_data_behind_finished(void **s)
{
	static const char msg[] = "NICK behind-the-finished";
	char err[256] = "";
	SSL_CTX *ctx = tls_server_ctx_new(server_pem, server_key, err,
					  sizeof(err));
	SSL_CTX *pctx = peer_ctx(false, NULL, TLS1_3_VERSION, NULL);
	struct link *l = link_new(pctx, false);
	struct tls_handshake *hs = tls_handshake_new(ctx, l->fd_ours, true,
						     NULL, NULL);
	enum tls_handshake_status st = TLS_HANDSHAKE_WANT_READ;
	bool peer_ok = false;
	struct tls_record *rec;
	const char *e = NULL;
	uint8_t got[64];
	int queued = 0;

	for (int i = 0; i < 100 && !(peer_ok && st == TLS_HANDSHAKE_DONE); i++) {
		if (!peer_ok && SSL_do_handshake(l->peer) == 1) {
			peer_ok = true;
			assert_int_equal(SSL_write(l->peer, msg, sizeof(msg)),
					 sizeof(msg));
		}
		shuttle(l);
		if (st > 0)
			st = tls_handshake_step(hs);
		shuttle(l);
	}
	assert_true(peer_ok);
	assert_int_equal(st, TLS_HANDSHAKE_DONE);
	assert_int_equal(ioctl(l->fd_ours, FIONREAD, &queued), 0);
	assert_true(queued > (int)sizeof(msg)); /* still in the socket */
	rec = tls_handshake_finish(hs, &e);
	if (!rec)
		fail_msg("finish: %s", e);
	assert_int_equal(our_read(l, rec, 0), TLS_RECORD_OK);
	assert_int_equal(take_plaintext(rec, got, sizeof(got)), sizeof(msg));
	assert_memory_equal(got, msg, sizeof(msg));
	tls_record_free(rec);
	tls_handshake_free(hs);
	link_free(l);
	SSL_CTX_free(pctx);
	SSL_CTX_free(ctx);
}

/* ---- verification ------------------------------------------------------------ */

struct verify_result {
	enum tls_handshake_status ours;
	char error[256];
	char peer_fp[80];
	char sni[64];
};

/* We are the client against a peer server with this certificate. */
static struct verify_result client_against(const char *server_cert,
					   bool verify, const char *host,
					   const char *pin)
{
	struct tls_client_options o = { .verify = verify, .ca_file = ca_pem };
	struct verify_result v = { 0 };
	char err[256] = "";
	SSL_CTX *ctx = tls_client_ctx_new(&o, err, sizeof(err));
	SSL_CTX *pctx = peer_ctx(true, server_cert, 0, NULL);
	struct link *l = link_new(pctx, true);
	struct tls_handshake *hs;
	const char *sni;

	if (!ctx)
		fail_msg("ctx: %s", err);
	hs = tls_handshake_new(ctx, l->fd_ours, false, host, pin);
	assert_non_null(hs);
	v.ours = run_handshake(l, hs).ours;
	snprintf(v.error, sizeof(v.error), "%s", tls_handshake_error(hs));
	snprintf(v.peer_fp, sizeof(v.peer_fp), "%s",
		 tls_handshake_peer_fingerprint(hs));
	sni = SSL_get_servername(l->peer, TLSEXT_NAMETYPE_host_name);
	snprintf(v.sni, sizeof(v.sni), "%s", sni ? sni : "");
	tls_handshake_free(hs);
	link_free(l);
	SSL_CTX_free(pctx);
	SSL_CTX_free(ctx);
	return v;
}

#define assert_failed_with(v, text)                                           \
	do {                                                                  \
		assert_int_equal((v).ours, TLS_HANDSHAKE_ERROR);               \
		assert_string_equal((v).error, (text));                       \
	} while (0)

static void test_verify_ok(void **s)
{
	struct verify_result v = client_against(server_pem, true, "localhost",
						NULL);
	char *fp = tls_cert_file_fingerprint(server_pem);

	assert_int_equal(v.ours, TLS_HANDSHAKE_DONE);
	assert_string_equal(v.sni, "localhost");
	assert_non_null(fp);
	assert_string_equal(v.peer_fp, fp);
	free(fp);
	/* an IP literal: verified against the IP SAN, and no SNI */
	v = client_against(server_pem, true, "127.0.0.1", NULL);
	assert_int_equal(v.ours, TLS_HANDSHAKE_DONE);
	assert_string_equal(v.sni, "");
}

static void test_verify_unknown_ca(void **s)
{
	struct verify_result v = client_against(unknownca_pem, true,
						"localhost", NULL);

	assert_failed_with(v, "certificate verify failed: unable to get local "
			      "issuer certificate");
}

static void test_verify_expired(void **s)
{
	struct verify_result v = client_against(expired_pem, true, "localhost",
						NULL);

	assert_failed_with(v, "certificate verify failed: certificate has expired");
}

static void test_verify_wrong_name(void **s)
{
	struct verify_result v = client_against(wrongname_pem, true,
						"localhost", NULL);

	assert_failed_with(v, "certificate verify failed: hostname mismatch");
	v = client_against(wrongname_pem, true, "127.0.0.1", NULL);
	assert_failed_with(v, "certificate verify failed: IP address mismatch");
	/* the right certificate, asked for another name */
	v = client_against(server_pem, true, "irc.example.net", NULL);
	assert_failed_with(v, "certificate verify failed: hostname mismatch");
}

static void test_fingerprint_mismatch(void **s)
{
	char *want = tls_cert_file_fingerprint(unknownca_pem);
	char *got = tls_cert_file_fingerprint(server_pem);
	char text[256];
	struct verify_result v;

	assert_non_null(want);
	assert_non_null(got);
	assert_string_not_equal(want, got);
	/* a trusted, valid certificate that is not the pinned one */
	v = client_against(server_pem, true, "localhost", want);
	snprintf(text, sizeof(text), "fingerprint mismatch: expected %s got %s",
		 want, got);
	assert_failed_with(v, text);
	free(want);
	free(got);
}

static void test_fingerprint_match_untrusted(void **s)
{
	char *fp = tls_cert_file_fingerprint(unknownca_pem);
	char pin[160];
	size_t i, o = 7;
	struct verify_result v;

	assert_non_null(fp);
	/* untrusted CA and wrong host name: the pin is the trust */
	v = client_against(unknownca_pem, true, "irc.example.net", fp);
	assert_int_equal(v.ours, TLS_HANDSHAKE_DONE);
	assert_string_equal(v.peer_fp, fp);
	/* the same pin written with colons in upper case */
	memcpy(pin, "SHA256:", 7);
	for (i = 7; fp[i]; i += 2) {
		pin[o++] = (char)(fp[i] >= 'a' ? fp[i] - 32 : fp[i]);
		pin[o++] = (char)(fp[i + 1] >= 'a' ? fp[i + 1] - 32 : fp[i + 1]);
		if (fp[i + 2])
			pin[o++] = ':';
	}
	pin[o] = '\0';
	v = client_against(unknownca_pem, true, "localhost", pin);
	assert_int_equal(v.ours, TLS_HANDSHAKE_DONE);
	/* and with verify = no */
	v = client_against(unknownca_pem, false, "localhost", fp);
	assert_int_equal(v.ours, TLS_HANDSHAKE_DONE);
	free(fp);
}

static void test_fingerprint_malformed(void **s)
{
	struct verify_result v = client_against(server_pem, true, "localhost",
						"sha256:abcd");

	assert_failed_with(v, "bad fingerprint \"sha256:abcd\": expected "
			      "sha256:HEX (64 hex digits)");
}

static void test_verify_off_accepts_anything(void **s)
{
	const char *certs[] = { unknownca_pem, expired_pem, wrongname_pem };

	for (size_t i = 0; i < 3; i++) {
		struct verify_result v = client_against(certs[i], false,
							"localhost", NULL);

		assert_int_equal(v.ours, TLS_HANDSHAKE_DONE);
	}
}

/* We are the server; the peer client trusts another CA and says so. */
static void test_peer_alert(void **s)
{
	char err[256] = "";
	SSL_CTX *ctx = tls_server_ctx_new(server_pem, server_key, err,
					  sizeof(err));
	SSL_CTX *pctx = peer_ctx(false, NULL, 0, NULL);
	struct link *l;
	struct tls_handshake *hs;
	struct hs_result res;

	assert_non_null(ctx);
	assert_int_equal(SSL_CTX_load_verify_locations(pctx, other_ca_pem, NULL), 1);
	SSL_CTX_set_verify(pctx, SSL_VERIFY_PEER, NULL);
	l = link_new(pctx, false);
	hs = tls_handshake_new(ctx, l->fd_ours, true, NULL, NULL);
	res = run_handshake(l, hs);
	assert_int_equal(res.ours, TLS_HANDSHAKE_ERROR);
	assert_false(res.peer_ok);
	assert_string_equal(tls_handshake_error(hs), "tls alert: unknown CA");
	tls_handshake_free(hs);
	link_free(l);
	SSL_CTX_free(pctx);
	SSL_CTX_free(ctx);
}

/* The peer goes away after its ClientHello. */
static void test_peer_closes(void **s)
{
	char err[256] = "";
	SSL_CTX *ctx = tls_server_ctx_new(server_pem, server_key, err,
					  sizeof(err));
	SSL_CTX *pctx = peer_ctx(false, NULL, 0, NULL);
	struct link *l = link_new(pctx, false);
	struct tls_handshake *hs = tls_handshake_new(ctx, l->fd_ours, true,
						     NULL, NULL);

	assert_int_equal(tls_handshake_step(hs), TLS_HANDSHAKE_WANT_READ);
	assert_int_equal(SSL_do_handshake(l->peer), -1);
	shuttle(l);
	close(l->fd_peer);
	l->peer_fd_closed = true;
	/* reads the ClientHello, writes its flight (or fails to), sees EOF */
	enum tls_handshake_status st = TLS_HANDSHAKE_WANT_READ;
	for (int i = 0; i < 10 && st > 0; i++)
		st = tls_handshake_step(hs);
	assert_int_equal(st, TLS_HANDSHAKE_ERROR);
	if (strcmp(tls_handshake_error(hs), "peer closed during handshake") &&
	    strcmp(tls_handshake_error(hs), "socket error: Broken pipe"))
		fail_msg("unexpected error: %s", tls_handshake_error(hs));
	tls_handshake_free(hs);
	link_free(l);
	SSL_CTX_free(pctx);
	SSL_CTX_free(ctx);
}

/* A connect that fails: the first step waits for it, then says why. */
static void test_connect_refused(void **s)
{
	struct tls_client_options o = { .verify = true, .ca_file = ca_pem };
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof(a);
	char err[256] = "";
	SSL_CTX *ctx = tls_client_ctx_new(&o, err, sizeof(err));
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	enum tls_handshake_status st = TLS_HANDSHAKE_WANT_WRITE;
	struct tls_handshake *hs;
	struct pollfd pfd = { .fd = fd, .events = POLLOUT };

	/* a port that was just free: bound, never listened on, closed */
	assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(getsockname(lfd, (struct sockaddr *)&a, &alen), 0);
	close(lfd);
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0)
		fail_msg("connected to a closed port");
	hs = tls_handshake_new(ctx, fd, false, "localhost", NULL);
	for (int i = 0; i < 10 && st > 0; i++) {
		assert_true(poll(&pfd, 1, 2000) >= 0);
		st = tls_handshake_step(hs);
	}
	assert_int_equal(st, TLS_HANDSHAKE_ERROR);
	assert_string_equal(tls_handshake_error(hs),
			    "socket error: Connection refused");
	tls_handshake_free(hs);
	close(fd);
	SSL_CTX_free(ctx);
}

/* Client certificate (CertFP): the peer server sees ours. */
static void test_client_cert(void **s)
{
	struct tls_client_options o = { .verify = true, .ca_file = ca_pem,
					.cert_file = client_pem,
					.key_file = client_key };
	char err[256] = "";
	SSL_CTX *ctx = tls_client_ctx_new(&o, err, sizeof(err));
	SSL_CTX *pctx = peer_ctx(true, server_pem, 0, NULL);
	struct link *l;
	struct tls_handshake *hs;
	struct hs_result res;
	char *fp = tls_cert_file_fingerprint(client_pem);
	uint8_t md[32];
	unsigned int mdlen;
	X509 *seen;
	char hex[80];

	if (!ctx)
		fail_msg("ctx: %s", err);
	assert_int_equal(SSL_CTX_load_verify_locations(pctx, ca_pem, NULL), 1);
	SSL_CTX_set_verify(pctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
			   NULL);
	for (int version = TLS1_2_VERSION; version <= TLS1_3_VERSION; version++) {
		SSL_CTX_set_max_proto_version(pctx, version);
		l = link_new(pctx, true);
		hs = tls_handshake_new(ctx, l->fd_ours, false, "localhost", NULL);
		res = run_handshake(l, hs);
		if (res.ours != TLS_HANDSHAKE_DONE)
			fail_msg("%s", tls_handshake_error(hs));
		assert_true(res.peer_ok);
		seen = SSL_get0_peer_certificate(l->peer);
		assert_non_null(seen);
		assert_int_equal(X509_digest(seen, EVP_sha256(), md, &mdlen), 1);
		strcpy(hex, "sha256:");
		for (unsigned i = 0; i < mdlen; i++)
			sprintf(hex + 7 + 2 * i, "%02x", md[i]);
		assert_string_equal(hex, fp);
		tls_handshake_free(hs);
		link_free(l);
	}
	free(fp);
	SSL_CTX_free(pctx);
	SSL_CTX_free(ctx);
}

static void test_ctx_errors(void **s)
{
	struct tls_client_options o = { .verify = true,
					.ca_file = "/nonexistent/ca.pem" };
	char err[256] = "";

	assert_null(tls_client_ctx_new(&o, err, sizeof(err)));
	assert_non_null(strstr(err, "cannot load CA file /nonexistent/ca.pem: "));
	o.ca_file = ca_pem;
	o.cert_file = client_pem;
	o.key_file = server_key;
	assert_null(tls_client_ctx_new(&o, err, sizeof(err)));
	assert_non_null(strstr(err, "does not match"));
	assert_null(tls_server_ctx_new(server_pem, client_key, err, sizeof(err)));
	assert_non_null(strstr(err, "does not match"));
	assert_null(tls_server_ctx_new("/nonexistent.pem", NULL, err, sizeof(err)));
	assert_non_null(strstr(err, "cannot load certificate /nonexistent.pem"));
	assert_null(tls_cert_file_fingerprint("/nonexistent.pem"));
}

/* A peer offering only a suite the record layer lacks gets no handshake. */
static void test_unsupported_suite_refused(void **s)
{
	char err[256] = "";
	SSL_CTX *ctx = tls_server_ctx_new(server_pem, server_key, err,
					  sizeof(err));
	SSL_CTX *pctx = peer_ctx(false, NULL, TLS1_2_VERSION,
				 "ECDHE-RSA-AES128-SHA256");
	struct link *l = link_new(pctx, false);
	struct tls_handshake *hs = tls_handshake_new(ctx, l->fd_ours, true,
						     NULL, NULL);
	struct hs_result res = run_handshake(l, hs);

	assert_int_equal(res.ours, TLS_HANDSHAKE_ERROR);
	assert_string_equal(tls_handshake_error(hs), "tls error: no shared cipher");
	tls_handshake_free(hs);
	link_free(l);
	SSL_CTX_free(pctx);
	SSL_CTX_free(ctx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hs_client_0),
		cmocka_unit_test(test_hs_server_0),
		cmocka_unit_test(test_hs_client_1),
		cmocka_unit_test(test_hs_server_1),
		cmocka_unit_test(test_hs_client_2),
		cmocka_unit_test(test_hs_server_2),
		cmocka_unit_test(test_hs_client_3),
		cmocka_unit_test(test_hs_server_3),
		cmocka_unit_test(test_hs_client_4),
		cmocka_unit_test(test_hs_server_4),
		cmocka_unit_test(test_hs_client_5),
		cmocka_unit_test(test_hs_server_5),
		cmocka_unit_test(test_client_0),
		cmocka_unit_test(test_server_0),
		cmocka_unit_test(test_client_1),
		cmocka_unit_test(test_server_1),
		cmocka_unit_test(test_client_2),
		cmocka_unit_test(test_server_2),
		cmocka_unit_test(test_client_3),
		cmocka_unit_test(test_server_3),
		cmocka_unit_test(test_client_4),
		cmocka_unit_test(test_server_4),
		cmocka_unit_test(test_client_5),
		cmocka_unit_test(test_server_5),
		cmocka_unit_test(test_server_tickets_counted),
		cmocka_unit_test(test_data_behind_finished),
		cmocka_unit_test(test_verify_ok),
		cmocka_unit_test(test_verify_unknown_ca),
		cmocka_unit_test(test_verify_expired),
		cmocka_unit_test(test_verify_wrong_name),
		cmocka_unit_test(test_fingerprint_mismatch),
		cmocka_unit_test(test_fingerprint_match_untrusted),
		cmocka_unit_test(test_fingerprint_malformed),
		cmocka_unit_test(test_verify_off_accepts_anything),
		cmocka_unit_test(test_peer_alert),
		cmocka_unit_test(test_peer_closes),
		cmocka_unit_test(test_connect_refused),
		cmocka_unit_test(test_client_cert),
		cmocka_unit_test(test_ctx_errors),
		cmocka_unit_test(test_unsupported_suite_refused),
	};

	return cmocka_run_group_tests(tests, make_certs, remove_certs);
}
