/* store/store.c: the queue, the writer thread, seq blocks, retention and the
 * chathistory queries over a backend (store/backend.h). Contract in
 * store/store.h. */
#include "store/store.h"
#include "store/backend.h"
#include "common/clock.h"
#include "common/strmap.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

enum op_kind { OP_APPEND, OP_POSITION, OP_MARKER };

/* One queued operation; its strings live in data[]. */
struct op {
	struct op *next;
	enum op_kind kind;
	uint64_t seq;
	int64_t time_ms; /* OP_APPEND, OP_MARKER */
	uint64_t pos;    /* OP_POSITION */
	size_t size;     /* counted against queue_bytes */
	struct store_msg m; /* network, target (or client), sender, command, line */
	char data[];
};

struct retention {
	struct retention *next;
	char *network;
	int64_t max_age_ms, max_bytes; /* < 0: default */
};

/* An asynchronous query and, once run, its answer. */
struct job {
	struct job *next;
	uint64_t id;
	struct store_query q; /* strings point into strs */
	char *strs;
	store_query_cb cb;
	void *arg;
	bool canceled;
	int rc;
	struct store_result res;
	char err[256];
};

struct store {
	const struct store_db_ops *ops;
	struct store_options o;
	struct store_callbacks cb;
	void *cb_arg;
	uint32_t db_id;
	int efd;

	struct store_db *wdb;    /* writer thread's */
	struct store_db *rdb;    /* reads, under rlock */
	pthread_mutex_t rlock;
	struct strmap *ids;      /* writer: "n\0network" / "t<id>\0target" -> id */

	pthread_t thread;
	bool thread_started;
	pthread_mutex_t lock;    /* everything below */
	pthread_cond_t wake;     /* the writer waits on it */
	pthread_cond_t done;     /* store_sync() waits on it */
	struct op *head, *tail;
	size_t nops, nbytes;
	size_t inflight;         /* ops the writer is committing */
	uint64_t next_seq, block_end;   /* seqs handed out: [next_seq, block_end) */
	uint64_t spare_first, spare_end; /* the next block, reserved ahead */
	uint64_t floor;
	uint64_t last_seq;        /* the last seq handed out */
	bool reserving;
	bool closing;
	bool want_space;          /* a refusal since the last space callback */
	int64_t head_ns;          /* when the queue last became non-empty */
	int sync_wanted;          /* store_sync() callers waiting: no window */
	bool retention_req;       /* store_retention_now() */
	bool retention_running;
	char err[256];
	bool err_new, err_cleared;
	struct retention *retention;
	int64_t ret_last_id;     /* writer: retention's place in the networks */
	_Atomic uint64_t durable;
	uint64_t durable_told;
	struct store_stats stats;
	/* The query thread (under lock): waiting, running, answered. */
	pthread_t qthread;
	bool qthread_started;
	pthread_cond_t qwake;
	struct job *jobs, *jobs_tail, *running, *answered, *answered_tail;
	size_t njobs; /* waiting + running */
	uint64_t next_job;
};

static void job_free(struct job *j)
{
	if (!j)
		return;
	store_result_free(&j->res);
	free(j->strs);
	free(j);
}

static void *query_thread(void *arg);

static size_t or_default(size_t v, size_t d)
{
	return v ? v : d;
}

static void notify(struct store *st)
{
	uint64_t one = 1;
	/* An eventfd write fails only when the counter would overflow, which
	 * still leaves it readable. */
	ssize_t w = write(st->efd, &one, sizeof one);
	(void)w;
}

static int64_t deadline_ns(int64_t ms)
{
	return clock_mono_ns() + ms * 1000000;
}

static void timed_wait(pthread_cond_t *c, pthread_mutex_t *m, int64_t until_ns)
{
	struct timespec ts = { until_ns / 1000000000, until_ns % 1000000000 };
	pthread_cond_timedwait(c, m, &ts);
}

/* ---- writer thread ---- */

static void ids_reset(struct store *st)
{
	/* After a rollback, ids created by it are gone. */
	strmap_free(st->ids);
	st->ids = strmap_new();
}

static int cached_id(struct store *st, char kind, int64_t parent,
		     const char *name, int64_t *id)
{
	char key[STORE_NAME_MAX + 32];
	snprintf(key, sizeof key, "%c%" PRId64 ":%s", kind, parent, name);
	void *v = st->ids ? strmap_get(st->ids, key) : NULL;
	if (v) {
		*id = (int64_t)(intptr_t)v;
		return 0;
	}
	int r = kind == 'n' ? st->ops->network_id(st->wdb, name, id)
			    : st->ops->target_id(st->wdb, parent, name, id);
	if (r == 0 && st->ids && *id > 0)
		strmap_put(st->ids, key, (void *)(intptr_t)*id); /* a cache: OOM ok */
	return r;
}

/* Per network of a batch: lines and bytes to add to its counters. */
struct tally {
	int64_t network_id;
	int64_t lines, bytes;
};

static int commit_batch(struct store *st, struct op *batch)
{
	struct tally t[64];
	size_t nt = 0;
	int r = st->ops->begin(st->wdb);
	if (r < 0)
		return r;
	for (struct op *o = batch; o; o = o->next) {
		int64_t net, tgt = 0;
		if ((r = cached_id(st, 'n', 0, o->m.network, &net)) < 0)
			goto rollback;
		if (o->kind != OP_POSITION &&
		    (r = cached_id(st, 't', net, o->m.target, &tgt)) < 0)
			goto rollback;
		switch (o->kind) {
		case OP_APPEND: {
			r = st->ops->insert(st->wdb, o->seq, net, tgt, &o->m);
			size_t i = 0;
			while (i < nt && t[i].network_id != net)
				i++;
			if (i == nt) {
				if (nt == 64) { /* flush the tallies early */
					for (size_t k = 0; k < nt && r == 0; k++)
						r = st->ops->add_bytes(st->wdb, t[k].network_id,
								       t[k].lines, t[k].bytes);
					nt = i = 0;
				}
				t[nt++] = (struct tally){ net, 0, 0 };
			}
			t[i].lines++;
			t[i].bytes += (int64_t)strlen(o->m.line);
			break;
		}
		case OP_POSITION:
			r = st->ops->set_position(st->wdb, net, o->m.target, o->pos);
			break;
		case OP_MARKER:
			r = st->ops->set_marker(st->wdb, tgt, o->time_ms);
			break;
		}
		if (r < 0)
			goto rollback;
	}
	for (size_t k = 0; k < nt; k++)
		if ((r = st->ops->add_bytes(st->wdb, t[k].network_id, t[k].lines,
					    t[k].bytes)) < 0)
			goto rollback;
	if ((r = st->ops->commit(st->wdb)) < 0)
		goto rollback;
	return 0;
rollback:
	st->ops->rollback(st->wdb);
	ids_reset(st);
	return r;
}

static void set_error_text(struct store *st, const char *what,
			   const char *why)
{
	pthread_mutex_lock(&st->lock);
	snprintf(st->err, sizeof st->err, "%s: %s", what, why);
	st->err_new = true;
	st->stats.commit_failures++;
	pthread_mutex_unlock(&st->lock);
	notify(st);
}

static void set_error(struct store *st, const char *what)
{
	set_error_text(st, what, st->ops->error(st->wdb));
}

static void clear_error(struct store *st)
{
	pthread_mutex_lock(&st->lock);
	if (st->err[0]) {
		st->err[0] = 0;
		st->err_cleared = true;
		pthread_mutex_unlock(&st->lock);
		notify(st);
		return;
	}
	pthread_mutex_unlock(&st->lock);
}

/* Reserve the spare block (lock not held). */
static int reserve_block(struct store *st)
{
	pthread_mutex_lock(&st->lock);
	uint64_t floor = st->floor + 1;
	pthread_mutex_unlock(&st->lock);
	uint64_t first;
	int r = st->ops->reserve(st->wdb, floor, st->o.seq_block, &first);
	/* A block below the floor asked for, or one the database's signed
	 * 64-bit seqs cannot hold: the floor is beyond them (a corrupt seq).
	 * A failure (reported, retried with backoff), not a block to throw
	 * away and reserve again at once: that spun for good, a commit per
	 * turn, and no append was ever taken. */
	if (r == 0 && (floor == 0 || first < floor ||
		       first > (uint64_t)INT64_MAX - st->o.seq_block))
		r = -ERANGE;
	pthread_mutex_lock(&st->lock);
	if (r == 0) {
		if (first <= st->floor) {
			/* The floor rose meanwhile: reserve again. */
		} else if (st->next_seq >= st->block_end) {
			st->next_seq = first;
			st->block_end = first + st->o.seq_block;
		} else {
			st->spare_first = first;
			st->spare_end = first + st->o.seq_block;
		}
	}
	st->reserving = false;
	bool tell = r == 0 && st->want_space;
	pthread_mutex_unlock(&st->lock);
	if (tell)
		notify(st);
	return r;
}

static struct retention *retention_find(struct store *st, const char *network)
{
	for (struct retention *r = st->retention; r; r = r->next)
		if (strcmp(r->network, network) == 0)
			return r;
	return NULL;
}

/* Networks one retention step looks at, at most. */
#define RETENTION_NETWORKS 64

/* One bounded retention step: from the network after the last one looked
 * at, at most RETENTION_NETWORKS networks and retention_batch deleted rows
 * each. Returns 1 if the pass is not finished, 0 if it is, < 0 on error. */
static int retention_step(struct store *st)
{
	struct store_network_info *nets = NULL;
	size_t n = 0, batch = st->o.retention_batch, looked = 0;
	int more = 0, r = st->ops->networks(st->wdb, &nets, &n);
	if (r < 0)
		return r;
	uint64_t *seq = malloc(batch * sizeof *seq);
	int64_t *tm = malloc(batch * sizeof *tm);
	uint64_t *by = malloc(batch * sizeof *by);
	if (!seq || !tm || !by) {
		r = -ENOMEM;
		goto out;
	}
	int64_t now = clock_wall_ms();
	size_t i = 0;
	while (i < n && nets[i].id <= st->ret_last_id)
		i++;
	for (; i < n && r >= 0 && looked < RETENTION_NETWORKS; i++, looked++) {
		st->ret_last_id = nets[i].id;
		int64_t age = st->o.max_age_ms, maxb = (int64_t)st->o.max_bytes;
		pthread_mutex_lock(&st->lock);
		struct retention *ov = retention_find(st, nets[i].name);
		if (ov && ov->max_age_ms >= 0)
			age = ov->max_age_ms;
		if (ov && ov->max_bytes >= 0)
			maxb = ov->max_bytes;
		pthread_mutex_unlock(&st->lock);
		int64_t before = age > 0 ? now - age : INT64_MIN;
		uint64_t want = maxb > 0 && nets[i].bytes > (uint64_t)maxb
					? nets[i].bytes - (uint64_t)maxb : 0;
		if (before == INT64_MIN && want == 0)
			continue;
		int got = st->ops->oldest(st->wdb, nets[i].id, batch, seq, tm, by);
		if (got < 0) {
			r = got;
			break;
		}
		/* The prefix (in append order) that is too old or over the
		 * size: a line with a later time stops the age rule there. */
		uint64_t acc = 0, upto = 0;
		int k = 0;
		for (; k < got; k++) {
			bool old = tm[k] < before, big = acc < want;
			if (!old && !big)
				break;
			acc += by[k];
			upto = seq[k];
		}
		if (k == 0)
			continue;
		uint64_t lines = 0, bytes = 0;
		if ((r = st->ops->begin(st->wdb)) < 0)
			break;
		if ((r = st->ops->delete_upto(st->wdb, nets[i].id, upto, &lines,
					      &bytes)) < 0 ||
		    (r = st->ops->add_bytes(st->wdb, nets[i].id, -(int64_t)lines,
					    -(int64_t)bytes)) < 0 ||
		    (r = st->ops->commit(st->wdb)) < 0) {
			st->ops->rollback(st->wdb);
			break;
		}
		pthread_mutex_lock(&st->lock);
		st->stats.retention_deleted += lines;
		pthread_mutex_unlock(&st->lock);
		if (k == got && (size_t)got == batch) {
			/* This network has more: look at it again next step. */
			st->ret_last_id = nets[i].id - 1;
			more = 1;
			i++;
			break;
		}
	}
	if (r >= 0 && i < n)
		more = 1;
	if (r >= 0 && !more)
		st->ret_last_id = 0; /* the pass is complete */
out:
	for (size_t k = 0; k < n; k++)
		free(nets[k].name);
	free(nets);
	free(seq);
	free(tm);
	free(by);
	return r < 0 ? r : more;
}

static void free_ops(struct op *o)
{
	while (o) {
		struct op *next = o->next;
		free(o);
		o = next;
	}
}

/* After a failed commit or seq reservation: wait 50 ms, doubling up to 5 s
 * (*backoff_ms), before the next attempt; store_close() ends the wait at
 * once (it signals wake), so closing a failing store takes one more
 * attempt, not the rest of a 5 s sleep. Called and returns with the lock
 * held. */
static void backoff_wait(struct store *st, int64_t *backoff_ms)
{
	*backoff_ms = *backoff_ms ? *backoff_ms * 2 : 50;
	if (*backoff_ms > 5000)
		*backoff_ms = 5000;
	int64_t until = deadline_ns(*backoff_ms);
	while (!st->closing && clock_mono_ns() < until)
		timed_wait(&st->wake, &st->lock, until);
}

static void *writer(void *arg)
{
	struct store *st = arg;
	int64_t backoff_ms = 0, next_retention = clock_mono_ms() +
						 st->o.retention_interval_ms;
	bool retention_more = false;
	unsigned batches_since_step = 0;
	pthread_mutex_lock(&st->lock);
	for (;;) {
		bool need_block = !st->reserving && !st->closing &&
				  st->spare_end == 0 &&
				  st->block_end - st->next_seq < st->o.seq_block / 2;
		if (need_block) {
			st->reserving = true;
			pthread_mutex_unlock(&st->lock);
			int rr = reserve_block(st);
			if (rr == -ERANGE) {
				set_error_text(st, "reserving seqs",
					       "the sequence floor is beyond the database's seqs");
			} else if (rr < 0) {
				set_error(st, "reserving seqs");
			}
			pthread_mutex_lock(&st->lock);
			if (rr < 0)
				backoff_wait(st, &backoff_ms);
			if (st->closing && !st->head)
				break;
			continue;
		}
		int64_t now = clock_mono_ms();
		bool ret_due = st->retention_req || retention_more ||
			       now >= next_retention;
		if (ret_due && (!st->head || batches_since_step >= 4) &&
		    !st->closing) {
			/* Between batches, so a busy queue cannot starve it; one
			 * bounded step at a time. */
			batches_since_step = 0;
			if (st->retention_req) {
				st->retention_req = false;
				st->retention_running = true;
			}
			pthread_mutex_unlock(&st->lock);
			int r = retention_step(st);
			if (r < 0)
				set_error(st, "retention");
			retention_more = r > 0;
			next_retention = clock_mono_ms() + st->o.retention_interval_ms;
			pthread_mutex_lock(&st->lock);
			if (!retention_more && !st->retention_req) {
				st->retention_running = false;
				pthread_cond_broadcast(&st->done);
			}
			continue;
		}
		if (st->head && st->o.commit_window_ms > 0 && !st->closing &&
		    !st->want_space && !st->sync_wanted && st->nops < st->o.batch_max &&
		    clock_mono_ns() < st->head_ns + (int64_t)st->o.commit_window_ms * 1000000) {
			/* group commit: let the batch grow a little */
			timed_wait(&st->wake, &st->lock,
				   st->head_ns + (int64_t)st->o.commit_window_ms * 1000000);
			continue;
		}
		if (st->head) {
			batches_since_step++;
			/* Take up to batch_max ops; what arrives meanwhile waits
			 * for the next commit (group commit). */
			struct op *batch = st->head, *last = batch;
			size_t n = 1, bytes = batch->size;
			while (last->next && n < st->o.batch_max) {
				last = last->next;
				bytes += last->size;
				n++;
			}
			st->head = last->next;
			if (!st->head)
				st->tail = NULL;
			last->next = NULL;
			st->inflight = n;
			bool closing = st->closing;
			pthread_mutex_unlock(&st->lock);
			int r = commit_batch(st, batch);
			pthread_mutex_lock(&st->lock);
			if (r < 0) {
				/* Keep the batch at the head, in order, and retry. */
				last->next = st->head;
				st->head = batch;
				if (!st->tail)
					st->tail = last;
				st->inflight = 0;
				pthread_mutex_unlock(&st->lock);
				set_error(st, "commit failed");
				pthread_mutex_lock(&st->lock);
				if (closing)
					break; /* store_close(): one attempt */
				backoff_wait(st, &backoff_ms);
				continue;
			}
			uint64_t durable = last->seq;
			st->nops -= n;
			st->nbytes -= bytes;
			st->inflight = 0;
			st->stats.commits++;
			st->stats.ops_committed += n;
			if (n > st->stats.batch_max_seen)
				st->stats.batch_max_seen = n;
			int b = 0;
			while (b < 15 && (n >> (b + 1)))
				b++;
			st->stats.batch_hist[b]++;
			atomic_store(&st->durable, durable);
			pthread_cond_broadcast(&st->done);
			pthread_mutex_unlock(&st->lock);
			/* also what a failed retention step or seq
			 * reservation left (set_error()) */
			backoff_ms = 0;
			clear_error(st);
			free_ops(batch);
			notify(st);
			pthread_mutex_lock(&st->lock);
			continue;
		}
		if (st->closing)
			break;
		timed_wait(&st->wake, &st->lock,
			   deadline_ns(next_retention - now));
	}
	pthread_cond_broadcast(&st->done);
	pthread_mutex_unlock(&st->lock);
	return NULL;
}

/* ---- handle ---- */

struct store *store_open(const struct store_options *opts,
			 const struct store_callbacks *cb, void *cb_arg,
			 char *err, size_t errlen)
{
	struct store *st = calloc(1, sizeof *st);
	int e = ENOMEM;
	if (err && errlen)
		err[0] = 0;
	if (!st)
		goto fail_nost;
	st->efd = -1;
	pthread_mutex_init(&st->lock, NULL);
	pthread_mutex_init(&st->rlock, NULL);
	pthread_cond_init(&st->wake, NULL);
	{
		pthread_condattr_t ca;
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_destroy(&st->wake);
		pthread_cond_init(&st->wake, &ca);
		pthread_cond_init(&st->done, &ca);
		pthread_cond_init(&st->qwake, &ca);
		pthread_condattr_destroy(&ca);
	}
	st->o = *opts;
	st->o.url = NULL;
	st->o.queue_ops = or_default(opts->queue_ops, 65536);
	st->o.queue_bytes = or_default(opts->queue_bytes, 32u << 20);
	st->o.batch_max = or_default(opts->batch_max, 4096);
	st->o.seq_block = opts->seq_block ? opts->seq_block : 65536;
	if (st->o.seq_block < 2)
		st->o.seq_block = 2;
	st->o.retention_interval_ms = opts->retention_interval_ms > 0
					      ? opts->retention_interval_ms : 60000;
	st->o.retention_batch = or_default(opts->retention_batch, 1000);
	if (cb)
		st->cb = *cb;
	st->cb_arg = cb_arg;
	switch (opts->backend) {
	case STORE_SQLITE:
		st->ops = &store_sqlite_ops;
		break;
	case STORE_POSTGRES:
		st->ops = &store_pg_ops;
		break;
	default:
		snprintf(err, errlen, "unknown store backend %d", opts->backend);
		e = EINVAL;
		goto fail;
	}
	if (!opts->url || !opts->url[0]) {
		snprintf(err, errlen, "no store path or URL");
		e = EINVAL;
		goto fail;
	}
	st->ids = strmap_new();
	st->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (!st->ids || st->efd < 0) {
		e = st->efd < 0 ? errno : ENOMEM;
		snprintf(err, errlen, "store: %s", strerror(e));
		goto fail;
	}
	uint32_t id2 = 0;
	if (!(st->wdb = st->ops->open(opts, true, &st->db_id, err, errlen)) ||
	    !(st->rdb = st->ops->open(opts, false, &id2, err, errlen))) {
		e = errno ? errno : EIO;
		goto fail;
	}
	/* The first block is reserved now, so appends work at once. */
	uint64_t first;
	if (st->ops->reserve(st->wdb, 1, st->o.seq_block, &first) < 0) {
		snprintf(err, errlen, "reserving seqs: %s", st->ops->error(st->wdb));
		e = EIO;
		goto fail;
	}
	st->next_seq = first;
	st->block_end = first + st->o.seq_block;
	atomic_store(&st->durable, first - 1);
	st->durable_told = first - 1;
	if ((e = pthread_create(&st->thread, NULL, writer, st)) != 0) {
		snprintf(err, errlen, "store: starting the writer: %s", strerror(e));
		goto fail;
	}
	st->thread_started = true;
	if ((e = pthread_create(&st->qthread, NULL, query_thread, st)) != 0) {
		snprintf(err, errlen, "store: starting the query thread: %s",
			 strerror(e));
		goto fail;
	}
	st->qthread_started = true;
	return st;
fail:
	store_close(st);
fail_nost:
	if (e == ENOMEM && err && errlen && !err[0])
		snprintf(err, errlen, "out of memory");
	errno = e;
	return NULL;
}

size_t store_close(struct store *st)
{
	if (!st)
		return 0;
	size_t lost = 0;
	pthread_mutex_lock(&st->lock);
	st->closing = true;
	pthread_cond_signal(&st->wake);
	pthread_cond_signal(&st->qwake);
	pthread_mutex_unlock(&st->lock);
	if (st->qthread_started)
		pthread_join(st->qthread, NULL);
	if (st->thread_started)
		pthread_join(st->thread, NULL);
	for (struct job *j = st->jobs, *n; j; j = n) {
		n = j->next;
		job_free(j);
	}
	for (struct job *j = st->answered, *n; j; j = n) {
		n = j->next;
		job_free(j);
	}
	lost = st->nops;
	free_ops(st->head);
	for (struct retention *r = st->retention, *n; r; r = n) {
		n = r->next;
		free(r->network);
		free(r);
	}
	if (st->ops) {
		if (st->wdb)
			st->ops->close(st->wdb);
		if (st->rdb)
			st->ops->close(st->rdb);
	}
	strmap_free(st->ids);
	if (st->efd >= 0)
		close(st->efd);
	pthread_mutex_destroy(&st->lock);
	pthread_mutex_destroy(&st->rlock);
	pthread_cond_destroy(&st->wake);
	pthread_cond_destroy(&st->done);
	pthread_cond_destroy(&st->qwake);
	free(st);
	return lost;
}

int store_fd(const struct store *st)
{
	return st->efd;
}

void store_dispatch(struct store *st)
{
	uint64_t v;
	while (read(st->efd, &v, sizeof v) == sizeof v)
		;
	pthread_mutex_lock(&st->lock);
	bool space = st->want_space && st->nops <= st->o.queue_ops / 2 &&
		     st->nbytes <= st->o.queue_bytes / 2 &&
		     (st->next_seq < st->block_end || st->spare_end);
	if (space)
		st->want_space = false;
	char msg[sizeof st->err];
	bool err_new = st->err_new, cleared = st->err_cleared;
	snprintf(msg, sizeof msg, "%s", st->err);
	st->err_new = st->err_cleared = false;
	pthread_mutex_unlock(&st->lock);
	uint64_t d = atomic_load(&st->durable);
	if (d > st->durable_told) {
		st->durable_told = d;
		if (st->cb.durable)
			st->cb.durable(st->cb_arg, d);
	}
	/* A failure cleared before this dispatch read it is told, then its
	 * clearing: the callback's last word is the store's state (the
	 * worker offers draft/chathistory on it, history.h). */
	if (err_new && st->cb.error)
		st->cb.error(st->cb_arg, msg[0] ? msg : "a commit failed (it succeeded since)");
	if (cleared && msg[0] == '\0' && st->cb.error)
		st->cb.error(st->cb_arg, NULL);
	if (space && st->cb.space)
		st->cb.space(st->cb_arg);
	/* One answer at a time, so a callback may cancel the next ones. */
	for (;;) {
		pthread_mutex_lock(&st->lock);
		struct job *j = st->answered;
		if (j) {
			st->answered = j->next;
			if (!st->answered)
				st->answered_tail = NULL;
		}
		pthread_mutex_unlock(&st->lock);
		if (!j)
			break;
		struct store_result res = j->res;
		memset(&j->res, 0, sizeof j->res); /* the callback's now */
		j->cb(j->arg, j->rc, &res, j->rc == -EIO ? j->err : NULL);
		job_free(j);
	}
}

uint64_t store_durable_seq(const struct store *st)
{
	return atomic_load(&((struct store *)st)->durable);
}

size_t store_queued(const struct store *st)
{
	struct store *s = (struct store *)st;
	pthread_mutex_lock(&s->lock);
	size_t n = s->nops;
	pthread_mutex_unlock(&s->lock);
	return n;
}

static int check_name(const char *s)
{
	if (!s || !s[0])
		return -EINVAL;
	return strlen(s) > STORE_NAME_MAX ? -E2BIG : 0;
}

/* Tests only (tests/unit/store/test_store_race.c compiles this file with
 * -DSTORE_TEST_HOOKS): a hook run right after enqueue() let go of the
 * lock, where the writer may run; nothing in a normal build. */
#ifdef STORE_TEST_HOOKS
void store_test_enqueued(struct store *st);
#define STORE_TEST_ENQUEUED(st) store_test_enqueued(st)
#else
#define STORE_TEST_ENQUEUED(st) ((void)0)
#endif

/* Queue o (built by the caller) with a fresh seq, or refuse it. */
static int enqueue(struct store *st, struct op *o, uint64_t *seq)
{
	pthread_mutex_lock(&st->lock);
	int r = 0;
	if (st->closing) {
		r = -ESHUTDOWN;
	} else if (st->nops + 1 > st->o.queue_ops ||
		   (st->nops > 0 && st->nbytes + o->size > st->o.queue_bytes)) {
		/* An empty queue takes any one operation: one larger than
		 * queue_bytes would otherwise be refused for ever. */
		r = -EAGAIN;
	} else {
		if (st->next_seq >= st->block_end && st->spare_end) {
			st->next_seq = st->spare_first;
			st->block_end = st->spare_end;
			st->spare_first = st->spare_end = 0;
		}
		if (st->next_seq >= st->block_end)
			r = -EAGAIN; /* the writer is reserving the next block */
	}
	if (r == -EAGAIN) {
		st->want_space = true;
		st->stats.refused_full++;
		pthread_cond_signal(&st->wake);
	}
	if (r < 0) {
		pthread_mutex_unlock(&st->lock);
		free(o);
		return r;
	}
	o->seq = st->next_seq++;
	st->last_seq = o->seq;
	if (st->tail)
		st->tail->next = o;
	else
		st->head = o;
	st->tail = o;
	st->nops++;
	st->nbytes += o->size;
	if (st->nops == 1)
		st->head_ns = clock_mono_ns();
	/* Read under the lock: once it is released, the writer may commit
	 * and free o at any moment (o->seq read after the unlock was freed
	 * memory under load: a garbage seq the session's backlog took as its
	 * next one, so every later append was out of range for good). */
	uint64_t got = o->seq;
	/* Wake the writer when it may be idle, or the block runs low. */
	if (st->nops == 1 || st->block_end - st->next_seq < st->o.seq_block / 2)
		pthread_cond_signal(&st->wake);
	pthread_mutex_unlock(&st->lock);
	STORE_TEST_ENQUEUED(st);
	if (seq)
		*seq = got;
	return 0;
}

/* An op with copies of up to five strings. */
static struct op *op_new(enum op_kind kind, const char *s[5])
{
	size_t len[5], total = 0;
	for (int i = 0; i < 5; i++) {
		len[i] = s[i] ? strlen(s[i]) + 1 : 0;
		total += len[i];
	}
	struct op *o = calloc(1, sizeof *o + total);
	if (!o)
		return NULL;
	o->kind = kind;
	o->size = sizeof *o + total;
	char *p = o->data;
	const char **dst[5] = { &o->m.network, &o->m.target, &o->m.sender,
				&o->m.command, &o->m.line };
	for (int i = 0; i < 5; i++) {
		if (!s[i]) {
			*dst[i] = "";
			continue;
		}
		memcpy(p, s[i], len[i]);
		*dst[i] = p;
		p += len[i];
	}
	return o;
}

int store_append(struct store *st, const struct store_msg *m, uint64_t *seq)
{
	int r;
	if ((r = check_name(m->network)) < 0 || (r = check_name(m->target)) < 0)
		return r;
	if (!m->sender || !m->command || !m->command[0] || !m->line)
		return -EINVAL;
	if (strlen(m->sender) > STORE_NAME_MAX ||
	    strlen(m->command) > STORE_COMMAND_MAX ||
	    strlen(m->line) > STORE_LINE_MAX)
		return -E2BIG;
	const char *s[5] = { m->network, m->target, m->sender, m->command,
			     m->line };
	struct op *o = op_new(OP_APPEND, s);
	if (!o)
		return -ENOMEM;
	o->time_ms = m->time_ms;
	o->m.time_ms = m->time_ms;
	return enqueue(st, o, seq);
}

int store_set_position(struct store *st, const char *network,
		       const char *client, uint64_t seq, uint64_t *op)
{
	int r;
	if ((r = check_name(network)) < 0 || (r = check_name(client)) < 0)
		return r;
	const char *s[5] = { network, client, NULL, NULL, NULL };
	struct op *o = op_new(OP_POSITION, s);
	if (!o)
		return -ENOMEM;
	o->pos = seq;
	return enqueue(st, o, op);
}

int store_set_read_marker(struct store *st, const char *network,
			  const char *target, int64_t time_ms, uint64_t *op)
{
	int r;
	if ((r = check_name(network)) < 0 || (r = check_name(target)) < 0)
		return r;
	const char *s[5] = { network, target, NULL, NULL, NULL };
	struct op *o = op_new(OP_MARKER, s);
	if (!o)
		return -ENOMEM;
	o->time_ms = time_ms;
	return enqueue(st, o, op);
}

int store_set_retention(struct store *st, const char *network,
			int64_t max_age_ms, int64_t max_bytes)
{
	int r = check_name(network);
	if (r < 0)
		return r;
	pthread_mutex_lock(&st->lock);
	struct retention *ret = retention_find(st, network);
	if (!ret) {
		ret = calloc(1, sizeof *ret);
		if (!ret || !(ret->network = strdup(network))) {
			free(ret);
			pthread_mutex_unlock(&st->lock);
			return -ENOMEM;
		}
		ret->next = st->retention;
		st->retention = ret;
	}
	ret->max_age_ms = max_age_ms;
	ret->max_bytes = max_bytes;
	pthread_mutex_unlock(&st->lock);
	return 0;
}

void store_seq_floor(struct store *st, uint64_t seq)
{
	pthread_mutex_lock(&st->lock);
	if (seq > st->floor)
		st->floor = seq;
	if (st->spare_end && st->spare_first <= seq)
		st->spare_first = st->spare_end = 0;
	if (st->next_seq <= seq)
		st->next_seq = st->block_end; /* abandon the rest */
	pthread_cond_signal(&st->wake);
	pthread_mutex_unlock(&st->lock);
}

int store_sync(struct store *st, int64_t timeout_ms)
{
	int64_t until = deadline_ns(timeout_ms);
	int r = 0;
	pthread_mutex_lock(&st->lock);
	/* Not next_seq - 1: a floor or a new block moves next_seq past seqs
	 * never handed out. */
	uint64_t want = st->last_seq;
	bool any = st->head || st->inflight;
	st->sync_wanted++;
	while ((any && atomic_load(&st->durable) < want) || st->retention_req ||
	       st->retention_running) {
		if (clock_mono_ns() >= until) {
			r = -ETIMEDOUT;
			break;
		}
		pthread_cond_signal(&st->wake);
		timed_wait(&st->done, &st->lock, until);
	}
	st->sync_wanted--;
	pthread_mutex_unlock(&st->lock);
	return r;
}

void store_retention_now(struct store *st)
{
	pthread_mutex_lock(&st->lock);
	st->retention_req = true;
	pthread_cond_signal(&st->wake);
	pthread_mutex_unlock(&st->lock);
}

/* ---- msgids ---- */

void store_msgid_format(const struct store *st, uint64_t seq,
			char out[STORE_MSGID_LEN])
{
	snprintf(out, STORE_MSGID_LEN, "%08" PRIx32 "-%016" PRIx64, st->db_id,
		 seq);
}

int store_msgid_parse(const struct store *st, const char *msgid, uint64_t *seq)
{
	char want[10];
	snprintf(want, sizeof want, "%08" PRIx32 "-", st->db_id);
	if (!msgid || strlen(msgid) != STORE_MSGID_LEN - 1 ||
	    strncmp(msgid, want, 9) != 0)
		return -ENOENT;
	uint64_t v = 0;
	for (const char *p = msgid + 9; *p; p++) {
		int d = *p >= '0' && *p <= '9' ? *p - '0'
			: *p >= 'a' && *p <= 'f' ? *p - 'a' + 10 : -1;
		if (d < 0)
			return -ENOENT;
		v = v << 4 | (uint64_t)d;
	}
	if (v == 0)
		return -ENOENT;
	*seq = v;
	return 0;
}

/* ---- results ---- */

int store_result_push_row(struct store_result *r, uint64_t seq, int64_t time_ms,
			  const char *target, const char *sender,
			  const char *command, const char *line)
{
	void *p = realloc(r->rows, (r->nrows + 1) * sizeof *r->rows);
	if (!p)
		return -ENOMEM;
	r->rows = p;
	struct store_row *w = &r->rows[r->nrows];
	memset(w, 0, sizeof *w);
	w->seq = seq;
	w->time_ms = time_ms;
	w->target = strdup(target);
	w->sender = strdup(sender);
	w->command = strdup(command);
	w->line = strdup(line);
	r->nrows++; /* counted even when a copy failed, so it is freed */
	if (!w->target || !w->sender || !w->command || !w->line)
		return -ENOMEM;
	return 0;
}

int store_result_push_target(struct store_result *r, const char *target,
			     int64_t last_time_ms)
{
	void *p = realloc(r->targets, (r->ntargets + 1) * sizeof *r->targets);
	if (!p)
		return -ENOMEM;
	r->targets = p;
	r->targets[r->ntargets].last_time_ms = last_time_ms;
	r->targets[r->ntargets].target = strdup(target);
	r->ntargets++;
	return r->targets[r->ntargets - 1].target ? 0 : -ENOMEM;
}

void store_result_free(struct store_result *r)
{
	if (!r)
		return;
	for (size_t i = 0; i < r->nrows; i++) {
		free(r->rows[i].target);
		free(r->rows[i].sender);
		free(r->rows[i].command);
		free(r->rows[i].line);
	}
	for (size_t i = 0; i < r->ntargets; i++)
		free(r->targets[i].target);
	free(r->rows);
	free(r->targets);
	memset(r, 0, sizeof *r);
}

/* ---- queries ---- */

static const struct store_key KEY_MIN = { INT64_MIN, 0 };
static const struct store_key KEY_MAX = { INT64_MAX, INT64_MAX };

/* A reference as a key: `below` gives the key just below the reference's
 * position (for "at or after"), otherwise the reference itself (for
 * exclusive bounds on both sides; a timestamp T is then (T, 0) as an upper
 * bound and (T, INT64_MAX) as a lower one). */
static int ref_key(struct store *st, int64_t target_id,
		   const struct store_ref *ref, bool as_lower, bool at_or_after,
		   struct store_key *k)
{
	if (ref->kind == STORE_REF_TIME) {
		k->time_ms = ref->time_ms;
		k->seq = as_lower && !at_or_after ? INT64_MAX : 0;
		return 0;
	}
	if (ref->kind != STORE_REF_MSGID)
		return -EINVAL;
	uint64_t seq;
	int64_t tgt, t;
	if (store_msgid_parse(st, ref->msgid, &seq) < 0)
		return -ENOENT;
	int r = st->ops->lookup(st->rdb, seq, &tgt, &t);
	if (r < 0)
		return r;
	if (tgt != target_id)
		return -ENOENT;
	k->time_ms = t;
	k->seq = (int64_t)seq - (at_or_after ? 1 : 0);
	return 0;
}

static void reverse_rows(struct store_result *r, size_t from)
{
	for (size_t i = from, j = r->nrows; i + 1 < j; i++, j--) {
		struct store_row t = r->rows[i];
		r->rows[i] = r->rows[j - 1];
		r->rows[j - 1] = t;
	}
}

static int key_cmp(struct store_key a, struct store_key b)
{
	if (a.time_ms != b.time_ms)
		return a.time_ms < b.time_ms ? -1 : 1;
	return a.seq < b.seq ? -1 : a.seq > b.seq;
}

static int run_query(struct store *st, const struct store_query *q,
		     struct store_result *out)
{
	size_t limit = q->limit > STORE_QUERY_MAX ? STORE_QUERY_MAX : q->limit;
	int64_t net = 0, tgt = 0;
	int r;
	if (check_name(q->network) < 0)
		return -EINVAL;
	if (q->kind == STORE_Q_POSITION) {
		uint64_t pos = 0;
		if (check_name(q->target) < 0)
			return -EINVAL;
		r = st->ops->get_position(st->rdb, q->network, q->target, &pos);
		if (r == -ENOENT)
			return 0;
		if (r < 0)
			return r;
		out->rows = calloc(1, sizeof *out->rows);
		if (!out->rows)
			return -ENOMEM;
		out->rows[0].seq = pos;
		out->nrows = 1;
		return 0;
	}
	if (q->kind == STORE_Q_MARKERS) {
		r = st->ops->find_network(st->rdb, q->network, &net);
		if (r == -ENOENT)
			return 0;
		return r < 0 ? r : st->ops->markers(st->rdb, net, out);
	}
	if (q->kind == STORE_Q_TARGETS || q->kind == STORE_Q_REPLAY) {
		r = st->ops->find_network(st->rdb, q->network, &net);
		if (r == -ENOENT || limit == 0)
			return 0;
		if (r < 0)
			return r;
		if (q->kind == STORE_Q_REPLAY)
			return st->ops->replay(st->rdb, net, q->after_seq, limit,
					       out);
		if (q->ref.kind != STORE_REF_TIME || q->ref2.kind != STORE_REF_TIME)
			return -EINVAL;
		int64_t a = q->ref.time_ms, b = q->ref2.time_ms;
		return st->ops->targets(st->rdb, net, a < b ? a : b, a < b ? b : a,
					a > b, limit, out);
	}
	if (check_name(q->target) < 0)
		return -EINVAL;
	bool needs_ref = q->kind != STORE_Q_LATEST;
	if ((needs_ref && q->ref.kind == STORE_REF_NONE) ||
	    (q->kind == STORE_Q_BETWEEN && q->ref2.kind == STORE_REF_NONE))
		return -EINVAL;
	r = st->ops->find_target(st->rdb, q->network, q->target, &tgt);
	if (r == -ENOENT) {
		/* Unknown target: empty; no msgid can be one of its. */
		if (q->ref.kind == STORE_REF_MSGID ||
		    q->ref2.kind == STORE_REF_MSGID)
			return -ENOENT;
		return 0;
	}
	if (r < 0)
		return r;
	struct store_key k, k2;
	size_t from = out->nrows;
	switch (q->kind) {
	case STORE_Q_LATEST:
		k = KEY_MIN;
		if (q->ref.kind != STORE_REF_NONE &&
		    (r = ref_key(st, tgt, &q->ref, true, false, &k)) < 0)
			return r;
		if (limit == 0)
			return 0;
		if ((r = st->ops->range(st->rdb, tgt, k, KEY_MAX, true, limit,
					out)) < 0)
			return r;
		reverse_rows(out, from);
		break;
	case STORE_Q_BEFORE:
		if ((r = ref_key(st, tgt, &q->ref, false, false, &k)) < 0)
			return r;
		if (limit == 0)
			return 0;
		if ((r = st->ops->range(st->rdb, tgt, KEY_MIN, k, true, limit,
					out)) < 0)
			return r;
		reverse_rows(out, from);
		break;
	case STORE_Q_AFTER:
		if ((r = ref_key(st, tgt, &q->ref, true, false, &k)) < 0)
			return r;
		if (limit == 0)
			return 0;
		r = st->ops->range(st->rdb, tgt, k, KEY_MAX, false, limit, out);
		break;
	case STORE_Q_AROUND: {
		if ((r = ref_key(st, tgt, &q->ref, false, false, &k)) < 0 ||
		    (r = ref_key(st, tgt, &q->ref, true, true, &k2)) < 0)
			return r;
		size_t before = limit / 2;
		if (before && (r = st->ops->range(st->rdb, tgt, KEY_MIN, k, true,
						  before, out)) < 0)
			return r;
		reverse_rows(out, from);
		if (limit - before &&
		    (r = st->ops->range(st->rdb, tgt, k2, KEY_MAX, false,
					limit - before, out)) < 0)
			return r;
		break;
	}
	case STORE_Q_BETWEEN: {
		/* Each ref as a lower bound and as an upper bound. */
		struct store_key alo, ahi, blo, bhi;
		if ((r = ref_key(st, tgt, &q->ref, true, false, &alo)) < 0 ||
		    (r = ref_key(st, tgt, &q->ref, false, false, &ahi)) < 0 ||
		    (r = ref_key(st, tgt, &q->ref2, true, false, &blo)) < 0 ||
		    (r = ref_key(st, tgt, &q->ref2, false, false, &bhi)) < 0)
			return r;
		if (limit == 0)
			return 0;
		if (key_cmp(alo, bhi) < 0 && key_cmp(ahi, blo) <= 0) {
			r = st->ops->range(st->rdb, tgt, alo, bhi, false, limit, out);
		} else {
			r = st->ops->range(st->rdb, tgt, blo, ahi, true, limit, out);
			if (r == 0)
				reverse_rows(out, from);
		}
		break;
	}
	default:
		return -EINVAL;
	}
	if (r < 0)
		return r;
	for (size_t i = from; i < out->nrows; i++) {
		char *t = strdup(q->target);
		if (!t)
			return -ENOMEM;
		free(out->rows[i].target);
		out->rows[i].target = t;
	}
	return 0;
}

int store_query(struct store *st, const struct store_query *q,
		struct store_result *out, char *err, size_t errlen)
{
	memset(out, 0, sizeof *out);
	pthread_mutex_lock(&st->rlock);
	int r = run_query(st, q, out);
	if (r == -EIO && err && errlen)
		snprintf(err, errlen, "%s", st->ops->error(st->rdb));
	pthread_mutex_unlock(&st->rlock);
	for (size_t i = 0; r == 0 && i < out->nrows; i++)
		store_msgid_format(st, out->rows[i].seq, out->rows[i].msgid);
	if (r < 0)
		store_result_free(out);
	return r;
}

static void *query_thread(void *arg)
{
	struct store *st = arg;
	pthread_mutex_lock(&st->lock);
	for (;;) {
		while (!st->jobs && !st->closing)
			pthread_cond_wait(&st->qwake, &st->lock);
		if (st->closing)
			break;
		struct job *j = st->jobs;
		st->jobs = j->next;
		if (!st->jobs)
			st->jobs_tail = NULL;
		j->next = NULL;
		st->running = j;
		pthread_mutex_unlock(&st->lock);
		j->rc = store_query(st, &j->q, &j->res, j->err, sizeof j->err);
		pthread_mutex_lock(&st->lock);
		st->running = NULL;
		st->njobs--;
		if (j->canceled) {
			job_free(j);
			continue;
		}
		if (st->answered_tail)
			st->answered_tail->next = j;
		else
			st->answered = j;
		st->answered_tail = j;
		pthread_mutex_unlock(&st->lock);
		notify(st);
		pthread_mutex_lock(&st->lock);
	}
	pthread_mutex_unlock(&st->lock);
	return NULL;
}

int store_query_async(struct store *st, const struct store_query *q,
		      store_query_cb cb, void *arg, uint64_t *id)
{
	const char *src[4] = { q->network, q->target,
			       q->ref.kind == STORE_REF_MSGID ? q->ref.msgid : NULL,
			       q->ref2.kind == STORE_REF_MSGID ? q->ref2.msgid : NULL };
	size_t len[4], total = 0;
	for (int i = 0; i < 4; i++) {
		len[i] = src[i] ? strlen(src[i]) + 1 : 0;
		total += len[i];
	}
	struct job *j = calloc(1, sizeof *j);
	if (!j || !(j->strs = malloc(total ? total : 1))) {
		free(j);
		return -ENOMEM;
	}
	j->q = *q;
	j->cb = cb;
	j->arg = arg;
	const char **dst[4] = { &j->q.network, &j->q.target, &j->q.ref.msgid,
				&j->q.ref2.msgid };
	char *p = j->strs;
	for (int i = 0; i < 4; i++) {
		if (!src[i])
			continue;
		memcpy(p, src[i], len[i]);
		*dst[i] = p;
		p += len[i];
	}
	pthread_mutex_lock(&st->lock);
	int r = 0;
	if (st->closing)
		r = -ESHUTDOWN;
	else if (st->njobs >= STORE_QUERY_JOBS)
		r = -EAGAIN;
	if (r < 0) {
		pthread_mutex_unlock(&st->lock);
		job_free(j);
		return r;
	}
	j->id = ++st->next_job;
	if (st->jobs_tail)
		st->jobs_tail->next = j;
	else
		st->jobs = j;
	st->jobs_tail = j;
	st->njobs++;
	if (id)
		*id = j->id;
	pthread_cond_signal(&st->qwake);
	pthread_mutex_unlock(&st->lock);
	return 0;
}

/* Unlink job `id` from a list; NULL if it is not there. */
static struct job *unlink_job(struct job **head, struct job **tail, uint64_t id)
{
	struct job *prev = NULL;
	for (struct job *j = *head; j; prev = j, j = j->next) {
		if (j->id != id)
			continue;
		if (prev)
			prev->next = j->next;
		else
			*head = j->next;
		if (*tail == j)
			*tail = prev;
		j->next = NULL;
		return j;
	}
	return NULL;
}

void store_query_cancel(struct store *st, uint64_t id)
{
	pthread_mutex_lock(&st->lock);
	struct job *j = unlink_job(&st->jobs, &st->jobs_tail, id);
	if (j)
		st->njobs--;
	else
		j = unlink_job(&st->answered, &st->answered_tail, id);
	if (!j && st->running && st->running->id == id)
		st->running->canceled = true; /* freed when it ends */
	pthread_mutex_unlock(&st->lock);
	job_free(j);
}

int store_purge(struct store *st, const char *network, uint64_t *lines,
		char *err, size_t errlen)
{
	int64_t net = 0;

	*lines = 0;
	if (check_name(network) < 0)
		return -EINVAL;
	pthread_mutex_lock(&st->rlock);
	int r = st->ops->find_network(st->rdb, network, &net);
	if (r == 0)
		r = st->ops->purge(st->rdb, net, lines);
	else if (r == -ENOENT)
		r = 0;
	if (r == -EIO && err && errlen)
		snprintf(err, errlen, "%s", st->ops->error(st->rdb));
	pthread_mutex_unlock(&st->rlock);
	return r;
}

int store_get_position(struct store *st, const char *network,
		       const char *client, uint64_t *seq)
{
	if (check_name(network) < 0 || check_name(client) < 0)
		return -EINVAL;
	pthread_mutex_lock(&st->rlock);
	int r = st->ops->get_position(st->rdb, network, client, seq);
	pthread_mutex_unlock(&st->rlock);
	return r;
}

int store_get_read_marker(struct store *st, const char *network,
			  const char *target, int64_t *time_ms)
{
	if (check_name(network) < 0 || check_name(target) < 0)
		return -EINVAL;
	pthread_mutex_lock(&st->rlock);
	int r = st->ops->get_marker(st->rdb, network, target, time_ms);
	pthread_mutex_unlock(&st->rlock);
	return r;
}

int store_stats(struct store *st, struct store_stats *out, char *err,
		size_t errlen)
{
	pthread_mutex_lock(&st->lock);
	*out = st->stats;
	pthread_mutex_unlock(&st->lock);
	pthread_mutex_lock(&st->rlock);
	int r = st->ops->stats(st->rdb, &out->lines, &out->line_bytes,
			       &out->disk_bytes);
	if (r < 0 && err && errlen)
		snprintf(err, errlen, "%s", st->ops->error(st->rdb));
	pthread_mutex_unlock(&st->rlock);
	return r;
}
