/* store/store_config.c: see store_config.h. */
#include "store/store_config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "store/store.h"

int store_options_from_config(const struct baton_config *cfg,
			      struct store_options *o, char *path_buf,
			      size_t path_len)
{
	memset(o, 0, sizeof *o);
	if (cfg->store_backend == CONFIG_STORE_OFF)
		return -EINVAL;
	if (cfg->store_backend == CONFIG_STORE_POSTGRES) {
		if (!cfg->store_url || !cfg->store_url[0])
			return -EINVAL;
		o->backend = STORE_POSTGRES;
		o->url = cfg->store_url;
	} else {
		const char *p = cfg->store_path ? cfg->store_path : "messages.db";
		int n;

		if (p[0] == '/') {
			n = snprintf(path_buf, path_len, "%s", p);
		} else {
			char *state = config_resolve(cfg, cfg->state_dir ? cfg->state_dir : "state");
			if (!state)
				return -ENOMEM;
			n = snprintf(path_buf, path_len, "%s/%s", state, p);
			free(state);
		}
		if (n < 0 || (size_t)n >= path_len)
			return -ENAMETOOLONG;
		o->backend = STORE_SQLITE;
		o->url = path_buf;
	}
	o->queue_ops = (size_t)CONFIG_INT_OR_DEFAULT(cfg, store_queue_ops);
	o->queue_bytes = (size_t)CONFIG_INT_OR_DEFAULT(cfg, store_queue_bytes);
	o->commit_window_ms = cfg->store_commit_ms;
	o->max_age_ms = (int64_t)cfg->store_max_age_days * 86400 * 1000;
	o->max_bytes = (uint64_t)cfg->store_max_mb << 20;
	return 0;
}

