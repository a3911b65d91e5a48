/* tests/unit/sessiond/test_labeled.c: labeled-response (sessiond/client.c
 * client_label_begin()/_end()) with the spec's examples, its bound, the
 * batch of a many-line answer, TAGMSG to *baton kept from the network, the
 * delivery mark of a labeled echo, and CAP NEW/DEL of the message store's
 * capabilities (client_store_caps_refresh()).
 *
 * The sample session (sample_state.c) is adopted with an upstream
 * socketpair we play the IRC server on ("irc.example.net", no
 * labeled-response, no echo-message); clients are loopback TCP sockets.
 * Each test opens with what it pins. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "state.pb-c.h"

#include "common/config.h"
#include "sessiond/bouncer.h"
#include "sessiond/conn.h"
#include "sessiond/history.h"
#include "sessiond/service.h"
#include "sessiond/session.h"
#include "test_env.h"

#define CAPS "batch labeled-response echo-message message-tags"

/* The upstream with message-tags (a TAGMSG could go there). */
static void upstream_message_tags(Baton__State__Session *s)
{
	static char *caps[] = { "server-time", "multi-prefix", "message-tags" };

	s->n_caps = 3;
	s->caps = caps;
}

static char g_dir[4096], g_db[4200];

static void tune_store(struct baton_config *cfg)
{
	cfg->store_backend = CONFIG_STORE_SQLITE;
	cfg->store_path = g_db;
}

static struct test_env *env(test_env_mutate_fn mutate, bool store)
{
	const struct test_env_opts o = {
		.backlog_lines = 100,
		.ping_interval_s = 600,
		.ping_timeout_s = 2400,
		/* crypt("secret", "$6$testsalt$"), precomputed (test_client.c) */
		.password = "$6$testsalt$51yaaBMXXXt5vK522YOlIMZ267vqHtMIzc2klcsu3EEv/bkRDU9g3UmkypXf.NvlpPpIPK1nX5zdbCeJBiQbB/",
		.mutate = mutate,
		.wait_tries = 5000,
		.tune = store ? tune_store : NULL,
	};
	return test_env_new(&o);
}

static bool rx_wait(struct test_env *e, struct rx *r, int fd, const char *s)
{
	return rx_wait_tries(e, r, fd, s, 5000);
}

/* Pump a while and read what came (for "nothing came" checks). */
static void settle(struct test_env *e, struct rx *r, int fd)
{
	for (int i = 0; i < 100; i++) {
		test_env_pump(e);
		if (fd >= 0)
			rx_read_max(r, fd, 0);
		usleep(1000);
	}
}

/* A client that negotiates `caps` (CAP LS 302 first when ls302) and
 * attaches; what it received so far is in r. */
static int client(struct test_env *e, struct rx *r, const char *name, const char *caps,
		  bool ls302)
{
	char line[256];
	int fd = test_env_connect(e, 0);

	if (ls302)
		say_fd(fd, "CAP LS 302");
	if (caps) {
		snprintf(line, sizeof line, "CAP REQ :%s", caps);
		say_fd(fd, line);
	}
	snprintf(line, sizeof line, "PASS alice@%s/example:secret", name);
	say_fd(fd, line);
	say_fd(fd, "NICK alice");
	say_fd(fd, "USER alice 0 * :labeled");
	if (caps || ls302)
		say_fd(fd, "CAP END");
	assert_true(rx_wait(e, r, fd, " 366 "));
	return fd;
}

/* The number of lines of r from offset `from` that contain s. */
static size_t count_from(const struct rx *r, size_t from, const char *s)
{
	size_t n = 0;
	for (const char *p = r->buf + from; r->buf && (p = strstr(p, s)); p++)
		n++;
	return n;
}

/* Spec examples, the server's side:
 *   @label=abc PONG :foobar        -> @label=abc :irc.example.net ACK
 *   @label=pQraCjj82e PRIVMSG #channel :Hello!  (echo-message)
 *                                  -> the echo labeled, one line; the
 *                                     network gets the line without it
 *   @label=dc11f13f11 PRIVMSG nick :Hello  -> the 401 the network sends
 *      and @label=mGhe5V7RTV WHOIS nick    -> its replies: baton cannot
 *      match them to the label (the network has no labeled-response), so
 *      they come unlabeled and no ACK claims "no answer". */
static void test_spec_examples(void **state)
{
	struct test_env *e = env(NULL, false);
	struct rx r = { 0 }, up = { 0 };
	int fd = client(e, &r, "lab", CAPS, true);

	say_fd(fd, "@label=abc PONG :foobar");
	assert_true(rx_wait(e, &r, fd, "@label=abc :irc.example.net ACK\r\n"));

	size_t mark = r.len;
	say_fd(fd, "@label=pQraCjj82e PRIVMSG #baton :Hello!");
	assert_true(rx_wait(e, &r, fd, " PRIVMSG #baton :Hello!\r\n"));
	assert_non_null(strstr(r.buf + mark, "@label=pQraCjj82e :alice!"));
	assert_int_equal(count_from(&r, mark, "label="), 1);
	assert_true(rx_wait(e, &up, e->up, "PRIVMSG #baton :Hello!\r\n"));
	assert_null(strstr(up.buf, "label="));

	mark = r.len;
	say_fd(fd, "@label=mGhe5V7RTV WHOIS nick");
	assert_true(rx_wait(e, &up, e->up, "WHOIS nick\r\n"));
	say_fd(e->up, ":irc.example.net 311 alice nick ~ident host * :Name");
	say_fd(e->up, ":irc.example.net 318 alice nick :End of /WHOIS list.");
	assert_true(rx_wait(e, &r, fd, " 318 alice nick :End of /WHOIS list.\r\n"));
	settle(e, &r, fd);
	assert_int_equal(count_from(&r, mark, "label="), 0);
	assert_int_equal(count_from(&r, mark, " ACK"), 0);
	assert_non_null(strstr(r.buf + mark, ":irc.example.net 311 alice nick"));
	free(r.buf);
	free(up.buf);
	close(fd);
	test_env_free(e);
}

/* The spec bounds a label's value to 64 bytes: 64 is answered labeled, 65
 * is refused (FAIL <command> INVALID_LABEL, unlabeled) and the command
 * not run; an escaped value goes back as it was sent, an empty one is no
 * label; a client without
 * labeled-response (or without batch, its dependency) gets no label.
 * (FAIL PING INVALID_LABEL itself, with standard-replies: test_ircv3.py.) */
static void test_label_bound(void **state)
{
	struct test_env *e = env(NULL, false);
	struct rx r = { 0 }, p = { 0 }, nb = { 0 };
	char l64[65], l65[66], line[200];
	int fd = client(e, &r, "lab", CAPS, true);
	int plain = client(e, &p, "plain", "message-tags", true);
	int nobatch = client(e, &nb, "nobatch", "labeled-response", true);

	memset(l64, 'x', 64);
	l64[64] = '\0';
	memset(l65, 'y', 65);
	l65[65] = '\0';
	snprintf(line, sizeof line, "@label=%s PING :b64", l64);
	say_fd(fd, line);
	snprintf(line, sizeof line, "@label=%s PING :b65", l65);
	say_fd(fd, line);
	say_fd(fd, "@label=a\\sb;+x=y PING :esc");
	say_fd(fd, "@label=;label PING :empty"); /* no value: no label */
	say_fd(fd, "@label=zz;label=w2 PING :dup"); /* the last one counts */
	say_fd(fd, "PING :after");
	assert_true(rx_wait(e, &r, fd, "PONG irc.example.net :after\r\n"));
	snprintf(line, sizeof line, "@label=%s :irc.example.net PONG irc.example.net :b64\r\n", l64);
	assert_non_null(strstr(r.buf, line));
	assert_null(strstr(r.buf, ":b65\r\n"));
	assert_null(strstr(r.buf, l65));
	/* stdreply(): a NOTICE to a client without standard-replies */
	assert_non_null(strstr(r.buf, ":label longer than 64 bytes: command not run\r\n"));
	assert_non_null(strstr(r.buf, "@label=a\\sb :irc.example.net PONG irc.example.net :esc\r\n"));
	assert_non_null(strstr(r.buf, "\n:irc.example.net PONG irc.example.net :empty\r\n"));
	assert_null(strstr(r.buf, "label= "));
	assert_non_null(strstr(r.buf, "@label=w2 :irc.example.net PONG irc.example.net :dup\r\n"));
	assert_null(strstr(r.buf, "label=zz"));

	say_fd(plain, "@label=p1 PING :plain");
	assert_true(rx_wait(e, &p, plain, "PONG irc.example.net :plain\r\n"));
	assert_null(strstr(p.buf, "label="));
	say_fd(nobatch, "@label=p2 PING :nobatch");
	assert_true(rx_wait(e, &nb, nobatch, "PONG irc.example.net :nobatch\r\n"));
	assert_null(strstr(nb.buf, "label="));
	free(r.buf);
	free(p.buf);
	free(nb.buf);
	close(fd);
	close(plain);
	close(nobatch);
	test_env_free(e);
}

/* Several lines answer one command (`/msg *baton help`): a
 * `labeled-response` batch, its start labeled, every line in it with
 * @batch (tags the line had kept after it) and none labeled; the lines
 * in the order they were queued. */
static void test_many_lines_batch(void **state)
{
	struct test_env *e = env(NULL, false);
	struct rx r = { 0 };
	int fd = client(e, &r, "lab", "batch labeled-response", true);
	size_t mark = r.len;

	say_fd(fd, "@label=h1 PRIVMSG *baton :help");
	assert_true(rx_wait(e, &r, fd, ":irc.example.net BATCH -L"));
	assert_true(rx_wait(e, &r, fd, "\r\n"));
	settle(e, &r, fd);
	const char *start = strstr(r.buf + mark, "@label=h1 :irc.example.net BATCH +L");
	assert_non_null(start);
	char ref[24];
	assert_int_equal(sscanf(start, "@label=h1 :irc.example.net BATCH +%23s labeled-response", ref), 1);
	char want[64];
	snprintf(want, sizeof want, "@batch=%s :*baton!", ref);
	size_t nin = count_from(&r, mark, want);
	assert_true(nin >= 3);
	assert_int_equal(count_from(&r, mark, "NOTICE alice"), nin);
	assert_int_equal(count_from(&r, mark, "label="), 1);
	snprintf(want, sizeof want, ":irc.example.net BATCH -%s\r\n", ref);
	const char *end = strstr(r.buf + mark, want);
	assert_non_null(end);
	assert_true(end > start);
	/* nothing after the batch's end but nothing */
	assert_string_equal(end + strlen(want), "");
	free(r.buf);
	close(fd);
	test_env_free(e);
}

/* An answer that is a batch itself (BOUNCER LISTNETWORKS: a
 * soju.im/bouncer-networks batch) nests in the labeled-response batch:
 * its BATCH + carries the outer @batch, the lines inside it keep their
 * own @batch only (a second batch tag on one line is two batches at
 * once). */
static void test_nested_batch(void **state)
{
	struct test_env *e = env(NULL, false);
	struct rx r = { 0 };
	int fd = client(e, &r, "lab", "batch labeled-response soju.im/bouncer-networks", true);
	size_t mark = r.len;

	say_fd(fd, "@label=n1 BOUNCER LISTNETWORKS");
	assert_true(rx_wait(e, &r, fd, ":irc.example.net BATCH -L"));
	assert_true(rx_wait(e, &r, fd, "\r\n"));
	settle(e, &r, fd);
	const char *start = strstr(r.buf + mark, "@label=n1 :irc.example.net BATCH +L");
	assert_non_null(start);
	char ref[24], inner[24], want[96];
	assert_int_equal(sscanf(start, "@label=n1 :irc.example.net BATCH +%23s labeled-response", ref), 1);
	/* the inner batch's start: in the outer one */
	const char *in = strstr(r.buf + mark, " soju.im/bouncer-networks\r\n");
	assert_non_null(in);
	while (in > r.buf + mark && in[-1] != '\n')
		in--;
	snprintf(want, sizeof want, "@batch=%s :", ref);
	assert_memory_equal(in, want, strlen(want));
	const char *plus = strstr(in, " BATCH +");
	assert_non_null(plus);
	assert_int_equal(sscanf(plus, " BATCH +%23s", inner), 1);
	/* its lines: in it only */
	snprintf(want, sizeof want, "@batch=%s :", inner);
	size_t nnet = 0;
	for (const char *l = strstr(r.buf + mark, " BOUNCER NETWORK "); l;
	     l = strstr(l + 1, " BOUNCER NETWORK ")) {
		const char *b = l;
		while (b > r.buf + mark && b[-1] != '\n')
			b--;
		assert_memory_equal(b, want, strlen(want));
		nnet++;
	}
	assert_true(nnet >= 1);
	/* one batch tag per line */
	for (const char *l = r.buf + mark; *l; l = strstr(l, "\r\n") + 2) {
		const char *sp = strchr(l, ' ');
		size_t n = 0;
		for (const char *t = l; t < sp; t++)
			n += strncmp(t, "batch=", 6) == 0;
		assert_true(n <= 1);
	}
	free(r.buf);
	close(fd);
	test_env_free(e);
}

/* A TAGMSG to *baton went to the network (which has message-tags here),
 * whose 401 came back for a nick that is the bouncer's: it is baton's, and
 * it has no answer (labeled: ACK). A TAGMSG to a channel still goes. */
static void test_tagmsg_service(void **state)
{
	struct test_env *e = env(upstream_message_tags, false);
	struct rx r = { 0 }, up = { 0 };
	int fd = client(e, &r, "lab", CAPS, true);

	say_fd(fd, "@+typing=active TAGMSG *baton");
	say_fd(fd, "@label=t1;+typing=paused TAGMSG *baton");
	say_fd(fd, "@+typing=done TAGMSG #baton");
	assert_true(rx_wait(e, &up, e->up, "TAGMSG #baton\r\n"));
	assert_null(strstr(up.buf, "*baton"));
	assert_true(rx_wait(e, &r, fd, "@label=t1 :irc.example.net ACK\r\n"));
	assert_non_null(strstr(up.buf, "@+typing=done TAGMSG #baton\r\n"));
	free(r.buf);
	free(up.buf);
	close(fd);
	test_env_free(e);
}

/* A labeled echo is a backlog line with a delivery mark at the end of its
 * bytes: requeued with the label, the mark moves to its new end (else
 * the client's position would claim the line once the bytes before the
 * label's growth were acknowledged). */
static void test_labeled_echo_mark(void **state)
{
	struct test_env *e = env(NULL, false);
	struct rx r = { 0 };
	int fd = client(e, &r, "lab", CAPS, true);
	struct session *s = bouncer_session_by_key(e->b, "alice/example");

	assert_non_null(s);
	struct client *cl = s->clients[s->nclients - 1];
	say_fd(fd, "@label=m1 PRIVMSG #baton :marked");
	assert_true(rx_wait(e, &r, fd, "PRIVMSG #baton :marked\r\n"));
	assert_true(cl->nmarks >= 1);
	assert_int_equal(cl->marks[cl->mark_head + cl->nmarks - 1].end,
			 conn_bytes_queued(cl->conn));
	assert_int_equal(cl->marks[cl->mark_head + cl->nmarks - 1].seq, cl->delivered_seq);
	free(r.buf);
	close(fd);
	test_env_free(e);
}

static uint64_t edit_id;

static int fake_send(void *arg, uint64_t id, const char *user, const char *network,
		     const char *op, char *const *pairs, size_t npairs)
{
	(void)arg, (void)user, (void)network, (void)op, (void)pairs, (void)npairs;
	edit_id = id;
	return 0;
}

/* A `*baton network set` goes through the supervisor and is answered
 * later: no ACK at once (that would say "no answer"), the answer labeled
 * when it comes, and the echo sent meanwhile unlabeled (one logical
 * message has the label). */
static void test_async_edit_labeled(void **state)
{
	struct test_env *e = env(NULL, false);
	struct rx r = { 0 };
	int fd = client(e, &r, "lab", CAPS, true);
	size_t mark = r.len;

	service_set_sender(fake_send, NULL);
	edit_id = 0;
	say_fd(fd, "@label=ed1 PRIVMSG *baton :network set example realname=x");
	assert_true(rx_wait(e, &r, fd, "PRIVMSG *baton :network set example realname=x\r\n"));
	for (int i = 0; i < 200 && edit_id == 0; i++)
		test_env_pump(e);
	assert_true(edit_id != 0);
	settle(e, &r, fd);
	assert_int_equal(count_from(&r, mark, "label="), 0);
	assert_int_equal(count_from(&r, mark, " ACK"), 0);
	service_edit_result(edit_id, true, NULL);
	assert_true(rx_wait(e, &r, fd, "NOTICE alice :Done: network example changed"));
	assert_non_null(strstr(r.buf + mark, "@label=ed1 :*baton!baton@baton NOTICE alice :Done:"));
	assert_int_equal(count_from(&r, mark, "label="), 1);
	service_set_sender(NULL, NULL);
	free(r.buf);
	close(fd);
	test_env_free(e);
}

/* draft/chathistory and draft/read-marker stayed unoffered until the next
 * worker when the store opened after the start: now a client with
 * cap-notify (CAP LS 302) is told CAP NEW when it opens and can REQ them,
 * and CAP DEL when it goes (the caps it had are gone, CAP LIST says so);
 * a client without cap-notify is told no CAP. Bug: ISUPPORT kept saying
 * what the burst said: now every registered client gets a 005 with
 * CHATHISTORY=100 at the NEW and -CHATHISTORY at the DEL. */
static void test_store_caps_new_del(void **state)
{
	const char *tmp = getenv("TMPDIR");
	char err[512], p[4300];

	snprintf(g_dir, sizeof g_dir, "%s/baton-labeled-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	assert_non_null(mkdtemp(g_dir));
	snprintf(g_db, sizeof g_db, "%s/messages.db", g_dir);
	struct test_env *e = env(NULL, true);
	struct rx r = { 0 }, q = { 0 };
	int fd = client(e, &r, "notify", NULL, true);
	int old = client(e, &q, "old", NULL, false);

	assert_null(strstr(r.buf, "draft/chathistory"));
	assert_null(strstr(r.buf, "CHATHISTORY="));
	struct history *h = history_open(e->base, &e->cfg, err, sizeof err);
	if (!h)
		fail_msg("history_open: %s", err);
	bouncer_set_history(e->b, h);
	assert_true(rx_wait(e, &r, fd, "CAP alice NEW :draft/chathistory draft/read-marker\r\n"));
	/* ISUPPORT follows the caps, to every registered client */
	assert_true(rx_wait(e, &r, fd, " 005 alice CHATHISTORY=100 MSGREFTYPES=timestamp,msgid :are supported by this server\r\n"));
	assert_true(rx_wait(e, &q, old, " 005 alice CHATHISTORY=100 MSGREFTYPES=timestamp,msgid :are supported by this server\r\n"));
	say_fd(fd, "CAP REQ :draft/chathistory draft/read-marker");
	assert_true(rx_wait(e, &r, fd, "ACK :draft/chathistory draft/read-marker\r\n"));
	bouncer_set_history(e->b, NULL);
	assert_true(rx_wait(e, &r, fd, "CAP alice DEL :draft/chathistory draft/read-marker\r\n"));
	assert_true(rx_wait(e, &r, fd, " 005 alice -CHATHISTORY -MSGREFTYPES :are supported by this server\r\n"));
	assert_true(rx_wait(e, &q, old, " 005 alice -CHATHISTORY -MSGREFTYPES :are supported by this server\r\n"));
	say_fd(fd, "CAP LIST");
	assert_true(rx_wait(e, &r, fd, "CAP alice LIST :cap-notify\r\n"));
	say_fd(fd, "CAP REQ draft/chathistory");
	assert_true(rx_wait(e, &r, fd, "NAK :draft/chathistory\r\n"));
	settle(e, &q, old);
	assert_null(strstr(q.buf, " CAP "));
	history_close(h);
	free(r.buf);
	free(q.buf);
	close(fd);
	close(old);
	test_env_free(e);
	static const char *const files[] = { "messages.db", "messages.db-wal",
					     "messages.db-shm" };
	for (size_t i = 0; i < 3; i++) {
		snprintf(p, sizeof p, "%s/%s", g_dir, files[i]);
		unlink(p);
	}
	rmdir(g_dir);
}

/* The upstream with labeled-response (and batch, its dependency). */
static void upstream_labeled(Baton__State__Session *s)
{
	static char *caps[] = { "server-time", "multi-prefix", "batch", "labeled-response" };

	s->n_caps = 4;
	s->caps = caps;
}

/* The adopted upstream's labels from bt1 (adoption draws their start:
 * test_forwarded_label_after_adoption), for tests that name them. */
static void labels_from_one(struct test_env *e)
{
	struct session *s = bouncer_session_at(e->b, 0);

	assert_non_null(s);
	assert_non_null(s->up);
	s->up->next_label = 0;
}

/* Bug: a labeled command baton forwards (WHO) went to the network
 * unlabeled and its client got no labeled answer. With the network's
 * labeled-response it goes with baton's label "bt<n>" and the network's
 * batch comes back to the asker alone with its label (the lines inside
 * keep the batch tag, the network's label never shows); a one-line answer
 * and the network's ACK come back labeled; a BATCH the network did not
 * start for a label of ours goes nowhere and its lines lose the tag; an
 * ACK not of a label of ours reaches nobody. */
static void test_forwarded_labeled(void **state)
{
	struct test_env *e = env(upstream_labeled, false);
	struct rx r = { 0 }, p = { 0 }, up = { 0 };
	int fd = client(e, &r, "lab", CAPS, true);
	int plain = client(e, &p, "plain", "message-tags", true);
	labels_from_one(e);
	size_t mark = r.len, pmark = p.len;

	say_fd(fd, "@label=w1;+x=y WHO #baton");
	assert_true(rx_wait(e, &up, e->up, "WHO #baton\r\n"));
	assert_non_null(strstr(up.buf, "@label=bt1 WHO #baton\r\n"));
	say_fd(e->up, "@label=bt1 :irc.example.net BATCH +n1 labeled-response");
	say_fd(e->up, "@batch=n1 :irc.example.net 352 alice #baton ~a h irc.example.net alice H :0 A");
	say_fd(e->up, "@batch=n1;time=2026-01-01T00:00:00.000Z :irc.example.net 315 alice #baton :End of WHO");
	say_fd(e->up, ":irc.example.net BATCH -n1");
	assert_true(rx_wait(e, &r, fd, ":irc.example.net BATCH -n1\r\n"));
	assert_non_null(strstr(r.buf + mark, "@label=w1 :irc.example.net BATCH +n1 labeled-response\r\n"));
	assert_non_null(strstr(r.buf + mark, "@batch=n1 :irc.example.net 352 alice #baton"));
	assert_non_null(strstr(r.buf + mark,
			       "@batch=n1;time=2026-01-01T00:00:00.000Z :irc.example.net 315 alice #baton"));
	assert_int_equal(count_from(&r, mark, "bt1"), 0);

	mark = r.len;
	say_fd(fd, "@label=m1 MODE #baton");
	assert_true(rx_wait(e, &up, e->up, "@label=bt2 MODE #baton\r\n"));
	say_fd(e->up, "@label=bt2 :irc.example.net 324 alice #baton +nt");
	assert_true(rx_wait(e, &r, fd, "@label=m1 :irc.example.net 324 alice #baton +nt\r\n"));
	say_fd(fd, "@label=k1 MODE alice +i");
	assert_true(rx_wait(e, &up, e->up, "@label=bt3 MODE alice +i\r\n"));
	say_fd(e->up, "@label=bt3 :irc.example.net ACK");
	assert_true(rx_wait(e, &r, fd, "@label=k1 :irc.example.net ACK\r\n"));

	/* a batch of the network's own (not a label of ours) */
	say_fd(e->up, ":irc.example.net BATCH +z9 netsplit a b");
	say_fd(e->up, "@batch=z9 :bob!b@h QUIT :a b");
	say_fd(e->up, ":irc.example.net BATCH -z9");
	say_fd(e->up, "@label=bt77 :irc.example.net 324 alice #other +nt");
	say_fd(e->up, "@label=bt78 :irc.example.net ACK");
	say_fd(e->up, ":irc.example.net ACK");
	say_fd(e->up, "PING :sync");
	assert_true(rx_wait(e, &up, e->up, "PONG :sync\r\n"));
	settle(e, &p, plain);
	settle(e, &r, fd);
	assert_int_equal(count_from(&p, pmark, "BATCH"), 0);
	assert_int_equal(count_from(&p, pmark, "label="), 0);
	assert_int_equal(count_from(&p, pmark, "batch="), 0);
	assert_int_equal(count_from(&r, mark, "z9"), 0);
	assert_int_equal(count_from(&r, mark, "bt77"), 0);
	assert_int_equal(count_from(&r, mark, " ACK"), 1); /* k1's only */
	assert_int_equal(count_from(&p, pmark, " ACK"), 0);
	free(r.buf);
	free(p.buf);
	free(up.buf);
	close(fd);
	close(plain);
	test_env_free(e);
}

/* The bounds of forwarded labels: UPSTREAM_LABELS_PER_CLIENT per client
 * (its next command goes unlabeled), UPSTREAM_MAX_LABELS per connection
 * (a further client's too); one unanswered for UPSTREAM_LABEL_TTL_MS is
 * forgotten (its late answer comes unlabeled) and makes room. */
static void test_forwarded_label_bounds(void **state)
{
	struct test_env *e = env(upstream_labeled, false);
	struct rx r[5] = { 0 }, up = { 0 };
	int fd[5];
	char line[64], name[16];
	struct session *s;

	for (int c = 0; c < 5; c++) {
		snprintf(name, sizeof name, "c%d", c);
		fd[c] = client(e, &r[c], name, CAPS, true);
	}
	labels_from_one(e);
	for (int i = 0; i <= UPSTREAM_LABELS_PER_CLIENT; i++) {
		snprintf(line, sizeof line, "@label=q%d TOPIC #t%d", i, i);
		say_fd(fd[0], line);
	}
	snprintf(line, sizeof line, "TOPIC #t%d\r\n", UPSTREAM_LABELS_PER_CLIENT);
	assert_true(rx_wait(e, &up, e->up, line));
	assert_int_equal(count_from(&up, 0, "@label=bt"), UPSTREAM_LABELS_PER_CLIENT);
	snprintf(line, sizeof line, "\nTOPIC #t%d\r\n", UPSTREAM_LABELS_PER_CLIENT);
	assert_non_null(strstr(up.buf, line)); /* the 9th: no label */
	for (int c = 1; c < 5; c++)
		for (int i = 0; i < UPSTREAM_LABELS_PER_CLIENT; i++) {
			snprintf(line, sizeof line, "@label=c%d TOPIC #u%d", i, c);
			say_fd(fd[c], line);
		}
	for (int i = 0; i < 5000 && count_from(&up, 0, "TOPIC #") <
						 UPSTREAM_LABELS_PER_CLIENT * 5 + 1; i++) {
		test_env_pump(e);
		rx_read_max(&up, e->up, 0);
		usleep(200);
	}
	/* every one sent; 32 labeled, whichever came first */
	assert_int_equal(count_from(&up, 0, "TOPIC #"), UPSTREAM_LABELS_PER_CLIENT * 5 + 1);
	assert_int_equal(count_from(&up, 0, "@label=bt"), UPSTREAM_MAX_LABELS);

	/* the oldest (bt1, q0 of c0) expires; its late answer: unlabeled */
	s = bouncer_session_at(e->b, 0);
	assert_non_null(s->up);
	assert_int_equal(s->up->nlabels, UPSTREAM_MAX_LABELS);
	s->up->labels[0].sent_ms -= UPSTREAM_LABEL_TTL_MS + 1;
	size_t mark = r[0].len;
	say_fd(e->up, "@label=bt1 :irc.example.net 331 alice #t0 :No topic is set");
	assert_true(rx_wait(e, &r[0], fd[0], " 331 alice #t0 :No topic is set\r\n"));
	assert_int_equal(count_from(&r[0], mark, "label="), 0);
	assert_int_equal(s->up->nlabels, UPSTREAM_MAX_LABELS - 1);
	/* room again (for c0 too): its next one is labeled */
	say_fd(fd[0], "@label=again TOPIC #again");
	assert_true(rx_wait(e, &up, e->up, "TOPIC #again\r\n"));
	assert_non_null(strstr(up.buf, "@label=bt33 TOPIC #again\r\n"));
	for (int c = 0; c < 5; c++) {
		free(r[c].buf);
		close(fd[c]);
	}
	free(up.buf);
	test_env_free(e);
}

/* Labels awaiting the network's answer when the answer cannot come to
 * them: a migration (the labels do not travel: the session is frozen)
 * and a lost connection. Each waiting client gets its ACK (the end of
 * the batch when its answer had begun) before its output is flushed;
 * the answer arriving after a thaw is unlabeled. */
static void test_forwarded_labels_dropped(void **state)
{
	struct test_env *e = env(upstream_labeled, false);
	struct rx r = { 0 }, up = { 0 };
	int fd = client(e, &r, "lab", CAPS, true);
	uint8_t *buf = NULL;
	size_t len, nfds;
	const int *fds;
	size_t mark = r.len;

	labels_from_one(e);
	say_fd(fd, "@label=f1 TOPIC #baton");
	assert_true(rx_wait(e, &up, e->up, "@label=bt1 TOPIC #baton\r\n"));
	struct bouncer_item *it = session_serialize(e->b, &buf, &len, &fds, &nfds);
	assert_true(rx_wait(e, &r, fd, "@label=f1 :irc.example.net ACK\r\n"));
	bouncer_item_thaw(it);
	free(buf);
	say_fd(e->up, "@label=bt1 :irc.example.net 331 alice #baton :No topic is set");
	assert_true(rx_wait(e, &r, fd, "331 alice #baton :No topic is set\r\n"));
	assert_int_equal(count_from(&r, mark, "label="), 1);

	mark = r.len;
	say_fd(fd, "@label=g1 WHO #baton");
	say_fd(fd, "@label=g2 MODE #baton");
	assert_true(rx_wait(e, &up, e->up, "@label=bt3 MODE #baton\r\n"));
	say_fd(e->up, "@label=bt2 :irc.example.net BATCH +w labeled-response");
	say_fd(e->up, "@batch=w :irc.example.net 352 alice #baton ~a h irc.example.net alice H :0 A");
	assert_true(rx_wait(e, &r, fd, "@batch=w :irc.example.net 352"));
	close(e->up);
	e->up = -1;
	assert_true(rx_wait(e, &r, fd, "@label=g2 :irc.example.net ACK\r\n"));
	assert_non_null(strstr(r.buf + mark, ":irc.example.net BATCH -w\r\n"));
	free(r.buf);
	free(up.buf);
	close(fd);
	test_env_free(e);
}

/* Bug: a worker that adopts a session (a migration's new one, or one
 * restored from custody) numbered its labels from bt1 again, while the
 * network could still answer the old worker's bt1 (the labels do not
 * travel; their answers come within UPSTREAM_LABEL_TTL_MS): that answer
 * reached the new asker as the answer to its own labeled command, whose
 * real answer then came unlabeled. The adopted upstream's labels start
 * elsewhere; here the network answers the old worker's bt1 after a
 * labeled command of the new one. */
static void test_forwarded_label_after_adoption(void **state)
{
	struct test_env *e = env(upstream_labeled, false);
	struct rx r = { 0 }, up = { 0 };
	int fd = client(e, &r, "lab", CAPS, true);
	size_t mark = r.len;
	char tag[32], line[128];
	const char *t;

	say_fd(fd, "@label=n1 TOPIC #baton");
	assert_true(rx_wait(e, &up, e->up, "TOPIC #baton\r\n"));
	assert_non_null(t = strstr(up.buf, "@label=bt"));
	snprintf(tag, sizeof tag, "%.*s", (int)strcspn(t + 1, " "), t + 1);
	/* the old worker's WHO of bt1, answered now */
	say_fd(e->up, "@label=bt1 :irc.example.net 324 alice #old +nt");
	assert_true(rx_wait(e, &r, fd, " 324 alice #old +nt\r\n"));
	assert_null(strstr(r.buf + mark, "@label=n1 :irc.example.net 324"));
	/* the real answer to n1 */
	snprintf(line, sizeof line, "@%s :irc.example.net 331 alice #baton :No topic is set", tag);
	say_fd(e->up, line);
	assert_true(rx_wait(e, &r, fd, "@label=n1 :irc.example.net 331 alice #baton :No topic is set\r\n"));
	free(r.buf);
	free(up.buf);
	close(fd);
	test_env_free(e);
}

/* Bug: a label whose labeled-response batch had begun (the asker got
 * BATCH +) and that expired (UPSTREAM_LABEL_TTL_MS: a long answer, or a
 * network that never ends it) was forgotten silently: the asker never got
 * the batch's end, and a client that keeps a batch's lines until its end
 * kept those forever. The expiry now ends it (to the asker alone). */
static void test_forwarded_label_expiry_ends_batch(void **state)
{
	struct test_env *e = env(upstream_labeled, false);
	struct rx r = { 0 }, p = { 0 }, up = { 0 };
	int fd = client(e, &r, "lab", CAPS, true);
	int plain = client(e, &p, "plain", CAPS, true);
	struct session *s;
	size_t pmark = p.len;

	labels_from_one(e);
	say_fd(fd, "@label=x1 WHO #baton");
	assert_true(rx_wait(e, &up, e->up, "@label=bt1 WHO #baton\r\n"));
	say_fd(e->up, "@label=bt1 :irc.example.net BATCH +lng labeled-response");
	say_fd(e->up, "@batch=lng :irc.example.net 352 alice #baton ~a h irc.example.net alice H :0 A");
	assert_true(rx_wait(e, &r, fd, "@batch=lng :irc.example.net 352"));
	s = bouncer_session_at(e->b, 0);
	assert_int_equal(s->up->nlabels, 1);
	s->up->labels[0].sent_ms -= UPSTREAM_LABEL_TTL_MS + 1;
	/* the next labeled command looks at the expiry */
	say_fd(fd, "@label=x2 MODE #baton");
	assert_true(rx_wait(e, &up, e->up, "MODE #baton\r\n"));
	assert_true(rx_wait(e, &r, fd, ":irc.example.net BATCH -lng\r\n"));
	settle(e, &p, plain);
	assert_int_equal(count_from(&p, pmark, "BATCH"), 0);
	free(r.buf);
	free(p.buf);
	free(up.buf);
	close(fd);
	close(plain);
	test_env_free(e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_spec_examples),
		cmocka_unit_test(test_label_bound),
		cmocka_unit_test(test_many_lines_batch),
		cmocka_unit_test(test_nested_batch),
		cmocka_unit_test(test_tagmsg_service),
		cmocka_unit_test(test_labeled_echo_mark),
		cmocka_unit_test(test_async_edit_labeled),
		cmocka_unit_test(test_store_caps_new_del),
		cmocka_unit_test(test_forwarded_labeled),
		cmocka_unit_test(test_forwarded_label_bounds),
		cmocka_unit_test(test_forwarded_labels_dropped),
		cmocka_unit_test(test_forwarded_label_after_adoption),
		cmocka_unit_test(test_forwarded_label_expiry_ends_batch),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
