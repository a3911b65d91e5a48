/* ledger: see ledger.h. */
#include "ledger.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct line {
	int64_t send_us;
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

struct missing {
	uint32_t r, stream, seq;
	uint8_t resolved;
};

struct window {
	int64_t from, to;
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
	uint32_t **chan_streams; /* per channel */
	uint32_t *nchan_streams, *chan_streams_cap;
	uint32_t **chan_members;
	uint32_t *nchan_members, *chan_members_cap;
	uint16_t **rchans;       /* per bouncer receiver: its channels */
	uint8_t *nrchans;
	struct rstate *rs;
	size_t nrs, rs_cap;
	struct missing *miss;
	size_t nmiss, miss_cap;
	struct window *win;
	size_t nwin;
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
	l->chan_streams = calloc(nchans, sizeof(*l->chan_streams));
	l->nchan_streams = calloc(nchans, sizeof(uint32_t));
	l->chan_streams_cap = calloc(nchans, sizeof(uint32_t));
	l->chan_members = calloc(nchans, sizeof(*l->chan_members));
	l->nchan_members = calloc(nchans, sizeof(uint32_t));
	l->chan_members_cap = calloc(nchans, sizeof(uint32_t));
	l->rchans = calloc(nbouncer + 1, sizeof(*l->rchans));
	l->nrchans = calloc(nbouncer + 1, 1);
	l->rbad = calloc(nbouncer + 1, 1);
	if (!l->chan_streams || !l->nchan_streams || !l->chan_streams_cap ||
	    !l->chan_members || !l->nchan_members || !l->chan_members_cap ||
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
	for (unsigned c = 0; l->chan_streams && c < l->nchans; c++)
		free(l->chan_streams[c]);
	for (unsigned c = 0; l->chan_members && c < l->nchans; c++)
		free(l->chan_members[c]);
	for (unsigned r = 0; l->rchans && r <= l->nbouncer; r++)
		free(l->rchans[r]);
	free(l->chan_streams);
	free(l->nchan_streams);
	free(l->chan_streams_cap);
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
	    grow((void **)&l->streams, &l->streams_cap, l->nstreams + 1, sizeof(*l->streams)) < 0 ||
	    grow32(&l->chan_streams[ch], &l->chan_streams_cap[ch], l->nchan_streams[ch] + 1) < 0)
		return -1;
	s->cap = (uint16_t)(scap > 65535 ? 65535 : scap);
	uint32_t id = (uint32_t)l->nstreams++;
	l->streams[id] = (struct stream){ .sender = sender, .chan = (uint16_t)ch };
	s->streams[s->nstreams++] = id;
	l->chan_streams[ch][l->nchan_streams[ch]++] = id;
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

static unsigned expected_receivers(const struct ledger *l, uint32_t sender, unsigned ch)
{
	int32_t owner = l->senders[sender].owner;
	unsigned n = l->nchan_members[ch] + 1; /* + the observer */
	if (owner >= 0 && is_member(l, (unsigned)owner, ch))
		n--;
	return n;
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
	l->lines[l->nlines++] = (struct line){ now, l->flags, 0 };
	char a[16], b[16], c[16];
	int n = snprintf(buf, len, "lg %s %s %s", b36(a + sizeof(a), sender),
			 b36(b + sizeof(b), st->n), b36(c + sizeof(c), (uint64_t)(now - l->epoch)));
	size_t tl = (size_t)n;
	if (want_len > len - 1)
		want_len = len - 1;
	if (tl + 1 < want_len) {
		buf[tl++] = ' ';
		size_t k = 0;
		while (tl < want_len) {
			char ch2 = padlen ? pad[k++ % padlen] : 'x';
			/* never a CR, LF, NUL or CTCP marker inside the text */
			buf[tl++] = (ch2 == '\r' || ch2 == '\n' || ch2 == '\0' || ch2 == '\001') ? ' ' : ch2;
		}
		/* a trailing space may be stripped by someone: end on a dot */
		if (buf[tl - 1] == ' ')
			buf[tl - 1] = '.';
		buf[tl] = '\0';
	}
	l->st.lines++;
	unsigned nexp = expected_receivers(l, sender, ch);
	if (l->flags & LEDGER_EXCUSED)
		l->st.excused_lines++;
	else
		l->st.expected += nexp;
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

static bool excused(const struct ledger *l, const struct line *ln)
{
	if (ln->flags & LEDGER_EXCUSED)
		return true;
	for (size_t i = 0; i < l->nwin; i++)
		if (ln->send_us >= l->win[i].from && ln->send_us <= l->win[i].to)
			return true;
	return false;
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

static void first_delivery(struct ledger *l, const struct line *ln, int64_t now_us,
			   int64_t since_us)
{
	uint64_t lat = now_us > ln->send_us ? (uint64_t)(now_us - ln->send_us) : 0;
	if (ln->flags & LEDGER_EXCUSED) {
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

bool ledger_deliver(struct ledger *l, unsigned r, int ch, const char *text,
		    size_t len, int64_t now_us, int64_t since_us)
{
	const char *p = text, *end = text + len;
	uint64_t sender, seq, rel;

	if (len > 8 && !memcmp(p, "\001ACTION ", 8))
		p += 8;
	if (end - p < 4 || memcmp(p, "lg ", 3) != 0)
		return false;
	p += 3;
	if (!parse_b36(&p, end, &sender) || !parse_b36(&p, end, &seq) ||
	    !parse_b36(&p, end, &rel)) {
		l->st.malformed++;
		return true;
	}
	if (r > l->nbouncer || ch < 0 || sender >= l->nsenders || seq == 0 ||
	    !is_member(l, r, (unsigned)ch)) {
		l->st.foreign++;
		example(l, "receiver %u: line of unknown sender %llu or channel %d it is not in",
			r, (unsigned long long)sender, ch);
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
	if (seq == (uint64_t)rs->last + 1) {
		rs->last = (uint32_t)seq;
		first_delivery(l, ln, now_us, since_us);
		return true;
	}
	if (seq > rs->last) {
		/* a gap: remember each missing seq */
		for (uint32_t s = rs->last + 1; s < seq; s++) {
			if (grow((void **)&l->miss, &l->miss_cap, l->nmiss + 1, sizeof(*l->miss)) < 0) {
				l->st.internal_errors++;
				break;
			}
			l->miss[l->nmiss++] = (struct missing){ r, (uint32_t)sid, s, 0 };
		}
		rs->last = (uint32_t)seq;
		first_delivery(l, ln, now_us, since_us);
		return true;
	}
	/* seq <= last: a late missing one, or a duplicate */
	for (size_t i = l->nmiss; i-- > 0;) {
		struct missing *m = &l->miss[i];
		if (!m->resolved && m->r == r && m->stream == sid && m->seq == seq) {
			m->resolved = 1;
			if (!excused(l, ln)) {
				l->st.out_of_order++;
				l->rbad[r] = 1;
				example(l, "receiver %u: line %llu of sender %llu in #lg%d out of order",
					r, (unsigned long long)seq, (unsigned long long)sender, ch);
			}
			first_delivery(l, ln, now_us, since_us);
			return true;
		}
	}
	if (!excused(l, ln)) {
		l->st.duplicated++;
		l->rbad[r] = 1;
		example(l, "receiver %u: line %llu of sender %llu in #lg%d duplicated (%.3f s after sending)",
			r, (unsigned long long)seq, (unsigned long long)sender, ch,
			(double)(now_us - ln->send_us) / 1e6);
	}
	return true;
}

int ledger_excuse(struct ledger *l, int64_t from_us, int64_t to_us)
{
	struct window *nv = realloc(l->win, (l->nwin + 1) * sizeof(*nv));
	if (!nv)
		return -ENOMEM;
	l->win = nv;
	l->win[l->nwin++] = (struct window){ from_us, to_us };
	return 0;
}

uint64_t ledger_outstanding(const struct ledger *l)
{
	return l->st.expected > l->st.delivered ? l->st.expected - l->st.delivered : 0;
}

static void count_missing(struct ledger *l, unsigned r, const struct stream *st,
			  uint32_t seq)
{
	struct line *ln = &l->lines[st->lines[seq - 1]];
	if (excused(l, ln)) {
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
	for (size_t i = 0; i < l->nmiss; i++)
		if (!l->miss[i].resolved)
			count_missing(l, l->miss[i].r, &l->streams[l->miss[i].stream], l->miss[i].seq);
	for (unsigned ch = 0; ch < l->nchans; ch++) {
		for (uint32_t k = 0; k < l->nchan_streams[ch]; k++) {
			uint32_t sid = l->chan_streams[ch][k];
			const struct stream *st = &l->streams[sid];
			int32_t owner = l->senders[st->sender].owner;
			for (uint32_t m = 0; m <= l->nchan_members[ch]; m++) {
				unsigned r = m < l->nchan_members[ch] ? l->chan_members[ch][m] : l->nbouncer;
				if (owner >= 0 && (unsigned)owner == r)
					continue;
				const struct rstate *rs = rs_get(l, r, sid, false);
				for (uint32_t s = rs ? rs->last + 1 : 1; s <= st->n; s++)
					count_missing(l, r, st, s);
			}
		}
	}
	for (unsigned r = 0; r <= l->nbouncer; r++)
		l->st.receivers_bad += l->rbad[r];
}

const struct ledger_stats *ledger_stats(const struct ledger *l)
{
	return &l->st;
}
