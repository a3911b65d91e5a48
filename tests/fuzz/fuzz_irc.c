/* tests/fuzz/fuzz_irc.c: libFuzzer target for sessiond/irc.c and
 * sessiond/backlog.c.
 *
 * The whole input is parsed as one line (it is NUL-terminated first; bytes
 * after an embedded NUL are invisible to the parser, as they would be to a
 * caller). Then the input is split on '\n' and every piece is parsed and
 * appended to a small backlog (buffer = first parameter, so rings fill, wrap
 * and are keyed case-insensitively), which is replayed, counted and copied
 * through restore. Invariants the contracts promise are checked with abort().
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sessiond/backlog.h"
#include "sessiond/irc.h"

#define CHECK(x) do { if (!(x)) abort(); } while (0)

static int in_range(const char *p, const char *buf, size_t size)
{
	return p >= buf && p <= buf + size;
}

static void check_msg(const struct irc_msg *m, const char *buf, size_t size)
{
	size_t i;

	CHECK(m->command && m->command[0] != '\0' && m->command[0] != ':');
	CHECK(in_range(m->command, buf, size));
	CHECK(!strchr(m->command, ' '));
	CHECK(m->nparams <= IRC_MAX_PARAMS);
	if (m->tags)
		CHECK(in_range(m->tags, buf, size) && !strchr(m->tags, ' '));
	if (m->prefix)
		CHECK(in_range(m->prefix, buf, size) && !strchr(m->prefix, ' '));
	for (i = 0; i < m->nparams; i++) {
		CHECK(m->params[i] && in_range(m->params[i], buf, size));
		/* Only the last parameter may be empty or contain spaces. */
		if (i + 1 < m->nparams)
			CHECK(m->params[i][0] != '\0' &&
			      !strchr(m->params[i], ' '));
	}
}

static void exercise_helpers(const struct irc_msg *m)
{
	char nick[16], out[32], key[32], small[2];
	const char *t;
	size_t klen;

	irc_prefix_nick(m->prefix, nick, sizeof(nick));
	CHECK(strlen(nick) < sizeof(nick));
	CHECK(!strpbrk(nick, "!@"));
	irc_prefix_nick(m->prefix, small, sizeof(small));
	irc_prefix_nick(m->prefix, small, 0);

	irc_tag_get(m->tags, "time", out, sizeof(out));
	irc_tag_get(m->tags, "+draft/reply", small, sizeof(small));
	/* The first tag's key must be found. */
	t = m->tags;
	if (t) {
		klen = strcspn(t, "=;");
		if (klen > 0 && klen < sizeof(key)) {
			memcpy(key, t, klen);
			key[klen] = '\0';
			CHECK(irc_tag_get(t, key, out, sizeof(out)) == 1);
			CHECK(strlen(out) < sizeof(out));
			CHECK(irc_tag_get(t, key, NULL, 0) == 1);
		}
	}
	irc_is_channel(m->params[0]);
}

struct replay_check {
	uint64_t last;
	size_t n;
};

static int replay_visit(void *arg, uint64_t seq, int64_t time_ms,
			const char *buffer, const char *line)
{
	struct replay_check *c = arg;

	CHECK(seq > c->last);
	CHECK(buffer && line);
	c->last = seq;
	c->n++;
	return 0;
}

struct copy_ctx {
	const struct backlog *src;
	struct backlog *dst;
};

static int copy_line(void *arg, uint64_t seq, int64_t time_ms,
		     const char *buffer, const char *line)
{
	struct copy_ctx *c = arg;

	return backlog_restore(c->dst, buffer, seq, time_ms, line);
}

static int copy_buffer(void *arg, const char *buffer)
{
	struct copy_ctx *c = arg;

	return backlog_foreach_line(c->src, buffer, copy_line, c);
}

static void exercise_backlog(const char *data, size_t size)
{
	size_t max_lines = size > 0 ? (unsigned char)data[0] % 6 : 3;
	struct backlog *bl = backlog_new(max_lines), *copy = NULL;
	struct copy_ctx cc;
	struct replay_check rc;
	char *work = NULL, *line, *save = NULL;
	uint64_t pos, next, step;

	if (!bl)
		return;
	work = malloc(size + 1);
	if (!work)
		goto out;
	memcpy(work, data, size);
	work[size] = '\0';

	for (line = strtok_r(work, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		char *dup = strdup(line);
		struct irc_msg m;
		const char *buffer = "*";

		if (!dup)
			goto out;
		if (irc_parse(dup, &m) == 0 && m.nparams > 0)
			buffer = m.params[0];
		backlog_append(bl, buffer, (int64_t)strlen(line), line);
		free(dup);
	}

	/* At most ~64 positions per input, to keep executions fast. */
	next = backlog_next_seq(bl);
	step = next / 64 + 1;
	for (pos = 0; pos <= next; pos += step) {
		rc = (struct replay_check){ .last = pos };
		CHECK(backlog_replay(bl, pos, replay_visit, &rc) == 0);
		CHECK(rc.n == backlog_count_after(bl, pos));
	}

	copy = backlog_new(max_lines);
	if (!copy)
		goto out;
	cc = (struct copy_ctx){ .src = bl, .dst = copy };
	CHECK(backlog_foreach_buffer(bl, copy_buffer, &cc) == 0);
	backlog_set_next_seq(copy, next);
	CHECK(backlog_next_seq(copy) == next);
	for (pos = 0; pos <= next; pos += step)
		CHECK(backlog_count_after(copy, pos) ==
		      backlog_count_after(bl, pos));
out:
	free(work);
	backlog_free(copy);
	backlog_free(bl);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct irc_msg m;
	char *buf, *folded;
	size_t len;

	buf = malloc(size + 1);
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	buf[size] = '\0';
	len = strlen(buf);

	/* Casemapping on the raw text, before the parser cuts it. */
	folded = strdup(buf);
	if (folded) {
		irc_casefold(folded);
		CHECK(irc_casecmp(buf, folded) == 0);
		CHECK(irc_casecmp(folded, buf) == 0);
		free(folded);
	}
	irc_tag_get(buf, "a", NULL, 0);

	if (irc_parse(buf, &m) == 0) {
		check_msg(&m, buf, len);
		exercise_helpers(&m);
	} else {
		CHECK(m.command == NULL && m.nparams == 0);
	}
	free(buf);

	exercise_backlog((const char *)data, size);
	return 0;
}
