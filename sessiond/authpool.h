/* sessiond/authpool.h: password checks (crypt(3)) off the event loop.
 *
 * A login costs one crypt(3) (milliseconds of CPU by design); run on the
 * loop, a stream of wrong passwords delays every user's relay by as much.
 * The pool runs them on `threads` threads fed through a queue of at most
 * `queue_max` jobs (waiting and running); each result comes back to the
 * loop (an eventfd event) as done(id, ok, arg), in no particular order.
 *
 * Every check costs exactly one crypt_rn() whatever fails (a missing
 * password checks as ""), and the comparison is constant-time: the caller
 * passes a dummy hash for unknown users so timing does not tell names.
 *
 * Ids are the caller's: a caller whose client died meanwhile simply finds
 * no client for the id (results are never cancelled, only ignored).
 *
 * The pool's threads run at nice AUTHPOOL_NICE: on a machine whose cores
 * are busy, the event loop (nice 0) gets the CPU first and a login flood
 * with a slow hash delays the logins, not the relay (bench/README.md,
 * login_flood_bench). They still get ~1/10 of a contended core, so
 * logins are not starved.
 *
 * At queue_max the next submit fails at once (-EAGAIN: the caller refuses
 * that login with "server busy"): a flood of logins cannot grow memory
 * beyond queue_max jobs (each a copy of a password and a hash).
 *
 * Ownership: the pool copies password and hash (the password copy is
 * wiped after use). authpool_free() drops jobs still waiting, waits for the
 * running ones and delivers no further results.
 */
#ifndef BATON_SESSIOND_AUTHPOOL_H
#define BATON_SESSIOND_AUTHPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AUTHPOOL_NICE 10

struct event_base;
struct authpool;

typedef void (*authpool_done_fn)(uint64_t id, bool ok, void *arg);

/* NULL with errno set on failure (threads or eventfd). */
struct authpool *authpool_new(struct event_base *base, unsigned threads,
			      size_t queue_max, authpool_done_fn done,
			      void *arg);
void authpool_free(struct authpool *p); /* accepts NULL */

/* Queue a check of password (NULL: none) against hash. 0, -EAGAIN when
 * queue_max jobs are queued or running, -ENOMEM. */
int authpool_submit(struct authpool *p, uint64_t id, const char *password,
		    const char *hash);

/* Jobs queued or running, plus results not yet delivered. */
size_t authpool_busy(struct authpool *p);

/* The check itself, synchronous (also used by tests): one crypt_rn()
 * whatever fails; true only for a non-NULL password matching hash. */
bool authpool_check(const char *password, const char *hash);

#endif
