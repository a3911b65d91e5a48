/* supervisor/listeners.c: see listeners.h. */
#include "supervisor/listeners.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/config.h"
#include "common/log.h"
#include "supervisor/sysd.h"

#define LISTEN_BACKLOG 1024

struct listeners {
	int *fds;
	char **names; /* "irc ADDR:PORT" or "ircs ADDR:PORT": the worker does
			 TLS on ircs listeners */
	enum listener_origin *origins;
	size_t n;
	const char *kind; /* while binding: the kind of the current entry */
	enum listener_origin origin; /* while adding: where the fd comes from */
};

static void listeners_addr_name(const struct sockaddr *sa, socklen_t salen,
				char *name, size_t namelen)
{
	char host[INET6_ADDRSTRLEN] = "?", port[16] = "?";

	getnameinfo(sa, salen, host, sizeof(host), port, sizeof(port),
		    NI_NUMERICHOST | NI_NUMERICSERV);
	if (sa->sa_family == AF_INET6)
		snprintf(name, namelen, "[%s]:%s", host, port);
	else
		snprintf(name, namelen, "%s:%s", host, port);
}

static int listeners_bind_ai(const struct addrinfo *ai, char *name,
			     size_t namelen)
{
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
	listeners_addr_name(ai->ai_addr, ai->ai_addrlen, name, namelen);
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
	enum listener_origin *origins;
	char *name = NULL;

	if (asprintf(&name, "%s %s", l->kind, addr) < 0)
		name = NULL;
	fds = realloc(l->fds, (l->n + 1) * sizeof(*fds));
	if (fds)
		l->fds = fds;
	names = realloc(l->names, (l->n + 1) * sizeof(*names));
	if (names)
		l->names = names;
	origins = realloc(l->origins, (l->n + 1) * sizeof(*origins));
	if (origins)
		l->origins = origins;
	if (name == NULL || fds == NULL || names == NULL || origins == NULL) {
		free(name);
		close(fd);
		return -ENOMEM;
	}
	l->fds[l->n] = fd;
	l->names[l->n] = name;
	l->origins[l->n] = l->origin;
	l->n++;
	return 0;
}

int listeners_bind(const struct baton_config *cfg, struct listeners **out,
		   char *err, size_t errlen)
{
	return listeners_open(cfg, NULL, out, err, errlen);
}

/* --- fds from systemd ----------------------------------------------------- */

/* An inherited fd: its bound address, or family AF_UNSPEC when it is not a
 * listening stream socket. */
struct passed_addr {
	struct sockaddr_storage ss;
	socklen_t len;
	char text[INET6_ADDRSTRLEN + 16];
};

static void listeners_passed_addr(int fd, struct passed_addr *a)
{
	int type = 0, acc = 0;
	socklen_t tl = sizeof(type), al = sizeof(acc);

	memset(a, 0, sizeof(*a));
	a->ss.ss_family = AF_UNSPEC;
	snprintf(a->text, sizeof(a->text), "?");
	a->len = sizeof(a->ss);
	if (getsockname(fd, (struct sockaddr *)&a->ss, &a->len) < 0 ||
	    (a->ss.ss_family != AF_INET && a->ss.ss_family != AF_INET6)) {
		a->ss.ss_family = AF_UNSPEC;
		return;
	}
	listeners_addr_name((struct sockaddr *)&a->ss, a->len, a->text,
			    sizeof(a->text));
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 ||
	    type != SOCK_STREAM ||
	    getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &al) < 0 || !acc)
		a->ss.ss_family = AF_UNSPEC;
}

static int listeners_same_addr(const struct passed_addr *a,
			       const struct addrinfo *ai)
{
	if (a->ss.ss_family != ai->ai_family)
		return 0;
	if (ai->ai_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)&a->ss,
					 *y = (const void *)ai->ai_addr;

		return x->sin_port == y->sin_port &&
		       x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	if (ai->ai_family == AF_INET6) {
		const struct sockaddr_in6 *x = (const void *)&a->ss,
					  *y = (const void *)ai->ai_addr;

		return x->sin6_port == y->sin6_port &&
		       memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
	}
	return 0;
}

/* Give a stored fd back to systemd's fd store: close ours, FDSTOREREMOVE. */
static void listeners_release_stored(struct sysd_fd *f, const char *why)
{
	char msg[SYSD_MSG_MAX];

	log_info("supervisor", "fd store: releasing %s (fd %d): %s", f->name,
		 f->fd, why);
	close(f->fd);
	f->fd = -1;
	if (sysd_msg_fdstore_remove(msg, sizeof(msg), f->name) > 0)
		sysd_send(msg);
}

/* The sockets of baton.socket, listed for a message: "irc 0.0.0.0:6667, ..." */
static void listeners_socket_list(const struct sysd_fds *p,
				  const struct passed_addr *pa, char *buf,
				  size_t len)
{
	size_t o = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < p->n && o + 1 < len; i++) {
		int w;

		if (sysd_fd_class(p->fds[i].name, NULL) != SYSD_FD_SOCKET)
			continue;
		w = snprintf(buf + o, len - o, "%s%s %s", o ? ", " : "",
			     p->fds[i].name, pa[i].text);
		if (w < 0)
			break;
		o += (size_t)w;
	}
	if (o >= len && len > 4)
		memcpy(buf + len - 4, "...", 4);
}

/* Config line `cl` resolved to `ai`: take a matching inherited fd (adding it
 * to l), or return 0 with *found false; -errno with err on a disagreement. */
static int listeners_adopt_one(const struct baton_config *cfg,
			       const struct config_listen *cl,
			       const struct addrinfo *ai, struct sysd_fds *p,
			       const struct passed_addr *pa, struct listeners *l,
			       bool *found, char *err, size_t errlen)
{
	*found = false;
	for (size_t i = 0; i < p->n; i++) {
		struct sysd_fd *f = &p->fds[i];
		char kind[8];
		enum sysd_fd_class c;
		int fd, fl;

		if (f->fd < 0 || !listeners_same_addr(&pa[i], ai))
			continue;
		c = sysd_fd_class(f->name, kind);
		if (c != SYSD_FD_SOCKET && c != SYSD_FD_LISTENER)
			continue;
		if (strcmp(kind, cl->kind) != 0) {
			if (c == SYSD_FD_LISTENER) {
				listeners_release_stored(f, "its kind changed in the config");
				continue;
			}
			snprintf(err, errlen, "%s:%d: [listen] %s = %s:%s, but systemd passes %s as '%s' (FileDescriptorName= in baton.socket): the two must agree",
				 cfg->path, cl->line, cl->kind, cl->host, cl->port,
				 pa[i].text, f->name);
			return -EINVAL;
		}
		fd = f->fd;
		fl = fcntl(fd, F_GETFL);
		if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
			snprintf(err, errlen, "systemd socket '%s' (fd %d): %s",
				 f->name, fd, strerror(errno));
			return -errno;
		}
		l->kind = cl->kind;
		l->origin = c == SYSD_FD_SOCKET ? LISTENER_FROM_SOCKET_UNIT
						: LISTENER_FROM_FD_STORE;
		f->fd = -1; /* taken, or closed by listeners_add on failure */
		if (listeners_add(l, fd, pa[i].text) < 0) {
			snprintf(err, errlen, "out of memory");
			return -ENOMEM;
		}
		*found = true;
		return 0;
	}
	return 0;
}

int listeners_open(const struct baton_config *cfg, struct sysd_fds *passed,
		   struct listeners **out, char *err, size_t errlen)
{
	struct listeners *l = calloc(1, sizeof(*l));
	struct passed_addr *pa = NULL;
	struct sysd_fds none = { 0 }, *p = passed ? passed : &none;
	size_t nsocket = 0;
	char why[256];
	int r = -ENOMEM;

	*out = NULL;
	if (l == NULL || (p->n && (pa = calloc(p->n, sizeof(*pa))) == NULL)) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	/* Classify what systemd passed before matching anything. */
	for (size_t i = 0; i < p->n; i++) {
		struct sysd_fd *f = &p->fds[i];
		enum sysd_fd_class c = sysd_fd_class(f->name, NULL);

		if (f->fd < 0)
			continue;
		listeners_passed_addr(f->fd, &pa[i]);
		if (c == SYSD_FD_CUSTODY) {
			listeners_release_stored(f, "custody fds are not adopted by this version");
			continue;
		}
		if (c == SYSD_FD_UNKNOWN) {
			snprintf(err, errlen, "systemd passed fd %d named '%s': not a baton listener (name the sockets of baton.socket FileDescriptorName=irc or ircs)",
				 f->fd, f->name);
			r = -EINVAL;
			goto out;
		}
		if (pa[i].ss.ss_family == AF_UNSPEC) {
			if (c == SYSD_FD_LISTENER) {
				listeners_release_stored(f, "not a listening TCP socket");
				continue;
			}
			snprintf(err, errlen, "systemd socket '%s' (fd %d) is not a listening TCP socket (baton.socket: ListenStream=HOST:PORT)",
				 f->name, f->fd);
			r = -EINVAL;
			goto out;
		}
		if (c == SYSD_FD_SOCKET)
			nsocket++;
	}
	for (size_t i = 0; i < cfg->nlistens; i++) {
		const struct config_listen *cl = &cfg->listens[i];
		struct addrinfo hints = { 0 }, *res = NULL;
		int gai;

		l->kind = cl->kind;
		if (p->n == 0)
			goto bind;
		hints.ai_family = AF_UNSPEC;
		hints.ai_socktype = SOCK_STREAM;
		hints.ai_flags = AI_PASSIVE;
		gai = getaddrinfo(cl->host[0] ? cl->host : NULL, cl->port, &hints, &res);
		if (gai != 0) {
			snprintf(err, errlen, "%s:%d: cannot resolve %s:%s: %s",
				 cfg->path, cl->line, cl->host, cl->port,
				 gai_strerror(gai));
			r = -EADDRNOTAVAIL;
			goto out;
		}
		for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
			char name[INET6_ADDRSTRLEN + 16], have[512];
			bool found;
			int fd;

			r = listeners_adopt_one(cfg, cl, ai, p, pa, l, &found,
						err, errlen);
			if (r < 0) {
				freeaddrinfo(res);
				goto out;
			}
			if (found)
				continue;
			listeners_addr_name(ai->ai_addr, ai->ai_addrlen, name,
					    sizeof(name));
			if (nsocket > 0) {
				/* Not an error: bound here and kept in the
				 * fd store (a port baton.socket does not
				 * know survives restarts all the same). But
				 * say it, in case it was meant to be there. */
				listeners_socket_list(p, pa, have, sizeof(have));
				log_warn("supervisor", "%s:%d: [listen] %s = %s:%s: baton.socket has no socket on %s (it has: %s): bound by the supervisor (add ListenStream=%s with FileDescriptorName=%s to baton.socket to have systemd hold it)",
					 cfg->path, cl->line, cl->kind, cl->host,
					 cl->port, name, have, name, cl->kind);
			}
			fd = listeners_bind_ai(ai, name, sizeof(name));
			if (fd < 0) {
				snprintf(err, errlen, "%s:%d: cannot listen on %s:%s: %s",
					 cfg->path, cl->line, cl->host, cl->port,
					 strerror(-fd));
				freeaddrinfo(res);
				r = fd;
				goto out;
			}
			l->origin = LISTENER_BOUND;
			if ((r = listeners_add(l, fd, name)) < 0) {
				snprintf(err, errlen, "out of memory");
				freeaddrinfo(res);
				goto out;
			}
		}
		freeaddrinfo(res);
		continue;
bind:
		l->origin = LISTENER_BOUND;
		r = listeners_bind_addr(cl->host, cl->port, listeners_add, l,
					why, sizeof(why));
		if (r < 0) {
			snprintf(err, errlen, "%s:%d: %s", cfg->path, cl->line,
				 why);
			goto out;
		}
	}
	/* What the config did not take. */
	for (size_t i = 0; i < p->n; i++) {
		struct sysd_fd *f = &p->fds[i];

		if (f->fd < 0)
			continue;
		if (sysd_fd_class(f->name, NULL) == SYSD_FD_LISTENER) {
			listeners_release_stored(f, "no [listen] line has this address any more");
			continue;
		}
		snprintf(err, errlen, "systemd socket '%s' (fd %d) on %s matches no [listen] line of %s: add `%s = %s` there, or remove its ListenStream= from baton.socket",
			 f->name, f->fd, pa[i].text, cfg->path, f->name, pa[i].text);
		r = -EINVAL;
		goto out;
	}
	*out = l;
	l = NULL; /* transferred */
	r = 0;
out:
	free(pa);
	listeners_free(l);
	return r;
}

struct listeners *listeners_adopt(int *fds, char **names, size_t n)
{
	struct listeners *l = calloc(1, sizeof(*l));

	if (l == NULL)
		return NULL;
	l->origins = calloc(n ? n : 1, sizeof(*l->origins));
	if (l->origins == NULL) {
		free(l);
		return NULL;
	}
	for (size_t i = 0; i < n; i++)
		l->origins[i] = LISTENER_FROM_ORPHAN;
	l->fds = fds;
	l->names = names;
	l->n = n;
	return l;
}

int listeners_store(const struct listeners *l)
{
	int stored = 0;

	for (size_t i = 0; l && i < l->n; i++) {
		char fdname[SYSD_FDNAME_MAX + 1], msg[SYSD_MSG_MAX];
		int r;

		if (l->origins[i] != LISTENER_BOUND)
			continue;
		if (sysd_listener_fdname(l->names[i], fdname, sizeof(fdname)) < 0 ||
		    sysd_msg_fdstore(msg, sizeof(msg), fdname) < 0) {
			log_warn("supervisor", "fd store: no valid name for %s: not stored",
				 l->names[i]);
			continue;
		}
		r = sysd_send_fds(msg, &l->fds[i], 1);
		if (r < 0)
			log_warn("supervisor", "fd store: %s: %s", fdname, strerror(-r));
		else if (r > 0)
			stored++;
	}
	return stored;
}

enum listener_origin listeners_origin(const struct listeners *l, size_t i)
{
	return l->origins[i];
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
	free(l->origins);
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

static bool listeners_no_bind_check;

void listeners_check_skip_bind(void)
{
	listeners_no_bind_check = true;
}

void listeners_check(const struct baton_config *cfg,
		     struct config_problems *problems)
{
	if (listeners_no_bind_check)
		return;
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
