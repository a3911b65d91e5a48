/* sessiond/irc.h: IRC message parsing (RFC 1459/2812 + IRCv3 message tags)
 * and small helpers. Library code: no logging, no exits.
 * Ownership: nothing here allocates; a parsed struct irc_msg points into
 * the caller's line buffer and lives as long as it.
 */
#ifndef BATON_SESSIOND_IRC_H
#define BATON_SESSIOND_IRC_H

#include <stddef.h>

#define IRC_MAX_PARAMS 15
#define IRC_MAX_LINE 8704 /* 8191 tags + 512 message, as IRCv3 allows */
/* A line's message part (everything after the tags) without its CRLF: RFC
 * 1459 2.3's 512 bytes less the CRLF. A network refuses longer ones (ngircd
 * closes the connection: "Request too long"). */
#define IRC_MAX_MESSAGE 510
/* A line's tag section with its '@' and its trailing space (IRCv3
 * message-tags: what a server accepts from a client at most). */
#define IRC_MAX_TAGS 8191
/* The client-only tags ("+key") a client may send, with the '@' and the
 * space (message-tags: a server may refuse more). */
#define IRC_MAX_CLIENT_TAGS 4094

struct irc_msg {
	char *tags;    /* raw tag string without the '@', or NULL */
	char *prefix;  /* without the ':', or NULL */
	char *command; /* as sent (not upper-cased) */
	size_t nparams;
	char *params[IRC_MAX_PARAMS]; /* the trailing parameter is the last one */
};

/* Parse `line` (no CR/LF; stray trailing CR/LF are stripped) in place: the
 * message points into `line`, which is modified. Returns 0, or -EINVAL for an
 * empty line, a line with no command, or a line longer than IRC_MAX_LINE. */
int irc_parse(char *line, struct irc_msg *msg);

/* The message part of `line` (after "@tags" and the spaces that follow
 * them; the line itself when it has no tags), and in *tags_len the length
 * of the tag section counted as IRC_MAX_TAGS counts it: from the '@' to
 * the first space, that space included (0: no tags). A line that is only
 * tags gives an empty message part. */
const char *irc_message_part(const char *line, size_t *tags_len);

/* The length of the longest start of s of at most max bytes that does not
 * cut a UTF-8 sequence in two (bytes that are not UTF-8 count as one
 * character each). */
size_t irc_utf8_cut(const char *s, size_t max);

/* Copy the nick of a "nick!user@host" prefix into nick[n] (truncating).
 * A server-name prefix is copied whole. */
void irc_prefix_nick(const char *prefix, char *nick, size_t n);

/* rfc1459 case mapping ({}|^ are the lower case of []\~). */
int irc_casecmp(const char *a, const char *b);
void irc_casefold(char *s);

/* True for a channel name (starts with one of "#&+!"). */
int irc_is_channel(const char *name);

/* Value of tag `key` in a raw tag string (unescaped into out[n]); returns 1
 * if present, 0 if not. */
int irc_tag_get(const char *tags, const char *key, char *out, size_t n);

#endif
