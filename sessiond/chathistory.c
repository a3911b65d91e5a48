/* sessiond/chathistory.c: CHATHISTORY from the message store (see
 * chathistory.h). */
#include "sessiond/chathistory.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/clock.h"
#include "common/log.h"
#include "sessiond/client.h"
#include "sessiond/conn.h"
#include "sessiond/history.h"
#include "sessiond/irc.h"
#include "sessiond/session.h"
#include "store/store.h"

/* One request in flight; a client's list, oldest first. */
struct chathistory_job {
	struct chathistory_job *next;
	struct client *cl;
	uint64_t qid;
	bool targets;
	char sub[16];
	char target[STORE_NAME_MAX + 1];
	char label[CLIENT_LABEL_MAX + 1]; /* labeled-response: "" none */
};

static const char *nick_of(const struct client *cl)
{
	if (cl->s && cl->s->nick)
		return cl->s->nick;
	return cl->nick ? cl->nick : "*";
}

static void fail(struct client *cl, const char *code, const char *sub,
		 const char *target, const char *text)
{
	conn_sendf(cl->conn, ":%s FAIL CHATHISTORY %s %s%s%s :%s", BATON_SERVER_NAME,
		   code, sub && *sub ? sub : "*", target ? " " : "",
		   target ? target : "", text);
}

static void job_unlink(struct chathistory_job *j)
{
	struct client *cl = j->cl;

	for (struct chathistory_job **p = &cl->chist; *p; p = &(*p)->next) {
		if (*p == j) {
			*p = j->next;
			break;
		}
	}
}

static size_t jobs_of(const struct client *cl)
{
	size_t n = 0;
	for (const struct chathistory_job *j = cl->chist; j; j = j->next)
		n++;
	return n;
}

/* "batch" ids: unique per connection is enough. */
static unsigned long next_batch;

static void answer(void *arg, int rc, struct store_result *res, const char *err)
{
	struct chathistory_job *j = arg;
	struct client *cl = j->cl;
	bool batch = cl->caps & CLIENT_CAP_BATCH;
	char id[24], tags[160], ts[32];
	const char *srv = BATON_SERVER_NAME;

	job_unlink(j);
	if (cl->phase != CLIENT_ATTACHED || !cl->s || conn_is_dead(cl->conn))
		goto out;
	/* the answer is the command's labeled response (client.h) */
	client_label_begin(cl, j->label);
	if (rc < 0 && rc != -ENOENT) {
		log_warn("chathistory", "%s: CHATHISTORY %s %s failed: %s", cl->s->key,
			 j->sub, j->target, err && *err ? err : strerror(-rc));
		fail(cl, "MESSAGE_ERROR", j->sub, j->targets ? NULL : j->target,
		     "Messages could not be retrieved");
		goto done;
	}
	snprintf(id, sizeof(id), "ch%lu", ++next_batch);
	if (batch) {
		if (j->targets)
			conn_sendf(cl->conn, ":%s BATCH +%s draft/chathistory-targets", srv, id);
		else
			conn_sendf(cl->conn, ":%s BATCH +%s chathistory %s", srv, id, j->target);
	}
	if (rc == 0 && j->targets) {
		for (size_t i = 0; i < res->ntargets; i++) {
			clock_format_server_time(res->targets[i].last_time_ms, ts);
			conn_sendf(cl->conn, "%s%s%s:%s CHATHISTORY TARGETS %s %s",
				   batch ? "@batch=" : "", batch ? id : "", batch ? " " : "",
				   srv, res->targets[i].target, ts);
		}
	} else if (rc == 0) {
		for (size_t i = 0; i < res->nrows; i++) {
			const struct store_row *r = &res->rows[i];
			size_t n = 0;
			tags[0] = '\0';
			if (batch)
				n += (size_t)snprintf(tags + n, sizeof(tags) - n, "batch=%s", id);
			if (cl->caps & CLIENT_CAP_SERVER_TIME) {
				clock_format_server_time(r->time_ms, ts);
				n += (size_t)snprintf(tags + n, sizeof(tags) - n, "%stime=%s",
						      n ? ";" : "", ts);
			}
			if (cl->caps & CLIENT_CAP_MESSAGE_TAGS)
				n += (size_t)snprintf(tags + n, sizeof(tags) - n, "%smsgid=%s",
						      n ? ";" : "", r->msgid);
			if (n)
				conn_sendf(cl->conn, "@%s %s", tags, r->line);
			else
				conn_send(cl->conn, r->line);
		}
	}
	if (batch)
		conn_sendf(cl->conn, ":%s BATCH -%s", srv, id);
done:
	client_label_end(cl, true);
out:
	if (res)
		store_result_free(res);
	free(j);
}

/* "timestamp=..." / "msgid=..." ("*" too when star). 0 or -EINVAL. */
static int parse_ref(const char *s, bool star, struct store_ref *ref)
{
	memset(ref, 0, sizeof(*ref));
	if (star && strcmp(s, "*") == 0) {
		ref->kind = STORE_REF_NONE;
		return 0;
	}
	if (strncmp(s, "timestamp=", 10) == 0) {
		ref->kind = STORE_REF_TIME;
		return clock_parse_server_time(s + 10, &ref->time_ms) == 0 ? 0 : -EINVAL;
	}
	if (strncmp(s, "msgid=", 6) == 0 && s[6]) {
		ref->kind = STORE_REF_MSGID;
		ref->msgid = s + 6;
		return 0;
	}
	return -EINVAL;
}

static int parse_limit(const char *s, size_t *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || end == s || v < 0)
		return -EINVAL;
	*out = v > CHATHISTORY_LIMIT ? CHATHISTORY_LIMIT : (size_t)v;
	return 0;
}

void chathistory_command(struct client *cl, const struct irc_msg *m)
{
	struct history *h = cl->s ? bouncer_history(cl->s->b) : NULL;
	struct store_query q = { 0 };
	struct chathistory_job *j;
	const char *sub = m->nparams >= 1 ? m->params[0] : "";
	size_t need;

	if (!h || !(cl->caps & CLIENT_CAP_CHATHISTORY)) {
		conn_sendf(cl->conn, ":%s 421 %s CHATHISTORY :Unknown command",
			   BATON_SERVER_NAME, nick_of(cl));
		return;
	}
	if (strcasecmp(sub, "LATEST") == 0)
		q.kind = STORE_Q_LATEST, need = 4;
	else if (strcasecmp(sub, "BEFORE") == 0)
		q.kind = STORE_Q_BEFORE, need = 4;
	else if (strcasecmp(sub, "AFTER") == 0)
		q.kind = STORE_Q_AFTER, need = 4;
	else if (strcasecmp(sub, "AROUND") == 0)
		q.kind = STORE_Q_AROUND, need = 4;
	else if (strcasecmp(sub, "BETWEEN") == 0)
		q.kind = STORE_Q_BETWEEN, need = 5;
	else if (strcasecmp(sub, "TARGETS") == 0)
		q.kind = STORE_Q_TARGETS, need = 4;
	else {
		fail(cl, m->nparams ? "UNKNOWN_COMMAND" : "NEED_MORE_PARAMS",
		     m->nparams ? sub : NULL, NULL,
		     m->nparams ? "Unknown subcommand" : "Missing parameters");
		return;
	}
	if (m->nparams < need) {
		fail(cl, "NEED_MORE_PARAMS", sub, NULL, "Missing parameters");
		return;
	}
	j = calloc(1, sizeof(*j));
	if (!j) {
		fail(cl, "MESSAGE_ERROR", sub, NULL, "Out of memory");
		return;
	}
	j->cl = cl;
	snprintf(j->sub, sizeof(j->sub), "%s", sub);
	for (char *p = j->sub; *p; p++)
		if (*p >= 'a' && *p <= 'z')
			*p = (char)(*p - 32);
	q.network = cl->s->key;
	if (q.kind == STORE_Q_TARGETS) {
		j->targets = true;
		if (parse_ref(m->params[1], false, &q.ref) < 0 ||
		    parse_ref(m->params[2], false, &q.ref2) < 0 ||
		    q.ref.kind != STORE_REF_TIME || q.ref2.kind != STORE_REF_TIME ||
		    parse_limit(m->params[3], &q.limit) < 0) {
			fail(cl, "INVALID_PARAMS", j->sub, NULL,
			     "TARGETS takes two timestamps and a limit");
			free(j);
			return;
		}
	} else {
		const char *t = m->params[1];
		size_t tl = strlen(t);
		if (tl == 0 || tl > STORE_NAME_MAX) {
			fail(cl, "INVALID_TARGET", j->sub, tl <= STORE_NAME_MAX ? t : "*",
			     "Invalid target");
			free(j);
			return;
		}
		history_fold_target(t, j->target, sizeof(j->target));
		q.target = j->target;
		if (parse_ref(m->params[2], q.kind == STORE_Q_LATEST, &q.ref) < 0 ||
		    (q.kind == STORE_Q_BETWEEN &&
		     parse_ref(m->params[3], false, &q.ref2) < 0) ||
		    parse_limit(m->params[need - 1], &q.limit) < 0) {
			fail(cl, "INVALID_PARAMS", j->sub, NULL,
			     "Invalid message reference or limit");
			free(j);
			return;
		}
		/* the batch names the target as the client spelled it */
		snprintf(j->target, sizeof(j->target), "%s", t);
	}
	if (jobs_of(cl) >= CHATHISTORY_INFLIGHT) {
		fail(cl, "MESSAGE_ERROR", j->sub, j->targets ? NULL : j->target,
		     "Too many history requests at once");
		free(j);
		return;
	}
	char folded[STORE_NAME_MAX + 1];
	if (!j->targets) {
		history_fold_target(j->target, folded, sizeof(folded));
		q.target = folded;
	}
	/* a labeled request is answered labeled, when its answer comes */
	snprintf(j->label, sizeof(j->label), "%s", cl->label);
	int r = store_query_async(history_store(h), &q, answer, j, &j->qid);
	if (r < 0) {
		fail(cl, "MESSAGE_ERROR", j->sub, j->targets ? NULL : j->target,
		     "Messages could not be retrieved now");
		free(j);
		return;
	}
	if (j->label[0])
		cl->label_async = true; /* no ACK now: the answer is to come */
	/* appended: answers come in request order (one query thread) */
	struct chathistory_job **p = &cl->chist;
	while (*p)
		p = &(*p)->next;
	*p = j;
}

void chathistory_client_forget(struct client *cl)
{
	struct history *h = cl->b ? bouncer_history(cl->b) : NULL;

	while (cl->chist) {
		struct chathistory_job *j = cl->chist;
		cl->chist = j->next;
		if (h)
			store_query_cancel(history_store(h), j->qid);
		free(j);
	}
}

/* ---- draft/read-marker ---- */

void readmarker_send(struct client *cl, const char *target)
{
	struct history *h = cl->s ? bouncer_history(cl->s->b) : NULL;
	int64_t t = 0;
	char ts[32];

	if (!h)
		return;
	if (history_marker_get(h, cl->s, target, &t) == 1) {
		clock_format_server_time(t, ts);
		conn_sendf(cl->conn, ":%s MARKREAD %s timestamp=%s", BATON_SERVER_NAME,
			   target, ts);
	} else {
		conn_sendf(cl->conn, ":%s MARKREAD %s *", BATON_SERVER_NAME, target);
	}
}

void readmarker_after_join(struct session *s, const char *nick,
			   const char *channel)
{
	if (!bouncer_history(s->b) || !session_is_me(s, nick))
		return;
	for (size_t i = 0; i < s->nclients; i++)
		if (s->clients[i]->caps & CLIENT_CAP_READ_MARKER)
			readmarker_send(s->clients[i], channel);
}

static void rm_fail(struct client *cl, const char *code, const char *target,
		    const char *text)
{
	conn_sendf(cl->conn, ":%s FAIL MARKREAD %s%s%s :%s", BATON_SERVER_NAME, code,
		   target ? " " : "", target ? target : "", text);
}

void readmarker_command(struct client *cl, const struct irc_msg *m)
{
	struct session *s = cl->s;
	struct history *h = bouncer_history(s->b);
	const char *target;
	int64_t t;

	if (!(cl->caps & CLIENT_CAP_READ_MARKER)) {
		conn_sendf(cl->conn, ":%s 421 %s MARKREAD :Unknown command",
			   BATON_SERVER_NAME, nick_of(cl));
		return;
	}
	if (m->nparams < 1 || !m->params[0][0]) {
		rm_fail(cl, "NEED_MORE_PARAMS", NULL, "Missing parameters");
		return;
	}
	target = m->params[0];
	if (strlen(target) > STORE_NAME_MAX || strchr(target, ' ')) {
		rm_fail(cl, "INVALID_PARAMS", NULL, "Invalid target");
		return;
	}
	if (m->nparams < 2) { /* get */
		if (history_marker_get(h, s, target, &t) == -EAGAIN) {
			rm_fail(cl, "INTERNAL_ERROR", target,
				"The read markers are being read, try again");
			return;
		}
		readmarker_send(cl, target);
		return;
	}
	if (strncmp(m->params[1], "timestamp=", 10) != 0 ||
	    clock_parse_server_time(m->params[1] + 10, &t) < 0) {
		rm_fail(cl, "INVALID_PARAMS", m->params[1], "Invalid timestamp");
		return;
	}
	/* Sets are rate-limited per client (GCRA: a burst, then a steady
	 * rate): a flood costs memory and store writes for every session. */
	int64_t mono = clock_mono_ms(), step = 1000 / READMARKER_RATE;
	if (cl->rm_tat_ms < mono)
		cl->rm_tat_ms = mono;
	if (cl->rm_tat_ms - mono > step * (READMARKER_BURST - 1)) {
		rm_fail(cl, "TEMPORARILY_UNAVAILABLE", target,
			"Too many read markers set, try again later");
		return;
	}
	cl->rm_tat_ms += step;
	/* clamped to now: a marker from the future would hide what comes */
	int64_t now = clock_wall_ms();
	if (t > now)
		t = now;
	int r = history_marker_set(h, s, target, &t);
	if (r == -ENOSPC) {
		char why[96];
		snprintf(why, sizeof why, "Too many read markers (at most %d)",
			 HISTORY_MARKERS);
		rm_fail(cl, "LIMIT_EXCEEDED", target, why);
		return;
	}
	if (r < 0) {
		rm_fail(cl, "INTERNAL_ERROR", target,
			"The read timestamp could not be set");
		return;
	}
	if (r == 0) { /* not newer: the kept one, to the sender */
		readmarker_send(cl, target);
		return;
	}
	for (size_t i = 0; i < s->nclients; i++)
		if (s->clients[i] == cl || (s->clients[i]->caps & CLIENT_CAP_READ_MARKER))
			readmarker_send(s->clients[i], target);
}
