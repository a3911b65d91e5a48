/* sessiond/upstream.c: the connection of a session to its IRC network:
 * connect, registration (CAP 302, NICK, USER), keepalive and lag, channel
 * state tracking, backlog of PRIVMSG/NOTICE, live relay to clients, and
 * reconnect with backoff. */
#include "sessiond/session.h"
#include "common/clock.h"
#include "sessiond/bouncer_networks.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/config.h"
#include "common/log.h"
#include "common/names.h"
#include "common/strmap.h"
#include "sessiond/chathistory.h"
#include "sessiond/checkpoint.h"
#include "sessiond/conn.h"
#include "sessiond/fault.h"
#include "sessiond/health.h"
#include "sessiond/irc.h"
#include "sessiond/resolver.h"
#include "sessiond/sasl.h"
#include "sessiond/tls_contexts.h"

#define CONNECT_TIMEOUT_MS 30000
/* A source address the network throttled gets no connects for this long
 * (doubling with every throttle reply until a connection registers from it
 * again, capped at max(reconnect_max, this)): connect throttles of real
 * networks count over about a minute. */
#define THROTTLE_BASE_MS 60000

/* Upstream caps we use, requested when offered. Whatever a client did not
 * ask for is taken out again per client (client_send_full(), relay_names(),
 * h_352, h_319, h_away, h_tagmsg): echo-message makes the network tell us which
 * messages it accepted (h_message); userhost-in-names and message-tags
 * (the network's tags, TAGMSG) are passed to the clients that asked for
 * them. */
static const char *const wanted_caps[] = { "server-time", "multi-prefix",
					   "away-notify", "echo-message",
					   "userhost-in-names", "message-tags",
					   "account-notify", "extended-join",
					   "chghost", "setname", "invite-notify",
					   /* baton's own use: a client's labeled
					    * command forwarded with a label of ours
					    * (upstream_label_add()); the network's
					    * batch and label tags never reach a
					    * client as they came */
					   "batch", "labeled-response" };

static void upstream_timer_cb(evutil_socket_t fd, short what, void *arg);

static int cfg_ping_interval_ms(const struct session *s)
{
	const struct baton_config *cfg = bouncer_config(s->b);
	return CONFIG_INT_OR_DEFAULT(cfg, ping_interval_s) * 1000;
}

static int cfg_ping_timeout_ms(const struct session *s)
{
	const struct baton_config *cfg = bouncer_config(s->b);
	return CONFIG_INT_OR_DEFAULT(cfg, ping_timeout_s) * 1000;
}

struct upstream *upstream_new(struct session *s, struct conn *c)
{
	struct upstream *u = calloc(1, sizeof(*u));
	if (!u)
		return NULL;
	u->s = s;
	u->conn = c;
	u->gov_slot = -1;
	u->hl.h = bouncer_health(s->b);
	u->hl.peer = HEALTH_PEER_NETWORK;
	u->timer = evtimer_new(bouncer_base(s->b), upstream_timer_cb, u);
	if (!u->timer) {
		free(u);
		return NULL;
	}
	if (c) {
		conn_set_arg(c, u);
		conn_set_health(c, &u->hl);
	}
	return u;
}

void upstream_free(struct upstream *u)
{
	if (!u)
		return;
	if (u->gov_slot >= 0) {
		/* The connection's slot is free: the governor may let the
		 * next session go (from the event loop, not from here). */
		struct governor *g = bouncer_governor(u->s->b, u->s->network);
		if (g) {
			governor_release(g, (size_t)u->gov_slot);
			bouncer_governor_kick(u->s->b, g);
		}
		u->gov_slot = -1;
	}
	conn_release(u->conn);
	if (u->timer)
		event_free(u->timer);
	util_strv_free(u->cap_offered, u->ncap_offered);
	sasl_free(u->sasl);
	free(u->nick_attempt);
	for (size_t i = 0; i < u->nechoes; i++)
		free(u->echoes[i].key);
	free(u->echoes);
	free(u->labels);
	pb_unknown_clear(&u->unknown);
	free(u);
}

static void upstream_schedule_timer(struct upstream *u)
{
	int64_t now = clock_mono_ms();
	int64_t due;

	if (u->phase == UP_CONNECTING)
		due = u->connected_at_ms + CONNECT_TIMEOUT_MS;
	else
		due = u->last_rx_ms + cfg_ping_timeout_ms(u->s);
	if (u->phase >= UP_WELCOMED && u->next_ping_ms && u->next_ping_ms < due)
		due = u->next_ping_ms;
	int64_t d = due - now;
	if (d < 0)
		d = 0;
	struct timeval tv = { .tv_sec = d / 1000, .tv_usec = (d % 1000) * 1000 };
	evtimer_add(u->timer, &tv);
}

void upstream_arm(struct upstream *u)
{
	if (!u->next_ping_ms)
		u->next_ping_ms = clock_mono_ms() + cfg_ping_interval_ms(u->s);
	conn_arm(u->conn);
	upstream_schedule_timer(u);
}

static void label_answer_all(struct upstream *u);

void upstream_freeze(struct upstream *u, bool flush)
{
	/* The labels do not travel (state.proto has no room for them): each
	 * awaiting client gets its ACK now, before its output is flushed;
	 * the network's answer, if it comes after the migration, is
	 * unlabeled. */
	label_answer_all(u);
	conn_freeze(u->conn, flush);
	event_del(u->timer);
}

static void upstream_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct upstream *u = arg;
	int64_t now = clock_mono_ms();
	char why[96];

	if (conn_is_dead(u->conn))
		return;
	if (u->phase == UP_CONNECTING) {
		if (now >= u->connected_at_ms + CONNECT_TIMEOUT_MS) {
			conn_close(u->conn, "connect timeout", false);
			return;
		}
	} else if (now >= u->last_rx_ms + cfg_ping_timeout_ms(u->s)) {
		snprintf(why, sizeof(why), "ping timeout (%d s without data)",
			 cfg_ping_timeout_ms(u->s) / 1000);
		conn_close(u->conn, why, false);
		return;
	}
	if (u->phase >= UP_WELCOMED && u->next_ping_ms && now >= u->next_ping_ms) {
		if (!u->ping_sent_ms) {
			u->ping_sent_ms = now;
			conn_sendf(u->conn, "PING :baton-%lld", (long long)now);
		}
		u->next_ping_ms = now + cfg_ping_interval_ms(u->s);
	}
	upstream_schedule_timer(u);
}

void upstream_adopt_ping(struct upstream *u)
{
	if (conn_is_dead(u->conn) || u->phase < UP_WELCOMED)
		return;
	conn_sendf(u->conn, "PING :baton-adopt-%u",
		   health_adopt_ping(&u->hl, clock_mono_ms()));
}

int upstream_send(struct session *s, const char *line)
{
	size_t tags;

	/* A network closes the connection on a line past its bound (ngircd:
	 * "Request too long"): the session and every channel would see us
	 * QUIT and JOIN for one message. */
	if (strlen(irc_message_part(line, &tags)) > IRC_MAX_MESSAGE || tags > IRC_MAX_TAGS)
		return -EMSGSIZE;
	if (s->up && !conn_is_dead(s->up->conn))
		conn_send(s->up->conn, line);
	return 0;
}

bool upstream_has_cap(const struct session *s, const char *name)
{
	for (size_t i = 0; i < s->ncaps; i++)
		if (strcmp(s->caps[i], name) == 0)
			return true;
	return false;
}

/* ---- labeled-response with the network ----
 * A client's labeled command goes to the network with a label of ours,
 * "bt<n>" (clients' labels may clash: they are each client's own); the
 * network's answer, one labeled line, an ACK or a labeled-response batch,
 * goes back to that client with its label. Who else gets the lines does
 * not change (session_reply_route(): a JOIN still reaches every client);
 * the ACK and the BATCH lines go to the asker alone. */

_Static_assert(sizeof(((struct upstream_label *)0)->label) == CLIENT_LABEL_MAX + 1,
	       "upstream_label.label holds a client's label");

bool upstream_can_label(const struct session *s)
{
	return s->up && !s->up->dead && upstream_has_cap(s, "labeled-response") &&
	       upstream_has_cap(s, "batch");
}

static void label_remove(struct upstream *u, size_t i)
{
	memmove(u->labels + i, u->labels + i + 1, (u->nlabels - i - 1) * sizeof(*u->labels));
	if (--u->nlabels == 0) {
		free(u->labels);
		u->labels = NULL;
	}
}

static void label_expire(struct upstream *u)
{
	int64_t now = clock_mono_ms();
	struct session *s = u->s;

	while (u->nlabels && now - u->labels[0].sent_ms > UPSTREAM_LABEL_TTL_MS) {
		/* never answered: a late answer goes unlabeled; one whose
		 * batch had begun: its asker gets the end (a client may keep
		 * a batch's lines until then) */
		if (u->labels[0].batch[0])
			for (size_t k = 0; k < s->nclients; k++)
				if (s->clients[k]->serial == u->labels[0].client_serial &&
				    !conn_is_dead(s->clients[k]->conn))
					conn_sendf(s->clients[k]->conn, ":%s BATCH -%s",
						   s->server_name ? s->server_name
								  : BATON_SERVER_NAME,
						   u->labels[0].batch);
		label_remove(u, 0);
	}
}

int upstream_label_add(struct session *s, uint64_t client_serial,
		       const char *label, char *tag, size_t n)
{
	struct upstream *u = s->up;
	size_t mine = 0;

	if (!upstream_can_label(s))
		return -ENOTSUP;
	if (strlen(label) >= sizeof(u->labels[0].label))
		return -ENOSPC;
	label_expire(u);
	for (size_t i = 0; i < u->nlabels; i++)
		mine += u->labels[i].client_serial == client_serial;
	if (u->nlabels >= UPSTREAM_MAX_LABELS || mine >= UPSTREAM_LABELS_PER_CLIENT)
		return -ENOSPC;
	struct upstream_label *grown = realloc(u->labels, (u->nlabels + 1) * sizeof(*grown));

	if (!grown)
		return -ENOMEM; /* util.h policy: forwarded unlabeled */
	u->labels = grown;
	struct upstream_label *l = &u->labels[u->nlabels++];

	memset(l, 0, sizeof(*l));
	l->client_serial = client_serial;
	l->id = ++u->next_label;
	l->sent_ms = clock_mono_ms();
	memcpy(l->label, label, strlen(label) + 1);
	snprintf(tag, n, "label=bt%" PRIu32, l->id);
	return 0;
}

void upstream_label_cancel(struct session *s, const char *tag)
{
	struct upstream *u = s->up;

	if (!u || !u->nlabels || strncmp(tag, "label=bt", 8) != 0)
		return;
	if (strtoul(tag + 8, NULL, 10) == u->labels[u->nlabels - 1].id)
		label_remove(u, u->nlabels - 1);
}

/* Every label awaiting an answer that will not come (the connection is
 * lost, or the session migrates: the labels stay here): an ACK to its
 * client if still attached (so that it waits no longer; the end of the
 * batch when the network's answer had begun), and forgotten. */
static void label_answer_all(struct upstream *u)
{
	struct session *s = u->s;

	for (size_t i = 0; i < u->nlabels; i++)
		for (size_t k = 0; k < s->nclients; k++)
			if (s->clients[k]->serial != u->labels[i].client_serial ||
			    conn_is_dead(s->clients[k]->conn))
				continue;
			else if (u->labels[i].batch[0]) /* its start was the answer */
				conn_sendf(s->clients[k]->conn, ":%s BATCH -%s",
					   s->server_name ? s->server_name : BATON_SERVER_NAME,
					   u->labels[i].batch);
			else
				conn_sendf(s->clients[k]->conn, "@label=%s :%s ACK",
					   u->labels[i].label,
					   s->server_name ? s->server_name : BATON_SERVER_NAME);
	free(u->labels);
	u->labels = NULL;
	u->nlabels = 0;
}

/* The entry of our label `v` ("bt<n>"), or of the network's batch `ref`. */
static ssize_t label_find(const struct upstream *u, const char *v, const char *ref)
{
	char *end;
	unsigned long id = 0;

	if (v) {
		if (strncmp(v, "bt", 2) != 0 || !isdigit((unsigned char)v[2]))
			return -1;
		errno = 0;
		id = strtoul(v + 2, &end, 10);
		if (*end || errno || id > UINT32_MAX)
			return -1;
	}
	for (size_t i = 0; i < u->nlabels; i++)
		if (v ? u->labels[i].id == id
		      : u->labels[i].batch[0] && strcmp(u->labels[i].batch, ref) == 0)
			return (ssize_t)i;
	return -1;
}

/* The network's tag section `tags` (no '@') without its label and batch
 * tags, into out[n]; their raw values into label[ln] / batch[bn] ("":
 * absent or longer than fits: then not ours). */
static void label_split_tags(const char *tags, char *out, size_t n, char *label,
			     size_t ln, char *batch, size_t bn)
{
	size_t o = 0;

	out[0] = label[0] = batch[0] = '\0';
	for (const char *t = tags; *t;) {
		size_t tl = strcspn(t, ";");
		char *dst = NULL;
		size_t dn = 0, kl = 0;

		if (tl >= 6 && strncmp(t, "label=", 6) == 0)
			dst = label, dn = ln, kl = 6;
		else if (tl >= 6 && strncmp(t, "batch=", 6) == 0)
			dst = batch, dn = bn, kl = 6;
		else if ((tl == 5 && strncmp(t, "label", 5) == 0) ||
			 (tl == 5 && strncmp(t, "batch", 5) == 0))
			dst = NULL, kl = 5; /* valueless: dropped */
		if (kl) {
			if (dst && tl - kl < dn) {
				memcpy(dst, t + kl, tl - kl);
				dst[tl - kl] = '\0';
			}
		} else if (o + (o > 0) + tl < n) {
			if (o > 0)
				out[o++] = ';';
			memcpy(out + o, t, tl);
			o += tl;
			out[o] = '\0';
		}
		t += tl;
		if (*t == ';')
			t++;
	}
}

void upstream_echo_expect(struct session *s, uint64_t client_serial,
			  const char *cmd, const char *target, const char *text)
{
	struct upstream *u = s->up;
	char *key;

	/* "target text": a target has no space. */
	if (!u || asprintf(&key, "%s %s", target, text) < 0)
		return;
	if (!u->echoes) {
		u->echoes = calloc(UPSTREAM_MAX_ECHOES, sizeof(*u->echoes));
		if (!u->echoes) {
			free(key);
			return;
		}
	}
	if (u->nechoes == UPSTREAM_MAX_ECHOES) {
		/* Never echoed (refused: 404, a mute; a lost line): forgotten. */
		free(u->echoes[0].key);
		memmove(u->echoes, u->echoes + 1, (u->nechoes - 1) * sizeof(*u->echoes));
		u->nechoes--;
	}
	u->echoes[u->nechoes++] = (struct upstream_echo){
		client_serial, (char)toupper((unsigned char)cmd[0]), key
	};
}

/* The network's echo m of a message we forwarded (echo-message): the
 * client that sent it if it did not ask for echo-message and is still
 * attached (it must not get its own line back), else NULL. The oldest
 * awaited echo of the same command, target (case-insensitive: the network
 * may spell the channel its way) and text is the one. */
static struct client *upstream_echo_sender(struct session *s, const struct irc_msg *m)
{
	struct upstream *u = s->up;
	char cmd = (char)toupper((unsigned char)m->command[0]);
	const char *text = m->nparams >= 2 ? m->params[1] : "";

	if (m->nparams < 1)
		return NULL;
	for (size_t i = 0; u && i < u->nechoes; i++) {
		char *k = u->echoes[i].key, *sp = strchr(k, ' ');
		int same;

		if (u->echoes[i].cmd != cmd || !sp || strcmp(sp + 1, text) != 0)
			continue;
		*sp = '\0';
		same = irc_casecmp(k, m->params[0]) == 0;
		*sp = ' ';
		if (!same)
			continue;
		uint64_t serial = u->echoes[i].client_serial;
		free(k);
		memmove(u->echoes + i, u->echoes + i + 1, (u->nechoes - i - 1) * sizeof(*u->echoes));
		u->nechoes--;
		for (size_t j = 0; j < s->nclients; j++)
			if (s->clients[j]->serial == serial)
				return s->clients[j];
		return NULL;
	}
	return NULL;
}

/* Bind fd to source address `addr` (port chosen at connect time, so a pool
 * of addresses does not use up ephemeral ports at bind). */
static int bind_source(int fd, int family, const char *addr)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int one = 1;

	memset(&ss, 0, sizeof(ss));
	if (family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
		sin->sin_family = AF_INET;
		if (inet_pton(AF_INET, addr, &sin->sin_addr) != 1)
			return -EAFNOSUPPORT;
		len = sizeof(*sin);
	} else if (family == AF_INET6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
		sin6->sin6_family = AF_INET6;
		if (inet_pton(AF_INET6, addr, &sin6->sin6_addr) != 1)
			return -EAFNOSUPPORT;
		len = sizeof(*sin6);
	} else {
		return -EAFNOSUPPORT;
	}
#ifdef IP_BIND_ADDRESS_NO_PORT
	(void)setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
#endif
	(void)one;
	if (bind(fd, (struct sockaddr *)&ss, len) < 0)
		return -errno;
	return 0;
}

/* Give back a governor slot nobody will use (a failed connect or a
 * cancelled lookup): the governor may let the next session go. */
static void upstream_slot_release(struct session *s, int gov_slot)
{
	struct governor *g = gov_slot >= 0 ? bouncer_governor(s->b, s->network) : NULL;

	if (g) {
		governor_release(g, (size_t)gov_slot);
		bouncer_governor_kick(s->b, g);
	}
}

static int upstream_connect_to(struct session *s, int gov_slot,
			       struct addrinfo *res);

/* The host name's answer (resolver.h): connect, or fail like a connect. */
static void upstream_resolved(int err, struct addrinfo *res, void *arg)
{
	struct session *s = arg;
	const struct baton_config *cfg = bouncer_config(s->b);
	const struct config_network *net = cfg ? config_find_network(cfg, s->network) : NULL;
	int slot = s->lookup_slot;
	int rc;

	s->lookup = NULL;
	s->lookup_slot = -1;
	if (err != 0 || res == NULL || net == NULL) {
		log_warn("upstream", "%s: cannot resolve %s: %s (retrying with backoff)",
			 s->key, net ? net->host : s->network,
			 err ? evutil_gai_strerror(err) : "no address");
		rc = -EHOSTUNREACH;
	} else {
		rc = upstream_connect_to(s, slot, res);
		if (rc < 0)
			log_warn("upstream", "%s: connect to %s failed: %s", s->key,
				 net->host, strerror(-rc));
	}
	if (res)
		evutil_freeaddrinfo(res);
	if (rc == 0)
		return;
	upstream_slot_release(s, slot);
	s->reconnect_failures++;
	session_backoff(s);
}

void upstream_lookup_cancel(struct session *s, bool retry)
{
	if (!s->lookup)
		return;
	resolver_cancel(s->lookup);
	s->lookup = NULL;
	upstream_slot_release(s, s->lookup_slot);
	s->lookup_slot = -1;
	if (retry)
		s->reconnect_at_ms = clock_mono_ms();
}

int upstream_connect(struct session *s, int gov_slot)
{
	const struct baton_config *cfg = bouncer_config(s->b);
	const struct config_session *cs = session_config(s);
	const struct config_network *net = cfg ? config_find_network(cfg, s->network) : NULL;
	struct addrinfo hints, *res = NULL;
	struct resolver *r;
	int rc;

	if (!cs || !net)
		return -ENOENT;
	if (s->lookup)
		return -EALREADY;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
	const char *port = net->port ? net->port : "6667";
	/* A numeric host: no DNS, nothing that can block. */
	rc = getaddrinfo(net->host, port, &hints, &res);
	if (rc == 0) {
		rc = upstream_connect_to(s, gov_slot, res);
		freeaddrinfo(res);
		return rc;
	}
	if (rc != EAI_NONAME) {
		log_warn("upstream", "%s: cannot resolve %s:%s: %s", s->key,
			 net->host, port, gai_strerror(rc));
		return -EHOSTUNREACH;
	}
	/* A host name: asked without blocking; the connect follows. */
	r = bouncer_resolver(s->b);
	s->lookup = r ? resolver_start(r, net->host, port, upstream_resolved, s) : NULL;
	if (!s->lookup)
		return -ENOMEM;
	s->lookup_slot = gov_slot; /* the lookup's until it ends */
	return 0;
}

/* Connect to one of res's addresses (see upstream_connect()). */
static int upstream_connect_to(struct session *s, int gov_slot,
			       struct addrinfo *res)
{
	const struct baton_config *cfg = bouncer_config(s->b);
	const struct config_session *cs = session_config(s);
	const struct config_network *net = cfg ? config_find_network(cfg, s->network) : NULL;
	const char *port;
	struct conn *c = NULL;
	int fd = -1, rc;

	if (!cs || !net)
		return -ENOENT;
	if (!res)
		return -EHOSTUNREACH;
	port = net->port ? net->port : "6667";
	/* A name with several addresses: each failed attempt moves on to the
	 * next one (e.g. ::1 refused, 127.0.0.1 listening). */
	size_t naddr = 0;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
		naddr++;
	struct addrinfo *ai = res;
	for (size_t i = s->reconnect_failures % naddr; i > 0; i--)
		ai = ai->ai_next;
	struct governor *g = gov_slot >= 0 ? bouncer_governor(s->b, s->network) : NULL;
	const char *src = g ? governor_addr(g, (size_t)gov_slot) : NULL;
	if (src && !src[0])
		src = NULL; /* the kernel chooses */
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		rc = -errno;
		goto out;
	}
	if (src) {
		rc = bind_source(fd, ai->ai_family, src);
		if (rc < 0) {
			log_warn("upstream", "%s: cannot bind source address %s for %s: %s%s",
				 s->key, src, net->host, strerror(-rc),
				 rc == -EAFNOSUPPORT ? " (not of the server's address family)" : "");
			goto out;
		}
	}
	bool connecting = false;
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
		if (errno != EINPROGRESS) {
			rc = -errno;
			goto out;
		}
		connecting = true;
	}
	c = conn_new(bouncer_base(s->b), fd, connecting, &upstream_conn_ops, NULL);
	fd = -1; /* transferred */
	if (!c) {
		rc = -ENOMEM;
		goto out;
	}
	if (net->tls) {
		/* Registration below is queued as plaintext and leaves once
		 * the handshake is done (conn.h). */
		char why[256] = "out of memory";
		SSL_CTX *ctx = tls_contexts_client(bouncer_tls(s->b), net, cs,
						   why, sizeof(why));

		if (ctx == NULL ||
		    conn_start_tls(c, ctx, false, net->host, net->tls_fingerprint) < 0) {
			log_error("upstream", "%s: tls: %s", s->key, why);
			rc = -EPROTO;
			goto out;
		}
		if (!net->tls_verify && net->tls_fingerprint == NULL)
			log_warn("upstream", "%s: connecting to %s WITHOUT certificate verification (tls_verify = no)",
				 s->key, net->host);
	}
	struct upstream *u = upstream_new(s, c);
	if (!u) {
		rc = -ENOMEM;
		goto out;
	}
	c = NULL; /* transferred */
	char *nick = strdup(cs->nick ? cs->nick : s->user);
	char *copy = src ? strdup(src) : NULL;
	if (!nick || (src && !copy)) {
		free(nick);
		free(copy);
		upstream_free(u); /* no slot yet: the caller releases it */
		rc = -ENOMEM;
		goto out;
	}
	u->gov_slot = gov_slot; /* the slot is the connection's from now on */
	u->nick_attempt = nick;
	if (copy) {
		free(s->source_addr);
		s->source_addr = copy;
	}
	int64_t now = clock_mono_ms();
	u->phase = connecting ? UP_CONNECTING : UP_REGISTERING;
	u->cap_negotiating = true;
	u->connected_at_ms = now;
	u->last_rx_ms = now;
	/* Registration is queued now and written once the connect completes. */
	util_strv_free(s->caps, s->ncaps);
	s->caps = NULL;
	s->ncaps = 0;
	conn_send(u->conn, "CAP LS 302");
	conn_sendf(u->conn, "NICK %s", u->nick_attempt);
	conn_sendf(u->conn, "USER %s 0 * :%s",
		   cs->username ? cs->username : u->nick_attempt,
		   cs->realname ? cs->realname : u->nick_attempt);
	s->up = u;
	bouncer_networks_state_changed(s); /* connecting */
	log_info("upstream", "%s: connecting to %s:%s from %s", s->key, net->host,
		 port, src ? src : "*");
	if (s->item.state == ITEM_LIVE)
		upstream_arm(u);
	rc = 0;
out:
	if (fd >= 0)
		close(fd);
	conn_release(c);
	return rc;
}

/* The server refused us (throttle or ban reply seen on u): back off instead
 * of retrying at the normal pace. Returns true if it scheduled the retry. */
static bool upstream_refused(struct session *s, enum governor_verdict v,
			     int slot)
{
	const struct baton_config *cfg = bouncer_config(s->b);
	int64_t max_ms = CONFIG_INT_OR_DEFAULT(cfg, reconnect_max_s) * 1000LL;
	struct governor *g = bouncer_governor(s->b, s->network);
	int64_t now = clock_mono_ms();

	if (v == GOV_THROTTLE && g && slot >= 0) {
		/* The whole source address backs off: every session that
		 * would use it waits (or goes out from another address). */
		int64_t until = governor_throttle(g, (size_t)slot, now, THROTTLE_BASE_MS,
						  max_ms > THROTTLE_BASE_MS ? max_ms : THROTTLE_BASE_MS);
		bouncer_governor_changed(s->b);
		bouncer_governor_kick(s->b, g);
		const char *a = governor_addr(g, (size_t)slot);
		log_warn("governor", "%s: network %s throttles source address %s: no connects from it for %lld s",
			 s->key, s->network, a[0] ? a : "*", (long long)((until - now + 999) / 1000));
		return false; /* the session itself backs off normally */
	}
	if (v == GOV_AUTH) {
		sasl_refused(s);
		return true;
	}
	if (v == GOV_BAN) {
		/* A ban does not lift by retrying; retrying quickly can turn a
		 * K-line into a longer one. One attempt per reconnect_max. */
		s->reconnect_failures++;
		int64_t d = governor_backoff_ms(1, max_ms, max_ms, (uint32_t)random());
		log_error("upstream", "%s: BANNED by network %s (K/G/Z-line or 465/463): next attempt in %lld s; check the network's ban and this host's addresses",
			  s->key, s->network, (long long)(d / 1000));
		session_schedule_connect(s, now + d);
		return true;
	}
	return false;
}

void upstream_lost(struct session *s)
{
	struct upstream *u = s->up;
	if (!u)
		return;
	const char *reason = conn_close_reason(u->conn);
	enum governor_verdict verdict = u->verdict;
	int slot = u->gov_slot;
	log_warn("upstream", "%s: connection lost: %s", s->key,
		 reason ? reason : "closed");
	session_notice_all(s, "Disconnected from %s: %s (reconnecting)",
			   s->network, reason ? reason : "closed");
	label_answer_all(u); /* their answer will not come */
	s->up = NULL;
	upstream_free(u); /* releases the slot; the throttle below still
			   * names the address by index */
	bouncer_networks_state_changed(s); /* disconnected */
	/* Keep the channel list (rejoined after the reconnect); members are
	 * stale from now on. */
	for (size_t i = 0; i < s->nchannels; i++) {
		struct channel *ch = s->channels[i];
		ch->joined = false;
		channel_clear_members(ch);
	}
	if (upstream_refused(s, verdict, slot))
		return;
	s->reconnect_failures++;
	session_backoff(s);
}

/* ---- channel and mode helpers ---- */

static void prefix_add(struct member *m, char sym, const char *symbols)
{
	char out[sizeof(m->prefixes)];
	size_t n = 0;
	for (const char *p = symbols; *p && n + 1 < sizeof(out); p++)
		if (*p == sym || strchr(m->prefixes, *p))
			out[n++] = *p;
	out[n] = '\0';
	memcpy(m->prefixes, out, n + 1);
}

static void prefix_del(struct member *m, char sym)
{
	char *p = strchr(m->prefixes, sym);
	if (p)
		memmove(p, p + 1, strlen(p));
}

static void modes_apply_flag(char **modes, bool add, char letter)
{
	char buf[64];
	size_t n = 0;
	const char *cur = *modes && (*modes)[0] == '+' ? *modes + 1 : "";

	buf[n++] = '+';
	for (const char *p = cur; *p && n + 2 < sizeof(buf); p++)
		if (*p != letter)
			buf[n++] = *p;
	if (add && n + 2 < sizeof(buf))
		buf[n++] = letter;
	buf[n] = '\0';
	char *copy = strdup(buf);
	if (!copy) {
		log_error("upstream", "out of memory: a mode change not stored");
		return;
	}
	free(*modes);
	*modes = copy;
}

/* Letters of a "+abc-d" mode string applied to *modes. */
static void modes_apply_letters(char **modes, const char *change)
{
	bool add = true;
	for (const char *p = change; *p; p++) {
		if (*p == '+')
			add = true;
		else if (*p == '-')
			add = false;
		else
			modes_apply_flag(modes, add, *p);
	}
}

static void channel_apply_mode(struct session *s, struct channel *ch,
			       const struct irc_msg *msg)
{
	char pmodes[16], psyms[16];
	char cm[128];
	const char *chanmodes = session_isupport(s, "CHANMODES");
	const char *types[4] = { "beI", "k", "l", "imnpst" };
	session_prefix(s, pmodes, sizeof(pmodes), psyms, sizeof(psyms));
	if (chanmodes) {
		snprintf(cm, sizeof(cm), "%s", chanmodes);
		char *t = cm;
		for (int i = 0; i < 4; i++) {
			char *comma = strchr(t, ',');
			types[i] = t;
			if (!comma) {
				for (int j = i + 1; j < 4; j++)
					types[j] = "";
				break;
			}
			*comma = '\0';
			t = comma + 1;
		}
	}
	if (msg->nparams < 2)
		return;
	size_t arg = 2;
	bool add = true;
	for (const char *p = msg->params[1]; *p; p++) {
		if (*p == '+' || *p == '-') {
			add = *p == '+';
			continue;
		}
		const char *pm = strchr(pmodes, *p);
		if (pm) {
			if (arg >= msg->nparams)
				continue;
			struct member *m = channel_find_member(ch, msg->params[arg++]);
			if (m) {
				char sym = psyms[pm - pmodes];
				if (add)
					prefix_add(m, sym, psyms);
				else
					prefix_del(m, sym);
			}
			continue;
		}
		if (strchr(types[0], *p)) { /* list mode: not stored */
			arg++;
			continue;
		}
		if (strchr(types[1], *p) || (add && strchr(types[2], *p)))
			arg++;
		modes_apply_flag(&ch->modes, add, *p);
	}
}


/* *dst = a copy of src (NULL: none). Out of memory: *dst is kept (the
 * line's change is not stored), logged, -ENOMEM. */
static int set_str(char **dst, const char *src)
{
	char *n = util_strdup(src);

	if (src && !n) {
		log_error("upstream", "out of memory: a server line's state not stored");
		return -ENOMEM;
	}
	free(*dst);
	*dst = n;
	return 0;
}

static void upstream_join_channels(struct session *s)
{
	const struct config_session *cs = session_config(s);

	/* A name that cannot fit a JOIN line (the network would refuse the
	 * line and close the connection) is not sent. */
	if (cs) {
		for (size_t i = 0; i < cs->nchannels; i++)
			if (!session_find_channel(s, cs->channels[i]) &&
			    strlen(cs->channels[i]) <= IRC_MAX_MESSAGE - 5)
				conn_sendf(s->up->conn, "JOIN %s", cs->channels[i]);
	}
	for (size_t i = 0; i < s->nchannels; i++)
		if (strlen(s->channels[i]->name) <= IRC_MAX_MESSAGE - 5)
			conn_sendf(s->up->conn, "JOIN %s", s->channels[i]->name);
}

/* ---- line handlers ---- */

struct up_ctx {
	struct session *s;
	struct upstream *u;
	struct irc_msg *msg;
	const char *raw;   /* the line without tags */
	const char *tags;  /* the network's tags (raw, no '@'), NULL: none */
	const char *base;  /* where raw starts in the parsed line: msg's
			    * pointers less base are offsets into raw */
	int64_t time_ms;   /* server-time or receive time */
	bool relayed;      /* a handler queued it to >= 1 client itself */
	/* Who gets it (session_reply_route()): 0 every client, 1 only `only`
	 * (the client whose query this answers), 2 nobody (it left). */
	int route;
	struct client *only;
	char nick[NAMES_MAX_LEN + 1]; /* nick of the prefix; "" when none or not a valid nick */
};

typedef bool (*up_handler)(struct up_ctx *x); /* returns true: relay */

/* Whether client cl gets the line of x (the reply to another client's
 * query does not: session_reply_route()). */
static bool up_for(const struct up_ctx *x, const struct client *cl)
{
	return x->route == 0 || (x->route == 1 && cl == x->only);
}

static bool h_ping(struct up_ctx *x)
{
	if (FAULT_NOPING())
		return false;
	if (x->msg->nparams > 0) {
		/* A token of a legal PING can make a PONG over the line bound
		 * (not sent: the network would time us out); cut, it still
		 * answers. */
		const char *t = x->msg->params[x->msg->nparams - 1];
		conn_sendf(x->u->conn, "PONG :%.*s",
			   (int)irc_utf8_cut(t, IRC_MAX_MESSAGE - 6), t);
	} else
		conn_send(x->u->conn, "PONG");
	return false;
}

static bool h_pong(struct up_ctx *x)
{
	const char *tok = x->msg->nparams ? x->msg->params[x->msg->nparams - 1] : "";
	if (strncmp(tok, "baton-adopt-", 12) == 0) {
		health_adopt_pong(&x->u->hl, tok + 12); /* never relayed */
		return false;
	}
	if (strncmp(tok, "baton-", 6) == 0 && x->u->ping_sent_ms) {
		x->u->lag_ms = clock_mono_ms() - x->u->ping_sent_ms;
		x->u->ping_sent_ms = 0;
	}
	return false;
}

static bool cap_wanted(const char *name)
{
	for (size_t i = 0; i < sizeof(wanted_caps) / sizeof(wanted_caps[0]); i++)
		if (strcmp(name, wanted_caps[i]) == 0)
			return true;
	return false;
}

static bool strv_has(char **v, size_t n, const char *s)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(v[i], s) == 0)
			return true;
	return false;
}

/* CAP LS / ACK / NAK from the server. Everything here is bounded by
 * wanted_caps[], never by what the server sends: a cap offered (LS) or
 * acknowledged (ACK) is kept at most once and only if we want it, so a
 * server repeating a cap 3,000 times over 300 continuation lines costs
 * nothing (before: the REQ was strcat'ed into a 256-byte stack buffer once
 * per repetition, a remote stack overflow; and every ACK grew the
 * session's cap list, which travels in every migration). */
static bool h_cap(struct up_ctx *x)
{
	struct irc_msg *m = x->msg;
	struct upstream *u = x->u;
	struct session *s = x->s;

	if (m->nparams < 3)
		return false;
	const char *sub = m->params[1];
	const char *list = m->params[m->nparams - 1];
	char tmp[CONN_MAX_LINE + 1];
	if (strcasecmp(sub, "LS") == 0) {
		bool more = m->nparams >= 4 && strcmp(m->params[2], "*") == 0;
		snprintf(tmp, sizeof(tmp), "%s", list);
		for (char *save = NULL, *t = strtok_r(tmp, " ", &save); t;
		     t = strtok_r(NULL, " ", &save)) {
			if (sasl_cap_ls(u, t) < 0)
				goto nomem;
			t[strcspn(t, "=")] = '\0';
			if (cap_wanted(t) && !strv_has(u->cap_offered, u->ncap_offered, t) &&
			    util_strv_push(&u->cap_offered, &u->ncap_offered, t) < 0)
				goto nomem;
		}
		if (more)
			return false;
		if (!sasl_cap_ls_end(u))
			return false;
		if (u->ncap_offered) {
			/* At most every wanted cap once: far below a line. */
			char req[512];
			size_t len = (size_t)snprintf(req, sizeof(req), "CAP REQ :");
			for (size_t i = 0; i < u->ncap_offered && len < sizeof(req); i++)
				len += (size_t)snprintf(req + len, sizeof(req) - len, "%s%s",
							i ? " " : "", u->cap_offered[i]);
			conn_send(u->conn, req);
		} else {
			conn_send(u->conn, "CAP END");
			u->cap_negotiating = false;
		}
		util_strv_free(u->cap_offered, u->ncap_offered);
		u->cap_offered = NULL;
		u->ncap_offered = 0;
	} else if (strcasecmp(sub, "ACK") == 0) {
		snprintf(tmp, sizeof(tmp), "%s", list);
		for (char *save = NULL, *t = strtok_r(tmp, " ", &save); t;
		     t = strtok_r(NULL, " ", &save)) {
			if (t[0] == '-') {
				for (size_t i = 0; i < s->ncaps; i++) {
					if (strcmp(s->caps[i], t + 1) == 0) {
						free(s->caps[i]);
						s->caps[i] = s->caps[--s->ncaps];
						break;
					}
				}
			} else if (cap_wanted(t) && !strv_has(s->caps, s->ncaps, t)) {
				/* A cap we never asked for is the server's error:
				 * not stored (the state only holds what we use). */
				if (util_strv_push(&s->caps, &s->ncaps, t) < 0)
					goto nomem;
			}
		}
		if (u->cap_negotiating && !sasl_cap_ack(u, list)) {
			conn_send(u->conn, "CAP END");
			u->cap_negotiating = false;
		}
	} else if (strcasecmp(sub, "NAK") == 0) {
		sasl_cap_nak(u, list);
		if (u->cap_negotiating && !conn_is_dead(u->conn)) {
			conn_send(u->conn, "CAP END");
			u->cap_negotiating = false;
		}
	}
	return false;
nomem:
	/* Registration cannot go on knowing what was offered or granted: a
	 * new connection (the session's backoff) starts it over. */
	log_error("upstream", "%s: out of memory during CAP negotiation", s->key);
	conn_close(u->conn, "out of memory", false);
	return false;
}

static void take_userhost(struct session *s, const char *prefix)
{
	const char *bang = prefix ? strchr(prefix, '!') : NULL;
	if (bang && strchr(bang, '@') && (!s->userhost || strcmp(s->userhost, bang + 1)))
		set_str(&s->userhost, bang + 1);
}

static bool h_001(struct up_ctx *x)
{
	struct session *s = x->s;
	struct irc_msg *m = x->msg;

	if (m->nparams < 1 || !sasl_welcome(x->u))
		return false;
	const char *nick = m->params[0];
	if (!names_nick_ok(nick)) {
		/* Not storable (names.h): registration goes on under the nick
		 * we asked for. */
		if (!x->u->warned_nick) {
			x->u->warned_nick = true;
			log_warn("upstream", "%s: 001 with an invalid nick ignored (once per connection)",
				 s->key);
		}
		nick = x->u->nick_attempt && names_nick_ok(x->u->nick_attempt) ?
			x->u->nick_attempt : s->nick;
	}
	if (nick && s->nick && strcmp(s->nick, nick) != 0 && s->nclients) {
		char line[512];
		snprintf(line, sizeof(line), ":%s NICK :%s", s->nick, nick);
		session_broadcast(s, line, 0, NULL);
	}
	if (nick)
		set_str(&s->nick, nick);
	if (m->prefix)
		set_str(&s->server_name, m->prefix);
	if (m->nparams >= 2 && set_str(&s->welcome, m->params[m->nparams - 1]) == 0) {
		const char *last = strrchr(s->welcome, ' ');
		take_userhost(s, last ? last + 1 : s->welcome);
	}
	util_strv_free(s->isupport, s->nisupport);
	s->isupport = NULL;
	s->nisupport = 0;
	set_str(&s->user_modes, NULL); /* a new connection: 221/MODE follow */
	/* Only the first 001 of a connection is news (a server repeating it
	 * must not make a log line per line it sends). */
	bool first = x->u->phase < UP_WELCOMED;
	x->u->phase = UP_WELCOMED;
	x->u->cap_negotiating = false;
	if (first)
		bouncer_networks_state_changed(s); /* connected */
	x->u->next_ping_ms = clock_mono_ms() + cfg_ping_interval_ms(s);
	if (s->item.state == ITEM_LIVE)
		upstream_schedule_timer(x->u); /* keepalive starts now */
	s->reconnect_failures = 0;
	if (x->u->gov_slot >= 0) {
		struct governor *g = bouncer_governor(s->b, s->network);
		if (g) {
			governor_success(g, (size_t)x->u->gov_slot);
			bouncer_governor_changed(s->b);
		}
	}
	if (first) {
		log_info("upstream", "%s: registered as %s", s->key, s->nick ? s->nick : "?");
		/* custody: a crash in the next second must not restore a
		 * session still waiting for this 001 */
		checkpoint_session_changed(s);
	}
	return false;
}

static bool h_004(struct up_ctx *x)
{
	char buf[512] = "";
	for (size_t i = 1; i < x->msg->nparams; i++) {
		if (i > 1)
			strncat(buf, " ", sizeof(buf) - strlen(buf) - 1);
		strncat(buf, x->msg->params[i], sizeof(buf) - strlen(buf) - 1);
	}
	set_str(&x->s->myinfo, buf);
	return false;
}

static bool h_005(struct up_ctx *x)
{
	/* params: nick, tokens..., "are supported by this server" */
	for (size_t i = 1; i + 1 < x->msg->nparams; i++)
		session_isupport_apply(x->s, x->msg->params[i]);
	return x->u->phase >= UP_READY;
}

static bool h_endofmotd(struct up_ctx *x)
{
	bool was_ready = x->u->phase >= UP_READY;
	if (was_ready)
		return true;
	x->u->phase = UP_READY;
	upstream_join_channels(x->s);
	if (x->s->away) /* within the line bound (a client's "AWAY text" of
			 * 510 bytes has no room for the ':') */
		conn_sendf(x->u->conn, "AWAY :%.*s", (int)irc_utf8_cut(x->s->away,
				IRC_MAX_MESSAGE - 6), x->s->away);
	if (x->s->nclients)
		session_notice_all(x->s, "Connected to %s as %s", x->s->network,
				   x->s->nick);
	return false;
}

static bool h_nickinuse(struct up_ctx *x)
{
	struct upstream *u = x->u;
	if (u->phase >= UP_WELCOMED)
		return true;
	char next[64];
	const char *cur = u->nick_attempt ? u->nick_attempt : x->s->user;
	if (strlen(cur) < 15)
		snprintf(next, sizeof(next), "%s_", cur);
	else
		snprintf(next, sizeof(next), "%.12s%03d", cur, (int)(random() % 1000));
	if (set_str(&u->nick_attempt, next) < 0) {
		conn_close(u->conn, "out of memory", false); /* reconnects */
		return false;
	}
	conn_sendf(u->conn, "NICK %s", next);
	return false;
}

static bool h_221(struct up_ctx *x)
{
	if (x->msg->nparams >= 2)
		set_str(&x->s->user_modes, x->msg->params[1]);
	return x->u->phase >= UP_READY;
}

static bool h_324(struct up_ctx *x)
{
	if (x->msg->nparams < 3)
		return true;
	struct channel *ch = session_find_channel(x->s, x->msg->params[1]);
	if (ch) {
		free(ch->modes);
		ch->modes = NULL;
		modes_apply_letters(&ch->modes, x->msg->params[2]);
	}
	return true;
}

static bool h_331(struct up_ctx *x)
{
	struct channel *ch = x->msg->nparams >= 2 ? session_find_channel(x->s, x->msg->params[1]) : NULL;
	if (ch) {
		set_str(&ch->topic, NULL);
		set_str(&ch->topic_setter, NULL);
		ch->topic_time = 0;
	}
	return true;
}

static bool h_332(struct up_ctx *x)
{
	struct channel *ch = x->msg->nparams >= 3 ? session_find_channel(x->s, x->msg->params[1]) : NULL;
	if (ch)
		set_str(&ch->topic, x->msg->params[2]);
	return true;
}

static bool h_333(struct up_ctx *x)
{
	struct channel *ch = x->msg->nparams >= 4 ? session_find_channel(x->s, x->msg->params[1]) : NULL;
	if (ch) {
		set_str(&ch->topic_setter, x->msg->params[2]);
		ch->topic_time = strtoll(x->msg->params[3], NULL, 10);
	}
	return true;
}

/* A name of a NAMES reply (prefixes, then "nick" or "nick!user@host") as a
 * client asked for it: all of its prefixes with multi-prefix, else the first
 * (highest) only; nick!user@host with userhost-in-names, else the nick.
 * Appends to out[*n] (at most CONN_MAX_LINE); returns where the word ends. */
static const char *names_word(const char *p, const char *psyms, unsigned caps,
			      char *out, size_t *n)
{
	bool first = true;

	for (; *p && *p != ' ' && strchr(psyms, *p); p++, first = false)
		if ((first || (caps & CLIENT_CAP_MULTI_PREFIX)) && *n < CONN_MAX_LINE)
			out[(*n)++] = *p;
	size_t w = strcspn(p, " ");
	size_t keep = (caps & CLIENT_CAP_USERHOST_IN_NAMES) ? w : strcspn(p, " !");
	if (keep > w)
		keep = w;
	for (size_t i = 0; i < keep && *n < CONN_MAX_LINE; i++)
		out[(*n)++] = p[i];
	return p + w;
}

/* Relay a 353 to each client in the form it asked for (names_word()):
 * multi-prefix and userhost-in-names negotiated upstream must not reach a
 * client that did not ask for them. */
static void relay_names(struct up_ctx *x, const char *psyms)
{
	const unsigned forms = CLIENT_CAP_MULTI_PREFIX | CLIENT_CAP_USERHOST_IN_NAMES;
	const char *trail = x->msg->params[3];
	size_t head = (size_t)(trail - x->base);

	for (size_t i = 0; i < x->s->nclients; i++) {
		struct client *cl = x->s->clients[i];
		if (!up_for(x, cl))
			continue;
		char line[CONN_MAX_LINE + 1];
		size_t n = head;

		if ((cl->caps & forms) == forms) {
			client_send_full(cl, x->tags, x->raw, x->time_ms);
			continue;
		}
		memcpy(line, x->raw, head);
		for (const char *p = x->raw + head; *p;) {
			if (*p == ' ') {
				if (n < CONN_MAX_LINE)
					line[n++] = ' ';
				p++;
				continue;
			}
			p = names_word(p, psyms, cl->caps, line, &n);
		}
		line[n] = '\0';
		client_send_full(cl, x->tags, line, x->time_ms);
	}
	x->relayed = x->s->nclients > 0;
}

/* 352 RPL_WHOREPLY: "<me> <channel> <user> <host> <server> <nick> <flags>
 * :<hops> <realname>", the flags "H"/"G", maybe "*", then the member's
 * prefixes: all of them only for clients with multi-prefix. */
static bool h_352(struct up_ctx *x)
{
	char pmodes[16], psyms[16];

	if (x->msg->nparams < 8 || x->u->phase < UP_READY)
		return x->u->phase >= UP_READY;
	session_prefix(x->s, pmodes, sizeof(pmodes), psyms, sizeof(psyms));
	const char *flags = x->msg->params[6];
	size_t at = (size_t)(flags - x->base), fl = strlen(flags);
	size_t keep = strcspn(flags, psyms);
	for (size_t i = 0; i < x->s->nclients; i++) {
		struct client *cl = x->s->clients[i];
		if (!up_for(x, cl))
			continue;
		char line[CONN_MAX_LINE + 1];

		if ((cl->caps & CLIENT_CAP_MULTI_PREFIX) || keep + 1 >= fl) {
			client_send_full(cl, x->tags, x->raw, x->time_ms);
			continue;
		}
		/* status letters and the first (highest) prefix; "H@+v" style
		 * flags after the prefixes are kept */
		size_t rest = keep + strspn(flags + keep, psyms);
		snprintf(line, sizeof(line), "%.*s%.*s%s", (int)(at + keep + 1), x->raw,
			 (int)(fl - rest), flags + rest, x->raw + at + fl);
		client_send_full(cl, x->tags, line, x->time_ms);
	}
	x->relayed = x->s->nclients > 0;
	return false;
}

/* 319 RPL_WHOISCHANNELS "<me> <nick> :{[prefixes]<channel>}": the
 * prefixes (all of them with multi-prefix) are the leading PREFIX symbols
 * before a channel name ('+' can be both: "++chan" is voice on +chan). */
static bool h_319(struct up_ctx *x)
{
	char pmodes[16], psyms[16];
	const char *types = session_isupport(x->s, "CHANTYPES");

	if (x->msg->nparams < 3 || x->u->phase < UP_READY)
		return x->u->phase >= UP_READY;
	if (!types || !types[0])
		types = "#&";
	session_prefix(x->s, pmodes, sizeof(pmodes), psyms, sizeof(psyms));
	size_t head = (size_t)(x->msg->params[2] - x->base);
	for (size_t i = 0; i < x->s->nclients; i++) {
		struct client *cl = x->s->clients[i];
		if (!up_for(x, cl))
			continue;
		char line[CONN_MAX_LINE + 1];
		size_t n = head;

		if (cl->caps & CLIENT_CAP_MULTI_PREFIX) {
			client_send_full(cl, x->tags, x->raw, x->time_ms);
			continue;
		}
		memcpy(line, x->raw, head);
		for (const char *p = x->raw + head; *p;) {
			size_t w = strcspn(p, " "), np = 0;

			while (np < w && strchr(psyms, p[np]))
				np++;
			while (np > 0 && (np == w || !strchr(types, p[np])))
				np--; /* the rest must be a channel name */
			if (np > 0 && n < CONN_MAX_LINE)
				line[n++] = p[0];
			for (size_t k = np; k < w && n < CONN_MAX_LINE; k++)
				line[n++] = p[k];
			p += w;
			while (*p == ' ') {
				if (n < CONN_MAX_LINE)
					line[n++] = ' ';
				p++;
			}
		}
		line[n] = '\0';
		client_send_full(cl, x->tags, line, x->time_ms);
	}
	x->relayed = x->s->nclients > 0;
	return false;
}

/* TAGMSG (message-tags): only to clients that asked for message-tags; the
 * network's echo of our own not to its sender without echo-message. */
static bool h_tagmsg(struct up_ctx *x)
{
	struct client *sender;

	if (x->u->phase < UP_READY)
		return false;
	sender = x->nick[0] && session_is_me(x->s, x->nick) ?
			 upstream_echo_sender(x->s, x->msg) : NULL;
	for (size_t i = 0; i < x->s->nclients; i++) {
		struct client *cl = x->s->clients[i];
		if (!up_for(x, cl))
			continue;
		if ((cl->caps & CLIENT_CAP_MESSAGE_TAGS) && cl != sender) {
			client_send_full(cl, x->tags, x->raw, x->time_ms);
			x->relayed = true;
		}
	}
	return false;
}

/* AWAY from the network (away-notify): only to clients that asked for it. */
static bool h_away(struct up_ctx *x)
{
	if (x->u->phase < UP_READY)
		return false;
	for (size_t i = 0; i < x->s->nclients; i++) {
		struct client *cl = x->s->clients[i];
		if (!up_for(x, cl))
			continue;
		if (cl->caps & CLIENT_CAP_AWAY_NOTIFY) {
			client_send_full(cl, x->tags, x->raw, x->time_ms);
			x->relayed = true;
		}
	}
	return false;
}

static bool h_353(struct up_ctx *x)
{
	char pmodes[16], psyms[16];
	if (x->msg->nparams < 4)
		return true;
	session_prefix(x->s, pmodes, sizeof(pmodes), psyms, sizeof(psyms));
	if (x->u->phase >= UP_READY)
		relay_names(x, psyms);
	struct channel *ch = session_find_channel(x->s, x->msg->params[2]);
	if (!ch)
		return false;
	if (ch->names_resync && ch->names_seen == NULL &&
	    (ch->names_seen = strmap_new()) == NULL)
		ch->names_resync = false; /* out of memory: no sweep */
	char *names = x->msg->params[3];
	for (char *save = NULL, *t = strtok_r(names, " ", &save); t;
	     t = strtok_r(NULL, " ", &save)) {
		char pre[16];
		size_t np = 0;
		while (*t && strchr(psyms, *t)) {
			if (np + 1 < sizeof(pre))
				pre[np++] = *t;
			t++;
		}
		pre[np] = '\0';
		t[strcspn(t, "!")] = '\0';
		if (!names_nick_ok(t))
			continue; /* not storable (names.h) */
		struct member *m = channel_add_member(ch, t);
		if (!m)
			continue;
		m->prefixes[0] = '\0';
		for (size_t i = 0; i < np; i++)
			prefix_add(m, pre[i], psyms);
		if (ch->names_seen != NULL) {
			char key[NAMES_MAX_LEN + 1];

			snprintf(key, sizeof(key), "%s", t);
			irc_casefold(key);
			if (strmap_put(ch->names_seen, key, (void *)1) < 0) {
				strmap_free(ch->names_seen); /* no sweep */
				ch->names_seen = NULL;
				ch->names_resync = false;
			}
		}
	}
	return false; /* relayed above */
}

/* End of a NAMES reply: after custody's resync (session.h names_resync),
 * the members the network no longer lists are removed. Each removal swaps
 * the last member in, so the walk goes down from the end. The shared list
 * is the network's view for every session in it (chanstore.h), and they
 * all lost the same lines with the same worker. */
static bool h_366(struct up_ctx *x)
{
	struct channel *ch;
	size_t removed = 0;

	if (x->msg->nparams < 2 ||
	    (ch = session_find_channel(x->s, x->msg->params[1])) == NULL ||
	    !ch->names_resync)
		return true;
	if (ch->names_seen != NULL && ch->sh != NULL) {
		for (size_t i = ch->sh->nmembers; i-- > 0;) {
			char key[NAMES_MAX_LEN + 1];

			snprintf(key, sizeof(key), "%s", ch->sh->members[i].nick);
			irc_casefold(key);
			if (strmap_get(ch->names_seen, key) == NULL) {
				channel_remove_member(ch, key);
				removed++;
			}
			if (ch->sh == NULL)
				break;
		}
	}
	if (removed > 0)
		log_info("custody", "%s: %s: %zu members gone since the crash removed",
			 x->s->key, ch->name, removed);
	strmap_free(ch->names_seen);
	ch->names_seen = NULL;
	ch->names_resync = false;
	return true;
}

/* Relay to each client: as it came to those with capability `cap`, else
 * cut after its first `keep` parameters (the form without the capability,
 * e.g. extended-join's "JOIN #chan account :realname" as "JOIN #chan"). */
static void relay_cut(struct up_ctx *x, size_t keep, unsigned cap)
{
	const char *last = x->msg->params[keep - 1];
	size_t end = (size_t)(last - x->base) + strlen(last);
	char line[CONN_MAX_LINE + 1];

	snprintf(line, sizeof(line), "%.*s", (int)end, x->raw);
	for (size_t i = 0; i < x->s->nclients; i++) {
		struct client *cl = x->s->clients[i];
		if (!up_for(x, cl))
			continue;
		client_send_full(cl, x->tags, (cl->caps & cap) ? x->raw : line, x->time_ms);
	}
	x->relayed = x->s->nclients > 0;
}

/* Relay only to the clients with capability `cap` (the line exists only
 * because the network has it: ACCOUNT, CHGHOST, SETNAME, others' INVITE). */
static bool relay_if_cap(struct up_ctx *x, unsigned cap)
{
	if (x->u->phase < UP_READY)
		return false;
	for (size_t i = 0; i < x->s->nclients; i++) {
		struct client *cl = x->s->clients[i];
		if (!up_for(x, cl))
			continue;
		if (cl->caps & cap) {
			client_send_full(cl, x->tags, x->raw, x->time_ms);
			x->relayed = true;
		}
	}
	return false;
}

static bool h_account(struct up_ctx *x)
{
	return relay_if_cap(x, CLIENT_CAP_ACCOUNT_NOTIFY);
}

static bool h_setname(struct up_ctx *x)
{
	return relay_if_cap(x, CLIENT_CAP_SETNAME);
}

/* CHGHOST <user> <host>: ours changes the prefix baton shows its clients. */
static bool h_chghost(struct up_ctx *x)
{
	if (x->msg->nparams >= 2 && x->nick[0] && session_is_me(x->s, x->nick) &&
	    strlen(x->msg->params[0]) + strlen(x->msg->params[1]) < CONN_MAX_LINE) {
		char uh[CONN_MAX_LINE + 3];
		int n = snprintf(uh, sizeof(uh), "!%s@%s", x->msg->params[0],
				 x->msg->params[1]);
		if (n > 0 && (size_t)n < sizeof(uh))
			take_userhost(x->s, uh);
	}
	return relay_if_cap(x, CLIENT_CAP_CHGHOST);
}

/* INVITE: to us for every client; of someone else (invite-notify) only to
 * the clients that asked for it. */
static bool h_invite(struct up_ctx *x)
{
	if (x->msg->nparams >= 1 && session_is_me(x->s, x->msg->params[0]))
		return true;
	return relay_if_cap(x, CLIENT_CAP_INVITE_NOTIFY);
}

/* extended-join ("JOIN #chan account :realname") to clients that asked for
 * it, the plain form to the others. */
static bool h_join_state(struct up_ctx *x);
static bool h_join(struct up_ctx *x)
{
	bool relay = h_join_state(x);

	if (relay && x->u->phase >= UP_READY && x->msg->nparams >= 2) {
		relay_cut(x, 1, CLIENT_CAP_EXTENDED_JOIN);
		readmarker_after_join(x->s, x->nick, x->msg->params[0]);
		return false;
	}
	if (relay && x->u->phase >= UP_READY) {
		/* relayed now, the read marker after it (chathistory.h) */
		for (size_t i = 0; i < x->s->nclients; i++)
			if (up_for(x, x->s->clients[i]))
				client_send_full(x->s->clients[i], x->tags, x->raw, x->time_ms);
		x->relayed = true;
		readmarker_after_join(x->s, x->nick, x->msg->params[0]);
		return false;
	}
	return relay;
}

static bool h_join_state(struct up_ctx *x)
{
	struct session *s = x->s;
	if (x->msg->nparams < 1 || !x->msg->prefix)
		return true;
	const char *name = x->msg->params[0];
	struct channel *ch;
	if (!names_channel_ok(name) || !x->nick[0])
		return true; /* relayed, not stored (names.h) */
	if (session_is_me(s, x->nick)) {
		take_userhost(s, x->msg->prefix);
		ch = session_add_channel(s, name);
		if (!ch)
			return true;
		if (strcmp(ch->name, name) != 0)
			set_str(&ch->name, name);
		channel_clear_members(ch);
		ch->joined = true;
		health_channel_joined(bouncer_health(s->b), ch);
		checkpoint_session_changed(s); /* custody: the channel too */
	} else {
		ch = session_find_channel(s, name);
		if (!ch)
			return true;
	}
	channel_add_member(ch, x->nick);
	return true;
}

static bool h_part(struct up_ctx *x)
{
	if (x->msg->nparams < 1)
		return true;
	if (session_is_me(x->s, x->nick)) {
		session_remove_channel(x->s, x->msg->params[0]);
		checkpoint_session_changed(x->s);
	} else {
		struct channel *ch = session_find_channel(x->s, x->msg->params[0]);
		if (ch)
			channel_remove_member(ch, x->nick);
	}
	return true;
}

static bool h_kick(struct up_ctx *x)
{
	if (x->msg->nparams < 2)
		return true;
	if (session_is_me(x->s, x->msg->params[1])) {
		session_remove_channel(x->s, x->msg->params[0]);
	} else {
		struct channel *ch = session_find_channel(x->s, x->msg->params[0]);
		if (ch)
			channel_remove_member(ch, x->msg->params[1]);
	}
	return true;
}

static bool h_quit(struct up_ctx *x)
{
	for (size_t i = 0; i < x->s->nchannels; i++)
		channel_remove_member(x->s->channels[i], x->nick);
	return true;
}

static bool h_nick(struct up_ctx *x)
{
	struct session *s = x->s;
	if (x->msg->nparams < 1)
		return true;
	const char *nn = x->msg->params[0];
	if (!x->nick[0])
		return true;
	bool valid = names_nick_ok(nn);
	if (!valid && session_is_me(s, x->nick)) {
		/* Our own nick: keep the one we know everywhere. */
		if (!x->u->warned_nick) {
			x->u->warned_nick = true;
			log_warn("upstream", "%s: NICK to an invalid nick ignored (once per connection)",
				 s->key);
		}
		return true;
	}
	for (size_t i = 0; i < s->nchannels; i++) {
		struct member *m = channel_find_member(s->channels[i], x->nick);
		if (!m)
			continue;
		/* A new nick we cannot store (names.h): the member leaves our
		 * view of the channel rather than poison the state. */
		if (valid)
			channel_rename_member(s->channels[i], m, nn);
		else
			channel_remove_member(s->channels[i], x->nick);
	}
	if (session_is_me(s, x->nick))
		set_str(&s->nick, nn);
	return true;
}

static bool h_topic(struct up_ctx *x)
{
	if (x->msg->nparams < 2)
		return true;
	struct channel *ch = session_find_channel(x->s, x->msg->params[0]);
	if (ch) {
		const char *t = x->msg->params[1];
		set_str(&ch->topic, t[0] ? t : NULL);
		set_str(&ch->topic_setter, x->msg->prefix);
		ch->topic_time = x->time_ms / 1000;
	}
	return true;
}

static bool h_mode(struct up_ctx *x)
{
	if (x->msg->nparams < 2)
		return true;
	const char *target = x->msg->params[0];
	if (irc_is_channel(target)) {
		struct channel *ch = session_find_channel(x->s, target);
		if (ch)
			channel_apply_mode(x->s, ch, x->msg);
	} else if (session_is_me(x->s, target)) {
		modes_apply_letters(&x->s->user_modes, x->msg->params[1]);
	}
	return x->u->phase >= UP_READY;
}

static bool h_message(struct up_ctx *x)
{
	struct session *s = x->s;
	if (x->msg->nparams < 2 || x->u->phase < UP_READY)
		return false;
	const char *target = x->msg->params[0];
	const char *buffer = NULL;
	/* Our own message echoed by the network (echo-message): accepted, so
	 * stored and relayed now, except to its sender if that client did not
	 * ask for echo-message. */
	bool own = x->nick[0] && session_is_me(s, x->nick);
	struct client *sender = own ? upstream_echo_sender(s, x->msg) : NULL;
	if (irc_is_channel(target) || (own && !session_is_me(s, target)))
		buffer = target;
	else if (session_is_me(s, target))
		buffer = x->nick[0] ? x->nick : (s->server_name ? s->server_name : "*");
	if (!buffer || !names_buffer_ok(buffer)) {
		/* e.g. "$*" broadcasts: relayed, not stored */
		session_broadcast_tags(s, x->tags, x->raw, x->time_ms, sender);
		x->relayed = s->nclients > (sender ? 1u : 0u);
		return false;
	}
	bool chan = irc_is_channel(target);
	/* fault builds only (fault.h): dropped, doubled or delayed */
	unsigned copies = chan && s->nclients ? FAULT_RELAY_COPIES() : 1;
	unsigned n = session_store_and_relay_tags(s, buffer, x->tags, x->raw,
						  x->time_ms, sender, copies);
	if (chan) /* what the differential delivery compares (health.h) */
		health_channel_lines(session_find_channel(s, target), n);
	x->relayed = n > 0;
	return false;
}

static bool h_error(struct up_ctx *x)
{
	const char *text = x->msg->nparams ? x->msg->params[0] : "";
	enum governor_verdict v = governor_classify("ERROR", text);

	/* The server's words are logged once per connection (cut to 200
	 * bytes): a network repeating ERROR must not flood the log. */
	if (!x->u->said_why) {
		x->u->said_why = true;
		log_warn("upstream", "%s: ERROR from server: %.200s", x->s->key, text);
	}
	if (v > x->u->verdict) /* a 465 before the ERROR stays a ban */
		x->u->verdict = v;
	return false;
}

/* 465 ERR_YOUREBANNEDCREEP, 463 ERR_NOPERMFORHOST: sent before the server
 * closes the link; relayed to clients (they should see why). */
static bool h_banned(struct up_ctx *x)
{
	const char *text = x->msg->nparams ? x->msg->params[x->msg->nparams - 1] : "";
	if (!x->u->said_why) {
		x->u->said_why = true;
		log_warn("upstream", "%s: %s from server: %.200s", x->s->key,
			 x->msg->command, text);
	}
	x->u->verdict = GOV_BAN;
	return true;
}

static bool h_silent(struct up_ctx *x)
{
	return false;
}

static bool h_sasl(struct up_ctx *x)
{
	return sasl_line(x->u, x->msg);
}

/* A message refused for a target (404 ERR_CANNOTSENDTOCHAN, 401
 * ERR_NOSUCHNICK...: "<me> <target> :why"): its echo never comes, so the
 * oldest awaited there is forgotten. Kept, it would take the next echo of
 * the same text there -- another client's message -- for its own and keep
 * it from its sender. (A numeric for another command only makes an
 * awaited echo reach its sender too: an echo, never a gap.) Relayed. */
static bool h_refused(struct up_ctx *x)
{
	struct upstream *u = x->u;

	for (size_t i = 0; x->msg->nparams >= 2 && i < u->nechoes; i++) {
		char *k = u->echoes[i].key, *sp = strchr(k, ' ');
		int same;

		if (!sp)
			continue;
		*sp = '\0';
		same = irc_casecmp(k, x->msg->params[1]) == 0;
		*sp = ' ';
		if (!same)
			continue;
		free(k);
		memmove(u->echoes + i, u->echoes + i + 1, (u->nechoes - i - 1) * sizeof(*u->echoes));
		u->nechoes--;
		break;
	}
	return true;
}

static const struct {
	const char *cmd;
	up_handler fn;
} up_handlers[] = {
	{ "PING", h_ping },       { "PONG", h_pong },   { "CAP", h_cap },
	{ "001", h_001 },         { "002", h_silent },  { "003", h_silent },
	{ "004", h_004 },         { "005", h_005 },     { "375", h_silent },
	{ "372", h_silent },      { "376", h_endofmotd }, { "422", h_endofmotd },
	{ "432", h_nickinuse },   { "433", h_nickinuse }, { "436", h_nickinuse },
	{ "437", h_nickinuse },   { "221", h_221 },     { "324", h_324 },
	{ "331", h_331 },         { "332", h_332 },     { "333", h_333 },
	{ "353", h_353 },         { "366", h_366 },     { "JOIN", h_join },   { "PART", h_part },
	{ "KICK", h_kick },       { "QUIT", h_quit },   { "NICK", h_nick },
	{ "TOPIC", h_topic },     { "MODE", h_mode },   { "PRIVMSG", h_message },
	{ "NOTICE", h_message },  { "ERROR", h_error },   { "465", h_banned },
	{ "463", h_banned },      { "352", h_352 },     { "AWAY", h_away },
	{ "TAGMSG", h_tagmsg },   { "319", h_319 },     { "ACCOUNT", h_account },
	{ "CHGHOST", h_chghost }, { "SETNAME", h_setname }, { "INVITE", h_invite },
	{ "AUTHENTICATE", h_sasl }, { "900", h_sasl },
	{ "901", h_sasl },        { "902", h_sasl },    { "903", h_sasl },
	{ "904", h_sasl },        { "905", h_sasl },    { "906", h_sasl },
	{ "907", h_sasl },        { "908", h_sasl },
	{ "401", h_refused },     { "403", h_refused }, { "404", h_refused },
	{ "407", h_refused },     { "486", h_refused }, { "492", h_refused },
};

static void upstream_line(struct conn *c, char *line, size_t len, void *arg)
{
	struct upstream *u = arg;
	struct session *s = u->s;
	struct irc_msg msg;
	struct up_ctx x;
	char raw[CONN_MAX_LINE + 1];
	char tval[64];

	u->last_rx_ms = clock_mono_ms();
	/* The relayed/stored form is the line without its tags. */
	const char *p = line;
	if (*p == '@') {
		p = strchr(p, ' ');
		if (!p)
			return;
		while (*p == ' ')
			p++;
	}
	snprintf(raw, sizeof(raw), "%s", p);
	FAULT_UPSTREAM_TEXT(raw); /* fault builds only (fault.h) */
	if (irc_parse(line, &msg) < 0)
		return;
	memset(&x, 0, sizeof(x));
	x.s = s;
	x.u = u;
	x.msg = &msg;
	x.raw = raw;
	x.base = p;
	x.tags = msg.tags;
	x.time_ms = clock_wall_ms(); /* a date: the backlog's and server-time's */
	if (msg.tags && irc_tag_get(msg.tags, "time", tval, sizeof(tval)) == 1) {
		int64_t t;
		if (clock_parse_server_time(tval, &t) == 0)
			x.time_ms = t;
	}
	if (msg.prefix) {
		irc_prefix_nick(msg.prefix, x.nick, sizeof(x.nick));
		/* A nick we could not store (too long, "," ...) is no nick:
		 * the handlers store nothing under it (names.h). */
		if (!names_nick_ok(x.nick) || strcspn(msg.prefix, "!@") > NAMES_MAX_LEN)
			x.nick[0] = '\0';
	}
	health_upstream_line(&u->hl, &msg, s->nick, x.nick);
	FAULT_UPSTREAM_LINE(); /* fault builds only (fault.h) */
	if (s->resync)
		session_resync(s); /* custody: room for more queries now? */
	x.route = session_reply_route(s, &msg, &x.only);

	/* labeled-response: the network's label and batch tags are ours to
	 * map (upstream_label_add()), never a client's as they came. */
	char ltags[IRC_MAX_TAGS + 1], lval[16], bval[UPSTREAM_BATCH_REF_MAX + 1];
	char rtag[80];
	struct client *asker = NULL;
	ssize_t li = -1;

	lval[0] = bval[0] = '\0';
	if (msg.tags && (strstr(msg.tags, "label") || strstr(msg.tags, "batch"))) {
		label_split_tags(msg.tags, ltags, sizeof(ltags), lval, sizeof(lval), bval,
				 sizeof(bval));
		x.tags = ltags[0] ? ltags : NULL;
		label_expire(u);
		li = lval[0] ? label_find(u, lval, NULL)
			     : bval[0] ? label_find(u, NULL, bval) : -1;
		if (li >= 0)
			for (size_t i = 0; i < s->nclients; i++)
				if (s->clients[i]->serial == u->labels[li].client_serial)
					asker = s->clients[i];
	}
	if (strcasecmp(msg.command, "BATCH") == 0 && msg.nparams >= 1) {
		/* Only the network's labeled-response batches are followed
		 * (to the asker alone); other batches' lines go on without
		 * their batch tag, their BATCH lines nowhere. */
		const char *ref = msg.params[0];

		if (ref[0] == '+' && lval[0] && li >= 0 && !bval[0] &&
		    strlen(ref + 1) <= UPSTREAM_BATCH_REF_MAX && ref[1] &&
		    !u->labels[li].batch[0]) {
			snprintf(u->labels[li].batch, sizeof(u->labels[li].batch), "%s", ref + 1);
			if (asker) {
				snprintf(rtag, sizeof(rtag), "label=%s", u->labels[li].label);
				asker->relay_tag = rtag;
				client_send_full(asker, NULL, raw, x.time_ms);
				asker->relay_tag = NULL;
			}
		} else if (ref[0] == '-' && (li = label_find(u, NULL, ref + 1)) >= 0) {
			for (size_t i = 0; i < s->nclients; i++)
				if (s->clients[i]->serial == u->labels[li].client_serial)
					client_send_full(s->clients[i], NULL, raw, x.time_ms);
			label_remove(u, (size_t)li);
		}
		return;
	}
	if (strcasecmp(msg.command, "ACK") == 0) {
		/* an ACK of a label not (or no longer) ours answers nobody */
		if (li >= 0 && lval[0]) {
			if (asker)
				conn_sendf(asker->conn, "@label=%s %s", u->labels[li].label, raw);
			label_remove(u, (size_t)li);
		}
		return;
	}
	if (asker) {
		/* The asker gets its answer whoever the line would go to
		 * otherwise; with its label (one line) or in the batch. */
		if (lval[0])
			snprintf(rtag, sizeof(rtag), "label=%s", u->labels[li].label);
		else
			snprintf(rtag, sizeof(rtag), "batch=%s", bval);
		asker->relay_tag = rtag;
		if (x.route == 2 || (x.route == 1 && x.only != asker)) {
			x.route = 1;
			x.only = asker;
		}
	}
	/* A one-line answer the asker does not get (its own echo without
	 * echo-message, a line a handler keeps): to it, no response, an ACK. */
	uint64_t asker_q0 = asker && lval[0] ? conn_bytes_queued(asker->conn) : 0;
	uint64_t asker_serial = asker && lval[0] ? asker->serial : 0;
	char asker_label[sizeof(u->labels[0].label)];

	if (asker_serial)
		memcpy(asker_label, u->labels[li].label, sizeof(asker_label));
	if (li >= 0 && lval[0])
		label_remove(u, (size_t)li); /* a one-line answer: done */

	bool relay = u->phase >= UP_READY;
	for (size_t i = 0; i < sizeof(up_handlers) / sizeof(up_handlers[0]); i++) {
		if (strcasecmp(msg.command, up_handlers[i].cmd) == 0) {
			relay = up_handlers[i].fn(&x) && u->phase >= UP_READY;
			break;
		}
	}
	if (relay) {
		for (size_t i = 0; i < s->nclients; i++)
			if (up_for(&x, s->clients[i])) {
				client_send_full(s->clients[i], x.tags, raw, x.time_ms);
				x.relayed = true;
			}
	}
	/* Found again rather than trusted: handlers do not free clients (a
	 * dead conn is reaped from the event loop), but the tag points into
	 * this frame and must not outlive it. */
	if (asker)
		for (size_t i = 0; i < s->nclients; i++) {
			struct client *cl = s->clients[i];

			cl->relay_tag = NULL;
			if (asker_serial && cl->serial == asker_serial &&
			    !conn_is_dead(cl->conn) && conn_bytes_queued(cl->conn) == asker_q0)
				conn_sendf(cl->conn, "@label=%s :%s ACK", asker_label,
					   s->server_name ? s->server_name : BATON_SERVER_NAME);
		}
	if (x.relayed)
		health_relayed(bouncer_health(s->b));
}

static void upstream_connected(struct conn *c, void *arg)
{
	struct upstream *u = arg;
	u->phase = UP_REGISTERING;
	u->last_rx_ms = clock_mono_ms();
	if (u->s->item.state == ITEM_LIVE)
		upstream_schedule_timer(u);
}

static void upstream_tls_ready(struct conn *c, void *arg)
{
	struct upstream *u = arg;

	log_info("upstream", "%s: %s established", u->s->key, conn_tls_info(c));
}

static void upstream_closed(struct conn *c, const char *reason, void *arg)
{
	struct upstream *u = arg;
	/* Runs from the event loop (conn.h): freeing u here is safe. */
	u->dead = true;
	upstream_lost(u->s);
}

const struct conn_ops upstream_conn_ops = {
	.line = upstream_line,
	.connected = upstream_connected,
	.tls_ready = upstream_tls_ready,
	.closed = upstream_closed,
};
