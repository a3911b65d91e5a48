/* common/config_keys.h: the key table, the one description of every config
 * key (section, name, type and range, default, documentation). The parser
 * and the defaults in config.c and the generator of docs/config.md
 * (tools/config_doc.c) read it; nothing else should. Adding a key: one
 * entry in config_keys.c (plus its field in config.h), then
 * scripts/gen-config-doc.
 */
#ifndef BATON_COMMON_CONFIG_KEYS_H
#define BATON_COMMON_CONFIG_KEYS_H

#include <stddef.h>

/* Where a key may appear, and which struct its offset is into. */
enum config_section {
	CONFIG_SUPERVISOR, /* [supervisor]: struct baton_config */
	CONFIG_SESSIOND,   /* [sessiond]: struct baton_config */
	CONFIG_LISTEN,     /* [listen]: struct baton_config */
	CONFIG_CANARY,     /* [canary]: struct baton_config */
	CONFIG_NETWORK,    /* [network NAME]: struct config_network */
	CONFIG_USER,       /* [user NAME]: struct config_user */
	CONFIG_SESSION,    /* [user NAME/NETWORK]: struct config_session */
};

enum config_type {
	CONFIG_INT,      /* int from min to max */
	CONFIG_BOOL,     /* int 0 or 1: yes/no, true/false, on/off, 1/0 */
	CONFIG_STRING,   /* char *, as written (paths resolved where used) */
	CONFIG_PATH,     /* char *, resolved against the config's folder */
	CONFIG_HOSTPORT, /* char *, HOST:PORT or [V6]:PORT, as written */
	CONFIG_PORT,     /* char *, a number from 1 to 65535 */
	CONFIG_ENUM,     /* an int-sized enum set by parse(); def: its default */
	CONFIG_CUSTOM,   /* parse() */
};

struct config_parse;

struct config_key {
	enum config_section section;
	const char *name;
	enum config_type type;
	size_t offset;      /* of the field in the section's struct */
	/* of an int that receives the line the key was set on (--check
	 * reports file problems there); 0: not kept (offset 0 is always a
	 * name or path, never a line) */
	size_t line_offset;
	int min, max;       /* CONFIG_INT */
	int def;            /* CONFIG_INT, CONFIG_BOOL, CONFIG_ENUM: the default */
	const char *def_str;/* string types: the default, NULL: none */
	/* CONFIG_ENUM, CONFIG_CUSTOM: store value into obj (the section's struct); a
	 * problem is reported with config_key_problem(). */
	void (*parse)(struct config_parse *ps, const struct config_key *k,
		      void *obj, const char *value);

	/* docs/config.md */
	const char *table;  /* the template's @keys NAME@ (NULL: the section's name) */
	const char *doc_key;     /* key column when more than the name */
	const char *doc_default; /* default column when not the value itself */
	const char *doc;         /* meaning column */
};

extern const struct config_key config_keys[];
extern const size_t config_nkeys;

/* "supervisor", ..., "network NAME", "user NAME", "user NAME/NETWORK". */
const char *config_section_name(enum config_section s);
/* The name of the doc table a key goes into (key->table or its section's). */
const char *config_key_table(const struct config_key *k);

/* The custom parsers (config.c). */
void config_parse_listener(struct config_parse *ps, const struct config_key *k,
			  void *cfg, const char *value);
void config_parse_fingerprint(struct config_parse *ps, const struct config_key *k,
			  void *network, const char *value);
void config_parse_bind(struct config_parse *ps, const struct config_key *k,
			  void *network, const char *value);
void config_parse_member_lists(struct config_parse *ps, const struct config_key *k,
			       void *network, const char *value);
void config_parse_user_networks(struct config_parse *ps, const struct config_key *k,
				void *cfg, const char *value);
void config_parse_channels(struct config_parse *ps, const struct config_key *k,
			  void *session, const char *value);
void config_parse_store(struct config_parse *ps, const struct config_key *k,
			void *cfg, const char *value);
void config_parse_sasl(struct config_parse *ps, const struct config_key *k,
		       void *session, const char *value);

#endif
