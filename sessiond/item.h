/* sessiond/item.h: what a migration moves, one item at a time: a session
 * (with its upstream and attached clients) or a pending client (not yet
 * logged in). bouncer.h hands items out opaquely; the core's files see
 * their fields here. An item is embedded in the object it moves.
 */
#ifndef BATON_SESSIOND_ITEM_H
#define BATON_SESSIOND_ITEM_H

#include <stddef.h>

struct session;
struct client;

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

#endif
