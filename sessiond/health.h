/* sessiond/health.h: the worker's health counters, what the supervisor's
 * health gates sample (CONTROL_HEALTH_REQUEST -> CONTROL_HEALTH,
 * proto/control.proto Health; supervisor/gates.h judges them).
 *
 * Ownership: one struct health per worker, owned by the bouncer
 * (bouncer_health()); it holds no pointer to anything else and nothing
 * here allocates except health_fill(). Hooks are one-line calls from the
 * places that see each event (the report of the change lists them):
 *
 *   upstream_lines           lines read from networks (upstream_line())
 *   lines_relayed            network lines queued to >= 1 attached client,
 *                            once per line however many clients
 *   relay latency            per relayed line: monotonic now at the queue
 *                            minus the start of the read batch that brought
 *                            the line (health_read_batch()); cumulative
 *                            Prometheus-style buckets: bucket i counts the
 *                            observations <= HEALTH_LATENCY_BOUNDS[i], the
 *                            last one (+Inf) every observation
 *   upstream_error_numerics  numerics 400-599 received from networks
 *   upstream_closed          the network sent ERROR, or KILL for our nick
 *                            (once per connection)
 *   upstream_banned          465, 463, or an ERROR (or our own QUIT) whose
 *                            text says "Excess Flood" (once per connection)
 *   clients_closed           attached clients the worker closed itself
 *                            (sendq exceeded, shrink, out of memory, a TLS
 *                            error of ours...): not a QUIT, EOF or reset
 *   protocol_errors          lines the worker queued to a network or a
 *                            client that health_line_check() refuses;
 *                            one to a network is not sent (the network
 *                            would refuse it or close the session: a
 *                            build that writes one is caught by the gate
 *                            without costing the user its connection),
 *                            one to a client is; logged at most once a
 *                            minute
 *   adopt_pings_sent/_late   PING :baton-adopt-<n> sent upstream when a
 *                            migrated session with a registered upstream is
 *                            armed; late: no PONG within adopt_ping_timeout
 *   pings_unanswered         network PINGs for which no line starting with
 *                            "PONG" was queued within ping_answer_timeout
 *                            (seen at the write layer, not in the PING
 *                            handler, so a broken handler is caught)
 *   loop_lag_max_s           worst lag tick since the previous request
 *   cpu_s, rss_bytes         getrusage(), /proc/self/statm at the answer
 *
 * Differential delivery: every session-channel counts, per interval between
 * two HealthRequests, the channel PRIVMSG/NOTICE lines its user got: queued
 * from the network to its attached clients (once per line however many
 * clients, counted where the line is queued: a line queued twice counts
 * twice) or sent by one of its clients. A session-channel is reported for
 * an interval only if it was joined and the session had >= 1 client
 * attached at the previous request and both stayed so without a gap (a
 * client detaching while another stays attached is no gap). Cost: two
 * uint32 per channel (struct channel) and one per session.
 *
 * Global state: none here. The worker's one struct health lives in the
 * bouncer; sessiond/fault.h (fault builds only) has its own.
 */
#ifndef BATON_SESSIOND_HEALTH_H
#define BATON_SESSIOND_HEALTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/control.h"

struct bouncer;
struct session;
struct channel;
struct conn;
struct irc_msg;
struct Baton__Control__Health;

/* Relay latency bucket bounds, seconds; a last bucket +Inf follows (the
 * protocol's: common/control.h). */
#define HEALTH_LATENCY_BOUNDS CONTROL_LATENCY_BOUNDS
#define HEALTH_NBOUNDS CONTROL_LATENCY_NBOUNDS
#define HEALTH_NBUCKETS (HEALTH_NBOUNDS + 1)
extern const double health_latency_bounds[HEALTH_NBOUNDS];

/* Channels in one answer at most (busiest first), and bytes of their
 * names: far below the control frame limit (16 MiB). */
#define HEALTH_MAX_CHANNELS 2000
#define HEALTH_MAX_NAME_BYTES (512u << 10)

/* Longest line to a network (incl. CRLF; its tags apart: at most
 * HEALTH_NETWORK_TAGS_MAX with '@' and spaces, the client-only tags a
 * client may send), and to a client (8191 bytes of tags + 512). */
#define HEALTH_NETWORK_LINE_MAX 512
#define HEALTH_NETWORK_TAGS_MAX 4094
#define HEALTH_CLIENT_LINE_MAX (8191 + 512)

/* Protocol errors are logged at most this often (counted always). */
#define HEALTH_LOG_INTERVAL_MS 60000

enum health_peer {
	HEALTH_PEER_NETWORK = 1,
	HEALTH_PEER_CLIENT = 2,
};

/* What a connection's writes are checked as (conn_set_health()). Network
 * links are embedded in their struct upstream and carry its PING state;
 * every client connection shares the health's client_link. */
struct health_link {
	struct health *h;
	enum health_peer peer;
	/* network only: PINGs read and not answered by a queued "PONG"
	 * (saturating), the batch time (mono ms) of the oldest of them */
	uint16_t pings_pending;
	int64_t ping_rx_ms;
	/* the adoption PING in flight: its number, sent at (mono ms; 0:
	 * none or answered) */
	uint32_t adopt_token;
	int64_t adopt_sent_ms;
	bool closed_counted; /* upstream_closed counted for this connection */
	bool banned_counted; /* upstream_banned counted for this connection */
};

/* Per session-channel (struct channel): the differential delivery. */
struct health_channel_count {
	uint32_t gen;   /* interval in which it became eligible */
	uint32_t lines; /* this interval */
};

struct health {
	/* cumulative since the worker started */
	uint64_t upstream_lines;
	uint64_t lines_relayed;
	uint64_t latency[HEALTH_NBUCKETS]; /* per bucket, not cumulative here */
	double latency_sum_s;
	uint64_t upstream_error_numerics;
	uint64_t upstream_closed;
	uint64_t upstream_banned;
	uint64_t clients_closed;
	uint64_t protocol_errors;
	uint64_t adopt_pings_sent;
	uint64_t adopt_pings_late;
	uint64_t pings_unanswered;
	/* since the previous request */
	double loop_lag_max_s;
	/* interval number (starts at 1, +1 per request): session-channels
	 * remember the interval in which they became eligible */
	uint32_t gen;
	/* start of the network read batch being processed (mono ns, 0: none) */
	int64_t batch_ns;
	uint32_t adopt_seq;
	/* protocol errors not logged yet, and when the last was logged */
	uint64_t protoerr_unlogged;
	int64_t protoerr_logged_ms;
	char protoerr_last[160];
	struct health_link client_link;
};

void health_init(struct health *h);


/* ---- hooks (one line each at their call site) ---- */

/* conn.c: a batch of lines read from a network starts now. */
void health_read_batch(struct health *h);
/* upstream.c: one parsed line from the network on link l (our nick and the
 * prefix's nick for KILL/QUIT; "" or NULL: unknown). Counts upstream_lines,
 * error numerics, ERROR/KILL/bans, and notes a PING to be answered. */
void health_upstream_line(struct health_link *l, const struct irc_msg *m,
			  const char *our_nick, const char *prefix_nick);
/* upstream.c: a network line was queued to >= 1 attached client (latency
 * observed against the current read batch). */
void health_relayed(struct health *h);
/* A channel PRIVMSG/NOTICE reached the channel's user `n` times (queued
 * to its clients; a client's own line: 1). ch may be NULL (untracked). */
void health_channel_lines(struct channel *ch, unsigned n);
/* session.c: s's attached clients went from none to one (or it was armed):
 * its session-channels are eligible from the next interval on. */
void health_session_attached(struct health *h, struct session *s);
/* upstream.c: we joined ch (a new JOIN, or a rejoin after a reconnect). */
void health_channel_joined(struct health *h, struct channel *ch);
/* session.c: an attached client was removed with this close reason
 * (peer_eof: the client sent EOF). Counts it if the worker closed it. */
void health_client_closed(struct health *h, const char *reason, bool peer_eof);
bool health_closed_by_worker(const char *reason, bool peer_eof);
/* conn.c: a line (len bytes, no CRLF) is being queued on a connection
 * whose writes are checked. Validates; a network line starting with
 * "PONG" answers the PINGs pending on l. Returns false when the line must
 * not be sent (malformed, to a network). */
bool health_line_out(struct health_link *l, const char *line, size_t len);
/* Adoption PING: the token of a new one, counted as sent at now_ms. */
uint32_t health_adopt_ping(struct health_link *l, int64_t now_ms);
/* A PONG with token text `tok` (after "baton-adopt-") was read on l. */
void health_adopt_pong(struct health_link *l, const char *tok);
/* From a timer (once a second): late adoption PINGs and unanswered
 * network PINGs on l as of now_ms (mono). Timeouts in ms. */
void health_link_check(struct health_link *l, int64_t now_ms,
		       int64_t adopt_timeout_ms, int64_t answer_timeout_ms);
/* control_channel.c lag tick. */
void health_loop_lag(struct health *h, double lag_s);

/* ---- the validator (also for tests) ----
 * NULL if line[0..len) is a well-formed IRC line for that peer, else what
 * is wrong: longer than HEALTH_NETWORK_LINE_MAX (after its tags; tags
 * over HEALTH_NETWORK_TAGS_MAX) / HEALTH_CLIENT_LINE_MAX with CRLF, a NUL, CR or LF inside, no command token, or a command that is
 * neither letters nor 3 digits. */
const char *health_line_check(const char *line, size_t len, enum health_peer peer);

/* ---- latency histogram ---- */
void health_observe_latency(struct health *h, double seconds);
/* The bucket of an observation (0..HEALTH_NBOUNDS; HEALTH_NBOUNDS: +Inf). */
size_t health_latency_bucket(double seconds);

/* ---- the answer ---- */

/* One interval's per-(network, channel) sums. */
struct health_agg;
struct health_agg_entry {
	const char *network; /* borrowed from the sessions: valid until */
	const char *channel; /* they change (use at once) */
	uint32_t sessions;
	uint64_t lines;
};
struct health_agg *health_agg_new(void);
void health_agg_free(struct health_agg *a);
/* Add s's eligible session-channels for the interval ending now and reset
 * its per-interval counts. Sessions not live are skipped. -ENOMEM. */
int health_agg_session(struct health_agg *a, const struct health *h,
		       struct session *s);
/* The entries, busiest first, at most HEALTH_MAX_CHANNELS and
 * HEALTH_MAX_NAME_BYTES of names. Valid until health_agg_free(). */
size_t health_agg_result(struct health_agg *a,
			 const struct health_agg_entry **out);

/* Fill out (initialised by the caller) with every counter and the channels
 * of the interval that ends now (sessions of b), then start the next
 * interval. What it allocates is released by health_fill_free(). 0 or
 * -ENOMEM (counters filled, channels left empty). */
int health_fill(struct health *h, struct bouncer *b,
		struct Baton__Control__Health *out);
void health_fill_free(struct Baton__Control__Health *out);

#endif
