/* ledger: numbered lines and the exactly-once, in-order check.
 *
 * Every generated PRIVMSG text starts with a header the ledger writes and
 * parses back:
 *
 *     lg <sender> <seq> <send_us> <padlen> <check>[ <padding>]
 *
 * (numbers in base 36; send_us counts from the ledger's epoch; padlen is
 * the padding's length in bytes; check is FNV-1a 32-bit, 8 hex digits, of
 * "lg <sender> <seq> <send_us> <padlen>" followed by the padding). The
 * padding brings the text to the sampled trace length. Checking the length
 * and the checksum on arrival catches a truncated or altered payload (and a
 * header whose numbers were altered into another valid line's): such a
 * line counts as `corrupted` and is not a delivery, so the line it claims
 * to be is still missing.
 *
 * A stream is one (sender, channel): seq counts 1, 2, 3... per stream, so
 * each receiver checks contiguity per stream: a gap is remembered as
 * missing (a hash set keyed by receiver, stream and seq; a late arrival of
 * a missing seq is out of order; anything else at or below the last seq is
 * a duplicate); what is still missing at the end, and the tail after the
 * last seq received, are lost.
 *
 * Receivers are fixed: the bouncer users 0..nbouncer-1 (each a member of
 * fixed channels for the whole run, across any number of connections: baton
 * replays what a client name missed) and one network-side observer (receiver
 * index nbouncer) that sits in every channel. A line is expected by every
 * member of its channel except its sender's own bouncer user (baton does not
 * echo a client's own lines: one arriving there is `foreign`, never a
 * delivery), and by the observer.
 *
 * Excuse windows (server or baton restarts) cover send times during which
 * delivery cannot be promised, but only for the receivers and senders the
 * restarted component stands between (see ledger_excuse_open()); a
 * delivery excused that way is counted apart (excused_*), never as
 * expected, lost or duplicated. Each receiver's part of a window ends on
 * its own (a client that reattached is covered no longer).
 *
 * Library style: no logging, no exit; allocation failures make
 * ledger_line() return 0 and count `internal_errors`. */
#ifndef LOADGEN_LEDGER_H
#define LOADGEN_LEDGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hist.h"

#define LEDGER_DURING_OP 0x02 /* line flag: sent while an --exec/upgrade command ran */

/* Sides, for excuse windows: as receivers, the bouncer users' clients or
 * the observer; as senders, bouncer clients or network users. */
#define LEDGER_CLIENTS 0x01
#define LEDGER_NETWORK 0x02

#define LEDGER_NEXAMPLES 12

#define LEDGER_NBAD 4096

struct ledger_stats {
	uint64_t lines;           /* numbered lines sent */
	uint64_t expected;        /* deliveries expected (not excused) */
	uint64_t delivered;       /* first deliveries of expected lines */
	uint64_t excused_lines;   /* lines with at least one excused delivery */
	uint64_t excused_expected;  /* deliveries inside excuse windows */
	uint64_t excused_delivered; /* ... of which arrived */
	uint64_t excused_missing;   /* ... of which never arrived (after ledger_finish) */
	uint64_t lost;            /* deliveries */
	uint64_t lost_lines;      /* distinct lines some receiver lost */
	uint64_t duplicated;
	uint64_t out_of_order;
	uint64_t foreign;         /* a line for a channel the receiver is not in, unknown sender, or an echo */
	uint64_t echoed;          /* of foreign: a line back at its own sender's bouncer user */
	uint64_t malformed;       /* "lg " but the header does not parse */
	uint64_t corrupted;       /* header parses, payload length or checksum wrong */
	uint64_t replayed;        /* first deliveries of lines sent before the connection attached */
	uint64_t receivers_bad;   /* receivers with any loss/dup/ooo */
	uint64_t internal_errors;
	struct hist lat_live;     /* live deliveries, all */
	struct hist lat_steady;   /* live, sent while no command ran */
	struct hist lat_op;       /* live, sent while an --exec command ran */
	struct hist lat_replay;   /* replayed: send -> arrival on the new connection */
	char examples[LEDGER_NEXAMPLES][160];
	unsigned nexamples;
	/* The receivers with problems, by index (bouncer users in order, the
	 * observer last), the first LEDGER_NBAD of them (after ledger_finish):
	 * a canary test checks that only the cohort's users lost lines. */
	uint32_t bad[LEDGER_NBAD];
	unsigned nbad;
};

struct ledger;

/* nreceivers = nbouncer + 1 (the observer is the last). */
struct ledger *ledger_new(unsigned nbouncer, unsigned nchans);
void ledger_free(struct ledger *l);

/* Monotonic microseconds. */
int64_t ledger_now_us(void);

/* Receiver r is a member of channel ch for the whole run (bouncer users
 * only; the observer is in every channel). */
int ledger_member(struct ledger *l, unsigned r, unsigned ch);

/* A new sender; owner = the bouncer user whose clients do not receive its
 * lines, or -1 (a network user). Returns its id, or -1 on ENOMEM. */
int64_t ledger_sender(struct ledger *l, int32_t owner);

/* Flags (LEDGER_*) given to lines sent from now on. */
void ledger_set_flags(struct ledger *l, uint8_t flags);
uint8_t ledger_flags(const struct ledger *l);

/* Numbers a line of sender to channel ch sent now and writes its text into
 * buf: the header, then a space and pad until the text is want_len bytes
 * long (at least the header; at most len-1). Returns the text length, or 0
 * on failure. */
size_t ledger_line(struct ledger *l, uint32_t sender, unsigned ch,
		   size_t want_len, const char *pad, size_t padlen,
		   char *buf, size_t len);

/* Receiver r got `text` (a PRIVMSG's trailing parameter, possibly wrapped in
 * CTCP ACTION) in channel ch at now_us; its connection attached at
 * since_us (earlier send times count as replayed). Text that does not start
 * with "lg " is ignored (returns false). */
bool ledger_deliver(struct ledger *l, unsigned r, int ch, const char *text,
		    size_t len, int64_t now_us, int64_t since_us);

/* Opens an excuse window: deliveries to the receivers of side `receivers`
 * (LEDGER_CLIENTS and/or LEDGER_NETWORK) of lines from senders of side
 * `senders`, sent from from_us (may be in the past: what was counted
 * already is moved to excused_*) until the receiver's part is ended.
 * Returns the window's id, or -ENOMEM. */
int ledger_excuse_open(struct ledger *l, unsigned receivers, unsigned senders, int64_t from_us);
/* Ends receiver r's part of window w at to_us (no-op if ended already or
 * not covered). */
void ledger_excuse_end(struct ledger *l, int w, unsigned r, int64_t to_us);
/* Ends every part of window w still open at to_us. */
void ledger_excuse_close(struct ledger *l, int w, int64_t to_us);

/* Expected deliveries (not excused at send) still outstanding. */
uint64_t ledger_outstanding(const struct ledger *l);

/* Counts what never arrived; call once, after draining. */
void ledger_finish(struct ledger *l);
const struct ledger_stats *ledger_stats(const struct ledger *l);

#endif
