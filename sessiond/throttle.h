/* sessiond/throttle.h: failed-login throttling, one table per kind of key
 * (client address, user name).
 *
 * Each key counts its failures. The first `free_failures` cost nothing;
 * every failure after them blocks the key for a delay that doubles, from
 * 1 s up to max_delay_ms: 1, 2, 4, ... s. While blocked, attempts are
 * refused without checking anything (throttle_wait() > 0), so a guesser
 * gets a handful of guesses and then one per delay.
 *
 * Checks in flight: a check whose outcome is not known yet is counted per
 * key (throttle_begin() to throttle_end()), because guesses sent in
 * parallel would otherwise all be checked before the first failure counts.
 * A key is on probation when its failures plus its checks in flight reach
 * free_failures: its next check counts as a failure from its start
 * (refunded if right, throttle_refund()). A key on probation because of
 * checks in flight is busy: a new check should wait until they end (they
 * may be right and take the key off probation) rather than be charged,
 * which keeps right logins in parallel (a NAT) from blocking their key.
 *
 * Bounded: a key is forgotten 2 * max_delay_ms after its last failure or
 * check start, and the table holds at most max_entries keys; a new key
 * beyond that evicts the key whose last activity is oldest (so a flood of
 * new keys cannot grow memory; it can only make the table forget the oldest
 * offenders). An entry holds at most THROTTLE_KEY_MAX bytes of its key
 * (longer keys are told apart by their first THROTTLE_KEY_MAX bytes), so
 * the table's memory is bounded whatever the keys. A key with nothing to
 * count (no failure, no check in flight) is dropped.
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

/* key is on probation: its failures plus its checks in flight are at or
 * past its free failures, so its next failure blocks it. */
bool throttle_probation(struct throttle *t, const char *key, int64_t now);

/* key is on probation and has checks in flight: a new check should wait
 * for them to end. */
bool throttle_busy(struct throttle *t, const char *key, int64_t now);

/* A check of key starts, its outcome unknown. On probation it counts as a
 * failure at once (as throttle_failed(): *delay is the block from now on)
 * and 1 is returned: the caller keeps that, to throttle_refund() it if the
 * check is right. Otherwise it is counted in flight and 0 is returned: the
 * caller must throttle_end() it. -ENOMEM: nothing counted. */
int throttle_begin(struct throttle *t, const char *key, int64_t now,
		   int64_t *delay);

/* A check counted in flight by throttle_begin() ended: failed (counted now;
 * returns the block as throttle_failed(), or -ENOMEM) or not (right, or
 * dropped unchecked: returns 0). */
int64_t throttle_end(struct throttle *t, const char *key, bool failed,
		     int64_t now);

/* Undo one failure of key (a check charged at its start turned out right,
 * or was dropped): one failure less, and no block while within the free
 * failures. */
void throttle_refund(struct throttle *t, const char *key);

/* key succeeded: forget its failures (its checks in flight stay counted). */
void throttle_forget(struct throttle *t, const char *key);

/* Keys tracked (after dropping the expired ones as of now). */
size_t throttle_count(struct throttle *t, int64_t now);

#endif
