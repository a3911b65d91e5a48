/* common/strmap.c: see strmap.h. Deletion uses tombstones; the table grows
 * (and drops tombstones) when live + dead slots pass 3/4 of the capacity. */
#include "common/strmap.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define STRMAP_DEAD ((char *)&strmap_dead_marker)
static const char strmap_dead_marker;

struct strmap_slot {
	char *key;   /* NULL: empty; STRMAP_DEAD: deleted */
	void *value;
};

struct strmap {
	struct strmap_slot *slots;
	size_t cap;  /* power of two */
	size_t live, dead;
};

/* Keys come from peers (nicks in a channel's member index, user names), so
 * the hash is keyed: SipHash-2-4 with a key drawn once per process. With
 * an unkeyed hash (FNV-1a before) anyone could compute thousands of nicks
 * that land in one probe run and make every NAMES, JOIN and adoption of
 * that channel quadratic (20,000 such nicks: 1.5 s of stalled worker). */
static uint64_t strmap_key[2];
static bool strmap_keyed;

static void strmap_seed(void)
{
	if (strmap_keyed)
		return;
	if (getrandom(strmap_key, sizeof(strmap_key), GRND_NONBLOCK) !=
	    (ssize_t)sizeof(strmap_key)) {
		/* No entropy yet (early boot): still per process. */
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		strmap_key[0] = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
		strmap_key[1] = (uint64_t)ts.tv_sec ^ (uint64_t)(uintptr_t)&ts;
	}
	strmap_keyed = true;
}

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                         \
	do {                                                             \
		v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32); \
		v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                    \
		v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                    \
		v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32); \
	} while (0)

static uint64_t strmap_hash(const char *s)
{
	uint64_t k0 = strmap_key[0], k1 = strmap_key[1];
	uint64_t v0 = 0x736f6d6570736575ull ^ k0, v1 = 0x646f72616e646f6dull ^ k1;
	uint64_t v2 = 0x6c7967656e657261ull ^ k0, v3 = 0x7465646279746573ull ^ k1;
	size_t len = strlen(s), i;
	uint64_t m;

	for (i = 0; i + 8 <= len; i += 8) {
		memcpy(&m, s + i, 8); /* little-endian hosts; any order is a fine hash */
		v3 ^= m;
		SIPROUND;
		SIPROUND;
		v0 ^= m;
	}
	m = (uint64_t)len << 56;
	for (size_t j = 0; i + j < len; j++)
		m |= (uint64_t)(unsigned char)s[i + j] << (8 * j);
	v3 ^= m;
	SIPROUND;
	SIPROUND;
	v0 ^= m;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

struct strmap *strmap_new(void)
{
	struct strmap *m = calloc(1, sizeof(*m));

	if (m == NULL)
		return NULL;
	strmap_seed();
	m->cap = 16;
	m->slots = calloc(m->cap, sizeof(*m->slots));
	if (m->slots == NULL) {
		free(m);
		return NULL;
	}
	return m;
}

void strmap_free(struct strmap *m)
{
	if (m == NULL)
		return;
	for (size_t i = 0; i < m->cap; i++)
		if (m->slots[i].key != NULL && m->slots[i].key != STRMAP_DEAD)
			free(m->slots[i].key);
	free(m->slots);
	free(m);
}

/* The slot holding key, or NULL. */
static struct strmap_slot *strmap_find(const struct strmap *m, const char *key)
{
	size_t mask = m->cap - 1;

	for (size_t i = strmap_hash(key) & mask;; i = (i + 1) & mask) {
		struct strmap_slot *s = &m->slots[i];

		if (s->key == NULL)
			return NULL;
		if (s->key != STRMAP_DEAD && strcmp(s->key, key) == 0)
			return s;
	}
}

static int strmap_grow(struct strmap *m)
{
	size_t cap = m->live * 2 >= m->cap / 2 ? m->cap * 2 : m->cap;
	struct strmap_slot *slots = calloc(cap, sizeof(*slots));

	if (slots == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < m->cap; i++) {
		struct strmap_slot *s = &m->slots[i];
		size_t j;

		if (s->key == NULL || s->key == STRMAP_DEAD)
			continue;
		for (j = strmap_hash(s->key) & (cap - 1); slots[j].key != NULL;
		     j = (j + 1) & (cap - 1))
			;
		slots[j] = *s;
	}
	free(m->slots);
	m->slots = slots;
	m->cap = cap;
	m->dead = 0;
	return 0;
}

int strmap_put(struct strmap *m, const char *key, void *value)
{
	struct strmap_slot *s = strmap_find(m, key);
	size_t mask, i;
	char *copy;

	if (s != NULL) {
		s->value = value;
		return 0;
	}
	if ((m->live + m->dead + 1) * 4 > m->cap * 3 && strmap_grow(m) < 0)
		return -ENOMEM;
	copy = strdup(key);
	if (copy == NULL)
		return -ENOMEM;
	mask = m->cap - 1;
	for (i = strmap_hash(key) & mask;
	     m->slots[i].key != NULL && m->slots[i].key != STRMAP_DEAD;
	     i = (i + 1) & mask)
		;
	if (m->slots[i].key == STRMAP_DEAD)
		m->dead--;
	m->slots[i].key = copy;
	m->slots[i].value = value;
	m->live++;
	return 0;
}

void *strmap_get(const struct strmap *m, const char *key)
{
	struct strmap_slot *s = strmap_find(m, key);

	return s != NULL ? s->value : NULL;
}

void *strmap_del(struct strmap *m, const char *key)
{
	struct strmap_slot *s = strmap_find(m, key);
	void *value;

	if (s == NULL)
		return NULL;
	value = s->value;
	free(s->key);
	s->key = STRMAP_DEAD;
	s->value = NULL;
	m->live--;
	m->dead++;
	return value;
}

size_t strmap_count(const struct strmap *m)
{
	return m->live;
}
