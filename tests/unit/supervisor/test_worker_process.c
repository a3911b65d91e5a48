/* Tests of supervisor/worker_process.c against a fake worker (this same binary,
 * re-executed with --worker): the control socket is fd 3, READY is parsed,
 * LISTENERS/ACCEPT/STATUS/EXIT round-trip, an exec failure and a failed
 * preflight surface as exit statuses, and a worker that drops its control
 * socket but does not exit is SIGKILLed. Regressions: the worker's pidfd and
 * MIGRATE's fd list, one outstanding STATUS_REQUEST, non-blocking status
 * sends, a worker freed by a handler inside worker_reaped(). HEALTH: one
 * outstanding HEALTH_REQUEST shared by its waiters, the answer stored and
 * shown to the tap, a worker that never answers asked only once. RELOAD:
 * one answer per request, in order, cancelled ones dropped. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/control.h"
#include "common/frame.h"
#include "supervisor/worker_process.h"

/* ---- the fake worker (FAKE_MODE: ok | preflight | drop | count | deaf |
 * exit | nohealth) ---- */

/* The pid a pidfd refers to (from /proc/self/fdinfo), or -1. */
static long pidfd_pid(int fd)
{
	char path[64], line[256];
	long pid = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	f = fopen(path, "r");
	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, "Pid:", 4) == 0)
			pid = strtol(line + 4, NULL, 10);
	fclose(f);
	return pid;
}

/* What the last MIGRATE carried, reported by the next STATUS: sessions =
 * 100 + number of fds, connections = the pid fd[1] is a pidfd of (0 if
 * none). */
static bool fake_migrated;
static uint32_t fake_migrate_nfds, fake_migrate_pid;

static void fake_note_migrate(struct frame_msg *m)
{
	fake_migrated = true;
	fake_migrate_nfds = (uint32_t)m->nfds;
	fake_migrate_pid = m->nfds >= 2 && pidfd_pid(m->fds[1]) > 0
				   ? (uint32_t)pidfd_pid(m->fds[1]) : 0;
}

static uint32_t fake_edit_id, fake_edit_ok;

static int fake_worker(void)
{
	const char *mode = getenv("FAKE_MODE");
	Baton__Control__Ready r = BATON__CONTROL__READY__INIT;
	char *problems[] = { "RLIMIT_NOFILE too low" };
	int fd = CONTROL_FD;

	/* fd 3 must be the only fd inherited without CLOEXEC. */
	if (fcntl(fd, F_GETFD) & FD_CLOEXEC)
		return 10;
	r.version = "fake-1";
	r.schema_min = 1;
	r.schema_max = 1;
	r.has_pid = true;
	r.pid = (uint32_t)getpid();
	r.preflight_ok = strcmp(mode, "preflight") != 0;
	if (!r.preflight_ok) {
		r.n_problems = 1;
		r.problems = problems;
	}
	if (control_send(fd, CONTROL_READY, &r.base, NULL, 0, 1000) < 0)
		return 11;
	if (!r.preflight_ok)
		return 1;
	if (strcmp(mode, "exit") == 0)
		return 0; /* READY queued, then gone */
	if (strcmp(mode, "deaf") == 0) {
		pause(); /* never reads its control socket; until SIGKILL */
		return 12;
	}
	if (strcmp(mode, "drop") == 0) {
		close(fd);
		pause(); /* until SIGKILL */
		return 12;
	}
	if (strcmp(mode, "edit") == 0) {
		/* a user's edit, as sessiond/control_channel.c sends it */
		Baton__Control__NetworkEdit e = BATON__CONTROL__NETWORK_EDIT__INIT;
		char *pairs[] = { "nick=al" };

		e.id = 41;
		e.user = "alice";
		e.network = "libera";
		e.op = "add";
		e.n_pairs = 1;
		e.pairs = pairs;
		if (control_send(fd, CONTROL_NETWORK_EDIT, &e.base, NULL, 0, 1000) < 0)
			return 15;
	}
	for (;;) {
		struct frame_msg m = { 0 };

		if (frame_recv(fd, &m, -1) < 0)
			return 13;
		if (m.type == CONTROL_NETWORK_EDIT_RESULT) {
			Baton__Control__NetworkEditResult *er =
				baton__control__network_edit_result__unpack(NULL, m.len, m.data);

			/* told back through STATUS: sessions = id, connections =
			 * ok, plus 100 when the message says who refused */
			fake_edit_id = er ? (uint32_t)er->id : 0;
			fake_edit_ok = er && er->ok ? 1u : 0u;
			if (er && er->message && strstr(er->message, "takes no edits"))
				fake_edit_ok += 100;
			if (er)
				baton__control__network_edit_result__free_unpacked(er, NULL);
		}
		if (m.type == CONTROL_LISTENERS && m.nfds != 1)
			return 14;
		if (m.type == CONTROL_MIGRATE)
			fake_note_migrate(&m);
		if (m.type == CONTROL_STATUS_REQUEST) {
			Baton__Control__Status st = BATON__CONTROL__STATUS__INIT;
			static unsigned requests;

			requests++;
			st.sessions = 7;
			st.connections = 9;
			if (strcmp(mode, "edit") == 0) {
				st.sessions = fake_edit_id;
				st.connections = fake_edit_ok;
			}
			if (fake_migrated) {
				st.sessions = 100 + fake_migrate_nfds;
				st.connections = fake_migrate_pid;
				fake_migrated = false;
			}
			if (strcmp(mode, "count") == 0) {
				/* Answer late, so that requests could pile up,
				 * and say how many arrived. */
				usleep(200 * 1000);
				st.sessions = requests;
			}
			control_send(fd, CONTROL_STATUS, &st.base, NULL, 0, 1000);
		}
		if (m.type == CONTROL_HEALTH_REQUEST &&
		    strcmp(mode, "nohealth") != 0) {
			/* Health: sessions = how many requests arrived, and
			 * two observations in the 1 ms .. 2 ms bucket. */
			Baton__Control__Health h = BATON__CONTROL__HEALTH__INIT;
			uint64_t buckets[14] = { 0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2 };
			static unsigned health_requests;

			health_requests++;
			usleep(100 * 1000); /* so that requests could pile up */
			h.has_sessions = true;
			h.sessions = health_requests;
			h.n_relay_latency_buckets = 14;
			h.relay_latency_buckets = buckets;
			h.has_relay_latency_sum_s = true;
			h.relay_latency_sum_s = 0.003;
			control_send(fd, CONTROL_HEALTH, &h.base, NULL, 0, 1000);
		}
		if (m.type == CONTROL_RELOAD && strcmp(mode, "noreload") != 0) {
			/* one answer per RELOAD, saying which one it was */
			Baton__Control__ReloadResult rr =
				BATON__CONTROL__RELOAD_RESULT__INIT;
			static unsigned reloads;
			char text[32], *added[1] = { text };

			snprintf(text, sizeof(text), "reload %u", ++reloads);
			rr.applied = true;
			rr.n_added = 1;
			rr.added = added;
			control_send(fd, CONTROL_RELOAD_RESULT, &rr.base, NULL, 0, 1000);
		}
		if (m.type == CONTROL_EXIT) {
			frame_msg_clear(&m);
			return 0;
		}
		frame_msg_clear(&m);
	}
}

/* ---- the test side ---- */

struct fixture {
	struct event_base *base;
	struct worker *w;
	int listen_fds[2];
	bool ready, exited, status_ok;
	char exit_text[96];
};

static void on_chld(evutil_socket_t sig, short what, void *arg)
{
	struct fixture *f = arg;
	int st;

	if (f->w && waitpid(worker_pid(f->w), &st, WNOHANG) == worker_pid(f->w)) {
		worker_reaped(f->w, st);
		worker_free(f->w);
		f->w = NULL;
		event_base_loopexit(f->base, NULL);
	}
}

static void on_status(struct worker *w, const Baton__Control__Status *st, void *arg)
{
	struct fixture *f = arg;

	f->status_ok = st != NULL && st->sessions == 7 && st->connections == 9;
	worker_stop(w, 2);
}

static void on_worker(struct worker *w, enum worker_event ev, const void *msg,
		      void *arg)
{
	struct fixture *f = arg;
	const char *names[] = { "irc test" };

	if (ev == WORKER_READY) {
		const Baton__Control__Ready *r = msg;

		f->ready = true;
		if (!r->preflight_ok)
			return;
		if (getenv("FAKE_MODE") && strcmp(getenv("FAKE_MODE"), "drop") == 0)
			return;
		assert_int_equal(worker_send_listeners(w, &f->listen_fds[0], names, 1), 0);
		assert_int_equal(worker_send_accept(w, true), 0);
		assert_int_equal(worker_request_status(w, on_status, f), 0);
	} else if (ev == WORKER_EXITED) {
		f->exited = true;
		snprintf(f->exit_text, sizeof(f->exit_text), "%s", worker_exit_status(w));
	}
}

static void run(struct fixture *f, const char *binary, const char *mode)
{
	struct event *sig;
	struct timeval guard = { .tv_sec = 10 };
	int err = 0;

	memset(f, 0, sizeof(*f));
	setenv("FAKE_MODE", mode, 1);
	f->base = event_base_new();
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, f->listen_fds), 0);
	sig = evsignal_new(f->base, SIGCHLD, on_chld, f);
	event_add(sig, NULL);
	f->w = worker_spawn(f->base, binary, "/dev/null", false, 1, &err);
	assert_non_null(f->w);
	worker_set_handler(f->w, on_worker, f);
	event_base_loopexit(f->base, &guard);
	event_base_dispatch(f->base);
	assert_null(f->w); /* reaped before the guard */
	event_free(sig);
	event_base_free(f->base);
	close(f->listen_fds[0]);
	close(f->listen_fds[1]);
}

static void test_round_trip(void **state)
{
	struct fixture f;

	run(&f, "/proc/self/exe", "ok");
	assert_true(f.ready);
	assert_true(f.status_ok);
	assert_true(f.exited);
	assert_string_equal(f.exit_text, "exit status 0");
}

static void test_exec_failure(void **state)
{
	struct fixture f;

	run(&f, "/nonexistent/baton-sessiond", "ok");
	assert_false(f.ready);
	assert_string_equal(f.exit_text, "exit status 127");
}

static void test_failed_preflight(void **state)
{
	struct fixture f;

	run(&f, "/proc/self/exe", "preflight");
	assert_true(f.ready);
	assert_string_equal(f.exit_text, "exit status 1");
}

static void test_dropped_control_is_killed(void **state)
{
	struct fixture f;

	run(&f, "/proc/self/exe", "drop");
	assert_true(f.ready);
	assert_non_null(strstr(f.exit_text, "killed by signal 9"));
}

/* ---- a loop driven by hand, for the regressions ---- */

struct rig {
	struct event_base *base;
	struct event *sig;
	struct worker *w;
	bool ready;
	bool exited;
	int answers;
	uint32_t answer_sessions[8], answer_connections[8];
	bool answer_null[8];
	bool free_on_ready; /* the handler frees w on READY */
	char exit_text[96];
};

static void rig_on_chld(evutil_socket_t sig, short what, void *arg)
{
	struct rig *g = arg;
	int st;

	if (g->w && waitpid(worker_pid(g->w), &st, WNOHANG) == worker_pid(g->w)) {
		worker_reaped(g->w, st);
		worker_free(g->w);
		g->w = NULL;
		event_base_loopbreak(g->base);
	}
}

static void rig_on_worker(struct worker *w, enum worker_event ev,
			  const void *msg, void *arg)
{
	struct rig *g = arg;

	if (ev == WORKER_READY) {
		g->ready = true;
		if (g->free_on_ready)
			worker_free(w); /* deferred: we are inside its dispatch */
		event_base_loopbreak(g->base);
	} else if (ev == WORKER_EXITED) {
		g->exited = true;
		snprintf(g->exit_text, sizeof(g->exit_text), "%s",
			 worker_exit_status(w));
	}
}

static void rig_on_status(struct worker *w, const Baton__Control__Status *st,
			  void *arg)
{
	struct rig *g = arg;

	if (g->answers < 8) {
		g->answer_null[g->answers] = st == NULL;
		g->answer_sessions[g->answers] = st ? st->sessions : 0;
		g->answer_connections[g->answers] = st ? st->connections : 0;
	}
	g->answers++;
	event_base_loopbreak(g->base);
}

/* Runs the loop until a callback breaks it (or 10 s). */
static void rig_run(struct rig *g)
{
	struct timeval guard = { .tv_sec = 10 };

	event_base_loopexit(g->base, &guard);
	event_base_dispatch(g->base);
}

static void rig_start(struct rig *g, const char *mode)
{
	int err = 0;

	memset(g, 0, sizeof(*g));
	setenv("FAKE_MODE", mode, 1);
	g->base = event_base_new();
	g->sig = evsignal_new(g->base, SIGCHLD, rig_on_chld, g);
	event_add(g->sig, NULL);
	g->w = worker_spawn(g->base, "/proc/self/exe", "/dev/null", false, 1, &err);
	assert_non_null(g->w);
	worker_set_handler(g->w, rig_on_worker, g);
}

static void rig_wait_ready(struct rig *g)
{
	while (!g->ready && g->w != NULL)
		rig_run(g);
	assert_true(g->ready);
}

static void rig_finish(struct rig *g)
{
	if (g->w != NULL)
		worker_stop(g->w, 1);
	while (g->w != NULL)
		rig_run(g);
	event_free(g->sig);
	event_base_free(g->base);
}

/* Bug: the source opened pidfd_open(peer_pid) itself, possibly after the
 * supervisor reaped the target (a recycled pid). The supervisor now opens a
 * pidfd right after fork and MIGRATE{outgoing} carries [channel, pidfd]. */
static void test_pidfd_and_migrate_fds(void **state)
{
	struct rig g;
	int ch[2];

	rig_start(&g, "ok");
	assert_true(worker_pidfd(g.w) >= 0);
	assert_int_equal(pidfd_pid(worker_pidfd(g.w)), worker_pid(g.w));
	assert_true(fcntl(worker_pidfd(g.w), F_GETFD) & FD_CLOEXEC);
	rig_wait_ready(&g);
	assert_int_equal(frame_socketpair(ch), 0);

	/* Outgoing with a pidfd: [channel, pidfd], the pidfd naming the peer
	 * (here the worker itself stands in for the target). */
	assert_int_equal(worker_send_migrate(g.w, true, worker_pid(g.w),
					     worker_pidfd(g.w), 1000, 0, ch[0]), 0);
	assert_int_equal(worker_request_status(g.w, rig_on_status, &g), 0);
	while (g.answers < 1 && g.w)
		rig_run(&g);
	assert_int_equal(g.answer_sessions[0], 102);
	assert_int_equal(g.answer_connections[0], worker_pid(g.w));

	/* Outgoing without a pidfd (pidfd_open failed): channel only. */
	assert_int_equal(worker_send_migrate(g.w, true, worker_pid(g.w), -1,
					     1000, 0, ch[0]), 0);
	assert_int_equal(worker_request_status(g.w, rig_on_status, &g), 0);
	while (g.answers < 2 && g.w)
		rig_run(&g);
	assert_int_equal(g.answer_sessions[1], 101);

	/* Incoming: always the channel only. */
	assert_int_equal(worker_send_migrate(g.w, false, worker_pid(g.w),
					     worker_pidfd(g.w), 1000, 0, ch[0]), 0);
	assert_int_equal(worker_request_status(g.w, rig_on_status, &g), 0);
	while (g.answers < 3 && g.w)
		rig_run(&g);
	assert_int_equal(g.answer_sessions[2], 101);
	close(ch[0]);
	close(ch[1]);
	rig_finish(&g);
}

static void rig_on_status_b(struct worker *w, const Baton__Control__Status *st,
			    void *arg)
{
	rig_on_status(w, st, arg);
}

/* Bug: every status poll sent its own STATUS_REQUEST, without limit, to a
 * worker that may not read. Now at most one is outstanding and its answer
 * goes to every waiter. */
static void test_one_outstanding_status_request(void **state)
{
	struct rig g;
	char other;

	rig_start(&g, "count");
	rig_wait_ready(&g);
	assert_int_equal(worker_request_status(g.w, rig_on_status, &g), 0);
	assert_int_equal(worker_request_status(g.w, rig_on_status_b, &g), 0);
	assert_int_equal(worker_request_status(g.w, rig_on_status, &other), 0);
	/* The same (cb, arg) twice is one waiter. */
	assert_int_equal(worker_request_status(g.w, rig_on_status, &g), 0);
	worker_cancel_status(g.w, &other);
	while (g.answers < 2 && g.w)
		rig_run(&g);
	assert_int_equal(g.answers, 2);
	/* One request reached the worker; both waiters got its answer. */
	assert_int_equal(g.answer_sessions[0], 1);
	assert_int_equal(g.answer_sessions[1], 1);
	/* The next poll is a new request. */
	assert_int_equal(worker_request_status(g.w, rig_on_status, &g), 0);
	while (g.answers < 3 && g.w)
		rig_run(&g);
	assert_int_equal(g.answer_sessions[2], 2);
	rig_finish(&g);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Bug: a STATUS_REQUEST to a worker that does not read blocked the loop for
 * up to 1 s per request. Now it is sent without waiting: no answer. */
static void test_status_send_does_not_block(void **state)
{
	struct rig g;
	double t0;
	int r, n = 0;

	rig_start(&g, "deaf");
	rig_wait_ready(&g);
	/* Fill its control socket (the last ACCEPT waits its ~1 s). */
	while ((r = worker_send_accept(g.w, true)) == 0 && n < 1000000)
		n++;
	assert_int_equal(r, -ETIMEDOUT);
	t0 = now_s();
	r = worker_request_status(g.w, rig_on_status, &g);
	assert_int_equal(r, -ETIMEDOUT);
	assert_true(now_s() - t0 < 0.2);
	assert_int_equal(g.answers, 0); /* nothing registered */
	rig_finish(&g);
	assert_non_null(strstr(g.exit_text, "killed by signal 9"));
}

/* Bug: worker_reaped() handled the messages a dead worker left behind with
 * no dispatch guard, so a handler's worker_free() freed w at once and
 * worker_reaped() went on with freed memory. */
static void test_free_in_handler_during_reaped(void **state)
{
	struct rig g;
	int st;

	rig_start(&g, "exit");
	g.free_on_ready = true;
	/* Do not run the loop: READY is still queued when we reap. */
	assert_int_equal(waitpid(worker_pid(g.w), &st, 0), worker_pid(g.w));
	worker_reaped(g.w, st);
	assert_true(g.ready);
	assert_false(g.exited); /* its owner let go of it: no more events */
	worker_free(g.w);       /* the reaper's free completes the deferred one */
	g.w = NULL;
	rig_finish(&g);
}

struct health_rig {
	struct rig g;
	unsigned answers, taps, nulls;
	uint32_t last_sessions;
};

static void on_health(struct worker *w, const Baton__Control__Health *h,
		      void *arg)
{
	struct health_rig *hr = arg;

	hr->answers++;
	if (h == NULL)
		hr->nulls++;
	else
		hr->last_sessions = h->sessions;
	event_base_loopbreak(hr->g.base);
}

static void on_health_b(struct worker *w, const Baton__Control__Health *h,
			void *arg)
{
	on_health(w, h, arg);
}

static void on_health_tap(struct worker *w, const Baton__Control__Health *h,
			  void *arg)
{
	struct health_rig *hr = arg;

	/* The tap sees the same stored message, before the waiters. */
	assert_ptr_equal(h, worker_last_health(w));
	hr->taps++;
}

/* worker_request_health mirrors worker_request_status: one HEALTH_REQUEST
 * outstanding, its answer shared by every waiter, (cb, arg) once, cancel,
 * the answer kept (worker_last_health) and shown to the tap. */
static void test_health_request(void **state)
{
	struct health_rig hr;
	const Baton__Control__Health *h;
	char other;

	memset(&hr, 0, sizeof(hr));
	rig_start(&hr.g, "ok");
	rig_wait_ready(&hr.g);
	assert_null(worker_last_health(hr.g.w));
	worker_set_health_tap(hr.g.w, on_health_tap, &hr);
	assert_int_equal(worker_request_health(hr.g.w, on_health, &hr), 0);
	assert_int_equal(worker_request_health(hr.g.w, on_health_b, &hr), 0);
	assert_int_equal(worker_request_health(hr.g.w, on_health, &hr), 0);
	assert_int_equal(worker_request_health(hr.g.w, on_health, &other), 0);
	worker_cancel_health(hr.g.w, &other);
	while (hr.answers < 2 && hr.g.w)
		rig_run(&hr.g);
	assert_int_equal(hr.answers, 2);
	assert_int_equal(hr.nulls, 0);
	assert_int_equal(hr.taps, 1);
	assert_int_equal(hr.last_sessions, 1); /* one request reached it */
	h = worker_last_health(hr.g.w);
	assert_non_null(h);
	assert_int_equal(h->n_relay_latency_buckets, 14);
	assert_int_equal(h->relay_latency_buckets[13], 2);
	/* A status request is independent of the health one. */
	assert_int_equal(worker_request_status(hr.g.w, rig_on_status, &hr.g), 0);
	while (hr.g.answers < 1 && hr.g.w)
		rig_run(&hr.g);
	assert_true(worker_has_status(hr.g.w));
	/* The next poll is a new request; the stored answer is replaced. */
	assert_int_equal(worker_request_health(hr.g.w, on_health, &hr), 0);
	while (hr.answers < 3 && hr.g.w)
		rig_run(&hr.g);
	assert_int_equal(worker_last_health(hr.g.w)->sessions, 2);
	assert_int_equal(hr.taps, 2);
	rig_finish(&hr.g);
	/* Waiters left when the worker goes get NULL (none here). */
	assert_int_equal(hr.nulls, 0);
}

/* A worker that does not answer HEALTH_REQUEST (a build before it): it is
 * asked once; later polls only wait for that request; when it exits the
 * waiters get NULL, and no health was ever stored. */
static void test_health_never_answered(void **state)
{
	struct health_rig hr;

	memset(&hr, 0, sizeof(hr));
	rig_start(&hr.g, "nohealth");
	rig_wait_ready(&hr.g);
	assert_int_equal(worker_request_health(hr.g.w, on_health, &hr), 0);
	assert_int_equal(worker_request_health(hr.g.w, on_health, &hr), 0);
	/* STATUS still answers meanwhile. */
	assert_int_equal(worker_request_status(hr.g.w, rig_on_status, &hr.g), 0);
	while (hr.g.answers < 1 && hr.g.w)
		rig_run(&hr.g);
	assert_int_equal(hr.answers, 0);
	assert_null(worker_last_health(hr.g.w));
	rig_finish(&hr.g);
	assert_int_equal(hr.answers, 1);
	assert_int_equal(hr.nulls, 1);
}

struct reload_rig {
	struct rig g;
	char got[4][32]; /* by waiter: what its answer said ("" none, "NULL") */
	unsigned answers;
};

struct reload_waiter_arg {
	struct reload_rig *rr;
	int i;
};

static void on_reload(struct worker *w, const Baton__Control__ReloadResult *r,
		      void *arg)
{
	struct reload_waiter_arg *a = arg;

	snprintf(a->rr->got[a->i], sizeof(a->rr->got[a->i]), "%s",
		 r == NULL ? "NULL" : r->n_added == 1 ? r->added[0] : "?");
	a->rr->answers++;
	event_base_loopbreak(a->rr->g.base);
}

/* Each RELOAD gets its own RELOAD_RESULT, in order (unlike STATUS, whose
 * waiters share one answer): a cancelled waiter's answer is dropped, not
 * given to the next one; when the worker goes, waiters get NULL. */
static void test_reload_answers_in_order(void **state)
{
	struct reload_rig rr;
	struct reload_waiter_arg a[4];

	memset(&rr, 0, sizeof(rr));
	for (int i = 0; i < 4; i++)
		a[i] = (struct reload_waiter_arg){ .rr = &rr, .i = i };
	rig_start(&rr.g, "ok");
	rig_wait_ready(&rr.g);
	for (int i = 0; i < 3; i++)
		assert_int_equal(worker_request_reload(rr.g.w, on_reload, &a[i]), 0);
	worker_cancel_reload(rr.g.w, &a[1]);
	while (rr.answers < 2 && rr.g.w)
		rig_run(&rr.g);
	assert_string_equal(rr.got[0], "reload 1");
	assert_string_equal(rr.got[1], "");
	assert_string_equal(rr.got[2], "reload 3");
	rig_finish(&rr.g);

	/* a worker that never answers: NULL when it goes */
	memset(&rr, 0, sizeof(rr));
	rig_start(&rr.g, "noreload");
	rig_wait_ready(&rr.g);
	assert_int_equal(worker_request_reload(rr.g.w, on_reload, &a[3]), 0);
	rig_finish(&rr.g);
	assert_string_equal(rr.got[3], "NULL");
}

struct edit_seen {
	struct event_base *base;
	unsigned calls;
	uint64_t id;
	char text[160];
};

static void on_edit(struct worker *w, const Baton__Control__NetworkEdit *e, void *arg)
{
	struct edit_seen *seen = arg;

	seen->calls++;
	seen->id = e->id;
	snprintf(seen->text, sizeof(seen->text), "%s %s %s/%s %zu %s", e->op, e->user,
		 e->user, e->network, e->n_pairs, e->n_pairs ? e->pairs[0] : "");
	assert_int_equal(worker_send_network_edit_result(w, e->id, true, NULL), 0);
	event_base_loopbreak(seen->base);
}

/* A worker's NETWORK_EDIT reaches the one edit handler, whoever handles
 * the worker's other events, and its answer reaches the worker with the
 * same id; without a handler the edit is refused at once, never left
 * unanswered. */
static void test_network_edit(void **state)
{
	struct edit_seen seen = { 0 };
	struct rig g;

	worker_set_edit_handler(on_edit, &seen);
	rig_start(&g, "edit");
	seen.base = g.base;
	rig_wait_ready(&g);
	for (int i = 0; i < 2 && seen.calls == 0 && g.w; i++)
		rig_run(&g); /* bounded: an ignored edit fails, never hangs */
	assert_int_equal(seen.calls, 1);
	assert_int_equal(seen.id, 41);
	assert_string_equal(seen.text, "add alice alice/libera 1 nick=al");
	assert_int_equal(worker_request_status(g.w, rig_on_status, &g), 0);
	while (g.answers < 1 && g.w)
		rig_run(&g);
	assert_int_equal(g.answer_sessions[0], 41);
	assert_int_equal(g.answer_connections[0], 1);
	rig_finish(&g);

	worker_set_edit_handler(NULL, NULL);
	rig_start(&g, "edit");
	rig_wait_ready(&g);
	/* the edit may still be unread when READY is handled: ask until the
	 * fake worker has the answer (at most 8 times) */
	for (int i = 0; i < 8 && g.w && (i == 0 || g.answer_sessions[i - 1] != 41); i++) {
		assert_int_equal(worker_request_status(g.w, rig_on_status, &g), 0);
		while (g.answers < i + 1 && g.w)
			rig_run(&g);
		if (g.answer_sessions[i] != 41)
			usleep(20 * 1000);
	}
	assert_int_equal(g.answer_sessions[g.answers - 1], 41);
	assert_int_equal(g.answer_connections[g.answers - 1], 100); /* refused, said why */
	rig_finish(&g);
	worker_set_edit_handler(NULL, NULL);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_exec_failure),
		cmocka_unit_test(test_failed_preflight),
		cmocka_unit_test(test_dropped_control_is_killed),
		cmocka_unit_test(test_pidfd_and_migrate_fds),
		cmocka_unit_test(test_one_outstanding_status_request),
		cmocka_unit_test(test_status_send_does_not_block),
		cmocka_unit_test(test_free_in_handler_during_reaped),
		cmocka_unit_test(test_health_request),
		cmocka_unit_test(test_health_never_answered),
		cmocka_unit_test(test_reload_answers_in_order),
		cmocka_unit_test(test_network_edit),
	};

	if (argc >= 4 && strcmp(argv[3], "--worker") == 0)
		return fake_worker();
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
