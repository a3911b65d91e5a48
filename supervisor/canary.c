/* supervisor/canary.c: see canary.h.
 *
 * One state machine, driven by the workers' messages (worker_process.h events), a
 * sample timer and deadlines:
 *
 *   SPAWN --READY ok--> MOVE (partial S->T) --both committed--> BAKE
 *   BAKE --grow--> MOVE --> BAKE ...
 *   BAKE --promote--> FULL (S->T) --committed--> FINISH (S exits) --> DONE
 *   any --abort / gate / move failed--> FULL (T->S) --> FINISH (T exits)
 *
 * A rollback asked for while a partial move runs waits for that move to
 * end (its chunks commit or abort as a unit, never halfway). T dying ends
 * the canary: with custody, when T dies while the cohort bakes (no move
 * running), its sessions are restored into S from T's custody first
 * (RESTORE, the crash restore of supervisor.c with S, which keeps
 * serving, as the target; a rollback asked for meanwhile waits for it);
 * whatever was not restored died with T and S starts it again (ACCEPT on:
 * bouncer_start_configured()), which the result counts.
 *
 *   BAKE --T dies, custody--> RESTORE --S's MIGRATION_RESULT--> FINISH
 */
#include "supervisor/canary.h"
#include "common/clock.h"

#include <errno.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <json-c/json.h>

#include "common/config.h"
#include "common/json_builder.h"
#include "common/log.h"
#include "common/frame.h"
#include "supervisor/custody.h"
#include "supervisor/gates.h"
#include "supervisor/listeners.h"
#include "supervisor/worker_process.h"

enum canary_phase { C_SPAWN, C_MOVE, C_BAKE, C_FULL, C_FINISH, C_DONE, C_RESTORE };

/* What a waiting requester wants to hear about. */
enum canary_wait {
	W_MOVED,  /* the current partial move ended (start, grow) */
	W_BAKED,  /* the bake after it ended (start --bake) */
	W_END,    /* the canary is over (promote, abort, one-command form) */
};

struct canary_waiter {
	canary_reply_cb cb;
	void *arg;
	enum canary_wait wait;
	const char *word; /* result word when satisfied before the end */
};

#define CANARY_MAX_WAITERS 8

struct move_side {
	bool have, committed;
	unsigned sessions, chunks_committed;
	double freeze_ms;
	char reason[256];
};

struct canary {
	struct canary_host h;
	struct canary_plan plan;
	enum canary_phase phase;
	struct worker *s, *t;
	struct gates *gates;

	/* the move in progress */
	bool move_full;
	bool move_is_rollback;
	struct worker *msrc, *mdst;
	struct move_side rs, rd;
	unsigned step;                 /* plan.steps index of the current cohort */
	uint32_t percent_x100;         /* the cohort's percentage (0: lists) */

	/* a rollback asked for while a partial move runs */
	bool want_rollback;
	bool aborting;                 /* an operator's abort, not a gate */

	/* sampling */
	bool asked[2], answered[2];    /* [0] T (cohort), [1] S (control) */
	double answered_at[2];         /* monotonic seconds */
	bool control_silent;           /* the control missed a sample (logged once) */
	Baton__Control__Health *health[2];
	struct timespec asked_at;
	uint64_t closed_first[2], closed_last[2];
	bool closed_known[2];

	struct event *ev_sample, *ev_deadline, *ev_bake, *ev_done;

	/* results */
	struct timespec t0, rb_t0;
	double freeze_ms, rollback_ms;
	double detected_ms;            /* canary start -> the gate tripped (0: none) */
	double gates_cpu_s;            /* supervisor CPU spent evaluating samples */
	struct timespec moved_at;      /* the cohort's (last) move committed */
	unsigned cohort_sessions, control_sessions, lost;
	char result[16];
	char reason[768];
	char gate[64];
	char from_version[64], to_version[64];
	char from_binary[PATH_MAX], to_binary[PATH_MAX];
	pid_t from_pid, to_pid;
	struct worker *survivor, *leaving;
	struct json_object *final;

	/* RESTORE: T's custody going into S (owned; custody.h) */
	struct custody_restore *restore;
	struct custody_result restore_res;
	bool restore_handed;
	unsigned restored;             /* cohort sessions S got from custody */

	struct canary_waiter waiters[CANARY_MAX_WAITERS];
	size_t nwaiters;
};

static void canary_on_worker(struct worker *w, enum worker_event ev,
			     const void *msg, void *arg);
static void canary_on_health(struct worker *w, const Baton__Control__Health *h,
			     void *arg);
static void canary_start_rollback(struct canary *c);
static void canary_end(struct canary *c, const char *result,
		       struct worker *survivor, struct worker *leaving);

static double canary_ms_since(const struct timespec *t0)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - t0->tv_sec) * 1e3 +
	       (double)(now.tv_nsec - t0->tv_nsec) / 1e6;
}

static void canary_reason(struct canary *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Appends (the first reason leads). */
static void canary_reason(struct canary *c, const char *fmt, ...)
{
	size_t len = strlen(c->reason);
	va_list ap;

	if (len > 0 && len + 2 < sizeof(c->reason)) {
		strcat(c->reason, "; ");
		len += 2;
	}
	va_start(ap, fmt);
	vsnprintf(c->reason + len, sizeof(c->reason) - len, fmt, ap);
	va_end(ap);
}

static const char *canary_phase_name(enum canary_phase p)
{
	static const char *const names[] = { "spawn", "move", "bake", "full-move",
					     "finish", "done", "restore" };
	return names[p];
}

/* ---- replies ---- */

static struct json_object *canary_side(pid_t pid, const char *version,
				       const char *binary)
{
	struct jb jb_ = JB_INIT, *jb = &jb_;
	struct json_object *o = jb_obj(jb);

	jb_add(jb, o, "pid", jb_i64(jb, pid));
	jb_add(jb, o, "version", jb_str(jb, version));
	jb_add(jb, o, "binary", jb_str(jb, binary));
	return jb_done(jb, o);
}

static unsigned canary_disconnects(const struct canary *c)
{
	unsigned n = c->lost;

	for (int k = 0; k < 2; k++)
		if (c->closed_known[k])
			n += (unsigned)(c->closed_last[k] - c->closed_first[k]);
	return n;
}

static struct json_object *canary_result_json(const struct canary *c,
					      const char *word)
{
	struct jb jb_ = JB_INIT, *jb = &jb_;
	struct json_object *o = jb_obj(jb);

	jb_add(jb, o, "result", jb_str(jb, word));
	jb_add(jb, o, "kind", jb_str(jb, "canary"));
	jb_add(jb, o, "phase", jb_str(jb, canary_phase_name(c->phase)));
	jb_add(jb, o, "reason", jb_str(jb, c->reason));
	jb_add(jb, o, "gate", c->gate[0] ? jb_str(jb, c->gate) : NULL);
	jb_add(jb, o, "gates", jb_note(jb, gates_json(c->gates)));
	jb_add(jb, o, "samples", jb_i64(jb, gates_samples(c->gates)));
	/* the cost of judging: the supervisor's evaluation, and each worker's
	 * building of its answers (CPU seconds, cumulative) */
	jb_add(jb, o, "gates_cpu_s", jb_double(jb, c->gates_cpu_s));
	jb_add(jb, o, "health_build_s_cohort",
			       jb_double(jb, c->health[0] ? c->health[0]->health_build_s : 0));
	jb_add(jb, o, "health_build_s_control",
			       jb_double(jb, c->health[1] ? c->health[1]->health_build_s : 0));
	jb_add(jb, o, "percent",
			       jb_double(jb, c->percent_x100 / 100.0));
	jb_add(jb, o, "cohort_sessions", jb_i64(jb, c->cohort_sessions));
	jb_add(jb, o, "control_sessions", jb_i64(jb, c->control_sessions));
	jb_add(jb, o, "from", jb_note(jb, canary_side(c->from_pid, c->from_version,
							   c->from_binary)));
	jb_add(jb, o, "to", jb_note(jb, canary_side(c->to_pid, c->to_version, c->to_binary)));
	jb_add(jb, o, "freeze_ms", jb_double(jb, c->freeze_ms));
	jb_add(jb, o, "total_ms", jb_double(jb, canary_ms_since(&c->t0)));
	jb_add(jb, o, "rollback_ms", jb_double(jb, c->rollback_ms));
	/* from the start of the canary to the gate's trip (0: none tripped) */
	jb_add(jb, o, "detected_ms", jb_double(jb, c->detected_ms));
	jb_add(jb, o, "disconnects", jb_i64(jb, canary_disconnects(c)));
	jb_add(jb, o, "sessions_lost_count", jb_i64(jb, c->lost));
	/* the canary worker crashed and custody gave S its sessions */
	jb_add(jb, o, "sessions_restored", jb_i64(jb, c->restored));
	return jb_done(jb, o);
}

/* res NULL: it could not be built (the reply says out of memory). */
static void canary_send(canary_reply_cb cb, void *arg, struct json_object *res,
			bool final)
{
	struct jb jb_ = JB_INIT, *jb = &jb_;
	struct json_object *o = jb_obj(jb);

	jb_add(jb, o, final ? "result" : "progress", jb_note(jb, res));
	o = jb_done(jb, o);
	if (cb)
		cb(o, final, arg);
	json_object_put(o);
}

static void canary_progress(struct canary *c, const char *phase,
			    unsigned done, unsigned total)
{
	for (size_t i = 0; i < c->nwaiters; i++) {
		struct jb jb_ = JB_INIT, *jb = &jb_;
		struct json_object *p = jb_obj(jb);

		jb_add(jb, p, "phase", jb_str(jb, phase));
		jb_add(jb, p, "items_done", jb_i64(jb, done));
		jb_add(jb, p, "items_total", jb_i64(jb, total));
		jb_add(jb, p, "percent",
				       jb_double(jb, c->percent_x100 / 100.0));
		canary_send(c->waiters[i].cb, c->waiters[i].arg, jb_done(jb, p), false);
	}
}

/* Answer and drop the waiters waiting for `wait` (or every one with
 * W_END at the end). */
static void canary_notify(struct canary *c, enum canary_wait wait)
{
	size_t j = 0;

	for (size_t i = 0; i < c->nwaiters; i++) {
		struct canary_waiter *wt = &c->waiters[i];

		if (wt->wait != wait && !(wait == W_END)) {
			c->waiters[j++] = *wt;
			continue;
		}
		canary_send(wt->cb, wt->arg,
			    wait == W_END && c->final
				    ? json_object_get(c->final)
				    : canary_result_json(c, wt->word),
			    true);
	}
	c->nwaiters = j;
}

static int canary_add_waiter(struct canary *c, canary_reply_cb cb, void *arg,
			     enum canary_wait wait, const char *word)
{
	if (c->nwaiters == CANARY_MAX_WAITERS)
		return -EBUSY;
	c->waiters[c->nwaiters++] = (struct canary_waiter){ cb, arg, wait, word };
	return 0;
}

static void canary_refuse_request(struct canary *c, canary_reply_cb cb,
				  void *arg, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void canary_refuse_request(struct canary *c, canary_reply_cb cb,
				  void *arg, const char *fmt, ...)
{
	struct jb jb_ = JB_INIT, *jb = &jb_;
	struct json_object *o = jb_note(jb, canary_result_json(c, "refused"));
	char why[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	jb_add(jb, o, "reason", jb_str(jb, why));
	log_warn("canary", "request refused: %s", why);
	canary_send(cb, arg, jb_done(jb, o), true);
}

/* ---- moves ---- */

static int canary_deadline_s(const struct canary *c)
{
	int s = c->h.cfg->handoff_timeout_s * 6;

	return s < 30 ? 30 : s;
}

static void canary_set_deadline(struct canary *c, int seconds)
{
	struct timeval tv = { .tv_sec = seconds };

	evtimer_del(c->ev_deadline);
	evtimer_add(c->ev_deadline, &tv);
}

/* The selector of the next partial move: the plan's lists, or the
 * percentage (a larger one takes the smaller one's users too). */
static void canary_selector(const struct canary *c, Baton__Control__Selector *sel,
			    char **networks)
{
	baton__control__selector__init(sel);
	if (c->percent_x100 > 0) {
		sel->has_percent_x100 = 1;
		sel->percent_x100 = c->percent_x100;
	}
	sel->users = c->plan.users;
	sel->n_users = c->plan.nusers;
	if (c->plan.network[0]) {
		networks[0] = (char *)c->plan.network;
		sel->networks = networks;
		sel->n_networks = 1;
	}
}

static int canary_launch(struct canary *c, struct worker *src,
			 struct worker *dst, bool full)
{
	Baton__Control__Selector sel;
	char *networks[1];
	unsigned timeout_ms = (unsigned)c->h.cfg->handoff_timeout_s * 1000u;
	int ch[2] = { -1, -1 };
	int r;

	memset(&c->rs, 0, sizeof(c->rs));
	memset(&c->rd, 0, sizeof(c->rd));
	c->msrc = src;
	c->mdst = dst;
	c->move_full = full;
	canary_selector(c, &sel, networks);
	r = frame_socketpair(ch);
	if (r < 0)
		goto out;
	r = worker_send_move(dst, false, worker_pid(src), -1, timeout_ms, 0,
			     ch[0], full ? NULL : &sel);
	if (r < 0)
		goto out;
	worker_set_write_schema(src, dst);
	r = worker_send_move(src, true, worker_pid(dst), worker_pidfd(dst),
			     timeout_ms, (unsigned)c->h.cfg->chunk_sessions,
			     ch[1], full ? NULL : &sel);
out:
	if (ch[0] >= 0)
		close(ch[0]);
	if (ch[1] >= 0)
		close(ch[1]);
	if (r == 0)
		canary_set_deadline(c, canary_deadline_s(c));
	return r;
}

static void canary_start_partial(struct canary *c)
{
	int r;

	c->phase = C_MOVE;
	gates_rebase(c->gates);
	log_info("canary", "moving the cohort (%s%.2f %%%s%s) pid %d -> pid %d",
		 c->plan.nusers ? "listed users, " : "", c->percent_x100 / 100.0,
		 c->plan.network[0] ? ", network " : "", c->plan.network,
		 (int)worker_pid(c->s), (int)worker_pid(c->t));
	canary_progress(c, "move", 0, 0);
	r = canary_launch(c, c->s, c->t, false);
	if (r < 0) {
		canary_reason(c, "cannot start the cohort's move: %s", strerror(-r));
		/* No move runs: canary_start_rollback() would wait for its end
		 * in C_MOVE (and no deadline is armed) forever. */
		c->phase = C_BAKE;
		canary_start_rollback(c);
	}
}

static void canary_arm_bake(struct canary *c)
{
	struct timeval tv = { .tv_sec = c->plan.bake_s };

	evtimer_del(c->ev_bake);
	if (c->plan.bake_s > 0)
		evtimer_add(c->ev_bake, &tv);
	else
		event_active(c->ev_bake, EV_TIMEOUT, 0);
}

static void canary_promote(struct canary *c)
{
	int r;

	log_info("canary", "promoting: moving every other session pid %d -> pid %d",
		 (int)worker_pid(c->s), (int)worker_pid(c->t));
	evtimer_del(c->ev_bake);
	c->phase = C_FULL;
	c->move_is_rollback = false;
	canary_progress(c, "promote", 0, 0);
	r = worker_send_listeners(c->t, listeners_fds(c->h.listeners),
				  listeners_names(c->h.listeners),
				  listeners_count(c->h.listeners));
	if (r == 0) {
		if (worker_send_accept(c->s, false) < 0)
			log_warn("canary", "ACCEPT off to pid %d failed", (int)worker_pid(c->s));
		r = canary_launch(c, c->s, c->t, true);
	}
	if (r < 0) {
		canary_reason(c, "cannot start the promotion: %s", strerror(-r));
		/* No promotion runs: in C_FULL canary_start_rollback() would
		 * wait for its result forever, with S's ACCEPT off. */
		if (worker_send_accept(c->s, true) < 0)
			log_error("canary", "ACCEPT on to pid %d failed", (int)worker_pid(c->s));
		c->phase = C_BAKE;
		canary_start_rollback(c);
	}
}

static void canary_start_rollback(struct canary *c)
{
	int r;

	c->want_rollback = true;
	if (c->phase == C_MOVE)
		return; /* after the move's chunks settled: canary_move_done() */
	if (c->phase == C_RESTORE)
		return; /* T is gone: the restore's end ends the canary */
	if (c->phase == C_FINISH || c->phase == C_DONE)
		return;
	if (c->phase == C_FULL && c->move_is_rollback)
		return;
	if (c->phase == C_FULL) {
		/* A promotion runs: its result decides (a failed one rolls
		 * back from canary_move_done()). */
		return;
	}
	evtimer_del(c->ev_bake);
	log_warn("canary", "rolling back: moving the cohort pid %d -> pid %d: %s",
		 (int)worker_pid(c->t), (int)worker_pid(c->s), c->reason);
	c->phase = C_FULL;
	c->move_is_rollback = true;
	clock_gettime(CLOCK_MONOTONIC, &c->rb_t0);
	canary_progress(c, "rollback", 0, 0);
	r = canary_launch(c, c->t, c->s, true);
	if (r < 0) {
		/* The cohort cannot come back: it dies with T; S starts
		 * those sessions again. */
		canary_reason(c, "the rollback could not start (%s): the cohort's sessions restart on the old worker",
			      strerror(-r));
		c->lost += c->cohort_sessions;
		worker_kill(c->t);
		if (worker_send_accept(c->s, true) < 0)
			log_error("canary", "ACCEPT on to pid %d failed", (int)worker_pid(c->s));
		canary_end(c, c->aborting ? "aborted" : "rolled_back", c->s, c->t);
	}
}

/* A worker's status after a move: how many sessions it holds. */
static void canary_count_sessions(struct canary *c)
{
	if (c->health[0])
		c->cohort_sessions = c->health[0]->sessions;
	if (c->health[1])
		c->control_sessions = c->health[1]->sessions;
}

static void canary_move_done(struct canary *c)
{
	bool ok = c->rs.committed && c->rd.committed;
	double freeze = c->rs.freeze_ms;

	evtimer_del(c->ev_deadline);
	if (freeze > c->freeze_ms)
		c->freeze_ms = freeze;
	if (!c->move_full) {
		/* a partial move S -> T */
		c->cohort_sessions += c->rd.sessions;
		c->control_sessions = c->control_sessions > c->rs.sessions
					      ? c->control_sessions - c->rs.sessions : 0;
		gates_rebase(c->gates);
		if (!ok) {
			canary_reason(c, "the cohort's move failed: %s",
				      c->rs.reason[0] ? c->rs.reason : c->rd.reason);
			c->phase = C_BAKE;
			canary_start_rollback(c);
			return;
		}
		clock_gettime(CLOCK_MONOTONIC, &c->moved_at);
		if (c->cohort_sessions == 0) {
			/* Nothing to judge: a canary of nobody would "pass" and
			 * then promote everyone. */
			canary_reason(c, "no session matches the cohort (%s%.2f %%%s%s)",
				      c->plan.nusers ? "listed users, " : "",
				      c->percent_x100 / 100.0,
				      c->plan.network[0] ? ", network " : "", c->plan.network);
			if (worker_send_peer(c->s, -1, 0) < 0)
				log_warn("canary", "cannot unlink pid %d", (int)worker_pid(c->s));
			canary_end(c, "refused", c->s, c->t);
			return;
		}
		log_info("canary", "cohort moved: %u sessions on pid %d (freeze %.1f ms)",
			 c->rd.sessions, (int)worker_pid(c->t), freeze);
		c->phase = C_BAKE;
		if (c->want_rollback) {
			canary_start_rollback(c);
			return;
		}
		canary_notify(c, W_MOVED);
		if (c->plan.auto_promote || c->nwaiters > 0)
			canary_arm_bake(c);
		return;
	}
	if (!c->move_is_rollback) {
		if (ok) {
			log_info("canary", "promoted: pid %d serves every session", (int)worker_pid(c->t));
			if (worker_send_accept(c->t, true) < 0)
				log_error("canary", "ACCEPT on to pid %d failed", (int)worker_pid(c->t));
			c->cohort_sessions += c->rd.sessions;
			c->control_sessions = 0;
			canary_end(c, "promoted", c->t, c->s);
			return;
		}
		canary_reason(c, "the promotion failed: %s",
			      c->rs.reason[0] ? c->rs.reason : c->rd.reason);
		/* S is still a worker with listeners: move everything on T
		 * back (the failed promotion's committed chunks too). */
		c->phase = C_BAKE;
		canary_start_rollback(c);
		return;
	}
	/* the rollback T -> S */
	c->rollback_ms = canary_ms_since(&c->rb_t0);
	if (!ok) {
		unsigned back = c->rd.sessions;

		canary_reason(c, "the rollback failed (%s): sessions left on the new worker restart on the old one",
			      c->rs.reason[0] ? c->rs.reason : c->rd.reason);
		c->lost += c->cohort_sessions > back ? c->cohort_sessions - back : 0;
		worker_kill(c->t);
	}
	log_info("canary", "rolled back in %.1f ms: pid %d serves every session",
		 c->rollback_ms, (int)worker_pid(c->s));
	c->control_sessions += c->rd.sessions;
	if (worker_send_accept(c->s, true) < 0)
		log_error("canary", "ACCEPT on to pid %d failed", (int)worker_pid(c->s));
	canary_end(c, c->aborting && !gates_tripped(c->gates) ? "aborted" : "rolled_back",
		   c->s, c->t);
}

/* ---- the end ---- */

static void canary_on_done(evutil_socket_t fd, short what, void *arg)
{
	struct canary *c = arg;

	canary_notify(c, W_END);
	/* Last: the host may free c. */
	c->h.ended(c->h.arg, c->survivor, c->final);
}

static void canary_complete(struct canary *c)
{
	c->phase = C_DONE;
	evtimer_del(c->ev_deadline);
	evtimer_del(c->ev_sample);
	evtimer_del(c->ev_bake);
	json_object_put(c->final);
	c->final = canary_result_json(c, c->result);
	if (c->final == NULL)
		log_error("canary", "out of memory: the result not kept for status");
	log_info("canary", "%s: %s%s%s (cohort %u, control %u, rollback %.1f ms, %u disconnects)",
		 c->result, c->gate[0] ? "gate " : "", c->gate,
		 c->reason[0] ? c->reason : "", c->cohort_sessions,
		 c->control_sessions, c->rollback_ms, canary_disconnects(c));
	event_active(c->ev_done, EV_TIMEOUT, 0);
}

/* survivor serves; leaving is told to exit and we wait for it. */
static void canary_end(struct canary *c, const char *result,
		       struct worker *survivor, struct worker *leaving)
{
	snprintf(c->result, sizeof(c->result), "%s", result);
	if (gates_tripped(c->gates) && !c->gate[0])
		snprintf(c->gate, sizeof(c->gate), "%s", gates_tripped(c->gates));
	if (survivor != NULL)
		worker_set_role(survivor, "active");
	c->survivor = survivor;
	c->leaving = leaving;
	c->phase = C_FINISH;
	if (leaving == NULL) {
		canary_complete(c);
		return;
	}
	worker_stop(leaving, c->h.cfg->handoff_timeout_s);
	canary_set_deadline(c, c->h.cfg->handoff_timeout_s + 5);
}

/* ---- sampling and gates ---- */

static void canary_trip_check(struct canary *c)
{
	const char *g = gates_tripped(c->gates);

	if (g == NULL || c->want_rollback)
		return;
	snprintf(c->gate, sizeof(c->gate), "%s", g);
	c->detected_ms = canary_ms_since(&c->t0);
	log_warn("canary", "gate %s tripped %.1f s after the cohort moved: %s", g,
		 c->moved_at.tv_sec ? canary_ms_since(&c->moved_at) / 1000.0 : 0.0,
		 gates_reason(c->gates));
	canary_reason(c, "%s", gates_reason(c->gates));
	canary_start_rollback(c);
}

static void canary_sample_done(struct canary *c)
{
	for (int k = 0; k < 2; k++) {
		uint64_t closed = c->health[k]->clients_closed;

		if (!c->closed_known[k]) {
			c->closed_first[k] = closed;
			c->closed_known[k] = true;
		}
		c->closed_last[k] = closed;
	}
	canary_count_sessions(c);
	{
		struct timespec t0, t1;

		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
		gates_observe(c->gates, c->health[0], c->answered_at[0], c->health[1],
			      c->answered_at[1]);
		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
		/* what judging costs the supervisor's loop (bench/README.md) */
		c->gates_cpu_s += (double)(t1.tv_sec - t0.tv_sec) +
				  (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	}
	c->asked[0] = c->asked[1] = false;
	canary_trip_check(c);
}

static void canary_on_sample(evutil_socket_t fd, short what, void *arg)
{
	struct canary *c = arg;
	struct timeval tv = { .tv_sec = c->h.cfg->canary_sample_ms / 1000,
			      .tv_usec = (c->h.cfg->canary_sample_ms % 1000) * 1000 };

	evtimer_add(c->ev_sample, &tv);
	if (c->phase != C_MOVE && c->phase != C_BAKE)
		return; /* full moves merge the groups: nothing to compare */
	if (c->asked[0] || c->asked[1]) {
		double waited = canary_ms_since(&c->asked_at);

		if (c->asked[0] && !c->answered[0] &&
		    waited > c->h.cfg->canary_watchdog_ms) {
			char why[128];

			snprintf(why, sizeof(why), "pid %d did not answer a health sample for %.1f s",
				 (int)worker_pid(c->t), waited / 1000.0);
			gates_trip(c->gates, "watchdog", waited / 1000.0, why);
			canary_trip_check(c);
			return;
		}
		if (c->asked[1] && !c->answered[1] && c->answered[0] &&
		    waited > c->h.cfg->canary_watchdog_ms) {
			/* The control does not answer: nothing to compare with,
			 * but what the cohort did on its own still counts. */
			if (!c->control_silent)
				log_warn("canary", "pid %d (control) does not answer health samples: only the hard gates judge until it does",
					 (int)worker_pid(c->s));
			c->control_silent = true;
			gates_observe_cohort(c->gates, c->health[0], c->answered_at[0]);
			worker_cancel_health(c->s, c);
			c->asked[0] = c->asked[1] = false;
			canary_trip_check(c);
		}
		return;
	}
	for (int k = 0; k < 2; k++) {
		baton__control__health__free_unpacked(c->health[k], NULL);
		c->health[k] = NULL;
		c->answered[k] = false;
	}
	clock_gettime(CLOCK_MONOTONIC, &c->asked_at);
	/* Both at once: the intervals of the two groups end together. */
	c->asked[0] = worker_request_health(c->t, canary_on_health, c) == 0;
	c->asked[1] = worker_request_health(c->s, canary_on_health, c) == 0;
	if (!c->asked[0])
		c->asked[0] = true; /* unanswerable: the watchdog judges */
	if (!c->asked[1]) {
		log_warn("canary", "pid %d (control) cannot be sampled", (int)worker_pid(c->s));
		worker_cancel_health(c->t, c);
		c->asked[0] = false;
	}
}

/* Keep a copy of an answer (the message is the worker's). */
static void canary_keep_health(struct canary *c, int k,
			       const Baton__Control__Health *h)
{
	size_t len = baton__control__health__get_packed_size(h);
	uint8_t *buf = malloc(len ? len : 1);

	if (buf == NULL)
		return;
	baton__control__health__pack(h, buf);
	baton__control__health__free_unpacked(c->health[k], NULL);
	c->health[k] = baton__control__health__unpack(NULL, len, buf);
	free(buf);
	c->answered[k] = c->health[k] != NULL;
	c->answered_at[k] = clock_mono_s();
	if (c->answered[0] && c->answered[1])
		canary_sample_done(c);
}

static void canary_on_health(struct worker *w, const Baton__Control__Health *h,
			     void *arg)
{
	struct canary *c = arg;
	int k = w == c->t ? 0 : w == c->s ? 1 : -1;

	if (k < 0 || !c->asked[k] || c->answered[k])
		return;
	if (h == NULL) {
		/* Control socket lost: the worker's exit follows (or the
		 * watchdog judges T). */
		return;
	}
	canary_keep_health(c, k, h);
}

/* ---- events ---- */

static void canary_on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct canary *c = arg;

	switch (c->phase) {
	case C_SPAWN:
		canary_reason(c, "the new worker was not READY after %d s: refused",
			      c->h.cfg->handoff_timeout_s);
		worker_kill(c->t);
		canary_end(c, "refused", c->s, c->t);
		break;
	case C_MOVE:
	case C_FULL:
		canary_reason(c, "a move did not finish within %d s: the new worker is killed and its sessions restart on the old one",
			      canary_deadline_s(c));
		c->lost += c->cohort_sessions;
		worker_kill(c->t); /* S sees the channel close and resumes */
		if (worker_send_accept(c->s, true) < 0)
			log_error("canary", "ACCEPT on to pid %d failed", (int)worker_pid(c->s));
		canary_end(c, "rolled_back", c->s, c->t);
		break;
	case C_RESTORE:
		canary_reason(c, "the restore of the canary's sessions from custody did not finish within %d s: they restart on the old worker",
			      c->h.cfg->handoff_timeout_s + 5);
		custody_restore_free(c->restore); /* closes what it still held */
		c->restore = NULL;
		c->lost += c->cohort_sessions;
		if (worker_send_accept(c->s, true) < 0)
			log_error("canary", "ACCEPT on to pid %d failed", (int)worker_pid(c->s));
		canary_end(c, "rolled_back", c->s, NULL);
		break;
	case C_FINISH:
		log_error("canary", "pid %d still not reaped: giving up waiting",
			  c->leaving ? (int)worker_pid(c->leaving) : 0);
		if (c->leaving)
			worker_kill(c->leaving);
		c->leaving = NULL;
		canary_complete(c);
		break;
	default:
		break;
	}
}

static void canary_on_bake(evutil_socket_t fd, short what, void *arg)
{
	struct canary *c = arg;

	if (c->phase != C_BAKE || c->want_rollback)
		return;
	log_info("canary", "bake of %d s over at %.2f %%: gates green", c->plan.bake_s,
		 c->percent_x100 / 100.0);
	canary_notify(c, W_BAKED);
	if (!c->plan.auto_promote)
		return;
	if (c->step + 1 < c->plan.nsteps) {
		c->step++;
		c->percent_x100 = c->plan.steps[c->step];
		canary_start_partial(c);
		return;
	}
	canary_promote(c);
}

static void canary_on_target_ready(struct canary *c)
{
	const Baton__Control__Ready *rs = worker_ready_info(c->s);
	const Baton__Control__Ready *rt = worker_ready_info(c->t);
	int link[2] = { -1, -1 };

	evtimer_del(c->ev_deadline);
	snprintf(c->to_version, sizeof(c->to_version), "%s", rt->version);
	c->to_pid = worker_pid(c->t);
	if (!rt->preflight_ok) {
		canary_reason(c, "the new worker failed preflight: %s",
			      rt->n_problems ? rt->problems[0] : "(no details)");
		canary_end(c, "refused", c->s, c->t);
		return;
	}
	if (rs == NULL || rt->schema_min > rs->schema_max ||
	    rs->schema_min > rt->schema_max) {
		canary_reason(c, "incompatible state schema: old %u-%u, new %u-%u",
			      rs ? rs->schema_min : 0, rs ? rs->schema_max : 0,
			      rt->schema_min, rt->schema_max);
		canary_end(c, "refused", c->s, c->t);
		return;
	}
	if (frame_socketpair(link) < 0 ||
	    worker_send_peer(c->s, link[0], worker_pid(c->t)) < 0 ||
	    worker_send_peer(c->t, link[1], worker_pid(c->s)) < 0) {
		canary_reason(c, "cannot link the two workers");
		if (link[0] >= 0)
			close(link[0]);
		if (link[1] >= 0)
			close(link[1]);
		canary_end(c, "refused", c->s, c->t);
		return;
	}
	close(link[0]);
	close(link[1]);
	worker_set_role(c->t, "canary");
	worker_set_role(c->s, "control");
	canary_on_sample(-1, 0, c); /* arms the sample timer */
	canary_start_partial(c);
}

/* ---- T's crash with custody: its sessions restored into S ---- */

static void canary_custody_handed(void *arg, const struct custody_result *r)
{
	struct canary *c = arg;

	c->restore_res = *r;
	c->restore_handed = true;
}

/* T died while the cohort baked: hand its custody (sockets and checkpoint
 * log) to S as the source of a migration, as supervisor.c does after the
 * serving worker's crash; S keeps serving its own sessions meanwhile.
 * 0: RESTORE, ends at S's MIGRATION_RESULT; -errno: nothing started (no
 * custody, no log, S unreachable), the caller restarts the cohort. */
static int canary_custody_restore(struct canary *c, struct worker *t)
{
	struct custody *held = c->h.cfg->custody ? worker_take_custody(t) : NULL;
	unsigned timeout_ms = (unsigned)c->h.cfg->handoff_timeout_s * 1000u;
	size_t nfds;
	int sv[2], r, err = 0;

	if (held == NULL || !custody_has_checkpoint(held)) {
		custody_free(held);
		return -ENOENT;
	}
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
		r = -errno;
		custody_free(held);
		return r;
	}
	r = worker_send_migrate(c->s, false, 0, -1, timeout_ms, 0, sv[1]);
	close(sv[1]);
	if (r < 0) {
		close(sv[0]);
		custody_free(held);
		return r;
	}
	nfds = custody_fd_count(held);
	memset(&c->restore_res, 0, sizeof(c->restore_res));
	c->restore_handed = false;
	/* no strikes: a canary's crash is its build's fault, not a user's */
	c->restore = custody_restore_start(c->h.base, held, sv[0], worker_pid(c->s),
					   (int)timeout_ms, NULL, 0, NULL,
					   canary_custody_handed, c, &err);
	if (c->restore == NULL) {
		/* S sees its channel close: an aborted migration, whose
		 * result arrives while we are no longer in RESTORE */
		log_error("canary", "cannot restore the canary's sessions into pid %d: %s",
			  (int)worker_pid(c->s), strerror(-err));
		return err;
	}
	log_info("canary", "custody: restoring the cohort of pid %d (%u sessions, %zu sockets) into pid %d",
		 (int)worker_pid(t), c->cohort_sessions, nfds, (int)worker_pid(c->s));
	evtimer_del(c->ev_bake);
	c->msrc = c->mdst = NULL;
	clock_gettime(CLOCK_MONOTONIC, &c->rb_t0); /* rollback_ms: the restore */
	c->phase = C_RESTORE;
	canary_set_deadline(c, c->h.cfg->handoff_timeout_s + 5);
	return 0;
}

static void canary_custody_restored(struct canary *c,
				    const Baton__Control__MigrationResult *m)
{
	const struct custody_result *r = &c->restore_res;
	unsigned got = c->restore_handed && m->committed ? r->sessions_restored : 0;

	evtimer_del(c->ev_deadline);
	custody_restore_free(c->restore);
	c->restore = NULL;
	c->restored = got;
	c->lost += c->cohort_sessions > got ? c->cohort_sessions - got : 0;
	c->control_sessions += got;
	c->rollback_ms = canary_ms_since(&c->rb_t0);
	log_info("canary", "custody: %u of the cohort's %u sessions restored into pid %d in %.1f ms (%u connections kept, %u reconnected, %llu lines lost)%s%s",
		 got, c->cohort_sessions, (int)worker_pid(c->s), c->rollback_ms,
		 r->connections_kept, r->connections_reconnected,
		 (unsigned long long)r->lines_lost, m->committed ? "" : ": not committed: ",
		 m->committed ? "" : (m->reason ? m->reason : "?"));
	/* S serves everything again; what was not restored starts anew */
	if (worker_send_accept(c->s, true) < 0)
		log_error("canary", "ACCEPT on to pid %d failed", (int)worker_pid(c->s));
	canary_end(c, "rolled_back", c->s, NULL);
}

static void canary_on_worker(struct worker *w, enum worker_event ev,
			     const void *msg, void *arg)
{
	struct canary *c = arg;
	bool is_s = w == c->s, is_t = w == c->t;

	switch (ev) {
	case WORKER_READY:
		if (is_t && c->phase == C_SPAWN)
			canary_on_target_ready(c);
		return;
	case WORKER_PROGRESS: {
		const Baton__Control__Progress *p = msg;

		if (w == c->msrc && !p->has_source_sessions)
			canary_progress(c, c->move_full ? (c->move_is_rollback ? "rollback" : "promote")
							: "move",
					p->items_done, p->items_total);
		return;
	}
	case WORKER_RESULT: {
		const Baton__Control__MigrationResult *r = msg;
		struct move_side *side = w == c->msrc ? &c->rs : w == c->mdst ? &c->rd : NULL;

		if (c->phase == C_RESTORE && is_s) {
			canary_custody_restored(c, r);
			return;
		}

		if (side == NULL || (c->phase != C_MOVE && c->phase != C_FULL)) {
			log_warn("canary", "pid %d: MIGRATION_RESULT outside a move (ignored)",
				 (int)worker_pid(w));
			return;
		}
		side->have = true;
		side->committed = r->committed;
		side->sessions = r->sessions;
		side->chunks_committed = r->chunks_committed;
		side->freeze_ms = r->freeze_max_ms;
		snprintf(side->reason, sizeof(side->reason), "%s", r->reason ? r->reason : "");
		if (c->rs.have && c->rd.have)
			canary_move_done(c);
		return;
	}
	case WORKER_EXITED:
		if ((c->phase == C_FINISH || c->phase == C_DONE) &&
		    w == c->survivor && w != c->leaving) {
			/* The survivor died while the other one leaves (or before
			 * the host heard of it): it must not be handed to the host
			 * (freed after this event) nor judged again as a canary
			 * worker; the host starts a fresh one. */
			log_error("canary", "pid %d, which was to serve after the canary, exited: %s",
				  (int)worker_pid(w), worker_exit_status(w));
			if (is_s)
				c->s = NULL;
			if (is_t)
				c->t = NULL;
			c->survivor = NULL;
			return;
		}
		if (c->phase == C_FINISH && w == c->leaving) {
			if (is_s)
				c->s = NULL;
			if (is_t)
				c->t = NULL;
			c->leaving = NULL;
			canary_complete(c);
			return;
		}
		if (is_t) {
			char why[160];

			c->t = NULL;
			if (c->phase == C_DONE)
				return;
			if (c->phase == C_SPAWN) {
				canary_reason(c, "the new worker exited before READY: %s",
					      worker_exit_status(w));
				canary_end(c, "refused", c->s, NULL);
				return;
			}
			snprintf(why, sizeof(why), "the new worker pid %d exited: %s (up %.1f s)",
				 (int)worker_pid(w), worker_exit_status(w),
				 worker_uptime_s(w));
			gates_trip(c->gates, "worker_crash", 1, why);
			c->detected_ms = canary_ms_since(&c->t0);
			snprintf(c->gate, sizeof(c->gate), "%s", gates_tripped(c->gates));
			canary_reason(c, "%s", gates_reason(c->gates));
			if (c->phase == C_BAKE && c->s != NULL &&
			    canary_custody_restore(c, w) == 0)
				return; /* ends at S's MIGRATION_RESULT */
			/* Its sessions died with it: S starts them again (their
			 * users reconnect), and that is counted. A move S was in
			 * aborts on the channel's close. */
			c->lost += c->cohort_sessions;
			if (c->phase == C_FULL && c->move_is_rollback)
				c->lost = c->cohort_sessions > c->rd.sessions
						  ? c->cohort_sessions - c->rd.sessions : 0;
			if (c->s && worker_send_accept(c->s, true) < 0)
				log_error("canary", "ACCEPT on to pid %d failed", (int)worker_pid(c->s));
			if (c->rollback_ms == 0 && c->rb_t0.tv_sec)
				c->rollback_ms = canary_ms_since(&c->rb_t0);
			canary_end(c, "rolled_back", c->s, NULL);
			return;
		}
		if (is_s) {
			c->s = NULL;
			if (c->phase == C_DONE)
				return;
			if (c->phase == C_RESTORE) {
				/* both workers are gone: what custody held closes */
				custody_restore_free(c->restore);
				c->restore = NULL;
			}
			canary_reason(c, "the old worker pid %d exited during the canary: %s; the new worker serves every session (the old worker's users reconnect)",
				      (int)worker_pid(w), worker_exit_status(w));
			c->lost += c->control_sessions;
			if (c->t == NULL || c->phase == C_SPAWN) {
				if (c->t)
					worker_kill(c->t);
				canary_end(c, "aborted", NULL, c->t);
				return;
			}
			if (worker_send_listeners(c->t, listeners_fds(c->h.listeners),
						  listeners_names(c->h.listeners),
						  listeners_count(c->h.listeners)) < 0 ||
			    worker_send_accept(c->t, true) < 0)
				log_error("canary", "cannot hand the listeners to pid %d",
					  (int)worker_pid(c->t));
			canary_end(c, "aborted", c->t, NULL);
		}
		return;
	}
}

/* ---- public ---- */

struct canary *canary_start(const struct canary_host *host, struct worker *s,
			    const struct canary_plan *plan, canary_reply_cb cb,
			    void *arg)
{
	struct canary *c = calloc(1, sizeof(*c));
	int err = 0;

	if (c == NULL)
		return NULL;
	c->h = *host;
	c->plan = *plan;
	c->plan.users = NULL;
	c->plan.nusers = 0;
	if (c->plan.bake_s < 0)
		c->plan.bake_s = host->cfg->canary_bake_s;
	if (plan->nusers) {
		c->plan.users = calloc(plan->nusers, sizeof(char *));
		if (c->plan.users == NULL)
			goto fail;
		for (; c->plan.nusers < plan->nusers; c->plan.nusers++)
			if ((c->plan.users[c->plan.nusers] =
				     strdup(plan->users[c->plan.nusers])) == NULL)
				goto fail;
	}
	c->gates = gates_new(host->cfg);
	c->ev_sample = evtimer_new(host->base, canary_on_sample, c);
	c->ev_deadline = evtimer_new(host->base, canary_on_deadline, c);
	c->ev_bake = evtimer_new(host->base, canary_on_bake, c);
	c->ev_done = event_new(host->base, -1, 0, canary_on_done, c);
	if (c->gates == NULL || c->ev_sample == NULL || c->ev_deadline == NULL ||
	    c->ev_bake == NULL || c->ev_done == NULL)
		goto fail;
	c->s = s;
	c->from_pid = worker_pid(s);
	snprintf(c->from_version, sizeof(c->from_version), "%s", worker_version(s));
	snprintf(c->from_binary, sizeof(c->from_binary), "%s", worker_binary(s));
	snprintf(c->to_binary, sizeof(c->to_binary), "%s", plan->binary);
	c->percent_x100 = plan->auto_promote && plan->nsteps ? plan->steps[0]
							      : plan->percent_x100;
	c->control_sessions = worker_last_status(s)->sessions;
	clock_gettime(CLOCK_MONOTONIC, &c->t0);
	if (cb) {
		enum canary_wait wait = plan->auto_promote ? W_END
					: plan->bake_s > 0 ? W_BAKED : W_MOVED;

		canary_add_waiter(c, cb, arg, wait, wait == W_BAKED ? "baked" : "started");
	}
	c->phase = C_SPAWN;
	canary_progress(c, "spawn", 0, 1);
	c->t = host->spawn(host->arg, plan->binary, &err);
	if (c->t == NULL) {
		snprintf(c->reason, sizeof(c->reason), "cannot start %.500s: %s",
			 plan->binary, strerror(-err));
		canary_end(c, "refused", s, NULL);
		return c;
	}
	worker_set_role(c->t, "target");
	worker_set_handler(s, canary_on_worker, c);
	worker_set_handler(c->t, canary_on_worker, c);
	canary_set_deadline(c, c->h.cfg->handoff_timeout_s);
	log_info("canary", "started: pid %d (%s) -> %s", (int)worker_pid(s),
		 worker_version(s), plan->binary);
	return c;
fail:
	canary_free(c);
	return NULL;
}

void canary_request(struct canary *c, const char *action,
		    uint32_t percent_x100, canary_reply_cb cb, void *arg)
{
	if (strcmp(action, "status") == 0) {
		canary_send(cb, arg, canary_status_json(c), true);
		return;
	}
	if (c->phase == C_FINISH || c->phase == C_DONE) {
		canary_refuse_request(c, cb, arg, "the canary is ending (%s)", c->result);
		return;
	}
	if (strcmp(action, "abort") == 0) {
		if (canary_add_waiter(c, cb, arg, W_END, "aborted") < 0) {
			canary_refuse_request(c, cb, arg, "too many requests waiting");
			return;
		}
		c->aborting = true;
		if (c->phase == C_SPAWN) {
			canary_reason(c, "aborted by the operator before the cohort moved");
			worker_kill(c->t);
			canary_end(c, "aborted", c->s, c->t);
			return;
		}
		canary_reason(c, "aborted by the operator");
		canary_start_rollback(c);
		return;
	}
	if (c->phase != C_BAKE || c->want_rollback) {
		canary_refuse_request(c, cb, arg, "the canary is busy (%s)",
				      canary_phase_name(c->phase));
		return;
	}
	if (strcmp(action, "promote") == 0) {
		if (canary_add_waiter(c, cb, arg, W_END, "promoted") < 0) {
			canary_refuse_request(c, cb, arg, "too many requests waiting");
			return;
		}
		canary_promote(c);
		return;
	}
	if (strcmp(action, "grow") == 0) {
		if (c->plan.auto_promote) {
			canary_refuse_request(c, cb, arg, "this canary grows by itself (upgrade --canary --steps); abort it or wait");
			return;
		}
		if (percent_x100 <= c->percent_x100 || percent_x100 > 10000) {
			canary_refuse_request(c, cb, arg, "grow needs a percentage above the current %.2f %% (and at most 100)",
					      c->percent_x100 / 100.0);
			return;
		}
		if (canary_add_waiter(c, cb, arg, W_MOVED, "grown") < 0) {
			canary_refuse_request(c, cb, arg, "too many requests waiting");
			return;
		}
		c->percent_x100 = percent_x100;
		canary_start_partial(c);
		return;
	}
	canary_refuse_request(c, cb, arg, "unknown canary action '%s' (known: grow, promote, abort, status)",
			      action);
}

struct json_object *canary_status_json(const struct canary *c)
{
	struct jb jb_ = JB_INIT, *jb = &jb_;
	struct json_object *o = jb_note(jb, canary_result_json(c, c->phase == C_DONE ? c->result
										  : "running"));

	jb_add(jb, o, "bake_s", jb_i64(jb, c->plan.bake_s));
	return jb_done(jb, o);
}

void canary_detach(struct canary *c, void *arg)
{
	size_t j = 0;

	for (size_t i = 0; i < c->nwaiters; i++)
		if (c->waiters[i].arg != arg)
			c->waiters[j++] = c->waiters[i];
	c->nwaiters = j;
}

void canary_metrics(const struct canary *c, struct evbuffer *out)
{
	gates_metrics(c->gates, out);
}

void canary_free(struct canary *c)
{
	if (c == NULL)
		return;
	if (c->s != NULL)
		worker_cancel_health(c->s, c);
	if (c->t != NULL)
		worker_cancel_health(c->t, c);
	for (size_t i = 0; i < c->plan.nusers; i++)
		free(c->plan.users[i]);
	free(c->plan.users);
	gates_free(c->gates);
	for (int k = 0; k < 2; k++)
		baton__control__health__free_unpacked(c->health[k], NULL);
	if (c->ev_sample)
		event_free(c->ev_sample);
	if (c->ev_deadline)
		event_free(c->ev_deadline);
	if (c->ev_bake)
		event_free(c->ev_bake);
	if (c->ev_done)
		event_free(c->ev_done);
	json_object_put(c->final);
	custody_restore_free(c->restore);
	free(c);
}
