/* tests/unit/sessiond/test_service.c: the *baton service nick
 * (sessiond/service.c) through a real client of the test environment
 * (test_env.h: alice/example): its commands answer as NOTICEs from *baton
 * and never reach the network; an edit goes to the sender (the control
 * channel in a worker, a fake here) within its bounds, one per client,
 * and is answered by service_edit_result(), a timeout, or nothing when
 * the client left. Each test opens with the behaviour it pins. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "common/config.h"
#include "sessiond/bouncer.h"
#include "sessiond/service.h"
#include "test_env.h"

/* ---- the fake supervisor ---- */
static struct {
	unsigned calls;
	uint64_t id;
	char user[80], network[80], op[8];
	size_t npairs;
	char first_pair[256];
	int rc; /* what the send returns */
} sent;

static int fake_send(void *arg, uint64_t id, const char *user, const char *network,
		     const char *op, char *const *pairs, size_t npairs)
{
	(void)arg;
	sent.calls++;
	sent.id = id;
	snprintf(sent.user, sizeof(sent.user), "%s", user);
	snprintf(sent.network, sizeof(sent.network), "%s", network);
	snprintf(sent.op, sizeof(sent.op), "%s", op);
	sent.npairs = npairs;
	snprintf(sent.first_pair, sizeof(sent.first_pair), "%s", npairs ? pairs[0] : "");
	return sent.rc;
}

/* Users bob and carol beside alice, each with a session on example (they
 * log in with alice's password), for the rates per user. */
static struct config_user three_users[3];
static struct config_session three_sessions[3];

static void tune_three_users(struct baton_config *cfg)
{
	static const char *const names[] = { "alice", "bob", "carol" };

	for (size_t i = 0; i < 3; i++) {
		three_users[i] = cfg->users[0];
		three_users[i].name = (char *)names[i];
		three_sessions[i] = cfg->sessions[0];
		three_sessions[i].user = (char *)names[i];
		three_sessions[i].nick = (char *)names[i];
	}
	cfg->users = three_users;
	cfg->nusers = 3;
	cfg->sessions = three_sessions;
	cfg->nsessions = 3;
}

static struct test_env *env_tuned(void (*tune)(struct baton_config *))
{
	const struct test_env_opts o = {
		.backlog_lines = 100,
		.ping_interval_s = 600,
		.ping_timeout_s = 2400,
		.password = "$6$testsalt$51yaaBMXXXt5vK522YOlIMZ267vqHtMIzc2klcsu3EEv/bkRDU9g3UmkypXf.NvlpPpIPK1nX5zdbCeJBiQbB/",
		.wait_tries = 5000,
		.tune = tune,
	};
	memset(&sent, 0, sizeof(sent));
	service_set_sender(NULL, NULL);
	service_set_timeout_ms(0);
	return test_env_new(&o);
}

static struct test_env *env(void)
{
	return env_tuned(NULL);
}

/* alice's session adopted, bob's and carol's started (not connected). */
static struct test_env *env_three(void)
{
	struct test_env *e = env_tuned(tune_three_users);

	bouncer_start_configured(e->b);
	return e;
}

static bool wait_for(struct test_env *e, struct rx *r, int fd, const char *s)
{
	return rx_wait_tries(e, r, fd, s, 3000);
}

static void rx_reset(struct rx *r)
{
	free(r->buf);
	memset(r, 0, sizeof(*r));
}

static void ask(int fd, const char *text)
{
	char line[1100];

	snprintf(line, sizeof(line), "PRIVMSG *baton :%s", text);
	say_fd(fd, line);
}

/* Nothing of *baton reached the network (our end of the upstream). */
static void assert_network_saw_nothing(struct test_env *e)
{
	struct rx up = { 0 };

	for (int i = 0; i < 20; i++) {
		test_env_pump(e);
		rx_read_max(&up, e->up, 0);
	}
	assert_null(up.buf ? strstr(up.buf, "*baton") : NULL);
	free(up.buf);
}

static int login(struct test_env *e, struct rx *r)
{
	int fd = test_env_register(e, "alice@svc/example:secret", 0);

	assert_true(wait_for(e, r, fd, " 422 "));
	return fd;
}

/* help and list are answered by *baton, as NOTICEs, and the network
 * never hears of them (nor of a NOTICE to *baton). */
static void test_help_and_list(void **state)
{
	struct test_env *e = env();
	struct rx r = { 0 };
	int fd = login(e, &r);

	ask(fd, "help");
	assert_true(wait_for(e, &r, fd, ":*baton!baton@baton NOTICE alice :*baton: manage your networks"));
	assert_true(wait_for(e, &r, fd, "What you may do here: list and set"));
	ask(fd, "network list");
	assert_true(wait_for(e, &r, fd, "NOTICE alice :example (this connection): "));
	assert_true(wait_for(e, &r, fd, "NOTICE alice :1 network\r\n"));
	ask(fd, "network status nope");
	assert_true(wait_for(e, &r, fd, "You have no network 'nope'"));
	ask(fd, "frobnicate");
	assert_true(wait_for(e, &r, fd, "Unknown command 'frobnicate': try help"));
	say_fd(fd, "NOTICE *baton :help");
	assert_network_saw_nothing(e);
	close(fd);
	free(r.buf);
	test_env_free(e);
}

/* No supervisor to ask (an orphan): refused at once, clearly. A send that
 * fails: refused with its error, nothing pending (the next edit is
 * asked). */
static void test_no_supervisor(void **state)
{
	struct test_env *e = env();
	struct rx r = { 0 };
	int fd = login(e, &r);

	ask(fd, "network set example nick=bob");
	assert_true(wait_for(e, &r, fd, "Not done: no supervisor to apply it"));
	service_set_sender(fake_send, NULL);
	sent.rc = -EPIPE;
	ask(fd, "network set example nick=bob");
	assert_true(wait_for(e, &r, fd, "Not done: cannot ask the supervisor: Broken pipe"));
	sent.rc = 0;
	ask(fd, "network set example nick=carol");
	for (int i = 0; i < 50 && sent.calls < 2; i++)
		test_env_pump(e);
	assert_int_equal(sent.calls, 2);
	service_edit_result(sent.id, true, NULL);
	assert_true(wait_for(e, &r, fd, "Done: network example changed (nick: at your next connection to the network)"));
	close(fd);
	free(r.buf);
	test_env_free(e);
}

/* An edit reaches the sender as asked (user from the login, never from
 * the command); a second one while it is in flight is refused; the
 * supervisor's answer is told (refused: its reason); an answer with an
 * unknown id changes nothing. */
static void test_edit_round_trip(void **state)
{
	struct test_env *e = env();
	struct rx r = { 0 };
	int fd = login(e, &r);

	service_set_sender(fake_send, NULL);
	ask(fd, "network add libera nick=al channels=#a,#b");
	for (int i = 0; i < 200 && sent.calls == 0; i++)
		test_env_pump(e);
	assert_int_equal(sent.calls, 1);
	assert_string_equal(sent.user, "alice");
	assert_string_equal(sent.network, "libera");
	assert_string_equal(sent.op, "add");
	assert_int_equal(sent.npairs, 2);
	assert_string_equal(sent.first_pair, "nick=al");
	ask(fd, "network del libera");
	assert_true(wait_for(e, &r, fd, "Not done: your previous change is still being applied"));
	assert_int_equal(sent.calls, 1);
	service_edit_result(sent.id + 1000, false, "stray");
	service_edit_result(sent.id, false, "no network 'libera' here");
	assert_true(wait_for(e, &r, fd, "Not done: no network 'libera' here"));
	assert_null(strstr(r.buf, "stray"));
	ask(fd, "network del libera");
	for (int i = 0; i < 200 && sent.calls == 1; i++)
		test_env_pump(e);
	assert_int_equal(sent.calls, 2);
	assert_string_equal(sent.op, "del");
	service_edit_result(sent.id, true, NULL);
	assert_true(wait_for(e, &r, fd, "Done: network libera deleted (applied now)"));
	assert_network_saw_nothing(e);
	close(fd);
	free(r.buf);
	test_env_free(e);
}

/* Every argument bounded, at and past its bound: a network name of 64
 * bytes goes, 65 does not; 8 KEY=VALUE go, 9 do not; a KEY=VALUE of 190
 * bytes goes, 191 does not; 16 words go, 17 do not; names with a blank
 * part or INI syntax do not. Refusals never reach the sender. */
static void test_bounds(void **state)
{
	struct test_env *e = env();
	struct rx r = { 0 };
	int fd = login(e, &r);
	char cmd[1024], name[80], pair[256];
	unsigned calls;

	service_set_sender(fake_send, NULL);
	memset(name, 'n', 65);
	name[65] = '\0';
	snprintf(cmd, sizeof(cmd), "network add %s", name);
	ask(fd, cmd);
	assert_true(wait_for(e, &r, fd, "Not done: a network name has 1 to 64 bytes"));
	assert_int_equal(sent.calls, 0);
	name[64] = '\0';
	snprintf(cmd, sizeof(cmd), "network add %s", name);
	ask(fd, cmd);
	for (int i = 0; i < 200 && sent.calls == 0; i++)
		test_env_pump(e);
	assert_int_equal(sent.calls, 1);
	assert_string_equal(sent.network, name);
	service_edit_result(sent.id, true, NULL);
	assert_true(wait_for(e, &r, fd, "Done: network nnnn"));

	calls = sent.calls;
	ask(fd, "network set x a=1 a=2 a=3 a=4 a=5 a=6 a=7 a=8 a=9");
	assert_true(wait_for(e, &r, fd, "Not done: at most 8 KEY=VALUE at once"));
	ask(fd, "network set x a=1 a=2 a=3 a=4 a=5 a=6 a=7 a=8 a=9 b c d e f");
	assert_true(wait_for(e, &r, fd, "Too many words (at most 16)"));
	ask(fd, "network set x a=1 a=2 a=3 a=4 a=5 a=6 a=7 a=8");
	for (int i = 0; i < 200 && sent.calls == calls; i++)
		test_env_pump(e);
	assert_int_equal(sent.calls, calls + 1);
	assert_int_equal(sent.npairs, 8);
	service_edit_result(sent.id, true, NULL);
	assert_true(wait_for(e, &r, fd, "Done: network x changed"));

	calls = sent.calls;
	memset(pair, 'v', sizeof(pair));
	memcpy(pair, "realname=", 9);
	pair[191] = '\0';
	snprintf(cmd, sizeof(cmd), "network set x %s", pair);
	ask(fd, cmd);
	assert_true(wait_for(e, &r, fd, "Not done: expected KEY=VALUE of at most 190 bytes"));
	assert_int_equal(sent.calls, calls);
	pair[190] = '\0';
	snprintf(cmd, sizeof(cmd), "network set y %s", pair);
	ask(fd, cmd);
	for (int i = 0; i < 200 && sent.calls == calls; i++)
		test_env_pump(e);
	assert_int_equal(sent.calls, calls + 1);
	assert_int_equal(strlen(sent.first_pair), 190);
	service_edit_result(sent.id, true, NULL);
	assert_true(wait_for(e, &r, fd, "Done: network y changed"));

	calls = sent.calls;
	ask(fd, "network add a/b");
	assert_true(wait_for(e, &r, fd, "without blanks or any of / [ ] ; #"));
	ask(fd, "network add x]");
	ask(fd, "network set x nick");
	assert_true(wait_for(e, &r, fd, "expected KEY=VALUE of at most 190 bytes, got 'nick'"));
	ask(fd, "network set x");
	assert_true(wait_for(e, &r, fd, "Usage: network set NAME KEY=VALUE ..."));
	assert_int_equal(sent.calls, calls);
	close(fd);
	free(r.buf);
	test_env_free(e);
}

/* A supervisor that never answers (one older than the worker): the user
 * is told after the deadline and may ask again. A client that leaves with
 * an edit in flight: the late answer goes nowhere (no use after free). */
static void test_timeout_and_gone(void **state)
{
	struct test_env *e = env();
	struct rx r = { 0 };
	int fd = login(e, &r);
	uint64_t id;

	service_set_sender(fake_send, NULL);
	service_set_timeout_ms(50);
	ask(fd, "network set example nick=bob");
	assert_true(wait_for(e, &r, fd, "Not done: the supervisor did not answer"));
	id = sent.id;
	service_edit_result(id, true, NULL); /* too late: ignored */
	ask(fd, "network set example nick=bob");
	for (int i = 0; i < 200 && sent.calls < 2; i++)
		test_env_pump(e);
	assert_int_equal(sent.calls, 2);
	close(fd);
	for (int i = 0; i < 50; i++)
		test_env_pump(e);
	service_edit_result(sent.id, true, NULL);
	free(r.buf);
	test_env_free(e);
}

/* One edit asked by fd and answered ok: its Done line (want) told. */
static void edit_ok(struct test_env *e, struct rx *r, int fd, const char *cmd,
		    const char *want)
{
	unsigned calls = sent.calls;

	ask(fd, cmd);
	for (int k = 0; k < 200 && sent.calls == calls; k++)
		test_env_pump(e);
	assert_int_equal(sent.calls, calls + 1);
	service_edit_result(sent.id, true, NULL);
	assert_true(wait_for(e, r, fd, want));
}

static int login_as(struct test_env *e, struct rx *r, const char *user)
{
	char pass[80];
	int fd;

	snprintf(pass, sizeof(pass), "%s@svc/example:secret", user);
	fd = test_env_register(e, pass, 0);
	assert_true(wait_for(e, r, fd, " 422 "));
	return fd;
}

/* The rates of edits: a user's burst of SERVICE_EDIT_USER_BURST goes
 * (each answered), the user's next is refused before the supervisor hears
 * of it, and the worker's SERVICE_EDIT_BURST bounds all users together:
 * alice's and bob's bursts go, carol's first is refused. */
static void test_rate(void **state)
{
	struct test_env *e = env_three();
	struct rx ra = { 0 }, rb = { 0 }, rc = { 0 };
	int fa = login_as(e, &ra, "alice"), fb = login_as(e, &rb, "bob"),
	    fc = login_as(e, &rc, "carol");
	unsigned done = 0;
	char want[64];

	_Static_assert(SERVICE_EDIT_BURST == 2 * SERVICE_EDIT_USER_BURST,
		       "this test spends the worker's burst in two users' bursts");
	service_set_sender(fake_send, NULL);
	for (unsigned i = 1; i <= SERVICE_EDIT_USER_BURST; i++) {
		char cmd[64];

		snprintf(cmd, sizeof(cmd), "network set n%u nick=x", i);
		snprintf(want, sizeof(want), "Done: network n%u changed", i);
		edit_ok(e, &ra, fa, cmd, want);
		edit_ok(e, &rb, fb, cmd, want);
		done += 2;
	}
	ask(fa, "network set last nick=x");
	snprintf(want, sizeof(want), "Not done: you made too many changes lately: try again in %d s",
		 SERVICE_EDIT_USER_EVERY_MS / 1000);
	assert_true(wait_for(e, &ra, fa, want));
	ask(fc, "network set last nick=x");
	assert_true(wait_for(e, &rc, fc, "Not done: too many changes lately on this bouncer: try again in 2 s"));
	assert_int_equal(sent.calls, done);
	close(fa);
	close(fb);
	close(fc);
	free(ra.buf);
	free(rb.buf);
	free(rc.buf);
	test_env_free(e);
}

/* Regression: the rate was one bucket for the worker, so one user's burst
 * locked every other user out of edits. Now alice spends hers and bob's
 * edit still goes. */
static void test_rate_per_user(void **state)
{
	struct test_env *e = env_three();
	struct rx ra = { 0 }, rb = { 0 };
	int fa = login_as(e, &ra, "alice"), fb = login_as(e, &rb, "bob");
	unsigned calls;

	service_set_sender(fake_send, NULL);
	for (unsigned i = 0; i < 2 * SERVICE_EDIT_BURST; i++) {
		calls = sent.calls;
		ask(fa, "network set example nick=x");
		for (int k = 0; k < 200 && sent.calls == calls && !strstr(ra.buf ? ra.buf : "", "Not done"); k++) {
			test_env_pump(e);
			rx_read_max(&ra, fa, 0);
		}
		if (sent.calls == calls)
			break; /* refused */
		service_edit_result(sent.id, true, NULL);
		assert_true(wait_for(e, &ra, fa, "Done: network example changed"));
		rx_reset(&ra);
	}
	assert_true(wait_for(e, &ra, fa, "Not done: you made too many changes lately"));
	edit_ok(e, &rb, fb, "network set example nick=y", "Done: network example changed");
	close(fa);
	close(fb);
	free(ra.buf);
	free(rb.buf);
	test_env_free(e);
}

/* Regression: a target list naming *baton (`PRIVMSG #baton,*baton :...`)
 * went to the network whole, the *baton command with it. A list that
 * names *baton (in any case, anywhere) is refused with a clear error and
 * nothing of it is sent, to the network or to the supervisor. */
static void test_target_list(void **state)
{
	struct test_env *e = env();
	struct rx r = { 0 };
	int fd = login(e, &r);

	service_set_sender(fake_send, NULL);
	say_fd(fd, "PRIVMSG #baton,*baton :network set example nick=x");
	assert_true(wait_for(e, &r, fd, "*baton takes a message of its own"));
	for (int i = 0; i < 3; i++) {
		static const char *const lines[] = {
			"PRIVMSG *BATON,someone :network list",
			"NOTICE someone,*baton :hello",
			"PRIVMSG *baton, :network list",
		};

		rx_reset(&r);
		say_fd(fd, lines[i]);
		assert_true(wait_for(e, &r, fd, "*baton takes a message of its own"));
	}
	assert_network_saw_nothing(e);
	assert_int_equal(sent.calls, 0);
	close(fd);
	free(r.buf);
	test_env_free(e);
}

/* Regression: every change was told "applied now", but a reload applies
 * nick, username and realname at the session's next connection (only
 * channels at once: JOIN/PART). The Done line says which is which. */
static void test_done_says_when(void **state)
{
	struct test_env *e = env();
	struct rx r = { 0 };
	int fd = login(e, &r);

	service_set_sender(fake_send, NULL);
	edit_ok(e, &r, fd, "network set example channels=#a",
		"Done: network example changed (applied now)\r\n");
	edit_ok(e, &r, fd, "network set example nick=x realname=y nick=z",
		"Done: network example changed (nick, realname: at your next connection to the network)\r\n");
	edit_ok(e, &r, fd, "network set example username=u channels=",
		"Done: network example changed (channels: now; username: at your next connection to the network)\r\n");
	edit_ok(e, &r, fd, "network add libera nick=al",
		"Done: network libera added (applied now)\r\n");
	close(fd);
	free(r.buf);
	test_env_free(e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_help_and_list),
		cmocka_unit_test(test_no_supervisor),
		cmocka_unit_test(test_edit_round_trip),
		cmocka_unit_test(test_bounds),
		cmocka_unit_test(test_timeout_and_gone),
		cmocka_unit_test(test_rate),
		cmocka_unit_test(test_rate_per_user),
		cmocka_unit_test(test_target_list),
		cmocka_unit_test(test_done_says_when),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
