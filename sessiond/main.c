/* baton-sessiond: a worker. Started by baton-supervisor with its control
 * socket on fd 3 (common/control.h); holds sessions (sessiond/bouncer.h) and
 * moves them in or out on the supervisor's command (sessiond/transfer.h).
 *
 *   baton-sessiond -c FILE --worker [--target]   (only the supervisor runs this)
 *   baton-sessiond -c FILE --check               validate config and environment
 *   baton-sessiond --version
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "baton_version.h"
#include "common/config.h"
#include "common/control.h"
#include "common/log.h"
#include "sessiond/bouncer.h"
#include "sessiond/fault.h"
#include "sessiond/history.h"
#include "sessiond/transfer.h"
#include "sessiond/state.h"
#include "sessiond/control_channel.h"

/* Preflight: everything this host must provide before we accept sessions.
 * Every problem is listed (the supervisor reports them all). */
static void sessiond_preflight(const struct baton_config *cfg,
			       struct config_problems *pr,
			       struct config_problems *warn, bool check)
{
	struct rlimit rl;
	char *state = NULL;
	char why[512], advice[320];

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		/* Take what we are allowed; in-flight fds of a migration count
		 * against the sender's limit too. */
		if (rl.rlim_cur < rl.rlim_max) {
			rl.rlim_cur = rl.rlim_max;
			setrlimit(RLIMIT_NOFILE, &rl);
			getrlimit(RLIMIT_NOFILE, &rl);
		}
		if (rl.rlim_cur < config_fds_needed(cfg))
			config_problems_add(pr, "%s: RLIMIT_NOFILE is %llu but %zu sessions need at least %llu open files (%s)",
					    cfg->path,
					    (unsigned long long)rl.rlim_cur,
					    cfg->nsessions,
					    (unsigned long long)config_fds_needed(cfg),
					    config_fds_advice(cfg, advice, sizeof(advice)));
	}
	/* Every session must always be able to migrate (state.h). */
	if (state_check_config(cfg, why, sizeof(why)) < 0)
		config_problems_add(pr, "%s: [sessiond] %s", cfg->path, why);
	state = config_resolve(cfg, cfg->state_dir);
	if (state != NULL) {
		if (mkdir(state, 0700) < 0 && errno != EEXIST)
			config_problems_add(pr, "%s: state_dir %s cannot be created: %s",
					    cfg->path, state, strerror(errno));
		else if (access(state, W_OK | X_OK) < 0)
			config_problems_add(pr, "%s: state_dir %s is not writable: %s",
					    cfg->path, state, strerror(errno));
	}
	free(state);
	/* --check opens the message store (a worker opens it right after,
	 * and says why it cannot). PostgreSQL that cannot be reached
	 * (store.h: EHOSTUNREACH) is a warning: a worker serves without
	 * history and retries (history.h), and --check runs as ExecStartPre,
	 * where a problem would keep baton from starting while the database
	 * host reboots. One that turns us away (authentication, a missing
	 * database) or a conninfo it cannot use will not mend by waiting: a
	 * problem. */
	int hr = check ? history_check(cfg, why, sizeof(why)) : 0;
	if (hr < 0) {
		/* one line each (libpq's messages span lines) */
		for (char *c = why; *c; c++)
			if (*c == '\n' || *c == '\t')
				*c = ' ';
		if (cfg->store_backend == CONFIG_STORE_POSTGRES && hr == -EHOSTUNREACH)
			config_problems_add(warn, "%s: warning: [sessiond] store: %s (workers serve without history until it can be opened, retrying with backoff)",
					    cfg->path, why);
		else
			config_problems_add(pr, "%s: [sessiond] store: %s", cfg->path, why);
	}
}

/* random() draws the reconnect jitter (session_backoff()) and fallback
 * nicks: unseeded, every worker would draw the same sequence, and sessions
 * of all workers that lost a network together would retry in lockstep.
 * getrandom() without blocking (entropy may not be ready early at boot);
 * then at least pid and time differ between workers. */
static void sessiond_seed_random(void)
{
	unsigned int seed;
	struct timespec ts;

	if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed)) {
		clock_gettime(CLOCK_MONOTONIC, &ts);
		seed = (unsigned int)getpid() ^ (unsigned int)ts.tv_nsec ^
		       (unsigned int)time(NULL);
	}
	srandom(seed);
}

static void sessiond_usage(FILE *out)
{
	fprintf(out,
		"usage: baton-sessiond -c FILE --check\n"
		"       baton-sessiond -c FILE --worker [--target]  (run by baton-supervisor)\n"
		"       baton-sessiond --version\n");
}

static void sessiond_on_signal(evutil_socket_t sig, short what, void *arg)
{
	log_info("sessiond", "signal %d: exiting", (int)sig);
	event_base_loopexit(arg, NULL);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "check", no_argument, NULL, 'k' },
		{ "worker", no_argument, NULL, 'w' },
		{ "target", no_argument, NULL, 't' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct config_problems pr = { 0 }, warn = { 0 };
	struct baton_config *cfg = NULL;
	struct event_base *base = NULL;
	struct event *sigterm = NULL, *sigint = NULL;
	struct bouncer *b = NULL;
	struct control_channel *w = NULL;
	const char *path = NULL;
	bool check = false, worker = false, target = false;
	struct stat st;
	int c, rc = 1;

	/* fault builds only: the fault is named by the program (fault.h) */
	if (FAULT_SELECT(argv[0]) < 0)
		return 2;
	while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
		switch (c) {
		case 'c': path = optarg; break;
		case 'k': check = true; break;
		case 'w': worker = true; break;
		case 't': target = true; break;
		case 'V':
			printf("baton-sessiond %s (state schema %d-%d)\n",
			       SESSIOND_VERSION, BATON_SCHEMA_MIN, BATON_SCHEMA_MAX);
			return 0;
		case 'h': sessiond_usage(stdout); return 0;
		default: sessiond_usage(stderr); return 2;
		}
	}
	if (path == NULL || optind != argc || (!check && !worker)) {
		sessiond_usage(stderr);
		return 2;
	}
	log_init("baton-sessiond", BATON_VERSION, LOG_LVL_INFO);

	if (config_load(path, &cfg, &pr) == 0)
		sessiond_preflight(cfg, &pr, &warn, check);
	if (check) {
		/* Warnings after the problems; baton-supervisor --check tells
		 * them apart by ": warning: " (check.c). */
		for (size_t i = 0; i < pr.n; i++)
			printf("%s\n", pr.msgs[i]);
		for (size_t i = 0; i < warn.n; i++)
			printf("%s\n", warn.msgs[i]);
		if (pr.n == 0)
			printf("ok\n");
		rc = pr.n == 0 ? 0 : 1;
		goto out;
	}

	if (fstat(CONTROL_FD, &st) < 0 || !S_ISSOCK(st.st_mode)) {
		fprintf(stderr, "baton-sessiond: --worker needs the supervisor's control socket on fd %d; run baton-supervisor instead\n",
			CONTROL_FD);
		rc = 2;
		goto out;
	}
	if (target && transfer_fault("target") != NULL &&
	    strcmp(transfer_fault("target"), "before-ready") == 0)
		raise(SIGKILL);
	if (target && transfer_fault("target") != NULL &&
	    strcmp(transfer_fault("target"), "hang-before-ready") == 0)
		for (;;)
			pause(); /* a target that hangs at start: until SIGKILL */
	if (control_channel_send_ready(CONTROL_FD, pr.msgs, pr.n) < 0 || pr.n > 0) {
		for (size_t i = 0; i < pr.n; i++)
			log_error("preflight", "%s", pr.msgs[i]);
		goto out;
	}

	signal(SIGPIPE, SIG_IGN);
	sessiond_seed_random();
	base = event_base_new();
	if (base == NULL)
		goto out;
	sigterm = evsignal_new(base, SIGTERM, sessiond_on_signal, base);
	sigint = evsignal_new(base, SIGINT, sessiond_on_signal, base);
	if (sigterm == NULL || sigint == NULL)
		goto out;
	event_add(sigterm, NULL);
	event_add(sigint, NULL);
	b = bouncer_new(base, cfg);
	if (b == NULL)
		goto out;
	if (cfg->store_backend != CONFIG_STORE_OFF) {
		char why[512];
		struct history *h = history_open(base, cfg, why, sizeof(why));

		if (h != NULL) {
			bouncer_set_history(b, h);
		} else {
			/* Serving without history beats serving nobody (a
			 * worker that exits here restarts into the same). */
			struct history_retry *r = history_retry_start(base, cfg, b, why);
			if (r == NULL)
				goto out;
			bouncer_set_history_retry(b, r);
		}
	}
	w = control_channel_new(base, CONTROL_FD, b, cfg);
	if (w == NULL)
		goto out;
	{
		char *state = config_resolve(cfg, cfg->state_dir);
		int err = state ? control_channel_rendezvous(w, state) : -ENOMEM;

		if (err < 0)
			log_warn("sessiond", "no rendezvous socket in %s (%s): if the "
				 "supervisor dies, no new one can adopt this worker",
				 state ? state : "state_dir", strerror(-err));
		free(state);
	}
	FAULT_READY(base);
	log_info("sessiond", "version %s ready (%s, %zu configured sessions)",
		 SESSIOND_VERSION, target ? "upgrade target" : "fresh start",
		 cfg->nsessions);
	event_base_dispatch(base);
	rc = 0;
	bouncer_quiesce(b); /* the last loop passes, with everything whole */
out:
	control_channel_free(w);
	bouncer_free(b);
	if (sigterm != NULL)
		event_free(sigterm);
	if (sigint != NULL)
		event_free(sigint);
	if (base != NULL)
		event_base_free(base);
	config_free(cfg);
	config_problems_clear(&pr);
	config_problems_clear(&warn);
	return rc;
}
