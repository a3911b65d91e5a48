/* sessiond/backlog.h: the per-session message history. One bounded ring per
 * buffer (a channel or a private query, keyed case-insensitively); every line
 * gets a session-wide sequence number, strictly increasing, so a client's
 * delivery position is a single number: "every line with seq > pos is new".
 *
 * The number of buffers is bounded too (every distinct sender of a private
 * message makes one): a store that creates a buffer beyond the bound first
 * drops a whole buffer, the least recently stored query buffer (a name that
 * is not a channel), or if there is none the least recently stored channel
 * buffer. Seqs are unaffected (a dropped line is simply not replayed).
 *
 * Library code: no logging, no exits. Allocation failures return -ENOMEM.
 */
#ifndef BATON_SESSIOND_BACKLOG_H
#define BATON_SESSIOND_BACKLOG_H

#include <stddef.h>
#include <stdint.h>

struct backlog;

/* Default bound on the number of buffers of one backlog. */
#define BACKLOG_MAX_BUFFERS 1000

/* max_lines: per buffer (older lines are dropped first); at most
 * BACKLOG_MAX_BUFFERS buffers. next_seq starts at 1. */
struct backlog *backlog_new(size_t max_lines);
void backlog_free(struct backlog *bl); /* accepts NULL */
/* Change the bound on buffers (at least 1; 0 counts as 1). Applies from the
 * next store that creates a buffer. */
void backlog_set_max_buffers(struct backlog *bl, size_t max_buffers);
size_t backlog_nbuffers(const struct backlog *bl);

/* Append a line (no CRLF) to `buffer`, creating the buffer on first use.
 * Returns the seq assigned (> 0), or 0 on allocation failure. */
uint64_t backlog_append(struct backlog *bl, const char *buffer, int64_t time_ms,
			const char *line);

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

#endif
