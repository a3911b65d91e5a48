/* tests/unit/sessiond/test_adopt.c: what sessiond/state.c refuses to adopt
 * from a peer's state (strings that would reach the wire, delivery
 * positions past the backlog, sessions this worker cannot run) and how it
 * adopts a backlog with more buffers than a session keeps. Each rejection
 * must close every fd it was handed. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "state.pb-c.h"

#include "common/config.h"
#include "sample_state.h"
#include "sessiond/backlog.h"
#include "sessiond/bouncer.h"


/* The sample session, changed by fn. Strings set by fn must be static or
 * malloc'd (free_unpacked frees the unpacked ones). */
typedef void (*mutate_fn)(Baton__State__Item *item);

static uint8_t *sample_mutated(mutate_fn fn, size_t *len)
{
	size_t l;
	uint8_t *buf = sample_item_pack(&l);
	Baton__State__Item *item = baton__state__item__unpack(NULL, l, buf);
	assert_non_null(item);
	fn(item);
	*len = baton__state__item__get_packed_size(item);
	uint8_t *out = malloc(*len);
	baton__state__item__pack(item, out);
	baton__state__item__free_unpacked(item, NULL);
	free(buf);
	return out;
}

static void set_str(char **field, const char *value)
{
	free(*field);
	*field = strdup(value);
}

/* Adopt the sample changed by fn into b: expect rc and a reason containing
 * `why`, with both fds closed by the adopter. */
static void expect_reject(struct bouncer *b, mutate_fn fn, int rc_expected,
			  const char *why)
{
	struct bouncer_item *it = (void *)1;
	int ours[2], peers[2];
	char err[256] = "";
	size_t len;
	uint8_t *buf = sample_mutated(fn, &len);

	make_pairs(ours, peers, 2);
	int before = count_open_fds();
	int rc = bouncer_item_adopt(b, buf, len, ours, 2, &it, err, sizeof(err));
	if (rc != rc_expected)
		fail_msg("rc %d (%s), expected %d", rc, err, rc_expected);
	assert_null(it);
	if (!strstr(err, why))
		fail_msg("reason '%s' does not mention '%s'", err, why);
	assert_int_equal(count_open_fds(), before - 2);
	close_all(peers, 2);
	free(buf);
}

static struct bouncer_item *adopt_ok(struct bouncer *b, const uint8_t *buf,
				     size_t len, int *peers)
{
	struct bouncer_item *it = NULL;
	int ours[2];
	char err[256] = "";

	make_pairs(ours, peers, 2);
	int rc = bouncer_item_adopt(b, buf, len, ours, 2, &it, err, sizeof(err));
	if (rc < 0)
		fail_msg("adopt failed: %s (%d)", err, rc);
	return it;
}

/* ---- strings that reach the wire ---- */

static void prefix_crlf(Baton__State__Item *item)
{
	set_str(&item->session->channels[0]->members[1]->prefixes,
		"@\r\nPRIVMSG #baton :injected");
}

static void prefix_letter(Baton__State__Item *item)
{
	set_str(&item->session->channels[0]->members[1]->prefixes, "o");
}

static void prefix_space(Baton__State__Item *item)
{
	set_str(&item->session->channels[0]->members[1]->prefixes, "@ ");
}

static void upstream_cap_crlf(Baton__State__Item *item)
{
	Baton__State__Connection *up = item->session->upstream;
	up->caps = calloc(1, sizeof(char *));
	up->caps[0] = strdup("server-time\r\nQUIT :injected");
	up->n_caps = 1;
}

static void upstream_cap_space(Baton__State__Item *item)
{
	Baton__State__Connection *up = item->session->upstream;
	up->caps = calloc(1, sizeof(char *));
	up->caps[0] = strdup("server-time sasl");
	up->n_caps = 1;
}

static void upstream_cap_empty(Baton__State__Item *item)
{
	Baton__State__Connection *up = item->session->upstream;
	up->caps = calloc(1, sizeof(char *));
	up->caps[0] = strdup("");
	up->n_caps = 1;
}

static void session_cap_lf(Baton__State__Item *item)
{
	set_str(&item->session->caps[1], "multi-prefix\nJOIN #evil");
}

static void client_cap_cr(Baton__State__Item *item)
{
	set_str(&item->session->clients[0]->caps[0], "server-time\r");
}

/* Bug: adopt checked member prefixes only for length and capability names
 * (upstream Connection.caps, Session.caps) not at all, so a CR/LF in them
 * from a malicious or buggy peer state was written verbatim to clients
 * (NAMES) or upstream (CAP REQ). */
static void test_wire_strings_rejected(void **state)
{
	struct fixture *f = *state;

	expect_reject(f->b, prefix_crlf, -EINVAL, "bad member in #baton");
	expect_reject(f->b, prefix_letter, -EINVAL, "bad member in #baton");
	expect_reject(f->b, prefix_space, -EINVAL, "bad member in #baton");
	expect_reject(f->b, upstream_cap_crlf, -EINVAL, "upstream connection: bad capability name");
	expect_reject(f->b, upstream_cap_space, -EINVAL, "upstream connection: bad capability name");
	expect_reject(f->b, upstream_cap_empty, -EINVAL, "upstream connection: bad capability name");
	expect_reject(f->b, session_cap_lf, -EINVAL, "bad capability name");
	expect_reject(f->b, client_cap_cr, -EINVAL, "client connection: bad capability name");

	struct bouncer_stats st;
	bouncer_stats(f->b, &st);
	assert_int_equal(st.sessions, 0);
}

/* ---- delivery positions past the backlog ---- */

static void delivered_at_next(Baton__State__Item *item)
{
	item->session->clients[0]->delivered_seq = item->session->next_seq;
}

static void delivered_far(Baton__State__Item *item)
{
	item->session->clients[0]->delivered_seq = UINT64_MAX;
}

/* next_seq absent: it is the newest stored seq + 1 (6 in the sample). */
static void delivered_at_implied_next(Baton__State__Item *item)
{
	item->session->has_next_seq = 0;
	item->session->clients[0]->delivered_seq = 6;
}

/* Delivery accounting as high as the bad delivered_seq (consistent with
 * it, so only the position check can catch it). */
static void delivery_past_next(Baton__State__Item *item)
{
	Baton__State__Connection *pc = item->session->clients[0];
	Baton__State__Delivery *d = malloc(sizeof(*d));
	baton__state__delivery__init(d);
	pc->delivered_seq = 9;
	d->has_acked_seq = 1;
	d->acked_seq = 8;
	d->n_marks = 1;
	d->marks = malloc(sizeof(*d->marks));
	d->marks[0] = malloc(sizeof(*d->marks[0]));
	baton__state__delivery_mark__init(d->marks[0]);
	d->marks[0]->distance = 0;
	d->marks[0]->seq = 9;
	d->has_delivered_seq = 1;
	d->delivered_seq = 9;
	d->has_output_len = 1;
	d->output_len = pc->output.len;
	pc->delivery = d;
}

static void delivered_last(Baton__State__Item *item)
{
	item->session->clients[0]->delivered_seq = item->session->next_seq - 1;
}

/* Bug: a client Connection whose delivered_seq (or acked_seq, or a delivery
 * mark) was at or past the session's next_seq was adopted; that client then
 * silently dropped every new live line (client_deliver skips seq <=
 * delivered_seq) until the backlog caught up. */
static void test_delivered_past_next_rejected(void **state)
{
	struct fixture *f = *state;
	int peers[2];
	size_t len;

	expect_reject(f->b, delivered_at_next, -EINVAL, "client delivered_seq 6 not below next_seq 6");
	expect_reject(f->b, delivered_far, -EINVAL, "not below next_seq");
	expect_reject(f->b, delivered_at_implied_next, -EINVAL, "not below next_seq 6");
	expect_reject(f->b, delivery_past_next, -EINVAL, "client delivered_seq 9 not below next_seq 6");

	/* everything delivered (the newest seq) is fine */
	uint8_t *buf = sample_mutated(delivered_last, &len);
	struct bouncer_item *it = adopt_ok(f->b, buf, len, peers);
	bouncer_item_discard(it);
	close_all(peers, 2);
	free(buf);
}

/* ---- sessions this worker cannot run ---- */

/* Bug: adopt did not check that the session exists in this worker's config
 * (the founding incident: settings missing on the new hosts), so it was
 * adopted and then failed to reconnect forever. It must be refused with a
 * reason naming the session and the config file, so the chunk aborts and
 * the source keeps serving it. */
static void test_session_not_in_config(void **state)
{
	struct fixture *f = *state;
	struct config_network net = { .name = "example", .host = "127.0.0.1", .port = "1" };
	struct config_user user = { .name = "alice", .password = "x" };
	struct config_session other = { .user = "bob", .network = "example" };
	struct config_session alice = { .user = "alice", .network = "example" };
	struct baton_config cfg = {
		.path = "/etc/baton/new-host.ini",
		.networks = &net, .nnetworks = 1,
		.users = &user, .nusers = 1,
		.sessions = &other, .nsessions = 1,
	};
	struct bouncer *b = bouncer_new(f->base, &cfg);
	struct bouncer_item *it = (void *)1;
	int ours[2], peers[2];
	char err[256] = "";
	size_t len;
	uint8_t *buf = sample_item_pack(&len);

	make_pairs(ours, peers, 2);
	int before = count_open_fds();
	int rc = bouncer_item_adopt(b, buf, len, ours, 2, &it, err, sizeof(err));
	assert_int_equal(rc, -ENOENT);
	assert_null(it);
	assert_string_equal(err, "session alice/example is not in this worker's config (/etc/baton/new-host.ini)");
	assert_int_equal(count_open_fds(), before - 2);
	close_all(peers, 2);
	struct bouncer_stats st;
	bouncer_stats(b, &st);
	assert_int_equal(st.sessions, 0);

	/* with the session configured, the same state is adopted */
	cfg.sessions = &alice;
	it = adopt_ok(b, buf, len, peers);
	assert_non_null(it);
	bouncer_item_discard(it);
	close_all(peers, 2);
	bouncer_free(b);
	free(buf);
}

/* ---- many buffers ---- */

#define EXTRA_BUFFERS 1200

/* 1200 more query buffers q0000..q1199 with one line each, seqs 6..1205,
 * listed newest first (adopt must not depend on the order). */
static void many_buffers(Baton__State__Item *item)
{
	Baton__State__Session *ps = item->session;
	size_t n = ps->n_buffers + EXTRA_BUFFERS;

	ps->buffers = realloc(ps->buffers, n * sizeof(*ps->buffers));
	for (size_t i = 0; i < EXTRA_BUFFERS; i++) {
		Baton__State__Buffer *pb = malloc(sizeof(*pb));
		Baton__State__BacklogLine *l = malloc(sizeof(*l));
		size_t k = EXTRA_BUFFERS - 1 - i;
		char name[16], text[64];

		baton__state__buffer__init(pb);
		baton__state__backlog_line__init(l);
		snprintf(name, sizeof(name), "q%04zu", k);
		snprintf(text, sizeof(text), ":%s!u@h PRIVMSG alice :hi", name);
		pb->name = strdup(name);
		l->seq = 6 + k;
		l->time_ms = 1;
		l->line = strdup(text);
		pb->lines = malloc(sizeof(*pb->lines));
		pb->lines[0] = l;
		pb->n_lines = 1;
		ps->buffers[ps->n_buffers++] = pb;
	}
	ps->next_seq = 6 + EXTRA_BUFFERS;
}

/* Bug: query buffers were unbounded, looked up by a linear scan, and
 * serialization looked every buffer up again (O(buffers^2)). A state with
 * more buffers than a session keeps is adopted with those whose newest line
 * is newest (channel buffers last to go), and serializes in name order. */
static void test_many_buffers(void **state)
{
	struct fixture *f = *state;
	int peers[2];
	size_t len, olen, nfds;
	const int *fds;
	uint8_t *out;
	uint8_t *buf = sample_mutated(many_buffers, &len);
	struct bouncer_item *it = adopt_ok(f->b, buf, len, peers);

	assert_int_equal(bouncer_item_serialize(it, &out, &olen, &fds, &nfds), 0);
	Baton__State__Item *item = baton__state__item__unpack(NULL, olen, out);
	assert_non_null(item);
	const Baton__State__Session *ps = item->session;
	/* The default bound (config: backlog_buffers = 100). */
	assert_int_equal(ps->n_buffers, config_default_values()->backlog_buffers);
	/* 1202 buffers: bob (newest line 5) and q0000..q1100 went; #baton,
	 * a channel, stayed although its newest line is older */
	assert_string_equal(ps->buffers[0]->name, "#baton");
	assert_int_equal(ps->buffers[0]->n_lines, 3);
	assert_string_equal(ps->buffers[1]->name, "q1101");
	assert_int_equal(ps->buffers[1]->lines[0]->seq, 6 + 1101);
	assert_string_equal(ps->buffers[ps->n_buffers - 1]->name, "q1199");
	for (size_t i = 1; i < ps->n_buffers; i++)
		assert_true(strcmp(ps->buffers[i - 1]->name, ps->buffers[i]->name) < 0);
	assert_int_equal(ps->next_seq, 6 + EXTRA_BUFFERS);
	baton__state__item__free_unpacked(item, NULL);

	/* and a second pass is byte-identical */
	int ours2[2], peers2[2];
	struct bouncer *b2 = bouncer_new(f->base, NULL);
	struct bouncer_item *it2 = NULL;
	uint8_t *out2;
	size_t olen2;
	char err[256];
	make_pairs(ours2, peers2, 2);
	assert_int_equal(bouncer_item_adopt(b2, out, olen, ours2, 2, &it2, err, sizeof(err)), 0);
	assert_int_equal(bouncer_item_serialize(it2, &out2, &olen2, &fds, &nfds), 0);
	assert_int_equal(olen2, olen);
	assert_memory_equal(out2, out, olen);

	bouncer_item_discard(it2);
	bouncer_free(b2);
	bouncer_item_discard(it);
	close_all(peers, 2);
	close_all(peers2, 2);
	free(out2);
	free(out);
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_wire_strings_rejected, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_delivered_past_next_rejected, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_session_not_in_config, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_many_buffers, fixture_setup, fixture_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
