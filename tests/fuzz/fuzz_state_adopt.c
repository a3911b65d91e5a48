/* libFuzzer target: the state decoder of the migration target side
 * (bouncer_item_adopt: protobuf decode + validation of a serialized item),
 * fed arbitrary bytes with real socket fds attached. A successful adopt is
 * discarded again (never armed), so no I/O happens.
 *
 * Input: byte 0 says how many fds come with the item (byte % 5: 0..4
 * socketpair ends), the rest is the serialized state.proto Item. The config
 * holds the session of tests/unit/sessiond/sample_state.c (alice/example,
 * as in tests/golden/state-v1.bin) and u/net, so real items get past the
 * decoding and the config check into adoption (seeds:
 * tests/fuzz/corpus/fuzz_state_adopt, from gen_state_seeds.c). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/config.h"
#include "common/log.h"
#include "sessiond/bouncer.h"

static struct event_base *base;
static struct baton_config *cfg;
static struct bouncer *b;
static int verbose;

static void fuzz_setup(void)
{
	static const char text[] =
		"[listen]\nirc = 127.0.0.1:1\n"
		"[network net]\nhost = 127.0.0.1\n"
		"[user u]\npassword = $6$x$y\n"
		"[user u/net]\nchannels = #c\n"
		"[network example]\nhost = 127.0.0.1\nport = 1\n"
		"[user alice]\npassword = $6$x$y\n"
		"[user alice/example]\nnick = alice\nchannels = #baton\n";
	struct config_problems pr = { 0 };
	char path[512];
	const char *tmp = getenv("TMPDIR");
	int fd;

	log_init("fuzz_state_adopt", NULL, LOG_LVL_ERROR);
	verbose = getenv("BATON_FUZZ_VERBOSE") != NULL;
	snprintf(path, sizeof(path), "%s/fuzz-adopt-XXXXXX",
		 tmp && *tmp ? tmp : "/tmp");
	fd = mkstemp(path);

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
	int fds[4], sv[2];
	size_t nfds;
	char err[256];

	if (b == NULL)
		fuzz_setup();
	if (size < 1)
		return 0;
	nfds = data[0] % 5;
	for (size_t i = 0; i < nfds; i++) {
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
			abort();
		fds[i] = sv[0];
		close(sv[1]);
	}
	/* Ownership of fds passes to adopt in every case. */
	if (bouncer_item_adopt(b, data + 1, size - 1, fds, nfds, &it, err,
			       sizeof(err)) == 0) {
		bouncer_item_discard(it);
		err[0] = '\0';
	}
	if (verbose) /* BATON_FUZZ_VERBOSE=1: which seeds reach adoption */
		fprintf(stderr, "fuzz_state_adopt: %zu fds, %zu bytes: %s\n",
			nfds, size - 1, err[0] ? err : "adopted");
	return 0;
}
