/* tests/unit/sessiond/test_abuse.c: regression tests from the adversarial
 * review of the issue 8 fixes (each test opens with the statement of its
 * bug; each failed before its fix).
 *
 *  - test_marks_bounded_while_attached: an attached client's delivery marks
 *    are only popped at detach and at serialization, so a client that stays
 *    attached keeps one 16-byte mark per line it was ever sent.
 *  - test_config_nick_migrates: a session whose configured nick (or user
 *    name, its default) fails names_nick_ok() is refused by every target
 *    ("bad nick") until a network welcomes it under another nick.
 *  - test_closing_client_restarted_session: a client finishing after QUIT
 *    raises the position of a session restarted meanwhile beyond its
 *    next_seq; every target refuses that session.
 *  - test_member_index_collisions: member indexes hash with unseeded
 *    FNV-1a and linear probing; nicks chosen to collide make a channel's
 *    member list quadratic.
 */
#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
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
#include "sessiond/session.h"
#include "test_env.h"

/* ---- delivery marks ---- */

#define NLINES 20000

/* Bug: delivery marks of an attached client are never popped while it stays
 * attached (client_acked_seq() runs only at detach/QUIT/serialize), so a
 * client that reads everything still holds one mark per line ever sent:
 * memory grows with traffic, without bound, between migrations. */
static void test_marks_bounded_while_attached(void **state)
{
	struct crypt_data cd;
	struct rx r = { 0 }, up = { 0 };
	char chunk[16384];
	size_t clen = 0;
	int next = 1;

	(void)state;
	memset(&cd, 0, sizeof(cd));
	const struct test_env_opts o = {
		.backlog_lines = 100,
		.ping_interval_s = 600,
		.ping_timeout_s = 2400,
		.password = crypt_r("secret", "$6$testsalt$", &cd),
		.wait_tries = 2000,
	};
	struct test_env *e = test_env_new(&o);
	int fd = test_env_register(e, "alice@reader/example:secret", 0);
	assert_true(rx_wait_tries(e, &r, fd, " 366 ", 2000));

	/* NLINES channel lines; the client reads all of them as they come. */
	while (next <= NLINES || clen) {
		while (next <= NLINES && clen + 200 < sizeof(chunk))
			clen += (size_t)snprintf(chunk + clen, sizeof(chunk) - clen,
						 ":bob!b@host.example PRIVMSG #baton :line %d\r\n",
						 next++);
		ssize_t n = send(e->up, chunk, clen, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n > 0) {
			memmove(chunk, chunk + n, clen - (size_t)n);
			clen -= (size_t)n;
		}
		test_env_pump(e);
		r.len = 0; /* keep reading, forget the text */
		rx_read_max(&r, fd, 0);
	}
	say_fd(e->up, "PING :flooded");
	assert_true(rx_wait_tries(e, &up, e->up, "PONG :flooded\r\n", 2000));
	char last[64];
	snprintf(last, sizeof(last), "line %d\r\n", NLINES);
	assert_true(rx_wait_tries(e, &r, fd, last, 2000));
	for (int i = 0; i < 50; i++) { /* let every ACK arrive */
		test_env_pump(e);
		rx_read_max(&r, fd, 0);
		poll(NULL, 0, 2);
	}

	struct session *s = e->item->session;
	assert_int_equal(s->nclients, 1);
	struct client *cl = s->clients[0];
	print_message("client read all %d lines; it still holds %zu delivery marks (%zu bytes allocated)\n",
		      NLINES, cl->nmarks, cl->mark_cap * sizeof(cl->marks[0]));
	/* Everything was read and acknowledged: a bounded number of marks
	 * (what may be in flight) is fine, one per line ever sent is not. */
	assert_true(cl->nmarks < NLINES / 10);

	free(r.buf);
	free(up.buf);
	close(fd);
	test_env_free(e);
}

/* ---- a configured nick that no target adopts ---- */

/* Bug: bouncer_create_session() stores the configured nick (default: the
 * user name, which config_valid_name() lets contain ',' and '!') without
 * names_nick_ok(); until a network's 001 replaces it (never, if the network
 * answers 432 to it, or is down) state_adopt() refuses the session with
 * "bad nick", and every upgrade and rollback aborts for everyone. */
static void test_config_nick_migrates(void **state)
{
	struct baton_config cfg = *config_default_values();
	struct config_network net = { .name = "example", .host = "127.0.0.1", .port = "1" };
	struct config_user user = { .name = "bob,x", .password = "$6$x$y" };
	struct config_session sess = { .user = "bob,x", .network = "example",
				       .nick = "bob,x" };
	struct event_base *base = event_base_new();
	struct bouncer_item **items, *it = NULL, *it2 = NULL;
	const int *fds;
	uint8_t *buf = NULL;
	size_t len = 0, nfds = 0, n;
	char err[256] = "";

	(void)state;
	cfg.path = "/test/baton.ini";
	cfg.networks = &net;
	cfg.nnetworks = 1;
	cfg.users = &user;
	cfg.nusers = 1;
	cfg.sessions = &sess;
	cfg.nsessions = 1;
	struct bouncer *b = bouncer_new(base, &cfg);
	struct bouncer *b2 = bouncer_new(base, &cfg);
	assert_non_null(b);
	assert_non_null(b2);
	bouncer_start_configured(b); /* the connect is only scheduled */
	n = bouncer_items(b, &items);
	assert_int_equal(n, 1);
	it = items[0];
	free(items);
	bouncer_item_freeze(it);
	assert_int_equal(bouncer_item_serialize(it, &buf, &len, &fds, &nfds), 0);
	assert_int_equal(nfds, 0);
	int rc = bouncer_item_adopt(b2, buf, len, NULL, 0, &it2, err, sizeof(err));
	if (rc < 0)
		print_message("target refused the session: %s\n", err);
	assert_int_equal(rc, 0);
	bouncer_item_discard(it2);
	bouncer_item_thaw(it);
	free(buf);
	bouncer_free(b2);
	bouncer_free(b);
	event_base_free(base);
}

/* ---- a closing client's position on a restarted session ---- */

/* Bug: client_closing_finish() raises the position of the session found by
 * key, whatever that session is now: when the session left meanwhile (its
 * chunk committed to a target that died) and was restarted here with a
 * fresh backlog (next_seq 1), the old position lands beyond next_seq and
 * state_adopt() refuses the new session ("position N of client X beyond
 * next_seq"): unmigratable until its seqs pass N. */
static void test_closing_client_restarted_session(void **state)
{
	struct crypt_data cd;
	struct rx r = { 0 };
	const int *fds;
	uint8_t *buf;
	size_t len, nfds;

	(void)state;
	memset(&cd, 0, sizeof(cd));
	const struct test_env_opts o = {
		.backlog_lines = 100,
		.ping_interval_s = 600,
		.ping_timeout_s = 2400,
		.password = crypt_r("secret", "$6$testsalt$", &cd),
		.wait_tries = 2000,
	};
	struct test_env *e = test_env_new(&o);
	int fd = test_env_register(e, "alice@q/example:secret", 0);
	assert_true(rx_wait_tries(e, &r, fd, " 366 ", 2000));
	for (int i = 1; i <= 50; i++) {
		char line[128];
		snprintf(line, sizeof(line), ":bob!b@h PRIVMSG #baton :old %d", i);
		say_fd(e->up, line);
	}
	assert_true(rx_wait_tries(e, &r, fd, "old 50\r\n", 2000));
	say_fd(fd, "QUIT :bye"); /* closing: finishing its output */
	for (int i = 0; i < 20; i++)
		test_env_pump(e);

	/* The session leaves (its chunk committed to a target)... */
	struct bouncer_item *it = session_serialize(e->b, &buf, &len, &fds, &nfds);
	free(buf);
	bouncer_item_release(it);
	e->item = NULL;
	/* ... which died: this worker restarts it from the config, fresh. */
	bouncer_start_configured(e->b);
	/* The closing client reads to our EOF and closes: its finish raises
	 * the position of "q" on the session of that key. */
	assert_true(rx_wait_tries(e, &r, fd, "ERROR :Closing link: quit", 2000));
	for (int i = 0; i < 100 && !r.eof; i++)
		rx_wait_tries(e, &r, fd, "\x01never", 1);
	close(fd);
	for (int i = 0; i < 50; i++) {
		test_env_pump(e);
		poll(NULL, 0, 2);
	}

	/* The restarted session must migrate. */
	struct bouncer *b2 = bouncer_new(e->base, &e->cfg);
	struct bouncer_item *it2 = NULL, *fresh = session_serialize(e->b, &buf, &len, &fds, &nfds);
	int dup_fds[4];
	char err[256] = "";
	for (size_t j = 0; j < nfds && j < 4; j++)
		dup_fds[j] = fcntl(fds[j], F_DUPFD_CLOEXEC, 0);
	int rc = bouncer_item_adopt(b2, buf, len, dup_fds, nfds, &it2, err, sizeof(err));
	if (rc < 0)
		print_message("target refused the restarted session: %s\n", err);
	assert_int_equal(rc, 0);
	bouncer_item_discard(it2);
	bouncer_item_thaw(fresh);
	free(buf);
	free(r.buf);
	bouncer_free(b2);
}

/* ---- member index: unseeded FNV-1a with linear probing ---- */

#define COLL_BITS 18
#define COLL_MASK ((1u << COLL_BITS) - 1)
static const char alnum[] = "abcdefghijklmnopqrstuvwxyz0123456789";

static uint32_t fnv_step(uint32_t s, unsigned char c)
{
	return (uint32_t)(((uint64_t)(s ^ c) * 1099511628211ull) & COLL_MASK);
}

/* n distinct nicks (lower case: casefolding keeps them) whose FNV-1a hash
 * (common/strmap.c) has the same low COLL_BITS bits: the low bits of FNV-1a
 * depend only on the low bits of its state, and each step is invertible
 * there, so 3-character suffixes are found backwards from the target and
 * met by forward prefixes. Into out[n][16]. */
static void colliding_nicks(char (*out)[16], size_t n)
{
	uint64_t inv = 1099511628211ull; /* inverse of the FNV prime mod 2^64 */
	for (int i = 0; i < 6; i++)
		inv *= 2 - 1099511628211ull * inv;
	int32_t *suffix_of = malloc(sizeof(int32_t) << COLL_BITS);
	const uint32_t target = 0x2a2a & COLL_MASK;

	memset(suffix_of, 0xff, sizeof(int32_t) << COLL_BITS);
	for (int a = 0; a < 36; a++)
		for (int b = 0; b < 36; b++)
			for (int c = 0; c < 36; c++) {
				/* state before "abc" such that it ends at target */
				uint32_t s = target;
				s = (uint32_t)((s * inv) & COLL_MASK) ^ (unsigned char)alnum[c];
				s = (uint32_t)((s * inv) & COLL_MASK) ^ (unsigned char)alnum[b];
				s = (uint32_t)((s * inv) & COLL_MASK) ^ (unsigned char)alnum[a];
				suffix_of[s] = a * 36 * 36 + b * 36 + c;
			}
	size_t k = 0;
	for (uint32_t i = 0; k < n; i++) {
		char pre[8];
		uint32_t s = (uint32_t)(1469598103934665603ull & COLL_MASK), v = i;

		pre[0] = 'm';
		for (int j = 1; j < 7; j++, v /= 36)
			pre[j] = alnum[v % 36];
		pre[7] = '\0';
		for (int j = 0; j < 7; j++)
			s = fnv_step(s, (unsigned char)pre[j]);
		int32_t suf = suffix_of[s];
		if (suf < 0)
			continue;
		snprintf(out[k], 16, "%s%c%c%c", pre, alnum[suf / 1296], alnum[suf / 36 % 36],
			 alnum[suf % 36]);
		uint32_t h = (uint32_t)(1469598103934665603ull & COLL_MASK);
		for (const char *p = out[k]; *p; p++)
			h = fnv_step(h, (unsigned char)*p);
		assert_int_equal(h, target);
		k++;
	}
	free(suffix_of);
}

static double add_members_s(struct session *s, const char *chan, char (*nicks)[16], size_t n)
{
	struct timespec t0, t1;
	struct channel *ch = session_add_channel(s, chan);

	assert_non_null(ch);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (size_t i = 0; i < n; i++)
		assert_non_null(channel_add_member(ch, nicks[i]));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
}

/* Bug: channel member indexes (and every strmap) hash with unseeded FNV-1a
 * and probe linearly: a network (or its users, who pick their nicks) that
 * sends NAMES full of nicks sharing the low hash bits makes each insert and
 * lookup walk one cluster, so one channel of n members costs O(n^2) in the
 * single worker that serves every user. 20,000 such nicks must not cost
 * much more than 20,000 ordinary ones. */
static void test_member_index_collisions(void **state)
{
	enum { N = 20000 };
	char (*coll)[16] = malloc(N * sizeof(*coll));
	char (*plain)[16] = malloc(N * sizeof(*plain));
	struct event_base *base = event_base_new();
	struct bouncer *b = bouncer_new(base, NULL);
	struct session *s = session_new(b, "alice", "example");

	(void)state;
	colliding_nicks(coll, N);
	for (size_t i = 0; i < N; i++)
		snprintf(plain[i], 16, "p%09zu", i * 7919);
	double tp = add_members_s(s, "#plain", plain, N);
	double tc = add_members_s(s, "#collide", coll, N);
	print_message("%d members: ordinary nicks %.3f s, colliding nicks %.3f s (x%.0f)\n",
		      N, tp, tc, tc / (tp > 1e-6 ? tp : 1e-6));
	session_free(s);
	bouncer_free(b);
	event_base_free(base);
	free(coll);
	free(plain);
	assert_true(tc < 20 * tp + 0.05);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_marks_bounded_while_attached),
		cmocka_unit_test(test_config_nick_migrates),
		cmocka_unit_test(test_closing_client_restarted_session),
		cmocka_unit_test(test_member_index_collisions),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
