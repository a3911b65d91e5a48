/* sessiond/state.c: see state.h. */
#include "sessiond/state.h"
#include "common/clock.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "state.pb-c.h"
#include "tls.pb-c.h"

#include "common/config.h"
#include "common/log.h"
#include "common/names.h"
#include "sessiond/backlog.h"
#include "sessiond/history.h"
#include "store/store.h"
#include "handoff/protocol.h"
#include "tls/record.h"
#include "sessiond/conn.h"
#include "sessiond/governor.h"
#include "sessiond/sasl.h"
#include "sessiond/session.h"

/* ---- the bound of a session's state (state.h) ---- */

size_t state_bound(const struct baton_config *cfg)
{
	struct session_limits lim;

	session_limits_get(cfg, &lim);
	return 5 + STATE_SCALARS_MAX + STATE_ISUPPORT_MAX + STATE_CAPS_MAX +
	       lim.max_channels * STATE_CHANNEL_MAX + lim.member_list_bytes +
	       lim.backlog.total_bytes +
	       lim.backlog.total_lines * BACKLOG_LINE_OVERHEAD +
	       lim.backlog.buffers * STATE_BUFFER_OVERHEAD +
	       STATE_POSITIONS_MAX + STATE_CONN_MAX;
}

int state_check_config(const struct baton_config *cfg, char *why, size_t n)
{
	size_t bound = state_bound(cfg);
	struct session_limits lim;

	if (bound <= HANDOFF_ITEM_MAX_PAYLOAD)
		return 0;
	session_limits_get(cfg, &lim);
	snprintf(why, n, "the session bounds allow a session state of %zu bytes, more than the %u one migration message carries (4.8 MB connection + %zu channels x %u + member_list_bytes %zu + backlog_session_bytes %zu + 28 x backlog_session_lines %zu + ...): lower max_channels, member_list_bytes or the backlog_session_* keys",
		 bound, (unsigned)HANDOFF_ITEM_MAX_PAYLOAD, lim.max_channels,
		 (unsigned)STATE_CHANNEL_MAX, lim.member_list_bytes,
		 lim.backlog.total_bytes, lim.backlog.total_lines);
	return -EMSGSIZE;
}

/* ---- serialize ----
 * The protobuf tree borrows strings and buffers from the live objects; only
 * the tree's own nodes and arrays are allocated, tracked in an arena. */

struct arena {
	void **p;
	size_t n, cap;
	bool failed;
	/* TLS record states: their contents are freed separately
	 * (tls_record_state_free_contents) before the nodes themselves. */
	Baton__Tls__TlsState **tls;
	size_t ntls;
	bool tls_dead; /* a TLS layer had failed: nothing to carry on with */
};

static void *arena_alloc(struct arena *a, size_t size)
{
	if (a->failed)
		return NULL;
	if (a->n == a->cap) {
		size_t cap = a->cap ? a->cap * 2 : 64;
		void **np = realloc(a->p, cap * sizeof(void *));
		if (!np) {
			a->failed = true;
			return NULL;
		}
		a->p = np;
		a->cap = cap;
	}
	void *m = calloc(1, size ? size : 1);
	if (!m) {
		a->failed = true;
		return NULL;
	}
	a->p[a->n++] = m;
	return m;
}

static char *arena_strdup(struct arena *a, const char *s)
{
	if (!s || !s[0])
		return NULL;
	char *d = arena_alloc(a, strlen(s) + 1);
	if (d)
		strcpy(d, s);
	return d;
}

static void arena_free(struct arena *a)
{
	for (size_t i = 0; i < a->ntls; i++)
		tls_record_state_free_contents(a->tls[i]);
	free(a->tls);
	for (size_t i = 0; i < a->n; i++)
		free(a->p[i]);
	free(a->p);
}

static void put_bytes(protobuf_c_boolean *has, ProtobufCBinaryData *bd,
		      const char *p, size_t n)
{
	if (n) {
		*has = 1;
		bd->len = n;
		bd->data = (uint8_t *)p;
	}
}

#define PUT_I64(msg, field, v)                                                 \
	do {                                                                   \
		if ((v) != 0) {                                                \
			(msg)->has_##field = 1;                                \
			(msg)->field = (v);                                    \
		}                                                              \
	} while (0)

/* Timers are CLOCK_MONOTONIC here and CLOCK_REALTIME ms on the wire
 * (state.proto rule 6: older releases read them so); 0 (none) stays 0. */
#define PUT_TIME(msg, field, mono)                                             \
	do {                                                                   \
		int64_t wall_ = clock_mono_to_wall_ms(mono);                   \
		PUT_I64(msg, field, wall_);                                    \
	} while (0)
#define GET_TIME(msg, field)                                                   \
	((msg)->has_##field ? clock_wall_to_mono_ms((msg)->field) : 0)

static Baton__State__Connection *ser_conn_common(struct arena *a,
						 struct conn *c, uint32_t idx,
						 Baton__State__ConnRole role)
{
	Baton__State__Connection *pc = arena_alloc(a, sizeof(*pc));
	char name[80];
	size_t n;
	const char *p;

	if (!pc)
		return NULL;
	baton__state__connection__init(pc);
	pc->role = role;
	pc->fd_index = idx;
	pc->peer = arena_strdup(a, conn_peer_name(c, name, sizeof(name)));
	pc->local = arena_strdup(a, conn_local_name(c, name, sizeof(name)));
	p = conn_input(c, &n);
	put_bytes(&pc->has_input, &pc->input, p, n);
	p = conn_output(c, &n);
	put_bytes(&pc->has_output, &pc->output, p, n);
	if (conn_tls(c) != NULL) {
		/* The record layer's state: keys, sequence numbers, partial
		 * records, ciphertext not yet written (record.h). */
		Baton__Tls__TlsState *st = arena_alloc(a, sizeof(*st));
		Baton__Tls__TlsState **grown;

		if (!st)
			return NULL;
		grown = realloc(a->tls, (a->ntls + 1) * sizeof(*grown));
		if (!grown) {
			a->failed = true;
			return NULL;
		}
		a->tls = grown;
		baton__tls__tls_state__init(st);
		if (tls_record_save(conn_tls(c), st) < 0) {
			/* Its layer failed (alert sent or received): the
			 * connection is closing and cannot continue elsewhere.
			 * The chunk aborts with this reason and resumes; the
			 * close completes meanwhile, so a retry succeeds. */
			a->tls_dead = true;
			return NULL;
		}
		a->tls[a->ntls++] = st;
		pc->tls = st;
		pc->has_transport = 1;
		pc->transport = 1;
	}
	return pc;
}

/* The upstream travels: not in a TLS handshake, and not a TLS connection
 * whose record layer failed (both stay behind; the session reconnects). */
static bool upstream_travels(const struct session *s)
{
	struct tls_record *t;

	if (s->up == NULL || conn_in_handshake(s->up->conn))
		return false;
	t = conn_tls(s->up->conn);
	return t == NULL || !tls_record_is_dead(t);
}

static Baton__State__Connection *ser_upstream(struct arena *a,
					      struct upstream *u, uint32_t idx)
{
	Baton__State__Connection *pc =
		ser_conn_common(a, u->conn, idx, BATON__STATE__CONN_ROLE__CONN_ROLE_UPSTREAM);
	if (!pc)
		return NULL;
	pc->has_reg_phase = 1;
	pc->reg_phase = (uint32_t)u->phase;
	pc->n_caps = u->ncap_offered;
	pc->caps = u->cap_offered;
	pc->nick = u->nick_attempt;
	if (u->cap_negotiating) {
		pc->has_cap_negotiating = 1;
		pc->cap_negotiating = 1;
	}
	if (sasl_wire_state(u)) {
		pc->has_sasl_state = 1;
		pc->sasl_state = sasl_wire_state(u);
	}
	PUT_TIME(pc, connected_at_ms, u->connected_at_ms);
	PUT_TIME(pc, last_rx_ms, u->last_rx_ms);
	PUT_TIME(pc, ping_sent_ms, u->ping_sent_ms);
	PUT_I64(pc, lag_ms, u->lag_ms);
	PUT_TIME(pc, next_ping_ms, u->next_ping_ms);
	pb_unknown_attach(&pc->base, &u->unknown);
	return pc;
}

/* Delivery accounting of an attached client (state.proto Delivery), written
 * only when it says more than its absence (acked_seq = delivered_seq,
 * nothing in flight): a client without traffic in flight packs as before. */
static int ser_delivery(struct arena *a, struct client *cl,
			Baton__State__Connection *pc)
{
	/* One measure of the acknowledged offset for both the pop and
	 * output_unacked: every remaining mark then ends inside what is
	 * written (distance < output_unacked + len(output), checked on adopt). */
	uint64_t acked = conn_bytes_acked(cl->conn);
	uint64_t seq = client_acked_seq_upto(cl, acked);
	uint64_t queued = conn_bytes_queued(cl->conn);
	size_t outlen;

	if (!cl->nmarks && seq == cl->delivered_seq)
		return 0;
	Baton__State__Delivery *d = arena_alloc(a, sizeof(*d));
	if (!d)
		return -ENOMEM;
	baton__state__delivery__init(d);
	PUT_I64(d, output_unacked, conn_bytes_written(cl->conn) - acked);
	d->has_acked_seq = 1;
	d->acked_seq = seq;
	if (cl->nmarks) {
		d->marks = arena_alloc(a, cl->nmarks * sizeof(*d->marks));
		Baton__State__DeliveryMark *ms = arena_alloc(a, cl->nmarks * sizeof(*ms));
		if (!d->marks || !ms)
			return -ENOMEM;
		for (size_t i = 0; i < cl->nmarks; i++) {
			const struct delivery_mark *m = &cl->marks[cl->mark_head + i];
			baton__state__delivery_mark__init(&ms[i]);
			ms[i].distance = queued - m->end;
			ms[i].seq = m->seq;
			d->marks[i] = &ms[i];
		}
		d->n_marks = cl->nmarks;
	}
	d->has_delivered_seq = 1;
	d->delivered_seq = cl->delivered_seq;
	(void)conn_output(cl->conn, &outlen);
	d->has_output_len = 1;
	d->output_len = outlen;
	pc->delivery = d;
	return 0;
}

static Baton__State__Connection *ser_client(struct arena *a, struct client *cl,
					    uint32_t idx)
{
	Baton__State__Connection *pc = ser_conn_common(
		a, cl->conn, idx,
		cl->phase == CLIENT_ATTACHED ? BATON__STATE__CONN_ROLE__CONN_ROLE_CLIENT
					     : BATON__STATE__CONN_ROLE__CONN_ROLE_PENDING);
	const char *names[32]; /* every client cap (client.c; bits of an unsigned) */

	if (!pc)
		return NULL;
	pc->has_reg_phase = 1;
	pc->reg_phase = (uint32_t)cl->phase;
	size_t n = client_caps_names(cl->caps, names, sizeof(names) / sizeof(names[0]));
	if (n) {
		pc->caps = arena_alloc(a, n * sizeof(char *));
		if (!pc->caps)
			return NULL;
		for (size_t i = 0; i < n; i++)
			pc->caps[i] = (char *)names[i];
		pc->n_caps = n;
	}
	pc->client_id = cl->client_id;
	if (cl->phase == CLIENT_ATTACHED) {
		pc->has_delivered_seq = 1;
		pc->delivered_seq = cl->delivered_seq;
		if (ser_delivery(a, cl, pc) < 0)
			return NULL;
	}
	PUT_TIME(pc, connected_at_ms, cl->connected_at_ms);
	PUT_TIME(pc, last_rx_ms, cl->last_rx_ms);
	pc->pass = cl->pass;
	pc->nick = cl->nick;
	pc->user = cl->user;
	if (cl->fwd_user != NULL && cl->phase != CLIENT_ATTACHED) {
		Baton__State__Forward *f = arena_alloc(a, sizeof(*f));

		if (!f)
			return NULL;
		baton__state__forward__init(f);
		f->user = cl->fwd_user;
		f->network = cl->fwd_network;
		f->client_id = cl->client_id;
		f->has_hops = 1;
		f->hops = cl->fwd_hops;
		pc->forward = f;
		pc->pass = NULL; /* verified: the password does not travel */
	}
	if (cl->cap_negotiating) {
		pc->has_cap_negotiating = 1;
		pc->cap_negotiating = 1;
	}
	pb_unknown_attach(&pc->base, &cl->unknown);
	return pc;
}

/* Buffers are written in strcmp() order of their names (backlog.h), so the
 * bytes do not depend on backlog internals; one walk, no lookups.
 * Schema 3 with a store (durable != 0): a line the store has committed
 * (a store seq above the buffer's newest unstored line, at most the
 * store's durable seq) is left out and joins the buffer's cold range
 * (Buffer.stored_from/stored_to, backlog.h). */
struct ser_buffers {
	struct arena *a;
	const struct backlog *bl;
	Baton__State__Session *ps;
	Baton__State__Buffer *cur;
	size_t cap; /* of cur->lines */
	bool schema3;      /* adopted cold ranges travel as ranges */
	uint64_t durable;  /* the store's durable seq (0: every line inline) */
	uint64_t unstored; /* cur's newest unstored line */
	size_t omitted;    /* lines left out (all buffers) */
	/* schema < 3: the cold lines to inline (ctx->cold), cur's run of
	 * them [ci, cend) */
	const struct state_cold_line *cold;
	size_t ncold, ci, cend;
};

static int push_line(struct ser_buffers *sb, uint64_t seq, int64_t time_ms,
		     const char *line);

/* cur's cold lines below seq (all: UINT64_MAX), in seq order; one at seq
 * is the cache's line too: skipped. */
static int cold_flush(struct ser_buffers *sb, uint64_t seq)
{
	while (sb->ci < sb->cend && sb->cold[sb->ci].seq <= seq) {
		const struct state_cold_line *c = &sb->cold[sb->ci++];

		if (c->seq == seq)
			break;
		if (push_line(sb, c->seq, c->time_ms, c->line) < 0)
			return -ENOMEM;
	}
	return 0;
}

/* The run of sb->cold whose target is buffer's store name. */
static void cold_find(struct ser_buffers *sb, const char *buffer)
{
	char target[STORE_NAME_MAX + 1];
	size_t lo = 0, hi = sb->ncold;

	sb->ci = sb->cend = 0;
	if (!sb->ncold)
		return;
	history_fold_target(buffer, target, sizeof target);
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (strcmp(sb->cold[mid].target, target) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	sb->ci = sb->cend = lo;
	while (sb->cend < sb->ncold && strcmp(sb->cold[sb->cend].target, target) == 0)
		sb->cend++;
}

static void cold_widen(Baton__State__Buffer *pb, uint64_t from, uint64_t to)
{
	if (!pb->has_stored_from || from < pb->stored_from) {
		pb->has_stored_from = 1;
		pb->stored_from = from;
	}
	if (!pb->has_stored_to || to > pb->stored_to) {
		pb->has_stored_to = 1;
		pb->stored_to = to;
	}
}

static int collect_buffer(void *arg, const char *buffer)
{
	struct ser_buffers *sb = arg;
	Baton__State__Buffer *pb;

	if (sb->cur && cold_flush(sb, UINT64_MAX) < 0)
		return -ENOMEM;
	pb = arena_alloc(sb->a, sizeof(*pb));
	if (!pb)
		return -ENOMEM;
	baton__state__buffer__init(pb);
	cold_find(sb, buffer);
	pb->name = (char *)buffer;
	PUT_I64(pb, dropped_seq, backlog_dropped_seq(sb->bl, buffer));
	if (sb->schema3) {
		uint64_t from, to;

		/* a range adopted and not read back yet stays one (also
		 * without a store here: the lines are in the store) */
		if (backlog_cold_range(sb->bl, buffer, &from, &to))
			cold_widen(pb, from, to);
	}
	if (sb->durable)
		sb->unstored = backlog_unstored_seq(sb->bl, buffer);
	sb->ps->buffers[sb->ps->n_buffers++] = pb;
	sb->cur = pb;
	sb->cap = 0;
	return 0;
}

static int collect_line(void *arg, uint64_t seq, int64_t time_ms,
			const char *buffer, const char *line)
{
	struct ser_buffers *sb = arg;
	Baton__State__Buffer *pb = sb->cur;

	(void)buffer;
	if (sb->durable && seq > sb->unstored && seq <= sb->durable) {
		cold_widen(pb, seq, seq);
		sb->omitted++;
		return 0;
	}
	if (cold_flush(sb, seq) < 0)
		return -ENOMEM;
	return push_line(sb, seq, time_ms, line);
}

static int push_line(struct ser_buffers *sb, uint64_t seq, int64_t time_ms,
		     const char *line)
{
	Baton__State__Buffer *pb = sb->cur;

	if (pb->n_lines == sb->cap) {
		size_t cap = sb->cap ? sb->cap * 2 : 16;
		Baton__State__BacklogLine **nv = arena_alloc(sb->a, cap * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		if (pb->n_lines)
			memcpy(nv, pb->lines, pb->n_lines * sizeof(*nv));
		pb->lines = nv;
		sb->cap = cap;
	}
	Baton__State__BacklogLine *l = arena_alloc(sb->a, sizeof(*l));
	if (!l)
		return -ENOMEM;
	baton__state__backlog_line__init(l);
	l->seq = seq;
	l->time_ms = time_ms;
	l->line = (char *)line;
	pb->lines[pb->n_lines++] = l;
	return 0;
}

static int ser_buffers(struct arena *a, struct session *s,
		       Baton__State__Session *ps, const struct state_ctx *ctx,
		       struct state_result *res)
{
	struct ser_buffers sb = { .a = a, .bl = s->backlog, .ps = ps };
	size_t n = backlog_nbuffers(s->backlog);

	if (ctx->schema >= STATE_SCHEMA_STORE_POS) {
		sb.schema3 = true;
		sb.durable = ctx->store_durable;
	} else {
		sb.cold = ctx->cold;
		sb.ncold = ctx->cold ? ctx->ncold : 0;
	}
	if (n == 0)
		return 0;
	ps->buffers = arena_alloc(a, n * sizeof(*ps->buffers));
	if (!ps->buffers)
		return -ENOMEM;
	int rc = backlog_foreach_buffer_lines(s->backlog, collect_buffer,
					      collect_line, &sb);
	if (rc == 0 && sb.cur)
		rc = cold_flush(&sb, UINT64_MAX);
	res->lines_stored += sb.omitted;
	return rc ? (rc < 0 ? rc : -ENOMEM) : 0;
}

/* A session's member lists: inline (schema 1), or a reference to the
 * shared list written once in the chunk (schema 2, res->lists). */
static Baton__State__Member **ser_members(struct arena *a, const struct shared_channel *sh)
{
	Baton__State__Member **v = arena_alloc(a, sh->nmembers * sizeof(*v));
	Baton__State__Member *ms = arena_alloc(a, sh->nmembers * sizeof(*ms));

	if (!v || !ms)
		return NULL;
	for (size_t j = 0; j < sh->nmembers; j++) {
		baton__state__member__init(&ms[j]);
		ms[j].nick = sh->members[j].nick;
		ms[j].prefixes = sh->members[j].prefixes[0] ? sh->members[j].prefixes : NULL;
		v[j] = &ms[j];
	}
	return v;
}

static Baton__State__Channel *ser_channel(struct arena *a, struct channel *ch,
					  const struct state_ctx *ctx,
					  struct state_result *res)
{
	Baton__State__Channel *pc = arena_alloc(a, sizeof(*pc));
	size_t nm = channel_nmembers(ch);

	if (!pc)
		return NULL;
	baton__state__channel__init(pc);
	pc->name = ch->name;
	pc->topic = ch->topic;
	pc->topic_setter = ch->topic_setter;
	PUT_I64(pc, topic_time, ch->topic_time);
	pc->modes = ch->modes;
	if (ch->joined) {
		pc->has_joined = 1;
		pc->joined = 1;
	}
	if (ch->members_untracked) {
		pc->has_members_untracked = 1;
		pc->members_untracked = 1;
	}
	/* A private list (chanstore.h) is this session's alone: it travels
	 * inside the channel, as in schema 1. */
	if (nm && ctx->schema >= STATE_SCHEMA_SHARED && !ctx->members_inline &&
	    !shared_is_private(ch->sh)) {
		struct shared_channel **grown =
			realloc(res->lists, (res->nlists + 1) * sizeof(*grown));

		if (!grown) {
			a->failed = true;
			return NULL;
		}
		res->lists = grown;
		res->lists[res->nlists++] = ch->sh;
		pc->has_members_shared = 1;
		pc->members_shared = 1;
	} else if (nm) {
		if (!(pc->members = ser_members(a, ch->sh)))
			return NULL;
		pc->n_members = nm;
	}
	pb_unknown_attach(&pc->base, &ch->unknown);
	return pc;
}

static Baton__State__Session *ser_session(struct arena *a, struct session *s,
					  const struct state_ctx *ctx,
					  struct state_result *res)
{
	Baton__State__Session *ps = arena_alloc(a, sizeof(*ps));
	uint32_t idx = 0;

	if (!ps)
		return NULL;
	baton__state__session__init(ps);
	ps->user = s->user;
	ps->network = s->network;
	ps->nick = s->nick;
	ps->user_modes = s->user_modes;
	ps->n_isupport = s->nisupport;
	ps->isupport = s->isupport;
	ps->n_caps = s->ncaps;
	ps->caps = s->caps;
	if (s->nchannels) {
		ps->channels = arena_alloc(a, s->nchannels * sizeof(*ps->channels));
		if (!ps->channels)
			return NULL;
	}
	for (size_t i = 0; i < s->nchannels; i++) {
		Baton__State__Channel *pc = ser_channel(a, s->channels[i], ctx, res);

		if (!pc)
			return NULL;
		ps->channels[ps->n_channels++] = pc;
	}
	if (ser_buffers(a, s, ps, ctx, res) < 0)
		return NULL;
	if (s->npositions) {
		ps->positions = arena_alloc(a, s->npositions * sizeof(*ps->positions));
		Baton__State__ClientPosition *pp = arena_alloc(a, s->npositions * sizeof(*pp));
		if (!ps->positions || !pp)
			return NULL;
		for (size_t i = 0; i < s->npositions; i++) {
			baton__state__client_position__init(&pp[i]);
			pp[i].client_id = s->positions[i].client_id;
			pp[i].seq = s->positions[i].seq;
			ps->positions[i] = &pp[i];
		}
		ps->n_positions = s->npositions;
	}
	ps->has_next_seq = 1;
	ps->next_seq = backlog_next_seq(s->backlog);
	PUT_I64(ps, backlog_evicted_seq, backlog_evicted_seq(s->backlog));
	if (upstream_travels(s)) {
		ps->upstream = ser_upstream(a, s->up, idx++);
		if (!ps->upstream)
			return NULL;
	}
	if (s->nclients) {
		ps->clients = arena_alloc(a, s->nclients * sizeof(*ps->clients));
		if (!ps->clients)
			return NULL;
	}
	for (size_t i = 0; i < s->nclients; i++) {
		ps->clients[i] = ser_client(a, s->clients[i], idx++);
		if (!ps->clients[i])
			return NULL;
		ps->n_clients++;
	}
	ps->away = s->away;
	PUT_TIME(ps, reconnect_at_ms, s->reconnect_at_ms);
	if (s->up != NULL && !upstream_travels(s)) {
		/* It stays behind: the new process connects again (through
		 * its governor) right away. */
		ps->has_reconnect_at_ms = 1;
		ps->reconnect_at_ms = clock_wall_ms();
		if (conn_in_handshake(s->up->conn))
			res->handshakes_left++;
	}
	PUT_I64(ps, reconnect_failures, s->reconnect_failures);
	ps->sasl_failure = s->sasl_failure;
	if (s->sasl_failure)
		PUT_I64(ps, sasl_failure_at_ms, s->sasl_failure_at_ms);
	if (s->quarantined) {
		ps->has_quarantined = 1;
		ps->quarantined = 1;
	}
	ps->server_name = s->server_name;
	ps->welcome = s->welcome;
	ps->myinfo = s->myinfo;
	ps->userhost = s->userhost;
	ps->source_addr = s->source_addr;
	pb_unknown_attach(&ps->base, &s->unknown);
	return ps;
}

/* The governors' snapshot the caller took (proto GovernorState). */
static Baton__State__GovernorState *ser_governor(struct arena *a,
						 const struct governor_snapshot *g)
{
	Baton__State__GovernorState *pg = arena_alloc(a, sizeof(*pg));
	size_t n = g->n;

	if (!pg)
		return NULL;
	baton__state__governor_state__init(pg);
	pg->buckets = arena_alloc(a, (n ? n : 1) * sizeof(*pg->buckets));
	Baton__State__GovernorBucket *pb = arena_alloc(a, (n ? n : 1) * sizeof(*pb));
	if (!pg->buckets || !pb)
		return NULL;
	for (size_t k = 0; k < n; k++) {
		const struct governor_snapshot_bucket *st = &g->v[k];

		baton__state__governor_bucket__init(&pb[k]);
		pb[k].network = st->network;
		pb[k].addr = st->addr;
		/* The level is written even when 0: absent means empty
		 * too, but explicit is clearer to a reader of dumps. */
		pb[k].has_level = 1;
		pb[k].level = st->level;
		pb[k].has_as_of_ms = 1;
		pb[k].as_of_ms = clock_mono_to_wall_ms(st->as_of_ms);
		PUT_TIME(&pb[k], throttled_until_ms, st->throttled_until_ms);
		PUT_I64(&pb[k], strikes, st->strikes);
		pg->buckets[k] = &pb[k];
	}
	pg->n_buckets = n;
	return pg;
}

void state_governor_free(struct governor_snapshot *g)
{
	if (!g)
		return;
	for (size_t i = 0; i < g->n; i++) {
		free(g->v[i].network);
		free(g->v[i].addr);
	}
	free(g->v);
	free(g);
}

int state_serialize(struct bouncer_item *it, const struct state_ctx *ctx,
		    uint8_t **buf, size_t *len, struct state_result *res)
{
	struct arena a = { 0 };
	Baton__State__Item item = BATON__STATE__ITEM__INIT;
	int *fds = NULL;
	size_t nfds = 0;
	int rc = -ENOMEM;

	*buf = NULL;
	*len = 0;
	memset(res, 0, sizeof(*res));
	if (it->kind == ITEM_SESSION) {
		struct session *s = it->session;
		item.session = ser_session(&a, s, ctx, res);
		if (!item.session)
			goto out;
		if (ctx->governor) {
			item.governor = ser_governor(&a, ctx->governor);
			if (!item.governor)
				goto out;
			res->governor_sent = true;
		}
		fds = malloc((s->nclients + 1) * sizeof(int));
		if (!fds)
			goto out;
		if (upstream_travels(s))
			fds[nfds++] = conn_fd(s->up->conn);
		for (size_t i = 0; i < s->nclients; i++)
			fds[nfds++] = conn_fd(s->clients[i]->conn);
	} else {
		item.pending = ser_client(&a, it->client, 0);
		if (!item.pending)
			goto out;
		fds = malloc(sizeof(int));
		if (!fds)
			goto out;
		fds[nfds++] = conn_fd(it->client->conn);
	}
	*len = baton__state__item__get_packed_size(&item);
	*buf = malloc(*len ? *len : 1);
	if (!*buf)
		goto out;
	baton__state__item__pack(&item, *buf);
	free(it->fds);
	it->fds = fds;
	it->nfds = nfds;
	fds = NULL; /* transferred to the item */
	rc = 0;
out:
	if (rc < 0 && a.tls_dead)
		rc = -ECONNRESET; /* "a TLS connection failed", not memory */
	if (rc < 0) {
		free(res->lists);
		memset(res, 0, sizeof(*res));
	}
	free(fds);
	arena_free(&a);
	return rc;
}

/* ---- member lists (schema 2) ---- */

static int ser_list(struct arena *a, const struct shared_channel *sh,
		    Baton__State__MemberList **out)
{
	Baton__State__MemberList *ml = arena_alloc(a, sizeof(*ml));
	size_t nl = (size_t)(sh->channel - sh->key) - 1;

	if (!ml)
		return -ENOMEM;
	baton__state__member_list__init(ml);
	ml->network = arena_alloc(a, nl + 1);
	if (!ml->network)
		return -ENOMEM;
	memcpy(ml->network, sh->key, nl);
	ml->channel = (char *)sh->channel;
	if (sh->nmembers && !(ml->members = ser_members(a, sh)))
		return -ENOMEM;
	ml->n_members = sh->nmembers;
	*out = ml;
	return 0;
}

/* One item of lists [0..n) into a fresh buffer. */
static int pack_lists(Baton__State__MemberList **v, size_t n, uint8_t **buf,
		      size_t *len)
{
	Baton__State__Item item = BATON__STATE__ITEM__INIT;

	item.member_lists = v;
	item.n_member_lists = n;
	*len = baton__state__item__get_packed_size(&item);
	if (!(*buf = malloc(*len ? *len : 1)))
		return -ENOMEM;
	baton__state__item__pack(&item, *buf);
	return 0;
}

int state_serialize_lists(struct shared_channel *const *lists, size_t nlists,
			  size_t max, uint8_t ***bufs, size_t **lens, size_t *n)
{
	struct arena a = { 0 };
	Baton__State__MemberList **v = NULL;
	size_t first = 0, bytes = 0;
	int rc = -ENOMEM;

	*bufs = NULL;
	*lens = NULL;
	*n = 0;
	if (nlists == 0)
		return 0;
	v = calloc(nlists, sizeof(*v));
	*bufs = calloc(nlists, sizeof(**bufs));
	*lens = calloc(nlists, sizeof(**lens));
	if (!v || !*bufs || !*lens)
		goto out;
	for (size_t i = 0; i < nlists; i++) {
		if (ser_list(&a, lists[i], &v[i]) < 0)
			goto out;
		/* its field in Item: tag 1, length varint 5 */
		size_t sz = baton__state__member_list__get_packed_size(v[i]) + 6;

		while (sz > max && v[i]->n_members > 0) {
			/* cannot be (state.h); cut rather than fail everyone */
			size_t cut = v[i]->n_members / 8 + 1;

			log_warn("migrate", "member list of %s is over one message: %zu of its members dropped",
				 v[i]->channel, cut);
			v[i]->n_members -= cut;
			sz = baton__state__member_list__get_packed_size(v[i]) + 6;
		}
		if (i > first && bytes + sz > max) {
			rc = pack_lists(v + first, i - first, &(*bufs)[*n], &(*lens)[*n]);
			if (rc < 0)
				goto out;
			(*n)++;
			first = i;
			bytes = 0;
		}
		bytes += sz;
	}
	rc = pack_lists(v + first, nlists - first, &(*bufs)[*n], &(*lens)[*n]);
	if (rc == 0)
		(*n)++;
out:
	if (rc < 0) {
		for (size_t i = 0; *bufs && i < *n; i++)
			free((*bufs)[i]);
		free(*bufs);
		free(*lens);
		*bufs = NULL;
		*lens = NULL;
		*n = 0;
	}
	free(v);
	arena_free(&a);
	return rc;
}

/* ---- adopt ---- */

struct adopt {
	struct bouncer *b;
	int *fds;
	size_t nfds;
	bool *used;  /* referenced by a Connection */
	bool *taken; /* ownership moved into a conn */
	struct tls_record **tls; /* per fd: its restored record layer, until a
				    conn takes it */
	char *err;
	size_t errlen;
};

static int adopt_fail(struct adopt *ad, int rc, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* *dst = a copy of src (NULL stays NULL): false when out of memory (the
 * adoption fails: util.h policy, never a silently missing value). */
static bool adopt_copy(char **dst, const char *src)
{
	*dst = util_strdup(src);
	return src == NULL || *dst != NULL;
}

/* An adopted upstream connection occupies a slot of its network's governor:
 * the pool address its socket is bound to (its local address), or the
 * kernel's-choice entry of a governor without a pool. A local address that
 * is not in this worker's pool (the pool changed) occupies nothing here. */
static void adopt_gov_slot(struct bouncer *b, struct session *s)
{
	struct governor *g = bouncer_governor(b, s->network);
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char addr[INET6_ADDRSTRLEN] = "";
	int slot;

	if (!g || !s->up)
		return;
	if (governor_naddrs(g) == 1 && governor_addr(g, 0)[0] == '\0') {
		slot = 0;
	} else {
		if (getsockname(conn_fd(s->up->conn), (struct sockaddr *)&ss, &len) < 0)
			return;
		if (ss.ss_family == AF_INET)
			inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, addr, sizeof(addr));
		else if (ss.ss_family == AF_INET6)
			inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, addr, sizeof(addr));
		slot = governor_find_addr(g, addr);
		if (slot < 0)
			return;
	}
	governor_occupy(g, (size_t)slot);
	s->up->gov_slot = slot; /* released by upstream_free() */
}

/* A migrated governor snapshot, decoded for the caller (bouncer.c merges
 * it into its governors). NULL: out of memory. */
static struct governor_snapshot *adopt_governor(const Baton__State__GovernorState *pg)
{
	struct governor_snapshot *g = calloc(1, sizeof(*g));

	if (!g || !(g->v = calloc(pg->n_buckets + 1, sizeof(*g->v)))) {
		free(g);
		return NULL;
	}
	for (size_t i = 0; i < pg->n_buckets; i++, g->n++) {
		const Baton__State__GovernorBucket *pb = pg->buckets[i];
		struct governor_snapshot_bucket *st = &g->v[i];

		st->network = strdup(pb->network);
		st->addr = strdup(pb->addr ? pb->addr : "");
		st->has_level = pb->has_level;
		st->level = pb->has_level ? pb->level : 0;
		st->has_as_of_ms = pb->has_as_of_ms;
		st->as_of_ms = GET_TIME(pb, as_of_ms);
		st->throttled_until_ms = GET_TIME(pb, throttled_until_ms);
		st->strikes = pb->has_strikes ? pb->strikes : 0;
		if (!st->network || !st->addr) {
			g->n++;
			state_governor_free(g);
			return NULL;
		}
	}
	return g;
}

static int adopt_fail(struct adopt *ad, int rc, const char *fmt, ...)
{
	va_list ap;
	if (ad->err && ad->errlen) {
		va_start(ap, fmt);
		vsnprintf(ad->err, ad->errlen, fmt, ap);
		va_end(ap);
	}
	return rc;
}

/* Is pc->delivery current? A worker that does not know it passes it on as
 * an unknown field while rewriting delivered_seq and output (state.proto
 * Delivery): then its offsets and marks are stale. */
static bool delivery_current(const Baton__State__Connection *pc)
{
	const Baton__State__Delivery *d = pc->delivery;
	uint64_t delivered = pc->has_delivered_seq ? pc->delivered_seq : 0;
	uint64_t outlen = pc->has_output ? pc->output.len : 0;

	return d->has_delivered_seq && d->delivered_seq == delivered &&
	       d->has_output_len && d->output_len == outlen;
}

static int check_delivery(struct adopt *ad, const Baton__State__Connection *pc,
			  Baton__State__ConnRole role)
{
	const Baton__State__Delivery *d = pc->delivery;

	if (!d)
		return 0;
	if (role != BATON__STATE__CONN_ROLE__CONN_ROLE_CLIENT)
		return adopt_fail(ad, -EINVAL, "delivery state on a connection of role %d",
				  role);
	uint64_t delivered = pc->has_delivered_seq ? pc->delivered_seq : 0;
	uint64_t prev_seq = d->has_acked_seq ? d->acked_seq : delivered;
	if (prev_seq > delivered)
		return adopt_fail(ad, -EINVAL, "delivery acked_seq %llu above delivered_seq %llu",
				  (unsigned long long)prev_seq,
				  (unsigned long long)delivered);
	if (!delivery_current(pc))
		return 0; /* stale: only acked_seq (a lower bound) is used */
	uint64_t unacked = d->has_output_unacked ? d->output_unacked : 0;
	if (unacked > INT_MAX) /* SIOCOUTQ is an int */
		return adopt_fail(ad, -EINVAL, "delivery output_unacked %llu out of range",
				  (unsigned long long)unacked);
	uint64_t queued = unacked + d->output_len;
	for (size_t i = 0; i < d->n_marks; i++) {
		const Baton__State__DeliveryMark *m = d->marks[i];
		if (m->seq <= prev_seq || m->seq > delivered)
			return adopt_fail(ad, -EINVAL, "delivery mark seq %llu out of order",
					  (unsigned long long)m->seq);
		/* Strictly inside the unacknowledged stream, and decreasing. */
		if (m->distance >= queued || (i && m->distance >= d->marks[i - 1]->distance))
			return adopt_fail(ad, -EINVAL, "delivery mark distance %llu out of range",
					  (unsigned long long)m->distance);
		prev_seq = m->seq;
	}
	return 0;
}

/* Apply a checked pc->delivery to an adopted attached client whose conn
 * holds the restored output. Returns 0 or -ENOMEM. */
static int adopt_delivery(struct client *cl, const Baton__State__Connection *pc)
{
	const Baton__State__Delivery *d = pc->delivery;

	if (d->has_acked_seq)
		cl->acked_seq = d->acked_seq;
	if (!delivery_current(pc))
		return 0;
	conn_restore_in_flight(cl->conn, d->has_output_unacked ? d->output_unacked : 0);
	uint64_t queued = conn_bytes_queued(cl->conn);
	for (size_t i = 0; i < d->n_marks; i++)
		if (client_mark_push(cl, queued - d->marks[i]->distance, d->marks[i]->seq) < 0)
			return -ENOMEM;
	return 0;
}

/* First pass: fd_index of every connection in range, used once, and a
 * stream socket. */
static int check_conn(struct adopt *ad, const Baton__State__Connection *pc,
		      Baton__State__ConnRole role, const char *what)
{
	if (pc->role != role)
		return adopt_fail(ad, -EINVAL, "%s connection has role %d", what, pc->role);
	if (!names_text_ok(pc->nick) || !names_text_ok(pc->user) || !names_text_ok(pc->pass) ||
	    !names_text_ok(pc->client_id))
		return adopt_fail(ad, -EINVAL, "%s connection field with a line break", what);
	/* upstream: sent back in CAP REQ; client: matched against our names */
	for (size_t i = 0; i < pc->n_caps; i++)
		if (!names_word_ok(pc->caps[i]))
			return adopt_fail(ad, -EINVAL, "%s connection: bad capability name", what);
	int rc = check_delivery(ad, pc, role);
	if (rc < 0)
		return rc;
	if (pc->fd_index >= ad->nfds)
		return adopt_fail(ad, -EINVAL, "%s fd_index %u out of range (%zu fds)",
				  what, pc->fd_index, ad->nfds);
	if (ad->used[pc->fd_index])
		return adopt_fail(ad, -EINVAL, "fd_index %u used twice", pc->fd_index);
	ad->used[pc->fd_index] = true;
	int type = 0;
	socklen_t tl = sizeof(type);
	if (getsockopt(ad->fds[pc->fd_index], SOL_SOCKET, SO_TYPE, &type, &tl) < 0)
		return adopt_fail(ad, -ENOTSOCK, "fd_index %u is not a socket",
				  pc->fd_index);
	if (type != SOCK_STREAM)
		return adopt_fail(ad, -EPROTOTYPE, "fd_index %u is not a stream socket",
				  pc->fd_index);
	if (pc->has_transport && pc->transport > 1)
		return adopt_fail(ad, -EPROTONOSUPPORT, "%s connection: unknown transport %u",
				  what, pc->transport);
	if ((pc->has_transport && pc->transport == 1) != (pc->tls != NULL))
		return adopt_fail(ad, -EINVAL, "%s connection: transport and TLS state disagree",
				  what);
	if (pc->tls != NULL) {
		const char *why = NULL;

		ad->tls[pc->fd_index] = tls_record_load(pc->tls, &why);
		if (ad->tls[pc->fd_index] == NULL)
			return adopt_fail(ad, -EINVAL, "%s connection: TLS state: %s",
					  what, why ? why : "out of memory");
	}
	return 0;
}

static struct conn *adopt_conn(struct adopt *ad, const Baton__State__Connection *pc,
			       bool connecting, const struct conn_ops *ops,
			       void *arg)
{
	struct conn *c;

	ad->taken[pc->fd_index] = true; /* conn_adopt owns it even on failure */
	c = conn_adopt(bouncer_base(ad->b), ad->fds[pc->fd_index], connecting,
		       pc->has_input ? pc->input.data : NULL,
		       pc->has_input ? pc->input.len : 0,
		       pc->has_output ? pc->output.data : NULL,
		       pc->has_output ? pc->output.len : 0, ops, arg);
	if (c != NULL && ad->tls[pc->fd_index] != NULL) {
		conn_attach_tls(c, ad->tls[pc->fd_index]); /* taken */
		ad->tls[pc->fd_index] = NULL;
	}
	return c;
}

static struct client *adopt_client(struct adopt *ad, struct session *s,
				   const Baton__State__Connection *pc)
{
	struct client *cl = calloc(1, sizeof(*cl));
	if (!cl)
		return NULL;
	cl->b = ad->b;
	cl->s = s;
	cl->item.kind = ITEM_PENDING;
	cl->item.client = cl;
	cl->item.state = ITEM_ADOPTED;
	cl->phase = s ? CLIENT_ATTACHED : CLIENT_PENDING;
	for (size_t i = 0; i < pc->n_caps; i++)
		cl->caps |= client_cap_from_name(pc->caps[i]);
	cl->cap_negotiating = pc->has_cap_negotiating && pc->cap_negotiating;
	bool copied = adopt_copy(&cl->client_id, pc->client_id);
	cl->delivered_seq = pc->has_delivered_seq ? pc->delivered_seq : 0;
	cl->acked_seq = cl->delivered_seq; /* absent Delivery: the old meaning */
	cl->connected_at_ms = GET_TIME(pc, connected_at_ms);
	cl->last_rx_ms = GET_TIME(pc, last_rx_ms);
	copied &= adopt_copy(&cl->pass, pc->pass);
	copied &= adopt_copy(&cl->nick, pc->nick);
	copied &= adopt_copy(&cl->user, pc->user);
	if (!copied) {
		client_free(cl);
		return NULL;
	}
	if (!s && pc->forward) {
		/* Verified by the worker that forwarded it (peer.h). */
		cl->fwd_user = util_strdup(pc->forward->user);
		cl->fwd_network = util_strdup(pc->forward->network);
		cl->fwd_hops = pc->forward->has_hops ? pc->forward->hops : 0;
		if (!cl->client_id)
			cl->client_id = strdup("default");
		if (!cl->fwd_user || !cl->fwd_network || !cl->client_id) {
			client_free(cl);
			return NULL;
		}
	}
	cl->conn = adopt_conn(ad, pc, false, &client_conn_ops, cl);
	if (cl->conn)
		conn_set_health(cl->conn, &bouncer_health(ad->b)->client_link);
	if (!cl->conn || pb_unknown_copy(&cl->unknown, &pc->base) < 0 ||
	    (s && pc->delivery && adopt_delivery(cl, pc) < 0) ||
	    (s && !cl->client_id && !(cl->client_id = strdup("default")))) {
		client_free(cl);
		return NULL;
	}
	return cl;
}

/* The session's strings, checked with the same rules (names.h) the
 * upstream handlers apply before they store anything from a network: what
 * this refuses, a source can never have accepted. */
static int check_strings(struct adopt *ad, const Baton__State__Session *ps)
{
	const char *one[] = { ps->user_modes, ps->away, ps->server_name,
			      ps->welcome, ps->myinfo, ps->userhost,
			      ps->sasl_failure };
	for (size_t i = 0; i < sizeof(one) / sizeof(one[0]); i++)
		if (!names_text_ok(one[i]))
			return adopt_fail(ad, -EINVAL, "session field with a line break");
	if (ps->nick && ps->nick[0] && !names_nick_ok(ps->nick))
		return adopt_fail(ad, -EINVAL, "bad nick");
	if (ps->sasl_failure && strlen(ps->sasl_failure) >= SASL_REASON_MAX)
		return adopt_fail(ad, -EINVAL, "sasl_failure longer than %d bytes",
				  SASL_REASON_MAX - 1);
	for (size_t i = 0; i < ps->n_isupport; i++)
		if (!names_word_ok(ps->isupport[i]))
			return adopt_fail(ad, -EINVAL, "bad ISUPPORT token");
	for (size_t i = 0; i < ps->n_caps; i++)
		if (!names_word_ok(ps->caps[i]))
			return adopt_fail(ad, -EINVAL, "bad capability name");
	for (size_t i = 0; i < ps->n_channels; i++) {
		const Baton__State__Channel *c = ps->channels[i];
		if (!names_channel_ok(c->name) || !names_text_ok(c->topic) ||
		    !names_text_ok(c->topic_setter) || !names_text_ok(c->modes))
			return adopt_fail(ad, -EINVAL, "bad channel %s", c->name);
		for (size_t j = 0; j < c->n_members; j++)
			if (!names_nick_ok(c->members[j]->nick) ||
			    !names_prefixes_ok(c->members[j]->prefixes))
				return adopt_fail(ad, -EINVAL, "bad member in %s", c->name);
	}
	for (size_t i = 0; i < ps->n_buffers; i++) {
		if (!names_buffer_ok(ps->buffers[i]->name))
			return adopt_fail(ad, -EINVAL, "bad backlog buffer name");
		for (size_t j = 0; j < ps->buffers[i]->n_lines; j++)
			if (!names_text_ok(ps->buffers[i]->lines[j]->line))
				return adopt_fail(ad, -EINVAL, "backlog line with a line break");
	}
	return 0;
}

/* The newest seq a buffer ever stored: its last line, or for a buffer
 * without lines what it dropped last (0: nothing). */
static uint64_t buffer_newest(const Baton__State__Buffer *b)
{
	uint64_t n = b->n_lines ? b->lines[b->n_lines - 1]->seq :
		     b->has_dropped_seq ? b->dropped_seq : 0;

	/* schema 3: its cold range may be newer than its inline lines */
	if (b->has_stored_to && b->stored_to > n)
		n = b->stored_to;
	return n;
}

/* qsort: buffers by the seq of their newest line (backlog store order). */
static int cmp_newest_line(const void *x, const void *y)
{
	uint64_t sa = buffer_newest(*(const Baton__State__Buffer *const *)x);
	uint64_t sb = buffer_newest(*(const Baton__State__Buffer *const *)y);

	return sa < sb ? -1 : sa > sb;
}

#define NOMEM(ad) adopt_fail((ad), -ENOMEM, "out of memory")

/* adopt_session(), part 1: the session is well-formed, configured here,
 * and its strings are storable. */
static int adopt_check(struct adopt *ad, const Baton__State__Session *ps)
{
	if (!ps->user[0] || !ps->network[0] || strchr(ps->user, '/'))
		return adopt_fail(ad, -EINVAL, "session without a valid user/network");
	/* A session this worker's config does not have (a host whose config
	 * was not updated) could never connect or authenticate here: refuse
	 * it, so the chunk aborts, the source keeps serving it and the
	 * upgrade result says why. A bouncer without a config (unit tests)
	 * has nothing to check against. */
	const struct baton_config *cfg = bouncer_config(ad->b);
	if (cfg && !config_find_session(cfg, ps->user, ps->network))
		return adopt_fail(ad, -ENOENT, "session %s/%s is not in this worker's config (%s)",
				  ps->user, ps->network, cfg->path ? cfg->path : "?");
	return check_strings(ad, ps);
}

/* Part 2: who the session is on its network (scalars, ISUPPORT, caps). */
static int adopt_identity(struct adopt *ad, const Baton__State__Session *ps,
			  struct session *s)
{
	if (!adopt_copy(&s->nick, ps->nick) ||
	    !adopt_copy(&s->user_modes, ps->user_modes) ||
	    !adopt_copy(&s->away, ps->away) ||
	    !adopt_copy(&s->sasl_failure, ps->sasl_failure) ||
	    !adopt_copy(&s->server_name, ps->server_name) ||
	    !adopt_copy(&s->welcome, ps->welcome) ||
	    !adopt_copy(&s->myinfo, ps->myinfo) ||
	    !adopt_copy(&s->userhost, ps->userhost))
		return NOMEM(ad);
	s->reconnect_at_ms = GET_TIME(ps, reconnect_at_ms);
	s->reconnect_failures = ps->has_reconnect_failures ? ps->reconnect_failures : 0;
	s->sasl_failure_at_ms = ps->has_sasl_failure_at_ms ? ps->sasl_failure_at_ms : 0;
	s->quarantined = ps->has_quarantined && ps->quarantined;
	s->source_addr = ps->source_addr && ps->source_addr[0] ? strdup(ps->source_addr) : NULL;
	if (ps->source_addr && ps->source_addr[0] && !s->source_addr)
		return NOMEM(ad);
	if (pb_unknown_copy(&s->unknown, &ps->base) < 0)
		return NOMEM(ad);
	for (size_t i = 0; i < ps->n_isupport; i++)
		if (util_strv_push(&s->isupport, &s->nisupport, ps->isupport[i]) < 0)
			return NOMEM(ad);
	for (size_t i = 0; i < ps->n_caps; i++)
		if (util_strv_push(&s->caps, &s->ncaps, ps->caps[i]) < 0)
			return NOMEM(ad);
	return 0;
}

/* Fill a list being built for its chunk with members [0..n) (checked:
 * storable names, each once). */
static int adopt_fill_list(struct adopt *ad, struct shared_channel *into,
			   const char *channel, Baton__State__Member *const *v,
			   size_t n)
{
	for (size_t j = 0; j < n; j++) {
		const Baton__State__Member *pm = v[j];
		struct member *m;

		if (!names_nick_ok(pm->nick) || !names_prefixes_ok(pm->prefixes) ||
		    (pm->prefixes && strlen(pm->prefixes) >= sizeof(m->prefixes)))
			return adopt_fail(ad, -EINVAL, "bad member in %s", channel);
		if (shared_find(into, pm->nick))
			return adopt_fail(ad, -EINVAL, "member %s listed twice in %s",
					  pm->nick, channel);
		if (!(m = shared_add(into, pm->nick)))
			return NOMEM(ad);
		snprintf(m->prefixes, sizeof(m->prefixes), "%s",
			 pm->prefixes ? pm->prefixes : "");
	}
	return 0;
}

/* An item of member lists (schema 2): each built once for the open chunk. */
static int adopt_lists(struct adopt *ad, const Baton__State__Item *item)
{
	struct chanstore *cs = bouncer_chanstore(ad->b);

	for (size_t i = 0; i < item->n_member_lists; i++) {
		const Baton__State__MemberList *ml = item->member_lists[i];
		struct shared_channel *live, *into;
		bool fill;

		if (!names_word_ok(ml->network) || strlen(ml->network) > NAMES_MAX_LEN ||
		    !names_channel_ok(ml->channel) ||
		    strlen(ml->channel) > SESSION_MAX_CHANNEL_NAME)
			return adopt_fail(ad, -EINVAL, "bad member list name");
		live = chanstore_incoming(cs, ml->network, ml->channel, &fill, &into);
		if (!live)
			return NOMEM(ad);
		if (!fill)
			return adopt_fail(ad, -EINVAL, "member list of %s listed twice in a chunk",
					  ml->channel);
		int rc = adopt_fill_list(ad, into, ml->channel, ml->members, ml->n_members);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Part 3: the channels, each with its member list: a reference to the
 * chunk's shared list (schema 2), or its own members (schema 1), which
 * become the chunk's list for that channel if it has none yet (sessions of
 * one network in one channel list the same members: the first one's
 * stands for all of the chunk). */
static int adopt_channels(struct adopt *ad, const Baton__State__Session *ps,
			  struct session *s)
{
	struct chanstore *cs = bouncer_chanstore(ad->b);
	/* Every channel the sender tracked is taken (max_channels bounds new
	 * JOINs: a smaller bound here must not drop channels the user is
	 * in); the name bound is one the sender applied too. */
	size_t max_channels = s->lim.max_channels;
	int rc = 0;

	s->lim.max_channels = SIZE_MAX;
	for (size_t i = 0; i < ps->n_channels && rc == 0; i++) {
		const Baton__State__Channel *pc = ps->channels[i];
		bool shared = pc->has_members_shared && pc->members_shared;
		bool untracked = pc->has_members_untracked && pc->members_untracked;
		struct shared_channel *sh = NULL, *into;
		struct channel *ch;
		bool fill;

		if (session_find_channel(s, pc->name)) {
			rc = adopt_fail(ad, -EINVAL, "channel %s listed twice", pc->name);
			break;
		}
		if (strlen(pc->name) > SESSION_MAX_CHANNEL_NAME)
			continue; /* not tracked here (an older sender's) */
		if (untracked && (pc->n_members || shared)) {
			rc = adopt_fail(ad, -EINVAL, "members of %s listed but untracked",
					pc->name);
			break;
		}
		if (shared && pc->n_members) {
			rc = adopt_fail(ad, -EINVAL, "members of %s both shared and listed",
					pc->name);
			break;
		}
		if (shared && !(sh = chanstore_incoming_find(cs, s->network, pc->name))) {
			rc = adopt_fail(ad, -EINVAL, "member list of %s not in its chunk",
					pc->name);
			break;
		}
		if (shared && session_members_private(s)) {
			/* Shared where it came from, private here (this
			 * worker's member_lists): the session's own copy,
			 * else its sessions would go on sharing one view. */
			const struct shared_channel *from =
				chanstore_incoming_content(cs, s->network, pc->name);
			char scope[SESSION_SCOPE_MAX];

			sh = chanstore_incoming(cs, session_list_scope(s, scope, sizeof(scope)),
						pc->name, &fill, &into);
			if (!sh || !from) {
				rc = NOMEM(ad);
				break;
			}
			for (size_t j = 0; fill && j < from->nmembers; j++) {
				struct member *m = shared_add(into, from->members[j].nick);

				if (!m) {
					rc = NOMEM(ad);
					break;
				}
				memcpy(m->prefixes, from->members[j].prefixes, sizeof(m->prefixes));
			}
			if (rc < 0)
				break;
		}
		if (pc->n_members) {
			/* This worker's scope for the session (a private
			 * list stays the session's own; a shared one is
			 * the first of the chunk's sessions to bring it) */
			char scope[SESSION_SCOPE_MAX];

			sh = chanstore_incoming(cs, session_list_scope(s, scope, sizeof(scope)),
						pc->name, &fill, &into);
			if (!sh) {
				rc = NOMEM(ad);
				break;
			}
			if (fill && (rc = adopt_fill_list(ad, into, pc->name, pc->members,
							  pc->n_members)) < 0)
				break;
		}
		if (!(ch = session_add_channel(s, pc->name))) {
			rc = NOMEM(ad);
			break;
		}
		if (!adopt_copy(&ch->topic, pc->topic) ||
		    !adopt_copy(&ch->topic_setter, pc->topic_setter) ||
		    !adopt_copy(&ch->modes, pc->modes)) {
			rc = NOMEM(ad);
			break;
		}
		ch->topic_time = pc->has_topic_time ? pc->topic_time : 0;
		ch->joined = pc->has_joined && pc->joined;
		ch->members_untracked = untracked;
		if (pb_unknown_copy(&ch->unknown, &pc->base) < 0) {
			rc = NOMEM(ad);
			break;
		}
		/* A list beyond this worker's bounds: the channel is untracked
		 * (channel_use_list()), as it would have been here. */
		if (sh && channel_use_list(ch, sh) < 0)
			rc = NOMEM(ad);
	}
	s->lim.max_channels = max_channels;
	return rc;
}

/* Part 4: the backlog, its sequence numbers, and the delivery positions
 * that refer to them. */
static int adopt_backlog(struct adopt *ad, const Baton__State__Session *ps,
			 struct session *s)
{
	const Baton__State__Buffer **order = NULL;
	uint64_t max_seq = 0;
	int rc = 0;

	/* Restored in the order of their newest line: the backlog then keeps
	 * the right store order, and a state with more buffers than it takes
	 * loses those whose newest line is oldest (backlog.h). */
	if (ps->n_buffers) {
		order = malloc(ps->n_buffers * sizeof(*order));
		if (!order)
			return NOMEM(ad);
		memcpy(order, ps->buffers, ps->n_buffers * sizeof(*order));
		qsort(order, ps->n_buffers, sizeof(*order), cmp_newest_line);
	}
	for (size_t i = 0; i < ps->n_buffers && rc == 0; i++) {
		const Baton__State__Buffer *pb = order[i];
		for (size_t j = 0; j < pb->n_lines; j++) {
			const Baton__State__BacklogLine *l = pb->lines[j];
			if (l->seq == 0) {
				rc = adopt_fail(ad, -EINVAL, "backlog line with seq 0");
				break;
			}
			rc = backlog_restore(s->backlog, pb->name, l->seq, l->time_ms, l->line);
			if (rc < 0) {
				rc = adopt_fail(ad, rc, "backlog buffer %s: bad line seq %llu",
						pb->name, (unsigned long long)l->seq);
				break;
			}
			if (l->seq > max_seq)
				max_seq = l->seq;
		}
		if (rc == 0 && pb->has_dropped_seq && pb->dropped_seq != 0) {
			rc = backlog_restore_dropped(s->backlog, pb->name, pb->dropped_seq);
			if (rc < 0)
				rc = adopt_fail(ad, rc, "backlog buffer %s: dropped_seq %llu not below its lines",
						pb->name, (unsigned long long)pb->dropped_seq);
			else if (pb->dropped_seq > max_seq)
				max_seq = pb->dropped_seq;
		}
		if (rc == 0 && (pb->has_stored_from || pb->has_stored_to)) {
			/* schema 3: a position in the store. Nothing is read
			 * here (history.h reads it when a client replays); a
			 * range beyond what the store holds reads nothing. */
			if (!pb->has_stored_from || !pb->has_stored_to ||
			    pb->stored_from == 0 || pb->stored_from > pb->stored_to ||
			    (pb->has_dropped_seq && pb->stored_from <= pb->dropped_seq))
				rc = adopt_fail(ad, -EINVAL, "backlog buffer %s: bad stored range %llu-%llu",
						pb->name, (unsigned long long)pb->stored_from,
						(unsigned long long)pb->stored_to);
			else if ((rc = backlog_restore_cold(s->backlog, pb->name,
							    pb->stored_from, pb->stored_to)) < 0)
				rc = adopt_fail(ad, rc, "backlog buffer %s: stored range %llu-%llu refused",
						pb->name, (unsigned long long)pb->stored_from,
						(unsigned long long)pb->stored_to);
			else if (pb->stored_to > max_seq)
				max_seq = pb->stored_to;
		}
	}
	free(order);
	if (rc < 0)
		return rc;
	if (ps->has_backlog_evicted_seq && ps->backlog_evicted_seq != 0) {
		backlog_set_evicted_seq(s->backlog, ps->backlog_evicted_seq);
		if (ps->backlog_evicted_seq > max_seq)
			max_seq = ps->backlog_evicted_seq;
	}
	uint64_t next = ps->has_next_seq ? ps->next_seq : max_seq + 1;
	if (next <= max_seq)
		return adopt_fail(ad, -EINVAL, "next_seq %llu not above stored seq %llu",
				  (unsigned long long)next, (unsigned long long)max_seq);
	backlog_set_next_seq(s->backlog, next);
	next = backlog_next_seq(s->backlog);
	/* A client that "has" a line not numbered yet would skip every new
	 * line up to it (client_deliver: seq <= delivered_seq is not sent).
	 * acked_seq and delivery marks are at most delivered_seq
	 * (check_delivery). */
	for (size_t i = 0; i < ps->n_clients; i++) {
		const Baton__State__Connection *pc = ps->clients[i];
		if (pc->has_delivered_seq && pc->delivered_seq >= next)
			return adopt_fail(ad, -EINVAL, "client delivered_seq %llu not below next_seq %llu",
					  (unsigned long long)pc->delivered_seq,
					  (unsigned long long)next);
	}
	for (size_t i = 0; i < ps->n_positions; i++) {
		const Baton__State__ClientPosition *pp = ps->positions[i];
		if (pp->seq >= next)
			return adopt_fail(ad, -EINVAL, "position %llu of client %s beyond next_seq",
					  (unsigned long long)pp->seq, pp->client_id);
		if (session_has_position(s, pp->client_id))
			return adopt_fail(ad, -EINVAL, "position of client %s listed twice",
					  pp->client_id);
		if (session_set_position(s, pp->client_id, pp->seq) < 0)
			return NOMEM(ad);
	}
	return 0;
}

/* Part 5: the upstream connection (its socket checked by check_conn()). */
static int adopt_upstream(struct adopt *ad, const Baton__State__Connection *pc,
			  struct session *s)
{
	uint32_t phase = pc->has_reg_phase ? pc->reg_phase : UP_REGISTERING;

	if (phase > UP_READY)
		return adopt_fail(ad, -EINVAL, "upstream reg_phase %u unknown", phase);
	struct conn *c = adopt_conn(ad, pc, phase == UP_CONNECTING,
				    &upstream_conn_ops, NULL);
	if (!c)
		return NOMEM(ad);
	s->up = upstream_new(s, c);
	if (!s->up) {
		conn_release(c);
		return NOMEM(ad);
	}
	struct upstream *u = s->up;
	/* The labels do not travel, but the old worker's may still be
	 * answered (UPSTREAM_LABEL_TTL_MS): ours start elsewhere than its
	 * bt1.. so that no late answer passes for one of ours (random() is
	 * seeded per worker, main.c; a collision needs one of its 32
	 * pending numbers out of 2^32). */
	u->next_label = (uint32_t)random();
	u->phase = (enum upstream_phase)phase;
	u->cap_negotiating = pc->has_cap_negotiating && pc->cap_negotiating;
	for (size_t i = 0; i < pc->n_caps; i++)
		if (util_strv_push(&u->cap_offered, &u->ncap_offered, pc->caps[i]) < 0)
			return NOMEM(ad);
	if (!adopt_copy(&u->nick_attempt, pc->nick))
		return NOMEM(ad);
	u->connected_at_ms = GET_TIME(pc, connected_at_ms);
	u->last_rx_ms = GET_TIME(pc, last_rx_ms);
	u->ping_sent_ms = GET_TIME(pc, ping_sent_ms);
	u->lag_ms = pc->has_lag_ms ? pc->lag_ms : 0;
	u->next_ping_ms = GET_TIME(pc, next_ping_ms);
	if (pc->has_sasl_state) {
		int rc = sasl_adopt_state(u, pc->sasl_state);
		if (rc == -EINVAL)
			return adopt_fail(ad, -EINVAL, "upstream sasl_state %u unknown",
					  pc->sasl_state);
		if (rc < 0)
			return NOMEM(ad);
	}
	if (pb_unknown_copy(&u->unknown, &pc->base) < 0)
		return NOMEM(ad);
	adopt_gov_slot(ad->b, s);
	return 0;
}

/* Part 6: the attached clients. */
static int adopt_clients(struct adopt *ad, const Baton__State__Session *ps,
			 struct session *s)
{
	for (size_t i = 0; i < ps->n_clients; i++) {
		struct client *cl = adopt_client(ad, s, ps->clients[i]);
		if (!cl)
			return NOMEM(ad);
		if (session_add_client(s, cl) < 0) {
			client_free(cl);
			return NOMEM(ad);
		}
	}
	return 0;
}

static int adopt_session(struct adopt *ad, const Baton__State__Session *ps,
			 struct session **out)
{
	struct session *s;
	int rc = adopt_check(ad, ps);

	if (rc < 0)
		return rc;
	if (!(s = session_new(ad->b, ps->user, ps->network)))
		return NOMEM(ad);
	if ((rc = adopt_identity(ad, ps, s)) < 0 ||
	    (rc = adopt_channels(ad, ps, s)) < 0 ||
	    (rc = adopt_backlog(ad, ps, s)) < 0 ||
	    (ps->upstream && (rc = adopt_upstream(ad, ps->upstream, s)) < 0) ||
	    (rc = adopt_clients(ad, ps, s)) < 0) {
		session_free(s);
		return rc;
	}
	*out = s;
	return 0;
}

/* A socket that reads as closed (EOF) at once. */
static int recovery_closed_socket(void)
{
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -1;
	close(sv[1]);
	return sv[0];
}

static void recover_conn(Baton__State__Connection *pc,
			 Baton__State__ConnRecovery *r, bool drop, int *fds,
			 size_t nfds)
{
	ProtobufCBinaryData t;
	/* drop, unless it is only there for releases without tls
	 * (tls_resume: the supervisor's word that tls is the last one) */
	bool rdrop = r != NULL && r->has_drop && r->drop &&
		     !(r->tls != NULL && r->has_tls_resume && r->tls_resume);

	if (pc->fd_index >= nfds)
		return; /* check_conn refuses it */
	if (r != NULL && r->has_input) {
		t = pc->input;
		pc->input = r->input;
		r->input = t;
		pc->has_input = 1;
	}
	if (r != NULL && r->has_written && r->written > 0) {
		size_t olen = pc->has_output ? pc->output.len : 0;

		if (r->written < olen) {
			memmove(pc->output.data, pc->output.data + r->written,
				olen - r->written);
			pc->output.len = olen - (size_t)r->written;
		} else {
			t = pc->output;
			pc->output = r->head;
			r->head = t;
			pc->has_output = r->has_head;
			if (!r->has_head)
				pc->output.len = 0;
		}
	}
	if (r != NULL && r->tls != NULL && !drop && !rdrop) {
		/* TLS: the record layer after the last recorded I/O replaces
		 * the one of the session record (a connection recorded in
		 * its handshake has none to replace: it cannot go on) */
		Baton__Tls__TlsState *ts = pc->tls;

		if (ts == NULL) {
			drop = true;
		} else {
			pc->tls = r->tls;
			r->tls = ts; /* freed with the item */
		}
	}
	if (drop || rdrop) {
		/* cannot continue from here: closed at once after adoption
		 * (a client reconnects; an upstream through the governor) */
		int fd = recovery_closed_socket();

		if (fd >= 0) {
			close(fds[pc->fd_index]);
			fds[pc->fd_index] = fd;
		}
		if (pc->tls != NULL) {
			/* no record layer for a socket that only says EOF */
			baton__tls__tls_state__free_unpacked(pc->tls, NULL);
			pc->tls = NULL;
			pc->has_transport = 0;
		}
	}
}

/* Custody (sessiond/checkpoint.h): what the dead worker did after this
 * session's record, from the records the supervisor gathered. */
static void apply_recovery(Baton__State__Item *item, int *fds, size_t nfds)
{
	Baton__State__Recovery *rv = item->recovery;
	Baton__State__Session *ps = item->session;
	bool q = rv->has_quarantine && rv->quarantine;

	if (ps->upstream != NULL) {
		uint32_t i = ps->upstream->fd_index;

		recover_conn(ps->upstream, i < rv->n_conns ? rv->conns[i] : NULL,
			     q, fds, nfds);
	}
	for (size_t k = 0; k < ps->n_clients; k++) {
		uint32_t i = ps->clients[k]->fd_index;

		recover_conn(ps->clients[k], i < rv->n_conns ? rv->conns[i] : NULL,
			     false, fds, nfds);
	}
	if (q)
		ps->has_reconnect_at_ms = 0; /* the bouncer parks it (quarantine) */
}

int state_adopt(struct bouncer *b, const uint8_t *buf, size_t len, int *fds,
		size_t nfds, struct bouncer_item **out,
		struct governor_snapshot **governor, char *err, size_t errlen)
{
	struct adopt ad = { .b = b, .fds = fds, .nfds = nfds, .err = err,
			    .errlen = errlen };
	Baton__State__Item *item = NULL;
	struct session *s = NULL;
	struct client *cl = NULL;
	int rc;

	*out = NULL;
	*governor = NULL;
	if (err && errlen)
		err[0] = '\0';
	ad.used = calloc(nfds + 1, sizeof(bool));
	ad.taken = calloc(nfds + 1, sizeof(bool));
	ad.tls = calloc(nfds + 1, sizeof(*ad.tls));
	if (!ad.used || !ad.taken || !ad.tls) {
		rc = adopt_fail(&ad, -ENOMEM, "out of memory");
		goto out;
	}
	item = baton__state__item__unpack(NULL, len, buf);
	if (!item) {
		rc = adopt_fail(&ad, -EBADMSG, "state does not decode (truncated or malformed, %zu bytes)", len);
		goto out;
	}
	if (item->n_member_lists) {
		/* an item of member lists (schema 2): nothing else in it */
		if (item->session || item->pending || item->governor || nfds) {
			rc = adopt_fail(&ad, -EINVAL, "member lists travel in an item of their own");
			goto out;
		}
		rc = adopt_lists(&ad, item);
		goto out;
	}
	if (!!item->session == !!item->pending) {
		rc = adopt_fail(&ad, -EINVAL, "item must hold exactly one of session or pending");
		goto out;
	}
	if (item->recovery != NULL && item->session != NULL)
		apply_recovery(item, fds, nfds);
	/* Validate every fd reference before anything takes an fd. */
	if (item->session) {
		const Baton__State__Session *ps = item->session;
		if (ps->upstream) {
			rc = check_conn(&ad, ps->upstream,
					BATON__STATE__CONN_ROLE__CONN_ROLE_UPSTREAM, "upstream");
			if (rc < 0)
				goto out;
		}
		for (size_t i = 0; i < ps->n_clients; i++) {
			rc = check_conn(&ad, ps->clients[i],
					BATON__STATE__CONN_ROLE__CONN_ROLE_CLIENT, "client");
			if (rc < 0)
				goto out;
		}
	} else {
		rc = check_conn(&ad, item->pending,
				BATON__STATE__CONN_ROLE__CONN_ROLE_PENDING, "pending");
		if (rc < 0)
			goto out;
		const Baton__State__Forward *f = item->pending->forward;
		if (f && (!names_word_ok(f->user) || !names_word_ok(f->network) ||
			  strlen(f->user) > NAMES_MAX_LEN || strlen(f->network) > NAMES_MAX_LEN ||
			  (f->client_id && (!names_word_ok(f->client_id) ||
					    strlen(f->client_id) > SESSION_MAX_CLIENT_NAME)))) {
			rc = adopt_fail(&ad, -EINVAL, "bad forwarded login");
			goto out;
		}
	}
	for (size_t i = 0; i < nfds; i++) {
		if (!ad.used[i]) {
			rc = adopt_fail(&ad, -EINVAL, "fd %zu of %zu not referenced by the state",
					i, nfds);
			goto out;
		}
	}
	if (item->session) {
		rc = adopt_session(&ad, item->session, &s);
		if (rc < 0)
			goto out;
		if (item->governor && !(*governor = adopt_governor(item->governor))) {
			session_free(s);
			rc = adopt_fail(&ad, -ENOMEM, "out of memory");
			goto out;
		}
		s->item.state = ITEM_ADOPTED;
		if (item->recovery != NULL && item->recovery->has_quarantine &&
		    item->recovery->quarantine)
			s->quarantined = true;
		/* lines of the network handled after the record: its channel
		 * state may have moved on (session_resync() once armed) */
		if (item->recovery != NULL && item->session->upstream != NULL &&
		    item->session->upstream->fd_index < item->recovery->n_conns &&
		    item->recovery->conns[item->session->upstream->fd_index]->has_lines &&
		    item->recovery->conns[item->session->upstream->fd_index]->lines > 0)
			s->resync = true;
		*out = &s->item;
	} else {
		cl = adopt_client(&ad, NULL, item->pending);
		if (!cl) {
			rc = adopt_fail(&ad, -ENOMEM, "out of memory");
			goto out;
		}
		*out = &cl->item;
	}
	rc = 0;
out:
	/* A refused session or list item aborts its chunk: the lists it
	 * built may be half-filled, and no later item may use them. */
	if (rc < 0 && item && (item->session || item->n_member_lists))
		chanstore_chunk_end(bouncer_chanstore(b), false);
	/* Every fd not moved into a conn is closed: ownership was ours. */
	for (size_t i = 0; i < nfds; i++)
		if (!ad.taken || !ad.taken[i])
			close(fds[i]);
	if (item)
		baton__state__item__free_unpacked(item, NULL);
	for (size_t i = 0; ad.tls && i < nfds; i++)
		tls_record_free(ad.tls[i]);
	free(ad.tls);
	free(ad.used);
	free(ad.taken);
	return rc;
}
