/* sessiond/session.c: sessions (one user on one network), their channel
 * state, delivery positions and relay to attached clients. */
#include "sessiond/session.h"
#include "sessiond/checkpoint.h"
#include "common/clock.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/event.h>

#include "common/config.h"
#include "common/log.h"
#include "common/strmap.h"
#include "common/names.h"
#include "tls/record.h"
#include "sessiond/backlog.h"
#include "sessiond/conn.h"
#include "sessiond/health.h"
#include "sessiond/history.h"
#include "sessiond/irc.h"

/* ---- limits ---- */

static size_t limit_or(int v, int def)
{
	return (size_t)(v > 0 ? v : def);
}

void session_limits_get(const struct baton_config *cfg, struct session_limits *out)
{
	const struct baton_config *d = config_default_values();

	if (cfg == NULL)
		cfg = d;
#define L(field) limit_or(cfg->field, d->field)
	*out = (struct session_limits){
		.max_clients = L(max_clients_per_session),
		.max_channels = L(max_channels),
		.max_channel_members = L(max_channel_members),
		.member_list_bytes = L(member_list_bytes),
		.backlog = {
			.buffer_lines = L(backlog_lines),
			.buffer_bytes = L(backlog_buffer_bytes),
			.buffers = L(backlog_buffers),
			.total_lines = L(backlog_session_lines),
			.total_bytes = L(backlog_session_bytes),
		},
	};
#undef L
}

/* ---- channels ---- */

void channel_free(struct channel *ch)
{
	if (!ch)
		return;
	channel_clear_members(ch);
	strmap_free(ch->names_seen);
	free(ch->name);
	free(ch->topic);
	free(ch->topic_setter);
	free(ch->modes);
	pb_unknown_clear(&ch->unknown);
	free(ch);
}

struct channel *session_find_channel(struct session *s, const char *name)
{
	for (size_t i = 0; i < s->nchannels; i++)
		if (irc_casecmp(s->channels[i]->name, name) == 0)
			return s->channels[i];
	return NULL;
}

struct channel *session_add_channel(struct session *s, const char *name)
{
	struct channel *ch = session_find_channel(s, name);
	if (ch)
		return ch;
	bool over = strlen(name) > SESSION_MAX_CHANNEL_NAME;
	if (over || s->nchannels >= s->lim.max_channels) {
		int64_t now = clock_mono_ms();
		if (s->untracked_notice_ms != 0 &&
		    now - s->untracked_notice_ms < SESSION_DROP_NOTICE_MS)
			return NULL;
		s->untracked_notice_ms = now;
		if (over) {
			log_info("session", "%s: not tracking a channel with a %zu-byte name",
				 s->key, strlen(name));
			return NULL;
		}
		log_info("session", "%s: not tracking %.64s: max_channels (%zu) reached (logged at most once a minute)",
			 s->key, name, s->lim.max_channels);
		session_notice_all(s, "Not keeping the state of %.64s: you are in %zu channels (max_channels). Its messages are still relayed and kept in the backlog; clients attaching later will not see it joined. (Said at most once a minute.)",
				   name, s->nchannels);
		return NULL;
	}
	struct channel **nv = realloc(s->channels, (s->nchannels + 1) * sizeof(*nv));
	if (!nv)
		return NULL;
	s->channels = nv;
	ch = calloc(1, sizeof(*ch));
	if (!ch || !(ch->name = strdup(name))) {
		free(ch);
		return NULL;
	}
	ch->s = s;
	s->channels[s->nchannels++] = ch;
	return ch;
}

void session_remove_channel(struct session *s, const char *name)
{
	for (size_t i = 0; i < s->nchannels; i++) {
		if (irc_casecmp(s->channels[i]->name, name) == 0) {
			channel_free(s->channels[i]);
			memmove(&s->channels[i], &s->channels[i + 1],
				(s->nchannels - i - 1) * sizeof(s->channels[0]));
			s->nchannels--;
			return;
		}
	}
}

struct member *channel_find_member(struct channel *ch, const char *nick)
{
	return shared_find(ch->sh, nick);
}

/* The view (chanstore.h): what the session is charged follows the list's
 * size whenever the session applies a change to it. */
static void channel_view_sync(struct channel *ch)
{
	size_t now = ch->sh ? ch->sh->member_bytes : 0;

	if (ch->s)
		ch->s->member_bytes += now - ch->member_bytes; /* modulo 2^64 */
	ch->member_bytes = now;
}

/* Forget the list (our reference; its bytes leave the session's count). */
static void channel_drop_members(struct channel *ch)
{
	chanstore_detach(ch->sh);
	ch->sh = NULL;
	channel_view_sync(ch);
}

/* A member bound was reached: keep the channel, not its members. */
static void channel_untrack_members(struct channel *ch, const char *why)
{
	struct session *s = ch->s;
	size_t n = channel_nmembers(ch);

	channel_drop_members(ch);
	ch->members_untracked = true;
	if (s == NULL)
		return; /* a channel not (yet) in a session: nobody to tell */
	log_info("session", "%s: %s: member list dropped at %zu members (%s)",
		 s->key, ch->name, n, why);
	session_notice_all(s, "Not keeping the member list of %s (%s): clients attaching later get no names for it; /NAMES %s asks the network.",
			   ch->name, why, ch->name);
}

/* Why this session's view of ch, with `more` members and `bytes` bytes
 * about to be added, passes its bounds (NULL: it does not). */
static const char *channel_over(const struct channel *ch, size_t more, size_t bytes)
{
	const struct session *s = ch->s;

	if (channel_nmembers(ch) + more > s->lim.max_channel_members)
		return "more than max_channel_members";
	if (s->member_bytes + bytes > s->lim.member_list_bytes)
		return "member lists of all channels over member_list_bytes";
	return NULL;
}

int channel_use_list(struct channel *ch, struct shared_channel *sh)
{
	chanstore_ref(sh);
	ch->sh = sh;
	channel_view_sync(ch);
	if (channel_over(ch, 0, 0) != NULL) {
		/* as if its members had passed the bound one by one here */
		channel_drop_members(ch);
		ch->members_untracked = true;
	}
	return 0;
}

struct member *channel_add_member(struct channel *ch, const char *nick)
{
	struct member *m;
	const char *why;

	if (ch->members_untracked || ch->s == NULL)
		return NULL;
	char scope[SESSION_SCOPE_MAX];

	if (ch->sh == NULL &&
	    !(ch->sh = chanstore_attach(bouncer_chanstore(ch->s->b),
					session_list_scope(ch->s, scope, sizeof(scope)),
					ch->name))) {
		/* util.h policy: an incomplete list is never kept as if whole */
		channel_untrack_members(ch, "out of memory");
		return NULL;
	}
	channel_view_sync(ch);
	m = shared_find(ch->sh, nick);
	/* Checked also when another session added it already: the list may
	 * have grown past this session's bounds meanwhile. */
	why = m ? channel_over(ch, 0, 0)
		: channel_over(ch, 1, strlen(nick) + SESSION_MEMBER_COST);
	if (why != NULL) {
		channel_untrack_members(ch, why);
		return NULL;
	}
	if (m == NULL) {
		m = shared_add(ch->sh, nick);
		if (m == NULL) {
			channel_untrack_members(ch, "out of memory");
			return NULL;
		}
		channel_view_sync(ch);
	}
	return m;
}

void channel_remove_member(struct channel *ch, const char *nick)
{
	if (ch->sh == NULL)
		return;
	shared_remove(ch->sh, nick);
	channel_view_sync(ch);
}

void channel_clear_members(struct channel *ch)
{
	channel_drop_members(ch);
	ch->members_untracked = false;
}

int channel_rename_member(struct channel *ch, struct member *m,
			  const char *nick)
{
	char *old;
	int rc;

	if (ch->sh == NULL)
		return 0;
	if (!(old = strdup(m->nick))) {
		channel_untrack_members(ch, "out of memory");
		return -ENOMEM;
	}
	rc = shared_rename(ch->sh, old, nick);
	free(old);
	if (rc < 0) {
		channel_untrack_members(ch, "out of memory");
		return rc;
	}
	channel_view_sync(ch);
	if (ch->s && ch->s->member_bytes > ch->s->lim.member_list_bytes)
		channel_untrack_members(ch, "member lists of all channels over member_list_bytes");
	return rc;
}

/* ---- session ---- */

/* The reconnect deadline passed: ask the network's governor for a slot
 * (bouncer.c connects the session when it is granted one). Without a
 * governor (a bouncer without config: unit tests) connect at once. */
static void session_reconnect_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;
	int rc;

	if (s->up || s->lookup) {
		s->reconnect_at_ms = 0;
		return;
	}
	if (s->quarantined) {
		s->reconnect_at_ms = 0;
		log_error("custody", "%s: quarantined (the worker crashed handling its input): not reconnected",
			  s->key);
		session_notice_all(s, "This network connection is quarantined: baton crashed repeatedly while handling what this network sent. The operator has been told (batonctl status).");
		return;
	}
	if (bouncer_governor(s->b, s->network)) {
		if (!s->reconnect_at_ms)
			s->reconnect_at_ms = clock_mono_ms();
		rc = bouncer_governor_request(s->b, s);
		if (rc == 0)
			return;
	} else {
		s->reconnect_at_ms = 0;
		rc = upstream_connect(s, -1);
		if (rc == 0)
			return;
	}
	log_warn("upstream", "%s: connect failed: %s", s->key, strerror(-rc));
	s->reconnect_failures++;
	session_backoff(s);
}

struct session *session_new(struct bouncer *b, const char *user,
			    const char *network)
{
	struct session *s = calloc(1, sizeof(*s));
	const struct baton_config *cfg = bouncer_config(b);
	if (!s)
		return NULL;
	s->b = b;
	s->item.kind = ITEM_SESSION;
	s->item.session = s;
	s->item.state = ITEM_ADOPTED;
	s->gov_wait.arg = s;
	s->gov_wait.prefer = -1;
	s->lookup_slot = -1;
	s->user = strdup(user);
	s->network = strdup(network);
	size_t klen = strlen(user) + strlen(network) + 2;
	s->key = malloc(klen);
	session_limits_get(cfg, &s->lim);
	if (bouncer_history(b) != NULL) {
		/* With a store open the in-memory backlog is its cache
		 * (history.h): a buffer keeps backlog_cache_lines, older lines
		 * stay in the store. With none open (none configured, or not
		 * yet: main.c retries) nothing else holds what leaves memory,
		 * so backlog_lines stays the bound. */
		size_t cache = limit_or(cfg ? cfg->backlog_cache_lines : 0,
					config_default_values()->backlog_cache_lines);

		if (cache < s->lim.backlog.buffer_lines)
			s->lim.backlog.buffer_lines = cache;
	}
	s->backlog = backlog_new(s->lim.backlog.buffer_lines);
	s->reconnect_timer = evtimer_new(bouncer_base(b), session_reconnect_cb, s);
	if (!s->user || !s->network || !s->key || !s->backlog || !s->reconnect_timer) {
		session_free(s);
		return NULL;
	}
	backlog_set_limits(s->backlog, &s->lim.backlog);
	snprintf(s->key, klen, "%s/%s", user, network);
	return s;
}

void session_close_sockets(struct session *s)
{
	struct governor *g = bouncer_governor(s->b, s->network);

	if (g)
		governor_cancel(g, &s->gov_wait);
	upstream_lookup_cancel(s, false); /* its answer never comes here */
	if (s->up) {
		conn_close_fd_only(s->up->conn);
		/* The connection lives on in the target: this worker's slot
		 * is free now, not when the memory is reaped (a worker that
		 * serves on after an aborted migration restarts sessions that
		 * need slots at once). */
		if (s->up->gov_slot >= 0 && g) {
			governor_release(g, (size_t)s->up->gov_slot);
			bouncer_governor_kick(s->b, g);
		}
		s->up->gov_slot = -1;
	}
	for (size_t i = 0; i < s->nclients; i++)
		conn_close_fd_only(s->clients[i]->conn);
}

void session_free(struct session *s)
{
	if (!s)
		return;
	struct governor *g = bouncer_governor(s->b, s->network);
	if (g)
		governor_cancel(g, &s->gov_wait);
	upstream_lookup_cancel(s, false); /* its answer never comes here */
	history_session_free(bouncer_history(s->b), s);
	upstream_free(s->up);
	for (size_t i = 0; i < s->nclients; i++)
		client_free(s->clients[i]);
	free(s->clients);
	free(s->queries);
	for (size_t i = 0; i < s->nchannels; i++)
		channel_free(s->channels[i]);
	free(s->channels);
	for (size_t i = 0; i < s->npositions; i++)
		free(s->positions[i].client_id);
	free(s->positions);
	util_strv_free(s->isupport, s->nisupport);
	util_strv_free(s->caps, s->ncaps);
	backlog_free(s->backlog);
	if (s->reconnect_timer)
		event_free(s->reconnect_timer);
	free(s->item.fds);
	free(s->key);
	free(s->user);
	free(s->network);
	free(s->nick);
	free(s->userhost);
	free(s->user_modes);
	free(s->away);
	free(s->sasl_failure);
	free(s->server_name);
	free(s->welcome);
	free(s->myinfo);
	free(s->source_addr);
	pb_unknown_clear(&s->unknown);
	free(s);
}

const struct config_session *session_config(const struct session *s)
{
	const struct baton_config *cfg = bouncer_config(s->b);
	return cfg ? config_find_session(cfg, s->user, s->network) : NULL;
}

void session_schedule_connect(struct session *s, int64_t at_ms)
{
	s->reconnect_at_ms = at_ms;
	if (s->item.state != ITEM_LIVE)
		return; /* armed later from the deadline */
	int64_t d = at_ms - clock_mono_ms();
	if (d < 0)
		d = 0;
	struct timeval tv = { .tv_sec = d / 1000, .tv_usec = (d % 1000) * 1000 };
	evtimer_add(s->reconnect_timer, &tv);
}

void session_backoff(struct session *s)
{
	const struct baton_config *cfg = bouncer_config(s->b);
	int64_t min = CONFIG_INT_OR_DEFAULT(cfg, reconnect_min_s);
	int64_t max = CONFIG_INT_OR_DEFAULT(cfg, reconnect_max_s);
	int64_t delay = governor_backoff_ms(s->reconnect_failures, min * 1000,
					    max * 1000, (uint32_t)random());
	session_schedule_connect(s, clock_mono_ms() + delay);
}

void session_arm(struct session *s)
{
	s->item.state = ITEM_LIVE;
	health_session_attached(bouncer_health(s->b), s);
	if (s->up)
		upstream_arm(s->up);
	for (size_t i = 0; i < s->nclients; i++) {
		conn_arm(s->clients[i]->conn);
		client_resume(s->clients[i]);
	}
	if (!s->up && s->reconnect_at_ms)
		session_schedule_connect(s, s->reconnect_at_ms);
	session_resync(s);
}

/* The serial no client has (client serials count up from 1): replies to
 * these queries are routed to nobody. */
#define RESYNC_SERIAL UINT64_MAX

void session_resync(struct session *s)
{
	static const char *const cmds[] = { "MODE", "TOPIC", "NAMES" };
	unsigned n = 0;

	if (!s->resync || s->up == NULL || !session_upstream_ready(s))
		return;
	while (s->resync_next < s->nchannels) {
		struct channel *ch = s->channels[s->resync_next];

		if (!ch->joined) {
			s->resync_next++;
			continue;
		}
		/* all three routed, or wait for room (replies pop queries) */
		if (s->nqueries + 3 > SESSION_MAX_QUERIES)
			break;
		for (size_t k = 0; k < sizeof(cmds) / sizeof(cmds[0]); k++) {
			char line[600];
			struct irc_msg m;

			if (strcmp(cmds[k], "NAMES") == 0)
				ch->names_resync = true; /* upstream.c h_366 */
			snprintf(line, sizeof(line), "%s %s", cmds[k], ch->name);
			conn_sendf(s->up->conn, "%s", line);
			if (irc_parse(line, &m) == 0)
				session_query_note(s, RESYNC_SERIAL, &m);
			n++;
		}
		s->resync_next++;
	}
	if (n > 0)
		log_info("custody", "%s: lines were lost in a crash: %u queries to resynchronise its channels",
			 s->key, n);
	if (s->resync_next >= s->nchannels)
		s->resync = false;
}

void session_reap(struct session *s)
{
	for (size_t i = 0; i < s->nclients;) {
		struct client *cl = s->clients[i];
		if (conn_is_dead(cl->conn)) {
			session_remove_client(s, cl);
			continue;
		}
		i++;
	}
	if (s->up && conn_is_dead(s->up->conn))
		upstream_lost(s);
}

void session_freeze(struct session *s, bool flush)
{
	/* A frozen session must not be granted a slot; it keeps its due time
	 * (reconnect_at_ms) and queues again when armed (here or in T). */
	struct governor *g = bouncer_governor(s->b, s->network);
	if (g)
		governor_cancel(g, &s->gov_wait);
	/* A host-name lookup cannot travel: dropped, the session connects
	 * again when armed (here or in T). */
	upstream_lookup_cancel(s, true);
	history_session_flush(bouncer_history(s->b), s);
	if (s->up)
		upstream_freeze(s->up, flush);
	for (size_t i = 0; i < s->nclients; i++)
		conn_freeze(s->clients[i]->conn, flush);
	event_del(s->reconnect_timer);
	s->item.state = ITEM_FROZEN;
	/* Connections that died (before or during the flush) are not part of
	 * the state: finish them now (upstream_lost only schedules a retry,
	 * which stays a deadline while frozen). */
	session_reap(s);
}

int session_add_client(struct session *s, struct client *cl)
{
	struct client **nv = realloc(s->clients, (s->nclients + 1) * sizeof(*nv));
	if (!nv)
		return -ENOMEM;
	s->clients = nv;
	if (s->nclients == 0)
		health_session_attached(bouncer_health(s->b), s);
	s->clients[s->nclients++] = cl;
	cl->s = s;
	/* custody copies a client's socket only once it is a session's
	 * (conn_ops.custody_deferred): a pending connection would be
	 * closed by a restore anyway */
	conn_custody_start(cl->conn);
	checkpoint_soon(); /* custody: the session record names its sockets */
	return 0;
}

void session_detach_client(struct session *s, struct client *cl,
			   const char *reason)
{
	for (size_t i = 0; i < s->nclients; i++) {
		if (s->clients[i] == cl) {
			memmove(&s->clients[i], &s->clients[i + 1],
				(s->nclients - i - 1) * sizeof(s->clients[0]));
			s->nclients--;
			break;
		}
	}
	const char *id = cl->client_id ? cl->client_id : "default";
	log_info("client", "%s: client %s detached (%s)", s->key, id, reason);
	session_set_position(s, id, client_acked_seq(cl));
	cl->s = NULL;
}

void session_remove_client(struct session *s, struct client *cl)
{
	/* The position is what the peer acknowledged, measured last, right
	 * before the close (any final flush was attempted when the connection
	 * was closed: conn_close()). Lines queued after it are replayed on the
	 * next attach, so the close must not deliver them too: it discards what
	 * the kernel still holds (RST, conn_discard_unacked()).
	 *
	 * Trade-offs: bytes the peer received but had not acknowledged yet
	 * (delayed ACK), or acknowledges between the measure and the close,
	 * arrive twice (duplicates, never gaps). A QUIT normally does not come
	 * here: it detaches with session_detach_client() and closes gracefully
	 * (client.c, closing clients), which learns exactly what a client that
	 * reads to our EOF received. And TCP acknowledgement is not reading: a client whose
	 * kernel took lines its application never read (it crashed, or its
	 * stack drops unread data on a RST) misses them. Only
	 * application-level acknowledgements (IRCv3 read markers /
	 * chathistory) could close that gap. */
	health_client_closed(bouncer_health(s->b), conn_close_reason(cl->conn),
			     conn_peer_closed(cl->conn));
	session_detach_client(s, cl, conn_close_reason(cl->conn) ?
				     conn_close_reason(cl->conn) : "quit");
	conn_discard_unacked(cl->conn);
	client_free(cl);
}

bool session_members_private(const struct session *s)
{
	const struct baton_config *cfg = bouncer_config(s->b);
	const struct config_network *net = cfg ? config_find_network(cfg, s->network) : NULL;
	const char *chanmodes = session_isupport(s, "CHANMODES");

	if (net && net->member_lists != CONFIG_MEMBERS_AUTO)
		return net->member_lists == CONFIG_MEMBERS_PRIVATE;
	if (chanmodes == NULL)
		return false;
	/* Delayed join (InspIRCd and UnrealIRCd +D; UnrealIRCd's +d marks a
	 * channel that still hides members) hides joiners from some users
	 * until they speak; InspIRCd's auditorium (+u) shows non-operators
	 * only operators. Other servers use these letters for other things
	 * or not at all: a letter too many here costs memory, one too few
	 * would show one user the members the network hides from them. */
	if (strpbrk(chanmodes, "Dd"))
		return true;
	/* myinfo is 004's "server version usermodes chanmodes ..." */
	const char *version = s->myinfo ? strchr(s->myinfo, ' ') : NULL;

	return strchr(chanmodes, 'u') && version &&
	       strncasecmp(version + 1, "InspIRCd", 8) == 0;
}

const char *session_list_scope(const struct session *s, char *buf, size_t n)
{
	if (session_members_private(s))
		snprintf(buf, n, "%s/%s", s->user, s->network);
	else
		snprintf(buf, n, "%s", s->network);
	return buf;
}

const char *session_isupport(const struct session *s, const char *token)
{
	size_t tl = strlen(token);
	for (size_t i = 0; i < s->nisupport; i++) {
		const char *t = s->isupport[i];
		if (strncmp(t, token, tl) == 0 && (t[tl] == '\0' || t[tl] == '='))
			return t[tl] == '=' ? t + tl + 1 : "";
	}
	return NULL;
}

int session_isupport_apply(struct session *s, const char *tok)
{
	bool remove = tok[0] == '-';
	const char *name = remove ? tok + 1 : tok;
	size_t nl = strcspn(name, "=");

	/* names.h: one space-free word; "-" alone names nothing */
	if (!names_word_ok(tok) || strlen(tok) > SESSION_MAX_ISUPPORT_TOKEN || nl == 0)
		return 0;
	for (size_t i = 0; i < s->nisupport; i++) {
		const char *t = s->isupport[i];
		if (strncmp(t, name, nl) == 0 && (t[nl] == '\0' || t[nl] == '=')) {
			if (remove) {
				free(s->isupport[i]);
				memmove(&s->isupport[i], &s->isupport[i + 1],
					(s->nisupport - i - 1) * sizeof(char *));
				s->nisupport--;
			} else {
				char *n = strdup(tok);

				if (n == NULL)
					goto nomem;
				free(s->isupport[i]);
				s->isupport[i] = n;
			}
			return 0;
		}
	}
	if (!remove && s->nisupport < SESSION_MAX_ISUPPORT &&
	    util_strv_push(&s->isupport, &s->nisupport, tok) < 0)
		goto nomem;
	return 0;
nomem:
	log_error("session", "%s: out of memory: ISUPPORT token %.32s not stored", s->key, tok);
	return -ENOMEM;
}

void session_prefix(const struct session *s, char *modes, size_t mn,
		    char *symbols, size_t sn)
{
	const char *p = session_isupport(s, "PREFIX");
	snprintf(modes, mn, "ov");
	snprintf(symbols, sn, "@+");
	if (!p || p[0] != '(')
		return;
	const char *close = strchr(p, ')');
	if (!close)
		return;
	size_t n = (size_t)(close - p - 1);
	if (n >= mn || n >= sn || strlen(close + 1) != n)
		return;
	/* Symbols that a member's prefixes could not hold (letters, digits,
	 * spaces: names.h) keep the defaults, so the network's PREFIX can
	 * never make a member list that adoption refuses. */
	char sym[NAMES_MAX_PREFIXES + 1];
	if (n > NAMES_MAX_PREFIXES)
		return;
	memcpy(sym, close + 1, n);
	sym[n] = '\0';
	if (!names_prefixes_ok(sym))
		return;
	memcpy(modes, p + 1, n);
	modes[n] = '\0';
	memcpy(symbols, close + 1, n);
	symbols[n] = '\0';
}

bool session_is_me(const struct session *s, const char *nick)
{
	return s->nick && irc_casecmp(s->nick, nick) == 0;
}

uint64_t session_position(const struct session *s, const char *client_id)
{
	for (size_t i = 0; i < s->npositions; i++)
		if (strcmp(s->positions[i].client_id, client_id) == 0)
			return s->positions[i].seq;
	return 0;
}

bool session_has_position(const struct session *s, const char *client_id)
{
	for (size_t i = 0; i < s->npositions; i++)
		if (strcmp(s->positions[i].client_id, client_id) == 0)
			return true;
	return false;
}

int session_set_position(struct session *s, const char *client_id,
			 uint64_t seq)
{
	struct position *slot = NULL;
	char *id;

	history_set_position(bouncer_history(s->b), s, client_id, seq);
	for (size_t i = 0; i < s->npositions; i++) {
		if (strcmp(s->positions[i].client_id, client_id) == 0) {
			s->positions[i].seq = seq;
			return 0;
		}
	}
	if (strlen(client_id) > SESSION_MAX_CLIENT_NAME)
		return 0;
	id = strdup(client_id);
	if (!id)
		goto nomem;
	if (s->npositions >= SESSION_MAX_POSITIONS) {
		slot = &s->positions[0];
		for (size_t i = 1; i < s->npositions; i++)
			if (s->positions[i].seq < slot->seq)
				slot = &s->positions[i];
		log_info("session", "%s: forgetting the position of client %s (more than %d client names)",
			 s->key, slot->client_id, SESSION_MAX_POSITIONS);
		free(slot->client_id);
	} else {
		struct position *nv = realloc(s->positions, (s->npositions + 1) * sizeof(*nv));
		if (!nv) {
			free(id);
			goto nomem;
		}
		s->positions = nv;
		slot = &nv[s->npositions++];
	}
	slot->client_id = id;
	slot->seq = seq;
	return 0;
nomem:
	log_error("session", "%s: out of memory: position %llu of client %.64s not stored",
		  s->key, (unsigned long long)seq, client_id);
	return -ENOMEM;
}

void session_advance_position(struct session *s, const char *client_id,
			      uint64_t seq)
{
	/* A position at or past the next seq belongs to an earlier life of a
	 * session with this key (a client finishing its QUIT after the session
	 * was restarted with fresh seqs): stored, it would make every target
	 * refuse the session ("beyond next_seq"). */
	if (seq >= backlog_next_seq(s->backlog))
		return;
	if (seq > session_position(s, client_id))
		session_set_position(s, client_id, seq);
}

void session_broadcast(struct session *s, const char *line, int64_t time_ms,
		       struct client *except)
{
	session_broadcast_tags(s, NULL, line, time_ms, except);
}

void session_broadcast_tags(struct session *s, const char *tags, const char *line,
			    int64_t time_ms, struct client *except)
{
	for (size_t i = 0; i < s->nclients; i++)
		if (s->clients[i] != except)
			client_send_full(s->clients[i], tags, line, time_ms);
}

void session_store_and_relay(struct session *s, const char *buffer,
			     const char *line, int64_t time_ms,
			     struct client *except)
{
	(void)session_store_and_relay_n(s, buffer, line, time_ms, except, 1);
}

unsigned session_store_and_relay_n(struct session *s, const char *buffer,
				   const char *line, int64_t time_ms,
				   struct client *except, unsigned copies)
{
	return session_store_and_relay_tags(s, buffer, NULL, line, time_ms, except, copies);
}

unsigned session_store_and_relay_tags(struct session *s, const char *buffer,
				      const char *tags, const char *line,
				      int64_t time_ms, struct client *except,
				      unsigned copies)
{
	struct history *h = bouncer_history(s->b);

	if (!time_ms)
		time_ms = clock_wall_ms();
	if (h) {
		uint64_t seq = 0;
		int r = history_append(h, s, buffer, tags, line, time_ms, except,
				       copies, &seq);
		if (r == 1)
			return 0; /* pending: relayed once the store takes it */
		if (r < 0)
			return session_relay_live(s, tags, line, time_ms, except, copies);
		return session_relay_stored(s, seq, buffer, tags, line, time_ms,
					    except, copies);
	}
	return session_relay_unstored(s, buffer, tags, line, time_ms, except, copies);
}

unsigned session_relay_live(struct session *s, const char *tags, const char *line,
			    int64_t time_ms, struct client *except, unsigned copies)
{
	for (unsigned k = 0; k < copies; k++)
		session_broadcast_tags(s, tags, line, time_ms, except);
	return s->nclients > (except ? 1u : 0u) ? copies : 0;
}

static unsigned session_relay_seq(struct session *s, uint64_t seq,
				  const char *tags, const char *line,
				  int64_t time_ms, struct client *except,
				  unsigned copies);

unsigned session_relay_unstored(struct session *s, const char *buffer,
				const char *tags, const char *line, int64_t time_ms,
				struct client *except, unsigned copies)
{
	uint64_t seq = backlog_append(s->backlog, buffer, time_ms, line);
	if (!seq) /* out of memory: still relay live, unnumbered */
		return session_relay_live(s, tags, line, time_ms, except, copies);
	return session_relay_seq(s, seq, tags, line, time_ms, except, copies);
}

unsigned session_relay_stored(struct session *s, uint64_t seq, const char *buffer,
			      const char *tags, const char *line, int64_t time_ms,
			      struct client *except, unsigned copies)
{
	if (backlog_append_at(s->backlog, buffer, seq, time_ms, line) < 0)
		return session_relay_live(s, tags, line, time_ms, except, copies);
	return session_relay_seq(s, seq, tags, line, time_ms, except, copies);
}

static unsigned session_relay_seq(struct session *s, uint64_t seq,
				  const char *tags, const char *line,
				  int64_t time_ms, struct client *except,
				  unsigned copies)
{
	unsigned most = 0;

	session_note_backlog_drops(s);
	for (size_t i = 0; i < s->nclients; i++) {
		struct client *cl = s->clients[i];
		if (cl == except) {
			client_skip(cl, seq); /* the sender has it */
		} else if (copies) {
			unsigned n = client_deliver(cl, seq, tags, line, time_ms, copies);
			if (n > most)
				most = n;
		}
	}
	return most;
}

void session_notice_all(struct session *s, const char *fmt, ...)
{
	char text[512];
	char line[700];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	snprintf(line, sizeof(line), ":%s NOTICE %s :%s", BATON_SERVER_NAME,
		 s->nick ? s->nick : "*", text);
	session_broadcast(s, line, 0, NULL);
}

void session_self_prefix(const struct session *s, char *out, size_t n)
{
	if (s->userhost)
		snprintf(out, n, "%s!%s", s->nick ? s->nick : "*", s->userhost);
	else
		snprintf(out, n, "%s", s->nick ? s->nick : "*");
}

bool session_upstream_ready(const struct session *s)
{
	return s->up && !s->up->dead && s->up->phase >= UP_WELCOMED;
}

/* ---- what the bounds dropped ---- */

void session_note_backlog_drops(struct session *s)
{
	struct backlog_drops d;
	const struct backlog_limits *l = &s->lim.backlog;
	char what[256] = "", why[320] = "";
	size_t n;
	int64_t now;

	backlog_take_drops(s->backlog, &d);
	s->drops.lines += d.lines;
	s->drops.buffers += d.buffers;
	s->drops.why |= d.why;
	if (s->drops.lines == 0 && s->drops.buffers == 0)
		return;
	now = clock_mono_ms();
	if (s->drop_notice_ms != 0 && now - s->drop_notice_ms < SESSION_DROP_NOTICE_MS &&
	    now >= s->drop_notice_ms)
		return;
	n = (size_t)snprintf(what, sizeof(what), "%zu older line%s", s->drops.lines,
			     s->drops.lines == 1 ? "" : "s");
	if (s->drops.buffers && n < sizeof(what))
		snprintf(what + n, sizeof(what) - n, " (%zu whole buffers among them)",
			 s->drops.buffers);
	n = 0;
#define WHY(bit, ...)                                                          \
	do {                                                                   \
		if ((s->drops.why & (bit)) && n < sizeof(why))                 \
			n += (size_t)snprintf(why + n, sizeof(why) - n, __VA_ARGS__); \
	} while (0)
	WHY(BACKLOG_DROP_TOTAL_BYTES, "; over %zu bytes in all buffers: the fullest buffers lose their oldest lines",
	    l->total_bytes);
	WHY(BACKLOG_DROP_TOTAL_LINES, "; over %zu lines in all buffers: the longest buffers lose their oldest lines",
	    l->total_lines);
	WHY(BACKLOG_DROP_BUFFERS, "; over %zu buffers: the least recently active private conversation goes first",
	    l->buffers);
	WHY(BACKLOG_DROP_TRIM, "; the oldest lines, to fit an upgrade");
#undef WHY
	log_info("session", "%s: backlog bounds dropped %s%s", s->key, what, why);
	session_notice_all(s, "Backlog full: dropped %s%s. Clients that were away will miss them.",
			   what, why);
	s->drops = (struct backlog_drops){ 0 };
	s->drop_notice_ms = now;
}

/* ---- last line of defence of a migration ---- */

static size_t client_unwritten(const struct client *cl)
{
	size_t out = 0, cipher = 0;

	(void)conn_output(cl->conn, &out);
	if (conn_tls(cl->conn) != NULL)
		(void)tls_record_output(conn_tls(cl->conn), &cipher);
	return out + cipher;
}

/* The attached client with the most unwritten output above `min`. */
static struct client *client_most_output(struct session *s, size_t min)
{
	struct client *best = NULL;
	size_t most = min;

	for (size_t i = 0; i < s->nclients; i++) {
		size_t n = client_unwritten(s->clients[i]);

		if (n > most || (best == NULL && n >= most && min == 0)) {
			best = s->clients[i];
			most = n;
		}
	}
	return best;
}

static void shrink_client(struct session *s, struct client *cl,
			  struct session_shrink *acc)
{
	log_warn("migrate", "%s: client %s disconnected: the session's state with its %zu bytes of unwritten output does not fit a migration",
		 s->key, cl->client_id ? cl->client_id : "default",
		 client_unwritten(cl));
	conn_close(cl->conn, "sendq exceeded", false);
	session_remove_client(s, cl);
	acc->clients++;
}

int session_shrink(struct session *s, size_t excess, struct session_shrink *acc)
{
	struct client *cl = client_most_output(s, SESSION_STALLED_OUTPUT);
	struct channel *big = NULL;
	size_t n;

	if (cl != NULL) {
		/* As many as their output says are needed (one pass: every
		 * serialization of a big session lengthens the freeze). */
		size_t gone = 0;

		do {
			/* its output and its delivery marks (~12 bytes each) */
			gone += client_unwritten(cl) + cl->nmarks * 12;
			shrink_client(s, cl, acc);
		} while (gone < excess &&
			 (cl = client_most_output(s, SESSION_STALLED_OUTPUT)) != NULL);
		return 0;
	}
	/* Room for the notice about it too (up to 1 KiB to every client). */
	n = backlog_trim_oldest(s->backlog, excess + 1024 * (s->nclients + 1));
	if (n > 0) {
		log_warn("migrate", "%s: %zu oldest backlog lines dropped: the session's state was %zu bytes over what a migration can carry",
			 s->key, n, excess);
		acc->lines += (uint32_t)n;
		return 0;
	}
	cl = client_most_output(s, 0);
	if (cl != NULL) {
		shrink_client(s, cl, acc);
		return 0;
	}
	for (size_t i = 0; i < s->nchannels; i++)
		if (channel_nmembers(s->channels[i]) > 0 &&
		    (big == NULL || s->channels[i]->member_bytes > big->member_bytes))
			big = s->channels[i];
	if (big != NULL) {
		channel_untrack_members(big, "the session's state did not fit a migration");
		acc->channels++;
		return 0;
	}
	return -ENOSPC;
}

/* ---- replies routed to the client that asked ---- */

#define SESSION_QUERY_TTL_MS 30000

static void irc_casefold_copy(char *out, size_t n, const char *in)
{
	snprintf(out, n, "%s", in);
	irc_casefold(out);
}

/* A channel by CHANTYPES (default "#&"). */
static bool session_is_channel(const struct session *s, const char *name)
{
	const char *types = session_isupport(s, "CHANTYPES");

	return name[0] && strchr(types && types[0] ? types : "#&", name[0]) != NULL;
}

static void query_pop(struct session *s)
{
	if (s->nqueries == 0)
		return;
	memmove(s->queries, s->queries + 1, (s->nqueries - 1) * sizeof(*s->queries));
	if (--s->nqueries == 0) {
		free(s->queries);
		s->queries = NULL;
	}
}

void session_query_note(struct session *s, uint64_t serial, const struct irc_msg *m)
{
	enum session_query_kind kind = 0;
	const char *target = NULL;
	const char *cmd = m->command;

	if (strcasecmp(cmd, "WHO") == 0)
		kind = SESSION_QUERY_WHO, target = m->nparams ? m->params[0] : "*";
	else if (strcasecmp(cmd, "NAMES") == 0 && m->nparams >= 1)
		kind = SESSION_QUERY_NAMES, target = m->params[0];
	else if (strcasecmp(cmd, "WHOIS") == 0 && m->nparams >= 1)
		kind = SESSION_QUERY_WHOIS, target = m->params[m->nparams - 1];
	else if (strcasecmp(cmd, "MODE") == 0 && m->nparams == 1 &&
		 session_is_channel(s, m->params[0]))
		kind = SESSION_QUERY_MODE, target = m->params[0];
	else if (strcasecmp(cmd, "TOPIC") == 0 && m->nparams == 1)
		kind = SESSION_QUERY_TOPIC, target = m->params[0];
	/* a list (a,b) gets several answers: not routed, as before */
	if (!kind || !target[0] || strchr(target, ',') || strlen(target) >= 64 ||
	    s->nqueries >= SESSION_MAX_QUERIES)
		return;
	struct session_query *grown = realloc(s->queries, (s->nqueries + 1) * sizeof(*grown));

	if (grown == NULL)
		return; /* util.h policy: routing is an optimization; replies go to everyone */
	s->queries = grown;
	struct session_query *q = &s->queries[s->nqueries++];

	q->client_serial = serial;
	q->kind = kind;
	irc_casefold_copy(q->target, sizeof(q->target), target);
	q->sent_ms = clock_mono_ms();
}

static struct client *query_client(struct session *s, uint64_t serial)
{
	for (size_t i = 0; i < s->nclients; i++)
		if (s->clients[i]->serial == serial)
			return s->clients[i];
	return NULL;
}

/* The numeric's role for a kind: 1 a reply within, 2 the last one (its
 * target in params[1]), 0 not this kind's. */
static int query_numeric_role(enum session_query_kind kind, int num)
{
	switch (kind) {
	case SESSION_QUERY_WHO:
		return num == 352 || num == 354 ? 1 : num == 315 ? 2 : 0;
	case SESSION_QUERY_NAMES:
		return num == 353 ? 1 : num == 366 ? 2 : 0;
	case SESSION_QUERY_WHOIS:
		return (num >= 311 && num <= 313) || num == 317 || num == 319 ||
		       num == 301 || num == 307 || num == 310 || num == 320 ||
		       num == 330 || num == 335 || num == 338 || num == 378 ||
		       num == 379 || num == 671 || num == 276 || num == 401 ? 1
		       : num == 318 ? 2 : 0;
	case SESSION_QUERY_MODE:
		return num == 324 ? 2 : 0;
	case SESSION_QUERY_TOPIC:
		return num == 331 || num == 332 ? 2 : 0;
	}
	return 0;
}

int session_reply_route(struct session *s, const struct irc_msg *m, struct client **only)
{
	const char *cmd = m->command;
	int num, role;
	char target[64];

	*only = NULL;
	if (strlen(cmd) != 3 || !isdigit((unsigned char)cmd[0]) ||
	    !isdigit((unsigned char)cmd[1]) || !isdigit((unsigned char)cmd[2])) {
		s->reply_follow_serial = 0;
		return 0;
	}
	num = atoi(cmd);
	if ((num == 329 || num == 333) && s->reply_follow_serial) {
		uint64_t serial = s->reply_follow_serial;

		s->reply_follow_serial = 0;
		*only = query_client(s, serial);
		return *only ? 1 : 2;
	}
	s->reply_follow_serial = 0;
	while (s->nqueries && clock_mono_ms() - s->queries[0].sent_ms > SESSION_QUERY_TTL_MS)
		query_pop(s); /* never answered (or not as expected) */
	if (s->nqueries == 0)
		return 0;
	struct session_query *q = &s->queries[0];

	role = query_numeric_role(q->kind, num);
	/* An error for the queried target ends it (403 no such channel, 442
	 * not on channel, 476 bad mask, 402 no such server...). */
	if (!role && num >= 400 && num < 600 && m->nparams >= 2) {
		irc_casefold_copy(target, sizeof(target), m->params[1]);
		if (strcmp(target, q->target) != 0)
			return 0;
		role = 2;
	}
	if (!role)
		return 0;
	if (role == 2) {
		/* the last reply names what was asked: otherwise the queue is
		 * out of step with the network and the line goes to everyone */
		irc_casefold_copy(target, sizeof(target), m->nparams >= 2 ? m->params[1] : "");
		if (strcmp(target, q->target) != 0)
			return 0;
	}
	uint64_t serial = q->client_serial;

	*only = query_client(s, serial);
	if (role == 2) {
		query_pop(s);
		if (num == 324 || num == 332)
			s->reply_follow_serial = serial;
	}
	return *only ? 1 : 2;
}
