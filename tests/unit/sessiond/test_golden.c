/* tests/unit/sessiond/test_golden.c: every build must import the state
 * written by schema v1 (tests/golden/state-v1.bin), so a rollback to a
 * release that wrote it keeps working in the other direction too.
 *
 *   test_sessiond_golden PATH             run the checks on PATH
 *   test_sessiond_golden --generate PATH  (re)write PATH from sample_state.c
 *                                         (only when adding a new version's
 *                                         file: a released golden file never
 *                                         changes)
 */
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

#include "sample_state.h"
#include "sessiond/bouncer.h"

static const char *golden_path;
static uint8_t *golden;
static size_t golden_len;

static int load(void **state)
{
	FILE *fp = fopen(golden_path, "rb");
	if (!fp) {
		fprintf(stderr, "cannot open %s: %s\n", golden_path, strerror(errno));
		return -1;
	}
	golden = malloc(1 << 20);
	golden_len = fread(golden, 1, 1 << 20, fp);
	fclose(fp);
	return golden_len > 0 ? 0 : -1;
}

static int unload(void **state)
{
	free(golden);
	return 0;
}

static void test_fields(void **state)
{
	Baton__State__Item *item = baton__state__item__unpack(NULL, golden_len, golden);
	assert_non_null(item);
	assert_null(item->pending);
	Baton__State__Session *s = item->session;
	assert_non_null(s);
	assert_string_equal(s->user, "alice");
	assert_string_equal(s->network, "example");
	assert_string_equal(s->nick, "alice");
	assert_string_equal(s->user_modes, "+i");
	assert_int_equal(s->n_isupport, 6);
	assert_string_equal(s->isupport[1], "PREFIX=(ov)@+");
	assert_int_equal(s->n_caps, 2);

	assert_int_equal(s->n_channels, 2);
	Baton__State__Channel *c = s->channels[0];
	assert_string_equal(c->name, "#baton");
	assert_string_equal(c->topic, "Hot upgrades without dropping anyone");
	assert_string_equal(c->topic_setter, "bob!b@host.example");
	assert_int_equal(c->topic_time, 1764200000);
	assert_string_equal(c->modes, "+nt");
	assert_true(c->joined);
	assert_int_equal(c->n_members, 3);
	assert_string_equal(c->members[0]->nick, "alice");
	assert_string_equal(c->members[0]->prefixes, "@");
	assert_null(c->members[1]->prefixes);
	assert_string_equal(s->channels[1]->members[0]->prefixes, "@+");

	assert_int_equal(s->n_buffers, 2);
	assert_string_equal(s->buffers[0]->name, "#baton");
	assert_int_equal(s->buffers[0]->n_lines, 3);
	assert_int_equal(s->buffers[0]->lines[2]->seq, 4);
	assert_string_equal(s->buffers[0]->lines[1]->line,
			    ":carol!c@host.example PRIVMSG #baton :\001ACTION waves\001");
	assert_string_equal(s->buffers[1]->name, "bob");
	assert_int_equal(s->buffers[1]->n_lines, 2);
	assert_int_equal(s->buffers[1]->lines[1]->seq, 5);
	assert_int_equal(s->buffers[1]->lines[1]->time_ms, 1764230405000LL);
	assert_true(s->has_next_seq);
	assert_int_equal(s->next_seq, 6);

	assert_int_equal(s->n_positions, 2);
	assert_string_equal(s->positions[0]->client_id, "default");
	assert_int_equal(s->positions[0]->seq, 2);
	assert_string_equal(s->positions[1]->client_id, "phone");
	assert_int_equal(s->positions[1]->seq, 4);

	Baton__State__Connection *up = s->upstream;
	assert_non_null(up);
	assert_int_equal(up->role, BATON__STATE__CONN_ROLE__CONN_ROLE_UPSTREAM);
	assert_int_equal(up->fd_index, 0);
	assert_true(up->has_input);
	assert_memory_equal(up->input.data, ":bob!b@host.example PRIVMSG #baton :a partial li",
			    up->input.len);
	assert_true(up->has_output);
	assert_memory_equal(up->output.data, "PRIVMSG #baton :queued but not written\r\n",
			    up->output.len);
	assert_int_equal(up->reg_phase, 3);
	assert_int_equal(up->lag_ms, 42);

	assert_int_equal(s->n_clients, 1);
	Baton__State__Connection *cl = s->clients[0];
	assert_int_equal(cl->role, BATON__STATE__CONN_ROLE__CONN_ROLE_CLIENT);
	assert_int_equal(cl->fd_index, 1);
	assert_string_equal(cl->client_id, "default");
	assert_int_equal(cl->delivered_seq, 5);
	assert_int_equal(cl->n_caps, 2);
	assert_string_equal(cl->caps[0], "server-time");

	assert_string_equal(s->server_name, "irc.example.net");
	assert_string_equal(s->userhost, "a@host.example");
	baton__state__item__free_unpacked(item, NULL);
}

static void test_adopt(void **state)
{
	int before = count_open_fds();
	struct event_base *base = event_base_new();
	struct bouncer *b = bouncer_new(base, NULL);
	struct bouncer_item *it = NULL;
	int ours[2], peers[2];
	char err[256] = "";

	for (int i = 0; i < 2; i++) {
		int sv[2];
		assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
		ours[i] = sv[0];
		peers[i] = sv[1];
	}
	int rc = bouncer_item_adopt(b, golden, golden_len, ours, 2, &it, err, sizeof(err));
	if (rc < 0)
		fail_msg("golden state rejected: %s", err);
	assert_true(bouncer_item_is_session(it));
	assert_int_equal(bouncer_item_nfds(it), 2);

	/* Re-serialized, everything but the informational addresses (which
	 * this build recomputes from the sockets) comes back unchanged. */
	uint8_t *out;
	size_t olen, nfds;
	const int *fds;
	assert_int_equal(bouncer_item_serialize(it, &out, &olen, &fds, &nfds), 0);
	Baton__State__Item *g = baton__state__item__unpack(NULL, golden_len, golden);
	free(g->session->upstream->peer);
	free(g->session->upstream->local);
	free(g->session->clients[0]->peer);
	free(g->session->clients[0]->local);
	g->session->upstream->peer = g->session->upstream->local = NULL;
	g->session->clients[0]->peer = g->session->clients[0]->local = NULL;
	size_t glen = baton__state__item__get_packed_size(g);
	uint8_t *gbuf = malloc(glen);
	baton__state__item__pack(g, gbuf);
	assert_int_equal(olen, glen);
	assert_memory_equal(out, gbuf, glen);
	baton__state__item__free_unpacked(g, NULL);
	free(gbuf);
	free(out);

	bouncer_item_arm(it);
	struct bouncer_stats st;
	bouncer_stats(b, &st);
	assert_int_equal(st.sessions, 1);
	assert_int_equal(st.clients, 1);
	assert_int_equal(st.connections, 2);
	bouncer_free(b);
	event_base_free(base);
	close(peers[0]);
	close(peers[1]);
	assert_int_equal(count_open_fds(), before);
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--generate") == 0) {
		size_t len;
		uint8_t *buf = sample_item_pack(&len);
		FILE *fp = fopen(argv[2], "wb");
		if (!buf || !fp || fwrite(buf, 1, len, fp) != len || fclose(fp) != 0) {
			fprintf(stderr, "cannot write %s\n", argv[2]);
			return 1;
		}
		printf("wrote %s (%zu bytes)\n", argv[2], len);
		free(buf);
		return 0;
	}
	if (argc != 2) {
		fprintf(stderr, "usage: %s GOLDEN | --generate PATH\n", argv[0]);
		return 2;
	}
	golden_path = argv[1];
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fields),
		cmocka_unit_test(test_adopt),
	};
	return cmocka_run_group_tests(tests, load, unload);
}
