/* sessiond/sasl.h: SASL authentication of a session to its network during
 * registration (IRCv3 sasl-3.1/3.2; sasl.c). The mechanisms and the
 * AUTHENTICATE framing are sessiond/sasl_mech.h; this is when to send what,
 * and what a failure does.
 *
 * Configured per session ([user NAME/NETWORK] sasl, sasl_username,
 * sasl_password or sasl_password_file: docs/config.md). With `sasl` set:
 *   CAP LS 302 ... `sasl` (with a `sasl=` list naming the mechanism, or no
 *   list) -> CAP REQ includes sasl -> ACK -> AUTHENTICATE MECH ... ->
 *   903 -> CAP END. CAP END waits for the exchange (upstream.c asks
 *   sasl_cap_ack()).
 *
 * Policy when SASL does not succeed (rejected credentials 904/902, a
 * message too long 905, the mechanism missing 908 or absent from `sasl=`,
 * no sasl cap at all, a server signature that does not verify, an aborted
 * exchange 906): the session does NOT register unauthenticated. The
 * connection is closed with the reason (the upstream's verdict is
 * GOV_AUTH), the reason is logged, kept in the session (batonctl status),
 * told to the attached clients, and the session retries once per
 * `reconnect_max` through the governor (sasl_refused()); no CAP END is
 * sent, so the network never registers the connection. soju (upstream.go)
 * logs a 902/904/905/906 and sends CAP END, registering unauthenticated,
 * and does the same when the network lacks the cap or the mechanism;
 * baton refuses in every case because a user who configured SASL relies on
 * it (a cloak before the first JOIN, an identified nick, networks that
 * require SASL from some address ranges), and a silent unauthenticated
 * registration would give that up where nobody looks. The retry pace is
 * that of a ban: credentials do not improve by retrying and services count
 * failed logins.
 *
 * Migration: the mechanism state (SCRAM nonce and keys) never travels. A
 * connection frozen during an exchange carries only that fact (state.proto
 * Connection.sasl_state = 1); the adopting worker aborts the exchange on the
 * server's next AUTHENTICATE ("AUTHENTICATE *", 906) and starts it again,
 * or takes a 903/904 that arrives as the outcome.
 *
 * Ownership: a struct sasl belongs to its upstream (upstream_free() calls
 * sasl_free()); the failure reason belongs to the session.
 */
#ifndef BATON_SESSIOND_SASL_H
#define BATON_SESSIOND_SASL_H

#include <stdbool.h>
#include <stdint.h>

/* Bytes of a failure reason kept, its NUL included (status, notices,
 * state.proto Session.sasl_failure). */
#define SASL_REASON_MAX 300

struct irc_msg;
struct session;
struct upstream;
struct sasl;

void sasl_free(struct sasl *sa);

/* Whether SASL is configured for s. */
bool sasl_configured(const struct session *s);

/* One token of CAP LS ("name" or "name=value"): "sasl" is remembered and
 * added to u->cap_offered when configured. 0 or -ENOMEM. */
int sasl_cap_ls(struct upstream *u, const char *token);
/* The last CAP LS line was seen. False: SASL is configured but the network
 * does not offer it (or not our mechanism); the connection was closed. */
bool sasl_cap_ls_end(struct upstream *u);
/* CAP ACK `list`: starts the exchange when it holds sasl. True while CAP
 * END must wait (sasl.c sends it when the exchange ends). */
bool sasl_cap_ack(struct upstream *u, const char *list);
/* CAP NAK `list`: SASL cannot happen if it held sasl: closes. */
void sasl_cap_nak(struct upstream *u, const char *list);
/* 001 arrived: false if SASL is configured and did not succeed on this
 * connection (a server without CAP); the connection was closed. */
bool sasl_welcome(struct upstream *u);
/* AUTHENTICATE and numerics 900-908. Returns true: relay (never during
 * registration). */
bool sasl_line(struct upstream *u, const struct irc_msg *m);

/* Migration (state.c): state.proto Connection.sasl_state of u (0 none, 1
 * an exchange in progress, 2 succeeded and registration not finished),
 * and its adoption (the exchange restarts; a success stays one). -EINVAL
 * for an unknown value, -ENOMEM. */
#define SASL_WIRE_MAX 2
uint32_t sasl_wire_state(const struct upstream *u);
int sasl_adopt_state(struct upstream *u, uint32_t wire);

/* upstream_lost() of a connection that failed SASL (verdict GOV_AUTH):
 * schedule the next attempt one reconnect_max (with jitter) from now and
 * tell the clients. */
void sasl_refused(struct session *s);

/* The last failure of s (NULL: none since the last success), for STATUS.
 * The string belongs to the session. */
const char *sasl_failure(const struct session *s);

#endif
