/* sessiond/control_channel.h: this worker's side of the control channel with the
 * supervisor (common/control.h, proto/control.proto): READY, listeners,
 * accept on/off, migrations, status, health samples (health.h), exit. */
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

#endif
