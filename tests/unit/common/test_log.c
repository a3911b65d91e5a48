/* tests/unit/common/test_log.c: log lines quote peers' text safely. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/log.h"

/* Run log_warn with stderr captured; returns what was written (static). */
static const char *captured(const char *text)
{
	static char out[8192];
	FILE *tmp = tmpfile();
	assert_non_null(tmp);
	int saved = dup(STDERR_FILENO);
	fflush(stderr);
	dup2(fileno(tmp), STDERR_FILENO);
	log_warn("test", "from peer: %s", text);
	fflush(stderr);
	dup2(saved, STDERR_FILENO);
	close(saved);
	rewind(tmp);
	size_t n = fread(out, 1, sizeof(out) - 1, tmp);
	out[n] = '\0';
	fclose(tmp);
	return out;
}

/* Bug: a network's ERROR text (or any peer's words) was logged as sent, so
 * CR/LF forged whole log lines and ESC sequences reached the reader's
 * terminal. */
static void test_control_bytes_replaced(void **state)
{
	const char *out = captured("a\r\nINFO forged line\x1b[31m\x7f\x01z");
	assert_non_null(strstr(out, "from peer: a??INFO forged line?[31m??z\n"));
	/* exactly one line */
	assert_ptr_equal(strchr(out, '\n'), out + strlen(out) - 1);
}

/* Every message is bounded (2,047 bytes), whatever the peer sent. */
static void test_message_bounded(void **state)
{
	static char big[10000];
	memset(big, 'x', sizeof(big) - 1);
	const char *out = captured(big);
	assert_true(strlen(out) < 2047 + 100);
	assert_int_equal(out[strlen(out) - 1], '\n');
}

int main(void)
{
	unsetenv("JOURNAL_STREAM");
	log_init("test", LOG_LVL_INFO);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_control_bytes_replaced),
		cmocka_unit_test(test_message_bounded),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
