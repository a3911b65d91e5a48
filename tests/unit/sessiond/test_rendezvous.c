/* tests/unit/sessiond/test_rendezvous.c: the worker's rendezvous socket
 * (sessiond/rendezvous.h) against hostile local peers: garbage frames,
 * ADOPT with the wrong number of fds, a slow sender, a peer while not
 * orphaned, and fd exhaustion (the accept must not spin the loop). No fd
 * may leak on any path. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/control.h"
#include "common/frame.h"
#include "sessiond/rendezvous.h"

struct fx {
	struct event_base *base;
	struct rendezvous *r;
	char dir[256];
	bool orphaned;
	int adopted; /* fds handed to the adopt callback */
	int adopted_fd;
	int baseline_fds;
};

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	assert_non_null(d);
	while ((e = readdir(d)) != NULL)
		n += e->d_name[0] != '.';
	closedir(d);
	return n - 1; /* the DIR's own */
}

static bool is_orphaned(void *arg)
{
	return ((struct fx *)arg)->orphaned;
}

static void on_adopt(void *arg, int fd)
{
	struct fx *f = arg;

	f->adopted++;
	f->adopted_fd = fd;
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	const char *tmp = getenv("TMPDIR");
	int err = 0;

	snprintf(f->dir, sizeof(f->dir), "%s/baton-rv-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
	assert_non_null(mkdtemp(f->dir));
	f->baseline_fds = count_fds();
	f->base = event_base_new();
	f->r = rendezvous_new(f->base, f->dir, is_orphaned, on_adopt, f, &err);
	assert_non_null(f->r);
	f->adopted_fd = -1;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	if (f->adopted_fd >= 0)
		close(f->adopted_fd);
	rendezvous_free(f->r);
	event_base_free(f->base);
	assert_int_equal(count_fds(), f->baseline_fds);
	rmdir(f->dir);
	free(f);
	return 0;
}

static int connect_rv(struct fx *f)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int c = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

	assert_true(c >= 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", rendezvous_path(f->r));
	assert_int_equal(connect(c, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return c;
}

static void pump(struct fx *f, int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	event_base_loopexit(f->base, &tv);
	event_base_dispatch(f->base);
}

/* The peer sees its connection closed (EOF). */
static bool closed_by_worker(int c)
{
	char b[64];
	ssize_t n = recv(c, b, sizeof(b), MSG_DONTWAIT);

	return n == 0;
}

static void test_refused_while_supervised(void **state)
{
	struct fx *f = *state;
	int c = connect_rv(f);

	pump(f, 50);
	assert_true(closed_by_worker(c));
	close(c);
	assert_int_equal(f->adopted, 0);
}

static void test_garbage_and_wrong_fds(void **state)
{
	struct fx *f = *state;
	int sv[2], c;

	f->orphaned = true;
	/* not a frame */
	c = connect_rv(f);
	assert_int_equal(send(c, "hello", 5, 0), 5);
	pump(f, 50);
	assert_true(closed_by_worker(c));
	close(c);
	/* a frame of another type, with an fd */
	c = connect_rv(f);
	assert_int_equal(frame_socketpair(sv), 0);
	assert_int_equal(frame_send(c, CONTROL_EXIT, "", 0, &sv[1], 1, 1000), 0);
	pump(f, 50);
	assert_true(closed_by_worker(c));
	close(c);
	close(sv[1]);
	close(sv[0]);
	/* ADOPT with two fds */
	c = connect_rv(f);
	assert_int_equal(frame_socketpair(sv), 0);
	assert_int_equal(frame_send(c, CONTROL_ADOPT, "", 0, sv, 2, 1000), 0);
	pump(f, 50);
	assert_true(closed_by_worker(c));
	close(c);
	close(sv[0]);
	close(sv[1]);
	assert_int_equal(f->adopted, 0);
	/* then a real one is still served */
	c = connect_rv(f);
	assert_int_equal(frame_socketpair(sv), 0);
	assert_int_equal(frame_send(c, CONTROL_ADOPT, "", 0, &sv[1], 1, 1000), 0);
	close(sv[1]);
	pump(f, 50);
	assert_int_equal(f->adopted, 1);
	close(c);
	close(sv[0]);
}

static void test_slow_sender_times_out(void **state)
{
	struct fx *f = *state;
	int c, c2, sv[2];

	f->orphaned = true;
	c = connect_rv(f);
	pump(f, 50);
	/* a second one while the first is read: closed */
	c2 = connect_rv(f);
	pump(f, 50);
	assert_true(closed_by_worker(c2));
	close(c2);
	pump(f, RENDEZVOUS_TIMEOUT_MS + 200);
	assert_true(closed_by_worker(c));
	close(c);
	/* free again */
	c = connect_rv(f);
	assert_int_equal(frame_socketpair(sv), 0);
	assert_int_equal(frame_send(c, CONTROL_ADOPT, "", 0, &sv[1], 1, 1000), 0);
	close(sv[1]);
	pump(f, 50);
	assert_int_equal(f->adopted, 1);
	close(c);
	close(sv[0]);
}

static double cpu_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Out of fds (a busy worker): a connection waiting on the rendezvous must
 * not make the loop spin on accept() failing with EMFILE. */
static void test_emfile_does_not_spin(void **state)
{
	struct fx *f = *state;
	struct rlimit old, low;
	int c = connect_rv(f);
	double t0;

	f->orphaned = true;
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
	low = old;
	low.rlim_cur = (rlim_t)count_fds() + 3; /* the DIR of count_fds() */
	/* take every fd left */
	int hold[16], nh = 0;

	assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
	while (nh < 16 && (hold[nh] = dup(0)) >= 0)
		nh++;
	assert_true(nh < 16);
	t0 = cpu_s();
	pump(f, 300);
	double used = cpu_s() - t0;

	while (nh > 0)
		close(hold[--nh]);
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
	/* a spinning loop burns the whole 300 ms */
	assert_true(used < 0.1);
	/* fds again: the waiting connection is served */
	int sv[2];

	assert_int_equal(frame_socketpair(sv), 0);
	assert_int_equal(frame_send(c, CONTROL_ADOPT, "", 0, &sv[1], 1, 1000), 0);
	close(sv[1]);
	pump(f, RENDEZVOUS_PAUSE_MS + 200);
	assert_int_equal(f->adopted, 1);
	close(c);
	close(sv[0]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_refused_while_supervised, setup, teardown),
		cmocka_unit_test_setup_teardown(test_garbage_and_wrong_fds, setup, teardown),
		cmocka_unit_test_setup_teardown(test_slow_sender_times_out, setup, teardown),
		cmocka_unit_test_setup_teardown(test_emfile_does_not_spin, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
