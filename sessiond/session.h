/* sessiond/session.h: the objects of the sessiond core shared by session.c,
 * upstream.c, client.c, state.c and bouncer.c. Internal to the core: the
 * rest of the worker (main.c, control_channel.c, transfer.c) only sees
 * bouncer.h. The structures of a session's connections are in client.h and
 * upstream.h, a migration item in item.h.
 *
 * Ownership: the bouncer owns sessions, pending clients and closing clients
 * (they QUIT and are finishing their output: client.c); a session owns its
 * upstream, its attached clients, its channels and its backlog; an upstream
 * or client owns its conn (and so its fd). A channel holds one reference to
 * its member list, which is shared with the other sessions of the network
 * in that channel and indexed by the bouncer's store (sessiond/chanstore.h).
 *
 * Dying objects: a conn that dies inside a callback only reports it later
 * from the event loop (conn.h), where its owner frees it; nothing here frees
 * an object that may be on the call stack.
 */
#ifndef BATON_SESSIOND_SESSION_H
#define BATON_SESSIOND_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "common/clock.h"
#include "common/names.h"
#include "common/util.h"
#include "sessiond/backlog.h"
#include "sessiond/bouncer.h"
#include "sessiond/chanstore.h" /* shared member lists */
#include "sessiond/governor.h"
#include "sessiond/health.h"
#include "sessiond/client.h" /* the connections a session owns */
#include "sessiond/item.h"
#include "sessiond/pb_unknown.h"
#include "sessiond/upstream.h"

struct event;
struct event_base;
struct baton_config;
struct config_session;
struct conn;
struct irc_msg;

#define BATON_SERVER_NAME "baton"

/* ---- bounds of one session's state ----
 * Everything a user, a stranger or the network can grow is bounded, so that
 * every session can always migrate: sessiond/state.h adds the worst cases
 * up against one migration message. Configurable bounds come from the
 * config ([sessiond], docs/config.md); these are fixed. */
#define SESSION_MAX_ISUPPORT 100       /* ISUPPORT tokens kept (more: ignored) */
#define SESSION_MAX_ISUPPORT_TOKEN 510 /* a longer token is ignored: no 005
					* line of at most 512 bytes has one */
#define SESSION_MAX_CHANNEL_NAME NAMES_MAX_LEN /* longer channel names: not
					* tracked (no JOIN line of 512 bytes has one) */
#define SESSION_MAX_POSITIONS 64       /* client names with a stored position */
#define SESSION_MAX_CLIENT_NAME 64     /* bytes of a client name (@NAME) */
/* member_list_bytes counts each member as its nick plus this (at least its
 * serialized size: state.h). */
#define SESSION_MEMBER_COST CHANSTORE_MEMBER_COST
/* Notices about backlog lines dropped by the session bounds: at most one
 * per session per this long (counting what was dropped meanwhile). */
#define SESSION_DROP_NOTICE_MS 60000
/* A client with more unwritten output than this (what a replay queues at
 * most at once) has stopped reading: session_shrink() disconnects such
 * clients before it touches the backlog. */
#define SESSION_STALLED_OUTPUT (256u << 10)

struct session_limits {
	size_t max_clients;         /* attached clients */
	size_t max_channels;        /* channels tracked */
	size_t max_channel_members; /* members tracked per channel */
	size_t member_list_bytes;   /* all member lists together */
	struct backlog_limits backlog;
};
/* The bounds of cfg (NULL, or keys left 0 in a config built by hand: the
 * defaults of common/config.c). A session with a store open keeps at most
 * backlog_cache_lines lines a buffer instead (session_new(): the backlog
 * is the store's cache, history.h). */
void session_limits_get(const struct baton_config *cfg, struct session_limits *out);

/* ---- channels ---- */

struct channel {
	char *name;
	char *topic;        /* NULL: none */
	char *topic_setter;
	int64_t topic_time;
	char *modes;        /* "+nt" (letters only), NULL: unknown */
	/* The member list, shared with every session of this network in the
	 * channel (sessiond/chanstore.h; one reference held). NULL: none yet,
	 * untracked, or forgotten (our PART, a disconnect). */
	struct shared_channel *sh;
	bool joined;
	/* The member bounds were reached (max_channel_members, or the
	 * session's member_list_bytes): the list was dropped and no member is
	 * added until it is cleared (a new JOIN of ours, a reconnect). */
	bool members_untracked;
	/* This session's view of the list's size, counted against its
	 * member_list_bytes: sh->member_bytes when this session last applied
	 * a change to it (its bounds are checked then; real memory is paid
	 * once per list). */
	size_t member_bytes;
	/* Custody's resync (session_resync()) asked NAMES: the next NAMES
	 * reply read for this channel replaces the list, since a PART or QUIT
	 * lost with a crashed worker would leave a member there for good.
	 * names_seen: the casefolded nicks of that reply so far (owned; NULL
	 * until its first 353); at its 366 every member not in it is
	 * removed. Not migrated (a resync that moves is only partly done). */
	bool names_resync;
	struct strmap *names_seen;
	struct session *s;    /* owner (NULL: a channel outside a session) */
	struct health_channel_count health; /* differential delivery (health.h) */
	struct pb_unknown unknown;
};

struct position {
	char *client_id;
	uint64_t seq;
};

/* ---- session ---- */

struct session {
	struct bouncer *b;
	char *key; /* "user/network" */
	char *user, *network;
	char *nick;
	char *userhost; /* "user@host" of our prefix, NULL: unknown */
	char *user_modes;
	char **isupport;
	size_t nisupport;
	char **caps; /* upstream caps acknowledged */
	size_t ncaps;
	struct channel **channels;
	size_t nchannels;
	struct backlog *backlog;
	struct position *positions;
	size_t npositions;
	struct session_limits lim; /* from the config at creation */
	size_t member_bytes;       /* of every channel's member list */
	/* Backlog lines dropped by the session bounds since the last notice
	 * (SESSION_DROP_NOTICE_MS) and when that notice went out. */
	struct backlog_drops drops;
	int64_t drop_notice_ms;
	/* Last "not tracking a channel" log line and notice (at most one per
	 * SESSION_DROP_NOTICE_MS: a network JOINing us to thousands of
	 * channels must not make a log line per line it sends). */
	int64_t untracked_notice_ms;
	struct upstream *up; /* NULL while disconnected */
	/* custody's poison-pill quarantine (sessiond/checkpoint.h): the worker
	 * crashed handling this session's input too often; never reconnected */
	bool quarantined;
	/* custody: its record is due at the end of this loop iteration
	 * although its sockets did not change (checkpoint_session_changed()) */
	bool ckpt_due;
	/* custody: the dead worker handled lines of this network after the
	 * session's record; channel state is asked again once armed
	 * (session_resync()) */
	bool resync;
	size_t resync_next; /* the next channel to ask about */
	/* The network's host name being resolved (resolver.h) before a
	 * connect: it holds governor slot lookup_slot (-1: none) meanwhile.
	 * Cancelled when the session is frozen (it then connects again when
	 * armed, here or in the target) or freed. NULL: none. */
	struct resolver_lookup *lookup;
	int lookup_slot;
	struct client **clients;
	size_t nclients;
	/* Queries clients sent the network (WHO, NAMES, WHOIS, MODE #chan,
	 * TOPIC #chan), oldest first: their replies go to the client that
	 * asked, not to every client of the session (session_query_note(),
	 * session_reply_route()). Owned; NULL when none pending. Not
	 * migrated: after a migration those replies reach every client. */
	struct session_query *queries;
	size_t nqueries;
	/* The client of a query answered just now whose optional follower
	 * (329 after 324, 333 after 332) may come next (serial, 0: none). */
	uint64_t reply_follow_serial;
	char *away;
	/* CLOCK_MONOTONIC ms; 0: no attempt scheduled. While the session waits in its network's
	 * governor queue this stays the time it became due (its place in the
	 * queue, also after a migration). */
	int64_t reconnect_at_ms;
	uint32_t reconnect_failures;
	/* Why the network last refused our SASL (sasl.h), NULL: none since
	 * the last success; and when (wall-clock ms, a date). Migrated. */
	char *sasl_failure;
	int64_t sasl_failure_at_ms;
	/* Queued for a connection slot in the governor (bouncer.c); never
	 * queued while frozen or adopted. */
	struct governor_waiter gov_wait;
	/* The enum governor_wait its attached clients were last told about
	 * (bouncer.c: one NOTICE per reason while it waits; 0: none). */
	int gov_told;
	/* Source address of the last connection (preferred next time, so a
	 * session keeps its host on the network when it can). NULL: none. */
	char *source_addr;
	char *server_name, *welcome, *myinfo;
	struct event *reconnect_timer;
	/* health.h: the interval since which a client is attached without a
	 * gap (or the session armed); its channels' deliveries count from the
	 * interval after. */
	uint32_t health_gen;
	struct bouncer_item item;
	struct pb_unknown unknown;
	/* Its part of the message store (sessiond/history.h; owned there,
	 * NULL: none yet or no store). Not migrated. */
	struct history_session *hist;
};

/* ---- bouncer internals (bouncer.c) ---- */

struct event_base *bouncer_base(const struct bouncer *b);
/* The worker's shared member lists (chanstore.h), owned by the bouncer. */
struct chanstore *bouncer_chanstore(struct bouncer *b);
const struct baton_config *bouncer_config(const struct bouncer *b);
/* ircs handshakes in progress (each holds an SSL object and costs a
 * signature): counted in all and per address so that a flood of half-open
 * TLS connections is refused at [listen] max_tls_handshakes(_per_ip)
 * instead of exhausting the worker. cl's handshake ended (done or cl is
 * being freed): give its slot back. */
void bouncer_tls_handshake_end(struct bouncer *b, struct client *cl);
/* The key of a peer address in every per-address bound ([listen]
 * max_pending_per_ip, max_tls_handshakes_per_ip) and the failed-login
 * throttle: IPv4 as is; IPv6 its /64 ("2001:db8:1:2::/64": one host or
 * customer has a whole /64, so whole addresses would be 2^64 "addresses");
 * an IPv4-mapped IPv6 address its IPv4 one; "local" for AF_UNIX; "" if
 * unknown (len 0, another family). */
void bouncer_addr_key(const struct sockaddr *sa, socklen_t len,
		      char out[BOUNCER_ADDR_KEY_LEN]);
/* Failed-login throttle (throttle.h), per client address key and per user
 * name (user may be NULL: a malformed ident; unconfigured names longer
 * than 64 bytes share one key).
 * wait: ms until an attempt may be checked (0: now).
 * begin: cl's password check is about to start. If a key of it is busy
 * (its checks in flight put it on probation) the login waits: returns 1,
 * cl is listed and client_pending_resume() follows from the loop once a
 * check of its keys ended (hold its lines meanwhile). Else returns 0 with
 * the check counted per key: in flight, or (a key on probation) as a
 * failure at once, refunded if right; so guesses in parallel get no more
 * checks than guesses in a row, and right logins in parallel are never
 * charged. -ENOMEM: nothing counted.
 * result: the outcome of the check begun: a failure counts where it was not
 * counted yet; a success refunds the address's charge and forgets the user
 * name's failures. Without a begin (nothing recorded in cl), a failure
 * counts for cl->addr.
 * drop: cl's login ends without an outcome (freed, frozen, or its check
 * could not be submitted): what begin counted in flight is uncounted and a
 * charge refunded if refund (a migration freeze, the check runs again) or
 * kept (cl is freed: no one learns the outcome); cl stops waiting. Safe to
 * call at any time. */
int64_t bouncer_login_wait(struct bouncer *b, const char *addr,
			   const char *user);
int bouncer_login_begin(struct bouncer *b, struct client *cl,
			const char *user);
void bouncer_login_result(struct bouncer *b, struct client *cl, bool ok);
void bouncer_login_drop(struct bouncer *b, struct client *cl, bool refund);
/* Check password against hash off the loop (authpool.h) for cl: sets
 * cl->auth_id; client_auth_done() follows from the loop unless cl is freed
 * or cancelled first. 0, -EAGAIN (queue full), -ENOMEM. */
int bouncer_auth_submit(struct bouncer *b, struct client *cl,
			const char *password, const char *hash);
/* Forget cl's check in flight (its result will be ignored). */
void bouncer_auth_cancel(struct bouncer *b, struct client *cl);
struct session *bouncer_find_session(struct bouncer *b, const char *user,
				     const char *network);
/* A pending client authenticated and attached, or died: drop it from the
 * pending list (does not free). */
void bouncer_forget_pending(struct bouncer *b, struct client *cl);
struct session *bouncer_session_by_key(struct bouncer *b, const char *key);
/* The canary peer link (sessiond/peer.h), if this worker has one. */
bool bouncer_has_peer(const struct bouncer *b);
/* Hand verified pending client cl (fwd_* set) to the peer: frozen,
 * serialized with its identity, sent with its socket, freed here. If it
 * cannot be sent, cl is told the session is not available and closed. */
void bouncer_forward_client(struct bouncer *b, struct client *cl);
/* Every session held (any item state), by index (health.c). */
size_t bouncer_nsessions(const struct bouncer *b);
struct session *bouncer_session_at(struct bouncer *b, size_t i);
/* The closing list (CLIENT_CLOSING clients, owned by the bouncer while
 * listed). add: 0 or -ENOMEM; forget: drops it from the list (does not
 * free). */
int bouncer_add_closing(struct bouncer *b, struct client *cl);
void bouncer_forget_closing(struct bouncer *b, struct client *cl);

/* Reconnect governors (sessiond/governor.h), one per configured network,
 * owned by the bouncer. NULL: no governor for this network (no config). */
struct governor *bouncer_governor(struct bouncer *b, const char *network);
size_t bouncer_ngovernors(const struct bouncer *b);
struct governor *bouncer_governor_at(struct bouncer *b, size_t i);
/* Queue s for a connection slot (s->reconnect_at_ms is its due time) and
 * let the governor run from the event loop: granted sessions connect from
 * bouncer.c, never from inside this call. Returns 0 or -ENOMEM. */
int bouncer_governor_request(struct bouncer *b, struct session *s);
/* Why s waits for a connection (a NOTICE text naming what the operator
 * can do) into buf, or NULL when it does not wait for a reason worth
 * telling (connected, backing off, or only paced by the connect bucket). */
const char *bouncer_wait_text(struct bouncer *b, const struct session *s,
			      char *buf, size_t len);
/* A slot or throttle changed: run the governor from the event loop (never
 * synchronously: the caller may be freeing things). */
void bouncer_governor_kick(struct bouncer *b, struct governor *g);
/* The worker's resolver (resolver.h), made on first use if bouncer_new()
 * did not (no configured network host was a name). NULL: out of memory. */
struct resolver *bouncer_resolver(struct bouncer *b);
/* The governors' state changed (token spent, throttle, merge): the next
 * serialized session item carries a fresh snapshot (state.c). */
void bouncer_governor_changed(struct bouncer *b);
bool bouncer_governor_snapshot_due(const struct bouncer *b);
void bouncer_governor_snapshot_sent(struct bouncer *b);
/* Stop granting (a migration holds the governors; bounded by a deadline so
 * a lost release cannot stop reconnects for good) or grant again. */
void bouncer_governor_hold(struct bouncer *b, bool hold);

/* ---- session.c ---- */
/* A new session with no connection (no I/O, no events armed). */
struct session *session_new(struct bouncer *b, const char *user,
			    const char *network);
/* Free everything, closing fds and sending nothing. Accepts NULL. */
void session_free(struct session *s);
/* A migration committed the session elsewhere: leave the governor's queue,
 * cancel a lookup and close this process's copies of its sockets (sends
 * nothing); the memory stays for session_free() later. Idempotent. */
void session_close_sockets(struct session *s);
const struct config_session *session_config(const struct session *s);
/* Arm every connection and timer (after creation, adoption or thaw). */
void session_arm(struct session *s);
/* Stop every event and timer; flush: one write attempt per socket. Dead
 * connections are reaped first (they are not part of the state). */
void session_freeze(struct session *s, bool flush);
/* Schedule the upstream connection attempt at `at_ms` (absolute). */
void session_schedule_connect(struct session *s, int64_t at_ms);
/* Frees connections that died but whose closed callback has not run yet
 * (only from a top-level context: freeze). */
void session_reap(struct session *s);
/* Schedule the next upstream attempt with exponential backoff + jitter. */
void session_backoff(struct session *s);
/* Remove an attached client and free it (closing its socket). Its delivery
 * position becomes what the peer acknowledged (client_acked_seq()), and
 * unacknowledged output is discarded by the close (conn_discard_unacked()):
 * lines that did not reach the peer are replayed on the next attach. */
void session_remove_client(struct session *s, struct client *cl);
/* The first half of session_remove_client(): take cl out of the session
 * and store its position as what the peer acknowledged so far; cl stays
 * open (its conn untouched) and cl->s becomes NULL. reason: for the log. */
void session_detach_client(struct session *s, struct client *cl,
			   const char *reason);
int session_add_client(struct session *s, struct client *cl);

struct channel *session_find_channel(struct session *s, const char *name);
/* The channel named `name`, created if needed. NULL: out of memory, or not
 * tracked: a name longer than SESSION_MAX_CHANNEL_NAME, or max_channels
 * reached (logged, attached clients told; the channel's lines are still
 * relayed and stored in the backlog). */
struct channel *session_add_channel(struct session *s, const char *name);
void session_remove_channel(struct session *s, const char *name);
void channel_free(struct channel *ch);
static inline size_t channel_nmembers(const struct channel *ch)
{
	return ch->sh ? ch->sh->nmembers : 0;
}
static inline const struct member *channel_member_at(const struct channel *ch,
						     size_t i)
{
	return &ch->sh->members[i];
}
struct member *channel_find_member(struct channel *ch, const char *nick);
/* The member `nick`, added if needed. NULL: out of memory (the list is
 * dropped, as below), or the channel's members are not tracked (ch->members_untracked): adding this one would
 * pass max_channel_members or the session's member_list_bytes, so the list
 * is dropped now (logged, clients told) and the channel kept. */
struct member *channel_add_member(struct channel *ch, const char *nick);
void channel_remove_member(struct channel *ch, const char *nick);
/* Forget the member list (this session's reference to it) and track
 * members again from now on. */
void channel_clear_members(struct channel *ch);
/* Use sh (a reference is taken) as ch's list if this session's bounds
 * allow its size, else mark ch untracked (quietly: a migration target's
 * adoption). ch must have no list. Returns 0, or -ENOMEM. */
int channel_use_list(struct channel *ch, struct shared_channel *sh);
/* Change m's nick (m belongs to ch; the shared list: a no-op when another
 * session applied it already). Returns 0 or -ENOMEM (then, as when
 * channel_add_member() runs out of memory, the list is dropped and the
 * channel untracked: never an incomplete list kept as whole). */
int channel_rename_member(struct channel *ch, struct member *m,
			  const char *nick);

/* Whether this session keeps member lists of its own instead of sharing
 * them with the other sessions of its network (chanstore.h): the network's
 * `member_lists` key, and for `auto` what the network says of itself
 * (its CHANMODES and server version: a network that can hide members from
 * some users, e.g. delayed join, would otherwise have one user's view
 * shown to another). */
bool session_members_private(const struct session *s);
/* The scope of this session's member lists, the `network` argument of
 * chanstore_attach()/chanstore_incoming(): the network's name when shared,
 * "user/network" when private (neither name may contain '/', so a private
 * scope never equals a network's). Written into buf[n]; returns buf. */
const char *session_list_scope(const struct session *s, char *buf, size_t n);
/* Big enough for any scope: two names and the '/'. */
#define SESSION_SCOPE_MAX (2 * NAMES_MAX_LEN + 2)

/* ---- replies routed to the client that asked ---- */
enum session_query_kind {
	SESSION_QUERY_WHO = 1,
	SESSION_QUERY_NAMES,
	SESSION_QUERY_WHOIS,
	SESSION_QUERY_MODE,
	SESSION_QUERY_TOPIC,
};
struct session_query {
	uint64_t client_serial; /* struct client serial */
	enum session_query_kind kind;
	char target[64];        /* casefolded; longer targets are not routed */
	int64_t sent_ms;        /* monotonic: unanswered for 30 s, forgotten */
};
/* At most this many pending per session: more are not routed (their
 * replies reach every client, as before). */
#define SESSION_MAX_QUERIES 16
/* Remember that client `serial` sent the query `m` (anything else: no-op). */
struct irc_msg;
void session_query_note(struct session *s, uint64_t serial, const struct irc_msg *m);
/* Who gets the network's line `m`: 0 every client; 1 only *only (the
 * client that asked); 2 nobody (it asked and left). Pops the query its
 * last reply answers. */
int session_reply_route(struct session *s, const struct irc_msg *m, struct client **only);

/* Custody restore: ask the network for MODE, TOPIC and NAMES of every
 * joined channel (the replies update the state and reach no client), when
 * s->resync is set and the upstream is ready. As many as the routed-query
 * bound (SESSION_MAX_QUERIES) allows at a time: called again after each
 * line from the network until every channel was asked (then cleared). */
void session_resync(struct session *s);

/* ISUPPORT value of `token` (NULL if absent, "" if present without value). */
const char *session_isupport(const struct session *s, const char *token);
/* One token of a 005 line: "NAME=value" or "NAME" sets, "-NAME" removes.
 * At most SESSION_MAX_ISUPPORT tokens of at most SESSION_MAX_ISUPPORT_TOKEN
 * bytes are kept (others are ignored). 0, or -ENOMEM (logged; the token's
 * change is not stored). */
int session_isupport_apply(struct session *s, const char *tok);
/* PREFIX modes/symbols, defaults "ov" / "@+". */
void session_prefix(const struct session *s, char *modes, size_t mn,
		    char *symbols, size_t sn);
bool session_is_me(const struct session *s, const char *nick);

uint64_t session_position(const struct session *s, const char *client_id);
bool session_has_position(const struct session *s, const char *client_id);
/* Store a client name's position. At most SESSION_MAX_POSITIONS names: a
 * new one beyond takes the place of the one furthest behind (lowest seq;
 * that client replays everything next time: repeats, never a gap). Names
 * longer than SESSION_MAX_CLIENT_NAME are not stored. 0, or -ENOMEM
 * (logged; the name keeps its previous position, or none). */
int session_set_position(struct session *s, const char *client_id,
			 uint64_t seq);
/* Raise the position of client_id to seq; never lowers it (a newer
 * connection of that name may have advanced it meanwhile), and ignores a
 * seq at or past the backlog's next seq (from an earlier life of a session
 * with this key). */
void session_advance_position(struct session *s, const char *client_id,
			      uint64_t seq);

/* Relay: send to every attached client (except `except`), adding
 * @time=... for clients with server-time (time_ms 0: now). */
void session_broadcast(struct session *s, const char *line, int64_t time_ms,
		       struct client *except);
/* The same with the network's tags (client_send_full()). */
void session_broadcast_tags(struct session *s, const char *tags, const char *line,
			    int64_t time_ms, struct client *except);
/* Store a PRIVMSG/NOTICE in the backlog under `buffer` and deliver it to
 * every attached client except `except` (whose position also advances). */
void session_store_and_relay(struct session *s, const char *buffer,
			     const char *line, int64_t time_ms,
			     struct client *except);
/* The same, queued `copies` times to each client (1; 0 or 2 only in fault
 * builds: sessiond/fault.h). Returns how many times the line was queued to
 * the best-served client (0: no client attached), a replaying client's
 * line counting once (the pump sends it from the backlog): what
 * health_channel_lines() counts. Counting those too matters: a client that
 * replays after a migration would otherwise make its session look as if
 * it lost every line that arrived meanwhile. */
unsigned session_store_and_relay_n(struct session *s, const char *buffer,
				   const char *line, int64_t time_ms,
				   struct client *except, unsigned copies);
/* The same, relayed live with the network's tags (client_send_full(); the
 * backlog keeps the line without them). */
/* The relay half (history.h): a line the store numbered `seq` goes into
 * the backlog with that seq and to the clients; one the store refused for
 * good goes to the clients live, unnumbered; one that must travel before
 * the store took it goes into the backlog with a seq of the backlog's. */
unsigned session_relay_stored(struct session *s, uint64_t seq, const char *buffer,
			      const char *tags, const char *line, int64_t time_ms,
			      struct client *except, unsigned copies);
unsigned session_relay_live(struct session *s, const char *tags, const char *line,
			    int64_t time_ms, struct client *except, unsigned copies);
unsigned session_relay_unstored(struct session *s, const char *buffer,
				const char *tags, const char *line, int64_t time_ms,
				struct client *except, unsigned copies);
unsigned session_store_and_relay_tags(struct session *s, const char *buffer,
				      const char *tags, const char *line,
				      int64_t time_ms, struct client *except,
				      unsigned copies);
/* NOTICE from the bouncer to every attached client. */
void session_notice_all(struct session *s, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Take the backlog's drop counts (backlog_take_drops()) and, at most once
 * per SESSION_DROP_NOTICE_MS, log them and tell the attached clients. */
void session_note_backlog_drops(struct session *s);

/* Last line of defence of a migration: the session's state is `excess`
 * bytes over what one message can carry (sessiond/state.h says why that
 * cannot happen with a config the preflight accepted, except for clients'
 * unwritten output). Give up one kind of state, in this order, and return
 * 0; -ENOSPC once nothing is left to give:
 *  1. attached clients holding more than SESSION_STALLED_OUTPUT of
 *     unwritten output, the most first (closed as for "sendq exceeded":
 *     they reconnect and replay what their TCP had not acknowledged);
 *  2. backlog lines, oldest first (backlog_trim_oldest()); users told;
 *  3. the remaining attached clients, the most output first;
 *  4. member lists, the longest first (channels kept).
 * Counts what went into *acc. Daemon code: logs each step. */
struct session_shrink {
	uint32_t lines;    /* backlog lines dropped */
	uint32_t clients;  /* clients disconnected */
	uint32_t channels; /* member lists dropped */
};
int session_shrink(struct session *s, size_t excess, struct session_shrink *acc);
/* Our prefix "nick!user@host" (or "nick") into out[n]. */
void session_self_prefix(const struct session *s, char *out, size_t n);
bool session_upstream_ready(const struct session *s);

#endif
