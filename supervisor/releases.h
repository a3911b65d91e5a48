/* supervisor/releases.h: the worker releases on disk and their history
 * (issue 9, items 6-8), so rollback knows where to go after a supervisor
 * restart or a reboot, never re-deploys a release that failed, and is not
 * wiped by an upgrade to the same binary (how config is applied).
 *
 * Layout under [supervisor] state_dir:
 *
 *   releases/<version>/baton-sessiond   one copy per version, mode 0755
 *   releases.json                       the history (written atomically:
 *                                       temp file, fsync, rename, fsync dir)
 *
 * A release is identified by the version its worker announces in READY; its
 * binary by sha256. One version is one binary: installing a version again
 * from a different binary is refused unless forced (then the copy on disk
 * is replaced).
 *
 * States (at most one release is serving):
 *   candidate  installed, never judged: an upgrade in flight or aborted, a
 *              release left by a rollback, a bad one forced again, or one
 *              recovered from releases/ after releases.json was lost
 *   serving    what the serving worker runs
 *   good       served and was left by an upgrade (or a supervisor restart)
 *   bad        crashed within [canary] rollback_window after an upgrade made
 *              it the serving worker (reason recorded); upgrade refuses it
 *              unless forced (then it is a candidate again)
 *
 * Rollback goes to the good release that served most recently (not "the
 * other of the last two"); the release it leaves becomes a candidate, so a
 * second rollback goes further back instead of flipping.
 *
 * At most [canary] releases_kept folders stay on disk; the oldest go first,
 * never the serving release, the rollback target or the one being
 * installed. A pruned release keeps its history entry (pruned = true; a
 * bad one is still refused by its sha256), without a binary.
 *
 * Ownership: struct releases owns every struct release and its strings;
 * pointers returned by the lookups stay valid until the next call that
 * changes the store (install, set_serving, mark_bad, prune, free). The
 * store does no I/O except in releases_open, releases_install,
 * releases_save (and the calls that save) and releases_prune: small files
 * and one binary copy, run from the supervisor's loop.
 */
#ifndef BATON_SUPERVISOR_RELEASES_H
#define BATON_SUPERVISOR_RELEASES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct json_object;

#define RELEASE_VERSION_MAX 64
#define RELEASE_SHA256_HEX 65 /* 64 hex digits + NUL */

enum release_state {
	RELEASE_CANDIDATE,
	RELEASE_SERVING,
	RELEASE_GOOD,
	RELEASE_BAD,
};

struct release {
	char version[RELEASE_VERSION_MAX];
	char sha256[RELEASE_SHA256_HEX];
	char *binary;   /* state_dir/releases/<version>/baton-sessiond */
	char *source;   /* where it was installed from ("" when unknown) */
	enum release_state state;
	int64_t installed; /* unix seconds; 0: never */
	int64_t served;    /* when it last became the serving release */
	int64_t retired;   /* when it last stopped serving */
	char *reason;      /* bad: why; candidate: why it is one; else NULL */
	bool pruned;       /* folder removed: history only */
	/* Order of events in this store (a counter, saved): times have one
	 * second resolution and a clock may be set back. seq_installed: when
	 * installed; seq_used: when it last started or stopped serving. */
	uint64_t seq_installed, seq_used;
};

/* How the serving release was left (releases_set_serving). */
enum release_leave {
	RELEASE_LEFT_BY_UPGRADE,  /* -> good */
	RELEASE_LEFT_BY_ROLLBACK, /* -> candidate */
	RELEASE_LEFT_BY_RESTART,  /* supervisor (re)start: -> good */
};

struct releases;

/* Load state_dir/releases.json and look at state_dir/releases/. Never fails
 * on file contents: a missing (while releases/ holds something), unreadable
 * or corrupt file, or an invalid entry, is logged (warn), kept aside as
 * releases.json.corrupt, and the history rebuilt from what is known (valid
 * entries, then every releases/<version>/baton-sessiond as a candidate with
 * an unknown state); releases_problem() says what happened. `readonly`
 * (--check) writes nothing. keep: [canary] releases_kept (>= 2).
 * NULL only when out of memory. */
struct releases *releases_open(const char *state_dir, unsigned keep,
			       bool readonly);
void releases_free(struct releases *rs); /* accepts NULL */

/* What was wrong with the history at load, or NULL. */
const char *releases_problem(const struct releases *rs);
/* Path of releases.json (owned by rs). */
const char *releases_file(const struct releases *rs);

const char *release_state_name(enum release_state s);

/* Newest first (by installation time). */
size_t releases_count(const struct releases *rs);
const struct release *releases_at(const struct releases *rs, size_t i);
const struct release *releases_find(const struct releases *rs,
				    const char *version);
/* A release whose binary has this sha256 (the newest), or NULL. */
const struct release *releases_find_sha(const struct releases *rs,
					const char *sha256);
const struct release *releases_serving(const struct releases *rs);

/* Where `batonctl rollback` goes: the good release (not serving, binary on
 * disk) that served most recently. force: failing that, the most recent
 * non-serving release on disk in any state. NULL: nowhere (why says so). */
const struct release *releases_rollback_target(const struct releases *rs,
					       bool force, char *why,
					       size_t len);

/* sha256 of a file as 64 lowercase hex digits. 0 or -errno (message in
 * err). */
int releases_sha256_file(const char *path, char out[RELEASE_SHA256_HEX],
			 char *err, size_t errlen);

/* Is `version` usable as a folder name (1-63 of [A-Za-z0-9._+~-], not
 * starting with '.')? */
bool releases_version_valid(const char *version);

/* May `version` with binary `sha256` be deployed? Refused (-1, why) when
 * the version cannot name a folder, when that version is installed from a
 * different binary, or when it is bad; force overrides the last two.
 * Pure: writes nothing. */
int releases_admit(const struct releases *rs, const char *version,
		   const char *sha256, bool force, char *why, size_t len);

/* Install (after releases_admit said yes): copy `source` to
 * releases/<version>/baton-sessiond unless that copy already exists with
 * this sha256 (or source is that copy), hashing while copying and refusing
 * a source that no longer matches `sha256`; record the release (a new one
 * is a candidate, a bad or replaced one becomes a candidate again, the
 * serving one stays serving), prune, save. 0 or -1 with why. */
int releases_install(struct releases *rs, const char *version,
		     const char *source, const char *sha256, char *why,
		     size_t len);

/* `version` (installed) serves now: the release that served before, if
 * another, is left as `how` says (a bad one stays bad); times updated;
 * prune; save. Returns the release or NULL (unknown version). */
const struct release *releases_set_serving(struct releases *rs,
					   const char *version,
					   enum release_leave how);

/* Mark bad with a reason (not serving any more); save. -1 if unknown. */
int releases_mark_bad(struct releases *rs, const char *version,
		      const char *reason);

/* Write releases.json atomically. 0 or -errno (logged). */
int releases_save(struct releases *rs);

/* Remove the oldest folders beyond `keep` (never the serving release, the
 * rollback target or `busy`, may be NULL). Does not save. */
void releases_prune(struct releases *rs, const char *busy);

/* The rollback window (item 7): an upgrade made `version` the serving
 * worker at `now` (CLOCK_MONOTONIC seconds). version NULL clears it (a
 * rollback, a worker started outside a migration); an upgrade to the
 * serving release (config) should leave it alone. In memory only. */
void releases_took_over(struct releases *rs, const char *version, double now);

/* The serving worker running `version` crashed at `now`. Within window_s
 * of its takeover (and with a good release to go back to): marks it bad
 * with `reason` and returns the release to restart with; the window is
 * cleared either way. NULL: restart as usual. */
const struct release *releases_on_crash(struct releases *rs,
					const char *version, double now,
					int window_s, const char *reason);

/* The history as JSON for `batonctl releases`: {"releases":[...newest
 * first], "serving", "rollback_target", "file", "problem", "kept"}. New
 * reference; NULL when out of memory (both). */
struct json_object *releases_json(const struct releases *rs);
struct json_object *release_json(const struct release *r);

/* --check: what is wrong with the history (missing while releases/ holds
 * releases, corrupt, invalid entries, vanished folders) as one line in buf,
 * or "" when nothing. A warning, not a problem: the supervisor rebuilds the
 * history at start, and a problem would keep it from starting
 * (ExecStartPre). Returns 1 when there is something to say, else 0. */
int releases_check(const char *state_dir, unsigned keep, char *buf,
		   size_t len);

#endif
