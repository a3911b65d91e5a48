/* tests/fuzz/gen_state_seeds.c: writes the seed corpus of fuzz_state_adopt
 * (its input format: one byte = number of fds, then a state.proto Item).
 *
 *   gen_state_seeds DIR
 *
 * Every seed starts from the sample of tests/unit/sessiond/sample_state.c
 * (the item behind tests/golden/state-v1.bin) and changes one thing, so
 * the seeds reach adoption (the fuzz target's config holds alice/example)
 * and each exercises another part of it; the last few are refused on
 * purpose (one validation each). Built with -Dfuzz=true. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "state.pb-c.h"
#include "../unit/sessiond/sample_state.h"

/* A generator: the items it leaves behind are no leak worth a report. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
	return "detect_leaks=0";
}

static const char *dir;
static int nwritten;

static void write_seed(const char *name, unsigned nfds, const uint8_t *buf,
		       size_t len)
{
	char path[1024];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (f == NULL || fputc((int)nfds, f) == EOF ||
	    fwrite(buf, 1, len, f) != len || fclose(f) != 0) {
		perror(path);
		exit(1);
	}
	nwritten++;
}

static void write_item(const char *name, unsigned nfds,
		       const Baton__State__Item *item)
{
	size_t len = baton__state__item__get_packed_size(item);
	uint8_t *buf = malloc(len ? len : 1);

	if (buf == NULL)
		exit(1);
	baton__state__item__pack(item, buf);
	write_seed(name, nfds, buf, len);
	free(buf);
}

typedef unsigned (*mutate_fn)(Baton__State__Item *it); /* returns nfds */

static unsigned m_none(Baton__State__Item *it) { return 2; }

static unsigned m_no_clients(Baton__State__Item *it)
{
	it->session->n_clients = 0;
	return 1;
}

static unsigned m_disconnected(Baton__State__Item *it)
{
	it->session->upstream = NULL;
	it->session->n_clients = 0;
	it->session->has_reconnect_at_ms = 1;
	it->session->reconnect_at_ms = 1764230460000LL;
	it->session->has_reconnect_failures = 1;
	it->session->reconnect_failures = 3;
	return 0;
}

static unsigned m_client_only(Baton__State__Item *it)
{
	it->session->upstream = NULL;
	it->session->clients[0]->fd_index = 0;
	return 1;
}

static Baton__State__Connection second;
static char second_id[] = "laptop";

static unsigned m_two_clients(Baton__State__Item *it)
{
	static Baton__State__Connection *v[2];

	second = *it->session->clients[0];
	second.fd_index = 2;
	second.client_id = second_id;
	second.delivery = NULL;
	v[0] = it->session->clients[0];
	v[1] = &second;
	it->session->clients = v;
	it->session->n_clients = 2;
	return 3;
}

static unsigned m_no_buffers_io(Baton__State__Item *it)
{
	it->session->upstream->has_input = 0;
	it->session->upstream->has_output = 0;
	it->session->clients[0]->has_output = 0;
	it->session->clients[0]->delivery = NULL;
	return 2;
}

static unsigned m_no_channels(Baton__State__Item *it)
{
	it->session->n_channels = 0;
	return 2;
}

static unsigned m_registering(Baton__State__Item *it)
{
	it->session->upstream->reg_phase = 1;
	it->session->upstream->has_cap_negotiating = 1;
	it->session->upstream->cap_negotiating = 1;
	it->session->n_channels = 0;
	it->session->n_clients = 0;
	return 1;
}

static char away[] = "gone fishing";
static char umodes[] = "+iwx";

static unsigned m_away(Baton__State__Item *it)
{
	it->session->away = away;
	it->session->user_modes = umodes;
	return 2;
}

static unsigned m_seq_ahead(Baton__State__Item *it)
{
	it->session->next_seq += 1000;
	return 2;
}

static unsigned m_empty_buffers(Baton__State__Item *it)
{
	for (size_t i = 0; i < it->session->n_buffers; i++)
		it->session->buffers[i]->n_lines = 0;
	return 2;
}

static unsigned m_members(Baton__State__Item *it)
{
	static Baton__State__Member mem[64], *mv[64];
	static char nicks[64][16];
	Baton__State__Channel *ch = it->session->channels[0];

	for (int i = 0; i < 64; i++) {
		baton__state__member__init(&mem[i]);
		snprintf(nicks[i], sizeof(nicks[i]), "user%02d", i);
		mem[i].nick = nicks[i];
		mem[i].prefixes = (char *)(i % 3 == 0 ? "@" : i % 3 == 1 ? "+" : "@+");
		mv[i] = &mem[i];
	}
	ch->members = mv;
	ch->n_members = 64;
	return 2;
}

static unsigned m_governor(Baton__State__Item *it)
{
	static Baton__State__GovernorState gs = BATON__STATE__GOVERNOR_STATE__INIT;
	static Baton__State__GovernorBucket bk = BATON__STATE__GOVERNOR_BUCKET__INIT;
	static Baton__State__GovernorBucket *bv[1] = { &bk };

	bk.network = (char *)"example";
	bk.has_level = 1;
	bk.level = 120000;
	bk.has_as_of_ms = 1;
	bk.as_of_ms = 1764230400000LL;
	bk.has_strikes = 1;
	bk.strikes = 1;
	gs.buckets = bv;
	gs.n_buckets = 1;
	it->governor = &gs;
	return 2;
}

/* Refused on purpose: one validation each. */
static unsigned m_bad_fd_index(Baton__State__Item *it)
{
	it->session->clients[0]->fd_index = 7;
	return 2;
}

static unsigned m_dup_fd_index(Baton__State__Item *it)
{
	it->session->clients[0]->fd_index = 0;
	return 2;
}

static unsigned m_extra_fd(Baton__State__Item *it) { return 3; }

static unsigned m_crlf_nick(Baton__State__Item *it)
{
	it->session->nick = (char *)"ali\r\nce";
	return 2;
}

static unsigned m_position_ahead(Baton__State__Item *it)
{
	if (it->session->n_positions)
		it->session->positions[0]->seq = it->session->next_seq + 5;
	return 2;
}

static unsigned m_unknown_session(Baton__State__Item *it)
{
	it->session->user = (char *)"mallory";
	return 2;
}

static const struct {
	const char *name;
	mutate_fn fn;
} mutations[] = {
	{ "sample", m_none },
	{ "no-clients", m_no_clients },
	{ "disconnected", m_disconnected },
	{ "client-only", m_client_only },
	{ "two-clients", m_two_clients },
	{ "no-pending-io", m_no_buffers_io },
	{ "no-channels", m_no_channels },
	{ "registering", m_registering },
	{ "away", m_away },
	{ "seq-ahead", m_seq_ahead },
	{ "empty-buffers", m_empty_buffers },
	{ "members-64", m_members },
	{ "governor", m_governor },
	{ "bad-fd-index", m_bad_fd_index },
	{ "dup-fd-index", m_dup_fd_index },
	{ "extra-fd", m_extra_fd },
	{ "crlf-nick", m_crlf_nick },
	{ "position-ahead", m_position_ahead },
	{ "unknown-session", m_unknown_session },
};

int main(int argc, char **argv)
{
	uint8_t *buf;
	size_t len;

	if (argc != 2) {
		fprintf(stderr, "usage: %s DIR\n", argv[0]);
		return 2;
	}
	dir = argv[1];
	for (size_t i = 0; i < sizeof(mutations) / sizeof(mutations[0]); i++) {
		Baton__State__Item *it;
		char name[64];
		unsigned nfds;

		buf = sample_item_pack(&len);
		it = baton__state__item__unpack(NULL, len, buf);
		if (it == NULL)
			return 1;
		nfds = mutations[i].fn(it);
		snprintf(name, sizeof(name), "%02zu-%s", i, mutations[i].name);
		write_item(name, nfds, it);
		/* Not freed: mutations point into static storage. */
		free(buf);
	}
	buf = sample_item_pack_at(&len, (int64_t)time(NULL) * 1000);
	write_seed("90-sample-now", 2, buf, len);
	free(buf);
	buf = sample_pending_pack(&len);
	write_seed("91-pending", 1, buf, len);
	free(buf);
	printf("%d seeds in %s\n", nwritten, dir);
	return 0;
}
