/* tests/unit/sessiond/test_upstream.c: a session's upstream against a fake
 * IRC server on loopback (a port the kernel picks): registration with CAP 302
 * (multi-line LS), alternate nick on 433, ISUPPORT with -TOKEN removal,
 * joining configured channels at end of MOTD, channel state from NAMES with
 * multi-prefix, PING/PONG, keepalive PING, ping timeout, and reconnect with
 * backoff and rejoin; keepalive across steps of the wall clock (stepped by
 * interposing clock_gettime(): this executable's definition wins over
 * libc's for the sessiond code it links). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "state.pb-c.h"

#include "common/clock.h"
#include "common/config.h"
#include "sample_state.h"
#include "sessiond/bouncer.h"

static int64_t wall_step_ms; /* added to every CLOCK_REALTIME reading */

int clock_gettime(clockid_t id, struct timespec *ts)
{
	int rc = (int)syscall(SYS_clock_gettime, id, ts);

	if (rc == 0 && id == CLOCK_REALTIME && wall_step_ms) {
		int64_t ns = (int64_t)ts->tv_sec * 1000000000LL + ts->tv_nsec +
			     wall_step_ms * 1000000LL;
		ts->tv_sec = (time_t)(ns / 1000000000LL);
		ts->tv_nsec = (long)(ns % 1000000000LL);
	}
	return rc;
}

struct env {
	struct event_base *base;
	struct bouncer *b;
	struct baton_config cfg;
	struct config_network net;
	struct config_session sess;
	char *chans[2];
	char port[8];
	int lfd;
	int srv; /* accepted upstream connection (we are the server) */
	char buf[1 << 16];
	size_t len;
	bool eof;
	int baseline_fds;
};

static void pump(struct env *e)
{
	event_base_loop(e->base, EVLOOP_NONBLOCK);
	if (e->srv < 0) {
		int fd = accept4(e->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd >= 0) {
			e->srv = fd;
			e->len = 0;
			e->buf[0] = '\0';
			e->eof = false;
		}
		return;
	}
	for (;;) {
		ssize_t r = recv(e->srv, e->buf + e->len, sizeof(e->buf) - 1 - e->len, MSG_DONTWAIT);
		if (r == 0)
			e->eof = true;
		if (r <= 0)
			break;
		e->len += (size_t)r;
	}
	e->buf[e->len] = '\0';
}

static bool wait_cond(struct env *e, const char *s, bool want_eof, int ms)
{
	for (int i = 0; i < ms / 5; i++) {
		pump(e);
		if (s && e->srv >= 0 && strstr(e->buf, s))
			return true;
		if (want_eof && e->eof)
			return true;
		if (!s && !want_eof && e->srv >= 0)
			return true;
		usleep(5000);
	}
	fprintf(stderr, "timeout waiting for '%s' (eof %d); got:\n%s\n", s ? s : "",
		want_eof, e->buf);
	return false;
}

static void say(struct env *e, const char *line)
{
	char b[1024];
	int n = snprintf(b, sizeof(b), "%s\r\n", line);
	assert_int_equal(send(e->srv, b, (size_t)n, MSG_NOSIGNAL), n);
}

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));
	e->baseline_fds = count_open_fds();
	e->srv = -1;
	e->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	setsockopt(e->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in sin = { .sin_family = AF_INET };
	inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
	sin.sin_port = 0; /* the kernel picks */
	assert_int_equal(bind(e->lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	socklen_t slen = sizeof(sin);
	assert_int_equal(getsockname(e->lfd, (struct sockaddr *)&sin, &slen), 0);
	int port = ntohs(sin.sin_port);
	assert_int_equal(listen(e->lfd, 4), 0);
	snprintf(e->port, sizeof(e->port), "%d", port);

	e->base = event_base_new();
	e->cfg.backlog_lines = 100;
	e->cfg.ping_interval_s = 1;
	e->cfg.ping_timeout_s = 3;
	e->cfg.reconnect_min_s = 1;
	e->cfg.reconnect_max_s = 4;
	e->net = (struct config_network){ .name = "example", .host = "127.0.0.1", .port = e->port };
	e->chans[0] = "#baton";
	e->chans[1] = "#dev";
	e->sess = (struct config_session){ .user = "alice", .network = "example",
					   .nick = "alice", .username = "al",
					   .realname = "Alice L", .channels = e->chans,
					   .nchannels = 2 };
	e->cfg.networks = &e->net;
	e->cfg.nnetworks = 1;
	e->cfg.sessions = &e->sess;
	e->cfg.nsessions = 1;
	e->b = bouncer_new(e->base, &e->cfg);
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;
	bouncer_free(e->b);
	event_base_free(e->base);
	if (e->srv >= 0)
		close(e->srv);
	close(e->lfd);
	assert_int_equal(count_open_fds(), e->baseline_fds);
	free(e);
	return 0;
}

static Baton__State__Item *snapshot(struct env *e, struct bouncer_item **itp)
{
	struct bouncer_item **items;
	uint8_t *out;
	size_t olen, nfds;
	const int *fds;
	size_t n = bouncer_items(e->b, &items);
	assert_int_equal(n, 1);
	struct bouncer_item *it = items[0];
	free(items);
	bouncer_item_freeze(it);
	assert_int_equal(bouncer_item_serialize(it, &out, &olen, &fds, &nfds), 0);
	Baton__State__Item *item = baton__state__item__unpack(NULL, olen, out);
	free(out);
	assert_non_null(item);
	*itp = it;
	return item;
}

static void register_fully(struct env *e, const char *nick)
{
	char l[256];
	snprintf(l, sizeof(l), ":irc.test 001 %s :Welcome to the Test Network %s!al@127.0.0.1", nick, nick);
	say(e, l);
	snprintf(l, sizeof(l), ":irc.test 005 %s PREFIX=(qov)~@+ CHANTYPES=# EXCEPTS NETWORK=Test :are supported by this server", nick);
	say(e, l);
	snprintf(l, sizeof(l), ":irc.test 005 %s -EXCEPTS NICKLEN=20 :are supported by this server", nick);
	say(e, l);
	snprintf(l, sizeof(l), ":irc.test 376 %s :End of MOTD", nick);
	say(e, l);
}

static void test_register_track_reconnect(void **state)
{
	struct env *e = *state;

	bouncer_start_configured(e->b);
	assert_true(wait_cond(e, NULL, false, 2000));
	assert_true(wait_cond(e, "CAP LS 302\r\nNICK alice\r\nUSER al 0 * :Alice L\r\n", false, 2000));

	/* multi-line CAP LS: only the wanted caps are requested, once */
	e->len = 0;
	say(e, ":irc.test CAP * LS * :multi-prefix sasl=PLAIN");
	say(e, ":irc.test CAP * LS :server-time account-tag away-notify");
	assert_true(wait_cond(e, "CAP REQ :multi-prefix server-time away-notify\r\n", false, 2000));
	say(e, ":irc.test CAP * ACK :multi-prefix server-time away-notify");
	assert_true(wait_cond(e, "CAP END\r\n", false, 2000));

	/* nick taken: the alternate */
	e->len = 0;
	say(e, ":irc.test 433 * alice :Nickname is already in use");
	assert_true(wait_cond(e, "NICK alice_\r\n", false, 2000));

	e->len = 0;
	register_fully(e, "alice_");
	assert_true(wait_cond(e, "JOIN #baton\r\nJOIN #dev\r\n", false, 2000));
	say(e, ":alice_!al@127.0.0.1 JOIN #baton");
	say(e, ":irc.test 353 alice_ = #baton :~@alice_ @+bob carol!c@h");
	say(e, ":irc.test 366 alice_ #baton :End of /NAMES list.");
	say(e, ":irc.test 332 alice_ #baton :the topic");
	say(e, ":irc.test 333 alice_ #baton bob 1700000000");
	say(e, ":irc.test 324 alice_ #baton +ntk key");
	say(e, ":bob!b@h MODE #baton -o+q bob carol");
	say(e, ":irc.test MODE alice_ :+iw");
	say(e, "@time=2025-01-01T00:00:00.000Z :bob!b@h PRIVMSG #baton :stored");
	say(e, "PING :abc");
	assert_true(wait_cond(e, "PONG :abc\r\n", false, 2000));
	/* keepalive ping every second, answered: lag measured */
	assert_true(wait_cond(e, "PING :baton-", false, 3000));
	char *tok = strstr(e->buf, "PING :baton-");
	char pong[128];
	snprintf(pong, sizeof(pong), ":irc.test PONG irc.test :%.*s", (int)strcspn(tok + 6, "\r\n"), tok + 6);
	say(e, pong);
	for (int i = 0; i < 20; i++) {
		pump(e);
		usleep(2000);
	}

	struct bouncer_stats st;
	bouncer_stats(e->b, &st);
	assert_int_equal(st.upstreams, 1);

	struct bouncer_item *it;
	Baton__State__Item *item = snapshot(e, &it);
	Baton__State__Session *s = item->session;
	assert_string_equal(s->nick, "alice_");
	assert_string_equal(s->server_name, "irc.test");
	assert_string_equal(s->userhost, "al@127.0.0.1");
	assert_string_equal(s->user_modes, "+iw");
	assert_int_equal(s->n_caps, 3);
	assert_int_equal(s->n_isupport, 4);
	assert_string_equal(s->isupport[0], "PREFIX=(qov)~@+");
	assert_string_equal(s->isupport[3], "NICKLEN=20"); /* EXCEPTS removed */
	assert_int_equal(s->n_channels, 1);
	Baton__State__Channel *c = s->channels[0];
	assert_string_equal(c->topic, "the topic");
	assert_string_equal(c->topic_setter, "bob");
	assert_int_equal(c->topic_time, 1700000000);
	assert_string_equal(c->modes, "+ntk");
	assert_int_equal(c->n_members, 3);
	assert_string_equal(c->members[0]->prefixes, "~@");
	assert_string_equal(c->members[1]->nick, "bob");
	assert_string_equal(c->members[1]->prefixes, "+");
	assert_string_equal(c->members[2]->nick, "carol");
	assert_string_equal(c->members[2]->prefixes, "~");
	assert_int_equal(s->n_buffers, 1);
	assert_int_equal(s->buffers[0]->lines[0]->time_ms, 1735689600000LL);
	assert_string_equal(s->buffers[0]->lines[0]->line, ":bob!b@h PRIVMSG #baton :stored");
	assert_int_equal(s->upstream->reg_phase, 3);
	/* lag on loopback rounds to 0 ms (absent in the state) */
	assert_false(s->upstream->has_ping_sent_ms); /* answered */
	baton__state__item__free_unpacked(item, NULL);
	bouncer_item_thaw(it);

	/* the server goes away: reconnect after ~1 s (backoff), rejoin */
	close(e->srv);
	e->srv = -1;
	assert_true(wait_cond(e, NULL, false, 3000));
	assert_true(wait_cond(e, "USER al 0 * :Alice L\r\n", false, 2000));
	say(e, ":irc.test CAP * LS :sasl");
	assert_true(wait_cond(e, "CAP END\r\n", false, 2000));
	e->len = 0;
	register_fully(e, "alice");
	/* #dev never joined, #baton joined before: both (once each) */
	assert_true(wait_cond(e, "JOIN #dev\r\nJOIN #baton\r\n", false, 2000));

	/* silence: keepalive PINGs, then a ping timeout (3 s) closes it */
	assert_true(wait_cond(e, NULL, true, 6000));
	close(e->srv);
	e->srv = -1;
	/* and it comes back once more */
	assert_true(wait_cond(e, NULL, false, 4000));
}

/* Bug: h_cap strcat'ed the CAP REQ into a 256-byte stack buffer once per
 * repetition of a wanted cap in CAP LS: 21+ copies overflowed the stack (a
 * remote memory-safety bug any network could trigger), and every CAP ACK
 * grew the session's cap list without bound. */
static void test_cap_ls_repeated_caps(void **state)
{
	struct env *e = *state;

	bouncer_start_configured(e->b);
	assert_true(wait_cond(e, NULL, false, 2000));
	assert_true(wait_cond(e, "USER al 0 * :Alice L\r\n", false, 2000));
	e->len = 0;
	/* 3,000 copies over 300 continuation lines, then the last line */
	char line[1024];
	for (int i = 0; i < 300; i++) {
		int n = snprintf(line, sizeof(line), ":irc.test CAP * LS * :");
		for (int j = 0; j < 10; j++)
			n += snprintf(line + n, sizeof(line) - (size_t)n, "%sserver-time",
				      j ? " " : "");
		say(e, line);
	}
	say(e, ":irc.test CAP * LS :server-time multi-prefix server-time");
	assert_true(wait_cond(e, "CAP REQ :server-time multi-prefix\r\n", false, 3000));
	/* an ACK repeating caps (and one never requested) stores each once */
	for (int i = 0; i < 100; i++)
		say(e, ":irc.test CAP * ACK :server-time server-time multi-prefix sasl");
	assert_true(wait_cond(e, "CAP END\r\n", false, 2000));
	register_fully(e, "alice");
	assert_true(wait_cond(e, "JOIN #baton\r\n", false, 2000));

	struct bouncer_item *it;
	Baton__State__Item *item = snapshot(e, &it);
	assert_int_equal(item->session->n_caps, 2);
	baton__state__item__free_unpacked(item, NULL);
	bouncer_item_thaw(it);
}

/* Wait until every line sent so far was processed (a PING answered). */
static void sync_lines(struct env *e)
{
	static unsigned n;
	char ping[64], pong[64];
	snprintf(ping, sizeof(ping), "PING :sync%u", ++n);
	snprintf(pong, sizeof(pong), "PONG :sync%u\r\n", n);
	say(e, ping);
	assert_true(wait_cond(e, pong, false, 2000));
}

/* Serialize the session and adopt it in a second bouncer with the same
 * config, as a migration target would; returns adopt's result (err: the
 * reason). The source thaws and keeps serving. */
static int adopt_elsewhere(struct env *e, char *err, size_t errlen)
{
	struct bouncer_item **items, *it, *adopted = NULL;
	uint8_t *out;
	size_t olen, nfds;
	const int *fds;
	assert_int_equal(bouncer_items(e->b, &items), 1);
	it = items[0];
	free(items);
	bouncer_item_freeze(it);
	assert_int_equal(bouncer_item_serialize(it, &out, &olen, &fds, &nfds), 0);
	int dups[4];
	assert_true(nfds <= 4);
	for (size_t i = 0; i < nfds; i++)
		dups[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 0);
	struct bouncer *t = bouncer_new(e->base, &e->cfg);
	err[0] = '\0';
	int rc = bouncer_item_adopt(t, out, olen, dups, nfds, &adopted, err, errlen);
	if (rc == 0)
		bouncer_item_discard(adopted);
	bouncer_free(t);
	free(out);
	bouncer_item_thaw(it);
	return rc;
}

/* Bug: the source stored what every target refused, so one network could
 * block all upgrades for good: `:me JOIN :` (empty channel), `:other NICK :`
 * (empty member), PREFIX symbols that are letters, over-long names. Each
 * hostile line is now ignored by the same rules (names.h) adoption applies,
 * and the session stays adoptable after every one of them. */
static void test_poison_state_never_stored(void **state)
{
	struct env *e = *state;
	char err[256], longname[1024], line[1200];

	bouncer_start_configured(e->b);
	assert_true(wait_cond(e, NULL, false, 2000));
	assert_true(wait_cond(e, "USER al 0 * :Alice L\r\n", false, 2000));
	say(e, ":irc.test CAP * LS :multi-prefix");
	say(e, ":irc.test CAP * ACK :multi-prefix");
	register_fully(e, "alice");
	assert_true(wait_cond(e, "JOIN #baton\r\n", false, 2000));
	say(e, ":alice!al@127.0.0.1 JOIN #baton");
	say(e, ":irc.test 353 alice = #baton :@alice bob");

	memset(longname, 'x', 600);
	longname[0] = '#';
	longname[600] = '\0';
	const char *hostile[] = {
		":alice!al@h JOIN :",            /* empty channel */
		":alice!al@h JOIN :#a b",        /* space in a channel */
		":alice!al@h JOIN #a,#b",        /* comma */
		":bob!b@h NICK :",               /* empty member */
		":bob!b@h NICK :bo b",           /* space in a nick */
		":irc.test 353 alice = #baton :@ +, ok!u@h a@b",
		":irc.test 005 alice PREFIX=(ov)ab :are supported",
		":irc.test 353 alice = #baton :acarol bdave",
		":irc.test 005 alice PREFIX=(ov)@+ - :are supported",
		":!x@h PRIVMSG alice :no nick",
		":alice!al@h NICK :",            /* our own nick emptied */
		":irc.test 001 :",
		"@time=x :bo,b!b@h PRIVMSG alice :comma nick",
	};
	for (size_t i = 0; i < sizeof(hostile) / sizeof(hostile[0]); i++) {
		say(e, hostile[i]);
		sync_lines(e);
		int rc = adopt_elsewhere(e, err, sizeof(err));
		if (rc != 0)
			fail_msg("after \"%s\": adopt refused: %s", hostile[i], err);
	}
	/* over-long names: a channel, a member, a query partner */
	snprintf(line, sizeof(line), ":alice!al@h JOIN %s", longname);
	say(e, line);
	snprintf(line, sizeof(line), ":irc.test 353 alice = #baton :%s", longname + 1);
	say(e, line);
	snprintf(line, sizeof(line), ":%s!u@h PRIVMSG alice :hi", longname + 1);
	say(e, line);
	sync_lines(e);
	assert_int_equal(adopt_elsewhere(e, err, sizeof(err)), 0);

	/* and what was valid is still there */
	struct bouncer_item *it;
	Baton__State__Item *item = snapshot(e, &it);
	assert_string_equal(item->session->nick, "alice");
	assert_int_equal(item->session->n_channels, 1);
	Baton__State__Channel *ch = item->session->channels[0];
	/* bob left our view when he took an empty nick; "ok!u@h" is a
	 * userhost-in-names entry; with PREFIX=(ov)ab refused the defaults
	 * stay, so "acarol" and "bdave" are plain nicks; our own nick was
	 * kept through `NICK :` and `001 :` */
	const char *want[] = { "@alice", "ok", "acarol", "bdave" };
	assert_int_equal(ch->n_members, 4);
	for (size_t w = 0; w < 4; w++) {
		bool found = false;
		for (size_t i = 0; i < ch->n_members; i++) {
			char one[600];
			snprintf(one, sizeof(one), "%s%s",
				 ch->members[i]->prefixes ? ch->members[i]->prefixes : "",
				 ch->members[i]->nick);
			found |= strcmp(one, want[w]) == 0;
		}
		if (!found)
			fail_msg("member %s missing", want[w]);
	}
	baton__state__item__free_unpacked(item, NULL);
	bouncer_item_thaw(it);
}

static void settle(struct env *e)
{
	for (int i = 0; i < 20; i++) {
		pump(e);
		usleep(2000);
	}
}

static void answer_ping(struct env *e)
{
	char *tok = strstr(e->buf, "PING :baton-");
	char pong[128];

	assert_non_null(tok);
	snprintf(pong, sizeof(pong), ":irc.test PONG irc.test :%.*s",
		 (int)strcspn(tok + 6, "\r\n"), tok + 6);
	say(e, pong);
}

/* Keepalive runs on the monotonic clock: a wall clock stepped forward an
 * hour neither fires the ping timeout (it did, at the next timer) nor one
 * stepped back suppresses the PINGs and the timeout (they stopped for an
 * hour). The state still carries wall-clock times (state.proto rule 6). */
static void test_keepalive_wall_clock_steps(void **state)
{
	struct env *e = *state;

	bouncer_start_configured(e->b);
	assert_true(wait_cond(e, NULL, false, 2000));
	assert_true(wait_cond(e, "USER al 0 * :Alice L\r\n", false, 2000));
	say(e, ":irc.test CAP * LS :sasl");
	assert_true(wait_cond(e, "CAP END\r\n", false, 2000));
	e->len = 0;
	register_fully(e, "alice");
	assert_true(wait_cond(e, "PING :baton-", false, 3000));
	answer_ping(e);
	settle(e); /* the PONG is read before the step */

	wall_step_ms = 3600000;
	e->len = 0;
	assert_true(wait_cond(e, "PING :baton-", false, 3000));
	assert_false(e->eof);
	answer_ping(e);
	settle(e);

	struct bouncer_item *it;
	Baton__State__Item *item = snapshot(e, &it);
	int64_t wall = clock_wall_ms();
	assert_true(item->session->upstream->has_next_ping_ms);
	assert_in_range(item->session->upstream->next_ping_ms, wall - 200, wall + 1200);
	assert_in_range(item->session->upstream->last_rx_ms, wall - 1200, wall + 200);
	baton__state__item__free_unpacked(item, NULL);
	bouncer_item_thaw(it);

	wall_step_ms = -3600000;
	e->len = 0;
	assert_true(wait_cond(e, "PING :baton-", false, 3000));
	/* unanswered from here: the ping timeout (3 s) closes it */
	assert_true(wait_cond(e, NULL, true, 6000));
	close(e->srv);
	e->srv = -1;
	/* and the backoff brings it back */
	assert_true(wait_cond(e, NULL, false, 4000));
	wall_step_ms = 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_register_track_reconnect, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cap_ls_repeated_caps, setup, teardown),
		cmocka_unit_test_setup_teardown(test_poison_state_never_stored, setup, teardown),
		cmocka_unit_test_setup_teardown(test_keepalive_wall_clock_steps, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
