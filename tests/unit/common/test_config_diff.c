/* Unit tests of common/config_diff.c: sections added and removed, keys
 * changed (lists compared as lists, the SASL password read from a file
 * compared by content), line moves alone are no change. */
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
#include "common/config_diff.h"

static const char *tmpdir(void)
{
	const char *t = getenv("TMPDIR");
	return t && t[0] ? t : "/tmp";
}

static struct baton_config *load(const char *text)
{
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;
	char *path = NULL;
	int fd;

	assert_true(asprintf(&path, "%s/baton-diff-test-XXXXXX", tmpdir()) > 0);
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	if (config_load(path, &cfg, &pr) != 0)
		fail_msg("%s", pr.n ? pr.msgs[0] : "?");
	config_problems_clear(&pr);
	unlink(path);
	free(path);
	return cfg;
}

#define BASE "[listen]\nirc = 127.0.0.1:6667\n[network n]\nhost = 127.0.0.1\n" \
	     "bind = 127.0.0.1\n[network m]\nhost = 127.0.0.2\n"

static bool has(const struct config_diff *d, enum config_change_kind kind,
		const char *section, const char *key)
{
	for (size_t i = 0; i < d->n; i++)
		if (d->v[i].kind == kind && strcmp(d->v[i].section, section) == 0 &&
		    (key == NULL ? d->v[i].key == NULL
				 : d->v[i].key && strcmp(d->v[i].key, key) == 0))
			return true;
	return false;
}

static void test_diff(void **state)
{
	struct baton_config *a = load(BASE
		"[user a]\npassword = $6$s$h\n[user a/n]\nchannels = #x #y\n"
		"[user b]\npassword = $6$s$h\n[user b/n]\n");
	struct baton_config *b = load("\n; moved lines are no change\n" BASE
		"[user a]\npassword = $6$s$i\n[user a/n]\nchannels = #x #z\nnick = aa\n"
		"[user c]\npassword = $6$s$h\n[user c/m]\n");
	struct config_diff d = { 0 };

	(void)state;
	assert_int_equal(config_diff(a, a, &d), 0);
	assert_int_equal(d.n, 0);
	assert_int_equal(config_diff(a, b, &d), 0);
	assert_true(has(&d, CONFIG_CHANGE_CHANGED, "user a", "password"));
	assert_true(has(&d, CONFIG_CHANGE_CHANGED, "user a/n", "channels"));
	assert_true(has(&d, CONFIG_CHANGE_CHANGED, "user a/n", "nick"));
	assert_true(has(&d, CONFIG_CHANGE_REMOVED, "user b", NULL));
	assert_true(has(&d, CONFIG_CHANGE_REMOVED, "user b/n", NULL));
	assert_true(has(&d, CONFIG_CHANGE_ADDED, "user c", NULL));
	assert_true(has(&d, CONFIG_CHANGE_ADDED, "user c/m", NULL));
	/* username and realname default to the nick: they changed too */
	assert_true(has(&d, CONFIG_CHANGE_CHANGED, "user a/n", "username"));
	assert_true(has(&d, CONFIG_CHANGE_CHANGED, "user a/n", "realname"));
	assert_int_equal(d.n, 9);
	config_diff_clear(&d);
	config_free(b);

	b = load("[supervisor]\nhandoff_timeout = 3\n[listen]\nirc = 127.0.0.1:6668\n"
		 "[network n]\nhost = 127.0.0.1\nbind = 127.0.0.1 127.0.0.2\n"
		 "[user a]\npassword = $6$s$h\n[user a/n]\nchannels = #x #y\n"
		 "[user b]\npassword = $6$s$h\n[user b/n]\n");
	assert_int_equal(config_diff(a, b, &d), 0);
	assert_true(has(&d, CONFIG_CHANGE_CHANGED, "supervisor", "handoff_timeout"));
	assert_true(has(&d, CONFIG_CHANGE_CHANGED, "listen", "irc"));
	assert_true(has(&d, CONFIG_CHANGE_CHANGED, "network n", "bind"));
	assert_true(has(&d, CONFIG_CHANGE_REMOVED, "network m", NULL));
	assert_int_equal(d.n, 4);
	config_diff_clear(&d);

	/* keep_running: b takes a's global and network values (swapped), its
	 * users and sessions stay its own; both free cleanly */
	{
		struct baton_config *a2 = load(BASE
			"[user a]\npassword = $6$s$h\n[user a/n]\nchannels = #x #y\n"
			"[user b]\npassword = $6$s$h\n[user b/n]\n");

		assert_int_equal(config_diff_keep_running(b, a2, NULL), 0);
		config_free(a2);
	}
	assert_int_equal(config_diff(a, b, &d), 0);
	assert_true(has(&d, CONFIG_CHANGE_REMOVED, "network m", NULL));
	assert_int_equal(d.n, 1);
	assert_int_equal(b->handoff_timeout_s, a->handoff_timeout_s);
	assert_int_equal(b->nlistens, 1);
	assert_string_equal(b->listens[0].port, "6667");
	config_diff_clear(&d);
	config_free(a);
	config_free(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_diff),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
