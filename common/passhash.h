/* common/passhash.h: is a configured password hash one that a login can
 * ever match? sessiond/authpool.c verifies logins with crypt_rn(), which
 * accepts any method libxcrypt has enabled; a hash that is not such a
 * setting, or whose checksum has not the length crypt(3) produces for its
 * method (a typo, a cut-off paste), silently refuses every password.
 * `baton-supervisor --check` reports both. Cheap: no hash is computed (a
 * config may have thousands of users).
 */
#ifndef BATON_COMMON_PASSHASH_H
#define BATON_COMMON_PASSHASH_H

#include <stddef.h>

enum passhash_verdict {
	PASSHASH_OK = 0,
	PASSHASH_LEGACY = 1,   /* works, but a method libxcrypt calls legacy */
	PASSHASH_BAD = -1,     /* no password can match it */
};

/* why (always NUL-terminated) says what is wrong for LEGACY and BAD, as a
 * phrase that follows "password ". */
enum passhash_verdict passhash_check(const char *hash, char *why, size_t len);

#endif
