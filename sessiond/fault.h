/* sessiond/fault.h: fault builds, for testing the canary's health gates
 * (issue 9). Test-only: meson -Dfault_builds=true builds one more
 * executable, baton-sessiond-faulty (not installed), from the same sources
 * with -DBATON_FAULT_BUILD. Which fault it injects is chosen once at start
 * from the basename of argv[0], "baton-sessiond-fault-<kind>" (tests
 * symlink or copy the binary under those names; the supervisor execs the
 * path it was given with argv[0] = that path):
 *
 *   drop       drops 1 in 50 channel lines relayed to clients (before they
 *              are queued or counted)
 *   dup        queues 1 in 50 relayed channel lines twice
 *   latency    sleeps 25 ms before relaying every 20th relayed channel line
 *              (blocks the loop: relay latency rises; lines arrive late,
 *              none is lost)
 *   leak       leaks 16 KiB (written, so resident) per line read from a network
 *   crash      abort() 3 s after the first session was adopted by a
 *              migration, or 3 s after READY if none was adopted by then
 *   malformed  every 10th line written to a network is preceded by
 *              ":baton" (a prefix without a command), through the normal
 *              write path (the validator of health.h sees it)
 *   noping     never answers the networks' PINGs
 *   wedge      the event loop stops for good (pause() until killed) when a
 *              line from a network holds FAULT_WEDGE_TEXT (the supervisor's
 *              worker_watchdog_ms)
 *   poison     abort() when a line from a network holds FAULT_POISON_TEXT
 *              (custody's poison-pill quarantine, tests/integration/
 *              test_worker_crash.py)
 *   tlsgap     abort() after a recv() on a TLS connection, before its
 *              CKPT_TLS record, when the bytes it decrypted hold
 *              FAULT_TLSGAP_TEXT (custody's DROP before every TLS read:
 *              that connection must be closed, never resumed)
 *
 * A fault build under any other name takes the kind from the environment
 * variable BATON_FAULT_KIND (e.g. "poison") when it is set: the worker a
 * supervisor restarts after a crash runs its release's installed copy,
 * named baton-sessiond.
 * Any other name (e.g. baton-sessiond-faulty itself) injects nothing; an
 * unknown <kind> refuses to start (exit 2). The faulty binary's version is
 * "<version>+fault-<kind>" (or "+fault-none") in READY, --version and the
 * logs, so a canary shows what it runs.
 *
 * In a normal build every hook below is a macro that expands to a constant
 * or nothing and fault.c is not compiled: no fault code exists in
 * production binaries.
 *
 * Global state (fault builds only): the kind chosen at start, the per-kind
 * line counters and the crash timer; one worker per process.
 */
#ifndef BATON_SESSIOND_FAULT_H
#define BATON_SESSIOND_FAULT_H

#ifdef BATON_FAULT_BUILD

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct health_link;

enum fault_kind {
	FAULT_NONE = 0,
	FAULT_DROP,
	FAULT_DUP,
	FAULT_LATENCY,
	FAULT_LEAK,
	FAULT_CRASH,
	FAULT_MALFORMED,
	FAULT_NOPING,
	FAULT_POISON,
	FAULT_WEDGE,
	FAULT_TLSGAP,
};

#define FAULT_DROP_EVERY 50
#define FAULT_DUP_EVERY 50
#define FAULT_LATENCY_EVERY 20
#define FAULT_LATENCY_MS 25
#define FAULT_LEAK_BYTES 16384
#define FAULT_CRASH_AFTER_MS 3000
#define FAULT_MALFORMED_EVERY 10
#define FAULT_MALFORMED_LINE ":baton"
#define FAULT_POISON_TEXT "BATON-POISON-PILL"
#define FAULT_WEDGE_TEXT "BATON-WEDGE"
#define FAULT_TLSGAP_TEXT "BATON-TLS-GAP"

/* The kind named by argv0's basename ("baton-sessiond-fault-<kind>"):
 * FAULT_NONE for any other name, -1 for an unknown kind. Pure. */
int fault_kind_from_argv0(const char *argv0);
const char *fault_kind_name(enum fault_kind k);

/* Choose the fault from argv0 (and reset the counters). 0, or -1 with a
 * message on stderr for an unknown kind. */
int fault_select(const char *argv0);
enum fault_kind fault_current(void);
/* "<BATON_VERSION>+fault-<kind>" */
const char *fault_version(void);

void fault_ready(struct event_base *base);
void fault_adopted(void);
unsigned fault_relay_copies(void);
void fault_upstream_line(void);
void fault_upstream_text(const char *line);
bool fault_noping(void);
const char *fault_network_write(const struct health_link *l);
void fault_tls_read(const void *plain, size_t len);

#define FAULT_SELECT(argv0) fault_select(argv0)
#define FAULT_READY(base) fault_ready(base)
#define FAULT_ADOPTED() fault_adopted()
#define FAULT_RELAY_COPIES() fault_relay_copies()
#define FAULT_UPSTREAM_LINE() fault_upstream_line()
#define FAULT_UPSTREAM_TEXT(line) fault_upstream_text(line)
#define FAULT_NOPING() fault_noping()
#define FAULT_NETWORK_WRITE(l) fault_network_write(l)
#define FAULT_TLS_READ(p, n) fault_tls_read(p, n)
#define SESSIOND_VERSION fault_version()

#else /* a normal build: no fault code */

#define FAULT_SELECT(argv0) 0
#define FAULT_READY(base) ((void)0)
#define FAULT_ADOPTED() ((void)0)
#define FAULT_RELAY_COPIES() 1u
#define FAULT_UPSTREAM_LINE() ((void)0)
#define FAULT_UPSTREAM_TEXT(line) ((void)0)
#define FAULT_NOPING() 0
#define FAULT_NETWORK_WRITE(l) ((const char *)0)
#define FAULT_TLS_READ(p, n) ((void)0)
#define SESSIOND_VERSION BATON_VERSION /* include baton_version.h */

#endif
#endif
