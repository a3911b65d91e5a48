/* ledger: see ledger.h. */
#include "ledger.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LINE_EXCUSED 0x80 /* internal flag: counted in excused_lines */

struct line {
	int64_t send_us;
	uint32_t stream, seq; /* to find its receivers when a window opens late */
	uint8_t flags;
	uint8_t lost;  /* some receiver never got it (counted in lost_lines once) */
};

struct stream {
	uint32_t sender;
	uint16_t chan;
	uint32_t n, cap;
	uint32_t *lines; /* seq - 1 -> index into l->lines */
};

struct sender {
	int32_t owner;
	uint16_t nstreams, cap;
	uint32_t *streams;
};

struct rstate {
	uint64_t key; /* (receiver << 32 | stream) + 1; 0 = empty */
	uint32_t last;
	uint32_t bad; /* this receiver/stream had a problem */
};

/* A seq a receiver skipped: an open-addressing hash set entry (seq 0 =
 * empty), so a late or duplicate arrival is one lookup, not a scan of
 * every gap of the run. */
struct missing {
	uint32_t r, stream, seq;
	uint8_t resolved;
};

/* A window's part per receiver: NOT_COVERED, OPEN, or its end. */
#define NOT_COVERED INT64_MIN
#define OPEN INT64_MAX

struct window {
	int64_t from;
	unsigned senders;  /* LEDGER_CLIENTS / LEDGER_NETWORK */
	unsigned nparts;   /* receivers whose part is still OPEN */
	int64_t *to;       /* per receiver (nbouncer + 1) */
};

struct ledger {
	unsigned nbouncer, nchans;
	int64_t epoch;
	uint8_t flags;
	struct line *lines;
	size_t nlines, lines_cap;
	struct stream *streams;
	size_t nstreams, streams_cap;
	struct sender *senders;
	size_t nsenders, senders_cap;
	uint32_t **chan_members;
	uint32_t *nchan_members, *chan_members_cap;
	uint16_t **rchans;       /* per bouncer receiver: its channels */
	uint8_t *nrchans;
	struct rstate *rs;
	size_t nrs, rs_cap;
	struct missing *miss;    /* hash set, miss_cap a power of two */
	size_t nmiss, miss_cap;
	struct window *win;
	size_t nwin, nopen;      /* nopen: windows with a part still open */
	uint8_t *rbad;           /* per receiver */
	struct ledger_stats st;
};

int64_t ledger_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

static int grow(void **v, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return 0;
	size_t nc = *cap ? *cap * 2 : 64;
	while (nc < need)
		nc *= 2;
	void *nv = realloc(*v, nc * elem);
	if (!nv)
		return -ENOMEM;
	*v = nv;
	*cap = nc;
	return 0;
}

static int grow32(uint32_t **v, uint32_t *cap, size_t need)
{
	size_t c = *cap;
	int r = grow((void **)v, &c, need, sizeof(**v));
	*cap = (uint32_t)c;
	return r;
}

static void example(struct ledger *l, const char *fmt, ...)
{
	if (l->st.nexamples >= LEDGER_NEXAMPLES)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(l->st.examples[l->st.nexamples++], sizeof(l->st.examples[0]), fmt, ap);
	va_end(ap);
}

struct ledger *ledger_new(unsigned nbouncer, unsigned nchans)
{
	struct ledger *l = calloc(1, sizeof(*l));
	if (!l)
		return NULL;
	l->nbouncer = nbouncer;
	l->nchans = nchans;
	l->epoch = ledger_now_us();
	l->chan_members = calloc(nchans, sizeof(*l->chan_members));
	l->nchan_members = calloc(nchans, sizeof(uint32_t));
	l->chan_members_cap = calloc(nchans, sizeof(uint32_t));
	l->rchans = calloc(nbouncer + 1, sizeof(*l->rchans));
	l->nrchans = calloc(nbouncer + 1, 1);
	l->rbad = calloc(nbouncer + 1, 1);
	if (!l->chan_members || !l->nchan_members || !l->chan_members_cap ||
	    !l->rchans || !l->nrchans || !l->rbad) {
		ledger_free(l);
		return NULL;
	}
	return l;
}

void ledger_free(struct ledger *l)
{
	if (!l)
		return;
	for (size_t i = 0; i < l->nstreams; i++)
		free(l->streams[i].lines);
	for (size_t i = 0; i < l->nsenders; i++)
		free(l->senders[i].streams);
	for (unsigned c = 0; l->chan_members && c < l->nchans; c++)
		free(l->chan_members[c]);
	for (unsigned r = 0; l->rchans && r <= l->nbouncer; r++)
		free(l->rchans[r]);
	free(l->chan_members);
	free(l->nchan_members);
	free(l->chan_members_cap);
	free(l->rchans);
	free(l->nrchans);
	free(l->rbad);
	free(l->lines);
	free(l->streams);
	free(l->senders);
	free(l->rs);
	free(l->miss);
	for (size_t i = 0; i < l->nwin; i++)
		free(l->win[i].to);
	free(l->win);
	free(l);
}

int ledger_member(struct ledger *l, unsigned r, unsigned ch)
{
	if (r >= l->nbouncer || ch >= l->nchans || l->nrchans[r] == 255)
		return -EINVAL;
	uint16_t *nv = realloc(l->rchans[r], (l->nrchans[r] + 1) * sizeof(*nv));
	if (!nv)
		return -ENOMEM;
	l->rchans[r] = nv;
	nv[l->nrchans[r]++] = (uint16_t)ch;
	if (grow32(&l->chan_members[ch], &l->chan_members_cap[ch], l->nchan_members[ch] + 1) < 0)
		return -ENOMEM;
	l->chan_members[ch][l->nchan_members[ch]++] = r;
	return 0;
}

static bool is_member(const struct ledger *l, unsigned r, unsigned ch)
{
	if (r == l->nbouncer)
		return true; /* the observer */
	for (unsigned i = 0; i < l->nrchans[r]; i++)
		if (l->rchans[r][i] == ch)
			return true;
	return false;
}

int64_t ledger_sender(struct ledger *l, int32_t owner)
{
	if (grow((void **)&l->senders, &l->senders_cap, l->nsenders + 1, sizeof(*l->senders)) < 0)
		return -1;
	l->senders[l->nsenders] = (struct sender){ .owner = owner };
	return (int64_t)l->nsenders++;
}

void ledger_set_flags(struct ledger *l, uint8_t flags) { l->flags = flags; }
uint8_t ledger_flags(const struct ledger *l) { return l->flags; }

static int64_t stream_of(struct ledger *l, uint32_t sender, unsigned ch, bool create)
{
	struct sender *s = &l->senders[sender];
	for (unsigned i = 0; i < s->nstreams; i++)
		if (l->streams[s->streams[i]].chan == ch)
			return s->streams[i];
	if (!create)
		return -1;
	size_t scap = s->cap;
	if (grow((void **)&s->streams, &scap, s->nstreams + 1, sizeof(uint32_t)) < 0 ||
	    grow((void **)&l->streams, &l->streams_cap, l->nstreams + 1, sizeof(*l->streams)) < 0)
		return -1;
	s->cap = (uint16_t)(scap > 65535 ? 65535 : scap);
	uint32_t id = (uint32_t)l->nstreams++;
	l->streams[id] = (struct stream){ .sender = sender, .chan = (uint16_t)ch };
	s->streams[s->nstreams++] = id;
	return id;
}

static char *b36(char *end, uint64_t v)
{
	static const char dig[] = "0123456789abcdefghijklmnopqrstuvwxyz";
	*--end = '\0';
	do {
		*--end = dig[v % 36];
		v /= 36;
	} while (v);
	return end;
}

/* FNV-1a 32-bit, continued from h (start with FNV_INIT). */
#define FNV_INIT 0x811c9dc5u
static uint32_t fnv1a(uint32_t h, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		h ^= (uint8_t)p[i];
		h *= 0x01000193u;
	}
	return h;
}

static size_t b36len(uint64_t v)
{
	size_t n = 1;
	while (v >= 36) {
		v /= 36;
		n++;
	}
	return n;
}

static bool excused_upto(const struct ledger *l, unsigned r, const struct line *ln, size_t nwin);

static bool excused(const struct ledger *l, unsigned r, const struct line *ln)
{
	return l->nwin && excused_upto(l, r, ln, l->nwin);
}

/* Receiver k (0..n-1) of a line of stream st: the channel's members but the
 * sender's own bouncer user, then the observer; returns false past the end. */
static bool receiver_at(const struct ledger *l, const struct stream *st, uint32_t *k, unsigned *r)
{
	int32_t owner = l->senders[st->sender].owner;
	for (;;) {
		uint32_t i = (*k)++;
		if (i > l->nchan_members[st->chan])
			return false;
		*r = i < l->nchan_members[st->chan] ? l->chan_members[st->chan][i] : l->nbouncer;
		if (owner < 0 || (unsigned)owner != *r)
			return true;
	}
}

/* Counts a new line's deliveries as expected or excused. */
static void count_expected(struct ledger *l, struct line *ln)
{
	const struct stream *st = &l->streams[ln->stream];
	uint32_t k = 0;
	unsigned r;
	while (receiver_at(l, st, &k, &r)) {
		if (l->nopen && excused(l, r, ln)) {
			l->st.excused_expected++;
			if (!(ln->flags & LINE_EXCUSED)) {
				ln->flags |= LINE_EXCUSED;
				l->st.excused_lines++;
			}
		} else {
			l->st.expected++;
		}
	}
}

size_t ledger_line(struct ledger *l, uint32_t sender, unsigned ch,
		   size_t want_len, const char *pad, size_t padlen,
		   char *buf, size_t len)
{
	if (sender >= l->nsenders || ch >= l->nchans || len < 64)
		goto fail;
	int64_t sid = stream_of(l, sender, ch, true);
	if (sid < 0)
		goto fail;
	struct stream *st = &l->streams[sid];
	size_t scap = st->cap;
	if (grow((void **)&l->lines, &l->lines_cap, l->nlines + 1, sizeof(*l->lines)) < 0 ||
	    grow((void **)&st->lines, &scap, st->n + 1, sizeof(uint32_t)) < 0)
		goto fail;
	st->cap = (uint32_t)scap;
	int64_t now = ledger_now_us();
	st->lines[st->n++] = (uint32_t)l->nlines;
	struct line *ln = &l->lines[l->nlines++];
	*ln = (struct line){ .send_us = now, .stream = (uint32_t)sid, .seq = st->n,
			     .flags = l->flags };
	char a[16], b[16], c[16];
	int n = snprintf(buf, len, "lg %s %s %s ", b36(a + sizeof(a), sender),
			 b36(b + sizeof(b), st->n), b36(c + sizeof(c), (uint64_t)(now - l->epoch)));
	size_t fixed = (size_t)n; /* "lg S Q T " */
	if (want_len > len - 1)
		want_len = len - 1;
	/* the padding fills what the header leaves of want_len: the
	 * header's own length depends on padlen's digits, so shrink until
	 * both fit (a byte short of want_len at a digit boundary) */
	size_t plen = 0;
	if (want_len > fixed + 1 + 1 + 8 + 1) {
		plen = want_len - (fixed + 1 + 1 + 8 + 1);
		while (plen && fixed + b36len(plen) + 1 + 8 + 1 + plen > want_len)
			plen--;
	}
	char d[16];
	size_t tl = fixed;
	tl += (size_t)snprintf(buf + tl, len - tl, "%s", b36(d + sizeof(d), plen));
	char *body = buf + tl + 1 + 8 + 1;
	size_t k = 0;
	for (size_t i = 0; i < plen; i++) {
		char ch2 = padlen ? pad[k++ % padlen] : 'x';
		/* never a CR, LF, NUL or CTCP marker inside the text */
		body[i] = (ch2 == '\r' || ch2 == '\n' || ch2 == '\0' || ch2 == '\001') ? ' ' : ch2;
	}
	/* a trailing space may be stripped by someone: end on a dot */
	if (plen && body[plen - 1] == ' ')
		body[plen - 1] = '.';
	uint32_t h = fnv1a(fnv1a(FNV_INIT, buf, tl), body, plen);
	snprintf(buf + tl, len - tl, " %08x", h);
	tl += 9;
	if (plen) {
		buf[tl] = ' ';
		tl += 1 + plen;
	}
	buf[tl] = '\0';
	l->st.lines++;
	count_expected(l, ln);
	return tl;
fail:
	l->st.internal_errors++;
	return 0;
}

/* ---- receiver state ---- */

static struct rstate *rs_get(struct ledger *l, uint32_t r, uint32_t stream, bool create)
{
	uint64_t key = (((uint64_t)r << 32) | stream) + 1;
	if (create && (l->nrs + 1) * 2 > l->rs_cap) {
		size_t nc = l->rs_cap ? l->rs_cap * 2 : 65536;
		struct rstate *nv = calloc(nc, sizeof(*nv));
		if (!nv)
			return NULL;
		for (size_t i = 0; i < l->rs_cap; i++)
			if (l->rs[i].key) {
				size_t j = mix64(l->rs[i].key) & (nc - 1);
				while (nv[j].key)
					j = (j + 1) & (nc - 1);
				nv[j] = l->rs[i];
			}
		free(l->rs);
		l->rs = nv;
		l->rs_cap = nc;
	}
	if (!l->rs_cap)
		return NULL;
	size_t j = mix64(key) & (l->rs_cap - 1);
	while (l->rs[j].key) {
		if (l->rs[j].key == key)
			return &l->rs[j];
		j = (j + 1) & (l->rs_cap - 1);
	}
	if (!create)
		return NULL;
	l->rs[j].key = key;
	l->nrs++;
	return &l->rs[j];
}

static bool excused_upto(const struct ledger *l, unsigned r, const struct line *ln, size_t nwin)
{
	int32_t owner = l->senders[l->streams[ln->stream].sender].owner;
	unsigned side = owner >= 0 ? LEDGER_CLIENTS : LEDGER_NETWORK;
	for (size_t i = 0; i < nwin; i++) {
		const struct window *w = &l->win[i];
		if ((w->senders & side) && ln->send_us >= w->from && ln->send_us <= w->to[r])
			return true; /* NOT_COVERED (INT64_MIN) never is */
	}
	return false;
}

/* ---- the missing set ---- */

static size_t miss_slot(const struct ledger *l, uint32_t r, uint32_t stream, uint32_t seq)
{
	return mix64(((uint64_t)r << 32 | stream) ^ ((uint64_t)seq * 0x9e3779b97f4a7c15ULL)) &
	       (l->miss_cap - 1);
}

static struct missing *miss_find(const struct ledger *l, uint32_t r, uint32_t stream, uint32_t seq)
{
	if (!l->miss_cap)
		return NULL;
	for (size_t j = miss_slot(l, r, stream, seq); l->miss[j].seq; j = (j + 1) & (l->miss_cap - 1)) {
		const struct missing *m = &l->miss[j];
		if (m->seq == seq && m->r == r && m->stream == stream)
			return &l->miss[j];
	}
	return NULL;
}

/* Each (r, stream, seq) is added at most once: the gap is passed once. */
static int miss_add(struct ledger *l, uint32_t r, uint32_t stream, uint32_t seq)
{
	if ((l->nmiss + 1) * 2 > l->miss_cap) {
		size_t oc = l->miss_cap, nc = oc ? oc * 2 : 1024;
		struct missing *old = l->miss, *nv = calloc(nc, sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		l->miss = nv;
		l->miss_cap = nc;
		for (size_t i = 0; i < oc; i++)
			if (old[i].seq) {
				size_t j = miss_slot(l, old[i].r, old[i].stream, old[i].seq);
				while (nv[j].seq)
					j = (j + 1) & (nc - 1);
				nv[j] = old[i];
			}
		free(old);
	}
	size_t j = miss_slot(l, r, stream, seq);
	while (l->miss[j].seq)
		j = (j + 1) & (l->miss_cap - 1);
	l->miss[j] = (struct missing){ r, stream, seq, 0 };
	l->nmiss++;
	return 0;
}

/* Has receiver r got seq of stream (as far as the ledger knows now)? */
static bool got(struct ledger *l, uint32_t r, uint32_t stream, uint32_t seq)
{
	const struct rstate *rs = rs_get(l, r, stream, false);
	if (!rs || seq > rs->last)
		return false;
	const struct missing *m = miss_find(l, r, stream, seq);
	return !m || m->resolved;
}

static bool parse_b36(const char **p, const char *end, uint64_t *out)
{
	uint64_t v = 0;
	const char *s = *p;
	if (s >= end)
		return false;
	/* a field ends at a space, the text's end or a CTCP ACTION's \001 */
	while (s < end && *s != ' ' && *s != '\001') {
		char c = *s++;
		unsigned d;
		if (c >= '0' && c <= '9')
			d = (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'z')
			d = (unsigned)(c - 'a' + 10);
		else
			return false;
		if (v > (UINT64_MAX - d) / 36)
			return false;
		v = v * 36 + d;
	}
	*p = s < end ? s + 1 : s;
	*out = v;
	return true;
}

static void first_delivery(struct ledger *l, unsigned r, const struct line *ln, int64_t now_us,
			   int64_t since_us)
{
	uint64_t lat = now_us > ln->send_us ? (uint64_t)(now_us - ln->send_us) : 0;
	if (excused(l, r, ln)) {
		l->st.excused_delivered++;
		return;
	}
	l->st.delivered++;
	if (ln->send_us < since_us) {
		l->st.replayed++;
		hist_add(&l->st.lat_replay, lat);
		return;
	}
	hist_add(&l->st.lat_live, lat);
	hist_add((ln->flags & LEDGER_DURING_OP) ? &l->st.lat_op : &l->st.lat_steady, lat);
}

static bool parse_hex32(const char **p, const char *end, uint32_t *out)
{
	const char *s = *p;
	uint32_t v = 0;
	if (end - s < 8)
		return false;
	for (int i = 0; i < 8; i++) {
		char c = s[i];
		unsigned d;
		if (c >= '0' && c <= '9')
			d = (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			d = (unsigned)(c - 'a' + 10);
		else
			return false;
		v = v << 4 | d;
	}
	s += 8;
	if (s < end && *s != ' ')
		return false;
	*p = s < end ? s + 1 : s;
	*out = v;
	return true;
}

bool ledger_deliver(struct ledger *l, unsigned r, int ch, const char *text,
		    size_t len, int64_t now_us, int64_t since_us)
{
	const char *p = text, *end = text + len;
	uint64_t sender, seq, rel, plen;
	uint32_t check;

	if (len > 8 && !memcmp(p, "\001ACTION ", 8)) {
		p += 8;
		/* the closing \001 is ours too: missing, the text was cut */
		if (end > p && end[-1] == '\001')
			end--;
	}
	if (end - p < 4 || memcmp(p, "lg ", 3) != 0)
		return false;
	const char *hdr = p;
	p += 3;
	if (!parse_b36(&p, end, &sender) || !parse_b36(&p, end, &seq) ||
	    !parse_b36(&p, end, &rel) || !parse_b36(&p, end, &plen)) {
		l->st.malformed++;
		return true;
	}
	const char *hdr_end = p - 1; /* the space before the check */
	if (p > end || hdr_end[0] != ' ' || !parse_hex32(&p, end, &check)) {
		l->st.malformed++;
		return true;
	}
	/* p: the padding (or end); the header's numbers are only trusted
	 * once length and checksum agree */
	if ((uint64_t)(end - p) != plen ||
	    fnv1a(fnv1a(FNV_INIT, hdr, (size_t)(hdr_end - hdr)), p, (size_t)(end - p)) != check) {
		l->st.corrupted++;
		example(l, "receiver %u: corrupted line in #lg%d (payload %zu bytes, header says %llu; %.60s)",
			r, ch, (size_t)(end - p), (unsigned long long)plen, hdr);
		return true;
	}
	if (r > l->nbouncer || ch < 0 || sender >= l->nsenders || seq == 0 ||
	    !is_member(l, r, (unsigned)ch)) {
		l->st.foreign++;
		example(l, "receiver %u: line of unknown sender %llu or channel %d it is not in",
			r, (unsigned long long)sender, ch);
		return true;
	}
	if (r < l->nbouncer && l->senders[sender].owner == (int32_t)r) {
		/* baton does not echo a client's own lines back to it: counted
		 * as a delivery this would inflate `delivered` and hide losses */
		l->st.foreign++;
		l->st.echoed++;
		example(l, "receiver %u: its own line %llu of sender %llu in #lg%d echoed back",
			r, (unsigned long long)seq, (unsigned long long)sender, ch);
		return true;
	}
	int64_t sid = stream_of(l, (uint32_t)sender, (unsigned)ch, false);
	if (sid < 0 || seq > l->streams[sid].n) {
		l->st.foreign++;
		example(l, "receiver %u: line %llu of sender %llu in #lg%d was never sent",
			r, (unsigned long long)seq, (unsigned long long)sender, ch);
		return true;
	}
	struct stream *st = &l->streams[sid];
	struct rstate *rs = rs_get(l, r, (uint32_t)sid, true);
	if (!rs) {
		l->st.internal_errors++;
		return true;
	}
	const struct line *ln = &l->lines[st->lines[seq - 1]];
	if (seq > rs->last) {
		/* a gap: remember each missing seq */
		for (uint32_t s = rs->last + 1; s < seq; s++)
			if (miss_add(l, r, (uint32_t)sid, s) < 0) {
				l->st.internal_errors++;
				break;
			}
		rs->last = (uint32_t)seq;
		first_delivery(l, r, ln, now_us, since_us);
		return true;
	}
	/* seq <= last: a late missing one, or a duplicate */
	struct missing *m = miss_find(l, r, (uint32_t)sid, (uint32_t)seq);
	if (m && !m->resolved) {
		m->resolved = 1;
		if (!excused(l, r, ln)) {
			l->st.out_of_order++;
			l->rbad[r] = 1;
			example(l, "receiver %u: line %llu of sender %llu in #lg%d out of order",
				r, (unsigned long long)seq, (unsigned long long)sender, ch);
		}
		first_delivery(l, r, ln, now_us, since_us);
		return true;
	}
	if (!excused(l, r, ln)) {
		l->st.duplicated++;
		l->rbad[r] = 1;
		example(l, "receiver %u: line %llu of sender %llu in #lg%d duplicated (%.3f s after sending)",
			r, (unsigned long long)seq, (unsigned long long)sender, ch,
			(double)(now_us - ln->send_us) / 1e6);
	}
	return true;
}

/* ---- excuse windows ---- */

int ledger_excuse_open(struct ledger *l, unsigned receivers, unsigned senders, int64_t from_us)
{
	struct window *nv = realloc(l->win, (l->nwin + 1) * sizeof(*nv));
	if (!nv)
		return -ENOMEM;
	l->win = nv;
	int64_t *to = malloc((l->nbouncer + 1) * sizeof(*to));
	if (!to)
		return -ENOMEM;
	unsigned nparts = 0;
	for (unsigned r = 0; r <= l->nbouncer; r++) {
		bool covered = r == l->nbouncer ? receivers & LEDGER_NETWORK : receivers & LEDGER_CLIENTS;
		to[r] = covered ? OPEN : NOT_COVERED;
		nparts += covered;
	}
	size_t w = l->nwin;
	l->win[w] = (struct window){ .from = from_us, .senders = senders, .nparts = nparts, .to = to };
	l->nwin++;
	if (nparts)
		l->nopen++;
	/* from_us may be in the past: deliveries of lines sent since then
	 * that were counted as expected (and maybe delivered) move to the
	 * excused counts. Lines are in send order. */
	size_t lo = 0, hi = l->nlines;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (l->lines[mid].send_us < from_us)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (size_t i = lo; i < l->nlines; i++) {
		struct line *ln = &l->lines[i];
		const struct stream *st = &l->streams[ln->stream];
		uint32_t k = 0;
		unsigned r;
		while (receiver_at(l, st, &k, &r)) {
			if (excused_upto(l, r, ln, w) || !excused_upto(l, r, ln, w + 1))
				continue; /* no change for this delivery */
			l->st.expected--;
			l->st.excused_expected++;
			if (!(ln->flags & LINE_EXCUSED)) {
				ln->flags |= LINE_EXCUSED;
				l->st.excused_lines++;
			}
			if (got(l, r, ln->stream, ln->seq)) {
				l->st.delivered--;
				l->st.excused_delivered++;
			}
		}
	}
	return (int)w;
}

static void end_part(struct ledger *l, struct window *w, unsigned r, int64_t to_us)
{
	w->to[r] = to_us;
	if (--w->nparts == 0)
		l->nopen--;
}

void ledger_excuse_end(struct ledger *l, int w, unsigned r, int64_t to_us)
{
	if (w < 0 || (size_t)w >= l->nwin || r > l->nbouncer || l->win[w].to[r] != OPEN)
		return;
	end_part(l, &l->win[w], r, to_us);
}

void ledger_excuse_close(struct ledger *l, int w, int64_t to_us)
{
	if (w < 0 || (size_t)w >= l->nwin)
		return;
	for (unsigned r = 0; r <= l->nbouncer; r++)
		if (l->win[w].to[r] == OPEN)
			end_part(l, &l->win[w], r, to_us);
}

uint64_t ledger_outstanding(const struct ledger *l)
{
	return l->st.expected > l->st.delivered ? l->st.expected - l->st.delivered : 0;
}

static void count_missing(struct ledger *l, unsigned r, const struct stream *st,
			  uint32_t seq)
{
	struct line *ln = &l->lines[st->lines[seq - 1]];
	if (excused(l, r, ln)) {
		l->st.excused_missing++;
		return;
	}
	l->st.lost++;
	l->rbad[r] = 1;
	if (ln->lost)
		return; /* one example per line */
	ln->lost = 1;
	l->st.lost_lines++;
	example(l, "receiver %u (and maybe others): line %u of sender %u in #lg%u lost (sent at %.3f s on the ledger clock)",
		r, seq, st->sender, st->chan, (double)(ln->send_us - l->epoch) / 1e6);
}

void ledger_finish(struct ledger *l)
{
	for (size_t i = 0; i < l->miss_cap; i++)
		if (l->miss[i].seq && !l->miss[i].resolved)
			count_missing(l, l->miss[i].r, &l->streams[l->miss[i].stream], l->miss[i].seq);
	for (size_t sid = 0; sid < l->nstreams; sid++) {
		const struct stream *st = &l->streams[sid];
		uint32_t k = 0;
		unsigned r;
		while (receiver_at(l, st, &k, &r)) {
			const struct rstate *rs = rs_get(l, r, (uint32_t)sid, false);
			for (uint32_t s = rs ? rs->last + 1 : 1; s <= st->n; s++)
				count_missing(l, r, st, s);
		}
	}
	for (unsigned r = 0; r <= l->nbouncer; r++) {
		l->st.receivers_bad += l->rbad[r];
		if (l->rbad[r] && l->st.nbad < LEDGER_NBAD)
			l->st.bad[l->st.nbad++] = r;
	}
}

const struct ledger_stats *ledger_stats(const struct ledger *l)
{
	return &l->st;
}
