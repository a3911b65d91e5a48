/* supervisor/listeners.h: the listening sockets from [listen]. The supervisor
 * owns them for its whole life and lends them to every worker it starts
 * (LISTENERS borrows fds), so a crashed or replaced worker never takes a
 * listener with it.
 */
#ifndef BATON_SUPERVISOR_LISTENERS_H
#define BATON_SUPERVISOR_LISTENERS_H

#include <stddef.h>

struct baton_config;
struct config_problems;
struct listeners;

/* Bind every [listen] address (each result of getaddrinfo), SO_REUSEADDR,
 * non-blocking, CLOEXEC, backlog 1024. On failure returns -errno, *out NULL
 * and a message "FILE:LINE: ..." in err. */
int listeners_bind(const struct baton_config *cfg, struct listeners **out,
		   char *err, size_t errlen);
void listeners_free(struct listeners *l); /* accepts NULL; closes the fds */
/* The listeners an adopted worker served on (orphans.h): fds and names
 * (arrays of n, malloc'ed) are taken on success. NULL: out of memory. */
struct listeners *listeners_adopt(int *fds, char **names, size_t n);

size_t listeners_count(const struct listeners *l);
const int *listeners_fds(const struct listeners *l);          /* owned by l */
const char *const *listeners_names(const struct listeners *l); /* "irc 127.0.0.1:6667" */

/* --check: try to bind each address (and close it again); every failure is
 * added to `problems` as "FILE:LINE: ...". */
void listeners_check(const struct baton_config *cfg,
		     struct config_problems *problems);

/* Bind one HOST:PORT (used for the metrics address too). Returns an fd or
 * -errno; gai errors map to -EADDRNOTAVAIL with the text in err. */
int listeners_bind_one(const char *host, const char *port, char *name,
		       size_t namelen, char *err, size_t errlen);

#endif
