/* sessiond/rendezvous.c: see rendezvous.h. */
#include "sessiond/rendezvous.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/control.h"
#include "common/frame.h"
#include "common/log.h"

struct rendezvous {
	struct event_base *base;
	int fd;                 /* listening */
	struct event *ev;
	int conn;               /* the connection being read, or -1 */
	struct event *ev_conn;  /* its read, with RENDEZVOUS_TIMEOUT_MS */
	struct event *ev_resume; /* accepting again after EMFILE/ENFILE */
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	rendezvous_orphaned_fn orphaned;
	rendezvous_adopt_fn adopt;
	void *arg;
};

static void rendezvous_drop_conn(struct rendezvous *r)
{
	if (r->conn < 0)
		return;
	event_del(r->ev_conn);
	close(r->conn);
	r->conn = -1;
}

static void rendezvous_on_conn(evutil_socket_t fd, short what, void *arg)
{
	struct rendezvous *r = arg;
	struct frame_msg msg = { 0 };
	int rc, ctl;

	if (what & EV_TIMEOUT) {
		log_warn("worker", "rendezvous: no ADOPT within %d ms: closed",
			 RENDEZVOUS_TIMEOUT_MS);
		rendezvous_drop_conn(r);
		return;
	}
	/* One frame of one fragment (an empty Adopt): nothing to wait for
	 * after the first, so this never blocks the loop. */
	rc = frame_recv(r->conn, &msg, 0);
	if (rc == -EAGAIN)
		return;
	if (rc < 0 || msg.type != CONTROL_ADOPT || msg.nfds != 1 || !r->orphaned(r->arg)) {
		log_warn("worker", "rendezvous: %s: closed",
			 rc < 0 ? strerror(-rc) : msg.type != CONTROL_ADOPT ? "not ADOPT"
			 : msg.nfds != 1 ? "ADOPT without its channel" : "not orphaned");
		frame_msg_clear(&msg);
		rendezvous_drop_conn(r);
		return;
	}
	ctl = frame_msg_take_fd(&msg, 0);
	frame_msg_clear(&msg);
	rendezvous_drop_conn(r);
	r->adopt(r->arg, ctl); /* ctl transferred */
}

static void rendezvous_resume(evutil_socket_t fd, short what, void *arg)
{
	struct rendezvous *r = arg;

	event_add(r->ev, NULL);
}

static void rendezvous_on_accept(evutil_socket_t fd, short what, void *arg)
{
	struct rendezvous *r = arg;
	struct timeval tv = { RENDEZVOUS_TIMEOUT_MS / 1000,
			      (RENDEZVOUS_TIMEOUT_MS % 1000) * 1000 };
	struct ucred cred;
	socklen_t len = sizeof(cred);
	int c = accept4(r->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

	if (c < 0) {
		/* Out of fds (a busy worker): the connection stays queued and
		 * the socket readable; accepting again at once would spin the
		 * loop that serves every session. */
		if (errno == EMFILE || errno == ENFILE) {
			struct timeval p = { 0, RENDEZVOUS_PAUSE_MS * 1000 };

			event_del(r->ev);
			evtimer_add(r->ev_resume, &p);
		}
		return;
	}
	/* Only our own uid, only while orphaned, one at a time: anyone else
	 * learns nothing and holds nothing. */
	if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
	    cred.uid != geteuid() || !r->orphaned(r->arg) || r->conn >= 0) {
		close(c);
		return;
	}
	r->conn = c;
	event_assign(r->ev_conn, r->base, c, EV_READ | EV_PERSIST, rendezvous_on_conn, r);
	event_add(r->ev_conn, &tv);
}

struct rendezvous *rendezvous_new(struct event_base *base, const char *state_dir,
				  rendezvous_orphaned_fn orphaned,
				  rendezvous_adopt_fn adopt, void *arg, int *err)
{
	struct rendezvous *r = calloc(1, sizeof(*r));
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int n;

	if (r == NULL) {
		*err = -ENOMEM;
		return NULL;
	}
	r->base = base;
	r->fd = r->conn = -1;
	r->orphaned = orphaned;
	r->adopt = adopt;
	r->arg = arg;
	n = snprintf(r->path, sizeof(r->path), "%s/" RENDEZVOUS_PREFIX "%d" RENDEZVOUS_SUFFIX,
		     state_dir, (int)getpid());
	if (n < 0 || (size_t)n >= sizeof(r->path)) {
		*err = -ENAMETOOLONG;
		goto fail;
	}
	memcpy(sa.sun_path, r->path, (size_t)n + 1);
	r->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (r->fd < 0) {
		*err = -errno;
		goto fail;
	}
	unlink(r->path); /* a dead worker of a recycled pid */
	/* 0600 from the start: bind() creates the file with the umask */
	mode_t old = umask(0177);
	int rc = bind(r->fd, (struct sockaddr *)&sa, sizeof(sa));

	umask(old);
	if (rc < 0 || listen(r->fd, 4) < 0) {
		*err = -errno;
		goto fail;
	}
	r->ev = event_new(base, r->fd, EV_READ | EV_PERSIST, rendezvous_on_accept, r);
	r->ev_conn = event_new(base, -1, 0, rendezvous_on_conn, r);
	r->ev_resume = evtimer_new(base, rendezvous_resume, r);
	if (r->ev == NULL || r->ev_conn == NULL || r->ev_resume == NULL ||
	    event_add(r->ev, NULL) < 0) {
		*err = -ENOMEM;
		goto fail;
	}
	return r;
fail:
	rendezvous_free(r);
	return NULL;
}

void rendezvous_free(struct rendezvous *r)
{
	if (r == NULL)
		return;
	if (r->ev_conn != NULL) {
		rendezvous_drop_conn(r);
		event_free(r->ev_conn);
	}
	if (r->ev != NULL)
		event_free(r->ev);
	if (r->ev_resume != NULL)
		event_free(r->ev_resume);
	if (r->fd >= 0) {
		close(r->fd);
		unlink(r->path);
	}
	free(r);
}

const char *rendezvous_path(const struct rendezvous *r)
{
	return r->path;
}
