/* Tests of supervisor/releases.c: the release store and its history file.
 * "Binaries" are small executable files with distinct contents; every test
 * works in its own folder under $TMPDIR (or /tmp). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>

#include "common/config.h"
#include "supervisor/releases.h"

struct dir {
	char path[200];
	char bin[8][240];
	char sha[8][RELEASE_SHA256_HEX];
};

static void rm_rf(const char *path)
{
	char cmd[512];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
	assert_int_equal(system(cmd), 0);
}

static void write_file(const char *path, const char *text, mode_t mode)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	assert_int_equal(chmod(path, mode), 0);
}

/* A fresh state dir and n "binaries" bin[i] (contents "#!/bin/sh\n# i"). */
static void setup_dir(struct dir *d, int n)
{
	const char *tmp = getenv("TMPDIR") && getenv("TMPDIR")[0] ? getenv("TMPDIR") : "/tmp";
	char err[256];

	memset(d, 0, sizeof(*d));
	snprintf(d->path, sizeof(d->path), "%s/baton-test-releases.XXXXXX", tmp);
	assert_non_null(mkdtemp(d->path));
	for (int i = 0; i < n; i++) {
		char text[64];

		snprintf(d->bin[i], sizeof(d->bin[i]), "%s/bin%d", d->path, i);
		snprintf(text, sizeof(text), "#!/bin/sh\n# build %d\n", i);
		write_file(d->bin[i], text, 0755);
		assert_int_equal(releases_sha256_file(d->bin[i], d->sha[i], err, sizeof(err)), 0);
	}
}

static char *state_path(const struct dir *d, const char *rel)
{
	static char buf[400];

	snprintf(buf, sizeof(buf), "%s/state%s%s", d->path, rel[0] ? "/" : "", rel);
	return buf;
}

/* Install bin[i] as version vN and make it serve (an upgrade). */
static void deploy(struct releases *rs, const struct dir *d, int i,
		   enum release_leave how)
{
	char v[16], why[512] = "";

	snprintf(v, sizeof(v), "v%d", i);
	assert_int_equal(releases_admit(rs, v, d->sha[i], false, why, sizeof(why)), 0);
	if (releases_install(rs, v, d->bin[i], d->sha[i], why, sizeof(why)) < 0)
		fail_msg("install %s: %s", v, why);
	assert_non_null(releases_set_serving(rs, v, how));
}

static const char *state_of(const struct releases *rs, const char *v)
{
	const struct release *r = releases_find(rs, v);

	return r ? release_state_name(r->state) : "(none)";
}

static const char *target_of(const struct releases *rs)
{
	const struct release *r = releases_rollback_target(rs, false, NULL, 0);

	return r ? r->version : "(none)";
}

static void test_sha256(void **state)
{
	struct dir d;
	char sha[RELEASE_SHA256_HEX], err[256], *p;

	(void)state;
	setup_dir(&d, 0);
	p = state_path(&d, "");
	mkdir(p, 0700);
	strcat(p, "/abc");
	write_file(p, "abc", 0644);
	assert_int_equal(releases_sha256_file(p, sha, err, sizeof(err)), 0);
	assert_string_equal(sha, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	assert_true(releases_sha256_file("/nonexistent/x", sha, err, sizeof(err)) < 0);
	assert_non_null(strstr(err, "/nonexistent/x"));
	rm_rf(d.path);
}

static void test_round_trip(void **state)
{
	struct dir d;
	struct releases *rs;
	const struct release *r;

	(void)state;
	setup_dir(&d, 3);
	rs = releases_open(state_path(&d, ""), 5, false);
	assert_non_null(rs);
	assert_null(releases_problem(rs)); /* nothing yet: not a problem */
	deploy(rs, &d, 0, RELEASE_LEFT_BY_RESTART);
	deploy(rs, &d, 1, RELEASE_LEFT_BY_UPGRADE);
	deploy(rs, &d, 2, RELEASE_LEFT_BY_UPGRADE);
	assert_int_equal(releases_mark_bad(rs, "v0", "crashed"), 0);
	releases_free(rs);

	rs = releases_open(state_path(&d, ""), 5, false);
	assert_non_null(rs);
	assert_null(releases_problem(rs));
	assert_int_equal(releases_count(rs), 3);
	/* newest first */
	assert_string_equal(releases_at(rs, 0)->version, "v2");
	assert_string_equal(releases_at(rs, 2)->version, "v0");
	assert_string_equal(state_of(rs, "v2"), "serving");
	assert_string_equal(state_of(rs, "v1"), "good");
	assert_string_equal(state_of(rs, "v0"), "bad");
	r = releases_find(rs, "v0");
	assert_string_equal(r->reason, "crashed");
	assert_string_equal(r->sha256, d.sha[0]);
	assert_string_equal(r->source, d.bin[0]);
	assert_true(r->installed > 0 && r->served > 0 && r->retired > 0);
	assert_true(access(r->binary, X_OK) == 0);
	assert_non_null(strstr(r->binary, "/state/releases/v0/baton-sessiond"));
	assert_ptr_equal(releases_find_sha(rs, d.sha[1]), releases_find(rs, "v1"));
	assert_string_equal(target_of(rs), "v1");
	/* and the JSON listing says the same */
	{
		struct json_object *o = releases_json(rs), *v;

		assert_true(json_object_object_get_ex(o, "serving", &v));
		assert_string_equal(json_object_get_string(v), "v2");
		assert_true(json_object_object_get_ex(o, "rollback_target", &v));
		assert_string_equal(json_object_get_string(v), "v1");
		assert_true(json_object_object_get_ex(o, "releases", &v));
		assert_int_equal(json_object_array_length(v), 3);
		json_object_put(o);
	}
	releases_free(rs);
	rm_rf(d.path);
}

static void test_corrupt_file(void **state)
{
	struct dir d;
	struct releases *rs;
	char note[2048];

	(void)state;
	setup_dir(&d, 2);
	rs = releases_open(state_path(&d, ""), 5, false);
	deploy(rs, &d, 0, RELEASE_LEFT_BY_RESTART);
	deploy(rs, &d, 1, RELEASE_LEFT_BY_UPGRADE);
	releases_free(rs);

	write_file(state_path(&d, "releases.json"), "{\"format\":1,\"releases\":[{\"vers", 0600);
	/* --check reports, writes nothing */
	assert_int_equal(releases_check(state_path(&d, ""), 5, note, sizeof(note)), 1);
	assert_non_null(strstr(note, "corrupt"));
	assert_int_equal(access(state_path(&d, "releases.json.corrupt"), F_OK), -1);

	rs = releases_open(state_path(&d, ""), 5, false);
	assert_non_null(rs);
	assert_non_null(releases_problem(rs));
	assert_non_null(strstr(releases_problem(rs), "corrupt"));
	/* rebuilt from the folders: both known, state unknown */
	assert_int_equal(releases_count(rs), 2);
	assert_string_equal(state_of(rs, "v0"), "candidate");
	assert_string_equal(state_of(rs, "v1"), "candidate");
	assert_string_equal(releases_find(rs, "v1")->sha256, d.sha[1]);
	assert_null(releases_rollback_target(rs, false, NULL, 0));
	assert_non_null(releases_rollback_target(rs, true, NULL, 0));
	assert_int_equal(access(state_path(&d, "releases.json.corrupt"), F_OK), 0);
	releases_free(rs);
	/* and saved: the next load is clean */
	assert_int_equal(releases_check(state_path(&d, ""), 5, note, sizeof(note)), 0);
	assert_string_equal(note, "");
	rs = releases_open(state_path(&d, ""), 5, false);
	assert_null(releases_problem(rs));
	assert_int_equal(releases_count(rs), 2);
	releases_free(rs);

	/* a wrong entry is dropped, the rest kept */
	write_file(state_path(&d, "releases.json"),
		   "{\"format\":1,\"releases\":[{\"version\":\"v1\",\"state\":\"weird\",\"sha256\":\"00\"},"
		   "{\"version\":\"v0\",\"state\":\"good\",\"sha256\":\"", 0600);
	{
		FILE *f = fopen(state_path(&d, "releases.json"), "a");

		fprintf(f, "%s\"}]}", d.sha[0]);
		fclose(f);
	}
	rs = releases_open(state_path(&d, ""), 5, false);
	assert_non_null(releases_problem(rs));
	assert_non_null(strstr(releases_problem(rs), "dropped"));
	assert_string_equal(state_of(rs, "v0"), "good");
	assert_string_equal(state_of(rs, "v1"), "candidate"); /* recovered */
	releases_free(rs);

	/* missing while releases/ holds something: reported, rebuilt */
	unlink(state_path(&d, "releases.json"));
	assert_int_equal(releases_check(state_path(&d, ""), 5, note, sizeof(note)), 1);
	assert_non_null(strstr(note, "missing"));
	rm_rf(d.path);
}

static void test_pruning(void **state)
{
	struct dir d;
	struct releases *rs;
	size_t on_disk = 0;

	(void)state;
	setup_dir(&d, 6);
	rs = releases_open(state_path(&d, ""), 3, false);
	deploy(rs, &d, 0, RELEASE_LEFT_BY_RESTART);
	deploy(rs, &d, 1, RELEASE_LEFT_BY_UPGRADE);
	/* v1 bad: v0 stays the rollback target however old it gets */
	assert_int_equal(releases_mark_bad(rs, "v1", "crashed"), 0);
	assert_non_null(releases_set_serving(rs, "v0", RELEASE_LEFT_BY_RESTART));
	deploy(rs, &d, 2, RELEASE_LEFT_BY_UPGRADE); /* v0 good */
	assert_int_equal(releases_mark_bad(rs, "v2", "crashed"), 0);
	assert_non_null(releases_set_serving(rs, "v0", RELEASE_LEFT_BY_RESTART));
	deploy(rs, &d, 3, RELEASE_LEFT_BY_UPGRADE);
	assert_int_equal(releases_mark_bad(rs, "v3", "crashed"), 0);
	assert_non_null(releases_set_serving(rs, "v0", RELEASE_LEFT_BY_RESTART));
	deploy(rs, &d, 4, RELEASE_LEFT_BY_UPGRADE);
	deploy(rs, &d, 5, RELEASE_LEFT_BY_UPGRADE); /* v4 good, newest */

	for (size_t i = 0; i < releases_count(rs); i++)
		on_disk += !releases_at(rs, i)->pruned;
	assert_int_equal(on_disk, 3);
	assert_false(releases_find(rs, "v5")->pruned); /* serving */
	assert_false(releases_find(rs, "v4")->pruned); /* rollback target */
	assert_string_equal(target_of(rs), "v4");
	/* the oldest bad ones went first; their history stays */
	assert_true(releases_find(rs, "v1")->pruned);
	assert_int_equal(access(state_path(&d, "releases/v1/baton-sessiond"), F_OK), -1);
	assert_int_equal(access(state_path(&d, "releases/v1"), F_OK), -1);
	assert_string_equal(state_of(rs, "v1"), "bad");
	/* a pruned bad release is still known by its binary */
	assert_ptr_equal(releases_find_sha(rs, d.sha[1]), releases_find(rs, "v1"));
	releases_free(rs);

	/* the serving release and the rollback target survive keep = 2 */
	rs = releases_open(state_path(&d, ""), 2, false);
	releases_prune(rs, NULL);
	assert_false(releases_find(rs, "v5")->pruned);
	assert_false(releases_find(rs, "v4")->pruned);
	releases_free(rs);
	rm_rf(d.path);
}

static void test_rollback_target(void **state)
{
	struct dir d;
	struct releases *rs;
	const struct release *t;
	char why[1024];

	(void)state;
	setup_dir(&d, 3);
	rs = releases_open(state_path(&d, ""), 5, false);
	deploy(rs, &d, 0, RELEASE_LEFT_BY_RESTART);
	assert_null(releases_rollback_target(rs, false, why, sizeof(why)));
	assert_non_null(strstr(why, "no other release"));
	deploy(rs, &d, 1, RELEASE_LEFT_BY_UPGRADE);
	deploy(rs, &d, 2, RELEASE_LEFT_BY_UPGRADE);
	/* newest good, not "the other of the last two" */
	assert_string_equal(target_of(rs), "v1");
	/* an upgrade to the serving release (config apply) keeps it */
	assert_int_equal(releases_admit(rs, "v2", d.sha[2], false, why, sizeof(why)), 0);
	assert_int_equal(releases_install(rs, "v2", d.bin[2], d.sha[2], why, sizeof(why)), 0);
	releases_set_serving(rs, "v2", RELEASE_LEFT_BY_UPGRADE);
	assert_string_equal(target_of(rs), "v1");
	assert_string_equal(state_of(rs, "v2"), "serving");

	/* rollback v2 -> v1: v2 is a candidate, the next one goes to v0 */
	releases_set_serving(rs, "v1", RELEASE_LEFT_BY_ROLLBACK);
	assert_string_equal(state_of(rs, "v2"), "candidate");
	assert_string_equal(target_of(rs), "v0");
	releases_set_serving(rs, "v0", RELEASE_LEFT_BY_ROLLBACK);
	/* nothing good is left: refused, saying what there is */
	assert_null(releases_rollback_target(rs, false, why, sizeof(why)));
	assert_non_null(strstr(why, "no good release"));
	assert_non_null(strstr(why, "v1 is candidate"));
	assert_non_null(strstr(why, "--force goes to v1"));
	/* force: the most recently served one, whatever its state */
	t = releases_rollback_target(rs, true, NULL, 0);
	assert_non_null(t);
	assert_string_equal(t->version, "v1");
	/* a release whose binary is gone is no target */
	releases_set_serving(rs, "v2", RELEASE_LEFT_BY_UPGRADE); /* v0 good */
	assert_string_equal(target_of(rs), "v0");
	unlink(releases_find(rs, "v0")->binary);
	assert_null(releases_rollback_target(rs, false, NULL, 0));
	releases_free(rs);
	rm_rf(d.path);
}

static void test_bad_refused(void **state)
{
	struct dir d;
	struct releases *rs;
	char why[1024];

	(void)state;
	setup_dir(&d, 3);
	rs = releases_open(state_path(&d, ""), 5, false);
	deploy(rs, &d, 0, RELEASE_LEFT_BY_RESTART);
	deploy(rs, &d, 1, RELEASE_LEFT_BY_UPGRADE);
	assert_int_equal(releases_mark_bad(rs, "v1", "worker crashed 3.0 s after it started (killed by signal 9)"), 0);
	assert_null(releases_serving(rs));
	assert_int_equal(releases_admit(rs, "v1", d.sha[1], false, why, sizeof(why)), -1);
	assert_non_null(strstr(why, "marked bad"));
	assert_non_null(strstr(why, "signal 9"));
	assert_non_null(strstr(why, "--force"));
	/* forced: a candidate again, then serving */
	assert_int_equal(releases_admit(rs, "v1", d.sha[1], true, why, sizeof(why)), 0);
	assert_int_equal(releases_install(rs, "v1", d.bin[1], d.sha[1], why, sizeof(why)), 0);
	assert_string_equal(state_of(rs, "v1"), "candidate");

	/* one version, one binary */
	assert_int_equal(releases_admit(rs, "v0", d.sha[2], false, why, sizeof(why)), -1);
	assert_non_null(strstr(why, "another binary"));
	assert_int_equal(releases_admit(rs, "v0", d.sha[2], true, why, sizeof(why)), 0);
	assert_int_equal(releases_install(rs, "v0", d.bin[2], d.sha[2], why, sizeof(why)), 0);
	assert_string_equal(releases_find(rs, "v0")->sha256, d.sha[2]);
	{
		char sha[RELEASE_SHA256_HEX], err[256];

		assert_int_equal(releases_sha256_file(releases_find(rs, "v0")->binary, sha,
						      err, sizeof(err)), 0);
		assert_string_equal(sha, d.sha[2]);
	}
	/* a source that is not what was hashed is not installed */
	assert_int_equal(releases_install(rs, "v9", d.bin[0], d.sha[2], why, sizeof(why)), -1);
	assert_non_null(strstr(why, "changed"));
	assert_null(releases_find(rs, "v9"));
	/* versions that cannot name a folder */
	assert_int_equal(releases_admit(rs, "../x", d.sha[0], true, why, sizeof(why)), -1);
	assert_int_equal(releases_admit(rs, ".hidden", d.sha[0], true, why, sizeof(why)), -1);
	assert_int_equal(releases_admit(rs, "", d.sha[0], true, why, sizeof(why)), -1);
	assert_true(releases_version_valid("0.1.0-b+git.1~rc2"));
	releases_free(rs);
	rm_rf(d.path);
}

static void test_crash_window(void **state)
{
	struct dir d;
	struct releases *rs;
	const struct release *to;

	(void)state;
	setup_dir(&d, 3);
	rs = releases_open(state_path(&d, ""), 5, false);
	deploy(rs, &d, 0, RELEASE_LEFT_BY_RESTART);
	deploy(rs, &d, 1, RELEASE_LEFT_BY_UPGRADE);
	/* no window: a crash restarts as usual */
	assert_null(releases_on_crash(rs, "v1", 10.0, 300, "crash"));
	assert_string_equal(state_of(rs, "v1"), "serving");
	/* past the window */
	releases_took_over(rs, "v1", 100.0);
	assert_null(releases_on_crash(rs, "v1", 401.0, 300, "crash"));
	/* window 0 disables it */
	releases_took_over(rs, "v1", 100.0);
	assert_null(releases_on_crash(rs, "v1", 101.0, 0, "crash"));
	/* another takeover cleared it */
	releases_took_over(rs, "v1", 100.0);
	releases_took_over(rs, NULL, 0);
	assert_null(releases_on_crash(rs, "v1", 101.0, 300, "crash"));
	/* within: bad, back to v0 */
	releases_took_over(rs, "v1", 100.0);
	to = releases_on_crash(rs, "v1", 103.0, 300, "killed by signal 9, up 3.0 s");
	assert_non_null(to);
	assert_string_equal(to->version, "v0");
	assert_string_equal(state_of(rs, "v1"), "bad");
	assert_string_equal(releases_find(rs, "v1")->reason, "killed by signal 9, up 3.0 s");
	/* only once */
	assert_null(releases_on_crash(rs, "v1", 104.0, 300, "crash"));
	/* v0 serving again (the restart); it crashing is a plain crash */
	releases_set_serving(rs, "v0", RELEASE_LEFT_BY_RESTART);
	assert_string_equal(state_of(rs, "v1"), "bad");
	assert_null(releases_on_crash(rs, "v0", 105.0, 300, "crash"));
	assert_string_equal(state_of(rs, "v0"), "serving");
	releases_free(rs);
	rm_rf(d.path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sha256),
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_corrupt_file),
		cmocka_unit_test(test_pruning),
		cmocka_unit_test(test_rollback_target),
		cmocka_unit_test(test_bad_refused),
		cmocka_unit_test(test_crash_window),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
