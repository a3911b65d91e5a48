/* hist: see hist.h. */
#include "hist.h"

#include <math.h>

#define EXACT 64
#define STEP 0.0198026272961797 /* log(1.02) */

static unsigned bucket_of(uint64_t v)
{
	if (v < EXACT)
		return (unsigned)v;
	unsigned i = EXACT + (unsigned)(log((double)v / EXACT) / STEP);
	return i < HIST_NBUCKETS ? i : HIST_NBUCKETS - 1;
}

static uint64_t bucket_value(unsigned i)
{
	if (i < EXACT)
		return i;
	/* middle of the bucket */
	return (uint64_t)(EXACT * exp((i - EXACT + 0.5) * STEP));
}

void hist_add(struct hist *h, uint64_t v)
{
	h->b[bucket_of(v)]++;
	h->n++;
	h->sum += v;
	if (v > h->max)
		h->max = v;
}

uint64_t hist_quantile(const struct hist *h, double q)
{
	if (!h->n)
		return 0;
	uint64_t rank = (uint64_t)ceil(q * (double)h->n);
	if (rank < 1)
		rank = 1;
	uint64_t acc = 0;
	for (unsigned i = 0; i < HIST_NBUCKETS; i++) {
		acc += h->b[i];
		if (acc >= rank) {
			uint64_t v = bucket_value(i);
			return v > h->max ? h->max : v;
		}
	}
	return h->max;
}

void hist_merge(struct hist *dst, const struct hist *src)
{
	for (unsigned i = 0; i < HIST_NBUCKETS; i++)
		dst->b[i] += src->b[i];
	dst->n += src->n;
	dst->sum += src->sum;
	if (src->max > dst->max)
		dst->max = src->max;
}
