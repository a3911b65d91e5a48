/* supervisor/control_socket.h: batonctl's socket. AF_UNIX SOCK_STREAM at
 * [supervisor] control, mode 0600, only the supervisor's own uid (or root)
 * may talk (SO_PEERCRED). Newline-delimited JSON:
 *
 *   request   {"cmd":"status"} | {"cmd":"upgrade","binary":"/abs"} |
 *             {"cmd":"rollback"} | {"cmd":"releases"}
 *             upgrade and rollback take "force":true (supervisor.h
 *             supervisor_upgrade_force)
 *   response  {"progress":{"phase":...,"items_done":N,"items_total":M}}*
 *             {"result":{...}}            then the supervisor closes.
 *
 * A malformed request gets {"result":{"error":"..."}}.
 *
 * upgrade and rollback results have the same shape on every path (refused,
 * aborted, committed, abandoned at shutdown):
 *   {"result":"committed"|"partial"|"aborted", "refused":bool, "reason":"...",
 *    "kind":"upgrade"|"rollback",
 *    "from":{"pid","version","binary"}, "to":{"pid","version","binary"},
 *    "survivor":{"pid","version","binary"} | null,   who serves afterwards
 *    "sessions_lost":bool,  sessions moved to a worker that then died or
 *                           hung, or not yet handed over by a source that
 *                           died; the survivor starts them afresh (their
 *                           users reconnect)
 *    "sessions_lost_count":N, how many (0 when none)
 * "committed": every session arrived; "partial": the new worker serves but
 * sessions were lost (the source died halfway); "aborted": the old worker
 * serves (or nobody, see survivor).
 *    "sessions","connections","fds","chunks","freeze_ms","total_ms","time",
 *    "release_from","release_to"}   versions in the release history
 *                                   (releases.h), null when unknown
 * from.pid is 0 when nothing served; to.pid is 0 when no target started.
 *
 * releases: {"releases":[{"version","state","binary","source","sha256",
 *   "installed","served","retired","reason","pruned"}...newest first],
 *   "serving","rollback_target","file","problem","kept"}.
 *
 * Limits: at most 64 clients at once (more are accepted and closed at once);
 * the request line must be complete within 10 s of connecting; a client
 * that takes none of its pending output for 30 s is dropped (the operation
 * continues). Out of fds (EMFILE/ENFILE), accepting pauses for 1 s.
 */
#ifndef BATON_SUPERVISOR_CONTROL_SOCKET_H
#define BATON_SUPERVISOR_CONTROL_SOCKET_H

#include <stddef.h>

struct event_base;
struct supervisor;
struct control_socket;

/* Create the socket at `path`: a stale one (connect gives ECONNREFUSED) is
 * removed; when another process answers there, or whether one does cannot
 * be told, refuses with EADDRINUSE ("control socket PATH is in use by a
 * running supervisor"). NULL on failure, with errno set and a message in
 * err. */
struct control_socket *control_socket_new(struct event_base *base,
					  struct supervisor *sup, const char *path,
					  char *err, size_t errlen);
/* Is something answering on the control socket at `path`? Non-blocking
 * connect: 1 yes (connected, or a full backlog), 0 no (ECONNREFUSED: a
 * stale socket file; ENOENT: nothing there), -errno when it cannot be told
 * (e.g. -EACCES: maybe the live socket of another user). */
int control_socket_probe(const char *path);

/* Closes every client and removes the socket file. Accepts NULL. */
void control_socket_free(struct control_socket *cs);

#endif
