/* tests/unit/sessiond/test_conn.c: sessiond/conn.c on its own (socketpairs,
 * one event base): line splitting, refusal of restored buffers no
 * connection can hold, and the output-drained hook.
 *
 * Regressions pinned here (each test opens with its own):
 * - a bare CR inside a line survived into backlog lines and the away text;
 * - conn_adopt() took restored buffers over the sendq or line bounds;
 * - conn_discard_unacked() reset nothing while another fd (custody's copy)
 *   referred to the socket. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <arpa/inet.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "state.pb-c.h"

#include "common/config.h"
#include "sample_state.h"
#include "sessiond/bouncer.h"
#include "sessiond/conn.h"

struct rec {
	char *lines[64];
	size_t nlines;
	int drained;
	size_t pending_at_drain;
	bool closed;
};

static void rec_line(struct conn *c, char *line, size_t len, void *arg)
{
	struct rec *r = arg;
	assert_int_equal(strlen(line), len);
	if (r->nlines < 64)
		r->lines[r->nlines++] = strdup(line);
}

static void rec_closed(struct conn *c, const char *reason, void *arg)
{
	((struct rec *)arg)->closed = true;
}

static void rec_drained(struct conn *c, void *arg)
{
	struct rec *r = arg;
	r->drained++;
	(void)conn_output(c, &r->pending_at_drain);
}

static const struct conn_ops rec_ops = {
	.line = rec_line,
	.closed = rec_closed,
	.drained = rec_drained,
};

static void rec_clear(struct rec *r)
{
	for (size_t i = 0; i < r->nlines; i++)
		free(r->lines[i]);
	memset(r, 0, sizeof(*r));
}

static void loop(struct event_base *base, int n)
{
	for (int i = 0; i < n; i++)
		event_base_loop(base, EVLOOP_NONBLOCK);
}

static bool fd_open(int fd)
{
	return fcntl(fd, F_GETFD) >= 0;
}

/* Regression: only LF ended a line and only trailing CRs were stripped, so
 * "PRIVMSG #c :a\rb" kept its CR: stored in the backlog it made the state
 * unadoptable (line break) and every upgrade aborted. A bare CR now ends a
 * line (as on ircds), NULs are dropped, empty lines are not reported. */
static void test_bare_cr_splits_lines(void **state)
{
	struct event_base *base = event_base_new();
	struct rec r = { 0 };
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	struct conn *c = conn_new(base, sv[0], false, &rec_ops, &r);
	assert_non_null(c);
	conn_arm(c);

	static const char in[] = "PRIVMSG #c :a\rb\r\n"
				 "x\0y\n"
				 "\r\n\r\r\n\n"
				 "\0\r\n"
				 "last\r";
	assert_int_equal(send(sv[1], in, sizeof(in) - 1, 0), (ssize_t)(sizeof(in) - 1));
	loop(base, 5);
	assert_int_equal(r.nlines, 4);
	assert_string_equal(r.lines[0], "PRIVMSG #c :a");
	assert_string_equal(r.lines[1], "b");
	assert_string_equal(r.lines[2], "xy");
	assert_string_equal(r.lines[3], "last");
	for (size_t i = 0; i < r.nlines; i++)
		assert_null(strpbrk(r.lines[i], "\r\n"));

	/* A CR at the end of one read and its LF in the next: one line. */
	rec_clear(&r);
	assert_int_equal(send(sv[1], "one\r", 4, 0), 4);
	loop(base, 3);
	assert_int_equal(send(sv[1], "\ntwo\n", 5, 0), 5);
	loop(base, 3);
	assert_int_equal(r.nlines, 2);
	assert_string_equal(r.lines[0], "one");
	assert_string_equal(r.lines[1], "two");
	assert_false(r.closed);

	rec_clear(&r);
	conn_release(c);
	close(sv[1]);
	event_base_free(base);
}

/* Regression: conn_adopt() copied any restored output and input, so a state
 * could hand a connection more output than the sendq bound (CONN_MAX_OUTPUT)
 * or an unterminated input tail longer than a line may be. It refuses them
 * now: NULL with errno EMSGSIZE, the fd closed. */
static void test_adopt_refuses_oversized_buffers(void **state)
{
	struct event_base *base = event_base_new();
	struct rec r = { 0 };
	int sv[2];
	size_t big = CONN_MAX_OUTPUT + 1;
	char *buf = malloc(big);

	memset(buf, 'x', big);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	errno = 0;
	assert_null(conn_adopt(base, sv[0], false, NULL, 0, buf, big, &rec_ops, &r));
	assert_int_equal(errno, EMSGSIZE);
	assert_false(fd_open(sv[0]));
	close(sv[1]);

	/* Input: the tail after the last CR or LF counts, not the total. */
	assert_int_equal(conn_check_restore(buf, CONN_MAX_LINE + 1, 0), -EMSGSIZE);
	assert_int_equal(conn_check_restore(buf, CONN_MAX_LINE, 0), 0);
	buf[100] = '\n';
	assert_int_equal(conn_check_restore(buf, CONN_MAX_LINE + 101, 0), 0);
	assert_int_equal(conn_check_restore(buf, CONN_MAX_LINE + 102, 0), -EMSGSIZE);
	buf[200] = '\r';
	assert_int_equal(conn_check_restore(buf, CONN_MAX_LINE + 201, 0), 0);
	assert_int_equal(conn_check_restore(NULL, 0, CONN_MAX_OUTPUT), 0);

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	buf[100] = 'x';
	buf[200] = 'x';
	errno = 0;
	assert_null(conn_adopt(base, sv[0], false, buf, CONN_MAX_LINE + 1, NULL, 0,
			       &rec_ops, &r));
	assert_int_equal(errno, EMSGSIZE);
	assert_false(fd_open(sv[0]));
	close(sv[1]);

	/* Within the bounds: adopted. */
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	struct conn *c = conn_adopt(base, sv[0], false, buf, CONN_MAX_LINE, buf,
				    CONN_MAX_OUTPUT, &rec_ops, &r);
	assert_non_null(c);
	conn_release(c);
	close(sv[1]);
	free(buf);
	event_base_free(base);
}

/* The same through the state: an item whose client carries more output
 * than CONN_MAX_OUTPUT is refused as a whole (an error, every fd closed),
 * and nothing of it is left behind. */
static void test_state_with_oversized_output_refused(void **state)
{
	struct config_network net = { .name = "example", .host = "127.0.0.1", .port = "1" };
	struct config_user user = { .name = "alice", .password = "$6$x$y" };
	struct config_session sess = { .user = "alice", .network = "example",
				       .nick = "alice" };
	struct baton_config cfg = { .backlog_lines = 100, .ping_interval_s = 60,
				    .ping_timeout_s = 240, .networks = &net,
				    .nnetworks = 1, .users = &user, .nusers = 1,
				    .sessions = &sess, .nsessions = 1 };
	struct event_base *base = event_base_new();
	struct bouncer *b = bouncer_new(base, &cfg);
	int baseline = count_open_fds();
	size_t len, big = CONN_MAX_OUTPUT + 2;
	uint8_t *buf = sample_item_pack(&len);
	Baton__State__Item *item = baton__state__item__unpack(NULL, len, buf);
	Baton__State__Connection *pc = item->session->clients[0];
	ProtobufCBinaryData saved = pc->output;
	char *out = malloc(big);

	for (size_t i = 0; i < big; i += 2) {
		out[i] = '\r';
		out[i + 1] = '\n';
	}
	pc->output.data = (uint8_t *)out;
	pc->output.len = big;
	size_t l2 = baton__state__item__get_packed_size(item);
	uint8_t *b2 = malloc(l2);
	baton__state__item__pack(item, b2);
	pc->output = saved;
	baton__state__item__free_unpacked(item, NULL);
	free(out);

	int sv1[2], sv2[2], fds[2];
	struct bouncer_item *it = NULL;
	char err[256] = "";
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv1), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv2), 0);
	fds[0] = sv1[0];
	fds[1] = sv2[0];
	assert_true(bouncer_item_adopt(b, b2, l2, fds, 2, &it, err, sizeof(err)) < 0);
	fprintf(stderr, "refused: %s\n", err);
	assert_null(it);
	assert_false(fd_open(sv1[0]));
	assert_false(fd_open(sv2[0]));
	close(sv1[1]);
	close(sv2[1]);
	assert_int_equal(count_open_fds(), baseline);

	/* Control: the same item with its own output is adopted. */
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv1), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv2), 0);
	fds[0] = sv1[0];
	fds[1] = sv2[0];
	assert_int_equal(bouncer_item_adopt(b, buf, len, fds, 2, &it, err, sizeof(err)), 0);
	bouncer_item_discard(it);
	close(sv1[1]);
	close(sv2[1]);
	assert_int_equal(count_open_fds(), baseline);
	free(b2);
	free(buf);
	bouncer_free(b);
	event_base_free(base);
}

/* conn_watch_drain(): the hook runs once, from the event loop, when the
 * unwritten output falls below the mark; at once (next iteration, never
 * inside the call) if it already is; after conn_arm() if set while frozen. */
static void test_drain_watch(void **state)
{
	struct event_base *base = event_base_new();
	struct rec r = { 0 };
	int sv[2], sz = 4096;
	char line[1001];
	char sink[65536];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	assert_int_equal(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz)), 0);
	assert_int_equal(setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz)), 0);
	struct conn *c = conn_new(base, sv[0], false, &rec_ops, &r);
	conn_arm(c);
	memset(line, 'y', 1000);
	line[1000] = '\0';
	for (int i = 0; i < 300; i++)
		conn_send(c, line); /* ~300 KB: far more than the socket takes */
	conn_watch_drain(c, 64 * 1024);
	assert_int_equal(r.drained, 0);
	loop(base, 20);
	assert_int_equal(r.drained, 0); /* the peer reads nothing */
	size_t pending;
	(void)conn_output(c, &pending);
	assert_true(pending >= 64 * 1024);
	for (int i = 0; i < 2000 && !r.drained; i++) {
		(void)recv(sv[1], sink, sizeof(sink), MSG_DONTWAIT);
		loop(base, 1);
	}
	assert_int_equal(r.drained, 1);
	assert_true(r.pending_at_drain < 64 * 1024);
	for (int i = 0; i < 2000; i++) {
		(void)recv(sv[1], sink, sizeof(sink), MSG_DONTWAIT);
		loop(base, 1);
	}
	assert_int_equal(r.drained, 1); /* one-shot */

	/* Already below: from the loop, not from inside the call. */
	conn_watch_drain(c, 64 * 1024);
	assert_int_equal(r.drained, 1);
	loop(base, 2);
	assert_int_equal(r.drained, 2);

	/* Set while frozen: after the next arm. */
	conn_freeze(c, false);
	conn_watch_drain(c, 64 * 1024);
	loop(base, 3);
	assert_int_equal(r.drained, 2);
	conn_arm(c);
	loop(base, 2);
	assert_int_equal(r.drained, 3);
	assert_false(r.closed);

	conn_release(c);
	close(sv[1]);
	event_base_free(base);
}

/* Regression: conn_discard_unacked() only set SO_LINGER 0, which resets a
 * TCP connection at the close of its last fd. With custody on (the
 * default) the supervisor holds a duplicate of every client socket, so the
 * worker's close reset nothing and the kernel went on delivering the lines
 * the client's position said would be replayed: duplicates at the next
 * attach. Now the connection is reset at once: the duplicate finds it
 * closed with nothing left to send. */
static void test_discard_unacked_despite_a_duplicate(void **state)
{
	struct event_base *base = event_base_new();
	struct rec r = { 0 };
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t sl = sizeof(sa);
	int lst, cli, peer, dup_fd, sz = 4096, outq = 0;
	char buf[65536];

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	lst = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(lst >= 0);
	assert_int_equal(setsockopt(lst, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz)), 0);
	assert_int_equal(bind(lst, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(lst, 1), 0);
	assert_int_equal(getsockname(lst, (struct sockaddr *)&sa, &sl), 0);
	cli = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_int_equal(connect(cli, (struct sockaddr *)&sa, sizeof(sa)), 0);
	peer = accept(lst, NULL, NULL);
	assert_true(peer >= 0);
	dup_fd = dup(cli); /* the supervisor's custody copy */
	assert_true(dup_fd >= 0);
	struct conn *c = conn_new(base, cli, false, &rec_ops, &r);
	assert_non_null(c);
	memset(buf, 'z', sizeof(buf));
	/* the peer reads nothing: what does not fit its window stays unacked */
	for (int i = 0; i < 64 && send(cli, buf, sizeof(buf), MSG_DONTWAIT) > 0; i++)
		;
	assert_int_equal(ioctl(dup_fd, SIOCOUTQ, &outq), 0);
	assert_true(outq > 0);
	conn_discard_unacked(c);
	conn_release(c); /* closes cli; dup_fd still refers to the socket */
	struct tcp_info ti;
	socklen_t tl = sizeof(ti);
	assert_int_equal(getsockopt(dup_fd, IPPROTO_TCP, TCP_INFO, &ti, &tl), 0);
	assert_int_equal(ti.tcpi_state, TCP_CLOSE);
	/* the peer's next read finds the reset, not the unacked rest (before:
	 * it read on and then waited, the connection open) */
	ssize_t n = 0;
	int err = 0;
	for (int i = 0; i < 1000 && err == 0; i++) {
		n = recv(peer, buf, sizeof(buf), MSG_DONTWAIT);
		if (n < 0 && errno != EAGAIN)
			err = errno;
		else if (n < 0)
			usleep(1000);
	}
	assert_int_equal(err, ECONNRESET);
	close(dup_fd);
	close(peer);
	close(lst);
	event_base_free(base);
	(void)state;
}

/* The line bound (CONN_MAX_LINE, 8,704 bytes: IRCv3 tags + a 512-byte
 * message) at the limit and past it, complete and as an unterminated tail:
 * a line of exactly the bound is delivered whole; one byte more closes the
 * connection with the reason, whether or not its end ever arrives. */
static void test_line_limit(void **state)
{
	static char big[CONN_MAX_LINE + 16];
	for (int over = 0; over <= 1; over++) {
		for (int terminated = 0; terminated <= 1; terminated++) {
			struct event_base *base = event_base_new();
			struct rec r = { 0 };
			int sv[2];
			assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
			struct conn *c = conn_new(base, sv[0], false, &rec_ops, &r);
			conn_arm(c);
			size_t n = CONN_MAX_LINE + (size_t)over;
			memset(big, 'a', n);
			if (terminated)
				big[n++] = '\n';
			assert_int_equal(send(sv[1], big, n, 0), (ssize_t)n);
			loop(base, 5);
			if (!over && terminated) {
				assert_int_equal(r.nlines, 1);
				assert_int_equal(strlen(r.lines[0]), CONN_MAX_LINE);
				assert_false(r.closed);
			} else if (over) {
				assert_int_equal(r.nlines, 0);
				assert_true(r.closed);
			} else { /* at the bound, end not arrived yet: waits */
				assert_int_equal(r.nlines, 0);
				assert_false(r.closed);
			}
			rec_clear(&r);
			conn_release(c);
			close(sv[1]);
			event_base_free(base);
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bare_cr_splits_lines),
		cmocka_unit_test(test_adopt_refuses_oversized_buffers),
		cmocka_unit_test(test_state_with_oversized_output_refused),
		cmocka_unit_test(test_drain_watch),
		cmocka_unit_test(test_line_limit),
		cmocka_unit_test(test_discard_unacked_despite_a_duplicate),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
