"""tlslib: TLS test fixtures for baton's integration tests (issue 3).

Python 3 standard library only. Every fixture runs its processes through a
batonlib.Context (its process registry kills them when the test ends, also on
failure), listens on 127.0.0.1 only (free port from batonlib.free_port), keeps
its config and logs in the test's temp dir, and raises batonlib.Skip naming
the missing binary when a tool is not installed.

Building blocks:

- PKI               a CA, server certs (good: localhost + IP 127.0.0.1 SANs;
                    expired; wrong name; self-signed untrusted), client certs;
                    fingerprints "sha256:hex" (openssl CLI)
- SUITES            the six suites of the issue with their OpenSSL, GnuTLS
                    and Go names
- NgircdTls         ngircd (GnuTLS) with a plaintext and a TLS port
- InspircdTls       inspircd 3 + ssl_gnutls, unprivileged, in the temp dir
- GoTlsServer       tests/integration/gotls (Go crypto/tls IRC-ish server),
                    built at test time
- OpensslServer     `openssl s_server` as a scripted IRC server (stdin ->
                    client, client -> stdout), KeyUpdate via the "K" command
- GnutlsServer      a scripted GnuTLS IRC server (libgnutls through ctypes,
                    run as `python3 tlslib.py gnutls-server`): gnutls-serv
                    itself cannot be scripted (echo/http only, no stdin, binds
                    every interface)
- OpensslClient     `openssl s_client` as an IRC client, KeyUpdate via "K"
- GnutlsClient      `gnutls-cli` as an IRC client, KeyUpdate via the inline
                    command ^renegotiate^ (TLS 1.3: gnutls_handshake() on an
                    established session sends KeyUpdate(update_requested))
- IrssiTmux         irssi under tmux: TLS server entry, autojoin, autolog,
                    send-keys, capture-pane
- PyTlsServer / PyTlsClient / TlsLineConn
                    Python ssl peers with a line reader and a record of the
                    handshake messages seen (KeyUpdate counts)

Conventions as in batonlib: HarnessError for environment trouble, Skip for
"cannot run here", AssertionError (check) for test failures.
"""

import ctypes
import ctypes.util
import fcntl
import os
import re
import select
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import batonlib as bl  # noqa: E402
from batonlib import HarnessError, Skip, check, free_port, wait_port  # noqa: E402,F401

OPENSSL = os.environ.get("OPENSSL", "openssl")
GNUTLS_CLI = os.environ.get("GNUTLS_CLI", "gnutls-cli")
INSPIRCD = os.environ.get("INSPIRCD", "/usr/sbin/inspircd")
INSPIRCD_MODULES = os.environ.get("INSPIRCD_MODULES", "/usr/lib/inspircd/modules")
GO = os.environ.get("GO", "go")
IRSSI = os.environ.get("IRSSI", "irssi")
TMUX = os.environ.get("TMUX_BIN", "tmux")


def require_binary(name, what=None):
    """Absolute path of a program (name or path), or Skip naming it."""
    path = name if os.path.isabs(name) else shutil.which(name)
    if not path or not os.access(path, os.X_OK):
        raise Skip("%s not installed (%s not found)" % (what or name, name))
    return path


# --------------------------------------------------------------------------
# suites and versions
# --------------------------------------------------------------------------


class Suite:
    """One cipher suite of the issue's matrix.

    version: "TLSv1.2" | "TLSv1.3" (as Python's SSLSocket.version() says)
    openssl: the OpenSSL name (= Python's SSLSocket.cipher()[0], s_server's
             "CIPHER is"); goes to -ciphersuites (1.3) or -cipher (1.2)
    gnutls:  GnuTLS cipher name (gnutls_cipher_get_name)
    go:      Go's tls.CipherSuiteName"""

    def __init__(self, key, version, openssl, gnutls, go):
        self.key, self.version, self.openssl, self.gnutls, self.go = key, version, openssl, gnutls, go

    @property
    def tls13(self):
        return self.version == "TLSv1.3"

    @property
    def gnutls_priority(self):
        """GnuTLS priority string allowing exactly this version and suite."""
        if self.tls13:
            return "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+%s" % self.gnutls
        return "NORMAL:-VERS-ALL:+VERS-TLS1.2:-CIPHER-ALL:+%s:-KX-ALL:+ECDHE-RSA" % self.gnutls

    def openssl_args(self):
        """s_server / s_client arguments forcing this version and suite."""
        if self.tls13:
            return ["-tls1_3", "-ciphersuites", self.openssl]
        return ["-tls1_2", "-cipher", self.openssl]

    def __repr__(self):
        return "Suite(%s)" % self.key


SUITES = [
    Suite("tls13-aes128gcm", "TLSv1.3", "TLS_AES_128_GCM_SHA256", "AES-128-GCM",
          "TLS_AES_128_GCM_SHA256"),
    Suite("tls13-aes256gcm", "TLSv1.3", "TLS_AES_256_GCM_SHA384", "AES-256-GCM",
          "TLS_AES_256_GCM_SHA384"),
    Suite("tls13-chacha20", "TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256", "CHACHA20-POLY1305",
          "TLS_CHACHA20_POLY1305_SHA256"),
    Suite("tls12-aes128gcm", "TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", "AES-128-GCM",
          "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
    Suite("tls12-aes256gcm", "TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384", "AES-256-GCM",
          "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
    Suite("tls12-chacha20", "TLSv1.2", "ECDHE-RSA-CHACHA20-POLY1305", "CHACHA20-POLY1305",
          "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"),
]
SUITES_BY_KEY = {s.key: s for s in SUITES}

# GnuTLS priority strings per version (ngircd CipherList, inspircd
# <sslprofile priority>, GnutlsServer/Client). GnuTLS 3.7 syntax.
# (inspircd's token check strips "-VERS-ALL", so versions are removed one by
# one.)
GNUTLS_PRIORITY = {
    None: "NORMAL",
    "1.2": "NORMAL:-VERS-TLS1.3",
    "1.3": "NORMAL:-VERS-TLS1.2:-VERS-TLS1.1:-VERS-TLS1.0",
}


def _norm_version(v):
    if v in (None, "", "any"):
        return None
    v = str(v).replace("TLSv", "")
    if v not in ("1.2", "1.3"):
        raise ValueError("TLS version must be 1.2 or 1.3, not %r" % v)
    return v


# --------------------------------------------------------------------------
# PKI
# --------------------------------------------------------------------------


class Cert:
    """A certificate and its key. path attributes: cert, key, pem (cert +
    key in one file, as irssi and some servers like it); fingerprint
    "sha256:<64 lowercase hex>" of the DER certificate (what CertFP and
    tls_fingerprint pinning use); spki_fingerprint of the public key."""

    def __init__(self, name, cert, key, pem, fingerprint, spki_fingerprint):
        self.name, self.cert, self.key, self.pem = name, cert, key, pem
        self.fingerprint = fingerprint
        self.spki_fingerprint = spki_fingerprint

    @property
    def fingerprint_hex(self):
        return self.fingerprint.split(":", 1)[1]

    @property
    def fingerprint_colons(self):
        """"AB:CD:..." (upper case, colon separated, as openssl prints it)."""
        h = self.fingerprint_hex.upper()
        return ":".join(h[i:i + 2] for i in range(0, len(h), 2))

    def __repr__(self):
        return "Cert(%s, %s)" % (self.name, self.fingerprint)


def _run(argv, cwd=None, timeout=60, input=None):
    try:
        r = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=timeout, input=input)
    except FileNotFoundError:
        raise Skip("%s not installed" % argv[0])
    if r.returncode != 0:
        raise HarnessError("%s failed (%d): %s" % (" ".join(argv), r.returncode,
                                                   (r.stderr or r.stdout).decode(errors="replace")[-800:]))
    return r.stdout


def cert_fingerprint(path):
    """sha256 fingerprint "sha256:hex" of a PEM certificate (DER bytes)."""
    with open(path) as f:
        pem = f.read()
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", pem, re.S)
    if not m:
        raise HarnessError("no certificate in %s" % path)
    import hashlib
    der = ssl.PEM_cert_to_DER_cert(m.group(0))
    return "sha256:" + hashlib.sha256(der).hexdigest()


class PKI:
    """A throw-away PKI in DIR, made with the openssl CLI (RSA 2048, SHA-256).

    Attributes (Cert): server (CN=localhost, SAN DNS:localhost, IP:127.0.0.1,
    signed by the CA, valid now), expired (same names, validity in 2020),
    wrong_name (CN/SAN wrong.example, IP 192.0.2.1), self_signed (localhost +
    127.0.0.1 but self-signed: unknown issuer), not_yet_valid (from 2099);
    client certs via client(name) (created on demand, EKU clientAuth).
    ca_cert / ca_key: the CA; other_ca_cert: a second CA that signed nothing
    we serve (for "wrong tls_ca" tests).

    Verify `openssl verify -CAfile ca.pem server.pem` passes; fingerprints
    match `openssl x509 -fingerprint -sha256`."""

    def __init__(self, dir):
        self.dir = dir
        os.makedirs(dir, exist_ok=True)
        self.ca_cert = os.path.join(dir, "ca.pem")
        self.ca_key = os.path.join(dir, "ca.key")
        self.other_ca_cert = os.path.join(dir, "other-ca.pem")
        self._clients = {}
        self._serial = 1000

    def _p(self, name):
        return os.path.join(self.dir, name)

    def _key(self, name):
        path = self._p(name + ".key")
        _run([OPENSSL, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
              "-out", path])
        os.chmod(path, 0o600)
        return path

    def _finish(self, name, cert, key):
        pem = self._p(name + ".bundle.pem")
        with open(pem, "w") as out:
            for p in (cert, key):
                with open(p) as f:
                    out.write(f.read())
        os.chmod(pem, 0o600)
        spki = _run([OPENSSL, "x509", "-in", cert, "-noout", "-pubkey"])
        der = _run([OPENSSL, "pkey", "-pubin", "-outform", "DER"], input=spki)
        import hashlib
        return Cert(name, cert, key, pem, cert_fingerprint(cert),
                    "sha256:" + hashlib.sha256(der).hexdigest())

    def _ext(self, name, text):
        path = self._p(name + ".ext")
        with open(path, "w") as f:
            f.write(text)
        return path

    def create(self):
        t0 = time.monotonic()
        _run([OPENSSL, "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256",
              "-days", "30", "-keyout", self.ca_key, "-out", self.ca_cert,
              "-subj", "/O=baton tests/CN=baton test CA",
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        _run([OPENSSL, "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256",
              "-days", "30", "-keyout", self._p("other-ca.key"), "-out", self.other_ca_cert,
              "-subj", "/O=baton tests/CN=other CA"])
        self.server = self.issue("server", "localhost", ["DNS:localhost", "IP:127.0.0.1"])
        self.expired = self.issue("expired", "localhost", ["DNS:localhost", "IP:127.0.0.1"],
                                  start="20200101000000Z", end="20200201000000Z")
        self.not_yet_valid = self.issue("future", "localhost", ["DNS:localhost", "IP:127.0.0.1"],
                                        start="20990101000000Z", end="20990201000000Z")
        self.wrong_name = self.issue("wrongname", "wrong.example",
                                     ["DNS:wrong.example", "IP:192.0.2.1"])
        key = self._key("selfsigned")
        cert = self._p("selfsigned.pem")
        _run([OPENSSL, "req", "-x509", "-new", "-key", key, "-sha256", "-days", "30",
              "-out", cert, "-subj", "/CN=localhost",
              "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        self.self_signed = self._finish("selfsigned", cert, key)
        bl.log("PKI created in %.1fs" % (time.monotonic() - t0))
        return self

    def issue(self, name, cn, sans, client=False, start=None, end=None):
        """A cert signed by the CA. start/end: "YYYYMMDDHHMMSSZ" (uses
        `openssl ca`, which can set both; otherwise `openssl x509 -req`)."""
        key = self._key(name)
        csr = self._p(name + ".csr")
        cert = self._p(name + ".pem")
        _run([OPENSSL, "req", "-new", "-key", key, "-out", csr, "-subj", "/CN=%s" % cn])
        eku = "clientAuth" if client else "serverAuth"
        lines = ["basicConstraints=CA:FALSE",
                 "keyUsage=critical,digitalSignature,keyEncipherment",
                 "extendedKeyUsage=%s" % eku]
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        self._serial += 1
        if start or end:
            # openssl ca needs a tiny database
            db = self._p("ca-db")
            os.makedirs(db, exist_ok=True)
            index = os.path.join(db, "index.txt")
            if not os.path.exists(index):
                open(index, "w").close()
            conf = self._ext(name + "-ca", "\n".join([
                "[ca]", "default_ca = tca", "[tca]",
                "database = %s" % index, "new_certs_dir = %s" % db,
                "serial = %s" % os.path.join(db, "serial"),
                "default_md = sha256", "policy = pol", "copy_extensions = none",
                "unique_subject = no", "x509_extensions = ext",
                "[pol]", "commonName = supplied",
                "[ext]"] + lines) + "\n")
            with open(os.path.join(db, "serial"), "w") as f:
                f.write("%04X\n" % self._serial)
            _run([OPENSSL, "ca", "-batch", "-config", conf, "-cert", self.ca_cert,
                  "-keyfile", self.ca_key, "-in", csr, "-out", cert, "-notext",
                  "-startdate", start or "20200101000000Z", "-enddate", end or "20991231000000Z"])
        else:
            ext = self._ext(name, "\n".join(lines) + "\n")
            _run([OPENSSL, "x509", "-req", "-in", csr, "-CA", self.ca_cert, "-CAkey", self.ca_key,
                  "-set_serial", str(self._serial), "-days", "30", "-sha256",
                  "-extfile", ext, "-out", cert])
        return self._finish(name, cert, key)

    def client(self, name="client"):
        """A client certificate (CN=name, EKU clientAuth) signed by the CA."""
        if name not in self._clients:
            self._clients[name] = self.issue("client-" + name, name, [], client=True)
        return self._clients[name]

    # ---- Python ssl contexts for the other end ---------------------------

    def client_context(self, verify=True, cert=None, min_version=None, max_version=None):
        """SSLContext for a Python client: trusts our CA (verify=True checks
        hostname too), optional client cert, version bounds "1.2"/"1.3"."""
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if verify:
            c.load_verify_locations(self.ca_cert)
        else:
            c.check_hostname = False
            c.verify_mode = ssl.CERT_NONE
        if cert is not None:
            c.load_cert_chain(cert.cert, cert.key)
        _bound(c, min_version, max_version)
        return c

    def server_context(self, cert=None, min_version=None, max_version=None,
                       ciphers=None, request_client_cert=False):
        """SSLContext for a Python server with `cert` (default: server)."""
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert = cert or self.server
        c.load_cert_chain(cert.cert, cert.key)
        if request_client_cert:
            c.load_verify_locations(self.ca_cert)
            c.verify_mode = ssl.CERT_OPTIONAL
        if ciphers:
            c.set_ciphers(ciphers)
        _bound(c, min_version, max_version)
        return c


def _bound(c, lo, hi):
    m = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
    lo, hi = _norm_version(lo), _norm_version(hi)
    if lo:
        c.minimum_version = m[lo]
    if hi:
        c.maximum_version = m[hi]


_pki_cache = {}


def pki(ctx):
    """The PKI of a test (created once per Context, in ctx.dir/pki)."""
    p = _pki_cache.get(ctx.dir)
    if p is None:
        p = PKI(os.path.join(ctx.dir, "pki")).create()
        _pki_cache[ctx.dir] = p
        ctx.on_close(lambda: _pki_cache.pop(ctx.dir, None))
    return p


# --------------------------------------------------------------------------
# Python ssl peers
# --------------------------------------------------------------------------

HS_KEY_UPDATE = 24


class TlsLineConn:
    """A blocking SSLSocket with an IRC line reader and a record of the TLS
    handshake messages (via SSLContext._msg_callback, CPython's private hook
    into SSL_set_msg_callback; None if unavailable).

    keyupdates("read"|"write") -> list of update_requested flags (0/1) of the
    KeyUpdate messages received/sent. Note: OpenSSL answers a received
    KeyUpdate(update_requested) only when it next writes, so send a line
    after expecting one."""

    def __init__(self, sock, hs_log):
        self.sock = sock
        self.hs = hs_log
        self.buf = b""
        self.lines = []
        self.closed = False

    def version(self):
        return self.sock.version()

    def cipher(self):
        return self.sock.cipher()[0]

    def peer_fingerprint(self):
        import hashlib
        der = self.sock.getpeercert(binary_form=True)
        return "sha256:" + hashlib.sha256(der).hexdigest() if der else None

    def keyupdates(self, direction):
        return [d[4] for (c, dr, t, d) in list(self.hs) if c is self.sock and dr == direction
                and t == HS_KEY_UPDATE and len(d) >= 5]

    def handshake_messages(self):
        """[(direction, msg_type, first bytes)] of this connection."""
        return [(dr, t, d) for (c, dr, t, d) in list(self.hs) if c is self.sock]

    def send(self, line):
        if isinstance(line, str):
            line = line.encode()
        if not line.endswith(b"\n"):
            line += b"\r\n"
        self.sock.sendall(line)

    def _fill(self, timeout):
        self.sock.settimeout(max(0.01, timeout))
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return
        except (ssl.SSLError, OSError) as e:
            if not self.closed:
                self.closed = "error: %s" % e
            return
        if not data:
            self.closed = self.closed or "eof"
            return
        self.buf += data
        while b"\n" in self.buf:
            ln, self.buf = self.buf.split(b"\n", 1)
            self.lines.append(ln.rstrip(b"\r").decode(errors="replace"))

    def pump(self, seconds):
        """Read for `seconds` (or until closed)."""
        deadline = time.monotonic() + seconds
        while not self.closed and time.monotonic() < deadline:
            self._fill(deadline - time.monotonic())

    def wait_line(self, pred, timeout=10, since=0, what=None):
        """First line (index >= since) matching pred (callable, regex string
        or substring) within timeout; AssertionError otherwise."""
        test = _matcher(pred)
        deadline = time.monotonic() + timeout
        while True:
            for ln in self.lines[since:]:
                if test(ln):
                    return ln
            if self.closed or time.monotonic() >= deadline:
                raise AssertionError("no line matching %s within %.1fs (closed=%s); got %r"
                                     % (what or pred, timeout, self.closed, self.lines[-10:]))
            self._fill(min(0.2, deadline - time.monotonic()))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
        self.closed = self.closed or "closed"


def _matcher(pred):
    if callable(pred):
        return pred
    if isinstance(pred, re.Pattern):
        return lambda ln: pred.search(ln) is not None
    return lambda ln: pred in ln


def _hook_context(c, hs):
    if hasattr(c, "_msg_callback"):
        def cb(conn, direction, version, content_type, msg_type, data):
            if content_type == ssl._TLSContentType.HANDSHAKE:
                hs.append((conn, direction, int(msg_type), bytes(data[:8])))
        c._msg_callback = cb


class PyTlsClient(TlsLineConn):
    """Python TLS client connected to host:port with SSLContext c."""

    def __init__(self, c, port, host="127.0.0.1", server_hostname="localhost", timeout=10):
        hs = []
        _hook_context(c, hs)
        raw = socket.create_connection((host, port), timeout=timeout)
        try:
            s = c.wrap_socket(raw, server_hostname=server_hostname)
        except Exception:
            raw.close()
            raise
        super().__init__(s, hs)


class PyTlsServer:
    """A Python TLS listener on 127.0.0.1:port; accept() -> TlsLineConn.
    Stopped (listening socket closed) by ctx on close."""

    def __init__(self, ctx, sslctx, port=None):
        self.sslctx = sslctx
        self.hs = []
        _hook_context(sslctx, self.hs)
        self.port = port or free_port()
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", self.port))
        self.ls.listen(16)
        self.conns = []
        ctx.on_close(self.stop)

    def accept(self, timeout=15):
        self.ls.settimeout(timeout)
        try:
            raw, _ = self.ls.accept()
        except socket.timeout:
            raise AssertionError("no TLS client connected to port %d within %.0fs"
                                 % (self.port, timeout))
        raw.settimeout(timeout)
        s = self.sslctx.wrap_socket(raw, server_side=True)
        conn = TlsLineConn(s, self.hs)
        self.conns.append(conn)
        return conn

    def stop(self):
        for c in self.conns:
            c.close()
        try:
            self.ls.close()
        except OSError:
            pass


def irc_login(conn, nick, password=None, timeout=10):
    """Register as an IRC client on a TlsLineConn (PASS/NICK/USER), answering
    PINGs, until 001; returns the lines received up to and including 376/422
    (end of MOTD) or 001 if no MOTD arrives within 2 s."""
    if password is not None:
        conn.send("PASS %s" % password)
    conn.send("NICK %s" % nick)
    conn.send("USER %s 0 * :tlslib %s" % (nick, nick))
    deadline = time.monotonic() + timeout
    seen = 0
    got_001 = None
    while True:
        for ln in conn.lines[seen:]:
            w = ln.split(" ")
            if w[0] == "PING":
                conn.send("PONG %s" % " ".join(w[1:]))
            elif len(w) > 1 and w[1] == "001":
                got_001 = got_001 or time.monotonic()
            elif len(w) > 1 and w[1] in ("376", "422"):
                return list(conn.lines)
            elif w[0] == "ERROR":
                raise AssertionError("server refused the login: %s" % ln)
        seen = len(conn.lines)
        t = time.monotonic()
        if got_001 and t - got_001 > 2:
            return list(conn.lines)
        if t > deadline or conn.closed:
            raise AssertionError("no 001 for %s within %.0fs (closed=%s): %r"
                                 % (nick, timeout, conn.closed, conn.lines[-8:]))
        conn._fill(0.2)


def irc_register_client(conn, timeout=10):
    """Act as an IRC server on a TlsLineConn: answer CAP LS (no caps) at
    once, record PASS (conn.irc_password), wait for NICK and USER, answer
    001-005 + 375/372/376; returns the nick."""
    nick = None
    user = False
    conn.irc_password = None
    deadline = time.monotonic() + timeout
    i = 0
    while nick is None or not user:
        for ln in conn.lines[i:]:
            w = ln.split(" ")
            cmd = w[0].upper()
            if cmd == "NICK" and len(w) > 1:
                nick = w[1].lstrip(":")
            elif cmd == "USER":
                user = True
            elif cmd == "PASS" and len(w) > 1:
                conn.irc_password = ln.split(" ", 1)[1].lstrip(":")
            elif cmd == "CAP" and len(w) > 1 and w[1].upper() == "LS":
                conn.send(":py.test CAP * LS :")
            elif cmd == "PING":
                conn.send(":py.test PONG py.test :%s" % (w[-1].lstrip(":") if len(w) > 1 else ""))
        i = len(conn.lines)
        if nick is not None and user:
            break
        if time.monotonic() > deadline or conn.closed:
            raise AssertionError("client did not register (closed=%s): %r"
                                 % (conn.closed, conn.lines[-10:]))
        conn._fill(0.2)
    for num, rest in (("001", ":Welcome to the py test network %s" % nick),
                      ("002", ":Your host is py.test"), ("003", ":created today"),
                      ("004", "py.test py-1 io ov"),
                      ("005", "CHANTYPES=# PREFIX=(ov)@+ NETWORK=PyTest :are supported"),
                      ("375", ":- py.test MOTD -"), ("372", ":- hello"),
                      ("376", ":End of MOTD command")):
        conn.send(":py.test %s %s %s" % (num, nick, rest))
    return nick


def irc_answer_join(conn, nick, channel, timeout=10):
    """Wait for the client's JOIN of `channel`, echo it with 353/366."""
    conn.wait_line(lambda ln: ln.upper().startswith("JOIN ") and channel in ln, timeout=timeout)
    conn.send(":%s!%s@py JOIN %s" % (nick, nick, channel))
    conn.send(":py.test 353 %s = %s :%s" % (nick, channel, nick))
    conn.send(":py.test 366 %s %s :End of NAMES list" % (nick, channel))


# --------------------------------------------------------------------------
# processes with line-oriented stdout
# --------------------------------------------------------------------------


class LineProc:
    """A registered child process whose stdout is read by a thread into
    `lines` (CR stripped), copied to a log file; stdin is a pipe."""

    def __init__(self, ctx, argv, log_path, env=None, cwd=None, stderr_to_stdout=True):
        self.ctx = ctx
        self.argv = argv
        self.log_path = log_path
        self.lines = []
        self.cond = threading.Condition()
        self.eof = False
        self.logf = open(log_path, "ab")
        self.proc = ctx.procs.popen(argv, env=env, cwd=cwd, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT if stderr_to_stdout else self.logf)
        self.thread = threading.Thread(target=self._reader, daemon=True)
        self.thread.start()
        ctx.on_close(self.stop)

    def _reader(self):
        buf = b""
        fd = self.proc.stdout.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if not data:
                break
            self.logf.write(data)
            self.logf.flush()
            buf += data
            if b"\n" in buf:
                parts = buf.split(b"\n")
                buf = parts.pop()
                with self.cond:
                    self.lines.extend(p.rstrip(b"\r").decode(errors="replace") for p in parts)
                    self.cond.notify_all()
        with self.cond:
            if buf:
                self.lines.append(buf.rstrip(b"\r").decode(errors="replace"))
            self.eof = True
            self.cond.notify_all()

    def write(self, data):
        if isinstance(data, str):
            data = data.encode()
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise HarnessError("%s: stdin closed (exit %s)" % (os.path.basename(self.argv[0]),
                                                               self.proc.poll()))

    def stdin_pending(self):
        """Bytes written to the stdin pipe that the process has not read yet."""
        try:
            b = fcntl.ioctl(self.proc.stdin.fileno(), termios.FIONREAD, b"\0\0\0\0")
            return struct.unpack("i", b)[0]
        except OSError:
            return 0

    def wait_stdin_drained(self, timeout=5):
        deadline = time.monotonic() + timeout
        while self.stdin_pending() > 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise HarnessError("%s did not read its stdin" % self.argv[0])
            time.sleep(0.01)

    def wait_line(self, pred, timeout=10, since=0, what=None):
        """First stdout line (index >= since) matching pred (callable, regex
        or substring); AssertionError on timeout or process exit."""
        test = _matcher(pred)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for ln in self.lines[since:]:
                    if test(ln):
                        return ln
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    raise AssertionError(
                        "%s: no output line matching %s within %.1fs (%s); last lines: %r"
                        % (os.path.basename(self.argv[0]), what or pred, timeout,
                           "exited %s" % self.proc.poll() if self.eof else "running",
                           self.lines[-12:]))
                self.cond.wait(min(left, 0.5))

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc is not None:
            try:
                self.proc.stdin.close()
            except (OSError, ValueError):
                pass
            bl.Procs.stop(self.proc, grace=2.0)
            self.thread.join(2)
            try:
                self.proc.stdout.close()
            except OSError:
                pass
        if not self.logf.closed:
            self.logf.close()


# --------------------------------------------------------------------------
# openssl s_server / s_client
# --------------------------------------------------------------------------

# s_server / s_client status output that is not application data
_OPENSSL_NOISE = re.compile(
    r"^(ACCEPT$|Using default temp DH|-----(BEGIN|END) [A-Z ]+-----$|[A-Za-z0-9+/=]{20,}$|"
    r"Shared |Signature Algorithms|Supported groups|Shared groups|Supported Elliptic|"
    r"CIPHER is|Secure Renegotiation|This TLS version forbids|SSL_do_handshake -> |"
    r"KEYUPDATE$|RENEGOTIATING$|DONE$|ERROR$|shutting down SSL$|CONNECTION CLOSED$|"
    r"[0-9A-F]{8,}:error:|Peer signing|Peer signature|Client certificate|"
    r"No client certificate|Early data|Reused session|Reused, |New, |Verification|verify |"
    r"depth=|read R BLOCK$|Read BLOCK$|Verified peername|Peer Temp Key|CONNECTED\(|closed$|subject=|issuer=|---$|Certificate chain$|"
    r" +\d+ s:| +i:| +a:| +v:|Server certificate$|Requested Signature|Server Temp Key|"
    r"Negotiated TLS1.3 group|SSL handshake has|Server public key|Post-Handshake|"
    r"Compression: |Expansion: |No ALPN|Max Early|SSL-Session:$| +[A-Z][A-Za-z /-]+: |"
    r" +[0-9a-f]{4} - |Extended master secret|Start Time:|Timeout +:|Verify return code|"
    r"Acceptable client|Session-ID|Master-Key|Resumption PSK|PSK identity|SRP |"
    r"TLS session ticket|Protocol +:|Cipher +:|Cipher is )")


class _OpensslPeer(LineProc):
    """Common part of s_server / s_client fixtures."""

    # first characters of a stdin line that the tool treats as a command
    # (in command mode), making the line vanish instead of being sent
    COMMAND_FIRST = ""

    def __init__(self, *a, commands=True, **kw):
        self.commands = commands
        super().__init__(*a, **kw)

    def _data(self, since=0):
        """[(index, line)] of output lines that are not the tool's own status
        output, i.e. what the peer sent: PEM/session blocks, indented lines
        and the known status lines (_OPENSSL_NOISE) are dropped (heuristic,
        fine for IRC lines: they never start with a space)."""
        out = []
        in_block = False
        for i, ln in enumerate(list(self.lines)):
            if ln.startswith("-----BEGIN "):
                in_block = True
            if in_block:
                if ln.startswith("-----END "):
                    in_block = False
                continue
            if i < since or not ln or ln[0] in " \t" or _OPENSSL_NOISE.match(ln):
                continue
            out.append((i, ln))
        return out

    def data_lines(self, since=0):
        """What the peer sent (see _data), from output line index since."""
        return [ln for _, ln in self._data(since)]

    def wait_data(self, pred, timeout=10, since=0):
        """The first line the peer sent (at output index >= since) matching
        pred (callable, regex or substring)."""
        test = _matcher(pred)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for _, ln in self._data(since):
                    if test(ln):
                        return ln
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    raise AssertionError(
                        "%s: peer sent no line matching %s within %.1fs (%s); data: %r"
                        % (type(self).__name__, pred, timeout,
                           "exited %s" % self.proc.poll() if self.eof else "running",
                           self.data_lines(since)[-12:]))
                self.cond.wait(min(left, 0.5))

    def send(self, line):
        """Send one line to the peer (CRLF appended). In command mode the
        line must not start with a command letter (it would be swallowed
        and run instead): use a prefix (":srv PING x") or lower case."""
        if isinstance(line, bytes):
            line = line.decode()
        line = line.rstrip("\r\n")
        if self.commands and line[:1] and line[:1] in self.COMMAND_FIRST:
            raise ValueError("%r starts with %r, an %s command letter: send it with a prefix "
                             "or in lower case, or start the fixture with commands=False"
                             % (line, line[0], type(self).__name__))
        self.write(line + "\r\n")

    def send_many(self, lines):
        for ln in lines:
            self.send(ln)

    def _command(self, letter):
        """Run a one-letter stdin command: it must be alone in the read() of
        the tool, so wait until the pipe is drained before and after."""
        if not self.commands:
            raise HarnessError("%s started with commands=False (-quiet): no stdin commands"
                               % type(self).__name__)
        self.wait_stdin_drained()
        time.sleep(0.05)  # the tool may still be inside SSL_write of the previous data
        self.write(letter + "\n")
        self.wait_stdin_drained()
        time.sleep(0.05)

    def key_update(self, request=True):
        """Send a TLS 1.3 KeyUpdate to the peer (update_requested if request)."""
        self._command("K" if request else "k")

    def msg_trace(self):
        """The -msg trace (protocol messages both ways) so far."""
        try:
            with open(self.msg_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def keyupdates(self, direction):
        """KeyUpdate messages in the -msg trace: direction "sent" (>>>) or
        "received" (<<<); returns their update_requested flags."""
        arrow = ">>>" if direction == "sent" else "<<<"
        out = []
        lines = self.msg_trace().splitlines()
        for i, ln in enumerate(lines):
            if ln.startswith(arrow) and ln.rstrip().endswith("KeyUpdate") and i + 1 < len(lines):
                b = lines[i + 1].split()
                out.append(int(b[4], 16) if len(b) >= 5 else None)
        return out

    def cipher(self, timeout=10):
        """The negotiated suite (OpenSSL name) from "CIPHER is ..." (s_server)
        or "Cipher is ..." (s_client)."""
        ln = self.wait_line(re.compile(r"(CIPHER|Cipher) is "), timeout=timeout)
        return ln.split(" is ", 1)[1].strip()


class OpensslServer(_OpensslPeer):
    """`openssl s_server` as a scripted IRC server on 127.0.0.1:port.

    send(line) -> the connected client; wait_data(pred) / data_lines() <-
    what the client sent. One client at a time (s_server accepts the next one
    after the current closes). key_update(request=True) sends KeyUpdate
    (update_requested) via the "K" stdin command (TLS 1.3 only).

    In command mode (default) s_server interprets stdin lines starting with
    Q, q, P, S (first letter only: quit, plaintext, stats) and lines that are
    exactly r, R, k, K, c; send() refuses lines starting with Q/q/P/S (IRC
    server lines have a ":prefix" anyway). commands=False runs -quiet (no
    commands at all, no KeyUpdate). The -msg trace goes to msg_path
    (keyupdates("received"/"sent"))."""

    COMMAND_FIRST = "QqPS"

    def __init__(self, ctx, pki, suite=None, cert=None, port=None, commands=True,
                 extra_args=(), name="s_server"):
        require_binary(OPENSSL)
        self.port = port or free_port()
        self.suite = suite
        d = os.path.join(ctx.dir, "%s-%d" % (name, self.port))
        os.makedirs(d, exist_ok=True)
        self.msg_path = os.path.join(d, "msg.log")
        cert = cert or pki.server
        argv = [OPENSSL, "s_server", "-accept", "127.0.0.1:%d" % self.port,
                "-cert", cert.cert, "-key", cert.key, "-msg", "-msgfile", self.msg_path]
        if suite is not None:
            argv += suite.openssl_args()
        if not commands:
            argv.append("-quiet")
        argv += list(extra_args)
        self.dir = d
        super().__init__(ctx, argv, os.path.join(d, "stdout.log"), commands=commands, cwd=d)

    def start(self, timeout=10):
        """Wait until s_server listens (checked in /proc/net/tcp: a probe
        connection would be taken for the client)."""
        self._wait_listen(timeout)
        return self

    def _wait_listen(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _listening(self.port):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise HarnessError("s_server not listening on %d: %r" % (self.port, self.lines[-5:]))


def _listening(port):
    """True if something listens on 127.0.0.1:port (from /proc/net/tcp, no
    connection made: a probe connection would be a bogus client to s_server)."""
    want = ":%04X" % port
    try:
        with open("/proc/net/tcp") as f:
            for ln in f.readlines()[1:]:
                w = ln.split()
                if w[1].endswith(want) and w[3] == "0A":
                    return True
    except OSError:
        pass
    return False


class OpensslClient(_OpensslPeer):
    """`openssl s_client` as an IRC client of 127.0.0.1:port.

    send(line) -> server; wait_data(pred) <- what the server sent. In command
    mode (default) s_client treats stdin data starting with Q (quit), R
    (renegotiate), k/K (KeyUpdate) as a command (first letter only, the rest
    of the read is dropped); send() refuses such lines (send "quit", "kick"
    is not possible: use commands=False = -quiet, which also disables
    KeyUpdate). key_update(request) sends KeyUpdate via "K"/"k".
    verify: True checks the chain against the PKI's CA and the name
    "localhost" (-verify_return_error); cert: a client Cert for CertFP."""

    COMMAND_FIRST = "QRKk"

    def __init__(self, ctx, pki, port, suite=None, verify=True, cert=None, commands=True,
                 servername="localhost", extra_args=(), name="s_client"):
        require_binary(OPENSSL)
        self.port = port
        d = os.path.join(ctx.dir, "%s-%d-%d" % (name, port, len(ctx._closers)))
        os.makedirs(d, exist_ok=True)
        self.dir = d
        self.msg_path = os.path.join(d, "msg.log")
        argv = [OPENSSL, "s_client", "-connect", "127.0.0.1:%d" % port,
                "-servername", servername, "-msg", "-msgfile", self.msg_path]
        if verify:
            argv += ["-CAfile", pki.ca_cert, "-verify_return_error", "-verify_hostname", servername]
        if cert is not None:
            argv += ["-cert", cert.cert, "-key", cert.key]
        if suite is not None:
            argv += suite.openssl_args()
        if not commands:
            argv.append("-quiet")
        argv += list(extra_args)
        super().__init__(ctx, argv, os.path.join(d, "stdout.log"), commands=commands, cwd=d)

    def start(self, timeout=10):
        """Wait for the handshake (the "Cipher is" line; in -quiet mode for a
        Finished in the -msg trace)."""
        if self.commands:
            self.cipher(timeout)
        else:
            bl.wait_for(lambda: "Finished" in self.msg_trace() or not self.alive(), timeout,
                        what="s_client handshake")
            check(self.alive(), "s_client exited: %r" % self.lines[-8:])
        return self


# --------------------------------------------------------------------------
# gnutls-cli
# --------------------------------------------------------------------------


class GnutlsClient(LineProc):
    """`gnutls-cli` as an IRC client of 127.0.0.1:port.

    stdout carries both gnutls-cli's informational lines ("- ...", "*** ...")
    and, after "- Simple Client Mode:", what the server sent; data_lines()
    and wait_data() return only the latter. (--logfile is not used: that
    file is stdio-buffered until exit.) send(line) appends CRLF itself (--crlf is
    not used: it only converts the first LF of each read). key_update()
    writes the inline command "^renegotiate^" (--inline-commands): in TLS 1.3
    gnutls-cli then calls gnutls_handshake() on the established session, which
    sends KeyUpdate(update_requested); in TLS 1.2 it is a real renegotiation.
    A line starting with "^" would be taken for an inline command: send()
    refuses it. verify=False uses --insecure; otherwise our CA and the name
    "localhost". extra_args go before the host (e.g. ["-d", "4"]: GnuTLS's
    handshake log, incl. "received TLS 1.3 key update (N)", on stderr, which
    lands in log_path only)."""

    def __init__(self, ctx, pki, port, priority=None, suite=None, verify=True, cert=None,
                 servername="localhost", extra_args=(), name="gnutls-cli"):
        require_binary(GNUTLS_CLI)
        self.port = port
        d = os.path.join(ctx.dir, "%s-%d-%d" % (name, port, len(ctx._closers)))
        os.makedirs(d, exist_ok=True)
        self.dir = d
        argv = [GNUTLS_CLI, "--inline-commands", "-p", str(port)]
        if verify:
            argv += ["--x509cafile", pki.ca_cert, "--verify-hostname", servername]
        else:
            argv += ["--insecure"]
        argv += ["--sni-hostname", servername]
        if cert is not None:
            argv += ["--x509certfile", cert.cert, "--x509keyfile", cert.key]
        if suite is not None:
            priority = suite.gnutls_priority
        if priority:
            argv += ["--priority", priority]
        argv += list(extra_args)
        argv.append("127.0.0.1")
        super().__init__(ctx, argv, os.path.join(d, "stdout.log"), cwd=d,
                         stderr_to_stdout=False)

    MARK = "- Simple Client Mode:"

    def _data_start(self):
        try:
            return self.lines.index(self.MARK) + 1
        except ValueError:
            return None

    def info(self):
        """gnutls-cli's informational output (everything up to the mark and
        later "- "/"*** " lines)."""
        n = self._data_start() or len(self.lines)
        return "\n".join(self.lines[:n] + [ln for ln in self.lines[n:] if _GNUTLS_INFO(ln)])

    def start(self, timeout=10):
        """Wait for "- Simple Client Mode:" (handshake done)."""
        try:
            self.wait_line(lambda ln: ln == self.MARK, timeout=timeout)
        except AssertionError as e:
            raise AssertionError("gnutls-cli handshake: %s" % e)
        return self

    def description(self):
        """e.g. "(TLS1.3-X.509)-(ECDHE-X25519)-(RSA-PSS-RSAE-SHA256)-(AES-128-GCM)"."""
        m = re.search(r"- Description: (\S+)", self.info())
        return m.group(1) if m else None

    def version(self):
        """"TLS1.2" / "TLS1.3" (from the Description line)."""
        m = re.match(r"\((TLS1\.\d)", self.description() or "")
        return m.group(1) if m else None

    def cipher(self):
        """GnuTLS cipher name, e.g. "AES-128-GCM" (last group of the
        Description line)."""
        m = re.search(r"\(([^()]*)\)$", self.description() or "")
        return m.group(1) if m else None

    def send(self, line):
        if isinstance(line, bytes):
            line = line.decode()
        line = line.rstrip("\r\n")
        if line.startswith("^"):
            raise ValueError("%r would be an inline command of gnutls-cli" % line)
        self.write(line + "\r\n")

    def send_many(self, lines):
        for ln in lines:
            self.send(ln)

    def key_update(self):
        """TLS 1.3: KeyUpdate with update_requested (see class doc)."""
        self.wait_stdin_drained()
        time.sleep(0.05)
        self.write("^renegotiate^\n")
        self.wait_stdin_drained()
        time.sleep(0.05)

    def wait_data(self, pred, timeout=10, since=0):
        """A line the server sent (after the mark, not informational)."""
        test = _matcher(pred)
        start = self._data_start() or 0
        return self.wait_line(lambda ln: self._data_start() is not None and not _GNUTLS_INFO(ln)
                              and test(ln), timeout=timeout, since=max(since, start), what=pred)

    def data_lines(self, since=0):
        n = self._data_start()
        if n is None:
            return []
        return [ln for ln in self.lines[max(n, since):] if not _GNUTLS_INFO(ln)]


def _GNUTLS_INFO(ln):
    """An informational line of gnutls-cli (not data from the server)."""
    return ln.startswith("- ") or ln.startswith("*** ") or ln.startswith(" - ") or ln == ""


# --------------------------------------------------------------------------
# GnuTLS scripted server (libgnutls via ctypes)
# --------------------------------------------------------------------------


class GnutlsServer(LineProc):
    """A scripted IRC server on GnuTLS (the library gnutls-serv uses),
    running `python3 tlslib.py gnutls-server ...` (libgnutls.so.30 through
    ctypes), one client at a time on 127.0.0.1:port.

    stdout protocol: "LISTENING port", "CONN version cipher kx" after each
    handshake, "RECV line" per client line, "KEYUPDATE-SENT", "KEYUPDATE-RECV
    flag" per KeyUpdate received from the client (flag = its
    update_requested; handshake hook), "CLOSED why",
    "HSFAIL error". send(line) -> client; key_update(request=True) calls
    gnutls_session_key_update(GNUTLS_KU_PEER) (TLS 1.3). priority: GnuTLS
    priority string (or suite=Suite)."""

    def __init__(self, ctx, pki, suite=None, priority=None, cert=None, port=None,
                 name="gnutls-server"):
        self.port = port or free_port()
        d = os.path.join(ctx.dir, "%s-%d" % (name, self.port))
        os.makedirs(d, exist_ok=True)
        self.dir = d
        cert = cert or pki.server
        if suite is not None:
            priority = suite.gnutls_priority
        argv = [sys.executable, os.path.abspath(__file__), "gnutls-server", str(self.port),
                cert.cert, cert.key, priority or "NORMAL"]
        super().__init__(ctx, argv, os.path.join(d, "stdout.log"), cwd=d)

    def start(self, timeout=10):
        self.wait_line(lambda ln: ln.startswith("LISTENING") or ln.startswith("FATAL"),
                       timeout=timeout)
        fatal = [ln for ln in self.lines if ln.startswith("FATAL")]
        if fatal:
            raise Skip(fatal[0]) if "libgnutls" in fatal[0] else HarnessError(fatal[0])
        return self

    def send(self, line):
        if isinstance(line, bytes):
            line = line.decode()
        self.write("SEND " + line.rstrip("\r\n") + "\n")

    def send_many(self, lines):
        self.write("".join("SEND " + ln.rstrip("\r\n") + "\n" for ln in lines))

    def key_update(self, request=True):
        self.write("KEYUPDATE %d\n" % (1 if request else 0))

    def close_client(self):
        self.write("CLOSE\n")

    def wait_data(self, pred, timeout=10, since=0):
        test = _matcher(pred)
        ln = self.wait_line(lambda ln: ln.startswith("RECV ") and test(ln[5:]), timeout=timeout,
                            since=since, what=pred)
        return ln[5:]

    def data_lines(self, since=0):
        return [ln[5:] for ln in self.lines[since:] if ln.startswith("RECV ")]

    def keyupdates_received(self):
        """update_requested flags of the KeyUpdates the client sent."""
        return [int(ln.split()[1]) for ln in list(self.lines) if ln.startswith("KEYUPDATE-RECV ")]

    def conn_info(self, timeout=10, since=0):
        """(version, cipher, kx) of the next handshake, e.g. ("TLS1.3",
        "AES-128-GCM", "ECDHE-RSA")."""
        ln = self.wait_line(lambda ln: ln.startswith("CONN ") or ln.startswith("HSFAIL "),
                            timeout=timeout, since=since)
        if ln.startswith("HSFAIL"):
            raise AssertionError("GnuTLS handshake failed: %s" % ln)
        return tuple(ln.split()[1:4])


def _gnutls_server_main(port, certfile, keyfile, priority):
    """Body of `tlslib.py gnutls-server`: see GnutlsServer."""
    out = sys.stdout

    def emit(s):
        out.write(s + "\n")
        out.flush()

    name = ctypes.util.find_library("gnutls") or "libgnutls.so.30"
    try:
        g = ctypes.CDLL(name)
    except OSError as e:
        emit("FATAL libgnutls not loadable: %s" % e)
        return 2
    vp, cp, ci = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    g.gnutls_strerror.restype = cp
    g.gnutls_strerror.argtypes = [ci]
    g.gnutls_certificate_allocate_credentials.argtypes = [ctypes.POINTER(vp)]
    g.gnutls_certificate_set_x509_key_file.argtypes = [vp, cp, cp, ci]
    g.gnutls_init.argtypes = [ctypes.POINTER(vp), ctypes.c_uint]
    g.gnutls_priority_set_direct.argtypes = [vp, cp, ctypes.POINTER(cp)]
    g.gnutls_credentials_set.argtypes = [vp, ci, vp]
    g.gnutls_transport_set_int2.argtypes = [vp, ci, ci]
    g.gnutls_handshake.argtypes = [vp]
    g.gnutls_handshake_set_timeout.argtypes = [vp, ctypes.c_uint]
    g.gnutls_record_send.argtypes = [vp, cp, ctypes.c_size_t]
    g.gnutls_record_send.restype = ctypes.c_ssize_t
    g.gnutls_record_recv.argtypes = [vp, ctypes.c_char_p, ctypes.c_size_t]
    g.gnutls_record_recv.restype = ctypes.c_ssize_t
    g.gnutls_record_check_pending.argtypes = [vp]
    g.gnutls_record_check_pending.restype = ctypes.c_size_t
    g.gnutls_session_key_update.argtypes = [vp, ctypes.c_uint]
    g.gnutls_bye.argtypes = [vp, ci]
    g.gnutls_deinit.argtypes = [vp]
    g.gnutls_protocol_get_version.argtypes = [vp]
    g.gnutls_protocol_get_name.argtypes = [ci]
    g.gnutls_protocol_get_name.restype = cp
    g.gnutls_cipher_get.argtypes = [vp]
    g.gnutls_cipher_get_name.argtypes = [ci]
    g.gnutls_cipher_get_name.restype = cp
    g.gnutls_kx_get.argtypes = [vp]
    g.gnutls_kx_get_name.argtypes = [ci]
    g.gnutls_kx_get_name.restype = cp

    class Datum(ctypes.Structure):
        _fields_ = [("data", ctypes.POINTER(ctypes.c_ubyte)), ("size", ctypes.c_uint)]
    HOOK = ctypes.CFUNCTYPE(ci, vp, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint,
                            ctypes.POINTER(Datum))
    g.gnutls_handshake_set_hook_function.argtypes = [vp, ctypes.c_uint, ci, HOOK]
    HS_KEY_UPDATE_T, HOOK_PRE = 24, 0

    def _on_hs(sess, htype, when, incoming, msg):
        # post-handshake messages from the client: report KeyUpdates
        if htype == HS_KEY_UPDATE_T and incoming and when == HOOK_PRE:
            flag = msg.contents.data[0] if msg and msg.contents.size >= 1 else -1
            emit("KEYUPDATE-RECV %d" % flag)
        return 0
    hs_hook = HOOK(_on_hs)  # referenced for the process's lifetime
    E_AGAIN, E_INTERRUPTED = -28, -52
    GNUTLS_SERVER, CRD_CERTIFICATE, FMT_PEM, SHUT_WR, KU_PEER = 1, 1, 1, 1, 1

    def err(rc):
        return (g.gnutls_strerror(rc) or b"?").decode()

    g.gnutls_global_init()
    cred = vp()
    g.gnutls_certificate_allocate_credentials(ctypes.byref(cred))
    rc = g.gnutls_certificate_set_x509_key_file(cred, certfile.encode(), keyfile.encode(), FMT_PEM)
    if rc < 0:
        emit("FATAL certificate: %s" % err(rc))
        return 2
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", int(port)))
    ls.listen(8)
    emit("LISTENING %s" % port)
    stdin = sys.stdin.buffer.raw if hasattr(sys.stdin.buffer, "raw") else sys.stdin.buffer
    inbuf = b""
    session = None
    conn = None
    rbuf = b""
    recvbuf = ctypes.create_string_buffer(65536)

    def close_session(why):
        nonlocal session, conn, rbuf
        if session is not None:
            g.gnutls_bye(session, SHUT_WR)
            g.gnutls_deinit(session)
        if conn is not None:
            conn.close()
        if rbuf:
            emit("RECV " + rbuf.rstrip(b"\r").decode(errors="replace"))
        session, conn, rbuf = None, None, b""
        emit("CLOSED %s" % why)

    def send_all(data):
        while data:
            n = g.gnutls_record_send(session, data, len(data))
            if n in (E_AGAIN, E_INTERRUPTED):
                continue
            if n < 0:
                return err(n)
            data = data[n:]
        return None

    while True:
        rl = [stdin, ls] if conn is None else [stdin, conn]
        if session is not None and g.gnutls_record_check_pending(session) > 0:
            r = [conn]
        else:
            r, _, _ = select.select(rl, [], [], 1.0)
        if ls in r and conn is None:
            conn, _ = ls.accept()
            session = vp()
            g.gnutls_init(ctypes.byref(session), GNUTLS_SERVER)
            errpos = cp()
            rc = g.gnutls_priority_set_direct(session, priority.encode(), ctypes.byref(errpos))
            if rc < 0:
                emit("FATAL priority %r: %s at %r" % (priority, err(rc), errpos.value))
                return 2
            g.gnutls_credentials_set(session, CRD_CERTIFICATE, cred)
            g.gnutls_handshake_set_hook_function(session, HS_KEY_UPDATE_T, HOOK_PRE, hs_hook)
            g.gnutls_transport_set_int2(session, conn.fileno(), conn.fileno())
            g.gnutls_handshake_set_timeout(session, 10000)
            while True:
                rc = g.gnutls_handshake(session)
                if rc not in (E_AGAIN, E_INTERRUPTED):
                    break
            if rc < 0:
                emit("HSFAIL %s" % err(rc))
                g.gnutls_deinit(session)
                conn.close()
                session, conn = None, None
                continue
            emit("CONN %s %s %s" % (
                g.gnutls_protocol_get_name(g.gnutls_protocol_get_version(session)).decode(),
                g.gnutls_cipher_get_name(g.gnutls_cipher_get(session)).decode(),
                (g.gnutls_kx_get_name(g.gnutls_kx_get(session)) or b"-").decode()))
            continue
        if conn is not None and conn in r:
            n = g.gnutls_record_recv(session, recvbuf, len(recvbuf))
            if n in (E_AGAIN, E_INTERRUPTED):
                continue
            if n <= 0:
                close_session("eof" if n == 0 else err(n))
                continue
            rbuf += recvbuf.raw[:n]
            while b"\n" in rbuf:
                ln, rbuf = rbuf.split(b"\n", 1)
                emit("RECV " + ln.rstrip(b"\r").decode(errors="replace"))
        if stdin in r:
            data = os.read(stdin.fileno(), 65536)
            if not data:
                if session is not None:
                    close_session("stdin closed")
                return 0
            inbuf += data
            while b"\n" in inbuf:
                cmd, inbuf = inbuf.split(b"\n", 1)
                cmd = cmd.rstrip(b"\r")
                if cmd.startswith(b"SEND "):
                    if session is None:
                        emit("ERR SEND: no client")
                        continue
                    e = send_all(cmd[5:] + b"\r\n")
                    if e:
                        close_session(e)
                elif cmd.startswith(b"KEYUPDATE"):
                    if session is None:
                        emit("ERR KEYUPDATE: no client")
                        continue
                    flags = KU_PEER if cmd.endswith(b"1") else 0
                    while True:
                        rc = g.gnutls_session_key_update(session, flags)
                        if rc not in (E_AGAIN, E_INTERRUPTED):
                            break
                    emit("KEYUPDATE-SENT %d" % flags if rc >= 0 else "ERR KEYUPDATE: %s" % err(rc))
                elif cmd == b"CLOSE":
                    if session is not None:
                        close_session("closed by test")


# --------------------------------------------------------------------------
# ngircd with TLS
# --------------------------------------------------------------------------


class NgircdTls(bl.Ngircd):
    """batonlib.Ngircd plus a TLS port (self.tls_port) via its [SSL] section
    (ngircd 26 is built with GnuTLS here).

    tls_version: None (GnuTLS default "SECURE128:-VERS-SSL3.0" -> 1.2 and 1.3)
    | "1.2" | "1.3": CipherList = a GnuTLS priority string restricting the
    versions (ngircd passes it to gnutls_priority_init); cipher_list
    overrides it. The plaintext port (self.port) stays open for watchers."""

    def __init__(self, ctx, pki, cert=None, tls_version=None, cipher_list=None, **kw):
        super().__init__(ctx, **kw)
        self.pki = pki
        self.cert = cert or pki.server
        self.tls_port = free_port()
        v = _norm_version(tls_version)
        self.cipher_list = cipher_list or {None: None,
                                           "1.2": "SECURE128:-VERS-ALL:+VERS-TLS1.2",
                                           "1.3": "SECURE128:-VERS-ALL:+VERS-TLS1.3"}[v]
        self.dh_path = os.path.join(self.dir, "dhparams.pem")

    def config_text(self):
        text = super().config_text()
        ssl_lines = ["[SSL]",
                     "CertFile = %s" % self.cert.cert,
                     "KeyFile = %s" % self.cert.key,
                     "DHFile = %s" % self.dh_path,
                     "Ports = %d" % self.tls_port]
        if self.cipher_list:
            ssl_lines.append("CipherList = %s" % self.cipher_list)
        return text + "\n".join(ssl_lines) + "\n"

    def start(self):
        require_binary(bl.NGIRCD, "ngircd")
        if not os.path.exists(self.dh_path):
            _write_ffdhe2048(self.dh_path)
        super().start()
        wait_port(self.tls_port, proc=self.proc, timeout=10)
        return self


# RFC 7919 ffdhe2048 as PKCS#3 DH parameters (= `openssl genpkey -genparam
# -algorithm DH -pkeyopt group:ffdhe2048`), in ffdhe2048.pem beside this file
# (bench/ircload.py uses it too): ngircd and inspircd (GnuTLS) otherwise
# generate DH parameters at startup, which takes long on a busy machine.
FFDHE2048_PATH = os.path.join(HERE, "ffdhe2048.pem")


def _write_ffdhe2048(path):
    shutil.copyfile(FFDHE2048_PATH, path)


# --------------------------------------------------------------------------
# inspircd 3 with ssl_gnutls
# --------------------------------------------------------------------------


class InspircdTls:
    """inspircd 3 (Debian's, module ssl_gnutls) in the foreground
    (--nofork --nopid; --runasroot when we are root) with everything in
    DIR=ctx.dir/inspircd-PORT: config, log, data. A plaintext port (port) and
    a TLS port (tls_port, <sslprofile name="tls" provider="gnutls">).

    tls_version None | "1.2" | "1.3" sets the profile's GnuTLS priority
    string (priority= overrides). Limits raised: <connect localmax/globalmax
    ... threshold commandrate> and no fakelag, no DNS lookups."""

    def __init__(self, ctx, pki, cert=None, tls_version=None, priority=None,
                 name="irc.insp.test"):
        self.ctx = ctx
        self.pki = pki
        self.cert = cert or pki.server
        self.name = name
        self.port = free_port()
        self.tls_port = free_port()
        self.priority = priority or GNUTLS_PRIORITY[_norm_version(tls_version)]
        self.dir = os.path.join(ctx.dir, "inspircd-%d" % self.tls_port)
        os.makedirs(self.dir, exist_ok=True)
        self.conf = os.path.join(self.dir, "inspircd.conf")
        self.log_path = os.path.join(self.dir, "inspircd.log")
        self.stdout_path = os.path.join(self.dir, "stdout.log")
        self.proc = None
        ctx.on_close(self.stop)

    def config_text(self):
        d = self.dir
        return "\n".join([
            '<config format="xml">',
            '<path configdir="%s" datadir="%s" logdir="%s" moduledir="%s" runtimedir="%s">'
            % (d, d, d, INSPIRCD_MODULES, d),
            '<server name="%s" description="baton test server" network="InspTest">' % self.name,
            '<admin name="baton tests" nick="admin" email="root@localhost">',
            '<bind address="127.0.0.1" port="%d" type="clients">' % self.port,
            '<bind address="127.0.0.1" port="%d" type="clients" ssl="tls">' % self.tls_port,
            '<module name="ssl_gnutls">',
            '<sslprofile name="tls" provider="gnutls" certfile="%s" keyfile="%s" '
            'dhfile="%s" priority="%s" hash="sha256" requestclientcert="yes" '
            'strictpriority="yes">' % (self.cert.cert, self.cert.key,
                                      os.path.join(d, "dhparams.pem"), self.priority),
            '<connect name="all" allow="*" maxchans="500" timeout="60" pingfreq="3600" '
            'hardsendq="16M" softsendq="16M" recvq="16M" threshold="100000" '
            'commandrate="10000000" fakelag="off" localmax="100000" globalmax="100000" '
            'maxconnwarn="off" resolvehostnames="no" useident="no" limit="100000" '
            'modes="">',
            '<dns server="127.0.0.1" timeout="1">',
            '<options prefixquit="Quit: " allowzerolimit="no" defaultmodes="nt" '
            'hostintopic="yes" pingwarning="15" splitwhois="no" exemptchanops="">',
            '<performance clonesonconnect="no" nouserdns="yes" quietbursts="yes" '
            'softlimit="100000" timeskipwarn="0">',
            '<security announceinvites="dynamic" hideserver="" hidekills="" hidesplits="no" '
            'maxtargets="100" customversion="" restrictbannedusers="no" '
            'genericoper="no" userstats="Pu">',
            '<limits maxnick="30" maxchan="64" maxmodes="20" maxident="11" maxreal="130" '
            'maxquit="255" maxtopic="307" maxkick="255" maxaway="200">',
            '<channels users="1000" opers="1000">',
            '<log method="file" type="* -USERINPUT -USEROUTPUT" level="default" target="%s">'
            % self.log_path,
            '<whowas groupsize="10" maxgroups="100" maxkeep="1h">',
            '',
        ])

    def start(self, timeout=20):
        binary = require_binary(INSPIRCD, "inspircd")
        if not os.path.exists(os.path.join(INSPIRCD_MODULES, "m_ssl_gnutls.so")):
            raise Skip("inspircd module m_ssl_gnutls.so not found in %s" % INSPIRCD_MODULES)
        _write_ffdhe2048(os.path.join(self.dir, "dhparams.pem"))
        with open(self.conf, "w") as f:
            f.write(self.config_text())
        argv = [binary, "--nofork", "--nopid", "--config", self.conf]
        if os.geteuid() == 0:
            argv.append("--runasroot")
        self.outf = open(self.stdout_path, "ab")
        self.proc = self.ctx.procs.popen(argv, stdout=self.outf, stderr=subprocess.STDOUT,
                                         cwd=self.dir)
        try:
            wait_port(self.port, proc=self.proc, timeout=timeout)
            wait_port(self.tls_port, proc=self.proc, timeout=timeout)
        except HarnessError as e:
            raise HarnessError("%s; inspircd output: %s" % (e, self.output()[-1500:]))
        return self

    def output(self):
        text = ""
        for p in (self.stdout_path, self.log_path):
            try:
                with open(p, errors="replace") as f:
                    text += f.read()
            except OSError:
                pass
        return text

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is not None:
            bl.Procs.stop(self.proc)
            self.outf.close()
            self.proc = None


# --------------------------------------------------------------------------
# Go crypto/tls server
# --------------------------------------------------------------------------

_go_build = {}


def build_gotls(ctx):
    """Build tests/integration/gotls once per process into a temp dir
    (GOCACHE, GOPATH in that dir, GO111MODULE=off, no network); returns the
    binary. The dir is removed at exit."""
    if "bin" in _go_build and os.path.exists(_go_build["bin"]):
        return _go_build["bin"]
    go = require_binary(GO, "go (golang-go)")
    d = tempfile.mkdtemp(prefix="baton-gotls-")
    import atexit
    atexit.register(shutil.rmtree, d, True)
    env = dict(os.environ, GOCACHE=os.path.join(d, "cache"), GOPATH=os.path.join(d, "gopath"),
               GO111MODULE="off", GOFLAGS="", GOPROXY="off", CGO_ENABLED="0",
               GOTOOLCHAIN="local", HOME=d)
    binary = os.path.join(d, "gotls")
    t0 = time.monotonic()
    r = subprocess.run([go, "build", "-o", binary, "main.go"], cwd=os.path.join(HERE, "gotls"),
                       env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise HarnessError("go build of gotls failed: %s" % (r.stderr or r.stdout)[-1500:])
    bl.log("gotls built in %.1fs" % (time.monotonic() - t0))
    _go_build["bin"] = binary
    return binary


class GoTlsServer(LineProc):
    """The Go crypto/tls IRC-ish server (tests/integration/gotls/main.go; see
    its header for the stdin/stdout protocol). Several clients at once.

    min_version/max_version "1.2"/"1.3"; ciphers: Go names of TLS 1.2 suites
    (TLS 1.3 suites are not configurable in Go). key_update() is not
    possible: Go 1.19's crypto/tls only answers KeyUpdates (raises
    HarnessError with the server's answer)."""

    def __init__(self, ctx, pki, cert=None, min_version="1.2", max_version="1.3",
                 ciphers=None, suite=None, client_ca=None, port=None, name="gotls.test"):
        binary = build_gotls(ctx)
        self.port = port or free_port()
        d = os.path.join(ctx.dir, "gotls-%d" % self.port)
        os.makedirs(d, exist_ok=True)
        self.dir = d
        cert = cert or pki.server
        if suite is not None:
            v = suite.version.replace("TLSv", "")
            min_version = max_version = v
            if not suite.tls13:
                ciphers = [suite.go]
        argv = [binary, "-listen", "127.0.0.1:%d" % self.port, "-cert", cert.cert,
                "-key", cert.key, "-min", _norm_version(min_version) or "1.2",
                "-max", _norm_version(max_version) or "1.3", "-name", name]
        if ciphers:
            argv += ["-ciphers", ",".join(ciphers)]
        if client_ca:
            argv += ["-clientca", client_ca]
        super().__init__(ctx, argv, os.path.join(d, "stdout.log"), cwd=d)

    def start(self, timeout=10):
        self.wait_line("LISTENING", timeout=timeout)
        return self

    def command(self, text, timeout=5):
        """Run a stdin command; returns its OK line, raises HarnessError on ERR."""
        n = len(self.lines)
        self.write(text.rstrip("\n") + "\n")
        ln = self.wait_line(lambda ln: ln.startswith("OK ") or ln.startswith("ERR "),
                            timeout=timeout, since=n)
        if ln.startswith("ERR"):
            raise HarnessError("gotls: %s" % ln)
        return ln

    def send(self, conn_id, line):
        return self.command("SEND %s %s" % (conn_id, line))

    def say(self, channel, nick, text):
        return self.command("SAY %s %s %s" % (channel, nick, text))

    def close_conn(self, conn_id):
        return self.command("CLOSE %s" % conn_id)

    def key_update(self, conn_id=1):
        return self.command("KEYUPDATE %s" % conn_id)

    def conn_info(self, timeout=10, since=0):
        """dict(id, remote, version, cipher, clientfp) of the next connection."""
        ln = self.wait_line(lambda ln: ln.startswith("CONN ") or ln.startswith("HSFAIL "),
                            timeout=timeout, since=since)
        if ln.startswith("HSFAIL"):
            raise AssertionError("gotls handshake failed: %s" % ln)
        w = ln.split()
        return dict(id=int(w[1]), remote=w[2], version=w[3], cipher=w[4], clientfp=w[5])

    def wait_data(self, pred, conn_id=None, timeout=10, since=0):
        test = _matcher(pred)

        def ok(ln):
            if not ln.startswith("RECV "):
                return False
            _, cid, rest = (ln.split(" ", 2) + [""])[:3]
            return (conn_id is None or cid == str(conn_id)) and test(rest)
        return self.wait_line(ok, timeout=timeout, since=since, what=pred).split(" ", 2)[2]


# --------------------------------------------------------------------------
# irssi under tmux
# --------------------------------------------------------------------------


class IrssiTmux:
    """irssi in a detached tmux session (private server socket in the temp
    dir), home in DIR/home, connecting over TLS to 127.0.0.1:port with
    `password`, nick, autojoining `channels`; autolog of everything into
    DIR/home/logs/<tag>/<target>.log (tag "test").

    tls_verify: False (tls_verify = "no") or True (our CA, tls_cafile).
    cert: a client Cert (tls_cert) for CertFP.
    send(text): types a line and Enter (send-keys -l); screen(): capture-pane;
    log_text(target) / wait_log(target, pred): the autolog file ("status" for
    the status window: connection messages are there)."""

    def __init__(self, ctx, pki, port, nick="irssiuser", password=None, channels=("#chat",),
                 tls_verify=False, cert=None, tls=True, name="irssi"):
        self.ctx = ctx
        self.pki = pki
        self.port = port
        self.nick = nick
        self.password = password
        self.channels = list(channels)
        self.tls_verify = tls_verify
        self.cert = cert
        self.tls = tls
        self.dir = os.path.join(ctx.dir, "%s-%d" % (name, port))
        self.home = os.path.join(self.dir, "home")
        self.logdir = os.path.join(self.home, "logs")
        os.makedirs(self.logdir, exist_ok=True)
        self.sock = os.path.join(self.dir, "tmux.sock")
        self.session = "irssi"
        self.started = False
        ctx.on_close(self.stop)

    def config_text(self):
        def q(s):
            return '"%s"' % str(s).replace("\\", "\\\\").replace('"', '\\"')
        # irssi checks only DNS names of the certificate, not IP SANs: with
        # verification on, connect to "localhost" (IPv4 preferred below)
        host = "localhost" if (self.tls and self.tls_verify) else "127.0.0.1"
        srv = ["address = %s;" % q(host),
               "chatnet = %s;" % q("test"),
               "port = %s;" % q(self.port), "autoconnect = \"yes\";"]
        if self.password is not None:
            srv.append("password = %s;" % q(self.password))
        if self.tls:
            srv.append('use_tls = "yes";')
            if self.tls_verify:
                srv += ['tls_verify = "yes";', "tls_cafile = %s;" % q(self.pki.ca_cert)]
            else:
                srv.append('tls_verify = "no";')
            if self.cert is not None:
                srv += ["tls_cert = %s;" % q(self.cert.cert), "tls_pkey = %s;" % q(self.cert.key)]
        else:
            srv.append('use_tls = "no";')
        chans = ",\n".join('  { name = %s; chatnet = "test"; autojoin = "yes"; }' % q(c)
                           for c in self.channels)
        return "\n".join([
            "servers = (",
            "  { " + " ".join(srv) + " }",
            ");",
            "chatnets = { test = { type = \"IRC\"; max_kicks = \"1\"; max_msgs = \"100\"; "
            "max_whois = \"1\"; }; };",
            "channels = (",
            chans,
            ");",
            "settings = {",
            "  core = { real_name = %s; user_name = %s; nick = %s; "
            "settings_autosave = \"no\"; recode = \"no\"; resolve_prefer_ipv6 = \"no\"; };"
            % (q(self.nick), q(self.nick), q(self.nick)),
            "  \"fe-common/core\" = { autolog = \"yes\"; autolog_path = %s; "
            "autolog_level = \"ALL\"; autocreate_query_level = \"NONE\"; "
            "window_auto_change = \"no\"; };"
            % q(os.path.join(self.logdir, "$tag/$0.log")),
            "  \"irc/core\" = { skip_motd = \"no\"; alternate_nick = \"%s_\"; "
            "cmd_queue_speed = \"0\"; };" % self.nick,
            "  \"fe-text\" = { actlist_sort = \"refnum\"; };",
            "};",
            "",
        ])

    def _tmux(self, *args, check_rc=True, timeout=10):
        r = subprocess.run([self.tmux_bin, "-S", self.sock] + list(args), capture_output=True,
                           text=True, timeout=timeout,
                           env=dict(os.environ, **{bl.RUN_TAG_VAR: self.ctx.procs.tag}))
        if check_rc and r.returncode != 0:
            raise HarnessError("tmux %s: %s" % (" ".join(args), r.stderr.strip()))
        return r.stdout

    def start(self):
        self.tmux_bin = require_binary(TMUX, "tmux")
        irssi = require_binary(IRSSI, "irssi")
        conf = os.path.join(self.home, "config")
        with open(conf, "w") as f:
            f.write(self.config_text())
        # -f /dev/null: no user tmux.conf; the server daemonizes, so it is
        # killed by stop() (kill-server) and, as a safety net, by the run tag.
        cmd = "exec %s --home=%s --config=%s" % (irssi, self.home, conf)
        self._tmux("-f", "/dev/null", "new-session", "-d", "-s", self.session, "-x", "160",
                   "-y", "48", cmd)
        self.started = True
        return self

    def send(self, text):
        """Type text + Enter in irssi (a /command or a message to the window)."""
        self._tmux("send-keys", "-t", self.session, "-l", text)
        self._tmux("send-keys", "-t", self.session, "Enter")

    def screen(self):
        """The visible screen (tmux capture-pane -p)."""
        return self._tmux("capture-pane", "-p", "-t", self.session, check_rc=False)

    def log_path(self, target):
        return os.path.join(self.logdir, "test", "%s.log" % target.lower())

    def log_text(self, target):
        try:
            with open(self.log_path(target), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_log(self, target, pred, timeout=15):
        test = _matcher(pred)

        def found():
            for ln in self.log_text(target).splitlines():
                if test(ln):
                    return ln
            return None
        try:
            return bl.wait_for(found, timeout, what="irssi log %s: %s" % (target, pred))
        except AssertionError as e:
            raise AssertionError("%s; screen:\n%s" % (e, self.screen()))

    def alive(self):
        if not self.started:
            return False
        return subprocess.run([self.tmux_bin, "-S", self.sock, "has-session", "-t",
                               self.session], capture_output=True).returncode == 0

    def stop(self):
        if self.started:
            try:
                self.send("/quit baton test over")
                time.sleep(0.2)
            except Exception:
                pass
            subprocess.run([self.tmux_bin, "-S", self.sock, "kill-server"],
                           capture_output=True, timeout=10)
            self.started = False


# --------------------------------------------------------------------------
# command line: helper processes
# --------------------------------------------------------------------------

if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "gnutls-server":
        sys.exit(_gnutls_server_main(*sys.argv[2:]))
    print("usage: tlslib.py gnutls-server PORT CERT KEY PRIORITY", file=sys.stderr)
    sys.exit(2)
