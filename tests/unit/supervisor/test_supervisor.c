/* Tests of supervisor/supervisor.c's worker lifecycle against fake workers
 * (this same binary, re-executed with --worker).
 *
 * Regression: a worker that hung before READY, or reported preflight_ok =
 * false and stayed, was never killed (no READY deadline outside a
 * migration). Now it is stopped after handoff_timeout: a first worker ends
 * the supervisor with exit code 1, a restarted one is restarted again.
 * supervisor_leave() (systemctl restart) leaves a serving worker alive
 * (regression: every exit of the supervisor killed its workers) and stops
 * everything when none serves. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/config.h"
#include "common/control.h"
#include "control.pb-c.h"
#include "common/frame.h"
#include "supervisor/listeners.h"
#include "supervisor/supervisor.h"

/* ---- the fake worker (FAKE_MODE: hang | preflight_stay | crash_then_hang;
 * FAKE_COUNTER: a file counting the starts) ---- */

static unsigned fake_count_start(void)
{
	const char *path = getenv("FAKE_COUNTER");
	unsigned n = 0;
	FILE *f;

	if (path == NULL)
		return 1;
	f = fopen(path, "r");
	if (f) {
		if (fscanf(f, "%u", &n) != 1)
			n = 0;
		fclose(f);
	}
	n++;
	f = fopen(path, "w");
	if (f) {
		fprintf(f, "%u\n", n);
		fclose(f);
	}
	return n;
}

static int fake_ready(bool ok)
{
	Baton__Control__Ready r = BATON__CONTROL__READY__INIT;
	char *problems[] = { "state_dir not writable" };

	r.version = "fake-1";
	r.schema_min = 1;
	r.schema_max = 1;
	r.preflight_ok = ok;
	if (!ok) {
		r.n_problems = 1;
		r.problems = problems;
	}
	return control_send(CONTROL_FD, CONTROL_READY, &r.base, NULL, 0, 1000);
}

static int fake_worker(void)
{
	const char *mode = getenv("FAKE_MODE");
	unsigned n = fake_count_start();

	/* Ignores EXIT (never reads): only SIGKILL ends it. */
	if (strcmp(mode, "hang") == 0 ||
	    (strcmp(mode, "crash_then_hang") == 0 && n > 1)) {
		for (;;)
			pause();
	}
	if (strcmp(mode, "serve") == 0) {
		/* Serves until its control channel ends, then says how it
		 * ended (FAKE_COUNTER.eof: EOF, as an orphan sees it; a
		 * SIGKILL writes nothing). */
		char path[256];
		FILE *f;

		if (fake_ready(true) < 0)
			return 11;
		for (;;) {
			struct frame_msg m = { 0 };

			if (frame_recv(CONTROL_FD, &m, -1) < 0)
				break;
			frame_msg_clear(&m);
		}
		snprintf(path, sizeof(path), "%s.eof", getenv("FAKE_COUNTER"));
		f = fopen(path, "w");
		if (f)
			fclose(f);
		return 0;
	}
	if (strcmp(mode, "preflight_stay") == 0) {
		fake_ready(false);
		for (;;)
			pause();
	}
	/* crash_then_hang, first start: serve, then crash once ACCEPT on
	 * arrives. */
	if (fake_ready(true) < 0)
		return 11;
	for (;;) {
		struct frame_msg m = { 0 };

		if (frame_recv(CONTROL_FD, &m, -1) < 0)
			return 13;
		if (m.type == CONTROL_ACCEPT) {
			frame_msg_clear(&m);
			return 3;
		}
		frame_msg_clear(&m);
	}
}

/* ---- the test side ---- */

struct fixture {
	char dir[160], config[200], counter[200];
	struct event_base *base;
	struct supervisor *sup;
	struct event *sig, *ev_check;
	unsigned want_starts; /* > 0: shut down once this many starts */
	bool shut_down;
	/* leave: supervisor_leave() instead of supervisor_shutdown(), once
	 * the worker serves (leave_when_serving) or at want_starts */
	bool leave, leave_when_serving;
	int leave_rc;
	char leave_why[128];
};

static unsigned starts(const struct fixture *f)
{
	FILE *file = fopen(f->counter, "r");
	unsigned n = 0;

	if (file) {
		if (fscanf(file, "%u", &n) != 1)
			n = 0;
		fclose(file);
	}
	return n;
}

static void on_chld(evutil_socket_t sig, short what, void *arg)
{
	struct fixture *f = arg;

	supervisor_reap(f->sup);
}

static void on_check(evutil_socket_t fd, short what, void *arg)
{
	struct fixture *f = arg;

	if (f->leave_when_serving && !f->shut_down &&
	    supervisor_leave_refusal(f->sup) == NULL) {
		f->shut_down = true;
		f->leave_rc = supervisor_leave(f->sup);
		return;
	}
	if (f->want_starts && !f->shut_down && starts(f) >= f->want_starts) {
		const char *why = f->leave ? supervisor_leave_refusal(f->sup) : NULL;

		f->shut_down = true;
		snprintf(f->leave_why, sizeof(f->leave_why), "%s", why ? why : "");
		if (f->leave)
			f->leave_rc = supervisor_leave(f->sup);
		else
			supervisor_shutdown(f->sup);
	}
}

/* A loopback port nobody uses right now (the config refuses port 0). */
static int free_port(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port;

	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	port = ntohs(sa.sin_port);
	close(fd);
	return port;
}

/* Runs a supervisor with handoff_timeout = 1 on the fake worker until its
 * loop ends (or 20 s); returns its exit code. */
static int run_leave(struct fixture *f, const char *mode, unsigned want_starts,
		     bool leave, bool leave_when_serving);

static int run(struct fixture *f, const char *mode, unsigned want_starts)
{
	return run_leave(f, mode, want_starts, false, false);
}

static int run_leave(struct fixture *f, const char *mode, unsigned want_starts,
		     bool leave, bool leave_when_serving)
{
	struct baton_config *cfg = NULL;
	struct config_problems problems = { 0 };
	struct listeners *l = NULL;
	struct timeval guard = { .tv_sec = 20 }, tick = { .tv_usec = 50000 };
	char err[256];
	FILE *file;
	int rc;

	memset(f, 0, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "%s/baton-test-sup.XXXXXX",
		 getenv("TMPDIR") && getenv("TMPDIR")[0] ? getenv("TMPDIR") : "/tmp");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->config, sizeof(f->config), "%s/baton.ini", f->dir);
	snprintf(f->counter, sizeof(f->counter), "%s/starts", f->dir);
	file = fopen(f->config, "w");
	assert_non_null(file);
	fprintf(file, "[supervisor]\nhandoff_timeout = 1\nstate_dir = state\n"
		      "[listen]\nirc = 127.0.0.1:%d\n", free_port());
	fclose(file);
	setenv("FAKE_MODE", mode, 1);
	setenv("FAKE_COUNTER", f->counter, 1);
	f->want_starts = want_starts;
	f->leave = leave;
	f->leave_when_serving = leave_when_serving;

	rc = config_load(f->config, &cfg, &problems);
	for (size_t i = 0; i < problems.n; i++)
		print_error("config: %s\n", problems.msgs[i]);
	assert_int_equal(rc, 0);
	config_problems_clear(&problems);
	assert_int_equal(listeners_bind(cfg, &l, err, sizeof(err)), 0);
	f->base = event_base_new();
	f->sup = supervisor_new(f->base, cfg, l, "/proc/self/exe");
	assert_non_null(f->sup);
	f->sig = evsignal_new(f->base, SIGCHLD, on_chld, f);
	event_add(f->sig, NULL);
	f->ev_check = event_new(f->base, -1, EV_PERSIST, on_check, f);
	event_add(f->ev_check, &tick);
	assert_int_equal(supervisor_start(f->sup), 0);
	event_base_loopexit(f->base, &guard);
	event_base_dispatch(f->base);
	rc = supervisor_exit_code(f->sup);
	supervisor_free(f->sup); /* kills what is left, unless left serving */
	event_free(f->sig);
	event_free(f->ev_check);
	event_base_free(f->base);
	if (leave_when_serving) {
		/* The worker left serving sees its channel end and exits by
		 * itself (the fake one: a real one serves on, orphaned). */
		char eof[220];
		int status;
		pid_t p = 0;

		for (int i = 0; i < 200 && p == 0; i++) {
			p = waitpid(-1, &status, WNOHANG);
			if (p == 0)
				usleep(10000);
		}
		assert_true(p > 0);
		assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
		snprintf(eof, sizeof(eof), "%s.eof", f->counter);
		assert_int_equal(access(eof, F_OK), 0); /* EOF, not SIGKILL */
		unlink(eof);
	}
	unlink(f->counter);
	unlink(f->config);
	rmdir(f->dir);
	return rc;
}

static void test_first_worker_hangs_before_ready(void **state)
{
	struct fixture f;

	assert_int_equal(run(&f, "hang", 0), 1);
}

static void test_first_worker_fails_preflight_and_stays(void **state)
{
	struct fixture f;

	assert_int_equal(run(&f, "preflight_stay", 0), 1);
}

static void test_restarted_worker_hangs_before_ready(void **state)
{
	struct fixture f;

	/* 1 serves and crashes, 2 hangs and is killed, 3 is its restart. */
	assert_int_equal(run(&f, "crash_then_hang", 3), 0);
	assert_true(f.shut_down);
}

/* systemctl restart (supervisor_leave): a serving worker is left serving,
 * not killed and not told to EXIT: it sees its control channel end (as
 * an orphan does) and the supervisor's loop ends at once. */
static void test_leave_keeps_serving_worker(void **state)
{
	struct fixture f;

	assert_int_equal(run_leave(&f, "serve", 0, true, true), 0);
	assert_true(f.shut_down);
	assert_int_equal(f.leave_rc, 0);
}

/* A worker that is not serving (hangs before READY) cannot be left to a
 * next supervisor: supervisor_leave() says why, returns -EBUSY and stops
 * everything as supervisor_shutdown() does (the hung worker is killed
 * after handoff_timeout; run() reaps it). */
static void test_leave_refused_without_serving_worker(void **state)
{
	struct fixture f;

	run_leave(&f, "hang", 1, true, false);
	assert_true(f.shut_down);
	assert_int_equal(f.leave_rc, -EBUSY);
	assert_string_equal(f.leave_why, "no worker is serving");
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_first_worker_hangs_before_ready),
		cmocka_unit_test(test_first_worker_fails_preflight_and_stays),
		cmocka_unit_test(test_restarted_worker_hangs_before_ready),
		cmocka_unit_test(test_leave_keeps_serving_worker),
		cmocka_unit_test(test_leave_refused_without_serving_worker),
	};

	if (argc >= 4 && strcmp(argv[3], "--worker") == 0)
		return fake_worker();
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
