/* sessiond/history.c: the message store wired into the sessions (see
 * history.h for the rules: seqs, backpressure, positions, errors). */
#include "sessiond/history.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/log.h"
#include "sessiond/backlog.h"
#include "sessiond/client.h"
#include "sessiond/conn.h"
#include "sessiond/session.h"
#include "sessiond/state.h"
#include "sessiond/upstream.h"
#include "store/store.h"
#include "store/store_config.h"

/* A line read from the network (or sent by a client) that the store could
 * not queue yet; relayed once it is stored, in order. */
struct pending_line {
	struct pending_line *next;
	char *buffer, *tags, *line;
	int64_t time_ms;
	uint64_t except; /* a client's id (client_serial()), or 0 */
	unsigned copies;
};

/* Positions written for attached clients (what the store has last). */
struct written_pos {
	char *client_id;
	uint64_t seq;
};

struct history_session {
	struct history *h;
	struct session *s;
	struct history_session *prev, *next; /* h->sessions */
	struct pending_line *pending, *pending_tail;
	size_t npending;
	bool floored;   /* store_seq_floor() done for this session's backlog */
	bool retention; /* store_set_retention() done */
	bool paused;    /* its network connection held for the store */
	bool clients_held; /* its clients held too: HISTORY_PENDING_MAX */
	struct written_pos *written;
	size_t nwritten;
	/* read markers: folded target -> time; loading: a query's id */
	struct marker { char *target; int64_t t; bool dirty; } *markers;
	size_t nmarkers, ndirty;
	uint64_t marker_op; /* the last marker write queued (its op seq) */
	enum { MARKERS_NONE, MARKERS_LOADING, MARKERS_LOADED } mstate;
	uint64_t mquery;
	struct client **waiting; /* for the markers, not owned */
	size_t nwaiting;
};

struct history {
	struct event_base *base;
	const struct baton_config *cfg;
	struct store *st;
	struct event *ev, *tick;
	struct history_session *sessions;
	const char *backend;
	bool failing;
	bool stalled; /* work queued, no commit for HISTORY_STALL_MS */
	/* What clients are told (history_available()): the store's caps
	 * withdrawn, after HISTORY_CAPS_DEL_AFTER_MS of failing; and since
	 * when (CLOCK_MONOTONIC ms, 0: not now) commits have failed without a
	 * success / succeeded without a failure (history_caps_update()). */
	bool caps_down;
	int64_t fail_since_ms, ok_since_ms;
	struct bouncer *b; /* told when `failing` changes; NULL: none */
	uint64_t last_durable;
	int64_t progress_ms;
	uint64_t appended, refused, errors, commit_failures, replay_queries;
	int64_t error_logged_ms;
	/* read markers not yet queued, over every session (the sum of their
	 * ndirty): the loops over all sessions that write them run only when
	 * it is not 0, so a commit costs O(1), not O(sessions) */
	size_t dirty_markers;
};

/* ---- options ---- */

int history_options(const struct baton_config *cfg, struct store_options *o,
		    char *path_buf, size_t path_len)
{
	return store_options_from_config(cfg, o, path_buf, path_len);
}

int history_check(const struct baton_config *cfg, char *err, size_t errlen)
{
	struct store_options o;
	char path[4096];
	int r;

	err[0] = '\0';
	if (cfg->store_backend == CONFIG_STORE_OFF)
		return 0;
	r = history_options(cfg, &o, path, sizeof path);
	if (r < 0) {
		snprintf(err, errlen, "the store's options: %s", strerror(-r));
		return r;
	}
	struct store *st = store_open(&o, NULL, NULL, err, errlen);
	if (!st)
		return errno ? -errno : -EIO;
	store_close(st);
	return 0;
}

/* ---- callbacks ---- */

static void history_flush_all(struct history *h);

static void on_store_fd(evutil_socket_t fd, short what, void *arg)
{
	struct history *h = arg;

	(void)fd;
	(void)what;
	store_dispatch(h->st);
}

static void markers_write(struct history_session *hs);

static void on_durable(void *arg, uint64_t durable_seq)
{
	struct history *h = arg;

	(void)durable_seq;
	/* the next batch of each session's read markers (markers_write()) */
	for (struct history_session *hs = h->sessions; hs && h->dirty_markers; hs = hs->next)
		if (hs->ndirty)
			markers_write(hs);
}

static void on_space(void *arg)
{
	history_flush_all(arg);
}

/* The store's caps withdrawn or offered again once its commits have failed
 * or succeeded long enough (history.h: HISTORY_CAPS_DEL_AFTER_MS,
 * _NEW_AFTER_MS); from each commit's outcome and every tick. */
static void history_caps_update(struct history *h, int64_t now)
{
	bool down = h->caps_down;

	if (!down && h->failing && h->fail_since_ms &&
	    now - h->fail_since_ms >= HISTORY_CAPS_DEL_AFTER_MS)
		down = true;
	else if (down && !h->failing && h->ok_since_ms &&
		 now - h->ok_since_ms >= HISTORY_CAPS_NEW_AFTER_MS)
		down = false;
	if (down == h->caps_down)
		return;
	h->caps_down = down;
	log_info("store", "%s store: history %s clients (commits %s for %d s)", h->backend,
		 down ? "withdrawn from" : "offered again to", down ? "failing" : "succeeding",
		 (down ? HISTORY_CAPS_DEL_AFTER_MS : HISTORY_CAPS_NEW_AFTER_MS) / 1000);
	if (h->b)
		client_store_caps_refresh(h->b); /* CAP DEL / NEW, 005 */
}

static void on_error(void *arg, const char *msg)
{
	struct history *h = arg;
	int64_t now = clock_mono_ms();

	if (msg) {
		h->commit_failures++;
		if (!h->failing)
			log_error("store", "%s store: a commit failed (retrying; lines are kept queued and sessions stop reading their network when the queue is full): %s",
				  h->backend, msg);
		h->failing = true;
		if (!h->fail_since_ms)
			h->fail_since_ms = now;
		h->ok_since_ms = 0;
	} else {
		if (h->failing)
			log_info("store", "%s store: commits succeed again", h->backend);
		h->failing = false;
		h->fail_since_ms = 0;
		if (!h->ok_since_ms)
			h->ok_since_ms = now;
	}
	history_caps_update(h, now);
}

bool history_available(const struct history *h)
{
	return h && !h->caps_down;
}

void history_set_bouncer(struct history *h, struct bouncer *b)
{
	h->b = b;
}

static void history_tick(evutil_socket_t fd, short what, void *arg);
static struct history *history_started(struct history *h, const char *what,
				       char *err, size_t errlen);
static const struct store_callbacks history_cb = {
	.durable = on_durable, .space = on_space, .error = on_error,
};

struct history *history_open(struct event_base *base,
			     const struct baton_config *cfg, char *err,
			     size_t errlen)
{
	struct store_options o;
	char path[4096];

	err[0] = '\0';
	if (!cfg || cfg->store_backend == CONFIG_STORE_OFF)
		return NULL;
	int r = history_options(cfg, &o, path, sizeof path);
	if (r < 0) {
		snprintf(err, errlen, "the store's options: %s", strerror(-r));
		return NULL;
	}
	struct history *h = calloc(1, sizeof *h);
	if (!h) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	h->base = base;
	h->cfg = cfg;
	h->backend = o.backend == STORE_POSTGRES ? "postgres" : "sqlite";
	h->st = store_open(&o, &history_cb, h, err, errlen);
	if (!h->st) {
		free(h);
		return NULL;
	}
	return history_started(h, o.backend == STORE_SQLITE ? o.url : "(store_url)",
			       err, errlen);
}

/* h->st is open: its events, and the log line. NULL (h closed) on OOM. */
static struct history *history_started(struct history *h, const char *what,
				       char *err, size_t errlen)
{
	struct event_base *base = h->base;

	h->ev = event_new(base, store_fd(h->st), EV_READ | EV_PERSIST, on_store_fd, h);
	h->tick = event_new(base, -1, EV_PERSIST, history_tick, h);
	if (!h->ev || !h->tick) {
		snprintf(err, errlen, "out of memory");
		history_close(h);
		return NULL;
	}
	event_add(h->ev, NULL);
	struct timeval tv = { .tv_sec = HISTORY_POSITION_MS / 1000,
			      .tv_usec = (HISTORY_POSITION_MS % 1000) * 1000 };
	event_add(h->tick, &tv);
	log_info("store", "%s store %s open", h->backend, what);
	return h;
}

/* Retries run store_open() on a thread: it blocks (a PostgreSQL server that
 * does not answer: up to its connect timeout), the worker's loop must not. */
struct history_retry {
	struct event_base *base;
	const struct baton_config *cfg;
	struct bouncer *b;
	struct event *timer, *done_ev;
	int pipe[2];
	pthread_t thread;
	bool running;
	/* the attempt's: filled before the thread starts, read after it ends */
	struct store_options o;
	char path[4096], err[512];
	struct history *h; /* calloc'ed for the callbacks' arg */
	int64_t delay_ms;
	unsigned attempts;
	char why[512];
};

static void retry_arm(struct history_retry *r)
{
	struct timeval tv = { .tv_sec = r->delay_ms / 1000,
			      .tv_usec = (r->delay_ms % 1000) * 1000 };
	event_add(r->timer, &tv);
}

static void *retry_thread(void *arg)
{
	struct history_retry *r = arg;
	char c = 1;

	r->h->st = store_open(&r->o, &history_cb, r->h, r->err, sizeof r->err);
	while (write(r->pipe[1], &c, 1) < 0 && errno == EINTR)
		;
	return NULL;
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
	struct history_retry *r = arg;

	(void)fd;
	(void)what;
	r->err[0] = '\0';
	int e = history_options(r->cfg, &r->o, r->path, sizeof r->path);
	r->h = e == 0 ? calloc(1, sizeof *r->h) : NULL;
	if (r->h) {
		r->h->base = r->base;
		r->h->cfg = r->cfg;
		r->h->backend = r->o.backend == STORE_POSTGRES ? "postgres" : "sqlite";
		e = pthread_create(&r->thread, NULL, retry_thread, r);
		if (e == 0) {
			r->running = true;
			return; /* on_retry_done() */
		}
		e = -e;
		free(r->h);
		r->h = NULL;
	}
	snprintf(r->why, sizeof r->why, "%s", strerror(e < 0 ? -e : ENOMEM));
	retry_arm(r);
}

static void on_retry_done(evutil_socket_t fd, short what, void *arg)
{
	struct history_retry *r = arg;
	char c;

	(void)what;
	while (read(fd, &c, 1) < 0 && errno == EINTR)
		;
	pthread_join(r->thread, NULL);
	r->running = false;
	r->attempts++;
	struct history *h = r->h;
	r->h = NULL;
	if (h->st) {
		char err[256];
		h = history_started(h, r->o.backend == STORE_SQLITE ? r->o.url : "(store_url)",
				    err, sizeof err);
		if (h) {
			log_info("store", "the message store is open after %u attempts: lines are stored again",
				 r->attempts);
			struct bouncer *b = r->b;
			bouncer_set_history(b, h);
			bouncer_set_history_retry(b, NULL);
			history_retry_free(r);
			return;
		}
		snprintf(r->err, sizeof r->err, "%s", err);
	} else {
		free(h);
	}
	if (strcmp(r->err, r->why) != 0 || r->delay_ms >= HISTORY_RETRY_MAX_MS)
		log_error("store", "the message store still cannot be opened (%s): next attempt in %lld s",
			  r->err, (long long)(r->delay_ms * 2 > HISTORY_RETRY_MAX_MS ?
					      HISTORY_RETRY_MAX_MS : r->delay_ms * 2) / 1000);
	snprintf(r->why, sizeof r->why, "%s", r->err);
	r->delay_ms *= 2;
	if (r->delay_ms > HISTORY_RETRY_MAX_MS)
		r->delay_ms = HISTORY_RETRY_MAX_MS;
	retry_arm(r);
}

struct history_retry *history_retry_start(struct event_base *base,
					  const struct baton_config *cfg,
					  struct bouncer *b, const char *why)
{
	struct history_retry *r = calloc(1, sizeof *r);

	if (!r)
		return NULL;
	r->base = base;
	r->cfg = cfg;
	r->b = b;
	r->pipe[0] = r->pipe[1] = -1;
	r->delay_ms = HISTORY_RETRY_MIN_MS;
	snprintf(r->why, sizeof r->why, "%s", why);
	if (pipe2(r->pipe, O_CLOEXEC | O_NONBLOCK) < 0 ||
	    !(r->timer = evtimer_new(base, on_retry, r)) ||
	    !(r->done_ev = event_new(base, r->pipe[0], EV_READ | EV_PERSIST,
				     on_retry_done, r))) {
		history_retry_free(r);
		return NULL;
	}
	event_add(r->done_ev, NULL);
	retry_arm(r);
	log_error("store", "the message store cannot be opened (%s): running without it (lines relayed live, no history for clients), trying again in %lld s",
		  why, (long long)r->delay_ms / 1000);
	return r;
}

const char *history_retry_why(const struct history_retry *r)
{
	return r ? r->why : NULL;
}

void history_retry_free(struct history_retry *r)
{
	if (!r)
		return;
	if (r->running) { /* exit during an attempt: it ends first */
		pthread_join(r->thread, NULL);
		if (r->h && r->h->st)
			(void)store_close(r->h->st);
		free(r->h);
	}
	if (r->timer)
		event_free(r->timer);
	if (r->done_ev)
		event_free(r->done_ev);
	if (r->pipe[0] >= 0)
		close(r->pipe[0]);
	if (r->pipe[1] >= 0)
		close(r->pipe[1]);
	free(r);
}

static void hs_free(struct history_session *hs);

void history_close(struct history *h)
{
	if (!h)
		return;
	/* Sessions are freed before (bouncer_free()); any left are detached. */
	while (h->sessions) {
		struct history_session *hs = h->sessions;
		hs->s->hist = NULL;
		hs_free(hs);
	}
	if (h->ev)
		event_free(h->ev);
	if (h->tick)
		event_free(h->tick);
	size_t lost = store_close(h->st);
	if (lost)
		log_error("store", "%s store: %zu queued operations could not be committed at exit",
			  h->backend, lost);
	free(h);
}

struct store *history_store(struct history *h)
{
	return h ? h->st : NULL;
}

_Static_assert(STORE_MSGID_TAG_LEN == STORE_MSGID_LEN, "msgid length");

void history_msgid(const struct history *h, uint64_t seq,
		   char out[STORE_MSGID_TAG_LEN])
{
	if (!h || !seq) {
		out[0] = '\0';
		return;
	}
	store_msgid_format(h->st, seq, out);
}

/* ---- per session ---- */

static struct history_session *hs_get(struct history *h, struct session *s)
{
	if (s->hist)
		return s->hist;
	struct history_session *hs = calloc(1, sizeof *hs);
	if (!hs)
		return NULL;
	hs->h = h;
	hs->s = s;
	hs->next = h->sessions;
	if (h->sessions)
		h->sessions->prev = hs;
	h->sessions = hs;
	s->hist = hs;
	return hs;
}

static void pending_free(struct pending_line *p)
{
	free(p->buffer);
	free(p->tags);
	free(p->line);
	free(p);
}

/* The session leaves (freed, or frozen to travel to another worker, which
 * reads the markers from the store): what is not written yet is queued
 * now, whatever the quota. */
static void markers_write_all(struct history_session *hs)
{
	struct history *h = hs->h;
	size_t lost = 0;
	int why = 0;

	for (size_t i = 0; i < hs->nmarkers && hs->ndirty; i++) {
		struct marker *m = &hs->markers[i];
		if (!m->dirty)
			continue;
		int r = store_set_read_marker(h->st, hs->s->key, m->target, m->t, NULL);
		if (r < 0) {
			lost++; /* kept dirty: hs_free() tries again */
			why = r;
			continue;
		}
		m->dirty = false;
		hs->ndirty--;
		h->dirty_markers--;
	}
	if (lost)
		log_error("store", "%s: %zu read markers not queued for the store (%s)",
			  hs->s->key, lost, strerror(-why));
}

static void hs_free(struct history_session *hs)
{
	struct history *h = hs->h;

	if (hs->prev)
		hs->prev->next = hs->next;
	else
		h->sessions = hs->next;
	if (hs->next)
		hs->next->prev = hs->prev;
	while (hs->pending) {
		struct pending_line *p = hs->pending;
		hs->pending = p->next;
		pending_free(p);
	}
	for (size_t i = 0; i < hs->nwritten; i++)
		free(hs->written[i].client_id);
	free(hs->written);
	if (hs->mquery)
		store_query_cancel(h->st, hs->mquery);
	markers_write_all(hs);
	h->dirty_markers -= hs->ndirty; /* those it could not queue are lost */
	for (size_t i = 0; i < hs->nmarkers; i++)
		free(hs->markers[i].target);
	free(hs->markers);
	for (size_t i = 0; i < hs->nwaiting; i++)
		hs->waiting[i]->hist_waiting = false;
	free(hs->waiting);
	free(hs);
}

/* The store's name of a buffer: RFC 1459 casefolding (as the backlog's
 * keys), so that every spelling of a channel is one target. */
void history_fold_target(const char *in, char *out, size_t n)
{
	size_t i = 0;

	for (; in[i] && i + 1 < n; i++) {
		unsigned char c = (unsigned char)in[i];
		if (c >= 'A' && c <= ']')
			c = (unsigned char)(c + 32); /* A-Z [ \ ] */
		else if (c == '~')
			c = '^';
		out[i] = (char)c;
	}
	out[i] = '\0';
}

/* ":nick!user@host CMD ..." -> sender, command (bounded copies). */
static void split_line(const char *line, char *sender, size_t sn,
		       char *cmd, size_t cn)
{
	const char *p = line;
	size_t k;

	sender[0] = cmd[0] = '\0';
	if (*p == ':') {
		p++;
		for (k = 0; *p && *p != ' '; p++)
			if (k + 1 < sn)
				sender[k++] = *p;
		sender[k] = '\0';
		while (*p == ' ')
			p++;
	}
	for (k = 0; *p && *p != ' '; p++)
		if (k + 1 < cn)
			cmd[k++] = *p;
	cmd[k] = '\0';
}

static void hs_retention(struct history *h, struct history_session *hs)
{
	const struct config_network *n = h->cfg ?
		config_find_network(h->cfg, hs->s->network) : NULL;

	hs->retention = true;
	if (!n || (n->store_max_age_days < 0 && n->store_max_mb < 0))
		return;
	(void)store_set_retention(h->st, hs->s->key,
				  n->store_max_age_days < 0 ? -1 :
				  (int64_t)n->store_max_age_days * 86400 * 1000,
				  n->store_max_mb < 0 ? -1 :
				  (int64_t)n->store_max_mb << 20);
}

static int try_append(struct history *h, struct history_session *hs,
		      const char *buffer, const char *line, int64_t time_ms,
		      uint64_t *seq)
{
	struct session *s = hs->s;
	char target[STORE_NAME_MAX + 1], sender[STORE_NAME_MAX + 1],
		cmd[STORE_COMMAND_MAX + 1];

	if (!hs->floored) {
		/* Seqs this session's backlog handed out before (another
		 * worker, an older release): the store's must go above. */
		uint64_t next = backlog_next_seq(s->backlog);
		if (next > 1)
			store_seq_floor(h->st, next - 1);
		hs->floored = true;
	}
	if (!hs->retention)
		hs_retention(h, hs);
	history_fold_target(buffer, target, sizeof target);
	split_line(line, sender, sizeof sender, cmd, sizeof cmd);
	struct store_msg m = {
		.time_ms = time_ms, .network = s->key, .target = target,
		.sender = sender, .command = cmd[0] ? cmd : "?", .line = line,
	};
	int r = store_append(h->st, &m, seq);
	if (r == 0) {
		if (*seq < backlog_next_seq(s->backlog)) {
			/* Not after the floor (history_session_flush() asks
			 * for a new one); if it happens, the cache would
			 * refuse it: the line is stored, relayed without a
			 * seq, and the next append floors again. */
			h->errors++;
			hs->floored = false;
			return -ERANGE;
		}
		h->appended++;
	}
	return r;
}

static void hs_pause(struct history_session *hs)
{
	struct session *s = hs->s;

	if (s->up && s->up->conn)
		conn_hold_lines(s->up->conn, true);
	if (!hs->paused) {
		hs->paused = true;
		log_info("store", "%s: the store's queue is full: not reading from the network until it has room",
			 s->key);
	}
}

/* HISTORY_PENDING_MAX lines wait: the session's clients are not read
 * either (each line past it holds every client, a new one too). */
static void hs_hold_clients(struct history_session *hs)
{
	struct session *s = hs->s;

	for (size_t i = 0; i < s->nclients; i++)
		conn_hold_lines(s->clients[i]->conn, true);
	if (!hs->clients_held) {
		hs->clients_held = true;
		log_warn("store", "%s: %zu lines wait for the store: not reading from its clients until it has room",
			 s->key, hs->npending);
	}
}

static void hs_resume(struct history_session *hs)
{
	struct session *s = hs->s;

	if (hs->clients_held) {
		hs->clients_held = false;
		for (size_t i = 0; i < s->nclients; i++)
			conn_hold_lines(s->clients[i]->conn, false);
		log_info("store", "%s: reading from its clients again", s->key);
	}
	if (!hs->paused)
		return;
	hs->paused = false;
	if (s->up && s->up->conn)
		conn_hold_lines(s->up->conn, false);
	log_info("store", "%s: the store has room: reading from the network again", s->key);
}

/* The client a pending line must not go to, if it is still here: by its
 * serial, not its address (a client freed meanwhile and a new one at the
 * same address would miss the line). */
static struct client *live_except(struct session *s, uint64_t except)
{
	for (size_t i = 0; except && i < s->nclients; i++)
		if (s->clients[i]->serial == except)
			return s->clients[i];
	return NULL;
}

static void note_error(struct history *h, struct session *s, int r)
{
	int64_t now = clock_mono_ms();

	h->errors++;
	if (h->error_logged_ms == 0 || now - h->error_logged_ms >= 60000) {
		log_error("store", "%s: a line was not stored (%s); relayed without history (%llu such lines so far)",
			  s->key, strerror(-r), (unsigned long long)h->errors);
		h->error_logged_ms = now;
	}
}

/* Store and relay the pending lines of hs in order; stop at a refusal. */
static void hs_flush(struct history_session *hs)
{
	struct history *h = hs->h;
	struct session *s = hs->s;

	while (hs->pending) {
		struct pending_line *p = hs->pending;
		uint64_t seq = 0;
		int r = try_append(h, hs, p->buffer, p->line, p->time_ms, &seq);

		if (r == -EAGAIN) {
			h->refused++;
			return;
		}
		hs->pending = p->next;
		if (!hs->pending)
			hs->pending_tail = NULL;
		hs->npending--;
		if (r < 0) {
			note_error(h, s, r);
			session_relay_live(s, p->tags, p->line, p->time_ms,
					   live_except(s, p->except), p->copies);
		} else {
			session_relay_stored(s, seq, p->buffer, p->tags, p->line,
					     p->time_ms, live_except(s, p->except),
					     p->copies);
		}
		pending_free(p);
	}
	hs_resume(hs);
}

static void history_flush_all(struct history *h)
{
	for (struct history_session *hs = h->sessions; hs; hs = hs->next)
		if (hs->pending && hs->s->item.state == ITEM_LIVE)
			hs_flush(hs);
}

int history_append(struct history *h, struct session *s, const char *buffer,
		   const char *tags, const char *line, int64_t time_ms,
		   struct client *except, unsigned copies, uint64_t *seq)
{
	struct history_session *hs = hs_get(h, s);
	int r = -ENOMEM;

	if (!hs) {
		note_error(h, s, r);
		return r;
	}
	if (!hs->pending) {
		r = try_append(h, hs, buffer, line, time_ms, seq);
		if (r != -EAGAIN) {
			if (r < 0)
				note_error(h, s, r);
			return r;
		}
		h->refused++;
	}
	/* Refused now, or earlier lines wait: keep it, in order. */
	struct pending_line *p = calloc(1, sizeof *p);
	if (!p || !(p->buffer = strdup(buffer)) || !(p->line = strdup(line)) ||
	    (tags && !(p->tags = strdup(tags)))) {
		if (p)
			pending_free(p);
		note_error(h, s, -ENOMEM);
		return -ENOMEM;
	}
	p->time_ms = time_ms;
	p->except = except ? client_serial(except) : 0;
	p->copies = copies;
	if (hs->pending_tail)
		hs->pending_tail->next = p;
	else
		hs->pending = p;
	hs->pending_tail = p;
	hs->npending++;
	hs_pause(hs);
	if (hs->npending >= HISTORY_PENDING_MAX)
		hs_hold_clients(hs);
	return 1;
}

void history_session_flush(struct history *h, struct session *s)
{
	struct history_session *hs = s->hist;

	if (!h || !hs)
		return;
	/* Store reads for its clients' replays stop here; armed again (a
	 * thaw, an adoption), client_resume() asks again. */
	for (size_t i = 0; i < s->nclients; i++) {
		struct client *cl = s->clients[i];
		if (cl->hist_query)
			store_query_cancel(h->st, cl->hist_query);
		cl->hist_query = 0;
		cl->hist_store = false;
	}
	markers_write_all(hs);
	hs_flush(hs);
	if (!hs->pending)
		return;
	/* Still refused: the lines must travel with the session (its
	 * backlog); they are not in the store. */
	log_error("store", "%s: %zu lines waiting for the store travel in the backlog only",
		  s->key, hs->npending);
	while (hs->pending) {
		struct pending_line *p = hs->pending;
		hs->pending = p->next;
		h->errors++;
		session_relay_unstored(s, p->buffer, p->tags, p->line, p->time_ms,
				       live_except(s, p->except), p->copies);
		pending_free(p);
	}
	hs->pending_tail = NULL;
	hs->npending = 0;
	/* Those seqs are the backlog's: if the session stays here (the
	 * migration fails), the store's next ones must go above them. */
	hs->floored = false;
	hs_resume(hs);
}

void history_session_free(struct history *h, struct session *s)
{
	(void)h;
	if (!s->hist)
		return;
	for (size_t i = 0; i < s->nclients; i++)
		history_client_forget(s->hist->h, s->clients[i]);
	hs_free(s->hist);
	s->hist = NULL;
}

size_t history_pending(const struct history *h, const struct session *s)
{
	(void)h;
	return s->hist ? s->hist->npending : 0;
}

/* ---- positions ---- */

static struct written_pos *written_slot(struct history_session *hs,
					const char *id)
{
	for (size_t i = 0; i < hs->nwritten; i++)
		if (strcmp(hs->written[i].client_id, id) == 0)
			return &hs->written[i];
	if (hs->nwritten >= SESSION_MAX_POSITIONS)
		return NULL; /* written every time: still correct */
	struct written_pos *nv = realloc(hs->written, (hs->nwritten + 1) * sizeof(*nv));
	if (!nv)
		return NULL;
	hs->written = nv;
	char *d = strdup(id);
	if (!d)
		return NULL;
	nv[hs->nwritten] = (struct written_pos){ .client_id = d, .seq = 0 };
	return &nv[hs->nwritten++];
}

void history_set_position(struct history *h, struct session *s,
			  const char *client_id, uint64_t seq)
{
	if (!h || seq == 0)
		return;
	struct history_session *hs = hs_get(h, s);
	struct written_pos *w = hs ? written_slot(hs, client_id) : NULL;

	if (w && w->seq >= seq)
		return;
	int r = store_set_position(h->st, s->key, client_id, seq, NULL);
	if (r == 0) {
		if (w)
			w->seq = seq;
	} else if (r != -EAGAIN) {
		note_error(h, s, r);
	} /* -EAGAIN: the next tick or detach writes it */
}

/* A writer that commits nothing for HISTORY_STALL_MS while work is queued
 * (a lock held on the database, a server that does not answer) fails no
 * commit, so on_error() never says it: it is reported as failing too. */
static void history_check_stall(struct history *h, int64_t now)
{
	uint64_t durable = store_durable_seq(h->st);

	size_t waiting = store_queued(h->st);

	/* work: operations queued, or lines refused (a store that cannot
	 * reserve seqs refuses appends with nothing queued) */
	for (const struct history_session *hs = h->sessions; hs && !waiting; hs = hs->next)
		waiting += hs->npending;
	if (durable != h->last_durable || waiting == 0 || h->progress_ms == 0) {
		h->last_durable = durable;
		h->progress_ms = now;
		if (h->stalled)
			log_info("store", "%s store: commits progress again", h->backend);
		h->stalled = false;
		return;
	}
	if (!h->stalled && now - h->progress_ms >= HISTORY_STALL_MS) {
		h->stalled = true;
		log_error("store", "%s store: nothing committed for %lld s with work waiting (%zu operations queued; a lock held on the database? the server not answering?): sessions stop reading when their lines cannot be queued",
			  h->backend, (long long)(now - h->progress_ms) / 1000,
			  store_queued(h->st));
	}
}

static void history_tick(evutil_socket_t fd, short what, void *arg)
{
	struct history *h = arg;

	(void)fd;
	(void)what;
	for (struct history_session *hs = h->sessions; hs; hs = hs->next) {
		struct session *s = hs->s;
		if (s->item.state != ITEM_LIVE)
			continue;
		for (size_t i = 0; i < s->nclients; i++) {
			struct client *cl = s->clients[i];
			if (cl->phase != CLIENT_ATTACHED || cl->hist_query)
				continue;
			history_set_position(h, s, cl->client_id ? cl->client_id : "default",
					     client_acked_seq(cl));
		}
	}
	/* A refusal whose space callback came while frozen sessions held
	 * the lines: try again. */
	history_flush_all(h);
	for (struct history_session *hs = h->sessions; hs && h->dirty_markers; hs = hs->next)
		if (hs->ndirty)
			markers_write(hs);
	history_check_stall(h, clock_mono_ms());
	history_caps_update(h, clock_mono_ms());
}

/* ---- replay from the store ---- */

static int first_seq(void *arg, uint64_t seq, int64_t time_ms,
		     const char *buffer, const char *line)
{
	(void)time_ms;
	(void)buffer;
	(void)line;
	*(uint64_t *)arg = seq;
	return 1;
}

static int any_gap(void *arg, const char *buffer)
{
	(void)buffer;
	*(bool *)arg = true;
	return 1;
}

/* Lines after pos that the cache may not hold. *cold: a new client name
 * whose cache lines are partly in the store (a migration's cold ranges,
 * backlog.h): its store reads keep only those ranges. */
static bool needs_store(struct client *cl, uint64_t pos)
{
	struct session *s = cl->s;
	uint64_t first = 0;
	bool gap = false;

	cl->hist_cold = false;
	cl->hist_after = 0;
	if (pos == 0) {
		/* a new client name: the cache's lines only, with what the
		 * cache left in the store at a migration */
		if (!backlog_cold_after(s->backlog, 0, &first))
			return false;
		cl->hist_cold = true;
		cl->hist_after = first - 1;
		return true;
	}
	if (backlog_cold_after(s->backlog, pos, NULL))
		return true; /* lines after pos the cache left in the store */
	(void)backlog_replay(s->backlog, 0, first_seq, &first);
	/* the cache begins at its oldest cold range: a client at or after
	 * the ranges (an attached client after a migration) needs no read */
	uint64_t cold_first = 0;
	if (backlog_cold_after(s->backlog, 0, &cold_first) &&
	    (first == 0 || cold_first < first))
		first = cold_first;
	if (first == 0 || pos < first)
		return true; /* an empty cache, or older than it */
	if (backlog_evicted_seq(s->backlog) > pos)
		return true;
	(void)backlog_foreach_gap(s->backlog, pos, any_gap, &gap);
	return gap;
}

/* One page of store rows merged with the cache's lines up to its last row,
 * in seq order (a line both hold goes once, the cache's): lines the store
 * does not have (numbered by the backlog, or not committed yet) are not
 * skipped. A cold client (needs_store()) gets only the rows of its cache's
 * cold ranges. */
struct merge {
	struct client *cl;
	const struct store_result *res;
	size_t i;
	uint64_t last;
};

static int merge_row(struct merge *m)
{
	struct client *cl = m->cl;
	const struct store_row *r = &m->res->rows[m->i++];

	if (cl->hist_cold) {
		uint64_t from, to;

		if (r->seq > cl->hist_after)
			cl->hist_after = r->seq;
		if (!backlog_cold_range(cl->s->backlog, r->target, &from, &to) ||
		    r->seq < from || r->seq > to)
			return 0; /* not a line the cache held */
	}
	return client_replay_line(cl, r->seq, r->time_ms, r->line) < 0 ? -1 : 0;
}

static int merge_cache_line(void *arg, uint64_t seq, int64_t time_ms,
			    const char *buffer, const char *line)
{
	struct merge *m = arg;

	(void)buffer;
	if (seq > m->last)
		return 1; /* the next page, or the cache's replay */
	while (m->i < m->res->nrows && m->res->rows[m->i].seq < seq)
		if (merge_row(m) < 0)
			return -1;
	if (m->i < m->res->nrows && m->res->rows[m->i].seq == seq)
		m->i++;
	return client_replay_line(m->cl, seq, time_ms, line) < 0 ? -1 : 0;
}

static void replay_merge(struct client *cl, const struct store_result *res)
{
	struct merge m = { .cl = cl, .res = res };

	if (res->nrows == 0)
		return;
	m.last = res->rows[res->nrows - 1].seq;
	if (backlog_replay(cl->s->backlog, cl->delivered_seq, merge_cache_line, &m) < 0)
		return;
	while (m.i < res->nrows)
		if (merge_row(&m) < 0)
			return;
}

static void replay_step(struct history *h, struct client *cl);

static void on_replay_rows(void *arg, int rc, struct store_result *res,
			   const char *err)
{
	struct client *cl = arg;
	struct session *s = cl->s;
	struct history *h = s ? bouncer_history(s->b) : NULL;

	cl->hist_query = 0;
	if (!s || !h || cl->phase != CLIENT_ATTACHED || conn_is_dead(cl->conn)) {
		store_result_free(res);
		return;
	}
	if (rc < 0) {
		log_warn("store", "%s: reading client %s's history from the store failed (%s): replaying the cache",
			 s->key, cl->client_id ? cl->client_id : "default",
			 err && err[0] ? err : strerror(-rc));
		h->errors++;
		cl->hist_store = false;
	} else {
		replay_merge(cl, res);
		if (res->nrows < HISTORY_REPLAY_PAGE)
			cl->hist_store = false; /* the rest is in the cache */
	}
	store_result_free(res);
	if (conn_is_dead(cl->conn))
		return;
	client_replay_continue(cl);
}

static void on_position(void *arg, int rc, struct store_result *res,
			const char *err)
{
	struct client *cl = arg;
	struct session *s = cl->s;
	struct history *h = s ? bouncer_history(s->b) : NULL;

	(void)err;
	cl->hist_query = 0;
	if (!s || !h || cl->phase != CLIENT_ATTACHED || conn_is_dead(cl->conn)) {
		store_result_free(res);
		return;
	}
	uint64_t pos = rc == 0 && res->nrows == 1 ? res->rows[0].seq : 0;
	store_result_free(res);
	if (rc < 0 && rc != -ENOENT)
		h->errors++;
	if (pos > cl->delivered_seq) {
		/* Seqs the store handed out before this life: the cache's
		 * next seq goes above them (a position is never beyond it). */
		backlog_set_next_seq(s->backlog, pos + 1);
		cl->delivered_seq = cl->acked_seq = pos;
		log_info("client", "%s: client %s resumes at the store's position %llu",
			 s->key, cl->client_id ? cl->client_id : "default",
			 (unsigned long long)pos);
	}
	cl->hist_store = needs_store(cl, cl->delivered_seq);
	client_replay_continue(cl);
}

static void replay_step(struct history *h, struct client *cl)
{
	struct store_query q = {
		.kind = STORE_Q_REPLAY, .network = cl->s->key,
		.after_seq = cl->hist_cold && cl->hist_after > cl->delivered_seq ?
			     cl->hist_after : cl->delivered_seq,
		.limit = HISTORY_REPLAY_PAGE,
	};
	uint64_t id = 0;
	int r = store_query_async(h->st, &q, on_replay_rows, cl, &id);

	if (r < 0) {
		/* -EAGAIN (256 queries waiting): the cache only; rare. */
		log_warn("store", "%s: client %s's history not read from the store (%s): replaying the cache",
			 cl->s->key, cl->client_id ? cl->client_id : "default",
			 strerror(-r));
		h->errors++;
		cl->hist_store = false;
		return;
	}
	h->replay_queries++;
	cl->hist_query = id;
}

bool history_replay_begin(struct history *h, struct client *cl, bool attach)
{
	struct session *s = cl->s;

	if (!h || !s)
		return false;
	if (cl->hist_query)
		return true;
	if (attach && cl->delivered_seq == 0) {
		/* No position in memory: the store may have one (a crash,
		 * a restart). */
		struct store_query q = {
			.kind = STORE_Q_POSITION, .network = s->key,
			.target = cl->client_id ? cl->client_id : "default",
		};
		uint64_t id = 0;
		if (store_query_async(h->st, &q, on_position, cl, &id) == 0) {
			cl->hist_query = id;
			cl->replaying = true;
			return true;
		}
		h->errors++;
	}
	cl->hist_store = needs_store(cl, cl->delivered_seq);
	return false;
}

bool history_replay_busy(struct history *h, struct client *cl)
{
	if (!h || !cl->s)
		return false;
	if (cl->hist_query)
		return true;
	if (cl->hist_store) {
		replay_step(h, cl);
		return cl->hist_query != 0;
	}
	return false;
}

void history_client_forget(struct history *h, struct client *cl)
{
	if (h && cl->hist_query)
		store_query_cancel(h->st, cl->hist_query);
	cl->hist_query = 0;
	cl->hist_store = false;
	cl->hist_cold = false;
	for (struct history_session *hs = h && cl->hist_waiting ? h->sessions : NULL;
	     hs; hs = hs->next)
		for (size_t i = 0; i < hs->nwaiting; i++)
			if (hs->waiting[i] == cl) {
				hs->waiting[i] = hs->waiting[--hs->nwaiting];
				break;
			}
	cl->hist_waiting = false;
}

/* ---- read markers ---- */

static struct marker *marker_find(struct history_session *hs, const char *folded)
{
	for (size_t i = 0; i < hs->nmarkers; i++)
		if (strcmp(hs->markers[i].target, folded) == 0)
			return &hs->markers[i];
	return NULL;
}

static int marker_put(struct history_session *hs, const char *folded, int64_t t)
{
	struct marker *m = marker_find(hs, folded);

	if (m) {
		if (t > m->t)
			m->t = t;
		return 0;
	}
	/* Never evicted: memory holds every marker of the session, so a get
	 * never has to ask the store; a set past the bound is refused. */
	if (hs->nmarkers >= HISTORY_MARKERS)
		return -ENOSPC;
	char *d = strdup(folded);
	if (!d)
		return -ENOMEM;
	struct marker *nv = realloc(hs->markers, (hs->nmarkers + 1) * sizeof(*nv));
	if (!nv) {
		free(d);
		return -ENOMEM;
	}
	hs->markers = nv;
	nv[hs->nmarkers++] = (struct marker){ d, t, false };
	return 0;
}

/* Write hs's changed markers: at most HISTORY_MARKER_BATCH queued at a time
 * per session (the next batch once the last one is committed), so one
 * session's MARKREADs never take the store's queue from the lines of the
 * others; a marker changed many times meanwhile is written once. */
static void markers_write(struct history_session *hs)
{
	struct history *h = hs->h;
	unsigned n = 0;

	if (hs->marker_op && store_durable_seq(h->st) < hs->marker_op)
		return;
	for (size_t i = 0; i < hs->nmarkers && hs->ndirty && n < HISTORY_MARKER_BATCH; i++) {
		struct marker *m = &hs->markers[i];
		uint64_t op = 0;
		if (!m->dirty)
			continue;
		int r = store_set_read_marker(h->st, hs->s->key, m->target, m->t, &op);
		if (r == -EAGAIN)
			return; /* the next tick */
		if (r < 0)
			note_error(h, hs->s, r);
		else if (op > hs->marker_op)
			hs->marker_op = op;
		m->dirty = false;
		hs->ndirty--;
		h->dirty_markers--;
		n++;
	}
}

static void on_markers(void *arg, int rc, struct store_result *res,
		       const char *err)
{
	struct history_session *hs = arg;
	struct history *h = hs->h;

	hs->mquery = 0;
	hs->mstate = MARKERS_LOADED;
	if (rc < 0) {
		h->errors++;
		log_error("store", "%s: read markers not read from the store (%s): clients get none until they set them",
			  hs->s->key, err && *err ? err : strerror(-rc));
	}
	size_t over = 0;
	for (size_t i = 0; rc == 0 && i < res->ntargets; i++)
		if (marker_put(hs, res->targets[i].target, res->targets[i].last_time_ms) == -ENOSPC)
			over++;
	if (over)
		log_warn("store", "%s: %zu read markers in the store past the %d kept (written before that bound): not served",
			 hs->s->key, over, HISTORY_MARKERS);
	store_result_free(res);
	/* the clients that waited attach now (if they still wait) */
	struct client **w = hs->waiting;
	size_t n = hs->nwaiting;
	hs->waiting = NULL;
	hs->nwaiting = 0;
	for (size_t i = 0; i < n; i++) {
		w[i]->hist_waiting = false;
		if (w[i]->phase == CLIENT_PENDING && w[i]->parked)
			client_route(w[i]);
	}
	free(w);
}

void history_markers_load(struct history *h, struct session *s)
{
	struct history_session *hs = h ? hs_get(h, s) : NULL;

	if (!hs || hs->mstate != MARKERS_NONE)
		return;
	struct store_query q = { .kind = STORE_Q_MARKERS, .network = s->key };
	if (store_query_async(h->st, &q, on_markers, hs, &hs->mquery) == 0) {
		hs->mstate = MARKERS_LOADING;
	} else {
		/* -EAGAIN (256 queries waiting): as if there were none */
		h->errors++;
		hs->mstate = MARKERS_LOADED;
	}
}

bool history_markers_wait(struct history *h, struct session *s,
			  struct client *cl)
{
	history_markers_load(h, s);
	struct history_session *hs = h ? s->hist : NULL;
	if (!hs || hs->mstate == MARKERS_LOADED)
		return false;
	for (size_t i = 0; i < hs->nwaiting; i++)
		if (hs->waiting[i] == cl)
			return true;
	struct client **nv = realloc(hs->waiting, (hs->nwaiting + 1) * sizeof(*nv));
	if (!nv)
		return false; /* attaches without them */
	hs->waiting = nv;
	nv[hs->nwaiting++] = cl;
	cl->hist_waiting = true;
	return true;
}

int history_marker_get(struct history *h, struct session *s,
		       const char *target, int64_t *t)
{
	char folded[STORE_NAME_MAX + 1];
	struct history_session *hs = h ? s->hist : NULL;

	if (!hs || hs->mstate != MARKERS_LOADED) {
		history_markers_load(h, s);
		return -EAGAIN;
	}
	history_fold_target(target, folded, sizeof folded);
	struct marker *m = marker_find(hs, folded);
	if (!m)
		return 0;
	*t = m->t;
	return 1;
}

int history_marker_set(struct history *h, struct session *s,
		       const char *target, int64_t *t)
{
	char folded[STORE_NAME_MAX + 1];
	struct history_session *hs = h ? s->hist : NULL;

	if (!hs || hs->mstate != MARKERS_LOADED) {
		history_markers_load(h, s);
		return -EAGAIN;
	}
	history_fold_target(target, folded, sizeof folded);
	struct marker *m = marker_find(hs, folded);
	if (m && *t <= m->t) {
		*t = m->t;
		return 0;
	}
	int r = marker_put(hs, folded, *t);
	if (r < 0)
		return r;
	m = marker_find(hs, folded);
	if (!m->dirty) {
		m->dirty = true;
		hs->ndirty++;
		hs->h->dirty_markers++;
	}
	markers_write(hs);
	return 1;
}

/* ---- stats ---- */

void history_stats(const struct history *h, struct history_stats *out)
{
	memset(out, 0, sizeof *out);
	if (!h) {
		out->backend = "off";
		return;
	}
	out->backend = h->backend;
	out->appended = h->appended;
	out->refused = h->refused;
	out->errors = h->errors;
	out->commit_failures = h->commit_failures;
	out->replay_queries = h->replay_queries;
	out->failing = h->failing || h->stalled;
	out->stalled = h->stalled;
	out->durable_seq = store_durable_seq(h->st);
	out->queued = store_queued(h->st);
	for (const struct history_session *hs = h->sessions; hs; hs = hs->next) {
		out->pending_now += hs->npending;
		out->paused_sessions += hs->paused;
	}
}

/* ---- cold ranges for an older receiver ---- */

void history_cold_lines_free(struct state_cold_line *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(v[i].target);
		free(v[i].line);
	}
	free(v);
}

static int cmp_cold(const void *x, const void *y)
{
	const struct state_cold_line *a = x, *b = y;
	int c = strcmp(a->target, b->target);

	return c ? c : (a->seq < b->seq ? -1 : a->seq > b->seq);
}

int history_cold_lines(struct history *h, struct session *s,
		       struct state_cold_line **out, size_t *n)
{
	struct state_cold_line *v = NULL;
	size_t nv = 0, cap = 0, bytes = 0, drop = 0;
	uint64_t first = 0, newest = backlog_cold_after(s->backlog, 0, &first);
	uint64_t after = first ? first - 1 : 0;
	struct backlog_limits lim;
	char err[256];
	int rc = 0;

	*out = NULL;
	*n = 0;
	if (!newest)
		return 0;
	if (!h) {
		log_warn("store", "%s: no store open: %llu-%llu of its backlog stay out of the state written for an older worker",
			 s->key, (unsigned long long)first, (unsigned long long)newest);
		return -EIO;
	}
	while (after < newest && rc == 0) {
		struct store_query q = {
			.kind = STORE_Q_REPLAY, .network = s->key,
			.after_seq = after, .limit = STORE_QUERY_MAX,
		};
		struct store_result res = { 0 };

		rc = store_query(h->st, &q, &res, err, sizeof err);
		if (rc < 0) {
			log_warn("store", "%s: reading its cold backlog for an older worker failed (%s): those lines stay in the store only",
				 s->key, err[0] ? err : strerror(-rc));
			rc = -EIO;
			break;
		}
		for (size_t i = 0; i < res.nrows && rc == 0; i++) {
			const struct store_row *r = &res.rows[i];
			uint64_t from, to;

			after = r->seq;
			if (r->seq > newest)
				break;
			if (!backlog_cold_range(s->backlog, r->target, &from, &to) ||
			    r->seq < from || r->seq > to)
				continue;
			if (nv == cap) {
				size_t nc = cap ? cap * 2 : 64;
				struct state_cold_line *nvv = realloc(v, nc * sizeof(*v));
				if (!nvv) {
					rc = -ENOMEM;
					break;
				}
				v = nvv;
				cap = nc;
			}
			v[nv].seq = r->seq;
			v[nv].time_ms = r->time_ms;
			v[nv].target = strdup(r->target);
			v[nv].line = strdup(r->line);
			nv++;
			if (!v[nv - 1].target || !v[nv - 1].line)
				rc = -ENOMEM;
			else
				bytes += strlen(r->line);
		}
		if (res.nrows < STORE_QUERY_MAX)
			after = newest;
		store_result_free(&res);
	}
	if (rc < 0) {
		history_cold_lines_free(v, nv);
		return rc;
	}
	/* within the backlog's total bounds beside what it holds (the
	 * state's size bound counts those): the oldest go first */
	backlog_get_limits(s->backlog, &lim);
	size_t held = backlog_nlines(s->backlog), hbytes = backlog_nbytes(s->backlog);
	while (drop < nv &&
	       ((lim.total_lines && held + nv - drop > lim.total_lines) ||
		(lim.total_bytes && hbytes + bytes > lim.total_bytes))) {
		bytes -= strlen(v[drop].line);
		drop++;
	}
	if (drop) {
		log_warn("store", "%s: %zu of its oldest stored lines left out of the state for an older worker (backlog bounds)",
			 s->key, drop);
		for (size_t i = 0; i < drop; i++) {
			free(v[i].target);
			free(v[i].line);
		}
		memmove(v, v + drop, (nv - drop) * sizeof(*v));
		nv -= drop;
	}
	qsort(v, nv, sizeof(*v), cmp_cold);
	*out = v;
	*n = nv;
	return 0;
}
