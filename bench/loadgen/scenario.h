/* scenario: the injected events of a run (--netsplit, --mass-reconnect,
 * --server-restart, --baton-restart, --exec), parsed from the command line,
 * and the external commands some of them run.
 *
 * Commands run under /bin/sh -c in their own process group, with stdout
 * sent to our stderr (our stdout carries the report) and no other file
 * descriptor of ours (every one >= 3 is closed before exec). scenario_poll() reaps
 * them without blocking; scenario_kill_all() ends what is still running
 * when the run ends. */
#ifndef LOADGEN_SCENARIO_H
#define LOADGEN_SCENARIO_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

enum scen_kind {
	SC_NETSPLIT,       /* AT:FRACTION[:REJOIN_S] */
	SC_RECONNECT,      /* AT:FRACTION */
	SC_SERVER_RESTART, /* AT:COMMAND */
	SC_BATON_RESTART,  /* AT:COMMAND */
	SC_EXEC,           /* AT:COMMAND */
};

extern const char *const scen_kind_names[];

struct scenario {
	enum scen_kind kind;
	double at;          /* seconds after traffic start */
	double fraction;
	double rejoin_s;    /* netsplit: rejoin burst after this many seconds */
	char *cmd;
	/* runtime */
	pid_t pid;          /* > 0 while the command runs */
	bool started, done;
	int status;         /* exit code, or 128 + signal */
	int64_t start_us, end_us;
};

/* Parses SPEC for kind into s (allocates s->cmd). Returns 0 or -EINVAL with
 * a message in err. */
int scenario_parse(enum scen_kind kind, const char *spec, struct scenario *s,
		   char *err, size_t errlen);
/* Starts s->cmd; returns 0 or a negative errno. */
int scenario_spawn(struct scenario *s);
/* Reaps s if its command ended; true when it is (now or before) done. */
bool scenario_poll(struct scenario *s);
void scenario_kill(struct scenario *s);

#endif
