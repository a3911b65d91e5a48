/* batonctl/main.c: the operator's and CI's command line for a running
 * baton-supervisor (its control socket, supervisor/control_server.h).
 *
 *   batonctl -c FILE [--json] status | upgrade PATH | rollback
 *
 * Exit status (DESIGN.md §8): 0 success / committed, 1 refused or aborted
 * (the reason is printed), 2 usage, config or connection error.
 */
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <ini.h>
#include <json-c/json.h>

#include "baton_version.h"
#include "common/config.h"

enum { EXIT_OK = 0, EXIT_REFUSED = 1, EXIT_USAGE = 2 };

static void usage(FILE *f)
{
	fprintf(f,
		"usage: batonctl -c FILE [--json] status\n"
		"       batonctl -c FILE [--json] upgrade PATH\n"
		"       batonctl -c FILE [--json] rollback\n"
		"\n"
		"  -c, --config FILE   the baton INI file (for the control socket path)\n"
		"  -s, --socket PATH   talk to this control socket instead\n"
		"      --json          print the result as one JSON line\n"
		"      --version       print the version\n"
		"\n"
		"exit status: 0 success, 1 refused or aborted, 2 usage or connection error\n");
}

static const char *jstr(struct json_object *o, const char *key, const char *dflt)
{
	struct json_object *v;

	if (o && json_object_object_get_ex(o, key, &v) && v &&
	    json_object_is_type(v, json_type_string))
		return json_object_get_string(v);
	return dflt;
}

static int64_t jint(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (o && json_object_object_get_ex(o, key, &v) && v)
		return json_object_get_int64(v);
	return 0;
}

static double jdbl(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (o && json_object_object_get_ex(o, key, &v) && v)
		return json_object_get_double(v);
	return 0;
}

static struct json_object *jobj(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (o && json_object_object_get_ex(o, key, &v) && v &&
	    json_object_is_type(v, json_type_object))
		return v;
	return NULL;
}

struct ctl_ini {
	char *control;
	bool readable;
};

static int ctl_ini_handler(void *user, const char *section, const char *name,
			   const char *value)
{
	struct ctl_ini *ci = user;

	ci->readable = true;
	if (strcmp(section, "supervisor") == 0 && strcmp(name, "control") == 0) {
		free(ci->control);
		ci->control = strdup(value);
	}
	return 1;
}

/* [supervisor] control of a config that does not validate (same default
 * and relative-path rule as common/config.h). NULL if the file is
 * unreadable. */
static char *ctl_control_fallback(const char *config_path)
{
	struct ctl_ini ci = { NULL, false };
	char *real = realpath(config_path, NULL), *dir, *out = NULL;
	const char *control;

	if (real == NULL || ini_parse(real, ctl_ini_handler, &ci) < 0)
		goto out;
	control = ci.control ? ci.control : "baton.sock";
	dir = dirname(real);
	if (control[0] == '/')
		out = strdup(control);
	else if (asprintf(&out, "%s/%s", dir, control) < 0)
		out = NULL;
out:
	free(ci.control);
	free(real);
	return out;
}

static int ctl_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		fprintf(stderr, "batonctl: control socket path too long: %s\n", path);
		return -1;
	}
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		fprintf(stderr, "batonctl: socket: %s\n", strerror(errno));
		return -1;
	}
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		fprintf(stderr, "batonctl: cannot connect to control socket %s: %s%s\n",
			path, strerror(errno),
			errno == ENOENT || errno == ECONNREFUSED
				? " (is baton-supervisor running?)" : "");
		close(fd);
		return -1;
	}
	return fd;
}

static void print_status(struct json_object *st)
{
	struct json_object *sup = jobj(st, "supervisor"), *ws, *v;
	struct json_object *crash = jobj(st, "last_crash");
	struct json_object *mig = jobj(st, "last_migration");

	printf("supervisor: pid %lld, version %s\n", (long long)jint(sup, "pid"),
	       jstr(sup, "version", "?"));
	if (json_object_object_get_ex(st, "workers", &ws) &&
	    json_object_is_type(ws, json_type_array)) {
		size_t n = json_object_array_length(ws);

		if (n == 0)
			printf("workers: none (restarting?)\n");
		for (size_t i = 0; i < n; i++) {
			struct json_object *w = json_object_array_get_idx(ws, i);

			printf("worker: pid %lld, %s, version %s (schema %lld-%lld), %s\n"
			       "        %lld sessions, %lld connections, %lld clients, %lld upstreams connected, loop lag %.1f ms\n",
			       (long long)jint(w, "pid"), jstr(w, "role", "?"),
			       jstr(w, "version", "?")[0] ? jstr(w, "version", "?") : "(starting)",
			       (long long)jint(w, "schema_min"),
			       (long long)jint(w, "schema_max"), jstr(w, "binary", "?"),
			       (long long)jint(w, "sessions"),
			       (long long)jint(w, "connections"),
			       (long long)jint(w, "clients"),
			       (long long)jint(w, "upstreams_connected"),
			       jdbl(w, "loop_lag_ms"));
		}
	}
	if (json_object_object_get_ex(st, "migration_running", &v) &&
	    json_object_get_boolean(v))
		printf("migration: running\n");
	printf("crashes: %lld", (long long)jint(st, "crashes"));
	if (crash) {
		time_t t = (time_t)jint(crash, "time");
		char when[64];

		strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", localtime(&t));
		printf(" (last: pid %lld %s at %s)", (long long)jint(crash, "pid"),
		       jstr(crash, "status", "?"), when);
	}
	printf("\nprevious binary: %s\n", jstr(st, "previous_binary", "none"));
	if (mig)
		printf("last migration: %s %s%s%s\n", jstr(mig, "kind", "upgrade"),
		       jstr(mig, "result", "?"),
		       jstr(mig, "reason", "")[0] ? ": " : "",
		       jstr(mig, "reason", ""));
}

/* Returns the exit status. */
static int print_migration(const char *cmd, struct json_object *r)
{
	struct json_object *from = jobj(r, "from"), *to = jobj(r, "to");
	bool committed = strcmp(jstr(r, "result", ""), "committed") == 0;

	if (committed) {
		printf("%s committed: pid %lld (%s) -> pid %lld (%s)\n"
		       "  %lld sessions, %lld connections, %lld fds in %lld chunk(s); freeze %.1f ms, total %.1f ms\n",
		       cmd, (long long)jint(from, "pid"), jstr(from, "version", "?"),
		       (long long)jint(to, "pid"), jstr(to, "version", "?"),
		       (long long)jint(r, "sessions"), (long long)jint(r, "connections"),
		       (long long)jint(r, "fds"), (long long)jint(r, "chunks"),
		       jdbl(r, "freeze_ms"), jdbl(r, "total_ms"));
		if (jstr(r, "reason", "")[0])
			printf("  note: %s\n", jstr(r, "reason", ""));
		return EXIT_OK;
	}
	{
		struct json_object *v;
		bool refused = json_object_object_get_ex(r, "refused", &v) &&
			       json_object_get_boolean(v);

		fprintf(stderr, "batonctl: %s %s: %s\n", cmd,
			refused ? "refused" : "aborted", jstr(r, "reason", "(no reason given)"));
		if (!refused && jint(from, "pid") > 0)
			fprintf(stderr, "  the old worker (pid %lld) keeps serving; total %.1f ms\n",
				(long long)jint(from, "pid"), jdbl(r, "total_ms"));
	}
	return EXIT_REFUSED;
}

static void show_progress(struct json_object *p, bool *shown)
{
	char line[128];
	int64_t done = jint(p, "items_done"), total = jint(p, "items_total");

	if (total > 0 && strcmp(jstr(p, "phase", ""), "migrate") == 0)
		snprintf(line, sizeof(line), "%s: %lld/%lld (%lld%%)",
			 jstr(p, "phase", "?"), (long long)done, (long long)total,
			 (long long)(done * 100 / total));
	else if (total > 0)
		snprintf(line, sizeof(line), "%s: %lld/%lld", jstr(p, "phase", "?"),
			 (long long)done, (long long)total);
	else
		snprintf(line, sizeof(line), "%s...", jstr(p, "phase", "?"));
	fprintf(stderr, "\r\033[K%s", line);
	fflush(stderr);
	*shown = true;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "socket", required_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'j' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct config_problems problems = { 0 };
	struct baton_config *cfg = NULL;
	struct json_object *req = NULL, *resp = NULL, *result;
	const char *config_path = NULL, *socket_path = NULL, *cmd;
	char *control = NULL, *binary = NULL, *line = NULL;
	size_t cap = 0;
	bool json = false, progress_shown = false, tty = isatty(STDERR_FILENO);
	FILE *f = NULL;
	int c, fd = -1, rc = EXIT_USAGE;
	const char *reqtext;

	while ((c = getopt_long(argc, argv, "c:s:h", opts, NULL)) != -1) {
		switch (c) {
		case 'c': config_path = optarg; break;
		case 's': socket_path = optarg; break;
		case 'j': json = true; break;
		case 'V':
			printf("batonctl %s (state schema %d-%d)\n", BATON_VERSION,
			       BATON_SCHEMA_MIN, BATON_SCHEMA_MAX);
			return 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (optind >= argc || (config_path == NULL && socket_path == NULL)) {
		usage(stderr);
		return EXIT_USAGE;
	}
	cmd = argv[optind];
	req = json_object_new_object();
	if (strcmp(cmd, "status") == 0 && optind + 1 == argc) {
		json_object_object_add(req, "cmd", json_object_new_string("status"));
	} else if (strcmp(cmd, "rollback") == 0 && optind + 1 == argc) {
		json_object_object_add(req, "cmd", json_object_new_string("rollback"));
	} else if (strcmp(cmd, "upgrade") == 0 && optind + 2 == argc) {
		/* The supervisor runs elsewhere (cwd /): it needs a full path. */
		binary = realpath(argv[optind + 1], NULL);
		if (binary == NULL) {
			fprintf(stderr, "batonctl: %s: %s\n", argv[optind + 1],
				strerror(errno));
			goto out;
		}
		json_object_object_add(req, "cmd", json_object_new_string("upgrade"));
		json_object_object_add(req, "binary", json_object_new_string(binary));
	} else {
		usage(stderr);
		goto out;
	}

	if (socket_path == NULL) {
		if (config_load(config_path, &cfg, &problems) == 0) {
			control = config_resolve(cfg, cfg->control);
		} else {
			/* Problems elsewhere in the file are the workers' business
			 * (an upgrade's preflight reports them); we need only the
			 * control socket, so go on if it can be found. */
			control = ctl_control_fallback(config_path);
			if (control == NULL) {
				for (size_t i = 0; i < problems.n; i++)
					fprintf(stderr, "%s\n", problems.msgs[i]);
				goto out;
			}
			fprintf(stderr, "batonctl: warning: %s has %zu problem(s) (baton-supervisor --check -c %s lists them); using control socket %s\n",
				config_path, problems.n, config_path, control);
		}
		if (control == NULL)
			goto out;
		socket_path = control;
	}
	fd = ctl_connect(socket_path);
	if (fd < 0)
		goto out;
	reqtext = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
	f = fdopen(fd, "r+");
	if (f == NULL) {
		fprintf(stderr, "batonctl: fdopen: %s\n", strerror(errno));
		goto out;
	}
	fd = -1; /* transferred to f */
	if (fprintf(f, "%s\n", reqtext) < 0 || fflush(f) != 0) {
		fprintf(stderr, "batonctl: cannot send to %s: %s\n", socket_path,
			strerror(errno));
		goto out;
	}

	for (;;) {
		struct json_object *p;

		errno = 0;
		if (getline(&line, &cap, f) < 0) {
			if (progress_shown)
				fprintf(stderr, "\r\033[K");
			fprintf(stderr, "batonctl: %s closed the connection without a result%s%s\n",
				socket_path, errno ? ": " : "", errno ? strerror(errno) : "");
			goto out;
		}
		json_object_put(resp);
		resp = json_tokener_parse(line);
		if (resp == NULL || !json_object_is_type(resp, json_type_object)) {
			fprintf(stderr, "batonctl: malformed reply: %s", line);
			goto out;
		}
		if ((p = jobj(resp, "progress")) != NULL) {
			/* On a terminal only: logs and pipes get just the result. */
			if (tty)
				show_progress(p, &progress_shown);
			continue;
		}
		break;
	}
	if (progress_shown)
		fprintf(stderr, "\r\033[K");
	fflush(stderr);
	result = jobj(resp, "result");
	if (result == NULL) {
		fprintf(stderr, "batonctl: reply without a result: %s", line);
		goto out;
	}
	if (jstr(result, "error", NULL) != NULL) {
		fprintf(stderr, "batonctl: supervisor: %s\n", jstr(result, "error", ""));
		goto out;
	}
	if (json) {
		printf("%s\n", json_object_to_json_string_ext(result, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
		rc = strcmp(cmd, "status") == 0 ||
			     strcmp(jstr(result, "result", ""), "committed") == 0
			     ? EXIT_OK : EXIT_REFUSED;
		goto out;
	}
	if (strcmp(cmd, "status") == 0) {
		print_status(result);
		rc = EXIT_OK;
	} else {
		rc = print_migration(cmd, result);
	}
out:
	if (f)
		fclose(f);
	if (fd >= 0)
		close(fd);
	json_object_put(req);
	json_object_put(resp);
	config_free(cfg);
	config_problems_clear(&problems);
	free(control);
	free(binary);
	free(line);
	return rc;
}
