/* supervisor/listeners.h: the listening sockets from [listen]. The supervisor
 * owns them for its whole life and lends them to every worker it starts
 * (LISTENERS borrows fds), so a crashed or replaced worker never takes a
 * listener with it. Under systemd they may come from baton.socket (socket
 * activation) or from the fd store (a restart), matched to the [listen]
 * lines by kind (the fd's name, sysd.h) and bound address.
 */
#ifndef BATON_SUPERVISOR_LISTENERS_H
#define BATON_SUPERVISOR_LISTENERS_H

#include <stddef.h>

struct baton_config;
struct config_problems;
struct listeners;
struct sysd_fds;

enum listener_origin {
	LISTENER_BOUND,            /* bound by this process */
	LISTENER_FROM_SOCKET_UNIT, /* baton.socket (FileDescriptorName=irc/ircs) */
	LISTENER_FROM_FD_STORE,    /* our own, kept by systemd across a restart */
	LISTENER_FROM_ORPHAN,      /* the worker a dead supervisor left (orphans.h) */
};

/* Bind every [listen] address (each result of getaddrinfo), SO_REUSEADDR,
 * non-blocking, CLOEXEC, backlog 1024. On failure returns -errno, *out NULL
 * and a message "FILE:LINE: ..." in err. */
int listeners_bind(const struct baton_config *cfg, struct listeners **out,
		   char *err, size_t errlen);

/* Like listeners_bind, but first takes the fds systemd passed (`passed`,
 * from sysd_fds_take; NULL or empty: bind everything). Every [listen]
 * address (each getaddrinfo result) takes the passed fd bound to that
 * address; taken entries of `passed` are set to -1. Refused, with a message
 * naming both sides: a passed fd whose name is not irc, ircs, listen-* or
 * custody-*, a socket of baton.socket that is not a listening TCP socket,
 * whose address no [listen] line has, or whose name (irc/ircs) is not the
 * line's kind. A [listen] address nobody passed is bound here (with a
 * warning when baton.socket passed others: it may be missing there).
 * Listeners from the fd store that the config no
 * longer has (or that changed kind), and custody-* fds, are closed and
 * removed from the store (FDSTOREREMOVE=1). */
int listeners_open(const struct baton_config *cfg, struct sysd_fds *passed,
		   struct listeners **out, char *err, size_t errlen);

/* Hand every listener this process bound itself to systemd's fd store
 * (FDSTORE=1, FDNAME=listen-KIND-HOST-PORT), so that a restart of the
 * service gets it back instead of rebinding. Returns how many were sent (0
 * outside systemd). Needs FileDescriptorStoreMax= in the unit. */
int listeners_store(const struct listeners *l);
enum listener_origin listeners_origin(const struct listeners *l, size_t i);

void listeners_free(struct listeners *l); /* accepts NULL; closes the fds */
/* The listeners an adopted worker served on (orphans.h): fds and names
 * (arrays of n, malloc'ed) are taken on success. NULL: out of memory. */
struct listeners *listeners_adopt(int *fds, char **names, size_t n);

size_t listeners_count(const struct listeners *l);
const int *listeners_fds(const struct listeners *l);          /* owned by l */
const char *const *listeners_names(const struct listeners *l); /* "irc 127.0.0.1:6667" */

/* --check: try to bind each address (and close it again); every failure is
 * added to `problems` as "FILE:LINE: ...". Skipped after
 * listeners_check_skip_bind(): under systemd the addresses are held by
 * baton.socket or the fd store while ExecStartPre= runs. */
void listeners_check(const struct baton_config *cfg,
		     struct config_problems *problems);
void listeners_check_skip_bind(void);

/* Bind one HOST:PORT (used for the metrics address too). Returns an fd or
 * -errno; gai errors map to -EADDRNOTAVAIL with the text in err. */
int listeners_bind_one(const char *host, const char *port, char *name,
		       size_t namelen, char *err, size_t errlen);

#endif
