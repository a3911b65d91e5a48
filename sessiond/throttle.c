/* sessiond/throttle.c: see throttle.h. Entries sit in a strmap by key and in
 * a list ordered by last activity (oldest first), which makes expiry and
 * eviction O(1) per entry. */
#include "sessiond/throttle.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/strmap.h"

struct throttle_entry {
	char key[THROTTLE_KEY_MAX + 1];
	unsigned failures;
	unsigned inflight;        /* checks begun, not charged, not ended */
	int64_t last_ms;          /* last failure or check start */
	int64_t blocked_until_ms; /* 0: not blocked */
	struct throttle_entry *prev, *next; /* by last_ms, oldest first */
};

struct throttle {
	struct throttle_limits lim;
	struct strmap *by_key;
	struct throttle_entry *oldest, *newest;
	size_t n;
};

/* The stored form of key: at most THROTTLE_KEY_MAX bytes (throttle.h). */
static const char *clip(const char *key, char buf[THROTTLE_KEY_MAX + 1])
{
	size_t len = strnlen(key, THROTTLE_KEY_MAX + 1);

	if (len <= THROTTLE_KEY_MAX)
		return key;
	memcpy(buf, key, THROTTLE_KEY_MAX);
	buf[THROTTLE_KEY_MAX] = '\0';
	return buf;
}

struct throttle *throttle_new(const struct throttle_limits *lim)
{
	struct throttle *t = calloc(1, sizeof(*t));

	if (t == NULL)
		return NULL;
	t->lim = *lim;
	if (t->lim.max_delay_ms <= 0)
		t->lim.max_delay_ms = THROTTLE_FIRST_DELAY_MS;
	if (t->lim.max_entries == 0)
		t->lim.max_entries = 1;
	t->by_key = strmap_new();
	if (t->by_key == NULL) {
		free(t);
		return NULL;
	}
	return t;
}

static void unlink_entry(struct throttle *t, struct throttle_entry *e)
{
	if (e->prev)
		e->prev->next = e->next;
	else
		t->oldest = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		t->newest = e->prev;
	e->prev = e->next = NULL;
}

static void append_entry(struct throttle *t, struct throttle_entry *e)
{
	e->prev = t->newest;
	e->next = NULL;
	if (t->newest)
		t->newest->next = e;
	else
		t->oldest = e;
	t->newest = e;
}

static void drop_entry(struct throttle *t, struct throttle_entry *e)
{
	unlink_entry(t, e);
	strmap_del(t->by_key, e->key);
	free(e);
	t->n--;
}

/* Nothing left to count: no failure, no check in flight. */
static void drop_if_idle(struct throttle *t, struct throttle_entry *e)
{
	if (e->failures == 0 && e->inflight == 0)
		drop_entry(t, e);
}

void throttle_free(struct throttle *t)
{
	if (t == NULL)
		return;
	while (t->oldest)
		drop_entry(t, t->oldest);
	strmap_free(t->by_key);
	free(t);
}

/* Keys whose last activity is older than twice the longest delay. */
static void expire(struct throttle *t, int64_t now)
{
	while (t->oldest && now - t->oldest->last_ms > 2 * t->lim.max_delay_ms)
		drop_entry(t, t->oldest);
}

static struct throttle_entry *find(struct throttle *t, const char *key)
{
	char buf[THROTTLE_KEY_MAX + 1];

	return strmap_get(t->by_key, clip(key, buf));
}

/* key's entry, created if new (evicting the oldest at max_entries), made
 * the newest as of now. NULL: out of memory. */
static struct throttle_entry *touch(struct throttle *t, const char *key,
				    int64_t now)
{
	struct throttle_entry *e;

	expire(t, now);
	e = find(t, key);
	if (e == NULL) {
		if (t->n >= t->lim.max_entries)
			drop_entry(t, t->oldest);
		e = calloc(1, sizeof(*e));
		if (e == NULL)
			return NULL;
		memcpy(e->key, key, strnlen(key, THROTTLE_KEY_MAX)); /* clip() */
		if (strmap_put(t->by_key, e->key, e) < 0) {
			free(e);
			return NULL;
		}
		t->n++;
	} else {
		unlink_entry(t, e);
	}
	append_entry(t, e);
	e->last_ms = now;
	return e;
}

/* One failure more for e at now: the block it starts (0: none). */
static int64_t count_failure(struct throttle *t, struct throttle_entry *e,
			     int64_t now)
{
	int64_t delay = 0;

	if (e->failures < 1000000)
		e->failures++;
	if (e->failures > t->lim.free_failures) {
		unsigned k = e->failures - t->lim.free_failures - 1;

		delay = k >= 30 ? t->lim.max_delay_ms :
				  (int64_t)THROTTLE_FIRST_DELAY_MS << k;
		if (delay > t->lim.max_delay_ms)
			delay = t->lim.max_delay_ms;
		e->blocked_until_ms = now + delay;
	}
	return delay;
}

int64_t throttle_wait(struct throttle *t, const char *key, int64_t now)
{
	struct throttle_entry *e;

	expire(t, now);
	e = find(t, key);
	if (e == NULL || e->blocked_until_ms <= now)
		return 0;
	return e->blocked_until_ms - now;
}

int64_t throttle_failed(struct throttle *t, const char *key, int64_t now)
{
	struct throttle_entry *e = touch(t, key, now);

	if (e == NULL)
		return -ENOMEM;
	return count_failure(t, e, now);
}

static bool on_probation(const struct throttle *t, const struct throttle_entry *e)
{
	return e != NULL &&
	       (uint64_t)e->failures + e->inflight >= t->lim.free_failures;
}

bool throttle_probation(struct throttle *t, const char *key, int64_t now)
{
	expire(t, now);
	return on_probation(t, find(t, key));
}

bool throttle_busy(struct throttle *t, const char *key, int64_t now)
{
	struct throttle_entry *e;

	expire(t, now);
	e = find(t, key);
	return on_probation(t, e) && e->inflight > 0;
}

int throttle_begin(struct throttle *t, const char *key, int64_t now,
		   int64_t *delay)
{
	struct throttle_entry *e = touch(t, key, now);

	*delay = 0;
	if (e == NULL)
		return -ENOMEM;
	/* A new key has failures 0, inflight 0: on probation only when
	 * free_failures is 0. */
	if (on_probation(t, e)) {
		*delay = count_failure(t, e, now);
		return 1;
	}
	e->inflight++;
	return 0;
}

int64_t throttle_end(struct throttle *t, const char *key, bool failed,
		     int64_t now)
{
	struct throttle_entry *e = find(t, key);

	/* Gone (expired or evicted meanwhile): nothing in flight to end. */
	if (e != NULL && e->inflight > 0)
		e->inflight--;
	if (failed)
		return throttle_failed(t, key, now);
	if (e != NULL)
		drop_if_idle(t, e);
	return 0;
}

void throttle_refund(struct throttle *t, const char *key)
{
	struct throttle_entry *e = find(t, key);

	if (!e)
		return;
	if (e->failures > 0)
		e->failures--;
	if (e->failures <= t->lim.free_failures)
		e->blocked_until_ms = 0;
	drop_if_idle(t, e);
}

void throttle_forget(struct throttle *t, const char *key)
{
	struct throttle_entry *e = find(t, key);

	if (!e)
		return;
	e->failures = 0;
	e->blocked_until_ms = 0;
	drop_if_idle(t, e);
}

size_t throttle_count(struct throttle *t, int64_t now)
{
	expire(t, now);
	return t->n;
}
