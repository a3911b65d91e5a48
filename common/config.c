/* common/config.c: see config.h. inih does the tokenizing; line numbers come
 * from our own line reader (Debian's inih is built without
 * INI_HANDLER_LINENO), which also catches lines longer than inih's
 * INI_MAX_LINE instead of letting them be silently truncated. What a key
 * is (section, type, range, default) comes from the key table
 * (config_keys.h); this file only knows the types and the sections. */
#include "common/config.h"
#include "common/config_keys.h"
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
	const char *section; /* ... and its section, as written */
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
	if (msg == NULL) {
		p->dropped++;
		return;
	}
	grown = realloc(p->msgs, (p->n + 1) * sizeof(*p->msgs));
	if (grown == NULL) {
		free(msg);
		p->dropped++;
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
	p->dropped = 0;
}

/* fmt formatted (malloc'd), or NULL: out of memory, counted as a
 * problem that could not be recorded. */
static char *config_vformat(struct config_parse *ps, const char *fmt,
			    va_list ap)
{
	char *msg = NULL;

	if (vasprintf(&msg, fmt, ap) < 0)
		msg = NULL;
	if (msg == NULL)
		ps->problems->dropped++;
	return msg;
}

/* A problem at the line inih is handling. */
static void __attribute__((format(printf, 2, 3)))
config_problem(struct config_parse *ps, const char *fmt, ...)
{
	char *msg;
	va_list ap;

	va_start(ap, fmt);
	msg = config_vformat(ps, fmt, ap);
	va_end(ap);
	if (msg == NULL)
		return;
	config_problems_add(ps->problems, "%s:%d: %s", ps->cfg->path, ps->line,
			    msg);
	free(msg);
}

#define PROBLEM config_problem

/* A bad value of key `name` at the line inih is handling:
 * "FILE:LINE: [SECTION] KEY: WHY". */
static void __attribute__((format(printf, 3, 4)))
config_key_problem(struct config_parse *ps, const char *name,
		   const char *fmt, ...)
{
	char *msg;
	va_list ap;

	va_start(ap, fmt);
	msg = config_vformat(ps, fmt, ap);
	va_end(ap);
	if (msg == NULL)
		return;
	config_problem(ps, "[%s] %s: %s", ps->section, name, msg);
	free(msg);
}

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

/* Every copy the loader keeps goes through here: a failed one marks the
 * load failed (config_load() returns -ENOMEM). */
static char *config_strdup(struct baton_config *cfg, const char *value)
{
	char *copy = strdup(value);

	if (copy == NULL)
		cfg->alloc_failed = true;
	return copy;
}

static void config_set_str(struct baton_config *cfg, char **dst,
			   const char *value)
{
	char *copy = config_strdup(cfg, value);

	if (copy == NULL)
		return; /* the old value stays; the load fails */
	free(*dst);
	*dst = copy;
}

static int config_int(struct config_parse *ps, const char *name,
		      const char *value, int min, int max, int *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(value, &end, 10);
	if (errno != 0 || end == value || *end != '\0' || v < min || v > max) {
		config_key_problem(ps, name, "expected a whole number from %d to %d, got '%s'",
				   min, max, value);
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
		if (*host == NULL)
			return -ENOMEM;
	} else {
		colon = strrchr(value, ':');
		if (colon == NULL || colon == value)
			return -EINVAL;
		*host = strndup(value, (size_t)(colon - value));
		if (*host == NULL)
			return -ENOMEM;
	}
	p = strtol(colon + 1, &end, 10);
	if (*end != '\0' || end == colon + 1 || p < 1 || p > 65535) {
		free(*host);
		*host = NULL;
		return -EINVAL;
	}
	*port = strdup(colon + 1);
	if (*port == NULL) {
		free(*host);
		*host = NULL;
		return -ENOMEM;
	}
	return 0;
}

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
	config_key_problem(ps, name, "expected yes or no, got '%s'", value);
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

static void config_keys_defaults(struct baton_config *cfg,
				 enum config_section sec, void *obj,
				 bool strings);

/* Index lookups: the maps store array index + 1 (arrays move on growth). */
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
	if (n == NULL)
		cfg->alloc_failed = true;
	else {
		n->name = config_strdup(cfg, name);
		n->line = ps->line;
		config_keys_defaults(cfg, CONFIG_NETWORK, n, true);
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
	if (u == NULL)
		cfg->alloc_failed = true;
	else {
		u->name = config_strdup(cfg, name);
		u->line = ps->line;
		config_keys_defaults(cfg, CONFIG_USER, u, true);
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
	if (s == NULL)
		cfg->alloc_failed = true;
	else {
		s->user = config_strdup(cfg, user);
		s->network = config_strdup(cfg, network);
		s->line = ps->line;
		config_keys_defaults(cfg, CONFIG_SESSION, s, true);
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

/* ---- the custom parsers of the key table (config_keys.h) ---- */

/* sasl = plain | external | scram-sha-256 (any case): stored under the
 * mechanism's IANA name, the one sessiond/sasl_mech.h parses and sends. */
void config_parse_sasl(struct config_parse *ps, const struct config_key *k,
		       void *session, const char *value)
{
	static const char *const mechs[] = { "PLAIN", "EXTERNAL", "SCRAM-SHA-256" };
	struct config_session *s = session;

	for (size_t i = 0; i < sizeof(mechs) / sizeof(mechs[0]); i++) {
		if (strcasecmp(value, mechs[i]) == 0) {
			config_set_str(ps->cfg, &s->sasl, mechs[i]);
			return;
		}
	}
	config_key_problem(ps, k->name, "expected plain, external or scram-sha-256, got '%s'",
			   value);
}

/* channels = #a #b,#c: replaces the list. */
void config_parse_channels(struct config_parse *ps, const struct config_key *k,
			   void *session, const char *value)
{
	struct config_session *s = session;
	char *copy = config_strdup(ps->cfg, value), *save = NULL, *tok;

	if (copy == NULL)
		return;
	for (size_t i = 0; i < s->nchannels; i++)
		free(s->channels[i]);
	free(s->channels);
	s->channels = NULL;
	s->nchannels = 0;
	for (tok = strtok_r(copy, " \t,", &save); tok != NULL;
	     tok = strtok_r(NULL, " \t,", &save)) {
		char **grown = realloc(s->channels,
				       (s->nchannels + 1) * sizeof(char *));

		char *name = grown != NULL ? config_strdup(ps->cfg, tok) : NULL;

		if (grown == NULL || name == NULL) {
			ps->cfg->alloc_failed = true;
			if (grown != NULL)
				s->channels = grown;
			break;
		}
		s->channels = grown;
		s->channels[s->nchannels++] = name;
	}
	free(copy);
}

void config_parse_fingerprint(struct config_parse *ps, const struct config_key *k,
			      void *network, const char *value)
{
	struct config_network *n = network;
	char *fp = config_fingerprint(value);

	if (fp == NULL) {
		config_key_problem(ps, k->name, "expected sha256:HEX (64 hex digits, colons allowed), got '%s'",
				   value);
		return;
	}
	free(n->tls_fingerprint);
	n->tls_fingerprint = fp;
}

void config_parse_member_lists(struct config_parse *ps, const struct config_key *k,
			       void *network, const char *value)
{
	struct config_network *n = network;

	if (strcmp(value, "auto") == 0)
		n->member_lists = CONFIG_MEMBERS_AUTO;
	else if (strcmp(value, "shared") == 0)
		n->member_lists = CONFIG_MEMBERS_SHARED;
	else if (strcmp(value, "private") == 0)
		n->member_lists = CONFIG_MEMBERS_PRIVATE;
	else
		config_key_problem(ps, k->name, "expected auto, shared or private, got '%s'",
				   value);
}

void config_parse_user_networks(struct config_parse *ps, const struct config_key *k,
				void *cfg, const char *value)
{
	struct baton_config *c = cfg;

	if (strcmp(value, "list") == 0)
		c->user_networks = CONFIG_USER_NETWORKS_LIST;
	else if (strcmp(value, "change") == 0)
		c->user_networks = CONFIG_USER_NETWORKS_CHANGE;
	else if (strcmp(value, "add") == 0)
		c->user_networks = CONFIG_USER_NETWORKS_ADD;
	else
		config_key_problem(ps, k->name, "expected list, change or add, got '%s'",
				   value);
}

void config_parse_store(struct config_parse *ps, const struct config_key *k,
			void *cfg, const char *value)
{
	struct baton_config *c = cfg;

	if (strcmp(value, "sqlite") == 0)
		c->store_backend = CONFIG_STORE_SQLITE;
	else if (strcmp(value, "postgres") == 0)
		c->store_backend = CONFIG_STORE_POSTGRES;
	else if (strcmp(value, "off") == 0)
		c->store_backend = CONFIG_STORE_OFF;
	else
		config_key_problem(ps, k->name, "expected sqlite, postgres or off, got '%s'",
				   value);
}

/* Repeated bind lines add to the pool (a line holds at most 199
 * characters). */
void config_parse_bind(struct config_parse *ps, const struct config_key *k,
		       void *network, const char *value)
{
	struct config_network *n = network;
	size_t first = n->nbind;

	if (config_split_words(value, &n->bind, &n->nbind) < 0) {
		ps->cfg->alloc_failed = true;
		return;
	}
	for (size_t i = first; i < n->nbind; i++) {
		unsigned char addr[16];
		char canon[INET6_ADDRSTRLEN];
		int af = AF_INET;

		if (inet_pton(AF_INET, n->bind[i], addr) != 1) {
			af = AF_INET6;
			if (inet_pton(AF_INET6, n->bind[i], addr) != 1) {
				config_key_problem(ps, k->name, "'%s' is not an IPv4 or IPv6 address",
						   n->bind[i]);
				continue;
			}
		}
		/* Canonical text, so it compares equal to what getsockname()
		 * + inet_ntop() say after a migration. */
		if (inet_ntop(af, addr, canon, sizeof(canon)) != NULL &&
		    strcmp(canon, n->bind[i]) != 0) {
			char *c = config_strdup(ps->cfg, canon);

			if (c != NULL) {
				free(n->bind[i]);
				n->bind[i] = c;
			}
		}
	}
}

/* irc = HOST:PORT, ircs = HOST:PORT: one more listener. */
void config_parse_listener(struct config_parse *ps, const struct config_key *k,
			   void *config, const char *value)
{
	struct baton_config *cfg = config;
	struct config_listen *l;
	char *host = NULL, *port = NULL;

	int r = config_split_hostport(value, &host, &port);

	if (r == -ENOMEM) {
		cfg->alloc_failed = true;
		return;
	}
	if (r < 0) {
		config_key_problem(ps, k->name, "expected HOST:PORT, got '%s'", value);
		return;
	}
	l = config_grow((void **)&cfg->listens, &cfg->nlistens, sizeof(*l));
	if (l == NULL) {
		cfg->alloc_failed = true;
		free(host);
		free(port);
		return;
	}
	l->kind = config_strdup(cfg, k->name);
	l->host = host;
	l->port = port;
	l->line = ps->line;
}

/* ---- the key table driving the parser and the defaults ---- */

#define FIELD(obj, k, type) ((type *)((char *)(obj) + (k)->offset))

static const struct config_key *config_key_find(enum config_section sec,
						const char *name)
{
	for (size_t i = 0; i < config_nkeys; i++)
		if (config_keys[i].section == sec &&
		    strcmp(config_keys[i].name, name) == 0)
			return &config_keys[i];
	return NULL;
}

/* Store `value` for key k into obj (the section's struct). */
static void config_key_set(struct config_parse *ps, const struct config_key *k,
			   void *obj, const char *value)
{
	char *host = NULL, *port = NULL;
	int v;

	switch (k->type) {
	case CONFIG_INT:
		config_int(ps, k->name, value, k->min, k->max, FIELD(obj, k, int));
		break;
	case CONFIG_BOOL:
		config_bool(ps, k->name, value, FIELD(obj, k, int));
		break;
	case CONFIG_STRING:
		config_set_str(ps->cfg, FIELD(obj, k, char *), value);
		break;
	case CONFIG_PATH:
		free(*FIELD(obj, k, char *));
		*FIELD(obj, k, char *) = config_resolve(ps->cfg, value);
		if (*FIELD(obj, k, char *) == NULL)
			ps->cfg->alloc_failed = true;
		break;
	case CONFIG_HOSTPORT:
		v = config_split_hostport(value, &host, &port);
		if (v == -ENOMEM)
			ps->cfg->alloc_failed = true;
		else if (v < 0)
			config_key_problem(ps, k->name, "expected HOST:PORT, got '%s'",
					   value);
		else
			config_set_str(ps->cfg, FIELD(obj, k, char *), value);
		free(host);
		free(port);
		break;
	case CONFIG_PORT:
		if (config_int(ps, k->name, value, 1, 65535, &v) == 0)
			config_set_str(ps->cfg, FIELD(obj, k, char *), value);
		break;
	case CONFIG_ENUM:
	case CONFIG_CUSTOM:
		k->parse(ps, k, obj, value);
		break;
	}
	if (k->line_offset != 0)
		*(int *)((char *)obj + k->line_offset) = ps->line;
}

/* The defaults of section `sec` into obj: numbers always, strings only
 * when `strings` (config_default_values() keeps none). */
static void config_keys_defaults(struct baton_config *cfg,
				 enum config_section sec, void *obj,
				 bool strings)
{
	for (size_t i = 0; i < config_nkeys; i++) {
		const struct config_key *k = &config_keys[i];

		if (k->section != sec)
			continue;
		if (k->type == CONFIG_INT || k->type == CONFIG_BOOL ||
		    k->type == CONFIG_ENUM)
			*FIELD(obj, k, int) = k->def;
		else if (strings && k->def_str != NULL)
			config_set_str(cfg, FIELD(obj, k, char *), k->def_str);
	}
}

static void config_global_defaults(struct baton_config *cfg, bool strings)
{
	static const enum config_section global[] = {
		CONFIG_SUPERVISOR, CONFIG_SESSIOND, CONFIG_LISTEN, CONFIG_CANARY,
	};

	for (size_t i = 0; i < sizeof(global) / sizeof(global[0]); i++)
		config_keys_defaults(cfg, global[i], cfg, strings);
}

const struct baton_config *config_default_values(void)
{
	static struct baton_config defaults;
	static bool set;

	if (!set) {
		config_global_defaults(&defaults, false);
		set = true;
	}
	return &defaults;
}

unsigned long config_fds_needed(const struct baton_config *cfg)
{
	/* the terms: config.h */
	unsigned long need = 2ul * cfg->nsessions + 2ul * cfg->nlistens + CONFIG_FDS_SPARE;

	if (cfg->custody) {
		unsigned long chunk = (unsigned long)CONFIG_INT_OR_DEFAULT(cfg, chunk_sessions);

		if (chunk > cfg->nsessions)
			chunk = cfg->nsessions;
		need += 4ul * chunk;
	}
	return need;
}

const char *config_fds_advice(const struct baton_config *cfg, char *buf,
			      size_t len)
{
	if (len == 0)
		return buf;
	if (cfg->custody) {
		struct baton_config off = *cfg;

		off.custody = 0;
		snprintf(buf, len, "2 per session, 2 per [listen] line, %d spare, "
			 "and custody's copies in the supervisor: 4 per session of a "
			 "migration chunk; raise LimitNOFILE= or ulimit -n, or set "
			 "[supervisor] custody = no (then %lu, but a worker crash "
			 "disconnects everyone)",
			 CONFIG_FDS_SPARE, config_fds_needed(&off));
	} else {
		snprintf(buf, len, "2 per session, 2 per [listen] line, %d spare; "
			 "raise LimitNOFILE= or ulimit -n", CONFIG_FDS_SPARE);
	}
	return buf;
}

/* "unknown key" names the section's keys when there are a few. */
static void config_unknown_key(struct config_parse *ps, enum config_section sec,
			       const char *name)
{
	char known[256] = "";
	size_t n = 0, len = 0;

	for (size_t i = 0; i < config_nkeys; i++) {
		if (config_keys[i].section != sec)
			continue;
		n++;
		if (len < sizeof(known))
			len += (size_t)snprintf(known + len, sizeof(known) - len,
						"%s%s", len ? ", " : "",
						config_keys[i].name);
	}
	if (n <= 8 && len < sizeof(known))
		PROBLEM(ps, "unknown key '%s' in [%s] (known: %s)", name,
			ps->section, known);
	else
		PROBLEM(ps, "unknown key '%s' in [%s] (docs/config.md lists its keys)",
			name, ps->section);
}

static int config_handler(void *user, const char *section, const char *name,
			  const char *value)
{
	static const struct {
		const char *name;
		enum config_section sec;
	} global[] = {
		{ "supervisor", CONFIG_SUPERVISOR }, { "sessiond", CONFIG_SESSIOND },
		{ "listen", CONFIG_LISTEN }, { "canary", CONFIG_CANARY },
	};
	struct config_parse *ps = user;
	char kind[64] = "", arg[192] = "";
	enum config_section sec = CONFIG_SUPERVISOR;
	const struct config_key *k;
	void *obj = NULL;
	bool known = false;

	if (sscanf(section, "%63s %191s", kind, arg) < 1) {
		PROBLEM(ps, "key '%s' outside of any section", name);
		return 1;
	}
	ps->section = section;
	for (size_t i = 0; arg[0] == '\0' && i < sizeof(global) / sizeof(global[0]); i++) {
		if (strcmp(kind, global[i].name) == 0) {
			sec = global[i].sec;
			obj = ps->cfg;
			known = true;
		}
	}
	if (strcmp(kind, "network") == 0 && arg[0] != '\0') {
		sec = CONFIG_NETWORK;
		obj = config_network_get(ps, arg, true);
		known = true;
	} else if (strcmp(kind, "user") == 0 && arg[0] != '\0') {
		char *slash = strchr(arg, '/');

		known = true;
		if (slash == NULL) {
			sec = CONFIG_USER;
			obj = config_user_get(ps, arg, true);
		} else {
			*slash = '\0';
			sec = CONFIG_SESSION;
			obj = config_session_get(ps, arg, slash + 1);
		}
	}
	if (!known) {
		PROBLEM(ps, "unknown section [%s]", section);
		return 1;
	}
	if (obj == NULL)
		return 0; /* out of memory */
	k = config_key_find(sec, name);
	if (k == NULL)
		config_unknown_key(ps, sec, name);
	else
		config_key_set(ps, k, obj, value);
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
	config_global_defaults(cfg, true);
	cfg->user_index = strmap_new();
	cfg->network_index = strmap_new();
	cfg->session_index = strmap_new();
}

#define CONFIG_SASL_MAX 255 /* bytes of a SASL name or password */

/* The password of sasl_password_file: its first line, at most
 * CONFIG_SASL_MAX bytes. NULL with a problem reported. */
static char *config_read_secret(struct config_parse *ps,
				const struct config_session *s)
{
	char buf[CONFIG_SASL_MAX + 3];
	const char *why = NULL;
	FILE *f = fopen(s->sasl_password_file, "re");
	size_t n = 0;

	if (f == NULL) {
		why = strerror(errno);
	} else {
		n = fread(buf, 1, sizeof(buf) - 1, f);
		if (ferror(f))
			why = strerror(errno);
		fclose(f);
		buf[n] = '\0';
		buf[strcspn(buf, "\r\n")] = '\0';
		n = strlen(buf);
		if (why == NULL && n == 0)
			why = "empty first line (or a NUL byte)";
		else if (why == NULL && n > CONFIG_SASL_MAX)
			why = "the password is longer than 255 bytes";
	}
	if (why != NULL) {
		config_problems_add(ps->problems, "%s:%d: [user %s/%s] sasl_password_file %s: %s",
				    ps->cfg->path, s->sasl_password_file_line, s->user,
				    s->network, s->sasl_password_file, why);
		explicit_bzero(buf, sizeof(buf));
		return NULL;
	}
	char *pw = config_strdup(ps->cfg, buf);
	explicit_bzero(buf, sizeof(buf));
	return pw;
}

/* The SASL keys of a session: combinations that could never authenticate
 * are --check errors, not connection failures found at 3 a.m. */
static void config_validate_sasl(struct config_parse *ps, struct config_session *s)
{
	struct baton_config *cfg = ps->cfg;
	struct config_problems *pr = ps->problems;
	const struct config_network *n = config_find_network(cfg, s->network);
	bool secret = s->sasl_password != NULL || s->sasl_password_file != NULL;

	if (s->sasl == NULL) {
		if (secret || s->sasl_username != NULL)
			config_problems_add(pr, "%s:%d: [user %s/%s] sets sasl_username, sasl_password or sasl_password_file without sasl = plain|external|scram-sha-256",
					    cfg->path, s->line, s->user, s->network);
		return;
	}
	if (s->sasl_password != NULL && s->sasl_password_file != NULL)
		config_problems_add(pr, "%s:%d: [user %s/%s] sets both sasl_password and sasl_password_file",
				    cfg->path, s->sasl_password_file_line, s->user, s->network);
	if (s->sasl_username != NULL &&
	    (s->sasl_username[0] == '\0' || strlen(s->sasl_username) > CONFIG_SASL_MAX))
		config_problems_add(pr, "%s:%d: [user %s/%s] sasl_username must be 1-%d bytes",
				    cfg->path, s->sasl_username_line, s->user, s->network,
				    CONFIG_SASL_MAX);
	if (strcmp(s->sasl, "EXTERNAL") == 0) {
		if (secret)
			config_problems_add(pr, "%s:%d: [user %s/%s] sasl = external uses the client certificate: drop sasl_password / sasl_password_file",
					    cfg->path, s->sasl_line, s->user, s->network);
		if (s->tls_cert == NULL)
			config_problems_add(pr, "%s:%d: [user %s/%s] sasl = external needs tls_cert (the client certificate the network knows)",
					    cfg->path, s->sasl_line, s->user, s->network);
		if (n != NULL && !n->tls)
			config_problems_add(pr, "%s:%d: [user %s/%s] sasl = external needs tls = yes in [network %s]",
					    cfg->path, s->sasl_line, s->user, s->network, s->network);
		return;
	}
	if (!secret) {
		config_problems_add(pr, "%s:%d: [user %s/%s] sasl = %s needs sasl_password or sasl_password_file",
				    cfg->path, s->sasl_line, s->user, s->network, s->sasl);
		return;
	}
	if (s->sasl_password_file != NULL && s->sasl_password == NULL)
		s->sasl_password = config_read_secret(ps, s);
	else if (s->sasl_password != NULL &&
		 (s->sasl_password[0] == '\0' || strlen(s->sasl_password) > CONFIG_SASL_MAX))
		config_problems_add(pr, "%s:%d: [user %s/%s] sasl_password must be 1-%d bytes",
				    cfg->path, s->sasl_password_line, s->user, s->network,
				    CONFIG_SASL_MAX);
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
			n->port = config_strdup(cfg, n->tls ? "6697" : "6667");
		if (!n->tls && (n->tls_ca != NULL || n->tls_fingerprint != NULL ||
				!n->tls_verify))
			config_problems_add(pr, "%s:%d: [network %s] sets tls_ca, tls_fingerprint or tls_verify without tls = yes",
					    cfg->path, n->line, n->name);
		if (n->tls_ca != NULL && access(n->tls_ca, R_OK) != 0)
			config_problems_add(pr, "%s:%d: [network %s] tls_ca %s: %s",
					    cfg->path, n->tls_ca_line, n->name,
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
					    cfg->path, u->password_line, u->name);
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
						    cfg->path,
						    k == 0 ? s->tls_cert_line : s->tls_key_line,
						    s->user,
						    s->network,
						    k == 0 ? "tls_cert" : "tls_key",
						    f, strerror(errno));
		}
		if (s->nick == NULL)
			s->nick = config_strdup(cfg, s->user);
		/* The nick (by default the user name, which may hold ',' or
		 * '!') is stored in the session state: one a migration target
		 * would refuse would block every upgrade (names.h). */
		if (s->nick != NULL && !names_nick_ok(s->nick))
			config_problems_add(pr, "%s:%d: [user %s/%s] nick '%s' is not a valid IRC nick (1-%d bytes, none of space , ! @): set nick =",
					    cfg->path, s->line, s->user, s->network,
					    s->nick, NAMES_MAX_LEN);
		config_validate_sasl(ps, s);
		if (s->username == NULL)
			s->username = config_strdup(cfg, s->nick);
		if (s->realname == NULL)
			s->realname = config_strdup(cfg, s->nick);
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
			config_problems_add(pr, "%s:%d: [listen] %s %s: %s",
					    cfg->path,
					    k == 0 ? cfg->listen_tls_cert_line :
						     cfg->listen_tls_key_line,
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
	if (cfg->store_backend == CONFIG_STORE_POSTGRES &&
	    (cfg->store_url == NULL || cfg->store_url[0] == '\0'))
		config_problems_add(pr, "%s: [sessiond] store = postgres needs store_url (a libpq connection string)",
				    cfg->path);
	if (cfg->store_backend == CONFIG_STORE_SQLITE &&
	    (cfg->store_path == NULL || cfg->store_path[0] == '\0'))
		config_problems_add(pr, "%s: [sessiond] store = sqlite needs a store_path",
				    cfg->path);
}

int config_load(const char *path, struct baton_config **out,
		struct config_problems *problems)
{
	struct config_parse ps = { .problems = problems };
	struct baton_config *cfg = NULL;
	char *abs = NULL, *slash;
	size_t before = problems->n + problems->dropped;
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
	cfg->dir = config_strdup(cfg, abs);
	if (cfg->dir == NULL) {
		r = -ENOMEM;
		goto out;
	}
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
	if (cfg->alloc_failed) {
		config_problems_add(problems, "%s: out of memory while loading", abs);
		r = -ENOMEM;
	} else {
		r = problems->n + problems->dropped > before ? -EINVAL : 0;
	}
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
	free(cfg->store_path);
	free(cfg->store_url);
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
		free(s->sasl);
		free(s->sasl_username);
		if (s->sasl_password != NULL)
			explicit_bzero(s->sasl_password, strlen(s->sasl_password));
		free(s->sasl_password);
		free(s->sasl_password_file);
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
