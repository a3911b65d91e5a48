/* supervisor/main.c: baton-supervisor. Parses the command line, validates
 * (--check), binds listeners and the control socket, starts the first
 * worker and runs the loop. Process table (docs/design.md §1):
 *
 *   event                   handler
 *   SIGCHLD                 supervisor_reap -> worker_reaped -> handler
 *   SIGTERM, SIGINT         supervisor_shutdown (EXIT workers, then leave);
 *                           under systemd's restart job, supervisor_leave
 *                           (the worker serves on, the next start adopts it)
 *   worker control socket   worker_process.c -> supervisor.c or migration.c
 *   control socket          control_socket.c -> supervisor_status/upgrade
 *   metrics HTTP            metrics.c -> exposition.c (+ metrics_set_extra)
 *   watchdog timer          sd_notify WATCHDOG=1 (sysd.h)
 *
 * Exits non-zero only at startup (bad config, unbindable sockets, a first
 * worker that never serves).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <systemd/sd-daemon.h>

#include "baton_version.h"
#include "common/config.h"
#include "common/log.h"
#include "supervisor/check.h"
#include "supervisor/control_socket.h"
#include "supervisor/listeners.h"
#include "supervisor/orphans.h"
#include "supervisor/metrics.h"
#include "supervisor/supervisor.h"
#include "supervisor/sysd.h"

struct main_ctx {
	struct event_base *base;
	struct supervisor *sup;
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: baton-supervisor -c FILE [--check [--json] [--no-bind-check]] [--debug]\n"
		"       baton-supervisor --version\n"
		"\n"
		"  -c, --config FILE  the baton INI file\n"
		"      --check        validate the config and this host, print every problem\n"
		"                     and how many sessions can connect to each network\n"
		"      --json         with --check: one JSON document\n"
		"      --no-bind-check  with --check: do not try to bind the [listen]\n"
		"                     addresses (systemd holds them: baton.socket, fd store)\n"
		"      --debug        log debug messages\n"
		"      --version      print the version and the state schema range\n");
}

/* [supervisor] sessiond, or baton-sessiond beside this binary (installed
 * layout), or ../sessiond/baton-sessiond (meson build tree). */
static char *main_sessiond_path(const struct baton_config *cfg)
{
	char exe[PATH_MAX], *dir, *path = NULL;
	ssize_t n;

	if (cfg->sessiond)
		return config_resolve(cfg, cfg->sessiond);
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n < 0)
		return strdup("baton-sessiond");
	exe[n] = '\0';
	dir = dirname(exe);
	if (asprintf(&path, "%s/baton-sessiond", dir) < 0)
		return NULL;
	if (access(path, X_OK) == 0)
		return path;
	free(path);
	if (asprintf(&path, "%s/../sessiond/baton-sessiond", dir) < 0)
		return NULL;
	if (access(path, X_OK) == 0) {
		char *real = realpath(path, NULL);

		if (real) {
			free(path);
			return real;
		}
		return path;
	}
	free(path);
	if (asprintf(&path, "%s/baton-sessiond", dir) < 0)
		return NULL;
	return path;
}

static void main_raise_nofile(void)
{
	struct rlimit rl;

	/* Workers inherit this; every session costs fds. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			log_warn("supervisor", "cannot raise RLIMIT_NOFILE: %s",
				 strerror(errno));
	}
}

/* The bus answers in milliseconds; a stop must not hang on it. */
#define MAIN_JOB_QUERY_USEC (2 * 1000 * 1000ULL)
/* After `systemctl restart` the new supervisor can start before the worker
 * the old one left has read the EOF of its control channel; until then it
 * refuses adoption (it still has a supervisor, as it sees it). */
#define MAIN_ORPHAN_WAIT_MS 1000

static void main_on_term(evutil_socket_t sig, short what, void *arg)
{
	struct main_ctx *ctx = arg;

	char why[512] = "";

	/* `systemctl restart` keeps every session: systemd's SIGTERM is the
	 * same as for a stop, its job is not (sysd.h). */
	if (sig == SIGTERM &&
	    sysd_term_query(MAIN_JOB_QUERY_USEC, why, sizeof(why)) == SYSD_TERM_RESTART) {
		log_info("supervisor", "%s: %s: restarting", strsignal((int)sig), why);
		supervisor_leave(ctx->sup);
		return;
	}
	if (why[0] == '\0' || sig != SIGTERM)
		log_info("supervisor", "%s: stopping", strsignal((int)sig));
	else
		log_info("supervisor", "%s: stopping (%s)", strsignal((int)sig), why);
	supervisor_shutdown(ctx->sup);
}

static void main_on_chld(evutil_socket_t sig, short what, void *arg)
{
	struct main_ctx *ctx = arg;

	supervisor_reap(ctx->sup);
}

/* SIGHUP: what `batonctl reload` does (supervisor/reload.h), with the
 * result in the log only. */
static void main_on_hup(evutil_socket_t sig, short what, void *arg)
{
	struct main_ctx *ctx = arg;

	log_info("supervisor", "SIGHUP: reloading the config file");
	supervisor_reload(ctx->sup, NULL, NULL);
}

static void main_on_watchdog(evutil_socket_t fd, short what, void *arg)
{
	char msg[SYSD_MSG_MAX];

	if (sysd_msg_watchdog(msg, sizeof(msg)) > 0)
		sysd_send(msg);
}

/* Log where the listeners came from (socket activation, fd store, bound). */
static void main_log_listeners(const struct listeners *l, int stored)
{
	static const char *const from[] = {
		[LISTENER_BOUND] = "bound",
		[LISTENER_FROM_SOCKET_UNIT] = "from baton.socket",
		[LISTENER_FROM_FD_STORE] = "from the systemd fd store",
		[LISTENER_FROM_ORPHAN] = "kept by the adopted worker",
	};

	for (size_t i = 0; i < listeners_count(l); i++)
		log_info("supervisor", "listener %s: %s", listeners_names(l)[i],
			 from[listeners_origin(l, i)]);
	if (stored > 0)
		log_info("supervisor", "%d listener(s) put in the systemd fd store (kept across a restart)",
			 stored);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "check", no_argument, NULL, 'C' },
		{ "json", no_argument, NULL, 'J' },
		{ "no-bind-check", no_argument, NULL, 'B' },
		{ "debug", no_argument, NULL, 'd' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct config_problems problems = { 0 };
	struct baton_config *cfg = NULL;
	struct listeners *listeners = NULL;
	struct sysd_fds passed = { 0 };
	struct control_socket *cs = NULL;
	struct metrics *metrics = NULL;
	struct main_ctx ctx = { 0 };
	struct event *ev_term = NULL, *ev_int = NULL, *ev_chld = NULL,
		     *ev_hup = NULL, *ev_watchdog = NULL;
	const char *config_path = NULL;
	char *sessiond = NULL, *control = NULL, *state = NULL, *metrics_addr = NULL;
	char err[512] = "";
	struct orphan orphan = { .ctl = -1, .pidfd = -1 };
	bool adopted = false;
	/* Set by the image we replaced (supervisor_reexec()): batonctl's
	 * connection to answer on, and who we were. */
	int reexec_fd = -1;
	pid_t reexec_pid = 0;
	char reexec_version[64] = "";
	int check = 0, json = 0, debug = 0, c, r, rc = 1, stored;
	uint64_t wd_usec = 0;

	while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
		switch (c) {
		case 'c': config_path = optarg; break;
		case 'C': check = 1; break;
		case 'J': json = 1; break;
		case 'B': listeners_check_skip_bind(); break;
		case 'd': debug = 1; break;
		case 'V':
			printf("baton-supervisor %s (state schema %d-%d)\n",
			       BATON_VERSION, BATON_SCHEMA_MIN, BATON_SCHEMA_MAX);
			return 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (config_path == NULL || optind != argc || (json && !check)) {
		usage(stderr);
		return 2;
	}
	log_init("baton-supervisor", BATON_VERSION,
		 debug ? LOG_LVL_DEBUG : LOG_LVL_INFO);
	{
		const char *rx = getenv(SUPERVISOR_REEXEC_ENV);
		int pid = 0;

		if (rx != NULL && sscanf(rx, "%d,%d,%63s", &reexec_fd, &pid, reexec_version) == 3 &&
		    reexec_fd > 2 && pid == (int)getpid() && fcntl(reexec_fd, F_GETFD) >= 0) {
			reexec_pid = pid;
			fcntl(reexec_fd, F_SETFD, FD_CLOEXEC);
			log_info("supervisor", "re-executed (was %s): adopting the worker", reexec_version);
		} else {
			reexec_fd = -1;
		}
		unsetenv(SUPERVISOR_REEXEC_ENV); /* workers must not see it */
	}
	/* Socket activation and the fd store: taken first, so that the
	 * variables are gone before anything can fork. */
	if (!check) {
		r = sysd_fds_take(&passed, err, sizeof(err));
		if (r < 0) {
			log_error("supervisor", "systemd fds: %s", err);
			goto out;
		}
		if (err[0])
			log_info("supervisor", "%s", err);
		err[0] = '\0';
	}

	if (config_load(config_path, &cfg, &problems) < 0) {
		if (check) {
			rc = check_main(config_path, NULL, &problems, NULL, json);
			goto out;
		}
		for (size_t i = 0; i < problems.n; i++)
			printf("%s\n", problems.msgs[i]);
		if (!check)
			log_error("supervisor", "%zu problem(s) in %s; not starting",
				  problems.n, config_path);
		goto out;
	}
	sessiond = main_sessiond_path(cfg);
	control = config_resolve(cfg, cfg->control);
	state = config_resolve(cfg, cfg->state_dir);
	if (sessiond == NULL || control == NULL || state == NULL) {
		log_error("supervisor", "out of memory");
		goto out;
	}
	if (check) {
		rc = check_main(config_path, cfg, NULL, sessiond, json);
		goto out;
	}

	signal(SIGPIPE, SIG_IGN);
	main_raise_nofile();
	if (mkdir(state, 0700) < 0 && errno != EEXIST) {
		log_error("supervisor", "state_dir %s: %s", state, strerror(errno));
		goto out;
	}
	ctx.base = event_base_new();
	if (ctx.base == NULL) {
		log_error("supervisor", "cannot create the event loop");
		goto out;
	}
	/* A worker our dead predecessor left serving is adopted with its
	 * listeners (orphans.h: they are the sockets systemd may also have
	 * passed us; those copies are closed unused). Otherwise the
	 * listeners come from systemd or are bound anew. */
	r = orphans_adopt(state, &orphan, reexec_fd >= 0 ? ORPHANS_TIMEOUT_MS : MAIN_ORPHAN_WAIT_MS);
	if (r == 2)
		goto out; /* orphans serve that cannot be adopted: logged, left serving */
	adopted = r == 1 &&
		  (listeners = listeners_adopt(orphan.listen_fds, orphan.listen_names,
					       orphan.nlisten)) != NULL;
	if (r == 1 && !adopted) {
		/* Out of memory with an orphan serving: a fresh worker beside
		 * it would connect every session a second time. */
		log_error("supervisor", "out of memory adopting worker pid %d: not starting "
			  "another beside it", (int)orphan.pid);
		goto out;
	}
	if (adopted) {
		orphan.listen_fds = NULL;
		orphan.listen_names = NULL;
		orphan.nlisten = 0;
		if (listeners_count(listeners) != cfg->nlistens)
			log_warn("supervisor", "the adopted worker serves %zu listener(s), the "
				 "config lists %zu: [listen] changes apply after a restart "
				 "without an orphan", listeners_count(listeners), cfg->nlistens);
	} else {
		r = listeners_open(cfg, &passed, &listeners, err, sizeof(err));
		if (r < 0) {
			log_error("supervisor", "%s", err);
			goto out;
		}
	}
	stored = listeners_store(listeners);
	main_log_listeners(listeners, stored);
	if (cfg->metrics && (metrics_addr = strdup(cfg->metrics)) == NULL) {
		log_error("supervisor", "out of memory");
		goto out;
	}
	ctx.sup = supervisor_new(ctx.base, cfg, listeners, sessiond);
	if (ctx.sup == NULL) {
		log_error("supervisor", "out of memory");
		goto out;
	}
	cfg = NULL;       /* transferred to the supervisor */
	listeners = NULL; /* transferred to the supervisor */

	cs = control_socket_new(ctx.base, ctx.sup, control, err, sizeof(err));
	if (cs == NULL) {
		log_error("control", "%s", err);
		goto out;
	}

	if (metrics_addr) {
		metrics = metrics_new(ctx.base, ctx.sup, metrics_addr, err, sizeof(err));
		if (metrics == NULL) {
			log_error("supervisor", "metrics %s: %s", metrics_addr, err);
			goto out;
		}
		log_info("supervisor", "metrics on http://%s/metrics", metrics_addr);
	}

	ev_term = evsignal_new(ctx.base, SIGTERM, main_on_term, &ctx);
	ev_int = evsignal_new(ctx.base, SIGINT, main_on_term, &ctx);
	ev_chld = evsignal_new(ctx.base, SIGCHLD, main_on_chld, &ctx);
	ev_hup = evsignal_new(ctx.base, SIGHUP, main_on_hup, &ctx);
	if (!ev_term || !ev_int || !ev_chld || !ev_hup ||
	    event_add(ev_term, NULL) < 0 || event_add(ev_int, NULL) < 0 ||
	    event_add(ev_chld, NULL) < 0 || event_add(ev_hup, NULL) < 0) {
		log_error("supervisor", "cannot install signal handlers");
		goto out;
	}
	if (sd_watchdog_enabled(0, &wd_usec) > 0 && wd_usec > 0) {
		uint64_t every = sysd_watchdog_interval_usec(wd_usec);
		struct timeval tv = { .tv_sec = (time_t)(every / 1000000),
				      .tv_usec = (suseconds_t)(every % 1000000) };

		ev_watchdog = event_new(ctx.base, -1, EV_PERSIST, main_on_watchdog, NULL);
		if (ev_watchdog)
			event_add(ev_watchdog, &tv);
		log_info("supervisor", "systemd watchdog: ping every %.1f s",
			 (double)every / 1e6);
	}

	log_info("supervisor", "baton-supervisor %s (pid %d), control %s, worker %s",
		 BATON_VERSION, (int)getpid(), control, sessiond);
	if (adopted) {
		r = supervisor_start_adopted(ctx.sup, &orphan);
		if (r < 0) {
			/* as above: never a second worker beside the orphan */
			log_error("supervisor", "cannot adopt worker pid %d: %s; not starting "
				  "another beside it", (int)orphan.pid, strerror(-r));
			goto out;
		}
	} else {
		r = supervisor_start(ctx.sup);
	}
	if (reexec_fd >= 0) {
		supervisor_reexec_report(ctx.sup, reexec_fd, reexec_pid, reexec_version,
					 adopted && r == 0);
		reexec_fd = -1;
	}
	if (r < 0) {
		log_error("supervisor", "cannot start %s: %s", sessiond, strerror(-r));
		goto out;
	}
	event_base_dispatch(ctx.base);
	rc = supervisor_exit_code(ctx.sup);
	log_info("supervisor", "exiting (%d)", rc);
out:
	if (ev_watchdog)
		event_free(ev_watchdog);
	if (ev_term)
		event_free(ev_term);
	if (ev_int)
		event_free(ev_int);
	if (ev_chld)
		event_free(ev_chld);
	if (ev_hup)
		event_free(ev_hup);
	metrics_free(metrics);
	control_socket_free(cs);
	supervisor_free(ctx.sup); /* SIGKILLs any worker still alive */
	listeners_free(listeners);
	orphan_clear(&orphan);
	if (reexec_fd >= 0)
		close(reexec_fd); /* batonctl learns only that it failed */
	sysd_fds_close_unused(&passed);
	config_free(cfg);
	if (ctx.base)
		event_base_free(ctx.base);
	config_problems_clear(&problems);
	free(sessiond);
	free(control);
	free(state);
	free(metrics_addr);
	return rc;
}
