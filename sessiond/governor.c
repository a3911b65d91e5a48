/* sessiond/governor.c: see governor.h.
 *
 * Token arithmetic is exact integers: a bucket's level counts tokens in
 * units of 1/60000 (TOKEN), so refilling connects_per_minute tokens per
 * minute adds exactly connects_per_minute units per millisecond. A level is
 * stored with the time it was exact at (as_of) and refilled lazily. */
#include "sessiond/governor.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define TOKEN 60000LL

struct gov_addr {
	char *addr;
	int64_t level;   /* units, exact at as_of */
	int64_t as_of;
	int64_t throttled_until;
	uint32_t strikes;
	unsigned in_use; /* connections holding this address */
};

struct governor {
	char *network;
	struct governor_limits lim;
	struct gov_addr *addrs;
	size_t naddrs;
	/* Min-heap of waiters by (wanted_at, order). */
	struct governor_waiter **heap;
	size_t nheap, cap;
	uint64_t next_order;
};

static bool rate_limited(const struct governor *g)
{
	return g->lim.connects_per_minute > 0;
}

static int64_t bucket_cap(const struct governor *g)
{
	return (int64_t)(g->lim.connect_burst > 0 ? g->lim.connect_burst : 1) * TOKEN;
}

/* Level of a at `now` (not stored: const callers). */
static int64_t level_at(const struct governor *g, const struct gov_addr *a,
			int64_t now)
{
	int64_t lv = a->level;
	if (now > a->as_of) {
		int64_t dt = now - a->as_of;
		int64_t cap = bucket_cap(g);
		/* dt * rate overflows only after ~10^11 years; clamp first. */
		if (dt > cap)
			dt = cap;
		lv += dt * g->lim.connects_per_minute;
	}
	return lv < bucket_cap(g) ? lv : bucket_cap(g);
}

static void refill(struct governor *g, struct gov_addr *a, int64_t now)
{
	if (now <= a->as_of)
		return;
	a->level = level_at(g, a, now);
	a->as_of = now;
}

struct governor *governor_new(const char *network,
			      const struct governor_limits *lim,
			      const char *const *addrs, size_t naddrs,
			      int64_t now_ms)
{
	struct governor *g = calloc(1, sizeof(*g));
	size_t n = naddrs ? naddrs : 1;

	if (!g)
		return NULL;
	g->lim = *lim;
	g->network = strdup(network ? network : "");
	g->addrs = calloc(n, sizeof(*g->addrs));
	if (!g->network || !g->addrs)
		goto fail;
	g->naddrs = n;
	for (size_t i = 0; i < n; i++) {
		struct gov_addr *a = &g->addrs[i];
		a->addr = strdup(naddrs ? addrs[i] : "");
		if (!a->addr)
			goto fail;
		a->level = bucket_cap(g);
		a->as_of = now_ms;
	}
	return g;
fail:
	governor_free(g);
	return NULL;
}

void governor_free(struct governor *g)
{
	if (!g)
		return;
	for (size_t i = 0; g->addrs && i < g->naddrs; i++)
		free(g->addrs[i].addr);
	free(g->addrs);
	free(g->heap);
	free(g->network);
	free(g);
}

const char *governor_network(const struct governor *g)
{
	return g->network;
}

size_t governor_naddrs(const struct governor *g)
{
	return g->naddrs;
}

const char *governor_addr(const struct governor *g, size_t i)
{
	return i < g->naddrs ? g->addrs[i].addr : NULL;
}

int governor_find_addr(const struct governor *g, const char *addr)
{
	for (size_t i = 0; i < g->naddrs; i++)
		if (strcmp(g->addrs[i].addr, addr) == 0)
			return (int)i;
	return -1;
}

size_t governor_queued(const struct governor *g)
{
	return g->nheap;
}

struct governor_waiter *governor_waiter_at(const struct governor *g, size_t i)
{
	return i < g->nheap ? g->heap[i] : NULL;
}

unsigned governor_in_use(const struct governor *g, size_t i)
{
	return i < g->naddrs ? g->addrs[i].in_use : 0;
}

/* ---- the queue: a binary min-heap ---- */

static bool before(const struct governor_waiter *a,
		   const struct governor_waiter *b)
{
	if (a->wanted_at != b->wanted_at)
		return a->wanted_at < b->wanted_at;
	return a->order < b->order;
}

static void heap_set(struct governor *g, size_t i, struct governor_waiter *w)
{
	g->heap[i] = w;
	w->heap_pos = i + 1;
}

static void heap_up(struct governor *g, size_t i)
{
	struct governor_waiter *w = g->heap[i];
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!before(w, g->heap[p]))
			break;
		heap_set(g, i, g->heap[p]);
		i = p;
	}
	heap_set(g, i, w);
}

static void heap_down(struct governor *g, size_t i)
{
	struct governor_waiter *w = g->heap[i];
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		const struct governor_waiter *best = w;
		if (l < g->nheap && before(g->heap[l], best)) {
			m = l;
			best = g->heap[l];
		}
		if (r < g->nheap && before(g->heap[r], best))
			m = r;
		if (m == i)
			break;
		heap_set(g, i, g->heap[m]);
		i = m;
	}
	heap_set(g, i, w);
}

int governor_request(struct governor *g, struct governor_waiter *w,
		     int64_t wanted_at)
{
	if (w->heap_pos)
		return 0; /* already queued: keeps its place */
	if (g->nheap == g->cap) {
		size_t cap = g->cap ? g->cap * 2 : 64;
		struct governor_waiter **nh = realloc(g->heap, cap * sizeof(*nh));
		if (!nh)
			return -ENOMEM;
		g->heap = nh;
		g->cap = cap;
	}
	w->wanted_at = wanted_at;
	w->order = g->next_order++;
	g->heap[g->nheap] = w;
	heap_up(g, g->nheap++);
	return 0;
}

void governor_cancel(struct governor *g, struct governor_waiter *w)
{
	if (!w->heap_pos)
		return;
	size_t i = w->heap_pos - 1;
	w->heap_pos = 0;
	struct governor_waiter *last = g->heap[--g->nheap];
	if (i == g->nheap)
		return;
	heap_set(g, i, last);
	heap_up(g, i);
	heap_down(g, last->heap_pos - 1);
}

/* ---- grants ---- */

static bool has_slot(const struct governor *g, const struct gov_addr *a)
{
	return g->lim.max_per_addr <= 0 || a->in_use < (unsigned)g->lim.max_per_addr;
}

static bool eligible(const struct governor *g, const struct gov_addr *a,
		     int64_t now)
{
	if (!has_slot(g, a) || now < a->throttled_until)
		return false;
	return !rate_limited(g) || level_at(g, a, now) >= TOKEN;
}

struct governor_waiter *governor_next(struct governor *g, int64_t now,
				      size_t *addr)
{
	if (g->nheap == 0)
		return NULL;
	struct governor_waiter *w = g->heap[0];
	int pick = -1;

	if (w->prefer >= 0 && (size_t)w->prefer < g->naddrs &&
	    eligible(g, &g->addrs[w->prefer], now))
		pick = w->prefer;
	if (pick < 0) {
		for (size_t i = 0; i < g->naddrs; i++) {
			const struct gov_addr *a = &g->addrs[i];
			if (!eligible(g, a, now))
				continue;
			if (pick < 0)
				pick = (int)i;
			const struct gov_addr *p = &g->addrs[pick];
			if (a->in_use < p->in_use ||
			    (a->in_use == p->in_use &&
			     level_at(g, a, now) > level_at(g, p, now)))
				pick = (int)i;
		}
	}
	if (pick < 0)
		return NULL;
	struct gov_addr *a = &g->addrs[pick];
	if (rate_limited(g)) {
		refill(g, a, now);
		a->level -= TOKEN;
	}
	a->in_use++;
	governor_cancel(g, w);
	*addr = (size_t)pick;
	return w;
}

int64_t governor_next_due(const struct governor *g, int64_t now)
{
	int64_t due = -1;

	if (g->nheap == 0)
		return -1;
	for (size_t i = 0; i < g->naddrs; i++) {
		const struct gov_addr *a = &g->addrs[i];
		if (!has_slot(g, a))
			continue;
		int64_t t = now;
		if (rate_limited(g)) {
			int64_t lv = level_at(g, a, now);
			if (lv < TOKEN) {
				int64_t r = g->lim.connects_per_minute;
				t = now + (TOKEN - lv + r - 1) / r;
			}
		}
		if (t < a->throttled_until) {
			/* The bucket keeps refilling while throttled, but
			 * governor_throttle() emptied it: the later of both. */
			t = a->throttled_until;
		}
		if (due < 0 || t < due)
			due = t;
	}
	return due;
}

void governor_occupy(struct governor *g, size_t i)
{
	if (i < g->naddrs)
		g->addrs[i].in_use++;
}

void governor_release(struct governor *g, size_t i)
{
	if (i < g->naddrs && g->addrs[i].in_use > 0)
		g->addrs[i].in_use--;
}

int64_t governor_throttle(struct governor *g, size_t i, int64_t now,
			  int64_t base_ms, int64_t max_ms)
{
	if (i >= g->naddrs)
		return now;
	struct gov_addr *a = &g->addrs[i];
	int64_t d = base_ms;
	for (uint32_t k = 0; k < a->strikes && d < max_ms; k++)
		d *= 2;
	if (d > max_ms)
		d = max_ms;
	a->strikes++;
	a->level = 0;
	a->as_of = now;
	if (now + d > a->throttled_until)
		a->throttled_until = now + d;
	return a->throttled_until;
}

void governor_success(struct governor *g, size_t i)
{
	if (i < g->naddrs)
		g->addrs[i].strikes = 0;
}

void governor_bucket_get(const struct governor *g, size_t i, int64_t now,
			 struct governor_bucket_state *out)
{
	const struct gov_addr *a = &g->addrs[i];
	out->level = level_at(g, a, now);
	out->as_of_ms = now > a->as_of ? now : a->as_of;
	out->throttled_until_ms = a->throttled_until;
	out->strikes = a->strikes;
}

void governor_bucket_merge(struct governor *g, size_t i, int64_t now,
			   const struct governor_bucket_state *in)
{
	if (i >= g->naddrs)
		return;
	struct gov_addr *a = &g->addrs[i];
	/* The migrated level refilled to now, with this governor's limits (a
	 * config change applies from the migration on). Never above the cap,
	 * never below zero (a corrupt or hostile value cannot block forever:
	 * the worst is an empty bucket). */
	struct gov_addr tmp = { .level = in->level, .as_of = in->as_of_ms };
	if (tmp.level < 0)
		tmp.level = 0;
	if (tmp.as_of > now)
		tmp.as_of = now; /* clocks of both processes are the same clock */
	int64_t theirs = level_at(g, &tmp, now);
	refill(g, a, now);
	if (theirs < a->level)
		a->level = theirs;
	if (in->throttled_until_ms > a->throttled_until)
		a->throttled_until = in->throttled_until_ms;
	if (in->strikes > a->strikes)
		a->strikes = in->strikes;
}

/* ---- why the queue waits ---- */

enum governor_wait governor_wait_reason(const struct governor *g, int64_t now)
{
	bool free_slot = false, throttled = false;

	if (g->nheap == 0)
		return GOV_WAIT_NONE;
	for (size_t i = 0; i < g->naddrs; i++) {
		const struct gov_addr *a = &g->addrs[i];
		if (!has_slot(g, a))
			continue;
		free_slot = true;
		if (now < a->throttled_until) {
			throttled = true;
			continue;
		}
		if (rate_limited(g) && level_at(g, a, now) < TOKEN)
			return GOV_WAIT_PACED;
		return GOV_WAIT_NONE;
	}
	if (!free_slot)
		return GOV_WAIT_SLOTS;
	return throttled ? GOV_WAIT_THROTTLED : GOV_WAIT_NONE;
}

const char *governor_wait_name(enum governor_wait w)
{
	switch (w) {
	case GOV_WAIT_SLOTS: return "slots";
	case GOV_WAIT_THROTTLED: return "throttled";
	case GOV_WAIT_PACED: return "paced";
	case GOV_WAIT_NONE: break;
	}
	return "none";
}

unsigned governor_capacity(const struct governor *g)
{
	if (g->lim.max_per_addr <= 0)
		return 0;
	return (unsigned)g->naddrs * (unsigned)g->lim.max_per_addr;
}

int governor_max_per_addr(const struct governor *g)
{
	return g->lim.max_per_addr;
}

size_t governor_throttled(const struct governor *g, int64_t now)
{
	size_t n = 0;

	for (size_t i = 0; i < g->naddrs; i++)
		if (now < g->addrs[i].throttled_until)
			n++;
	return n;
}

/* ---- classification and backoff ---- */

static bool has(const char *text, const char *needle)
{
	size_t n = strlen(needle);
	for (const char *p = text; *p; p++)
		if (strncasecmp(p, needle, n) == 0)
			return true;
	return false;
}

enum governor_verdict governor_classify(const char *command, const char *text)
{
	/* Texts of real servers (a match is a substring, case-insensitive):
	 * ngIRCd "Connection refused, too many connections from your IP
	 * address"; Solanum/Charybdis "Trying to reconnect too fast" and
	 * "Too many host connections"; UnrealIRCd "Throttled: Reconnecting
	 * too fast", "Too many connections from your IP"; InspIRCd "No more
	 * connections allowed from your host". Bans: "K-Lined", "G-Lined",
	 * "Z-Lined", "D-Lined" (and "K-Line" etc. as ngIRCd words them),
	 * "Banned", "AKILL", numerics 465 ERR_YOUREBANNEDCREEP and 463
	 * ERR_NOPERMFORHOST. A ban reason wins over throttle words. */
	static const char *const bans[] = { "k-line", "g-line", "z-line",
		"d-line", "kline", "gline", "zline", "dline", "banned", "akill" };
	static const char *const throttles[] = { "too fast", "throttl",
		"too many connections", "too many host connections",
		"too many user connections", "no more connections allowed" };

	if (!command)
		return GOV_NONE;
	if (strcmp(command, "465") == 0 || strcmp(command, "463") == 0)
		return GOV_BAN;
	if (strcasecmp(command, "ERROR") != 0 || !text)
		return GOV_NONE;
	for (size_t i = 0; i < sizeof(bans) / sizeof(bans[0]); i++)
		if (has(text, bans[i]))
			return GOV_BAN;
	for (size_t i = 0; i < sizeof(throttles) / sizeof(throttles[0]); i++)
		if (has(text, throttles[i]))
			return GOV_THROTTLE;
	return GOV_NONE;
}

int64_t governor_backoff_ms(uint32_t failures, int64_t min_ms, int64_t max_ms,
			    uint32_t rnd)
{
	int64_t delay = min_ms > 0 ? min_ms : 1;
	uint32_t f = failures ? failures - 1 : 0;

	for (uint32_t i = 0; i < f && delay < max_ms; i++)
		delay *= 2;
	if (delay > max_ms)
		delay = max_ms;
	/* +-20% so sessions that failed together do not retry together. */
	int64_t span = delay * 2 / 5;
	if (span > 0)
		delay = delay - delay / 5 + (int64_t)(rnd % (uint64_t)(span + 1));
	return delay;
}
