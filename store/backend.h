/* store/backend.h: what store.c needs from a database (private to store/).
 * One struct store_db is one connection; store.c opens two, one for the
 * writer thread and one for reads, and uses each from one thread at a time.
 * Every function returns 0 or a negative errno (-EIO for a database error,
 * with the database's text in the connection's error buffer, see
 * store_db_error()); -ENOENT where "not found" is a normal answer.
 *
 * Order keys: a message's position is (time_ms, seq). A bound is exclusive
 * and given as a key; "no bound" is (INT64_MIN, 0) below and
 * (INT64_MAX, INT64_MAX) above. */
#ifndef BATON_STORE_BACKEND_H
#define BATON_STORE_BACKEND_H

#include "store/store.h"

struct store_db;

struct store_key {
	int64_t time_ms;
	int64_t seq;
};

/* Growing result arrays (store.c owns the strings it is handed). */
int store_result_push_row(struct store_result *r, uint64_t seq,
			  int64_t time_ms, const char *target,
			  const char *sender, const char *command,
			  const char *line);
int store_result_push_target(struct store_result *r, const char *target,
			     int64_t last_time_ms);

struct store_network_info {
	int64_t id;
	char *name;
	uint64_t bytes;
};

struct store_db_ops {
	/* Connect, create or migrate the schema (create == true only for the
	 * first connection), read the database's random id. */
	struct store_db *(*open)(const struct store_options *o, bool create,
				 uint32_t *db_id, char *err, size_t errlen);
	void (*close)(struct store_db *db);
	const char *(*error)(struct store_db *db);

	/* ---- writer ---- */
	int (*begin)(struct store_db *db);
	int (*commit)(struct store_db *db);
	void (*rollback)(struct store_db *db);
	/* Reserve n seqs above max(next, floor): *first .. *first+n-1, in a
	 * transaction of its own, committed before it returns. */
	int (*reserve)(struct store_db *db, uint64_t floor, uint64_t n,
		       uint64_t *first);
	int (*network_id)(struct store_db *db, const char *network,
			  int64_t *id);
	int (*target_id)(struct store_db *db, int64_t network_id,
			 const char *target, int64_t *id);
	int (*insert)(struct store_db *db, uint64_t seq, int64_t network_id,
		      int64_t target_id, const struct store_msg *m);
	int (*add_bytes)(struct store_db *db, int64_t network_id,
			 int64_t lines, int64_t bytes);
	int (*set_position)(struct store_db *db, int64_t network_id,
			    const char *client, uint64_t seq);
	int (*set_marker)(struct store_db *db, int64_t target_id,
			  int64_t time_ms);
	/* Every network: id, name, stored bytes. */
	int (*networks)(struct store_db *db, struct store_network_info **out,
			size_t *n);
	/* The network's oldest messages by seq, at most n: seq, time, bytes of
	 * the line each (retention picks a prefix of them). Returns how many. */
	int (*oldest)(struct store_db *db, int64_t network_id, size_t n,
		      uint64_t *seq, int64_t *time_ms, uint64_t *bytes);
	/* Delete the network's messages with seq <= upto; *lines and *bytes
	 * say what went (what was there: another host may have deleted some). */
	int (*delete_upto)(struct store_db *db, int64_t network_id,
			   uint64_t upto, uint64_t *lines, uint64_t *bytes);

	/* Delete every message, position and read marker of a network in one
	 * transaction of its own (its network and target rows stay: writers
	 * cache their ids), its counters to 0; *lines: messages deleted. */
	int (*purge)(struct store_db *db, int64_t network_id, uint64_t *lines);

	/* ---- reader ---- */
	/* -ENOENT: no such network/target. */
	int (*find_target)(struct store_db *db, const char *network,
			   const char *target, int64_t *target_id);
	int (*find_network)(struct store_db *db, const char *network,
			    int64_t *network_id);
	/* A message by seq: its target id and time. -ENOENT. */
	int (*lookup)(struct store_db *db, uint64_t seq, int64_t *target_id,
		      int64_t *time_ms);
	/* Messages of a target with lo < key < hi, ascending (desc false) or
	 * descending, at most limit, appended to r. */
	int (*range)(struct store_db *db, int64_t target_id,
		     struct store_key lo, struct store_key hi, bool desc,
		     size_t limit, struct store_result *r);
	int (*replay)(struct store_db *db, int64_t network_id,
		      uint64_t after_seq, size_t limit, struct store_result *r);
	/* Targets with messages lo < time_ms < hi: latest time each, ordered
	 * by it (desc or not), at most limit. */
	int (*targets)(struct store_db *db, int64_t network_id, int64_t lo,
		       int64_t hi, bool desc, size_t limit,
		       struct store_result *r);
	int (*get_position)(struct store_db *db, const char *network,
			    const char *client, uint64_t *seq);
	int (*get_marker)(struct store_db *db, const char *network,
			  const char *target, int64_t *time_ms);
	/* Every read marker of a network: (target, time) into r's targets. */
	int (*markers)(struct store_db *db, int64_t network_id,
		       struct store_result *r);
	int (*stats)(struct store_db *db, uint64_t *lines, uint64_t *line_bytes,
		     uint64_t *disk_bytes);
};

extern const struct store_db_ops store_sqlite_ops;
extern const struct store_db_ops store_pg_ops;

#endif
