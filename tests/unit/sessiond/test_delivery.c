/* tests/unit/sessiond/test_delivery.c: a client's delivery position is what
 * its peer's TCP acknowledged, not what was queued.
 *
 * Regression: a slow client that detached (QUIT) with lines still queued in
 * the bouncer or unacknowledged in the kernel had its position advanced past
 * them, so they were never replayed (lines lost); and then, measured from
 * TCP acknowledgements alone, a client that QUIT right after reading had
 * lines replayed it already had (delayed ACK: duplicates).
 *
 * The client is a loopback TCP socket with a small receive buffer that does
 * not read; the upstream is a socketpair we play the server on. */
#include <crypt.h>
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "state.pb-c.h"

#include "common/config.h"
#include "sample_state.h"
#include "sessiond/bouncer.h"
#include "test_env.h"

#define NLINES 20000 /* ~2 MB: more than the socket buffers hold */

static void pump(struct test_env *e)
{
	test_env_pump(e);
}

static void rx_read(struct rx *r, int fd)
{
	rx_read_max(r, fd, 0);
}

static bool rx_wait(struct test_env *e, struct rx *r, int fd, const char *s)
{
	return rx_wait_tries(e, r, fd, s, 2000);
}

/* Numbers of the complete "line N" lines in r, in arrival order (a partial
 * last line does not count: the peer never got it whole). Linear: every
 * search is bounded by the line (strstr on the rest of a 2 MB buffer per
 * line is quadratic under ASan, whose interceptor reads the whole
 * haystack). */
static size_t numbered(const struct rx *r, int *out, size_t max)
{
	static const char key[] = "PRIVMSG #baton :line ";
	size_t n = 0;
	const char *p = r->buf ? r->buf : "", *end = p + r->len;

	for (;;) {
		const char *nl = memmem(p, (size_t)(end - p), "\r\n", 2);
		if (!nl)
			break;
		const char *t = memmem(p, (size_t)(nl - p), key, sizeof(key) - 1);
		if (t && n < max) {
			/* digits by hand: atoi under ASan's strict_string_checks
			 * (scripts/test) takes the strlen of the whole rest of
			 * the buffer first, quadratic over a replay (30 s) */
			int v = 0;
			for (const char *d = t + sizeof(key) - 1; d < nl && *d >= '0' && *d <= '9'; d++)
				v = v * 10 + (*d - '0');
			out[n++] = v;
		}
		p = nl + 2;
	}
	return n;
}

static int setup(void **state)
{
	struct crypt_data cd;

	memset(&cd, 0, sizeof(cd));
	const struct test_env_opts o = {
		.backlog_lines = NLINES + 100,
		.backlog_bytes = 64 << 20,
		.ping_interval_s = 600,
		.ping_timeout_s = 2400,
		.password = crypt_r("secret", "$6$testsalt$", &cd),
		.wait_tries = 2000,
	};
	*state = test_env_new(&o);
	return 0;
}

static int teardown(void **state)
{
	test_env_free(*state);
	return 0;
}

/* A registered client named `name` on loopback TCP, its replay read (the
 * sample's last line, seq 6, is in it: the client starts from position 0
 * the first time). rcvbuf 0: default. */
static int attach(struct test_env *e, const char *name, int rcvbuf, struct rx *r,
		  const char *until)
{
	char pass[256];
	snprintf(pass, sizeof(pass), "alice@%s/example:secret", name);
	int fd = test_env_register(e, pass, rcvbuf);
	assert_true(rx_wait(e, r, fd, until));
	return fd;
}

/* NLINES channel lines from the upstream while the slow client reads
 * nothing; returns once the bouncer processed them all. */
static void flood(struct test_env *e)
{
	char chunk[16384];
	size_t clen = 0;
	int next = 1;
	struct rx up = { 0 };

	while (next <= NLINES || clen) {
		while (next <= NLINES && clen + 200 < sizeof(chunk))
			clen += (size_t)snprintf(chunk + clen, sizeof(chunk) - clen,
						 ":bob!b@host.example PRIVMSG #baton :line %d "
						 "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n",
						 next++);
		ssize_t n = send(e->up, chunk, clen, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n > 0) {
			memmove(chunk, chunk + n, clen - (size_t)n);
			clen -= (size_t)n;
		}
		pump(e);
	}
	say_fd(e->up, "PING :flooded");
	assert_true(rx_wait(e, &up, e->up, "PONG :flooded\r\n"));
	free(up.buf);
}

/* The session item of a bouncer, frozen and serialized (then thawed):
 * the stored position of client `name` and the seq of "line k". */
static void stored_position(struct bouncer *b, const char *name, int k,
			    uint64_t *pos, uint64_t *seq_k, bool *has_delivery)
{
	uint8_t *buf;
	size_t len, nfds;
	const int *fds;
	char want[64];

	struct bouncer_item *it = session_serialize(b, &buf, &len, &fds, &nfds);
	Baton__State__Item *item = baton__state__item__unpack(NULL, len, buf);
	assert_non_null(item);
	*pos = 0;
	for (size_t j = 0; j < item->session->n_positions; j++)
		if (strcmp(item->session->positions[j]->client_id, name) == 0)
			*pos = item->session->positions[j]->seq;
	*seq_k = 0;
	snprintf(want, sizeof(want), "PRIVMSG #baton :line %d ", k);
	for (size_t j = 0; j < item->session->n_buffers; j++) {
		const Baton__State__Buffer *pb = item->session->buffers[j];
		for (size_t l = 0; l < pb->n_lines; l++)
			if (strstr(pb->lines[l]->line, want))
				*seq_k = pb->lines[l]->seq;
	}
	if (has_delivery) {
		*has_delivery = false;
		for (size_t j = 0; j < item->session->n_clients; j++)
			if (item->session->clients[j]->delivery &&
			    item->session->clients[j]->delivery->n_marks > 0)
				*has_delivery = true;
	}
	baton__state__item__free_unpacked(item, NULL);
	free(buf);
	bouncer_item_thaw(it);
}


/* The slow client (attached to b) QUITs; returns k: it received lines 1..k
 * whole, in order, no gap, and nothing after k arrives later either.
 * read_now: it reads right after QUIT up to our EOF, then closes (a client
 * that reads everything: the graceful close). Otherwise it reads nothing
 * until the bouncer gave up on it (the grace deadline), then reads what its
 * kernel holds. Either way the bouncer has finished with the connection
 * when this returns. */
static int quit_and_read(struct test_env *e, struct bouncer *b, int fd,
			 int quiet_ms, bool read_now)
{
	struct rx r = { 0 };
	static int nums[NLINES + 10];
	unsigned before = open_connections(b);
	struct timespec t0, t1;

	/* Let the peer's kernel acknowledge what it took (delayed ACK). */
	for (int i = 0; i < quiet_ms; i++) {
		pump(e);
		usleep(1000);
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	say_fd(fd, "QUIT :bye");
	if (!read_now) {
		for (int i = 0; i < 2300; i++) { /* past the 2 s grace */
			pump(e);
			usleep(1000);
		}
		assert_int_equal(open_connections(b), before - 1);
	}
	for (int i = 0; i < 5000 && !r.eof; i++) {
		pump(e);
		rx_read(&r, fd);
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		poll(&pfd, 1, 2);
	}
	assert_true(r.eof);
	close(fd);
	if (read_now) {
		/* The whole output, then the ERROR line, then our FIN. */
		const char *err = "ERROR :Closing link: quit\r\n";
		assert_true(r.len >= strlen(err));
		assert_string_equal(r.buf + r.len - strlen(err), err);
		for (int i = 0; i < 1000 && open_connections(b) == before; i++) {
			pump(e);
			usleep(1000);
		}
		assert_int_equal(open_connections(b), before - 1);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		/* Finished by the client's EOF, not by the deadline. */
		long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
		fprintf(stderr, "closed %ld ms after QUIT\n", ms);
		assert_true(ms < 1500);
	}
	/* Checked outside the timed window: it measures the bouncer. */
	size_t n = numbered(&r, nums, NLINES + 10);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(nums[i], (int)i + 1); /* in order, no gap */
	free(r.buf);
	return (int)n;
}

/* Reattach `name`: the replay holds exactly lines k+1..NLINES. */
static void reattach_gets_rest(struct test_env *e, const char *name, int k)
{
	assert_true(k >= 0);
	struct rx r = { 0 };
	static int nums[NLINES + 10];
	char last[64];

	snprintf(last, sizeof(last), ":line %d x", NLINES);
	int fd = attach(e, name, 0, &r, k == NLINES ? "End of /NAMES list" : last);
	for (int i = 0; i < 20; i++) { /* anything extra (a duplicate) */
		pump(e);
		rx_read(&r, fd);
		usleep(1000);
	}
	size_t n = numbered(&r, nums, NLINES + 10);
	assert_int_equal(n, (size_t)(NLINES - k));
	for (size_t i = 0; i < n; i++)
		assert_int_equal(nums[i], k + 1 + (int)i);
	free(r.buf);
	close(fd);
	for (int i = 0; i < 20; i++) {
		pump(e);
		usleep(1000);
	}
}

/* Regression: a client that QUIT right after reading a burst had read
 * bytes whose ACK its TCP had not sent yet (delayed ACK); the detach counted
 * them undelivered and replayed them on reattach (duplicates). Now the QUIT
 * closes gracefully: a client that reads to our EOF and closes has every
 * queued line, and its position says so exactly. */
static void test_quit_read_to_eof_exact(void **state)
{
	struct test_env *e = *state;
	struct rx r = { 0 };
	uint64_t pos, seq_k;

	int fd = attach(e, "slow", 65536, &r, "a partial line\r\n");
	free(r.buf);
	flood(e);
	int k = quit_and_read(e, e->b, fd, 0, true);
	fprintf(stderr, "client read %d of %d lines\n", k, NLINES);
	assert_int_equal(k, NLINES);
	stored_position(e->b, "slow", k, &pos, &seq_k, NULL);
	assert_true(seq_k > 0);
	assert_int_equal(pos, seq_k);
	reattach_gets_rest(e, "slow", k);
}

/* A client that QUITs and then neither reads nor closes: after the grace
 * deadline its position is what its TCP acknowledged (lines 1..k that its
 * kernel holds), the rest is discarded by a RST and replayed. QUIT right
 * after the flood: by the deadline the delayed ACKs have fired. */
static void test_quit_no_read_deadline_acked(void **state)
{
	struct test_env *e = *state;
	struct rx r = { 0 };
	uint64_t pos, seq_k;

	int fd = attach(e, "slow", 4096, &r, "a partial line\r\n");
	free(r.buf);
	flood(e);
	int k = quit_and_read(e, e->b, fd, 0, false);
	fprintf(stderr, "slow client read %d of %d lines\n", k, NLINES);
	assert_true(k > 0 && k < NLINES);
	stored_position(e->b, "slow", k, &pos, &seq_k, NULL);
	assert_true(seq_k > 0);
	assert_int_equal(pos, seq_k);
	reattach_gets_rest(e, "slow", k);
}

/* While a QUIT client is still closing, a new connection with the same
 * client name starts from the conservative position (nothing missed), and
 * the closing one's final position never moves the stored one back. */
static void test_reattach_while_closing(void **state)
{
	struct test_env *e = *state;
	struct rx r = { 0 }, r2 = { 0 };
	uint64_t pos, seq_k;
	char last[64];

	int fd = attach(e, "slow", 4096, &r, "a partial line\r\n");
	free(r.buf);
	flood(e);
	say_fd(fd, "QUIT :bye");
	for (int i = 0; i < 50; i++) {
		pump(e);
		usleep(1000);
	}
	/* The old connection neither reads nor closes; the new one gets
	 * everything the old one's TCP had not acknowledged. */
	snprintf(last, sizeof(last), ":line %d x", NLINES);
	int fd2 = attach(e, "slow", 0, &r2, last);
	for (int i = 0; i < 2300; i++) {
		pump(e);
		rx_read(&r2, fd2);
		usleep(1000);
	}
	stored_position(e->b, "slow", NLINES, &pos, &seq_k, NULL);
	/* fd2 is still attached: the stored position is the old connection's
	 * final one (or the new one's starting point), never past NLINES. */
	assert_true(pos <= seq_k);
	static int nums[NLINES + 10];
	size_t n = numbered(&r2, nums, NLINES + 10);
	assert_true(n > 0);
	assert_int_equal(nums[n - 1], NLINES);
	for (size_t i = 1; i < n; i++)
		assert_int_equal(nums[i], nums[i - 1] + 1);
	close(fd2);
	close(fd);
	for (int i = 0; i < 50; i++) {
		pump(e);
		usleep(1000);
	}
	/* The new connection detached having every line acknowledged. */
	stored_position(e->b, "slow", NLINES, &pos, &seq_k, NULL);
	assert_int_equal(pos, seq_k);
	free(r2.buf);
}

/* The same across a migration: the marks and offsets travel in the state
 * (state.proto Delivery) and the adopting bouncer detaches the client at
 * the right position. */
static void test_position_survives_migration(void **state)
{
	struct test_env *e = *state;
	struct rx r = { 0 };
	uint8_t *buf;
	size_t len, nfds;
	const int *fds;
	uint64_t pos, seq_k;

	int fd = attach(e, "slow", 4096, &r, "a partial line\r\n");
	free(r.buf);
	flood(e);

	struct bouncer *b2 = bouncer_new(e->base, &e->cfg);
	struct bouncer_item *it = session_serialize(e->b, &buf, &len, &fds, &nfds);
	Baton__State__Item *item = baton__state__item__unpack(NULL, len, buf);
	assert_int_equal(item->session->n_clients, 1);
	assert_non_null(item->session->clients[0]->delivery); /* lines in flight */
	assert_true(item->session->clients[0]->delivery->n_marks > 0);
	baton__state__item__free_unpacked(item, NULL);
	struct bouncer_item *it2 = adopt_copy(b2, buf, len, fds, nfds);
	bouncer_item_release(it); /* committed: the source lets go */
	free(buf);
	bouncer_item_arm(it2);

	int k = quit_and_read(e, b2, fd, 300, false);
	fprintf(stderr, "slow client read %d of %d lines (migrated)\n", k, NLINES);
	assert_true(k > 0 && k < NLINES);
	stored_position(b2, "slow", k, &pos, &seq_k, NULL);
	assert_true(seq_k > 0);
	assert_int_equal(pos, seq_k);
	bouncer_free(b2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_quit_read_to_eof_exact, setup, teardown),
		cmocka_unit_test_setup_teardown(test_quit_no_read_deadline_acked, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reattach_while_closing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_position_survives_migration, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
