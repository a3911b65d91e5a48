/* common/names.c: the validation of what a session's state may hold
 * (names.h). */
#include "common/names.h"

#include <string.h>

static bool name_ok(const char *s, const char *forbidden)
{
	if (!s || !s[0])
		return false;
	size_t len = strnlen(s, NAMES_MAX_LEN + 1);
	return len <= NAMES_MAX_LEN && s[strcspn(s, forbidden)] == '\0';
}

bool names_channel_ok(const char *name)
{
	return name_ok(name, " ,\a\r\n");
}

bool names_nick_ok(const char *nick)
{
	return name_ok(nick, " ,!@\r\n");
}

bool names_buffer_ok(const char *name)
{
	return names_channel_ok(name) || names_nick_ok(name);
}

bool names_text_ok(const char *text)
{
	return !text || !strpbrk(text, "\r\n");
}

bool names_word_ok(const char *word)
{
	return word && word[0] && !strpbrk(word, " \r\n");
}

bool names_prefixes_ok(const char *p)
{
	if (!p)
		return true;
	if (strlen(p) > NAMES_MAX_PREFIXES)
		return false;
	for (; *p; p++) {
		unsigned char c = (unsigned char)*p;
		if (c <= ' ' || c >= 0x7f || (c >= '0' && c <= '9') ||
		    (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'))
			return false;
	}
	return true;
}
