/* supervisor/metrics.h: Prometheus text exposition over HTTP (evhttp) at
 * [supervisor] metrics = HOST:PORT, path /metrics. The text is
 * supervisor/exposition.c's (families, units, labels: README "Metrics"):
 * counters of the supervisor, and per worker its last STATUS and HEALTH
 * (refreshed every few seconds), so a scrape never waits on a worker.
 * Other modules (the canary's gates) append their own families through
 * metrics_set_extra().
 */
#ifndef BATON_SUPERVISOR_METRICS_H
#define BATON_SUPERVISOR_METRICS_H

#include <stddef.h>

struct event_base;
struct evbuffer;
struct supervisor;
struct metrics;

/* Extra families, appended to every scrape after baton's own (the hook for
 * the canary: baton_canary_gate_value{gate,group} and the like, without
 * touching the exposition). The contract of a callback:
 *   - it runs on the supervisor's loop for each GET /metrics and must not
 *     block or ask a worker anything: write what the module already has;
 *   - it writes whole families: HELP and TYPE first, then every sample of
 *     that family (use expo_family/expo_sample/expo_histogram of
 *     supervisor/exposition.h: they escape label values and format
 *     values), names starting with baton_ and none of README "Metrics"
 *     (a family written twice fails promtool and the scrape);
 *   - base units (seconds, bytes), counters end in _total;
 *   - it writes nothing (or only families with no samples) when it has
 *     nothing to say, e.g. when no canary runs.
 * Registrations are process-wide and independent of metrics_new() (a
 * module may register before the endpoint exists, or when there is none).
 */
typedef void (*metrics_extra_fn)(struct evbuffer *out, void *arg);
#define METRICS_EXTRA_MAX 4
/* Register (fn, arg); returns 0, -EEXIST (already registered) or -ENOSPC
 * (METRICS_EXTRA_MAX reached). */
int metrics_set_extra(metrics_extra_fn fn, void *arg);
/* Unregister (fn, arg); nothing if it is not registered. */
void metrics_unset_extra(metrics_extra_fn fn, void *arg);
/* The whole text of a scrape: the exposition, then every extra. */
void metrics_write(struct supervisor *sup, struct evbuffer *out);

/* Split "HOST:PORT" / "[V6]:PORT" into host and port (in place). Returns 0
 * or -EINVAL. */
int metrics_split_hostport(char *hostport, char **host, char **port);

/* Serve GET /metrics on HOSTPORT. NULL on failure, with errno set and a
 * message in err. */
struct metrics *metrics_new(struct event_base *base, struct supervisor *sup,
			    const char *hostport, char *err, size_t errlen);
void metrics_free(struct metrics *m); /* accepts NULL */

#endif
