/* sessiond/backlog.h: the per-session message history. One bounded ring per
 * buffer (a channel or a private query, keyed case-insensitively); every line
 * gets a session-wide sequence number, strictly increasing, so a client's
 * delivery position is a single number: "every line with seq > pos is new".
 *
 * Bounds (struct backlog_limits) and what is dropped at each, oldest lines
 * first everywhere:
 *  - per buffer, lines and bytes (the text of its lines): the buffer's own
 *    oldest lines go (a ring, as before);
 *  - per backlog, buffers: every distinct sender of a private message makes
 *    one, so creating one beyond the bound first drops a whole buffer: the
 *    least recently stored query buffer (a name that is not a channel), or
 *    if there is none the least recently stored channel buffer;
 *  - per backlog, lines and bytes in total (bytes: the text of every line
 *    plus every buffer's name): the buffer holding the most lines (resp.
 *    bytes) loses its oldest line, repeatedly, so that a flood into some
 *    buffers cannot push the history of quiet ones out. Buffers emptied this
 *    way stay (with their name and what they dropped) until evicted as above.
 * Seqs are unaffected: a dropped line is simply not replayed. What was
 * dropped is remembered for the clients that missed it: per buffer the
 * newest seq it dropped (backlog_dropped_seq()), and for buffers dropped
 * whole the newest seq they held (backlog_evicted_seq()); a client whose
 * position is below either has a gap there. Drops caused by the per-backlog
 * bounds (not a buffer's own ring) are also counted until taken
 * (backlog_take_drops()), so the session can tell its users.
 *
 * Library code: no logging, no exits. Allocation failures return -ENOMEM.
 */
#ifndef BATON_SESSIOND_BACKLOG_H
#define BATON_SESSIOND_BACKLOG_H

#include <stddef.h>
#include <stdint.h>

struct backlog;

/* Default bound on the number of buffers of a backlog_new() backlog. */
#define BACKLOG_MAX_BUFFERS 1000

/* Serialized size of a line beyond its text, at most (state.proto
 * Buffer.lines: tag and length of the BacklogLine, seq and time_ms as
 * varints of up to 10 bytes with their tags, the line's tag and a length of
 * up to 2 bytes for lines up to 16 KiB). backlog_trim_oldest() counts
 * text + this per line. */
#define BACKLOG_LINE_OVERHEAD 28

struct backlog_limits {
	size_t buffer_lines; /* per buffer; 0: nothing is kept (seqs still are) */
	size_t buffer_bytes; /* per buffer: text bytes of its lines */
	size_t buffers;      /* buffers (at least 1; 0 counts as 1) */
	size_t total_lines;  /* every buffer's lines together */
	size_t total_bytes;  /* text of every line + every buffer's name */
};

/* max_lines per buffer, at most BACKLOG_MAX_BUFFERS buffers, no other
 * bound (backlog_set_limits() sets them all). next_seq starts at 1. */
struct backlog *backlog_new(size_t max_lines);
void backlog_free(struct backlog *bl); /* accepts NULL */
/* Change every bound. Applies from the next store (nothing is dropped
 * now). */
void backlog_set_limits(struct backlog *bl, const struct backlog_limits *lim);
void backlog_get_limits(const struct backlog *bl, struct backlog_limits *lim);
/* Change only the bound on buffers (0 counts as 1). */
void backlog_set_max_buffers(struct backlog *bl, size_t max_buffers);
size_t backlog_nbuffers(const struct backlog *bl);
/* Lines held, and bytes as total_bytes counts them. */
size_t backlog_nlines(const struct backlog *bl);
size_t backlog_nbytes(const struct backlog *bl);

/* Append a line (no CRLF) to `buffer`, creating the buffer on first use.
 * Returns the seq assigned (> 0), or 0 on allocation failure. */
uint64_t backlog_append(struct backlog *bl, const char *buffer, int64_t time_ms,
			const char *line);

/* Append a line with a seq given by the caller (the message store's,
 * sessiond/history.h): at least the next seq; the next seq becomes seq + 1.
 * Returns 0, -EINVAL (seq below the next seq, 0 or UINT64_MAX; nothing
 * stored), -ENOMEM. */
int backlog_append_at(struct backlog *bl, const char *buffer, uint64_t seq,
		      int64_t time_ms, const char *line);

/* Visit every stored line with seq > after, across all buffers, in seq order.
 * fn returns 0 to continue, non-zero to stop (returned from backlog_replay). */
typedef int (*backlog_visit_fn)(void *arg, uint64_t seq, int64_t time_ms,
				const char *buffer, const char *line);
int backlog_replay(const struct backlog *bl, uint64_t after,
		   backlog_visit_fn fn, void *arg);

/* Count of stored lines with seq > after (what a replay would send). */
size_t backlog_count_after(const struct backlog *bl, uint64_t after);

uint64_t backlog_next_seq(const struct backlog *bl);
/* Used when restoring state: the next seq to assign (>= every stored seq+1). */
void backlog_set_next_seq(struct backlog *bl, uint64_t next_seq);

/* Visit the name of every buffer, in creation order (a dropped buffer's
 * place is taken by the newest one). */
typedef int (*backlog_buffer_fn)(void *arg, const char *buffer);
int backlog_foreach_buffer(const struct backlog *bl, backlog_buffer_fn fn,
			   void *arg);
/* Lines of one buffer, oldest first (fn as for replay). -ENOMEM possible
 * for a very long name. */
int backlog_foreach_line(const struct backlog *bl, const char *buffer,
			 backlog_visit_fn fn, void *arg);
/* Serialization: every buffer in strcmp() order of its name, each announced
 * by buffer_fn before its lines, oldest first (line_fn as for replay); a
 * non-zero return from either stops the walk and is returned. O(b log b) in
 * buffers plus the lines. Returns 0, that value, -EINVAL or -ENOMEM. */
int backlog_foreach_buffer_lines(const struct backlog *bl,
				 backlog_buffer_fn buffer_fn,
				 backlog_visit_fn line_fn, void *arg);
/* Restore one line with its original seq (lines of one buffer must come in
 * increasing seq). Returns 0, -EINVAL (seq not increasing), -ENOMEM. */
int backlog_restore(struct backlog *bl, const char *buffer, uint64_t seq,
		    int64_t time_ms, const char *line);
/* Restore what `buffer` dropped (its newest dropped seq), after its lines;
 * a buffer without lines is created empty (as one emptied by the
 * per-backlog bounds is). Seqs of its later lines must be above it.
 * Returns 0, -EINVAL (seq 0 or not above its lines), -ENOMEM. */
int backlog_restore_dropped(struct backlog *bl, const char *buffer,
			    uint64_t dropped_seq);

/* ---- what was dropped ---- */

/* The newest seq `buffer` dropped (0: none, or no such buffer). */
uint64_t backlog_dropped_seq(const struct backlog *bl, const char *buffer);
/* The newest seq any buffer dropped whole (evicted) held (0: none). */
uint64_t backlog_evicted_seq(const struct backlog *bl);
/* Used when restoring state; never lowers it. */
void backlog_set_evicted_seq(struct backlog *bl, uint64_t seq);
/* Visit every buffer that dropped a line with seq > after (a client at
 * position `after` missed lines there), in creation order. */
int backlog_foreach_gap(const struct backlog *bl, uint64_t after,
			backlog_buffer_fn fn, void *arg);

/* Drops caused by the per-backlog bounds (buffers, total lines, total
 * bytes) since the last take; reset by the take. A buffer's own ring
 * (buffer_lines, buffer_bytes) is not counted: it is the normal life of a
 * busy buffer. */
struct backlog_drops {
	size_t lines;   /* lines dropped (including those of evicted buffers) */
	size_t buffers; /* buffers evicted */
	unsigned why;   /* BACKLOG_DROP_* bits */
};
enum {
	BACKLOG_DROP_BUFFERS = 1u << 0,
	BACKLOG_DROP_TOTAL_LINES = 1u << 1,
	BACKLOG_DROP_TOTAL_BYTES = 1u << 2,
	BACKLOG_DROP_TRIM = 1u << 3, /* backlog_trim_oldest() */
};
void backlog_take_drops(struct backlog *bl, struct backlog_drops *out);

/* Drop the oldest lines of the whole backlog (lowest seqs, whatever their
 * buffer) until at least `want` bytes are gone, counting each line as its
 * text + BACKLOG_LINE_OVERHEAD; for a state that must shrink to fit a
 * limit. Returns the number of lines dropped (0: the backlog holds none).
 * Counted as BACKLOG_DROP_TRIM. */
size_t backlog_trim_oldest(struct backlog *bl, size_t want);

/* ---- positions in the store (state schema 3) ----
 * With a store, a migration carries the lines the store has committed as
 * a range per buffer (its cold range: every line of that buffer's target
 * from `from` to `to` is in the store), and only the others inline. The
 * receiving backlog holds the inline lines and remembers the range; a
 * replay reads the range back from the store (sessiond/history.h). Cold
 * lines do not count against the bounds: a buffer's first drop of a line
 * it holds (newer than them) drops them all with it. */

/* The newest line of `buffer` not known to be in this worker's store (a
 * line given a seq by backlog_append(), or restored by backlog_restore()),
 * 0: none (or no such buffer). Lines after it came from
 * backlog_append_at() (store seqs). */
uint64_t backlog_unstored_seq(const struct backlog *bl, const char *buffer);
/* Restore `buffer`'s cold range [from, to] (after its lines and what it
 * dropped; a buffer without lines is created). Its lines may lie inside
 * the range (lines the sender could not prove stored). What the buffer
 * dropped meanwhile (its lines over this backlog's bounds) cuts the range
 * as any later drop does (backlog_cold_range()); the caller checks the
 * range against the dropped_seq it was sent. Returns 0, -EINVAL (from 0,
 * from > to, to UINT64_MAX), -ENOMEM. next_seq is raised above `to`. */
int backlog_restore_cold(struct backlog *bl, const char *buffer, uint64_t from,
			 uint64_t to);
/* The part of `buffer`'s cold range still valid (not dropped): 1 with
 * [*from, *to], 0 (none: both 0). */
int backlog_cold_range(const struct backlog *bl, const char *buffer,
		       uint64_t *from, uint64_t *to);
/* The newest cold seq above `after` of any buffer (0: no cold line after
 * it); *first (may be NULL): the oldest start of those ranges. O(buffers). */
uint64_t backlog_cold_after(const struct backlog *bl, uint64_t after,
			    uint64_t *first);

#endif
