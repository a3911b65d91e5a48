/* tests/fuzz/fuzz_upstream.c: libFuzzer target for sessiond/upstream.c (the
 * handlers of what an IRC server sends) and the invariant that ties it to
 * the migration: any state a source produced must adopt cleanly in a new
 * worker ("what T refuses S must never have accepted").
 *
 * Per input: a fresh bouncer adopts the sample session of
 * tests/unit/sessiond/sample_state.c (alice/example, registered, in two
 * channels with members, a backlog) with a socketpair as its upstream
 * connection, and arms it. The input is what the server sends on that
 * connection, after the rest of the sample's partial input line: the
 * session's own reader splits it into lines (so an input is
 * a sequence of lines, partial last line included) and dispatches each
 * through upstream_line() to its handler, exactly as in production; what the
 * session answers is read and dropped. Then the session is frozen,
 * serialized, and adopted by a second fresh bouncer: adoption must succeed,
 * or the target aborts with the reason (a state the source accepted but a
 * target refuses loses the session at the next upgrade). No fd may leak.
 *
 * Before the input, three labeled commands of the attached client await
 * the network's answer (labels bt1..bt3: labeled-response, upstream.c).
 *
 * What this target found (both fixed by common/names.h, the one validation
 * the handlers and adoption share): `:other NICK :a b` (a nick with a
 * space: "bad member") and `: JOIN #baton` (an empty source nick became a
 * member ""); with `:me JOIN :` and `:other NICK :` from the review, their
 * inputs are regression seeds in tests/fuzz/corpus/fuzz_upstream/
 * (regression-*).
 */
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/sockios.h>

#include <event2/event.h>

#include "common/config.h"
#include "common/log.h"
#include "sessiond/bouncer.h"
#include "common/util.h"
#include "sessiond/irc.h"
#include "sessiond/session.h"
#include "../unit/sessiond/sample_state.h"

#define FUZZ_MAX_INPUT 65536

static struct event_base *base;
static struct baton_config *cfg;

static void fuzz_setup(void)
{
	/* The sample's session, with timers far away (a fuzzing run must not
	 * see pings or ping timeouts), and a network nobody listens on: a
	 * reconnect never reaches anything, and none is due while we run. */
	static const char text[] =
		"[sessiond]\nping_interval = 3600\nping_timeout = 7200\n"
		"reconnect_min = 600\nreconnect_max = 1200\n"
		"[listen]\nirc = 127.0.0.1:1\n"
		"[network example]\nhost = 127.0.0.1\nport = 1\n"
		"[user alice]\npassword = $6$x$y\n"
		"[user alice/example]\nnick = alice\nchannels = #baton\n";
	struct config_problems pr = { 0 };
	char path[512];
	const char *tmp = getenv("TMPDIR");
	int fd;

	log_init("fuzz_upstream", NULL, LOG_LVL_ERROR); /* errors only: speed */
	snprintf(path, sizeof(path), "%s/fuzz-upstream-XXXXXX",
		 tmp && *tmp ? tmp : "/tmp");
	fd = mkstemp(path);
	if (fd < 0 || write(fd, text, sizeof(text) - 1) < 0)
		abort();
	close(fd);
	if (config_load(path, &cfg, &pr) < 0) {
		for (size_t i = 0; i < pr.n; i++)
			fprintf(stderr, "fuzz_upstream: config: %s\n", pr.msgs[i]);
		abort();
	}
	unlink(path);
	base = event_base_new();
	if (base == NULL)
		abort();
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		abort();
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1;
}

/* Bytes still queued towards the session (not yet read by it). */
static int unread(int ours)
{
	int n = 0;

	if (ioctl(ours, SIOCOUTQ, &n) < 0)
		return 0;
	return n;
}

/* What the session wrote to the server and to its client: dropped. */
static void drain(int ours, int cli)
{
	char buf[4096];

	while (recv(ours, buf, sizeof(buf), MSG_DONTWAIT) > 0)
		;
	while (recv(cli, buf, sizeof(buf), MSG_DONTWAIT) > 0)
		;
}

/* Feed `data` to the session and run its loop until it read everything
 * (or closed the connection). */
static void feed(int ours, int cli, const uint8_t *data, size_t size)
{
	size_t off = 0;

	for (int i = 0; i < 100000; i++) {
		if (off < size) {
			ssize_t n = send(ours, data + off, size - off,
					 MSG_DONTWAIT | MSG_NOSIGNAL);
			if (n > 0)
				off += (size_t)n;
			else if (n < 0 && errno != EAGAIN)
				off = size; /* the session closed its end */
		}
		event_base_loop(base, EVLOOP_NONBLOCK);
		drain(ours, cli);
		if (off == size && unread(ours) == 0)
			break;
	}
	event_base_loop(base, EVLOOP_NONBLOCK);
	drain(ours, cli);
}

static struct bouncer_item *session_of(struct bouncer *b)
{
	struct bouncer_item **items, *it = NULL;
	size_t n = bouncer_items(b, &items);

	for (size_t i = 0; i < n && it == NULL; i++)
		if (bouncer_item_is_session(items[i]))
			it = items[i];
	free(items);
	return it;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct bouncer *b = NULL, *b2 = NULL;
	struct bouncer_item *it = NULL, *it2 = NULL;
	struct timespec ts;
	uint8_t *sample, *state = NULL;
	size_t slen, len, nfds;
	const int *fds;
	int sv[2], cli[2], copies[8], before;
	char err[256];

	if (base == NULL)
		fuzz_setup();
	if (size > FUZZ_MAX_INPUT)
		return 0;
	before = count_fds();

	clock_gettime(CLOCK_REALTIME, &ts);
	sample = sample_item_pack_at(&slen, (int64_t)ts.tv_sec * 1000);
	b = bouncer_new(base, cfg);
	if (sample == NULL || b == NULL ||
	    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		abort();
	/* The sample carries an attached client at fd_index 1: it gets a
	 * socketpair too, and what is relayed to it is read and dropped. */
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, cli) < 0)
		abort();
	{
		int adopt_fds[2] = { sv[0], cli[0] };

		if (bouncer_item_adopt(b, sample, slen, adopt_fds, 2, &it, err,
				       sizeof(err)) < 0) {
			fprintf(stderr, "fuzz_upstream: the sample does not adopt: %s\n", err);
			abort();
		}
	}
	free(sample);
	bouncer_item_arm(it);
	it = NULL;

	/* The sample's upstream holds a partial line (":bob!... :a partial
	 * li"): complete it, so the input starts at a line boundary. */
	feed(sv[1], cli[1], (const uint8_t *)"ne\r\n", 4);
	/* labeled-response with the network: three commands of the attached
	 * client awaiting their answer (labels bt1..bt3), so that inputs
	 * reach the label and batch mapping of upstream.c. */
	{
		struct session *s = bouncer_session_at(b, 0);
		char tag[32];

		if (s == NULL || s->up == NULL || s->nclients == 0 ||
		    util_strv_push(&s->caps, &s->ncaps, "batch") < 0 ||
		    util_strv_push(&s->caps, &s->ncaps, "labeled-response") < 0)
			abort();
		if (s->clients[0]->serial == 0)
			s->clients[0]->serial = UINT64_MAX; /* client.c's are counted up from 1 */
		s->up->next_label = 0; /* the corpus's bt1..bt3 (adoption draws a start) */
		for (int i = 0; i < 3; i++)
			if (upstream_label_add(s, s->clients[0]->serial, "fz", tag, sizeof(tag)) < 0)
				abort();
	}
	feed(sv[1], cli[1], data, size);

	/* What this worker now holds must travel: serialize and adopt. */
	it = session_of(b);
	if (it == NULL) {
		fprintf(stderr, "fuzz_upstream: the session disappeared\n");
		abort();
	}
	bouncer_item_freeze(it);
	if (bouncer_item_serialize(it, &state, &len, &fds, &nfds) < 0) {
		fprintf(stderr, "fuzz_upstream: the session does not serialize\n");
		abort();
	}
	if (nfds > sizeof(copies) / sizeof(copies[0]))
		abort();
	for (size_t i = 0; i < nfds; i++)
		if ((copies[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 0)) < 0)
			abort();
	b2 = bouncer_new(base, cfg);
	if (b2 == NULL)
		abort();
	/* Ownership of the copies passes to adopt in every case. */
	if (bouncer_item_adopt(b2, state, len, copies, nfds, &it2, err,
			       sizeof(err)) < 0) {
		fprintf(stderr, "fuzz_upstream: state the source produced is refused by a target: %s\n",
			err);
		abort();
	}
	bouncer_item_discard(it2);
	bouncer_free(b2);
	free(state);
	bouncer_item_release(it); /* closes our copies: "committed" */
	bouncer_free(b);
	close(sv[1]);
	close(cli[1]);
	/* Let the event base drop what the freed bouncers left behind. */
	event_base_loop(base, EVLOOP_NONBLOCK);
	if (count_fds() != before) {
		fprintf(stderr, "fuzz_upstream: fd leak (%d -> %d)\n", before,
			count_fds());
		abort();
	}
	return 0;
}
