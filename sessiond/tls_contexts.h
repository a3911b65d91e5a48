/* sessiond/tls_contexts.h: the OpenSSL contexts of a worker's TLS
 * handshakes (tls/handshake.h builds them): one server context for
 * every ircs listener, reloaded when its certificate or key file changes, and
 * client contexts for upstream connections, one per (network, client
 * certificate), built on first use and cached.
 *
 * A context only matters during handshakes: an established connection runs
 * on baton's record layer and never looks at it again, so replacing the
 * server certificate never touches connected clients.
 *
 * Ownership: the cache owns its contexts; a handshake in progress holds its
 * own reference (tls_handshake_new), so a reload never frees one in use.
 */
#ifndef BATON_SESSIOND_TLS_CONTEXTS_H
#define BATON_SESSIOND_TLS_CONTEXTS_H

#include <stddef.h>

#include <openssl/ssl.h>

struct baton_config;
struct config_network;
struct config_session;
struct tls_contexts;

/* cfg must outlive the cache. NULL on allocation failure. */
struct tls_contexts *tls_contexts_new(const struct baton_config *cfg);
void tls_contexts_free(struct tls_contexts *t); /* accepts NULL */

/* The ircs listeners' context. The certificate and key files are checked for
 * changes at most once a second; a changed pair that loads replaces the
 * context (logged), one that does not is logged and the previous context
 * stays. NULL (logged once per change) when nothing could ever be loaded or
 * no tls_cert is configured. */
SSL_CTX *tls_contexts_server(struct tls_contexts *t);

/* The context for session s on network n (n->tls must be set): the
 * network's verification settings and s's client certificate, if any.
 * NULL with a reason in err on failure (unreadable CA file, a certificate
 * and key that do not match, ...). */
SSL_CTX *tls_contexts_client(struct tls_contexts *t,
			     const struct config_network *n,
			     const struct config_session *s, char *err,
			     size_t errlen);

#endif
