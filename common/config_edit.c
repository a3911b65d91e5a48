/* common/config_edit.c: see config_edit.h. The file is kept as its lines
 * (without terminators); every edit is computed first and applied in one
 * step, so a failure leaves the lines as they were. */
#include "common/config_edit.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

struct config_edit {
	char **lines;   /* without "\n" (a CRLF file's lines end in "\r") */
	size_t n, cap;
	bool crlf;      /* new lines end in "\r\n" */
	bool final_nl;  /* the last line has its newline */
};

enum line_kind { LINE_BLANK, LINE_COMMENT, LINE_SECTION, LINE_KEY };

static const char *skip_blank(const char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	return s;
}

static enum line_kind line_kind(const char *l)
{
	const char *s = skip_blank(l);

	if (*s == '\0' || *s == '\r')
		return LINE_BLANK;
	if (*s == ';' || *s == '#')
		return LINE_COMMENT;
	if (*s == '[')
		return LINE_SECTION;
	return LINE_KEY;
}

/* Does the name between [ and ] (blanks folded) equal want? */
static bool section_is(const char *l, const char *want)
{
	const char *s = skip_blank(l) + 1, *end = strchr(s, ']');
	const char *w = skip_blank(want);

	if (end == NULL)
		return false;
	s = skip_blank(s);
	while (s < end && *w != '\0') {
		if (*s == ' ' || *s == '\t') {
			if (*w != ' ' && *w != '\t')
				return false;
			while (s < end && (*s == ' ' || *s == '\t'))
				s++;
			w = skip_blank(w);
			continue;
		}
		if (*s++ != *w++)
			return false;
	}
	while (s < end && (*s == ' ' || *s == '\t'))
		s++;
	return s == end && *skip_blank(w) == '\0';
}

/* Is line l a line of key? (key up to '=' or ':', blanks trimmed) */
static bool key_is(const char *l, const char *key)
{
	const char *s = skip_blank(l), *end = s + strcspn(s, "=:");
	size_t n = strlen(key);

	if (*end == '\0')
		return false;
	while (end > s && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	return (size_t)(end - s) == n && memcmp(s, key, n) == 0;
}

static void edit_seterr(char *err, size_t errlen, const char *fmt, size_t a)
{
	if (err != NULL && errlen > 0)
		snprintf(err, errlen, fmt, a);
}

static int lines_reserve(struct config_edit *e, size_t extra)
{
	char **v;
	size_t cap;

	if (e->n + extra <= e->cap)
		return 0;
	cap = e->cap ? e->cap * 2 : 16;
	while (cap < e->n + extra)
		cap *= 2;
	v = realloc(e->lines, cap * sizeof(*v));
	if (v == NULL)
		return -ENOMEM;
	e->lines = v;
	e->cap = cap;
	return 0;
}

struct config_edit *config_edit_parse(const char *text, size_t len, char *err,
				      size_t errlen)
{
	struct config_edit *e = calloc(1, sizeof(*e));
	size_t pos = 0, lineno = 0;

	if (e == NULL)
		goto oom;
	if (len > CONFIG_EDIT_MAX_FILE) {
		edit_seterr(err, errlen, "over %zu bytes", CONFIG_EDIT_MAX_FILE);
		goto fail;
	}
	if (memchr(text, '\0', len) != NULL) {
		edit_seterr(err, errlen, "a NUL byte at offset %zu",
			    (size_t)((const char *)memchr(text, '\0', len) - text));
		goto fail;
	}
	e->final_nl = true;
	while (pos < len) {
		const char *nl = memchr(text + pos, '\n', len - pos);
		size_t l = nl ? (size_t)(nl - (text + pos)) : len - pos;

		lineno++;
		if (l > CONFIG_EDIT_MAX_LINE) {
			if (err != NULL && errlen > 0)
				snprintf(err, errlen,
					 "line %zu: longer than %d characters",
					 lineno, CONFIG_EDIT_MAX_LINE);
			goto fail;
		}
		if (lines_reserve(e, 1) < 0 ||
		    (e->lines[e->n] = strndup(text + pos, l)) == NULL)
			goto oom;
		if (lineno == 1 && l > 0 && text[pos + l - 1] == '\r' && nl)
			e->crlf = true;
		e->n++;
		pos += l + (nl ? 1 : 0);
		if (nl == NULL)
			e->final_nl = false;
	}
	return e;
oom:
	if (err != NULL && errlen > 0)
		snprintf(err, errlen, "out of memory");
fail:
	config_edit_free(e);
	return NULL;
}

struct config_edit *config_edit_read(const char *path, char *err, size_t errlen)
{
	struct config_edit *e = NULL;
	char *buf = NULL;
	size_t len = 0, cap = 0;
	FILE *f = fopen(path, "re");

	if (f == NULL) {
		if (err != NULL)
			snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return NULL;
	}
	for (;;) {
		size_t got;

		if (len + 4096 > cap) {
			char *g = realloc(buf, cap + 65536);

			if (g == NULL) {
				snprintf(err, errlen, "out of memory");
				goto out;
			}
			buf = g;
			cap += 65536;
		}
		got = fread(buf + len, 1, cap - len, f);
		len += got;
		if (got == 0)
			break;
		if (len > CONFIG_EDIT_MAX_FILE)
			break;
	}
	if (ferror(f)) {
		snprintf(err, errlen, "%s: read error", path);
		goto out;
	}
	e = config_edit_parse(buf, len, err, errlen);
out:
	fclose(f);
	free(buf);
	return e;
}

void config_edit_free(struct config_edit *e)
{
	if (e == NULL)
		return;
	for (size_t i = 0; i < e->n; i++)
		free(e->lines[i]);
	free(e->lines);
	free(e);
}

/* Index of the section's header, or -1. */
static long find_section(const struct config_edit *e, const char *section)
{
	for (size_t i = 0; i < e->n; i++)
		if (line_kind(e->lines[i]) == LINE_SECTION &&
		    section_is(e->lines[i], section))
			return (long)i;
	return -1;
}

/* The end (exclusive) of a section's body: the next header, less the
 * comment block directly above it (that one introduces the next section). */
static size_t section_end(const struct config_edit *e, size_t header)
{
	size_t next = header + 1, end;

	while (next < e->n && line_kind(e->lines[next]) != LINE_SECTION)
		next++;
	end = next;
	if (next < e->n)
		while (end > header + 1 &&
		       line_kind(e->lines[end - 1]) == LINE_COMMENT)
			end--;
	return end;
}

/* Where a new key line of the section goes: after its last key line. */
static size_t section_insert_at(const struct config_edit *e, size_t header)
{
	size_t end = section_end(e, header), at = header + 1;

	for (size_t i = header + 1; i < end; i++)
		if (line_kind(e->lines[i]) == LINE_KEY)
			at = i + 1;
	return at;
}

bool config_edit_has_section(const struct config_edit *e, const char *section)
{
	return find_section(e, section) >= 0;
}

static bool has_edge_blank(const char *s)
{
	size_t n = strlen(s);

	return n > 0 && (isspace((unsigned char)s[0]) ||
			 isspace((unsigned char)s[n - 1]));
}

static bool valid_section(const char *s)
{
	return s[0] != '\0' && !has_edge_blank(s) && strpbrk(s, "]\r\n;#") == NULL;
}

static bool valid_key(const char *k)
{
	return k[0] != '\0' && strpbrk(k, "=: \t\r\n;#[") == NULL;
}

/* inih ends a value at ";" after a blank (an inline comment) and trims
 * blanks: such a value would not read back as given. */
static bool valid_value(const char *v)
{
	if (strpbrk(v, "\r\n") != NULL || has_edge_blank(v) || v[0] == ';')
		return false;
	for (const char *p = v; *p != '\0'; p++)
		if (*p == ';' && p > v && (p[-1] == ' ' || p[-1] == '\t'))
			return false;
	return true;
}

/* A new line "fmt" (+ "\r" in a CRLF file), or -E2BIG / -ENOMEM. */
static int make_line(const struct config_edit *e, char **out, const char *a,
		     const char *sep, const char *b, const char *tail)
{
	char *l = NULL;

	if (asprintf(&l, "%s%s%s%s%s", a, sep, b, tail, e->crlf ? "\r" : "") < 0)
		return -ENOMEM;
	if (strlen(l) > CONFIG_EDIT_MAX_LINE) {
		free(l);
		return -E2BIG;
	}
	*out = l;
	return 0;
}

/* Insert lines[0..k) at position at (ownership transferred on success). */
static int insert_lines(struct config_edit *e, size_t at, char **lines, size_t k)
{
	if (lines_reserve(e, k) < 0)
		return -ENOMEM;
	memmove(&e->lines[at + k], &e->lines[at], (e->n - at) * sizeof(char *));
	memcpy(&e->lines[at], lines, k * sizeof(char *));
	e->n += k;
	return 0;
}

static void remove_lines(struct config_edit *e, size_t at, size_t k)
{
	for (size_t i = at; i < at + k; i++)
		free(e->lines[i]);
	memmove(&e->lines[at], &e->lines[at + k], (e->n - at - k) * sizeof(char *));
	e->n -= k;
}

/* Lines that start a new section at the end: a blank line before it
 * unless the file is empty or ends in one. The last line gets its newline
 * (what follows it would otherwise join it). */
static int append_section(struct config_edit *e, const char *section,
			  size_t *header)
{
	char *add[2] = { NULL, NULL };
	size_t k = 0;
	int r;

	if (e->n > 0 && line_kind(e->lines[e->n - 1]) != LINE_BLANK) {
		if ((r = make_line(e, &add[k], "", "", "", "")) < 0)
			return r;
		k++;
	}
	if ((r = make_line(e, &add[k], "[", section, "]", "")) < 0 ||
	    (r = insert_lines(e, e->n, add, k + 1)) < 0) {
		free(add[0]);
		free(add[1]);
		return r;
	}
	e->final_nl = true;
	*header = e->n - 1;
	return 0;
}

int config_edit_add_section(struct config_edit *e, const char *section)
{
	size_t h;

	if (!valid_section(section))
		return -EINVAL;
	if (find_section(e, section) >= 0)
		return -EEXIST;
	return append_section(e, section, &h);
}

/* The text after a key line's value that we keep: an inline comment (a
 * ";" after a blank) with the blanks before it; "" without one. */
static const char *inline_comment(const char *l)
{
	const char *v = l + strcspn(l, "=:");

	for (const char *p = v; *p != '\0'; p++)
		if (*p == ';' && (p[-1] == ' ' || p[-1] == '\t')) {
			while (p > v + 1 && (p[-1] == ' ' || p[-1] == '\t'))
				p--;
			return p;
		}
	return "";
}

static int edit_key(struct config_edit *e, const char *section, const char *key,
		    const char *value, bool replace)
{
	long h = find_section(e, section);
	size_t hh, end, at, first = 0, nfound = 0;
	char *line = NULL;
	int r;

	if (!valid_section(section) || !valid_key(key) || !valid_value(value))
		return -EINVAL;
	if (h < 0) {
		/* check the line fits before adding the section */
		if ((r = make_line(e, &line, key, " = ", value, "")) < 0)
			return r;
		free(line);
		line = NULL;
		if ((r = append_section(e, section, &hh)) < 0)
			return r;
	} else {
		hh = (size_t)h;
	}
	end = section_end(e, hh);
	at = section_insert_at(e, hh);
	for (size_t i = hh + 1; i < end; i++)
		if (line_kind(e->lines[i]) == LINE_KEY && key_is(e->lines[i], key)) {
			if (nfound++ == 0)
				first = i;
			at = i + 1;
		}
	if (replace && nfound > 0) {
		const char *l = e->lines[first], *ind_end = skip_blank(l);
		const char *cm = inline_comment(l);
		char *indent = strndup(l, (size_t)(ind_end - l));
		char *tail = strdup(cm);

		if (tail && e->crlf && tail[0] && tail[strlen(tail) - 1] == '\r')
			tail[strlen(tail) - 1] = '\0';
		if (indent == NULL || tail == NULL) {
			r = -ENOMEM;
		} else {
			char *k2 = NULL;

			r = asprintf(&k2, "%s%s", indent, key) < 0 ? -ENOMEM : 0;
			if (r == 0)
				r = make_line(e, &line, k2, " = ", value, tail);
			free(k2);
		}
		free(indent);
		free(tail);
		if (r < 0)
			return r;
		free(e->lines[first]);
		e->lines[first] = line;
		/* the repeats go, last first so indexes hold */
		for (size_t i = end; i-- > first + 1;)
			if (line_kind(e->lines[i]) == LINE_KEY &&
			    key_is(e->lines[i], key))
				remove_lines(e, i, 1);
		return 0;
	}
	if ((r = make_line(e, &line, key, " = ", value, "")) < 0)
		return r;
	if (at == e->n && !e->final_nl && e->n > 0)
		e->final_nl = true; /* the last line must end before ours */
	if ((r = insert_lines(e, at, &line, 1)) < 0) {
		free(line);
		return r;
	}
	return 0;
}

int config_edit_set(struct config_edit *e, const char *section, const char *key,
		    const char *value)
{
	return edit_key(e, section, key, value, true);
}

int config_edit_add(struct config_edit *e, const char *section, const char *key,
		    const char *value)
{
	return edit_key(e, section, key, value, false);
}

int config_edit_unset(struct config_edit *e, const char *section, const char *key)
{
	long h = find_section(e, section);
	size_t end, removed = 0;

	if (h < 0)
		return -ENOENT;
	end = section_end(e, (size_t)h);
	for (size_t i = end; i-- > (size_t)h + 1;)
		if (line_kind(e->lines[i]) == LINE_KEY && key_is(e->lines[i], key)) {
			remove_lines(e, i, 1);
			removed++;
		}
	return removed ? 0 : -ENOENT;
}

char *config_edit_get(const struct config_edit *e, const char *section,
		      const char *key)
{
	long h = find_section(e, section);
	size_t end;

	if (h < 0) {
		errno = ENOENT;
		return NULL;
	}
	end = section_end(e, (size_t)h);
	for (size_t i = (size_t)h + 1; i < end; i++) {
		const char *l = e->lines[i], *v, *stop;
		char *out;

		if (line_kind(l) != LINE_KEY || !key_is(l, key))
			continue;
		v = skip_blank(l + strcspn(l, "=:") + 1);
		stop = inline_comment(l);
		if (*stop == '\0')
			stop = v + strlen(v);
		while (stop > v && isspace((unsigned char)stop[-1]))
			stop--;
		out = strndup(v, (size_t)(stop - v));
		if (out == NULL)
			errno = ENOMEM;
		return out;
	}
	errno = ENOENT;
	return NULL;
}

/* Remove the first section of that name (its header, body and the
 * comment block directly above it). */
static void del_one_section(struct config_edit *e, size_t h)
{
	size_t start = h, end;

	while (start > 0 && line_kind(e->lines[start - 1]) == LINE_COMMENT)
		start--;
	end = section_end(e, h);
	remove_lines(e, start, end - start);
	/* no doubled blank line where it was, none left at the end */
	while (start > 0 && line_kind(e->lines[start - 1]) == LINE_BLANK &&
	       (start == e->n || line_kind(e->lines[start]) == LINE_BLANK))
		remove_lines(e, start - 1, 1), start--;
}

int config_edit_del_section(struct config_edit *e, const char *section)
{
	long h = find_section(e, section);

	if (h < 0)
		return -ENOENT;
	/* every one of that name (a file the loader refuses may repeat it) */
	for (; h >= 0; h = find_section(e, section))
		del_one_section(e, (size_t)h);
	if (e->n == 0)
		e->final_nl = true;
	return 0;
}

char *config_edit_text(const struct config_edit *e, size_t *len)
{
	size_t total = 1;
	char *out, *p;

	for (size_t i = 0; i < e->n; i++)
		total += strlen(e->lines[i]) + 1;
	out = malloc(total);
	if (out == NULL)
		return NULL;
	p = out;
	for (size_t i = 0; i < e->n; i++) {
		size_t l = strlen(e->lines[i]);

		memcpy(p, e->lines[i], l);
		p += l;
		if (i + 1 < e->n || e->final_nl)
			*p++ = '\n';
	}
	*p = '\0';
	if (len != NULL)
		*len = (size_t)(p - out);
	return out;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static char *dir_of(const char *path)
{
	char *copy = strdup(path), *d;

	if (copy == NULL)
		return NULL;
	d = strdup(dirname(copy));
	free(copy);
	return d;
}

int config_edit_write(const struct config_edit *e, const char *path, char **tmp)
{
	char *copy = strdup(path), *dir = dir_of(path), *name = NULL, *text = NULL;
	struct stat st;
	size_t len;
	int fd = -1, r;

	*tmp = NULL;
	if (copy == NULL || dir == NULL ||
	    asprintf(&name, "%s/.%s.XXXXXX", dir, basename(copy)) < 0) {
		name = NULL;
		r = -ENOMEM;
		goto out;
	}
	text = config_edit_text(e, &len);
	if (text == NULL) {
		r = -ENOMEM;
		goto out;
	}
	fd = mkostemp(name, O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		goto out;
	}
	if (stat(path, &st) == 0) {
		if (fchmod(fd, st.st_mode & 07777) < 0) {
			r = -errno;
			goto fail;
		}
		(void)!fchown(fd, st.st_uid, st.st_gid); /* only root may */
	}
	if ((r = write_all(fd, text, len)) < 0)
		goto fail;
	if (fsync(fd) < 0) {
		r = -errno;
		goto fail;
	}
	if (close(fd) < 0) {
		fd = -1;
		r = -errno;
		goto fail;
	}
	fd = -1;
	*tmp = name;
	name = NULL;
	r = 0;
	goto out;
fail:
	unlink(name);
out:
	if (fd >= 0)
		close(fd);
	free(copy);
	free(dir);
	free(name);
	free(text);
	return r;
}

int config_edit_install(const char *tmp, const char *path)
{
	char *dir = dir_of(path);
	int dfd;

	if (dir == NULL)
		return -ENOMEM;
	if (rename(tmp, path) < 0) {
		int r = -errno;

		free(dir);
		return r;
	}
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(dir);
	if (dfd >= 0) {
		fsync(dfd);
		close(dfd);
	}
	return 0;
}

int config_edit_lock(const char *path)
{
	char *dir = dir_of(path);
	int fd;

	if (dir == NULL)
		return -ENOMEM;
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(dir);
	if (fd < 0)
		return -errno;
	if (flock(fd, LOCK_EX) < 0) {
		int r = -errno;

		close(fd);
		return r;
	}
	return fd;
}
