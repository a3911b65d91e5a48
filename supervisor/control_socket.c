/* supervisor/control_socket.c: see control_socket.h. */
#include "supervisor/control_socket.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <json-c/json.h>

#include "baton_version.h"
#include "common/json_builder.h"
#include "common/log.h"
#include "supervisor/canary.h"
#include "supervisor/supervisor.h"

#define CONTROL_MAX_REQUEST (64 * 1024)
#define CONTROL_MAX_CLIENTS 64
#define CONTROL_REQUEST_TIMEOUT_S 10 /* connect .. whole request line */
#define CONTROL_WRITE_TIMEOUT_S 30   /* pending output not taken for this long */
#define CONTROL_ACCEPT_PAUSE_S 1     /* after EMFILE/ENFILE */
#define CONTROL_REFUSE_LOG_S 10      /* at most one over-the-cap log line per */

struct control_client;

struct control_socket {
	struct event_base *base;
	struct supervisor *sup;
	char *path;
	int fd;
	struct event *ev_accept;
	/* Out of fds: accepting again at once would spin (the connection stays
	 * queued, the listener stays readable), so accepting pauses. */
	struct event *ev_accept_resume;
	struct control_client *clients;
	size_t nclients;
	time_t refuse_logged;    /* CLOCK_MONOTONIC s of the last over-cap log */
	unsigned long refused;   /* over-cap connections not logged yet */
};

struct control_client {
	struct control_socket *cs;
	struct bufferevent *bev;
	struct event *ev_request; /* request deadline, until got_request */
	pid_t peer_pid;
	int got_request;
	int replied;   /* final reply queued: free once flushed */
	struct control_client *next;
};

static void control_client_free(struct control_client *c)
{
	struct control_client **pp;

	for (pp = &c->cs->clients; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	c->cs->nclients--;
	/* Whatever it asked for continues without it. */
	supervisor_detach(c->cs->sup, c);
	if (c->ev_request)
		event_free(c->ev_request);
	if (c->bev)
		bufferevent_free(c->bev); /* closes the fd */
	free(c);
}

static void control_client_reply(struct json_object *msg, int final, void *arg)
{
	struct control_client *c = arg;
	struct evbuffer *out = bufferevent_get_output(c->bev);
	const char *text;

	if (c->replied)
		return;
	/* msg NULL: the reply could not be built (json_builder.h). */
	text = msg ? json_object_to_json_string_ext(msg, JSON_C_TO_STRING_PLAIN |
							 JSON_C_TO_STRING_NOSLASHESCAPE) : NULL;
	if (text == NULL) {
		log_error("control", "pid %d: reply not sent: out of memory", (int)c->peer_pid);
		text = "{\"result\":{\"error\":\"out of memory\"}}";
	}
	evbuffer_add_printf(out, "%s\n", text);
	if (final)
		c->replied = 1;
}

static void control_client_reply_cb(struct json_object *msg, bool final, void *arg)
{
	control_client_reply(msg, final, arg);
}

static void control_client_error(struct control_client *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void control_client_error(struct control_client *c, const char *fmt, ...)
{
	struct jb jb = JB_INIT;
	struct json_object *o = jb_obj(&jb), *r = jb_obj(&jb);
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	log_warn("control", "pid %d: %s", (int)c->peer_pid, buf);
	jb_add(&jb, r, "error", jb_str(&jb, buf));
	jb_add(&jb, o, "result", r);
	o = jb_done(&jb, o);
	control_client_reply(o, 1, c);
	json_object_put(o);
}

static bool control_request_force(struct json_object *req);

/* upgrade-supervisor to the binary already running: nothing to do. */
static void control_client_unchanged(struct control_client *c, const char *reason)
{
	struct jb jb = JB_INIT;
	struct json_object *o = jb_obj(&jb), *r = jb_obj(&jb);

	jb_add(&jb, r, "result", jb_str(&jb, "unchanged"));
	jb_add(&jb, r, "kind", jb_str(&jb, "supervisor"));
	jb_add(&jb, r, "reason", jb_str(&jb, reason));
	jb_add(&jb, r, "pid", jb_int(&jb, getpid()));
	jb_add(&jb, r, "version", jb_str(&jb, BATON_VERSION));
	jb_add(&jb, o, "result", r);
	o = jb_done(&jb, o);
	control_client_reply(o, 1, c);
	json_object_put(o);
}

/* A final {"result":{"result":"refused","kind":KIND,"reason":...}}. */
static void control_client_refused(struct control_client *c, const char *kind,
				   const char *reason)
{
	struct jb jb = JB_INIT;
	struct json_object *o = jb_obj(&jb), *r = jb_obj(&jb);

	log_warn("control", "pid %d: refused: %s", (int)c->peer_pid, reason);
	jb_add(&jb, r, "result", jb_str(&jb, "refused"));
	jb_add(&jb, r, "kind", jb_str(&jb, kind));
	jb_add(&jb, r, "reason", jb_str(&jb, reason));
	jb_add(&jb, o, "result", r);
	o = jb_done(&jb, o);
	control_client_reply(o, 1, c);
	json_object_put(o);
}

/* Percentages travel as numbers 0..100 (fractions allowed); the canary
 * works in hundredths. -1: absent or out of range. */
static int control_percent_x100(struct json_object *req, const char *key)
{
	struct json_object *v;
	double p;

	if (!json_object_object_get_ex(req, key, &v) ||
	    !(json_object_is_type(v, json_type_double) ||
	      json_object_is_type(v, json_type_int)))
		return -1;
	p = json_object_get_double(v);
	if (!(p > 0) || p > 100)
		return -1;
	return (int)(p * 100 + 0.5);
}

/* The canary requests (canary.h; batonctl's `canary` and `upgrade
 * --canary`). Returns false after replying with an error. */
static bool control_canary_plan(struct control_client *c, struct json_object *req,
				struct canary_plan *plan, bool one_command)
{
	struct json_object *v;
	int pct;

	memset(plan, 0, sizeof(*plan));
	plan->force = control_request_force(req);
	if (!json_object_object_get_ex(req, "binary", &v) ||
	    !json_object_is_type(v, json_type_string) ||
	    snprintf(plan->binary, sizeof(plan->binary), "%s",
		     json_object_get_string(v)) >= (int)sizeof(plan->binary)) {
		control_client_error(c, "a canary needs \"binary\": an absolute path");
		return false;
	}
	if (json_object_object_get_ex(req, "bake", &v)) {
		int64_t b = json_object_get_int64(v);

		if (b < 0 || b > 7 * 86400) {
			control_client_error(c, "bake: expected 0..604800 seconds");
			return false;
		}
		plan->bake_s = (int)b;
	} else if (one_command) {
		plan->bake_s = -1; /* the config's [canary] bake */
	}
	if (one_command) {
		plan->auto_promote = true;
		pct = control_percent_x100(req, "canary");
		if (pct < 0) {
			control_client_error(c, "upgrade --canary needs a percentage in (0, 100]");
			return false;
		}
		/* --canary P is the first step; --steps are the ones it grows
		 * through (those not above P add nothing). */
		plan->steps[plan->nsteps++] = (uint32_t)pct;
		if (json_object_object_get_ex(req, "steps", &v) &&
		    json_object_is_type(v, json_type_array)) {
			size_t n = json_object_array_length(v);

			if (n == 0 || n >= CANARY_MAX_STEPS) {
				control_client_error(c, "steps: 1 to %d percentages", CANARY_MAX_STEPS - 1);
				return false;
			}
			for (size_t i = 0; i < n; i++) {
				double p = json_object_get_double(json_object_array_get_idx(v, i));
				uint32_t x = (uint32_t)(p * 100 + 0.5);

				if (!(p > 0) || p > 100) {
					control_client_error(c, "steps: percentages in (0, 100]");
					return false;
				}
				if (x > plan->steps[plan->nsteps - 1])
					plan->steps[plan->nsteps++] = x;
			}
		}
		return true;
	}
	pct = control_percent_x100(req, "percent");
	if (pct > 0)
		plan->percent_x100 = (uint32_t)pct;
	if (json_object_object_get_ex(req, "network", &v) &&
	    json_object_is_type(v, json_type_string))
		snprintf(plan->network, sizeof(plan->network), "%s",
			 json_object_get_string(v));
	if (json_object_object_get_ex(req, "users", &v) &&
	    json_object_is_type(v, json_type_array)) {
		size_t n = json_object_array_length(v);

		if (n > CANARY_MAX_USERS) {
			control_client_error(c, "users: at most %d", CANARY_MAX_USERS);
			return false;
		}
		plan->users = calloc(n + 1, sizeof(char *));
		if (plan->users == NULL) {
			control_client_error(c, "out of memory");
			return false;
		}
		for (size_t i = 0; i < n; i++) {
			struct json_object *u = json_object_array_get_idx(v, i);

			if (json_object_is_type(u, json_type_string))
				plan->users[plan->nusers++] = (char *)json_object_get_string(u);
		}
	}
	if (plan->percent_x100 == 0 && plan->nusers == 0 && plan->network[0] == '\0') {
		free(plan->users);
		plan->users = NULL;
		control_client_error(c, "canary start needs --percent P, --users U1,U2 or --network NAME");
		return false;
	}
	return true;
}

/* "force": true (upgrade, rollback); anything else is false. */
static bool control_request_force(struct json_object *req)
{
	struct json_object *v;

	return json_object_object_get_ex(req, "force", &v) &&
	       json_object_is_type(v, json_type_boolean) &&
	       json_object_get_boolean(v);
}

static void control_client_request(struct control_client *c, const char *line)
{
	struct json_object *req = json_tokener_parse(line), *v;
	const char *cmd;

	if (req == NULL || !json_object_is_type(req, json_type_object) ||
	    !json_object_object_get_ex(req, "cmd", &v) ||
	    !json_object_is_type(v, json_type_string)) {
		control_client_error(c, "malformed request: expected {\"cmd\":...}");
		goto out;
	}
	cmd = json_object_get_string(v);
	log_info("control", "pid %d: %s", (int)c->peer_pid, line);
	if (strcmp(cmd, "status") == 0) {
		supervisor_status(c->cs->sup, control_client_reply_cb, c);
	} else if (strcmp(cmd, "upgrade") == 0 &&
		   json_object_object_get_ex(req, "canary", NULL)) {
		struct canary_plan plan;

		if (control_canary_plan(c, req, &plan, true))
			supervisor_canary(c->cs->sup, "start", &plan, 0,
					  control_client_reply_cb, c);
	} else if (strcmp(cmd, "canary") == 0) {
		const char *action = json_object_object_get_ex(req, "action", &v) &&
				     json_object_is_type(v, json_type_string)
				     ? json_object_get_string(v) : "";
		struct canary_plan plan;

		if (strcmp(action, "start") == 0) {
			if (control_canary_plan(c, req, &plan, false)) {
				supervisor_canary(c->cs->sup, "start", &plan, 0,
						  control_client_reply_cb, c);
				free(plan.users); /* the strings are req's; copied */
			}
		} else if (strcmp(action, "grow") == 0) {
			int pct = control_percent_x100(req, "percent");

			if (pct < 0)
				control_client_error(c, "canary grow needs \"percent\" in (0, 100]");
			else
				supervisor_canary(c->cs->sup, "grow", NULL, (uint32_t)pct,
						  control_client_reply_cb, c);
		} else if (strcmp(action, "status") == 0 || strcmp(action, "promote") == 0 ||
			   strcmp(action, "abort") == 0) {
			supervisor_canary(c->cs->sup, action, NULL, 0,
					  control_client_reply_cb, c);
		} else {
			control_client_error(c, "unknown canary action '%s' (known: start, grow, status, promote, abort)",
					     action);
		}
	} else if (strcmp(cmd, "upgrade") == 0) {
		if (!json_object_object_get_ex(req, "binary", &v) ||
		    !json_object_is_type(v, json_type_string)) {
			control_client_error(c, "upgrade needs \"binary\": an absolute path");
			goto out;
		}
		supervisor_upgrade_force(c->cs->sup, json_object_get_string(v),
					 control_request_force(req),
					 control_client_reply_cb, c);
	} else if (strcmp(cmd, "rollback") == 0) {
		supervisor_upgrade_force(c->cs->sup, NULL, control_request_force(req),
					 control_client_reply_cb, c);
	} else if (strcmp(cmd, "releases") == 0) {
		supervisor_releases(c->cs->sup, control_client_reply_cb, c);
	} else if (strcmp(cmd, "reload") == 0) {
		supervisor_reload(c->cs->sup, control_client_reply_cb, c);
	} else if (strcmp(cmd, "upgrade-supervisor") == 0) {
		char why[512];
		/* batonctl's connection, without CLOEXEC: the new image answers
		 * on it (supervisor_reexec()) */
		int fd = -1;

		if (!json_object_object_get_ex(req, "binary", &v) ||
		    !json_object_is_type(v, json_type_string)) {
			control_client_error(c, "upgrade-supervisor needs \"binary\": an absolute path");
			goto out;
		}
		fd = dup(bufferevent_getfd(c->bev));
		int r = fd < 0 ? -errno :
			supervisor_reexec(c->cs->sup, json_object_get_string(v),
					  control_request_force(req), fd, why, sizeof(why));

		if (r != 0) {
			if (fd >= 0)
				close(fd);
			if (r == 1) {
				control_client_unchanged(c, why);
				goto out;
			}
			if (fd < 0)
				snprintf(why, sizeof(why), "dup: %s", strerror(-r));
			control_client_refused(c, "supervisor", why);
			goto out;
		}
		/* the answer comes from the new image; this copy just waits */
		c->got_request = 1;
	} else {
		control_client_error(c, "unknown command '%s' (known: status, upgrade, rollback, releases, reload, canary, upgrade-supervisor)",
				     cmd);
	}
out:
	json_object_put(req);
}

static void control_client_on_read(struct bufferevent *bev, void *arg)
{
	struct control_client *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	char *line;
	size_t len;

	if (c->got_request) {
		/* One request per connection; anything else is drained. */
		evbuffer_drain(in, evbuffer_get_length(in));
		return;
	}
	line = evbuffer_readln(in, &len, EVBUFFER_EOL_LF);
	if (line == NULL) {
		if (evbuffer_get_length(in) > CONTROL_MAX_REQUEST) {
			c->got_request = 1;
			evtimer_del(c->ev_request);
			control_client_error(c, "request longer than %d bytes",
					     CONTROL_MAX_REQUEST);
		}
		return;
	}
	c->got_request = 1;
	evtimer_del(c->ev_request);
	control_client_request(c, line);
	free(line);
}

static void control_client_on_request_timeout(evutil_socket_t fd, short what,
					      void *arg)
{
	struct control_client *c = arg;

	log_warn("control", "pid %d sent no complete request within %d s: connection closed",
		 (int)c->peer_pid, CONTROL_REQUEST_TIMEOUT_S);
	control_client_free(c);
}

static void control_client_on_write(struct bufferevent *bev, void *arg)
{
	struct control_client *c = arg;

	/* Output drained: after the final line the connection is done. */
	if (c->replied)
		control_client_free(c);
}

static void control_client_on_event(struct bufferevent *bev, short what, void *arg)
{
	struct control_client *c = arg;

	if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR) &&
	    c->got_request && !c->replied) {
		/* Half-close after the request (`socat`, `nc -N`): keep the
		 * write side for the result; a peer that is really gone shows
		 * up as a write error. */
		bufferevent_disable(bev, EV_READ);
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		/* Only the write timeout is armed: it does not read what we
		 * send. */
		log_warn("control", "pid %d took no output for %d s: connection closed",
			 (int)c->peer_pid, CONTROL_WRITE_TIMEOUT_S);
		control_client_free(c);
		return;
	}
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		if (!c->replied)
			log_debug("control", "pid %d went away before the result",
				  (int)c->peer_pid);
		control_client_free(c);
	}
}

static void control_socket_on_accept_resume(evutil_socket_t fd, short what,
					    void *arg)
{
	struct control_socket *cs = arg;

	if (event_add(cs->ev_accept, NULL) < 0)
		log_error("control", "cannot watch the control socket again");
}

/* The connection is accepted and closed at once: queued, it would only wait
 * for a timeout on the client's side. */
static void control_socket_refuse_over_cap(struct control_socket *cs, int fd)
{
	struct timespec now;

	close(fd);
	cs->refused++;
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (cs->refuse_logged != 0 &&
	    now.tv_sec - cs->refuse_logged < CONTROL_REFUSE_LOG_S)
		return;
	log_warn("control", "%zu control clients connected (the maximum): %lu connection(s) closed at once",
		 cs->nclients, cs->refused);
	cs->refused = 0;
	cs->refuse_logged = now.tv_sec ? now.tv_sec : 1;
}

static void control_socket_on_accept(evutil_socket_t lfd, short what, void *arg)
{
	struct control_socket *cs = arg;

	for (;;) {
		struct ucred cred;
		socklen_t len = sizeof(cred);
		struct control_client *c;
		struct timeval req_tv = { .tv_sec = CONTROL_REQUEST_TIMEOUT_S };
		struct timeval wr_tv = { .tv_sec = CONTROL_WRITE_TIMEOUT_S };
		int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

		if (fd < 0) {
			struct timeval pause = { .tv_sec = CONTROL_ACCEPT_PAUSE_S };

			if (errno == EAGAIN || errno == EINTR ||
			    errno == ECONNABORTED)
				return;
			if (errno == EMFILE || errno == ENFILE ||
			    errno == ENOBUFS || errno == ENOMEM) {
				/* One line per pause, not one per wakeup. */
				log_warn("control", "accept: %s: not accepting control connections for %d s",
					 strerror(errno), CONTROL_ACCEPT_PAUSE_S);
				event_del(cs->ev_accept);
				evtimer_add(cs->ev_accept_resume, &pause);
				return;
			}
			log_warn("control", "accept: %s", strerror(errno));
			return;
		}
		if (cs->nclients >= CONTROL_MAX_CLIENTS) {
			control_socket_refuse_over_cap(cs, fd);
			continue;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
			log_error("control", "SO_PEERCRED: %s; connection closed",
				  strerror(errno));
			close(fd);
			continue;
		}
		/* The socket mode already keeps others out; this also covers a
		 * socket folder with looser permissions or a changed mode. */
		if (cred.uid != geteuid() && cred.uid != 0) {
			log_error("control", "connection from pid %d uid %u refused: only uid %u or root may control this supervisor",
				  (int)cred.pid, (unsigned)cred.uid,
				  (unsigned)geteuid());
			close(fd);
			continue;
		}
		c = calloc(1, sizeof(*c));
		if (c == NULL) {
			close(fd);
			continue;
		}
		c->cs = cs;
		c->peer_pid = cred.pid;
		c->next = cs->clients;
		cs->clients = c;
		cs->nclients++;
		c->bev = bufferevent_socket_new(cs->base, fd, BEV_OPT_CLOSE_ON_FREE);
		if (c->bev == NULL)
			close(fd);
		c->ev_request = evtimer_new(cs->base,
					    control_client_on_request_timeout, c);
		if (c->bev == NULL || c->ev_request == NULL ||
		    evtimer_add(c->ev_request, &req_tv) < 0) {
			control_client_free(c); /* closes fd with the bev */
			continue;
		}
		bufferevent_setcb(c->bev, control_client_on_read,
				  control_client_on_write, control_client_on_event, c);
		/* Write timeout only: after the request, a client waits in
		 * silence for as long as an upgrade takes. */
		bufferevent_set_timeouts(c->bev, NULL, &wr_tv);
		bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	}
}

int control_socket_probe(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, r;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	/* Non-blocking: a live but stuck supervisor (full backlog) must not
	 * hang our startup; for AF_UNIX that is EAGAIN at once. */
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	r = connect(fd, (const struct sockaddr *)&sa, sizeof(sa));
	r = r == 0 ? 0 : -errno;
	close(fd);
	switch (r) {
	case 0:
	case -EINPROGRESS:
	case -EAGAIN:
		return 1;
	case -ECONNREFUSED: /* a socket file nobody listens on */
	case -ENOENT:
		return 0;
	default:
		return r;
	}
}

/* 0: nothing there (or stale, removed); -EADDRINUSE: someone answers, or we
 * cannot tell (a live socket of another user gives EACCES): never remove a
 * socket that may be live. */
static int control_socket_clear_stale(const char *path, char *err, size_t errlen)
{
	struct stat st;
	int r;

	if (lstat(path, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISSOCK(st.st_mode)) {
		snprintf(err, errlen, "control socket %s exists and is not a socket", path);
		return -EEXIST;
	}
	r = control_socket_probe(path);
	if (r == 1) {
		snprintf(err, errlen, "control socket %s is in use by a running supervisor", path);
		return -EADDRINUSE;
	}
	if (r < 0) {
		snprintf(err, errlen, "control socket %s is in use by a running supervisor (or cannot be checked: connect: %s); not removing it",
			 path, strerror(-r));
		return -EADDRINUSE;
	}
	if (unlink(path) < 0 && errno != ENOENT) {
		r = -errno;
		snprintf(err, errlen, "cannot remove stale control socket %s: %s",
			 path, strerror(errno));
		return r;
	}
	return 0;
}

struct control_socket *control_socket_new(struct event_base *base,
					  struct supervisor *sup, const char *path,
					  char *err, size_t errlen)
{
	struct control_socket *cs = NULL, *made = NULL;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	mode_t old;
	int r, fd = -1;
	bool bound = false;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		snprintf(err, errlen, "control socket path too long (max %zu): %s",
			 sizeof(sa.sun_path) - 1, path);
		r = -ENAMETOOLONG;
		goto out;
	}
	strcpy(sa.sun_path, path);
	err[0] = '\0';
	r = control_socket_clear_stale(path, err, errlen);
	if (r < 0)
		goto out;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		r = -errno;
		goto out;
	}
	/* Born 0600: no window in which another user could connect. */
	old = umask(0177);
	r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	bound = r == 0;
	if (r < 0 || chmod(path, 0600) < 0 || listen(fd, 16) < 0) {
		r = -errno;
		snprintf(err, errlen, "control socket %s: %s", path, strerror(-r));
		goto out;
	}
	cs = calloc(1, sizeof(*cs));
	if (cs == NULL) {
		r = -ENOMEM;
		goto out;
	}
	cs->base = base;
	cs->sup = sup;
	cs->fd = fd;
	fd = -1; /* transferred to cs (which unlinks path when freed) */
	bound = false;
	cs->path = strdup(path);
	cs->ev_accept = event_new(base, cs->fd, EV_READ | EV_PERSIST,
				  control_socket_on_accept, cs);
	cs->ev_accept_resume = evtimer_new(base, control_socket_on_accept_resume, cs);
	if (cs->path == NULL || cs->ev_accept == NULL ||
	    cs->ev_accept_resume == NULL || event_add(cs->ev_accept, NULL) < 0) {
		r = -ENOMEM;
		goto out;
	}
	made = cs;
	cs = NULL;
	r = 0;
out:
	if (r < 0 && err[0] == '\0')
		snprintf(err, errlen, "control socket %s: %s", path, strerror(-r));
	if (fd >= 0)
		close(fd);
	if (bound)
		unlink(path);
	control_socket_free(cs);
	if (made == NULL)
		errno = -r;
	return made;
}

void control_socket_free(struct control_socket *cs)
{
	if (cs == NULL)
		return;
	while (cs->clients)
		control_client_free(cs->clients);
	if (cs->ev_accept)
		event_free(cs->ev_accept);
	if (cs->ev_accept_resume)
		event_free(cs->ev_accept_resume);
	if (cs->fd >= 0) {
		close(cs->fd);
		if (cs->path)
			unlink(cs->path);
	}
	free(cs->path);
	free(cs);
}
