/* sessiond/authpool.c: see authpool.h. One mutex guards the job queue and
 * the result list; workers wait on a condition variable; results wake the
 * loop through an eventfd. */
#include "sessiond/authpool.h"

#include <crypt.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <event2/event.h>

struct auth_job {
	uint64_t id;
	char *password; /* NULL: none */
	char *hash;
	bool ok;
	struct auth_job *next;
};

struct authpool {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct auth_job *head, *tail; /* waiting, FIFO */
	struct auth_job *done;        /* finished, not delivered */
	size_t busy;                  /* waiting + running + done */
	size_t queue_max;
	bool stop;
	pthread_t *threads;
	unsigned nthreads;
	int efd;
	struct event *ev;
	authpool_done_fn done_fn;
	void *arg;
};

/* Constant-time comparison of two NUL-terminated strings' contents (the
 * length difference itself is not secret: hashes have fixed lengths). */
static bool ct_equal(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	unsigned char d = la != lb;
	size_t n = la < lb ? la : lb;

	for (size_t i = 0; i < n; i++)
		d |= (unsigned char)a[i] ^ (unsigned char)b[i];
	return d == 0;
}

bool authpool_check(const char *password, const char *hash)
{
	struct crypt_data *data = NULL;
	bool ok = false;

	if (!hash || !hash[0])
		goto out;
	data = calloc(1, sizeof(*data));
	if (!data)
		goto out;
	const char *h = crypt_rn(password ? password : "", hash, data, sizeof(*data));
	if (!h || h[0] == '*')
		goto out;
	ok = ct_equal(h, hash) && password != NULL;
out:
	free(data);
	return ok;
}

static void job_free(struct auth_job *j)
{
	if (!j)
		return;
	if (j->password) {
		explicit_bzero(j->password, strlen(j->password));
		free(j->password);
	}
	free(j->hash);
	free(j);
}

static void *authpool_thread(void *arg)
{
	struct authpool *p = arg;
	uint64_t one = 1;

	/* This thread only (Linux: a thread's nice value is its own). Best
	 * effort: without it the checks merely compete as equals. */
	(void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), AUTHPOOL_NICE);
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->stop && !p->head)
			pthread_cond_wait(&p->cv, &p->mu);
		if (p->stop)
			break;
		struct auth_job *j = p->head;
		p->head = j->next;
		if (!p->head)
			p->tail = NULL;
		pthread_mutex_unlock(&p->mu);
		j->ok = authpool_check(j->password, j->hash);
		pthread_mutex_lock(&p->mu);
		j->next = p->done;
		p->done = j;
		/* An eventfd counter cannot overflow at these rates. */
		(void)!write(p->efd, &one, sizeof(one));
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

/* From the loop: deliver every finished result. */
static void authpool_results_cb(evutil_socket_t fd, short what, void *arg)
{
	struct authpool *p = arg;
	struct auth_job *list, *next;
	uint64_t n;

	(void)!read(p->efd, &n, sizeof(n));
	pthread_mutex_lock(&p->mu);
	list = p->done;
	p->done = NULL;
	pthread_mutex_unlock(&p->mu);
	for (; list; list = next) {
		next = list->next;
		pthread_mutex_lock(&p->mu);
		p->busy--;
		pthread_mutex_unlock(&p->mu);
		p->done_fn(list->id, list->ok, p->arg);
		job_free(list);
	}
}

struct authpool *authpool_new(struct event_base *base, unsigned threads,
			      size_t queue_max, authpool_done_fn done,
			      void *arg)
{
	struct authpool *p = calloc(1, sizeof(*p));
	sigset_t all, old;
	int err = ENOMEM;

	if (!p)
		goto fail;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	p->queue_max = queue_max ? queue_max : 1;
	p->done_fn = done;
	p->arg = arg;
	p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (p->efd < 0) {
		err = errno;
		goto fail;
	}
	p->ev = event_new(base, p->efd, EV_READ | EV_PERSIST, authpool_results_cb, p);
	p->threads = calloc(threads ? threads : 1, sizeof(pthread_t));
	if (!p->ev || !p->threads || event_add(p->ev, NULL) < 0)
		goto fail;
	/* Signals stay with the loop's thread. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	for (unsigned i = 0; i < (threads ? threads : 1); i++) {
		err = pthread_create(&p->threads[i], NULL, authpool_thread, p);
		if (err != 0)
			break;
		p->nthreads++;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (p->nthreads == 0)
		goto fail;
	return p;
fail:
	authpool_free(p);
	errno = err;
	return NULL;
}

void authpool_free(struct authpool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	for (unsigned i = 0; i < p->nthreads; i++)
		pthread_join(p->threads[i], NULL);
	free(p->threads);
	for (struct auth_job *j = p->head, *n; j; j = n) {
		n = j->next;
		job_free(j);
	}
	for (struct auth_job *j = p->done, *n; j; j = n) {
		n = j->next;
		job_free(j);
	}
	if (p->ev)
		event_free(p->ev);
	if (p->efd >= 0)
		close(p->efd);
	pthread_cond_destroy(&p->cv);
	pthread_mutex_destroy(&p->mu);
	free(p);
}

int authpool_submit(struct authpool *p, uint64_t id, const char *password,
		    const char *hash)
{
	struct auth_job *j;

	pthread_mutex_lock(&p->mu);
	if (p->busy >= p->queue_max) {
		pthread_mutex_unlock(&p->mu);
		return -EAGAIN;
	}
	pthread_mutex_unlock(&p->mu);
	j = calloc(1, sizeof(*j));
	if (!j)
		return -ENOMEM;
	j->id = id;
	j->password = password ? strdup(password) : NULL;
	j->hash = strdup(hash ? hash : "");
	if ((password && !j->password) || !j->hash) {
		job_free(j);
		return -ENOMEM;
	}
	pthread_mutex_lock(&p->mu);
	p->busy++;
	if (p->tail)
		p->tail->next = j;
	else
		p->head = j;
	p->tail = j;
	pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->mu);
	return 0;
}

size_t authpool_busy(struct authpool *p)
{
	size_t n;

	pthread_mutex_lock(&p->mu);
	n = p->busy;
	pthread_mutex_unlock(&p->mu);
	return n;
}
