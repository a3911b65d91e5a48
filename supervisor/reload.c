/* supervisor/reload.c: see reload.h. */
#include "supervisor/reload.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <json-c/json.h>

#include "common/config.h"
#include "common/json_builder.h"
#include "common/log.h"
#include "control.pb-c.h"
#include "supervisor/releases.h"
#include "supervisor/worker_process.h"

struct reload_req {
	struct reload_req *next;
	struct reload_req **list;
	struct worker *w;
	struct event *timeout;
	supervisor_reply_cb cb; /* NULL: detached */
	void *arg;
	/* the file as checked here ("" unknown): the worker's once applied */
	char sha[WORKER_CONFIG_SHA_HEX];
};

static void reload_reply(supervisor_reply_cb cb, void *arg, bool applied,
			 const char *reason, char *const *problems, size_t nproblems,
			 const Baton__Control__ReloadResult *r)
{
	struct jb jb_ = JB_INIT, *jb = &jb_;
	struct json_object *o = jb_obj(jb), *res = jb_obj(jb);
	static const char *const names[] = { "added", "removed", "changed", "later" };

	jb_add(jb, res, "kind", jb_str(jb, "reload"));
	jb_add(jb, res, "result", jb_str(jb, applied ? "applied" : "refused"));
	if (reason != NULL)
		jb_add(jb, res, "reason", jb_str(jb, reason));
	{
		struct json_object *a = jb_arr(jb);

		for (size_t i = 0; i < nproblems; i++)
			jb_push(jb, a, jb_str(jb, problems[i]));
		jb_add(jb, res, "problems", a);
	}
	for (size_t k = 0; k < 4; k++) {
		struct json_object *a = jb_arr(jb);
		size_t n = 0;
		char **v = NULL;

		if (r != NULL) {
			switch (k) {
			case 0: n = r->n_added; v = r->added; break;
			case 1: n = r->n_removed; v = r->removed; break;
			case 2: n = r->n_changed; v = r->changed; break;
			default: n = r->n_later; v = r->later; break;
			}
		}
		for (size_t i = 0; i < n; i++)
			jb_push(jb, a, jb_str(jb, v[i]));
		jb_add(jb, res, names[k], a);
	}
	jb_add(jb, o, "result", res);
	o = jb_done(jb, o); /* NULL: the reply says out of memory */
	if (applied)
		log_info("control", "reload applied: %zu added, %zu removed, %zu changed, %zu later",
			 r ? r->n_added : 0, r ? r->n_removed : 0,
			 r ? r->n_changed : 0, r ? r->n_later : 0);
	else
		log_warn("control", "reload refused: %s", reason ? reason : "?");
	if (cb != NULL)
		cb(o, true, arg);
	json_object_put(o);
}

static void reload_req_free(struct reload_req *q)
{
	struct reload_req **p = q->list;

	while (*p != NULL && *p != q)
		p = &(*p)->next;
	if (*p == q)
		*p = q->next;
	if (q->w != NULL)
		worker_cancel_reload(q->w, q);
	if (q->timeout != NULL)
		event_free(q->timeout);
	free(q);
}

static void reload_answer(struct worker *w, const Baton__Control__ReloadResult *r,
			  void *arg)
{
	struct reload_req *q = arg;

	q->w = NULL; /* answered: nothing to cancel */
	/* What the worker loaded, unless a newer reload is on its way (it
	 * records its own file, maybe a user's edit written since). */
	if (r != NULL && r->applied && *q->list == q)
		worker_set_config_sha(w, q->sha);
	if (r == NULL)
		reload_reply(q->cb, q->arg, false,
			     "the worker lost its control channel before answering (nothing known to be applied)",
			     NULL, 0, NULL);
	else
		reload_reply(q->cb, q->arg, r->applied,
			     r->applied ? NULL : "the worker refused the config",
			     r->problems, r->n_problems, r);
	reload_req_free(q);
}

static void reload_on_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct reload_req *q = arg;

	reload_reply(q->cb, q->arg, false,
		     "the worker did not answer in time (it may still apply the file)",
		     NULL, 0, NULL);
	reload_req_free(q);
}

void reload_start(struct event_base *base, struct worker *w,
		  const char *config_path, const char *busy,
		  supervisor_reply_cb cb, void *arg, struct reload_req **list)
{
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;
	struct reload_req *q = NULL;
	struct timeval tv = { .tv_sec = RELOAD_TIMEOUT_S };
	char why[160];
	int r;

	if (busy != NULL) {
		reload_reply(cb, arg, false, busy, NULL, 0, NULL);
		return;
	}
	if (worker_ready_info(w) == NULL || !worker_ready_info(w)->reload) {
		snprintf(why, sizeof(why), "the serving worker (%s) cannot reload: apply the file with batonctl upgrade",
			 worker_version(w));
		reload_reply(cb, arg, false, why, NULL, 0, NULL);
		return;
	}
	/* The whole file checked here first: refused with every problem. */
	if (config_load(config_path, &cfg, &pr) != 0) {
		if (pr.dropped > 0)
			config_problems_add(&pr, "(and %zu more problems)", pr.dropped);
		snprintf(why, sizeof(why), "%s has %zu problem%s: nothing applied",
			 config_path, pr.n, pr.n == 1 ? "" : "s");
		reload_reply(cb, arg, false, why, pr.msgs, pr.n, NULL);
		config_problems_clear(&pr);
		return;
	}
	config_free(cfg);
	q = calloc(1, sizeof(*q));
	if (q == NULL || (q->timeout = evtimer_new(base, reload_on_timeout, q)) == NULL) {
		free(q);
		reload_reply(cb, arg, false, "out of memory", NULL, 0, NULL);
		return;
	}
	if (releases_sha256_file(config_path, q->sha, why, sizeof(why)) < 0)
		q->sha[0] = '\0'; /* unknown: users' edits wait for the next */
	q->list = list;
	q->cb = cb;
	q->arg = arg;
	q->next = *list;
	*list = q;
	r = worker_request_reload(w, reload_answer, q);
	if (r < 0) {
		snprintf(why, sizeof(why), "cannot ask the worker: %s", strerror(-r));
		reload_reply(cb, arg, false, why, NULL, 0, NULL);
		reload_req_free(q);
		return;
	}
	q->w = w;
	evtimer_add(q->timeout, &tv);
}

void reload_detach(struct reload_req **list, void *arg)
{
	for (struct reload_req *q = *list; q != NULL; q = q->next)
		if (q->arg == arg)
			q->cb = NULL;
}

void reload_free_all(struct reload_req **list)
{
	while (*list != NULL)
		reload_req_free(*list);
}
