/* sessiond/bouncer.h: the IRC side of a worker: sessions (one user on one
 * network: an upstream connection, attached clients, channel state, backlog),
 * unauthenticated client connections, and the listeners they arrive on.
 *
 * What sessiond/transfer.c needs is the item interface below: a migration
 * moves items (a session with all its connections, or one pending client)
 * and never looks inside them.
 *
 * Ownership: the bouncer owns every session, connection and fd it holds.
 */
#ifndef BATON_SESSIOND_BOUNCER_H
#define BATON_SESSIOND_BOUNCER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct baton_config;

struct bouncer;
struct session;
struct bouncer_item;

struct bouncer_stats {
	unsigned sessions;
	unsigned connections; /* upstream + client + pending sockets */
	unsigned clients;     /* attached clients */
	unsigned upstreams;   /* registered upstream connections */
	unsigned pending;     /* unauthenticated client connections */
	unsigned waiting;     /* sessions queued by the reconnect governor */
	unsigned tls_handshakes; /* ircs handshakes in progress */
};

/* One network's sessions and its governor (batonctl status). */
struct bouncer_network_stats {
	const char *network;   /* the governor's: valid while the bouncer is */
	unsigned sessions, connected, waiting;
	unsigned capacity;     /* addresses x max_per_addr; 0: no limit */
	unsigned addresses, throttled;
	int max_per_addr;
	const char *reason;    /* governor_wait_name() */
	char advice[512];      /* "" unless sessions wait on slots or a throttle */
};

/* cfg must outlive the bouncer. */
struct bouncer *bouncer_new(struct event_base *base,
			    const struct baton_config *cfg);
/* The event loop is over and the worker will exit: while everything is
 * still whole, cancel every host-name lookup and let evdns hand them back
 * (resolver_drain(): non-blocking loop passes). Call before freeing
 * anything the loop's callbacks use (the control channel, then b). */
void bouncer_quiesce(struct bouncer *b);
/* Closes every connection (sends nothing: used at exit). Accepts NULL.
 * Runs no event callback. */
void bouncer_free(struct bouncer *b);

/* Create every session of the config that does not exist yet and start its
 * upstream connection (spread over a short interval, not all at once). */
void bouncer_start_configured(struct bouncer *b);

/* Listening sockets from the supervisor (ownership transferred), with
 * their names ("irc ADDR:PORT" or "ircs ADDR:PORT": clients accepted on an
 * ircs listener start with a TLS handshake; names may be NULL: all
 * plaintext). Not accepted on until bouncer_accept(b, true). */
void bouncer_set_listeners(struct bouncer *b, int *fds,
			   const char *const *names, size_t n);
/* The listeners this worker serves on and their names (borrowed: valid
 * until the next bouncer_set_listeners()). Returns their count. */
size_t bouncer_listeners(const struct bouncer *b, const int **fds,
			 const char *const **names);
void bouncer_accept(struct bouncer *b, bool on);

void bouncer_stats(const struct bouncer *b, struct bouncer_stats *out);
/* The worker's message store (history.h), NULL: off. bouncer_set_history()
 * hands it over (the bouncer closes it after its sessions). */
struct history;
struct history *bouncer_history(const struct bouncer *b);
void bouncer_set_history(struct bouncer *b, struct history *h);
/* The store is configured but could not be opened (history_retry_start()
 * retries; owned: freed with the bouncer), NULL otherwise. */
struct history_retry;
struct history_retry *bouncer_history_retry(const struct bouncer *b);
void bouncer_set_history_retry(struct bouncer *b, struct history_retry *r);
/* Every network, out[i] for governor i (n: bouncer_ngovernors(); fewer
 * fills fewer). One pass over the sessions. */
void bouncer_networks_stats(struct bouncer *b,
			    struct bouncer_network_stats *out, size_t n);
/* The sessions whose SASL failed (sasl.h: sasl_failure()): the first max
 * into out[]; returns how many there are in all. */
size_t bouncer_sasl_failures(const struct bouncer *b,
			     const struct session **out, size_t max);

/* The worker's health counters (health.h), owned by the bouncer. */
struct health *bouncer_health(struct bouncer *b);

/* The worker's TLS contexts (tls_contexts.h). */
struct tls_contexts *bouncer_tls(const struct bouncer *b);

/* Connections whose TLS handshake is in progress (a migration gives them
 * handshake_budget_ms to finish before it starts). */
size_t bouncer_handshakes(const struct bouncer *b);

/* The link to the other worker of a canary (sessiond/peer.h; ownership
 * transferred; -1 drops the link). */
void bouncer_set_peer(struct bouncer *b, int fd);
/* Before exit: forward what the peer link still holds (clients the peer
 * sent us while we were leaving) back to it. */
void bouncer_peer_drain(struct bouncer *b);
/* A migration ended (either side, committed or not): clients that waited
 * for a frozen session go on (attached, forwarded or refused); after a
 * canary's partial move (both workers serve on) reconnects resume here at
 * once (each worker spends its own copy of the governors' buckets during a
 * canary: README "Canary rollouts"). */
void bouncer_migration_ended(struct bouncer *b, bool partial);

/* ---- live reload (batonctl reload, issue 11 §4) ---- */

/* What a reload did, as text lines for the operator (control.proto
 * ReloadResult): sections added and removed, changes applied now, and
 * changes that apply later with when. Owned; bouncer_reload_clear(). */
struct bouncer_reload {
	char **added, **removed, **changed, **later;
	size_t nadded, nremoved, nchanged, nlater;
};
void bouncer_reload_clear(struct bouncer_reload *r);

/* Apply `next` (the config file loaded again and checked) to the running
 * sessions, without touching the others: a new session starts; a removed
 * one says goodbye (QUIT to its network, a NOTICE and an ERROR to its
 * clients) and is freed; changed `channels` JOIN what was added and PART
 * what was removed (a channel joined by hand stays); a changed password
 * counts from the next login; other session keys at the session's next
 * connection, and so do a network's host, port, tls and tls_fingerprint.
 * What a running worker cannot change ([supervisor], [sessiond], [listen],
 * [canary] and the other keys of existing [network] sections) keeps its
 * running value until the next upgrade (config_diff_keep_running()), and
 * the result says so. A new [network] gets its reconnect governor.
 *
 * Takes ownership of next in every case (the bouncer frees it at exit or
 * at the next reload; the config passed to bouncer_new() stays the
 * caller's). Returns 0 with *res filled (zeroed by the caller), or -errno
 * with why and nothing applied: -EBUSY while any session is frozen or
 * adopted (a migration), -ENOMEM. */
/* Whether a reload applies a changed [user U/N] key at once (channels:
 * JOIN/PART), or (false) from the session's next connection to its
 * network: what bouncer_reload() does, for the *baton service to tell a
 * user (service.h). */
bool bouncer_session_key_live(const char *key);
int bouncer_reload(struct bouncer *b, struct baton_config *next,
		   struct bouncer_reload *res, char *why, size_t len);

/* ---- migration: source side ---- */

/* Snapshot of every item (sessions and live pending clients, in no
 * particular order; clients closing after QUIT are not items). *items is
 * malloc'd (the caller frees the array, not the items); NULL (and 0) when
 * out of memory. Items stay valid until released. */
size_t bouncer_items(struct bouncer *b, struct bouncer_item ***items);

/* Stop all I/O and timers of the item: no byte is read from or written to
 * its sockets afterwards. Before stopping, write what fits of pending output
 * without blocking (one attempt per socket). */
void bouncer_item_freeze(struct bouncer_item *it);

/* Serialize a frozen item (state.proto Item). *buf is malloc'd (caller
 * frees); *fds points to an array owned by the item (valid until thaw or
 * release), listing its sockets in fd_index order. Returns 0 or -errno. */
int bouncer_item_serialize(struct bouncer_item *it, uint8_t **buf, size_t *len,
			   const int **fds, size_t *nfds);

struct bouncer_shrunk {
	uint32_t sessions;     /* sessions shrunk */
	uint32_t lines;        /* backlog lines dropped */
	uint32_t clients;      /* clients disconnected */
	uint32_t member_lists; /* member lists dropped */
};

/* A migration's serialization, source side: the schema the receiver reads
 * (set by the caller: 1 = member lists inside each session, what every
 * release reads; 2 = shared lists once per chunk, sessiond/state.h), and
 * what it accumulates. */
struct bouncer_pack {
	unsigned schema;
	struct bouncer_shrunk shrunk;
	/* connections left out: TLS handshake still running */
	unsigned handshakes_left;
	/* schema 3: backlog lines left in the store (not written) */
	uint64_t lines_stored;
	/* schema 2: the member lists of the chunk being assembled, each once
	 * (opaque: the sessions' shared lists) */
	void **lists;
	size_t nlists, caplists;
	uint64_t serial;
};
/* A new chunk: no list written in it yet. */
void bouncer_pack_chunk_begin(struct bouncer_pack *pk);
/* The lists an item refers to (from bouncer_item_serialize_within()) are
 * written in this chunk (once each). 0 or -ENOMEM. */
int bouncer_pack_add_lists(struct bouncer_pack *pk, void *const *lists, size_t n);
/* The chunk's lists packed into items of at most max bytes each, to go
 * first in the chunk (*bufs[0..*n) malloc'd, caller frees; no fds). */
int bouncer_pack_lists(struct bouncer_pack *pk, size_t max, uint8_t ***bufs,
		       size_t **lens, size_t *n);
void bouncer_pack_clear(struct bouncer_pack *pk);

/* The same within `max` bytes (what one migration message carries). Every
 * session must always be able to move: one whose state is over max is
 * shrunk until it fits (sessiond/session.h session_shrink(): stalled
 * clients disconnected, oldest backlog lines dropped, then other clients,
 * then member lists), its users told, and what was given up added to
 * pk->shrunk. A governor snapshot due waits for an item with room for it.
 * -EMSGSIZE only if nothing is left to give up (a pending client's state, or
 * limits far above the message: sessiond/state.h).
 * Written in pk->schema (connections left out counted in
 * pk->handshakes_left). Schema 2: the
 * member lists the item refers to are in *lists[0..*nlists) (malloc'd,
 * caller frees the array; NULL/0 otherwise), for bouncer_pack_add_lists()
 * of the chunk the item travels in. */
int bouncer_item_serialize_within(struct bouncer_item *it, size_t max,
				  uint8_t **buf, size_t *len, const int **fds,
				  size_t *nfds, struct bouncer_pack *pk,
				  void ***lists, size_t *nlists);

/* The migration of this item aborted: resume exactly where it froze. */
void bouncer_item_thaw(struct bouncer_item *it);

/* The migration committed: close this process's copies of the sockets and
 * forget the item (sends nothing on them). A session's memory is kept
 * until bouncer_released_reap() (or the exit: bouncer_free() frees it only
 * in ASan and unoptimized builds), off the migration's critical path. */
void bouncer_item_release(struct bouncer_item *it);
/* Free the released sessions from the event loop, REAP_BATCH per turn
 * (after a migration that leaves this worker serving: a canary's move, or
 * an aborted one). */
void bouncer_released_reap(struct bouncer *b);
/* Released sessions not freed yet (tests). */
size_t bouncer_released_count(const struct bouncer *b);

/* Count of sockets held by an item. */
size_t bouncer_item_nfds(const struct bouncer_item *it);
bool bouncer_item_is_session(const struct bouncer_item *it);
/* A session item's user and network names (NULL for a pending client). */
const char *bouncer_item_user(const struct bouncer_item *it);
const char *bouncer_item_network(const struct bouncer_item *it);
/* A pending client whose TLS handshake is still running (cannot travel). */
bool bouncer_item_in_handshake(const struct bouncer_item *it);

/* ---- migration: target side ---- */

/* Decode and validate one serialized item and build its objects without any
 * I/O and without arming events. Takes ownership of fds[0..nfds) in every
 * case. Returns 0 with *out set, or -errno with a reason in err[errlen]
 * (e.g. a session that already exists here, an fd_index out of range, an fd
 * that is not a stream socket). An item of member lists (schema 2) sets
 * *out to NULL: its lists wait for the chunk's sessions and its end. */
int bouncer_item_adopt(struct bouncer *b, const uint8_t *buf, size_t len,
		       int *fds, size_t nfds, struct bouncer_item **out,
		       char *err, size_t errlen);

/* The open chunk ended (committed or aborted): the member lists it brought
 * replace this worker's (later wins) or are dropped. Idempotent. */
void bouncer_chunk_end(struct bouncer *b, bool committed);

/* Commit: register the item and arm its events and timers; lines already
 * complete in its input buffers are processed now. */
void bouncer_item_arm(struct bouncer_item *it);

/* Abort: close the item's fds and free it (it was never armed). */
void bouncer_item_discard(struct bouncer_item *it);

#endif
