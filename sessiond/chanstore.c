/* sessiond/chanstore.c: see chanstore.h. */
#include "sessiond/chanstore.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/names.h"
#include "common/strmap.h"
#include "sessiond/irc.h"

struct incoming {
	struct shared_channel *live;    /* indexed; one reference held */
	struct shared_channel *content; /* aside (NULL: filled in place) */
};

struct chanstore {
	struct strmap *by_key; /* key -> struct shared_channel */
	size_t n;
	/* the open chunk of a migration target: key -> struct incoming */
	struct strmap *incoming;
	struct incoming **inv;
	size_t ninc, capinc;
};

int chanstore_key(char *out, size_t n, const char *network, const char *channel)
{
	size_t nl = strlen(network), cl = strlen(channel);

	if (nl + 1 + cl + 1 > n)
		return -1;
	memcpy(out, network, nl);
	out[nl] = '\n';
	memcpy(out + nl + 1, channel, cl + 1);
	irc_casefold(out + nl + 1);
	return (int)(nl + 1 + cl);
}

struct chanstore *chanstore_new(void)
{
	struct chanstore *cs = calloc(1, sizeof(*cs));

	if (cs && !(cs->by_key = strmap_new())) {
		free(cs);
		return NULL;
	}
	return cs;
}

static void list_clear(struct shared_channel *sh)
{
	for (size_t i = 0; i < sh->nmembers; i++)
		free(sh->members[i].nick);
	free(sh->members);
	strmap_free(sh->index);
	sh->members = NULL;
	sh->index = NULL;
	sh->nmembers = sh->cap = 0;
	sh->member_bytes = 0;
}

static void list_free(struct shared_channel *sh)
{
	if (sh->store) {
		strmap_del(sh->store->by_key, sh->key);
		sh->store->n--;
	}
	list_clear(sh);
	free(sh->key);
	free(sh);
}

static struct shared_channel *list_new(const char *key)
{
	struct shared_channel *sh = calloc(1, sizeof(*sh));

	if (!sh || !(sh->key = strdup(key))) {
		free(sh);
		return NULL;
	}
	sh->channel = strchr(sh->key, '\n') + 1;
	return sh;
}

size_t chanstore_count(const struct chanstore *cs)
{
	return cs ? cs->n : 0;
}

static struct shared_channel *store_get(struct chanstore *cs, const char *key)
{
	struct shared_channel *sh = strmap_get(cs->by_key, key);

	if (sh)
		return sh;
	if (!(sh = list_new(key)))
		return NULL;
	if (strmap_put(cs->by_key, key, sh) < 0) {
		list_free(sh);
		return NULL;
	}
	sh->store = cs;
	cs->n++;
	return sh;
}

struct shared_channel *chanstore_attach(struct chanstore *cs, const char *network,
					const char *channel)
{
	char key[2 * NAMES_MAX_LEN + 4];
	struct shared_channel *sh;

	if (chanstore_key(key, sizeof(key), network, channel) < 0)
		return NULL;
	if (!(sh = store_get(cs, key)))
		return NULL;
	sh->refs++;
	return sh;
}

void chanstore_ref(struct shared_channel *sh)
{
	sh->refs++;
}

void chanstore_detach(struct shared_channel *sh)
{
	if (sh && --sh->refs == 0)
		list_free(sh);
}

static void member_key(char *out, size_t n, const char *nick)
{
	size_t len = strnlen(nick, n - 1);

	memcpy(out, nick, len);
	out[len] = '\0';
	irc_casefold(out);
}

bool shared_is_private(const struct shared_channel *sh)
{
	return memchr(sh->key, '/', (size_t)(sh->channel - sh->key)) != NULL;
}

struct member *shared_find(const struct shared_channel *sh, const char *nick)
{
	char key[NAMES_MAX_LEN + 1];
	size_t at;

	if (sh == NULL || sh->index == NULL)
		return NULL;
	member_key(key, sizeof(key), nick);
	at = (size_t)(uintptr_t)strmap_get(sh->index, key);
	return at > 0 ? &sh->members[at - 1] : NULL;
}

struct member *shared_add(struct shared_channel *sh, const char *nick)
{
	struct member *m = shared_find(sh, nick);
	char key[NAMES_MAX_LEN + 1];

	if (m)
		return m;
	if (sh->index == NULL && !(sh->index = strmap_new()))
		return NULL;
	if (sh->nmembers == sh->cap) {
		size_t cap = sh->cap ? sh->cap * 2 : 8;
		struct member *nv = realloc(sh->members, cap * sizeof(*nv));
		if (!nv)
			return NULL;
		sh->members = nv;
		sh->cap = cap;
	}
	m = &sh->members[sh->nmembers];
	memset(m, 0, sizeof(*m));
	if (!(m->nick = strdup(nick)))
		return NULL;
	member_key(key, sizeof(key), nick);
	if (strmap_put(sh->index, key, (void *)(uintptr_t)(sh->nmembers + 1)) < 0) {
		free(m->nick);
		return NULL;
	}
	sh->nmembers++;
	sh->member_bytes += strlen(nick) + CHANSTORE_MEMBER_COST;
	return m;
}

void shared_remove(struct shared_channel *sh, const char *nick)
{
	struct member *m = shared_find(sh, nick);
	struct member *last;
	char key[NAMES_MAX_LEN + 1];

	if (m == NULL)
		return;
	sh->member_bytes -= strlen(m->nick) + CHANSTORE_MEMBER_COST;
	member_key(key, sizeof(key), m->nick);
	strmap_del(sh->index, key);
	free(m->nick);
	last = &sh->members[sh->nmembers - 1];
	if (m != last) {
		*m = *last; /* swap the last one in; its index changes */
		member_key(key, sizeof(key), m->nick);
		strmap_put(sh->index, key, (void *)(uintptr_t)(m - sh->members + 1));
	}
	sh->nmembers--;
}

int shared_rename(struct shared_channel *sh, const char *old, const char *nick)
{
	struct member *m = shared_find(sh, old);
	struct member *other = shared_find(sh, nick);
	char key[NAMES_MAX_LEN + 1];
	char *copy;
	size_t at;

	if (m == NULL)
		return 0; /* applied already (by another session), or unknown */
	if (other != NULL && other != m) {
		/* The new nick is already listed (a desync): keep that one. */
		shared_remove(sh, old);
		return 0;
	}
	if (!(copy = strdup(nick)))
		return -ENOMEM;
	at = (size_t)(m - sh->members) + 1;
	member_key(key, sizeof(key), m->nick);
	strmap_del(sh->index, key);
	sh->member_bytes += strlen(copy) - strlen(m->nick); /* modulo 2^64 */
	free(m->nick);
	m->nick = copy;
	member_key(key, sizeof(key), nick);
	if (strmap_put(sh->index, key, (void *)(uintptr_t)at) < 0) {
		/* not findable any more: take it out of the list */
		struct member *last = &sh->members[sh->nmembers - 1];

		sh->member_bytes -= strlen(m->nick) + CHANSTORE_MEMBER_COST;
		free(m->nick);
		if (m != last) {
			*m = *last;
			member_key(key, sizeof(key), m->nick);
			strmap_put(sh->index, key, (void *)(uintptr_t)at);
		}
		sh->nmembers--;
		return -ENOMEM;
	}
	return 0;
}

/* ---- migration target ---- */

struct shared_channel *chanstore_incoming(struct chanstore *cs, const char *network,
					  const char *channel, bool *fill,
					  struct shared_channel **fill_into)
{
	char key[2 * NAMES_MAX_LEN + 4];
	struct incoming *in;

	*fill = false;
	*fill_into = NULL;
	if (chanstore_key(key, sizeof(key), network, channel) < 0)
		return NULL;
	if (cs->incoming == NULL && !(cs->incoming = strmap_new()))
		return NULL;
	if ((in = strmap_get(cs->incoming, key)) != NULL)
		return in->live;
	if (cs->ninc == cs->capinc) {
		size_t cap = cs->capinc ? 2 * cs->capinc : 16;
		struct incoming **nv = realloc(cs->inv, cap * sizeof(*nv));
		if (!nv)
			return NULL;
		cs->inv = nv;
		cs->capinc = cap;
	}
	if (!(in = calloc(1, sizeof(*in))))
		return NULL;
	bool existed = strmap_get(cs->by_key, key) != NULL;
	in->live = store_get(cs, key);
	if (in->live && existed)
		in->content = list_new(key);
	if (!in->live || (existed && !in->content) ||
	    strmap_put(cs->incoming, key, in) < 0) {
		if (in->content)
			list_free(in->content);
		if (in->live && in->live->refs == 0)
			list_free(in->live);
		free(in);
		return NULL;
	}
	in->live->refs++;
	cs->inv[cs->ninc++] = in;
	*fill = true;
	*fill_into = in->content ? in->content : in->live;
	return in->live;
}

struct shared_channel *chanstore_incoming_find(struct chanstore *cs,
					       const char *network,
					       const char *channel)
{
	char key[2 * NAMES_MAX_LEN + 4];
	struct incoming *in;

	if (cs->incoming == NULL ||
	    chanstore_key(key, sizeof(key), network, channel) < 0)
		return NULL;
	in = strmap_get(cs->incoming, key);
	return in ? in->live : NULL;
}

const struct shared_channel *chanstore_incoming_content(struct chanstore *cs,
							const char *network,
							const char *channel)
{
	char key[2 * NAMES_MAX_LEN + 4];
	struct incoming *in;

	if (cs->incoming == NULL ||
	    chanstore_key(key, sizeof(key), network, channel) < 0)
		return NULL;
	in = strmap_get(cs->incoming, key);
	return in ? (in->content ? in->content : in->live) : NULL;
}

void chanstore_chunk_end(struct chanstore *cs, bool commit)
{
	for (size_t i = 0; i < cs->ninc; i++) {
		struct incoming *in = cs->inv[i];

		if (in->content && commit) {
			/* the later snapshot wins: swap the contents */
			struct shared_channel *l = in->live, *c = in->content;
			struct shared_channel t = *l;

			l->members = c->members;
			l->nmembers = c->nmembers;
			l->cap = c->cap;
			l->index = c->index;
			l->member_bytes = c->member_bytes;
			c->members = t.members;
			c->nmembers = t.nmembers;
			c->cap = t.cap;
			c->index = t.index;
			c->member_bytes = t.member_bytes;
		}
		if (in->content)
			list_free(in->content);
		chanstore_detach(in->live);
		free(in);
	}
	cs->ninc = 0;
	strmap_free(cs->incoming);
	cs->incoming = NULL;
}

void chanstore_free(struct chanstore *cs)
{
	if (!cs)
		return;
	chanstore_chunk_end(cs, false);
	free(cs->inv);
	/* Lists still referenced at exit: whoever holds them is being freed
	 * too (bouncer_free() frees the sessions first). */
	strmap_free(cs->by_key);
	free(cs);
}
