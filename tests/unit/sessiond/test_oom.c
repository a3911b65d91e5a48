/* tests/unit/sessiond/test_oom.c: the out-of-memory policy (common/util.h)
 * where it used to be broken: an allocation failure fails the operation and
 * leaves the state as it was, never a silent NULL or a wrong answer.
 *
 * The failing allocator is the test's alone: the executable is linked with
 * -Wl,--wrap for malloc, calloc, realloc, strdup and strndup, so every call
 * from the sessiond code linked into it goes through the __wrap_ functions
 * below (nothing in production code; AddressSanitizer builds too, as the
 * __real_ functions are whatever the process's malloc is). fail_in = k
 * fails the k-th allocation from now, once. */
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

#include "sessiond/bouncer.h"
#include "sessiond/session.h"
#include "test_env.h"

/* any crypt(3) hash: no login succeeds here */
#define HASH "$6$testsalt$51yaaBMXXXt5vK522YOlIMZ267vqHtMIzc2klcsu3EEv/bkRDU9g3UmkypXf.NvlpPpIPK1nX5zdbCeJBiQbB/"

static long fail_in = -1;      /* allocations until one fails; -1: never */
static bool strdup_only;       /* count strdup/strndup calls only */
static unsigned failures;      /* injected so far */

static bool fail_now(bool is_strdup)
{
	if (fail_in < 0 || (strdup_only && !is_strdup))
		return false;
	if (fail_in-- > 0)
		return false;
	failures++;
	return true;
}

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);

void *__wrap_malloc(size_t n)
{
	return fail_now(false) ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t size)
{
	return fail_now(false) ? NULL : __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t n)
{
	return fail_now(false) ? NULL : __real_realloc(p, n);
}

char *__wrap_strdup(const char *s)
{
	return fail_now(true) ? NULL : __real_strdup(s);
}

char *__wrap_strndup(const char *s, size_t n)
{
	return fail_now(true) ? NULL : __real_strndup(s, n);
}

static void arm(long k)
{
	failures = 0;
	fail_in = k;
}

static void disarm(void)
{
	fail_in = -1;
	strdup_only = false;
}

static int reset(void **state)
{
	disarm();
	return 0;
}

struct fixture {
	struct event_base *base;
	struct bouncer *b;
	struct session *s;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	f->base = event_base_new();
	f->b = bouncer_new(f->base, NULL);
	f->s = session_new(f->b, "alice", "example");
	assert_non_null(f->s);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	disarm();
	session_free(f->s);
	bouncer_free(f->b);
	event_base_free(f->base);
	free(f);
	return 0;
}

/* A client's position: stored whole or not at all, and said so (it used to
 * fail silently). Every allocation of the operation fails once in turn. */
static void test_position(void **state)
{
	struct fixture *f = *state;
	unsigned failed_runs = 0;

	assert_int_equal(session_set_position(f->s, "default", 3), 0);
	for (long k = 0;; k++) {
		arm(k);
		int rc = session_set_position(f->s, "phone", 9);
		disarm();
		if (failures == 0) {
			assert_int_equal(rc, 0);
			assert_int_equal(session_position(f->s, "phone"), 9);
			break;
		}
		failed_runs++;
		assert_int_equal(rc, -ENOMEM);
		assert_false(session_has_position(f->s, "phone"));
		assert_int_equal(session_position(f->s, "default"), 3);
	}
	assert_true(failed_runs >= 2); /* the name's copy and the array */
}

/* An ISUPPORT token: a failed copy keeps the old value (it used to be
 * dropped silently for a new token). */
static void test_isupport(void **state)
{
	struct fixture *f = *state;
	unsigned failed_runs = 0;

	assert_int_equal(session_isupport_apply(f->s, "NETWORK=Old"), 0);
	for (long k = 0;; k++) {
		arm(k);
		int rc = session_isupport_apply(f->s, "NETWORK=New");
		disarm();
		if (failures == 0) {
			assert_int_equal(rc, 0);
			break;
		}
		failed_runs++;
		assert_int_equal(rc, -ENOMEM);
		assert_string_equal(session_isupport(f->s, "NETWORK"), "Old");
	}
	assert_true(failed_runs >= 1);
	assert_string_equal(session_isupport(f->s, "NETWORK"), "New");
	for (long k = 0;; k++) {
		arm(k);
		int rc = session_isupport_apply(f->s, "CHANTYPES=#");
		disarm();
		if (failures == 0) {
			assert_int_equal(rc, 0);
			break;
		}
		assert_int_equal(rc, -ENOMEM);
		assert_null(session_isupport(f->s, "CHANTYPES"));
	}
	assert_string_equal(session_isupport(f->s, "CHANTYPES"), "#");
}

/* The snapshot a migration starts from: out of memory is NULL, never an
 * empty list (which the source would have migrated as "nothing", losing
 * every session). */
static void test_items_snapshot(void **state)
{
	struct test_env_opts o = { .backlog_lines = 10, .password = HASH, .wait_tries = 2000 };
	struct test_env *e = test_env_new(&o); /* one adopted session */
	struct bouncer_item **items = NULL;

	arm(0);
	size_t n = bouncer_items(e->b, &items);
	disarm();
	assert_int_equal(failures, 1);
	assert_int_equal(n, 0);
	assert_null(items);
	n = bouncer_items(e->b, &items);
	assert_int_equal(n, 1);
	free(items);
	test_env_free(e);
}

/* A registration command whose copy fails closes the connection and says
 * why (NICK used to leave a NULL nick behind and the login went on without
 * it). */
static void test_pending_client_copy(void **state)
{
	struct test_env_opts o = { .backlog_lines = 10, .password = HASH, .wait_tries = 2000 };
	struct test_env *e = test_env_new(&o);
	struct rx r = { 0 };
	int fd = test_env_connect(e, 0);

	say_fd(fd, "CAP LS 302");
	assert_true(rx_wait_tries(e, &r, fd, "CAP * LS", 2000));
	strdup_only = true;
	arm(0);
	say_fd(fd, "NICK carol");
	assert_true(rx_wait_tries(e, &r, fd, "ERROR :Closing link: out of memory", 2000));
	assert_int_equal(failures, 1);
	disarm();
	free(r.buf);
	close(fd);
	for (int i = 0; i < 50; i++)
		test_env_pump(e);
	test_env_free(e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_position, setup, teardown),
		cmocka_unit_test_setup_teardown(test_isupport, setup, teardown),
		cmocka_unit_test_teardown(test_items_snapshot, reset),
		cmocka_unit_test_teardown(test_pending_client_copy, reset),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
