/* sessiond/bouncer.c: the registry of a worker's sessions and pending
 * clients, the listeners, and the item interface used by migrations. */
#include "sessiond/bouncer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/config.h"
#include "common/log.h"
#include "common/strmap.h"
#include "sessiond/conn.h"
#include "sessiond/session.h"
#include "sessiond/state.h"

#define PENDING_TIMEOUT_MS 60000 /* a client must register within this */
#define START_SPREAD_MS 10       /* 100 sessions per second at startup */

struct bouncer {
	struct event_base *base;
	const struct baton_config *cfg;
	/* Every session and pending client this worker holds, in any item
	 * state (live, frozen for a migration, or adopted and not armed). */
	struct session **sessions;
	size_t nsessions;
	struct strmap *by_key; /* "user/network" -> session, for O(1) lookups */
	struct client **pending;
	size_t npending;
	/* Clients that QUIT and are finishing their output (client.c): in no
	 * session and in no migration item; closed at exit. */
	struct client **closing;
	size_t nclosing;
	int *listen_fds;
	struct event **listen_evs;
	size_t nlisten;
	bool accepting;
	struct event *sweep;
};

struct event_base *bouncer_base(const struct bouncer *b)
{
	return b->base;
}

const struct baton_config *bouncer_config(const struct bouncer *b)
{
	return b->cfg;
}

static int ptrv_push(void ***v, size_t *n, void *p)
{
	void **nv = realloc(*v, (*n + 1) * sizeof(void *));
	if (!nv)
		return -ENOMEM;
	*v = nv;
	nv[(*n)++] = p;
	return 0;
}

static void ptrv_remove(void **v, size_t *n, void *p)
{
	for (size_t i = 0; i < *n; i++) {
		if (v[i] == p) {
			memmove(&v[i], &v[i + 1], (*n - i - 1) * sizeof(void *));
			(*n)--;
			return;
		}
	}
}

struct session *bouncer_find_session(struct bouncer *b, const char *user,
				     const char *network)
{
	char key[512];

	snprintf(key, sizeof(key), "%s/%s", user, network);
	return strmap_get(b->by_key, key);
}

/* Register s (in the list and the index). Returns 0 or -ENOMEM. */
static int bouncer_add_session(struct bouncer *b, struct session *s)
{
	if (ptrv_push((void ***)&b->sessions, &b->nsessions, s) < 0)
		return -ENOMEM;
	if (strmap_put(b->by_key, s->key, s) < 0) {
		ptrv_remove((void **)b->sessions, &b->nsessions, s);
		return -ENOMEM;
	}
	return 0;
}

static void bouncer_remove_session(struct bouncer *b, struct session *s)
{
	ptrv_remove((void **)b->sessions, &b->nsessions, s);
	strmap_del(b->by_key, s->key);
}

void bouncer_forget_pending(struct bouncer *b, struct client *cl)
{
	ptrv_remove((void **)b->pending, &b->npending, cl);
}

struct session *bouncer_session_by_key(struct bouncer *b, const char *key)
{
	return strmap_get(b->by_key, key);
}

int bouncer_add_closing(struct bouncer *b, struct client *cl)
{
	return ptrv_push((void ***)&b->closing, &b->nclosing, cl);
}

void bouncer_forget_closing(struct bouncer *b, struct client *cl)
{
	ptrv_remove((void **)b->closing, &b->nclosing, cl);
}

static struct session *bouncer_create_session(struct bouncer *b,
					      const struct config_session *cs,
					      int64_t connect_at)
{
	struct session *s = session_new(b, cs->user, cs->network);
	if (!s)
		return NULL;
	s->nick = strdup(cs->nick ? cs->nick : cs->user);
	if (!s->nick || bouncer_add_session(b, s) < 0) {
		session_free(s);
		return NULL;
	}
	s->reconnect_at_ms = connect_at;
	session_arm(s); /* schedules the first connect at connect_at */
	return s;
}

static void bouncer_sweep_cb(evutil_socket_t fd, short what, void *arg)
{
	struct bouncer *b = arg;
	int64_t now = now_ms();

	for (size_t i = 0; i < b->npending; i++) {
		struct client *cl = b->pending[i];
		if (cl->item.state == ITEM_LIVE && !conn_is_dead(cl->conn) &&
		    now - cl->connected_at_ms > PENDING_TIMEOUT_MS) {
			conn_send(cl->conn, "ERROR :Closing link: registration timeout");
			conn_close(cl->conn, "registration timeout", true);
		}
	}
}

struct bouncer *bouncer_new(struct event_base *base,
			    const struct baton_config *cfg)
{
	struct bouncer *b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	b->base = base;
	b->cfg = cfg;
	b->sweep = event_new(base, -1, EV_PERSIST, bouncer_sweep_cb, b);
	b->by_key = strmap_new();
	if (!b->sweep || !b->by_key) {
		if (b->sweep)
			event_free(b->sweep);
		strmap_free(b->by_key);
		free(b);
		return NULL;
	}
	struct timeval tv = { .tv_sec = 5 };
	event_add(b->sweep, &tv);
	return b;
}

static void bouncer_close_listeners(struct bouncer *b)
{
	for (size_t i = 0; i < b->nlisten; i++) {
		if (b->listen_evs[i])
			event_free(b->listen_evs[i]);
		close(b->listen_fds[i]);
	}
	free(b->listen_evs);
	free(b->listen_fds);
	b->listen_evs = NULL;
	b->listen_fds = NULL;
	b->nlisten = 0;
}

void bouncer_free(struct bouncer *b)
{
	if (!b)
		return;
	for (size_t i = 0; i < b->nsessions; i++)
		session_free(b->sessions[i]);
	free(b->sessions);
	strmap_free(b->by_key);
	for (size_t i = 0; i < b->npending; i++)
		client_free(b->pending[i]);
	free(b->pending);
	for (size_t i = 0; i < b->nclosing; i++)
		client_closing_abandon(b->closing[i]);
	free(b->closing);
	bouncer_close_listeners(b);
	if (b->sweep)
		event_free(b->sweep);
	free(b);
}

void bouncer_start_configured(struct bouncer *b)
{
	int64_t now = now_ms();
	size_t started = 0;

	if (!b->cfg)
		return;
	for (size_t i = 0; i < b->cfg->nsessions; i++) {
		const struct config_session *cs = &b->cfg->sessions[i];
		if (bouncer_find_session(b, cs->user, cs->network))
			continue;
		/* Staggered: a restart must not open every connection in one
		 * tick (networks limit connects per source address). */
		if (!bouncer_create_session(b, cs, now + (int64_t)started * START_SPREAD_MS))
			log_error("bouncer", "%s/%s: cannot create session", cs->user,
				  cs->network);
		else
			started++;
	}
	if (started)
		log_info("bouncer", "starting %zu sessions", started);
}

static void bouncer_accept_cb(evutil_socket_t lfd, short what, void *arg)
{
	struct bouncer *b = arg;

	for (int i = 0; i < 64 && b->accepting; i++) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
			    errno != ECONNABORTED)
				log_warn("bouncer", "accept: %s", strerror(errno));
			return;
		}
		struct client *cl = client_new(b, fd); /* takes fd */
		if (!cl)
			continue;
		if (ptrv_push((void ***)&b->pending, &b->npending, cl) < 0) {
			client_free(cl);
			continue;
		}
		cl->item.state = ITEM_LIVE;
		conn_arm(cl->conn);
	}
}

void bouncer_set_listeners(struct bouncer *b, int *fds, size_t n)
{
	bool was = b->accepting;

	bouncer_accept(b, false);
	bouncer_close_listeners(b);
	b->listen_fds = calloc(n ? n : 1, sizeof(int));
	b->listen_evs = calloc(n ? n : 1, sizeof(struct event *));
	if (!b->listen_fds || !b->listen_evs) {
		for (size_t i = 0; i < n; i++)
			close(fds[i]);
		free(b->listen_fds);
		free(b->listen_evs);
		b->listen_fds = NULL;
		b->listen_evs = NULL;
		return;
	}
	for (size_t i = 0; i < n; i++) {
		b->listen_fds[i] = fds[i]; /* transferred */
		b->listen_evs[i] = event_new(b->base, fds[i], EV_READ | EV_PERSIST,
					     bouncer_accept_cb, b);
	}
	b->nlisten = n;
	if (was)
		bouncer_accept(b, true);
}

void bouncer_accept(struct bouncer *b, bool on)
{
	b->accepting = on;
	for (size_t i = 0; i < b->nlisten; i++) {
		if (!b->listen_evs[i])
			continue;
		if (on)
			event_add(b->listen_evs[i], NULL);
		else
			event_del(b->listen_evs[i]);
	}
}

void bouncer_stats(const struct bouncer *b, struct bouncer_stats *out)
{
	memset(out, 0, sizeof(*out));
	for (size_t i = 0; i < b->nsessions; i++) {
		const struct session *s = b->sessions[i];
		if (s->item.state == ITEM_ADOPTED)
			continue;
		out->sessions++;
		out->clients += (unsigned)s->nclients;
		out->connections += (unsigned)s->nclients;
		if (s->up) {
			out->connections++;
			if (s->up->phase >= UP_WELCOMED)
				out->upstreams++;
		}
	}
	for (size_t i = 0; i < b->npending; i++) {
		if (b->pending[i]->item.state == ITEM_ADOPTED)
			continue;
		out->pending++;
		out->connections++;
	}
	/* Clients finishing after QUIT: no session's, but open sockets (and
	 * fds a new worker's RLIMIT_NOFILE check should count). */
	out->connections += (unsigned)b->nclosing;
}

/* ---- migration: source side ---- */

size_t bouncer_items(struct bouncer *b, struct bouncer_item ***items)
{
	size_t n = 0;
	*items = calloc(b->npending + b->nsessions + 1, sizeof(**items));
	if (!*items)
		return 0;
	for (size_t i = 0; i < b->npending; i++)
		if (b->pending[i]->item.state != ITEM_ADOPTED)
			(*items)[n++] = &b->pending[i]->item;
	for (size_t i = 0; i < b->nsessions; i++)
		if (b->sessions[i]->item.state != ITEM_ADOPTED)
			(*items)[n++] = &b->sessions[i]->item;
	return n;
}

void bouncer_item_freeze(struct bouncer_item *it)
{
	if (it->kind == ITEM_SESSION) {
		session_freeze(it->session, true);
	} else {
		conn_freeze(it->client->conn, true);
		it->state = ITEM_FROZEN;
	}
}

int bouncer_item_serialize(struct bouncer_item *it, uint8_t **buf, size_t *len,
			   const int **fds, size_t *nfds)
{
	int rc = state_serialize(it, buf, len);
	if (rc < 0)
		return rc;
	*fds = it->fds;
	*nfds = it->nfds;
	return 0;
}

void bouncer_item_thaw(struct bouncer_item *it)
{
	if (it->kind == ITEM_SESSION) {
		session_arm(it->session);
	} else {
		it->state = ITEM_LIVE;
		conn_arm(it->client->conn);
	}
}

static struct bouncer *item_bouncer(const struct bouncer_item *it)
{
	return it->kind == ITEM_SESSION ? it->session->b : it->client->b;
}

static void bouncer_item_destroy(struct bouncer_item *it)
{
	struct bouncer *b = item_bouncer(it);
	if (it->kind == ITEM_SESSION) {
		bouncer_remove_session(b, it->session);
		session_free(it->session); /* closes, sends nothing */
	} else {
		ptrv_remove((void **)b->pending, &b->npending, it->client);
		client_free(it->client);
	}
}

void bouncer_item_release(struct bouncer_item *it)
{
	/* The target holds its own copies of the sockets: closing ours sends
	 * nothing to the peers (no shutdown()). */
	bouncer_item_destroy(it);
}

size_t bouncer_item_nfds(const struct bouncer_item *it)
{
	if (it->kind == ITEM_SESSION)
		return (it->session->up ? 1 : 0) + it->session->nclients;
	return 1;
}

bool bouncer_item_is_session(const struct bouncer_item *it)
{
	return it->kind == ITEM_SESSION;
}

/* ---- migration: target side ---- */

int bouncer_item_adopt(struct bouncer *b, const uint8_t *buf, size_t len,
		       int *fds, size_t nfds, struct bouncer_item **out,
		       char *err, size_t errlen)
{
	struct bouncer_item *it = NULL;
	int rc = state_adopt(b, buf, len, fds, nfds, &it, err, errlen);

	*out = NULL;
	if (rc < 0)
		return rc; /* state_adopt closed the fds */
	if (it->kind == ITEM_SESSION) {
		struct session *s = it->session;
		if (bouncer_find_session(b, s->user, s->network)) {
			snprintf(err, errlen, "session %s already exists here", s->key);
			session_free(s);
			return -EEXIST;
		}
		if (bouncer_add_session(b, s) < 0) {
			snprintf(err, errlen, "out of memory");
			session_free(s);
			return -ENOMEM;
		}
	} else {
		if (ptrv_push((void ***)&b->pending, &b->npending, it->client) < 0) {
			snprintf(err, errlen, "out of memory");
			client_free(it->client);
			return -ENOMEM;
		}
	}
	it->state = ITEM_ADOPTED;
	*out = it;
	return 0;
}

void bouncer_item_arm(struct bouncer_item *it)
{
	if (it->kind == ITEM_SESSION) {
		session_arm(it->session);
	} else {
		it->state = ITEM_LIVE;
		conn_arm(it->client->conn);
	}
}

void bouncer_item_discard(struct bouncer_item *it)
{
	bouncer_item_destroy(it);
}
