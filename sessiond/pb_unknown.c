/* sessiond/pb_unknown.c: see pb_unknown.h. */
#include "sessiond/pb_unknown.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void pb_unknown_clear(struct pb_unknown *u)
{
	ProtobufCMessageUnknownField *f = u->fields;
	for (size_t i = 0; i < u->n; i++)
		free(f[i].data);
	free(f);
	u->fields = NULL;
	u->n = 0;
}

int pb_unknown_copy(struct pb_unknown *u, const ProtobufCMessage *m)
{
	if (!m->n_unknown_fields)
		return 0;
	ProtobufCMessageUnknownField *f = calloc(m->n_unknown_fields, sizeof(*f));
	if (!f)
		return -ENOMEM;
	u->fields = f;
	for (unsigned i = 0; i < m->n_unknown_fields; i++) {
		f[i] = m->unknown_fields[i];
		f[i].data = malloc(f[i].len ? f[i].len : 1);
		if (!f[i].data) {
			u->n = i;
			return -ENOMEM;
		}
		memcpy(f[i].data, m->unknown_fields[i].data, f[i].len);
	}
	u->n = m->n_unknown_fields;
	return 0;
}

void pb_unknown_attach(ProtobufCMessage *m, const struct pb_unknown *u)
{
	m->n_unknown_fields = (unsigned)u->n;
	m->unknown_fields = u->fields;
}
