/* tests/fuzz/fuzz_handoff_frame.c: libFuzzer target for common/frame.c and
 * the target state machine of handoff/protocol.c.
 *
 * The input is a sequence of datagrams, each encoded as
 *   u8 mode, u16 len (little endian), len bytes
 * mode bits 0-1: how many fds to attach (copies of /dev/null);
 * mode bit 2: "auto header": the bytes are <type><payload> and a valid
 *   single-fragment frame header is prepended (so the fuzzer reaches the
 *   protobuf decoding and the phase checks quickly); otherwise the bytes are
 *   sent raw, header included.
 *
 * Each input is replayed twice over a fresh socketpair whose writing end is
 * closed afterwards: once into frame_recv() until it fails, once into
 * a handoff_target driven by its own event_base until done(). Both must end
 * (EOF always comes), and no fd may leak: the process's fd count after an
 * input equals the count before, or the target aborts.
 */
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/frame.h"
#include "handoff/protocol.h"

static int devnull = -1;

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		abort();
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1;
}

/* Queue the input's datagrams on sv[0] (stops early if the buffer fills),
 * then close sv[0] so the reader ends with EOF. */
static void load(int sv[2], const uint8_t *data, size_t size)
{
	while (size >= 3) {
		uint8_t mode = data[0];
		size_t len = data[1] | ((size_t)data[2] << 8);
		uint8_t hdr[FRAME_HEADER];
		int fds[3] = { devnull, devnull, devnull };
		size_t nfds = mode & 3;
		struct iovec iov[2];
		struct msghdr mh = { .msg_iov = iov };
		union {
			char buf[CMSG_SPACE(3 * sizeof(int))];
			struct cmsghdr align;
		} control;

		data += 3;
		size -= 3;
		if (len > size)
			len = size;
		if ((mode & 4) && len >= 1) {
			uint32_t plen = (uint32_t)(len - 1);

			hdr[0] = FRAME_MAGIC & 0xff;
			hdr[1] = FRAME_MAGIC >> 8;
			hdr[2] = FRAME_VERSION;
			hdr[3] = data[0];
			hdr[4] = hdr[5] = 0;
			hdr[6] = (uint8_t)nfds;
			hdr[7] = 0;
			for (int i = 0; i < 4; i++)
				hdr[8 + i] = hdr[12 + i] = (plen >> (8 * i)) & 0xff;
			iov[0] = (struct iovec){ hdr, sizeof(hdr) };
			iov[1] = (struct iovec){ (void *)(data + 1), plen };
			mh.msg_iovlen = 2;
		} else {
			iov[0] = (struct iovec){ (void *)data, len };
			mh.msg_iovlen = 1;
		}
		if (nfds) {
			struct cmsghdr *c;

			memset(&control, 0, sizeof(control));
			mh.msg_control = control.buf;
			mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
			c = CMSG_FIRSTHDR(&mh);
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_RIGHTS;
			c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
			memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
		}
		if (sendmsg(sv[0], &mh, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
			break;
		data += len;
		size -= len;
	}
	close(sv[0]);
	sv[0] = -1;
}

static void fuzz_frames(const uint8_t *data, size_t size)
{
	struct frame_msg m;
	int sv[2];

	if (frame_socketpair(sv) < 0)
		abort();
	load(sv, data, size);
	while (frame_recv(sv[1], &m, 0) == 0) {
		if (m.type == 0 || (m.len && !m.data) || m.data[m.len] != '\0' ||
		    m.nfds > FRAME_MAX_FDS)
			abort();
		if (m.nfds)
			close(frame_msg_take_fd(&m, 0));
		frame_msg_clear(&m);
	}
	close(sv[1]);
}

struct fz {
	bool done;
};

static int fz_prepare(void *arg, uint32_t chunk, uint32_t index,
		      const uint8_t *payload, size_t len, int *fds, size_t nfds,
		      char *reason, size_t reason_len)
{
	for (size_t i = 0; i < nfds; i++)
		close(fds[i]);
	if (len > 0 && payload[0] == 'x') {
		strncpy(reason, "fuzz says no", reason_len - 1);
		reason[reason_len - 1] = '\0';
		return -EINVAL;
	}
	return 0;
}

static void fz_commit(void *arg, uint32_t chunk)
{
}

static void fz_abort(void *arg, uint32_t chunk, const char *reason)
{
	if (!reason)
		abort();
}

static void fz_done(void *arg, int result, const char *reason, uint32_t n)
{
	struct fz *f = arg;

	if (f->done || !reason)
		abort(); /* exactly once, always with a reason */
	f->done = true;
}

static const struct handoff_target_ops fz_ops = {
	fz_prepare, fz_commit, fz_abort, fz_done,
};

static void fuzz_target(struct event_base *base, const uint8_t *data,
			size_t size)
{
	struct handoff_target *t;
	struct fz f = { false };
	int sv[2];

	if (frame_socketpair(sv) < 0)
		abort();
	load(sv, data, size);
	/* Timeout far beyond the run: EOF must end every migration. */
	t = handoff_target_new(base, sv[1], 60000, &fz_ops, &f);
	if (!t)
		abort();
	for (int i = 0; !f.done && i < 100000; i++)
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	if (!f.done)
		abort();
	handoff_target_free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct event_base *base;
	int before;

	if (devnull < 0) {
		devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
		base = event_base_new();
		if (devnull < 0 || !base)
			abort();
	}
	before = count_fds();
	fuzz_frames(data, size);
	fuzz_target(base, data, size);
	if (count_fds() != before)
		abort(); /* fd leak */
	return 0;
}
