/* supervisor/check.h: `baton-supervisor --check`: the environment this
 * config needs on this host (docs/design.md §8), so a new host is never missing
 * something the old one had. Config problems themselves come from
 * config_load(); these come on top.
 */
#ifndef BATON_SUPERVISOR_CHECK_H
#define BATON_SUPERVISOR_CHECK_H

struct baton_config;
struct config_problems;

/* Adds every problem found ("FILE:LINE: msg" or "check: msg"). Runs
 * `sessiond --check -c CONFIG` and adds what it reports. */
void check_environment(const struct baton_config *cfg, const char *sessiond,
		       struct config_problems *problems);

#endif
