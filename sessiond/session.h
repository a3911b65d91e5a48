/* sessiond/session.h: the objects of the sessiond core shared by session.c,
 * upstream.c, client.c, state.c and bouncer.c. Internal to the core: the
 * rest of the worker (main.c, worker.c, migrate.c) only sees bouncer.h.
 *
 * Ownership: the bouncer owns sessions, pending clients and closing clients
 * (they QUIT and are finishing their output: client.c); a session owns its
 * upstream, its attached clients, its channels and its backlog; an upstream
 * or client owns its conn (and so its fd).
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

#include "common/names.h"
#include "sessiond/backlog.h"
#include "sessiond/bouncer.h"
#include "sessiond/governor.h"
#include "sessiond/health.h"

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
#define SESSION_MEMBER_COST 24
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
 * defaults of common/config.c). */
void session_limits_get(const struct baton_config *cfg, struct session_limits *out);

/* Protobuf unknown fields kept from an adopted state and written back on
 * re-pack (proto/state.proto rule 4). Opaque copy; see state.c. */
struct pb_unknown {
	size_t n;
	void *fields; /* ProtobufCMessageUnknownField[n], deep copied */
};
void pb_unknown_clear(struct pb_unknown *u);

/* Item kinds (bouncer.h's opaque struct bouncer_item). */
enum item_kind { ITEM_SESSION = 1, ITEM_PENDING = 2 };
enum item_state {
	ITEM_LIVE = 0,     /* registered and armed */
	ITEM_FROZEN,       /* source side: frozen, awaiting thaw/release */
	ITEM_ADOPTED,      /* target side: built, not armed yet */
};

struct bouncer_item {
	enum item_kind kind;
	enum item_state state;
	struct session *session; /* ITEM_SESSION */
	struct client *client;   /* ITEM_PENDING */
	int *fds;                /* after serialize: sockets in fd_index order */
	size_t nfds;
};

/* ---- channels ---- */

struct member {
	char *nick;
	char prefixes[16]; /* PREFIX symbols in PREFIX order, e.g. "@+" */
};

struct channel {
	char *name;
	char *topic;        /* NULL: none */
	char *topic_setter;
	int64_t topic_time;
	char *modes;        /* "+nt" (letters only), NULL: unknown */
	struct member *members; /* unordered (removal swaps in the last) */
	size_t nmembers, cap;
	/* casefolded nick -> index + 1 into members: channels of thousands of
	 * members, in every session, must not make NAMES, QUIT or a migration
	 * quadratic. Created on the first member. */
	struct strmap *member_index;
	bool joined;
	/* The member bounds were reached (max_channel_members, or the
	 * session's member_list_bytes): the list was dropped and no member is
	 * added until it is cleared (a new JOIN of ours, a reconnect). */
	bool members_untracked;
	size_t member_bytes;  /* counted against the session's bound */
	struct session *s;    /* owner (NULL: a channel outside a session) */
	struct health_channel_count health; /* differential delivery (health.h) */
	struct pb_unknown unknown;
};

struct position {
	char *client_id;
	uint64_t seq;
};

/* ---- upstream ---- */

enum upstream_phase {
	UP_CONNECTING = 0,  /* non-blocking connect in progress */
	UP_REGISTERING = 1, /* CAP/NICK/USER sent, waiting for 001 */
	UP_WELCOMED = 2,    /* 001 seen, waiting for end of MOTD */
	UP_READY = 3,       /* channels joined: relaying */
};

struct upstream {
	struct session *s;
	struct conn *conn;
	enum upstream_phase phase;
	bool cap_negotiating;    /* CAP REQ sent (or LS in progress) */
	char **cap_offered;      /* wanted caps seen in (multi-line) CAP LS */
	size_t ncap_offered;
	char *nick_attempt;      /* nick sent during registration */
	int64_t connected_at_ms; /* connect() started */
	int64_t last_rx_ms;
	int64_t ping_sent_ms;    /* 0: no PING outstanding */
	int64_t lag_ms;
	int64_t next_ping_ms;
	struct event *timer;     /* keepalive / timeout */
	bool dead;               /* closed; freed from the session's reaper */
	/* The governor slot (source address index of the session's network
	 * governor) this connection holds, -1: none. Released by
	 * upstream_free(). */
	int gov_slot;
	/* What the server said before closing (ERROR text, 465/463):
	 * upstream_lost() backs off accordingly. */
	enum governor_verdict verdict;
	bool said_why; /* its ERROR/465/463 text was logged (once per connection) */
	bool warned_nick; /* an invalid nick from the server was logged (once) */
	/* What its writes are checked as, its PINGs to answer, the adoption
	 * PING (health.h); the conn points here (conn_set_health()). */
	struct health_link hl;
	struct pb_unknown unknown;
};

/* ---- clients ---- */

enum client_cap {
	CLIENT_CAP_SERVER_TIME = 1u << 0,
	CLIENT_CAP_MULTI_PREFIX = 1u << 1,
	CLIENT_CAP_ECHO_MESSAGE = 1u << 2,
};

enum client_phase {
	CLIENT_PENDING = 0,  /* registering / authenticating */
	CLIENT_ATTACHED = 1, /* attached to a session */
	/* QUIT: detached (its conservative position stored), in the
	 * bouncer's closing list, finishing its output (client.c). Never
	 * part of a session or of a migration item, never serialized. */
	CLIENT_CLOSING = 2,
};

/* A backlog line queued to a client: it is delivered (as far as we can
 * know) once the peer's TCP acknowledged the stream up to `end` (conn.h,
 * delivery accounting). */
struct delivery_mark {
	uint64_t end; /* conn_bytes_queued() right after the line */
	uint64_t seq;
};

/* Longest address key (bouncer_addr_key()) with its NUL. */
#define BOUNCER_ADDR_KEY_LEN 48

struct client {
	struct bouncer *b;
	struct session *s;      /* NULL while pending */
	struct conn *conn;
	bool in_tls_handshake;  /* counted in bouncer_tls_handshake_begin() */
	/* Peer address key (bouncer_addr_key(): IPv6 its /64; "" if unknown,
	 * "local" for AF_UNIX): the key of the per-address limits and of the
	 * failed-login throttle. */
	char addr[BOUNCER_ADDR_KEY_LEN];
	bool pending_counted;   /* counted in the pending limits (bouncer.c) */
	/* Password check in flight (authpool.h): its id, 0 none; meanwhile the
	 * conn holds its lines. A freeze drops it (bouncer_item_freeze());
	 * client_pending_resume() checks again once the client is armed. */
	uint64_t auth_id;
	/* The failed-login throttle's hold on this client's login, from
	 * bouncer_login_begin() to bouncer_login_result()/_drop(): what was
	 * counted per key (bouncer.c), the user name's key (owned; NULL:
	 * none), and whether the login waits for a busy key's checks (listed
	 * in the bouncer; lines held meanwhile). */
	unsigned login_counted;
	char *login_user;
	bool login_waiting;
	/* Before login (client.c): lines and bytes received, and the command
	 * token bucket (tokens * 1000, refilled as of bucket_ms, monotonic). */
	unsigned prelogin_lines;
	size_t prelogin_bytes;
	int64_t bucket, bucket_ms;
	enum client_phase phase;
	unsigned caps;          /* enum client_cap */
	bool cap_negotiating;
	char *pass, *nick, *user;
	char *client_id;        /* delivery position name, "default" */
	uint64_t delivered_seq; /* last backlog seq queued to this client */
	/* Last backlog seq whose bytes (and all before) the peer acknowledged:
	 * what the client's position becomes when it detaches. Advanced by
	 * client_acked_seq() from the marks, a FIFO (oldest at marks[mark_head],
	 * nmarks of them) of lines queued but not known acknowledged; ends and
	 * seqs strictly increase. */
	uint64_t acked_seq;
	struct delivery_mark *marks;
	size_t mark_head, nmarks, mark_cap;
	/* Flow-controlled replay (client.c): backlog lines after delivered_seq
	 * are queued by a pump, a chunk at a time as the output drains, and
	 * live backlog lines wait for the pump (seq order); lines not stored
	 * in the backlog go out directly. Not serialized: an adopted client
	 * whose delivered_seq is below the backlog's newest seq replays again
	 * (client_resume()). */
	bool replaying;
	/* While replaying: seqs of lines this client sent itself (no
	 * echo-message), for the pump to skip; FIFO, increasing. Lost in a
	 * migration (then they are sent: an echo, never a gap). */
	uint64_t *own_seqs;
	size_t own_head, nown, own_cap;
	int64_t connected_at_ms;
	int64_t last_rx_ms;
	/* CLIENT_CLOSING only: the session it left, by key ("user/network":
	 * the session may migrate away meanwhile), and the grace deadline. */
	char *closing_key;
	struct event *close_timer;
	/* A pending client whose login is verified (client_route()): who it
	 * logged in as (owned), and how often it was forwarded between the
	 * workers of a canary (state.proto Forward). NULL while not verified;
	 * freed once attached. parked: waiting for its session's migration
	 * to end (bouncer_unpark()). */
	char *fwd_user, *fwd_network;
	unsigned fwd_hops;
	bool parked;
	struct bouncer_item item; /* pending clients only */
	struct pb_unknown unknown;
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
	struct client **clients;
	size_t nclients;
	char *away;
	/* 0: no attempt scheduled. While the session waits in its network's
	 * governor queue this stays the time it became due (its place in the
	 * queue, also after a migration). */
	int64_t reconnect_at_ms;
	uint32_t reconnect_failures;
	/* Queued for a connection slot in the governor (bouncer.c); never
	 * queued while frozen or adopted. */
	struct governor_waiter gov_wait;
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
};

/* ---- bouncer internals (bouncer.c) ---- */
struct event_base *bouncer_base(const struct bouncer *b);
const struct baton_config *bouncer_config(const struct bouncer *b);
/* ircs handshakes in progress (each holds an SSL object and costs a
 * signature): counted in all and per address so that a flood of half-open
 * TLS connections is refused at [listen] max_tls_handshakes(_per_ip)
 * instead of exhausting the worker. cl's handshake ended (done or cl is
 * being freed): give its slot back. */
void bouncer_tls_handshake_end(struct bouncer *b, struct client *cl);
/* Monotonic ms (throttles and rate limits; not wall-clock). */
int64_t bouncer_mono_ms(void);
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
/* A slot or throttle changed: run the governor from the event loop (never
 * synchronously: the caller may be freeing things). */
void bouncer_governor_kick(struct bouncer *b, struct governor *g);
/* The governors' state changed (token spent, throttle, merge): the next
 * serialized session item carries a fresh snapshot (state.c). */
void bouncer_governor_changed(struct bouncer *b);
bool bouncer_governor_snapshot_due(const struct bouncer *b);
void bouncer_governor_snapshot_sent(struct bouncer *b);
/* Stop granting (a migration holds the governors; bounded by a deadline so
 * a lost release cannot stop reconnects for good) or grant again. */
void bouncer_governor_hold(struct bouncer *b, bool hold);

int64_t now_ms(void); /* CLOCK_REALTIME, ms */
/* Format "YYYY-MM-DDThh:mm:ss.sssZ" into out[32]. */
void format_server_time(int64_t ms, char out[32]);
/* Parse that format; returns 0 or -1. */
int parse_server_time(const char *s, int64_t *ms);
char *xstrdup(const char *s); /* NULL-safe strdup */
void strv_free(char **v, size_t n);
int strv_push(char ***v, size_t *n, const char *s);

/* ---- session.c ---- */
/* A new session with no connection (no I/O, no events armed). */
struct session *session_new(struct bouncer *b, const char *user,
			    const char *network);
/* Free everything, closing fds and sending nothing. Accepts NULL. */
void session_free(struct session *s);
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
struct member *channel_find_member(struct channel *ch, const char *nick);
/* The member `nick`, added if needed. NULL: out of memory, or the channel's
 * members are not tracked (ch->members_untracked): adding this one would
 * pass max_channel_members or the session's member_list_bytes, so the list
 * is dropped now (logged, clients told) and the channel kept. */
struct member *channel_add_member(struct channel *ch, const char *nick);
void channel_remove_member(struct channel *ch, const char *nick);
/* Forget every member and track them again from now on. */
void channel_clear_members(struct channel *ch);
/* Change m's nick (m belongs to ch). Returns 0 or -ENOMEM. */
int channel_rename_member(struct channel *ch, struct member *m,
			  const char *nick);

/* ISUPPORT value of `token` (NULL if absent, "" if present without value). */
const char *session_isupport(const struct session *s, const char *token);
/* One token of a 005 line: "NAME=value" or "NAME" sets, "-NAME" removes.
 * At most SESSION_MAX_ISUPPORT tokens of at most SESSION_MAX_ISUPPORT_TOKEN
 * bytes are kept (others are ignored). */
void session_isupport_apply(struct session *s, const char *tok);
/* PREFIX modes/symbols, defaults "ov" / "@+". */
void session_prefix(const struct session *s, char *modes, size_t mn,
		    char *symbols, size_t sn);
bool session_is_me(const struct session *s, const char *nick);

uint64_t session_position(const struct session *s, const char *client_id);
bool session_has_position(const struct session *s, const char *client_id);
/* Store a client name's position. At most SESSION_MAX_POSITIONS names: a
 * new one beyond takes the place of the one furthest behind (lowest seq;
 * that client replays everything next time: repeats, never a gap). Names
 * longer than SESSION_MAX_CLIENT_NAME are not stored. */
void session_set_position(struct session *s, const char *client_id,
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

/* ---- upstream.c ---- */
/* Start a connection to the configured network from source address
 * `gov_slot` of the network's governor (-1: no governor, the kernel
 * chooses). On success the upstream holds the slot; on failure (0 or
 * -errno returned) the caller still holds it and schedules a retry. */
int upstream_connect(struct session *s, int gov_slot);
/* Build an upstream around an adopted conn (no events). */
struct upstream *upstream_new(struct session *s, struct conn *c);
void upstream_free(struct upstream *u); /* closes the conn, sends nothing */
void upstream_arm(struct upstream *u);
void upstream_freeze(struct upstream *u, bool flush);
/* A migrated session was armed here: PING :baton-adopt-<n> on a
 * registered upstream (health.h: adopt_pings_sent / _late). */
void upstream_adopt_ping(struct upstream *u);
/* Send a raw line upstream (ignored when not connected). */
void upstream_send(struct session *s, const char *line);
extern const struct conn_ops upstream_conn_ops;
/* Called by the session reaper for a dead upstream: log, notify clients,
 * schedule the reconnect, free. */
void upstream_lost(struct session *s);

/* ---- client.c ---- */
/* A new pending client on an accepted fd (fd taken in every case). */
struct client *client_new(struct bouncer *b, int fd);
void client_free(struct client *cl); /* closes the conn, sends nothing */
/* A verified pending client (fwd_user set) goes to its session, waits for
 * it, or is forwarded to the canary peer (see client.c). */
void client_route(struct client *cl);
/* Forwards between the two workers of a canary before a client is refused
 * (a session in neither worker cannot bounce it forever). */
#define PEER_MAX_HOPS 3
extern const struct conn_ops client_conn_ops;
/* Attach an authenticated client (sends the burst and starts the replay). */
void client_attach(struct client *cl, struct session *s);
/* After arming an attached client (adoption, thaw): resume its replay if
 * the backlog holds lines after its delivered_seq. */
void client_resume(struct client *cl);
/* Send a line to one client, adding @time if it enabled server-time. */
void client_send_tagged(struct client *cl, const char *line, int64_t time_ms);
/* Queue one backlog line to an attached client (advances delivered_seq and
 * records a delivery mark), `copies` times (1; 2 only in the dup fault
 * build). Not queued while the client replays: the replay pump takes the
 * line from the backlog in seq order. Returns the copies queued, or 1 for
 * a replaying client (the pump will send it once; 0 copies: 0). */
unsigned client_deliver(struct client *cl, uint64_t seq, const char *line,
			int64_t time_ms, unsigned copies);
/* The client has backlog line seq without it being sent (it wrote it):
 * delivered now, acknowledged once everything queued before it is (while
 * it replays: once the pump reaches seq). */
void client_skip(struct client *cl, uint64_t seq);
/* Record that backlog line seq ends at stream offset `end` (after the last
 * mark). Returns 0 or -ENOMEM (then the mark is lost: the acked position
 * only lags, it never claims too much). */
int client_mark_push(struct client *cl, uint64_t end, uint64_t seq);
/* Drop the marks the peer acknowledged (conn_bytes_acked()) and return the
 * updated cl->acked_seq. */
uint64_t client_acked_seq(struct client *cl);
/* The same with the acknowledged stream offset measured by the caller (one
 * measure for several uses: state.c). */
uint64_t client_acked_seq_upto(struct client *cl, uint64_t acked_bytes);
/* Worker exit: close a CLIENT_CLOSING client now (its conservative
 * position was stored at QUIT; unacknowledged output is discarded) and
 * free it. Sends nothing more. */
void client_closing_abandon(struct client *cl);
/* s is about to be frozen for a migration while cl (which QUIT from it) is
 * still finishing: raise s's stored position for cl's client name to the
 * best known now, so the state that travels has it (the finish itself runs
 * in this process and could not reach the session any more). */
void client_closing_settle(struct client *cl, struct session *s);
/* The password check of client_authenticate() finished (from the loop). */
void client_auth_done(struct client *cl, bool ok);
/* A pending client armed after a thaw or an adoption: a registration that
 * was complete (its password check dropped by the freeze, or in flight in
 * the old worker) is checked again. Never attaches synchronously. */
void client_pending_resume(struct client *cl);
/* Caps as names in canonical order (for state). */
size_t client_caps_names(unsigned caps, const char **names, size_t max);
unsigned client_cap_from_name(const char *name); /* 0 if unknown */
/* Send the welcome burst (used again after an upstream reconnect). */
void client_send_burst(struct client *cl);

#endif
