/* sessiond/service.h: the `*baton` service nick (like soju's BouncerServ):
 * a user's client sends `PRIVMSG *baton :COMMAND ...` and gets NOTICEs
 * from `*baton` back; nothing of it reaches the network or the backlog.
 * Commands: help, network list|status (the user's sessions and their
 * state), network add|set|del (within [supervisor] user_networks).
 *
 * Edits are the supervisor's (the config file stays the source of truth):
 * the worker sends NETWORK_EDIT on its control channel (control.proto) and
 * the supervisor edits the file as `batonctl network add|set|del` does,
 * answers NETWORK_EDIT_RESULT and reloads the file into this worker
 * (supervisor/user_edit.h). service_edit() is that path for every caller
 * (also soju.im/bouncer-networks, bouncer_networks.h).
 *
 * Bounds: one edit in flight per client, SERVICE_MAX_PENDING in the
 * worker, SERVICE_EDIT_USER_BURST then one per SERVICE_EDIT_USER_EVERY_MS
 * per user, and SERVICE_EDIT_BURST then one per SERVICE_EDIT_EVERY_MS for
 * all users of the worker, each answered within SERVICE_EDIT_TIMEOUT_MS
 * (an older supervisor never answers); arguments as session_edit.h bounds
 * them.
 * Pending edits belong to this module; a client that goes away drops its
 * own (service_client_gone(), from client_free()).
 */
#ifndef BATON_SESSIOND_SERVICE_H
#define BATON_SESSIOND_SERVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/session_edit.h"

struct client;

#define SERVICE_NICK "*baton"
#define SERVICE_MAX_PENDING 64
#define SERVICE_EDIT_TIMEOUT_MS 10000
/* Edits asked of the supervisor by this worker: a burst, then one per
 * SERVICE_EDIT_EVERY_MS (each costs the supervisor a load of the whole
 * file and a reload: users must not be able to keep it busy). */
#define SERVICE_EDIT_BURST 20
#define SERVICE_EDIT_EVERY_MS 2000
/* And each user's own: half the worker's burst, refilled slower than the
 * worker's, so one user can never spend the worker's and lock the others
 * out (enough for a user setting up a few networks at once). */
#define SERVICE_EDIT_USER_BURST 10
#define SERVICE_EDIT_USER_EVERY_MS 5000
/* The users' buckets: a table of this many, by the first
 * SERVICE_MAX_USER_KEY bytes of the name (service.c asserts that no
 * bucket still refilling is ever dropped for a new user). */
#define SERVICE_USER_SLOTS 64
#define SERVICE_MAX_USER_KEY 64
/* Bytes of the caller's ctx kept for done(). */
#define SERVICE_MAX_CTX 191
/* Bytes of a network name a user may give. */
#define SERVICE_MAX_NETWORK 64

/* How the worker sends NETWORK_EDIT (control_channel.c sets it; NULL: no
 * supervisor to ask, e.g. an orphan or a unit test). 0 or -errno. */
typedef int (*service_send_fn)(void *arg, uint64_t id, const char *user,
			       const char *network, const char *op,
			       char *const *pairs, size_t npairs);
void service_set_sender(service_send_fn fn, void *arg);
/* Tests: the answer's deadline (ms; 0: SERVICE_EDIT_TIMEOUT_MS); the
 * rate of edits starts full again. */
void service_set_timeout_ms(int ms);

/* Whether target (of a PRIVMSG/NOTICE) is the service nick. */
bool service_is_target(const char *target);
/* Whether a comma-separated target list names the service nick (alone or
 * not): a list with it and others is refused whole (client.c), so nothing
 * meant for *baton ever goes to the network. */
bool service_in_targets(const char *targets);
/* An attached client's PRIVMSG to *baton. */
void service_message(struct client *cl, const char *text);

/* An edit's answer: ok, or why not (a sentence). ctx: what the caller
 * gave service_edit() (copied; at most SERVICE_MAX_CTX bytes). */
typedef void (*service_done_fn)(struct client *cl, bool ok, const char *why,
				const char *ctx);
/* Ask the supervisor for op on the client's user's session `network`.
 * Returns 0 (done() follows from the loop: the answer, a timeout, or the
 * supervisor gone) or -errno with why filled (nothing follows):
 * -EBUSY an edit of this client in flight, -EAGAIN too many in the
 * worker (in flight, or lately: the user's rate or the worker's), -ENOTCONN no supervisor, -EINVAL an argument past its bounds. */
int service_edit(struct client *cl, enum session_edit_op op, const char *network,
		 char *const *pairs, size_t npairs, service_done_fn done,
		 const char *ctx, char *why, size_t whylen);
/* NETWORK_EDIT_RESULT from the supervisor (message NULL: none). */
void service_edit_result(uint64_t id, bool ok, const char *message);
void service_client_gone(struct client *cl);
/* A NOTICE from *baton to cl (@time if it enabled server-time; a label,
 * if any, is added by client.c: client_label_end()). */
void service_notice(struct client *cl, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));



struct bouncer;
/* A session's state as bouncer-networks names it: "connected",
 * "connecting" or "disconnected"; detail (may be NULL) gets a sentence
 * (the nick and server, or why it waits). */
const char *service_session_state(struct bouncer *b, const char *user,
				  const char *network, char *detail, size_t len);
#endif
