"""Clients people use through baton (issue 11 section 6): WeeChat (Debian's
weechat-headless, driven through its FIFO, read through its logger files
and its own data via /eval) and irssi (under tmux, autolog), against
ngircd: log in with PASS user/network@client:password, join, a channel line
from a direct ngircd user and one of their own, an upgrade and a rollback
with lines in flight that the client process never notices (its own logs
show no disconnect, the network sees no QUIT/JOIN of the bouncer nick),
the capabilities baton acknowledged as the client saw them, the nicklist
the client holds before, across and after the migrations, and a detach +
reattach that replays what the client missed exactly once, with its
server-time.

One bouncer user u000 (nick bn000) in #chat; a watcher (first in the
channel: operator) and a direct user 'dave'. About 25 s for both tests."""

import os
import re
import time

import batonlib as bl
import clientlib as cl
import tlslib as tl
from batonlib import check

CHAN = "#chat"
# baton's CAP LS (sessiond/client.c client_caps), in its order;
# draft/chathistory and draft/read-marker with the message store (the
# default)
OFFERED = ["server-time", "multi-prefix", "echo-message", "away-notify", "userhost-in-names",
           "message-tags", "account-notify", "extended-join", "chghost", "setname",
           "invite-notify", "sasl", "cap-notify", "batch", "soju.im/bouncer-networks",
           "soju.im/bouncer-networks-notify", "standard-replies", "draft/chathistory",
           "draft/read-marker", "labeled-response"]


def setup(ctx, tls=False):
    """ngircd, a watcher of bn000 (op of #chat), baton (with an ircs
    listener when tls: a throw-away PKI), dave. Returns (w, b, dave, pki)."""
    ctx.builds["b"].require()
    ng = ctx.ngircd()
    pki = tl.PKI(os.path.join(ctx.dir, "pki")).create() if tls else None
    b = bl.Baton(ctx, ng, nsessions=1, channels=[CHAN],
                 ircs=(pki.server.cert, pki.server.key) if pki else None)
    w = bl.Watcher(ctx.loop, ng, [CHAN], watch=[s.nick for s in b.sessions])
    b.start(wait=False)
    bl.pump_ready(ctx, b)
    w.wait_present([s.nick for s in b.sessions], timeout=30)
    dave = bl.direct_user(ctx.loop, ng, "dave", [CHAN])
    return w, b, dave, pki


class Peer:
    """One end of the numbered channel traffic: send(n) says its line n in
    #chat; tokens() what it has shown/received so far [(sender, n)], in
    order; sees_own: whether its own lines are among them."""

    def __init__(self, name, send, tokens, sees_own):
        self.name = name
        self._send = send
        self.tokens = tokens
        self.sees_own = sees_own
        self.sent = []

    def send(self, n):
        self._send("%s during the test" % bl.token(self.name, n))
        self.sent.append((self.name, n))


def dave_peer(dave):
    def tokens():
        out = []
        for m in dave.msgs("PRIVMSG"):
            if m.param(0, "").lower() == CHAN:
                out += bl.tokens(m.param(1, ""))
        return out
    return Peer("dave", lambda text: dave.privmsg(CHAN, text), tokens, sees_own=False)


def weechat_peer(name, wc):
    def tokens():
        out = []
        for ln in wc.chan_log(CHAN):
            out += bl.tokens(ln.text)
        return out
    return Peer(name, lambda text: wc.say(CHAN, text), tokens, sees_own=True)


def irssi_peer(name, irssi):
    def tokens():
        out = []
        for ln in irssi.log_text(CHAN).splitlines():
            out += bl.tokens(ln)
        return out
    return Peer(name, lambda text: irssi.send(text), tokens, sees_own=True)


def expected(peers, receiver):
    return [t for p in peers for t in p.sent if p is not receiver or receiver.sees_own]


def verify(ctx, peers, timeout=20, settle=0.8):
    """Every peer got every line meant for it exactly once, each sender's
    in order (pumping the loop until complete, then `settle` s more to
    catch duplicates)."""
    def complete():
        return all(set(expected(peers, p)) <= set(p.tokens()) for p in peers)
    ctx.loop.run_until(complete, timeout, raise_on_timeout=False)
    ctx.loop.run_for(settle)
    for p in peers:
        got = p.tokens()
        for q in peers:
            if q is p and not p.sees_own:
                continue
            want = q.sent
            sub = [t for t in got if t[0] == q.name]
            check(sub == want, "%s: %s's lines: want exactly %s in order, got %s"
                  % (p.name, q.name, want, sub))


def migrate(ctx, b, op, peers, base, every=0.05):
    """`batonctl upgrade <B>` or `rollback` while every peer sends its
    lines base+1, ... every `every` s; committed, old worker gone."""
    old = b.worker_pid()
    p = b.ctl_async("rollback", "--json") if op == "rollback" else \
        b.ctl_async("upgrade", ctx.builds["b"].sessiond, "--json")
    k = {"n": base}

    def tick():
        if p.poll() is not None:
            return False
        k["n"] += 1
        for q in peers:
            q.send(k["n"])
        return True
    for _ in range(3):   # a burst in flight as the sessions freeze
        tick()
    ctx.loop.every(every, tick)
    ctx.loop.wait_process(p, timeout=120)
    rc, res, out, err = b.finish_ctl(p)
    check(rc == 0 and isinstance(res, dict) and res.get("result") == "committed",
          "%s: exit %s, %s %s; log:\n%s" % (op, rc, res or out, err, b.log_tail(20)))
    ctx.loop.run_until(lambda: not bl.pid_alive(old), 10, "old worker %d to exit" % old)
    bl.log("%s committed: freeze %s ms, %d lines sent per peer meanwhile"
           % (op, res.get("freeze_ms"), k["n"] - base))


def check_network_saw_nothing(w, b, t0):
    evs = w.events_between(t0)
    check(not evs, "the network saw the bouncer nick come and go: %s" % [e[3] for e in evs])
    lost = [ln for ln in b.log_text().splitlines() if "connection lost" in ln]
    check(not lost, "baton lost its upstream: %s" % lost[:3])


# --------------------------------------------------------------------------
# WeeChat
# --------------------------------------------------------------------------

WEECHAT_TROUBLE = re.compile(r"(?i)disconnected from server|reconnect|connection lost|"
                             r"connection refused|lost connection|\bQUIT\b.*bn000")


def weechat_connections(wc):
    """The "connected to" lines of its server buffer."""
    return [ln for ln in wc.server_log() if re.search(r"\bconnected to \S+", ln.text)
            and "disconnected" not in ln.text]


def weechat_trouble(wc):
    """Why WeeChat would have seen a disconnect (None if it saw none)."""
    if not wc.alive():
        return "weechat exited (rc %s)" % wc.proc.returncode
    bad = [ln.raw for ln in wc.server_log() if WEECHAT_TROUBLE.search(ln.text)]
    if bad:
        return "server buffer: %s" % bad[:3]
    if len(weechat_connections(wc)) != 1:
        return "connected %d times: %s" % (len(weechat_connections(wc)),
                                           [ln.raw for ln in weechat_connections(wc)])
    joins = [ln.raw for ln in wc.chan_log(CHAN)
             if ln.prefix == "-->" and ln.text.startswith(wc.nick + " ")]
    if len(joins) != 1:
        return "joined %s %d times: %s" % (CHAN, len(joins), joins)
    return None


def test_weechat(ctx):
    """WeeChat 3.8 (weechat-headless) twice on one session: "wp" on the
    plain listener (client name weechat), "wt" over TLS on the ircs
    listener verifying baton's certificate (client name weechat-tls).
    Each: logs in with PASS, CAP LS 302 + REQ of every capability it knows
    that baton offers (the ACK and WeeChat's own "enabled" list agree with
    CAP LIST from baton, before and after the migrations), joins #chat,
    shows dave's lines, the other WeeChat's lines and its own exactly once
    in order (no duplicate of its own line: WeeChat 3.8 has no echo-message,
    baton sends it none); an upgrade and a rollback with all three sending
    every 150 ms: WeeChat's server buffer shows no disconnect, its channel
    one join of its nick, the network no QUIT/JOIN of bn000; WeeChat's
    nicklist (its own data, through /eval) is the same before and after and
    follows a MODE +v and a JOIN after them; wp /disconnects (QUIT: a
    detach), misses lines of dave and wt, /connects: each missed line
    appears once, stamped with its server-time (before the reconnection),
    and wp's nicklist after the burst equals wt's. Then a TOPIC, a /nick
    from wp and a reattach of wt: both hold the new nick as their own
    (wt from baton's 001, not from its config), the same nicklist and the
    topic."""
    w, b, dave, pki = setup(ctx, tls=True)
    s = b.sessions[0]
    t0 = bl.now()
    wp = cl.Weechat(ctx, b.port, s.nick, s.pass_line("weechat"), channels=[CHAN],
                    name="weechat", user=s.user).start(wait=False)
    wt = cl.Weechat(ctx, b.tls_port, s.nick, s.pass_line("weechat-tls"), channels=[CHAN],
                    tls=True, ca=pki.ca_cert, name="weechat-tls", user=s.user).start(wait=False)
    for wc in (wp, wt):
        wc.wait_log("core.weechat", "fifo", timeout=20, loop=ctx.loop)
        wc.wait_joined(timeout=20, loop=ctx.loop)

    # capabilities: what baton offered, what WeeChat enabled, what baton
    # says it enabled (CAP LIST, answered into the server buffer)
    # (WeeChat 3.8 knows batch but does not ask for it: seen with baton
    # offering it)
    want_enabled = (set(OFFERED) & cl.WEECHAT_38_CAPS) - {"batch"}
    for wc in (wp, wt):
        offered, enabled = wc.caps()
        offered = {x.split("=", 1)[0] for x in offered}  # sasl=PLAIN (CAP 302)
        check(offered == set(OFFERED), "%s: baton offered %s, want %s"
              % (wc.dir, offered, OFFERED))
        check(enabled == want_enabled, "%s: WeeChat enabled %s, want %s"
              % (wc.dir, enabled, sorted(want_enabled)))

    def cap_list(wc):
        n = len(wc.server_log())
        wc.command("/cap list")
        ln = wc.wait_log("irc.server.baton",
                         lambda raw: "currently enabled" in raw
                         and raw in [x.raw for x in wc.server_log()[n:]], loop=ctx.loop)
        return set(ln.text.split("currently enabled:", 1)[1].split())

    for wc in (wp, wt):
        check(cap_list(wc) == want_enabled, "CAP LIST from baton: %s" % cap_list(wc))

    # one line each way, then the nicklist WeeChat holds
    pd, pp, pt = dave_peer(dave), weechat_peer("wp", wp), weechat_peer("wt", wt)
    peers = [pd, pp, pt]
    for q in peers:
        q.send(1)
    verify(ctx, peers)
    want_nicks = sorted(["@watcher", s.nick, "dave"])
    for wc in (wp, wt):
        check(wc.nicklist(CHAN, loop=ctx.loop) == want_nicks,
              "nicklist %s, want %s" % (wc.nicklist(CHAN, loop=ctx.loop), want_nicks))

    for i, op in enumerate(("upgrade", "rollback")):
        migrate(ctx, b, op, peers, base=100 * (i + 1))
        for q in peers:
            q.send(100 * (i + 1) + 99)
        verify(ctx, peers)
        for wc in (wp, wt):
            trouble = weechat_trouble(wc)
            check(trouble is None, "%s after the %s: %s" % (wc.dir, op, trouble))
            got = wc.nicklist(CHAN, loop=ctx.loop)
            check(got == want_nicks, "nicklist after the %s: %s, want %s" % (op, got, want_nicks))
            check(cap_list(wc) == want_enabled, "CAP LIST after the %s" % op)
    check_network_saw_nothing(w, b, t0)

    # the nicklist keeps following the channel
    w.conn.send("MODE %s +v dave" % CHAN)
    erin = bl.direct_user(ctx.loop, b.ngircd, "erin", [CHAN])
    want_nicks = sorted(["@watcher", s.nick, "+dave", "erin"])
    for wc in (wp, wt):
        ctx.loop.run_until(lambda: wc.nicklist(CHAN, loop=ctx.loop) == want_nicks, 10,
                           raise_on_timeout=False)
        check(wc.nicklist(CHAN, loop=ctx.loop) == want_nicks,
              "nicklist after MODE +v and a JOIN: %s, want %s"
              % (wc.nicklist(CHAN, loop=ctx.loop), want_nicks))

    # detach wp (/disconnect sends QUIT), lines it misses, reattach
    who_lists = len([ln for ln in wt.server_log() if "End of WHO list" in ln.text])
    wp.command("/disconnect")
    wp.wait_log("irc.server.baton", "disconnected from server", loop=ctx.loop)
    missed_from = {q.name: len(q.sent) for q in peers}
    for n in (2001, 2002, 2003):
        pd.send(n)
    pt.send(2004)
    dave.privmsg(s.nick, "%s private, while wp is away" % bl.token("davepm", 1))
    live = [pd, pt]
    ctx.loop.run_until(lambda: all(set(expected(live, p)) <= set(p.tokens()) for p in live),
                       10, "the session getting the lines wp misses")
    t_missed = time.time()
    ctx.loop.run_for(1.2)   # server-time of the missed lines a whole second earlier
    wp.command("/connect %s" % wp.SERVER)
    ctx.loop.run_until(lambda: len(weechat_connections(wp)) == 2, 15, "wp reconnecting")
    verify(ctx, peers)
    missed = [t for q in (pd, pt) for t in q.sent[missed_from[q.name]:]]
    reconnected = weechat_connections(wp)[-1].epoch()
    for ln in wp.chan_log(CHAN):
        for t in bl.tokens(ln.text):
            if t in missed:
                check(ln.epoch() is not None and ln.epoch() <= t_missed
                      and ln.epoch() < reconnected,
                      "replayed %s logged at %s, not at its server-time (before %s): %r"
                      % (t, ln.date and time.strftime("%H:%M:%S", ln.date),
                         time.strftime("%H:%M:%S", time.localtime(reconnected)), ln.raw))
    # the private line: a query buffer "dave" in both, once
    for wc in (wp, wt):
        wc.wait_log(wc.buffer_name("dave"), "<<davepm:1>>", loop=ctx.loop)
        ctx.loop.run_for(0.3)
        n = sum(bl.tokens(ln.text).count(("davepm", 1)) for ln in wc.log(wc.buffer_name("dave")))
        check(n == 1, "%s: dave's private line %d times in the query buffer" % (wc.dir, n))
    got = wp.nicklist(CHAN, loop=ctx.loop)
    check(got == want_nicks and got == wt.nicklist(CHAN, loop=ctx.loop),
          "wp's nicklist after reattaching: %s, want %s" % (got, want_nicks))
    check(weechat_trouble(wt) is None, "wt: %s" % weechat_trouble(wt))
    # the control: the same instrument sees wp's own disconnect
    check(weechat_trouble(wp) is not None, "wp's /disconnect went unseen by weechat_trouble")
    check_network_saw_nothing(w, b, t0)
    # Regression (found by this test): the network's replies to one
    # client's query reached every client of the session. WeeChat sends
    # "MODE #chat" and (with away-notify) "WHO #chat" whenever it joins and
    # hides the replies it asked for; wt, attached throughout, showed wp's:
    # a WHO list in its server buffer and "Mode #chat [+]" + "Channel
    # created on ..." in #chat each time wp connected. Now the replies go
    # to the client that asked (sessiond/session.h session_reply_route()).
    ctx.loop.run_for(0.3)
    check(len([ln for ln in wt.server_log() if "End of WHO list" in ln.text]) == who_lists,
          "wt's server buffer: %d WHO lists before wp reattached, now %d: wp's WHO reached wt"
          % (who_lists, len([ln for ln in wt.server_log() if "End of WHO list" in ln.text])))

    # a topic and a nick change from one WeeChat, then the other
    # reattaches: its own nick comes from baton's 001 (not its config)
    w.conn.send("TOPIC %s :baton topic one" % CHAN)
    wp.command("/nick bnx", buffer=wp.buffer_name(CHAN))
    srv = "${irc_server[irc_servers]"
    for wc in (wp, wt):
        ctx.loop.run_until(lambda: wc.query("%s.nick}" % srv, loop=ctx.loop) == "bnx", 10,
                           raise_on_timeout=False)
    wt.command("/disconnect")
    wt.wait_log("irc.server.baton", "disconnected from server", loop=ctx.loop)
    wt.command("/connect %s" % wt.SERVER)
    ctx.loop.run_until(lambda: len(weechat_connections(wt)) == 2, 15, "wt reconnecting")
    want_nicks = sorted(["@watcher", "bnx", "+dave", "erin"])
    for wc in (wp, wt):
        ctx.loop.run_until(lambda: wc.nicklist(CHAN, loop=ctx.loop) == want_nicks, 10,
                           raise_on_timeout=False)
        check(wc.query("%s.nick}" % srv, loop=ctx.loop) == "bnx",
              "%s: own nick %r after the NICK (and a reattach)"
              % (wc.dir, wc.query("%s.nick}" % srv, loop=ctx.loop)))
        check(wc.nicklist(CHAN, loop=ctx.loop) == want_nicks, "%s: nicklist %s, want %s"
              % (wc.dir, wc.nicklist(CHAN, loop=ctx.loop), want_nicks))
        topic = wc.query("%s.channels.topic}" % srv, loop=ctx.loop)
        check(topic == "baton topic one", "%s: topic %r" % (wc.dir, topic))
    erin.quit()


# --------------------------------------------------------------------------
# irssi
# --------------------------------------------------------------------------

IRSSI_TROUBLE = re.compile(r".*(Connection lost|Disconnected|Connection closed|Unable to connect|"
                           r"Reconnecting|Looking up).*")


def irssi_read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def irssi_names(ctx, irssi):
    """The nicklist irssi holds for #chat: /names on a channel it is on
    prints its own list (no NAMES query), into the channel's log:
    "[Users #chat]", "[@watcher] [ bn000] ...", "Total of N nicks"."""
    before = irssi.log_text(CHAN).count("Total of")
    irssi.send("/names")
    ctx.loop.run_until(lambda: irssi.log_text(CHAN).count("Total of") > before, 10,
                       "irssi printing /names")
    text = irssi.log_text(CHAN)
    block = text[text.rfind("[Users %s]" % CHAN):text.rfind("Total of")]
    return sorted((p.strip() + n) for p, n in re.findall(r"\[([@%+ ]?)([^\]\s]+)\s*\]",
                                                         block.split("\n", 1)[-1]))


def irssi_caps(path):
    """(requested, acknowledged, refused) from an irssi rawlog file
    ("<< " what irssi sent, ">> " what it received)."""
    req, ack, nak = set(), set(), set()
    for ln in irssi_read(path).splitlines():
        m = re.search(r"CAP REQ :(.*)$", ln)
        if m and ln.startswith("<<"):
            req |= set(m.group(1).split())
        m = re.search(r" CAP \S+ (ACK|NAK) :(.*)$", ln)
        if m and ln.startswith(">>"):
            (ack if m.group(1) == "ACK" else nak).update(m.group(2).split())
    return req, ack, nak


def test_irssi(ctx):
    """irssi 1.4 on the plain listener (client name irssi): its CAP REQ
    (from its rawlog) ACKed in full, nothing NAKed, all of it offered; it
    joins #chat and shows dave's line and its own once; an upgrade and a
    rollback with dave and irssi sending every 150 ms: every line exactly
    once in order at both ends, irssi's windows show no disconnect and one
    join of its nick, the network no QUIT/JOIN of bn000; its nicklist
    (/names on a joined channel is irssi's own list) is the same before and
    after and follows a MODE +v; /disconnect (a detach) and /connect: the
    lines it missed appear once, and its nicklist is the same again."""
    w, b, dave, _ = setup(ctx)
    s = b.sessions[0]
    t0 = bl.now()
    irssi = tl.IrssiTmux(ctx, None, b.port, nick=s.nick, password=s.pass_line("irssi"),
                         channels=[CHAN], tls=False).start()
    irssi.wait_log(CHAN, re.compile(r"-!- %s .* has joined" % re.escape(s.nick)), timeout=20)
    all_log = os.path.join(irssi.dir, "all.log")
    raw = os.path.join(irssi.dir, "raw.log")
    irssi.send("/log open %s ALL" % all_log)
    irssi.send("/rawlog save %s" % raw)
    irssi.send("/window goto %s" % CHAN)
    ctx.loop.run_until(lambda: os.path.exists(raw), 10, "irssi's rawlog")
    req, ack, nak = irssi_caps(raw)
    bl.log("irssi requested %s" % sorted(req))
    check(req and ack == req and not nak and req <= set(OFFERED),
          "irssi CAP: requested %s, ACK %s, NAK %s (offered %s)" % (req, ack, nak, OFFERED))

    def trouble():
        if not irssi.alive():
            return "irssi/tmux is gone"
        m = IRSSI_TROUBLE.search(irssi_read(all_log))
        if m:
            return m.group(0)
        joins = [ln for ln in irssi.log_text(CHAN).splitlines()
                 if re.search(r"-!- %s .* has joined" % re.escape(s.nick), ln)]
        return "joined %s %d times: %s" % (CHAN, len(joins), joins) if len(joins) != 1 else None

    pd, pi = dave_peer(dave), irssi_peer("irssi", irssi)
    peers = [pd, pi]
    for q in peers:
        q.send(1)
    verify(ctx, peers)
    want_nicks = sorted(["@watcher", s.nick, "dave"])
    check(irssi_names(ctx, irssi) == want_nicks,
          "irssi's nicklist %s, want %s" % (irssi_names(ctx, irssi), want_nicks))
    for i, op in enumerate(("upgrade", "rollback")):
        migrate(ctx, b, op, peers, base=100 * (i + 1))
        for q in peers:
            q.send(100 * (i + 1) + 99)
        verify(ctx, peers)
        check(trouble() is None, "irssi after the %s: %s" % (op, trouble()))
        got = irssi_names(ctx, irssi)
        check(got == want_nicks, "irssi's nicklist after the %s: %s" % (op, got))
    check_network_saw_nothing(w, b, t0)
    w.conn.send("MODE %s +v dave" % CHAN)
    want_nicks = sorted(["@watcher", s.nick, "+dave"])
    ctx.loop.run_until(lambda: "+v dave" in irssi.log_text(CHAN), 10, "irssi seeing +v")
    check(irssi_names(ctx, irssi) == want_nicks, "irssi's nicklist after +v: %s"
          % irssi_names(ctx, irssi))

    # detach and reattach
    irssi.send("/disconnect")
    # its channel's autolog closes when irssi leaves the server
    ctx.loop.run_until(lambda: "Log closed" in irssi.log_text(CHAN), 10,
                       "irssi closing #chat after /disconnect")
    missed_from = len(pd.sent)
    for n in (2001, 2002, 2003):
        pd.send(n)
    ctx.loop.run_for(0.5)
    irssi.send("/connect test")
    ctx.loop.run_until(lambda: len(re.findall(r"-!- %s .* has joined" % re.escape(s.nick),
                                              irssi.log_text(CHAN))) == 2, 15,
                       "irssi rejoining")
    verify(ctx, peers)
    bl.log("irssi got %s after reattaching" % pd.sent[missed_from:])
    check(irssi_names(ctx, irssi) == want_nicks, "irssi's nicklist after reattaching: %s"
          % irssi_names(ctx, irssi))
    # the control: the same instrument sees irssi's own disconnect
    check(trouble() is not None, "irssi's /disconnect went unseen by trouble()")
    check_network_saw_nothing(w, b, t0)
