/* sessiond/tls_contexts.c: see tls_contexts.h. */
#include "sessiond/tls_contexts.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/config.h"
#include "common/log.h"
#include "common/strmap.h"
#include "tls/handshake.h"

struct tls_contexts {
	const struct baton_config *cfg;
	/* ircs: the loaded context and what its files looked like */
	SSL_CTX *server;
	struct timespec cert_mtime, key_mtime;
	off_t cert_size, key_size;
	time_t checked_at; /* CLOCK_MONOTONIC seconds of the last stat */
	bool server_tried;
	/* upstream: "network\ncert" -> SSL_CTX * (all of them also in
	 * client_list, which owns them) */
	struct strmap *clients;
	SSL_CTX **client_list;
	size_t nclients;
};

struct tls_contexts *tls_contexts_new(const struct baton_config *cfg)
{
	struct tls_contexts *t = calloc(1, sizeof(*t));

	if (t == NULL)
		return NULL;
	t->cfg = cfg;
	t->clients = strmap_new();
	if (t->clients == NULL) {
		free(t);
		return NULL;
	}
	return t;
}

void tls_contexts_free(struct tls_contexts *t)
{
	if (t == NULL)
		return;
	SSL_CTX_free(t->server);
	for (size_t i = 0; i < t->nclients; i++)
		SSL_CTX_free(t->client_list[i]);
	free(t->client_list);
	strmap_free(t->clients);
	free(t);
}

static bool same_file(const char *path, struct timespec *mtime, off_t *size,
		      bool update)
{
	struct stat st;

	if (path == NULL || stat(path, &st) < 0)
		return true; /* nothing new to load: keep what we have */
	bool same = st.st_mtim.tv_sec == mtime->tv_sec &&
		    st.st_mtim.tv_nsec == mtime->tv_nsec && st.st_size == *size;
	if (update) {
		*mtime = st.st_mtim;
		*size = st.st_size;
	}
	return same;
}

SSL_CTX *tls_contexts_server(struct tls_contexts *t)
{
	const struct baton_config *cfg = t->cfg;
	struct timespec now;
	char err[256];
	SSL_CTX *ctx;

	if (cfg == NULL || cfg->listen_tls_cert == NULL)
		return NULL;
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (t->server_tried && now.tv_sec == t->checked_at)
		return t->server;
	t->checked_at = now.tv_sec;
	if (t->server_tried &&
	    same_file(cfg->listen_tls_cert, &t->cert_mtime, &t->cert_size, false) &&
	    same_file(cfg->listen_tls_key, &t->key_mtime, &t->key_size, false))
		return t->server;
	/* Record the files' state before loading: a file that changes while
	 * we read it is loaded again on the next check. */
	same_file(cfg->listen_tls_cert, &t->cert_mtime, &t->cert_size, true);
	same_file(cfg->listen_tls_key, &t->key_mtime, &t->key_size, true);
	ctx = tls_server_ctx_new(cfg->listen_tls_cert, cfg->listen_tls_key, err,
				 sizeof(err));
	if (ctx == NULL) {
		log_error("tls", "ircs certificate %s: %s%s", cfg->listen_tls_cert,
			  err, t->server ? " (keeping the previous one)" : "");
	} else {
		log_info("tls", "%s ircs certificate %s",
			 t->server_tried ? "reloaded" : "loaded",
			 cfg->listen_tls_cert);
		SSL_CTX_free(t->server);
		t->server = ctx;
	}
	t->server_tried = true;
	return t->server;
}

SSL_CTX *tls_contexts_client(struct tls_contexts *t,
			     const struct config_network *n,
			     const struct config_session *s, char *err,
			     size_t errlen)
{
	const char *cert = s != NULL ? s->tls_cert : NULL;
	const char *key = s != NULL ? s->tls_key : NULL;
	char *k = NULL;
	SSL_CTX *ctx;

	if (asprintf(&k, "%s\n%s", n->name, cert ? cert : "") < 0) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	ctx = strmap_get(t->clients, k);
	if (ctx != NULL) {
		free(k);
		return ctx;
	}
	struct tls_client_options o = {
		.verify = n->tls_verify != 0,
		.ca_file = n->tls_ca,
		.cert_file = cert,
		.key_file = key,
	};
	SSL_CTX **list = realloc(t->client_list,
				 (t->nclients + 1) * sizeof(*list));
	if (list == NULL) {
		free(k);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	t->client_list = list;
	ctx = tls_client_ctx_new(&o, err, errlen);
	if (ctx != NULL)
		t->client_list[t->nclients++] = ctx;
	if (ctx != NULL && strmap_put(t->clients, k, ctx) < 0) {
		ctx = NULL; /* freed with the list */
		snprintf(err, errlen, "out of memory");
	}
	if (ctx != NULL && !n->tls_verify && n->tls_fingerprint == NULL)
		log_warn("tls", "network %s: tls_verify = no: the server's certificate is NOT checked; anyone on the path can read and change this connection (pin it with tls_fingerprint instead)",
			 n->name);
	free(k);
	return ctx;
}
