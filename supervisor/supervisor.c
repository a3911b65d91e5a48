/* supervisor/supervisor.c: see supervisor.h.
 *
 * Worker handlers: the serving worker (and any worker that is only leaving)
 * has supervisor_on_worker as its handler; during a migration the migration
 * is the handler of S and T, and hands the survivor back when done.
 */
#include "supervisor/supervisor.h"
#include "common/clock.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <json-c/json.h>

#include "baton_version.h"
#include "common/config.h"
#include "common/json_builder.h"
#include "common/log.h"
#include "supervisor/canary.h"
#include "supervisor/check.h"
#include "supervisor/exposition.h"
#include "supervisor/listeners.h"
#include "supervisor/metrics.h"
#include "supervisor/migration.h"
#include "supervisor/releases.h"
#include "supervisor/reload.h"
#include "supervisor/sysd.h"
#include "supervisor/user_edit.h"
#include "supervisor/worker_process.h"
#include "supervisor/custody.h"
#include "common/strmap.h"
#include <sys/socket.h>

#define STATUS_TIMEOUT_MS 1000
#define RESTART_BACKOFF_MIN_MS 500
#define RESTART_BACKOFF_MAX_MS 30000
#define STABLE_AFTER_S 30.0  /* a worker up this long resets the backoff */
/* A crash loop with custody: a crash not caused by input (no poison pill
 * to quarantine, e.g. a bug in a restored state) would restart at once
 * forever. After CUSTODY_LOOP_MAX workers in a row died within
 * CUSTODY_LOOP_WINDOW_S of their start, the restart (and the restore from
 * custody, which still holds the sockets) waits for the normal backoff. */
#define CUSTODY_LOOP_WINDOW_S 10.0
#define CUSTODY_LOOP_MAX 3
#define REFRESH_INTERVAL_S 10 /* status poll for sd_notify STATUS and metrics */

struct status_req;

struct supervisor {
	/* custody (custody.h): a dead worker's sockets and checkpoint, held
	 * until the next worker is READY; the restore into it; crash
	 * implications per session (poison pills) */
	struct custody *restore_held;
	struct custody_restore *restore;
	struct custody_result restore_res;
	bool restore_handed;
	struct strmap *strikes;
	uint64_t custody_lines_lost;
	uint64_t custody_restores;
	char **quarantined;
	size_t nquarantined;
	struct event_base *base;
	struct baton_config *cfg;
	struct listeners *listeners;
	char *sessiond;
	char *config_path;

	struct worker **workers; /* every child not yet reaped */
	size_t nworkers;
	struct worker *active;   /* serving (or starting to); NULL while restarting */
	char *serving_binary;    /* what a restart after a crash starts */
	bool active_serving;     /* READY, LISTENERS and ACCEPT on sent */
	bool ever_served;        /* sd_notify READY=1 sent */
	bool reloading;          /* RELOADING=1 sent; READY=1 ends it */
	bool stopping;
	bool leaving;            /* supervisor_leave(): workers are not killed */
	int exit_code;

	struct event *ev_restart;
	/* worker_watchdog_ms: when the pending status request to the serving
	 * worker went out (0: none pending), and the pid it killed */
	struct event *ev_watchdog;
	int64_t wd_asked_ms;
	pid_t wd_killed;
	/* READY deadline of a starting (non-target) active worker: one that
	 * hangs before READY is stopped, and the exit path restarts it. */
	struct event *ev_ready;
	unsigned restart_failures; /* consecutive, for the backoff */
	unsigned quick_crashes;    /* in a row, within CUSTODY_LOOP_WINDOW_S */
	struct event *ev_stop;     /* backstop during shutdown */
	struct event *ev_refresh;

	unsigned crashes;
	struct json_object *last_crash;     /* owned, NULL if none */
	/* The last SUPERVISOR_CRASH_LOG crashes, oldest first (owned array;
	 * status `crashes`); restore_ms of the newest is filled in when the
	 * next worker serves (crash_pending, crash_mono_ms). */
	struct json_object *crash_log;
	bool crash_pending;
	int64_t crash_mono_ms;
	char *previous_binary;
	struct json_object *last_migration; /* owned */
	unsigned migrations_committed, migrations_aborted, migrations_refused;
	double last_freeze_ms, last_total_ms;
	bool have_last_migration;
	struct expo_hist freeze_hist; /* seconds, metrics */

	struct migration *migration;
	supervisor_reply_cb mig_cb;
	void *mig_arg;
	const char *mig_kind; /* "upgrade" or "rollback" (static string) */

	struct status_req *status_reqs;
	struct reload_req *reloads; /* reload.h: RELOADs the worker has not answered */

	/* A canary (canary.h): the handler of both workers while it runs;
	 * active stays the old worker until it ends. */
	struct canary *canary;
	struct json_object *last_canary; /* owned: the last finished one */
	unsigned canaries_promoted, canaries_rolled_back, canaries_aborted,
		 canaries_refused;
	/* Releases on disk and their history (releases.h); NULL only when
	 * out of memory at start (then rollback uses previous_binary). */
	struct releases *releases;
	unsigned auto_rollbacks;
	struct json_object *last_auto_rollback; /* owned, NULL if none */
	/* An automatic rollback whose worker has not reached READY yet: the
	 * release it goes to and the binary of the one that crashed (owned),
	 * served again if the rollback's worker exits before READY (an older
	 * release that rejects the current config, a binary gone). */
	bool ar_trying;
	char ar_to_version[RELEASE_VERSION_MAX];
	char *ar_fallback_binary;
	/* A release whose worker could not start as an automatic rollback
	 * target: not tried again until a migration commits or the config is
	 * reloaded ("" none). */
	char ar_unstartable[RELEASE_VERSION_MAX];
	/* The upgrade or rollback being run: --force, the sha256 of its
	 * binary, and the releases it goes from and to ("" unknown). */
	bool mig_force;
	/* A supervisor re-exec waiting for its `BIN --version` probe (owned;
	 * at most one). */
	struct reexec *reexec;
	char mig_sha[RELEASE_SHA256_HEX];
	char mig_release_from[RELEASE_VERSION_MAX];
	char mig_release_to[RELEASE_VERSION_MAX];
};

struct status_req {
	struct supervisor *sup;
	supervisor_reply_cb cb;
	void *arg;
	struct worker **asked; /* NULLed when answered or exited */
	size_t nasked, pending;
	struct event *ev_timeout;
	struct status_req *next;
};

static void supervisor_on_worker(struct worker *w, enum worker_event ev,
				 const void *msg, void *arg);
static void supervisor_canary_metrics(struct evbuffer *out, void *arg);
static void supervisor_schedule_restart(struct supervisor *sup);
static void supervisor_on_watchdog(evutil_socket_t fd, short what, void *arg);
static struct json_object *migration_result_json(const struct migration_result *r,
						 const char *kind,
						 struct worker *survivor);
static void supervisor_reply_result(supervisor_reply_cb cb, void *arg,
				    struct json_object *result);
static void supervisor_migrate(struct supervisor *sup, const char *binary,
			       const char *kind, bool force,
			       supervisor_reply_cb cb, void *arg);
static void supervisor_set_serving_binary(struct supervisor *sup,
					  const char *binary);


/* --- registry ----------------------------------------------------------- */

static int supervisor_register(struct supervisor *sup, struct worker *w)
{
	struct worker **nw = realloc(sup->workers,
				     (sup->nworkers + 1) * sizeof(*nw));

	if (nw == NULL)
		return -ENOMEM;
	sup->workers = nw;
	sup->workers[sup->nworkers++] = w;
	return 0;
}

/* What a worker starting (or adopted) now has loaded: the file as it is
 * (a write between this and the worker's own read is not seen). */
static void supervisor_note_config(struct supervisor *sup, struct worker *w)
{
	char sha[RELEASE_SHA256_HEX], err[300];

	if (releases_sha256_file(sup->config_path, sha, err, sizeof(err)) < 0)
		sha[0] = '\0'; /* unknown: users' edits wait for a reload */
	worker_set_config_sha(w, sha);
}

static struct worker *supervisor_spawn(struct supervisor *sup,
				       const char *binary, bool target, int *err)
{
	struct worker *w = worker_spawn(sup->base, binary, sup->config_path,
					target, sup->cfg->handoff_timeout_s, err);

	if (w == NULL)
		return NULL;
	if (supervisor_register(sup, w) < 0) {
		/* Cannot track it: make sure it does not outlive us. */
		worker_kill(w);
		worker_free(w);
		*err = -ENOMEM;
		return NULL;
	}
	worker_set_handler(w, supervisor_on_worker, sup);
	supervisor_note_config(sup, w);
	if (!target) {
		/* A target's READY deadline is the migration's. */
		struct timeval tv = { .tv_sec = sup->cfg->handoff_timeout_s > 0
						? sup->cfg->handoff_timeout_s : 1 };

		evtimer_del(sup->ev_ready);
		evtimer_add(sup->ev_ready, &tv);
	}
	return w;
}

static void supervisor_on_ready_timeout(evutil_socket_t fd, short what,
					void *arg)
{
	struct supervisor *sup = arg;
	struct worker *w = sup->active;

	if (w == NULL || worker_is_ready(w) || worker_has_exited(w))
		return;
	log_error("supervisor", "worker pid %d (%s) not READY after %d s: killing it",
		  (int)worker_pid(w), worker_binary(w),
		  sup->cfg->handoff_timeout_s);
	/* Its exit restarts it with backoff (or ends a first start). It did
	 * not answer in handoff_timeout: SIGKILL now, not after another one. */
	worker_kill(w);
}

static void supervisor_status_text(struct supervisor *sup, char *buf,
				   size_t len)
{
	const Baton__Control__Status *st;

	if (sup->active == NULL || !sup->active_serving) {
		snprintf(buf, len, "%s", sup->stopping ? "stopping"
					: "no serving worker (restarting)");
		return;
	}
	st = worker_last_status(sup->active);
	snprintf(buf, len, "worker pid %d (%s): %u sessions, %u connections%s",
		 (int)worker_pid(sup->active), worker_version(sup->active),
		 st->sessions, st->connections,
		 sup->migration ? ", migration running" : "");
}

static void supervisor_notify_status(struct supervisor *sup)
{
	char text[256], msg[SYSD_MSG_MAX];

	supervisor_status_text(sup, text, sizeof(text));
	if (sysd_msg_status(msg, sizeof(msg), text) > 0)
		sysd_send(msg);
}

/* systemd's reload protocol around a migration (upgrade or rollback, which
 * `systemctl reload` runs): RELOADING=1 with MONOTONIC_USEC when it starts,
 * READY=1 when it ends either way, each with the STATUS line. */
static void supervisor_notify_reloading(struct supervisor *sup,
					const char *kind, const char *binary)
{
	char text[512];

	/* bounded well below SYSD_MSG_MAX: a long path must not lose the message */
	snprintf(text, sizeof(text), "%s to %.400s running", kind, binary);
	sup->reloading = true;
	sysd_send_reloading(text);
}

static void supervisor_notify_reloaded(struct supervisor *sup)
{
	char text[256];

	if (!sup->reloading)
		return;
	sup->reloading = false;
	supervisor_status_text(sup, text, sizeof(text));
	sysd_send_ready(text);
}

/* Worker i is gone: tell its handler (worker_reaped*() emit WORKER_EXITED)
 * and free it. st: its wait status; -1: an adopted worker's (unknown). */
static void supervisor_worker_gone(struct supervisor *sup, size_t i, int st)
{
	struct worker *w = sup->workers[i];

	sup->workers[i] = sup->workers[--sup->nworkers];
	/* The handler drops its pointer in WORKER_EXITED. */
	if (st == -1)
		worker_reaped_adopted(w);
	else
		worker_reaped(w, st);
	/* During a canary the canary is the handler: the old worker
	 * may leave (promote) before the canary hands active back. */
	if (sup->canary != NULL && w == sup->active) {
		sup->active = NULL;
		sup->active_serving = false;
	}
	worker_free(w);
}

void supervisor_reap(struct supervisor *sup)
{
	int st;
	pid_t pid;

	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		size_t i;

		for (i = 0; i < sup->nworkers; i++)
			if (worker_pid(sup->workers[i]) == pid)
				break;
		if (i == sup->nworkers) {
			log_debug("supervisor", "reaped unknown child %d", (int)pid);
			continue;
		}
		supervisor_worker_gone(sup, i, st);
	}
	if (sup->stopping && sup->nworkers == 0)
		event_base_loopexit(sup->base, NULL);
}

static void supervisor_adopted_exit(void *arg, struct worker *w)
{
	struct supervisor *sup = arg;

	for (size_t i = 0; i < sup->nworkers; i++)
		if (sup->workers[i] == w) {
			supervisor_worker_gone(sup, i, -1);
			break;
		}
	if (sup->stopping && sup->nworkers == 0)
		event_base_loopexit(sup->base, NULL);
}

/* --- releases (releases.h) ------------------------------------------------ */

/* A worker started outside a migration (the first one, a restart) serves:
 * its binary is installed as a release if it is not yet, and a restart
 * after a crash starts that installed copy. */
static void supervisor_release_serving(struct supervisor *sup, struct worker *w)
{
	const struct release *r;
	char sha[RELEASE_SHA256_HEX], why[512];

	if (sup->releases == NULL)
		return;
	if (releases_sha256_file(worker_binary(w), sha, why, sizeof(why)) < 0 ||
	    releases_install(sup->releases, worker_version(w), worker_binary(w),
			     sha, why, sizeof(why)) < 0) {
		log_error("releases", "worker pid %d (%s): not recorded as a release: %s",
			  (int)worker_pid(w), worker_version(w), why);
		return;
	}
	r = releases_set_serving(sup->releases, worker_version(w),
				 RELEASE_LEFT_BY_RESTART);
	if (r != NULL && !r->pruned)
		supervisor_set_serving_binary(sup, r->binary);
	releases_took_over(sup->releases, NULL, 0);
}

/* A migration made `survivor` (the target) the serving worker. */
static void supervisor_release_migrated(struct supervisor *sup,
					const struct migration_result *res,
					struct worker *survivor)
{
	bool rollback = strcmp(sup->mig_kind, "rollback") == 0;
	const char *v = worker_version(survivor);
	const struct release *r;

	if (sup->releases == NULL)
		return;
	r = releases_set_serving(sup->releases, v, rollback
				 ? RELEASE_LEFT_BY_ROLLBACK : RELEASE_LEFT_BY_UPGRADE);
	if (r == NULL) {
		log_warn("releases", "release %s is not installed: a crash restarts %s",
			 v, worker_binary(survivor));
		return;
	}
	if (!r->pruned)
		supervisor_set_serving_binary(sup, r->binary);
	/* An upgrade to another release opens the rollback window, a rollback
	 * closes it, one to the same release (config) leaves it as it is. */
	if (rollback)
		releases_took_over(sup->releases, NULL, 0);
	else if (strcmp(res->from.version, v) != 0)
		releases_took_over(sup->releases, v, clock_mono_s());
}

/* Item 7: the serving worker crashed. If an upgrade made its release the
 * serving one less than rollback_window ago, the release is marked bad
 * and the restart starts the previous good release instead. */
static void supervisor_auto_rollback(struct supervisor *sup, struct worker *w)
{
	const struct release *to;
	struct json_object *o;
	char reason[512];

	if (sup->releases == NULL)
		return;
	snprintf(reason, sizeof(reason), "worker pid %d crashed %.1f s after it started (%s), within rollback_window (%d s) of the upgrade to it",
		 (int)worker_pid(w), worker_uptime_s(w), worker_exit_status(w),
		 sup->cfg->canary_rollback_window_s);
	to = releases_rollback_target(sup->releases, false, NULL, 0);
	if (to != NULL && sup->ar_unstartable[0] &&
	    strcmp(to->version, sup->ar_unstartable) == 0) {
		/* It failed to start a moment ago: trying it again would leave
		 * every user without a worker for good. */
		log_error("supervisor", "no automatic rollback after worker pid %d crashed: release %s, the rollback target, did not start with the current configuration; restarting %s",
			  (int)worker_pid(w), to->version, worker_version(w));
		return;
	}
	to = releases_on_crash(sup->releases, worker_version(w),
			       clock_mono_s(),
			       sup->cfg->canary_rollback_window_s, reason);
	if (to == NULL)
		return;
	free(sup->ar_fallback_binary);
	sup->ar_fallback_binary = strdup(worker_binary(w));
	sup->ar_trying = sup->ar_fallback_binary != NULL;
	snprintf(sup->ar_to_version, sizeof(sup->ar_to_version), "%s", to->version);
	log_error("supervisor", "automatic rollback: release %s failed after taking over (%s): restarting with release %s (%s)",
		  worker_version(w), reason, to->version, to->binary);
	sup->auto_rollbacks++;
	struct jb jb_ = JB_INIT, *jb = &jb_;
	o = jb_obj(jb);
	jb_add(jb, o, "from", jb_str(jb, worker_version(w)));
	jb_add(jb, o, "to", jb_str(jb, to->version));
	jb_add(jb, o, "reason", jb_str(jb, reason));
	jb_add(jb, o, "time", jb_i64(jb, (int64_t)time(NULL)));
	json_object_put(sup->last_auto_rollback);
	sup->last_auto_rollback = jb_done(jb, o);
	if (sup->last_auto_rollback == NULL)
		log_error("supervisor", "out of memory: the automatic rollback not kept for status");
	supervisor_set_serving_binary(sup, to->binary);
	sup->restart_failures = 0;
}

/* The worker an automatic rollback started exited without serving (before
 * READY or after a failed preflight): the release it went to cannot run
 * here now (typically an older release that
 * rejects a config key added since, or its binary is gone). Serving nobody
 * is worse than serving the release that crashed, so that one is restarted
 * and the target is not tried again (ar_unstartable). 1 when it was such a
 * worker (the restart is set up), else 0. */
static int supervisor_auto_rollback_failed(struct supervisor *sup,
					   struct worker *w)
{
	char reason[512];

	if (!sup->ar_trying) /* cleared when a worker serves */
		return 0;
	sup->ar_trying = false;
	snprintf(sup->ar_unstartable, sizeof(sup->ar_unstartable), "%s",
		 sup->ar_to_version);
	snprintf(reason, sizeof(reason), "its worker pid %d %s (%s)",
		 (int)worker_pid(w), worker_is_ready(w) ? "failed its preflight"
		 : "exited before READY", worker_exit_status(w));
	log_error("supervisor", "automatic rollback to release %s failed: %s; it may reject the current config (`%s --check -c %s` says) or fail to load; serving the release that crashed again (%s)",
		  sup->ar_to_version, reason, worker_binary(w), sup->config_path,
		  sup->ar_fallback_binary);
	if (sup->last_auto_rollback != NULL)
		json_object_object_add(sup->last_auto_rollback, "failed",
				       json_object_new_string(reason));
	supervisor_set_serving_binary(sup, sup->ar_fallback_binary);
	free(sup->ar_fallback_binary);
	sup->ar_fallback_binary = NULL;
	return 1;
}

/* migration_set_target_check: T is READY; its version is known now. */
static int supervisor_check_target(struct worker *t, char *why, size_t len,
				   void *arg)
{
	struct supervisor *sup = arg;
	const char *v = worker_version(t);

	if (sup->releases == NULL)
		return 0;
	if (strcmp(sup->mig_kind, "rollback") == 0 && sup->mig_release_to[0] &&
	    strcmp(v, sup->mig_release_to) != 0) {
		snprintf(why, len, "the binary of release %s reports version %s",
			 sup->mig_release_to, v);
		return -1;
	}
	if (releases_admit(sup->releases, v, sup->mig_sha, sup->mig_force,
			   why, len) < 0 ||
	    releases_install(sup->releases, v, worker_binary(t), sup->mig_sha,
			     why, len) < 0)
		return -1;
	snprintf(sup->mig_release_to, sizeof(sup->mig_release_to), "%s", v);
	return 0;
}

/* Which binary an upgrade or rollback starts, checked against the release
 * history: 0, or -1 with why. *binary: in (upgrade) or out (rollback,
 * owned by the store until the next change). */
static int supervisor_release_choose(struct supervisor *sup, const char **binary,
				     char *why, size_t len)
{
	const struct release *r;
	char err[384];

	sup->mig_sha[0] = '\0';
	if (sup->releases == NULL)
		return 0;
	r = releases_serving(sup->releases);
	if (r != NULL)
		snprintf(sup->mig_release_from, sizeof(sup->mig_release_from), "%s",
			 r->version);
	if (*binary == NULL) {
		r = releases_rollback_target(sup->releases, sup->mig_force, why, len);
		if (r == NULL)
			return -1;
		*binary = r->binary;
		snprintf(sup->mig_release_to, sizeof(sup->mig_release_to), "%s",
			 r->version);
		if (releases_sha256_file(r->binary, sup->mig_sha, err, sizeof(err)) < 0) {
			snprintf(why, len, "release %.63s: %s", r->version, err);
			return -1;
		}
		if (strcmp(sup->mig_sha, r->sha256) != 0 && !sup->mig_force) {
			snprintf(why, len, "%s changed since release %s was installed (sha256 %.16s..., installed %.16s...); --force deploys it anyway",
				 r->binary, r->version, sup->mig_sha, r->sha256);
			return -1;
		}
		return 0;
	}
	if (releases_sha256_file(*binary, sup->mig_sha, err, sizeof(err)) < 0) {
		snprintf(why, len, "%s", err);
		return -1;
	}
	r = releases_find_sha(sup->releases, sup->mig_sha);
	if (r != NULL && r->state == RELEASE_BAD && !sup->mig_force) {
		snprintf(why, len, "%s is release %s, marked bad: %s; --force deploys it anyway",
			 *binary, r->version, r->reason ? r->reason : "(no reason recorded)");
		return -1;
	}
	return 0;
}

/* rj with release_from and release_to; NULL (rj released) when out of
 * memory, or when rj is NULL. */
static struct json_object *supervisor_add_release_fields(struct supervisor *sup,
							 struct json_object *rj)
{
	struct jb jb_ = JB_INIT, *jb = &jb_;

	jb_note(jb, rj);
	jb_add(jb, rj, "release_from", sup->mig_release_from[0]
			       ? jb_str(jb, sup->mig_release_from) : NULL);
	jb_add(jb, rj, "release_to", sup->mig_release_to[0]
			       ? jb_str(jb, sup->mig_release_to) : NULL);
	return jb_done(jb, rj);
}

void supervisor_releases(struct supervisor *sup, supervisor_reply_cb cb,
			 void *arg)
{
	struct jb jb_ = JB_INIT, *jb = &jb_;
	struct json_object *r;

	if (sup->releases != NULL) {
		r = releases_json(sup->releases);
	} else {
		r = jb_obj(jb);
		jb_add(jb, r, "error",
				       jb_str(jb, "the release store could not be loaded (out of memory at start)"));
		r = jb_done(jb, r);
	}
	supervisor_reply_result(cb, arg, r);
}

/* --- the serving worker --------------------------------------------------- */

static void supervisor_set_serving_binary(struct supervisor *sup,
					  const char *binary)
{
	char *copy = strdup(binary);

	if (copy == NULL)
		return; /* keep the old one: a restart still has a binary */
	free(sup->serving_binary);
	sup->serving_binary = copy;
}

static void supervisor_serve(struct supervisor *sup, struct worker *w)
{
	int r;

	r = worker_send_listeners(w, listeners_fds(sup->listeners),
				  listeners_names(sup->listeners),
				  listeners_count(sup->listeners));
	if (r == 0)
		r = worker_send_accept(w, true);
	if (r < 0) {
		/* Its control socket is closed now: it exits and counts as a
		 * crash, which restarts it. */
		log_error("supervisor", "pid %d: cannot hand over listeners: %s",
			  (int)worker_pid(w), strerror(-r));
		return;
	}
	sup->active_serving = true;
	sup->ar_trying = false; /* an automatic rollback's worker serves */
	supervisor_set_serving_binary(sup, worker_binary(w));
	supervisor_release_serving(sup, w);
	worker_set_role(w, "active");
	log_info("supervisor", "worker pid %d (%s) serving on %zu listener(s)",
		 (int)worker_pid(w), worker_version(w),
		 listeners_count(sup->listeners));
	if (sup->crash_pending && sup->crash_log != NULL) {
		/* the crash that this worker replaces: how long its users had
		 * no worker */
		size_t n = json_object_array_length(sup->crash_log);
		struct json_object *last = n ? json_object_array_get_idx(sup->crash_log, n - 1) : NULL;

		if (last != NULL)
			json_object_object_add(last, "restore_ms",
					       json_object_new_int64(clock_mono_ms() - sup->crash_mono_ms));
		sup->crash_pending = false;
	}
	if (!sup->ever_served) {
		char text[256];

		sup->ever_served = true;
		supervisor_status_text(sup, text, sizeof(text));
		sysd_send_ready(text);
	}
	supervisor_notify_status(sup);
}

#define SUPERVISOR_CRASH_LOG 32

/* status `crashes` (issue 10's contract). Without custody a crash keeps
 * nothing: every session the worker held (its last STATUS) lost its
 * connections and reconnects, none is restored, no connection is kept;
 * lines lost are not counted (null: unknown, not zero). */
static struct json_object *supervisor_crash_entry(struct worker *w)
{
	struct jb jb_ = JB_INIT, *jb = &jb_;
	struct json_object *c = jb_obj(jb);
	const Baton__Control__Status *st = worker_has_status(w) ? worker_last_status(w) : NULL;
	int ws = worker_exit_code(w);

	jb_add(jb, c, "time", jb_i64(jb, (int64_t)time(NULL)));
	jb_add(jb, c, "pid", jb_i64(jb, worker_pid(w)));
	jb_add(jb, c, "signal", !worker_is_adopted(w) && WIFSIGNALED(ws)
				? jb_int(jb, WTERMSIG(ws)) : NULL);
	jb_add(jb, c, "status", jb_str(jb, worker_exit_status(w)));
	jb_add(jb, c, "sessions_restored", jb_int(jb, 0));
	jb_add(jb, c, "sessions_lost", st ? jb_i64(jb, st->sessions) : NULL);
	jb_add(jb, c, "connections_kept", jb_int(jb, 0));
	jb_add(jb, c, "connections_reconnected", st ? jb_i64(jb, st->connections) : NULL);
	jb_add(jb, c, "lines_lost", NULL);
	jb_add(jb, c, "restore_ms", NULL);
	return jb_done(jb, c);
}

static void supervisor_record_crash(struct supervisor *sup, struct worker *w)
{
	struct jb jb_ = JB_INIT, *jb = &jb_;
	struct json_object *c = jb_obj(jb);
	struct json_object *entry = supervisor_crash_entry(w);

	if (sup->crash_log == NULL)
		sup->crash_log = json_object_new_array();
	if (entry != NULL && sup->crash_log != NULL &&
	    json_object_array_add(sup->crash_log, entry) == 0) {
		if (json_object_array_length(sup->crash_log) > SUPERVISOR_CRASH_LOG)
			json_object_array_del_idx(sup->crash_log, 0, 1);
		sup->crash_pending = true;
		sup->crash_mono_ms = clock_mono_ms();
	} else {
		json_object_put(entry);
		log_error("supervisor", "out of memory: the crash not kept in status");
	}
	sup->crashes++;
	jb_add(jb, c, "pid", jb_i64(jb, worker_pid(w)));
	jb_add(jb, c, "binary", jb_str(jb, worker_binary(w)));
	jb_add(jb, c, "version", jb_str(jb, worker_version(w)));
	jb_add(jb, c, "status", jb_str(jb, worker_exit_status(w)));
	jb_add(jb, c, "time", jb_i64(jb, (int64_t)time(NULL)));
	jb_add(jb, c, "uptime_s", jb_double(jb, worker_uptime_s(w)));
	json_object_put(sup->last_crash);
	sup->last_crash = jb_done(jb, c);
	if (sup->last_crash == NULL)
		log_error("supervisor", "out of memory: the crash not kept for status");
}

/* --- custody: a crash is an adoption ------------------------------------- */

static void supervisor_custody_handed(void *arg, const struct custody_result *r)
{
	struct supervisor *sup = arg;

	sup->restore_res = *r;
	sup->restore_handed = true;
}

/* The worker w is READY after a crash whose sockets custody holds: hand
 * them and the checkpoint to it, as the source of a migration. 0: started
 * (serve once its MIGRATION_RESULT is in), -errno: serve without. */
static int supervisor_custody_restore(struct supervisor *sup, struct worker *w)
{
	struct custody *held = sup->restore_held;
	int sv[2], r, err = 0;

	sup->restore_held = NULL;
	if (sup->strikes == NULL)
		sup->strikes = strmap_new();
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
		log_error("custody", "cannot restore: socketpair: %s", strerror(errno));
		custody_free(held);
		return -errno;
	}
	r = worker_send_migrate(w, false, 0, -1,
				(unsigned)sup->cfg->handoff_timeout_s * 1000, 0, sv[1]);
	close(sv[1]);
	if (r < 0) {
		close(sv[0]);
		custody_free(held);
		log_error("custody", "cannot restore into pid %d: %s",
			  (int)worker_pid(w), strerror(-r));
		return r;
	}
	memset(&sup->restore_res, 0, sizeof(sup->restore_res));
	sup->restore_handed = false;
	sup->restore = custody_restore_start(sup->base, held, sv[0], worker_pid(w),
					     sup->cfg->handoff_timeout_s * 1000,
					     sup->strikes,
					     (unsigned)sup->cfg->custody_crashes, NULL,
					     supervisor_custody_handed, sup, &err);
	if (sup->restore == NULL) {
		log_error("custody", "cannot restore into pid %d: %s (its users reconnect)",
			  (int)worker_pid(w), strerror(-err));
		/* the target saw EOF on its channel: it reports an aborted
		 * migration, which the RESULT path below ignores */
		return err;
	}
	worker_set_role(w, "target");
	return 0;
}

static void supervisor_custody_restored(struct supervisor *sup, struct worker *w,
					const Baton__Control__MigrationResult *m)
{
	struct custody_result *r = &sup->restore_res;
	size_t n = sup->crash_log ? json_object_array_length(sup->crash_log) : 0;
	struct json_object *last = n ? json_object_array_get_idx(sup->crash_log, n - 1) : NULL;

	if (!m->committed) {
		r->sessions_lost += r->sessions_restored;
		r->connections_reconnected += r->connections_kept;
		r->sessions_restored = r->connections_kept = 0;
	}
	log_info("custody", "restore into pid %d %s: %u sessions restored, %u lost, %u connections kept, %u reconnected, %llu lines lost%s%s%s%s",
		 (int)worker_pid(w), m->committed ? "committed" : "failed",
		 r->sessions_restored, r->sessions_lost, r->connections_kept,
		 r->connections_reconnected, (unsigned long long)r->lines_lost,
		 r->implicated[0] ? "; the crash happened handling " : "",
		 r->implicated, r->quarantined[0] ? ", quarantined: " : "",
		 r->quarantined);
	if (last != NULL) {
		json_object_object_add(last, "sessions_restored", json_object_new_int64(r->sessions_restored));
		json_object_object_add(last, "sessions_lost", json_object_new_int64(r->sessions_lost));
		json_object_object_add(last, "sessions_rejected", json_object_new_int64(r->sessions_rejected));
		json_object_object_add(last, "connections_kept", json_object_new_int64(r->connections_kept));
		json_object_object_add(last, "connections_reconnected", json_object_new_int64(r->connections_reconnected));
		json_object_object_add(last, "lines_lost", json_object_new_int64((int64_t)r->lines_lost));
		json_object_object_add(last, "implicated", r->implicated[0] ? json_object_new_string(r->implicated) : NULL);
		json_object_object_add(last, "quarantined", r->quarantined[0] ? json_object_new_string(r->quarantined) : NULL);
	}
	sup->custody_lines_lost += r->lines_lost;
	if (m->committed)
		sup->custody_restores++;
	if (r->quarantined[0]) {
		char **g = realloc(sup->quarantined, (sup->nquarantined + 1) * sizeof(*g));
		char *k = strdup(r->quarantined);

		if (g != NULL)
			sup->quarantined = g;
		if (g != NULL && k != NULL)
			sup->quarantined[sup->nquarantined++] = k;
		else
			free(k);
		log_error("custody", "session %s quarantined: the worker crashed %d times handling its input; it is not reconnected (its user is told)",
			  r->quarantined, sup->cfg->custody_crashes);
	}
	custody_restore_free(sup->restore);
	sup->restore = NULL;
	if (!sup->stopping)
		supervisor_serve(sup, w);
}

static void supervisor_on_worker(struct worker *w, enum worker_event ev,
				 const void *msg, void *arg)
{
	struct supervisor *sup = arg;

	if (w != sup->active) {
		/* A worker that is leaving (told to EXIT): nothing to decide. */
		if (ev == WORKER_EXITED)
			log_info("supervisor", "pid %d left: %s", (int)worker_pid(w),
				 worker_exit_status(w));
		return;
	}
	switch (ev) {
	case WORKER_READY: {
		const Baton__Control__Ready *r = msg;

		evtimer_del(sup->ev_ready);
		if (!r->preflight_ok) {
			/* It should exit by itself; one that does not is stopped
			 * (SIGKILL after handoff_timeout). */
			log_error("supervisor", "worker pid %d failed preflight: stopping it",
				  (int)worker_pid(w));
			worker_stop(w, sup->cfg->handoff_timeout_s);
			return;
		}
		if (!sup->stopping && sup->restore_held != NULL &&
		    supervisor_custody_restore(sup, w) == 0)
			return; /* serves once the restore's result is in */
		if (!sup->stopping)
			supervisor_serve(sup, w);
		return;
	}
	case WORKER_EXITED:
		sup->active = NULL;
		evtimer_del(sup->ev_ready);
		if (sup->stopping)
			return;
		if (!sup->ever_served) {
			log_error("supervisor", "first worker pid %d (%s) exited before serving: %s; giving up",
				  (int)worker_pid(w), worker_binary(w),
				  worker_exit_status(w));
			sup->exit_code = 1;
			event_base_loopexit(sup->base, NULL);
			return;
		}
		log_error("supervisor", "worker pid %d crashed: %s (binary %s, up %.1f s)",
			  (int)worker_pid(w), worker_exit_status(w),
			  worker_binary(w), worker_uptime_s(w));
		supervisor_record_crash(sup, w);
		{
			/* the watchdog's kill says so in the record */
			size_t n = sup->crash_log ? json_object_array_length(sup->crash_log) : 0;
			struct json_object *last = n ? json_object_array_get_idx(sup->crash_log, n - 1) : NULL;

			if (last != NULL)
				json_object_object_add(last, "watchdog",
						       json_object_new_boolean(sup->wd_killed == worker_pid(w)));
			sup->wd_asked_ms = 0;
		}
		if (worker_uptime_s(w) >= STABLE_AFTER_S)
			sup->restart_failures = 0;
		if (worker_uptime_s(w) < CUSTODY_LOOP_WINDOW_S)
			sup->quick_crashes++;
		else
			sup->quick_crashes = 0;
		if (sup->restore_held != NULL) {
			/* It died before it was given the held sockets
			 * (supervisor_custody_restore takes them at a READY
			 * that passed preflight): they wait for the next
			 * worker. */
			log_warn("custody", "worker pid %d exited before the restore: still holding %zu sockets for the next worker",
				 (int)worker_pid(w), custody_fd_count(sup->restore_held));
		} else {
			custody_free(sup->restore_held);
			sup->restore_held = NULL;
			custody_restore_free(sup->restore);
			sup->restore = NULL;
		}
		if (sup->cfg->custody && sup->restore_held == NULL) {
			struct custody *held = worker_take_custody(w);

			if (custody_has_checkpoint(held)) {
				sup->restore_held = held;
				log_info("custody", "holding %zu sockets of pid %d: the next worker adopts them",
					 custody_fd_count(held), (int)worker_pid(w));
			} else {
				custody_free(held);
			}
		}
		if (!supervisor_auto_rollback_failed(sup, w))
			supervisor_auto_rollback(sup, w);
		sup->active_serving = false;
		supervisor_notify_status(sup);
		if (sup->restore_held != NULL &&
		    sup->quick_crashes >= CUSTODY_LOOP_MAX) {
			log_warn("custody", "crash loop: %u workers in a row died within %.0f s of their start: the restore waits for the restart backoff",
				 sup->quick_crashes, CUSTODY_LOOP_WINDOW_S);
			supervisor_schedule_restart(sup);
		} else if (sup->restore_held != NULL) {
			/* at once: its users' sockets wait in custody */
			struct timeval now = { 0, 0 };

			evtimer_add(sup->ev_restart, &now);
		} else {
			supervisor_schedule_restart(sup);
		}
		return;
	case WORKER_PROGRESS:
		if (sup->restore != NULL)
			return;
		/* fall through */
	case WORKER_RESULT:
		if (sup->restore != NULL && ev == WORKER_RESULT) {
			supervisor_custody_restored(sup, w, msg);
			return;
		}
		log_warn("supervisor", "pid %d: migration message outside a migration (ignored)",
			 (int)worker_pid(w));
		return;
	}
}

static void supervisor_on_restart(evutil_socket_t fd, short what, void *arg)
{
	struct supervisor *sup = arg;
	/* The binary that served last: after an upgrade that is not the
	 * configured one. */
	const char *binary = sup->serving_binary ? sup->serving_binary
						 : sup->sessiond;
	int err = 0;

	if (sup->stopping || sup->active != NULL || sup->migration != NULL ||
	    sup->canary != NULL)
		return;
	sup->active_serving = false;
	sup->active = supervisor_spawn(sup, binary, false, &err);
	if (sup->active == NULL) {
		log_error("supervisor", "cannot start a worker: %s", strerror(-err));
		supervisor_schedule_restart(sup);
	}
}

static void supervisor_schedule_restart(struct supervisor *sup)
{
	unsigned ms = RESTART_BACKOFF_MIN_MS;
	struct timeval tv;

	for (unsigned i = 0; i < sup->restart_failures && ms < RESTART_BACKOFF_MAX_MS; i++)
		ms *= 2;
	if (ms > RESTART_BACKOFF_MAX_MS)
		ms = RESTART_BACKOFF_MAX_MS;
	sup->restart_failures++;
	tv.tv_sec = ms / 1000;
	tv.tv_usec = (ms % 1000) * 1000;
	log_info("supervisor", "restarting the worker in %.1f s", ms / 1000.0);
	evtimer_add(sup->ev_restart, &tv);
}

static void supervisor_refresh_done(struct worker *w,
				    const Baton__Control__Status *st, void *arg)
{
	supervisor_notify_status(arg);
}

/* The answer is stored in the worker (worker_last_health) for metrics. */
static void supervisor_health_done(struct worker *w,
				   const Baton__Control__Health *h, void *arg)
{
}

static void supervisor_on_refresh(evutil_socket_t fd, short what, void *arg)
{
	struct supervisor *sup = arg;

	if (sup->active && sup->active_serving && sup->migration == NULL)
		worker_request_status(sup->active, supervisor_refresh_done, sup);
	/* Health of every ready worker (one outstanding request each: one
	 * that never answers is asked once), so the metrics have it. Not
	 * during a canary: a request ends a worker's delivery interval, and
	 * the canary samples both workers together every [canary] sample_ms
	 * (which updates worker_last_health() as well). */
	for (size_t i = 0; i < sup->nworkers && sup->migration == NULL &&
			   sup->canary == NULL; i++)
		if (worker_is_ready(sup->workers[i]) &&
		    !worker_has_exited(sup->workers[i]))
			worker_request_health(sup->workers[i],
					      supervisor_health_done, sup);
}

/* --- the serving worker's watchdog (issue 10 §4) --------------------------- */

static void supervisor_wd_answered(struct worker *w,
				   const Baton__Control__Status *st, void *arg)
{
	struct supervisor *sup = arg;

	(void)w;
	(void)st;
	sup->wd_asked_ms = 0;
}

/* A serving worker that does not answer a status request within
 * worker_watchdog_ms has a wedged loop: SIGKILL. Its death is a crash like
 * any other (with custody its sockets are already held: the next worker
 * adopts them). Not during a migration, canary or restore (they have
 * their own deadlines). */
static void supervisor_on_watchdog(evutil_socket_t fd, short what, void *arg)
{
	struct supervisor *sup = arg;
	struct worker *w = sup->active;
	int64_t now = clock_mono_ms();

	(void)fd;
	(void)what;
	if (w == NULL || !sup->active_serving || sup->migration != NULL ||
	    sup->canary != NULL || sup->restore != NULL || sup->stopping ||
	    worker_has_exited(w)) {
		if (sup->wd_asked_ms != 0 && w != NULL)
			worker_cancel_status(w, sup);
		sup->wd_asked_ms = 0;
		return;
	}
	if (sup->wd_asked_ms == 0) {
		if (worker_request_status(w, supervisor_wd_answered, sup) == 0)
			sup->wd_asked_ms = now;
		return;
	}
	if (now - sup->wd_asked_ms < sup->cfg->worker_watchdog_ms)
		return;
	log_error("supervisor", "worker pid %d did not answer for %lld ms (worker_watchdog_ms): killing it%s",
		  (int)worker_pid(w), (long long)(now - sup->wd_asked_ms),
		  sup->cfg->custody ? "; custody holds its sockets" : "");
	worker_cancel_status(w, sup);
	sup->wd_asked_ms = 0;
	sup->wd_killed = worker_pid(w);
	worker_kill(w);
}

/* --- lifecycle ------------------------------------------------------------ */

struct supervisor *supervisor_new(struct event_base *base,
				  struct baton_config *cfg,
				  struct listeners *listeners,
				  const char *sessiond)
{
	struct supervisor *sup = calloc(1, sizeof(*sup));
	struct timeval refresh = { .tv_sec = REFRESH_INTERVAL_S };

	if (sup == NULL)
		return NULL;
	sup->base = base;
	sup->cfg = cfg;
	sup->listeners = listeners;
	sup->sessiond = strdup(sessiond);
	sup->config_path = strdup(cfg->path);
	sup->ev_restart = evtimer_new(base, supervisor_on_restart, sup);
	sup->ev_ready = evtimer_new(base, supervisor_on_ready_timeout, sup);
	sup->ev_refresh = event_new(base, -1, EV_PERSIST, supervisor_on_refresh, sup);
	if (cfg->worker_watchdog_ms > 0) {
		int period = cfg->worker_watchdog_ms / 4 > 50 ? cfg->worker_watchdog_ms / 4 : 50;
		struct timeval wd = { .tv_sec = period / 1000,
				      .tv_usec = (period % 1000) * 1000 };

		sup->ev_watchdog = event_new(base, -1, EV_PERSIST, supervisor_on_watchdog, sup);
		if (sup->ev_watchdog != NULL)
			event_add(sup->ev_watchdog, &wd);
	}
	expo_hist_init(&sup->freeze_hist, expo_freeze_bounds, expo_freeze_nbounds);
	{
		char *state = config_resolve(cfg, cfg->state_dir);

		if (state != NULL)
			sup->releases = releases_open(state, (unsigned)cfg->canary_releases_kept,
						      false);
		free(state);
	}
	if (sup->sessiond == NULL || sup->config_path == NULL ||
	    sup->ev_restart == NULL || sup->ev_ready == NULL ||
	    sup->ev_refresh == NULL) {
		supervisor_free(sup);
		return NULL;
	}
	event_add(sup->ev_refresh, &refresh);
	worker_set_edit_handler(user_edit_on_request, sup);
	if (metrics_set_extra(supervisor_canary_metrics, sup) < 0)
		log_warn("supervisor", "canary metrics not registered");
	return sup;
}

int supervisor_start_adopted(struct supervisor *sup, struct orphan *o)
{
	struct worker *w = worker_adopt(sup->base, o, sup->cfg->handoff_timeout_s);

	if (w == NULL)
		return -ENOMEM;
	if (supervisor_register(sup, w) < 0) {
		worker_free(w); /* it goes on as an orphan */
		return -ENOMEM;
	}
	worker_set_handler(w, supervisor_on_worker, sup);
	worker_set_adopted_exit(w, supervisor_adopted_exit, sup);
	/* what it loaded is not known: taken as the file now */
	supervisor_note_config(sup, w);
	sup->active = w;
	supervisor_serve(sup, w);
	return 0;
}

int supervisor_start(struct supervisor *sup)
{
	int err = 0;

	sup->active = supervisor_spawn(sup, sup->sessiond, false, &err);
	return sup->active ? 0 : err;
}

int supervisor_exit_code(const struct supervisor *sup)
{
	return sup->exit_code;
}

static void supervisor_status_req_free(struct status_req *q);
struct reexec;
static void reexec_refuse(struct reexec *rx, const char *reason);

void supervisor_free(struct supervisor *sup)
{
	if (sup == NULL)
		return;
	if (sup->reexec)
		reexec_refuse(sup->reexec, "the supervisor is stopping");
	migration_free(sup->migration);
	while (sup->status_reqs)
		supervisor_status_req_free(sup->status_reqs);
	worker_set_edit_handler(NULL, NULL);
	reload_free_all(&sup->reloads); /* before the workers they wait on */
	for (size_t i = 0; i < sup->nworkers; i++) {
		/* Left serving (supervisor_leave): closing its control
		 * channel in worker_free() orphans it, and the next
		 * supervisor adopts it. */
		if (!sup->leaving)
			worker_kill(sup->workers[i]);
		worker_free(sup->workers[i]);
	}
	free(sup->workers);
	if (sup->ev_restart)
		event_free(sup->ev_restart);
	if (sup->ev_ready)
		event_free(sup->ev_ready);
	if (sup->ev_stop)
		event_free(sup->ev_stop);
	if (sup->ev_refresh)
		event_free(sup->ev_refresh);
	if (sup->ev_watchdog)
		event_free(sup->ev_watchdog);
	json_object_put(sup->last_crash);
	json_object_put(sup->crash_log);
	custody_restore_free(sup->restore);
	custody_free(sup->restore_held);
	strmap_free(sup->strikes);
	for (size_t i = 0; i < sup->nquarantined; i++)
		free(sup->quarantined[i]);
	free(sup->quarantined);
	json_object_put(sup->last_migration);
	canary_free(sup->canary);
	json_object_put(sup->last_canary);
	metrics_unset_extra(supervisor_canary_metrics, sup);
	json_object_put(sup->last_auto_rollback);
	releases_free(sup->releases);
	free(sup->previous_binary);
	free(sup->serving_binary);
	free(sup->ar_fallback_binary);
	free(sup->sessiond);
	free(sup->config_path);
	listeners_free(sup->listeners);
	config_free(sup->cfg);
	free(sup);
}

static void supervisor_on_stop_backstop(evutil_socket_t fd, short what, void *arg)
{
	struct supervisor *sup = arg;

	log_error("supervisor", "%zu worker(s) still not reaped; exiting anyway",
		  sup->nworkers);
	event_base_loopexit(sup->base, NULL);
}

void supervisor_shutdown(struct supervisor *sup)
{
	struct timeval tv = { .tv_sec = sup->cfg->handoff_timeout_s + 5 };

	if (sup->stopping)
		return;
	sup->stopping = true;
	log_info("supervisor", "shutting down %zu worker(s)", sup->nworkers);
	sysd_send("STOPPING=1");
	sup->reloading = false; /* STOPPING=1 ends it */
	if (sup->migration) {
		/* Abandoning a migration halfway is safe only because every
		 * worker is leaving anyway. Same result shape as any other
		 * end of a migration: nobody serves afterwards. */
		struct migration_result res = *migration_result_so_far(sup->migration);

		migration_free(sup->migration);
		sup->migration = NULL;
		res.committed = false;
		res.refused = false;
		res.sessions_lost = false; /* they end with the shutdown */
		res.sessions_lost_count = 0;
		res.partial = false;
		{
			struct timespec now;

			clock_gettime(CLOCK_REALTIME, &now);
			res.total_ms = ((double)now.tv_sec +
					(double)now.tv_nsec / 1e9 - res.started) * 1e3;
		}
		snprintf(res.reason, sizeof(res.reason),
			 "the supervisor is shutting down: every worker stops");
		supervisor_reply_result(sup->mig_cb, sup->mig_arg,
					migration_result_json(&res, sup->mig_kind,
							      NULL));
		sup->mig_cb = NULL;
		sup->mig_arg = NULL;
	}
	if (sup->canary) {
		/* Same as a migration: every worker leaves anyway. */
		canary_free(sup->canary);
		sup->canary = NULL;
	}
	evtimer_del(sup->ev_restart);
	evtimer_del(sup->ev_ready);
	for (size_t i = 0; i < sup->nworkers; i++) {
		worker_set_handler(sup->workers[i], supervisor_on_worker, sup);
		worker_stop(sup->workers[i], sup->cfg->handoff_timeout_s);
	}
	if (sup->nworkers == 0) {
		event_base_loopexit(sup->base, NULL);
		return;
	}
	sup->ev_stop = evtimer_new(sup->base, supervisor_on_stop_backstop, sup);
	if (sup->ev_stop)
		evtimer_add(sup->ev_stop, &tv);
}

const char *supervisor_leave_refusal(const struct supervisor *sup)
{
	return sup->stopping ? "the supervisor is already stopping"
	       : sup->migration ? "a migration is running"
	       : sup->canary ? "a canary is running (two workers hold sessions)"
	       : sup->restore ? "a custody restore is running"
	       : sup->reexec ? "a supervisor re-exec is starting"
	       : sup->active == NULL || !sup->active_serving ? "no worker is serving"
	       : sup->nworkers != 1 ? "more than one worker runs"
	       : NULL;
}

int supervisor_leave(struct supervisor *sup)
{
	const char *why = supervisor_leave_refusal(sup);

	if (why != NULL) {
		log_warn("supervisor", "restart: cannot leave the worker serving (%s): "
			 "stopping every worker instead", why);
		supervisor_shutdown(sup);
		return -EBUSY;
	}
	sup->stopping = true;
	sup->leaving = true;
	log_info("supervisor", "restart: leaving worker pid %d serving for the next "
		 "supervisor to adopt", (int)worker_pid(sup->active));
	sysd_send("STOPPING=1");
	sup->reloading = false;
	evtimer_del(sup->ev_restart);
	evtimer_del(sup->ev_ready);
	event_base_loopexit(sup->base, NULL);
	return 0;
}

/* --- status --------------------------------------------------------------- */

static struct json_object *supervisor_worker_json(struct worker *w)
{
	struct jb jb_ = JB_INIT, *jb = &jb_;
	struct json_object *o = jb_obj(jb);
	const Baton__Control__Status *st = worker_last_status(w);
	const Baton__Control__Ready *r = worker_ready_info(w);

	jb_add(jb, o, "pid", jb_i64(jb, worker_pid(w)));
	jb_add(jb, o, "binary", jb_str(jb, worker_binary(w)));
	jb_add(jb, o, "version", jb_str(jb, worker_version(w)));
	jb_add(jb, o, "role", jb_str(jb, worker_role(w)));
	jb_add(jb, o, "ready", jb_bool(jb, r != NULL));
	jb_add(jb, o, "sessions", jb_i64(jb, st->sessions));
	jb_add(jb, o, "connections", jb_i64(jb, st->connections));
	jb_add(jb, o, "clients", jb_i64(jb, st->clients));
	jb_add(jb, o, "upstreams_connected",
			       jb_i64(jb, st->upstreams_connected));
	jb_add(jb, o, "upstreams_waiting",
			       jb_i64(jb, st->upstreams_waiting));
	jb_add(jb, o, "tls_handshakes", jb_i64(jb, st->tls_handshakes));
	jb_add(jb, o, "networks", jb_note(jb, worker_networks_json(w)));
	jb_add(jb, o, "loop_lag_ms", jb_double(jb, st->loop_lag_ms));
	jb_add(jb, o, "schema_min", jb_i64(jb, r ? r->schema_min : 0));
	jb_add(jb, o, "schema_max", jb_i64(jb, r ? r->schema_max : 0));
	jb_add(jb, o, "uptime_s", jb_double(jb, worker_uptime_s(w)));
	/* Sessions whose network refused their SASL (sessiond/sasl.h). */
	struct json_object *sf = jb_arr(jb);
	for (size_t i = 0; i < st->n_sasl_failures; i++) {
		const Baton__Control__SaslFailure *f = st->sasl_failures[i];
		struct json_object *fo = jb_obj(jb);
		jb_add(jb, fo, "user", jb_str(jb, f->user));
		jb_add(jb, fo, "network", jb_str(jb, f->network));
		jb_add(jb, fo, "reason", jb_str(jb, f->reason ? f->reason : ""));
		jb_add(jb, fo, "at", jb_double(jb, (double)f->at_ms / 1000.0));
		jb_add(jb, fo, "next_attempt", jb_double(jb, (double)f->next_attempt_ms / 1000.0));
		jb_push(jb, sf, fo);
	}
	jb_add(jb, o, "sasl_failures", sf);
	jb_add(jb, o, "sasl_failing", jb_i64(jb, st->sasl_failing));
	/* The message store (sessiond/history.h); backend "off" alone: off. */
	if (st->store != NULL) {
		const Baton__Control__StoreStatus *ss = st->store;
		struct json_object *so = jb_obj(jb);
		jb_add(jb, so, "backend", jb_str(jb, ss->backend ? ss->backend : ""));
		jb_add(jb, so, "appended", jb_i64(jb, (int64_t)ss->appended));
		jb_add(jb, so, "refused_full", jb_i64(jb, (int64_t)ss->refused));
		jb_add(jb, so, "errors", jb_i64(jb, (int64_t)ss->errors));
		jb_add(jb, so, "commit_failures", jb_i64(jb, (int64_t)ss->commit_failures));
		jb_add(jb, so, "failing", jb_bool(jb, ss->failing));
		jb_add(jb, so, "pending", jb_i64(jb, (int64_t)ss->pending));
		jb_add(jb, so, "paused_sessions", jb_i64(jb, ss->paused_sessions));
		jb_add(jb, so, "queued", jb_i64(jb, (int64_t)ss->queued));
		jb_add(jb, so, "durable_seq", jb_i64(jb, (int64_t)ss->durable_seq));
		jb_add(jb, so, "replay_queries", jb_i64(jb, (int64_t)ss->replay_queries));
		if (ss->unavailable != NULL)
			jb_add(jb, so, "unavailable", jb_str(jb, ss->unavailable));
		jb_add(jb, o, "store", so);
	} else {
		struct json_object *so = jb_obj(jb);
		jb_add(jb, so, "backend", jb_str(jb, "off"));
		jb_add(jb, o, "store", so);
	}
	return jb_done(jb, o);
}

static struct json_object *supervisor_status_json(struct supervisor *sup)
{
	struct jb jb_ = JB_INIT, *jb = &jb_;
	struct json_object *o = jb_obj(jb);
	struct json_object *s = jb_obj(jb);
	struct json_object *ws = jb_arr(jb);

	jb_add(jb, s, "pid", jb_i64(jb, getpid()));
	jb_add(jb, s, "version", jb_str(jb, BATON_VERSION));
	jb_add(jb, s, "schema_min", jb_i64(jb, BATON_SCHEMA_MIN));
	jb_add(jb, s, "schema_max", jb_i64(jb, BATON_SCHEMA_MAX));
	jb_add(jb, s, "sessiond", jb_str(jb, sup->sessiond));
	jb_add(jb, s, "stopping", jb_bool(jb, sup->stopping));
	jb_add(jb, o, "supervisor", s);
	for (size_t i = 0; i < sup->nworkers; i++)
		jb_push(jb, ws, jb_note(jb, supervisor_worker_json(sup->workers[i])));
	jb_add(jb, o, "workers", ws);
	jb_add(jb, o, "migration_running",
			       jb_bool(jb, sup->migration != NULL));
	jb_add(jb, o, "crash_count", jb_i64(jb, sup->crashes));
	jb_add(jb, o, "crashes", sup->crash_log ? json_object_get(sup->crash_log)
						 : jb_arr(jb));
	jb_add(jb, o, "last_crash", json_object_get(sup->last_crash));
	if (sup->cfg->custody) {
		struct json_object *cj = custody_json(sup->active ? worker_custody(sup->active) : NULL, jb);
		struct json_object *qa = jb_arr(jb);

		jb_add(jb, cj, "lines_lost", jb_i64(jb, (int64_t)sup->custody_lines_lost));
		/* restores no longer immediate (crash loop), see the log */
		jb_add(jb, cj, "crash_loop", jb_bool(jb, sup->quick_crashes >= CUSTODY_LOOP_MAX));
		/* quarantined sessions: implicated in custody_crashes crashes */
		for (size_t i = 0; i < sup->nquarantined; i++)
			json_object_array_add(qa, json_object_new_string(sup->quarantined[i]));
		jb_add(jb, cj, "quarantined", qa);
		jb_add(jb, o, "custody", cj);
	} else {
		jb_add(jb, o, "custody", NULL);
	}
	{
		/* Where rollback goes: the release history's target. */
		const struct release *t = sup->releases
			? releases_rollback_target(sup->releases, false, NULL, 0) : NULL;
		const struct release *sv = sup->releases ? releases_serving(sup->releases) : NULL;
		const char *prev = t ? t->binary
				     : sup->releases ? NULL : sup->previous_binary;

		jb_add(jb, o, "previous_binary",
				       prev ? jb_str(jb, prev) : NULL);
		jb_add(jb, o, "release",
				       sv ? jb_str(jb, sv->version) : NULL);
		jb_add(jb, o, "rollback_target",
				       t ? jb_str(jb, t->version) : NULL);
	}
	jb_add(jb, o, "auto_rollbacks", jb_i64(jb, sup->auto_rollbacks));
	jb_add(jb, o, "last_auto_rollback",
			       json_object_get(sup->last_auto_rollback));
	jb_add(jb, o, "last_migration", json_object_get(sup->last_migration));
	jb_add(jb, o, "canary", sup->canary ? jb_note(jb, canary_status_json(sup->canary))
							: NULL);
	jb_add(jb, o, "last_canary", json_object_get(sup->last_canary));
	return jb_done(jb, o);
}

static void supervisor_status_req_free(struct status_req *q)
{
	struct status_req **pp;

	for (pp = &q->sup->status_reqs; *pp; pp = &(*pp)->next)
		if (*pp == q) {
			*pp = q->next;
			break;
		}
	for (size_t i = 0; i < q->nasked; i++)
		if (q->asked[i])
			worker_cancel_status(q->asked[i], q);
	if (q->ev_timeout)
		event_free(q->ev_timeout);
	free(q->asked);
	free(q);
}

static void supervisor_status_finish(struct status_req *q)
{
	struct jb jb_ = JB_INIT, *jb = &jb_;
	struct json_object *o = jb_obj(jb);

	jb_add(jb, o, "result", jb_note(jb, supervisor_status_json(q->sup)));
	o = jb_done(jb, o); /* NULL: the reply says out of memory */
	if (q->cb)
		q->cb(o, true, q->arg);
	json_object_put(o);
	supervisor_status_req_free(q);
}

static void supervisor_status_answer(struct worker *w,
				     const Baton__Control__Status *st, void *arg)
{
	struct status_req *q = arg;

	for (size_t i = 0; i < q->nasked; i++)
		if (q->asked[i] == w) {
			q->asked[i] = NULL;
			q->pending--;
			break;
		}
	if (q->pending == 0)
		supervisor_status_finish(q);
}

static void supervisor_status_timeout(evutil_socket_t fd, short what, void *arg)
{
	/* Report what we have: a busy worker's last counts are still useful. */
	supervisor_status_finish(arg);
}

void supervisor_status(struct supervisor *sup, supervisor_reply_cb cb, void *arg)
{
	struct status_req *q = calloc(1, sizeof(*q));
	struct timeval tv = { .tv_sec = STATUS_TIMEOUT_MS / 1000,
			      .tv_usec = (STATUS_TIMEOUT_MS % 1000) * 1000 };

	if (q == NULL)
		goto fail;
	q->sup = sup;
	q->cb = cb;
	q->arg = arg;
	q->asked = calloc(sup->nworkers ? sup->nworkers : 1, sizeof(*q->asked));
	q->ev_timeout = evtimer_new(sup->base, supervisor_status_timeout, q);
	if (q->asked == NULL || q->ev_timeout == NULL) {
		free(q->asked);
		if (q->ev_timeout)
			event_free(q->ev_timeout);
		free(q);
		goto fail;
	}
	q->next = sup->status_reqs;
	sup->status_reqs = q;
	/* Counted before asking: an answer can never arrive synchronously, but
	 * a failed send must not finish the request under our feet. */
	for (size_t i = 0; i < sup->nworkers; i++) {
		struct worker *w = sup->workers[i];

		if (!worker_is_ready(w) || worker_has_exited(w))
			continue;
		if (worker_request_status(w, supervisor_status_answer, q) == 0) {
			q->asked[q->nasked++] = w;
			q->pending++;
		}
	}
	if (q->pending == 0) {
		supervisor_status_finish(q);
		return;
	}
	evtimer_add(q->ev_timeout, &tv);
	return;
fail:
	log_error("control", "status: out of memory");
}

/* --- upgrade / rollback ---------------------------------------------------- */

static struct json_object *side_json(struct jb *jb, const struct migration_side *s)
{
	struct json_object *o = jb_obj(jb);

	jb_add(jb, o, "pid", jb_i64(jb, s->pid));
	jb_add(jb, o, "version", jb_str(jb, s->version));
	jb_add(jb, o, "binary", jb_str(jb, s->binary));
	return o;
}

/* "committed" only when every session arrived; "partial" when the new
 * worker serves but some sessions died with the old one; else "aborted". */
static const char *migration_result_word(const struct migration_result *r)
{
	if (r->committed && !r->sessions_lost)
		return "committed";
	return r->partial ? "partial" : "aborted";
}

/* The result of every upgrade and rollback, on every path (refused, aborted,
 * committed, shutdown): the control protocol (control_socket.h). survivor:
 * the worker that serves afterwards (NULL: none does). */
static struct json_object *migration_result_json(const struct migration_result *r,
						 const char *kind,
						 struct worker *survivor)
{
	struct jb jb_ = JB_INIT, *jb = &jb_;
	struct json_object *o = jb_obj(jb);
	struct json_object *sv = NULL;

	if (survivor != NULL) {
		sv = jb_obj(jb);
		jb_add(jb, sv, "pid", jb_i64(jb, worker_pid(survivor)));
		jb_add(jb, sv, "version", jb_str(jb, worker_version(survivor)));
		jb_add(jb, sv, "binary", jb_str(jb, worker_binary(survivor)));
	}

	jb_add(jb, o, "result",
			       jb_str(jb, migration_result_word(r)));
	jb_add(jb, o, "refused", jb_bool(jb, r->refused));
	jb_add(jb, o, "reason", jb_str(jb, r->reason));
	jb_add(jb, o, "kind", jb_str(jb, kind));
	jb_add(jb, o, "from", side_json(jb, &r->from));
	jb_add(jb, o, "to", side_json(jb, &r->to));
	jb_add(jb, o, "sessions", jb_i64(jb, r->sessions));
	jb_add(jb, o, "connections", jb_i64(jb, r->connections));
	jb_add(jb, o, "fds", jb_i64(jb, r->fds));
	jb_add(jb, o, "chunks", jb_i64(jb, r->chunks));
	jb_add(jb, o, "handshakes_left", jb_i64(jb, r->handshakes_left));
	struct json_object *shrunk = jb_obj(jb);
	jb_add(jb, shrunk, "sessions", jb_i64(jb, r->shrunk[0]));
	jb_add(jb, shrunk, "backlog_lines", jb_i64(jb, r->shrunk[1]));
	jb_add(jb, shrunk, "clients", jb_i64(jb, r->shrunk[2]));
	jb_add(jb, shrunk, "member_lists", jb_i64(jb, r->shrunk[3]));
	jb_add(jb, o, "shrunk", shrunk);
	jb_add(jb, o, "state_bytes", jb_i64(jb, (int64_t)r->state_bytes));
	jb_add(jb, o, "backlog_lines_in_store", jb_i64(jb, (int64_t)r->backlog_lines_in_store));
	jb_add(jb, o, "freeze_ms", jb_double(jb, r->freeze_ms));
	struct json_object *split = jb_obj(jb);
	jb_add(jb, split, "serialize_ms", jb_double(jb, r->freeze_split_ms[0]));
	jb_add(jb, split, "target_prepare_ms", jb_double(jb, r->freeze_split_ms[1]));
	jb_add(jb, split, "commit_ms", jb_double(jb, r->freeze_split_ms[2]));
	jb_add(jb, o, "freeze_split", split);
	jb_add(jb, o, "total_ms", jb_double(jb, r->total_ms));
	jb_add(jb, o, "time", jb_i64(jb, (int64_t)r->started));
	jb_add(jb, o, "survivor", sv);
	jb_add(jb, o, "sessions_lost", jb_bool(jb, r->sessions_lost));
	jb_add(jb, o, "sessions_lost_count",
			       jb_i64(jb, r->sessions_lost ? r->sessions_lost_count : 0));
	return jb_done(jb, o);
}

/* result NULL: it could not be built (the reply says out of memory). */
static void supervisor_reply_result(supervisor_reply_cb cb, void *arg,
				    struct json_object *result)
{
	struct jb jb_ = JB_INIT, *jb = &jb_;
	struct json_object *o = jb_obj(jb);

	jb_add(jb, o, "result", jb_note(jb, result));
	o = jb_done(jb, o);
	if (cb)
		cb(o, true, arg);
	json_object_put(o);
}

/* A request refused before anything started (no migration object). */
static void supervisor_refuse(struct supervisor *sup, supervisor_reply_cb cb,
			      void *arg, const char *kind, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

static void supervisor_refuse(struct supervisor *sup, supervisor_reply_cb cb,
			      void *arg, const char *kind, const char *fmt, ...)
{
	struct migration_result r;
	va_list ap;

	memset(&r, 0, sizeof(r));
	if (sup->active != NULL) {
		r.from.pid = worker_pid(sup->active);
		snprintf(r.from.version, sizeof(r.from.version), "%s",
			 worker_version(sup->active));
		snprintf(r.from.binary, sizeof(r.from.binary), "%s",
			 worker_binary(sup->active));
	}
	r.refused = true;
	r.started = (double)time(NULL);
	va_start(ap, fmt);
	vsnprintf(r.reason, sizeof(r.reason), fmt, ap);
	va_end(ap);
	log_warn("control", "%s refused: %s", kind, r.reason);
	/* Nothing was touched: whoever served still does (maybe nobody, while
	 * restarting after a crash). */
	{
		struct json_object *rj = migration_result_json(&r, kind,
			sup->active_serving ? sup->active : NULL);

		supervisor_reply_result(cb, arg, supervisor_add_release_fields(sup, rj));
	}
}

static void supervisor_mig_progress(const char *phase, unsigned done,
				    unsigned total, void *arg)
{
	struct supervisor *sup = arg;
	struct jb jb_ = JB_INIT, *jb = &jb_;
	struct json_object *o, *p;

	if (sup->mig_cb == NULL)
		return;
	o = jb_obj(jb);
	p = jb_obj(jb);
	jb_add(jb, p, "phase", jb_str(jb, phase));
	jb_add(jb, p, "items_done", jb_i64(jb, done));
	jb_add(jb, p, "items_total", jb_i64(jb, total));
	jb_add(jb, o, "progress", p);
	o = jb_done(jb, o);
	if (o == NULL)
		return; /* a progress line less: the result follows */
	sup->mig_cb(o, false, sup->mig_arg);
	json_object_put(o);
}

static void supervisor_mig_done(struct migration *m,
				const struct migration_result *result,
				struct worker *survivor, void *arg)
{
	struct supervisor *sup = arg;
	struct worker *old = sup->active;
	struct migration_result copy = *result; /* result lives in m */
	const struct migration_result *res = &copy;
	struct json_object *rj;

	/* Every live worker is ours again; only the survivor serves. */
	for (size_t i = 0; i < sup->nworkers; i++)
		worker_set_handler(sup->workers[i], supervisor_on_worker, sup);
	sup->migration = NULL;
	migration_free(m);

	if (survivor != old && survivor != NULL) {
		/* The new binary serves: the old one is what rollback returns to. */
		free(sup->previous_binary);
		sup->previous_binary = strdup(res->from.binary);
		if (sup->previous_binary == NULL)
			log_error("supervisor", "out of memory: rollback target %s forgotten",
				  res->from.binary);
	}
	sup->active = survivor;
	sup->active_serving = survivor != NULL;
	if (survivor != NULL)
		supervisor_set_serving_binary(sup, worker_binary(survivor));
	if (survivor != NULL && survivor != old) {
		supervisor_release_migrated(sup, res, survivor);
		sup->ar_unstartable[0] = '\0';
	}
	if (survivor == NULL) {
		log_error("migration", "no worker survived the migration: starting a fresh one");
		sup->restart_failures = 0;
		supervisor_schedule_restart(sup);
	}

	if (res->committed && !res->sessions_lost)
		sup->migrations_committed++;
	else if (res->refused)
		sup->migrations_refused++;
	else
		sup->migrations_aborted++;
	if (!res->refused) {
		expo_hist_observe(&sup->freeze_hist, res->freeze_ms / 1e3);
		sup->have_last_migration = true;
		sup->last_freeze_ms = res->freeze_ms;
		sup->last_total_ms = res->total_ms;
	}
	if (copy.sessions_lost && survivor != NULL && !sup->stopping) {
		size_t len = strlen(copy.reason);

		snprintf(copy.reason + len, sizeof(copy.reason) - len,
			 "%s%u session(s) lost; the serving worker restarts them (their users reconnect)",
			 len ? "; " : "", copy.sessions_lost_count);
	}
	rj = supervisor_add_release_fields(sup, migration_result_json(res, sup->mig_kind,
								      survivor));
	if (rj == NULL)
		log_error("migration", "out of memory: the result not kept for status (the reply says so)");
	json_object_put(sup->last_migration);
	sup->last_migration = json_object_get(rj);
	log_info("migration", "%s %s: pid %d -> pid %d%s%s (%.1f ms total, freeze %.1f ms)",
		 sup->mig_kind, migration_result_word(res),
		 (int)res->from.pid, (int)res->to.pid, res->reason[0] ? ": " : "",
		 res->reason, res->total_ms, res->freeze_ms);
	supervisor_reply_result(sup->mig_cb, sup->mig_arg, rj);
	sup->mig_cb = NULL;
	sup->mig_arg = NULL;
	supervisor_notify_status(sup);
	supervisor_notify_reloaded(sup);
}

/* The new worker starts with our RLIMIT_NOFILE and must hold every fd of
 * the serving one at once: refuse before anything starts when the limit it
 * would inherit is too low (it was raised to the hard limit at startup, so
 * a lower value now was set on purpose, e.g. with prlimit). */
static int supervisor_check_nofile(struct supervisor *sup, char *why, size_t len)
{
	const Baton__Control__Status *st = worker_last_status(sup->active);
	unsigned long need = config_fds_needed(sup->cfg);
	unsigned long have = (unsigned long)st->connections +
			     listeners_count(sup->listeners) + CONFIG_FDS_SPARE;
	struct rlimit rl;
	char advice[320];

	if (have > need)
		need = have;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY ||
	    rl.rlim_cur >= need)
		return 0;
	snprintf(why, len, "RLIMIT_NOFILE soft limit %llu (inherited by the new worker) is below the %lu file descriptors it needs for %zu sessions (%u connections now; %s, prlimit)",
		 (unsigned long long)rl.rlim_cur, need, sup->cfg->nsessions,
		 st->connections, config_fds_advice(sup->cfg, advice, sizeof(advice)));
	return -EMFILE;
}

void supervisor_upgrade(struct supervisor *sup, const char *binary,
			supervisor_reply_cb cb, void *arg)
{
	supervisor_migrate(sup, binary, binary ? "upgrade" : "rollback", false,
			   cb, arg);
}

void supervisor_upgrade_force(struct supervisor *sup, const char *binary,
			      bool force, supervisor_reply_cb cb, void *arg)
{
	supervisor_migrate(sup, binary, binary ? "upgrade" : "rollback", force,
			   cb, arg);
}

/* kind: "upgrade" or "rollback" (binary NULL: the release history's
 * rollback target). force: deploy a bad release, or replace an installed
 * version by another binary (releases.h). */
static void supervisor_migrate(struct supervisor *sup, const char *binary,
			       const char *kind, bool force,
			       supervisor_reply_cb cb, void *arg)
{
	struct migration_params p;
	struct worker *t;
	char *bin = NULL, why[768];
	int err = 0;

	if (sup->migration != NULL) {
		/* The running one's fields stay; this answer has none. */
		char from[RELEASE_VERSION_MAX], to[RELEASE_VERSION_MAX];

		memcpy(from, sup->mig_release_from, sizeof(from));
		memcpy(to, sup->mig_release_to, sizeof(to));
		sup->mig_release_from[0] = sup->mig_release_to[0] = '\0';
		supervisor_refuse(sup, cb, arg, kind, "a migration is already running");
		memcpy(sup->mig_release_from, from, sizeof(from));
		memcpy(sup->mig_release_to, to, sizeof(to));
		goto out;
	}
	if (sup->canary != NULL) {
		supervisor_refuse(sup, cb, arg, kind, "a canary is running: promote or abort it first");
		goto out;
	}
	sup->mig_force = force;
	sup->mig_kind = kind;
	sup->mig_release_from[0] = sup->mig_release_to[0] = '\0';
	if (sup->stopping) {
		supervisor_refuse(sup, cb, arg, kind, "the supervisor is shutting down");
		goto out;
	}
	if (binary != NULL && binary[0] != '/') {
		supervisor_refuse(sup, cb, arg, kind, "binary must be an absolute path: %s", binary);
		goto out;
	}
	if ((binary == NULL || access(binary, X_OK) == 0) &&
	    supervisor_release_choose(sup, &binary, why, sizeof(why)) < 0) {
		supervisor_refuse(sup, cb, arg, kind, "%s", why);
		goto out;
	}
	if (binary == NULL) {
		if (sup->previous_binary == NULL) {
			supervisor_refuse(sup, cb, arg, kind,
					  "no previous binary to roll back to (no upgrade has committed since the supervisor started)");
			goto out;
		}
		binary = sup->previous_binary;
	}
	bin = strdup(binary); /* previous_binary changes on commit */
	if (bin == NULL) {
		supervisor_refuse(sup, cb, arg, kind, "out of memory");
		goto out;
	}
	if (bin[0] != '/') {
		supervisor_refuse(sup, cb, arg, kind, "binary must be an absolute path: %s", bin);
		goto out;
	}
	if (access(bin, X_OK) < 0) {
		supervisor_refuse(sup, cb, arg, kind, "%s: %s", bin, strerror(errno));
		goto out;
	}
	if (sup->active == NULL || !sup->active_serving) {
		supervisor_refuse(sup, cb, arg, kind, "no serving worker right now (restarting after a crash)");
		goto out;
	}
	if (supervisor_check_nofile(sup, why, sizeof(why)) < 0) {
		supervisor_refuse(sup, cb, arg, kind, "%s", why);
		goto out;
	}

	sup->mig_cb = cb;
	sup->mig_arg = arg;
	sup->mig_kind = kind;
	supervisor_notify_reloading(sup, kind, bin);
	supervisor_mig_progress("spawn", 0, 1, sup);
	log_info("migration", "%s: pid %d (%s) -> %s", kind,
		 (int)worker_pid(sup->active), worker_binary(sup->active), bin);
	t = supervisor_spawn(sup, bin, true, &err);
	if (t == NULL) {
		sup->mig_cb = NULL;
		supervisor_notify_reloaded(sup);
		supervisor_refuse(sup, cb, arg, kind, "cannot start %s: %s", bin,
				  strerror(-err));
		goto out;
	}
	p.timeout_s = sup->cfg->handoff_timeout_s;
	p.chunk_sessions = (unsigned)sup->cfg->chunk_sessions;
	/* Only used if the source dies before announcing its own count: the
	 * larger of what it last said and what the config has. */
	p.source_sessions = worker_last_status(sup->active)->sessions;
	if (p.source_sessions < sup->cfg->nsessions)
		p.source_sessions = (unsigned)sup->cfg->nsessions;
	p.listeners = sup->listeners;
	sup->migration = migration_start(sup->base, sup->active, t, &p,
					 supervisor_mig_progress,
					 supervisor_mig_done, sup);
	if (sup->migration == NULL) {
		worker_stop(t, sup->cfg->handoff_timeout_s);
		sup->mig_cb = NULL;
		supervisor_notify_reloaded(sup);
		supervisor_refuse(sup, cb, arg, kind, "out of memory");
		goto out;
	}
	migration_set_target_check(sup->migration, supervisor_check_target, sup);
	supervisor_notify_status(sup);
out:
	free(bin);
}

void supervisor_detach(struct supervisor *sup, void *arg)
{
	struct status_req *q = sup->status_reqs;

	reload_detach(&sup->reloads, arg);
	if (sup->canary != NULL)
		canary_detach(sup->canary, arg);
	if (sup->mig_arg == arg) {
		sup->mig_cb = NULL;
		sup->mig_arg = NULL;
	}
	while (q) {
		struct status_req *next = q->next;

		if (q->arg == arg)
			supervisor_status_req_free(q);
		q = next;
	}
}

/* --- reload (reload.h) ----------------------------------------------------- */

const char *supervisor_reload_busy(const struct supervisor *sup)
{
	return sup->stopping ? "the supervisor is stopping"
	       : sup->migration != NULL ? "a migration is running: reload after it"
	       : sup->canary != NULL ? "a canary is running: promote or abort it first"
	       : sup->active == NULL || !sup->active_serving
		       ? "no worker is serving (restarting): its start loads the file"
		       : NULL;
}

const char *supervisor_config_path(const struct supervisor *sup)
{
	return sup->config_path;
}

const char *supervisor_config_loaded(const struct supervisor *sup)
{
	return sup->active != NULL && sup->active_serving ? worker_config_sha(sup->active) : "";
}

void supervisor_config_written(struct supervisor *sup, const char *sha)
{
	if (sup->active != NULL)
		worker_set_config_sha(sup->active, sha);
}

void supervisor_reload(struct supervisor *sup, supervisor_reply_cb cb, void *arg)
{
	const char *busy = supervisor_reload_busy(sup);

	sup->ar_unstartable[0] = '\0'; /* the config it rejected may be fixed */
	reload_start(sup->base, busy ? NULL : sup->active, sup->config_path, busy,
		     cb, arg, &sup->reloads);
}

/* --- canary --------------------------------------------------------------- */

/* The release store after a canary (releases.h): promoted, the candidate
 * serves (its release installed, the old one good, the rollback window
 * open); rolled back by a gate, the candidate is recorded bad with the
 * gate's reason, so neither an upgrade nor another canary deploys it
 * again without --force. An operator's abort judges nothing. */
static void supervisor_release_canary(struct supervisor *sup,
				      struct json_object *result,
				      const char *word, struct worker *survivor)
{
	struct json_object *to = json_object_object_get(result, "to");
	const char *version = json_object_get_string(json_object_object_get(to, "version"));
	const char *binary = json_object_get_string(json_object_object_get(to, "binary"));
	const char *gate = json_object_get_string(json_object_object_get(result, "gate"));
	char sha[RELEASE_SHA256_HEX], why[512], reason[768];

	if (sup->releases == NULL || version == NULL || !version[0] || binary == NULL)
		return;
	/* Promoted, or the old worker died and the candidate serves every
	 * session unjudged: either way it is the serving release now, with
	 * the rollback window open (a crash soon rolls it back, item 7). */
	if (survivor != NULL && strcmp(worker_version(survivor), version) == 0 &&
	    (strcmp(word, "promoted") == 0 || strcmp(word, "aborted") == 0)) {
		if (releases_sha256_file(binary, sha, why, sizeof(why)) < 0 ||
		    releases_install(sup->releases, version, binary, sha, why,
				     sizeof(why)) < 0) {
			log_error("releases", "promoted %s not recorded as a release: %s",
				  version, why);
			return;
		}
		const struct release *r = releases_set_serving(sup->releases, version,
							       RELEASE_LEFT_BY_UPGRADE);
		if (r != NULL && !r->pruned)
			supervisor_set_serving_binary(sup, r->binary);
		releases_took_over(sup->releases, version, clock_mono_s());
		return;
	}
	if (strcmp(word, "rolled_back") != 0 || gate == NULL)
		return;
	if (releases_find(sup->releases, version) == NULL &&
	    (releases_sha256_file(binary, sha, why, sizeof(why)) < 0 ||
	     releases_install(sup->releases, version, binary, sha, why, sizeof(why)) < 0)) {
		log_error("releases", "rolled back %s not recorded as a release: %s",
			  version, why);
		return;
	}
	snprintf(reason, sizeof(reason), "canary rolled back by gate %s: %.600s", gate,
		 json_object_get_string(json_object_object_get(result, "reason")));
	if (releases_mark_bad(sup->releases, version, reason) == 0)
		log_warn("releases", "release %s marked bad: %s", version, reason);
}

static struct worker *supervisor_canary_spawn(void *arg, const char *binary,
					      int *err)
{
	return supervisor_spawn(arg, binary, true, err);
}

static void supervisor_canary_ended(void *arg, struct worker *survivor,
				    struct json_object *result)
{
	struct supervisor *sup = arg;
	const char *word = json_object_get_string(json_object_object_get(result, "result"));
	const char *from = json_object_get_string(json_object_object_get(
		json_object_object_get(result, "from"), "binary"));
	bool promoted;

	if (word == NULL) {
		/* result NULL: the canary could not build it (out of memory). */
		log_error("canary", "out of memory: the outcome is unknown here; the release store is not updated (status and --check show what it holds)");
		word = "unknown";
	}
	promoted = strcmp(word, "promoted") == 0;

	/* result belongs to the canary: keep our reference before freeing it
	 * (word and from point into it). */
	json_object_put(sup->last_canary);
	sup->last_canary = json_object_get(result);
	for (size_t i = 0; i < sup->nworkers; i++)
		worker_set_handler(sup->workers[i], supervisor_on_worker, sup);
	canary_free(sup->canary);
	sup->canary = NULL;
	if (promoted)
		sup->canaries_promoted++;
	else if (strcmp(word, "rolled_back") == 0)
		sup->canaries_rolled_back++;
	else if (strcmp(word, "refused") == 0)
		sup->canaries_refused++;
	else
		sup->canaries_aborted++;
	if (promoted && from != NULL && from[0]) {
		/* The old binary is what rollback returns to. */
		free(sup->previous_binary);
		sup->previous_binary = strdup(from);
		if (sup->previous_binary == NULL)
			log_error("supervisor", "out of memory: rollback target %s forgotten", from);
	}
	if (result != NULL)
		supervisor_release_canary(sup, result, word, survivor);
	sup->active = survivor;
	sup->active_serving = survivor != NULL;
	if (survivor != NULL) {
		supervisor_set_serving_binary(sup, worker_binary(survivor));
	} else if (!sup->stopping) {
		log_error("canary", "no worker serves after the canary: starting a fresh one");
		sup->restart_failures = 0;
		supervisor_schedule_restart(sup);
	}
	supervisor_notify_status(sup);
}

void supervisor_canary(struct supervisor *sup, const char *action,
		       const struct canary_plan *plan, uint32_t percent_x100,
		       supervisor_reply_cb cb, void *arg)
{
	static const char *kind = "canary";
	struct canary_host host = {
		.base = sup->base,
		.cfg = sup->cfg,
		.listeners = sup->listeners,
		.spawn = supervisor_canary_spawn,
		.ended = supervisor_canary_ended,
		.arg = sup,
	};
	char why[768];

	if (strcmp(action, "start") != 0) {
		if (sup->canary == NULL) {
			if (strcmp(action, "status") == 0) {
				struct jb jb_ = JB_INIT, *jb = &jb_;
				struct json_object *o = jb_obj(jb);

				jb_add(jb, o, "result", jb_str(jb, "none"));
				jb_add(jb, o, "reason", jb_str(jb, "no canary is running"));
				jb_add(jb, o, "last", json_object_get(sup->last_canary));
				supervisor_reply_result(cb, arg, jb_done(jb, o));
				return;
			}
			supervisor_refuse(sup, cb, arg, kind, "no canary is running");
			return;
		}
		canary_request(sup->canary, action, percent_x100, cb, arg);
		return;
	}
	if (sup->canary != NULL) {
		supervisor_refuse(sup, cb, arg, kind, "a canary is already running");
		return;
	}
	if (sup->migration != NULL) {
		supervisor_refuse(sup, cb, arg, kind, "a migration is running");
		return;
	}
	if (sup->stopping) {
		supervisor_refuse(sup, cb, arg, kind, "the supervisor is shutting down");
		return;
	}
	if (plan->binary[0] != '/') {
		supervisor_refuse(sup, cb, arg, kind, "binary must be an absolute path: %s", plan->binary);
		return;
	}
	if (access(plan->binary, X_OK) < 0) {
		supervisor_refuse(sup, cb, arg, kind, "%s: %s", plan->binary, strerror(errno));
		return;
	}
	if (sup->active == NULL || !sup->active_serving) {
		supervisor_refuse(sup, cb, arg, kind, "no serving worker right now (restarting after a crash)");
		return;
	}
	if (supervisor_check_nofile(sup, why, sizeof(why)) < 0) {
		supervisor_refuse(sup, cb, arg, kind, "%s", why);
		return;
	}
	if (sup->releases != NULL) {
		char sha[RELEASE_SHA256_HEX];
		const struct release *r;

		if (releases_sha256_file(plan->binary, sha, why, sizeof(why)) < 0) {
			supervisor_refuse(sup, cb, arg, kind, "%s", why);
			return;
		}
		r = releases_find_sha(sup->releases, sha);
		if (r != NULL && r->state == RELEASE_BAD && !plan->force) {
			supervisor_refuse(sup, cb, arg, kind, "release %s is marked bad (%s); --force deploys it anyway",
					  r->version, r->reason ? r->reason : "no reason recorded");
			return;
		}
	}
	sup->canary = canary_start(&host, sup->active, plan, cb, arg);
	if (sup->canary == NULL)
		supervisor_refuse(sup, cb, arg, kind, "out of memory");
	supervisor_notify_status(sup);
}

/* Canary families (metrics_set_extra()): results of finished canaries,
 * whether one runs, and the running one's gates (gates.h). */
static void supervisor_canary_metrics(struct evbuffer *out, void *arg)
{
	struct supervisor *sup = arg;

	evbuffer_add_printf(out,
		"# HELP baton_canaries_total Finished canaries by result.\n"
		"# TYPE baton_canaries_total counter\n"
		"baton_canaries_total{result=\"promoted\"} %u\n"
		"baton_canaries_total{result=\"rolled_back\"} %u\n"
		"baton_canaries_total{result=\"aborted\"} %u\n"
		"baton_canaries_total{result=\"refused\"} %u\n"
		"# HELP baton_canary_running 1 while a canary runs.\n"
		"# TYPE baton_canary_running gauge\n"
		"baton_canary_running %d\n",
		sup->canaries_promoted, sup->canaries_rolled_back,
		sup->canaries_aborted, sup->canaries_refused, sup->canary != NULL);
	if (sup->canary != NULL)
		canary_metrics(sup->canary, out);
}

/* --- metrics (supervisor/exposition.c writes them) ---------------------- */

void supervisor_get_stats(const struct supervisor *sup,
			  struct supervisor_stats *out)
{
	memset(out, 0, sizeof(*out));
	out->crashes = sup->crashes;
	out->custody_fds = sup->active ? custody_fd_count(worker_custody(sup->active)) : 0;
	out->custody_restores = sup->custody_restores;
	out->custody_lines_lost = sup->custody_lines_lost;
	out->custody_quarantined = sup->nquarantined;
	out->migrations_committed = sup->migrations_committed;
	out->migrations_aborted = sup->migrations_aborted;
	out->migrations_refused = sup->migrations_refused;
	out->migration_running = sup->migration != NULL;
	out->have_last_migration = sup->have_last_migration;
	out->last_freeze_ms = sup->last_freeze_ms;
	out->last_total_ms = sup->last_total_ms;
	out->freeze = &sup->freeze_hist;
}

struct worker *const *supervisor_workers(const struct supervisor *sup,
					 size_t *n)
{
	*n = sup->nworkers;
	return sup->workers;
}

/* --- re-executing the supervisor (issue 10 §5) ---------------------------- */

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434 /* same number on every architecture */
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

/* How long `BIN --version` may take before BIN is refused. */
#define REEXEC_PROBE_MS 5000

/* One re-exec being prepared (sup->reexec; at most one). The probe runs
 * `BIN --version` in a child watched by an event, so the loop goes on
 * serving status, metrics and the workers meanwhile; then reexec_now(). */
struct reexec {
	struct supervisor *sup;
	char *binary;
	char *to_version;
	int client_fd;   /* batonctl's connection, kept across execve; owned */
	struct event *ev; /* the probe's pipe (with its timeout), then a timer */
	int probe_fd;    /* read end of the probe's stdout, or -1 */
	int probe_pidfd; /* the probe child, or -1 (SIGKILL goes through it:
			  * SIGCHLD's supervisor_reap() may have reaped it) */
	char out[256];
	size_t nout;
};

static void reexec_free(struct reexec *rx)
{
	if (rx == NULL)
		return;
	if (rx->sup->reexec == rx)
		rx->sup->reexec = NULL;
	if (rx->ev)
		event_free(rx->ev);
	if (rx->probe_pidfd >= 0) {
		syscall(SYS_pidfd_send_signal, rx->probe_pidfd, SIGKILL, NULL, 0);
		close(rx->probe_pidfd);
	}
	if (rx->probe_fd >= 0)
		close(rx->probe_fd);
	if (rx->client_fd >= 0)
		close(rx->client_fd);
	free(rx->binary);
	free(rx->to_version);
	free(rx);
}

/* The final result for batonctl when the re-exec does not happen, then
 * rx is freed (its client fd closed). */
static void reexec_refuse(struct reexec *rx, const char *reason)
{
	struct jb jb = JB_INIT;
	struct json_object *o = jb_obj(&jb), *r = jb_obj(&jb);
	const char *text;

	log_warn("supervisor", "re-exec of %s refused: %s", rx->binary, reason);
	jb_add(&jb, r, "result", jb_str(&jb, "refused"));
	jb_add(&jb, r, "kind", jb_str(&jb, "supervisor"));
	jb_add(&jb, r, "reason", jb_str(&jb, reason));
	jb_add(&jb, o, "result", r);
	o = jb_done(&jb, o);
	text = o ? json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
						  JSON_C_TO_STRING_NOSLASHESCAPE) : NULL;
	if (text == NULL || dprintf(rx->client_fd, "%s\n", text) < 0)
		log_warn("supervisor", "could not tell batonctl the refusal");
	json_object_put(o);
	reexec_free(rx);
}

/* Why the supervisor cannot re-exec now, or NULL. */
static const char *reexec_busy(const struct supervisor *sup)
{
	return sup->stopping ? "the supervisor is stopping"
	       : sup->canary ? "a canary is running: promote or abort it first"
	       : sup->migration ? "a migration is running"
	       : !sup->active_serving ? "no worker is serving"
	       : NULL;
}

static void reexec_now(evutil_socket_t fd, short what, void *arg)
{
	struct reexec *rx = arg;
	struct supervisor *sup = rx->sup;
	char env[128], text[512], reason[512];
	char *argv[] = { rx->binary, "-c", sup->config_path,
			 log_max_level() >= LOG_LVL_DEBUG ? "--debug" : NULL, NULL };

	(void)fd;
	(void)what;
	snprintf(env, sizeof(env), "%d,%d,%s", rx->client_fd, (int)getpid(), BATON_VERSION);
	setenv(SUPERVISOR_REEXEC_ENV, env, 1);
	snprintf(text, sizeof(text), "re-executing the supervisor as %.400s", rx->binary);
	sysd_send_reloading(text);
	log_info("supervisor", "re-executing: %s -c %s (%s -> %s); the worker serves on and is adopted",
		 rx->binary, sup->config_path, BATON_VERSION, rx->to_version);
	/* Every other fd of ours is CLOEXEC: the workers see their control
	 * channels close and serve on as orphans, which the new image adopts
	 * (orphans.h). Our pid, which systemd watches, stays. */
	execv(rx->binary, argv);
	int err = errno;

	unsetenv(SUPERVISOR_REEXEC_ENV);
	log_error("supervisor", "re-exec of %s failed: %s; serving on", rx->binary, strerror(err));
	sysd_send_ready("re-exec failed; serving on");
	snprintf(reason, sizeof(reason), "execve %.400s: %s", rx->binary, strerror(err));
	reexec_refuse(rx, reason);
}

/* The probe ended (EOF, its output full, or REEXEC_PROBE_MS passed):
 * `baton-supervisor VERSION (state schema ...)` or refuse. */
static void reexec_probe_done(struct reexec *rx, bool timed_out)
{
	char version[64], reason[512];
	const char *busy;
	struct timeval now = { 0, 0 };

	event_free(rx->ev);
	rx->ev = NULL;
	close(rx->probe_fd);
	rx->probe_fd = -1;
	syscall(SYS_pidfd_send_signal, rx->probe_pidfd, SIGKILL, NULL, 0);
	close(rx->probe_pidfd);
	rx->probe_pidfd = -1;
	rx->out[rx->nout] = '\0';
	if (timed_out || sscanf(rx->out, "baton-supervisor %63s", version) != 1) {
		snprintf(reason, sizeof(reason), "%.400s --version %s", rx->binary,
			 timed_out ? "did not answer within 5 s: not a baton supervisor"
			 : "does not print \"baton-supervisor VERSION\": not a baton supervisor");
		reexec_refuse(rx, reason);
		return;
	}
	/* The loop ran meanwhile: an upgrade or a canary may have started. */
	if ((busy = reexec_busy(rx->sup)) != NULL) {
		reexec_refuse(rx, busy);
		return;
	}
	if (!(rx->to_version = strdup(version)) ||
	    !(rx->ev = evtimer_new(rx->sup->base, reexec_now, rx))) {
		reexec_refuse(rx, "out of memory");
		return;
	}
	evtimer_add(rx->ev, &now);
}

static void reexec_on_probe(evutil_socket_t fd, short what, void *arg)
{
	struct reexec *rx = arg;
	ssize_t r;

	if (what & EV_TIMEOUT) {
		reexec_probe_done(rx, true);
		return;
	}
	r = read(fd, rx->out + rx->nout, sizeof(rx->out) - 1 - rx->nout);
	if (r < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (r > 0)
		rx->nout += (size_t)r;
	if (r <= 0 || rx->nout == sizeof(rx->out) - 1)
		reexec_probe_done(rx, false);
}

/* Start `BIN --version` with its stdout on a pipe the loop watches. */
static int reexec_probe_start(struct reexec *rx)
{
	int pipefd[2];
	pid_t pid;
	struct timeval tv = { REEXEC_PROBE_MS / 1000, (REEXEC_PROBE_MS % 1000) * 1000 };

	if (pipe2(pipefd, O_CLOEXEC | O_NONBLOCK) < 0)
		return -errno;
	pid = fork();
	if (pid < 0) {
		int err = errno;

		close(pipefd[0]);
		close(pipefd[1]);
		return -err;
	}
	if (pid == 0) {
		dup2(pipefd[1], 1);
		execl(rx->binary, rx->binary, "--version", (char *)NULL);
		_exit(127);
	}
	close(pipefd[1]);
	rx->probe_fd = pipefd[0];
	rx->probe_pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (rx->probe_pidfd < 0) {
		/* our child, not yet reaped (SIGCHLD is handled on this loop
		 * later): its pid cannot have been reused */
		kill(pid, SIGKILL);
		return -errno;
	}
	rx->ev = event_new(rx->sup->base, rx->probe_fd, EV_READ | EV_PERSIST,
			   reexec_on_probe, rx);
	if (rx->ev == NULL || event_add(rx->ev, &tv) < 0)
		return -ENOMEM;
	return 0;
}

int supervisor_reexec(struct supervisor *sup, const char *binary, bool force,
		      int client_fd, char *why, size_t len)
{
	struct reexec *rx;
	struct stat self, bin;
	const char *busy = sup->reexec ? "a supervisor re-exec is being prepared"
			   : reexec_busy(sup);
	int r;

	if (busy != NULL) {
		snprintf(why, len, "%s", busy);
		return -EBUSY;
	}
	if (binary[0] != '/' || access(binary, X_OK) < 0) {
		snprintf(why, len, "%s: %s", binary,
			 binary[0] != '/' ? "not an absolute path" : strerror(errno));
		return -EINVAL;
	}
	/* The file this process runs (kept by the kernel even when a package
	 * upgrade replaced it: then it is another inode). */
	if (!force && stat("/proc/self/exe", &self) == 0 && stat(binary, &bin) == 0 &&
	    self.st_dev == bin.st_dev && self.st_ino == bin.st_ino) {
		snprintf(why, len, "%s is the binary this supervisor runs", binary);
		return 1;
	}
	rx = calloc(1, sizeof(*rx));
	if (rx == NULL || !(rx->binary = strdup(binary))) {
		free(rx);
		snprintf(why, len, "out of memory");
		return -ENOMEM;
	}
	rx->sup = sup;
	rx->client_fd = -1; /* not ours until the probe runs */
	rx->probe_fd = rx->probe_pidfd = -1;
	r = reexec_probe_start(rx);
	if (r < 0) {
		snprintf(why, len, "could not run %s --version: %s", binary, strerror(-r));
		reexec_free(rx);
		return r;
	}
	rx->client_fd = client_fd;
	sup->reexec = rx;
	return 0;
}

int supervisor_reexec_report(struct supervisor *sup, int client_fd,
			     pid_t from_pid, const char *from_version,
			     bool adopted)
{
	struct jb jb = JB_INIT;
	struct json_object *o = jb_obj(&jb), *r = jb_obj(&jb);
	struct json_object *from = jb_obj(&jb), *to = jb_obj(&jb);
	const char *text;
	int rc;

	jb_add(&jb, r, "result", jb_str(&jb, adopted ? "committed" : "partial"));
	jb_add(&jb, r, "kind", jb_str(&jb, "supervisor"));
	jb_add(&jb, from, "pid", jb_int(&jb, from_pid));
	jb_add(&jb, from, "version", jb_str(&jb, from_version));
	jb_add(&jb, to, "pid", jb_int(&jb, getpid()));
	jb_add(&jb, to, "version", jb_str(&jb, BATON_VERSION));
	jb_add(&jb, r, "from", from);
	jb_add(&jb, r, "to", to);
	if (sup->active)
		jb_add(&jb, r, "worker_pid", jb_int(&jb, worker_pid(sup->active)));
	if (!adopted)
		jb_add(&jb, r, "reason", jb_str(&jb, "no worker was adopted: a fresh one started "
						   "(its sessions connect again)"));
	jb_add(&jb, o, "result", r);
	o = jb_done(&jb, o);
	text = o ? json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
						  JSON_C_TO_STRING_NOSLASHESCAPE) : NULL;
	rc = text && dprintf(client_fd, "%s\n", text) > 0 ? 0 : -EIO;
	json_object_put(o);
	close(client_fd);
	return rc;
}
