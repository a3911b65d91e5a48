/* supervisor/exposition.h: the Prometheus text exposition (format 0.0.4)
 * of the supervisor and its workers, and the helpers that write it, so
 * every family follows one set of rules and passes `promtool check
 * metrics`:
 *
 *   - base units in the name: seconds and bytes, never _ms;
 *   - counters end in _total; histograms are _bucket{le}/_sum/_count with
 *     cumulative buckets ending at le="+Inf";
 *   - every family has # HELP and # TYPE before its samples, and all its
 *     samples together (a family is written in one place);
 *   - label values are escaped (\\, \", \n), so a version string or a path
 *     can never break the text.
 *
 * The list of families, their units and labels is README "Metrics".
 * supervisor/metrics.c serves exposition_write() over HTTP and appends
 * what other modules registered with metrics_set_extra() (metrics.h); such
 * a module writes its families with the helpers below.
 *
 * Nothing here allocates outside the evbuffer, keeps a pointer, or talks to
 * a worker: a scrape reads what the supervisor already has (the last STATUS
 * and HEALTH of each worker, refreshed every few seconds).
 */
#ifndef BATON_SUPERVISOR_EXPOSITION_H
#define BATON_SUPERVISOR_EXPOSITION_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;
struct supervisor;

/* One label; a NULL value is written as "". */
struct expo_label {
	const char *name;
	const char *value;
};

/* "# HELP name help\n# TYPE name type\n". type: "counter", "gauge",
 * "histogram" (help is escaped as the format wants: \\ and \n). */
void expo_family(struct evbuffer *out, const char *name, const char *type,
		 const char *help);
/* "name{labels} value\n" (no braces without labels). Values are written
 * as Prometheus floats: NaN, +Inf, -Inf or up to 12 significant digits. */
void expo_sample(struct evbuffer *out, const char *name,
		 const struct expo_label *labels, size_t nlabels, double value);
/* The samples of one histogram series: name_bucket{labels,le} for each
 * finite bound and +Inf, then name_sum and name_count. cumulative[i] is the
 * count at or below bounds[i] for i < nbounds, cumulative[nbounds] the
 * total (the +Inf bucket, which is also _count). The family line is the
 * caller's (one family may hold several series). */
void expo_histogram(struct evbuffer *out, const char *name,
		    const struct expo_label *labels, size_t nlabels,
		    const double *bounds, size_t nbounds,
		    const uint64_t *cumulative, double sum);

/* An in-process histogram (e.g. migration freeze in seconds). */
#define EXPO_HISTOGRAM_MAX_BOUNDS 24
struct expo_hist {
	const double *bounds; /* finite upper bounds, ascending; borrowed */
	size_t nbounds;       /* <= EXPO_HISTOGRAM_MAX_BOUNDS */
	uint64_t cumulative[EXPO_HISTOGRAM_MAX_BOUNDS + 1]; /* +Inf last */
	double sum;
};

/* bounds must outlive h (a static array); nbounds is clamped to the max. */
void expo_hist_init(struct expo_hist *h, const double *bounds, size_t nbounds);
void expo_hist_observe(struct expo_hist *h, double v);
void expo_hist_write(struct evbuffer *out, const char *name,
		     const struct expo_label *labels, size_t nlabels,
		     const struct expo_hist *h);

/* Migration freeze buckets (s): 1 ms .. 10 s. */
extern const double expo_freeze_bounds[];
extern const size_t expo_freeze_nbounds;
/* Relay latency bounds (s): common/control.h CONTROL_LATENCY_BOUNDS,
 * what the worker counts into, without its +Inf (the worker sends cumulative
 * counts per bound plus +Inf); a Health with another number of buckets is
 * not shown (a worker of another build with other bounds). */
extern const double expo_relay_latency_bounds[];
extern const size_t expo_relay_latency_nbounds;

/* Every family of the supervisor and its workers (README "Metrics"). */
void exposition_write(struct supervisor *sup, struct evbuffer *out);

#endif
