/* common/json_builder.h: building JSON documents (json-c) under the
 * out-of-memory policy of common/util.h. Header only: for the programs that
 * link json-c (supervisor, batonctl).
 *
 * json-c reports a failed allocation as a NULL object, and
 * json_object_object_add() / json_object_array_add() take NULL as a JSON
 * null without a word: a document built with the plain calls silently
 * holds nulls where values failed (a releases.json on disk, a status
 * reply). These wrappers note every failure in the builder; the document
 * is used only if none was noted:
 *
 *   struct jb jb = JB_INIT;
 *   struct json_object *o = jb_obj(&jb);
 *   jb_add(&jb, o, "version", jb_str(&jb, v));
 *   jb_add(&jb, o, "reason", r ? jb_str(&jb, r) : NULL); // a null on purpose
 *   jb_add(&jb, o, "side", jb_note(&jb, side_json(s)));  // NULL: it failed
 *   return jb_done(&jb, o);                              // NULL if any failed
 *
 * A NULL container is fine to add to (the value is dropped, the failure was
 * noted when the container was made), so the building code has no checks
 * of its own.
 */
#ifndef BATON_COMMON_JSON_BUILDER_H
#define BATON_COMMON_JSON_BUILDER_H

#include <stdbool.h>
#include <stdint.h>

#include <json-c/json.h>

struct jb {
	bool oom; /* an allocation failed: the document is incomplete */
};
#define JB_INIT { false }

/* v as is; NULL notes a failure (the result of a builder that fails with
 * NULL, or of a json-c constructor). */
static inline struct json_object *jb_note(struct jb *b, struct json_object *v)
{
	if (v == NULL)
		b->oom = true;
	return v;
}

static inline struct json_object *jb_obj(struct jb *b)
{
	return jb_note(b, json_object_new_object());
}

static inline struct json_object *jb_arr(struct jb *b)
{
	return jb_note(b, json_object_new_array());
}

static inline struct json_object *jb_str(struct jb *b, const char *s)
{
	return jb_note(b, json_object_new_string(s));
}

static inline struct json_object *jb_int(struct jb *b, int32_t v)
{
	return jb_note(b, json_object_new_int(v));
}

static inline struct json_object *jb_i64(struct jb *b, int64_t v)
{
	return jb_note(b, json_object_new_int64(v));
}

static inline struct json_object *jb_double(struct jb *b, double v)
{
	return jb_note(b, json_object_new_double(v));
}

static inline struct json_object *jb_bool(struct jb *b, bool v)
{
	return jb_note(b, json_object_new_boolean(v));
}

/* o[key] = v (owned by o from here; NULL: a JSON null). */
static inline void jb_add(struct jb *b, struct json_object *o, const char *key,
			  struct json_object *v)
{
	if (o == NULL || json_object_object_add(o, key, v) < 0) {
		json_object_put(v);
		b->oom = true;
	}
}

/* Append v to array a (owned by a from here; NULL: a JSON null). */
static inline void jb_push(struct jb *b, struct json_object *a,
			   struct json_object *v)
{
	if (a == NULL || json_object_array_add(a, v) < 0) {
		json_object_put(v);
		b->oom = true;
	}
}

/* The finished document, or NULL (o released) if anything failed. */
static inline struct json_object *jb_done(struct jb *b, struct json_object *o)
{
	if (b->oom) {
		json_object_put(o);
		return NULL;
	}
	return o;
}

#endif
