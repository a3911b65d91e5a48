/* supervisor/metrics.c: see metrics.h. */
#include "supervisor/metrics.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

#include "supervisor/exposition.h"
#include "supervisor/listeners.h"
#include "supervisor/supervisor.h"

static struct {
	metrics_extra_fn fn;
	void *arg;
} metrics_extras[METRICS_EXTRA_MAX];

struct metrics {
	struct evhttp *http;
	struct supervisor *sup;
	/* Ours until evhttp_accept_socket() succeeds; from then on the evhttp
	 * owns it (its listener closes it in evhttp_free()) and this is -1. */
	int fd;
};

int metrics_split_hostport(char *hostport, char **host, char **port)
{
	char *colon;

	if (hostport[0] == '[') {
		char *end = strchr(hostport, ']');

		if (end == NULL || end[1] != ':')
			return -EINVAL;
		*end = '\0';
		*host = hostport + 1;
		*port = end + 2;
		return 0;
	}
	colon = strrchr(hostport, ':');
	if (colon == NULL || colon[1] == '\0')
		return -EINVAL;
	*colon = '\0';
	*host = hostport;
	*port = colon + 1;
	return 0;
}

int metrics_set_extra(metrics_extra_fn fn, void *arg)
{
	size_t free_slot = METRICS_EXTRA_MAX;

	for (size_t i = 0; i < METRICS_EXTRA_MAX; i++) {
		if (metrics_extras[i].fn == fn && metrics_extras[i].arg == arg)
			return -EEXIST;
		if (metrics_extras[i].fn == NULL && free_slot == METRICS_EXTRA_MAX)
			free_slot = i;
	}
	if (fn == NULL || free_slot == METRICS_EXTRA_MAX)
		return fn == NULL ? -EINVAL : -ENOSPC;
	metrics_extras[free_slot].fn = fn;
	metrics_extras[free_slot].arg = arg;
	return 0;
}

void metrics_unset_extra(metrics_extra_fn fn, void *arg)
{
	for (size_t i = 0; i < METRICS_EXTRA_MAX; i++)
		if (metrics_extras[i].fn == fn && metrics_extras[i].arg == arg) {
			metrics_extras[i].fn = NULL;
			metrics_extras[i].arg = NULL;
		}
}

void metrics_write(struct supervisor *sup, struct evbuffer *out)
{
	exposition_write(sup, out);
	/* In slot order; a callback may unregister itself (its slot is
	 * cleared, the others are unaffected). */
	for (size_t i = 0; i < METRICS_EXTRA_MAX; i++)
		if (metrics_extras[i].fn != NULL)
			metrics_extras[i].fn(out, metrics_extras[i].arg);
}

static void metrics_on_request(struct evhttp_request *req, void *arg)
{
	struct metrics *m = arg;
	const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
	struct evbuffer *body;

	if (path == NULL || strcmp(path, "/metrics") != 0) {
		evhttp_send_error(req, HTTP_NOTFOUND, "try /metrics");
		return;
	}
	body = evbuffer_new();
	if (body == NULL) {
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		return;
	}
	metrics_write(m->sup, body);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "text/plain; version=0.0.4");
	evhttp_send_reply(req, HTTP_OK, "OK", body);
	evbuffer_free(body);
}

struct metrics *metrics_new(struct event_base *base, struct supervisor *sup,
			    const char *hostport, char *err, size_t errlen)
{
	struct metrics *m = NULL, *made = NULL;
	char *copy = strdup(hostport), *host, *port, name[128];
	int fd = -1, r;

	if (copy == NULL) {
		r = -ENOMEM;
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	if (metrics_split_hostport(copy, &host, &port) < 0) {
		r = -EINVAL;
		snprintf(err, errlen, "metrics: expected HOST:PORT, got '%s'", hostport);
		goto out;
	}
	fd = listeners_bind_one(host, port, name, sizeof(name), err, errlen);
	if (fd < 0) {
		r = fd;
		goto out;
	}
	m = calloc(1, sizeof(*m));
	if (m != NULL)
		m->fd = -1;
	if (m == NULL || (m->http = evhttp_new(base)) == NULL) {
		r = -ENOMEM;
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	m->sup = sup;
	m->fd = fd;
	fd = -1; /* transferred to m */
	evhttp_set_allowed_methods(m->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
	evhttp_set_gencb(m->http, metrics_on_request, m);
	if (evhttp_accept_socket(m->http, m->fd) < 0) {
		r = -EIO;
		snprintf(err, errlen, "metrics: cannot serve on %s", name);
		goto out;
	}
	m->fd = -1; /* transferred to m->http: evhttp_free() closes it */
	made = m;
	m = NULL;
	r = 0;
out:
	if (fd >= 0)
		close(fd);
	metrics_free(m);
	free(copy);
	if (made == NULL)
		errno = -r;
	return made;
}

void metrics_free(struct metrics *m)
{
	if (m == NULL)
		return;
	if (m->http)
		evhttp_free(m->http);
	if (m->fd >= 0)
		close(m->fd);
	free(m);
}
