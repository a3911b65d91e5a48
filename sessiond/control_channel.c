/* sessiond/control_channel.c: see control_channel.h. The supervisor is the only peer; a
 * malformed control message is logged and ignored (the supervisor is
 * trusted, but a bug there must not take the sessions down). EOF on the
 * control socket means the supervisor is gone: the worker is orphaned and
 * serves on, and a supervisor started later adopts it over its rendezvous
 * socket (rendezvous.h); an orphan with no session left (the source of a
 * migration that committed, a target that got nothing) exits. */
#include "sessiond/control_channel.h"
#include "sessiond/service.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "baton_version.h"
#include "common/config.h"
#include "common/control.h"
#include "common/log.h"
#include "control.pb-c.h"
#include "common/frame.h"
#include "common/clock.h"
#include "sessiond/bouncer.h"
#include "sessiond/sasl.h"
#include "sessiond/session.h"
#include "sessiond/control_queue.h"
#include "sessiond/checkpoint.h"
#include "sessiond/fault.h"
#include "sessiond/history.h"
#include "sessiond/health.h"
#include "sessiond/rendezvous.h"
#include "sessiond/session.h"
#include "sessiond/state.h"
#include "sessiond/transfer.h"

/* READY (before the loop) and the final flush at exit: the only sends
 * that may wait. Everything on the loop goes through the queue
 * (control_queue.h) and never waits. */
#define WORKER_SEND_TIMEOUT_MS 2000
/* Event-loop lag: how late a 100 ms tick runs (its worst since the last
 * health sample is the gates' loop_lag_max_s). */
#define WORKER_LAG_INTERVAL_MS 100

struct control_channel {
	struct event_base *base;
	int fd;
	struct event *ev;
	struct control_queue *out; /* every send from the loop */
	struct event *lag_ev;
	struct timespec lag_expected;
	double lag_ms; /* event-loop lag: lateness of the last lag tick */
	double health_build_s; /* CPU spent building HEALTH answers, cumulative */
	struct bouncer *b;
	const struct baton_config *cfg;
	bool migrating;
	bool incoming; /* the migration under way (or the last one) brings sessions in */
	/* The supervisor is gone (fd -1, out NULL, ev NULL) until one adopts
	 * this worker through rv. */
	bool orphaned;
	struct rendezvous *rv;
	/* A new supervisor's channel that came mid-migration, or -1: the
	 * adoption completes when the migration ends (channel_finished()). */
	int adopt_fd;
};

static void channel_readable(evutil_socket_t fd, short what, void *arg);

/* Every send from the loop; an orphan's go nowhere (nobody asked). */
static int channel_push(struct control_channel *w, enum control_type type,
			const ProtobufCMessage *msg, enum control_queue_kind kind)
{
	if (w->out == NULL)
		return -EPIPE;
	return control_queue_push(w->out, type, msg, kind);
}

/* An orphan holding no session has nothing to keep alive. */
static void channel_orphan_check_empty(struct control_channel *w)
{
	struct bouncer_stats s;

	if (!w->orphaned || w->migrating)
		return;
	bouncer_stats(w->b, &s);
	if (s.sessions == 0) {
		log_info("worker", "orphaned with no session: exiting");
		event_base_loopexit(w->base, NULL);
	}
}

/* The supervisor is gone: serve on, wait to be adopted. */
static void channel_orphan(struct control_channel *w, const char *why)
{
	log_warn("worker", "supervisor gone (%s): serving on%s%s", why,
		 w->rv ? "; a new supervisor adopts this worker at " : ", but no "
		 "supervisor can adopt this worker (no rendezvous socket)",
		 w->rv ? rendezvous_path(w->rv) : "");
	event_free(w->ev);
	w->ev = NULL;
	control_queue_free(w->out); /* what was queued has no reader */
	w->out = NULL;
	close(w->fd);
	w->fd = -1;
	w->orphaned = true;
	checkpoint_stop(); /* nobody holds the sockets now */
	channel_orphan_check_empty(w);
}

static bool channel_is_orphaned(void *arg)
{
	struct control_channel *w = arg;

	return w->orphaned;
}

/* A new supervisor's control channel: READY (adopted) and the listeners
 * we serve on go out before anything else, then the loop runs as before. */
static void channel_adopted(void *arg, int fd)
{
	struct control_channel *w = arg;
	const int *lfds;
	const char *const *lnames;
	size_t n = bouncer_listeners(w->b, &lfds, &lnames);
	Baton__Control__Listeners l = BATON__CONTROL__LISTENERS__INIT;
	int rc;

	/* Mid-migration this worker does not hold the sessions in transit:
	 * adopted now, the ACCEPT that follows would start them a second
	 * time (bouncer_start_configured()), and a source would be left
	 * empty under the new supervisor. Answered when the migration ends,
	 * by the worker that holds the sessions then. */
	if (w->migrating) {
		if (w->adopt_fd >= 0)
			close(w->adopt_fd); /* an older attempt: its supervisor moved on */
		w->adopt_fd = fd;
		log_info("worker", "adoption deferred to the end of the migration under way");
		return;
	}
	rc = control_channel_send_ready_adopted(fd, true);
	l.names = (char **)lnames;
	l.n_names = n;
	if (rc == 0)
		rc = control_send(fd, CONTROL_LISTENERS, &l.base, lfds, n,
				  WORKER_SEND_TIMEOUT_MS);
	if (rc == 0) {
		evutil_make_socket_nonblocking(fd);
		w->ev = event_new(w->base, fd, EV_READ | EV_PERSIST, channel_readable, w);
		w->out = control_queue_new(w->base, fd);
		if (w->ev == NULL || w->out == NULL || event_add(w->ev, NULL) < 0)
			rc = -ENOMEM;
	}
	if (rc < 0) {
		log_error("worker", "adoption failed: %s: still orphaned", strerror(-rc));
		if (w->ev)
			event_free(w->ev);
		control_queue_free(w->out);
		w->ev = NULL;
		w->out = NULL;
		close(fd);
		return;
	}
	w->fd = fd;
	w->orphaned = false;
	log_info("worker", "adopted by a new supervisor (%zu listeners handed over)", n);
	/* custody stopped when the old supervisor went: the new one holds
	 * nothing, so it starts over (a fresh log, fresh copies) */
	if (w->cfg->custody) {
		int r = checkpoint_restart(w->base, w->b, w->out,
					   w->cfg->custody_checkpoint_ms);

		if (r < 0)
			log_error("custody", "cannot restart custody after adoption: %s (a crash of this worker disconnects its users)",
				  strerror(-r));
	}
}

int control_channel_rendezvous(struct control_channel *w, const char *state_dir)
{
	int err = 0;

	w->rv = rendezvous_new(w->base, state_dir, channel_is_orphaned, channel_adopted, w, &err);
	return w->rv ? 0 : err;
}

static int channel_send_ready(int fd, char **problems, size_t nproblems, bool adopted)
{
	Baton__Control__Ready ready = BATON__CONTROL__READY__INIT;

	if (adopted) {
		ready.has_adopted = 1;
		ready.adopted = 1;
	}

	ready.version = (char *)SESSIOND_VERSION;
	ready.schema_min = BATON_SCHEMA_MIN;
	ready.schema_max = BATON_SCHEMA_MAX;
	ready.preflight_ok = nproblems == 0;
	ready.problems = problems;
	ready.n_problems = nproblems;
	ready.has_pid = 1;
	ready.pid = (uint32_t)getpid();
	ready.has_reload = 1;
	ready.reload = 1;
	return control_send(fd, CONTROL_READY, &ready.base, NULL, 0,
			    WORKER_SEND_TIMEOUT_MS);
}

int control_channel_send_ready(int fd, char **problems, size_t nproblems)
{
	return channel_send_ready(fd, problems, nproblems, false);
}

int control_channel_send_ready_adopted(int fd, bool adopted)
{
	return channel_send_ready(fd, NULL, 0, adopted);
}

static void channel_progress(void *arg, uint32_t done, uint32_t total)
{
	struct control_channel *w = arg;
	Baton__Control__Progress p = BATON__CONTROL__PROGRESS__INIT;

	p.items_done = done;
	p.items_total = total;
	/* a sample: a newer count replaces one still waiting */
	channel_push(w, CONTROL_PROGRESS, &p.base,
			   CONTROL_QUEUE_SAMPLE);
}

/* Source: before anything is frozen, tell the supervisor how many sessions
 * we hold. The control socket is ordered, so this is read before any later
 * message and, if we die halfway, before our exit: the supervisor can then
 * count the sessions that died with us against what the target holds. */
static void channel_announce_sessions(struct control_channel *w)
{
	Baton__Control__Progress p = BATON__CONTROL__PROGRESS__INIT;
	struct bouncer_stats s;

	bouncer_stats(w->b, &s);
	p.has_source_sessions = 1;
	p.source_sessions = s.sessions;
	if (channel_push(w, CONTROL_PROGRESS, &p.base,
			       CONTROL_QUEUE_MUST) < 0)
		log_warn("worker", "cannot announce the sessions of this migration");
}

static void channel_finished(void *arg, const struct transfer_result *res)
{
	struct control_channel *w = arg;
	Baton__Control__MigrationResult r =
		BATON__CONTROL__MIGRATION_RESULT__INIT;
	int rc;

	w->migrating = false;
	/* What this worker holds now (adopted, or left after a failure) gets
	 * its records before the supervisor reads the result: it may look at
	 * our log (a migration whose source died, supervisor/migration.c). */
	checkpoint_now();
	r.committed = res->committed;
	r.reason = (char *)res->reason;
	r.has_sessions = r.has_connections = r.has_fds = 1;
	r.sessions = res->sessions;
	r.connections = res->connections;
	r.fds = res->fds;
	r.has_freeze_max_ms = r.has_total_ms = 1;
	r.freeze_max_ms = res->freeze_max_ms;
	r.total_ms = res->total_ms;
	r.has_chunks = r.has_chunks_committed = 1;
	r.chunks = res->chunks;
	r.chunks_committed = res->chunks_committed;
	r.has_freeze_serialize_ms = r.has_freeze_prepare_ms = r.has_freeze_commit_ms = 1;
	r.freeze_serialize_ms = res->freeze_serialize_ms;
	r.freeze_prepare_ms = res->freeze_prepare_ms;
	r.freeze_commit_ms = res->freeze_commit_ms;
	if (res->handshakes_left) {
		r.has_handshakes_left = 1;
		r.handshakes_left = res->handshakes_left;
	}
	if (res->state_bytes) {
		r.has_state_bytes = 1;
		r.state_bytes = res->state_bytes;
	}
	if (res->lines_in_store) {
		r.has_backlog_lines_in_store = 1;
		r.backlog_lines_in_store = res->lines_in_store;
	}
	if (res->shrunk_sessions) {
		r.has_shrunk_sessions = r.has_shrunk_lines = 1;
		r.has_shrunk_clients = r.has_shrunk_member_lists = 1;
		r.shrunk_sessions = res->shrunk_sessions;
		r.shrunk_lines = res->shrunk_lines;
		r.shrunk_clients = res->shrunk_clients;
		r.shrunk_member_lists = res->shrunk_member_lists;
	}
	log_info("migrate", "%s: %u sessions, %u fds, %u/%u chunks, freeze max %.1f ms, %.1f ms%s%s",
		 res->committed ? "committed" : "aborted", res->sessions,
		 res->fds, res->chunks_committed, res->chunks,
		 res->freeze_max_ms, res->total_ms,
		 res->reason[0] ? ": " : "", res->reason);
	rc = channel_push(w, CONTROL_MIGRATION_RESULT, &r.base,
				CONTROL_QUEUE_MUST);
	if (rc < 0 && !w->orphaned)
		log_error("worker", "cannot report migration result: %s",
			  strerror(-rc));
	/* A target whose supervisor died before the commit never gets the
	 * ACCEPT that would make it serve, and its source exits (it holds
	 * nothing now): this orphan accepts the logins itself. Configured
	 * sessions are not started (another orphan may hold them). */
	if (w->orphaned && w->incoming && res->committed) {
		log_info("worker", "orphaned target of a committed migration: accepting logins");
		bouncer_accept(w->b, true);
	}
	if (w->adopt_fd >= 0) {
		struct bouncer_stats s;
		int fd = w->adopt_fd;

		w->adopt_fd = -1;
		bouncer_stats(w->b, &s);
		if (w->orphaned && s.sessions > 0)
			channel_adopted(w, fd);
		else
			close(fd); /* nothing to adopt here: it tries the next orphan */
	}
	channel_orphan_check_empty(w);
}

#define STATUS_SASL_MAX 100 /* failing sessions listed in STATUS */

static void channel_send_status(struct control_channel *w)
{
	Baton__Control__Status st = BATON__CONTROL__STATUS__INIT;
	struct bouncer_stats s;
	const struct session *fail[STATUS_SASL_MAX];
	Baton__Control__SaslFailure sf[STATUS_SASL_MAX];
	Baton__Control__SaslFailure *sfp[STATUS_SASL_MAX];
	size_t nfail = bouncer_sasl_failures(w->b, fail, STATUS_SASL_MAX);

	bouncer_stats(w->b, &s);
	st.sessions = s.sessions;
	st.connections = s.connections;
	st.has_clients = st.has_upstreams_connected = st.has_loop_lag_ms = 1;
	st.clients = s.clients;
	st.upstreams_connected = s.upstreams;
	st.has_upstreams_waiting = st.has_tls_handshakes = 1;
	st.upstreams_waiting = s.waiting;
	st.tls_handshakes = s.tls_handshakes;
	st.loop_lag_ms = w->lag_ms;
	st.has_pid = 1;
	st.pid = (uint32_t)getpid();
	st.version = (char *)SESSIOND_VERSION;
	/* Per network: why sessions wait (a sample: on allocation failure
	 * the status goes without them). */
	size_t nn = bouncer_ngovernors(w->b);
	Baton__Control__NetworkStatus *nv = nn ? calloc(nn, sizeof(*nv)) : NULL;
	Baton__Control__NetworkStatus **np = nn ? calloc(nn, sizeof(*np)) : NULL;
	struct bouncer_network_stats *ns = nn ? calloc(nn, sizeof(*ns)) : NULL;
	if (nv && np && ns) {
		bouncer_networks_stats(w->b, ns, nn);
		for (size_t i = 0; i < nn; i++) {
			Baton__Control__NetworkStatus *n = &nv[i];

			baton__control__network_status__init(n);
			n->network = (char *)ns[i].network;
			n->has_sessions = n->has_connected = n->has_waiting = 1;
			n->has_capacity = n->has_addresses = 1;
			n->has_max_per_addr = n->has_throttled = 1;
			n->sessions = ns[i].sessions;
			n->connected = ns[i].connected;
			n->waiting = ns[i].waiting;
			n->capacity = ns[i].capacity;
			n->addresses = ns[i].addresses;
			n->max_per_addr = ns[i].max_per_addr > 0 ?
					  (uint32_t)ns[i].max_per_addr : 0;
			n->throttled = ns[i].throttled;
			n->reason = (char *)ns[i].reason;
			if (ns[i].advice[0])
				n->advice = ns[i].advice;
			np[i] = n;
		}
		st.n_networks = nn;
		st.networks = np;
	}
	st.has_sasl_failing = 1;
	st.sasl_failing = (uint32_t)nfail;
	for (size_t i = 0; i < nfail && i < STATUS_SASL_MAX; i++) {
		const struct session *fs = fail[i];
		baton__control__sasl_failure__init(&sf[i]);
		sf[i].user = fs->user;
		sf[i].network = fs->network;
		sf[i].reason = (char *)sasl_failure(fs);
		sf[i].has_at_ms = 1;
		sf[i].at_ms = fs->sasl_failure_at_ms;
		sf[i].has_next_attempt_ms = 1;
		sf[i].next_attempt_ms = fs->reconnect_at_ms ?
			clock_mono_to_wall_ms(fs->reconnect_at_ms) : 0;
		sfp[i] = &sf[i];
		st.n_sasl_failures++;
	}
	st.sasl_failures = sfp;
	Baton__Control__StoreStatus ss = BATON__CONTROL__STORE_STATUS__INIT;
	if (bouncer_history(w->b) != NULL) {
		struct history_stats hs;

		history_stats(bouncer_history(w->b), &hs);
		ss.backend = (char *)hs.backend;
		ss.has_appended = ss.has_refused = ss.has_errors = 1;
		ss.has_commit_failures = ss.has_failing = ss.has_pending = 1;
		ss.has_paused_sessions = ss.has_queued = ss.has_durable_seq = 1;
		ss.has_replay_queries = 1;
		ss.appended = hs.appended;
		ss.refused = hs.refused;
		ss.errors = hs.errors;
		ss.commit_failures = hs.commit_failures;
		ss.failing = hs.failing;
		ss.pending = hs.pending_now;
		ss.paused_sessions = (uint32_t)hs.paused_sessions;
		ss.queued = hs.queued;
		ss.durable_seq = hs.durable_seq;
		ss.replay_queries = hs.replay_queries;
		st.store = &ss;
	} else if (bouncer_history_retry(w->b) != NULL) {
		/* configured, not open (history.h: history_retry_start()) */
		ss.backend = (char *)(bouncer_config(w->b)->store_backend ==
				      CONFIG_STORE_POSTGRES ? "postgres" : "sqlite");
		ss.has_failing = 1;
		ss.failing = true;
		ss.unavailable = (char *)history_retry_why(bouncer_history_retry(w->b));
		st.store = &ss;
	}
	channel_push(w, CONTROL_STATUS, &st.base,
			   CONTROL_QUEUE_SAMPLE);
	free(nv);
	free(np);
	free(ns);
}

/* The health gates' sample (health.h): counters, and the differential
 * delivery of the interval that ends now. */
static double channel_thread_cpu_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void channel_send_health(struct control_channel *w)
{
	Baton__Control__Health h = BATON__CONTROL__HEALTH__INIT;
	double t0;
	int rc;

	/* One still waiting for room answers this request too: building
	 * another would consume an interval of differential delivery that
	 * replacing the waiting one would then lose (control_queue.h). */
	if (w->out == NULL || control_queue_waiting(w->out, CONTROL_HEALTH))
		return;
	t0 = channel_thread_cpu_s();
	if (health_fill(bouncer_health(w->b), w->b, &h) < 0)
		log_warn("worker", "health sample incomplete: out of memory");
	/* what answering the gates costs this loop (bench/README.md) */
	w->health_build_s += channel_thread_cpu_s() - t0;
	h.has_health_build_s = 1;
	h.health_build_s = w->health_build_s;
	rc = channel_push(w, CONTROL_HEALTH, &h.base,
				CONTROL_QUEUE_SAMPLE);
	if (rc < 0)
		log_warn("worker", "cannot send the health sample: %s", strerror(-rc));
	health_fill_free(&h);
}

static void channel_migrate(struct control_channel *w, struct frame_msg *msg)
{
	static const struct transfer_report no_report;
	struct transfer_report report = no_report;
	struct transfer_select sel = { 0 };
	Baton__Control__Migrate *mg;
	int channel, pidfd, r;

	/* fds: the channel end, and for the source the target's pidfd (opened
	 * by the supervisor; optional). Unused fds are closed with msg. */
	mg = baton__control__migrate__unpack(NULL, msg->len, msg->data);
	channel = frame_msg_take_fd(msg, 0);
	pidfd = mg != NULL && mg->outgoing ? frame_msg_take_fd(msg, 1) : -1;
	if (mg == NULL || channel < 0 || msg->nfds > 2 || w->migrating) {
		log_error("worker", "bad MIGRATE message (%s)",
			  w->migrating ? "already migrating" : "malformed");
		if (channel >= 0)
			close(channel); /* the peer sees EOF and aborts */
		if (pidfd >= 0)
			close(pidfd);
		goto out;
	}
	report.progress = channel_progress;
	report.finished = channel_finished;
	report.arg = w;
	w->migrating = true;
	w->incoming = !mg->outgoing;
	if (mg->select != NULL) {
		sel.users = mg->select->users;
		sel.nusers = mg->select->n_users;
		sel.networks = mg->select->networks;
		sel.nnetworks = mg->select->n_networks;
		sel.percent_x100 = mg->select->has_percent_x100
					   ? mg->select->percent_x100 : 0;
	}
	if (mg->outgoing) {
		channel_announce_sessions(w);
		r = transfer_out_start(w->base, w->b, channel,
				      (pid_t)mg->peer_pid, pidfd,
				      mg->has_timeout_ms ? (int)mg->timeout_ms : 10000,
				      mg->has_chunk_sessions ? mg->chunk_sessions
				      : (unsigned)w->cfg->chunk_sessions,
				      (size_t)w->cfg->chunk_bytes,
				      w->cfg->handshake_budget_ms,
				      mg->has_schema ? mg->schema : 1,
				      mg->select != NULL ? &sel : NULL, &report);
	} else {
		r = transfer_in_start(w->base, w->b, channel,
				     mg->has_timeout_ms ? (int)mg->timeout_ms : 10000,
				     mg->select != NULL, &report);
	}
	if (r < 0) {
		struct transfer_result res = { .committed = false };

		snprintf(res.reason, sizeof(res.reason),
			 "cannot start migration: %s", strerror(-r));
		channel_finished(w, &res);
	}
out:
	if (mg != NULL)
		baton__control__migrate__free_unpacked(mg, NULL);
}

/* RELOAD: load the file we were started with again, check what the
 * worker's preflight checks (sessiond/main.c: every session can migrate,
 * enough fds), apply it (bouncer_reload()) and answer RELOAD_RESULT. A
 * refused reload changes nothing. */
static void channel_reload(struct control_channel *w)
{
	Baton__Control__ReloadResult r = BATON__CONTROL__RELOAD_RESULT__INIT;
	struct config_problems pr = { 0 };
	struct bouncer_reload res = { 0 };
	struct baton_config *next = NULL;
	struct rlimit rl;
	char why[512], advice[320];
	int rc;

	if (w->migrating) {
		config_problems_add(&pr, "a migration is running: reload after it");
	} else if (config_load(w->cfg->path, &next, &pr) == 0) {
		if (state_check_config(next, why, sizeof(why)) < 0)
			config_problems_add(&pr, "%s: [sessiond] %s", next->path, why);
		if (getrlimit(RLIMIT_NOFILE, &rl) == 0 &&
		    rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < config_fds_needed(next))
			config_problems_add(&pr, "%s: RLIMIT_NOFILE is %llu but %zu sessions need at least %lu open files (%s)",
					    next->path, (unsigned long long)rl.rlim_cur,
					    next->nsessions, config_fds_needed(next),
					    config_fds_advice(next, advice, sizeof(advice)));
	}
	if (pr.n + pr.dropped == 0) {
		rc = bouncer_reload(w->b, next, &res, why, sizeof(why));
		next = NULL; /* transferred */
		if (rc < 0)
			config_problems_add(&pr, "%s", why);
	}
	config_free(next);
	if (pr.dropped > 0)
		config_problems_add(&pr, "(and %zu more problems)", pr.dropped);
	r.applied = pr.n == 0;
	r.n_problems = pr.n;
	r.problems = pr.msgs;
	r.n_added = res.nadded;
	r.added = res.added;
	r.n_removed = res.nremoved;
	r.removed = res.removed;
	r.n_changed = res.nchanged;
	r.changed = res.changed;
	r.n_later = res.nlater;
	r.later = res.later;
	if (!r.applied)
		for (size_t i = 0; i < pr.n; i++)
			log_warn("worker", "reload refused: %s", pr.msgs[i]);
	rc = channel_push(w, CONTROL_RELOAD_RESULT, &r.base, CONTROL_QUEUE_MUST);
	if (rc < 0)
		log_error("worker", "RELOAD_RESULT not sent: %s", strerror(-rc));
	bouncer_reload_clear(&res);
	config_problems_clear(&pr);
}

/* A user's edit (service.h): to the supervisor, which answers
 * NETWORK_EDIT_RESULT. Bounded by service.c (one per client, a table). */
static int channel_send_edit(void *arg, uint64_t id, const char *user,
			     const char *network, const char *op,
			     char *const *pairs, size_t npairs)
{
	struct control_channel *w = arg;
	Baton__Control__NetworkEdit e = BATON__CONTROL__NETWORK_EDIT__INIT;

	if (w->orphaned || w->out == NULL)
		return -ENOTCONN;
	e.id = id;
	e.user = (char *)user;
	e.network = (char *)network;
	e.op = (char *)op;
	e.n_pairs = npairs;
	e.pairs = (char **)pairs;
	return channel_push(w, CONTROL_NETWORK_EDIT, &e.base, CONTROL_QUEUE_MUST);
}

static void channel_dispatch(struct control_channel *w, struct frame_msg *msg)
{
	switch (msg->type) {
	case CONTROL_LISTENERS: {
		int *fds = calloc(msg->nfds ? msg->nfds : 1, sizeof(int));

		if (fds == NULL) {
			/* They close with msg: this worker accepts no one. */
			log_error("worker", "out of memory: %zu listeners not taken", msg->nfds);
			break;
		}
		for (size_t i = 0; i < msg->nfds; i++)
			fds[i] = frame_msg_take_fd(msg, i);
		/* Names say which listeners are ircs (TLS). */
		Baton__Control__Listeners *l =
			baton__control__listeners__unpack(NULL, msg->len, msg->data);
		const char *const *names = l != NULL && l->n_names == msg->nfds ?
			(const char *const *)l->names : NULL;
		log_info("worker", "received %zu listeners", msg->nfds);
		for (size_t i = 0; names != NULL && i < msg->nfds; i++)
			log_info("worker", "listener %s", names[i]);
		bouncer_set_listeners(w->b, fds, names, msg->nfds); /* fds transferred */
		if (l != NULL)
			baton__control__listeners__free_unpacked(l, NULL);
		free(fds);
		break;
	}
	case CONTROL_ACCEPT: {
		Baton__Control__Accept *a =
			baton__control__accept__unpack(NULL, msg->len, msg->data);

		if (a == NULL) {
			log_error("worker", "malformed ACCEPT");
			break;
		}
		bouncer_accept(w->b, a->on);
		/* A worker that was a migration target starts the configured
		 * sessions that did not arrive (new in the config). */
		if (a->on)
			bouncer_start_configured(w->b);
		baton__control__accept__free_unpacked(a, NULL);
		break;
	}
	case CONTROL_MIGRATE:
		channel_migrate(w, msg);
		break;
	case CONTROL_STATUS_REQUEST:
		channel_send_status(w);
		break;
	case CONTROL_PEER: {
		/* The other worker of a canary: one fd, or none (unlink). */
		int fd = msg->nfds == 1 ? frame_msg_take_fd(msg, 0) : -1;

		bouncer_set_peer(w->b, fd); /* fd transferred */
		break;
	}
	case CONTROL_HEALTH_REQUEST:
		channel_send_health(w);
		break;
	case CONTROL_RELOAD:
		channel_reload(w);
		break;
	case CONTROL_NETWORK_EDIT_RESULT: {
		Baton__Control__NetworkEditResult *r =
			baton__control__network_edit_result__unpack(NULL, msg->len, msg->data);

		if (r == NULL) {
			log_error("worker", "malformed NETWORK_EDIT_RESULT");
			break;
		}
		service_edit_result(r->id, r->ok, r->message);
		baton__control__network_edit_result__free_unpacked(r, NULL);
		break;
	}
	case CONTROL_EXIT:
		log_info("worker", "exit requested by the supervisor");
		/* Clients the peer forwarded to us while we were leaving go
		 * back to it rather than die with us. */
		bouncer_peer_drain(w->b);
		event_base_loopexit(w->base, NULL);
		break;
	default:
		log_error("worker", "unexpected control message type %u",
			  msg->type);
	}
}

static void channel_readable(evutil_socket_t fd, short what, void *arg)
{
	struct control_channel *w = arg;

	for (;;) {
		struct frame_msg msg = { 0 };
		int r = frame_recv(w->fd, &msg, 1000);

		if (r == -EAGAIN)
			return;
		if (r < 0) {
			channel_orphan(w, r == -ECONNRESET ? "control channel closed"
							   : strerror(-r));
			return;
		}
		channel_dispatch(w, &msg);
		frame_msg_clear(&msg);
	}
}

static void channel_lag_tick(evutil_socket_t fd, short what, void *arg)
{
	struct control_channel *w = arg;
	struct timespec now;
	struct timeval tv = { 0, WORKER_LAG_INTERVAL_MS * 1000 };

	clock_gettime(CLOCK_MONOTONIC, &now);
	if (w->lag_expected.tv_sec != 0)
		w->lag_ms = (double)(now.tv_sec - w->lag_expected.tv_sec) * 1e3 +
			    (double)(now.tv_nsec - w->lag_expected.tv_nsec) / 1e6;
	if (w->lag_ms < 0)
		w->lag_ms = 0;
	health_loop_lag(bouncer_health(w->b), w->lag_ms / 1e3);
	w->lag_expected = now;
	w->lag_expected.tv_nsec += WORKER_LAG_INTERVAL_MS * 1000000L;
	if (w->lag_expected.tv_nsec >= 1000000000L) {
		w->lag_expected.tv_sec++;
		w->lag_expected.tv_nsec -= 1000000000L;
	}
	evtimer_add(w->lag_ev, &tv);
}

struct control_channel *control_channel_new(struct event_base *base, int fd, struct bouncer *b,
			  const struct baton_config *cfg)
{
	struct control_channel *w = calloc(1, sizeof(*w));

	if (w == NULL) {
		close(fd);
		return NULL;
	}
	w->base = base;
	w->fd = fd;
	w->adopt_fd = -1;
	w->b = b;
	w->cfg = cfg;
	evutil_make_socket_nonblocking(fd);
	w->ev = event_new(base, fd, EV_READ | EV_PERSIST, channel_readable, w);
	w->lag_ev = evtimer_new(base, channel_lag_tick, w);
	w->out = control_queue_new(base, fd);
	if (w->ev == NULL || w->lag_ev == NULL || w->out == NULL) {
		control_channel_free(w);
		return NULL;
	}
	event_add(w->ev, NULL);
	channel_lag_tick(-1, 0, w);
	service_set_sender(channel_send_edit, w);
	if (cfg->custody) {
		int r = checkpoint_start(base, b, w->out, cfg->custody_checkpoint_ms);

		if (r < 0)
			log_error("custody", "cannot start custody: %s (a crash of this worker disconnects its users)",
				  strerror(-r));
	}
	return w;
}

void control_channel_free(struct control_channel *w)
{
	if (w == NULL)
		return;
	service_set_sender(NULL, NULL);
	checkpoint_stop();
	if (w->ev != NULL)
		event_free(w->ev);
	if (w->lag_ev != NULL)
		event_free(w->lag_ev);
	rendezvous_free(w->rv);
	if (w->adopt_fd >= 0)
		close(w->adopt_fd);
	/* The loop is over: what is still queued (a MIGRATION_RESULT just
	 * before EXIT) may wait for room, bounded. */
	if (w->out != NULL)
		control_queue_flush(w->out, WORKER_SEND_TIMEOUT_MS);
	control_queue_free(w->out);
	if (w->fd >= 0)
		close(w->fd);
	free(w);
}
