/* tests/unit/sessiond/test_env.c: see test_env.h. */
#include "test_env.h"

#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "sample_state.h"
#include "sessiond/bouncer.h"

void test_env_pump(struct test_env *e)
{
	event_base_loop(e->base, EVLOOP_NONBLOCK);
}

void say_fd(int fd, const char *line)
{
	/* any length (a 1 KiB buffer sent stack bytes past it for longer
	 * lines) */
	size_t n = strlen(line) + 2;
	char *buf = malloc(n + 1);

	assert_non_null(buf);
	snprintf(buf, n + 1, "%s\r\n", line);
	assert_int_equal(send(fd, buf, n, MSG_NOSIGNAL), (ssize_t)n);
	free(buf);
}

void rx_read_max(struct rx *r, int fd, size_t max)
{
	size_t got = 0;

	for (;;) {
		if (r->cap - r->len < 65536) {
			r->cap = r->cap ? r->cap * 2 : 1 << 20;
			r->buf = realloc(r->buf, r->cap + 1);
		}
		size_t want = r->cap - r->len;
		if (max && want > max - got)
			want = max - got;
		if (want == 0)
			break;
		ssize_t n = recv(fd, r->buf + r->len, want, MSG_DONTWAIT);
		if (n > 0) {
			r->len += (size_t)n;
			got += (size_t)n;
			continue;
		}
		if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
			r->eof = true; /* EOF, or the RST of a discarding close */
		break;
	}
	if (r->buf)
		r->buf[r->len] = '\0';
}

bool rx_wait_tries(struct test_env *e, struct rx *r, int fd, const char *s, int tries)
{
	for (int i = 0; i < tries; i++) {
		test_env_pump(e);
		rx_read_max(r, fd, 0);
		if (r->buf && strstr(r->buf, s))
			return true;
		if (r->eof)
			break;
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		poll(&pfd, 1, 2);
	}
	fprintf(stderr, "did not see '%s'\n", s);
	return false;
}

unsigned open_connections(struct bouncer *b)
{
	struct bouncer_stats st;
	bouncer_stats(b, &st);
	return st.connections;
}

struct bouncer_item *session_serialize(struct bouncer *b, uint8_t **buf, size_t *len,
				       const int **fds, size_t *nfds)
{
	struct bouncer_item **items, *it;
	size_t n = bouncer_items(b, &items), i;

	for (i = 0; i < n && !bouncer_item_is_session(items[i]); i++)
		;
	assert_true(i < n);
	it = items[i];
	free(items);
	bouncer_item_freeze(it);
	assert_int_equal(bouncer_item_serialize(it, buf, len, fds, nfds), 0);
	return it;
}

struct bouncer_item *adopt_copy(struct bouncer *b2, const uint8_t *buf, size_t len,
				const int *fds, size_t nfds)
{
	struct bouncer_item *it2 = NULL;
	int dup_fds[4];
	char err[256];

	assert_true(nfds <= 4);
	for (size_t j = 0; j < nfds; j++)
		dup_fds[j] = fcntl(fds[j], F_DUPFD_CLOEXEC, 0);
	assert_int_equal(bouncer_item_adopt(b2, buf, len, dup_fds, nfds, &it2, err, sizeof(err)), 0);
	return it2;
}

int test_env_connect(struct test_env *e, int rcvbuf)
{
	return test_env_connect_from(e, NULL, rcvbuf);
}

int test_env_connect_from(struct test_env *e, const char *source, int rcvbuf)
{
	int fd = socket(e->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	if (source) {
		struct sockaddr_in sin = { .sin_family = AF_INET };

		assert_int_equal(inet_pton(AF_INET, source, &sin.sin_addr), 1);
		assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	}
	if (rcvbuf)
		assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)), 0);
	assert_int_equal(connect(fd, (struct sockaddr *)&e->addr, e->addrlen), 0);
	return fd;
}

int test_env_register(struct test_env *e, const char *pass, int rcvbuf)
{
	char line[512];
	int fd = test_env_connect(e, rcvbuf);

	snprintf(line, sizeof(line), "PASS %s", pass);
	say_fd(fd, line);
	say_fd(fd, "NICK whatever");
	say_fd(fd, "USER u 0 * :Real Name");
	return fd;
}

/* The config: one network, user alice, her session with #baton. */
static void config_init(struct test_env *e, const struct test_env_opts *o)
{
	e->cfg.backlog_lines = o->backlog_lines;
	/* the bound the test means is the one in memory (store or not) */
	e->cfg.backlog_cache_lines = o->backlog_lines;
	e->cfg.max_clients_per_session = o->max_clients;
	if (o->backlog_bytes > 0) {
		e->cfg.backlog_buffer_bytes = o->backlog_bytes;
		e->cfg.backlog_session_bytes = o->backlog_bytes;
		e->cfg.backlog_session_lines = 1000000;
	}
	e->cfg.ping_interval_s = o->ping_interval_s;
	e->cfg.ping_timeout_s = o->ping_timeout_s;
	e->cfg.reconnect_min_s = 2;
	e->cfg.reconnect_max_s = 300;
	e->net = (struct config_network){ .name = "example", .host = "127.0.0.1", .port = "1" };
	e->user = (struct config_user){ .name = "alice", .password = strdup(o->password) };
	e->chans[0] = "#baton";
	e->sess = (struct config_session){ .user = "alice", .network = "example",
					   .nick = "alice", .channels = e->chans,
					   .nchannels = 1 };
	e->cfg.networks = &e->net;
	e->cfg.nnetworks = 1;
	e->cfg.users = &e->user;
	e->cfg.nusers = 1;
	e->cfg.sessions = &e->sess;
	e->cfg.nsessions = 1;
}

/* The sample session without its attached client, changed by `mutate`,
 * adopted with an upstream socketpair and armed. */
static void adopt_sample(struct test_env *e, test_env_mutate_fn mutate)
{
	size_t len;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	uint8_t *buf = sample_item_pack_at(&len, (int64_t)ts.tv_sec * 1000);
	Baton__State__Item *item = baton__state__item__unpack(NULL, len, buf);
	Baton__State__Session saved = *item->session;
	item->session->n_clients = 0;
	if (mutate)
		mutate(item->session);
	size_t l2 = baton__state__item__get_packed_size(item);
	uint8_t *b2 = malloc(l2);
	baton__state__item__pack(item, b2);
	*item->session = saved;
	baton__state__item__free_unpacked(item, NULL);

	int sv[2];
	char err[256];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	e->up = sv[1];
	assert_int_equal(bouncer_item_adopt(e->b, b2, l2, &sv[0], 1, &e->item, err, sizeof(err)), 0);
	bouncer_item_arm(e->item);
	free(buf);
	free(b2);
}

static void listen_on(struct test_env *e, const char *unix_name, int sndbuf)
{
	int lfd;

	if (unix_name) {
		struct sockaddr_un *sun = (struct sockaddr_un *)&e->addr;
		lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		sun->sun_family = AF_UNIX;
		snprintf(sun->sun_path + 1, sizeof(sun->sun_path) - 1, "%s-%d", unix_name, getpid());
		e->addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 +
					 strlen(sun->sun_path + 1));
		assert_int_equal(bind(lfd, (struct sockaddr *)&e->addr, e->addrlen), 0);
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)&e->addr;
		lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		e->addrlen = sizeof(*sin);
		sin->sin_family = AF_INET;
		sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		assert_int_equal(bind(lfd, (struct sockaddr *)&e->addr, e->addrlen), 0);
		assert_int_equal(getsockname(lfd, (struct sockaddr *)&e->addr, &e->addrlen), 0);
	}
	if (sndbuf)
		assert_int_equal(setsockopt(lfd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);
	assert_int_equal(listen(lfd, 16), 0);
	bouncer_set_listeners(e->b, &lfd, NULL, 1);
	bouncer_accept(e->b, true);
}

struct test_env *test_env_new(const struct test_env_opts *o)
{
	struct test_env *e = calloc(1, sizeof(*e));

	e->baseline_fds = count_open_fds();
	e->base = event_base_new();
	config_init(e, o);
	if (o->tune)
		o->tune(&e->cfg);
	e->b = bouncer_new(e->base, &e->cfg);
	adopt_sample(e, o->mutate);
	listen_on(e, o->unix_name, o->listen_sndbuf);

	/* the upstream flushes its queued output; complete the partial input
	 * line of the state (stored next, as seq 6 in the plain sample) */
	struct rx up = { 0 };
	assert_true(rx_wait_tries(e, &up, e->up, "PRIVMSG #baton :queued but not written\r\n",
				  o->wait_tries));
	say_fd(e->up, "ne");
	say_fd(e->up, "PING :setup");
	assert_true(rx_wait_tries(e, &up, e->up, "PONG :setup\r\n", o->wait_tries));
	free(up.buf);
	return e;
}

void test_env_free(struct test_env *e)
{
	bouncer_free(e->b);
	event_base_free(e->base);
	close(e->up);
	free(e->user.password);
	assert_int_equal(count_open_fds(), e->baseline_fds);
	free(e);
}
