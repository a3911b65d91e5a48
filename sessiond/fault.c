/* sessiond/fault.c: see fault.h. Compiled only with -DBATON_FAULT_BUILD. */
#ifndef BATON_FAULT_BUILD
#error "sessiond/fault.c belongs to fault builds only (meson -Dfault_builds=true)"
#endif
#include "sessiond/fault.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include <event2/event.h>

#include "baton_version.h"
#include "common/log.h"
#include "sessiond/health.h"

#define FAULT_PREFIX "baton-sessiond-fault-"

static const char *const fault_names[] = {
	[FAULT_NONE] = "none",       [FAULT_DROP] = "drop",
	[FAULT_DUP] = "dup",         [FAULT_LATENCY] = "latency",
	[FAULT_LEAK] = "leak",       [FAULT_CRASH] = "crash",
	[FAULT_MALFORMED] = "malformed", [FAULT_NOPING] = "noping",
	[FAULT_POISON] = "poison",   [FAULT_WEDGE] = "wedge",
	[FAULT_TLSGAP] = "tlsgap",
};
#define NFAULTS (sizeof(fault_names) / sizeof(fault_names[0]))

/* The process's one fault (fault.h: global state of fault builds). */
static enum fault_kind kind;
static char version[128];
static uint64_t relayed, written;
static struct event *crash_ev;
static bool adopted;
/* leaked blocks escape through here (the compiler must not drop them) */
static void *volatile leak_last;

int fault_kind_from_argv0(const char *argv0)
{
	const char *base = argv0 ? strrchr(argv0, '/') : NULL;

	base = base ? base + 1 : (argv0 ? argv0 : "");
	if (strncmp(base, FAULT_PREFIX, strlen(FAULT_PREFIX)) != 0)
		return FAULT_NONE;
	base += strlen(FAULT_PREFIX);
	for (size_t i = 1; i < NFAULTS; i++)
		if (strcmp(base, fault_names[i]) == 0)
			return (int)i;
	return -1;
}

const char *fault_kind_name(enum fault_kind k)
{
	return (size_t)k < NFAULTS ? fault_names[k] : "?";
}

int fault_select(const char *argv0)
{
	int k = fault_kind_from_argv0(argv0);
	const char *env = getenv("BATON_FAULT_KIND");

	/* The environment names it when the program name cannot: a worker
	 * restarted after a crash runs the installed copy of its release,
	 * named baton-sessiond (custody's poison-pill test). */
	if (k == FAULT_NONE && env != NULL && *env != '\0') {
		char name[96];

		snprintf(name, sizeof(name), FAULT_PREFIX "%s", env);
		k = fault_kind_from_argv0(name);
	}

	if (k < 0) {
		fprintf(stderr, "baton-sessiond: unknown fault in the program name %s (known: drop dup latency leak crash malformed noping poison wedge tlsgap)\n",
			argv0);
		return -1;
	}
	kind = (enum fault_kind)k;
	relayed = written = 0;
	adopted = false;
	snprintf(version, sizeof(version), "%s+fault-%s", BATON_VERSION,
		 fault_names[kind]);
	return 0;
}

enum fault_kind fault_current(void)
{
	return kind;
}

const char *fault_version(void)
{
	return version[0] ? version : BATON_VERSION "+fault-none";
}

static void crash_cb(evutil_socket_t fd, short what, void *arg)
{
	log_error("fault", "fault build %s: crashing now (abort)", fault_version());
	abort();
}

static void crash_arm(void)
{
	struct timeval tv = { FAULT_CRASH_AFTER_MS / 1000,
			      (FAULT_CRASH_AFTER_MS % 1000) * 1000 };

	if (crash_ev)
		evtimer_add(crash_ev, &tv); /* re-arming moves the deadline */
}

void fault_ready(struct event_base *base)
{
	if (kind == FAULT_NONE)
		return;
	log_warn("fault", "FAULT BUILD %s: injecting '%s' (sessiond/fault.h)",
		 fault_version(), fault_names[kind]);
	if (kind != FAULT_CRASH)
		return;
	crash_ev = evtimer_new(base, crash_cb, NULL);
	crash_arm();
}

void fault_adopted(void)
{
	if (kind != FAULT_CRASH || adopted)
		return;
	adopted = true;
	crash_arm();
}

unsigned fault_relay_copies(void)
{
	relayed++;
	switch (kind) {
	case FAULT_DROP:
		return relayed % FAULT_DROP_EVERY == 0 ? 0 : 1;
	case FAULT_DUP:
		return relayed % FAULT_DUP_EVERY == 0 ? 2 : 1;
	case FAULT_LATENCY:
		if (relayed % FAULT_LATENCY_EVERY == 0) {
			struct timespec ts = { 0, FAULT_LATENCY_MS * 1000000L };
			while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
				;
		}
		return 1;
	default:
		return 1;
	}
}

void fault_upstream_line(void)
{
	if (kind != FAULT_LEAK)
		return;
	void *p = malloc(FAULT_LEAK_BYTES);
	if (p)
		memset(p, 0xa5, FAULT_LEAK_BYTES);
	leak_last = p;
}

void fault_tls_read(const void *plain, size_t len)
{
	if (kind == FAULT_TLSGAP &&
	    memmem(plain, len, FAULT_TLSGAP_TEXT, strlen(FAULT_TLSGAP_TEXT)) != NULL) {
		log_error("fault", "tls gap: abort() between a TLS read and its record");
		abort();
	}
}

void fault_upstream_text(const char *line)
{
	if (kind == FAULT_POISON && strstr(line, FAULT_POISON_TEXT) != NULL) {
		log_error("fault", "poison pill: abort()");
		abort();
	}
	if (kind == FAULT_WEDGE && strstr(line, FAULT_WEDGE_TEXT) != NULL) {
		log_error("fault", "wedged: the loop stops here until the process is killed");
		for (;;)
			pause();
	}
}

bool fault_noping(void)
{
	return kind == FAULT_NOPING;
}

const char *fault_network_write(const struct health_link *l)
{
	if (kind != FAULT_MALFORMED || !l || l->peer != HEALTH_PEER_NETWORK)
		return NULL;
	return ++written % FAULT_MALFORMED_EVERY == 0 ? FAULT_MALFORMED_LINE : NULL;
}
