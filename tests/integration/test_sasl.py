"""SASL to networks (issue 11 section 3; sessiond/sasl.h).

Real peers: inspircd 3 (m_sasl, m_services_account, m_sslinfo, linked over
m_spanningtree) with Debian's atheme-services 7.2 as the SASL authority
(saslserv/plain, saslserv/external), accounts registered in the test through
NickServ REGISTER (and CERT ADD for EXTERNAL). atheme 7.2 has no SCRAM
(saslserv/scram came with atheme 7.3) and Debian 12 packages no other
services with it, so SCRAM-SHA-256 runs against a scripted network in this
file that implements the server side of RFC 5802/7677 with Python's hashlib
and hmac: it checks the client's proof and proves itself with its
signature, an implementation independent of baton's OpenSSL one.

Every test keeps to seconds: atheme reconnects to its uplink every second
(recontime = 1) and baton's reconnect_max is 3 s here."""

import base64
import hashlib
import hmac
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.request

import batonlib as bl
import tlslib as tl
from batonlib import check

ATHEME = os.environ.get("ATHEME", "/usr/bin/atheme-services")
LINK_PASS = "linkpw"
FAST_RECONNECT = {"reconnect_min": 1, "reconnect_max": 3}


class InspircdServices(tl.InspircdTls):
    """inspircd 3 with a server link port for atheme and the modules SASL
    needs: sasl (target services.test), services_account, sslinfo."""

    def __init__(self, ctx, pki):
        super().__init__(ctx, pki)
        self.link_port = bl.free_port()

    def config_text(self):
        return super().config_text() + "\n".join([
            '<bind address="127.0.0.1" port="%d" type="servers">' % self.link_port,
            '<module name="cap">',
            '<module name="spanningtree">',
            '<module name="services_account">',
            '<module name="sasl">',
            '<module name="sslinfo">',
            '<link name="services.test" ipaddr="127.0.0.1" port="%d" allowmask="127.0.0.1" '
            'sendpass="%s" recvpass="%s">' % (self.link_port, LINK_PASS, LINK_PASS),
            '<uline server="services.test" silent="yes">',
            '<sasl target="services.test" requiressl="no">',
            '',
        ])


class Atheme:
    """atheme-services in the foreground (-n), everything in ctx.dir/atheme."""

    def __init__(self, ctx, ircd):
        self.ctx = ctx
        self.ircd = ircd
        self.dir = os.path.join(ctx.dir, "atheme")
        os.makedirs(self.dir, exist_ok=True)
        self.conf = os.path.join(self.dir, "atheme.conf")
        self.log_path = os.path.join(self.dir, "atheme.log")
        self.proc = None
        ctx.on_close(self.stop)

    def config_text(self):
        mods = ["protocol/inspircd", "backend/opensex", "crypto/pbkdf2v2",
                "nickserv/main", "nickserv/register", "nickserv/identify",
                "nickserv/cert", "saslserv/main", "saslserv/plain", "saslserv/external"]
        L = ['loadmodule "modules/%s";' % m for m in mods]
        L += ['serverinfo {', 'name = "services.test";', 'desc = "baton test services";',
              'numeric = "00A";', 'recontime = 1;', 'netname = "InspTest";',
              'hidehostsuffix = "users.test";', 'adminname = "baton";',
              'adminemail = "root@localhost";', 'mta = "/bin/true";',
              'loglevel = { all; };', 'maxlogins = 5;', 'maxusers = 5;', 'maxnicks = 5;',
              'maxchans = 5;', 'mdlimit = 30;', 'emaillimit = 10;', 'emailtime = 300;',
              'auth = none;', 'casemapping = rfc1459;', '};',
              'uplink "%s" {' % self.ircd.name, 'host = "127.0.0.1";',
              'port = %d;' % self.ircd.link_port, 'send_password = "%s";' % LINK_PASS,
              'receive_password = "%s";' % LINK_PASS, '};',
              'nickserv { nick = "NickServ"; user = "NickServ"; host = "services.test"; '
              'real = "Nickname Services"; };',
              'saslserv { nick = "SaslServ"; user = "SaslServ"; host = "services.test"; '
              'real = "SASL Authentication Agent"; };',
              'general { helpchan = "#help"; helpurl = "http://example.test"; '
              'permissive_mode = no; maxcertfp = 20; flood_msgs = 1000; flood_time = 10; '
              'ratelimit_uses = 1000; ratelimit_period = 1; vhost_change = 30; '
              'commit_interval = 5; default_clone_allowed = 50; default_clone_warn = 40; '
              'uplink_sendq_limit = 1048576; language = "en"; };']
        return "\n".join(L) + "\n"

    def start(self):
        binary = tl.require_binary(ATHEME, "atheme-services")
        with open(self.conf, "w") as f:
            f.write(self.config_text())
        self.outf = open(os.path.join(self.dir, "stdout.log"), "ab")
        self.proc = self.ctx.procs.popen(
            [binary, "-n", "-c", self.conf, "-D", self.dir, "-l", self.log_path,
             "-p", os.path.join(self.dir, "atheme.pid")],
            stdout=self.outf, stderr=subprocess.STDOUT, cwd=self.dir)
        return self

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.proc is not None:
            bl.Procs.stop(self.proc)
            self.outf.close()
            self.proc = None


def _last(m):
    return m.params[-1] if m.params else ""


def _services(ctx):
    """inspircd + atheme linked: returns (ircd, atheme) once a client's CAP
    LS shows inspircd offering sasl (it does only with its services
    linked)."""
    pki = tl.pki(ctx)
    ircd = InspircdServices(ctx, pki).start()
    ath = Atheme(ctx, ircd).start()
    deadline = time.monotonic() + 20
    while True:
        c = ctx.loop.connect(ircd.port, name="caps")
        c.send("CAP LS 302")
        ok = ctx.loop.run_until(lambda: c.find(lambda m: m.command == "CAP"), 5,
                                "CAP LS", raise_on_timeout=False)
        caps = " ".join(_last(m) for m in c.msgs("CAP"))
        c.close()
        if ok and re.search(r"\bsasl=", caps):
            bl.log("inspircd offers %s" % caps)
            return ircd, ath
        check(time.monotonic() < deadline,
              "inspircd never offered sasl (services not linked?); atheme: %s"
              % ath.log_text()[-1500:])
        ctx.loop.run_for(0.3)


def _nickserv(loop, conn, text, want, what):
    since = len(conn.msgs())
    conn.send("PRIVMSG NickServ :%s" % text)
    loop.run_until(lambda: conn.find(lambda m: m.command == "NOTICE" and
                                     re.search(want, _last(m)), since=since),
                   10, what)


def _register_account(ctx, ircd, account, password):
    """NickServ REGISTER from a plain client named after the account."""
    c = bl.direct_user(ctx.loop, ircd, account)
    _nickserv(ctx.loop, c, "REGISTER %s %s@example.test" % (password, account),
              r"registered", "NickServ REGISTER %s" % account)
    c.quit()
    return c


def _session_keys(baton, keys_by_user):
    """Per-session keys injected into the fixture's config."""
    text = baton.config_text()
    for user, keys in keys_by_user.items():
        head = "[user %s/%s]\n" % (user, baton.network)
        check(head in text, head)
        text = text.replace(head, head + "".join("%s = %s\n" % kv for kv in keys.items()))
    baton.write_config(text)


def _whois_account(ctx, ircd, nick):
    c = bl.direct_user(ctx.loop, ircd, "who" + nick[-3:])
    c.send("WHOIS %s" % nick)
    ctx.loop.run_until(lambda: c.find(lambda m: m.command == "318"), 10, "WHOIS end")
    acct = [m.param(2) for m in c.msgs("330")]
    c.quit()
    return acct[0] if acct else None


def _failure_times(baton, key):
    """Monotonic-ish seconds of the log's "SASL to ... failed" lines of key."""
    out = []
    for ln in baton.log_text().splitlines():
        m = re.match(r"(\d\d):(\d\d):(\d\d\.\d+) .*%s: SASL to \S+ failed" % re.escape(key), ln)
        if m:
            out.append(int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3)))
    return out


def test_sasl_plain_and_rejected_atheme(ctx):
    """PLAIN against inspircd + atheme: u000 (password from a file) logs in
    to its account before registering (WHOIS 330) and keeps it across an
    upgrade; u001 with a wrong password does not register at all: a clear
    log line, its reason in `batonctl status --json`, a NOTICE to its
    attached client, and the next attempt one reconnect_max (3 s, -20%)
    after the last, not reconnect_min (1 s) as an ordinary disconnect
    would."""
    ircd, ath = _services(ctx)
    _register_account(ctx, ircd, "acct0", "right-pw0")
    _register_account(ctx, ircd, "acct1", "right-pw1")
    mport = bl.free_port()
    b = bl.Baton(ctx, ircd, nsessions=2, channels=("#sasl",),
                 sessiond_opts=FAST_RECONNECT,
                 supervisor_opts={"metrics": "127.0.0.1:%d" % mport})
    pwfile = os.path.join(b.dir, "acct0.pw")
    with open(pwfile, "w") as f:
        f.write("right-pw0\n")
    _session_keys(b, {"u000": {"sasl": "plain", "sasl_username": "acct0",
                               "sasl_password_file": pwfile},
                      "u001": {"sasl": "plain", "sasl_username": "acct1",
                               "sasl_password": "wrong-pw"}})
    b.start(wait=False)
    ctx.loop.run_until(lambda: _whois_account(ctx, ircd, "bn000") == "acct0", 20,
                       "bn000 logged in as acct0")
    check("u000/net: SASL PLAIN succeeded" in b.log_text(), "success logged")

    # u001: the failure, where an operator and the user look
    ctx.loop.run_until(lambda: len(_failure_times(b, "u001/net")) >= 1, 15,
                       "u001's SASL failure logged")
    line = [ln for ln in b.log_text().splitlines() if "u001/net: SASL to net failed" in ln][0]
    check("PLAIN credentials rejected (904" in line, line)
    def failures():
        return [f for w in b.status()["workers"] for f in w.get("sasl_failures", [])]
    fails = failures()
    check(len(fails) == 1 and fails[0]["user"] == "u001" and fails[0]["network"] == "net",
          "status sasl_failures: %s" % fails)
    check("904" in fails[0]["reason"], fails[0])
    # next_attempt: the scheduled retry (0 while an attempt is under way)
    ctx.loop.run_until(lambda: any(f["next_attempt"] > time.time() + 1 for f in failures()),
                       5, "status shows the next attempt ahead")
    def gauge():
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5) as r:
            text = r.read().decode()
        m = re.search(r"^baton_worker_sasl_failing\{[^}]*\} (\S+)$", text, re.M)
        return float(m.group(1)) if m else None
    ctx.loop.run_until(lambda: gauge() == 1, 15, "baton_worker_sasl_failing 1")
    rc, _, human, _ = b.ctl("status")
    check("SASL failed: u001/net: PLAIN credentials rejected" in human, human)
    cl = bl.bouncer_client(ctx.loop, b, b.by_user["u001"], wait=False)
    ctx.loop.run_until(lambda: cl.find(lambda m: m.command == "NOTICE" and
                                       "SASL authentication to net failed" in _last(m)),
                       15, "the attached client is told")
    # no storm: each retry one reconnect_max after the previous one
    ctx.loop.run_until(lambda: len(_failure_times(b, "u001/net")) >= 3, 15,
                       "three attempts of u001")
    t = _failure_times(b, "u001/net")
    gaps = [t[i + 1] - t[i] for i in range(len(t) - 1)]
    bl.log("u001 attempts %s s apart" % ["%.2f" % g for g in gaps])
    check(all(g >= 2.3 for g in gaps), "SASL retries too fast: %s" % gaps)
    check(_whois_account(ctx, ircd, "bn001") is None, "bn001 must not be on the network")

    # u000 stays logged in across an upgrade (no new registration)
    rc, res = b.upgrade(ctx.builds["a"])
    check(rc == 0, "upgrade: %s" % res)
    check(_whois_account(ctx, ircd, "bn000") == "acct0", "account after the upgrade")
    check(b.log_text().count("u000/net: SASL PLAIN succeeded") == 1, "no second login")


def test_sasl_external_atheme(ctx):
    """EXTERNAL: the session's tls_cert, added to the account with NickServ
    CERT ADD, logs the session in over TLS without a password."""
    ircd, ath = _services(ctx)
    pki = tl.pki(ctx)
    cert = pki.client("certuser")
    c = tl.PyTlsClient(pki.client_context(cert=cert), ircd.tls_port)
    tl.irc_login(c, "certacct")
    c.send("PRIVMSG NickServ :REGISTER cert-pw certacct@example.test")
    c.wait_line(re.compile(r"NOTICE .*registered"))
    c.send("PRIVMSG NickServ :CERT ADD")
    c.wait_line(re.compile(r"NOTICE .*(added|fingerprint)", re.I))
    c.send("QUIT :bye")
    c.close()
    b = bl.Baton(ctx, ircd, nsessions=1, channels=("#sasl",), sessiond_opts=FAST_RECONNECT,
                 upstream_port=ircd.tls_port,
                 network_opts={"tls": "yes", "tls_ca": pki.ca_cert},
                 session_opts={"tls_cert": cert.cert, "tls_key": cert.key, "sasl": "external"})
    b.start(wait=False)
    ctx.loop.run_until(lambda: _whois_account(ctx, ircd, "bn000") == "certacct", 20,
                       "bn000 logged in as certacct by its certificate")
    check("u000/net: SASL EXTERNAL succeeded" in b.log_text(), "success logged")


# ---- SCRAM-SHA-256 against a scripted network -------------------------------

class ScramNetwork:
    """A one-connection-at-a-time IRC server on a free port whose SASL is
    SCRAM-SHA-256 for account `user` with `password` (RFC 5802 server side:
    hashlib.pbkdf2_hmac, hmac). Registers the client after 903, refuses a
    wrong proof with 904. Records connection times and outcomes."""

    def __init__(self, ctx, user, password, iterations=4096, hold_first=False):
        """hold_first: the first server-first message waits for
        release() (a migration happens meanwhile); got_first is set when
        the client-first message of that exchange arrived."""
        self.user = user
        self.hold = threading.Event()
        if not hold_first:
            self.hold.set()
        self.got_first = threading.Event()
        self.salt = os.urandom(16)
        self.iterations = iterations
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), self.salt, iterations)
        ck = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        self.stored_key = hashlib.sha256(ck).digest()
        self.server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.events = []  # (time, "connect" | "success" | "fail" | "proof-bad")
        self.lines = []
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        ctx.on_close(self.stop)

    def release(self):
        self.hold.set()

    def stop(self):
        self.stopping = True
        self.hold.set()
        try:
            self.sock.close()
        except OSError:
            pass

    def _serve(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn):
        self.events.append((time.monotonic(), "connect"))
        f = conn.makefile("rwb", buffering=0)

        def send(line):
            f.write(line.encode() + b"\r\n")

        nick, auth, first_bare, snonce = "*", None, None, None
        try:
            for raw in f:
                line = raw.decode(errors="replace").rstrip("\r\n")
                self.lines.append(line)
                w = line.split(" ")
                if w[0] == "CAP" and w[1] == "LS":
                    send(":scram.test CAP * LS :sasl=SCRAM-SHA-256 multi-prefix")
                elif w[0] == "CAP" and w[1] == "REQ":
                    send(":scram.test CAP * ACK :%s" % line.split(":", 1)[1])
                elif w[0] == "NICK":
                    nick = w[1]
                elif w[0] == "AUTHENTICATE" and w[1] == "SCRAM-SHA-256":
                    send("AUTHENTICATE +")
                    auth = "first"
                elif w[0] == "AUTHENTICATE" and w[1] == "*":
                    self.events.append((time.monotonic(), "aborted"))
                    send(":scram.test 906 %s :SASL authentication aborted" % nick)
                    auth = None
                elif w[0] == "AUTHENTICATE" and auth == "first":
                    msg = base64.b64decode(w[1]).decode()
                    first_bare = msg[3:]
                    attrs = dict(a.split("=", 1) for a in first_bare.split(","))
                    check(attrs["n"] == self.user, "SCRAM user %s" % attrs["n"])
                    snonce = attrs["r"] + base64.b64encode(os.urandom(18)).decode()
                    self.got_first.set()
                    self.hold.wait(30)
                    self.server_first = "r=%s,s=%s,i=%d" % (
                        snonce, base64.b64encode(self.salt).decode(), self.iterations)
                    send("AUTHENTICATE " + base64.b64encode(self.server_first.encode()).decode())
                    auth = "final"
                elif w[0] == "AUTHENTICATE" and auth == "final":
                    msg = base64.b64decode(w[1]).decode()
                    without, proof = msg.rsplit(",p=", 1)
                    check(without == "c=biws,r=" + snonce, "client-final %s" % without)
                    am = ",".join([first_bare, self.server_first, without]).encode()
                    csig = hmac.new(self.stored_key, am, hashlib.sha256).digest()
                    ck = bytes(a ^ b for a, b in zip(base64.b64decode(proof), csig))
                    if hashlib.sha256(ck).digest() != self.stored_key:
                        self.events.append((time.monotonic(), "fail"))
                        send(":scram.test 904 %s :SASL authentication failed" % nick)
                        auth = None
                        continue
                    ssig = hmac.new(self.server_key, am, hashlib.sha256).digest()
                    send("AUTHENTICATE " + base64.b64encode(
                        b"v=" + base64.b64encode(ssig)).decode())
                    auth = "done"
                elif w[0] == "AUTHENTICATE" and auth == "done" and w[1] == "+":
                    self.events.append((time.monotonic(), "success"))
                    send(":scram.test 900 %s %s!u@h %s :You are now logged in" %
                         (nick, nick, self.user))
                    send(":scram.test 903 %s :SASL authentication successful" % nick)
                elif w[0] == "CAP" and w[1] == "END":
                    send(":scram.test 001 %s :Welcome %s!u@h" % (nick, nick))
                    send(":scram.test 376 %s :End of MOTD" % nick)
                elif w[0] == "PING":
                    send(":scram.test PONG scram.test :%s" % w[-1].lstrip(":"))
                elif w[0] == "QUIT":
                    break
        except (OSError, ValueError):
            pass
        finally:
            conn.close()


def test_sasl_scram_sha256(ctx):
    """SCRAM-SHA-256 against an independent server implementation: the right
    password registers (the server checked our proof, we checked its
    signature); a wrong one gets 904 and retries a reconnect_max apart."""
    net = ScramNetwork(ctx, "scramacct", "pencil")
    b = bl.Baton(ctx, net, nsessions=1, channels=(), sessiond_opts=FAST_RECONNECT,
                 session_opts={"sasl": "scram-sha-256", "sasl_username": "scramacct",
                               "sasl_password": "pencil"})
    b.start(wait=False)
    ctx.loop.run_until(lambda: any(e == "success" for _, e in net.events), 10,
                       "SCRAM success")
    ctx.loop.run_until(lambda: "u000/net: registered as bn000" in b.log_text(), 10,
                       "registered after SCRAM")
    check("u000/net: SASL SCRAM-SHA-256 succeeded" in b.log_text(), "success logged")
    # Releases before SASL (0.1.0) do not know the sasl keys: their worker's
    # preflight refuses the config, so a rollback there is refused before
    # anything moves (remove the keys first). Another release takes the
    # session as it is: no second connection, no second login.
    root = os.environ.get("BATON_ROOT", bl.REPO_ROOT)
    released = bl.Build("released", os.environ.get("BATON_BUILD_RELEASED",
                                                   os.path.join(root, "build-released")))
    if released.exists():
        rc, res = b.upgrade(released)
        check(rc == 1 and "unknown key 'sasl'" in json.dumps(res), "to 0.1.0: rc %s %s" % (rc, res))
        bl.log("to the released build: refused: %s" % res.get("reason", res))
    if ctx.builds["b"].exists():
        rc, res = b.upgrade(ctx.builds["b"])
        check(rc == 0, "upgrade to B: %s" % res)
    ctx.loop.run_for(0.5)
    check(sum(e == "connect" for _, e in net.events) == 1, "events %s" % net.events)
    b.stop()

    net2 = ScramNetwork(ctx, "scramacct", "not-pencil")
    b2 = bl.Baton(ctx, net2, nsessions=1, channels=(), sessiond_opts=FAST_RECONNECT,
                  session_opts={"sasl": "scram-sha-256", "sasl_username": "scramacct",
                                "sasl_password": "pencil"})
    b2.start(wait=False)
    ctx.loop.run_until(lambda: sum(e == "fail" for _, e in net2.events) >= 2, 15,
                       "two refused attempts")
    t = [ts for ts, e in net2.events if e == "connect"]
    gaps = [t[i + 1] - t[i] for i in range(len(t) - 1)]
    check(all(g >= 2.3 for g in gaps), "SCRAM retries too fast: %s" % gaps)
    check(not any(ln.startswith("CAP END") for ln in net2.lines), "CAP END after a failure")
    check("u000/net: SASL to net failed: SCRAM-SHA-256 credentials rejected (904"
          in b2.log_text(), b2.log_tail())


def test_sasl_scram_exchange_across_upgrade(ctx):
    """An upgrade while a SCRAM exchange is in progress (the network holds
    its server-first message until the session moved): the new worker has
    no SCRAM state, so it aborts the old exchange at that challenge
    (AUTHENTICATE *, 906) and runs a new one on the same connection; the
    session registers without reconnecting."""
    net = ScramNetwork(ctx, "scramacct", "pencil", hold_first=True)
    b = bl.Baton(ctx, net, nsessions=1, channels=(), sessiond_opts=FAST_RECONNECT,
                 session_opts={"sasl": "scram-sha-256", "sasl_username": "scramacct",
                               "sasl_password": "pencil"})
    b.start(wait=False)
    ctx.loop.run_until(lambda: net.got_first.is_set(), 10, "client-first at the network")
    rc, res = b.upgrade(ctx.builds["a"])
    check(rc == 0, "upgrade during the exchange: %s" % res)
    net.release()
    ctx.loop.run_until(lambda: any(e == "success" for _, e in net.events), 10,
                       "SCRAM success after the restart")
    ctx.loop.run_until(lambda: "u000/net: registered as bn000" in b.log_text(), 10,
                       "registered")
    kinds = [e for _, e in net.events]
    bl.log("network events: %s" % kinds)
    check(kinds.count("connect") == 1 and kinds.count("aborted") == 1, "events %s" % kinds)
    check("u000/net: SASL exchange restarted after a migration" in b.log_text(), b.log_tail())
