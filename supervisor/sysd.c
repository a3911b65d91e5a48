/* supervisor/sysd.c: see sysd.h. */
#include "supervisor/sysd.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <systemd/sd-bus.h>
#include <systemd/sd-daemon.h>

#include "common/clock.h"
#include "common/log.h"

/* A plain decimal number: digits only, no sign, no spaces, at most `max`.
 * Returns 0 or -EINVAL / -E2BIG. */
static int sysd_parse_uint(const char *s, unsigned long long max,
			   unsigned long long *out)
{
	unsigned long long v = 0;

	if (s == NULL || *s == '\0')
		return -EINVAL;
	for (const char *p = s; *p; p++) {
		if (*p < '0' || *p > '9')
			return -EINVAL;
		if (v > (max - (unsigned)(*p - '0')) / 10)
			return -E2BIG;
		v = v * 10 + (unsigned)(*p - '0');
	}
	*out = v;
	return 0;
}

int sysd_fdname_valid(const char *name)
{
	size_t n = 0;

	if (name == NULL || name[0] == '\0')
		return 0;
	for (const char *p = name; *p; p++, n++) {
		/* systemd's fdname_is_valid(): printable ASCII but ':' */
		if ((unsigned char)*p < ' ' || (unsigned char)*p >= 127 || *p == ':')
			return 0;
	}
	return n <= SYSD_FDNAME_MAX;
}

int sysd_fds_parse(const char *listen_pid, const char *listen_fds,
		   const char *listen_fdnames, pid_t self, struct sysd_fds *out,
		   char *err, size_t errlen)
{
	unsigned long long pid, n;
	const char *p;
	int r;

	out->fds = NULL;
	out->n = 0;
	if (err && errlen)
		err[0] = '\0';
	if (listen_pid == NULL || listen_fds == NULL)
		return 0;
	r = sysd_parse_uint(listen_pid, (unsigned long long)INT32_MAX, &pid);
	if (r < 0 || pid == 0) {
		snprintf(err, errlen, "LISTEN_PID=%.32s: not a process id", listen_pid);
		return -EINVAL;
	}
	if ((pid_t)pid != self) {
		/* Meant for a process that started us: not ours to take. */
		snprintf(err, errlen, "LISTEN_PID=%llu is not this process (%d): its %.16s fd(s) ignored",
			 pid, (int)self, listen_fds);
		return 0;
	}
	r = sysd_parse_uint(listen_fds, SYSD_FDS_MAX, &n);
	if (r == -E2BIG) {
		snprintf(err, errlen, "LISTEN_FDS=%.32s: more than %d fds", listen_fds,
			 SYSD_FDS_MAX);
		return -E2BIG;
	}
	if (r < 0) {
		snprintf(err, errlen, "LISTEN_FDS=%.32s: not a number of fds", listen_fds);
		return -EINVAL;
	}
	if (n == 0)
		return 0;
	out->fds = calloc(n, sizeof(*out->fds));
	if (out->fds == NULL) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	p = listen_fdnames;
	for (size_t i = 0; i < n; i++) {
		struct sysd_fd *f = &out->fds[i];
		size_t len;
		const char *end;

		f->fd = SYSD_FDS_START + (int)i;
		if (listen_fdnames == NULL) {
			snprintf(f->name, sizeof(f->name), "unknown");
			continue;
		}
		if (p == NULL) {
			snprintf(err, errlen, "LISTEN_FDNAMES has %zu name(s) for LISTEN_FDS=%llu",
				 i, n);
			goto bad;
		}
		end = strchr(p, ':');
		len = end ? (size_t)(end - p) : strlen(p);
		if (len == 0 || len > SYSD_FDNAME_MAX) {
			snprintf(err, errlen, "LISTEN_FDNAMES: name %zu is %s", i + 1,
				 len ? "longer than 255 characters" : "empty");
			goto bad;
		}
		memcpy(f->name, p, len);
		f->name[len] = '\0';
		if (!sysd_fdname_valid(f->name)) {
			snprintf(err, errlen, "LISTEN_FDNAMES: name %zu has a control or non-ASCII character",
				 i + 1);
			goto bad;
		}
		p = end ? end + 1 : NULL;
	}
	if (p != NULL) {
		snprintf(err, errlen, "LISTEN_FDNAMES has more names than LISTEN_FDS=%llu",
			 n);
		goto bad;
	}
	out->n = n;
	return (int)n;
bad:
	free(out->fds);
	out->fds = NULL;
	return -EINVAL;
}

int sysd_fds_take(struct sysd_fds *out, char *err, size_t errlen)
{
	int n = sysd_fds_parse(getenv("LISTEN_PID"), getenv("LISTEN_FDS"),
			       getenv("LISTEN_FDNAMES"), getpid(), out, err,
			       errlen);

	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	if (n <= 0)
		return n;
	for (size_t i = 0; i < out->n; i++) {
		int fd = out->fds[i].fd, fl = fcntl(fd, F_GETFD);

		if (fl < 0 || fcntl(fd, F_SETFD, fl | FD_CLOEXEC) < 0) {
			snprintf(err, errlen, "LISTEN_FDS: fd %d (%s) is not open: %s",
				 fd, out->fds[i].name, strerror(errno));
			/* the ones after it are unknown too: leave them */
			for (size_t j = i; j < out->n; j++)
				out->fds[j].fd = -1;
			return -EBADF;
		}
	}
	return n;
}

void sysd_fds_close_unused(struct sysd_fds *f)
{
	for (size_t i = 0; i < f->n; i++)
		if (f->fds[i].fd >= 0)
			close(f->fds[i].fd);
	free(f->fds);
	f->fds = NULL;
	f->n = 0;
}

enum sysd_fd_class sysd_fd_class(const char *name, char kind[8])
{
	if (kind)
		kind[0] = '\0';
	if (strcmp(name, "irc") == 0 || strcmp(name, "ircs") == 0) {
		if (kind)
			snprintf(kind, 8, "%s", name);
		return SYSD_FD_SOCKET;
	}
	if (strncmp(name, "listen-irc-", 11) == 0 ||
	    strncmp(name, "listen-ircs-", 12) == 0) {
		if (kind)
			snprintf(kind, 8, "%s", name[10] == 's' ? "ircs" : "irc");
		return SYSD_FD_LISTENER;
	}
	if (strncmp(name, "custody-", 8) == 0)
		return SYSD_FD_CUSTODY;
	return SYSD_FD_UNKNOWN;
}

int sysd_listener_fdname(const char *listener_name, char *buf, size_t len)
{
	const char *sp = strchr(listener_name, ' '), *colon;
	size_t kl, o = 0;

	if (sp == NULL)
		return -EINVAL;
	kl = (size_t)(sp - listener_name);
	if (!((kl == 3 && strncmp(listener_name, "irc", 3) == 0) ||
	      (kl == 4 && strncmp(listener_name, "ircs", 4) == 0)))
		return -EINVAL;
	colon = strrchr(sp + 1, ':');
	if (colon == NULL || colon == sp + 1 || colon[1] == '\0')
		return -EINVAL;
#define PUT(c) do { if (o + 1 >= len) return -ENOSPC; buf[o++] = (c); } while (0)
	for (const char *p = "listen-"; *p; p++)
		PUT(*p);
	for (const char *p = listener_name; p < sp; p++)
		PUT(*p);
	PUT('-');
	for (const char *p = sp + 1; p < colon; p++)
		PUT(*p == ':' ? '.' : *p);
	PUT('-');
	for (const char *p = colon + 1; *p; p++)
		PUT(*p);
#undef PUT
	buf[o] = '\0';
	if (!sysd_fdname_valid(buf))
		return -EINVAL;
	return (int)o;
}

/* Appends "KEY=value\n" (value one line) to buf at *o. */
static int sysd_put(char *buf, size_t len, size_t *o, const char *key,
		    const char *value)
{
	size_t kl = strlen(key), vl = strlen(value);

	if (*o + kl + 1 + vl + 1 >= len)
		return -ENOSPC;
	memcpy(buf + *o, key, kl);
	*o += kl;
	buf[(*o)++] = '=';
	for (size_t i = 0; i < vl; i++)
		buf[(*o)++] = value[i] == '\n' || value[i] == '\r' ? ' ' : value[i];
	buf[(*o)++] = '\n';
	buf[*o] = '\0';
	return 0;
}

/* The messages end without the last newline (sd_notify accepts both). */
static int sysd_end(char *buf, size_t o)
{
	if (o > 0 && buf[o - 1] == '\n')
		buf[--o] = '\0';
	return (int)o;
}

int sysd_msg_status(char *buf, size_t len, const char *status)
{
	size_t o = 0;

	if (status == NULL || len == 0)
		return -EINVAL;
	if (sysd_put(buf, len, &o, "STATUS", status) < 0)
		return -ENOSPC;
	return sysd_end(buf, o);
}

int sysd_msg_ready(char *buf, size_t len, const char *status)
{
	size_t o = 0;

	if (len == 0)
		return -EINVAL;
	if (sysd_put(buf, len, &o, "READY", "1") < 0 ||
	    (status && sysd_put(buf, len, &o, "STATUS", status) < 0))
		return -ENOSPC;
	return sysd_end(buf, o);
}

int sysd_msg_reloading(char *buf, size_t len, uint64_t monotonic_usec,
		       const char *status)
{
	char usec[24];
	size_t o = 0;

	if (len == 0 || monotonic_usec == 0)
		return -EINVAL;
	snprintf(usec, sizeof(usec), "%llu", (unsigned long long)monotonic_usec);
	if (sysd_put(buf, len, &o, "RELOADING", "1") < 0 ||
	    sysd_put(buf, len, &o, "MONOTONIC_USEC", usec) < 0 ||
	    (status && sysd_put(buf, len, &o, "STATUS", status) < 0))
		return -ENOSPC;
	return sysd_end(buf, o);
}

static int sysd_msg_store(char *buf, size_t len, const char *what,
			  const char *fdname)
{
	size_t o = 0;

	if (len == 0 || !sysd_fdname_valid(fdname))
		return -EINVAL;
	if (sysd_put(buf, len, &o, what, "1") < 0 ||
	    sysd_put(buf, len, &o, "FDNAME", fdname) < 0)
		return -ENOSPC;
	return sysd_end(buf, o);
}

int sysd_msg_fdstore(char *buf, size_t len, const char *fdname)
{
	return sysd_msg_store(buf, len, "FDSTORE", fdname);
}

int sysd_msg_fdstore_remove(char *buf, size_t len, const char *fdname)
{
	return sysd_msg_store(buf, len, "FDSTOREREMOVE", fdname);
}

int sysd_msg_watchdog(char *buf, size_t len)
{
	size_t o = 0;

	if (len == 0)
		return -EINVAL;
	if (sysd_put(buf, len, &o, "WATCHDOG", "1") < 0)
		return -ENOSPC;
	return sysd_end(buf, o);
}

uint64_t sysd_watchdog_interval_usec(uint64_t watchdog_usec)
{
	return watchdog_usec / 2;
}

int sysd_send(const char *msg)
{
	return sd_notify(0, msg);
}

int sysd_send_fds(const char *msg, const int *fds, size_t n)
{
	return sd_pid_notify_with_fds(0, 0, msg, fds, (unsigned)n);
}

void sysd_send_reloading(const char *status)
{
	char msg[SYSD_MSG_MAX];
	uint64_t usec = (uint64_t)clock_mono_ns() / 1000;

	if (sysd_msg_reloading(msg, sizeof(msg), usec ? usec : 1, status) > 0)
		sysd_send(msg);
}

void sysd_send_ready(const char *status)
{
	char msg[SYSD_MSG_MAX];

	if (sysd_msg_ready(msg, sizeof(msg), status) > 0)
		sysd_send(msg);
}

long sysd_restart_job(const struct sysd_job *jobs, size_t n, const char *unit_path)
{
	if (unit_path == NULL || unit_path[0] == '\0')
		return -1;
	for (size_t i = 0; i < n; i++) {
		const struct sysd_job *j = &jobs[i];

		if (j->unit_path == NULL || j->type == NULL || j->state == NULL)
			continue;
		/* A queued (waiting) restart has not sent this SIGTERM: it
		 * came from elsewhere (`systemctl kill`, a shell). */
		if (strcmp(j->unit_path, unit_path) == 0 &&
		    strcmp(j->type, "restart") == 0 && strcmp(j->state, "running") == 0)
			return (long)i;
	}
	return -1;
}

long sysd_read_jobs(sd_bus_message *m, const char *unit_path,
		    struct sysd_job *jobs, size_t max)
{
	size_t n = 0, seen = 0;
	int r = sd_bus_message_enter_container(m, SD_BUS_TYPE_ARRAY, "(usssoo)");

	if (r < 0)
		return r;
	for (;;) {
		struct sysd_job j = { 0 };
		const char *job_path;

		r = sd_bus_message_read(m, "(usssoo)", &j.id, &j.unit, &j.type,
					&j.state, &job_path, &j.unit_path);
		if (r < 0)
			return r;
		if (r == 0)
			break;
		if (++seen > SYSD_JOBS_MAX)
			return -E2BIG;
		if (strcmp(j.unit_path, unit_path) != 0)
			continue;
		if (n == max)
			return -E2BIG;
		jobs[n++] = j;
	}
	r = sd_bus_message_exit_container(m);
	return r < 0 ? r : (long)n;
}

#define SYSD_BUS_DEST "org.freedesktop.systemd1"
#define SYSD_BUS_PATH "/org/freedesktop/systemd1"
#define SYSD_BUS_MANAGER "org.freedesktop.systemd1.Manager"

/* One method call of the manager with a timeout. */
static int sysd_call(sd_bus *bus, const char *method, uint64_t timeout_usec,
		     sd_bus_error *error, sd_bus_message **reply,
		     const char *types, ...)
{
	sd_bus_message *call = NULL;
	va_list ap;
	int r = sd_bus_message_new_method_call(bus, &call, SYSD_BUS_DEST, SYSD_BUS_PATH,
					       SYSD_BUS_MANAGER, method);

	if (r >= 0 && types != NULL) {
		va_start(ap, types);
		r = sd_bus_message_appendv(call, types, ap);
		va_end(ap);
	}
	if (r >= 0)
		r = sd_bus_call(bus, call, timeout_usec, error, reply);
	sd_bus_message_unref(call);
	return r;
}

enum sysd_term sysd_term_query(uint64_t timeout_usec, char *why, size_t len)
{
	sd_bus_error error = SD_BUS_ERROR_NULL;
	sd_bus_message *unit_reply = NULL, *jobs_reply = NULL;
	sd_bus *bus = NULL;
	const char *unit_path = NULL;
	struct sysd_job jobs[SYSD_UNIT_JOBS_MAX];
	enum sysd_term t = SYSD_TERM_STOP;
	long n, k;
	int r;
	char scratch[8];

	if (why == NULL || len == 0) {
		why = scratch;
		len = sizeof(scratch);
	}
	why[0] = '\0';
	if (getenv("NOTIFY_SOCKET") == NULL) {
		snprintf(why, len, "not started by systemd");
		return SYSD_TERM_STOP;
	}
	r = sd_bus_open_system(&bus);
	if (r < 0) {
		snprintf(why, len, "cannot reach the system bus to ask systemd for our job: %s",
			 strerror(-r));
		goto out;
	}
	r = sysd_call(bus, "GetUnitByPID", timeout_usec, &error, &unit_reply, "u",
		      (uint32_t)getpid());
	if (r >= 0)
		r = sd_bus_message_read(unit_reply, "o", &unit_path);
	if (r < 0) {
		snprintf(why, len, "cannot ask systemd for our unit: %s",
			 error.message ? error.message : strerror(-r));
		goto out;
	}
	r = sysd_call(bus, "ListJobs", timeout_usec, &error, &jobs_reply, NULL);
	if (r < 0) {
		snprintf(why, len, "cannot ask systemd for its jobs: %s",
			 error.message ? error.message : strerror(-r));
		goto out;
	}
	n = sysd_read_jobs(jobs_reply, unit_path, jobs, sizeof(jobs) / sizeof(jobs[0]));
	if (n < 0) {
		snprintf(why, len, "systemd's job list: %s", strerror((int)-n));
		goto out;
	}
	k = sysd_restart_job(jobs, (size_t)n, unit_path);
	if (k >= 0) {
		snprintf(why, len, "restart job %u of %s is running", jobs[k].id, jobs[k].unit);
		t = SYSD_TERM_RESTART;
	} else if (n > 0) {
		snprintf(why, len, "%s job %u of %s (%s)", jobs[0].type, jobs[0].id,
			 jobs[0].unit, jobs[0].state);
	} else {
		snprintf(why, len, "no job of our unit %s: not a restart", unit_path);
	}
out:
	sd_bus_error_free(&error);
	sd_bus_message_unref(jobs_reply);
	sd_bus_message_unref(unit_reply);
	sd_bus_flush_close_unref(bus);
	return t;
}
