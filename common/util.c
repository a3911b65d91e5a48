/* common/util.c: see util.h. */
#include "common/util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

char *util_strdup(const char *s)
{
	return s ? strdup(s) : NULL;
}

void util_strv_free(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

int util_strv_push(char ***v, size_t *n, const char *s)
{
	char *copy = strdup(s);
	if (!copy)
		return -ENOMEM;
	char **nv = realloc(*v, (*n + 1) * sizeof(char *));
	if (!nv) {
		free(copy);
		return -ENOMEM;
	}
	*v = nv;
	nv[(*n)++] = copy;
	return 0;
}
