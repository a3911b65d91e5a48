/* common/config.c: see config.h. inih does the tokenizing; line numbers come
 * from our own line reader (Debian's inih is built without
 * INI_HANDLER_LINENO), which also catches lines longer than inih's
 * INI_MAX_LINE instead of letting them be silently truncated. */
#include "common/config.h"
#include "common/names.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <ini.h>

#include "common/strmap.h"

struct config_parse {
	struct baton_config *cfg;
	struct config_problems *problems;
	FILE *file;
	int line;          /* line number of the line inih is handling */
};

void config_problems_add(struct config_problems *p, const char *fmt, ...)
{
	char **grown;
	char *msg = NULL;
	va_list ap;

	va_start(ap, fmt);
	if (vasprintf(&msg, fmt, ap) < 0)
		msg = NULL;
	va_end(ap);
	if (msg == NULL)
		return;
	grown = realloc(p->msgs, (p->n + 1) * sizeof(*p->msgs));
	if (grown == NULL) {
		free(msg);
		return;
	}
	p->msgs = grown;
	p->msgs[p->n++] = msg;
}

void config_problems_clear(struct config_problems *p)
{
	for (size_t i = 0; i < p->n; i++)
		free(p->msgs[i]);
	free(p->msgs);
	p->msgs = NULL;
	p->n = 0;
}

/* A problem at the line inih is handling. */
static void __attribute__((format(printf, 2, 3)))
config_problem(struct config_parse *ps, const char *fmt, ...)
{
	char *msg = NULL;
	va_list ap;

	va_start(ap, fmt);
	if (vasprintf(&msg, fmt, ap) < 0)
		msg = NULL;
	va_end(ap);
	if (msg == NULL)
		return;
	config_problems_add(ps->problems, "%s:%d: %s", ps->cfg->path, ps->line,
			    msg);
	free(msg);
}

#define PROBLEM config_problem

/* Grow an array of structs by one zeroed element; returns it or NULL. */
static void *config_grow(void **array, size_t *n, size_t size)
{
	char *grown = realloc(*array, (*n + 1) * size);

	if (grown == NULL)
		return NULL;
	memset(grown + *n * size, 0, size);
	*array = grown;
	return grown + (*n)++ * size;
}

static void config_set_str(char **dst, const char *value)
{
	free(*dst);
	*dst = strdup(value);
}

static int config_int(struct config_parse *ps, const char *name,
		      const char *value, int min, int max, int *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(value, &end, 10);
	if (errno != 0 || end == value || *end != '\0' || v < min || v > max) {
		PROBLEM(ps, "%s: expected a whole number from %d to %d, got '%s'",
			name, min, max, value);
		return -EINVAL;
	}
	*out = (int)v;
	return 0;
}

/* "HOST:PORT" or "[V6]:PORT" -> host, port (malloc'd). */
static int config_split_hostport(const char *value, char **host, char **port)
{
	const char *colon;
	char *end;
	long p;

	if (value[0] == '[') {
		const char *close = strchr(value, ']');

		if (close == NULL || close[1] != ':')
			return -EINVAL;
		*host = strndup(value + 1, (size_t)(close - value - 1));
		colon = close + 1;
	} else {
		colon = strrchr(value, ':');
		if (colon == NULL || colon == value)
			return -EINVAL;
		*host = strndup(value, (size_t)(colon - value));
	}
	p = strtol(colon + 1, &end, 10);
	if (*end != '\0' || end == colon + 1 || p < 1 || p > 65535) {
		free(*host);
		*host = NULL;
		return -EINVAL;
	}
	*port = strdup(colon + 1);
	return 0;
}

static int config_split_channels(struct config_session *s, const char *value)
{
	char *copy = strdup(value), *save = NULL, *tok;

	if (copy == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < s->nchannels; i++)
		free(s->channels[i]);
	free(s->channels);
	s->channels = NULL;
	s->nchannels = 0;
	for (tok = strtok_r(copy, " \t,", &save); tok != NULL;
	     tok = strtok_r(NULL, " \t,", &save)) {
		char **grown = realloc(s->channels,
				       (s->nchannels + 1) * sizeof(char *));

		if (grown == NULL)
			break;
		s->channels = grown;
		s->channels[s->nchannels++] = strdup(tok);
	}
	free(copy);
	return 0;
}

/* Index lookups: the maps store array index + 1 (arrays move on growth). */
/* yes/no, true/false, on/off, 1/0. */
static int config_bool(struct config_parse *ps, const char *name,
		       const char *value, int *out)
{
	static const char *const yes[] = { "yes", "true", "on", "1" };
	static const char *const no[] = { "no", "false", "off", "0" };

	for (size_t i = 0; i < 4; i++) {
		if (strcasecmp(value, yes[i]) == 0) {
			*out = 1;
			return 0;
		}
		if (strcasecmp(value, no[i]) == 0) {
			*out = 0;
			return 0;
		}
	}
	PROBLEM(ps, "%s: expected yes or no, got '%s'", name, value);
	return -1;
}

/* "sha256:HEX" with optional colons between bytes, any case -> lowercase
 * "sha256:" + 64 hex digits; NULL if malformed. */
static char *config_fingerprint(const char *value)
{
	char *out;
	size_t n = 0;

	if (strncasecmp(value, "sha256:", 7) != 0)
		return NULL;
	out = malloc(7 + 64 + 1);
	if (out == NULL)
		return NULL;
	memcpy(out, "sha256:", 7);
	for (const char *p = value + 7; *p; p++) {
		if (*p == ':')
			continue;
		if (!isxdigit((unsigned char)*p) || n == 64) {
			free(out);
			return NULL;
		}
		out[7 + n++] = (char)tolower((unsigned char)*p);
	}
	if (n != 64) {
		free(out);
		return NULL;
	}
	out[7 + n] = '\0';
	return out;
}

/* Space-separated words into a new array (bind = ADDR ADDR ...). */
static int config_split_words(const char *value, char ***out, size_t *n)
{
	char *copy = strdup(value), *save = NULL;

	if (copy == NULL)
		return -1;
	for (char *w = strtok_r(copy, " \t,", &save); w != NULL;
	     w = strtok_r(NULL, " \t,", &save)) {
		char **slot = config_grow((void **)out, n, sizeof(**out));

		if (slot == NULL || (*slot = strdup(w)) == NULL) {
			free(copy);
			return -1;
		}
	}
	free(copy);
	return 0;
}

static void config_key_network(struct config_parse *ps,
			       struct config_network *n, const char *name,
			       const char *value)
{
	static const struct {
		const char *name;
		size_t offset;
		int min, max;
	} ints[] = {
		{ "connects_per_minute", offsetof(struct config_network, connects_per_minute), 1, 6000 },
		{ "connect_burst", offsetof(struct config_network, connect_burst), 1, 10000 },
		{ "max_connections_per_ip", offsetof(struct config_network, max_connections_per_ip), 1, 100000 },
	};

	if (strcmp(name, "host") == 0) {
		config_set_str(&n->host, value);
		return;
	}
	if (strcmp(name, "port") == 0) {
		int port;

		if (config_int(ps, name, value, 1, 65535, &port) == 0)
			config_set_str(&n->port, value);
		return;
	}
	if (strcmp(name, "tls") == 0) {
		config_bool(ps, name, value, &n->tls);
		return;
	}
	if (strcmp(name, "tls_verify") == 0) {
		config_bool(ps, name, value, &n->tls_verify);
		return;
	}
	if (strcmp(name, "tls_ca") == 0) {
		free(n->tls_ca);
		n->tls_ca = config_resolve(ps->cfg, value);
		return;
	}
	if (strcmp(name, "tls_fingerprint") == 0) {
		char *fp = config_fingerprint(value);

		if (fp == NULL)
			PROBLEM(ps, "tls_fingerprint: expected sha256:HEX (64 hex digits, colons allowed), got '%s'",
				value);
		else {
			free(n->tls_fingerprint);
			n->tls_fingerprint = fp;
		}
		return;
	}
	if (strcmp(name, "bind") == 0) {
		/* Repeated bind lines add to the pool (a line holds at most
		 * 199 characters). */
		size_t first = n->nbind;

		if (config_split_words(value, &n->bind, &n->nbind) < 0)
			return;
		for (size_t i = first; i < n->nbind; i++) {
			unsigned char addr[16];
			char canon[INET6_ADDRSTRLEN];
			int af = AF_INET;

			if (inet_pton(AF_INET, n->bind[i], addr) != 1) {
				af = AF_INET6;
				if (inet_pton(AF_INET6, n->bind[i], addr) != 1) {
					PROBLEM(ps, "bind: '%s' is not an IPv4 or IPv6 address",
						n->bind[i]);
					continue;
				}
			}
			/* Canonical text, so it compares equal to what
			 * getsockname() + inet_ntop() say after a migration. */
			if (inet_ntop(af, addr, canon, sizeof(canon)) != NULL &&
			    strcmp(canon, n->bind[i]) != 0) {
				char *c = strdup(canon);

				if (c != NULL) {
					free(n->bind[i]);
					n->bind[i] = c;
				}
			}
		}
		return;
	}
	for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
		if (strcmp(name, ints[i].name) == 0) {
			config_int(ps, name, value, ints[i].min, ints[i].max,
				   (int *)((char *)n + ints[i].offset));
			return;
		}
	}
	PROBLEM(ps, "unknown key '%s' in [network %s]", name, n->name);
}

static size_t config_index_get(const struct strmap *index, const char *key)
{
	return index != NULL ? (size_t)(uintptr_t)strmap_get(index, key) : 0;
}

static void config_index_put(struct strmap *index, const char *key, size_t n)
{
	if (index != NULL)
		strmap_put(index, key, (void *)(uintptr_t)n);
}

static char *config_session_key(char *out, size_t n, const char *user,
				const char *network)
{
	snprintf(out, n, "%s/%s", user, network);
	return out;
}

static struct config_network *config_network_get(struct config_parse *ps,
						 const char *name, bool create)
{
	struct baton_config *cfg = ps->cfg;
	struct config_network *n;
	size_t at = config_index_get(cfg->network_index, name);

	if (at > 0)
		return &cfg->networks[at - 1];
	if (!create)
		return NULL;
	n = config_grow((void **)&cfg->networks, &cfg->nnetworks, sizeof(*n));
	if (n != NULL) {
		n->name = strdup(name);
		n->line = ps->line;
		n->tls_verify = 1;
		n->connects_per_minute = 4;
		n->connect_burst = 4;
		n->max_connections_per_ip = 3;
		config_index_put(cfg->network_index, name, cfg->nnetworks);
	}
	return n;
}

static struct config_user *config_user_get(struct config_parse *ps,
					   const char *name, bool create)
{
	struct baton_config *cfg = ps->cfg;
	struct config_user *u;
	size_t at = config_index_get(cfg->user_index, name);

	if (at > 0)
		return &cfg->users[at - 1];
	if (!create)
		return NULL;
	u = config_grow((void **)&cfg->users, &cfg->nusers, sizeof(*u));
	if (u != NULL) {
		u->name = strdup(name);
		u->line = ps->line;
		config_index_put(cfg->user_index, name, cfg->nusers);
	}
	return u;
}

static struct config_session *config_session_get(struct config_parse *ps,
						 const char *user,
						 const char *network)
{
	struct baton_config *cfg = ps->cfg;
	struct config_session *s;
	char key[512];
	size_t at = config_index_get(cfg->session_index,
				     config_session_key(key, sizeof(key), user,
							network));

	if (at > 0)
		return &cfg->sessions[at - 1];
	s = config_grow((void **)&cfg->sessions, &cfg->nsessions, sizeof(*s));
	if (s != NULL) {
		s->user = strdup(user);
		s->network = strdup(network);
		s->line = ps->line;
		config_index_put(cfg->session_index, key, cfg->nsessions);
	}
	return s;
}

static bool config_valid_name(const char *name)
{
	if (*name == '\0')
		return false;
	for (const char *p = name; *p; p++)
		if (*p == '/' || *p == '@' || *p == ':' || *p == ' ' ||
		    *p == '\t')
			return false;
	return true;
}

static void config_key_supervisor(struct config_parse *ps, const char *name,
				  const char *value)
{
	struct baton_config *cfg = ps->cfg;

	if (strcmp(name, "control") == 0)
		config_set_str(&cfg->control, value);
	else if (strcmp(name, "sessiond") == 0)
		config_set_str(&cfg->sessiond, value);
	else if (strcmp(name, "state_dir") == 0)
		config_set_str(&cfg->state_dir, value);
	else if (strcmp(name, "handoff_timeout") == 0)
		config_int(ps, name, value, 1, 3600, &cfg->handoff_timeout_s);
	else if (strcmp(name, "metrics") == 0) {
		char *h = NULL, *p = NULL;

		if (config_split_hostport(value, &h, &p) < 0)
			PROBLEM(ps, "metrics: expected HOST:PORT, got '%s'",
				value);
		else
			config_set_str(&cfg->metrics, value);
		free(h);
		free(p);
	} else
		PROBLEM(ps, "unknown key '%s' in [supervisor]", name);
}

/* Every [sessiond] key with its default and range: the one table the
 * parser, the defaults and docs/config.md follow. */
static const struct config_int_key {
	const char *name;
	size_t offset;
	int def, min, max;
} config_sessiond_keys[] = {
	{ "backlog_lines", offsetof(struct baton_config, backlog_lines), 500, 1, 1000000 },
	{ "backlog_buffer_bytes", offsetof(struct baton_config, backlog_buffer_bytes), 256 << 10, 1024, 64 << 20 },
	{ "backlog_buffers", offsetof(struct baton_config, backlog_buffers), 100, 1, 10000 },
	{ "backlog_session_lines", offsetof(struct baton_config, backlog_session_lines), 20000, 1, 1000000 },
	{ "backlog_session_bytes", offsetof(struct baton_config, backlog_session_bytes), 4 << 20, 64 << 10, 64 << 20 },
	/* 252 clients + the upstream: 253 fds, what one message can carry */
	{ "max_clients_per_session", offsetof(struct baton_config, max_clients_per_session), 16, 1, 252 },
	{ "max_channels", offsetof(struct baton_config, max_channels), 250, 1, 10000 },
	{ "max_channel_members", offsetof(struct baton_config, max_channel_members), 50000, 1, 10000000 },
	{ "member_list_bytes", offsetof(struct baton_config, member_list_bytes), 2 << 20, 64 << 10, 64 << 20 },
	{ "chunk_sessions", offsetof(struct baton_config, chunk_sessions), 256, 1, 100000 },
	{ "chunk_bytes", offsetof(struct baton_config, chunk_bytes), 1 << 20, 4096, 256 << 20 },
	{ "ping_interval", offsetof(struct baton_config, ping_interval_s), 60, 1, 86400 },
	{ "ping_timeout", offsetof(struct baton_config, ping_timeout_s), 240, 2, 86400 },
	{ "reconnect_min", offsetof(struct baton_config, reconnect_min_s), 2, 1, 86400 },
	{ "reconnect_max", offsetof(struct baton_config, reconnect_max_s), 300, 1, 86400 },
	{ "handshake_budget_ms", offsetof(struct baton_config, handshake_budget_ms), 500, 0, 60000 },
	{ "auth_threads", offsetof(struct baton_config, auth_threads), 1, 1, 64 },
	{ "auth_queue", offsetof(struct baton_config, auth_queue), 4096, 1, 1000000 },
};

/* [listen] limits with their defaults and ranges (0 is "no limit" where
 * min is 0): the one table the parser and the defaults follow. */
static const struct config_int_key config_listen_keys[] = {
	{ "max_pending", offsetof(struct baton_config, max_pending), 4096, 0, 1000000 },
	{ "max_pending_per_ip", offsetof(struct baton_config, max_pending_per_ip), 16, 0, 1000000 },
	{ "max_tls_handshakes", offsetof(struct baton_config, max_tls_handshakes), 1024, 0, 1000000 },
	{ "max_tls_handshakes_per_ip", offsetof(struct baton_config, max_tls_handshakes_per_ip), 32, 0, 1000000 },
	{ "tls_handshake_timeout", offsetof(struct baton_config, tls_handshake_timeout_s), 10, 1, 3600 },
	{ "prelogin_max_lines", offsetof(struct baton_config, prelogin_max_lines), 64, 0, 1000000 },
	{ "prelogin_max_bytes", offsetof(struct baton_config, prelogin_max_bytes), 16384, 0, 1 << 30 },
	{ "prelogin_sendq", offsetof(struct baton_config, prelogin_sendq), 16384, 0, 4 << 20 },
	{ "prelogin_rate", offsetof(struct baton_config, prelogin_rate), 5, 0, 1000000 },
	{ "prelogin_burst", offsetof(struct baton_config, prelogin_burst), 20, 1, 1000000 },
	{ "login_failures_free", offsetof(struct baton_config, login_failures_free), 5, 0, 1000000 },
	{ "login_throttle_max", offsetof(struct baton_config, login_throttle_max_s), 300, 1, 86400 },
	{ "login_throttle_entries", offsetof(struct baton_config, login_throttle_entries), 16384, 16, 10000000 },
};

/* [canary] (supervisor/gates.h): thresholds of the health gates and the
 * release safety net, with their defaults and ranges. */
static const struct config_int_key config_canary_keys[] = {
	{ "bake", offsetof(struct baton_config, canary_bake_s), 300, 0, 7 * 86400 },
	{ "sample_ms", offsetof(struct baton_config, canary_sample_ms), 1000, 100, 60000 },
	{ "min_lines", offsetof(struct baton_config, canary_min_lines), 500, 1, 100000000 },
	{ "trip_samples", offsetof(struct baton_config, canary_trip_samples), 3, 1, 1000 },
	{ "watchdog_ms", offsetof(struct baton_config, canary_watchdog_ms), 5000, 100, 600000 },
	{ "adopt_ping_timeout", offsetof(struct baton_config, canary_adopt_ping_timeout_s), 10, 1, 3600 },
	{ "ping_answer_timeout", offsetof(struct baton_config, canary_ping_answer_timeout_s), 5, 1, 3600 },
	{ "delivery_lines", offsetof(struct baton_config, canary_delivery_lines), 4, 0, 1000000 },
	{ "delivery_permille", offsetof(struct baton_config, canary_delivery_permille), 5, 0, 1000 },
	{ "latency_p99_ratio_pct", offsetof(struct baton_config, canary_latency_p99_ratio_pct), 300, 100, 100000 },
	{ "latency_p99_margin_ms", offsetof(struct baton_config, canary_latency_p99_margin_ms), 20, 0, 600000 },
	{ "loop_lag_margin_ms", offsetof(struct baton_config, canary_loop_lag_margin_ms), 200, 0, 600000 },
	{ "cpu_ratio_pct", offsetof(struct baton_config, canary_cpu_ratio_pct), 300, 100, 100000 },
	{ "rss_growth_kb_per_min", offsetof(struct baton_config, canary_rss_growth_kb_per_min), 512, 0, 100000000 },
	{ "error_numerics_per_hour", offsetof(struct baton_config, canary_error_numerics_per_hour), 120, 0, 100000000 },
	{ "rollback_window", offsetof(struct baton_config, canary_rollback_window_s), 300, 0, 86400 },
	{ "releases_kept", offsetof(struct baton_config, canary_releases_kept), 5, 2, 1000 },
};

#define CONFIG_NKEYS(t) (sizeof(t) / sizeof((t)[0]))

static void config_int_defaults(void *cfg, const struct config_int_key *keys,
				size_t n)
{
	for (size_t i = 0; i < n; i++)
		*(int *)((char *)cfg + keys[i].offset) = keys[i].def;
}

static bool config_int_table(struct config_parse *ps, void *cfg,
			     const struct config_int_key *keys, size_t n,
			     const char *name, const char *value)
{
	for (size_t i = 0; i < n; i++) {
		if (strcmp(name, keys[i].name) == 0) {
			config_int(ps, name, value, keys[i].min, keys[i].max,
				   (int *)((char *)cfg + keys[i].offset));
			return true;
		}
	}
	return false;
}

const struct baton_config *config_default_values(void)
{
	static struct baton_config defaults;
	static bool set;

	if (!set) {
		for (size_t i = 0; i < sizeof(config_sessiond_keys) / sizeof(config_sessiond_keys[0]); i++)
			*(int *)((char *)&defaults + config_sessiond_keys[i].offset) =
				config_sessiond_keys[i].def;
		for (size_t i = 0; i < sizeof(config_listen_keys) / sizeof(config_listen_keys[0]); i++)
			*(int *)((char *)&defaults + config_listen_keys[i].offset) =
				config_listen_keys[i].def;
		config_int_defaults(&defaults, config_canary_keys,
				    CONFIG_NKEYS(config_canary_keys));
		defaults.handoff_timeout_s = 10;
		set = true;
	}
	return &defaults;
}

static void config_key_sessiond(struct config_parse *ps, const char *name,
				const char *value)
{
	struct baton_config *cfg = ps->cfg;

	for (size_t i = 0; i < sizeof(config_sessiond_keys) / sizeof(config_sessiond_keys[0]); i++) {
		const struct config_int_key *k = &config_sessiond_keys[i];

		if (strcmp(name, k->name) == 0) {
			config_int(ps, name, value, k->min, k->max,
				   (int *)((char *)cfg + k->offset));
			return;
		}
	}
	PROBLEM(ps, "unknown key '%s' in [sessiond]", name);
}

static void config_key_listen(struct config_parse *ps, const char *name,
			      const char *value)
{
	struct baton_config *cfg = ps->cfg;
	struct config_listen *l;
	char *host = NULL, *port = NULL;

	for (size_t i = 0; i < sizeof(config_listen_keys) / sizeof(config_listen_keys[0]); i++) {
		if (strcmp(name, config_listen_keys[i].name) == 0) {
			config_int(ps, name, value, config_listen_keys[i].min,
				   config_listen_keys[i].max,
				   (int *)((char *)cfg + config_listen_keys[i].offset));
			return;
		}
	}

	if (strcmp(name, "tls_cert") == 0 || strcmp(name, "tls_key") == 0) {
		char **dst = name[4] == 'c' ? &cfg->listen_tls_cert :
					      &cfg->listen_tls_key;

		free(*dst);
		*dst = config_resolve(cfg, value);
		return;
	}
	if (strcmp(name, "irc") != 0 && strcmp(name, "ircs") != 0) {
		PROBLEM(ps, "unknown key '%s' in [listen] (known: irc, ircs, tls_cert, tls_key and the limits in docs/config.md)",
			name);
		return;
	}
	if (config_split_hostport(value, &host, &port) < 0) {
		PROBLEM(ps, "%s: expected HOST:PORT, got '%s'", name, value);
		return;
	}
	l = config_grow((void **)&cfg->listens, &cfg->nlistens, sizeof(*l));
	if (l == NULL) {
		free(host);
		free(port);
		return;
	}
	l->kind = strdup(name);
	l->host = host;
	l->port = port;
	l->line = ps->line;
}

static int config_handler(void *user, const char *section, const char *name,
			  const char *value)
{
	struct config_parse *ps = user;
	char kind[64] = "", arg[192] = "";

	if (sscanf(section, "%63s %191s", kind, arg) < 1) {
		PROBLEM(ps, "key '%s' outside of any section", name);
		return 1;
	}
	if (strcmp(kind, "supervisor") == 0 && arg[0] == '\0') {
		config_key_supervisor(ps, name, value);
	} else if (strcmp(kind, "sessiond") == 0 && arg[0] == '\0') {
		config_key_sessiond(ps, name, value);
	} else if (strcmp(kind, "listen") == 0 && arg[0] == '\0') {
		config_key_listen(ps, name, value);
	} else if (strcmp(kind, "canary") == 0 && arg[0] == '\0') {
		if (!config_int_table(ps, ps->cfg, config_canary_keys,
				      CONFIG_NKEYS(config_canary_keys), name, value))
			PROBLEM(ps, "unknown key '%s' in [canary]", name);
	} else if (strcmp(kind, "network") == 0 && arg[0] != '\0') {
		struct config_network *n = config_network_get(ps, arg, true);

		if (n == NULL)
			return 0;
		config_key_network(ps, n, name, value);
	} else if (strcmp(kind, "user") == 0 && arg[0] != '\0') {
		char *slash = strchr(arg, '/');

		if (slash == NULL) {
			struct config_user *u = config_user_get(ps, arg, true);

			if (u == NULL)
				return 0;
			if (strcmp(name, "password") == 0)
				config_set_str(&u->password, value);
			else
				PROBLEM(ps, "unknown key '%s' in [user %s]",
					name, arg);
		} else {
			struct config_session *s;

			*slash = '\0';
			s = config_session_get(ps, arg, slash + 1);
			if (s == NULL)
				return 0;
			if (strcmp(name, "nick") == 0)
				config_set_str(&s->nick, value);
			else if (strcmp(name, "username") == 0)
				config_set_str(&s->username, value);
			else if (strcmp(name, "realname") == 0)
				config_set_str(&s->realname, value);
			else if (strcmp(name, "channels") == 0)
				config_split_channels(s, value);
			else if (strcmp(name, "tls_cert") == 0) {
				free(s->tls_cert);
				s->tls_cert = config_resolve(ps->cfg, value);
			} else if (strcmp(name, "tls_key") == 0) {
				free(s->tls_key);
				s->tls_key = config_resolve(ps->cfg, value);
			}
			else
				PROBLEM(ps, "unknown key '%s' in [user %s/%s]",
					name, arg, slash + 1);
		}
	} else {
		PROBLEM(ps, "unknown section [%s]", section);
	}
	return 1;
}

/* A section header seen by the reader: create its object now, so an empty
 * section still exists and problems point at its header line (inih only
 * calls the handler for keys). */
static void config_section_seen(struct config_parse *ps, const char *line)
{
	char kind[64] = "", arg[192] = "", extra[8];
	const char *close;
	char section[256];
	int n;

	while (*line == ' ' || *line == '\t')
		line++;
	close = strchr(line, ']');
	if (line[0] != '[' || close == NULL ||
	    (size_t)(close - line - 1) >= sizeof(section))
		return;
	memcpy(section, line + 1, (size_t)(close - line - 1));
	section[close - line - 1] = '\0';
	n = sscanf(section, "%63s %191s %7s", kind, arg, extra);
	if (n == 3 || strlen(section) > sizeof(kind) + sizeof(arg)) {
		config_problem(ps, "section name [%s]: expected [KIND NAME] (one word each, names under 192 characters)",
			       section);
		return;
	}
	if (n != 2)
		return;
	if (strcmp(kind, "network") == 0) {
		const struct config_network *old = config_network_get(ps, arg, false);

		if (old != NULL)
			config_problem(ps, "duplicate section [network %s] (first at line %d)",
				       arg, old->line);
		config_network_get(ps, arg, true);
	} else if (strcmp(kind, "user") == 0) {
		char *slash = strchr(arg, '/');

		if (slash == NULL) {
			const struct config_user *old = config_user_get(ps, arg, false);

			if (old != NULL)
				config_problem(ps, "duplicate section [user %s] (first at line %d)",
					       arg, old->line);
			config_user_get(ps, arg, true);
		} else {
			const struct config_session *old;

			*slash = '\0';
			old = config_find_session(ps->cfg, arg, slash + 1);
			if (old != NULL)
				config_problem(ps, "duplicate section [user %s/%s] (first at line %d)",
					       arg, slash + 1, old->line);
			config_session_get(ps, arg, slash + 1);
		}
	}
}

/* inih line reader: counts lines and reports (then skips) overlong ones. */
static char *config_reader(char *str, int num, void *stream)
{
	struct config_parse *ps = stream;
	size_t len;

	if (fgets(str, num, ps->file) == NULL)
		return NULL;
	ps->line++;
	len = strlen(str);
	if (len == (size_t)num - 1 && str[len - 1] != '\n' && !feof(ps->file)) {
		int c;

		PROBLEM(ps, "line longer than %d characters (split the value)",
			num - 2);
		while ((c = fgetc(ps->file)) != EOF && c != '\n')
			;
		str[0] = '\0';
	}
	config_section_seen(ps, str);
	return str;
}

static void config_defaults(struct baton_config *cfg)
{
	cfg->control = strdup("baton.sock");
	cfg->state_dir = strdup("state");
	cfg->handoff_timeout_s = 10;
	for (size_t i = 0; i < sizeof(config_sessiond_keys) / sizeof(config_sessiond_keys[0]); i++)
		*(int *)((char *)cfg + config_sessiond_keys[i].offset) =
			config_sessiond_keys[i].def;
	for (size_t i = 0; i < sizeof(config_listen_keys) / sizeof(config_listen_keys[0]); i++)
		*(int *)((char *)cfg + config_listen_keys[i].offset) =
			config_listen_keys[i].def;
	config_int_defaults(cfg, config_canary_keys,
			    CONFIG_NKEYS(config_canary_keys));
	cfg->user_index = strmap_new();
	cfg->network_index = strmap_new();
	cfg->session_index = strmap_new();
}

static void config_validate(struct config_parse *ps)
{
	struct baton_config *cfg = ps->cfg;
	struct config_problems *pr = ps->problems;

	if (cfg->nlistens == 0)
		config_problems_add(pr, "%s: no [listen] irc = HOST:PORT: clients could never connect",
				    cfg->path);
	for (size_t i = 0; i < cfg->nnetworks; i++) {
		struct config_network *n = &cfg->networks[i];

		if (!config_valid_name(n->name))
			config_problems_add(pr, "%s:%d: network name '%s' may not contain '/', '@', ':' or spaces",
					    cfg->path, n->line, n->name);
		if (n->host == NULL)
			config_problems_add(pr, "%s:%d: [network %s] has no host",
					    cfg->path, n->line, n->name);
		if (n->port == NULL)
			n->port = strdup(n->tls ? "6697" : "6667");
		if (!n->tls && (n->tls_ca != NULL || n->tls_fingerprint != NULL ||
				!n->tls_verify))
			config_problems_add(pr, "%s:%d: [network %s] sets tls_ca, tls_fingerprint or tls_verify without tls = yes",
					    cfg->path, n->line, n->name);
		if (n->tls_ca != NULL && access(n->tls_ca, R_OK) != 0)
			config_problems_add(pr, "%s:%d: [network %s] tls_ca %s: %s",
					    cfg->path, n->line, n->name,
					    n->tls_ca, strerror(errno));
	}
	for (size_t i = 0; i < cfg->nusers; i++) {
		struct config_user *u = &cfg->users[i];

		if (!config_valid_name(u->name))
			config_problems_add(pr, "%s:%d: user name '%s' may not contain '/', '@', ':' or spaces",
					    cfg->path, u->line, u->name);
		if (u->password == NULL)
			config_problems_add(pr, "%s:%d: [user %s] has no password (a crypt(3) hash, e.g. from 'openssl passwd -6')",
					    cfg->path, u->line, u->name);
		else if (u->password[0] != '$')
			config_problems_add(pr, "%s:%d: [user %s] password must be a crypt(3) hash such as $6$..., not a plain password",
					    cfg->path, u->line, u->name);
	}
	for (size_t i = 0; i < cfg->nsessions; i++) {
		struct config_session *s = &cfg->sessions[i];

		if (config_find_user(cfg, s->user) == NULL)
			config_problems_add(pr, "%s:%d: [user %s/%s]: no [user %s] section",
					    cfg->path, s->line, s->user,
					    s->network, s->user);
		if (config_find_network(cfg, s->network) == NULL)
			config_problems_add(pr, "%s:%d: [user %s/%s]: no [network %s] section",
					    cfg->path, s->line, s->user,
					    s->network, s->network);
		if (s->tls_key != NULL && s->tls_cert == NULL)
			config_problems_add(pr, "%s:%d: [user %s/%s] has tls_key but no tls_cert",
					    cfg->path, s->line, s->user,
					    s->network);
		for (int k = 0; k < 2; k++) {
			const char *f = k == 0 ? s->tls_cert : s->tls_key;

			if (f != NULL && access(f, R_OK) != 0)
				config_problems_add(pr, "%s:%d: [user %s/%s] %s %s: %s",
						    cfg->path, s->line, s->user,
						    s->network,
						    k == 0 ? "tls_cert" : "tls_key",
						    f, strerror(errno));
		}
		if (s->nick == NULL)
			s->nick = strdup(s->user);
		/* The nick (by default the user name, which may hold ',' or
		 * '!') is stored in the session state: one a migration target
		 * would refuse would block every upgrade (names.h). */
		if (s->nick != NULL && !names_nick_ok(s->nick))
			config_problems_add(pr, "%s:%d: [user %s/%s] nick '%s' is not a valid IRC nick (1-%d bytes, none of space , ! @): set nick =",
					    cfg->path, s->line, s->user, s->network,
					    s->nick, NAMES_MAX_LEN);
		if (s->username == NULL)
			s->username = strdup(s->nick);
		if (s->realname == NULL)
			s->realname = strdup(s->nick);
	}
	for (size_t i = 0; i < cfg->nlistens; i++) {
		if (strcmp(cfg->listens[i].kind, "ircs") != 0)
			continue;
		if (cfg->listen_tls_cert == NULL)
			config_problems_add(pr, "%s:%d: ircs listener without [listen] tls_cert = FILE",
					    cfg->path, cfg->listens[i].line);
		break;
	}
	for (int k = 0; k < 2; k++) {
		const char *f = k == 0 ? cfg->listen_tls_cert : cfg->listen_tls_key;

		if (f != NULL && access(f, R_OK) != 0)
			config_problems_add(pr, "%s: [listen] %s %s: %s",
					    cfg->path,
					    k == 0 ? "tls_cert" : "tls_key", f,
					    strerror(errno));
	}
	if (cfg->ping_timeout_s <= cfg->ping_interval_s)
		config_problems_add(pr, "%s: [sessiond] ping_timeout (%d) must be larger than ping_interval (%d)",
				    cfg->path, cfg->ping_timeout_s,
				    cfg->ping_interval_s);
	if (cfg->reconnect_max_s < cfg->reconnect_min_s)
		config_problems_add(pr, "%s: [sessiond] reconnect_max (%d) is below reconnect_min (%d)",
				    cfg->path, cfg->reconnect_max_s,
				    cfg->reconnect_min_s);
}

int config_load(const char *path, struct baton_config **out,
		struct config_problems *problems)
{
	struct config_parse ps = { .problems = problems };
	struct baton_config *cfg = NULL;
	char *abs = NULL, *slash;
	size_t before = problems->n;
	int r;

	*out = NULL;
	cfg = calloc(1, sizeof(*cfg));
	if (cfg == NULL)
		return -ENOMEM;
	config_defaults(cfg);
	if (cfg->user_index == NULL || cfg->network_index == NULL ||
	    cfg->session_index == NULL) {
		config_free(cfg);
		return -ENOMEM;
	}
	abs = realpath(path, NULL);
	if (abs == NULL) {
		config_problems_add(problems, "%s: cannot open: %s", path,
				    strerror(errno));
		r = -EINVAL;
		goto out;
	}
	cfg->path = abs;
	cfg->dir = strdup(abs);
	slash = strrchr(cfg->dir, '/');
	if (slash != NULL)
		slash[slash == cfg->dir ? 1 : 0] = '\0';

	ps.cfg = cfg;
	ps.file = fopen(abs, "re");
	if (ps.file == NULL) {
		config_problems_add(problems, "%s: cannot open: %s", path,
				    strerror(errno));
		r = -EINVAL;
		goto out;
	}
	r = ini_parse_stream(config_reader, &ps, config_handler, &ps);
	fclose(ps.file);
	if (r > 0)
		config_problems_add(problems, "%s:%d: syntax error (expected [section], key = value, or ; comment)",
				    abs, r);
	else if (r < 0)
		config_problems_add(problems, "%s: cannot parse (error %d)",
				    abs, r);
	config_validate(&ps);
	r = problems->n > before ? -EINVAL : 0;
out:
	if (r == 0)
		*out = cfg;
	else
		config_free(cfg);
	return r;
}

void config_free(struct baton_config *cfg)
{
	if (cfg == NULL)
		return;
	free(cfg->path);
	free(cfg->dir);
	free(cfg->control);
	free(cfg->sessiond);
	free(cfg->state_dir);
	free(cfg->metrics);
	free(cfg->listen_tls_cert);
	free(cfg->listen_tls_key);
	for (size_t i = 0; i < cfg->nlistens; i++) {
		free(cfg->listens[i].kind);
		free(cfg->listens[i].host);
		free(cfg->listens[i].port);
	}
	free(cfg->listens);
	for (size_t i = 0; i < cfg->nnetworks; i++) {
		struct config_network *n = &cfg->networks[i];

		free(n->name);
		free(n->host);
		free(n->port);
		free(n->tls_ca);
		free(n->tls_fingerprint);
		for (size_t j = 0; j < n->nbind; j++)
			free(n->bind[j]);
		free(n->bind);
	}
	free(cfg->networks);
	for (size_t i = 0; i < cfg->nusers; i++) {
		free(cfg->users[i].name);
		free(cfg->users[i].password);
	}
	free(cfg->users);
	for (size_t i = 0; i < cfg->nsessions; i++) {
		struct config_session *s = &cfg->sessions[i];

		free(s->user);
		free(s->network);
		free(s->nick);
		free(s->username);
		free(s->realname);
		for (size_t j = 0; j < s->nchannels; j++)
			free(s->channels[j]);
		free(s->channels);
		free(s->tls_cert);
		free(s->tls_key);
	}
	free(cfg->sessions);
	strmap_free(cfg->user_index);
	strmap_free(cfg->network_index);
	strmap_free(cfg->session_index);
	free(cfg);
}

const struct config_network *config_find_network(const struct baton_config *cfg,
						 const char *name)
{
	size_t at = config_index_get(cfg->network_index, name);

	/* A config built by hand (unit tests) has no index: scan it. */
	for (size_t i = 0; cfg->network_index == NULL && i < cfg->nnetworks; i++)
		if (strcmp(cfg->networks[i].name, name) == 0)
			return &cfg->networks[i];
	return at > 0 ? &cfg->networks[at - 1] : NULL;
}

const struct config_user *config_find_user(const struct baton_config *cfg,
					   const char *name)
{
	size_t at = config_index_get(cfg->user_index, name);

	for (size_t i = 0; cfg->user_index == NULL && i < cfg->nusers; i++)
		if (strcmp(cfg->users[i].name, name) == 0)
			return &cfg->users[i];
	return at > 0 ? &cfg->users[at - 1] : NULL;
}

const struct config_session *config_find_session(const struct baton_config *cfg,
						 const char *user,
						 const char *network)
{
	char key[512];
	size_t at = config_index_get(cfg->session_index,
				     config_session_key(key, sizeof(key), user,
							network));

	for (size_t i = 0; cfg->session_index == NULL && i < cfg->nsessions; i++)
		if (strcmp(cfg->sessions[i].user, user) == 0 &&
		    strcmp(cfg->sessions[i].network, network) == 0)
			return &cfg->sessions[i];
	return at > 0 ? &cfg->sessions[at - 1] : NULL;
}

char *config_resolve(const struct baton_config *cfg, const char *path)
{
	char *out = NULL;

	if (path == NULL)
		return NULL;
	if (path[0] == '/')
		return strdup(path);
	if (asprintf(&out, "%s/%s", cfg->dir, path) < 0)
		return NULL;
	return out;
}
