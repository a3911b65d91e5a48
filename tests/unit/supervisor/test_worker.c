/* Tests of supervisor/worker.c against a fake worker (this same binary,
 * re-executed with --worker): the control socket is fd 3, READY is parsed,
 * LISTENERS/ACCEPT/STATUS/EXIT round-trip, an exec failure and a failed
 * preflight surface as exit statuses, and a worker that drops its control
 * socket but does not exit is SIGKILLed. */
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
#include <unistd.h>

#include <event2/event.h>

#include "common/control.h"
#include "handoff/frame.h"
#include "supervisor/worker.h"

/* ---- the fake worker (FAKE_MODE: ok | preflight | drop) ---- */

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
	if (strcmp(mode, "drop") == 0) {
		close(fd);
		pause(); /* until SIGKILL */
		return 12;
	}
	for (;;) {
		struct handoff_msg m = { 0 };

		if (handoff_frame_recv(fd, &m, -1) < 0)
			return 13;
		if (m.type == CONTROL_LISTENERS && m.nfds != 1)
			return 14;
		if (m.type == CONTROL_STATUS_REQUEST) {
			Baton__Control__Status st = BATON__CONTROL__STATUS__INIT;

			st.sessions = 7;
			st.connections = 9;
			control_send(fd, CONTROL_STATUS, &st.base, NULL, 0, 1000);
		}
		if (m.type == CONTROL_EXIT) {
			handoff_msg_clear(&m);
			return 0;
		}
		handoff_msg_clear(&m);
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

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_exec_failure),
		cmocka_unit_test(test_failed_preflight),
		cmocka_unit_test(test_dropped_control_is_killed),
	};

	if (argc >= 4 && strcmp(argv[3], "--worker") == 0)
		return fake_worker();
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
