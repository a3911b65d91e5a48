/* common/config_diff.c: see config_diff.h. Walks the key table
 * (config_keys.h) once per pair of sections present on both sides. */
#include "common/config_diff.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/config_keys.h"

static bool str_eq(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

static bool strv_eq(char *const *a, size_t na, char *const *b, size_t nb)
{
	if (na != nb)
		return false;
	for (size_t i = 0; i < na; i++)
		if (!str_eq(a[i], b[i]))
			return false;
	return true;
}

static bool listens_eq(const struct baton_config *a, const struct baton_config *b,
		       const char *kind)
{
	size_t i = 0, j = 0;

	/* the same listeners of this kind, in order */
	for (;;) {
		while (i < a->nlistens && strcmp(a->listens[i].kind, kind) != 0)
			i++;
		while (j < b->nlistens && strcmp(b->listens[j].kind, kind) != 0)
			j++;
		if (i == a->nlistens || j == b->nlistens)
			return i == a->nlistens && j == b->nlistens;
		if (!str_eq(a->listens[i].host, b->listens[j].host) ||
		    !str_eq(a->listens[i].port, b->listens[j].port))
			return false;
		i++;
		j++;
	}
}

/* Is key k the same in the two section structs (or configs)? */
static bool key_eq(const struct config_key *k, const void *a, const void *b,
		   const struct baton_config *ca, const struct baton_config *cb)
{
	const char *pa = (const char *)a + k->offset, *pb = (const char *)b + k->offset;

	if (k->section == CONFIG_LISTEN &&
	    (strcmp(k->name, "irc") == 0 || strcmp(k->name, "ircs") == 0))
		return listens_eq(ca, cb, k->name);
	if (k->section == CONFIG_NETWORK && strcmp(k->name, "bind") == 0) {
		const struct config_network *na = a, *nb = b;

		return strv_eq(na->bind, na->nbind, nb->bind, nb->nbind);
	}
	if (k->section == CONFIG_SESSION && strcmp(k->name, "channels") == 0) {
		const struct config_session *sa = a, *sb = b;

		return strv_eq(sa->channels, sa->nchannels, sb->channels,
			       sb->nchannels);
	}
	switch (k->type) {
	case CONFIG_INT:
	case CONFIG_BOOL:
	case CONFIG_ENUM:
		return *(const int *)pa == *(const int *)pb;
	case CONFIG_CUSTOM:
		/* the remaining custom keys are strings (tls_fingerprint, sasl) */
		return str_eq(*(char *const *)pa, *(char *const *)pb);
	default:
		return str_eq(*(char *const *)pa, *(char *const *)pb);
	}
}

static int push(struct config_diff *d, enum config_change_kind kind,
		enum config_change_scope scope, const char *section,
		const char *key, const char *user, const char *network)
{
	struct config_change *v = realloc(d->v, (d->n + 1) * sizeof(*v));

	if (v == NULL)
		return -ENOMEM;
	d->v = v;
	v[d->n] = (struct config_change){
		.kind = kind, .scope = scope, .section = strdup(section),
		.key = key, .user = user, .network = network,
	};
	if (v[d->n].section == NULL)
		return -ENOMEM;
	d->n++;
	return 0;
}

static const char *global_name(enum config_section s)
{
	return config_section_name(s); /* plain names for the global ones */
}

/* Every key of section sec that differs between a and b. */
static int diff_keys(struct config_diff *d, enum config_section sec,
		     enum config_change_scope scope, const char *section,
		     const void *a, const void *b, const struct baton_config *ca,
		     const struct baton_config *cb, const char *user,
		     const char *network)
{
	for (size_t i = 0; i < config_nkeys; i++) {
		const struct config_key *k = &config_keys[i];

		if (k->section != sec || key_eq(k, a, b, ca, cb))
			continue;
		if (push(d, CONFIG_CHANGE_CHANGED, scope, section, k->name, user,
			 network) < 0)
			return -ENOMEM;
	}
	return 0;
}

int config_diff(const struct baton_config *from, const struct baton_config *to,
		struct config_diff *out)
{
	static const enum config_section globals[] = {
		CONFIG_SUPERVISOR, CONFIG_SESSIOND, CONFIG_LISTEN, CONFIG_CANARY,
	};
	char name[600];
	int r = 0;

	for (size_t i = 0; i < sizeof(globals) / sizeof(globals[0]) && r == 0; i++)
		r = diff_keys(out, globals[i], CONFIG_SCOPE_GLOBAL,
			      global_name(globals[i]), from, to, from, to, NULL, NULL);
	for (size_t i = 0; i < from->nnetworks && r == 0; i++) {
		const struct config_network *a = &from->networks[i];
		const struct config_network *b = config_find_network(to, a->name);

		snprintf(name, sizeof(name), "network %s", a->name);
		r = b == NULL ? push(out, CONFIG_CHANGE_REMOVED, CONFIG_SCOPE_NETWORK,
				     name, NULL, NULL, a->name)
			      : diff_keys(out, CONFIG_NETWORK, CONFIG_SCOPE_NETWORK,
					  name, a, b, from, to, NULL, a->name);
	}
	for (size_t i = 0; i < to->nnetworks && r == 0; i++) {
		const struct config_network *b = &to->networks[i];

		snprintf(name, sizeof(name), "network %s", b->name);
		if (config_find_network(from, b->name) == NULL)
			r = push(out, CONFIG_CHANGE_ADDED, CONFIG_SCOPE_NETWORK, name,
				 NULL, NULL, b->name);
	}
	for (size_t i = 0; i < from->nusers && r == 0; i++) {
		const struct config_user *a = &from->users[i];
		const struct config_user *b = config_find_user(to, a->name);

		snprintf(name, sizeof(name), "user %s", a->name);
		r = b == NULL ? push(out, CONFIG_CHANGE_REMOVED, CONFIG_SCOPE_USER,
				     name, NULL, a->name, NULL)
			      : diff_keys(out, CONFIG_USER, CONFIG_SCOPE_USER, name,
					  a, b, from, to, a->name, NULL);
	}
	for (size_t i = 0; i < to->nusers && r == 0; i++) {
		const struct config_user *b = &to->users[i];

		snprintf(name, sizeof(name), "user %s", b->name);
		if (config_find_user(from, b->name) == NULL)
			r = push(out, CONFIG_CHANGE_ADDED, CONFIG_SCOPE_USER, name,
				 NULL, b->name, NULL);
	}
	for (size_t i = 0; i < from->nsessions && r == 0; i++) {
		const struct config_session *a = &from->sessions[i];
		const struct config_session *b =
			config_find_session(to, a->user, a->network);

		snprintf(name, sizeof(name), "user %s/%s", a->user, a->network);
		r = b == NULL ? push(out, CONFIG_CHANGE_REMOVED, CONFIG_SCOPE_SESSION,
				     name, NULL, a->user, a->network)
			      : diff_keys(out, CONFIG_SESSION, CONFIG_SCOPE_SESSION,
					  name, a, b, from, to, a->user, a->network);
	}
	for (size_t i = 0; i < to->nsessions && r == 0; i++) {
		const struct config_session *b = &to->sessions[i];

		snprintf(name, sizeof(name), "user %s/%s", b->user, b->network);
		if (config_find_session(from, b->user, b->network) == NULL)
			r = push(out, CONFIG_CHANGE_ADDED, CONFIG_SCOPE_SESSION, name,
				 NULL, b->user, b->network);
	}
	if (r < 0)
		config_diff_clear(out);
	return r;
}

void config_diff_clear(struct config_diff *d)
{
	for (size_t i = 0; i < d->n; i++)
		free(d->v[i].section);
	free(d->v);
	d->v = NULL;
	d->n = 0;
}

/* A copy of a string vector (NULL, 0 for none). */
static int strv_copy(char ***out, size_t *nout, char *const *v, size_t n)
{
	char **c = n ? calloc(n, sizeof(*c)) : NULL;

	if (n && c == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		if ((c[i] = strdup(v[i])) == NULL) {
			for (size_t j = 0; j < i; j++)
				free(c[j]);
			free(c);
			return -ENOMEM;
		}
	for (size_t i = 0; i < *nout; i++)
		free((*out)[i]);
	free(*out);
	*out = c;
	*nout = n;
	return 0;
}

static int str_copy(char **dst, const char *src)
{
	char *c = src ? strdup(src) : NULL;

	if (src && c == NULL)
		return -ENOMEM;
	free(*dst);
	*dst = c;
	return 0;
}

/* Copy key k's value (and the line it was set on) from b into a. */
static int copy_key(const struct config_key *k, void *a, const void *b)
{
	char *pa = (char *)a + k->offset;
	const char *pb = (const char *)b + k->offset;

	if (k->line_offset != 0)
		memcpy((char *)a + k->line_offset, (const char *)b + k->line_offset,
		       sizeof(int));
	if (k->section == CONFIG_NETWORK && strcmp(k->name, "bind") == 0) {
		struct config_network *na = a;
		const struct config_network *nb = b;

		return strv_copy(&na->bind, &na->nbind, nb->bind, nb->nbind);
	}
	switch (k->type) {
	case CONFIG_INT:
	case CONFIG_BOOL:
	case CONFIG_ENUM:
		memcpy(pa, pb, sizeof(int));
		return 0;
	case CONFIG_CUSTOM:
		return str_copy((char **)pa, *(char *const *)pb); /* tls_fingerprint */
	default:
		return str_copy((char **)pa, *(char *const *)pb);
	}
}

static int listens_copy(struct baton_config *to, const struct baton_config *from)
{
	struct config_listen *c = from->nlistens ? calloc(from->nlistens, sizeof(*c)) : NULL;
	int r = 0;

	if (from->nlistens && c == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < from->nlistens; i++) {
		c[i].line = from->listens[i].line;
		if (str_copy(&c[i].kind, from->listens[i].kind) < 0 ||
		    str_copy(&c[i].host, from->listens[i].host) < 0 ||
		    str_copy(&c[i].port, from->listens[i].port) < 0)
			r = -ENOMEM;
	}
	/* swap in, then free the replaced (or, on failure, the copy) */
	if (r == 0) {
		struct config_listen *old = to->listens;
		size_t nold = to->nlistens;

		to->listens = c;
		to->nlistens = from->nlistens;
		c = old;
		for (size_t i = 0; i < nold; i++) {
			free(c[i].kind);
			free(c[i].host);
			free(c[i].port);
		}
		free(c);
		return 0;
	}
	for (size_t i = 0; i < from->nlistens; i++) {
		free(c[i].kind);
		free(c[i].host);
		free(c[i].port);
	}
	free(c);
	return r;
}

static bool in_list(const char *const *v, const char *name)
{
	for (; v != NULL && *v != NULL; v++)
		if (strcmp(*v, name) == 0)
			return true;
	return false;
}

int config_diff_keep_running(struct baton_config *to,
			     const struct baton_config *from,
			     const char *const *live)
{
	for (size_t i = 0; i < config_nkeys; i++) {
		const struct config_key *k = &config_keys[i];

		switch (k->section) {
		case CONFIG_SUPERVISOR:
		case CONFIG_SESSIOND:
		case CONFIG_LISTEN:
		case CONFIG_CANARY:
			if (k->type == CONFIG_CUSTOM && k->section == CONFIG_LISTEN)
				continue; /* irc/ircs: the list, below */
			if (strcmp(k->name, "user_networks") == 0)
				continue; /* the supervisor's, read at each edit:
					   * the worker's help says the file's */
			if (copy_key(k, to, from) < 0)
				return -ENOMEM;
			break;
		case CONFIG_NETWORK:
			if (in_list(live, k->name))
				break;
			for (size_t j = 0; j < to->nnetworks; j++) {
				struct config_network *n = &to->networks[j];
				const struct config_network *o =
					config_find_network(from, n->name);

				if (o != NULL && copy_key(k, n, o) < 0)
					return -ENOMEM;
			}
			break;
		default:
			break;
		}
	}
	return listens_copy(to, from);
}
