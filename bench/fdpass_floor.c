/* bench/fdpass_floor.c: the physical floor of a migration (docs/design.md §2, §9).
 *
 * Creates N sockets (default 10,000: both ends of 5,000 loopback TCP
 * connections, the same fd count a worker holds for 5,000 sessions with one
 * attached client each), forks a receiver, and passes every socket over a
 * SOCK_SEQPACKET socketpair together with S bytes of opaque "state" per fd
 * (default 2048), B fds per sendmsg (default 253 = SCM_MAX_FD). State larger
 * than one datagram is fragmented like common/frame.c does (60 KiB
 * fragments, fds on the first fragment). The receiver acknowledges every
 * batch (default: like the per-chunk PREPARED of the real protocol) or only
 * the end (--ack end).
 *
 * total_ms = first sendmsg .. last ack received by the sender (the receiver
 * holds every fd and every state byte). Setup (creating the connections) and
 * teardown are not timed. Each configuration runs --reps times (default 5)
 * and reports the median (total_ms) and the fastest (min_ms).
 *
 * Output: one JSON object per configuration:
 *   {"fds":N,"state_bytes":S,"batch":B,"ack":"batch","reps":R,
 *    "total_ms":X,"per_fd_us":Y,"min_ms":..,"max_ms":..,"setup_ms":..}
 * --sweep runs batches 1,16,64,253 and prints a JSON array of such objects.
 *
 * Plain sendmsg/recvmsg on purpose: independent of the handoff library, so
 * it measures the kernel, not our code. Only loopback; the listener binds a
 * port in 20000-20999 (--port, default: first free from 20990 upwards).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS_PER_MSG 253
#define FRAGMENT (60 * 1024)

enum { T_BATCH = 1, T_DATA = 2, T_END = 3, T_ACK = 4, T_CLEAN = 5, T_QUIT = 6 };

#define F_ACK 1u /* acknowledge this batch once all its state arrived */

struct hdr {
	uint32_t type;
	uint32_t seq;   /* batch number */
	uint32_t nfds;  /* fds attached to this datagram */
	uint32_t total; /* state bytes of the whole batch */
	uint32_t flags;
};

static void die(const char *what)
{
	fprintf(stderr, "fdpass-floor: %s: %s\n", what, strerror(errno));
	exit(1);
}

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
			perror("fdpass-floor: setrlimit");
	}
}

static int send_all(int sock, const struct hdr *h, const void *data,
		    size_t len, const int *fds, size_t nfds)
{
	struct iovec iov[2] = {
		{ .iov_base = (void *)h, .iov_len = sizeof(*h) },
		{ .iov_base = (void *)data, .iov_len = len },
	};
	union {
		char buf[CMSG_SPACE(sizeof(int) * MAX_FDS_PER_MSG)];
		struct cmsghdr align;
	} u;
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = len ? 2 : 1 };
	if (nfds) {
		mh.msg_control = u.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
	}
	for (;;) {
		ssize_t r = sendmsg(sock, &mh, MSG_NOSIGNAL);
		if (r >= 0)
			return 0;
		if (errno != EINTR)
			return -1;
	}
}

/* ---------------- receiver ---------------- */

static int receiver(int sock, size_t max_fds, size_t state_bytes, size_t batch,
		    size_t fragment)
{
	int *held = calloc(max_fds, sizeof(int));
	size_t nheld = 0;
	size_t bufsz = sizeof(struct hdr) + fragment;
	uint8_t *buf = malloc(bufsz);
	uint8_t *state = malloc(state_bytes * batch + 1);
	union {
		char buf[CMSG_SPACE(sizeof(int) * MAX_FDS_PER_MSG)];
		struct cmsghdr align;
	} u;
	size_t got = 0, want = 0;
	uint32_t flags = 0;
	if (!held || !buf || !state)
		die("malloc");

	for (;;) {
		struct iovec iov = { .iov_base = buf, .iov_len = bufsz };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
				     .msg_control = u.buf,
				     .msg_controllen = sizeof(u.buf) };
		ssize_t r = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			die("receiver recvmsg");
		}
		if (r == 0)
			return 0;
		if (mh.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) {
			fprintf(stderr, "fdpass-floor: receiver: truncated (%s)\n",
				mh.msg_flags & MSG_CTRUNC ? "MSG_CTRUNC" : "MSG_TRUNC");
			exit(1);
		}
		if ((size_t)r < sizeof(struct hdr)) {
			fprintf(stderr, "fdpass-floor: short datagram\n");
			exit(1);
		}
		struct hdr h;
		memcpy(&h, buf, sizeof(h));
		size_t nrecv = 0;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c;
		     c = CMSG_NXTHDR(&mh, c)) {
			if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
				continue;
			size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			if (nheld + n > max_fds) {
				fprintf(stderr, "fdpass-floor: too many fds\n");
				exit(1);
			}
			memcpy(held + nheld, CMSG_DATA(c), n * sizeof(int));
			nheld += n;
			nrecv += n;
		}
		if (nrecv != h.nfds) {
			fprintf(stderr, "fdpass-floor: fd count %zu != announced %u\n",
				nrecv, h.nfds);
			exit(1);
		}
		size_t plen = (size_t)r - sizeof(h);
		struct hdr ack = { .type = T_ACK, .seq = h.seq };
		switch (h.type) {
		case T_BATCH:
			got = 0;
			want = h.total;
			flags = h.flags;
			if (want > state_bytes * batch) {
				fprintf(stderr, "fdpass-floor: batch too large\n");
				exit(1);
			}
			/* fallthrough */
		case T_DATA:
			if (got + plen > want) {
				fprintf(stderr, "fdpass-floor: state overrun\n");
				exit(1);
			}
			memcpy(state + got, buf + sizeof(h), plen); /* "decode" */
			got += plen;
			if (got == want && (flags & F_ACK)) {
				flags = 0;
				if (send_all(sock, &ack, NULL, 0, NULL, 0))
					die("receiver batch ack");
			}
			break;
		case T_END:
			ack.nfds = (uint32_t)nheld;
			if (send_all(sock, &ack, NULL, 0, NULL, 0))
				die("receiver ack");
			break;
		case T_CLEAN:
			for (size_t i = 0; i < nheld; i++)
				close(held[i]);
			nheld = 0;
			if (send_all(sock, &ack, NULL, 0, NULL, 0))
				die("receiver clean ack");
			break;
		case T_QUIT:
			return 0;
		default:
			fprintf(stderr, "fdpass-floor: bad type %u\n", h.type);
			exit(1);
		}
	}
}

/* ---------------- sender ---------------- */

static int wait_ack(int sock, uint32_t seq, uint32_t *nfds_out)
{
	struct hdr h;
	for (;;) {
		ssize_t r = recv(sock, &h, sizeof(h), 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r != (ssize_t)sizeof(h) || h.type != T_ACK || h.seq != seq) {
			fprintf(stderr, "fdpass-floor: bad ack (r=%zd)\n", r);
			exit(1);
		}
		if (nfds_out)
			*nfds_out = h.nfds;
		return 0;
	}
}

static int listen_loopback(int port)
{
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (l < 0)
		die("socket");
	int one = 1;
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int first = port ? port : 20990, last = port ? port : 20999;
	for (int p = first; p <= last; p++) {
		a.sin_port = htons(p);
		if (bind(l, (struct sockaddr *)&a, sizeof(a)) == 0) {
			if (listen(l, 4096) != 0)
				die("listen");
			return l;
		}
	}
	die("bind (ports 20990-20999 or --port)");
	return -1;
}

static int connect_to(int l)
{
	struct sockaddr_in a;
	socklen_t al = sizeof(a);
	if (getsockname(l, (struct sockaddr *)&a, &al) != 0)
		die("getsockname");
	int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c < 0)
		die("socket (connect side)");
	if (connect(c, (struct sockaddr *)&a, sizeof(a)) != 0)
		die("connect");
	return c;
}

/* Fill fds[0..n): pairs mode = both ends of n/2 connections held here;
 * oneside mode = n accepted ends here, the n connecting ends in a helper
 * process (like ngircd and the clients hold the other ends in reality). */
static pid_t make_sockets(int *fds, size_t n, int oneside, int port)
{
	int l = listen_loopback(port);
	pid_t helper = 0;
	if (!oneside) {
		for (size_t i = 0; i + 1 < n; i += 2) {
			fds[i] = connect_to(l);
			fds[i + 1] = accept4(l, NULL, NULL, SOCK_CLOEXEC);
			if (fds[i + 1] < 0)
				die("accept");
		}
		if (n % 2) {
			int c = connect_to(l);
			fds[n - 1] = accept4(l, NULL, NULL, SOCK_CLOEXEC);
			close(c);
		}
	} else {
		int go[2];
		if (pipe(go))
			die("pipe");
		helper = fork();
		if (helper < 0)
			die("fork helper");
		if (helper == 0) {
			close(go[1]);
			for (size_t i = 0; i < n; i++)
				(void)connect_to(l);
			char c;
			(void)!read(go[0], &c, 1); /* parent exit closes it */
			_exit(0);
		}
		close(go[0]);
		for (size_t i = 0; i < n; i++) {
			fds[i] = accept4(l, NULL, NULL, SOCK_CLOEXEC);
			if (fds[i] < 0)
				die("accept");
		}
		/* go[1] intentionally left open until exit: helper holds on. */
	}
	close(l);
	return helper;
}

struct result {
	size_t batch;
	int ack_batch;
	double total_ms, min_ms, max_ms;
	int reps;
};

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double one_pass(int sock, const int *fds, size_t n, size_t state_bytes,
		       size_t batch, int ack_batch, const uint8_t *state,
		       size_t fragment, uint32_t *seq)
{
	double t0 = now_ms();
	for (size_t off = 0; off < n; off += batch) {
		size_t nb = n - off < batch ? n - off : batch;
		size_t total = nb * state_bytes;
		struct hdr h = { .type = T_BATCH, .seq = ++*seq,
				 .nfds = (uint32_t)nb, .total = (uint32_t)total,
				 .flags = ack_batch ? F_ACK : 0 };
		size_t first = total < fragment ? total : fragment;
		if (send_all(sock, &h, state, first, fds + off, nb))
			die("sendmsg batch");
		for (size_t p = first; p < total; p += fragment) {
			size_t len = total - p < fragment ? total - p : fragment;
			struct hdr d = { .type = T_DATA, .seq = h.seq,
					 .total = (uint32_t)total };
			if (send_all(sock, &d, state + p, len, NULL, 0))
				die("sendmsg data");
		}
		if (ack_batch)
			wait_ack(sock, h.seq, NULL);
	}
	struct hdr e = { .type = T_END, .seq = ++*seq };
	if (send_all(sock, &e, NULL, 0, NULL, 0))
		die("sendmsg end");
	uint32_t held = 0;
	wait_ack(sock, e.seq, &held);
	double t1 = now_ms();
	if (held != n) {
		fprintf(stderr, "fdpass-floor: receiver holds %u fds, sent %zu\n",
			held, n);
		exit(1);
	}
	/* untimed: receiver closes its copies (next rep starts clean) */
	struct hdr c = { .type = T_CLEAN, .seq = ++*seq };
	if (send_all(sock, &c, NULL, 0, NULL, 0))
		die("sendmsg clean");
	wait_ack(sock, c.seq, NULL);
	return t1 - t0;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: fdpass-floor [-n FDS] [-s STATE_BYTES] [-b BATCH] [--sweep]\n"
		"                    [--ack batch|end] [--reps R] [--oneside]\n"
		"                    [--fragment BYTES] [--port P]\n"
		"  -n, --fds N        sockets to pass (default 10000)\n"
		"  -s, --state S      state bytes per fd (default 2048)\n"
		"  -b, --batch B      fds per sendmsg, 1..253 (default 253)\n"
		"  --sweep            batches 1,16,64,253; prints a JSON array\n"
		"  --batches L        comma-separated batch list (implies --sweep)\n"
		"  --ack batch|end    receiver acks each batch (default) or only the end\n"
		"  --reps R           repetitions, median reported (default 5)\n"
		"  --oneside          N accepted sockets; peers held by a helper process\n"
		"                     (default: both ends of N/2 connections)\n"
		"  --fragment BYTES   max state bytes per datagram (default 61440)\n"
		"  --port P           listener port (default first free of 20990-20999)\n");
	exit(2);
}

int main(int argc, char **argv)
{
	size_t n = 10000, state_bytes = 2048, batch = 253, fragment = FRAGMENT;
	size_t batches[16] = { 0 };
	size_t nb = 0;
	int sweep = 0, ack_batch = 1, reps = 5, oneside = 0, port = 0;
	static const struct option opts[] = {
		{ "fds", required_argument, NULL, 'n' },
		{ "state", required_argument, NULL, 's' },
		{ "batch", required_argument, NULL, 'b' },
		{ "sweep", no_argument, NULL, 'S' },
		{ "ack", required_argument, NULL, 'a' },
		{ "reps", required_argument, NULL, 'r' },
		{ "oneside", no_argument, NULL, 'o' },
		{ "fragment", required_argument, NULL, 'f' },
		{ "port", required_argument, NULL, 'p' },
		{ "batches", required_argument, NULL, 'B' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;
	while ((c = getopt_long(argc, argv, "n:s:b:r:h", opts, NULL)) != -1) {
		switch (c) {
		case 'n': n = strtoul(optarg, NULL, 10); break;
		case 's': state_bytes = strtoul(optarg, NULL, 10); break;
		case 'b': batch = strtoul(optarg, NULL, 10); break;
		case 'S': sweep = 1; break;
		case 'B': {
			char *p = optarg;
			nb = 0;
			while (*p && nb < 16) {
				batches[nb++] = strtoul(p, &p, 10);
				if (*p == ',')
					p++;
				else if (*p)
					usage();
			}
			sweep = 1;
			break;
		}
		case 'a':
			if (!strcmp(optarg, "batch")) ack_batch = 1;
			else if (!strcmp(optarg, "end")) ack_batch = 0;
			else usage();
			break;
		case 'r': reps = atoi(optarg); break;
		case 'o': oneside = 1; break;
		case 'f': fragment = strtoul(optarg, NULL, 10); break;
		case 'p': port = atoi(optarg); break;
		default: usage();
		}
	}
	if (!sweep) {
		batches[0] = batch;
		nb = 1;
	}
	for (size_t i = 0; i < nb; i++)
		if (batches[i] < 1 || batches[i] > MAX_FDS_PER_MSG)
			usage();
	if (n < 1 || batch < 1 || batch > MAX_FDS_PER_MSG || reps < 1 ||
	    fragment < 1 || fragment > 4u * 1024 * 1024 ||
	    (port && (port < 20000 || port > 20999)))
		usage();

	raise_nofile();
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	if ((rlim_t)n + 64 > rl.rlim_cur) {
		fprintf(stderr, "fdpass-floor: RLIMIT_NOFILE %lu too small for %zu fds\n",
			(unsigned long)rl.rlim_cur, n);
		return 1;
	}

	if (sweep && nb == 0) {
		batches[0] = 1; batches[1] = 16; batches[2] = 64; batches[3] = 253;
		nb = 4;
	}
	size_t maxbatch = 0;
	for (size_t i = 0; i < nb; i++)
		if (batches[i] > maxbatch)
			maxbatch = batches[i];

	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv))
		die("socketpair");
	int big = 4 * 1024 * 1024;
	for (int i = 0; i < 2; i++) {
		if (setsockopt(sv[i], SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big)))
			setsockopt(sv[i], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
		if (setsockopt(sv[i], SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big)))
			setsockopt(sv[i], SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
	}
	/* Fork the receiver first, so it inherits none of the sockets. */
	pid_t rpid = fork();
	if (rpid < 0)
		die("fork");
	if (rpid == 0) {
		close(sv[0]);
		_exit(receiver(sv[1], n + 16, state_bytes ? state_bytes : 1,
			       maxbatch, fragment));
	}
	close(sv[1]);
	int sock = sv[0];

	int *fds = calloc(n, sizeof(int));
	uint8_t *state = malloc(maxbatch * state_bytes + 1);
	if (!fds || !state)
		die("malloc");
	for (size_t i = 0; i < maxbatch * state_bytes; i++)
		state[i] = (uint8_t)(i * 131 + 7);

	double s0 = now_ms();
	pid_t helper = make_sockets(fds, n, oneside, port);
	double setup_ms = now_ms() - s0;

	uint32_t seq = 0;
	double *t = calloc(reps, sizeof(double));
	/* one untimed warm-up pass: faults in the receiver's fd table etc. */
	(void)one_pass(sock, fds, n, state_bytes, batches[nb - 1], ack_batch,
		       state, fragment, &seq);
	if (sweep)
		printf("[\n");
	for (size_t bi = 0; bi < nb; bi++) {
		for (int r = 0; r < reps; r++)
			t[r] = one_pass(sock, fds, n, state_bytes, batches[bi],
					ack_batch, state, fragment, &seq);
		qsort(t, reps, sizeof(double), cmp_double);
		double med = reps % 2 ? t[reps / 2]
				      : (t[reps / 2 - 1] + t[reps / 2]) / 2;
		printf("%s{\"fds\":%zu,\"state_bytes\":%zu,\"batch\":%zu,"
		       "\"ack\":\"%s\",\"sockets\":\"%s\",\"reps\":%d,"
		       "\"total_ms\":%.3f,\"per_fd_us\":%.3f,\"min_ms\":%.3f,"
		       "\"max_ms\":%.3f,\"setup_ms\":%.1f}%s\n",
		       sweep ? "  " : "", n, state_bytes, batches[bi],
		       ack_batch ? "batch" : "end", oneside ? "oneside" : "pairs",
		       reps, med, med * 1000.0 / n, t[0], t[reps - 1], setup_ms,
		       sweep && bi + 1 < nb ? "," : "");
		fflush(stdout);
	}
	if (sweep)
		printf("]\n");

	struct hdr q = { .type = T_QUIT };
	send_all(sock, &q, NULL, 0, NULL, 0);
	int st;
	waitpid(rpid, &st, 0);
	for (size_t i = 0; i < n; i++)
		close(fds[i]);
	if (helper > 0) {
		kill(helper, SIGTERM);
		waitpid(helper, NULL, 0);
	}
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "fdpass-floor: receiver failed\n");
		return 1;
	}
	return 0;
}
