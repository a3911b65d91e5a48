/* libFuzzer target: the state decoder of the migration target side
 * (bouncer_item_adopt: protobuf decode + validation of a serialized item),
 * fed arbitrary bytes with three real socket fds attached. A successful adopt
 * is discarded again (never armed), so no I/O happens. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/config.h"
#include "sessiond/bouncer.h"

static struct event_base *base;
static struct baton_config *cfg;
static struct bouncer *b;

static void fuzz_setup(void)
{
	static const char text[] =
		"[listen]\nirc = 127.0.0.1:1\n"
		"[network net]\nhost = 127.0.0.1\n"
		"[user u]\npassword = $6$x$y\n"
		"[user u/net]\nchannels = #c\n";
	struct config_problems pr = { 0 };
	char path[] = "/tmp/fuzz-adopt-XXXXXX";
	int fd = mkstemp(path);

	if (fd < 0 || write(fd, text, sizeof(text) - 1) < 0)
		abort();
	close(fd);
	if (config_load(path, &cfg, &pr) < 0)
		abort();
	unlink(path);
	base = event_base_new();
	b = bouncer_new(base, cfg);
	if (b == NULL)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct bouncer_item *it = NULL;
	int fds[3], sv[2];
	char err[256];

	if (b == NULL)
		fuzz_setup();
	for (int i = 0; i < 3; i++) {
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
			abort();
		fds[i] = sv[0];
		close(sv[1]);
	}
	/* Ownership of fds passes to adopt in every case. */
	if (bouncer_item_adopt(b, data, size, fds, 3, &it, err,
			       sizeof(err)) == 0)
		bouncer_item_discard(it);
	return 0;
}
