/* driver: runs the load on one libevent loop — the observer and the
 * network users on the IRC server, the bouncer users' clients on baton, the
 * scaled schedule, the scenarios — and feeds every received numbered line
 * to the ledger.
 *
 * Phases: login (paced connects), wait until every bouncer client is
 * attached (001 + a JOIN for each of its channels) and the observer sits in
 * every channel, traffic (the schedule and the scenarios, t = 0 at its
 * start), drain (until every expected delivery arrived, or the timeout),
 * then ledger_finish(). The driver owns every connection; none outlives
 * driver_run(). */
#ifndef LOADGEN_DRIVER_H
#define LOADGEN_DRIVER_H

#include <netinet/in.h>
#include <stdio.h>

#include "model.h"
#include "report.h"
#include "scenario.h"

enum reconnect_mode { RECONNECT_QUIT, RECONNECT_DROP };

struct lg_opts {
	struct sockaddr_in server, baton;
	const char *network, *password, *client_name;
	const char *user_prefix, *nick_prefix;
	unsigned nbouncer;
	double login_rate;        /* connects per second during setup */
	double attach_timeout;    /* seconds */
	double drain_timeout;     /* seconds */
	double end_after_exec;    /* < 0: off; else traffic ends this many seconds
				   * after the last --exec command ended */
	double reconnect_delay;   /* mass reconnect: seconds away (+ up to 1 s jitter) */
	double restart_grace;     /* restarts: excuse window after the command ends */
	enum reconnect_mode reconnect_mode;
	uint64_t seed;
	int verbose;
	FILE *sent_log;           /* --log-sent: every numbered line as sent */
	struct scenario *scen;
	unsigned nscen;
};

/* The names of bouncer user u ("u007", "bn007"; zero-padded to the width
 * of nbouncer-1, at least 3 digits, like tests/integration/batonlib.py). */
void driver_user_name(const struct lg_opts *o, unsigned u, char *user, size_t ulen,
		      char *nick, size_t nlen);

/* Runs everything; fills res. Returns 0, or a negative errno when the run
 * could not start (message on stderr). */
int driver_run(const struct lg_opts *o, const struct trace *tr, struct model *m,
	       struct lg_result *res);

#endif
