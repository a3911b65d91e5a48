"""Self-tests of the TLS fixtures in tlslib.py (no baton needed).

Each fixture is proven on its own against Python's ssl module on the other
end: IRC lines both ways, the negotiated version and suite where the tool
reports it, and KeyUpdate where the tool can send one. If one of these
fails, a failure of a TLS test of baton says nothing about baton."""

import re
import ssl
import subprocess
import time

import batonlib as bl
import tlslib as tl
from batonlib import check


def _expect_handshake_failure(ctx_client, port, what, server=None):
    """A Python client with ctx_client must fail the handshake (reason
    matching `what`)."""
    try:
        c = tl.PyTlsClient(ctx_client, port)
    except ssl.SSLError as e:
        check(re.search(what, str(e)), "handshake failed, but not with %r: %s" % (what, e))
        return str(e)
    c.close()
    raise AssertionError("handshake succeeded, expected failure %r" % what)


def test_tls_pki(ctx):
    """PKI: the server cert verifies for localhost and 127.0.0.1 against the
    CA; the expired, wrong-name and self-signed certs fail Python's
    verification with the matching reason; client certs verify as
    sslclient; fingerprints equal `openssl x509 -fingerprint -sha256`."""
    pki = tl.pki(ctx)
    for cert in (pki.server, pki.expired, pki.wrong_name, pki.self_signed, pki.client("alice")):
        out = subprocess.run(["openssl", "x509", "-in", cert.cert, "-noout", "-fingerprint",
                              "-sha256"], capture_output=True, text=True, check=True).stdout
        check(out.strip().split("=", 1)[1] == cert.fingerprint_colons,
              "%s fingerprint %s vs %s" % (cert.name, out, cert.fingerprint))
        check(re.fullmatch(r"sha256:[0-9a-f]{64}", cert.fingerprint), cert.fingerprint)
    v = subprocess.run(["openssl", "verify", "-CAfile", pki.ca_cert, "-purpose", "sslclient",
                        pki.client("alice").cert], capture_output=True, text=True)
    check(v.returncode == 0, "client cert: %s" % v.stdout + v.stderr)

    cases = [(pki.server, None), (pki.expired, "certificate has expired"),
             (pki.not_yet_valid, "certificate is not yet valid"),
             (pki.wrong_name, "Hostname mismatch|IP address mismatch"),
             (pki.self_signed, "self.signed certificate|unable to get local issuer")]
    import threading
    for cert, failure in cases:
        srv = tl.PyTlsServer(ctx, pki.server_context(cert))
        for host in ("localhost", "127.0.0.1"):
            t = threading.Thread(target=_accept_quietly, args=(srv,), daemon=True)
            t.start()
            if failure is None:
                c = tl.PyTlsClient(pki.client_context(), srv.port, server_hostname=host)
                check(c.peer_fingerprint() == cert.fingerprint, "peer fingerprint")
                c.close()
            else:
                _expect_handshake_failure(pki.client_context(), srv.port, failure)
            t.join(5)
        srv.stop()
    # a client certificate is seen by a Python server that asks for one
    srv = tl.PyTlsServer(ctx, pki.server_context(request_client_cert=True))
    box = []
    t = threading.Thread(target=lambda: box.append(srv.accept()), daemon=True)
    t.start()
    c = tl.PyTlsClient(pki.client_context(cert=pki.client("alice")), srv.port)
    c.send("PING :x")
    t.join(5)
    check(box and box[0].peer_fingerprint() == pki.client("alice").fingerprint,
          "client cert fingerprint seen by the server")
    c.close()


def _accept_quietly(srv):
    try:
        return srv.accept(timeout=5)
    except (ssl.SSLError, OSError, AssertionError) as e:
        return e


def _exact(got, want, what):
    check(got == want, "%s: got %r, want %r" % (what, got, want))


WELCOME = ["001", "002", "003", "004", "005", "375", "372", "376"]


def _two_way(conn, peer_send, peer_wait, tag):
    """conn (Python side) <-> peer fixture: a line each way."""
    peer_send(":peer.test PRIVMSG you :%s from the fixture" % tag)
    conn.wait_line("%s from the fixture" % tag, timeout=10)
    conn.send("PRIVMSG peer :%s from python" % tag)
    peer_wait("%s from python" % tag)


def test_tls_ngircd(ctx):
    """ngircd with [SSL]: a Python TLS client (verifying our CA) logs in,
    joins and exchanges PRIVMSGs with a plaintext user; default settings
    negotiate TLS 1.3, tls_version="1.2" (CipherList
    SECURE128:-VERS-ALL:+VERS-TLS1.2) gives TLS 1.2 and refuses a 1.3-only
    client."""
    pki = tl.pki(ctx)
    ng = tl.NgircdTls(ctx, pki).start()
    c = tl.PyTlsClient(pki.client_context(), ng.tls_port)
    check(c.version() == "TLSv1.3", "version %s" % c.version())
    tl.irc_login(c, "tlsuser")
    c.send("JOIN #tls")
    c.wait_line(re.compile(r"JOIN :?#tls"))
    plain = bl.direct_user(ctx.loop, ng, "plainuser", ["#tls"])
    c.send("PRIVMSG #tls :hello over tls")
    ctx.loop.run_until(lambda: plain.find(lambda m: "hello over tls" in (m.param(1) or "")), 10,
                       "plain user sees the TLS user's line")
    plain.privmsg("#tls", "hello back in plaintext")
    c.wait_line("hello back in plaintext")
    bl.log("ngircd default: %s %s" % (c.version(), c.cipher()))
    c.close()

    ng12 = tl.NgircdTls(ctx, pki, tls_version="1.2").start()
    c = tl.PyTlsClient(pki.client_context(), ng12.tls_port)
    check(c.version() == "TLSv1.2", "version %s" % c.version())
    check(c.cipher().startswith("ECDHE-"), "cipher %s" % c.cipher())
    tl.irc_login(c, "tls12user")
    c.close()
    _expect_handshake_failure(pki.client_context(min_version="1.3"), ng12.tls_port,
                              "PROTOCOL_VERSION|version|alert|EOF")
    ng13 = tl.NgircdTls(ctx, pki, tls_version="1.3").start()
    _expect_handshake_failure(pki.client_context(max_version="1.2"), ng13.tls_port,
                              "PROTOCOL_VERSION|version|alert|EOF")


def test_tls_inspircd(ctx):
    """inspircd 3 + ssl_gnutls: TLS 1.2 and TLS 1.3 profiles each negotiate
    their version with a Python client (the other version is refused), log
    in, join and exchange lines with a plaintext user; 30 connections from
    127.0.0.1 are accepted (per-IP limits raised)."""
    pki = tl.pki(ctx)
    for v in ("1.3", "1.2"):
        ins = tl.InspircdTls(ctx, pki, tls_version=v).start()
        c = tl.PyTlsClient(pki.client_context(), ins.tls_port)
        check(c.version() == "TLSv" + v, "inspircd %s: version %s" % (v, c.version()))
        tl.irc_login(c, "tls" + v.replace(".", ""))
        c.send("JOIN #tls")
        c.wait_line(re.compile(r"JOIN :?#tls"))
        # inspircd completes a registration asynchronously: JOIN only after 001
        pnick = "plain" + v.replace(".", "")
        plain = bl.direct_user(ctx.loop, ins, pnick)
        plain.send("JOIN #tls")
        ctx.loop.run_until(lambda: "#tls" in bl.joined_channels(plain, pnick), 10,
                           "plain user joins #tls")
        c.send("PRIVMSG #tls :hello over tls %s" % v)
        ctx.loop.run_until(lambda: plain.find(lambda m: "hello over tls" in (m.param(1) or "")),
                           10, "plain user sees the TLS user's line")
        plain.privmsg("#tls", "hello back")
        c.wait_line("hello back")
        bl.log("inspircd %s: %s %s" % (v, c.version(), c.cipher()))
        other = {"1.2": dict(min_version="1.3"), "1.3": dict(max_version="1.2")}[v]
        _expect_handshake_failure(pki.client_context(**other), ins.tls_port,
                                  "PROTOCOL_VERSION|version|alert|EOF|handshake")
        if v == "1.3":
            conns = [tl.PyTlsClient(pki.client_context(), ins.tls_port) for _ in range(30)]
            for i, k in enumerate(conns):
                k.send("NICK many%d" % i)
                k.send("USER u 0 * :u")
            for k in conns:
                k.wait_line(re.compile(r"^:\S+ 001 "), timeout=15)
                k.close()
        c.close()
        ins.stop()


def test_tls_gotls(ctx):
    """Go crypto/tls server: TLS 1.3 by default (Python client), IRC login,
    JOIN, relay between two TLS clients, an injected line (SAY); a TLS 1.2
    suite selection is honoured; KEYUPDATE is refused (Go cannot initiate
    one), but Go answers a KeyUpdate(update_requested) from s_client."""
    pki = tl.pki(ctx)
    go = tl.GoTlsServer(ctx, pki).start()
    a = tl.PyTlsClient(pki.client_context(), go.port)
    check(a.version() == "TLSv1.3", a.version())
    info = go.conn_info()
    check(info["version"] == "TLSv1.3" and info["cipher"] == a.cipher(),
          "go says %s, python %s" % (info, a.cipher()))
    tl.irc_login(a, "alice")
    b = tl.PyTlsClient(pki.client_context(cert=pki.client("bob")), go.port)
    tl.irc_login(b, "bob")
    for c in (a, b):
        c.send("JOIN #go")
        c.wait_line(re.compile(r"JOIN #go"))
    a.send("PRIVMSG #go :from alice")
    b.wait_line("PRIVMSG #go :from alice")
    b.send("PRIVMSG alice :private from bob")
    a.wait_line("PRIVMSG alice :private from bob")
    go.say("#go", "injector", "injected line")
    a.wait_line("injector!injector@inject PRIVMSG #go :injected line")
    b.wait_line("injected line")
    go.wait_data("PRIVMSG #go :from alice")
    a.send("PING :are-you-there")
    a.wait_line("PONG")
    try:
        go.key_update(1)
        raise AssertionError("gotls KEYUPDATE unexpectedly accepted")
    except bl.HarnessError as e:
        check("cannot initiate" in str(e), str(e))
    a.close()
    b.close()

    # Go answers a KeyUpdate requested by the peer (s_client "K")
    sc = tl.OpensslClient(ctx, pki, go.port, suite=tl.SUITES_BY_KEY["tls13-aes256gcm"]).start()
    sc.send("NICK kuser")
    sc.send("USER k 0 * :k")
    sc.wait_data(" 376 ")
    sc.key_update(request=True)
    sc.send("PING :after-keyupdate")
    sc.wait_data("after-keyupdate")
    check(sc.keyupdates("sent") == [1], "s_client sent %s" % sc.keyupdates("sent"))
    check(sc.keyupdates("received") == [0], "Go answered %s" % sc.keyupdates("received"))

    s = tl.SUITES_BY_KEY["tls12-chacha20"]
    go12 = tl.GoTlsServer(ctx, pki, suite=s).start()
    c = tl.PyTlsClient(pki.client_context(), go12.port)
    check((c.version(), c.cipher()) == ("TLSv1.2", s.openssl), "%s %s" % (c.version(), c.cipher()))
    check(go12.conn_info()["cipher"] == s.go, "go cipher")
    tl.irc_login(c, "carol")
    c.close()


def test_tls_openssl_server(ctx):
    """openssl s_server for each of the six suites: a Python client
    negotiates exactly that suite and version, lines flow both ways; in TLS
    1.3 the "K" command makes s_server send KeyUpdate(update_requested),
    which the Python client receives and answers (seen in s_server's -msg
    trace). send() refuses lines s_server would take for commands."""
    pki = tl.pki(ctx)
    for suite in tl.SUITES:
        srv = tl.OpensslServer(ctx, pki, suite=suite).start()
        c = tl.PyTlsClient(pki.client_context(), srv.port)
        check((c.version(), c.cipher()) == (suite.version, suite.openssl),
              "%s: got %s %s" % (suite, c.version(), c.cipher()))
        check(srv.cipher() == suite.openssl, "s_server says %s" % srv.cipher())
        c.send("NICK pyclient")
        srv.wait_data("NICK pyclient")
        srv.send(":srv.test 001 pyclient :Welcome")
        c.wait_line(" 001 pyclient")
        srv.send_many([":srv.test PING :p%d" % i for i in range(50)])
        c.wait_line(":srv.test PING :p49")
        _two_way(c, srv.send, srv.wait_data, suite.key)
        if suite.tls13:
            srv.key_update(request=True)
            srv.send(":srv.test NOTICE pyclient :after keyupdate")
            c.wait_line("after keyupdate")
            check(c.keyupdates("read") == [1], "python got %s" % c.keyupdates("read"))
            c.send("PRIVMSG srv :answer after keyupdate")
            srv.wait_data("answer after keyupdate")
            check(c.keyupdates("write") == [0], "python answered %s" % c.keyupdates("write"))
            check(srv.keyupdates("sent") == [1] and srv.keyupdates("received") == [0],
                  "s_server trace: sent %s received %s"
                  % (srv.keyupdates("sent"), srv.keyupdates("received")))
        time.sleep(0.1)
        _exact(srv.data_lines(), ["NICK pyclient", "PRIVMSG peer :%s from python" % suite.key]
               + (["PRIVMSG srv :answer after keyupdate"] if suite.tls13 else []),
               "s_server received (exactly once, nothing else)")
        _exact(c.lines, [":srv.test 001 pyclient :Welcome"]
               + [":srv.test PING :p%d" % i for i in range(50)]
               + [":peer.test PRIVMSG you :%s from the fixture" % suite.key]
               + ([":srv.test NOTICE pyclient :after keyupdate"] if suite.tls13 else []),
               "python client received")
        c.close()
        srv.stop()
    try:
        srv.send("PING :x")
        raise AssertionError("a line starting with P was accepted in command mode")
    except ValueError:
        pass
    # commands=False (-quiet): any line goes through, both ways (s_client too)
    srv = tl.OpensslServer(ctx, pki, commands=False).start()
    c = tl.PyTlsClient(pki.client_context(), srv.port)
    srv.send_many(["PING :plain", "K", "Q"])
    c.wait_line(lambda ln: ln == "Q")
    _exact(c.lines, ["PING :plain", "K", "Q"], "quiet s_server sent")
    c.close()
    sc = tl.OpensslClient(ctx, pki, srv.port, commands=False).start()
    sc.send_many(["KICK #a b", "QUIT :x"])
    srv.wait_data("QUIT :x")
    _exact(srv.data_lines(), ["KICK #a b", "QUIT :x"], "quiet s_server received")


def test_tls_gnutls_server(ctx):
    """The scripted GnuTLS server for each of the six suites: a Python client
    negotiates exactly that suite and version (GnuTLS reports the same),
    lines flow both ways, and in TLS 1.3 gnutls_session_key_update(KU_PEER)
    reaches the client as KeyUpdate(update_requested)."""
    pki = tl.pki(ctx)
    for suite in tl.SUITES:
        srv = tl.GnutlsServer(ctx, pki, suite=suite).start()
        c = tl.PyTlsClient(pki.client_context(), srv.port)
        check((c.version(), c.cipher()) == (suite.version, suite.openssl),
              "%s: got %s %s" % (suite, c.version(), c.cipher()))
        ver, ciph, kx = srv.conn_info()
        check(ver == suite.version.replace("TLSv", "TLS") and ciph == suite.gnutls,
              "gnutls says %s %s %s" % (ver, ciph, kx))
        c.send("NICK pyclient")
        srv.wait_data("NICK pyclient")
        srv.send_many([":gnutls.test PING :p%d" % i for i in range(50)])
        c.wait_line(":gnutls.test PING :p49")
        _two_way(c, srv.send, srv.wait_data, suite.key)
        if suite.tls13:
            srv.key_update(request=True)
            srv.wait_line("KEYUPDATE-SENT 1")
            srv.send(":gnutls.test NOTICE pyclient :after keyupdate")
            c.wait_line("after keyupdate")
            check(c.keyupdates("read") == [1], "python got %s" % c.keyupdates("read"))
            c.send("PRIVMSG srv :answer after keyupdate")
            srv.wait_data("answer after keyupdate")
            check(c.keyupdates("write") == [0], "python answered %s" % c.keyupdates("write"))
        time.sleep(0.1)
        _exact(srv.data_lines(), ["NICK pyclient", "PRIVMSG peer :%s from python" % suite.key]
               + (["PRIVMSG srv :answer after keyupdate"] if suite.tls13 else []),
               "GnuTLS server received")
        _exact(c.lines, [":gnutls.test PING :p%d" % i for i in range(50)]
               + [":peer.test PRIVMSG you :%s from the fixture" % suite.key]
               + ([":gnutls.test NOTICE pyclient :after keyupdate"] if suite.tls13 else []),
               "python client received")
        c.close()
        srv.wait_line("CLOSED")
        srv.stop()


def test_tls_openssl_client(ctx):
    """openssl s_client as an IRC client (verifying our CA): registers with
    a Python TLS server, lines both ways, TLS 1.2 and 1.3 suites as forced,
    "K" makes it send KeyUpdate(update_requested) that the Python server
    receives; against the expired cert it refuses to connect."""
    pki = tl.pki(ctx)
    for key in ("tls13-chacha20", "tls12-aes256gcm"):
        suite = tl.SUITES_BY_KEY[key]
        srv = tl.PyTlsServer(ctx, pki.server_context())
        sc = tl.OpensslClient(ctx, pki, srv.port, suite=suite, cert=pki.client("sc"))
        conn = srv.accept()
        check((conn.version(), conn.cipher()) == (suite.version, suite.openssl),
              "%s: %s %s" % (key, conn.version(), conn.cipher()))
        check(sc.start().cipher() == suite.openssl, "s_client cipher")
        sc.send("NICK sclient")
        sc.send("USER s 0 * :s")
        nick = tl.irc_register_client(conn)
        check(nick == "sclient", nick)
        sc.wait_data(" 376 sclient")
        _two_way(conn, sc.send, sc.wait_data, key)
        sc.send("PRIVMSG #x :" + "y" * 400)
        conn.wait_line("y" * 400)
        try:
            sc.send("KICK #x someone")
            raise AssertionError("a line starting with K was accepted in command mode")
        except ValueError:
            pass
        if suite.tls13:
            sc.key_update(request=True)
            sc.send("PRIVMSG #x :after keyupdate")
            conn.wait_line("after keyupdate")
            check(conn.keyupdates("read") == [1], "server got %s" % conn.keyupdates("read"))
            conn.send(":py.test NOTICE sclient :answer")
            sc.wait_data("NOTICE sclient :answer")
            check(sc.keyupdates("received") == [0], "s_client got %s" % sc.keyupdates("received"))
        time.sleep(0.1)
        conn.pump(0.1)
        _exact([ln.split(" ")[1] for ln in sc.data_lines()[:8]], WELCOME, "s_client welcome")
        _exact(sc.data_lines()[8:], ["PRIVMSG peer :%s from python" % key]
               + ([":py.test NOTICE sclient :answer"] if suite.tls13 else []), "s_client received")
        _exact(conn.lines, ["NICK sclient", "USER s 0 * :s",
                            ":peer.test PRIVMSG you :%s from the fixture" % key,
                            "PRIVMSG #x :" + "y" * 400]
               + (["PRIVMSG #x :after keyupdate"] if suite.tls13 else []), "server received")
        sc.stop()
        srv.stop()
    srv = tl.PyTlsServer(ctx, pki.server_context(cert=pki.expired))
    sc = tl.OpensslClient(ctx, pki, srv.port)
    _accept_quietly(srv)
    sc.proc.wait(10)
    check(sc.proc.returncode != 0, "s_client accepted an expired certificate")
    sc.wait_line("certificate has expired")


def test_tls_gnutls_client(ctx):
    """gnutls-cli as an IRC client (verifying our CA): registers with a
    Python TLS server, lines both ways, the forced suite is negotiated (and
    reported in its --logfile), and in TLS 1.3 the inline command
    ^renegotiate^ sends KeyUpdate(update_requested)."""
    pki = tl.pki(ctx)
    for key in ("tls13-aes128gcm", "tls12-chacha20"):
        suite = tl.SUITES_BY_KEY[key]
        srv = tl.PyTlsServer(ctx, pki.server_context())
        gc = tl.GnutlsClient(ctx, pki, srv.port, suite=suite)
        conn = srv.accept()
        check((conn.version(), conn.cipher()) == (suite.version, suite.openssl),
              "%s: %s %s" % (key, conn.version(), conn.cipher()))
        gc.start()
        check(gc.cipher() == suite.gnutls and gc.version() == suite.version.replace("v", ""),
              "gnutls-cli reports %s %s" % (gc.version(), gc.cipher()))
        gc.send_many(["NICK gclient", "USER g 0 * :g"])
        check(tl.irc_register_client(conn) == "gclient", "nick")
        gc.wait_data(" 376 gclient")
        _two_way(conn, gc.send, gc.wait_data, key)
        if suite.tls13:
            gc.key_update()
            gc.send("PRIVMSG #x :after keyupdate")
            conn.wait_line("after keyupdate")
            check(conn.keyupdates("read") == [1], "server got %s" % conn.keyupdates("read"))
            conn.send(":py.test NOTICE gclient :answer")
            gc.wait_data("NOTICE gclient :answer")
        time.sleep(0.1)
        conn.pump(0.1)
        _exact([ln.split(" ")[1] for ln in gc.data_lines()[:8]], WELCOME, "gnutls-cli welcome")
        _exact(gc.data_lines()[8:], ["PRIVMSG peer :%s from python" % key]
               + ([":py.test NOTICE gclient :answer"] if suite.tls13 else []),
               "gnutls-cli received")
        _exact(conn.lines, ["NICK gclient", "USER g 0 * :g",
                            ":peer.test PRIVMSG you :%s from the fixture" % key]
               + (["PRIVMSG #x :after keyupdate"] if suite.tls13 else []),
               "server received (no inline command leaked)")
        gc.stop()
        srv.stop()


def test_tls_irssi(ctx):
    """irssi under tmux connects over TLS (verifying our CA), sends PASS,
    registers, autojoins #chat; a channel line from the server appears in
    its autolog, and a line typed with send-keys reaches the server."""
    pki = tl.pki(ctx)
    srv = tl.PyTlsServer(ctx, pki.server_context())
    irssi = tl.IrssiTmux(ctx, pki, srv.port, nick="irssiuser", password="u/net:secret",
                         channels=["#chat"], tls_verify=True).start()
    conn = srv.accept(timeout=20)
    bl.log("irssi: %s %s" % (conn.version(), conn.cipher()))
    check(conn.version() == "TLSv1.3", conn.version())
    nick = tl.irc_register_client(conn, timeout=15)
    check(nick == "irssiuser", nick)
    check(conn.irc_password == "u/net:secret", "PASS %r" % conn.irc_password)
    tl.irc_answer_join(conn, nick, "#chat", timeout=15)
    conn.send(":alice!a@py PRIVMSG #chat :hello irssi, line one")
    irssi.wait_log("#chat", "hello irssi, line one")
    irssi.send("/window goto #chat")
    time.sleep(0.3)
    irssi.send("typed in irssi")
    conn.wait_line("PRIVMSG #chat :typed in irssi", timeout=10)
    check("typed in irssi" in irssi.screen() or "typed in irssi" in irssi.log_text("#chat"),
          "own line not shown: %s" % irssi.screen())
    irssi.stop()
    conn.pump(1)
    check(any(ln.startswith("QUIT") for ln in conn.lines) or conn.closed,
          "irssi did not quit: %r" % conn.lines[-5:])
