/* sessiond/bouncer_networks.h: soju.im/bouncer-networks for clients
 * (soju's doc/ext/bouncer-networks.md): one client connection per user
 * that lists the user's networks and binds one.
 *
 * A network's id (netid) is its name in the config: a user's network is
 * a session [user NAME/NETWORK] on a [network] the operator defined.
 * Attributes: name, state (read-only), host, port, tls (the operator's:
 * read-only), nickname, username, realname (the session's); pass is
 * refused as read-only (baton keeps no server password per session).
 *
 * - Login without a network: with the cap, `PASS user:password` (or SASL
 *   PLAIN as `user`) binds the user's first session in the file, unless
 *   `BOUNCER BIND netid` (after PASS or SASL, before CAP END) names one.
 * - RPL_ISUPPORT BOUNCER_NETID=netid to clients with the cap.
 * - BOUNCER LISTNETWORKS: BOUNCER NETWORK lines (in a
 *   soju.im/bouncer-networks batch for a client with `batch`).
 * - BOUNCER ADDNETWORK / CHANGENETWORK / DELNETWORK: the *baton edit path
 *   (service.h: the supervisor edits the file and reloads), within
 *   [supervisor] user_networks; errors as FAIL BOUNCER (standard replies).
 *
 * - soju.im/bouncer-networks-notify: the list once a client with it is
 *   attached (or once it asks for the cap later), then BOUNCER NETWORK
 *   lines when a network of its user connects, disconnects (`state`), is
 *   added (every attribute), changed (the changed ones) or removed (`*`)
 *   by a reload, whoever edited the file. Clients with it are listed here
 *   (the registry: bouncer_networks_client_update()/_gone()), so a
 *   notification costs what those clients cost, not the worker's size.
 * Bounds: a netid as service.h bounds network names; attributes at most
 * BN_MAX_ATTRS, each SESSION_EDIT_MAX_PAIR bytes as KEY=VALUE (its
 * session key: nick=, username=, realname=).
 */
#ifndef BATON_SESSIOND_BOUNCER_NETWORKS_H
#define BATON_SESSIOND_BOUNCER_NETWORKS_H

#include <stdbool.h>
#include <stddef.h>

#include "common/session_edit.h"

struct client;
struct irc_msg;

struct baton_config;
struct session;

#define BN_MAX_ATTRS SESSION_EDIT_MAX_PAIRS /* what one edit takes */

/* client_credentials() for a client with the cap whose ident names no
 * network: "user[@client]" (PASS user:password, else USER) + "/" + the
 * user's first session in the config. *ident malloc'd or NULL (no such
 * user, no session: the login fails as any unknown one). 0 or -ENOMEM. */
int bouncer_networks_ident(const struct client *cl, char **ident,
			   const char **password);
/* BOUNCER from a client that negotiated the cap (pending or attached). */
void bouncer_networks_command(struct client *cl, const struct irc_msg *m);
/* The ISUPPORT token of an attached client with the cap
 * ("BOUNCER_NETID=netid" into buf), NULL otherwise. */
const char *bouncer_networks_isupport(const struct client *cl, char *buf, size_t len);

/* cl's caps or phase changed (CAP REQ, attach, an adopted client armed):
 * listed for notifications while attached with -notify. initial: send the
 * list now (a new attachment, or the cap just asked for). */
void bouncer_networks_client_update(struct client *cl, bool initial);
void bouncer_networks_client_gone(struct client *cl);
/* s connected, started connecting, or lost its network. */
void bouncer_networks_state_changed(struct session *s);
/* A reload replaced `from` by `to` (both valid during the call). */
void bouncer_networks_reloaded(const struct baton_config *from,
			       const struct baton_config *to);

#endif
