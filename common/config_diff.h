/* common/config_diff.h: what changed between two loaded configs, key by
 * key, for `batonctl reload` (the worker applies what it can and reports
 * the rest: sessiond/bouncer.h bouncer_reload()). Every key of the key
 * table (common/config_keys.c) is compared by its type, so a key added to
 * the table is compared without a change here; `irc`/`ircs` (the listener
 * list), `bind` and `channels` (lists) are compared as lists.
 *
 * A section present on one side only is one change without a key (added or
 * removed); a section on both sides gives one change per differing key.
 * Sections are named as in the file without brackets: "supervisor",
 * "listen", "network NAME", "user NAME", "user NAME/NETWORK".
 *
 * Ownership: config_diff() fills *out with strings it owns;
 * config_diff_clear() frees them. The configs are only read.
 */
#ifndef BATON_COMMON_CONFIG_DIFF_H
#define BATON_COMMON_CONFIG_DIFF_H

#include <stddef.h>

struct baton_config;

enum config_change_kind {
	CONFIG_CHANGE_ADDED,
	CONFIG_CHANGE_REMOVED,
	CONFIG_CHANGE_CHANGED,
};

enum config_change_scope {
	CONFIG_SCOPE_GLOBAL,  /* [supervisor], [sessiond], [listen], [canary] */
	CONFIG_SCOPE_NETWORK,
	CONFIG_SCOPE_USER,
	CONFIG_SCOPE_SESSION,
};

struct config_change {
	enum config_change_kind kind;
	enum config_change_scope scope;
	char *section;   /* "user alice/libera" */
	const char *key; /* the table's key name; NULL: the whole section */
	/* SCOPE_NETWORK/USER/SESSION: the names (borrowed from the configs:
	 * valid while both are) */
	const char *user, *network;
};

struct config_diff {
	struct config_change *v;
	size_t n;
};

/* 0, or -ENOMEM (out cleared). out must be zeroed. */
int config_diff(const struct baton_config *from, const struct baton_config *to,
		struct config_diff *out);
void config_diff_clear(struct config_diff *d);

/* A running worker changes only users, sessions and some network keys
 * live: give `to` (a config nobody uses yet) copies of the values `from`
 * has for every key of the global sections and of every [network] both
 * have, except the network keys named in `live` (NULL-terminated; NULL:
 * none), which keep `to`'s, and [supervisor] user_networks (the
 * supervisor reads it at each user's edit: `to` keeps the file's). 0, or
 * -ENOMEM with `to` partly changed (free it). */
int config_diff_keep_running(struct baton_config *to,
			     const struct baton_config *from,
			     const char *const *live);

#endif
