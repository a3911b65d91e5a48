/* supervisor/reload.h: `batonctl reload` (and SIGHUP): the config file is
 * loaded and checked here first (a file with problems is refused whole,
 * the problems listed as --check lists them), then the serving worker is
 * asked to RELOAD it (control.proto Reload; sessiond/bouncer.h
 * bouncer_reload() says what it applies and when). Upgrades keep their own
 * protection (a target refuses a session missing from its config): a
 * reload is how a session is removed.
 *
 * The reply is one {"result":{...}}: kind "reload", result "applied" or
 * "refused", reason (refused), problems, added, removed, changed, later
 * (lists of strings; control.proto ReloadResult).
 *
 * Ownership: requests live in the caller's list until answered (or
 * reload_free_all()); the reply callback's arg is borrowed until
 * reload_detach(list, arg).
 */
#ifndef BATON_SUPERVISOR_RELOAD_H
#define BATON_SUPERVISOR_RELOAD_H

#include "supervisor/supervisor.h"

struct event_base;
struct worker;
struct reload_req;

/* busy: why nothing may be reloaded now (a migration, a canary, no worker
 * serving...), or NULL with w the serving worker. Replies through cb, now
 * (refused) or when the worker answers (at most RELOAD_TIMEOUT_S later). */
#define RELOAD_TIMEOUT_S 30
void reload_start(struct event_base *base, struct worker *w,
		  const char *config_path, const char *busy,
		  supervisor_reply_cb cb, void *arg, struct reload_req **list);
/* The requester went away: its replies are dropped (the reload goes on). */
void reload_detach(struct reload_req **list, void *arg);
/* Drop every request (no reply); before the workers are freed. */
void reload_free_all(struct reload_req **list);

#endif
