/* sessiond/throttle.h: failed-login throttling, one table per kind of key
 * (client address, user name).
 *
 * Each key counts its failures. The first `free_failures` cost nothing;
 * every failure after them blocks the key for a delay that doubles, from
 * 1 s up to max_delay_ms: 1, 2, 4, ... s. While blocked, attempts are
 * refused without checking anything (throttle_wait() > 0), so a guesser
 * gets a handful of guesses and then one per delay.
 *
 * Bounded: a key is forgotten 2 * max_delay_ms after its last failure, and
 * the table holds at most max_entries keys; a new key beyond that evicts the
 * key whose last failure is oldest (so a flood of new keys cannot grow
 * memory; it can only make the table forget the oldest offenders). An entry
 * holds at most THROTTLE_KEY_MAX bytes of its key (longer keys are told
 * apart by their first THROTTLE_KEY_MAX bytes), so the table's memory is
 * bounded whatever the keys.
 *
 * Pure logic: no I/O and no clock (monotonic ms are passed in), so tests are
 * deterministic. Library code: -errno, no logs.
 *
 * Ownership: the table owns its entries and their copies of the keys;
 * keys passed in are borrowed for the call.
 */
#ifndef BATON_SESSIOND_THROTTLE_H
#define BATON_SESSIOND_THROTTLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct throttle;

struct throttle_limits {
	unsigned free_failures;
	int64_t max_delay_ms;  /* > 0 */
	size_t max_entries;    /* > 0 */
};

#define THROTTLE_FIRST_DELAY_MS 1000
#define THROTTLE_KEY_MAX 64

/* NULL on allocation failure. */
struct throttle *throttle_new(const struct throttle_limits *lim);
void throttle_free(struct throttle *t); /* accepts NULL */

/* How long (ms) key must still wait before an attempt counts; 0: now. */
int64_t throttle_wait(struct throttle *t, const char *key, int64_t now);

/* key failed once more at now. Returns the delay it is blocked for from
 * now on (0: still within its free failures), or -ENOMEM (not counted). */
int64_t throttle_failed(struct throttle *t, const char *key, int64_t now);

/* key is at or past its free failures: its next failure blocks it. */
bool throttle_probation(struct throttle *t, const char *key, int64_t now);

/* Undo one throttle_failed() of key (an attempt charged before its outcome
 * was known turned out right): one failure less, and no block while within
 * the free failures. */
void throttle_refund(struct throttle *t, const char *key);

/* key succeeded: forget its failures. */
void throttle_forget(struct throttle *t, const char *key);

/* Keys tracked (after dropping the expired ones as of now). */
size_t throttle_count(struct throttle *t, int64_t now);

#endif
