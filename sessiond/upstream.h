/* sessiond/upstream.h: a session's connection to its IRC network
 * (upstream.c): connect through the governor, registration, keepalive,
 * what the network says, reconnects. A session owns its upstream; the
 * upstream owns its conn (and so its fd). Included through session.h.
 */
#ifndef BATON_SESSIOND_UPSTREAM_H
#define BATON_SESSIOND_UPSTREAM_H

#include <stdbool.h>
#include <stdint.h>

#include "sessiond/governor.h"
#include "sessiond/health.h"
#include "sessiond/pb_unknown.h"

struct conn;
struct event;
struct sasl;
struct session;

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
	/* Times: CLOCK_MONOTONIC ms (clock_mono_ms()); wall-clock on the wire
	 * (state.proto rule 6). */
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
	/* The network echoes our PRIVMSG/NOTICE (echo-message acknowledged):
	 * the messages forwarded for clients without echo-message whose echo
	 * has not come back yet, oldest first (upstream_echo_expect()). Not
	 * serialized: after a migration an echo reaches its sender too (an
	 * echo, never a gap). */
	struct upstream_echo *echoes;
	size_t nechoes;
	struct sasl *sasl; /* SASL during registration (sasl.h), NULL: none yet */
	/* labeled-response with the network (it acknowledged batch and
	 * labeled-response): the labeled commands forwarded for clients whose
	 * answer has not ended yet, oldest first (upstream_label_add()).
	 * Owned; NULL when none. Not serialized: after a migration the
	 * network's answer reaches its clients unlabeled, as from a network
	 * without labeled-response. */
	struct upstream_label *labels;
	size_t nlabels;
	uint32_t next_label; /* baton's label "bt<n>" of the next one */
	struct pb_unknown unknown;
};

/* Labeled commands awaiting the network's answer: at most this many per
 * connection, and per client; more go unlabeled (no answer labeled, no
 * ACK: what a network without labeled-response gives). One unanswered for
 * UPSTREAM_LABEL_TTL_MS is forgotten (its late answer goes unlabeled; a
 * batch of it already begun is ended to its asker). */
#define UPSTREAM_MAX_LABELS 32
#define UPSTREAM_LABELS_PER_CLIENT 8
#define UPSTREAM_LABEL_TTL_MS 30000
/* A network's batch reference longer than this is not followed (its lines
 * reach the client unlabeled). */
#define UPSTREAM_BATCH_REF_MAX 32
struct upstream_label {
	uint64_t client_serial; /* struct client's serial */
	uint32_t id;            /* baton's label on the wire: "bt<id>" */
	int64_t sent_ms;        /* CLOCK_MONOTONIC */
	char label[65];         /* the client's (CLIENT_LABEL_MAX, as sent) */
	char batch[UPSTREAM_BATCH_REF_MAX + 1]; /* the network's labeled-response
						 * batch, "" until it starts */
};

/* At most this many echoes awaited (older ones are forgotten). */
#define UPSTREAM_MAX_ECHOES 32
struct upstream_echo {
	uint64_t client_serial; /* struct client's serial */
	char cmd;               /* 'P'RIVMSG, 'N'OTICE, 'T'AGMSG */
	char *key;              /* "target text" as forwarded ("target " for
				 * a TAGMSG) */
};

/* Start a connection to the configured network from source address
 * `gov_slot` of the network's governor (-1: no governor, the kernel
 * chooses). A numeric host connects now (non-blocking connect); a host
 * name is resolved first without blocking (resolver.h: s->lookup), and
 * the connect follows from the loop, whose failures (cannot resolve,
 * cannot connect) release the slot and back off like any failed connect,
 * logged with their reason. On success (0) the upstream or the lookup
 * holds the slot; on failure (-errno) the caller still holds it and
 * schedules a retry. */
int upstream_connect(struct session *s, int gov_slot);
/* Drop s's host-name lookup, if any (its slot is released). retry: the
 * session connects again when it is next armed (freeze); a late answer
 * never reaches s. */
void upstream_lookup_cancel(struct session *s, bool retry);
/* Build an upstream around an adopted conn (no events). */
struct upstream *upstream_new(struct session *s, struct conn *c);
void upstream_free(struct upstream *u); /* closes the conn, sends nothing */
void upstream_arm(struct upstream *u);
void upstream_freeze(struct upstream *u, bool flush);
/* A migrated session was armed here: PING :baton-adopt-<n> on a
 * registered upstream (health.h: adopt_pings_sent / _late). */
void upstream_adopt_ping(struct upstream *u);
/* Send a raw line upstream (ignored when not connected). A line the
 * network must refuse (its message part over IRC_MAX_MESSAGE bytes, its
 * tags over IRC_MAX_TAGS) is never sent: -EMSGSIZE (the caller tells its
 * client, 417). 0 otherwise. */
int upstream_send(struct session *s, const char *line);
/* Whether the network acknowledged capability `name` (s->caps). */
bool upstream_has_cap(const struct session *s, const char *name);
/* A PRIVMSG/NOTICE/TAGMSG (text "") to `target` forwarded for the client
 * of serial
 * `client_serial`, which did not ask for echo-message: when the network's
 * echo of it comes back it is stored and relayed to every client but that
 * one. Only on a network with echo-message; out of memory: forgotten (the
 * sender then gets the echo). */
void upstream_echo_expect(struct session *s, uint64_t client_serial,
			  const char *cmd, const char *target, const char *text);
/* Whether a client's labeled command can be forwarded with a label of
 * baton's (the network acknowledged batch and labeled-response). */
bool upstream_can_label(const struct session *s);
/* Remember that the client of serial `client_serial` sent a command
 * labeled `label` (at most 64 bytes, as sent): its tag for the network,
 * "label=bt<n>", into tag[n]. 0; -ENOTSUP (the network cannot label, not
 * connected), -ENOSPC (a bound above: forward it unlabeled), -ENOMEM. */
int upstream_label_add(struct session *s, uint64_t client_serial,
		       const char *label, char *tag, size_t n);
/* Forget the label upstream_label_add() just gave (the line was not sent). */
void upstream_label_cancel(struct session *s, const char *tag);
extern const struct conn_ops upstream_conn_ops;
/* Called by the session reaper for a dead upstream: log, notify clients,
 * schedule the reconnect, free. */
void upstream_lost(struct session *s);

#endif
