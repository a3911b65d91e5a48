/* store/pg.c: the PostgreSQL backend (store/backend.h), over libpq. Names
 * and lines are bytea (IRC lines need not be UTF-8, and a server refusing a
 * line would stall the queue), parameters and results binary, statements
 * prepared per connection (again after a reconnect). Tables are prefixed
 * baton_ so the store can share a database; baton_meta says it is ours
 * ('app') and its schema version ('schema'); migrations run under an
 * advisory lock, so several hosts may open the store at once. */
#include "store/backend.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define APP_ID 1650553966 /* "batn", as the SQLite backend */
#define INT8OID 20
#define BYTEAOID 17

static const char *const migrations[] = {
	/* 1 */
	"CREATE TABLE baton_network (id bigserial PRIMARY KEY,"
	" name bytea NOT NULL UNIQUE, lines bigint NOT NULL DEFAULT 0,"
	" bytes bigint NOT NULL DEFAULT 0);"
	"CREATE TABLE baton_target (id bigserial PRIMARY KEY,"
	" network bigint NOT NULL REFERENCES baton_network(id),"
	" name bytea NOT NULL, UNIQUE(network, name));"
	"CREATE TABLE baton_message (seq bigint PRIMARY KEY,"
	" network bigint NOT NULL, target bigint NOT NULL, time bigint NOT NULL,"
	" sender bytea NOT NULL, command bytea NOT NULL, line bytea NOT NULL);"
	"CREATE INDEX baton_message_target_time ON baton_message(target, time, seq);"
	"CREATE INDEX baton_message_network_seq ON baton_message(network, seq);"
	"INSERT INTO baton_meta VALUES ('next_seq', 1);",
	/* 2 */
	"CREATE TABLE baton_position (network bigint NOT NULL, client bytea NOT NULL,"
	" seq bigint NOT NULL, PRIMARY KEY(network, client));"
	"CREATE TABLE baton_read_marker (target bigint PRIMARY KEY,"
	" time bigint NOT NULL);",
};
#define SCHEMA_MAX ((int)(sizeof migrations / sizeof migrations[0]))

enum {
	S_RESERVE, S_NET_INS, S_NET_SEL, S_TGT_INS, S_TGT_SEL, S_INSERT,
	S_ADD_BYTES, S_SET_POS, S_SET_MARK, S_NETWORKS, S_OLDEST, S_DELETE,
	S_FIND_TGT, S_FIND_NET, S_LOOKUP, S_RANGE_ASC, S_RANGE_DESC, S_REPLAY,
	S_TARGETS_ASC, S_TARGETS_DESC, S_GET_POS, S_GET_MARK, S_STATS, S_MARKERS,
	S_COUNT
};

/* Parameter types, one letter each: i int8, b bytea. */
static const struct {
	const char *sql, *types;
} sql[S_COUNT] = {
	[S_RESERVE] = { "UPDATE baton_meta SET value = GREATEST(value, $1) + $2"
			" WHERE key = 'next_seq' RETURNING value - $2", "ii" },
	[S_NET_INS] = { "INSERT INTO baton_network (name) VALUES ($1)"
			" ON CONFLICT DO NOTHING", "b" },
	[S_NET_SEL] = { "SELECT id FROM baton_network WHERE name = $1", "b" },
	[S_TGT_INS] = { "INSERT INTO baton_target (network, name) VALUES ($1, $2)"
			" ON CONFLICT DO NOTHING", "ib" },
	[S_TGT_SEL] = { "SELECT id FROM baton_target WHERE network = $1"
			" AND name = $2", "ib" },
	[S_INSERT] = { "INSERT INTO baton_message VALUES ($1, $2, $3, $4, $5, $6, $7)"
		       " ON CONFLICT DO NOTHING", "iiiibbb" },
	[S_ADD_BYTES] = { "UPDATE baton_network SET lines = lines + $2,"
			  " bytes = bytes + $3 WHERE id = $1", "iii" },
	[S_SET_POS] = { "INSERT INTO baton_position VALUES ($1, $2, $3)"
			" ON CONFLICT (network, client) DO UPDATE"
			" SET seq = GREATEST(baton_position.seq, excluded.seq)", "ibi" },
	[S_SET_MARK] = { "INSERT INTO baton_read_marker VALUES ($1, $2)"
			 " ON CONFLICT (target) DO UPDATE"
			 " SET time = GREATEST(baton_read_marker.time, excluded.time)",
			 "ii" },
	[S_NETWORKS] = { "SELECT id, name, bytes FROM baton_network ORDER BY id", "" },
	[S_OLDEST] = { "SELECT seq, time, octet_length(line)::bigint FROM baton_message"
		       " WHERE network = $1 ORDER BY seq LIMIT $2", "ii" },
	[S_DELETE] = { "DELETE FROM baton_message WHERE network = $1 AND seq <= $2"
		       " RETURNING octet_length(line)::bigint", "ii" },
	[S_FIND_TGT] = { "SELECT t.id FROM baton_target t JOIN baton_network n"
			 " ON n.id = t.network WHERE n.name = $1 AND t.name = $2",
			 "bb" },
	[S_FIND_NET] = { "SELECT id FROM baton_network WHERE name = $1", "b" },
	[S_LOOKUP] = { "SELECT target, time FROM baton_message WHERE seq = $1", "i" },
	[S_RANGE_ASC] = { "SELECT seq, time, sender, command, line FROM baton_message"
			  " WHERE target = $1 AND (time, seq) > ($2, $3)"
			  " AND (time, seq) < ($4, $5) ORDER BY time, seq LIMIT $6",
			  "iiiiii" },
	[S_RANGE_DESC] = { "SELECT seq, time, sender, command, line FROM baton_message"
			   " WHERE target = $1 AND (time, seq) > ($2, $3)"
			   " AND (time, seq) < ($4, $5)"
			   " ORDER BY time DESC, seq DESC LIMIT $6", "iiiiii" },
	[S_REPLAY] = { "SELECT m.seq, m.time, t.name, m.sender, m.command, m.line"
		       " FROM baton_message m JOIN baton_target t ON t.id = m.target"
		       " WHERE m.network = $1 AND m.seq > $2 ORDER BY m.seq LIMIT $3",
		       "iii" },
	[S_TARGETS_ASC] = { "SELECT name, last FROM (SELECT t.name AS name,"
			    " (SELECT max(time) FROM baton_message m WHERE"
			    " m.target = t.id AND m.time > $2 AND m.time < $3) AS last"
			    " FROM baton_target t WHERE t.network = $1) s"
			    " WHERE last IS NOT NULL ORDER BY last, name LIMIT $4",
			    "iiii" },
	[S_TARGETS_DESC] = { "SELECT name, last FROM (SELECT t.name AS name,"
			     " (SELECT max(time) FROM baton_message m WHERE"
			     " m.target = t.id AND m.time > $2 AND m.time < $3) AS last"
			     " FROM baton_target t WHERE t.network = $1) s"
			     " WHERE last IS NOT NULL ORDER BY last DESC, name DESC"
			     " LIMIT $4", "iiii" },
	[S_GET_POS] = { "SELECT p.seq FROM baton_position p JOIN baton_network n"
			" ON n.id = p.network WHERE n.name = $1 AND p.client = $2",
			"bb" },
	[S_GET_MARK] = { "SELECT r.time FROM baton_read_marker r"
			 " JOIN baton_target t ON t.id = r.target"
			 " JOIN baton_network n ON n.id = t.network"
			 " WHERE n.name = $1 AND t.name = $2", "bb" },
	[S_STATS] = { "SELECT coalesce(sum(lines), 0)::bigint,"
		      " coalesce(sum(bytes), 0)::bigint,"
		      " (pg_total_relation_size('baton_message')"
		      " + pg_total_relation_size('baton_target')"
		      " + pg_total_relation_size('baton_network'))::bigint"
		      " FROM baton_network", "" },
	[S_MARKERS] = { "SELECT t.name, r.time FROM baton_read_marker r"
			" JOIN baton_target t ON t.id = r.target"
			" WHERE t.network = $1 ORDER BY t.name", "i" },
};

struct store_db {
	PGconn *c;
	int schema;
	/* Pipeline mode for the writer's statements that return nothing to
	 * wait for (inserts, counters, positions, markers): sent at once,
	 * their results read every PIPE_MAX statements and before anything
	 * that needs an answer (run(), commit), so a batch of n lines costs
	 * n / PIPE_MAX round trips instead of n. */
	bool in_pipe;
	int npipe;
	int lock_timeout_ms;
	char err[256];
};

/* Statements in flight at most: their results (~20 bytes each) stay far
 * below the socket buffers, so sending never waits on a server that waits
 * for us to read. */
#define PIPE_MAX 256

/* A statement's parameters: up to 8, ints stored big-endian in ib[]. */
struct params {
	int n;
	const char *v[8];
	int len[8];
	int fmt[8];
	uint64_t ib[8];
};

static void p_int(struct params *p, int64_t v)
{
	p->ib[p->n] = htobe64((uint64_t)v);
	p->v[p->n] = (const char *)&p->ib[p->n];
	p->len[p->n] = 8;
	p->fmt[p->n] = 1;
	p->n++;
}

static void p_str(struct params *p, const char *s)
{
	p->v[p->n] = s;
	p->len[p->n] = (int)strlen(s);
	p->fmt[p->n] = 1;
	p->n++;
}

static int64_t g_int(const PGresult *res, int row, int col)
{
	uint64_t v;
	memcpy(&v, PQgetvalue(res, row, col), 8);
	return (int64_t)be64toh(v);
}

static const char *g_str(const PGresult *res, int row, int col)
{
	/* libpq follows every value with a NUL, binary ones included; stored
	 * strings contain none. */
	return PQgetvalue(res, row, col);
}

static const char *db_error(struct store_db *db)
{
	return db->err;
}

static void set_err(struct store_db *db, const PGresult *res)
{
	const char *m = res ? PQresultErrorMessage(res) : "";
	if (!m || !m[0])
		m = PQerrorMessage(db->c);
	snprintf(db->err, sizeof db->err, "%s", m);
	size_t l = strlen(db->err);
	while (l && (db->err[l - 1] == '\n' || db->err[l - 1] == ' '))
		db->err[--l] = 0;
}

static int prepare_all(struct store_db *db)
{
	/* Also after a reconnect: session settings went with the old one. */
	char lt[64];
	snprintf(lt, sizeof lt, "SET lock_timeout = %d", db->lock_timeout_ms);
	PGresult *lr = PQexec(db->c, lt);
	if (PQresultStatus(lr) != PGRES_COMMAND_OK) {
		set_err(db, lr);
		PQclear(lr);
		return -EIO;
	}
	PQclear(lr);
	for (int i = 0; i < S_COUNT; i++) {
		Oid types[8];
		int n = (int)strlen(sql[i].types);
		if ((i == S_SET_POS || i == S_SET_MARK || i == S_GET_POS ||
		     i == S_GET_MARK || i == S_MARKERS) && db->schema < 2)
			continue;
		for (int k = 0; k < n; k++)
			types[k] = sql[i].types[k] == 'i' ? INT8OID : BYTEAOID;
		char name[16];
		snprintf(name, sizeof name, "s%d", i);
		PGresult *res = PQprepare(db->c, name, sql[i].sql, n, types);
		if (PQresultStatus(res) != PGRES_COMMAND_OK) {
			set_err(db, res);
			PQclear(res);
			return -EIO;
		}
		PQclear(res);
	}
	return 0;
}

/* Read the results of the statements in the pipeline; the first error
 * wins (later ones are PGRES_PIPELINE_ABORTED). */
static int pipe_flush(struct store_db *db)
{
	if (!db->in_pipe)
		return 0;
	int r = 0, nulls = 0;
	if (!PQpipelineSync(db->c)) {
		set_err(db, NULL);
		r = -EIO;
	}
	while (r == 0 || PQstatus(db->c) == CONNECTION_OK) {
		PGresult *res = PQgetResult(db->c);
		if (!res) {
			/* One NULL ends each statement's results. */
			if (++nulls > db->npipe + 1 || PQstatus(db->c) != CONNECTION_OK) {
				if (r == 0) {
					set_err(db, NULL);
					r = -EIO;
				}
				break;
			}
			continue;
		}
		ExecStatusType st = PQresultStatus(res);
		if (st == PGRES_PIPELINE_SYNC) {
			PQclear(res);
			break;
		}
		if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && r == 0) {
			set_err(db, res);
			r = -EIO;
		}
		PQclear(res);
	}
	db->in_pipe = false;
	db->npipe = 0;
	if (!PQexitPipelineMode(db->c)) {
		/* Results still pending (a broken exchange): start over on a
		 * new connection rather than stay in pipeline mode. The
		 * transaction is gone with the old one; the writer retries. */
		set_err(db, NULL);
		PQreset(db->c);
		if (PQstatus(db->c) == CONNECTION_OK)
			prepare_all(db);
		r = -EIO;
	}
	return r;
}

static int pipe_send(struct store_db *db, int i, struct params *p)
{
	char name[16];
	snprintf(name, sizeof name, "s%d", i);
	if (!db->in_pipe) {
		if (!PQenterPipelineMode(db->c)) {
			set_err(db, NULL);
			return -EIO;
		}
		db->in_pipe = true;
		db->npipe = 0;
	}
	if (!PQsendQueryPrepared(db->c, name, p->n, p->v, p->len, p->fmt, 1)) {
		set_err(db, NULL);
		pipe_flush(db);
		return -EIO;
	}
	if (++db->npipe >= PIPE_MAX)
		return pipe_flush(db);
	return 0;
}

/* Run a prepared statement; binary results. NULL on failure (db->err). */
static PGresult *run(struct store_db *db, int i, struct params *p)
{
	if (pipe_flush(db) < 0)
		return NULL;
	char name[16];
	snprintf(name, sizeof name, "s%d", i);
	bool idle = PQtransactionStatus(db->c) == PQTRANS_IDLE;
	PGresult *res = PQexecPrepared(db->c, name, p ? p->n : 0,
				       p ? p->v : NULL, p ? p->len : NULL,
				       p ? p->fmt : NULL, 1);
	ExecStatusType s = PQresultStatus(res);
	if (s == PGRES_FATAL_ERROR && idle && PQstatus(db->c) == CONNECTION_BAD) {
		/* The server closed the connection (restart, terminated
		 * backend): outside a transaction nothing is lost by asking
		 * again once on a new connection. Inside one the caller rolls
		 * back and retries the whole transaction. */
		PQclear(res);
		PQreset(db->c);
		if (PQstatus(db->c) != CONNECTION_OK || prepare_all(db) < 0) {
			set_err(db, NULL);
			return NULL;
		}
		res = PQexecPrepared(db->c, name, p ? p->n : 0, p ? p->v : NULL,
				     p ? p->len : NULL, p ? p->fmt : NULL, 1);
		s = PQresultStatus(res);
	}
	if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK) {
		set_err(db, res);
		PQclear(res);
		return NULL;
	}
	return res;
}

static int exec(struct store_db *db, const char *q)
{
	int pr = pipe_flush(db);
	PGresult *res = PQexec(db->c, q);
	ExecStatusType s = PQresultStatus(res);
	int r = 0;
	if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK) {
		set_err(db, res);
		r = -EIO;
	}
	PQclear(res);
	return r < 0 ? r : pr;
}

/* A single-value query (text result); -ENOENT when no row. */
static int scalar(struct store_db *db, const char *q, int64_t *v)
{
	PGresult *res = PQexec(db->c, q);
	int r = 0;
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		set_err(db, res);
		r = -EIO;
	} else if (PQntuples(res) < 1 || PQgetisnull(res, 0, 0)) {
		r = -ENOENT;
	} else {
		*v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	}
	PQclear(res);
	return r;
}

static void db_close(struct store_db *db)
{
	if (!db)
		return;
	PQfinish(db->c);
	free(db);
}

static int setup_schema(struct store_db *db, const struct store_options *o,
			bool create, char *err, size_t errlen)
{
	int want = o->schema_version > 0 && o->schema_version < SCHEMA_MAX
			   ? o->schema_version : SCHEMA_MAX;
	int64_t v = 0;
	if (exec(db, "SET client_min_messages = warning") < 0 ||
	    exec(db, "BEGIN") < 0)
		goto fail;
	if (create && exec(db, "SELECT pg_advisory_xact_lock(1650553966)") < 0)
		goto fail_rb;
	int r = scalar(db, "SELECT 1 WHERE to_regclass('baton_meta') IS NOT NULL",
		       &v);
	if (r == -EIO)
		goto fail_rb;
	if (r == -ENOENT) {
		if (!create) {
			snprintf(err, errlen, "no store schema");
			goto refuse;
		}
		uint32_t id = 0;
		char q[160];
		while (id == 0)
			if (getrandom(&id, sizeof id, 0) != sizeof id)
				id = (uint32_t)random();
		snprintf(q, sizeof q,
			 "CREATE TABLE baton_meta (key text PRIMARY KEY,"
			 " value bigint NOT NULL);"
			 "INSERT INTO baton_meta VALUES ('app', %d), ('schema', 0),"
			 " ('db_id', %u)", APP_ID, id);
		if (exec(db, q) < 0)
			goto fail_rb;
	}
	r = scalar(db, "SELECT value FROM baton_meta WHERE key = 'app'", &v);
	if (r < 0 || v != APP_ID) {
		snprintf(err, errlen, "not a baton store (baton_meta: %s)",
			 r == -EIO ? db->err : "no app 1650553966");
		goto refuse;
	}
	if (scalar(db, "SELECT value FROM baton_meta WHERE key = 'schema'", &v) < 0) {
		snprintf(err, errlen, "not a baton store (no schema version)");
		goto refuse;
	}
	if (v > SCHEMA_MAX) {
		snprintf(err, errlen,
			 "store schema version %" PRId64
			 " is newer than this build's (%d)", v, SCHEMA_MAX);
		goto refuse;
	}
	for (int k = (int)v; create && k < want; k++) {
		char q[96];
		if (exec(db, migrations[k]) < 0)
			goto fail_rb;
		snprintf(q, sizeof q,
			 "UPDATE baton_meta SET value = %d WHERE key = 'schema'",
			 k + 1);
		if (exec(db, q) < 0)
			goto fail_rb;
		v = k + 1;
	}
	if (v < 1) {
		snprintf(err, errlen, "no store schema");
		goto refuse;
	}
	db->schema = (int)v;
	if (exec(db, "COMMIT") < 0)
		goto fail;
	return 0;
refuse:
	exec(db, "ROLLBACK");
	return -ENOTSUP;
fail_rb:
	snprintf(err, errlen, "creating the store schema: %s", db->err);
	exec(db, "ROLLBACK");
	return -EIO;
fail:
	snprintf(err, errlen, "%s", db->err);
	return -EIO;
}

/* Connection defaults (the URL given may override each): a server that
 * does not answer fails a connection attempt after PG_CONNECT_TIMEOUT_S
 * (not never: a worker opening its store would wait forever); TCP
 * keepalives find a server gone without a FIN (a rebooted host, a
 * firewall's dropped state) in PG_KEEPALIVE_IDLE_S + PG_KEEPALIVE_COUNT *
 * PG_KEEPALIVE_INTERVAL_S, a statement that runs PG_STATEMENT_TIMEOUT_MS
 * fails (the batch is retried). The timeouts travel as `options`, so that
 * PQreset() after a lost connection keeps them (a SET would be lost). */
#define PG_CONNECT_TIMEOUT_S 5
#define PG_KEEPALIVE_IDLE_S 30
#define PG_KEEPALIVE_INTERVAL_S 10
#define PG_KEEPALIVE_COUNT 3
#define PG_STATEMENT_TIMEOUT_MS 60000

static PGconn *pg_connect(const char *url, int lock_timeout_ms)
{
	char ct[16], ki[16], kn[16], kc[16], opt[128];

	snprintf(ct, sizeof ct, "%d", PG_CONNECT_TIMEOUT_S);
	snprintf(ki, sizeof ki, "%d", PG_KEEPALIVE_IDLE_S);
	snprintf(kn, sizeof kn, "%d", PG_KEEPALIVE_INTERVAL_S);
	snprintf(kc, sizeof kc, "%d", PG_KEEPALIVE_COUNT);
	snprintf(opt, sizeof opt, "-c statement_timeout=%d -c lock_timeout=%d",
		 PG_STATEMENT_TIMEOUT_MS, lock_timeout_ms);
	/* ours first: with expand_dbname the URL's (dbname) come after and
	 * win */
	const char *const keys[] = { "connect_timeout", "keepalives",
		"keepalives_idle", "keepalives_interval", "keepalives_count",
		"options", "dbname", NULL };
	const char *const vals[] = { ct, "1", ki, kn, kc, opt, url, NULL };
	return PQconnectdbParams(keys, vals, 1);
}

/* Whether libpq's message for a failed connection says the server could
 * not be reached — refused, timed out, an unknown host, a server starting
 * or stopping: a matter of the moment (a worker serves without history
 * and retries) — rather than that it turned us away or could not be asked
 * (authentication, a missing database or role, a bad conninfo: the
 * operator must act). libpq has no SQLSTATE for a failed connection, so
 * its messages are read; they are English here (the daemons never call
 * setlocale()), and an unrecognised one counts as a problem. */
static bool pg_unreachable(const char *m)
{
	static const char *const says[] = {
		"Connection refused", "timeout expired", "Connection timed out",
		"could not translate host name", "Name or service not known",
		"Temporary failure in name resolution", "No route to host",
		"Network is unreachable", "Host is unreachable",
		"the database system is starting up",
		"the database system is shutting down",
		"the database system is in recovery mode",
		"server closed the connection unexpectedly",
		"No such file or directory", /* no server on the Unix socket */
	};

	for (size_t i = 0; m && i < sizeof(says) / sizeof(says[0]); i++)
		if (strstr(m, says[i]))
			return true;
	return false;
}

static struct store_db *db_open(const struct store_options *o, bool create,
				uint32_t *db_id, char *err, size_t errlen)
{
	struct store_db *db = calloc(1, sizeof *db);
	int r = -ENOMEM;
	int64_t id = 0;
	if (!db)
		goto out;
	db->lock_timeout_ms = o->lock_timeout_ms > 0 ? o->lock_timeout_ms : 10000;
	db->c = pg_connect(o->url, db->lock_timeout_ms);
	if (!db->c || PQstatus(db->c) != CONNECTION_OK) {
		snprintf(err, errlen, "postgresql: %s",
			 db->c ? PQerrorMessage(db->c) : "out of memory");
		size_t l = strlen(err);
		while (l && err[l - 1] == '\n')
			err[--l] = 0;
		r = db->c && pg_unreachable(PQerrorMessage(db->c)) ? -EHOSTUNREACH : -EIO;
		goto out;
	}
	char lt[64];
	snprintf(lt, sizeof lt, "SET lock_timeout = %d", db->lock_timeout_ms);
	if (exec(db, lt) < 0) {
		snprintf(err, errlen, "postgresql: %s", db->err);
		r = -EIO;
		goto out;
	}
	if ((r = setup_schema(db, o, create, err, errlen)) < 0)
		goto out;
	if (scalar(db, "SELECT value FROM baton_meta WHERE key = 'db_id'", &id) < 0 ||
	    id == 0) {
		snprintf(err, errlen, "not a baton store (no db_id)");
		r = -ENOTSUP;
		goto out;
	}
	if ((r = prepare_all(db)) < 0) {
		snprintf(err, errlen, "preparing statements: %s", db->err);
		goto out;
	}
	*db_id = (uint32_t)id;
	return db;
out:
	db_close(db);
	errno = -r;
	return NULL;
}

/* After the server went away: reconnect and prepare again. */
static int ensure_conn(struct store_db *db)
{
	if (PQstatus(db->c) == CONNECTION_OK)
		return 0;
	PQreset(db->c);
	if (PQstatus(db->c) != CONNECTION_OK) {
		set_err(db, NULL);
		return -EIO;
	}
	return prepare_all(db);
}

static int db_begin(struct store_db *db)
{
	int r = ensure_conn(db);
	return r < 0 ? r : exec(db, "BEGIN");
}

static int db_commit(struct store_db *db)
{
	/* exec() reads the pipeline first: an error there fails the commit
	 * (COMMIT of a failed transaction only rolls back). */
	int r = pipe_flush(db);
	if (r < 0)
		return r;
	PGresult *res = PQexec(db->c, "COMMIT");
	/* COMMIT of a transaction that failed answers "ROLLBACK": not durable. */
	if (PQresultStatus(res) != PGRES_COMMAND_OK ||
	    strcmp(PQcmdStatus(res), "COMMIT") != 0) {
		set_err(db, res);
		if (!db->err[0])
			snprintf(db->err, sizeof db->err, "COMMIT answered %s",
				 PQcmdStatus(res));
		r = -EIO;
	}
	PQclear(res);
	return r;
}

static void db_rollback(struct store_db *db)
{
	pipe_flush(db);
	if (PQtransactionStatus(db->c) != PQTRANS_IDLE)
		exec(db, "ROLLBACK");
}

static int db_reserve(struct store_db *db, uint64_t floor, uint64_t n,
		      uint64_t *first)
{
	struct params p = { 0 };
	int r = ensure_conn(db);
	if (r < 0)
		return r;
	p_int(&p, (int64_t)floor);
	p_int(&p, (int64_t)n);
	/* One statement outside a transaction: committed when it returns. */
	PGresult *res = run(db, S_RESERVE, &p);
	if (!res)
		return -EIO;
	if (PQntuples(res) != 1) {
		snprintf(db->err, sizeof db->err, "baton_meta has no next_seq");
		PQclear(res);
		return -EIO;
	}
	*first = (uint64_t)g_int(res, 0, 0);
	PQclear(res);
	return 0;
}

static int one_id(struct store_db *db, PGresult *res, int64_t *id)
{
	if (!res)
		return -EIO;
	int r = PQntuples(res) > 0 ? 0 : -ENOENT;
	if (r == 0)
		*id = g_int(res, 0, 0);
	PQclear(res);
	return r;
}

/* A statement whose result is only "done": pipelined. */
static int fire(struct store_db *db, int i, struct params *p)
{
	return pipe_send(db, i, p);
}

static int exec_p(struct store_db *db, int i, struct params *p)
{
	PGresult *res = run(db, i, p);
	if (!res)
		return -EIO;
	PQclear(res);
	return 0;
}

static int db_network_id(struct store_db *db, const char *network, int64_t *id)
{
	struct params p = { 0 };
	p_str(&p, network);
	int r = exec_p(db, S_NET_INS, &p);
	if (r < 0)
		return r;
	r = one_id(db, run(db, S_NET_SEL, &p), id);
	return r == -ENOENT ? -EIO : r;
}

static int db_target_id(struct store_db *db, int64_t network_id,
			const char *target, int64_t *id)
{
	struct params p = { 0 };
	p_int(&p, network_id);
	p_str(&p, target);
	int r = exec_p(db, S_TGT_INS, &p);
	if (r < 0)
		return r;
	r = one_id(db, run(db, S_TGT_SEL, &p), id);
	return r == -ENOENT ? -EIO : r;
}

static int db_insert(struct store_db *db, uint64_t seq, int64_t network_id,
		     int64_t target_id, const struct store_msg *m)
{
	struct params p = { 0 };
	p_int(&p, (int64_t)seq);
	p_int(&p, network_id);
	p_int(&p, target_id);
	p_int(&p, m->time_ms);
	p_str(&p, m->sender);
	p_str(&p, m->command);
	p_str(&p, m->line);
	return fire(db, S_INSERT, &p);
}

static int db_add_bytes(struct store_db *db, int64_t network_id, int64_t lines,
			int64_t bytes)
{
	struct params p = { 0 };
	p_int(&p, network_id);
	p_int(&p, lines);
	p_int(&p, bytes);
	return fire(db, S_ADD_BYTES, &p);
}

static int db_set_position(struct store_db *db, int64_t network_id,
			   const char *client, uint64_t seq)
{
	struct params p = { 0 };
	p_int(&p, network_id);
	p_str(&p, client);
	p_int(&p, (int64_t)seq);
	return fire(db, S_SET_POS, &p);
}

static int db_set_marker(struct store_db *db, int64_t target_id, int64_t t)
{
	struct params p = { 0 };
	p_int(&p, target_id);
	p_int(&p, t);
	return fire(db, S_SET_MARK, &p);
}

static int db_networks(struct store_db *db, struct store_network_info **out,
		       size_t *n)
{
	PGresult *res = run(db, S_NETWORKS, NULL);
	if (!res)
		return -EIO;
	int rows = PQntuples(res);
	struct store_network_info *v = calloc((size_t)rows + 1, sizeof *v);
	if (!v)
		goto oom;
	for (int i = 0; i < rows; i++) {
		v[i].id = g_int(res, i, 0);
		v[i].bytes = (uint64_t)g_int(res, i, 2);
		if (!(v[i].name = strdup(g_str(res, i, 1)))) {
			for (int k = 0; k < i; k++)
				free(v[k].name);
			free(v);
			goto oom;
		}
	}
	PQclear(res);
	*out = v;
	*n = (size_t)rows;
	return 0;
oom:
	PQclear(res);
	return -ENOMEM;
}

static int db_oldest(struct store_db *db, int64_t network_id, size_t n,
		     uint64_t *seq, int64_t *time_ms, uint64_t *bytes)
{
	struct params p = { 0 };
	p_int(&p, network_id);
	p_int(&p, (int64_t)n);
	PGresult *res = run(db, S_OLDEST, &p);
	if (!res)
		return -EIO;
	int rows = PQntuples(res);
	for (int i = 0; i < rows && (size_t)i < n; i++) {
		seq[i] = (uint64_t)g_int(res, i, 0);
		time_ms[i] = g_int(res, i, 1);
		bytes[i] = (uint64_t)g_int(res, i, 2);
	}
	PQclear(res);
	return rows;
}

static int db_delete_upto(struct store_db *db, int64_t network_id,
			  uint64_t upto, uint64_t *lines, uint64_t *bytes)
{
	struct params p = { 0 };
	p_int(&p, network_id);
	p_int(&p, (int64_t)upto);
	PGresult *res = run(db, S_DELETE, &p);
	if (!res)
		return -EIO;
	*lines = (uint64_t)PQntuples(res);
	*bytes = 0;
	for (int i = 0; i < PQntuples(res); i++)
		*bytes += (uint64_t)g_int(res, i, 0);
	PQclear(res);
	return 0;
}

static int db_purge(struct store_db *db, int64_t network_id, uint64_t *lines)
{
	char q[640];
	int r = ensure_conn(db);

	if (r < 0)
		return r;
	/* network_id is an integer of ours: formatting it is safe */
	snprintf(q, sizeof q,
		 "BEGIN;"
		 "DELETE FROM baton_read_marker WHERE target IN"
		 " (SELECT id FROM baton_target WHERE network = %lld);"
		 "DELETE FROM baton_position WHERE network = %lld;",
		 (long long)network_id, (long long)network_id);
	if ((r = exec(db, q)) < 0) {
		(void)exec(db, "ROLLBACK");
		return r;
	}
	snprintf(q, sizeof q, "DELETE FROM baton_message WHERE network = %lld",
		 (long long)network_id);
	PGresult *res = PQexec(db->c, q);
	if (PQresultStatus(res) != PGRES_COMMAND_OK) {
		set_err(db, res);
		PQclear(res);
		(void)exec(db, "ROLLBACK");
		return -EIO;
	}
	*lines = strtoull(PQcmdTuples(res), NULL, 10);
	PQclear(res);
	snprintf(q, sizeof q,
		 "UPDATE baton_network SET lines = 0, bytes = 0 WHERE id = %lld;"
		 "COMMIT;", (long long)network_id);
	if ((r = exec(db, q)) < 0) {
		(void)exec(db, "ROLLBACK");
		return r;
	}
	return 0;
}

static int db_find_target(struct store_db *db, const char *network,
			  const char *target, int64_t *id)
{
	struct params p = { 0 };
	int r = ensure_conn(db);
	if (r < 0)
		return r;
	p_str(&p, network);
	p_str(&p, target);
	return one_id(db, run(db, S_FIND_TGT, &p), id);
}

static int db_find_network(struct store_db *db, const char *network,
			   int64_t *id)
{
	struct params p = { 0 };
	int r = ensure_conn(db);
	if (r < 0)
		return r;
	p_str(&p, network);
	return one_id(db, run(db, S_FIND_NET, &p), id);
}

static int db_lookup(struct store_db *db, uint64_t seq, int64_t *target_id,
		     int64_t *time_ms)
{
	struct params p = { 0 };
	p_int(&p, (int64_t)seq);
	PGresult *res = run(db, S_LOOKUP, &p);
	if (!res)
		return -EIO;
	int r = PQntuples(res) > 0 ? 0 : -ENOENT;
	if (r == 0) {
		*target_id = g_int(res, 0, 0);
		*time_ms = g_int(res, 0, 1);
	}
	PQclear(res);
	return r;
}

static int read_rows(PGresult *res, bool own_target, struct store_result *r)
{
	int e = 0;
	for (int i = 0; i < PQntuples(res) && e == 0; i++) {
		int c = own_target ? 3 : 2;
		e = store_result_push_row(r, (uint64_t)g_int(res, i, 0),
					  g_int(res, i, 1),
					  own_target ? g_str(res, i, 2) : "",
					  g_str(res, i, c), g_str(res, i, c + 1),
					  g_str(res, i, c + 2));
	}
	PQclear(res);
	return e;
}

static int db_range(struct store_db *db, int64_t target_id,
		    struct store_key lo, struct store_key hi, bool desc,
		    size_t limit, struct store_result *r)
{
	struct params p = { 0 };
	p_int(&p, target_id);
	p_int(&p, lo.time_ms);
	p_int(&p, lo.seq);
	p_int(&p, hi.time_ms);
	p_int(&p, hi.seq);
	p_int(&p, (int64_t)limit);
	PGresult *res = run(db, desc ? S_RANGE_DESC : S_RANGE_ASC, &p);
	return res ? read_rows(res, false, r) : -EIO;
}

static int db_replay(struct store_db *db, int64_t network_id,
		     uint64_t after_seq, size_t limit, struct store_result *r)
{
	struct params p = { 0 };
	p_int(&p, network_id);
	p_int(&p, (int64_t)after_seq);
	p_int(&p, (int64_t)limit);
	PGresult *res = run(db, S_REPLAY, &p);
	return res ? read_rows(res, true, r) : -EIO;
}

static int db_targets(struct store_db *db, int64_t network_id, int64_t lo,
		      int64_t hi, bool desc, size_t limit,
		      struct store_result *r)
{
	struct params p = { 0 };
	p_int(&p, network_id);
	p_int(&p, lo);
	p_int(&p, hi);
	p_int(&p, (int64_t)limit);
	PGresult *res = run(db, desc ? S_TARGETS_DESC : S_TARGETS_ASC, &p);
	if (!res)
		return -EIO;
	int e = 0;
	for (int i = 0; i < PQntuples(res) && e == 0; i++)
		e = store_result_push_target(r, g_str(res, i, 0), g_int(res, i, 1));
	PQclear(res);
	return e;
}

static int db_markers(struct store_db *db, int64_t network_id,
		      struct store_result *r)
{
	struct params p = { 0 };
	p_int(&p, network_id);
	PGresult *res = run(db, S_MARKERS, &p);
	if (!res)
		return -EIO;
	int e = 0;
	for (int i = 0; i < PQntuples(res) && e == 0; i++)
		e = store_result_push_target(r, g_str(res, i, 0), g_int(res, i, 1));
	PQclear(res);
	return e;
}

static int db_get_position(struct store_db *db, const char *network,
			   const char *client, uint64_t *seq)
{
	struct params p = { 0 };
	int64_t v;
	int r = ensure_conn(db);
	if (r < 0)
		return r;
	p_str(&p, network);
	p_str(&p, client);
	r = one_id(db, run(db, S_GET_POS, &p), &v);
	if (r == 0)
		*seq = (uint64_t)v;
	return r;
}

static int db_get_marker(struct store_db *db, const char *network,
			 const char *target, int64_t *t)
{
	struct params p = { 0 };
	int r = ensure_conn(db);
	if (r < 0)
		return r;
	p_str(&p, network);
	p_str(&p, target);
	return one_id(db, run(db, S_GET_MARK, &p), t);
}

static int db_stats(struct store_db *db, uint64_t *lines, uint64_t *line_bytes,
		    uint64_t *disk_bytes)
{
	int r = ensure_conn(db);
	if (r < 0)
		return r;
	PGresult *res = run(db, S_STATS, NULL);
	if (!res)
		return -EIO;
	*lines = (uint64_t)g_int(res, 0, 0);
	*line_bytes = (uint64_t)g_int(res, 0, 1);
	*disk_bytes = (uint64_t)g_int(res, 0, 2);
	PQclear(res);
	return 0;
}

const struct store_db_ops store_pg_ops = {
	.open = db_open,
	.close = db_close,
	.error = db_error,
	.begin = db_begin,
	.commit = db_commit,
	.rollback = db_rollback,
	.reserve = db_reserve,
	.network_id = db_network_id,
	.target_id = db_target_id,
	.insert = db_insert,
	.add_bytes = db_add_bytes,
	.set_position = db_set_position,
	.set_marker = db_set_marker,
	.networks = db_networks,
	.oldest = db_oldest,
	.delete_upto = db_delete_upto,
	.purge = db_purge,
	.find_target = db_find_target,
	.find_network = db_find_network,
	.lookup = db_lookup,
	.range = db_range,
	.replay = db_replay,
	.targets = db_targets,
	.get_position = db_get_position,
	.get_marker = db_get_marker,
	.markers = db_markers,
	.stats = db_stats,
};
