/* batonctl/users.c: see users.h. */
#include "batonctl/users.h"
#include "store/store.h"
#include "store/store_config.h"

#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <termios.h>
#include <unistd.h>

#include <json-c/json.h>

#include "common/config.h"
#include "common/config_edit.h"
#include "common/json_builder.h"
#include "common/passhash.h"
#include "common/session_edit.h"

#define CTL_PASSWORD_MAX 1024 /* bytes of a password read */

int ctl_users_hash(const char *password, char *out, size_t outlen)
{
	char salt[CRYPT_GENSALT_OUTPUT_SIZE];
	struct crypt_data *cd = calloc(1, sizeof(*cd));
	const char *h;
	int r = 0;

	if (cd == NULL)
		return -ENOMEM;
	if (crypt_gensalt_rn("$y$", 0, NULL, 0, salt, sizeof(salt)) == NULL &&
	    crypt_gensalt_rn("$6$", 0, NULL, 0, salt, sizeof(salt)) == NULL) {
		r = -errno ? -errno : -EINVAL;
		goto out;
	}
	h = crypt_r(password, salt, cd);
	if (h == NULL || h[0] == '*' || strlen(h) >= outlen) {
		r = -EINVAL;
		goto out;
	}
	memcpy(out, h, strlen(h) + 1);
out:
	explicit_bzero(cd, sizeof(*cd));
	free(cd);
	return r;
}

/* One line from f into buf (newline and a CR before it dropped). */
static int read_secret_line(FILE *f, char *buf, size_t len)
{
	size_t n;

	if (fgets(buf, (int)len, f) == NULL)
		return -EIO;
	n = strlen(buf);
	if (n == len - 1 && buf[n - 1] != '\n')
		return -E2BIG;
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		buf[--n] = '\0';
	return n > 0 ? 0 : -ENODATA;
}

/* Typed at the terminal, twice, without echo. */
static int read_tty_password(char *buf, size_t len, char *err, size_t errlen)
{
	char again[CTL_PASSWORD_MAX];
	struct termios old, quiet;
	FILE *tty = fopen("/dev/tty", "r+e");
	int r;

	if (tty == NULL) {
		snprintf(err, errlen, "no terminal to read a password from: give --password-hash HASH or --password-stdin");
		return -ENOTTY;
	}
	if (tcgetattr(fileno(tty), &old) < 0) {
		fclose(tty);
		snprintf(err, errlen, "no terminal to read a password from: give --password-hash HASH or --password-stdin");
		return -ENOTTY;
	}
	quiet = old;
	quiet.c_lflag &= ~(tcflag_t)ECHO;
	tcsetattr(fileno(tty), TCSAFLUSH, &quiet);
	fputs("Password: ", tty);
	fflush(tty);
	r = read_secret_line(tty, buf, len);
	fputs("\nAgain: ", tty);
	fflush(tty);
	if (r == 0)
		r = read_secret_line(tty, again, sizeof(again));
	fputs("\n", tty);
	tcsetattr(fileno(tty), TCSAFLUSH, &old);
	fclose(tty);
	if (r == 0 && strcmp(buf, again) != 0) {
		snprintf(err, errlen, "the passwords differ");
		r = -EINVAL;
	} else if (r < 0) {
		snprintf(err, errlen, "no password read");
	}
	explicit_bzero(again, sizeof(again));
	return r;
}

/* The hash to store for the options given: --password-hash checked,
 * else a password (stdin or terminal) hashed. */
static int ctl_password_hash(const struct ctl_users_opts *o, char *out,
			     size_t outlen, char *err, size_t errlen)
{
	char pw[CTL_PASSWORD_MAX], why[200];
	int r;

	if (o->password_hash != NULL && o->password_stdin) {
		snprintf(err, errlen, "--password-hash and --password-stdin: give one");
		return -EINVAL;
	}
	if (o->password_hash != NULL) {
		if (passhash_check(o->password_hash, why, sizeof(why)) == PASSHASH_BAD) {
			snprintf(err, errlen, "--password-hash: password %s (make one with openssl passwd -6, or use --password-stdin)",
				 why);
			return -EINVAL;
		}
		if (strlen(o->password_hash) >= outlen) {
			snprintf(err, errlen, "--password-hash: too long");
			return -E2BIG;
		}
		memcpy(out, o->password_hash, strlen(o->password_hash) + 1);
		return 0;
	}
	if (o->password_stdin) {
		r = read_secret_line(stdin, pw, sizeof(pw));
		if (r < 0)
			snprintf(err, errlen, "--password-stdin: %s",
				 r == -E2BIG ? "password too long" : "no password on stdin");
	} else {
		r = read_tty_password(pw, sizeof(pw), err, errlen);
	}
	if (r == 0 && (r = ctl_users_hash(pw, out, outlen)) < 0)
		snprintf(err, errlen, "cannot hash the password: %s", strerror(-r));
	explicit_bzero(pw, sizeof(pw));
	return r;
}

static struct json_object *refusal_json(const char *kind, const char *reason,
					const struct config_problems *pr,
					const char *tmp, const char *path)
{
	struct jb jb_ = JB_INIT, *jb = &jb_;
	struct json_object *o = jb_obj(jb), *a = jb_arr(jb);

	jb_add(jb, o, "kind", jb_str(jb, kind));
	jb_add(jb, o, "result", jb_str(jb, "refused"));
	jb_add(jb, o, "reason", jb_str(jb, reason));
	for (size_t i = 0; pr != NULL && i < pr->n; i++) {
		/* the temporary file's name is the config's for the reader */
		const char *m = pr->msgs[i], *at = tmp ? strstr(m, tmp) : NULL;
		char buf[2048];

		if (at != NULL)
			snprintf(buf, sizeof(buf), "%.*s%s%s", (int)(at - m), m, path,
				 at + strlen(tmp));
		else
			snprintf(buf, sizeof(buf), "%s", m);
		jb_push(jb, a, jb_str(jb, buf));
	}
	jb_add(jb, o, "problems", a);
	return jb_done(jb, o);
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

static void user_list(const struct baton_config *cfg, bool json)
{
	struct jb jb_ = JB_INIT, *jb = &jb_;
	struct json_object *o = jb_obj(jb), *users = jb_arr(jb);

	for (size_t i = 0; i < cfg->nusers; i++) {
		struct json_object *u = jb_obj(jb), *nets = jb_arr(jb);

		if (!json)
			printf("%s", cfg->users[i].name);
		for (size_t j = 0; j < cfg->nsessions; j++)
			if (strcmp(cfg->sessions[j].user, cfg->users[i].name) == 0) {
				if (!json)
					printf(" %s", cfg->sessions[j].network);
				jb_push(jb, nets, jb_str(jb, cfg->sessions[j].network));
			}
		if (!json)
			printf("\n");
		jb_add(jb, u, "name", jb_str(jb, cfg->users[i].name));
		jb_add(jb, u, "networks", nets);
		jb_push(jb, users, u);
	}
	jb_add(jb, o, "users", users);
	o = jb_done(jb, o);
	if (json)
		printf("%s\n", o ? json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
						  JSON_C_TO_STRING_NOSLASHESCAPE)
				 : "{\"error\":\"out of memory\"}");
	json_object_put(o);
}

/* "USER/NETWORK" -> the two names (pointers into buf). */
static int split_session(const char *arg, char *buf, size_t len,
			 const char **user, const char **network)
{
	char *slash;

	if (snprintf(buf, len, "%s", arg) >= (int)len)
		return -E2BIG;
	slash = strchr(buf, '/');
	if (slash == NULL || slash == buf || slash[1] == '\0' ||
	    strchr(slash + 1, '/') != NULL)
		return -EINVAL;
	*slash = '\0';
	*user = buf;
	*network = slash + 1;
	return 0;
}

/* Whether the message store holds lines for session key (a session of that
 * name removed without --purge left them): 1, 0, or -1 (no store, cannot
 * tell). Only reads (the worker may have the store open). */
static int stored_history(const char *config_path, const char *key)
{
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;
	struct store_options so;
	struct store *st = NULL;
	char path[4096], why[512];
	int out = -1;

	if (config_load(config_path, &cfg, &pr) != 0 ||
	    cfg->store_backend == CONFIG_STORE_OFF ||
	    store_options_from_config(cfg, &so, path, sizeof(path)) < 0)
		goto done;
	if (so.backend == STORE_SQLITE && access(so.url, F_OK) != 0) {
		out = 0; /* no database yet: nothing stored */
		goto done;
	}
	st = store_open(&so, NULL, NULL, why, sizeof(why));
	if (st == NULL)
		goto done;
	struct store_query q = { .kind = STORE_Q_REPLAY, .network = key, .limit = 1 };
	struct store_result res;
	if (store_query(st, &q, &res, NULL, 0) == 0) {
		out = res.nrows > 0;
		store_result_free(&res);
	}
done:
	if (st)
		store_close(st);
	config_free(cfg);
	config_problems_clear(&pr);
	return out;
}

#define KEPT_NOTE " (its stored history stays in the message store: a session added later under the same name shows it to its clients; --purge deletes it)"

enum ctl_users_outcome ctl_users_run(const char *config_path, const char *cmd,
				     int nargs, char **args,
				     struct ctl_users_opts *o, char *note,
				     size_t notelen, struct json_object **refusal,
				     char *err, size_t errlen)
{
	struct config_problems pr = { 0 };
	struct baton_config *cur = NULL, *next = NULL;
	struct config_edit *e = NULL;
	enum ctl_users_outcome out = CTL_USERS_ERROR;
	const char *action = nargs > 0 ? args[0] : "";
	char kind[64], section[600], hash[512], namebuf[512], *tmp = NULL;
	const char *user = NULL, *network = NULL;
	int lock = -1, r;
	char *real = NULL;

	*refusal = NULL;
	snprintf(kind, sizeof(kind), "%s %s", cmd, action);
	/* A symlinked file (configuration management) is edited where it
	 * is: renaming over the link would replace it by a plain file. */
	real = realpath(config_path, NULL);
	if (real != NULL)
		config_path = real;
	if (strcmp(cmd, "user") == 0 && strcmp(action, "list") == 0 && nargs == 1) {
		if (config_load(config_path, &cur, &pr) != 0) {
			for (size_t i = 0; i < pr.n; i++)
				fprintf(stderr, "%s\n", pr.msgs[i]);
			snprintf(err, errlen, "%s: %zu config problem(s)", config_path, pr.n);
			goto done;
		}
		user_list(cur, o->json);
		out = CTL_USERS_DONE;
		goto done;
	}
	if (strcmp(cmd, "user") == 0 &&
	    ((strcmp(action, "add") == 0 || strcmp(action, "del") == 0 ||
	      strcmp(action, "passwd") == 0) && nargs == 2)) {
		user = args[1];
		snprintf(section, sizeof(section), "user %s", user);
	} else if (strcmp(cmd, "network") == 0 &&
		   ((strcmp(action, "add") == 0 && nargs >= 2) ||
		    (strcmp(action, "del") == 0 && nargs == 2) ||
		    (strcmp(action, "set") == 0 && nargs >= 3))) {
		bool refused = false;
		char why[700];

		if (split_session(args[1], namebuf, sizeof(namebuf), &user, &network) < 0) {
			snprintf(err, errlen, "%s: expected USER/NETWORK, got '%s'", kind, args[1]);
			goto done;
		}
		if ((o->purge && strcmp(action, "del") != 0) || o->password_hash ||
		    o->password_stdin) {
			snprintf(err, errlen, o->purge ? "--purge goes with user del and network del"
				 : "--password-hash and --password-stdin go with user add and user passwd");
			goto done;
		}
		/* The path a user's edit from a client takes too (the
		 * supervisor's, supervisor/user_edit.c). */
		r = session_edit_apply(config_path, (enum session_edit_op)session_edit_op_parse(action),
				       user, network, args + 2, (size_t)(nargs - 2), &pr,
				       &refused, why, sizeof(why));
		if (r == 0) {
			char key[600];
			snprintf(key, sizeof key, "%s/%s", user, network);
			bool add = strcmp(action, "add") == 0, del = strcmp(action, "del") == 0;
			snprintf(note, notelen, "session %s %s%s", key,
				 add ? "added" : del ? "removed" : "changed",
				 o->purge ? " (--purge: its stored history is deleted once the reload is applied)" :
				 del ? KEPT_NOTE :
				 add && stored_history(config_path, key) == 1 ?
				 " (note: the message store already holds history for this name, left by a session removed without --purge: its clients will see it; to start empty, network del it with --purge and add it again)" : "");
			if (o->purge)
				snprintf(o->purge_keys[o->npurge++], sizeof(o->purge_keys[0]),
					 "%s/%s", user, network);
			out = CTL_USERS_EDITED;
		} else if (refused) {
			*refusal = refusal_json(kind, why, pr.n ? &pr : NULL, NULL, config_path);
			out = CTL_USERS_REFUSED;
		} else {
			snprintf(err, errlen, "%s", why);
		}
		goto done;
	} else {
		snprintf(err, errlen, "%s: unknown action or wrong arguments", kind);
		goto done;
	}
	if (o->purge && strcmp(kind, "user del") != 0 && strcmp(kind, "network del") != 0) {
		snprintf(err, errlen, "--purge goes with user del and network del");
		goto done;
	}
	if ((o->password_hash || o->password_stdin) && strcmp(kind, "user add") != 0 &&
	    strcmp(kind, "user passwd") != 0) {
		snprintf(err, errlen, "--password-hash and --password-stdin go with user add and user passwd");
		goto done;
	}
	/* The password first: nothing is locked while someone types. */
	if ((strcmp(kind, "user add") == 0 || strcmp(kind, "user passwd") == 0) &&
	    ctl_password_hash(o, hash, sizeof(hash), err, errlen) < 0)
		goto done;

	lock = config_edit_lock(config_path);
	if (lock < 0) {
		snprintf(err, errlen, "%s: cannot lock its folder: %s", config_path,
			 strerror(-lock));
		goto done;
	}
	e = config_edit_read(config_path, err, errlen);
	if (e == NULL)
		goto done;
	r = 0;
	if (strcmp(kind, "user add") == 0) {
		if (config_edit_has_section(e, section))
			r = -EEXIST;
		else
			r = config_edit_set(e, section, "password", hash);
		snprintf(note, notelen, "user %s added", user);
	} else if (strcmp(kind, "user passwd") == 0) {
		r = config_edit_has_section(e, section)
			    ? config_edit_set(e, section, "password", hash) : -ENOENT;
		snprintf(note, notelen, "password of user %s changed", user);
	} else if (strcmp(kind, "user del") == 0) {
		/* its sessions go with it: found in the file as it loads now */
		if (config_load(config_path, &cur, &pr) != 0) {
			*refusal = refusal_json(kind, "the config has problems now: fix them first (nothing changed)",
						&pr, NULL, config_path);
			out = CTL_USERS_REFUSED;
			goto done;
		}
		r = config_edit_del_section(e, section);
		for (size_t i = 0; r == 0 && i < cur->nsessions; i++)
			if (strcmp(cur->sessions[i].user, user) == 0) {
				char s2[600];

				snprintf(s2, sizeof(s2), "user %s/%s", user,
					 cur->sessions[i].network);
				r = config_edit_del_section(e, s2);
				if (o->purge && o->npurge < 64)
					snprintf(o->purge_keys[o->npurge++], sizeof(o->purge_keys[0]),
						 "%s/%s", user, cur->sessions[i].network);
			}
		snprintf(note, notelen, "user %s removed%s", user,
			 o->purge ? " (--purge: its stored history is deleted once the reload is applied)" :
			 KEPT_NOTE);
	}
	if (r < 0) {
		char why[700];

		snprintf(why, sizeof(why), "[%s]: %s", section, edit_error(r));
		*refusal = refusal_json(kind, why, NULL, NULL, config_path);
		out = CTL_USERS_REFUSED;
		goto done;
	}
	r = config_edit_write(e, config_path, &tmp);
	if (r < 0) {
		snprintf(err, errlen, "%s: cannot write beside it: %s", config_path,
			 strerror(-r));
		goto done;
	}
	config_problems_clear(&pr);
	if (config_load(tmp, &next, &pr) != 0) {
		*refusal = refusal_json(kind, "the edit would make the config invalid: nothing changed",
					&pr, tmp, config_path);
		unlink(tmp);
		out = CTL_USERS_REFUSED;
		goto done;
	}
	r = config_edit_install(tmp, config_path);
	if (r < 0) {
		unlink(tmp);
		snprintf(err, errlen, "%s: cannot replace it: %s", config_path,
			 strerror(-r));
		goto done;
	}
	out = CTL_USERS_EDITED;
done:
	if (lock >= 0)
		close(lock);
	explicit_bzero(hash, sizeof(hash));
	config_edit_free(e);
	config_free(cur);
	config_free(next);
	config_problems_clear(&pr);
	free(tmp);
	free(real);
	return out;
}

int ctl_users_purge(const char *config_path, const struct ctl_users_opts *o,
		    struct json_object *out, char *err, size_t errlen)
{
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;
	struct store_options so;
	struct store *st = NULL;
	char path[4096], why[512] = "";
	struct json_object *purged = NULL;
	int rc = -1;

	if (o->npurge == 0)
		return 0;
	if (config_load(config_path, &cfg, &pr) != 0) {
		snprintf(err, errlen, "%s: cannot load it to find the message store (%zu problems): history not purged",
			 config_path, pr.n);
		goto done;
	}
	if (cfg->store_backend == CONFIG_STORE_OFF) {
		rc = 0; /* nothing on disk */
		if (!o->json)
			printf("--purge: [sessiond] store = off: no stored history\n");
		goto done;
	}
	if (store_options_from_config(cfg, &so, path, sizeof(path)) < 0) {
		snprintf(err, errlen, "the message store's options are incomplete: history not purged");
		goto done;
	}
	st = store_open(&so, NULL, NULL, why, sizeof(why));
	if (st == NULL) {
		snprintf(err, errlen, "the message store cannot be opened (%s): history not purged", why);
		goto done;
	}
	purged = json_object_new_object();
	for (size_t i = 0; i < o->npurge; i++) {
		uint64_t lines = 0;
		int r = store_purge(st, o->purge_keys[i], &lines, why, sizeof(why));

		if (r < 0) {
			snprintf(err, errlen, "%s: history not purged: %s", o->purge_keys[i],
				 why[0] ? why : strerror(-r));
			goto done;
		}
		if (purged)
			json_object_object_add(purged, o->purge_keys[i],
					       json_object_new_int64((int64_t)lines));
		if (!o->json)
			printf("--purge: %s: %llu stored lines, its positions and read markers deleted\n",
			       o->purge_keys[i], (unsigned long long)lines);
	}
	rc = 0;
done:
	if (out && purged) {
		json_object_object_add(out, "purged", purged);
		purged = NULL;
	}
	json_object_put(purged);
	if (st)
		store_close(st);
	config_free(cfg);
	config_problems_clear(&pr);
	return rc;
}
