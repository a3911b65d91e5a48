/* tests/unit/sessiond/test_bigstate.c: the bounds of one session's state
 * (issue 8, bug 2: one session over the 16 MiB migration message blocked
 * every upgrade and rollback). Each bound at its limit and past it; a
 * session at every bound serializing within state_bound() and one message
 * (the arithmetic of sessiond/state.h); and the last line of defence, a
 * session over the message shrunk instead of failing the migration. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "state.pb-c.h"

#include "common/clock.h"
#include "common/config.h"
#include "common/frame.h"
#include "handoff/protocol.h"
#include "sample_state.h"
#include "sessiond/backlog.h"
#include "sessiond/bouncer.h"
#include "sessiond/sasl.h"
#include "sessiond/conn.h"
#include "sessiond/irc.h"
#include "sessiond/session.h"
#include "sessiond/state.h"

#define L IRC_MAX_LINE

/* A bouncer with a config holding alice/example (numeric keys at their
 * defaults, changed by `tune`) and her session adopted with an upstream
 * (reg_phase ready) whose socket's peer is `peer`. Never armed: no I/O. */
struct env {
	struct event_base *base;
	struct bouncer *b;
	struct baton_config cfg;
	struct config_network net;
	struct config_user user;
	struct config_session sess;
	struct bouncer_item *it;
	struct session *s;
	int peer;
	int baseline_fds;
};

typedef void (*tune_fn)(struct baton_config *cfg);

static char *filled(size_t n, char c)
{
	char *p = malloc(n + 1);

	assert_non_null(p);
	memset(p, c, n);
	p[n] = '\0';
	return p;
}

/* The upstream's buffers in the state: `out` bytes of unwritten output and
 * `in` bytes of unread input (complete lines, then a partial one). */
static uint8_t *minimal_item(size_t *len, size_t out, size_t in, const char *nick)
{
	Baton__State__Item item = BATON__STATE__ITEM__INIT;
	Baton__State__Session ps = BATON__STATE__SESSION__INIT;
	Baton__State__Connection up = BATON__STATE__CONNECTION__INIT;
	uint8_t *obuf = NULL, *ibuf = NULL, *buf;

	ps.user = "alice";
	ps.network = "example";
	ps.nick = "alice";
	up.role = BATON__STATE__CONN_ROLE__CONN_ROLE_UPSTREAM;
	up.fd_index = 0;
	up.has_reg_phase = 1;
	up.reg_phase = 3;
	up.nick = (char *)nick;
	if (out) {
		obuf = malloc(out);
		for (size_t i = 0; i < out; i++)
			obuf[i] = i % 500 == 498 ? '\r' : i % 500 == 499 ? '\n' : 'o';
		up.has_output = 1;
		up.output.data = obuf;
		up.output.len = out;
	}
	if (in) {
		ibuf = malloc(in);
		for (size_t i = 0; i < in; i++)
			ibuf[i] = i + 8000 >= in ? 'p' : i % 500 == 499 ? '\n' : 'i';
		up.has_input = 1;
		up.input.data = ibuf;
		up.input.len = in;
	}
	ps.upstream = &up;
	item.session = &ps;
	*len = baton__state__item__get_packed_size(&item);
	buf = malloc(*len);
	baton__state__item__pack(&item, buf);
	free(obuf);
	free(ibuf);
	return buf;
}

static struct env *env_new_with(tune_fn tune, size_t out, size_t in, const char *nick)
{
	struct env *e = calloc(1, sizeof(*e));
	char err[256] = "";
	size_t len;
	uint8_t *buf;
	int sv[2];

	assert_non_null(e);
	e->baseline_fds = count_open_fds();
	e->cfg = *config_default_values();
	/* every bound in memory: the cache is as large as the backlog */
	e->cfg.backlog_cache_lines = e->cfg.backlog_lines;
	e->cfg.path = "/test/baton.ini";
	e->net = (struct config_network){ .name = "example", .host = "127.0.0.1", .port = "1" };
	e->user = (struct config_user){ .name = "alice", .password = "x" };
	e->sess = (struct config_session){ .user = "alice", .network = "example", .nick = "alice" };
	e->cfg.networks = &e->net;
	e->cfg.nnetworks = 1;
	e->cfg.users = &e->user;
	e->cfg.nusers = 1;
	e->cfg.sessions = &e->sess;
	e->cfg.nsessions = 1;
	if (tune)
		tune(&e->cfg);
	e->base = event_base_new();
	e->b = bouncer_new(e->base, &e->cfg);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	e->peer = sv[1];
	buf = minimal_item(&len, out, in, nick);
	if (bouncer_item_adopt(e->b, buf, len, &sv[0], 1, &e->it, err, sizeof(err)) < 0)
		fail_msg("adopt: %s", err);
	free(buf);
	e->s = e->it->session;
	return e;
}

static struct env *env_new(tune_fn tune)
{
	return env_new_with(tune, 0, 0, NULL);
}

static void env_free(struct env *e)
{
	if (e->it)
		bouncer_item_discard(e->it);
	bouncer_free(e->b);
	event_base_free(e->base);
	close(e->peer);
	assert_int_equal(count_open_fds(), e->baseline_fds);
	free(e);
}

static void set_str(char **dst, char *v)
{
	free(*dst);
	*dst = v;
}

/* Serialize e's session within one message; fails on a shrink unless
 * allowed. Returns the packed item (malloc'd). */
static uint8_t *pack_within(struct env *e, size_t max, size_t *len,
			    struct bouncer_shrunk *sh, int want_rc)
{
	const int *fds;
	size_t nfds, nlists = 0;
	uint8_t *buf = NULL;
	void **lists = NULL;
	struct bouncer_pack pk = { .schema = 1 };

	assert_int_equal(bouncer_item_serialize_within(e->it, max, &buf, len, &fds,
						       &nfds, &pk, &lists, &nlists),
			 want_rc);
	*sh = pk.shrunk;
	free(lists);
	bouncer_pack_clear(&pk);
	return buf;
}

/* A second bouncer (same config) adopts buf: what one worker produced at
 * its bounds another takes. Returns the adopted session re-packed. */
static uint8_t *adopt_elsewhere(struct env *e, const uint8_t *buf, size_t len,
				size_t *len2)
{
	struct bouncer *b2 = bouncer_new(e->base, &e->cfg);
	struct bouncer_item *it2 = NULL;
	const int *fds;
	size_t nfds;
	uint8_t *out = NULL;
	char err[256] = "";
	int fd = fcntl(e->peer, F_DUPFD_CLOEXEC, 0);

	if (bouncer_item_adopt(b2, buf, len, &fd, 1, &it2, err, sizeof(err)) < 0)
		fail_msg("adopt elsewhere: %s", err);
	assert_int_equal(bouncer_item_serialize(it2, &out, len2, &fds, &nfds), 0);
	bouncer_item_discard(it2);
	bouncer_free(b2);
	return out;
}

/* ---- the proof: a session at every bound ---- */

/* Everything a session holds, each at its bound (config defaults, every
 * string at the line length), built through the functions that enforce the
 * bounds; each bound is also checked one past it. */
static void fill_to_every_bound(struct env *e)
{
	struct session *s = e->s;
	const struct session_limits *lim = &s->lim;
	char tok[SESSION_MAX_ISUPPORT_TOKEN + 2], name[SESSION_MAX_CHANNEL_NAME + 2];
	char id[SESSION_MAX_CLIENT_NAME + 2];

	set_str(&s->nick, filled(NAMES_MAX_LEN, 'n')); /* names.h: the longest nick kept */
	set_str(&s->user_modes, filled(L, 'm'));
	set_str(&s->away, filled(L, 'a'));
	set_str(&s->server_name, filled(L, 's'));
	set_str(&s->welcome, filled(L, 'w'));
	set_str(&s->userhost, filled(L, 'h'));
	set_str(&s->myinfo, filled(511, 'i'));
	set_str(&s->source_addr, strdup("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"));
	s->reconnect_at_ms = clock_wall_to_mono_ms(-1); /* -1 on the wire: 10 bytes */
	s->reconnect_failures = UINT32_MAX;
	/* sasl.c keeps at most SASL_REASON_MAX - 1 bytes of a failure */
	set_str(&s->sasl_failure, filled(SASL_REASON_MAX - 1, 'f'));
	s->sasl_failure_at_ms = -1;

	/* ISUPPORT: 100 tokens of 510 bytes; one more, or a longer one, is
	 * ignored */
	for (int i = 0; i < SESSION_MAX_ISUPPORT + 5; i++) {
		snprintf(tok, sizeof(tok), "T%03d=", i);
		memset(tok + 5, 'v', SESSION_MAX_ISUPPORT_TOKEN - 5);
		tok[SESSION_MAX_ISUPPORT_TOKEN] = '\0';
		session_isupport_apply(s, tok);
	}
	assert_int_equal(s->nisupport, SESSION_MAX_ISUPPORT);
	memset(tok, 'x', SESSION_MAX_ISUPPORT_TOKEN + 1);
	tok[SESSION_MAX_ISUPPORT_TOKEN + 1] = '\0';
	tok[0] = 'T'; tok[1] = '0'; tok[2] = '0'; tok[3] = '0'; tok[4] = '=';
	session_isupport_apply(s, tok); /* would replace T000: too long */
	assert_int_equal(strlen(s->isupport[0]), SESSION_MAX_ISUPPORT_TOKEN);

	/* channels: max_channels of them with 510-byte names; one more and a
	 * longer name are not tracked */
	for (size_t i = 0; i <= lim->max_channels; i++) {
		snprintf(name, sizeof(name), "#%05zu", i);
		memset(name + 6, 'c', SESSION_MAX_CHANNEL_NAME - 6);
		name[SESSION_MAX_CHANNEL_NAME] = '\0';
		struct channel *ch = session_add_channel(s, name);
		if (i == lim->max_channels) {
			assert_null(ch);
			break;
		}
		assert_non_null(ch);
		ch->topic = filled(L, 't');
		ch->topic_setter = filled(L, 'u');
		ch->topic_time = -1;
		ch->modes = filled(63, 'k');
		ch->joined = true;
	}
	assert_int_equal(s->nchannels, lim->max_channels);
	memset(name, 'c', SESSION_MAX_CHANNEL_NAME + 1);
	name[0] = '#';
	name[SESSION_MAX_CHANNEL_NAME + 1] = '\0';
	assert_null(session_add_channel(s, name));

	/* members: nicks of 255 bytes with 15 prefixes, up to the byte bound
	 * across the channels */
	size_t cost = 255 + SESSION_MEMBER_COST, k = 0;
	for (size_t c = 0; s->member_bytes + cost <= lim->member_list_bytes; c++) {
		struct channel *ch = s->channels[c % s->nchannels];
		char nick[256];

		snprintf(nick, sizeof(nick), "%08zu", k++);
		memset(nick + 8, 'n', 247);
		nick[255] = '\0';
		struct member *m = channel_add_member(ch, nick);
		assert_non_null(m);
		memset(m->prefixes, '@', sizeof(m->prefixes) - 1);
	}
	assert_true(s->member_bytes <= lim->member_list_bytes);
	assert_true(s->member_bytes + cost > lim->member_list_bytes);

	/* backlog: buffers with 510-byte names (some evicted), lines of the
	 * length that fills bytes and lines together */
	size_t per_line = lim->backlog.total_bytes / lim->backlog.total_lines;
	char *text = filled(per_line, 'l');
	for (size_t i = 0; i < lim->backlog.total_lines * 2; i++) {
		/* 20 buffers first that the 100 after them evict */
		if (i < 20)
			snprintf(name, sizeof(name), "x%05zu", i);
		else
			snprintf(name, sizeof(name), "q%05zu", i % lim->backlog.buffers);
		memset(name + 6, 'q', SESSION_MAX_CHANNEL_NAME - 6);
		name[SESSION_MAX_CHANNEL_NAME] = '\0';
		assert_int_not_equal(backlog_append(s->backlog, name, -1, text), 0);
	}
	free(text);
	assert_int_equal(backlog_nbuffers(s->backlog), lim->backlog.buffers);
	assert_true(backlog_nlines(s->backlog) <= lim->backlog.total_lines);
	assert_true(backlog_nbytes(s->backlog) <= lim->backlog.total_bytes);
	assert_true(backlog_nbytes(s->backlog) > lim->backlog.total_bytes - 2 * per_line);
	assert_true(backlog_evicted_seq(s->backlog) > 0);

	/* positions: 64 names of 64 bytes; a 65th takes the place of the one
	 * furthest behind; a longer name is not stored */
	for (int i = 0; i < SESSION_MAX_POSITIONS + 1; i++) {
		snprintf(id, sizeof(id), "%04d", i);
		memset(id + 4, 'd', SESSION_MAX_CLIENT_NAME - 4);
		id[SESSION_MAX_CLIENT_NAME] = '\0';
		session_set_position(s, id, backlog_next_seq(s->backlog) - 1 - (uint64_t)i);
	}
	assert_int_equal(s->npositions, SESSION_MAX_POSITIONS);
	memcpy(id, "0063", 4); /* the furthest behind when 0064 came */
	assert_false(session_has_position(s, id));
	memcpy(id, "0064", 4);
	assert_true(session_has_position(s, id));
	memset(id, 'z', SESSION_MAX_CLIENT_NAME + 1);
	id[SESSION_MAX_CLIENT_NAME + 1] = '\0';
	session_set_position(s, id, 1);
	assert_false(session_has_position(s, id));
}

/* Bug: a session's state had no bound, so one session over the 16 MiB
 * message failed every migration. At every default bound (every string at
 * the line length, the upstream's 4 MiB sendq full) the serialized session
 * stays within state_bound(), which is within one message; another worker
 * adopts it and packs it byte for byte the same. */
static void test_session_at_every_bound_fits(void **state)
{
	char *nick = filled(L, 'x');
	struct env *e = env_new_with(NULL, CONN_MAX_OUTPUT, 60000, nick);
	struct bouncer_shrunk sh;
	size_t len, len2;

	free(nick);
	fill_to_every_bound(e);
	uint8_t *buf = pack_within(e, HANDOFF_ITEM_MAX_PAYLOAD, &len, &sh, 0);
	print_message("session at every bound: %zu bytes, bound %zu, message %u\n",
		      len, state_bound(&e->cfg), (unsigned)HANDOFF_ITEM_MAX_PAYLOAD);
	assert_int_equal(sh.sessions, 0);
	assert_true(len <= state_bound(&e->cfg));
	assert_true(state_bound(&e->cfg) <= HANDOFF_ITEM_MAX_PAYLOAD);
	assert_true(len > state_bound(&e->cfg) - state_bound(&e->cfg) / 10); /* a tight bound */
	assert_int_equal(e->it->nfds, 1);
	uint8_t *again = adopt_elsewhere(e, buf, len, &len2);
	assert_int_equal(len2, len);
	assert_memory_equal(again, buf, len);
	free(again);
	free(buf);
	env_free(e);
}

/* The header's arithmetic, and the preflight's check of a config. */
static void tune_many_channels(struct baton_config *c) { c->max_channels = 300; }

static void test_bound_arithmetic(void **state)
{
	struct baton_config c = *config_default_values();
	char why[512] = "";

	assert_int_equal(state_bound(NULL), 16254189);
	assert_int_equal(state_bound(&c), 16254189);
	assert_int_equal(state_check_config(&c, why, sizeof(why)), 0);
	tune_many_channels(&c); /* past: 50 x 18,012 more */
	assert_int_equal(state_check_config(&c, why, sizeof(why)), -EMSGSIZE);
	assert_non_null(strstr(why, "max_channels"));
	/* a bigger backlog paid for by fewer channels and smaller member lists */
	c.max_channels = 10;
	c.member_list_bytes = 1 << 20;
	c.backlog_session_bytes = 8 << 20;
	c.backlog_session_lines = 60000;
	assert_int_equal(state_check_config(&c, why, sizeof(why)), 0);
}

/* ---- members ---- */

static void tune_members(struct baton_config *c)
{
	c->max_channel_members = 10;
	c->member_list_bytes = 64 << 10;
}

/* Bug: member lists had no bound (a session in big channels, or a network
 * with 100,000-member channels, grew without limit). At max_channel_members
 * the channel keeps all; one more and its list is dropped, the channel
 * kept, until it is cleared (our next JOIN). Likewise for the session's
 * member_list_bytes, also when a rename passes it. */
static void test_member_bounds(void **state)
{
	struct env *e = env_new(tune_members);
	struct channel *a = session_add_channel(e->s, "#a");
	struct channel *b = session_add_channel(e->s, "#b");
	char nick[256];

	for (int i = 0; i < 10; i++) {
		snprintf(nick, sizeof(nick), "m%d", i);
		assert_non_null(channel_add_member(a, nick));
	}
	assert_int_equal(channel_nmembers(a), 10);
	assert_non_null(channel_add_member(a, "m3")); /* known: no new entry */
	assert_null(channel_add_member(a, "m10"));     /* past */
	assert_true(a->members_untracked);
	assert_int_equal(channel_nmembers(a), 0);
	assert_int_equal(e->s->member_bytes, 0);
	assert_null(channel_add_member(a, "late"));
	assert_non_null(session_find_channel(e->s, "#a"));
	channel_clear_members(a);                      /* our JOIN again */
	assert_false(a->members_untracked);
	assert_non_null(channel_add_member(a, "back"));
	channel_remove_member(a, "back");
	assert_int_equal(e->s->member_bytes, 0);

	/* bytes: 64 KiB / (100 + 24) = 528 members of 100 bytes in #b */
	e->s->lim.max_channel_members = 100000;
	size_t fit = (64 << 10) / (100 + SESSION_MEMBER_COST);
	for (size_t i = 0; i < fit; i++) {
		snprintf(nick, sizeof(nick), "%05zu", i);
		memset(nick + 5, 'b', 95);
		nick[100] = '\0';
		assert_non_null(channel_add_member(b, nick));
	}
	assert_int_equal(channel_nmembers(b), fit);
	assert_null(channel_add_member(a, "one-more-somewhere-else-with-a-name-long-enough-to-pass-the-bound"));
	assert_true(a->members_untracked);  /* the channel adding it pays */
	assert_int_equal(channel_nmembers(b), fit);
	/* a rename that passes the bound drops that channel's list */
	channel_clear_members(a);
	snprintf(nick, sizeof(nick), "%05d", 0);
	memset(nick + 5, 'b', 95);
	nick[100] = '\0';
	struct member *m = channel_find_member(b, nick);
	assert_non_null(m);
	char longer[256];
	memset(longer, 'r', 255);
	longer[255] = '\0';
	assert_int_equal(channel_rename_member(b, m, longer), 0);
	assert_true(b->members_untracked);
	assert_int_equal(e->s->member_bytes, 0);
	env_free(e);
}

/* ---- ISUPPORT, positions ---- */

/* Bug: every distinct 005 token was kept, without bound. */
static void test_isupport_bound(void **state)
{
	struct env *e = env_new(NULL);
	char tok[32];

	for (int i = 0; i < SESSION_MAX_ISUPPORT; i++) {
		snprintf(tok, sizeof(tok), "TOK%d=1", i);
		session_isupport_apply(e->s, tok);
	}
	assert_int_equal(e->s->nisupport, SESSION_MAX_ISUPPORT); /* at */
	session_isupport_apply(e->s, "NEW=1");                     /* past */
	assert_int_equal(e->s->nisupport, SESSION_MAX_ISUPPORT);
	assert_null(session_isupport(e->s, "NEW"));
	session_isupport_apply(e->s, "TOK5=2");                    /* replaced */
	assert_string_equal(session_isupport(e->s, "TOK5"), "2");
	session_isupport_apply(e->s, "-TOK5");                     /* removed */
	session_isupport_apply(e->s, "NEW=1");                     /* room again */
	assert_string_equal(session_isupport(e->s, "NEW"), "1");
	env_free(e);
}

/* Bug: every client name ever used kept a position. At 64 names a new one
 * takes the place of the one furthest behind; names over 64 bytes are not
 * stored. */
static void test_positions_bound(void **state)
{
	struct env *e = env_new(NULL);
	char id[80];

	for (int i = 0; i < SESSION_MAX_POSITIONS; i++) {
		snprintf(id, sizeof(id), "c%d", i);
		session_set_position(e->s, id, (uint64_t)(100 + i));
	}
	assert_int_equal(e->s->npositions, SESSION_MAX_POSITIONS);
	session_set_position(e->s, "c5", 7); /* known: updated in place */
	session_set_position(e->s, "new", 500);
	assert_int_equal(e->s->npositions, SESSION_MAX_POSITIONS);
	assert_false(session_has_position(e->s, "c5")); /* it was furthest behind */
	assert_int_equal(session_position(e->s, "new"), 500);
	memset(id, 'x', 65);
	id[65] = '\0';
	session_set_position(e->s, id, 1);
	assert_false(session_has_position(e->s, id));
	id[64] = '\0';
	session_set_position(e->s, id, 1);
	assert_true(session_has_position(e->s, id));
	env_free(e);
}

/* Users hear of lines the session bounds dropped at most once a minute,
 * counting what was dropped meanwhile. */
static void tune_small_backlog(struct baton_config *c)
{
	c->backlog_session_lines = 10;
}

static void test_drop_notice_rate_limited(void **state)
{
	struct env *e = env_new(tune_small_backlog);

	for (int i = 0; i < 10; i++)
		session_store_and_relay(e->s, "#a", ":x PRIVMSG #a :hi", 1, NULL);
	assert_int_equal(e->s->drop_notice_ms, 0);
	session_store_and_relay(e->s, "#a", ":x PRIVMSG #a :hi", 1, NULL);
	assert_int_not_equal(e->s->drop_notice_ms, 0); /* told at once */
	assert_int_equal(e->s->drops.lines, 0);
	int64_t at = e->s->drop_notice_ms;
	for (int i = 0; i < 5; i++)
		session_store_and_relay(e->s, "#a", ":x PRIVMSG #a :hi", 1, NULL);
	assert_int_equal(e->s->drop_notice_ms, at);   /* not again yet */
	assert_int_equal(e->s->drops.lines, 5);       /* counted for the next */
	e->s->drop_notice_ms -= SESSION_DROP_NOTICE_MS;
	session_store_and_relay(e->s, "#a", ":x PRIVMSG #a :hi", 1, NULL);
	assert_int_equal(e->s->drops.lines, 0);
	env_free(e);
}

/* ---- the last line of defence ---- */

static void tune_above_frame(struct baton_config *c)
{
	c->backlog_lines = 1000000;
	c->backlog_cache_lines = 1000000;
	c->backlog_buffer_bytes = 64 << 20;
	c->backlog_session_lines = 1000000;
	c->backlog_session_bytes = 64 << 20;
}

/* Bug: a session over one message failed the migration of everyone
 * ("sending chunk failed: Invalid argument"). With limits deliberately
 * above the message (the preflight refuses such a config: set here by
 * hand), a 20 MB backlog is trimmed, oldest lines first, until the
 * session fits; the result counts it and another worker adopts it. */
static void test_over_message_trims_oldest(void **state)
{
	struct env *e = env_new(tune_above_frame);
	struct bouncer_shrunk sh;
	char why[512];
	size_t len, len2, n = 40000;
	char *text = filled(500, 'w');

	assert_int_equal(state_check_config(&e->cfg, why, sizeof(why)), -EMSGSIZE);
	for (size_t i = 0; i < n; i++)
		backlog_append(e->s->backlog, i % 2 ? "#a" : "bob", 1, text);
	free(text);
	assert_int_equal(backlog_nlines(e->s->backlog), n);
	uint8_t *buf = pack_within(e, HANDOFF_ITEM_MAX_PAYLOAD, &len, &sh, 0);
	assert_true(len <= HANDOFF_ITEM_MAX_PAYLOAD);
	assert_int_equal(sh.sessions, 1);
	assert_int_equal(sh.clients, 0);
	assert_true(sh.lines > 0);
	assert_int_equal(backlog_nlines(e->s->backlog), n - sh.lines);
	/* not much more than needed: within 2% of the message */
	assert_true(len > HANDOFF_ITEM_MAX_PAYLOAD - HANDOFF_ITEM_MAX_PAYLOAD / 50);
	/* the oldest went: what is left are the newest seqs */
	assert_int_equal(backlog_count_after(e->s->backlog, sh.lines), n - sh.lines);
	assert_int_equal(backlog_evicted_seq(e->s->backlog), 0);
	assert_int_equal(backlog_dropped_seq(e->s->backlog, "bob"), sh.lines - (sh.lines % 2 ? 0 : 1));
	uint8_t *again = adopt_elsewhere(e, buf, len, &len2);
	free(again);
	free(buf);
	env_free(e);
}

/* After the backlog, the member lists go (longest first), and a session
 * that has nothing left to give fails with -EMSGSIZE (the migration then
 * aborts: unreachable with a config the preflight accepts). */
static void test_shrink_member_lists_then_gives_up(void **state)
{
	struct env *e = env_new(NULL);
	struct channel *big = session_add_channel(e->s, "#big");
	struct channel *small = session_add_channel(e->s, "#small");
	struct bouncer_shrunk sh;
	char nick[32];
	size_t len, full;

	for (int i = 0; i < 2000; i++) {
		snprintf(nick, sizeof(nick), "member%05d", i);
		assert_non_null(channel_add_member(big, nick));
		if (i < 10)
			assert_non_null(channel_add_member(small, nick));
	}
	uint8_t *buf = pack_within(e, HANDOFF_ITEM_MAX_PAYLOAD, &full, &sh, 0);
	free(buf);
	buf = pack_within(e, full - 1000, &len, &sh, 0);
	assert_true(len <= full - 1000);
	assert_int_equal(sh.member_lists, 1);
	assert_true(big->members_untracked);
	assert_false(small->members_untracked);
	free(buf);
	buf = pack_within(e, 50, &len, &sh, -EMSGSIZE);
	assert_null(buf);
	env_free(e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_session_at_every_bound_fits),
		cmocka_unit_test(test_bound_arithmetic),
		cmocka_unit_test(test_member_bounds),
		cmocka_unit_test(test_isupport_bound),
		cmocka_unit_test(test_positions_bound),
		cmocka_unit_test(test_drop_notice_rate_limited),
		cmocka_unit_test(test_over_message_trims_oldest),
		cmocka_unit_test(test_shrink_member_lists_then_gives_up),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
