/* Unit tests of common/config.c: defaults, every problem reported with
 * FILE:LINE in one pass, overlong lines caught, relative paths. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <errno.h>
#include <cmocka.h>

#include "common/config.h"

static char *write_temp(const char *text)
{
	char *path = strdup("/tmp/baton-config-test-XXXXXX");
	int fd = mkstemp(path);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	return path;
}

static const char good[] =
	"[supervisor]\n"
	"control = baton.sock            ; control socket path\n"
	"handoff_timeout = 7\n"
	"[listen]\n"
	"irc = 127.0.0.1:6667\n"
	"irc = [::1]:6668\n"
	"[network libera]\n"
	"host = 127.0.0.1\n"
	"[user alice]\n"
	"password = $6$salt$hash\n"
	"[user alice/libera]\n"
	"nick = alice\n"
	"channels = #chat #ops\n";

static void test_good_config(void **state)
{
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;
	char *path = write_temp(good), *sock;

	assert_int_equal(config_load(path, &cfg, &pr), 0);
	assert_int_equal(pr.n, 0);
	assert_int_equal(cfg->handoff_timeout_s, 7);
	assert_int_equal(cfg->backlog_lines, 500); /* default */
	assert_int_equal(cfg->nlistens, 2);
	assert_string_equal(cfg->listens[1].host, "::1");
	assert_string_equal(cfg->listens[1].port, "6668");
	assert_string_equal(config_find_network(cfg, "libera")->port, "6667");
	const struct config_session *s = config_find_session(cfg, "alice", "libera");
	assert_non_null(s);
	assert_int_equal(s->nchannels, 2);
	assert_string_equal(s->channels[1], "#ops");
	assert_string_equal(s->username, "alice"); /* defaults to the nick */
	sock = config_resolve(cfg, cfg->control);
	assert_string_equal(sock, "/tmp/baton.sock");
	free(sock);
	config_free(cfg);
	unlink(path);
	free(path);
}

static int has_problem(const struct config_problems *pr, const char *needle)
{
	for (size_t i = 0; i < pr->n; i++)
		if (strstr(pr->msgs[i], needle) != NULL)
			return 1;
	return 0;
}

static void test_every_problem_with_line(void **state)
{
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;
	char *path = write_temp(
		"[supervisor]\n"
		"handoff_timeout = soon\n"       /* 2 */
		"colour = blue\n"                /* 3 */
		"[listen]\n"
		"irc = nowhere\n"                /* 5 */
		"[user bob]\n"                   /* 6: no password */
		"[user carol]\n"                 /* 7 */
		"password = hunter2\n"           /* not a hash */
		"[user bob/nonet]\n"             /* 9: unknown network */
		"nick = bob\n"
		"[frobnicate]\n"
		"x = 1\n");                      /* 12 */
	char where[64];

	assert_int_equal(config_load(path, &cfg, &pr), -EINVAL);
	assert_null(cfg);
	snprintf(where, sizeof(where), "%s:2:", path);
	assert_true(has_problem(&pr, where));
	snprintf(where, sizeof(where), "%s:3: unknown key 'colour'", path);
	assert_true(has_problem(&pr, where));
	snprintf(where, sizeof(where), "%s:5:", path);
	assert_true(has_problem(&pr, where));
	snprintf(where, sizeof(where), "%s:6: [user bob] has no password", path);
	assert_true(has_problem(&pr, where));
	snprintf(where, sizeof(where), "%s:7: [user carol] password must be a crypt(3) hash", path);
	assert_true(has_problem(&pr, where));
	assert_true(has_problem(&pr, "no [network nonet] section"));
	snprintf(where, sizeof(where), "%s:12: unknown section [frobnicate]", path);
	assert_true(has_problem(&pr, where));
	config_problems_clear(&pr);
	unlink(path);
	free(path);
}

static void test_overlong_line(void **state)
{
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;
	char text[1024] = "[listen]\nirc = 127.0.0.1:1\n[user a/n]\nchannels =";
	char *path;

	for (int i = 0; i < 60; i++)
		strcat(text, " #chan");
	strcat(text, "\n");
	path = write_temp(text);
	assert_int_equal(config_load(path, &cfg, &pr), -EINVAL);
	assert_true(has_problem(&pr, ":4: line longer than"));
	config_problems_clear(&pr);
	unlink(path);
	free(path);
}

/* Regression: a repeated section silently merged into the first, and extra
 * words in a section name ([user alice bob]) were ignored. */
static void test_duplicate_and_malformed_sections(void **state)
{
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;
	char *path = write_temp(
		"[listen]\nirc = 127.0.0.1:1\n"
		"[network n]\nhost = 127.0.0.1\n"   /* 3 */
		"[network n]\nport = 7000\n"        /* 5 */
		"[user alice bob]\n"                 /* 7 */
		"password = $6$x$y\n");
	char where[128];

	assert_int_equal(config_load(path, &cfg, &pr), -EINVAL);
	snprintf(where, sizeof(where), "%s:5: duplicate section [network n] (first at line 3)", path);
	assert_true(has_problem(&pr, where));
	snprintf(where, sizeof(where), "%s:7: section name [user alice bob]", path);
	assert_true(has_problem(&pr, where));
	config_problems_clear(&pr);
	unlink(path);
	free(path);
}

static void test_missing_file(void **state)
{
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;

	assert_int_equal(config_load("/nonexistent/baton.ini", &cfg, &pr), -EINVAL);
	assert_int_equal(pr.n, 1);
	assert_non_null(strstr(pr.msgs[0], "cannot open"));
	config_problems_clear(&pr);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_good_config),
		cmocka_unit_test(test_every_problem_with_line),
		cmocka_unit_test(test_overlong_line),
		cmocka_unit_test(test_duplicate_and_malformed_sections),
		cmocka_unit_test(test_missing_file),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
