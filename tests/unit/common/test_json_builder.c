/* Unit tests of common/json_builder.h: a failed constructor anywhere in a
 * document (json-c's NULL, which json_object_object_add() would store as a
 * JSON null) discards the document; a null on purpose does not; a NULL
 * container is safe to add to. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/json_builder.h"

/* fail: which value of the document is a failed constructor (-1: none). */
static struct json_object *build(int fail)
{
	struct jb jb = JB_INIT;
	struct json_object *o = jb_obj(&jb), *a = jb_arr(&jb);
	int k = 0;

#define V(expr) (k++ == fail ? jb_note(&jb, NULL) : (expr))
	jb_add(&jb, o, "version", V(jb_str(&jb, "0.1.0")));
	jb_add(&jb, o, "pid", V(jb_i64(&jb, 4242)));
	jb_add(&jb, o, "lag", V(jb_double(&jb, 0.5)));
	jb_add(&jb, o, "ok", V(jb_bool(&jb, true)));
	jb_add(&jb, o, "reason", NULL); /* a null on purpose */
	jb_push(&jb, a, V(jb_int(&jb, 1)));
	jb_push(&jb, a, V(jb_str(&jb, "two")));
	if (k++ == fail) {
		json_object_put(a); /* as if it could not be made */
		a = jb_note(&jb, NULL);
	}
	jb_add(&jb, o, "list", a);
#undef V
	return jb_done(&jb, o);
}

static void test_document(void **state)
{
	struct json_object *ref = build(-1);

	assert_non_null(ref);
	assert_string_equal(json_object_to_json_string_ext(ref, JSON_C_TO_STRING_PLAIN),
			    "{\"version\":\"0.1.0\",\"pid\":4242,\"lag\":0.5,\"ok\":true,"
			    "\"reason\":null,\"list\":[1,\"two\"]}");
	json_object_put(ref);
	for (int fail = 0; fail < 7; fail++)
		assert_null(build(fail)); /* never a document with a hole */
}

static void test_null_container(void **state)
{
	struct jb jb = JB_INIT;

	jb_add(&jb, NULL, "k", jb_str(&jb, "v")); /* the value is released */
	assert_true(jb.oom);
	jb = (struct jb)JB_INIT;
	jb_push(&jb, NULL, jb_i64(&jb, 1));
	assert_true(jb.oom);
	assert_null(jb_done(&jb, NULL));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_document),
		cmocka_unit_test(test_null_container),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
