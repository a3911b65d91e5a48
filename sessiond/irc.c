/* sessiond/irc.c: IRC message parsing (RFC 1459/2812 + IRCv3 message tags).
 *
 * Library code: no logging, no exits, no allocation. The parser works in
 * place: it writes NULs into the caller's line and points the message at it.
 */
#include "sessiond/irc.h"

#include <errno.h>
#include <string.h>

static char *skip_spaces(char *p)
{
	while (*p == ' ')
		p++;
	return p;
}

/* Cut the token starting at p at the next space; returns what follows it
 * (spaces skipped), or NULL if the token runs to the end of the line. */
static char *cut_token(char *p)
{
	char *sp = strchr(p, ' ');

	if (!sp)
		return NULL;
	*sp = '\0';
	return skip_spaces(sp + 1);
}

/* Grammar accepted (a superset of RFC 2812 2.3.1, for robustness):
 *
 *   line    = *" " ["@" tags 1*" "] [":" prefix 1*" "] command
 *             *(1*" " middle) [1*" " ":" trailing] *" "
 *
 * - Any run of spaces separates tokens; leading and trailing spaces of the
 *   line are ignored (the trailing parameter keeps its spaces verbatim).
 * - The command is any token not starting with ':' (not validated against
 *   letters/digits: unknown commands are the caller's business).
 * - At most IRC_MAX_PARAMS parameters. Like RFC 2812 ("14 middle, then the
 *   rest"), once 14 have been collected the rest of the line, with a leading
 *   ':' removed if present, is the 15th parameter verbatim, spaces included.
 *   A line with "too many" parameters is therefore not an error and loses
 *   nothing: its extra words end up in params[14].
 * - The length limit applies to the line without its trailing CR/LF, and is
 *   checked before the line is modified: a rejected line is left intact.
 */
int irc_parse(char *line, struct irc_msg *msg)
{
	size_t len;
	char *p;

	if (!line || !msg)
		return -EINVAL;
	memset(msg, 0, sizeof(*msg));

	len = strlen(line);
	while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == '\n'))
		len--;
	if (len > IRC_MAX_LINE)
		return -EINVAL;
	line[len] = '\0';

	p = skip_spaces(line);
	if (*p == '@') {
		msg->tags = p + 1;
		p = cut_token(p);
		if (!p)
			goto no_command;
	}
	if (*p == ':') {
		msg->prefix = p + 1;
		p = cut_token(p);
		if (!p)
			goto no_command;
	}
	if (*p == '\0' || *p == ':')
		goto no_command;
	msg->command = p;
	p = cut_token(p);

	while (p && *p != '\0') {
		if (msg->nparams == IRC_MAX_PARAMS - 1 || *p == ':') {
			msg->params[msg->nparams++] = *p == ':' ? p + 1 : p;
			break;
		}
		msg->params[msg->nparams++] = p;
		p = cut_token(p);
	}
	return 0;

no_command:
	/* Do not hand back half-filled pointers for a rejected line. */
	memset(msg, 0, sizeof(*msg));
	return -EINVAL;
}

const char *irc_message_part(const char *line, size_t *tags_len)
{
	const char *p = line;

	*tags_len = 0;
	if (*p != '@')
		return p;
	p += strcspn(p, " ");
	*tags_len = (size_t)(p - line) + (*p == ' ');
	while (*p == ' ')
		p++;
	return p;
}

size_t irc_utf8_cut(const char *s, size_t max)
{
	size_t n = strnlen(s, max + 1), start;

	if (n <= max)
		return n;
	n = max;
	if (((unsigned char)s[n] & 0xC0) != 0x80)
		return n; /* s[n] starts a character: nothing is cut */
	/* s[n] continues a sequence: drop it from its lead byte on. */
	start = n;
	while (start > 0 && n - start < 3 && ((unsigned char)s[start - 1] & 0xC0) == 0x80)
		start--;
	if (start > 0 && (unsigned char)s[start - 1] >= 0xC0)
		return start - 1;
	return n; /* not UTF-8 */
}

void irc_prefix_nick(const char *prefix, char *nick, size_t n)
{
	size_t len;

	if (n == 0)
		return;
	if (!prefix) {
		nick[0] = '\0';
		return;
	}
	/* "nick!user@host" and RFC 2812's "nick@host"; a server name contains
	 * neither '!' nor '@' and is copied whole. */
	len = strcspn(prefix, "!@");
	if (len > n - 1)
		len = n - 1;
	memcpy(nick, prefix, len);
	nick[len] = '\0';
}

/* rfc1459 as irc.h states it (RFC 2812 2.2): {}|^ are the lower case of
 * []\~. Servers derived from ircd-hybrid fold the other way ('^' -> '~', by
 * ASCII offset); either way '^' and '~' are equal, only the representative
 * casefold() produces differs. */
static unsigned char fold(unsigned char c)
{
	if ((c >= 'A' && c <= 'Z') || (c >= '[' && c <= ']'))
		return c + ('a' - 'A');
	if (c == '~')
		return '^';
	return c;
}

int irc_casecmp(const char *a, const char *b)
{
	const unsigned char *x = (const unsigned char *)a;
	const unsigned char *y = (const unsigned char *)b;

	while (*x && fold(*x) == fold(*y)) {
		x++;
		y++;
	}
	return (int)fold(*x) - (int)fold(*y);
}

void irc_casefold(char *s)
{
	if (!s)
		return;
	for (; *s; s++)
		*s = (char)fold((unsigned char)*s);
}

int irc_is_channel(const char *name)
{
	return name && name[0] != '\0' && strchr("#&+!", name[0]) != NULL;
}

/* IRCv3 message-tags value unescaping: \: ; \s space \\ \ \r CR \n LF; a
 * backslash before any other character is dropped, and so is a trailing
 * lone backslash. Copies at most n-1 bytes and NUL-terminates (n > 0). */
static void tag_unescape(const char *v, size_t vlen, char *out, size_t n)
{
	size_t i = 0, o = 0;

	if (n == 0)
		return;
	while (i < vlen && o < n - 1) {
		char c = v[i++];

		if (c == '\\') {
			if (i == vlen)
				break;
			c = v[i++];
			switch (c) {
			case ':': c = ';'; break;
			case 's': c = ' '; break;
			case 'r': c = '\r'; break;
			case 'n': c = '\n'; break;
			default: break; /* "\\" and unknown escapes: the char */
			}
		}
		out[o++] = c;
	}
	out[o] = '\0';
}

/* Keys compare byte-exactly (they are case-sensitive in IRCv3, including a
 * client-only '+' and a vendor "host/"). A missing value ("key") and an empty
 * one ("key=") are both returned as "". If a key repeats, the last occurrence
 * wins, as the message-tags spec asks. */
int irc_tag_get(const char *tags, const char *key, char *out, size_t n)
{
	const char *p = tags, *val = NULL;
	size_t klen, vlen = 0;
	int found = 0;

	if (!tags || !key || key[0] == '\0')
		return 0;
	klen = strlen(key);
	while (*p) {
		size_t tlen = strcspn(p, ";");
		size_t nlen = strcspn(p, "=;");

		if (nlen == klen && memcmp(p, key, klen) == 0) {
			found = 1;
			val = p + nlen;
			vlen = tlen - nlen;
			if (vlen > 0) { /* skip the '=' */
				val++;
				vlen--;
			}
		}
		p += tlen;
		if (*p == ';')
			p++;
	}
	if (found && out)
		tag_unescape(val, vlen, out, n);
	return found;
}
