/* sessiond/history.h: the worker's message store (store/store.h) wired into
 * its sessions (issue 11 §1). One store handle per worker, owned by the
 * bouncer (bouncer_set_history()); off (NULL) when [sessiond] store = off
 * and in unit tests that build a bouncer by hand.
 *
 * Seqs. With a store, a backlog line's seq IS the store's seq of that line
 * (store_append()): one sequence for every session of the store, so the
 * seqs of one session increase with gaps; a client's delivery position is
 * such a seq and means the same in the in-memory backlog (now a bounded
 * cache of the store) and in the store, in this worker, in the next
 * release, and after a crash or a full restart. The msgid of a line is
 * store_msgid_format() of its seq. A session adopted from a worker (or an
 * older release without a store) that numbered lines itself floors the
 * store's sequence above its backlog's next seq before its first append
 * (store_seq_floor()), so seqs of one session never go backwards.
 *
 * Backpressure. A store whose queue is full refuses an append (-EAGAIN):
 * the line is kept in the session's pending list (history_append() returns
 * 1), the session's network connection is held (conn_hold_lines(): nothing
 * more is read from it), and later lines of the session join the list in
 * order. When the store has room again (its `space` callback) the pending
 * lines are appended and relayed (session_relay_stored()) in order and the
 * network is read again. At HISTORY_PENDING_MAX lines pending, the
 * session's clients are not read either (a stalled store cannot make a
 * client's lines pile up in memory). A writer that commits nothing for
 * HISTORY_STALL_MS with operations queued is reported failing (stats,
 * status, log) like a failing commit. Nothing is dropped; a session frozen for a
 * migration with lines still pending puts them in its backlog with seqs of
 * its own (not stored; counted as store errors).
 *
 * Positions. A client's position is written to the store when it detaches
 * (session_set_position()) and every HISTORY_POSITION_MS while attached
 * (what its TCP acknowledged), so a client that comes back after a crash of
 * the worker (kill -9) or a restart of everything replays from there. A
 * client attaching with no position in memory asks the store
 * (asynchronously); lines after its position that the cache no longer holds
 * (a restart, the backlog bounds) are read back from the store
 * (store_query_async(), STORE_Q_REPLAY, HISTORY_REPLAY_PAGE rows a step,
 * flow-controlled like the backlog replay), then the cache replay goes on.
 * Each store page is merged with the cache's lines by seq (a line both
 * hold goes once, the cache's; a line the store lacks is not skipped).
 *
 * Migrations (state schema 3, state.h). What the store has committed
 * travels as a range per backlog buffer, not as lines; the receiving
 * backlog remembers the ranges (backlog.h, cold ranges) and reads nothing
 * at adoption. A client whose position is below a range reads the store
 * after its position; a new client name (which replays the cache) reads it
 * from the oldest range on and keeps only the rows inside its buffers'
 * ranges, so it gets the lines the sender's cache held; a client at or
 * after every range (an attached client) reads nothing.
 *
 * Errors. A line the store refuses for good (-E2BIG, -EINVAL, -ENOMEM) is
 * relayed live without a seq, logged and counted; a failing commit (the
 * store retries it) is logged when it starts and ends and counted. Counters:
 * history_stats().
 */
#ifndef BATON_SESSIOND_HISTORY_H
#define BATON_SESSIOND_HISTORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct baton_config;
struct session;
struct client;
struct history;
struct store;

/* How often attached clients' positions are written (ms). */
#define HISTORY_POSITION_MS 1000
/* Lines kept for a refusing store per session before its clients are
 * held too (history.h: Backpressure). */
#define HISTORY_PENDING_MAX 1000
/* No commit for this long with work queued: the store is failing. */
#define HISTORY_STALL_MS 5000
/* Hysteresis of the store's capabilities (draft/chathistory,
 * draft/read-marker; ISUPPORT CHATHISTORY): taken back from clients
 * (CAP DEL) only once commits have failed for this long without one
 * succeeding, offered again (CAP NEW) only once they have succeeded for
 * this long without one failing. A store that flaps (a commit failing
 * now and then, the next one succeeding) tells clients nothing; its
 * status says failing as it happens (history_stats()). */
#define HISTORY_CAPS_DEL_AFTER_MS 5000
#define HISTORY_CAPS_NEW_AFTER_MS 10000
/* Read-marker writes one session may have queued at a time. */
#define HISTORY_MARKER_BATCH 16
/* Rows per store read of a replay. */
#define HISTORY_REPLAY_PAGE 128

/* The store's options from the config (paths resolved); the strings point
 * into `path_buf` or cfg. -EINVAL with a message when off. */
struct store_options;
int history_options(const struct baton_config *cfg, struct store_options *o,
		    char *path_buf, size_t path_len);
/* --check: open the store (creating the file or the tables) and close it.
 * 0, or -errno with the reason in err. Off: 0. */
int history_check(const struct baton_config *cfg, char *err, size_t errlen);

/* Open the store for a worker: NULL with err set when it cannot be opened
 * (or the config says off: err empty). */
struct history *history_open(struct event_base *base,
			     const struct baton_config *cfg, char *err,
			     size_t errlen);
/* history_open() failed (a database server down, a lock): the worker runs
 * without the store (lines relayed live and kept in the backlog only; the
 * history capabilities are not offered to clients that connect meanwhile)
 * and tries again, HISTORY_RETRY_MIN_MS doubling up to HISTORY_RETRY_MAX_MS
 * (each attempt on a thread of its own: opening blocks, up to PostgreSQL's
 * connect timeout, and the worker's loop must not);
 * once it opens, bouncer_set_history(b, ...) and the retry ends (freed by
 * the bouncer). The reason shows in status (history_retry_why()). */
#define HISTORY_RETRY_MIN_MS 1000
#define HISTORY_RETRY_MAX_MS 60000
struct bouncer;
struct history_retry;
struct history_retry *history_retry_start(struct event_base *base,
					  const struct baton_config *cfg,
					  struct bouncer *b, const char *why);
const char *history_retry_why(const struct history_retry *r);
void history_retry_free(struct history_retry *r);
/* Commit what is queued and close (logs what could not be committed). */
void history_close(struct history *h);
struct store *history_store(struct history *h);

/* Store one line of session s (the part of session_store_and_relay_tags()
 * before the relay). Returns 0 with *seq (the caller puts the line in the
 * backlog with that seq and relays it), 1 (pending: history relays it
 * later through session_relay_stored()), or -errno (not stored: the
 * caller relays it live, unnumbered). `except` may be NULL. */
int history_append(struct history *h, struct session *s, const char *buffer,
		   const char *tags, const char *line, int64_t time_ms,
		   struct client *except, unsigned copies, uint64_t *seq);
/* A session is frozen for a migration or freed: its pending lines go to its
 * backlog now (with backlog seqs) and are relayed; its per-session data
 * is dropped. */
void history_session_flush(struct history *h, struct session *s);
void history_session_free(struct history *h, struct session *s);

/* A client position for the store (detach, QUIT). */
void history_set_position(struct history *h, struct session *s,
			  const char *client_id, uint64_t seq);

/* The replay of an attaching (or re-armed) client: true when history
 * took it over (a store lookup or a store replay first; it continues
 * with client_replay_continue()); false: replay from the cache as usual. */
bool history_replay_begin(struct history *h, struct client *cl, bool attach);
/* The pump asks: a store step is running or due for cl (true: wait). */
bool history_replay_busy(struct history *h, struct client *cl);
/* cl goes away: cancel its store query. */
void history_client_forget(struct history *h, struct client *cl);

/* The store's name of a buffer (RFC 1459 casefolding, as the backlog
 * compares them), at most n - 1 bytes. */
void history_fold_target(const char *in, char *out, size_t n);

/* The msgid of seq (out[0] = '\0' with no store): what clients with
 * message-tags get as the `msgid` tag of every backlog line, live or
 * replayed (client.c). */
#define STORE_MSGID_TAG_LEN 26 /* store.h STORE_MSGID_LEN */
void history_msgid(const struct history *h, uint64_t seq,
		   char out[STORE_MSGID_TAG_LEN]);

/* ---- read markers (draft/read-marker; chathistory.h answers MARKREAD) ----
 * A session's markers are read from the store once (STORE_Q_MARKERS,
 * asynchronously) when a client attaches, and kept in memory, all of them:
 * at most HISTORY_MARKERS per session (a set for one more target is
 * refused), so a get never needs the store. A set changes the memory and
 * is written to the store behind it, HISTORY_MARKER_BATCH at a time per
 * session (the next batch when the last is committed; a marker set many
 * times meanwhile is written once; what is left when the session goes is
 * written then): one session's markers cannot fill the store's queue
 * that every session's lines need. A client with draft/read-marker waits for them before it
 * attaches (history_markers_wait()), so its burst carries a MARKREAD for
 * every channel before RPL_ENDOFNAMES. */
#define HISTORY_MARKERS 1000
/* Start loading s's markers (nothing if loaded or loading). */
void history_markers_load(struct history *h, struct session *s);
/* A pending client routed to s: true when it must wait for s's markers (it
 * is listed; client_route() runs again for it once they are in, if it is
 * still parked). */
bool history_markers_wait(struct history *h, struct session *s,
			  struct client *cl);
/* target's marker: 1 and *t, 0 (none: "*"), -EAGAIN (not loaded yet). */
int history_marker_get(struct history *h, struct session *s,
		       const char *target, int64_t *t);
/* A client's MARKREAD set: 1 (newer: kept, written behind, *t is it), 0
 * (not newer: *t is the marker kept), -EAGAIN (the markers are not loaded
 * yet), -ENOSPC (HISTORY_MARKERS targets already), -ENOMEM. */
int history_marker_set(struct history *h, struct session *s,
		       const char *target, int64_t *t);

/* Whether clients are offered what needs the store (draft/chathistory,
 * draft/read-marker): not while commits fail. Each change of it calls
 * client_store_caps_refresh() for the bouncer set with
 * history_set_bouncer() (CAP NEW/DEL to clients). */
bool history_available(const struct history *h);
struct bouncer;
void history_set_bouncer(struct history *h, struct bouncer *b);

struct history_stats {
	const char *backend;
	uint64_t appended, pending_now, paused_sessions, refused, errors,
		commit_failures, replay_queries, durable_seq, queued;
	bool failing; /* a commit is failing now, or stalled */
	bool stalled; /* nothing committed for HISTORY_STALL_MS, work queued */
};
void history_stats(const struct history *h, struct history_stats *out);

/* A migration to a receiver that does not read schema 3 (a rollback):
 * the lines of s's cold ranges (backlog.h) must travel inline, so they
 * are read from the store now, synchronously (bounded: at most what the
 * backlog's total bounds leave room for beside the lines it holds, the
 * newest kept; the read waits on the database, once per session with
 * cold ranges, only for such migrations). *out sorted by (target, seq),
 * malloc'd (history_cold_lines_free()). 0 (*n may be 0: nothing cold),
 * -EIO (the store could not be read: logged; the lines stay in the
 * store, the receiver's cache lacks them), -ENOMEM. */
struct state_cold_line;
int history_cold_lines(struct history *h, struct session *s,
		       struct state_cold_line **out, size_t *n);
void history_cold_lines_free(struct state_cold_line *v, size_t n);

/* Tests: whether a session has lines pending for the store. */
size_t history_pending(const struct history *h, const struct session *s);

#endif
