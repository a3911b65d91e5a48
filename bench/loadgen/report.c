/* report: see report.h. */
#include "report.h"

#include <stdarg.h>
#include <string.h>

#include <json-c/json.h>

void timeline_add(struct lg_result *r, double t, const char *fmt, ...)
{
	if (r->ntimeline >= TIMELINE_MAX) {
		r->timeline_dropped++;
		return;
	}
	struct timeline_entry *e = &r->timeline[r->ntimeline++];
	va_list ap;
	e->t = t;
	va_start(ap, fmt);
	vsnprintf(e->what, sizeof(e->what), fmt, ap);
	va_end(ap);
}

static uint64_t gen_total(const struct lg_result *r)
{
	uint64_t n = 0;
	for (int k = 0; k < LG_NKINDS; k++)
		n += r->gen[k];
	return n;
}

static double share(uint64_t a, uint64_t total)
{
	return total ? 100.0 * (double)a / (double)total : 0.0;
}

/* Largest |generated - trace| share in percentage points. */
static double mix_max_diff(const struct lg_result *r)
{
	double worst = 0;
	for (int k = 0; k < LG_NKINDS; k++) {
		double d = share(r->gen[k], gen_total(r)) - 100.0 * trace_mix(r->tr, k);
		if (d < 0)
			d = -d;
		if (d > worst)
			worst = d;
	}
	return worst;
}

static double ms(uint64_t us) { return (double)us / 1000.0; }

/* Share of the deliveries inside excuse windows that never arrived. */
static double excused_missing_share(const struct ledger_stats *l)
{
	uint64_t in = l->excused_delivered + l->excused_missing;
	return in ? (double)l->excused_missing / (double)in : 0.0;
}

#define FAIL_IF(cond, ...)                                                        \
	do {                                                                      \
		if (cond) {                                                       \
			if (out && n < max)                                       \
				snprintf(out[n], sizeof(out[0]), __VA_ARGS__);    \
			n++;                                                      \
		}                                                                 \
	} while (0)

unsigned report_failures(const struct lg_result *r, char (*out)[200], unsigned max)
{
	const struct ledger_stats *l = &r->led;
	unsigned n = 0;
	unsigned long long u;

	FAIL_IF(!l->lines, "no numbered line was sent");
	FAIL_IF(l->lines && !l->expected, "no delivery was expected outside excuse windows: nothing was checked");
	FAIL_IF((u = l->lost), "%llu deliveries lost (%llu distinct lines)", u, (unsigned long long)l->lost_lines);
	FAIL_IF((u = l->duplicated), "%llu deliveries duplicated", u);
	FAIL_IF((u = l->out_of_order), "%llu deliveries out of order", u);
	FAIL_IF((u = l->corrupted), "%llu lines arrived corrupted (payload length or checksum wrong)", u);
	FAIL_IF((u = l->malformed), "%llu lines arrived with an unreadable header", u);
	FAIL_IF((u = l->foreign), "%llu foreign lines (%llu echoed back to their sender)", u,
		(unsigned long long)l->echoed);
	FAIL_IF((u = l->internal_errors), "%llu internal errors (out of memory?)", u);
	FAIL_IF(l->delivered > l->expected, "received %llu of %llu expected deliveries: more than expected",
		(unsigned long long)l->delivered, (unsigned long long)l->expected);
	/* a restart may cost what was in flight and what a client missed
	 * while away, not most of its window: past the share, the window is
	 * hiding a loss rather than excusing one */
	FAIL_IF(excused_missing_share(l) > r->excused_max_share,
		"%llu of %llu deliveries inside restart excuse windows missing (%.0f%% > %.0f%%)",
		(unsigned long long)l->excused_missing,
		(unsigned long long)(l->excused_delivered + l->excused_missing),
		100.0 * excused_missing_share(l), 100.0 * r->excused_max_share);
	FAIL_IF((u = r->disconnects), "%llu bouncer clients disconnected by the bouncer", u);
	FAIL_IF((u = r->upstream_events), "the network saw %llu QUIT/JOIN/PART/NICK of bouncer nicks", u);
	FAIL_IF((u = r->not_attached), "%llu bouncer clients not attached at the end", u);
	FAIL_IF((u = r->failed_commands - r->never_started), "%llu scenario commands failed", u);
	FAIL_IF((u = r->never_started), "%llu scenarios never started (AT beyond --duration?)", u);
	FAIL_IF(!r->drained, "the drain did not complete within %.1f s: %llu deliveries outstanding, "
		"or a scenario or client still busy", r->drain_s,
		(unsigned long long)(l->expected > l->delivered ? l->expected - l->delivered : 0));
	return n;
}

int report_exit_code(const struct lg_result *r)
{
	return report_failures(r, NULL, 0) ? 1 : 0;
}

void report_text(FILE *f, const struct lg_result *r)
{
	const struct ledger_stats *l = &r->led;
	uint64_t tot = gen_total(r);

	fprintf(f, "baton-loadgen: %u bouncer users in %u channels (%u each), trace x%u copies, "
		"%.1f trace events/s (x%.0f time compression), %.0f s of traffic\n",
		r->nbouncer, r->nchans, r->chans_per_user, r->copies, r->rate, r->speed, r->traffic_s);
	fprintf(f, "\nevent mix        generated          trace\n");
	for (int k = 0; k < LG_NKINDS; k++)
		fprintf(f, "  %-8s %8llu %6.2f%%   %8llu %6.2f%%\n", lg_kind_names[k],
			(unsigned long long)r->gen[k], share(r->gen[k], tot),
			(unsigned long long)r->tr->kinds[k], 100.0 * trace_mix(r->tr, k));
	fprintf(f, "  largest difference %.2f percentage points; %llu events from scenarios; "
		"%llu trace events without effect; %llu implicit joins\n",
		mix_max_diff(r),
		(unsigned long long)(r->gen_scenario[LG_QUIT] + r->gen_scenario[LG_JOIN]),
		(unsigned long long)(r->skipped[0] + r->skipped[1] + r->skipped[2] + r->skipped[3] + r->skipped[4]),
		(unsigned long long)r->implicit_joins);
	fprintf(f, "message length   p50 %llu p99 %llu bytes   (trace p50 %llu p99 %llu); "
		"privmsgs via bouncer %llu, via network %llu\n",
		(unsigned long long)hist_quantile(&r->gen_len, 0.5),
		(unsigned long long)hist_quantile(&r->gen_len, 0.99),
		(unsigned long long)hist_quantile(&r->tr->msg_len, 0.5),
		(unsigned long long)hist_quantile(&r->tr->msg_len, 0.99),
		(unsigned long long)r->via_bouncer, (unsigned long long)r->via_network);
	fprintf(f, "\nlines sent %llu; deliveries expected %llu, received %llu (%llu replayed)\n",
		(unsigned long long)l->lines, (unsigned long long)l->expected,
		(unsigned long long)l->delivered, (unsigned long long)l->replayed);
	fprintf(f, "lost %llu (%llu distinct lines), duplicated %llu, out of order %llu, foreign %llu (%llu echoes), "
		"malformed %llu, corrupted %llu; receivers with problems %llu\n",
		(unsigned long long)l->lost, (unsigned long long)l->lost_lines,
		(unsigned long long)l->duplicated,
		(unsigned long long)l->out_of_order, (unsigned long long)l->foreign,
		(unsigned long long)l->echoed, (unsigned long long)l->malformed,
		(unsigned long long)l->corrupted, (unsigned long long)l->receivers_bad);
	if (l->excused_lines || l->excused_expected)
		fprintf(f, "excused (sent during restarts): %llu lines, %llu deliveries of which %llu missing "
			"(%.0f%%, at most %.0f%% allowed), %llu arrived\n",
			(unsigned long long)l->excused_lines, (unsigned long long)l->excused_expected,
			(unsigned long long)l->excused_missing, 100.0 * excused_missing_share(l),
			100.0 * r->excused_max_share, (unsigned long long)l->excused_delivered);
	fprintf(f, "latency live     p50 %.1f ms p99 %.1f ms (steady p50 %.1f p99 %.1f; "
		"during commands p50 %.1f p99 %.1f, n=%llu)\n",
		ms(hist_quantile(&l->lat_live, 0.5)), ms(hist_quantile(&l->lat_live, 0.99)),
		ms(hist_quantile(&l->lat_steady, 0.5)), ms(hist_quantile(&l->lat_steady, 0.99)),
		ms(hist_quantile(&l->lat_op, 0.5)), ms(hist_quantile(&l->lat_op, 0.99)),
		(unsigned long long)l->lat_op.n);
	fprintf(f, "latency replayed p50 %.1f ms p99 %.1f ms (n=%llu)\n",
		ms(hist_quantile(&l->lat_replay, 0.5)), ms(hist_quantile(&l->lat_replay, 0.99)),
		(unsigned long long)l->lat_replay.n);
	fprintf(f, "connections: %llu bouncer logins, %llu network-user connections (peak %llu online); "
		"disconnects observed %llu (+%llu expected in baton restarts); "
		"network connects retried %llu, closes by the server %llu; bouncer nicks' QUIT/JOIN/PART/NICK seen by the network %llu; "
		"ERRORs %llu; not attached at end %llu\n",
		(unsigned long long)r->bouncer_conns, (unsigned long long)r->net_conns,
		(unsigned long long)r->peak_net_online, (unsigned long long)r->disconnects,
		(unsigned long long)r->disconnects_expected, (unsigned long long)r->net_retries,
		(unsigned long long)r->net_closes,
		(unsigned long long)r->upstream_events, (unsigned long long)r->errors_received, (unsigned long long)r->not_attached);
	fprintf(f, "setup %.1f s, drain %.1f s (%s)\n", r->setup_s, r->drain_s,
		r->drained ? "complete" : "timed out");
	if (l->nexamples) {
		fprintf(f, "\nproblems (first %u):\n", l->nexamples);
		for (unsigned i = 0; i < l->nexamples; i++)
			fprintf(f, "  %s\n", l->examples[i]);
	}
	fprintf(f, "\ntimeline:\n");
	for (unsigned i = 0; i < r->ntimeline; i++)
		fprintf(f, "  %+9.3f s  %s\n", r->timeline[i].t, r->timeline[i].what);
	if (r->timeline_dropped)
		fprintf(f, "  (%u more entries not kept)\n", r->timeline_dropped);
	char why[REPORT_MAX_FAILURES][200];
	unsigned nwhy = report_failures(r, why, REPORT_MAX_FAILURES);
	fprintf(f, "\nresult: %s\n", nwhy ? "FAIL" : "PASS");
	for (unsigned i = 0; i < nwhy && i < REPORT_MAX_FAILURES; i++)
		fprintf(f, "  - %s\n", why[i]);
}

static struct json_object *jlat(const struct hist *h)
{
	struct json_object *o = json_object_new_object();
	json_object_object_add(o, "n", json_object_new_int64((int64_t)h->n));
	json_object_object_add(o, "p50_ms", json_object_new_double(ms(hist_quantile(h, 0.5))));
	json_object_object_add(o, "p99_ms", json_object_new_double(ms(hist_quantile(h, 0.99))));
	json_object_object_add(o, "max_ms", json_object_new_double(ms(h->max)));
	return o;
}

#define ADD(o, k, v) json_object_object_add((o), (k), (v))
#define I64(v) json_object_new_int64((int64_t)(v))
#define DBL(v) json_object_new_double(v)

void report_json(FILE *f, const struct lg_result *r)
{
	const struct ledger_stats *l = &r->led;
	struct json_object *o = json_object_new_object(), *p = json_object_new_object(),
			   *mix = json_object_new_object(), *del = json_object_new_object(),
			   *conn = json_object_new_object(), *tl = json_object_new_array(),
			   *len = json_object_new_object(), *ex = json_object_new_array();
	uint64_t tot = gen_total(r);

	ADD(p, "bouncer_users", I64(r->nbouncer));
	ADD(p, "channels", I64(r->nchans));
	ADD(p, "chans_per_user", I64(r->chans_per_user));
	ADD(p, "trace_copies", I64(r->copies));
	ADD(p, "rate_events_per_s", DBL(r->rate));
	ADD(p, "time_compression", DBL(r->speed));
	ADD(p, "bouncer_share", DBL(r->bouncer_share));
	ADD(p, "duration_s", DBL(r->duration));
	ADD(p, "schedule_events", I64(r->schedule_events));
	ADD(p, "initial_presence", I64(r->presence));
	ADD(o, "params", p);

	for (int k = 0; k < LG_NKINDS; k++) {
		struct json_object *m = json_object_new_object();
		ADD(m, "generated", I64(r->gen[k]));
		ADD(m, "generated_pct", DBL(share(r->gen[k], tot)));
		ADD(m, "trace", I64(r->tr->kinds[k]));
		ADD(m, "trace_pct", DBL(100.0 * trace_mix(r->tr, k)));
		ADD(m, "from_scenarios", I64(r->gen_scenario[k]));
		ADD(m, "skipped", I64(r->skipped[k]));
		ADD(mix, lg_kind_names[k], m);
	}
	ADD(mix, "max_diff_pp", DBL(mix_max_diff(r)));
	ADD(mix, "implicit_joins", I64(r->implicit_joins));
	ADD(o, "event_mix", mix);

	ADD(len, "p50", I64(hist_quantile(&r->gen_len, 0.5)));
	ADD(len, "p99", I64(hist_quantile(&r->gen_len, 0.99)));
	ADD(len, "trace_p50", I64(hist_quantile(&r->tr->msg_len, 0.5)));
	ADD(len, "trace_p99", I64(hist_quantile(&r->tr->msg_len, 0.99)));
	ADD(o, "message_length_bytes", len);

	ADD(del, "lines_sent", I64(l->lines));
	ADD(del, "via_bouncer", I64(r->via_bouncer));
	ADD(del, "via_network", I64(r->via_network));
	ADD(del, "expected", I64(l->expected));
	ADD(del, "received", I64(l->delivered));
	ADD(del, "replayed", I64(l->replayed));
	ADD(del, "lost", I64(l->lost));
	ADD(del, "lost_lines", I64(l->lost_lines));
	ADD(del, "duplicated", I64(l->duplicated));
	ADD(del, "out_of_order", I64(l->out_of_order));
	ADD(del, "foreign", I64(l->foreign));
	ADD(del, "malformed", I64(l->malformed));
	ADD(del, "corrupted", I64(l->corrupted));
	ADD(del, "echoed", I64(l->echoed));
	ADD(del, "receivers_with_problems", I64(l->receivers_bad));
	{
		struct json_object *bad = json_object_new_array();

		for (unsigned i = 0; i < l->nbad; i++)
			json_object_array_add(bad, I64(l->bad[i]));
		/* indexes: bouncer users in --emit-users order, the observer last */
		ADD(del, "receivers_with_problems_index", bad);
	}
	ADD(del, "excused_lines", I64(l->excused_lines));
	ADD(del, "excused_missing", I64(l->excused_missing));
	ADD(del, "excused_received", I64(l->excused_delivered));
	ADD(del, "excused_expected", I64(l->excused_expected));
	ADD(del, "excused_missing_share", DBL(excused_missing_share(l)));
	ADD(del, "excused_max_share", DBL(r->excused_max_share));
	ADD(del, "latency_live", jlat(&l->lat_live));
	ADD(del, "latency_steady", jlat(&l->lat_steady));
	ADD(del, "latency_during_commands", jlat(&l->lat_op));
	ADD(del, "latency_replayed", jlat(&l->lat_replay));
	for (unsigned i = 0; i < l->nexamples; i++)
		json_object_array_add(ex, json_object_new_string(l->examples[i]));
	ADD(del, "problems", ex);
	ADD(o, "delivery", del);

	ADD(conn, "bouncer_logins", I64(r->bouncer_conns));
	ADD(conn, "network_connections", I64(r->net_conns));
	ADD(conn, "network_peak_online", I64(r->peak_net_online));
	ADD(conn, "disconnects", I64(r->disconnects));
	ADD(conn, "disconnects_expected", I64(r->disconnects_expected));
	ADD(conn, "network_closes", I64(r->net_closes));
	ADD(conn, "network_connect_retries", I64(r->net_retries));
	ADD(conn, "upstream_membership_events", I64(r->upstream_events));
	ADD(conn, "errors_received", I64(r->errors_received));
	ADD(conn, "reconnects", I64(r->reconnects));
	ADD(conn, "not_attached_at_end", I64(r->not_attached));
	ADD(o, "connections", conn);

	for (unsigned i = 0; i < r->ntimeline; i++) {
		struct json_object *e = json_object_new_object();
		ADD(e, "t", DBL(r->timeline[i].t));
		ADD(e, "what", json_object_new_string(r->timeline[i].what));
		json_object_array_add(tl, e);
	}
	ADD(o, "timeline", tl);
	ADD(o, "failed_commands", I64(r->failed_commands));
	ADD(o, "never_started", I64(r->never_started));
	ADD(o, "send_failures", I64(r->send_failures));
	ADD(o, "setup_s", DBL(r->setup_s));
	ADD(o, "traffic_s", DBL(r->traffic_s));
	ADD(o, "drain_s", DBL(r->drain_s));
	ADD(o, "drained", json_object_new_boolean(r->drained));
	char why[REPORT_MAX_FAILURES][200];
	unsigned nwhy = report_failures(r, why, REPORT_MAX_FAILURES);
	struct json_object *fl = json_object_new_array();
	for (unsigned i = 0; i < nwhy && i < REPORT_MAX_FAILURES; i++)
		json_object_array_add(fl, json_object_new_string(why[i]));
	ADD(o, "failures", fl);
	ADD(o, "pass", json_object_new_boolean(!nwhy));
	fprintf(f, "%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	json_object_put(o);
}
