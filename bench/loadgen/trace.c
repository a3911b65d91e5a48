/* trace: loading and analysing the JSON-lines trace (see trace.h). */
#include "trace.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

const char *const lg_kind_names[LG_NKINDS] = {
	"privmsg", "join", "part", "quit", "nick",
};

/* ---- interning: open addressing over strdup'ed names ---- */

struct intern {
	char **names;   /* by id */
	uint32_t n, cap;
	uint32_t *slots; /* id + 1, 0 = empty */
	uint32_t nslots;
};

static uint32_t str_hash(const char *s)
{
	uint32_t h = 2166136261u;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

static int intern_grow(struct intern *in)
{
	uint32_t ns = in->nslots ? in->nslots * 2 : 1024;
	uint32_t *slots = calloc(ns, sizeof(*slots));
	if (!slots)
		return -ENOMEM;
	for (uint32_t i = 0; i < in->n; i++) {
		uint32_t j = str_hash(in->names[i]) & (ns - 1);
		while (slots[j])
			j = (j + 1) & (ns - 1);
		slots[j] = i + 1;
	}
	free(in->slots);
	in->slots = slots;
	in->nslots = ns;
	return 0;
}

/* The id of name (added if new), or a negative errno. */
static int64_t intern(struct intern *in, const char *name)
{
	if ((in->n + 1) * 2 > in->nslots && intern_grow(in) < 0)
		return -ENOMEM;
	uint32_t j = str_hash(name) & (in->nslots - 1);
	while (in->slots[j]) {
		if (strcmp(in->names[in->slots[j] - 1], name) == 0)
			return in->slots[j] - 1;
		j = (j + 1) & (in->nslots - 1);
	}
	if (in->n == in->cap) {
		uint32_t cap = in->cap ? in->cap * 2 : 256;
		char **nv = realloc(in->names, cap * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		in->names = nv;
		in->cap = cap;
	}
	char *copy = strdup(name);
	if (!copy)
		return -ENOMEM;
	in->names[in->n] = copy;
	in->slots[j] = in->n + 1;
	return in->n++;
}

static void intern_free(struct intern *in, bool keep_names)
{
	if (!keep_names) {
		for (uint32_t i = 0; i < in->n; i++)
			free(in->names[i]);
		free(in->names);
	}
	free(in->slots);
}

/* ---- loading ---- */

static const char *jstr(struct json_object *o, const char *key)
{
	struct json_object *v;
	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

static int text_add(struct trace *tr, size_t *cap, const char *s, uint32_t *off,
		    uint16_t *len)
{
	size_t n = strlen(s);
	if (n > 65535)
		n = 65535;
	if (tr->text_len + n + 1 > *cap) {
		size_t nc = *cap ? *cap * 2 : 1 << 20;
		while (nc < tr->text_len + n + 1)
			nc *= 2;
		char *nt = realloc(tr->text, nc);
		if (!nt)
			return -ENOMEM;
		tr->text = nt;
		*cap = nc;
	}
	*off = (uint32_t)tr->text_len;
	*len = (uint16_t)n;
	char *d = tr->text + tr->text_len;
	for (size_t i = 0; i < n; i++)
		d[i] = (s[i] == '\r' || s[i] == '\n') ? ' ' : s[i];
	d[n] = '\0';
	tr->text_len += n + 1;
	return 0;
}

static int ev_cmp(const void *a, const void *b)
{
	const struct trace_event *x = a, *y = b;
	if (x->t != y->t)
		return x->t < y->t ? -1 : 1;
	/* stable: text offsets grow in file order */
	return x->text_off < y->text_off ? -1 : x->text_off > y->text_off;
}

int trace_load(const char *path, struct trace **out, char *err, size_t errlen)
{
	struct trace *tr = NULL;
	struct intern nicks = { 0 }, chans = { 0 };
	FILE *f = NULL;
	char *line = NULL;
	size_t linecap = 0, evcap = 0, textcap = 0, lineno = 0;
	ssize_t got;
	int r = 0;
	/* (chan, nick) pairs seen, for distinct nicks per channel */
	struct intern pairs = { 0 };

	*out = NULL;
	f = fopen(path, "r");
	if (!f) {
		r = -errno;
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		goto out;
	}
	tr = calloc(1, sizeof(*tr));
	if (!tr) {
		r = -ENOMEM;
		goto oom;
	}
	/* offset 0 is the empty text */
	if (text_add(tr, &textcap, "", &(uint32_t){ 0 }, &(uint16_t){ 0 }) < 0)
		goto oom;
	while ((got = getline(&line, &linecap, f)) >= 0) {
		lineno++;
		if (got <= 1)
			continue;
		struct json_object *o = json_tokener_parse(line);
		if (!o || !json_object_is_type(o, json_type_object)) {
			json_object_put(o);
			snprintf(err, errlen, "%s:%zu: not a JSON object", path, lineno);
			r = -EINVAL;
			goto out;
		}
		struct json_object *tv;
		const char *type = jstr(o, "type"), *nick = jstr(o, "nick"),
			   *chan = jstr(o, "chan");
		if (!json_object_object_get_ex(o, "t", &tv) || !type || !nick || !chan) {
			json_object_put(o);
			snprintf(err, errlen, "%s:%zu: missing t, type, nick or chan", path, lineno);
			r = -EINVAL;
			goto out;
		}
		struct trace_event e = { .t = json_object_get_double(tv) };
		const char *text = NULL;
		if (!strcmp(type, "privmsg") || !strcmp(type, "notice")) {
			e.kind = LG_PRIVMSG;
			text = jstr(o, "text");
		} else if (!strcmp(type, "action")) {
			e.kind = LG_PRIVMSG;
			e.action = 1;
			text = jstr(o, "text");
		} else if (!strcmp(type, "join")) {
			e.kind = LG_JOIN;
		} else if (!strcmp(type, "part")) {
			e.kind = LG_PART;
		} else if (!strcmp(type, "quit")) {
			e.kind = LG_QUIT;
			text = jstr(o, "reason");
		} else if (!strcmp(type, "nick")) {
			const char *nn = jstr(o, "newnick");
			if (!nn) {
				json_object_put(o);
				snprintf(err, errlen, "%s:%zu: nick event without newnick", path, lineno);
				r = -EINVAL;
				goto out;
			}
			e.kind = LG_NICK;
			int64_t id = intern(&nicks, nn);
			if (id < 0) {
				json_object_put(o);
				goto oom;
			}
			e.aux = (uint32_t)id;
		} else {
			/* mode, kick, topic: not part of the mix we replay */
			json_object_put(o);
			continue;
		}
		int64_t nid = intern(&nicks, nick), cid = intern(&chans, chan);
		char pairkey[512];
		snprintf(pairkey, sizeof(pairkey), "%s %s", chan, nick);
		int64_t pid = intern(&pairs, pairkey);
		if (nid < 0 || cid < 0 || pid < 0 ||
		    text_add(tr, &textcap, text ? text : "", &e.text_off, &e.text_len) < 0) {
			json_object_put(o);
			goto oom;
		}
		json_object_put(o);
		e.nick = (uint32_t)nid;
		e.chan = (uint16_t)cid;
		if (tr->nev == evcap) {
			size_t nc = evcap ? evcap * 2 : 4096;
			struct trace_event *nv = realloc(tr->ev, nc * sizeof(*nv));
			if (!nv)
				goto oom;
			tr->ev = nv;
			evcap = nc;
		}
		tr->ev[tr->nev++] = e;
	}
	if (!tr->nev) {
		snprintf(err, errlen, "%s: no events", path);
		r = -EINVAL;
		goto out;
	}
	qsort(tr->ev, tr->nev, sizeof(tr->ev[0]), ev_cmp);
	tr->nnicks = nicks.n;
	tr->nchans = chans.n;
	tr->chans = chans.names; /* transferred */
	chans.names = NULL;
	chans.n = 0;
	tr->chan_nicks = calloc(tr->nchans, sizeof(*tr->chan_nicks));
	tr->chan_events = calloc(tr->nchans, sizeof(*tr->chan_events));
	if (!tr->chan_nicks || !tr->chan_events)
		goto oom;
	for (uint32_t i = 0; i < pairs.n; i++) {
		const char *sp = strchr(pairs.names[i], ' ');
		for (size_t c = 0; c < tr->nchans; c++)
			if (!strncmp(tr->chans[c], pairs.names[i], (size_t)(sp - pairs.names[i])) &&
			    tr->chans[c][sp - pairs.names[i]] == '\0')
				tr->chan_nicks[c]++;
	}
	for (size_t i = 0; i < tr->nev; i++) {
		const struct trace_event *e = &tr->ev[i];
		tr->kinds[e->kind]++;
		tr->chan_events[e->chan]++;
		if (e->kind == LG_PRIVMSG)
			hist_add(&tr->msg_len, e->text_len);
	}
	tr->span = tr->ev[tr->nev - 1].t - tr->ev[0].t;
	*out = tr; /* transferred */
	tr = NULL;
	goto out;
oom:
	r = -ENOMEM;
	snprintf(err, errlen, "%s: out of memory", path);
out:
	free(line);
	if (f)
		fclose(f);
	intern_free(&nicks, false);
	intern_free(&chans, false);
	intern_free(&pairs, false);
	trace_free(tr);
	return r;
}

void trace_free(struct trace *tr)
{
	if (!tr)
		return;
	for (size_t i = 0; i < tr->nchans; i++)
		free(tr->chans[i]);
	free(tr->chans);
	free(tr->chan_nicks);
	free(tr->chan_events);
	free(tr->ev);
	free(tr->text);
	free(tr);
}

double trace_mix(const struct trace *tr, enum lg_kind k)
{
	uint64_t total = 0;
	for (int i = 0; i < LG_NKINDS; i++)
		total += tr->kinds[i];
	return total ? (double)tr->kinds[k] / (double)total : 0.0;
}
