/* Tests of supervisor/listeners.c and metrics_split_hostport(): listeners
 * are non-blocking and CLOEXEC, named by their numeric address, and a busy
 * address is reported at its config line. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/config.h"
#include "supervisor/listeners.h"
#include "supervisor/metrics.h"

static void config_one(struct baton_config *cfg, struct config_listen *l,
		       const char *host, const char *port)
{
	memset(cfg, 0, sizeof(*cfg));
	memset(l, 0, sizeof(*l));
	l->kind = "irc";
	l->host = (char *)host;
	l->port = (char *)port;
	l->line = 5;
	cfg->path = "/etc/baton/x.ini";
	cfg->listens = l;
	cfg->nlistens = 1;
}

static void test_bind_flags_and_name(void **state)
{
	struct baton_config cfg;
	struct config_listen l;
	struct listeners *ls = NULL;
	char err[256] = "";
	int fd;

	config_one(&cfg, &l, "127.0.0.1", "0");
	assert_int_equal(listeners_bind(&cfg, &ls, err, sizeof(err)), 0);
	assert_int_equal(listeners_count(ls), 1);
	fd = listeners_fds(ls)[0];
	assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);
	assert_non_null(strstr(listeners_names(ls)[0], "irc 127.0.0.1:"));
	listeners_free(ls);
}

static void test_busy_address_reported_at_line(void **state)
{
	struct baton_config cfg;
	struct config_listen l;
	struct config_problems pr = { 0 };
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t len = sizeof(sa);
	char port[16];
	int busy = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(busy, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(busy, 1), 0);
	assert_int_equal(getsockname(busy, (struct sockaddr *)&sa, &len), 0);
	snprintf(port, sizeof(port), "%u", ntohs(sa.sin_port));

	config_one(&cfg, &l, "127.0.0.1", port);
	listeners_check(&cfg, &pr);
	assert_int_equal(pr.n, 1);
	assert_non_null(strstr(pr.msgs[0], "/etc/baton/x.ini:5: "));
	config_problems_clear(&pr);
	close(busy);
}

static void test_split_hostport(void **state)
{
	char a[] = "127.0.0.1:9100", b[] = "[::1]:9100", c[] = "nocolon",
	     d[] = "[::1]9100";
	char *host, *port;

	assert_int_equal(metrics_split_hostport(a, &host, &port), 0);
	assert_string_equal(host, "127.0.0.1");
	assert_string_equal(port, "9100");
	assert_int_equal(metrics_split_hostport(b, &host, &port), 0);
	assert_string_equal(host, "::1");
	assert_string_equal(port, "9100");
	assert_int_not_equal(metrics_split_hostport(c, &host, &port), 0);
	assert_int_not_equal(metrics_split_hostport(d, &host, &port), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bind_flags_and_name),
		cmocka_unit_test(test_busy_address_reported_at_line),
		cmocka_unit_test(test_split_hostport),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
