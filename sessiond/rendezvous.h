/* sessiond/rendezvous.h: where a supervisor started after this worker's
 * supervisor died finds the worker and adopts it (issue 10 §6: a supervisor
 * crash must not disconnect anyone).
 *
 * A worker whose control channel reaches EOF no longer exits: it is
 * orphaned and keeps serving its sessions and listeners
 * (control_channel.h). Every worker listens, for its whole life, on a
 * SOCK_SEQPACKET Unix socket STATE_DIR/worker-PID.sock (mode 0600 in the
 * 0700 state_dir). A connection is served only from this process's own
 * uid (SO_PEERCRED) and only while the worker is orphaned; otherwise it is
 * closed at once (a live supervisor owns this worker). An orphan takes one
 * frame, ADOPT with one fd, the new control channel, read within
 * RENDEZVOUS_TIMEOUT_MS; the connection is then closed. One connection at
 * a time: a second one while the first is read is closed.
 *
 * Ownership: the rendezvous owns its listening socket and its file (unlinked
 * by rendezvous_free()); the adopt callback owns the fd it is given.
 */
#ifndef BATON_SESSIOND_RENDEZVOUS_H
#define BATON_SESSIOND_RENDEZVOUS_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct rendezvous;

#define RENDEZVOUS_TIMEOUT_MS 2000
/* Out of fds, accepting pauses this long (the connection waits queued). */
#define RENDEZVOUS_PAUSE_MS 500

/* Whether this worker may be adopted now (its supervisor is gone). */
typedef bool (*rendezvous_orphaned_fn)(void *arg);
/* A supervisor's new control channel (ownership transferred). */
typedef void (*rendezvous_adopt_fn)(void *arg, int control_fd);

/* Listen on STATE_DIR/worker-PID.sock. NULL with *err set (-errno) when it
 * cannot (the worker serves on; it just cannot be adopted). */
struct rendezvous *rendezvous_new(struct event_base *base, const char *state_dir,
				  rendezvous_orphaned_fn orphaned,
				  rendezvous_adopt_fn adopt, void *arg, int *err);
/* Closes the socket and unlinks its file. Accepts NULL. */
void rendezvous_free(struct rendezvous *r);
const char *rendezvous_path(const struct rendezvous *r);

/* The name a worker of pid listens on, in state_dir: "worker-PID.sock".
 * The supervisor's side looks for this pattern (supervisor/orphans.h). */
#define RENDEZVOUS_PREFIX "worker-"
#define RENDEZVOUS_SUFFIX ".sock"

#endif
