/* common/strmap.h: a string-keyed hash map (open addressing, linear
 * probing). Keys are copied; values are borrowed pointers the caller owns.
 * Used where a linear scan over thousands of sessions or config sections
 * would make startup and migration quadratic. The hash is keyed per
 * process (SipHash-2-4), since keys come from peers: nobody can choose keys
 * that collide. Library code: -errno, no logs. Not thread-safe: one thread
 * per map (the first strmap_new() draws the key). */
#ifndef BATON_COMMON_STRMAP_H
#define BATON_COMMON_STRMAP_H

#include <stddef.h>

struct strmap;

struct strmap *strmap_new(void);
void strmap_free(struct strmap *m); /* accepts NULL; frees keys, not values */

/* Insert or replace. Returns 0 or -ENOMEM. value must not be NULL. */
int strmap_put(struct strmap *m, const char *key, void *value);
void *strmap_get(const struct strmap *m, const char *key); /* NULL if absent */
/* Remove; returns the value that was stored, or NULL. */
void *strmap_del(struct strmap *m, const char *key);
size_t strmap_count(const struct strmap *m);

#endif
