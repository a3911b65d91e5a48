/* supervisor/worker_process.h: one baton-sessiond worker process as seen by the
 * supervisor: spawn it with its control socket on fd 3, read what it says,
 * tell it what to do, learn when it exits.
 *
 * Events reach one handler at a time (worker_set_handler), so whoever drives
 * the worker right now (the supervisor for the serving worker, a migration
 * for its source and target) sees every message; there is no broadcast.
 *
 * Lifetime: the supervisor reaps children (SIGCHLD) and calls worker_reaped()
 * (an adopted worker, not our child: worker_reaped_adopted() when its pidfd
 * says it is gone);
 * the handler then receives WORKER_EXITED and must drop its pointer, because
 * the supervisor frees the worker right after that callback returns.
 * worker_free() during a callback of the same worker is deferred safely.
 *
 * fd ownership: the worker owns its end of the control socket and a pidfd of
 * its process (opened right after fork, before the child can be reaped, so it
 * can never name a recycled pid); LISTENERS and MIGRATE borrow the fds passed
 * in (the caller keeps and closes its copies).
 */
#ifndef BATON_SUPERVISOR_WORKER_PROCESS_H
#define BATON_SUPERVISOR_WORKER_PROCESS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "control.pb-c.h"

struct event_base;
struct json_object;
struct worker;

enum worker_event {
	WORKER_READY,    /* msg: const Baton__Control__Ready * (also stored) */
	WORKER_PROGRESS, /* msg: const Baton__Control__Progress * */
	WORKER_RESULT,   /* msg: const Baton__Control__MigrationResult * */
	WORKER_EXITED,   /* msg: NULL; worker_exit_status() is valid */
};

typedef void (*worker_cb)(struct worker *w, enum worker_event ev,
			  const void *msg, void *arg);

/* STATUS answer (or NULL when the worker lost its control socket or exited
 * before answering). */
typedef void (*worker_status_cb)(struct worker *w,
				 const Baton__Control__Status *st, void *arg);
/* HEALTH answer (or NULL, as above). The message belongs to w and stays
 * valid until the next HEALTH or worker_free() (worker_last_health()). */
typedef void (*worker_health_cb)(struct worker *w,
				 const Baton__Control__Health *h, void *arg);

/* RELOAD_RESULT (or NULL, as above); valid during the call only. */
typedef void (*worker_reload_cb)(struct worker *w,
				 const Baton__Control__ReloadResult *r, void *arg);

/* fork + exec `binary -c config_path --worker [--target]` with the control
 * socket on fd 3 and stderr inherited. Returns NULL and sets *err (-errno)
 * when the socketpair or fork fails; an exec failure shows up as an exit
 * with status 127 before READY. */
struct worker *worker_spawn(struct event_base *base, const char *binary,
			    const char *config_path, bool target,
			    int kill_timeout_s, int *err);
void worker_free(struct worker *w); /* accepts NULL; does not kill */

void worker_set_handler(struct worker *w, worker_cb cb, void *arg);

pid_t worker_pid(const struct worker *w);
/* pidfd of the worker process (owned by w, closed by worker_free), or -1
 * when pidfd_open failed (old kernel, seccomp). */
int worker_pidfd(const struct worker *w);
const char *worker_binary(const struct worker *w);
bool worker_is_ready(const struct worker *w);
bool worker_has_exited(const struct worker *w);
/* READY contents; NULL before READY. */
const Baton__Control__Ready *worker_ready_info(const struct worker *w);
const char *worker_version(const struct worker *w); /* "" before READY */
/* The SHA-256 (64 hex digits) of the config file as this worker last
 * loaded it: at its start, then at each reload it applied (the supervisor
 * records it: supervisor/user_edit.h); "" unknown. */
#define WORKER_CONFIG_SHA_HEX 65
const char *worker_config_sha(const struct worker *w);
void worker_set_config_sha(struct worker *w, const char *sha);
/* Human readable wait status, e.g. "exit status 1" or "killed by signal 9
 * (Killed)". Valid after WORKER_EXITED. */
const char *worker_exit_status(const struct worker *w);
int worker_exit_code(const struct worker *w); /* raw wait status */
/* Seconds since spawn (monotonic). */
double worker_uptime_s(const struct worker *w);

/* "active", "source", "target" (for status); not used for decisions. */
void worker_set_role(struct worker *w, const char *role);
const char *worker_role(const struct worker *w);

/* Last STATUS this worker sent (zeros before the first). Its `version`,
 * when the worker sent one, lives as long as w. */
const Baton__Control__Status *worker_last_status(const struct worker *w);
/* The last STATUS's networks as a JSON array (a new object, the caller's;
 * empty before the first STATUS or from a worker that sends none; NULL:
 * out of memory): per network sessions, connected, waiting, capacity,
 * addresses, max_connections_per_ip, throttled_addresses, wait_reason
 * ("none", "slots", "throttled", "paced") and advice (what the waiting
 * users were told, or null). */
struct json_object *worker_networks_json(const struct worker *w);
/* Whether any STATUS arrived yet (worker_last_status() is not just zeros). */
bool worker_has_status(const struct worker *w);
/* Last HEALTH this worker sent, owned by w (valid until the next HEALTH or
 * worker_free()); NULL before the first answer, and for ever from a worker
 * that does not implement HEALTH_REQUEST (it ignores it: see
 * worker_request_health). */
const Baton__Control__Health *worker_last_health(const struct worker *w);

/* Messages. Each returns 0 or -errno (-ENOTCONN once the control socket is
 * gone). Sending never blocks the loop for longer than ~1 s (-ETIMEDOUT
 * then, the control socket stays). */
int worker_send_listeners(struct worker *w, const int *fds,
			  const char *const *names, size_t n);
int worker_send_accept(struct worker *w, bool on);
/* MIGRATE with fds [channel_fd] or, for outgoing with peer_pidfd >= 0,
 * [channel_fd, peer_pidfd] (the order is the contract, common/control.h):
 * the source may have to SIGKILL the target and wait for its death, and the
 * pidfd is the only race-free handle on it. peer_pidfd -1: channel only
 * (the worker falls back). Both fds are borrowed. */
/* The state schema src writes when it sends to dst next: the newest both
 * read (from both READYs; the caller checked that their ranges overlap).
 * Without READYs nothing is asked (the worker writes schema 1). */
void worker_set_write_schema(struct worker *src, const struct worker *dst);
int worker_send_migrate(struct worker *w, bool outgoing, pid_t peer,
			int peer_pidfd, unsigned timeout_ms,
			unsigned chunk_sessions, int channel_fd);
/* The same for a canary's move: sel non-NULL makes it partial (the
 * source moves only matching sessions and keeps serving; the target
 * serves them at once). */
int worker_send_move(struct worker *w, bool outgoing, pid_t peer,
		     int peer_pidfd, unsigned timeout_ms, unsigned chunk_sessions,
		     int channel_fd, const Baton__Control__Selector *sel);
/* PEER with one end of a canary's link (borrowed), or -1: unlink. */
int worker_send_peer(struct worker *w, int link_fd, pid_t peer);
int worker_send_exit(struct worker *w);

/* Ask for a STATUS; on 0, cb runs exactly once unless cancelled (with NULL
 * when the control socket is lost first). At most one STATUS_REQUEST is
 * outstanding per worker: while one is, new waiters share its answer, and a
 * (cb, arg) pair already waiting is not added twice. The request is sent
 * without waiting for room; a worker that does not read its control socket
 * gives no answer (-ETIMEDOUT, nothing registered). A worker that never
 * answers keeps its request outstanding: waiters must have their own
 * deadline and cancel. */
int worker_request_status(struct worker *w, worker_status_cb cb, void *arg);
/* Drop every pending status callback registered with `arg`. */
void worker_cancel_status(struct worker *w, void *arg);

/* The same for HEALTH_REQUEST -> HEALTH (proto/control.proto Health):
 * exactly the rules of worker_request_status (one outstanding request, its
 * waiters share the answer, (cb, arg) added once, no wait for room, no
 * answer from a worker that never answers: its request stays outstanding,
 * so such a worker is asked once and never again). Every answer is also
 * stored (worker_last_health()) and shown to the tap.
 *
 * A HEALTH_REQUEST ends the worker's interval for its per-interval figures
 * (loop_lag_max_s, channels): whoever needs every interval (the canary's
 * gates) must see every answer, including those of requests it did not
 * send (the supervisor's metrics refresh asks too): use the tap. */
int worker_request_health(struct worker *w, worker_health_cb cb, void *arg);
void worker_cancel_health(struct worker *w, void *arg);
/* One observer of every HEALTH answer of w, whoever asked, called before
 * the waiters (cb NULL: none). Replaces the previous tap. */
void worker_set_health_tap(struct worker *w, worker_health_cb cb, void *arg);

/* Send RELOAD (re-read the config file and apply it, control.proto
 * Reload). On 0, cb runs exactly once with this request's answer (each
 * RELOAD has its own: answers come in order), or with NULL when the control
 * socket is lost first, unless cancelled. Sent without waiting for room. */
int worker_request_reload(struct worker *w, worker_reload_cb cb, void *arg);
/* A user's edit from any worker (NETWORK_EDIT: valid during the call),
 * whoever handles the worker's other events (the supervisor, a migration,
 * a canary): one handler for the process, set by the supervisor. It
 * answers with worker_send_network_edit_result(). Without a handler the
 * request is refused. */
typedef void (*worker_edit_cb)(struct worker *w,
			       const Baton__Control__NetworkEdit *e, void *arg);
void worker_set_edit_handler(worker_edit_cb cb, void *arg);
/* The answer to a worker's NETWORK_EDIT (message NULL: none). 0 or -errno. */
int worker_send_network_edit_result(struct worker *w, uint64_t id, bool ok,
				    const char *message);
/* The answers of every RELOAD registered with arg are dropped. */
void worker_cancel_reload(struct worker *w, void *arg);

/* Ask the worker to leave (EXIT) and SIGKILL it if it has not exited after
 * `timeout_s`. Safe to call repeatedly. */
void worker_stop(struct worker *w, int timeout_s);
/* SIGKILL now (if still running). */
void worker_kill(struct worker *w);

/* Called by the supervisor's SIGCHLD reaper with the wait status. Invokes
 * the handler with WORKER_EXITED. */
void worker_reaped(struct worker *w, int wstatus);

/* A worker adopted from a dead supervisor (orphans.h): takes o's control
 * channel, pidfd, binary and READY (o keeps its listeners). Not our child:
 * its exit is seen on its pidfd, and then `adopted_exit` (set with
 * worker_set_adopted_exit()) is called, which must do what the SIGCHLD
 * path does with worker_reaped(): call worker_reaped_adopted() and free
 * it. NULL: out of memory (o unchanged). */
struct orphan;
struct worker *worker_adopt(struct event_base *base, struct orphan *o,
			    int kill_timeout_s);
bool worker_is_adopted(const struct worker *w);
void worker_set_adopted_exit(struct worker *w, void (*cb)(void *arg, struct worker *w),
			     void *arg);
void worker_reaped_adopted(struct worker *w);

/* Custody (custody.h): what this worker handed over, NULL if nothing. The
 * worker owns it; take it (ownership moves to the caller) before the
 * worker is freed, e.g. to restore its sessions after a crash. */
struct custody;
struct custody *worker_custody(const struct worker *w);
struct custody *worker_take_custody(struct worker *w);
#endif
