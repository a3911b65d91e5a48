/* sessiond/backlog.c: per-session message history (see backlog.h).
 *
 * Layout: an array of buffers (sessions rarely have more than a few dozen;
 * lookup is a linear, case-insensitive scan with a one-entry cache for bursts
 * on the same buffer), each holding a ring of lines sorted by seq. Rings start
 * small and double up to max_lines, so an idle query costs a few slots, not
 * max_lines of them. Each line owns a strdup'd copy of its text.
 *
 * Because every ring is sorted, "lines with seq > after" is a binary search
 * per buffer, counting is O(buffers * log lines), and a replay is a k-way
 * merge over the rings with a binary heap: O(n log k) for n lines over k
 * buffers, never quadratic.
 *
 * Library code: no logging, no exits. Allocation failures return -ENOMEM
 * (0 from backlog_append) and leave the backlog as it was.
 */
#include "sessiond/backlog.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sessiond/irc.h"

#define RING_MIN_CAP 4
#define BUFFERS_MIN_CAP 4
/* Replays over at most this many non-empty buffers keep their merge heap on
 * the stack; more than that allocate it. */
#define REPLAY_STACK_CURSORS 64

struct bl_line {
	uint64_t seq;
	int64_t time_ms;
	char *text; /* owned */
};

struct bl_buffer {
	char *name;           /* owned; spelled as first seen */
	struct bl_line *ring; /* cap slots, len used, oldest at head */
	size_t cap, head, len;
	uint64_t last_seq;    /* of the newest line ever added, even if dropped */
};

struct backlog {
	size_t max_lines;
	uint64_t next_seq;
	uint64_t high_seq; /* highest seq ever assigned or restored */
	struct bl_buffer *bufs;
	size_t nbufs, capbufs;
	size_t last; /* index of the buffer last appended to (lookup cache) */
};

static const struct bl_line *ring_at(const struct bl_buffer *b, size_t i)
{
	size_t j = b->head + i;

	if (j >= b->cap)
		j -= b->cap;
	return &b->ring[j];
}

/* Index (0 = oldest) of the first line with seq > after; len if none. */
static size_t ring_first_after(const struct bl_buffer *b, uint64_t after)
{
	size_t lo = 0, hi = b->len;

	if (b->len == 0 || b->last_seq <= after)
		return b->len;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (ring_at(b, mid)->seq <= after)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Make room for one more line: grow the ring (relinearizing it) while below
 * max_lines. At capacity nothing is done: the caller overwrites the oldest. */
static int ring_reserve(struct bl_buffer *b, size_t max_lines)
{
	struct bl_line *nr;
	size_t ncap, i;

	if (b->len < b->cap || b->cap >= max_lines)
		return 0;
	ncap = b->cap ? b->cap * 2 : RING_MIN_CAP;
	if (ncap > max_lines)
		ncap = max_lines;
	if (ncap > SIZE_MAX / sizeof(*nr))
		return -ENOMEM;
	nr = malloc(ncap * sizeof(*nr));
	if (!nr)
		return -ENOMEM;
	for (i = 0; i < b->len; i++)
		nr[i] = *ring_at(b, i);
	free(b->ring);
	b->ring = nr;
	b->cap = ncap;
	b->head = 0;
	return 0;
}

/* Store a line whose text is already allocated; takes ownership of text.
 * ring_reserve() must have succeeded. With max_lines == 0 nothing is kept. */
static void ring_push(struct bl_buffer *b, uint64_t seq, int64_t time_ms,
		      char *text)
{
	struct bl_line *slot;

	b->last_seq = seq;
	if (b->cap == 0) {
		free(text);
		return;
	}
	if (b->len == b->cap) { /* full at max_lines: drop the oldest */
		slot = &b->ring[b->head];
		free(slot->text);
		b->head = b->head + 1 == b->cap ? 0 : b->head + 1;
	} else {
		size_t j = b->head + b->len;

		slot = &b->ring[j >= b->cap ? j - b->cap : j];
		b->len++;
	}
	slot->seq = seq;
	slot->time_ms = time_ms;
	slot->text = text;
}

static struct bl_buffer *buffer_find(const struct backlog *bl, const char *name)
{
	size_t i;

	if (bl->last < bl->nbufs &&
	    irc_casecmp(bl->bufs[bl->last].name, name) == 0)
		return &bl->bufs[bl->last];
	for (i = 0; i < bl->nbufs; i++)
		if (irc_casecmp(bl->bufs[i].name, name) == 0)
			return &bl->bufs[i];
	return NULL;
}

/* Find or create; *created tells the caller it may roll the creation back
 * (buffer_drop_last) if what follows fails. */
static struct bl_buffer *buffer_get(struct backlog *bl, const char *name,
				    int *created)
{
	struct bl_buffer *b = buffer_find(bl, name);

	*created = 0;
	if (b)
		goto out;
	if (bl->nbufs == bl->capbufs) {
		size_t ncap = bl->capbufs ? bl->capbufs * 2 : BUFFERS_MIN_CAP;
		struct bl_buffer *nb = realloc(bl->bufs, ncap * sizeof(*nb));

		if (!nb)
			return NULL;
		bl->bufs = nb;
		bl->capbufs = ncap;
	}
	b = &bl->bufs[bl->nbufs];
	memset(b, 0, sizeof(*b));
	b->name = strdup(name);
	if (!b->name)
		return NULL;
	bl->nbufs++;
	*created = 1;
out:
	bl->last = (size_t)(b - bl->bufs);
	return b;
}

/* Undo a buffer_get() that created the last buffer (it holds no lines). */
static void buffer_drop_last(struct backlog *bl)
{
	struct bl_buffer *b = &bl->bufs[--bl->nbufs];

	free(b->ring);
	free(b->name);
}

struct backlog *backlog_new(size_t max_lines)
{
	struct backlog *bl = calloc(1, sizeof(*bl));

	if (!bl)
		return NULL;
	bl->max_lines = max_lines;
	bl->next_seq = 1;
	return bl;
}

void backlog_free(struct backlog *bl)
{
	size_t i, j;

	if (!bl)
		return;
	for (i = 0; i < bl->nbufs; i++) {
		struct bl_buffer *b = &bl->bufs[i];

		for (j = 0; j < b->len; j++)
			free(ring_at(b, j)->text);
		free(b->ring);
		free(b->name);
	}
	free(bl->bufs);
	free(bl);
}

/* Shared by append and restore: store `line` as `seq` in `buffer`. */
static int store(struct backlog *bl, const char *buffer, uint64_t seq,
		 int64_t time_ms, const char *line, int check_order)
{
	struct bl_buffer *b;
	char *text = NULL;
	int created, r;

	b = buffer_get(bl, buffer, &created);
	if (!b)
		return -ENOMEM;
	if (check_order && seq <= b->last_seq) {
		r = -EINVAL;
		goto fail;
	}
	if (bl->max_lines > 0) {
		text = strdup(line);
		if (!text || ring_reserve(b, bl->max_lines) < 0) {
			r = -ENOMEM;
			goto fail;
		}
	}
	ring_push(b, seq, time_ms, text); /* text: ownership transferred */
	if (seq > bl->high_seq)
		bl->high_seq = seq;
	return 0;

fail:
	free(text);
	if (created)
		buffer_drop_last(bl);
	return r;
}

uint64_t backlog_append(struct backlog *bl, const char *buffer, int64_t time_ms,
			const char *line)
{
	uint64_t seq;

	if (!bl || !buffer || !line || bl->next_seq == UINT64_MAX)
		return 0;
	seq = bl->next_seq;
	if (store(bl, buffer, seq, time_ms, line, 0) < 0)
		return 0;
	bl->next_seq++;
	return seq;
}

/* Replay: a min-heap of per-buffer cursors keyed by the seq they point at. */
struct cursor {
	const struct bl_buffer *b;
	size_t i; /* next line to visit, 0 = oldest */
};

static uint64_t cursor_seq(const struct cursor *c)
{
	return ring_at(c->b, c->i)->seq;
}

static void heap_sift_down(struct cursor *h, size_t n, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		struct cursor t;

		if (l < n && cursor_seq(&h[l]) < cursor_seq(&h[m]))
			m = l;
		if (r < n && cursor_seq(&h[r]) < cursor_seq(&h[m]))
			m = r;
		if (m == i)
			return;
		t = h[i];
		h[i] = h[m];
		h[m] = t;
		i = m;
	}
}

/* Returns 0, fn's non-zero value, -EINVAL (NULL arguments) or -ENOMEM (more
 * than REPLAY_STACK_CURSORS buffers to merge and no memory for the heap).
 * fn must not modify the backlog (it is const here; the rings would move). */
int backlog_replay(const struct backlog *bl, uint64_t after,
		   backlog_visit_fn fn, void *arg)
{
	struct cursor stack[REPLAY_STACK_CURSORS], *h = stack;
	size_t i, n = 0;
	int r = 0;

	if (!bl || !fn)
		return -EINVAL;
	for (i = 0; i < bl->nbufs; i++)
		if (bl->bufs[i].len > 0 && bl->bufs[i].last_seq > after)
			n++;
	if (n > REPLAY_STACK_CURSORS) {
		h = malloc(n * sizeof(*h));
		if (!h)
			return -ENOMEM;
	}
	n = 0;
	for (i = 0; i < bl->nbufs; i++) {
		const struct bl_buffer *b = &bl->bufs[i];
		size_t first = ring_first_after(b, after);

		if (first < b->len)
			h[n++] = (struct cursor){ .b = b, .i = first };
	}
	for (i = n / 2; i-- > 0;)
		heap_sift_down(h, n, i);

	while (n > 0) {
		const struct bl_line *l = ring_at(h[0].b, h[0].i);

		r = fn(arg, l->seq, l->time_ms, h[0].b->name, l->text);
		if (r != 0)
			goto out;
		if (++h[0].i == h[0].b->len)
			h[0] = h[--n];
		heap_sift_down(h, n, 0);
	}
out:
	if (h != stack)
		free(h);
	return r;
}

size_t backlog_count_after(const struct backlog *bl, uint64_t after)
{
	size_t i, count = 0;

	if (!bl)
		return 0;
	for (i = 0; i < bl->nbufs; i++)
		count += bl->bufs[i].len - ring_first_after(&bl->bufs[i], after);
	return count;
}

uint64_t backlog_next_seq(const struct backlog *bl)
{
	return bl ? bl->next_seq : 0;
}

/* Never goes below (highest seq ever stored) + 1, whatever the caller asks:
 * reusing a seq would make a client's position ambiguous. */
void backlog_set_next_seq(struct backlog *bl, uint64_t next_seq)
{
	if (!bl)
		return;
	if (next_seq <= bl->high_seq)
		next_seq = bl->high_seq + 1;
	bl->next_seq = next_seq;
}

int backlog_foreach_buffer(const struct backlog *bl, backlog_buffer_fn fn,
			   void *arg)
{
	size_t i;
	int r;

	if (!bl || !fn)
		return -EINVAL;
	for (i = 0; i < bl->nbufs; i++) {
		r = fn(arg, bl->bufs[i].name);
		if (r != 0)
			return r;
	}
	return 0;
}

/* An unknown buffer has no lines: returns 0 without calling fn. */
int backlog_foreach_line(const struct backlog *bl, const char *buffer,
			 backlog_visit_fn fn, void *arg)
{
	const struct bl_buffer *b;
	size_t i;
	int r;

	if (!bl || !buffer || !fn)
		return -EINVAL;
	b = buffer_find(bl, buffer);
	if (!b)
		return 0;
	for (i = 0; i < b->len; i++) {
		const struct bl_line *l = ring_at(b, i);

		r = fn(arg, l->seq, l->time_ms, b->name, l->text);
		if (r != 0)
			return r;
	}
	return 0;
}

/* Seqs must increase per buffer (checked against the newest line ever added
 * to that buffer, so also after appends) and be unique session-wide (not
 * checked: a backlog that produced them guarantees it). More than max_lines
 * restored lines drop the oldest, as appends do, so a worker configured
 * with a smaller backlog can load a bigger one. next_seq is raised past
 * every restored seq; backlog_set_next_seq() may raise it further. */
int backlog_restore(struct backlog *bl, const char *buffer, uint64_t seq,
		    int64_t time_ms, const char *line)
{
	int r;

	if (!bl || !buffer || !line || seq == 0 || seq == UINT64_MAX)
		return -EINVAL;
	r = store(bl, buffer, seq, time_ms, line, 1);
	if (r < 0)
		return r;
	if (bl->next_seq <= seq)
		bl->next_seq = seq + 1;
	return 0;
}
