/* common/session_edit.c: see session_edit.h. */
#include "common/session_edit.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/config.h"
#include "common/config_edit.h"

int session_edit_op_parse(const char *name)
{
	if (strcasecmp(name, "add") == 0)
		return SESSION_EDIT_ADD;
	if (strcasecmp(name, "set") == 0 || strcasecmp(name, "change") == 0)
		return SESSION_EDIT_SET;
	if (strcasecmp(name, "del") == 0 || strcasecmp(name, "delete") == 0)
		return SESSION_EDIT_DEL;
	return -1;
}

const char *session_edit_op_name(enum session_edit_op op)
{
	return op == SESSION_EDIT_ADD ? "add" : op == SESSION_EDIT_SET ? "set" : "del";
}

static const char *edit_error(int r)
{
	switch (r) {
	case -EINVAL: return "a name, key or value the INI file cannot hold as given (a newline, a ';' after a blank, '=' in a key, ']' in a name, blanks at either end)";
	case -E2BIG: return "the line would be longer than 198 characters";
	case -EEXIST: return "already there";
	case -ENOENT: return "not in the config";
	case -ENOMEM: return "out of memory";
	default: return strerror(-r);
	}
}

/* KEY=VALUE pairs into the section (KEY= removes the key). */
static int apply_pairs(struct config_edit *e, const char *section,
		       char *const *pairs, size_t n, char *why, size_t whylen)
{
	for (size_t i = 0; i < n; i++) {
		char key[128];
		const char *eq = strchr(pairs[i], '=');
		int r;

		if (eq == NULL || eq == pairs[i] || (size_t)(eq - pairs[i]) >= sizeof(key)) {
			snprintf(why, whylen, "expected KEY=VALUE, got '%.64s'", pairs[i]);
			return -EINVAL;
		}
		snprintf(key, sizeof(key), "%.*s", (int)(eq - pairs[i]), pairs[i]);
		if (strcmp(key, "password") == 0) {
			snprintf(why, whylen, "a session has no password (batonctl user passwd sets the user's)");
			return -EINVAL;
		}
		r = eq[1] == '\0' ? config_edit_unset(e, section, key)
				  : config_edit_set(e, section, key, eq + 1);
		if (r == -ENOENT && eq[1] == '\0')
			r = 0; /* removing what is not there */
		if (r < 0) {
			snprintf(why, whylen, "[%s] %s: %s", section, key, edit_error(r));
			return r;
		}
	}
	return 0;
}

/* The temporary file's name in problems becomes the config's. */
static void problems_rename(struct config_problems *pr, const char *tmp,
			    const char *path)
{
	for (size_t i = 0; i < pr->n; i++) {
		char *m = pr->msgs[i], *at = strstr(m, tmp), *n;
		size_t tl = strlen(tmp), pl = strlen(path);

		if (at == NULL || (n = malloc(strlen(m) - tl + pl + 1)) == NULL)
			continue;
		memcpy(n, m, (size_t)(at - m));
		memcpy(n + (at - m), path, pl);
		strcpy(n + (at - m) + pl, at + tl);
		free(m);
		pr->msgs[i] = n;
	}
}

int session_edit_apply(const char *config_path, enum session_edit_op op,
		       const char *user, const char *network,
		       char *const *pairs, size_t npairs,
		       struct config_problems *pr, bool *refused, char *why,
		       size_t whylen)
{
	struct config_problems own = { 0 };
	struct baton_config *next = NULL;
	struct config_edit *e = NULL;
	char section[600], *tmp = NULL, *real = NULL;
	int lock = -1, r;
	bool refused_ignored;

	why[0] = '\0';
	if (refused == NULL)
		refused = &refused_ignored;
	*refused = false;
	if (pr == NULL)
		pr = &own;
	if (strchr(user, '/') != NULL || strchr(network, '/') != NULL || !user[0] ||
	    !network[0] ||
	    snprintf(section, sizeof(section), "user %s/%s", user, network) >= (int)sizeof(section)) {
		snprintf(why, whylen, "expected USER/NETWORK");
		return -EINVAL;
	}
	/* A symlinked file (configuration management) is edited where it
	 * is: renaming over the link would replace it by a plain file. */
	real = realpath(config_path, NULL);
	if (real != NULL)
		config_path = real;
	lock = config_edit_lock(config_path);
	if (lock < 0) {
		r = lock;
		snprintf(why, whylen, "cannot lock the config's folder: %s", strerror(-r));
		goto done;
	}
	e = config_edit_read(config_path, why, whylen);
	if (e == NULL) {
		r = -EIO;
		goto done;
	}
	switch (op) {
	case SESSION_EDIT_ADD:
		r = config_edit_has_section(e, section) ? -EEXIST
			: config_edit_add_section(e, section);
		if (r == 0 && (r = apply_pairs(e, section, pairs, npairs, why, whylen)) < 0)
			goto done;
		break;
	case SESSION_EDIT_DEL:
		r = config_edit_del_section(e, section);
		break;
	default:
		r = config_edit_has_section(e, section) ? 0 : -ENOENT;
		if (r == 0 && (r = apply_pairs(e, section, pairs, npairs, why, whylen)) < 0)
			goto done;
		break;
	}
	if (r < 0) {
		*refused = r == -EEXIST || r == -ENOENT;
		snprintf(why, whylen, "[%s]: %s", section, edit_error(r));
		goto done;
	}
	r = config_edit_write(e, config_path, &tmp);
	if (r < 0) {
		snprintf(why, whylen, "cannot write beside the config: %s", strerror(-r));
		goto done;
	}
	if (config_load(tmp, &next, pr) != 0) {
		problems_rename(pr, tmp, config_path);
		snprintf(why, whylen, "the edit would make the config invalid (%zu problem%s): nothing changed",
			 pr->n, pr->n == 1 ? "" : "s");
		unlink(tmp);
		*refused = true;
		r = -EINVAL;
		goto done;
	}
	r = config_edit_install(tmp, config_path);
	if (r < 0) {
		unlink(tmp);
		snprintf(why, whylen, "cannot replace the config: %s", strerror(-r));
	}
done:
	if (lock >= 0)
		close(lock);
	config_edit_free(e);
	config_free(next);
	config_problems_clear(&own);
	free(tmp);
	free(real);
	return r;
}

static const char *const user_keys[] = { "nick", "username", "realname", "channels" };

const char *session_edit_user_check(const struct baton_config *cfg,
				    enum session_edit_op op, const char *user,
				    const char *network, char *const *pairs,
				    size_t npairs, char *buf, size_t buflen)
{
	if (cfg == NULL || config_find_user(cfg, user) == NULL)
		return "unknown user";
	if (cfg->user_networks == CONFIG_USER_NETWORKS_LIST)
		return "the operator does not let users change their networks here ([supervisor] user_networks = list)";
	if (op != SESSION_EDIT_SET && cfg->user_networks != CONFIG_USER_NETWORKS_ADD)
		return "the operator does not let users add or delete networks here ([supervisor] user_networks = change)";
	if (npairs > SESSION_EDIT_MAX_PAIRS) {
		snprintf(buf, buflen, "at most %d KEY=VALUE at once", SESSION_EDIT_MAX_PAIRS);
		return buf;
	}
	if (op == SESSION_EDIT_DEL && npairs > 0)
		return "del takes no KEY=VALUE";
	if (op == SESSION_EDIT_SET && npairs == 0)
		return "nothing to change: give KEY=VALUE";
	for (size_t i = 0; i < npairs; i++) {
		const char *eq = strchr(pairs[i], '=');
		bool known = false;

		if (strlen(pairs[i]) > SESSION_EDIT_MAX_PAIR) {
			snprintf(buf, buflen, "a KEY=VALUE has at most %d bytes",
				 SESSION_EDIT_MAX_PAIR);
			return buf;
		}
		for (size_t k = 0; eq != NULL && k < sizeof(user_keys) / sizeof(user_keys[0]); k++)
			if (strlen(user_keys[k]) == (size_t)(eq - pairs[i]) &&
			    strncmp(pairs[i], user_keys[k], (size_t)(eq - pairs[i])) == 0)
				known = true;
		if (!known) {
			snprintf(buf, buflen, "'%.40s': a user may set nick, username, realname and channels only (as KEY=VALUE)",
				 pairs[i]);
			return buf;
		}
	}
	if (op == SESSION_EDIT_ADD) {
		if (config_find_network(cfg, network) == NULL) {
			snprintf(buf, buflen, "no network '%.64s' here (the operator defines networks)",
				 network);
			return buf;
		}
		if (config_find_session(cfg, user, network) != NULL)
			return "you have this network already";
	} else if (config_find_session(cfg, user, network) == NULL) {
		snprintf(buf, buflen, "you have no network '%.64s'", network);
		return buf;
	}
	return NULL;
}
