/* model: scaling the trace (see model.h for the rules). */
#include "model.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct model {
	const struct trace *tr;
	struct model_params p;
	unsigned copies;
	double speed;
	uint16_t *user_chans;     /* nbouncer * cpu (cpu = min(chans_per_user, nchans)) */
	unsigned cpu;
	uint32_t **members;       /* per channel */
	unsigned *nmembers;
	struct model_event *sched;
	size_t nsched;
	struct model_presence *pres;
	size_t npres;
};

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

static uint64_t rng_next(uint64_t *s)
{
	*s += 0x9e3779b97f4a7c15ULL;
	return mix64(*s);
}

static double rng_unit(uint64_t *s)
{
	return (double)(rng_next(s) >> 11) / 9007199254740992.0;
}

const char *model_chan_name(unsigned ch, char *buf, size_t len)
{
	snprintf(buf, len, "#lg%u", ch);
	return buf;
}

int model_chan_index(const char *name, size_t len, unsigned nchans)
{
	if (len < 4 || strncasecmp(name, "#lg", 3) != 0)
		return -1;
	unsigned v = 0;
	for (size_t i = 3; i < len; i++) {
		if (name[i] < '0' || name[i] > '9' || v > 100000)
			return -1;
		v = v * 10 + (unsigned)(name[i] - '0');
	}
	return v < nchans ? (int)v : -1;
}

static unsigned chan_of(const struct model *m, unsigned copy, unsigned tchan)
{
	return (unsigned)((copy * m->tr->nchans + tchan) % m->p.nchans);
}

/* ---- bouncer users' channels ---- */

static int plan_users(struct model *m)
{
	unsigned nch = m->p.nchans;
	double *w = calloc(nch, sizeof(*w));
	uint64_t rs = m->p.seed ^ 0x5eedULL;
	int r = -ENOMEM;

	m->cpu = m->p.chans_per_user < nch ? m->p.chans_per_user : nch;
	if (m->cpu == 0)
		m->cpu = 1;
	m->user_chans = calloc((size_t)m->p.nbouncer * m->cpu, sizeof(*m->user_chans));
	m->members = calloc(nch, sizeof(*m->members));
	m->nmembers = calloc(nch, sizeof(*m->nmembers));
	if (!w || !m->user_chans || !m->members || !m->nmembers)
		goto out;
	double total = 0;
	for (unsigned k = 0; k < m->copies; k++)
		for (unsigned j = 0; j < m->tr->nchans; j++)
			w[chan_of(m, k, j)] += m->tr->chan_nicks[j];
	for (unsigned c = 0; c < nch; c++)
		total += w[c];
	for (unsigned u = 0; u < m->p.nbouncer; u++) {
		uint16_t *uc = &m->user_chans[(size_t)u * m->cpu];
		for (unsigned i = 0; i < m->cpu; i++) {
			unsigned pick = 0;
			for (int tries = 0; tries < 1000; tries++) {
				double x = rng_unit(&rs) * total;
				for (pick = 0; pick + 1 < nch && x >= w[pick]; pick++)
					x -= w[pick];
				bool dup = false;
				for (unsigned j = 0; j < i; j++)
					dup |= uc[j] == pick;
				if (!dup)
					break;
				/* many tries failed (tiny weights left): take the
				 * first free channel */
				if (tries == 999)
					for (pick = 0; pick < nch; pick++) {
						dup = false;
						for (unsigned j = 0; j < i; j++)
							dup |= uc[j] == pick;
						if (!dup)
							break;
					}
			}
			uc[i] = (uint16_t)pick;
		}
		for (unsigned i = 0; i < m->cpu; i++)
			m->nmembers[uc[i]]++;
	}
	for (unsigned c = 0; c < nch; c++) {
		m->members[c] = calloc(m->nmembers[c] ? m->nmembers[c] : 1, sizeof(uint32_t));
		if (!m->members[c])
			goto out;
		m->nmembers[c] = 0;
	}
	for (unsigned u = 0; u < m->p.nbouncer; u++)
		for (unsigned i = 0; i < m->cpu; i++) {
			unsigned c = m->user_chans[(size_t)u * m->cpu + i];
			m->members[c][m->nmembers[c]++] = u;
		}
	r = 0;
out:
	free(w);
	return r;
}

/* ---- schedule ---- */

static int sched_cmp(const void *a, const void *b)
{
	const struct model_event *x = a, *y = b;
	if (x->at != y->at)
		return x->at < y->at ? -1 : 1;
	return x->src < y->src ? -1 : x->src > y->src;
}

static double capped_gap(const struct model *m, size_t i)
{
	/* gap before event i (i > 0), or 1 trace second at a wrap */
	const struct trace *tr = m->tr;
	double g = i ? tr->ev[i].t - tr->ev[i - 1].t : 1.0;
	if (g < 0)
		g = 0;
	return g > m->p.max_gap ? m->p.max_gap : g;
}

static int bouncer_for(const struct model *m, uint32_t who, unsigned ch)
{
	uint64_t h = mix64(m->p.seed * 31 + who);
	if ((double)(h % 1000000) / 1000000.0 >= m->p.bouncer_share || !m->nmembers[ch])
		return -1;
	return (int)m->members[ch][mix64(h ^ ch) % m->nmembers[ch]];
}

/* Largest difference (0..1) between the kind shares of the events a copy
 * starting at index i replays within the duration and the whole trace's. */
static double window_score(const struct model *m, size_t i)
{
	const struct trace *tr = m->tr;
	uint64_t cnt[LG_NKINDS] = { 0 }, n = 0;
	double at = 0, worst = 0;

	while (at < m->p.duration && n < tr->nev) {
		cnt[tr->ev[i].kind]++;
		n++;
		i = (i + 1) % tr->nev;
		at += capped_gap(m, i) / m->speed;
	}
	for (int k = 0; k < LG_NKINDS; k++) {
		double d = (double)cnt[k] / (double)(n ? n : 1) - trace_mix(tr, k);
		if (d < 0)
			d = -d;
		if (d > worst)
			worst = d;
	}
	return worst;
}

/* Where copy k starts: in its own stratum of the trace ([k/K, (k+1)/K) of
 * the events, so copies replay different days), the candidate among
 * MODEL_CANDIDATES evenly spaced ones whose window mix is closest to the
 * whole trace's. A short run replays only a few hundred events per copy,
 * and the trace's mix drifts from day to day (quiet days are mostly joins
 * and quits): without this choice a 40-second run could be 15 points off
 * the trace's mix by the luck of where it started. */
#define MODEL_CANDIDATES 32

static size_t pick_start(const struct model *m, unsigned k)
{
	const struct trace *tr = m->tr;
	size_t lo = (size_t)((double)tr->nev * k / m->copies);
	size_t hi = (size_t)((double)tr->nev * (k + 1) / m->copies);
	size_t best = lo;
	double best_score = 2;

	for (unsigned c = 0; c < MODEL_CANDIDATES; c++) {
		size_t i = lo + (hi - lo) * c / MODEL_CANDIDATES;
		double sc = window_score(m, i);
		if (sc < best_score) {
			best_score = sc;
			best = i;
		}
	}
	return best;
}

static int build_schedule(struct model *m)
{
	const struct trace *tr = m->tr;
	size_t cap = (size_t)(m->p.rate * m->p.duration * 1.2) + 1024;
	double sum = 0;

	for (size_t i = 1; i < tr->nev; i++)
		sum += capped_gap(m, i);
	double gavg = sum / (double)tr->nev;
	if (gavg <= 0)
		gavg = 1;
	/* per copy: speed / gavg events per second */
	m->speed = m->p.rate * gavg / m->copies;
	m->sched = malloc(cap * sizeof(*m->sched));
	if (!m->sched)
		return -ENOMEM;
	for (unsigned k = 0; k < m->copies; k++) {
		size_t i = pick_start(m, k);
		double at = 0;
		while (at < m->p.duration) {
			const struct trace_event *e = &tr->ev[i];
			if (m->nsched == cap) {
				size_t nc = cap * 2;
				struct model_event *nv = realloc(m->sched, nc * sizeof(*nv));
				if (!nv)
					return -ENOMEM;
				m->sched = nv;
				cap = nc;
			}
			struct model_event *me = &m->sched[m->nsched++];
			me->at = at;
			me->src = e;
			me->who = k * tr->nnicks + e->nick;
			me->newwho = e->kind == LG_NICK ? k * tr->nnicks + e->aux : 0;
			me->chan = (uint16_t)chan_of(m, k, e->chan);
			me->kind = e->kind;
			me->bouncer = e->kind == LG_PRIVMSG ? bouncer_for(m, me->who, me->chan) : -1;
			i = (i + 1) % tr->nev;
			at += capped_gap(m, i) / m->speed;
		}
	}
	qsort(m->sched, m->nsched, sizeof(*m->sched), sched_cmp);
	return 0;
}

/* ---- initial presence ---- */

struct pairset {
	uint64_t *k; /* key + 1, 0 = empty */
	size_t n, cap;
};

static int pairset_add(struct pairset *s, uint64_t key)
{
	key++;
	if ((s->n + 1) * 2 > s->cap) {
		size_t nc = s->cap ? s->cap * 2 : 4096;
		uint64_t *nk = calloc(nc, sizeof(*nk));
		if (!nk)
			return -ENOMEM;
		for (size_t i = 0; i < s->cap; i++)
			if (s->k[i]) {
				size_t j = mix64(s->k[i]) & (nc - 1);
				while (nk[j])
					j = (j + 1) & (nc - 1);
				nk[j] = s->k[i];
			}
		free(s->k);
		s->k = nk;
		s->cap = nc;
	}
	size_t j = mix64(key) & (s->cap - 1);
	while (s->k[j]) {
		if (s->k[j] == key)
			return 0;
		j = (j + 1) & (s->cap - 1);
	}
	s->k[j] = key;
	s->n++;
	return 1;
}

static int build_presence(struct model *m)
{
	uint32_t nid = model_identities(m);
	uint8_t *quit = calloc(nid, 1);
	struct pairset known = { 0 };
	size_t cap = 0;
	int r = -ENOMEM;

	if (!quit)
		goto out;
	for (size_t i = 0; i < m->nsched; i++) {
		const struct model_event *e = &m->sched[i];
		uint64_t key = ((uint64_t)e->who << 16) | e->chan;
		int added = pairset_add(&known, key);
		if (added < 0)
			goto out;
		if (e->kind == LG_NICK) {
			quit[e->newwho] = quit[e->who];
			if (pairset_add(&known, ((uint64_t)e->newwho << 16) | e->chan) < 0)
				goto out;
		}
		if (added && e->kind != LG_JOIN && !quit[e->who]) {
			if (m->npres == cap) {
				size_t nc = cap ? cap * 2 : 1024;
				struct model_presence *nv = realloc(m->pres, nc * sizeof(*nv));
				if (!nv)
					goto out;
				m->pres = nv;
				cap = nc;
			}
			m->pres[m->npres++] = (struct model_presence){ e->who, e->chan };
		}
		if (e->kind == LG_QUIT)
			quit[e->who] = 1;
	}
	r = 0;
out:
	free(quit);
	free(known.k);
	return r;
}

int model_new(const struct trace *tr, const struct model_params *p,
	      struct model **out, char *err, size_t errlen)
{
	struct model *m = calloc(1, sizeof(*m));
	int r = -ENOMEM;

	*out = NULL;
	if (!m)
		goto fail;
	if (!p->nchans || p->nchans > 65535 || p->rate <= 0 || p->duration <= 0) {
		snprintf(err, errlen, "model: need 1..65535 channels, a positive rate and duration");
		free(m);
		return -EINVAL;
	}
	m->tr = tr;
	m->p = *p;
	if (m->p.max_gap <= 0)
		m->p.max_gap = 1e18;
	m->copies = (unsigned)((p->nchans + tr->nchans - 1) / tr->nchans);
	if (!m->copies)
		m->copies = 1;
	if ((uint64_t)m->copies * tr->nnicks > 0xffffffffULL / 2) {
		snprintf(err, errlen, "model: too many copies of the trace's nicks");
		model_free(m);
		return -E2BIG;
	}
	if ((r = plan_users(m)) < 0 || (r = build_schedule(m)) < 0 ||
	    (r = build_presence(m)) < 0)
		goto fail;
	*out = m;
	return 0;
fail:
	snprintf(err, errlen, "model: %s", strerror(-r));
	model_free(m);
	return r;
}

void model_free(struct model *m)
{
	if (!m)
		return;
	if (m->members)
		for (unsigned c = 0; c < m->p.nchans; c++)
			free(m->members[c]);
	free(m->members);
	free(m->nmembers);
	free(m->user_chans);
	free(m->sched);
	free(m->pres);
	free(m);
}

unsigned model_copies(const struct model *m) { return m->copies; }
uint32_t model_identities(const struct model *m) { return m->copies * m->tr->nnicks; }
double model_speed(const struct model *m) { return m->speed; }

const uint16_t *model_user_chans(const struct model *m, unsigned user, unsigned *n)
{
	*n = m->cpu;
	return &m->user_chans[(size_t)user * m->cpu];
}

const uint32_t *model_chan_members(const struct model *m, unsigned ch, unsigned *n)
{
	*n = m->nmembers[ch];
	return m->members[ch];
}

const struct model_event *model_schedule(const struct model *m, size_t *n)
{
	*n = m->nsched;
	return m->sched;
}

const struct model_presence *model_presence(const struct model *m, size_t *n)
{
	*n = m->npres;
	return m->pres;
}
