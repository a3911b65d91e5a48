/* common/names.h: what a session's state may hold — the one validation
 * shared by what upstream.c accepts from a network and what state.c adopts
 * in a migration (DESIGN §2: "What T refuses, S must never have accepted").
 *
 * Before this module the two disagreed: a server's `:me JOIN :` (empty
 * channel), `:other NICK :` (empty member) or `PREFIX=(ov)ab` (letters as
 * member prefixes) were stored by the source and refused by every target,
 * so one user's network could block every upgrade and rollback forever.
 * The rule now: the upstream handlers ignore (never store) a name that
 * fails here, and adoption refuses exactly what fails here.
 *
 * Library code: pure functions, no logging. A NULL string fails every
 * check except names_text_ok() (NULL: the field is absent).
 */
#ifndef BATON_COMMON_NAMES_H
#define BATON_COMMON_NAMES_H

#include <stdbool.h>

/* Longest nick, channel or buffer name kept (bytes): what fits in one
 * 512-byte IRC line. Member indexes key on the whole name (session.c
 * member_key() uses a buffer of this + 1), so two names can never collide
 * by a shared prefix. Real networks: NICKLEN 9-50, CHANNELLEN 50-200; the
 * message-tags line limit (8,704 bytes) would otherwise let a server send
 * 8 KB names. */
#define NAMES_MAX_LEN 510

/* A channel name as stored (channel list, rejoin, backlog buffer): 1 to
 * NAMES_MAX_LEN bytes, none of space, comma, BEL, CR, LF (RFC 2812 2.3.1:
 * they end or split a channel name on the wire). No prefix character is
 * required: CHANTYPES vary, and a server said we joined it. */
bool names_channel_ok(const char *name);

/* A nick (our own, a channel member, a private-message buffer): 1 to
 * NAMES_MAX_LEN bytes, no space, comma, CR, LF, and none of "!@" (they
 * would split a prefix). */
bool names_nick_ok(const char *nick);

/* A backlog buffer name: a channel or a nick (or a server name for server
 * notices, which passes names_nick_ok). */
bool names_buffer_ok(const char *name);

/* Free text that ends up inside a line (topic, setter, modes, welcome,
 * backlog line): absent (NULL) or without CR and LF. */
bool names_text_ok(const char *text);

/* One space-free word of a line (a capability name, an ISUPPORT token):
 * non-empty, no space, CR, LF. */
bool names_word_ok(const char *word);

/* Membership prefix symbols glued to a nick in NAMES (also the PREFIX
 * symbols from ISUPPORT): at most NAMES_MAX_PREFIXES, each printable ASCII
 * that is not a letter, a digit or a space. "" and NULL: no prefix. */
#define NAMES_MAX_PREFIXES 15
bool names_prefixes_ok(const char *prefixes);

#endif
