/* Unit tests of common/strmap.c: put/get/replace/delete, growth across
 * thousands of keys, and reuse of deleted slots. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "common/strmap.h"

static void test_basic(void **state)
{
	struct strmap *m = strmap_new();
	int a, b;

	assert_non_null(m);
	assert_null(strmap_get(m, "x"));
	assert_int_equal(strmap_put(m, "x", &a), 0);
	assert_ptr_equal(strmap_get(m, "x"), &a);
	assert_int_equal(strmap_put(m, "x", &b), 0); /* replace */
	assert_ptr_equal(strmap_get(m, "x"), &b);
	assert_int_equal(strmap_count(m), 1);
	assert_ptr_equal(strmap_del(m, "x"), &b);
	assert_null(strmap_get(m, "x"));
	assert_null(strmap_del(m, "x"));
	assert_int_equal(strmap_count(m), 0);
	strmap_free(m);
}

static void test_many(void **state)
{
	struct strmap *m = strmap_new();
	static int values[20000];
	char key[32];

	for (int i = 0; i < 20000; i++) {
		snprintf(key, sizeof(key), "u%05d/net", i);
		assert_int_equal(strmap_put(m, key, &values[i]), 0);
	}
	assert_int_equal(strmap_count(m), 20000);
	/* delete the even ones, re-add half of them: tombstones are reused */
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < 20000; i += 2) {
			snprintf(key, sizeof(key), "u%05d/net", i);
			assert_ptr_equal(strmap_del(m, key), &values[i]);
		}
		for (int i = 0; i < 20000; i += 4) {
			snprintf(key, sizeof(key), "u%05d/net", i);
			assert_int_equal(strmap_put(m, key, &values[i]), 0);
		}
		for (int i = 0; i < 20000; i++) {
			snprintf(key, sizeof(key), "u%05d/net", i);
			if (i % 2 == 1 || i % 4 == 0)
				assert_ptr_equal(strmap_get(m, key), &values[i]);
			else
				assert_null(strmap_get(m, key));
		}
		for (int i = 0; i < 20000; i += 4) {
			snprintf(key, sizeof(key), "u%05d/net", i);
			strmap_del(m, key);
		}
		for (int i = 0; i < 20000; i += 2) {
			snprintf(key, sizeof(key), "u%05d/net", i);
			assert_int_equal(strmap_put(m, key, &values[i]), 0);
		}
	}
	assert_int_equal(strmap_count(m), 20000);
	strmap_free(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_basic),
		cmocka_unit_test(test_many),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
