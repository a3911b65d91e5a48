/* supervisor/canary.h: a canary rollout (issue 9, README "Canary rollouts"):
 * the old worker S keeps the listeners and most sessions, a new worker T on
 * the candidate binary takes a cohort, the health gates (gates.h) compare
 * the two at the same time, and the cohort moves back the moment one trips.
 *
 *   start   spawn T, wait READY (refused on failed preflight or disjoint
 *           schema ranges, S untouched), link S and T (CONTROL_PEER: a
 *           client that logs in on S for a cohort session is forwarded to
 *           T with its socket), move the cohort S -> T (a partial
 *           migration: Migrate.select), then bake under the gates
 *   grow    move more of S's sessions to T (a larger percentage)
 *   promote move everything else S -> T (a full migration: pending clients
 *           and listeners too), T serves, S exits
 *   abort   move everything T -> S (a full migration), S serves, T exits
 * A gate that trips (or T crashing or missing its watchdog) aborts
 * automatically; the result names the gate and its figures. The one-command
 * form (plan.auto_promote) runs start -> bake -> grow -> bake ... -> promote.
 *
 * Every move is the two-phase migration of docs/design.md §2 (chunked, abortable,
 * no disconnect). While the canary runs it is the handler of both workers
 * (worker_process.h); when it ends the host gets the survivor back and must reset
 * every worker's handler.
 *
 * Ownership: the supervisor owns the struct canary (canary_free()); the
 * canary borrows both workers while it runs and owns T's spawn until it
 * ends, when the survivor is handed back to the host.
 *
 * Replies: like supervisor.h, zero or more {"progress":{...}} then one
 * {"result":{...}}; the result of a finished canary has the fields of the
 * interface contract (result, reason, gate, gates, cohort_sessions,
 * control_sessions, from, to, freeze_ms, total_ms, rollback_ms,
 * disconnects).
 */
#ifndef BATON_SUPERVISOR_CANARY_H
#define BATON_SUPERVISOR_CANARY_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct baton_config;
struct canary;
struct event_base;
struct evbuffer;
struct json_object;
struct listeners;
struct worker;

typedef void (*canary_reply_cb)(struct json_object *msg, bool final, void *arg);

#define CANARY_MAX_STEPS 16
#define CANARY_MAX_USERS 1024

struct canary_plan {
	char binary[PATH_MAX];
	/* the cohort of start: users, or a network, or a percentage */
	char **users;            /* owned by the caller for canary_start() */
	size_t nusers;
	char network[256];       /* "" none */
	uint32_t percent_x100;   /* 0..10000 */
	int bake_s;              /* after each step; 0: none */
	bool force;              /* deploy a release marked bad */
	/* the one-command form: percentages (x100) of each step, then promote */
	bool auto_promote;
	uint32_t steps[CANARY_MAX_STEPS];
	size_t nsteps;
};

struct canary_host {
	struct event_base *base;
	const struct baton_config *cfg;
	const struct listeners *listeners;
	/* Spawn a migration target on binary (registered with the host). */
	struct worker *(*spawn)(void *arg, const char *binary, int *err);
	/* The canary is over: survivor serves (NULL: none; the host restarts
	 * one), result is the final JSON (borrowed). Called from the
	 * canary's own event; the host may canary_free() in it. */
	void (*ended)(void *arg, struct worker *survivor,
		      struct json_object *result);
	void *arg;
};

/* Start a canary from serving worker s. The reply goes to cb once the
 * cohort moved (and baked, with plan->bake_s), or at the end with
 * auto_promote. NULL only when out of memory (nothing started). */
struct canary *canary_start(const struct canary_host *host, struct worker *s,
			    const struct canary_plan *plan, canary_reply_cb cb,
			    void *arg);

/* "grow" (percent_x100), "promote", "abort" or "status" on a running
 * canary; each replies through cb. */
void canary_request(struct canary *c, const char *action,
		    uint32_t percent_x100, canary_reply_cb cb, void *arg);

/* {"phase", "from", "to", "cohort_sessions", "control_sessions", "gates",
 *  ...} of the running canary (owned by the caller); NULL when out of
 * memory. */
struct json_object *canary_status_json(const struct canary *c);

/* The supervisor shuts down: stop driving (workers go with it). */
void canary_free(struct canary *c); /* accepts NULL */

/* A requester went away (supervisor_detach()). */
void canary_detach(struct canary *c, void *arg);

/* Prometheus families of the running canary (gates.h's). */
void canary_metrics(const struct canary *c, struct evbuffer *out);

#endif
