/* tests/unit/sessiond/test_client.c: sessiond/client.c through a bouncer:
 * the welcome burst's composed lines, authentication cost, the flow-
 * controlled backlog replay, and client input that must not reach the
 * state with a line break.
 *
 * The session is the sample state (sample_state.c) adjusted per test and
 * adopted with an upstream socketpair we play the server on; clients are
 * loopback TCP sockets. Each test opens with the bug it pins. */
#include <crypt.h>
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "state.pb-c.h"

#include "common/config.h"
#include "sample_state.h"
#include "sessiond/bouncer.h"
#include "sessiond/conn.h"
#include "test_env.h"

/* ---- crypt_rn() interposed: every call counted, with its setting ----
 * The core library resolves crypt_rn to this definition at link time. */
static int crypt_calls;
static char crypt_setting[256];

char *crypt_rn(const char *phrase, const char *setting, void *data, int size)
{
	static char *(*real)(const char *, const char *, void *, int);

	if (!real) {
		/* libcrypt itself may not be linked (nothing else of it is
		 * referenced once this definition is): load it. */
		void *h = dlopen("libcrypt.so.1", RTLD_NOW | RTLD_LOCAL);
		assert_non_null(h);
		real = (char *(*)(const char *, const char *, void *, int))
			dlsym(h, "crypt_rn");
		assert_non_null(real);
	}
	crypt_calls++;
	snprintf(crypt_setting, sizeof(crypt_setting), "%s", setting);
	return real(phrase, setting, data, size);
}

/* ---- environment (test_env.c) ---- */

static bool rx_wait(struct test_env *e, struct rx *r, int fd, const char *s)
{
	return rx_wait_tries(e, r, fd, s, 5000);
}

/* The sample session without its client, changed by `mutate` (which may
 * replace top-level fields of the Session only), adopted and armed. */
static struct test_env *env_new_clients(test_env_mutate_fn mutate, int backlog_lines,
					int max_clients)
{
	const struct test_env_opts o = {
		.backlog_lines = backlog_lines,
		.max_clients = max_clients,
		.backlog_bytes = 64 << 20, /* the replay tests hold 4.4 MB */
		.ping_interval_s = 600,
		.ping_timeout_s = 2400,
		/* crypt("secret", "$6$testsalt$"), precomputed: ASan's crypt_r
		 * interceptor crashes when the test calls crypt_r itself. */
		.password = "$6$testsalt$51yaaBMXXXt5vK522YOlIMZ267vqHtMIzc2klcsu3EEv/bkRDU9g3UmkypXf.NvlpPpIPK1nX5zdbCeJBiQbB/",
		.mutate = mutate,
		.wait_tries = 5000,
	};
	return test_env_new(&o);
}

static struct test_env *env_new(test_env_mutate_fn mutate, int backlog_lines)
{
	return env_new_clients(mutate, backlog_lines, 0);
}

/* Complete lines of r (CRLF-terminated) into a NULL-terminated vector of
 * pointers into r->buf (CRLFs replaced by NULs). */
static char **rx_lines(struct rx *r, size_t *n)
{
	size_t cap = 65536;
	char **v = malloc(cap * sizeof(*v) + r->len + 1);
	char *p = (char *)v + cap * sizeof(*v);

	/* The text is copied behind the first vector (r stays intact); a
	 * grown vector keeps pointing into that copy. */
	memcpy(p, r->buf ? r->buf : "", r->len + 1);
	p[r->len] = '\0';

	*n = 0;
	/* memmem over what is left, not strstr: ASan's strict_string_checks
	 * (scripts/test) makes every strstr take the haystack's strlen first,
	 * quadratic over a 2 MB replay (60 s of the ASan unit stage). */
	char *end = p + r->len;
	for (;;) {
		char *nl = memmem(p, (size_t)(end - p), "\r\n", 2);
		if (!nl)
			break;
		*nl = '\0';
		if (*n + 1 == cap)
			abort(); /* enough for these tests */
		v[(*n)++] = p;
		p = nl + 2;
	}
	v[*n] = NULL;
	return v;
}

/* ---- 005 ---- */

#define NLONG 30
static char *isupport_v[6 + NLONG + 1 + 20];
static size_t isupport_n;

static void mutate_isupport(Baton__State__Session *s)
{
	static char orig[6][128], longs[NLONG][128], huge[700], shorts[20][16];
	size_t n = 0;

	/* Copies: the sample's strings die with the unpacked item. */
	for (size_t i = 0; i < s->n_isupport && i < 6; i++) {
		snprintf(orig[i], sizeof(orig[i]), "%s", s->isupport[i]);
		isupport_v[n++] = orig[i];
	}
	for (int i = 0; i < NLONG; i++) {
		int k = snprintf(longs[i], sizeof(longs[i]), "LONG%02d=", i);
		memset(longs[i] + k, 'v', 120 - (size_t)k);
		longs[i][120] = '\0';
		isupport_v[n++] = longs[i];
	}
	memcpy(huge, "HUGE=", 5);
	memset(huge + 5, 'h', 600);
	huge[605] = '\0';
	isupport_v[n++] = huge;
	for (int i = 0; i < 20; i++) {
		snprintf(shorts[i], sizeof(shorts[i]), "S%02d", i);
		isupport_v[n++] = shorts[i];
	}
	isupport_n = n;
	s->isupport = isupport_v;
	s->n_isupport = n;
}

/* Regression: the 005 lines were built with n += snprintf() into a 1 KiB
 * stack buffer, 13 tokens at a time whatever their length: long tokens ran
 * n past the buffer (stack overflow, ASan), and lines went over 510 bytes.
 * Now each line keeps to 510 bytes with its prefix, nick and trailing text,
 * at most 13 tokens, and a token that cannot fit even alone is left out. */
static void test_isupport_lines_bounded(void **state)
{
	struct test_env *e = env_new(mutate_isupport, 100);
	struct rx r = { 0 };
	static const char tail[] = " :are supported by this server";
	char all[16384] = "", want[16384] = "";

	int fd = test_env_register(e, "alice@isup/example:secret", 0);
	assert_true(rx_wait(e, &r, fd, " 422 "));
	size_t n;
	char **v = rx_lines(&r, &n);
	size_t n005 = 0;
	for (size_t i = 0; i < n; i++) {
		if (!strstr(v[i], " 005 "))
			continue;
		n005++;
		size_t len = strlen(v[i]);
		assert_true(len <= 510);
		assert_true(len > strlen(tail));
		assert_string_equal(v[i] + len - strlen(tail), tail);
		assert_int_equal(strncmp(v[i], ":irc.example.net 005 alice ", 27), 0);
		v[i][len - strlen(tail)] = '\0';
		size_t ntok = 0;
		for (char *save = NULL, *t = strtok_r(v[i] + 27, " ", &save); t;
		     t = strtok_r(NULL, " ", &save)) {
			ntok++;
			strcat(all, t);
			strcat(all, " ");
		}
		assert_true(ntok >= 1 && ntok <= 13);
	}
	for (size_t i = 0; i < isupport_n; i++) {
		if (strncmp(isupport_v[i], "HUGE=", 5) == 0)
			continue; /* alone over the limit: left out */
		strcat(want, isupport_v[i]);
		strcat(want, " ");
	}
	if (strcmp(all, want) != 0)
		fprintf(stderr, "got  %s\nwant %s\n", all, want);
	assert_string_equal(all, want);
	assert_true(n005 >= 5);
	free(v);
	free(r.buf);
	close(fd);
	test_env_free(e);
}

/* ---- NAMES ---- */

static void mutate_names(Baton__State__Session *s)
{
	static char name_a[700], name_b[600], nick_long[64], many_nicks[300][40];
	static Baton__State__Member ma[1], mb[3], mm[300];
	static Baton__State__Member *mav[1], *mbv[3], *mmv[300];
	static Baton__State__Channel ca, cb, cm;
	static Baton__State__Channel *chans[8];
	size_t n = 0;

	for (size_t i = 0; i < s->n_channels; i++)
		chans[n++] = s->channels[i];

	/* A: its 353 head alone is over 510 bytes (a name at NAMES_MAX_LEN,
	 * the longest the state may hold). */
	name_a[0] = '#';
	memset(name_a + 1, 'a', 509);
	name_a[510] = '\0';
	baton__state__channel__init(&ca);
	ca.name = name_a;
	baton__state__member__init(&ma[0]);
	ma[0].nick = "bob";
	mav[0] = &ma[0];
	ca.members = mav;
	ca.n_members = 1;
	chans[n++] = &ca;

	/* B: the head leaves 9 bytes: "bob" and "@dave" fit, a long nick
	 * never can. ":irc.example.net 353 alice = " is 29 bytes. */
	name_b[0] = '#';
	memset(name_b + 1, 'b', 469);
	name_b[470] = '\0';
	baton__state__channel__init(&cb);
	cb.name = name_b;
	memset(nick_long, 'c', 50);
	nick_long[50] = '\0';
	for (int i = 0; i < 3; i++) {
		baton__state__member__init(&mb[i]);
		mbv[i] = &mb[i];
	}
	mb[0].nick = "bob";
	mb[1].nick = nick_long;
	mb[2].nick = "dave";
	mb[2].prefixes = "@";
	cb.members = mbv;
	cb.n_members = 3;
	chans[n++] = &cb;

	/* Many: 300 members over several 353 lines. */
	baton__state__channel__init(&cm);
	cm.name = "#many";
	for (int i = 0; i < 300; i++) {
		snprintf(many_nicks[i], sizeof(many_nicks[i]), "member%03d_xxxxxxxxxxxxxxxxxxxxxx", i);
		baton__state__member__init(&mm[i]);
		mm[i].nick = many_nicks[i];
		mm[i].prefixes = i % 3 == 0 ? "@+" : "";
		mmv[i] = &mm[i];
	}
	cm.members = mmv;
	cm.n_members = 300;
	chans[n++] = &cm;

	s->channels = chans;
	s->n_channels = n;
}

/* Regression: send_names() copied the first member after a 353 head that
 * snprintf() reported longer than its 512-byte buffer (a long channel or
 * server name), with no bounds check: stack overflow (ASan). Now every
 * copy is checked: no 353 when the head cannot fit, members that cannot
 * fit even alone are left out, every 353 keeps to 510 bytes. */
static void test_names_bounded(void **state)
{
	struct test_env *e = env_new(mutate_names, 100);
	struct rx r = { 0 };

	int fd = test_env_register(e, "alice@names/example:secret", 0);
	assert_true(rx_wait(e, &r, fd, " #many :End of /NAMES list."));
	size_t n;
	char **v = rx_lines(&r, &n);
	size_t in_b = 0, in_many = 0, end_a = 0;
	bool seen[300] = { false };
	for (size_t i = 0; i < n; i++) {
		if (strstr(v[i], " 366 alice #aaaa"))
			end_a++;
		if (!strstr(v[i], " 353 "))
			continue;
		assert_true(strlen(v[i]) <= 510);
		assert_null(strstr(v[i], " = #aaaa")); /* A: no 353 at all */
		if (strstr(v[i], " = #bbbb")) {
			in_b++;
			assert_non_null(strstr(v[i], " :bob @dave"));
			assert_null(strstr(v[i], "cccc"));
		}
		if (strstr(v[i], " = #many :")) {
			in_many++;
			char *list = strstr(v[i], " = #many :") + strlen(" = #many :");
			for (char *save = NULL, *t = strtok_r(list, " ", &save); t;
			     t = strtok_r(NULL, " ", &save)) {
				int k = atoi(t + strcspn(t, "0123456789"));
				assert_true(k >= 0 && k < 300);
				assert_false(seen[k]);
				seen[k] = true;
				assert_int_equal(t[0], k % 3 == 0 ? '@' : 'm');
			}
		}
	}
	assert_int_equal(end_a, 1);
	assert_int_equal(in_b, 1);
	assert_true(in_many >= 20);
	for (int k = 0; k < 300; k++)
		assert_true(seen[k]);
	free(v);
	free(r.buf);
	close(fd);
	test_env_free(e);
}

/* ---- CR in client input ---- */

/* Regression: only LF split client lines, so "PRIVMSG #baton :a\rb" was
 * stored with its CR in the backlog (and "AWAY :gone\rfishing" kept it in
 * the away text); the adopting worker refused the state (line break) and
 * every upgrade aborted while the line stayed in the backlog: one user
 * could veto upgrades. A bare CR now ends a line: nothing stored holds one,
 * and the serialized session is adopted elsewhere. */
static void test_bare_cr_not_stored(void **state)
{
	struct test_env *e = env_new(NULL, 100);
	struct rx r = { 0 }, up = { 0 };
	static const char in[] = "PRIVMSG #baton :a\rb\r\nAWAY :gone\rfishing\r\n";

	int fd = test_env_register(e, "alice@cr/example:secret", 0);
	assert_true(rx_wait(e, &r, fd, "a partial line\r\n"));
	assert_int_equal(send(fd, in, sizeof(in) - 1, 0), (ssize_t)(sizeof(in) - 1));
	say_fd(fd, "PING :done");
	assert_true(rx_wait(e, &r, fd, "PONG irc.example.net :done\r\n"));
	assert_true(rx_wait(e, &up, e->up, "fishing\r\n"));
	assert_non_null(strstr(up.buf, "PRIVMSG #baton :a\r\nb\r\nAWAY :gone\r\nfishing\r\n"));

	uint8_t *buf;
	size_t len, nfds;
	const int *fds;
	struct bouncer_item *it = session_serialize(e->b, &buf, &len, &fds, &nfds);
	Baton__State__Item *item = baton__state__item__unpack(NULL, len, buf);
	assert_non_null(item);
	bool stored_a = false;
	for (size_t j = 0; j < item->session->n_buffers; j++) {
		const Baton__State__Buffer *pb = item->session->buffers[j];
		for (size_t l = 0; l < pb->n_lines; l++) {
			assert_null(strpbrk(pb->lines[l]->line, "\r\n"));
			size_t ll = strlen(pb->lines[l]->line);
			if (ll > 17 && strcmp(pb->lines[l]->line + ll - 17,
					      "PRIVMSG #baton :a") == 0)
				stored_a = true;
		}
	}
	assert_true(stored_a);
	assert_non_null(item->session->away);
	assert_string_equal(item->session->away, "gone");
	baton__state__item__free_unpacked(item, NULL);

	/* Another worker adopts it. */
	struct bouncer *b2 = bouncer_new(e->base, &e->cfg);
	bouncer_item_discard(adopt_copy(b2, buf, len, fds, nfds));
	bouncer_free(b2);
	bouncer_item_thaw(it);
	free(buf);
	free(r.buf);
	free(up.buf);
	close(fd);
	test_env_free(e);
}

/* ---- authentication ---- */

/* One attempt; returns the crypt_rn() calls it made, the reply in *reply. */
static int auth_attempt(struct test_env *e, const char *pass, const char *until,
			struct rx *reply)
{
	crypt_calls = 0;
	crypt_setting[0] = '\0';
	int fd = test_env_register(e, pass, 0);
	assert_true(rx_wait(e, reply, fd, until));
	close(fd);
	for (int i = 0; i < 10; i++)
		test_env_pump(e);
	return crypt_calls;
}

/* Regression: an unknown user name failed before any crypt(), a known one
 * after a full crypt(): the reply time told which user names exist. Now
 * every attempt runs exactly one crypt() (unknown users and malformed
 * idents against a dummy of the configured hashes' kind), whatever fails,
 * with the same reply. */
static void test_auth_one_crypt_each(void **state)
{
	struct test_env *e = env_new(NULL, 100);
	static const char bad[] = ":baton 464 whatever :Password incorrect\r\n"
				  "ERROR :Closing link: password incorrect\r\n";
	const char *fails[] = {
		"ghost/example:secret",  /* unknown user */
		"alice/example:wrong",   /* wrong password */
		"alice/nowhere:secret",  /* unknown network */
		"ghost/nowhere:wrong",
		"no-slash:secret",       /* malformed ident */
	};

	for (size_t i = 0; i < sizeof(fails) / sizeof(fails[0]); i++) {
		struct rx r = { 0 };
		assert_int_equal(auth_attempt(e, fails[i], "password incorrect\r\n", &r), 1);
		assert_string_equal(r.buf, bad);
		/* Same kind (method and cost) as the configured hashes. */
		assert_int_equal(strncmp(crypt_setting, "$6$", 3), 0);
		fprintf(stderr, "%-22s crypt setting %.20s...\n", fails[i], crypt_setting);
		free(r.buf);
	}
	struct rx ok = { 0 };
	assert_int_equal(auth_attempt(e, "alice@auth/example:secret", " 001 ", &ok), 1);
	free(ok.buf);
	test_env_free(e);
}

/* ---- flow-controlled replay ---- */

#define RBUFS 40
#define RPER 500
#define RLINES (RBUFS * RPER)
#define RSEQ0 100 /* seq of replay line 0 (the sample's lines come before) */

static void mutate_replay(Baton__State__Session *s)
{
	static Baton__State__BacklogLine lines[RLINES];
	static Baton__State__BacklogLine *lv[RBUFS][RPER];
	static Baton__State__Buffer bufs[RBUFS];
	static Baton__State__Buffer *bv[2 + RBUFS];
	static char names[RBUFS][8];
	static char *texts[RLINES];
	struct timespec ts;
	size_t n = 0;

	clock_gettime(CLOCK_REALTIME, &ts);
	int64_t t0 = (int64_t)ts.tv_sec * 1000 - 3600000;
	for (size_t i = 0; i < s->n_buffers; i++)
		bv[n++] = s->buffers[i];
	for (int b = 0; b < RBUFS; b++) {
		snprintf(names[b], sizeof(names[b]), "#r%02d", b);
		baton__state__buffer__init(&bufs[b]);
		bufs[b].name = names[b];
		bufs[b].lines = lv[b];
		bufs[b].n_lines = RPER;
		bv[n++] = &bufs[b];
	}
	for (int k = 0; k < RLINES; k++) {
		char *t = texts[k] ? texts[k] : (texts[k] = malloc(256));
		int m = snprintf(t, 256, ":bob!b@host.example PRIVMSG #r%02d :replay %d ",
				 k % RBUFS, k);
		memset(t + m, 'z', 220 - (size_t)m); /* ~220 bytes: 4.4 MB in all */
		t[220] = '\0';
		baton__state__backlog_line__init(&lines[k]);
		lines[k].seq = RSEQ0 + (uint64_t)k;
		lines[k].time_ms = t0 + k;
		lines[k].line = t;
		lv[k % RBUFS][k / RBUFS] = &lines[k];
	}
	s->buffers = bv;
	s->n_buffers = n;
	s->has_next_seq = 1;
	s->next_seq = RSEQ0 + RLINES;
}

/* The lines of r checked: "replay K" for K = 0..RLINES-1 exactly once and
 * in order, then `live` exactly once after all of them; `never` nowhere;
 * no ERROR. */
static void check_replay(struct rx *r, const char *live, const char *never)
{
	size_t n, next = 0, live_at = 0, nlive = 0, last_replay = 0;
	char **v = rx_lines(r, &n);

	for (size_t i = 0; i < n; i++) {
		const char *p = strstr(v[i], " :replay ");
		assert_null(strstr(v[i], "ERROR"));
		if (never)
			assert_null(strstr(v[i], never));
		if (p) {
			int k = atoi(p + strlen(" :replay "));
			if ((size_t)k != next)
				fprintf(stderr, "line %zu: replay %d, expected %zu\n", i, k, next);
			assert_int_equal(k, (int)next);
			next++;
			last_replay = i;
		}
		if (strstr(v[i], live)) {
			nlive++;
			live_at = i;
		}
	}
	assert_int_equal(next, RLINES);
	assert_int_equal(nlive, 1);
	assert_true(live_at > last_replay);
	free(v);
}

/* Read slowly (at most `chunk` bytes per step) until `s` arrived; the
 * connection must stay open. */
static void read_slowly(struct test_env *e, struct rx *r, int fd, const char *s,
			size_t chunk)
{
	for (int i = 0; i < 200000; i++) {
		test_env_pump(e);
		size_t before = r->len;
		rx_read_max(r, fd, chunk);
		assert_false(r->eof);
		if (r->len > before && strstr(r->buf + (before > 512 ? before - 512 : 0), s))
			return;
		usleep(200);
	}
	fail_msg("did not see '%s'", s);
}

/* Regression: the attach queued the burst and the WHOLE backlog replay at
 * once; past CONN_MAX_OUTPUT (4 MiB) the connection died ("sendq exceeded")
 * before a byte was written, the position did not move, and every later
 * attach died the same way. Now the replay is pumped as the output drains:
 * a slow reader gets every line once, in order, and stays connected; a live
 * line stored mid-replay comes after the replayed ones, once; its own line
 * (no echo-message) is not sent back. */
static void test_replay_flow_controlled(void **state)
{
	struct test_env *e = env_new(mutate_replay, RPER);
	struct rx r = { 0 }, up = { 0 };
	unsigned conns = open_connections(e->b);

	int fd = test_env_register(e, "alice@slow/example:secret", 32768);
	read_slowly(e, &r, fd, " :replay 2000 ", 16384);
	assert_null(strstr(r.buf, " :replay 19999 ")); /* mid-replay */
	say_fd(e->up, ":bob!b@host.example PRIVMSG #r07 :live line");
	say_fd(fd, "PRIVMSG #r03 :my own line");
	assert_true(rx_wait(e, &up, e->up, "PRIVMSG #r03 :my own line\r\n"));
	read_slowly(e, &r, fd, " :live line\r\n", 16384);
	for (int i = 0; i < 50; i++) { /* a duplicate would come now */
		test_env_pump(e);
		rx_read_max(&r, fd, 0);
		usleep(1000);
	}
	assert_false(r.eof);
	assert_int_equal(open_connections(e->b), conns + 1);
	fprintf(stderr, "read %zu bytes\n", r.len);
	assert_true(r.len > CONN_MAX_OUTPUT);
	check_replay(&r, " :live line", "my own line");

	/* Live now: the next line comes directly. */
	say_fd(e->up, ":bob!b@host.example PRIVMSG #r07 :after");
	assert_true(rx_wait(e, &r, fd, " :after\r\n"));
	free(r.buf);
	free(up.buf);
	close(fd);
	test_env_free(e);
}

/* A migration in the middle of a replay: the adopting worker resumes it
 * (derived from delivered_seq below the newest seq): every line exactly
 * once, in order, across both workers. */
static void test_replay_resumes_after_migration(void **state)
{
	struct test_env *e = env_new(mutate_replay, RPER);
	struct rx r = { 0 };
	uint8_t *buf;
	size_t len, nfds;
	const int *fds;

	int fd = test_env_register(e, "alice@mig/example:secret", 32768);
	read_slowly(e, &r, fd, " :replay 3000 ", 16384);
	assert_null(strstr(r.buf, " :replay 19999 "));

	struct bouncer *b2 = bouncer_new(e->base, &e->cfg);
	struct bouncer_item *it = session_serialize(e->b, &buf, &len, &fds, &nfds);
	struct bouncer_item *it2 = adopt_copy(b2, buf, len, fds, nfds);
	bouncer_item_release(it); /* committed: the source lets go */
	free(buf);
	bouncer_item_arm(it2);

	read_slowly(e, &r, fd, " :replay 10000 ", 16384);
	say_fd(e->up, ":bob!b@host.example PRIVMSG #r07 :live line");
	read_slowly(e, &r, fd, " :live line\r\n", 16384);
	for (int k = 0; k < 50; k++) {
		test_env_pump(e);
		rx_read_max(&r, fd, 0);
		usleep(1000);
	}
	assert_false(r.eof);
	check_replay(&r, " :live line", NULL);
	free(r.buf);
	close(fd);
	bouncer_free(b2);
	test_env_free(e);
}

/* ---- bounds at attach (issue 8) ---- */

/* Until `fd` is closed by the bouncer (EOF), reading what it sends. */
static bool rx_wait_eof(struct test_env *e, struct rx *r, int fd)
{
	for (int i = 0; i < 5000 && !r->eof; i++) {
		test_env_pump(e);
		rx_read_max(r, fd, 0);
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		poll(&pfd, 1, 2);
	}
	return r->eof;
}

/* Bug: one user could attach any number of clients: 254 made a session of
 * 255 sockets, over the 253 fds a migration message carries, and every
 * upgrade failed. At max_clients_per_session the next client gets an ERROR
 * and is closed, never counted; a slot freed is usable again. Client names
 * longer than 64 bytes are refused (positions are kept per name). */
static void test_max_clients_per_session(void **state)
{
	struct test_env *e = env_new_clients(NULL, 100, 2);
	struct rx r1 = { 0 }, r2 = { 0 }, r3 = { 0 }, r4 = { 0 }, r5 = { 0 };
	unsigned conns = open_connections(e->b);
	char pass[160];

	int c1 = test_env_register(e, "alice@one/example:secret", 0);
	assert_true(rx_wait(e, &r1, c1, " 366 "));
	int c2 = test_env_register(e, "alice@two/example:secret", 0);
	assert_true(rx_wait(e, &r2, c2, " 366 "));                 /* at the bound */
	int c3 = test_env_register(e, "alice@three/example:secret", 0);
	assert_true(rx_wait(e, &r3, c3, "ERROR :Closing link: too many clients on this session (at most 2)"));
	assert_true(rx_wait_eof(e, &r3, c3));                       /* past: closed */
	assert_null(strstr(r3.buf, " 001 "));
	for (int i = 0; i < 50; i++)
		test_env_pump(e);
	assert_int_equal(open_connections(e->b), conns + 2);
	close(c1);                                                  /* a slot frees */
	assert_true(rx_wait_eof(e, &r1, c1) || true);
	for (int i = 0; i < 50; i++) {
		test_env_pump(e);
		usleep(1000);
	}
	/* a 65-byte client name is refused, a 64-byte one attaches */
	char name[80];
	memset(name, 'n', 65);
	name[65] = '\0';
	snprintf(pass, sizeof(pass), "alice@%s/example:secret", name);
	int c4 = test_env_register(e, pass, 0);
	assert_true(rx_wait(e, &r4, c4, "ERROR :Closing link: client name too long"));
	name[64] = '\0';
	snprintf(pass, sizeof(pass), "alice@%s/example:secret", name);
	int c5 = test_env_register(e, pass, 0);
	assert_true(rx_wait(e, &r5, c5, " 366 "));
	assert_int_equal(open_connections(e->b), conns + 2);
	free(r1.buf);
	free(r2.buf);
	free(r3.buf);
	free(r4.buf);
	free(r5.buf);
	close(c2);
	close(c3);
	close(c4);
	close(c5);
	test_env_free(e);
}

/* A client that comes back after lines it had not seen were dropped
 * (here: #baton's 100 lines rotated) is told where its history has a hole
 * instead of silently missing it; the replay is what the backlog holds. */
static void test_gap_notice_on_reattach(void **state)
{
	struct test_env *e = env_new(NULL, 100);
	struct rx r = { 0 }, r2 = { 0 };
	char line[128];

	int fd = test_env_register(e, "alice@gap/example:secret", 0);
	assert_true(rx_wait(e, &r, fd, " 366 "));
	say_fd(e->up, ":bob!b@host.example PRIVMSG #baton :seen");
	assert_true(rx_wait(e, &r, fd, ":seen\r\n"));
	assert_null(strstr(r.buf, "were dropped"));
	close(fd);
	for (int i = 0; i < 50; i++) {
		test_env_pump(e);
		usleep(1000);
	}
	for (int i = 0; i < 150; i++) {
		snprintf(line, sizeof(line), ":bob!b@host.example PRIVMSG #baton :missed %d", i);
		say_fd(e->up, line);
	}
	say_fd(e->up, ":bob!b@host.example PRIVMSG #baton :last");
	for (int i = 0; i < 200; i++) {
		test_env_pump(e);
		usleep(500);
	}
	fd = test_env_register(e, "alice@gap/example:secret", 0);
	assert_true(rx_wait(e, &r2, fd, ":last\r\n"));
	assert_non_null(strstr(r2.buf, "NOTICE alice :Backlog: some lines since you were last here were dropped"));
	assert_non_null(strstr(r2.buf, "dropped (backlog limits: oldest lines first) in #baton"));
	assert_null(strstr(r2.buf, ":missed 49\r\n"));
	assert_non_null(strstr(r2.buf, ":missed 51\r\n"));
	free(r.buf);
	free(r2.buf);
	close(fd);
	test_env_free(e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_isupport_lines_bounded),
		cmocka_unit_test(test_names_bounded),
		cmocka_unit_test(test_bare_cr_not_stored),
		cmocka_unit_test(test_auth_one_crypt_each),
		cmocka_unit_test(test_replay_flow_controlled),
		cmocka_unit_test(test_replay_resumes_after_migration),
		cmocka_unit_test(test_max_clients_per_session),
		cmocka_unit_test(test_gap_notice_on_reattach),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
