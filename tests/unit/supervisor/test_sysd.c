/* Tests of supervisor/sysd.c (LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES parsing,
 * fd names, notify messages, sending through a real NOTIFY_SOCKET) and of
 * listeners_open()/listeners_store(): the fds systemd passes are matched to
 * the [listen] lines by kind and address, and every disagreement is an
 * error naming both sides. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-bus.h>

#include "common/config.h"
#include "supervisor/listeners.h"
#include "supervisor/sysd.h"

/* --- LISTEN_* parsing ------------------------------------------------------ */

static int parse(const char *pid, const char *fds, const char *names,
		 struct sysd_fds *out, char *err)
{
	return sysd_fds_parse(pid, fds, names, 1234, out, err, 256);
}

static void test_parse_unset_is_nothing(void **state)
{
	struct sysd_fds f;
	char err[256];

	assert_int_equal(parse(NULL, NULL, NULL, &f, err), 0);
	assert_int_equal(parse("1234", NULL, "irc", &f, err), 0);
	assert_int_equal(parse(NULL, "1", "irc", &f, err), 0);
	assert_int_equal(parse("1234", "0", NULL, &f, err), 0);
	assert_int_equal(f.n, 0);
	assert_null(f.fds);
}

static void test_parse_names(void **state)
{
	struct sysd_fds f;
	char err[256];

	assert_int_equal(parse("1234", "3", "irc:ircs:listen-irc-127.0.0.1-6667", &f, err), 3);
	assert_int_equal(f.n, 3);
	assert_int_equal(f.fds[0].fd, 3);
	assert_string_equal(f.fds[0].name, "irc");
	assert_int_equal(f.fds[1].fd, 4);
	assert_string_equal(f.fds[1].name, "ircs");
	assert_int_equal(f.fds[2].fd, 5);
	assert_string_equal(f.fds[2].name, "listen-irc-127.0.0.1-6667");
	free(f.fds);
	/* without LISTEN_FDNAMES, as systemd: "unknown" */
	assert_int_equal(parse("1234", "2", NULL, &f, err), 2);
	assert_string_equal(f.fds[1].name, "unknown");
	free(f.fds);
}

static void test_parse_pid_mismatch_ignored(void **state)
{
	struct sysd_fds f;
	char err[256];

	assert_int_equal(parse("1235", "2", "irc:irc", &f, err), 0);
	assert_int_equal(f.n, 0);
	assert_non_null(strstr(err, "LISTEN_PID=1235 is not this process (1234)"));
}

static void test_parse_bad_values(void **state)
{
	static const char *const bad_pid[] = { "", "0", "-1", "+5", " 1234",
		"1234 ", "12a", "0x10", "99999999999999999999" };
	static const char *const bad_fds[] = { "", "-1", "+1", "1 ", "x", "1.0",
		"0x1" };
	struct sysd_fds f;
	char err[256];

	for (size_t i = 0; i < sizeof(bad_pid) / sizeof(*bad_pid); i++) {
		assert_int_equal(parse(bad_pid[i], "1", "irc", &f, err), -EINVAL);
		assert_non_null(strstr(err, "LISTEN_PID="));
		assert_null(f.fds);
	}
	for (size_t i = 0; i < sizeof(bad_fds) / sizeof(*bad_fds); i++) {
		assert_int_equal(parse("1234", bad_fds[i], "irc", &f, err), -EINVAL);
		assert_non_null(strstr(err, "LISTEN_FDS="));
		assert_null(f.fds);
	}
}

static void test_parse_fd_count_bound(void **state)
{
	struct sysd_fds f;
	char err[256], n[32];

	/* at the bound: accepted (names unset) */
	snprintf(n, sizeof(n), "%d", SYSD_FDS_MAX);
	assert_int_equal(parse("1234", n, NULL, &f, err), SYSD_FDS_MAX);
	assert_int_equal(f.fds[SYSD_FDS_MAX - 1].fd, SYSD_FDS_START + SYSD_FDS_MAX - 1);
	free(f.fds);
	/* past it, and far past it (no overflow) */
	snprintf(n, sizeof(n), "%d", SYSD_FDS_MAX + 1);
	assert_int_equal(parse("1234", n, NULL, &f, err), -E2BIG);
	assert_non_null(strstr(err, "more than 4096 fds"));
	assert_int_equal(parse("1234", "184467440737095516160", NULL, &f, err), -E2BIG);
	assert_null(f.fds);
}

static void test_parse_name_count_mismatch(void **state)
{
	struct sysd_fds f;
	char err[256];

	assert_int_equal(parse("1234", "2", "irc", &f, err), -EINVAL);
	assert_non_null(strstr(err, "1 name(s) for LISTEN_FDS=2"));
	assert_int_equal(parse("1234", "1", "irc:ircs", &f, err), -EINVAL);
	assert_non_null(strstr(err, "more names than LISTEN_FDS=1"));
	assert_int_equal(parse("1234", "2", "irc:", &f, err), -EINVAL);
	assert_non_null(strstr(err, "name 2 is empty"));
	assert_int_equal(parse("1234", "1", "", &f, err), -EINVAL);
	assert_null(f.fds);
}

static void test_parse_name_bounds(void **state)
{
	struct sysd_fds f;
	char err[256], names[600];

	/* 255 characters: the longest name systemd sends */
	memset(names, 'a', 255);
	names[255] = '\0';
	assert_int_equal(parse("1234", "1", names, &f, err), 1);
	assert_int_equal(strlen(f.fds[0].name), 255);
	free(f.fds);
	memset(names, 'a', 256);
	names[256] = '\0';
	assert_int_equal(parse("1234", "1", names, &f, err), -EINVAL);
	assert_non_null(strstr(err, "longer than 255"));
	assert_int_equal(parse("1234", "1", "ir\tc", &f, err), -EINVAL);
	assert_non_null(strstr(err, "control or non-ASCII"));
	assert_int_equal(parse("1234", "1", "irc\x7f", &f, err), -EINVAL);
	assert_int_equal(parse("1234", "1", "ir\xc3\xa9", &f, err), -EINVAL);
}

static void test_take_unopened_fd(void **state)
{
	struct sysd_fds f;
	char err[256], pid[16];

	/* fd 3 + 999 is not open in this test */
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	setenv("LISTEN_PID", pid, 1);
	setenv("LISTEN_FDS", "1000", 1);
	unsetenv("LISTEN_FDNAMES");
	assert_int_equal(sysd_fds_take(&f, err, sizeof(err)), -EBADF);
	assert_non_null(strstr(err, "is not open"));
	/* the variables are gone either way (workers must not see them) */
	assert_null(getenv("LISTEN_PID"));
	assert_null(getenv("LISTEN_FDS"));
	for (size_t i = 0; i < f.n; i++)
		f.fds[i].fd = -1; /* not ours to close */
	sysd_fds_close_unused(&f);
}

/* --- names ----------------------------------------------------------------- */

static void test_fd_class(void **state)
{
	char kind[8];

	assert_int_equal(sysd_fd_class("irc", kind), SYSD_FD_SOCKET);
	assert_string_equal(kind, "irc");
	assert_int_equal(sysd_fd_class("ircs", kind), SYSD_FD_SOCKET);
	assert_string_equal(kind, "ircs");
	assert_int_equal(sysd_fd_class("listen-ircs-[..1]-6697", kind), SYSD_FD_LISTENER);
	assert_string_equal(kind, "ircs");
	assert_int_equal(sysd_fd_class("listen-irc-0.0.0.0-6667", kind), SYSD_FD_LISTENER);
	assert_string_equal(kind, "irc");
	assert_int_equal(sysd_fd_class("custody-7-client-3", kind), SYSD_FD_CUSTODY);
	assert_int_equal(sysd_fd_class("baton.socket", kind), SYSD_FD_UNKNOWN);
	assert_string_equal(kind, "");
	assert_int_equal(sysd_fd_class("ircx", NULL), SYSD_FD_UNKNOWN);
	assert_int_equal(sysd_fd_class("listen-x-1-2", NULL), SYSD_FD_UNKNOWN);
}

static void test_listener_fdname(void **state)
{
	char b[SYSD_FDNAME_MAX + 1];

	assert_int_equal(sysd_listener_fdname("irc 127.0.0.1:6667", b, sizeof(b)),
			 (int)strlen("listen-irc-127.0.0.1-6667"));
	assert_string_equal(b, "listen-irc-127.0.0.1-6667");
	assert_true(sysd_listener_fdname("ircs [::1]:6697", b, sizeof(b)) > 0);
	assert_string_equal(b, "listen-ircs-[..1]-6697"); /* no ':' in a name */
	assert_true(sysd_fdname_valid(b));
	assert_int_equal(sysd_fd_class(b, NULL), SYSD_FD_LISTENER);
	assert_int_equal(sysd_listener_fdname("irc127.0.0.1:1", b, sizeof(b)), -EINVAL);
	assert_int_equal(sysd_listener_fdname("tcp 127.0.0.1:1", b, sizeof(b)), -EINVAL);
	assert_int_equal(sysd_listener_fdname("irc 127.0.0.1", b, sizeof(b)), -EINVAL);
	assert_int_equal(sysd_listener_fdname("irc 127.0.0.1:", b, sizeof(b)), -EINVAL);
	/* exactly fits / one short */
	assert_int_equal(sysd_listener_fdname("irc 1.2.3.4:5", b, 21), 20);
	assert_int_equal(sysd_listener_fdname("irc 1.2.3.4:5", b, 20), -ENOSPC);
}

/* --- messages -------------------------------------------------------------- */

static void test_messages(void **state)
{
	char b[SYSD_MSG_MAX];

	assert_int_equal(sysd_msg_ready(b, sizeof(b), NULL), 7);
	assert_string_equal(b, "READY=1");
	sysd_msg_ready(b, sizeof(b), "worker pid 7 (0.1.0): 2 sessions");
	assert_string_equal(b, "READY=1\nSTATUS=worker pid 7 (0.1.0): 2 sessions");
	sysd_msg_reloading(b, sizeof(b), 123456789, "upgrade to /usr/bin/x running");
	assert_string_equal(b, "RELOADING=1\nMONOTONIC_USEC=123456789\nSTATUS=upgrade to /usr/bin/x running");
	assert_int_equal(sysd_msg_reloading(b, sizeof(b), 0, NULL), -EINVAL);
	sysd_msg_status(b, sizeof(b), "two\nlines\r");
	assert_string_equal(b, "STATUS=two lines ");
	sysd_msg_fdstore(b, sizeof(b), "listen-irc-0.0.0.0-6667");
	assert_string_equal(b, "FDSTORE=1\nFDNAME=listen-irc-0.0.0.0-6667");
	sysd_msg_fdstore_remove(b, sizeof(b), "custody-1");
	assert_string_equal(b, "FDSTOREREMOVE=1\nFDNAME=custody-1");
	assert_int_equal(sysd_msg_fdstore(b, sizeof(b), "a:b"), -EINVAL);
	assert_int_equal(sysd_msg_fdstore(b, sizeof(b), ""), -EINVAL);
	assert_int_equal(sysd_msg_watchdog(b, sizeof(b)), 10);
	assert_string_equal(b, "WATCHDOG=1");
	assert_int_equal(sysd_watchdog_interval_usec(30000000), 15000000);
	assert_int_equal(sysd_watchdog_interval_usec(0), 0);
}

static void test_message_bounds(void **state)
{
	char b[32];

	/* "STATUS=" + 24 + NUL (+ the newline the builder needs) */
	assert_int_equal(sysd_msg_status(b, sizeof(b), "abcdefghijklmnopqrstuvw"), 30);
	assert_int_equal(sysd_msg_status(b, sizeof(b), "abcdefghijklmnopqrstuvwx"), -ENOSPC);
	assert_int_equal(sysd_msg_ready(b, 8, NULL), -ENOSPC);
	assert_int_equal(sysd_msg_ready(b, 9, NULL), 7);
	assert_int_equal(sysd_msg_ready(b, 0, NULL), -EINVAL);
}

/* --- sending through a real NOTIFY_SOCKET ----------------------------------- */

static int notify_socket(char *path, size_t len)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	const char *tmp = getenv("TMPDIR");
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	snprintf(path, len, "%s/baton-test-notify-%d", tmp && *tmp ? tmp : "/tmp",
		 (int)getpid());
	unlink(path);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	setenv("NOTIFY_SOCKET", path, 1);
	return fd;
}

/* One datagram: its text, and the fd that came with it (or -1). */
static ssize_t notify_recv(int s, char *buf, size_t len, int *fd)
{
	char cbuf[CMSG_SPACE(sizeof(int) * 4)];
	struct iovec iov = { .iov_base = buf, .iov_len = len - 1 };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	ssize_t n = recvmsg(s, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);

	*fd = -1;
	if (n < 0)
		return n;
	buf[n] = '\0';
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
			memcpy(fd, CMSG_DATA(c), sizeof(int));
	return n;
}

static void test_send_reloading_ready(void **state)
{
	char path[256], buf[SYSD_MSG_MAX];
	int s = notify_socket(path, sizeof(path)), fd;
	struct timespec ts;
	unsigned long long usec, now;
	char *p;

	sysd_send_reloading("upgrade to /x running");
	clock_gettime(CLOCK_MONOTONIC, &ts);
	now = (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000;
	assert_true(notify_recv(s, buf, sizeof(buf), &fd) > 0);
	assert_int_equal(strncmp(buf, "RELOADING=1\nMONOTONIC_USEC=", 27), 0);
	usec = strtoull(buf + 27, &p, 10);
	assert_true(usec <= now && now - usec < 5000000); /* CLOCK_MONOTONIC, in µs */
	assert_string_equal(p, "\nSTATUS=upgrade to /x running");
	sysd_send_ready("serving");
	assert_true(notify_recv(s, buf, sizeof(buf), &fd) > 0);
	assert_string_equal(buf, "READY=1\nSTATUS=serving");
	unsetenv("NOTIFY_SOCKET");
	unlink(path);
	close(s);
}

/* --- listeners_open ------------------------------------------------------- */

static int listening(const char *ip, int *port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	inet_pton(AF_INET, ip, &sa.sin_addr);
	sa.sin_port = htons((uint16_t)*port);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(fd, 8), 0);
	getsockname(fd, (struct sockaddr *)&sa, &len);
	*port = ntohs(sa.sin_port);
	return fd;
}

static int fd_open(int fd)
{
	return fcntl(fd, F_GETFD) >= 0;
}

struct fixture {
	struct baton_config cfg;
	struct config_listen l[3];
	char ports[3][16];
	struct sysd_fd fds[4];
	struct sysd_fds passed;
};

static void fx_line(struct fixture *x, const char *kind, const char *host,
		    int port)
{
	struct config_listen *l = &x->l[x->cfg.nlistens];

	snprintf(x->ports[x->cfg.nlistens], sizeof(x->ports[0]), "%d", port);
	l->kind = (char *)kind;
	l->host = (char *)host;
	l->port = x->ports[x->cfg.nlistens];
	l->line = 10 + (int)x->cfg.nlistens;
	x->cfg.path = "/etc/baton/baton.ini";
	x->cfg.listens = x->l;
	x->cfg.nlistens++;
}

static void fx_fd(struct fixture *x, int fd, const char *name)
{
	x->fds[x->passed.n].fd = fd;
	snprintf(x->fds[x->passed.n].name, sizeof(x->fds[0].name), "%s", name);
	x->passed.fds = x->fds;
	x->passed.n++;
}

static void fx_close(struct fixture *x)
{
	for (size_t i = 0; i < x->passed.n; i++)
		if (x->fds[i].fd >= 0)
			close(x->fds[i].fd);
}

static void test_open_socket_activation(void **state)
{
	struct fixture x = { 0 };
	struct listeners *ls = NULL;
	char err[512] = "";
	int p1 = 0, p2 = 0, a = listening("127.0.0.1", &p1),
	    b = listening("127.0.0.1", &p2);

	fx_line(&x, "irc", "127.0.0.1", p1);
	fx_line(&x, "ircs", "127.0.0.1", p2);
	fx_fd(&x, b, "ircs"); /* order does not matter: the address does */
	fx_fd(&x, a, "irc");
	assert_int_equal(listeners_open(&x.cfg, &x.passed, &ls, err, sizeof(err)), 0);
	assert_int_equal(listeners_count(ls), 2);
	assert_int_equal(listeners_fds(ls)[0], a);
	assert_int_equal(listeners_fds(ls)[1], b);
	assert_int_equal(listeners_origin(ls, 0), LISTENER_FROM_SOCKET_UNIT);
	assert_true(fcntl(a, F_GETFL) & O_NONBLOCK);
	assert_non_null(strstr(listeners_names(ls)[1], "ircs 127.0.0.1:"));
	assert_int_equal(x.fds[0].fd, -1); /* taken */
	assert_int_equal(x.fds[1].fd, -1);
	listeners_free(ls);
	assert_false(fd_open(a));
}

static void test_open_kind_disagrees(void **state)
{
	struct fixture x = { 0 };
	struct listeners *ls = NULL;
	char err[512] = "";
	int p = 0, a = listening("127.0.0.1", &p);

	fx_line(&x, "irc", "127.0.0.1", p);
	fx_fd(&x, a, "ircs");
	assert_int_equal(listeners_open(&x.cfg, &x.passed, &ls, err, sizeof(err)), -EINVAL);
	assert_null(ls);
	assert_non_null(strstr(err, "/etc/baton/baton.ini:10: [listen] irc = 127.0.0.1:"));
	assert_non_null(strstr(err, "as 'ircs'"));
	fx_close(&x);
}

static void test_open_socket_without_line(void **state)
{
	struct fixture x = { 0 };
	struct listeners *ls = NULL;
	char err[512] = "", want[128];
	int p1 = 0, p2 = 0, a = listening("127.0.0.1", &p1),
	    b = listening("127.0.0.1", &p2);

	fx_line(&x, "irc", "127.0.0.1", p1);
	fx_fd(&x, a, "irc");
	fx_fd(&x, b, "irc");
	assert_int_equal(listeners_open(&x.cfg, &x.passed, &ls, err, sizeof(err)), -EINVAL);
	snprintf(want, sizeof(want), "systemd socket 'irc' (fd %d) on 127.0.0.1:%d matches no [listen] line", b, p2);
	assert_non_null(strstr(err, want));
	fx_close(&x);
}

/* A [listen] line baton.socket has no socket for: bound here (and so put in
 * the fd store later), with a warning. */
static void test_open_line_without_socket(void **state)
{
	struct fixture x = { 0 };
	struct listeners *ls = NULL;
	char err[512] = "", want[64];
	int p1 = 0, p2 = 0, a = listening("127.0.0.1", &p1),
	    b = listening("127.0.0.1", &p2);

	close(b); /* a free port: bindable, but baton.socket does not have it */
	fx_line(&x, "irc", "127.0.0.1", p1);
	fx_line(&x, "irc", "127.0.0.1", p2);
	fx_fd(&x, a, "irc");
	assert_int_equal(listeners_open(&x.cfg, &x.passed, &ls, err, sizeof(err)), 0);
	assert_int_equal(listeners_count(ls), 2);
	assert_int_equal(listeners_origin(ls, 0), LISTENER_FROM_SOCKET_UNIT);
	assert_int_equal(listeners_origin(ls, 1), LISTENER_BOUND);
	snprintf(want, sizeof(want), "irc 127.0.0.1:%d", p2);
	assert_string_equal(listeners_names(ls)[1], want);
	listeners_free(ls);
}

static void test_open_unknown_and_not_listening(void **state)
{
	struct fixture x = { 0 };
	struct listeners *ls = NULL;
	char err[512] = "";
	int p = 0, a = listening("127.0.0.1", &p), u = socket(AF_INET, SOCK_STREAM, 0);

	fx_line(&x, "irc", "127.0.0.1", p);
	fx_fd(&x, a, "baton.socket"); /* no FileDescriptorName= */
	assert_int_equal(listeners_open(&x.cfg, &x.passed, &ls, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "named 'baton.socket': not a baton listener"));
	fx_close(&x);

	memset(&x, 0, sizeof(x));
	fx_line(&x, "irc", "127.0.0.1", 1);
	fx_fd(&x, u, "irc");
	assert_int_equal(listeners_open(&x.cfg, &x.passed, &ls, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "is not a listening TCP socket"));
	fx_close(&x);
}

/* From the fd store (a restart): stored listeners are taken back, one the
 * config dropped is released, custody fds are released, new lines bound. */
static void test_open_fd_store(void **state)
{
	struct fixture x = { 0 };
	struct listeners *ls = NULL;
	char err[512] = "", path[256], buf[SYSD_MSG_MAX], want[128];
	int p1 = 0, p2 = 0, p3 = 0, a = listening("127.0.0.1", &p1),
	    gone = listening("127.0.0.1", &p2), c = listening("127.0.0.1", &p3),
	    s = notify_socket(path, sizeof(path)), fd;

	close(c); /* p3: a new line, nobody passes it */
	c = socket(AF_INET, SOCK_STREAM, 0);
	fx_line(&x, "irc", "127.0.0.1", p1);
	fx_line(&x, "ircs", "127.0.0.1", p3);
	fx_fd(&x, a, "listen-irc-127.0.0.1-x");
	fx_fd(&x, gone, "listen-irc-127.0.0.1-y");
	fx_fd(&x, c, "custody-1");
	assert_int_equal(listeners_open(&x.cfg, &x.passed, &ls, err, sizeof(err)), 0);
	assert_int_equal(listeners_count(ls), 2);
	assert_int_equal(listeners_fds(ls)[0], a);
	assert_int_equal(listeners_origin(ls, 0), LISTENER_FROM_FD_STORE);
	assert_int_equal(listeners_origin(ls, 1), LISTENER_BOUND);
	/* released: closed (fd numbers are reused by the bind, so the port
	 * tells: it can be bound again) */
	assert_int_equal(x.fds[1].fd, -1);
	assert_int_equal(x.fds[2].fd, -1);
	close(listening("127.0.0.1", &p2));
	/* released from the store: custody first (classified first), then gone */
	assert_true(notify_recv(s, buf, sizeof(buf), &fd) > 0);
	assert_string_equal(buf, "FDSTOREREMOVE=1\nFDNAME=custody-1");
	assert_true(notify_recv(s, buf, sizeof(buf), &fd) > 0);
	assert_string_equal(buf, "FDSTOREREMOVE=1\nFDNAME=listen-irc-127.0.0.1-y");
	/* only what this process bound goes to the store, with its fd */
	assert_int_equal(listeners_store(ls), 1);
	assert_true(notify_recv(s, buf, sizeof(buf), &fd) > 0);
	snprintf(want, sizeof(want), "FDSTORE=1\nFDNAME=listen-ircs-127.0.0.1-%d", p3);
	assert_string_equal(buf, want);
	assert_true(fd >= 0);
	{
		struct sockaddr_in sa;
		socklen_t len = sizeof(sa);

		getsockname(fd, (struct sockaddr *)&sa, &len);
		assert_int_equal(ntohs(sa.sin_port), p3);
		close(fd);
	}
	assert_true(notify_recv(s, buf, sizeof(buf), &fd) < 0); /* nothing else */
	listeners_free(ls);
	unsetenv("NOTIFY_SOCKET");
	unlink(path);
	close(s);
}

/* sysd_restart_job(): the SIGTERM of `systemctl restart` and of a stop
 * differ only by the unit's job (ListJobs, systemd 252). */
#define U "/org/freedesktop/systemd1/unit/baton_2eservice"
static void test_restart_job_decision(void **state)
{
	(void)state;
	/* what ListJobs shows during `systemctl restart baton.service` */
	struct sysd_job restart[] = {
		{ 7, "baton.service", "restart", "running", U },
	};
	/* `systemctl stop` (and a shutdown's stop jobs) */
	struct sysd_job stop[] = {
		{ 8, "baton.service", "stop", "running", U },
	};
	/* other units' restarts, our own restart still waiting (this SIGTERM
	 * is someone else's: `systemctl kill`), and our start */
	struct sysd_job others[] = {
		{ 1, "ngircd.service", "restart", "running",
		  "/org/freedesktop/systemd1/unit/ngircd_2eservice" },
		{ 2, "baton.socket", "restart", "running",
		  "/org/freedesktop/systemd1/unit/baton_2esocket" },
		{ 3, "baton.service", "restart", "waiting", U },
		{ 4, "baton.service", "start", "running", U },
		{ 5, "baton.service", "restart", "running", U "_2ed" },
		{ 6, "baton.service", "restart", "running", "/org/freedesktop/systemd1/unit/baton" },
	};
	struct sysd_job nulls[] = {
		{ 1, "baton.service", "restart", "running", NULL },
		{ 2, "baton.service", NULL, "running", U },
		{ 3, "baton.service", "restart", NULL, U },
		{ 4, NULL, "restart", "running", U }, /* the name is for the log only */
	};
	/* close but not the same: case and prefixes */
	struct sysd_job near[] = {
		{ 1, "baton.service", "Restart", "running", U },
		{ 2, "baton.service", "try-restart", "running", U },
		{ 3, "baton.service", "restart ", "running", U },
		{ 4, "baton.service", "restart", "run", U },
	};

	assert_int_equal(sysd_restart_job(restart, 1, U), 0);
	assert_int_equal(sysd_restart_job(stop, 1, U), -1);
	assert_int_equal(sysd_restart_job(others, 6, U), -1);
	assert_int_equal(sysd_restart_job(nulls, 4, U), 3);
	assert_int_equal(sysd_restart_job(nulls, 3, U), -1);
	assert_int_equal(sysd_restart_job(near, 4, U), -1);
	/* no jobs, no unit */
	assert_int_equal(sysd_restart_job(NULL, 0, U), -1);
	assert_int_equal(sysd_restart_job(restart, 1, NULL), -1);
	assert_int_equal(sysd_restart_job(restart, 1, ""), -1);
	/* another unit (an instance, a renamed unit) is its own */
	assert_int_equal(sysd_restart_job(restart, 1,
					  "/org/freedesktop/systemd1/unit/baton_40a_2eservice"), -1);
}
#undef U

/* Outside systemd (no NOTIFY_SOCKET) the query never touches a bus and
 * always means stop: a supervisor in a shell or the tests stops its
 * workers on SIGTERM as before. */
static void test_term_query_outside_systemd(void **state)
{
	char why[128];
	char *saved = getenv("NOTIFY_SOCKET") ? strdup(getenv("NOTIFY_SOCKET")) : NULL;

	(void)state;
	unsetenv("NOTIFY_SOCKET");
	assert_int_equal(sysd_term_query(1000, why, sizeof(why)), SYSD_TERM_STOP);
	assert_string_equal(why, "not started by systemd");
	assert_int_equal(sysd_term_query(1000, NULL, 0), SYSD_TERM_STOP);
	if (saved) {
		setenv("NOTIFY_SOCKET", saved, 1);
		free(saved);
	}
}

/* Under a NOTIFY_SOCKET but with no reachable system bus (the bus address
 * points at nothing): stop, and say why. */
static void test_term_query_no_bus_means_stop(void **state)
{
	char why[512];

	(void)state;
	setenv("NOTIFY_SOCKET", "/nonexistent/notify", 1);
	setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/bus", 1);
	assert_int_equal(sysd_term_query(200000, why, sizeof(why)), SYSD_TERM_STOP);
	assert_true(why[0] != '\0');
	/* a tiny buffer is cut, never overrun */
	assert_int_equal(sysd_term_query(200000, why, 4), SYSD_TERM_STOP);
	assert_true(strlen(why) <= 3);
	unsetenv("DBUS_SYSTEM_BUS_ADDRESS");
	unsetenv("NOTIFY_SOCKET");
}

/* A ListJobs reply as sd-bus builds it: a sealed message holding
 * a(usssoo), read back as sysd_term_query() reads systemd's. The bus is a
 * started client on one end of a socketpair (nothing is sent). */
struct jobs_msg {
	sd_bus *bus;
	sd_bus_message *m;
	int peer;
};

static void jobs_msg_open(struct jobs_msg *j)
{
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	assert_true(sd_bus_new(&j->bus) >= 0);
	assert_true(sd_bus_set_fd(j->bus, sv[0], sv[0]) >= 0);
	assert_true(sd_bus_start(j->bus) >= 0);
	j->peer = sv[1];
	assert_true(sd_bus_message_new_method_call(j->bus, &j->m, "org.freedesktop.systemd1",
						   "/org/freedesktop/systemd1",
						   "org.freedesktop.systemd1.Manager",
						   "ListJobs") >= 0);
	assert_true(sd_bus_message_open_container(j->m, 'a', "(usssoo)") >= 0);
}

static void jobs_msg_add(struct jobs_msg *j, uint32_t id, const char *unit,
			 const char *type, const char *state, const char *unit_path)
{
	assert_true(sd_bus_message_append(j->m, "(usssoo)", id, unit, type, state,
					  "/org/freedesktop/systemd1/job/1", unit_path) >= 0);
}

static void jobs_msg_seal(struct jobs_msg *j)
{
	assert_true(sd_bus_message_close_container(j->m) >= 0);
	assert_true(sd_bus_message_seal(j->m, 1, 0) >= 0);
	assert_true(sd_bus_message_rewind(j->m, 1) >= 0);
}

static void jobs_msg_close(struct jobs_msg *j)
{
	sd_bus_message_unref(j->m);
	sd_bus_close_unref(j->bus); /* no flush: nobody answers the handshake */
	close(j->peer);
}

#define UNIT_PATH "/org/freedesktop/systemd1/unit/baton_2eservice"
#define OTHER_PATH "/org/freedesktop/systemd1/unit/ngircd_2eservice"

static void test_read_jobs(void **state)
{
	struct jobs_msg j;
	struct sysd_job jobs[SYSD_UNIT_JOBS_MAX];

	(void)state;
	/* systemctl restart: other units' jobs around ours */
	jobs_msg_open(&j);
	jobs_msg_add(&j, 3, "ngircd.service", "restart", "running", OTHER_PATH);
	jobs_msg_add(&j, 7, "baton.service", "restart", "running", UNIT_PATH);
	jobs_msg_add(&j, 9, "baton.socket", "stop", "waiting",
		     "/org/freedesktop/systemd1/unit/baton_2esocket");
	jobs_msg_seal(&j);
	assert_int_equal(sysd_read_jobs(j.m, UNIT_PATH, jobs, SYSD_UNIT_JOBS_MAX), 1);
	assert_int_equal(jobs[0].id, 7);
	assert_string_equal(jobs[0].unit, "baton.service");
	assert_string_equal(jobs[0].unit_path, UNIT_PATH);
	assert_int_equal(sysd_restart_job(jobs, 1, UNIT_PATH), 0);
	jobs_msg_close(&j);

	/* no jobs at all */
	jobs_msg_open(&j);
	jobs_msg_seal(&j);
	assert_int_equal(sysd_read_jobs(j.m, UNIT_PATH, jobs, SYSD_UNIT_JOBS_MAX), 0);
	jobs_msg_close(&j);

	/* a reply of another shape (GetUnitByPID's "o") */
	assert_true(sd_bus_new(&j.bus) >= 0);
	{
		int sv[2];

		assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
		assert_true(sd_bus_set_fd(j.bus, sv[0], sv[0]) >= 0);
		assert_true(sd_bus_start(j.bus) >= 0);
		j.peer = sv[1];
	}
	assert_true(sd_bus_message_new_method_call(j.bus, &j.m, "a.b", "/", "a.b", "M") >= 0);
	assert_true(sd_bus_message_append(j.m, "o", UNIT_PATH) >= 0);
	assert_true(sd_bus_message_seal(j.m, 1, 0) >= 0);
	assert_true(sd_bus_message_rewind(j.m, 1) >= 0);
	assert_true(sysd_read_jobs(j.m, UNIT_PATH, jobs, SYSD_UNIT_JOBS_MAX) < 0);
	jobs_msg_close(&j);
}

/* The bounds: at most max jobs of our unit (at: read; past: -E2BIG) and
 * SYSD_JOBS_MAX jobs in the reply (at: read; past: -E2BIG). */
static void test_read_jobs_bounds(void **state)
{
	struct jobs_msg j;
	struct sysd_job jobs[SYSD_UNIT_JOBS_MAX];

	(void)state;
	for (size_t n = SYSD_UNIT_JOBS_MAX; n <= SYSD_UNIT_JOBS_MAX + 1; n++) {
		jobs_msg_open(&j);
		for (size_t i = 0; i < n; i++)
			jobs_msg_add(&j, (uint32_t)i, "baton.service",
				     i + 1 == n ? "restart" : "start",
				     i + 1 == n ? "running" : "waiting", UNIT_PATH);
		jobs_msg_seal(&j);
		if (n == SYSD_UNIT_JOBS_MAX) {
			assert_int_equal(sysd_read_jobs(j.m, UNIT_PATH, jobs, n), (long)n);
			assert_int_equal(sysd_restart_job(jobs, n, UNIT_PATH), (long)n - 1);
		} else {
			assert_int_equal(sysd_read_jobs(j.m, UNIT_PATH, jobs,
							SYSD_UNIT_JOBS_MAX), -E2BIG);
		}
		jobs_msg_close(&j);
	}
	for (size_t n = SYSD_JOBS_MAX; n <= SYSD_JOBS_MAX + 1; n++) {
		jobs_msg_open(&j);
		for (size_t i = 0; i + 1 < n; i++)
			jobs_msg_add(&j, (uint32_t)i, "ngircd.service", "start", "waiting",
				     OTHER_PATH);
		jobs_msg_add(&j, 1, "baton.service", "restart", "running", UNIT_PATH);
		jobs_msg_seal(&j);
		assert_int_equal(sysd_read_jobs(j.m, UNIT_PATH, jobs, SYSD_UNIT_JOBS_MAX),
				 n == SYSD_JOBS_MAX ? 1 : -E2BIG);
		jobs_msg_close(&j);
	}
}
#undef UNIT_PATH
#undef OTHER_PATH


int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_unset_is_nothing),
		cmocka_unit_test(test_parse_names),
		cmocka_unit_test(test_parse_pid_mismatch_ignored),
		cmocka_unit_test(test_parse_bad_values),
		cmocka_unit_test(test_parse_fd_count_bound),
		cmocka_unit_test(test_parse_name_count_mismatch),
		cmocka_unit_test(test_parse_name_bounds),
		cmocka_unit_test(test_take_unopened_fd),
		cmocka_unit_test(test_fd_class),
		cmocka_unit_test(test_listener_fdname),
		cmocka_unit_test(test_messages),
		cmocka_unit_test(test_message_bounds),
		cmocka_unit_test(test_send_reloading_ready),
		cmocka_unit_test(test_open_socket_activation),
		cmocka_unit_test(test_open_kind_disagrees),
		cmocka_unit_test(test_open_socket_without_line),
		cmocka_unit_test(test_open_line_without_socket),
		cmocka_unit_test(test_open_unknown_and_not_listening),
		cmocka_unit_test(test_open_fd_store),
		cmocka_unit_test(test_restart_job_decision),
		cmocka_unit_test(test_read_jobs),
		cmocka_unit_test(test_read_jobs_bounds),
		cmocka_unit_test(test_term_query_outside_systemd),
		cmocka_unit_test(test_term_query_no_bus_means_stop),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
