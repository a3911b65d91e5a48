/* tests/unit/sessiond/sample_state.c: see sample_state.h. The values follow
 * the conventions of sessiond/state.c (e.g. reg_phase always present, caps
 * in canonical order, zero timers absent) so that adopting and serializing
 * this item reproduces it apart from the informational peer/local fields. */
#include "sample_state.h"

#include <dirent.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "sessiond/bouncer.h"
#include <stdlib.h>
#include <string.h>

#include "state.pb-c.h"

#define T0 1764230400000LL /* 2025-11-27T08:00:00Z */

static Baton__State__BacklogLine line(uint64_t seq, int64_t t, const char *text)
{
	Baton__State__BacklogLine l = BATON__STATE__BACKLOG_LINE__INIT;
	l.seq = seq;
	l.time_ms = t;
	l.line = (char *)text;
	return l;
}

uint8_t *sample_item_pack(size_t *len)
{
	return sample_item_pack_at(len, 0);
}

uint8_t *sample_item_pack_at(size_t *len, int64_t now_ms)
{
	const int64_t tc = now_ms ? now_ms - 5000 : T0; /* connection timers */
	static char *isupport[] = { "CHANTYPES=#&", "PREFIX=(ov)@+",
				    "CHANMODES=beI,k,l,imnpst", "NETWORK=Example",
				    "CASEMAPPING=rfc1459", "NICKLEN=30" };
	static char *caps[] = { "server-time", "multi-prefix" };
	static char *client_caps[] = { "server-time", "multi-prefix" };

	Baton__State__Member m1[3] = { BATON__STATE__MEMBER__INIT,
				       BATON__STATE__MEMBER__INIT,
				       BATON__STATE__MEMBER__INIT };
	m1[0].nick = "alice";
	m1[0].prefixes = "@";
	m1[1].nick = "bob";
	m1[2].nick = "carol";
	m1[2].prefixes = "+";
	Baton__State__Member *m1p[] = { &m1[0], &m1[1], &m1[2] };
	Baton__State__Member m2[2] = { BATON__STATE__MEMBER__INIT,
				       BATON__STATE__MEMBER__INIT };
	m2[0].nick = "dave";
	m2[0].prefixes = "@+";
	m2[1].nick = "alice";
	Baton__State__Member *m2p[] = { &m2[0], &m2[1] };

	Baton__State__Channel c1 = BATON__STATE__CHANNEL__INIT;
	c1.name = "#baton";
	c1.topic = "Hot upgrades without dropping anyone";
	c1.topic_setter = "bob!b@host.example";
	c1.has_topic_time = 1;
	c1.topic_time = 1764200000;
	c1.modes = "+nt";
	c1.n_members = 3;
	c1.members = m1p;
	c1.has_joined = 1;
	c1.joined = 1;
	Baton__State__Channel c2 = BATON__STATE__CHANNEL__INIT;
	c2.name = "#dev";
	c2.topic = "builds and tests";
	c2.topic_setter = "dave";
	c2.has_topic_time = 1;
	c2.topic_time = 1764100000;
	c2.modes = "+nst";
	c2.n_members = 2;
	c2.members = m2p;
	c2.has_joined = 1;
	c2.joined = 1;
	Baton__State__Channel *chans[] = { &c1, &c2 };

	Baton__State__BacklogLine l[5] = {
		line(1, T0 + 1000, ":bob!b@host.example PRIVMSG #baton :hello there"),
		line(2, T0 + 2000, ":carol!c@host.example PRIVMSG #baton :\001ACTION waves\001"),
		line(3, T0 + 3000, ":bob!b@host.example PRIVMSG alice :psst, a query"),
		line(4, T0 + 4000, ":alice!a@host.example PRIVMSG #baton :hi all"),
		line(5, T0 + 5000, ":bob!b@host.example NOTICE alice :ok"),
	};
	Baton__State__BacklogLine *b1l[] = { &l[0], &l[1], &l[3] };
	Baton__State__BacklogLine *b2l[] = { &l[2], &l[4] };
	Baton__State__Buffer b1 = BATON__STATE__BUFFER__INIT;
	b1.name = "#baton";
	b1.n_lines = 3;
	b1.lines = b1l;
	Baton__State__Buffer b2 = BATON__STATE__BUFFER__INIT;
	b2.name = "bob";
	b2.n_lines = 2;
	b2.lines = b2l;
	Baton__State__Buffer *bufs[] = { &b1, &b2 };

	Baton__State__ClientPosition p1 = BATON__STATE__CLIENT_POSITION__INIT;
	p1.client_id = "default";
	p1.seq = 2;
	Baton__State__ClientPosition p2 = BATON__STATE__CLIENT_POSITION__INIT;
	p2.client_id = "phone";
	p2.seq = 4;
	Baton__State__ClientPosition *pos[] = { &p1, &p2 };

	static const char up_in[] = ":bob!b@host.example PRIVMSG #baton :a partial li";
	static const char up_out[] = "PRIVMSG #baton :queued but not written\r\n";
	Baton__State__Connection up = BATON__STATE__CONNECTION__INIT;
	up.role = BATON__STATE__CONN_ROLE__CONN_ROLE_UPSTREAM;
	up.fd_index = 0;
	up.peer = "192.0.2.10:6667";
	up.local = "192.0.2.1:40000";
	up.has_input = 1;
	up.input.data = (uint8_t *)up_in;
	up.input.len = sizeof(up_in) - 1;
	up.has_output = 1;
	up.output.data = (uint8_t *)up_out;
	up.output.len = sizeof(up_out) - 1;
	up.has_reg_phase = 1;
	up.reg_phase = 3; /* UP_READY */
	up.nick = "alice";
	up.has_connected_at_ms = 1;
	up.connected_at_ms = tc - 3600000;
	up.has_last_rx_ms = 1;
	up.last_rx_ms = tc + 5000;
	up.has_lag_ms = 1;
	up.lag_ms = 42;
	up.has_next_ping_ms = 1;
	up.next_ping_ms = tc + 60000;

	static const char cl_out[] = "@time=2025-11-27T08:00:05.000Z :bob!b@host.example NOTICE alice :ok\r\n";
	Baton__State__Connection cl = BATON__STATE__CONNECTION__INIT;
	cl.role = BATON__STATE__CONN_ROLE__CONN_ROLE_CLIENT;
	cl.fd_index = 1;
	cl.peer = "198.51.100.7:51234";
	cl.local = "192.0.2.1:6697";
	cl.has_output = 1;
	cl.output.data = (uint8_t *)cl_out;
	cl.output.len = sizeof(cl_out) - 1;
	cl.has_reg_phase = 1;
	cl.reg_phase = 1; /* CLIENT_ATTACHED */
	cl.n_caps = 2;
	cl.caps = client_caps;
	cl.client_id = "default";
	cl.has_delivered_seq = 1;
	cl.delivered_seq = 5;
	cl.has_connected_at_ms = 1;
	cl.connected_at_ms = tc - 600000;
	cl.has_last_rx_ms = 1;
	cl.last_rx_ms = tc + 4000;
	cl.nick = "alice";
	cl.user = "alice/example";
	Baton__State__Connection *clients[] = { &cl };

	Baton__State__Session s = BATON__STATE__SESSION__INIT;
	s.user = "alice";
	s.network = "example";
	s.nick = "alice";
	s.user_modes = "+i";
	s.n_isupport = sizeof(isupport) / sizeof(isupport[0]);
	s.isupport = isupport;
	s.n_caps = 2;
	s.caps = caps;
	s.n_channels = 2;
	s.channels = chans;
	s.n_buffers = 2;
	s.buffers = bufs;
	s.n_positions = 2;
	s.positions = pos;
	s.has_next_seq = 1;
	s.next_seq = 6;
	s.upstream = &up;
	s.n_clients = 1;
	s.clients = clients;
	s.server_name = "irc.example.net";
	s.welcome = "Welcome to the Example IRC Network alice!a@host.example";
	s.myinfo = "irc.example.net ngircd-27 abBcCFiIoqrRswx abehiIklmMnoOPqQrRstvVz";
	s.userhost = "a@host.example";

	Baton__State__Item item = BATON__STATE__ITEM__INIT;
	item.session = &s;
	*len = baton__state__item__get_packed_size(&item);
	uint8_t *buf = malloc(*len);
	if (buf)
		baton__state__item__pack(&item, buf);
	return buf;
}

uint8_t *sample_pending_pack(size_t *len)
{
	static char *caps[] = { "server-time" };
	static const char in[] = "NICK alice\r\nUSER alice/exa";
	Baton__State__Connection pc = BATON__STATE__CONNECTION__INIT;
	pc.role = BATON__STATE__CONN_ROLE__CONN_ROLE_PENDING;
	pc.fd_index = 0;
	pc.has_input = 1;
	pc.input.data = (uint8_t *)in;
	pc.input.len = sizeof(in) - 1;
	pc.has_reg_phase = 1;
	pc.reg_phase = 0;
	pc.n_caps = 1;
	pc.caps = caps;
	pc.has_connected_at_ms = 1;
	pc.connected_at_ms = T0;
	pc.has_last_rx_ms = 1;
	pc.last_rx_ms = T0 + 10;
	pc.pass = "alice/example:secret";
	pc.has_cap_negotiating = 1;
	pc.cap_negotiating = 1;

	Baton__State__Item item = BATON__STATE__ITEM__INIT;
	item.pending = &pc;
	*len = baton__state__item__get_packed_size(&item);
	uint8_t *buf = malloc(*len);
	if (buf)
		baton__state__item__pack(&item, buf);
	return buf;
}

int count_open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the DIR's own fd */
}

int fixture_setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	f->baseline_fds = count_open_fds();
	f->base = event_base_new();
	f->b = bouncer_new(f->base, NULL);
	*state = f;
	return 0;
}

int fixture_teardown(void **state)
{
	struct fixture *f = *state;
	int leaked;

	bouncer_free(f->b);
	event_base_free(f->base);
	leaked = count_open_fds() - f->baseline_fds;
	free(f);
	if (leaked != 0)
		fprintf(stderr, "fixture: %d fd(s) leaked\n", leaked);
	return leaked == 0 ? 0 : -1; /* cmocka reports a failed teardown */
}

void make_pairs(int *ours, int *peers, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int sv[2];

		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
			abort();
		ours[i] = sv[0];
		peers[i] = sv[1];
	}
}

void close_all(int *fds, size_t n)
{
	for (size_t i = 0; i < n; i++)
		close(fds[i]);
}
