/* supervisor/supervisor.h: the supervisor's core: which worker serves, crash
 * restarts, upgrades and rollbacks, status. main.c wires it to signals, the
 * control socket (control_socket.h) and metrics (metrics.h).
 *
 * Replies to control requests are JSON objects handed to a reply callback:
 * zero or more {"progress":{...}} and then exactly one {"result":{...}}
 * (final = true). The callback does not own the object. A requester that
 * goes away calls supervisor_detach() with its arg; the operation itself
 * continues (a migration is never abandoned halfway because a client left).
 */
#ifndef BATON_SUPERVISOR_SUPERVISOR_H
#define BATON_SUPERVISOR_SUPERVISOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct baton_config;
struct event_base;
struct evbuffer;
struct json_object;
struct listeners;
struct supervisor;

typedef void (*supervisor_reply_cb)(struct json_object *msg, bool final,
				    void *arg);

/* Takes ownership of cfg and listeners. `sessiond` is the worker binary
 * (absolute). */
struct supervisor *supervisor_new(struct event_base *base,
				  struct baton_config *cfg,
				  struct listeners *listeners,
				  const char *sessiond);
void supervisor_free(struct supervisor *sup); /* accepts NULL; kills workers */

/* Spawn the first worker. Returns 0 or -errno. If the first worker never
 * becomes READY and serving, the loop is stopped and supervisor_exit_code()
 * returns 1 (a daemon may only fail at startup). */
int supervisor_start(struct supervisor *sup);
/* Instead of supervisor_start(): serve with the worker a dead supervisor
 * left (orphans.h; its control channel, pidfd, binary and READY are taken
 * from o). 0 or -ENOMEM (the orphan serves on; the caller must not start
 * another worker beside it). */
struct orphan;
int supervisor_start_adopted(struct supervisor *sup, struct orphan *o);
int supervisor_exit_code(const struct supervisor *sup);

/* `batonctl upgrade-supervisor BIN` (issue 10 §5): re-execute this process
 * as BIN (execve in place: the pid systemd watches stays). Refused at once
 * (-errno, why filled, client_fd not taken) while stopping, during a
 * migration, a canary or another re-exec being prepared, with no worker
 * serving, or for a path that is not an executable absolute one.
 * 1 (why filled, nothing done, client_fd not taken): BIN is the very file
 * this process runs (same inode) and not force: `systemctl reload` asks
 * every time, and only a changed binary is re-executed.
 * Otherwise 0 and client_fd (a dup of batonctl's connection, without
 * CLOEXEC) is owned from now on: `BIN --version` runs in a child the loop
 * watches (at most 5 s; the supervisor serves on meanwhile). If it is not
 * a baton supervisor's, or a migration or canary started meanwhile, the
 * refusal is written on client_fd. Else client_fd travels across execve in
 * SUPERVISOR_REEXEC_ENV ("FD,PID,VERSION"), every other fd closes, the
 * worker serves on as an orphan and the new image adopts it (orphans.h)
 * and reports on client_fd (supervisor_reexec_report()). If execve fails,
 * the old image serves on and says so on client_fd. */
#define SUPERVISOR_REEXEC_ENV "BATON_SUPERVISOR_REEXEC"
int supervisor_reexec(struct supervisor *sup, const char *binary, bool force,
		      int client_fd, char *why, size_t len);
/* The new image's one result line to batonctl: committed (the worker was
 * adopted) or partial (a fresh worker started). Closes client_fd. */
int supervisor_reexec_report(struct supervisor *sup, int client_fd,
			     pid_t from_pid, const char *from_version,
			     bool adopted);

/* SIGCHLD: reap every exited child and tell its worker. */
void supervisor_reap(struct supervisor *sup);

/* SIGTERM/SIGINT: EXIT every worker (SIGKILL after handoff_timeout), then
 * stop the loop. */
void supervisor_shutdown(struct supervisor *sup);

/* `systemctl restart` (main.c asks systemd, sysd_term_query()): stop the
 * loop leaving the serving worker serving, as after a supervisor crash, so
 * that the supervisor systemd starts next adopts it (orphans.h) and nobody
 * is disconnected; its control channel closes as we exit. Returns 0, or
 * falls back to supervisor_shutdown() and returns -EBUSY with the reason
 * logged when the worker cannot be left alone: a migration, canary,
 * custody restore or re-exec is under way, more than one worker runs, or
 * none serves (supervisor_leave_refusal()). */
int supervisor_leave(struct supervisor *sup);
/* Why supervisor_leave() would stop everything instead, or NULL. */
const char *supervisor_leave_refusal(const struct supervisor *sup);

/* Control requests. */
void supervisor_status(struct supervisor *sup, supervisor_reply_cb cb, void *arg);
/* binary NULL: rollback to the previous binary. */
void supervisor_upgrade(struct supervisor *sup, const char *binary,
			supervisor_reply_cb cb, void *arg);
/* The same with --force (releases.h): deploy a release marked bad, replace
 * an installed version by another binary, or (rollback) go to the most
 * recent release in any state when no good one is left. */
void supervisor_upgrade_force(struct supervisor *sup, const char *binary,
			      bool force, supervisor_reply_cb cb, void *arg);
/* `batonctl releases`: one result, releases_json() (releases.h). */
void supervisor_releases(struct supervisor *sup, supervisor_reply_cb cb,
			 void *arg);
void supervisor_detach(struct supervisor *sup, void *arg);
/* `batonctl reload` and SIGHUP (supervisor/reload.h): the serving worker
 * applies the config file without an upgrade. Refused while stopping,
 * during a migration or a canary, or with no worker serving. */
void supervisor_reload(struct supervisor *sup, supervisor_reply_cb cb, void *arg);
/* Why a reload cannot run now (a migration, a canary...), NULL: it can. */
const char *supervisor_reload_busy(const struct supervisor *sup);
const char *supervisor_config_path(const struct supervisor *sup);
/* The SHA-256 (hex) of the config file as the serving worker last loaded
 * it ("" unknown or none serving): a user's edit is refused when the file
 * differs (user_edit.h). supervisor_config_written(): the supervisor wrote
 * the file itself (a user's edit, whose reload follows): that is what the
 * serving worker is about to load. */
const char *supervisor_config_loaded(const struct supervisor *sup);
void supervisor_config_written(struct supervisor *sup, const char *sha);

/* Canary (canary.h): action "start" (plan), "grow" (percent_x100),
 * "promote", "abort", "status". Refused (with the usual result shape)
 * while a migration runs, or a second canary. */
struct canary_plan;
void supervisor_canary(struct supervisor *sup, const char *action,
		       const struct canary_plan *plan, uint32_t percent_x100,
		       supervisor_reply_cb cb, void *arg);

/* What the metrics show (supervisor/exposition.h); read-only snapshots. */
struct expo_hist;
struct worker;
struct supervisor_stats {
	unsigned crashes;
	/* custody (custody.h): fds held for the serving worker, crashes
	 * restored from custody, lines lost in them, sessions quarantined */
	uint64_t custody_fds, custody_restores, custody_lines_lost;
	uint64_t custody_quarantined;
	unsigned migrations_committed, migrations_aborted, migrations_refused;
	bool migration_running;
	bool have_last_migration;
	double last_freeze_ms, last_total_ms;
	/* freeze (s) of every finished, not refused, migration; owned by sup */
	const struct expo_hist *freeze;
};
void supervisor_get_stats(const struct supervisor *sup,
			  struct supervisor_stats *out);
/* Every worker not yet reaped, *n of them; borrowed until the loop runs. */
struct worker *const *supervisor_workers(const struct supervisor *sup,
					 size_t *n);

#endif
