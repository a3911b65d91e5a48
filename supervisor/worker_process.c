/* supervisor/worker_process.c: see worker_process.h. */
#include "supervisor/worker_process.h"
#include "supervisor/custody.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/control.h"
#include "common/json_builder.h"
#include "common/log.h"
#include "common/frame.h"
#include "supervisor/orphans.h"

#define WORKER_SEND_TIMEOUT_MS 1000
#define WORKER_RECV_TIMEOUT_MS 1000

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434 /* same number on every architecture */
#endif

/* A question to the worker with one answer shared by all who wait for it
 * (STATUS_REQUEST -> STATUS, HEALTH_REQUEST -> HEALTH). */
enum worker_ask {
	ASK_STATUS,
	ASK_HEALTH,
	ASK_N,
};

struct waiter {
	union {
		worker_status_cb status;
		worker_health_cb health;
	} cb;
	void *arg;
};

/* Everyone waiting for the answer to the one outstanding request of a kind
 * (asked); they all share that answer. */
struct waiters {
	struct waiter *v;
	size_t n;
	bool asked;
};

struct worker {
	struct event_base *base;
	struct custody *custody; /* its sockets and checkpoint (custody.h), NULL: none */
	pid_t pid;
	int pidfd;               /* pidfd_open(pid) right after fork, or -1 */
	char *binary;
	int ctl;                 /* our end of the control socket, -1 once lost */
	struct event *ev_ctl;
	struct event *ev_kill;   /* SIGKILL deadline after EXIT / control loss */
	int kill_timeout_s;
	struct timespec started;

	worker_cb cb;
	void *cb_arg;

	Baton__Control__Ready *ready; /* owned, NULL before READY */
	Baton__Control__Status status; /* last STATUS (scalars + version) */
	char status_version[64];       /* status.version points here */
	bool status_seen;
	/* The last STATUS as unpacked, owned (NULL: none yet): kept whole
	 * for worker_networks_json() (its networks), and status.sasl_failures
	 * points into it. Replaced by the next STATUS, freed with the worker. */
	Baton__Control__Status *status_full;
	Baton__Control__Health *health; /* owned, last HEALTH, NULL before */
	worker_health_cb health_tap;
	void *health_tap_arg;
	char role[16];
	char config_sha[WORKER_CONFIG_SHA_HEX]; /* worker_config_sha() */
	/* state schema the next outgoing MIGRATE asks for (0: absent) */
	unsigned write_schema;

	struct waiters ask[ASK_N];
	/* RELOADs sent, oldest first: each gets the next RELOAD_RESULT (the
	 * worker answers every one, in order). cb NULL: cancelled, the
	 * answer is dropped. */
	struct reload_waiter {
		worker_reload_cb cb;
		void *arg;
	} *reloads;
	size_t nreloads;

	/* Adopted from a dead supervisor (orphans.h): not our child, its exit
	 * is seen on its pidfd (ev_pidfd), its wait status is not ours. */
	bool adopted;
	struct event *ev_pidfd;
	void (*adopted_exit)(void *arg, struct worker *w);
	void *adopted_exit_arg;

	bool exit_sent; /* EXIT sent: losing the control socket is expected */
	bool exited;
	int wstatus;
	char exit_text[96];

	int dispatching; /* >0 while a handler runs; worker_free is deferred */
	bool free_pending;
};

static void worker_ctl_lost(struct worker *w, const char *why);

static worker_edit_cb edit_cb;
static void *edit_arg;

void worker_set_edit_handler(worker_edit_cb cb, void *arg)
{
	edit_cb = cb;
	edit_arg = arg;
}

static void worker_emit(struct worker *w, enum worker_event ev, const void *msg)
{
	if (w->cb == NULL)
		return;
	w->dispatching++;
	w->cb(w, ev, msg, w->cb_arg);
	w->dispatching--;
}

/* Hand `msg` (a Status or Health of `kind`; NULL: no answer) to every
 * waiter of that kind. A callback may register a new waiter (its request
 * goes out as a fresh request, or fails at once when the control socket is
 * gone) or cancel others; both are safe because each waiter is taken out
 * before it is called. */
static void worker_answer_waiters(struct worker *w, enum worker_ask kind,
				  const void *msg)
{
	struct waiters *q = &w->ask[kind];
	size_t n = q->n;

	q->asked = false;
	/* Only the waiters present now get this answer. */
	while (n > 0 && q->n > 0) {
		struct waiter sw = q->v[0];

		memmove(&q->v[0], &q->v[1], (q->n - 1) * sizeof(q->v[0]));
		q->n--;
		n--;
		w->dispatching++;
		if (kind == ASK_STATUS)
			sw.cb.status(w, msg, sw.arg);
		else
			sw.cb.health(w, msg, sw.arg);
		w->dispatching--;
	}
}

/* The oldest RELOAD's answer (NULL: none will come). */
static void worker_answer_reload(struct worker *w,
				 const Baton__Control__ReloadResult *r)
{
	struct reload_waiter rw = w->reloads[0];

	memmove(&w->reloads[0], &w->reloads[1],
		(w->nreloads - 1) * sizeof(w->reloads[0]));
	w->nreloads--;
	if (rw.cb != NULL) {
		w->dispatching++;
		rw.cb(w, r, rw.arg);
		w->dispatching--;
	}
}

static void worker_fail_waiters(struct worker *w)
{
	while (w->nreloads > 0)
		worker_answer_reload(w, NULL);
	/* Callbacks may register new waiters; they fail too (ctl is gone). */
	for (int k = 0; k < ASK_N; k++) {
		while (w->ask[k].n > 0)
			worker_answer_waiters(w, (enum worker_ask)k, NULL);
		w->ask[k].asked = false;
	}
}

#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424 /* same number on every architecture */
#endif

/* SIGKILL through the pidfd when there is one: an adopted worker is not
 * our child, so once it died and its parent reaped it, its pid may name
 * another process; a pidfd never does. */
static void worker_sigkill(struct worker *w)
{
	if (w->exited || w->pid <= 0)
		return;
	if (w->pidfd >= 0 && syscall(SYS_pidfd_send_signal, w->pidfd, SIGKILL, NULL, 0) == 0)
		return;
	if (!w->adopted) /* our child: its pid is ours until we reap it */
		kill(w->pid, SIGKILL);
}

static void worker_on_kill_timer(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;

	if (!w->exited && w->pid > 0) {
		log_warn("worker", "pid %d did not exit in time: SIGKILL",
			 (int)w->pid);
		worker_sigkill(w);
	}
}

static void worker_arm_kill(struct worker *w, int timeout_s)
{
	struct timeval tv = { .tv_sec = timeout_s > 0 ? timeout_s : 1 };

	if (w->exited || evtimer_pending(w->ev_kill, NULL))
		return;
	evtimer_add(w->ev_kill, &tv);
}

static void worker_handle(struct worker *w, struct frame_msg *m)
{
	switch (m->type) {
	case CONTROL_READY: {
		Baton__Control__Ready *r =
			baton__control__ready__unpack(NULL, m->len, m->data);

		if (r == NULL || w->ready != NULL) {
			if (r != NULL)
				baton__control__ready__free_unpacked(r, NULL);
			worker_ctl_lost(w, r == NULL ? "malformed READY"
						      : "second READY");
			return;
		}
		w->ready = r;
		log_info("worker", "pid %d ready: version %s, schema %u-%u, preflight %s",
			 (int)w->pid, r->version, r->schema_min, r->schema_max,
			 r->preflight_ok ? "ok" : "FAILED");
		for (size_t i = 0; i < r->n_problems; i++)
			log_error("worker", "pid %d preflight: %s", (int)w->pid,
				  r->problems[i]);
		worker_emit(w, WORKER_READY, r);
		return;
	}
	case CONTROL_PROGRESS: {
		Baton__Control__Progress *p =
			baton__control__progress__unpack(NULL, m->len, m->data);

		if (p == NULL) {
			worker_ctl_lost(w, "malformed PROGRESS");
			return;
		}
		worker_emit(w, WORKER_PROGRESS, p);
		baton__control__progress__free_unpacked(p, NULL);
		return;
	}
	case CONTROL_MIGRATION_RESULT: {
		Baton__Control__MigrationResult *r =
			baton__control__migration_result__unpack(NULL, m->len,
								 m->data);

		if (r == NULL) {
			worker_ctl_lost(w, "malformed MIGRATION_RESULT");
			return;
		}
		worker_emit(w, WORKER_RESULT, r);
		baton__control__migration_result__free_unpacked(r, NULL);
		return;
	}
	case CONTROL_STATUS: {
		Baton__Control__Status *s =
			baton__control__status__unpack(NULL, m->len, m->data);

		if (s == NULL) {
			worker_ctl_lost(w, "malformed STATUS");
			return;
		}
		w->status.sessions = s->sessions;
		w->status.connections = s->connections;
		w->status.has_clients = s->has_clients;
		w->status.clients = s->clients;
		w->status.has_upstreams_connected = s->has_upstreams_connected;
		w->status.upstreams_connected = s->upstreams_connected;
		w->status.has_loop_lag_ms = s->has_loop_lag_ms;
		w->status.loop_lag_ms = s->loop_lag_ms;
		w->status.has_upstreams_waiting = s->has_upstreams_waiting;
		w->status.upstreams_waiting = s->upstreams_waiting;
		w->status.has_tls_handshakes = s->has_tls_handshakes;
		w->status.tls_handshakes = s->tls_handshakes;
		w->status.has_pid = s->has_pid;
		w->status.pid = s->pid;
		if (s->version != NULL) {
			snprintf(w->status_version, sizeof(w->status_version),
				 "%s", s->version);
			w->status.version = w->status_version;
		}
		w->status.has_sasl_failing = s->has_sasl_failing;
		w->status.sasl_failing = s->sasl_failing;
		w->status.n_sasl_failures = s->n_sasl_failures;
		w->status.sasl_failures = s->sasl_failures;
		w->status.store = s->store; /* in status_full, kept below */
		w->status_seen = true;
		if (w->status_full != NULL)
			baton__control__status__free_unpacked(w->status_full, NULL);
		w->status_full = s; /* owned now: its networks, the list above */
		worker_answer_waiters(w, ASK_STATUS, &w->status);
		return;
	}
	case CONTROL_HEALTH: {
		Baton__Control__Health *h =
			baton__control__health__unpack(NULL, m->len, m->data);

		if (h == NULL) {
			worker_ctl_lost(w, "malformed HEALTH");
			return;
		}
		/* Kept until the next answer: metrics read it at any time. */
		if (w->health != NULL)
			baton__control__health__free_unpacked(w->health, NULL);
		w->health = h;
		if (w->health_tap != NULL) {
			w->dispatching++;
			w->health_tap(w, h, w->health_tap_arg);
			w->dispatching--;
		}
		worker_answer_waiters(w, ASK_HEALTH, h);
		return;
	}
	case CONTROL_RELOAD_RESULT: {
		Baton__Control__ReloadResult *r =
			baton__control__reload_result__unpack(NULL, m->len, m->data);

		if (r == NULL) {
			worker_ctl_lost(w, "malformed RELOAD_RESULT");
			return;
		}
		if (w->nreloads == 0)
			log_warn("worker", "pid %d sent a RELOAD_RESULT nobody asked for (ignored)",
				 (int)w->pid);
		else
			worker_answer_reload(w, r);
		baton__control__reload_result__free_unpacked(r, NULL);
		return;
	}
	case CONTROL_NETWORK_EDIT: {
		Baton__Control__NetworkEdit *e =
			baton__control__network_edit__unpack(NULL, m->len, m->data);

		if (e == NULL) {
			worker_ctl_lost(w, "malformed NETWORK_EDIT");
			return;
		}
		if (edit_cb != NULL) {
			w->dispatching++;
			edit_cb(w, e, edit_arg);
			w->dispatching--;
		} else {
			(void)worker_send_network_edit_result(w, e->id, false,
							      "the supervisor takes no edits now");
		}
		baton__control__network_edit__free_unpacked(e, NULL);
		return;
	}
	case CONTROL_CUSTODY:
		if (w->custody == NULL && (w->custody = custody_new()) == NULL) {
			log_error("custody", "out of memory: pid %d's sockets not held", (int)w->pid);
			return;
		}
		if (custody_handle(w->custody, m) < 0)
			worker_ctl_lost(w, "malformed CUSTODY");
		return;
	default:
		log_warn("worker", "pid %d sent unexpected message type %u (ignored)",
			 (int)w->pid, m->type);
		return;
	}
}

/* Read and handle everything queued. Callers hold w->dispatching, so a
 * worker_free() from a handler is only marked; they free at their exit. */
static void worker_read_ctl(struct worker *w)
{
	while (w->ctl >= 0 && !w->free_pending) {
		struct frame_msg m = { 0 };
		int r = frame_recv_lossy(w->ctl, &m, WORKER_RECV_TIMEOUT_MS);

		if (r == -EAGAIN || r == -EINTR)
			break;
		if (r < 0) {
			worker_ctl_lost(w, r == -ECONNRESET ? "closed by worker"
							    : strerror(-r));
			break;
		}
		/* fds lost at our fd limit: only a CUSTODY message's are
		 * expendable copies (custody_handle() counts them) */
		if (m.fds_lost > 0 && m.type != CONTROL_CUSTODY) {
			frame_msg_clear(&m);
			worker_ctl_lost(w, "fds lost: the supervisor is at its fd limit");
			break;
		}
		worker_handle(w, &m);
		frame_msg_clear(&m); /* closes fds no message may carry here */
	}
}

/* libevent entry point: the only place where a deferred worker_free()
 * completes (nothing below us still uses w). */
static void worker_on_ctl(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;

	w->dispatching++;
	worker_read_ctl(w);
	w->dispatching--;
	if (w->dispatching == 0 && w->free_pending)
		worker_free(w);
}

/* The control socket is gone or spoke nonsense: close it (a worker exits
 * when its control socket reaches EOF) and make sure the process follows. */
static void worker_ctl_lost(struct worker *w, const char *why)
{
	if (w->ctl < 0)
		return;
	if (w->exit_sent)
		log_debug("worker", "pid %d closed its control socket (leaving)",
			  (int)w->pid);
	else if (!w->exited)
		log_warn("worker", "pid %d control socket lost: %s", (int)w->pid,
			 why);
	event_del(w->ev_ctl);
	close(w->ctl);
	w->ctl = -1;
	worker_arm_kill(w, w->kill_timeout_s);
	worker_fail_waiters(w);
}

static void worker_child(int ctl_child, const char *binary,
			 const char *config_path, bool target)
{
	char *argv[6];
	int i = 0;
	sigset_t none;

	/* fd 3 is the only fd we pass on purpose; everything else is CLOEXEC. */
	if (ctl_child == CONTROL_FD) {
		int fl = fcntl(CONTROL_FD, F_GETFD);

		fcntl(CONTROL_FD, F_SETFD, fl & ~FD_CLOEXEC);
	} else if (dup2(ctl_child, CONTROL_FD) < 0) {
		_exit(127);
	}
	/* SIG_IGN survives exec; the worker expects default dispositions. */
	signal(SIGPIPE, SIG_DFL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	/* Own process group: a terminal's ^C reaches only the supervisor, which
	 * then stops workers in order. */
	setpgid(0, 0);

	argv[i++] = (char *)binary;
	argv[i++] = "-c";
	argv[i++] = (char *)config_path;
	argv[i++] = "--worker";
	if (target)
		argv[i++] = "--target";
	argv[i] = NULL;
	execv(binary, argv);
	fprintf(stderr, "baton-supervisor: exec %s: %s\n", binary,
		strerror(errno));
	_exit(127);
}

struct worker *worker_spawn(struct event_base *base, const char *binary,
			    const char *config_path, bool target,
			    int kill_timeout_s, int *err)
{
	struct worker *w = NULL;
	int sv[2] = { -1, -1 };
	int r;
	pid_t pid;

	w = calloc(1, sizeof(*w));
	if (w == NULL) {
		r = -ENOMEM;
		goto out;
	}
	w->base = base;
	w->ctl = -1;
	w->pidfd = -1;
	w->kill_timeout_s = kill_timeout_s;
	baton__control__status__init(&w->status);
	snprintf(w->role, sizeof(w->role), "%s", target ? "target" : "active");
	w->binary = strdup(binary);
	w->ev_kill = evtimer_new(base, worker_on_kill_timer, w);
	if (w->binary == NULL || w->ev_kill == NULL) {
		r = -ENOMEM;
		goto out;
	}
	r = frame_socketpair(sv);
	if (r < 0)
		goto out;
	pid = fork();
	if (pid < 0) {
		r = -errno;
		goto out;
	}
	if (pid == 0)
		worker_child(sv[1], binary, config_path, target); /* no return */

	close(sv[1]);
	sv[1] = -1;
	w->pid = pid;
	/* Now, before anything can reap the child, so the pidfd surely refers
	 * to our worker (a migration source uses it to wait for this worker's
	 * death; pidfd_open() from there could hit a recycled pid). pidfds are
	 * always CLOEXEC. Failure (kernel < 5.3, seccomp) only costs that
	 * guarantee: MIGRATE then goes without it and the source falls back. */
	w->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (w->pidfd < 0)
		log_debug("worker", "pid %d: pidfd_open: %s", (int)pid,
			  strerror(errno));
	w->ctl = sv[0];
	sv[0] = -1; /* transferred to w */
	clock_gettime(CLOCK_MONOTONIC, &w->started);
	fcntl(w->ctl, F_SETFL, fcntl(w->ctl, F_GETFL) | O_NONBLOCK);
	w->ev_ctl = event_new(base, w->ctl, EV_READ | EV_PERSIST, worker_on_ctl, w);
	if (w->ev_ctl == NULL || event_add(w->ev_ctl, NULL) < 0) {
		/* The child is running: keep w so it gets reaped; losing the
		 * control socket makes it exit. */
		log_error("worker", "pid %d: cannot watch control socket", (int)pid);
		if (w->ev_ctl == NULL)
			w->ev_ctl = event_new(base, -1, 0, worker_on_ctl, w);
		worker_ctl_lost(w, "event setup failed");
	}
	log_info("worker", "spawned pid %d: %s -c %s --worker%s", (int)pid,
		 binary, config_path, target ? " --target" : "");
	r = 0;
out:
	if (sv[0] >= 0)
		close(sv[0]);
	if (sv[1] >= 0)
		close(sv[1]);
	if (r < 0) {
		worker_free(w);
		w = NULL;
		if (err)
			*err = r;
	}
	return w;
}

static void worker_on_pidfd(evutil_socket_t fd, short what, void *arg);

struct worker *worker_adopt(struct event_base *base, struct orphan *o,
			    int kill_timeout_s)
{
	struct worker *w = calloc(1, sizeof(*w));

	if (w == NULL)
		return NULL;
	w->base = base;
	w->ctl = -1;
	w->pidfd = -1;
	w->kill_timeout_s = kill_timeout_s;
	w->adopted = true;
	baton__control__status__init(&w->status);
	snprintf(w->role, sizeof(w->role), "active");
	w->ev_kill = evtimer_new(base, worker_on_kill_timer, w);
	w->ev_ctl = event_new(base, o->ctl, EV_READ | EV_PERSIST, worker_on_ctl, w);
	/* Not our child: no SIGCHLD, so its pidfd says when it is gone. */
	w->ev_pidfd = o->pidfd >= 0 ? event_new(base, o->pidfd, EV_READ, worker_on_pidfd, w)
				    : NULL;
	if (w->ev_kill == NULL || w->ev_ctl == NULL ||
	    (o->pidfd >= 0 && w->ev_pidfd == NULL) || event_add(w->ev_ctl, NULL) < 0 ||
	    (w->ev_pidfd && event_add(w->ev_pidfd, NULL) < 0)) {
		if (w->ev_pidfd)
			event_free(w->ev_pidfd);
		w->ev_pidfd = NULL;
		worker_free(w);
		return NULL;
	}
	/* taken from o */
	w->pid = o->pid;
	w->ctl = o->ctl;
	w->pidfd = o->pidfd;
	w->binary = o->binary;
	w->ready = o->ready;
	o->ctl = o->pidfd = -1;
	o->binary = NULL;
	o->ready = NULL;
	fcntl(w->ctl, F_SETFL, fcntl(w->ctl, F_GETFL) | O_NONBLOCK);
	clock_gettime(CLOCK_MONOTONIC, &w->started);
	return w;
}

bool worker_is_adopted(const struct worker *w)
{
	return w->adopted;
}

void worker_free(struct worker *w)
{
	if (w == NULL)
		return;
	if (w->dispatching > 0) {
		w->free_pending = true;
		return;
	}
	if (w->ev_ctl)
		event_free(w->ev_ctl);
	if (w->ctl >= 0)
		close(w->ctl);
	if (w->ev_kill)
		event_free(w->ev_kill);
	if (w->ev_pidfd)
		event_free(w->ev_pidfd);
	if (w->pidfd >= 0)
		close(w->pidfd);
	if (w->ready)
		baton__control__ready__free_unpacked(w->ready, NULL);
	if (w->health)
		baton__control__health__free_unpacked(w->health, NULL);
	if (w->status_full)
		baton__control__status__free_unpacked(w->status_full, NULL);
	for (int k = 0; k < ASK_N; k++)
		free(w->ask[k].v);
	free(w->reloads);
	free(w->binary);
	custody_free(w->custody);
	free(w);
}

struct custody *worker_custody(const struct worker *w)
{
	return w->custody;
}

struct custody *worker_take_custody(struct worker *w)
{
	struct custody *c = w->custody;

	w->custody = NULL;
	return c;
}

void worker_set_handler(struct worker *w, worker_cb cb, void *arg)
{
	w->cb = cb;
	w->cb_arg = arg;
}

pid_t worker_pid(const struct worker *w) { return w->pid; }
int worker_pidfd(const struct worker *w) { return w->pidfd; }
const char *worker_binary(const struct worker *w) { return w->binary; }
bool worker_is_ready(const struct worker *w) { return w->ready != NULL; }
bool worker_has_exited(const struct worker *w) { return w->exited; }
const char *worker_exit_status(const struct worker *w) { return w->exit_text; }
int worker_exit_code(const struct worker *w) { return w->wstatus; }
const char *worker_role(const struct worker *w) { return w->role; }

const Baton__Control__Ready *worker_ready_info(const struct worker *w)
{
	return w->ready;
}

void worker_set_write_schema(struct worker *src, const struct worker *dst)
{
	const Baton__Control__Ready *rs = src->ready, *rt = dst->ready;

	src->write_schema = 0;
	if (rs != NULL && rt != NULL)
		src->write_schema = rs->schema_max < rt->schema_max ? rs->schema_max
								     : rt->schema_max;
}

const char *worker_version(const struct worker *w)
{
	return w->ready && w->ready->version ? w->ready->version : "";
}

const char *worker_config_sha(const struct worker *w)
{
	return w->config_sha;
}

void worker_set_config_sha(struct worker *w, const char *sha)
{
	snprintf(w->config_sha, sizeof(w->config_sha), "%s", sha ? sha : "");
}

double worker_uptime_s(const struct worker *w)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - w->started.tv_sec) +
	       (double)(now.tv_nsec - w->started.tv_nsec) / 1e9;
}

void worker_set_role(struct worker *w, const char *role)
{
	snprintf(w->role, sizeof(w->role), "%s", role);
}

const Baton__Control__Status *worker_last_status(const struct worker *w)
{
	return &w->status;
}

bool worker_has_status(const struct worker *w)
{
	return w->status_seen;
}

const Baton__Control__Health *worker_last_health(const struct worker *w)
{
	return w->health;
}

void worker_set_health_tap(struct worker *w, worker_health_cb cb, void *arg)
{
	w->health_tap = cb;
	w->health_tap_arg = arg;
}

static int worker_send_timeout(struct worker *w, enum control_type type,
			       const ProtobufCMessage *msg, const int *fds,
			       size_t nfds, int timeout_ms)
{
	int r;

	if (w->ctl < 0)
		return -ENOTCONN;
	r = control_send(w->ctl, type, msg, fds, nfds, timeout_ms);
	if (r < 0 && r != -ETIMEDOUT)
		worker_ctl_lost(w, strerror(-r));
	return r;
}

static int worker_send(struct worker *w, enum control_type type,
		       const ProtobufCMessage *msg, const int *fds, size_t nfds)
{
	return worker_send_timeout(w, type, msg, fds, nfds,
				   WORKER_SEND_TIMEOUT_MS);
}

int worker_send_listeners(struct worker *w, const int *fds,
			  const char *const *names, size_t n)
{
	Baton__Control__Listeners m = BATON__CONTROL__LISTENERS__INIT;

	m.n_names = n;
	m.names = (char **)names;
	return worker_send(w, CONTROL_LISTENERS, &m.base, fds, n);
}

int worker_send_accept(struct worker *w, bool on)
{
	Baton__Control__Accept m = BATON__CONTROL__ACCEPT__INIT;

	m.on = on;
	return worker_send(w, CONTROL_ACCEPT, &m.base, NULL, 0);
}

int worker_send_migrate(struct worker *w, bool outgoing, pid_t peer,
			int peer_pidfd, unsigned timeout_ms,
			unsigned chunk_sessions, int channel_fd)
{
	return worker_send_move(w, outgoing, peer, peer_pidfd, timeout_ms,
				chunk_sessions, channel_fd, NULL);
}

int worker_send_peer(struct worker *w, int link_fd, pid_t peer)
{
	Baton__Control__Peer m = BATON__CONTROL__PEER__INIT;

	m.has_peer_pid = peer > 0;
	m.peer_pid = (uint32_t)peer;
	return worker_send(w, CONTROL_PEER, &m.base, link_fd >= 0 ? &link_fd : NULL,
			   link_fd >= 0 ? 1 : 0);
}

int worker_send_move(struct worker *w, bool outgoing, pid_t peer,
		     int peer_pidfd, unsigned timeout_ms, unsigned chunk_sessions,
		     int channel_fd, const Baton__Control__Selector *sel)
{
	Baton__Control__Migrate m = BATON__CONTROL__MIGRATE__INIT;
	/* Order is the contract (proto/control.proto): channel first. The
	 * kernel gives the worker its own copy of the pidfd; ours stays with
	 * the peer's worker object. */
	int fds[2] = { channel_fd, peer_pidfd };
	size_t nfds = outgoing && peer_pidfd >= 0 ? 2 : 1;

	m.outgoing = outgoing;
	m.has_peer_pid = true;
	m.peer_pid = (uint32_t)peer;
	m.has_timeout_ms = true;
	m.timeout_ms = timeout_ms;
	if (outgoing && chunk_sessions > 0) {
		m.has_chunk_sessions = true;
		m.chunk_sessions = chunk_sessions;
	}
	m.select = (Baton__Control__Selector *)sel;
	if (outgoing && w->write_schema > 0) {
		m.has_schema = true;
		m.schema = w->write_schema;
	}
	return worker_send(w, CONTROL_MIGRATE, &m.base, fds, nfds);
}

int worker_send_exit(struct worker *w)
{
	Baton__Control__Exit m = BATON__CONTROL__EXIT__INIT;

	w->exit_sent = true;
	return worker_send(w, CONTROL_EXIT, &m.base, NULL, 0);
}

/* worker_request_status / worker_request_health: see worker_process.h. `cb` is
 * the member of the union that `kind` names. */
static int worker_request(struct worker *w, enum worker_ask kind,
			  struct waiter cb)
{
	struct waiters *q = &w->ask[kind];
	struct waiter *nw;
	int r;

	for (size_t i = 0; i < q->n; i++) {
		bool same = kind == ASK_STATUS
				    ? q->v[i].cb.status == cb.cb.status
				    : q->v[i].cb.health == cb.cb.health;

		if (same && q->v[i].arg == cb.arg)
			return 0; /* already waiting: called once */
	}
	if (w->ctl < 0)
		return -ENOTCONN;
	nw = realloc(q->v, (q->n + 1) * sizeof(*nw));
	if (nw == NULL)
		return -ENOMEM;
	q->v = nw;
	if (!q->asked) {
		/* Never wait for room: a worker that does not read its control
		 * socket must not stall the loop. A full socket means no
		 * answer. Sent before the waiter is registered, so a send
		 * that loses the control socket cannot call it. */
		if (kind == ASK_STATUS) {
			Baton__Control__StatusRequest m =
				BATON__CONTROL__STATUS_REQUEST__INIT;

			r = worker_send_timeout(w, CONTROL_STATUS_REQUEST,
						&m.base, NULL, 0, 0);
		} else {
			Baton__Control__HealthRequest m =
				BATON__CONTROL__HEALTH_REQUEST__INIT;

			r = worker_send_timeout(w, CONTROL_HEALTH_REQUEST,
						&m.base, NULL, 0, 0);
		}
		if (r < 0)
			return r;
		q->asked = true;
	}
	q->v[q->n++] = cb;
	return 0;
}

static void worker_cancel(struct worker *w, enum worker_ask kind, void *arg)
{
	/* All waiters share one answer, so order does not matter: drop them.
	 * The request stays outstanding; its answer is still stored. */
	struct waiters *q = &w->ask[kind];
	size_t j = 0;

	for (size_t i = 0; i < q->n; i++)
		if (q->v[i].arg != arg)
			q->v[j++] = q->v[i];
	q->n = j;
}

int worker_request_status(struct worker *w, worker_status_cb cb, void *arg)
{
	struct waiter sw = { .cb.status = cb, .arg = arg };

	return worker_request(w, ASK_STATUS, sw);
}

void worker_cancel_status(struct worker *w, void *arg)
{
	worker_cancel(w, ASK_STATUS, arg);
}

int worker_request_health(struct worker *w, worker_health_cb cb, void *arg)
{
	struct waiter sw = { .cb.health = cb, .arg = arg };

	return worker_request(w, ASK_HEALTH, sw);
}

void worker_cancel_health(struct worker *w, void *arg)
{
	worker_cancel(w, ASK_HEALTH, arg);
}

int worker_send_network_edit_result(struct worker *w, uint64_t id, bool ok,
				    const char *message)
{
	Baton__Control__NetworkEditResult m = BATON__CONTROL__NETWORK_EDIT_RESULT__INIT;

	m.id = id;
	m.ok = ok;
	m.message = (char *)message;
	return worker_send(w, CONTROL_NETWORK_EDIT_RESULT, &m.base, NULL, 0);
}

int worker_request_reload(struct worker *w, worker_reload_cb cb, void *arg)
{
	Baton__Control__Reload m = BATON__CONTROL__RELOAD__INIT;
	struct reload_waiter *v;
	int r;

	if (w->ctl < 0)
		return -ENOTCONN;
	v = realloc(w->reloads, (w->nreloads + 1) * sizeof(*v));
	if (v == NULL)
		return -ENOMEM;
	w->reloads = v;
	/* Sent before the waiter is registered, as in worker_request(). */
	r = worker_send_timeout(w, CONTROL_RELOAD, &m.base, NULL, 0, 0);
	if (r < 0)
		return r;
	w->reloads[w->nreloads++] = (struct reload_waiter){ .cb = cb, .arg = arg };
	return 0;
}

void worker_cancel_reload(struct worker *w, void *arg)
{
	for (size_t i = 0; i < w->nreloads; i++)
		if (w->reloads[i].arg == arg)
			w->reloads[i].cb = NULL;
}

void worker_stop(struct worker *w, int timeout_s)
{
	if (w->exited)
		return;
	if (w->ctl >= 0 && worker_send_exit(w) < 0)
		worker_ctl_lost(w, "EXIT could not be sent");
	worker_arm_kill(w, timeout_s);
}

void worker_kill(struct worker *w)
{
	worker_sigkill(w);
}

static void worker_exited(struct worker *w);

void worker_set_adopted_exit(struct worker *w, void (*cb)(void *arg, struct worker *w),
			     void *arg)
{
	w->adopted_exit = cb;
	w->adopted_exit_arg = arg;
}

static void worker_on_pidfd(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;

	if (w->exited)
		return;
	w->exited = true;
	w->wstatus = 0;
	snprintf(w->exit_text, sizeof(w->exit_text),
		 "exited (adopted: its exit status went to its own parent)");
	if (w->adopted_exit)
		w->adopted_exit(w->adopted_exit_arg, w); /* frees w after worker_exited */
	else
		worker_exited(w);
}

void worker_reaped_adopted(struct worker *w)
{
	worker_exited(w);
}

void worker_reaped(struct worker *w, int wstatus)
{
	w->exited = true;
	w->wstatus = wstatus;
	if (WIFEXITED(wstatus))
		snprintf(w->exit_text, sizeof(w->exit_text), "exit status %d",
			 WEXITSTATUS(wstatus));
	else if (WIFSIGNALED(wstatus))
		snprintf(w->exit_text, sizeof(w->exit_text),
			 "killed by signal %d (%s)%s", WTERMSIG(wstatus),
			 strsignal(WTERMSIG(wstatus)),
			 WCOREDUMP(wstatus) ? ", core dumped" : "");
	else
		snprintf(w->exit_text, sizeof(w->exit_text), "wait status 0x%x",
			 wstatus);
	worker_exited(w);
}

static void worker_exited(struct worker *w)
{
	evtimer_del(w->ev_kill);
	/* Held across the handlers: a worker_free() from one of them is only
	 * marked, and the caller's worker_free() (worker_process.h: right after this
	 * returns) completes it. */
	w->dispatching++;
	/* Read what it said before dying (a MIGRATION_RESULT may be queued). */
	worker_read_ctl(w);
	worker_ctl_lost(w, "process exited");
	evtimer_del(w->ev_kill);
	if (!w->free_pending)
		worker_emit(w, WORKER_EXITED, NULL);
	w->dispatching--;
}

struct json_object *worker_networks_json(const struct worker *w)
{
	struct jb jb_ = JB_INIT, *jb = &jb_;
	struct json_object *a = jb_arr(jb);
	const Baton__Control__Status *st = w->status_full;

	for (size_t i = 0; st != NULL && i < st->n_networks; i++) {
		const Baton__Control__NetworkStatus *n = st->networks[i];
		struct json_object *o = jb_obj(jb);

		jb_add(jb, o, "network", jb_str(jb, n->network));
		jb_add(jb, o, "sessions", jb_i64(jb, n->sessions));
		jb_add(jb, o, "connected", jb_i64(jb, n->connected));
		jb_add(jb, o, "waiting", jb_i64(jb, n->waiting));
		jb_add(jb, o, "capacity", jb_i64(jb, n->capacity));
		jb_add(jb, o, "addresses", jb_i64(jb, n->addresses));
		jb_add(jb, o, "max_connections_per_ip", jb_i64(jb, n->max_per_addr));
		jb_add(jb, o, "throttled_addresses", jb_i64(jb, n->throttled));
		jb_add(jb, o, "wait_reason", jb_str(jb, n->reason ? n->reason : "none"));
		jb_add(jb, o, "advice", n->advice ? jb_str(jb, n->advice) : NULL);
		jb_push(jb, a, o);
	}
	return jb_done(jb, a);
}
