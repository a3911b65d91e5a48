/* sessiond/checkpoint.c: see checkpoint.h. */
#include "sessiond/checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/strmap.h"
#include "control.pb-c.h"
#include "sessiond/bouncer.h"
#include "sessiond/client.h"
#include "sessiond/conn.h"
#include "sessiond/control_queue.h"
#include "sessiond/history.h"
#include "sessiond/item.h"
#include "sessiond/session.h"
#include "sessiond/state.h"
#include "sessiond/upstream.h"
#include "state.pb-c.h"
#include "store/store.h"
#include "tls/record.h"
#include "tls.pb-c.h"

#define CKPT_GROW (16u << 20) /* the memfd grows by this much */

struct ckpt_log {
	int fd;
	uint8_t *map;
	size_t cap;       /* mapped and file size */
	uint64_t used;    /* committed record bytes */
};

struct tracked {
	char *key;
	uint64_t *ids;
	size_t nids;
	size_t bytes;     /* its last record */
	uint64_t rec_off; /* where that record is in the log (compaction) */
	uint64_t new_off; /* ... in the log a compaction is making */
	size_t new_bytes;
	int64_t last_ms;  /* when it was written (CLOCK_MONOTONIC) */
	bool seen;
};

/* A pass writes I/O-driven session records for at most this long, then
 * yields to the loop and goes on in the next iteration: a checkpoint never
 * stalls the relay for more than this (structural records are never
 * deferred). */
#define CKPT_BUDGET_NS (2 * 1000 * 1000)

static struct {
	bool on;
	struct event_base *base;
	struct bouncer *b;
	struct control_queue *q;
	struct event *timer;
	struct event *soon; /* a tick at the end of this loop iteration */
	struct event *cont; /* the rest of a pass cut by its budget */
	/* an incremental compaction (ckpt_compact_step()): the new log, how
	 * far the old one was copied, the sessions' record offsets in the old
	 * log when it started (id -> offset, sorted) */
	bool compacting;
	struct ckpt_log nl;
	uint64_t scan;
	struct id_off *map;
	size_t nmap;
	int interval_ms;
	struct ckpt_log log;
	/* ids stay unique across restarts (checkpoint_start() keeps
	 * next_id): those up to base_id are an earlier custody's, stale */
	uint64_t next_id, base_id, held;
	struct strmap *index; /* key -> struct tracked * */
	struct tracked **v;
	size_t n, cap;
	size_t live_bytes;
	int64_t last_ms;
	uint64_t records, session_records, compactions;
} ck;

static void ckpt_log_close(struct ckpt_log *l)
{
	if (l->map != NULL)
		munmap(l->map, l->cap);
	if (l->fd >= 0)
		close(l->fd);
	memset(l, 0, sizeof(*l));
	l->fd = -1;
}

static int ckpt_log_open(struct ckpt_log *l)
{
	memset(l, 0, sizeof(*l));
	l->fd = memfd_create("baton-checkpoint", MFD_CLOEXEC);
	if (l->fd < 0)
		return -errno;
	l->cap = CKPT_GROW;
	if (ftruncate(l->fd, (off_t)l->cap) < 0)
		goto fail;
	l->map = mmap(NULL, l->cap, PROT_READ | PROT_WRITE, MAP_SHARED, l->fd, 0);
	if (l->map == MAP_FAILED) {
		l->map = NULL;
		goto fail;
	}
	uint32_t hdr[2] = { CKPT_MAGIC, CKPT_VERSION };
	memcpy(l->map, hdr, sizeof(hdr));
	__atomic_store_n((uint64_t *)(l->map + 8), 0, __ATOMIC_RELEASE);
	return 0;
fail:;
	int err = -errno;
	ckpt_log_close(l);
	return err;
}

/* Room for `need` more bytes of records. */
static int ckpt_log_reserve(struct ckpt_log *l, size_t need)
{
	size_t want = CKPT_HEADER + l->used + need;
	size_t ncap = l->cap;
	void *m;

	if (want <= l->cap)
		return 0;
	while (ncap < want)
		ncap += CKPT_GROW;
	if (ftruncate(l->fd, (off_t)ncap) < 0)
		return -errno;
	m = mremap(l->map, l->cap, ncap, MREMAP_MAYMOVE);
	if (m == MAP_FAILED)
		return -errno;
	l->map = m;
	l->cap = ncap;
	return 0;
}

/* Append one record made of two parts; committed only once whole. */
static int ckpt_log_put(struct ckpt_log *l, uint32_t type, const void *a,
			size_t alen, const void *b, size_t blen)
{
	size_t len = alen + blen;
	size_t rec = (8 + len + 7) & ~(size_t)7;
	uint8_t *p;
	uint32_t h[2] = { type, (uint32_t)len };
	int r;

	if (len > UINT32_MAX)
		return -EMSGSIZE;
	if ((r = ckpt_log_reserve(l, rec)) < 0)
		return r;
	p = l->map + CKPT_HEADER + l->used;
	memcpy(p, h, 8);
	if (alen)
		memcpy(p + 8, a, alen);
	if (blen)
		memcpy(p + 8 + alen, b, blen);
	l->used += rec;
	/* the committed length last: a torn record is never read */
	__atomic_store_n((uint64_t *)(l->map + 8), l->used, __ATOMIC_RELEASE);
	ck.records++;
	return 0;
}

/* Custody ends after an error: the supervisor is told (a CUSTODY end),
 * so it releases the copies it holds (a socket we close must end for its
 * peer) and never restores from a log we no longer write. */
static void ckpt_fail(const char *reason)
{
	Baton__Control__Custody m = BATON__CONTROL__CUSTODY__INIT;
	bool was_on = ck.on;

	checkpoint_stop();
	if (!was_on || ck.q == NULL)
		return;
	m.has_end = 1;
	m.end = 1;
	m.reason = (char *)reason;
	if (control_queue_push_fds(ck.q, CONTROL_CUSTODY, &m.base, NULL, 0) < 0)
		log_error("custody", "cannot tell the supervisor that custody ended");
}

static void ckpt_put(uint32_t type, const void *a, size_t alen, const void *b,
		     size_t blen)
{
	if (!ck.on)
		return;
	if (ckpt_log_put(&ck.log, type, a, alen, b, blen) < 0) {
		log_error("custody", "cannot grow the checkpoint log: custody ends (a crash now disconnects everyone)");
		ckpt_fail("cannot grow the checkpoint log");
	}
}

static void ckpt_push(Baton__Control__Custody *m, int *fds, size_t nfds)
{
	int r = control_queue_push_fds(ck.q, CONTROL_CUSTODY, &m->base, fds, nfds);

	if (r < 0) {
		log_error("custody", "cannot hand sockets to the supervisor: %s: custody ends",
			  strerror(-r));
		ckpt_fail("cannot hand sockets to the supervisor");
	}
}

uint64_t checkpoint_conn_opened(int fd)
{
	Baton__Control__Custody m = BATON__CONTROL__CUSTODY__INIT;
	uint64_t id;
	int dup_fd;

	if (!ck.on || fd < 0)
		return 0;
	dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	if (dup_fd < 0) {
		log_warn("custody", "cannot duplicate a socket for custody: %s (it is lost if this worker crashes)",
			 strerror(errno));
		return 0;
	}
	id = ++ck.next_id;
	m.n_add = 1;
	m.add = &id;
	ckpt_push(&m, &dup_fd, 1);
	if (!ck.on)
		return 0;
	ck.held++;
	checkpoint_soon(); /* a session's sockets may change: record it now */
	return id;
}

void checkpoint_conn_closed(uint64_t id)
{
	Baton__Control__Custody m = BATON__CONTROL__CUSTODY__INIT;

	if (!ck.on || id <= ck.base_id)
		return;
	m.n_release = 1;
	m.release = &id;
	ckpt_push(&m, NULL, 0);
	ck.held--;
	checkpoint_soon();
}

void checkpoint_conn_read(uint64_t id, uint32_t lines)
{
	uint8_t r[12];

	if (!ck.on || id == 0)
		return;
	memcpy(r, &id, 8);
	memcpy(r + 8, &lines, 4);
	ckpt_put(CKPT_READ, r, sizeof(r), NULL, 0);
}

/* A ConnRecovery field by hand: tag, varint length or value, bytes. */
static size_t pb_varint(uint8_t *p, uint64_t v)
{
	size_t n = 0;

	do {
		p[n] = (uint8_t)(v & 0x7f);
		v >>= 7;
		if (v)
			p[n] |= 0x80;
		n++;
	} while (v);
	return n;
}

void checkpoint_conn_input(uint64_t id, const void *in, size_t len)
{
	uint8_t h[8 + 1 + 10];
	size_t n = 8;
	uint8_t *buf;

	if (!ck.on || id == 0)
		return;
	memcpy(h, &id, 8);
	h[n++] = (2 << 3) | 2; /* input, length-delimited */
	n += pb_varint(h + n, len);
	if (len == 0) {
		ckpt_put(CKPT_INPUT, h, n, NULL, 0);
		return;
	}
	buf = malloc(n + len);
	if (buf == NULL) {
		ckpt_fail("out of memory");
		return;
	}
	memcpy(buf, h, n);
	memcpy(buf + n, in, len);
	ckpt_put(CKPT_INPUT, buf, n + len, NULL, 0);
	free(buf);
}

void checkpoint_conn_wrote(uint64_t id, uint64_t written, const void *head,
			   size_t headlen)
{
	uint8_t h[8 + 1 + 10 + 1 + 10];
	size_t n = 8;

	if (!ck.on || id == 0)
		return;
	memcpy(h, &id, 8);
	h[n++] = (1 << 3) | 0; /* written, varint */
	n += pb_varint(h + n, written);
	h[n++] = (3 << 3) | 2; /* head (always: an empty one resets it) */
	n += pb_varint(h + n, headlen);
	ckpt_put(CKPT_WRITE, h, n, head, headlen);
}

void checkpoint_conn_drop(uint64_t id)
{
	uint8_t h[10];

	if (!ck.on || id == 0)
		return;
	memcpy(h, &id, 8);
	h[8] = (4 << 3) | 0;
	h[9] = 1;
	ckpt_put(CKPT_DROP, h, sizeof(h), NULL, 0);
}

int checkpoint_conn_tls(uint64_t id, uint64_t written, const void *head,
			size_t headlen, const void *in, size_t inlen,
			const struct tls_record *t)
{
	Baton__State__ConnRecovery r = BATON__STATE__CONN_RECOVERY__INIT;
	Baton__Tls__TlsState st;
	uint8_t *buf;
	size_t len;
	int rc;

	if (!ck.on || id == 0)
		return 0;
	if ((rc = tls_record_save_progress(t, &st)) < 0)
		return rc;
	r.has_written = 1;
	r.written = written;
	/* always set: an empty one resets an earlier record's */
	r.has_head = 1;
	r.head.data = (uint8_t *)head;
	r.head.len = headlen;
	r.has_input = 1;
	r.input.data = (uint8_t *)in;
	r.input.len = inlen;
	r.tls = &st;
	len = baton__state__conn_recovery__get_packed_size(&r);
	if (len > CKPT_TLS_MAX) {
		/* a peer's oversized partial handshake message: not worth
		 * the log (the caller records a DROP) */
		tls_record_state_free_contents(&st);
		return -EMSGSIZE;
	}
	if ((buf = malloc(8 + len)) == NULL) {
		tls_record_state_free_contents(&st);
		return -ENOMEM;
	}
	memcpy(buf, &id, 8);
	baton__state__conn_recovery__pack(&r, buf + 8);
	tls_record_state_free_contents(&st);
	ckpt_put(CKPT_TLS, buf, 8 + len, NULL, 0);
	/* keys were in it: the log is shared memory of ours and the
	 * supervisor's only, but a freed buffer need not keep them */
	explicit_bzero(buf, 8 + len);
	free(buf);
	return 0;
}

/* ---- session records ---- */

static struct conn *item_conn_by_fd(struct session *s, int fd)
{
	if (s->up != NULL && conn_fd(s->up->conn) == fd)
		return s->up->conn;
	for (size_t i = 0; i < s->nclients; i++)
		if (conn_fd(s->clients[i]->conn) == fd)
			return s->clients[i]->conn;
	return NULL;
}

static bool session_dirty(struct session *s)
{
	if (s->up != NULL && conn_checkpoint_dirty(s->up->conn))
		return true;
	for (size_t i = 0; i < s->nclients; i++)
		if (conn_checkpoint_dirty(s->clients[i]->conn))
			return true;
	return false;
}

static void tracked_free(struct tracked *t)
{
	if (t == NULL)
		return;
	free(t->key);
	free(t->ids);
	free(t);
}

/* Write the record of one session into l; updates its tracked entry. */
static int ckpt_session(struct ckpt_log *l, struct bouncer_item *it,
			struct tracked *t)
{
	struct session *s = it->session;
	/* Schema 3: what the store has committed is a position, not lines
	 * (a restore reads it back from the store; the lines after the
	 * store's durable seq are in the record). */
	struct state_ctx ctx = { .schema = STATE_SCHEMA_STORE_POS,
				 .members_inline = true };
	struct state_result res;
	uint8_t *buf = NULL, *hdr = NULL;
	size_t len = 0, keylen = strlen(s->key), hlen;
	uint64_t *ids = NULL;
	int r;

	if (bouncer_history(s->b))
		ctx.store_durable = store_durable_seq(history_store(bouncer_history(s->b)));
	r = state_serialize(it, &ctx, &buf, &len, &res);

	if (r < 0)
		return r;
	free(res.lists);
	ids = calloc(it->nfds ? it->nfds : 1, sizeof(*ids));
	hlen = 8 + 8 * it->nfds + keylen;
	hdr = malloc(hlen);
	if (ids == NULL || hdr == NULL) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < it->nfds; i++) {
		struct conn *c = item_conn_by_fd(s, it->fds[i]);

		ids[i] = c ? conn_custody_id(c) : 0;
	}
	uint32_t nk[2] = { (uint32_t)it->nfds, (uint32_t)keylen };
	uint64_t off = l->used;

	memcpy(hdr, nk, 8);
	memcpy(hdr + 8, ids, 8 * it->nfds);
	memcpy(hdr + 8 + 8 * it->nfds, s->key, keylen);
	r = ckpt_log_put(l, CKPT_SESSION, hdr, hlen, buf, len);
	if (r == 0) {
		/* the connections' write bases move with the record, and only
		 * once it is in the log: after a failed put the WRITE records
		 * that follow still count from the previous record */
		for (size_t i = 0; i < it->nfds; i++) {
			struct conn *c = item_conn_by_fd(s, it->fds[i]);

			if (c)
				conn_checkpoint_taken(c);
		}
		t->rec_off = off;
		t->last_ms = clock_mono_ms();
		free(t->ids);
		t->ids = ids;
		t->nids = it->nfds;
		ids = NULL;
		ck.live_bytes -= t->bytes;
		t->bytes = hlen + len + 16;
		ck.live_bytes += t->bytes;
		ck.session_records++;
	}
out:
	free(ids);
	free(hdr);
	free(buf);
	return r;
}

static bool ids_same(const struct tracked *t, struct session *s)
{
	size_t n = 0;

	if (s->up != NULL) {
		bool found = false;

		for (size_t i = 0; i < t->nids; i++)
			found |= t->ids[i] == conn_custody_id(s->up->conn);
		if (!found && !conn_in_handshake(s->up->conn))
			return false;
		n += found;
	}
	for (size_t j = 0; j < s->nclients; j++) {
		bool found = false;

		for (size_t i = 0; i < t->nids; i++)
			found |= t->ids[i] == conn_custody_id(s->clients[j]->conn);
		if (!found)
			return false;
		n++;
	}
	return n == t->nids;
}

static struct tracked *tracked_get(const char *key)
{
	struct tracked *t = strmap_get(ck.index, key);
	struct tracked **grown;

	if (t != NULL)
		return t;
	if (ck.n == ck.cap) {
		size_t nc = ck.cap ? ck.cap * 2 : 64;

		if ((grown = realloc(ck.v, nc * sizeof(*grown))) == NULL)
			return NULL;
		ck.v = grown;
		ck.cap = nc;
	}
	if ((t = calloc(1, sizeof(*t))) == NULL || (t->key = strdup(key)) == NULL ||
	    strmap_put(ck.index, key, t) < 0) {
		tracked_free(t);
		return NULL;
	}
	ck.v[ck.n++] = t;
	return t;
}

struct id_off {
	uint64_t id, off;
};
static bool ckpt_compact_step(int64_t start_ns, bool budget);
static void ckpt_compact_begin(void);

static void ckpt_tick(evutil_socket_t fd, short what, void *arg)
{
	struct bouncer_item **items = NULL;
	size_t n;
	/* arg: &ck.soon only sessions whose sockets changed; &ck.cont or the
	 * timer: also those with I/O whose record is interval_ms old, within
	 * the budget; NULL (checkpoint_now()): every one due, no budget */
	bool structural = arg == &ck.soon;
	bool budget = arg != NULL && !structural;
	int64_t start = clock_mono_ns(), now_ms = clock_mono_ms();
	bool cut = false;

	(void)fd;
	(void)what;
	if (!ck.on)
		return;
	n = bouncer_items(ck.b, &items);
	for (size_t i = 0; i < ck.n; i++)
		ck.v[i]->seen = false;
	for (size_t i = 0; i < n && ck.on; i++) {
		struct bouncer_item *it = items[i];
		struct tracked *t;
		bool fresh, changed;

		if (it->kind != ITEM_SESSION)
			continue;
		if (it->state != ITEM_LIVE) {
			/* frozen (a migration's chunk): only away for a moment,
			 * its record kept */
			if ((t = strmap_get(ck.index, it->session->key)) != NULL)
				t->seen = true;
			continue;
		}
		fresh = strmap_get(ck.index, it->session->key) == NULL;
		if ((t = tracked_get(it->session->key)) == NULL) {
			ckpt_fail("out of memory");
			break;
		}
		t->seen = true;
		changed = fresh || it->session->ckpt_due || !ids_same(t, it->session);
		if (!changed) {
			if (structural || !session_dirty(it->session))
				continue;
			if (arg != NULL && now_ms - t->last_ms < ck.interval_ms)
				continue; /* I/O records: at most every interval */
			if (budget && (cut || clock_mono_ns() - start > CKPT_BUDGET_NS)) {
				cut = true;
				continue; /* the next pass, after the loop's I/O */
			}
		}
		int r = ckpt_session(&ck.log, it, t);
		if (r == 0)
			it->session->ckpt_due = false;
		if (r < 0 && r != -ECONNRESET) {
			log_error("custody", "cannot checkpoint %s: %s: custody ends",
				  it->session->key, strerror(-r));
			ckpt_fail("cannot write a session's checkpoint record");
			break;
		}
		ck.last_ms = clock_mono_ms();
	}
	if (cut && ck.on)
		event_active(ck.cont, EV_TIMEOUT, 0);
	/* sessions that are gone (a frozen one was marked seen above: one
	 * lookup each, where a scan of every item for each unseen record made
	 * a pass over a 5,000-session migration's frozen chunk 25 M string
	 * compares, and the worker spun in them) */
	for (size_t i = 0; i < ck.n && ck.on;) {
		struct tracked *t = ck.v[i];

		if (t->seen) {
			i++;
			continue;
		}
		ckpt_put(CKPT_GONE, t->key, strlen(t->key), NULL, 0);
		strmap_del(ck.index, t->key);
		ck.live_bytes -= t->bytes;
		tracked_free(t);
		ck.v[i] = ck.v[--ck.n];
	}
	if (ck.on) {
		/* header figures for the supervisor's status (custody) */
		uint64_t sessions = ck.n;
		int64_t last = ck.last_ms;

		__atomic_store_n((uint64_t *)(ck.log.map + 16), sessions, __ATOMIC_RELAXED);
		__atomic_store_n((int64_t *)(ck.log.map + 24), last, __ATOMIC_RELAXED);
	}
	if (ck.on && !ck.compacting && ck.log.used > CKPT_COMPACT_MIN &&
	    ck.log.used > 2 * (uint64_t)ck.live_bytes)
		ckpt_compact_begin();
	if (ck.on && ck.compacting && !ckpt_compact_step(start, true))
		event_active(ck.cont, EV_TIMEOUT, 0);
	free(items);
}

static int id_off_cmp(const void *a, const void *b)
{
	const struct id_off *x = a, *y = b;

	return x->id < y->id ? -1 : x->id > y->id;
}

static void ckpt_compact_end(void)
{
	if (ck.compacting)
		ckpt_log_close(&ck.nl);
	free(ck.map);
	ck.map = NULL;
	ck.nmap = 0;
	ck.compacting = false;
}

/* Compaction: a fresh log made of the records that still matter, copied
 * in order (no serialization): the latest record of each session, and the
 * connection records after the record of the session holding that
 * connection (or of a connection no session record names yet). It runs a
 * budget at a time while records keep being appended to the old log; once
 * the copy caught up, the new log replaces the old one and is handed over
 * like the first. */
static void ckpt_compact_begin(void)
{
	size_t cap = 0;
	int r;

	for (size_t i = 0; i < ck.n; i++)
		cap += ck.v[i]->nids;
	if ((ck.map = malloc((cap ? cap : 1) * sizeof(*ck.map))) == NULL)
		return;
	ck.nmap = 0;
	for (size_t i = 0; i < ck.n; i++)
		for (size_t j = 0; j < ck.v[i]->nids; j++)
			if (ck.v[i]->ids[j] != 0)
				ck.map[ck.nmap++] = (struct id_off){ ck.v[i]->ids[j],
								     ck.v[i]->rec_off };
	qsort(ck.map, ck.nmap, sizeof(*ck.map), id_off_cmp);
	if ((r = ckpt_log_open(&ck.nl)) < 0) {
		log_warn("custody", "cannot compact the checkpoint log: %s", strerror(-r));
		free(ck.map);
		ck.map = NULL;
		return;
	}
	ck.scan = 0;
	ck.compacting = true;
	for (size_t i = 0; i < ck.n; i++)
		ck.v[i]->new_off = UINT64_MAX;
}

/* Copy on; true when done (or abandoned), false when the budget ran out. */
static bool ckpt_compact_step(int64_t start_ns, bool budget)
{
	Baton__Control__Custody m = BATON__CONTROL__CUSTODY__INIT;
	int r = 0, fd;

	while (ck.scan + 8 <= ck.log.used && r == 0) {
		const uint8_t *p = ck.log.map + CKPT_HEADER + ck.scan;
		uint32_t type, len;
		size_t rec;
		bool keep = false;
		struct tracked *t = NULL;

		if (budget && clock_mono_ns() - start_ns > CKPT_BUDGET_NS)
			return false;
		memcpy(&type, p, 4);
		memcpy(&len, p + 4, 4);
		rec = (8 + (size_t)len + 7) & ~(size_t)7;
		if (type == CKPT_SESSION && len >= 8) {
			uint32_t nk[2];
			char key[512];

			memcpy(nk, p + 8, 8);
			if (nk[1] < sizeof(key) && 8 + 8ull * nk[0] + nk[1] <= len) {
				memcpy(key, p + 16 + 8ull * nk[0], nk[1]);
				key[nk[1]] = '\0';
				t = strmap_get(ck.index, key);
				/* its latest record (a later one, written
				 * while this runs, is copied when reached) */
				keep = t != NULL && t->rec_off == ck.scan;
			}
		} else if (type != CKPT_GONE && len >= 8) {
			struct id_off k, *hit;

			memcpy(&k.id, p + 8, 8);
			hit = bsearch(&k, ck.map, ck.nmap, sizeof(*ck.map), id_off_cmp);
			keep = hit == NULL || ck.scan > hit->off;
		}
		if (keep) {
			uint64_t at = ck.nl.used;

			r = ckpt_log_put(&ck.nl, type, p + 8, len, NULL, 0);
			if (r == 0 && t != NULL) {
				t->new_off = at;
				t->new_bytes = rec;
			}
		}
		ck.scan += rec;
	}
	if (r < 0 || (fd = fcntl(ck.nl.fd, F_DUPFD_CLOEXEC, 0)) < 0) {
		log_warn("custody", "cannot compact the checkpoint log: %s",
			 strerror(r < 0 ? -r : errno));
		ckpt_compact_end();
		return true;
	}
	/* caught up: the new log replaces the old one */
	ck.live_bytes = 0;
	for (size_t i = 0; i < ck.n; i++) {
		struct tracked *t = ck.v[i];

		if (t->new_off == UINT64_MAX) {
			/* recorded in no copied record (cannot be: each tracked
			 * session has its latest record in the log) */
			t->last_ms = 0;
			t->bytes = 0;
			continue;
		}
		t->rec_off = t->new_off;
		t->bytes = t->new_bytes;
		ck.live_bytes += t->bytes;
	}
	__atomic_store_n((uint64_t *)(ck.nl.map + 16), (uint64_t)ck.n, __ATOMIC_RELAXED);
	__atomic_store_n((int64_t *)(ck.nl.map + 24), ck.last_ms, __ATOMIC_RELAXED);
	ckpt_log_close(&ck.log);
	ck.log = ck.nl;
	ck.compacting = false;
	memset(&ck.nl, 0, sizeof(ck.nl));
	ck.nl.fd = -1;
	ckpt_compact_end();
	ck.compactions++;
	m.has_checkpoint = 1;
	m.checkpoint = 1;
	ckpt_push(&m, &fd, 1);
	return true;
}

int checkpoint_start(struct event_base *base, struct bouncer *b,
		     struct control_queue *q, int interval_ms)
{
	Baton__Control__Custody m = BATON__CONTROL__CUSTODY__INIT;
	/* passes twice per interval: a session's record follows its I/O
	 * within 1.5 intervals (and the pass budget) */
	int period = interval_ms / 2 > 5 ? interval_ms / 2 : 5;
	struct timeval tv = { .tv_sec = period / 1000,
			      .tv_usec = (period % 1000) * 1000 };
	int r, fd;
	uint64_t keep = ck.next_id;

	memset(&ck, 0, sizeof(ck));
	ck.next_id = ck.base_id = keep;
	ck.log.fd = -1;
	ck.base = base;
	ck.b = b;
	ck.q = q;
	ck.interval_ms = interval_ms;
	if ((ck.index = strmap_new()) == NULL)
		return -ENOMEM;
	if ((r = ckpt_log_open(&ck.log)) < 0)
		goto fail;
	ck.timer = event_new(base, -1, EV_PERSIST, ckpt_tick, &ck.timer);
	ck.soon = event_new(base, -1, 0, ckpt_tick, &ck.soon);
	ck.cont = event_new(base, -1, 0, ckpt_tick, &ck.cont);
	if (ck.timer == NULL || ck.soon == NULL || ck.cont == NULL ||
	    event_add(ck.timer, &tv) < 0) {
		r = -ENOMEM;
		goto fail;
	}
	if ((fd = fcntl(ck.log.fd, F_DUPFD_CLOEXEC, 0)) < 0) {
		r = -errno;
		goto fail;
	}
	ck.on = true;
	ck.last_ms = clock_mono_ms();
	m.has_checkpoint = 1;
	m.checkpoint = 1;
	ckpt_push(&m, &fd, 1);
	if (!ck.on)
		return -EPIPE;
	log_info("custody", "on: sockets and a checkpoint every %d ms go to the supervisor",
		 interval_ms);
	return 0;
fail:
	checkpoint_stop();
	return r;
}

bool checkpoint_id_current(uint64_t id)
{
	return ck.on && id > ck.base_id;
}

int checkpoint_restart(struct event_base *base, struct bouncer *b,
		       struct control_queue *q, int interval_ms)
{
	struct bouncer_item **items = NULL;
	size_t n;
	int r = checkpoint_start(base, b, q, interval_ms);

	if (r < 0)
		return r;
	/* the supervisor holds nothing: a fresh copy of every session's
	 * sockets (a pending client's comes at its login) */
	n = bouncer_items(b, &items);
	for (size_t i = 0; i < n && ck.on; i++) {
		struct session *s = items[i]->kind == ITEM_SESSION ? items[i]->session : NULL;

		if (s == NULL)
			continue;
		if (s->up != NULL)
			conn_custody_start(s->up->conn);
		for (size_t j = 0; j < s->nclients; j++)
			conn_custody_start(s->clients[j]->conn);
	}
	free(items);
	checkpoint_soon();
	return ck.on ? 0 : -EPIPE;
}

void checkpoint_stop(void)
{
	ck.on = false;
	ckpt_compact_end();
	if (ck.timer != NULL) {
		event_free(ck.timer);
		ck.timer = NULL;
	}
	if (ck.soon != NULL) {
		event_free(ck.soon);
		ck.soon = NULL;
	}
	if (ck.cont != NULL) {
		event_free(ck.cont);
		ck.cont = NULL;
	}
	ckpt_log_close(&ck.log);
	for (size_t i = 0; i < ck.n; i++)
		tracked_free(ck.v[i]);
	free(ck.v);
	ck.v = NULL;
	ck.n = ck.cap = 0;
	strmap_free(ck.index);
	ck.index = NULL;
}

void checkpoint_session_changed(struct session *s)
{
	if (!ck.on || s == NULL)
		return;
	s->ckpt_due = true;
	checkpoint_soon();
}

void checkpoint_soon(void)
{
	if (ck.on && ck.soon != NULL)
		event_active(ck.soon, EV_TIMEOUT, 0);
}

void checkpoint_now(void)
{
	if (ck.on)
		ckpt_tick(-1, 0, NULL);
}

bool checkpoint_on(void)
{
	return ck.on;
}

void checkpoint_stats(struct checkpoint_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (!ck.on)
		return;
	out->fds = ck.held;
	out->sessions = ck.n;
	out->bytes = CKPT_HEADER + ck.log.used;
	out->age_ms = clock_mono_ms() - ck.last_ms;
	out->records = ck.records;
	out->session_records = ck.session_records;
	out->compactions = ck.compactions;
}
