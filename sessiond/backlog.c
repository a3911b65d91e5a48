/* sessiond/backlog.c: per-session message history (see backlog.h).
 *
 * Layout: heap-allocated buffers, listed in an array (any order; removal
 * swaps the last one in) and indexed by casefolded name in a strmap, with a
 * one-entry cache for bursts on the same buffer. Each buffer holds a ring of
 * lines sorted by seq. Rings start small and double up to max_lines, so an
 * idle query costs a few slots, not max_lines of them. Each line owns a
 * strdup'd copy of its text.
 *
 * The number of buffers is bounded (lim.buffers): every distinct sender of
 * a private message creates one, and a flood of them must not grow a session
 * without limit. Creating one more evicts the least recently stored query
 * buffer, or, only if every buffer is a channel, the least recently stored
 * channel buffer. Two lists (queries, channels) in store order make that
 * O(1). Appends store in seq order, so "least recently stored" is "whose
 * newest line is oldest"; a restore keeps that meaning when buffers are
 * restored in the order of their newest line (state.c does).
 *
 * Bytes and lines are counted per buffer and in total on every change, so
 * the bounds cost nothing until one is reached; then the total bounds scan
 * the buffers for the biggest (O(buffers) per dropped line, a few hundred at
 * most).
 *
 * Because every ring is sorted, "lines with seq > after" is a binary search
 * per buffer, counting is O(buffers * log lines), and a replay is a k-way
 * merge over the rings with a binary heap: O(n log k) for n lines over k
 * buffers, never quadratic.
 *
 * Library code: no logging, no exits. Allocation failures return -ENOMEM
 * (0 from backlog_append) and leave the backlog as it was (nothing is
 * evicted before the new line is certain to be stored).
 */
#include "sessiond/backlog.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/strmap.h"
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
	char *key;            /* owned; casefolded name, the index key */
	size_t name_len;
	struct bl_line *ring; /* cap slots, len used, oldest at head */
	size_t cap, head, len;
	size_t bytes;         /* text bytes of its lines */
	uint64_t last_seq;    /* of the newest line ever added, even if dropped */
	uint64_t dropped_seq; /* of the newest line dropped (0: none) */
	/* the newest line held that is not known to be in this worker's
	 * store: appended with a seq of the backlog's own, or restored from a
	 * migration (0: none); backlog_unstored_seq() */
	uint64_t unstored_seq;
	/* lines held in the store only (a migration's cold range,
	 * backlog_restore_cold()): [cold_from, cold_to], 0: none */
	uint64_t cold_from, cold_to;
	size_t pos;           /* in backlog.bufs */
	bool channel;         /* irc_is_channel(name): evicted last */
	struct bl_buffer *older, *newer; /* its store-order list */
};

/* Buffers of one kind, least recently stored first. */
struct bl_list {
	struct bl_buffer *oldest, *newest;
};

struct backlog {
	struct backlog_limits lim;
	size_t lines, bytes;    /* held in total (bytes: as lim.total_bytes) */
	uint64_t evicted_seq;   /* newest seq an evicted buffer held */
	struct backlog_drops drops; /* since the last take */
	uint64_t next_seq;
	uint64_t high_seq; /* highest seq ever assigned or restored */
	struct bl_buffer **bufs;
	size_t nbufs, capbufs;
	struct strmap *index;   /* casefolded name -> buffer */
	struct bl_buffer *last; /* buffer last stored to (lookup cache) */
	struct bl_list queries, channels;
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

/* The oldest line of b leaves the ring (it must hold one). */
static void ring_drop_oldest(struct backlog *bl, struct bl_buffer *b)
{
	struct bl_line *l = &b->ring[b->head];
	size_t n = strlen(l->text);

	if (l->seq > b->dropped_seq)
		b->dropped_seq = l->seq;
	b->bytes -= n;
	bl->bytes -= n;
	bl->lines--;
	free(l->text);
	l->text = NULL;
	b->head = b->head + 1 == b->cap ? 0 : b->head + 1;
	b->len--;
	if (b->len == 0)
		b->head = 0;
}

/* Store a line whose text is already allocated; takes ownership of text.
 * ring_reserve() must have succeeded. With buffer_lines == 0 nothing is
 * kept (the line counts as dropped). */
static void ring_push(struct backlog *bl, struct bl_buffer *b, uint64_t seq,
		      int64_t time_ms, char *text)
{
	struct bl_line *slot;
	size_t j;

	b->last_seq = seq;
	if (b->cap == 0 || text == NULL) {
		free(text);
		if (seq > b->dropped_seq)
			b->dropped_seq = seq;
		return;
	}
	if (b->len == b->cap) /* full at buffer_lines: drop the oldest */
		ring_drop_oldest(bl, b);
	j = b->head + b->len;
	slot = &b->ring[j >= b->cap ? j - b->cap : j];
	b->len++;
	slot->seq = seq;
	slot->time_ms = time_ms;
	slot->text = text;
	b->bytes += strlen(text);
	bl->bytes += strlen(text);
	bl->lines++;
}

/* ---- buffers: index, store order, eviction ---- */

static struct bl_list *buffer_list(struct backlog *bl, const struct bl_buffer *b)
{
	return b->channel ? &bl->channels : &bl->queries;
}

static void list_unlink(struct bl_list *l, struct bl_buffer *b)
{
	if (b->older)
		b->older->newer = b->newer;
	else
		l->oldest = b->newer;
	if (b->newer)
		b->newer->older = b->older;
	else
		l->newest = b->older;
	b->older = b->newer = NULL;
}

static void list_push_newest(struct bl_list *l, struct bl_buffer *b)
{
	b->older = l->newest;
	b->newer = NULL;
	if (l->newest)
		l->newest->newer = b;
	else
		l->oldest = b;
	l->newest = b;
}

/* The buffer was just stored to: it becomes the newest of its list. */
static void buffer_touch(struct backlog *bl, struct bl_buffer *b)
{
	struct bl_list *l = buffer_list(bl, b);

	if (l->newest == b)
		return;
	list_unlink(l, b);
	list_push_newest(l, b);
}

static void buffer_free(struct bl_buffer *b)
{
	size_t j;

	if (!b)
		return;
	for (j = 0; j < b->len; j++)
		free(ring_at(b, j)->text);
	free(b->ring);
	free(b->name);
	free(b->key);
	free(b);
}

/* Casefolded copy of name into tmp[n] if it fits, else malloc'd (the caller
 * frees it when it is not tmp; tmp may be NULL with n 0). NULL: out of
 * memory. */
static char *fold_key(const char *name, char *tmp, size_t n)
{
	size_t len = strlen(name);
	char *k = len < n ? tmp : malloc(len + 1);

	if (!k)
		return NULL;
	memcpy(k, name, len + 1);
	irc_casefold(k);
	return k;
}

/* The buffer named `name` (case-insensitively) or NULL. -ENOMEM only for a
 * name too long for the stack and no memory to fold it. */
static int buffer_lookup(const struct backlog *bl, const char *name,
			 struct bl_buffer **out)
{
	char tmp[256];
	char *k;

	if (bl->last && irc_casecmp(bl->last->name, name) == 0) {
		*out = bl->last;
		return 0;
	}
	k = fold_key(name, tmp, sizeof(tmp));
	if (!k)
		return -ENOMEM;
	*out = strmap_get(bl->index, k);
	if (k != tmp)
		free(k);
	return 0;
}

/* A new buffer, indexed but not listed yet (buffer_insert() lists it). */
static struct bl_buffer *buffer_create(struct backlog *bl, const char *name)
{
	struct bl_buffer *b = calloc(1, sizeof(*b));

	if (!b)
		return NULL;
	b->name = strdup(name);
	b->name_len = strlen(name);
	b->key = fold_key(name, NULL, 0);
	b->channel = irc_is_channel(name) != 0;
	if (!b->name || !b->key || strmap_put(bl->index, b->key, b) < 0) {
		buffer_free(b);
		return NULL;
	}
	return b;
}

/* Undo buffer_create() (the buffer holds no lines). */
static void buffer_uncreate(struct backlog *bl, struct bl_buffer *b)
{
	strmap_del(bl->index, b->key);
	buffer_free(b);
}

/* Take b out of every structure and free it. */
static void buffer_remove(struct backlog *bl, struct bl_buffer *b)
{
	struct bl_buffer *moved = bl->bufs[--bl->nbufs];

	bl->bufs[b->pos] = moved;
	moved->pos = b->pos;
	list_unlink(buffer_list(bl, b), b);
	strmap_del(bl->index, b->key);
	if (bl->last == b)
		bl->last = NULL;
	bl->lines -= b->len;
	bl->bytes -= b->bytes + b->name_len;
	buffer_free(b);
}

/* A whole buffer goes to make room (the per-backlog bounds): what it held
 * is remembered as evicted and counted. */
static void buffer_evict(struct backlog *bl, struct bl_buffer *b, unsigned why)
{
	if (b->last_seq > bl->evicted_seq)
		bl->evicted_seq = b->last_seq;
	bl->drops.lines += b->len;
	bl->drops.buffers++;
	bl->drops.why |= why;
	buffer_remove(bl, b);
}

/* The least recently stored query buffer; a channel buffer only if there is
 * no query buffer. */
static struct bl_buffer *buffer_victim(const struct backlog *bl)
{
	return bl->queries.oldest ? bl->queries.oldest : bl->channels.oldest;
}

/* List a created buffer, evicting as many as lim.buffers requires. The
 * array has room (buffer_reserve()). */
static void buffer_insert(struct backlog *bl, struct bl_buffer *b)
{
	size_t max = bl->lim.buffers ? bl->lim.buffers : 1;

	while (bl->nbufs >= max && bl->nbufs > 0)
		buffer_evict(bl, buffer_victim(bl), BACKLOG_DROP_BUFFERS);
	b->pos = bl->nbufs;
	bl->bufs[bl->nbufs++] = b;
	bl->bytes += b->name_len;
	list_push_newest(buffer_list(bl, b), b);
}

/* The buffer with the most lines (by_bytes: bytes) that holds a line;
 * NULL if none holds one. */
static struct bl_buffer *buffer_biggest(const struct backlog *bl, bool by_bytes)
{
	struct bl_buffer *best = NULL;

	for (size_t i = 0; i < bl->nbufs; i++) {
		struct bl_buffer *b = bl->bufs[i];

		if (b->len == 0)
			continue;
		if (best == NULL ||
		    (by_bytes ? b->bytes > best->bytes : b->len > best->len))
			best = b;
	}
	return best;
}

/* After a store to `cur`: its own byte bound (its oldest lines go), then
 * the totals (the biggest buffer loses its oldest line; if only names are
 * left over the byte bound, whole buffers other than cur go). */
static void enforce_limits(struct backlog *bl, struct bl_buffer *cur)
{
	while (cur->len > bl->lim.buffer_lines) /* the bound was lowered */
		ring_drop_oldest(bl, cur);
	while (cur->len > 0 && cur->bytes > bl->lim.buffer_bytes)
		ring_drop_oldest(bl, cur);
	while (bl->lines > bl->lim.total_lines || bl->bytes > bl->lim.total_bytes) {
		bool by_bytes = bl->bytes > bl->lim.total_bytes;
		struct bl_buffer *b = buffer_biggest(bl, by_bytes);
		unsigned why = by_bytes ? BACKLOG_DROP_TOTAL_BYTES :
					  BACKLOG_DROP_TOTAL_LINES;

		if (b != NULL) {
			ring_drop_oldest(bl, b);
			bl->drops.lines++;
			bl->drops.why |= why;
			continue;
		}
		b = buffer_victim(bl);
		if (b == cur) /* its list's oldest is cur: try the other */
			b = cur->channel ? bl->queries.oldest : bl->channels.oldest;
		if (b == NULL || b == cur)
			break; /* cur's name alone: nothing else to give */
		buffer_evict(bl, b, why);
	}
}

/* Room in the array for one more buffer. */
static int buffer_reserve(struct backlog *bl)
{
	size_t ncap;
	struct bl_buffer **nb;

	if (bl->nbufs < bl->capbufs)
		return 0;
	ncap = bl->capbufs ? bl->capbufs * 2 : BUFFERS_MIN_CAP;
	nb = realloc(bl->bufs, ncap * sizeof(*nb));
	if (!nb)
		return -ENOMEM;
	bl->bufs = nb;
	bl->capbufs = ncap;
	return 0;
}

struct backlog *backlog_new(size_t max_lines)
{
	struct backlog *bl = calloc(1, sizeof(*bl));

	if (!bl)
		return NULL;
	bl->index = strmap_new();
	if (!bl->index) {
		free(bl);
		return NULL;
	}
	bl->lim = (struct backlog_limits){
		.buffer_lines = max_lines,
		.buffer_bytes = SIZE_MAX,
		.buffers = BACKLOG_MAX_BUFFERS,
		.total_lines = SIZE_MAX,
		.total_bytes = SIZE_MAX,
	};
	bl->next_seq = 1;
	return bl;
}

void backlog_set_limits(struct backlog *bl, const struct backlog_limits *lim)
{
	if (!bl || !lim)
		return;
	bl->lim = *lim;
	if (bl->lim.buffers == 0)
		bl->lim.buffers = 1;
}

void backlog_get_limits(const struct backlog *bl, struct backlog_limits *lim)
{
	if (bl && lim)
		*lim = bl->lim;
}

void backlog_set_max_buffers(struct backlog *bl, size_t max_buffers)
{
	if (bl)
		bl->lim.buffers = max_buffers ? max_buffers : 1;
}

size_t backlog_nbuffers(const struct backlog *bl)
{
	return bl ? bl->nbufs : 0;
}

size_t backlog_nlines(const struct backlog *bl)
{
	return bl ? bl->lines : 0;
}

size_t backlog_nbytes(const struct backlog *bl)
{
	return bl ? bl->bytes : 0;
}

void backlog_free(struct backlog *bl)
{
	size_t i;

	if (!bl)
		return;
	for (i = 0; i < bl->nbufs; i++)
		buffer_free(bl->bufs[i]);
	free(bl->bufs);
	strmap_free(bl->index);
	free(bl);
}

/* Shared by append and restore: store `line` as `seq` in `buffer`. Every
 * allocation comes before the first change, so a failure changes nothing
 * (a new buffer evicts an old one only once its line is certain). */
static int store(struct backlog *bl, const char *buffer, uint64_t seq,
		 int64_t time_ms, const char *line, int check_order,
		 int unstored)
{
	struct bl_buffer *b, *created = NULL;
	char *text = NULL;
	int r;

	if (buffer_lookup(bl, buffer, &b) < 0)
		return -ENOMEM;
	if (!b) {
		if (buffer_reserve(bl) < 0)
			return -ENOMEM;
		b = created = buffer_create(bl, buffer);
		if (!b)
			return -ENOMEM;
	}
	if (check_order && seq <= b->last_seq) {
		r = -EINVAL;
		goto fail;
	}
	if (unstored)
		b->unstored_seq = seq; /* restored or numbered here: not stored */
	if (bl->lim.buffer_lines > 0) {
		text = strdup(line);
		if (!text || ring_reserve(b, bl->lim.buffer_lines) < 0) {
			r = -ENOMEM;
			goto fail;
		}
	}
	if (created)
		buffer_insert(bl, created);
	else
		buffer_touch(bl, b);
	ring_push(bl, b, seq, time_ms, text); /* text: ownership transferred */
	bl->last = b;
	if (seq > bl->high_seq)
		bl->high_seq = seq;
	enforce_limits(bl, b);
	return 0;

fail:
	free(text);
	if (created)
		buffer_uncreate(bl, created);
	return r;
}

uint64_t backlog_append(struct backlog *bl, const char *buffer, int64_t time_ms,
			const char *line)
{
	uint64_t seq;

	if (!bl || !buffer || !line || bl->next_seq == UINT64_MAX)
		return 0;
	seq = bl->next_seq;
	if (store(bl, buffer, seq, time_ms, line, 0, 1) < 0)
		return 0;
	bl->next_seq++;
	return seq;
}

int backlog_append_at(struct backlog *bl, const char *buffer, uint64_t seq,
		      int64_t time_ms, const char *line)
{
	int r;

	if (!bl || !buffer || !line || seq == 0 || seq == UINT64_MAX ||
	    seq < bl->next_seq)
		return -EINVAL;
	r = store(bl, buffer, seq, time_ms, line, 0, 0);
	if (r < 0)
		return r;
	bl->next_seq = seq + 1;
	return 0;
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
		if (bl->bufs[i]->len > 0 && bl->bufs[i]->last_seq > after)
			n++;
	if (n > REPLAY_STACK_CURSORS) {
		h = malloc(n * sizeof(*h));
		if (!h)
			return -ENOMEM;
	}
	n = 0;
	for (i = 0; i < bl->nbufs; i++) {
		const struct bl_buffer *b = bl->bufs[i];
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
		count += bl->bufs[i]->len - ring_first_after(bl->bufs[i], after);
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
		r = fn(arg, bl->bufs[i]->name);
		if (r != 0)
			return r;
	}
	return 0;
}

static int visit_lines(const struct bl_buffer *b, backlog_visit_fn fn,
		       void *arg)
{
	size_t i;
	int r;

	for (i = 0; i < b->len; i++) {
		const struct bl_line *l = ring_at(b, i);

		r = fn(arg, l->seq, l->time_ms, b->name, l->text);
		if (r != 0)
			return r;
	}
	return 0;
}

/* An unknown buffer has no lines: returns 0 without calling fn. */
int backlog_foreach_line(const struct backlog *bl, const char *buffer,
			 backlog_visit_fn fn, void *arg)
{
	struct bl_buffer *b;

	if (!bl || !buffer || !fn)
		return -EINVAL;
	if (buffer_lookup(bl, buffer, &b) < 0)
		return -ENOMEM;
	return b ? visit_lines(b, fn, arg) : 0;
}

static int cmp_buffer_name(const void *x, const void *y)
{
	const struct bl_buffer *a = *(const struct bl_buffer *const *)x;
	const struct bl_buffer *b = *(const struct bl_buffer *const *)y;

	return strcmp(a->name, b->name);
}

int backlog_foreach_buffer_lines(const struct backlog *bl,
				 backlog_buffer_fn buffer_fn,
				 backlog_visit_fn line_fn, void *arg)
{
	struct bl_buffer **sorted;
	size_t i;
	int r = 0;

	if (!bl || !buffer_fn || !line_fn)
		return -EINVAL;
	if (bl->nbufs == 0)
		return 0;
	sorted = malloc(bl->nbufs * sizeof(*sorted));
	if (!sorted)
		return -ENOMEM;
	memcpy(sorted, bl->bufs, bl->nbufs * sizeof(*sorted));
	qsort(sorted, bl->nbufs, sizeof(*sorted), cmp_buffer_name);
	for (i = 0; i < bl->nbufs && r == 0; i++) {
		r = buffer_fn(arg, sorted[i]->name);
		if (r == 0)
			r = visit_lines(sorted[i], line_fn, arg);
	}
	free(sorted);
	return r;
}

/* Seqs must increase per buffer (checked against the newest line ever added
 * to that buffer, so also after appends) and be unique session-wide (not
 * checked: a backlog that produced them guarantees it). Restored lines
 * beyond any bound drop as appends do, so a worker configured with a
 * smaller backlog can load a bigger one. next_seq is raised past every
 * restored seq; backlog_set_next_seq() may raise it further. */
int backlog_restore(struct backlog *bl, const char *buffer, uint64_t seq,
		    int64_t time_ms, const char *line)
{
	int r;

	if (!bl || !buffer || !line || seq == 0 || seq == UINT64_MAX)
		return -EINVAL;
	r = store(bl, buffer, seq, time_ms, line, 1, 1);
	if (r < 0)
		return r;
	if (bl->next_seq <= seq)
		bl->next_seq = seq + 1;
	return 0;
}

/* backlog_restore_dropped() and backlog_restore_cold(): the buffer named
 * `buffer`, created (its last seq `seq`) when the backlog has none yet. */
static int restored_buffer(struct backlog *bl, const char *buffer,
			   uint64_t seq, struct bl_buffer **out, bool *created)
{
	struct bl_buffer *b;

	*created = false;
	if (buffer_lookup(bl, buffer, &b) < 0)
		return -ENOMEM;
	if (!b) {
		if (buffer_reserve(bl) < 0)
			return -ENOMEM;
		b = buffer_create(bl, buffer);
		if (!b)
			return -ENOMEM;
		buffer_insert(bl, b);
		b->last_seq = seq;
		enforce_limits(bl, b);
		*created = true;
	}
	*out = b;
	return 0;
}

/* A restored seq was handed out: the buffer's last, the backlog's highest
 * and next seqs move past it. */
static void restored_seq(struct backlog *bl, struct bl_buffer *b, uint64_t seq)
{
	if (seq > b->last_seq)
		b->last_seq = seq;
	if (seq > bl->high_seq)
		bl->high_seq = seq;
	if (bl->next_seq <= seq)
		bl->next_seq = seq + 1;
}

int backlog_restore_dropped(struct backlog *bl, const char *buffer,
			    uint64_t dropped_seq)
{
	struct bl_buffer *b;

	if (!bl || !buffer || dropped_seq == 0 || dropped_seq == UINT64_MAX)
		return -EINVAL;
	bool created;

	if (restored_buffer(bl, buffer, dropped_seq, &b, &created) < 0)
		return -ENOMEM;
	if (!created && b->len > 0 && ring_at(b, 0)->seq <= dropped_seq)
		return -EINVAL; /* it cannot have dropped a line after one it holds */
	if (dropped_seq > b->dropped_seq)
		b->dropped_seq = dropped_seq;
	restored_seq(bl, b, dropped_seq);
	return 0;
}

uint64_t backlog_dropped_seq(const struct backlog *bl, const char *buffer)
{
	struct bl_buffer *b;

	if (!bl || !buffer || buffer_lookup(bl, buffer, &b) < 0 || !b)
		return 0;
	return b->dropped_seq;
}

uint64_t backlog_evicted_seq(const struct backlog *bl)
{
	return bl ? bl->evicted_seq : 0;
}

void backlog_set_evicted_seq(struct backlog *bl, uint64_t seq)
{
	if (!bl || seq <= bl->evicted_seq)
		return;
	bl->evicted_seq = seq;
	if (seq > bl->high_seq)
		bl->high_seq = seq;
	if (bl->next_seq <= seq)
		bl->next_seq = seq + 1;
}

int backlog_foreach_gap(const struct backlog *bl, uint64_t after,
			backlog_buffer_fn fn, void *arg)
{
	int r;

	if (!bl || !fn)
		return -EINVAL;
	for (size_t i = 0; i < bl->nbufs; i++) {
		if (bl->bufs[i]->dropped_seq <= after)
			continue;
		r = fn(arg, bl->bufs[i]->name);
		if (r != 0)
			return r;
	}
	return 0;
}

void backlog_take_drops(struct backlog *bl, struct backlog_drops *out)
{
	if (!bl) {
		*out = (struct backlog_drops){ 0 };
		return;
	}
	*out = bl->drops;
	bl->drops = (struct backlog_drops){ 0 };
}

size_t backlog_trim_oldest(struct backlog *bl, size_t want)
{
	size_t gone = 0, n = 0;

	if (!bl)
		return 0;
	while (gone < want && bl->lines > 0) {
		struct bl_buffer *oldest = NULL;

		for (size_t i = 0; i < bl->nbufs; i++) {
			struct bl_buffer *b = bl->bufs[i];

			if (b->len > 0 && (oldest == NULL ||
					   ring_at(b, 0)->seq < ring_at(oldest, 0)->seq))
				oldest = b;
		}
		gone += strlen(ring_at(oldest, 0)->text) + BACKLOG_LINE_OVERHEAD;
		ring_drop_oldest(bl, oldest);
		n++;
	}
	bl->drops.lines += n;
	if (n)
		bl->drops.why |= BACKLOG_DROP_TRIM;
	return n;
}

/* ---- positions in the store (schema 3 migrations) ---- */

uint64_t backlog_unstored_seq(const struct backlog *bl, const char *buffer)
{
	struct bl_buffer *b;

	if (!bl || !buffer || buffer_lookup(bl, buffer, &b) < 0 || !b)
		return 0;
	return b->unstored_seq;
}

/* The part of b's cold range it has not dropped: a buffer drops its
 * oldest lines first, so the cold lines (older than every line it held
 * when they became cold) go before any line it holds; one drop past them
 * ends the range. */
static void cold_valid(const struct bl_buffer *b, uint64_t *from, uint64_t *to)
{
	*from = *to = 0;
	if (b->cold_to == 0 || b->dropped_seq >= b->cold_to)
		return;
	*from = b->cold_from > b->dropped_seq ? b->cold_from : b->dropped_seq + 1;
	*to = b->cold_to;
}

int backlog_restore_cold(struct backlog *bl, const char *buffer, uint64_t from,
			 uint64_t to)
{
	struct bl_buffer *b;

	if (!bl || !buffer || from == 0 || from > to || to == UINT64_MAX)
		return -EINVAL;
	bool created;

	if (restored_buffer(bl, buffer, to, &b, &created) < 0)
		return -ENOMEM;
	/* Its lines restored before dropped some (a receiver with smaller
	 * bounds): those were newer than the range's lower part, which goes
	 * first (cold_valid()). */
	b->cold_from = from;
	b->cold_to = to;
	restored_seq(bl, b, to);
	return 0;
}

int backlog_cold_range(const struct backlog *bl, const char *buffer,
		       uint64_t *from, uint64_t *to)
{
	struct bl_buffer *b;

	*from = *to = 0;
	if (!bl || !buffer || buffer_lookup(bl, buffer, &b) < 0 || !b)
		return 0;
	cold_valid(b, from, to);
	return *to != 0;
}

uint64_t backlog_cold_after(const struct backlog *bl, uint64_t after,
			    uint64_t *first)
{
	uint64_t newest = 0, oldest = 0;

	for (size_t i = 0; bl && i < bl->nbufs; i++) {
		uint64_t f, t;

		cold_valid(bl->bufs[i], &f, &t);
		if (t <= after)
			continue;
		if (t > newest)
			newest = t;
		if (oldest == 0 || f < oldest)
			oldest = f;
	}
	if (first)
		*first = oldest;
	return newest;
}
