/* supervisor/migration.h: one upgrade (or rollback) of the serving worker S
 * to a freshly spawned worker T, driven from the supervisor's event loop
 * (docs/design.md §2, §6):
 *
 *   wait T READY -> refuse on failed preflight / disjoint schema ranges
 *   -> LISTENERS to T, ACCEPT off to S, MIGRATE both ends of a new channel
 *   -> both MIGRATION_RESULTs -> commit (ACCEPT on T, EXIT S)
 *                             or abort (reverse T -> S if T committed any
 *                                        chunk, ACCEPT on S, EXIT T)
 *   -> wait until the leaving worker has exited -> done.
 *
 * While it runs the migration is the handler of both workers (worker_process.h);
 * when it is done the owner takes the survivor back. The survivor is the
 * worker that serves afterwards: T on commit, S on abort, whichever is still
 * alive when the other died, or NULL when both died.
 */
#ifndef BATON_SUPERVISOR_MIGRATION_H
#define BATON_SUPERVISOR_MIGRATION_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct event_base;
struct listeners;
struct migration;
struct worker;

struct migration_params {
	int timeout_s;            /* [supervisor] handoff_timeout */
	unsigned chunk_sessions;  /* [sessiond] chunk_sessions */
	/* Sessions the source held when last asked (its last STATUS): what
	 * counts as lost if it dies before announcing its own figure at the
	 * start of the migration (see sessions_lost_count). */
	unsigned source_sessions;
	const struct listeners *listeners; /* borrowed for the call's life */
};

struct migration_side {
	pid_t pid;
	char version[64];
	char binary[PATH_MAX];
};

struct migration_result {
	bool committed;
	/* custody: sessions of a source that died mid-migration restored into
	 * the target from custody (supervisor/custody.h), and the lines they
	 * lost */
	unsigned custody_restored;
	uint64_t custody_lines_lost;
	bool refused;        /* stopped before S was touched */
	char reason[1024];   /* "" when committed cleanly */
	struct migration_side from, to;
	unsigned sessions, connections, fds, chunks;
	/* TLS handshakes still running after handshake_budget_ms: left
	 * behind and closed (their clients / the governor reconnect) */
	unsigned handshakes_left;
	/* Sessions whose state was over one migration message and was shrunk
	 * by the source to fit: sessions, backlog lines, clients, member
	 * lists given up (sessiond/bouncer.h bouncer_item_serialize_within) */
	unsigned shrunk[4];
	/* S's state items in bytes (everything it serialized), and the
	 * backlog lines that stayed in the store (state schema 3: they
	 * travel as positions, sessiond/state.h) */
	uint64_t state_bytes, backlog_lines_in_store;
	double freeze_ms;    /* S's freeze_max_ms */
	/* that freeze split: serialize, target prepare, commit (ms) */
	double freeze_split_ms[3];
	double total_ms;     /* spawn of T .. exit of the leaving worker */
	double started;      /* CLOCK_REALTIME seconds, for status */
	/* Sessions exist nowhere now: they were committed to a target that
	 * then died or hung, or the source died with sessions it had not
	 * handed over yet. The survivor gets ACCEPT on only after the leaving
	 * worker is gone, and then starts every configured session it does
	 * not hold (their users reconnect). */
	bool sessions_lost;
	/* How many: the sessions the source held at the start (its own
	 * announcement) minus those the survivor holds. When a worker never
	 * reported, the worst case it could be (never an underestimate). */
	unsigned sessions_lost_count;
	/* The new worker serves, but not everything arrived (the source died
	 * halfway): neither "committed" nor "aborted" (the old worker serves). */
	bool partial;
};

typedef void (*migration_progress_cb)(const char *phase, unsigned done,
				      unsigned total, void *arg);
/* Runs once, from the migration's own event (never inside a worker
 * callback), so the owner may migration_free(m) in it. */
typedef void (*migration_done_cb)(struct migration *m,
				  const struct migration_result *res,
				  struct worker *survivor, void *arg);

/* Start driving S -> T. T must be freshly spawned with --target; S must be
 * READY and serving. Returns NULL on allocation failure (nothing changed). */
struct migration *migration_start(struct event_base *base, struct worker *source,
				  struct worker *target,
				  const struct migration_params *params,
				  migration_progress_cb progress,
				  migration_done_cb done, void *arg);

/* Optional, set right after migration_start (READY cannot arrive before):
 * asked once T is READY, passed preflight and has a compatible schema,
 * before anything is frozen; returning -1 refuses the migration with `why`
 * (the supervisor checks and installs T's release, releases.h). */
typedef int (*migration_target_check_cb)(struct worker *t, char *why,
					 size_t len, void *arg);
void migration_set_target_check(struct migration *m,
				 migration_target_check_cb cb, void *arg);

/* What is known so far (from, to, started; the rest as far as it got), for
 * a report when the migration is abandoned (shutdown). Valid until
 * migration_free(). */
const struct migration_result *migration_result_so_far(const struct migration *m);

/* Stop driving (shutdown): leaves both workers to the caller, who must set
 * their handlers again. Accepts NULL. */
void migration_free(struct migration *m);

#endif
