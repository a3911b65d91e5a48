/* common/util.h: small string helpers shared by every baton program.
 *
 * Out-of-memory policy (one for the whole tree): an allocation failure is
 * reported to the caller like any other error (NULL or -ENOMEM), never
 * ignored; the caller fails the operation it was doing (a session is not
 * created, a line is not stored, a migration aborts) and says so in the
 * log. Nothing aborts on OOM: one user's oversized request must not take
 * the worker (and so everyone) down. In particular:
 *   - a copy that replaces a value is made before the old one is freed, so
 *     a failure keeps the old value (never a NULL where a string was);
 *   - a result that reads like an answer must not be what a failure
 *     returns (an empty list for "nothing to migrate", a failed login for
 *     "could not copy the password"): say -ENOMEM or NULL instead;
 *   - JSON is built through common/json_builder.h (json-c turns a failed
 *     constructor into a silent JSON null).
 *
 * One constructor shape:
 *
 *   struct foo *foo_new(args);     NULL on failure, nothing left behind
 *   void foo_free(struct foo *f);  accepts NULL; frees any partial state
 *
 * foo_new() frees what it built so far through foo_free() (or the same
 * frees by hand when the object is two allocations). Why it failed: errno,
 * or a `char *err, size_t errlen` message where the module reports to a
 * human (control_socket_new(), metrics_new(), the TLS contexts); never an
 * int return with a `struct foo **out`. Resources handed in (fds) are
 * owned by the object from the call on, also on failure (conn_new(),
 * peer_new()). A constructor that starts something is named for it
 * (worker_spawn(), migration_start(), canary_start(), releases_open())
 * and has the same shape (worker_spawn() still says why in an `int *err`);
 * conn.h frees with conn_release() (it may outlive a close in progress).
 */
#ifndef BATON_COMMON_UTIL_H
#define BATON_COMMON_UTIL_H

#include <stddef.h>

/* strdup that maps NULL to NULL (a NULL result for a non-NULL s is OOM). */
char *util_strdup(const char *s);
/* A vector of n owned strings. */
void util_strv_free(char **v, size_t n);
/* Append a copy of s: 0 or -ENOMEM (v and n unchanged on failure). */
int util_strv_push(char ***v, size_t *n, const char *s);

#endif
