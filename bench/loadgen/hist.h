/* hist: a log-bucketed histogram of non-negative integers (latencies in
 * microseconds, line lengths in bytes) with percentiles.
 *
 * Buckets are 2% wide above 64 and exact below, so a percentile is off by at
 * most 2%: plenty for p50/p99 of relay latency, and a fixed 3 KiB per
 * histogram whatever the sample count (a 2,000-user run checks millions of
 * deliveries). Plain value type, no allocation. */
#ifndef LOADGEN_HIST_H
#define LOADGEN_HIST_H

#include <stdint.h>

#define HIST_NBUCKETS 768

struct hist {
	uint64_t n;
	uint64_t sum;
	uint64_t max;
	uint32_t b[HIST_NBUCKETS];
};

void hist_add(struct hist *h, uint64_t v);
/* The value at quantile q (0..1), or 0 for an empty histogram. */
uint64_t hist_quantile(const struct hist *h, double q);
void hist_merge(struct hist *dst, const struct hist *src);

#endif
