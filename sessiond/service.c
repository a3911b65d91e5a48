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
	char ctx[SERVICE_MAX_CTX + 1];
	/* labeled-response: the label of the command that asked ("" none):
	 * the answer is its response (client_label_begin()) */
	char label[CLIENT_LABEL_MAX + 1];
	struct event *timer;
};

/* A rate of edits: tokens as of ms (monotonic); tokens -1: full. */
struct bucket {
	int64_t tokens, ms;
};

/* A user's bucket, by name (the first SERVICE_MAX_USER_KEY bytes). */
struct user_bucket {
	char user[SERVICE_MAX_USER_KEY + 1];
	struct bucket b;
};

static struct pending_edit pending[SERVICE_MAX_PENDING];
static uint64_t next_id;
static int timeout_ms = SERVICE_EDIT_TIMEOUT_MS;
static struct bucket worker_rate = { .tokens = -1 };
static struct user_bucket user_rates[SERVICE_USER_SLOTS];
static service_send_fn send_fn;
static void *send_arg;

/* Bounded and exact: a user's bucket that is not full had an edit within
 * the time it takes to refill, and the worker's rate lets fewer edits than
 * there are slots through in that time, so a slot whose bucket is full is
 * always there for a new user (and a full bucket is the same as none). */
_Static_assert(SERVICE_USER_SLOTS >
	       SERVICE_EDIT_BURST + (SERVICE_EDIT_USER_BURST * SERVICE_EDIT_USER_EVERY_MS) /
					    SERVICE_EDIT_EVERY_MS,
	       "SERVICE_USER_SLOTS too small for the rates");

void service_set_timeout_ms(int ms)
{
	timeout_ms = ms > 0 ? ms : SERVICE_EDIT_TIMEOUT_MS;
	/* a fresh start for each test */
	worker_rate.tokens = -1;
	memset(user_rates, 0, sizeof(user_rates));
}

/* Refill b (burst tokens, one more each every ms) as of now: 0 when a
 * token is there to take, else the ms until one is. */
static int64_t bucket_wait(struct bucket *b, int burst, int every, int64_t now)
{
	if (b->tokens < 0) {
		b->tokens = burst;
		b->ms = now;
	}
	while (b->tokens < burst && now - b->ms >= every) {
		b->tokens++;
		b->ms += every;
	}
	if (b->tokens == burst)
		b->ms = now;
	return b->tokens > 0 ? 0 : every - (now - b->ms);
}

/* user's bucket: its slot, else an empty slot or one whose bucket is full
 * again (there is one: the assertion above), made the user's. */
static struct bucket *user_bucket(const char *user, int64_t now)
{
	struct user_bucket *free_slot = NULL;

	for (size_t i = 0; i < SERVICE_USER_SLOTS; i++) {
		struct user_bucket *u = &user_rates[i];

		if (u->user[0] != '\0' && strncmp(u->user, user, SERVICE_MAX_USER_KEY) == 0)
			return &u->b;
		if (free_slot == NULL &&
		    (u->user[0] == '\0' ||
		     (bucket_wait(&u->b, SERVICE_EDIT_USER_BURST, SERVICE_EDIT_USER_EVERY_MS, now) == 0 &&
		      u->b.tokens == SERVICE_EDIT_USER_BURST)))
			free_slot = u;
	}
	if (free_slot == NULL)
		return NULL; /* not with the assertion above */
	snprintf(free_slot->user, sizeof(free_slot->user), "%s", user);
	free_slot->b.tokens = -1;
	return &free_slot->b;
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

bool service_in_targets(const char *targets)
{
	const size_t n = strlen(SERVICE_NICK);

	for (const char *t = targets; t != NULL; t = strchr(t, ',')) {
		if (*t == ',')
			t++;
		if (strncasecmp(t, SERVICE_NICK, n) == 0 && (t[n] == ',' || t[n] == '\0'))
			return true;
	}
	return false;
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
	char ctx[sizeof(p->ctx)], label[sizeof(p->label)];

	memcpy(ctx, p->ctx, sizeof(ctx));
	memcpy(label, p->label, sizeof(label));
	if (p->timer != NULL)
		event_free(p->timer);
	memset(p, 0, sizeof(*p));
	if (cl != NULL && done != NULL) {
		client_label_begin(cl, label);
		done(cl, ok, why, ctx);
		client_label_end(cl, true);
	}
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
	struct bucket *ub;
	int64_t now, wait;
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
	now = clock_mono_ms();
	ub = user_bucket(cl->s->user, now);
	if (ub == NULL) {
		snprintf(why, whylen, "too many changes in progress: try again in a moment");
		return -EAGAIN;
	}
	wait = bucket_wait(ub, SERVICE_EDIT_USER_BURST, SERVICE_EDIT_USER_EVERY_MS, now);
	if (wait > 0) {
		snprintf(why, whylen, "you made too many changes lately: try again in %d s",
			 (int)((wait + 999) / 1000));
		return -EAGAIN;
	}
	wait = bucket_wait(&worker_rate, SERVICE_EDIT_BURST, SERVICE_EDIT_EVERY_MS, now);
	if (wait > 0) {
		snprintf(why, whylen, "too many changes lately on this bouncer: try again in %d s",
			 (int)((wait + 999) / 1000));
		return -EAGAIN;
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
	worker_rate.tokens--;
	ub->tokens--;
	p->cl = cl;
	p->done = done;
	snprintf(p->ctx, sizeof(p->ctx), "%s", ctx ? ctx : "");
	/* a labeled command: answered labeled when the answer comes, no ACK
	 * now */
	snprintf(p->label, sizeof(p->label), "%s", cl->label);
	if (p->label[0])
		cl->label_async = true;
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
	service_notice(cl, "What you may do here: %s. A change is made in the bouncer's config file and applied at once (nick, username and realname at your next connection to the network).",
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
		service_notice(cl, "Done: %s", ctx);
	else
		service_notice(cl, "Not done: %s", why);
}

/* When a set applies, as the reload will (bouncer_session_key_live()):
 * " (applied now)", or which keys now and which at the next connection. */
static void set_when(char *out, size_t len, char *const *pairs, size_t n)
{
	char now[96] = "", later[96] = "";

	for (size_t i = 0; i < n; i++) {
		char key[24], *list;
		size_t kl = strcspn(pairs[i], "=");

		snprintf(key, sizeof(key), "%.*s", (int)(kl < 23 ? kl : 23), pairs[i]);
		list = bouncer_session_key_live(key) ? now : later;
		/* each key once */
		bool seen = false;
		for (size_t j = 0; j < i; j++)
			seen |= strcspn(pairs[j], "=") == kl && strncmp(pairs[j], pairs[i], kl) == 0;
		if (!seen)
			snprintf(list + strlen(list), sizeof(now) - strlen(list), "%s%s",
				 list[0] ? ", " : "", key);
	}
	if (later[0] == '\0')
		snprintf(out, len, " (applied now)");
	else
		snprintf(out, len, " (%s%s%s: at your next connection to the network)", now,
			 now[0] ? ": now; " : "", later);
}

static void cmd_edit(struct client *cl, enum session_edit_op op, int argc, char **argv)
{
	char why[256], ctx[SERVICE_MAX_CTX + 1], when[128] = " (applied now)";

	if (argc < 3 || (op == SESSION_EDIT_DEL && argc != 3) ||
	    (op == SESSION_EDIT_SET && argc < 4)) {
		service_notice(cl, "Usage: network %s NAME%s", session_edit_op_name(op),
			       op == SESSION_EDIT_DEL ? "" :
			       op == SESSION_EDIT_SET ? " KEY=VALUE ..." : " [KEY=VALUE ...]");
		return;
	}
	if (op == SESSION_EDIT_SET)
		set_when(when, sizeof(when), argv + 3, (size_t)(argc - 3));
	snprintf(ctx, sizeof(ctx), "network %.40s %s%s", argv[2],
		 op == SESSION_EDIT_ADD ? "added" : op == SESSION_EDIT_SET ? "changed" : "deleted",
		 when);
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
