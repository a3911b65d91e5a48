/* Unit tests of common/config_edit.c: an edit keeps comments, layout and
 * line endings of what it does not change; keys replaced in place, new
 * ones after the section's last key, new sections at the end; repeated
 * keys; the line bound is config_load()'s exactly; a failed edit changes
 * nothing; the file written atomically is what config_load() reads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <errno.h>
#include <cmocka.h>

#include "common/config.h"
#include "common/config_edit.h"

static const char *tmpdir(void)
{
	const char *t = getenv("TMPDIR");
	return t && t[0] ? t : "/tmp";
}

static struct config_edit *parse(const char *text)
{
	char err[200];
	struct config_edit *e = config_edit_parse(text, strlen(text), err, sizeof(err));

	if (e == NULL)
		fail_msg("parse: %s", err);
	return e;
}

static void assert_text(const struct config_edit *e, const char *want)
{
	size_t len;
	char *got = config_edit_text(e, &len);

	assert_non_null(got);
	assert_string_equal(got, want);
	assert_int_equal(len, strlen(want));
	free(got);
}

static const char sample[] =
	"; baton.ini\n"
	"\n"
	"[network libera]\n"
	"host = irc.libera.chat\n"
	"bind = 10.0.0.1\n"
	"bind = 10.0.0.2\n"
	"; governor\n"
	"  max_connections_per_ip = 3   ; per address\n"
	"\n"
	"; alice: the admin\n"
	"[user alice]\n"
	"password = $6$x$y\n"
	"\n"
	"; alice's session on libera\n"
	"[user alice/libera]\n"
	"nick = alice\n"
	"channels = #a #b\n";

/* An unchanged file comes back byte for byte. */
static void test_roundtrip(void **state)
{
	struct config_edit *e = parse(sample);

	(void)state;
	assert_text(e, sample);
	config_edit_free(e);
	e = parse("a = 1\r\n[x]\r\nb = 2");
	assert_text(e, "a = 1\r\n[x]\r\nb = 2");
	config_edit_free(e);
	e = parse("");
	assert_text(e, "");
	config_edit_free(e);
}

/* A key replaced in place keeps indentation and its inline comment. */
static void test_set_in_place(void **state)
{
	struct config_edit *e = parse(sample);
	char *v;

	(void)state;
	assert_int_equal(config_edit_set(e, "network libera", "max_connections_per_ip", "10"), 0);
	assert_int_equal(config_edit_set(e, "user  alice/libera", "channels", "#a #c"), 0);
	assert_text(e,
		    "; baton.ini\n"
		    "\n"
		    "[network libera]\n"
		    "host = irc.libera.chat\n"
		    "bind = 10.0.0.1\n"
		    "bind = 10.0.0.2\n"
		    "; governor\n"
		    "  max_connections_per_ip = 10   ; per address\n"
		    "\n"
		    "; alice: the admin\n"
		    "[user alice]\n"
		    "password = $6$x$y\n"
		    "\n"
		    "; alice's session on libera\n"
		    "[user alice/libera]\n"
		    "nick = alice\n"
		    "channels = #a #c\n");
	v = config_edit_get(e, "network libera", "max_connections_per_ip");
	assert_string_equal(v, "10");
	free(v);
	assert_null(config_edit_get(e, "network libera", "nope"));
	assert_int_equal(errno, ENOENT);
	config_edit_free(e);
}

/* A new key goes after the section's last key, before the comment that
 * introduces the next section. */
static void test_add_key(void **state)
{
	struct config_edit *e = parse(sample);

	(void)state;
	assert_int_equal(config_edit_set(e, "user alice", "realname", "Alice"), 0);
	assert_text(e,
		    "; baton.ini\n"
		    "\n"
		    "[network libera]\n"
		    "host = irc.libera.chat\n"
		    "bind = 10.0.0.1\n"
		    "bind = 10.0.0.2\n"
		    "; governor\n"
		    "  max_connections_per_ip = 3   ; per address\n"
		    "\n"
		    "; alice: the admin\n"
		    "[user alice]\n"
		    "password = $6$x$y\n"
		    "realname = Alice\n"
		    "\n"
		    "; alice's session on libera\n"
		    "[user alice/libera]\n"
		    "nick = alice\n"
		    "channels = #a #b\n");
	config_edit_free(e);
}

/* bind repeats: _add appends after the last one, _set leaves one, _unset
 * removes all. */
static void test_repeated_key(void **state)
{
	struct config_edit *e = parse(sample);
	size_t len;
	char *t;

	(void)state;
	assert_int_equal(config_edit_add(e, "network libera", "bind", "10.0.0.3"), 0);
	t = config_edit_text(e, &len);
	assert_non_null(strstr(t, "bind = 10.0.0.1\nbind = 10.0.0.2\nbind = 10.0.0.3\n; governor\n"));
	free(t);
	assert_int_equal(config_edit_set(e, "network libera", "bind", "10.0.0.9"), 0);
	t = config_edit_text(e, &len);
	assert_non_null(strstr(t, "host = irc.libera.chat\nbind = 10.0.0.9\n; governor\n"));
	assert_null(strstr(t, "10.0.0.1"));
	free(t);
	assert_int_equal(config_edit_unset(e, "network libera", "bind"), 0);
	assert_int_equal(config_edit_unset(e, "network libera", "bind"), -ENOENT);
	t = config_edit_text(e, &len);
	assert_null(strstr(t, "bind"));
	free(t);
	config_edit_free(e);
}

/* New sections go at the end after one blank line; a deleted section takes
 * its comment block and leaves no doubled blank line. */
static void test_sections(void **state)
{
	struct config_edit *e = parse(sample);

	(void)state;
	assert_int_equal(config_edit_add_section(e, "user alice"), -EEXIST);
	assert_int_equal(config_edit_set(e, "user bob", "password", "$6$b$c"), 0);
	assert_int_equal(config_edit_del_section(e, "user alice"), 0);
	assert_int_equal(config_edit_del_section(e, "user alice"), -ENOENT);
	assert_int_equal(config_edit_del_section(e, "user alice/libera"), 0);
	assert_text(e,
		    "; baton.ini\n"
		    "\n"
		    "[network libera]\n"
		    "host = irc.libera.chat\n"
		    "bind = 10.0.0.1\n"
		    "bind = 10.0.0.2\n"
		    "; governor\n"
		    "  max_connections_per_ip = 3   ; per address\n"
		    "\n"
		    "[user bob]\n"
		    "password = $6$b$c\n");
	assert_true(config_edit_has_section(e, "user bob"));
	assert_int_equal(config_edit_del_section(e, "user bob"), 0);
	assert_text(e,
		    "; baton.ini\n"
		    "\n"
		    "[network libera]\n"
		    "host = irc.libera.chat\n"
		    "bind = 10.0.0.1\n"
		    "bind = 10.0.0.2\n"
		    "; governor\n"
		    "  max_connections_per_ip = 3   ; per address\n");
	config_edit_free(e);
}

/* Bug (fuzz_config_edit): a file repeating a section kept the second one
 * after del_section. Every one of that name goes. */
static void test_del_repeated_section(void **state)
{
	struct config_edit *e = parse("[user a]\nx = 1\n[user b]\ny = 2\n[user a]\nz = 3\n");

	(void)state;
	assert_int_equal(config_edit_del_section(e, "user a"), 0);
	assert_false(config_edit_has_section(e, "user a"));
	assert_text(e, "[user b]\ny = 2\n");
	config_edit_free(e);
}

/* A CRLF file stays CRLF; a file without a final newline keeps none until
 * a line is added at its end. */
static void test_crlf_and_final_newline(void **state)
{
	struct config_edit *e = parse("[user a]\r\npassword = x\r\n");

	(void)state;
	assert_int_equal(config_edit_set(e, "user a", "password", "y"), 0);
	assert_int_equal(config_edit_set(e, "user b", "password", "z"), 0);
	assert_text(e, "[user a]\r\npassword = y\r\n\r\n[user b]\r\npassword = z\r\n");
	config_edit_free(e);

	e = parse("[user a]\npassword = x");
	assert_int_equal(config_edit_set(e, "user a", "password", "y"), 0);
	assert_text(e, "[user a]\npassword = y");
	assert_int_equal(config_edit_set(e, "user a", "realname", "A"), 0);
	assert_text(e, "[user a]\npassword = y\nrealname = A\n");
	config_edit_free(e);

	e = parse("[x]\nk = v");
	assert_int_equal(config_edit_add_section(e, "y"), 0);
	assert_text(e, "[x]\nk = v\n\n[y]\n");
	config_edit_free(e);
}

/* What INI cannot hold as given is refused, and nothing changes. */
static void test_refused(void **state)
{
	struct config_edit *e = parse(sample);

	(void)state;
	assert_int_equal(config_edit_set(e, "user alice", "realname", "a\nb"), -EINVAL);
	assert_int_equal(config_edit_set(e, "user alice", "realname", "a ;b"), -EINVAL);
	assert_int_equal(config_edit_set(e, "user alice", "realname", ";b"), -EINVAL);
	assert_int_equal(config_edit_set(e, "user alice", "realname", " a"), -EINVAL);
	assert_int_equal(config_edit_set(e, "user alice", "real=name", "a"), -EINVAL);
	assert_int_equal(config_edit_set(e, "user alice", "", "a"), -EINVAL);
	assert_int_equal(config_edit_set(e, "user al]ice", "realname", "a"), -EINVAL);
	assert_int_equal(config_edit_add_section(e, "user x\ny"), -EINVAL);
	/* a ";" inside a word is a value, not a comment (inih) */
	assert_int_equal(config_edit_set(e, "user alice", "realname", "a;b"), 0);
	assert_int_equal(config_edit_unset(e, "user alice", "realname"), 0);
	assert_text(e, sample);
	config_edit_free(e);
}

static char *write_file(const char *text)
{
	char *path = NULL;
	int fd;

	assert_true(asprintf(&path, "%s/baton-edit-test-XXXXXX", tmpdir()) > 0);
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	return path;
}

/* Does config_load() complain about an overlong line in this file? */
static bool loader_says_too_long(const char *text)
{
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;
	char *path = write_file(text);
	bool too_long = false;

	config_load(path, &cfg, &pr);
	for (size_t i = 0; i < pr.n; i++)
		if (strstr(pr.msgs[i], "longer than") != NULL)
			too_long = true;
	config_free(cfg);
	config_problems_clear(&pr);
	unlink(path);
	free(path);
	return too_long;
}

/* The bound is the loader's: a line of CONFIG_EDIT_MAX_LINE bytes is read
 * whole by config_load() and accepted here; one more is refused by both
 * (parse and edit), also as the file's last line without a newline. */
static void test_line_bound(void **state)
{
	char line[CONFIG_EDIT_MAX_LINE + 2], text[600], err[200];
	/* "realname = " + x... */
	size_t klen = strlen("realname = ");
	struct config_edit *e;

	(void)state;
	memset(line, 'x', sizeof(line));
	line[CONFIG_EDIT_MAX_LINE - klen] = '\0';
	snprintf(text, sizeof(text), "[user a]\nrealname = %s\n", line);
	assert_false(loader_says_too_long(text));
	e = config_edit_parse(text, strlen(text), err, sizeof(err));
	assert_non_null(e);
	config_edit_free(e);
	snprintf(text, sizeof(text), "[user a]\nrealname = %s", line);
	assert_false(loader_says_too_long(text));

	line[CONFIG_EDIT_MAX_LINE - klen] = 'x';
	line[CONFIG_EDIT_MAX_LINE - klen + 1] = '\0';
	snprintf(text, sizeof(text), "[user a]\nrealname = %s\n", line);
	assert_true(loader_says_too_long(text));
	assert_null(config_edit_parse(text, strlen(text), err, sizeof(err)));
	assert_non_null(strstr(err, "line 2"));
	snprintf(text, sizeof(text), "[user a]\nrealname = %s", line);
	assert_true(loader_says_too_long(text));
	assert_null(config_edit_parse(text, strlen(text), err, sizeof(err)));

	/* edits: at the bound accepted, past it refused, nothing changed */
	e = parse("[user a]\n");
	line[CONFIG_EDIT_MAX_LINE - klen] = '\0';
	assert_int_equal(config_edit_set(e, "user a", "realname", line), 0);
	line[CONFIG_EDIT_MAX_LINE - klen] = 'x';
	assert_int_equal(config_edit_set(e, "user a", "realname", line), -E2BIG);
	assert_int_equal(config_edit_set(e, "user b", "realname", line), -E2BIG);
	assert_false(config_edit_has_section(e, "user b"));
	config_edit_free(e);
	/* CRLF: the "\r" counts */
	e = parse("[user a]\r\n");
	line[CONFIG_EDIT_MAX_LINE - klen] = '\0';
	assert_int_equal(config_edit_set(e, "user a", "realname", line), -E2BIG);
	config_edit_free(e);
	/* a NUL byte */
	assert_null(config_edit_parse("a\0b", 3, err, sizeof(err)));
}

/* write + install: the file is replaced whole, keeps its mode, and
 * config_load() reads the edit. */
static void test_write_install(void **state)
{
	static const char base[] =
		"[supervisor]\ncontrol = x.sock ; here\n[listen]\nirc = 127.0.0.1:6667\n[network n]\nhost = 127.0.0.1\n"
		"[user a]\npassword = $6$s$h\n[user a/n]\nnick = a\n";
	char *path = write_file(base), *tmp = NULL, err[200];
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;
	struct config_edit *e;
	struct stat st;
	int lock;

	(void)state;
	assert_int_equal(chmod(path, 0640), 0);
	lock = config_edit_lock(path);
	assert_true(lock >= 0);
	e = config_edit_read(path, err, sizeof(err));
	assert_non_null(e);
	assert_int_equal(config_edit_set(e, "user b", "password", "$6$t$i"), 0);
	assert_int_equal(config_edit_set(e, "user b/n", "nick", "b"), 0);
	assert_int_equal(config_edit_write(e, path, &tmp), 0);
	assert_int_equal(stat(tmp, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0640);
	if (config_load(tmp, &cfg, &pr) != 0)
		fail_msg("%s", pr.n ? pr.msgs[0] : "?");
	assert_int_equal(cfg->nsessions, 2);
	config_free(cfg);
	assert_int_equal(config_edit_install(tmp, path), 0);
	assert_int_equal(access(tmp, F_OK), -1);
	assert_int_equal(config_load(path, &cfg, &pr), 0);
	assert_non_null(config_find_session(cfg, "b", "n"));
	config_free(cfg);
	config_edit_free(e);
	close(lock);
	unlink(path);
	free(path);
	free(tmp);
	assert_null(config_edit_read("/nonexistent/baton.ini", err, sizeof(err)));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip),
		cmocka_unit_test(test_set_in_place),
		cmocka_unit_test(test_add_key),
		cmocka_unit_test(test_repeated_key),
		cmocka_unit_test(test_sections),
		cmocka_unit_test(test_del_repeated_section),
		cmocka_unit_test(test_crlf_and_final_newline),
		cmocka_unit_test(test_refused),
		cmocka_unit_test(test_line_bound),
		cmocka_unit_test(test_write_install),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
