/* tests/fuzz/fuzz_config_edit.c: libFuzzer target for common/config_edit.c,
 * the INI editor of `batonctl user|network` (the file is the operator's,
 * but it may be anything: hand-edited, CRLF, cut off, binary).
 *
 * The input is parsed as a file. Contracts checked with abort(): an
 * unchanged file comes back byte for byte; after each edit (a key set, a
 * repeat added, a key removed, a section removed, names taken from the
 * input's first line) the text parses again, holds no line over the bound,
 * and a key just set reads back as set. A refused edit changes nothing. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config_edit.h"

#define CHECK(x) do { if (!(x)) abort(); } while (0)

static char *text_of(const struct config_edit *e, size_t *len)
{
	char *t = config_edit_text(e, len);

	CHECK(t != NULL);
	return t;
}

/* The text parses again and no line is over the bound. */
static void check_sane(const struct config_edit *e)
{
	size_t len, start = 0;
	char *t = text_of(e, &len);
	struct config_edit *again = config_edit_parse(t, len, NULL, 0);

	CHECK(again != NULL);
	for (size_t i = 0; i <= len; i++)
		if (i == len || t[i] == '\n') {
			CHECK(i - start <= CONFIG_EDIT_MAX_LINE);
			start = i + 1;
		}
	config_edit_free(again);
	free(t);
}

/* A refused edit left the text as it was. */
static void check_same(const struct config_edit *e, const char *before, size_t blen)
{
	size_t len;
	char *t = text_of(e, &len);

	CHECK(len == blen && memcmp(t, before, len) == 0);
	free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct config_edit *e = config_edit_parse((const char *)data, size, NULL, 0);
	char section[64] = "user fuzz", key[32] = "nick", value[64] = "v";
	size_t len;
	char *t;
	int r;

	if (e == NULL)
		return 0;
	t = text_of(e, &len);
	CHECK(len == size && memcmp(t, data, size) == 0);
	/* names from the first line: "section|key|value" */
	if (size > 0) {
		const char *nl = memchr(data, '\n', size);
		size_t n = nl ? (size_t)(nl - (const char *)data) : size;
		char first[200];

		if (n >= sizeof(first))
			n = sizeof(first) - 1;
		memcpy(first, data, n);
		first[n] = '\0';
		sscanf(first, "%63[^|]|%31[^|]|%63[^|]", section, key, value);
	}
	r = config_edit_set(e, section, key, value);
	if (r < 0) {
		check_same(e, t, len);
	} else {
		char *got = config_edit_get(e, section, key);

		CHECK(got != NULL && strcmp(got, value) == 0);
		free(got);
		CHECK(config_edit_has_section(e, section));
	}
	check_sane(e);
	free(t);
	t = text_of(e, &len);
	if (config_edit_add(e, section, key, value) < 0)
		check_same(e, t, len);
	check_sane(e);
	config_edit_unset(e, section, key);
	check_sane(e);
	config_edit_del_section(e, section);
	CHECK(!config_edit_has_section(e, section) || r < 0);
	check_sane(e);
	free(t);
	config_edit_free(e);
	return 0;
}
