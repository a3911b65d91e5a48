/* supervisor/releases.c: see releases.h. */
#include "supervisor/releases.h"
#include "common/clock.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>
#include <openssl/evp.h>

#include "common/json_builder.h"
#include "common/log.h"

#define RELEASES_FILE "releases.json"
#define RELEASES_DIR "releases"
#define RELEASE_BINARY "baton-sessiond"
#define RELEASES_FORMAT 1
#define RELEASES_FILE_MAX (4 * 1024 * 1024)
#define RELEASES_HISTORY_MIN 32 /* entries kept in the history (pruned too) */

struct releases {
	char *state_dir;
	char *rdir; /* state_dir/releases */
	char *file; /* state_dir/releases.json */
	unsigned keep;
	bool readonly;
	struct release *v; /* sorted newest first (installed, then version) */
	size_t n;
	char *problem;
	uint64_t seq; /* the last seq handed out */
	/* the rollback window (in memory: a supervisor restart ends it) */
	bool window;
	char window_version[RELEASE_VERSION_MAX];
	double window_at;
};

static const char *const state_names[] = {
	[RELEASE_CANDIDATE] = "candidate",
	[RELEASE_SERVING] = "serving",
	[RELEASE_GOOD] = "good",
	[RELEASE_BAD] = "bad",
};

const char *release_state_name(enum release_state s)
{
	if ((unsigned)s < sizeof(state_names) / sizeof(state_names[0]))
		return state_names[s];
	return "?";
}

static int release_state_parse(const char *s, enum release_state *out)
{
	for (unsigned i = 0; i < sizeof(state_names) / sizeof(state_names[0]); i++)
		if (strcmp(s, state_names[i]) == 0) {
			*out = (enum release_state)i;
			return 0;
		}
	return -1;
}

static void release_clear(struct release *r)
{
	free(r->binary);
	free(r->source);
	free(r->reason);
	memset(r, 0, sizeof(*r));
}

static int set_str(char **dst, const char *src)
{
	char *copy = src ? strdup(src) : NULL;

	if (src && copy == NULL)
		return -ENOMEM;
	free(*dst);
	*dst = copy;
	return 0;
}

static void releases_add_problem(struct releases *rs, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Problems accumulate ("; "), for the log and --check. */
static void releases_add_problem(struct releases *rs, const char *fmt, ...)
{
	char buf[1024], *joined = NULL;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (rs->problem == NULL) {
		rs->problem = strdup(buf);
		if (rs->problem == NULL)
			log_error("releases", "%s (not kept for --check and status: out of memory)",
				  buf);
		return;
	}
	if (asprintf(&joined, "%s; %s", rs->problem, buf) < 0) {
		log_error("releases", "%s (not kept for --check and status: out of memory)", buf);
		return;
	}
	free(rs->problem);
	rs->problem = joined;
}

bool releases_version_valid(const char *version)
{
	size_t len = strlen(version);

	if (len == 0 || len >= RELEASE_VERSION_MAX || version[0] == '.')
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = version[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || strchr("._+~-", c)))
			return false;
	}
	return true;
}

static bool sha_valid(const char *s)
{
	if (strlen(s) != RELEASE_SHA256_HEX - 1)
		return false;
	for (const char *p = s; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return false;
	return true;
}

static char *release_binary_path(const struct releases *rs, const char *version)
{
	char *p = NULL;

	if (asprintf(&p, "%s/%s/%s", rs->rdir, version, RELEASE_BINARY) < 0)
		return NULL;
	return p;
}

/* Newest installation first; ties by version (stable order for the file). */
static int release_cmp(const void *a, const void *b)
{
	const struct release *x = a, *y = b;

	if (x->seq_installed != y->seq_installed)
		return x->seq_installed > y->seq_installed ? -1 : 1;
	if (x->installed != y->installed)
		return x->installed > y->installed ? -1 : 1;
	return strcmp(x->version, y->version);
}

static void releases_sort(struct releases *rs)
{
	if (rs->n > 1)
		qsort(rs->v, rs->n, sizeof(*rs->v), release_cmp);
}

/* Was `a` last installed or in use before `b`? What pruning orders by. */
static bool release_older(const struct release *a, const struct release *b)
{
	uint64_t sa = a->seq_used > a->seq_installed ? a->seq_used : a->seq_installed;
	uint64_t sb = b->seq_used > b->seq_installed ? b->seq_used : b->seq_installed;
	int64_t ta = a->installed, tb = b->installed;

	if (sa != sb)
		return sa < sb;
	ta = a->retired > ta ? a->retired : ta;
	tb = b->retired > tb ? b->retired : tb;
	return ta < tb;
}

static uint64_t releases_next_seq(struct releases *rs)
{
	return ++rs->seq;
}

/* Did `a` serve more recently than `b`? */
static bool release_more_recent(const struct release *a, const struct release *b)
{
	if (a->seq_used != b->seq_used)
		return a->seq_used > b->seq_used;
	if (a->retired != b->retired)
		return a->retired > b->retired;
	if (a->served != b->served)
		return a->served > b->served;
	return a->installed > b->installed;
}

/* --- lookups -------------------------------------------------------------- */

size_t releases_count(const struct releases *rs)
{
	return rs->n;
}

const struct release *releases_at(const struct releases *rs, size_t i)
{
	return i < rs->n ? &rs->v[i] : NULL;
}

static struct release *releases_find_mut(const struct releases *rs,
					 const char *version)
{
	for (size_t i = 0; i < rs->n; i++)
		if (strcmp(rs->v[i].version, version) == 0)
			return &rs->v[i];
	return NULL;
}

const struct release *releases_find(const struct releases *rs,
				    const char *version)
{
	return releases_find_mut(rs, version);
}

const struct release *releases_find_sha(const struct releases *rs,
					const char *sha256)
{
	for (size_t i = 0; i < rs->n; i++)
		if (strcmp(rs->v[i].sha256, sha256) == 0)
			return &rs->v[i];
	return NULL;
}

const struct release *releases_serving(const struct releases *rs)
{
	for (size_t i = 0; i < rs->n; i++)
		if (rs->v[i].state == RELEASE_SERVING)
			return &rs->v[i];
	return NULL;
}

const char *releases_problem(const struct releases *rs)
{
	return rs->problem;
}

const char *releases_file(const struct releases *rs)
{
	return rs->file;
}

static bool release_on_disk(const struct release *r)
{
	return !r->pruned && r->binary != NULL && access(r->binary, X_OK) == 0;
}

const struct release *releases_rollback_target(const struct releases *rs,
					       bool force, char *why,
					       size_t len)
{
	const struct release *best = NULL, *any = NULL;
	bool listed = false;
	size_t used = 0;

	for (size_t i = 0; i < rs->n; i++) {
		const struct release *r = &rs->v[i];

		if (r->state == RELEASE_SERVING || !release_on_disk(r))
			continue;
		if (r->state == RELEASE_GOOD &&
		    (best == NULL || release_more_recent(r, best)))
			best = r;
		if (any == NULL || release_more_recent(r, any))
			any = r;
	}
	if (best != NULL)
		return best;
	if (force && any != NULL)
		return any;
	if (why == NULL || len == 0)
		return NULL;
	/* Say what there is, so the operator knows what --force would do. */
	used = (size_t)snprintf(why, len, "no good release to roll back to");
	for (size_t i = 0; i < rs->n && used < len; i++) {
		const struct release *r = &rs->v[i];

		if (r->state == RELEASE_SERVING || r->pruned)
			continue;
		used += (size_t)snprintf(why + used, len - used, "%s%s is %s%s%s",
					 listed ? "; " : " (", r->version,
					 release_state_name(r->state),
					 r->reason ? ": " : "", r->reason ? r->reason : "");
		listed = true;
	}
	if (used < len && listed)
		snprintf(why + used, len - used, ")%s%s",
			 any ? "; rollback --force goes to " : "",
			 any ? any->version : "");
	else if (used < len)
		snprintf(why + used, len - used,
			 ": no other release is installed (batonctl releases)");
	return NULL;
}

/* --- hashing and copying -------------------------------------------------- */

static void hex(const unsigned char *d, unsigned n, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (unsigned i = 0; i < n; i++) {
		out[2 * i] = digits[d[i] >> 4];
		out[2 * i + 1] = digits[d[i] & 15];
	}
	out[2 * n] = '\0';
}

/* Hash fd from its current offset to EOF; with out_fd >= 0, write what is
 * read there too. 0 or -errno. */
static int sha256_stream(int fd, int out_fd, char out[RELEASE_SHA256_HEX])
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned char buf[65536], md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;
	int r = 0;

	if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
		r = -ENOMEM;
		goto out;
	}
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = -errno;
			goto out;
		}
		if (n == 0)
			break;
		EVP_DigestUpdate(ctx, buf, (size_t)n);
		for (ssize_t off = 0; out_fd >= 0 && off < n;) {
			ssize_t w = write(out_fd, buf + off, (size_t)(n - off));

			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0) {
				r = -errno;
				goto out;
			}
			off += w;
		}
	}
	if (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen != 32) {
		r = -EIO;
		goto out;
	}
	hex(md, mdlen, out);
out:
	EVP_MD_CTX_free(ctx);
	return r;
}

int releases_sha256_file(const char *path, char out[RELEASE_SHA256_HEX],
			 char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), r;

	if (fd < 0) {
		r = -errno;
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return r;
	}
	r = sha256_stream(fd, -1, out);
	if (r < 0)
		snprintf(err, errlen, "%s: %s", path, strerror(-r));
	close(fd);
	return r;
}

static void fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
}

static int mkdir_if_missing(const char *dir)
{
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* Copy source to dest (in its own folder, which must exist) through a
 * temp file, mode 0755, fsync'd; the copy's sha256 must be `sha`. */
static int copy_binary(const char *source, const char *folder, const char *dest,
		       const char *sha, char *why, size_t len)
{
	char *tmp = NULL, got[RELEASE_SHA256_HEX];
	int in = -1, out = -1, r;

	if (asprintf(&tmp, "%s/.%s.tmp.%d", folder, RELEASE_BINARY,
		     (int)getpid()) < 0) {
		tmp = NULL;
		r = -ENOMEM;
		snprintf(why, len, "out of memory");
		goto out;
	}
	in = open(source, O_RDONLY | O_CLOEXEC);
	if (in < 0) {
		r = -errno;
		snprintf(why, len, "cannot read %s: %s", source, strerror(errno));
		goto out;
	}
	out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0700);
	if (out < 0) {
		r = -errno;
		snprintf(why, len, "cannot create %s: %s", tmp, strerror(errno));
		goto out;
	}
	r = sha256_stream(in, out, got);
	if (r == 0 && fchmod(out, 0755) < 0)
		r = -errno;
	if (r == 0 && fsync(out) < 0)
		r = -errno;
	if (r < 0) {
		snprintf(why, len, "cannot copy %s to %s: %s", source, tmp,
			 strerror(-r));
		goto out;
	}
	if (strcmp(got, sha) != 0) {
		r = -EAGAIN;
		snprintf(why, len, "%s changed while it was being deployed (sha256 %.12s... then %.12s...)",
			 source, sha, got);
		goto out;
	}
	if (close(out) < 0) {
		out = -1;
		r = -errno;
		snprintf(why, len, "cannot write %s: %s", tmp, strerror(-r));
		goto out;
	}
	out = -1;
	if (rename(tmp, dest) < 0) {
		r = -errno;
		snprintf(why, len, "cannot install %s: %s", dest, strerror(errno));
		goto out;
	}
	fsync_dir(folder);
	r = 0;
out:
	if (in >= 0)
		close(in);
	if (out >= 0)
		close(out);
	if (r < 0 && tmp)
		unlink(tmp);
	free(tmp);
	return r;
}

/* --- the file --------------------------------------------------------------- */

struct json_object *release_json(const struct release *r)
{
	struct jb jb_ = JB_INIT, *jb = &jb_;
	struct json_object *o = jb_obj(jb);

#define TIME_OR_NULL(t) ((t) ? jb_i64(jb, t) : NULL)
	jb_add(jb, o, "version", jb_str(jb, r->version));
	jb_add(jb, o, "state",
			       jb_str(jb, release_state_name(r->state)));
	jb_add(jb, o, "binary", r->binary && !r->pruned
				       ? jb_str(jb, r->binary) : NULL);
	jb_add(jb, o, "source", jb_str(jb, r->source ? r->source : ""));
	jb_add(jb, o, "sha256", jb_str(jb, r->sha256));
	jb_add(jb, o, "installed", TIME_OR_NULL(r->installed));
	jb_add(jb, o, "served", TIME_OR_NULL(r->served));
	jb_add(jb, o, "retired", TIME_OR_NULL(r->retired));
	jb_add(jb, o, "reason", r->reason ? jb_str(jb, r->reason) : NULL);
	jb_add(jb, o, "pruned", jb_bool(jb, r->pruned));
	jb_add(jb, o, "seq_installed", jb_i64(jb, (int64_t)r->seq_installed));
	jb_add(jb, o, "seq_used", jb_i64(jb, (int64_t)r->seq_used));
#undef TIME_OR_NULL
	return jb_done(jb, o);
}

int releases_save(struct releases *rs)
{
	struct jb jb_ = JB_INIT, *jb = &jb_;
	struct json_object *o = jb_obj(jb), *a = jb_arr(jb);
	char *tmp = NULL;
	const char *text;
	size_t len, off = 0;
	int fd = -1, r;

	if (rs->readonly) {
		r = 0;
		goto out;
	}
	jb_add(jb, o, "format", jb_int(jb, RELEASES_FORMAT));
	for (size_t i = 0; i < rs->n; i++)
		jb_push(jb, a, jb_note(jb, release_json(&rs->v[i])));
	jb_add(jb, o, "releases", a);
	text = jb->oom ? NULL :
		json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
						  JSON_C_TO_STRING_NOSLASHESCAPE);
	if (text == NULL) {
		/* The file on disk stays as it was: never a partial history. */
		r = -ENOMEM;
		log_error("releases", "cannot write %s: out of memory", rs->file);
		goto out;
	}
	len = strlen(text);
	if (mkdir_if_missing(rs->state_dir) < 0) {
		r = -errno;
		log_error("releases", "state_dir %s: %s", rs->state_dir, strerror(-r));
		goto out;
	}
	if (asprintf(&tmp, "%s.tmp", rs->file) < 0) {
		tmp = NULL;
		r = -ENOMEM;
		goto out;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		r = -errno;
		log_error("releases", "cannot write %s: %s", tmp, strerror(-r));
		goto out;
	}
	while (off < len) {
		ssize_t n = write(fd, text + off, len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = -errno;
			log_error("releases", "cannot write %s: %s", tmp, strerror(-r));
			goto out;
		}
		off += (size_t)n;
	}
	if (write(fd, "\n", 1) != 1 || fsync(fd) < 0) {
		r = errno ? -errno : -EIO;
		log_error("releases", "cannot write %s: %s", tmp, strerror(-r));
		goto out;
	}
	r = close(fd);
	fd = -1;
	if (r < 0 || rename(tmp, rs->file) < 0) {
		r = -errno;
		log_error("releases", "cannot replace %s: %s", rs->file, strerror(-r));
		goto out;
	}
	fsync_dir(rs->state_dir);
	r = 0;
out:
	if (fd >= 0)
		close(fd);
	if (r < 0 && tmp)
		unlink(tmp);
	free(tmp);
	json_object_put(o);
	return r;
}

static const char *jget_str(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (json_object_object_get_ex(o, key, &v) && v &&
	    json_object_is_type(v, json_type_string))
		return json_object_get_string(v);
	return NULL;
}

static int64_t jget_time(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (json_object_object_get_ex(o, key, &v) && v &&
	    json_object_is_type(v, json_type_int)) {
		int64_t t = json_object_get_int64(v);

		return t > 0 ? t : 0;
	}
	return 0;
}

static int releases_append(struct releases *rs, const struct release *r)
{
	struct release *nv = realloc(rs->v, (rs->n + 1) * sizeof(*nv));

	if (nv == NULL)
		return -ENOMEM;
	rs->v = nv;
	rs->v[rs->n++] = *r;
	return 0;
}

/* One entry of the file; -1 (problem added) when it is not usable. */
static int releases_parse_entry(struct releases *rs, struct json_object *e,
				size_t idx)
{
	struct release r = { 0 };
	struct json_object *v;
	const char *version, *sha, *state, *source, *reason;

	if (!json_object_is_type(e, json_type_object)) {
		releases_add_problem(rs, "%s: entry %zu is not an object (dropped)",
				     rs->file, idx);
		return -1;
	}
	version = jget_str(e, "version");
	sha = jget_str(e, "sha256");
	state = jget_str(e, "state");
	if (version == NULL || !releases_version_valid(version) ||
	    releases_find(rs, version) != NULL) {
		releases_add_problem(rs, "%s: entry %zu has a missing, invalid or repeated version (dropped)",
				     rs->file, idx);
		return -1;
	}
	if (sha == NULL || !sha_valid(sha) || state == NULL ||
	    release_state_parse(state, &r.state) < 0) {
		releases_add_problem(rs, "%s: release %s has an invalid sha256 or state (dropped)",
				     rs->file, version);
		return -1;
	}
	snprintf(r.version, sizeof(r.version), "%s", version);
	snprintf(r.sha256, sizeof(r.sha256), "%s", sha);
	source = jget_str(e, "source");
	reason = jget_str(e, "reason");
	r.installed = jget_time(e, "installed");
	r.served = jget_time(e, "served");
	r.retired = jget_time(e, "retired");
	r.seq_installed = (uint64_t)jget_time(e, "seq_installed");
	r.seq_used = (uint64_t)jget_time(e, "seq_used");
	if (r.seq_installed > rs->seq)
		rs->seq = r.seq_installed;
	if (r.seq_used > rs->seq)
		rs->seq = r.seq_used;
	r.pruned = json_object_object_get_ex(e, "pruned", &v) && v &&
		   json_object_get_boolean(v);
	/* The path is derived, not trusted: the state dir may have moved. */
	r.binary = release_binary_path(rs, version);
	r.source = strdup(source ? source : "");
	r.reason = reason ? strdup(reason) : NULL;
	if (r.binary == NULL || r.source == NULL || (reason && r.reason == NULL) ||
	    releases_append(rs, &r) < 0) {
		release_clear(&r);
		return -ENOMEM;
	}
	return 0;
}

/* Parse the file's text; -1 (problem added) when it is unusable as a
 * whole. */
static int releases_parse(struct releases *rs, const char *text)
{
	enum json_tokener_error jerr = json_tokener_success;
	struct json_object *o = json_tokener_parse_verbose(text, &jerr), *a;
	int r = -1;

	if (o == NULL) {
		releases_add_problem(rs, "%s is corrupt: %s", rs->file,
				     json_tokener_error_desc(jerr));
		goto out;
	}
	if (!json_object_is_type(o, json_type_object) ||
	    !json_object_object_get_ex(o, "releases", &a) ||
	    !json_object_is_type(a, json_type_array)) {
		releases_add_problem(rs, "%s is corrupt: no \"releases\" list", rs->file);
		goto out;
	}
	for (size_t i = 0; i < json_object_array_length(a); i++)
		if (releases_parse_entry(rs, json_object_array_get_idx(a, i), i) == -ENOMEM)
			goto out;
	r = 0;
out:
	json_object_put(o);
	return r;
}

/* The file's text (NUL-terminated), NULL with *missing when it does not
 * exist, NULL with a problem when unreadable. */
static char *releases_read(struct releases *rs, bool *missing)
{
	struct stat st;
	char *buf = NULL;
	size_t off = 0;
	int fd = open(rs->file, O_RDONLY | O_CLOEXEC);

	*missing = false;
	if (fd < 0) {
		if (errno == ENOENT)
			*missing = true;
		else
			releases_add_problem(rs, "cannot read %s: %s", rs->file,
					     strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) < 0 || st.st_size > RELEASES_FILE_MAX) {
		releases_add_problem(rs, "%s is corrupt: larger than %d bytes",
				     rs->file, RELEASES_FILE_MAX);
		goto fail;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (buf == NULL)
		goto fail;
	while (off < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + off, (size_t)st.st_size - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		off += (size_t)n;
	}
	buf[off] = '\0';
	close(fd);
	return buf;
fail:
	free(buf);
	close(fd);
	return NULL;
}

/* Every releases/<version>/baton-sessiond the history does not know: a
 * candidate with an unknown state. Returns how many were added. */
static size_t releases_recover(struct releases *rs)
{
	DIR *d = opendir(rs->rdir);
	struct dirent *de;
	size_t added = 0;

	if (d == NULL)
		return 0;
	while ((de = readdir(d)) != NULL) {
		struct release r = { 0 };
		struct stat st;
		char err[256];

		if (!releases_version_valid(de->d_name) ||
		    releases_find(rs, de->d_name) != NULL)
			continue;
		r.binary = release_binary_path(rs, de->d_name);
		if (r.binary == NULL || stat(r.binary, &st) < 0 ||
		    !S_ISREG(st.st_mode) ||
		    releases_sha256_file(r.binary, r.sha256, err, sizeof(err)) < 0) {
			release_clear(&r);
			continue;
		}
		/* valid: shorter than RELEASE_VERSION_MAX */
		memcpy(r.version, de->d_name, strlen(de->d_name) + 1);
		r.state = RELEASE_CANDIDATE;
		r.installed = (int64_t)st.st_mtime;
		r.source = strdup("");
		r.reason = strdup("recovered from releases/: its state was not in releases.json");
		if (r.source == NULL || r.reason == NULL || releases_append(rs, &r) < 0) {
			release_clear(&r);
			break;
		}
		added++;
	}
	closedir(d);
	return added;
}

/* After loading: at most one serving release, and folders that vanished
 * count as pruned. */
static void releases_normalize(struct releases *rs)
{
	struct release *serving = NULL;

	for (size_t i = 0; i < rs->n; i++) {
		struct release *r = &rs->v[i];

		if (!r->pruned && access(r->binary, F_OK) < 0) {
			releases_add_problem(rs, "%s is gone (release %s: history only)",
					     r->binary, r->version);
			r->pruned = true;
		}
		if (r->state != RELEASE_SERVING)
			continue;
		if (serving == NULL || r->served > serving->served) {
			if (serving)
				serving->state = RELEASE_GOOD;
			serving = r;
		} else {
			r->state = RELEASE_GOOD;
		}
	}
}

struct releases *releases_open(const char *state_dir, unsigned keep,
			       bool readonly)
{
	struct releases *rs = calloc(1, sizeof(*rs));
	bool missing = false, rebuilt;
	char *text = NULL;
	size_t recovered;

	if (rs == NULL)
		return NULL;
	rs->keep = keep < 2 ? 2 : keep;
	rs->readonly = readonly;
	rs->state_dir = strdup(state_dir);
	if (rs->state_dir == NULL ||
	    asprintf(&rs->rdir, "%s/%s", state_dir, RELEASES_DIR) < 0 ||
	    asprintf(&rs->file, "%s/%s", state_dir, RELEASES_FILE) < 0) {
		releases_free(rs);
		return NULL;
	}
	text = releases_read(rs, &missing);
	rebuilt = text == NULL;
	if (text != NULL && releases_parse(rs, text) < 0) {
		rebuilt = true;
		/* Kept for whoever wants to look; the next save replaces it. */
		if (!readonly) {
			char *aside = NULL;

			if (asprintf(&aside, "%s.corrupt", rs->file) >= 0) {
				rename(rs->file, aside);
				free(aside);
			} else {
				log_error("releases", "out of memory: corrupt %s not kept aside (the next save replaces it)",
					  rs->file);
			}
		}
	}
	free(text);
	releases_normalize(rs);
	recovered = releases_recover(rs);
	if (missing && recovered > 0)
		releases_add_problem(rs, "%s is missing while %s holds %zu release(s): rebuilt from them (state unknown: candidate)",
				     rs->file, rs->rdir, recovered);
	else if (rebuilt && rs->problem != NULL)
		releases_add_problem(rs, "history rebuilt from %s (%zu release(s), state unknown: candidate)",
				     rs->rdir, recovered);
	else if (recovered > 0)
		releases_add_problem(rs, "%zu release folder(s) in %s were not in %s (added as candidates)",
				     recovered, rs->rdir, rs->file);
	releases_sort(rs);
	if (rs->problem != NULL && !readonly) {
		log_warn("releases", "%s", rs->problem);
		releases_save(rs);
	}
	return rs;
}

void releases_free(struct releases *rs)
{
	if (rs == NULL)
		return;
	for (size_t i = 0; i < rs->n; i++)
		release_clear(&rs->v[i]);
	free(rs->v);
	free(rs->state_dir);
	free(rs->rdir);
	free(rs->file);
	free(rs->problem);
	free(rs);
}

/* --- changes ---------------------------------------------------------------- */

int releases_admit(const struct releases *rs, const char *version,
		   const char *sha256, bool force, char *why, size_t len)
{
	const struct release *r;

	if (!releases_version_valid(version)) {
		snprintf(why, len, "version '%s' cannot name a release folder (1-%d of A-Z a-z 0-9 . _ + ~ -, not starting with '.')",
			 version, RELEASE_VERSION_MAX - 1);
		return -1;
	}
	r = releases_find(rs, version);
	if (r == NULL || force)
		return 0;
	if (strcmp(r->sha256, sha256) != 0) {
		snprintf(why, len, "release %s is already installed from another binary (sha256 %.16s..., this one %.16s...): a different build needs its own version; --force replaces the installed one",
			 version, r->sha256, sha256);
		return -1;
	}
	if (r->state == RELEASE_BAD) {
		snprintf(why, len, "release %s is marked bad: %s; --force deploys it anyway",
			 version, r->reason ? r->reason : "(no reason recorded)");
		return -1;
	}
	return 0;
}

int releases_install(struct releases *rs, const char *version,
		     const char *source, const char *sha256, char *why,
		     size_t len)
{
	struct release *r = releases_find_mut(rs, version), fresh = { 0 };
	char *dest = release_binary_path(rs, version), *folder = NULL;
	char *src_real = NULL, *dest_real = NULL, have[RELEASE_SHA256_HEX] = "";
	char err[256];
	int ret = -1;

	if (!releases_version_valid(version)) {
		snprintf(why, len, "version '%s' cannot name a release folder", version);
		goto out;
	}
	if (dest == NULL || asprintf(&folder, "%s/%s", rs->rdir, version) < 0) {
		folder = NULL;
		snprintf(why, len, "out of memory");
		goto out;
	}
	src_real = realpath(source, NULL);
	dest_real = realpath(dest, NULL);
	if (!(src_real && dest_real && strcmp(src_real, dest_real) == 0) &&
	    !(releases_sha256_file(dest, have, err, sizeof(err)) == 0 &&
	      strcmp(have, sha256) == 0)) {
		int e;

		if (rs->readonly) {
			snprintf(why, len, "read-only release store");
			goto out;
		}
		if ((e = mkdir_if_missing(rs->state_dir)) < 0 ||
		    (e = mkdir_if_missing(rs->rdir)) < 0 ||
		    (e = mkdir_if_missing(folder)) < 0) {
			snprintf(why, len, "cannot create %s: %s", folder, strerror(-e));
			goto out;
		}
		if (copy_binary(source, folder, dest, sha256, why, len) < 0)
			goto out;
		log_info("releases", "release %s installed: %s (from %s, sha256 %.16s...)",
			 version, dest, source, sha256);
	}
	if (r == NULL) {
		snprintf(fresh.version, sizeof(fresh.version), "%s", version);
		snprintf(fresh.sha256, sizeof(fresh.sha256), "%s", sha256);
		fresh.binary = dest;
		dest = NULL;
		fresh.source = strdup(source);
		fresh.state = RELEASE_CANDIDATE;
		fresh.installed = clock_wall_s();
		fresh.seq_installed = releases_next_seq(rs);
		if (fresh.source == NULL || releases_append(rs, &fresh) < 0) {
			release_clear(&fresh);
			snprintf(why, len, "out of memory");
			goto out;
		}
	} else {
		if (strcmp(r->sha256, sha256) != 0) {
			log_warn("releases", "release %s: binary replaced (sha256 %.16s... -> %.16s...)",
				 version, r->sha256, sha256);
			snprintf(r->sha256, sizeof(r->sha256), "%s", sha256);
			r->installed = clock_wall_s();
			r->seq_installed = releases_next_seq(rs);
			set_str(&r->source, source);
			if (r->state != RELEASE_SERVING) {
				r->state = RELEASE_CANDIDATE;
				set_str(&r->reason, "binary replaced with --force");
			}
		}
		if (r->state == RELEASE_BAD) {
			char *note = NULL;

			if (asprintf(&note, "deployed again with --force after it was bad: %s",
				     r->reason ? r->reason : "?") < 0) {
				log_error("releases", "out of memory: %s's note not kept", version);
				note = NULL;
			}
			r->state = RELEASE_CANDIDATE;
			free(r->reason);
			r->reason = note;
		}
		if (r->pruned) {
			r->pruned = false;
			r->installed = clock_wall_s();
			r->seq_installed = releases_next_seq(rs);
		}
	}
	releases_sort(rs);
	releases_prune(rs, version);
	releases_save(rs);
	ret = 0;
out:
	free(dest);
	free(folder);
	free(src_real);
	free(dest_real);
	return ret;
}

const struct release *releases_set_serving(struct releases *rs,
					   const char *version,
					   enum release_leave how)
{
	struct release *r = releases_find_mut(rs, version);
	int64_t t = clock_wall_s();

	if (r == NULL)
		return NULL;
	for (size_t i = 0; i < rs->n; i++) {
		struct release *o = &rs->v[i];

		if (o == r || o->state != RELEASE_SERVING)
			continue;
		o->retired = t;
		o->seq_used = releases_next_seq(rs);
		if (how == RELEASE_LEFT_BY_ROLLBACK) {
			o->state = RELEASE_CANDIDATE;
			set_str(&o->reason, "left by a rollback");
		} else {
			o->state = RELEASE_GOOD;
			set_str(&o->reason, NULL);
		}
		log_info("releases", "release %s is %s now (%s)", o->version,
			 release_state_name(o->state),
			 how == RELEASE_LEFT_BY_ROLLBACK ? "left by a rollback"
			 : how == RELEASE_LEFT_BY_UPGRADE ? "left by an upgrade"
			 : "the supervisor started another release");
	}
	if (r->state != RELEASE_SERVING) {
		r->state = RELEASE_SERVING;
		r->served = t;
		r->seq_used = releases_next_seq(rs);
		set_str(&r->reason, NULL);
		log_info("releases", "release %s serving", r->version);
	}
	releases_prune(rs, NULL);
	releases_save(rs);
	/* prune never moves entries, only flags them */
	return r;
}

int releases_mark_bad(struct releases *rs, const char *version,
		      const char *reason)
{
	struct release *r = releases_find_mut(rs, version);

	if (r == NULL)
		return -1;
	if (r->state == RELEASE_SERVING) {
		r->retired = clock_wall_s();
		r->seq_used = releases_next_seq(rs);
	}
	r->state = RELEASE_BAD;
	set_str(&r->reason, reason);
	log_error("releases", "release %s marked bad: %s", version, reason);
	releases_save(rs);
	return 0;
}

void releases_prune(struct releases *rs, const char *busy)
{
	const struct release *target = releases_rollback_target(rs, false, NULL, 0);
	size_t on_disk = 0, limit;

	if (rs->readonly)
		return;
	for (size_t i = 0; i < rs->n; i++)
		on_disk += !rs->v[i].pruned;
	while (on_disk > rs->keep) {
		struct release *oldest = NULL;

		for (size_t i = 0; i < rs->n; i++) {
			struct release *r = &rs->v[i];

			if (r->pruned || r->state == RELEASE_SERVING || r == target ||
			    (busy && strcmp(r->version, busy) == 0))
				continue;
			if (oldest == NULL || release_older(r, oldest))
				oldest = r;
		}
		if (oldest == NULL)
			break;
		if (unlink(oldest->binary) < 0 && errno != ENOENT)
			log_warn("releases", "cannot remove %s: %s", oldest->binary,
				 strerror(errno));
		else {
			char *folder = strdup(oldest->binary);

			if (folder == NULL)
				log_error("releases", "out of memory: the folder of %s not removed",
					  oldest->binary);
			if (folder) {
				char *slash = strrchr(folder, '/');

				if (slash)
					*slash = '\0';
				if (rmdir(folder) < 0 && errno != ENOENT)
					log_warn("releases", "cannot remove %s: %s",
						 folder, strerror(errno));
				free(folder);
			}
		}
		oldest->pruned = true;
		on_disk--;
		log_info("releases", "release %s (%s) pruned: more than %u releases on disk",
			 oldest->version, release_state_name(oldest->state), rs->keep);
	}
	/* The history itself is bounded too: the oldest pruned entries go. */
	limit = rs->keep * 4 < RELEASES_HISTORY_MIN ? RELEASES_HISTORY_MIN
						    : rs->keep * 4;
	while (rs->n > limit) {
		size_t victim = rs->n;

		for (size_t i = rs->n; i-- > 0;)
			if (rs->v[i].pruned) {
				victim = i; /* sorted newest first: the last is oldest */
				break;
			}
		if (victim == rs->n)
			break;
		release_clear(&rs->v[victim]);
		memmove(&rs->v[victim], &rs->v[victim + 1],
			(rs->n - victim - 1) * sizeof(*rs->v));
		rs->n--;
	}
}

/* --- the rollback window ---------------------------------------------------- */

void releases_took_over(struct releases *rs, const char *version, double now)
{
	rs->window = version != NULL;
	if (version)
		snprintf(rs->window_version, sizeof(rs->window_version), "%s", version);
	rs->window_at = now;
}

const struct release *releases_on_crash(struct releases *rs,
					const char *version, double now,
					int window_s, const char *reason)
{
	const struct release *to;
	bool in_window = rs->window && window_s > 0 &&
			 strcmp(rs->window_version, version) == 0 &&
			 now - rs->window_at <= (double)window_s;

	rs->window = false;
	if (!in_window)
		return NULL;
	to = releases_rollback_target(rs, false, NULL, 0);
	if (to == NULL || strcmp(to->version, version) == 0)
		return NULL;
	/* Marking does not move entries: `to` stays valid. */
	releases_mark_bad(rs, version, reason);
	return to;
}

/* --- listing, --check ------------------------------------------------------ */

struct json_object *releases_json(const struct releases *rs)
{
	struct jb jb_ = JB_INIT, *jb = &jb_;
	struct json_object *o = jb_obj(jb), *a = jb_arr(jb);
	const struct release *serving = releases_serving(rs);
	const struct release *target = releases_rollback_target(rs, false, NULL, 0);

	for (size_t i = 0; i < rs->n; i++)
		jb_push(jb, a, jb_note(jb, release_json(&rs->v[i])));
	jb_add(jb, o, "releases", a);
	jb_add(jb, o, "serving",
			       serving ? jb_str(jb, serving->version) : NULL);
	jb_add(jb, o, "rollback_target",
			       target ? jb_str(jb, target->version) : NULL);
	jb_add(jb, o, "file", jb_str(jb, rs->file));
	jb_add(jb, o, "problem",
			       rs->problem ? jb_str(jb, rs->problem) : NULL);
	jb_add(jb, o, "kept", jb_i64(jb, rs->keep));
	return jb_done(jb, o);
}

int releases_check(const char *state_dir, unsigned keep, char *buf,
		   size_t len)
{
	struct releases *rs = releases_open(state_dir, keep, true);
	int r = 0;

	buf[0] = '\0';
	if (rs != NULL && rs->problem != NULL) {
		snprintf(buf, len, "%s", rs->problem);
		r = 1;
	}
	releases_free(rs);
	return r;
}
