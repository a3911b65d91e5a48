/* Tests of supervisor/custody.c against hostile checkpoint logs: the log is
 * written by a worker that has just crashed, so every count and length in
 * it is bounded before use, and a record past a bound costs its session
 * (not restored, counted) rather than the supervisor's memory. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/frame.h"
#include "common/strmap.h"
#include "control.pb-c.h"
#include "handoff/protocol.h"
#include "sessiond/checkpoint.h"
#include "supervisor/custody.h"

/* A log under construction. */
struct log {
	uint8_t *m;
	size_t len;
};

static void log_init(struct log *l)
{
	uint32_t hdr[2] = { CKPT_MAGIC, CKPT_VERSION };

	l->m = calloc(1, CKPT_HEADER);
	assert_non_null(l->m);
	memcpy(l->m, hdr, 8);
	l->len = CKPT_HEADER;
}

/* A CKPT_SESSION record naming ids first_id .. first_id + nids - 1. */
static void log_session(struct log *l, const char *key, uint32_t nids,
			uint64_t first_id)
{
	uint32_t keylen = (uint32_t)strlen(key);
	size_t len = 8 + 8 * (size_t)nids + keylen + 4; /* + a small payload */
	size_t rec = (8 + len + 7) & ~(size_t)7;
	uint32_t th[2] = { CKPT_SESSION, (uint32_t)len }, nk[2] = { nids, keylen };
	uint8_t *p;

	l->m = realloc(l->m, l->len + rec);
	assert_non_null(l->m);
	p = l->m + l->len;
	memset(p, 0, rec);
	memcpy(p, th, 8);
	memcpy(p + 8, nk, 8);
	for (uint32_t i = 0; i < nids; i++) {
		uint64_t id = first_id + i;

		memcpy(p + 16 + 8 * (size_t)i, &id, 8);
	}
	memcpy(p + 16 + 8 * (size_t)nids, key, keylen);
	l->len += rec;
}

/* The memfd a worker would hand, committed = committed_extra + records. */
static int log_memfd(struct log *l, uint64_t committed_extra)
{
	uint64_t committed = l->len - CKPT_HEADER + committed_extra;
	int fd = memfd_create("test-ckpt", MFD_CLOEXEC);

	assert_true(fd >= 0);
	memcpy(l->m + 8, &committed, 8);
	assert_int_equal(pwrite(fd, l->m, l->len, 0), (ssize_t)l->len);
	free(l->m);
	l->m = NULL;
	return fd;
}

/* Hand `logfd` to a custody as the worker's CUSTODY message does. */
static struct custody *custody_with_log(int logfd)
{
	struct custody *c = custody_new();
	Baton__Control__Custody cm = BATON__CONTROL__CUSTODY__INIT;
	int fds[1] = { logfd };
	uint8_t buf[64];
	struct frame_msg fm = { .type = 1, .data = buf, .fds = fds, .nfds = 1 };

	assert_non_null(c);
	cm.has_checkpoint = 1;
	cm.checkpoint = 1;
	fm.len = baton__control__custody__pack(&cm, buf);
	assert_int_equal(custody_handle(c, &fm), 0);
	return c;
}

static void test_ids_at_and_past_the_bound(void **state)
{
	struct log l;
	struct custody *c;
	struct strmap *keys;

	(void)state;
	log_init(&l);
	log_session(&l, "at/net", FRAME_MAX_FDS, 1);
	log_session(&l, "past/net", FRAME_MAX_FDS + 1, 1000);
	c = custody_with_log(log_memfd(&l, 0));
	keys = custody_session_keys(c);
	assert_non_null(keys);
	assert_non_null(strmap_get(keys, "at/net"));
	assert_null(strmap_get(keys, "past/net"));
	strmap_free(keys);
	custody_free(c);
}

/* A bad latest record: the session's earlier (good) record is not
 * restored either (it is stale). */
static void test_bad_record_drops_earlier_one(void **state)
{
	struct log l;
	struct custody *c;
	struct strmap *keys;

	(void)state;
	log_init(&l);
	log_session(&l, "a/net", 1, 1);
	log_session(&l, "b/net", 1, 2);
	log_session(&l, "a/net", FRAME_MAX_FDS + 1, 3);
	c = custody_with_log(log_memfd(&l, 0));
	keys = custody_session_keys(c);
	assert_non_null(keys);
	assert_null(strmap_get(keys, "a/net"));
	assert_non_null(strmap_get(keys, "b/net"));
	strmap_free(keys);
	custody_free(c);
}

/* committed past the end of the memfd: the log is refused (no huge
 * allocation from a number the dead worker wrote). */
static void test_committed_past_the_file(void **state)
{
	struct log l;
	struct custody *c;

	(void)state;
	log_init(&l);
	log_session(&l, "a/net", 1, 1);
	c = custody_with_log(log_memfd(&l, (uint64_t)1 << 60));
	assert_null(custody_session_keys(c));
	custody_free(c);
}

static struct custody_result got;
static int got_n;

static void restore_cb(void *arg, const struct custody_result *r)
{
	(void)arg;
	got = *r;
	got_n++;
}

/* The reviewer's case through the restore itself (under ASan this was a
 * heap overflow of the chunk's fd array): 17000 ids in one session. */
static void test_restore_rejects_too_many_ids(void **state)
{
	struct rlimit rl;
	struct log l;
	struct custody *c;
	struct custody_restore *r;
	struct event_base *base = event_base_new();
	struct strmap *strikes = strmap_new();
	int sv[2], err = 0;

	(void)state;
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
	rl.rlim_cur = rl.rlim_max; /* as the supervisor does at start */
	setrlimit(RLIMIT_NOFILE, &rl);
	log_init(&l);
	log_session(&l, "a/net", 17000, 1);
	c = custody_with_log(log_memfd(&l, 0));
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
	got_n = 0;
	r = custody_restore_start(base, c, sv[0], getpid(), 1000, strikes, 2,
				  NULL, restore_cb, NULL, &err);
	assert_non_null(r);
	event_base_loop(base, EVLOOP_NONBLOCK);
	assert_int_equal(got_n, 1);
	assert_int_equal(got.sessions_rejected, 1);
	assert_int_equal(got.sessions_lost, 1);
	assert_int_equal(got.sessions_restored, 0);
	custody_restore_free(r);
	close(sv[1]);
	strmap_free(strikes);
	event_base_free(base);
}

/* A CUSTODY message whose last fds the kernel could not install (the
 * supervisor at its fd limit, frame_recv_lossy()): accepted, the copies
 * that arrived held, the lost ones not (their connections reconnect if the
 * worker crashes); before, -EPROTO and the worker was killed. */
static void test_handle_lost_fds(void **state)
{
	struct custody *c = custody_new();
	Baton__Control__Custody cm = BATON__CONTROL__CUSTODY__INIT;
	uint64_t ids[3] = { 1, 2, 3 };
	int fds[1] = { dup(0) };
	uint8_t buf[64];
	struct frame_msg fm = { .type = 1, .data = buf, .fds = fds, .nfds = 1,
				.fds_lost = 2 };

	(void)state;
	cm.n_add = 3;
	cm.add = ids;
	fm.len = baton__control__custody__pack(&cm, buf);
	assert_int_equal(custody_handle(c, &fm), 0);
	assert_int_equal(custody_fd_count(c), 1);
	/* more fds than ids, lost or not: still malformed */
	fm.nfds = 0;
	fm.fds_lost = 4;
	assert_int_equal(custody_handle(c, &fm), -EPROTO);
	custody_free(c);
}

/* Near the fd limit the supervisor keeps a reserve for its own work: a
 * copy that would eat into it is closed, not held. */
static void test_handle_keeps_a_reserve(void **state)
{
	struct custody *c = custody_new();
	Baton__Control__Custody cm = BATON__CONTROL__CUSTODY__INIT;
	uint64_t ids[1] = { 1 };
	struct rlimit old, rl;
	int fd = dup(0);
	int fds[1] = { fd };
	uint8_t buf[64];
	struct frame_msg fm = { .type = 1, .data = buf, .fds = fds, .nfds = 1 };

	(void)state;
	assert_true(fd >= 0);
	cm.n_add = 1;
	cm.add = ids;
	fm.len = baton__control__custody__pack(&cm, buf);
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
	rl = old;
	rl.rlim_cur = (rlim_t)fd + 8; /* 8 free fds: inside the reserve */
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
	assert_int_equal(custody_handle(c, &fm), 0);
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
	assert_int_equal(custody_fd_count(c), 0);
	assert_int_equal(fcntl(fd, F_GETFD), -1); /* closed */
	custody_free(c);
}

/* The worker ended custody after an error (a CUSTODY end): every copy
 * and the log are released (a socket the worker closes must end for its
 * peer; a later crash must not restore from a stale log). */
static void test_end_releases_everything(void **state)
{
	struct custody *c = custody_with_log(memfd_create("l", MFD_CLOEXEC));
	Baton__Control__Custody cm = BATON__CONTROL__CUSTODY__INIT;
	uint64_t ids[2] = { 1, 2 };
	int a = dup(0), b = dup(0);
	int fds[2] = { a, b };
	uint8_t buf[128];
	struct frame_msg fm = { .type = 1, .data = buf, .fds = fds, .nfds = 2 };

	(void)state;
	cm.n_add = 2;
	cm.add = ids;
	fm.len = baton__control__custody__pack(&cm, buf);
	assert_int_equal(custody_handle(c, &fm), 0);
	assert_int_equal(custody_fd_count(c), 2);
	assert_true(custody_has_checkpoint(c));
	Baton__Control__Custody end = BATON__CONTROL__CUSTODY__INIT;
	end.has_end = 1;
	end.end = 1;
	end.reason = "cannot grow the checkpoint log";
	struct frame_msg fe = { .type = 1, .data = buf };
	fe.len = baton__control__custody__pack(&end, buf);
	assert_int_equal(custody_handle(c, &fe), 0);
	assert_int_equal(custody_fd_count(c), 0);
	assert_false(custody_has_checkpoint(c));
	assert_int_equal(fcntl(a, F_GETFD), -1);
	assert_int_equal(fcntl(b, F_GETFD), -1);
	custody_free(c);
}

/* A session record whose key is past the bound (255 bytes) or whose ids
 * and key do not fit its length is skipped and counted; the sessions
 * around it are restored (the framing is intact). */
static void test_impossible_record_skipped(void **state)
{
	struct log l;
	struct custody *c;
	struct strmap *keys;
	char longkey[301];

	(void)state;
	memset(longkey, 'k', 300);
	longkey[300] = '\0';
	log_init(&l);
	log_session(&l, "a/net", 1, 1);
	log_session(&l, longkey, 1, 2);
	log_session(&l, "b/net", 1, 3);
	c = custody_with_log(log_memfd(&l, 0));
	keys = custody_session_keys(c);
	assert_non_null(keys);
	assert_non_null(strmap_get(keys, "a/net"));
	assert_non_null(strmap_get(keys, "b/net"));
	strmap_free(keys);
	custody_free(c);
}

/* One record of `type` for connection `id` with body data[len]. */
static void log_conn(struct log *l, uint32_t type, uint64_t id, const void *data,
		     size_t len)
{
	size_t rlen = 8 + len, rec = (8 + rlen + 7) & ~(size_t)7;
	uint32_t th[2] = { type, (uint32_t)rlen };
	uint8_t *p;

	l->m = realloc(l->m, l->len + rec);
	assert_non_null(l->m);
	p = l->m + l->len;
	memset(p, 0, rec);
	memcpy(p, th, 8);
	memcpy(p + 8, &id, 8);
	if (len)
		memcpy(p + 16, data, len);
	l->len += rec;
}

/* A handoff target that keeps the first item's payload. */
struct catch {
	uint8_t *payload;
	size_t len;
	bool done;
};

static int catch_prepare(void *arg, uint32_t chunk, uint32_t index,
			 const uint8_t *payload, size_t len, int *fds, size_t nfds,
			 char *reason, size_t reason_len)
{
	struct catch *k = arg;

	(void)chunk, (void)index, (void)reason, (void)reason_len;
	for (size_t i = 0; i < nfds; i++)
		close(fds[i]);
	if (k->payload == NULL) {
		k->payload = malloc(len);
		assert_non_null(k->payload);
		memcpy(k->payload, payload, len);
		k->len = len;
	}
	return 0;
}

static void catch_commit(void *arg, uint32_t chunk)
{
	(void)arg, (void)chunk;
}

static void catch_abort(void *arg, uint32_t chunk, const char *reason)
{
	(void)arg, (void)chunk, (void)reason;
}

static void catch_done(void *arg, int result, const char *reason, uint32_t n)
{
	(void)result, (void)reason, (void)n;
	((struct catch *)arg)->done = true;
}

static uint64_t pb_get_varint(const uint8_t *p, size_t len, size_t *at)
{
	uint64_t v = 0;

	for (int sh = 0; *at < len && sh < 64; sh += 7) {
		uint8_t b = p[(*at)++];

		v |= (uint64_t)(b & 0x7f) << sh;
		if (!(b & 0x80))
			return v;
	}
	fail_msg("bad varint");
	return 0;
}

/* The varint fields (bool/uint) of the first ConnRecovery of the restored
 * item, by field number (UINT64_MAX: absent); the session payload of
 * log_session() is 4 bytes. */
static void restored_conn_fields(const struct catch *k, uint64_t v[8])
{
	size_t at = 4, end, cend;

	for (int i = 0; i < 8; i++)
		v[i] = UINT64_MAX;
	assert_true(k->len > at);
	assert_int_equal(k->payload[at++], (5 << 3) | 2); /* Item.recovery */
	end = at + pb_get_varint(k->payload, k->len, &at);
	assert_int_equal(k->payload[at++], (1 << 3) | 2); /* Recovery.conns */
	cend = at + pb_get_varint(k->payload, end, &at);
	while (at < cend) {
		uint64_t key = pb_get_varint(k->payload, cend, &at);

		if ((key & 7) == 0) {
			uint64_t x = pb_get_varint(k->payload, cend, &at);

			if ((key >> 3) < 8)
				v[key >> 3] = x;
		} else {
			assert_int_equal(key & 7, 2);
			at += pb_get_varint(k->payload, cend, &at);
		}
	}
}

/* Restore a log of one session "a/net" holding connection 1 (held) whose
 * records after the session's are `recs` (type, body), into `k`. */
static void restore_one(struct log *l, struct catch *k, struct custody_result *res)
{
	struct event_base *base = event_base_new();
	struct custody *c = custody_with_log(log_memfd(l, 0));
	Baton__Control__Custody cm = BATON__CONTROL__CUSTODY__INIT;
	uint64_t ids[1] = { 1 };
	int pair[2], sv[2], err = 0, fds[1];
	uint8_t buf[64];
	struct frame_msg fm = { .type = 1, .data = buf, .fds = fds, .nfds = 1 };
	static const struct handoff_target_ops ops = { catch_prepare, catch_commit,
						       catch_abort, catch_done };
	struct custody_restore *r;
	struct handoff_target *t;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
	fds[0] = pair[0];
	cm.n_add = 1;
	cm.add = ids;
	fm.len = baton__control__custody__pack(&cm, buf);
	assert_int_equal(custody_handle(c, &fm), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
	t = handoff_target_new(base, sv[1], 2000, &ops, k);
	assert_non_null(t);
	got_n = 0;
	r = custody_restore_start(base, c, sv[0], getpid(), 2000, NULL, 2, NULL,
				  restore_cb, NULL, &err);
	assert_non_null(r);
	for (int i = 0; i < 1000 && (!k->done || got_n == 0); i++)
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	assert_non_null(k->payload);
	*res = got;
	custody_restore_free(r);
	handoff_target_free(t);
	close(pair[1]);
	event_base_free(base);
}

/* Bug: a connection whose last word was a CKPT_TLS went to the restored
 * worker without `drop`. A worker of an older release (one a canary's or
 * a rollback's sessions are restored into) does not know ConnRecovery.tls
 * and resumed the TLS connection with the session record's record layer:
 * sequence numbers the peer had seen already, so records under nonces
 * already used with the same keys went on the wire. Such a connection
 * now carries drop (what any release honours: closed) and tls_resume
 * (this release's "the layer in tls makes the drop moot"); one whose DROP
 * came after its CKPT_TLS carries drop alone. */
static void test_restore_tls_drop_for_older_releases(void **state)
{
	/* ConnRecovery {written 5, tls {}} */
	static const uint8_t tlsrec[] = { 1 << 3, 5, (6 << 3) | 2, 0 };
	static const uint8_t droprec[] = { 4 << 3, 1 };
	struct log l;
	struct catch k = { 0 };
	struct custody_result res;
	uint64_t v[8];

	(void)state;
	log_init(&l);
	log_session(&l, "a/net", 1, 1);
	log_conn(&l, CKPT_DROP, 1, droprec, sizeof(droprec));
	log_conn(&l, CKPT_TLS, 1, tlsrec, sizeof(tlsrec));
	restore_one(&l, &k, &res);
	restored_conn_fields(&k, v);
	assert_int_equal(v[4], 1); /* drop: an older release closes it */
	assert_int_equal(v[7], 1); /* tls_resume: this one goes on */
	assert_int_equal(res.connections_kept, 1);
	assert_int_equal(res.connections_reconnected, 0);
	free(k.payload);

	memset(&k, 0, sizeof(k));
	log_init(&l);
	log_session(&l, "a/net", 1, 1);
	log_conn(&l, CKPT_TLS, 1, tlsrec, sizeof(tlsrec));
	log_conn(&l, CKPT_DROP, 1, droprec, sizeof(droprec));
	restore_one(&l, &k, &res);
	restored_conn_fields(&k, v);
	assert_int_equal(v[4], 1);
	assert_int_equal(v[7], UINT64_MAX); /* the DROP is the last word */
	assert_int_equal(res.connections_reconnected, 1);
	free(k.payload);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ids_at_and_past_the_bound),
		cmocka_unit_test(test_bad_record_drops_earlier_one),
		cmocka_unit_test(test_committed_past_the_file),
		cmocka_unit_test(test_restore_rejects_too_many_ids),
		cmocka_unit_test(test_handle_lost_fds),
		cmocka_unit_test(test_handle_keeps_a_reserve),
		cmocka_unit_test(test_end_releases_everything),
		cmocka_unit_test(test_impossible_record_skipped),
		cmocka_unit_test(test_restore_tls_drop_for_older_releases),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
