/* supervisor/gates.h: the health gates of a canary (issue 9, README "Canary
 * rollouts"). Pure evaluation: the canary (canary.h) samples both workers at
 * the same time (HEALTH, proto/control.proto) and hands each pair here; the
 * gates compare the cohort (the new worker, T) with the control group (the
 * old worker, S) over the same interval — a paired baseline, as
 * Spinnaker/Kayenta do — and say whether one tripped.
 *
 * Three kinds:
 *  - hard: any event in the cohort since the canary started trips at once
 *    (the worker crashed or missed its watchdog: reported by the canary;
 *    a PING after adoption unanswered; the network closed, killed or banned
 *    a cohort session; an attached client closed by the worker; a malformed
 *    line written; a network PING unanswered);
 *  - differential delivery: per (network, channel), the lines per session
 *    the cohort's users got minus the control's, summed over the samples
 *    (sessions in one channel get the same lines: a build that drops or
 *    duplicates lines shows here although no process can see its own loss);
 *    trips past delivery_lines + delivery_permille of the lines;
 *  - statistical, vs control: relay latency p99, event-loop lag, CPU per
 *    1,000 lines, RSS growth per session, upstream error numerics per
 *    session-hour. None judges before each group relayed min_lines lines
 *    since the last move; one trips after trip_samples failing samples in a
 *    row.
 *
 * Thresholds come from [canary] (common/config.h). Times are seconds of
 * CLOCK_MONOTONIC given by the caller (tests drive them).
 *
 * Ownership: struct gates owns copies of what it needs from the samples;
 * the Health messages are borrowed for the call.
 */
#ifndef BATON_SUPERVISOR_GATES_H
#define BATON_SUPERVISOR_GATES_H

#include <stdbool.h>
#include <stddef.h>

#include "control.pb-c.h"

struct baton_config;
struct evbuffer;
struct gates;
struct json_object;

enum gate_kind { GATE_HARD, GATE_DIFFERENTIAL, GATE_STATISTICAL };

enum gate_verdict {
	GATE_WAITING, /* not enough samples to judge yet */
	GATE_PASS,
	GATE_FAILING, /* failing, not yet trip_samples in a row */
	GATE_TRIPPED,
};

struct gate_view {
	const char *name;
	enum gate_kind kind;
	double cohort, control, threshold;
	enum gate_verdict verdict;
	const char *unit; /* "", "s", "bytes", ... for humans and metrics */
};

struct gates *gates_new(const struct baton_config *cfg);
void gates_free(struct gates *g); /* accepts NULL */

/* One sample of both workers, asked at the same time; *_at: when each
 * answer arrived (seconds, monotonic): a worker's counts end when it
 * answers. */
void gates_observe(struct gates *g, const Baton__Control__Health *cohort,
		   double cohort_at, const Baton__Control__Health *control,
		   double control_at);

/* The control did not answer this sample: only the hard gates judge the
 * cohort's answer (the comparing gates wait for both). */
void gates_observe_cohort(struct gates *g, const Baton__Control__Health *cohort,
			  double cohort_at);

/* A move changed the groups: statistical baselines restart from the next
 * sample (differential sums and hard counts go on). */
void gates_rebase(struct gates *g);

/* The canary saw it directly: the cohort's worker crashed or missed its
 * watchdog ("worker_crash" or "watchdog"); detail goes into the reason. */
void gates_trip(struct gates *g, const char *name, double value,
		const char *detail);

/* The first gate that tripped (NULL: none), and a human reason with its
 * figures. */
const char *gates_tripped(const struct gates *g);
const char *gates_reason(const struct gates *g);

size_t gates_count(const struct gates *g);
void gates_view(const struct gates *g, size_t i, struct gate_view *out);
const char *gate_verdict_name(enum gate_verdict v);

/* [{"name","kind","cohort","control","threshold","verdict","unit"}...];
 * NULL when out of memory. */
struct json_object *gates_json(const struct gates *g);
/* Prometheus families baton_canary_gate_{cohort,control,threshold} and
 * baton_canary_gate_tripped{gate}. */
void gates_metrics(const struct gates *g, struct evbuffer *out);

/* Samples taken, and of them with both workers answering. */
unsigned gates_samples(const struct gates *g);

/* p99 (seconds) between two readings of a latency histogram (Prometheus
 * style: bucket i counts what is at or below HEALTH_LATENCY_BOUNDS[i], the
 * last one, +Inf, everything): the bound where 99 % is reached (the last
 * finite bound doubled beyond it). -1 when empty. Exposed for tests. */
double gates_p99(const uint64_t *now, const uint64_t *base, size_t n);

#endif
