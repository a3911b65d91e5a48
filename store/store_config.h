/* store/store_config.h: the message store's options from baton's config
 * ([sessiond] store, store_path, store_url, store_queue_*, store_max_*;
 * common/config_keys.c), for the worker (sessiond/history.h) and for
 * batonctl (user del --purge) alike. */
#ifndef BATON_STORE_STORE_CONFIG_H
#define BATON_STORE_STORE_CONFIG_H

#include <stddef.h>

struct baton_config;
struct store_options;

/* Fills o (url points into path_buf or cfg: both must outlive o). A
 * relative store_path is under state_dir (resolved against the config's
 * folder). 0, -EINVAL (store = off, or postgres without store_url),
 * -ENAMETOOLONG, -ENOMEM. */
int store_options_from_config(const struct baton_config *cfg,
			      struct store_options *o, char *path_buf,
			      size_t path_len);

#endif
