/* common/config_keys.c: every config key, once (see config_keys.h). The
 * docs columns are docs/config.md's: after editing them, run
 * scripts/gen-config-doc (the unit test config_doc fails until then). */
#include "common/config_keys.h"
#include "common/config.h"

#include <stddef.h>

#define G(f) offsetof(struct baton_config, f)
#define N(f) offsetof(struct config_network, f)

/* CONFIG_ENUM fields are read and written as int (defaults, config_diff). */
_Static_assert(sizeof(enum config_user_networks) == sizeof(int) &&
	       sizeof(enum config_store) == sizeof(int) &&
	       sizeof(enum config_member_lists) == sizeof(int),
	       "CONFIG_ENUM fields must be int-sized");
#define U(f) offsetof(struct config_user, f)
#define S(f) offsetof(struct config_session, f)

const struct config_key config_keys[] = {
	/* ---- [supervisor] ---- */
	{ CONFIG_SUPERVISOR, "control", CONFIG_STRING,
	  .offset = G(control),
	  .def_str = "baton.sock",
	  .doc = "path of the control socket used by `batonctl` (mode 0600; only the"
		 " same uid or root may connect)" },
	{ CONFIG_SUPERVISOR, "sessiond", CONFIG_STRING,
	  .offset = G(sessiond),
	  .doc_default = "`baton-sessiond` beside the supervisor binary",
	  .doc = "worker binary started at boot and after a crash" },
	{ CONFIG_SUPERVISOR, "state_dir", CONFIG_STRING,
	  .offset = G(state_dir),
	  .def_str = "state",
	  .doc = "folder for worker state (created 0700) and the installed releases "
		 "(`releases/<version>/`, history in `releases.json`; see "
		 "`[canary]`)" },
	{ CONFIG_SUPERVISOR, "handoff_timeout", CONFIG_INT,
	  .offset = G(handoff_timeout_s),
	  .def = 10, .min = 1, .max = 3600,
	  .doc = "seconds: how long the supervisor waits for a new worker's READY, "
		 "and the bound on every step of a migration (sending a chunk, "
		 "waiting for PREPARED)" },
	{ CONFIG_SUPERVISOR, "custody", CONFIG_BOOL,
	  .offset = G(custody),
	  /* off: at 200 sessions it costs ~2 % of the worker's CPU, but at
	   * 5,000 sessions with traffic its per-session records saturated the
	   * worker and upgrades timed out (README "Custody", "What custody
	   * costs"): on by default once records are incremental */
	  .def = 0,
	  .doc = "the supervisor holds a duplicate of every live socket and a "
		 "checkpoint of every session, so that a worker crash is an "
		 "adoption by a new worker instead of a disconnect (docs/design.md"
		 " §1, \"Custody\"). The supervisor then holds one more fd per "
		 "socket, plus 4 per session of a migration chunk: `--check` says "
		 "whether the fd limit fits; `no` makes a crash disconnect everyone"
		 " (README \"Custody\")" },
	{ CONFIG_SUPERVISOR, "custody_checkpoint_ms", CONFIG_INT,
	  .offset = G(custody_checkpoint_ms),
	  .def = 1000, .min = 10, .max = 60000,
	  .doc = "with `custody`: a session with I/O gets a new checkpoint record "
		 "at most this often (ms). Lines a worker handled after its "
		 "session's last record are lost in a crash (counted in "
		 "`crashes[].lines_lost`), never duplicated. Each record serializes"
		 " the whole session (with `[sessiond] store` on, the backlog's "
		 "committed lines as a store position; with it off, every backlog "
		 "line): a shorter interval costs CPU and relay latency (README "
		 "\"Custody\")" },
	{ CONFIG_SUPERVISOR, "custody_crashes", CONFIG_INT,
	  .offset = G(custody_crashes),
	  .def = 2, .min = 1, .max = 100,
	  .doc = "with `custody`: a session whose input was being handled in this "
		 "many worker crashes is quarantined: restored with its network "
		 "connection closed and never reconnected, its user told why (now "
		 "and at each login), the operator in the log and status "
		 "`custody.quarantined`" },
	{ CONFIG_SUPERVISOR, "worker_watchdog_ms", CONFIG_INT,
	  .offset = G(worker_watchdog_ms),
	  .def = 0, .min = 0, .max = 600000,
	  .doc = "ms (0: off): the serving worker not answering a status request "
		 "this long (a wedged loop) is killed with SIGKILL and restarted like"
		 " any crash; with `custody` its sockets are already held and the "
		 "next worker adopts them (status `crashes[].watchdog`)" },
	{ CONFIG_SUPERVISOR, "metrics", CONFIG_HOSTPORT,
	  .offset = G(metrics),
	  .doc_default = "off",
	  .doc = "`HOST:PORT` for Prometheus metrics over HTTP" },
	{ CONFIG_SUPERVISOR, "user_networks", CONFIG_ENUM,
	  .offset = G(user_networks), .def = CONFIG_USER_NETWORKS_CHANGE,
	  .parse = config_parse_user_networks,
	  .doc_default = "`change`",
	  .doc = "what users may do to their own sessions from their client "
		 "(`/msg *baton help`, `soju.im/bouncer-networks`): `list` shows "
		 "their sessions and their state; `change` also sets `nick`, "
		 "`username`, `realname` and `channels` of a session; `add` also "
		 "adds and deletes sessions on the `[network]`s of this file. An "
		 "edit goes through the supervisor like `batonctl network "
		 "add|set|del` (the file edited in place, then reloaded; refused "
		 "while the file holds changes not loaded yet, which that reload "
		 "would make live); the supervisor checks this key in the file as "
		 "it is at each edit" },

	/* ---- [sessiond] ---- */
	{ CONFIG_SESSIOND, "backlog_lines", CONFIG_INT,
	  .offset = G(backlog_lines),
	  .def = 500, .min = 1, .max = 1000000,
	  .doc = "lines kept per buffer (channel or private query) for replay to "
		 "clients that were away; beyond, the buffer's oldest line goes" },
	{ CONFIG_SESSIOND, "backlog_cache_lines", CONFIG_INT,
	  .offset = G(backlog_cache_lines),
	  .def = 50, .min = 1, .max = 1000000,
	  .doc = "with a message store (`store`), lines of each buffer kept in "
		 "memory (at most `backlog_lines`); older ones are only in the "
		 "store, read back when a client needs them: a client name that "
		 "attached before gets every line after its position, a new client"
		 " name the lines in memory (as ZNC's default 50), CHATHISTORY "
		 "clients ask for more. Bounds the worker's memory per session "
		 "whatever the traffic. Without a store, and for sessions a "
		 "worker holds while its store cannot be opened, `backlog_lines` "
		 "applies" },
	{ CONFIG_SESSIOND, "backlog_buffer_bytes", CONFIG_INT,
	  .offset = G(backlog_buffer_bytes),
	  .def = 256 << 10, .min = 1024, .max = 64 << 20,
	  .doc = "bytes of text kept per buffer (256 KiB: 500 lines of 512 bytes); "
		 "beyond, the buffer's oldest lines go" },
	{ CONFIG_SESSIOND, "backlog_buffers", CONFIG_INT,
	  .offset = G(backlog_buffers),
	  .def = 100, .min = 1, .max = 10000,
	  .doc = "buffers (channels and private queries) per session. Every stranger"
		 " who sends a private message makes one; beyond, the buffer whose "
		 "last line is oldest is dropped whole, a private query before any "
		 "channel" },
	{ CONFIG_SESSIOND, "backlog_session_lines", CONFIG_INT,
	  .offset = G(backlog_session_lines),
	  .def = 20000, .min = 1, .max = 1000000,
	  .doc = "lines kept in all buffers of a session together; beyond, the "
		 "buffer holding the most lines loses its oldest line (so a flood "
		 "into some buffers does not push out the history of quiet ones)" },
	{ CONFIG_SESSIOND, "backlog_session_bytes", CONFIG_INT,
	  .offset = G(backlog_session_bytes),
	  .def = 4 << 20, .min = 64 << 10, .max = 64 << 20,
	  .doc = "bytes kept in all buffers of a session together (the text of every"
		 " line plus every buffer's name; 4 MiB); beyond, the buffer holding"
		 " the most bytes loses its oldest line" },
	/* 252 clients + the upstream: 253 fds, what one message can carry */
	{ CONFIG_SESSIOND, "max_clients_per_session", CONFIG_INT,
	  .offset = G(max_clients_per_session),
	  .def = 16, .min = 1, .max = 252,
	  .doc = "clients attached to one session at once (1-252: one session's "
		 "sockets travel in one migration message of at most 253 fds); one "
		 "more gets `ERROR :Closing link: too many clients on this session` "
		 "and is closed" },
	{ CONFIG_SESSIOND, "max_channels", CONFIG_INT,
	  .offset = G(max_channels),
	  .def = 250, .min = 1, .max = 10000,
	  .doc = "channels whose state (topic, modes, members) a session keeps; when"
		 " a JOIN would pass it the channel is not tracked: its messages are"
		 " still relayed and kept in the backlog, clients attaching later do"
		 " not see it joined, and attached clients get a notice" },
	{ CONFIG_SESSIOND, "max_channel_members", CONFIG_INT,
	  .offset = G(max_channel_members),
	  .def = 50000, .min = 1, .max = 10000000,
	  .doc = "members kept per channel; when a channel passes it its member list"
		 " is dropped (the channel is kept; clients attaching later get an "
		 "empty NAMES for it, `/NAMES` asks the network) until our next JOIN"
		 " of it" },
	{ CONFIG_SESSIOND, "member_list_bytes", CONFIG_INT,
	  .offset = G(member_list_bytes),
	  .def = 2 << 20, .min = 64 << 10, .max = 64 << 20,
	  .doc = "bytes of the member lists of all channels of a session together "
		 "(each member counts as its nick + 24); the channel whose new "
		 "member would pass it has its member list dropped as above" },
	{ CONFIG_SESSIOND, "chunk_sessions", CONFIG_INT,
	  .offset = G(chunk_sessions),
	  .def = 256, .min = 1, .max = 100000,
	  .doc = "sessions per migration chunk; each chunk is its own transaction, "
		 "so no session is frozen for longer than one chunk takes" },
	{ CONFIG_SESSIOND, "chunk_bytes", CONFIG_INT,
	  .offset = G(chunk_bytes),
	  .def = 1 << 20, .min = 4096, .max = 256 << 20,
	  .doc = "a chunk closes early once its serialized state reaches this many "
		 "bytes, so sessions with big channels or long backlogs do not "
		 "stretch everyone's freeze (measured: about 25-30 ms per MiB on the"
		 " development machines)" },
	{ CONFIG_SESSIOND, "ping_interval", CONFIG_INT,
	  .offset = G(ping_interval_s),
	  .def = 60, .min = 1, .max = 86400,
	  .doc = "seconds between keepalive PINGs to the IRC server (lag is measured"
		 " from their PONGs)" },
	{ CONFIG_SESSIOND, "ping_timeout", CONFIG_INT,
	  .offset = G(ping_timeout_s),
	  .def = 240, .min = 2, .max = 86400,
	  .doc = "seconds without any data from the IRC server before the connection"
		 " is dropped and re-established" },
	{ CONFIG_SESSIOND, "reconnect_min", CONFIG_INT,
	  .offset = G(reconnect_min_s),
	  .def = 2, .min = 1, .max = 86400,
	  .doc = "seconds: first reconnect delay after losing a network; doubles per"
		 " failure, with ±20% jitter" },
	{ CONFIG_SESSIOND, "reconnect_max", CONFIG_INT,
	  .offset = G(reconnect_max_s),
	  .def = 300, .min = 1, .max = 86400,
	  .doc = "seconds: cap of the reconnect delay" },
	{ CONFIG_SESSIOND, "auth_threads", CONFIG_INT,
	  .offset = G(auth_threads),
	  .def = 1, .min = 1, .max = 64,
	  .doc = "threads that check login passwords (crypt(3), milliseconds of CPU "
		 "each by design) off the event loop, so a stream of logins or "
		 "guesses does not delay relaying. The client's further lines wait "
		 "until its check is done. A client frozen for a migration while its"
		 " check runs is checked again where it is armed next (the old "
		 "worker's result is dropped)" },
	{ CONFIG_SESSIOND, "auth_queue", CONFIG_INT,
	  .offset = G(auth_queue),
	  .def = 4096, .min = 1, .max = 1000000,
	  .doc = "password checks queued or running at once; a login beyond is "
		 "answered `ERROR :Closing link: server busy, try again later` (each"
		 " unregistered connection has at most one check, so with the "
		 "default `max_pending` this is not reached)" },
	/* ---- [sessiond] the message store (store/store.h, sessiond/history.h) ---- */
	{ CONFIG_SESSIOND, "store", CONFIG_ENUM,
	  .offset = G(store_backend), .def = CONFIG_STORE_SQLITE,
	  .parse = config_parse_store,
	  .table = "store",
	  .doc_default = "`sqlite`",
	  .doc = "the message store: `sqlite` (one database file, `store_path`), "
		 "`postgres` (`store_url`; several hosts may share it) or `off` "
		 "(history only in memory, lost with the worker). Every line kept in"
		 " a backlog is also stored, with its msgid; client positions go there"
		 " too, so a reattach after a crash or a restart replays exactly what"
		 " the client missed. Read at a worker's start (an upgrade applies a "
		 "change)" },
	{ CONFIG_SESSIOND, "store_path", CONFIG_STRING,
	  .offset = G(store_path),
	  .def_str = "messages.db",
	  .table = "store",
	  .doc = "SQLite database file (WAL beside it), relative to `state_dir` "
		 "unless absolute" },
	{ CONFIG_SESSIOND, "store_url", CONFIG_STRING,
	  .offset = G(store_url),
	  .table = "store",
	  .doc_default = "required with `postgres`",
	  .doc = "libpq connection string or URI of the PostgreSQL database "
		 "(`postgresql://baton@db/baton`); the tables are created (prefix "
		 "`baton_`)" },
	{ CONFIG_SESSIOND, "store_queue_ops", CONFIG_INT,
	  .offset = G(store_queue_ops),
	  .def = 65536, .min = 1, .max = 16 << 20,
	  .table = "store",
	  .doc = "operations (lines, positions, read markers) queued for the store's"
		 " writer at most; when it is full, sessions whose lines cannot be "
		 "queued stop reading from their network until it drained to half "
		 "(never a dropped line)" },
	{ CONFIG_SESSIOND, "store_queue_bytes", CONFIG_INT,
	  .offset = G(store_queue_bytes),
	  .def = 32 << 20, .min = 1024, .max = 1 << 30,
	  .table = "store",
	  .doc = "bytes queued for the store's writer at most (same behaviour when "
		 "full)" },
	{ CONFIG_SESSIOND, "store_commit_ms", CONFIG_INT,
	  .offset = G(store_commit_ms),
	  .def = 10, .min = 0, .max = 1000,
	  .table = "store",
	  .doc = "group commit: the store's writer gathers lines for up to this "
		 "many ms before a commit (fewer, bigger commits: less CPU per line;"
		 " lines become durable that much later; relaying does not wait for"
		 " it). 0: commit as soon as a line is queued" },
	{ CONFIG_SESSIOND, "store_max_age_days", CONFIG_INT,
	  .offset = G(store_max_age_days),
	  .def = 365, .min = 0, .max = 36500,
	  .table = "store",
	  .doc = "stored lines older than this many days are deleted (0: kept "
		 "forever); a network's `store_max_age_days` overrides it. The "
		 "default keeps a year: what clients search back through, with the "
		 "store's size bounded for thousands of users together with "
		 "`store_max_mb`" },
	{ CONFIG_SESSIOND, "store_max_mb", CONFIG_INT,
	  .offset = G(store_max_mb),
	  .def = 64, .min = 0, .max = 1 << 20,
	  .table = "store",
	  .doc = "MiB of stored line text per session at most, the oldest lines "
		 "deleted beyond (0: no bound); a network's `store_max_mb` overrides "
		 "it. The default bounds the store at 64 MiB per session (plus "
		 "indexes): 64 GiB for 1000 sessions at worst; a session in busy "
		 "channels reaches it before a year" },
	{ CONFIG_SESSIOND, "handshake_budget_ms", CONFIG_INT,
	  .offset = G(handshake_budget_ms),
	  .def = 500, .min = 0, .max = 60000,
	  .doc = "TLS handshakes still running when a migration starts get this long"
		 " to finish (they cannot migrate half-done: OpenSSL's state is not "
		 "exportable); those that do not stay behind, are closed with the "
		 "old worker and are counted in the result (`handshakes_left`); the "
		 "client or the reconnect governor tries again" },

	/* ---- [listen] ---- */
	{ CONFIG_LISTEN, "irc", CONFIG_CUSTOM,
	  .parse = config_parse_listener,
	  .doc_key = "irc = HOST:PORT",
	  .doc = "a plaintext listener for IRC clients; repeatable; IPv6 as "
		 "`[::1]:6667`. Bound by the supervisor, which keeps it open across "
		 "upgrades and worker crashes" },
	{ CONFIG_LISTEN, "ircs", CONFIG_CUSTOM,
	  .parse = config_parse_listener,
	  .doc_key = "ircs = HOST:PORT",
	  .doc = "a TLS listener for IRC clients; repeatable (all use the "
		 "certificate below)" },
	{ CONFIG_LISTEN, "tls_cert", CONFIG_PATH,
	  .offset = G(listen_tls_cert),
	  .line_offset = G(listen_tls_cert_line),
	  .doc_key = "tls_cert = FILE",
	  .doc = "PEM certificate chain of the `ircs` listeners (required with one)."
		 " The worker notices when the file changes (checked at most once a "
		 "second, on the next client handshake) and uses the new certificate"
		 " for new connections; connected clients keep their session keys "
		 "and are never dropped. An upgrade also picks it up" },
	{ CONFIG_LISTEN, "tls_key", CONFIG_PATH,
	  .offset = G(listen_tls_key),
	  .line_offset = G(listen_tls_key_line),
	  .doc_key = "tls_key = FILE",
	  .doc = "PEM private key; default: the key is in `tls_cert`" },
	{ CONFIG_LISTEN, "max_pending", CONFIG_INT,
	  .offset = G(max_pending),
	  .def = 4096, .min = 0, .max = 1000000,
	  .table = "listen limits",
	  .doc = "unregistered connections (connected, not logged in, TLS handshakes"
		 " included) in all; `0`: no limit. Beyond: \"too many unregistered "
		 "connections\"" },
	{ CONFIG_LISTEN, "max_pending_per_ip", CONFIG_INT,
	  .offset = G(max_pending_per_ip),
	  .def = 16, .min = 0, .max = 1000000,
	  .table = "listen limits",
	  .doc = "... from one address; `0`: no limit. Beyond: \"too many "
		 "unregistered connections from your address\"" },
	{ CONFIG_LISTEN, "max_tls_handshakes", CONFIG_INT,
	  .offset = G(max_tls_handshakes),
	  .def = 1024, .min = 0, .max = 1000000,
	  .table = "listen limits",
	  .doc = "`ircs` TLS handshakes in progress at once (each holds an OpenSSL "
		 "object and costs a signature); `0`: no limit. Beyond, new `ircs` "
		 "connections are closed at once" },
	{ CONFIG_LISTEN, "max_tls_handshakes_per_ip", CONFIG_INT,
	  .offset = G(max_tls_handshakes_per_ip),
	  .def = 32, .min = 0, .max = 1000000,
	  .table = "listen limits",
	  .doc = "... from one address, so that one source cannot hold every "
		 "handshake slot; `0`: no limit" },
	{ CONFIG_LISTEN, "tls_handshake_timeout", CONFIG_INT,
	  .offset = G(tls_handshake_timeout_s),
	  .def = 10, .min = 1, .max = 3600,
	  .table = "listen limits",
	  .doc = "seconds an `ircs` handshake may take; then the connection is "
		 "closed and its slot is free again (1-3600)" },
	{ CONFIG_LISTEN, "prelogin_max_lines", CONFIG_INT,
	  .offset = G(prelogin_max_lines),
	  .def = 64, .min = 0, .max = 1000000,
	  .table = "listen limits",
	  .doc = "lines a connection may send before it logs in (a login takes about"
		 " 6); `0`: no limit. The next one closes it: \"too many lines "
		 "before login\". Lines sent after `USER` while the password is "
		 "checked are not counted: they are handled after the login" },
	{ CONFIG_LISTEN, "prelogin_max_bytes", CONFIG_INT,
	  .offset = G(prelogin_max_bytes),
	  .def = 16384, .min = 0, .max = 1 << 30,
	  .table = "listen limits",
	  .doc = "bytes of those lines (with their CRLF); `0`: no limit. Beyond: "
		 "\"too much data before login\"" },
	{ CONFIG_LISTEN, "prelogin_rate", CONFIG_INT,
	  .offset = G(prelogin_rate),
	  .def = 5, .min = 0, .max = 1000000,
	  .table = "listen limits",
	  .doc = "commands per second before login (token bucket, refilled at this "
		 "rate); `0`: no limit. A command when the bucket is empty closes "
		 "the connection: \"too many commands before login\"" },
	{ CONFIG_LISTEN, "prelogin_burst", CONFIG_INT,
	  .offset = G(prelogin_burst),
	  .def = 20, .min = 1, .max = 1000000,
	  .table = "listen limits",
	  .doc = "size of that bucket: commands that may come at once (1 or more)" },
	{ CONFIG_LISTEN, "prelogin_sendq", CONFIG_INT,
	  .offset = G(prelogin_sendq),
	  .def = 16384, .min = 0, .max = 4 << 20,
	  .table = "listen limits",
	  .doc = "bytes of output queued to a connection before it logs in (answers "
		 "it does not read); `0`: the normal bound (4 MiB). Beyond, it is "
		 "closed (\"sendq exceeded\")" },
	{ CONFIG_LISTEN, "login_failures_free", CONFIG_INT,
	  .offset = G(login_failures_free),
	  .def = 5, .min = 0, .max = 1000000,
	  .table = "listen limits",
	  .doc = "failed logins per address and per user name before the throttle "
		 "starts. Each further failure blocks that address and that user "
		 "name for 1 s, 2 s, 4 s, ... up to `login_throttle_max`; meanwhile "
		 "a login from that address or for that name is answered `ERROR :Too"
		 " many failed logins, try again in N s` without checking the "
		 "password. Password checks still running count too: an address or "
		 "name whose failures plus checks running reach "
		 "`login_failures_free` takes no further check until those end (the "
		 "login waits, then goes on or is refused), and once its failures "
		 "alone reach it, an attempt counts as a failure from the moment its"
		 " check starts (refunded if the password was right). So attempts in"
		 " parallel get no more checks than attempts in a row, and right "
		 "logins in parallel from one address (a NAT, a proxy) are never "
		 "charged (some wait for the others' checks). A login dropped by a "
		 "migration has what it was charged refunded (it is checked again "
		 "where it continues). A success forgets the user name's failures "
		 "(not the address's). User names that are not configured are "
		 "throttled the same way (the answers do not tell which names "
		 "exist); those longer than 64 bytes all count as one name. Note "
		 "that anyone can thereby delay a real user's logins by up to "
		 "`login_throttle_max`" },
	{ CONFIG_LISTEN, "login_throttle_max", CONFIG_INT,
	  .offset = G(login_throttle_max_s),
	  .def = 300, .min = 1, .max = 86400,
	  .table = "listen limits",
	  .doc = "seconds: the longest block. A key is forgotten 2 × this long after"
		 " its last failure (or check started)" },
	{ CONFIG_LISTEN, "login_throttle_entries", CONFIG_INT,
	  .offset = G(login_throttle_entries),
	  .def = 16384, .min = 16, .max = 10000000,
	  .table = "listen limits",
	  .doc = "addresses (and, separately, unconfigured user names) tracked at "
		 "most, each entry of bounded size (a key keeps at most 64 bytes); a"
		 " new one beyond evicts the one whose last failure or check is "
		 "oldest, so a flood of addresses or names cannot grow memory. "
		 "Configured users always have their entry" },

	/* ---- [network NAME] ---- */
	{ CONFIG_NETWORK, "host", CONFIG_STRING,
	  .offset = N(host),
	  .doc_default = "required",
	  .doc = "IRC server address or name (also the TLS server name: SNI and "
		 "certificate check)" },
	{ CONFIG_NETWORK, "port", CONFIG_PORT,
	  .offset = N(port),
	  .doc_default = "`6667`, `6697` with TLS",
	  .doc = "IRC server port" },
	{ CONFIG_NETWORK, "tls", CONFIG_BOOL,
	  .offset = N(tls),
	  .def = 0,
	  .doc = "connect with TLS (1.2 or 1.3; AES-GCM or ChaCha20-Poly1305). TLS "
		 "connections survive upgrades like plaintext ones" },
	{ CONFIG_NETWORK, "tls_verify", CONFIG_BOOL,
	  .offset = N(tls_verify),
	  .def = 1,
	  .doc = "verify the server's certificate chain against the CA store and its"
		 " name against `host`. `no` accepts any certificate (a man in the "
		 "middle would go unnoticed) and logs a warning at every start and "
		 "connect; prefer `tls_fingerprint` for self-signed servers" },
	{ CONFIG_NETWORK, "tls_ca", CONFIG_PATH,
	  .offset = N(tls_ca),
	  .line_offset = N(tls_ca_line),
	  .doc_default = "system CA store",
	  .doc = "PEM file of CA certificates to trust instead of the system store. "
		 "Read when a worker first connects to this network (an upgrade "
		 "re-reads it; unlike the ircs certificate it is not watched for "
		 "changes)" },
	{ CONFIG_NETWORK, "tls_fingerprint", CONFIG_CUSTOM,
	  .offset = N(tls_fingerprint),
	  .parse = config_parse_fingerprint,
	  .doc_default = "none",
	  .doc = "`sha256:HEX` (colons allowed, any case) of the server's "
		 "certificate: with a pin the certificate must match it, and the "
		 "chain need not verify. Get it with `openssl x509 -noout "
		 "-fingerprint -sha256 -in cert.pem`" },
	{ CONFIG_NETWORK, "connects_per_minute", CONFIG_INT,
	  .offset = N(connects_per_minute),
	  .def = 4, .min = 1, .max = 6000,
	  .doc = "reconnect governor: connection attempts per minute per source "
		 "address (token bucket refill). Solanum's default throttle is 4 per"
		 " 60 s" },
	{ CONFIG_NETWORK, "connect_burst", CONFIG_INT,
	  .offset = N(connect_burst),
	  .def = 4, .min = 1, .max = 10000,
	  .doc = "reconnect governor: bucket size (attempts that may go out at once "
		 "after a quiet period)" },
	{ CONFIG_NETWORK, "max_connections_per_ip", CONFIG_INT,
	  .offset = N(max_connections_per_ip),
	  .def = 3, .min = 1, .max = 100000,
	  .doc = "reconnect governor: concurrent connections per source address "
		 "(Solanum 3, InspIRCd 3, ngIRCd 5). Sessions beyond that wait for a"
		 " free slot" },
	{ CONFIG_NETWORK, "bind", CONFIG_CUSTOM,
	  .offset = N(bind),
	  .parse = config_parse_bind,
	  .doc_default = "none (the kernel chooses)",
	  .doc = "source address pool for this network's upstream connections: "
		 "IPv4/IPv6 addresses separated by spaces; repeated `bind` lines add"
		 " to the pool. Each address has its own connect bucket and "
		 "`max_connections_per_ip` cap. A session reconnects from the "
		 "address it used last when that address can take it, otherwise from"
		 " the one with the fewest connections. When every address is full, "
		 "sessions wait and the log says \"N sessions waiting for a "
		 "connection slot\"" },
	{ CONFIG_NETWORK, "store_max_age_days", CONFIG_INT,
	  .offset = N(store_max_age_days),
	  .def = -1, .min = -1, .max = 36500,
	  .doc_default = "`[sessiond]`'s",
	  .doc = "days the message store keeps this network's lines (0: forever; "
		 "-1: `[sessiond] store_max_age_days`)" },
	{ CONFIG_NETWORK, "store_max_mb", CONFIG_INT,
	  .offset = N(store_max_mb),
	  .def = -1, .min = -1, .max = 1 << 20,
	  .doc_default = "`[sessiond]`'s",
	  .doc = "MiB of stored line text per session of this network (0: no "
		 "bound; -1: `[sessiond] store_max_mb`)" },
	{ CONFIG_NETWORK, "member_lists", CONFIG_ENUM,
	  .offset = N(member_lists), .def = CONFIG_MEMBERS_AUTO,
	  .parse = config_parse_member_lists,
	  .doc_default = "`auto`",
	  .doc = "channel member lists: `shared` keeps one list per channel for "
		 "all sessions of this network (memory and migration time paid "
		 "once); `private` one per session; `auto` shares unless the network "
		 "can show members differently to different users: its CHANMODES "
		 "(ISUPPORT) has `D` or `d` (delayed join: InspIRCd, UnrealIRCd), or "
		 "it is InspIRCd and has `u` (auditorium). Use `private` where "
		 "sessions of this network see other differences (an IRC operator "
		 "whose privileges show hidden members)" },

	/* ---- [user NAME] ---- */
	{ CONFIG_USER, "password", CONFIG_STRING,
	  .offset = U(password),
	  .line_offset = U(password_line),
	  .doc_default = "required",
	  .doc = "a crypt(3) hash (anything libxcrypt accepts: `$6$`, `$y$`, ...), "
		 "e.g. from `openssl passwd -6` or `mkpasswd`. Plain passwords are "
		 "refused; `--check` also reports a hash no password can match "
		 "(checksum of the wrong length, unknown method) and warns about "
		 "legacy methods (`$1$`, ...)" },

	/* ---- [user NAME/NETWORK] ---- */
	{ CONFIG_SESSION, "nick", CONFIG_STRING,
	  .offset = S(nick),
	  .doc_default = "the user name",
	  .doc = "nick on the network (an alternate with `_` appended is tried on "
		 "433)" },
	{ CONFIG_SESSION, "username", CONFIG_STRING,
	  .offset = S(username),
	  .doc_default = "the nick",
	  .doc = "USER name" },
	{ CONFIG_SESSION, "realname", CONFIG_STRING,
	  .offset = S(realname),
	  .doc_default = "the nick",
	  .doc = "real name" },
	{ CONFIG_SESSION, "channels", CONFIG_CUSTOM,
	  .offset = S(channels),
	  .parse = config_parse_channels,
	  .doc_default = "none",
	  .doc = "channels to join, separated by spaces" },
	{ CONFIG_SESSION, "tls_cert", CONFIG_PATH,
	  .offset = S(tls_cert),
	  .line_offset = S(tls_cert_line),
	  .doc_default = "none",
	  .doc = "PEM client certificate presented to a TLS network (CertFP: "
		 "networks that identify you by its fingerprint)" },
	{ CONFIG_SESSION, "tls_key", CONFIG_PATH,
	  .offset = S(tls_key),
	  .line_offset = S(tls_key_line),
	  .doc_default = "in `tls_cert`",
	  .doc = "its PEM private key" },
	{ CONFIG_SESSION, "sasl", CONFIG_CUSTOM,
	  .offset = S(sasl),
	  .line_offset = S(sasl_line),
	  .parse = config_parse_sasl,
	  .doc_default = "none",
	  .doc = "SASL mechanism to authenticate to the network with during "
		 "registration: `plain`, `external` (the `tls_cert` client "
		 "certificate; needs `tls = yes` on the network) or `scram-sha-256` "
		 "(the password never crosses the wire and the server must prove it"
		 " knows it). Without success (rejected credentials, mechanism or "
		 "SASL not offered) the session does not register at all: it "
		 "disconnects, logs the reason, shows it in `batonctl status` and to"
		 " its clients, and tries again once per `reconnect_max`" },
	{ CONFIG_SESSION, "sasl_username", CONFIG_STRING,
	  .offset = S(sasl_username),
	  .line_offset = S(sasl_username_line),
	  .doc_default = "the nick; `external`: none",
	  .doc = "account name (at most 255 bytes); with `external` the "
		 "authorization identity, usually left unset" },
	{ CONFIG_SESSION, "sasl_password", CONFIG_STRING,
	  .offset = S(sasl_password),
	  .line_offset = S(sasl_password_line),
	  .doc_default = "none",
	  .doc = "account password in clear (a config line holds at most 198 "
		 "characters: longer ones go in the file), for `plain` and "
		 "`scram-sha-256`. Prefer `sasl_password_file` so the config file "
		 "can stay readable by others" },
	{ CONFIG_SESSION, "sasl_password_file", CONFIG_PATH,
	  .offset = S(sasl_password_file),
	  .line_offset = S(sasl_password_file_line),
	  .doc_default = "none",
	  .doc = "file whose first line is the password (instead of "
		 "`sasl_password`; read by every worker at start, so an upgrade "
		 "applies a new password; at most 255 bytes, trailing CR/LF "
		 "removed). `--check` reports an unreadable or empty file" },

	/* ---- [canary] ---- */
	{ CONFIG_CANARY, "bake", CONFIG_INT,
	  .offset = G(canary_bake_s),
	  .def = 300, .min = 0, .max = 7 * 86400,
	  .doc = "seconds (0-604800) each step of `batonctl upgrade BIN --canary P` "
		 "bakes under the gates when `--bake` is not given" },
	{ CONFIG_CANARY, "sample_ms", CONFIG_INT,
	  .offset = G(canary_sample_ms),
	  .def = 1000, .min = 100, .max = 60000,
	  .doc = "how often both workers are sampled (100-60000 ms)" },
	{ CONFIG_CANARY, "min_lines", CONFIG_INT,
	  .offset = G(canary_min_lines),
	  .def = 500, .min = 1, .max = 100000000,
	  .doc = "lines each group relayed since the last move before a statistical "
		 "gate may judge" },
	{ CONFIG_CANARY, "trip_samples", CONFIG_INT,
	  .offset = G(canary_trip_samples),
	  .def = 3, .min = 1, .max = 1000,
	  .doc = "failing samples in a row that trip a statistical gate or `delivery`" },
	{ CONFIG_CANARY, "watchdog_ms", CONFIG_INT,
	  .offset = G(canary_watchdog_ms),
	  .def = 5000, .min = 100, .max = 600000,
	  .doc = "the new worker not answering a sample this long trips `watchdog`" },
	{ CONFIG_CANARY, "adopt_ping_timeout", CONFIG_INT,
	  .offset = G(canary_adopt_ping_timeout_s),
	  .def = 10, .min = 1, .max = 3600,
	  .doc = "seconds: a PING sent to the network right after a session was "
		 "adopted must be answered within this (`adopt_ping`, hard)" },
	{ CONFIG_CANARY, "ping_answer_timeout", CONFIG_INT,
	  .offset = G(canary_ping_answer_timeout_s),
	  .def = 5, .min = 1, .max = 3600,
	  .doc = "seconds: a network PING not answered within this trips "
		 "`ping_unanswered` (hard)" },
	{ CONFIG_CANARY, "delivery_lines", CONFIG_INT,
	  .offset = G(canary_delivery_lines),
	  .def = 4, .min = 0, .max = 1000000,
	  .doc = "differential delivery: lines the cohort's users may have got more "
		 "or fewer than the control's (summed over channels) ..." },
	{ CONFIG_CANARY, "delivery_permille", CONFIG_INT,
	  .offset = G(canary_delivery_permille),
	  .def = 5, .min = 0, .max = 1000,
	  .doc = "... plus this share (per mille) of the lines compared; lines late "
		 "by up to twice the cohort's relay p99 are never counted as lost" },
	{ CONFIG_CANARY, "latency_p99_ratio_pct", CONFIG_INT,
	  .offset = G(canary_latency_p99_ratio_pct),
	  .def = 300, .min = 100, .max = 100000,
	  .doc = "relay latency p99 of the cohort may be this % of the control's ..." },
	{ CONFIG_CANARY, "latency_p99_margin_ms", CONFIG_INT,
	  .offset = G(canary_latency_p99_margin_ms),
	  .def = 20, .min = 0, .max = 600000,
	  .doc = "... plus this" },
	{ CONFIG_CANARY, "loop_lag_margin_ms", CONFIG_INT,
	  .offset = G(canary_loop_lag_margin_ms),
	  .def = 200, .min = 0, .max = 600000,
	  .doc = "the cohort's event-loop lag may exceed the control's worst by this" },
	{ CONFIG_CANARY, "cpu_ratio_pct", CONFIG_INT,
	  .offset = G(canary_cpu_ratio_pct),
	  .def = 300, .min = 100, .max = 100000,
	  .doc = "CPU per 1,000 network lines, cohort over control (plus 50 ms)" },
	{ CONFIG_CANARY, "rss_growth_kb_per_min", CONFIG_INT,
	  .offset = G(canary_rss_growth_kb_per_min),
	  .def = 512, .min = 0, .max = 100000000,
	  .doc = "RSS growth per session per minute the cohort may have over the "
		 "control's (judged once the cohort's worker grew 8 MiB)" },
	{ CONFIG_CANARY, "error_numerics_per_hour", CONFIG_INT,
	  .offset = G(canary_error_numerics_per_hour),
	  .def = 120, .min = 0, .max = 100000000,
	  .doc = "4xx/5xx numerics from networks per session-hour over the control's"
		 " (judged from 5 errors on)" },
	{ CONFIG_CANARY, "rollback_window", CONFIG_INT,
	  .offset = G(canary_rollback_window_s),
	  .def = 300, .min = 0, .max = 86400,
	  .doc = "seconds (0-86400; 0: off): a worker that crashes this soon after "
		 "an upgrade made its release the serving one is restarted on the "
		 "previous good release instead, and its release is marked `bad` "
		 "(refused by `batonctl upgrade` unless `--force`)" },
	{ CONFIG_CANARY, "releases_kept", CONFIG_INT,
	  .offset = G(canary_releases_kept),
	  .def = 5, .min = 2, .max = 1000,
	  .doc = "releases kept on disk under `state_dir/releases/` (2-1000); the "
		 "oldest go first, never the serving release or the rollback target."
		 " Their history entries stay in `releases.json`" },
};

const size_t config_nkeys = sizeof(config_keys) / sizeof(config_keys[0]);

const char *config_section_name(enum config_section s)
{
	switch (s) {
	case CONFIG_SUPERVISOR: return "supervisor";
	case CONFIG_SESSIOND: return "sessiond";
	case CONFIG_LISTEN: return "listen";
	case CONFIG_CANARY: return "canary";
	case CONFIG_NETWORK: return "network NAME";
	case CONFIG_USER: return "user NAME";
	case CONFIG_SESSION: return "user NAME/NETWORK";
	}
	return "?";
}

const char *config_key_table(const struct config_key *k)
{
	return k->table != NULL ? k->table : config_section_name(k->section);
}
