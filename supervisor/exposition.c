/* supervisor/exposition.c: see exposition.h. */
#include "supervisor/exposition.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "common/control.h"

#include "baton_version.h"
#include "supervisor/supervisor.h"
#include "supervisor/worker_process.h"

const double expo_freeze_bounds[] = {
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
};
const size_t expo_freeze_nbounds =
	sizeof(expo_freeze_bounds) / sizeof(expo_freeze_bounds[0]);

/* common/control.h CONTROL_LATENCY_BOUNDS (its +Inf is implied here). */
const double expo_relay_latency_bounds[] = CONTROL_LATENCY_BOUNDS;
const size_t expo_relay_latency_nbounds =
	sizeof(expo_relay_latency_bounds) / sizeof(expo_relay_latency_bounds[0]);

/* s escaped for a label value (in_help false: \ " and newline) or a HELP
 * text (in_help true: \ and newline). */
static void expo_escape(struct evbuffer *out, const char *s, bool in_help)
{
	const char *run = s;

	for (; *s; s++) {
		const char *esc = NULL;

		if (*s == '\\')
			esc = "\\\\";
		else if (*s == '\n')
			esc = "\\n";
		else if (*s == '"' && !in_help)
			esc = "\\\"";
		if (esc == NULL)
			continue;
		evbuffer_add(out, run, (size_t)(s - run));
		evbuffer_add(out, esc, strlen(esc));
		run = s + 1;
	}
	evbuffer_add(out, run, (size_t)(s - run));
}

static void expo_value(struct evbuffer *out, double v)
{
	if (isnan(v))
		evbuffer_add_printf(out, "NaN");
	else if (isinf(v))
		evbuffer_add_printf(out, "%s", v > 0 ? "+Inf" : "-Inf");
	else
		evbuffer_add_printf(out, "%.12g", v);
}

/* name{labels[,le="le"]} without the value; le NULL: none. */
static void expo_series(struct evbuffer *out, const char *name,
			const struct expo_label *labels, size_t nlabels,
			const char *le)
{
	evbuffer_add(out, name, strlen(name));
	if (nlabels == 0 && le == NULL)
		return;
	evbuffer_add(out, "{", 1);
	for (size_t i = 0; i < nlabels; i++) {
		evbuffer_add_printf(out, "%s%s=\"", i ? "," : "", labels[i].name);
		expo_escape(out, labels[i].value ? labels[i].value : "", false);
		evbuffer_add(out, "\"", 1);
	}
	if (le != NULL)
		evbuffer_add_printf(out, "%sle=\"%s\"", nlabels ? "," : "", le);
	evbuffer_add(out, "}", 1);
}

void expo_family(struct evbuffer *out, const char *name, const char *type,
		 const char *help)
{
	evbuffer_add_printf(out, "# HELP %s ", name);
	expo_escape(out, help, true);
	evbuffer_add_printf(out, "\n# TYPE %s %s\n", name, type);
}

void expo_sample(struct evbuffer *out, const char *name,
		 const struct expo_label *labels, size_t nlabels, double value)
{
	expo_series(out, name, labels, nlabels, NULL);
	evbuffer_add(out, " ", 1);
	expo_value(out, value);
	evbuffer_add(out, "\n", 1);
}

void expo_histogram(struct evbuffer *out, const char *name,
		    const struct expo_label *labels, size_t nlabels,
		    const double *bounds, size_t nbounds,
		    const uint64_t *cumulative, double sum)
{
	char metric[128], le[32];

	snprintf(metric, sizeof(metric), "%s_bucket", name);
	for (size_t i = 0; i <= nbounds; i++) {
		if (i < nbounds)
			snprintf(le, sizeof(le), "%.12g", bounds[i]);
		else
			snprintf(le, sizeof(le), "+Inf");
		expo_series(out, metric, labels, nlabels, le);
		evbuffer_add_printf(out, " %llu\n",
				    (unsigned long long)cumulative[i]);
	}
	snprintf(metric, sizeof(metric), "%s_sum", name);
	expo_sample(out, metric, labels, nlabels, sum);
	snprintf(metric, sizeof(metric), "%s_count", name);
	expo_sample(out, metric, labels, nlabels, (double)cumulative[nbounds]);
}

void expo_hist_init(struct expo_hist *h, const double *bounds, size_t nbounds)
{
	memset(h, 0, sizeof(*h));
	h->bounds = bounds;
	h->nbounds = nbounds < EXPO_HISTOGRAM_MAX_BOUNDS
			     ? nbounds : EXPO_HISTOGRAM_MAX_BOUNDS;
}

void expo_hist_observe(struct expo_hist *h, double v)
{
	if (isnan(v))
		return;
	for (size_t i = 0; i < h->nbounds; i++)
		if (v <= h->bounds[i])
			h->cumulative[i]++;
	h->cumulative[h->nbounds]++;
	h->sum += v;
}

void expo_hist_write(struct evbuffer *out, const char *name,
		     const struct expo_label *labels, size_t nlabels,
		     const struct expo_hist *h)
{
	expo_histogram(out, name, labels, nlabels, h->bounds, h->nbounds,
		       h->cumulative, h->sum);
}

/* --- the supervisor's families ------------------------------------------- */

/* The labels that name one worker: {pid, version, role}. */
struct worker_labels {
	char pid[16];
	struct expo_label l[3];
};

static void worker_labels(struct worker *w, struct worker_labels *wl)
{
	snprintf(wl->pid, sizeof(wl->pid), "%d", (int)worker_pid(w));
	wl->l[0] = (struct expo_label){ "pid", wl->pid };
	wl->l[1] = (struct expo_label){ "role", worker_role(w) };
	wl->l[2] = (struct expo_label){ "version", worker_version(w) };
}

enum status_field {
	SF_SESSIONS, SF_CONNECTIONS, SF_CLIENTS, SF_UPSTREAMS, SF_WAITING,
	SF_HANDSHAKES, SF_LAG, SF_SASL_FAILING,
	SF_STORE_ERRORS, SF_STORE_COMMIT_FAILURES, SF_STORE_REFUSED,
	SF_STORE_PAUSED, SF_STORE_QUEUED, SF_STORE_FAILING, SF_STORE_PENDING,
};

static const struct {
	const char *name, *help;
	enum status_field f;
} status_families[] = {
	{ "baton_worker_sessions", "Sessions the worker holds (last STATUS).", SF_SESSIONS },
	{ "baton_worker_connections", "Connections the worker holds: upstream, client and pending (last STATUS).", SF_CONNECTIONS },
	{ "baton_worker_clients", "Attached client connections (last STATUS).", SF_CLIENTS },
	{ "baton_worker_upstreams_connected", "Sessions connected to their network (last STATUS).", SF_UPSTREAMS },
	{ "baton_worker_upstreams_waiting", "Sessions queued by the reconnect governor for a connection slot (last STATUS).", SF_WAITING },
	{ "baton_worker_tls_handshakes", "Client TLS handshakes in progress (last STATUS).", SF_HANDSHAKES },
	{ "baton_worker_loop_lag_seconds", "Event loop lag of the worker (last STATUS).", SF_LAG },
	{ "baton_worker_sasl_failing", "Sessions whose network refused their SASL and that have not succeeded since (last STATUS).", SF_SASL_FAILING },
	/* The message store (sessiond/history.h); 0 when it is off. */
	{ "baton_worker_store_errors", "Lines the message store did not take and store reads that failed, since the worker started (last STATUS).", SF_STORE_ERRORS },
	{ "baton_worker_store_commit_failures", "Message store commits that failed and were retried (last STATUS).", SF_STORE_COMMIT_FAILURES },
	{ "baton_worker_store_refused_full", "Appends the message store refused with a full queue, retried after a pause of the network (last STATUS).", SF_STORE_REFUSED },
	{ "baton_worker_store_paused_sessions", "Sessions not reading their network while the message store's queue is full (last STATUS).", SF_STORE_PAUSED },
	{ "baton_worker_store_queued", "Operations queued for the message store and not yet committed (last STATUS).", SF_STORE_QUEUED },
	{ "baton_worker_store_failing", "1 while the message store is failing: a commit fails, nothing was committed for 5 s with work waiting, or it could not be opened (last STATUS).", SF_STORE_FAILING },
	{ "baton_worker_store_pending", "Lines waiting in the worker for room in the message store's queue (last STATUS).", SF_STORE_PENDING },
};

static double status_value(const Baton__Control__Status *st,
			   enum status_field f)
{
	switch (f) {
	case SF_SESSIONS: return st->sessions;
	case SF_CONNECTIONS: return st->connections;
	case SF_CLIENTS: return st->clients;
	case SF_UPSTREAMS: return st->upstreams_connected;
	case SF_WAITING: return st->upstreams_waiting;
	case SF_HANDSHAKES: return st->tls_handshakes;
	case SF_LAG: return st->loop_lag_ms / 1e3;
	case SF_SASL_FAILING: return st->sasl_failing;
	case SF_STORE_ERRORS: return st->store ? (double)st->store->errors : 0;
	case SF_STORE_COMMIT_FAILURES:
		return st->store ? (double)st->store->commit_failures : 0;
	case SF_STORE_REFUSED: return st->store ? (double)st->store->refused : 0;
	case SF_STORE_PAUSED: return st->store ? st->store->paused_sessions : 0;
	case SF_STORE_QUEUED: return st->store ? (double)st->store->queued : 0;
	case SF_STORE_FAILING: return st->store && st->store->failing ? 1 : 0;
	case SF_STORE_PENDING: return st->store ? (double)st->store->pending : 0;
	}
	return 0;
}

static void write_build_info(struct evbuffer *out, struct worker *const *ws,
			     size_t n)
{
	struct expo_label sl[] = {
		{ "component", "supervisor" },
		{ "version", BATON_VERSION },
	};

	expo_family(out, "baton_build_info", "gauge",
		    "Always 1; the labels say which build runs (the supervisor, and each live worker).");
	expo_sample(out, "baton_build_info", sl, 2, 1);
	for (size_t i = 0; i < n; i++) {
		struct worker_labels wl;
		struct expo_label l[4];

		if (worker_has_exited(ws[i]))
			continue;
		worker_labels(ws[i], &wl);
		l[0] = (struct expo_label){ "component", "sessiond" };
		memcpy(&l[1], wl.l, sizeof(wl.l));
		expo_sample(out, "baton_build_info", l, 4, 1);
	}
}

static void write_workers(struct evbuffer *out, struct worker *const *ws,
			  size_t n)
{
	struct worker_labels wl;

	expo_family(out, "baton_workers", "gauge",
		    "Worker processes alive (not yet reaped).");
	expo_sample(out, "baton_workers", NULL, 0, (double)n);

	expo_family(out, "baton_worker_up", "gauge",
		    "1 when the worker answered READY and has not exited, else 0.");
	for (size_t i = 0; i < n; i++) {
		worker_labels(ws[i], &wl);
		expo_sample(out, "baton_worker_up", wl.l, 3,
			    worker_is_ready(ws[i]) && !worker_has_exited(ws[i]));
	}
	expo_family(out, "baton_worker_uptime_seconds", "gauge",
		    "Seconds since the worker was spawned.");
	for (size_t i = 0; i < n; i++) {
		worker_labels(ws[i], &wl);
		expo_sample(out, "baton_worker_uptime_seconds", wl.l, 3,
			    worker_uptime_s(ws[i]));
	}
	/* From the last STATUS: none for a worker that has not answered one
	 * yet (zeros would claim an empty worker). */
	for (size_t k = 0; k < sizeof(status_families) / sizeof(status_families[0]); k++) {
		expo_family(out, status_families[k].name, "gauge",
			    status_families[k].help);
		for (size_t i = 0; i < n; i++) {
			if (!worker_has_status(ws[i]))
				continue;
			worker_labels(ws[i], &wl);
			expo_sample(out, status_families[k].name, wl.l, 3,
				    status_value(worker_last_status(ws[i]),
						 status_families[k].f));
		}
	}
}

/* A HEALTH with the relay latency histogram in the bounds we know. */
static bool health_has_latency(const Baton__Control__Health *h)
{
	return h != NULL &&
	       h->n_relay_latency_buckets == expo_relay_latency_nbounds + 1;
}

static void write_health(struct evbuffer *out, struct worker *const *ws,
			 size_t n)
{
	struct worker_labels wl;

	/* Only for workers whose HEALTH arrived: until then (or from a build
	 * that does not answer HEALTH_REQUEST) there is no series at all,
	 * rather than zeros that look like an idle worker. */
	expo_family(out, "baton_relay_latency_seconds", "histogram",
		    "Time from reading a line from the network to queueing it to the clients, per worker (since it started).");
	for (size_t i = 0; i < n; i++) {
		const Baton__Control__Health *h = worker_last_health(ws[i]);
		uint64_t cum[EXPO_HISTOGRAM_MAX_BOUNDS + 1];
		size_t nb = expo_relay_latency_nbounds;

		if (!health_has_latency(h) || nb > EXPO_HISTOGRAM_MAX_BOUNDS)
			continue;
		/* Cumulative as sent; a worker's counts never decrease along
		 * the bounds, but a broken one must not produce text that
		 * says so. */
		for (size_t b = 0; b <= nb; b++) {
			cum[b] = h->relay_latency_buckets[b];
			if (b > 0 && cum[b] < cum[b - 1])
				cum[b] = cum[b - 1];
		}
		worker_labels(ws[i], &wl);
		expo_histogram(out, "baton_relay_latency_seconds", wl.l, 3,
			       expo_relay_latency_bounds, nb, cum,
			       h->has_relay_latency_sum_s ? h->relay_latency_sum_s : 0);
	}

	expo_family(out, "baton_worker_cpu_seconds_total", "counter",
		    "User and system CPU time of the worker (last HEALTH).");
	for (size_t i = 0; i < n; i++) {
		const Baton__Control__Health *h = worker_last_health(ws[i]);

		if (h == NULL || !h->has_cpu_s)
			continue;
		worker_labels(ws[i], &wl);
		expo_sample(out, "baton_worker_cpu_seconds_total", wl.l, 3, h->cpu_s);
	}
	expo_family(out, "baton_worker_resident_memory_bytes", "gauge",
		    "Resident memory of the worker (last HEALTH).");
	for (size_t i = 0; i < n; i++) {
		const Baton__Control__Health *h = worker_last_health(ws[i]);

		if (h == NULL || !h->has_rss_bytes)
			continue;
		worker_labels(ws[i], &wl);
		expo_sample(out, "baton_worker_resident_memory_bytes", wl.l, 3,
			    (double)h->rss_bytes);
	}
	expo_family(out, "baton_worker_upstream_lines_total", "counter",
		    "Lines read from networks by the worker (last HEALTH).");
	for (size_t i = 0; i < n; i++) {
		const Baton__Control__Health *h = worker_last_health(ws[i]);

		if (h == NULL || !h->has_upstream_lines)
			continue;
		worker_labels(ws[i], &wl);
		expo_sample(out, "baton_worker_upstream_lines_total", wl.l, 3,
			    (double)h->upstream_lines);
	}
	expo_family(out, "baton_worker_relayed_lines_total", "counter",
		    "Network lines the worker queued to clients (last HEALTH).");
	for (size_t i = 0; i < n; i++) {
		const Baton__Control__Health *h = worker_last_health(ws[i]);

		if (h == NULL || !h->has_lines_relayed)
			continue;
		worker_labels(ws[i], &wl);
		expo_sample(out, "baton_worker_relayed_lines_total", wl.l, 3,
			    (double)h->lines_relayed);
	}
}

static void write_supervisor(struct evbuffer *out,
			     const struct supervisor_stats *st)
{
	struct expo_label res[1] = { { "result", NULL } };

	expo_family(out, "baton_worker_crashes_total", "counter",
		    "Workers that exited unexpectedly (outside a migration).");
	expo_sample(out, "baton_worker_crashes_total", NULL, 0, st->crashes);
	expo_family(out, "baton_custody_fds", "gauge",
		    "Sockets of the serving worker the supervisor holds (custody; 0 when off).");
	expo_sample(out, "baton_custody_fds", NULL, 0, st->custody_fds);
	expo_family(out, "baton_custody_restores_total", "counter",
		    "Worker crashes whose sessions the next worker adopted from custody.");
	expo_sample(out, "baton_custody_restores_total", NULL, 0, st->custody_restores);
	expo_family(out, "baton_custody_lines_lost_total", "counter",
		    "Lines a crashed worker handled after their session's last checkpoint record (lost from the state, not relayed twice).");
	expo_sample(out, "baton_custody_lines_lost_total", NULL, 0, st->custody_lines_lost);
	expo_family(out, "baton_custody_quarantined", "gauge",
		    "Sessions quarantined as poison pills (implicated in custody_crashes crashes).");
	expo_sample(out, "baton_custody_quarantined", NULL, 0, st->custody_quarantined);
	expo_family(out, "baton_migrations_total", "counter",
		    "Finished upgrades and rollbacks by result (committed: every session arrived; aborted includes partial).");
	res[0].value = "committed";
	expo_sample(out, "baton_migrations_total", res, 1, st->migrations_committed);
	res[0].value = "aborted";
	expo_sample(out, "baton_migrations_total", res, 1, st->migrations_aborted);
	res[0].value = "refused";
	expo_sample(out, "baton_migrations_total", res, 1, st->migrations_refused);
	expo_family(out, "baton_migration_running", "gauge",
		    "1 while a migration runs.");
	expo_sample(out, "baton_migration_running", NULL, 0, st->migration_running);
	expo_family(out, "baton_migration_freeze_seconds", "histogram",
		    "Longest time any session was frozen, per finished (not refused) migration.");
	expo_hist_write(out, "baton_migration_freeze_seconds", NULL, 0, st->freeze);
	if (st->have_last_migration) {
		expo_family(out, "baton_migration_last_freeze_seconds", "gauge",
			    "Longest freeze of the last finished migration.");
		expo_sample(out, "baton_migration_last_freeze_seconds", NULL, 0,
			    st->last_freeze_ms / 1e3);
		expo_family(out, "baton_migration_last_duration_seconds", "gauge",
			    "Duration of the last finished migration, spawn of the new worker to exit of the leaving one.");
		expo_sample(out, "baton_migration_last_duration_seconds", NULL, 0,
			    st->last_total_ms / 1e3);
	}
}

void exposition_write(struct supervisor *sup, struct evbuffer *out)
{
	struct supervisor_stats st;
	size_t n = 0;
	struct worker *const *ws = supervisor_workers(sup, &n);

	supervisor_get_stats(sup, &st);
	write_build_info(out, ws, n);
	write_workers(out, ws, n);
	write_health(out, ws, n);
	write_supervisor(out, &st);
}
