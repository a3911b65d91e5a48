/* common/strmap.c: see strmap.h. Deletion uses tombstones; the table grows
 * (and drops tombstones) when live + dead slots pass 3/4 of the capacity. */
#include "common/strmap.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

static uint64_t strmap_hash(const char *s)
{
	uint64_t h = 1469598103934665603ull; /* FNV-1a */

	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 1099511628211ull;
	}
	return h;
}

struct strmap *strmap_new(void)
{
	struct strmap *m = calloc(1, sizeof(*m));

	if (m == NULL)
		return NULL;
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
