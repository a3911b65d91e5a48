/* sessiond/transfer.c: see transfer.h.
 *
 * Source side, per chunk: freeze the chunk's items, serialize them, hand them
 * to handoff_source_send_chunk(); on COMMIT release them (this process's
 * copies of the sockets are closed, nothing is sent on them; the sessions'
 * memory is freed after the migration, or never if this worker exits), on
 * abort thaw them and stop. Chunks are pipelined (handoff/protocol.h): the
 * next chunk is frozen, serialized and sent as soon as COMMIT of the
 * previous one is out, so this process works on chunk k+1 while the target
 * acknowledges and arms chunk k. At most two chunks are frozen at once; a
 * failure thaws every item not committed (both chunks). Pending (unauthenticated) clients are all frozen at the
 * start and travel last: in the source, a pending client that authenticated
 * while the migration runs could attach to a session that already left; in
 * the target, one that arrived early could log in before its session did.
 */
#include "sessiond/transfer.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/cohort.h"
#include "common/config.h"
#include "common/log.h"
#include "common/frame.h"
#include "handoff/protocol.h"
#include "sessiond/bouncer.h"
#include "sessiond/state.h"

struct transfer {
	struct event_base *base;
	struct bouncer *b;
	struct transfer_report report;
	char fault[64];              /* test-only fault point, "" for none */
	uint32_t fault_chunk;        /* the chunk it applies to ("POINT@N") */
	struct timespec started;
	struct transfer_result res;
	/* A canary's partial move (transfer.h); sel is a copy (source). */
	bool partial;
	struct transfer_select sel;

	/* source */
	struct handoff_source *src;
	struct bouncer_item **items; /* snapshot; entries NULL once released */
	size_t nitems, next;         /* next: first item of the next chunk */
	/* An item over chunk_bytes found after the first of a chunk goes
	 * alone in the next one: items[next], already frozen and serialized
	 * (buf owned here, fds the item's), frozen since carry_frozen. */
	bool carry;
	uint8_t *carry_buf;
	size_t carry_len, carry_nfds;
	const int *carry_fds;
	void **carry_lists; /* the member lists it refers to (schema 2) */
	size_t carry_nlists;
	struct timespec carry_frozen;
	/* the schema written, what serialization accumulates (shrunk
	 * sessions, handshakes left), the open chunk's member lists */
	struct bouncer_pack pk;
	/* The outstanding chunks, oldest first: one, or two when the next
	 * went out behind COMMIT of the first (pipelining, protocol.h). */
	struct out_chunk {
		uint32_t number;
		size_t first, n;            /* items[first .. first + n) */
		uint32_t sessions, fds;     /* its counts, added on commit */
		struct timespec frozen;
		/* where its freeze goes: serialized and handed to the
		 * channel, PREPARED back from the target */
		struct timespec sent, prepared;
		/* COMMITTED seen queued while the next chunk was being
		 * built (acked: the freeze ended then, not when read) */
		bool acked;
		struct timespec acked_at;
	} oc[2];
	unsigned noc;
	uint32_t chunk_number;       /* of the next chunk built */
	bool failed;                 /* no chunk follows; finish when none is out */
	bool send_failed;            /* ... because the next chunk could not be sent */
	char fail_reason[160];
	unsigned chunk_items;
	size_t chunk_bytes;
	int extra_fd;                /* fault extra-fd: the unannounced fd */
	/* Before the first freeze, TLS handshakes in progress get
	 * handshake_budget_ms to finish (they cannot travel half-done). */
	struct event *hs_wait;
	struct timespec hs_deadline;

	/* target */
	struct handoff_target *tgt;
	struct bouncer_item **prepared; /* items of the open chunk */
	size_t nprepared, cap_prepared;
	int timeout_ms;
	struct event *finish_ev; /* frees the object outside handoff callbacks */
};

static int transfer_out_begin(struct transfer *m);
static void transfer_hs_wait_cb(evutil_socket_t fd, short what, void *arg);

static double transfer_ms_since(const struct timespec *t0)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - t0->tv_sec) * 1e3 +
	       (double)(now.tv_nsec - t0->tv_nsec) / 1e6;
}

const char *transfer_fault(const char *role)
{
	static char line[128];
	const char *path = getenv("BATON_FAULT_FILE");
	size_t rlen = strlen(role);
	FILE *f;

	if (path == NULL || (f = fopen(path, "re")) == NULL)
		return NULL;
	while (fgets(line, sizeof(line), f) != NULL) {
		line[strcspn(line, "\r\n")] = '\0';
		if (strncmp(line, role, rlen) == 0 && line[rlen] == ':') {
			fclose(f);
			log_warn("fault", "injecting fault %s", line);
			return line + rlen + 1;
		}
	}
	fclose(f);
	return NULL;
}

/* Load the fault for `role`: "POINT" (chunk 0) or "POINT@CHUNK". */
static void transfer_fault_load(struct transfer *m, const char *role)
{
	const char *f = transfer_fault(role);
	char *at;

	if (f == NULL)
		return;
	snprintf(m->fault, sizeof(m->fault), "%s", f);
	at = strchr(m->fault, '@');
	if (at != NULL) {
		*at = '\0';
		m->fault_chunk = (uint32_t)strtoul(at + 1, NULL, 10);
	}
}

static bool transfer_fault_is(const struct transfer *m, const char *point,
			     uint32_t chunk)
{
	return strcmp(m->fault, point) == 0 && chunk == m->fault_chunk;
}

/* Deliver the result and free the migration from a fresh event-loop turn:
 * the handoff callbacks we are called from still use their objects. */
static void transfer_select_clear(struct transfer_select *sel)
{
	for (size_t i = 0; i < sel->nusers; i++)
		free(sel->users[i]);
	for (size_t i = 0; i < sel->nnetworks; i++)
		free(sel->networks[i]);
	free(sel->users);
	free(sel->networks);
	memset(sel, 0, sizeof(*sel));
}

static int transfer_select_copy(struct transfer_select *dst,
			       const struct transfer_select *src)
{
	memset(dst, 0, sizeof(*dst));
	dst->percent_x100 = src->percent_x100;
	dst->users = calloc(src->nusers + 1, sizeof(char *));
	dst->networks = calloc(src->nnetworks + 1, sizeof(char *));
	if (dst->users == NULL || dst->networks == NULL)
		goto fail;
	for (; dst->nusers < src->nusers; dst->nusers++)
		if ((dst->users[dst->nusers] = strdup(src->users[dst->nusers])) == NULL)
			goto fail;
	for (; dst->nnetworks < src->nnetworks; dst->nnetworks++)
		if ((dst->networks[dst->nnetworks] =
			     strdup(src->networks[dst->nnetworks])) == NULL)
			goto fail;
	return 0;
fail:
	transfer_select_clear(dst);
	return -ENOMEM;
}

static bool transfer_selected(const struct transfer_select *sel,
			     const struct bouncer_item *it)
{
	const char *user = bouncer_item_user(it), *net = bouncer_item_network(it);

	if (user == NULL)
		return false; /* pending clients stay */
	for (size_t i = 0; i < sel->nusers; i++)
		if (strcmp(sel->users[i], user) == 0)
			return true;
	for (size_t i = 0; i < sel->nnetworks; i++)
		if (strcmp(sel->networks[i], net) == 0)
			return true;
	return cohort_in_percent(user, sel->percent_x100);
}

static void transfer_free(struct transfer *m)
{
	transfer_select_clear(&m->sel);
	handoff_source_free(m->src);
	handoff_target_free(m->tgt);
	free(m->items);
	free(m->carry_buf);
	free(m->carry_lists);
	bouncer_pack_clear(&m->pk);
	free(m->prepared);
	if (m->extra_fd >= 0)
		close(m->extra_fd);
	if (m->finish_ev != NULL)
		event_free(m->finish_ev);
	if (m->hs_wait != NULL)
		event_free(m->hs_wait);
	free(m);
}

static void transfer_finish_cb(evutil_socket_t fd, short what, void *arg)
{
	struct transfer *m = arg;

	m->res.total_ms = transfer_ms_since(&m->started);
	m->res.handshakes_left += m->pk.handshakes_left;
	m->res.shrunk_sessions = m->pk.shrunk.sessions;
	m->res.shrunk_lines = m->pk.shrunk.lines;
	m->res.shrunk_clients = m->pk.shrunk.clients;
	m->res.shrunk_member_lists = m->pk.shrunk.member_lists;
	m->res.lines_in_store = m->pk.lines_stored;
	if (m->pk.shrunk.sessions)
		log_warn("migrate", "%u sessions were over what one message carries and were shrunk: %u backlog lines, %u clients, %u member lists dropped",
			 m->pk.shrunk.sessions, m->pk.shrunk.lines, m->pk.shrunk.clients,
			 m->pk.shrunk.member_lists);
	if (!m->res.committed) /* thawed: every handshake carries on here */
		m->res.handshakes_left = 0;
	if (m->res.handshakes_left)
		log_warn("migrate", "%u TLS handshakes were still running and did not travel (closed with this process; clients and the governor connect again)",
			 m->res.handshakes_left);
	bouncer_migration_ended(m->b, m->partial);
	/* Sessions that moved out are freed now, from the loop, unless this
	 * worker is about to exit (a full migration that committed). */
	if (m->partial || !m->res.committed || m->tgt != NULL)
		bouncer_released_reap(m->b);
	m->report.finished(m->report.arg, &m->res);
	transfer_free(m);
}

static void transfer_finish(struct transfer *m, bool committed, const char *why)
{
	m->res.committed = committed;
	snprintf(m->res.reason, sizeof(m->res.reason), "%s", why ? why : "");
	m->finish_ev = evtimer_new(m->base, transfer_finish_cb, m);
	if (m->finish_ev == NULL) {
		transfer_finish_cb(-1, 0, m);
		return;
	}
	event_active(m->finish_ev, EV_TIMEOUT, 0);
}

/* ---- source ---- */

static void transfer_thaw_rest(struct transfer *m, size_t from)
{
	/* Thaw every frozen item not committed from `from` on (the failed
	 * chunk, one sent behind it, an item carried to the next one), and
	 * every pending client frozen up front; each once (forgotten here
	 * once thawed). */
	size_t end = m->next + (m->carry ? 1 : 0);

	for (size_t i = from; i < m->nitems; i++) {
		struct bouncer_item *it = m->items[i];

		if (it == NULL)
			continue;
		if (i < end || !bouncer_item_is_session(it)) {
			bouncer_item_thaw(it);
			m->items[i] = NULL;
		}
	}
	free(m->carry_buf);
	m->carry_buf = NULL;
	free(m->carry_lists);
	m->carry_lists = NULL;
	m->carry_nlists = 0;
	m->carry = false;
}

static void transfer_send_next(struct transfer *m);

static double transfer_ms_between(const struct timespec *a,
				  const struct timespec *b)
{
	return (double)(b->tv_sec - a->tv_sec) * 1e3 +
	       (double)(b->tv_nsec - a->tv_nsec) / 1e6;
}

/* Pipelining: while the next chunk is built, note when the committing
 * chunk's COMMITTED is on the channel (read later, from the loop). */
static void transfer_note_ack(struct transfer *m, struct out_chunk *c)
{
	if (c->acked || !handoff_source_committed_queued(m->src))
		return;
	c->acked = true;
	clock_gettime(CLOCK_MONOTONIC, &c->acked_at);
}

static void transfer_source_phase(void *arg, enum handoff_phase phase,
				 uint32_t chunk)
{
	struct transfer *m = arg;

	if (phase == HANDOFF_PHASE_PREPARED_RECEIVED)
		for (unsigned i = 0; i < m->noc; i++)
			if (m->oc[i].number == chunk)
				clock_gettime(CLOCK_MONOTONIC, &m->oc[i].prepared);
	if ((phase == HANDOFF_PHASE_PREPARED_RECEIVED &&
	     transfer_fault_is(m, "after-prepared", chunk)) ||
	    (phase == HANDOFF_PHASE_COMMIT_SENT &&
	     transfer_fault_is(m, "after-commit", chunk)))
		raise(SIGKILL);
}

static void transfer_chunk_done(struct handoff_source *src, uint32_t chunk,
			       int result, const char *reason, void *arg)
{
	struct transfer *m = arg;
	struct out_chunk c;
	double frozen;

	if (m->noc == 0 || m->oc[0].number != chunk) {
		/* Cannot happen (protocol.h: in order, once each). */
		log_error("migrate", "outcome of chunk %u, which is not outstanding",
			  chunk);
		return;
	}
	c = m->oc[0];
	m->oc[0] = m->oc[1];
	m->noc--;
	if (result < 0 || !c.acked)
		clock_gettime(CLOCK_MONOTONIC, &c.acked_at);
	/* Its freeze ended when COMMITTED was on the channel (the target arms
	 * right after queueing it), or now (aborted: thawed now). */
	frozen = transfer_ms_between(&c.frozen, &c.acked_at);
	if (frozen > m->res.freeze_max_ms) {
		/* The longest freeze, split: freezing + serializing here
		 * (with pipelining, until it could go out behind COMMIT of the
		 * chunk before it), the target reading and adopting (until
		 * PREPARED), and COMMIT -> COMMITTED. */
		m->res.freeze_max_ms = frozen;
		m->res.freeze_serialize_ms = transfer_ms_between(&c.frozen, &c.sent);
		m->res.freeze_prepare_ms = result < 0 ? 0 :
			transfer_ms_between(&c.sent, &c.prepared);
		m->res.freeze_commit_ms = result < 0 ? 0 :
			transfer_ms_between(&c.prepared, &c.acked_at);
	}
	if (result < 0) {
		if (!m->failed) {
			log_warn("migrate", "chunk %u aborted: %s; resuming %zu items",
				 chunk, reason, m->nitems - c.first);
			transfer_thaw_rest(m, c.first);
			m->failed = true;
			snprintf(m->fail_reason, sizeof(m->fail_reason), "%s",
				 reason);
		} else if (m->send_failed) {
			/* The chunk meant to go behind this one could not be
			 * sent (EPIPE, timeout) while this one waited for
			 * COMMITTED, and now this one failed too: it is still
			 * frozen. */
			log_warn("migrate", "chunk %u aborted after the chunk behind it could not be sent: %s; resuming %zu items",
				 chunk, reason, m->nitems - c.first);
			transfer_thaw_rest(m, c.first);
		} else {
			/* Sent behind the chunk that failed: thawed with it
			 * (transfer_thaw_rest() skips what was thawed). */
			log_info("migrate", "chunk %u (sent behind the chunk before it) aborted with it: %s; resumed",
				 chunk, reason);
			transfer_thaw_rest(m, c.first);
		}
		if (m->noc == 0)
			transfer_finish(m, false, m->fail_reason);
		return;
	}
	for (size_t i = c.first; i < c.first + c.n; i++) {
		bouncer_item_release(m->items[i]); /* copies closed: T owns them */
		m->items[i] = NULL;
	}
	/* Counts report what moved: committed chunks only. */
	m->res.sessions += c.sessions;
	m->res.fds += c.fds;
	m->res.connections += c.fds;
	m->res.chunks_committed++;
	if (m->report.progress)
		m->report.progress(m->report.arg, (uint32_t)(c.first + c.n),
				   (uint32_t)m->nitems);
	if (m->noc > 0)
		return; /* the next one is out already */
	if (m->failed) {
		transfer_finish(m, false, m->fail_reason);
		return;
	}
	transfer_send_next(m);
}

/* COMMIT of `chunk` is out (protocol.h pipelining): build and send the next
 * chunk now, while the target acknowledges and arms that one. At most two
 * chunks are frozen at once, so a chunk waits frozen behind at most one. */
static void transfer_window_open(struct handoff_source *src, uint32_t chunk,
				 void *arg)
{
	struct transfer *m = arg;

	if (m->failed || m->noc != 1 || m->next >= m->nitems)
		return; /* the last chunk: DONE follows its COMMITTED */
	transfer_send_next(m);
}

/* Test-only faults on the first item of the chunk they name (the chunk
 * about to be sent is number chunks_committed). */
static void transfer_inject_item_fault(struct transfer *m,
				      struct handoff_item *first, uint8_t *buf)
{
	static int fds[FRAME_MAX_FDS];
	uint32_t chunk = m->chunk_number;

	if (transfer_fault_is(m, "corrupt-item", chunk)) {
		memset(buf, 0xff, first->len > 16 ? 16 : first->len);
	} else if (transfer_fault_is(m, "truncate-item", chunk)) {
		first->len /= 2;
	} else if (transfer_fault_is(m, "extra-fd", chunk) &&
		   first->nfds < FRAME_MAX_FDS) {
		m->extra_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
		memcpy(fds, first->fds, first->nfds * sizeof(int));
		fds[first->nfds] = m->extra_fd;
		first->fds = fds;
		first->nfds++;
	}
}

static void transfer_send_next(struct transfer *m)
{
	struct handoff_item *hitems = NULL, *sitems;
	uint8_t **bufs = NULL, **lbufs = NULL;
	size_t *llens = NULL, nl = 0;
	size_t n = m->nitems - m->next;
	struct out_chunk *c;
	char why[160];
	size_t bytes = 0;
	int r = 0;

	if (n == 0) {
		r = handoff_source_finish(m->src);
		if (r < 0) {
			/* Everything is committed already: T owns it all. */
			log_warn("migrate", "DONE not delivered: %s", strerror(-r));
		}
		transfer_finish(m, true, NULL);
		return;
	}
	if (n > m->chunk_items)
		n = m->chunk_items;
	/* n is an upper bound: the chunk also closes once its state passes
	 * chunk_bytes, so heavy sessions (big channels, long backlogs) do not
	 * stretch the freeze of everyone in the chunk. */
	c = &m->oc[m->noc];
	*c = (struct out_chunk){ .number = m->chunk_number, .first = m->next,
				 .n = n };
	bouncer_pack_chunk_begin(&m->pk);
	bufs = calloc(n, sizeof(*bufs));
	sitems = calloc(n, sizeof(*sitems));
	if (sitems == NULL || bufs == NULL) {
		free(sitems);
		r = -ENOMEM;
		snprintf(why, sizeof(why), "out of memory");
		c->n = n = 0; /* frozen: at most the carried item (m->carry) */
		goto out;
	}
	clock_gettime(CLOCK_MONOTONIC, &c->frozen);
	if (m->carry)
		c->frozen = m->carry_frozen; /* its freeze began earlier */
	for (size_t i = 0; i < n; i++) {
		struct bouncer_item *it = m->items[c->first + i];
		const int *fds;
		size_t len, nfds, nlists = 0;
		void **lists = NULL;

		if (m->noc == 1 && i % 8 == 0)
			transfer_note_ack(m, &m->oc[0]);
		if (i == 0 && m->carry) {
			bufs[0] = m->carry_buf; /* transferred */
			len = m->carry_len;
			fds = m->carry_fds;
			nfds = m->carry_nfds;
			lists = m->carry_lists; /* transferred */
			nlists = m->carry_nlists;
			m->carry_buf = NULL;
			m->carry_lists = NULL;
			m->carry_nlists = 0;
			m->carry = false;
		} else {
			bouncer_item_freeze(it);
			r = bouncer_item_serialize_within(it, HANDOFF_ITEM_MAX_PAYLOAD,
							  &bufs[i], &len, &fds,
							  &nfds, &m->pk, &lists,
							  &nlists);
			if (r < 0) {
				snprintf(why, sizeof(why), "cannot serialize item: %s",
					 strerror(-r));
				c->n = n = i + 1; /* only these were frozen */
				goto out;
			}
		}
		if (i > 0 && len > m->chunk_bytes) {
			/* Alone in the next chunk: it would stretch the freeze
			 * of everyone before it in this one. */
			log_info("migrate", "an item of %zu bytes (over chunk_bytes) travels alone in the next chunk",
				 len);
			m->carry = true;
			m->carry_buf = bufs[i]; /* transferred */
			bufs[i] = NULL;
			m->carry_len = len;
			m->carry_fds = fds;
			m->carry_nfds = nfds;
			m->carry_lists = lists; /* transferred */
			m->carry_nlists = nlists;
			m->carry_frozen = c->frozen;
			c->n = n = i;
			break;
		}
		r = bouncer_pack_add_lists(&m->pk, lists, nlists);
		free(lists);
		if (r < 0) {
			snprintf(why, sizeof(why), "out of memory");
			c->n = n = i + 1;
			goto out;
		}
		sitems[i] = (struct handoff_item){ bufs[i], len, fds, nfds };
		c->fds += (uint32_t)nfds;
		if (bouncer_item_is_session(it))
			c->sessions++;
		bytes += len;
		if (bytes >= m->chunk_bytes && i + 1 < n) {
			n = i + 1;
			c->n = n;
		}
	}
	/* Schema 2: the chunk's member lists, once each, ahead of the
	 * sessions that refer to them (the target builds them first). */
	r = bouncer_pack_lists(&m->pk, HANDOFF_ITEM_MAX_PAYLOAD, &lbufs, &llens, &nl);
	if (r < 0 || !(hitems = calloc(nl + n + 1, sizeof(*hitems)))) {
		free(sitems);
		r = -ENOMEM;
		snprintf(why, sizeof(why), "out of memory");
		goto out;
	}
	for (size_t i = 0; i < nl; i++)
		hitems[i] = (struct handoff_item){ lbufs[i], llens[i], NULL, 0 };
	memcpy(hitems + nl, sitems, n * sizeof(*sitems));
	free(sitems);
	for (size_t i = 0; i < nl + n; i++)
		m->res.state_bytes += hitems[i].len;
	m->res.chunks++;
	transfer_inject_item_fault(m, hitems, nl ? lbufs[0] : bufs[0]);
	clock_gettime(CLOCK_MONOTONIC, &c->sent);
	c->prepared = c->sent;
	if (m->noc == 1)
		transfer_note_ack(m, &m->oc[0]);
	r = handoff_source_send_chunk(m->src, hitems, nl + n);
	if (m->noc == 1)
		transfer_note_ack(m, &m->oc[0]);
	if (r < 0)
		snprintf(why, sizeof(why), "sending chunk failed: %s",
			 strerror(-r));
out:
	/* The chunk's items count as frozen from here on (thawed on failure
	 * by transfer_thaw_rest(), which goes up to m->next). */
	m->next = c->first + c->n;
	for (size_t i = 0; bufs != NULL && i < n; i++)
		free(bufs[i]);
	for (size_t i = 0; i < nl; i++)
		free(lbufs[i]);
	free(lbufs);
	free(llens);
	free(bufs);
	free(hitems);
	if (r < 0) {
		/* No chunk follows. One still out (the chunk this one went
		 * behind) gets its outcome first; the migration ends then. */
		log_warn("migrate", "chunk %u not sent: %s; resuming %zu items",
			 c->number, why, m->nitems - c->first);
		transfer_thaw_rest(m, c->first);
		m->failed = true;
		m->send_failed = true;
		snprintf(m->fail_reason, sizeof(m->fail_reason), "%s", why);
		if (m->noc == 0)
			transfer_finish(m, false, why);
		return;
	}
	m->chunk_number++;
	m->noc++;
}

/* Stable partition: sessions first, then pending clients. */
static int transfer_pending_last(struct bouncer_item **items, size_t n)
{
	struct bouncer_item **tmp = malloc(n * sizeof(*tmp) + 1);
	size_t k = 0;

	if (tmp == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		if (bouncer_item_is_session(items[i]))
			tmp[k++] = items[i];
	for (size_t i = 0; i < n; i++)
		if (!bouncer_item_is_session(items[i]))
			tmp[k++] = items[i];
	memcpy(items, tmp, n * sizeof(*tmp));
	free(tmp);
	return 0;
}

int transfer_out_start(struct event_base *base, struct bouncer *b, int channel,
		      pid_t peer_pid, int peer_pidfd, int timeout_ms,
		      unsigned chunk_items, size_t chunk_bytes, int budget,
		      unsigned schema, const struct transfer_select *sel,
		      const struct transfer_report *report)
{
	struct transfer *m = calloc(1, sizeof(*m));

	if (m == NULL || (sel != NULL && transfer_select_copy(&m->sel, sel) < 0)) {
		free(m);
		close(channel);
		if (peer_pidfd >= 0)
			close(peer_pidfd);
		return -ENOMEM;
	}
	m->partial = sel != NULL;
	if (m->partial)
		budget = 0; /* pending clients (and their handshakes) stay */
	m->base = base;
	m->b = b;
	m->report = *report;
	m->extra_fd = -1;
	m->pk.schema = schema ? schema : 1;
	m->chunk_items = chunk_items ? chunk_items :
				       (unsigned)config_default_values()->chunk_sessions;
	m->chunk_bytes = chunk_bytes ? chunk_bytes :
				       (size_t)config_default_values()->chunk_bytes;
	transfer_fault_load(m, "source");
	clock_gettime(CLOCK_MONOTONIC, &m->started);
	m->src = handoff_source_new(base, channel, peer_pid, timeout_ms,
				    transfer_chunk_done, m);
	if (m->src == NULL) {
		if (peer_pidfd >= 0)
			close(peer_pidfd);
		free(m);
		return -ENOMEM;
	}
	handoff_source_set_peer_pidfd(m->src, peer_pidfd); /* transferred */
	handoff_source_set_phase_hook(m->src, transfer_source_phase, m);
	handoff_source_set_pipeline(m->src, transfer_window_open, m);
	if (budget > 0 && bouncer_handshakes(b) > 0) {
		m->hs_wait = event_new(base, -1, EV_PERSIST, transfer_hs_wait_cb, m);
		if (m->hs_wait != NULL) {
			struct timeval tick = { 0, 5000 };

			clock_gettime(CLOCK_MONOTONIC, &m->hs_deadline);
			m->hs_deadline.tv_nsec += (long)budget * 1000000L;
			m->hs_deadline.tv_sec += m->hs_deadline.tv_nsec / 1000000000L;
			m->hs_deadline.tv_nsec %= 1000000000L;
			log_info("migrate", "waiting up to %d ms for %zu TLS handshakes",
				 budget, bouncer_handshakes(b));
			event_add(m->hs_wait, &tick);
			return 0;
		}
	}
	if (transfer_out_begin(m) < 0)
		transfer_finish(m, false, "out of memory"); /* reports; frees */
	return 0;
}

/* Polled every 5 ms while handshakes run (they finish in the normal event
 * loop meanwhile: nothing is frozen yet). */
static void transfer_hs_wait_cb(evutil_socket_t fd, short what, void *arg)
{
	struct transfer *m = arg;
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	if (bouncer_handshakes(m->b) > 0 &&
	    (now.tv_sec < m->hs_deadline.tv_sec ||
	     (now.tv_sec == m->hs_deadline.tv_sec &&
	      now.tv_nsec < m->hs_deadline.tv_nsec)))
		return;
	event_del(m->hs_wait);
	if (transfer_out_begin(m) < 0)
		transfer_finish(m, false, "out of memory");
}

/* Snapshot the items and send the first chunk. Pending clients still in
 * their TLS handshake stay behind (closed when this process exits). */
static int transfer_out_begin(struct transfer *m)
{
	struct bouncer *b = m->b;
	size_t kept = 0;

	m->nitems = bouncer_items(b, &m->items);
	if (m->items == NULL)
		return -ENOMEM; /* not "nothing to move": that would lose them all */
	for (size_t i = 0; i < m->nitems; i++) {
		if (m->partial) {
			if (transfer_selected(&m->sel, m->items[i]))
				m->items[kept++] = m->items[i];
			continue;
		}
		if (!bouncer_item_is_session(m->items[i]) &&
		    bouncer_item_in_handshake(m->items[i])) {
			m->res.handshakes_left++;
			continue;
		}
		m->items[kept++] = m->items[i];
	}
	m->nitems = kept;
	if (transfer_pending_last(m->items, m->nitems) < 0)
		return -ENOMEM;
	/* Pending clients are frozen up front (see the top of this file). */
	for (size_t i = 0; i < m->nitems; i++)
		if (!bouncer_item_is_session(m->items[i]))
			bouncer_item_freeze(m->items[i]);
	log_info("migrate", "migrating %zu %s out in chunks of at most %u items / %zu bytes (state schema %u)",
		 m->nitems, m->partial ? "sessions (a canary's move)" : "items",
		 m->chunk_items, m->chunk_bytes, m->pk.schema);
	transfer_send_next(m);
	return 0;
}

/* ---- target ---- */

static int transfer_prepare(void *arg, uint32_t chunk, uint32_t index,
			   const uint8_t *payload, size_t len, int *fds,
			   size_t nfds, char *reason, size_t reason_len)
{
	struct transfer *m = arg;
	struct bouncer_item *it = NULL;
	int r;

	if (m->nprepared == m->cap_prepared) {
		size_t cap = m->cap_prepared ? 2 * m->cap_prepared : 64;
		struct bouncer_item **grown =
			realloc(m->prepared, cap * sizeof(*grown));

		if (grown == NULL) {
			for (size_t i = 0; i < nfds; i++)
				close(fds[i]);
			snprintf(reason, reason_len, "out of memory");
			return -ENOMEM;
		}
		m->prepared = grown;
		m->cap_prepared = cap;
	}
	if (transfer_fault_is(m, "slow-prepare", chunk)) {
		/* A target that keeps reading, but too slowly. */
		struct timespec ts = { 0, 300 * 1000000L };

		nanosleep(&ts, NULL);
	}
	r = bouncer_item_adopt(m->b, payload, len, fds, nfds, &it, reason,
			       reason_len);
	if (r < 0)
		return r;
	if (it != NULL) /* NULL: member lists, held for the chunk's end */
		m->prepared[m->nprepared++] = it;
	return 0;
}

static void transfer_commit(void *arg, uint32_t chunk)
{
	struct transfer *m = arg;

	bouncer_chunk_end(m->b, true); /* the chunk's member lists */
	for (size_t i = 0; i < m->nprepared; i++) {
		struct bouncer_item *it = m->prepared[i];

		m->res.fds += (uint32_t)bouncer_item_nfds(it);
		m->res.connections += (uint32_t)bouncer_item_nfds(it);
		if (bouncer_item_is_session(it))
			m->res.sessions++;
		bouncer_item_arm(it); /* now owned by the bouncer */
	}
	m->nprepared = 0;
	m->res.chunks++;
	m->res.chunks_committed++;
}

static void transfer_abort(void *arg, uint32_t chunk, const char *reason)
{
	struct transfer *m = arg;

	log_warn("migrate", "chunk %u aborted: %s", chunk, reason);
	for (size_t i = 0; i < m->nprepared; i++)
		bouncer_item_discard(m->prepared[i]);
	m->nprepared = 0;
	bouncer_chunk_end(m->b, false); /* the chunk's member lists */
}

static void transfer_done(void *arg, int result, const char *reason,
			 uint32_t chunks_committed)
{
	struct transfer *m = arg;

	m->res.chunks_committed = chunks_committed;
	transfer_finish(m, result == 0, result == 0 ? NULL : reason);
}

static void transfer_target_phase(void *arg, enum handoff_phase phase,
				 uint32_t chunk)
{
	struct transfer *m = arg;

	if ((phase == HANDOFF_PHASE_BEGIN_RECEIVED &&
	     transfer_fault_is(m, "after-begin", chunk)) ||
	    (phase == HANDOFF_PHASE_END_RECEIVED &&
	     transfer_fault_is(m, "after-end", chunk)) ||
	    (phase == HANDOFF_PHASE_PREPARED_SENT &&
	     transfer_fault_is(m, "after-prepared", chunk)))
		raise(SIGKILL);
	if (phase == HANDOFF_PHASE_COMMIT_RECEIVED &&
	    transfer_fault_is(m, "after-commit", chunk)) {
		/* Dies with COMMIT read and COMMITTED not sent, once the
		 * source had time to send the next chunk behind COMMIT. */
		struct timespec ts = { 0, 200 * 1000000L };

		nanosleep(&ts, NULL);
		raise(SIGKILL);
	}
	if (phase == HANDOFF_PHASE_BEGIN_RECEIVED &&
	    transfer_fault_is(m, "hang-after-begin", chunk)) {
		/* A target that stops reading: the source must time out. */
		struct timespec ts = { .tv_sec = 3 * m->timeout_ms / 1000 + 1 };

		nanosleep(&ts, NULL);
	}
}

static const struct handoff_target_ops transfer_target_ops = {
	.prepare = transfer_prepare,
	.commit = transfer_commit,
	.abort = transfer_abort,
	.done = transfer_done,
};

int transfer_in_start(struct event_base *base, struct bouncer *b, int channel,
		     int timeout_ms, bool partial,
		     const struct transfer_report *report)
{
	struct transfer *m = calloc(1, sizeof(*m));

	if (m == NULL) {
		close(channel);
		return -ENOMEM;
	}
	m->base = base;
	m->b = b;
	m->report = *report;
	m->extra_fd = -1;
	m->timeout_ms = timeout_ms;
	m->partial = partial;
	transfer_fault_load(m, "target");
	clock_gettime(CLOCK_MONOTONIC, &m->started);
	m->tgt = handoff_target_new(base, channel, timeout_ms,
				    &transfer_target_ops, m);
	if (m->tgt == NULL) {
		free(m);
		return -ENOMEM;
	}
	handoff_target_set_phase_hook(m->tgt, transfer_target_phase, m);
	return 0;
}
