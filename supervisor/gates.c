/* supervisor/gates.c: see gates.h. */
#include "supervisor/gates.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <json-c/json.h>

#include "common/config.h"
#include "common/control.h"
#include "common/json_builder.h"
#include "common/strmap.h"

enum gate_id {
	G_WORKER_CRASH,
	G_WATCHDOG,
	G_ADOPT_PING,
	G_NETWORK_CLOSED,
	G_NETWORK_BAN,
	G_CLIENTS_CLOSED,
	G_PROTOCOL_ERRORS,
	G_PING_UNANSWERED,
	G_DELIVERY,
	G_LATENCY_P99,
	G_LOOP_LAG,
	G_CPU_PER_1000,
	G_RSS_GROWTH,
	G_ERROR_NUMERICS,
	G_COUNT
};

static const struct {
	const char *name;
	enum gate_kind kind;
	const char *unit;
} gate_defs[G_COUNT] = {
	[G_WORKER_CRASH] = { "worker_crash", GATE_HARD, "" },
	[G_WATCHDOG] = { "watchdog", GATE_HARD, "s" },
	[G_ADOPT_PING] = { "adopt_ping", GATE_HARD, "" },
	[G_NETWORK_CLOSED] = { "network_closed", GATE_HARD, "" },
	[G_NETWORK_BAN] = { "network_ban", GATE_HARD, "" },
	[G_CLIENTS_CLOSED] = { "clients_closed", GATE_HARD, "" },
	[G_PROTOCOL_ERRORS] = { "protocol_errors", GATE_HARD, "" },
	[G_PING_UNANSWERED] = { "ping_unanswered", GATE_HARD, "" },
	[G_DELIVERY] = { "delivery", GATE_DIFFERENTIAL, "lines" },
	[G_LATENCY_P99] = { "relay_latency_p99", GATE_STATISTICAL, "s" },
	[G_LOOP_LAG] = { "loop_lag", GATE_STATISTICAL, "s" },
	[G_CPU_PER_1000] = { "cpu_per_1000_lines", GATE_STATISTICAL, "s" },
	[G_RSS_GROWTH] = { "rss_growth_per_session", GATE_STATISTICAL, "bytes/min" },
	[G_ERROR_NUMERICS] = { "error_numerics_per_session_hour", GATE_STATISTICAL, "" },
};

/* The relay latency histogram's finite bounds (sessiond/health.h
 * HEALTH_LATENCY_BOUNDS, the same in the worker's Health answer; the
 * +Inf bucket follows), for p99. */
static const double gate_latency_bounds[] = CONTROL_LATENCY_BOUNDS;
#define GATE_LAT_BUCKETS (sizeof(gate_latency_bounds) / sizeof(gate_latency_bounds[0]) + 1)

/* One worker's counters at one sample (scalars only). */
struct gate_counts {
	bool have;
	double t;
	unsigned sessions;
	uint64_t upstream_lines, lines_relayed, errors;
	uint64_t hard[6]; /* adopt late, closed, banned, clients, protocol, pings */
	uint64_t lat[GATE_LAT_BUCKETS];
	double cpu_s, rss, lag;
};

/* Per (network, channel): the summed difference of lines per session. */
struct gate_channel {
	double diff;     /* sum over samples of cohort - control per session */
	double control;  /* sum of control lines per session (for the share) */
	unsigned samples;
};

struct gates {
	const struct baton_config *cfg;
	struct gate_counts start[2]; /* [0] cohort, [1] control: canary start (hard) */
	struct gate_counts base[2];  /* statistical baseline (since the last move) */
	struct gate_counts last[2];
	bool rebase;
	bool skip_delivery;          /* the next pair's intervals differ (gates_observe_cohort) */
	struct strmap *channels;     /* "network channel" -> struct gate_channel */
	struct gate_channel **all;   /* every entry of channels (owned) */
	size_t nall;
	char worst_channel[320];
	double worst_diff, worst_control;
	/* differential delivery over every shared channel (lines) */
	double delivery_diff, delivery_expected;
	double delivery_t0, delivery_span; /* seconds compared so far */
	double values[G_COUNT][3];   /* cohort, control, threshold */
	enum gate_verdict verdict[G_COUNT];
	unsigned failing[G_COUNT];
	int tripped;                 /* gate id or -1 */
	char reason[512];
	unsigned samples;
	double lag_max[2];           /* since the baseline */
};

const char *gate_verdict_name(enum gate_verdict v)
{
	switch (v) {
	case GATE_WAITING: return "waiting";
	case GATE_PASS: return "pass";
	case GATE_FAILING: return "failing";
	case GATE_TRIPPED: return "tripped";
	}
	return "?";
}

struct gates *gates_new(const struct baton_config *cfg)
{
	struct gates *g = calloc(1, sizeof(*g));

	if (g == NULL)
		return NULL;
	g->cfg = cfg;
	g->tripped = -1;
	g->channels = strmap_new();
	if (g->channels == NULL) {
		free(g);
		return NULL;
	}
	for (int i = 0; i < G_COUNT; i++)
		g->verdict[i] = gate_defs[i].kind == GATE_HARD ? GATE_PASS : GATE_WAITING;
	return g;
}

void gates_free(struct gates *g)
{
	if (g == NULL)
		return;
	for (size_t i = 0; i < g->nall; i++)
		free(g->all[i]);
	free(g->all);
	strmap_free(g->channels);
	free(g);
}

static void gates_counts(struct gate_counts *c, const Baton__Control__Health *h,
			 double now)
{
	memset(c, 0, sizeof(*c));
	c->have = true;
	c->t = now;
	c->sessions = h->sessions;
	c->upstream_lines = h->upstream_lines;
	c->lines_relayed = h->lines_relayed;
	c->errors = h->upstream_error_numerics;
	c->hard[0] = h->adopt_pings_late;
	c->hard[1] = h->upstream_closed;
	c->hard[2] = h->upstream_banned;
	c->hard[3] = h->clients_closed;
	c->hard[4] = h->protocol_errors;
	c->hard[5] = h->pings_unanswered;
	for (size_t i = 0; i < h->n_relay_latency_buckets && i < GATE_LAT_BUCKETS; i++)
		c->lat[i] = h->relay_latency_buckets[i];
	c->cpu_s = h->cpu_s;
	c->rss = (double)h->rss_bytes;
	c->lag = h->loop_lag_max_s;
}

double gates_p99(const uint64_t *now, const uint64_t *base, size_t n)
{
	/* Prometheus-style: bucket i counts every observation up to bound i,
	 * the last one (+Inf) all of them. */
	uint64_t total = now[n - 1] - base[n - 1];

	if (total == 0)
		return -1;
	for (size_t i = 0; i + 1 < n; i++)
		if ((double)(now[i] - base[i]) >= 0.99 * (double)total)
			return gate_latency_bounds[i];
	return 2 * gate_latency_bounds[n - 2]; /* beyond the last bound */
}

static void gates_set(struct gates *g, int id, double cohort, double control,
		      double threshold)
{
	g->values[id][0] = cohort;
	g->values[id][1] = control;
	g->values[id][2] = threshold;
}

static void gates_do_trip(struct gates *g, int id, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void gates_do_trip(struct gates *g, int id, const char *fmt, ...)
{
	va_list ap;

	g->verdict[id] = GATE_TRIPPED;
	if (g->tripped >= 0)
		return; /* the first one leads */
	g->tripped = id;
	va_start(ap, fmt);
	vsnprintf(g->reason, sizeof(g->reason), fmt, ap);
	va_end(ap);
}

void gates_trip(struct gates *g, const char *name, double value,
		const char *detail)
{
	for (int i = 0; i < G_COUNT; i++) {
		if (strcmp(gate_defs[i].name, name) != 0)
			continue;
		gates_set(g, i, value, 0, 0);
		gates_do_trip(g, i, "%s: %s", name, detail);
		return;
	}
}

/* One sample of a gate that trips after trip_samples failures in a row:
 * true when this one is the trip_samples-th (the caller trips it, with
 * its own reason). */
static bool gates_failing_long_enough(struct gates *g, int id, bool fail)
{
	if (g->verdict[id] == GATE_TRIPPED)
		return false;
	if (!fail) {
		g->failing[id] = 0;
		g->verdict[id] = GATE_PASS;
		return false;
	}
	g->failing[id]++;
	g->verdict[id] = GATE_FAILING;
	return g->failing[id] >= (unsigned)g->cfg->canary_trip_samples;
}

/* A statistical gate's sample. */
static void gates_judge(struct gates *g, int id, bool fail)
{
	if (gates_failing_long_enough(g, id, fail))
		gates_do_trip(g, id, "%s: cohort %.6g vs control %.6g (threshold %.6g) for %u samples in a row",
			      gate_defs[id].name, g->values[id][0],
			      g->values[id][1], g->values[id][2], g->failing[id]);
}

static void gates_hard(struct gates *g)
{
	static const int ids[6] = { G_ADOPT_PING, G_NETWORK_CLOSED, G_NETWORK_BAN,
				    G_CLIENTS_CLOSED, G_PROTOCOL_ERRORS,
				    G_PING_UNANSWERED };

	for (int k = 0; k < 6; k++) {
		double cohort = (double)(g->last[0].hard[k] - g->start[0].hard[k]);
		double control = (double)(g->last[1].hard[k] - g->start[1].hard[k]);

		gates_set(g, ids[k], cohort, control, 0);
		if (cohort > 0 && g->verdict[ids[k]] != GATE_TRIPPED)
			gates_do_trip(g, ids[k], "%s: %.0f in the cohort since the canary started (control: %.0f)",
				      gate_defs[ids[k]].name, cohort, control);
	}
}

/* Differential delivery. Per interval and (network, channel) shared by
 * both groups: the control's users got s->lines / s->sessions lines each,
 * so the cohort's t->sessions users should have got that many each too —
 * scaled by span, the cohort's interval over the control's (each ends when
 * its worker answers the sample: a worker slow to answer counted longer).
 * The differences (got - expected, in lines) are summed over channels and
 * samples: a steady loss or duplication grows with the traffic, while the
 * timing at the sample edges (a line counted in one group's interval and
 * the other's next) cancels out. The verdict is on the sum over every
 * channel; the reason names the channel that contributes most. */
static void gates_delivery(struct gates *g, const Baton__Control__Health *cohort,
			   const Baton__Control__Health *control, double span)
{
	struct strmap *ctl = strmap_new();
	char key[320];
	bool any = false;

	if (ctl == NULL)
		return;
	for (size_t i = 0; i < control->n_channels; i++) {
		const Baton__Control__ChannelDelivery *c = control->channels[i];

		if (c->sessions == 0)
			continue;
		snprintf(key, sizeof(key), "%s %s", c->network, c->channel);
		strmap_put(ctl, key, (void *)c);
	}
	for (size_t i = 0; i < cohort->n_channels; i++) {
		const Baton__Control__ChannelDelivery *t = cohort->channels[i], *s;
		struct gate_channel *gc;
		double expected;

		if (t->sessions == 0)
			continue;
		snprintf(key, sizeof(key), "%s %s", t->network, t->channel);
		s = strmap_get(ctl, key);
		if (s == NULL)
			continue; /* no control session here in this interval */
		gc = strmap_get(g->channels, key);
		if (gc == NULL) {
			struct gate_channel **all = realloc(g->all, (g->nall + 1) * sizeof(*all));

			if (all == NULL)
				continue;
			g->all = all;
			gc = calloc(1, sizeof(*gc));
			if (gc == NULL || strmap_put(g->channels, key, gc) < 0) {
				free(gc);
				continue;
			}
			g->all[g->nall++] = gc;
		}
		expected = (double)s->lines / s->sessions * t->sessions * span;
		gc->diff += (double)t->lines - expected;
		gc->control += expected;
		gc->samples++;
		g->delivery_diff += (double)t->lines - expected;
		g->delivery_expected += expected;
		any = true;
		if (fabs(gc->diff) > fabs(g->worst_diff) ||
		    strcmp(g->worst_channel, key) == 0) {
			snprintf(g->worst_channel, sizeof(g->worst_channel), "%s", key);
			g->worst_diff = gc->diff;
			g->worst_control = gc->control;
		}
	}
	strmap_free(ctl);
	if (!any)
		return; /* nothing shared in this interval: the verdict stands */
	/* Lines the cohort's worker holds because it is slow are late, not
	 * lost: as many as arrive within twice its relay latency p99 are
	 * tolerated (the latency gate judges slowness). */
	double p99 = g->values[G_LATENCY_P99][0] > 0 ? g->values[G_LATENCY_P99][0] : 0;
	double rate = g->delivery_span > 0 ? g->delivery_expected / g->delivery_span : 0;
	double tol = g->cfg->canary_delivery_lines +
		     g->cfg->canary_delivery_permille * g->delivery_expected / 1000.0 +
		     2 * p99 * rate;
	gates_set(g, G_DELIVERY, g->delivery_expected + g->delivery_diff,
		  g->delivery_expected, tol);
	if (g->verdict[G_DELIVERY] == GATE_TRIPPED)
		return;
	/* A cohort that is slow (its relay p99 over the latency gate's
	 * threshold) holds lines back: a deficit is the latency gate's to
	 * judge until that clears. A surplus is never lateness. */
	if (g->delivery_diff < 0 && g->values[G_LATENCY_P99][0] > g->values[G_LATENCY_P99][2]) {
		g->verdict[G_DELIVERY] = GATE_WAITING;
		return;
	}
	/* Over the tolerance for trip_samples samples in a row, like the
	 * statistical gates: a burst counted by one worker just before its
	 * sample and by the other just after it is a difference for one
	 * sample and cancels at the next, while a loss or duplication stays
	 * in the sum. (A CI run of test_canary_faults tripped here once on such a burst,
	 * +5 with a tolerance of 4.7, in a build that lost nothing.) */
	if (gates_failing_long_enough(g, G_DELIVERY, fabs(g->delivery_diff) > tol))
		gates_do_trip(g, G_DELIVERY, "delivery: the cohort's users got %.0f lines where the control's got the equivalent of %.0f (%+.0f, tolerance %.1f) for %u samples in a row: lines %s; most in %s (%+.0f of %.0f)",
			      g->delivery_expected + g->delivery_diff,
			      g->delivery_expected, g->delivery_diff, tol,
			      g->failing[G_DELIVERY],
			      g->delivery_diff < 0 ? "lost" : "duplicated",
			      g->worst_channel, g->worst_diff, g->worst_control);
}

/* Evidence a statistical gate needs besides min_lines (see their use). */
#define GATES_MIN_EVENTS 5
#define GATES_MIN_RSS_GROWTH (8.0 * 1024 * 1024)

static double gates_rate(double num, double den)
{
	return den > 0 ? num / den : 0;
}

static void gates_statistical(struct gates *g)
{
	const struct gate_counts *b = g->base, *l = g->last;
	const struct baton_config *cfg = g->cfg;
	uint64_t relayed[2], lines[2];
	bool enough;

	for (int k = 0; k < 2; k++) {
		relayed[k] = l[k].lines_relayed - b[k].lines_relayed;
		lines[k] = l[k].upstream_lines - b[k].upstream_lines;
		if (l[k].lag > g->lag_max[k])
			g->lag_max[k] = l[k].lag;
	}
	enough = relayed[0] >= (uint64_t)cfg->canary_min_lines &&
		 relayed[1] >= (uint64_t)cfg->canary_min_lines;

	/* relay latency p99 */
	double p[2];
	for (int k = 0; k < 2; k++)
		p[k] = gates_p99(l[k].lat, b[k].lat, GATE_LAT_BUCKETS);
	double thr = (p[1] < 0 ? 0 : p[1]) * cfg->canary_latency_p99_ratio_pct / 100.0 +
		     cfg->canary_latency_p99_margin_ms / 1000.0;
	gates_set(g, G_LATENCY_P99, p[0], p[1], thr);
	if (enough && p[0] >= 0 && p[1] >= 0)
		gates_judge(g, G_LATENCY_P99, p[0] > thr);

	/* event-loop lag (the worst since the baseline; needs no lines) */
	thr = g->lag_max[1] + cfg->canary_loop_lag_margin_ms / 1000.0;
	gates_set(g, G_LOOP_LAG, l[0].lag, g->lag_max[1], thr);
	gates_judge(g, G_LOOP_LAG, l[0].lag > thr);

	/* CPU per 1,000 upstream lines */
	double cpu[2];
	for (int k = 0; k < 2; k++)
		cpu[k] = gates_rate((l[k].cpu_s - b[k].cpu_s) * 1000.0,
				    (double)lines[k]);
	thr = cpu[1] * cfg->canary_cpu_ratio_pct / 100.0 + 0.05;
	gates_set(g, G_CPU_PER_1000, cpu[0], cpu[1], thr);
	if (enough && lines[0] > 0 && lines[1] > 0)
		gates_judge(g, G_CPU_PER_1000, cpu[0] > thr);

	/* RSS growth per session per minute */
	double rss[2];
	for (int k = 0; k < 2; k++) {
		double minutes = (l[k].t - b[k].t) / 60.0;

		rss[k] = l[k].sessions && minutes > 0
				 ? (l[k].rss - b[k].rss) / l[k].sessions / minutes : 0;
	}
	thr = (rss[1] > 0 ? rss[1] : 0) + cfg->canary_rss_growth_kb_per_min * 1024.0;
	gates_set(g, G_RSS_GROWTH, rss[0], rss[1], thr);
	/* The worker's growth divided by few sessions is mostly allocator
	 * noise: judge once the cohort's worker grew GATES_MIN_RSS_GROWTH. */
	if (enough && l[0].t - b[0].t >= 5.0 && l[0].rss - b[0].rss >= GATES_MIN_RSS_GROWTH)
		gates_judge(g, G_RSS_GROWTH, rss[0] > thr);

	/* upstream error numerics per session-hour */
	double err[2];
	for (int k = 0; k < 2; k++) {
		double hours = (l[k].t - b[k].t) / 3600.0;

		err[k] = l[k].sessions && hours > 0
				 ? (double)(l[k].errors - b[k].errors) / l[k].sessions / hours : 0;
	}
	thr = err[1] + cfg->canary_error_numerics_per_hour;
	gates_set(g, G_ERROR_NUMERICS, err[0], err[1], thr);
	/* A rate from a handful of events means nothing (one 401 in a
	 * one-session cohort is 720 an hour after 5 s): judge from
	 * GATES_MIN_EVENTS errors in the cohort on. */
	if (enough && l[0].errors - b[0].errors >= GATES_MIN_EVENTS)
		gates_judge(g, G_ERROR_NUMERICS, err[0] > thr);
}

void gates_observe(struct gates *g, const Baton__Control__Health *cohort,
		   double cohort_at, const Baton__Control__Health *control,
		   double control_at)
{
	struct gate_counts c[2];
	bool first = !g->last[0].have || g->rebase || g->skip_delivery;
	double dt[2] = { cohort_at - g->last[0].t, control_at - g->last[1].t };

	gates_counts(&c[0], cohort, cohort_at);
	gates_counts(&c[1], control, control_at);
	g->samples++;
	if (!g->start[0].have) {
		/* The cohort's worker is new: everything it counted belongs to
		 * the canary. The control's history before it does not. */
		g->start[0].have = true;
		g->start[1] = c[1];
	}
	for (int k = 0; k < 2; k++) {
		if (!g->base[k].have || g->rebase) {
			g->base[k] = c[k];
			g->lag_max[k] = 0;
		}
		g->last[k] = c[k];
	}
	g->rebase = false;
	g->skip_delivery = false;
	gates_hard(g);
	gates_statistical(g);
	/* The first interval after a move is not comparable (sessions that
	 * just arrived count from their arrival): it only starts the next. */
	if (!first && dt[0] > 0 && dt[1] > 0) {
		if (g->delivery_span == 0)
			g->delivery_t0 = control_at - dt[1];
		g->delivery_span = control_at - g->delivery_t0;
		gates_delivery(g, cohort, control, dt[0] / dt[1]);
	}
}

void gates_observe_cohort(struct gates *g, const Baton__Control__Health *cohort,
			  double cohort_at)
{
	struct gate_counts c;

	if (!g->start[0].have)
		return; /* no control sample yet: nothing is set up */
	gates_counts(&c, cohort, cohort_at);
	/* Only the hard counts move: the next paired sample's intervals
	 * must still start where the last paired one ended. */
	memcpy(g->last[0].hard, c.hard, sizeof(c.hard));
	gates_hard(g);
	/* the cohort's delivery interval ended here, the control's did not */
	g->skip_delivery = true;
}

void gates_rebase(struct gates *g)
{
	g->rebase = true;
	for (int i = 0; i < G_COUNT; i++) {
		if (gate_defs[i].kind != GATE_STATISTICAL ||
		    g->verdict[i] == GATE_TRIPPED)
			continue;
		g->verdict[i] = GATE_WAITING;
		g->failing[i] = 0;
	}
}

const char *gates_tripped(const struct gates *g)
{
	return g->tripped >= 0 ? gate_defs[g->tripped].name : NULL;
}

const char *gates_reason(const struct gates *g)
{
	return g->reason;
}

unsigned gates_samples(const struct gates *g)
{
	return g->samples;
}

size_t gates_count(const struct gates *g)
{
	return G_COUNT;
}

void gates_view(const struct gates *g, size_t i, struct gate_view *out)
{
	out->name = gate_defs[i].name;
	out->kind = gate_defs[i].kind;
	out->unit = gate_defs[i].unit;
	out->cohort = g->values[i][0];
	out->control = g->values[i][1];
	out->threshold = g->values[i][2];
	out->verdict = g->verdict[i];
}

static const char *gate_kind_name(enum gate_kind k)
{
	return k == GATE_HARD ? "hard" : k == GATE_DIFFERENTIAL ? "differential"
								: "statistical";
}

struct json_object *gates_json(const struct gates *g)
{
	struct jb jb_ = JB_INIT, *jb = &jb_;
	struct json_object *a = jb_arr(jb);

	for (size_t i = 0; i < G_COUNT; i++) {
		struct json_object *o = jb_obj(jb);
		struct gate_view v;

		gates_view(g, i, &v);
		jb_add(jb, o, "name", jb_str(jb, v.name));
		jb_add(jb, o, "kind", jb_str(jb, gate_kind_name(v.kind)));
		jb_add(jb, o, "cohort", jb_double(jb, v.cohort));
		jb_add(jb, o, "control", jb_double(jb, v.control));
		jb_add(jb, o, "threshold", jb_double(jb, v.threshold));
		jb_add(jb, o, "verdict", jb_str(jb, gate_verdict_name(v.verdict)));
		jb_add(jb, o, "unit", jb_str(jb, v.unit));
		jb_push(jb, a, o);
	}
	return jb_done(jb, a);
}

void gates_metrics(const struct gates *g, struct evbuffer *out)
{
	static const char *const what[3] = { "cohort", "control", "threshold" };

	for (int k = 0; k < 3; k++) {
		evbuffer_add_printf(out,
			"# HELP baton_canary_gate_%s The %s value of each health gate of the running canary (units: the gate's, see README).\n"
			"# TYPE baton_canary_gate_%s gauge\n", what[k], what[k], what[k]);
		for (int i = 0; i < G_COUNT; i++)
			evbuffer_add_printf(out, "baton_canary_gate_%s{gate=\"%s\"} %.9g\n",
					    what[k], gate_defs[i].name, g->values[i][k]);
	}
	evbuffer_add_printf(out,
		"# HELP baton_canary_gate_tripped 1 for the gate that tripped the running canary.\n"
		"# TYPE baton_canary_gate_tripped gauge\n");
	for (int i = 0; i < G_COUNT; i++)
		evbuffer_add_printf(out, "baton_canary_gate_tripped{gate=\"%s\"} %d\n",
				    gate_defs[i].name, g->tripped == i);
}
