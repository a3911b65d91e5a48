/* sessiond/sasl.c: SASL during upstream registration (sasl.h). */
#include "sessiond/sasl.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/log.h"
#include "sessiond/conn.h"
#include "sessiond/irc.h"
#include "sessiond/sasl_mech.h"
#include "sessiond/session.h"

/* AUTHENTICATE messages the server may send in one exchange: SCRAM needs
 * two, PLAIN and EXTERNAL one; more is a server looping us. */
#define SASL_MAX_MSGS 4
/* Restarts of an exchange after a migration, per connection. */
#define SASL_MAX_RESTARTS 2

enum sasl_state {
	SASL_IDLE = 0,       /* nothing asked yet */
	SASL_SENT_MECH,      /* AUTHENTICATE MECH sent, waiting for "+" */
	SASL_SENT_FIRST,     /* SCRAM client-first sent */
	SASL_SENT_FINAL,     /* SCRAM client-final sent, waiting for v= */
	SASL_SENT_RESPONSE,  /* last response sent, waiting for 903/904 */
	SASL_ADOPTED,        /* migrated mid-exchange: restart at the next line */
	SASL_ABORTING,       /* "AUTHENTICATE *" sent after adoption: wait 906 */
	SASL_DONE,           /* 903 */
	SASL_FAILED,         /* the connection is being closed */
};

struct sasl {
	enum sasl_state state;
	bool offered;        /* "sasl" in CAP LS */
	bool listed;         /* our mechanism in its value (or no value) */
	bool requested;      /* in our CAP REQ */
	char mechs[128];     /* the server's list (908 or sasl=), for messages */
	unsigned msgs;       /* AUTHENTICATE messages received this exchange */
	unsigned restarts;
	struct sasl_inbuf in;
	struct sasl_scram scram;
};

static const struct config_session *sasl_cfg(const struct session *s)
{
	return session_config(s);
}

static enum sasl_mech sasl_cfg_mech(const struct session *s)
{
	const struct config_session *cs = sasl_cfg(s);
	return cs && cs->sasl ? sasl_mech_parse(cs->sasl) : SASL_MECH_NONE;
}

bool sasl_configured(const struct session *s)
{
	return sasl_cfg_mech(s) != SASL_MECH_NONE;
}

void sasl_free(struct sasl *sa)
{
	if (!sa)
		return;
	OPENSSL_cleanse(sa, sizeof(*sa));
	free(sa);
}

static struct sasl *sasl_get(struct upstream *u)
{
	if (!u->sasl)
		u->sasl = calloc(1, sizeof(*u->sasl));
	return u->sasl;
}

const char *sasl_failure(const struct session *s)
{
	return s->sasl_failure;
}

/* The connection cannot register authenticated: record why, log, tell the
 * clients, close (upstream_lost() -> sasl_refused()). */
static void sasl_fail(struct upstream *u, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void sasl_fail(struct upstream *u, const char *fmt, ...)
{
	struct session *s = u->s;
	char why[SASL_REASON_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	if (u->sasl)
		u->sasl->state = SASL_FAILED;
	u->verdict = GOV_AUTH;
	char *copy = strdup(why);
	if (copy) { /* on OOM the previous reason stays (util.h) */
		free(s->sasl_failure);
		s->sasl_failure = copy;
	}
	s->sasl_failure_at_ms = clock_wall_ms();
	log_error("upstream", "%s: SASL to %s failed: %s (not registering without it)",
		  s->key, s->network, why);
	session_notice_all(s, "SASL authentication to %s failed: %s", s->network, why);
	conn_send(u->conn, "QUIT :SASL authentication failed");
	conn_close(u->conn, why, true);
}

int sasl_cap_ls(struct upstream *u, const char *token)
{
	size_t nl = strcspn(token, "=");
	/* Only during registration: a CAP LS the network repeats later
	 * changes nothing (the session is authenticated or not by then). */
	if (nl != 4 || strncasecmp(token, "sasl", 4) != 0 || !sasl_configured(u->s) ||
	    u->phase >= UP_WELCOMED)
		return 0;
	struct sasl *sa = sasl_get(u);
	if (!sa)
		return -ENOMEM;
	const char *list = token[nl] == '=' ? token + nl + 1 : "";
	sa->offered = true;
	sa->listed = sasl_mech_in_list(list, sasl_cfg_mech(u->s));
	snprintf(sa->mechs, sizeof(sa->mechs), "%s", list);
	if (!sa->listed)
		return 0;
	for (size_t i = 0; i < u->ncap_offered; i++)
		if (strcmp(u->cap_offered[i], "sasl") == 0)
			return 0;
	if (util_strv_push(&u->cap_offered, &u->ncap_offered, "sasl") < 0)
		return -ENOMEM;
	sa->requested = true;
	return 0;
}

bool sasl_cap_ls_end(struct upstream *u)
{
	if (!sasl_configured(u->s) || u->phase >= UP_WELCOMED ||
	    (u->sasl && u->sasl->state != SASL_IDLE))
		return true;
	struct sasl *sa = u->sasl;
	const char *mech = sasl_mech_name(sasl_cfg_mech(u->s));
	if (!sa || !sa->offered) {
		sasl_fail(u, "the network does not offer SASL (no sasl capability)");
		return false;
	}
	if (!sa->listed) {
		sasl_fail(u, "the network does not offer %s (it offers %.100s)", mech,
			  sa->mechs);
		return false;
	}
	return true;
}

static void emit_line(void *arg, const char *param)
{
	struct upstream *u = arg;
	conn_sendf(u->conn, "AUTHENTICATE %s", param);
}

/* Send one message of the exchange, framed (sasl_mech.h). */
static void sasl_send(struct upstream *u, const void *data, size_t len)
{
	if (sasl_frame_out(data, len, emit_line, u) < 0)
		sasl_fail(u, "our SASL message is too long (%zu bytes)", len);
}

static void sasl_end_unconfigured(struct upstream *u);

static void sasl_begin(struct upstream *u)
{
	struct sasl *sa = u->sasl;
	if (!sasl_configured(u->s)) {
		/* A restart after an upgrade whose config dropped SASL. */
		sasl_end_unconfigured(u);
		return;
	}
	sa->state = SASL_SENT_MECH;
	sa->msgs = 0;
	sa->in.len = 0;
	conn_sendf(u->conn, "AUTHENTICATE %s", sasl_mech_name(sasl_cfg_mech(u->s)));
}

static bool list_has_sasl(const char *list)
{
	char tmp[CONN_MAX_LINE + 1];
	snprintf(tmp, sizeof(tmp), "%s", list);
	for (char *save = NULL, *t = strtok_r(tmp, " ", &save); t;
	     t = strtok_r(NULL, " ", &save))
		if (strcasecmp(t, "sasl") == 0)
			return true;
	return false;
}

bool sasl_cap_ack(struct upstream *u, const char *list)
{
	struct sasl *sa = u->sasl;
	if (!sa || !sa->requested || !list_has_sasl(list))
		return sa && sa->state != SASL_IDLE && sa->state != SASL_DONE;
	if (sa->state == SASL_IDLE)
		sasl_begin(u);
	return sa->state != SASL_DONE;
}

void sasl_cap_nak(struct upstream *u, const char *list)
{
	struct sasl *sa = u->sasl;
	if (sa && sa->requested && sa->state == SASL_IDLE && list_has_sasl(list))
		sasl_fail(u, "the network refused CAP REQ sasl");
}

bool sasl_welcome(struct upstream *u)
{
	if (!sasl_configured(u->s)) {
		/* A failure from when SASL was configured is stale now. */
		free(u->s->sasl_failure);
		u->s->sasl_failure = NULL;
		return true;
	}
	if (u->sasl && u->sasl->state == SASL_DONE)
		return true;
	if (u->sasl && u->sasl->state == SASL_FAILED)
		return false;
	sasl_fail(u, "the network registered us without SASL (no CAP negotiation)");
	return false;
}

/* SASL is no longer configured (the config of the worker that adopted the
 * connection dropped it): registration goes on without it. */
static void sasl_end_unconfigured(struct upstream *u)
{
	u->sasl->state = SASL_DONE;
	log_info("upstream", "%s: SASL no longer configured: registering without it",
		 u->s->key);
	if (u->cap_negotiating) {
		conn_send(u->conn, "CAP END");
		u->cap_negotiating = false;
	}
}

/* The exchange succeeded (903, or 907 after a restart): registration
 * goes on. */
static void sasl_done(struct upstream *u)
{
	struct session *s = u->s;
	struct sasl *sa = u->sasl;
	sasl_scram_clear(&sa->scram);
	sa->state = SASL_DONE;
	if (s->sasl_failure) {
		session_notice_all(s, "SASL authentication to %s succeeded again", s->network);
		free(s->sasl_failure);
		s->sasl_failure = NULL;
	}
	const char *mech = sasl_mech_name(sasl_cfg_mech(s));
	log_info("upstream", "%s: SASL %s succeeded", s->key, mech ? mech : "(exchange of the previous worker)");
	if (u->cap_negotiating) {
		conn_send(u->conn, "CAP END");
		u->cap_negotiating = false;
	}
}

/* One complete message from the server in the exchange: answer it. */
static void sasl_step(struct upstream *u, const unsigned char *msg, size_t len)
{
	struct sasl *sa = u->sasl;
	const struct config_session *cs = sasl_cfg(u->s);
	enum sasl_mech mech = sasl_cfg_mech(u->s);
	const char *user = cs->sasl_username ? cs->sasl_username :
			   cs->nick ? cs->nick : u->s->user;
	unsigned char out[SASL_MSG_MAX];
	char text[SASL_MSG_MAX];
	int n;

	if (mech == SASL_MECH_NONE) {
		conn_send(u->conn, "AUTHENTICATE *"); /* its 906 ends it */
		return;
	}
	if (++sa->msgs > SASL_MAX_MSGS) {
		conn_send(u->conn, "AUTHENTICATE *");
		sasl_fail(u, "the network sent more than %d SASL challenges", SASL_MAX_MSGS);
		return;
	}
	switch (sa->state) {
	case SASL_SENT_MECH:
		if (mech == SASL_MECH_PLAIN) {
			n = sasl_plain_message(user, cs->sasl_password ? cs->sasl_password : "",
					       out, sizeof(out));
			if (n < 0) {
				sasl_fail(u, "PLAIN message too long");
				return;
			}
			sa->state = SASL_SENT_RESPONSE;
			sasl_send(u, out, (size_t)n);
			OPENSSL_cleanse(out, sizeof(out));
		} else if (mech == SASL_MECH_EXTERNAL) {
			/* authzid: the configured name, else empty (the
			 * account of the certificate). */
			const char *az = cs->sasl_username ? cs->sasl_username : "";
			sa->state = SASL_SENT_RESPONSE;
			sasl_send(u, az, strlen(az));
		} else {
			n = sasl_scram_first(&sa->scram, user, NULL, text, sizeof(text));
			if (n < 0) {
				sasl_fail(u, "SCRAM client-first: %s", strerror(-n));
				return;
			}
			sa->state = SASL_SENT_FIRST;
			sasl_send(u, text, (size_t)n);
		}
		return;
	case SASL_SENT_FIRST:
		n = sasl_scram_final(&sa->scram, (const char *)msg, len,
				     cs->sasl_password ? cs->sasl_password : "", text,
				     sizeof(text));
		if (n < 0) {
			conn_send(u->conn, "AUTHENTICATE *");
			sasl_fail(u, "SCRAM server-first message refused: %s",
				  n == -ERANGE ? "iteration count out of bounds" :
				  "malformed or not extending our nonce");
			return;
		}
		sa->state = SASL_SENT_FINAL;
		sasl_send(u, text, (size_t)n);
		OPENSSL_cleanse(text, sizeof(text));
		return;
	case SASL_SENT_FINAL:
		n = sasl_scram_verify(&sa->scram, (const char *)msg, len);
		if (n < 0) {
			conn_send(u->conn, "AUTHENTICATE *");
			sasl_fail(u, "SCRAM: %s",
				  n == -EACCES ? "the server's signature is wrong (it does not know the password: not the network we trust?)" :
				  "malformed server-final message");
			return;
		}
		sa->state = SASL_SENT_RESPONSE;
		sasl_send(u, "", 0); /* the empty response completes it */
		return;
	default:
		conn_send(u->conn, "AUTHENTICATE *");
		sasl_fail(u, "unexpected SASL challenge");
		return;
	}
}

static void sasl_authenticate(struct upstream *u, const struct irc_msg *m)
{
	struct sasl *sa = u->sasl;
	unsigned char msg[SASL_MSG_MAX + 1];
	size_t len = 0;

	if (!sa || m->nparams < 1)
		return;
	if (sa->state == SASL_ADOPTED) {
		/* The challenge belongs to the exchange the old worker ran:
		 * abort it and start again on 906. */
		sa->state = SASL_ABORTING;
		conn_send(u->conn, "AUTHENTICATE *");
		return;
	}
	if (sa->state < SASL_SENT_MECH || sa->state > SASL_SENT_RESPONSE)
		return; /* not in an exchange (ABORTING: the 906 follows) */
	int rc = sasl_in_feed(&sa->in, m->params[0], msg, &len);
	if (rc == 0)
		return;
	if (rc < 0) {
		conn_send(u->conn, "AUTHENTICATE *");
		sasl_fail(u, "the network's SASL message is %s",
			  rc == -EMSGSIZE ? "too long" : "not base64");
		return;
	}
	msg[len] = '\0';
	sasl_step(u, msg, len);
}

bool sasl_line(struct upstream *u, const struct irc_msg *m)
{
	struct sasl *sa = u->sasl;
	struct session *s = u->s;
	const char *text = m->nparams ? m->params[m->nparams - 1] : "";
	bool registering = u->phase < UP_WELCOMED;

	if (strcasecmp(m->command, "AUTHENTICATE") == 0) {
		sasl_authenticate(u, m);
		return false;
	}
	int num = atoi(m->command);
	if (num == 900) { /* RPL_LOGGEDIN: nick!user@host account :text */
		log_info("upstream", "%s: logged in as %.100s", s->key,
			 m->nparams >= 3 ? m->params[2] : "?");
		return !registering;
	}
	if (num == 901) /* RPL_LOGGEDOUT */
		return !registering;
	if (!sa || sa->state == SASL_DONE || sa->state == SASL_FAILED ||
	    sa->state == SASL_IDLE)
		return !registering && num != 908;
	const char *mech = sasl_mech_name(sasl_cfg_mech(s));
	if (!mech)
		mech = "SASL";
	switch (num) {
	case 903: /* RPL_SASLSUCCESS */
		if (sa->state == SASL_SENT_FIRST || sa->state == SASL_SENT_FINAL ||
		    sa->state == SASL_SENT_MECH) {
			/* Success before the server proved itself (SCRAM):
			 * not accepted, it could be anyone. */
			sasl_fail(u, "the network claimed success before the exchange ended");
			return false;
		}
		sasl_done(u);
		return false;
	case 907: /* ERR_SASLALREADY: after a restart, the old exchange won */
		if (sa->state == SASL_ABORTING || sa->state == SASL_ADOPTED)
			sasl_done(u);
		return false;
	case 906: /* ERR_SASLABORTED */
		if (sa->state == SASL_ABORTING && sa->restarts < SASL_MAX_RESTARTS) {
			sa->restarts++;
			log_info("upstream", "%s: SASL exchange restarted after a migration",
				 s->key);
			sasl_begin(u);
			return false;
		}
		if (!sasl_configured(s)) {
			sasl_end_unconfigured(u);
			return false;
		}
		sasl_fail(u, "the exchange was aborted (906: %.150s)", text);
		return false;
	case 908: /* RPL_SASLMECHS: nick mechs :are available */
		if (m->nparams >= 2)
			snprintf(sa->mechs, sizeof(sa->mechs), "%s", m->params[1]);
		return false;
	case 904: /* ERR_SASLFAIL */
	case 902: /* ERR_NICKLOCKED */
		if (sa->mechs[0] && !sasl_mech_in_list(sa->mechs, sasl_cfg_mech(s)))
			sasl_fail(u, "the network does not offer %s (it offers %.100s)",
				  mech, sa->mechs);
		else
			sasl_fail(u, "%s credentials rejected (%d: %.150s)", mech, num, text);
		return false;
	case 905: /* ERR_SASLTOOLONG */
		sasl_fail(u, "the network says our SASL message is too long (905: %.150s)",
			  text);
		return false;
	default:
		return false;
	}
}

uint32_t sasl_wire_state(const struct upstream *u)
{
	const struct sasl *sa = u->sasl;
	if (!sa || u->phase >= UP_WELCOMED)
		return 0;
	if (sa->state >= SASL_SENT_MECH && sa->state <= SASL_ABORTING)
		return 1;
	return sa->state == SASL_DONE ? 2 : 0;
}

int sasl_adopt_state(struct upstream *u, uint32_t wire)
{
	if (wire > SASL_WIRE_MAX)
		return -EINVAL;
	if (wire == 0 || u->phase >= UP_WELCOMED)
		return 0; /* stale: set by a worker before registration ended */
	struct sasl *sa = sasl_get(u);
	if (!sa)
		return -ENOMEM;
	sa->offered = sa->listed = sa->requested = true;
	/* A success stays one: the 001 that follows must not read as a
	 * registration without SASL. */
	sa->state = wire == 1 ? SASL_ADOPTED : SASL_DONE;
	return 0;
}

void sasl_refused(struct session *s)
{
	const struct baton_config *cfg = bouncer_config(s->b);
	int64_t max_ms = CONFIG_INT_OR_DEFAULT(cfg, reconnect_max_s) * 1000LL;

	/* Credentials do not get better by retrying, and networks count
	 * failed logins (services may lock the account): one attempt per
	 * reconnect_max, whatever the failure count, like a ban. */
	s->reconnect_failures++;
	int64_t d = governor_backoff_ms(1, max_ms, max_ms, (uint32_t)random());
	log_warn("governor", "%s: next connection to %s after the SASL failure in %lld s",
		 s->key, s->network, (long long)(d / 1000));
	session_notice_all(s, "Next attempt to connect to %s in %lld s (fix the sasl settings of [user %s/%s] and upgrade to apply them)",
			   s->network, (long long)(d / 1000), s->user, s->network);
	session_schedule_connect(s, clock_mono_ms() + d);
}
