/* trace: the anonymized real IRC log (shared/traces/sample-trace.jsonl, one
 * JSON object per line: t, chan, nick, type, text | reason | newnick) loaded
 * into memory, with the statistics the load generator must reproduce.
 *
 * The trace owns every event and its text; events are sorted by time
 * (stable). Nicks and channels are interned to small integers. A NICK event
 * carries the new nick's id in `aux`; a QUIT its reason in the text pool. */
#ifndef LOADGEN_TRACE_H
#define LOADGEN_TRACE_H

#include <stddef.h>
#include <stdint.h>

#include "hist.h"

/* The event kinds that make the mix (an ACTION counts as a PRIVMSG). */
enum lg_kind { LG_PRIVMSG, LG_JOIN, LG_PART, LG_QUIT, LG_NICK, LG_NKINDS };

extern const char *const lg_kind_names[LG_NKINDS];

struct trace_event {
	double t;          /* trace seconds */
	uint32_t nick;     /* interned nick */
	uint32_t aux;      /* NICK: interned new nick */
	uint32_t text_off; /* into trace->text (privmsg text, quit reason) */
	uint16_t text_len; /* bytes */
	uint16_t chan;     /* interned channel */
	uint8_t kind;      /* enum lg_kind */
	uint8_t action;    /* a CTCP ACTION (a PRIVMSG in the mix) */
};

struct trace {
	struct trace_event *ev;
	size_t nev;
	char *text;        /* every text, NUL-separated, CR/LF/NUL removed */
	size_t text_len;
	size_t nchans;
	char **chans;
	uint32_t *chan_nicks;    /* distinct nicks per channel */
	uint64_t *chan_events;   /* events per channel */
	uint32_t nnicks;
	uint64_t kinds[LG_NKINDS];
	struct hist msg_len;     /* privmsg/action text, bytes */
	double span;             /* last t - first t */
};

/* Loads and analyses PATH. On failure returns a negative errno and writes a
 * message (file:line and why) to err. */
int trace_load(const char *path, struct trace **out, char *err, size_t errlen);
void trace_free(struct trace *tr);

/* Share (0..1) of kind k among all events. */
double trace_mix(const struct trace *tr, enum lg_kind k);

static inline const char *trace_text(const struct trace *tr,
				     const struct trace_event *e)
{
	return tr->text + e->text_off;
}

#endif
