/* sessiond/control_channel.h: this worker's side of the control channel with the
 * supervisor (common/control.h, proto/control.proto): READY, listeners,
 * accept on/off, migrations, status, health samples (health.h), exit.
 * When the supervisor dies the worker is orphaned and serves on until a new
 * supervisor adopts it (rendezvous.h) or it holds no session any more.
 * Mid-migration an adoption waits for the migration's end; an orphaned
 * target whose migration committed accepts logins by itself. */
#ifndef BATON_SESSIOND_CONTROL_CHANNEL_H
#define BATON_SESSIOND_CONTROL_CHANNEL_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct bouncer;
struct baton_config;
struct control_channel;

/* fd: the control socket (ownership transferred). */
struct control_channel *control_channel_new(struct event_base *base, int fd, struct bouncer *b,
			  const struct baton_config *cfg);
void control_channel_free(struct control_channel *w); /* accepts NULL */

/* Send READY. problems/nproblems: preflight failures (preflight_ok is
 * nproblems == 0). Returns 0 or -errno. */
int control_channel_send_ready(int fd, char **problems, size_t nproblems);
/* READY of an adopted worker (no preflight: it is serving already). */
int control_channel_send_ready_adopted(int fd, bool adopted);

/* Listen for a supervisor that adopts this worker once its own is gone
 * (rendezvous.h), in state_dir. 0 or -errno (the worker serves on, but an
 * orphan could not be adopted: logged by the caller). */
int control_channel_rendezvous(struct control_channel *w, const char *state_dir);

#endif
