/* tests/unit/supervisor/test_user_edit.c: supervisor/user_edit.c, a user's
 * edit of their sessions asked by a worker (NETWORK_EDIT), against a fake
 * supervisor and worker (the functions user_edit.c calls, defined here so
 * the library's supervisor.c and worker_process.c are not linked) and a
 * real config file in TMPDIR: the answer, the file and whether a reload
 * was asked. Each test opens with the behaviour it pins. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "control.pb-c.h"
#include "supervisor/releases.h"
#include "supervisor/supervisor.h"
#include "supervisor/user_edit.h"
#include "supervisor/worker_process.h"

static const char base[] =
	"; the operator's file\n"
	"[supervisor]\n"
	"user_networks = add\n"
	"[listen]\n"
	"irc = 127.0.0.1:6667\n"
	"[network net]\n"
	"host = 127.0.0.1\n"
	"[network net2]\n"
	"host = 127.0.0.1\n"
	"[user u]\n"
	"password = $6$testsalt$51yaaBMXXXt5vK522YOlIMZ267vqHtMIzc2klcsu3EEv/bkRDU9g3UmkypXf.NvlpPpIPK1nX5zdbCeJBiQbB/\n"
	"[user u/net]\n"
	"nick = u\n";

/* ---- the fake supervisor and worker ---- */
static struct {
	const char *busy;
	char path[300];
	char loaded[RELEASE_SHA256_HEX]; /* supervisor_config_loaded() */
	unsigned reloads, written, answers;
	bool ok;
	char message[400];
} fake;

const char *supervisor_reload_busy(const struct supervisor *sup)
{
	return fake.busy;
}

const char *supervisor_config_path(const struct supervisor *sup)
{
	return fake.path;
}

void supervisor_reload(struct supervisor *sup, supervisor_reply_cb cb, void *arg)
{
	fake.reloads++;
}

const char *supervisor_config_loaded(const struct supervisor *sup)
{
	return fake.loaded;
}

void supervisor_config_written(struct supervisor *sup, const char *sha)
{
	fake.written++;
	snprintf(fake.loaded, sizeof(fake.loaded), "%s", sha);
}

int worker_send_network_edit_result(struct worker *w, uint64_t id, bool ok,
				    const char *message)
{
	fake.answers++;
	fake.ok = ok;
	snprintf(fake.message, sizeof(fake.message), "%s", message ? message : "");
	return 0;
}

/* ---- the file ---- */
static char dir[256];

static void write_text(const char *text)
{
	FILE *f = fopen(fake.path, "w");

	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static char *read_text(void)
{
	static char buf[8192];
	FILE *f = fopen(fake.path, "r");
	size_t n;

	assert_non_null(f);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

/* The file written and loaded by the (fake) serving worker. */
static void setup_file(void)
{
	const char *t = getenv("TMPDIR");
	char err[300];

	memset(&fake, 0, sizeof(fake));
	snprintf(dir, sizeof(dir), "%s/user_edit.XXXXXX", t && t[0] ? t : "/tmp");
	assert_non_null(mkdtemp(dir));
	snprintf(fake.path, sizeof(fake.path), "%s/baton.ini", dir);
	write_text(base);
	assert_int_equal(releases_sha256_file(fake.path, fake.loaded, err, sizeof(err)), 0);
}

static void cleanup(void)
{
	unlink(fake.path);
	assert_int_equal(rmdir(dir), 0); /* no temporary file left */
}

/* A worker's request: op on u/network with one pair (or none). */
static void request(const char *op, const char *network, const char *pair)
{
	Baton__Control__NetworkEdit e = BATON__CONTROL__NETWORK_EDIT__INIT;
	char *pairs[1] = { (char *)pair };

	e.id = 7;
	e.user = "u";
	e.network = (char *)network;
	e.op = (char *)op;
	e.pairs = pairs;
	e.n_pairs = pair ? 1 : 0;
	user_edit_on_request(NULL, &e, NULL);
	assert_int_equal(fake.answers, 1);
	fake.answers = 0;
}

/* An edit: the file edited, answered ok, a reload asked, and what it
 * wrote recorded as what the worker is about to load (so the next edit,
 * before the reload answers, is not taken for the operator's change). */
static void test_edit_applied(void **state)
{
	setup_file();
	request("set", "net", "nick=v");
	assert_true(fake.ok);
	assert_non_null(strstr(read_text(), "[user u/net]\nnick = v\n"));
	assert_int_equal(fake.reloads, 1);
	assert_int_equal(fake.written, 1);
	request("set", "net", "nick=w");
	assert_true(fake.ok);
	assert_int_equal(fake.reloads, 2);
	cleanup();
}

/* Regression: the reload after a user's edit loads the whole file, so
 * what the operator had staged in it without reloading (here a new
 * [user u/net2]) went live with any user's edit. Now the edit is refused
 * while the file differs from what the serving worker loaded, the user
 * told why; nothing is written and no reload asked. Once the operator
 * undoes the change (or reloads), edits go again. */
static void test_refused_with_staged_changes(void **state)
{
	char staged[sizeof(base) + 64];

	setup_file();
	snprintf(staged, sizeof(staged), "%s[user u/net2]\nnick = staged\n", base);
	write_text(staged);
	request("set", "net", "nick=v");
	assert_false(fake.ok);
	assert_string_equal(fake.message,
			    "the operator has changes in the config file not yet loaded; ask them to reload it, then try again");
	assert_string_equal(read_text(), staged);
	assert_int_equal(fake.reloads, 0);
	assert_int_equal(fake.written, 0);
	write_text(base); /* undone */
	request("set", "net", "nick=v");
	assert_true(fake.ok);
	assert_int_equal(fake.reloads, 1);
	cleanup();
}

/* The busy path: while a reload could not run (a migration, a canary), an
 * edit is refused with the reason, the file untouched and no reload
 * asked, so an edit is never left in the file unapplied. */
static void test_refused_while_busy(void **state)
{
	setup_file();
	fake.busy = "a canary is running: promote or abort it first";
	request("add", "net2", "nick=x");
	assert_false(fake.ok);
	assert_string_equal(fake.message, "not now: a canary is running: promote or abort it first");
	assert_string_equal(read_text(), base);
	assert_int_equal(fake.reloads, 0);
	fake.busy = NULL;
	request("add", "net2", "nick=x");
	assert_true(fake.ok);
	assert_non_null(strstr(read_text(), "[user u/net2]\nnick = x\n"));
	assert_int_equal(fake.reloads, 1);
	cleanup();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_edit_applied),
		cmocka_unit_test(test_refused_with_staged_changes),
		cmocka_unit_test(test_refused_while_busy),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
