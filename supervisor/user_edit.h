/* supervisor/user_edit.h: a user's edit of their own sessions, asked by a
 * worker (NETWORK_EDIT, control.proto; sessiond/service.h). The
 * supervisor is the one that edits the config file, as `batonctl network
 * add|set|del` does (common/session_edit.h), within [supervisor]
 * user_networks read from the file as it is now, and then reloads it into
 * the serving worker (reload.h, detached: its outcome is logged). Refused
 * while a reload could not run (a migration, a canary), so an edit is
 * never left in the file unapplied by this path.
 *
 * Only the user's edit goes live: the reload loads the whole file, so an
 * edit is refused while the file differs (byte for byte, SHA-256) from
 * what the serving worker last loaded (at its start or a reload: worker
 * config_sha, supervisor.h), i.e. while the operator has changes in it not
 * yet loaded; the user is told to ask for a reload. An operator's write
 * between this check and the edit is not seen (editors take no lock).
 */
#ifndef BATON_SUPERVISOR_USER_EDIT_H
#define BATON_SUPERVISOR_USER_EDIT_H

#include "control.pb-c.h"

struct worker;

/* worker_edit_cb (worker_process.h); arg: the struct supervisor. */
void user_edit_on_request(struct worker *w, const Baton__Control__NetworkEdit *e,
			  void *arg);

#endif
