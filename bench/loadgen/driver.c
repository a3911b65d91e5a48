/* driver: see driver.h.
 *
 * Ownership: struct lg owns the event base, the ledger, every bouncer
 * client and network user and their peers. A peer whose connection we end
 * (QUIT, FIN) is "retired": its callbacks switch to retired_close(), which
 * frees it once the server or baton closes it, so a QUIT is always
 * processed before our socket goes away. */
#include "driver.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/event.h>

#include "ledger.h"
#include "peer.h"

#define TICK_US 50000
#define MAX_TEXT 400 /* a longer PRIVMSG text would not fit 512 bytes once relayed with a prefix */

enum phase { PH_LOGIN, PH_TRAFFIC, PH_DRAIN, PH_SETTLE, PH_DONE };
enum bc_state { BC_DOWN, BC_REG, BC_ATTACHED, BC_LEAVING };

struct lg;

/* Progress of one scenario: step 0 = pending, 1 = started, 2 = command
 * ended (restarts: grace period), 9 = finished. Restarts hold two ledger
 * excuse windows (-1 = none): one for the clients as receivers, one for
 * the observer. */
struct scen_rt {
	int step;
	double next_at;
	int win_clients, win_obs;
};

struct bclient {
	struct lg *lg;
	struct peer *p;
	unsigned idx;
	uint32_t sender;
	enum bc_state state;
	uint32_t joined;        /* bit i: JOIN seen for its i-th channel */
	int64_t since_us;       /* this connection's start */
	int64_t due_us;         /* DOWN: reconnect at (0 = not scheduled) */
	bool scenario_away;     /* left for a mass reconnect */
	char nick[64];
};

/* What a network user does before the server welcomed it (001): lines
 * pipelined behind NICK/USER are lost if the registration fails or the
 * connection never gets accepted, so they wait here; a PRIVMSG waits as its
 * event and is numbered only when it is really sent. */
struct pending {
	const struct model_event *ev; /* a PRIVMSG, or NULL */
	char *raw;                    /* another command */
};

#define REGISTER_TIMEOUT_US 5000000

struct netuser {
	struct lg *lg;
	struct peer *p;
	uint32_t id;            /* allocation index, names the nicks */
	uint32_t sender;
	uint32_t nickno;
	bool online, split;
	bool registered;        /* 001 seen on this connection */
	int64_t conn_us;        /* this connection's start */
	struct pending *pend;
	uint16_t npend, pendcap;
	uint16_t nch, cap;
	uint16_t *chans;        /* joined (as far as we sent) or, while split, to rejoin */
};

struct lg {
	const struct lg_opts *o;
	const struct trace *tr;
	struct model *m;
	struct lg_result *res;
	struct event_base *base;
	struct event *tick, *sched_ev;
	struct ledger *led;
	enum phase phase;
	uint64_t rng;
	unsigned nchans;
	int64_t t_start, t0, t_phase;
	/* bouncer side */
	struct bclient *bc;
	unsigned next_login;
	unsigned nattached;
	/* network side */
	struct netuser **by_who;   /* identity -> user (NULL: none yet) */
	uint32_t nidentities;
	struct netuser **all;      /* every user ever allocated */
	uint32_t nall, allcap;
	uint64_t online;
	size_t next_presence;
	const struct model_presence *pres;
	size_t npres;
	struct peer *obs;
	unsigned obs_joined;
	uint8_t *obs_chan;
	int64_t obs_since;
	bool obs_ready;
	/* schedule */
	const struct model_event *sched;
	size_t nsched, next_ev;
	/* restarts in progress */
	int server_restarting;     /* server-restart commands running or in grace */
	int baton_restarting;
	int ops_running;           /* exec commands running */
	bool obs_lost_in_restart;
	double last_progress;
	unsigned away;             /* bouncer clients away for a mass reconnect */
	double away_since;
	struct scen_rt *scen_rt;   /* per o->scen[i] */
};

static double rel_s(const struct lg *lg)
{
	return (double)(ledger_now_us() - lg->t0) / 1e6;
}

static void note(struct lg *lg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(struct lg *lg, const char *fmt, ...)
{
	char buf[200];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	/* before traffic: seconds since setup began, shifted to negative
	 * times (before the traffic's t = 0) by start_traffic() */
	double t = lg->t0 ? rel_s(lg) : (double)(ledger_now_us() - lg->t_start) / 1e6;
	timeline_add(lg->res, t, "%s", buf);
	if (lg->o->verbose)
		fprintf(stderr, "[loadgen %+8.3f] %s\n", t, buf);
}

static uint64_t rng_next(struct lg *lg)
{
	uint64_t x = (lg->rng += 0x9e3779b97f4a7c15ULL);
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static double rng_unit(struct lg *lg)
{
	return (double)(rng_next(lg) >> 11) / 9007199254740992.0;
}

static void update_flags(struct lg *lg)
{
	ledger_set_flags(lg->led, lg->ops_running ? LEDGER_DURING_OP : 0);
}

/* ---- parsing received lines ----
 * Splits "[@tags] [:prefix] COMMAND params... [:trailing]" far enough for
 * what we need: the prefix nick, the command, the first parameter and the
 * trailing text (pointers into line, which is modified). */

struct rline {
	const char *nick;
	size_t nicklen;
	const char *cmd;
	const char *p0;   /* first middle parameter (NUL-terminated) */
	const char *trailing;
	size_t trailing_len;
};

static bool parse_line(char *line, size_t len, struct rline *rl)
{
	char *s = line, *end = line + len;
	memset(rl, 0, sizeof(*rl));
	if (*s == '@') {
		s = memchr(s, ' ', (size_t)(end - s));
		if (!s)
			return false;
		s++;
	}
	if (*s == ':') {
		char *sp = memchr(s, ' ', (size_t)(end - s));
		if (!sp)
			return false;
		rl->nick = s + 1;
		char *bang = memchr(s, '!', (size_t)(sp - s));
		rl->nicklen = (size_t)((bang ? bang : sp) - rl->nick);
		s = sp + 1;
	}
	rl->cmd = s;
	char *sp = memchr(s, ' ', (size_t)(end - s));
	if (!sp)
		return true;
	*sp = '\0';
	s = sp + 1;
	if (*s == ':') {
		rl->trailing = s + 1;
		rl->trailing_len = (size_t)(end - s - 1);
		return true;
	}
	rl->p0 = s;
	sp = memchr(s, ' ', (size_t)(end - s));
	if (!sp)
		return true;
	*sp = '\0';
	s = sp + 1;
	/* the trailing parameter starts at the first " :" (or here) */
	char *tr = NULL;
	if (*s == ':') {
		tr = s;
	} else {
		for (char *q = s; q + 1 < end; q++)
			if (q[0] == ' ' && q[1] == ':') {
				tr = q + 1;
				break;
			}
	}
	if (tr) {
		rl->trailing = tr + 1;
		rl->trailing_len = (size_t)(end - tr - 1);
	}
	return true;
}

static bool nick_is(const struct rline *rl, const char *nick)
{
	return rl->nick && strlen(nick) == rl->nicklen && !strncasecmp(rl->nick, nick, rl->nicklen);
}

static void deliver(struct lg *lg, unsigned r, struct rline *rl, int64_t since)
{
	if (!rl->p0 || !rl->trailing || rl->p0[0] != '#')
		return;
	int ch = model_chan_index(rl->p0, strlen(rl->p0), lg->nchans);
	ledger_deliver(lg->led, r, ch, rl->trailing, rl->trailing_len, ledger_now_us(), since);
}

/* ---- retired connections ---- */

static void retired_close(struct peer *p, const char *reason, void *arg)
{
	peer_free(p);
}

static void retire(struct peer *p)
{
	peer_set_arg(p, NULL, retired_close, NULL);
}

/* ---- bouncer clients ---- */

static void bc_close(struct peer *p, const char *reason, void *arg);
static void restart_reattached(struct lg *lg, struct bclient *c);

static void bc_line(struct peer *p, char *line, size_t len, void *arg)
{
	struct bclient *c = arg;
	struct lg *lg = c->lg;
	struct rline rl;

	if (!parse_line(line, len, &rl))
		return;
	if (!strcmp(rl.cmd, "PRIVMSG")) {
		deliver(lg, c->idx, &rl, c->since_us);
	} else if (!strcmp(rl.cmd, "001") && rl.p0) {
		snprintf(c->nick, sizeof(c->nick), "%s", rl.p0);
	} else if (!strcmp(rl.cmd, "JOIN") && c->state == BC_REG && nick_is(&rl, c->nick)) {
		const char *chname = rl.p0 ? rl.p0 : rl.trailing;
		size_t chlen = rl.p0 ? strlen(rl.p0) : rl.trailing_len;
		int ch = chname ? model_chan_index(chname, chlen, lg->nchans) : -1;
		unsigned n;
		const uint16_t *uc = model_user_chans(lg->m, c->idx, &n);
		for (unsigned i = 0; i < n; i++)
			if (uc[i] == ch)
				c->joined |= 1u << i;
		if (c->joined == (n >= 32 ? 0xffffffffu : (1u << n) - 1)) {
			c->state = BC_ATTACHED;
			lg->nattached++;
			restart_reattached(lg, c);
			if (c->scenario_away) {
				c->scenario_away = false;
				lg->res->reconnects++;
				if (lg->away && --lg->away == 0)
					note(lg, "mass reconnect: every client reattached (%.2f s after the drop)",
					     rel_s(lg) - lg->away_since);
			}
		}
	} else if (!strcmp(rl.cmd, "ERROR") && c->state != BC_LEAVING) {
		lg->res->errors_received++;
		if (lg->res->errors_received <= 5)
			note(lg, "client %u got %.*s", c->idx, (int)(len > 120 ? 120 : len), line);
	} else if (!strcmp(rl.cmd, "464") || !strcmp(rl.cmd, "433")) {
		lg->res->errors_received++;
		if (lg->res->errors_received <= 5)
			note(lg, "client %u login refused: %s %s", c->idx, rl.cmd,
			     rl.trailing ? rl.trailing : "");
	}
}

static void bc_connect(struct lg *lg, struct bclient *c)
{
	const struct lg_opts *o = lg->o;
	char user[64], nick[64];

	driver_user_name(o, c->idx, user, sizeof(user), nick, sizeof(nick));
	c->p = peer_connect(lg->base, &o->baton, bc_line, bc_close, c);
	c->due_us = 0;
	if (!c->p) {
		c->state = BC_DOWN;
		c->due_us = ledger_now_us() + 1000000;
		return;
	}
	snprintf(c->nick, sizeof(c->nick), "%s", nick);
	c->state = BC_REG;
	c->joined = 0;
	c->since_us = ledger_now_us();
	lg->res->bouncer_conns++;
	peer_sendf(c->p, "PASS %s/%s@%s:%s", user, o->network, o->client_name, o->password);
	peer_sendf(c->p, "NICK %s", nick);
	peer_sendf(c->p, "USER %s 0 * :baton-loadgen", user);
}

static void bc_close(struct peer *p, const char *reason, void *arg)
{
	struct bclient *c = arg;
	struct lg *lg = c->lg;

	if (c->state == BC_ATTACHED)
		lg->nattached--;
	if (c->state == BC_LEAVING) {
		/* the end of our own QUIT / FIN: come back later */
		c->due_us = ledger_now_us() + (int64_t)((lg->o->reconnect_delay + rng_unit(lg)) * 1e6);
	} else {
		if (lg->baton_restarting) {
			/* attached clients losing baton; failed reconnect
			 * attempts while it is down are not counted */
			if (c->state == BC_ATTACHED)
				lg->res->disconnects_expected++;
		} else if (lg->phase < PH_SETTLE) {
			lg->res->disconnects++;
			if (lg->res->disconnects <= 10)
				note(lg, "DISCONNECT: client %u (%s) closed by baton: %s",
				     c->idx, c->nick, reason);
		}
		c->due_us = ledger_now_us() + 1000000;
	}
	c->state = BC_DOWN;
	peer_free(p);
	c->p = NULL;
}

/* Leave for a mass reconnect: QUIT (baton's graceful detach: it flushes,
 * sends its FIN and learns exactly what we read) or a bare FIN (the TCP
 * connection ends without an IRC goodbye). Either way we keep reading
 * until baton closes, so every line it sent is counted. */
static void bc_leave(struct lg *lg, struct bclient *c)
{
	lg->nattached--;
	c->state = BC_LEAVING;
	c->scenario_away = true;
	if (lg->o->reconnect_mode == RECONNECT_QUIT)
		peer_sendf(c->p, "QUIT :baton-loadgen reconnect");
	else
		peer_shutdown_write(c->p);
}

/* ---- network users ---- */

static void emit_privmsg(struct lg *lg, const struct model_event *e, struct peer *p,
			 uint32_t sender, bool via_bouncer);

static void nu_drop_pending(struct netuser *nu)
{
	for (unsigned i = 0; i < nu->npend; i++)
		free(nu->pend[i].raw);
	nu->npend = 0;
}

static void nu_line(struct peer *p, char *line, size_t len, void *arg)
{
	struct netuser *nu = arg;
	const char *sp = memchr(line, ' ', len);

	/* channel traffic is the observer's business: only the welcome and
	 * nick clashes matter here */
	if (!nu->registered && sp && !strncmp(sp, " 001 ", 5)) {
		nu->registered = true;
		for (unsigned i = 0; i < nu->npend; i++) {
			struct pending *pd = &nu->pend[i];
			if (pd->ev)
				emit_privmsg(nu->lg, pd->ev, p, nu->sender, false);
			else
				peer_send(p, pd->raw, strlen(pd->raw));
			free(pd->raw);
		}
		nu->npend = 0;
	} else if (sp && !strncmp(sp, " 433 ", 5)) {
		nu->nickno++;
		peer_sendf(p, "NICK t%u_%u", nu->id, nu->nickno);
	}
}

static void nu_pend(struct netuser *nu, const struct model_event *ev, char *raw)
{
	if (nu->npend == nu->pendcap) {
		uint16_t nc = nu->pendcap ? (uint16_t)(nu->pendcap * 2) : 4;
		struct pending *nv = realloc(nu->pend, nc * sizeof(*nv));
		if (!nv) {
			free(raw);
			return;
		}
		nu->pend = nv;
		nu->pendcap = nc;
	}
	nu->pend[nu->npend++] = (struct pending){ ev, raw };
}

/* A command of a network user: now, or after its registration. */
static void nu_cmd(struct netuser *nu, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void nu_cmd(struct netuser *nu, const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (nu->registered)
		peer_send(nu->p, buf, strlen(buf));
	else
		nu_pend(nu, NULL, strdup(buf));
}

static void nu_close(struct peer *p, const char *reason, void *arg)
{
	struct netuser *nu = arg;
	struct lg *lg = nu->lg;

	if (lg->server_restarting) {
		/* rejoin like after a split once the server is back */
		nu->split = true;
	} else if (lg->phase < PH_SETTLE) {
		lg->res->net_closes++;
		if (lg->res->net_closes <= 5)
			note(lg, "network user t%u_%u closed by the server: %s", nu->id, nu->nickno, reason);
		nu->nch = 0;
	}
	nu->online = false;
	nu->registered = false;
	nu_drop_pending(nu);
	lg->online--;
	peer_free(p);
	nu->p = NULL;
}

static struct netuser *nu_get(struct lg *lg, uint32_t who)
{
	struct netuser *nu = lg->by_who[who];
	if (nu)
		return nu;
	nu = calloc(1, sizeof(*nu));
	if (!nu)
		return NULL;
	if (lg->nall == lg->allcap) {
		uint32_t nc = lg->allcap ? lg->allcap * 2 : 1024;
		struct netuser **nv = realloc(lg->all, nc * sizeof(*nv));
		if (!nv) {
			free(nu);
			return NULL;
		}
		lg->all = nv;
		lg->allcap = nc;
	}
	nu->lg = lg;
	nu->id = lg->nall;
	lg->all[lg->nall++] = nu;
	lg->by_who[who] = nu;
	return nu;
}

static bool nu_online(struct lg *lg, struct netuser *nu)
{
	if (nu->online)
		return true;
	int64_t s = ledger_sender(lg->led, -1);
	if (s < 0)
		return false;
	nu->p = peer_connect(lg->base, &lg->o->server, nu_line, nu_close, nu);
	if (!nu->p)
		return false;
	nu->sender = (uint32_t)s;
	nu->nickno++;
	nu->online = true;
	nu->registered = false;
	nu->conn_us = ledger_now_us();
	nu->nch = 0;
	lg->online++;
	if (lg->online > lg->res->peak_net_online)
		lg->res->peak_net_online = lg->online;
	lg->res->net_conns++;
	peer_sendf(nu->p, "NICK t%u_%u", nu->id, nu->nickno);
	peer_sendf(nu->p, "USER lg%u 0 * :baton-loadgen network user", nu->id);
	return true;
}

static int nu_find(const struct netuser *nu, unsigned ch)
{
	for (unsigned i = 0; i < nu->nch; i++)
		if (nu->chans[i] == ch)
			return (int)i;
	return -1;
}

static bool nu_add_chan(struct netuser *nu, unsigned ch)
{
	if (nu->nch == nu->cap) {
		uint16_t nc = nu->cap ? (uint16_t)(nu->cap * 2) : 4;
		uint16_t *nv = realloc(nu->chans, nc * sizeof(*nv));
		if (!nv)
			return false;
		nu->chans = nv;
		nu->cap = nc;
	}
	nu->chans[nu->nch++] = (uint16_t)ch;
	return true;
}

static void nu_join(struct lg *lg, struct netuser *nu, unsigned ch, bool scenario)
{
	char name[16];
	if (!nu_add_chan(nu, ch))
		return;
	nu_cmd(nu, "JOIN %s", model_chan_name(ch, name, sizeof(name)));
	lg->res->gen[LG_JOIN]++;
	if (scenario)
		lg->res->gen_scenario[LG_JOIN]++;
}

/* QUIT and let the server close the connection. */
static void nu_quit(struct lg *lg, struct netuser *nu, const char *reason, size_t rlen,
		    bool keep_chans)
{
	/* what waited for the registration is dropped (its PRIVMSGs were
	 * never numbered); a QUIT is fine before registration */
	nu_drop_pending(nu);
	peer_sendf(nu->p, "QUIT :%.*s", (int)(rlen > 200 ? 200 : rlen), reason);
	retire(nu->p);
	nu->p = NULL;
	nu->online = false;
	nu->registered = false;
	lg->online--;
	if (!keep_chans)
		nu->nch = 0;
	lg->res->gen[LG_QUIT]++;
}

/* Reconnect a split (or restart-dropped) user and rejoin all its
 * channels at once: the burst of a netjoin. */
static void nu_rejoin(struct lg *lg, struct netuser *nu)
{
	uint16_t keep[64];
	unsigned n = nu->nch < 64 ? nu->nch : 64;
	memcpy(keep, nu->chans, n * sizeof(keep[0]));
	nu->split = false;
	if (!nu_online(lg, nu))
		return;
	for (unsigned i = 0; i < n; i++)
		nu_join(lg, nu, keep[i], true);
}

/* ---- the observer: the network side's receiver, in every channel ---- */

static void obs_close(struct peer *p, const char *reason, void *arg);

static void obs_line(struct peer *p, char *line, size_t len, void *arg)
{
	struct lg *lg = arg;
	struct rline rl;

	if (!parse_line(line, len, &rl))
		return;
	if (!strcmp(rl.cmd, "PRIVMSG")) {
		deliver(lg, lg->o->nbouncer, &rl, lg->obs_since);
	} else if (lg->t0 && rl.nick && !lg->server_restarting && !lg->baton_restarting &&
		   rl.nicklen > strlen(lg->o->nick_prefix) &&
		   !strncasecmp(rl.nick, lg->o->nick_prefix, strlen(lg->o->nick_prefix)) &&
		   rl.nick[strlen(lg->o->nick_prefix)] >= '0' && rl.nick[strlen(lg->o->nick_prefix)] <= '9' &&
		   (!strcmp(rl.cmd, "QUIT") || !strcmp(rl.cmd, "PART") || !strcmp(rl.cmd, "JOIN") ||
		    !strcmp(rl.cmd, "NICK"))) {
		/* a bouncer user's upstream left or came back: the network
		 * saw what an upgrade must hide */
		lg->res->upstream_events++;
		if (lg->res->upstream_events <= 5)
			note(lg, "UPSTREAM: the network saw %.*s", (int)(len > 140 ? 140 : len), line);
	} else if (!strcmp(rl.cmd, "JOIN") && nick_is(&rl, "lgobserver")) {
		const char *chname = rl.p0 ? rl.p0 : rl.trailing;
		size_t chlen = rl.p0 ? strlen(rl.p0) : rl.trailing_len;
		int ch = chname ? model_chan_index(chname, chlen, lg->nchans) : -1;
		if (ch >= 0 && !lg->obs_chan[ch]) {
			lg->obs_chan[ch] = 1;
			if (++lg->obs_joined == lg->nchans && !lg->obs_ready) {
				lg->obs_ready = true;
				if (lg->t0)
					note(lg, "observer back in all %u channels", lg->nchans);
			}
		}
	}
}

static void obs_connect(struct lg *lg)
{
	char list[480], name[16];
	size_t used = 0;

	lg->obs = peer_connect(lg->base, &lg->o->server, obs_line, obs_close, lg);
	if (!lg->obs)
		return;
	lg->obs_since = ledger_now_us();
	lg->obs_joined = 0;
	lg->obs_ready = false;
	memset(lg->obs_chan, 0, lg->nchans);
	peer_sendf(lg->obs, "NICK lgobserver");
	peer_sendf(lg->obs, "USER lgobserver 0 * :baton-loadgen observer");
	for (unsigned ch = 0; ch < lg->nchans; ch++) {
		model_chan_name(ch, name, sizeof(name));
		if (used + strlen(name) + 2 > sizeof(list)) {
			peer_sendf(lg->obs, "JOIN %s", list);
			used = 0;
		}
		used += (size_t)snprintf(list + used, sizeof(list) - used, "%s%s", used ? "," : "", name);
	}
	if (used)
		peer_sendf(lg->obs, "JOIN %s", list);
}

static void obs_close(struct peer *p, const char *reason, void *arg)
{
	struct lg *lg = arg;
	if (lg->server_restarting) {
		lg->obs_lost_in_restart = true;
	} else if (lg->phase < PH_SETTLE) {
		lg->res->net_closes++;
		note(lg, "observer closed by the server: %s", reason);
	}
	peer_free(p);
	lg->obs = NULL;
	lg->obs_ready = false;
}

/* ---- the schedule ---- */

static struct bclient *pick_bouncer(struct lg *lg, const struct model_event *e)
{
	if (e->bouncer < 0)
		return NULL;
	struct bclient *c = &lg->bc[e->bouncer];
	if (c->state == BC_ATTACHED)
		return c;
	/* its client is away (mass reconnect): another member of the channel */
	unsigned n;
	const uint32_t *mem = model_chan_members(lg->m, e->chan, &n);
	for (unsigned i = 0; i < n; i++) {
		struct bclient *o = &lg->bc[mem[(e->bouncer + i) % n]];
		if (o->state == BC_ATTACHED)
			return o;
	}
	return NULL;
}

/* Numbers and sends the PRIVMSG of event e on p now. */
static void emit_privmsg(struct lg *lg, const struct model_event *e, struct peer *p,
			 uint32_t sender, bool via_bouncer)
{
	const struct trace_event *src = e->src;
	char text[512], name[16], out[560];

	size_t want = src->text_len > MAX_TEXT ? MAX_TEXT : src->text_len;
	size_t tl = ledger_line(lg->led, sender, e->chan, want, trace_text(lg->tr, src),
				src->text_len, text, sizeof(text));
	if (!tl)
		return;
	model_chan_name(e->chan, name, sizeof(name));
	int n = src->action ? snprintf(out, sizeof(out), "PRIVMSG %s :\001ACTION %s\001", name, text)
			    : snprintf(out, sizeof(out), "PRIVMSG %s :%s", name, text);
	if (peer_send(p, out, (size_t)n) < 0)
		lg->res->send_failures++;
	if (lg->o->sent_log)
		fprintf(lg->o->sent_log, "%.6f %s %u %s\n", rel_s(lg),
			via_bouncer ? "bouncer" : "network", sender, out);
	if (via_bouncer)
		lg->res->via_bouncer++;
	else
		lg->res->via_network++;
	hist_add(&lg->res->gen_len, tl);
}

static void send_privmsg(struct lg *lg, const struct model_event *e)
{
	struct bclient *c = pick_bouncer(lg, e);

	lg->res->gen[LG_PRIVMSG]++;
	if (c) {
		emit_privmsg(lg, e, c->p, c->sender, true);
		return;
	}
	struct netuser *nu = nu_get(lg, e->who);
	if (!nu)
		return;
	if (nu->split) {
		lg->res->gen[LG_PRIVMSG]--;
		lg->res->skipped[LG_PRIVMSG]++;
		return;
	}
	if (!nu_online(lg, nu))
		return;
	if (nu_find(nu, e->chan) < 0) {
		nu_join(lg, nu, e->chan, false);
		lg->res->implicit_joins++;
	}
	if (nu->registered)
		emit_privmsg(lg, e, nu->p, nu->sender, false);
	else
		nu_pend(nu, e, NULL); /* numbered when sent */
}

static void run_event(struct lg *lg, const struct model_event *e)
{
	struct netuser *nu;
	char name[16];

	if (e->kind == LG_PRIVMSG) {
		send_privmsg(lg, e);
		return;
	}
	nu = nu_get(lg, e->who);
	if (!nu)
		return;
	if (nu->split) {
		lg->res->skipped[e->kind]++;
		return;
	}
	switch (e->kind) {
	case LG_JOIN:
		if (!nu_online(lg, nu))
			return;
		if (nu_find(nu, e->chan) >= 0) {
			lg->res->skipped[LG_JOIN]++;
			return;
		}
		nu_join(lg, nu, e->chan, false);
		break;
	case LG_PART: {
		int i = nu->online ? nu_find(nu, e->chan) : -1;
		if (i < 0) {
			lg->res->skipped[LG_PART]++;
			return;
		}
		nu->chans[i] = nu->chans[--nu->nch];
		nu_cmd(nu, "PART %s", model_chan_name(e->chan, name, sizeof(name)));
		lg->res->gen[LG_PART]++;
		break;
	}
	case LG_QUIT:
		if (!nu->online) {
			lg->res->skipped[LG_QUIT]++;
			return;
		}
		nu_quit(lg, nu, trace_text(lg->tr, e->src), e->src->text_len, false);
		break;
	case LG_NICK: {
		struct netuser *other = lg->by_who[e->newwho];
		if (other && other != nu && (other->online || other->split)) {
			/* the new identity is someone else now (trace
			 * inconsistency): leave the mapping alone */
			lg->res->skipped[LG_NICK]++;
			return;
		}
		lg->by_who[e->newwho] = nu;
		if (e->newwho != e->who)
			lg->by_who[e->who] = NULL;
		if (!nu->online) {
			lg->res->skipped[LG_NICK]++;
			return;
		}
		nu->nickno++;
		nu_cmd(nu, "NICK t%u_%u", nu->id, nu->nickno);
		lg->res->gen[LG_NICK]++;
		break;
	}
	}
}

static void arm_schedule(struct lg *lg)
{
	if (lg->next_ev >= lg->nsched || lg->phase != PH_TRAFFIC)
		return;
	int64_t due = lg->t0 + (int64_t)(lg->sched[lg->next_ev].at * 1e6);
	int64_t d = due - ledger_now_us();
	if (d < 0)
		d = 0;
	struct timeval tv = { .tv_sec = d / 1000000, .tv_usec = d % 1000000 };
	evtimer_add(lg->sched_ev, &tv);
}

static void sched_cb(evutil_socket_t fd, short what, void *arg)
{
	struct lg *lg = arg;
	double now = rel_s(lg);
	unsigned budget = 5000; /* do not starve I/O if we fell behind */

	while (lg->phase == PH_TRAFFIC && lg->next_ev < lg->nsched &&
	       lg->sched[lg->next_ev].at <= now && budget--)
		run_event(lg, &lg->sched[lg->next_ev++]);
	arm_schedule(lg);
}

/* ---- scenarios ---- */

static void netsplit(struct lg *lg, struct scenario *s)
{
	uint64_t n = 0, joins = 0;
	for (uint32_t i = 0; i < lg->nall; i++) {
		struct netuser *nu = lg->all[i];
		if (!nu->online || !nu->nch || rng_unit(lg) >= s->fraction)
			continue;
		nu_quit(lg, nu, "irc.a.net irc.b.net", 19, true);
		lg->res->gen_scenario[LG_QUIT]++;
		nu->split = true;
		joins += nu->nch;
		n++;
	}
	note(lg, "netsplit: %llu network users quit (\"irc.a.net irc.b.net\"), %llu channel memberships; "
	     "rejoin in %.1f s", (unsigned long long)n, (unsigned long long)joins, s->rejoin_s);
}

static void netjoin(struct lg *lg)
{
	uint64_t n = 0, before = lg->res->gen_scenario[LG_JOIN];
	for (uint32_t i = 0; i < lg->nall; i++) {
		struct netuser *nu = lg->all[i];
		if (!nu->split)
			continue;
		nu_rejoin(lg, nu);
		n++;
	}
	note(lg, "netjoin: %llu users reconnected, %llu JOINs in one burst", (unsigned long long)n,
	     (unsigned long long)(lg->res->gen_scenario[LG_JOIN] - before));
}

static void mass_reconnect(struct lg *lg, struct scenario *s)
{
	unsigned n = 0;
	for (unsigned i = 0; i < lg->o->nbouncer; i++) {
		struct bclient *c = &lg->bc[i];
		if (c->state != BC_ATTACHED || rng_unit(lg) >= s->fraction)
			continue;
		bc_leave(lg, c);
		n++;
	}
	lg->away += n;
	lg->away_since = rel_s(lg);
	note(lg, "mass reconnect: %u bouncer clients %s, back after %.1f-%.1f s", n,
	     lg->o->reconnect_mode == RECONNECT_QUIT ? "sent QUIT" : "closed their TCP connection (FIN)",
	     lg->o->reconnect_delay, lg->o->reconnect_delay + 1);
}

/* A restart excuses only the deliveries whose path the restarted process
 * is on, from 1 s before its command (lines in flight when it dies):
 * - baton: every delivery to a client (each client's part ends once it
 *   has reattached: what it misses after that is baton's fault), and
 *   deliveries to the observer of lines sent by clients (they pass baton);
 *   lines of network users must still reach the observer;
 * - the server: every delivery to the observer, and deliveries to clients
 *   of lines sent by network users. A client-to-client line must still
 *   arrive: baton keeps its clients through a server restart, so a line it
 *   accepted and dropped is a loss worth seeing.
 * The remaining parts close --restart-grace s after the command ended. */
static void restart_excuse_open(struct lg *lg, struct scen_rt *rt, enum scen_kind kind)
{
	int64_t from = ledger_now_us() - 1000000;
	if (kind == SC_BATON_RESTART) {
		rt->win_clients = ledger_excuse_open(lg->led, LEDGER_CLIENTS,
						     LEDGER_CLIENTS | LEDGER_NETWORK, from);
		rt->win_obs = ledger_excuse_open(lg->led, LEDGER_NETWORK, LEDGER_CLIENTS, from);
	} else {
		rt->win_clients = ledger_excuse_open(lg->led, LEDGER_CLIENTS, LEDGER_NETWORK, from);
		rt->win_obs = ledger_excuse_open(lg->led, LEDGER_NETWORK,
						 LEDGER_CLIENTS | LEDGER_NETWORK, from);
	}
	if (rt->win_clients < 0 || rt->win_obs < 0)
		note(lg, "%s: out of memory for its excuse window: nothing excused", scen_kind_names[kind]);
}

/* Client c attached: if it reconnected since a baton restart began, its
 * part of that restart's excuse ends now. */
static void restart_reattached(struct lg *lg, struct bclient *c)
{
	for (unsigned i = 0; i < lg->o->nscen; i++) {
		const struct scenario *s = &lg->o->scen[i];
		const struct scen_rt *rt = &lg->scen_rt[i];
		if (s->kind == SC_BATON_RESTART && (rt->step == 1 || rt->step == 2) &&
		    s->started && c->since_us >= s->start_us)
			ledger_excuse_end(lg->led, rt->win_clients, c->idx, ledger_now_us());
	}
}

static void scenario_step(struct lg *lg, unsigned i)
{
	struct scenario *s = &lg->o->scen[i];
	struct scen_rt *rt = &lg->scen_rt[i];
	double now = rel_s(lg);

	if (rt->step == 0) {
		if (lg->phase != PH_TRAFFIC || now < s->at)
			return;
		rt->step = 1;
		switch (s->kind) {
		case SC_NETSPLIT:
			netsplit(lg, s);
			rt->next_at = now + s->rejoin_s;
			return;
		case SC_RECONNECT:
			mass_reconnect(lg, s);
			rt->step = 9;
			return;
		case SC_SERVER_RESTART:
			lg->server_restarting++;
			restart_excuse_open(lg, rt, s->kind);
			break;
		case SC_BATON_RESTART:
			lg->baton_restarting++;
			restart_excuse_open(lg, rt, s->kind);
			break;
		case SC_EXEC:
			lg->ops_running++;
			break;
		}
		update_flags(lg);
		int r = scenario_spawn(s);
		note(lg, "%s: started `%s`%s%s", scen_kind_names[s->kind], s->cmd,
		     r < 0 ? ": " : "", r < 0 ? strerror(-r) : "");
		if (r < 0) {
			s->done = true;
			s->status = 255;
			s->start_us = s->end_us = ledger_now_us();
		}
		return;
	}
	if (s->kind == SC_NETSPLIT) {
		if (rt->step == 1 && now >= rt->next_at) {
			netjoin(lg);
			rt->step = 9;
		}
		return;
	}
	if (rt->step == 1 && scenario_poll(s)) {
		if (s->status)
			lg->res->failed_commands++;
		note(lg, "%s: `%.60s` exited %d after %.3f s", scen_kind_names[s->kind], s->cmd,
		     s->status, (double)(s->end_us - s->start_us) / 1e6);
		if (s->kind == SC_EXEC) {
			lg->ops_running--;
			update_flags(lg);
			rt->step = 9;
			return;
		}
		if (s->kind == SC_SERVER_RESTART) {
			/* the server is back: the observer and every dropped
			 * network user reconnect and rejoin */
			if (!lg->obs)
				obs_connect(lg);
			unsigned n = 0;
			for (uint32_t k = 0; k < lg->nall; k++)
				if (lg->all[k]->split && !lg->all[k]->online) {
					nu_rejoin(lg, lg->all[k]);
					n++;
				}
			note(lg, "server-restart: observer and %u network users reconnecting", n);
		} else if (s->kind == SC_BATON_RESTART) {
			/* a client whose connection outlived the restart was
			 * never cut off: its part of the excuse ends now */
			for (unsigned k = 0; k < lg->o->nbouncer; k++)
				if (lg->bc[k].state == BC_ATTACHED && lg->bc[k].since_us < s->start_us)
					ledger_excuse_end(lg->led, rt->win_clients, k, ledger_now_us());
		}
		rt->step = 2;
		rt->next_at = now + lg->o->restart_grace;
		return;
	}
	if (rt->step == 2 && now >= rt->next_at) {
		if (s->kind == SC_SERVER_RESTART)
			lg->server_restarting--;
		else
			lg->baton_restarting--;
		ledger_excuse_close(lg->led, rt->win_clients, ledger_now_us());
		ledger_excuse_close(lg->led, rt->win_obs, ledger_now_us());
		note(lg, "%s: excuse window closed", scen_kind_names[s->kind]);
		rt->step = 9;
	}
}

/* During the drain: a scenario still pending (step 0) never starts (its AT
 * was beyond the traffic; counted as a failed command at the end), so only
 * started ones keep the drain waiting. */
static bool scenarios_busy(struct lg *lg)
{
	for (unsigned i = 0; i < lg->o->nscen; i++)
		if (lg->scen_rt[i].step != 0 && lg->scen_rt[i].step != 9)
			return true;
	return lg->away > 0;
}

/* --end-after-exec: true once every --exec command has ended (there is at
 * least one) and the last ended at least o->end_after_exec s ago. A run
 * driven by its commands (a series of canaries, each as long as its gate
 * takes) then lasts as long as they do, not a --duration guessed for the
 * slowest case, which stays the upper bound. */
static bool execs_ended(struct lg *lg, int64_t now)
{
	int64_t last = 0;
	bool any = false;
	if (lg->o->end_after_exec < 0)
		return false;
	for (unsigned i = 0; i < lg->o->nscen; i++) {
		const struct scenario *s = &lg->o->scen[i];
		if (s->kind != SC_EXEC)
			continue;
		if (lg->scen_rt[i].step != 9)
			return false;
		any = true;
		if (s->end_us > last)
			last = s->end_us;
	}
	return any && now - last >= (int64_t)(lg->o->end_after_exec * 1e6);
}

/* ---- the tick: pacing, reconnects, phases ---- */

static void progress(struct lg *lg)
{
	double now = (double)(ledger_now_us() - lg->t_start) / 1e6;
	if (now - lg->last_progress < 5.0)
		return;
	lg->last_progress = now;
	const struct ledger_stats *st = ledger_stats(lg->led);
	fprintf(stderr, "[loadgen %+8.1f] phase %d: attached %u/%u, network online %llu, lines %llu, "
		"delivered %llu/%llu, disconnects %llu\n",
		lg->t0 ? rel_s(lg) : -now, lg->phase, lg->nattached, lg->o->nbouncer,
		(unsigned long long)lg->online, (unsigned long long)st->lines,
		(unsigned long long)st->delivered, (unsigned long long)st->expected,
		(unsigned long long)lg->res->disconnects);
}

static void start_traffic(struct lg *lg)
{
	lg->t0 = ledger_now_us();
	lg->res->setup_s = (double)(lg->t0 - lg->t_start) / 1e6;
	for (unsigned i = 0; i < lg->res->ntimeline; i++)
		lg->res->timeline[i].t -= lg->res->setup_s;
	lg->phase = PH_TRAFFIC;
	lg->t_phase = lg->t0;
	note(lg, "traffic starts: %u clients attached, %llu network users online, %zu events scheduled",
	     lg->nattached, (unsigned long long)lg->online, lg->nsched);
	arm_schedule(lg);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct lg *lg = arg;
	const struct lg_opts *o = lg->o;
	int64_t now = ledger_now_us();

	progress(lg);
	/* reconnects due (after a drop, a mass reconnect, a baton restart) */
	if (lg->phase >= PH_TRAFFIC && lg->phase <= PH_DRAIN)
		for (unsigned i = 0; i < o->nbouncer; i++) {
			struct bclient *c = &lg->bc[i];
			if (c->state == BC_DOWN && c->due_us && c->due_us <= now)
				bc_connect(lg, c);
		}
	/* a network user's connect that went nowhere (e.g. dropped from a
	 * full accept queue of the server during a burst): try again */
	if (lg->phase <= PH_DRAIN && !lg->server_restarting)
		for (uint32_t i = 0; i < lg->nall; i++) {
			struct netuser *nu = lg->all[i];
			if (!nu->online || nu->registered || now - nu->conn_us < REGISTER_TIMEOUT_US)
				continue;
			lg->res->net_retries++;
			if (lg->res->net_retries <= 5)
				note(lg, "network user t%u_%u: no welcome after %.0f s, connecting again",
				     nu->id, nu->nickno, REGISTER_TIMEOUT_US / 1e6);
			peer_free(nu->p);
			nu->nickno++;
			nu->conn_us = now;
			nu->p = peer_connect(lg->base, &o->server, nu_line, nu_close, nu);
			if (!nu->p) {
				nu->online = false;
				lg->online--;
				nu_drop_pending(nu);
				continue;
			}
			peer_sendf(nu->p, "NICK t%u_%u", nu->id, nu->nickno);
			peer_sendf(nu->p, "USER lg%u 0 * :baton-loadgen network user", nu->id);
		}
	for (unsigned i = 0; i < o->nscen; i++)
		scenario_step(lg, i);
	if (lg->server_restarting == 0 && !lg->obs && lg->phase < PH_SETTLE && lg->obs_lost_in_restart) {
		lg->obs_lost_in_restart = false;
		obs_connect(lg);
	}

	switch (lg->phase) {
	case PH_LOGIN: {
		unsigned per_tick = (unsigned)ceil(o->login_rate * TICK_US / 1e6);
		for (unsigned k = 0; k < per_tick && lg->next_login < o->nbouncer; k++)
			bc_connect(lg, &lg->bc[lg->next_login++]);
		/* the trace's users already present, at the same pace */
		for (unsigned k = 0; k < per_tick && lg->next_presence < lg->npres; k++) {
			const struct model_presence *pr = &lg->pres[lg->next_presence++];
			struct netuser *nu = nu_get(lg, pr->who);
			if (!nu || !nu_online(lg, nu) || nu_find(nu, pr->chan) >= 0)
				continue;
			char name[16];
			if (nu_add_chan(nu, pr->chan))
				nu_cmd(nu, "JOIN %s", model_chan_name(pr->chan, name, sizeof(name)));
		}
		if (lg->nattached == o->nbouncer && lg->obs_ready &&
		    lg->next_presence >= lg->npres) {
			/* one more second for replays of pre-traffic lines and
			 * the presence JOINs to settle */
			if (!lg->t_phase) {
				lg->t_phase = now;
				note(lg, "every client attached");
			} else if (now - lg->t_phase > 1000000) {
				lg->t_phase = 0;
				start_traffic(lg);
			}
		} else if ((double)(now - lg->t_start) / 1e6 > o->attach_timeout) {
			note(lg, "setup: only %u of %u clients attached after %.0f s; starting anyway",
			     lg->nattached, o->nbouncer, o->attach_timeout);
			start_traffic(lg);
		}
		break;
	}
	case PH_TRAFFIC: {
		bool by_exec = false;
		if (rel_s(lg) >= lg->res->duration || (by_exec = execs_ended(lg, now))) {
			lg->phase = PH_DRAIN;
			lg->t_phase = now;
			lg->res->traffic_s = rel_s(lg);
			note(lg, "traffic ends%s: %zu of %zu events run; draining",
			     by_exec ? " (--end-after-exec)" : "", lg->next_ev, lg->nsched);
		}
		break;
	}
	case PH_DRAIN: {
		bool busy = scenarios_busy(lg);
		bool done = !busy && lg->nattached == o->nbouncer &&
			    ledger_outstanding(lg->led) == 0;
		if (done || (double)(now - lg->t_phase) / 1e6 > o->drain_timeout) {
			lg->res->drained = done;
			lg->res->drain_s = (double)(now - lg->t_phase) / 1e6;
			note(lg, "drain %s: %llu deliveries outstanding", done ? "complete" : "timed out",
			     (unsigned long long)ledger_outstanding(lg->led));
			lg->phase = PH_SETTLE;
			lg->t_phase = now;
		}
		break;
	}
	case PH_SETTLE:
		/* one more second to catch late duplicates */
		if (now - lg->t_phase > 1000000) {
			lg->phase = PH_DONE;
			event_base_loopbreak(lg->base);
		}
		break;
	case PH_DONE:
		break;
	}
}

/* ---- setup and teardown ---- */

void driver_user_name(const struct lg_opts *o, unsigned u, char *user, size_t ulen,
		      char *nick, size_t nlen)
{
	int width = 3;
	for (unsigned v = o->nbouncer ? o->nbouncer - 1 : 0; v >= 1000; v /= 10)
		width++;
	snprintf(user, ulen, "%s%0*u", o->user_prefix, width, u);
	snprintf(nick, nlen, "%s%0*u", o->nick_prefix, width, u);
}

int driver_run(const struct lg_opts *o, const struct trace *tr, struct model *m,
	       struct lg_result *res)
{
	struct lg lg = { .o = o, .tr = tr, .m = m, .res = res };
	int r = -ENOMEM;

	lg.rng = o->seed * 7919 + 17;
	lg.nchans = res->nchans;
	lg.t_start = ledger_now_us();
	lg.sched = model_schedule(m, &lg.nsched);
	lg.pres = model_presence(m, &lg.npres);
	lg.nidentities = model_identities(m);
	lg.base = event_base_new();
	lg.led = ledger_new(o->nbouncer, lg.nchans);
	lg.bc = calloc(o->nbouncer ? o->nbouncer : 1, sizeof(*lg.bc));
	lg.by_who = calloc(lg.nidentities, sizeof(*lg.by_who));
	lg.obs_chan = calloc(lg.nchans, 1);
	lg.scen_rt = calloc(o->nscen + 1, sizeof(*lg.scen_rt));
	if (!lg.base || !lg.led || !lg.bc || !lg.by_who || !lg.obs_chan || !lg.scen_rt)
		goto out;
	for (unsigned i = 0; i < o->nscen; i++)
		lg.scen_rt[i].win_clients = lg.scen_rt[i].win_obs = -1;
	for (unsigned u = 0; u < o->nbouncer; u++) {
		unsigned n;
		const uint16_t *uc = model_user_chans(m, u, &n);
		for (unsigned i = 0; i < n; i++)
			if (ledger_member(lg.led, u, uc[i]) < 0)
				goto out;
		int64_t s = ledger_sender(lg.led, (int32_t)u);
		if (s < 0)
			goto out;
		lg.bc[u] = (struct bclient){ .lg = &lg, .idx = u, .sender = (uint32_t)s };
	}
	lg.tick = event_new(lg.base, -1, EV_PERSIST, tick_cb, &lg);
	lg.sched_ev = evtimer_new(lg.base, sched_cb, &lg);
	if (!lg.tick || !lg.sched_ev)
		goto out;
	struct timeval tv = { 0, TICK_US };
	event_add(lg.tick, &tv);
	obs_connect(&lg);
	if (!lg.obs) {
		fprintf(stderr, "baton-loadgen: cannot connect to the IRC server: %s\n", strerror(errno));
		r = -errno;
		goto out;
	}
	note(&lg, "setup: observer connecting, %u bouncer logins and %zu present network users at %.0f/s",
	     o->nbouncer, lg.npres, o->login_rate);
	event_base_dispatch(lg.base);

	ledger_finish(lg.led);
	res->led = *ledger_stats(lg.led);
	/* a scenario that never started tested nothing: its AT was beyond
	 * the traffic (or setup never ended) */
	for (unsigned i = 0; i < o->nscen; i++)
		if (lg.scen_rt[i].step == 0) {
			res->failed_commands++;
			res->never_started++;
			timeline_add(res, lg.t0 ? rel_s(&lg) : 0, "%s at +%g s: never started (traffic ended at +%.1f s)",
				     scen_kind_names[o->scen[i].kind], o->scen[i].at, res->traffic_s);
		}
	for (unsigned u = 0; u < o->nbouncer; u++)
		if (lg.bc[u].state != BC_ATTACHED)
			res->not_attached++;
	r = 0;
out:
	for (unsigned i = 0; i < o->nscen; i++)
		if (o->scen[i].pid > 0) {
			scenario_kill(&o->scen[i]);
			res->failed_commands++;
			timeline_add(res, lg.t0 ? rel_s(&lg) : 0, "%s: `%.60s` still running at the end: killed",
				     scen_kind_names[o->scen[i].kind], o->scen[i].cmd);
		}
	if (r == -ENOMEM)
		fprintf(stderr, "baton-loadgen: out of memory during setup\n");
	for (unsigned u = 0; lg.bc && u < o->nbouncer; u++)
		peer_free(lg.bc[u].p);
	for (uint32_t i = 0; i < lg.nall; i++) {
		peer_free(lg.all[i]->p);
		nu_drop_pending(lg.all[i]);
		free(lg.all[i]->pend);
		free(lg.all[i]->chans);
		free(lg.all[i]);
	}
	peer_free(lg.obs);
	/* retired peers still waiting for their close die with the base */
	if (lg.tick)
		event_free(lg.tick);
	if (lg.sched_ev)
		event_free(lg.sched_ev);
	if (lg.base)
		event_base_free(lg.base);
	free(lg.all);
	free(lg.by_who);
	free(lg.bc);
	free(lg.obs_chan);
	free(lg.scen_rt);
	ledger_free(lg.led);
	return r;
}
