/* supervisor/listeners.c: see listeners.h. */
#include "supervisor/listeners.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/config.h"

#define LISTEN_BACKLOG 1024

struct listeners {
	int *fds;
	char **names; /* "irc ADDR:PORT" or "ircs ADDR:PORT": the worker does
			 TLS on ircs listeners */
	size_t n;
	const char *kind; /* while binding: the kind of the current entry */
};

static int listeners_bind_ai(const struct addrinfo *ai, char *name,
			     size_t namelen)
{
	char host[INET6_ADDRSTRLEN] = "?", port[16] = "?";
	int fd, one = 1, r;

	fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
		    ai->ai_protocol);
	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	/* One socket per address family: a v6 wildcard must not also claim v4,
	 * or the v4 bind of the same host name would fail. */
	if (ai->ai_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 ||
	    listen(fd, LISTEN_BACKLOG) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	getnameinfo(ai->ai_addr, ai->ai_addrlen, host, sizeof(host), port,
		    sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV);
	if (ai->ai_family == AF_INET6)
		snprintf(name, namelen, "[%s]:%s", host, port);
	else
		snprintf(name, namelen, "%s:%s", host, port);
	return fd;
}

/* Binds every address `host` resolves to; calls add() for each fd (which
 * takes it). Returns 0 or -errno with err set. */
static int listeners_bind_addr(const char *host, const char *port,
			       int (*add)(void *ctx, int fd, const char *name),
			       void *ctx, char *err, size_t errlen)
{
	struct addrinfo hints = { 0 }, *res = NULL;
	int r, gai;

	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE;
	gai = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
	if (gai != 0) {
		snprintf(err, errlen, "cannot resolve %s:%s: %s", host, port,
			 gai_strerror(gai));
		return -EADDRNOTAVAIL;
	}
	r = 0;
	for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
		char name[INET6_ADDRSTRLEN + 16];
		int fd = listeners_bind_ai(ai, name, sizeof(name));

		if (fd < 0) {
			snprintf(err, errlen, "cannot listen on %s:%s: %s", host,
				 port, strerror(-fd));
			r = fd;
			goto out;
		}
		r = add(ctx, fd, name); /* takes fd */
		if (r < 0) {
			snprintf(err, errlen, "%s", strerror(-r));
			goto out;
		}
	}
out:
	freeaddrinfo(res);
	return r;
}

static int listeners_add(void *ctx, int fd, const char *addr)
{
	struct listeners *l = ctx;
	int *fds;
	char **names;
	char *name = NULL;

	if (asprintf(&name, "%s %s", l->kind, addr) < 0)
		name = NULL;
	fds = realloc(l->fds, (l->n + 1) * sizeof(*fds));
	if (fds)
		l->fds = fds;
	names = realloc(l->names, (l->n + 1) * sizeof(*names));
	if (names)
		l->names = names;
	if (name == NULL || fds == NULL || names == NULL) {
		free(name);
		close(fd);
		return -ENOMEM;
	}
	l->fds[l->n] = fd;
	l->names[l->n] = name;
	l->n++;
	return 0;
}

int listeners_bind(const struct baton_config *cfg, struct listeners **out,
		   char *err, size_t errlen)
{
	struct listeners *l = calloc(1, sizeof(*l));
	char why[256];
	int r = -ENOMEM;

	*out = NULL;
	if (l == NULL) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < cfg->nlistens; i++) {
		const struct config_listen *cl = &cfg->listens[i];

		l->kind = cl->kind;
		r = listeners_bind_addr(cl->host, cl->port, listeners_add, l,
					why, sizeof(why));
		if (r < 0) {
			snprintf(err, errlen, "%s:%d: %s", cfg->path, cl->line,
				 why);
			goto out;
		}
	}
	*out = l;
	l = NULL; /* transferred */
	r = 0;
out:
	listeners_free(l);
	return r;
}

struct listeners *listeners_adopt(int *fds, char **names, size_t n)
{
	struct listeners *l = calloc(1, sizeof(*l));

	if (l == NULL)
		return NULL;
	l->fds = fds;
	l->names = names;
	l->n = n;
	return l;
}

void listeners_free(struct listeners *l)
{
	if (l == NULL)
		return;
	for (size_t i = 0; i < l->n; i++) {
		close(l->fds[i]);
		free(l->names[i]);
	}
	free(l->fds);
	free(l->names);
	free(l);
}

size_t listeners_count(const struct listeners *l) { return l ? l->n : 0; }
const int *listeners_fds(const struct listeners *l) { return l->fds; }

const char *const *listeners_names(const struct listeners *l)
{
	return (const char *const *)l->names;
}

static int listeners_add_close(void *ctx, int fd, const char *name)
{
	close(fd);
	return 0;
}

void listeners_check(const struct baton_config *cfg,
		     struct config_problems *problems)
{
	for (size_t i = 0; i < cfg->nlistens; i++) {
		const struct config_listen *cl = &cfg->listens[i];
		char why[256];

		if (listeners_bind_addr(cl->host, cl->port, listeners_add_close,
					NULL, why, sizeof(why)) < 0)
			config_problems_add(problems, "%s:%d: %s", cfg->path,
					    cl->line, why);
	}
}

struct bind_one {
	int fd;
	char *name;
	size_t namelen;
};

static int listeners_add_one(void *ctx, int fd, const char *name)
{
	struct bind_one *b = ctx;

	if (b->fd >= 0) { /* first address wins */
		close(fd);
		return 0;
	}
	b->fd = fd;
	snprintf(b->name, b->namelen, "%s", name);
	return 0;
}

int listeners_bind_one(const char *host, const char *port, char *name,
		       size_t namelen, char *err, size_t errlen)
{
	struct bind_one b = { .fd = -1, .name = name, .namelen = namelen };
	int r = listeners_bind_addr(host, port, listeners_add_one, &b, err,
				    errlen);

	if (r < 0) {
		if (b.fd >= 0)
			close(b.fd);
		return r;
	}
	return b.fd >= 0 ? b.fd : -EADDRNOTAVAIL;
}
