/* common/control.h: the supervisor <-> worker control channel (fd 3 of a
 * worker, SOCK_SEQPACKET). Each frame (common/frame.h) carries one message
 * of proto/control.proto; the frame type below names it. fds ride with
 * LISTENERS (the listening sockets), MIGRATE (see CONTROL_MIGRATE) and
 * ADOPT (a new control channel for an orphaned worker).
 */
#ifndef BATON_COMMON_CONTROL_H
#define BATON_COMMON_CONTROL_H

#include <stddef.h>
#include <protobuf-c/protobuf-c.h>

#define CONTROL_FD 3 /* where a worker finds its control socket */

enum control_type {
	CONTROL_READY = 1,            /* worker -> supervisor */
	CONTROL_LISTENERS = 2,        /* supervisor -> worker, fds */
	CONTROL_ACCEPT = 3,           /* supervisor -> worker */
	/* supervisor -> worker. fds, in this order: [0] the migration
	 * channel end; outgoing=true only, when the supervisor has one:
	 * [1] a pidfd of the peer (target) process, opened by the supervisor
	 * right after fork() so it cannot name a recycled pid. A source that
	 * must SIGKILL the target and wait for its death before resuming uses
	 * it (pidfd_send_signal, poll for POLLIN); with only [0] it falls back.
	 * outgoing=false: exactly 1 fd. */
	CONTROL_MIGRATE = 4,
	CONTROL_MIGRATION_RESULT = 5, /* worker -> supervisor */
	CONTROL_PROGRESS = 6,         /* worker -> supervisor */
	CONTROL_STATUS_REQUEST = 7,   /* supervisor -> worker */
	CONTROL_STATUS = 8,           /* worker -> supervisor */
	CONTROL_EXIT = 9,             /* supervisor -> worker */
	CONTROL_PEER = 10,            /* supervisor -> worker, 0 or 1 fd */
	CONTROL_HEALTH_REQUEST = 11,  /* supervisor -> worker */
	CONTROL_HEALTH = 12,          /* worker -> supervisor */
	/* supervisor -> worker on its rendezvous socket (sessiond/rendezvous.h),
	 * 1 fd: the new control channel */
	CONTROL_ADOPT = 13,
	CONTROL_RELOAD = 14,          /* supervisor -> worker */
	CONTROL_RELOAD_RESULT = 15,   /* worker -> supervisor, one per RELOAD */
	CONTROL_NETWORK_EDIT = 16,    /* worker -> supervisor (a user's edit) */
	CONTROL_NETWORK_EDIT_RESULT = 17, /* supervisor -> worker, one per edit */
	/* worker -> supervisor (custody): fds, see proto/control.proto Custody */
	CONTROL_CUSTODY = 18,
};

/* The relay latency histogram of HEALTH (Health.relay_latency_buckets):
 * its finite upper bounds in seconds, one +Inf bucket after them. The
 * worker counts into them (sessiond/health.h), the supervisor reads them
 * (gates.c, exposition.c): one list for both sides. */
#define CONTROL_LATENCY_BOUNDS                                                 \
	{ 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5 }
#define CONTROL_LATENCY_NBOUNDS 13

/* Frames on a canary's peer link (CONTROL_PEER) between two workers. */
enum peer_type {
	/* A logged-in client for a session the sender does not hold: payload
	 * a state.proto Item whose `pending` connection has `forward` set;
	 * fds: its socket. */
	PEER_FORWARD = 1,
};

/* Pack `msg` and send it as one frame of `type` (fds borrowed, see
 * common/frame.h). Waits at most timeout_ms for room. Returns 0 or -errno. */
int control_send(int sock, enum control_type type, const ProtobufCMessage *msg,
		 const int *fds, size_t nfds, int timeout_ms);

#endif
