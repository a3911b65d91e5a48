/* supervisor/control_server.h: batonctl's socket. AF_UNIX SOCK_STREAM at
 * [supervisor] control, mode 0600, only the supervisor's own uid (or root)
 * may talk (SO_PEERCRED). Newline-delimited JSON:
 *
 *   request   {"cmd":"status"} | {"cmd":"upgrade","binary":"/abs"} |
 *             {"cmd":"rollback"}
 *   response  {"progress":{"phase":...,"items_done":N,"items_total":M}}*
 *             {"result":{...}}            then the supervisor closes.
 *
 * A malformed request gets {"result":{"error":"..."}}.
 */
#ifndef BATON_SUPERVISOR_CONTROL_SERVER_H
#define BATON_SUPERVISOR_CONTROL_SERVER_H

#include <stddef.h>

struct event_base;
struct supervisor;
struct control_server;

/* Create the socket at `path` (removing a stale one; refusing when another
 * process answers there). Returns 0 or -errno with a message in err. */
int control_server_new(struct event_base *base, struct supervisor *sup,
		       const char *path, struct control_server **out,
		       char *err, size_t errlen);
/* Closes every client and removes the socket file. Accepts NULL. */
void control_server_free(struct control_server *cs);

#endif
