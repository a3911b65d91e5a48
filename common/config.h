/* common/config.h: the baton INI file (parsed with inih), shared by the
 * supervisor and sessiond. Every key, with its section, type, range, default
 * and documentation, is one entry of the key table (common/config_keys.c):
 * the parser, the defaults (config_default_values()) and docs/config.md
 * (generated: scripts/gen-config-doc) all come from it. Defaults are
 * not repeated here.
 * Relative paths resolve against the config file's folder.
 *
 * Loading never stops at the first problem: every problem is collected as
 * "FILE:LINE: message" so an operator fixes a new host in one pass.
 *
 * Ownership: config_load() gives the caller a struct baton_config that owns
 * every string and array in it (config_free()); the caller owns the
 * problems list it passes (config_problems_clear()). A loaded config is
 * never modified afterwards: the daemons share it read-only.
 */
#ifndef BATON_COMMON_CONFIG_H
#define BATON_COMMON_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

struct config_listen {
	char *kind; /* "irc" (plaintext) or "ircs" (TLS) */
	char *host;
	char *port;
	int line;
};

struct config_network {
	char *name;
	char *host;
	char *port;
	/* TLS to the network */
	int tls;                /* bool */
	int tls_verify;         /* bool (0 only with a loud warning) */
	char *tls_ca;           /* absolute path or NULL: the system CA store */
	int tls_ca_line;
	char *tls_fingerprint;  /* normalized "sha256:hex" (lowercase, no colons) or NULL */
	/* Reconnect governor (per network and source address) */
	int connects_per_minute;     /* token bucket refill */
	int connect_burst;           /* bucket size */
	int max_connections_per_ip;  /* concurrent connections per source address */
	char **bind;                 /* source address pool; NULL/0: the kernel chooses */
	size_t nbind;
	/* Member lists shared by the sessions of this network, or one per
	 * session (sessiond/session.h session_members_private()). */
	enum config_member_lists {
		CONFIG_MEMBERS_AUTO = 0, /* shared unless the network hides members */
		CONFIG_MEMBERS_SHARED,
		CONFIG_MEMBERS_PRIVATE,
	} member_lists;
	/* Message store retention of this network's sessions (-1: the
	 * [sessiond] default). */
	int store_max_age_days;
	int store_max_mb;
	int line;
};

struct config_user {
	char *name;
	char *password; /* crypt(3) hash */
	int password_line;
	int line;
};

struct config_session {
	char *user;
	char *network;
	char *nick;
	char *username;
	char *realname;
	char **channels;
	size_t nchannels;
	char *tls_cert;  /* client certificate for CertFP (absolute path) or NULL */
	char *tls_key;   /* its key (absolute path; NULL: in tls_cert) */
	int tls_cert_line, tls_key_line;
	/* SASL to the network (sessiond/sasl.h): mechanism "PLAIN",
	 * "EXTERNAL" or "SCRAM-SHA-256" (normalized), NULL: no SASL. The
	 * password is the key's value or the first line of
	 * sasl_password_file (read at load, so an upgrade re-reads it). */
	char *sasl;
	char *sasl_username;      /* NULL: the nick (EXTERNAL: no authzid) */
	char *sasl_password;
	char *sasl_password_file; /* absolute path or NULL */
	int sasl_line, sasl_username_line, sasl_password_line,
	    sasl_password_file_line;
	int line;
};

struct config_problems {
	char **msgs;
	size_t n;
	/* Problems that could not be recorded (out of memory): still
	 * problems, so a load with any of them fails. */
	size_t dropped;
};

struct strmap;

struct baton_config {
	char *path; /* absolute */
	char *dir;  /* folder of path */
	/* config_load() only: an allocation failed (common/util.h policy:
	 * the load fails with -ENOMEM instead of yielding a config with a
	 * value silently missing). */
	bool alloc_failed;

	/* [supervisor] */
	char *control;
	char *sessiond;
	char *state_dir;
	int handoff_timeout_s;
	int custody;               /* bool: the supervisor holds every socket (docs/design.md §1) */
	int custody_checkpoint_ms; /* session records at most this often */
	int custody_crashes;       /* crashes a session may be implicated in before quarantine */
	int worker_watchdog_ms;    /* the serving worker silent this long is killed (0: off) */
	char *metrics;          /* "HOST:PORT" or NULL: off */
	/* What users may do to their own sessions from a client (*baton,
	 * soju.im/bouncer-networks: sessiond/service.h). The supervisor,
	 * which makes the edit, checks it against the file as it is then. */
	enum config_user_networks {
		CONFIG_USER_NETWORKS_CHANGE = 0, /* default: list, change keys */
		CONFIG_USER_NETWORKS_LIST,       /* list and status only */
		CONFIG_USER_NETWORKS_ADD,        /* change, add and delete */
	} user_networks;

	/* [sessiond] */
	int backlog_lines;      /* per buffer */
	int backlog_cache_lines; /* per buffer in memory with a store */
	/* The bounds of one session's state, so that every session can always
	 * migrate (sessiond/state.h: the worst case of a session with every
	 * bound reached must fit one migration message; the worker's preflight
	 * checks the combination). */
	int backlog_buffer_bytes;  /* text bytes per buffer */
	int backlog_buffers;       /* buffers (channels + queries) */
	int backlog_session_lines; /* lines of all buffers */
	int backlog_session_bytes; /* text + names of all buffers */
	int max_clients_per_session; /* attached clients */
	int max_channels;          /* channels tracked per session */
	int max_channel_members;   /* members tracked per channel */
	int member_list_bytes;     /* member lists of a session */
	int chunk_sessions;     /* sessions per migration chunk */
	int chunk_bytes;        /* ... or fewer once the chunk's state reaches this */
	int ping_interval_s;    /* upstream keepalive PING */
	int ping_timeout_s;     /* no data for this long: reconnect */
	int reconnect_min_s;    /* first backoff */
	int reconnect_max_s;    /* backoff cap */
	int handshake_budget_ms;/* freeze waits for in-progress handshakes */
	int auth_threads;       /* threads running crypt(3) for logins */
	int auth_queue;         /* password checks queued or running */
	/* The message store (sessiond/history.h): backend, where, queue bounds
	 * and retention defaults (0: none). */
	enum config_store {
		CONFIG_STORE_SQLITE = 0,
		CONFIG_STORE_POSTGRES,
		CONFIG_STORE_OFF,
	} store_backend;
	char *store_path;       /* relative: to state_dir */
	char *store_url;        /* libpq conninfo, NULL: none */
	int store_queue_ops;
	int store_queue_bytes;
	int store_commit_ms;    /* group commit window */
	int store_max_age_days;
	int store_max_mb;

	/* [listen] TLS certificate for every ircs listener (absolute paths;
	 * required when there is one). Re-read when the files change. */
	char *listen_tls_cert;
	char *listen_tls_key;   /* NULL: the key is in listen_tls_cert */
	int listen_tls_cert_line, listen_tls_key_line; /* where they were set */

	/* [listen] limits on connections that have not logged in (docs/config.md).
	 * 0 means "no limit" (a config built by hand, as in unit tests, has
	 * none; the file may say 0 where docs/config.md allows it); config_load()
	 * sets the defaults. The failed-login throttle is off only when
	 * login_throttle_max_s is 0 (hand-made configs: the file needs >= 1). */
	int max_pending;              /* unregistered connections in all */
	int max_pending_per_ip;       /* ... from one address */
	int max_tls_handshakes;       /* ircs handshakes at once */
	int max_tls_handshakes_per_ip;/* ... from one address */
	int tls_handshake_timeout_s;  /* ircs handshake deadline (0: conn.h's) */
	int prelogin_max_lines;       /* lines a connection may send before login */
	int prelogin_max_bytes;       /* ... bytes */
	int prelogin_sendq;           /* output queued to it before login */
	int prelogin_rate;            /* commands per second before login */
	int prelogin_burst;           /* ... token bucket size */
	int login_failures_free;      /* failures per address / user before the throttle */
	int login_throttle_max_s;     /* longest throttle delay */
	int login_throttle_entries;   /* addresses (and unknown names) tracked */

	/* [canary] health gates and release safety (supervisor/gates.h,
	 * docs/config.md) */
	int canary_bake_s;              /* bake per step without --bake */
	int canary_sample_ms;           /* gate sample interval */
	int canary_min_lines;           /* relayed lines per group before a statistical gate judges */
	int canary_trip_samples;        /* consecutive failing samples to trip a statistical gate */
	int canary_watchdog_ms;         /* a worker that does not answer a sample this long */
	int canary_adopt_ping_timeout_s;/* PING after adoption must be answered */
	int canary_ping_answer_timeout_s;/* a network PING unanswered this long */
	int canary_delivery_lines;      /* differential delivery: lines per session tolerated */
	int canary_delivery_permille;   /* ... and this share of the lines */
	int canary_latency_p99_ratio_pct; /* cohort p99 over control p99 */
	int canary_latency_p99_margin_ms; /* ... plus this */
	int canary_loop_lag_margin_ms;  /* cohort loop lag over control's */
	int canary_cpu_ratio_pct;       /* CPU per 1,000 lines, cohort over control */
	int canary_rss_growth_kb_per_min; /* RSS growth per session over control's */
	int canary_error_numerics_per_hour; /* per session, over control's */
	int canary_rollback_window_s;   /* a release that crashes this soon after taking over is rolled back */
	int canary_releases_kept;       /* releases kept on disk */
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

/* The default of every numeric key of the global sections (no strings, no
 * network keys): for code that runs without a loaded config (unit tests) or
 * finds a key left 0 in a config built by hand. */
const struct baton_config *config_default_values(void);

/* cfg->field, or the table's default when cfg is NULL or the field is 0 or
 * less (a config built by hand). Only for keys whose range excludes 0. */
#define CONFIG_INT_OR_DEFAULT(cfg, field)                                   \
	((cfg) != NULL && (cfg)->field > 0 ? (cfg)->field :                 \
					     config_default_values()->field)

/* The file descriptors one worker needs for this config; the one formula
 * behind the worker's preflight (soft RLIMIT_NOFILE), the supervisor's
 * refusal to start a migration target that would inherit too low a limit,
 * and `baton-supervisor --check` (hard limit):
 *
 *   2 per session       its upstream connection and one attached client
 *                       (further clients of a session come out of the spare)
 *   2 per [listen] line a HOST that resolves to IPv4 and IPv6 (or is empty)
 *                       binds two sockets, and every worker holds them all
 *   4 per session of    with [supervisor] custody: the supervisor holds one
 *   a chunk             fd per socket of every worker (the 2 per session
 *   (chunk_sessions,    above, in its own process), and while a migration
 *   at most nsessions)  or a crash restore runs, the sockets of up to two
 *                       chunks twice (the source's and the target's
 *                       registrations, until the chunk commits). The
 *                       supervisor runs under the same limit as its
 *                       workers, and it holds the custody of all of them:
 *                       with custody on, this bounds the sessions of the
 *                       whole host, ~9,450 under 20,000 fds at the defaults
 *                       (README "Custody")
 *   CONFIG_FDS_SPARE    the control socket, the migration channel and the
 *                       canary's peer link, the reserve fd kept for EMFILE,
 *                       the journal stream, pidfds, TLS files being read and
 *                       fds in flight in a migration message
 */
#define CONFIG_FDS_SPARE 64
unsigned long config_fds_needed(const struct baton_config *cfg);
/* The one wording of config_fds_needed()'s terms and of what to do about
 * a limit below it, for every message that reports one (`--check`, the
 * startup preflight, reload, an upgrade's refusal): "(2 per session, ...);
 * raise LimitNOFILE= or ulimit -n" and, with custody on, what it costs and
 * what `custody = no` would need instead. Writes into buf (always
 * NUL-terminated); returns buf. */
const char *config_fds_advice(const struct baton_config *cfg, char *buf,
			      size_t len);

/* Resolve `path` against the config folder; returns a malloc'd string. */
char *config_resolve(const struct baton_config *cfg, const char *path);

#endif
