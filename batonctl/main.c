/* batonctl/main.c: the operator's and CI's command line for a running
 * baton-supervisor (its control socket, supervisor/control_socket.h).
 *
 *   batonctl -c FILE [--json] [--timeout S] status | upgrade PATH [--force] |
 *            rollback [--force] | releases
 *   batonctl -c FILE canary start PATH (--percent P | --users U1,U2 | --network NAME) [--bake S]
 *   batonctl -c FILE canary grow --percent P | status | promote | abort
 *   batonctl -c FILE upgrade PATH --canary P --bake S [--steps P1,P2,...]
 *   batonctl -c FILE upgrade-supervisor PATH
 *   batonctl -c FILE reload
 *   batonctl -c FILE user add NAME [--password-hash HASH | --password-stdin]
 *   batonctl -c FILE user del NAME [--purge] | user passwd NAME [...] | user list
 *   batonctl -c FILE network add|set USER/NETWORK [KEY=VALUE ...] | network del USER/NETWORK [--purge]
 *
 * Exit status (docs/design.md §8): 0 success / committed with every session,
 * 1 refused, aborted, partial or any sessions lost (the reason is printed), 2 usage, config or connection error, or no result
 * within the deadline (--timeout: connect + request + reply). With --json,
 * an exit-2 error is also printed on stdout as {"error":"..."}.
 */
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
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
#include "common/clock.h"
#include "common/config.h"
#include "common/json_builder.h"
#include "batonctl/users.h"

enum { EXIT_OK = 0, EXIT_REFUSED = 1, EXIT_USAGE = 2 };

#define TIMEOUT_STATUS_S 10.0
#define TIMEOUT_MIGRATE_S 300.0 /* upgrade, rollback */
#define TIMEOUT_RELOAD_S 60.0   /* the supervisor answers within 30 s */

static bool json_mode;

/* An exit-2 error: "batonctl: ..." on stderr and, with --json, {"error":...}
 * on stdout (so a script reading stdout always gets one JSON object). */
static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int fail(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	fprintf(stderr, "batonctl: %s\n", buf);
	if (json_mode) {
		struct jb jb = JB_INIT;
		struct json_object *o = jb_obj(&jb);
		const char *text;

		jb_add(&jb, o, "error", jb_str(&jb, buf));
		o = jb_done(&jb, o);
		text = o ? json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
							     JSON_C_TO_STRING_NOSLASHESCAPE) : NULL;
		printf("%s\n", text ? text : "{\"error\":\"out of memory\"}");
		json_object_put(o);
	}
	return EXIT_USAGE;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: batonctl -c FILE [--json] [--timeout S] status\n"
		"       batonctl -c FILE [--json] [--timeout S] upgrade PATH [--force]\n"
		"       batonctl -c FILE [--json] [--timeout S] rollback [--force]\n"
		"       batonctl -c FILE [--json] [--timeout S] releases\n"
		"       batonctl -c FILE [--json] canary start PATH (--percent P | --users U1,U2 | --network NAME) [--bake S]\n"
		"       batonctl -c FILE [--json] canary grow --percent P\n"
		"       batonctl -c FILE [--json] canary status | promote | abort\n"
		"       batonctl -c FILE [--json] upgrade PATH --canary P --bake S [--steps P1,P2,...]\n"
		"       batonctl -c FILE [--json] upgrade-supervisor PATH [--force]\n"
		"                      re-execute the supervisor as PATH (same pid; the\n"
		"                      worker serves on and is adopted: nobody disconnects);\n"
		"                      the binary already running is left alone (\"unchanged\")\n"
		"                      unless --force\n"
		"       batonctl -c FILE [--json] reload\n"
		"                      the worker applies the config file now (users and\n"
		"                      sessions added, removed, channels changed) without\n"
		"                      an upgrade; a file with problems is refused whole\n"
		"       batonctl -c FILE [--json] user add NAME [--password-hash HASH | --password-stdin]\n"
		"       batonctl -c FILE [--json] user passwd NAME [--password-hash HASH | --password-stdin]\n"
		"       batonctl -c FILE [--json] user del NAME [--purge]\n"
		"       batonctl -c FILE [--json] user list\n"
		"       batonctl -c FILE [--json] network add USER/NETWORK [KEY=VALUE ...]\n"
		"       batonctl -c FILE [--json] network set USER/NETWORK KEY=VALUE ...\n"
		"       batonctl -c FILE [--json] network del USER/NETWORK [--purge]\n"
		"                      edit the config file (comments kept; checked before it\n"
		"                      is replaced, atomically), then reload; KEY= (no value)\n"
		"                      takes a key out\n"
		"\n"
		"  -c, --config FILE   the baton INI file (for the control socket path)\n"
		"  -s, --socket PATH   talk to this control socket instead\n"
		"      --json          print the result as one JSON line\n"
		"      --timeout S     give up (exit 2) without a result after S seconds\n"
		"                      (default %.0f for upgrade and rollback, %.0f for\n"
		"                      status, 60 for reload); an upgrade still running\n"
		"                      continues\n"
		"      --force         upgrade: deploy a release marked bad, or replace an\n"
		"                      installed version built from another binary;\n"
		"                      rollback: go to the most recent release even when\n"
		"                      none is good\n"
		"      --version       print the version\n"
		"\n"
		"      --percent P     canary cohort: P %% of the users (a stable hash of\n"
		"                      the user name: 1 %% is a subset of 10 %%)\n"
		"      --users U1,U2   canary cohort: these users\n"
		"      --network NAME  canary cohort: every session of this network\n"
		"      --bake S        watch the gates this long after each step\n"
		"      --canary P      upgrade through a canary of P %% (then promote)\n"
		"      --steps P1,P2   ... growing through these percentages\n"
		"\n"
		"      --password-hash HASH  user add/passwd: a crypt(3) hash (openssl passwd -6)\n"
		"      --password-stdin      user add/passwd: read the password from stdin (hashed\n"
		"                      with yescrypt; without either option it is asked for\n"
		"                      on the terminal)\n"
		"      --purge         user del, network del: also delete the stored history\n"
		"\n"
		"exit status: 0 success (canary: started, grown, baked, promoted, or\n"
		"aborted on request), 1 refused, aborted, rolled back or sessions lost\n"
		"(the reason and the gate are printed), 2 usage or connection error\n",
		TIMEOUT_MIGRATE_S, TIMEOUT_STATUS_S);
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

static bool jbool(struct json_object *o, const char *key)
{
	struct json_object *v;

	return o && json_object_object_get_ex(o, key, &v) && v &&
	       json_object_get_boolean(v);
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
	bool oom;
};

static int ctl_ini_handler(void *user, const char *section, const char *name,
			   const char *value)
{
	struct ctl_ini *ci = user;

	ci->readable = true;
	if (strcmp(section, "supervisor") == 0 && strcmp(name, "control") == 0) {
		free(ci->control);
		ci->control = strdup(value);
		if (ci->control == NULL) {
			ci->oom = true; /* not the default socket instead */
			return 0;
		}
	}
	return 1;
}

/* [supervisor] control of a config that does not validate (same default
 * and relative-path rule as common/config.h). NULL if the file is
 * unreadable. */
static char *ctl_control_fallback(const char *config_path)
{
	struct ctl_ini ci = { NULL, false, false };
	char *real = realpath(config_path, NULL), *dir, *out = NULL;
	const char *control;

	if (real == NULL || ini_parse(real, ctl_ini_handler, &ci) < 0 || ci.oom)
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

/* Wait for `events` on fd until the deadline: 0, -ETIMEDOUT or -errno. */
static int ctl_wait(int fd, short events, double deadline)
{
	for (;;) {
		struct pollfd pfd = { .fd = fd, .events = events };
		double left = deadline - clock_mono_s();
		int r;

		if (left <= 0)
			return -ETIMEDOUT;
		r = poll(&pfd, 1, (int)(left * 1000) + 1);
		if (r > 0)
			return 0;
		if (r < 0 && errno != EINTR)
			return -errno;
	}
}

/* Non-blocking socket connected to path, or -errno (message printed by the
 * caller). A full backlog (EAGAIN: the supervisor is alive but busy) is
 * retried until the deadline. */
static int ctl_connect(const char *path, double deadline)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, r;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	for (;;) {
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			return fd;
		r = -errno;
		if (r == -EINPROGRESS) {
			int err = 0;
			socklen_t len = sizeof(err);

			r = ctl_wait(fd, POLLOUT, deadline);
			if (r == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
				r = -errno;
			else if (r == 0 && err != 0)
				r = -err;
			if (r == 0)
				return fd;
			break;
		}
		if (r != -EAGAIN && r != -EINTR)
			break;
		if (clock_mono_s() + 0.05 >= deadline) {
			r = -ETIMEDOUT;
			break;
		}
		poll(NULL, 0, 50);
	}
	close(fd);
	return r;
}

static int ctl_write_all(int fd, const char *data, size_t len, double deadline)
{
	while (len > 0) {
		ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
		int r;

		if (n > 0) {
			data += n;
			len -= (size_t)n;
			continue;
		}
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			return -errno;
		r = ctl_wait(fd, POLLOUT, deadline);
		if (r < 0)
			return r;
	}
	return 0;
}

struct ctl_reader {
	int fd;
	char *buf;
	size_t len, cap;
	char *line; /* the last line returned */
};

/* Next line (without the newline; valid until the next call) or -ECONNRESET
 * (closed without one), -ETIMEDOUT, -E2BIG, -errno. */
static int ctl_read_line(struct ctl_reader *rd, double deadline, char **line)
{
	for (;;) {
		char *nl = rd->len ? memchr(rd->buf, '\n', rd->len) : NULL;
		ssize_t n;

		if (nl != NULL) {
			size_t used = (size_t)(nl - rd->buf) + 1;

			free(rd->line);
			rd->line = strndup(rd->buf, used - 1);
			if (rd->line == NULL)
				return -ENOMEM;
			memmove(rd->buf, rd->buf + used, rd->len - used);
			rd->len -= used;
			*line = rd->line;
			return 0;
		}
		if (rd->len + 4096 > rd->cap) {
			char *nb;

			if (rd->cap >= 64u * 1024 * 1024)
				return -E2BIG;
			nb = realloc(rd->buf, rd->cap + 65536);
			if (nb == NULL)
				return -ENOMEM;
			rd->buf = nb;
			rd->cap += 65536;
		}
		n = recv(rd->fd, rd->buf + rd->len, rd->cap - rd->len, 0);
		if (n > 0) {
			rd->len += (size_t)n;
			continue;
		}
		if (n == 0)
			return -ECONNRESET;
		if (errno != EAGAIN && errno != EINTR)
			return -errno;
		n = ctl_wait(rd->fd, POLLIN, deadline);
		if (n < 0)
			return (int)n;
	}
}

/* A worker's networks: only those with sessions waiting, with what the
 * waiting users were told (the operator's options). */
static void print_networks(struct json_object *nets)
{
	if (nets == NULL || !json_object_is_type(nets, json_type_array))
		return;
	for (size_t i = 0; i < json_object_array_length(nets); i++) {
		struct json_object *n = json_object_array_get_idx(nets, i);
		const char *advice = jstr(n, "advice", "");

		if (jint(n, "waiting") == 0)
			continue;
		printf("        network %s: %lld sessions, %lld connected, %lld waiting (%s)\n",
		       jstr(n, "network", "?"), (long long)jint(n, "sessions"),
		       (long long)jint(n, "connected"), (long long)jint(n, "waiting"),
		       jstr(n, "wait_reason", "?"));
		if (advice[0])
			printf("          %s\n", advice);
	}
}

/* Sessions whose network refused their SASL (a worker's sasl_failures). */
static void print_sasl_failures(struct json_object *w)
{
	struct json_object *fs;

	if (!json_object_object_get_ex(w, "sasl_failures", &fs) ||
	    !json_object_is_type(fs, json_type_array))
		return;
	for (size_t i = 0; i < json_object_array_length(fs); i++) {
		struct json_object *f = json_object_array_get_idx(fs, i);
		double next = jdbl(f, "next_attempt") - (double)time(NULL);

		printf("        SASL failed: %s/%s: %s", jstr(f, "user", "?"),
		       jstr(f, "network", "?"), jstr(f, "reason", "?"));
		if (jdbl(f, "next_attempt") > 0)
			printf(" (next attempt in %.0f s)", next > 0 ? next : 0);
		printf("\n");
	}
	if (jint(w, "sasl_failing") > (int64_t)json_object_array_length(fs))
		printf("        ... %lld sessions failing SASL in all\n",
		       (long long)jint(w, "sasl_failing"));
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
			       "        %lld sessions, %lld connections, %lld clients, %lld upstreams connected, %lld waiting for a connection slot, %lld TLS handshakes, loop lag %.1f ms\n",
			       (long long)jint(w, "pid"), jstr(w, "role", "?"),
			       jstr(w, "version", "?")[0] ? jstr(w, "version", "?") : "(starting)",
			       (long long)jint(w, "schema_min"),
			       (long long)jint(w, "schema_max"), jstr(w, "binary", "?"),
			       (long long)jint(w, "sessions"),
			       (long long)jint(w, "connections"),
			       (long long)jint(w, "clients"),
			       (long long)jint(w, "upstreams_connected"),
			       (long long)jint(w, "upstreams_waiting"),
			       (long long)jint(w, "tls_handshakes"),
			       jdbl(w, "loop_lag_ms"));
			if (json_object_object_get_ex(w, "networks", &v))
				print_networks(v);
			print_sasl_failures(w);
			/* the message store (sessiond/history.h) */
			struct json_object *so = jobj(w, "store");
			if (so && jobj(so, "unavailable"))
				printf("        store: %s UNAVAILABLE (%s): relaying live without history, retrying\n",
				       jstr(so, "backend", "?"), jstr(so, "unavailable", "?"));
			else if (so && strcmp(jstr(so, "backend", "off"), "off") != 0)
				printf("        store: %s, %lld lines appended, %lld queued, %lld refused (queue full), %lld paused sessions, %lld errors, %lld failed commits%s\n",
				       jstr(so, "backend", "?"), (long long)jint(so, "appended"),
				       (long long)jint(so, "queued"), (long long)jint(so, "refused_full"),
				       (long long)jint(so, "paused_sessions"), (long long)jint(so, "errors"),
				       (long long)jint(so, "commit_failures"),
				       json_object_get_boolean(jobj(so, "failing")) ? " (FAILING now)" : "");
			else if (so)
				printf("        store: off\n");
		}
	}
	if (json_object_object_get_ex(st, "migration_running", &v) &&
	    json_object_get_boolean(v))
		printf("migration: running\n");
	printf("crashes: %lld", (long long)jint(st, "crash_count"));
	if (crash) {
		time_t t = (time_t)jint(crash, "time");
		char when[64];

		strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", localtime(&t));
		printf(" (last: pid %lld %s at %s)", (long long)jint(crash, "pid"),
		       jstr(crash, "status", "?"), when);
	}
	printf("\n");
	{
		/* custody (issue 10): null when off */
		struct json_object *cu = jobj(st, "custody");

		if (cu != NULL && json_object_get_type(cu) == json_type_object) {
			struct json_object *q = NULL;
			size_t nq = json_object_object_get_ex(cu, "quarantined", &q) &&
					    json_object_get_type(q) == json_type_array
					    ? json_object_array_length(q) : 0;

			printf("custody: %lld sockets, %lld sessions, checkpoint %lld bytes (%lld ms old), %lld lines lost in crashes",
			       (long long)jint(cu, "fds"), (long long)jint(cu, "sessions"),
			       (long long)jint(cu, "checkpoint_bytes"),
			       (long long)jint(cu, "checkpoint_age_ms"),
			       (long long)jint(cu, "lines_lost"));
			for (size_t i = 0; i < nq; i++)
				printf("%s%s", i ? ", " : "; quarantined: ",
				       json_object_get_string(json_object_array_get_idx(q, i)));
			printf("\n");
		}
	}
	printf("previous binary: %s\n", jstr(st, "previous_binary", "none"));
	if (json_object_object_get_ex(st, "release", NULL))
		printf("release: %s (rollback goes to %s)\n", jstr(st, "release", "unknown"),
		       jstr(st, "rollback_target", "none"));
	if (jint(st, "auto_rollbacks") > 0) {
		struct json_object *ar = jobj(st, "last_auto_rollback");

		printf("automatic rollbacks: %lld (last: %s -> %s: %s)\n",
		       (long long)jint(st, "auto_rollbacks"), jstr(ar, "from", "?"),
		       jstr(ar, "to", "?"), jstr(ar, "reason", "?"));
	}
	if (mig)
		printf("last migration: %s %s%s%s\n", jstr(mig, "kind", "upgrade"),
		       jstr(mig, "result", "?"),
		       jstr(mig, "reason", "")[0] ? ": " : "",
		       jstr(mig, "reason", ""));
}

/* Who serves after an upgrade or rollback, and whether sessions were lost
 * (the "survivor" and "sessions_lost" of the result). */
static void print_outcome(FILE *f, struct json_object *r, bool refused)
{
	struct json_object *from = jobj(r, "from"), *to = jobj(r, "to"), *sv;
	int64_t pid;

	if (!json_object_object_get_ex(r, "survivor", &sv)) {
		/* A supervisor that does not say: do not guess. */
		fprintf(f, "  (which worker serves now: batonctl status)\n");
		return;
	}
	if (sv == NULL || !json_object_is_type(sv, json_type_object)) {
		fprintf(f, "  no worker serves now\n");
	} else {
		pid = jint(sv, "pid");
		if (pid > 0 && pid == jint(from, "pid"))
			fprintf(f, "  the old worker (pid %lld) keeps serving\n",
				(long long)pid);
		else if (pid > 0 && pid == jint(to, "pid"))
			fprintf(f, "  the new worker (pid %lld, version %s) serves now\n",
				(long long)pid, jstr(sv, "version", "?"));
		else
			fprintf(f, "  worker pid %lld (version %s, %s) serves now\n",
				(long long)pid, jstr(sv, "version", "?"),
				jstr(sv, "binary", "?"));
	}
	if (jbool(r, "sessions_lost") && jint(r, "sessions_lost_count") > 0)
		fprintf(f, "  %lld session(s) were lost: the serving worker starts them afresh (their users reconnect)\n",
			(long long)jint(r, "sessions_lost_count"));
	else if (jbool(r, "sessions_lost"))
		fprintf(f, "  sessions were lost: the serving worker starts them afresh (their users reconnect)\n");
	else if (!refused)
		fprintf(f, "  no sessions were lost\n");
}

/* Success means every session arrived: "committed" and nothing lost (an
 * older supervisor could say "committed" next to sessions_lost). */
static bool migration_succeeded(struct json_object *r)
{
	return strcmp(jstr(r, "result", ""), "committed") == 0 &&
	       !jbool(r, "sessions_lost");
}

/* Returns the exit status. */
/* A reload's result (supervisor/reload.h) or an edit refused before it:
 * exit 0 applied, 1 refused. With --json one line, plus "edit" (what
 * batonctl user/network changed in the file) when there was one. */
static int print_reload(struct json_object *r, const char *edit)
{
	static const char *const lists[] = { "added", "removed", "changed", "later" };
	bool applied = strcmp(jstr(r, "result", ""), "applied") == 0;
	struct json_object *a;

	if (r == NULL) {
		fprintf(stderr, "batonctl: out of memory\n");
		return EXIT_USAGE;
	}
	if (json_mode) {
		if (edit != NULL)
			json_object_object_add(r, "edit", json_object_new_string(edit));
		printf("%s\n", json_object_to_json_string_ext(r, JSON_C_TO_STRING_PLAIN |
							     JSON_C_TO_STRING_NOSLASHESCAPE));
		return applied ? EXIT_OK : EXIT_REFUSED;
	}
	if (applied) {
		printf("%s applied\n", jstr(r, "kind", "reload"));
		for (size_t k = 0; k < 4; k++) {
			a = NULL;
			if (!json_object_object_get_ex(r, lists[k], &a) ||
			    !json_object_is_type(a, json_type_array))
				continue;
			for (size_t i = 0; i < json_object_array_length(a); i++)
				printf("  %-8s %s\n", lists[k],
				       json_object_get_string(json_object_array_get_idx(a, i)));
		}
		return EXIT_OK;
	}
	printf("%s refused: %s\n", jstr(r, "kind", "reload"), jstr(r, "reason", "?"));
	if (json_object_object_get_ex(r, "problems", &a) &&
	    json_object_is_type(a, json_type_array))
		for (size_t i = 0; i < json_object_array_length(a); i++)
			printf("  %s\n", json_object_get_string(json_object_array_get_idx(a, i)));
	if (edit != NULL)
		printf("(the file was edited: %s; it applies at the next reload or upgrade)\n",
		       edit);
	return EXIT_REFUSED;
}

static int print_migration(const char *cmd, struct json_object *r)
{
	struct json_object *from = jobj(r, "from"), *to = jobj(r, "to");
	bool committed = migration_succeeded(r);
	bool refused = jbool(r, "refused");

	if (committed) {
		printf("%s committed: pid %lld (%s) -> pid %lld (%s)\n"
		       "  %lld sessions, %lld connections, %lld fds in %lld chunk(s); freeze %.1f ms, total %.1f ms\n",
		       cmd, (long long)jint(from, "pid"), jstr(from, "version", "?"),
		       (long long)jint(to, "pid"), jstr(to, "version", "?"),
		       (long long)jint(r, "sessions"), (long long)jint(r, "connections"),
		       (long long)jint(r, "fds"), (long long)jint(r, "chunks"),
		       jdbl(r, "freeze_ms"), jdbl(r, "total_ms"));
		if (jstr(r, "release_from", NULL) && jstr(r, "release_to", NULL) &&
		    strcmp(jstr(r, "release_from", ""), jstr(r, "release_to", "")) != 0)
			printf("  release %s -> %s\n", jstr(r, "release_from", ""),
			       jstr(r, "release_to", ""));
		if (jstr(r, "reason", "")[0])
			printf("  note: %s\n", jstr(r, "reason", ""));
		if (jint(jobj(r, "shrunk"), "sessions") > 0) {
			struct json_object *sh = jobj(r, "shrunk");

			printf("  %lld sessions were too big for one migration message and were shrunk: %lld backlog lines, %lld clients, %lld member lists dropped\n",
			       (long long)jint(sh, "sessions"), (long long)jint(sh, "backlog_lines"),
			       (long long)jint(sh, "clients"), (long long)jint(sh, "member_lists"));
		}
		/* Say it only when it is not the plain outcome. */
		{
			struct json_object *sv = jobj(r, "survivor");

			if (jbool(r, "sessions_lost") ||
			    (json_object_object_get_ex(r, "survivor", NULL) &&
			     (sv == NULL || jint(sv, "pid") != jint(to, "pid"))))
				print_outcome(stdout, r, false);
		}
		return EXIT_OK;
	}
	/* "partial": the new worker serves, but not every session arrived. */
	fprintf(stderr, "batonctl: %s %s: %s\n", cmd,
		refused ? "refused"
		: strcmp(jstr(r, "result", ""), "partial") == 0 ? "partial"
		: "aborted", jstr(r, "reason", "(no reason given)"));
	print_outcome(stderr, r, refused);
	if (!refused)
		fprintf(stderr, "  total %.1f ms\n", jdbl(r, "total_ms"));
	return EXIT_REFUSED;
}

/* A number option (0 < x <= max) into the request. */
/* The request being built: every failure to allocate a part of it is
 * noted here, and an incomplete request is never sent (json_builder.h). */
static struct jb req_jb = JB_INIT;

static int ctl_add_number(struct json_object *req, const char *key,
			  const char *text, double max)
{
	struct jb *jb = &req_jb;
	char *end;
	double v;

	errno = 0;
	v = strtod(text, &end);
	if (errno || end == text || *end || !(v >= 0) || v > max ||
	    (strcmp(key, "bake") != 0 && !(v > 0))) {
		fail("--%s: expected a number in %s%g], got '%s'", key,
		     strcmp(key, "bake") == 0 ? "[0, " : "(0, ", max, text);
		return -1;
	}
	jb_add(jb, req, key, jb_double(jb, v));
	return 0;
}

/* "a,b,c" into a JSON array (numbers: percentages). */
static int ctl_add_list(struct json_object *req, const char *key,
			const char *text, bool numbers)
{
	struct jb *jb = &req_jb;
	struct json_object *a = jb_arr(jb);
	char *copy = strdup(text), *save = NULL, *tok;

	if (copy == NULL || a == NULL) {
		free(copy);
		json_object_put(a);
		fail("out of memory");
		return -1;
	}
	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (numbers) {
			char *end;
			double v = strtod(tok, &end);

			if (end == tok || *end || !(v > 0) || v > 100) {
				fail("--%s: expected percentages in (0, 100], got '%s'", key, tok);
				free(copy);
				json_object_put(a);
				return -1;
			}
			jb_push(jb, a, jb_double(jb, v));
		} else {
			jb_push(jb, a, jb_str(jb, tok));
		}
	}
	free(copy);
	if (json_object_array_length(a) == 0) {
		fail("--%s: empty list", key);
		json_object_put(a);
		return -1;
	}
	jb_add(jb, req, key, a);
	return 0;
}

/* Exit status of a canary request: 0 for what was asked and happened. */
static int canary_exit(const char *action, struct json_object *r)
{
	const char *word = jstr(r, "result", "");

	/* An abort succeeded when the cohort is back on the old worker. */
	if (strcmp(action, "abort") == 0)
		return strcmp(word, "aborted") == 0 || strcmp(word, "rolled_back") == 0
			       ? EXIT_OK : EXIT_REFUSED;
	if (strcmp(word, "started") == 0 || strcmp(word, "baked") == 0 ||
	    strcmp(word, "grown") == 0 || strcmp(word, "promoted") == 0 ||
	    strcmp(word, "running") == 0 || strcmp(word, "none") == 0)
		return EXIT_OK;
	if (strcmp(word, "aborted") == 0 && strcmp(action, "abort") == 0)
		return EXIT_OK;
	return EXIT_REFUSED;
}

static int print_canary(struct json_object *r, const char *action)
{
	struct json_object *gates = jobj(r, "gates");
	const char *word = jstr(r, "result", "?");
	int rc = canary_exit(action, r);
	FILE *f = rc == EXIT_OK ? stdout : stderr;
	struct json_object *from = jobj(r, "from"), *to = jobj(r, "to");

	fprintf(f, "canary %s: %s", action, word);
	if (jstr(r, "gate", NULL))
		fprintf(f, " (gate %s)", jstr(r, "gate", ""));
	fprintf(f, "\n");
	if (jstr(r, "reason", "")[0])
		fprintf(f, "  reason: %s\n", jstr(r, "reason", ""));
	if (from != NULL)
		fprintf(f, "  old pid %lld (%s), new pid %lld (%s); cohort %lld sessions (%.2f %%), control %lld\n",
			(long long)jint(from, "pid"), jstr(from, "version", "?"),
			(long long)jint(to, "pid"), jstr(to, "version", "?"),
			(long long)jint(r, "cohort_sessions"), jdbl(r, "percent"),
			(long long)jint(r, "control_sessions"));
	if (from != NULL)
		fprintf(f, "  freeze %.1f ms, total %.1f ms, rollback %.1f ms, %lld disconnects\n",
			jdbl(r, "freeze_ms"), jdbl(r, "total_ms"), jdbl(r, "rollback_ms"),
			(long long)jint(r, "disconnects"));
	if (gates != NULL && json_object_is_type(gates, json_type_array)) {
		fprintf(f, "  %-32s %-8s %14s %14s %14s\n", "gate", "verdict", "cohort",
			"control", "threshold");
		for (size_t i = 0; i < json_object_array_length(gates); i++) {
			struct json_object *g = json_object_array_get_idx(gates, i);

			fprintf(f, "  %-32s %-8s %14.6g %14.6g %14.6g\n", jstr(g, "name", "?"),
				jstr(g, "verdict", "?"), jdbl(g, "cohort"),
				jdbl(g, "control"), jdbl(g, "threshold"));
		}
	}
	return rc;
}

static void print_time(const char *label, int64_t t)
{
	time_t tt = (time_t)t;
	char when[64];

	if (t <= 0)
		return;
	strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", localtime(&tt));
	printf(", %s %s", label, when);
}

/* `releases`: newest first, one paragraph each. */
static void print_releases(struct json_object *r)
{
	struct json_object *list;
	size_t n = 0;

	if (json_object_object_get_ex(r, "releases", &list) &&
	    json_object_is_type(list, json_type_array))
		n = json_object_array_length(list);
	printf("releases in %s (at most %lld kept on disk); serving %s, rollback goes to %s\n",
	       jstr(r, "file", "?"), (long long)jint(r, "kept"),
	       jstr(r, "serving", "none"), jstr(r, "rollback_target", "none"));
	if (jstr(r, "problem", NULL))
		printf("problem: %s\n", jstr(r, "problem", ""));
	if (n == 0)
		printf("no release recorded yet\n");
	for (size_t i = 0; i < n; i++) {
		struct json_object *e = json_object_array_get_idx(list, i);

		printf("%-20s %-9s %s\n", jstr(e, "version", "?"), jstr(e, "state", "?"),
		       jbool(e, "pruned") ? "(pruned: binary removed)"
					  : jstr(e, "binary", "?"));
		printf("    sha256 %.16s...", jstr(e, "sha256", "?"));
		print_time("installed", jint(e, "installed"));
		print_time("served", jint(e, "served"));
		print_time("retired", jint(e, "retired"));
		printf("\n");
		if (jstr(e, "source", "")[0])
			printf("    from %s\n", jstr(e, "source", ""));
		if (jstr(e, "reason", NULL))
			printf("    reason: %s\n", jstr(e, "reason", ""));
	}
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
		{ "timeout", required_argument, NULL, 't' },
		{ "percent", required_argument, NULL, 'P' },
		{ "users", required_argument, NULL, 'U' },
		{ "network", required_argument, NULL, 'N' },
		{ "bake", required_argument, NULL, 'B' },
		{ "canary", required_argument, NULL, 'C' },
		{ "steps", required_argument, NULL, 'S' },
		{ "force", no_argument, NULL, 'f' },
		{ "password-hash", required_argument, NULL, 'H' },
		{ "password-stdin", no_argument, NULL, 'I' },
		{ "purge", no_argument, NULL, 'G' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct config_problems problems = { 0 };
	struct baton_config *cfg = NULL;
	struct jb *jb = &req_jb;
	struct json_object *req = NULL, *resp = NULL, *result;
	const char *config_path = NULL, *socket_path = NULL, *cmd;
	char *control = NULL, *binary = NULL, *line = NULL, *end;
	struct ctl_reader rd = { .fd = -1 };
	bool progress_shown = false, tty = isatty(STDERR_FILENO), force = false;
	double timeout_s = 0, deadline;
	int c, r, rc = EXIT_USAGE;
	const char *reqtext;
	const char *opt_percent = NULL, *opt_users = NULL, *opt_network = NULL;
	const char *opt_bake = NULL, *opt_canary = NULL, *opt_steps = NULL;
	bool canary = false;
	struct ctl_users_opts uopts = { 0 };
	struct json_object *refusal = NULL;
	char edit_note[1024] = "";

	/* A supervisor that closes early must give an error, not kill us. */
	signal(SIGPIPE, SIG_IGN);
	while ((c = getopt_long(argc, argv, "c:s:h", opts, NULL)) != -1) {
		switch (c) {
		case 'c': config_path = optarg; break;
		case 's': socket_path = optarg; break;
		case 'j': json_mode = true; break;
		case 'f': force = true; break;
		case 'H': uopts.password_hash = optarg; break;
		case 'I': uopts.password_stdin = true; break;
		case 'G': uopts.purge = true; break;
		case 't':
			errno = 0;
			timeout_s = strtod(optarg, &end);
			if (errno != 0 || end == optarg || *end != '\0' ||
			    !(timeout_s > 0) || timeout_s > 1e7) {
				usage(stderr);
				return fail("--timeout: expected a number of seconds > 0, got '%s'",
					    optarg);
			}
			break;
		case 'P': opt_percent = optarg; break;
		case 'U': opt_users = optarg; break;
		case 'N': opt_network = optarg; break;
		case 'B': opt_bake = optarg; break;
		case 'C': opt_canary = optarg; break;
		case 'S': opt_steps = optarg; break;
		case 'V':
			printf("batonctl %s (state schema %d-%d)\n", BATON_VERSION,
			       BATON_SCHEMA_MIN, BATON_SCHEMA_MAX);
			return 0;
		case 'h': usage(stdout); return 0;
		default:
			usage(stderr);
			return fail("bad command line");
		}
	}
	if (optind >= argc || (config_path == NULL && socket_path == NULL)) {
		usage(stderr);
		return fail(optind >= argc ? "no command given"
					   : "need -c FILE or -s PATH");
	}
	cmd = argv[optind];
	req = jb_obj(jb);
	if (force && strcmp(cmd, "upgrade") != 0 && strcmp(cmd, "rollback") != 0 &&
	    strcmp(cmd, "upgrade-supervisor") != 0 &&
	    !(strcmp(cmd, "canary") == 0 && optind + 1 < argc &&
	      strcmp(argv[optind + 1], "start") == 0)) {
		usage(stderr);
		rc = fail("--force applies to upgrade, rollback, upgrade-supervisor and canary start only");
		goto out;
	}
	if (strcmp(cmd, "status") == 0 && optind + 1 == argc) {
		jb_add(jb, req, "cmd", jb_str(jb, "status"));
	} else if (strcmp(cmd, "releases") == 0 && optind + 1 == argc) {
		jb_add(jb, req, "cmd", jb_str(jb, "releases"));
	} else if (strcmp(cmd, "rollback") == 0 && optind + 1 == argc) {
		jb_add(jb, req, "cmd", jb_str(jb, "rollback"));
	} else if (strcmp(cmd, "upgrade") == 0 && optind + 2 == argc) {
		/* The supervisor runs elsewhere (cwd /): it needs a full path. */
		binary = realpath(argv[optind + 1], NULL);
		if (binary == NULL) {
			rc = fail("%s: %s", argv[optind + 1], strerror(errno));
			goto out;
		}
		jb_add(jb, req, "cmd", jb_str(jb, "upgrade"));
		jb_add(jb, req, "binary", jb_str(jb, binary));
		if (opt_canary != NULL) {
			canary = true;
			if (ctl_add_number(req, "canary", opt_canary, 100) < 0 ||
			    (opt_bake && ctl_add_number(req, "bake", opt_bake, 7 * 86400) < 0) ||
			    (opt_steps && ctl_add_list(req, "steps", opt_steps, true) < 0)) {
				usage(stderr);
				rc = EXIT_USAGE;
				goto out;
			}
		} else if (opt_steps || opt_bake) {
			usage(stderr);
			rc = fail("--bake and --steps go with --canary P");
			goto out;
		}
	} else if (strcmp(cmd, "upgrade-supervisor") == 0 && optind + 2 == argc) {
		binary = realpath(argv[optind + 1], NULL);
		if (binary == NULL) {
			rc = fail("%s: %s", argv[optind + 1], strerror(errno));
			goto out;
		}
		jb_add(jb, req, "cmd", jb_str(jb, "upgrade-supervisor"));
		jb_add(jb, req, "binary", jb_str(jb, binary));
	} else if (strcmp(cmd, "reload") == 0 && optind + 1 == argc) {
		jb_add(jb, req, "cmd", jb_str(jb, "reload"));
	} else if ((strcmp(cmd, "user") == 0 || strcmp(cmd, "network") == 0) &&
		   optind + 2 <= argc) {
		char err[1024] = "";

		if (config_path == NULL) {
			rc = fail("%s needs -c FILE (the config file it edits)", cmd);
			goto out;
		}
		uopts.json = json_mode;
		switch (ctl_users_run(config_path, cmd, argc - optind - 1, argv + optind + 1,
				      &uopts, edit_note, sizeof(edit_note), &refusal,
				      err, sizeof(err))) {
		case CTL_USERS_DONE:
			rc = EXIT_OK;
			goto out;
		case CTL_USERS_REFUSED:
			rc = print_reload(refusal, NULL);
			goto out;
		case CTL_USERS_ERROR:
			rc = fail("%s", err);
			goto out;
		case CTL_USERS_EDITED:
			break;
		}
		if (!json_mode)
			printf("%s: %s\n", config_path, edit_note);
		jb_add(jb, req, "cmd", jb_str(jb, "reload"));
	} else if (strcmp(cmd, "canary") == 0 && optind + 2 <= argc) {
		const char *action = argv[optind + 1];

		canary = true;
		jb_add(jb, req, "cmd", jb_str(jb, "canary"));
		jb_add(jb, req, "action", jb_str(jb, action));
		if (strcmp(action, "start") == 0 && optind + 3 == argc) {
			binary = realpath(argv[optind + 2], NULL);
			if (binary == NULL) {
				rc = fail("%s: %s", argv[optind + 2], strerror(errno));
				goto out;
			}
			jb_add(jb, req, "binary", jb_str(jb, binary));
			if ((!!opt_percent + !!opt_users + !!opt_network) != 1) {
				usage(stderr);
				rc = fail("canary start needs exactly one of --percent, --users, --network");
				goto out;
			}
			if ((opt_percent && ctl_add_number(req, "percent", opt_percent, 100) < 0) ||
			    (opt_users && ctl_add_list(req, "users", opt_users, false) < 0) ||
			    (opt_bake && ctl_add_number(req, "bake", opt_bake, 7 * 86400) < 0)) {
				usage(stderr);
				rc = EXIT_USAGE;
				goto out;
			}
			if (opt_network)
				jb_add(jb, req, "network", jb_str(jb, opt_network));
		} else if (strcmp(action, "grow") == 0 && optind + 2 == argc && opt_percent) {
			if (ctl_add_number(req, "percent", opt_percent, 100) < 0) {
				usage(stderr);
				rc = EXIT_USAGE;
				goto out;
			}
		} else if ((strcmp(action, "status") == 0 || strcmp(action, "promote") == 0 ||
			    strcmp(action, "abort") == 0) && optind + 2 == argc) {
			/* no arguments */
		} else {
			usage(stderr);
			rc = fail("canary: unknown action or wrong arguments: %s", action);
			goto out;
		}
	} else {
		usage(stderr);
		rc = fail("unknown command or wrong arguments: %s", cmd);
		goto out;
	}
	if (force)
		jb_add(jb, req, "force", jb_bool(jb, true));
	if (timeout_s == 0)
		timeout_s = strcmp(cmd, "status") == 0 || strcmp(cmd, "releases") == 0
			? TIMEOUT_STATUS_S
			: strcmp(jstr(req, "cmd", ""), "reload") == 0 ? TIMEOUT_RELOAD_S
			: TIMEOUT_MIGRATE_S;
	if (canary && timeout_s == TIMEOUT_MIGRATE_S) {
		/* Each step bakes; without --bake for [canary] bake's default
		 * (the config is not loaded yet). */
		double bake = opt_bake ? strtod(opt_bake, NULL) :
					 config_default_values()->canary_bake_s;
		int steps = 1;

		for (const char *p = opt_steps; p && *p; p++)
			steps += *p == ',';
		timeout_s += bake * (steps + 1);
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
				rc = fail("%s: cannot find the control socket (%zu config problem(s))",
					  config_path, problems.n);
				goto out;
			}
			fprintf(stderr, "batonctl: warning: %s has %zu problem(s) (baton-supervisor --check -c %s lists them); using control socket %s\n",
				config_path, problems.n, config_path, control);
		}
		if (control == NULL) {
			rc = fail("out of memory");
			goto out;
		}
		socket_path = control;
	}

	/* One deadline for connect + request + reply. */
	deadline = clock_mono_s() + timeout_s;
	rd.fd = ctl_connect(socket_path, deadline);
	if (rd.fd < 0) {
		r = rd.fd;
		rd.fd = -1;
		if (r == -ETIMEDOUT)
			rc = fail("cannot connect to control socket %s within %g s (--timeout): the supervisor is not accepting",
				  socket_path, timeout_s);
		else
			rc = fail("cannot connect to control socket %s: %s%s",
				  socket_path, strerror(-r),
				  r == -ENOENT || r == -ECONNREFUSED
					  ? " (is baton-supervisor running?)" : "");
		goto out;
	}
	reqtext = jb->oom ? NULL :
		json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
	if (reqtext == NULL) {
		rc = fail("out of memory: request not sent");
		goto out;
	}
	r = ctl_write_all(rd.fd, reqtext, strlen(reqtext), deadline);
	if (r == 0)
		r = ctl_write_all(rd.fd, "\n", 1, deadline);
	if (r < 0) {
		rc = r == -ETIMEDOUT
			? fail("cannot send the request to %s within %g s (--timeout)",
			       socket_path, timeout_s)
			: fail("cannot send to %s: %s", socket_path, strerror(-r));
		goto out;
	}

	for (;;) {
		struct json_object *p;

		r = ctl_read_line(&rd, deadline, &line);
		if (r < 0) {
			if (progress_shown)
				fprintf(stderr, "\r\033[K");
			if (r == -ETIMEDOUT)
				rc = fail("no result from %s within %g s (--timeout)%s",
					  socket_path, timeout_s,
					  strcmp(cmd, "status") == 0 ? ""
					  : "; the operation continues in the supervisor: see batonctl status");
			else
				rc = fail("%s closed the connection without a result%s%s",
					  socket_path, r == -ECONNRESET ? "" : ": ",
					  r == -ECONNRESET ? "" : strerror(-r));
			goto out;
		}
		json_object_put(resp);
		resp = json_tokener_parse(line);
		if (resp == NULL || !json_object_is_type(resp, json_type_object)) {
			rc = fail("malformed reply: %s", line);
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
		rc = fail("reply without a result: %s", line);
		goto out;
	}
	if (jstr(result, "error", NULL) != NULL) {
		rc = fail("supervisor: %s", jstr(result, "error", ""));
		goto out;
	}
	if (strcmp(jstr(result, "kind", ""), "reload") == 0) {
		/* --purge: once the sessions are gone from the worker */
		if (uopts.npurge > 0 && strcmp(jstr(result, "result", ""), "applied") == 0) {
			char perr[1024] = "";

			if (ctl_users_purge(config_path, &uopts, result, perr, sizeof(perr)) < 0) {
				(void)print_reload(result, edit_note[0] ? edit_note : NULL);
				rc = fail("%s", perr);
				goto out;
			}
		}
		rc = print_reload(result, edit_note[0] ? edit_note : NULL);
		goto out;
	}
	if (json_mode) {
		printf("%s\n", json_object_to_json_string_ext(result, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
		if (canary)
			rc = canary_exit(argv[optind + 1], result);
		else
			rc = strcmp(cmd, "status") == 0 || strcmp(cmd, "releases") == 0 ||
				     migration_succeeded(result) ||
				     strcmp(jstr(result, "result", ""), "unchanged") == 0
				     ? EXIT_OK : EXIT_REFUSED;
		goto out;
	}
	if (canary) {
		rc = print_canary(result, strcmp(cmd, "canary") == 0 ? argv[optind + 1] : "upgrade");
	} else if (strcmp(cmd, "upgrade-supervisor") == 0) {
		struct json_object *from = jobj(result, "from"), *to = jobj(result, "to");

		if (strcmp(jstr(result, "result", ""), "unchanged") == 0) {
			printf("supervisor unchanged: %s\n", jstr(result, "reason", "?"));
			rc = EXIT_OK;
		} else if (strcmp(jstr(result, "result", ""), "committed") == 0) {
			printf("supervisor re-executed: pid %lld, %s -> %s; worker pid %lld adopted\n",
			       (long long)jint(to, "pid"), jstr(from, "version", "?"),
			       jstr(to, "version", "?"), (long long)jint(result, "worker_pid"));
			rc = EXIT_OK;
		} else {
			printf("supervisor upgrade %s: %s\n", jstr(result, "result", "?"),
			       jstr(result, "reason", "?"));
			rc = EXIT_REFUSED;
		}
	} else if (strcmp(cmd, "status") == 0) {
		print_status(result);
		rc = EXIT_OK;
	} else if (strcmp(cmd, "releases") == 0) {
		print_releases(result);
		rc = EXIT_OK;
	} else {
		rc = print_migration(cmd, result);
	}
out:
	if (rd.fd >= 0)
		close(rd.fd);
	free(rd.buf);
	free(rd.line);
	json_object_put(req);
	json_object_put(resp);
	json_object_put(refusal);
	config_free(cfg);
	config_problems_clear(&problems);
	free(control);
	free(binary);
	return rc;
}
