/* common/config_edit.h: edit the baton INI file the way an operator would,
 * for `batonctl user|network` (issue 11 §4). The file stays the source of
 * truth for operators who deploy it with configuration management, so an
 * edit keeps every comment, blank line, indentation and line ending of
 * what it does not change:
 *
 *   - a key that exists is replaced in place (its indentation and an inline
 *     "; comment" after the value kept); repeats of it (e.g. `bind`) are
 *     dropped by _set, kept by _add (which appends after the last one);
 *   - a new key goes after the last key line of its section (before the
 *     comments that introduce the next section); a new section goes at the
 *     end of the file, after one blank line;
 *   - a deleted section takes its header, its lines and the comment block
 *     directly above the header (no blank line between) with it (every
 *     section of that name, should the file repeat one);
 *   - CRLF files stay CRLF; a file without a trailing newline keeps none
 *     unless a line is added at its end (every added line ends in one).
 *
 * The editor knows the INI syntax only (inih's, as common/config.c reads
 * it), not the keys: the caller runs config_load() on the result before it
 * is installed (config_edit_write() then config_edit_install()).
 *
 * Bounds: a line (without its "\n"; a CRLF's "\r" counts) holds at most
 * CONFIG_EDIT_MAX_LINE bytes, what config_load() reads (inih's INI_MAX_LINE
 * of 200 with fgets' NUL and the newline). A file with a longer line, a NUL
 * byte or over CONFIG_EDIT_MAX_FILE bytes is refused by the parse; an edit
 * that would make a longer line is refused (-E2BIG) and changes nothing.
 *
 * Section names are given without brackets ("user alice", "network
 * libera") and compared with runs of blanks folded to one space. Keys are
 * compared exactly (inih's keys are case-sensitive).
 *
 * Ownership: config_edit_parse()/_read() return an object owned by the
 * caller (config_edit_free()); strings passed in are copied.
 */
#ifndef BATON_COMMON_CONFIG_EDIT_H
#define BATON_COMMON_CONFIG_EDIT_H

#include <stdbool.h>
#include <stddef.h>

#define CONFIG_EDIT_MAX_LINE 198
#define CONFIG_EDIT_MAX_FILE (64u << 20)

struct config_edit;

/* NULL with err filled (out of memory, a NUL byte, a line too long: with
 * its line number). */
struct config_edit *config_edit_parse(const char *text, size_t len, char *err,
				      size_t errlen);
struct config_edit *config_edit_read(const char *path, char *err, size_t errlen);
void config_edit_free(struct config_edit *e);

bool config_edit_has_section(const struct config_edit *e, const char *section);
/* The value of the first `key` of the section (malloc'd), NULL when absent
 * (errno ENOENT) or out of memory (errno ENOMEM). */
char *config_edit_get(const struct config_edit *e, const char *section,
		      const char *key);

/* Every function below returns 0 or -errno and changes nothing on failure:
 *   -EINVAL  a section, key or value INI cannot hold as given (a newline,
 *            a NUL, a ";" that would start a comment, "=" or ":" in a key,
 *            "]" in a section name, leading or trailing blanks)
 *   -E2BIG   the line would be over CONFIG_EDIT_MAX_LINE
 *   -ENOENT  (_del_section, _unset) nothing to remove
 *   -EEXIST  (_add_section) already there
 *   -ENOMEM
 */
/* key = value: the first line of key replaced, further ones removed; added
 * when absent (the section too, at the end). */
int config_edit_set(struct config_edit *e, const char *section, const char *key,
		    const char *value);
/* One more `key = value` line (repeatable keys): after the last line of key
 * in the section, else where _set would add it. */
int config_edit_add(struct config_edit *e, const char *section, const char *key,
		    const char *value);
/* Remove every line of key in the section. */
int config_edit_unset(struct config_edit *e, const char *section, const char *key);
int config_edit_add_section(struct config_edit *e, const char *section);
int config_edit_del_section(struct config_edit *e, const char *section);

/* The file as text (malloc'd, NUL-terminated, *len without the NUL). */
char *config_edit_text(const struct config_edit *e, size_t *len);

/* Write the text to a new file beside `path` (same folder, so relative
 * paths inside resolve alike; mode and, when allowed, owner of `path`),
 * fsync it and return its name in *tmp (malloc'd). The caller validates
 * it (config_load(*tmp)) and then installs it or unlinks it. */
int config_edit_write(const struct config_edit *e, const char *path, char **tmp);
/* rename(tmp, path) and fsync the folder: readers see the old file or the
 * new one, never a part of either. */
int config_edit_install(const char *tmp, const char *path);
/* An exclusive lock on the folder of path (flock), held until the
 * returned fd is closed: two editors never lose each other's edit. */
int config_edit_lock(const char *path);

#endif
