/* tests/unit/sessiond/test_history.c: the message store wired into a worker
 * (sessiond/history.h), with a real SQLite store in a temp dir, the sample
 * session adopted (its backlog numbered 1-6 by the backlog itself, as an
 * older release or a store-less worker left it) and an upstream socketpair
 * we play the server on:
 *  - lines from the network are stored with the store's seqs, which become
 *    the backlog's (above the adopted backlog's seqs: the floor), with
 *    sender, command and the folded target;
 *  - a store queue of one operation refuses appends: the session holds the
 *    lines, stops reading its network and relays everything in order once
 *    the store has room (none lost, none twice), and the store has them all;
 *  - a client whose lines left the cache gets them from the store
 *    (asynchronously), then the cache's, each once and in order;
 *  - a client's position reaches the store when it detaches;
 *  - a session frozen with lines still waiting for the store keeps them
 *    in its backlog. */
#include <crypt.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <sqlite3.h>

#include "common/clock.h"
#include "common/config.h"
#include "sessiond/backlog.h"
#include "sessiond/bouncer.h"
#include "sessiond/history.h"
#include "state.pb-c.h"
#include "sessiond/item.h"
#include "sessiond/session.h"
#include "sessiond/state.h"
#include "store/store.h"
#include "test_env.h"

#define KEY "alice/example"

static char g_dir[4096], g_db[4200];
static int g_queue_ops;
static int g_net_age_days = -1; /* [network] store_max_age_days */

static void tune(struct baton_config *cfg)
{
	cfg->store_backend = CONFIG_STORE_SQLITE;
	cfg->store_path = g_db;
	cfg->store_queue_ops = g_queue_ops;
	cfg->store_queue_bytes = 32 << 20;
	for (size_t i = 0; i < cfg->nnetworks; i++) {
		cfg->networks[i].store_max_age_days = g_net_age_days;
		cfg->networks[i].store_max_mb = -1;
	}
}

struct fixture {
	struct test_env *e;
	struct history *h;
};

static int setup_with(void **state, int queue_ops)
{
	struct crypt_data cd;
	const char *tmp = getenv("TMPDIR");
	char err[512];

	memset(&cd, 0, sizeof(cd));
	snprintf(g_dir, sizeof(g_dir), "%s/baton-history-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	assert_non_null(mkdtemp(g_dir));
	snprintf(g_db, sizeof(g_db), "%s/messages.db", g_dir);
	g_queue_ops = queue_ops;
	const struct test_env_opts o = {
		.backlog_lines = 1000,
		.ping_interval_s = 600,
		.ping_timeout_s = 2400,
		.password = crypt_r("secret", "$6$testsalt$", &cd),
		.wait_tries = 2000,
		.tune = tune,
	};
	struct fixture *f = calloc(1, sizeof(*f));
	f->e = test_env_new(&o);
	f->h = history_open(f->e->base, &f->e->cfg, err, sizeof(err));
	if (!f->h)
		fail_msg("history_open: %s", err);
	bouncer_set_history(f->e->b, f->h);
	*state = f;
	return 0;
}

static int setup(void **state)
{
	return setup_with(state, 0);
}

static int setup_tiny(void **state)
{
	return setup_with(state, 1);
}

static int setup_q32(void **state)
{
	return setup_with(state, 32);
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	char p[4300];

	test_env_free(f->e); /* the bouncer closes the store */
	static const char *const files[] = { "messages.db", "messages.db-wal",
					     "messages.db-shm" };
	for (size_t i = 0; i < 3; i++) {
		snprintf(p, sizeof(p), "%s/%s", g_dir, files[i]);
		unlink(p);
	}
	rmdir(g_dir);
	free(f);
	return 0;
}

static struct session *sess(struct fixture *f)
{
	struct session *s = bouncer_session_by_key(f->e->b, KEY);
	assert_non_null(s);
	return s;
}

/* "line N" lines from the network, all in one write. */
static void send_lines(struct fixture *f, int from, int to, const char *target)
{
	size_t cap = (size_t)(to - from + 1) * 96 + 1, len = 0;
	char *buf = malloc(cap);

	for (int i = from; i <= to; i++)
		len += (size_t)snprintf(buf + len, cap - len,
					":bob!b@host.example PRIVMSG %s :line %d\r\n",
					target, i);
	assert_int_equal(send(f->e->up, buf, len, MSG_NOSIGNAL), (ssize_t)len);
	free(buf);
}

/* The numbers of the "line N" PRIVMSGs in r, in order. */
static size_t numbered(const struct rx *r, int *out, size_t max)
{
	static const char key[] = " :line ";
	size_t n = 0;
	const char *p = r->buf ? r->buf : "", *end = p + r->len;

	for (;;) {
		const char *nl = memmem(p, (size_t)(end - p), "\r\n", 2);
		if (!nl)
			break;
		const char *t = memmem(p, (size_t)(nl - p), key, sizeof(key) - 1);
		if (t && n < max)
			out[n++] = atoi(t + sizeof(key) - 1);
		p = nl + 2;
	}
	return n;
}

static void expect_range(const struct rx *r, int from, int to)
{
	int got[4096];
	size_t n = numbered(r, got, 4096);

	assert_int_equal(n, (size_t)(to - from + 1));
	for (size_t i = 0; i < n; i++)
		assert_int_equal(got[i], from + (int)i);
}

static int attach(struct fixture *f, const char *name, struct rx *r,
		  const char *until)
{
	char pass[256];
	snprintf(pass, sizeof(pass), "alice@%s/example:secret", name);
	int fd = test_env_register(f->e, pass, 0);
	assert_true(rx_wait_tries(f->e, r, fd, until, 3000));
	return fd;
}

static struct store_result replay_all(struct fixture *f, uint64_t after)
{
	struct store *st = history_store(f->h);
	struct store_query q = { .kind = STORE_Q_REPLAY, .network = KEY,
				 .after_seq = after, .limit = STORE_QUERY_MAX };
	struct store_result res;

	assert_int_equal(store_sync(st, 10000), 0);
	assert_int_equal(store_query(st, &q, &res, NULL, 0), 0);
	return res;
}

struct seqs {
	uint64_t v[64];
	size_t n;
};

static int collect(void *arg, uint64_t seq, int64_t t, const char *buffer,
		   const char *line)
{
	struct seqs *s = arg;
	(void)t;
	(void)buffer;
	(void)line;
	if (s->n < 64)
		s->v[s->n++] = seq;
	return 0;
}

static void test_store_seqs_are_backlog_seqs(void **state)
{
	struct fixture *f = *state;
	struct rx r = { 0 };
	int fd = attach(f, "laptop", &r, "a partial line\r\n");

	send_lines(f, 1, 3, "#Baton");
	assert_true(rx_wait_tries(f->e, &r, fd, ":line 3\r\n", 3000));
	struct store_result res = replay_all(f, 0);
	assert_int_equal(res.nrows, 3);
	struct seqs bl = { 0 };
	(void)backlog_replay(sess(f)->backlog, 6, collect, &bl);
	assert_int_equal(bl.n, 3);
	for (size_t i = 0; i < 3; i++) {
		char want[64];
		snprintf(want, sizeof(want), ":bob!b@host.example PRIVMSG #Baton :line %zu", i + 1);
		/* above the adopted backlog's 1-6, the same as the cache's */
		assert_true(res.rows[i].seq > 6);
		assert_int_equal(res.rows[i].seq, bl.v[i]);
		assert_string_equal(res.rows[i].line, want);
		assert_string_equal(res.rows[i].target, "#baton"); /* folded */
		assert_string_equal(res.rows[i].sender, "bob!b@host.example");
		assert_string_equal(res.rows[i].command, "PRIVMSG");
	}
	assert_int_equal(backlog_next_seq(sess(f)->backlog), res.rows[2].seq + 1);
	store_result_free(&res);
	close(fd);
	free(r.buf);
}

static void test_full_queue_pauses_network(void **state)
{
	struct fixture *f = *state;
	struct rx r = { 0 };
	int fd = attach(f, "laptop", &r, "a partial line\r\n");
	size_t most = 0;

	send_lines(f, 1, 200, "#baton");
	/* a deadline, not a count of turns: the store commits on its own
	 * thread, and under load a count ran out first (137 of 200) */
	int64_t deadline = clock_mono_ms() + 30000;
	for (int i = 0; clock_mono_ms() < deadline &&
			!(r.buf && memmem(r.buf, r.len, ":line 200\r\n", 11)); i++) {
		test_env_pump(f->e);
		rx_read_max(&r, fd, 0);
		size_t p = history_pending(f->h, sess(f));
		if (p > most)
			most = p;
		if (i % 50 == 0)
			usleep(1000);
	}
	/* Lines waited (the queue refused) and all came, in order, once. */
	assert_true(most > 0);
	expect_range(&r, 1, 200);
	struct history_stats hs;
	history_stats(f->h, &hs);
	assert_true(hs.refused > 0);
	assert_int_equal(hs.pending_now, 0);
	assert_int_equal(hs.paused_sessions, 0);
	assert_int_equal(hs.errors, 0);
	struct store_result res = replay_all(f, 0);
	assert_int_equal(res.nrows, 200);
	for (size_t i = 1; i < res.nrows; i++)
		assert_true(res.rows[i].seq > res.rows[i - 1].seq);
	store_result_free(&res);
	close(fd);
	free(r.buf);
}

static void test_lost_from_cache_read_from_store(void **state)
{
	struct fixture *f = *state;
	struct rx r = { 0 }, r2 = { 0 };
	int fd = attach(f, "laptop", &r, "a partial line\r\n");

	send_lines(f, 1, 5, "#baton");
	assert_true(rx_wait_tries(f->e, &r, fd, ":line 5\r\n", 3000));
	struct store_result res = replay_all(f, 0);
	assert_int_equal(res.nrows, 5);
	store_result_free(&res);
	/* The cache loses everything it held; 'phone' (position 4 in the
	 * sample) has a gap there: the store's lines come first. */
	assert_true(backlog_trim_oldest(sess(f)->backlog, 1 << 20) > 0);
	send_lines(f, 6, 7, "#baton");
	assert_true(rx_wait_tries(f->e, &r, fd, ":line 7\r\n", 3000));
	int fd2 = attach(f, "phone", &r2, ":line 7\r\n");
	for (int i = 0; i < 100; i++)
		test_env_pump(f->e);
	rx_read_max(&r2, fd2, 0);
	expect_range(&r2, 1, 7);
	struct history_stats hs;
	history_stats(f->h, &hs);
	assert_true(hs.replay_queries >= 1);
	close(fd);
	close(fd2);
	free(r.buf);
	free(r2.buf);
}

static void test_position_to_store(void **state)
{
	struct fixture *f = *state;
	struct rx r = { 0 };
	int fd = attach(f, "laptop", &r, "a partial line\r\n");
	uint64_t pos = 0;

	send_lines(f, 1, 2, "#baton");
	assert_true(rx_wait_tries(f->e, &r, fd, ":line 2\r\n", 3000));
	say_fd(fd, "QUIT :bye");
	for (int i = 0; i < 200; i++)
		test_env_pump(f->e);
	struct store_result res = replay_all(f, 0);
	assert_int_equal(res.nrows, 2);
	assert_int_equal(store_get_position(history_store(f->h), KEY, "laptop", &pos), 0);
	assert_int_equal(pos, res.rows[1].seq);
	store_result_free(&res);
	close(fd);
	free(r.buf);
}

/* Retention: the network's store_max_age_days reaches the store for its
 * sessions (the global default keeps everything). A line stamped 2001 by
 * the network's @time is past a day; the one after it is not. */
static void retention_case(void **state, bool expect_deleted)
{
	struct fixture *f = *state;
	static const char lines[] =
		"@time=2001-01-01T00:00:00.000Z :bob!b@host.example PRIVMSG #baton :line 1\r\n"
		":bob!b@host.example PRIVMSG #baton :line 2\r\n";
	struct rx r = { 0 };
	int fd = attach(f, "laptop", &r, "a partial line\r\n");

	assert_int_equal(send(f->e->up, lines, sizeof(lines) - 1, MSG_NOSIGNAL),
			 (ssize_t)(sizeof(lines) - 1));
	assert_true(rx_wait_tries(f->e, &r, fd, ":line 2\r\n", 3000));
	struct store *st = history_store(f->h);
	assert_int_equal(store_sync(st, 10000), 0);
	store_retention_now(st);
	assert_int_equal(store_sync(st, 10000), 0);
	struct store_result res = replay_all(f, 0);
	assert_int_equal(res.nrows, expect_deleted ? 1 : 2);
	assert_true(strstr(res.rows[res.nrows - 1].line, "line 2") != NULL);
	store_result_free(&res);
	close(fd);
	free(r.buf);
}

static void test_retention_network_override(void **state)
{
	retention_case(state, true);
}

static void test_retention_default_keeps(void **state)
{
	retention_case(state, false);
}

static int setup_age1(void **state)
{
	g_net_age_days = 1;
	int r = setup_with(state, 0);
	g_net_age_days = -1;
	return r;
}

static void test_freeze_keeps_pending(void **state)
{
	struct fixture *f = *state;
	struct session *s = sess(f);
	size_t before = backlog_nlines(s->backlog);

	send_lines(f, 1, 100, "#baton");
	for (int i = 0; i < 2000 && history_pending(f->h, s) == 0; i++)
		test_env_pump(f->e);
	assert_true(history_pending(f->h, s) > 0);
	session_freeze(s, false);
	assert_int_equal(history_pending(f->h, s), 0);
	/* Every line read so far is in the backlog (stored or not). */
	size_t n = backlog_nlines(s->backlog) - before;
	assert_true(n > 0);
	struct history_stats hs;
	history_stats(f->h, &hs);
	assert_int_equal(hs.paused_sessions, 0);
	session_arm(s);
}

/* Another connection holds the database's write lock (BEGIN IMMEDIATE):
 * the store's writer can commit nothing until unlock_db(). */
static sqlite3 *lock_db(void)
{
	sqlite3 *db = NULL;

	assert_int_equal(sqlite3_open(g_db, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
	return db;
}

static void unlock_db(sqlite3 *db)
{
	assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
}

static void load_markers(struct fixture *f)
{
	int64_t t;

	history_markers_load(f->h, sess(f));
	for (int i = 0; i < 3000 && history_marker_get(f->h, sess(f), "#x", &t) == -EAGAIN; i++) {
		test_env_pump(f->e);
		usleep(1000); /* the query runs on the store's thread */
	}
	assert_int_not_equal(history_marker_get(f->h, sess(f), "#x", &t), -EAGAIN);
}

/* One session's MARKREADs take at most HISTORY_MARKER_BATCH places of the
 * store's queue (32 here) while the writer is stuck: the network's lines
 * that come next are queued, not refused; every marker reaches the store
 * once the writer runs again. */
static void test_markers_leave_queue_room(void **state)
{
	struct fixture *f = *state;
	struct session *s = sess(f);
	struct rx r = { 0 };
	int fd = attach(f, "laptop", &r, "a partial line\r\n");
	char target[32];

	load_markers(f);
	/* seqs reserved (the store reserves a block in the database) */
	send_lines(f, 1, 1, "#baton");
	assert_true(rx_wait_tries(f->e, &r, fd, ":line 1\r\n", 3000));
	assert_int_equal(store_sync(history_store(f->h), 10000), 0);
	struct history_stats hs;
	history_stats(f->h, &hs);
	uint64_t refused = hs.refused;
	sqlite3 *db = lock_db();
	for (int i = 0; i < 100; i++) {
		int64_t t = 1000 + i;
		snprintf(target, sizeof target, "#m%d", i);
		assert_int_equal(history_marker_set(f->h, s, target, &t), 1);
	}
	assert_true(store_queued(history_store(f->h)) <= 16);
	send_lines(f, 2, 11, "#baton");
	assert_true(rx_wait_tries(f->e, &r, fd, ":line 11\r\n", 3000));
	history_stats(f->h, &hs);
	assert_int_equal(hs.refused, refused);
	assert_int_equal(history_pending(f->h, s), 0);
	unlock_db(db);
	/* the rest follows, batch after batch */
	int64_t got = 0;
	for (int i = 0; i < 20000; i++) {
		test_env_pump(f->e);
		if (store_queued(history_store(f->h)) == 0 &&
		    store_get_read_marker(history_store(f->h), KEY, "#m99", &got) == 0 &&
		    got == 1099)
			break;
		if (i % 20 == 0)
			usleep(1000);
	}
	assert_int_equal(got, 1099);
	assert_int_equal(store_get_read_marker(history_store(f->h), KEY, "#m0", &got), 0);
	assert_int_equal(got, 1000);
	close(fd);
	free(r.buf);
}

/* HISTORY_MARKERS targets per session: one more is refused, and none is
 * ever forgotten (a get never misses a marker the store has). */
static void test_markers_bounded_never_evicted(void **state)
{
	struct fixture *f = *state;
	struct session *s = sess(f);
	char target[32];
	int64_t t;

	load_markers(f);
	for (int i = 0; i < HISTORY_MARKERS; i++) {
		t = 5000 + i;
		snprintf(target, sizeof target, "#m%d", i);
		assert_int_equal(history_marker_set(f->h, s, target, &t), 1);
	}
	t = 99999;
	assert_int_equal(history_marker_set(f->h, s, "#onemore", &t), -ENOSPC);
	assert_int_equal(history_marker_get(f->h, s, "#onemore", &t), 0);
	/* the oldest is still answered; an existing one still moves */
	assert_int_equal(history_marker_get(f->h, s, "#m0", &t), 1);
	assert_int_equal(t, 5000);
	t = 6000;
	assert_int_equal(history_marker_set(f->h, s, "#M0", &t), 1);
}

/* A stalled writer: a client's lines stop being read at
 * HISTORY_PENDING_MAX pending lines (the network's at the first), and the
 * store is reported failing after HISTORY_STALL_MS; all goes through,
 * in order, once the lock is gone. */
static void test_stalled_store_bounds_clients(void **state)
{
	struct fixture *f = *state;
	struct session *s = sess(f);
	struct rx r = { 0 }, r2 = { 0 };
	int fd = attach(f, "laptop", &r, "a partial line\r\n");
	int fd2 = attach(f, "phone", &r2, "a partial line\r\n");
	enum { N = 1500 };
	size_t cap = (size_t)N * 40, len = 0;
	char *buf = malloc(cap);

	sqlite3 *db = lock_db();
	for (int i = 1; i <= N; i++)
		len += (size_t)snprintf(buf + len, cap - len, "PRIVMSG #baton :line %d\r\n", i);
	/* a writer thread: the socket buffer is smaller than the lines */
	size_t off = 0;
	struct history_stats hs;
	int64_t t0 = clock_mono_ms();
	/* the tick (1 s) sees the stall between HISTORY_STALL_MS and 2 s
	 * after it */
	hs.failing = false;
	while (!hs.failing && clock_mono_ms() - t0 < HISTORY_STALL_MS + 4000) {
		if (off < len) {
			ssize_t w = send(fd, buf + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
			if (w > 0)
				off += (size_t)w;
		}
		test_env_pump(f->e);
		rx_read_max(&r2, fd2, 0);
		assert_true(history_pending(f->h, s) <= HISTORY_PENDING_MAX);
		history_stats(f->h, &hs);
		usleep(2000);
	}
	assert_true(clock_mono_ms() - t0 >= HISTORY_STALL_MS);
	assert_int_equal(history_pending(f->h, s), HISTORY_PENDING_MAX);
	history_stats(f->h, &hs);
	assert_true(hs.failing);
	unlock_db(db);
	int64_t deadline = clock_mono_ms() + 30000; /* as in test_full_queue_pauses_network */
	for (int i = 0; clock_mono_ms() < deadline &&
			!(r2.buf && memmem(r2.buf, r2.len, ":line 1500\r\n", 12)); i++) {
		if (off < len) {
			ssize_t w = send(fd, buf + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
			if (w > 0)
				off += (size_t)w;
		}
		test_env_pump(f->e);
		rx_read_max(&r2, fd2, 0);
		if (i % 50 == 0)
			usleep(1000);
	}
	expect_range(&r2, 1, N);
	for (int i = 0; i < 3000; i++) { /* the next ticks see progress */
		history_stats(f->h, &hs);
		if (!hs.failing)
			break;
		test_env_pump(f->e);
		usleep(1000);
	}
	assert_false(hs.failing);
	free(buf);
	close(fd);
	close(fd2);
	free(r.buf);
	free(r2.buf);
}

/* A client's line waits for the store; the client goes away and a new one
 * (at the same address, as malloc gives it back) attaches: it gets the
 * line (the pending line names its sender by serial). */
static void test_pending_except_not_by_address(void **state)
{
	struct fixture *f = *state;
	struct session *s = sess(f);
	struct rx r = { 0 }, r2 = { 0 };
	int fd = attach(f, "laptop", &r, "a partial line\r\n");
	void *first = s->clients[s->nclients - 1];

	sqlite3 *db = lock_db();
	send_lines(f, 1, 1, "#baton"); /* pending: the network's */
	for (int i = 0; i < 2000 && history_pending(f->h, s) == 0; i++)
		test_env_pump(f->e);
	say_fd(fd, "PRIVMSG #baton :line 2");
	for (int i = 0; i < 2000 && history_pending(f->h, s) < 2; i++)
		test_env_pump(f->e);
	assert_int_equal(history_pending(f->h, s), 2);
	close(fd);
	size_t n = s->nclients;
	for (int i = 0; i < 2000 && s->nclients == n; i++)
		test_env_pump(f->e);
	for (int i = 0; i < 50; i++)
		test_env_pump(f->e);
	int fd2 = attach(f, "phone", &r2, "a partial line\r\n");
	if (s->clients[s->nclients - 1] != first)
		print_message("(the new client is not at the old address: the test proves less)\n");
	unlock_db(db);
	for (int i = 0; i < 20000 && !(r2.buf && memmem(r2.buf, r2.len, ":line 2\r\n", 9)); i++) {
		test_env_pump(f->e);
		rx_read_max(&r2, fd2, 0);
		if (i % 50 == 0)
			usleep(1000);
	}
	int got[8];
	size_t k = numbered(&r2, got, 8);
	assert_true(k >= 2);
	assert_int_equal(got[k - 1], 2);
	close(fd2);
	free(r.buf);
	free(r2.buf);
}


/* ---- state schema 3: the backlog's position in the store ---- */

/* Migrate the session in place, as a worker would to a schema-3 worker:
 * freeze, write schema 3 with the store's durable seq (its member lists
 * apart), release, adopt the bytes with copies of the sockets, arm.
 * Returns the lines left out. */
static size_t migrate_schema3(struct fixture *f, size_t *bytes)
{
	struct session *s = sess(f);
	struct bouncer_item *it = &s->item, *none = NULL, *nit = NULL;
	struct state_ctx ctx = { .schema = STATE_SCHEMA_STORE_POS };
	struct state_result res;
	uint8_t *buf = NULL, **lb = NULL;
	size_t len = 0, *ll = NULL, nl = 0;
	int fds[8];
	char err[256] = "";

	assert_int_equal(store_sync(history_store(f->h), 10000), 0);
	for (int i = 0; i < 50; i++)
		test_env_pump(f->e); /* the durable callback */
	ctx.store_durable = store_durable_seq(history_store(f->h));
	assert_true(ctx.store_durable > 0);
	bouncer_item_freeze(it);
	assert_int_equal(state_serialize(it, &ctx, &buf, &len, &res), 0);
	assert_int_equal(state_serialize_lists(res.lists, res.nlists, 1 << 24,
					       &lb, &ll, &nl), 0);
	assert_true(it->nfds <= 8);
	size_t nfds = it->nfds;
	for (size_t i = 0; i < nfds; i++)
		fds[i] = dup(it->fds[i]);
	bouncer_item_release(it);
	for (size_t i = 0; i < nl; i++) {
		if (bouncer_item_adopt(f->e->b, lb[i], ll[i], NULL, 0, &none, err, sizeof(err)) < 0)
			fail_msg("lists: %s", err);
		free(lb[i]);
	}
	if (bouncer_item_adopt(f->e->b, buf, len, fds, nfds, &nit, err, sizeof(err)) < 0)
		fail_msg("adopt: %s", err);
	bouncer_chunk_end(f->e->b, true);
	bouncer_item_arm(nit);
	if (bytes)
		*bytes = len;
	free(lb);
	free(ll);
	free(buf);
	free(res.lists);
	return res.lines_stored;
}

/* What a client's replay got: from the first "line"/sample PRIVMSG on. */
static const char *replayed(const struct rx *r)
{
	const char *p = r->buf ? memmem(r->buf, r->len, ":bob!b@host.example PRIVMSG #baton :hello there", 48) : NULL;
	return p ? p : "";
}

/* After a schema-3 migration the committed lines are not in the state,
 * yet a new client name replays exactly what it replayed before (the
 * cache's lines: not the one #baton's bound had dropped), a client with
 * a position gets every line after it once and in order, and the
 * per-buffer bound's drop is kept. */
static void test_schema3_replay_same(void **state)
{
	struct fixture *f = *state;
	struct rx r = { 0 }, ra = { 0 }, rb = { 0 }, rp = { 0 };
	struct backlog_limits lim;
	int fd = attach(f, "laptop", &r, "a partial line\r\n");

	/* #baton keeps 4 lines: its first "line" drops (and 1, 2, 4 of the
	 * sample): the store has them, the cache does not */
	backlog_get_limits(sess(f)->backlog, &lim);
	lim.buffer_lines = 4;
	backlog_set_limits(sess(f)->backlog, &lim);
	send_lines(f, 6, 8, "#other"); /* first: the store read starts here */
	assert_true(rx_wait_tries(f->e, &r, fd, ":line 8\r\n", 3000));
	send_lines(f, 1, 5, "#baton");
	assert_true(rx_wait_tries(f->e, &r, fd, ":line 5\r\n", 3000));
	int fa = attach(f, "tabletA", &ra, ":line 5\r\n");
	for (int i = 0; i < 100; i++)
		test_env_pump(f->e);
	rx_read_max(&ra, fa, 0);
	close(fa);
	for (int i = 0; i < 50; i++)
		test_env_pump(f->e);

	size_t bytes = 0, stored = migrate_schema3(f, &bytes);
	assert_int_equal(stored, 7); /* #baton's 4 + #other's 3 */
	assert_true(backlog_cold_after(sess(f)->backlog, 0, NULL) > 0);
	assert_int_equal(backlog_nlines(sess(f)->backlog), 2); /* bob's, inline */

	int fb = attach(f, "tabletB", &rb, ":line 5\r\n");
	for (int i = 0; i < 100; i++)
		test_env_pump(f->e);
	rx_read_max(&rb, fb, 0);
	assert_string_equal(replayed(&rb), replayed(&ra));
	int got[64];
	size_t n = numbered(&rb, got, 64);
	/* 6-8, 2-5: not 1, which the store has between them */
	static const int want[] = { 6, 7, 8, 2, 3, 4, 5 };
	assert_int_equal(n, 7);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(got[i], want[i]);
	/* "phone" (position 4 of the sample): every line after 4, once */
	int fp = attach(f, "phone", &rp, ":line 5\r\n");
	for (int i = 0; i < 100; i++)
		test_env_pump(f->e);
	rx_read_max(&rp, fp, 0);
	static const int all[] = { 6, 7, 8, 1, 2, 3, 4, 5 };
	n = numbered(&rp, got, 64);
	assert_int_equal(n, 8);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(got[i], all[i]);
	assert_non_null(memmem(rp.buf, rp.len, "NOTICE alice :ok", 16));
	/* and the session goes on: a new line reaches everyone once */
	send_lines(f, 9, 9, "#baton");
	assert_true(rx_wait_tries(f->e, &rb, fb, ":line 9\r\n", 3000));
	n = numbered(&rb, got, 64);
	assert_int_equal(n, 8);
	close(fd);
	close(fb);
	close(fp);
	free(r.buf);
	free(ra.buf);
	free(rb.buf);
	free(rp.buf);
}

/* A schema-3 adoption's ranges go back inline for an older receiver
 * (history_cold_lines(), what a rollback writes): the same lines as
 * before the first migration, in seq order per buffer. */
static void test_schema3_rollback_inline(void **state)
{
	struct fixture *f = *state;
	struct rx r = { 0 };
	int fd = attach(f, "laptop", &r, "a partial line\r\n");

	send_lines(f, 1, 5, "#baton");
	assert_true(rx_wait_tries(f->e, &r, fd, ":line 5\r\n", 3000));
	assert_int_equal(migrate_schema3(f, NULL), 5);
	/* "phone" (position 4, no gap in the cache after it): its lines
	 * after 4 are partly in the store only */
	struct rx rp = { 0 };
	int fp = attach(f, "phone", &rp, ":line 5\r\n");
	for (int i = 0; i < 100; i++)
		test_env_pump(f->e);
	rx_read_max(&rp, fp, 0);
	expect_range(&rp, 1, 5);
	close(fp);
	free(rp.buf);
	/* a line after the migration: newer than the range, held */
	send_lines(f, 6, 6, "#baton");
	assert_true(rx_wait_tries(f->e, &r, fd, ":line 6\r\n", 3000));
	struct session *s = sess(f);
	struct state_cold_line *cold = NULL;
	size_t ncold = 0, len;
	assert_int_equal(history_cold_lines(f->h, s, &cold, &ncold), 0);
	assert_int_equal(ncold, 5);
	struct state_ctx ctx = { .schema = STATE_SCHEMA_INLINE, .cold = cold,
				 .ncold = ncold };
	struct state_result res;
	uint8_t *buf;
	bouncer_item_freeze(&s->item);
	assert_int_equal(state_serialize(&s->item, &ctx, &buf, &len, &res), 0);
	Baton__State__Item *pi = baton__state__item__unpack(NULL, len, buf);
	assert_non_null(pi);
	Baton__State__Buffer *pb = NULL;
	for (size_t i = 0; i < pi->session->n_buffers; i++)
		if (strcmp(pi->session->buffers[i]->name, "#baton") == 0)
			pb = pi->session->buffers[i];
	assert_non_null(pb);
	assert_false(pb->has_stored_from || pb->has_stored_to);
	/* inline: the sample's 1, 2, 4 and the line its partial input
	 * became (numbered by the backlog: not stored), then the 5 cold */
	assert_int_equal(pb->n_lines, 4 + 5 + 1);
	for (size_t i = 1; i < pb->n_lines; i++)
		assert_true(pb->lines[i]->seq > pb->lines[i - 1]->seq);
	assert_string_equal(pb->lines[8]->line, ":bob!b@host.example PRIVMSG #baton :line 5");
	assert_string_equal(pb->lines[9]->line, ":bob!b@host.example PRIVMSG #baton :line 6");
	baton__state__item__free_unpacked(pi, NULL);
	history_cold_lines_free(cold, ncold);
	free(res.lists);
	free(buf);
	bouncer_item_thaw(&s->item);
	close(fd);
	free(r.buf);
}


/* An attached client after a schema-3 migration whose cache is all in the
 * store (an empty cache): its position is at the ranges' end, so no store
 * read, no replay: the next line reaches it live, once. */
static void test_schema3_attached_no_read(void **state)
{
	struct fixture *f = *state;
	struct rx r = { 0 };
	struct history_stats hs;
	int fd = attach(f, "laptop", &r, "a partial line\r\n");

	(void)backlog_trim_oldest(sess(f)->backlog, 1 << 20); /* the sample's */
	send_lines(f, 1, 5, "#baton");
	assert_true(rx_wait_tries(f->e, &r, fd, ":line 5\r\n", 3000));
	for (int i = 0; i < 50; i++)
		test_env_pump(f->e);
	history_stats(f->h, &hs);
	uint64_t q0 = hs.replay_queries;
	assert_int_equal(migrate_schema3(f, NULL), 5);
	assert_int_equal(backlog_nlines(sess(f)->backlog), 0);
	for (int i = 0; i < 50; i++)
		test_env_pump(f->e);
	history_stats(f->h, &hs);
	assert_int_equal(hs.replay_queries, q0);
	send_lines(f, 6, 6, "#baton");
	assert_true(rx_wait_tries(f->e, &r, fd, ":line 6\r\n", 3000));
	for (int i = 0; i < 50; i++)
		test_env_pump(f->e);
	rx_read_max(&r, fd, 0);
	expect_range(&r, 1, 6);
	close(fd);
	free(r.buf);
}

/* Bug: with a store configured, a session's in-memory backlog was cut to
 * backlog_cache_lines whether or not a store was open. A worker serving
 * without history (the store could not be opened: PostgreSQL down at its
 * start, main.c retries) kept 50 lines of each buffer and nothing else
 * anywhere: a client away for more lost the rest for good. Without an
 * open store the bound is backlog_lines, as without a store. */
static void tune_cache_small(struct baton_config *cfg)
{
	tune(cfg);
	cfg->backlog_cache_lines = 5;
}

static void test_cache_bound_needs_an_open_store(void **state)
{
	struct crypt_data cd;
	const char *tmp = getenv("TMPDIR");
	struct rx up = { 0 };
	char line[128];

	(void)state;
	memset(&cd, 0, sizeof(cd));
	snprintf(g_dir, sizeof(g_dir), "%s/baton-history-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	assert_non_null(mkdtemp(g_dir));
	snprintf(g_db, sizeof(g_db), "%s/messages.db", g_dir);
	const struct test_env_opts o = {
		.backlog_lines = 1000,
		.ping_interval_s = 600,
		.ping_timeout_s = 2400,
		.password = crypt_r("secret", "$6$testsalt$", &cd),
		.wait_tries = 2000,
		.tune = tune_cache_small,
	};
	struct test_env *e = test_env_new(&o); /* no history_open(): not open */
	struct session *s = bouncer_session_at(e->b, 0);

	assert_non_null(s);
	assert_null(bouncer_history(e->b));
	size_t before = backlog_nlines(s->backlog);
	for (int i = 0; i < 20; i++) {
		snprintf(line, sizeof line, ":bob!b@h PRIVMSG #baton :kept %d", i);
		say_fd(e->up, line);
	}
	say_fd(e->up, "PING :sync");
	assert_true(rx_wait_tries(e, &up, e->up, "PONG :sync\r\n", 3000));
	assert_true(backlog_nlines(s->backlog) >= before + 20);
	free(up.buf);
	test_env_free(e);
	rmdir(g_dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_store_seqs_are_backlog_seqs, setup, teardown),
		cmocka_unit_test_setup_teardown(test_full_queue_pauses_network, setup_tiny, teardown),
		cmocka_unit_test_setup_teardown(test_lost_from_cache_read_from_store, setup, teardown),
		cmocka_unit_test_setup_teardown(test_position_to_store, setup, teardown),
		cmocka_unit_test_setup_teardown(test_freeze_keeps_pending, setup_tiny, teardown),
		cmocka_unit_test_setup_teardown(test_retention_network_override, setup_age1, teardown),
		cmocka_unit_test_setup_teardown(test_retention_default_keeps, setup, teardown),
		cmocka_unit_test_setup_teardown(test_markers_leave_queue_room, setup_q32, teardown),
		cmocka_unit_test_setup_teardown(test_markers_bounded_never_evicted, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stalled_store_bounds_clients, setup_tiny, teardown),
		cmocka_unit_test_setup_teardown(test_pending_except_not_by_address, setup_tiny, teardown),
		cmocka_unit_test_setup_teardown(test_schema3_replay_same, setup, teardown),
		cmocka_unit_test_setup_teardown(test_schema3_rollback_inline, setup, teardown),
		cmocka_unit_test_setup_teardown(test_schema3_attached_no_read, setup, teardown),
		cmocka_unit_test(test_cache_bound_needs_an_open_store),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
