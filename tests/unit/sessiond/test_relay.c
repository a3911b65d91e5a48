/* tests/unit/sessiond/test_relay.c: clients through a real listener against
 * an adopted session whose upstream is a socketpair we play the server on:
 * authentication, the welcome burst, backlog replay by delivery position
 * (per client name, across detach/attach), live relay between several
 * clients, what is and is not forwarded upstream, and channel state. */
#include <crypt.h>
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
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
#include "test_env.h"

struct peer {
	int fd;
	char buf[1 << 16];
	size_t len;
	bool eof;
};

struct env {
	struct test_env *t; /* its upstream end is up.fd */
	struct peer up; /* we are the IRC server */
};

static void pump(struct env *e, struct peer *p)
{
	event_base_loop(e->t->base, EVLOOP_NONBLOCK);
	if (!p)
		return;
	for (;;) {
		ssize_t r = recv(p->fd, p->buf + p->len, sizeof(p->buf) - 1 - p->len, MSG_DONTWAIT);
		if (r == 0)
			p->eof = true;
		if (r <= 0)
			break;
		p->len += (size_t)r;
	}
	p->buf[p->len] = '\0';
}

/* Run the loop until `s` shows up in what p received (about 2 s max). */
static bool wait_for(struct env *e, struct peer *p, const char *s)
{
	for (int i = 0; i < 400; i++) {
		pump(e, p);
		if (strstr(p->buf, s))
			return true;
		struct pollfd pfd = { .fd = p->fd, .events = POLLIN };
		poll(&pfd, 1, 5);
	}
	fprintf(stderr, "did not see '%s' in:\n%s\n", s, p->buf);
	return false;
}

static void settle(struct env *e, struct peer **ps, size_t n)
{
	for (int i = 0; i < 20; i++) {
		event_base_loop(e->t->base, EVLOOP_NONBLOCK);
		for (size_t j = 0; j < n; j++)
			pump(e, ps[j]);
		usleep(1000);
	}
}

static void clear(struct peer *p)
{
	p->len = 0;
	p->buf[0] = '\0';
}

static void say(struct peer *p, const char *line)
{
	say_fd(p->fd, line);
}

static struct peer *client_connect(struct env *e)
{
	struct peer *p = calloc(1, sizeof(*p));
	p->fd = test_env_connect(e->t, 0);
	return p;
}

static void client_close(struct peer *p)
{
	close(p->fd);
	free(p);
}

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));
	struct crypt_data cd;

	memset(&cd, 0, sizeof(cd));
	const struct test_env_opts o = {
		.backlog_lines = 100,
		.ping_interval_s = 60,
		.ping_timeout_s = 240,
		.password = crypt_r("secret", "$6$testsalt$", &cd),
		.unix_name = "baton-test-relay",
		.wait_tries = 1000,
	};
	e->t = test_env_new(&o);
	e->up.fd = e->t->up;
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;
	test_env_free(e->t);
	free(e);
	return 0;
}

static void do_register(struct env *e, struct peer *c, const char *pass, bool server_time)
{
	char line[256];
	say(c, "CAP LS 302");
	if (server_time)
		say(c, "CAP REQ :server-time multi-prefix");
	snprintf(line, sizeof(line), "PASS %s", pass);
	say(c, line);
	say(c, "NICK whatever");
	say(c, "USER u 0 * :Real Name");
	say(c, "CAP END");
}

static void test_attach_replay_relay(void **state)
{
	struct env *e = *state;
	struct peer *a = client_connect(e);

	do_register(e, a, "alice/example:secret", true);
	assert_true(wait_for(e, a, "CAP * ACK :server-time multi-prefix"));
	assert_true(wait_for(e, a, ":irc.example.net 001 alice :Welcome to the Example IRC Network"));
	assert_true(wait_for(e, a, ":irc.example.net 005 alice CHANTYPES=#& PREFIX=(ov)@+"));
	assert_true(wait_for(e, a, ":alice!a@host.example JOIN #baton\r\n"));
	assert_true(wait_for(e, a, " 332 alice #baton :Hot upgrades without dropping anyone\r\n"));
	assert_true(wait_for(e, a, " 333 alice #baton bob!b@host.example 1764200000\r\n"));
	assert_true(wait_for(e, a, " 353 alice = #baton :@alice bob +carol\r\n"));
	assert_true(wait_for(e, a, " 353 alice = #dev :@+dave alice\r\n"));
	assert_true(wait_for(e, a, " 366 alice #dev :End of /NAMES list.\r\n"));
	/* replay: position "default" is 2, so seqs 3..5, with server-time */
	assert_true(wait_for(e, a, "@time=2025-11-27T08:00:05.000Z :bob!b@host.example NOTICE alice :ok\r\n"));
	assert_non_null(strstr(a->buf, "@time=2025-11-27T08:00:03.000Z :bob!b@host.example PRIVMSG alice :psst, a query\r\n"));
	assert_non_null(strstr(a->buf, ":alice!a@host.example PRIVMSG #baton :hi all\r\n"));
	assert_null(strstr(a->buf, "hello there"));
	assert_null(strstr(a->buf, "ACTION waves"));

	/* a second client, named "phone" (position 4), without server-time */
	struct peer *b = client_connect(e);
	do_register(e, b, "alice@phone/example:secret", false);
	assert_true(wait_for(e, b, ":bob!b@host.example NOTICE alice :ok\r\n"));
	assert_null(strstr(b->buf, "hi all"));
	if (strstr(b->buf, "@time"))
		fail_msg("tags sent to a client without server-time:\n%s", b->buf);
	assert_null(strstr(b->buf, " 353 alice = #dev :@+dave")); /* no multi-prefix */
	assert_non_null(strstr(b->buf, " 353 alice = #dev :@dave alice"));

	struct bouncer_stats st;
	bouncer_stats(e->t->b, &st);
	assert_int_equal(st.clients, 2);
	assert_int_equal(st.pending, 0);

	/* live: upstream -> both */
	clear(a);
	clear(b);
	say(&e->up, "@time=2025-11-27T09:00:00.123Z :bob!b@host.example PRIVMSG #baton :live one");
	assert_true(wait_for(e, a, "@time=2025-11-27T09:00:00.123Z :bob!b@host.example PRIVMSG #baton :live one\r\n"));
	assert_true(wait_for(e, b, ":bob!b@host.example PRIVMSG #baton :live one\r\n"));
	assert_null(strstr(b->buf, "@time"));

	/* NAMES replies: all prefixes only for clients with multi-prefix */
	clear(a);
	clear(b);
	say(&e->up, ":irc.example.net 353 alice = #baton :@+x bob +carol");
	assert_true(wait_for(e, a, " 353 alice = #baton :@+x bob +carol\r\n"));
	assert_true(wait_for(e, b, ":irc.example.net 353 alice = #baton :@x bob +carol\r\n"));

	/* a -> upstream once, and to b (not echoed to a) */
	clear(a);
	clear(b);
	say(a, "@label=x PRIVMSG #baton :from A");
	assert_true(wait_for(e, &e->up, "PRIVMSG #baton :from A\r\n"));
	assert_true(wait_for(e, b, ":alice!a@host.example PRIVMSG #baton :from A\r\n"));
	/* PING answered locally, other commands forwarded without tags */
	say(a, "PING :t1");
	say(a, "@x=y WHOIS bob");
	assert_true(wait_for(e, a, "PONG irc.example.net :t1\r\n"));
	assert_true(wait_for(e, &e->up, "\r\nWHOIS bob\r\n"));
	assert_null(strstr(e->up.buf, "PING"));
	assert_null(strstr(a->buf, "from A"));

	/* QUIT detaches only */
	clear(&e->up);
	say(a, "QUIT :bye");
	assert_true(wait_for(e, a, "ERROR :"));
	struct peer *ps[] = { a, b, &e->up };
	settle(e, ps, 3);
	assert_true(a->eof);
	assert_null(strstr(e->up.buf, "QUIT"));
	bouncer_stats(e->t->b, &st);
	assert_int_equal(st.clients, 1);
	client_close(a);

	/* while a is away: one more line; a reattaches and gets only that */
	say(&e->up, ":bob!b@host.example PRIVMSG #baton :later");
	assert_true(wait_for(e, b, "PRIVMSG #baton :later\r\n"));
	a = client_connect(e);
	do_register(e, a, "alice/example:secret", false);
	assert_true(wait_for(e, a, ":bob!b@host.example PRIVMSG #baton :later\r\n"));
	assert_null(strstr(a->buf, "live one"));
	assert_null(strstr(a->buf, "from A"));
	assert_null(strstr(a->buf, "hi all"));

	client_close(a);
	client_close(b);
	settle(e, NULL, 0);
}

static void test_auth_failures(void **state)
{
	struct env *e = *state;
	const char *bad[] = { "alice/example:wrong", "mallory/example:secret",
			      "alice/othernet:secret", "nonsense" };

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct peer *c = client_connect(e);
		do_register(e, c, bad[i], false);
		assert_true(wait_for(e, c, ":baton 464 whatever :Password incorrect\r\nERROR :"));
		struct peer *ps[] = { c };
		settle(e, ps, 1);
		assert_true(c->eof);
		assert_null(strstr(c->buf, " 001 "));
		client_close(c);
	}
	struct bouncer_stats st;
	bouncer_stats(e->t->b, &st);
	assert_int_equal(st.pending, 0);
	assert_int_equal(st.clients, 0);
}

static void test_overlong_line_closes(void **state)
{
	struct env *e = *state;
	struct peer *c = client_connect(e);
	char big[9000];

	memset(big, 'a', sizeof(big));
	assert_int_equal(send(c->fd, big, sizeof(big), 0), (ssize_t)sizeof(big));
	struct peer *ps[] = { c };
	for (int i = 0; i < 20 && !c->eof; i++)
		settle(e, ps, 1);
	assert_true(c->eof);
	client_close(c);
}

/* Channel state follows upstream events and lands in the serialized state. */
static void test_channel_state(void **state)
{
	struct env *e = *state;

	say(&e->up, ":bob!b@host.example NICK bobby");
	say(&e->up, ":carol!c@host.example PART #baton :bye");
	say(&e->up, ":x!x@h JOIN #baton");
	say(&e->up, ":bobby!b@host.example MODE #baton +ov-t x x");
	say(&e->up, ":bobby!b@host.example TOPIC #baton :new topic");
	say(&e->up, ":dave!d@h KICK #dev alice :out");
	say(&e->up, ":alice!a@host.example NICK alice2");
	say(&e->up, "PING :sync");
	assert_true(wait_for(e, &e->up, "PONG :sync\r\n"));

	bouncer_item_freeze(e->t->item);
	uint8_t *out;
	size_t olen, nfds;
	const int *fds;
	assert_int_equal(bouncer_item_serialize(e->t->item, &out, &olen, &fds, &nfds), 0);
	Baton__State__Item *item = baton__state__item__unpack(NULL, olen, out);
	Baton__State__Session *s = item->session;
	assert_string_equal(s->nick, "alice2");
	assert_int_equal(s->n_channels, 1); /* kicked from #dev */
	Baton__State__Channel *c = s->channels[0];
	assert_string_equal(c->name, "#baton");
	assert_string_equal(c->topic, "new topic");
	assert_string_equal(c->topic_setter, "bobby!b@host.example");
	assert_string_equal(c->modes, "+n");
	assert_int_equal(c->n_members, 3);
	assert_string_equal(c->members[0]->nick, "alice2");
	assert_string_equal(c->members[1]->nick, "bobby");
	assert_string_equal(c->members[2]->nick, "x");
	assert_string_equal(c->members[2]->prefixes, "@+");
	baton__state__item__free_unpacked(item, NULL);
	free(out);
	bouncer_item_thaw(e->t->item);
}

/* Bug: a client's PRIVMSG to "a,b,c,..." created one backlog buffer per
 * target, of any name: 2,000 lines to 50 targets each grew one session
 * without bound, and a 600-byte target made the state unadoptable. At most
 * CLIENT_MAX_TARGETS (16) targets of one line are stored, each a valid
 * buffer name (names.h); the line still goes to the network as sent. */
static void test_targets_bounded(void **state)
{
	struct env *e = *state;
	struct peer *a = client_connect(e);
	char line[2048];
	int n = snprintf(line, sizeof(line), "PRIVMSG ");
	for (int i = 0; i < 20; i++)
		n += snprintf(line + n, sizeof(line) - (size_t)n, "%st%02d", i ? "," : "", i);
	snprintf(line + n, sizeof(line) - (size_t)n, " :to twenty");

	do_register(e, a, "alice/example:secret", false);
	assert_true(wait_for(e, a, " 366 alice #dev :End of /NAMES list.\r\n"));
	clear(&e->up);
	say(a, line);
	assert_true(wait_for(e, &e->up, "t19 :to twenty\r\n"));
	char bad[700];
	memset(bad, 'q', 600);
	snprintf(bad + 600, sizeof(bad) - 600, " :x");
	char badline[800];
	snprintf(badline, sizeof(badline), "PRIVMSG %s", bad);
	say(a, badline);
	say(a, "PRIVMSG ,,t00,, :commas");
	assert_true(wait_for(e, &e->up, "PRIVMSG ,,t00,, :commas\r\n"));

	uint8_t *buf;
	size_t len, nfds;
	const int *fds;
	struct bouncer_item *it = session_serialize(e->t->b, &buf, &len, &fds, &nfds);
	Baton__State__Item *item = baton__state__item__unpack(NULL, len, buf);
	assert_non_null(item);
	size_t stored = 0;
	for (size_t i = 0; i < item->session->n_buffers; i++) {
		const char *name = item->session->buffers[i]->name;
		if (name[0] == 't')
			stored++;
		assert_true(strlen(name) < 600);
	}
	assert_int_equal(stored, 16);
	baton__state__item__free_unpacked(item, NULL);
	free(buf);
	bouncer_item_thaw(it);
	client_close(a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_attach_replay_relay, setup, teardown),
		cmocka_unit_test_setup_teardown(test_auth_failures, setup, teardown),
		cmocka_unit_test_setup_teardown(test_overlong_line_closes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_channel_state, setup, teardown),
		cmocka_unit_test_setup_teardown(test_targets_bounded, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
