/* sessiond/chanstore.h: the worker's channel member lists, one per
 * (network, casefolded channel), shared by every session of that network
 * that is in the channel.
 *
 * Why shared: the sessions of one network that sit in the same channel see
 * the same members. Kept per session, the lists dominated both memory (a
 * 1,000-member channel costs ~120 KB in every session in it) and the
 * migration freeze (every session serialized and re-built the same list).
 *
 * Ownership: the bouncer owns the store (bouncer_chanstore()); the store
 * indexes the lists it holds but does not own them: a list is owned by its
 * references. A session's struct channel holds one reference (ch->sh,
 * session.h) from its first tracked member until it forgets the list (its
 * own PART/KICK, a disconnect, a bound reached, the channel freed); the last
 * reference frees the list. A migration target holds one more on every list
 * a chunk brought in until that chunk ends (chanstore_chunk_end()).
 *
 * Updates are idempotent, because every session in the channel applies the
 * same JOIN/PART/KICK/QUIT/NICK/MODE line of the network once each:
 * add = add if absent, remove = remove if present, rename = rename if the
 * old nick is present and the new one absent, prefixes are set/cleared.
 *
 * Timing, accepted: sessions read their upstreams at different moments, so
 * the list is a little ahead of a session whose upstream lags (it shows a
 * JOIN that session has not read yet), or briefly behind (a lagging session
 * re-adds a nick from an older JOIN; the PART it reads next removes it
 * again). Once every session in the channel read the network's lines up to
 * a point, the list is the network's view at that point, whatever the
 * interleaving: per nick the last event applied is the newest one. A NAMES
 * reply (353) adds and sets prefixes the same way; it does not replace the
 * list (the replacement of a lagging session's snapshot would remove
 * members others already added; its own later lines add them back anyway)
 * except after a crash: custody's resync replaces it (session.h
 * names_resync), since a PART lost with the worker never comes again.
 * Casemapping: irc_casefold() (sessiond/irc.h), the one the sessions use.
 *
 * Private lists: a session whose network can show members differently to
 * different users (delayed join, auditorium; session.h
 * session_members_private()) keeps lists of its own, attached under the
 * scope "user/network" instead of the network's name: the same store, the
 * same rules, one session per list. A private list migrates inside its
 * session's channel (state.proto Channel.members), never as a MemberList.
 *
 * Per session, what stays per session (session.h struct channel): whether
 * the list is tracked at all (members_untracked: the session's bounds) and
 * the view's size charged to the session's member_list_bytes
 * (ch->member_bytes: the list's size when the session last applied a
 * change to it; real memory is paid once).
 */
#ifndef BATON_SESSIOND_CHANSTORE_H
#define BATON_SESSIOND_CHANSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct strmap;

/* What one member costs in a view (session.h SESSION_MEMBER_COST): its
 * nick plus this, at least its serialized size (state.h). */
#define CHANSTORE_MEMBER_COST 24

struct member {
	char *nick;
	char prefixes[16]; /* PREFIX symbols in PREFIX order, e.g. "@+" */
};

struct shared_channel {
	unsigned refs;
	struct member *members; /* unordered (removal swaps in the last) */
	size_t nmembers, cap;
	struct strmap *index;   /* casefolded nick -> index + 1 */
	/* each member counted as its nick + CHANSTORE_MEMBER_COST */
	size_t member_bytes;
	char *key;              /* "network\ncasefolded channel" */
	const char *channel;    /* the casefolded channel part of key */
	struct chanstore *store; /* NULL: not indexed (a migration chunk's
				  * content waiting for its commit) */
	/* Migration source (sessiond/transfer.c): the chunk serial that
	 * already carries this list (it is written once per chunk). */
	uint64_t mark;
};

struct chanstore;

struct chanstore *chanstore_new(void);
/* Frees the index and every list still referenced (at exit). Accepts NULL. */
void chanstore_free(struct chanstore *cs);
/* Lists indexed (distinct (network, channel) pairs). */
size_t chanstore_count(const struct chanstore *cs);
/* The list of (network, channel), created empty if absent; one reference
 * more. NULL: out of memory. */
struct shared_channel *chanstore_attach(struct chanstore *cs, const char *network,
					const char *channel);
/* Whether sh is a session's private list (attached under a "user/network"
 * scope, see above). */
bool shared_is_private(const struct shared_channel *sh);
/* One reference more on a list held. */
void chanstore_ref(struct shared_channel *sh);
/* Drop one reference; the last frees the list. Accepts NULL. */
void chanstore_detach(struct shared_channel *sh);

struct member *shared_find(const struct shared_channel *sh, const char *nick);
/* Add nick if absent (idempotent). Returns the member, NULL: out of memory. */
struct member *shared_add(struct shared_channel *sh, const char *nick);
/* Remove nick if present (idempotent). */
void shared_remove(struct shared_channel *sh, const char *nick);
/* NICK old -> nick: renamed if old is present and nick absent; if both are
 * (a desync), old is removed. 0 or -ENOMEM. */
int shared_rename(struct shared_channel *sh, const char *old, const char *nick);

/* ---- migration target: the member lists a chunk brings ----
 * Each list a chunk carries (state.proto MemberList) is built once:
 * chanstore_incoming() returns the list the chunk's sessions attach to.
 * When this worker has no list for the key yet, it is a new indexed list
 * filled now (fill = true: the caller adds the members). When it has one
 * (an earlier chunk's, or its own sessions'), the chunk's content goes into
 * a list aside (*fill_into, fill = true) and replaces the indexed list's
 * content when the chunk commits (the later snapshot wins), so an aborted
 * chunk never touched a live list. A key seen before in this chunk:
 * fill = false (the caller decides whether that is a duplicate). */
struct shared_channel *chanstore_incoming(struct chanstore *cs, const char *network,
					  const char *channel, bool *fill,
					  struct shared_channel **fill_into);
/* The list of (network, channel) the open chunk brought, NULL if none. */
struct shared_channel *chanstore_incoming_find(struct chanstore *cs,
					       const char *network,
					       const char *channel);
/* What the open chunk brought for (network, channel): the list aside when
 * it waits for the commit, else the list itself; NULL if none. */
const struct shared_channel *chanstore_incoming_content(struct chanstore *cs,
							const char *network,
							const char *channel);
/* The chunk ended: commit swaps each waiting content in and drops the
 * chunk's references; abort drops them and the content. Idempotent (a
 * chunk without lists, or ended twice, is a no-op). */
void chanstore_chunk_end(struct chanstore *cs, bool commit);

/* "network\ncasefolded channel" into out[n]; the length or -1 if it does
 * not fit. */
int chanstore_key(char *out, size_t n, const char *network, const char *channel);

#endif
