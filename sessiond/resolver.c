/* sessiond/resolver.c: see resolver.h. */
#include "sessiond/resolver.h"

#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>

#include "common/log.h"

struct resolver_lookup {
	struct resolver *r;
	struct resolver_lookup *prev, *next; /* r->lookups */
	struct evdns_getaddrinfo_request *req; /* evdns still owes an answer */
	struct event *deliver; /* an answer evdns gave synchronously */
	resolver_done_fn done;
	void *arg;
	bool starting;  /* inside evdns_getaddrinfo() */
	bool answered;  /* err/res hold the answer, done not called yet */
	bool cancelled; /* the caller is gone: absorb evdns's late answer */
	int err;
	struct addrinfo *res;
};

struct resolver {
	struct event_base *base;
	struct evdns_base *dns;
	struct resolver_lookup *lookups; /* every handle not yet freed */
	size_t pending;
};

/* evdns's own messages go to our log rather than to stderr unformatted:
 * its warnings, and what it says about name servers (down, up again);
 * its debug chatter (one line per query) is dropped. */
static void resolver_log(int is_warning, const char *msg)
{
	if (is_warning)
		log_warn("resolver", "%s", msg);
	else if (strncmp(msg, "Nameserver ", 11) == 0 ||
		 strncmp(msg, "All nameservers", 15) == 0)
		log_info("resolver", "%s", msg);
}

struct resolver *resolver_new(struct event_base *base)
{
	struct resolver *r = calloc(1, sizeof(*r));
	const char *conf = getenv("BATON_RESOLV_CONF");
	char n[16];
	int rc;

	if (r == NULL)
		return NULL;
	r->base = base;
	evdns_set_log_fn(resolver_log);
	/* Its socket does not keep the loop alive while nothing is asked. */
	r->dns = evdns_base_new(base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
	if (r->dns == NULL) {
		free(r);
		return NULL;
	}
	/* Defaults first: resolv.conf's options override them. */
	snprintf(n, sizeof(n), "%d", RESOLVER_TIMEOUT_S);
	evdns_base_set_option(r->dns, "timeout:", n);
	snprintf(n, sizeof(n), "%d", RESOLVER_ATTEMPTS);
	evdns_base_set_option(r->dns, "attempts:", n);
	if (conf == NULL || conf[0] == '\0')
		conf = "/etc/resolv.conf";
	rc = evdns_base_resolv_conf_parse(r->dns, DNS_OPTION_SEARCH |
					  DNS_OPTION_NAMESERVERS |
					  DNS_OPTION_MISC, conf);
	if (rc != 0)
		log_warn("resolver", "%s: cannot use it (evdns error %d): name servers default to 127.0.0.1",
			 conf, rc);
	if (evdns_base_load_hosts(r->dns, NULL) != 0)
		log_warn("resolver", "cannot read the hosts file: names are asked of the name servers only");
	return r;
}

static void lookup_unlink_free(struct resolver_lookup *l)
{
	struct resolver *r = l->r;

	if (l->prev != NULL)
		l->prev->next = l->next;
	else
		r->lookups = l->next;
	if (l->next != NULL)
		l->next->prev = l->prev;
	if (l->deliver != NULL)
		event_free(l->deliver);
	if (l->res != NULL)
		evutil_freeaddrinfo(l->res);
	free(l);
}

/* Hand the answer to the caller; the handle is gone afterwards. */
static void lookup_deliver(struct resolver_lookup *l)
{
	resolver_done_fn done = l->done;
	void *arg = l->arg;
	int err = l->err;
	struct addrinfo *res = l->res;

	l->res = NULL;
	l->r->pending--;
	lookup_unlink_free(l);
	done(err, res, arg);
}

static void lookup_deliver_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	lookup_deliver(arg);
}

static void lookup_answer(int err, struct evutil_addrinfo *res, void *arg)
{
	struct resolver_lookup *l = arg;

	l->req = NULL;
	if (l->cancelled) {
		/* The caller cancelled: this is evdns's EAI_CANCEL (or an
		 * answer that crossed the cancel). Nobody to tell. */
		if (res != NULL)
			evutil_freeaddrinfo(res);
		lookup_unlink_free(l);
		return;
	}
	l->err = err;
	l->res = err == 0 ? res : NULL;
	if (err != 0 && res != NULL)
		evutil_freeaddrinfo(res);
	l->answered = true;
	if (!l->starting)
		lookup_deliver(l);
	/* else: resolver_start() schedules the delivery */
}

struct resolver_lookup *resolver_start(struct resolver *r, const char *host,
				       const char *port, resolver_done_fn done,
				       void *arg)
{
	struct resolver_lookup *l = calloc(1, sizeof(*l));
	struct evutil_addrinfo hints;
	struct evdns_getaddrinfo_request *req;

	if (l == NULL)
		return NULL;
	l->r = r;
	l->done = done;
	l->arg = arg;
	l->next = r->lookups;
	if (r->lookups != NULL)
		r->lookups->prev = l;
	r->lookups = l;
	r->pending++;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_protocol = IPPROTO_TCP;
	hints.ai_flags = EVUTIL_AI_ADDRCONFIG | EVUTIL_AI_NUMERICSERV;
	l->starting = true;
	req = evdns_getaddrinfo(r->dns, host, port, &hints, lookup_answer, l);
	l->starting = false;
	if (!l->answered) {
		l->req = req;
		return l;
	}
	/* Answered on the spot (hosts file, or an immediate error): the
	 * caller hears of it from the loop, like any other answer. */
	l->deliver = event_new(r->base, -1, 0, lookup_deliver_cb, l);
	if (l->deliver == NULL) {
		r->pending--;
		lookup_unlink_free(l);
		return NULL;
	}
	event_active(l->deliver, 0, 0);
	return l;
}

void resolver_cancel(struct resolver_lookup *l)
{
	if (l == NULL || l->cancelled)
		return;
	l->r->pending--;
	if (l->req == NULL) {
		/* Answered, delivery not run yet: drop it all now. */
		lookup_unlink_free(l);
		return;
	}
	/* evdns answers a cancelled request later (EAI_CANCEL): the handle
	 * stays until then, marked, and lookup_answer() frees it. It may
	 * also answer from within the cancel: l is not touched after. */
	l->cancelled = true;
	evdns_getaddrinfo_cancel(l->req);
}

size_t resolver_pending(const struct resolver *r)
{
	return r != NULL ? r->pending : 0;
}

void resolver_drain(struct resolver *r)
{
	struct resolver_lookup *l, *next;
	bool waiting = false;

	if (r == NULL)
		return;
	for (l = r->lookups; l != NULL; l = next) {
		next = l->next;
		if (l->req == NULL) {
			lookup_unlink_free(l); /* answered, never delivered */
		} else if (!l->cancelled) {
			l->cancelled = true;
			evdns_getaddrinfo_cancel(l->req); /* may free l */
		}
	}
	/* evdns hands every cancelled request back through a deferred
	 * callback: non-blocking passes of the loop run them (they free
	 * what evdns allocated for them; without them, it leaks). */
	for (int i = 0; i < 16; i++) {
		waiting = false;
		for (l = r->lookups; l != NULL; l = l->next)
			waiting |= l->req != NULL;
		if (!waiting)
			break;
		event_base_loop(r->base, EVLOOP_NONBLOCK);
	}
}

void resolver_free(struct resolver *r)
{
	if (r == NULL)
		return;
	/* No loop pass here: the rest of the worker may be half freed
	 * (resolver_drain() ran before, while it was whole). A lookup still
	 * running is cancelled by evdns_base_free(); what evdns allocated
	 * for it goes with the process. */
	evdns_base_free(r->dns, 0);
	while (r->lookups != NULL)
		lookup_unlink_free(r->lookups);
	free(r);
}
