/* bench/store_bench.c: store-bench, the message store's benchmark tool
 * (driven by bench/store_bench). Appends the lines of a trace (JSON lines
 * as tests/data/trace-slice.jsonl) to a store the way an event loop would:
 * append, watch store_fd() with poll(), dispatch; on -EAGAIN wait for the
 * fd. Prints one JSON object: appends/s, commit batch sizes, append-to-
 * durable latency, disk bytes per stored line.
 *
 *   store-bench --backend sqlite --url FILE --trace T [--lines N]
 *               [--rate R] [--networks K] [--normal-sync]
 *
 * --rate 0 (default): as fast as the store takes them (backpressure
 * included); R > 0: R appends a second, paced. Lines cycle through the
 * trace; event i goes to network i % K ("bench/<k>"). */
#include "store/store.h"
#include "common/clock.h"
#include "common/json_builder.h"

#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct line {
	char *target, *sender, *command, *text;
	int64_t t_ms;
};

static struct line *load_trace(const char *path, size_t *n)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		perror(path);
		exit(2);
	}
	struct line *v = NULL;
	size_t len = 0, cap = 0;
	char buf[65536];
	while (fgets(buf, sizeof buf, f)) {
		struct json_object *o = json_tokener_parse(buf), *x;
		if (!o)
			continue;
		const char *type = json_object_object_get_ex(o, "type", &x)
					   ? json_object_get_string(x) : "";
		const char *nick = json_object_object_get_ex(o, "nick", &x)
					   ? json_object_get_string(x) : "someone";
		const char *chan = NULL;
		if (json_object_object_get_ex(o, "chan", &x))
			chan = json_object_get_string(x);
		else if (json_object_object_get_ex(o, "chans", &x) &&
			 json_object_array_length(x) > 0)
			chan = json_object_get_string(json_object_array_get_idx(x, 0));
		const char *text = json_object_object_get_ex(o, "text", &x)
					   ? json_object_get_string(x) : "";
		const char *reason = json_object_object_get_ex(o, "reason", &x)
					     ? json_object_get_string(x) : "";
		const char *newnick = json_object_object_get_ex(o, "newnick", &x)
					      ? json_object_get_string(x) : "x";
		double t = json_object_object_get_ex(o, "t", &x)
				   ? json_object_get_double(x) : 0;
		char line[9000], sender[600];
		const char *cmd;
		snprintf(sender, sizeof sender, "%s!~%s@trace.example", nick, nick);
		if (!chan)
			chan = nick;
		if (strcmp(type, "privmsg") == 0) {
			cmd = "PRIVMSG";
			snprintf(line, sizeof line, ":%s PRIVMSG %s :%s", sender, chan, text);
		} else if (strcmp(type, "action") == 0) {
			cmd = "PRIVMSG";
			snprintf(line, sizeof line, ":%s PRIVMSG %s :\001ACTION %s\001",
				 sender, chan, text);
		} else if (strcmp(type, "join") == 0) {
			cmd = "JOIN";
			snprintf(line, sizeof line, ":%s JOIN %s", sender, chan);
		} else if (strcmp(type, "part") == 0) {
			cmd = "PART";
			snprintf(line, sizeof line, ":%s PART %s :%s", sender, chan, reason);
		} else if (strcmp(type, "quit") == 0) {
			cmd = "QUIT";
			snprintf(line, sizeof line, ":%s QUIT :%s", sender, reason);
		} else if (strcmp(type, "nick") == 0) {
			cmd = "NICK";
			snprintf(line, sizeof line, ":%s NICK %s", sender, newnick);
		} else {
			json_object_put(o);
			continue;
		}
		/* The tags a stored line carries (server-time, msgid). */
		char full[9100];
		snprintf(full, sizeof full,
			 "@time=2026-12-07T12:00:00.000Z;msgid=0123abcd-0000000000000000 %s",
			 line);
		if (strlen(full) > STORE_LINE_MAX)
			full[STORE_LINE_MAX] = 0;
		if (len == cap) {
			cap = cap ? cap * 2 : 4096;
			v = realloc(v, cap * sizeof *v);
			if (!v)
				exit(2);
		}
		v[len].target = strdup(chan);
		v[len].sender = strdup(sender);
		v[len].command = strdup(cmd);
		v[len].text = strdup(full);
		v[len].t_ms = (int64_t)t;
		if (!v[len].target || !v[len].sender || !v[len].text)
			exit(2);
		len++;
		json_object_put(o);
	}
	fclose(f);
	*n = len;
	return v;
}

struct run {
	uint64_t *seq;
	int64_t *t_ns;
	size_t n, acked;
	int64_t *lat_ns;
	uint64_t durable;
};

static void on_durable(void *arg, uint64_t d)
{
	struct run *r = arg;
	int64_t now = clock_mono_ns();
	r->durable = d;
	while (r->acked < r->n && r->seq[r->acked] && r->seq[r->acked] <= d) {
		r->lat_ns[r->acked] = now - r->t_ns[r->acked];
		r->acked++;
	}
}

static int cmp64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	struct store_options o = { 0 };
	const char *trace = NULL;
	size_t nlines = 0, networks = 10;
	double rate = 0;
	static const struct option lo[] = {
		{ "backend", 1, 0, 'b' }, { "url", 1, 0, 'u' },
		{ "trace", 1, 0, 't' },   { "lines", 1, 0, 'n' },
		{ "rate", 1, 0, 'r' },    { "networks", 1, 0, 'k' },
		{ "normal-sync", 0, 0, 's' }, { 0, 0, 0, 0 } };
	int c;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'b':
			o.backend = strcmp(optarg, "postgres") == 0 ? STORE_POSTGRES
								   : STORE_SQLITE;
			break;
		case 'u': o.url = optarg; break;
		case 't': trace = optarg; break;
		case 'n': nlines = strtoul(optarg, NULL, 10); break;
		case 'r': rate = strtod(optarg, NULL); break;
		case 'k': networks = strtoul(optarg, NULL, 10); break;
		case 's': o.sqlite_normal_sync = true; break;
		default:
			fprintf(stderr, "usage: see bench/store_bench.c\n");
			return 2;
		}
	}
	if (!o.url || !trace || networks == 0) {
		fprintf(stderr, "store-bench: --url and --trace are required\n");
		return 2;
	}
	size_t ntrace;
	struct line *tl = load_trace(trace, &ntrace);
	if (ntrace == 0) {
		fprintf(stderr, "store-bench: no lines in %s\n", trace);
		return 2;
	}
	if (nlines == 0)
		nlines = ntrace;
	struct run run = { 0 };
	run.n = nlines;
	run.seq = calloc(nlines, sizeof *run.seq);
	run.t_ns = calloc(nlines, sizeof *run.t_ns);
	run.lat_ns = calloc(nlines, sizeof *run.lat_ns);
	if (!run.seq || !run.t_ns || !run.lat_ns)
		return 2;
	struct store_callbacks cb = { .durable = on_durable };
	char err[512];
	struct store *st = store_open(&o, &cb, &run, err, sizeof err);
	if (!st) {
		fprintf(stderr, "store-bench: %s\n", err);
		return 1;
	}
	char net[32];
	size_t sent = 0, refused = 0;
	int64_t start = clock_mono_ns(), base_ms = clock_wall_ms();
	while (run.acked < nlines) {
		size_t due = nlines;
		if (rate > 0) {
			double el = (double)(clock_mono_ns() - start) / 1e9;
			due = (size_t)(el * rate) + 1;
			if (due > nlines)
				due = nlines;
		}
		while (sent < due) {
			const struct line *l = &tl[sent % ntrace];
			snprintf(net, sizeof net, "bench/%zu", sent % networks);
			struct store_msg m = { .time_ms = base_ms + l->t_ms,
					       .network = net, .target = l->target,
					       .sender = l->sender,
					       .command = l->command, .line = l->text };
			int64_t t = clock_mono_ns();
			int r = store_append(st, &m, &run.seq[sent]);
			if (r == -EAGAIN) {
				refused++;
				break;
			}
			if (r < 0) {
				fprintf(stderr, "store-bench: append: %s\n", strerror(-r));
				return 1;
			}
			run.t_ns[sent++] = t;
		}
		int timeout = 100;
		if (rate > 0 && sent < nlines)
			timeout = 1;
		struct pollfd p = { store_fd(st), POLLIN, 0 };
		poll(&p, 1, timeout);
		store_dispatch(st);
	}
	double secs = (double)(clock_mono_ns() - start) / 1e9;
	struct store_stats s;
	if (store_sync(st, 60000) < 0 ||
	    store_stats(st, &s, err, sizeof err) < 0) {
		fprintf(stderr, "store-bench: stats: %s\n", err);
		return 1;
	}
	qsort(run.lat_ns, nlines, sizeof *run.lat_ns, cmp64);
	struct jb jb = JB_INIT;
	struct json_object *out = jb_obj(&jb), *hist = jb_arr(&jb);
	jb_add(&jb, out, "backend", jb_str(&jb, o.backend == STORE_POSTGRES
						      ? "postgres" : "sqlite"));
	jb_add(&jb, out, "synchronous", jb_str(&jb, o.backend == STORE_POSTGRES
							   ? "synchronous_commit=on"
							   : o.sqlite_normal_sync
							   ? "NORMAL" : "FULL"));
	jb_add(&jb, out, "trace", jb_str(&jb, trace));
	jb_add(&jb, out, "trace_lines", jb_i64(&jb, (int64_t)ntrace));
	jb_add(&jb, out, "lines", jb_i64(&jb, (int64_t)nlines));
	jb_add(&jb, out, "networks", jb_i64(&jb, (int64_t)networks));
	jb_add(&jb, out, "rate_offered", rate > 0 ? jb_double(&jb, rate) : NULL);
	jb_add(&jb, out, "seconds", jb_double(&jb, secs));
	jb_add(&jb, out, "appends_per_s", jb_double(&jb, (double)nlines / secs));
	jb_add(&jb, out, "refused_eagain", jb_i64(&jb, (int64_t)refused));
	jb_add(&jb, out, "commits", jb_i64(&jb, (int64_t)s.commits));
	jb_add(&jb, out, "batch_mean",
	       jb_double(&jb, s.commits ? (double)s.ops_committed / (double)s.commits : 0));
	jb_add(&jb, out, "batch_max", jb_i64(&jb, (int64_t)s.batch_max_seen));
	for (int i = 0; i < 16; i++)
		jb_push(&jb, hist, jb_i64(&jb, (int64_t)s.batch_hist[i]));
	jb_add(&jb, out, "batch_hist_pow2", hist);
	jb_add(&jb, out, "latency_ms_p50",
	       jb_double(&jb, (double)run.lat_ns[nlines / 2] / 1e6));
	jb_add(&jb, out, "latency_ms_p99",
	       jb_double(&jb, (double)run.lat_ns[nlines * 99 / 100] / 1e6));
	jb_add(&jb, out, "latency_ms_max",
	       jb_double(&jb, (double)run.lat_ns[nlines - 1] / 1e6));
	jb_add(&jb, out, "stored_lines", jb_i64(&jb, (int64_t)s.lines));
	jb_add(&jb, out, "line_bytes_per_line",
	       jb_double(&jb, s.lines ? (double)s.line_bytes / (double)s.lines : 0));
	jb_add(&jb, out, "disk_bytes", jb_i64(&jb, (int64_t)s.disk_bytes));
	jb_add(&jb, out, "disk_bytes_per_line",
	       jb_double(&jb, s.lines ? (double)s.disk_bytes / (double)s.lines : 0));
	out = jb_done(&jb, out);
	if (!out)
		return 1;
	printf("%s\n", json_object_to_json_string_ext(out, JSON_C_TO_STRING_PLAIN));
	json_object_put(out);
	size_t lost = store_close(st);
	return lost ? 1 : 0;
}
