/* supervisor/metrics.h: Prometheus text exposition over HTTP (evhttp) at
 * [supervisor] metrics = HOST:PORT, path /metrics. Counters come from the
 * supervisor (supervisor_metrics); worker counts are the last STATUS each
 * worker sent (refreshed every few seconds), so a scrape never waits on a
 * worker.
 */
#ifndef BATON_SUPERVISOR_METRICS_H
#define BATON_SUPERVISOR_METRICS_H

#include <stddef.h>

struct event_base;
struct supervisor;
struct metrics;

/* Split "HOST:PORT" / "[V6]:PORT" into host and port (in place). Returns 0
 * or -EINVAL. */
int metrics_split_hostport(char *hostport, char **host, char **port);

int metrics_new(struct event_base *base, struct supervisor *sup,
		const char *hostport, struct metrics **out, char *err,
		size_t errlen);
void metrics_free(struct metrics *m); /* accepts NULL */

#endif
