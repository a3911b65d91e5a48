/* supervisor/check.c: see check.h. */
#include "supervisor/check.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "common/config.h"
#include "common/json_builder.h"
#include "common/passhash.h"
#include "tls/handshake.h"
#include "supervisor/control_socket.h"
#include "supervisor/listeners.h"
#include "supervisor/metrics.h"
#include "supervisor/releases.h"

#define CHECK_SESSIOND_TIMEOUT_MS 30000

/* A warning goes to `warn` (check_main() prints it after the problems or
 * puts it in the JSON document), or straight to stdout when NULL. */
static void check_warn(struct config_problems *warn, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void check_warn(struct config_problems *warn, const char *fmt, ...)
{
	char msg[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (warn != NULL)
		config_problems_add(warn, "%s", msg);
	else
		printf("%s\n", msg);
}

static void check_bind_addresses(const struct baton_config *cfg,
				 struct config_problems *p);

static void check_rlimit(const struct baton_config *cfg,
			 struct config_problems *p)
{
	struct rlimit rl;
	unsigned long need = config_fds_needed(cfg);
	char advice[320];

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	/* The supervisor raises its soft limit to the hard one at startup and
	 * workers inherit it, so the hard limit is what counts. */
	if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need)
		config_problems_add(p, "check: RLIMIT_NOFILE hard limit %llu is below the %lu file descriptors %zu sessions need (%s; the hard limit: ulimit -Hn)",
				    (unsigned long long)rl.rlim_max, need,
				    cfg->nsessions, config_fds_advice(cfg, advice, sizeof(advice)));
}

static void check_dir_writable(const char *what, const char *dir,
			       struct config_problems *p)
{
	struct stat st;

	if (stat(dir, &st) < 0) {
		config_problems_add(p, "check: %s folder %s: %s", what, dir,
				    strerror(errno));
		return;
	}
	if (!S_ISDIR(st.st_mode)) {
		config_problems_add(p, "check: %s folder %s is not a folder", what, dir);
		return;
	}
	if (access(dir, W_OK | X_OK) < 0)
		config_problems_add(p, "check: %s folder %s is not writable: %s",
				    what, dir, strerror(errno));
}

static void check_control(const struct baton_config *cfg, const char *path,
			  struct config_problems *p)
{
	char *copy = strdup(path);
	struct sockaddr_un sa;

	if (copy == NULL)
		return;
	if (strlen(path) >= sizeof(sa.sun_path))
		config_problems_add(p, "check: control socket path is longer than %zu bytes: %s",
				    sizeof(sa.sun_path) - 1, path);
	check_dir_writable("control socket", dirname(copy), p);
	free(copy);
}

static void check_state_dir(const char *dir, struct config_problems *p)
{
	struct stat st;
	char *copy;

	if (stat(dir, &st) == 0) {
		check_dir_writable("state_dir", dir, p);
		return;
	}
	if (errno != ENOENT) {
		config_problems_add(p, "check: state_dir %s: %s", dir, strerror(errno));
		return;
	}
	/* Created at startup: its parent must allow that. */
	copy = strdup(dir);
	if (copy == NULL)
		return;
	check_dir_writable("state_dir's parent", dirname(copy), p);
	free(copy);
}

/* Is a supervisor answering on the control socket? Then the listeners are
 * busy because it holds them, which is not a problem of this host. A socket
 * that cannot be probed (e.g. EACCES: another user's) is a problem: the
 * supervisor would refuse to start on it. */
static int check_supervisor_running(const char *path, struct config_problems *p)
{
	struct sockaddr_un sa;
	int r;

	if (strlen(path) >= sizeof(sa.sun_path))
		return 0;
	r = control_socket_probe(path); /* non-blocking connect */
	if (r < 0) {
		config_problems_add(p, "check: control socket %s may be in use by a running supervisor (connect: %s); baton-supervisor would refuse to start",
				    path, strerror(-r));
		return 0;
	}
	return r;
}

static int check_has_problem(const struct config_problems *p, const char *msg)
{
	for (size_t i = 0; i < p->n; i++)
		if (strcmp(p->msgs[i], msg) == 0)
			return 1;
	return 0;
}

/* Whether a line of `sessiond --check -c config` is a warning: it says so
 * right after the config's name and line ("CONFIG: warning: ",
 * "CONFIG:12: warning: "); a problem that quotes ": warning: " elsewhere
 * (a path, a value) stays a problem. */
static bool check_sessiond_warning(const char *line, const char *config)
{
	size_t n = strlen(config);
	const char *p = line + n;

	if (strncmp(line, config, n) != 0)
		return false;
	if (p[0] == ':' && p[1] >= '0' && p[1] <= '9') {
		p++;
		while (*p >= '0' && *p <= '9')
			p++;
	}
	return strncmp(p, ": warning: ", 11) == 0;
}

/* Run `sessiond --check -c config`; its problem lines join ours (the ones
 * we found already, e.g. shared config problems, are not repeated), its
 * warning lines (": warning: ") our warnings. */
static void check_sessiond_run(const char *sessiond, const char *config,
			       struct config_problems *p,
			       struct config_problems *warn)
{
	int pipefd[2] = { -1, -1 };
	char *out = NULL;
	size_t len = 0, cap = 0;
	pid_t pid;
	int status = 0, lines = 0;
	struct timespec start, now;

	if (pipe2(pipefd, O_CLOEXEC) < 0) {
		config_problems_add(p, "check: pipe: %s", strerror(errno));
		return;
	}
	pid = fork();
	if (pid < 0) {
		config_problems_add(p, "check: fork: %s", strerror(errno));
		close(pipefd[0]);
		close(pipefd[1]);
		return;
	}
	if (pid == 0) {
		dup2(pipefd[1], STDOUT_FILENO);
		dup2(pipefd[1], STDERR_FILENO);
		signal(SIGPIPE, SIG_DFL);
		execl(sessiond, sessiond, "--check", "-c", config, (char *)NULL);
		fprintf(stderr, "exec %s: %s\n", sessiond, strerror(errno));
		_exit(127);
	}
	close(pipefd[1]);
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;) {
		struct pollfd pfd = { .fd = pipefd[0], .events = POLLIN };
		long waited;
		ssize_t n;

		clock_gettime(CLOCK_MONOTONIC, &now);
		waited = (now.tv_sec - start.tv_sec) * 1000 +
			 (now.tv_nsec - start.tv_nsec) / 1000000;
		if (waited >= CHECK_SESSIOND_TIMEOUT_MS ||
		    poll(&pfd, 1, (int)(CHECK_SESSIOND_TIMEOUT_MS - waited)) == 0) {
			kill(pid, SIGKILL);
			config_problems_add(p, "check: %s --check did not finish within %d s",
					    sessiond, CHECK_SESSIOND_TIMEOUT_MS / 1000);
			break;
		}
		if (len + 4096 + 1 > cap) {
			char *n2 = realloc(out, cap + 8192);

			if (n2 == NULL)
				break;
			out = n2;
			cap += 8192;
		}
		n = read(pipefd[0], out + len, cap - len - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	close(pipefd[0]);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (out != NULL) {
		char *save = NULL;

		out[len] = '\0';
		for (char *line = strtok_r(out, "\n", &save); line;
		     line = strtok_r(NULL, "\n", &save)) {
			if (strcmp(line, "ok") == 0 || line[0] == '\0')
				continue;
			if (check_sessiond_warning(line, config)) {
				if (!check_has_problem(warn, line))
					config_problems_add(warn, "%s", line);
				continue;
			}
			lines++;
			if (!check_has_problem(p, line))
				config_problems_add(p, "%s", line);
		}
	}
	if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0) && lines == 0)
		config_problems_add(p, "check: %s --check failed (%s %d) without saying why",
				    sessiond,
				    WIFEXITED(status) ? "exit status" : "signal",
				    WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
	free(out);
}

static void check_sessiond(const char *sessiond, const char *config,
			   struct config_problems *p,
			   struct config_problems *warn)
{
	struct stat st;

	if (stat(sessiond, &st) < 0) {
		config_problems_add(p, "check: sessiond binary %s: %s (set [supervisor] sessiond)",
				    sessiond, strerror(errno));
		return;
	}
	if (!S_ISREG(st.st_mode) || access(sessiond, X_OK) < 0) {
		config_problems_add(p, "check: sessiond binary %s is not an executable file",
				    sessiond);
		return;
	}
	check_sessiond_run(sessiond, config, p, warn);
}

static void check_metrics(const struct baton_config *cfg,
			  struct config_problems *p)
{
	char *copy, *host, *port, name[128], why[256];
	int fd;

	if (cfg->metrics == NULL)
		return;
	copy = strdup(cfg->metrics);
	if (copy == NULL)
		return;
	if (metrics_split_hostport(copy, &host, &port) == 0) {
		fd = listeners_bind_one(host, port, name, sizeof(name),
					why, sizeof(why));
		if (fd < 0)
			config_problems_add(p, "check: metrics %s", why);
		else
			close(fd);
	}
	free(copy);
}

/* A certificate file's first certificate must be valid now: an expired
 * (or not yet valid) one loads fine and fails every handshake. */
static void check_cert_dates(const struct baton_config *cfg, int line,
			     const char *what, const char *file,
			     struct config_problems *warn)
{
	FILE *f = fopen(file, "re");
	X509 *x = NULL;
	const ASN1_TIME *t = NULL;
	const char *why = NULL;
	struct tm tm;
	char when[64] = "?";

	if (f == NULL)
		return; /* config_load() reported it */
	x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	if (x == NULL)
		return; /* loading it as the workers do reported it */
	if (X509_cmp_current_time(X509_get0_notAfter(x)) < 0) {
		t = X509_get0_notAfter(x);
		why = "expired on";
	} else if (X509_cmp_current_time(X509_get0_notBefore(x)) > 0) {
		t = X509_get0_notBefore(x);
		why = "is not valid before";
	}
	if (why != NULL) {
		if (ASN1_TIME_to_tm(t, &tm) == 1)
			strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm);
		/* A warning, not a problem: --check runs as ExecStartPre, and
		 * an expired ircs certificate must not keep the plaintext
		 * listeners and every network connection down with it
		 * (OpenSSL serves it; clients that verify refuse it). */
		check_warn(warn, "%s:%d: warning: %s %s: certificate %s %s",
			   cfg->path, line, what, file, why, when);
	}
	X509_free(x);
}

/* Load every certificate, key and CA file the workers will use, as they
 * will: a key that does not match its certificate, a file that is not PEM,
 * a CA bundle that does not parse, a certificate out of its validity are
 * caught before an upgrade needs them. Each is reported at the line of the
 * key that names the file. */
static void check_tls(const struct baton_config *cfg, struct config_problems *p,
		      struct config_problems *warn)
{
	char err[256];
	SSL_CTX *ctx;

	if (cfg->listen_tls_cert != NULL) {
		ctx = tls_server_ctx_new(cfg->listen_tls_cert, cfg->listen_tls_key,
					 err, sizeof(err));
		if (ctx == NULL && cfg->listen_tls_key != NULL)
			config_problems_add(p, "%s:%d: [listen] tls_cert %s (tls_key %s, line %d): %s",
					    cfg->path, cfg->listen_tls_cert_line,
					    cfg->listen_tls_cert, cfg->listen_tls_key,
					    cfg->listen_tls_key_line, err);
		else if (ctx == NULL)
			config_problems_add(p, "%s:%d: [listen] tls_cert %s: %s",
					    cfg->path, cfg->listen_tls_cert_line,
					    cfg->listen_tls_cert, err);
		else
			check_cert_dates(cfg, cfg->listen_tls_cert_line,
					 "[listen] tls_cert", cfg->listen_tls_cert, warn);
		SSL_CTX_free(ctx);
	}
	for (size_t i = 0; i < cfg->nnetworks; i++) {
		const struct config_network *n = &cfg->networks[i];
		struct tls_client_options o = { .verify = n->tls_verify != 0,
						.ca_file = n->tls_ca };

		if (!n->tls)
			continue;
		ctx = tls_client_ctx_new(&o, err, sizeof(err));
		if (ctx == NULL)
			config_problems_add(p, "%s:%d: [network %s] TLS: %s", cfg->path,
					    n->tls_ca != NULL ? n->tls_ca_line : n->line,
					    n->name, err);
		SSL_CTX_free(ctx);
	}
	for (size_t i = 0; i < cfg->nsessions; i++) {
		const struct config_session *s = &cfg->sessions[i];
		const struct config_network *n = config_find_network(cfg, s->network);
		struct tls_client_options o = { .verify = false, .cert_file = s->tls_cert,
						.key_file = s->tls_key };
		char what[512];

		if (s->tls_cert == NULL || n == NULL)
			continue;
		snprintf(what, sizeof(what), "[user %s/%s] tls_cert", s->user,
			 s->network);
		ctx = tls_client_ctx_new(&o, err, sizeof(err));
		if (ctx == NULL && s->tls_key != NULL)
			config_problems_add(p, "%s:%d: %s %s (tls_key %s, line %d): %s",
					    cfg->path, s->tls_cert_line, what,
					    s->tls_cert, s->tls_key,
					    s->tls_key_line, err);
		else if (ctx == NULL)
			config_problems_add(p, "%s:%d: %s %s: %s", cfg->path,
					    s->tls_cert_line, what, s->tls_cert, err);
		else
			check_cert_dates(cfg, s->tls_cert_line, what, s->tls_cert, warn);
		SSL_CTX_free(ctx);
	}
}

/* Every [user] password must be a hash a login can match (passhash.h);
 * config_load() only refused what does not start with '$'. A legacy
 * method is a warning: logins work. */
static void check_passwords(const struct baton_config *cfg,
			    struct config_problems *p, struct config_problems *warn)
{
	char why[512];

	for (size_t i = 0; i < cfg->nusers; i++) {
		const struct config_user *u = &cfg->users[i];

		switch (passhash_check(u->password, why, sizeof(why))) {
		case PASSHASH_OK:
			break;
		case PASSHASH_LEGACY:
			check_warn(warn, "%s:%d: warning: [user %s] password %s", cfg->path,
				   u->password_line, u->name, why);
			break;
		case PASSHASH_BAD:
			config_problems_add(p, "%s:%d: [user %s] password %s",
					    cfg->path, u->password_line, u->name,
					    why);
			break;
		}
	}
}

/* SASL settings that work but expose the password (warnings: logins
 * work): PLAIN over a plaintext connection, and a password that others on
 * the host can read (in the config file or in sasl_password_file). */
static void check_sasl(const struct baton_config *cfg, struct config_problems *warn)
{
	struct stat st;

	for (size_t i = 0; i < cfg->nsessions; i++) {
		const struct config_session *s = &cfg->sessions[i];
		const struct config_network *n = config_find_network(cfg, s->network);

		if (s->sasl == NULL)
			continue;
		if (strcmp(s->sasl, "PLAIN") == 0 && n != NULL && !n->tls)
			check_warn(warn, "%s:%d: warning: [user %s/%s] sasl = plain over a plaintext connection: the password crosses the network in clear (tls = yes in [network %s], or sasl = scram-sha-256)",
			       cfg->path, s->sasl_line, s->user, s->network, s->network);
		if (s->sasl_password_file != NULL && stat(s->sasl_password_file, &st) == 0 &&
		    (st.st_mode & 077))
			check_warn(warn, "%s:%d: warning: [user %s/%s] sasl_password_file %s is readable by group or others (mode %03o): chmod 600",
			       cfg->path, s->sasl_password_file_line, s->user, s->network,
			       s->sasl_password_file, (unsigned)(st.st_mode & 0777));
		else if (s->sasl_password_file == NULL && s->sasl_password != NULL &&
			 stat(cfg->path, &st) == 0 && (st.st_mode & 077))
			check_warn(warn, "%s:%d: warning: [user %s/%s] sasl_password in a config file readable by group or others (mode %03o): chmod 600, or use sasl_password_file",
			       cfg->path, s->sasl_password_line, s->user, s->network,
			       (unsigned)(st.st_mode & 0777));
	}
}

void check_environment(const struct baton_config *cfg, const char *sessiond,
		       struct config_problems *problems,
		       struct config_problems *warnings)
{
	char *control = config_resolve(cfg, cfg->control);
	char *state = config_resolve(cfg, cfg->state_dir);
	int running = 0;

	check_rlimit(cfg, problems);
	check_passwords(cfg, problems, warnings);
	check_sasl(cfg, warnings);
	check_tls(cfg, problems, warnings);
	check_bind_addresses(cfg, problems);
	if (control) {
		check_control(cfg, control, problems);
		running = check_supervisor_running(control, problems);
	}
	if (state) {
		check_state_dir(state, problems);
		char note[2048];
		struct sockaddr_un sa;
		/* The workers' rendezvous sockets (sessiond/rendezvous.h),
		 * STATE_DIR/worker-PID.sock with PID up to pid_max 4194304. */
		size_t need = strlen(state) + strlen("/worker-4194304.sock");

		if (need >= sizeof(sa.sun_path))
			check_warn(warnings, "check: warning: state_dir %s is too long for the workers' rendezvous sockets (%s/worker-PID.sock: up to %zu bytes, at most %zu): after a supervisor crash no new supervisor could adopt the worker",
				   state, state, need, sizeof(sa.sun_path) - 1);

		/* A warning only: the supervisor rebuilds the history. */
		if (releases_check(state, (unsigned)cfg->canary_releases_kept,
				   note, sizeof(note)))
			check_warn(warnings, "check: warning: release history: %s (the supervisor rebuilds it at start)",
				   note);
	}
	check_sessiond(sessiond, cfg->path, problems, warnings);
	/* A running supervisor holds the listeners and the metrics port. */
	if (!running) {
		listeners_check(cfg, problems);
		check_metrics(cfg, problems);
	}
	free(control);
	free(state);
}

/* ---- how many sessions can connect ---- */

void check_network_capacity(const struct baton_config *cfg, size_t i,
			    struct check_capacity *out)
{
	const struct config_network *n = &cfg->networks[i];
	unsigned per_addr;

	memset(out, 0, sizeof(*out));
	out->network = n->name;
	out->line = n->line;
	/* As the worker builds its governor (governor_new(): no bind, one
	 * address the kernel chooses; bouncer.c passes these limits). */
	out->addresses = n->nbind ? (unsigned)n->nbind : 1;
	out->max_per_addr = n->max_connections_per_ip;
	out->connects_per_minute = n->connects_per_minute;
	out->connect_burst = n->connect_burst;
	for (size_t k = 0; k < cfg->nsessions; k++)
		if (strcmp(cfg->sessions[k].network, n->name) == 0)
			out->sessions++;
	if (n->max_connections_per_ip > 0) {
		unsigned long long cap = (unsigned long long)out->addresses *
					 (unsigned)n->max_connections_per_ip;
		out->capacity = cap > UINT_MAX ? UINT_MAX : (unsigned)cap;
	}
	out->can_connect = out->capacity && out->sessions > out->capacity ?
			   out->capacity : out->sessions;
	out->waiting = out->sessions - out->can_connect;
	/* After a (re)start every session is due at once: the governor
	 * spreads them over the pool, so the busiest address takes
	 * ceil(can_connect / addresses) connects, the first connect_burst at
	 * once, then one per 60 / connects_per_minute s. */
	per_addr = (out->can_connect + out->addresses - 1) / out->addresses;
	if (n->connects_per_minute > 0 && n->connect_burst >= 0 &&
	    per_addr > (unsigned)n->connect_burst)
		out->startup_s = (double)(per_addr - (unsigned)n->connect_burst) *
				 60.0 / n->connects_per_minute;
}

static void check_capacity_text(const struct check_capacity *c, char *buf,
				size_t len)
{
	if (c->capacity == 0)
		snprintf(buf, len, "check: network %s: %u session%s, all can connect at once (max_connections_per_ip: no limit; %u source address%s)",
			 c->network, c->sessions, c->sessions == 1 ? "" : "s",
			 c->addresses, c->addresses == 1 ? "" : "es");
	else
		snprintf(buf, len, "check: network %s: %u session%s, %u can connect at once (%u source address%s x max_connections_per_ip %d = %u)",
			 c->network, c->sessions, c->sessions == 1 ? "" : "s",
			 c->can_connect, c->addresses, c->addresses == 1 ? "" : "es",
			 c->max_per_addr, c->capacity);
	if (c->startup_s > 0) {
		size_t used = strlen(buf);

		snprintf(buf + used, len - used,
			 "; after a restart they are all connected within %.0f s (connects_per_minute %d, connect_burst %d)",
			 c->startup_s, c->connects_per_minute, c->connect_burst);
	}
}

/* Sessions beyond a network's capacity never connect while the others
 * stay: a warning (the config is valid, the users wait), with what the
 * operator can do about it. */
static void check_capacity(const struct baton_config *cfg,
			   struct check_capacity *caps,
			   struct config_problems *warnings)
{
	for (size_t i = 0; i < cfg->nnetworks; i++) {
		struct check_capacity *c = &caps[i];

		check_network_capacity(cfg, i, c);
		if (c->waiting == 0)
			continue;
		check_warn(warnings, "%s:%d: warning: [network %s] %u sessions but only %u can connect at once (%u source address%s x max_connections_per_ip %d): %u wait%s until a connection closes. Add source addresses (bind = ADDR ...) or, with an exemption from the network for more connections per address, raise max_connections_per_ip",
			   cfg->path, c->line, c->network, c->sessions,
			   c->capacity, c->addresses, c->addresses == 1 ? "" : "es",
			   c->max_per_addr, c->waiting, c->waiting == 1 ? "s" : "");
	}
}

/* Every `bind` address must be one this host has: a connect from any
 * other fails (EADDRNOTAVAIL) and its sessions never connect. Binding to
 * port 0 and closing again is what upstream.c does before connect(). */
static void check_bind_addresses(const struct baton_config *cfg,
				 struct config_problems *p)
{
	for (size_t i = 0; i < cfg->nnetworks; i++) {
		const struct config_network *n = &cfg->networks[i];

		for (size_t k = 0; k < n->nbind; k++) {
			struct sockaddr_storage ss;
			socklen_t len;
			int fd, family;

			memset(&ss, 0, sizeof(ss));
			if (inet_pton(AF_INET, n->bind[k],
				      &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
				family = AF_INET;
				len = sizeof(struct sockaddr_in);
			} else if (inet_pton(AF_INET6, n->bind[k],
					     &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
				family = AF_INET6;
				len = sizeof(struct sockaddr_in6);
			} else {
				continue; /* config_load() reported it */
			}
			ss.ss_family = (sa_family_t)family;
			fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
			if (fd < 0)
				continue;
			if (bind(fd, (struct sockaddr *)&ss, len) < 0)
				config_problems_add(p, "%s:%d: [network %s] bind %s: %s: no session can connect from it",
						    cfg->path, n->line, n->name,
						    n->bind[k], strerror(errno));
			close(fd);
		}
	}
}

static struct json_object *check_strings_json(struct jb *jb,
					      const struct config_problems *p)
{
	struct json_object *a = jb_arr(jb);

	for (size_t i = 0; p != NULL && i < p->n; i++)
		jb_push(jb, a, jb_str(jb, p->msgs[i]));
	return a;
}

static void check_print_json(const char *config_path,
			     const struct config_problems *problems,
			     const struct config_problems *warnings,
			     const struct check_capacity *caps, size_t ncaps)
{
	struct jb jb_ = JB_INIT, *jb = &jb_;
	struct json_object *o = jb_obj(jb);
	struct json_object *nets = jb_arr(jb);

	for (size_t i = 0; i < ncaps; i++) {
		const struct check_capacity *c = &caps[i];
		struct json_object *n = jb_obj(jb);

		jb_add(jb, n, "network", jb_str(jb, c->network));
		jb_add(jb, n, "line", jb_i64(jb, c->line));
		jb_add(jb, n, "sessions", jb_i64(jb, c->sessions));
		jb_add(jb, n, "addresses", jb_i64(jb, c->addresses));
		jb_add(jb, n, "max_connections_per_ip", jb_i64(jb, c->max_per_addr));
		jb_add(jb, n, "capacity", c->capacity ? jb_i64(jb, c->capacity) : NULL);
		jb_add(jb, n, "can_connect", jb_i64(jb, c->can_connect));
		jb_add(jb, n, "waiting", jb_i64(jb, c->waiting));
		jb_add(jb, n, "connects_per_minute", jb_i64(jb, c->connects_per_minute));
		jb_add(jb, n, "connect_burst", jb_i64(jb, c->connect_burst));
		jb_add(jb, n, "startup_s", jb_double(jb, c->startup_s));
		jb_push(jb, nets, n);
	}
	jb_add(jb, o, "config", jb_str(jb, config_path));
	jb_add(jb, o, "ok", jb_bool(jb, problems->n == 0 && problems->dropped == 0));
	jb_add(jb, o, "problems", check_strings_json(jb, problems));
	jb_add(jb, o, "warnings", check_strings_json(jb, warnings));
	jb_add(jb, o, "networks", nets);
	o = jb_done(jb, o);
	if (o == NULL) {
		printf("{\"ok\": false, \"problems\": [\"check: out of memory\"]}\n");
		return;
	}
	printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
						       JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
}

int check_main(const char *config_path, const struct baton_config *cfg,
	       const struct config_problems *load_problems,
	       const char *sessiond, bool json)
{
	struct config_problems problems = { 0 }, warnings = { 0 };
	struct check_capacity *caps = NULL;
	size_t ncaps = 0;
	int rc;

	for (size_t i = 0; load_problems != NULL && i < load_problems->n; i++)
		config_problems_add(&problems, "%s", load_problems->msgs[i]);
	if (load_problems != NULL)
		problems.dropped += load_problems->dropped;
	if (cfg != NULL) {
		check_environment(cfg, sessiond, &problems, &warnings);
		caps = cfg->nnetworks ? calloc(cfg->nnetworks, sizeof(*caps)) : NULL;
		if (caps != NULL) {
			ncaps = cfg->nnetworks;
			check_capacity(cfg, caps, &warnings);
		} else if (cfg->nnetworks) {
			config_problems_add(&problems, "check: out of memory");
		}
	}
	rc = problems.n || problems.dropped ? 1 : 0;
	if (json) {
		check_print_json(config_path, &problems, &warnings, caps, ncaps);
	} else {
		char line[1024];

		for (size_t i = 0; i < problems.n; i++)
			printf("%s\n", problems.msgs[i]);
		for (size_t i = 0; i < warnings.n; i++)
			printf("%s\n", warnings.msgs[i]);
		for (size_t i = 0; i < ncaps; i++) {
			check_capacity_text(&caps[i], line, sizeof(line));
			printf("%s\n", line);
		}
		if (rc == 0)
			printf("ok\n");
	}
	free(caps);
	config_problems_clear(&problems);
	config_problems_clear(&warnings);
	return rc;
}
