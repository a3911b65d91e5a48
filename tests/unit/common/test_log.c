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

/* Bug: during a migration the old and the new worker wrote identical
 * lines (under journald both are the supervisor's pid): every line now
 * names its program, pid and version, with or without journald. */
static void test_pid_and_version_on_every_line(void **state)
{
	char want[128];
	const char *out;

	snprintf(want, sizeof(want), " test[%d] 9.9.9-b WARN test: from peer: x\n",
		 (int)getpid());
	out = captured("x");
	assert_non_null(strstr(out, want));

	setenv("JOURNAL_STREAM", "8:1234", 1);
	log_init("test", "9.9.9-b", LOG_LVL_INFO);
	out = captured("x");
	/* <4> (warning) first, then the same fields, no timestamp */
	assert_memory_equal(out, "<4>", 3);
	assert_string_equal(out + 3, want + 1);
	unsetenv("JOURNAL_STREAM");
	log_init("test", "9.9.9-b", LOG_LVL_INFO);
}

int main(void)
{
	unsetenv("JOURNAL_STREAM");
	log_init("test", "9.9.9-b", LOG_LVL_INFO);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_control_bytes_replaced),
		cmocka_unit_test(test_message_bounded),
		cmocka_unit_test(test_pid_and_version_on_every_line),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
