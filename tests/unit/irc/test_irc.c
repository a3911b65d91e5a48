/* tests/unit/irc/test_irc.c: cmocka tests of sessiond/irc.c (parser, prefix,
 * casemapping, channel names, IRCv3 tag values). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sessiond/irc.h"

/* Parse a copy of `s` kept in a static buffer, so the message's pointers stay
 * valid until the next call. */
static char line_buf[IRC_MAX_LINE + 64];

static int parse(const char *s, struct irc_msg *m)
{
	snprintf(line_buf, sizeof(line_buf), "%s", s);
	return irc_parse(line_buf, m);
}

static void test_parse_full(void **state)
{
	struct irc_msg m;

	assert_int_equal(parse("@time=2024-01-01T00:00:00.000Z;msgid=abc "
			       ":nick!user@host PRIVMSG #chan :hello there world",
			       &m), 0);
	assert_string_equal(m.tags, "time=2024-01-01T00:00:00.000Z;msgid=abc");
	assert_string_equal(m.prefix, "nick!user@host");
	assert_string_equal(m.command, "PRIVMSG");
	assert_int_equal(m.nparams, 2);
	assert_string_equal(m.params[0], "#chan");
	assert_string_equal(m.params[1], "hello there world");
}

static void test_parse_no_prefix_no_tags(void **state)
{
	struct irc_msg m;

	assert_int_equal(parse("PING :irc.example.net", &m), 0);
	assert_null(m.tags);
	assert_null(m.prefix);
	assert_string_equal(m.command, "PING");
	assert_int_equal(m.nparams, 1);
	assert_string_equal(m.params[0], "irc.example.net");
}

static void test_parse_tags_no_prefix(void **state)
{
	struct irc_msg m;

	assert_int_equal(parse("@a=1 JOIN #x", &m), 0);
	assert_string_equal(m.tags, "a=1");
	assert_null(m.prefix);
	assert_string_equal(m.command, "JOIN");
	assert_int_equal(m.nparams, 1);
	assert_string_equal(m.params[0], "#x");
}

static void test_parse_command_only(void **state)
{
	struct irc_msg m;

	assert_int_equal(parse("QUIT", &m), 0);
	assert_string_equal(m.command, "QUIT");
	assert_int_equal(m.nparams, 0);

	/* The command is kept as sent, not upper-cased. */
	assert_int_equal(parse(":srv quit", &m), 0);
	assert_string_equal(m.command, "quit");
}

static void test_parse_trailing(void **state)
{
	struct irc_msg m;

	/* A trailing parameter keeps inner, leading and trailing spaces and a
	 * leading ':' of its own. */
	assert_int_equal(parse("PRIVMSG #c :  a  b ::c  ", &m), 0);
	assert_int_equal(m.nparams, 2);
	assert_string_equal(m.params[1], "  a  b ::c  ");

	/* An empty trailing parameter is a parameter. */
	assert_int_equal(parse("TOPIC #c :", &m), 0);
	assert_int_equal(m.nparams, 2);
	assert_string_equal(m.params[0], "#c");
	assert_string_equal(m.params[1], "");

	/* A ':' inside a middle parameter is not a trailing marker. */
	assert_int_equal(parse("MODE #c +k a:b", &m), 0);
	assert_int_equal(m.nparams, 3);
	assert_string_equal(m.params[2], "a:b");

	/* A trailing parameter right after the command. */
	assert_int_equal(parse("AWAY :gone fishing", &m), 0);
	assert_int_equal(m.nparams, 1);
	assert_string_equal(m.params[0], "gone fishing");
}

static void test_parse_spaces(void **state)
{
	struct irc_msg m;

	/* Runs of spaces separate; leading/trailing spaces of the line go. */
	assert_int_equal(parse("  :srv    001   me    :Welcome  home", &m), 0);
	assert_string_equal(m.prefix, "srv");
	assert_string_equal(m.command, "001");
	assert_int_equal(m.nparams, 2);
	assert_string_equal(m.params[0], "me");
	assert_string_equal(m.params[1], "Welcome  home");

	assert_int_equal(parse("JOIN #a   ", &m), 0);
	assert_int_equal(m.nparams, 1);
	assert_string_equal(m.params[0], "#a");
}

static void test_parse_numeric(void **state)
{
	struct irc_msg m;

	assert_int_equal(parse(":irc.example.net 353 me = #c :@op +voice plain",
			       &m), 0);
	assert_string_equal(m.prefix, "irc.example.net");
	assert_string_equal(m.command, "353");
	assert_int_equal(m.nparams, 4);
	assert_string_equal(m.params[0], "me");
	assert_string_equal(m.params[1], "=");
	assert_string_equal(m.params[2], "#c");
	assert_string_equal(m.params[3], "@op +voice plain");
}

static void test_parse_15_params(void **state)
{
	struct irc_msg m;
	char want[8];
	size_t i;

	assert_int_equal(parse("CMD 1 2 3 4 5 6 7 8 9 10 11 12 13 14 :fifteen x",
			       &m), 0);
	assert_int_equal(m.nparams, IRC_MAX_PARAMS);
	for (i = 0; i < 14; i++) {
		snprintf(want, sizeof(want), "%zu", i + 1);
		assert_string_equal(m.params[i], want);
	}
	assert_string_equal(m.params[14], "fifteen x");

	/* 15 middle parameters, no ':' */
	assert_int_equal(parse("CMD 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15", &m), 0);
	assert_int_equal(m.nparams, IRC_MAX_PARAMS);
	assert_string_equal(m.params[14], "15");
}

/* Documented behaviour (irc.c, after RFC 2812 2.3.1): once 14 parameters are
 * collected, the rest of the line is the 15th, verbatim. Not an error, and
 * nothing is silently dropped. */
static void test_parse_too_many_params(void **state)
{
	struct irc_msg m;

	assert_int_equal(parse("CMD 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16  17 :t u",
			       &m), 0);
	assert_int_equal(m.nparams, IRC_MAX_PARAMS);
	assert_string_equal(m.params[13], "14");
	assert_string_equal(m.params[14], "15 16  17 :t u");
}

static void test_parse_rejects(void **state)
{
	struct irc_msg m;

	assert_int_equal(parse("", &m), -EINVAL);
	assert_int_equal(parse("     ", &m), -EINVAL);
	assert_int_equal(parse("\r\n", &m), -EINVAL);
	assert_int_equal(parse(":prefix-only", &m), -EINVAL);
	assert_int_equal(parse(":prefix   ", &m), -EINVAL);
	assert_int_equal(parse("@tags-only", &m), -EINVAL);
	assert_int_equal(parse("@a=b :prefix", &m), -EINVAL);
	assert_int_equal(parse("@a=b   ", &m), -EINVAL);
	assert_int_equal(parse(":srv :trailing-but-no-command", &m), -EINVAL);
	assert_int_equal(parse(":trailing-only-is-a-prefix", &m), -EINVAL);
	/* A rejected message has no dangling pointers. */
	assert_null(m.command);
	assert_null(m.prefix);
	assert_int_equal(m.nparams, 0);

	assert_int_equal(irc_parse(NULL, &m), -EINVAL);
	assert_int_equal(irc_parse(line_buf, NULL), -EINVAL);
}

static void test_parse_crlf(void **state)
{
	struct irc_msg m;

	assert_int_equal(parse("PING :x\r\n", &m), 0);
	assert_string_equal(m.params[0], "x");
	assert_int_equal(parse("PING x\n", &m), 0);
	assert_string_equal(m.params[0], "x");
	assert_int_equal(parse("PING x\r", &m), 0);
	assert_string_equal(m.params[0], "x");
	assert_int_equal(parse("PING :x\r\n\r\n", &m), 0);
	assert_string_equal(m.params[0], "x");
	assert_int_equal(parse("QUIT\r\n", &m), 0);
	assert_string_equal(m.command, "QUIT");
	assert_int_equal(m.nparams, 0);
	/* An empty trailing survives the strip. */
	assert_int_equal(parse("TOPIC #c :\r\n", &m), 0);
	assert_int_equal(m.nparams, 2);
	assert_string_equal(m.params[1], "");
}

static void test_parse_overlong(void **state)
{
	static char line[IRC_MAX_LINE + 4];
	struct irc_msg m;

	/* Exactly IRC_MAX_LINE is accepted, CRLF not counted. */
	memcpy(line, "PRIVMSG #c :", 12);
	memset(line + 12, 'x', IRC_MAX_LINE - 12);
	memcpy(line + IRC_MAX_LINE, "\r\n", 3);
	assert_int_equal(irc_parse(line, &m), 0);
	assert_int_equal(strlen(m.params[1]), IRC_MAX_LINE - 12);

	/* One more is rejected, and the line is left untouched. (The parse
	 * above cut the line with NULs: rebuild it whole.) */
	memcpy(line, "PRIVMSG #c :", 12);
	memset(line + 12, 'x', IRC_MAX_LINE - 11);
	memcpy(line + IRC_MAX_LINE + 1, "\r\n", 3);
	assert_int_equal(irc_parse(line, &m), -EINVAL);
	assert_int_equal(strlen(line), IRC_MAX_LINE + 3);
	assert_memory_equal(line, "PRIVMSG #c :", 12);
}

static void test_prefix_nick(void **state)
{
	char nick[8];

	irc_prefix_nick("alice!a@host", nick, sizeof(nick));
	assert_string_equal(nick, "alice");
	irc_prefix_nick("bob@host", nick, sizeof(nick));
	assert_string_equal(nick, "bob");
	irc_prefix_nick("irc.a.b", nick, sizeof(nick));
	assert_string_equal(nick, "irc.a.b");
	/* Truncation keeps a NUL. */
	irc_prefix_nick("verylongnick!u@h", nick, sizeof(nick));
	assert_string_equal(nick, "verylon");
	irc_prefix_nick("", nick, sizeof(nick));
	assert_string_equal(nick, "");
	irc_prefix_nick(NULL, nick, sizeof(nick));
	assert_string_equal(nick, "");
	/* n == 0 writes nothing. */
	nick[0] = 'Z';
	irc_prefix_nick("a!b@c", nick, 0);
	assert_int_equal(nick[0], 'Z');
}

static void test_casemapping(void **state)
{
	char s[] = "#Foo[Bar]\\Baz~^{}|";

	assert_int_equal(irc_casecmp("#Chan", "#chan"), 0);
	assert_int_equal(irc_casecmp("Nick[a]", "nick{A}"), 0);
	assert_int_equal(irc_casecmp("a\\b", "A|B"), 0);
	assert_int_equal(irc_casecmp("x~", "X^"), 0);
	assert_true(irc_casecmp("abc", "abd") < 0);
	assert_true(irc_casecmp("abd", "ABC") > 0);
	assert_true(irc_casecmp("ab", "abc") < 0);
	assert_true(irc_casecmp("abc", "ab") > 0);
	assert_int_equal(irc_casecmp("", ""), 0);
	/* Bytes >= 0x80 compare as unsigned and are not folded. */
	assert_true(irc_casecmp("\xc3\xa9", "\xc3\x89") != 0);
	assert_true(irc_casecmp("a", "\xc3") < 0);

	/* irc.h: {}|^ are the lower case of []\~ */
	irc_casefold(s);
	assert_string_equal(s, "#foo{bar}|baz^^{}|");
	irc_casefold(NULL);
}

static void test_is_channel(void **state)
{
	assert_true(irc_is_channel("#c"));
	assert_true(irc_is_channel("&local"));
	assert_true(irc_is_channel("+modeless"));
	assert_true(irc_is_channel("!ABCDEsafe"));
	assert_true(irc_is_channel("#"));
	assert_false(irc_is_channel("nick"));
	assert_false(irc_is_channel(""));
	assert_false(irc_is_channel(NULL));
}

static void test_tag_get(void **state)
{
	const char *tags = "time=2024-01-01T00:00:00Z;+draft/reply=x1;flag;"
			   "empty=;example.com/k=v;esc=a\\:b\\sc\\\\d\\re\\nf;"
			   "unk=\\q\\;trail=x\\";
	char out[64];

	assert_int_equal(irc_tag_get(tags, "time", out, sizeof(out)), 1);
	assert_string_equal(out, "2024-01-01T00:00:00Z");
	assert_int_equal(irc_tag_get(tags, "+draft/reply", out, sizeof(out)), 1);
	assert_string_equal(out, "x1");
	assert_int_equal(irc_tag_get(tags, "example.com/k", out, sizeof(out)), 1);
	assert_string_equal(out, "v");

	/* Missing and empty values are both "". */
	strcpy(out, "junk");
	assert_int_equal(irc_tag_get(tags, "flag", out, sizeof(out)), 1);
	assert_string_equal(out, "");
	strcpy(out, "junk");
	assert_int_equal(irc_tag_get(tags, "empty", out, sizeof(out)), 1);
	assert_string_equal(out, "");

	/* Escapes: \: ; \s space \\ \ \r CR \n LF; unknown \q -> q; a
	 * trailing lone backslash is dropped. */
	assert_int_equal(irc_tag_get(tags, "esc", out, sizeof(out)), 1);
	assert_string_equal(out, "a;b c\\d\re\nf");
	assert_int_equal(irc_tag_get(tags, "unk", out, sizeof(out)), 1);
	assert_string_equal(out, "q");
	assert_int_equal(irc_tag_get(tags, "trail", out, sizeof(out)), 1);
	assert_string_equal(out, "x");

	/* Absent keys, prefixes of keys, keys with other case. */
	assert_int_equal(irc_tag_get(tags, "tim", out, sizeof(out)), 0);
	assert_int_equal(irc_tag_get(tags, "TIME", out, sizeof(out)), 0);
	assert_int_equal(irc_tag_get(tags, "draft/reply", out, sizeof(out)), 0);
	assert_int_equal(irc_tag_get(tags, "", out, sizeof(out)), 0);
	assert_int_equal(irc_tag_get(NULL, "time", out, sizeof(out)), 0);
	assert_int_equal(irc_tag_get("", "time", out, sizeof(out)), 0);
	assert_int_equal(irc_tag_get(";;", "time", out, sizeof(out)), 0);

	/* The last of repeated keys wins. */
	assert_int_equal(irc_tag_get("a=1;a=2", "a", out, sizeof(out)), 1);
	assert_string_equal(out, "2");
}

static void test_tag_get_truncates(void **state)
{
	char out[4];

	assert_int_equal(irc_tag_get("k=abcdef", "k", out, sizeof(out)), 1);
	assert_string_equal(out, "abc");
	assert_int_equal(irc_tag_get("k=\\s\\s\\s\\s", "k", out, sizeof(out)), 1);
	assert_string_equal(out, "   ");
	/* n == 0: presence only, nothing written. */
	out[0] = 'Z';
	assert_int_equal(irc_tag_get("k=abc", "k", out, 0), 1);
	assert_int_equal(out[0], 'Z');
	assert_int_equal(irc_tag_get("k=abc", "k", NULL, 0), 1);
}

/* Tags from a parsed line are raw; irc_tag_get unescapes them. */
static void test_tag_get_from_parse(void **state)
{
	struct irc_msg m;
	char out[32];

	assert_int_equal(parse("@label=a\\sb;batch=1 :n!u@h PRIVMSG #c :hi", &m), 0);
	assert_int_equal(irc_tag_get(m.tags, "label", out, sizeof(out)), 1);
	assert_string_equal(out, "a b");
	assert_int_equal(irc_tag_get(m.tags, "batch", out, sizeof(out)), 1);
	assert_string_equal(out, "1");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_full),
		cmocka_unit_test(test_parse_no_prefix_no_tags),
		cmocka_unit_test(test_parse_tags_no_prefix),
		cmocka_unit_test(test_parse_command_only),
		cmocka_unit_test(test_parse_trailing),
		cmocka_unit_test(test_parse_spaces),
		cmocka_unit_test(test_parse_numeric),
		cmocka_unit_test(test_parse_15_params),
		cmocka_unit_test(test_parse_too_many_params),
		cmocka_unit_test(test_parse_rejects),
		cmocka_unit_test(test_parse_crlf),
		cmocka_unit_test(test_parse_overlong),
		cmocka_unit_test(test_prefix_nick),
		cmocka_unit_test(test_casemapping),
		cmocka_unit_test(test_is_channel),
		cmocka_unit_test(test_tag_get),
		cmocka_unit_test(test_tag_get_truncates),
		cmocka_unit_test(test_tag_get_from_parse),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
