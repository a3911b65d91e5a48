/* common/util.h: small string helpers shared by every baton program.
 *
 * Out-of-memory policy (one for the whole tree): an allocation failure is
 * reported to the caller like any other error (NULL or -ENOMEM), never
 * ignored; the caller fails the operation it was doing (a session is not
 * created, a line is not stored, a migration aborts) and says so in the
 * log. Nothing aborts on OOM: one user's oversized request must not take
 * the worker (and so everyone) down.
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
