/* tests/unit/sessiond/test_reload.c: bouncer_reload() against an adopted
 * session whose upstream is a socketpair we play the server on: changed
 * channels JOIN and PART only the config's (a channel joined by hand
 * stays); a removed session QUITs its network and closes its clients with a
 * NOTICE and an ERROR; a new session starts; a password change is the next
 * login's; global keys keep their running values; a reload during a
 * migration is refused and changes nothing. */
#include <crypt.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/config.h"
#include "sessiond/bouncer.h"
#include "sessiond/session.h"
#include "test_env.h"

static char hash1[128], hash2[128];

static const char *tmpdir(void)
{
	const char *t = getenv("TMPDIR");
	return t && t[0] ? t : "/tmp";
}

/* The env's config as a file, with `extra` appended and alice's session
 * carrying `channels`. */
static const char *port = "1", *burst = "4";

static struct baton_config *load(const char *alice_session, const char *extra,
				 const char *hash)
{
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;
	char *path = NULL, text[4096];
	FILE *f;
	int fd;

	snprintf(text, sizeof(text),
		 "[listen]\nirc = 127.0.0.1:6667\n"
		 "[network example]\nhost = 127.0.0.1\nport = %s\nconnect_burst = %s\n"
		 "[user alice]\npassword = %s\n%s%s", port, burst, hash,
		 alice_session ? alice_session : "", extra ? extra : "");
	assert_true(asprintf(&path, "%s/baton-reload-test-XXXXXX", tmpdir()) > 0);
	fd = mkstemp(path);
	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	fputs(text, f);
	fclose(f);
	if (config_load(path, &cfg, &pr) != 0)
		fail_msg("%s", pr.n ? pr.msgs[0] : "?");
	config_problems_clear(&pr);
	unlink(path);
	free(path);
	return cfg;
}

static bool has(char **v, size_t n, const char *s)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(v[i], s) == 0)
			return true;
	return false;
}

/* Each test its own listener name: a failed test leaves its env behind. */
static struct test_env *env(const char *name)
{
	const struct test_env_opts o = {
		.backlog_lines = 100,
		.ping_interval_s = 60,
		.ping_timeout_s = 240,
		.password = hash1,
		.unix_name = name,
		.wait_tries = 1000,
	};
	return test_env_new(&o);
}

/* channels "#baton" -> "#new": JOIN #new, PART #baton; #dev (in the
 * session, not in the config) is left alone. */
static void test_channels(void **state)
{
	struct test_env *e = env("baton-test-reload-channels");
	struct bouncer_reload res = { 0 };
	struct rx up = { 0 };
	char why[256];

	(void)state;
	assert_int_equal(bouncer_reload(e->b, load("[user alice/example]\nnick = alice\nchannels = #new\n",
						   NULL, hash1), &res, why, sizeof(why)), 0);
	assert_true(has(res.changed, res.nchanged, "user alice/example: channels +#new -#baton"));
	assert_int_equal(res.nadded + res.nremoved, 0);
	assert_true(rx_wait_tries(e, &up, e->up, "JOIN #new\r\n", 1000));
	assert_true(rx_wait_tries(e, &up, e->up, "PART #baton :", 1000));
	assert_null(strstr(up.buf, "#dev"));
	bouncer_reload_clear(&res);
	free(up.buf);
	test_env_free(e);
}

/* The session removed: QUIT to the network, NOTICE + ERROR to its client,
 * both closed, the session gone. */
static void test_removed(void **state)
{
	struct test_env *e = env("baton-test-reload-removed");
	struct bouncer_reload res = { 0 };
	struct rx up = { 0 }, cl = { 0 };
	char why[256];
	int c = test_env_register(e, "alice/example:secret", 0);

	(void)state;
	assert_true(rx_wait_tries(e, &cl, c, " 001 ", 1000));
	assert_int_equal(bouncer_nsessions(e->b), 1);
	assert_int_equal(bouncer_reload(e->b, load(NULL, NULL, hash1), &res, why,
					sizeof(why)), 0);
	assert_true(has(res.removed, res.nremoved, "user alice/example"));
	assert_int_equal(bouncer_nsessions(e->b), 0);
	assert_true(rx_wait_tries(e, &up, e->up, "QUIT :Removed from the bouncer\r\n", 1000));
	assert_true(rx_wait_tries(e, &cl, c, "ERROR :Closing link: session removed", 1000));
	assert_non_null(strstr(cl.buf, "NOTICE"));
	assert_non_null(strstr(cl.buf, "removed from the bouncer's configuration"));
	/* both see the close */
	while (!up.eof)
		assert_true(!rx_wait_tries(e, &up, e->up, "never", 5) || up.eof);
	bouncer_reload_clear(&res);
	free(up.buf);
	free(cl.buf);
	close(c);
	test_env_free(e);
}

/* A new user and session start; the password change counts for the next
 * login; [sessiond] keeps its running value and says so. */
static void test_added_and_later(void **state)
{
	struct test_env *e = env("baton-test-reload-added-and-later");
	struct bouncer_reload res = { 0 };
	const struct baton_config *now;
	char why[256];
	struct rx cl = { 0 };
	int c;

	(void)state;
	port = "2";  /* applies at the next connection */
	burst = "9"; /* the governor's: at the next upgrade */
	assert_int_equal(bouncer_reload(e->b, load("[user alice/example]\nnick = alice2\nchannels = #baton\n",
						   "[user bob]\npassword = $6$x$y\n"
						   "[user bob/example]\n"
						   "[sessiond]\nbacklog_lines = 7\n", hash2),
				       &res, why, sizeof(why)), 0);
	assert_true(has(res.added, res.nadded, "user bob"));
	assert_true(has(res.added, res.nadded, "user bob/example"));
	assert_true(has(res.changed, res.nchanged, "user alice: password (from the next login)"));
	assert_true(has(res.later, res.nlater, "user alice/example: nick (at its next connection)"));
	assert_true(has(res.later, res.nlater, "[sessiond] backlog_lines (at the next upgrade)"));
	assert_true(has(res.later, res.nlater, "[network example] port (at each session's next connection)"));
	assert_true(has(res.later, res.nlater, "[network example] connect_burst (at the next upgrade)"));
	port = "1";
	burst = "4";
	assert_int_equal(bouncer_nsessions(e->b), 2);
	now = bouncer_config(e->b);
	assert_int_equal(now->backlog_lines, 100); /* the running value */
	assert_string_equal(config_find_network(now, "example")->port, "2");
	assert_int_equal(config_find_network(now, "example")->connect_burst, 0); /* hand-made: running */
	assert_non_null(config_find_user(now, "bob"));
	/* the old password fails now, the new one works */
	c = test_env_register(e, "alice/example:secret", 0);
	assert_true(rx_wait_tries(e, &cl, c, "464", 2000));
	close(c);
	free(cl.buf);
	memset(&cl, 0, sizeof(cl));
	c = test_env_register(e, "alice/example:other", 0);
	assert_true(rx_wait_tries(e, &cl, c, " 001 ", 2000));
	close(c);
	free(cl.buf);
	bouncer_reload_clear(&res);
	test_env_free(e);
}

/* During a migration (the session frozen) a reload is refused and nothing
 * changes. */
static void test_refused_while_frozen(void **state)
{
	struct test_env *e = env("baton-test-reload-refused-while-frozen");
	struct bouncer_reload res = { 0 };
	char why[256];

	(void)state;
	bouncer_item_freeze(e->item);
	assert_int_equal(bouncer_reload(e->b, load(NULL, NULL, hash1), &res, why,
					sizeof(why)), -EBUSY);
	assert_non_null(strstr(why, "migration"));
	assert_int_equal(res.nremoved, 0);
	assert_int_equal(bouncer_nsessions(e->b), 1);
	bouncer_item_thaw(e->item);
	test_env_free(e);
}

int main(void)
{
	struct crypt_data cd;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_channels),
		cmocka_unit_test(test_removed),
		cmocka_unit_test(test_added_and_later),
		cmocka_unit_test(test_refused_while_frozen),
	};

	memset(&cd, 0, sizeof(cd));
	snprintf(hash1, sizeof(hash1), "%s", crypt_r("secret", "$6$testsalt$", &cd));
	memset(&cd, 0, sizeof(cd));
	snprintf(hash2, sizeof(hash2), "%s", crypt_r("other", "$6$testsalt$", &cd));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
