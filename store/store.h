/* store/store.h: the durable message store (issue 11 §1). Lines a session
 * receives or sends, per-client delivery positions and read markers, kept
 * in SQLite (default: one database file, WAL) or PostgreSQL (several hosts
 * sharing one store). No IRC session, socket or event-loop knowledge: the
 * caller names things with strings and gets a file descriptor to watch.
 *
 * Names. A `network` is the caller's key for one history namespace (in
 * baton: "user/network", one session); a `target` is a buffer in it (a
 * channel or a query; the caller passes the same spelling every time, e.g.
 * casefolded); a `client` is a client name with a delivery position. The
 * store compares these bytes exactly.
 *
 * Sequence numbers. Every queued operation (an append, a position, a read
 * marker) gets a seq from one per-store sequence, strictly increasing in
 * the order of the calls on one store handle. Seqs are unique across every
 * handle that ever opened the same database, also across crashes and
 * hosts: the store reserves them in blocks that are committed before any
 * seq of the block is handed out, so a seq (and so a msgid) given out once
 * is never given to another message, even if its append was lost in a
 * crash before it became durable. There are gaps (positions and markers use
 * seqs; a crash abandons the rest of a block). A message's msgid is derived
 * from its seq and the database's random id (store_msgid_format()): unique,
 * stable, opaque to clients.
 *
 * Durability. store_append() and the setters never touch the disk: they
 * queue the operation in memory and return its seq at once. A writer thread
 * commits the queue in batches (every operation queued while a commit runs
 * goes into the next one, up to batch_max). "Durable up to N" means every
 * operation with seq <= N queued on this handle is committed (SQLite with
 * synchronous=FULL: on disk; PostgreSQL: committed by the server). The
 * caller learns it from store_durable_seq() or the `durable` callback,
 * called from store_dispatch() when store_fd() is readable: an eventfd,
 * so a libevent loop watches it with EV_READ|EV_PERSIST and never blocks on
 * the disk.
 *
 * Backpressure. The queue is bounded (queue_ops, queue_bytes; an empty
 * queue takes one operation of any size). A full queue
 * makes store_append() and the setters return -EAGAIN and queue nothing;
 * when the queue has drained to half, the `space` callback runs (once per
 * refusal episode). Nothing queued is ever dropped: a commit that fails
 * (disk full, PostgreSQL gone) is retried with backoff, the `error`
 * callback says why, durable stops advancing and the queue fills up to its
 * bound, so the caller sees -EAGAIN instead of silent loss. store_close()
 * says how many operations it could not commit.
 *
 * Reads. store_query(), store_get_position(), store_get_read_marker() and
 * store_stats() see only durable data and run on a second database
 * connection of their own, synchronously: they wait on the disk (a bounded
 * indexed query, at most STORE_QUERY_MAX rows). An event loop uses
 * store_query_async() instead: the query runs on the store's query thread
 * and its callback from store_dispatch(). They never wait for the writer
 * (SQLite WAL readers do not block the writer, nor it them).
 *
 * Threading and ownership. One thread uses a handle (store_open() ...
 * store_close()); store_query(), store_get_*() and store_stats() may also
 * be called from other threads (they serialize on the read connection).
 * The writer thread and the query thread are the store's own; callbacks
 * run only from store_dispatch(), on the caller's thread. Strings passed in
 * are copied; the results of queries belong to the caller
 * (store_result_free()).
 *
 * Library code: no logging, no exits; -errno returns, a message in `err`
 * where a human needs one. Allocation failures are -ENOMEM (common/util.h).
 */
#ifndef BATON_STORE_STORE_H
#define BATON_STORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct store;

/* Bounds. A line longer than STORE_LINE_MAX (the longest line a worker
 * accepts, CONN_MAX_LINE in sessiond/conn.h: IRCv3 tags + 512) or a name
 * longer than STORE_NAME_MAX (common/names.h) is refused with -E2BIG; at
 * the bound it is stored.
 * Strings must not contain NUL (they are C strings) and names must not be
 * empty (-EINVAL). */
#define STORE_LINE_MAX 8704
#define STORE_NAME_MAX 510
#define STORE_COMMAND_MAX 32
/* Rows one query returns at most; a larger limit is clamped to it. */
#define STORE_QUERY_MAX 1000
/* A msgid's length, NUL included ("<8 hex>-<16 hex>"). */
#define STORE_MSGID_LEN 26

enum store_backend {
	STORE_SQLITE = 0,   /* url: a file path */
	STORE_POSTGRES = 1, /* url: a libpq connection string or URI */
};

struct store_options {
	enum store_backend backend;
	const char *url;
	/* Queue bounds (0: default 65,536 operations / 32 MiB). */
	size_t queue_ops;
	size_t queue_bytes;
	/* Operations per commit at most (0: default 4,096). */
	size_t batch_max;
	/* Seqs reserved per block (0: default 65,536). Tests make it small. */
	uint64_t seq_block;
	/* Retention defaults for every network (store_set_retention() overrides
	 * one network): lines older than max_age_ms (by their time_ms) and the
	 * oldest lines beyond max_bytes (of stored raw line bytes) are deleted;
	 * 0 disables either. */
	int64_t max_age_ms;
	uint64_t max_bytes;
	/* How often the writer checks retention when idle (0: 60,000 ms), and
	 * rows deleted per step at most (0: 1,000; the writer goes back to the
	 * queue between steps). */
	int64_t retention_interval_ms;
	size_t retention_batch;
	/* How long a statement waits for a lock another connection holds
	 * before it fails (and the batch is retried): SQLite's busy timeout,
	 * PostgreSQL's lock_timeout (0: 10,000 ms). */
	int lock_timeout_ms;
	/* Group commit: the writer gathers operations for up to this long
	 * after the first one of a batch arrived before it commits (unless
	 * batch_max are queued, a refusal waits for room, or the store
	 * closes): fewer, bigger commits for that much later durability
	 * (0: commit as soon as anything is queued). */
	int commit_window_ms;
	/* SQLite synchronous=NORMAL instead of FULL: a commit survives the
	 * process's crash but may be lost with the machine's power (and with
	 * it a seq reservation: msgids handed out before the loss may then be
	 * given again). */
	bool sqlite_normal_sync;
	/* Tests only: create or migrate the schema only up to this version
	 * (0: the newest). */
	int schema_version;
};

struct store_callbacks {
	/* Every operation with seq <= durable_seq is committed. */
	void (*durable)(void *arg, uint64_t durable_seq);
	/* An operation was refused with -EAGAIN; there is room again. */
	void (*space)(void *arg);
	/* A commit failed and will be retried (msg says why), or (msg NULL)
	 * commits succeed again. */
	void (*error)(void *arg, const char *msg);
};

/* Open (creating the schema, or migrating an older one) and start the
 * writer thread. NULL on failure with errno set and a message in err:
 * ENOTSUP "not a baton store" for a foreign or corrupt database, a schema
 * newer than this build...; EHOSTUNREACH only for a PostgreSQL server
 * that could not be reached (refused, timed out, unknown host, starting
 * up: worth retrying), EIO for one that refused us (authentication, a
 * missing database or role) or a conninfo it cannot use. cb may be NULL. */
struct store *store_open(const struct store_options *opts,
			 const struct store_callbacks *cb, void *cb_arg,
			 char *err, size_t errlen);
/* Commit what is queued (one attempt per batch if commits fail), stop the
 * writer, close. Returns the number of queued operations that could not be
 * committed (0 normally). Accepts NULL. */
size_t store_close(struct store *st);

/* The eventfd to watch for reading; store_dispatch() reads it and runs the
 * callbacks (from the caller's thread). With libevent:
 *
 *   static void on_store(evutil_socket_t fd, short what, void *arg)
 *   {
 *           store_dispatch(arg);
 *   }
 *   ev = event_new(base, store_fd(st), EV_READ | EV_PERSIST, on_store, st);
 *   event_add(ev, NULL);
 *
 * (event_free() it before store_close(): the fd is the store's.) */
int store_fd(const struct store *st);
void store_dispatch(struct store *st);

/* ---- writes: queued, never blocking ---- */

struct store_msg {
	uint64_t seq;       /* assigned by store_append() */
	int64_t time_ms;    /* server-time, ms since the epoch */
	const char *network;
	const char *target;
	const char *sender;  /* nick!user@host, nick or server name ("" ok) */
	const char *command; /* PRIVMSG, NOTICE, ... */
	const char *line;    /* the raw line, tags included, no CRLF */
};

/* Queue a message. Returns its seq (> 0) in *seq and 0, or -EAGAIN (queue
 * full, or seqs not yet reserved: retry after the `space` callback),
 * -E2BIG, -EINVAL, -ENOMEM, -ESHUTDOWN (closing). m->seq is ignored. */
int store_append(struct store *st, const struct store_msg *m, uint64_t *seq);
/* Queue a client name's delivery position on a network: it never moves
 * backwards (a lower seq than the stored one is ignored). Same returns;
 * *op (may be NULL) is the operation's seq for durability. */
int store_set_position(struct store *st, const char *network,
		       const char *client, uint64_t seq, uint64_t *op);
/* Queue a read marker (draft/read-marker: a timestamp per target): it never
 * moves backwards. Same returns. */
int store_set_read_marker(struct store *st, const char *network,
			  const char *target, int64_t time_ms, uint64_t *op);
/* Per-network retention (max_age_ms, max_bytes as in store_options; a
 * negative value: the default). Kept in memory, not in the database.
 * 0, -EINVAL, -ENOMEM. */
int store_set_retention(struct store *st, const char *network,
			int64_t max_age_ms, int64_t max_bytes);
/* Several hosts: a network that arrives from another host must get seqs
 * above what it had there. Every seq handed out after this call is above
 * `seq` (appends may return -EAGAIN until a block above it is reserved).
 * A floor the database cannot go above (its seqs are signed 64-bit) leaves
 * every append refused with -EAGAIN, the `error` callback saying why. */
void store_seq_floor(struct store *st, uint64_t seq);

uint64_t store_durable_seq(const struct store *st);
/* Operations queued and not yet committed. */
size_t store_queued(const struct store *st);

/* Blocking, for tests, tools and shutdown: wait until everything queued so
 * far is committed and a retention pass requested by store_retention_now()
 * has finished (0), or timeout_ms passes (-ETIMEDOUT). */
int store_sync(struct store *st, int64_t timeout_ms);
/* Ask the writer for a full retention pass now (in bounded steps). */
void store_retention_now(struct store *st);

/* ---- msgids ---- */

void store_msgid_format(const struct store *st, uint64_t seq,
			char out[STORE_MSGID_LEN]);
/* 0 and the seq, or -ENOENT (not a msgid of this store). */
int store_msgid_parse(const struct store *st, const char *msgid,
		      uint64_t *seq);

/* ---- reads: durable data, synchronous ---- */

enum store_query_kind {
	STORE_Q_LATEST,  /* newest, after ref if ref is set */
	STORE_Q_BEFORE,  /* before ref (exclusive), closest first */
	STORE_Q_AFTER,   /* after ref (exclusive), closest first */
	STORE_Q_AROUND,  /* limit/2 before ref, the rest at or after it */
	STORE_Q_BETWEEN, /* between ref and ref2 (exclusive), closest to ref */
	STORE_Q_TARGETS, /* targets with a message between ref and ref2 */
	STORE_Q_REPLAY,  /* every target of the network, seq > after_seq */
	/* The delivery position of client `target` (store_get_position()) as
	 * one row whose seq is it (no row: none stored); for an event loop,
	 * through store_query_async(). */
	STORE_Q_POSITION,
	/* Every read marker of the network: targets[] with the marker as
	 * last_time_ms, by target name (no limit; one per target). */
	STORE_Q_MARKERS,
};

enum store_ref_kind { STORE_REF_NONE, STORE_REF_TIME, STORE_REF_MSGID };
struct store_ref {
	enum store_ref_kind kind;
	int64_t time_ms;   /* STORE_REF_TIME */
	const char *msgid; /* STORE_REF_MSGID */
};

struct store_query {
	enum store_query_kind kind;
	const char *network;
	const char *target; /* not for TARGETS, REPLAY; POSITION: the client */
	struct store_ref ref, ref2;
	uint64_t after_seq; /* REPLAY */
	size_t limit;       /* 0: nothing; above STORE_QUERY_MAX: clamped */
};

struct store_row {
	uint64_t seq;
	int64_t time_ms;
	char msgid[STORE_MSGID_LEN];
	char *target, *sender, *command, *line;
};
struct store_target_row {
	char *target;
	int64_t last_time_ms; /* its newest message in the range */
};

/* Messages always in increasing (time_ms, seq) order, except REPLAY: seq
 * order (append order, what a reattaching client missed). Order among
 * messages: by server-time, ties by seq. TARGETS: by last_time_ms
 * increasing; with ref before ref2 the oldest `limit`, else the newest. */
struct store_result {
	size_t nrows;
	struct store_row *rows;
	size_t ntargets;
	struct store_target_row *targets;
};

/* 0 (an unknown network or target gives an empty result), -ENOENT (a
 * msgid ref that is not one of this store's, or not of that target),
 * -EINVAL (a missing ref where the kind needs one, bad names), -EIO with
 * a message in err, -ENOMEM. */
int store_query(struct store *st, const struct store_query *q,
		struct store_result *out, char *err, size_t errlen);
void store_result_free(struct store_result *r); /* the rows; r stays */

/* The same query off the caller's thread: it runs on the store's query
 * thread and the callback runs from store_dispatch() (store_fd() becomes
 * readable), with store_query()'s return in rc and err. The result is the
 * callback's: it frees it with store_result_free() (or keeps it). At most
 * STORE_QUERY_JOBS queries wait at once; more: -EAGAIN. Returns 0 and a
 * nonzero *id for store_query_cancel(), -EAGAIN, -ENOMEM, -ESHUTDOWN. The
 * query (strings included) is copied. */
#define STORE_QUERY_JOBS 256
typedef void (*store_query_cb)(void *arg, int rc, struct store_result *res,
			       const char *err);
int store_query_async(struct store *st, const struct store_query *q,
		      store_query_cb cb, void *arg, uint64_t *id);
/* The callback of query `id` will not run (its arg may go away); a query
 * already running finishes and its result is dropped. Unknown or finished
 * ids are ignored. store_close() cancels every query still waiting. */
void store_query_cancel(struct store *st, uint64_t id);

/* Delete a network's history: every message, delivery position and read
 * marker of it (`batonctl user del --purge`). Blocking (a transaction on
 * the read connection), for tools; a network that is written meanwhile
 * keeps what is committed after it. 0 with *lines deleted (0 for an
 * unknown network), -EINVAL, -EIO with a message in err. */
int store_purge(struct store *st, const char *network, uint64_t *lines,
		char *err, size_t errlen);

/* 0 and the value, -ENOENT (none stored), -EIO, -EINVAL. */
int store_get_position(struct store *st, const char *network,
		       const char *client, uint64_t *seq);
int store_get_read_marker(struct store *st, const char *network,
			  const char *target, int64_t *time_ms);

struct store_stats {
	/* Writer counters of this handle. */
	uint64_t commits;         /* batches committed */
	uint64_t ops_committed;
	uint64_t batch_max_seen;
	uint64_t batch_hist[16];  /* commits by ops: [i] = 2^i .. 2^(i+1)-1 */
	uint64_t commit_failures;
	uint64_t refused_full;    /* -EAGAIN returns */
	uint64_t retention_deleted;
	/* From the database. */
	uint64_t lines;      /* stored messages */
	uint64_t line_bytes; /* their raw lines' bytes */
	uint64_t disk_bytes; /* SQLite: the file + WAL; PostgreSQL: the tables
			      * and indexes (pg_total_relation_size) */
};
int store_stats(struct store *st, struct store_stats *out, char *err,
		size_t errlen);

#endif
