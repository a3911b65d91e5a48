/* sessiond/peer.h: the link between the two workers of a canary (the
 * supervisor hands each one end of a SOCK_SEQPACKET socketpair:
 * CONTROL_PEER). During a canary the old worker keeps the listeners and the
 * new one holds the cohort's sessions; a client that logs in on one worker
 * for a session the other holds travels over this link with its socket and
 * its state (a state.proto Item with `pending.forward` set: who it logged
 * in as, its unread input, TLS record state), so it reaches its session
 * without reconnecting and its lines are parsed by one worker only.
 *
 * Frames are common/frame.h messages of type PEER_FORWARD
 * (common/control.h). The link carries nothing else; a malformed frame is
 * logged and dropped (its fds closed), EOF ends the link.
 *
 * Ownership: the peer owns its socket; fds received are handed to the
 * arrived callback, which owns them from then on.
 */
#ifndef BATON_SESSIOND_PEER_H
#define BATON_SESSIOND_PEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct peer;

/* A forwarded client arrived: adopt it (take ownership of fds in every
 * case). Returns 0 or -errno with a reason in err. */
typedef int (*peer_arrived_fn)(void *arg, const uint8_t *buf, size_t len,
			       int *fds, size_t nfds, char *err, size_t errlen);

/* fd: ownership transferred (closed on failure too). */
struct peer *peer_new(struct event_base *base, int fd, peer_arrived_fn fn,
		      void *arg);
void peer_free(struct peer *p); /* accepts NULL */
/* false once the link ended (EOF or error). */
bool peer_alive(const struct peer *p);

/* Send one forwarded client (fds borrowed; the caller closes its copies
 * once this returns 0). Waits at most PEER_SEND_TIMEOUT_MS for room: the
 * peer is a worker that reads its link from its event loop. 0 or -errno. */
#define PEER_SEND_TIMEOUT_MS 200
int peer_send(struct peer *p, const uint8_t *buf, size_t len, const int *fds,
	      size_t nfds);

/* Handle every frame already queued on the link now (before exit). */
void peer_drain(struct peer *p);

#endif
