/* sessiond/client.c: IRC client connections: registration (CAP, PASS, NICK,
 * USER), authentication, attach (welcome burst from state + backlog replay)
 * and the commands of an attached client. */
#include "sessiond/session.h"
#include "common/clock.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/config.h"
#include "common/log.h"
#include "common/names.h"
#include "sessiond/authpool.h"
#include "sessiond/bouncer_networks.h"
#include "sessiond/backlog.h"
#include "sessiond/conn.h"
#include "sessiond/chathistory.h"
#include "sessiond/health.h"
#include "sessiond/history.h"
#include "sessiond/irc.h"
#include "sessiond/sasl_mech.h"
#include "sessiond/service.h"
#include "sessiond/stdreply.h"

/* Capabilities offered to clients, defined once (canonical order is the
 * order here; state.c serializes in it). */
static const struct {
	const char *name;
	unsigned bit;
} client_caps[] = {
	{ "server-time", CLIENT_CAP_SERVER_TIME },
	{ "multi-prefix", CLIENT_CAP_MULTI_PREFIX },
	{ "echo-message", CLIENT_CAP_ECHO_MESSAGE },
	{ "away-notify", CLIENT_CAP_AWAY_NOTIFY },
	{ "userhost-in-names", CLIENT_CAP_USERHOST_IN_NAMES },
	{ "message-tags", CLIENT_CAP_MESSAGE_TAGS },
	{ "account-notify", CLIENT_CAP_ACCOUNT_NOTIFY },
	{ "extended-join", CLIENT_CAP_EXTENDED_JOIN },
	{ "chghost", CLIENT_CAP_CHGHOST },
	{ "setname", CLIENT_CAP_SETNAME },
	{ "invite-notify", CLIENT_CAP_INVITE_NOTIFY },
	{ "sasl", CLIENT_CAP_SASL },
	{ "cap-notify", CLIENT_CAP_CAP_NOTIFY },
	{ "batch", CLIENT_CAP_BATCH },
	{ "soju.im/bouncer-networks", CLIENT_CAP_BOUNCER_NETWORKS },
	{ "soju.im/bouncer-networks-notify", CLIENT_CAP_BOUNCER_NETWORKS_NOTIFY },
	{ "standard-replies", CLIENT_CAP_STANDARD_REPLIES },
	{ "draft/chathistory", CLIENT_CAP_CHATHISTORY },
	{ "draft/read-marker", CLIENT_CAP_READ_MARKER },
	{ "labeled-response", CLIENT_CAP_LABELED_RESPONSE },
};
#define STORE_CAPS (CLIENT_CAP_CHATHISTORY | CLIENT_CAP_READ_MARKER)
#define NCLIENT_CAPS (sizeof(client_caps) / sizeof(client_caps[0]))
/* Targets of one PRIVMSG/NOTICE stored in the backlog (more are sent to
 * the network, which enforces its own TARGMAX, but not stored). */
#define CLIENT_MAX_TARGETS 16

size_t client_caps_names(unsigned caps, const char **names, size_t max)
{
	size_t n = 0;
	for (size_t i = 0; i < NCLIENT_CAPS && n < max; i++)
		if (caps & client_caps[i].bit)
			names[n++] = client_caps[i].name;
	return n;
}

unsigned client_cap_from_name(const char *name)
{
	for (size_t i = 0; i < NCLIENT_CAPS; i++)
		if (strcmp(name, client_caps[i].name) == 0)
			return client_caps[i].bit;
	return 0;
}

struct client *client_new(struct bouncer *b, int fd)
{
	struct client *cl = calloc(1, sizeof(*cl));
	if (!cl) {
		close(fd);
		return NULL;
	}
	cl->b = b;
	cl->item.kind = ITEM_PENDING;
	cl->item.client = cl;
	cl->connected_at_ms = cl->last_rx_ms = clock_mono_ms();
	cl->conn = conn_new(bouncer_base(b), fd, false, &client_conn_ops, cl);
	if (!cl->conn) {
		free(cl);
		return NULL;
	}
	conn_set_health(cl->conn, &bouncer_health(b)->client_link);
	return cl;
}

void client_free(struct client *cl)
{
	if (!cl)
		return;
	/* What it holds in the bouncer's counters and tables. */
	bouncer_tls_handshake_end(cl->b, cl);
	bouncer_auth_cancel(cl->b, cl);
	bouncer_login_drop(cl->b, cl, false); /* a charge stays */
	service_client_gone(cl);
	bouncer_networks_client_gone(cl);
	if (cl->pending_counted)
		bouncer_forget_pending(cl->b, cl);
	history_client_forget(bouncer_history(cl->b), cl);
	chathistory_client_forget(cl);
	conn_release(cl->conn);
	free(cl->pass);
	free(cl->sasl_in);
	free(cl->nick);
	free(cl->user);
	free(cl->client_id);
	free(cl->fwd_user);
	free(cl->fwd_network);
	free(cl->closing_key);
	if (cl->close_timer)
		event_free(cl->close_timer);
	free(cl->item.fds);
	free(cl->marks);
	free(cl->own_seqs);
	pb_unknown_clear(&cl->unknown);
	free(cl);
}

static const char *client_srv(const struct client *cl)
{
	return cl->s && cl->s->server_name ? cl->s->server_name : BATON_SERVER_NAME;
}

static const char *client_nick(const struct client *cl)
{
	if (cl->s && cl->s->nick)
		return cl->s->nick;
	return cl->nick ? cl->nick : "*";
}

void client_send_tagged(struct client *cl, const char *line, int64_t time_ms)
{
	client_send_full(cl, NULL, line, time_ms);
}

void client_send_full(struct client *cl, const char *tags, const char *line,
		      int64_t time_ms)
{
	if (cl->relay_tag) {
		/* The answer to its labeled command: our tag first, then
		 * what it would get otherwise, within the bounds (else our
		 * tag and @time alone: the client finds its answer). */
		bool net = (cl->caps & CLIENT_CAP_MESSAGE_TAGS) && tags && tags[0];
		bool add_time = (cl->caps & CLIENT_CAP_SERVER_TIME) &&
				!(net && irc_tag_get(tags, "time", NULL, 0));
		char ts[32] = "";
		size_t tl;

		if (add_time)
			clock_format_server_time(time_ms ? time_ms : clock_wall_ms(), ts);
		tl = 1 + strlen(cl->relay_tag) + (net ? 1 + strlen(tags) : 0) +
		     (add_time ? 6 + strlen(ts) : 0) + 1;
		if (tl > IRC_MAX_TAGS || tl + strlen(line) + 2 > HEALTH_CLIENT_LINE_MAX) {
			net = false;
			add_time = cl->caps & CLIENT_CAP_SERVER_TIME;
			if (add_time)
				clock_format_server_time(time_ms ? time_ms : clock_wall_ms(), ts);
		}
		conn_sendf(cl->conn, "@%s%s%s%s%s %s", cl->relay_tag, net ? ";" : "",
			   net ? tags : "", add_time ? ";time=" : "", add_time ? ts : "", line);
		return;
	}
	if ((cl->caps & CLIENT_CAP_MESSAGE_TAGS) && tags && tags[0]) {
		/* The network's tags as they came (message-tags), with our
		 * @time if the client asked for server-time and they have
		 * none; within the bounds of a line (else the tags go and
		 * the plain form below is sent). */
		bool add_time = (cl->caps & CLIENT_CAP_SERVER_TIME) &&
				!irc_tag_get(tags, "time", NULL, 0);
		size_t tl = 1 + strlen(tags) + (add_time ? 30 : 0) + 1;
		/* the whole line with CRLF within what a client takes (8191
		 * of tags + 512: health.h, one less than CONN_MAX_LINE) */
		if (tl <= IRC_MAX_TAGS && tl + strlen(line) + 2 <= HEALTH_CLIENT_LINE_MAX) {
			char ts[32];
			if (!add_time) {
				conn_sendf(cl->conn, "@%s %s", tags, line);
				return;
			}
			clock_format_server_time(time_ms ? time_ms : clock_wall_ms(), ts);
			conn_sendf(cl->conn, "@%s;time=%s %s", tags, ts, line);
			return;
		}
	}
	if (cl->caps & CLIENT_CAP_SERVER_TIME) {
		char ts[32];
		clock_format_server_time(time_ms ? time_ms : clock_wall_ms(), ts);
		conn_sendf(cl->conn, "@time=%s %s", ts, line);
	} else {
		conn_send(cl->conn, line);
	}
}

/* ---- labeled-response ----
 * The replies to a labeled command are what was queued to the client
 * while baton handled it (client_label_begin() .. _end(): one synchronous
 * step, so nothing was written meanwhile and nothing else was queued to
 * this client): taken back from the output (conn_take_queued()) and queued
 * again labeled. Delivery marks among them move with their lines. */

void client_label_begin(struct client *cl, const char *label)
{
	cl->label[0] = '\0';
	cl->label_forwarded = cl->label_async = false;
	if (!label || !label[0] ||
	    (cl->caps & (CLIENT_CAP_LABELED_RESPONSE | CLIENT_CAP_BATCH)) !=
		    (CLIENT_CAP_LABELED_RESPONSE | CLIENT_CAP_BATCH) ||
	    strlen(label) > CLIENT_LABEL_MAX)
		return;
	memcpy(cl->label, label, strlen(label) + 1);
	cl->label_from = conn_bytes_queued(cl->conn);
}

/* Whether a tag section (n bytes after the '@') has a batch tag. */
static bool label_has_batch(const char *tags, size_t n)
{
	for (size_t i = 0; i < n;) {
		size_t tl = 0;
		while (i + tl < n && tags[i + tl] != ';')
			tl++;
		if (tl >= 5 && strncmp(tags + i, "batch", 5) == 0 &&
		    (tl == 5 || tags[i + 5] == '='))
			return true;
		i += tl + 1;
	}
	return false;
}

/* line with `tag` ("key=value") added to its tag section; when that would
 * pass what a client takes, its other tags are left out (ours matter for
 * the client to find its answer). */
static void label_queue(struct client *cl, const char *tag, const char *line,
			size_t n)
{
	char buf[CONN_MAX_LINE + 1];
	size_t tl = strlen(tag);

	if (n && line[0] == '@') {
		const char *sp = memchr(line, ' ', n);
		size_t rest = n - 1;
		if (sp && strncmp(tag, "batch=", 6) == 0 &&
		    label_has_batch(line + 1, (size_t)(sp - line) - 1)) {
			/* the line of a batch nested in ours (its BATCH +
			 * has our tag): one batch per line */
			snprintf(buf, sizeof(buf), "%.*s", (int)n, line);
			conn_send(cl->conn, buf);
			return;
		}
		if (sp && n + tl + 1 + 2 <= HEALTH_CLIENT_LINE_MAX &&
		    (size_t)(sp - line) + tl + 1 <= IRC_MAX_TAGS) {
			snprintf(buf, sizeof(buf), "@%s;%.*s", tag, (int)rest, line + 1);
			conn_send(cl->conn, buf);
			return;
		}
		if (!sp)
			return; /* tags without a message: not a line */
		n -= (size_t)(sp + 1 - line);
		line = sp + 1;
	}
	snprintf(buf, sizeof(buf), "@%s %.*s", tag, (int)n, line);
	conn_send(cl->conn, buf);
}

/* "label" batches: unique per process is enough. */
static unsigned long next_label_batch;

void client_label_end(struct client *cl, bool ack)
{
	char *out = NULL, tag[CLIENT_LABEL_MAX + 16], id[24];
	size_t len = 0, nlines = 0;
	uint64_t from = cl->label_from;

	if (!cl->label[0])
		return;
	snprintf(tag, sizeof(tag), "label=%s", cl->label);
	cl->label[0] = '\0';
	/* The answer is to come (CHATHISTORY, an edit through the
	 * supervisor) and carries the label then: what was said now (an
	 * echo) stays unlabeled, so that one logical message has it. */
	if (cl->label_async)
		return;
	if (conn_is_dead(cl->conn) || conn_take_queued(cl->conn, from, &out, &len) < 0)
		return; /* gone, written (a close) or no memory: as it was */
	for (size_t i = 0; i + 1 < len; i++)
		if (out[i] == '\r' && out[i + 1] == '\n')
			nlines++;
	if (nlines == 0) {
		if (ack && !cl->label_forwarded)
			conn_sendf(cl->conn, "@%s :%s ACK", tag, client_srv(cl));
		free(out);
		return;
	}
	/* The marks of lines among them (client_queue_line(): echoes) point
	 * into the old bytes: each moves to where its line ends now. */
	size_t m0 = cl->nmarks;
	while (m0 > 0 && cl->marks[cl->mark_head + m0 - 1].end > from)
		m0--;
	if (nlines > 1) {
		snprintf(id, sizeof(id), "L%lu", ++next_label_batch);
		conn_sendf(cl->conn, "@%s :%s BATCH +%s labeled-response", tag,
			   client_srv(cl), id);
		snprintf(tag, sizeof(tag), "batch=%s", id);
	}
	uint64_t old_end = from;
	for (size_t i = 0; i < len;) {
		const char *e = out + i;
		size_t n = 0;
		while (i + n + 1 < len && !(e[n] == '\r' && e[n + 1] == '\n'))
			n++;
		label_queue(cl, tag, e, n);
		i += n + 2;
		old_end += n + 2;
		for (size_t k = m0; k < cl->nmarks; k++) {
			struct delivery_mark *mk = &cl->marks[cl->mark_head + k];
			if (mk->end == old_end) {
				mk->end = conn_bytes_queued(cl->conn);
				m0 = k + 1;
			}
		}
	}
	if (nlines > 1)
		conn_sendf(cl->conn, ":%s BATCH -%s", client_srv(cl), id);
	free(out);
}

#define STR_OF_(x) #x
#define STR_OF(x) STR_OF_(x)

/* ---- the store's capabilities, told as they come and go ---- */

bool client_store_caps_available(const struct bouncer *b)
{
	struct history *h = bouncer_history(b);

	return h && history_available(h);
}

static void store_caps_tell(struct client *cl, bool now)
{
	/* A client migrated here had its offer in the old worker (not
	 * serialized): what it enabled tells at least that much. */
	bool was = cl->store_caps_offered || (cl->caps & STORE_CAPS);

	if (was == now || conn_is_dead(cl->conn))
		return;
	cl->store_caps_offered = now;
	if (!now)
		cl->caps &= ~STORE_CAPS; /* lost with the offer */
	if (!(cl->caps & CLIENT_CAP_CAP_NOTIFY))
		return;
	/* Before the CAP LS reply nothing was offered: nothing to change. */
	conn_sendf(cl->conn, ":%s CAP %s %s :draft/chathistory draft/read-marker",
		   BATON_SERVER_NAME, client_nick(cl), now ? "NEW" : "DEL");
}

void client_store_caps_refresh(struct bouncer *b)
{
	struct bouncer_item **items;
	size_t n = bouncer_items(b, &items);
	bool now = client_store_caps_available(b);

	for (size_t i = 0; i < n; i++) {
		struct bouncer_item *it = items[i];
		if (it->state != ITEM_LIVE)
			continue;
		if (it->kind == ITEM_PENDING) {
			/* told only once it asked CAP LS (cap_negotiating or
			 * cap_302 set it) */
			if (it->client->cap_negotiating || it->client->cap_302)
				store_caps_tell(it->client, now);
			continue;
		}
		for (size_t k = 0; k < it->session->nclients; k++) {
			struct client *cl = it->session->clients[k];

			store_caps_tell(cl, now);
			/* Registered clients were told CHATHISTORY (or not) in
			 * their 005 burst (send_isupport()): told again, to
			 * every one (called on a change only; a "-TOKEN" of
			 * what a client never had is harmless, and whether a
			 * client migrated here had it is not known). */
			if (cl->phase == CLIENT_ATTACHED && !conn_is_dead(cl->conn))
				conn_sendf(cl->conn, ":%s 005 %s %s :are supported by this server",
					   client_srv(cl), client_nick(cl),
					   now ? "CHATHISTORY=" STR_OF(CHATHISTORY_LIMIT)
						 " MSGREFTYPES=timestamp,msgid"
					       : "-CHATHISTORY -MSGREFTYPES");
		}
	}
	free(items);
}

/* ---- delivery accounting ----
 * delivered_seq says what was queued (so nothing is queued twice);
 * acked_seq says what the peer's TCP acknowledged, which is what a detach
 * stores as the client's position. Between the two, one mark per line. */

int client_mark_push(struct client *cl, uint64_t end, uint64_t seq)
{
	if (cl->nmarks) {
		struct delivery_mark *last = &cl->marks[cl->mark_head + cl->nmarks - 1];
		if (last->end == end) { /* nothing queued in between: same fate */
			last->seq = seq;
			return 0;
		}
	}
	if (cl->mark_head + cl->nmarks == cl->mark_cap) {
		/* Drop what the peer acknowledged first (one SIOCOUTQ per full
		 * array): otherwise a client that reads everything would keep
		 * a mark per line ever sent until its next detach or migration.
		 * What stays is bounded by the unacknowledged output (sendq). */
		if (cl->conn)
			(void)client_acked_seq(cl);
		if (cl->mark_head > 0) {
			memmove(cl->marks, cl->marks + cl->mark_head,
				cl->nmarks * sizeof(cl->marks[0]));
			cl->mark_head = 0;
		}
		if (cl->nmarks == cl->mark_cap) {
			size_t cap = cl->mark_cap ? cl->mark_cap * 2 : 64;
			struct delivery_mark *nv = realloc(cl->marks, cap * sizeof(*nv));
			if (!nv)
				return -ENOMEM;
			cl->marks = nv;
			cl->mark_cap = cap;
		}
	}
	cl->marks[cl->mark_head + cl->nmarks++] = (struct delivery_mark){ end, seq };
	return 0;
}

uint64_t client_acked_seq(struct client *cl)
{
	return client_acked_seq_upto(cl, conn_bytes_acked(cl->conn));
}

uint64_t client_acked_seq_upto(struct client *cl, uint64_t acked)
{
	while (cl->nmarks && cl->marks[cl->mark_head].end <= acked) {
		uint64_t seq = cl->marks[cl->mark_head].seq;
		if (seq > cl->acked_seq)
			cl->acked_seq = seq;
		cl->mark_head++;
		cl->nmarks--;
	}
	if (!cl->nmarks)
		cl->mark_head = 0;
	return cl->acked_seq;
}

/* msgid (history.h: the store's, from the line's seq) first, then the
 * network's tags without a msgid of its own (one msgid per line, the one
 * CHATHISTORY knows). Returns tags when there is nothing to add or no
 * room. */
static const char *client_msgid_tags(const struct client *cl, uint64_t seq,
				     const char *tags, char *buf, size_t n)
{
	struct history *h = cl->s ? bouncer_history(cl->s->b) : NULL;
	char id[STORE_MSGID_TAG_LEN];
	size_t len;

	if (!h || !(cl->caps & CLIENT_CAP_MESSAGE_TAGS))
		return tags;
	history_msgid(h, seq, id);
	if (!id[0])
		return tags;
	len = (size_t)snprintf(buf, n, "msgid=%s", id);
	for (const char *p = tags; p && *p;) {
		const char *end = strchr(p, ';');
		size_t tl = end ? (size_t)(end - p) : strlen(p);
		bool theirs = (tl == 5 || (tl > 5 && p[5] == '=')) &&
			      strncmp(p, "msgid", 5) == 0;
		if (tl && !theirs) {
			if (len + 1 + tl + 1 > n)
				return tags;
			buf[len++] = ';';
			memcpy(buf + len, p, tl);
			len += tl;
			buf[len] = '\0';
		}
		p = end ? end + 1 : p + tl;
	}
	return buf;
}

static unsigned client_queue_line(struct client *cl, uint64_t seq,
				  const char *tags, const char *line,
				  int64_t time_ms, unsigned copies)
{
	char tagbuf[IRC_MAX_TAGS + 1];

	if (seq <= cl->delivered_seq)
		return 0; /* already queued to this client */
	tags = client_msgid_tags(cl, seq, tags, tagbuf, sizeof(tagbuf));
	for (unsigned k = 0; k < copies; k++) /* 1 (2: the dup fault build) */
		client_send_full(cl, tags, line, time_ms);
	/* A dead connection (e.g. sendq exceeded by this very line) did not
	 * take it: the position must not claim it was delivered. */
	if (conn_is_dead(cl->conn))
		return 0;
	cl->delivered_seq = seq;
	(void)client_mark_push(cl, conn_bytes_queued(cl->conn), seq); /* ENOMEM: lags only */
	return copies;
}

static void client_skip_now(struct client *cl, uint64_t seq)
{
	if (seq <= cl->delivered_seq)
		return;
	cl->delivered_seq = seq;
	(void)client_mark_push(cl, conn_bytes_queued(cl->conn), seq); /* ENOMEM: lags only */
}

unsigned client_deliver(struct client *cl, uint64_t seq, const char *tags,
			const char *line, int64_t time_ms, unsigned copies)
{
	if (cl->replaying)
		return copies ? 1 : 0; /* stored: the pump sends it in seq order */
	return client_queue_line(cl, seq, tags, line, time_ms, copies);
}

void client_skip(struct client *cl, uint64_t seq)
{
	if (!cl->replaying) {
		client_skip_now(cl, seq);
		return;
	}
	/* Lines before seq are not queued yet: moving delivered_seq now
	 * would skip them. The pump skips seq when it gets there. */
	if (seq <= cl->delivered_seq ||
	    (cl->nown && cl->own_seqs[cl->own_head + cl->nown - 1] >= seq))
		return;
	if (cl->own_head + cl->nown == cl->own_cap) {
		if (cl->own_head > 0) {
			memmove(cl->own_seqs, cl->own_seqs + cl->own_head,
				cl->nown * sizeof(cl->own_seqs[0]));
			cl->own_head = 0;
		}
		if (cl->nown == cl->own_cap) {
			size_t cap = cl->own_cap ? cl->own_cap * 2 : 8;
			uint64_t *nv = realloc(cl->own_seqs, cap * sizeof(*nv));
			if (!nv)
				return; /* ENOMEM: the pump sends it (an echo) */
			cl->own_seqs = nv;
			cl->own_cap = cap;
		}
	}
	cl->own_seqs[cl->own_head + cl->nown++] = seq;
}

static void client_error_close(struct client *cl, const char *numeric_line,
			       const char *reason)
{
	if (numeric_line)
		conn_send(cl->conn, numeric_line);
	conn_sendf(cl->conn, "ERROR :Closing link: %s", reason);
	conn_close(cl->conn, reason, true);
}

/* ---- QUIT: graceful close ----
 * A QUIT detaches at once with the conservative position (what the peer's
 * TCP acknowledged), so a reattach meanwhile misses nothing. The connection
 * then finishes on its own, off the session: the rest of its output and our
 * FIN after the last byte (conn_end_output()), its input read and dropped.
 * How it ends tells what the client has:
 *   EOF, with everything we wrote acknowledged: its FIN (not a RST, which
 *     a close with unread input sends) carries the acknowledgement of every
 *     byte, so its application read every queued line: position =
 *     delivered_seq. This is what delayed ACKs hid from the measure at QUIT.
 *   EOF earlier, an error, or the deadline: the acknowledged estimate again
 *     (fresh: delayed ACKs have long fired), and what the peer did not
 *     acknowledge is discarded by a RST (conn_discard_unacked()), since it
 *     will be replayed.
 * The stored position is only ever raised (session_advance_position()): a
 * new connection with the same client name may have attached and advanced
 * it meanwhile. */

#define CLIENT_CLOSE_GRACE_MS 2000

/* The best position known now: everything queued once the peer closed
 * after acknowledging every byte, else what its TCP acknowledged. */
static uint64_t client_closing_position(struct client *cl, bool *complete)
{
	struct conn *c = cl->conn;
	size_t unsent;

	(void)conn_output(c, &unsent);
	*complete = conn_peer_closed(c) && unsent == 0 &&
		    conn_bytes_acked(c) >= conn_bytes_queued(c);
	return *complete ? cl->delivered_seq : client_acked_seq(cl);
}

void client_closing_settle(struct client *cl, struct session *s)
{
	bool complete;

	if (cl->phase != CLIENT_CLOSING || cl->closing_key == NULL ||
	    strcmp(cl->closing_key, s->key) != 0)
		return;
	session_advance_position(s, cl->client_id ? cl->client_id : "default",
				 client_closing_position(cl, &complete));
}

static void client_closing_finish(struct client *cl)
{
	struct conn *c = cl->conn;
	const char *id = cl->client_id ? cl->client_id : "default";
	bool complete = false;
	uint64_t seq = client_closing_position(cl, &complete);

	if (!complete)
		conn_discard_unacked(c);
	struct session *s = bouncer_session_by_key(cl->b, cl->closing_key);
	/* A session frozen for a migration was settled at its freeze
	 * (client_closing_settle): raising it now would be lost if it
	 * moves, and is harmless if it stays. */
	if (s)
		session_advance_position(s, id, seq);
	log_debug("client", "%s: client %s closed after quit (%s, %s)",
		  cl->closing_key, id,
		  conn_close_reason(c) ? conn_close_reason(c) : "deadline",
		  complete ? "all delivered" : "acknowledged part delivered");
	bouncer_forget_closing(cl->b, cl);
	client_free(cl);
}

static void client_close_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	client_closing_finish(arg); /* from the event loop: freeing is safe */
}

void client_closing_abandon(struct client *cl)
{
	conn_discard_unacked(cl->conn);
	client_free(cl);
}

/* Runs inside cl's line callback: cl must stay allocated (it is only freed
 * from the event loop: its closed callback or its timer). */
static void client_quit(struct client *cl)
{
	struct session *s = cl->s;
	char *key = NULL;
	struct timeval tv = { .tv_sec = CLIENT_CLOSE_GRACE_MS / 1000,
			      .tv_usec = (CLIENT_CLOSE_GRACE_MS % 1000) * 1000 };

	conn_send(cl->conn, "ERROR :Closing link: quit");
	if (conn_is_dead(cl->conn))
		return; /* e.g. sendq exceeded: the ordinary detach follows */
	key = strdup(s->key);
	cl->close_timer = evtimer_new(bouncer_base(cl->b), client_close_timeout_cb, cl);
	if (!key || !cl->close_timer || bouncer_add_closing(cl->b, cl) < 0) {
		/* No memory: the immediate close (conservative position). */
		free(key);
		if (cl->close_timer)
			event_free(cl->close_timer);
		cl->close_timer = NULL;
		conn_close(cl->conn, "quit", true);
		return;
	}
	session_detach_client(s, cl, "quit"); /* cl->s = NULL */
	cl->phase = CLIENT_CLOSING;
	cl->closing_key = key; /* transferred */
	conn_end_output(cl->conn);
	evtimer_add(cl->close_timer, &tv);
}

/* ---- CAP (before and after registration) ---- */

static void client_cap(struct client *cl, struct irc_msg *m)
{
	const char *nick = cl->phase == CLIENT_ATTACHED ? client_nick(cl) : (cl->nick ? cl->nick : "*");
	char list[512] = "";

	if (m->nparams < 1)
		return;
	const char *sub = m->params[0];
	if (strcasecmp(sub, "LS") == 0) {
		bool store_ok = client_store_caps_available(cl->b);

		cl->store_caps_offered = store_ok;
		if (cl->phase == CLIENT_PENDING)
			cl->cap_negotiating = true;
		if (m->nparams >= 2 && atoi(m->params[1]) >= 302) {
			cl->cap_302 = true;
			cl->caps |= CLIENT_CAP_CAP_NOTIFY;
		}
		for (size_t i = 0; i < NCLIENT_CAPS; i++) {
			/* history needs the message store, open and
			 * not failing (client_store_caps_refresh()) */
			if ((client_caps[i].bit & STORE_CAPS) && !store_ok)
				continue;
			if (i)
				strcat(list, " ");
			strcat(list, client_caps[i].name);
			/* CAP 302 lists values: the one mechanism */
			if (client_caps[i].bit == CLIENT_CAP_SASL && m->nparams >= 2 &&
			    atoi(m->params[1]) >= 302)
				strcat(list, "=PLAIN");
		}
		conn_sendf(cl->conn, ":%s CAP %s LS :%s", BATON_SERVER_NAME, nick, list);
	} else if (strcasecmp(sub, "LIST") == 0) {
		const char *names[NCLIENT_CAPS];
		size_t n = client_caps_names(cl->caps, names, NCLIENT_CAPS);
		for (size_t i = 0; i < n; i++) {
			if (i)
				strcat(list, " ");
			strcat(list, names[i]);
		}
		conn_sendf(cl->conn, ":%s CAP %s LIST :%s", BATON_SERVER_NAME, nick, list);
	} else if (strcasecmp(sub, "REQ") == 0 && m->nparams >= 2) {
		char tmp[512];
		unsigned add = 0, del = 0;
		bool ok = true;
		if (cl->phase == CLIENT_PENDING)
			cl->cap_negotiating = true;
		snprintf(tmp, sizeof(tmp), "%s", m->params[1]);
		for (char *save = NULL, *t = strtok_r(tmp, " ", &save); t;
		     t = strtok_r(NULL, " ", &save)) {
			bool neg = t[0] == '-';
			unsigned bit = client_cap_from_name(neg ? t + 1 : t);
			if (!bit || (neg && bit == CLIENT_CAP_CAP_NOTIFY && cl->cap_302) ||
			    ((bit & STORE_CAPS) && !neg &&
			     !client_store_caps_available(cl->b)))
				ok = false;
			else if (neg)
				del |= bit;
			else
				add |= bit;
		}
		unsigned before = cl->caps;
		if (ok)
			cl->caps = (cl->caps | add) & ~del;
		conn_sendf(cl->conn, ":%s CAP %s %s :%s", BATON_SERVER_NAME, nick,
			   ok ? "ACK" : "NAK", m->params[1]);
		if (cl->caps != before) /* -notify asked once attached: the list now */
			bouncer_networks_client_update(cl, !(before & CLIENT_CAP_BOUNCER_NETWORKS_NOTIFY));
	} else if (strcasecmp(sub, "END") == 0) {
		cl->cap_negotiating = false;
	} else {
		conn_sendf(cl->conn, ":%s 410 %s %s :Invalid CAP command",
			   BATON_SERVER_NAME, nick, sub);
	}
}

/* ---- authentication ---- */

/* The hash an authentication that cannot succeed (unknown user, user
 * without a hash, malformed ident) is checked against, so that it costs one
 * crypt() like any other and its timing does not tell which user names
 * exist. "Of the same kind" as the configured hashes: the first configured
 * user's hash serves as the setting (same method and cost; the result is
 * never accepted); without any, a fixed sha512crypt hash. */
#define CLIENT_DUMMY_HASH \
	"$6$batondummysalt$KwmIOma4oCMGzduRlMKrVgjatboLhr8SgUub469aDE3U0/6EZcfuj/JZ/au8mp16D4/0tQ/sOuYylGUcMiBRz1"

static const char *dummy_hash(const struct baton_config *cfg)
{
	for (size_t i = 0; cfg && i < cfg->nusers; i++)
		if (cfg->users[i].password && cfg->users[i].password[0] == '$')
			return cfg->users[i].password;
	return CLIENT_DUMMY_HASH;
}

/* "user[@client]/network[@client]" into its parts (modifies ident). */
static int parse_ident(char *ident, char **user, char **network, char **client)
{
	char *slash = strchr(ident, '/');
	if (!slash)
		return -EINVAL;
	*slash = '\0';
	*user = ident;
	*network = slash + 1;
	*client = NULL;
	char *at = strchr(*user, '@');
	if (at) {
		*at = '\0';
		*client = at + 1;
	}
	at = strchr(*network, '@');
	if (at) {
		*at = '\0';
		*client = at + 1;
	}
	if (!**user || !**network || (*client && !**client))
		return -EINVAL;
	return 0;
}

/* The ident and password of a registration: "PASS user/network:password",
 * or "USER user/network" + "PASS password". *ident is malloc'd (NULL: no
 * ident); *password points into cl->pass. 0, or -ENOMEM (*ident NULL). */
static int client_credentials(const struct client *cl, char **ident,
			      const char **password)
{
	char *colon = cl->pass ? strchr(cl->pass, ':') : NULL;

	*ident = NULL;
	*password = NULL;
	if (colon && memchr(cl->pass, '/', (size_t)(colon - cl->pass))) {
		*ident = strndup(cl->pass, (size_t)(colon - cl->pass));
		*password = colon + 1;
	} else if (cl->user && strchr(cl->user, '/')) {
		*ident = strdup(cl->user);
		*password = cl->pass;
	} else if (cl->caps & CLIENT_CAP_BOUNCER_NETWORKS) {
		/* a user without a network: BOUNCER BIND's, or the first */
		return bouncer_networks_ident(cl, ident, password);
	} else {
		return 0;
	}
	return *ident ? 0 : -ENOMEM;
}

static void client_bad_password(struct client *cl)
{
	char bad[128];

	snprintf(bad, sizeof(bad), ":%s 464 %s :Password incorrect",
		 BATON_SERVER_NAME, cl->nick ? cl->nick : "*");
	client_error_close(cl, bad, "password incorrect");
}

static void client_try_register(struct client *cl);

/* A login that failed: a SASL attempt is answered 904 and the client may
 * try again or register otherwise (each failure counts in the throttle);
 * PASS closes with 464. */
static void client_login_failed(struct client *cl)
{
	if (!cl->sasl_checking) {
		client_bad_password(cl);
		return;
	}
	cl->sasl_checking = false;
	free(cl->pass);
	cl->pass = NULL;
	conn_sendf(cl->conn, ":%s 904 %s :SASL authentication failed", BATON_SERVER_NAME,
		   cl->nick ? cl->nick : "*");
}

/* Registration complete: check the password off the loop (authpool.h);
 * client_auth_done() goes on. Exactly one crypt() whatever fails (unknown
 * user, malformed ident: against a dummy of the configured hashes' kind),
 * so the timing does not tell which users exist. Before it, the failed-login
 * throttle: an address or user name past its free failures is refused
 * without any check until its delay is over; a login whose address or user
 * name is busy with checks in flight waits for them (bouncer_login_begin():
 * client_pending_resume() brings it back here); for a key on probation a
 * check that starts counts as a failure at once (refunded if right), so
 * parallel attempts cannot slip past the limit while checks run. Lines that
 * follow wait (conn_hold_lines()) until the result is in. */
static void client_authenticate(struct client *cl)
{
	const struct baton_config *cfg = bouncer_config(cl->b);
	char *ident = NULL;
	const char *password = NULL;
	char *user = NULL, *network, *cname;
	const char *hash;
	int64_t wait;
	int rc;

	if (client_credentials(cl, &ident, &password) < 0) {
		/* Not a failed login: nothing is counted against the user. */
		log_error("client", "login from %s refused: out of memory",
			  cl->addr[0] ? cl->addr : "?");
		client_error_close(cl, NULL, "server busy, try again later");
		return;
	}
	if (ident && parse_ident(ident, &user, &network, &cname) < 0)
		user = NULL;
	wait = bouncer_login_wait(cl->b, cl->addr, user);
	if (wait > 0) {
		char why[96];

		snprintf(why, sizeof(why), "Too many failed logins, try again in %lld s",
			 (long long)(wait + 999) / 1000);
		conn_sendf(cl->conn, "ERROR :%s", why);
		conn_close(cl->conn, "login throttled", true);
		goto out;
	}
	const struct config_user *cu = cfg && user ? config_find_user(cfg, user) : NULL;
	bool known = cu && cu->password && cu->password[0];
	hash = known ? cu->password : dummy_hash(cfg);
	rc = bouncer_login_begin(cl->b, cl, user);
	if (rc == 1) {
		conn_hold_lines(cl->conn, true);
		goto out;
	}
	if (rc == 0) {
		rc = bouncer_auth_submit(cl->b, cl, password, hash);
		if (rc < 0)
			bouncer_login_drop(cl->b, cl, true); /* never checked */
	}
	if (rc < 0) {
		log_warn("client", "login from %s refused: %s", cl->addr[0] ? cl->addr : "?",
			 rc == -EAGAIN ? "password checks queue full" : strerror(-rc));
		client_error_close(cl, NULL, "server busy, try again later");
		goto out;
	}
	conn_hold_lines(cl->conn, true);
out:
	free(ident);
}

void client_auth_done(struct client *cl, bool pass_ok)
{
	const struct baton_config *cfg = bouncer_config(cl->b);
	char *ident = NULL;
	const char *password;
	char *user = NULL, *network = NULL, *cname = NULL;

	conn_hold_lines(cl->conn, false);
	if (cl->phase != CLIENT_PENDING || conn_is_dead(cl->conn)) {
		bouncer_login_drop(cl->b, cl, false); /* no one hears of it */
		goto out;
	}
	if (client_credentials(cl, &ident, &password) < 0) {
		log_error("client", "login from %s refused: out of memory",
			  cl->addr[0] ? cl->addr : "?");
		bouncer_login_drop(cl->b, cl, true); /* not a failure of the user's */
		client_error_close(cl, NULL, "server busy, try again later");
		goto out;
	}
	if (!ident || parse_ident(ident, &user, &network, &cname) < 0) {
		bouncer_login_result(cl->b, cl, false);
		client_login_failed(cl);
		goto out;
	}
	const struct config_user *cu = cfg ? config_find_user(cfg, user) : NULL;
	bool known = cu && cu->password && cu->password[0];
	if (!known || !pass_ok) {
		/* A name as sent can be 8 KB: the log gets its start. */
		log_info("client", "authentication failed for user %.64s%s from %s", user,
			 strlen(user) > 64 ? "..." : "", cl->addr[0] ? cl->addr : "?");
		bouncer_login_result(cl->b, cl, false);
		client_login_failed(cl);
		goto out;
	}
	bouncer_login_result(cl->b, cl, true);
	if (!bouncer_find_session(cl->b, user, network) &&
	    !config_find_session(cfg, user, network)) {
		log_info("client", "user %s: no session for network %s", user, network);
		client_login_failed(cl);
		goto out;
	}
	/* Bounds of the session's state (session.h): refused clients stay
	 * pending until their close, never counted in the session. */
	if (cname && strlen(cname) > SESSION_MAX_CLIENT_NAME) {
		log_info("client", "%s/%s: client name of %zu bytes refused", user,
			 network, strlen(cname));
		client_error_close(cl, NULL, "client name too long (at most 64 bytes)");
		goto out;
	}
	/* The password is not kept past authentication: from here the client
	 * is known by who it logged in as (it may be forwarded or parked). A
	 * SASL login keeps it until its registration ends (see client.h). */
	if (!cl->sasl_checking) {
		free(cl->pass);
		cl->pass = NULL;
	}
	free(cl->fwd_user);
	free(cl->fwd_network);
	free(cl->client_id);
	cl->fwd_user = strdup(user);
	cl->fwd_network = strdup(network);
	cl->client_id = strdup(cname ? cname : "default");
	if (!cl->fwd_user || !cl->fwd_network || !cl->client_id) {
		client_error_close(cl, NULL, "server busy, try again later");
		goto out;
	}
	if (cl->sasl_checking) {
		cl->sasl_checking = false;
		conn_sendf(cl->conn, ":%s 900 %s %s!%s@baton %s :You are now logged in as %s",
			   BATON_SERVER_NAME, cl->nick ? cl->nick : "*",
			   cl->nick ? cl->nick : "*", user, user, user);
		conn_sendf(cl->conn, ":%s 903 %s :SASL authentication successful",
			   BATON_SERVER_NAME, cl->nick ? cl->nick : "*");
		client_try_register(cl); /* routed once NICK, USER, CAP END are in */
		goto out;
	}
	client_route(cl);
out:
	free(ident);
}

/* A client whose login is verified (here, or by the worker that forwarded
 * it: cl->fwd_*) goes to its session: attached if the session is here and
 * live; parked (lines held) while the session is frozen in a migration,
 * routed again when the migration ends (bouncer_unpark()); forwarded to
 * the other worker of a canary when the session is not here
 * (bouncer_forward_client(); at most PEER_MAX_HOPS times, so a session
 * that is in neither worker cannot bounce a client forever). Sessions are
 * only created by bouncer_start_configured(): creating one here could
 * duplicate a session that lives in another worker. */
void client_route(struct client *cl)
{
	struct session *s = bouncer_find_session(cl->b, cl->fwd_user, cl->fwd_network);

	cl->parked = false;
	if (s && s->item.state != ITEM_LIVE) {
		cl->parked = true;
		conn_hold_lines(cl->conn, true);
		log_debug("client", "%s: session in a migration: client waits", s->key);
		return;
	}
	if (!s && bouncer_has_peer(cl->b) && cl->fwd_hops < PEER_MAX_HOPS) {
		conn_hold_lines(cl->conn, true);
		bouncer_forward_client(cl->b, cl); /* frees cl, or closes it */
		return;
	}
	if (!s) {
		log_info("client", "%s/%s: session not available here",
			 cl->fwd_user, cl->fwd_network);
		stdreply(cl, "FAIL", "*", "SESSION_UNAVAILABLE",
			 "Session %s/%s is not available right now, please reconnect",
			 cl->fwd_user, cl->fwd_network);
		client_error_close(cl, NULL, "session not available");
		return;
	}
	if (s->nclients >= s->lim.max_clients) {
		char why[96];

		log_warn("client", "%s: client %s refused: %zu clients attached (max_clients_per_session)",
			 s->key, cl->client_id, s->nclients);
		snprintf(why, sizeof(why), "too many clients on this session (at most %zu)",
			 s->lim.max_clients);
		client_error_close(cl, NULL, why);
		return;
	}
	/* draft/read-marker: its burst carries the session's read markers,
	 * read from the message store first (history.h) */
	if ((cl->caps & CLIENT_CAP_READ_MARKER) &&
	    history_markers_wait(bouncer_history(cl->b), s, cl)) {
		cl->parked = true;
		conn_hold_lines(cl->conn, true);
		return;
	}
	free(cl->fwd_user);
	free(cl->fwd_network);
	cl->fwd_user = cl->fwd_network = NULL;
	conn_hold_lines(cl->conn, false);
	bouncer_forget_pending(cl->b, cl);
	conn_set_sendq(cl->conn, 0);
	client_attach(cl, s);
}

static void client_try_register(struct client *cl)
{
	if (cl->phase != CLIENT_PENDING || cl->cap_negotiating || !cl->nick || !cl->user)
		return;
	if (conn_is_dead(cl->conn) || cl->auth_id || cl->login_waiting || cl->sasl_checking)
		return;
	if (cl->fwd_user != NULL) {
		/* logged in by SASL already: its password is no longer needed */
		free(cl->pass);
		cl->pass = NULL;
		client_route(cl);
		return;
	}
	client_authenticate(cl);
}

/* AUTHENTICATE from a client before registration (IRCv3 sasl-3.1):
 * PLAIN only, "authzid NUL authcid NUL password" with authcid the login
 * of PASS ("user/network[@client]"; authzid empty or the same). The check
 * is the PASS one (client_authenticate(): throttle, crypt off the loop,
 * one crypt per attempt); client_auth_done() answers 903 or 904. */
static void client_sasl(struct client *cl, const struct irc_msg *m)
{
	const char *nick = cl->nick ? cl->nick : "*";
	const char *param = m->params[0];
	unsigned char msg[SASL_MSG_MAX + 1];
	size_t len;
	int rc;

	if (!(cl->caps & CLIENT_CAP_SASL) || cl->fwd_user != NULL || cl->sasl_checking ||
	    cl->auth_id || cl->login_waiting) {
		conn_sendf(cl->conn, ":%s %s %s :%s", BATON_SERVER_NAME,
			   cl->fwd_user ? "907" : "904", nick,
			   cl->fwd_user ? "You have already authenticated using SASL"
			   : !(cl->caps & CLIENT_CAP_SASL) ? "SASL authentication failed: CAP REQ sasl first"
			   : "SASL authentication failed: a check is in progress");
		return;
	}
	if (strcmp(param, "*") == 0) {
		cl->sasl_plain = false;
		free(cl->sasl_in);
		cl->sasl_in = NULL;
		conn_sendf(cl->conn, ":%s 906 %s :SASL authentication aborted", BATON_SERVER_NAME, nick);
		return;
	}
	if (!cl->sasl_plain) {
		if (sasl_mech_parse(param) != SASL_MECH_PLAIN) {
			conn_sendf(cl->conn, ":%s 908 %s PLAIN :are available SASL mechanisms",
				   BATON_SERVER_NAME, nick);
			conn_sendf(cl->conn, ":%s 904 %s :SASL authentication failed", BATON_SERVER_NAME, nick);
			return;
		}
		if (!cl->sasl_in && !(cl->sasl_in = calloc(1, sizeof(*cl->sasl_in)))) {
			client_error_close(cl, NULL, "out of memory");
			return;
		}
		cl->sasl_plain = true;
		conn_sendf(cl->conn, "AUTHENTICATE +");
		return;
	}
	rc = sasl_in_feed(cl->sasl_in, param, msg, &len);
	if (rc == 0)
		return; /* more chunks follow */
	cl->sasl_plain = false;
	/* the base64 of the password: not left in memory */
	explicit_bzero(cl->sasl_in, sizeof(*cl->sasl_in));
	free(cl->sasl_in);
	cl->sasl_in = NULL;
	if (rc < 0) {
		conn_sendf(cl->conn, ":%s %s %s :%s", BATON_SERVER_NAME,
			   rc == -EMSGSIZE ? "905" : "904", nick,
			   rc == -EMSGSIZE ? "SASL message too long" : "SASL authentication failed");
		return;
	}
	/* authzid NUL authcid NUL passwd: two NULs, no third */
	msg[len] = '\0';
	const char *authzid = (const char *)msg;
	const char *authcid = memchr(msg, '\0', len) ? authzid + strlen(authzid) + 1 : NULL;
	const char *pw = authcid && authcid < (const char *)msg + len
			 ? authcid + strlen(authcid) + 1 : NULL;

	if (!pw || pw > (const char *)msg + len || pw + strlen(pw) != (const char *)msg + len ||
	    !authcid[0] || (authzid[0] && strcmp(authzid, authcid) != 0)) {
		explicit_bzero(msg, sizeof(msg));
		conn_sendf(cl->conn, ":%s 904 %s :SASL authentication failed: malformed PLAIN",
			   BATON_SERVER_NAME, nick);
		return;
	}
	char *pass = malloc(strlen(authcid) + strlen(pw) + 2);

	if (!pass) {
		client_error_close(cl, NULL, "out of memory");
		return;
	}
	sprintf(pass, "%s:%s", authcid, pw);
	explicit_bzero(msg, sizeof(msg));
	free(cl->pass);
	cl->pass = pass;
	cl->sasl_checking = true;
	client_authenticate(cl);
}

void client_pending_resume(struct client *cl)
{
	if (cl->fwd_user != NULL)
		client_route(cl); /* verified already: parked or forwarded */
	else
		client_try_register(cl);
}

/* ---- burst and replay ---- */

/* Backlog lines after the client's position that the bounds dropped
 * (backlog.h): named, so the user knows where history has a hole. */
struct gap_names {
	char text[300];
	size_t len, n, shown;
};

static int gap_name(void *arg, const char *buffer)
{
	struct gap_names *g = arg;
	int w;

	g->n++;
	if (g->shown == 5 || g->len >= sizeof(g->text))
		return 0;
	w = snprintf(g->text + g->len, sizeof(g->text) - g->len, "%s%s",
		     g->shown ? ", " : "", buffer);
	if (w < 0 || (size_t)w >= sizeof(g->text) - g->len) {
		g->text[g->len] = '\0';
		return 0;
	}
	g->len += (size_t)w;
	g->shown++;
	return 0;
}

static void client_notice_gaps(struct client *cl, uint64_t pos)
{
	struct session *s = cl->s;
	struct gap_names g = { .text = "" };
	bool evicted = backlog_evicted_seq(s->backlog) > pos;

	if (pos == 0) /* a client name never seen: it expects no history */
		return;
	(void)backlog_foreach_gap(s->backlog, pos, gap_name, &g);
	if (g.n == 0 && !evicted)
		return;
	if (g.n > g.shown)
		snprintf(g.text + g.len, sizeof(g.text) - g.len, "%s%zu more",
			 g.shown ? " and " : "", g.n - g.shown);
	stdreply(cl, "WARN", "*", "BACKLOG_DROPPED",
		 "Backlog: some lines since you were last here were dropped (backlog limits: oldest lines first)%s%s%s",
		 g.n ? " in " : "", g.text,
		   evicted ? (g.n ? "; and whole conversations were dropped" :
				    ": whole conversations were dropped") : "");
}

/* Lines the bouncer composes from parts keep to the IRC limit (510 bytes
 * before CRLF); a part that cannot fit even alone is left out. */
#define CLIENT_LINE_MAX 510

static void send_names(struct client *cl, const struct channel *ch)
{
	const char *srv = client_srv(cl), *nick = client_nick(cl);
	char line[CLIENT_LINE_MAX + 1];
	int h = snprintf(line, sizeof(line), ":%s 353 %s = %s :", srv, nick, ch->name);

	/* A head that leaves no room (a very long channel or server name):
	 * no 353 at all, the 366 still ends the (empty) list. */
	if (h > 0 && (size_t)h < CLIENT_LINE_MAX) {
		size_t head = (size_t)h, len = head;
		bool any = false;

		for (size_t i = 0; i < channel_nmembers(ch); i++) {
			const struct member *m = channel_member_at(ch, i);
			size_t pl = (cl->caps & CLIENT_CAP_MULTI_PREFIX) ?
					    strnlen(m->prefixes, sizeof(m->prefixes)) :
					    (m->prefixes[0] != '\0');
			size_t nl = strlen(m->nick);
			size_t el = pl + nl;
			if (el == 0 || head + el > CLIENT_LINE_MAX)
				continue; /* cannot fit even alone */
			if (any && len + 1 + el > CLIENT_LINE_MAX) {
				line[len] = '\0';
				conn_send(cl->conn, line);
				len = head;
				any = false;
			}
			if (any)
				line[len++] = ' ';
			memcpy(line + len, m->prefixes, pl);
			memcpy(line + len + pl, m->nick, nl);
			len += el;
			any = true;
		}
		if (any) {
			line[len] = '\0';
			conn_send(cl->conn, line);
		}
	}
	conn_sendf(cl->conn, ":%s 366 %s %s :End of /NAMES list.", srv, nick, ch->name);
}

/* 005 lines: at most 13 tokens each, and within CLIENT_LINE_MAX with the
 * prefix, the nick and the trailing text; a new line starts when the next
 * token would not fit, and a token that cannot fit even alone is left out. */
static void send_isupport(struct client *cl)
{
	static const char tail[] = " :are supported by this server";
	const size_t tl = sizeof(tail) - 1;
	const struct session *s = cl->s;
	char line[CLIENT_LINE_MAX + 1];
	int h = snprintf(line, sizeof(line), ":%s 005 %s", client_srv(cl),
			 client_nick(cl));

	if (h <= 0 || (size_t)h + tl >= CLIENT_LINE_MAX)
		return; /* no room for a single token */
	size_t head = (size_t)h, len = head, ntok = 0;
	/* baton's own after the network's: the network id (bouncer_networks.h)
	 * and history from the message store (chathistory.h) */
	char netid[80];
	const char *ours[3];
	size_t nours = 0;
	bool have_history = bouncer_history(cl->b) != NULL;
	/* advertised as the caps are (a failing store: neither) */
	bool history_ok = client_store_caps_available(cl->b);

	if ((ours[nours] = bouncer_networks_isupport(cl, netid, sizeof(netid))) != NULL)
		nours++;
	if (history_ok) {
		ours[nours++] = "CHATHISTORY=" STR_OF(CHATHISTORY_LIMIT);
		ours[nours++] = "MSGREFTYPES=timestamp,msgid";
	}
	for (size_t i = 0; i < s->nisupport + nours; i++) {
		const char *tok = i < s->nisupport ? s->isupport[i] : ours[i - s->nisupport];
		size_t n = strlen(tok);
		if (have_history && i < s->nisupport &&
		    (strncmp(tok, "CHATHISTORY=", 12) == 0 ||
		     strncmp(tok, "MSGREFTYPES=", 12) == 0))
			continue; /* the network's history is not what we answer */
		if (n == 0 || head + 1 + n + tl > CLIENT_LINE_MAX)
			continue;
		if (ntok == 13 || len + 1 + n + tl > CLIENT_LINE_MAX) {
			memcpy(line + len, tail, tl + 1);
			conn_send(cl->conn, line);
			len = head;
			ntok = 0;
		}
		line[len++] = ' ';
		memcpy(line + len, tok, n);
		len += n;
		ntok++;
	}
	if (ntok) {
		memcpy(line + len, tail, tl + 1);
		conn_send(cl->conn, line);
	}
}

void client_send_burst(struct client *cl)
{
	struct session *s = cl->s;
	const char *srv = client_srv(cl), *nick = client_nick(cl);
	char prefix[256];

	if (s->welcome)
		conn_sendf(cl->conn, ":%s 001 %s :%s", srv, nick, s->welcome);
	else
		conn_sendf(cl->conn, ":%s 001 %s :Welcome to baton, %s", srv, nick, nick);
	conn_sendf(cl->conn, ":%s 002 %s :Your host is %s, running baton", srv, nick, srv);
	conn_sendf(cl->conn, ":%s 003 %s :This server is reached through baton", srv, nick);
	if (s->myinfo)
		conn_sendf(cl->conn, ":%s 004 %s %s", srv, nick, s->myinfo);
	else
		conn_sendf(cl->conn, ":%s 004 %s %s baton io imnpstklbov", srv, nick, srv);
	send_isupport(cl);
	conn_sendf(cl->conn, ":%s 422 %s :MOTD File is missing", srv, nick);
	if (s->user_modes && s->user_modes[0])
		conn_sendf(cl->conn, ":%s 221 %s %s", srv, nick, s->user_modes);
	session_self_prefix(s, prefix, sizeof(prefix));
	for (size_t i = 0; i < s->nchannels; i++) {
		const struct channel *ch = s->channels[i];
		conn_sendf(cl->conn, ":%s JOIN %s", prefix, ch->name);
		if (ch->topic) {
			conn_sendf(cl->conn, ":%s 332 %s %s :%s", srv, nick, ch->name, ch->topic);
			if (ch->topic_setter)
				conn_sendf(cl->conn, ":%s 333 %s %s %s %lld", srv, nick,
					   ch->name, ch->topic_setter,
					   (long long)ch->topic_time);
		}
		if (cl->caps & CLIENT_CAP_READ_MARKER) /* before RPL_ENDOFNAMES */
			readmarker_send(cl, ch->name);
		send_names(cl, ch);
	}
}

/* ---- flow-controlled replay ----
 * The whole backlog may be far more than the sendq bound (CONN_MAX_OUTPUT):
 * queued at once it killed the connection before a byte was written, the
 * position did not move, and every later attach died the same way. So a
 * replaying client is fed by a pump: backlog lines with seq > delivered_seq
 * are queued while the unwritten output is below CLIENT_REPLAY_FILL, and
 * the pump continues once the output drained below CLIENT_REPLAY_RESUME
 * (conn_watch_drain()); the gap between the two makes each pump run queue
 * a sizeable chunk, not a line per write (a run costs a seek in every
 * buffer of the backlog).
 * Meanwhile live backlog lines are stored but not queued to it
 * (client_deliver()): the pump reaches them in seq order. Once it reached
 * the end of the backlog the client is live. */

#define CLIENT_REPLAY_FILL (256u << 10)
#define CLIENT_REPLAY_RESUME (128u << 10)

int client_replay_line(struct client *cl, uint64_t seq, int64_t time_ms,
		       const char *line)
{
	size_t pending;

	/* Its own lines (client_skip() while replaying); older entries are
	 * lines that left the backlog before the pump got there. */
	while (cl->nown && cl->own_seqs[cl->own_head] < seq) {
		cl->own_head++;
		cl->nown--;
	}
	if (cl->nown && cl->own_seqs[cl->own_head] == seq) {
		cl->own_head++;
		cl->nown--;
		client_skip_now(cl, seq);
	} else {
		(void)client_queue_line(cl, seq, NULL, line, time_ms, 1); /* the backlog keeps no tags */
	}
	if (conn_is_dead(cl->conn))
		return -EPIPE;
	(void)conn_output(cl->conn, &pending);
	return pending >= CLIENT_REPLAY_FILL;
}

static int replay_one(void *arg, uint64_t seq, int64_t time_ms,
		      const char *buffer, const char *line)
{
	(void)buffer;
	return client_replay_line(arg, seq, time_ms, line);
}

static void client_replay_pump(struct client *cl)
{
	while (cl->replaying) {
		struct session *s = cl->s;
		size_t pending;

		if (!s || cl->phase != CLIENT_ATTACHED || conn_is_dead(cl->conn))
			return;
		(void)conn_output(cl->conn, &pending);
		if (pending >= CLIENT_REPLAY_FILL) {
			conn_watch_drain(cl->conn, CLIENT_REPLAY_RESUME);
			return;
		}
		/* Lines the backlog no longer holds come from the message
		 * store first (history.h): its answer continues the pump. */
		if (history_replay_busy(bouncer_history(s->b), cl))
			return;
		int r = backlog_replay(s->backlog, cl->delivered_seq, replay_one, cl);
		if (conn_is_dead(cl->conn))
			return;
		if (r < 0) {
			log_warn("client", "%s: replay to client %s failed: %s",
				 s->key, cl->client_id, strerror(-r));
			conn_close(cl->conn, "out of memory", true);
			return;
		}
		if (r == 0) {
			/* Caught up. Seqs up to the newest that were not
			 * visited left the backlog: nothing to send. */
			uint64_t next = backlog_next_seq(s->backlog);
			if (next > 1)
				client_skip_now(cl, next - 1);
			cl->replaying = false;
			cl->own_head = cl->nown = 0;
			log_debug("client", "%s: client %s replay done", s->key,
				  cl->client_id);
		}
	}
}

void client_replay_continue(struct client *cl)
{
	client_replay_pump(cl);
}

void client_resume(struct client *cl)
{
	if (cl->phase != CLIENT_ATTACHED || !cl->s || conn_is_dead(cl->conn))
		return;
	bouncer_networks_client_update(cl, false); /* an adopted -notify client */
	if (history_replay_begin(bouncer_history(cl->s->b), cl, false) ||
	    cl->hist_store) {
		cl->replaying = true;
		conn_watch_drain(cl->conn, CLIENT_REPLAY_RESUME);
		return;
	}
	uint64_t next = backlog_next_seq(cl->s->backlog);
	if (!cl->replaying && (next <= 1 || cl->delivered_seq >= next - 1))
		return;
	cl->replaying = true;
	/* The pump runs from the event loop (now or once drained). */
	conn_watch_drain(cl->conn, CLIENT_REPLAY_RESUME);
}

static void client_drained(struct conn *c, void *arg)
{
	client_replay_pump(arg);
}

void client_attach(struct client *cl, struct session *s)
{
	if (session_add_client(s, cl) < 0) {
		client_error_close(cl, NULL, "out of memory");
		/* Not in any list now: free it when its conn reports closed. */
		cl->phase = CLIENT_ATTACHED;
		cl->s = NULL;
		return;
	}
	cl->phase = CLIENT_ATTACHED;
	cl->cap_negotiating = false;
	history_markers_load(bouncer_history(s->b), s); /* for MARKREAD */
	cl->delivered_seq = cl->acked_seq = session_position(s, cl->client_id);
	cl->mark_head = cl->nmarks = 0;
	cl->own_head = cl->nown = 0;
	log_info("client", "%s: client %s attached (replaying %zu lines)", s->key,
		 cl->client_id, backlog_count_after(s->backlog, cl->delivered_seq));
	client_send_burst(cl);
	cl->replaying = true;
	/* With a message store the backlog's gaps are read from the store
	 * (and a client name without a position in memory asks it for one):
	 * no gap to announce. */
	if (!history_replay_begin(bouncer_history(s->b), cl, true)) {
		if (!bouncer_history(s->b))
			client_notice_gaps(cl, cl->delivered_seq);
		client_replay_pump(cl); /* the first chunk now, the rest as it drains */
	}
	char why[512];
	if (s->quarantined)
		conn_sendf(cl->conn, ":%s NOTICE %s :%s is quarantined: baton crashed repeatedly while handling what this network sent, so it is not reconnected. The operator has been told (batonctl status).",
			   BATON_SERVER_NAME, client_nick(cl), s->network);
	else if (!session_upstream_ready(s) &&
	    bouncer_wait_text(s->b, s, why, sizeof(why)))
		stdreply(cl, "NOTE", "*", "UPSTREAM_WAITING", "%s", why);
	else if (!session_upstream_ready(s))
		stdreply(cl, "NOTE", "*", "UPSTREAM_DISCONNECTED",
			 "%s is disconnected; reconnecting", s->network);
	bouncer_networks_client_update(cl, true); /* -notify: the list */
}

/* ---- commands ---- */

/* The commands baton answers itself that lack what RFC 2812 requires: 461
 * ERR_NEEDMOREPARAMS (PING without a token, PASS without a password, USER
 * without its four parameters or with an empty realname), 431
 * ERR_NONICKNAMEGIVEN (NICK without a nick). Returns true when it
 * answered (the line goes no further). */
static bool client_missing_params(struct client *cl, const struct irc_msg *m)
{
	const char *cmd = m->command;
	const char *srv = cl->phase == CLIENT_ATTACHED ? client_srv(cl) : BATON_SERVER_NAME;
	const char *nick = cl->phase == CLIENT_ATTACHED ? client_nick(cl) :
				(cl->nick ? cl->nick : "*");
	bool short_;

	if (strcasecmp(cmd, "NICK") == 0) {
		if (m->nparams >= 1 && m->params[0][0])
			return false;
		conn_sendf(cl->conn, ":%s 431 %s :No nickname given", srv, nick);
		return true;
	}
	if (cl->phase == CLIENT_ATTACHED && strcasecmp(cmd, "PING") != 0)
		return false; /* PASS, USER: 462 (already registered) */
	if (strcasecmp(cmd, "PING") == 0 || strcasecmp(cmd, "PASS") == 0)
		short_ = m->nparams < 1; /* "PING :" has its (empty) token */
	else if (strcasecmp(cmd, "AUTHENTICATE") == 0)
		short_ = m->nparams < 1 || m->params[0][0] == '\0';
	else if (strcasecmp(cmd, "USER") == 0)
		short_ = m->nparams < 4 || m->params[0][0] == '\0' ||
			 m->params[3][0] == '\0';
	else
		return false;
	if (!short_)
		return false;
	conn_sendf(cl->conn, ":%s 461 %s %.32s :Not enough parameters", srv, nick, cmd);
	return true;
}

static void client_pending_line(struct client *cl, struct irc_msg *m)
{
	const char *cmd = m->command;

	if (strcasecmp(cmd, "CAP") == 0) {
		client_cap(cl, m);
	} else if (client_missing_params(cl, m)) {
		return;
	} else if (strcasecmp(cmd, "AUTHENTICATE") == 0) {
		client_sasl(cl, m);
		return;
	} else if (strcasecmp(cmd, "BOUNCER") == 0 &&
		   (cl->caps & CLIENT_CAP_BOUNCER_NETWORKS)) {
		bouncer_networks_command(cl, m);
		return;
	} else if (strcasecmp(cmd, "PASS") == 0 || strcasecmp(cmd, "NICK") == 0 ||
		   strcasecmp(cmd, "USER") == 0) {
		char **dst = strcasecmp(cmd, "PASS") == 0 ? &cl->pass :
			     strcasecmp(cmd, "NICK") == 0 ? &cl->nick : &cl->user;
		char *copy = strdup(m->params[0]);
		if (!copy) {
			client_error_close(cl, NULL, "out of memory");
			return;
		}
		free(*dst);
		*dst = copy;
	} else if (strcasecmp(cmd, "PING") == 0) {
		conn_sendf(cl->conn, ":%s PONG %s :%s", BATON_SERVER_NAME,
			   BATON_SERVER_NAME, m->params[m->nparams - 1]);
		return;
	} else if (strcasecmp(cmd, "QUIT") == 0) {
		client_error_close(cl, NULL, "quit");
		return;
	} else if (strcasecmp(cmd, "PONG") == 0) {
		return;
	} else {
		conn_sendf(cl->conn, ":%s 451 %s :You have not registered",
			   BATON_SERVER_NAME, cl->nick ? cl->nick : "*");
		return;
	}
	client_try_register(cl);
}

/* A serial for struct client's field (in this process). */
static uint64_t client_next_serial(void)
{
	static uint64_t next;

	return ++next;
}

uint64_t client_serial(struct client *cl)
{
	if (cl->serial == 0)
		cl->serial = client_next_serial();
	return cl->serial;
}

/* Every line a client sends is checked against the bounds of IRC before
 * anything of it is used: the network refuses (ngircd: closes the
 * connection on) a message part over 510 bytes, and IRCv3 bounds the tag
 * section to 8191 bytes. Past either: 417 ERR_INPUTTOOLONG, nothing
 * forwarded (splitting a message would change what the user wrote). */
static void client_too_long(struct client *cl)
{
	const char *srv = cl->phase == CLIENT_ATTACHED ? client_srv(cl) : BATON_SERVER_NAME;
	const char *nick = cl->phase == CLIENT_ATTACHED ? client_nick(cl) :
				(cl->nick ? cl->nick : "*");

	conn_sendf(cl->conn, ":%s 417 %s :Input line was too long", srv, nick);
}

/* A PRIVMSG/NOTICE goes to the network as the client framed it (`fwd`: its
 * line, with only its client-only tags: client_line()): rebuilt, a legal
 * 512-byte line became 513 bytes and the network closed the session.
 * What the user's other clients see (and the backlog keeps) depends on the
 * network:
 *  - with echo-message (upstream_has_cap()), only what the network accepted:
 *    its echo is stored and relayed when it comes back (upstream.c
 *    h_message), to the sender too if the sender asked for echo-message; a
 *    refused message (404, a mute) is never echoed, stored or relayed;
 *  - without it (ngircd), the message is taken as sent at once, as soju does:
 *    a refusal reaches the user as the network's error numeric, but the
 *    line was relayed and stored already. */
static int client_forward_labeled(struct client *cl, const char *raw);

static void client_message(struct client *cl, struct irc_msg *m, const char *cmd,
			   const char *fwd)
{
	struct session *s = cl->s;
	char prefix[256], line[CONN_MAX_LINE + 1], targets[512];

	if (m->nparams < 2 || m->params[1][0] == '\0') {
		if (m->nparams < 1)
			conn_sendf(cl->conn, ":%s 411 %s :No recipient given (%s)",
				   client_srv(cl), client_nick(cl), cmd);
		else
			conn_sendf(cl->conn, ":%s 412 %s :No text to send",
				   client_srv(cl), client_nick(cl));
		return;
	}
	if (service_is_target(m->params[0])) {
		/* the bouncer's own service: never the network's */
		if (strcmp(cmd, "PRIVMSG") == 0)
			service_message(cl, m->params[1]);
		return;
	}
	if (service_in_targets(m->params[0])) {
		/* one line cannot go part to *baton, part to the network
		 * (the client's line is forwarded as framed): none of it goes */
		stdreply(cl, "FAIL", cmd, "SERVICE_IN_LIST",
			 "%s takes a message of its own, not in a list of targets: nothing sent",
			 SERVICE_NICK);
		return;
	}
	if (!session_upstream_ready(s)) {
		stdreply(cl, "FAIL", cmd, "UPSTREAM_DISCONNECTED",
			 "%s is disconnected: message not sent", s->network);
		return;
	}
	bool net_echo = upstream_has_cap(s, "echo-message");
	/* With the network's echo-message its echo (or its refusal) is the
	 * answer: labeled by the network when it can (client_forward_labeled());
	 * without, baton's own echo below is, in this step. */
	if (net_echo && cl->serial == 0)
		cl->serial = client_next_serial();
	if ((net_echo ? client_forward_labeled(cl, fwd) : upstream_send(s, fwd)) < 0) {
		client_too_long(cl);
		return;
	}
	cl->label_forwarded = true; /* the network's replies: not labeled */
	if (net_echo && (cl->caps & CLIENT_CAP_ECHO_MESSAGE))
		return; /* the network's echo goes to every client */
	if (net_echo && cl->serial == 0)
		cl->serial = client_next_serial();
	session_self_prefix(s, prefix, sizeof(prefix));
	snprintf(targets, sizeof(targets), "%s", m->params[0]);
	size_t ntargets = 0;
	for (char *save = NULL, *t = strtok_r(targets, ",", &save); t;
	     t = strtok_r(NULL, ",", &save)) {
		/* Stored under names the state may hold (names.h), and for at
		 * most CLIENT_MAX_TARGETS targets of one line: the network
		 * refuses more (TARGMAX), and one line must not create
		 * unbounded backlog buffers. */
		if (!names_buffer_ok(t) || ++ntargets > CLIENT_MAX_TARGETS)
			continue;
		if (net_echo) {
			upstream_echo_expect(s, cl->serial, cmd, t, m->params[1]);
			continue;
		}
		snprintf(line, sizeof(line), ":%s %s %s :%s", prefix, cmd, t, m->params[1]);
		if (irc_is_channel(t)) /* the user has it (health.h) */
			health_channel_lines(session_find_channel(s, t), 1);
		/* The others see it; the sender too if it asked for echo-message. */
		session_store_and_relay(s, t, line, 0,
					(cl->caps & CLIENT_CAP_ECHO_MESSAGE) ? NULL : cl);
	}
}

/* Forward raw (upstream_send()); a labeled command (cl->label) to a network
 * with labeled-response goes with a label of baton's, whose answer comes
 * back to cl with its label (upstream.c): the label is then the answer's,
 * not this step's (label_async). Without labeled-response, past the
 * bounds of upstream_label_add() or out of memory: unlabeled, and the
 * network's replies come unlabeled with no ACK (soju does the same; the
 * spec lets a server not answer a label). cl->serial is set. */
static int client_forward_labeled(struct client *cl, const char *raw)
{
	char tag[32], line[IRC_MAX_TAGS + IRC_MAX_MESSAGE + 2];
	struct session *s = cl->s;

	if (!cl->label[0] ||
	    upstream_label_add(s, cl->serial, cl->label, tag, sizeof(tag)) < 0)
		return upstream_send(s, raw);
	if (raw[0] == '@')
		snprintf(line, sizeof(line), "@%s;%s", tag, raw + 1);
	else
		snprintf(line, sizeof(line), "@%s %s", tag, raw);
	if (upstream_send(s, line) < 0) {
		upstream_label_cancel(s, tag);
		return -EMSGSIZE;
	}
	cl->label_async = true;
	return 0;
}

/* A command a network can know: letters, or three digits (what our own
 * output check, health_line_check(), lets through to a network). */
static bool client_command_ok(const char *cmd)
{
	size_t n = strlen(cmd);
	bool letters = n > 0, digits = n == 3;

	for (size_t i = 0; i < n; i++) {
		if (!((cmd[i] >= 'A' && cmd[i] <= 'Z') || (cmd[i] >= 'a' && cmd[i] <= 'z')))
			letters = false;
		if (cmd[i] < '0' || cmd[i] > '9')
			digits = false;
	}
	return letters || digits;
}

static void client_attached_line(struct client *cl, struct irc_msg *m,
				 const char *raw)
{
	struct session *s = cl->s;
	const char *cmd = m->command;

	if (!client_command_ok(cmd)) {
		/* Never forwarded: the output check would refuse it and
		 * count a protocol error of this worker (a hard canary
		 * gate any user could trip). */
		conn_sendf(cl->conn, ":%s 421 %s %s :Unknown command",
			   client_srv(cl), client_nick(cl), cmd);
	} else if (client_missing_params(cl, m)) {
		/* answered */
	} else if (strcasecmp(cmd, "PING") == 0) {
		conn_sendf(cl->conn, ":%s PONG %s :%s", client_srv(cl), client_srv(cl),
			   m->params[m->nparams - 1]);
	} else if (strcasecmp(cmd, "PONG") == 0) {
		/* ignored */
	} else if (strcasecmp(cmd, "QUIT") == 0) {
		/* Detach only: the session stays on the network. */
		client_quit(cl);
	} else if (strcasecmp(cmd, "CAP") == 0) {
		client_cap(cl, m);
	} else if (strcasecmp(cmd, "CHATHISTORY") == 0) {
		chathistory_command(cl, m); /* the message store's (chathistory.h) */
	} else if (strcasecmp(cmd, "MARKREAD") == 0 && bouncer_history(s->b)) {
		readmarker_command(cl, m); /* the message store's (chathistory.h) */
	} else if (strcasecmp(cmd, "AUTHENTICATE") == 0) {
		/* never the network's: a SASL login is before registration */
		conn_sendf(cl->conn, ":%s 907 %s :You have already authenticated",
			   client_srv(cl), client_nick(cl));
	} else if (strcasecmp(cmd, "BOUNCER") == 0 &&
		   (cl->caps & CLIENT_CAP_BOUNCER_NETWORKS)) {
		bouncer_networks_command(cl, m); /* baton's, never the network's */
	} else if (strcasecmp(cmd, "PASS") == 0 || strcasecmp(cmd, "USER") == 0) {
		conn_sendf(cl->conn, ":%s 462 %s :You may not reregister",
			   client_srv(cl), client_nick(cl));
	} else if (strcasecmp(cmd, "TAGMSG") == 0 && m->nparams >= 1 &&
		   (service_is_target(m->params[0]) || service_in_targets(m->params[0]))) {
		/* Tags for the bouncer's service: it has no use for them, and
		 * they are never the network's (a labeled one gets ACK). */
	} else if (strcasecmp(cmd, "TAGMSG") == 0 && !upstream_has_cap(s, "message-tags")) {
		/* Tags only, for a network that takes none: nothing to send
		 * (soju drops it too). */
	} else if (strcasecmp(cmd, "TAGMSG") == 0 && m->nparams >= 1 &&
		   session_upstream_ready(s)) {
		/* The network's echo (if it has echo-message) goes to the
		 * other clients with message-tags, not to this one unless it
		 * asked for echo-message (upstream.c h_tagmsg). */
		if (cl->serial == 0)
			cl->serial = client_next_serial();
		if (client_forward_labeled(cl, raw) < 0) {
			client_too_long(cl);
			return;
		}
		cl->label_forwarded = true;
		if (upstream_has_cap(s, "echo-message") && !(cl->caps & CLIENT_CAP_ECHO_MESSAGE)) {
			upstream_echo_expect(s, cl->serial, "TAGMSG", m->params[0], "");
		}
	} else if (strcasecmp(cmd, "PRIVMSG") == 0 || strcasecmp(cmd, "NOTICE") == 0) {
		client_message(cl, m, strcasecmp(cmd, "PRIVMSG") == 0 ? "PRIVMSG" : "NOTICE",
			       raw);
	} else if (!s->up || s->up->phase < UP_WELCOMED) {
		stdreply(cl, "FAIL", cmd, "UPSTREAM_DISCONNECTED",
			 "%s is disconnected: command not sent", s->network);
	} else {
		if (strcasecmp(cmd, "AWAY") == 0) {
			bool set = m->nparams && m->params[0][0];
			char *away = set ? strdup(m->params[0]) : NULL;
			if (set && !away) {
				/* Not sent either: the network and the session
				 * (what the next client is told) stay alike. */
				stdreply(cl, "FAIL", "AWAY", "OUT_OF_MEMORY",
					 "out of memory: AWAY not sent");
				return;
			}
			free(s->away);
			s->away = away;
		}
		if (cl->serial == 0)
			cl->serial = client_next_serial();
		if (client_forward_labeled(cl, raw) < 0) {
			client_too_long(cl);
			return;
		}
		cl->label_forwarded = true;
		/* its replies go to this client only (session_reply_route()) */
		session_query_note(s, cl->serial, m);
	}
}

/* Before login a connection costs the worker without any user vouching for
 * it: its lines, bytes and pace are bounded ([listen] prelogin_*). Returns
 * false when this line is past a bound (the connection is closed with an
 * ERROR line). */
static bool client_prelogin_admit(struct client *cl, size_t len)
{
	const struct baton_config *cfg = bouncer_config(cl->b);
	const char *why = NULL;

	if (!cfg)
		return true;
	cl->prelogin_lines++;
	cl->prelogin_bytes += len + 2;
	if (cfg->prelogin_max_lines > 0 && cl->prelogin_lines > (unsigned)cfg->prelogin_max_lines)
		why = "too many lines before login";
	else if (cfg->prelogin_max_bytes > 0 &&
		 cl->prelogin_bytes > (size_t)cfg->prelogin_max_bytes)
		why = "too much data before login";
	else if (cfg->prelogin_rate > 0) {
		/* Token bucket: prelogin_burst commands at once, then
		 * prelogin_rate per second (tokens * 1000). */
		int64_t now = clock_mono_ms(), cap = (int64_t)cfg->prelogin_burst * 1000;

		if (cl->bucket_ms == 0)
			cl->bucket = cap;
		else
			cl->bucket += (now - cl->bucket_ms) * cfg->prelogin_rate;
		if (cl->bucket > cap)
			cl->bucket = cap;
		cl->bucket_ms = now;
		if (cl->bucket < 1000)
			why = "too many commands before login";
		else
			cl->bucket -= 1000;
	}
	if (!why)
		return true;
	log_debug("client", "unregistered connection from %s closed: %s",
		  cl->addr[0] ? cl->addr : "?", why);
	client_error_close(cl, NULL, why);
	return false;
}

/* The client-only tags ("+key[=value]", message-tags) of a client's tag
 * section `tags` (without its '@', `n` bytes up to the space): what the
 * network may get, into out[IRC_MAX_CLIENT_TAGS - 1] separated by ';' ("":
 * none). Returns false when they pass IRC_MAX_CLIENT_TAGS with '@' and
 * space. Other tags (label, batch...) are the client's to baton: dropped. */
static bool client_only_tags(const char *tags, size_t n, char *out)
{
	size_t o = 0;

	out[0] = '\0';
	for (size_t i = 0; i < n;) {
		size_t tl = 0;
		while (i + tl < n && tags[i + tl] != ';')
			tl++;
		if (tl > 1 && tags[i] == '+') {
			if (o + (o > 0) + tl + 2 > IRC_MAX_CLIENT_TAGS)
				return false;
			if (o > 0)
				out[o++] = ';';
			memcpy(out + o, tags + i, tl);
			o += tl;
			out[o] = '\0';
		}
		i += tl + 1;
	}
	return true;
}

/* The value of tag `key` in a client's tag section (`n` bytes after its
 * '@') as it was sent (escaped), into out[size]: false when it does not
 * fit (or is absent: "" then). A repeated key: its last occurrence, as
 * the message-tags spec says (irc_tag_get()). */
static bool client_raw_tag(const char *tags, size_t n, const char *key,
			   char *out, size_t size)
{
	size_t kl = strlen(key);
	const char *val = NULL;
	size_t vl = 0;

	out[0] = '\0';
	for (size_t i = 0; i < n;) {
		size_t tl = 0;
		while (i + tl < n && tags[i + tl] != ';' && tags[i + tl] != ' ')
			tl++;
		if (tl >= kl && (tl == kl || tags[i + kl] == '=') &&
		    strncmp(tags + i, key, kl) == 0) {
			val = tags + i + kl + (tl > kl);
			vl = tl > kl ? tl - kl - 1 : 0;
		}
		if (i + tl < n && tags[i + tl] == ' ')
			break;
		i += tl + 1;
	}
	if (val == NULL)
		return true;
	if (vl + 1 > size)
		return false;
	memcpy(out, val, vl);
	out[vl] = '\0';
	return true;
}

static void client_line(struct conn *c, char *line, size_t len, void *arg)
{
	struct client *cl = arg;
	struct irc_msg m;
	char raw[IRC_MAX_CLIENT_TAGS + IRC_MAX_MESSAGE + 1];
	size_t tags;

	cl->last_rx_ms = clock_mono_ms();
	if (cl->phase == CLIENT_PENDING && !client_prelogin_admit(cl, len))
		return;
	if (cl->phase == CLIENT_CLOSING)
		return; /* after QUIT: read and dropped */
	const char *p = irc_message_part(line, &tags);
	/* Not forwarded: spaces before the command (our own output check
	 * refuses such a line: it was never sent, yet relayed and stored as
	 * sent) and a client's source prefix (ngircd silently drops a line
	 * whose prefix is not the sender's own). The rest keeps its framing. */
	p += strspn(p, " ");
	if (*p == ':') {
		p += strcspn(p, " ");
		p += strspn(p, " ");
	}
	if (strlen(p) > IRC_MAX_MESSAGE || tags > IRC_MAX_TAGS) {
		client_too_long(cl);
		return;
	}
	/* What is forwarded: the message part as the client framed it, after
	 * its client-only tags if the network takes message-tags (other tags
	 * are not forwarded). */
	snprintf(raw, sizeof(raw), "%s", p);
	if (tags && cl->phase == CLIENT_ATTACHED && cl->s &&
	    upstream_has_cap(cl->s, "message-tags")) {
		char ct[IRC_MAX_CLIENT_TAGS];

		if (!client_only_tags(line + 1, tags - 1 - (line[tags - 1] == ' '), ct)) {
			client_too_long(cl);
			return;
		}
		if (ct[0])
			snprintf(raw, sizeof(raw), "@%s %s", ct, p);
	}
	if (irc_parse(line, &m) < 0)
		return;
	if (cl->phase == CLIENT_PENDING) {
		client_pending_line(cl, &m);
		return;
	}
	if (!cl->s)
		return;
	/* labeled-response: registered clients only (before, CAP and the
	 * login are not commands a label can answer); QUIT's only answer is
	 * the ERROR that closes. */
	if (m.tags && (cl->caps & CLIENT_CAP_LABELED_RESPONSE) &&
	    strcasecmp(m.command, "QUIT") != 0) {
		/* the value as sent (escaped: it goes back as it came); the
		 * bound is the spec's, on those bytes */
		char label[CLIENT_LABEL_MAX + 1];
		if (!client_raw_tag(m.tags, strlen(m.tags), "label", label, sizeof(label))) {
			stdreply(cl, "FAIL", m.command, "INVALID_LABEL",
				 "label longer than %d bytes: command not run",
				 CLIENT_LABEL_MAX);
			return;
		}
		client_label_begin(cl, label);
	}
	client_attached_line(cl, &m, raw);
	/* cl stays allocated within its line callback (client_quit()) */
	client_label_end(cl, true);
}

static void client_closed(struct conn *c, const char *reason, void *arg)
{
	struct client *cl = arg;
	/* Runs from the event loop (conn.h): freeing cl here is safe. */
	if (cl->phase == CLIENT_PENDING) {
		bouncer_forget_pending(cl->b, cl);
		client_free(cl);
	} else if (cl->phase == CLIENT_CLOSING) {
		client_closing_finish(cl);
	} else if (cl->s) {
		session_remove_client(cl->s, cl);
	} else {
		client_free(cl);
	}
}

static void client_tls_ready(struct conn *c, void *arg)
{
	struct client *cl = arg;

	bouncer_tls_handshake_end(cl->b, cl);
}

const struct conn_ops client_conn_ops = {
	.line = client_line,
	.closed = client_closed,
	.drained = client_drained,
	.tls_ready = client_tls_ready,
	.custody_deferred = true, /* at login: session_add_client() */
};
