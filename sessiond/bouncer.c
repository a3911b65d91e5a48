/* sessiond/bouncer.c: the registry of a worker's sessions and pending
 * clients, the listeners, and the item interface used by migrations. */
#include "sessiond/bouncer.h"
#include "sessiond/bouncer_networks.h"
#include "common/clock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/config.h"
#include "common/config_diff.h"
#include "common/log.h"
#include "common/strmap.h"
#include "common/names.h"
#include "sessiond/conn.h"
#include "sessiond/authpool.h"
#include "sessiond/backlog.h"
#include "sessiond/history.h"
#include "sessiond/fault.h"
#include "sessiond/governor.h"
#include "sessiond/peer.h"
#include "sessiond/resolver.h"
#include "sessiond/sasl.h"
#include "sessiond/health.h"
#include "sessiond/session.h"
#include "sessiond/state.h"
#include "sessiond/throttle.h"
#include "sessiond/tls_contexts.h"
#include "sessiond/upstream.h"
#include "sessiond/irc.h"
#include "store/store.h"

#define PENDING_TIMEOUT_MS 60000 /* a client must register within this */
/* Out of fds (EMFILE/ENFILE): accepting pauses this long, then tries again
 * (the listener stays readable while a connection waits: no pause would
 * spin). */
#define ACCEPT_PAUSE_MS 100
#define ACCEPT_SHED_MAX 64       /* backlog connections refused per pause */
#define REFUSE_LOG_MS 10000      /* refusals are logged at most this often */
#define START_SPREAD_MS 10       /* 100 sessions per second at startup */
#define HEALTH_TICK_MS 1000      /* late adoption PINGs, unanswered PINGs */
/* Longest a migration holds the governors (bouncer_governor_hold()): a
 * release that never comes (a lost ACCEPT) must not stop reconnects. */
#define GOV_HOLD_MS 20000
#define GOV_WAIT_LOG_MS 5000     /* "waiting for a connection slot" at most this often */

/* One network's governor and the timer that runs it. */
struct bouncer_gov {
	struct bouncer *b;
	struct governor *g;
	struct event *ev;
	int64_t logged_at;   /* last "waiting for a connection slot" line */
	/* What bouncer_gov_tell() last told about, and whether a session
	 * queued since: it walks the queue only when either changed. */
	enum governor_wait told_reason;
	bool tell_due;
};

/* A list of objects with O(1) add and remove, in no particular order:
 * removal moves the last object into the hole. Each object's position is
 * kept in an index keyed by its address (struct session and struct client
 * are session.h's, so the position cannot live in them), which makes
 * releasing every item of a migration linear, not quadratic. */
struct reglist {
	void **v;
	size_t n, cap;
	struct strmap *pos; /* "%p" of the object -> position + 1 */
};

struct bouncer {
	struct event_base *base;
	const struct baton_config *cfg;
	/* The config of the last reload (bouncer_reload()), owned; cfg points
	 * at it. NULL: cfg is bouncer_new()'s, the caller's. */
	struct baton_config *owned_cfg;
	/* The other worker of a canary (peer.h; owned), NULL outside one. */
	struct peer *peer;
	/* The message store (history.h; owned), NULL: off. */
	struct history *hist;
	struct history_retry *hist_retry; /* owned; while hist is NULL */
	/* Every session and pending client this worker holds, in any item
	 * state (live, frozen for a migration, or adopted and not armed). */
	struct reglist sessions;
	struct strmap *by_key; /* "user/network" -> session, for O(1) lookups */
	struct reglist pending;
	/* Clients that QUIT and are finishing their output (client.c): in no
	 * session and in no migration item; closed at exit. */
	struct reglist closing;
	int *listen_fds;
	struct event **listen_evs;
	bool *listen_tls; /* ircs listener: clients start with a handshake */
	/* their names ("irc ADDR:PORT"; "" when the supervisor gave none),
	 * handed back to a supervisor that adopts an orphan (rendezvous.h) */
	char **listen_names;
	size_t tls_handshakes; /* ircs handshakes in progress */
	size_t nlisten;
	/* Per client address: "addr" -> struct addr_use, for the [listen]
	 * limits on unregistered connections; an entry lives while it counts
	 * something. npending: pending clients counted (any item state). */
	struct strmap *by_addr;
	size_t npending;
	/* Connections refused at a limit: one log line per REFUSE_LOG_MS. */
	int64_t refused_logged_ms;
	unsigned long refused;
	char refused_why[160];
	/* Out of fds: reserve_fd (/dev/null) is given back to shed one
	 * backlog connection with an ERROR line; accepting pauses on a timer. */
	int reserve_fd;
	struct event *accept_resume;
	bool accept_paused;
	int64_t emfile_logged_ms;
	unsigned long emfile_shed, emfile_pauses;
	/* Logins: password checks off the loop, by id; failure throttles per
	 * address, per configured user and per unknown name (NULL: off). */
	struct authpool *auth;
	struct strmap *auth_by_id; /* "%llu" -> struct client */
	uint64_t auth_seq;
	struct throttle *fail_addr, *fail_user, *fail_name;
	int64_t throttle_logged_ms;
	/* Clients whose login waits for the checks in flight of a busy key
	 * (bouncer_login_begin()); looked at again by login_retry, made
	 * active whenever a check ends. */
	struct reglist login_waiting;
	struct event *login_retry;
	struct tls_contexts *tls;
	bool accepting;
	struct event *sweep;
	/* Reconnect governors, one per configured network (config order). */
	struct bouncer_gov *govs;
	size_t ngovs;
	int64_t gov_hold_until; /* 0: granting; else held until then */
	/* Snapshot bookkeeping for migrations: the governors changed since a
	 * snapshot was last put into a serialized item (state.c). */
	bool gov_dirty;
	/* The worker's health counters (health.h) and their PING checks. */
	struct health health;
	/* Member lists shared by the sessions of a network (chanstore.h). */
	struct chanstore *chans;
	struct event *health_tick;
	/* Host names of networks (resolver.h): made in bouncer_new() when a
	 * configured host is a name, else on first use. */
	struct resolver *resolver;
	/* Sessions a migration committed elsewhere: sockets closed, memory
	 * freed later (bouncer_item_release(), bouncer_released_reap()). */
	struct session **released;
	size_t nreleased, capreleased;
	struct event *reap_ev;
};

struct event_base *bouncer_base(const struct bouncer *b)
{
	return b->base;
}

struct chanstore *bouncer_chanstore(struct bouncer *b)
{
	return b->chans;
}

const struct baton_config *bouncer_config(const struct bouncer *b)
{
	return b->cfg;
}

static void reglist_key(const void *p, char key[32])
{
	snprintf(key, 32, "%p", p);
}

static int reglist_init(struct reglist *l)
{
	l->pos = strmap_new();
	return l->pos ? 0 : -ENOMEM;
}

/* Frees the list, not the objects. */
static void reglist_clear(struct reglist *l)
{
	free(l->v);
	strmap_free(l->pos);
	memset(l, 0, sizeof(*l));
}

/* Returns 0 or -ENOMEM (then the list is unchanged). */
static int reglist_add(struct reglist *l, void *p)
{
	char key[32];

	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 16;
		void **nv = realloc(l->v, cap * sizeof(void *));
		if (!nv)
			return -ENOMEM;
		l->v = nv;
		l->cap = cap;
	}
	reglist_key(p, key);
	if (strmap_put(l->pos, key, (void *)(uintptr_t)(l->n + 1)) < 0)
		return -ENOMEM;
	l->v[l->n++] = p;
	return 0;
}

/* Removes p if listed. Never fails: replacing the moved object's entry
 * does not allocate. */
static void reglist_remove(struct reglist *l, void *p)
{
	char key[32];
	uintptr_t at;

	reglist_key(p, key);
	at = (uintptr_t)strmap_del(l->pos, key);
	if (at == 0)
		return;
	void *moved = l->v[--l->n];
	if (moved != p) {
		l->v[at - 1] = moved;
		reglist_key(moved, key);
		strmap_put(l->pos, key, (void *)at);
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
	if (reglist_add(&b->sessions, s) < 0)
		return -ENOMEM;
	if (strmap_put(b->by_key, s->key, s) < 0) {
		reglist_remove(&b->sessions, s);
		return -ENOMEM;
	}
	return 0;
}

static void bouncer_remove_session(struct bouncer *b, struct session *s)
{
	reglist_remove(&b->sessions, s);
	strmap_del(b->by_key, s->key);
}

size_t bouncer_nsessions(const struct bouncer *b)
{
	return b->sessions.n;
}

struct session *bouncer_session_at(struct bouncer *b, size_t i)
{
	return b->sessions.v[i];
}

struct health *bouncer_health(struct bouncer *b)
{
	return &b->health;
}

/* Once a second: adoption PINGs and network PINGs not answered in time
 * (health.h). A few loads per live upstream. */
static void bouncer_health_tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct bouncer *b = arg;
	const struct baton_config *d = config_default_values();
	const struct baton_config *cfg = b->cfg ? b->cfg : d;
	int64_t adopt = (cfg->canary_adopt_ping_timeout_s > 0 ?
			 cfg->canary_adopt_ping_timeout_s : d->canary_adopt_ping_timeout_s) * 1000LL;
	int64_t answer = (cfg->canary_ping_answer_timeout_s > 0 ?
			  cfg->canary_ping_answer_timeout_s : d->canary_ping_answer_timeout_s) * 1000LL;
	int64_t now = clock_mono_ms();

	for (size_t i = 0; i < b->sessions.n; i++) {
		struct session *s = b->sessions.v[i];

		if (s->item.state == ITEM_LIVE && s->up && !s->up->dead &&
		    !conn_is_dead(s->up->conn))
			health_link_check(&s->up->hl, now, adopt, answer);
	}
}

/* ---- limits on unregistered connections ---- */

struct addr_use {
	unsigned pending;  /* pending clients from this address */
	unsigned tls;      /* ... of them in an ircs handshake */
};

void bouncer_addr_key(const struct sockaddr *sa, socklen_t len,
		      char out[BOUNCER_ADDR_KEY_LEN])
{
	out[0] = '\0';
	if (sa == NULL || len < (socklen_t)sizeof(sa_family_t))
		return;
	if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
		inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out,
			  BOUNCER_ADDR_KEY_LEN);
	} else if (sa->sa_family == AF_INET6 &&
		   len >= (socklen_t)sizeof(struct sockaddr_in6)) {
		struct in6_addr a = ((const struct sockaddr_in6 *)sa)->sin6_addr;
		size_t n;

		if (IN6_IS_ADDR_V4MAPPED(&a)) {
			inet_ntop(AF_INET, &a.s6_addr[12], out, BOUNCER_ADDR_KEY_LEN);
			return;
		}
		/* One host (one customer) has a whole /64. */
		memset(&a.s6_addr[8], 0, 8);
		if (inet_ntop(AF_INET6, &a, out, BOUNCER_ADDR_KEY_LEN) == NULL) {
			out[0] = '\0';
			return;
		}
		n = strlen(out); /* at most 21: the low 64 bits are zero */
		snprintf(out + n, BOUNCER_ADDR_KEY_LEN - n, "/64");
	} else if (sa->sa_family == AF_UNIX) {
		snprintf(out, BOUNCER_ADDR_KEY_LEN, "local");
	}
}

static struct addr_use *addr_use(struct bouncer *b, const char *addr,
				 bool create)
{
	struct addr_use *u = strmap_get(b->by_addr, addr);

	if (u || !create)
		return u;
	u = calloc(1, sizeof(*u));
	if (u && strmap_put(b->by_addr, addr, u) < 0) {
		free(u);
		u = NULL;
	}
	return u;
}

static void addr_use_drop_if_idle(struct bouncer *b, const char *addr,
				  struct addr_use *u)
{
	if (u->pending == 0 && u->tls == 0)
		free(strmap_del(b->by_addr, addr));
}

/* Register a pending client (list, counters, small sendq before login).
 * Returns 0 or -ENOMEM (then nothing changed). */
static int bouncer_add_pending(struct bouncer *b, struct client *cl)
{
	struct addr_use *u;

	if (!cl->addr[0] && cl->conn) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);

		if (getpeername(conn_fd(cl->conn), (struct sockaddr *)&ss, &len) == 0)
			bouncer_addr_key((struct sockaddr *)&ss, len, cl->addr);
	}
	u = addr_use(b, cl->addr, true);
	if (!u || reglist_add(&b->pending, cl) < 0) {
		if (u)
			addr_use_drop_if_idle(b, cl->addr, u);
		return -ENOMEM;
	}
	u->pending++;
	b->npending++;
	cl->pending_counted = true;
	if (b->cfg && b->cfg->prelogin_sendq > 0)
		conn_set_sendq(cl->conn, (size_t)b->cfg->prelogin_sendq);
	return 0;
}

void bouncer_forget_pending(struct bouncer *b, struct client *cl)
{
	reglist_remove(&b->pending, cl);
	if (cl->pending_counted) {
		struct addr_use *u = addr_use(b, cl->addr, false);

		cl->pending_counted = false;
		b->npending--;
		if (u) {
			u->pending--;
			addr_use_drop_if_idle(b, cl->addr, u);
		}
	}
}

static void bouncer_tls_handshake_begin(struct bouncer *b, struct client *cl)
{
	struct addr_use *u = addr_use(b, cl->addr, false);

	cl->in_tls_handshake = true;
	b->tls_handshakes++;
	if (u)
		u->tls++;
}

void bouncer_tls_handshake_end(struct bouncer *b, struct client *cl)
{
	struct addr_use *u;

	if (!cl->in_tls_handshake)
		return;
	cl->in_tls_handshake = false;
	if (b->tls_handshakes > 0)
		b->tls_handshakes--;
	u = addr_use(b, cl->addr, false);
	if (u && u->tls > 0) {
		u->tls--;
		addr_use_drop_if_idle(b, cl->addr, u);
	}
}

/* NULL if a new connection from addr may be registered, else why not. */
static const char *bouncer_admit(struct bouncer *b, bool tls, const char *addr)
{
	const struct baton_config *cfg = b->cfg;
	const struct addr_use *u = strmap_get(b->by_addr, addr);

	if (!cfg)
		return NULL;
	if (cfg->max_pending > 0 && b->npending >= (size_t)cfg->max_pending)
		return "too many unregistered connections";
	if (cfg->max_pending_per_ip > 0 && u && u->pending >= (unsigned)cfg->max_pending_per_ip)
		return "too many unregistered connections from your address";
	if (tls && cfg->max_tls_handshakes > 0 &&
	    b->tls_handshakes >= (size_t)cfg->max_tls_handshakes)
		return "too many TLS handshakes in progress";
	if (tls && cfg->max_tls_handshakes_per_ip > 0 && u &&
	    u->tls >= (unsigned)cfg->max_tls_handshakes_per_ip)
		return "too many TLS handshakes from your address";
	return NULL;
}

/* Tell a connection we will not serve why (plaintext only: a TLS client
 * would read it as a broken record) and close it. One log line per
 * REFUSE_LOG_MS with the count. */
static void bouncer_refuse(struct bouncer *b, int fd, bool tls,
			   const char *addr, const char *why)
{
	int64_t now = clock_mono_ms();

	if (!tls) {
		char line[256];
		int n = snprintf(line, sizeof(line), "ERROR :Closing link: %s\r\n", why);

		(void)!send(fd, line, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
	}
	close(fd);
	b->refused++;
	snprintf(b->refused_why, sizeof(b->refused_why), "%s (%s%s)", why,
		 tls ? "ircs, " : "", addr[0] ? addr : "unknown address");
	if (now - b->refused_logged_ms >= REFUSE_LOG_MS || b->refused_logged_ms == 0) {
		log_warn("bouncer", "refused %lu connection(s) in the last %d s; last: %s",
			 b->refused, REFUSE_LOG_MS / 1000, b->refused_why);
		b->refused = 0;
		b->refused_logged_ms = now;
	}
}

struct session *bouncer_session_by_key(struct bouncer *b, const char *key)
{
	return strmap_get(b->by_key, key);
}

int bouncer_add_closing(struct bouncer *b, struct client *cl)
{
	return reglist_add(&b->closing, cl);
}

void bouncer_forget_closing(struct bouncer *b, struct client *cl)
{
	reglist_remove(&b->closing, cl);
}

static struct session *bouncer_create_session(struct bouncer *b,
					      const struct config_session *cs,
					      int64_t connect_at)
{
	struct session *s = session_new(b, cs->user, cs->network);
	if (!s)
		return NULL;
	/* A nick the state may not hold (names.h; --check refuses such a
	 * config) stays unknown until the network's 001 names one. */
	const char *nick = cs->nick ? cs->nick : cs->user;
	bool keep = names_nick_ok(nick);
	s->nick = keep ? strdup(nick) : NULL;
	if ((keep && !s->nick) || bouncer_add_session(b, s) < 0) {
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
	int64_t now = clock_mono_ms();

	/* Refusals counted since the last line. */
	if (b->refused && now - b->refused_logged_ms >= REFUSE_LOG_MS) {
		log_warn("bouncer", "refused %lu connection(s) in the last %d s; last: %s",
			 b->refused, REFUSE_LOG_MS / 1000, b->refused_why);
		b->refused = 0;
		b->refused_logged_ms = now;
	}

	for (size_t i = 0; i < b->pending.n; i++) {
		struct client *cl = b->pending.v[i];
		if (cl->item.state == ITEM_LIVE && !conn_is_dead(cl->conn) &&
		    now - cl->connected_at_ms > PENDING_TIMEOUT_MS) {
			conn_send(cl->conn, "ERROR :Closing link: registration timeout");
			conn_close(cl->conn, "registration timeout", true);
		}
	}
}

/* ---- logins: throttles and password checks ---- */

/* The throttle key of a user name. Unconfigured names longer than
 * BOUNCER_NAME_KEY_MAX are one key: no configured user has them, and each
 * would otherwise keep an entry of its own (throttle.h bounds what an entry
 * keeps; this bounds how many such entries a guesser can create with one
 * name each). It contains '@' and '/', which no parsed user name has. */
#define BOUNCER_NAME_KEY_MAX 64
static const char long_name_key[] = "@long/";

static const char *bouncer_user_key(struct bouncer *b, const char *user)
{
	if (!user)
		return NULL;
	if (strlen(user) > BOUNCER_NAME_KEY_MAX &&
	    !(b->cfg && config_find_user(b->cfg, user)))
		return long_name_key;
	return user;
}

/* The throttle for a user name key: configured users have their own table
 * (bounded by the config), any other name the bounded one of unknown
 * names, so that the answer does not tell which names exist. */
static struct throttle *bouncer_user_throttle(struct bouncer *b,
					      const char *key)
{
	if (!key)
		return NULL;
	return b->cfg && config_find_user(b->cfg, key) ? b->fail_user : b->fail_name;
}

int64_t bouncer_login_wait(struct bouncer *b, const char *addr,
			   const char *user)
{
	int64_t now = clock_mono_ms(), w = 0, wu = 0;
	const char *key = bouncer_user_key(b, user);
	struct throttle *tu = bouncer_user_throttle(b, key);

	if (b->fail_addr)
		w = throttle_wait(b->fail_addr, addr, now);
	if (tu)
		wu = throttle_wait(tu, key, now);
	return w > wu ? w : wu;
}

/* cl->login_counted: what bouncer_login_begin() counted, per key. */
#define LOGIN_ADDR_CHARGED  1u /* a failure at once: refund if right */
#define LOGIN_ADDR_INFLIGHT 2u /* in flight: throttle_end() */
#define LOGIN_USER_CHARGED  4u
#define LOGIN_USER_INFLIGHT 8u

static void bouncer_login_log(struct bouncer *b, const char *addr,
			      const char *user, int64_t da, int64_t du,
			      int64_t now)
{
	if ((da <= 0 && du <= 0) || now - b->throttle_logged_ms < REFUSE_LOG_MS)
		return;
	b->throttle_logged_ms = now;
	log_warn("client", "failed logins: address %s blocked for %lld s, user %s for %lld s (logged at most every %d s)",
		 addr[0] ? addr : "unknown", (long long)(da + 999) / 1000,
		 user ? user : "-", (long long)(du + 999) / 1000,
		 REFUSE_LOG_MS / 1000);
}

/* A check ended (or what it counted was dropped): a busy key may be free
 * now, so the waiting clients are looked at again from the loop
 * (bouncer_login_retry_cb()). */
static void bouncer_login_kick(struct bouncer *b)
{
	if (b->login_waiting.n > 0 && b->login_retry)
		event_active(b->login_retry, EV_TIMEOUT, 0);
}

static bool bouncer_login_busy(struct bouncer *b, const char *addr,
			       const char *key, int64_t now)
{
	struct throttle *tu = bouncer_user_throttle(b, key);

	return throttle_busy(b->fail_addr, addr, now) ||
	       (tu && throttle_busy(tu, key, now));
}

/* The waiting clients whose keys are no longer busy try again (each is
 * checked, waits again or is refused by client_authenticate()). From the
 * loop: nothing here runs inside a check's result. */
static void bouncer_login_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct bouncer *b = arg;
	int64_t now = clock_mono_ms();
	struct client **go;
	size_t n = 0;

	if (b->login_waiting.n == 0)
		return;
	go = calloc(b->login_waiting.n, sizeof(*go));
	if (!go) {
		log_error("bouncer", "out of memory: %zu waiting logins not resumed yet",
			  b->login_waiting.n);
		/* Out of memory: try again on the next check that ends; the
		 * registration timeout closes whoever never gets there. */
		return;
	}
	for (size_t i = 0; i < b->login_waiting.n; i++) {
		struct client *cl = b->login_waiting.v[i];

		if (!bouncer_login_busy(b, cl->addr, cl->login_user, now))
			go[n++] = cl;
	}
	/* Taken off the list first: resuming one may list it again. Closing
	 * a client is deferred to the loop (conn_close()), so none of them is
	 * freed meanwhile. */
	for (size_t i = 0; i < n; i++) {
		reglist_remove(&b->login_waiting, go[i]);
		go[i]->login_waiting = false;
	}
	for (size_t i = 0; i < n; i++)
		client_pending_resume(go[i]);
	free(go);
}

int bouncer_login_begin(struct bouncer *b, struct client *cl,
			const char *user)
{
	int64_t now = clock_mono_ms(), da = 0, du = 0;
	const char *key = bouncer_user_key(b, user);
	struct throttle *tu = bouncer_user_throttle(b, key);
	int rc;

	bouncer_login_drop(b, cl, true); /* nothing counted twice */
	if (!b->fail_addr)
		return 0;
	if (key) {
		cl->login_user = strdup(key);
		if (!cl->login_user)
			return -ENOMEM;
	}
	if (bouncer_login_busy(b, cl->addr, key, now)) {
		if (reglist_add(&b->login_waiting, cl) < 0) {
			rc = -ENOMEM;
			goto out;
		}
		cl->login_waiting = true;
		return 1;
	}
	rc = throttle_begin(b->fail_addr, cl->addr, now, &da);
	if (rc < 0)
		goto out;
	cl->login_counted |= rc ? LOGIN_ADDR_CHARGED : LOGIN_ADDR_INFLIGHT;
	if (tu) {
		rc = throttle_begin(tu, key, now, &du);
		if (rc < 0)
			goto out;
		cl->login_counted |= rc ? LOGIN_USER_CHARGED : LOGIN_USER_INFLIGHT;
	}
	bouncer_login_log(b, cl->addr, key, da, du, now);
	rc = 0;
out:
	if (rc < 0)
		bouncer_login_drop(b, cl, true);
	return rc;
}

void bouncer_login_result(struct bouncer *b, struct client *cl, bool ok)
{
	int64_t now = clock_mono_ms(), da = 0, du = 0;
	const char *key = cl->login_user;
	struct throttle *tu = bouncer_user_throttle(b, key);
	unsigned counted = cl->login_counted;

	cl->login_counted = 0;
	if (!b->fail_addr)
		goto out;
	if (counted & LOGIN_ADDR_INFLIGHT)
		da = throttle_end(b->fail_addr, cl->addr, !ok, now);
	else if ((counted & LOGIN_ADDR_CHARGED) && ok)
		throttle_refund(b->fail_addr, cl->addr);
	else if (!(counted & LOGIN_ADDR_CHARGED) && !ok)
		da = throttle_failed(b->fail_addr, cl->addr, now); /* not begun */
	if (tu) {
		if (counted & LOGIN_USER_INFLIGHT)
			du = throttle_end(tu, key, !ok, now);
		else if (!(counted & LOGIN_USER_CHARGED) && !ok)
			du = throttle_failed(tu, key, now);
		if (ok)
			throttle_forget(tu, key); /* a charge included */
	}
	bouncer_login_log(b, cl->addr, key, da, du, now);
out:
	free(cl->login_user);
	cl->login_user = NULL;
	bouncer_login_kick(b);
}

void bouncer_login_drop(struct bouncer *b, struct client *cl, bool refund)
{
	const char *key = cl->login_user;
	struct throttle *tu = bouncer_user_throttle(b, key);
	unsigned counted = cl->login_counted;
	int64_t now = clock_mono_ms();

	if (cl->login_waiting) {
		reglist_remove(&b->login_waiting, cl);
		cl->login_waiting = false;
	}
	cl->login_counted = 0;
	if (b->fail_addr) {
		if (counted & LOGIN_ADDR_INFLIGHT)
			throttle_end(b->fail_addr, cl->addr, false, now);
		if ((counted & LOGIN_ADDR_CHARGED) && refund)
			throttle_refund(b->fail_addr, cl->addr);
	}
	if (tu) {
		if (counted & LOGIN_USER_INFLIGHT)
			throttle_end(tu, key, false, now);
		if ((counted & LOGIN_USER_CHARGED) && refund)
			throttle_refund(tu, key);
	}
	free(cl->login_user);
	cl->login_user = NULL;
	if (counted)
		bouncer_login_kick(b);
}

static void auth_key(uint64_t id, char key[24])
{
	snprintf(key, 24, "%" PRIu64, id);
}

int bouncer_auth_submit(struct bouncer *b, struct client *cl,
			const char *password, const char *hash)
{
	char key[24];
	uint64_t id = ++b->auth_seq;
	int rc;

	auth_key(id, key);
	if (strmap_put(b->auth_by_id, key, cl) < 0)
		return -ENOMEM;
	rc = authpool_submit(b->auth, id, password, hash);
	if (rc < 0) {
		strmap_del(b->auth_by_id, key);
		return rc;
	}
	cl->auth_id = id;
	return 0;
}

void bouncer_auth_cancel(struct bouncer *b, struct client *cl)
{
	char key[24];

	if (!cl->auth_id)
		return;
	auth_key(cl->auth_id, key);
	strmap_del(b->auth_by_id, key);
	cl->auth_id = 0;
}

/* A result from the pool: the client, if it still waits for this id. */
static void bouncer_auth_done(uint64_t id, bool ok, void *arg)
{
	struct bouncer *b = arg;
	char key[24];
	struct client *cl;

	auth_key(id, key);
	cl = strmap_del(b->auth_by_id, key);
	if (!cl || cl->auth_id != id)
		return; /* freed, frozen or cancelled meanwhile */
	cl->auth_id = 0;
	client_auth_done(cl, ok);
}

/* ---- reconnect governors ---- */

struct governor *bouncer_governor(struct bouncer *b, const char *network)
{
	if (!network)
		return NULL;
	for (size_t i = 0; i < b->ngovs; i++)
		if (strcmp(governor_network(b->govs[i].g), network) == 0)
			return b->govs[i].g;
	return NULL;
}

size_t bouncer_ngovernors(const struct bouncer *b)
{
	return b->ngovs;
}

struct governor *bouncer_governor_at(struct bouncer *b, size_t i)
{
	return i < b->ngovs ? b->govs[i].g : NULL;
}

static struct bouncer_gov *bouncer_gov_of(struct bouncer *b, struct governor *g)
{
	for (size_t i = 0; i < b->ngovs; i++)
		if (b->govs[i].g == g)
			return &b->govs[i];
	return NULL;
}

static void bouncer_gov_schedule(struct bouncer_gov *bg, int64_t at)
{
	int64_t d = at - clock_mono_ms();
	if (d < 0)
		d = 0;
	struct timeval tv = { .tv_sec = d / 1000, .tv_usec = (d % 1000) * 1000 };
	event_del(bg->ev);
	evtimer_add(bg->ev, &tv);
}

void bouncer_governor_kick(struct bouncer *b, struct governor *g)
{
	struct bouncer_gov *bg = g ? bouncer_gov_of(b, g) : NULL;
	if (bg)
		bouncer_gov_schedule(bg, 0);
}

void bouncer_governor_changed(struct bouncer *b)
{
	b->gov_dirty = true;
}

bool bouncer_governor_snapshot_due(const struct bouncer *b)
{
	return b->ngovs > 0 && b->gov_dirty;
}

void bouncer_governor_snapshot_sent(struct bouncer *b)
{
	b->gov_dirty = false;
}

void bouncer_governor_hold(struct bouncer *b, bool hold)
{
	if (hold) {
		if (!b->gov_hold_until)
			log_info("governor", "holding reconnects during the migration");
		b->gov_hold_until = clock_mono_ms() + GOV_HOLD_MS;
		return;
	}
	if (!b->gov_hold_until)
		return;
	b->gov_hold_until = 0;
	for (size_t i = 0; i < b->ngovs; i++)
		bouncer_gov_schedule(&b->govs[i], 0);
}

int bouncer_governor_request(struct bouncer *b, struct session *s)
{
	struct governor *g = bouncer_governor(b, s->network);
	if (!g)
		return -ENOENT;
	s->gov_wait.prefer = s->source_addr ? governor_find_addr(g, s->source_addr) : -1;
	int rc = governor_request(g, &s->gov_wait, s->reconnect_at_ms);
	if (rc == 0) {
		struct bouncer_gov *bg = bouncer_gov_of(b, g);
		if (bg)
			bg->tell_due = true; /* a new waiter may need telling */
		bouncer_governor_kick(b, g);
	}
	return rc;
}

/* What a session waiting in governor g is told, for reason w (SLOTS or
 * THROTTLED), into buf. Returns buf, or NULL when there is nothing to tell
 * (not waiting, or only paced: the next token comes within seconds). The
 * operator's options are named, because a user cannot fix it and the
 * network will not grant more connections per address by itself. */
static const char *bouncer_wait_text_for(struct governor *g,
					 enum governor_wait w, int64_t now,
					 char *buf, size_t len)
{
	const char *net = governor_network(g);
	size_t naddrs = governor_naddrs(g);
	bool kernel = naddrs == 1 && governor_addr(g, 0)[0] == '\0';

	if (w == GOV_WAIT_SLOTS) {
		snprintf(buf, len,
			 "Waiting for a connection slot on %.64s: all %u are in use "
			 "(%zu source address%s x max_connections_per_ip %d), "
			 "%zu session%s waiting. You connect when one frees up. "
			 "The bouncer's operator can add source addresses "
			 "([network %.64s] bind) or, with an exemption from the "
			 "network, raise max_connections_per_ip.",
			 net, governor_capacity(g), naddrs, naddrs == 1 ? "" : "es",
			 governor_max_per_addr(g), governor_queued(g),
			 governor_queued(g) == 1 ? "" : "s", net);
		return buf;
	}
	if (w == GOV_WAIT_THROTTLED) {
		int64_t due = governor_next_due(g, now);
		long long secs = due > now ? (long long)((due - now + 999) / 1000) : 0;

		snprintf(buf, len,
			 "Waiting to connect to %.64s: the network refused more "
			 "connections from %s (too many connections or too "
			 "fast); next attempt in %lld s. The bouncer's operator "
			 "can add source addresses ([network %.64s] bind) or ask "
			 "the network for an exemption (and set "
			 "max_connections_per_ip to what it allows).",
			 net, kernel ? "this host" : naddrs == 1 ?
			 governor_addr(g, 0) : "every free source address",
			 secs, net);
		return buf;
	}
	return NULL;
}

const char *bouncer_wait_text(struct bouncer *b, const struct session *s,
			      char *buf, size_t len)
{
	struct governor *g = bouncer_governor(b, s->network);

	if (!g || !governor_waiting(&s->gov_wait))
		return NULL;
	return bouncer_wait_text_for(g, governor_wait_reason(g, clock_mono_ms()),
				     clock_mono_ms(), buf, len);
}

/* Tell the attached clients of every session waiting in g why, once per
 * reason (s->gov_told): a user who sees only "reconnecting" for hours
 * cannot know that the bouncer, not the network, holds them back. */
static void bouncer_gov_tell(struct bouncer_gov *bg, int64_t now)
{
	struct governor *g = bg->g;
	enum governor_wait w = governor_wait_reason(g, now);
	size_t queued = governor_queued(g);
	char text[512];

	if (w != GOV_WAIT_SLOTS && w != GOV_WAIT_THROTTLED) {
		bg->told_reason = GOV_WAIT_NONE;
		return;
	}
	if (w == bg->told_reason && !bg->tell_due)
		return; /* nobody new to tell */
	bg->told_reason = w;
	bg->tell_due = false;
	if (!bouncer_wait_text_for(g, w, now, text, sizeof(text)))
		return;
	for (size_t i = 0; i < queued; i++) {
		struct session *s = governor_waiter_at(g, i)->arg;

		if (s->gov_told == (int)w)
			continue;
		s->gov_told = (int)w;
		session_notice_all(s, "%s", text);
	}
}

/* Connect the sessions the governor lets go now, then sleep until it may
 * let the next one go (a token refills, a throttle ends) or a slot is
 * released (bouncer_governor_kick()). */
static void bouncer_gov_cb(evutil_socket_t fd, short what, void *arg)
{
	struct bouncer_gov *bg = arg;
	struct bouncer *b = bg->b;
	struct governor *g = bg->g;
	int64_t now = clock_mono_ms();
	struct governor_waiter *w;
	size_t addr;

	if (b->gov_hold_until) {
		if (now < b->gov_hold_until) {
			bouncer_gov_schedule(bg, b->gov_hold_until);
			return;
		}
		log_warn("governor", "migration hold not released after %d ms: granting again",
			 GOV_HOLD_MS);
		b->gov_hold_until = 0;
	}
	while ((w = governor_next(g, now, &addr)) != NULL) {
		struct session *s = w->arg;
		bouncer_governor_changed(b);
		if (s->up || s->lookup || s->item.state != ITEM_LIVE) {
			/* cannot happen: freeze cancels; keep the due time */
			governor_release(g, addr);
			continue;
		}
		s->reconnect_at_ms = 0;
		s->gov_told = 0;
		int rc = upstream_connect(s, (int)addr);
		if (rc < 0) {
			governor_release(g, addr);
			log_warn("upstream", "%s: connect from %s failed: %s", s->key,
				 governor_addr(g, addr)[0] ? governor_addr(g, addr) : "*",
				 strerror(-rc));
			s->reconnect_failures++;
			session_backoff(s);
		}
	}
	size_t queued = governor_queued(g);
	int64_t due = governor_next_due(g, now);
	bouncer_gov_tell(bg, now);
	if (queued && now - bg->logged_at >= GOV_WAIT_LOG_MS) {
		bg->logged_at = now;
		if (due < 0)
			log_info("governor", "%s: %zu sessions waiting for a connection slot (every source address at max_connections_per_ip: %zu address%s x %d); add bind addresses or, with an exemption from the network, raise max_connections_per_ip",
				 governor_network(g), queued, governor_naddrs(g),
				 governor_naddrs(g) == 1 ? "" : "es",
				 governor_max_per_addr(g));
		else
			log_info("governor", "%s: %zu sessions waiting for a connection slot (next in %lld ms)",
				 governor_network(g), queued, (long long)(due - now));
	}
	if (due >= 0)
		bouncer_gov_schedule(bg, due);
}

static int bouncer_gov_init(struct bouncer *b)
{
	const struct baton_config *cfg = b->cfg;
	int64_t now = clock_mono_ms();

	if (!cfg || !cfg->nnetworks)
		return 0;
	b->govs = calloc(cfg->nnetworks, sizeof(*b->govs));
	if (!b->govs)
		return -ENOMEM;
	for (size_t i = 0; i < cfg->nnetworks; i++) {
		const struct config_network *n = &cfg->networks[i];
		struct governor_limits lim = {
			.connects_per_minute = n->connects_per_minute,
			.connect_burst = n->connect_burst,
			.max_per_addr = n->max_connections_per_ip,
		};
		struct bouncer_gov *bg = &b->govs[b->ngovs];
		bg->b = b;
		bg->g = governor_new(n->name, &lim, (const char *const *)n->bind,
				     n->nbind, now);
		bg->ev = evtimer_new(b->base, bouncer_gov_cb, bg);
		b->ngovs++;
		if (!bg->g || !bg->ev)
			return -ENOMEM;
	}
	return 0;
}

static void bouncer_accept_resume_cb(evutil_socket_t fd, short what, void *arg);

/* What the limits on strangers need: the fd reserve, the accept pause
 * timer, the address table, the password-check pool and the throttles. */
static int bouncer_limits_init(struct bouncer *b)
{
	const struct baton_config *cfg = b->cfg;

	b->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	b->accept_resume = evtimer_new(b->base, bouncer_accept_resume_cb, b);
	b->by_addr = strmap_new();
	b->auth_by_id = strmap_new();
	b->login_retry = event_new(b->base, -1, 0, bouncer_login_retry_cb, b);
	b->auth = authpool_new(b->base,
			       (unsigned)CONFIG_INT_OR_DEFAULT(cfg, auth_threads),
			       (size_t)CONFIG_INT_OR_DEFAULT(cfg, auth_queue),
			       bouncer_auth_done, b);
	if (!b->accept_resume || !b->by_addr || !b->auth_by_id || !b->auth ||
	    !b->login_retry || reglist_init(&b->login_waiting) < 0)
		return -ENOMEM;
	if (cfg && cfg->login_throttle_max_s > 0) {
		struct throttle_limits lim = {
			.free_failures = (unsigned)cfg->login_failures_free,
			.max_delay_ms = (int64_t)cfg->login_throttle_max_s * 1000,
			.max_entries = (size_t)CONFIG_INT_OR_DEFAULT(cfg, login_throttle_entries),
		};
		struct throttle_limits ulim = lim;

		/* Configured users: one entry each at most. */
		ulim.max_entries = cfg->nusers ? cfg->nusers : 1;
		b->fail_addr = throttle_new(&lim);
		b->fail_user = throttle_new(&ulim);
		b->fail_name = throttle_new(&lim);
		if (!b->fail_addr || !b->fail_user || !b->fail_name)
			return -ENOMEM;
	}
	return 0;
}

struct bouncer *bouncer_new(struct event_base *base,
			    const struct baton_config *cfg)
{
	struct bouncer *b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	b->base = base;
	b->cfg = cfg;
	b->reserve_fd = -1;
	health_init(&b->health);
	b->sweep = event_new(base, -1, EV_PERSIST, bouncer_sweep_cb, b);
	b->by_key = strmap_new();
	b->chans = chanstore_new();
	b->tls = tls_contexts_new(cfg);
	if (!b->sweep || !b->by_key || !b->chans || !b->tls || reglist_init(&b->sessions) < 0 ||
	    reglist_init(&b->pending) < 0 || reglist_init(&b->closing) < 0) {
		if (b->sweep)
			event_free(b->sweep);
		strmap_free(b->by_key);
		chanstore_free(b->chans);
		tls_contexts_free(b->tls);
		reglist_clear(&b->sessions);
		reglist_clear(&b->pending);
		reglist_clear(&b->closing);
		free(b);
		return NULL;
	}
	if (bouncer_gov_init(b) < 0 || bouncer_limits_init(b) < 0) {
		bouncer_free(b);
		return NULL;
	}
	/* Read resolv.conf and the hosts file now, not on the loop. */
	for (size_t i = 0; cfg && i < cfg->nnetworks && !b->resolver; i++) {
		struct in6_addr a6;

		if (cfg->networks[i].host &&
		    inet_pton(AF_INET, cfg->networks[i].host, &a6) != 1 &&
		    inet_pton(AF_INET6, cfg->networks[i].host, &a6) != 1 &&
		    !(b->resolver = resolver_new(base))) {
			bouncer_free(b);
			return NULL;
		}
	}
	struct timeval tv = { .tv_sec = 5 };
	event_add(b->sweep, &tv);
	b->health_tick = event_new(base, -1, EV_PERSIST, bouncer_health_tick_cb, b);
	if (!b->health_tick) {
		bouncer_free(b);
		return NULL;
	}
	struct timeval htv = { .tv_sec = HEALTH_TICK_MS / 1000,
			       .tv_usec = (HEALTH_TICK_MS % 1000) * 1000 };
	event_add(b->health_tick, &htv);
	return b;
}

struct history *bouncer_history(const struct bouncer *b)
{
	return b ? b->hist : NULL;
}

void bouncer_set_history(struct bouncer *b, struct history *h)
{
	b->hist = h;
	if (h)
		history_set_bouncer(h, b);
	/* a store open after the start: CAP NEW to the clients (client.h) */
	client_store_caps_refresh(b);
}

struct history_retry *bouncer_history_retry(const struct bouncer *b)
{
	return b ? b->hist_retry : NULL;
}

void bouncer_set_history_retry(struct bouncer *b, struct history_retry *r)
{
	b->hist_retry = r;
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
	free(b->listen_tls);
	for (size_t i = 0; b->listen_names && i < b->nlisten; i++)
		free(b->listen_names[i]);
	free(b->listen_names);
	b->listen_evs = NULL;
	b->listen_fds = NULL;
	b->listen_tls = NULL;
	b->listen_names = NULL;
	b->nlisten = 0;
}

size_t bouncer_listeners(const struct bouncer *b, const int **fds,
			 const char *const **names)
{
	*fds = b->listen_fds;
	*names = (const char *const *)b->listen_names;
	return b->listen_names ? b->nlisten : 0;
}

static void bouncer_gov_free(struct bouncer *b)
{
	for (size_t i = 0; i < b->ngovs; i++) {
		if (b->govs[i].ev)
			event_free(b->govs[i].ev);
		governor_free(b->govs[i].g);
	}
	free(b->govs);
	b->govs = NULL;
	b->ngovs = 0;
}

void bouncer_quiesce(struct bouncer *b)
{
	if (!b)
		return;
	for (size_t i = 0; i < b->sessions.n; i++)
		upstream_lookup_cancel(b->sessions.v[i], false);
	resolver_drain(b->resolver);
}

void bouncer_free(struct bouncer *b)
{
	if (!b)
		return;
	peer_free(b->peer);
	for (size_t i = 0; i < b->sessions.n; i++)
		session_free(b->sessions.v[i]);
	/* Sessions a migration moved out: after a full migration this process
	 * is about to exit, and freeing 5,000 sessions would only delay it
	 * (the supervisor's total_ms runs until this exit). Their sockets are
	 * closed already; the memory goes with the process. Builds that look
	 * for leaks (ASan/LSan: build-asan/) and unoptimized debug builds free
	 * them, so a leak checker sees every allocation returned. */
#if defined(__SANITIZE_ADDRESS__) || !defined(__OPTIMIZE__)
	while (b->nreleased > 0)
		session_free(b->released[--b->nreleased]);
#endif
	free(b->released);
	if (b->reap_ev)
		event_free(b->reap_ev);
	reglist_clear(&b->sessions);
	history_retry_free(b->hist_retry);
	history_close(b->hist); /* after the sessions: their lines are queued */
	b->hist = NULL;
	bouncer_gov_free(b); /* after the sessions: they leave its queue */
	strmap_free(b->by_key);
	chanstore_free(b->chans); /* after the sessions: they hold its lists */
	/* client_free() takes each out of the list (and its counters). */
	while (b->pending.n)
		client_free(b->pending.v[b->pending.n - 1]);
	reglist_clear(&b->pending);
	for (size_t i = 0; i < b->closing.n; i++)
		client_closing_abandon(b->closing.v[i]);
	reglist_clear(&b->closing);
	bouncer_close_listeners(b);
	if (b->sweep)
		event_free(b->sweep);
	if (b->health_tick)
		event_free(b->health_tick);
	if (b->accept_resume)
		event_free(b->accept_resume);
	if (b->reserve_fd >= 0)
		close(b->reserve_fd);
	authpool_free(b->auth); /* no result is delivered after this */
	strmap_free(b->auth_by_id);
	reglist_clear(&b->login_waiting); /* empty: every pending client is gone */
	if (b->login_retry)
		event_free(b->login_retry);
	strmap_free(b->by_addr); /* empty: every pending client is gone */
	throttle_free(b->fail_addr);
	throttle_free(b->fail_user);
	throttle_free(b->fail_name);
	tls_contexts_free(b->tls);
	/* Last: it runs the loop once for evdns's cancellations (resolver.h),
	 * when no other event of ours is left. */
	resolver_free(b->resolver);
	config_free(b->owned_cfg);
	free(b);
}

void bouncer_start_configured(struct bouncer *b)
{
	int64_t now = clock_mono_ms();
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

struct resolver *bouncer_resolver(struct bouncer *b)
{
	if (!b->resolver)
		b->resolver = resolver_new(b->base);
	return b->resolver;
}

struct tls_contexts *bouncer_tls(const struct bouncer *b)
{
	return b->tls;
}

size_t bouncer_handshakes(const struct bouncer *b)
{
	size_t n = 0;

	for (size_t i = 0; i < b->pending.n; i++) {
		const struct client *cl = b->pending.v[i];

		n += cl->conn != NULL && conn_in_handshake(cl->conn);
	}
	for (size_t i = 0; i < b->sessions.n; i++) {
		const struct session *s = b->sessions.v[i];

		n += s->up != NULL && s->up->conn != NULL &&
		     conn_in_handshake(s->up->conn);
	}
	return n;
}

static void bouncer_listen_events(struct bouncer *b, bool on)
{
	for (size_t i = 0; i < b->nlisten; i++) {
		if (!b->listen_evs[i])
			continue;
		if (on)
			event_add(b->listen_evs[i], NULL);
		else
			event_del(b->listen_evs[i]);
	}
}

static void bouncer_accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct bouncer *b = arg;

	b->accept_paused = false;
	if (b->reserve_fd < 0)
		b->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (b->accepting)
		bouncer_listen_events(b, true);
}

/* accept() failed for lack of fds (err). Retrying at once would spin: the
 * waiting connection keeps the listener readable. So: give the reserve fd
 * back, accept one waiting connection, tell it we are full, close it, take
 * the reserve again; repeat while connections wait (at most
 * ACCEPT_SHED_MAX), so clients learn at once instead of timing out in the
 * backlog. Then pause accepting for ACCEPT_PAUSE_MS. One log line per
 * REFUSE_LOG_MS. */
static void bouncer_accept_exhausted(struct bouncer *b, int lfd, bool tls,
				     int err)
{
	static const char full[] = "ERROR :Closing link: server full, try again later\r\n";
	int64_t now = clock_mono_ms();

	for (int i = 0; i < ACCEPT_SHED_MAX && b->reserve_fd >= 0; i++) {
		close(b->reserve_fd);
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0) {
			if (!tls)
				(void)!send(fd, full, sizeof(full) - 1,
					    MSG_DONTWAIT | MSG_NOSIGNAL);
			close(fd);
			b->emfile_shed++;
		}
		b->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			break;
	}
	b->emfile_pauses++;
	if (now - b->emfile_logged_ms >= REFUSE_LOG_MS || b->emfile_logged_ms == 0) {
		log_warn("bouncer", "accept: %s: out of file descriptors (%lu pauses of %d ms, %lu waiting connections refused since the last such line)%s",
			 strerror(err), b->emfile_pauses, ACCEPT_PAUSE_MS,
			 b->emfile_shed,
			 b->reserve_fd < 0 ? "; no reserve fd" : "");
		b->emfile_logged_ms = now;
		b->emfile_pauses = b->emfile_shed = 0;
	}
	struct timeval tv = { 0, ACCEPT_PAUSE_MS * 1000 };
	b->accept_paused = true;
	bouncer_listen_events(b, false);
	evtimer_add(b->accept_resume, &tv);
}

static void bouncer_accept_cb(evutil_socket_t lfd, short what, void *arg)
{
	struct bouncer *b = arg;
	const struct baton_config *cfg = b->cfg;
	bool tls = false;

	for (size_t i = 0; i < b->nlisten; i++)
		if (b->listen_fds[i] == lfd)
			tls = b->listen_tls[i];

	for (int i = 0; i < 64 && b->accepting && !b->accept_paused; i++) {
		struct sockaddr_storage ss;
		socklen_t sslen = sizeof(ss);
		char addr[BOUNCER_ADDR_KEY_LEN];
		const char *why;
		SSL_CTX *ctx = NULL;
		int fd = accept4(lfd, (struct sockaddr *)&ss, &sslen,
				 SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			int err = errno;

			if (err == EMFILE || err == ENFILE || err == ENOBUFS ||
			    err == ENOMEM)
				bouncer_accept_exhausted(b, lfd, tls, err);
			else if (err != EAGAIN && err != EWOULDBLOCK && err != EINTR &&
				 err != ECONNABORTED)
				log_warn("bouncer", "accept: %s", strerror(err));
			return;
		}
		bouncer_addr_key((struct sockaddr *)&ss, sslen, addr);
		why = bouncer_admit(b, tls, addr);
		if (why) {
			bouncer_refuse(b, fd, tls, addr, why);
			continue;
		}
		if (tls) {
			ctx = tls_contexts_server(b->tls);
			if (ctx == NULL) {
				/* No usable certificate (logged): refuse
				 * rather than speak plaintext on a TLS port. */
				close(fd);
				continue;
			}
		}
		struct client *cl = client_new(b, fd); /* takes fd */
		if (!cl)
			continue;
		snprintf(cl->addr, sizeof(cl->addr), "%s", addr);
		if (tls && cfg && cfg->tls_handshake_timeout_s > 0)
			conn_set_handshake_timeout(cl->conn, cfg->tls_handshake_timeout_s * 1000);
		if (tls && conn_start_tls(cl->conn, ctx, true, NULL, NULL) < 0) {
			log_warn("bouncer", "ircs: cannot start a TLS handshake: out of memory");
			client_free(cl);
			continue;
		}
		/* Registered before anything is counted on it: every path that
		 * frees it gives back what it holds (client_free()). */
		if (bouncer_add_pending(b, cl) < 0) {
			client_free(cl);
			continue;
		}
		if (tls)
			bouncer_tls_handshake_begin(b, cl);
		cl->item.state = ITEM_LIVE;
		conn_arm(cl->conn);
	}
}

void bouncer_set_listeners(struct bouncer *b, int *fds,
			   const char *const *names, size_t n)
{
	bool was = b->accepting;

	bouncer_accept(b, false);
	bouncer_close_listeners(b);
	b->listen_fds = calloc(n ? n : 1, sizeof(int));
	b->listen_evs = calloc(n ? n : 1, sizeof(struct event *));
	b->listen_tls = calloc(n ? n : 1, sizeof(bool));
	b->listen_names = calloc(n ? n : 1, sizeof(char *));
	for (size_t i = 0; b->listen_names && i < n; i++)
		if (!(b->listen_names[i] = util_strdup(names && names[i] ? names[i] : ""))) {
			while (i > 0)
				free(b->listen_names[--i]);
			free(b->listen_names);
			b->listen_names = NULL;
			break;
		}
	if (!b->listen_fds || !b->listen_evs || !b->listen_tls || !b->listen_names) {
		for (size_t i = 0; i < n; i++)
			close(fds[i]);
		free(b->listen_fds);
		free(b->listen_evs);
		free(b->listen_tls);
		for (size_t i = 0; b->listen_names && i < n; i++)
			free(b->listen_names[i]);
		free(b->listen_names);
		b->listen_fds = NULL;
		b->listen_evs = NULL;
		b->listen_tls = NULL;
		b->listen_names = NULL;
		return;
	}
	for (size_t i = 0; i < n; i++) {
		b->listen_fds[i] = fds[i]; /* transferred */
		b->listen_tls[i] = names != NULL && names[i] != NULL &&
				   strncmp(names[i], "ircs ", 5) == 0;
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
	if (on) {
		bouncer_governor_hold(b, false); /* this worker serves now */
		/* Serving on after a migration that committed everything and
		 * was then aborted (the target died before reporting): the
		 * sessions that moved out are freed now, not at an exit that
		 * will not come. */
		bouncer_released_reap(b);
	}
	/* While paused for lack of fds the resume timer turns them on. */
	bouncer_listen_events(b, on && !b->accept_paused);
}

size_t bouncer_sasl_failures(const struct bouncer *b,
			     const struct session **out, size_t max)
{
	size_t n = 0;
	for (size_t i = 0; i < b->sessions.n; i++) {
		const struct session *s = b->sessions.v[i];
		if (s->item.state == ITEM_ADOPTED || !sasl_failure(s))
			continue;
		if (n < max)
			out[n] = s;
		n++;
	}
	return n;
}

void bouncer_stats(const struct bouncer *b, struct bouncer_stats *out)
{
	memset(out, 0, sizeof(*out));
	for (size_t i = 0; i < b->sessions.n; i++) {
		const struct session *s = b->sessions.v[i];
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
	for (size_t i = 0; i < b->pending.n; i++) {
		const struct client *cl = b->pending.v[i];
		if (cl->item.state == ITEM_ADOPTED)
			continue;
		out->pending++;
		out->connections++;
	}
	/* Clients finishing after QUIT: no session's, but open sockets (and
	 * fds a new worker's RLIMIT_NOFILE check should count). */
	out->connections += (unsigned)b->closing.n;
	for (size_t i = 0; i < b->ngovs; i++)
		out->waiting += (unsigned)governor_queued(b->govs[i].g);
	out->tls_handshakes = (unsigned)b->tls_handshakes;
}

void bouncer_networks_stats(struct bouncer *b,
			    struct bouncer_network_stats *out, size_t n)
{
	int64_t now = clock_mono_ms();

	if (n > b->ngovs)
		n = b->ngovs;
	memset(out, 0, n * sizeof(*out));
	/* One pass over the sessions: govs[i] is the network's governor
	 * (config order at start, networks a reload added after them). */
	for (size_t k = 0; k < b->sessions.n; k++) {
		const struct session *s = b->sessions.v[k];
		size_t i;

		if (s->item.state == ITEM_ADOPTED)
			continue;
		for (i = 0; i < n; i++)
			if (strcmp(governor_network(b->govs[i].g), s->network) == 0)
				break;
		if (i >= n)
			continue;
		out[i].sessions++;
		if (s->up)
			out[i].connected++;
	}
	for (size_t i = 0; i < n; i++) {
		struct governor *g = b->govs[i].g;
		enum governor_wait w = governor_wait_reason(g, now);

		out[i].network = governor_network(g);
		out[i].waiting = (unsigned)governor_queued(g);
		out[i].capacity = governor_capacity(g);
		out[i].addresses = (unsigned)governor_naddrs(g);
		out[i].max_per_addr = governor_max_per_addr(g);
		out[i].throttled = (unsigned)governor_throttled(g, now);
		out[i].reason = governor_wait_name(w);
		if (!bouncer_wait_text_for(g, w, now, out[i].advice,
					   sizeof(out[i].advice)))
			out[i].advice[0] = '\0';
	}
}

/* ---- live reload ---- */

#define RELOAD_QUIT_REASON "Removed from the bouncer"

/* [network] keys a reload applies (from each session's next connection:
 * read when it connects). The others stay as the worker runs them until an
 * upgrade: the governor's limits and `bind` live in the governor, the TLS
 * verification settings in cached client contexts (tls_contexts.h), and
 * member lists are shared by the network's sessions. */
static const char *const reload_live_network_keys[] = {
	"host", "port", "tls", "tls_fingerprint", NULL,
};

void bouncer_reload_clear(struct bouncer_reload *r)
{
	util_strv_free(r->added, r->nadded);
	util_strv_free(r->removed, r->nremoved);
	util_strv_free(r->changed, r->nchanged);
	util_strv_free(r->later, r->nlater);
	memset(r, 0, sizeof(*r));
}

static int __attribute__((format(printf, 3, 4)))
reload_note(char ***v, size_t *n, const char *fmt, ...)
{
	char *text = NULL, **grown;
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = vasprintf(&text, fmt, ap);
	va_end(ap);
	if (r < 0)
		return -ENOMEM;
	grown = realloc(*v, (*n + 1) * sizeof(*grown));
	if (grown == NULL) {
		free(text);
		return -ENOMEM;
	}
	*v = grown;
	(*v)[(*n)++] = text;
	return 0;
}

static bool reload_has_channel(const struct config_session *cs, const char *name)
{
	for (size_t i = 0; cs != NULL && i < cs->nchannels; i++)
		if (strcasecmp(cs->channels[i], name) == 0)
			return true;
	return false;
}

/* "user U/N: channels +#a -#b" */
static int reload_note_channels(struct bouncer_reload *res,
				const struct config_session *from,
				const struct config_session *to)
{
	char text[1024];
	size_t off;
	int r;

	off = (size_t)snprintf(text, sizeof(text), "user %s/%s: channels",
			       to->user, to->network);
	for (size_t i = 0; i < to->nchannels && off < sizeof(text); i++)
		if (!reload_has_channel(from, to->channels[i]))
			off += (size_t)snprintf(text + off, sizeof(text) - off,
						" +%s", to->channels[i]);
	for (size_t i = 0; i < from->nchannels && off < sizeof(text); i++)
		if (!reload_has_channel(to, from->channels[i]))
			off += (size_t)snprintf(text + off, sizeof(text) - off,
						" -%s", from->channels[i]);
	r = reload_note(&res->changed, &res->nchanged, "%s", text);
	return r;
}

/* The session's configured channels went from `from` to `to`: JOIN what
 * was added and PART what was removed now when it is on the network;
 * otherwise forget the removed ones (a reconnect would join them again)
 * and let its next connection join the new ones (upstream.c joins the
 * configured channels). Channels joined by hand are in neither list. */
static void reload_channels(struct session *s, const struct config_session *from,
			    const struct config_session *to)
{
	bool live = session_upstream_ready(s);

	for (size_t i = 0; live && i < to->nchannels; i++)
		if (!reload_has_channel(from, to->channels[i]) &&
		    !session_find_channel(s, to->channels[i]) &&
		    strlen(to->channels[i]) <= IRC_MAX_MESSAGE - 5)
			conn_sendf(s->up->conn, "JOIN %s", to->channels[i]);
	for (size_t i = 0; i < from->nchannels; i++) {
		const char *name = from->channels[i];

		if (reload_has_channel(to, name) || !session_find_channel(s, name))
			continue;
		if (live && strlen(name) <= IRC_MAX_MESSAGE - 60)
			conn_sendf(s->up->conn,
				   "PART %s :removed from the bouncer's configuration",
				   name);
		else if (!live)
			session_remove_channel(s, name);
	}
}

/* A session removed from the config says goodbye and is freed: its
 * clients get a NOTICE and an ERROR, its network a QUIT (each written now
 * if the socket takes it: one attempt, as at a freeze). */
static void bouncer_session_goodbye(struct bouncer *b, struct session *s)
{
	log_info("bouncer", "%s: removed from the config: disconnecting", s->key);
	session_notice_all(s, "this session (%s) was removed from the bouncer's "
			   "configuration: disconnecting", s->key);
	for (size_t i = 0; i < s->nclients; i++) {
		struct conn *c = s->clients[i]->conn;

		conn_send(c, "ERROR :Closing link: session removed from the bouncer");
		conn_close(c, "session removed", true);
	}
	if (s->up != NULL && !s->up->dead) {
		conn_send(s->up->conn, "QUIT :" RELOAD_QUIT_REASON);
		conn_close(s->up->conn, "session removed", true);
	}
	bouncer_remove_session(b, s);
	session_free(s);
}

/* The governors with one for each network of next that has none yet, in
 * a new array (the timers' argument is the element: they are made anew;
 * each is kicked once installed). NULL and *n 0 when none is new. */
static int reload_governors(struct bouncer *b, const struct baton_config *next,
			    struct bouncer_gov **out, size_t *n)
{
	struct bouncer_gov *v;
	size_t k = b->ngovs, add = 0;
	int64_t now = clock_mono_ms();

	*out = NULL;
	*n = 0;
	for (size_t i = 0; i < next->nnetworks; i++)
		if (bouncer_governor(b, next->networks[i].name) == NULL)
			add++;
	if (add == 0)
		return 0;
	v = calloc(b->ngovs + add, sizeof(*v));
	if (v == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < b->ngovs; i++) {
		v[i] = b->govs[i];
		v[i].ev = evtimer_new(b->base, bouncer_gov_cb, &v[i]);
	}
	for (size_t i = 0; i < next->nnetworks; i++) {
		const struct config_network *cn = &next->networks[i];
		struct governor_limits lim = {
			.connects_per_minute = cn->connects_per_minute,
			.connect_burst = cn->connect_burst,
			.max_per_addr = cn->max_connections_per_ip,
		};

		if (bouncer_governor(b, cn->name) != NULL)
			continue;
		v[k].b = b;
		v[k].g = governor_new(cn->name, &lim, (const char *const *)cn->bind,
				      cn->nbind, now);
		v[k].ev = evtimer_new(b->base, bouncer_gov_cb, &v[k]);
		k++;
	}
	for (size_t i = 0; i < k; i++)
		if (v[i].ev == NULL || v[i].g == NULL) {
			for (size_t j = 0; j < k; j++) {
				if (v[j].ev)
					event_free(v[j].ev);
				if (j >= b->ngovs)
					governor_free(v[j].g);
			}
			free(v);
			return -ENOMEM;
		}
	*out = v;
	*n = k;
	return 0;
}

bool bouncer_session_key_live(const char *key)
{
	return strcmp(key, "channels") == 0;
}

/* The result's lines for every change (allocations only: nothing applied). */
static int reload_notes(const struct config_diff *d, const struct baton_config *from,
			const struct baton_config *to, struct bouncer_reload *res)
{
	int r = 0;

	for (size_t i = 0; i < d->n && r == 0; i++) {
		const struct config_change *c = &d->v[i];

		if (c->key == NULL) {
			r = c->kind == CONFIG_CHANGE_ADDED
				    ? reload_note(&res->added, &res->nadded, "%s", c->section)
				    : reload_note(&res->removed, &res->nremoved, "%s", c->section);
			continue;
		}
		switch (c->scope) {
		case CONFIG_SCOPE_NETWORK: {
			bool live = false;

			for (size_t k = 0; reload_live_network_keys[k] != NULL; k++)
				live |= strcmp(reload_live_network_keys[k], c->key) == 0;
			r = reload_note(&res->later, &res->nlater, "[%s] %s (%s)",
					c->section, c->key,
					live ? "at each session's next connection"
					     : "at the next upgrade");
			break;
		}
		case CONFIG_SCOPE_GLOBAL:
			/* user_networks is the supervisor's, read from the
			 * file at each user's edit (supervisor/user_edit.h) */
			if (strcmp(c->key, "user_networks") == 0)
				r = reload_note(&res->changed, &res->nchanged,
						"[%s] %s (from the next edit by a user)",
						c->section, c->key);
			else
				r = reload_note(&res->later, &res->nlater,
						"[%s] %s (at the next upgrade)",
						c->section, c->key);
			break;
		case CONFIG_SCOPE_USER:
			r = reload_note(&res->changed, &res->nchanged,
					"%s: %s (from the next login)", c->section, c->key);
			break;
		case CONFIG_SCOPE_SESSION:
			if (bouncer_session_key_live(c->key))
				r = reload_note_channels(res,
					config_find_session(from, c->user, c->network),
					config_find_session(to, c->user, c->network));
			else
				r = reload_note(&res->later, &res->nlater,
						"%s: %s (at its next connection)",
						c->section, c->key);
			break;
		}
	}
	return r;
}

int bouncer_reload(struct bouncer *b, struct baton_config *next,
		   struct bouncer_reload *res, char *why, size_t len)
{
	const struct baton_config *from = b->cfg;
	struct config_diff d = { 0 };
	struct bouncer_gov *govs = NULL;
	size_t ngovs = 0;
	int r;

	for (size_t i = 0; i < b->sessions.n; i++) {
		const struct session *s = b->sessions.v[i];

		if (s->item.state != ITEM_LIVE) {
			snprintf(why, len, "a migration is running: reload after it");
			r = -EBUSY;
			goto fail;
		}
	}
	if (from == NULL) {
		snprintf(why, len, "no configuration loaded");
		r = -EINVAL;
		goto fail;
	}
	/* Everything that can fail comes first: after this, nothing does. */
	if ((r = config_diff(from, next, &d)) < 0 ||
	    (r = config_diff_keep_running(next, from, reload_live_network_keys)) < 0 ||
	    (r = reload_notes(&d, from, next, res)) < 0 ||
	    (r = reload_governors(b, next, &govs, &ngovs)) < 0) {
		snprintf(why, len, "out of memory");
		goto fail;
	}
	if (govs != NULL) {
		for (size_t i = 0; i < b->ngovs; i++)
			event_free(b->govs[i].ev);
		free(b->govs);
		b->govs = govs;
		b->ngovs = ngovs;
		b->gov_dirty = true;
		for (size_t i = 0; i < b->ngovs; i++)
			bouncer_gov_schedule(&b->govs[i], 0);
	}
	b->cfg = next;
	for (size_t i = 0; i < d.n; i++) {
		const struct config_change *c = &d.v[i];
		struct session *s;

		if (c->scope != CONFIG_SCOPE_SESSION ||
		    !(s = bouncer_find_session(b, c->user, c->network)))
			continue;
		if (c->kind == CONFIG_CHANGE_REMOVED)
			bouncer_session_goodbye(b, s);
		else if (c->kind == CONFIG_CHANGE_CHANGED && c->key != NULL &&
			 strcmp(c->key, "channels") == 0)
			reload_channels(s, config_find_session(from, c->user, c->network),
					config_find_session(next, c->user, c->network));
	}
	bouncer_networks_reloaded(from, next); /* -notify clients */
	bouncer_start_configured(b); /* the new sessions */
	config_diff_clear(&d);
	config_free(b->owned_cfg); /* `from`, when an earlier reload made it */
	b->owned_cfg = next;
	log_info("bouncer", "reloaded %s: %zu added, %zu removed, %zu changed, %zu later",
		 next->path, res->nadded, res->nremoved, res->nchanged, res->nlater);
	return 0;
fail:
	config_diff_clear(&d);
	bouncer_reload_clear(res);
	config_free(next);
	return r;
}

/* ---- migration: source side ---- */

size_t bouncer_items(struct bouncer *b, struct bouncer_item ***items)
{
	size_t n = 0;
	*items = calloc(b->pending.n + b->sessions.n + 1, sizeof(**items));
	if (!*items)
		return 0;
	for (size_t i = 0; i < b->pending.n; i++) {
		struct client *cl = b->pending.v[i];
		/* A dead pending client (failed auth, timed out, peer gone)
		 * stays here, live: its queued close callback frees it from
		 * the loop. Freezing it would cancel that callback, and the
		 * target would adopt it as live and let it try again. */
		if (cl->item.state != ITEM_ADOPTED && !conn_is_dead(cl->conn))
			(*items)[n++] = &cl->item;
	}
	for (size_t i = 0; i < b->sessions.n; i++) {
		struct session *s = b->sessions.v[i];
		if (s->item.state != ITEM_ADOPTED)
			(*items)[n++] = &s->item;
	}
	return n;
}

void bouncer_item_freeze(struct bouncer_item *it)
{
	if (it->kind == ITEM_SESSION) {
		/* From the first frozen session until the migration ends, this
		 * worker grants no connects: the governors' state travels with
		 * the items and only one process may spend the buckets. */
		struct bouncer *b = it->session->b;

		bouncer_governor_hold(b, true);
		session_freeze(it->session, true);
		/* Clients that QUIT from it and are still finishing: their
		 * last delivery position must travel with the session. */
		for (size_t i = 0; i < b->closing.n; i++)
			client_closing_settle(b->closing.v[i], it->session);
	} else {
		struct client *cl = it->client;

		/* A password check in flight cannot travel: drop it (its
		 * result will find no client) and check again wherever the
		 * client is armed next (client_pending_resume()). */
		bouncer_auth_cancel(cl->b, cl);
		/* What its check counted in the throttles goes too (a charge
		 * refunded: the check runs again, and an aborted migration
		 * must not leave the right password refused). */
		bouncer_login_drop(cl->b, cl, true);
		conn_freeze(cl->conn, true);
		it->state = ITEM_FROZEN;
	}
}

/* The governors' buckets as of now (state.h), for an item to carry. */
static struct governor_snapshot *bouncer_governor_snapshot(struct bouncer *b)
{
	struct governor_snapshot *g = calloc(1, sizeof(*g));
	int64_t now = clock_mono_ms();
	size_t n = 0;

	if (!g)
		return NULL;
	for (size_t i = 0; i < b->ngovs; i++)
		n += governor_naddrs(b->govs[i].g);
	if (!(g->v = calloc(n + 1, sizeof(*g->v)))) {
		free(g);
		return NULL;
	}
	for (size_t i = 0; i < b->ngovs; i++) {
		struct governor *gv = b->govs[i].g;

		for (size_t j = 0; j < governor_naddrs(gv); j++) {
			struct governor_bucket_state st;
			struct governor_snapshot_bucket *out = &g->v[g->n++];

			governor_bucket_get(gv, j, now, &st);
			out->network = strdup(governor_network(gv));
			out->addr = strdup(governor_addr(gv, j));
			out->level = st.level;
			out->as_of_ms = st.as_of_ms;
			out->has_level = out->has_as_of_ms = true;
			out->throttled_until_ms = st.throttled_until_ms;
			out->strikes = st.strikes;
			if (!out->network || !out->addr) {
				state_governor_free(g);
				return NULL;
			}
		}
	}
	return g;
}

/* Merge a migrated governor snapshot into b's governors (buckets of
 * networks or addresses this worker does not have are ignored). */
static void bouncer_governor_merge(struct bouncer *b, const struct governor_snapshot *g)
{
	int64_t now = clock_mono_ms();

	for (size_t i = 0; i < g->n; i++) {
		const struct governor_snapshot_bucket *pb = &g->v[i];
		struct governor *gv = bouncer_governor(b, pb->network);
		int slot = gv ? governor_find_addr(gv, pb->addr) : -1;
		if (slot < 0)
			continue;
		struct governor_bucket_state st = {
			.level = pb->has_level ? pb->level : 0,
			.as_of_ms = pb->has_as_of_ms ? pb->as_of_ms : now,
			.throttled_until_ms = pb->throttled_until_ms,
			.strikes = pb->strikes,
		};
		governor_bucket_merge(gv, (size_t)slot, now, &st);
	}
	bouncer_governor_changed(b);
}

/* One serialization of it (state.h): with the governors' snapshot when
 * `governor` and one is due. */
static int bouncer_serialize(struct bouncer_item *it, unsigned schema,
			     bool governor, uint8_t **buf, size_t *len,
			     struct state_result *res)
{
	struct governor_snapshot *g = NULL;
	struct state_ctx ctx = { .schema = schema };
	struct state_cold_line *cold = NULL;
	size_t ncold = 0;
	int rc;

	if (it->kind == ITEM_SESSION && schema >= STATE_SCHEMA_STORE_POS &&
	    bouncer_history(it->session->b))
		ctx.store_durable = store_durable_seq(
			history_store(bouncer_history(it->session->b)));
	/* an older receiver: what a schema-3 adoption left in the store
	 * travels inline (history.h) */
	if (it->kind == ITEM_SESSION && schema < STATE_SCHEMA_STORE_POS &&
	    backlog_cold_after(it->session->backlog, 0, NULL)) {
		rc = history_cold_lines(bouncer_history(it->session->b),
					it->session, &cold, &ncold);
		if (rc == -ENOMEM)
			return rc;
		ctx.cold = cold;
		ctx.ncold = ncold;
	}

	if (governor && it->kind == ITEM_SESSION &&
	    bouncer_governor_snapshot_due(it->session->b)) {
		if (!(g = bouncer_governor_snapshot(it->session->b))) {
			history_cold_lines_free(cold, ncold);
			return -ENOMEM;
		}
		ctx.governor = g;
	}
	rc = state_serialize(it, &ctx, buf, len, res);
	state_governor_free(g);
	history_cold_lines_free(cold, ncold);
	return rc;
}

int bouncer_item_serialize(struct bouncer_item *it, uint8_t **buf, size_t *len,
			   const int **fds, size_t *nfds)
{
	struct state_result res;
	int rc = bouncer_serialize(it, STATE_SCHEMA_INLINE, true, buf, len, &res);
	if (rc < 0)
		return rc;
	if (res.governor_sent)
		bouncer_governor_snapshot_sent(it->session->b);
	free(res.lists);
	*fds = it->fds;
	*nfds = it->nfds;
	return 0;
}

void bouncer_pack_chunk_begin(struct bouncer_pack *pk)
{
	static uint64_t serial; /* one per chunk of this process */

	pk->serial = ++serial;
	pk->nlists = 0;
}

int bouncer_pack_add_lists(struct bouncer_pack *pk, void *const *lists, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		struct shared_channel *sh = lists[i];

		if (sh->mark == pk->serial)
			continue; /* in this chunk already */
		if (pk->nlists == pk->caplists) {
			size_t cap = pk->caplists ? 2 * pk->caplists : 16;
			void **nv = realloc(pk->lists, cap * sizeof(*nv));

			if (!nv)
				return -ENOMEM;
			pk->lists = nv;
			pk->caplists = cap;
		}
		sh->mark = pk->serial;
		pk->lists[pk->nlists++] = sh;
	}
	return 0;
}

int bouncer_pack_lists(struct bouncer_pack *pk, size_t max, uint8_t ***bufs,
		       size_t **lens, size_t *n)
{
	return state_serialize_lists((struct shared_channel *const *)pk->lists,
				     pk->nlists, max, bufs, lens, n);
}

void bouncer_pack_clear(struct bouncer_pack *pk)
{
	free(pk->lists);
	pk->lists = NULL;
	pk->nlists = pk->caplists = 0;
}

int bouncer_item_serialize_within(struct bouncer_item *it, size_t max,
				  uint8_t **buf, size_t *len, const int **fds,
				  size_t *nfds, struct bouncer_pack *pk,
				  void ***lists, size_t *nlists)
{
	struct bouncer_shrunk *shrunk = &pk->shrunk;
	struct session_shrink acc = { 0 };
	struct state_result res = { 0 };
	bool governor = true;
	int rc;

	*lists = NULL;
	*nlists = 0;
	for (;;) {
		free(res.lists);
		res.lists = NULL;
		rc = bouncer_serialize(it, pk->schema, governor, buf, len, &res);
		if (rc < 0 || *len <= max)
			break;
		free(*buf);
		*buf = NULL;
		if (governor && res.governor_sent) {
			/* The snapshot waits for an item with room for it. */
			governor = false;
			continue;
		}
		uint32_t lines = acc.lines;

		if (it->kind != ITEM_SESSION ||
		    session_shrink(it->session, *len - max, &acc) < 0) {
			rc = -EMSGSIZE;
			break;
		}
		if (acc.lines != lines) {
			/* The users hear of it now, whatever the notices' rate
			 * limit: the notice is in the clients' output, which
			 * the next round packs. */
			it->session->drop_notice_ms = 0;
			session_note_backlog_drops(it->session);
		}
	}
	if (it->kind == ITEM_SESSION && (acc.lines || acc.clients || acc.channels)) {
		shrunk->sessions++;
		shrunk->lines += acc.lines;
		shrunk->clients += acc.clients;
		shrunk->member_lists += acc.channels;
		log_warn("migrate", "%s: state shrunk to fit one migration message: %u backlog lines, %u clients, %u member lists dropped",
			 it->session->key, acc.lines, acc.clients, acc.channels);
	}
	if (rc < 0) {
		free(*buf);
		*buf = NULL;
		free(res.lists);
		return rc;
	}
	if (res.governor_sent)
		bouncer_governor_snapshot_sent(it->session->b);
	pk->handshakes_left += res.handshakes_left;
	pk->lines_stored += res.lines_stored;
	*lists = (void **)res.lists;
	*nlists = res.nlists;
	*fds = it->fds;
	*nfds = it->nfds;
	return 0;
}

void bouncer_item_thaw(struct bouncer_item *it)
{
	if (it->kind == ITEM_SESSION) {
		/* Aborted: we keep the sessions, the next migration must carry
		 * the governors' state again. */
		bouncer_governor_hold(it->session->b, false);
		bouncer_governor_changed(it->session->b);
		session_arm(it->session);
	} else {
		it->state = ITEM_LIVE;
		/* A verified client's lines wait for its session. */
		if (it->client->fwd_user != NULL)
			conn_hold_lines(it->client->conn, true);
		conn_arm(it->client->conn);
		client_pending_resume(it->client);
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
		bouncer_forget_pending(b, it->client);
		client_free(it->client);
	}
}

void bouncer_item_release(struct bouncer_item *it)
{
	struct bouncer *b = item_bouncer(it);

	/* The target holds its own copies of the sockets: closing ours sends
	 * nothing to the peers (no shutdown()). */
	if (it->kind == ITEM_SESSION) {
		/* Freeing a session's memory (backlog, channels, buffers) is
		 * most of the source's time in a migration: keep it for after
		 * (bouncer_released_reap()); the sockets close now. */
		if (b->nreleased == b->capreleased) {
			size_t cap = b->capreleased ? 2 * b->capreleased : 256;
			struct session **grown =
				realloc(b->released, cap * sizeof(*grown));

			if (grown == NULL) { /* free it now instead */
				bouncer_item_destroy(it);
				return;
			}
			b->released = grown;
			b->capreleased = cap;
		}
		bouncer_remove_session(b, it->session);
		session_close_sockets(it->session);
		b->released[b->nreleased++] = it->session;
		return;
	}
	bouncer_item_destroy(it);
}

/* Sessions freed per loop turn by the reaper: a few ms each, so relaying
 * goes on in between. */
#define REAP_BATCH 256

static void bouncer_reap_cb(evutil_socket_t fd, short what, void *arg)
{
	struct bouncer *b = arg;
	size_t n = b->nreleased < REAP_BATCH ? b->nreleased : REAP_BATCH;

	for (size_t i = 0; i < n; i++)
		session_free(b->released[--b->nreleased]);
	if (b->nreleased > 0) {
		struct timeval now = { 0, 0 };

		if (b->reap_ev == NULL || event_add(b->reap_ev, &now) < 0) {
			/* No event (out of memory): the rest now, in one go. */
			while (b->nreleased > 0)
				session_free(b->released[--b->nreleased]);
		} else {
			return;
		}
	}
	free(b->released);
	b->released = NULL;
	b->capreleased = 0;
}

void bouncer_released_reap(struct bouncer *b)
{
	struct timeval now = { 0, 0 };

	if (b->nreleased == 0)
		return;
	if (b->reap_ev == NULL)
		b->reap_ev = evtimer_new(b->base, bouncer_reap_cb, b);
	if (b->reap_ev == NULL || event_add(b->reap_ev, &now) < 0) {
		bouncer_reap_cb(-1, 0, b); /* at least one batch now */
		return;
	}
}

size_t bouncer_released_count(const struct bouncer *b)
{
	return b->nreleased;
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

const char *bouncer_item_user(const struct bouncer_item *it)
{
	return it->kind == ITEM_SESSION ? it->session->user : NULL;
}

const char *bouncer_item_network(const struct bouncer_item *it)
{
	return it->kind == ITEM_SESSION ? it->session->network : NULL;
}

/* ---- the canary peer ---- */

bool bouncer_has_peer(const struct bouncer *b)
{
	return peer_alive(b->peer);
}

/* A forwarded client arrived from the peer (peer.c): adopt and route it. */
static int bouncer_peer_arrived(void *arg, const uint8_t *buf, size_t len,
				int *fds, size_t nfds, char *err, size_t errlen)
{
	struct bouncer *b = arg;
	struct bouncer_item *it = NULL;
	int rc = bouncer_item_adopt(b, buf, len, fds, nfds, &it, err, errlen);

	if (rc < 0)
		return rc;
	if (it == NULL) {
		snprintf(err, errlen, "not a forwarded client");
		return -EPROTO;
	}
	if (it->kind != ITEM_PENDING || it->client->fwd_user == NULL) {
		snprintf(err, errlen, "not a forwarded client");
		bouncer_item_discard(it);
		return -EPROTO;
	}
	log_info("peer", "client for %s/%s arrived from the other worker (hop %u)",
		 it->client->fwd_user, it->client->fwd_network,
		 it->client->fwd_hops);
	bouncer_item_arm(it); /* routes it: client_pending_resume() */
	return 0;
}

void bouncer_set_peer(struct bouncer *b, int fd)
{
	peer_free(b->peer);
	b->peer = NULL;
	if (fd < 0)
		return;
	b->peer = peer_new(b->base, fd, bouncer_peer_arrived, b);
	if (b->peer == NULL)
		log_error("peer", "cannot set up the link to the other worker");
	else
		log_info("peer", "linked to the other worker of a canary");
}

void bouncer_peer_drain(struct bouncer *b)
{
	if (b->peer != NULL)
		peer_drain(b->peer);
}

void bouncer_forward_client(struct bouncer *b, struct client *cl)
{
	struct bouncer_item *it = &cl->item;
	uint8_t *buf = NULL;
	size_t len = 0;
	int rc;

	cl->fwd_hops++;
	bouncer_item_freeze(it);
	struct state_ctx ctx = { .schema = STATE_SCHEMA_INLINE };
	struct state_result res;
	rc = state_serialize(it, &ctx, &buf, &len, &res);
	if (rc == 0) {
		free(res.lists);
		rc = peer_send(b->peer, buf, len, it->fds, it->nfds);
	}
	free(buf);
	if (rc == 0) {
		log_info("peer", "client for %s/%s forwarded to the other worker",
			 cl->fwd_user, cl->fwd_network);
		bouncer_item_release(it); /* the peer holds its own socket */
		return;
	}
	log_warn("peer", "cannot forward a client for %s/%s: %s", cl->fwd_user,
		 cl->fwd_network, strerror(-rc));
	/* Not thawed through client_pending_resume(): it would try again. */
	it->state = ITEM_LIVE;
	conn_arm(cl->conn);
	conn_sendf(cl->conn, ":%s NOTICE %s :Session %s/%s is not available right now, please reconnect",
		   BATON_SERVER_NAME, cl->nick ? cl->nick : "*", cl->fwd_user,
		   cl->fwd_network);
	conn_sendf(cl->conn, "ERROR :Closing link: session not available");
	conn_close(cl->conn, "session not available", true);
}

void bouncer_migration_ended(struct bouncer *b, bool partial)
{
	struct client **v;
	size_t n = 0;

	if (partial)
		bouncer_governor_hold(b, false);
	if (b->pending.n == 0)
		return;
	/* Routing changes the pending list (attach, forward): a copy. */
	v = malloc(b->pending.n * sizeof(*v));
	if (v == NULL) {
		/* They wait until the next migration ends (or time out). */
		log_error("bouncer", "out of memory: %zu pending logins not routed yet",
			  b->pending.n);
		return;
	}
	for (size_t i = 0; i < b->pending.n; i++) {
		struct client *cl = b->pending.v[i];

		if (cl->parked && cl->item.state == ITEM_LIVE &&
		    !conn_is_dead(cl->conn))
			v[n++] = cl;
	}
	for (size_t i = 0; i < n; i++)
		client_route(v[i]);
	free(v);
}

bool bouncer_item_in_handshake(const struct bouncer_item *it)
{
	return it->kind == ITEM_PENDING && it->client->conn != NULL &&
	       conn_in_handshake(it->client->conn);
}

/* ---- migration: target side ---- */

int bouncer_item_adopt(struct bouncer *b, const uint8_t *buf, size_t len,
		       int *fds, size_t nfds, struct bouncer_item **out,
		       char *err, size_t errlen)
{
	struct bouncer_item *it = NULL;
	struct governor_snapshot *gov = NULL;
	int rc = state_adopt(b, buf, len, fds, nfds, &it, &gov, err, errlen);

	*out = NULL;
	if (rc < 0)
		return rc; /* state_adopt closed the fds */
	if (it == NULL)
		return 0; /* member lists: they wait for the chunk's sessions */
	if (gov) {
		bouncer_governor_merge(b, gov);
		state_governor_free(gov);
	}
	if (it->kind == ITEM_SESSION) {
		struct session *s = it->session;
		/* The target grants nothing until it serves (bouncer_accept()):
		 * the source may still spend the buckets until then. */
		bouncer_governor_hold(b, true);
		if (bouncer_find_session(b, s->user, s->network)) {
			snprintf(err, errlen, "session %s already exists here", s->key);
			session_free(s);
			chanstore_chunk_end(b->chans, false); /* the chunk aborts */
			return -EEXIST;
		}
		if (bouncer_add_session(b, s) < 0) {
			snprintf(err, errlen, "out of memory");
			session_free(s);
			chanstore_chunk_end(b->chans, false);
			return -ENOMEM;
		}
	} else {
		/* Counted like any pending client (it is one connection more
		 * from its address), never refused: it is connected already. */
		if (bouncer_add_pending(b, it->client) < 0) {
			snprintf(err, errlen, "out of memory");
			client_free(it->client);
			return -ENOMEM;
		}
	}
	it->state = ITEM_ADOPTED;
	*out = it;
	return 0;
}

void bouncer_chunk_end(struct bouncer *b, bool committed)
{
	chanstore_chunk_end(b->chans, committed);
}

void bouncer_item_arm(struct bouncer_item *it)
{
	if (it->kind == ITEM_SESSION) {
		/* its chunk committed (a no-op after the first of them) */
		chanstore_chunk_end(it->session->b->chans, true);
		session_arm(it->session);
		/* does the network still answer us? (health.h) */
		if (it->session->up)
			upstream_adopt_ping(it->session->up);
		FAULT_ADOPTED(); /* fault builds only (fault.h) */
	} else {
		it->state = ITEM_LIVE;
		/* A verified client's lines wait for its session. */
		if (it->client->fwd_user != NULL)
			conn_hold_lines(it->client->conn, true);
		conn_arm(it->client->conn);
		client_pending_resume(it->client);
	}
}

void bouncer_item_discard(struct bouncer_item *it)
{
	if (it->kind == ITEM_SESSION) /* its chunk aborted */
		chanstore_chunk_end(it->session->b->chans, false);
	bouncer_item_destroy(it);
}
