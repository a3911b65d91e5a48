/* tests/unit/store/test_store_race.c: store_append() and the setters hand
 * back the seq of the operation they queued, even when the writer thread
 * commits and frees that operation before the caller's thread gets back
 * from enqueue() (a race seen under CPU load: the seq was read from the
 * freed operation, a garbage seq became the session's next backlog seq,
 * and from then on every line of the session was refused by the store
 * with nothing queued: lines pending and clients held for good).
 *
 * The interleaving is forced, not waited for: store.c is compiled here
 * with -DSTORE_TEST_HOOKS, whose hook runs right after enqueue() lets go
 * of the store's lock; the hook waits until the writer has committed the
 * operation and freed it (its notification after free_ops()). glibc's
 * M_PERTURB fills freed memory (chunks too big for its per-thread cache:
 * the operations here carry long strings), so a read of the freed
 * operation returns 0x5a5a... instead of the seq. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "store/store.h"

#include <errno.h>
#include <malloc.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[512], path[600];
static bool hook_armed;

/* store.c calls it after enqueue() released the lock (STORE_TEST_HOOKS). */
void store_test_enqueued(struct store *st);
void store_test_enqueued(struct store *st)
{
	if (!hook_armed)
		return;
	hook_armed = false;
	int fd = store_fd(st);
	uint64_t v;
	while (read(fd, &v, sizeof v) == sizeof v)
		; /* earlier notifications */
	/* committed ... */
	assert_int_equal(store_sync(st, 10000), 0);
	/* ... and freed: the writer notifies after free_ops() */
	struct pollfd p = { .fd = fd, .events = POLLIN };
	assert_int_equal(poll(&p, 1, 10000), 1);
}

static int setup(void **state)
{
	const char *tmp = getenv("TMPDIR");
	(void)state;
	snprintf(dir, sizeof dir, "%s/baton-store-race-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof path, "%s/race.db", dir);
	/* freed memory reads 0x5a bytes (new allocations 0xa5); under ASan
	 * mallopt() is not glibc's and fails, and ASan reports the
	 * use-after-free itself */
	(void)mallopt(M_PERTURB, 0x5a);
	return 0;
}

static int teardown(void **state)
{
	char p[700];
	(void)state;
	mallopt(M_PERTURB, 0);
	static const char *const sfx[] = { "", "-wal", "-shm" };
	for (size_t i = 0; i < 3; i++) {
		snprintf(p, sizeof p, "%s%s", path, sfx[i]);
		unlink(p);
	}
	rmdir(dir);
	return 0;
}

static struct store *open_store(void)
{
	struct store_options o = { .backend = STORE_SQLITE, .url = path,
				   .queue_ops = 1, .seq_block = 8 };
	char err[256];
	struct store *st = store_open(&o, NULL, NULL, err, sizeof err);
	if (!st)
		fail_msg("store_open: %s", err);
	return st;
}

/* An append whose operation the writer commits and frees before
 * store_append() returns: the seq returned is the stored line's. */
static void test_append_seq_after_commit(void **state)
{
	(void)state;
	struct store *st = open_store();
	static char line[2048];
	memset(line, 'x', sizeof line - 1);
	struct store_msg m = { .time_ms = 1000, .network = "alice/example",
			       .target = "#baton", .sender = "bob",
			       .command = "PRIVMSG", .line = line };
	uint64_t prev = 0;
	for (int i = 0; i < 20; i++) { /* across seq blocks of 8 */
		uint64_t seq = 0;
		hook_armed = true;
		int r;
		while ((r = store_append(st, &m, &seq)) == -EAGAIN)
			usleep(1000); /* the next block is being reserved */
		assert_int_equal(r, 0);
		assert_false(hook_armed);
		assert_true(seq > prev);
		assert_int_equal(store_durable_seq(st), seq);
		prev = seq;
	}
	struct store_query q = { .kind = STORE_Q_REPLAY, .network = m.network,
				 .limit = 100 };
	struct store_result res;
	assert_int_equal(store_query(st, &q, &res, NULL, 0), 0);
	assert_int_equal(res.nrows, 20);
	assert_int_equal(res.rows[19].seq, prev);
	store_result_free(&res);
	assert_int_equal(store_close(st), 0);
}

/* The same for a position's operation seq (store_set_position()'s *op,
 * what a caller waits durability for). */
static void test_position_op_after_commit(void **state)
{
	(void)state;
	struct store *st = open_store();
	uint64_t op = 0, pos = 0;
	char net[STORE_NAME_MAX + 1], client[STORE_NAME_MAX + 1];
	memset(net, 'n', STORE_NAME_MAX);
	net[STORE_NAME_MAX] = '\0';
	memset(client, 'c', STORE_NAME_MAX);
	client[STORE_NAME_MAX] = '\0';
	hook_armed = true;
	assert_int_equal(store_set_position(st, net, client, 42, &op), 0);
	assert_false(hook_armed);
	assert_int_equal(store_durable_seq(st), op);
	assert_int_equal(store_get_position(st, net, client, &pos), 0);
	assert_int_equal(pos, 42);
	assert_int_equal(store_close(st), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_append_seq_after_commit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_position_op_after_commit, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
