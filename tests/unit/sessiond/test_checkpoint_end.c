/* sessiond/checkpoint.c: when custody ends in the worker after an error
 * (here the log cannot grow: RLIMIT_FSIZE), the supervisor is told with a
 * CUSTODY end and a reason, so it can release the copies it holds. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/control.h"
#include "common/frame.h"
#include "control.pb-c.h"
#include "sessiond/checkpoint.h"
#include "sessiond/control_queue.h"

static void test_error_ends_custody_and_tells(void **state)
{
	struct event_base *base = event_base_new();
	struct control_queue *q;
	struct rlimit old, rl;
	size_t big = (17u << 20);
	uint8_t *in = calloc(1, big);
	bool end = false;
	char reason[128] = "";
	int sv[2];

	(void)state;
	assert_non_null(base);
	assert_non_null(in);
	signal(SIGXFSZ, SIG_IGN); /* ftruncate past the limit: EFBIG only */
	assert_int_equal(frame_socketpair(sv), 0);
	q = control_queue_new(base, sv[0]);
	assert_non_null(q);
	assert_int_equal(checkpoint_start(base, NULL, q, 1000), 0);
	assert_true(checkpoint_on());
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	rl = old;
	rl.rlim_cur = 16u << 20; /* the log's first size: it cannot grow */
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &rl), 0);
	checkpoint_conn_input(1, in, big);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	assert_false(checkpoint_on());
	control_queue_flush(q, 1000);
	for (;;) {
		struct frame_msg m = { 0 };
		Baton__Control__Custody *cm;

		if (frame_recv(sv[1], &m, 200) < 0)
			break;
		if (m.type == CONTROL_CUSTODY &&
		    (cm = baton__control__custody__unpack(NULL, m.len, m.data)) != NULL) {
			if (cm->has_end && cm->end) {
				end = true;
				snprintf(reason, sizeof(reason), "%s", cm->reason ? cm->reason : "");
			}
			baton__control__custody__free_unpacked(cm, NULL);
		}
		frame_msg_clear(&m);
		if (end)
			break;
	}
	assert_true(end);
	assert_string_equal(reason, "cannot grow the checkpoint log");
	control_queue_free(q);
	close(sv[0]);
	close(sv[1]);
	free(in);
	event_base_free(base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_error_ends_custody_and_tells),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
