/* sessiond/pb_unknown.h: protobuf fields this build does not know, kept from
 * an adopted state and written back when the object is serialized again
 * (proto/state.proto rule 4), so a rollback through this build loses
 * nothing a newer build wrote. The owner of a struct pb_unknown owns the
 * deep copy; pb_unknown_attach() lends it to a message being packed.
 */
#ifndef BATON_SESSIOND_PB_UNKNOWN_H
#define BATON_SESSIOND_PB_UNKNOWN_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

struct pb_unknown {
	size_t n;
	void *fields; /* ProtobufCMessageUnknownField[n], deep copied */
};

void pb_unknown_clear(struct pb_unknown *u); /* frees; u is empty after */
/* Copy m's unknown fields into an empty u: 0 or -ENOMEM (u holds what was
 * copied; pb_unknown_clear() frees it). */
int pb_unknown_copy(struct pb_unknown *u, const ProtobufCMessage *m);
/* Lend u's fields to m for packing (m must not outlive u). */
void pb_unknown_attach(ProtobufCMessage *m, const struct pb_unknown *u);

#endif
