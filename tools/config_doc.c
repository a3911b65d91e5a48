/* baton-config-doc: writes docs/config.md from its template and the key
 * table (common/config_keys.h), so the documented defaults are the ones the
 * parser uses.
 *
 *   baton-config-doc TEMPLATE [OUT]     write the document (OUT or stdout)
 *   baton-config-doc --check TEMPLATE DOC
 *                                        exit 1 when DOC is not what would
 *                                        be written (the unit test config_doc)
 *
 * The template is Markdown; a line "@keys TABLE@" becomes the table of the
 * keys whose table (config_key_table()) is TABLE, in table order. A table
 * with no documented default has no default column.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config_keys.h"

static bool doc_has_default(const struct config_key *k)
{
	return k->doc_default != NULL || k->type == CONFIG_INT ||
	       k->type == CONFIG_BOOL || k->def_str != NULL;
}

static void doc_default(FILE *out, const struct config_key *k)
{
	if (k->doc_default != NULL)
		fputs(k->doc_default, out);
	else if (k->type == CONFIG_INT)
		fprintf(out, "`%d`", k->def);
	else if (k->type == CONFIG_BOOL)
		fputs(k->def ? "`yes`" : "`no`", out);
	else if (k->def_str != NULL)
		fprintf(out, "`%s`", k->def_str);
	else
		fputs("none", out);
}

/* Returns the number of keys written (0: an unknown table). */
static size_t doc_table(FILE *out, const char *table)
{
	bool defaults = false;
	size_t n = 0;

	for (size_t i = 0; i < config_nkeys; i++)
		if (strcmp(config_key_table(&config_keys[i]), table) == 0)
			defaults |= doc_has_default(&config_keys[i]);
	for (size_t i = 0; i < config_nkeys; i++) {
		const struct config_key *k = &config_keys[i];

		if (strcmp(config_key_table(k), table) != 0)
			continue;
		if (n++ == 0)
			fputs(defaults ? "| key | default | meaning |\n|---|---|---|\n"
				       : "| key | meaning |\n|---|---|\n", out);
		fprintf(out, "| `%s` | ", k->doc_key ? k->doc_key : k->name);
		if (defaults) {
			doc_default(out, k);
			fputs(" | ", out);
		}
		fprintf(out, "%s |\n", k->doc);
	}
	return n;
}

static char *doc_read(const char *path, size_t *len)
{
	FILE *f = fopen(path, "re");
	char *buf = NULL;
	size_t cap = 0;

	*len = 0;
	if (f == NULL)
		return NULL;
	for (;;) {
		if (*len + 4096 + 1 > cap) {
			char *grown = realloc(buf, cap + 65536);

			if (grown == NULL) {
				free(buf);
				fclose(f);
				return NULL;
			}
			buf = grown;
			cap += 65536;
		}
		size_t n = fread(buf + *len, 1, cap - *len - 1, f);

		if (n == 0)
			break;
		*len += n;
	}
	fclose(f);
	buf[*len] = '\0';
	return buf;
}

/* The document for the template text; every table used exactly once. */
static int doc_render(FILE *out, const char *tpl, const char *tpl_path)
{
	size_t used = 0;
	int line = 0;

	for (const char *p = tpl; *p; ) {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);

		line++;
		if (len > 7 && strncmp(p, "@keys ", 6) == 0 && p[len - 1] == '@') {
			char table[64];
			size_t n = len - 7;

			if (n >= sizeof(table)) {
				fprintf(stderr, "%s:%d: table name too long\n", tpl_path, line);
				return -1;
			}
			memcpy(table, p + 6, n);
			table[n] = '\0';
			n = doc_table(out, table);
			if (n == 0) {
				fprintf(stderr, "%s:%d: no key is in table '%s'\n",
					tpl_path, line, table);
				return -1;
			}
			used += n;
		} else {
			fwrite(p, 1, len, out);
			if (nl)
				fputc('\n', out);
		}
		p += len + (nl ? 1 : 0);
	}
	if (used != config_nkeys) {
		fprintf(stderr, "%s: %zu of %zu keys are in no @keys table (or in two)\n",
			tpl_path, config_nkeys - used, config_nkeys);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	bool check = argc == 4 && strcmp(argv[1], "--check") == 0;
	const char *tpl_path = check ? argv[2] : argv[1];
	char *tpl = NULL, *doc = NULL, *want = NULL, *have = NULL;
	size_t tpl_len, want_len = 0, have_len = 0;
	FILE *out = NULL;
	int rc = 2;

	if (!check && (argc < 2 || argc > 3 || argv[1][0] == '-')) {
		fprintf(stderr, "usage: baton-config-doc TEMPLATE [OUT]\n"
				"       baton-config-doc --check TEMPLATE DOC\n");
		return 2;
	}
	tpl = doc_read(tpl_path, &tpl_len);
	if (tpl == NULL) {
		fprintf(stderr, "baton-config-doc: %s: %s\n", tpl_path, strerror(errno));
		goto out;
	}
	out = open_memstream(&want, &want_len);
	if (out == NULL || doc_render(out, tpl, tpl_path) < 0)
		goto out;
	fclose(out);
	out = NULL;
	if (check) {
		const char *a, *b;
		int line = 1;

		have = doc_read(argv[3], &have_len);
		if (have == NULL) {
			fprintf(stderr, "baton-config-doc: %s: %s\n", argv[3], strerror(errno));
			goto out;
		}
		if (have_len == want_len && memcmp(have, want, want_len) == 0) {
			rc = 0;
			goto out;
		}
		for (a = have, b = want; *a && *a == *b; a++, b++)
			line += *a == '\n';
		fprintf(stderr, "%s:%d: differs from what %s and common/config_keys.c generate; run scripts/gen-config-doc (and commit the result)\n",
			argv[3], line, tpl_path);
		rc = 1;
		goto out;
	}
	doc = argc == 3 ? argv[2] : NULL;
	if (doc != NULL) {
		FILE *f = fopen(doc, "we");

		if (f == NULL || fwrite(want, 1, want_len, f) != want_len ||
		    fclose(f) != 0) {
			fprintf(stderr, "baton-config-doc: %s: %s\n", doc, strerror(errno));
			goto out;
		}
	} else if (fwrite(want, 1, want_len, stdout) != want_len) {
		goto out;
	}
	rc = 0;
out:
	if (out != NULL)
		fclose(out);
	free(tpl);
	free(want);
	free(have);
	return rc;
}
