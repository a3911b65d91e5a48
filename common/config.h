/* common/config.h: the baton INI file (parsed with inih), shared by the
 * supervisor and sessiond. Every key is documented in docs/config.md with its
 * default. Relative paths resolve against the config file's folder.
 *
 * Loading never stops at the first problem: every problem is collected as
 * "FILE:LINE: message" so an operator fixes a new host in one pass.
 */
#ifndef BATON_COMMON_CONFIG_H
#define BATON_COMMON_CONFIG_H

#include <stddef.h>

struct config_listen {
	char *kind; /* "irc" (plaintext) or "ircs" (TLS) */
	char *host;
	char *port;
	int line;
};

struct config_network {
	char *name;
	char *host;  /* default 127.0.0.1? no: required */
	char *port;  /* default "6667", "6697" with tls */
	/* TLS to the network */
	int tls;                /* bool, default 0 */
	int tls_verify;         /* bool, default 1 (0 only with a loud warning) */
	char *tls_ca;           /* absolute path or NULL: the system CA store */
	char *tls_fingerprint;  /* normalized "sha256:hex" (lowercase, no colons) or NULL */
	/* Reconnect governor (per network and source address) */
	int connects_per_minute;     /* token bucket refill, default 4 */
	int connect_burst;           /* bucket size, default 4 */
	int max_connections_per_ip;  /* concurrent connections per source address, default 3 */
	char **bind;                 /* source address pool; NULL/0: the kernel chooses */
	size_t nbind;
	int line;
};

struct config_user {
	char *name;
	char *password; /* crypt(3) hash */
	int line;
};

struct config_session {
	char *user;
	char *network;
	char *nick;     /* default: user name */
	char *username; /* default: nick */
	char *realname; /* default: nick */
	char **channels;
	size_t nchannels;
	char *tls_cert;  /* client certificate for CertFP (absolute path) or NULL */
	char *tls_key;   /* its key (absolute path; NULL: in tls_cert) */
	int line;
};

struct config_problems {
	char **msgs;
	size_t n;
};

struct strmap;

struct baton_config {
	char *path; /* absolute */
	char *dir;  /* folder of path */

	/* [supervisor] */
	char *control;          /* default "baton.sock" */
	char *sessiond;         /* default: baton-sessiond beside the supervisor binary */
	char *state_dir;        /* default "state" */
	int handoff_timeout_s;  /* default 10 */
	char *metrics;          /* "HOST:PORT" or NULL (off, default) */

	/* [sessiond] (defaults: the key table in config.c; docs/config.md) */
	int backlog_lines;      /* per buffer, default 500 */
	/* The bounds of one session's state, so that every session can always
	 * migrate (sessiond/state.h: the worst case of a session with every
	 * bound reached must fit one migration message; the worker's preflight
	 * checks the combination). */
	int backlog_buffer_bytes;  /* text bytes per buffer, default 256 KiB */
	int backlog_buffers;       /* buffers (channels + queries), default 100 */
	int backlog_session_lines; /* lines of all buffers, default 20,000 */
	int backlog_session_bytes; /* text + names of all buffers, default 4 MiB */
	int max_clients_per_session; /* attached clients, default 16 (<= 252) */
	int max_channels;          /* channels tracked per session, default 250 */
	int max_channel_members;   /* members tracked per channel, default 50,000 */
	int member_list_bytes;     /* member lists of a session, default 2 MiB */
	int chunk_sessions;     /* sessions per migration chunk, default 256 */
	int chunk_bytes;        /* ... or fewer once the chunk's state reaches this, default 1 MiB */
	int ping_interval_s;    /* upstream keepalive PING, default 60 */
	int ping_timeout_s;     /* no data for this long: reconnect, default 240 */
	int reconnect_min_s;    /* first backoff, default 2 */
	int reconnect_max_s;    /* backoff cap, default 300 */
	int handshake_budget_ms;/* freeze waits for in-progress handshakes, default 500 */
	int auth_threads;       /* threads running crypt(3) for logins, default 1 */
	int auth_queue;         /* password checks queued or running, default 4096 (0: that) */

	/* [listen] TLS certificate for every ircs listener (absolute paths;
	 * required when there is one). Re-read when the files change. */
	char *listen_tls_cert;
	char *listen_tls_key;   /* NULL: the key is in listen_tls_cert */

	/* [listen] limits on connections that have not logged in (docs/config.md).
	 * 0 means "no limit" (a config built by hand, as in unit tests, has
	 * none; the file may say 0 where docs/config.md allows it); config_load()
	 * sets the defaults. The failed-login throttle is off only when
	 * login_throttle_max_s is 0 (hand-made configs: the file needs >= 1). */
	int max_pending;              /* unregistered connections in all, default 4096 */
	int max_pending_per_ip;       /* ... from one address, default 16 */
	int max_tls_handshakes;       /* ircs handshakes at once, default 1024 */
	int max_tls_handshakes_per_ip;/* ... from one address, default 32 */
	int tls_handshake_timeout_s;  /* ircs handshake deadline, default 10 (0: conn.h's) */
	int prelogin_max_lines;       /* lines a connection may send before login, default 64 */
	int prelogin_max_bytes;       /* ... bytes, default 16384 */
	int prelogin_sendq;           /* output queued to it before login, default 16384 */
	int prelogin_rate;            /* commands per second before login, default 5 */
	int prelogin_burst;           /* ... token bucket size, default 20 */
	int login_failures_free;      /* failures per address / user before the throttle, default 5 */
	int login_throttle_max_s;     /* longest throttle delay, default 300 */
	int login_throttle_entries;   /* addresses (and unknown names) tracked, default 16384 */

	/* [canary] health gates and release safety (supervisor/gates.h,
	 * docs/config.md; defaults: the key table in config.c) */
	int canary_bake_s;              /* default bake per step, default 300 */
	int canary_sample_ms;           /* gate sample interval, default 1000 */
	int canary_min_lines;           /* relayed lines per group before a statistical gate judges, default 500 */
	int canary_trip_samples;        /* consecutive failing samples to trip a statistical gate, default 3 */
	int canary_watchdog_ms;         /* a worker that does not answer a sample this long, default 5000 */
	int canary_adopt_ping_timeout_s;/* PING after adoption must be answered, default 10 */
	int canary_ping_answer_timeout_s;/* a network PING unanswered this long, default 5 */
	int canary_delivery_lines;      /* differential delivery: lines per session tolerated, default 4 */
	int canary_delivery_permille;   /* ... and this share of the lines, default 5 (0.5 %) */
	int canary_latency_p99_ratio_pct; /* cohort p99 over control p99, default 300 */
	int canary_latency_p99_margin_ms; /* ... plus this, default 20 */
	int canary_loop_lag_margin_ms;  /* cohort loop lag over control's, default 200 */
	int canary_cpu_ratio_pct;       /* CPU per 1,000 lines, cohort over control, default 300 */
	int canary_rss_growth_kb_per_min; /* RSS growth per session over control's, default 512 */
	int canary_error_numerics_per_hour; /* per session, over control's, default 120 */
	int canary_rollback_window_s;   /* a release that crashes this soon after taking over is rolled back, default 300 */
	int canary_releases_kept;       /* releases kept on disk, default 5 */
	struct config_listen *listens;
	size_t nlistens;
	struct config_network *networks;
	size_t nnetworks;
	struct config_user *users;
	size_t nusers;
	struct config_session *sessions;
	size_t nsessions;

	/* Lookup indexes (name -> array index + 1), private to config.c: a
	 * config with thousands of users must load in linear time. */
	struct strmap *user_index, *network_index, *session_index;
};

/* Load and validate. Returns 0 with *out set when there were no problems;
 * -EINVAL with *out NULL and problems filled otherwise (also for an
 * unreadable file). problems must be zeroed by the caller and released with
 * config_problems_clear(). */
int config_load(const char *path, struct baton_config **out,
		struct config_problems *problems);
void config_free(struct baton_config *cfg); /* accepts NULL */

void config_problems_add(struct config_problems *p, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void config_problems_clear(struct config_problems *p);

const struct config_network *config_find_network(const struct baton_config *cfg,
						 const char *name);
const struct config_user *config_find_user(const struct baton_config *cfg,
					   const char *name);
const struct config_session *config_find_session(const struct baton_config *cfg,
						 const char *user,
						 const char *network);

/* The default of every numeric key (no strings, no sections): for code
 * that runs without a loaded config (unit tests) or finds a key left 0 in a
 * config built by hand. */
const struct baton_config *config_default_values(void);

/* Resolve `path` against the config folder; returns a malloc'd string. */
char *config_resolve(const struct baton_config *cfg, const char *path);

#endif
