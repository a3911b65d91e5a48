/* tests/unit/common/test_session_edit.c: common/session_edit.c, the one
 * edit of a session's section for batonctl and for a user's request
 * through the supervisor: applied in place (comments kept), refused on the
 * file's contents (*refused) or its arguments, never leaving a changed
 * file behind a refusal; and the operator's limit on users
 * ([supervisor] user_networks) with its bounds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <errno.h>
#include <cmocka.h>

#include "common/config.h"
#include "common/session_edit.h"

static const char base[] =
	"; the operator's file\n"
	"[listen]\n"
	"irc = 127.0.0.1:6667\n"
	"[network net]\n"
	"host = 127.0.0.1\n"
	"[network other]\n"
	"host = 127.0.0.1\n"
	"[user alice]\n"
	"password = $6$testsalt$51yaaBMXXXt5vK522YOlIMZ267vqHtMIzc2klcsu3EEv/bkRDU9g3UmkypXf.NvlpPpIPK1nX5zdbCeJBiQbB/\n"
	"; alice on net\n"
	"[user alice/net]\n"
	"nick = alice\n";

static char dir[256], path[300];

static void write_file(const char *extra)
{
	FILE *f;
	const char *t = getenv("TMPDIR");

	snprintf(dir, sizeof(dir), "%s/session_edit.XXXXXX", t && t[0] ? t : "/tmp");
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/baton.ini", dir);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(extra, f);
	fputs(base, f);
	fclose(f);
}

static char *read_file(void)
{
	FILE *f = fopen(path, "r");
	static char buf[8192];
	size_t n;

	assert_non_null(f);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

static void cleanup(void)
{
	unlink(path);
	assert_int_equal(rmdir(dir), 0); /* no temporary file left */
}

static struct baton_config *load(void)
{
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;

	assert_int_equal(config_load(path, &cfg, &pr), 0);
	config_problems_clear(&pr);
	return cfg;
}

/* add, set, del in place: the comments stay, the new section is loaded
 * as the file says. */
static void test_apply(void **state)
{
	char *pairs[] = { "nick=al2", "channels=#a #b" }, *unset[] = { "channels=" }, why[300];
	bool refused = true;

	write_file("");
	assert_int_equal(session_edit_apply(path, SESSION_EDIT_ADD, "alice", "other", pairs, 2,
					    NULL, &refused, why, sizeof(why)), 0);
	assert_false(refused);
	assert_non_null(strstr(read_file(), "; the operator's file\n"));
	assert_non_null(strstr(read_file(), "; alice on net\n[user alice/net]\n"));
	assert_non_null(strstr(read_file(), "[user alice/other]\nnick = al2\nchannels = #a #b\n"));
	assert_int_equal(session_edit_apply(path, SESSION_EDIT_SET, "alice", "other", unset, 1,
					    NULL, &refused, why, sizeof(why)), 0);
	assert_null(strstr(read_file(), "#a #b"));
	assert_int_equal(session_edit_apply(path, SESSION_EDIT_DEL, "alice", "other", NULL, 0,
					    NULL, &refused, why, sizeof(why)), 0);
	assert_null(strstr(read_file(), "alice/other"));
	cleanup();
}

/* Refusals leave the file as it was: the section there or not (refused:
 * the file's contents), an edit that makes the file invalid (refused,
 * with its problems naming the config, not the temporary file), a
 * password or a pair without '=' (the arguments: not "refused"). */
static void test_refusals(void **state)
{
	struct config_problems pr = { 0 };
	char *bad_net[] = { "nick=x" }, *pw[] = { "password=x" }, *noeq[] = { "nick" }, why[300];
	char before[8192];
	bool refused;

	write_file("");
	snprintf(before, sizeof(before), "%s", read_file());
	assert_int_equal(session_edit_apply(path, SESSION_EDIT_ADD, "alice", "net", NULL, 0,
					    NULL, &refused, why, sizeof(why)), -EEXIST);
	assert_true(refused);
	assert_int_equal(session_edit_apply(path, SESSION_EDIT_DEL, "alice", "nope", NULL, 0,
					    NULL, &refused, why, sizeof(why)), -ENOENT);
	assert_true(refused);
	/* a session on a network the file does not define */
	assert_int_equal(session_edit_apply(path, SESSION_EDIT_ADD, "alice", "nowhere", bad_net, 1,
					    &pr, &refused, why, sizeof(why)), -EINVAL);
	assert_true(refused);
	assert_true(pr.n > 0);
	assert_non_null(strstr(pr.msgs[0], path));
	config_problems_clear(&pr);
	assert_int_equal(session_edit_apply(path, SESSION_EDIT_SET, "alice", "net", pw, 1,
					    NULL, &refused, why, sizeof(why)), -EINVAL);
	assert_false(refused);
	assert_non_null(strstr(why, "no password"));
	assert_int_equal(session_edit_apply(path, SESSION_EDIT_SET, "alice", "net", noeq, 1,
					    NULL, &refused, why, sizeof(why)), -EINVAL);
	assert_false(refused);
	assert_int_equal(session_edit_apply(path, SESSION_EDIT_SET, "al/ice", "net", bad_net, 1,
					    NULL, &refused, why, sizeof(why)), -EINVAL);
	assert_string_equal(read_file(), before);
	cleanup();
}

/* user_networks: list refuses every edit, change allows set only, add
 * all; keys and counts bounded, at and past the bound; add only on a
 * [network] of the file; set/del only on the user's own sessions. */
static void test_user_check(void **state)
{
	char buf[200], *nick[] = { "nick=x" }, *pw[] = { "password=x" };
	char *eight[SESSION_EDIT_MAX_PAIRS + 1], long_pair[SESSION_EDIT_MAX_PAIR + 2];
	struct baton_config *cfg;

	write_file("[supervisor]\nuser_networks = list\n");
	cfg = load();
	assert_non_null(session_edit_user_check(cfg, SESSION_EDIT_SET, "alice", "net", nick, 1,
						buf, sizeof(buf)));
	config_free(cfg);
	cleanup();

	write_file("");
	cfg = load();
	assert_int_equal(cfg->user_networks, CONFIG_USER_NETWORKS_CHANGE);
	assert_null(session_edit_user_check(cfg, SESSION_EDIT_SET, "alice", "net", nick, 1,
					    buf, sizeof(buf)));
	assert_non_null(strstr(session_edit_user_check(cfg, SESSION_EDIT_ADD, "alice", "other",
						       nick, 1, buf, sizeof(buf)),
			       "user_networks = change"));
	assert_non_null(session_edit_user_check(cfg, SESSION_EDIT_DEL, "alice", "net", NULL, 0,
						buf, sizeof(buf)));
	assert_non_null(session_edit_user_check(cfg, SESSION_EDIT_SET, "bob", "net", nick, 1,
						buf, sizeof(buf)));
	config_free(cfg);
	cleanup();

	write_file("[supervisor]\nuser_networks = add\n");
	cfg = load();
	assert_null(session_edit_user_check(cfg, SESSION_EDIT_ADD, "alice", "other", nick, 1,
					    buf, sizeof(buf)));
	assert_non_null(strstr(session_edit_user_check(cfg, SESSION_EDIT_ADD, "alice", "nowhere",
						       nick, 1, buf, sizeof(buf)),
			       "no network 'nowhere'"));
	assert_non_null(session_edit_user_check(cfg, SESSION_EDIT_ADD, "alice", "net", nick, 1,
						buf, sizeof(buf)));
	assert_non_null(session_edit_user_check(cfg, SESSION_EDIT_DEL, "alice", "other", NULL, 0,
						buf, sizeof(buf)));
	assert_null(session_edit_user_check(cfg, SESSION_EDIT_DEL, "alice", "net", NULL, 0,
					    buf, sizeof(buf)));
	assert_non_null(strstr(session_edit_user_check(cfg, SESSION_EDIT_SET, "alice", "net", pw,
						       1, buf, sizeof(buf)),
			       "nick, username, realname and channels"));
	for (size_t i = 0; i <= SESSION_EDIT_MAX_PAIRS; i++)
		eight[i] = "nick=x";
	assert_null(session_edit_user_check(cfg, SESSION_EDIT_SET, "alice", "net", eight,
					    SESSION_EDIT_MAX_PAIRS, buf, sizeof(buf)));
	assert_non_null(session_edit_user_check(cfg, SESSION_EDIT_SET, "alice", "net", eight,
						SESSION_EDIT_MAX_PAIRS + 1, buf, sizeof(buf)));
	memset(long_pair, 'x', sizeof(long_pair));
	memcpy(long_pair, "realname=", 9);
	long_pair[SESSION_EDIT_MAX_PAIR] = '\0';
	eight[0] = long_pair;
	assert_null(session_edit_user_check(cfg, SESSION_EDIT_SET, "alice", "net", eight, 1,
					    buf, sizeof(buf)));
	long_pair[SESSION_EDIT_MAX_PAIR] = 'x';
	long_pair[SESSION_EDIT_MAX_PAIR + 1] = '\0';
	assert_non_null(session_edit_user_check(cfg, SESSION_EDIT_SET, "alice", "net", eight, 1,
						buf, sizeof(buf)));
	config_free(cfg);
	cleanup();

	write_file("[supervisor]\nuser_networks = everything\n");
	{
		struct config_problems pr = { 0 };
		struct baton_config *bad = NULL;

		assert_int_not_equal(config_load(path, &bad, &pr), 0);
		assert_non_null(strstr(pr.msgs[0], "expected list, change or add"));
		config_problems_clear(&pr);
	}
	cleanup();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_apply),
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_user_check),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
