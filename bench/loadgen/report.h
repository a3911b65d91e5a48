/* report: what a run did and found, printed for humans and as JSON.
 *
 * The driver fills struct lg_result; report_* only read it. The timeline
 * is kept here too (append-only, bounded: the first TIMELINE_MAX entries). */
#ifndef LOADGEN_REPORT_H
#define LOADGEN_REPORT_H

#include <stdint.h>
#include <stdio.h>

#include "hist.h"
#include "ledger.h"
#include "trace.h"

#define TIMELINE_MAX 256

struct timeline_entry {
	double t;        /* seconds after traffic start (negative: setup) */
	char what[200];
};

struct lg_result {
	const struct trace *tr;
	/* parameters */
	unsigned nbouncer, nchans, chans_per_user, copies;
	double rate, duration, speed, bouncer_share;
	double excused_max_share;       /* fail above this share of excused deliveries missing */
	uint64_t schedule_events, presence;
	/* generated load */
	uint64_t gen[LG_NKINDS];        /* every IRC command sent, by kind */
	uint64_t gen_scenario[LG_NKINDS]; /* of which from scenarios */
	uint64_t skipped[LG_NKINDS];    /* trace events that had no effect (e.g. PART when not in the channel) */
	uint64_t implicit_joins;        /* JOINs sent so a user could speak (in gen) */
	uint64_t via_bouncer, via_network; /* privmsgs by side */
	struct hist gen_len;
	/* connections */
	uint64_t net_conns, bouncer_conns, peak_net_online;
	uint64_t disconnects;           /* bouncer-side closes not initiated by us, outside restart windows */
	uint64_t disconnects_expected;  /* ... inside baton-restart windows */
	uint64_t net_retries;           /* network-user connects not welcomed within 5 s, retried */
	uint64_t net_closes;            /* network users / observer closed by the server, outside restarts */
	uint64_t upstream_events;       /* QUIT/JOIN/PART/NICK of bouncer nicks seen by the observer, outside restarts */
	uint64_t errors_received;       /* ERROR lines on bouncer clients we did not ask for */
	uint64_t reconnects;            /* bouncer clients reattached by a scenario */
	uint64_t not_attached;          /* bouncer clients not attached at the end */
	uint64_t failed_commands;       /* exited non-zero, killed at the end, or never started */
	uint64_t never_started;         /* of failed_commands: scenarios whose AT never came */
	uint64_t send_failures;         /* numbered lines that could not be queued (dead connection) */
	/* timing */
	double setup_s, traffic_s, drain_s;
	int drained;                    /* outstanding reached 0 */
	/* verification */
	struct ledger_stats led;
	struct timeline_entry timeline[TIMELINE_MAX];
	unsigned ntimeline, timeline_dropped;
};

void timeline_add(struct lg_result *r, double t, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void report_text(FILE *f, const struct lg_result *r);
void report_json(FILE *f, const struct lg_result *r);

#define REPORT_MAX_FAILURES 24

/* Why the run fails, one sentence each (at most max); returns how many
 * reasons there are (0: the run passes). out may be NULL. */
unsigned report_failures(const struct lg_result *r, char (*out)[200], unsigned max);
/* 0 when report_failures() finds nothing (nothing lost, duplicated,
 * reordered, corrupted, echoed or disconnected, the drain completed, every
 * command ran and succeeded, restarts excused no more than their share);
 * 1 otherwise. */
int report_exit_code(const struct lg_result *r);

#endif
