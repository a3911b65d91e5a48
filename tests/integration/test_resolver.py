"""Network hosts given by name (sessiond/resolver.h: evdns, off the worker's
event loop), against ngircd on 127.0.0.1 and a name server of the test's own
on loopback (BATON_RESOLV_CONF points the workers at it: no query leaves the
machine):

- a name from /etc/hosts ("localhost") and a name from the name server both
  reach the network, every session registers;
- an upgrade while every session's lookup is in flight (the name server
  holds its answers for a few seconds): the old worker cancels them when it
  freezes the sessions, the new worker resolves again and every session
  registers there; nobody crashes;
- a name the name server never answers: the lookups time out, the log says
  why, the sessions back off, and the worker keeps serving (status answers
  at once: its loop never waited)."""

import os
import socket
import struct
import threading
import time

import batonlib as bl
from batonlib import check

CHANNELS = ["#chat"]


class NameServer:
    """UDP DNS on 127.0.0.1 (own thread): A for the names in `names`
    (answered after `delay` seconds), empty answers for other types of
    them, silence for any other name."""

    def __init__(self, names, delay=0.0):
        self.names = {n.lower() for n in names}
        self.delay = delay
        self.queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = False
        self.pending = []  # (due, reply, addr)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def close(self):
        self.stop = True
        self.thread.join(2)
        self.sock.close()

    def write_conf(self, path, timeout=1):
        with open(path, "w") as f:
            f.write("nameserver 127.0.0.1:%d\noptions timeout:%d attempts:1 ndots:1\n"
                    % (self.port, timeout))
        return path

    def reply(self, q):
        i, labels = 12, []
        while q[i]:
            n = q[i]
            labels.append(q[i + 1:i + 1 + n].decode("ascii", "replace"))
            i += 1 + n
        qtype = struct.unpack("!H", q[i + 1:i + 3])[0]
        end = i + 5
        name = ".".join(labels).lower()
        if name not in self.names:
            return None
        an = 1 if qtype == 1 else 0
        hdr = q[:2] + b"\x81\x80" + struct.pack("!HHHH", 1, an, 0, 0)
        out = hdr + q[12:end]
        if an:
            out += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([127, 0, 0, 1])
        return out

    def run(self):
        while not self.stop:
            now = time.monotonic()
            due = [p for p in self.pending if p[0] <= now]
            self.pending = [p for p in self.pending if p[0] > now]
            for _, r, addr in due:
                self.sock.sendto(r, addr)
            try:
                q, addr = self.sock.recvfrom(512)
            except socket.timeout:
                continue
            except OSError:
                return
            self.queries += 1
            try:
                r = self.reply(q)
            except (IndexError, struct.error):
                r = None
            if r is not None:
                self.pending.append((time.monotonic() + self.delay, r, addr))


def start(ctx, host, ns=None, nsessions=4, wait=True, dns_timeout=1):
    """ngircd + watcher + baton whose network is `host`; the workers use
    ns (a NameServer) when given."""
    ng = ctx.ngircd()
    b = bl.Baton(ctx, ng, nsessions=nsessions, channels=CHANNELS)
    b.write_config(b.config_text().replace("host = 127.0.0.1", "host = %s" % host))
    w = bl.Watcher(ctx.loop, ng, CHANNELS, watch=[s.nick for s in b.sessions])
    old = os.environ.get("BATON_RESOLV_CONF")
    if ns is not None:
        os.environ["BATON_RESOLV_CONF"] = ns.write_conf(os.path.join(ctx.dir, "resolv.conf"),
                                                      timeout=dns_timeout)
    try:
        b.start(wait=False)
    finally:
        if ns is not None:
            if old is None:
                os.environ.pop("BATON_RESOLV_CONF", None)
            else:
                os.environ["BATON_RESOLV_CONF"] = old
    if wait:
        bl.pump_ready(ctx, b, timeout=60)
        w.wait_present([s.nick for s in b.sessions], timeout=30)
    return ng, w, b


def test_resolver_hosts_file(ctx):
    """localhost (the hosts file, no name server asked) connects."""
    ns = NameServer([])
    try:
        ng, w, b = start(ctx, "localhost", ns=ns, nsessions=2)
        check("connecting to localhost:" in b.log_text(), "no connect by name in the log")
        check(ns.queries == 0, "the name server was asked %d times" % ns.queries)
    finally:
        ns.close()


def test_resolver_upgrade_during_lookup(ctx):
    """A name from our name server, which holds every answer 2 s (lookups
    time out after 5 s); an upgrade while every session's lookup is in
    flight: the old worker cancels them, every session registers in the
    new worker within one lookup, nobody crashes."""
    ns = NameServer(["irc.baton.test"], delay=2.0)
    try:
        ng, w, b = start(ctx, "irc.baton.test", ns=ns, nsessions=4, wait=False,
                         dns_timeout=5)
        # READY, then the sessions start: wait for the lookups to be asked
        ctx.loop.run_until(lambda: ns.queries >= 4, 20, raise_on_timeout=False)
        check(ns.queries >= 4, "the worker asked the name server %d times" % ns.queries)
        pid_a = b.worker_pid()
        rc, res = b.upgrade(ctx.builds["b"].require())
        check(rc == 0 and res.get("result") == "committed",
              "upgrade during lookups: rc=%s %s" % (rc, res))
        check(b.worker_pid() != pid_a, "still the old worker")
        t0 = time.monotonic()
        bl.pump_ready(ctx, b, timeout=60)
        w.wait_present([s.nick for s in b.sessions], timeout=30)
        check(time.monotonic() - t0 < 15, "registered after %.1f s" % (time.monotonic() - t0))
        log = b.log_text()
        check("cannot resolve" not in log, "a lookup failed:\n%s" % b.log_tail())
        check("connecting to irc.baton.test:" in log, "no connect by name in the log")
        for bad in ("AddressSanitizer", "Segmentation", "core dumped", "crashed"):
            check(bad not in log, "%r in the log" % bad)
        check(b.status().get("crash_count", 0) == 0, "a worker crashed: %s" % b.last_status)
    finally:
        ns.close()


def test_resolver_timeout_backs_off(ctx):
    """A name the name server never answers: 'cannot resolve' in the log
    with the reason, the sessions wait for their retry, and status is
    answered at once meanwhile."""
    ns = NameServer(["other.baton.test"])
    try:
        ng, w, b = start(ctx, "never.baton.test", ns=ns, nsessions=3, wait=False)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "cannot resolve never.baton.test" not in b.log_text():
            ctx.loop.run_for(0.2)
        log = b.log_text()
        check("cannot resolve never.baton.test" in log, "no resolve failure logged:\n%s" % b.log_tail())
        t0 = time.monotonic()
        st = b.status()
        took = time.monotonic() - t0
        check(took < 2.0, "status took %.1f s" % took)
        wk = (st.get("workers") or [{}])[0]
        check(wk.get("sessions") == 3, "sessions %s" % wk)
        check(bl.Baton.worker_registered(wk) in (0, None), "registered? %s" % wk)
        check(ns.queries >= 3, "queries %d" % ns.queries)
    finally:
        ns.close()
