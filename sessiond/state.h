/* sessiond/state.h: (de)serialization of bouncer items to/from
 * proto/state.proto Item — the heart of a hot upgrade.
 *
 * Serialization is deterministic: the same objects always give the same
 * bytes, and serialize -> adopt -> serialize is byte-identical (tested).
 * Connections refer to their sockets by fd_index: the position in the item's
 * fd array, which is [upstream (if any), clients in order] for a session and
 * [the socket] for a pending client.
 */
#ifndef BATON_SESSIOND_STATE_H
#define BATON_SESSIOND_STATE_H

#include <stddef.h>
#include <stdint.h>

struct bouncer;
struct bouncer_item;

/* Pack a frozen item. *buf is malloc'd (caller frees). it->fds/it->nfds are
 * (re)built to list its sockets in fd_index order. Returns 0 or -errno. */
int state_serialize(struct bouncer_item *it, uint8_t **buf, size_t *len);

/* Connections left out of serialized items since the last call because
 * their TLS handshake was still running (an upstream: the session travels
 * without it and the new process connects again). Resets the count. */
unsigned state_take_handshakes_left(void);

/* Decode and validate one item and build its objects (no I/O, no events
 * armed). Takes ownership of fds[0..nfds) in every case: on failure every fd
 * is closed. Returns 0 with *out set (state ITEM_ADOPTED, not registered in
 * the bouncer), or -errno with a reason in err[errlen]. Whether the session
 * already exists is the caller's check (bouncer.c). */
int state_adopt(struct bouncer *b, const uint8_t *buf, size_t len, int *fds,
		size_t nfds, struct bouncer_item **out, char *err, size_t errlen);

#endif
