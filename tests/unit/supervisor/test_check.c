/* Unit tests of supervisor/check.c beyond config_load(): password hashes
 * and TLS files, each reported at the line of the key that names it.
 * Regression: an expired certificate passed --check silently (it loads
 * fine; now a warning), a
 * cut-off password hash passed too (every login of that user failed), and
 * TLS problems pointed at the section header instead of the key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <crypt.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "common/config.h"
#include "supervisor/check.h"

static char dir[256];

/* A self-signed EC certificate valid from now + from_s to now + to_s. */
static void make_cert(const char *cert, const char *key, long from_s, long to_s)
{
	EVP_PKEY *pk = EVP_EC_gen("P-256");
	X509 *x = X509_new();
	FILE *f;

	assert_non_null(pk);
	assert_non_null(x);
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), from_s);
	X509_gmtime_adj(X509_getm_notAfter(x), to_s);
	X509_set_pubkey(x, pk);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
				   (const unsigned char *)"baton-test", -1, -1, 0);
	X509_set_issuer_name(x, X509_get_subject_name(x));
	assert_true(X509_sign(x, pk, EVP_sha256()) > 0);
	f = fopen(cert, "w");
	assert_non_null(f);
	PEM_write_X509(f, x);
	fclose(f);
	f = fopen(key, "w");
	assert_non_null(f);
	PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL);
	fclose(f);
	X509_free(x);
	EVP_PKEY_free(pk);
}

static int has(const struct config_problems *p, const char *needle)
{
	for (size_t i = 0; i < p->n; i++)
		if (strstr(p->msgs[i], needle) != NULL)
			return 1;
	return 0;
}

static void test_check_passwords_and_certificates(void **state)
{
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;
	struct crypt_data cd = { 0 };
	char path[512], text[4096], want[2048];
	FILE *f;

	snprintf(dir, sizeof(dir), "%s/baton-check-XXXXXX",
		 getenv("TMPDIR") && getenv("TMPDIR")[0] ? getenv("TMPDIR") : "/tmp");
	assert_non_null(mkdtemp(dir));
	chdir(dir);
	make_cert("expired.pem", "expired.key", -7200, -3600);
	make_cert("good.pem", "good.key", -60, 86400);
	make_cert("other.pem", "other.key", -60, 86400);
	snprintf(text, sizeof(text),
		 "[supervisor]\n"
		 "sessiond = /nonexistent/baton-sessiond\n"
		 "[listen]\n"
		 "irc = 127.0.0.1:1\n"
		 "ircs = 127.0.0.1:2\n"
		 "tls_cert = expired.pem\n"          /* 6 */
		 "tls_key = expired.key\n"
		 "[network n]\n"
		 "host = 127.0.0.1\n"
		 "tls = yes\n"
		 "[user alice]\n"
		 "password = $6$salt$hash\n"         /* 12 */
		 "[user bob]\n"
		 "password = %s\n"                  /* 14: fine */
		 "[user alice/n]\n"
		 "tls_cert = good.pem\n"             /* 16 */
		 "tls_key = other.key\n"             /* 17 */
		 "[network p]\n"
		 "host = 127.0.0.1\n"
		 "[user bob/p]\n"
		 "sasl = plain\n"                    /* 21: plaintext */
		 "sasl_password_file = pw.txt\n"     /* 22: mode 644 */
		 "[user alice/p]\n"
		 "sasl = scram-sha-256\n"
		 "sasl_password = inline\n",         /* 25: config mode 644 */
		 crypt_r("pw", "$6$testsalt$", &cd));
	f = fopen("pw.txt", "w");
	assert_non_null(f);
	fputs("secret\n", f);
	fclose(f);
	chmod("pw.txt", 0644);
	snprintf(path, sizeof(path), "%s/baton.ini", dir);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	chmod(path, 0644);

	assert_int_equal(config_load(path, &cfg, &pr), 0);
	/* Warnings go to stdout: catch them in a file. */
	char out_path[300], printed[4096] = "";
	snprintf(out_path, sizeof(out_path), "%s/stdout", dir);
	fflush(stdout);
	int saved = dup(1), out = open(out_path, O_CREAT | O_TRUNC | O_RDWR, 0600);
	assert_true(saved >= 0 && out >= 0);
	dup2(out, 1);
	check_environment(cfg, "/nonexistent/baton-sessiond", &pr, NULL);
	fflush(stdout);
	dup2(saved, 1);
	close(saved);
	ssize_t got = pread(out, printed, sizeof(printed) - 1, 0);
	close(out);
	unlink(out_path);
	printed[got > 0 ? got : 0] = '\0';
	printf("%s", printed);
	for (size_t i = 0; i < pr.n; i++)
		printf("  %s\n", pr.msgs[i]);
	snprintf(want, sizeof(want), "%s:12: [user alice] password hash is malformed: its sha512crypt checksum", path);
	assert_true(has(&pr, want));
	snprintf(want, sizeof(want), "%s:14:", path);
	assert_false(has(&pr, want));
	/* An expired certificate is a warning (--check runs as ExecStartPre:
	 * it must not keep the plaintext listeners down), not a problem. */
	snprintf(want, sizeof(want), "%s:6: warning: [listen] tls_cert %s/expired.pem: certificate expired on ", path, dir);
	assert_non_null(strstr(printed, want));
	snprintf(want, sizeof(want), "%s:6:", path);
	assert_false(has(&pr, want));
	snprintf(want, sizeof(want), "%s:16: [user alice/n] tls_cert %s/good.pem (tls_key %s/other.key, line 17): ",
		 path, dir, dir);
	assert_true(has(&pr, want));
	assert_true(has(&pr, "key values mismatch"));
	/* SASL that works but exposes the password: warnings */
	snprintf(want, sizeof(want), "%s:21: warning: [user bob/p] sasl = plain over a plaintext connection", path);
	assert_non_null(strstr(printed, want));
	snprintf(want, sizeof(want), "%s:22: warning: [user bob/p] sasl_password_file %s/pw.txt is readable by group or others (mode 644)", path, dir);
	assert_non_null(strstr(printed, want));
	snprintf(want, sizeof(want), "%s:25: warning: [user alice/p] sasl_password in a config file readable by group or others (mode 644)", path);
	assert_non_null(strstr(printed, want));
	snprintf(want, sizeof(want), "%s:2", path);
	assert_false(has(&pr, want)); /* warnings only */
	config_problems_clear(&pr);
	config_free(cfg);

	const char *files[] = { "expired.pem", "expired.key", "good.pem", "good.key",
				"other.pem", "other.key", "baton.ini", "pw.txt" };
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
		unlink(files[i]);
	rmdir(dir);
}

/* How many sessions of each network can connect (issue 11: with the
 * default max_connections_per_ip 3 the fourth user of a network waited for
 * ever and --check said "ok" and nothing else), and `bind` addresses this
 * host does not have (every connect from them fails). */
static void test_check_capacity_and_bind(void **state)
{
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;
	struct crypt_data cd = { 0 };
	struct check_capacity c;
	char path[512], text[4096], want[1024];
	const char *h;
	FILE *f;

	(void)state;
	snprintf(dir, sizeof(dir), "%s/baton-check-XXXXXX",
		 getenv("TMPDIR") && getenv("TMPDIR")[0] ? getenv("TMPDIR") : "/tmp");
	assert_non_null(mkdtemp(dir));
	h = crypt_r("pw", "$6$testsalt$", &cd);
	snprintf(text, sizeof(text),
		 "[supervisor]\n"
		 "sessiond = /nonexistent/baton-sessiond\n"
		 "[listen]\n"
		 "irc = 127.0.0.1:1\n"
		 "[network one]\n"                   /* 5 */
		 "host = 127.0.0.1\n"
		 "[network pool]\n"                  /* 7 */
		 "host = 127.0.0.1\n"
		 "bind = 127.0.0.1 192.0.2.254\n"
		 "max_connections_per_ip = 1\n"
		 "connects_per_minute = 6\n"
		 "connect_burst = 1\n"
		 "[user a]\npassword = %s\n[user a/one]\n[user a/pool]\n"
		 "[user b]\npassword = %s\n[user b/one]\n[user b/pool]\n"
		 "[user c]\npassword = %s\n[user c/one]\n"
		 "[user d]\npassword = %s\n[user d/one]\n",
		 h, h, h, h);
	snprintf(path, sizeof(path), "%s/baton.ini", dir);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	assert_int_equal(config_load(path, &cfg, &pr), 0);
	assert_int_equal(cfg->nnetworks, 2);

	check_network_capacity(cfg, 0, &c);  /* one: the default limits */
	assert_string_equal(c.network, "one");
	assert_int_equal(c.line, 5);
	assert_int_equal(c.sessions, 4);
	assert_int_equal(c.addresses, 1);
	assert_int_equal(c.max_per_addr, 3);
	assert_int_equal(c.capacity, 3);
	assert_int_equal(c.can_connect, 3);
	assert_int_equal(c.waiting, 1);
	assert_true(c.startup_s == 0.0); /* burst 4 takes all 3 at once */

	check_network_capacity(cfg, 1, &c);  /* pool: 2 addresses x 1 */
	assert_int_equal(c.sessions, 2);
	assert_int_equal(c.addresses, 2);
	assert_int_equal(c.capacity, 2);
	assert_int_equal(c.waiting, 0);

	/* 192.0.2.254 (TEST-NET-1) is no address of a test host. */
	check_environment(cfg, "/nonexistent/baton-sessiond", &pr, NULL);
	for (size_t i = 0; i < pr.n; i++)
		printf("  %s\n", pr.msgs[i]);
	snprintf(want, sizeof(want), "%s:7: [network pool] bind 192.0.2.254: ", path);
	assert_true(has(&pr, want));
	assert_false(has(&pr, "bind 127.0.0.1:"));
	config_problems_clear(&pr);
	config_free(cfg);
	unlink(path);
	rmdir(dir);
}

/* Pacing: 7 sessions over 2 addresses at most 4 each, burst 1, 6 a
 * minute: the busier address takes 4 connects, 1 at once and 3 more 10 s
 * apart: all connected within 30 s of a restart. */
static void test_check_capacity_startup(void **state)
{
	struct baton_config cfg = { 0 };
	struct config_network n = { 0 };
	struct config_session s[7];
	char *bind[2] = { "10.0.0.1", "10.0.0.2" };
	struct check_capacity c;

	(void)state;
	memset(s, 0, sizeof(s));
	n.name = "net";
	n.bind = bind;
	n.nbind = 2;
	n.max_connections_per_ip = 4;
	n.connects_per_minute = 6;
	n.connect_burst = 1;
	for (int i = 0; i < 7; i++)
		s[i].network = "net";
	cfg.networks = &n;
	cfg.nnetworks = 1;
	cfg.sessions = s;
	cfg.nsessions = 7;
	check_network_capacity(&cfg, 0, &c);
	assert_int_equal(c.capacity, 8);
	assert_int_equal(c.can_connect, 7);
	assert_true(c.startup_s > 29.99 && c.startup_s < 30.01);
	/* no limit (configs built in code; the parser sets 1 or more) */
	n.max_connections_per_ip = 0;
	check_network_capacity(&cfg, 0, &c);
	assert_int_equal(c.capacity, 0);
	assert_int_equal(c.can_connect, 7);
	assert_int_equal(c.waiting, 0);
}

/* Review: a state_dir too long for the workers' rendezvous sockets
 * (STATE_DIR/worker-PID.sock must fit sockaddr_un's 108 bytes) passed
 * --check silently; each worker then only logged that no supervisor could
 * adopt it, and a supervisor crash was no longer survived. A warning now. */
static void test_check_state_dir_rendezvous_length(void **state)
{
	struct config_problems pr = { 0 }, warn = { 0 };
	struct baton_config *cfg = NULL;
	char path[512], text[1024], longdir[400];
	FILE *f;

	(void)state;
	snprintf(dir, sizeof(dir), "%s/baton-check-XXXXXX",
		 getenv("TMPDIR") && getenv("TMPDIR")[0] ? getenv("TMPDIR") : "/tmp");
	assert_non_null(mkdtemp(dir));
	for (int fits = 1; fits >= 0; fits--) {
		/* "/worker-4194304.sock" (pid_max) is 20 bytes: 87 fit */
		size_t n = fits ? 87 : 88;
		size_t d = strlen(dir) + 1;

		assert_true(n > d + 1);
		snprintf(longdir, sizeof(longdir), "%s/", dir);
		memset(longdir + d, 's', n - d);
		longdir[n] = '\0';
		snprintf(text, sizeof(text),
			 "[supervisor]\n"
			 "sessiond = /nonexistent/baton-sessiond\n"
			 "state_dir = %s\n"
			 "control = %s/c.sock\n"
			 "[listen]\n"
			 "irc = 127.0.0.1:1\n", longdir, dir);
		snprintf(path, sizeof(path), "%s/baton.ini", dir);
		f = fopen(path, "w");
		assert_non_null(f);
		fputs(text, f);
		fclose(f);
		assert_int_equal(config_load(path, &cfg, &pr), 0);
		check_environment(cfg, "/nonexistent/baton-sessiond", &pr, &warn);
		for (size_t i = 0; i < warn.n; i++)
			printf("  %s\n", warn.msgs[i]);
		assert_int_equal(has(&warn, "rendezvous"), !fits);
		config_problems_clear(&pr);
		config_problems_clear(&warn);
		config_free(cfg);
		cfg = NULL;
		unlink(path);
	}
	rmdir(dir);
}

/* The worker's --check lines: a warning is one it wrote as
 * "CONFIG: warning: " (or "CONFIG:LINE: warning: "); a problem that only
 * quotes ": warning: " (a store_path holding it) stays a problem. */
static void test_check_sessiond_warning_lines(void **state)
{
	struct config_problems pr = { 0 }, warn = { 0 };
	struct baton_config *cfg = NULL;
	char path[512], fake[512], text[1024];
	FILE *f;

	(void)state;
	snprintf(dir, sizeof(dir), "%s/baton-check-XXXXXX",
		 getenv("TMPDIR") && getenv("TMPDIR")[0] ? getenv("TMPDIR") : "/tmp");
	assert_non_null(mkdtemp(dir));
	assert_int_equal(chdir(dir), 0); /* the cwd of earlier tests is gone */
	snprintf(fake, sizeof(fake), "%s/fake-sessiond", dir);
	f = fopen(fake, "w");
	assert_non_null(f);
	/* called as: fake --check -c CONFIG */
	fputs("#!/bin/sh\n"
	      "echo \"$3: [sessiond] store: /x: warning: y/history.db: unable to open database file\"\n"
	      "echo \"$3: warning: [sessiond] store: could not connect to server\"\n"
	      "exit 1\n", f);
	fclose(f);
	assert_int_equal(chmod(fake, 0755), 0);
	snprintf(text, sizeof(text),
		 "[supervisor]\n"
		 "sessiond = %s\n"
		 "control = %s/c.sock\n"
		 "[listen]\n"
		 "irc = 127.0.0.1:1\n", fake, dir);
	snprintf(path, sizeof(path), "%s/baton.ini", dir);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	assert_int_equal(config_load(path, &cfg, &pr), 0);
	check_environment(cfg, fake, &pr, &warn);
	for (size_t i = 0; i < pr.n; i++)
		printf("  problem: %s\n", pr.msgs[i]);
	for (size_t i = 0; i < warn.n; i++)
		printf("  warning: %s\n", warn.msgs[i]);
	assert_true(has(&pr, "unable to open database file"));
	assert_false(has(&warn, "unable to open database file"));
	assert_false(has(&pr, "without saying why"));
	assert_true(has(&warn, "could not connect to server"));
	assert_false(has(&pr, "could not connect to server"));
	config_problems_clear(&pr);
	config_problems_clear(&warn);
	config_free(cfg);
	unlink(path);
	unlink(fake);
	assert_int_equal(chdir("/"), 0);
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_check_passwords_and_certificates),
		cmocka_unit_test(test_check_capacity_and_bind),
		cmocka_unit_test(test_check_capacity_startup),
		cmocka_unit_test(test_check_state_dir_rendezvous_length),
		cmocka_unit_test(test_check_sessiond_warning_lines),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
