/* common/session_edit.h: one session's section of the config file added,
 * changed or deleted ([user NAME/NETWORK]): what `batonctl network
 * add|set|del` does and what a user asks from a client through the
 * supervisor (sessiond/service.h, supervisor.c): the file locked, edited
 * in place keeping its comments (common/config_edit.h), written beside
 * it, loaded as a whole (config_load()) and only then renamed over it.
 * The caller asks for a reload after a 0.
 *
 * session_edit_user_check() is the operator's limit on what a user may
 * ask ([supervisor] user_networks): the keys a user may set, the networks
 * a user may add a session on (those of the file).
 *
 * Ownership: nothing is kept; strings are borrowed for the call.
 */
#ifndef BATON_COMMON_SESSION_EDIT_H
#define BATON_COMMON_SESSION_EDIT_H

#include <stdbool.h>
#include <stddef.h>

struct baton_config;
struct config_problems;

enum session_edit_op {
	SESSION_EDIT_ADD,
	SESSION_EDIT_SET,
	SESSION_EDIT_DEL,
};

/* Bounds of a request from a user (the worker and the supervisor check
 * them; batonctl's are its own): KEY=VALUE pairs, and a pair's bytes. */
#define SESSION_EDIT_MAX_PAIRS 8
#define SESSION_EDIT_MAX_PAIR 190

/* "add", "set", "del" (also "change", "delete"); -1 unknown. */
int session_edit_op_parse(const char *name);
const char *session_edit_op_name(enum session_edit_op op);

/* Apply op to [user USER/NETWORK] of config_path (pairs "KEY=VALUE"; "KEY="
 * removes the key; none for DEL). Returns 0 (installed), or -errno with
 * why (a sentence) filled and the file unchanged: -EEXIST, -ENOENT (the
 * section), -EINVAL (a pair, a name or the edited file's config problems,
 * which are in *pr when pr is not NULL, the temporary file's name
 * replaced by config_path's), -E2BIG, -ENOMEM, other I/O errors.
 * *refused (may be NULL): the file's contents refused it (the section
 * there or not, the edited file invalid: batonctl's exit 1), not its
 * arguments or I/O (exit 2). */
int session_edit_apply(const char *config_path, enum session_edit_op op,
		       const char *user, const char *network,
		       char *const *pairs, size_t npairs,
		       struct config_problems *pr, bool *refused, char *why,
		       size_t whylen);

/* NULL when cfg's user_networks lets user make this edit, else why not
 * (a static sentence, or one in buf). Checks: the user is in cfg; op's
 * level; pairs within the bounds above, of the keys nick, username,
 * realname, channels only; ADD: NETWORK is a [network] of cfg and the
 * session is not there yet; SET/DEL: the session is there. */
const char *session_edit_user_check(const struct baton_config *cfg,
				    enum session_edit_op op, const char *user,
				    const char *network, char *const *pairs,
				    size_t npairs, char *buf, size_t buflen);

#endif
