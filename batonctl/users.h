/* batonctl/users.h: `batonctl user add|del|passwd|list` and `batonctl
 * network add|del|set`: edits of the config file (common/config_edit.h:
 * comments and layout kept; written beside it, fsynced and renamed over it
 * under a lock on its folder) that are checked with the config loader
 * before they are installed. A file the edit would make invalid is left
 * as it is and the problems are reported as --check reports them. After a
 * successful edit the caller asks the supervisor to reload (the change
 * reaches the running worker without an upgrade).
 *
 * Passwords are stored as crypt(3) hashes only: a given hash is checked
 * (common/passhash.h), a password (from stdin or typed at the terminal) is
 * hashed here with yescrypt (sha512-crypt where libxcrypt lacks it).
 */
#ifndef BATON_BATONCTL_USERS_H
#define BATON_BATONCTL_USERS_H

#include <stdbool.h>
#include <stddef.h>

struct json_object;

struct ctl_users_opts {
	const char *password_hash; /* --password-hash */
	bool password_stdin;       /* --password-stdin */
	bool purge;                /* user del / network del --purge */
	bool json;
	/* Out (--purge): the sessions ("user/network") whose history goes
	 * once the reload that removes them is applied (ctl_users_purge()). */
	char purge_keys[64][600];
	size_t npurge;
};

enum ctl_users_outcome {
	CTL_USERS_EDITED,  /* the file changed: reload next (*note says what) */
	CTL_USERS_DONE,    /* nothing to reload (user list: printed) */
	CTL_USERS_REFUSED, /* nothing changed: *refusal says why (exit 1) */
	CTL_USERS_ERROR,   /* usage or I/O: err says why (exit 2) */
};

/* cmd "user" or "network"; args[0] the action, then its arguments.
 * *refusal (CTL_USERS_REFUSED): an owned JSON object {"kind","result":
 * "refused","reason","problems":[...]}. */
enum ctl_users_outcome ctl_users_run(const char *config_path, const char *cmd,
				     int nargs, char **args,
				     struct ctl_users_opts *o, char *note,
				     size_t notelen, struct json_object **refusal,
				     char *err, size_t errlen);

/* After the reload that removed them was applied: delete the stored
 * history (store/store.h store_purge()) of every o->purge_keys session,
 * in the store the config names. Adds {"purged": {key: lines}} to out
 * (may be NULL) and prints a line per session unless o->json. 0, or -1
 * with err set (store off: 0, nothing to delete). */
int ctl_users_purge(const char *config_path, const struct ctl_users_opts *o,
		    struct json_object *out, char *err, size_t errlen);

/* A crypt(3) hash of password with a fresh salt into out (yescrypt, else
 * sha512-crypt). 0 or -errno. */
int ctl_users_hash(const char *password, char *out, size_t outlen);

#endif
