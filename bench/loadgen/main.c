/* baton-loadgen: trace-shaped IRC load through baton, checked line by line.
 *
 * main.c parses the options, loads the trace, builds the model and hands
 * both to the driver; the report goes to stdout (JSON with --json, the
 * human summary then going to stderr). Exit 0 only if nothing was lost,
 * duplicated, reordered, corrupted or disconnected (report_failures());
 * 1 if something was; 2 on usage or setup errors. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "driver.h"
#include "model.h"
#include "report.h"
#include "scenario.h"
#include "trace.h"

#define DEFAULT_TRACE "../shared/traces/sample-trace.jsonl"

static void usage(FILE *f)
{
	fprintf(f,
"usage: baton-loadgen [OPTIONS]\n"
"\n"
"Replays a real IRC trace, scaled, against an IRC server (network users) and\n"
"through baton (one client per bouncer user) at the same time. Every PRIVMSG\n"
"text starts with \"lg SENDER SEQ SEND_US PADLEN CHECK\" (base 36; CHECK: FNV-1a\n"
"of the rest, 8 hex digits) and is padded to the trace message's length;\n"
"receivers check the payload (length, checksum), delivery exactly once and in\n"
"order per (sender, channel), and measure latency. Receivers: every bouncer\n"
"user's client (for its channels; never its own lines) and one observer on\n"
"the server (every channel).\n"
"\n"
"Where:\n"
"  --server HOST:PORT        the IRC server (ngircd) for network users (required)\n"
"  --baton HOST:PORT         baton's client listener (required unless --emit-users)\n"
"  --network NAME            baton network name in PASS (default net)\n"
"  --password PW             bouncer users' password (default secret)\n"
"  --client-name NAME        client name in PASS user/network@NAME:pw, i.e. the\n"
"                            backlog position baton keeps (default lg)\n"
"  --user-prefix P           bouncer user names P000... (default u)\n"
"  --nick-prefix P           bouncer nicks P000... (default bn); names are\n"
"                            zero-padded to max(3, digits of N-1), like batonlib\n"
"\n"
"Shape and scale:\n"
"  --trace PATH              JSON-lines trace (default " DEFAULT_TRACE ")\n"
"  --bouncer-users N         bouncer users, each with one client (default 150)\n"
"  --channels N              channels #lg0..#lgN-1 (default 10); the trace's channels\n"
"                            are replayed in ceil(N / trace channels) copies\n"
"  --chans-per-user N        channels per bouncer user, drawn with the trace's\n"
"                            channel sizes as weights (default 2)\n"
"  --rate EV/S               trace events per second, all copies (default 20)\n"
"  --duration S              seconds of traffic (default 30)\n"
"  --max-gap S               trace gaps longer than S trace seconds are shortened\n"
"                            to S before compressing (default 600)\n"
"  --bouncer-share F         fraction of the trace's speakers that speak through a\n"
"                            bouncer client (default 0.5)\n"
"  --seed N                  seed of every random choice (default 1)\n"
"  --emit-users              print the bouncer users' plan (\"user nick #a,#b\" per\n"
"                            line) for the baton config, and exit\n"
"\n"
"Scenarios (AT = seconds after traffic start; each option may repeat):\n"
"  --netsplit AT:F[:R]       a fraction F of online network users QUIT with reason\n"
"                            \"irc.a.net irc.b.net\" and rejoin all their channels in\n"
"                            one burst R seconds later (default 3)\n"
"  --mass-reconnect AT:F     a fraction F of attached bouncer clients disconnect and\n"
"                            reconnect after --reconnect-delay (+ up to 1 s jitter);\n"
"                            what they missed must come from baton's replay\n"
"  --reconnect-mode quit|drop  quit: send QUIT (baton's graceful detach; default);\n"
"                            drop: end the TCP connection with a FIN, no QUIT.\n"
"                            Both read everything until baton closes\n"
"  --reconnect-delay S       seconds away (default 2)\n"
"  --server-restart AT:CMD   run CMD (sh -c) that restarts the IRC server and returns\n"
"                            once it accepts connections; network users and the\n"
"                            observer reconnect and rejoin after it\n"
"  --baton-restart AT:CMD    run CMD that restarts baton; its clients' closes are\n"
"                            expected and they reconnect every second until attached\n"
"  --restart-grace S         lines sent from 1 s before a restart command until S s\n"
"                            after it ended are excused (counted apart, never lost\n"
"                            or duplicated), only where the restarted process is\n"
"                            on the way: a baton restart excuses deliveries to\n"
"                            clients (each until it reattached) and clients' lines\n"
"                            to the observer; a server restart, deliveries to the\n"
"                            observer and network users' lines (default 5)\n"
"  --excused-max-share F     fail if more than this fraction of the deliveries\n"
"                            inside excuse windows never arrived (default 0.95:\n"
"                            a restart loses what was said while it was down;\n"
"                            this only catches a bouncer that never recovers)\n"
"  --exec AT:CMD             run CMD (e.g. batonctl upgrade); lines sent while it\n"
"                            runs get their own latency figures; failure fails the run\n"
"  --end-after-exec S        traffic ends S seconds after every --exec command has\n"
"                            ended (at --duration at the latest): a run as long as\n"
"                            its commands (e.g. canaries that end when a gate trips)\n"
"\n"
"Run:\n"
"  --login-rate N            connects per second during setup (default 400)\n"
"  --attach-timeout S        setup gives up waiting for clients after S (default 180)\n"
"  --drain S                 after traffic, wait up to S for outstanding lines (default 30)\n"
"  --json                    JSON report on stdout (human report on stderr)\n"
"  --log-sent FILE           write every numbered line as sent (time, side, sender\n"
"                            id, raw IRC line) to FILE, for tracing a loss\n"
"  -v, --verbose             timeline entries on stderr as they happen\n"
"  -h, --help                this text\n"
"\n"
"Exit status: 0 if some delivery was expected and every expected line arrived\n"
"intact, exactly once and in order (no echo, nothing foreign), no bouncer\n"
"client was disconnected by baton (outside --baton-restart), every client is\n"
"attached at the end, the drain completed, every scenario started and every\n"
"command succeeded, and restarts stayed within --excused-max-share; 1\n"
"otherwise (the report lists why); 2 on usage or setup errors.\n");
}

static int parse_addr(const char *opt, const char *s, struct sockaddr_in *a)
{
	char host[256];
	const char *colon = strrchr(s, ':');
	if (!colon || colon == s || (size_t)(colon - s) >= sizeof(host)) {
		fprintf(stderr, "baton-loadgen: %s %s: want HOST:PORT\n", opt, s);
		return -1;
	}
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = '\0';
	char *end;
	long port = strtol(colon + 1, &end, 10);
	if (*end || port <= 0 || port > 65535) {
		fprintf(stderr, "baton-loadgen: %s %s: bad port\n", opt, s);
		return -1;
	}
	memset(a, 0, sizeof(*a));
	a->sin_family = AF_INET;
	a->sin_port = htons((uint16_t)port);
	if (inet_pton(AF_INET, host, &a->sin_addr) != 1) {
		struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM }, *ai;
		if (getaddrinfo(host, NULL, &hints, &ai) != 0) {
			fprintf(stderr, "baton-loadgen: %s %s: unknown host\n", opt, s);
			return -1;
		}
		a->sin_addr = ((struct sockaddr_in *)ai->ai_addr)->sin_addr;
		freeaddrinfo(ai);
	}
	return 0;
}

static int parse_num(const char *opt, const char *s, double min, double max, double *out)
{
	char *end;
	double v = strtod(s, &end);
	if (end == s || *end || v < min || v > max) {
		fprintf(stderr, "baton-loadgen: %s %s: want a number in [%g, %g]\n", opt, s, min, max);
		return -1;
	}
	*out = v;
	return 0;
}

enum {
	O_SERVER = 256, O_BATON, O_NETWORK, O_PASSWORD, O_CLIENT, O_UPREFIX, O_NPREFIX,
	O_TRACE, O_USERS, O_CHANNELS, O_CPU, O_RATE, O_DURATION, O_MAXGAP, O_SHARE, O_SEED,
	O_EMIT, O_NETSPLIT, O_RECONNECT, O_RMODE, O_RDELAY, O_SRESTART, O_BRESTART,
	O_GRACE, O_EXEC, O_ENDEXEC, O_LOGIN, O_ATTACH, O_DRAIN, O_JSON, O_LOGSENT, O_EXSHARE,
};

static const struct option longopts[] = {
	{ "server", required_argument, NULL, O_SERVER },
	{ "baton", required_argument, NULL, O_BATON },
	{ "network", required_argument, NULL, O_NETWORK },
	{ "password", required_argument, NULL, O_PASSWORD },
	{ "client-name", required_argument, NULL, O_CLIENT },
	{ "user-prefix", required_argument, NULL, O_UPREFIX },
	{ "nick-prefix", required_argument, NULL, O_NPREFIX },
	{ "trace", required_argument, NULL, O_TRACE },
	{ "bouncer-users", required_argument, NULL, O_USERS },
	{ "channels", required_argument, NULL, O_CHANNELS },
	{ "chans-per-user", required_argument, NULL, O_CPU },
	{ "rate", required_argument, NULL, O_RATE },
	{ "duration", required_argument, NULL, O_DURATION },
	{ "max-gap", required_argument, NULL, O_MAXGAP },
	{ "bouncer-share", required_argument, NULL, O_SHARE },
	{ "seed", required_argument, NULL, O_SEED },
	{ "emit-users", no_argument, NULL, O_EMIT },
	{ "netsplit", required_argument, NULL, O_NETSPLIT },
	{ "mass-reconnect", required_argument, NULL, O_RECONNECT },
	{ "reconnect-mode", required_argument, NULL, O_RMODE },
	{ "reconnect-delay", required_argument, NULL, O_RDELAY },
	{ "server-restart", required_argument, NULL, O_SRESTART },
	{ "baton-restart", required_argument, NULL, O_BRESTART },
	{ "restart-grace", required_argument, NULL, O_GRACE },
	{ "excused-max-share", required_argument, NULL, O_EXSHARE },
	{ "exec", required_argument, NULL, O_EXEC },
	{ "end-after-exec", required_argument, NULL, O_ENDEXEC },
	{ "login-rate", required_argument, NULL, O_LOGIN },
	{ "attach-timeout", required_argument, NULL, O_ATTACH },
	{ "drain", required_argument, NULL, O_DRAIN },
	{ "json", no_argument, NULL, O_JSON },
	{ "log-sent", required_argument, NULL, O_LOGSENT },
	{ "verbose", no_argument, NULL, 'v' },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

static void raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

int main(int argc, char **argv)
{
	struct lg_opts o = {
		.network = "net", .password = "secret", .client_name = "lg",
		.user_prefix = "u", .nick_prefix = "bn", .nbouncer = 150,
		.login_rate = 400, .attach_timeout = 180, .drain_timeout = 30,
		.reconnect_delay = 2, .restart_grace = 5, .seed = 1, .end_after_exec = -1,
	};
	double excused_max_share = 0.95;
	struct model_params mp = {
		.nchans = 10, .chans_per_user = 2, .rate = 20, .max_gap = 600,
		.bouncer_share = 0.5, .duration = 30,
	};
	const char *trace_path = DEFAULT_TRACE;
	bool have_server = false, have_baton = false, emit = false, json = false;
	struct trace *tr = NULL;
	struct model *m = NULL;
	struct lg_result *res = NULL;
	char err[512];
	double v;
	int c, rc = 2;

	while ((c = getopt_long(argc, argv, "vh", longopts, NULL)) != -1) {
		const char *name = optind > 1 ? argv[optind - 1] : "option";
		enum scen_kind kind;
		switch (c) {
		case O_SERVER:
			if (parse_addr("--server", optarg, &o.server) < 0)
				goto out;
			have_server = true;
			break;
		case O_BATON:
			if (parse_addr("--baton", optarg, &o.baton) < 0)
				goto out;
			have_baton = true;
			break;
		case O_NETWORK: o.network = optarg; break;
		case O_PASSWORD: o.password = optarg; break;
		case O_CLIENT: o.client_name = optarg; break;
		case O_UPREFIX: o.user_prefix = optarg; break;
		case O_NPREFIX: o.nick_prefix = optarg; break;
		case O_TRACE: trace_path = optarg; break;
		case O_USERS:
			if (parse_num("--bouncer-users", optarg, 0, 100000, &v) < 0)
				goto out;
			o.nbouncer = (unsigned)v;
			break;
		case O_CHANNELS:
			if (parse_num("--channels", optarg, 1, 10000, &v) < 0)
				goto out;
			mp.nchans = (unsigned)v;
			break;
		case O_CPU:
			if (parse_num("--chans-per-user", optarg, 1, 30, &v) < 0)
				goto out;
			mp.chans_per_user = (unsigned)v;
			break;
		case O_RATE:
			if (parse_num("--rate", optarg, 0.001, 1e6, &mp.rate) < 0)
				goto out;
			break;
		case O_DURATION:
			if (parse_num("--duration", optarg, 0.001, 1e6, &mp.duration) < 0)
				goto out;
			break;
		case O_MAXGAP:
			if (parse_num("--max-gap", optarg, 0, 1e12, &mp.max_gap) < 0)
				goto out;
			break;
		case O_SHARE:
			if (parse_num("--bouncer-share", optarg, 0, 1, &mp.bouncer_share) < 0)
				goto out;
			break;
		case O_SEED:
			if (parse_num("--seed", optarg, 0, 1e15, &v) < 0)
				goto out;
			o.seed = (uint64_t)v;
			break;
		case O_EMIT: emit = true; break;
		case O_NETSPLIT: kind = SC_NETSPLIT; goto scen;
		case O_RECONNECT: kind = SC_RECONNECT; goto scen;
		case O_SRESTART: kind = SC_SERVER_RESTART; goto scen;
		case O_BRESTART: kind = SC_BATON_RESTART; goto scen;
		case O_EXEC: kind = SC_EXEC;
		scen: {
			struct scenario *nv = realloc(o.scen, (o.nscen + 1) * sizeof(*nv));
			if (!nv) {
				fprintf(stderr, "baton-loadgen: out of memory\n");
				goto out;
			}
			o.scen = nv;
			if (scenario_parse(kind, optarg, &o.scen[o.nscen], err, sizeof(err)) < 0) {
				fprintf(stderr, "baton-loadgen: %s\n", err);
				goto out;
			}
			o.nscen++;
			break;
		}
		case O_RMODE:
			if (!strcmp(optarg, "quit"))
				o.reconnect_mode = RECONNECT_QUIT;
			else if (!strcmp(optarg, "drop"))
				o.reconnect_mode = RECONNECT_DROP;
			else {
				fprintf(stderr, "baton-loadgen: --reconnect-mode %s: want quit or drop\n", optarg);
				goto out;
			}
			break;
		case O_RDELAY:
			if (parse_num("--reconnect-delay", optarg, 0, 3600, &o.reconnect_delay) < 0)
				goto out;
			break;
		case O_GRACE:
			if (parse_num("--restart-grace", optarg, 0, 3600, &o.restart_grace) < 0)
				goto out;
			break;
		case O_ENDEXEC:
			if (parse_num("--end-after-exec", optarg, 0, 3600, &o.end_after_exec) < 0)
				goto out;
			break;
		case O_EXSHARE:
			if (parse_num("--excused-max-share", optarg, 0, 1, &excused_max_share) < 0)
				goto out;
			break;
		case O_LOGIN:
			if (parse_num("--login-rate", optarg, 1, 1e6, &o.login_rate) < 0)
				goto out;
			break;
		case O_ATTACH:
			if (parse_num("--attach-timeout", optarg, 1, 1e5, &o.attach_timeout) < 0)
				goto out;
			break;
		case O_DRAIN:
			if (parse_num("--drain", optarg, 0, 1e5, &o.drain_timeout) < 0)
				goto out;
			break;
		case O_JSON: json = true; break;
		case O_LOGSENT:
			o.sent_log = fopen(optarg, "w");
			if (!o.sent_log) {
				fprintf(stderr, "baton-loadgen: --log-sent %s: %s\n", optarg, strerror(errno));
				goto out;
			}
			break;
		case 'v': o.verbose++; break;
		case 'h':
			usage(stdout);
			rc = 0;
			goto out;
		default:
			(void)name;
			usage(stderr);
			goto out;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "baton-loadgen: unexpected argument %s (see --help)\n", argv[optind]);
		goto out;
	}
	if (!emit && (!have_server || !have_baton)) {
		fprintf(stderr, "baton-loadgen: --server and --baton are required (see --help)\n");
		goto out;
	}
	mp.nbouncer = o.nbouncer;
	mp.seed = o.seed;

	if (trace_load(trace_path, &tr, err, sizeof(err)) < 0) {
		fprintf(stderr, "baton-loadgen: %s\n", err);
		goto out;
	}
	if (model_new(tr, &mp, &m, err, sizeof(err)) < 0) {
		fprintf(stderr, "baton-loadgen: %s\n", err);
		goto out;
	}
	if (emit) {
		for (unsigned u = 0; u < o.nbouncer; u++) {
			char user[64], nick[64], name[16];
			unsigned n;
			const uint16_t *uc = model_user_chans(m, u, &n);
			driver_user_name(&o, u, user, sizeof(user), nick, sizeof(nick));
			printf("%s %s ", user, nick);
			for (unsigned i = 0; i < n; i++)
				printf("%s%s", i ? "," : "", model_chan_name(uc[i], name, sizeof(name)));
			printf("\n");
		}
		rc = 0;
		goto out;
	}
	raise_nofile();
	signal(SIGPIPE, SIG_IGN);

	res = calloc(1, sizeof(*res));
	if (!res) {
		fprintf(stderr, "baton-loadgen: out of memory\n");
		goto out;
	}
	size_t nsched, npres;
	model_schedule(m, &nsched);
	model_presence(m, &npres);
	res->tr = tr;
	res->nbouncer = o.nbouncer;
	res->nchans = mp.nchans;
	res->chans_per_user = mp.chans_per_user < mp.nchans ? mp.chans_per_user : mp.nchans;
	res->copies = model_copies(m);
	res->rate = mp.rate;
	res->duration = mp.duration;
	res->speed = model_speed(m);
	res->bouncer_share = mp.bouncer_share;
	res->excused_max_share = excused_max_share;
	res->schedule_events = nsched;
	res->presence = npres;
	if (driver_run(&o, tr, m, res) < 0)
		goto out;
	if (json) {
		report_json(stdout, res);
		report_text(stderr, res);
	} else {
		report_text(stdout, res);
	}
	rc = report_exit_code(res);
out:
	for (unsigned i = 0; i < o.nscen; i++)
		free(o.scen[i].cmd);
	free(o.scen);
	if (o.sent_log)
		fclose(o.sent_log);
	free(res);
	model_free(m);
	trace_free(tr);
	return rc;
}
