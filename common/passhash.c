/* common/passhash.c: see passhash.h. */
#include "common/passhash.h"

#include <crypt.h>
#include <stdio.h>
#include <string.h>

#define PASSHASH_EXPECTED "expected $y$, $gy$, $7$, $6$ or $2b$ ..., e.g. from 'mkpasswd' or 'openssl passwd -6'"

/* The methods whose checksum length we know: the last '$' field of a hash
 * crypt(3) made (bcrypt: salt and checksum together). */
static const struct {
	const char *prefix, *name;
	size_t checksum;
} passhash_methods[] = {
	{ "$y$", "yescrypt", 43 },
	{ "$gy$", "gost-yescrypt", 43 },
	{ "$7$", "scrypt", 43 },
	{ "$6$", "sha512crypt", 86 },
	{ "$5$", "sha256crypt", 43 },
	{ "$2b$", "bcrypt", 53 },
	{ "$2a$", "bcrypt", 53 },
	{ "$2y$", "bcrypt", 53 },
	{ "$1$", "md5crypt", 22 },
};

static int passhash_b64(char c)
{
	return c == '.' || c == '/' || (c >= '0' && c <= '9') ||
	       (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

enum passhash_verdict passhash_check(const char *hash, char *why, size_t len)
{
	const char *sum;
	int salt;

	snprintf(why, len, "is fine");
	if (hash == NULL || hash[0] != '$') {
		snprintf(why, len, "is not a crypt(3) hash (%s)", PASSHASH_EXPECTED);
		return PASSHASH_BAD;
	}
	salt = crypt_checksalt(hash);
	if (salt == CRYPT_SALT_INVALID || salt == CRYPT_SALT_METHOD_DISABLED) {
		snprintf(why, len, "is not a crypt(3) hash this system's crypt(3) accepts: %s (%s)",
			 salt == CRYPT_SALT_INVALID ? "unknown method or malformed setting"
						    : "method disabled",
			 PASSHASH_EXPECTED);
		return PASSHASH_BAD;
	}
	for (size_t i = 0; i < sizeof(passhash_methods) / sizeof(passhash_methods[0]); i++) {
		size_t plen = strlen(passhash_methods[i].prefix), n;

		if (strncmp(hash, passhash_methods[i].prefix, plen) != 0)
			continue;
		sum = strrchr(hash + plen, '$');
		if (sum == NULL) {
			snprintf(why, len, "hash has no checksum after its %s setting (%s)",
				 passhash_methods[i].name, PASSHASH_EXPECTED);
			return PASSHASH_BAD;
		}
		sum++;
		n = strlen(sum);
		for (size_t j = 0; j < n; j++) {
			if (!passhash_b64(sum[j])) {
				snprintf(why, len, "hash is malformed: character '%c' in its %s checksum",
					 sum[j], passhash_methods[i].name);
				return PASSHASH_BAD;
			}
		}
		if (n != passhash_methods[i].checksum) {
			snprintf(why, len, "hash is malformed: its %s checksum has %zu characters where crypt(3) makes %zu, so no password can match it",
				 passhash_methods[i].name, n,
				 passhash_methods[i].checksum);
			return PASSHASH_BAD;
		}
		break;
	}
	if (salt == CRYPT_SALT_METHOD_LEGACY || salt == CRYPT_SALT_TOO_CHEAP) {
		snprintf(why, len, "hash uses a %s method; rehash it (%s)",
			 salt == CRYPT_SALT_TOO_CHEAP ? "too cheap" : "legacy",
			 PASSHASH_EXPECTED);
		return PASSHASH_LEGACY;
	}
	return PASSHASH_OK;
}
