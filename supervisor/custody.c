/* supervisor/custody.c: see custody.h. */
#include "supervisor/custody.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/clock.h"
#include "common/frame.h"
#include "common/json_builder.h"
#include "common/log.h"
#include "common/strmap.h"
#include "control.pb-c.h"
#include "handoff/protocol.h"
#include "sessiond/checkpoint.h"

/* ---- a small u64 -> slot map (open addressing) ---- */

struct idmap {
	uint64_t *keys; /* 0: empty (ids start at 1) */
	void **vals;
	size_t cap, n;
};

static size_t idmap_slot(const struct idmap *m, uint64_t k)
{
	size_t i = (size_t)(k * 0x9E3779B97F4A7C15ull) & (m->cap - 1);

	while (m->keys[i] != 0 && m->keys[i] != k)
		i = (i + 1) & (m->cap - 1);
	return i;
}

static int idmap_put(struct idmap *m, uint64_t k, void *v)
{
	if (k == 0)
		return -EINVAL;
	if ((m->n + 1) * 2 > m->cap) {
		struct idmap g = { .cap = m->cap ? m->cap * 2 : 64 };

		g.keys = calloc(g.cap, sizeof(*g.keys));
		g.vals = calloc(g.cap, sizeof(*g.vals));
		if (g.keys == NULL || g.vals == NULL) {
			free(g.keys);
			free(g.vals);
			return -ENOMEM;
		}
		for (size_t i = 0; i < m->cap; i++)
			if (m->keys[i] != 0) {
				size_t j = idmap_slot(&g, m->keys[i]);

				g.keys[j] = m->keys[i];
				g.vals[j] = m->vals[i];
				g.n++;
			}
		free(m->keys);
		free(m->vals);
		*m = g;
	}
	size_t i = idmap_slot(m, k);

	if (m->keys[i] == 0)
		m->n++;
	m->keys[i] = k;
	m->vals[i] = v;
	return 0;
}

static void *idmap_get(const struct idmap *m, uint64_t k)
{
	if (m->cap == 0 || k == 0)
		return NULL;
	size_t i = idmap_slot(m, k);

	return m->keys[i] == k ? m->vals[i] : NULL;
}

/* Removal by backward shift, so lookups stay correct. */
static void *idmap_del(struct idmap *m, uint64_t k)
{
	if (m->cap == 0 || k == 0)
		return NULL;
	size_t i = idmap_slot(m, k);
	void *v;

	if (m->keys[i] != k)
		return NULL;
	v = m->vals[i];
	m->keys[i] = 0;
	m->n--;
	for (size_t j = (i + 1) & (m->cap - 1); m->keys[j] != 0;
	     j = (j + 1) & (m->cap - 1)) {
		uint64_t kk = m->keys[j];
		void *vv = m->vals[j];

		m->keys[j] = 0;
		m->n--;
		idmap_put(m, kk, vv); /* never grows: n went down */
	}
	return v;
}

static void idmap_clear(struct idmap *m)
{
	free(m->keys);
	free(m->vals);
	memset(m, 0, sizeof(*m));
}

/* ---- holding ---- */

struct custody {
	struct idmap fds; /* id -> (void *)(intptr_t)(fd + 1) */
	int log_fd;       /* the checkpoint memfd, -1: none */
	uint64_t compactions; /* logs that replaced the first one */
	uint64_t fds_lost;    /* copies not kept at our fd limit */
	char ended[128];      /* the worker ended custody: why ("": it did not) */
};

struct custody *custody_new(void)
{
	struct custody *c = calloc(1, sizeof(*c));

	if (c != NULL)
		c->log_fd = -1;
	return c;
}

static int held_fd(const struct custody *c, uint64_t id)
{
	void *v = idmap_get(&c->fds, id);

	return v ? (int)(intptr_t)v - 1 : -1;
}

static void custody_release_all(struct custody *c)
{
	for (size_t i = 0; i < c->fds.cap; i++)
		if (c->fds.keys[i] != 0)
			close((int)(intptr_t)c->fds.vals[i] - 1);
	idmap_clear(&c->fds);
	if (c->log_fd >= 0)
		close(c->log_fd);
	c->log_fd = -1;
}

void custody_free(struct custody *c)
{
	if (c == NULL)
		return;
	custody_release_all(c);
	free(c);
}

size_t custody_fd_count(const struct custody *c)
{
	return c ? c->fds.n : 0;
}

bool custody_has_checkpoint(const struct custody *c)
{
	return c != NULL && c->log_fd >= 0;
}

/* fds the supervisor keeps free for its own work (accepting batonctl,
 * starting a worker, a migration's socketpair): custody never holds a
 * copy in them. fds are allocated lowest first, so an fd numbered past
 * the limit minus the reserve means that many are open. */
#define CUSTODY_FD_RESERVE 64

/* fd (-1: lost at our fd limit by the kernel) kept, or closed and -1
 * when it eats into the reserve; each loss counted. */
static int custody_keep(struct custody *c, int fd)
{
	struct rlimit rl;

	if (fd >= 0 && getrlimit(RLIMIT_NOFILE, &rl) == 0 &&
	    rl.rlim_cur != RLIM_INFINITY &&
	    (rlim_t)fd + CUSTODY_FD_RESERVE >= rl.rlim_cur) {
		close(fd);
		fd = -1;
	}
	if (fd < 0) {
		if (c->fds_lost++ == 0)
			log_error("custody", "a socket copy was not kept: the supervisor is near its fd limit (its connection reconnects if the worker crashes; see custody.fds_lost)");
	}
	return fd;
}

int custody_handle(struct custody *c, struct frame_msg *m)
{
	Baton__Control__Custody *cm =
		baton__control__custody__unpack(NULL, m->len, m->data);
	size_t k = 0;
	int rc = 0;

	if (cm == NULL)
		return -EPROTO;
	if (m->nfds + m->fds_lost != cm->n_add + (cm->has_checkpoint && cm->checkpoint)) {
		rc = -EPROTO;
		goto out;
	}
	if (cm->has_end && cm->end) {
		/* custody ended in the worker after an error: its log is
		 * stale and the copies would outlive sockets it closes */
		if (m->nfds + m->fds_lost != 0) {
			rc = -EPROTO;
			goto out;
		}
		custody_release_all(c);
		snprintf(c->ended, sizeof(c->ended), "%s",
			 cm->reason && cm->reason[0] ? cm->reason : "ended by the worker");
		log_error("custody", "the worker ended custody (%s): every copy released, a crash now disconnects its users",
			  c->ended);
		goto out;
	}
	if (cm->has_checkpoint && cm->checkpoint) {
		c->ended[0] = '\0';
		if (c->log_fd >= 0) {
			close(c->log_fd);
			c->compactions++;
		}
		/* -1 when lost at our fd limit: no log, no restore (the
		 * old one is stale) */
		c->log_fd = frame_msg_take_fd(m, k++);
		if (c->log_fd < 0)
			log_error("custody", "the checkpoint log was lost at the supervisor's fd limit: a crash of this worker restores nothing");
	}
	for (size_t i = 0; i < cm->n_add; i++) {
		int fd = custody_keep(c, frame_msg_take_fd(m, k++));
		int old = held_fd(c, cm->add[i]);

		if (old >= 0) {
			close(old);
			idmap_del(&c->fds, cm->add[i]);
		}
		/* a copy lost (at our fd limit): its connection reconnects
		 * if the worker crashes (restore_item() finds no fd) */
		if (fd < 0)
			continue;
		if (idmap_put(&c->fds, cm->add[i], (void *)(intptr_t)(fd + 1)) < 0) {
			log_error("custody", "out of memory: a socket not held (lost if the worker crashes)");
			close(fd);
		}
	}
	for (size_t i = 0; i < cm->n_release; i++) {
		void *v = idmap_del(&c->fds, cm->release[i]);

		if (v != NULL)
			close((int)(intptr_t)v - 1);
	}
out:
	baton__control__custody__free_unpacked(cm, NULL);
	return rc;
}

/* The log's header: committed bytes, sessions, last record time. */
static int log_header(int fd, uint64_t *committed, uint64_t *sessions,
		      int64_t *last_ms)
{
	uint8_t h[32];
	uint32_t magic;

	if (fd < 0 || pread(fd, h, sizeof(h), 0) != (ssize_t)sizeof(h))
		return -EIO;
	memcpy(&magic, h, 4);
	if (magic != CKPT_MAGIC)
		return -EPROTO;
	memcpy(committed, h + 8, 8);
	memcpy(sessions, h + 16, 8);
	memcpy(last_ms, h + 24, 8);
	return 0;
}

struct json_object *custody_json(const struct custody *c, struct jb *jb)
{
	struct json_object *o = jb_obj(jb);
	uint64_t committed = 0, sessions = 0;
	int64_t last = 0;
	bool h = c != NULL && log_header(c->log_fd, &committed, &sessions, &last) == 0;

	/* active: a log is held (a crash would be restored); otherwise
	 * ended says why when the worker told us */
	jb_add(jb, o, "active", jb_bool(jb, c != NULL && c->log_fd >= 0));
	jb_add(jb, o, "ended", c != NULL && c->ended[0] ? jb_str(jb, c->ended) : NULL);
	jb_add(jb, o, "fds", jb_i64(jb, (int64_t)custody_fd_count(c)));
	jb_add(jb, o, "sessions", jb_i64(jb, (int64_t)sessions));
	jb_add(jb, o, "checkpoint_bytes", jb_i64(jb, h ? (int64_t)(CKPT_HEADER + committed) : 0));
	jb_add(jb, o, "checkpoint_age_ms",
	       h && last > 0 ? jb_i64(jb, clock_mono_ms() - last) : NULL);
	jb_add(jb, o, "compactions", jb_i64(jb, c ? (int64_t)c->compactions : 0));
	jb_add(jb, o, "fds_lost", jb_i64(jb, c ? (int64_t)c->fds_lost : 0));
	return o;
}

/* ---- restoring ---- */

struct rconn {
	uint8_t *rec; /* concatenated ConnRecovery records since its session's */
	size_t len;
	uint32_t lines;
	uint64_t read_at, input_at; /* log offsets of its last READ / INPUT */
	bool drop;                  /* a DROP is the last word since its
				       session's record (a CKPT_TLS clears it) */
	uint8_t *tls;               /* its latest CKPT_TLS ConnRecovery */
	size_t tlslen, tlscap;
};

struct rsess {
	char *key;
	uint64_t *ids;
	size_t nids;
	const uint8_t *payload;
	size_t len;
};

struct custody_restore {
	struct event_base *base;
	struct custody *held;
	struct handoff_source *src;
	uint8_t *log;
	size_t loglen;
	struct rsess **s;
	size_t ns;
	struct idmap conns; /* id -> struct rconn * */
	size_t next;        /* next session to send */
	/* per chunk: the item buffers and fds to release once it is done */
	uint8_t **bufs;
	int *fds;
	size_t nbufs, nfds;
	struct custody_result res;
	custody_restore_cb cb;
	void *arg;
	bool done;
	struct event *ev_done;
	struct strmap *strikes;
	unsigned max_strikes;
	const struct strmap *exclude;
};

#define RESTORE_CHUNK 64

static void chunk_clear(struct custody_restore *r)
{
	for (size_t i = 0; i < r->nbufs; i++)
		free(r->bufs[i]);
	for (size_t i = 0; i < r->nfds; i++)
		close(r->fds[i]);
	free(r->bufs);
	free(r->fds);
	r->bufs = NULL;
	r->fds = NULL;
	r->nbufs = r->nfds = 0;
}

void custody_restore_free(struct custody_restore *r)
{
	if (r == NULL)
		return;
	handoff_source_free(r->src);
	chunk_clear(r);
	for (size_t i = 0; i < r->ns; i++) {
		free(r->s[i]->key);
		free(r->s[i]->ids);
		free(r->s[i]);
	}
	free(r->s);
	for (size_t i = 0; i < r->conns.cap; i++)
		if (r->conns.keys[i] != 0) {
			struct rconn *c = r->conns.vals[i];

			free(c->rec);
			if (c->tls != NULL)
				explicit_bzero(c->tls, c->tlscap); /* keys */
			free(c->tls);
			free(c);
		}
	idmap_clear(&r->conns);
	free(r->log);
	custody_free(r->held);
	if (r->ev_done)
		event_free(r->ev_done);
	free(r);
}

static struct rconn *rconn_get(struct custody_restore *r, uint64_t id)
{
	struct rconn *c = idmap_get(&r->conns, id);

	if (c == NULL && (c = calloc(1, sizeof(*c))) != NULL &&
	    idmap_put(&r->conns, id, c) < 0) {
		free(c);
		c = NULL;
	}
	return c;
}

static int rconn_append(struct rconn *c, const uint8_t *p, size_t n)
{
	uint8_t *g = realloc(c->rec, c->len + n);

	if (g == NULL)
		return -ENOMEM;
	memcpy(g + c->len, p, n);
	c->rec = g;
	c->len += n;
	return 0;
}

static struct rsess *sess_find(struct custody_restore *r, const char *key,
			       size_t *at)
{
	for (size_t i = 0; i < r->ns; i++)
		if (strcmp(r->s[i]->key, key) == 0) {
			*at = i;
			return r->s[i];
		}
	return NULL;
}

/* Read the whole log; the latest record of each session wins. */
static int restore_parse(struct custody_restore *r)
{
	uint64_t committed = 0, sessions = 0;
	int64_t last = 0;
	int fd = r->held->log_fd;
	int rc = log_header(fd, &committed, &sessions, &last);
	size_t off = 0;
	struct stat st;

	if (rc < 0)
		return rc;
	/* committed is the dead worker's word too: never past the file */
	if (fstat(fd, &st) < 0 || st.st_size < CKPT_HEADER ||
	    committed > (uint64_t)st.st_size - CKPT_HEADER)
		return -EPROTO;
	r->loglen = committed;
	if ((r->log = malloc(committed ? committed : 1)) == NULL)
		return -ENOMEM;
	for (size_t got = 0; got < committed;) {
		ssize_t n = pread(fd, r->log + got, committed - got,
				  (off_t)(CKPT_HEADER + got));
		if (n <= 0)
			return -EIO;
		got += (size_t)n;
	}
	while (off + 8 <= committed) {
		uint32_t type, len;
		const uint8_t *p = r->log + off + 8;

		memcpy(&type, r->log + off, 4);
		memcpy(&len, r->log + off + 4, 4);
		if (off + 8 + len > committed)
			return -EPROTO;
		switch (type) {
		case CKPT_SESSION: {
			uint32_t nk[2];
			struct rsess *s;
			size_t at;
			char key[256];

			if (len < 8)
				return -EPROTO;
			memcpy(nk, p, 8);
			if ((uint64_t)8 + 8ull * nk[0] + nk[1] > len || nk[1] >= sizeof(key)) {
				/* no key to name: this record is skipped (the
				 * framing is intact, the other sessions are not
				 * at stake) */
				r->res.sessions_rejected++;
				log_error("custody", "a checkpoint record with an impossible layout skipped (ids %u, key %u bytes, record %u bytes)",
					  nk[0], nk[1], len);
				break;
			}
			memcpy(key, p + 8 + 8 * nk[0], nk[1]);
			key[nk[1]] = '\0';
			/* the log is a dead worker's word: a session naming
			 * more sockets than a migration item carries (the
			 * restore chunk's fd array holds FRAME_MAX_FDS per
			 * item) is not restored, and its earlier record goes
			 * with it (the latest record is the one to trust) */
			if (nk[0] > FRAME_MAX_FDS) {
				if (sess_find(r, key, &at) != NULL) {
					free(r->s[at]->key);
					free(r->s[at]->ids);
					free(r->s[at]);
					r->s[at] = r->s[--r->ns];
				}
				r->res.sessions_rejected++;
				log_error("custody", "session %s not restored: its checkpoint record names %u sockets (at most %d)",
					  key, nk[0], FRAME_MAX_FDS);
				break;
			}
			if ((s = sess_find(r, key, &at)) == NULL) {
				struct rsess **g = realloc(r->s, (r->ns + 1) * sizeof(*g));

				if (g == NULL || (s = calloc(1, sizeof(*s))) == NULL ||
				    (s->key = strdup(key)) == NULL) {
					if (g != NULL)
						r->s = g;
					free(s);
					return -ENOMEM;
				}
				r->s = g;
				r->s[r->ns++] = s;
			}
			free(s->ids);
			if ((s->ids = malloc(8 * (nk[0] ? nk[0] : 1))) == NULL)
				return -ENOMEM;
			memcpy(s->ids, p + 8, 8 * nk[0]);
			s->nids = nk[0];
			s->payload = p + 8 + 8 * nk[0] + nk[1];
			s->len = len - (8 + 8 * nk[0] + nk[1]);
			for (size_t i = 0; i < s->nids; i++) {
				struct rconn *c = rconn_get(r, s->ids[i]);

				if (c == NULL)
					return -ENOMEM;
				c->len = 0;
				c->lines = 0;
				c->drop = false;
				c->tlslen = 0;
			}
			break;
		}
		case CKPT_GONE: {
			char key[256];
			size_t at;

			if (len >= sizeof(key))
				break; /* no session has such a key: nothing to end */
			memcpy(key, p, len);
			key[len] = '\0';
			if (sess_find(r, key, &at) != NULL) {
				struct rsess *s = r->s[at];

				free(s->key);
				free(s->ids);
				free(s);
				r->s[at] = r->s[--r->ns];
			}
			break;
		}
		case CKPT_READ:
		case CKPT_INPUT:
		case CKPT_WRITE:
		case CKPT_DROP:
		case CKPT_TLS: {
			uint64_t id;
			struct rconn *c;

			if (len < 8 || (type == CKPT_READ && len < 12))
				return -EPROTO;
			memcpy(&id, p, 8);
			if ((c = rconn_get(r, id)) == NULL)
				return -ENOMEM;
			if (type == CKPT_READ) {
				uint32_t lines;

				memcpy(&lines, p + 8, 4);
				c->lines += lines;
				c->read_at = off + 1;
			} else if (type == CKPT_DROP) {
				/* restore_item() says drop: not merged, so a
				 * later CKPT_TLS can take it back */
				c->drop = true;
			} else if (type == CKPT_TLS) {
				/* the whole position: only the latest counts,
				 * sent after the other records (never merged
				 * with an earlier one: field by field, a
				 * partial record could outlive its layer) */
				if (len - 8 > CKPT_TLS_MAX) {
					/* no worker writes one: the connection
					 * cannot be resumed from it */
					c->tlslen = 0;
					c->drop = true;
					break;
				}
				if (len - 8 > c->tlscap) {
					uint8_t *g = realloc(c->tls, len - 8);

					if (g == NULL)
						return -ENOMEM;
					c->tls = g;
					c->tlscap = len - 8;
				}
				memcpy(c->tls, p + 8, len - 8);
				c->tlslen = len - 8;
				c->drop = false;
			} else {
				if (type == CKPT_INPUT)
					c->input_at = off + 1;
				if (rconn_append(c, p + 8, len - 8) < 0)
					return -ENOMEM;
			}
			break;
		}
		default:
			break; /* a newer record: skipped */
		}
		off += (8 + (size_t)len + 7) & ~(size_t)7;
	}
	return 0;
}

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

/* A socket that reads as closed at once: stands in for one the
 * supervisor does not hold (closed after the session record). */
static int closed_socket(void)
{
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -1;
	close(sv[1]);
	return sv[0];
}

/* Build one item: payload + Item.recovery (field 5). */
static int restore_item(struct custody_restore *r, struct rsess *s,
			bool quarantine, struct handoff_item *it, int *fds)
{
	size_t cap = s->len + 32 + 64;
	uint8_t *rec, *buf;
	size_t rl = 0, n = 0;

	for (size_t i = 0; i < s->nids; i++) {
		struct rconn *c = idmap_get(&r->conns, s->ids[i]);

		cap += 32 + (c ? c->len + c->tlslen : 0);
	}
	if ((rec = malloc(cap)) == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < s->nids; i++) {
		struct rconn *c = idmap_get(&r->conns, s->ids[i]);
		int fd = held_fd(r->held, s->ids[i]);
		uint8_t extra[16];
		size_t el = 0;
		bool drop = false;

		if (fd >= 0) {
			idmap_del(&r->held->fds, s->ids[i]); /* ours now */
		} else {
			fd = closed_socket();
			drop = true;
		}
		if (fd < 0) {
			for (size_t j = 0; j < i; j++)
				close(fds[j]);
			free(rec);
			return -EMFILE;
		}
		fds[i] = fd;
		if (c != NULL && c->lines) {
			extra[el++] = (5 << 3) | 0;
			el += pb_varint(extra + el, c->lines);
			r->res.lines_lost += c->lines;
		}
		/* resumed from its CKPT_TLS: drop too, for a release that
		 * cannot read tls (it would go on with the session record's
		 * sequence numbers: nonces used already) */
		bool resume = !drop && c != NULL && !c->drop && c->tlslen > 0;

		if (drop || (c != NULL && c->drop) || resume) {
			extra[el++] = (4 << 3) | 0;
			extra[el++] = 1;
		}
		if (resume) {
			extra[el++] = (7 << 3) | 0; /* ConnRecovery.tls_resume */
			extra[el++] = 1;
		}
		if (drop || (c != NULL && c->drop))
			r->res.connections_reconnected++;
		else
			r->res.connections_kept++;
		size_t clen = (c ? c->len + c->tlslen : 0) + el;

		rec[rl++] = (1 << 3) | 2;
		rl += pb_varint(rec + rl, clen);
		if (c && c->len) {
			memcpy(rec + rl, c->rec, c->len);
			rl += c->len;
		}
		if (c && c->tlslen) {
			/* last: its written, head and input win */
			memcpy(rec + rl, c->tls, c->tlslen);
			rl += c->tlslen;
		}
		memcpy(rec + rl, extra, el);
		rl += el;
	}
	if (quarantine) {
		rec[rl++] = (2 << 3) | 0; /* Recovery.quarantine */
		rec[rl++] = 1;
	}
	if ((buf = malloc(s->len + 16 + rl)) == NULL) {
		for (size_t j = 0; j < s->nids; j++)
			close(fds[j]);
		free(rec);
		return -ENOMEM;
	}
	memcpy(buf, s->payload, s->len);
	n = s->len;
	buf[n++] = (5 << 3) | 2;
	n += pb_varint(buf + n, rl);
	memcpy(buf + n, rec, rl);
	n += rl;
	free(rec);
	it->payload = buf;
	it->len = n;
	it->fds = fds;
	it->nfds = s->nids;
	return 0;
}

static void restore_finish(struct custody_restore *r, const char *reason)
{
	if (r->done)
		return;
	r->done = true;
	if (reason != NULL && r->res.reason[0] == '\0')
		snprintf(r->res.reason, sizeof(r->res.reason), "%s", reason);
	r->res.sessions_lost = (unsigned)(r->ns - r->res.sessions_skipped -
					  r->res.sessions_restored) +
			       r->res.sessions_rejected;
	/* held sockets no session record names (a client not logged in yet,
	 * one opened after its session's last record): closed with the
	 * custody, their peers reconnect */
	r->res.connections_reconnected += (unsigned)custody_fd_count(r->held);
	r->cb(r->arg, &r->res);
}

static int restore_send_chunk(struct custody_restore *r);

static void restore_chunk_done(struct handoff_source *src, uint32_t chunk,
			       int result, const char *reason, void *arg)
{
	struct custody_restore *r = arg;

	(void)src;
	(void)chunk;
	if (result == 0)
		r->res.sessions_restored += (unsigned)r->nbufs;
	chunk_clear(r); /* committed: the target holds the sockets */
	if (result < 0) {
		restore_finish(r, reason);
		return;
	}
	if (r->next >= r->ns) {
		handoff_source_finish(r->src);
		r->res.committed = true;
		restore_finish(r, NULL);
		return;
	}
	int rc = restore_send_chunk(r);

	if (rc == 1) {
		handoff_source_finish(r->src);
		r->res.committed = true;
		restore_finish(r, NULL);
	} else if (rc < 0) {
		restore_finish(r, "cannot send a chunk of the restore");
	}
}

static int restore_send_chunk(struct custody_restore *r)
{
	struct handoff_item items[RESTORE_CHUNK];
	size_t n = 0, nf = 0;
	int rc;

	r->bufs = calloc(RESTORE_CHUNK, sizeof(*r->bufs));
	r->fds = calloc(RESTORE_CHUNK * (size_t)FRAME_MAX_FDS, sizeof(int));
	if (r->bufs == NULL || r->fds == NULL)
		return -ENOMEM;
	while (r->next < r->ns && n < RESTORE_CHUNK) {
		struct rsess *s = r->s[r->next++];

		if (r->exclude != NULL && strmap_get(r->exclude, s->key) != NULL) {
			/* the target holds it (and its own copies of the
			 * sockets): ours just close */
			for (size_t i = 0; i < s->nids; i++) {
				void *v = idmap_del(&r->held->fds, s->ids[i]);

				if (v != NULL)
					close((int)(intptr_t)v - 1);
			}
			r->res.sessions_skipped++;
			continue;
		}
		/* quarantined now or by an earlier crash: stays so */
		bool q = r->strikes != NULL &&
			 (uintptr_t)strmap_get(r->strikes, s->key) >= r->max_strikes;

		rc = restore_item(r, s, q, &items[n], r->fds + nf);
		if (rc < 0) {
			log_error("custody", "session %s not restored: %s", s->key,
				  strerror(-rc));
			continue;
		}
		r->bufs[n] = (uint8_t *)items[n].payload;
		nf += items[n].nfds;
		n++;
		r->nbufs = n;
		r->nfds = nf;
	}
	if (n == 0 && r->next >= r->ns) {
		/* nothing left to send (all excluded): done */
		free(r->bufs);
		free(r->fds);
		r->bufs = NULL;
		r->fds = NULL;
		return 1;
	}
	if (n == 0)
		return -ENOENT;
	rc = handoff_source_send_chunk(r->src, items, n);
	if (rc < 0)
		return rc;
	return 0;
}

static void restore_empty(evutil_socket_t fd, short what, void *arg)
{
	struct custody_restore *r = arg;

	(void)fd;
	(void)what;
	handoff_source_finish(r->src);
	r->res.committed = true;
	restore_finish(r, NULL);
}

struct custody_restore *custody_restore_start(
	struct event_base *base, struct custody *held, int channel,
	pid_t target_pid, int timeout_ms, struct strmap *strikes,
	unsigned max_strikes, const struct strmap *exclude,
	custody_restore_cb cb, void *arg, int *err)
{
	struct custody_restore *r = calloc(1, sizeof(*r));
	int rc;

	if (r == NULL) {
		custody_free(held);
		close(channel);
		*err = -ENOMEM;
		return NULL;
	}
	r->base = base;
	r->held = held;
	r->cb = cb;
	r->arg = arg;
	r->strikes = strikes;
	r->max_strikes = max_strikes;
	r->exclude = exclude;
	r->src = handoff_source_new(base, channel, target_pid, timeout_ms,
				    restore_chunk_done, r);
	if (r->src == NULL) {
		close(channel);
		rc = -ENOMEM;
		goto fail;
	}
	if ((rc = restore_parse(r)) < 0)
		goto fail;
	/* the poison-pill marker: input read and not handled to the end
	 * (not for a migration's source: `exclude` set) */
	for (size_t i = 0; i < r->conns.cap && r->res.implicated[0] == '\0'; i++) {
		struct rconn *c = r->conns.vals[i];

		if (r->conns.keys[i] == 0 || c->read_at <= c->input_at)
			continue;
		for (size_t k = 0; k < r->ns; k++)
			for (size_t j = 0; j < r->s[k]->nids; j++)
				if (r->s[k]->ids[j] == r->conns.keys[i])
					snprintf(r->res.implicated, sizeof(r->res.implicated),
						 "%s", r->s[k]->key);
	}
	if (r->res.implicated[0] != '\0' && strikes != NULL) {
		uintptr_t n = (uintptr_t)strmap_get(strikes, r->res.implicated) + 1;

		strmap_put(strikes, r->res.implicated, (void *)n);
		log_warn("custody", "the worker died handling the input of %s (crash %u of %u before quarantine)",
			 r->res.implicated, (unsigned)n, max_strikes);
		if (n >= max_strikes)
			snprintf(r->res.quarantined, sizeof(r->res.quarantined),
				 "%s", r->res.implicated);
	}
	if (exclude != NULL)
		r->res.implicated[0] = r->res.quarantined[0] = '\0';
	bool empty = r->ns == 0;

	if (!empty && (rc = restore_send_chunk(r)) < 0)
		goto fail;
	if (empty || rc == 1) {
		r->ev_done = event_new(base, -1, 0, restore_empty, r);
		if (r->ev_done == NULL) {
			rc = -ENOMEM;
			goto fail;
		}
		event_active(r->ev_done, 0, 0);
	}
	return r;
fail:
	*err = rc;
	custody_restore_free(r);
	return NULL;
}

struct strmap *custody_session_keys(const struct custody *c)
{
	struct custody_restore *r;
	struct strmap *keys;

	if (c == NULL || c->log_fd < 0 || (r = calloc(1, sizeof(*r))) == NULL)
		return NULL;
	r->held = (struct custody *)c; /* read only; not freed below */
	keys = strmap_new();
	if (keys != NULL && restore_parse(r) == 0) {
		for (size_t i = 0; i < r->ns; i++)
			if (strmap_put(keys, r->s[i]->key, (void *)1) < 0) {
				strmap_free(keys);
				keys = NULL;
				break;
			}
	} else {
		strmap_free(keys);
		keys = NULL;
	}
	r->held = NULL;
	custody_restore_free(r);
	return keys;
}
