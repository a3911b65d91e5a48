/* tests/unit/common/test_frame.c: common/frame.c — round trips with 0, 1
 * and 253 fds, fragmentation, and every rejection path of the receiver, each
 * checked for fd leaks (/proc/self/fd before and after). Malformed datagrams
 * are written with raw sendmsg() so the receiver sees exactly what a broken
 * or hostile peer would send. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/frame.h"

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	assert_non_null(d);
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the DIR's own fd */
}

struct raw_hdr {
	uint16_t magic;
	uint8_t version;
	uint8_t type;
	uint16_t flags;
	uint16_t nfds;
	uint32_t length;
	uint32_t total;
};

static struct raw_hdr good_hdr(uint8_t type, uint32_t len, uint16_t nfds)
{
	return (struct raw_hdr){ FRAME_MAGIC, FRAME_VERSION,
				 type, 0, nfds, len, len };
}

/* Send one datagram: the encoded header h (length as given, not computed)
 * followed by `len` payload bytes and nfds fds. */
static void raw_send(int sock, const struct raw_hdr *h, const void *payload,
		     size_t len, const int *fds, size_t nfds)
{
	uint8_t hdr[16];
	struct iovec iov[2] = { { hdr, sizeof(hdr) }, { (void *)payload, len } };
	union {
		char buf[CMSG_SPACE(FRAME_MAX_FDS * sizeof(int))];
		struct cmsghdr align;
	} control;
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = len ? 2 : 1 };

	hdr[0] = h->magic & 0xff;
	hdr[1] = h->magic >> 8;
	hdr[2] = h->version;
	hdr[3] = h->type;
	hdr[4] = h->flags & 0xff;
	hdr[5] = h->flags >> 8;
	hdr[6] = h->nfds & 0xff;
	hdr[7] = h->nfds >> 8;
	for (int i = 0; i < 4; i++) {
		hdr[8 + i] = (h->length >> (8 * i)) & 0xff;
		hdr[12 + i] = (h->total >> (8 * i)) & 0xff;
	}
	if (nfds) {
		struct cmsghdr *c;

		memset(&control, 0, sizeof(control));
		mh.msg_control = control.buf;
		mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
	}
	assert_int_equal(sendmsg(sock, &mh, MSG_NOSIGNAL),
			 (ssize_t)(sizeof(hdr) + len));
}

/* Send a raw datagram with `nfds` fresh fds (our copies closed at once). */
static void raw_send_fds(int sock, const struct raw_hdr *h, const void *payload,
			 size_t len, size_t nfds)
{
	int fds[FRAME_MAX_FDS];

	for (size_t i = 0; i < nfds; i++) {
		fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
		assert_true(fds[i] >= 0);
	}
	raw_send(sock, h, payload, len, fds, nfds);
	for (size_t i = 0; i < nfds; i++)
		close(fds[i]);
}

static void pair(int sv[2])
{
	assert_int_equal(frame_socketpair(sv), 0);
}

static void unpair(int sv[2])
{
	close(sv[0]);
	close(sv[1]);
}

/* Receive on sv[1], expect `err`, msg left empty, then close the pair and
 * check that no fd leaked relative to `base`. */
static void expect_error(int sv[2], int err, int base)
{
	struct frame_msg m;

	assert_int_equal(frame_recv(sv[1], &m, 200), err);
	assert_null(m.data);
	assert_null(m.fds);
	assert_int_equal(m.nfds, 0);
	unpair(sv);
	assert_int_equal(count_fds(), base);
}

static void test_roundtrip_no_fds(void **state)
{
	int base = count_fds();
	struct frame_msg m;
	int sv[2];

	pair(sv);
	assert_int_equal(frame_send(sv[0], 9, "hello", 5, NULL, 0, 1000), 0);
	assert_int_equal(frame_send(sv[0], 255, NULL, 0, NULL, 0, 1000), 0);

	assert_int_equal(frame_recv(sv[1], &m, 1000), 0);
	assert_int_equal(m.type, 9);
	assert_int_equal(m.len, 5);
	assert_string_equal((char *)m.data, "hello"); /* NUL-terminated */
	assert_int_equal(m.nfds, 0);
	frame_msg_clear(&m);

	assert_int_equal(frame_recv(sv[1], &m, 1000), 0);
	assert_int_equal(m.type, 255);
	assert_int_equal(m.len, 0);
	assert_non_null(m.data);
	frame_msg_clear(&m);
	frame_msg_clear(NULL);
	unpair(sv);
	assert_int_equal(count_fds(), base);
}

static void test_roundtrip_one_fd(void **state)
{
	int base = count_fds();
	struct frame_msg m;
	int sv[2], p[2];
	char buf[8] = "";
	int fd;

	pair(sv);
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	assert_int_equal(frame_send(sv[0], 1, "x", 1, &p[1], 1, 1000), 0);
	close(p[1]); /* sending borrowed it: our copy is still ours */

	assert_int_equal(frame_recv(sv[1], &m, 1000), 0);
	assert_int_equal(m.nfds, 1);
	assert_true(fcntl(m.fds[0], F_GETFD) & FD_CLOEXEC);
	fd = frame_msg_take_fd(&m, 0);
	assert_true(fd >= 0);
	assert_int_equal(frame_msg_take_fd(&m, 0), -1); /* taken once */
	assert_int_equal(frame_msg_take_fd(&m, 1), -1); /* out of range */
	frame_msg_clear(&m); /* must not close the taken fd */
	assert_int_equal(write(fd, "ok", 2), 2);
	assert_int_equal(read(p[0], buf, sizeof(buf)), 2);
	assert_memory_equal(buf, "ok", 2);
	close(fd);
	close(p[0]);
	unpair(sv);
	assert_int_equal(count_fds(), base);
}

static void test_roundtrip_max_fds(void **state)
{
	int base = count_fds();
	int fds[FRAME_MAX_FDS + 1];
	struct frame_msg m;
	int sv[2];

	pair(sv);
	for (int i = 0; i <= FRAME_MAX_FDS; i++)
		assert_true((fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0);
	assert_int_equal(frame_send(sv[0], 2, "fds", 3, fds,
					    FRAME_MAX_FDS + 1, 1000),
			 -EINVAL);
	assert_int_equal(frame_send(sv[0], 2, "fds", 3, fds,
					    FRAME_MAX_FDS, 1000), 0);
	for (int i = 0; i <= FRAME_MAX_FDS; i++)
		close(fds[i]);

	assert_int_equal(frame_recv(sv[1], &m, 1000), 0);
	assert_int_equal(m.nfds, FRAME_MAX_FDS);
	for (size_t i = 0; i < m.nfds; i++)
		assert_true(fcntl(m.fds[i], F_GETFD) & FD_CLOEXEC);
	assert_int_equal(count_fds(), base + 2 + FRAME_MAX_FDS);
	frame_msg_clear(&m); /* closes all 253 */
	unpair(sv);
	assert_int_equal(count_fds(), base);
}

static void test_send_rejects_bad_arguments(void **state)
{
	int sv[2];
	int fd = 0;

	pair(sv);
	assert_int_equal(frame_send(sv[0], 0, "x", 1, NULL, 0, 0), -EINVAL);
	assert_int_equal(frame_send(sv[0], 1, NULL, 1, NULL, 0, 0), -EINVAL);
	assert_int_equal(frame_send(sv[0], 1, "x", 1, NULL, 1, 0), -EINVAL);
	assert_int_equal(frame_send(sv[0], 1, &fd,
					    FRAME_MAX_MESSAGE + 1, NULL, 0, 0),
			 -EINVAL);
	assert_int_equal(frame_send(-1, 1, "x", 1, NULL, 0, 0), -EINVAL);
	unpair(sv);
}

struct sender {
	int sock;
	const uint8_t *data;
	size_t len;
	const int *fds;
	size_t nfds;
	int result;
};

static void *sender_main(void *arg)
{
	struct sender *s = arg;

	s->result = frame_send(s->sock, 7, s->data, s->len, s->fds,
				       s->nfds, 10000);
	return NULL;
}

/* 1 MiB with 3 fds: 18 fragments; a thread sends so the test does not rely
 * on the socket buffer holding the whole message. */
static void test_big_message_fragmented(void **state)
{
	int base = count_fds();
	size_t len = 1024 * 1024;
	uint8_t *data = malloc(len);
	int fds[3];
	struct sender s;
	struct frame_msg m;
	pthread_t th;
	int sv[2];

	assert_non_null(data);
	for (size_t i = 0; i < len; i++)
		data[i] = (uint8_t)(i * 31 + (i >> 16));
	for (int i = 0; i < 3; i++)
		assert_true((fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0);
	pair(sv);
	s = (struct sender){ sv[0], data, len, fds, 3, -1 };
	assert_int_equal(pthread_create(&th, NULL, sender_main, &s), 0);
	assert_int_equal(frame_recv(sv[1], &m, 10000), 0);
	pthread_join(th, NULL);
	assert_int_equal(s.result, 0);
	assert_int_equal(m.type, 7);
	assert_int_equal(m.len, len);
	assert_memory_equal(m.data, data, len);
	assert_int_equal(m.nfds, 3);
	frame_msg_clear(&m);

	/* The exact maximum size goes through too. */
	free(data);
	len = FRAME_MAX_MESSAGE;
	data = calloc(1, len);
	assert_non_null(data);
	data[len - 1] = 0x5a;
	s = (struct sender){ sv[0], data, len, NULL, 0, -1 };
	assert_int_equal(pthread_create(&th, NULL, sender_main, &s), 0);
	assert_int_equal(frame_recv(sv[1], &m, 10000), 0);
	pthread_join(th, NULL);
	assert_int_equal(s.result, 0);
	assert_int_equal(m.len, len);
	assert_int_equal(m.data[len - 1], 0x5a);
	frame_msg_clear(&m);

	for (int i = 0; i < 3; i++)
		close(fds[i]);
	free(data);
	unpair(sv);
	assert_int_equal(count_fds(), base);
}

static void test_truncated_datagram(void **state)
{
	int base = count_fds();
	size_t big = FRAME_FRAGMENT + 1;
	uint8_t *payload = calloc(1, big);
	struct raw_hdr h;
	int sv[2];

	assert_non_null(payload);
	/* Larger than any fragment: arrives with MSG_TRUNC. */
	pair(sv);
	h = good_hdr(1, (uint32_t)big, 2);
	raw_send_fds(sv[0], &h, payload, big, 2);
	expect_error(sv, -EPROTO, base);

	/* Shorter than a header. */
	pair(sv);
	assert_int_equal(send(sv[0], "\x70\xba\x01\x01", 4, 0), 4);
	expect_error(sv, -EPROTO, base);

	/* Header length says more than the datagram holds. */
	pair(sv);
	h = good_hdr(1, 10, 1);
	raw_send_fds(sv[0], &h, payload, 9, 1);
	expect_error(sv, -EPROTO, base);
	free(payload);
}

static void test_bad_header_fields(void **state)
{
	int base = count_fds();
	struct raw_hdr h;
	int sv[2];

	pair(sv);
	h = good_hdr(1, 3, 1);
	h.magic = 0xBA71;
	raw_send_fds(sv[0], &h, "abc", 3, 1);
	expect_error(sv, -EPROTO, base);

	pair(sv);
	h = good_hdr(1, 3, 1);
	h.version = FRAME_VERSION + 1;
	raw_send_fds(sv[0], &h, "abc", 3, 1);
	expect_error(sv, -EPROTO, base);

	pair(sv);
	h = good_hdr(0, 3, 1);
	raw_send_fds(sv[0], &h, "abc", 3, 1);
	expect_error(sv, -EPROTO, base);

	pair(sv); /* unknown flag bit */
	h = good_hdr(1, 3, 0);
	h.flags = 0x8000;
	raw_send_fds(sv[0], &h, "abc", 3, 0);
	expect_error(sv, -EPROTO, base);
}

static void test_fds_on_later_fragment(void **state)
{
	int base = count_fds();
	struct raw_hdr h;
	int sv[2];

	pair(sv);
	h = (struct raw_hdr){ FRAME_MAGIC, FRAME_VERSION, 1,
			      FRAME_F_MORE, 1, 5, 10 };
	raw_send_fds(sv[0], &h, "01234", 5, 1);
	h = (struct raw_hdr){ FRAME_MAGIC, FRAME_VERSION, 1, 0,
			      0, 5, 10 };
	raw_send_fds(sv[0], &h, "56789", 5, 2);
	expect_error(sv, -EPROTO, base);

	/* Announced (nfds) on a later fragment, none attached. */
	pair(sv);
	h = (struct raw_hdr){ FRAME_MAGIC, FRAME_VERSION, 1,
			      FRAME_F_MORE, 0, 5, 10 };
	raw_send_fds(sv[0], &h, "01234", 5, 0);
	h = (struct raw_hdr){ FRAME_MAGIC, FRAME_VERSION, 1, 0,
			      1, 5, 10 };
	raw_send_fds(sv[0], &h, "56789", 5, 0);
	expect_error(sv, -EPROTO, base);
}

static void test_nfds_mismatch(void **state)
{
	int base = count_fds();
	struct raw_hdr h;
	int sv[2];

	pair(sv); /* header says 2, one attached */
	h = good_hdr(1, 3, 2);
	raw_send_fds(sv[0], &h, "abc", 3, 1);
	expect_error(sv, -EPROTO, base);

	pair(sv); /* header says 0, three attached */
	h = good_hdr(1, 3, 0);
	raw_send_fds(sv[0], &h, "abc", 3, 3);
	expect_error(sv, -EPROTO, base);

	pair(sv); /* header says 1, none attached */
	h = good_hdr(1, 3, 1);
	raw_send_fds(sv[0], &h, "abc", 3, 0);
	expect_error(sv, -EPROTO, base);
}

static void test_bad_totals(void **state)
{
	int base = count_fds();
	struct raw_hdr h;
	int sv[2];

	pair(sv); /* total over the maximum message */
	h = (struct raw_hdr){ FRAME_MAGIC, FRAME_VERSION, 1,
			      FRAME_F_MORE, 1, 5,
			      FRAME_MAX_MESSAGE + 1 };
	raw_send_fds(sv[0], &h, "01234", 5, 1);
	expect_error(sv, -EPROTO, base);

	pair(sv); /* last fragment but total says more */
	h = (struct raw_hdr){ FRAME_MAGIC, FRAME_VERSION, 1, 0,
			      1, 5, 6 };
	raw_send_fds(sv[0], &h, "01234", 5, 1);
	expect_error(sv, -EPROTO, base);

	pair(sv); /* total changes between fragments */
	h = (struct raw_hdr){ FRAME_MAGIC, FRAME_VERSION, 1,
			      FRAME_F_MORE, 1, 5, 10 };
	raw_send_fds(sv[0], &h, "01234", 5, 1);
	h.flags = 0;
	h.nfds = 0;
	h.total = 11;
	raw_send_fds(sv[0], &h, "56789", 5, 0);
	expect_error(sv, -EPROTO, base);

	pair(sv); /* type changes between fragments */
	h = (struct raw_hdr){ FRAME_MAGIC, FRAME_VERSION, 1,
			      FRAME_F_MORE, 1, 5, 10 };
	raw_send_fds(sv[0], &h, "01234", 5, 1);
	h.flags = 0;
	h.nfds = 0;
	h.type = 2;
	raw_send_fds(sv[0], &h, "56789", 5, 0);
	expect_error(sv, -EPROTO, base);

	pair(sv); /* fragment overruns total */
	h = (struct raw_hdr){ FRAME_MAGIC, FRAME_VERSION, 1,
			      FRAME_F_MORE, 0, 5, 8 };
	raw_send_fds(sv[0], &h, "01234", 5, 0);
	h.flags = 0;
	raw_send_fds(sv[0], &h, "56789", 5, 0);
	expect_error(sv, -EPROTO, base);

	pair(sv); /* empty fragment with MORE: no progress */
	h = (struct raw_hdr){ FRAME_MAGIC, FRAME_VERSION, 1,
			      FRAME_F_MORE, 0, 0, 8 };
	raw_send_fds(sv[0], &h, NULL, 0, 0);
	expect_error(sv, -EPROTO, base);
}

static void test_eof_and_timeouts(void **state)
{
	int base = count_fds();
	struct frame_msg m;
	struct raw_hdr h;
	int sv[2];
	int fl;

	pair(sv); /* orderly EOF */
	close(sv[0]);
	sv[0] = open("/dev/null", O_RDONLY);
	expect_error(sv, -ECONNRESET, base);

	pair(sv); /* blocking socket, nothing queued: timeout */
	expect_error(sv, -ETIMEDOUT, base);

	pair(sv); /* non-blocking socket, nothing queued: -EAGAIN at once */
	fl = fcntl(sv[1], F_GETFL);
	fcntl(sv[1], F_SETFL, fl | O_NONBLOCK);
	assert_int_equal(frame_recv(sv[1], &m, -1), -EAGAIN);
	unpair(sv);

	pair(sv); /* second fragment never comes: its fds are closed */
	h = (struct raw_hdr){ FRAME_MAGIC, FRAME_VERSION, 1,
			      FRAME_F_MORE, 2, 5, 10 };
	raw_send_fds(sv[0], &h, "01234", 5, 2);
	expect_error(sv, -ETIMEDOUT, base);

	pair(sv); /* EOF in the middle of a message */
	raw_send_fds(sv[0], &h, "01234", 5, 2);
	close(sv[0]);
	sv[0] = open("/dev/null", O_RDONLY);
	expect_error(sv, -ECONNRESET, base);
}

/* Regression: a peer that closed with our datagrams unread made recvmsg fail
 * with ECONNRESET before the datagram it had queued for us (the target's
 * ABORT was lost and the source reported "reset" instead of the reason). */
static void test_reply_survives_reset(void **state)
{
	int base = count_fds();
	struct frame_msg m;
	int sv[2];

	pair(sv);
	assert_int_equal(frame_send(sv[0], 1, "unread", 6, NULL, 0, 100), 0);
	assert_int_equal(frame_send(sv[1], 2, "reply", 5, NULL, 0, 100), 0);
	close(sv[1]);
	assert_int_equal(frame_recv(sv[0], &m, 100), 0);
	assert_int_equal(m.type, 2);
	assert_string_equal((char *)m.data, "reply");
	frame_msg_clear(&m);
	assert_int_equal(frame_recv(sv[0], &m, 100), -ECONNRESET);
	close(sv[0]);
	assert_int_equal(count_fds(), base);
}

/* MSG_CTRUNC: with SO_PASSCRED the credentials take cmsg room, so 253 fds no
 * longer fit; the kernel closes what did not fit, we must close the rest. */
static void test_ctrunc(void **state)
{
	int base = count_fds();
	struct frame_msg m;
	struct raw_hdr h;
	int one = 1;
	int sv[2];

	pair(sv);
	assert_int_equal(setsockopt(sv[1], SOL_SOCKET, SO_PASSCRED, &one,
				    sizeof(one)), 0);
	h = good_hdr(1, 3, FRAME_MAX_FDS);
	raw_send_fds(sv[0], &h, "abc", 3, FRAME_MAX_FDS);
	assert_int_equal(frame_recv(sv[1], &m, 200), -EPROTO);
	assert_int_equal(count_fds(), base + 2);

	/* Credentials next to a few fds are fine (ignored). */
	h = good_hdr(1, 3, 2);
	raw_send_fds(sv[0], &h, "abc", 3, 2);
	assert_int_equal(frame_recv(sv[1], &m, 200), 0);
	assert_int_equal(m.nfds, 2);
	frame_msg_clear(&m);
	unpair(sv);
	assert_int_equal(count_fds(), base);
}

/* The receiver at its fd limit: the kernel installs the first fds and sets
 * MSG_CTRUNC. frame_recv() refuses the message (-EPROTO);
 * frame_recv_lossy() returns it with the fds that arrived and fds_lost
 * saying how many did not (a supervisor at its limit keeps its worker's
 * control channel: custody copies are expendable). */
static int send_four_at_limit(int (*recv)(int, struct frame_msg *, int),
			      struct frame_msg *m)
{
	struct rlimit old, rl;
	int sv[2], a, b, r;
	struct raw_hdr h;

	pair(sv);
	h = good_hdr(1, 3, 4);
	raw_send_fds(sv[0], &h, "abc", 3, 4);
	/* room for exactly two more fds: the two lowest free ones */
	a = dup(0);
	b = dup(0);
	assert_true(a >= 0 && b > a);
	close(a);
	close(b);
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
	rl = old;
	rl.rlim_cur = (rlim_t)b + 1;
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
	r = recv(sv[1], m, 200);
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
	unpair(sv);
	return r;
}

static void test_ctrunc_at_fd_limit(void **state)
{
	int base = count_fds();
	struct frame_msg m;

	(void)state;
	assert_int_equal(send_four_at_limit(frame_recv, &m), -EPROTO);
	assert_int_equal(count_fds(), base);
	assert_int_equal(send_four_at_limit(frame_recv_lossy, &m), 0);
	assert_int_equal(m.nfds, 2);
	assert_int_equal(m.fds_lost, 2);
	assert_int_equal(m.len, 3);
	assert_memory_equal(m.data, "abc", 3);
	frame_msg_clear(&m);
	assert_int_equal(count_fds(), base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip_no_fds),
		cmocka_unit_test(test_roundtrip_one_fd),
		cmocka_unit_test(test_roundtrip_max_fds),
		cmocka_unit_test(test_send_rejects_bad_arguments),
		cmocka_unit_test(test_big_message_fragmented),
		cmocka_unit_test(test_truncated_datagram),
		cmocka_unit_test(test_bad_header_fields),
		cmocka_unit_test(test_fds_on_later_fragment),
		cmocka_unit_test(test_nfds_mismatch),
		cmocka_unit_test(test_bad_totals),
		cmocka_unit_test(test_eof_and_timeouts),
		cmocka_unit_test(test_reply_survives_reset),
		cmocka_unit_test(test_ctrunc),
		cmocka_unit_test(test_ctrunc_at_fd_limit),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
