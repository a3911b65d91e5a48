/* model: the trace scaled to the run's size, precomputed.
 *
 * Channels: the trace's channels are replayed in K = ceil(nchans / T)
 * copies (T = channels in the trace); copy k maps trace channel j onto our
 * channel (k*T + j) mod nchans, named "#lg<index>". Each copy replays a
 * different part of the trace (wrapping around at its end), so the copies
 * are not synchronized and together sample the whole trace.
 *
 * Users: a trace nick in copy k is the identity who = k*nnicks + nick; the
 * driver gives each identity a network user (its own connection to the IRC
 * server) that joins, parts, quits and changes nick as the trace says
 * (membership churn and bursts as in the trace). A share of the trace's
 * speakers (chosen by a hash of the identity, so heavy talkers stay heavy)
 * speak through a bouncer user of that channel instead (fixed per identity
 * and channel): both sides of baton carry trace-shaped traffic.
 *
 * Copy k starts in its own k/K stratum of the trace, at the one of 32
 * candidate points whose window has the kind mix closest to the whole
 * trace's (a short run sees a few hundred events per copy; see pick_start()).
 *
 * Time: gaps longer than max_gap trace seconds (nights) are shortened to
 * max_gap, then time is compressed so that all copies together produce
 * `rate` events per second; simultaneous events stay simultaneous (bursts).
 *
 * Bouncer users: user u sits in chans_per_user channels drawn without
 * replacement with weights = distinct nicks of the trace channel behind
 * each of our channels (big channels stay big). This plan is deterministic
 * in (trace, parameters, seed): `baton-loadgen --emit-users` prints it for
 * whoever writes baton's config.
 *
 * The model owns everything it returns; it keeps a pointer to the trace,
 * which must outlive it. */
#ifndef LOADGEN_MODEL_H
#define LOADGEN_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "trace.h"

struct model_params {
	unsigned nchans;
	unsigned nbouncer;
	unsigned chans_per_user;
	double rate;          /* trace events per second, all copies together */
	double max_gap;       /* trace seconds */
	double bouncer_share; /* 0..1 */
	double duration;      /* seconds of schedule */
	uint64_t seed;
};

struct model_event {
	double at;                      /* seconds after traffic start */
	const struct trace_event *src;
	uint32_t who;                   /* copy * nnicks + nick */
	uint32_t newwho;                /* NICK: the identity it becomes */
	int32_t bouncer;                /* PRIVMSG: sent by this bouncer user, or -1 */
	uint16_t chan;                  /* our channel */
	uint8_t kind;                   /* enum lg_kind */
};

/* An identity in a channel before the schedule starts (its first event
 * there is not a JOIN): the driver joins it during setup. */
struct model_presence {
	uint32_t who;
	uint16_t chan;
};

struct model;

int model_new(const struct trace *tr, const struct model_params *p,
	      struct model **out, char *err, size_t errlen);
void model_free(struct model *m);

unsigned model_copies(const struct model *m);
uint32_t model_identities(const struct model *m);  /* copies * trace nicks */
double model_speed(const struct model *m);         /* trace s per real s */
/* "#lg<ch>" into buf; returns buf. */
const char *model_chan_name(unsigned ch, char *buf, size_t len);
/* Our channel index of "#lg<n>" (case-insensitive), or -1. */
int model_chan_index(const char *name, size_t len, unsigned nchans);
const uint16_t *model_user_chans(const struct model *m, unsigned user, unsigned *n);
const uint32_t *model_chan_members(const struct model *m, unsigned ch, unsigned *n);
const struct model_event *model_schedule(const struct model *m, size_t *n);
const struct model_presence *model_presence(const struct model *m, size_t *n);

#endif
