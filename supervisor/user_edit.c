/* supervisor/user_edit.c: see user_edit.h. */
#include "supervisor/user_edit.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "common/config.h"
#include "common/log.h"
#include "common/session_edit.h"
#include "supervisor/releases.h"
#include "supervisor/supervisor.h"
#include "supervisor/worker_process.h"

void user_edit_on_request(struct worker *w, const Baton__Control__NetworkEdit *e,
			  void *arg)
{
	struct supervisor *sup = arg;
	struct config_problems pr = { 0 };
	struct baton_config *cfg = NULL;
	const char *busy = supervisor_reload_busy(sup), *no;
	char why[400], buf[200], sha[RELEASE_SHA256_HEX];
	int op = session_edit_op_parse(e->op), r;

	if (busy != NULL) {
		snprintf(why, sizeof(why), "not now: %s", busy);
		goto refuse;
	}
	if (op < 0) {
		snprintf(why, sizeof(why), "unknown edit");
		goto refuse;
	}
	/* The reload after the edit loads the whole file: what the operator
	 * changed in it without reloading would go live with it. */
	if (releases_sha256_file(supervisor_config_path(sup), sha, buf, sizeof(buf)) < 0) {
		log_warn("control", "user %s: edit refused: %s", e->user, buf);
		snprintf(why, sizeof(why), "the config file cannot be read now: the operator must fix it first");
		goto refuse;
	}
	if (strcmp(sha, supervisor_config_loaded(sup)) != 0) {
		log_warn("control", "user %s: edit refused: %s differs from what the serving worker loaded (batonctl reload applies it; undoing the change lets users edit again)",
			 e->user, supervisor_config_path(sup));
		snprintf(why, sizeof(why), "the operator has changes in the config file not yet loaded; ask them to reload it, then try again");
		goto refuse;
	}
	if (config_load(supervisor_config_path(sup), &cfg, &pr) != 0) {
		snprintf(why, sizeof(why), "the config has problems now: the operator must fix them first");
		goto refuse;
	}
	no = session_edit_user_check(cfg, (enum session_edit_op)op, e->user, e->network,
				     e->pairs, e->n_pairs, buf, sizeof(buf));
	if (no != NULL) {
		snprintf(why, sizeof(why), "%s", no);
		goto refuse;
	}
	r = session_edit_apply(supervisor_config_path(sup), (enum session_edit_op)op,
			       e->user, e->network, e->pairs, e->n_pairs, &pr, NULL, why,
			       sizeof(why));
	if (r < 0) {
		/* Problems name lines of the operator's file: logged for
		 * the operator, the user gets the sentence. */
		for (size_t i = 0; i < pr.n; i++)
			log_warn("control", "user %s: %s %s/%s refused: %s", e->user,
				 e->op, e->user, e->network, pr.msgs[i]);
		goto refuse;
	}
	log_info("control", "user %s: network %s %s/%s (%zu key%s): file edited, reloading",
		 e->user, session_edit_op_name((enum session_edit_op)op), e->user,
		 e->network, e->n_pairs, e->n_pairs == 1 ? "" : "s");
	config_free(cfg);
	config_problems_clear(&pr);
	/* ours, about to be loaded: the next user's edit need not wait for
	 * the reload's answer ("" when unreadable: it waits for a reload) */
	if (releases_sha256_file(supervisor_config_path(sup), sha, buf, sizeof(buf)) < 0)
		sha[0] = '\0';
	supervisor_config_written(sup, sha);
	(void)worker_send_network_edit_result(w, e->id, true, NULL);
	supervisor_reload(sup, NULL, NULL);
	return;
refuse:
	log_info("control", "user %.64s: network %.8s %.64s refused: %s", e->user, e->op,
		 e->network, why);
	config_free(cfg);
	config_problems_clear(&pr);
	(void)worker_send_network_edit_result(w, e->id, false, why);
}
