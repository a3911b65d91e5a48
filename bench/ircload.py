"""bench/ircload.py: load machinery for the migration benchmark.

- ngircd fixture tuned for thousands of connections from 127.0.0.1
- client worker processes: many IRC clients on one selectors loop each,
  logging in either directly to ngircd (baseline) or to baton
  (PASS user/network:password), answering PINGs, and recording every
  benchmark line they receive (speaker, channel, seq, send time, receive time)
- a speaker process: a few clients directly on ngircd that send numbered,
  timestamped PRIVMSGs into the channels at a fixed total rate

Timestamps are time.monotonic_ns() (CLOCK_MONOTONIC, system-wide, so valid
across processes). A benchmark line is

    PRIVMSG #chan :BENCH <seq> <send_ns> <padding>

seq counts per channel from 1, so every client can check it received every
line of each of its channels exactly once and in order.

TLS (optional, off by default): client workers can connect over TLS
(client_worker(..., tls={"ca": CAFILE, "server_hostname": NAME})). The TLS
side runs on ssl.MemoryBIO + SSLObject: the selector watches the raw
socket, ciphertext is recv()'d and timestamped in the same place as plaintext
is, then decrypted until SSLWantReadError (nothing stays buffered inside an
SSL object unseen), and writes are encrypted into an output buffer that is
sent as the socket allows (no SSLWantWrite/WantRead dance on a socket).
Ngircd(..., tls={"port", "cert", "key", "dh"}) adds a TLS port ([SSL]).

Stdlib only; no dependency on tests/integration.
"""

import multiprocessing as mp
import os
import random
import resource
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time

LOOPBACK = "127.0.0.1"


def log(msg):
    sys.stderr.write("[bench %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def port_free(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((LOOPBACK, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def pick_ports(count, lo=20600, hi=20999, avoid=()):
    """`count` free loopback ports in [lo, hi], started at a random offset
    so parallel runs of different engineers rarely collide."""
    span = list(range(lo, hi + 1))
    start = random.randrange(len(span))
    span = span[start:] + span[:start]
    out = []
    for p in span:
        if p in avoid:
            continue
        if port_free(p):
            out.append(p)
            if len(out) == count:
                return out
    raise RuntimeError("no free ports in %d-%d" % (lo, hi))


def wait_port(port, timeout=10.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited with %s before listening on %d"
                               % (proc.returncode, port))
        try:
            socket.create_connection((LOOPBACK, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listening on port %d after %.0fs" % (port, timeout))


# --------------------------------------------------------------------------
# ngircd

NGIRCD_CONF = """\
[Global]
Name = bench.irc
Info = baton benchmark server
Listen = 127.0.0.1
Ports = {port}
PidFile = {dir}/ngircd.pid
MotdPhrase = baton bench
ServerUID = {uid}
ServerGID = {gid}

[Limits]
MaxConnections = 0
MaxConnectionsIP = 0
MaxJoins = 0
MaxNickLength = 30
MaxPenaltyTime = 0
MaxListSize = 100
PingTimeout = 600
PongTimeout = 120
ConnectRetry = 60

[Options]
DNS = no
Ident = no
PAM = no
SyslogFacility = local7
AllowRemoteOper = no
OperCanUseMode = yes
"""


# RFC 7919 ffdhe2048 DH parameters (shared with tests/integration/tlslib.py):
# ngircd (GnuTLS) otherwise generates DH parameters at start-up, which takes
# long on a busy machine.
FFDHE2048_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "tests", "integration", "ffdhe2048.pem")


def make_pki(dir, openssl="openssl"):
    """A throw-away CA and a server certificate for localhost / 127.0.0.1
    (RSA 2048, SHA-256; the commands of tests/integration/tlslib.PKI) in DIR.
    -> {"ca": ca.pem, "cert": server.pem, "key": server.key}."""
    os.makedirs(dir, exist_ok=True)
    p = lambda n: os.path.join(dir, n)  # noqa: E731

    def run(argv):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError("%s failed: %s" % (" ".join(argv[:3]), r.stderr[-500:]))
    run([openssl, "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256",
         "-days", "30", "-keyout", p("ca.key"), "-out", p("ca.pem"),
         "-subj", "/O=baton bench/CN=baton bench CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    run([openssl, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
         "-out", p("server.key")])
    run([openssl, "req", "-new", "-key", p("server.key"), "-out", p("server.csr"),
         "-subj", "/CN=localhost"])
    with open(p("server.ext"), "w") as f:
        f.write("basicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n"
                "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run([openssl, "x509", "-req", "-in", p("server.csr"), "-CA", p("ca.pem"),
         "-CAkey", p("ca.key"), "-set_serial", "1001", "-days", "30", "-sha256",
         "-extfile", p("server.ext"), "-out", p("server.pem")])
    with open(p("dhparams.pem"), "w") as f:
        with open(FFDHE2048_PATH) as src:
            f.write(src.read())
    return {"ca": p("ca.pem"), "cert": p("server.pem"), "key": p("server.key"),
            "dh": p("dhparams.pem")}


def client_tls_context(tls):
    """Client SSLContext from a tls dict {"ca": CAFILE, ...}: verifies the
    chain against CA and the name (server_hostname, default localhost)."""
    ctx = ssl.create_default_context(cafile=tls["ca"])
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class Ngircd:
    """ngircd on 127.0.0.1:port, nofile raised via prlimit, no daemonizing.
    tls={"port": P, "cert": F, "key": F, "dh": F} adds a TLS port (GnuTLS,
    [SSL] section); the plaintext port stays open (speakers use it)."""

    def __init__(self, port, workdir, nofile=20000, tls=None):
        self.port = port
        self.tls = tls
        self.dir = os.path.join(workdir, "ngircd")
        os.makedirs(self.dir, exist_ok=True)
        self.conf = os.path.join(self.dir, "ngircd.conf")
        text = NGIRCD_CONF.format(port=port, dir=self.dir,
                                  uid=os.getuid(), gid=os.getgid())
        if tls:
            text += ("\n[SSL]\nCertFile = %s\nKeyFile = %s\nDHFile = %s\nPorts = %d\n"
                     % (tls["cert"], tls["key"], tls["dh"], tls["port"]))
        with open(self.conf, "w") as f:
            f.write(text)
        self.nofile = nofile
        self.proc = None
        self.logf = None

    def start(self):
        ngircd = shutil.which("ngircd") or "/usr/sbin/ngircd"
        cmd = [ngircd, "-n", "-f", self.conf]
        if shutil.which("prlimit"):
            cmd = ["prlimit", "--nofile=%d" % self.nofile, "--"] + cmd
        self.logf = open(os.path.join(self.dir, "ngircd.log"), "w")
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        wait_port(self.port, proc=self.proc)
        if self.tls:
            wait_port(self.tls["port"], proc=self.proc)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.logf:
            self.logf.close()


# --------------------------------------------------------------------------
# IRC connections on a selectors loop

class Conn:
    __slots__ = ("idx", "sock", "rbuf", "wbuf", "state", "nick", "login",
                 "channels", "joined", "seqs", "samples", "closed_at",
                 "close_reason", "registered_at", "want_join", "lines_in",
                 "dups", "disorder", "other", "sender", "upseq", "force_kind", "member_events",
                 "tls", "tin", "tout", "obuf", "hs_done")

    def __init__(self, idx, nick, login, channels, want_join, sender=False):
        self.idx = idx
        self.sock = None
        self.rbuf = b""
        self.wbuf = bytearray()
        self.state = "new"
        self.nick = nick
        self.login = login          # PASS argument or None
        self.channels = channels    # lower-case names
        self.want_join = want_join  # send JOIN ourselves (direct mode)
        self.joined = set()
        self.seqs = {}              # b"chan sender" -> last seq seen
        self.samples = []           # (send_ns, recv_ns, kind)
        self.sender = sender        # sends uplink lines (client side)
        self.upseq = {}             # chan -> last seq sent by us
        self.closed_at = None
        self.close_reason = None
        self.registered_at = None
        self.lines_in = 0
        self.dups = 0
        self.disorder = 0
        self.other = 0
        self.force_kind = None  # speakers force kind 2
        self.member_events = 0  # JOIN/PART/QUIT/NICK of others seen
        self.tls = None         # SSLObject (TLS connections only)
        self.tin = self.tout = None  # its MemoryBIOs (ciphertext in / out)
        self.obuf = None        # ciphertext waiting for the socket
        self.hs_done = False


class Loop:
    """tls_ctx: an ssl.SSLContext (client side) -> every connect() is TLS."""

    def __init__(self, tls_ctx=None, server_hostname="localhost"):
        self.sel = selectors.DefaultSelector()
        self.conns = []
        self.tls_ctx = tls_ctx
        self.server_hostname = server_hostname

    def send(self, c, line):
        c.wbuf += line.encode() + b"\r\n"
        self._want_write(c)

    @staticmethod
    def pending_out(c):
        if c.tls is None:
            return bool(c.wbuf)
        return bool(c.obuf) or (c.hs_done and bool(c.wbuf))

    def _want_write(self, c):
        if c.sock is None:
            return
        ev = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.pending_out(c) else 0)
        try:
            self.sel.modify(c.sock, ev, c)
        except (KeyError, ValueError):
            pass

    def _tls_pump(self, c):
        """Encrypt queued plaintext (after the handshake) and move the
        SSLObject's output (handshake, records) to c.obuf."""
        if c.hs_done and c.wbuf:
            while c.wbuf:
                n = c.tls.write(c.wbuf)
                del c.wbuf[:n]
        if c.tout.pending:
            c.obuf += c.tout.read()

    def flush(self, c):
        """Send what can be sent now; close on error. False if closed."""
        if c.sock is None:
            return False
        if c.tls is not None:
            try:
                self._tls_pump(c)
            except ssl.SSLError as e:
                self.close(c, "tls: %s" % e)
                return False
            buf = c.obuf
        else:
            buf = c.wbuf
        if buf:
            try:
                n = c.sock.send(buf)
                del buf[:n]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:
                self.close(c, "send: %s" % e)
                return False
        self._want_write(c)
        return True

    def feed(self, c, data):
        """Bytes from recv() -> (plaintext, eof). Plaintext connections: as
        is. TLS: ciphertext into the SSLObject, handshake progress, then
        decrypt until SSLWantReadError; handshake/alert output is queued."""
        if c.tls is None:
            return data, not data
        if not data:
            return b"", True
        c.tin.write(data)
        out = []
        eof = False
        try:
            if not c.hs_done:
                try:
                    c.tls.do_handshake()
                    c.hs_done = True
                except ssl.SSLWantReadError:
                    pass
            if c.hs_done:
                while True:
                    try:
                        chunk = c.tls.read(262144)
                    except ssl.SSLWantReadError:
                        break
                    if not chunk:
                        eof = True
                        break
                    out.append(chunk)
        except ssl.SSLZeroReturnError:
            eof = True
        except ssl.SSLError as e:
            c.close_reason = "tls: %s" % e
            eof = True
        if not eof:
            self.flush(c)
        return b"".join(out), eof

    def connect(self, c, port):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            s.connect((LOOPBACK, port))
        except BlockingIOError:
            pass
        c.sock = s
        c.state = "connecting"
        if c.login:
            c.wbuf += ("PASS %s\r\n" % c.login).encode()
        c.wbuf += ("NICK %s\r\nUSER %s 0 * :bench %s\r\n"
                   % (c.nick, c.nick, c.nick)).encode()
        if self.tls_ctx is not None:
            c.tin, c.tout = ssl.MemoryBIO(), ssl.MemoryBIO()
            c.tls = self.tls_ctx.wrap_bio(c.tin, c.tout, server_side=False,
                                          server_hostname=self.server_hostname)
            c.obuf = bytearray()
            c.hs_done = False
            try:
                c.tls.do_handshake()  # ClientHello into tout
            except ssl.SSLWantReadError:
                pass
            self._tls_pump(c)
        self.sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
        self.conns.append(c)

    def close(self, c, reason):
        if c.sock is None:
            return
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()
        c.sock = None
        c.state = "closed"
        c.closed_at = time.monotonic_ns()
        c.close_reason = reason

    def poll(self, timeout, on_line):
        for key, ev in self.sel.select(timeout):
            c = key.data
            if c.sock is None:
                continue
            if ev & selectors.EVENT_WRITE and self.pending_out(c):
                if not self.flush(c):
                    continue
            if ev & selectors.EVENT_READ:
                try:
                    data = c.sock.recv(262144)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:
                    self.close(c, "recv: %s" % e)
                    continue
                now = time.monotonic_ns()
                data, eof = self.feed(c, data)
                if eof:
                    self.close(c, c.close_reason or "eof")
                    continue
                buf = c.rbuf + data
                lines = buf.split(b"\r\n")
                c.rbuf = lines.pop()
                for ln in lines:
                    on_line(c, ln, now)
                if self.pending_out(c):
                    self._want_write(c)


def parse_prefix_cmd(ln):
    """-> (prefix_nick or b'', command, params list) for a raw IRC line."""
    prefix = b""
    if ln.startswith(b"@"):  # message tags (server-time etc.)
        sp = ln.find(b" ")
        ln = ln[sp + 1:] if sp > 0 else b""
    if ln.startswith(b":"):
        sp = ln.find(b" ")
        if sp < 0:
            return b"", b"", []
        prefix = ln[1:sp]
        ln = ln[sp + 1:]
    trailing = None
    i = ln.find(b" :")
    if i >= 0:
        trailing = ln[i + 2:]
        ln = ln[:i]
    parts = ln.split()
    if not parts:
        return prefix, b"", []
    if trailing is not None:
        parts.append(trailing)
    nick = prefix.split(b"!", 1)[0]
    return nick, parts[0].upper(), parts[1:]


def handle_line(loop, c, ln, now):
    """Shared line handler: PING, registration, JOINs, BENCH lines."""
    # Fast path for the hot benchmark line:
    #   :nick!user@host PRIVMSG #chan :BENCH <seq> <send_ns> <pad>
    # seq counts per (channel, sender). kind: 0 network speaker -> client,
    # 1 client -> client (through the bouncer twice), 2 client -> network
    # (received by a speaker; set by the speaker loop).
    j = ln.find(b" PRIVMSG ")
    if j > 0:
        k = ln.find(b" :BENCH ", j)
        if k > 0:
            chan = ln[j + 9:k].lower()
            p0 = 1 if ln.startswith(b":") else ln.find(b" :") + 2
            e = ln.find(b"!", p0, j)
            sender = ln[p0:e if e > 0 else j]
            rest = ln[k + 8:].split(b" ", 2)
            seq = int(rest[0])
            sent = int(rest[1])
            c.lines_in += 1
            key = chan + b" " + sender
            last = c.seqs.get(key, 0)
            if seq == last + 1:
                c.seqs[key] = seq
            elif seq <= last:
                c.dups += 1
            else:
                c.disorder += 1  # gap: a line missing (or reordered)
                c.seqs[key] = seq
            kind = c.force_kind if c.force_kind is not None else (
                0 if sender.startswith(b"spk") else 1)
            c.samples.append((sent, now, kind))
            return
    nick, cmd, params = parse_prefix_cmd(ln)
    if cmd == b"PING":
        loop.send(c, "PONG :%s" % (params[-1].decode(errors="replace") if params else ""))
    elif cmd == b"001":
        if c.state != "registered":
            c.state = "registered"
            c.registered_at = now
            if params:
                c.nick = params[0].decode(errors="replace")
            if c.want_join and c.channels:
                loop.send(c, "JOIN %s" % ",".join(ch.decode() for ch in c.channels))
    elif cmd == b"JOIN":
        if nick.decode(errors="replace").lower() == c.nick.lower() and params:
            for ch in params[0].split(b","):
                c.joined.add(ch.lower())
        else:
            c.member_events += 1
    elif cmd in (b"PART", b"QUIT", b"NICK", b"KICK"):
        c.member_events += 1
    elif cmd in (b"ERROR", b"464", b"465", b"433"):
        c.other += 1
        if cmd != b"433":
            c.close_reason = ln.decode(errors="replace")[:200]
    else:
        c.other += 1


def conn_ready(c):
    return c.state == "registered" and all(ch in c.joined for ch in c.channels)


# --------------------------------------------------------------------------
# Client worker process

def make_pads(seed):
    """Padding with the trace's length mix: median ~45 bytes, p99 ~250."""
    rnd = random.Random(seed)
    pads = []
    for _ in range(997):
        n = int(min(400, rnd.lognormvariate(3.2, 0.75)))
        pads.append(b"x" * max(0, n))
    return pads


class Pacer:
    """Evenly spaced sends at `rate` lines/s from start()."""

    def __init__(self):
        self.rate = 0.0
        self.t0 = 0
        self.sent = 0
        self.lag_max = 0

    def start(self, rate):
        self.rate = float(rate)
        self.t0 = time.monotonic_ns()
        self.sent = 0
        return self.t0

    def due(self):
        """Lines due now (not yet sent)."""
        if self.rate <= 0:
            return 0
        now = time.monotonic_ns()
        d = int((now - self.t0) * self.rate / 1e9) + 1 - self.sent
        if d > 0:
            self.lag_max = max(self.lag_max,
                               now - (self.t0 + int(self.sent * 1e9 / self.rate)))
        return max(0, d)

    def timeout(self, dflt):
        if self.rate <= 0:
            return dflt
        nxt = self.t0 + int(self.sent * 1e9 / self.rate)
        return max(0.0, min(dflt, (nxt - time.monotonic_ns()) / 1e9))


def bench_line(loop, c, chan, seq, pad):
    """Queue and try to send one benchmark line at once (timestamped now)."""
    c.wbuf += b"PRIVMSG %s :BENCH %d %d %s\r\n" % (chan, seq, time.monotonic_ns(), pad)
    if c.tls is None:
        try:
            n = c.sock.send(c.wbuf)
            del c.wbuf[:n]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:
            loop.close(c, "send: %s" % e)
            return
        if c.wbuf:
            loop._want_write(c)
    else:
        loop.flush(c)


def conn_report(c):
    return (c.idx, c.nick, c.lines_in, c.dups, c.disorder,
            {k.decode(errors="replace"): v for k, v in c.seqs.items()},
            c.state == "closed", c.close_reason, c.closed_at, c.member_events)


def client_worker(pipe, port, specs, connect_window, pad_seed=2, tls=None):
    """specs: list of (idx, nick, login_or_None, [channels], want_join, sender).
    Commands on pipe: ('status',), ('reset',), ('traffic', rate) (uplink lines/s
    sent by this worker's sender clients, round-robin; 0 stops; answers
    {"t0": ns, "sent": {"chan nick": n}}), ('report',), ('quit',).
    tls: None (plaintext) or {"ca": CAFILE, "server_hostname": NAME}: every
    client connects over TLS and verifies the server against CAFILE."""
    raise_nofile()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if tls:
        loop = Loop(client_tls_context(tls), tls.get("server_hostname", "localhost"))
    else:
        loop = Loop()
    pending = [Conn(i, n, l, [ch.lower().encode() for ch in chs], wj, snd)
               for (i, n, l, chs, wj, snd) in specs]
    pending.reverse()
    conns = []
    senders = [c for c in pending if c.sender]
    senders.reverse()
    pads = make_pads(pad_seed)
    pacer = Pacer()
    pfd = pipe.fileno()
    psel_key = object()
    loop.sel.register(pfd, selectors.EVENT_READ, psel_key)
    connecting = 0

    running = True
    while running:
        # Pace connects: at most connect_window clients not yet registered.
        if pending:
            connecting = sum(1 for c in conns[-connect_window * 4:] if c.state == "connecting")
            room = connect_window - connecting
            while pending and room > 0:
                c = pending.pop()
                loop.connect(c, port)
                conns.append(c)
                room -= 1
        # Uplink lines due now.
        n = pacer.due()
        while n > 0 and senders:
            i = pacer.sent
            c = senders[i % len(senders)]
            if c.sock is not None and c.channels:
                ch = c.channels[(i // len(senders)) % len(c.channels)]
                s = c.upseq.get(ch, 0) + 1
                c.upseq[ch] = s
                bench_line(loop, c, ch, s, pads[i % len(pads)])
            pacer.sent += 1
            n -= 1
        # Phase 1: drain every ready socket and timestamp it at once (so the
        # parse cost of earlier sockets does not inflate later samples);
        # phase 2: parse.
        got = []
        for key, ev in loop.sel.select(pacer.timeout(0.02)):
            if key.data is psel_key:
                continue
            c = key.data
            if c.sock is None:
                continue
            if ev & selectors.EVENT_READ:
                try:
                    data = c.sock.recv(262144)
                except (BlockingIOError, InterruptedError):
                    data = None
                except OSError as e:
                    loop.close(c, "recv: %s" % e)
                    continue
                if data is not None:
                    got.append((c, data, time.monotonic_ns()))
            if ev & selectors.EVENT_WRITE and loop.pending_out(c):
                if not loop.flush(c):
                    continue
        for c, data, now in got:
            if c.sock is None:
                continue
            # TLS: decrypt here, after every socket of this round was read
            # and timestamped (plaintext: as is)
            data, eof = loop.feed(c, data)
            if eof:
                loop.close(c, c.close_reason or "eof")
                continue
            buf = c.rbuf + data
            lines = buf.split(b"\r\n")
            c.rbuf = lines.pop()
            for ln in lines:
                handle_line(loop, c, ln, now)
            if loop.pending_out(c):
                loop._want_write(c)
        while pipe.poll():
            cmd = pipe.recv()
            if cmd[0] == "status":
                pipe.send({
                    "total": len(specs),
                    "connected": len(conns),
                    "registered": sum(1 for c in conns if c.state == "registered"),
                    "ready": sum(1 for c in conns if conn_ready(c)),
                    "closed": sum(1 for c in conns if c.state == "closed"),
                    "close_reasons": sorted(set(str(c.close_reason) for c in conns
                                                if c.state == "closed"))[:5],
                })
            elif cmd[0] == "reset":
                # start of the measured phase: forget anything seen before
                for c in conns:
                    c.samples = []
                    c.seqs = {}
                    c.upseq = {}
                    c.lines_in = c.dups = c.disorder = c.member_events = 0
                pipe.send("ok")
            elif cmd[0] == "traffic":
                t0 = pacer.start(cmd[1])
                pipe.send({"t0": t0, "t_ns": time.monotonic_ns(),
                           "sent": {(ch + b" " + c.nick.encode()).decode(): n
                                    for c in senders for ch, n in c.upseq.items()},
                           "sched_lag_max_ms": pacer.lag_max / 1e6})
            elif cmd[0] == "report":
                rep = {"clients": [conn_report(c) for c in conns],
                       "samples": [s for c in conns for s in c.samples]}
                if tls:
                    kinds = {}
                    for c in conns:
                        if c.tls is not None and c.hs_done:
                            k = "%s %s" % (c.tls.version(), c.tls.cipher()[0])
                            kinds[k] = kinds.get(k, 0) + 1
                    rep["tls"] = kinds
                pipe.send(rep)
            elif cmd[0] == "quit":
                running = False
    for c in conns:
        if c.sock is not None:
            c.sock.close()
    pipe.close()


# --------------------------------------------------------------------------
# Speaker process

def speaker_worker(pipe, port, channels, nspeakers, pad_seed=1):
    """nspeakers clients directly on ngircd; speaker k joins channels
    k, k+n, k+2n, ... ('traffic', rate) sends lines round-robin over all
    channels at `rate` lines/s in total (evenly spaced; 0 stops) and answers
    {"t0", "t_ns", "sent": {"chan nick": n}}. Speakers also record the
    client -> network lines they receive (kind 2). ('status',), ('reset',),
    ('report',), ('quit',)."""
    raise_nofile()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop = Loop()
    speakers = []
    for k in range(nspeakers):
        chs = [ch.lower().encode() for ch in channels[k::nspeakers]]
        c = Conn(k, "spk%d" % k, None, chs, True)
        c.force_kind = 2
        loop.connect(c, port)
        speakers.append(c)
    owner = {}
    for c in speakers:
        for ch in c.channels:
            owner[ch] = c
    order = [ch.lower().encode() for ch in channels]
    seq = {ch: 0 for ch in order}
    pads = make_pads(pad_seed)
    pacer = Pacer()
    running = True

    def on_line(c, ln, now):
        handle_line(loop, c, ln, now)

    while running:
        n = pacer.due()
        while n > 0:
            i = pacer.sent
            ch = order[i % len(order)]
            seq[ch] += 1
            c = owner[ch]
            if c.sock is not None:
                bench_line(loop, c, ch, seq[ch], pads[i % len(pads)])
            pacer.sent += 1
            n -= 1
        loop.poll(pacer.timeout(0.05), on_line)
        while pipe.poll():
            cmd = pipe.recv()
            if cmd[0] == "status":
                pipe.send({"ready": sum(1 for c in speakers if conn_ready(c)),
                           "total": len(speakers),
                           "closed": sum(1 for c in speakers if c.state == "closed")})
            elif cmd[0] == "reset":
                for c in speakers:
                    c.samples = []
                    c.seqs = {}
                    c.lines_in = c.dups = c.disorder = c.member_events = 0
                pipe.send("ok")
            elif cmd[0] == "traffic":
                total = pacer.sent
                t0 = pacer.start(cmd[1])
                pipe.send({"t0": t0, "t_ns": time.monotonic_ns(), "lines": total,
                           "sent": {(ch + b" " + owner[ch].nick.encode()).decode(): n
                                    for ch, n in seq.items() if n},
                           "sched_lag_max_ms": pacer.lag_max / 1e6,
                           "closed": sum(1 for c in speakers if c.state == "closed")})
            elif cmd[0] == "report":
                pipe.send({"clients": [conn_report(c) for c in speakers],
                           "samples": [s for c in speakers for s in c.samples]})
            elif cmd[0] == "quit":
                running = False
    for c in speakers:
        if c.sock is not None:
            c.sock.close()
    pipe.close()


class Proc:
    """A worker process with a command pipe."""

    def __init__(self, target, *args):
        ctx = mp.get_context("fork")
        self.pipe, child = ctx.Pipe()
        self.p = ctx.Process(target=target, args=(child,) + args, daemon=True)
        self.p.start()
        child.close()

    def call(self, *cmd, timeout=60):
        self.pipe.send(cmd)
        if not self.pipe.poll(timeout):
            raise RuntimeError("worker %d did not answer %s" % (self.p.pid, cmd[0]))
        return self.pipe.recv()

    def stop(self):
        if self.p.is_alive():
            try:
                self.pipe.send(("quit",))
            except OSError:
                pass
            self.p.join(10)
            if self.p.is_alive():
                self.p.kill()
                self.p.join()


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    k = (len(sorted_vals) - 1) * p / 100.0
    f = int(k)
    c = min(f + 1, len(sorted_vals) - 1)
    return sorted_vals[f] + (sorted_vals[c] - sorted_vals[f]) * (k - f)


def latency_stats(samples):
    """samples: list of (send_ns, recv_ns, ...) -> dict in ms."""
    lat = sorted((x[1] - x[0]) / 1e6 for x in samples)
    if not lat:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {"n": len(lat),
            "p50_ms": round(percentile(lat, 50), 3),
            "p99_ms": round(percentile(lat, 99), 3),
            "max_ms": round(lat[-1], 3)}
