/* sessiond/session.c: sessions (one user on one network), their channel
 * state, delivery positions and relay to attached clients. */
#include "sessiond/session.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "common/config.h"
#include "common/log.h"
#include "common/strmap.h"
#include "sessiond/backlog.h"
#include "sessiond/conn.h"
#include "sessiond/irc.h"
#include "sessiond/names.h"

/* ---- small helpers shared by the core ---- */

int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void format_server_time(int64_t ms, char out[32])
{
	time_t sec = (time_t)(ms / 1000);
	struct tm tm;
	char tmp[96];
	gmtime_r(&sec, &tm);
	snprintf(tmp, sizeof(tmp), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
		 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		 tm.tm_min, tm.tm_sec, (int)(ms % 1000));
	snprintf(out, 32, "%.31s", tmp);
}

int parse_server_time(const char *s, int64_t *ms)
{
	struct tm tm;
	int frac = 0, nfrac = 0;

	memset(&tm, 0, sizeof(tm));
	const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!p)
		return -1;
	if (*p == '.') {
		p++;
		while (*p >= '0' && *p <= '9') {
			if (nfrac < 3) {
				frac = frac * 10 + (*p - '0');
				nfrac++;
			}
			p++;
		}
		while (nfrac < 3) {
			frac *= 10;
			nfrac++;
		}
	}
	if (*p != 'Z' && *p != '\0')
		return -1;
	*ms = (int64_t)timegm(&tm) * 1000 + frac;
	return 0;
}

char *xstrdup(const char *s)
{
	return s ? strdup(s) : NULL;
}

void strv_free(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

int strv_push(char ***v, size_t *n, const char *s)
{
	char **nv = realloc(*v, (*n + 1) * sizeof(char *));
	if (!nv)
		return -ENOMEM;
	*v = nv;
	nv[*n] = strdup(s);
	if (!nv[*n])
		return -ENOMEM;
	(*n)++;
	return 0;
}

/* ---- channels ---- */

void channel_free(struct channel *ch)
{
	if (!ch)
		return;
	channel_clear_members(ch);
	free(ch->members);
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
	struct channel **nv = realloc(s->channels, (s->nchannels + 1) * sizeof(*nv));
	if (!nv)
		return NULL;
	s->channels = nv;
	ch = calloc(1, sizeof(*ch));
	if (!ch || !(ch->name = strdup(name))) {
		free(ch);
		return NULL;
	}
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

static void member_key(char *out, size_t n, const char *nick)
{
	size_t len = strnlen(nick, n - 1);

	memcpy(out, nick, len);
	out[len] = '\0';
	irc_casefold(out);
}

struct member *channel_find_member(struct channel *ch, const char *nick)
{
	char key[NAMES_MAX_LEN + 1];
	size_t at;

	if (ch->member_index == NULL)
		return NULL;
	member_key(key, sizeof(key), nick);
	at = (size_t)(uintptr_t)strmap_get(ch->member_index, key);
	return at > 0 ? &ch->members[at - 1] : NULL;
}

struct member *channel_add_member(struct channel *ch, const char *nick)
{
	struct member *m = channel_find_member(ch, nick);
	char key[NAMES_MAX_LEN + 1];

	if (m)
		return m;
	if (ch->member_index == NULL && !(ch->member_index = strmap_new()))
		return NULL;
	if (ch->nmembers == ch->cap) {
		size_t cap = ch->cap ? ch->cap * 2 : 8;
		struct member *nv = realloc(ch->members, cap * sizeof(*nv));
		if (!nv)
			return NULL;
		ch->members = nv;
		ch->cap = cap;
	}
	m = &ch->members[ch->nmembers];
	memset(m, 0, sizeof(*m));
	if (!(m->nick = strdup(nick)))
		return NULL;
	member_key(key, sizeof(key), nick);
	if (strmap_put(ch->member_index, key,
		       (void *)(uintptr_t)(ch->nmembers + 1)) < 0) {
		free(m->nick);
		return NULL;
	}
	ch->nmembers++;
	return m;
}

void channel_remove_member(struct channel *ch, const char *nick)
{
	struct member *m = channel_find_member(ch, nick);
	struct member *last;
	char key[NAMES_MAX_LEN + 1];

	if (m == NULL)
		return;
	member_key(key, sizeof(key), m->nick);
	strmap_del(ch->member_index, key);
	free(m->nick);
	last = &ch->members[ch->nmembers - 1];
	if (m != last) {
		*m = *last; /* swap the last one in; its index changes */
		member_key(key, sizeof(key), m->nick);
		strmap_put(ch->member_index, key,
			   (void *)(uintptr_t)(m - ch->members + 1));
	}
	ch->nmembers--;
}

void channel_clear_members(struct channel *ch)
{
	for (size_t j = 0; j < ch->nmembers; j++)
		free(ch->members[j].nick);
	ch->nmembers = 0;
	strmap_free(ch->member_index);
	ch->member_index = NULL;
}

int channel_rename_member(struct channel *ch, struct member *m,
			  const char *nick)
{
	struct member *other = channel_find_member(ch, nick);
	char key[NAMES_MAX_LEN + 1];
	char *copy;
	size_t at = (size_t)(m - ch->members) + 1;

	if (other != NULL && other != m) {
		/* The new nick is already listed (a desync): keep that one. */
		channel_remove_member(ch, m->nick);
		return 0;
	}
	copy = strdup(nick);
	if (copy == NULL)
		return -ENOMEM;
	member_key(key, sizeof(key), m->nick);
	strmap_del(ch->member_index, key);
	free(m->nick);
	m->nick = copy;
	member_key(key, sizeof(key), nick);
	return strmap_put(ch->member_index, key, (void *)(uintptr_t)at);
}

/* ---- session ---- */

/* The reconnect deadline passed: ask the network's governor for a slot
 * (bouncer.c connects the session when it is granted one). Without a
 * governor (a bouncer without config: unit tests) connect at once. */
static void session_reconnect_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;
	int rc;

	if (s->up) {
		s->reconnect_at_ms = 0;
		return;
	}
	if (bouncer_governor(s->b, s->network)) {
		if (!s->reconnect_at_ms)
			s->reconnect_at_ms = now_ms();
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
	s->user = strdup(user);
	s->network = strdup(network);
	size_t klen = strlen(user) + strlen(network) + 2;
	s->key = malloc(klen);
	s->backlog = backlog_new(cfg && cfg->backlog_lines > 0 ? (size_t)cfg->backlog_lines : 500);
	s->reconnect_timer = evtimer_new(bouncer_base(b), session_reconnect_cb, s);
	if (!s->user || !s->network || !s->key || !s->backlog || !s->reconnect_timer) {
		session_free(s);
		return NULL;
	}
	snprintf(s->key, klen, "%s/%s", user, network);
	return s;
}

void session_free(struct session *s)
{
	if (!s)
		return;
	struct governor *g = bouncer_governor(s->b, s->network);
	if (g)
		governor_cancel(g, &s->gov_wait);
	upstream_free(s->up);
	for (size_t i = 0; i < s->nclients; i++)
		client_free(s->clients[i]);
	free(s->clients);
	for (size_t i = 0; i < s->nchannels; i++)
		channel_free(s->channels[i]);
	free(s->channels);
	for (size_t i = 0; i < s->npositions; i++)
		free(s->positions[i].client_id);
	free(s->positions);
	strv_free(s->isupport, s->nisupport);
	strv_free(s->caps, s->ncaps);
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
	int64_t d = at_ms - now_ms();
	if (d < 0)
		d = 0;
	struct timeval tv = { .tv_sec = d / 1000, .tv_usec = (d % 1000) * 1000 };
	evtimer_add(s->reconnect_timer, &tv);
}

void session_backoff(struct session *s)
{
	const struct baton_config *cfg = bouncer_config(s->b);
	int64_t min = cfg && cfg->reconnect_min_s > 0 ? cfg->reconnect_min_s : 2;
	int64_t max = cfg && cfg->reconnect_max_s > 0 ? cfg->reconnect_max_s : 300;
	int64_t delay = governor_backoff_ms(s->reconnect_failures, min * 1000,
					    max * 1000, (uint32_t)random());
	session_schedule_connect(s, now_ms() + delay);
}

void session_arm(struct session *s)
{
	s->item.state = ITEM_LIVE;
	if (s->up)
		upstream_arm(s->up);
	for (size_t i = 0; i < s->nclients; i++) {
		conn_arm(s->clients[i]->conn);
		client_resume(s->clients[i]);
	}
	if (!s->up && s->reconnect_at_ms)
		session_schedule_connect(s, s->reconnect_at_ms);
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
	s->clients[s->nclients++] = cl;
	cl->s = s;
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
	session_detach_client(s, cl, conn_close_reason(cl->conn) ?
				     conn_close_reason(cl->conn) : "quit");
	conn_discard_unacked(cl->conn);
	client_free(cl);
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

void session_set_position(struct session *s, const char *client_id,
			  uint64_t seq)
{
	for (size_t i = 0; i < s->npositions; i++) {
		if (strcmp(s->positions[i].client_id, client_id) == 0) {
			s->positions[i].seq = seq;
			return;
		}
	}
	struct position *nv = realloc(s->positions, (s->npositions + 1) * sizeof(*nv));
	if (!nv)
		return;
	s->positions = nv;
	nv[s->npositions].client_id = strdup(client_id);
	if (!nv[s->npositions].client_id)
		return;
	nv[s->npositions].seq = seq;
	s->npositions++;
}

void session_advance_position(struct session *s, const char *client_id,
			      uint64_t seq)
{
	if (seq > session_position(s, client_id))
		session_set_position(s, client_id, seq);
}

void session_broadcast(struct session *s, const char *line, int64_t time_ms,
		       struct client *except)
{
	for (size_t i = 0; i < s->nclients; i++)
		if (s->clients[i] != except)
			client_send_tagged(s->clients[i], line, time_ms);
}

void session_store_and_relay(struct session *s, const char *buffer,
			     const char *line, int64_t time_ms,
			     struct client *except)
{
	if (!time_ms)
		time_ms = now_ms();
	uint64_t seq = backlog_append(s->backlog, buffer, time_ms, line);
	if (!seq) {
		/* Out of memory: still relay live, unnumbered. */
		session_broadcast(s, line, time_ms, except);
		return;
	}
	for (size_t i = 0; i < s->nclients; i++) {
		struct client *cl = s->clients[i];
		if (cl == except)
			client_skip(cl, seq); /* the sender has it */
		else
			client_deliver(cl, seq, line, time_ms);
	}
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
