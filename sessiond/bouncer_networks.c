/* sessiond/bouncer_networks.c: see bouncer_networks.h. */
#include "sessiond/bouncer_networks.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/config.h"
#include "common/log.h"
#include "sessiond/conn.h"
#include "sessiond/irc.h"
#include "sessiond/service.h"
#include "sessiond/session.h"

static const char *first_network(const struct baton_config *cfg, const char *user,
				 size_t ulen)
{
	for (size_t i = 0; cfg && i < cfg->nsessions; i++)
		if (strlen(cfg->sessions[i].user) == ulen &&
		    strncmp(cfg->sessions[i].user, user, ulen) == 0)
			return cfg->sessions[i].network;
	return NULL;
}

int bouncer_networks_ident(const struct client *cl, char **ident,
			   const char **password)
{
	const char *colon = cl->pass ? strchr(cl->pass, ':') : NULL;
	const char *name, *net;
	size_t nlen, ulen;

	*ident = NULL;
	*password = NULL;
	if (colon != NULL) {
		name = cl->pass;
		nlen = (size_t)(colon - cl->pass);
	} else if (cl->user != NULL) {
		name = cl->user;
		nlen = strlen(cl->user);
	} else {
		return 0;
	}
	if (memchr(name, '/', nlen) != NULL)
		return 0; /* names a network: not ours */
	ulen = strcspn(name, "@");
	if (ulen > nlen)
		ulen = nlen;
	net = first_network(bouncer_config(cl->b), name, ulen);
	if (net == NULL)
		return 0;
	if (asprintf(ident, "%.*s/%s", (int)nlen, name, net) < 0) {
		*ident = NULL;
		return -ENOMEM;
	}
	*password = colon != NULL ? colon + 1 : cl->pass;
	return 0;
}

const char *bouncer_networks_isupport(const struct client *cl, char *buf, size_t len)
{
	if (!(cl->caps & CLIENT_CAP_BOUNCER_NETWORKS) || cl->s == NULL)
		return NULL;
	snprintf(buf, len, "BOUNCER_NETID=%s", cl->s->network);
	return buf;
}

/* ---- replies ---- */

/* A client's word as one middle parameter of a reply: at most max bytes,
 * blanks and controls as '_', never empty or starting with ':' ("*"). */
static const char *word(char *out, size_t max, const char *in)
{
	size_t n = 0;

	for (; in && in[n] && n < max; n++)
		out[n] = (unsigned char)in[n] <= ' ' || in[n] == 0x7f ? '_' : in[n];
	out[n] = '\0';
	if (n == 0 || out[0] == ':')
		return "*";
	return out;
}

/* FAIL BOUNCER code sub [context...] :text (standard replies). */
static void bn_fail(struct client *cl, const char *code, const char *sub,
		    const char *ctx1, const char *ctx2, const char *text)
{
	char line[512], w0[40], w1[80], w2[40];

	snprintf(line, sizeof(line), ":%s FAIL BOUNCER %s %s%s%s%s%s :%.300s",
		 BATON_SERVER_NAME, code, word(w0, 32, sub), ctx1 ? " " : "",
		 ctx1 ? word(w1, 64, ctx1) : "", ctx2 ? " " : "",
		 ctx2 ? word(w2, 32, ctx2) : "", text);
	client_send_tagged(cl, line, 0);
}

/* A tag value escaped (message-tags): ";" "\s" "\\" CR LF. */
static void esc(char *out, size_t len, const char *v)
{
	size_t o = 0;

	for (; v && *v && o + 3 < len; v++) {
		const char *r = *v == ';' ? "\\:" : *v == ' ' ? "\\s" : *v == '\\' ? "\\\\"
				: *v == '\r' ? "\\r" : *v == '\n' ? "\\n" : NULL;

		if (r != NULL) {
			memcpy(out + o, r, 2);
			o += 2;
		} else {
			out[o++] = *v;
		}
	}
	out[o] = '\0';
}

static void attr(char *buf, size_t len, const char *key, const char *value)
{
	char e[256];
	size_t n = strlen(buf);

	if (value == NULL || n >= len)
		return;
	esc(e, sizeof(e), value);
	snprintf(buf + n, len - n, "%s%s=%s", n ? ";" : "", key, e);
}

static void send_network(struct client *cl, const char *batch,
			 const struct config_session *cs)
{
	const struct baton_config *cfg = bouncer_config(cl->b);
	const struct config_network *n = config_find_network(cfg, cs->network);
	char attrs[400] = "", line[512];

	attr(attrs, sizeof(attrs), "name", cs->network);
	attr(attrs, sizeof(attrs), "state",
	     service_session_state(cl->b, cs->user, cs->network, NULL, 0));
	if (n != NULL) {
		attr(attrs, sizeof(attrs), "host", n->host);
		attr(attrs, sizeof(attrs), "port", n->port);
		attr(attrs, sizeof(attrs), "tls", n->tls ? "1" : "0");
	}
	attr(attrs, sizeof(attrs), "nickname", cs->nick);
	attr(attrs, sizeof(attrs), "username", cs->username);
	attr(attrs, sizeof(attrs), "realname", cs->realname);
	snprintf(line, sizeof(line), "%s%s%s:%s BOUNCER NETWORK %s %s", batch ? "@batch=" : "",
		 batch ? batch : "", batch ? " " : "", BATON_SERVER_NAME, cs->network, attrs);
	conn_send(cl->conn, line);
}

static void listnetworks(struct client *cl);

/* ---- -notify ---- */

static struct client **reg;
static size_t nreg, capreg;

static bool reg_has(const struct client *cl, size_t *at)
{
	for (size_t i = 0; i < nreg; i++)
		if (reg[i] == cl) {
			if (at)
				*at = i;
			return true;
		}
	return false;
}

void bouncer_networks_client_gone(struct client *cl)
{
	size_t at;

	if (reg_has(cl, &at))
		reg[at] = reg[--nreg];
}

void bouncer_networks_client_update(struct client *cl, bool initial)
{
	bool want = cl->phase == CLIENT_ATTACHED && cl->s != NULL &&
		    (cl->caps & CLIENT_CAP_BOUNCER_NETWORKS) &&
		    (cl->caps & CLIENT_CAP_BOUNCER_NETWORKS_NOTIFY);

	if (!want) {
		bouncer_networks_client_gone(cl);
		return;
	}
	if (!reg_has(cl, NULL)) {
		if (nreg == capreg) {
			size_t cap = capreg ? capreg * 2 : 16;
			struct client **v = realloc(reg, cap * sizeof(*v));

			if (v == NULL) {
				/* no notifications for it: said, not silent */
				client_send_tagged(cl, ":" BATON_SERVER_NAME " NOTE BOUNCER OUT_OF_MEMORY :No network notifications (out of memory): list again", 0);
				return;
			}
			reg = v;
			capreg = cap;
		}
		reg[nreg++] = cl;
	}
	if (initial)
		listnetworks(cl);
}

static void notify_user(const char *user, const char *line)
{
	for (size_t i = 0; i < nreg; i++)
		if (reg[i]->s != NULL && strcmp(reg[i]->s->user, user) == 0 &&
		    !conn_is_dead(reg[i]->conn))
			conn_send(reg[i]->conn, line);
}

void bouncer_networks_state_changed(struct session *s)
{
	char line[200];

	if (nreg == 0)
		return;
	snprintf(line, sizeof(line), ":%s BOUNCER NETWORK %s state=%s", BATON_SERVER_NAME,
		 s->network, service_session_state(s->b, s->user, s->network, NULL, 0));
	notify_user(s->user, line);
}

static void attrs_diff(char *attrs, size_t len, const struct baton_config *from,
		       const struct baton_config *to, const struct config_session *a,
		       const struct config_session *b)
{
	const struct config_network *na = config_find_network(from, a->network);
	const struct config_network *nb = config_find_network(to, b->network);
	const char *pairs[][3] = {
		{ "nickname", a->nick, b->nick },
		{ "username", a->username, b->username },
		{ "realname", a->realname, b->realname },
		{ "host", na ? na->host : NULL, nb ? nb->host : NULL },
		{ "port", na ? na->port : NULL, nb ? nb->port : NULL },
		{ "tls", na ? (na->tls ? "1" : "0") : NULL, nb ? (nb->tls ? "1" : "0") : NULL },
	};

	attrs[0] = '\0';
	for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
		const char *x = pairs[i][1], *y = pairs[i][2];

		if ((x == NULL) != (y == NULL) || (x && strcmp(x, y) != 0))
			attr(attrs, len, pairs[i][0], y ? y : "");
	}
}

void bouncer_networks_reloaded(const struct baton_config *from,
			       const struct baton_config *to)
{
	char line[512], attrs[400];

	/* per notified client: its user's sessions, both ways */
	for (size_t i = 0; i < nreg; i++) {
		struct client *cl = reg[i];
		const char *user;

		if (cl->s == NULL || conn_is_dead(cl->conn))
			continue;
		user = cl->s->user;
		for (size_t k = 0; k < from->nsessions; k++) {
			const struct config_session *a = &from->sessions[k], *b;

			if (strcmp(a->user, user) != 0)
				continue;
			b = config_find_session(to, user, a->network);
			if (b == NULL) {
				snprintf(line, sizeof(line), ":%s BOUNCER NETWORK %s *",
					 BATON_SERVER_NAME, a->network);
				conn_send(cl->conn, line);
				continue;
			}
			attrs_diff(attrs, sizeof(attrs), from, to, a, b);
			if (attrs[0]) {
				snprintf(line, sizeof(line), ":%s BOUNCER NETWORK %s %s",
					 BATON_SERVER_NAME, a->network, attrs);
				conn_send(cl->conn, line);
			}
		}
		for (size_t k = 0; k < to->nsessions; k++) {
			const struct config_session *b = &to->sessions[k];

			if (strcmp(b->user, user) == 0 &&
			    config_find_session(from, user, b->network) == NULL)
				send_network(cl, NULL, b);
		}
	}
}

static void listnetworks(struct client *cl)
{
	const struct baton_config *cfg = bouncer_config(cl->b);
	static unsigned long serial;
	char ref[32], line[128];
	bool batch = cl->caps & CLIENT_CAP_BATCH;

	snprintf(ref, sizeof(ref), "bn%lu", ++serial);
	if (batch) {
		snprintf(line, sizeof(line), ":%s BATCH +%s soju.im/bouncer-networks",
			 BATON_SERVER_NAME, ref);
		conn_send(cl->conn, line);
	}
	for (size_t i = 0; cfg && i < cfg->nsessions; i++)
		if (strcmp(cfg->sessions[i].user, cl->s->user) == 0)
			send_network(cl, batch ? ref : NULL, &cfg->sessions[i]);
	if (batch) {
		snprintf(line, sizeof(line), ":%s BATCH -%s", BATON_SERVER_NAME, ref);
		conn_send(cl->conn, line);
	}
}

/* ---- edits ---- */

static void edit_done(struct client *cl, bool ok, const char *why, const char *ctx)
{
	char sub[32], netid[SERVICE_MAX_NETWORK + 1];

	if (sscanf(ctx, "%31s %64s", sub, netid) != 2)
		return;
	if (ok) {
		char line[160];

		snprintf(line, sizeof(line), ":%s BOUNCER %s %s", BATON_SERVER_NAME, sub, netid);
		client_send_tagged(cl, line, 0);
	} else {
		bn_fail(cl, "REFUSED", sub, strcmp(sub, "ADDNETWORK") == 0 ? "*" : netid, NULL, why);
	}
}

/* Attributes "k=v;k2=v2" into session keys "nick=...": returns false after
 * a FAIL. *name: the name attribute (unescaped into namebuf), host too. */
static bool parse_attrs(struct client *cl, const char *sub, const char *netid,
			const char *attrs, char pairs[][SESSION_EDIT_MAX_PAIR + 1],
			size_t *npairs, char *name, char *host, size_t hostlen)
{
	static const struct { const char *attr, *key; } map[] = {
		{ "nickname", "nick" }, { "username", "username" }, { "realname", "realname" },
	};
	static const char *const ro[] = { "state", "port", "tls", "pass" };
	const char *ctx = netid ? netid : "*";
	char copy[512];

	*npairs = 0;
	name[0] = host[0] = '\0';
	if (strlen(attrs) >= sizeof(copy)) {
		bn_fail(cl, "INVALID_ATTRIBUTE", sub, ctx, "*", "Attributes too long");
		return false;
	}
	snprintf(copy, sizeof(copy), "%s", attrs);
	for (char *save = NULL, *t = strtok_r(copy, ";", &save); t;
	     t = strtok_r(NULL, ";", &save)) {
		char *eq = strchr(t, '='), key[40], val[SESSION_EDIT_MAX_PAIR + 1];
		bool done = false;

		snprintf(key, sizeof(key), "%.*s", eq ? (int)(eq - t) : (int)strlen(t), t);
		/* the value unescaped by the tag parser: "@k=v" through it */
		{
			char fake[600];

			snprintf(fake, sizeof(fake), "%s", t);
			if (eq == NULL || irc_tag_get(fake, key, val, sizeof(val)) != 1)
				val[0] = '\0';
		}
		for (size_t i = 0; i < sizeof(ro) / sizeof(ro[0]); i++)
			if (strcmp(key, ro[i]) == 0) {
				bn_fail(cl, "READ_ONLY_ATTRIBUTE", sub, ctx, key, "Read-only attribute (the operator sets it)");
				return false;
			}
		if (strcmp(key, "name") == 0 || strcmp(key, "host") == 0) {
			if (netid != NULL) { /* CHANGENETWORK: the network stays */
				bn_fail(cl, "READ_ONLY_ATTRIBUTE", sub, ctx, key, "Read-only attribute (the network of a session does not change)");
				return false;
			}
			if (strlen(val) > SERVICE_MAX_NETWORK * 4) {
				bn_fail(cl, "INVALID_ATTRIBUTE", sub, ctx, key, "Invalid attribute value");
				return false;
			}
			snprintf(strcmp(key, "name") == 0 ? name : host,
				 strcmp(key, "name") == 0 ? SERVICE_MAX_NETWORK * 4 + 1 : hostlen, "%s", val);
			continue;
		}
		for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
			if (strcmp(key, map[i].attr) != 0)
				continue;
			if (*npairs == BN_MAX_ATTRS ||
			    strlen(map[i].key) + 1 + strlen(val) > SESSION_EDIT_MAX_PAIR ||
			    !val[0] || strpbrk(val, "\r\n") != NULL) {
				bn_fail(cl, "INVALID_ATTRIBUTE", sub, ctx, key, "Invalid attribute value");
				return false;
			}
			{ /* fits: checked above */
				size_t kl = strlen(map[i].key), vl = strlen(val);
				char *d = pairs[(*npairs)++];

				memcpy(d, map[i].key, kl);
				d[kl] = '=';
				memcpy(d + kl + 1, val, vl + 1);
			}
			done = true;
		}
		if (!done) {
			bn_fail(cl, "UNKNOWN_ATTRIBUTE", sub, ctx, key, "Unknown attribute");
			return false;
		}
	}
	return true;
}

/* The operator's network an ADDNETWORK names: by name (case-insensitive),
 * else by host when exactly one network has it. */
static const struct config_network *find_network(const struct baton_config *cfg,
						 const char *name, const char *host)
{
	const struct config_network *hit = NULL;
	size_t nhost = 0;

	for (size_t i = 0; cfg && i < cfg->nnetworks; i++) {
		const struct config_network *n = &cfg->networks[i];

		if (name[0] && strcasecmp(n->name, name) == 0) {
			if (host[0] && strcasecmp(n->host, host) != 0)
				return NULL;
			return n;
		}
		if (!name[0] && host[0] && strcasecmp(n->host, host) == 0) {
			hit = n;
			nhost++;
		}
	}
	return nhost == 1 ? hit : NULL;
}

static void edit(struct client *cl, const struct irc_msg *m, const char *sub)
{
	const struct baton_config *cfg = bouncer_config(cl->b);
	char pairs[BN_MAX_ATTRS][SESSION_EDIT_MAX_PAIR + 1], *pv[BN_MAX_ATTRS];
	char name[SERVICE_MAX_NETWORK * 4 + 1], host[256], why[256], ctx[96];
	const char *netid = NULL, *attrs = "";
	size_t npairs = 0;
	enum session_edit_op op;

	if (strcmp(sub, "ADDNETWORK") == 0) {
		op = SESSION_EDIT_ADD;
		if (m->nparams < 2) {
			bn_fail(cl, "NEED_ATTRIBUTE", sub, "host", NULL, "Missing required attribute");
			return;
		}
		attrs = m->params[1];
	} else {
		op = strcmp(sub, "CHANGENETWORK") == 0 ? SESSION_EDIT_SET : SESSION_EDIT_DEL;
		if (m->nparams < 2) {
			bn_fail(cl, "INVALID_NETID", sub, "*", NULL, "Network not found");
			return;
		}
		netid = m->params[1];
		if (strlen(netid) > SERVICE_MAX_NETWORK || !cfg ||
		    config_find_session(cfg, cl->s->user, netid) == NULL) {
			bn_fail(cl, "INVALID_NETID", sub, netid, NULL, "Network not found");
			return;
		}
		if (op == SESSION_EDIT_SET) {
			if (m->nparams < 3 || !m->params[2][0]) {
				bn_fail(cl, "NEED_ATTRIBUTE", sub, netid, "*", "Give at least one attribute");
				return;
			}
			attrs = m->params[2];
		}
	}
	if (!parse_attrs(cl, sub, netid, attrs, pairs, &npairs, name, host, sizeof(host)))
		return;
	if (op == SESSION_EDIT_ADD) {
		const struct config_network *n;

		if (!name[0] && !host[0]) {
			bn_fail(cl, "NEED_ATTRIBUTE", sub, "host", NULL, "Missing required attribute");
			return;
		}
		n = find_network(cfg, name, host);
		if (n == NULL) {
			bn_fail(cl, "INVALID_ATTRIBUTE", sub, "*", name[0] ? "name" : "host",
				"No such network on this bouncer (the operator defines networks)");
			return;
		}
		netid = n->name;
	}
	for (size_t i = 0; i < npairs; i++)
		pv[i] = pairs[i];
	snprintf(ctx, sizeof(ctx), "%s %s", sub, netid);
	if (service_edit(cl, op, netid, pv, npairs, edit_done, ctx, why, sizeof(why)) < 0)
		bn_fail(cl, "REFUSED", sub, op == SESSION_EDIT_ADD ? "*" : netid, NULL, why);
}

/* ---- BIND (before registration) ---- */

static void bn_bind(struct client *cl, const struct irc_msg *m)
{
	const struct baton_config *cfg = bouncer_config(cl->b);
	const char *netid = m->nparams >= 2 ? m->params[1] : "";
	char *colon, *n = NULL;

	if (!netid[0] || strlen(netid) > SERVICE_MAX_NETWORK || strpbrk(netid, "/@: ") != NULL) {
		bn_fail(cl, "INVALID_NETID", "BIND", netid[0] ? "*" : NULL, NULL, "Network not found");
		return;
	}
	if (cl->fwd_user != NULL) { /* logged in by SASL: the network is checked now */
		if (!cfg || config_find_session(cfg, cl->fwd_user, netid) == NULL) {
			bn_fail(cl, "INVALID_NETID", "BIND", netid, NULL, "Network not found");
			return;
		}
		n = strdup(netid);
		if (n == NULL)
			return;
		free(cl->fwd_network);
		cl->fwd_network = n;
		return;
	}
	/* PASS user:password, or USER user: the network goes into the
	 * ident (checked with the password at registration, so nothing is
	 * told about a user before it logged in). */
	colon = cl->pass ? strchr(cl->pass, ':') : NULL;
	if (colon != NULL && memchr(cl->pass, '/', (size_t)(colon - cl->pass)) == NULL) {
		if (asprintf(&n, "%.*s/%s%s", (int)(colon - cl->pass), cl->pass, netid, colon) < 0)
			return;
		explicit_bzero(cl->pass, strlen(cl->pass));
		free(cl->pass);
		cl->pass = n;
		return;
	}
	if (colon == NULL && cl->user != NULL && strchr(cl->user, '/') == NULL) {
		if (asprintf(&n, "%s/%s", cl->user, netid) < 0)
			return;
		free(cl->user);
		cl->user = n;
		return;
	}
	bn_fail(cl, "ACCOUNT_REQUIRED", "BIND", NULL, NULL,
		"Authentication required: BIND once, after PASS user:password or SASL, with no network in the login");
}

void bouncer_networks_command(struct client *cl, const struct irc_msg *m)
{
	const char *sub = m->nparams >= 1 ? m->params[0] : "";
	char up[32];
	size_t i;

	for (i = 0; sub[i] && i + 1 < sizeof(up); i++)
		up[i] = (char)(sub[i] >= 'a' && sub[i] <= 'z' ? sub[i] - 32 : sub[i]);
	up[i] = '\0';
	if (strcmp(up, "BIND") == 0) {
		if (cl->phase != CLIENT_PENDING)
			bn_fail(cl, "REGISTRATION_IS_COMPLETED", "BIND", NULL, NULL,
				"Cannot bind to a network after registration");
		else
			bn_bind(cl, m);
		return;
	}
	if (strcmp(up, "LISTNETWORKS") != 0 && strcmp(up, "ADDNETWORK") != 0 &&
	    strcmp(up, "CHANGENETWORK") != 0 && strcmp(up, "DELNETWORK") != 0) {
		bn_fail(cl, "UNKNOWN_COMMAND", up[0] ? up : "*", NULL, NULL, "Unknown subcommand");
		return;
	}
	if (cl->phase != CLIENT_ATTACHED || cl->s == NULL) {
		bn_fail(cl, "ACCOUNT_REQUIRED", up, NULL, NULL, "Register first");
		return;
	}
	if (strcmp(up, "LISTNETWORKS") == 0)
		listnetworks(cl);
	else
		edit(cl, m, up);
}
