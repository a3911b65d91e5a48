/* sessiond/health.c: see health.h. */
#include "sessiond/health.h"
#include "common/clock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/strmap.h"
#include "control.pb-c.h"
#include "sessiond/irc.h"
#include "sessiond/session.h"

const double health_latency_bounds[HEALTH_NBOUNDS] = HEALTH_LATENCY_BOUNDS;

void health_init(struct health *h)
{
	memset(h, 0, sizeof(*h));
	h->gen = 1;
	h->client_link.h = h;
	h->client_link.peer = HEALTH_PEER_CLIENT;
}

/* ---- latency ---- */

size_t health_latency_bucket(double seconds)
{
	size_t i = 0;

	while (i < HEALTH_NBOUNDS && seconds > health_latency_bounds[i])
		i++;
	return i;
}

void health_observe_latency(struct health *h, double seconds)
{
	if (seconds < 0)
		seconds = 0;
	h->latency[health_latency_bucket(seconds)]++;
	h->latency_sum_s += seconds;
}

void health_read_batch(struct health *h)
{
	h->batch_ns = clock_mono_ns();
}

void health_relayed(struct health *h)
{
	h->lines_relayed++;
	if (h->batch_ns)
		health_observe_latency(h, (double)(clock_mono_ns() - h->batch_ns) / 1e9);
}

/* ---- lines from networks ---- */

static bool is_error_numeric(const char *cmd)
{
	return cmd[0] >= '4' && cmd[0] <= '5' && cmd[1] >= '0' && cmd[1] <= '9' &&
	       cmd[2] >= '0' && cmd[2] <= '9' && cmd[3] == '\0';
}

static bool same_nick(const char *a, const char *b)
{
	return a && b && a[0] && irc_casecmp(a, b) == 0;
}

static void count_closed(struct health_link *l)
{
	if (!l->closed_counted) {
		l->closed_counted = true;
		l->h->upstream_closed++;
	}
}

static void count_banned(struct health_link *l)
{
	if (!l->banned_counted) {
		l->banned_counted = true;
		l->h->upstream_banned++;
	}
}

void health_upstream_line(struct health_link *l, const struct irc_msg *m,
			  const char *our_nick, const char *prefix_nick)
{
	struct health *h = l->h;
	const char *cmd = m->command;
	const char *last = m->nparams ? m->params[m->nparams - 1] : "";

	h->upstream_lines++;
	if (is_error_numeric(cmd)) {
		h->upstream_error_numerics++;
		if (strcmp(cmd, "465") == 0 || strcmp(cmd, "463") == 0)
			count_banned(l);
		return;
	}
	if (strcasecmp(cmd, "PING") == 0) {
		if (l->pings_pending == 0)
			l->ping_rx_ms = (h->batch_ns ? h->batch_ns : clock_mono_ns()) / 1000000;
		if (l->pings_pending < UINT16_MAX)
			l->pings_pending++;
	} else if (strcasecmp(cmd, "ERROR") == 0) {
		count_closed(l);
		if (strstr(last, "Excess Flood"))
			count_banned(l);
	} else if (strcasecmp(cmd, "KILL") == 0) {
		if (m->nparams && same_nick(m->params[0], our_nick))
			count_closed(l);
	} else if (strcasecmp(cmd, "QUIT") == 0) {
		if (same_nick(prefix_nick, our_nick) && strstr(last, "Excess Flood"))
			count_banned(l);
	}
}

/* ---- adoption PING, network PINGs ---- */

uint32_t health_adopt_ping(struct health_link *l, int64_t now_ms)
{
	struct health *h = l->h;

	l->adopt_token = ++h->adopt_seq;
	l->adopt_sent_ms = now_ms > 0 ? now_ms : 1;
	h->adopt_pings_sent++;
	return l->adopt_token;
}

void health_adopt_pong(struct health_link *l, const char *tok)
{
	char *end = NULL;
	unsigned long n = strtoul(tok, &end, 10);

	if (l->adopt_sent_ms && end != tok && *end == '\0' && n == l->adopt_token)
		l->adopt_sent_ms = 0;
}

void health_link_check(struct health_link *l, int64_t now_ms,
		       int64_t adopt_timeout_ms, int64_t answer_timeout_ms)
{
	if (l->adopt_sent_ms && now_ms - l->adopt_sent_ms >= adopt_timeout_ms) {
		l->h->adopt_pings_late++;
		l->adopt_sent_ms = 0; /* once */
	}
	/* Only the oldest pending PING's time is known: when it is late,
	 * every pending one counts (each once), none is left pending. */
	if (l->pings_pending && now_ms - l->ping_rx_ms >= answer_timeout_ms) {
		l->h->pings_unanswered += l->pings_pending;
		l->pings_pending = 0;
	}
}

/* ---- the validator ---- */

const char *health_line_check(const char *line, size_t len, enum health_peer peer)
{
	size_t max = peer == HEALTH_PEER_NETWORK ? HEALTH_NETWORK_LINE_MAX :
						    HEALTH_CLIENT_LINE_MAX;
	size_t i = 0, start;

	if (memchr(line, '\0', len) || memchr(line, '\r', len) || memchr(line, '\n', len))
		return "NUL, CR or LF inside";
	if (i < len && line[i] == '@') { /* tags */
		while (i < len && line[i] != ' ')
			i++;
		while (i < len && line[i] == ' ')
			i++;
	}
	/* To a network the message part and the (client-only) tags have
	 * bounds of their own (message-tags); to a client the whole line. */
	if (peer == HEALTH_PEER_NETWORK ? (len - i + 2 > max || i > HEALTH_NETWORK_TAGS_MAX) :
					  len + 2 > max)
		return "too long";
	if (i < len && line[i] == ':') { /* prefix */
		while (i < len && line[i] != ' ')
			i++;
		while (i < len && line[i] == ' ')
			i++;
	}
	start = i;
	while (i < len && line[i] != ' ')
		i++;
	if (i == start)
		return "no command";
	bool letters = true, digits = i - start == 3;
	for (size_t j = start; j < i; j++) {
		char c = line[j];
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')))
			letters = false;
		if (c < '0' || c > '9')
			digits = false;
	}
	return letters || digits ? NULL : "bad command";
}

bool health_line_out(struct health_link *l, const char *line, size_t len)
{
	struct health *h = l->h;
	const char *why = health_line_check(line, len, l->peer);

	if (l->peer == HEALTH_PEER_NETWORK && l->pings_pending && len >= 4 &&
	    memcmp(line, "PONG", 4) == 0 && (len == 4 || line[4] == ' ')) {
		l->pings_pending--;
		/* the next one's time is unknown: its deadline starts now
		 * (late by at most a timeout, never a false alarm) */
		if (l->pings_pending)
			l->ping_rx_ms = clock_mono_ns() / 1000000;
	}
	if (!why)
		return true;
	h->protocol_errors++;
	int64_t now = clock_mono_ns() / 1000000;
	if (h->protoerr_logged_ms && now - h->protoerr_logged_ms < HEALTH_LOG_INTERVAL_MS) {
		h->protoerr_unlogged++;
		return l->peer != HEALTH_PEER_NETWORK;
	}
	log_error("health", "protocol error in our output to a %s (%s, %zu bytes%s): %.80s%s (%llu more since the last such log line)",
		  l->peer == HEALTH_PEER_NETWORK ? "network" : "client", why, len,
		  l->peer == HEALTH_PEER_NETWORK ? ", not sent" : "",
		  line, len > 80 ? "..." : "", (unsigned long long)h->protoerr_unlogged);
	h->protoerr_unlogged = 0;
	h->protoerr_logged_ms = now;
	return l->peer != HEALTH_PEER_NETWORK;
}

/* ---- clients ---- */

bool health_closed_by_worker(const char *reason, bool peer_eof)
{
	if (peer_eof || reason == NULL)
		return false;
	static const char *const theirs[] = {
		"quit", "connection closed by peer", "read error", "write error",
		"tls from the peer",
	};
	for (size_t i = 0; i < sizeof(theirs) / sizeof(theirs[0]); i++)
		if (strncmp(reason, theirs[i], strlen(theirs[i])) == 0)
			return false;
	return strstr(reason, "peer alert") == NULL;
}

void health_client_closed(struct health *h, const char *reason, bool peer_eof)
{
	if (health_closed_by_worker(reason, peer_eof))
		h->clients_closed++;
}

void health_loop_lag(struct health *h, double lag_s)
{
	if (lag_s > h->loop_lag_max_s)
		h->loop_lag_max_s = lag_s;
}

/* ---- differential delivery ---- */

void health_channel_lines(struct channel *ch, unsigned n)
{
	if (ch)
		ch->health.lines += n;
}

void health_session_attached(struct health *h, struct session *s)
{
	s->health_gen = h->gen;
}

void health_channel_joined(struct health *h, struct channel *ch)
{
	ch->health.gen = h->gen;
}

struct health_agg {
	struct strmap *index; /* "network\ncasefolded channel" -> i + 1 */
	struct health_agg_entry *v;
	size_t n, cap;
};

struct health_agg *health_agg_new(void)
{
	struct health_agg *a = calloc(1, sizeof(*a));

	if (a && !(a->index = strmap_new())) {
		free(a);
		return NULL;
	}
	return a;
}

void health_agg_free(struct health_agg *a)
{
	if (!a)
		return;
	strmap_free(a->index);
	free(a->v);
	free(a);
}

static int agg_add(struct health_agg *a, const char *network,
		   const char *channel, uint32_t lines)
{
	char key[2 * NAMES_MAX_LEN + 4];
	size_t nl = strlen(network), cl = strlen(channel), at;

	if (nl + cl + 2 > sizeof(key))
		return 0; /* not reported (no name of ours is that long) */
	memcpy(key, network, nl);
	key[nl] = '\n';
	memcpy(key + nl + 1, channel, cl + 1);
	irc_casefold(key + nl + 1);
	at = (size_t)(uintptr_t)strmap_get(a->index, key);
	if (at == 0) {
		if (a->n == a->cap) {
			size_t cap = a->cap ? a->cap * 2 : 64;
			struct health_agg_entry *nv = realloc(a->v, cap * sizeof(*nv));
			if (!nv)
				return -ENOMEM;
			a->v = nv;
			a->cap = cap;
		}
		if (strmap_put(a->index, key, (void *)(uintptr_t)(a->n + 1)) < 0)
			return -ENOMEM;
		a->v[a->n] = (struct health_agg_entry){ network, channel, 0, 0 };
		at = ++a->n;
	}
	a->v[at - 1].sessions++;
	a->v[at - 1].lines += lines;
	return 0;
}

int health_agg_session(struct health_agg *a, const struct health *h,
		       struct session *s)
{
	/* eligible: a client attached since before the previous request */
	bool eligible = s->nclients > 0 && s->health_gen < h->gen;
	int rc = 0;

	if (s->item.state != ITEM_LIVE)
		return 0;
	for (size_t i = 0; i < s->nchannels; i++) {
		struct channel *ch = s->channels[i];

		if (eligible && rc == 0 && ch->joined && ch->health.gen < h->gen)
			rc = agg_add(a, s->network, ch->name, ch->health.lines);
		ch->health.lines = 0;
	}
	return rc;
}

static int agg_cmp(const void *pa, const void *pb)
{
	const struct health_agg_entry *x = pa, *y = pb;

	if (x->lines != y->lines)
		return x->lines > y->lines ? -1 : 1;
	int c = strcmp(x->network, y->network);
	return c ? c : strcmp(x->channel, y->channel);
}

size_t health_agg_result(struct health_agg *a,
			 const struct health_agg_entry **out)
{
	size_t n = 0, bytes = 0;

	if (a->n)
		qsort(a->v, a->n, sizeof(a->v[0]), agg_cmp);
	while (n < a->n && n < HEALTH_MAX_CHANNELS) {
		bytes += strlen(a->v[n].network) + strlen(a->v[n].channel) + 2;
		if (bytes > HEALTH_MAX_NAME_BYTES)
			break;
		n++;
	}
	*out = a->v;
	return n;
}

/* ---- the answer ---- */

static uint64_t rss_bytes(void)
{
	char buf[128];
	unsigned long long size = 0, resident = 0;
	int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	if (sscanf(buf, "%llu %llu", &size, &resident) != 2)
		return 0;
	return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

static double cpu_seconds(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_SELF, &ru) < 0)
		return 0;
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* The channels of this interval into out->channels: one block holding the
 * pointer array, the messages and their names. */
static int fill_channels(struct health *h, struct bouncer *b,
			 Baton__Control__Health *out)
{
	struct health_agg *a = health_agg_new();
	const struct health_agg_entry *v;
	size_t n, names = 0;
	int rc = 0;

	if (!a)
		rc = -ENOMEM;
	for (size_t i = 0; i < bouncer_nsessions(b); i++) {
		/* every session, also after a failure: counts are reset */
		int r = a ? health_agg_session(a, h, bouncer_session_at(b, i)) : 0;
		if (r < 0 && rc == 0)
			rc = r;
	}
	if (rc < 0)
		goto out;
	n = health_agg_result(a, &v);
	if (n == 0)
		goto out;
	for (size_t i = 0; i < n; i++)
		names += strlen(v[i].network) + strlen(v[i].channel) + 2;
	size_t head = n * sizeof(Baton__Control__ChannelDelivery *) +
		      n * sizeof(Baton__Control__ChannelDelivery);
	char *block = malloc(head + names);
	if (!block) {
		rc = -ENOMEM;
		goto out;
	}
	Baton__Control__ChannelDelivery **ptrs = (void *)block;
	Baton__Control__ChannelDelivery *msgs = (void *)(block + n * sizeof(*ptrs));
	char *p = block + head;
	for (size_t i = 0; i < n; i++) {
		size_t nl = strlen(v[i].network) + 1, cl = strlen(v[i].channel) + 1;

		baton__control__channel_delivery__init(&msgs[i]);
		memcpy(p, v[i].network, nl);
		msgs[i].network = p;
		p += nl;
		memcpy(p, v[i].channel, cl);
		msgs[i].channel = p;
		p += cl;
		msgs[i].sessions = v[i].sessions;
		msgs[i].lines = v[i].lines;
		ptrs[i] = &msgs[i];
	}
	out->channels = ptrs;
	out->n_channels = n;
out:
	health_agg_free(a);
	return rc;
}

int health_fill(struct health *h, struct bouncer *b,
		Baton__Control__Health *out)
{
	struct bouncer_stats st;
	uint64_t *buckets = malloc(sizeof(uint64_t) * HEALTH_NBUCKETS);
	uint64_t sum = 0;
	int rc;

	bouncer_stats(b, &st);
	out->has_sessions = 1;
	out->sessions = st.sessions;
#define SET(f, v) (out->has_##f = 1, out->f = (v))
	SET(upstream_lines, h->upstream_lines);
	SET(lines_relayed, h->lines_relayed);
	SET(relay_latency_sum_s, h->latency_sum_s);
	SET(cpu_s, cpu_seconds());
	SET(rss_bytes, rss_bytes());
	SET(loop_lag_max_s, h->loop_lag_max_s);
	SET(upstream_error_numerics, h->upstream_error_numerics);
	SET(upstream_closed, h->upstream_closed);
	SET(upstream_banned, h->upstream_banned);
	SET(clients_closed, h->clients_closed);
	SET(protocol_errors, h->protocol_errors);
	SET(adopt_pings_sent, h->adopt_pings_sent);
	SET(adopt_pings_late, h->adopt_pings_late);
	SET(pings_unanswered, h->pings_unanswered);
#undef SET
	if (buckets) {
		for (size_t i = 0; i < HEALTH_NBUCKETS; i++) {
			sum += h->latency[i];
			buckets[i] = sum; /* cumulative (le) */
		}
		out->relay_latency_buckets = buckets;
		out->n_relay_latency_buckets = HEALTH_NBUCKETS;
	}
	rc = fill_channels(h, b, out);
	/* the next interval starts */
	h->loop_lag_max_s = 0;
	h->gen++;
	return buckets ? rc : -ENOMEM;
}

void health_fill_free(Baton__Control__Health *out)
{
	free(out->relay_latency_buckets);
	out->relay_latency_buckets = NULL;
	out->n_relay_latency_buckets = 0;
	free(out->channels); /* one block (fill_channels()) */
	out->channels = NULL;
	out->n_channels = 0;
}
