/* store/sqlite.c: the SQLite backend (store/backend.h). One database file in
 * WAL mode; the file says it is ours with PRAGMA application_id and its
 * schema version with PRAGMA user_version; every statement is prepared once
 * per connection. */
#include "store/backend.h"

#include <errno.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/* "batn": what PRAGMA application_id holds in a baton store. */
#define APP_ID 0x6261746e

/* Schema versions, in order; migrations[i] takes version i to i+1. */
static const char *const migrations[] = {
	/* 1: messages, targets, networks, the seq reservation and db id. */
	"CREATE TABLE baton_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
	"CREATE TABLE baton_network (id INTEGER PRIMARY KEY,"
	" name TEXT NOT NULL UNIQUE, lines INTEGER NOT NULL DEFAULT 0,"
	" bytes INTEGER NOT NULL DEFAULT 0);"
	"CREATE TABLE baton_target (id INTEGER PRIMARY KEY,"
	" network INTEGER NOT NULL REFERENCES baton_network(id),"
	" name TEXT NOT NULL, UNIQUE(network, name));"
	"CREATE TABLE baton_message (seq INTEGER PRIMARY KEY,"
	" network INTEGER NOT NULL, target INTEGER NOT NULL,"
	" time INTEGER NOT NULL, sender TEXT NOT NULL, command TEXT NOT NULL,"
	" line TEXT NOT NULL);"
	"CREATE INDEX baton_message_target_time ON baton_message(target, time);"
	"CREATE INDEX baton_message_network_seq ON baton_message(network, seq);"
	"INSERT INTO baton_meta VALUES ('next_seq', 1);",
	/* 2: delivery positions and read markers. */
	"CREATE TABLE baton_position (network INTEGER NOT NULL, client TEXT NOT NULL,"
	" seq INTEGER NOT NULL, PRIMARY KEY(network, client)) WITHOUT ROWID;"
	"CREATE TABLE baton_read_marker (target INTEGER PRIMARY KEY,"
	" time INTEGER NOT NULL);",
};
#define SCHEMA_MAX ((int)(sizeof migrations / sizeof migrations[0]))

enum {
	S_BEGIN, S_COMMIT, S_ROLLBACK, S_RESERVE, S_NET_INS, S_NET_SEL,
	S_TGT_INS, S_TGT_SEL, S_INSERT, S_ADD_BYTES, S_SET_POS, S_SET_MARK,
	S_NETWORKS, S_OLDEST, S_DELETE, S_FIND_TGT, S_FIND_NET, S_LOOKUP,
	S_RANGE_ASC, S_RANGE_DESC, S_REPLAY, S_TARGETS_ASC, S_TARGETS_DESC,
	S_GET_POS, S_GET_MARK, S_STATS, S_MARKERS, S_COUNT
};

static const char *const sql[S_COUNT] = {
	[S_BEGIN] = "BEGIN IMMEDIATE",
	[S_COMMIT] = "COMMIT",
	[S_ROLLBACK] = "ROLLBACK",
	[S_RESERVE] = "UPDATE baton_meta SET value = max(value, ?1) + ?2"
		      " WHERE key = 'next_seq' RETURNING value - ?2",
	[S_NET_INS] = "INSERT INTO baton_network (name) VALUES (?1)"
		      " ON CONFLICT DO NOTHING",
	[S_NET_SEL] = "SELECT id FROM baton_network WHERE name = ?1",
	[S_TGT_INS] = "INSERT INTO baton_target (network, name) VALUES (?1, ?2)"
		      " ON CONFLICT DO NOTHING",
	[S_TGT_SEL] = "SELECT id FROM baton_target WHERE network = ?1 AND name = ?2",
	[S_INSERT] = "INSERT INTO baton_message VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
		     " ON CONFLICT DO NOTHING",
	[S_ADD_BYTES] = "UPDATE baton_network SET lines = lines + ?2,"
			" bytes = bytes + ?3 WHERE id = ?1",
	[S_SET_POS] = "INSERT INTO baton_position VALUES (?1, ?2, ?3)"
		      " ON CONFLICT (network, client) DO UPDATE"
		      " SET seq = max(seq, excluded.seq)",
	[S_SET_MARK] = "INSERT INTO baton_read_marker VALUES (?1, ?2)"
		       " ON CONFLICT (target) DO UPDATE"
		       " SET time = max(time, excluded.time)",
	[S_NETWORKS] = "SELECT id, name, bytes FROM baton_network ORDER BY id",
	[S_OLDEST] = "SELECT seq, time, length(CAST(line AS BLOB)) FROM baton_message"
		     " WHERE network = ?1 ORDER BY seq LIMIT ?2",
	[S_DELETE] = "DELETE FROM baton_message WHERE network = ?1 AND seq <= ?2"
		     " RETURNING length(CAST(line AS BLOB))",
	[S_FIND_TGT] = "SELECT t.id FROM baton_target t JOIN baton_network n"
		       " ON n.id = t.network WHERE n.name = ?1 AND t.name = ?2",
	[S_FIND_NET] = "SELECT id FROM baton_network WHERE name = ?1",
	[S_LOOKUP] = "SELECT target, time FROM baton_message WHERE seq = ?1",
	[S_RANGE_ASC] = "SELECT seq, time, sender, command, line FROM baton_message"
			" WHERE target = ?1 AND (time, seq) > (?2, ?3)"
			" AND (time, seq) < (?4, ?5) ORDER BY time, seq LIMIT ?6",
	[S_RANGE_DESC] = "SELECT seq, time, sender, command, line FROM baton_message"
			 " WHERE target = ?1 AND (time, seq) > (?2, ?3)"
			 " AND (time, seq) < (?4, ?5)"
			 " ORDER BY time DESC, seq DESC LIMIT ?6",
	[S_REPLAY] = "SELECT m.seq, m.time, t.name, m.sender, m.command, m.line"
		     " FROM baton_message m JOIN baton_target t ON t.id = m.target"
		     " WHERE m.network = ?1 AND m.seq > ?2 ORDER BY m.seq LIMIT ?3",
	[S_TARGETS_ASC] = "SELECT name, last FROM (SELECT t.name AS name,"
			  " (SELECT max(time) FROM baton_message m WHERE"
			  " m.target = t.id AND m.time > ?2 AND m.time < ?3) AS last"
			  " FROM baton_target t WHERE t.network = ?1)"
			  " WHERE last IS NOT NULL ORDER BY last, name LIMIT ?4",
	[S_TARGETS_DESC] = "SELECT name, last FROM (SELECT t.name AS name,"
			   " (SELECT max(time) FROM baton_message m WHERE"
			   " m.target = t.id AND m.time > ?2 AND m.time < ?3) AS last"
			   " FROM baton_target t WHERE t.network = ?1)"
			   " WHERE last IS NOT NULL ORDER BY last DESC, name DESC"
			   " LIMIT ?4",
	[S_GET_POS] = "SELECT p.seq FROM baton_position p JOIN baton_network n"
		      " ON n.id = p.network WHERE n.name = ?1 AND p.client = ?2",
	[S_GET_MARK] = "SELECT r.time FROM baton_read_marker r"
		       " JOIN baton_target t ON t.id = r.target"
		       " JOIN baton_network n ON n.id = t.network"
		       " WHERE n.name = ?1 AND t.name = ?2",
	[S_STATS] = "SELECT coalesce(sum(lines), 0), coalesce(sum(bytes), 0)"
		    " FROM baton_network",
	[S_MARKERS] = "SELECT t.name, r.time FROM baton_read_marker r"
		      " JOIN baton_target t ON t.id = r.target"
		      " WHERE t.network = ?1 ORDER BY t.name",
};

struct store_db {
	sqlite3 *h;
	char *path;
	sqlite3_stmt *st[S_COUNT];
	char err[256];
};

static int fail(struct store_db *db)
{
	snprintf(db->err, sizeof db->err, "%s", sqlite3_errmsg(db->h));
	return -EIO;
}

static const char *db_error(struct store_db *db)
{
	return db->err;
}

static void db_close(struct store_db *db)
{
	if (!db)
		return;
	for (int i = 0; i < S_COUNT; i++)
		sqlite3_finalize(db->st[i]);
	sqlite3_close(db->h);
	free(db->path);
	free(db);
}

static int pragma_int(sqlite3 *h, const char *q, int64_t *v)
{
	sqlite3_stmt *s = NULL;
	int rc = sqlite3_prepare_v2(h, q, -1, &s, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		*v = sqlite3_column_int64(s, 0);
		rc = SQLITE_OK;
	}
	sqlite3_finalize(s);
	return rc == SQLITE_OK || rc == SQLITE_DONE ? 0 : -EIO;
}

static int exec(struct store_db *db, const char *q)
{
	char *msg = NULL;
	if (sqlite3_exec(db->h, q, NULL, NULL, &msg) != SQLITE_OK) {
		snprintf(db->err, sizeof db->err, "%s",
			 msg ? msg : sqlite3_errmsg(db->h));
		sqlite3_free(msg);
		return -EIO;
	}
	return 0;
}

/* Check the file is ours (or empty), create or migrate it. */
static int setup_schema(struct store_db *db, const struct store_options *o,
			bool create, char *err, size_t errlen)
{
	int64_t app = 0, ver = 0, nobj = 0;
	int want = o->schema_version > 0 && o->schema_version < SCHEMA_MAX
			   ? o->schema_version : SCHEMA_MAX;
	if (pragma_int(db->h, "PRAGMA application_id", &app) < 0 ||
	    pragma_int(db->h, "PRAGMA user_version", &ver) < 0 ||
	    pragma_int(db->h, "SELECT count(*) FROM sqlite_master", &nobj) < 0) {
		snprintf(err, errlen, "%s: not a baton store (%s)", db->path,
			 sqlite3_errmsg(db->h));
		return -ENOTSUP;
	}
	if (app != APP_ID && !(app == 0 && ver == 0 && nobj == 0)) {
		snprintf(err, errlen,
			 "%s: not a baton store (application_id 0x%" PRIx64
			 ", %" PRId64 " schema objects)", db->path, app, nobj);
		return -ENOTSUP;
	}
	if (ver > SCHEMA_MAX) {
		snprintf(err, errlen,
			 "%s: store schema version %" PRId64
			 " is newer than this build's (%d)", db->path, ver,
			 SCHEMA_MAX);
		return -ENOTSUP;
	}
	if (!create || ver >= want)
		return ver < 1 ? (snprintf(err, errlen, "%s: no store schema",
					   db->path), -ENOTSUP) : 0;
	if (exec(db, "BEGIN IMMEDIATE") < 0)
		goto fail;
	/* Read again inside the write lock: another opener may have won. */
	if (pragma_int(db->h, "PRAGMA user_version", &ver) < 0)
		goto fail_rb;
	for (int v = (int)ver; v < want; v++) {
		char q[64];
		if (exec(db, migrations[v]) < 0)
			goto fail_rb;
		if (v == 0) {
			uint32_t id = 0;
			char ins[96];
			while (id == 0)
				if (getrandom(&id, sizeof id, 0) != sizeof id)
					id = (uint32_t)random();
			snprintf(ins, sizeof ins,
				 "INSERT INTO baton_meta VALUES ('db_id', %u)", id);
			if (exec(db, ins) < 0 ||
			    exec(db, "PRAGMA application_id = 1650553966") < 0)
				goto fail_rb;
		}
		snprintf(q, sizeof q, "PRAGMA user_version = %d", v + 1);
		if (exec(db, q) < 0)
			goto fail_rb;
	}
	if (exec(db, "COMMIT") < 0)
		goto fail_rb;
	return 0;
fail_rb:
	sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
fail:
	snprintf(err, errlen, "%s: creating the store schema: %s", db->path,
		 db->err);
	return -EIO;
}

static struct store_db *db_open(const struct store_options *o, bool create,
				uint32_t *db_id, char *err, size_t errlen)
{
	struct store_db *db = calloc(1, sizeof *db);
	int64_t id = 0;
	int r = -ENOMEM;
	if (!db || !(db->path = strdup(o->url ? o->url : "")))
		goto out;
	int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX |
		    (create ? SQLITE_OPEN_CREATE : 0);
	if (sqlite3_open_v2(db->path, &db->h, flags, NULL) != SQLITE_OK) {
		snprintf(err, errlen, "%s: %s", db->path,
			 db->h ? sqlite3_errmsg(db->h) : "cannot open");
		r = -EIO;
		goto out;
	}
	sqlite3_busy_timeout(db->h, o->lock_timeout_ms > 0 ? o->lock_timeout_ms : 10000);
	sqlite3_extended_result_codes(db->h, 1);
	if ((r = setup_schema(db, o, create, err, errlen)) < 0)
		goto out;
	if (exec(db, "PRAGMA journal_mode = WAL") < 0 ||
	    exec(db, o->sqlite_normal_sync ? "PRAGMA synchronous = NORMAL"
					   : "PRAGMA synchronous = FULL") < 0) {
		snprintf(err, errlen, "%s: %s", db->path, db->err);
		r = -EIO;
		goto out;
	}
	int64_t ver = 0;
	pragma_int(db->h, "PRAGMA user_version", &ver);
	for (int i = 0; i < S_COUNT; i++) {
		/* A database migrated only part way (tests) lacks the later
		 * tables; those statements stay NULL and fail if used. */
		if (sqlite3_prepare_v3(db->h, sql[i], -1,
				       SQLITE_PREPARE_PERSISTENT, &db->st[i],
				       NULL) != SQLITE_OK && ver >= SCHEMA_MAX) {
			snprintf(err, errlen, "%s: preparing a statement: %s",
				 db->path, sqlite3_errmsg(db->h));
			r = -ENOTSUP;
			goto out;
		}
	}
	if (pragma_int(db->h, "SELECT value FROM baton_meta WHERE key = 'db_id'",
		       &id) < 0 || id == 0) {
		snprintf(err, errlen, "%s: not a baton store (no db_id)",
			 db->path);
		r = -ENOTSUP;
		goto out;
	}
	*db_id = (uint32_t)id;
	return db;
out:
	db_close(db);
	errno = -r;
	return NULL;
}

/* Reset and clear a statement before use. */
static sqlite3_stmt *stmt(struct store_db *db, int i)
{
	sqlite3_stmt *s = db->st[i];
	if (s) {
		sqlite3_reset(s);
		sqlite3_clear_bindings(s);
	}
	return s;
}

static int step_done(struct store_db *db, sqlite3_stmt *s)
{
	if (!s) {
		snprintf(db->err, sizeof db->err, "statement not prepared");
		return -EIO;
	}
	int rc = sqlite3_step(s);
	if (rc != SQLITE_DONE && rc != SQLITE_ROW)
		return fail(db);
	while (rc == SQLITE_ROW)
		rc = sqlite3_step(s);
	if (rc != SQLITE_DONE)
		return fail(db);
	sqlite3_reset(s);
	return 0;
}

static void bind_str(sqlite3_stmt *s, int i, const char *v)
{
	sqlite3_bind_text(s, i, v, (int)strlen(v), SQLITE_STATIC);
}

static int db_begin(struct store_db *db)
{
	return step_done(db, stmt(db, S_BEGIN));
}

static int db_commit(struct store_db *db)
{
	return step_done(db, stmt(db, S_COMMIT));
}

static void db_rollback(struct store_db *db)
{
	if (sqlite3_get_autocommit(db->h) == 0)
		step_done(db, stmt(db, S_ROLLBACK));
}

static int db_reserve(struct store_db *db, uint64_t floor, uint64_t n,
		      uint64_t *first)
{
	int r = db_begin(db);
	if (r < 0)
		return r;
	sqlite3_stmt *s = stmt(db, S_RESERVE);
	sqlite3_bind_int64(s, 1, (int64_t)floor);
	sqlite3_bind_int64(s, 2, (int64_t)n);
	if (sqlite3_step(s) != SQLITE_ROW) {
		r = fail(db);
		db_rollback(db);
		return r;
	}
	*first = (uint64_t)sqlite3_column_int64(s, 0);
	sqlite3_reset(s);
	if ((r = db_commit(db)) < 0)
		db_rollback(db);
	return r;
}

static int select_id(struct store_db *db, sqlite3_stmt *s, int64_t *id)
{
	int rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		*id = sqlite3_column_int64(s, 0);
		sqlite3_reset(s);
		return 0;
	}
	if (rc == SQLITE_DONE) {
		sqlite3_reset(s);
		return -ENOENT;
	}
	return fail(db);
}

static int db_network_id(struct store_db *db, const char *network, int64_t *id)
{
	sqlite3_stmt *s = stmt(db, S_NET_INS);
	bind_str(s, 1, network);
	int r = step_done(db, s);
	if (r < 0)
		return r;
	s = stmt(db, S_NET_SEL);
	bind_str(s, 1, network);
	r = select_id(db, s, id);
	return r == -ENOENT ? -EIO : r;
}

static int db_target_id(struct store_db *db, int64_t network_id,
			const char *target, int64_t *id)
{
	sqlite3_stmt *s = stmt(db, S_TGT_INS);
	sqlite3_bind_int64(s, 1, network_id);
	bind_str(s, 2, target);
	int r = step_done(db, s);
	if (r < 0)
		return r;
	s = stmt(db, S_TGT_SEL);
	sqlite3_bind_int64(s, 1, network_id);
	bind_str(s, 2, target);
	r = select_id(db, s, id);
	return r == -ENOENT ? -EIO : r;
}

static int db_insert(struct store_db *db, uint64_t seq, int64_t network_id,
		     int64_t target_id, const struct store_msg *m)
{
	sqlite3_stmt *s = stmt(db, S_INSERT);
	sqlite3_bind_int64(s, 1, (int64_t)seq);
	sqlite3_bind_int64(s, 2, network_id);
	sqlite3_bind_int64(s, 3, target_id);
	sqlite3_bind_int64(s, 4, m->time_ms);
	bind_str(s, 5, m->sender);
	bind_str(s, 6, m->command);
	bind_str(s, 7, m->line);
	return step_done(db, s);
}

static int db_add_bytes(struct store_db *db, int64_t network_id, int64_t lines,
			int64_t bytes)
{
	sqlite3_stmt *s = stmt(db, S_ADD_BYTES);
	sqlite3_bind_int64(s, 1, network_id);
	sqlite3_bind_int64(s, 2, lines);
	sqlite3_bind_int64(s, 3, bytes);
	return step_done(db, s);
}

static int db_set_position(struct store_db *db, int64_t network_id,
			   const char *client, uint64_t seq)
{
	sqlite3_stmt *s = stmt(db, S_SET_POS);
	if (!s)
		return step_done(db, s);
	sqlite3_bind_int64(s, 1, network_id);
	bind_str(s, 2, client);
	sqlite3_bind_int64(s, 3, (int64_t)seq);
	return step_done(db, s);
}

static int db_set_marker(struct store_db *db, int64_t target_id, int64_t t)
{
	sqlite3_stmt *s = stmt(db, S_SET_MARK);
	if (!s)
		return step_done(db, s);
	sqlite3_bind_int64(s, 1, target_id);
	sqlite3_bind_int64(s, 2, t);
	return step_done(db, s);
}

static int db_networks(struct store_db *db, struct store_network_info **out,
		       size_t *n)
{
	sqlite3_stmt *s = stmt(db, S_NETWORKS);
	struct store_network_info *v = NULL;
	size_t len = 0, cap = 0;
	int rc;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		if (len == cap) {
			size_t nc = cap ? cap * 2 : 16;
			void *p = realloc(v, nc * sizeof *v);
			if (!p)
				goto oom;
			v = p;
			cap = nc;
		}
		v[len].id = sqlite3_column_int64(s, 0);
		v[len].bytes = (uint64_t)sqlite3_column_int64(s, 2);
		v[len].name = strdup((const char *)sqlite3_column_text(s, 1));
		if (!v[len].name)
			goto oom;
		len++;
	}
	if (rc != SQLITE_DONE) {
		int r = fail(db);
		for (size_t i = 0; i < len; i++)
			free(v[i].name);
		free(v);
		return r;
	}
	sqlite3_reset(s);
	*out = v;
	*n = len;
	return 0;
oom:
	for (size_t i = 0; i < len; i++)
		free(v[i].name);
	free(v);
	sqlite3_reset(s);
	return -ENOMEM;
}

static int db_oldest(struct store_db *db, int64_t network_id, size_t n,
		     uint64_t *seq, int64_t *time_ms, uint64_t *bytes)
{
	sqlite3_stmt *s = stmt(db, S_OLDEST);
	sqlite3_bind_int64(s, 1, network_id);
	sqlite3_bind_int64(s, 2, (int64_t)n);
	int got = 0, rc;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW && (size_t)got < n) {
		seq[got] = (uint64_t)sqlite3_column_int64(s, 0);
		time_ms[got] = sqlite3_column_int64(s, 1);
		bytes[got] = (uint64_t)sqlite3_column_int64(s, 2);
		got++;
	}
	if (rc != SQLITE_DONE && rc != SQLITE_ROW)
		return fail(db);
	sqlite3_reset(s);
	return got;
}

static int db_delete_upto(struct store_db *db, int64_t network_id,
			  uint64_t upto, uint64_t *lines, uint64_t *bytes)
{
	sqlite3_stmt *s = stmt(db, S_DELETE);
	sqlite3_bind_int64(s, 1, network_id);
	sqlite3_bind_int64(s, 2, (int64_t)upto);
	int rc;
	*lines = *bytes = 0;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		(*lines)++;
		*bytes += (uint64_t)sqlite3_column_int64(s, 0);
	}
	if (rc != SQLITE_DONE)
		return fail(db);
	sqlite3_reset(s);
	return 0;
}

static int db_find_target(struct store_db *db, const char *network,
			  const char *target, int64_t *id)
{
	sqlite3_stmt *s = stmt(db, S_FIND_TGT);
	bind_str(s, 1, network);
	bind_str(s, 2, target);
	return select_id(db, s, id);
}

static int db_find_network(struct store_db *db, const char *network,
			   int64_t *id)
{
	sqlite3_stmt *s = stmt(db, S_FIND_NET);
	bind_str(s, 1, network);
	return select_id(db, s, id);
}

static int db_lookup(struct store_db *db, uint64_t seq, int64_t *target_id,
		     int64_t *time_ms)
{
	sqlite3_stmt *s = stmt(db, S_LOOKUP);
	sqlite3_bind_int64(s, 1, (int64_t)seq);
	int rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		*target_id = sqlite3_column_int64(s, 0);
		*time_ms = sqlite3_column_int64(s, 1);
		sqlite3_reset(s);
		return 0;
	}
	if (rc == SQLITE_DONE) {
		sqlite3_reset(s);
		return -ENOENT;
	}
	return fail(db);
}

static const char *col(sqlite3_stmt *s, int i)
{
	const unsigned char *t = sqlite3_column_text(s, i);
	return t ? (const char *)t : "";
}

/* Rows of S_RANGE_* (target from the caller) or S_REPLAY (own column). */
static int read_rows(struct store_db *db, sqlite3_stmt *s, const char *target,
		     struct store_result *r)
{
	int rc, e = 0;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		int c = target ? 2 : 3;
		e = store_result_push_row(r, (uint64_t)sqlite3_column_int64(s, 0),
					  sqlite3_column_int64(s, 1),
					  target ? target : col(s, 2),
					  col(s, c), col(s, c + 1), col(s, c + 2));
		if (e < 0)
			break;
	}
	if (e < 0 || rc == SQLITE_DONE) {
		/* Reset ends the read transaction: a reader left open would
		 * keep checkpoints from emptying the WAL. */
		sqlite3_reset(s);
		return e;
	}
	return fail(db);
}

static int db_range(struct store_db *db, int64_t target_id,
		    struct store_key lo, struct store_key hi, bool desc,
		    size_t limit, struct store_result *r)
{
	sqlite3_stmt *s = stmt(db, desc ? S_RANGE_DESC : S_RANGE_ASC);
	sqlite3_bind_int64(s, 1, target_id);
	sqlite3_bind_int64(s, 2, lo.time_ms);
	sqlite3_bind_int64(s, 3, lo.seq);
	sqlite3_bind_int64(s, 4, hi.time_ms);
	sqlite3_bind_int64(s, 5, hi.seq);
	sqlite3_bind_int64(s, 6, (int64_t)limit);
	/* The target's name is filled in by store.c (one per query). */
	return read_rows(db, s, "", r);
}

static int db_replay(struct store_db *db, int64_t network_id,
		     uint64_t after_seq, size_t limit, struct store_result *r)
{
	sqlite3_stmt *s = stmt(db, S_REPLAY);
	sqlite3_bind_int64(s, 1, network_id);
	sqlite3_bind_int64(s, 2, (int64_t)after_seq);
	sqlite3_bind_int64(s, 3, (int64_t)limit);
	return read_rows(db, s, NULL, r);
}

static int db_targets(struct store_db *db, int64_t network_id, int64_t lo,
		      int64_t hi, bool desc, size_t limit,
		      struct store_result *r)
{
	sqlite3_stmt *s = stmt(db, desc ? S_TARGETS_DESC : S_TARGETS_ASC);
	sqlite3_bind_int64(s, 1, network_id);
	sqlite3_bind_int64(s, 2, lo);
	sqlite3_bind_int64(s, 3, hi);
	sqlite3_bind_int64(s, 4, (int64_t)limit);
	int rc, e = 0;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW)
		if ((e = store_result_push_target(r, col(s, 0),
						  sqlite3_column_int64(s, 1))) < 0) {
			sqlite3_reset(s);
			return e;
		}
	if (rc != SQLITE_DONE)
		return fail(db);
	sqlite3_reset(s);
	return 0;
}

static int db_markers(struct store_db *db, int64_t network_id,
		      struct store_result *r)
{
	sqlite3_stmt *s = stmt(db, S_MARKERS);
	if (!s)
		return step_done(db, s);
	sqlite3_bind_int64(s, 1, network_id);
	int rc, e = 0;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW)
		if ((e = store_result_push_target(r, col(s, 0),
						  sqlite3_column_int64(s, 1))) < 0) {
			sqlite3_reset(s);
			return e;
		}
	if (rc != SQLITE_DONE)
		return fail(db);
	sqlite3_reset(s);
	return 0;
}

static int db_get_position(struct store_db *db, const char *network,
			   const char *client, uint64_t *seq)
{
	sqlite3_stmt *s = stmt(db, S_GET_POS);
	int64_t v;
	if (!s)
		return step_done(db, s);
	bind_str(s, 1, network);
	bind_str(s, 2, client);
	int r = select_id(db, s, &v);
	if (r == 0)
		*seq = (uint64_t)v;
	return r;
}

static int db_get_marker(struct store_db *db, const char *network,
			 const char *target, int64_t *t)
{
	sqlite3_stmt *s = stmt(db, S_GET_MARK);
	if (!s)
		return step_done(db, s);
	bind_str(s, 1, network);
	bind_str(s, 2, target);
	return select_id(db, s, t);
}

static int db_stats(struct store_db *db, uint64_t *lines, uint64_t *line_bytes,
		    uint64_t *disk_bytes)
{
	sqlite3_stmt *s = stmt(db, S_STATS);
	if (sqlite3_step(s) != SQLITE_ROW)
		return fail(db);
	*lines = (uint64_t)sqlite3_column_int64(s, 0);
	*line_bytes = (uint64_t)sqlite3_column_int64(s, 1);
	sqlite3_reset(s);
	int64_t pages = 0, psize = 0;
	if (pragma_int(db->h, "PRAGMA page_count", &pages) < 0 ||
	    pragma_int(db->h, "PRAGMA page_size", &psize) < 0)
		return fail(db);
	/* The WAL's bytes are pages not yet checkpointed into the file;
	 * counted once, in the file's page count after a checkpoint. */
	*disk_bytes = (uint64_t)(pages * psize);
	return 0;
}

static int db_purge(struct store_db *db, int64_t network_id, uint64_t *lines)
{
	char q[640];

	/* network_id is an integer of ours: formatting it is safe */
	snprintf(q, sizeof q,
		 "BEGIN IMMEDIATE;"
		 "DELETE FROM baton_read_marker WHERE target IN"
		 " (SELECT id FROM baton_target WHERE network = %lld);"
		 "DELETE FROM baton_position WHERE network = %lld;"
		 "DELETE FROM baton_message WHERE network = %lld;",
		 (long long)network_id, (long long)network_id, (long long)network_id);
	if (sqlite3_exec(db->h, q, NULL, NULL, NULL) != SQLITE_OK) {
		int r = fail(db);
		sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
		return r;
	}
	*lines = (uint64_t)sqlite3_changes(db->h);
	snprintf(q, sizeof q,
		 "UPDATE baton_network SET lines = 0, bytes = 0 WHERE id = %lld;"
		 "COMMIT;", (long long)network_id);
	if (sqlite3_exec(db->h, q, NULL, NULL, NULL) != SQLITE_OK) {
		int r = fail(db);
		sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
		return r;
	}
	return 0;
}

const struct store_db_ops store_sqlite_ops = {
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
