/* tests/unit/sessiond/test_sasl.c: SASL to networks. The mechanisms alone
 * (sessiond/sasl_mech.h: RFC 7677's SCRAM-SHA-256 example, PLAIN, the
 * AUTHENTICATE framing at and past 400 characters both ways, the bounds),
 * then a session's registration against a fake IRC server on loopback:
 * PLAIN success with CAP END only after 903, 904 closing the connection
 * with the reason kept and the next attempt a reconnect_max away, the
 * mechanism or the cap missing, a SCRAM server whose signature is wrong
 * (its server-first sent in two AUTHENTICATE chunks), and the exchange in
 * progress marked in the serialized state. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
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
#include <openssl/evp.h>

#include "state.pb-c.h"

#include "common/clock.h"
#include "common/config.h"
#include "sample_state.h"
#include "sessiond/bouncer.h"
#include "sessiond/sasl.h"
#include "sessiond/sasl_mech.h"
#include "sessiond/session.h"

/* ---- the mechanisms ---- */

static void test_mech_names(void **state)
{
	assert_int_equal(sasl_mech_parse("scram-sha-256"), SASL_MECH_SCRAM_SHA_256);
	assert_int_equal(sasl_mech_parse("PLAIN"), SASL_MECH_PLAIN);
	assert_int_equal(sasl_mech_parse("DIGEST-MD5"), SASL_MECH_NONE);
	assert_true(sasl_mech_in_list("PLAIN,EXTERNAL", SASL_MECH_EXTERNAL));
	assert_true(sasl_mech_in_list("", SASL_MECH_PLAIN)); /* no list: says nothing */
	assert_false(sasl_mech_in_list("EXTERNAL,SCRAM-SHA-1", SASL_MECH_PLAIN));
	/* a prefix is not the mechanism */
	assert_false(sasl_mech_in_list("SCRAM-SHA-256-PLUS", SASL_MECH_SCRAM_SHA_256));
	assert_true(sasl_mech_in_list("SCRAM-SHA-256-PLUS,SCRAM-SHA-256", SASL_MECH_SCRAM_SHA_256));
}

/* RFC 7677 section 3: user "user", password "pencil". */
static void test_scram_rfc7677(void **state)
{
	struct sasl_scram sc;
	char out[SASL_MSG_MAX];
	const char *sfirst = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
			     "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
	const char *sfinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

	memset(&sc, 0, sizeof(sc));
	int n = sasl_scram_first(&sc, "user", "rOprNGfwEbeRWgbNEkqO", out, sizeof(out));
	assert_int_equal(n, (int)strlen("n,,n=user,r=rOprNGfwEbeRWgbNEkqO"));
	assert_string_equal(out, "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
	n = sasl_scram_final(&sc, sfirst, strlen(sfirst), "pencil", out, sizeof(out));
	assert_true(n > 0);
	assert_string_equal(out, "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
				 "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
	assert_int_equal(sasl_scram_verify(&sc, sfinal, strlen(sfinal)), 0);

	/* A server that does not know the password: its signature differs. */
	sasl_scram_first(&sc, "user", "rOprNGfwEbeRWgbNEkqO", out, sizeof(out));
	assert_true(sasl_scram_final(&sc, sfirst, strlen(sfirst), "pencil", out, sizeof(out)) > 0);
	const char *bad = "v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
	assert_int_equal(sasl_scram_verify(&sc, bad, strlen(bad)), -EACCES);
	sasl_scram_first(&sc, "user", "rOprNGfwEbeRWgbNEkqO", out, sizeof(out));
	assert_true(sasl_scram_final(&sc, sfirst, strlen(sfirst), "pencil", out, sizeof(out)) > 0);
	assert_int_equal(sasl_scram_verify(&sc, "e=invalid-proof", 15), -EACCES);
	/* verify before final: refused */
	sasl_scram_first(&sc, "user", "abc", out, sizeof(out));
	assert_int_equal(sasl_scram_verify(&sc, sfinal, strlen(sfinal)), -EPROTO);
	sasl_scram_clear(&sc);
}

static void test_scram_hostile_server_first(void **state)
{
	struct sasl_scram sc;
	char out[SASL_MSG_MAX];
	const char *cases[] = {
		"r=someoneelse123,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", /* not our nonce */
		"r=abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",            /* not extended */
		"r=abcX,i=4096",                                       /* no salt */
		"r=abcX,s=%%%,i=4096",                                 /* salt not base64 */
		"r=abcX,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=12x",             /* bad count */
		"m=ext,r=abcX,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",      /* mandatory ext */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		sasl_scram_first(&sc, "u", "abc", out, sizeof(out));
		assert_int_equal(sasl_scram_final(&sc, cases[i], strlen(cases[i]), "pw", out,
						  sizeof(out)), -EPROTO);
	}
	/* Iterations: at the bound accepted (not run here: slow), past refused
	 * before any PBKDF2 work. */
	sasl_scram_first(&sc, "u", "abc", out, sizeof(out));
	const char *many = "r=abcX,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=100001";
	assert_int_equal(sasl_scram_final(&sc, many, strlen(many), "pw", out, sizeof(out)),
			 -ERANGE);
	sasl_scram_first(&sc, "u", "abc", out, sizeof(out));
	const char *zero = "r=abcX,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0";
	assert_int_equal(sasl_scram_final(&sc, zero, strlen(zero), "pw", out, sizeof(out)),
			 -ERANGE);
	/* Usernames are escaped: ',' and '='. */
	sasl_scram_first(&sc, "a,b=c", "n0", out, sizeof(out));
	assert_string_equal(out, "n,,n=a=2Cb=3Dc,r=n0");
	/* A random nonce: 32 base64 characters, fresh each time. */
	char first[SASL_MSG_MAX];
	sasl_scram_first(&sc, "u", NULL, first, sizeof(first));
	sasl_scram_first(&sc, "u", NULL, out, sizeof(out));
	assert_int_equal(strlen(first), strlen("n,,n=u,r=") + 32);
	assert_string_not_equal(first, out);
	sasl_scram_clear(&sc);
}

static void test_plain_message(void **state)
{
	unsigned char out[SASL_MSG_MAX];
	int n = sasl_plain_message("alice", "pw", out, sizeof(out));
	assert_int_equal(n, 9);
	assert_memory_equal(out, "\0alice\0pw", 9);
	char big[600];
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	assert_int_equal(sasl_plain_message(big, big, out, sizeof(out)), -EMSGSIZE);
}

struct lines {
	char v[8][SASL_CHUNK + 2];
	int n;
};

static void collect(void *arg, const char *param)
{
	struct lines *l = arg;
	assert_true(l->n < 8);
	assert_true(strlen(param) <= SASL_CHUNK);
	snprintf(l->v[l->n++], sizeof(l->v[0]), "%s", param);
}

/* Outgoing framing: lines of at most 400 base64 characters; "+" after a
 * full last line and for the empty message; nothing past SASL_MSG_MAX. */
static void test_frame_out(void **state)
{
	unsigned char data[SASL_MSG_MAX + 1];
	struct lines l;

	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (unsigned char)(i * 7);
	memset(&l, 0, sizeof(l));
	assert_int_equal(sasl_frame_out(data, 0, collect, &l), 1);
	assert_string_equal(l.v[0], "+");
	/* 297 bytes: 396 characters, one line */
	memset(&l, 0, sizeof(l));
	assert_int_equal(sasl_frame_out(data, 297, collect, &l), 1);
	assert_int_equal(strlen(l.v[0]), 396);
	/* 300 bytes: exactly 400 characters, then "+" */
	memset(&l, 0, sizeof(l));
	assert_int_equal(sasl_frame_out(data, 300, collect, &l), 2);
	assert_int_equal(strlen(l.v[0]), 400);
	assert_string_equal(l.v[1], "+");
	/* 301 bytes: 404 characters: 400 + 4 */
	memset(&l, 0, sizeof(l));
	assert_int_equal(sasl_frame_out(data, 301, collect, &l), 2);
	assert_int_equal(strlen(l.v[0]), 400);
	assert_int_equal(strlen(l.v[1]), 4);
	/* 600 bytes: 800 characters: 400 + 400 + "+" */
	memset(&l, 0, sizeof(l));
	assert_int_equal(sasl_frame_out(data, 600, collect, &l), 3);
	assert_string_equal(l.v[2], "+");
	/* the bound, and past it */
	memset(&l, 0, sizeof(l));
	assert_true(sasl_frame_out(data, SASL_MSG_MAX, collect, &l) > 0);
	memset(&l, 0, sizeof(l));
	assert_int_equal(sasl_frame_out(data, SASL_MSG_MAX + 1, collect, &l), -EMSGSIZE);
	assert_int_equal(l.n, 0);

	/* What goes out comes back: the reassembly reads every framing. */
	size_t sizes[] = { 0, 1, 297, 300, 301, 600, SASL_MSG_MAX };
	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		struct sasl_inbuf in = { .len = 0 };
		unsigned char back[SASL_MSG_MAX];
		size_t blen = 0;
		int rc = 0;
		memset(&l, 0, sizeof(l));
		sasl_frame_out(data, sizes[k], collect, &l);
		for (int i = 0; i < l.n; i++) {
			rc = sasl_in_feed(&in, l.v[i], back, &blen);
			assert_int_equal(rc, i == l.n - 1 ? 1 : 0);
		}
		assert_int_equal(blen, sizes[k]);
		assert_memory_equal(back, data, sizes[k]);
	}
}

/* Incoming: a chunk over 400 characters, a message over the bound, and
 * characters that are not base64 are refused, and the buffer starts over. */
static void test_in_feed_bounds(void **state)
{
	struct sasl_inbuf in = { .len = 0 };
	unsigned char out[SASL_MSG_MAX];
	size_t len;
	char chunk[SASL_CHUNK + 2];

	memset(chunk, 'A', SASL_CHUNK + 1);
	chunk[SASL_CHUNK + 1] = '\0';
	assert_int_equal(sasl_in_feed(&in, chunk, out, &len), -EINVAL); /* 401 */
	chunk[SASL_CHUNK] = '\0';
	/* full chunks up to the bound (SASL_B64_MAX = 1368: 3 x 400 + 168) */
	assert_int_equal(sasl_in_feed(&in, chunk, out, &len), 0);
	assert_int_equal(sasl_in_feed(&in, chunk, out, &len), 0);
	assert_int_equal(sasl_in_feed(&in, chunk, out, &len), 0);
	assert_int_equal(sasl_in_feed(&in, chunk, out, &len), -EMSGSIZE); /* 1600 */
	assert_int_equal(in.len, 0);
	/* exactly at the bound: 1368 characters = 1026 bytes decoded -> the
	 * last 168 characters carry no padding; SASL_MSG_MAX is 1024 bytes so
	 * 1366 chars with "==" is the largest: accepted */
	assert_int_equal(sasl_in_feed(&in, chunk, out, &len), 0);
	assert_int_equal(sasl_in_feed(&in, chunk, out, &len), 0);
	assert_int_equal(sasl_in_feed(&in, chunk, out, &len), 0);
	char tail[200];
	memset(tail, 'A', 164);
	memcpy(tail + 164, "AA==", 5);
	/* The decoder (OpenSSL, not instrumented by ASan) writes the padding's
	 * bytes too: a guard right behind the caller's buffer must survive
	 * (it did not when the reassembly decoded into the caller's buffer). */
	struct {
		unsigned char out[SASL_MSG_MAX];
		unsigned char guard[8];
	} g;
	memset(g.guard, 0xAA, sizeof(g.guard));
	assert_int_equal(sasl_in_feed(&in, tail, g.out, &len), 1);
	assert_int_equal(len, SASL_MSG_MAX);
	for (size_t i = 0; i < sizeof(g.guard); i++)
		assert_int_equal(g.guard[i], 0xAA);
	/* 1,368 characters without padding decode to 1,026 bytes: refused */
	assert_int_equal(sasl_in_feed(&in, chunk, g.out, &len), 0);
	assert_int_equal(sasl_in_feed(&in, chunk, g.out, &len), 0);
	assert_int_equal(sasl_in_feed(&in, chunk, g.out, &len), 0);
	memset(tail, 'A', 168);
	tail[168] = '\0';
	assert_int_equal(sasl_in_feed(&in, tail, g.out, &len), -EMSGSIZE);
	for (size_t i = 0; i < sizeof(g.guard); i++)
		assert_int_equal(g.guard[i], 0xAA);
	assert_int_equal(sasl_in_feed(&in, "no*base64", out, &len), -EINVAL);
	assert_int_equal(sasl_in_feed(&in, "QQ=A", out, &len), -EINVAL); /* '=' inside */
	assert_int_equal(sasl_in_feed(&in, "QUJD", out, &len), 1);
	assert_int_equal(len, 3);
	assert_memory_equal(out, "ABC", 3);
	assert_int_equal(sasl_in_feed(&in, "+", out, &len), 1);
	assert_int_equal(len, 0);
}

/* ---- a session against a fake server ---- */

struct env {
	struct event_base *base;
	struct bouncer *b;
	struct baton_config cfg;
	struct config_network net;
	struct config_session sess;
	char port[8];
	int lfd;
	int srv;
	char buf[1 << 16];
	size_t len;
	bool eof;
	int accepted;
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
			e->accepted++;
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

static bool wait_for(struct env *e, const char *s, bool want_eof, int ms)
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
	char b[2048];
	int n = snprintf(b, sizeof(b), "%s\r\n", line);
	assert_int_equal(send(e->srv, b, (size_t)n, MSG_NOSIGNAL), n);
}

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));
	e->baseline_fds = count_open_fds();
	e->srv = -1;
	e->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	struct sockaddr_in sin = { .sin_family = AF_INET };
	inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
	assert_int_equal(bind(e->lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	socklen_t slen = sizeof(sin);
	assert_int_equal(getsockname(e->lfd, (struct sockaddr *)&sin, &slen), 0);
	assert_int_equal(listen(e->lfd, 4), 0);
	snprintf(e->port, sizeof(e->port), "%d", ntohs(sin.sin_port));
	e->base = event_base_new();
	e->cfg.backlog_lines = 100;
	e->cfg.ping_interval_s = 30;
	e->cfg.ping_timeout_s = 60;
	e->cfg.reconnect_min_s = 1;
	e->cfg.reconnect_max_s = 3;
	e->net = (struct config_network){ .name = "example", .host = "127.0.0.1", .port = e->port };
	e->sess = (struct config_session){ .user = "alice", .network = "example",
					   .nick = "alice", .username = "al",
					   .realname = "Alice", .sasl = "PLAIN",
					   .sasl_username = "acct", .sasl_password = "pw" };
	e->cfg.networks = &e->net;
	e->cfg.nnetworks = 1;
	e->cfg.sessions = &e->sess;
	e->cfg.nsessions = 1;
	*state = e;
	return 0;
}

static void start(struct env *e)
{
	e->b = bouncer_new(e->base, &e->cfg);
	assert_non_null(e->b);
	bouncer_start_configured(e->b);
	assert_true(wait_for(e, "USER al 0 * :Alice\r\n", false, 2000));
	e->len = 0;
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

static const struct session *failing(struct env *e)
{
	const struct session *s[2];
	size_t n = bouncer_sasl_failures(e->b, s, 2);
	return n == 1 ? s[0] : NULL;
}

static void test_plain_success(void **state)
{
	struct env *e = *state;
	start(e);
	say(e, ":irc.test CAP * LS * :multi-prefix");
	say(e, ":irc.test CAP * LS :sasl=EXTERNAL,PLAIN server-time");
	assert_true(wait_for(e, "CAP REQ :multi-prefix sasl server-time\r\n", false, 2000));
	e->len = 0;
	say(e, ":irc.test CAP * ACK :multi-prefix sasl server-time");
	assert_true(wait_for(e, "AUTHENTICATE PLAIN\r\n", false, 2000));
	assert_null(strstr(e->buf, "CAP END")); /* CAP END waits for the exchange */
	say(e, "AUTHENTICATE +");
	/* "\0acct\0pw" */
	assert_true(wait_for(e, "AUTHENTICATE AGFjY3QAcHc=\r\n", false, 2000));
	assert_null(strstr(e->buf, "CAP END"));
	e->len = 0;
	say(e, ":irc.test 900 alice alice!al@h acct :You are now logged in as acct");
	say(e, ":irc.test 903 alice :SASL authentication successful");
	assert_true(wait_for(e, "CAP END\r\n", false, 2000));
	say(e, ":irc.test 001 alice :Welcome alice!al@h");
	say(e, ":irc.test 376 alice :End of MOTD");
	for (int i = 0; i < 20; i++)
		pump(e);
	assert_false(e->eof);
	assert_null(failing(e));
	/* a CAP LS repeated after registration, without sasl: nothing happens */
	say(e, ":irc.test CAP alice LS :multi-prefix");
	for (int i = 0; i < 20; i++)
		pump(e);
	assert_false(e->eof);
	assert_null(failing(e));
}

/* 904: no registration (QUIT, closed), the reason kept for status, and the
 * next attempt one reconnect_max (3 s +-20%) away, not reconnect_min (1 s). */
static void test_plain_rejected_backs_off(void **state)
{
	struct env *e = *state;
	start(e);
	say(e, ":irc.test CAP * LS :sasl");
	assert_true(wait_for(e, "CAP REQ :sasl\r\n", false, 2000));
	say(e, ":irc.test CAP * ACK :sasl");
	assert_true(wait_for(e, "AUTHENTICATE PLAIN\r\n", false, 2000));
	say(e, "AUTHENTICATE +");
	assert_true(wait_for(e, "AUTHENTICATE AGFjY3QAcHc=\r\n", false, 2000));
	int64_t t0 = clock_mono_ms();
	say(e, ":irc.test 904 alice :SASL authentication failed");
	assert_true(wait_for(e, NULL, true, 2000));
	assert_non_null(strstr(e->buf, "QUIT :SASL authentication failed\r\n"));
	assert_null(strstr(e->buf, "CAP END"));
	for (int i = 0; i < 20; i++)
		pump(e);
	const struct session *s = failing(e);
	assert_non_null(s);
	assert_non_null(strstr(sasl_failure(s), "PLAIN credentials rejected (904: SASL authentication failed)"));
	assert_true(s->reconnect_at_ms >= t0 + 2400);
	/* and the failure travels with the session */
	close(e->srv);
	e->srv = -1;
	struct bouncer_item **items;
	size_t n = bouncer_items(e->b, &items);
	assert_int_equal(n, 1);
	uint8_t *out;
	size_t olen, nfds;
	const int *fds;
	bouncer_item_freeze(items[0]);
	assert_int_equal(bouncer_item_serialize(items[0], &out, &olen, &fds, &nfds), 0);
	Baton__State__Item *item = baton__state__item__unpack(NULL, olen, out);
	assert_non_null(item);
	assert_non_null(strstr(item->session->sasl_failure, "904"));
	assert_true(item->session->has_sasl_failure_at_ms);
	baton__state__item__free_unpacked(item, NULL);
	free(out);
	bouncer_item_thaw(items[0]);
	free(items);
	/* no reconnect before 2.4 s */
	while (clock_mono_ms() < t0 + 2000) {
		pump(e);
		usleep(10000);
	}
	assert_int_equal(e->accepted, 1);
}

static void test_mechanism_missing(void **state)
{
	struct env *e = *state;
	start(e);
	say(e, ":irc.test CAP * LS :sasl=EXTERNAL,SCRAM-SHA-256 multi-prefix");
	assert_true(wait_for(e, NULL, true, 2000));
	assert_null(strstr(e->buf, "CAP REQ"));
	for (int i = 0; i < 20; i++)
		pump(e);
	const struct session *s = failing(e);
	assert_non_null(s);
	assert_string_equal(sasl_failure(s),
			    "the network does not offer PLAIN (it offers EXTERNAL,SCRAM-SHA-256)");
}

static void test_no_sasl_cap(void **state)
{
	struct env *e = *state;
	start(e);
	say(e, ":irc.test CAP * LS :multi-prefix");
	assert_true(wait_for(e, NULL, true, 2000));
	for (int i = 0; i < 20; i++)
		pump(e);
	assert_non_null(failing(e));
	assert_non_null(strstr(sasl_failure(failing(e)), "no sasl capability"));
}

/* A server without CAP that registers us anyway: not accepted. */
static void test_registered_without_cap(void **state)
{
	struct env *e = *state;
	start(e);
	say(e, ":irc.test 001 alice :Welcome alice!al@h");
	assert_true(wait_for(e, NULL, true, 2000));
	for (int i = 0; i < 20; i++)
		pump(e);
	assert_non_null(failing(e));
}

/* 908 then 904: the reason names the mechanisms the network has. */
static void test_908_lists_mechanisms(void **state)
{
	struct env *e = *state;
	start(e);
	say(e, ":irc.test CAP * LS :sasl");
	say(e, ":irc.test CAP * ACK :sasl");
	assert_true(wait_for(e, "AUTHENTICATE PLAIN\r\n", false, 2000));
	say(e, ":irc.test 908 alice EXTERNAL :are available SASL mechanisms");
	say(e, ":irc.test 904 alice :SASL authentication failed");
	assert_true(wait_for(e, NULL, true, 2000));
	for (int i = 0; i < 20; i++)
		pump(e);
	assert_string_equal(sasl_failure(failing(e)),
			    "the network does not offer PLAIN (it offers EXTERNAL)");
}

static char *b64(const char *s)
{
	static char out[2048];
	EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)s, (int)strlen(s));
	return out;
}

/* SCRAM: the server-first message arrives in two AUTHENTICATE lines (400
 * characters, then the rest); the client-final follows; a server-final
 * with a wrong signature aborts and fails. And a session frozen in the
 * middle of the exchange says so in its state. */
static void test_scram_bad_server_signature(void **state)
{
	struct env *e = *state;
	e->sess.sasl = "SCRAM-SHA-256";
	start(e);
	say(e, ":irc.test CAP * LS :sasl=SCRAM-SHA-256");
	say(e, ":irc.test CAP * ACK :sasl");
	assert_true(wait_for(e, "AUTHENTICATE SCRAM-SHA-256\r\n", false, 2000));
	e->len = 0;
	say(e, "AUTHENTICATE +");
	assert_true(wait_for(e, "\r\n", false, 2000));
	/* client-first: n,,n=acct,r=NONCE */
	char first64[600], first[600];
	assert_int_equal(sscanf(e->buf, "AUTHENTICATE %599s", first64), 1);
	int fl = EVP_DecodeBlock((unsigned char *)first, (unsigned char *)first64,
				 (int)strlen(first64));
	assert_true(fl > 0);
	first[fl] = '\0';
	assert_int_equal(strncmp(first, "n,,n=acct,r=", 12), 0);
	const char *cnonce = first + 12;

	/* the exchange is in the state of a frozen session */
	struct bouncer_item **items;
	assert_int_equal(bouncer_items(e->b, &items), 1);
	uint8_t *out;
	size_t olen, nfds;
	const int *fds;
	bouncer_item_freeze(items[0]);
	assert_int_equal(bouncer_item_serialize(items[0], &out, &olen, &fds, &nfds), 0);
	Baton__State__Item *item = baton__state__item__unpack(NULL, olen, out);
	assert_true(item->session->upstream->has_sasl_state);
	assert_int_equal(item->session->upstream->sasl_state, 1);
	baton__state__item__free_unpacked(item, NULL);
	free(out);
	bouncer_item_thaw(items[0]);
	bouncer_item_arm(items[0]);
	free(items);

	/* server-first padded with an extension to 402 base64 characters */
	char sfirst[400];
	int sl = snprintf(sfirst, sizeof(sfirst), "r=%sSERVER,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,x=",
			  cnonce);
	while (sl < 301)
		sfirst[sl++] = 'p';
	sfirst[sl] = '\0';
	char *enc = b64(sfirst);
	assert_true(strlen(enc) > 400);
	char l1[600], l2[2048];
	snprintf(l1, sizeof(l1), "AUTHENTICATE %.400s", enc);
	snprintf(l2, sizeof(l2), "AUTHENTICATE %s", enc + 400);
	e->len = 0;
	say(e, l1);
	for (int i = 0; i < 20; i++)
		pump(e);
	assert_int_equal(e->len, 0); /* waits for the rest */
	say(e, l2);
	assert_true(wait_for(e, "\r\n", false, 2000));
	char final64[600], final[600];
	assert_int_equal(sscanf(e->buf, "AUTHENTICATE %599s", final64), 1);
	int nl = EVP_DecodeBlock((unsigned char *)final, (unsigned char *)final64,
				 (int)strlen(final64));
	final[nl > 0 ? nl : 0] = '\0';
	assert_int_equal(strncmp(final, "c=biws,r=", 9), 0);
	assert_non_null(strstr(final, ",p="));
	e->len = 0;
	char l3[200];
	snprintf(l3, sizeof(l3), "AUTHENTICATE %s",
		 b64("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="));
	say(e, l3);
	assert_true(wait_for(e, NULL, true, 2000));
	assert_non_null(strstr(e->buf, "AUTHENTICATE *\r\n"));
	for (int i = 0; i < 20; i++)
		pump(e);
	assert_non_null(strstr(sasl_failure(failing(e)), "signature is wrong"));
}

/* A server that keeps challenging: bounded. */
static void test_endless_challenges(void **state)
{
	struct env *e = *state;
	e->sess.sasl = "EXTERNAL";
	e->sess.sasl_username = NULL;
	e->sess.sasl_password = NULL;
	start(e);
	say(e, ":irc.test CAP * LS :sasl");
	say(e, ":irc.test CAP * ACK :sasl");
	assert_true(wait_for(e, "AUTHENTICATE EXTERNAL\r\n", false, 2000));
	for (int i = 0; i < 10 && !e->eof; i++) {
		say(e, "AUTHENTICATE +");
		for (int k = 0; k < 5; k++)
			pump(e);
	}
	assert_true(wait_for(e, NULL, true, 2000));
	for (int i = 0; i < 20; i++)
		pump(e);
	assert_non_null(failing(e));
}

/* Migrated in the middle of the exchange: the new worker has no mechanism
 * state, so at the server's next challenge it aborts ("AUTHENTICATE *")
 * and, on 906, starts again; CAP END only after 903. The old worker's
 * copy sends nothing. */
static void test_exchange_restarts_after_migration(void **state)
{
	struct env *e = *state;
	start(e);
	say(e, ":irc.test CAP * LS :sasl=PLAIN");
	say(e, ":irc.test CAP * ACK :sasl");
	assert_true(wait_for(e, "AUTHENTICATE PLAIN\r\n", false, 2000));
	/* the server's "+" is in flight while the session moves */
	say(e, "AUTHENTICATE +");
	usleep(20000);
	struct bouncer_item **items;
	assert_int_equal(bouncer_items(e->b, &items), 1);
	struct bouncer_item *it = items[0];
	free(items);
	uint8_t *out;
	size_t olen, nfds;
	const int *fds;
	bouncer_item_freeze(it);
	assert_int_equal(bouncer_item_serialize(it, &out, &olen, &fds, &nfds), 0);
	assert_int_equal(nfds, 1);
	int fd = fcntl(fds[0], F_DUPFD_CLOEXEC, 0);
	struct bouncer *b2 = bouncer_new(e->base, &e->cfg);
	struct bouncer_item *it2 = NULL;
	char err[256] = "";
	if (bouncer_item_adopt(b2, out, olen, &fd, 1, &it2, err, sizeof(err)) < 0)
		fail_msg("adopt: %s", err);
	free(out);
	bouncer_chunk_end(b2, true);
	bouncer_item_release(it);
	bouncer_item_arm(it2);
	e->len = 0;
	assert_true(wait_for(e, "AUTHENTICATE *\r\n", false, 2000));
	assert_null(strstr(e->buf, "AUTHENTICATE AGFjY3QAcHc=")); /* no answer to the old challenge */
	e->len = 0;
	say(e, ":irc.test 906 alice :SASL authentication aborted");
	assert_true(wait_for(e, "AUTHENTICATE PLAIN\r\n", false, 2000));
	say(e, "AUTHENTICATE +");
	assert_true(wait_for(e, "AUTHENTICATE AGFjY3QAcHc=\r\n", false, 2000));
	assert_null(strstr(e->buf, "CAP END"));
	say(e, ":irc.test 903 alice :SASL authentication successful");
	assert_true(wait_for(e, "CAP END\r\n", false, 2000));
	assert_false(e->eof);
	const struct session *f[1];
	assert_int_equal(bouncer_sasl_failures(b2, f, 1), 0);
	bouncer_free(b2);
}

/* Migrated while waiting for the outcome: the 903 that arrives is taken. */
static void test_outcome_after_migration(void **state)
{
	struct env *e = *state;
	start(e);
	say(e, ":irc.test CAP * LS :sasl=PLAIN");
	say(e, ":irc.test CAP * ACK :sasl");
	assert_true(wait_for(e, "AUTHENTICATE PLAIN\r\n", false, 2000));
	say(e, "AUTHENTICATE +");
	assert_true(wait_for(e, "AUTHENTICATE AGFjY3QAcHc=\r\n", false, 2000));
	struct bouncer_item **items;
	assert_int_equal(bouncer_items(e->b, &items), 1);
	struct bouncer_item *it = items[0];
	free(items);
	uint8_t *out;
	size_t olen, nfds;
	const int *fds;
	bouncer_item_freeze(it);
	assert_int_equal(bouncer_item_serialize(it, &out, &olen, &fds, &nfds), 0);
	int fd = fcntl(fds[0], F_DUPFD_CLOEXEC, 0);
	struct bouncer *b2 = bouncer_new(e->base, &e->cfg);
	struct bouncer_item *it2 = NULL;
	char err[256] = "";
	if (bouncer_item_adopt(b2, out, olen, &fd, 1, &it2, err, sizeof(err)) < 0)
		fail_msg("adopt: %s", err);
	free(out);
	bouncer_chunk_end(b2, true);
	bouncer_item_release(it);
	bouncer_item_arm(it2);
	e->len = 0;
	say(e, ":irc.test 903 alice :SASL authentication successful");
	assert_true(wait_for(e, "CAP END\r\n", false, 2000));
	bouncer_free(b2);
}

/* Migrated mid-exchange to a worker whose config dropped SASL: the old
 * exchange is aborted and registration goes on without it (no
 * "AUTHENTICATE (null)"). */
static void test_exchange_after_sasl_removed(void **state)
{
	struct env *e = *state;
	start(e);
	say(e, ":irc.test CAP * LS :sasl=PLAIN");
	say(e, ":irc.test CAP * ACK :sasl");
	assert_true(wait_for(e, "AUTHENTICATE PLAIN\r\n", false, 2000));
	struct bouncer_item **items;
	assert_int_equal(bouncer_items(e->b, &items), 1);
	struct bouncer_item *it = items[0];
	free(items);
	uint8_t *out;
	size_t olen, nfds;
	const int *fds;
	bouncer_item_freeze(it);
	assert_int_equal(bouncer_item_serialize(it, &out, &olen, &fds, &nfds), 0);
	int fd = fcntl(fds[0], F_DUPFD_CLOEXEC, 0);
	struct baton_config cfg2 = e->cfg;
	struct config_session sess2 = e->sess;
	sess2.sasl = NULL;
	sess2.sasl_username = sess2.sasl_password = NULL;
	cfg2.sessions = &sess2;
	struct bouncer *b2 = bouncer_new(e->base, &cfg2);
	struct bouncer_item *it2 = NULL;
	char err[256] = "";
	if (bouncer_item_adopt(b2, out, olen, &fd, 1, &it2, err, sizeof(err)) < 0)
		fail_msg("adopt: %s", err);
	free(out);
	bouncer_chunk_end(b2, true);
	bouncer_item_release(it);
	bouncer_item_arm(it2);
	e->len = 0;
	say(e, "AUTHENTICATE +");
	assert_true(wait_for(e, "AUTHENTICATE *\r\n", false, 2000));
	say(e, ":irc.test 906 alice :SASL authentication aborted");
	assert_true(wait_for(e, "CAP END\r\n", false, 2000));
	assert_null(strstr(e->buf, "(null)"));
	assert_false(e->eof);
	bouncer_free(b2);
}

/* A failure recorded while SASL was configured is dropped once the session
 * registers with a config without SASL (status must not show it forever). */
static void test_failure_cleared_without_sasl(void **state)
{
	struct env *e = *state;
	start(e);
	say(e, ":irc.test CAP * LS :multi-prefix");
	assert_true(wait_for(e, NULL, true, 2000));
	for (int i = 0; i < 20; i++)
		pump(e);
	assert_non_null(failing(e));
	close(e->srv);
	e->srv = -1;
	e->sess.sasl = NULL; /* the config a later worker would have */
	assert_true(wait_for(e, "USER al 0 * :Alice\r\n", false, 5000));
	say(e, ":irc.test CAP * LS :account-tag");
	assert_true(wait_for(e, "CAP END\r\n", false, 2000));
	say(e, ":irc.test 001 alice :Welcome alice!al@h");
	for (int i = 0; i < 20; i++)
		pump(e);
	assert_false(e->eof);
	assert_null(failing(e));
}

/* Migrated between 903 (CAP END sent) and 001: the success travels
 * (sasl_state 2), so the 001 the new worker reads is not taken for a
 * registration without SASL. And a sasl_state no release writes is
 * refused at adoption. */
static void test_success_travels_until_001(void **state)
{
	struct env *e = *state;
	start(e);
	say(e, ":irc.test CAP * LS :sasl=PLAIN");
	say(e, ":irc.test CAP * ACK :sasl");
	assert_true(wait_for(e, "AUTHENTICATE PLAIN\r\n", false, 2000));
	say(e, "AUTHENTICATE +");
	assert_true(wait_for(e, "AUTHENTICATE AGFjY3QAcHc=\r\n", false, 2000));
	say(e, ":irc.test 903 alice :SASL authentication successful");
	assert_true(wait_for(e, "CAP END\r\n", false, 2000));
	struct bouncer_item **items;
	assert_int_equal(bouncer_items(e->b, &items), 1);
	struct bouncer_item *it = items[0];
	free(items);
	uint8_t *out;
	size_t olen, nfds;
	const int *fds;
	bouncer_item_freeze(it);
	assert_int_equal(bouncer_item_serialize(it, &out, &olen, &fds, &nfds), 0);
	Baton__State__Item *item = baton__state__item__unpack(NULL, olen, out);
	assert_int_equal(item->session->upstream->sasl_state, 2);

	/* an unknown value: refused, with the reason */
	struct bouncer *b2 = bouncer_new(e->base, &e->cfg);
	struct bouncer_item *it2 = NULL;
	char err[256] = "";
	item->session->upstream->sasl_state = 3;
	size_t blen = baton__state__item__get_packed_size(item);
	uint8_t *bad = malloc(blen);
	baton__state__item__pack(item, bad);
	baton__state__item__free_unpacked(item, NULL);
	int fd = fcntl(fds[0], F_DUPFD_CLOEXEC, 0);
	assert_true(bouncer_item_adopt(b2, bad, blen, &fd, 1, &it2, err, sizeof(err)) < 0);
	assert_non_null(strstr(err, "sasl_state 3 unknown"));
	free(bad);

	fd = fcntl(fds[0], F_DUPFD_CLOEXEC, 0);
	if (bouncer_item_adopt(b2, out, olen, &fd, 1, &it2, err, sizeof(err)) < 0)
		fail_msg("adopt: %s", err);
	free(out);
	bouncer_chunk_end(b2, true);
	bouncer_item_release(it);
	bouncer_item_arm(it2);
	e->len = 0;
	say(e, ":irc.test 001 alice :Welcome alice!al@h");
	say(e, ":irc.test 376 alice :End of MOTD");
	for (int i = 0; i < 40; i++) {
		pump(e);
		usleep(2000);
	}
	assert_false(e->eof);
	assert_null(strstr(e->buf, "QUIT"));
	const struct session *f[1];
	assert_int_equal(bouncer_sasl_failures(b2, f, 1), 0);
	bouncer_free(b2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mech_names),
		cmocka_unit_test(test_scram_rfc7677),
		cmocka_unit_test(test_scram_hostile_server_first),
		cmocka_unit_test(test_plain_message),
		cmocka_unit_test(test_frame_out),
		cmocka_unit_test(test_in_feed_bounds),
		cmocka_unit_test_setup_teardown(test_plain_success, setup, teardown),
		cmocka_unit_test_setup_teardown(test_plain_rejected_backs_off, setup, teardown),
		cmocka_unit_test_setup_teardown(test_mechanism_missing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_sasl_cap, setup, teardown),
		cmocka_unit_test_setup_teardown(test_registered_without_cap, setup, teardown),
		cmocka_unit_test_setup_teardown(test_908_lists_mechanisms, setup, teardown),
		cmocka_unit_test_setup_teardown(test_scram_bad_server_signature, setup, teardown),
		cmocka_unit_test_setup_teardown(test_endless_challenges, setup, teardown),
		cmocka_unit_test_setup_teardown(test_exchange_restarts_after_migration, setup, teardown),
		cmocka_unit_test_setup_teardown(test_outcome_after_migration, setup, teardown),
		cmocka_unit_test_setup_teardown(test_exchange_after_sasl_removed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failure_cleared_without_sasl, setup, teardown),
		cmocka_unit_test_setup_teardown(test_success_travels_until_001, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
