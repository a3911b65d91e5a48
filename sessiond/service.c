/* sessiond/service.c: see service.h. */
#include "sessiond/service.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/event.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/log.h"
#include "sessiond/conn.h"
#include "sessiond/session.h"
#include "sessiond/upstream.h"

struct pending_edit {
	uint64_t id;
	struct client *cl;
	service_done_fn done;
	char ctx[96];
	struct event *timer;
};

static struct pending_edit pending[SERVICE_MAX_PENDING];
static uint64_t next_id;
static int timeout_ms = SERVICE_EDIT_TIMEOUT_MS;
/* The rate of edits: tokens as of tokens_ms (monotonic); -1: full. */
static int64_t tokens = -1, tokens_ms;
static service_send_fn send_fn;
static void *send_arg;

void service_set_timeout_ms(int ms)
{
	timeout_ms = ms > 0 ? ms : SERVICE_EDIT_TIMEOUT_MS;
	tokens = -1; /* a fresh start for each test */
}

void service_set_sender(service_send_fn fn, void *arg)
{
	send_fn = fn;
	send_arg = arg;
}

bool service_is_target(const char *target)
{
	return strcasecmp(target, SERVICE_NICK) == 0;
}

static const char *svc_nick(const struct client *cl)
{
	return cl->s && cl->s->nick ? cl->s->nick : cl->nick ? cl->nick : "*";
}

void service_notice(struct client *cl, const char *fmt, ...)
{
	char text[400], line[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	/* one line: a user's argument echoed back cannot break it */
	for (char *p = text; *p; p++)
		if (*p == '\r' || *p == '\n')
			*p = ' ';
	snprintf(line, sizeof(line), ":%s!baton@baton NOTICE %s :%s", SERVICE_NICK,
		 svc_nick(cl), text);
	client_send_tagged(cl, line, 0);
}

/* ---- edits through the supervisor ---- */

static void pending_end(struct pending_edit *p, bool ok, const char *why)
{
	struct client *cl = p->cl;
	service_done_fn done = p->done;
	char ctx[sizeof(p->ctx)];

	memcpy(ctx, p->ctx, sizeof(ctx));
	if (p->timer != NULL)
		event_free(p->timer);
	memset(p, 0, sizeof(*p));
	if (cl != NULL && done != NULL)
		done(cl, ok, why, ctx);
}

static void pending_timeout(evutil_socket_t fd, short what, void *arg)
{
	pending_end(arg, false, "the supervisor did not answer (it may be older than this worker): nothing known to be changed");
}

static bool network_name_ok(const char *n)
{
	size_t len = strlen(n);

	if (len == 0 || len > SERVICE_MAX_NETWORK)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)n[i];

		if (c <= ' ' || c == 0x7f || c == '/' || c == ']' || c == '[' ||
		    c == ';' || c == '#')
			return false;
	}
	return true;
}

int service_edit(struct client *cl, enum session_edit_op op, const char *network,
		 char *const *pairs, size_t npairs, service_done_fn done,
		 const char *ctx, char *why, size_t whylen)
{
	struct pending_edit *p = NULL;
	struct timeval tv = { .tv_sec = timeout_ms / 1000,
			      .tv_usec = (timeout_ms % 1000) * 1000 };
	int r;

	if (cl->s == NULL) {
		snprintf(why, whylen, "not logged in");
		return -EINVAL;
	}
	if (!network_name_ok(network)) {
		snprintf(why, whylen, "a network name has 1 to %d bytes, without blanks or any of / [ ] ; #",
			 SERVICE_MAX_NETWORK);
		return -EINVAL;
	}
	if (npairs > SESSION_EDIT_MAX_PAIRS) {
		snprintf(why, whylen, "at most %d KEY=VALUE at once", SESSION_EDIT_MAX_PAIRS);
		return -EINVAL;
	}
	for (size_t i = 0; i < npairs; i++)
		if (strlen(pairs[i]) > SESSION_EDIT_MAX_PAIR || strchr(pairs[i], '=') == NULL) {
			snprintf(why, whylen, "expected KEY=VALUE of at most %d bytes, got '%.40s'",
				 SESSION_EDIT_MAX_PAIR, pairs[i]);
			return -EINVAL;
		}
	for (size_t i = 0; i < SERVICE_MAX_PENDING; i++) {
		if (pending[i].cl == cl) {
			snprintf(why, whylen, "your previous change is still being applied: try again in a moment");
			return -EBUSY;
		}
		if (p == NULL && pending[i].id == 0)
			p = &pending[i];
	}
	if (p == NULL) {
		snprintf(why, whylen, "too many changes in progress: try again in a moment");
		return -EAGAIN;
	}
	{
		int64_t now = clock_mono_ms();

		if (tokens < 0) {
			tokens = SERVICE_EDIT_BURST;
			tokens_ms = now;
		}
		while (tokens < SERVICE_EDIT_BURST && now - tokens_ms >= SERVICE_EDIT_EVERY_MS) {
			tokens++;
			tokens_ms += SERVICE_EDIT_EVERY_MS;
		}
		if (tokens == SERVICE_EDIT_BURST)
			tokens_ms = now;
		if (tokens == 0) {
			snprintf(why, whylen, "too many changes lately on this bouncer: try again in %d s",
				 (int)((SERVICE_EDIT_EVERY_MS - (now - tokens_ms) + 999) / 1000));
			return -EAGAIN;
		}
	}
	if (send_fn == NULL) {
		snprintf(why, whylen, "no supervisor to apply it (the bouncer is restarting its control): try again later");
		return -ENOTCONN;
	}
	p->timer = evtimer_new(bouncer_base(cl->b), pending_timeout, p);
	if (p->timer == NULL) {
		snprintf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	p->id = ++next_id;
	r = send_fn(send_arg, p->id, cl->s->user, network, session_edit_op_name(op),
		    pairs, npairs);
	if (r < 0) {
		event_free(p->timer);
		memset(p, 0, sizeof(*p));
		snprintf(why, whylen, "cannot ask the supervisor: %s", strerror(-r));
		return r;
	}
	tokens--;
	p->cl = cl;
	p->done = done;
	snprintf(p->ctx, sizeof(p->ctx), "%s", ctx ? ctx : "");
	evtimer_add(p->timer, &tv);
	return 0;
}

void service_edit_result(uint64_t id, bool ok, const char *message)
{
	for (size_t i = 0; id != 0 && i < SERVICE_MAX_PENDING; i++)
		if (pending[i].id == id) {
			pending_end(&pending[i], ok, message ? message : (ok ? "" : "refused"));
			return;
		}
	log_debug("service", "edit %llu answered after its client left (or its timeout)",
		  (unsigned long long)id);
}

void service_client_gone(struct client *cl)
{
	for (size_t i = 0; i < SERVICE_MAX_PENDING; i++)
		if (pending[i].cl == cl) {
			/* the edit goes on in the supervisor; no one to tell */
			pending[i].cl = NULL;
			pending[i].done = NULL;
		}
}

/* ---- state ---- */

const char *service_session_state(struct bouncer *b, const char *user,
				  const char *network, char *detail, size_t len)
{
	struct session *s = bouncer_find_session(b, user, network);
	char buf[300];
	const char *w;

	if (s == NULL) {
		if (detail)
			snprintf(detail, len, "not started in this worker yet");
		return "disconnected";
	}
	if (s->up != NULL && s->up->phase >= UP_WELCOMED) {
		if (detail)
			snprintf(detail, len, "connected as %s to %s", s->nick ? s->nick : "?",
				 s->server_name ? s->server_name : "?");
		return "connected";
	}
	if (s->up != NULL) {
		if (detail)
			snprintf(detail, len, "connecting");
		return "connecting";
	}
	w = bouncer_wait_text(b, s, buf, sizeof(buf));
	if (detail)
		snprintf(detail, len, "disconnected%s%s", w ? ": " : "", w ? w : "");
	return "disconnected";
}

/* ---- commands ---- */

#define SERVICE_MAX_ARGS 16

static const char *level_text(const struct baton_config *cfg)
{
	switch (cfg ? cfg->user_networks : CONFIG_USER_NETWORKS_CHANGE) {
	case CONFIG_USER_NETWORKS_LIST: return "list and status only";
	case CONFIG_USER_NETWORKS_ADD: return "list, add, set and del";
	default: return "list and set (the operator adds and deletes networks)";
	}
}

static void cmd_help(struct client *cl)
{
	service_notice(cl, "*baton: manage your networks on this bouncer. Commands:");
	service_notice(cl, "  help                          this text");
	service_notice(cl, "  network list                  your networks and their state");
	service_notice(cl, "  network status [NAME]         the state of one network (this one without NAME)");
	service_notice(cl, "  network add NAME [KEY=VALUE ...]  a network the operator defined, for you");
	service_notice(cl, "  network set NAME KEY=VALUE ...    change nick, username, realname or channels (KEY= removes it)");
	service_notice(cl, "  (a VALUE has no spaces: channels=#a,#b)");
	service_notice(cl, "  network del NAME              delete your network NAME");
	service_notice(cl, "What you may do here: %s. A change is made in the bouncer's config file and applied at once.",
		       level_text(bouncer_config(cl->b)));
}

static void cmd_list(struct client *cl)
{
	const struct baton_config *cfg = bouncer_config(cl->b);
	size_t n = 0;

	for (size_t i = 0; cfg && i < cfg->nsessions; i++) {
		const struct config_session *cs = &cfg->sessions[i];
		char detail[300];

		if (strcmp(cs->user, cl->s->user) != 0)
			continue;
		n++;
		(void)service_session_state(cl->b, cs->user, cs->network, detail, sizeof(detail));
		service_notice(cl, "%s%s: %s", cs->network,
			       strcmp(cs->network, cl->s->network) == 0 ? " (this connection)" : "",
			       detail);
	}
	service_notice(cl, "%zu network%s", n, n == 1 ? "" : "s");
}

static void cmd_status(struct client *cl, const char *network)
{
	const struct baton_config *cfg = bouncer_config(cl->b);
	struct session *s;
	char detail[300];

	if (network == NULL)
		network = cl->s->network;
	if (!network_name_ok(network) || !cfg ||
	    !config_find_session(cfg, cl->s->user, network)) {
		service_notice(cl, "You have no network '%.64s' (network list shows yours)", network);
		return;
	}
	(void)service_session_state(cl->b, cl->s->user, network, detail, sizeof(detail));
	s = bouncer_find_session(cl->b, cl->s->user, network);
	service_notice(cl, "%s: %s; %zu channel%s, %zu client%s attached", network, detail,
		       s ? s->nchannels : 0, s && s->nchannels == 1 ? "" : "s",
		       s ? s->nclients : 0, s && s->nclients == 1 ? "" : "s");
}

static void edit_done(struct client *cl, bool ok, const char *why, const char *ctx)
{
	if (ok)
		service_notice(cl, "Done: %s (applied now)", ctx);
	else
		service_notice(cl, "Not done: %s", why);
}

static void cmd_edit(struct client *cl, enum session_edit_op op, int argc, char **argv)
{
	char why[256], ctx[64];

	if (argc < 3 || (op == SESSION_EDIT_DEL && argc != 3) ||
	    (op == SESSION_EDIT_SET && argc < 4)) {
		service_notice(cl, "Usage: network %s NAME%s", session_edit_op_name(op),
			       op == SESSION_EDIT_DEL ? "" :
			       op == SESSION_EDIT_SET ? " KEY=VALUE ..." : " [KEY=VALUE ...]");
		return;
	}
	snprintf(ctx, sizeof(ctx), "network %.40s %s", argv[2],
		 op == SESSION_EDIT_ADD ? "added" : op == SESSION_EDIT_SET ? "changed" : "deleted");
	if (service_edit(cl, op, argv[2], argv + 3, (size_t)(argc - 3), edit_done, ctx,
			 why, sizeof(why)) < 0)
		service_notice(cl, "Not done: %s", why);
}

void service_message(struct client *cl, const char *text)
{
	char buf[512], *argv[SERVICE_MAX_ARGS];
	int argc = 0, op;

	if (cl->s == NULL)
		return;
	if (cl->caps & CLIENT_CAP_ECHO_MESSAGE) {
		/* echo-message: the sender sees its line as sent (to it only:
		 * a conversation with *baton is not stored or relayed) */
		char prefix[256], line[600];

		session_self_prefix(cl->s, prefix, sizeof(prefix));
		snprintf(line, sizeof(line), ":%s PRIVMSG %s :%s", prefix, SERVICE_NICK, text);
		client_send_tagged(cl, line, 0);
	}
	snprintf(buf, sizeof(buf), "%s", text);
	for (char *save = NULL, *t = strtok_r(buf, " ", &save); t;
	     t = strtok_r(NULL, " ", &save)) {
		if (argc == SERVICE_MAX_ARGS) {
			service_notice(cl, "Too many words (at most %d): nothing done",
				       SERVICE_MAX_ARGS);
			return;
		}
		argv[argc++] = t;
	}
	if (argc == 0 || strcasecmp(argv[0], "help") == 0) {
		cmd_help(cl);
		return;
	}
	if (strcasecmp(argv[0], "network") != 0 || argc < 2) {
		service_notice(cl, "Unknown command '%.32s': try help", argv[0]);
		return;
	}
	if (strcasecmp(argv[1], "list") == 0) {
		cmd_list(cl);
		return;
	}
	if (strcasecmp(argv[1], "status") == 0) {
		cmd_status(cl, argc > 2 ? argv[2] : NULL);
		return;
	}
	op = session_edit_op_parse(argv[1]);
	if (op < 0) {
		service_notice(cl, "Unknown command 'network %.32s': try help", argv[1]);
		return;
	}
	cmd_edit(cl, (enum session_edit_op)op, argc, argv);
}
