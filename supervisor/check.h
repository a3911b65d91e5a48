/* supervisor/check.h: `baton-supervisor --check`: the environment this
 * config needs on this host (docs/design.md §8), so a new host is never missing
 * something the old one had. Config problems themselves come from
 * config_load(); these come on top.
 */
#ifndef BATON_SUPERVISOR_CHECK_H
#define BATON_SUPERVISOR_CHECK_H

#include <stdbool.h>
#include <stddef.h>

struct baton_config;
struct config_problems;

/* How many sessions of a network can connect at once with its source
 * addresses and limits (the reconnect governor, sessiond/governor.h). */
struct check_capacity {
	const char *network;    /* the config's */
	int line;               /* of its [network] section */
	unsigned sessions;      /* configured sessions on it */
	unsigned addresses;     /* `bind` addresses, 1 without (the kernel's) */
	int max_per_addr;       /* max_connections_per_ip */
	int connects_per_minute, connect_burst;
	unsigned capacity;      /* addresses x max_per_addr; 0: no limit */
	unsigned can_connect;   /* min(sessions, capacity) */
	unsigned waiting;       /* sessions - can_connect: they never connect
				 * while the others stay */
	double startup_s;       /* after a restart, when the last of
				 * can_connect is connected at the buckets' pace */
};
void check_network_capacity(const struct baton_config *cfg, size_t i,
			    struct check_capacity *out);

/* The whole of `--check`: load_problems (config_load()'s; cfg NULL when it
 * failed) and, with a config, check_environment() and the capacity of
 * every network (a warning where sessions exceed it). Prints problems,
 * warnings, one capacity line per network and "ok" when there is no
 * problem — or, json: one document {config, ok, problems[], warnings[],
 * networks[]}. Returns the exit code: 1 with any problem, else 0. */
int check_main(const char *config_path, const struct baton_config *cfg,
	       const struct config_problems *load_problems,
	       const char *sessiond, bool json);

/* Adds every problem found ("FILE:LINE: msg" or "check: msg"). Runs
 * `sessiond --check -c CONFIG` and adds what it reports. Warnings (an
 * expired certificate, a legacy password hash, a damaged release history)
 * are added to `warnings`, or printed to stdout when it is NULL. */
void check_environment(const struct baton_config *cfg, const char *sessiond,
		       struct config_problems *problems,
		       struct config_problems *warnings);

#endif
