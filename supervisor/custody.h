/* supervisor/custody.h: the supervisor's side of custody (docs/design.md
 * §1, "Custody"; the worker's side and the log's format:
 * sessiond/checkpoint.h).
 *
 * A worker with `custody` on hands the supervisor a duplicate of every
 * socket it creates or adopts (CUSTODY messages, proto/control.proto) and a
 * memfd it writes its checkpoint log into. struct custody holds them for
 * one worker: fds by the worker's custody id, and the log.
 *
 * When that worker dies, custody_restore_start() plays the source of a
 * migration (handoff/protocol.h) to a new worker: one item per session of
 * the log, the payload the dead worker wrote (the same serialization as a
 * migration, sessiond/state.c) plus a Recovery (proto/state.proto) built
 * from the records written after it, and the held sockets as its fds. The
 * target adopts them with the ordinary adoption path (sessiond/transfer.c),
 * so nobody sees a reconnect. The supervisor never parses IRC or the
 * protobuf state: it only concatenates encoded records.
 *
 * Poison pills: the session whose input was being handled when the worker
 * died (a CKPT_READ without its CKPT_INPUT) is implicated; after
 * `custody_crashes` implications it is restored quarantined (Recovery
 * field `quarantine`: its upstream closed, no reconnect, its user told).
 *
 * fd ownership: a custody owns every fd it holds (closed by
 * custody_free()); a restore takes the custody and closes each fd once the
 * chunk that carried it committed (the target holds it then) or at the end.
 */
#ifndef BATON_SUPERVISOR_CUSTODY_H
#define BATON_SUPERVISOR_CUSTODY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct event_base;
struct frame_msg;
struct jb;
struct json_object;
struct strmap;

struct custody;

struct custody *custody_new(void);
void custody_free(struct custody *c); /* accepts NULL; closes every fd */

/* A CUSTODY message from the worker (fds taken from m). 0, or -EPROTO
 * (malformed: the caller treats the control channel as lost). fds the
 * kernel could not install (m->fds_lost, frame_recv_lossy()) and copies
 * that would eat into the supervisor's fd reserve are not held, counted
 * (status fds_lost): their connections reconnect after a crash. An `end`
 * (custody ended in the worker) releases every fd and the log. */
int custody_handle(struct custody *c, struct frame_msg *m);

/* status `custody`: {active, ended, fds, sessions, checkpoint_bytes,
 * checkpoint_age_ms, compactions, fds_lost}. */
struct json_object *custody_json(const struct custody *c, struct jb *jb);
size_t custody_fd_count(const struct custody *c);

/* The outcome of a restore, for status `crashes[]`, metrics and the log. */
struct custody_result {
	bool committed;            /* the target adopted the sessions */
	unsigned sessions_restored, sessions_lost;
	unsigned sessions_skipped; /* in `exclude`: the target had them */
	unsigned sessions_rejected; /* a malformed record (past a bound):
				     * not restored, counted in lost too */
	unsigned connections_kept, connections_reconnected;
	uint64_t lines_lost;
	char implicated[256];      /* the session handled at the crash, "" */
	char quarantined[256];     /* ... quarantined by this crash, "" */
	char reason[256];
};

struct custody_restore;
typedef void (*custody_restore_cb)(void *arg, const struct custody_result *r);

/* Start restoring `held` (taken) into the worker whose end of a migration
 * channel is `target_fd`'s peer: `channel` is our end (taken). strikes:
 * session key -> (uintptr_t) crash implications so far, updated here
 * (borrowed); max_strikes: `custody_crashes`. cb runs once, from the
 * loop, when the handoff ended (the caller then waits for the target's
 * MIGRATION_RESULT and serves). NULL with *err on failure (held freed). */
/* exclude: session keys the target already holds (borrowed, may be NULL):
 * not sent, counted neither restored nor lost (a migration whose source
 * died: the target has the chunks that committed). */
struct custody_restore *custody_restore_start(
	struct event_base *base, struct custody *held, int channel,
	pid_t target_pid, int timeout_ms, struct strmap *strikes,
	unsigned max_strikes, const struct strmap *exclude,
	custody_restore_cb cb, void *arg, int *err);
/* The sessions c's log holds now (keys -> (void *)1; a new map the caller
 * frees with strmap_free), or NULL (no log, unreadable, out of memory). */
struct strmap *custody_session_keys(const struct custody *c);
void custody_restore_free(struct custody_restore *r); /* accepts NULL */
/* Whether custody has a log worth restoring (a checkpoint was handed). */
bool custody_has_checkpoint(const struct custody *c);

#endif
