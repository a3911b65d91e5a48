/* tests/unit/sessiond/test_bouncer.c: the registry of sessiond/bouncer.c
 * seen through the migration item interface: which items a migration gets,
 * and that releasing them in any order keeps the registry exact. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "state.pb-c.h"

#include "sample_state.h"
#include "sessiond/bouncer.h"
#include "sessiond/conn.h"
#include "sessiond/session.h"


static struct bouncer_item *adopt_pending(struct bouncer *b, int *peer)
{
	struct bouncer_item *it = NULL;
	char err[256] = "";
	size_t len;
	uint8_t *buf = sample_pending_pack(&len);
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	*peer = sv[1];
	if (bouncer_item_adopt(b, buf, len, &sv[0], 1, &it, err, sizeof(err)) < 0)
		fail_msg("adopt failed: %s", err);
	free(buf);
	return it;
}

static bool listed(struct bouncer_item **items, size_t n,
		   const struct bouncer_item *it)
{
	for (size_t i = 0; i < n; i++)
		if (items[i] == it)
			return true;
	return false;
}

/* Bug: a pending client whose connection was already dead (authentication
 * failed, close callback queued) was handed to a migration: freezing it
 * cancelled the queued close, it was serialized as live, and the target
 * adopted it and let it try to authenticate again. */
static void test_dead_pending_not_migrated(void **state)
{
	struct fixture *f = *state;
	struct bouncer_item **items;
	struct bouncer_stats st;
	int live_peer, dead_peer;

	struct bouncer_item *live = adopt_pending(f->b, &live_peer);
	struct bouncer_item *dead = adopt_pending(f->b, &dead_peer);
	bouncer_item_arm(live);
	bouncer_item_arm(dead);
	/* what a failed authentication does from the line callback */
	conn_close(dead->client->conn, "authentication failed", false);
	int before = count_open_fds();

	size_t n = bouncer_items(f->b, &items);
	assert_int_equal(n, 1);
	assert_true(listed(items, n, live));
	assert_false(listed(items, n, dead));
	free(items);

	/* its close still runs from the loop, and frees it */
	for (int i = 0; i < 3; i++)
		event_base_loop(f->base, EVLOOP_NONBLOCK);
	assert_int_equal(count_open_fds(), before - 1);
	bouncer_stats(f->b, &st);
	assert_int_equal(st.pending, 1);
	n = bouncer_items(f->b, &items);
	assert_int_equal(n, 1);
	assert_ptr_equal(items[0], live);
	free(items);

	close(live_peer);
	close(dead_peer);
}

/* A session item without connections (no fds), user uNNNNN/example. */
static uint8_t *bare_session_pack(size_t i, size_t *len)
{
	char user[16];
	Baton__State__Session s = BATON__STATE__SESSION__INIT;
	Baton__State__Item item = BATON__STATE__ITEM__INIT;

	snprintf(user, sizeof(user), "u%05zu", i);
	s.user = user;
	s.network = "example";
	item.session = &s;
	*len = baton__state__item__get_packed_size(&item);
	uint8_t *buf = malloc(*len);
	baton__state__item__pack(&item, buf);
	return buf;
}

#define NSESSIONS 5000
#define NPENDING 50

/* Bug: releasing items after COMMIT searched the registry linearly and
 * moved its tail (O(N^2) for a migration). Items are now removed by swapping
 * the last one in; releasing them in any order must leave exactly the
 * others registered and findable. */
static void test_release_any_order(void **state)
{
	struct fixture *f = *state;
	struct bouncer_item **items;
	struct bouncer_stats st;
	int peers[NPENDING];
	char err[256];
	unsigned seed = 4242;

	for (size_t i = 0; i < NSESSIONS; i++) {
		struct bouncer_item *it = NULL;
		size_t len;
		uint8_t *buf = bare_session_pack(i, &len);
		if (bouncer_item_adopt(f->b, buf, len, NULL, 0, &it, err, sizeof(err)) < 0)
			fail_msg("adopt failed: %s", err);
		bouncer_item_arm(it);
		free(buf);
	}
	for (size_t i = 0; i < NPENDING; i++)
		bouncer_item_arm(adopt_pending(f->b, &peers[i]));

	size_t n = bouncer_items(f->b, &items);
	assert_int_equal(n, NSESSIONS + NPENDING);
	for (size_t i = n; i > 1; i--) { /* shuffle */
		size_t j = (size_t)rand_r(&seed) % i;
		struct bouncer_item *t = items[i - 1];
		items[i - 1] = items[j];
		items[j] = t;
	}
	for (size_t i = 0; i < n; i++) {
		bouncer_item_freeze(items[i]);
		bouncer_item_release(items[i]);
		items[i] = NULL;
		if (i % 701 != 0 && i != n - 1)
			continue;
		/* exactly the items not released yet are left */
		struct bouncer_item **left;
		size_t nleft = bouncer_items(f->b, &left);
		assert_int_equal(nleft, n - i - 1);
		for (size_t k = 0; k < nleft; k++)
			assert_true(listed(items + i + 1, n - i - 1, left[k]));
		for (size_t k = 0; k < nleft; k++) {
			struct session *s = left[k]->session;
			if (bouncer_item_is_session(left[k]))
				assert_ptr_equal(bouncer_find_session(f->b, s->user, s->network), s);
		}
		free(left);
	}
	bouncer_stats(f->b, &st);
	assert_int_equal(st.sessions, 0);
	assert_int_equal(st.pending, 0);
	assert_null(bouncer_find_session(f->b, "u00000", "example"));
	/* Released sessions are gone from every lookup, but their memory
	 * waits for the reaper: freed from the loop, a batch per turn. */
	assert_int_equal(bouncer_released_count(f->b), NSESSIONS);
	bouncer_released_reap(f->b);
	assert_int_equal(bouncer_released_count(f->b), NSESSIONS); /* not at once */
	for (int turns = 0; bouncer_released_count(f->b) > 0 && turns < 1000; turns++)
		event_base_loop(bouncer_base(f->b), EVLOOP_ONCE | EVLOOP_NONBLOCK);
	assert_int_equal(bouncer_released_count(f->b), 0);
	free(items);
	for (size_t i = 0; i < NPENDING; i++)
		close(peers[i]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_dead_pending_not_migrated, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_release_any_order, fixture_setup, fixture_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
