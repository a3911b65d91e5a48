/* tests/unit/backlog/test_backlog.c: cmocka tests of sessiond/backlog.c. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sessiond/backlog.h"

/* What a visit saw, in order. */
struct seen_line {
	uint64_t seq;
	int64_t time_ms;
	char buffer[32];
	char line[64];
};

struct seen {
	struct seen_line l[4096];
	size_t n;
	size_t stop_after; /* stop (return 7) once this many were seen; 0: never */
};

static int record(void *arg, uint64_t seq, int64_t time_ms, const char *buffer,
		  const char *line)
{
	struct seen *s = arg;

	assert_true(s->n < sizeof(s->l) / sizeof(s->l[0]));
	s->l[s->n].seq = seq;
	s->l[s->n].time_ms = time_ms;
	snprintf(s->l[s->n].buffer, sizeof(s->l[s->n].buffer), "%s", buffer);
	snprintf(s->l[s->n].line, sizeof(s->l[s->n].line), "%s", line);
	s->n++;
	return s->stop_after && s->n == s->stop_after ? 7 : 0;
}

static struct seen *seen_new(void)
{
	struct seen *s = calloc(1, sizeof(*s));

	assert_non_null(s);
	return s;
}

static void test_seq_monotonic_across_buffers(void **state)
{
	struct backlog *bl = backlog_new(10);
	const char *bufs[] = { "#a", "#b", "nick", "#a", "#c", "#b" };
	uint64_t prev = 0, seq;
	size_t i;

	assert_non_null(bl);
	assert_int_equal(backlog_next_seq(bl), 1);
	for (i = 0; i < 6; i++) {
		seq = backlog_append(bl, bufs[i], (int64_t)i, "x");
		assert_int_equal(seq, prev + 1);
		prev = seq;
	}
	assert_int_equal(backlog_next_seq(bl), 7);
	backlog_free(bl);
}

static void test_ring_drops_oldest(void **state)
{
	struct backlog *bl = backlog_new(3);
	struct seen *s = seen_new();
	char line[16];
	int i;

	/* Enough lines to grow the ring, wrap it, and wrap it again. */
	for (i = 1; i <= 10; i++) {
		snprintf(line, sizeof(line), "l%d", i);
		assert_int_equal(backlog_append(bl, "#a", i * 1000, line), i);
	}
	assert_int_equal(backlog_count_after(bl, 0), 3);
	assert_int_equal(backlog_foreach_line(bl, "#a", record, s), 0);
	assert_int_equal(s->n, 3);
	for (i = 0; i < 3; i++) {
		snprintf(line, sizeof(line), "l%d", 8 + i);
		assert_int_equal(s->l[i].seq, 8 + i);
		assert_int_equal(s->l[i].time_ms, (8 + i) * 1000);
		assert_string_equal(s->l[i].line, line);
		assert_string_equal(s->l[i].buffer, "#a");
	}
	free(s);
	backlog_free(bl);
}

/* Each ring bounds only its own buffer. */
static void test_rings_are_per_buffer(void **state)
{
	struct backlog *bl = backlog_new(2);
	int i;

	for (i = 0; i < 5; i++)
		backlog_append(bl, "#busy", 0, "b");
	backlog_append(bl, "#quiet", 0, "q");
	assert_int_equal(backlog_count_after(bl, 0), 3);
	backlog_free(bl);
}

/* Interleaved appends to several buffers: line i (seq i) goes to names[i%3],
 * so buffers are created in the order #beta, carol, #alpha. */
static const char *names[] = { "#alpha", "#beta", "carol" };

static struct backlog *make_interleaved(size_t max_lines, int n)
{
	struct backlog *bl = backlog_new(max_lines);
	char line[32];
	int i;

	assert_non_null(bl);
	for (i = 1; i <= n; i++) {
		snprintf(line, sizeof(line), "line %d", i);
		assert_int_equal(backlog_append(bl, names[i % 3], i, line), i);
	}
	return bl;
}

static void test_replay_after_position(void **state)
{
	struct backlog *bl = make_interleaved(100, 30);
	struct seen *s = seen_new();
	uint64_t pos;
	size_t i;

	for (pos = 0; pos <= 31; pos++) {
		s->n = 0;
		assert_int_equal(backlog_replay(bl, pos, record, s), 0);
		assert_int_equal(s->n, pos >= 30 ? 0 : 30 - pos);
		assert_int_equal(backlog_count_after(bl, pos), s->n);
		for (i = 0; i < s->n; i++) {
			char want[32];

			snprintf(want, sizeof(want), "line %zu", pos + 1 + i);
			assert_int_equal(s->l[i].seq, pos + 1 + i);
			assert_string_equal(s->l[i].line, want);
			assert_string_equal(s->l[i].buffer,
					    names[(pos + 1 + i) % 3]);
		}
	}
	free(s);
	backlog_free(bl);
}

/* A client whose position predates what is stored gets everything left, in
 * order; lines dropped from one buffer do not hide lines of another. */
static void test_replay_old_position(void **state)
{
	struct backlog *bl = backlog_new(4);
	struct seen *s = seen_new();
	uint64_t quiet_seq;
	int i;

	backlog_append(bl, "#a", 0, "a1");             /* seq 1, dropped later */
	quiet_seq = backlog_append(bl, "#q", 0, "q1"); /* seq 2, kept */
	for (i = 0; i < 10; i++)
		backlog_append(bl, "#a", 0, "a");      /* seqs 3..12, 9..12 kept */
	assert_int_equal(quiet_seq, 2);

	assert_int_equal(backlog_replay(bl, 1, record, s), 0);
	assert_int_equal(s->n, 5);
	assert_int_equal(s->l[0].seq, 2);
	assert_string_equal(s->l[0].buffer, "#q");
	for (i = 1; i < 5; i++)
		assert_int_equal(s->l[i].seq, 8 + i);
	assert_int_equal(backlog_count_after(bl, 1), 5);

	/* A position inside the dropped range: same result. */
	s->n = 0;
	assert_int_equal(backlog_replay(bl, 5, record, s), 0);
	assert_int_equal(s->n, 4);
	assert_int_equal(s->l[0].seq, 9);
	assert_int_equal(backlog_count_after(bl, 5), 4);
	free(s);
	backlog_free(bl);
}

static void test_replay_stops(void **state)
{
	struct backlog *bl = make_interleaved(100, 20);
	struct seen *s = seen_new();

	s->stop_after = 5;
	assert_int_equal(backlog_replay(bl, 3, record, s), 7);
	assert_int_equal(s->n, 5);
	assert_int_equal(s->l[4].seq, 8);
	free(s);
	backlog_free(bl);
}

/* count_after agrees with replay at every position, with rings wrapped at
 * different points and more buffers than the replay's on-stack heap. */
static void test_count_after_agrees(void **state)
{
	struct backlog *bl = backlog_new(7);
	struct seen *s = seen_new();
	char name[16];
	uint64_t pos, next, prev;
	size_t i;
	unsigned r = 12345;

	for (i = 0; i < 2000; i++) {
		r = r * 1103515245u + 12345u;
		snprintf(name, sizeof(name), "#c%u", (r >> 16) % 100);
		assert_int_not_equal(backlog_append(bl, name, 0, "x"), 0);
	}
	next = backlog_next_seq(bl);
	for (pos = 0; pos <= next; pos += 37) {
		s->n = 0;
		assert_int_equal(backlog_replay(bl, pos, record, s), 0);
		assert_int_equal(backlog_count_after(bl, pos), s->n);
		prev = pos;
		for (i = 0; i < s->n; i++) {
			assert_true(s->l[i].seq > prev);
			prev = s->l[i].seq;
		}
	}
	free(s);
	backlog_free(bl);
}

static void test_case_insensitive_buffers(void **state)
{
	struct backlog *bl = backlog_new(10);
	struct seen *s = seen_new();

	backlog_append(bl, "#Chan[1]", 0, "one");
	backlog_append(bl, "#chan{1}", 0, "two");
	backlog_append(bl, "#CHAN[1]", 0, "three");
	backlog_append(bl, "#other", 0, "four");

	assert_int_equal(backlog_foreach_line(bl, "#cHaN{1}", record, s), 0);
	assert_int_equal(s->n, 3);
	/* The name is kept as first seen. */
	assert_string_equal(s->l[0].buffer, "#Chan[1]");
	assert_string_equal(s->l[2].buffer, "#Chan[1]");
	assert_string_equal(s->l[2].line, "three");

	s->n = 0;
	assert_int_equal(backlog_replay(bl, 0, record, s), 0);
	assert_string_equal(s->l[1].buffer, "#Chan[1]");

	/* Unknown buffers have no lines. */
	s->n = 0;
	assert_int_equal(backlog_foreach_line(bl, "#nope", record, s), 0);
	assert_int_equal(s->n, 0);
	free(s);
	backlog_free(bl);
}

static int record_buffer(void *arg, const char *buffer)
{
	struct seen *s = arg;

	snprintf(s->l[s->n++].buffer, sizeof(s->l[0].buffer), "%s", buffer);
	return 0;
}

/* Serialize with foreach_buffer/foreach_line, restore into a new backlog,
 * then compare replays from every position and the next seq. */
struct copy_ctx {
	const struct backlog *src;
	struct backlog *dst;
	int err;
};

static int copy_line(void *arg, uint64_t seq, int64_t time_ms,
		     const char *buffer, const char *line)
{
	struct copy_ctx *c = arg;

	c->err = backlog_restore(c->dst, buffer, seq, time_ms, line);
	return c->err;
}

static int copy_buffer(void *arg, const char *buffer)
{
	struct copy_ctx *c = arg;

	return backlog_foreach_line(c->src, buffer, copy_line, c);
}

static void assert_same_replay(const struct backlog *a, const struct backlog *b,
			       uint64_t pos)
{
	struct seen *sa = seen_new(), *sb = seen_new();
	size_t i;

	assert_int_equal(backlog_replay(a, pos, record, sa), 0);
	assert_int_equal(backlog_replay(b, pos, record, sb), 0);
	assert_int_equal(sa->n, sb->n);
	for (i = 0; i < sa->n; i++) {
		assert_int_equal(sa->l[i].seq, sb->l[i].seq);
		assert_int_equal(sa->l[i].time_ms, sb->l[i].time_ms);
		assert_string_equal(sa->l[i].buffer, sb->l[i].buffer);
		assert_string_equal(sa->l[i].line, sb->l[i].line);
	}
	assert_int_equal(backlog_count_after(a, pos), backlog_count_after(b, pos));
	free(sa);
	free(sb);
}

static void test_restore_round_trip(void **state)
{
	struct backlog *src = make_interleaved(5, 40); /* rings wrapped */
	struct backlog *dst = backlog_new(5);
	struct copy_ctx c = { .src = src, .dst = dst };
	struct seen *bufs = seen_new();
	uint64_t pos;

	assert_int_equal(backlog_foreach_buffer(src, copy_buffer, &c), 0);
	assert_int_equal(c.err, 0);
	backlog_set_next_seq(dst, backlog_next_seq(src));

	assert_int_equal(backlog_next_seq(dst), backlog_next_seq(src));
	for (pos = 0; pos <= backlog_next_seq(src); pos++)
		assert_same_replay(src, dst, pos);

	/* Buffer order and spelling survive. */
	assert_int_equal(backlog_foreach_buffer(dst, record_buffer, bufs), 0);
	assert_int_equal(bufs->n, 3);
	assert_string_equal(bufs->l[0].buffer, "#beta");
	assert_string_equal(bufs->l[1].buffer, "carol");
	assert_string_equal(bufs->l[2].buffer, "#alpha");

	/* Both continue with the same seq. */
	assert_int_equal(backlog_append(src, "#new", 0, "n"),
			 backlog_append(dst, "#NEW", 0, "n"));
	free(bufs);
	backlog_free(src);
	backlog_free(dst);
}

/* next_seq must survive a migration even if the lines that used the last
 * seqs were dropped: reusing a seq would hide lines from a client. */
static void test_set_next_seq_never_lowers(void **state)
{
	struct backlog *bl = backlog_new(5);

	assert_int_equal(backlog_restore(bl, "#a", 10, 0, "x"), 0);
	assert_int_equal(backlog_next_seq(bl), 11);
	backlog_set_next_seq(bl, 50);
	assert_int_equal(backlog_next_seq(bl), 50);
	backlog_set_next_seq(bl, 3); /* below a stored seq: clamped */
	assert_int_equal(backlog_next_seq(bl), 11);
	assert_int_equal(backlog_append(bl, "#a", 0, "y"), 11);
	backlog_free(bl);
}

static void test_restore_rejects_non_increasing(void **state)
{
	struct backlog *bl = backlog_new(5);

	assert_int_equal(backlog_restore(bl, "#a", 5, 0, "x"), 0);
	assert_int_equal(backlog_restore(bl, "#a", 5, 0, "dup"), -EINVAL);
	assert_int_equal(backlog_restore(bl, "#A", 4, 0, "older"), -EINVAL);
	assert_int_equal(backlog_restore(bl, "#a", 0, 0, "zero"), -EINVAL);
	assert_int_equal(backlog_restore(bl, "#b", 0, 0, "zero"), -EINVAL);
	assert_int_equal(backlog_restore(bl, "#b", UINT64_MAX, 0, "max"), -EINVAL);
	/* Other buffers have their own order. */
	assert_int_equal(backlog_restore(bl, "#b", 2, 0, "y"), 0);
	assert_int_equal(backlog_restore(bl, "#a", 7, 0, "z"), 0);
	/* Rejections created nothing and stored nothing. */
	assert_int_equal(backlog_count_after(bl, 0), 3);
	backlog_free(bl);
}

/* A restore of more lines than max_lines keeps the newest, as appends do. */
static void test_restore_into_smaller(void **state)
{
	struct backlog *bl = backlog_new(2);
	struct seen *s = seen_new();
	uint64_t seq;

	for (seq = 1; seq <= 5; seq++)
		assert_int_equal(backlog_restore(bl, "#a", seq * 2, 0, "x"), 0);
	assert_int_equal(backlog_replay(bl, 0, record, s), 0);
	assert_int_equal(s->n, 2);
	assert_int_equal(s->l[0].seq, 8);
	assert_int_equal(s->l[1].seq, 10);
	free(s);
	backlog_free(bl);
}

/* max_lines == 0 keeps no lines but still numbers them. */
static void test_zero_capacity(void **state)
{
	struct backlog *bl = backlog_new(0);

	assert_int_equal(backlog_append(bl, "#a", 0, "x"), 1);
	assert_int_equal(backlog_append(bl, "#a", 0, "y"), 2);
	assert_int_equal(backlog_count_after(bl, 0), 0);
	assert_int_equal(backlog_restore(bl, "#a", 1, 0, "x"), -EINVAL);
	backlog_free(bl);
}

static void test_bad_args(void **state)
{
	struct backlog *bl = backlog_new(5);

	assert_int_equal(backlog_append(bl, NULL, 0, "x"), 0);
	assert_int_equal(backlog_append(bl, "#a", 0, NULL), 0);
	assert_int_equal(backlog_next_seq(bl), 1);
	assert_int_equal(backlog_replay(bl, 0, NULL, NULL), -EINVAL);
	backlog_free(NULL);
	backlog_free(bl);
}

/* Many lines, many buffers: a replay must be near-linear. 200k lines over
 * 200 buffers replayed from the start; a quadratic merge would take minutes. */
static int count_only(void *arg, uint64_t seq, int64_t time_ms,
		      const char *buffer, const char *line)
{
	uint64_t *last = arg;

	assert_true(seq > *last);
	*last = seq;
	return 0;
}

static void test_replay_large(void **state)
{
	struct backlog *bl = backlog_new(1000);
	char name[16];
	uint64_t last = 0;
	size_t i;

	for (i = 0; i < 200000; i++) {
		snprintf(name, sizeof(name), "#c%zu", (i * 7919) % 200);
		assert_int_not_equal(backlog_append(bl, name, 0, "hello world"), 0);
	}
	assert_int_equal(backlog_count_after(bl, 0), 200000);
	assert_int_equal(backlog_replay(bl, 0, count_only, &last), 0);
	assert_int_equal(last, 200000);
	backlog_free(bl);
}

/* Bug: every distinct sender of a private message created a query buffer,
 * without bound. The number of buffers is capped; at the cap the least
 * recently stored query buffer goes, channel buffers only when no query
 * buffer is left. */
static void test_buffer_cap_evicts_oldest_query(void **state)
{
	struct backlog *bl = backlog_new(10);
	struct seen *s = seen_new();

	backlog_set_max_buffers(bl, 4);
	backlog_append(bl, "#chan", 0, "c1");   /* seq 1 */
	backlog_append(bl, "amy", 0, "a1");     /* 2 */
	backlog_append(bl, "ben", 0, "b1");     /* 3 */
	backlog_append(bl, "Amy", 0, "a2");     /* 4: amy is now newer than ben */
	backlog_append(bl, "#other", 0, "o1");  /* 5: 4 buffers */
	assert_int_equal(backlog_nbuffers(bl), 4);

	/* A fifth evicts ben (oldest query), not #chan (older, a channel). */
	assert_int_equal(backlog_append(bl, "cat", 0, "k1"), 6);
	assert_int_equal(backlog_nbuffers(bl), 4);
	assert_int_equal(backlog_foreach_line(bl, "ben", record, s), 0);
	assert_int_equal(s->n, 0);
	assert_int_equal(backlog_foreach_line(bl, "#chan", record, s), 0);
	assert_int_equal(s->n, 1);
	assert_int_equal(backlog_count_after(bl, 0), 5); /* c1 a1 a2 o1 k1 */

	/* Seqs go on; a returning sender gets a new buffer (evicting amy). */
	assert_int_equal(backlog_append(bl, "BEN", 0, "b2"), 7);
	s->n = 0;
	assert_int_equal(backlog_foreach_line(bl, "amy", record, s), 0);
	assert_int_equal(s->n, 0);
	assert_int_equal(backlog_foreach_line(bl, "ben", record, s), 0);
	assert_int_equal(s->n, 1);
	assert_string_equal(s->l[0].buffer, "BEN");

	/* Only channels left to evict: the least recently stored goes. */
	backlog_set_max_buffers(bl, 2);
	backlog_append(bl, "#chan", 0, "c2");   /* 8: #chan newer than #other */
	backlog_append(bl, "#third", 0, "t1");  /* 9: evicts cat, BEN, #other */
	assert_int_equal(backlog_nbuffers(bl), 2);
	s->n = 0;
	assert_int_equal(backlog_replay(bl, 0, record, s), 0);
	assert_int_equal(s->n, 3);
	assert_int_equal(s->l[0].seq, 1);
	assert_int_equal(s->l[1].seq, 8);
	assert_int_equal(s->l[2].seq, 9);
	assert_string_equal(s->l[2].buffer, "#third");
	free(s);
	backlog_free(bl);
}

/* Bug: buffer lookup was a linear scan over every buffer, so a flood of
 * distinct senders cost O(senders^2). 200k distinct senders (a cap's worth
 * of buffers live at any time) must go by in linear time. */
static void test_many_senders(void **state)
{
	struct backlog *bl = backlog_new(5);
	char name[32];
	size_t i;

	for (i = 0; i < 200000; i++) {
		snprintf(name, sizeof(name), "spammer%zu", i);
		assert_int_not_equal(backlog_append(bl, name, 0, "buy now"), 0);
		assert_int_not_equal(backlog_append(bl, "#chan", 0, "meanwhile"), 0);
	}
	assert_int_equal(backlog_nbuffers(bl), BACKLOG_MAX_BUFFERS);
	/* the busy channel survived, the newest senders are there */
	assert_int_equal(backlog_count_after(bl, 0), BACKLOG_MAX_BUFFERS - 1 + 5);
	backlog_free(bl);
}

struct dump {
	struct seen *names, *lines;
};

static int dump_buffer(void *arg, const char *buffer)
{
	return record_buffer(((struct dump *)arg)->names, buffer);
}

static int dump_line(void *arg, uint64_t seq, int64_t time_ms,
		     const char *buffer, const char *line)
{
	return record(((struct dump *)arg)->lines, seq, time_ms, buffer, line);
}

/* Bug: serialization looked each buffer up by name again (a linear scan
 * per buffer: quadratic). backlog_foreach_buffer_lines walks them once, in
 * strcmp order of the names, each buffer's lines oldest first. */
static void test_foreach_buffer_lines(void **state)
{
	struct backlog *bl = make_interleaved(5, 40); /* rings wrapped */
	struct dump d = { seen_new(), seen_new() };

	assert_int_equal(backlog_foreach_buffer_lines(bl, dump_buffer, dump_line, &d), 0);
	assert_int_equal(d.names->n, 3);
	assert_string_equal(d.names->l[0].buffer, "#alpha");
	assert_string_equal(d.names->l[1].buffer, "#beta");
	assert_string_equal(d.names->l[2].buffer, "carol");
	assert_int_equal(d.lines->n, 15);
	/* #alpha holds the seqs divisible by 3: the last 5 are 27..39 */
	assert_int_equal(d.lines->l[0].seq, 27);
	assert_int_equal(d.lines->l[4].seq, 39);
	assert_string_equal(d.lines->l[4].buffer, "#alpha");
	assert_int_equal(d.lines->l[5].seq, 28); /* #beta: 1 mod 3 */
	assert_int_equal(d.lines->l[9].seq, 40);
	assert_int_equal(d.lines->l[10].seq, 26); /* carol: 2 mod 3 */
	assert_int_equal(d.lines->l[14].seq, 38);
	backlog_free(bl);

	bl = backlog_new(5);
	d.names->n = d.lines->n = 0;
	assert_int_equal(backlog_foreach_buffer_lines(bl, dump_buffer, dump_line, &d), 0);
	assert_int_equal(d.names->n, 0);
	assert_int_equal(backlog_foreach_buffer_lines(bl, NULL, dump_line, &d), -EINVAL);
	free(d.names);
	free(d.lines);
	backlog_free(bl);
}

/* A restore of more buffers than the cap, in the order of their newest
 * line (as state.c restores), keeps the buffers with the newest lines. */
static void test_restore_beyond_cap(void **state)
{
	struct backlog *bl = backlog_new(5);
	struct seen *s = seen_new();
	char name[16];
	uint64_t seq = 1;
	int i;

	backlog_set_max_buffers(bl, 3);
	for (i = 0; i < 6; i++) {
		snprintf(name, sizeof(name), "q%d", i);
		assert_int_equal(backlog_restore(bl, name, seq++, 0, "x"), 0);
		assert_int_equal(backlog_restore(bl, name, seq++, 0, "y"), 0);
	}
	assert_int_equal(backlog_nbuffers(bl), 3);
	assert_int_equal(backlog_replay(bl, 0, record, s), 0);
	assert_int_equal(s->n, 6);
	assert_string_equal(s->l[0].buffer, "q3");
	assert_string_equal(s->l[5].buffer, "q5");
	assert_int_equal(backlog_next_seq(bl), seq);
	free(s);
	backlog_free(bl);
}


/* ---- the bounds of issue 8 (one session's state must always fit one
 * migration message) ---- */

static struct backlog *bounded(size_t buffer_lines, size_t buffer_bytes,
			       size_t buffers, size_t total_lines,
			       size_t total_bytes)
{
	struct backlog *bl = backlog_new(buffer_lines);
	const struct backlog_limits lim = { buffer_lines, buffer_bytes, buffers,
					    total_lines, total_bytes };

	assert_non_null(bl);
	backlog_set_limits(bl, &lim);
	return bl;
}

static size_t lines_of(const struct backlog *bl, const char *buffer)
{
	struct seen *s = seen_new();
	size_t n;

	assert_int_equal(backlog_foreach_line(bl, buffer, record, s), 0);
	n = s->n;
	free(s);
	return n;
}

/* Bug: a buffer's lines were bounded by count only, so 500 lines of 8 KiB
 * made one buffer 4 MB. At buffer_bytes its oldest lines go (the buffer's
 * own ring: not counted as a session drop). */
static void test_buffer_bytes_bound(void **state)
{
	struct backlog *bl = bounded(100, 100, 10, 1000, 1 << 20);
	struct backlog_drops d;

	for (int i = 0; i < 10; i++)     /* 10 x 10 bytes: at the bound */
		assert_int_equal(backlog_append(bl, "#a", 0, "0123456789"), (uint64_t)i + 1);
	assert_int_equal(lines_of(bl, "#a"), 10);
	assert_int_equal(backlog_dropped_seq(bl, "#a"), 0);
	assert_int_equal(backlog_nbytes(bl), 100 + 2);
	assert_int_equal(backlog_append(bl, "#a", 0, "0123456789"), 11); /* past */
	assert_int_equal(lines_of(bl, "#a"), 10);
	assert_int_equal(backlog_dropped_seq(bl, "#a"), 1);
	assert_int_equal(backlog_append(bl, "#a", 0, "0123456789abcdefghij"), 12);
	assert_int_equal(lines_of(bl, "#a"), 9); /* 8 x 10 + 20 */
	assert_int_equal(backlog_dropped_seq(bl, "#a"), 3);
	/* One line longer than the bound: numbered, relayed, not kept. */
	char big[128];
	memset(big, 'x', 101);
	big[101] = '\0';
	assert_int_equal(backlog_append(bl, "#a", 0, big), 13);
	assert_int_equal(lines_of(bl, "#a"), 0);
	assert_int_equal(backlog_dropped_seq(bl, "#a"), 13);
	assert_int_equal(backlog_nbuffers(bl), 1); /* the empty buffer stays */
	assert_int_equal(backlog_nbytes(bl), 2);
	backlog_take_drops(bl, &d);
	assert_int_equal(d.lines, 0);
	assert_int_equal(d.why, 0);
	backlog_free(bl);
}

/* Bug: nothing bounded a session's lines across buffers (100,000 lines
 * from one user writing to 50 targets). At total_lines the buffer holding
 * the most lines loses its oldest one: a quiet buffer keeps its history. */
static void test_total_lines_bound(void **state)
{
	struct backlog *bl = bounded(100, 1 << 20, 10, 6, 1 << 20);
	struct backlog_drops d;

	backlog_append(bl, "#quiet", 0, "q1");          /* 1 */
	for (int i = 0; i < 5; i++)
		backlog_append(bl, "#busy", 0, "b");    /* 2..6: at the bound */
	assert_int_equal(backlog_nlines(bl), 6);
	backlog_take_drops(bl, &d);
	assert_int_equal(d.lines, 0);
	assert_int_equal(backlog_append(bl, "#quiet", 0, "q2"), 7); /* past */
	assert_int_equal(backlog_nlines(bl), 6);
	assert_int_equal(lines_of(bl, "#quiet"), 2);    /* the busy one paid */
	assert_int_equal(lines_of(bl, "#busy"), 4);
	assert_int_equal(backlog_dropped_seq(bl, "#busy"), 2);
	assert_int_equal(backlog_dropped_seq(bl, "#quiet"), 0);
	backlog_take_drops(bl, &d);
	assert_int_equal(d.lines, 1);
	assert_int_equal(d.buffers, 0);
	assert_int_equal(d.why, BACKLOG_DROP_TOTAL_LINES);
	backlog_take_drops(bl, &d);                     /* taken: reset */
	assert_int_equal(d.lines, 0);
	backlog_free(bl);
}

/* Bug: nothing bounded a session's bytes (75 strangers x 500 lines of 440
 * characters: 19 MB). At total_bytes (text + buffer names) the buffer with
 * the most bytes loses its oldest lines. */
static void test_total_bytes_bound(void **state)
{
	/* names "#q" and "#b": 4 bytes; 96 bytes of text fit */
	struct backlog *bl = bounded(100, 1 << 20, 10, 1000, 100);
	struct backlog_drops d;
	char line[64];

	backlog_append(bl, "#q", 0, "0123456789");              /* 10 + 2 */
	memset(line, 'b', 43);
	line[43] = '\0';
	backlog_append(bl, "#b", 0, line);                      /* 43 + 2 */
	backlog_append(bl, "#b", 0, line);                      /* 43: 100 */
	assert_int_equal(backlog_nbytes(bl), 100);              /* at */
	assert_int_equal(backlog_nlines(bl), 3);
	assert_int_equal(backlog_append(bl, "#q", 0, "x"), 4);  /* past */
	assert_int_equal(backlog_nbytes(bl), 100 - 43 + 1);
	assert_int_equal(lines_of(bl, "#q"), 2);
	assert_int_equal(lines_of(bl, "#b"), 1);
	assert_int_equal(backlog_dropped_seq(bl, "#b"), 2);
	backlog_take_drops(bl, &d);
	assert_int_equal(d.lines, 1);
	assert_int_equal(d.why, BACKLOG_DROP_TOTAL_BYTES);
	/* A new buffer's name counts too: "#new" (4) + 40 bytes of text make
	 * 102; #b (43 bytes, the biggest) loses its last line. */
	memset(line, 'n', 40);
	line[40] = '\0';
	backlog_append(bl, "#new", 0, line);
	assert_true(backlog_nbytes(bl) <= 100);
	assert_int_equal(lines_of(bl, "#new"), 1);
	assert_int_equal(lines_of(bl, "#b"), 0);
	assert_int_equal(backlog_nbuffers(bl), 3);
	backlog_free(bl);
}

/* The bound on buffers counts the whole evicted buffer as dropped, and a
 * client that had not seen its lines has a gap (evicted_seq). */
static void test_buffers_bound_counts_drops(void **state)
{
	struct backlog *bl = bounded(10, 1 << 20, 2, 1000, 1 << 20);
	struct backlog_drops d;

	backlog_append(bl, "amy", 0, "a1");  /* 1 */
	backlog_append(bl, "amy", 0, "a2");  /* 2 */
	backlog_append(bl, "ben", 0, "b1");  /* 3: at the bound */
	backlog_take_drops(bl, &d);
	assert_int_equal(d.buffers, 0);
	assert_int_equal(backlog_evicted_seq(bl), 0);
	backlog_append(bl, "cat", 0, "c1");  /* 4: past: amy goes */
	assert_int_equal(backlog_nbuffers(bl), 2);
	assert_int_equal(backlog_evicted_seq(bl), 2);
	backlog_take_drops(bl, &d);
	assert_int_equal(d.buffers, 1);
	assert_int_equal(d.lines, 2);
	assert_int_equal(d.why, BACKLOG_DROP_BUFFERS);
	backlog_free(bl);
}

static int gap_collect(void *arg, const char *buffer)
{
	return record_buffer(arg, buffer);
}

/* Where a client at a position has holes: buffers that dropped a line
 * after it. */
static void test_foreach_gap(void **state)
{
	struct backlog *bl = bounded(2, 1 << 20, 10, 1000, 1 << 20);
	struct seen *s = seen_new();

	backlog_append(bl, "#a", 0, "1");
	backlog_append(bl, "#b", 0, "2");
	backlog_append(bl, "#a", 0, "3");
	backlog_append(bl, "#a", 0, "4");    /* #a drops seq 1 */
	backlog_append(bl, "#b", 0, "5");
	backlog_append(bl, "#b", 0, "6");    /* #b drops seq 2 */
	assert_int_equal(backlog_foreach_gap(bl, 0, gap_collect, s), 0);
	assert_int_equal(s->n, 2);
	s->n = 0;
	assert_int_equal(backlog_foreach_gap(bl, 1, gap_collect, s), 0);
	assert_int_equal(s->n, 1);
	assert_string_equal(s->l[0].buffer, "#b");
	s->n = 0;
	assert_int_equal(backlog_foreach_gap(bl, 2, gap_collect, s), 0);
	assert_int_equal(s->n, 0);
	free(s);
	backlog_free(bl);
}

/* The last line of defence of a migration: the oldest lines of the whole
 * backlog go first, whatever their buffer, until enough bytes are gone. */
static void test_trim_oldest(void **state)
{
	struct backlog *bl = bounded(100, 1 << 20, 10, 1000, 1 << 20);
	struct seen *s = seen_new();
	struct backlog_drops d;

	backlog_append(bl, "#a", 0, "0123456789"); /* 1 */
	backlog_append(bl, "#b", 0, "0123456789"); /* 2 */
	backlog_append(bl, "#a", 0, "0123456789"); /* 3 */
	backlog_append(bl, "#b", 0, "0123456789"); /* 4 */
	/* each line counts 10 + BACKLOG_LINE_OVERHEAD */
	assert_int_equal(backlog_trim_oldest(bl, 10 + BACKLOG_LINE_OVERHEAD + 1), 2);
	assert_int_equal(backlog_replay(bl, 0, record, s), 0);
	assert_int_equal(s->n, 2);
	assert_int_equal(s->l[0].seq, 3);
	assert_int_equal(backlog_dropped_seq(bl, "#a"), 1);
	assert_int_equal(backlog_dropped_seq(bl, "#b"), 2);
	backlog_take_drops(bl, &d);
	assert_int_equal(d.lines, 2);
	assert_int_equal(d.why, BACKLOG_DROP_TRIM);
	assert_int_equal(backlog_trim_oldest(bl, SIZE_MAX), 2);
	assert_int_equal(backlog_nlines(bl), 0);
	assert_int_equal(backlog_trim_oldest(bl, 1), 0);
	assert_int_equal(backlog_nbuffers(bl), 2); /* emptied, still there */
	free(s);
	backlog_free(bl);
}

/* What was dropped travels: restored after the lines, and a buffer with
 * none left restored empty. Seqs are checked against it. */
static void test_restore_dropped(void **state)
{
	struct backlog *bl = bounded(10, 1 << 20, 10, 1000, 1 << 20);

	assert_int_equal(backlog_restore(bl, "#a", 5, 0, "x"), 0);
	assert_int_equal(backlog_restore_dropped(bl, "#a", 4), 0);
	assert_int_equal(backlog_restore_dropped(bl, "#a", 5), -EINVAL); /* not below its lines */
	assert_int_equal(backlog_restore_dropped(bl, "#empty", 9), 0);
	assert_int_equal(backlog_nbuffers(bl), 2);
	assert_int_equal(backlog_dropped_seq(bl, "#empty"), 9);
	assert_int_equal(backlog_dropped_seq(bl, "#a"), 4);
	assert_int_equal(backlog_restore(bl, "#empty", 9, 0, "y"), -EINVAL);
	assert_int_equal(backlog_restore(bl, "#empty", 10, 0, "y"), 0);
	assert_true(backlog_next_seq(bl) > 10);
	backlog_set_evicted_seq(bl, 3);
	backlog_set_evicted_seq(bl, 2); /* never lowered */
	assert_int_equal(backlog_evicted_seq(bl), 3);
	assert_int_equal(backlog_restore_dropped(bl, "#a", 0), -EINVAL);
	backlog_free(bl);
}

/* A flood over every bound keeps every bound after every store, and a
 * replay stays in seq order. */
static void test_flood_keeps_every_bound(void **state)
{
	struct backlog *bl = bounded(50, 4000, 20, 300, 30000);
	char name[16], line[300];
	uint64_t last = 0;

	for (int i = 0; i < 20000; i++) {
		snprintf(name, sizeof(name), "n%d", (i * 7) % 37);
		memset(line, 'a' + i % 26, (size_t)(i % 250) + 1);
		line[i % 250 + 1] = '\0';
		assert_int_not_equal(backlog_append(bl, name, 0, line), 0);
		assert_true(backlog_nlines(bl) <= 300);
		assert_true(backlog_nbytes(bl) <= 30000);
		assert_true(backlog_nbuffers(bl) <= 20);
	}
	assert_int_equal(backlog_replay(bl, 0, count_only, &last), 0);
	backlog_free(bl);
}


/* State schema 3 (backlog.h, positions in the store): which lines are not
 * known to be stored, cold ranges restored and their bounds, a ring drop
 * ending a range, cold_after. */
static void test_unstored_seq(void **state)
{
	(void)state;
	struct backlog *bl = backlog_new(10);

	assert_int_equal(backlog_unstored_seq(bl, "#a"), 0);
	assert_int_equal(backlog_append(bl, "#a", 0, "own 1"), 1); /* own seq */
	assert_int_equal(backlog_unstored_seq(bl, "#A"), 1);
	assert_int_equal(backlog_append_at(bl, "#a", 10, 0, "store 10"), 0);
	assert_int_equal(backlog_unstored_seq(bl, "#a"), 1); /* store seq */
	assert_int_equal(backlog_restore(bl, "#b", 11, 0, "adopted"), 0);
	assert_int_equal(backlog_unstored_seq(bl, "#b"), 11); /* migrated */
	assert_int_equal(backlog_append_at(bl, "#b", 12, 0, "store 12"), 0);
	assert_int_equal(backlog_unstored_seq(bl, "#b"), 11);
	backlog_free(bl);
}

static void test_restore_cold(void **state)
{
	(void)state;
	struct backlog *bl = backlog_new(3);
	uint64_t f, t, first;

	/* bad ranges */
	assert_int_equal(backlog_restore_cold(bl, "#a", 0, 5), -EINVAL);
	assert_int_equal(backlog_restore_cold(bl, "#a", 6, 5), -EINVAL);
	assert_int_equal(backlog_restore_cold(bl, "#a", 1, UINT64_MAX), -EINVAL);
	assert_int_equal(backlog_restore_dropped(bl, "#d", 7), 0);
	assert_int_equal(backlog_restore_cold(bl, "#d", 7, 9), 0); /* cut: 8-9 */
	assert_int_equal(backlog_cold_range(bl, "#d", &f, &t), 1);
	assert_int_equal(f, 8);
	assert_int_equal(t, 9);
	assert_int_equal(backlog_restore_cold(bl, "#d", 7, 9), 0);
	/* an inline line older than the range, one inside it */
	assert_int_equal(backlog_restore(bl, "#a", 2, 0, "unstored 2"), 0);
	assert_int_equal(backlog_restore(bl, "#a", 15, 0, "unstored 15"), 0);
	assert_int_equal(backlog_restore_cold(bl, "#a", 10, 20), 0);
	assert_int_equal(backlog_restore_cold(bl, "#q", 30, 40), 0); /* creates it */
	assert_int_equal(backlog_nbuffers(bl), 3);
	assert_int_equal(backlog_restore_cold(bl, "#d", 2, 7), 0); /* all dropped */
	assert_int_equal(backlog_cold_range(bl, "#d", &f, &t), 0);
	assert_true(backlog_next_seq(bl) > 40);
	assert_int_equal(backlog_cold_range(bl, "#A", &f, &t), 1);
	assert_int_equal(f, 10);
	assert_int_equal(t, 20);
	assert_int_equal(backlog_cold_after(bl, 0, &first), 40);
	assert_int_equal(first, 10);
	assert_int_equal(backlog_cold_after(bl, 20, &first), 40);
	assert_int_equal(first, 30);
	assert_int_equal(backlog_cold_after(bl, 40, NULL), 0);
	/* cold lines do not count against the bounds */
	assert_int_equal(backlog_nlines(bl), 2);
	/* #a (3 lines a buffer) drops line 2, older than the range: kept */
	assert_int_equal(backlog_append_at(bl, "#a", 50, 0, "l50"), 0);
	assert_int_equal(backlog_append_at(bl, "#a", 51, 0, "l51"), 0);
	assert_int_equal(backlog_dropped_seq(bl, "#a"), 2);
	assert_int_equal(backlog_cold_range(bl, "#a", &f, &t), 1);
	assert_int_equal(f, 10);
	/* then line 15, inside it: the range starts after it */
	assert_int_equal(backlog_append_at(bl, "#a", 52, 0, "l52"), 0);
	assert_int_equal(backlog_cold_range(bl, "#a", &f, &t), 1);
	assert_int_equal(f, 16);
	assert_int_equal(t, 20);
	/* then line 50, newer than it: the range is gone */
	assert_int_equal(backlog_append_at(bl, "#a", 53, 0, "l53"), 0);
	assert_int_equal(backlog_cold_range(bl, "#a", &f, &t), 0);
	assert_int_equal(backlog_cold_after(bl, 0, &first), 40);
	assert_int_equal(first, 30);
	backlog_free(bl);
}

/* An inline tail over the bounds: the bounds hold (the oldest go), the
 * range stays. */
static void test_cold_tail_over_bounds(void **state)
{
	(void)state;
	struct backlog *bl = backlog_new(1000);
	struct backlog_limits lim = { .buffer_lines = 1000, .buffer_bytes = 1 << 20,
				      .buffers = 10, .total_lines = 5,
				      .total_bytes = 1 << 20 };
	uint64_t f, t;

	backlog_set_limits(bl, &lim);
	for (uint64_t s = 101; s <= 120; s++)
		assert_int_equal(backlog_restore(bl, "#a", s, 0, "tail"), 0);
	/* the order adoption uses: lines, dropped, then the range; the
	 * tail dropped 101-115 here, newer than the range: it is gone, and
	 * the adoption goes on */
	assert_int_equal(backlog_restore_cold(bl, "#a", 1, 100), 0);
	assert_int_equal(backlog_nlines(bl), 5);
	assert_int_equal(backlog_dropped_seq(bl, "#a"), 115);
	assert_int_equal(backlog_cold_range(bl, "#a", &f, &t), 0);
	assert_int_equal(backlog_cold_after(bl, 0, NULL), 0);
	/* the range first, then the tail: the same */
	struct backlog *b2 = backlog_new(1000);
	backlog_set_limits(b2, &lim);
	assert_int_equal(backlog_restore_cold(b2, "#b", 1, 100), 0);
	for (uint64_t s = 101; s <= 120; s++)
		assert_int_equal(backlog_restore(b2, "#b", s, 0, "tail"), 0);
	assert_int_equal(backlog_nlines(b2), 5);
	/* the tail's own drops end the range (its lines were newer) */
	assert_int_equal(backlog_cold_range(b2, "#b", &f, &t), 0);
	backlog_free(bl);
	backlog_free(b2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_seq_monotonic_across_buffers),
		cmocka_unit_test(test_ring_drops_oldest),
		cmocka_unit_test(test_rings_are_per_buffer),
		cmocka_unit_test(test_replay_after_position),
		cmocka_unit_test(test_replay_old_position),
		cmocka_unit_test(test_replay_stops),
		cmocka_unit_test(test_count_after_agrees),
		cmocka_unit_test(test_case_insensitive_buffers),
		cmocka_unit_test(test_restore_round_trip),
		cmocka_unit_test(test_set_next_seq_never_lowers),
		cmocka_unit_test(test_restore_rejects_non_increasing),
		cmocka_unit_test(test_restore_into_smaller),
		cmocka_unit_test(test_zero_capacity),
		cmocka_unit_test(test_bad_args),
		cmocka_unit_test(test_replay_large),
		cmocka_unit_test(test_buffer_cap_evicts_oldest_query),
		cmocka_unit_test(test_many_senders),
		cmocka_unit_test(test_foreach_buffer_lines),
		cmocka_unit_test(test_restore_beyond_cap),
		cmocka_unit_test(test_buffer_bytes_bound),
		cmocka_unit_test(test_total_lines_bound),
		cmocka_unit_test(test_total_bytes_bound),
		cmocka_unit_test(test_buffers_bound_counts_drops),
		cmocka_unit_test(test_foreach_gap),
		cmocka_unit_test(test_trim_oldest),
		cmocka_unit_test(test_restore_dropped),
		cmocka_unit_test(test_unstored_seq),
		cmocka_unit_test(test_restore_cold),
		cmocka_unit_test(test_cold_tail_over_bounds),
		cmocka_unit_test(test_flood_keeps_every_bound),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
