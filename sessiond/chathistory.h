/* sessiond/chathistory.h: IRCv3 draft/chathistory for clients, answered from
 * the worker's message store (history.h; offered only with a store).
 *
 *   CHATHISTORY LATEST <target> <*|ref> <limit>
 *   CHATHISTORY BEFORE|AFTER|AROUND <target> <ref> <limit>
 *   CHATHISTORY BETWEEN <target> <ref> <ref> <limit>
 *   CHATHISTORY TARGETS <timestamp=..> <timestamp=..> <limit>
 *   ref: timestamp=YYYY-MM-DDThh:mm:ss.sssZ or msgid=<a msgid of ours>
 *
 * The answer is a `chathistory` batch (`draft/chathistory-targets` for
 * TARGETS; no batch for a client without the batch capability) of the
 * stored lines as they were relayed, oldest first, each with @time (with
 * server-time), @msgid (with message-tags) and @batch. Reads run on the
 * store's query thread (store_query_async()); answers go out in the order
 * of the requests. At most CHATHISTORY_LIMIT lines per request (ISUPPORT
 * CHATHISTORY=, a larger limit is clamped) and CHATHISTORY_INFLIGHT
 * requests per client at once (more: FAIL ... MESSAGE_ERROR). Only lines
 * that are durable in the store are seen (milliseconds after they were
 * relayed). Targets are the store's: casefolded (RFC 1459).
 *
 * Errors: FAIL CHATHISTORY NEED_MORE_PARAMS, INVALID_PARAMS (a bad
 * subcommand argument, limit or timestamp), UNKNOWN_COMMAND, INVALID_TARGET
 * (an empty or over-long target), MESSAGE_ERROR (the store failed, or too
 * many requests in flight). A msgid that is not one of this store's, or not
 * of that target, gives an empty batch.
 */
#ifndef BATON_SESSIOND_CHATHISTORY_H
#define BATON_SESSIOND_CHATHISTORY_H

#include <stdbool.h>

struct client;
struct irc_msg;
struct chathistory_job;

#define CHATHISTORY_LIMIT 100
#define CHATHISTORY_INFLIGHT 16

/* draft/read-marker (history.h keeps the markers):
 *   MARKREAD <target>                      -> MARKREAD <target> timestamp=..|*
 *   MARKREAD <target> timestamp=<time>     -> stored if newer, and sent to
 *                                             every client of the session
 *                                             with the cap (the sender too);
 *                                             else the newer one back
 * Errors: FAIL MARKREAD NEED_MORE_PARAMS, INVALID_PARAMS, INTERNAL_ERROR
 * (the markers are still being read), TEMPORARILY_UNAVAILABLE (the client
 * sets faster than READMARKER_RATE a second after a burst of
 * READMARKER_BURST), LIMIT_EXCEEDED (the session has HISTORY_MARKERS
 * targets). A client without the draft/read-marker cap: 421, as for any
 * command of a capability it did not ask for.
 * When a set is answered: once it is in the session's memory
 * (history_marker_set()), which is what every get, the user's other
 * clients and the next burst are answered from. The same call queues it
 * to the store's writer before the answer when the session's previous
 * marker batch is committed (the usual case); otherwise (one of its
 * batches still uncommitted, or the store's queue full) it is written when
 * that batch commits or at the next tick, at the latest when the session
 * ends. Not answered after the store took it in every case: that would
 * hold a client's MARKREAD behind another batch's commit window while
 * nothing a client can see depends on it; what a crash can lose is the
 * newest marker of that window (the client sets it again when it reads
 * on). A store refusal other than a full queue is logged as a store
 * error and the marker stays in memory. */
#define READMARKER_RATE 4
#define READMARKER_BURST 40
void readmarker_command(struct client *cl, const struct irc_msg *m);
/* "MARKREAD <target> ..." to cl (its burst, before RPL_ENDOFNAMES). */
void readmarker_send(struct client *cl, const char *target);
/* A JOIN of ours (nick) to channel was relayed: the marker follows. */
struct session;
void readmarker_after_join(struct session *s, const char *nick,
			   const char *channel);

/* The attached client's CHATHISTORY command (answered, or failed). */
void chathistory_command(struct client *cl, const struct irc_msg *m);
/* cl goes away: its requests in flight are cancelled. */
void chathistory_client_forget(struct client *cl);

#endif
