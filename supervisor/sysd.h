/* supervisor/sysd.h: the supervisor's side of the systemd protocols.
 *
 * One way to speak to systemd: messages go out through libsystemd's
 * sd_notify()/sd_pid_notify_with_fds() (NOTIFY_SOCKET, and sending fds with
 * SCM_RIGHTS for FDSTORE=1); what goes in them is built here by pure
 * functions (sysd_msg_*) so that the unit tests see the exact bytes. The
 * inherited fds (LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES: socket activation
 * and the fd store) are parsed here by hand, not with sd_listen_fds_with_names,
 * for the same reason and so that every bad value gets its own message
 * instead of a bare -EINVAL.
 *
 * Fd names (FileDescriptorName= in baton.socket, FDNAME= in the fd store)
 * form one namespace, classified by sysd_fd_class():
 *   irc, ircs             a socket of baton.socket: a plaintext / TLS listener
 *   listen-KIND-HOST-PORT a listener the supervisor bound itself and put in
 *                         the fd store (sysd_listener_fdname); ':' of an IPv6
 *                         host is written '.', since ':' separates names in
 *                         LISTEN_FDNAMES
 *   custody-...           reserved for the custody fds of issue 10 (client
 *                         and upstream sockets kept in the fd store); this
 *                         build does not store any and releases what it finds
 * Anything else is refused with a message naming the fd.
 */
#ifndef BATON_SUPERVISOR_SYSD_H
#define BATON_SUPERVISOR_SYSD_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define SYSD_FDS_START 3      /* SD_LISTEN_FDS_START */
#define SYSD_FDS_MAX 4096     /* more inherited fds than this is refused */
#define SYSD_FDNAME_MAX 255   /* systemd's FDNAME_MAX */
#define SYSD_MSG_MAX 1024     /* a notify message built here */

struct sysd_fd {
	int fd;
	char name[SYSD_FDNAME_MAX + 1];
};

/* The fds systemd passed. Owns `fds` (the array; the fds themselves belong
 * to whoever takes them: see sysd_fds_close_unused). */
struct sysd_fds {
	struct sysd_fd *fds;
	size_t n;
};

/* Parse the values of LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES (NULL when
 * unset) for the process `self`. Does not look at the fds.
 * Returns n >= 0 with out filled (fd i is SYSD_FDS_START + i; without
 * LISTEN_FDNAMES every name is "unknown", as systemd says), or -errno with a
 * message in err: -EINVAL for a value that is not a plain decimal number,
 * names whose count differs from LISTEN_FDS, or a name that systemd could
 * not have sent (empty, control characters, longer than SYSD_FDNAME_MAX);
 * -E2BIG for more than SYSD_FDS_MAX fds. Returns 0 (nothing for us) when
 * LISTEN_PID or LISTEN_FDS is unset, or when LISTEN_PID is another process
 * (inherited from a parent: err then says so, for the log). */
int sysd_fds_parse(const char *listen_pid, const char *listen_fds,
		   const char *listen_fdnames, pid_t self, struct sysd_fds *out,
		   char *err, size_t errlen);

/* sysd_fds_parse() on this process's environment, then checks that every fd
 * is open, makes them CLOEXEC and unsets the three variables (the workers
 * must not see them). Same returns; -EBADF if an announced fd is not open. */
int sysd_fds_take(struct sysd_fds *out, char *err, size_t errlen);

/* Close every fd still >= 0 in `f` (a taker sets the entries it keeps to
 * -1) and free the array. Accepts a zeroed struct. */
void sysd_fds_close_unused(struct sysd_fds *f);

enum sysd_fd_class {
	SYSD_FD_SOCKET,   /* irc / ircs: from baton.socket */
	SYSD_FD_LISTENER, /* listen-...: a listener from the fd store */
	SYSD_FD_CUSTODY,  /* custody-...: reserved */
	SYSD_FD_UNKNOWN,
};
/* kind (when not NULL) gets "irc" or "ircs" for SYSD_FD_SOCKET and
 * SYSD_FD_LISTENER ("" otherwise). */
enum sysd_fd_class sysd_fd_class(const char *name, char kind[8]);

/* "listen-KIND-HOST-PORT" for the listener named "KIND ADDR:PORT" or
 * "KIND [V6]:PORT" (listeners_names()). Returns the length or -ENOSPC /
 * -EINVAL. */
int sysd_listener_fdname(const char *listener_name, char *buf, size_t len);

/* Is `name` acceptable as FDNAME= (and in LISTEN_FDNAMES)? */
int sysd_fdname_valid(const char *name);

/* Notify messages. Each returns the length written to buf (NUL-terminated)
 * or -ENOSPC when it does not fit, -EINVAL for a bad argument. STATUS text
 * is one line: newlines become spaces. */
int sysd_msg_status(char *buf, size_t len, const char *status);
int sysd_msg_ready(char *buf, size_t len, const char *status);     /* READY=1 */
/* RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC, as systemd wants) */
int sysd_msg_reloading(char *buf, size_t len, uint64_t monotonic_usec,
		       const char *status);
int sysd_msg_fdstore(char *buf, size_t len, const char *fdname);   /* FDSTORE=1 */
int sysd_msg_fdstore_remove(char *buf, size_t len, const char *fdname);
int sysd_msg_watchdog(char *buf, size_t len);                      /* WATCHDOG=1 */

/* The watchdog ping interval for WATCHDOG_USEC (half of it, as systemd
 * advises); 0 when usec is 0. */
uint64_t sysd_watchdog_interval_usec(uint64_t watchdog_usec);

/* Senders (libsystemd; no-ops returning 0 outside systemd). The message
 * is built with the functions above. */
int sysd_send(const char *msg);
int sysd_send_fds(const char *msg, const int *fds, size_t n);
/* RELOADING=1 + MONOTONIC_USEC=now + STATUS=status; READY=1 + STATUS. */
void sysd_send_reloading(const char *status);
void sysd_send_ready(const char *status);

/* SIGTERM under systemd: `systemctl restart` or a stop?
 *
 * systemd sends the same SIGTERM for both; what differs is the job of the
 * unit: a restart job runs its stop half first (job type "restart", state
 * "running", while the SIGTERM is delivered) and turns into a start job
 * after the main process exits. So the supervisor asks systemd's manager
 * on the system bus (sd-bus) for its own unit (GetUnitByPID: an object
 * path; sd_pid_get_unit() cannot be used, it reads /proc/1, which
 * ProtectProc=invisible hides) and for the jobs (ListJobs), and leaves
 * its worker serving only when a restart job of that unit is running.
 * Anything else -- a stop job, a shutdown, `systemctl kill`, no bus, a bus
 * error or timeout -- stops every worker as before, since a worker left
 * behind a real stop would serve on unmanaged. */
#define SYSD_JOBS_MAX 65536   /* more jobs than this in a reply: not read */
#define SYSD_UNIT_JOBS_MAX 16 /* of one unit (systemd has at most 2: a job
			       * and a nop job); more: a bad reply */

/* One entry of ListJobs' a(usssoo): borrowed strings. */
struct sysd_job {
	uint32_t id;
	const char *unit;      /* "baton.service" */
	const char *type;      /* "start", "stop", "restart", "reload", ... */
	const char *state;     /* "waiting" or "running" */
	const char *unit_path; /* "/org/freedesktop/systemd1/unit/baton_2eservice" */
};

enum sysd_term {
	SYSD_TERM_STOP,    /* stop every worker */
	SYSD_TERM_RESTART, /* leave the worker serving for the next supervisor */
};

/* Pure: the index of the running restart job of the unit whose object
 * path is unit_path among jobs[0..n), or -1 (unit_path NULL or empty, or
 * no such job: a stop). Entries with a NULL field are skipped. */
long sysd_restart_job(const struct sysd_job *jobs, size_t n, const char *unit_path);

/* Reads ListJobs' reply (m positioned at its a(usssoo)), keeping the
 * jobs of the unit whose object path is unit_path in jobs[0..max) (the
 * strings are borrowed from m). Returns how many, or -E2BIG when the reply
 * holds more than SYSD_JOBS_MAX jobs or that unit more than max, or a
 * negative errno from sd-bus (a reply of another shape). */
struct sd_bus_message;
long sysd_read_jobs(struct sd_bus_message *m, const char *unit_path,
		    struct sysd_job *jobs, size_t max);

/* Asks systemd (above), waiting at most timeout_usec for each bus call.
 * Returns SYSD_TERM_RESTART or SYSD_TERM_STOP; why (when not NULL) says
 * which job or what failed, for the log. Outside systemd (no
 * NOTIFY_SOCKET) it returns SYSD_TERM_STOP without touching a bus.
 * Blocks: called once, on SIGTERM. */
enum sysd_term sysd_term_query(uint64_t timeout_usec, char *why, size_t len);

#endif
