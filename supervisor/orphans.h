/* supervisor/orphans.h: a supervisor starting up adopts the worker its dead
 * predecessor left serving (issue 10 §6; the worker's side is
 * sessiond/rendezvous.h), instead of binding the listeners anew and
 * starting a worker that would connect every session a second time.
 *
 * At start, before the listeners are bound, STATE_DIR/worker-*.sock are
 * tried in turn: a file nobody listens on (a worker that died) is removed;
 * a worker that closes the connection (it has a live supervisor) is left
 * alone; the first orphan gets a new control channel (ADOPT), answers
 * READY (adopted) and hands over the listeners it serves on. An orphan
 * with no session exits by itself (control_channel.h), so normally there
 * is at most one. Two that hold sessions (a supervisor that died during a
 * canary) are both let go, serving on: adopting one would make it start
 * the other's sessions a second time (ACCEPT starts the configured
 * sessions a worker does not hold); the supervisor then does not start. A worker still in the migration its
 * dead supervisor started answers when that migration ends (it does not
 * hold the sessions in transit; one that holds none then closes, and the
 * next is tried). Runs before the event loop and waits at most
 * ORPHANS_TIMEOUT_MS per worker. wait_ms > 0 (a re-exec, or a start right
 * after `systemctl restart`: the workers may not have seen their control
 * channels close yet): a worker that refuses (closes the connection,
 * before or after our ADOPT) is asked again every 20 ms for that long.
 *
 * Ownership: a filled struct orphan owns its fds and strings until
 * orphan_clear() or until they are taken (set to -1 / NULL).
 */
#ifndef BATON_SUPERVISOR_ORPHANS_H
#define BATON_SUPERVISOR_ORPHANS_H

#include <stddef.h>
#include <sys/types.h>

#include "control.pb-c.h"

#define ORPHANS_TIMEOUT_MS 3000

struct orphan {
	int ctl;                      /* our end of its new control channel */
	pid_t pid;
	int pidfd;                    /* pidfd_open(pid), -1 if unavailable */
	char *binary;                 /* /proc/PID/exe */
	Baton__Control__Ready *ready; /* its READY (adopted) */
	int *listen_fds;
	char **listen_names;          /* "irc ADDR:PORT" */
	size_t nlisten;
};

/* 1: *o filled; 0: no orphan; 2: do not start a worker (*o empty;
 * logged with the pids): several orphans with sessions, or a live worker
 * that did not answer within ORPHANS_TIMEOUT_MS (still in the migration
 * its dead supervisor started) or cannot be watched (no pidfd), or a
 * live worker that still refuses (closes the rendezvous: it has a
 * supervisor, or has not seen yet that its own exited) when wait_ms ends.
 * Never fails otherwise
 * (problems are logged: a supervisor that cannot adopt starts as if there
 * were none, and the listener bind then says what is in the way). */
int orphans_adopt(const char *state_dir, struct orphan *o, int wait_ms);
/* Accepts one orphans_adopt() left empty, and a cleared one. */
void orphan_clear(struct orphan *o);

#endif
