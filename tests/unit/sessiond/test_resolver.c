/* tests/unit/sessiond/test_resolver.c: host names resolved off the event
 * loop (sessiond/resolver.c, evdns) and what upstream.c does with them,
 * against a name server of our own on loopback (BATON_RESOLV_CONF points
 * evdns at it; no query ever leaves the machine) served from the same
 * event loop:
 *   irc.test.baton   -> A 127.0.0.1 (no AAAA)
 *   slow.test.baton  -> never answered (the lookup times out)
 *   late.test.baton  -> A 127.0.0.1 after LATE_MS
 * plus "localhost" from /etc/hosts (no query). Checked: answers come from
 * the loop (never from within resolver_start()), a timeout reaches the
 * caller as an error, a cancelled lookup never calls back (freed memory
 * would be touched: the ASan build runs this too), and a session whose
 * lookup is in flight when it is frozen for a migration, released
 * (migrated away) or freed is never reached by the late answer, gives its
 * governor slot back, and (frozen) carries a reconnect deadline. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <event2/util.h>

#include "state.pb-c.h"

#include "common/clock.h"
#include "common/config.h"
#include "sample_state.h"
#include "sessiond/bouncer.h"
#include "sessiond/governor.h"
#include "sessiond/resolver.h"
#include "sessiond/session.h"

#define LATE_MS 300

/* ---- the name server ---- */

struct held {
	uint8_t pkt[512];
	size_t len;
	struct sockaddr_storage from;
	socklen_t fromlen;
	struct event *ev;
	struct dns *d;
};

struct dns {
	int fd;
	struct event *ev;
	char conf[512];
	int queries, answered;
	struct held late[8];
	int nlate;
};

/* The question's name in dotted lower case; *end: just past QTYPE/QCLASS. */
static bool dns_question(const uint8_t *p, size_t len, char *name, size_t cap,
			 size_t *end, int *qtype)
{
	size_t i = 12, n = 0;

	while (i < len && p[i] != 0) {
		size_t l = p[i++];

		if (l > 63 || i + l > len || n + l + 2 > cap)
			return false;
		if (n)
			name[n++] = '.';
		for (size_t k = 0; k < l; k++)
			name[n++] = (char)(p[i + k] | 0x20);
		i += l;
	}
	name[n] = '\0';
	if (i + 5 > len)
		return false;
	*qtype = (p[i + 1] << 8) | p[i + 2];
	*end = i + 5;
	return true;
}

/* Answer query q (the question copied as it came: evdns checks the case
 * it randomized). A: 127.0.0.1; other types: no answer records. */
static void dns_answer(struct dns *d, const uint8_t *q, size_t qlen,
		       const struct sockaddr *to, socklen_t tolen)
{
	uint8_t out[600];
	char name[256];
	size_t end, n;
	int qtype;

	if (!dns_question(q, qlen, name, sizeof(name), &end, &qtype))
		return;
	memcpy(out, q, end);
	out[2] = 0x81; /* QR, RD */
	out[3] = 0x80; /* RA, NOERROR */
	out[4] = 0, out[5] = 1;  /* QDCOUNT */
	out[6] = 0, out[7] = qtype == 1 ? 1 : 0; /* ANCOUNT */
	memset(out + 8, 0, 4);
	n = end;
	if (qtype == 1) {
		static const uint8_t rr[] = { 0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60,
					      0, 4, 127, 0, 0, 1 };
		memcpy(out + n, rr, sizeof(rr));
		n += sizeof(rr);
	}
	sendto(d->fd, out, n, 0, to, tolen);
	d->answered++;
}

static void dns_late_cb(evutil_socket_t fd, short what, void *arg)
{
	struct held *h = arg;

	dns_answer(h->d, h->pkt, h->len, (struct sockaddr *)&h->from, h->fromlen);
}

static struct event_base *dns_base_of;

/* Answer q after LATE_MS. */
static void dns_hold(struct dns *d, const uint8_t *q, size_t len,
		     const struct sockaddr_storage *from, socklen_t fromlen)
{
	struct held *h;
	struct timeval tv = { 0, LATE_MS * 1000 };

	if (d->nlate >= 8)
		return;
	h = &d->late[d->nlate++];
	memcpy(h->pkt, q, len);
	h->len = len;
	h->from = *from;
	h->fromlen = fromlen;
	h->d = d;
	h->ev = evtimer_new(dns_base_of, dns_late_cb, h);
	evtimer_add(h->ev, &tv);
}

static void dns_readable(evutil_socket_t fd, short what, void *arg)
{
	struct dns *d = arg;

	for (;;) {
		uint8_t q[512];
		char name[256];
		struct sockaddr_storage from;
		socklen_t fromlen = sizeof(from);
		size_t end;
		int qtype;
		ssize_t r = recvfrom(d->fd, q, sizeof(q), MSG_DONTWAIT,
				     (struct sockaddr *)&from, &fromlen);

		if (r <= 0)
			return;
		d->queries++;
		if (!dns_question(q, (size_t)r, name, sizeof(name), &end, &qtype))
			continue;
		if (strcmp(name, "irc.test.baton") == 0)
			dns_answer(d, q, (size_t)r, (struct sockaddr *)&from, fromlen);
		else if (strcmp(name, "late.test.baton") == 0)
			dns_hold(d, q, (size_t)r, &from, fromlen);
		/* slow.test.baton and anything else: silence */
	}
}

static void dns_start(struct dns *d, struct event_base *base)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t slen = sizeof(sin);
	FILE *f;

	memset(d, 0, sizeof(*d));
	dns_base_of = base;
	d->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	assert_true(d->fd >= 0);
	inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
	assert_int_equal(bind(d->fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(getsockname(d->fd, (struct sockaddr *)&sin, &slen), 0);
	d->ev = event_new(base, d->fd, EV_READ | EV_PERSIST, dns_readable, d);
	event_add(d->ev, NULL);
	const char *tmp = getenv("TMPDIR"); /* tests honour TMPDIR */

	snprintf(d->conf, sizeof(d->conf), "%s/baton-resolv-%d.conf",
		 tmp && *tmp ? tmp : "/tmp", (int)getpid());
	f = fopen(d->conf, "w");
	assert_non_null(f);
	/* ndots:1 + no search list: names are asked as they are */
	fprintf(f, "nameserver 127.0.0.1:%d\noptions timeout:1 attempts:1 ndots:1\n",
		ntohs(sin.sin_port));
	fclose(f);
	setenv("BATON_RESOLV_CONF", d->conf, 1);
}

static void dns_stop(struct dns *d)
{
	for (int i = 0; i < d->nlate; i++)
		if (d->late[i].ev)
			event_free(d->late[i].ev);
	event_free(d->ev);
	close(d->fd);
	unlink(d->conf);
	unsetenv("BATON_RESOLV_CONF");
}

/* ---- resolver alone ---- */

struct answer {
	int calls;
	int err;
	char addr[64];
};

static void on_answer(int err, struct addrinfo *res, void *arg)
{
	struct answer *a = arg;

	a->calls++;
	a->err = err;
	a->addr[0] = '\0';
	if (err == 0 && res != NULL) {
		getnameinfo(res->ai_addr, res->ai_addrlen, a->addr, sizeof(a->addr),
			    NULL, 0, NI_NUMERICHOST);
		evutil_freeaddrinfo(res);
	}
}

static void pump_ms(struct event_base *base, int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	event_base_loopexit(base, &tv);
	event_base_dispatch(base);
}

static bool pump_until_calls(struct event_base *base, struct answer *a, int ms)
{
	for (int i = 0; i < ms / 10 && a->calls == 0; i++)
		pump_ms(base, 10);
	return a->calls > 0;
}

static void test_answers(void **state)
{
	int fds0 = count_open_fds();
	struct event_base *base = event_base_new();
	struct dns d;
	struct resolver *r;
	struct answer hosts = { 0 }, dns = { 0 };

	dns_start(&d, base);
	r = resolver_new(base);
	assert_non_null(r);

	/* /etc/hosts: answered without a query, but delivered from the loop */
	assert_non_null(resolver_start(r, "localhost", "6667", on_answer, &hosts));
	assert_int_equal(hosts.calls, 0);
	assert_int_equal(resolver_pending(r), 1);
	assert_true(pump_until_calls(base, &hosts, 1000));
	assert_int_equal(hosts.err, 0);
	assert_true(strcmp(hosts.addr, "127.0.0.1") == 0 || strcmp(hosts.addr, "::1") == 0);

	/* our name server */
	assert_non_null(resolver_start(r, "irc.test.baton", "6667", on_answer, &dns));
	assert_int_equal(dns.calls, 0);
	assert_true(pump_until_calls(base, &dns, 3000));
	assert_int_equal(dns.err, 0);
	assert_string_equal(dns.addr, "127.0.0.1");
	assert_true(d.queries >= 1);
	assert_int_equal(resolver_pending(r), 0);

	resolver_drain(r);
	resolver_free(r);
	dns_stop(&d);
	event_base_free(base);
	assert_int_equal(count_open_fds(), fds0);
	(void)state;
}

static void test_timeout(void **state)
{
	struct event_base *base = event_base_new();
	struct dns d;
	struct resolver *r;
	struct answer a = { 0 };
	int64_t t0;

	dns_start(&d, base);
	r = resolver_new(base);
	t0 = clock_mono_ms();
	assert_non_null(resolver_start(r, "slow.test.baton", "6667", on_answer, &a));
	assert_true(pump_until_calls(base, &a, 8000));
	/* timeout:1 attempts:1 (resolv.conf), both queries unanswered */
	assert_int_not_equal(a.err, 0);
	assert_true(clock_mono_ms() - t0 >= 900);
	assert_true(clock_mono_ms() - t0 < 6000);
	assert_int_equal(a.calls, 1);
	resolver_drain(r);
	resolver_free(r);
	dns_stop(&d);
	event_base_free(base);
	(void)state;
}

static void test_cancel(void **state)
{
	struct event_base *base = event_base_new();
	struct dns d;
	struct resolver *r;
	struct answer *late = calloc(1, sizeof(*late));
	struct answer *hosts = calloc(1, sizeof(*hosts));
	struct answer kept = { 0 };
	struct resolver_lookup *l;

	dns_start(&d, base);
	r = resolver_new(base);
	/* in flight at the name server: cancelled, then the answer arrives */
	l = resolver_start(r, "late.test.baton", "6667", on_answer, late);
	assert_non_null(l);
	pump_ms(base, 50);
	assert_true(d.queries >= 1);
	resolver_cancel(l);
	assert_int_equal(resolver_pending(r), 0);
	free(late); /* a late call would touch freed memory (ASan) */
	/* answered from the hosts file, cancelled before its delivery ran */
	l = resolver_start(r, "localhost", "6667", on_answer, hosts);
	resolver_cancel(l);
	free(hosts);
	/* a lookup that goes on meanwhile is not disturbed */
	assert_non_null(resolver_start(r, "late.test.baton", "6667", on_answer, &kept));
	pump_ms(base, 3 * LATE_MS);
	assert_true(d.answered >= 2);
	assert_int_equal(kept.calls, 1);
	assert_int_equal(kept.err, 0);
	/* a lookup still in flight when the resolver goes (worker exit) */
	assert_non_null(resolver_start(r, "slow.test.baton", "6667", on_answer, &kept));
	pump_ms(base, 20);
	resolver_drain(r);
	resolver_free(r);
	assert_int_equal(kept.calls, 1);
	dns_stop(&d);
	event_base_free(base);
	(void)state;
}

/* ---- sessions ---- */

struct env {
	struct event_base *base;
	struct bouncer *b;
	struct baton_config cfg;
	struct config_network net;
	struct config_session sess;
	char *chans[1];
	char port[8];
	int lfd;
	struct dns dns;
	int baseline_fds;
};

static int setup_host(void **state, const char *host)
{
	struct env *e = calloc(1, sizeof(*e));
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t slen = sizeof(sin);

	e->baseline_fds = count_open_fds();
	e->base = event_base_new();
	dns_start(&e->dns, e->base);
	e->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
	assert_int_equal(bind(e->lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(getsockname(e->lfd, (struct sockaddr *)&sin, &slen), 0);
	assert_int_equal(listen(e->lfd, 4), 0);
	snprintf(e->port, sizeof(e->port), "%d", ntohs(sin.sin_port));
	e->cfg.backlog_lines = 100;
	e->cfg.reconnect_min_s = 1;
	e->cfg.reconnect_max_s = 4;
	e->net = (struct config_network){ .name = "example", .host = (char *)host,
					  .port = e->port, .max_connections_per_ip = 1 };
	e->chans[0] = "#baton";
	e->sess = (struct config_session){ .user = "alice", .network = "example",
					   .nick = "alice", .channels = e->chans,
					   .nchannels = 1 };
	e->cfg.networks = &e->net;
	e->cfg.nnetworks = 1;
	e->cfg.sessions = &e->sess;
	e->cfg.nsessions = 1;
	e->b = bouncer_new(e->base, &e->cfg);
	assert_non_null(e->b);
	*state = e;
	return 0;
}

static int setup_slow(void **state) { return setup_host(state, "slow.test.baton"); }
static int setup_late(void **state) { return setup_host(state, "late.test.baton"); }
static int setup_name(void **state) { return setup_host(state, "irc.test.baton"); }
static int setup_localhost(void **state) { return setup_host(state, "localhost"); }

static int teardown(void **state)
{
	struct env *e = *state;

	bouncer_quiesce(e->b); /* as the worker's main() does */
	bouncer_free(e->b);
	dns_stop(&e->dns);
	event_base_free(e->base);
	close(e->lfd);
	assert_int_equal(count_open_fds(), e->baseline_fds);
	free(e);
	return 0;
}

static struct session *the_session(struct env *e)
{
	assert_int_equal(bouncer_nsessions(e->b), 1);
	return bouncer_session_at(e->b, 0);
}

/* Pump until the session has a lookup in flight (the governor lets it go
 * from a timer). */
static struct session *wait_lookup(struct env *e)
{
	struct session *s = NULL;

	for (int i = 0; i < 200; i++) {
		pump_ms(e->base, 5);
		s = the_session(e);
		if (s->lookup != NULL)
			return s;
	}
	fail_msg("no lookup started");
	return NULL;
}

static bool wait_accept(struct env *e, int ms)
{
	for (int i = 0; i < ms / 10; i++) {
		int fd = accept4(e->lfd, NULL, NULL, SOCK_CLOEXEC);

		if (fd >= 0) {
			close(fd);
			return true;
		}
		pump_ms(e->base, 10);
	}
	return false;
}

static void test_session_connects_by_name(void **state)
{
	struct env *e = *state;

	bouncer_start_configured(e->b);
	assert_true(wait_accept(e, 3000));
	assert_true(e->dns.queries >= 1);
	assert_null(the_session(e)->lookup);
	assert_int_equal(the_session(e)->lookup_slot, -1);
}

static void test_session_connects_via_hosts(void **state)
{
	struct env *e = *state;

	bouncer_start_configured(e->b);
	assert_true(wait_accept(e, 3000));
	assert_int_equal(e->dns.queries, 0); /* /etc/hosts: no query */
}

/* A lookup that times out goes through the reconnect backoff: the slot is
 * back, the failure counted, a retry scheduled. */
static void test_session_timeout_backs_off(void **state)
{
	struct env *e = *state;
	struct session *s;
	struct governor *g;

	bouncer_start_configured(e->b);
	s = wait_lookup(e);
	g = bouncer_governor(e->b, "example");
	assert_int_equal(governor_in_use(g, 0), 1);
	for (int i = 0; i < 600 && s->lookup != NULL; i++)
		pump_ms(e->base, 10);
	assert_null(s->lookup);
	assert_null(s->up);
	assert_int_equal(s->reconnect_failures, 1);
	assert_true(s->reconnect_at_ms > 0);
	assert_int_equal(governor_in_use(g, 0), 0);
}

/* Frozen for a migration while its lookup is in flight: cancelled, slot
 * back, a reconnect deadline in the serialized state; the late answer
 * reaches nobody; thawed (aborted migration), it resolves and connects. */
static void test_session_frozen_during_lookup(void **state)
{
	struct env *e = *state;
	struct bouncer_item **items;
	struct session *s;
	uint8_t *out;
	size_t olen, nfds;
	const int *fds;
	struct governor *g = bouncer_governor(e->b, "example");

	bouncer_start_configured(e->b);
	s = wait_lookup(e);
	pump_ms(e->base, 20);
	assert_true(e->dns.queries >= 1);
	assert_int_equal(bouncer_items(e->b, &items), 1);
	bouncer_item_freeze(items[0]);
	assert_null(s->lookup);
	assert_int_equal(governor_in_use(g, 0), 0);
	assert_true(s->reconnect_at_ms > 0);
	assert_int_equal(bouncer_item_serialize(items[0], &out, &olen, &fds, &nfds), 0);
	Baton__State__Item *it = baton__state__item__unpack(NULL, olen, out);
	assert_non_null(it);
	assert_non_null(it->session);
	assert_true(it->session->has_reconnect_at_ms);
	assert_true(it->session->reconnect_at_ms > 0);
	baton__state__item__free_unpacked(it, NULL);
	free(out);
	/* the name server answers meanwhile: nobody is called */
	pump_ms(e->base, 2 * LATE_MS);
	assert_true(e->dns.answered >= 1);
	assert_null(s->up);
	/* aborted: armed again here, it resolves and connects */
	bouncer_governor_hold(e->b, false);
	bouncer_item_thaw(items[0]);
	free(items);
	assert_true(wait_accept(e, 5000));
}

/* Migrated away (released) and freed while the lookup is in flight: the
 * answer comes after the session's memory is gone (ASan). */
static void test_session_released_during_lookup(void **state)
{
	struct env *e = *state;
	struct bouncer_item **items;
	struct governor *g = bouncer_governor(e->b, "example");

	bouncer_start_configured(e->b);
	wait_lookup(e);
	pump_ms(e->base, 20);
	assert_int_equal(bouncer_items(e->b, &items), 1);
	bouncer_item_freeze(items[0]);
	bouncer_item_release(items[0]); /* committed to the target: gone */
	free(items);
	assert_int_equal(bouncer_nsessions(e->b), 0);
	assert_int_equal(governor_in_use(g, 0), 0);
	pump_ms(e->base, 2 * LATE_MS);
	assert_true(e->dns.answered >= 1);
}

/* The worker exits with a lookup in flight: bouncer_quiesce() cancels it
 * and lets evdns hand it back, then bouncer_free() frees everything
 * without running the loop. */
static void test_bouncer_freed_during_lookup(void **state)
{
	struct env *e = *state;

	bouncer_start_configured(e->b);
	wait_lookup(e);
	pump_ms(e->base, 20);
	/* teardown frees it all with the lookup in flight */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_answers),
		cmocka_unit_test(test_timeout),
		cmocka_unit_test(test_cancel),
		cmocka_unit_test_setup_teardown(test_session_connects_by_name, setup_name, teardown),
		cmocka_unit_test_setup_teardown(test_session_connects_via_hosts, setup_localhost, teardown),
		cmocka_unit_test_setup_teardown(test_session_timeout_backs_off, setup_slow, teardown),
		cmocka_unit_test_setup_teardown(test_session_frozen_during_lookup, setup_late, teardown),
		cmocka_unit_test_setup_teardown(test_session_released_during_lookup, setup_late, teardown),
		cmocka_unit_test_setup_teardown(test_bouncer_freed_during_lookup, setup_slow, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
