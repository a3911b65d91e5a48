/* Unit tests of common/passhash.c: --check's verdict on configured password
 * hashes. Regression: a hash cut off when pasted ("$6$salt$hash" style)
 * loaded fine and silently refused every login of that user. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <crypt.h>

#include "common/passhash.h"

static enum passhash_verdict verdict(const char *hash, const char *want_why)
{
	char why[512];
	enum passhash_verdict v = passhash_check(hash, why, sizeof(why));

	if (want_why != NULL && strstr(why, want_why) == NULL)
		fail_msg("'%s': why '%s' lacks '%s'", hash ? hash : "(null)", why, want_why);
	return v;
}

static void test_real_hashes(void **state)
{
	struct crypt_data cd;
	const char *settings[] = { "$y$j9T$0123456789abcdef$", "$6$testsalt$",
				   "$6$rounds=5000$testsalt$", "$2b$05$abcdefghijklmnopqrstuu" };

	for (size_t i = 0; i < sizeof(settings) / sizeof(settings[0]); i++) {
		memset(&cd, 0, sizeof(cd));
		const char *h = crypt_r("secret", settings[i], &cd);

		assert_non_null(h);
		assert_int_equal(verdict(h, NULL), PASSHASH_OK);
	}
	memset(&cd, 0, sizeof(cd));
	assert_int_equal(verdict(crypt_r("secret", "$1$abcdefgh$", &cd), "legacy"),
			 PASSHASH_LEGACY);
}

static void test_bad_hashes(void **state)
{
	assert_int_equal(verdict("hunter2", "is not a crypt(3) hash (expected $y$"),
			 PASSHASH_BAD);
	assert_int_equal(verdict(NULL, "is not a crypt(3) hash"), PASSHASH_BAD);
	assert_int_equal(verdict("$6$salt$hash", "sha512crypt checksum has 4 characters where crypt(3) makes 86"),
			 PASSHASH_BAD);
	assert_int_equal(verdict("$6$salt", "no checksum"), PASSHASH_BAD);
	assert_int_equal(verdict("$y$j9T$salt$abc!", "malformed"), PASSHASH_BAD);
	assert_int_equal(verdict("$zz$whatever$x", "unknown method"), PASSHASH_BAD);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_real_hashes),
		cmocka_unit_test(test_bad_hashes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
