/* supervisor/orphans.c: see orphans.h. */
#include "supervisor/orphans.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/control.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/util.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

void orphan_clear(struct orphan *o)
{
	if (o->ctl >= 0)
		close(o->ctl);
	if (o->pidfd >= 0)
		close(o->pidfd);
	free(o->binary);
	if (o->ready)
		baton__control__ready__free_unpacked(o->ready, NULL);
	for (size_t i = 0; i < o->nlisten; i++) {
		if (o->listen_fds && o->listen_fds[i] >= 0)
			close(o->listen_fds[i]);
		if (o->listen_names)
			free(o->listen_names[i]);
	}
	free(o->listen_fds);
	free(o->listen_names);
	memset(o, 0, sizeof(*o));
	o->ctl = o->pidfd = -1;
}

/* READY (adopted), then LISTENERS with the fds. */
static int orphan_handshake(struct orphan *o)
{
	struct frame_msg m = { 0 };
	int rc = frame_recv(o->ctl, &m, ORPHANS_TIMEOUT_MS);

	if (rc < 0)
		return rc;
	if (m.type != CONTROL_READY ||
	    !(o->ready = baton__control__ready__unpack(NULL, m.len, m.data)) ||
	    !o->ready->has_adopted || !o->ready->adopted) {
		frame_msg_clear(&m);
		return -EPROTO;
	}
	frame_msg_clear(&m);
	if ((rc = frame_recv(o->ctl, &m, ORPHANS_TIMEOUT_MS)) < 0)
		return rc;
	Baton__Control__Listeners *l = m.type == CONTROL_LISTENERS
		? baton__control__listeners__unpack(NULL, m.len, m.data) : NULL;

	if (l == NULL || l->n_names != m.nfds) {
		if (l)
			baton__control__listeners__free_unpacked(l, NULL);
		frame_msg_clear(&m);
		return -EPROTO;
	}
	o->listen_fds = calloc(m.nfds ? m.nfds : 1, sizeof(int));
	o->listen_names = calloc(m.nfds ? m.nfds : 1, sizeof(char *));
	rc = o->listen_fds && o->listen_names ? 0 : -ENOMEM;
	for (size_t i = 0; rc == 0 && i < m.nfds; i++) {
		o->listen_fds[i] = frame_msg_take_fd(&m, i);
		o->listen_names[i] = util_strdup(l->names[i]);
		o->nlisten++;
		if (!o->listen_names[i])
			rc = -ENOMEM;
	}
	baton__control__listeners__free_unpacked(l, NULL);
	frame_msg_clear(&m);
	return rc;
}

/* 1: adopted; 0: not an orphan (stale, or it has a supervisor); -1: it
 * refused (it has a supervisor, or has not noticed yet that it has none);
 * -2: a live worker that did not answer in time (still in its migration)
 * or that cannot be watched (no pidfd): the caller must not start another
 * worker beside it. */
static int orphan_try(const char *path, struct orphan *o)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct ucred cred;
	socklen_t clen = sizeof(cred);
	int c, sv[2] = { -1, -1 }, rc;
	char exe[64];

	if (strlen(path) >= sizeof(sa.sun_path))
		return 0;
	strcpy(sa.sun_path, path);
	c = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (c < 0)
		return 0;
	if (connect(c, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (errno == ECONNREFUSED) {
			log_info("supervisor", "%s: no worker listens (it died): removed", path);
			unlink(path);
		}
		close(c);
		return 0;
	}
	if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0 ||
	    frame_socketpair(sv) < 0) {
		close(c);
		return 0;
	}
	/* Now, while the connection keeps the worker from being reaped
	 * unnoticed (its pid cannot be another process's yet): the adopted
	 * worker is not our child, its pidfd is how we see it die and how
	 * it is killed. Without one it cannot be watched: not adopted. */
	o->pidfd = (int)syscall(SYS_pidfd_open, cred.pid, 0);
	if (o->pidfd < 0) {
		log_error("supervisor", "%s (pid %d): pidfd_open: %s: cannot watch it, not adopted",
			  path, (int)cred.pid, strerror(errno));
		close(c);
		close(sv[0]);
		close(sv[1]);
		return -2;
	}
	rc = frame_send(c, CONTROL_ADOPT, "", 0, &sv[1], 1, ORPHANS_TIMEOUT_MS);
	close(sv[1]);
	close(c);
	o->ctl = sv[0];
	o->pid = cred.pid;
	if (rc == 0)
		rc = orphan_handshake(o);
	if (rc < 0) {
		/* -ECONNRESET: it closed our channel unread; -EPIPE: it closed
		 * the connection before our ADOPT was sent (accept and close
		 * are that fast): either way it refused, it has a live
		 * supervisor -- or has not read yet that its supervisor is gone
		 * (a restart: wait_ms asks again) -- or is not a baton worker.
		 * A live one that did not answer in time is still serving:
		 * never start one beside it. */
		bool refused = rc == -ECONNRESET || rc == -EPIPE;
		bool alive = rc == -ETIMEDOUT && kill(o->pid, 0) == 0;

		if (!refused)
			log_warn("supervisor", "%s (pid %d): adoption failed: %s%s", path,
				 (int)o->pid, strerror(-rc),
				 alive ? " (it serves on: not starting another worker)" : "");
		orphan_clear(o);
		return refused ? -1 : alive ? -2 : 0;
	}
	snprintf(exe, sizeof(exe), "/proc/%d/exe", (int)o->pid);
	char target[PATH_MAX];
	ssize_t n = readlink(exe, target, sizeof(target) - 1);

	target[n > 0 ? n : 0] = '\0';
	/* Replaced on disk since it started (a package upgrade): the path
	 * names another binary now, or none ("PATH (deleted)"), and a crash
	 * restart would exec nothing. Its own image, read through /proc
	 * while it lives, is what gets installed as its release (and a
	 * restart then starts that copy). */
	if (n > 10 && strcmp(target + n - 10, " (deleted)") == 0) {
		log_warn("supervisor", "orphaned worker pid %d: its binary %s was replaced; "
			 "taken from %s", (int)o->pid, target, exe);
		snprintf(target, sizeof(target), "%s", exe);
	}
	o->binary = util_strdup(n > 0 ? target : "baton-sessiond");
	log_info("supervisor", "adopted orphaned worker pid %d (%s, %s) with %zu listener(s)",
		 (int)o->pid, o->ready->version, o->binary ? o->binary : "?", o->nlisten);
	return o->binary ? 1 : (orphan_clear(o), 0);
}

int orphans_adopt(const char *state_dir, struct orphan *o, int wait_ms)
{
	DIR *d = opendir(state_dir);
	struct dirent *e;
	int found = 0, others = 0, unanswered = 0, refusing = 0;

	memset(o, 0, sizeof(*o));
	o->ctl = o->pidfd = -1;
	if (d == NULL)
		return 0;
	while ((e = readdir(d)) != NULL) {
		size_t n = strlen(e->d_name);
		char path[PATH_MAX];
		struct orphan other;

		if (strncmp(e->d_name, "worker-", 7) != 0 || n < 12 ||
		    strcmp(e->d_name + n - 5, ".sock") != 0)
			continue;
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", state_dir, e->d_name) >= sizeof(path))
			continue;
		if (!found) {
			int64_t until = clock_mono_ms() + wait_ms;

			while ((found = orphan_try(path, o)) == -1 && clock_mono_ms() < until)
				usleep(20000);
			if (found == -2)
				unanswered++;
			/* Still refusing when the wait ends: a live worker
			 * (it accepted) with a supervisor, or whose supervisor
			 * just exited (`systemctl restart`) unseen yet: under
			 * systemd the listeners come passed, no bind would
			 * stop a second worker serving beside it. */
			if (found == -1)
				refusing++;
			found = found > 0;
			continue;
		}
		/* Another orphan: adopted only to learn it exists, then let go
		 * (its new channel closes: it is orphaned again, serving on). */
		memset(&other, 0, sizeof(other));
		other.ctl = other.pidfd = -1;
		int r = orphan_try(path, &other);

		if (r == -2)
			unanswered++;
		if (r == 1) {
			log_error("supervisor", "another orphaned worker, pid %d (%s), still serves "
				  "besides pid %d (%s)", (int)other.pid, other.ready->version,
				  (int)o->pid, o->ready->version);
			others++;
			orphan_clear(&other);
		}
	}
	closedir(d);
	if (refusing) {
		log_error("supervisor", "%d live worker(s) still refuse the adoption after %d ms "
			  "(another supervisor runs for them, or theirs just exited and they "
			  "have not seen it yet): not starting another worker beside them; "
			  "try again in a moment", refusing, wait_ms);
		orphan_clear(o);
		return 2;
	}
	if (unanswered) {
		log_error("supervisor", "%d live worker(s) did not answer the adoption in time "
			  "(still in a migration?) or cannot be watched: not starting another "
			  "worker beside them; try again in a moment", unanswered);
		orphan_clear(o);
		return 2;
	}
	if (found && others) {
		/* Each holds sessions (an empty orphan exits): adopted, one
		 * would be told to start the configured sessions it does not
		 * hold -- the other's, a second time -- and the other would
		 * serve on unmanaged. Both serve on as they are. */
		log_error("supervisor", "%d orphaned workers serve (a supervisor died during a "
			  "canary?): none adopted; stop all but one (kill PID: its users' "
			  "sessions restart in the one adopted), then start the supervisor again",
			  others + 1);
		orphan_clear(o);
		return 2;
	}
	return found;
}
