/* sessiond/resolver.h: network host names resolved without blocking the
 * event loop (libevent's evdns).
 *
 * Numeric hosts never get here (upstream.c resolves them at once with
 * AI_NUMERICHOST: no DNS). A name is looked up in the hosts file first
 * (/etc/hosts, loaded once when the resolver is made), then asked of the
 * resolv.conf name servers, A and AAAA in parallel. Each query times out
 * after RESOLVER_TIMEOUT_S and is tried RESOLVER_ATTEMPTS times unless
 * resolv.conf says otherwise ("options timeout:N attempts:N"); a lookup
 * that gets no answer fails with EVUTIL_EAI_AGAIN or EVUTIL_EAI_FAIL.
 * Nothing is cached: every connect attempt asks again, so no answer
 * outlives its TTL here.
 *
 * BATON_RESOLV_CONF (environment) names another resolv.conf: tests point
 * it at a name server of their own on loopback.
 *
 * Contract: done() is always called later from the event loop, never from
 * within resolver_start(), exactly once unless the lookup is cancelled;
 * after resolver_cancel() it is never called and the handle is gone. So a
 * caller that cancels its lookup when it is freed, frozen or migrated can
 * never be reached by a late answer (evdns itself answers a cancelled
 * request later: the handle absorbs that answer).
 *
 * Made outside the loop (file I/O: resolv.conf, the hosts file).
 * resolver_drain() cancels every lookup and runs non-blocking passes of
 * the event loop so that evdns can hand the cancelled requests back (it
 * frees them only then): call it when the loop is over but everything the
 * loop's callbacks touch is still whole (bouncer_quiesce()). resolver_free()
 * never runs the loop (the worker may be half freed by then).
 */
#ifndef BATON_SESSIOND_RESOLVER_H
#define BATON_SESSIOND_RESOLVER_H

#include <stddef.h>

#define RESOLVER_TIMEOUT_S 5
#define RESOLVER_ATTEMPTS 2

struct addrinfo;
struct event_base;
struct resolver;
struct resolver_lookup;

/* err: 0 or an EVUTIL_EAI_* code (evutil_gai_strerror()); res (err == 0)
 * belongs to the callee: evutil_freeaddrinfo(). */
typedef void (*resolver_done_fn)(int err, struct addrinfo *res, void *arg);

/* NULL on failure (out of memory). A missing or unreadable resolv.conf
 * leaves the hosts file and 127.0.0.1 as the name server (evdns default). */
struct resolver *resolver_new(struct event_base *base);
void resolver_drain(struct resolver *r); /* accepts NULL */
void resolver_free(struct resolver *r); /* accepts NULL */

/* Look up host (a name) for a TCP connection to port (numeric). NULL:
 * out of memory (done is not called). */
struct resolver_lookup *resolver_start(struct resolver *r, const char *host,
				       const char *port, resolver_done_fn done,
				       void *arg);
void resolver_cancel(struct resolver_lookup *l); /* accepts NULL */

/* Lookups started and not yet answered or cancelled. */
size_t resolver_pending(const struct resolver *r);

#endif
