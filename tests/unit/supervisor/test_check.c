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
	check_environment(cfg, "/nonexistent/baton-sessiond", &pr);
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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_check_passwords_and_certificates),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
