/* sessiond/stdreply.h: baton's own errors and notes to a client, as IRCv3
 * standard replies (`FAIL`/`WARN`/`NOTE COMMAND CODE :text`) to a client
 * that negotiated `standard-replies`, as the NOTICE from the bouncer they
 * always were to the others. Only what baton itself says: the network's
 * numerics pass as they come. Codes are baton's (none in the IRCv3
 * registry fits): UPSTREAM_DISCONNECTED, SESSION_UNAVAILABLE,
 * BACKLOG_DROPPED, UPSTREAM_WAITING, OUT_OF_MEMORY, SERVICE_IN_LIST (a
 * PRIVMSG/NOTICE whose target list names *baton among others: service.h),
 * INVALID_LABEL (a labeled-response label over CLIENT_LABEL_MAX bytes: the
 * command is not run).
 */
#ifndef BATON_SESSIOND_STDREPLY_H
#define BATON_SESSIOND_STDREPLY_H

struct client;

/* type "FAIL", "WARN" or "NOTE"; command the client's (or "*"). The text
 * is cut to fit one line. */
void stdreply(struct client *cl, const char *type, const char *command,
	      const char *code, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

#endif
