/* tests/unit/sessiond/test_env.h: the environment shared by the tests that
 * run clients through a real listener (test_relay.c, test_delivery.c,
 * test_client.c): a hand-made config, a bouncer, the sample session
 * (sample_state.c) without its attached client adopted with an upstream
 * socketpair we play the IRC server on, and a listener; plus the small
 * socket I/O helpers they share. */
#ifndef BATON_TESTS_TEST_ENV_H
#define BATON_TESTS_TEST_ENV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "state.pb-c.h"

#include "common/config.h"

struct event_base;
struct bouncer;
struct bouncer_item;

/* Changes the sample session before adoption (top-level fields of the
 * Session only). */
typedef void (*test_env_mutate_fn)(Baton__State__Session *s);

struct test_env_opts {
	int backlog_lines;
	/* > 0: backlog_buffer_bytes and backlog_session_bytes (and 1,000,000
	 * lines per session), for tests whose backlog is over the defaults */
	int backlog_bytes;
	int max_clients; /* > 0: max_clients_per_session */
	int ping_interval_s;
	int ping_timeout_s;
	const char *password; /* alice's hash, copied */
	test_env_mutate_fn mutate; /* NULL: the sample as it is */
	/* NULL: a loopback TCP listener; otherwise an abstract AF_UNIX one
	 * named "<unix_name>-<pid>". */
	const char *unix_name;
	int wait_tries; /* rx_wait() steps (2 ms polls) for the setup waits */
	/* Optional: changes the config (e.g. the [listen] limits) before the
	 * bouncer is made. */
	void (*tune)(struct baton_config *cfg);
	int listen_sndbuf; /* SO_SNDBUF of the listener (inherited), 0: default */
};

struct test_env {
	struct event_base *base;
	struct bouncer *b;
	struct baton_config cfg;
	struct config_network net;
	struct config_user user;
	struct config_session sess;
	char *chans[1];
	struct sockaddr_storage addr; /* the listener's */
	socklen_t addrlen;
	int up; /* our end of the upstream: we are the IRC server */
	struct bouncer_item *item; /* the adopted session */
	int baseline_fds;
};

/* Everything set up and armed; the upstream has flushed its queued output
 * and the state's partial input line is completed ("ne", then a PING
 * answered), what the upstream sent so far read and dropped. */
struct test_env *test_env_new(const struct test_env_opts *o);
/* Frees it all and asserts that no fd leaked. */
void test_env_free(struct test_env *e);

/* One non-blocking run of the loop. */
void test_env_pump(struct test_env *e);

/* A client socket connected to the listener (rcvbuf 0: default). */
int test_env_connect(struct test_env *e, int rcvbuf);
/* The same from a given local address (e.g. "127.0.0.2"; TCP only). */
int test_env_connect_from(struct test_env *e, const char *source, int rcvbuf);
/* The same, having sent PASS/NICK/USER (pass: "ident:password"). */
int test_env_register(struct test_env *e, const char *pass, int rcvbuf);

/* Number of open connections of a bouncer (bouncer_stats). */
unsigned open_connections(struct bouncer *b);

/* The session item of bouncer b, frozen and serialized into *buf (malloc'd)
 * with its fds; the caller thaws or releases it. */
struct bouncer_item *session_serialize(struct bouncer *b, uint8_t **buf, size_t *len,
				       const int **fds, size_t *nfds);
/* What session_serialize() gave, adopted by bouncer b2 with copies of the
 * fds (at most 4); not armed. */
struct bouncer_item *adopt_copy(struct bouncer *b2, const uint8_t *buf, size_t len,
				const int *fds, size_t nfds);

/* Send "line\r\n" whole. */
void say_fd(int fd, const char *line);

/* Text received on a socket, kept whole. */
struct rx {
	char *buf;
	size_t len, cap;
	bool eof;
};

/* Read what is there, at most `max` bytes (0: all); EOF or an error other
 * than EAGAIN (the RST of a discarding close) sets eof. */
void rx_read_max(struct rx *r, int fd, size_t max);
/* Pump and read until `s` shows up in r (at most `tries` 2 ms polls, or
 * until EOF). */
bool rx_wait_tries(struct test_env *e, struct rx *r, int fd, const char *s, int tries);

#endif
