/* Unit tests of common/config.c: defaults, every problem reported with
 * FILE:LINE in one pass, overlong lines caught, relative paths. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <errno.h>
#include <cmocka.h>

#include "common/config.h"
#include "common/config_keys.h"

/* $TMPDIR (default /tmp): where this test's files go. */
static const char *tmpdir(void)
{
	const char *t = getenv("TMPDIR");
	return t && t[0] ? t : "/tmp";
}

static char *write_temp(const char *text)
{
	char *path = NULL;
	assert_true(asprintf(&path, "%s/baton-config-test-XXXXXX", tmpdir()) > 0);
	int fd = mkstemp(path);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	return path;
}

static const char good[] =
	"[supervisor]\n"
	"control = baton.sock            ; control socket path\n"
	"handoff_timeout = 7\n"
	"[listen]\n"
	"irc = 127.0.0.1:6667\n"
	"irc = [::1]:6668\n"
	"[network libera]\n"
	"host = 127.0.0.1\n"
	"[user alice]\n"
	"password = $6$salt$hash\n"
	"[user alice/libera]\n"
	"nick = alice\n"
	"channels = #chat #ops\n";

static void test_good_config(void **state)
{
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;
	char *path = write_temp(good), *sock;

	assert_int_equal(config_load(path, &cfg, &pr), 0);
	assert_int_equal(pr.n, 0);
	assert_int_equal(cfg->handoff_timeout_s, 7);
	assert_int_equal(cfg->backlog_lines, 500); /* default */
	/* the store is on by default: its retention is bounded by default
	 * (a year, 64 MiB per session), not forever */
	assert_int_equal(cfg->store_backend, CONFIG_STORE_SQLITE);
	assert_int_equal(cfg->store_max_age_days, 365);
	assert_int_equal(cfg->store_max_mb, 64);
	assert_int_equal(cfg->nlistens, 2);
	assert_string_equal(cfg->listens[1].host, "::1");
	assert_string_equal(cfg->listens[1].port, "6668");
	assert_string_equal(config_find_network(cfg, "libera")->port, "6667");
	const struct config_session *s = config_find_session(cfg, "alice", "libera");
	assert_non_null(s);
	assert_int_equal(s->nchannels, 2);
	assert_string_equal(s->channels[1], "#ops");
	assert_string_equal(s->username, "alice"); /* defaults to the nick */
	sock = config_resolve(cfg, cfg->control);
	char want[4096];
	snprintf(want, sizeof(want), "%s/baton.sock", tmpdir());
	assert_string_equal(sock, want);
	free(sock);
	config_free(cfg);
	unlink(path);
	free(path);
}

static int has_problem(const struct config_problems *pr, const char *needle)
{
	for (size_t i = 0; i < pr->n; i++)
		if (strstr(pr->msgs[i], needle) != NULL)
			return 1;
	return 0;
}

static void test_every_problem_with_line(void **state)
{
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;
	char *path = write_temp(
		"[supervisor]\n"
		"handoff_timeout = soon\n"       /* 2 */
		"colour = blue\n"                /* 3 */
		"[listen]\n"
		"irc = nowhere\n"                /* 5 */
		"[user bob]\n"                   /* 6: no password */
		"[user carol]\n"                 /* 7 */
		"password = hunter2\n"           /* 8: not a hash */
		"[user bob/nonet]\n"             /* 9: unknown network */
		"nick = bob\n"
		"[frobnicate]\n"
		"x = 1\n");                      /* 12 */
	char where[160];

	assert_int_equal(config_load(path, &cfg, &pr), -EINVAL);
	assert_null(cfg);
	snprintf(where, sizeof(where), "%s:2: [supervisor] handoff_timeout: expected a whole number from 1 to 3600, got 'soon'", path);
	assert_true(has_problem(&pr, where));
	/* [supervisor] has more than 8 keys: the doc is named, not the keys */
	snprintf(where, sizeof(where), "%s:3: unknown key 'colour' in [supervisor] (docs/config.md lists its keys)", path);
	assert_true(has_problem(&pr, where));
	snprintf(where, sizeof(where), "%s:5: [listen] irc: expected HOST:PORT", path);
	assert_true(has_problem(&pr, where));
	snprintf(where, sizeof(where), "%s:6: [user bob] has no password", path);
	assert_true(has_problem(&pr, where));
	snprintf(where, sizeof(where), "%s:8: [user carol] password must be a crypt(3) hash", path);
	assert_true(has_problem(&pr, where));
	assert_true(has_problem(&pr, "no [network nonet] section"));
	snprintf(where, sizeof(where), "%s:12: unknown section [frobnicate]", path);
	assert_true(has_problem(&pr, where));
	config_problems_clear(&pr);
	unlink(path);
	free(path);
}

static void test_overlong_line(void **state)
{
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;
	char text[1024] = "[listen]\nirc = 127.0.0.1:1\n[user a/n]\nchannels =";
	char *path;

	for (int i = 0; i < 60; i++)
		strcat(text, " #chan");
	strcat(text, "\n");
	path = write_temp(text);
	assert_int_equal(config_load(path, &cfg, &pr), -EINVAL);
	assert_true(has_problem(&pr, ":4: line longer than"));
	config_problems_clear(&pr);
	unlink(path);
	free(path);
}

/* Regression: a repeated section silently merged into the first, and extra
 * words in a section name ([user alice bob]) were ignored. */
static void test_duplicate_and_malformed_sections(void **state)
{
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;
	char *path = write_temp(
		"[listen]\nirc = 127.0.0.1:1\n"
		"[network n]\nhost = 127.0.0.1\n"   /* 3 */
		"[network n]\nport = 7000\n"        /* 5 */
		"[user alice bob]\n"                 /* 7 */
		"password = $6$x$y\n");
	char where[128];

	assert_int_equal(config_load(path, &cfg, &pr), -EINVAL);
	snprintf(where, sizeof(where), "%s:5: duplicate section [network n] (first at line 3)", path);
	assert_true(has_problem(&pr, where));
	snprintf(where, sizeof(where), "%s:7: section name [user alice bob]", path);
	assert_true(has_problem(&pr, where));
	config_problems_clear(&pr);
	unlink(path);
	free(path);
}

static void test_missing_file(void **state)
{
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;

	assert_int_equal(config_load("/nonexistent/baton.ini", &cfg, &pr), -EINVAL);
	assert_int_equal(pr.n, 1);
	assert_non_null(strstr(pr.msgs[0], "cannot open"));
	config_problems_clear(&pr);
}

/* TLS and reconnect-governor keys: defaults, parsing, and their problems. */
static void test_tls_and_governor_keys(void **state)
{
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;
	char *path = write_temp(
		"[listen]\n"
		"ircs = 127.0.0.1:6697\n"
		"tls_cert = /etc/hostname\n"
		"[network plain]\n"
		"host = 127.0.0.1\n"
		"[network secure]\n"
		"host = irc.example.org\n"
		"tls = yes\n"
		"tls_ca = /etc/hostname\n"
		"tls_fingerprint = SHA256:AB:cd:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd\n"
		"connects_per_minute = 10\n"
		"max_connections_per_ip = 5\n"
		"bind = 127.0.0.2 127.0.0.3\n"
		"bind = 0:0::0001\n"                /* repeated: appends; canonical ::1 */
		"member_lists = private\n"
		"[user alice]\n"
		"password = $6$salt$hash\n"
		"[user alice/secure]\n"
		"tls_cert = /etc/hostname\n");
	const struct config_network *n;

	assert_int_equal(config_load(path, &cfg, &pr), 0);
	assert_string_equal(cfg->listens[0].kind, "ircs");
	assert_string_equal(cfg->listen_tls_cert, "/etc/hostname");
	n = config_find_network(cfg, "plain");
	assert_int_equal(n->tls, 0);
	assert_int_equal(n->tls_verify, 1);
	assert_int_equal(n->connects_per_minute, 4); /* Solanum-safe defaults */
	assert_int_equal(n->connect_burst, 4);
	assert_int_equal(n->max_connections_per_ip, 3);
	assert_int_equal(n->nbind, 0);
	assert_int_equal(n->member_lists, CONFIG_MEMBERS_AUTO);
	n = config_find_network(cfg, "secure");
	assert_int_equal(n->member_lists, CONFIG_MEMBERS_PRIVATE);
	assert_int_equal(n->tls, 1);
	assert_string_equal(n->port, "6697"); /* TLS default port */
	assert_string_equal(n->tls_fingerprint,
			    "sha256:abcd00112233445566778899aabbccddeeff00112233445566778899aabbccdd");
	assert_int_equal(n->connects_per_minute, 10);
	assert_int_equal(n->max_connections_per_ip, 5);
	assert_int_equal(n->nbind, 3);
	assert_string_equal(n->bind[2], "::1");
	assert_string_equal(config_find_session(cfg, "alice", "secure")->tls_cert,
			    "/etc/hostname");
	config_free(cfg);
	unlink(path);
	free(path);

	path = write_temp(
		"[listen]\n"
		"ircs = 127.0.0.1:6697\n"                 /* 2: no tls_cert */
		"[network n]\n"
		"host = h\n"
		"tls_verify = maybe\n"                    /* 5 */
		"tls_fingerprint = md5:00\n"              /* 6 */
		"bind = 127.0.0.1 not-an-address\n"       /* 7 */
		"connects_per_minute = 0\n"               /* 8 */
		"[network m]\n"                           /* 9: tls_* without tls */
		"host = h\n"
		"tls_fingerprint = sha256:abcd00112233445566778899aabbccddeeff00112233445566778899aabbccdd\n"
		"member_lists = sometimes\n"             /* 12 */
		"[user a]\n"
		"password = $6$x$y\n"
		"[user a/n]\n"
		"tls_cert = /nonexistent/cert.pem\n");   /* 16 */
	char where[160];

	assert_int_equal(config_load(path, &cfg, &pr), -EINVAL);
	snprintf(where, sizeof(where), "%s:2: ircs listener without", path);
	assert_true(has_problem(&pr, where));
	snprintf(where, sizeof(where), "%s:5: [network n] tls_verify: expected yes or no, got 'maybe'", path);
	assert_true(has_problem(&pr, where));
	snprintf(where, sizeof(where), "%s:6: [network n] tls_fingerprint: expected sha256:HEX", path);
	assert_true(has_problem(&pr, where));
	snprintf(where, sizeof(where), "%s:7: [network n] bind: 'not-an-address'", path);
	assert_true(has_problem(&pr, where));
	snprintf(where, sizeof(where), "%s:8: [network n] connects_per_minute: expected a whole number from 1 to 6000", path);
	assert_true(has_problem(&pr, where));
	snprintf(where, sizeof(where), "%s:9: [network m] sets tls_ca, tls_fingerprint", path);
	assert_true(has_problem(&pr, where));
	snprintf(where, sizeof(where), "%s:12: [network m] member_lists: expected auto, shared or private, got 'sometimes'", path);
	assert_true(has_problem(&pr, where));
	snprintf(where, sizeof(where), "%s:16: [user a/n] tls_cert /nonexistent/cert.pem", path);
	assert_true(has_problem(&pr, where));
	config_problems_clear(&pr);
	unlink(path);
	free(path);
}

/* The limits on strangers ([listen] and [sessiond] auth_*): defaults when
 * absent, values and "0: no limit" taken, out-of-range values reported
 * with their line. */
/* SASL keys: a good PLAIN, SCRAM from a file and EXTERNAL load with the
 * mechanism normalized and the file's first line as the password; every
 * combination that could never authenticate is a problem on its line. */
static void test_sasl_keys(void **state)
{
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;
	char *pwfile = write_temp("s3cret\r\nsecond line ignored\n");
	char *empty = write_temp("\n");
	char longpw[300];
	memset(longpw, 'x', 256);
	longpw[256] = '\0';
	char *toolong = write_temp(longpw);
	char *text = NULL;

	assert_true(asprintf(&text,
		"[listen]\n"
		"irc = 127.0.0.1:6667\n"
		"[network plain]\n"
		"host = 127.0.0.1\n"
		"[network secure]\n"
		"host = 127.0.0.1\n"
		"tls = yes\n"
		"[user alice]\n"
		"password = $6$salt$hash\n"
		"[user alice/plain]\n"
		"sasl = plain\n"
		"sasl_password = pw\n"
		"[user alice/secure]\n"
		"sasl = SCRAM-sha-256\n"
		"sasl_username = acct\n"
		"sasl_password_file = %s\n"
		"[user bob]\n"
		"password = $6$salt$hash\n"
		"[user bob/secure]\n"
		"tls_cert = /etc/hostname\n"
		"sasl = external\n", pwfile) > 0);
	char *path = write_temp(text);
	free(text);
	assert_int_equal(config_load(path, &cfg, &pr), 0);
	for (size_t i = 0; i < pr.n; i++)
		fprintf(stderr, "%s\n", pr.msgs[i]);
	assert_int_equal(pr.n, 0);
	const struct config_session *s = config_find_session(cfg, "alice", "plain");
	assert_string_equal(s->sasl, "PLAIN");
	assert_string_equal(s->sasl_password, "pw");
	assert_null(s->sasl_username); /* the nick is used */
	s = config_find_session(cfg, "alice", "secure");
	assert_string_equal(s->sasl, "SCRAM-SHA-256");
	assert_string_equal(s->sasl_password, "s3cret");
	assert_string_equal(s->sasl_username, "acct");
	s = config_find_session(cfg, "bob", "secure");
	assert_string_equal(s->sasl, "EXTERNAL");
	config_free(cfg);
	cfg = NULL;
	unlink(path);
	free(path);

	assert_true(asprintf(&text,
		"[listen]\n"
		"irc = 127.0.0.1:6667\n"
		"[network plain]\n"
		"host = 127.0.0.1\n"
		"[user a]\n"
		"password = $6$salt$hash\n"
		"[user a/plain]\n"
		"sasl = digest-md5\n"                       /* 8: unknown mechanism */
		"[user b]\n"
		"password = $6$salt$hash\n"
		"[user b/plain]\n"                          /* 11 */
		"sasl_password = pw\n"                      /* no sasl */
		"[user c]\n"
		"password = $6$salt$hash\n"
		"[user c/plain]\n"
		"sasl = plain\n"                            /* 16: no password */
		"[user d]\n"
		"password = $6$salt$hash\n"
		"[user d/plain]\n"
		"sasl = external\n"                         /* 20: no cert, no tls */
		"[user e]\n"
		"password = $6$salt$hash\n"
		"[user e/plain]\n"
		"sasl = plain\n"
		"sasl_password = pw\n"
		"sasl_password_file = %s\n"                 /* 26: both */
		"[user f]\n"
		"password = $6$salt$hash\n"
		"[user f/plain]\n"
		"sasl = scram-sha-256\n"
		"sasl_password_file = %s\n"                 /* 31: empty */
		"[user g]\n"
		"password = $6$salt$hash\n"
		"[user g/plain]\n"
		"sasl = plain\n"
		"sasl_password_file = %s\n"                 /* 36: 256 bytes */
		"[user h]\n"
		"password = $6$salt$hash\n"
		"[user h/plain]\n"
		"sasl = plain\n"
		"sasl_password_file = /nonexistent/pw\n"    /* 41 */
		"[user i]\n"
		"password = $6$salt$hash\n"
		"[user i/plain]\n"
		"sasl = plain\n"
		"sasl_password =\n",                        /* 46: empty */
		pwfile, empty, toolong) > 0);
	path = write_temp(text);
	free(text);
	assert_int_equal(config_load(path, &cfg, &pr), -EINVAL);
	const char *want[] = {
		":8: [user a/plain] sasl: expected plain, external or scram-sha-256",
		":11: [user b/plain] sets sasl_username, sasl_password or sasl_password_file without sasl",
		":16: [user c/plain] sasl = PLAIN needs sasl_password or sasl_password_file",
		":20: [user d/plain] sasl = external needs tls_cert",
		":20: [user d/plain] sasl = external needs tls = yes in [network plain]",
		":26: [user e/plain] sets both sasl_password and sasl_password_file",
		": empty first line",
		": the password is longer than 255 bytes",
		":41: [user h/plain] sasl_password_file /nonexistent/pw: No such file",
		":46: [user i/plain] sasl_password must be 1-255 bytes",
	};
	for (size_t w = 0; w < sizeof(want) / sizeof(want[0]); w++) {
		bool found = false;
		for (size_t i = 0; i < pr.n && !found; i++)
			found = strstr(pr.msgs[i], want[w]) != NULL;
		if (!found) {
			for (size_t i = 0; i < pr.n; i++)
				fprintf(stderr, "problem: %s\n", pr.msgs[i]);
			fail_msg("missing problem '%s'", want[w]);
		}
	}
	assert_int_equal(pr.n, sizeof(want) / sizeof(want[0]));
	config_problems_clear(&pr);
	unlink(path);
	free(path);
	unlink(pwfile);
	free(pwfile);
	unlink(empty);
	free(empty);
	unlink(toolong);
	free(toolong);
}

static void test_stranger_limit_keys(void **state)
{
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;
	char *path = write_temp(good);

	assert_int_equal(config_load(path, &cfg, &pr), 0);
	assert_int_equal(cfg->max_pending, 4096);
	assert_int_equal(cfg->max_pending_per_ip, 16);
	assert_int_equal(cfg->max_tls_handshakes, 1024);
	assert_int_equal(cfg->max_tls_handshakes_per_ip, 32);
	assert_int_equal(cfg->tls_handshake_timeout_s, 10);
	assert_int_equal(cfg->prelogin_max_lines, 64);
	assert_int_equal(cfg->prelogin_max_bytes, 16384);
	assert_int_equal(cfg->prelogin_sendq, 16384);
	assert_int_equal(cfg->prelogin_rate, 5);
	assert_int_equal(cfg->prelogin_burst, 20);
	assert_int_equal(cfg->login_failures_free, 5);
	assert_int_equal(cfg->login_throttle_max_s, 300);
	assert_int_equal(cfg->login_throttle_entries, 16384);
	assert_int_equal(cfg->auth_threads, 1);
	assert_int_equal(cfg->auth_queue, 4096);
	config_free(cfg);
	unlink(path);
	free(path);

	char text[2048];
	snprintf(text, sizeof(text), "%s[listen]\nmax_pending = 0\nmax_pending_per_ip = 3\n"
		 "tls_handshake_timeout = 0\nprelogin_burst = 0\n[sessiond]\nauth_threads = 2\n",
		 good);
	path = write_temp(text);
	assert_int_equal(config_load(path, &cfg, &pr), -EINVAL);
	assert_int_equal(pr.n, 2);
	assert_true(has_problem(&pr, ":17: [listen] tls_handshake_timeout: expected a whole number from 1 to 3600"));
	assert_true(has_problem(&pr, ":18: [listen] prelogin_burst: expected a whole number from 1"));
	config_problems_clear(&pr);
	unlink(path);
	free(path);
}

/* The key table is the only copy of the defaults: each default is in its
 * own range, no key is listed twice, every key is documented, and a config
 * that sets nothing gets exactly config_default_values(). */
static void test_key_table(void **state)
{
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;
	const struct baton_config *d = config_default_values();
	char *path = write_temp("[listen]\nirc = 127.0.0.1:1\n");

	assert_true(config_nkeys >= 74); /* the keys of docs/config.md before the table */
	for (size_t i = 0; i < config_nkeys; i++) {
		const struct config_key *k = &config_keys[i];

		assert_non_null(k->doc);
		if (k->type == CONFIG_INT) {
			assert_true(k->min <= k->def && k->def <= k->max);
		}
		if (k->type == CONFIG_CUSTOM || k->type == CONFIG_ENUM)
			assert_non_null(k->parse);
		for (size_t j = 0; j < i; j++)
			assert_false(config_keys[j].section == k->section &&
				     strcmp(config_keys[j].name, k->name) == 0);
	}
	assert_int_equal(config_load(path, &cfg, &pr), 0);
	for (size_t i = 0; i < config_nkeys; i++) {
		const struct config_key *k = &config_keys[i];

		if (k->section > CONFIG_CANARY || k->type != CONFIG_INT)
			continue;
		assert_int_equal(*(const int *)((const char *)cfg + k->offset), k->def);
		assert_int_equal(*(const int *)((const char *)d + k->offset), k->def);
	}
	assert_string_equal(cfg->control, "baton.sock");
	assert_string_equal(cfg->state_dir, "state");
	config_free(cfg);
	unlink(path);
	free(path);
}

/* The one fd formula (config.h): 2 per session, 2 per listen line, spare. */
static void test_fds_needed(void **state)
{
	struct baton_config cfg = { .nsessions = 1000, .nlistens = 3 };

	assert_int_equal(config_fds_needed(&cfg), 2000 + 6 + CONFIG_FDS_SPARE);
	/* custody: the supervisor's copies of two chunks in flight twice */
	cfg.custody = 1;
	cfg.chunk_sessions = 100;
	assert_int_equal(config_fds_needed(&cfg), 2000 + 6 + CONFIG_FDS_SPARE + 400);
	cfg.nsessions = 10; /* a chunk is at most every session */
	assert_int_equal(config_fds_needed(&cfg), 20 + 6 + CONFIG_FDS_SPARE + 40);
}

/* What every fd-limit message says (config_fds_advice()): with custody on
 * (the default) what it costs and what `custody = no` would need instead;
 * without it no mention of custody; the buffer bound holds. */
static void test_fds_advice(void **state)
{
	struct baton_config cfg = { .nsessions = 1000, .nlistens = 3,
				    .custody = 1, .chunk_sessions = 100 };
	char buf[320], want[64], tiny[8];

	(void)state;
	config_fds_advice(&cfg, buf, sizeof(buf));
	assert_non_null(strstr(buf, "custody = no"));
	assert_non_null(strstr(buf, "LimitNOFILE="));
	snprintf(want, sizeof(want), "(then %d,", 2000 + 6 + CONFIG_FDS_SPARE);
	assert_non_null(strstr(buf, want));
	assert_true(strlen(buf) < sizeof(buf) - 1); /* not cut */
	cfg.custody = 0;
	config_fds_advice(&cfg, buf, sizeof(buf));
	assert_null(strstr(buf, "custody"));
	assert_non_null(strstr(buf, "LimitNOFILE="));
	cfg.custody = 1;
	assert_ptr_equal(config_fds_advice(&cfg, tiny, sizeof(tiny)), tiny);
	assert_int_equal(strlen(tiny), sizeof(tiny) - 1);
	assert_ptr_equal(config_fds_advice(&cfg, tiny, 0), tiny);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_good_config),
		cmocka_unit_test(test_every_problem_with_line),
		cmocka_unit_test(test_overlong_line),
		cmocka_unit_test(test_duplicate_and_malformed_sections),
		cmocka_unit_test(test_missing_file),
		cmocka_unit_test(test_tls_and_governor_keys),
		cmocka_unit_test(test_sasl_keys),
		cmocka_unit_test(test_stranger_limit_keys),
		cmocka_unit_test(test_key_table),
		cmocka_unit_test(test_fds_needed),
		cmocka_unit_test(test_fds_advice),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
