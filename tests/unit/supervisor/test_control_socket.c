/* Tests of supervisor/control_socket.c (no workers: status answers at once).
 *
 * Regressions:
 * - stale-socket cleanup unlinked the path on any connect failure and used a
 *   blocking connect: a live socket that does not accept (full backlog) was
 *   removed or hung startup; only ECONNREFUSED means stale now;
 * - on EMFILE the persistent accept event spun and logged without end; now
 *   accepting pauses for 1 s with one log line per pause;
 * - no cap on clients and no request deadline: now 64 at most (more are
 *   closed at once) and a request must arrive within 10 s. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/config.h"
#include "supervisor/control_socket.h"
#include "supervisor/listeners.h"
#include "supervisor/supervisor.h"

struct fixture {
	char dir[160], config[200], sock[200];
	struct event_base *base;
	struct supervisor *sup;
	struct control_socket *cs;
};

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

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	struct baton_config *cfg = NULL;
	struct config_problems problems = { 0 };
	struct listeners *l = NULL;
	char err[256];
	FILE *file;

	snprintf(f->dir, sizeof(f->dir), "%s/baton-test-cs.XXXXXX",
		 getenv("TMPDIR") && getenv("TMPDIR")[0] ? getenv("TMPDIR") : "/tmp");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->config, sizeof(f->config), "%s/baton.ini", f->dir);
	snprintf(f->sock, sizeof(f->sock), "%s/baton.sock", f->dir);
	file = fopen(f->config, "w");
	fprintf(file, "[listen]\nirc = 127.0.0.1:%d\n", free_port());
	fclose(file);
	assert_int_equal(config_load(f->config, &cfg, &problems), 0);
	assert_int_equal(listeners_bind(cfg, &l, err, sizeof(err)), 0);
	f->base = event_base_new();
	f->sup = supervisor_new(f->base, cfg, l, "/bin/false"); /* never started */
	assert_non_null(f->sup);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	control_socket_free(f->cs);
	supervisor_free(f->sup);
	event_base_free(f->base);
	unlink(f->sock);
	unlink(f->config);
	rmdir(f->dir);
	free(f);
	return 0;
}

static int unix_listener(const char *path, int backlog)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	strcpy(sa.sun_path, path);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(fd, backlog), 0);
	return fd;
}

static int unix_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

	strcpy(sa.sun_path, path);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -errno;
	}
	return fd;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Pump the loop for `s` seconds. */
static void pump(struct fixture *f, double s)
{
	struct timeval tv = { .tv_sec = (time_t)s,
			      .tv_usec = (suseconds_t)((s - (time_t)s) * 1e6) };

	event_base_loopexit(f->base, &tv);
	event_base_dispatch(f->base);
}

/* 1 reply line, 0 closed without one, -1 nothing yet. */
static int client_state(int fd)
{
	char buf[4096];
	ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);

	if (n > 0)
		return 1;
	if (n == 0)
		return 0;
	return errno == EAGAIN ? -1 : 0;
}

static void test_stale_socket_is_replaced(void **state)
{
	struct fixture *f = *state;
	char err[256];
	int fd = unix_listener(f->sock, 1);

	close(fd); /* the file stays: connect gives ECONNREFUSED */
	assert_int_equal(control_socket_probe(f->sock), 0);
	f->cs = control_socket_new(f->base, f->sup, f->sock, err, sizeof(err));
	assert_non_null(f->cs);
	assert_int_equal(control_socket_probe(f->sock), 1);
}

static void test_live_socket_is_kept(void **state)
{
	struct fixture *f = *state;
	struct stat st;
	char err[256];
	int lfd = unix_listener(f->sock, 0), c[8], n = 0;
	double t0;

	/* Fill its backlog: a connect to it would block. */
	while (n < 8 && (c[n] = unix_connect(f->sock)) >= 0)
		n++;
	t0 = now_s();
	f->cs = control_socket_new(f->base, f->sup, f->sock, err, sizeof(err));
	assert_null(f->cs);
	assert_int_equal(errno, EADDRINUSE);
	assert_true(now_s() - t0 < 1.0);
	assert_non_null(strstr(err, "is in use by a running supervisor"));
	assert_int_equal(lstat(f->sock, &st), 0); /* not removed */
	while (n > 0)
		close(c[--n]);
	close(lfd);
}

static void test_client_cap_and_request_deadline(void **state)
{
	struct fixture *f = *state;
	char err[256];
	int c[65], late, i;

	f->cs = control_socket_new(f->base, f->sup, f->sock, err, sizeof(err));
	assert_non_null(f->cs);
	for (i = 0; i < 65; i++) {
		c[i] = unix_connect(f->sock);
		assert_true(c[i] >= 0);
		pump(f, 0.01);
	}
	pump(f, 0.2);
	for (i = 0; i < 64; i++)
		assert_int_equal(client_state(c[i]), -1); /* waiting */
	assert_int_equal(client_state(c[64]), 0);    /* over the cap: closed */
	/* Silent for 10 s: all dropped, and the server accepts again. */
	pump(f, 10.5);
	for (i = 0; i < 64; i++) {
		assert_int_equal(client_state(c[i]), 0);
		close(c[i]);
	}
	close(c[64]);
	late = unix_connect(f->sock);
	assert_true(late >= 0);
	assert_int_equal(send(late, "{\"cmd\":\"status\"}\n", 17, MSG_NOSIGNAL), 17);
	pump(f, 0.3);
	assert_int_equal(client_state(late), 1);
	close(late);
}

static void test_emfile_pauses_accepting(void **state)
{
	struct fixture *f = *state;
	struct rlimit old, low;
	char err[256], logpath[200], *text = NULL;
	int c, saved_err, logfd, lines = 0, fds[256], nfds = 0;
	size_t cap = 0;
	FILE *log;

	f->cs = control_socket_new(f->base, f->sup, f->sock, err, sizeof(err));
	assert_non_null(f->cs);
	c = unix_connect(f->sock);
	assert_true(c >= 0);
	/* Log to a file for a while. */
	snprintf(logpath, sizeof(logpath), "%s/log", f->dir);
	logfd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	saved_err = dup(STDERR_FILENO);
	dup2(logfd, STDERR_FILENO);
	/* Use up every fd. */
	getrlimit(RLIMIT_NOFILE, &old);
	low = old;
	low.rlim_cur = 64;
	setrlimit(RLIMIT_NOFILE, &low);
	while (nfds < 256 && (fds[nfds] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0)
		nfds++;
	pump(f, 1.5);
	while (nfds > 0)
		close(fds[--nfds]);
	setrlimit(RLIMIT_NOFILE, &old);
	dup2(saved_err, STDERR_FILENO);
	close(saved_err);
	close(logfd);

	log = fopen(logpath, "r");
	assert_non_null(log);
	while (getline(&text, &cap, log) > 0)
		if (strstr(text, "not accepting control connections"))
			lines++;
	free(text);
	fclose(log);
	unlink(logpath);
	/* One line per 1 s pause (not one per loop iteration). */
	assert_true(lines >= 1 && lines <= 3);
	/* fds are back: the queued client is served. */
	assert_int_equal(send(c, "{\"cmd\":\"status\"}\n", 17, MSG_NOSIGNAL), 17);
	pump(f, 1.3);
	assert_int_equal(client_state(c), 1);
	close(c);
}

/* Read what the server replied until it closes (up to ~2 s). */
static void read_reply(struct fixture *f, int fd, char *out, size_t n)
{
	size_t len = 0;
	for (int i = 0; i < 200 && len + 1 < n; i++) {
		pump(f, 0.01);
		ssize_t r = recv(fd, out + len, n - 1 - len, MSG_DONTWAIT);
		if (r == 0)
			break;
		if (r > 0)
			len += (size_t)r;
	}
	out[len] = '\0';
}

/* Send n bytes while the server's loop runs (it reads as we write). */
static void send_pumped(struct fixture *f, int fd, const char *buf, size_t n)
{
	size_t off = 0;
	while (off < n) {
		ssize_t r = send(fd, buf + off, n - off, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (r > 0)
			off += (size_t)r;
		pump(f, 0.01);
	}
}

/* The request bound (CONTROL_MAX_REQUEST, 64 KiB) at the limit and past
 * it: a request line of exactly the bound is answered; one byte more
 * without its end gets "request longer than" and the connection closes. */
static void test_request_size_limit(void **state)
{
	struct fixture *f = *state;
	char err[256], reply[4096];
	enum { CONTROL_MAX_REQUEST = 64 * 1024 }; /* control_socket.h: Limits */
	static char req[CONTROL_MAX_REQUEST + 2];
	const char *cmd = "{\"cmd\":\"status\"}";

	f->cs = control_socket_new(f->base, f->sup, f->sock, err, sizeof(err));
	assert_non_null(f->cs);
	/* at the limit: JSON padded with spaces to the bound, then LF */
	memset(req, ' ', CONTROL_MAX_REQUEST);
	memcpy(req, cmd, strlen(cmd));
	req[CONTROL_MAX_REQUEST] = '\n';
	int fd = unix_connect(f->sock);
	send_pumped(f, fd, req, CONTROL_MAX_REQUEST + 1);
	read_reply(f, fd, reply, sizeof(reply));
	assert_non_null(strstr(reply, "\"result\""));
	assert_null(strstr(reply, "\"error\""));
	close(fd);

	/* past it: one byte more and no end of line */
	memset(req, 'x', CONTROL_MAX_REQUEST + 1);
	fd = unix_connect(f->sock);
	send_pumped(f, fd, req, CONTROL_MAX_REQUEST + 1);
	read_reply(f, fd, reply, sizeof(reply));
	assert_non_null(strstr(reply, "request longer than 65536 bytes"));
	close(fd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_stale_socket_is_replaced, setup, teardown),
		cmocka_unit_test_setup_teardown(test_live_socket_is_kept, setup, teardown),
		cmocka_unit_test_setup_teardown(test_client_cap_and_request_deadline, setup, teardown),
		cmocka_unit_test_setup_teardown(test_emfile_pauses_accepting, setup, teardown),
		cmocka_unit_test_setup_teardown(test_request_size_limit, setup, teardown),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
