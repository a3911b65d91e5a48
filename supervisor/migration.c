/* supervisor/migration.c: see migration.h.
 *
 * Decisions are taken in one place, migration_evaluate(), from what is known
 * so far (results received, workers dead), so the order in which results,
 * exits and deadlines arrive does not matter.
 */
#include "supervisor/migration.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/log.h"
#include "common/frame.h"
#include "supervisor/listeners.h"
#include "supervisor/worker_process.h"
#include "supervisor/custody.h"
#include "common/strmap.h"
#include <sys/socket.h>

/* A refused target's time to leave after EXIT before SIGKILL (s). */
#define REFUSE_GRACE_S 2

enum migration_phase {
	PHASE_WAIT_READY, /* T spawned, S untouched */
	PHASE_FORWARD,    /* S -> T running */
	PHASE_REVERSE,    /* T -> S running (after a partial forward) */
	PHASE_FINISH,     /* waiting for the leaving worker to exit */
	PHASE_DONE,       /* done callback scheduled */
};

struct side_result {
	bool have;
	bool committed;
	char reason[256];
	unsigned sessions, connections, fds, chunks, chunks_committed;
	unsigned handshakes_left;
	unsigned shrunk[4]; /* sessions, lines, clients, member lists */
	uint64_t state_bytes, lines_in_store;
	double freeze_max_ms;
	double freeze_split[3]; /* serialize, target prepare, commit */
};

struct migration {
	struct event_base *base;
	struct migration_params p;
	migration_progress_cb progress;
	migration_done_cb done;
	void *arg;

	enum migration_phase phase;
	struct worker *s, *t;         /* NULL once exited */
	char s_exit[96], t_exit[96];  /* exit text once exited */
	struct side_result rs, rt;    /* results of the current direction */
	struct side_result fwd_s;     /* S's forward result (for the report) */
	bool waiting_target;          /* S reported; T gets a short deadline */
	/* Sessions S held as it started migrating (its announcement, the
	 * first PROGRESS): the measure of what a dying S takes with it. */
	unsigned s_sessions;
	bool s_sessions_known;
	unsigned reverse_chunks;      /* committed chunks the reverse moves back */

	struct worker *leaving;       /* PHASE_FINISH: the one we wait for */
	bool accept_sent;             /* ACCEPT on sent to the survivor */
	struct worker *survivor;

	struct event *ev_deadline;
	struct event *ev_done;
	struct timespec t0;
	struct migration_result res;

	migration_target_check_cb target_check; /* NULL: none */
	void *target_check_arg;

	/* custody (custody.h): the sockets and checkpoint of a source that
	 * died; restored into T (the sessions T does not hold) before T
	 * accepts, so that they do not reconnect */
	struct custody *s_custody;
	struct custody_restore *restore;
	struct strmap *restore_exclude;
	struct custody_result restore_res;
	bool restore_tried;
	unsigned restore_held;
	const char *restore_during;
};

static void migration_evaluate(struct migration *m);
static void migration_finish(struct migration *m, struct worker *survivor,
			     struct worker *leaving);

static double ms_since(const struct timespec *t0)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - t0->tv_sec) * 1e3 +
	       (double)(now.tv_nsec - t0->tv_nsec) / 1e6;
}

static void migration_reason(struct migration *m, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Appends to the reason (the first failure leads, later ones follow). */
static void migration_reason(struct migration *m, const char *fmt, ...)
{
	size_t len = strlen(m->res.reason);
	va_list ap;

	if (len > 0 && len + 2 < sizeof(m->res.reason)) {
		strcat(m->res.reason, "; ");
		len += 2;
	}
	va_start(ap, fmt);
	vsnprintf(m->res.reason + len, sizeof(m->res.reason) - len, fmt, ap);
	va_end(ap);
}

/* What S held at the start: its own announcement, or (if it died before
 * announcing) the larger figure the supervisor had, so a loss is never
 * underestimated. */
static unsigned migration_source_sessions(const struct migration *m)
{
	return m->s_sessions_known ? m->s_sessions : m->p.source_sessions;
}

/* `n` sessions exist nowhere any more (the survivor restarts them). */
static void migration_lost(struct migration *m, unsigned n)
{
	if (n == 0)
		return;
	m->res.sessions_lost = true;
	m->res.sessions_lost_count = n;
}

/* S died and T (alive, reported) serves with `held` sessions: whatever else
 * S held at the start died with S. A result that says "committed" must
 * mean every session arrived. */
static void migration_custody_handed(void *arg, const struct custody_result *r)
{
	struct migration *m = arg;

	m->restore_res = *r;
}

/* S died holding sessions T did not get, and the supervisor has S's
 * custody: restore them into T (a second, incoming migration from the
 * supervisor, supervisor/custody.h). 0: started (T's MIGRATION_RESULT
 * ends it: migration_custody_restored()), -errno: not possible. */
static int migration_custody_restore(struct migration *m)
{
	struct custody *held = m->s_custody;
	int sv[2], r, err = 0;

	m->s_custody = NULL;
	m->restore_exclude = custody_session_keys(worker_custody(m->t));
	if (m->restore_exclude == NULL) {
		/* T's sessions unknown: restoring could send one twice */
		custody_free(held);
		return -ENOENT;
	}
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
		custody_free(held);
		return -errno;
	}
	r = worker_send_migrate(m->t, false, 0, -1, (unsigned)m->p.timeout_s * 1000,
				0, sv[1]);
	close(sv[1]);
	if (r < 0) {
		close(sv[0]);
		custody_free(held);
		return r;
	}
	memset(&m->restore_res, 0, sizeof(m->restore_res));
	m->restore = custody_restore_start(m->base, held, sv[0], worker_pid(m->t),
					   m->p.timeout_s * 1000, NULL, 0,
					   m->restore_exclude, migration_custody_handed,
					   m, &err);
	if (m->restore == NULL)
		return err; /* T sees EOF: its result says aborted (ignored) */
	log_info("custody", "the source died mid-migration: restoring its other sessions into pid %d from custody (%zu it already holds)",
		 (int)worker_pid(m->t), strmap_count(m->restore_exclude));
	return 0;
}

static void migration_source_died(struct migration *m, unsigned held,
				  const char *during);

static void migration_custody_restored(struct migration *m,
				       const Baton__Control__MigrationResult *res)
{
	unsigned n = res->committed ? m->restore_res.sessions_restored : 0;

	if (!res->committed) {
		m->restore_res.sessions_lost += m->restore_res.sessions_restored;
		m->restore_res.connections_reconnected += m->restore_res.connections_kept;
		m->restore_res.connections_kept = 0;
	}

	log_info("custody", "restore into pid %d %s: %u sessions restored, %u lost, %u connections kept, %u reconnected, %llu lines lost",
		 (int)worker_pid(m->t), res->committed ? "committed" : "failed", n,
		 m->restore_res.sessions_lost, m->restore_res.connections_kept,
		 m->restore_res.connections_reconnected,
		 (unsigned long long)m->restore_res.lines_lost);
	custody_restore_free(m->restore);
	m->restore = NULL;
	m->res.custody_restored = n;
	m->res.custody_lines_lost = m->restore_res.lines_lost;
	migration_source_died(m, m->restore_held + n, m->restore_during);
}

static void migration_source_died(struct migration *m, unsigned held,
				  const char *during)
{
	unsigned start = migration_source_sessions(m);

	if (start > held && m->t != NULL && !m->restore_tried &&
	    custody_has_checkpoint(m->s_custody)) {
		m->restore_tried = true;
		m->restore_held = held;
		m->restore_during = during;
		if (migration_custody_restore(m) == 0)
			return; /* T's result of the restore continues here */
		log_warn("custody", "cannot restore the dead source's sessions from custody");
	}

	if (start > held) {
		migration_lost(m, start - held);
		m->res.partial = true;
		m->res.committed = false;
		migration_reason(m, "source exited during the %s (%s): target pid %d took over %u of its %u sessions; %u died with the source",
				 during, m->s_exit, (int)worker_pid(m->t), held,
				 start, start - held);
	} else {
		m->res.committed = true;
		migration_reason(m, "source exited during the %s (%s); target pid %d took over all %u sessions",
				 during, m->s_exit, (int)worker_pid(m->t), held);
	}
	if (!m->rt.committed && m->rt.reason[0])
		migration_reason(m, "target: %s", m->rt.reason);
	if (m->res.custody_restored)
		migration_reason(m, "%u session(s) restored into the target from the source's custody",
				 m->res.custody_restored);
	log_warn("migration", "%s", m->res.reason);
	migration_finish(m, m->t, NULL);
}

static void migration_set_deadline(struct migration *m, int seconds)
{
	struct timeval tv = { .tv_sec = seconds };

	evtimer_del(m->ev_deadline);
	evtimer_add(m->ev_deadline, &tv);
}

static void migration_on_done(evutil_socket_t fd, short what, void *arg)
{
	struct migration *m = arg;

	/* Last statement: the owner may free m. */
	m->done(m, &m->res, m->survivor, m->arg);
}

/* The survivor starts accepting clients, and (on ACCEPT on) starts every
 * configured session it does not hold: that is how sessions lost with a
 * dead target come back (their users reconnect). */
static void migration_survivor_accept(struct migration *m)
{
	if (m->survivor == NULL || m->accept_sent)
		return;
	m->accept_sent = true;
	if (worker_send_accept(m->survivor, true) < 0)
		log_error("migration", "pid %d: ACCEPT on failed",
			  (int)worker_pid(m->survivor));
}

static void migration_complete(struct migration *m)
{
	const struct side_result *r = &m->fwd_s;

	migration_survivor_accept(m);

	m->phase = PHASE_DONE;
	evtimer_del(m->ev_deadline);
	m->res.sessions = r->sessions;
	m->res.connections = r->connections;
	m->res.fds = r->fds;
	m->res.chunks = r->chunks;
	m->res.handshakes_left = r->handshakes_left;
	memcpy(m->res.shrunk, r->shrunk, sizeof(r->shrunk));
	m->res.state_bytes = r->state_bytes;
	m->res.backlog_lines_in_store = r->lines_in_store;
	m->res.freeze_ms = r->freeze_max_ms;
	memcpy(m->res.freeze_split_ms, r->freeze_split, sizeof(r->freeze_split));
	m->res.total_ms = ms_since(&m->t0);
	if (m->progress)
		m->progress("finish", 1, 1, m->arg);
	event_active(m->ev_done, EV_TIMEOUT, 0);
}

/* `leaving` is told to exit; the survivor has been told to accept. We report
 * once the leaving process is gone (total_ms includes that). */
static void migration_finish(struct migration *m, struct worker *survivor,
			     struct worker *leaving)
{
	/* A dead source's custody not restored: its copies of the sockets
	 * close now, before the survivor restarts those sessions (the
	 * network must not see the old connection beside the new one). */
	custody_free(m->s_custody);
	m->s_custody = NULL;
	m->survivor = survivor;
	if (survivor != NULL)
		worker_set_role(survivor, "active");
	/* With sessions lost, the survivor restarts them only once the leaving
	 * worker (which may still hold their connections) is gone, so the
	 * network never sees the same user twice. */
	if (!m->res.sessions_lost || leaving == NULL)
		migration_survivor_accept(m);
	m->phase = PHASE_FINISH;
	m->leaving = leaving;
	if (leaving == NULL) {
		migration_complete(m);
		return;
	}
	worker_stop(leaving, m->p.timeout_s);
	/* worker_stop SIGKILLs after timeout_s; this is only a backstop. */
	migration_set_deadline(m, m->p.timeout_s + 5);
}

static void migration_abort_to_source(struct migration *m)
{
	m->res.committed = false;
	log_warn("migration", "aborted: %s", m->res.reason);
	migration_finish(m, m->s, m->t);
}

static void migration_refuse(struct migration *m, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void migration_refuse(struct migration *m, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(m->res.reason, sizeof(m->res.reason), fmt, ap);
	va_end(ap);
	m->res.refused = true;
	m->res.committed = false;
	log_warn("migration", "refused: %s", m->res.reason);
	/* S was never touched: it keeps serving without any message. */
	m->phase = PHASE_FINISH;
	m->survivor = m->s;
	m->leaving = m->t;
	if (m->t == NULL) {
		migration_complete(m);
		return;
	}
	/* T holds nothing of S's, so it gets no long grace. One that answered
	 * READY (failed preflight, other schema) is told to EXIT and killed
	 * after REFUSE_GRACE_S; one that did not answer (hung at start, or S
	 * died first) is killed now. The result still waits for T's exit, so
	 * a refusal leaves no stray worker, but after SIGKILL that is a matter
	 * of milliseconds: a hung target is refused within timeout_s.
	 * (Bug: worker_stop(T, timeout_s) here let a target that hung before
	 * READY take another timeout_s to die, and the refusal with it: 20 s
	 * for a 10 s handoff_timeout.) */
	if (worker_is_ready(m->t))
		worker_stop(m->t, REFUSE_GRACE_S);
	else
		worker_kill(m->t);
	/* Backstop only (a process that SIGKILL cannot end: D state). */
	migration_set_deadline(m, REFUSE_GRACE_S + 3);
}

/* Hand both ends of a fresh channel out: the receiver first, so it is
 * listening before the source starts sending. */
static int migration_launch(struct migration *m, struct worker *src,
			    struct worker *dst)
{
	int ch[2] = { -1, -1 };
	unsigned timeout_ms = (unsigned)m->p.timeout_s * 1000u;
	int r;

	memset(&m->rs, 0, sizeof(m->rs));
	memset(&m->rt, 0, sizeof(m->rt));
	r = frame_socketpair(ch);
	if (r < 0)
		goto out;
	r = worker_send_migrate(dst, false, worker_pid(src), -1, timeout_ms, 0,
				ch[0]);
	if (r < 0)
		goto out;
	/* The source gets the receiver's pidfd too: if it must kill the
	 * receiver before resuming, it waits on that (we may have reaped the
	 * pid already, and it may be recycled). */
	worker_set_write_schema(src, dst);
	r = worker_send_migrate(src, true, worker_pid(dst), worker_pidfd(dst),
				timeout_ms, m->p.chunk_sessions, ch[1]);
out:
	/* Borrowed by the sends: each worker now holds its own copy. */
	if (ch[0] >= 0)
		close(ch[0]);
	if (ch[1] >= 0)
		close(ch[1]);
	return r;
}

static int migration_deadline_s(const struct migration *m)
{
	int s = m->p.timeout_s * 6;

	return s < 30 ? 30 : s;
}

static void migration_on_target_ready(struct migration *m)
{
	const Baton__Control__Ready *rs = worker_ready_info(m->s);
	const Baton__Control__Ready *rt = worker_ready_info(m->t);
	int r;

	snprintf(m->res.to.version, sizeof(m->res.to.version), "%s",
		 rt->version);
	if (m->progress)
		m->progress("ready", 1, 1, m->arg);
	if (!rt->preflight_ok) {
		char list[768] = "";

		for (size_t i = 0; i < rt->n_problems; i++) {
			size_t len = strlen(list);

			snprintf(list + len, sizeof(list) - len, "%s%s",
				 i ? "; " : "", rt->problems[i]);
		}
		migration_refuse(m, "target failed preflight: %s",
				 rt->n_problems ? list : "(no details)");
		return;
	}
	if (rs == NULL || rt->schema_min > rs->schema_max ||
	    rs->schema_min > rt->schema_max) {
		migration_refuse(m, "incompatible state schema: source %u-%u, target %u-%u",
				 rs ? rs->schema_min : 0, rs ? rs->schema_max : 0,
				 rt->schema_min, rt->schema_max);
		return;
	}
	if (m->target_check != NULL) {
		char why[sizeof(m->res.reason)] = "";

		if (m->target_check(m->t, why, sizeof(why), m->target_check_arg) < 0) {
			migration_refuse(m, "%s", why[0] ? why : "refused by the release check");
			return;
		}
	}

	r = worker_send_listeners(m->t, listeners_fds(m->p.listeners),
				  listeners_names(m->p.listeners),
				  listeners_count(m->p.listeners));
	if (r < 0) {
		migration_refuse(m, "cannot send listeners to the target: %s",
				 strerror(-r));
		return;
	}
	/* From here on S is involved: every exit path ends in ACCEPT on for
	 * whichever worker serves afterwards. */
	m->phase = PHASE_FORWARD;
	worker_set_role(m->s, "source");
	if (worker_send_accept(m->s, false) < 0)
		log_warn("migration", "ACCEPT off to the source failed");
	r = migration_launch(m, m->s, m->t);
	if (r < 0) {
		migration_reason(m, "cannot start the migration: %s",
				 strerror(-r));
		/* The target may hold one channel end; it aborts on EOF. */
		migration_abort_to_source(m);
		return;
	}
	log_info("migration", "migrating pid %d -> pid %d",
		 (int)worker_pid(m->s), (int)worker_pid(m->t));
	migration_set_deadline(m, migration_deadline_s(m));
}

static void migration_start_reverse(struct migration *m)
{
	int r;

	log_warn("migration", "%s; %u chunk(s) already committed: moving them back (pid %d -> pid %d)",
		 m->res.reason,
		 m->rt.chunks_committed > m->rs.chunks_committed ? m->rt.chunks_committed
								 : m->rs.chunks_committed,
		 (int)worker_pid(m->t),
		 (int)worker_pid(m->s));
	m->phase = PHASE_REVERSE;
	m->waiting_target = false;
	m->reverse_chunks = m->rt.chunks_committed > m->rs.chunks_committed
				    ? m->rt.chunks_committed : m->rs.chunks_committed;
	worker_set_role(m->t, "source");
	worker_set_role(m->s, "target");
	r = migration_launch(m, m->t, m->s);
	if (r < 0) {
		migration_reason(m, "reverse migration could not start: %s",
				 strerror(-r));
		migration_abort_to_source(m);
		return;
	}
	if (m->progress)
		m->progress("reverse", 0, 0, m->arg);
	migration_set_deadline(m, migration_deadline_s(m));
}

static void migration_evaluate_forward(struct migration *m)
{
	if (m->s == NULL && m->t == NULL) {
		migration_reason(m, "source (%s) and target (%s) both exited during the migration",
				 m->s_exit, m->t_exit);
		m->res.committed = false;
		migration_finish(m, NULL, NULL);
		return;
	}
	if (m->s == NULL) {
		/* S died: a target holding PREPARED commits on its own (S never
		 * resumed, see docs/design.md §2); it is all that is left. */
		if (!m->rt.have)
			return;
		m->fwd_s = m->rt; /* S never reported: T's counts are all we have */
		/* T holds the chunks it committed, whether it then saw EOF
		 * idle, mid-chunk (aborted) or in PREPARED (committed on its
		 * own); the chunks S never sent died with S. */
		migration_source_died(m, m->rt.sessions, "migration");
		return;
	}
	if (m->t == NULL) {
		/* T died: S notices the channel close, aborts and resumes. */
		if (!m->rs.have)
			return;
		m->fwd_s = m->rs;
		migration_reason(m, "target exited during the migration (%s)",
				 m->t_exit);
		if (!m->rs.committed && m->rs.reason[0])
			migration_reason(m, "source: %s", m->rs.reason);
		if (m->rs.chunks_committed > 0 || m->rs.committed) {
			log_error("migration", "%u chunk(s) (%u sessions) already committed to the dead target are lost",
				  m->rs.chunks_committed, m->rs.sessions);
			migration_lost(m, m->rs.sessions);
		}
		migration_abort_to_source(m);
		return;
	}
	if (m->rs.have && !m->rs.committed && m->rs.chunks_committed == 0 &&
	    !(m->rt.have && m->rt.chunks_committed > 0)) {
		/* S aborted its first chunk and, as the protocol requires, sent
		 * ABORT before saying so: T holds nothing and never commits on
		 * its own. No need to wait for T (it may be hung). */
		m->fwd_s = m->rs;
		migration_reason(m, "%s", m->rs.reason[0] ? m->rs.reason
							   : "source aborted");
		migration_abort_to_source(m);
		return;
	}
	if (m->rs.have && !m->rt.have && !m->waiting_target) {
		/* T's result normally follows at once; do not wait for the
		 * overall deadline if it hangs. */
		m->waiting_target = true;
		migration_set_deadline(m, m->p.timeout_s + 1);
	}
	if (!m->rs.have || !m->rt.have)
		return;
	m->fwd_s = m->rs;
	if (m->rs.committed && m->rt.committed) {
		m->res.committed = true;
		log_info("migration", "committed: %u sessions, %u connections, %u fds, freeze %.1f ms",
			 m->rs.sessions, m->rs.connections, m->rs.fds,
			 m->rs.freeze_max_ms);
		migration_finish(m, m->t, m->s);
		return;
	}
	if (!m->rs.committed)
		migration_reason(m, "%s", m->rs.reason[0] ? m->rs.reason
							   : "source aborted");
	else
		migration_reason(m, "target: %s", m->rt.reason[0] ? m->rt.reason
								  : "target aborted");
	if (m->rt.chunks_committed > 0 || m->rs.chunks_committed > 0) {
		migration_start_reverse(m);
		return;
	}
	migration_abort_to_source(m);
}

/* Reverse direction: src = T, dst = S. */
static void migration_evaluate_reverse(struct migration *m)
{
	if (m->s == NULL && m->t == NULL) {
		migration_reason(m, "source (%s) and target (%s) both exited during the reverse migration",
				 m->s_exit, m->t_exit);
		migration_finish(m, NULL, NULL);
		return;
	}
	if (m->s == NULL) {
		/* S is gone; T holds what it committed forward minus what it
		 * moved back (its result as the reverse source), and starts
		 * the rest: everything S held died with it. */
		unsigned fwd = m->fwd_s.sessions, back;

		if (!m->rt.have)
			return;
		back = m->rt.sessions < fwd ? m->rt.sessions : fwd;
		migration_source_died(m, fwd - back, "reverse migration");
		return;
	}
	if (m->t == NULL) {
		if (!m->rs.have)
			return;
		migration_reason(m, "target exited during the reverse migration (%s)",
				 m->t_exit);
		/* S got back what it committed as the receiver. */
		if (!m->rs.committed)
			migration_lost(m, m->fwd_s.sessions > m->rs.sessions
						  ? m->fwd_s.sessions - m->rs.sessions : 0);
		migration_abort_to_source(m);
		return;
	}
	if (m->rt.have && !m->rs.have && !m->waiting_target) {
		m->waiting_target = true; /* here: waiting for S, the receiver */
		migration_set_deadline(m, m->p.timeout_s + 1);
	}
	if (!m->rs.have || !m->rt.have)
		return;
	if (!(m->rt.committed && m->rs.committed)) {
		migration_reason(m, "reverse migration failed: %s",
				 !m->rt.committed ? m->rt.reason : m->rs.reason);
		log_error("migration", "reverse migration failed; sessions left in pid %d are closed with it",
			  (int)worker_pid(m->t));
		migration_lost(m, m->fwd_s.sessions > m->rs.sessions
					  ? m->fwd_s.sessions - m->rs.sessions : 0);
	} else {
		migration_reason(m, "the %u chunk(s) already committed were moved back to the source",
				 m->reverse_chunks);
	}
	migration_abort_to_source(m);
}

static void migration_evaluate(struct migration *m)
{
	switch (m->phase) {
	case PHASE_FORWARD:
		migration_evaluate_forward(m);
		break;
	case PHASE_REVERSE:
		migration_evaluate_reverse(m);
		break;
	default:
		break;
	}
}

static void migration_on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct migration *m = arg;

	switch (m->phase) {
	case PHASE_WAIT_READY:
		migration_refuse(m, "target not READY after %d s", m->p.timeout_s);
		break;
	case PHASE_FORWARD:
	case PHASE_REVERSE:
		if (m->phase == PHASE_FORWARD && m->rs.have && m->rs.committed &&
		    m->t != NULL) {
			/* S gave everything away; T holds it all. */
			log_warn("migration", "target did not report; source committed everything: target takes over");
			m->fwd_s = m->rs;
			m->res.committed = true;
			migration_finish(m, m->t, m->s);
			break;
		}
		if (m->phase == PHASE_FORWARD && m->rs.have)
			m->fwd_s = m->rs;
		if (m->waiting_target && m->phase == PHASE_FORWARD && m->rs.have) {
			migration_reason(m, "%s", m->rs.committed ? "source committed"
				: (m->rs.reason[0] ? m->rs.reason : "source aborted"));
			migration_reason(m, "target did not report its result within %d s (hung?)",
					 m->p.timeout_s + 1);
			if (m->rs.chunks_committed > 0) {
				log_error("migration", "%u chunk(s) committed to the unresponsive target are lost",
					  m->rs.chunks_committed);
				migration_lost(m, m->rs.sessions);
			}
		} else {
			migration_reason(m, "%s timed out after %d s",
					 m->phase == PHASE_FORWARD ? "migration"
								   : "reverse migration",
					 migration_deadline_s(m));
			/* Unknown how much T holds (S has not reported):
			 * assume the worst. T is killed, and the survivor
			 * restarts what it lacks once T is gone. */
			if (m->phase == PHASE_REVERSE)
				migration_lost(m, m->fwd_s.sessions);
			else if (!m->rs.have || m->s == NULL)
				migration_lost(m, migration_source_sessions(m));
			else if (m->rs.chunks_committed > 0)
				migration_lost(m, m->rs.sessions);
		}
		/* Killing T makes a still frozen S abort and resume (the
		 * channel closes). */
		if (m->t)
			worker_kill(m->t);
		if (m->s == NULL) {
			migration_finish(m, NULL, m->t);
			break;
		}
		migration_abort_to_source(m);
		break;
	case PHASE_FINISH:
		if (m->leaving) {
			log_error("migration", "pid %d still not reaped: giving up waiting",
				  (int)worker_pid(m->leaving));
			worker_kill(m->leaving);
		}
		m->leaving = NULL;
		migration_complete(m);
		break;
	case PHASE_DONE:
		break;
	}
}

static void migration_store(struct side_result *sr,
			    const Baton__Control__MigrationResult *r)
{
	sr->have = true;
	sr->committed = r->committed;
	snprintf(sr->reason, sizeof(sr->reason), "%s", r->reason ? r->reason : "");
	sr->sessions = r->sessions;
	sr->connections = r->connections;
	sr->fds = r->fds;
	sr->chunks = r->chunks;
	sr->chunks_committed = r->chunks_committed;
	sr->handshakes_left = r->has_handshakes_left ? r->handshakes_left : 0;
	sr->shrunk[0] = r->has_shrunk_sessions ? r->shrunk_sessions : 0;
	sr->shrunk[1] = r->has_shrunk_lines ? r->shrunk_lines : 0;
	sr->shrunk[2] = r->has_shrunk_clients ? r->shrunk_clients : 0;
	sr->shrunk[3] = r->has_shrunk_member_lists ? r->shrunk_member_lists : 0;
	sr->state_bytes = r->has_state_bytes ? r->state_bytes : 0;
	sr->lines_in_store = r->has_backlog_lines_in_store ? r->backlog_lines_in_store : 0;
	sr->freeze_max_ms = r->freeze_max_ms;
	sr->freeze_split[0] = r->freeze_serialize_ms;
	sr->freeze_split[1] = r->freeze_prepare_ms;
	sr->freeze_split[2] = r->freeze_commit_ms;
}

static void migration_on_worker(struct worker *w, enum worker_event ev,
				const void *msg, void *arg)
{
	struct migration *m = arg;
	bool is_s = w == m->s, is_t = w == m->t;

	if (m->restore != NULL && is_t && ev == WORKER_RESULT) {
		migration_custody_restored(m, msg);
		return;
	}
	if (m->restore != NULL && is_t && ev == WORKER_PROGRESS)
		return;
	switch (ev) {
	case WORKER_EXITED:
		if (is_t && m->restore != NULL) {
			custody_restore_free(m->restore);
			m->restore = NULL;
		}
		if (is_s && m->s_custody == NULL)
			m->s_custody = worker_take_custody(w);
		if (is_s) {
			snprintf(m->s_exit, sizeof(m->s_exit), "%s",
				 worker_exit_status(w));
			m->s = NULL;
		}
		if (is_t) {
			snprintf(m->t_exit, sizeof(m->t_exit), "%s",
				 worker_exit_status(w));
			m->t = NULL;
		}
		if (w == m->survivor)
			m->survivor = NULL; /* the owner restarts a fresh one */
		if (m->phase == PHASE_WAIT_READY) {
			if (is_t)
				migration_refuse(m, "target exited before READY: %s",
						 m->t_exit);
			else if (is_s) {
				migration_refuse(m, "source exited before the migration started: %s",
						 m->s_exit);
				m->survivor = NULL;
			}
			return;
		}
		if (m->phase == PHASE_FINISH && w == m->leaving) {
			m->leaving = NULL;
			migration_complete(m);
			return;
		}
		if (m->phase == PHASE_FINISH && w != m->leaving)
			log_error("migration", "pid %d exited while finishing: %s",
				  (int)worker_pid(w), worker_exit_status(w));
		migration_evaluate(m);
		return;
	case WORKER_READY:
		if (is_t && m->phase == PHASE_WAIT_READY)
			migration_on_target_ready(m);
		return;
	case WORKER_PROGRESS: {
		const Baton__Control__Progress *p = msg;
		bool src = (m->phase == PHASE_FORWARD && is_s) ||
			   (m->phase == PHASE_REVERSE && is_t);

		if (p->has_source_sessions) {
			/* The source's announcement, not progress. */
			if (m->phase == PHASE_FORWARD && is_s &&
			    !m->s_sessions_known) {
				m->s_sessions = p->source_sessions;
				m->s_sessions_known = true;
			}
			return;
		}
		if (src && m->progress)
			m->progress(m->phase == PHASE_FORWARD ? "migrate" : "reverse",
				    p->items_done, p->items_total, m->arg);
		return;
	}
	case WORKER_RESULT:
		if (m->phase != PHASE_FORWARD && m->phase != PHASE_REVERSE) {
			log_warn("migration", "pid %d: MIGRATION_RESULT outside a migration (ignored)",
				 (int)worker_pid(w));
			return;
		}
		if (is_s)
			migration_store(&m->rs, msg);
		else if (is_t)
			migration_store(&m->rt, msg);
		log_info("migration", "pid %d (%s) result: %s%s%s",
			 (int)worker_pid(w), worker_role(w),
			 ((const Baton__Control__MigrationResult *)msg)->committed
				 ? "committed" : "aborted",
			 is_s ? (m->rs.reason[0] ? ": " : "") : (m->rt.reason[0] ? ": " : ""),
			 is_s ? m->rs.reason : m->rt.reason);
		migration_evaluate(m);
		return;
	}
}

struct migration *migration_start(struct event_base *base, struct worker *source,
				  struct worker *target,
				  const struct migration_params *params,
				  migration_progress_cb progress,
				  migration_done_cb done, void *arg)
{
	struct migration *m = calloc(1, sizeof(*m));

	if (m == NULL)
		return NULL;
	m->base = base;
	m->p = *params;
	m->progress = progress;
	m->done = done;
	m->arg = arg;
	m->s = source;
	m->t = target;
	m->phase = PHASE_WAIT_READY;
	m->ev_deadline = evtimer_new(base, migration_on_deadline, m);
	m->ev_done = event_new(base, -1, 0, migration_on_done, m);
	if (m->ev_deadline == NULL || m->ev_done == NULL) {
		migration_free(m);
		return NULL;
	}
	clock_gettime(CLOCK_MONOTONIC, &m->t0);
	{
		struct timespec rt;

		clock_gettime(CLOCK_REALTIME, &rt);
		m->res.started = (double)rt.tv_sec + (double)rt.tv_nsec / 1e9;
	}
	m->res.from.pid = worker_pid(source);
	snprintf(m->res.from.version, sizeof(m->res.from.version), "%s",
		 worker_version(source));
	snprintf(m->res.from.binary, sizeof(m->res.from.binary), "%s",
		 worker_binary(source));
	m->res.to.pid = worker_pid(target);
	snprintf(m->res.to.binary, sizeof(m->res.to.binary), "%s",
		 worker_binary(target));
	worker_set_role(target, "target");
	worker_set_handler(source, migration_on_worker, m);
	worker_set_handler(target, migration_on_worker, m);
	migration_set_deadline(m, m->p.timeout_s);
	if (worker_is_ready(target)) /* cannot happen for a fresh spawn */
		migration_on_target_ready(m);
	return m;
}

void migration_set_target_check(struct migration *m,
				 migration_target_check_cb cb, void *arg)
{
	m->target_check = cb;
	m->target_check_arg = arg;
}

const struct migration_result *migration_result_so_far(const struct migration *m)
{
	return &m->res;
}

void migration_free(struct migration *m)
{
	if (m == NULL)
		return;
	if (m->ev_deadline)
		event_free(m->ev_deadline);
	if (m->ev_done)
		event_free(m->ev_done);
	custody_restore_free(m->restore);
	custody_free(m->s_custody);
	strmap_free(m->restore_exclude);
	free(m);
}
