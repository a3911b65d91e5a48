"""Client-protocol conformance through baton against a real ngircd (issue 11
section 2; the unit tests of the same bugs are in
tests/unit/sessiond/test_conformance.c). One bouncer user u000 (nick bn000)
in #chat, a direct ngircd user 'dave' and a watcher of bn000's QUITs."""

import os
import re
import subprocess

import batonlib as bl
import tlslib as tl
from batonlib import check

CHANNELS = ["#chat"]


def setup(ctx):
    ng = ctx.ngircd()
    b = bl.Baton(ctx, ng, nsessions=1, channels=CHANNELS)
    w = bl.Watcher(ctx.loop, ng, CHANNELS, watch=[s.nick for s in b.sessions])
    b.start(wait=False)
    bl.pump_ready(ctx, b)
    w.wait_present([s.nick for s in b.sessions], timeout=30)
    dave = bl.direct_user(ctx.loop, ng, "dave", CHANNELS)
    return ng, w, b, dave


def text_of(n, seed):
    """n bytes of text without spaces, distinct per seed."""
    t = ("%s-" % seed) + "".join(chr(ord("a") + i % 26) for i in range(n))
    return t[:n]


def lines_with(conn, needle, since=0):
    return [ln for _, ln in conn.lines[since:] if needle in ln]


def test_line_bounds_against_ngircd(ctx):
    """Bug: a legal 512-byte PRIVMSG (510 bytes + CRLF) got the session
    killed: baton rebuilt "PRIVMSG #chat text" as "PRIVMSG #chat :text", the
    added ':' made 513 bytes and ngircd closed the connection ("Request too
    long"): the message was lost and the channel saw the user QUIT and JOIN.
    Lines over 512 bytes went to the network as they came. Now: the 510-byte
    line reaches dave as sent (with and without ':'), 511 bytes, 513 bytes
    and 4,000 bytes get 417 and reach nobody, JOIN/TOPIC/AWAY at 510 bytes
    pass, and the session never leaves the network."""
    ng, w, b, dave = setup(ctx)
    s = b.sessions[0]
    c = bl.bouncer_client(ctx.loop, b, s, client="conf")
    head = "PRIVMSG #chat "
    sent = []
    for k, colon in enumerate(("", ":")):
        t = text_of(510 - len(head) - len(colon), "ok%d" % k)
        line = head + colon + t
        check(len(line) == 510, "test line of %d bytes" % len(line))
        c.send(line)
        sent.append(t)
        # ngircd cuts what it relays to dave at its own line bound (our
        # prefix makes the line longer): the start of the text is enough
        want = " PRIVMSG #chat :" + t[:300]
        ctx.loop.run_until(lambda: lines_with(dave, want), 10, "dave receiving the 510-byte line")
    mark_c, mark_d = len(c.lines), len(dave.lines)
    for n in (511, 513, 4000):
        c.send(head + text_of(n - len(head), "long%d" % n))
    ctx.loop.run_until(lambda: len(lines_with(c, " 417 ", mark_c)) >= 3, 10, "three 417 replies")
    # JOIN, TOPIC and AWAY of 510 bytes: forwarded (ngircd cuts or refuses
    # the name or text by its own rules), never closing the session
    c.send("TOPIC #chat :" + text_of(510 - len("TOPIC #chat :"), "topic"))
    c.send("AWAY :" + text_of(510 - len("AWAY :"), "away"))
    c.send("JOIN #" + text_of(504, "j"))
    c.send("PRIVMSG #chat :after")
    ctx.loop.run_until(lambda: lines_with(dave, "PRIVMSG #chat :after", mark_d), 10,
                       "the line after the long ones")
    ctx.loop.run_for(0.5)
    check(not lines_with(dave, "long", mark_d),
          "an over-long line reached the network: %s" % lines_with(dave, "long", mark_d)[:1])
    quits = [e for e in w.events if e[1] == "QUIT"]
    check(not quits, "the session left the network: %s" % quits)
    check(not c.closed, "client closed: %s" % c.close_reason)
    check(not lines_with(c, "Disconnected from"), "baton lost the network: %s"
          % lines_with(c, "Disconnected from"))
    log = open(ng.log_path, errors="replace").read()
    check("too long" not in log.lower(), "ngircd refused a line: %s"
          % [ln for ln in log.splitlines() if "too long" in ln.lower()][:2])


def test_params_and_caps_against_ngircd(ctx):
    """Bugs: PING without a parameter answered PONG and USER with an empty
    realname was accepted (both 461); CAP REQ :multi-prefix
    userhost-in-names was NAK'd; several prefixes in NAMES and WHO replies
    reached a client without multi-prefix (ngircd grants multi-prefix to
    baton). Here dave is @+ in #conf: a client without multi-prefix sees
    only '@', one with it '@+'."""
    ng, w, b, dave = setup(ctx)
    s = b.sessions[0]
    # before login
    p = ctx.loop.connect(b.port, name="prelogin")
    p.send("PING")
    p.send("CAP LS 302")
    p.send("CAP REQ :multi-prefix userhost-in-names")
    p.send("PASS %s" % s.pass_line("multi"))
    p.send("NICK %s" % s.nick)
    p.send("USER %s 0 * :" % s.user)
    ctx.loop.run_until(lambda: len(lines_with(p, " 461 ")) >= 2, 10, "461 to PING and USER")
    check(lines_with(p, " 461 * PING ") or lines_with(p, " PING :Not enough"),
          "461 for PING: %s" % lines_with(p, " 461 "))
    check(lines_with(p, " USER :Not enough parameters"), "461 for USER: %s" % lines_with(p, " 461 "))
    check(lines_with(p, "ACK :multi-prefix userhost-in-names"),
          "CAP REQ not acknowledged: %s" % lines_with(p, " CAP "))
    check(not lines_with(p, "PONG"), "PONG to a PING without a token")
    p.send("USER %s 0 * :real name" % s.user)
    p.send("CAP END")
    bl.wait_attached(ctx.loop, p, s)
    plain = bl.bouncer_client(ctx.loop, b, s, client="plain")
    # dave: op and voice in a channel of his own, which the session joins
    dave.send("JOIN #conf")
    ctx.loop.run_until(lambda: "#conf" in bl.joined_channels(dave, "dave"), 10, "dave in #conf")
    dave.send("MODE #conf +v dave")
    ctx.loop.run_until(lambda: lines_with(dave, "MODE #conf +v dave"), 10, "dave voiced")
    plain.send("JOIN #conf")
    for conn in (p, plain):
        ctx.loop.run_until(lambda: lines_with(conn, " 366 %s #conf " % s.nick), 10,
                           "NAMES of #conf to %s" % conn.name)
    mp, mplain = len(p.lines), len(plain.lines)
    for conn in (p, plain):
        conn.send("WHO #conf")
        conn.send("NAMES #conf")
    for conn, mark in ((p, mp), (plain, mplain)):
        ctx.loop.run_until(lambda: lines_with(conn, " 315 ", mark) and
                           lines_with(conn, " 366 ", mark), 10, "WHO and NAMES replies")

    def names(conn, since=0):
        return " ".join(ln.split(" :", 1)[1] for ln in lines_with(conn, " 353 ", since)
                        if "#conf" in ln)

    def who_flags(conn, since):
        return [bl.parse(ln).params[6] for ln in lines_with(conn, " 352 ", since)
                if " dave " in ln]

    check("@+dave" in names(p, mp).split(), "multi-prefix client: NAMES %r" % names(p, mp))
    check("@dave" in names(plain, mplain).split(), "plain client: NAMES %r" % names(plain, mplain))
    check("@+dave" not in names(plain).split(), "several prefixes leaked: %r" % names(plain))
    # (a reply goes to every client of the session: two of each)
    check(set(who_flags(p, mp)) == {"H@+"}, "multi-prefix client: WHO flags %s" % who_flags(p, mp))
    check(set(who_flags(plain, mplain)) == {"H@"},
          "plain client: WHO flags %s" % who_flags(plain, mplain))
    mplain = len(plain.lines)
    plain.send("PING")
    ctx.loop.run_until(lambda: lines_with(plain, " 461 ", mplain), 10, "461 to an attached PING")
    check(not lines_with(plain, "PONG", mplain), "PONG to a PING without a token")


# --------------------------------------------------------------------------
# echo-message from the network: inspircd 3 has it (ngircd 26 offers only
# multi-prefix, so there baton echoes at once, as soju does)
# --------------------------------------------------------------------------


class Inspircd(tl.InspircdTls):
    """inspircd 3 on a plaintext port with the IRCv3 modules baton uses:
    cap, ircv3 (away-notify...), ircv3_echomessage, ircv3_servertime,
    namesx (multi-prefix), uhnames (userhost-in-names), ircv3_ctctags
    (message-tags), ircv3_msgid."""

    def __init__(self, ctx):
        class NoCert:  # the TLS lines are dropped from the config
            cert = key = "unused"

        class NoPki:
            server = NoCert()
        super().__init__(ctx, NoPki(), name="irc.insp.test")

    def config_text(self):
        text = super().config_text().splitlines()
        drop = ('type="clients" ssl=', '<module name="ssl_gnutls">', '<sslprofile ')
        text = [ln for ln in text if not any(d in ln for d in drop)]
        for m in ("cap", "ircv3", "ircv3_echomessage", "ircv3_servertime", "namesx", "uhnames",
                  "ircv3_ctctags", "ircv3_msgid"):
            text.append('<module name="%s">' % m)
        return "\n".join(text) + "\n"

    def start(self, timeout=20):
        binary = tl.require_binary(tl.INSPIRCD, "inspircd")
        with open(self.conf, "w") as f:
            f.write(self.config_text())
        argv = [binary, "--nofork", "--nopid", "--config", self.conf]
        if os.geteuid() == 0:
            argv.append("--runasroot")
        self.outf = open(self.stdout_path, "ab")
        self.proc = self.ctx.procs.popen(argv, stdout=self.outf, stderr=subprocess.STDOUT,
                                         cwd=self.dir)
        try:
            bl.wait_port(self.port, proc=self.proc, timeout=timeout)
        except bl.HarnessError as e:
            raise bl.HarnessError("%s; inspircd output: %s" % (e, self.output()[-1500:]))
        return self


def test_echo_message_inspircd(ctx):
    """Bug: echo-message was made up when baton forwarded a line, so a
    message the network refused (404 in a moderated channel) was still
    echoed, stored and relayed to the user's other clients. With inspircd's
    echo-message only what it accepted is relayed and stored: a line to +n
    #mod, which the session is not in, reaches no other client and no
    backlog; a line to #chat reaches the other client and dave, not the
    sender (no echo-message); a client with echo-message gets its own line
    back once. Also extended-join and away-notify only to the client that
    asked for them."""
    ins = Inspircd(ctx).start()
    dave = bl.direct_user(ctx.loop, ins, "dave")
    b = bl.Baton(ctx, ins, nsessions=1, channels=["#chat"])
    b.start(wait=False)
    bl.pump_ready(ctx, b)
    s = b.sessions[0]
    a = bl.bouncer_client(ctx.loop, b, s, client="a")
    o = bl.bouncer_client(ctx.loop, b, s, client="o")
    x = bl.bouncer_client(ctx.loop, b, s, client="x", wait=False)
    x.send("CAP REQ :extended-join away-notify")
    x.send("CAP END")
    bl.wait_attached(ctx.loop, x, s)
    # #mod is +n (inspircd's default modes +nt) and the session is not in
    # it: inspircd refuses the line with 404
    dave.send("JOIN #mod,#chat")
    ctx.loop.run_until(lambda: {"#mod", "#chat"} <= bl.joined_channels(dave, "dave"), 10,
                       "dave in #mod and #chat")
    # extended-join and away-notify (inspircd's ircv3 module) per client
    ctx.loop.run_until(lambda: lines_with(x, ":dave!") and lines_with(o, ":dave!"), 10,
                       "dave's JOIN")
    ej = [ln for ln in lines_with(x, " JOIN ") if ln.startswith(":dave!")]
    check(ej and ej[0].endswith("JOIN #chat * :direct dave"), "extended-join: %s" % ej)
    pj = [ln for ln in lines_with(o, " JOIN ") if ln.startswith(":dave!")]
    check(pj and " * " not in pj[0] and "direct" not in pj[0], "plain JOIN: %s" % pj)
    dave.send("AWAY :lunch")
    ctx.loop.run_until(lambda: lines_with(x, "AWAY :lunch"), 10, "away-notify")
    ma, mo, md = len(a.lines), len(o.lines), len(dave.lines)
    a.send("PRIVMSG #mod :refused-line")
    ctx.loop.run_until(lambda: lines_with(a, " 404 ", ma), 10, "404 for the refused line")
    a.send("PRIVMSG #chat :accepted-line")
    ctx.loop.run_until(lambda: lines_with(dave, "accepted-line", md) and
                       lines_with(o, "accepted-line", mo), 10, "the accepted line")
    e = bl.bouncer_client(ctx.loop, b, s, client="e", wait=False)
    e.send("CAP REQ :echo-message")
    e.send("CAP END")
    bl.wait_attached(ctx.loop, e, s)
    me = len(e.lines)
    e.send("PRIVMSG #chat :own-echo")
    ctx.loop.run_until(lambda: lines_with(e, "own-echo", me) and lines_with(a, "own-echo", ma),
                       10, "the echo of e's line")
    ctx.loop.run_for(0.5)
    check(not lines_with(o, "refused-line"), "a refused line reached another client")
    check(not lines_with(dave, "refused-line"), "inspircd did not refuse the line")
    check(not lines_with(a, "accepted-line", ma), "the sender without echo-message got its line")
    check(not lines_with(o, " AWAY "), "AWAY to a client without away-notify: %s" % lines_with(o, " AWAY "))
    check(len(lines_with(e, "own-echo", me)) == 1, "echo to e: %s" % lines_with(e, "own-echo", me))
    late = bl.bouncer_client(ctx.loop, b, s, client="late")
    ctx.loop.run_for(0.5)
    check(not lines_with(late, "refused-line"), "a refused line was stored")
    check(lines_with(late, "accepted-line"), "the accepted line was not stored: %s"
          % [ln for _, ln in late.lines[-8:]])


def test_message_tags_inspircd(ctx):
    """Bug: client message tags were dropped and the network's tags
    stripped. Against inspircd (message-tags, msgid, echo-message): a client
    with message-tags gets dave's line with inspircd's msgid, a client
    without gets it plain; a client-only tag sent with TAGMSG goes to the
    network and comes back (its echo) to the clients with message-tags only."""
    ins = Inspircd(ctx).start()
    dave = bl.direct_user(ctx.loop, ins, "dave")
    dave.send("JOIN #chat")  # inspircd takes no JOIN before registration
    ctx.loop.run_until(lambda: "#chat" in bl.joined_channels(dave, "dave"), 10, "dave in #chat")
    b = bl.Baton(ctx, ins, nsessions=1, channels=["#chat"])
    b.start(wait=False)
    bl.pump_ready(ctx, b)
    s = b.sessions[0]
    plain = bl.bouncer_client(ctx.loop, b, s, client="plain")
    tagged = []
    for name in ("t1", "t2"):
        t = bl.bouncer_client(ctx.loop, b, s, client=name, wait=False)
        t.send("CAP REQ :message-tags")
        t.send("CAP END")
        bl.wait_attached(ctx.loop, t, s)
        tagged.append(t)
    t1, t2 = tagged
    mp, m2 = len(plain.lines), len(t2.lines)
    dave.send("PRIVMSG #chat :from-dave")
    ctx.loop.run_until(lambda: lines_with(t2, "from-dave", m2) and lines_with(plain, "from-dave", mp),
                       10, "dave's line")
    got = lines_with(t2, "from-dave", m2)[0]
    check(got.startswith("@") and "msgid=" in got.split(" ", 1)[0],
          "no msgid for a client with message-tags: %r" % got)
    check(not lines_with(plain, "from-dave", mp)[0].startswith("@"),
          "tags to a client without message-tags: %r" % lines_with(plain, "from-dave", mp)[0])
    t1.send("@+typing=active TAGMSG #chat")
    # (inspircd sends the target as a trailing parameter: "TAGMSG :#chat")
    ctx.loop.run_until(lambda: lines_with(t2, " TAGMSG ", m2), 10, "the TAGMSG's echo")
    got = lines_with(t2, " TAGMSG ", m2)[0]
    check("+typing=active" in got.split(" ", 1)[0], "client-only tag lost: %r" % got)
    ctx.loop.run_for(0.3)
    check(not lines_with(plain, "TAGMSG"), "TAGMSG to a client without message-tags")


def test_client_prefix_and_spaces_against_ngircd(ctx):
    """Review: a client's source prefix and spaces before the command went
    to ngircd as the client framed them; ngircd dropped both lines without
    a word (baton had relayed and stored them as sent). Now they arrive,
    with the other oddities a client may send: a lone CR ending a line, a
    NUL byte, runs of spaces."""
    ng, w, b, dave = setup(ctx)
    c = bl.bouncer_client(ctx.loop, b, b.sessions[0], client="laptop")
    mark = len(w.events)
    c.send("   PRIVMSG #chat :leading spaces")
    c.send(":somebody!x@y PRIVMSG #chat :foreign prefix")
    c.send("PRIVMSG #chat :lone\rPRIVMSG #chat :after a lone cr")
    c.send("PRIVMSG #chat :nul\x00byte")
    c.send("PRIVMSG   #chat   :many spaces")
    c.send("PRIVMSG #chat :end marker")
    ctx.loop.run_until(lambda: lines_with(dave, "end marker"), 10, raise_on_timeout=False)
    ctx.loop.run_for(0.3)
    for text in ("leading spaces", "foreign prefix", ":lone", "after a lone cr",
                 ":nulbyte", "many spaces", "end marker"):
        check(len(lines_with(dave, text)) == 1, "dave got %r %d times: %s"
              % (text, len(lines_with(dave, text)), [ln for _, ln in dave.lines[-8:]]))
    ev = [e for e in w.events[mark:] if e[1] == "QUIT"]
    check(not ev, "the session left the network: %s" % ev)


def test_sasl_plain_client_login(ctx):
    """SASL PLAIN as a client login alongside PASS (issue 11 §2): CAP LS 302
    offers sasl=PLAIN; before CAP REQ sasl, AUTHENTICATE gets 904; another
    mechanism 908 + 904; a wrong password 904 and the connection stays (it
    may try again); the right one 900 + 903 and, after CAP END, NICK and
    USER, the session with the client name of the login; a message past
    1,024 bytes 905; AUTHENTICATE without a parameter 461; after
    registration 907, never sent to the network."""
    import base64
    ng, w, b, dave = setup(ctx)
    s = b.sessions[0]

    def auth(p, authcid, pw, authzid=""):
        raw = ("%s\0%s\0%s" % (authzid, authcid, pw)).encode()
        b64 = base64.b64encode(raw).decode()
        for i in range(0, len(b64), 400):
            p.send("AUTHENTICATE %s" % b64[i:i + 400])
        if len(b64) % 400 == 0:
            p.send("AUTHENTICATE +")

    p = ctx.loop.connect(b.port, name="sasl")
    p.send("CAP LS 302")
    ctx.loop.run_until(lambda: lines_with(p, " LS :"), 10, "CAP LS")
    check("sasl=PLAIN" in lines_with(p, " LS :")[0], "CAP LS 302: %s" % lines_with(p, " LS :"))
    p.send("AUTHENTICATE PLAIN")
    ctx.loop.run_until(lambda: lines_with(p, " 904 "), 10, "904 before CAP REQ sasl")
    p.send("CAP REQ :sasl")
    p.send("AUTHENTICATE")
    p.send("AUTHENTICATE SCRAM-SHA-256")
    ctx.loop.run_until(lambda: lines_with(p, " 908 "), 10, "908 for SCRAM")
    check(lines_with(p, " 461 "), "461 for AUTHENTICATE without a parameter")
    check(len(lines_with(p, " 904 ")) == 2, "904 after 908: %s" % lines_with(p, " 90"))
    p.send("AUTHENTICATE PLAIN")
    ctx.loop.run_until(lambda: lines_with(p, "AUTHENTICATE +"), 10, "AUTHENTICATE +")
    auth(p, "%s/%s@phone" % (s.user, s.network), "wrong")
    ctx.loop.run_until(lambda: len(lines_with(p, " 904 ")) == 3, 15, "904 for a wrong password")
    check(not p.closed, "closed after a failed SASL attempt")
    p.send("AUTHENTICATE PLAIN")
    ctx.loop.run_until(lambda: len(lines_with(p, "AUTHENTICATE +")) == 2, 10, "AUTHENTICATE + again")
    # a password long enough to need a second chunk ending in a full one
    auth(p, "%s/%s@phone" % (s.user, s.network), s.password)
    ctx.loop.run_until(lambda: lines_with(p, " 903 "), 15, "903")
    check(lines_with(p, " 900 "), "no 900 before 903")
    p.send("CAP END")
    p.send("NICK %s" % s.nick)
    p.send("USER x 0 * :sasl client")
    bl.wait_attached(ctx.loop, p, s)
    p.send("AUTHENTICATE PLAIN")
    ctx.loop.run_until(lambda: lines_with(p, " 907 "), 10, "907 after registration")
    dave.privmsg("#chat", "sasl check")
    ctx.loop.run_until(lambda: any("sasl check" in ln for _, ln in p.lines), 10, "relay to the SASL client")
    q = ctx.loop.connect(b.port, name="sasl-long")
    q.send("CAP REQ :sasl")
    q.send("AUTHENTICATE PLAIN")
    ctx.loop.run_until(lambda: lines_with(q, "AUTHENTICATE +"), 10, "AUTHENTICATE + (long)")
    auth(q, "%s/%s" % (s.user, s.network), "x" * 1100)
    ctx.loop.run_until(lambda: lines_with(q, " 905 "), 10, "905 past 1,024 bytes")


def test_query_replies_go_to_the_client_that_asked(ctx):
    """Bug (found running WeeChat through baton, test_clients): the
    network's replies to one client's query reached every client of the
    session: WeeChat's WHO and MODE on join filled the user's other
    clients with a WHO list and mode lines. Now WHO, NAMES, WHOIS (also
    of a nick that does not exist: 401 then 318), MODE #chan (324, 329)
    and TOPIC #chan (332, 333) answer only the client that asked; a
    channel message still reaches both."""
    ng, w, b, dave = setup(ctx)
    s = b.sessions[0]
    a = bl.bouncer_client(ctx.loop, b, s, client="asker")
    o = bl.bouncer_client(ctx.loop, b, s, client="other")
    dave.send("TOPIC #chat :a topic")
    ctx.loop.run_for(0.5)
    na, no = len(a.lines), len(o.lines)
    for q in ("WHO #chat", "NAMES #chat", "WHOIS dave", "WHOIS nosuchnick", "MODE #chat",
              "TOPIC #chat"):
        a.send(q)
    want = {" 315 ": "WHO end", " 366 ": "NAMES end", " 318 ": "WHOIS end",
            " 401 ": "no such nick", " 324 ": "MODE", " 332 ": "TOPIC"}
    ctx.loop.run_until(lambda: all(lines_with(a, k, na) for k in want), 10, "every reply to the asker")
    check(len(lines_with(a, " 318 ", na)) == 2, "two WHOIS ends: %s" % lines_with(a, " 318 ", na))
    dave.privmsg("#chat", "after the queries")
    ctx.loop.run_until(lambda: lines_with(o, "after the queries", no), 10, "the channel line to the other")
    leaked = [ln for _, ln in o.lines[no:] if re.search(r"^:\S+ (3\d\d|401) ", ln)]
    check(not leaked, "replies to the asker's queries reached the other client: %s" % leaked)
    check(lines_with(a, "after the queries", na), "the channel line to the asker")
