/* sessiond/client.h: a client connection (client.c): registration and
 * login, the attach burst, flow-controlled backlog replay, delivery
 * positions measured by what the peer acknowledged, QUIT with a grace
 * period. A pending client is owned by the bouncer (and is an item of its
 * own in a migration); an attached one by its session; a closing one by
 * the bouncer's closing list. A client owns its conn (and so its fd).
 * Included through session.h.
 */
#ifndef BATON_SESSIOND_CLIENT_H
#define BATON_SESSIOND_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sessiond/item.h"
#include "sessiond/pb_unknown.h"

struct bouncer;
struct conn;
struct event;
struct session;

enum client_cap {
	CLIENT_CAP_SERVER_TIME = 1u << 0,
	CLIENT_CAP_MULTI_PREFIX = 1u << 1,
	CLIENT_CAP_ECHO_MESSAGE = 1u << 2,
	CLIENT_CAP_AWAY_NOTIFY = 1u << 3,
	CLIENT_CAP_USERHOST_IN_NAMES = 1u << 4,
	CLIENT_CAP_MESSAGE_TAGS = 1u << 5,
	CLIENT_CAP_ACCOUNT_NOTIFY = 1u << 6,
	CLIENT_CAP_EXTENDED_JOIN = 1u << 7,
	CLIENT_CAP_CHGHOST = 1u << 8,
	CLIENT_CAP_SETNAME = 1u << 9,
	CLIENT_CAP_INVITE_NOTIFY = 1u << 10,
	CLIENT_CAP_SASL = 1u << 11, /* SASL PLAIN as a login (before registration) */
	/* CAP NEW/DEL (implied by CAP LS 302, then not to be disabled): sent
	 * only for the message store's caps (client_store_caps_refresh());
	 * the rest of baton's offer does not depend on the network */
	CLIENT_CAP_CAP_NOTIFY = 1u << 12,
	CLIENT_CAP_BATCH = 1u << 13, /* baton's own batches (bouncer_networks.h) */
	CLIENT_CAP_BOUNCER_NETWORKS = 1u << 14, /* soju.im/bouncer-networks */
	CLIENT_CAP_BOUNCER_NETWORKS_NOTIFY = 1u << 15, /* ...-notify */
	CLIENT_CAP_STANDARD_REPLIES = 1u << 16, /* baton's notes as FAIL/WARN/NOTE */
	/* draft/chathistory (chathistory.h): offered only with a message
	 * store (history.h) */
	CLIENT_CAP_CHATHISTORY = 1u << 17,
	/* draft/read-marker (chathistory.h), with a message store too */
	CLIENT_CAP_READ_MARKER = 1u << 18,
	/* labeled-response (client.c, "labeled-response"): used only with
	 * batch too, as the spec's dependency says */
	CLIENT_CAP_LABELED_RESPONSE = 1u << 19,
};

/* The spec's bound of a label's value (bytes, as the client sent it). */
#define CLIENT_LABEL_MAX 64

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
	/* Names this connection in this process (echo-message: whose message
	 * an echo of the network is); 0 until it first sends a message. */
	uint64_t serial;
	/* draft/read-marker sets: the theoretical arrival time of the next
	 * one (a GCRA bucket, chathistory.c READMARKER_RATE/_BURST). */
	int64_t rm_tat_ms;
	unsigned caps;          /* enum client_cap */
	/* The caps that depend on the message store (draft/chathistory,
	 * draft/read-marker) as this client was last told (CAP LS, NEW,
	 * DEL): client_store_caps_refresh() sends what changed. */
	bool store_caps_offered;
	/* labeled-response: the label of the command being answered now
	 * ("" none; client_label_begin()/_end()), the output offset where
	 * its replies begin, whether the command went to the network (its
	 * replies there are not ours to label: no ACK) or to a later answer
	 * that carries the label itself (CHATHISTORY). Not serialized: a
	 * label lives within one step of the event loop. */
	char label[CLIENT_LABEL_MAX + 1];
	uint64_t label_from;
	bool label_forwarded, label_async;
	/* The tag ("label=..." or "batch=...") the network's line being
	 * relayed now carries for this client: the answer to its labeled
	 * command (upstream.c, labeled-response). Set and cleared around one
	 * line; borrowed, NULL otherwise. client_send_full() puts it first. */
	const char *relay_tag;
	bool cap_negotiating;
	/* CAP LS 302 (or later) seen: cap-notify is on and may not be turned
	 * off (IRCv3 capability negotiation). Not serialized: after a
	 * migration a -cap-notify is ACKed (then the store's CAP NEW/DEL are
	 * not sent to it: it loses the caps on a DEL all the same). */
	bool cap_302;
	/* SASL login (client.c): AUTHENTICATE PLAIN chosen, its message being
	 * reassembled (sasl_in, owned, NULL: none), its password check in
	 * flight (sasl_checking: client_auth_done() answers 903/904 instead of
	 * attaching). On success fwd_* hold the verified login and pass stays
	 * until registration ends (a migration target checks it again). */
	bool sasl_plain, sasl_checking;
	struct sasl_inbuf *sasl_in;
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
	/* The message store's part of the replay (history.h): a store query
	 * in flight for it (its id, 0: none; the pump waits), and whether
	 * lines after delivered_seq must still be read from the store
	 * before the backlog's. Not serialized (client_resume() decides
	 * again). */
	uint64_t hist_query;
	bool hist_store;
	/* A new client name on a session whose backlog holds a migration's
	 * position in the store (backlog.h, state schema 3): its store reads
	 * keep only the lines of those ranges (what the cache held), from
	 * hist_after on. Not serialized, as hist_store. */
	bool hist_cold;
	uint64_t hist_after;
	/* CHATHISTORY requests in flight (chathistory.h; owned), oldest
	 * first. Not serialized: a migration cancels them unanswered. */
	struct chathistory_job *chist;
	/* Pending and parked until its session's read markers are loaded
	 * (history_markers_wait()). */
	bool hist_waiting;
	int64_t connected_at_ms; /* CLOCK_MONOTONIC ms, as last_rx_ms */
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
/* The same with the network's tags (raw, without '@'; NULL: none): a
 * client that enabled message-tags gets them as they came (plus @time if
 * it enabled server-time and they have none); others as above. Tags that
 * would pass the bounds of a line are left out. cl->relay_tag, when set,
 * comes first whatever the client's caps (it asked for the label). */
void client_send_full(struct client *cl, const char *tags, const char *line,
		      int64_t time_ms);
/* Queue one backlog line to an attached client, with the network's tags
 * (client_send_full(); a replay sends none) (advances delivered_seq and
 * records a delivery mark), `copies` times (1; 2 only in the dup fault
 * build). Not queued while the client replays: the replay pump takes the
 * line from the backlog in seq order. Returns the copies queued, or 1 for
 * a replaying client (the pump will send it once; 0 copies: 0). */
unsigned client_deliver(struct client *cl, uint64_t seq, const char *tags,
			const char *line, int64_t time_ms, unsigned copies);
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
/* cl's serial, given now if it had none (a name that a client freed and
 * one allocated at its address never share). */
uint64_t client_serial(struct client *cl);
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
/* The replay pump (history.h): queue one replayed line (seq order; the
 * client's own lines are skipped); 0, or -EPIPE once its connection died,
 * or 1 when its output is full (wait for the drain). And go on replaying
 * (from the store, the backlog, or waiting for the drain). */
int client_replay_line(struct client *cl, uint64_t seq, int64_t time_ms,
		       const char *line);
void client_replay_continue(struct client *cl);
/* labeled-response: replies queued to cl between begin and end are its
 * labeled response: one line gets @label, several go in a
 * `labeled-response` batch whose start has it, none gets a labeled ACK
 * when `ack` (baton answered the command itself and had nothing to say).
 * A command whose answer comes later (cl->label_async: CHATHISTORY, an
 * edit through the supervisor) keeps the label for it: what was queued
 * meanwhile stays unlabeled.
 * label "" or a client without labeled-response+batch: nothing done.
 * end undoes nothing when the lines were written already (a close). */
void client_label_begin(struct client *cl, const char *label);
void client_label_end(struct client *cl, bool ack);
/* The message store became available or unavailable (history.h):
 * clients are told CAP NEW/DEL of draft/chathistory and draft/read-marker
 * (cap-notify), and lose them if they had them. */
struct bouncer;
void client_store_caps_refresh(struct bouncer *b);
/* Whether the store's caps are offered now (store open, not failing). */
bool client_store_caps_available(const struct bouncer *b);
/* Send the welcome burst (used again after an upstream reconnect). */
void client_send_burst(struct client *cl);

#endif
