"""A scripted IRCv3 client through baton against ngircd (issue 11 section
6), in the standard library: CAP 302 negotiation, cap-notify, server-time
on live and on replayed lines, message-tags, echo-message; and what is not
offered yet, asserted as it is (a test-skip would hide it): bouncer-networks
is neither in CAP LS nor answered by baton (the command goes to the network,
which does not know it either). CHATHISTORY, batch and read markers (with
the message store) are tested in test_store.py.

One bouncer user u000 (nick bn000) in #chat, a watcher of its QUITs and a
direct ngircd user 'dave'. A few seconds."""

import calendar
import re
import time

import batonlib as bl
from batonlib import check

CHAN = "#chat"
# baton's CAP LS (sessiond/client.c client_caps), in its order
OFFERED = ["server-time", "multi-prefix", "echo-message", "away-notify", "userhost-in-names",
           "message-tags", "account-notify", "extended-join", "chghost", "setname",
           "invite-notify", "sasl", "cap-notify", "batch", "soju.im/bouncer-networks",
           "soju.im/bouncer-networks-notify", "standard-replies", "draft/chathistory",
           "draft/read-marker", "labeled-response"]
# What issue 11 asks for and baton does not implement yet: never in CAP LS
# (advertising what is not implemented is worse than not advertising).
# (draft/chathistory and draft/read-marker are offered with the message
# store, the default: test_store.py tests them.)
NOT_YET = ["chathistory", "soju.im/read", "draft/bouncer-networks",
           "draft/event-playback",
           "draft/multiline", "soju.im/no-implicit-names"]
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def setup(ctx):
    ng = ctx.ngircd()
    b = bl.Baton(ctx, ng, nsessions=1, channels=[CHAN])
    w = bl.Watcher(ctx.loop, ng, [CHAN], watch=[s.nick for s in b.sessions])
    b.start(wait=False)
    bl.pump_ready(ctx, b)
    w.wait_present([s.nick for s in b.sessions], timeout=30)
    dave = bl.direct_user(ctx.loop, ng, "dave", [CHAN])
    return w, b, dave


def tag_dict(tags):
    out = {}
    for t in (tags or "").split(";"):
        if t:
            k, _, v = t.partition("=")
            out[k] = v
    return out


def server_time(m):
    """The @time of a Msg as epoch seconds (None without)."""
    v = tag_dict(m.tags).get("time")
    if v is None:
        return None
    check(TIME_RE.match(v), "@time=%r is not YYYY-MM-DDThh:mm:ss.sssZ" % v)
    return calendar.timegm(time.strptime(v[:19], "%Y-%m-%dT%H:%M:%S")) + int(v[20:23]) / 1000.0


def cap_lines(c, sub, since=0):
    return [m for m in c.msgs("CAP", since) if m.param(1, "").upper() == sub]


def wait_cap(ctx, c, sub, since, what):
    ctx.loop.run_until(lambda: cap_lines(c, sub, since) or c.closed, 5, what)
    check(not c.closed, "%s: connection closed (%s)" % (what, c.close_reason))
    return cap_lines(c, sub, since)[0]


def negotiate(ctx, b, s, client, caps):
    """A client that negotiates `caps` (CAP LS 302, REQ, END) and attaches."""
    c = ctx.loop.connect(b.port, name="ircv3:%s" % client)
    c.send_many(["CAP LS 302", "PASS %s" % s.pass_line(client), "NICK %s" % s.nick,
                 "USER %s 0 * :ircv3 test" % s.user])
    wait_cap(ctx, c, "LS", 0, "CAP LS")
    if caps:
        n = len(c.lines)
        c.send("CAP REQ :%s" % " ".join(caps))
        m = wait_cap(ctx, c, "ACK", n, "CAP ACK of %s" % caps)
        check(m.params[-1].split() == list(caps), "ACK %r for REQ %s" % (m.params[-1], caps))
    c.send("CAP END")
    bl.wait_attached(ctx.loop, c, s)
    return c


def privmsgs(c, since=0):
    return [m for m in c.msgs("PRIVMSG", since) if bl.tokens(m.param(1, ""))]


def test_ircv3_cap_negotiation(ctx):
    """CAP LS 302 before registration: exactly baton's capabilities, only
    `sasl` with a value (`sasl=PLAIN`: its one mechanism), none of NOT_YET;
    CAP LS 302 enables cap-notify (listed at once, `-cap-notify` NAKed: it
    cannot be turned off), and baton sends no CAP NEW/DEL (its offer
    does not depend on the network; only the store's caps come and go with
    the store: test_store.py); registration waits for CAP END (no
    001 before); a REQ with one unknown name is NAKed as a whole and
    changes nothing; a REQ of
    known ones is ACKed with the same list, `-name` removes; CAP LIST says
    what is enabled, also after registration and after an upgrade and a
    rollback (the capabilities travel with the client); no CAP NEW/DEL at
    any time. BOUNCER from a client without soju.im/bouncer-networks is not
    baton's: it reaches the network, whose 421 comes back, and the session
    stays (CHATHISTORY and MARKREAD are baton's: test_store.py)."""
    w, b, dave = setup(ctx)
    s = b.sessions[0]
    t0 = bl.now()
    c = ctx.loop.connect(b.port, name="ircv3:cap")
    c.send_many(["CAP LS 302", "PASS %s" % s.pass_line("capper"), "NICK %s" % s.nick,
                 "USER %s 0 * :ircv3 test" % s.user])
    ls = wait_cap(ctx, c, "LS", 0, "CAP LS 302")
    offered = [x.split("=", 1)[0] for x in ls.params[-1].split()]
    check(offered == OFFERED, "CAP LS: %s, want %s" % (offered, OFFERED))
    check([x for x in ls.params[-1].split() if "=" in x] == ["sasl=PLAIN"],
          "values in CAP LS: %s" % ls.params[-1])
    # one line (302 would allow "CAP * LS * :..." continuation lines)
    check(len(cap_lines(c, "LS")) == 1 and ls.param(2) != "*", "multi-line LS: %s" % ls)
    for name in NOT_YET:
        check(name not in offered, "%s is offered but not implemented" % name)
    ctx.loop.run_for(0.5)
    check(not c.registered, "001 before CAP END")

    n = len(c.lines)
    c.send("CAP REQ :server-time soju.im/read message-tags")
    nak = wait_cap(ctx, c, "NAK", n, "NAK of a REQ with an unknown name")
    check(nak.params[-1] == "server-time soju.im/read message-tags", "NAK %s" % nak)
    n = len(c.lines)
    c.send("CAP LIST")
    lst = wait_cap(ctx, c, "LIST", n, "CAP LIST")
    check(lst.params[-1].split() == ["cap-notify"],
          "after a NAK, CAP LIST %s (want cap-notify only: CAP LS 302)" % lst)

    for name in ("draft/event-playback", "-cap-notify"):
        n = len(c.lines)
        c.send("CAP REQ %s" % name)
        wait_cap(ctx, c, "NAK", n, "NAK of %s" % name)

    want = ["server-time", "echo-message", "message-tags", "multi-prefix"]
    n = len(c.lines)
    c.send("CAP REQ :%s" % " ".join(want))
    ack = wait_cap(ctx, c, "ACK", n, "ACK")
    check(ack.params[-1].split() == want, "ACK %s" % ack)
    n = len(c.lines)
    c.send("CAP REQ :-multi-prefix")
    wait_cap(ctx, c, "ACK", n, "ACK of -multi-prefix")
    want = ["server-time", "echo-message", "message-tags", "cap-notify"]

    def listed():
        n = len(c.lines)
        c.send("CAP LIST")
        return wait_cap(ctx, c, "LIST", n, "CAP LIST").params[-1].split()
    check(sorted(listed()) == sorted(want), "CAP LIST %s, want %s" % (listed(), want))
    ctx.loop.run_for(0.3)
    check(not c.registered, "001 before CAP END (after REQs)")
    c.send("CAP END")
    bl.wait_attached(ctx.loop, c, s)
    check(sorted(listed()) == sorted(want), "CAP LIST once registered: %s" % listed())
    n = len(c.lines)
    c.send("CAP LS 302")
    check([x.split("=", 1)[0] for x in
           wait_cap(ctx, c, "LS", n, "CAP LS once registered").params[-1].split()] == OFFERED,
          "CAP LS once registered")

    for op in ("upgrade", "rollback"):
        rc, res = b.upgrade(ctx.builds["b"].require()) if op == "upgrade" else b.rollback()
        check(rc == 0 and res.get("result") == "committed", "%s: %s" % (op, res))
        check(sorted(listed()) == sorted(want), "CAP LIST after the %s: %s" % (op, listed()))
        # the capabilities still act: server-time on a live line
        n = len(c.lines)
        dave.privmsg(CHAN, "%s after the %s" % (bl.token("dave", 1 if op == "upgrade" else 2), op))
        ctx.loop.run_until(lambda: privmsgs(c, n), 10, "dave's line after the %s" % op)
        check(server_time(privmsgs(c, n)[0]) is not None, "no @time after the %s" % op)
    check(not [m for m in c.msgs("CAP") if m.param(1, "").upper() in ("NEW", "DEL")],
          "CAP NEW/DEL sent: %s" % [m.raw for m in c.msgs("CAP")
                                    if m.param(1, "").upper() in ("NEW", "DEL")])

    # Not implemented yet (issue 11 section 2): baton forwards these like
    # any unknown command, and ngircd answers 421. When baton implements
    # them, this changes (and their capabilities appear in CAP LS above).
    for cmd in ("BOUNCER LISTNETWORKS",):
        n = len(c.lines)
        c.send(cmd)
        word = cmd.split()[0]
        ctx.loop.run_until(lambda: [m for m in c.msgs("421", n) if m.param(1) == word], 5,
                           "421 for %s" % word)
        m = [m for m in c.msgs("421", n) if m.param(1) == word][0]
        check(m.prefix == b.ngircd.name, "421 for %s from %s, want the network (%s)"
              % (word, m.prefix, b.ngircd.name))
        check(not c.msgs("BATCH", n), "a BATCH for %s" % word)
    check(not c.closed, "client closed: %s" % c.close_reason)
    evs = w.events_between(t0)
    check(not evs, "the network saw bn000 come and go: %s" % [e[3] for e in evs])


def test_ircv3_tags_echo_replay(ctx):
    """Three clients of one session: 'v3' with server-time, message-tags
    and echo-message; 'st' with server-time only; 'plain' with none.
    A line of dave's: @time (ISO 8601, ms, Z, within 5 s of now) for v3
    and st, no tags for plain. v3's PRIVMSG with a client-only tag
    (+draft/reply) reaches dave untagged (ngircd has no message-tags) and
    comes back to v3 once as an echo (@time), to st and plain once, and
    never twice; plain's line reaches v3 and st once and is not echoed to
    plain. v3's TAGMSG (+typing) goes nowhere (ngircd cannot take it) and
    draws no error. Detach v3 and st, dave sends 3 lines, 1.2 s later they
    reattach: each gets the 3 lines exactly once after its JOIN, @time on
    each = when baton received it (not the replay time); plain, attached
    throughout, gets no replay. The replayed lines keep no network tags (the
    backlog keeps none); v3's carry baton's msgid."""
    w, b, dave = setup(ctx)
    s = b.sessions[0]
    v3 = negotiate(ctx, b, s, "v3", ["server-time", "message-tags", "echo-message"])
    st = negotiate(ctx, b, s, "st", ["server-time"])
    plain = negotiate(ctx, b, s, "plain", [])
    conns = {"v3": v3, "st": st, "plain": plain}
    marks = {k: len(c.lines) for k, c in conns.items()}
    dave_mark = len(dave.lines)

    def got(name, tok):
        return [m for m in privmsgs(conns[name], marks[name]) if tok in bl.tokens(m.params[-1])]

    t_sent = time.time()
    dave.privmsg(CHAN, "%s live" % bl.token("dave", 1))
    ctx.loop.run_until(lambda: all(got(k, ("dave", 1)) for k in conns), 10, "dave:1 everywhere")
    for k in ("v3", "st"):
        t = server_time(got(k, ("dave", 1))[0])
        check(t is not None and abs(t - t_sent) < 5, "%s: @time %s for a line sent at %.3f"
              % (k, t, t_sent))
    check(got("plain", ("dave", 1))[0].tags is None, "tags to a client without caps: %s"
          % got("plain", ("dave", 1))[0].raw)
    # ngircd has no msgid: the one v3 gets is baton's (its message store's,
    # sessiond/history.h: "<8 hex>-<16 hex>")
    check(re.match(r"^[0-9a-f]{8}-[0-9a-f]{16}$",
                   tag_dict(got("v3", ("dave", 1))[0].tags).get("msgid", "")),
          "v3's line has no msgid of baton's: %r" % got("v3", ("dave", 1))[0].tags)

    v3.send("@+draft/reply=abc PRIVMSG %s :%s from v3" % (CHAN, bl.token("v3", 1)))
    plain.privmsg(CHAN, "%s from plain" % bl.token("plain", 1))
    v3.send("@+typing=active TAGMSG %s" % CHAN)
    ctx.loop.run_until(lambda: got("st", ("v3", 1)) and got("v3", ("plain", 1))
                       and got("st", ("plain", 1)) and got("v3", ("v3", 1)), 10,
                       "the lines of v3 and plain")
    ctx.loop.run_until(lambda: len([1 for _, ln in dave.lines[dave_mark:]
                                    if bl.tokens(ln)]) >= 2, 10, "dave receiving both")
    ctx.loop.run_for(0.7)
    for k, tok, want in (("v3", ("v3", 1), 1), ("st", ("v3", 1), 1), ("plain", ("v3", 1), 1),
                         ("v3", ("plain", 1), 1), ("st", ("plain", 1), 1),
                         ("plain", ("plain", 1), 0)):
        check(len(got(k, tok)) == want, "%s got %s %d times (want %d)"
              % (k, tok, len(got(k, tok)), want))
    echo = got("v3", ("v3", 1))[0]
    check(server_time(echo) is not None and echo.nick == s.nick,
          "v3's echo %r (want @time and its own nick)" % echo.raw)
    at_dave = [ln for _, ln in dave.lines[dave_mark:] if ("v3", 1) in bl.tokens(ln)]
    check(len(at_dave) == 1 and not at_dave[0].startswith("@"),
          "dave got v3's line as %s (want once, untagged: ngircd has no message-tags)" % at_dave)
    tagmsgs = [ln for _, ln in dave.lines[dave_mark:] if "TAGMSG" in ln] + \
        [ln for c in (st, plain, v3) for _, ln in c.lines if " TAGMSG " in ln]
    check(not tagmsgs, "a TAGMSG went somewhere: %s" % tagmsgs)
    errs = [m.raw for m in v3.msgs(None, marks["v3"]) if m.command in ("421", "417", "FAIL")]
    check(not errs, "v3 got errors: %s" % errs)

    # replay: v3 and st detach, miss three lines, come back 1.2 s later
    for c in (v3, st):
        c.quit("detach")
    ctx.loop.run_until(lambda: v3.closed and st.closed, 5, "v3 and st closed after QUIT")
    pm = len(plain.lines)
    sent_at = {}
    for n in (10, 11, 12):
        sent_at[n] = time.time()
        dave.privmsg(CHAN, "%s missed" % bl.token("dave", n))
        ctx.loop.run_for(0.1)
    missed = [("dave", n) for n in (10, 11, 12)]
    ctx.loop.run_until(lambda: [t for m in privmsgs(plain, pm) for t in bl.tokens(m.params[-1])]
                       == missed, 10, "plain getting the lines live")
    ctx.loop.run_for(1.2)
    t_back = time.time()
    for name, caps in (("v3", ["server-time", "message-tags", "echo-message"]),
                       ("st", ["server-time"])):
        c = negotiate(ctx, b, s, name, caps)
        ctx.loop.run_until(lambda: len(privmsgs(c)) >= 3, 10, "%s replay" % name)
        ctx.loop.run_for(0.5)
        rep = privmsgs(c)
        toks = [t for m in rep for t in bl.tokens(m.params[-1])]
        check(toks == missed, "%s replay: %s, want exactly %s" % (name, toks, missed))
        last_join = max(i for i, (_, ln) in enumerate(c.lines) if bl.parse(ln).command == "JOIN")
        first = min(i for i, (_, ln) in enumerate(c.lines) if bl.tokens(ln))
        check(first > last_join, "%s: replay before the JOIN burst" % name)
        for m, (_, n) in zip(rep, missed):
            t = server_time(m)
            check(t is not None and abs(t - sent_at[n]) < 0.5 and t < t_back - 1.0,
                  "%s: replayed dave:%d has @time %s; sent at %.3f, replayed after %.3f"
                  % (name, n, t, sent_at[n], t_back))
            want_tags = {"time", "msgid"} if "message-tags" in caps else {"time"}
            check(set(tag_dict(m.tags)) == want_tags, "%s: replayed line's tags %r (the "
                  "backlog keeps none but the time, and the msgid with message-tags)"
                  % (name, m.tags))
    ctx.loop.run_for(0.3)
    check([t for m in privmsgs(plain, pm) for t in bl.tokens(m.params[-1])] == missed,
          "plain got a replay too: %s" % [m.raw for m in privmsgs(plain, pm)])


def baton_notices(c, since=0):
    """The texts of the NOTICEs from *baton (sessiond/service.c)."""
    return [m.params[-1] for m in c.msgs("NOTICE", since) if m.nick == "*baton"]


def ask_service(ctx, c, text, want, timeout=5):
    """PRIVMSG *baton :text; waits for a NOTICE of *baton containing want
    (a substring) and returns every *baton NOTICE since."""
    n = len(c.lines)
    c.send("PRIVMSG *baton :%s" % text)
    ctx.loop.run_until(lambda: any(want in t for t in baton_notices(c, n)) or c.closed,
                       timeout, "*baton answering %r with %r" % (text, want))
    check(not c.closed, "client closed: %s" % c.close_reason)
    return baton_notices(c, n)


def setup_service(ctx, level):
    """A baton whose file has a second [network net2] (the same ngircd) and
    [supervisor] user_networks = level."""
    ng = ctx.ngircd()
    b = bl.Baton(ctx, ng, nsessions=1, channels=[CHAN],
                 supervisor_opts={"user_networks": level})
    b.write_config(b.config_text() + "[network net2]\nhost = 127.0.0.1\nport = %d\n"
                   "connects_per_minute = 6000\nconnect_burst = 10000\n" % ng.port)
    b.start(wait=False)
    bl.pump_ready(ctx, b)
    return ng, b


def test_ircv3_service(ctx):
    """`/msg *baton` (sessiond/service.c), with [supervisor] user_networks =
    add: help names the commands and what the operator allows; `network
    list` shows the user's sessions and their state; `network add net2
    nick=...` goes through the supervisor (control channel NETWORK_EDIT),
    which edits the file in place (its first comment line kept) and
    reloads: the new session connects (a client logs in to it) and the
    list shows it; `network set` changes a key in the file; `network del`
    removes the section and the session says goodbye to the network.
    Refused clearly, nothing changed: a key a user may not set
    (password), an unknown [network], a 65-byte name, 17 words, a
    KEY=VALUE of 191 bytes, an unknown command. A realname change is told as
    applied at the next connection (not "now"). A change the operator made
    in the file without reloading it refuses users' edits until it is
    undone (or loaded). `PRIVMSG #chan,*baton` is refused whole. Nothing of
    it reaches the network (no 401 for *baton). Then the operator sets user_networks =
    list in the file: add and set are refused (read from the file at each
    edit, no reload needed; a reload lists it as changed, not "later"),
    list still answers."""
    ng, b = setup_service(ctx, "add")
    s = b.sessions[0]
    c = bl.bouncer_client(ctx.loop, b, s)
    dave = bl.direct_user(ctx.loop, ng, "dave", [CHAN])
    # echo-message: the sender's own line comes back, to it only
    ec = negotiate(ctx, b, s, "echo", ["echo-message"])
    ask_service(ctx, ec, "network list", "1 network")
    check([m.params for m in ec.msgs("PRIVMSG") if m.param(0) == "*baton"]
          == [["*baton", "network list"]], "echo: %s" % [m.raw for m in ec.msgs("PRIVMSG")])
    check(not [m for m in c.msgs("PRIVMSG") if m.param(0) == "*baton"],
          "another client saw the conversation with *baton")

    got = ask_service(ctx, c, "help", "What you may do here")
    check(any("network add NAME" in t for t in got), "help: %s" % got)
    check(any("list, add, set and del" in t for t in got), "help does not say the level: %s" % got)
    got = ask_service(ctx, c, "network list", "1 network")
    check(any(t.startswith("net (this connection): connected as %s" % s.nick) for t in got),
          "network list: %s" % got)

    got = ask_service(ctx, c, "network add net2 nick=bn2x channels=#two", "added")
    check(got[-1].startswith("Done: network net2 added"), "add: %s" % got)
    text = open(b.config).read()
    check(text.startswith("; written by tests/integration/batonlib.py\n"),
          "the file's comment went: %r" % text[:80])
    check("[user %s/net2]\nnick = bn2x\nchannels = #two\n" % s.user in text,
          "no new section in the file: %s" % text[-300:])
    ctx.loop.run_until(lambda: "bn2x" in ng_nicks(ctx, dave), 15, "bn2x on the network")
    s2 = bl.Session(s.user, "net2", "bn2x", ["#two"], s.password)
    c2 = bl.bouncer_client(ctx.loop, b, s2)
    got = ask_service(ctx, c, "network list", "2 networks")
    check(any(t.startswith("net2: connected as bn2x") for t in got), "list after add: %s" % got)

    got = ask_service(ctx, c, "network set net2 realname=second one", "Not done")
    check("'one'" in got[-1], "a word without = taken: %s" % got)
    got = ask_service(ctx, c, "network set net2 realname=second", "changed")
    check("realname = second\n" in open(b.config).read(), "realname not in the file")
    check(got[-1] == "Done: network net2 changed (realname: at your next connection to the network)",
          "a realname is not applied now: %s" % got)

    for cmd, why in (("network set net2 password=x", "nick, username, realname and channels"),
                     ("network add nope", "no network 'nope'"),
                     ("network add %s" % ("n" * 65), "1 to 64 bytes"),
                     ("network set net2 " + " ".join("nick=a" for _ in range(15)), "Too many words"),
                     ("network set net2 realname=" + "r" * 182, "at most 190 bytes"),
                     ("network add net2", "you have this network already"),
                     ("network frob net2", "Unknown command"),
                     ("network del", "Usage: network del NAME")):
        before = open(b.config).read()
        got = ask_service(ctx, c, cmd, why)
        check(open(b.config).read() == before, "%r changed the file" % cmd[:40])
        check(not any(t.startswith("Done") for t in got), "%r: %s" % (cmd[:40], got))

    got = ask_service(ctx, c, "network del net2", "deleted")
    check("[user %s/net2]" % s.user not in open(b.config).read(), "net2 still in the file")
    ctx.loop.run_until(lambda: c2.closed, 15, "net2's client closed after the del")
    ctx.loop.run_until(lambda: "bn2x" not in ng_nicks(ctx, dave), 15, "bn2x leaving the network")

    # the operator stages net2 in the file without reloading: a user's
    # edit (whose reload would load the whole file) is refused until the
    # change is loaded or undone
    loaded = open(b.config).read()
    staged = loaded + "[user %s/net2]\nnick = bn2x\n" % s.user
    b.write_config(staged)
    got = ask_service(ctx, c, "network set net nick=%s" % s.nick, "Not done")
    check("the operator has changes in the config file not yet loaded" in got[-1],
          "an edit over staged changes: %s" % got)
    check(open(b.config).read() == staged, "the file changed")
    b.write_config(loaded)  # undone (test_user_edit: edits go again)

    # a target list naming *baton: refused whole, nothing to the network
    n = len(dave.lines)
    c.send("PRIVMSG %s,*baton :network set net nick=leak" % CHAN)
    ctx.loop.run_until(lambda: any("*baton takes a message of its own" in m.raw
                                   for m in c.msgs("NOTICE")), 5, "the list refused")
    ask_service(ctx, c, "network list", "1 network")  # a round trip after it
    check(not [m for m in dave.msgs("PRIVMSG", n) if "leak" in m.raw],
          "the channel saw the *baton command")
    check(not [m for m in c.msgs("401") if m.param(1, "").lower() == "*baton"],
          "the network saw a message to *baton")

    # the operator narrows it: read from the file at each edit
    b.write_config(open(b.config).read().replace("user_networks = add", "user_networks = list"))
    rc, res, out, err = b.ctl("reload", "--json")
    check(rc == 0 and res.get("result") == "applied"
          and res["changed"] == ["[supervisor] user_networks (from the next edit by a user)"]
          and not res["later"],
          "reload of user_networks: %s %s" % (rc, out))
    got = ask_service(ctx, c, "network add net2", "Not done")
    check("user_networks = list" in got[-1], "add with list: %s" % got)
    ask_service(ctx, c, "help", "What you may do here: list and status only")
    got = ask_service(ctx, c, "network set net nick=zz", "Not done")
    check("user_networks = list" in got[-1], "set with list: %s" % got)
    ask_service(ctx, c, "network list", "1 network")
    check("nick = %s\n" % s.nick in open(b.config).read(), "nick changed under list")
    check(not c.closed, "client closed: %s" % c.close_reason)


def ng_nicks(ctx, direct):
    """Nicks on the network now (ISON through a direct user)."""
    n = len(direct.lines)
    direct.send("ISON bn2x")
    ctx.loop.run_until(lambda: direct.msgs("303", n), 5, "ISON answer")
    return direct.msgs("303", n)[0].params[-1].split()


def bn_client(ctx, b, name, caps, pass_line=None, sasl=None, bind=None, nick="bn000",
              user="u000", wait=True):
    """A client with `caps` logging in without a network (soju.im/bouncer-
    networks): PASS pass_line, or SASL PLAIN sasl=(authcid, password);
    BOUNCER BIND bind before CAP END. wait: until 001."""
    import base64
    c = ctx.loop.connect(b.port, name="bn:%s" % name)
    c.send("CAP LS 302")
    if pass_line:
        c.send("PASS %s" % pass_line)
    c.send_many(["NICK %s" % nick, "USER %s 0 * :bn test" % user])
    wait_cap(ctx, c, "LS", 0, "CAP LS")
    n = len(c.lines)
    c.send("CAP REQ :%s" % " ".join(caps))
    wait_cap(ctx, c, "ACK", n, "CAP ACK of %s" % caps)
    if sasl:
        n = len(c.lines)
        c.send("AUTHENTICATE PLAIN")
        ctx.loop.run_until(lambda: c.msgs("AUTHENTICATE", n), 5, "AUTHENTICATE +")
        blob = base64.b64encode(("\0%s\0%s" % sasl).encode()).decode()
        c.send("AUTHENTICATE %s" % blob)
        ctx.loop.run_until(lambda: c.msgs("903", n) or c.msgs("904", n), 10, "SASL result")
        check(c.msgs("903", n), "SASL failed: %s" % [m.raw for m in c.msgs(None, n)])
    if bind:
        c.send("BOUNCER BIND %s" % bind)
    c.send("CAP END")
    if wait:
        ctx.loop.run_until(lambda: c.registered or c.closed, 15, "%s registered" % name)
        check(not c.closed, "%s closed: %s" % (name, c.close_reason))
    return c


def isupport(c):
    return {t.split("=", 1)[0]: (t.split("=", 1) + [""])[1]
            for m in c.msgs("005") for t in m.params[1:-1]}


def bouncer_replies(ctx, c, line, done):
    """Send line; wait until done(msgs since) and return the msgs since."""
    n = len(c.lines)
    c.send(line)
    ctx.loop.run_until(lambda: done(c.msgs(None, n)) or c.closed, 10, "answer to %r" % line)
    check(not c.closed, "closed after %r: %s" % (line, c.close_reason))
    return c.msgs(None, n)


def fail_of(msgs):
    return [m.params for m in msgs if m.command == "FAIL"]


def test_ircv3_bouncer_networks(ctx):
    """soju.im/bouncer-networks against the spec's examples, with
    [supervisor] user_networks = add and a second [network net2]:
    binding by SASL PLAIN as the bare user + BOUNCER BIND net before CAP
    END (BOUNCER_NETID=net in 005); a login as `PASS u000:secret` without
    BIND binds the user's first network; LISTNETWORKS answers in a
    soju.im/bouncer-networks batch with name, state, host, port, tls,
    nickname, username, realname (values escaped as tags); ADDNETWORK
    name=net2;nickname=bn2y answers `BOUNCER ADDNETWORK net2` once the
    supervisor edited the file (the *baton path), and a third client binds
    it by `BOUNCER BIND net2` after PASS; CHANGENETWORK realname goes to
    the file; DELNETWORK removes the section and net2's client is closed.
    Errors as the spec says (FAIL BOUNCER ...): READ_ONLY_ATTRIBUTE,
    INVALID_ATTRIBUTE (a host no [network] has), UNKNOWN_ATTRIBUTE,
    NEED_ATTRIBUTE, INVALID_NETID (also a 65-byte one), UNKNOWN_COMMAND,
    REGISTRATION_IS_COMPLETED; nothing changed by any of them. Without
    the capability `PASS u000:secret` is still refused (464)."""
    ng, b = setup_service(ctx, "add")
    s = b.sessions[0]

    # binding to a network (spec example), SASL as the bare user
    c1 = bn_client(ctx, b, "sasl", ["sasl", "soju.im/bouncer-networks"],
                   sasl=("u000", s.password), bind="net")
    bl.wait_attached(ctx.loop, c1, s)
    check(isupport(c1).get("BOUNCER_NETID") == "net", "005: %s" % isupport(c1))

    # no BIND: the first network; listing (spec example)
    c = bn_client(ctx, b, "main", ["batch", "soju.im/bouncer-networks"],
                  pass_line="u000:%s" % s.password)
    bl.wait_attached(ctx.loop, c, s)
    got = bouncer_replies(ctx, c, "BOUNCER LISTNETWORKS",
                          lambda ms: [m for m in ms if m.command == "BATCH"
                                      and m.param(0, "").startswith("-")])
    start = [m for m in got if m.command == "BATCH"][0]
    ref = start.param(0)[1:]
    check(start.param(0).startswith("+") and start.param(1) == "soju.im/bouncer-networks",
          "batch start %r" % start.raw)
    nets = [m for m in got if m.command == "BOUNCER"]
    check(len(nets) == 1 and nets[0].params[:2] == ["NETWORK", "net"]
          and tag_dict(nets[0].tags).get("batch") == ref, "LISTNETWORKS: %s" % [m.raw for m in got])
    attrs = tag_dict(nets[0].params[2])
    check(attrs == {"name": "net", "state": "connected", "host": "127.0.0.1",
                    "port": str(ng.port), "tls": "0", "nickname": "bn000",
                    "username": "u000", "realname": "baton\\stest\\su000"},
          "attributes %s" % attrs)

    # errors, nothing changed by any
    before = open(b.config).read()
    for line, want in (
            ("BOUNCER CHANGENETWORK net host=example.org",
             ["BOUNCER", "READ_ONLY_ATTRIBUTE", "CHANGENETWORK", "net", "host"]),
            ("BOUNCER CHANGENETWORK net state=connected",
             ["BOUNCER", "READ_ONLY_ATTRIBUTE", "CHANGENETWORK", "net", "state"]),
            ("BOUNCER ADDNETWORK host=irc.example.org",
             ["BOUNCER", "INVALID_ATTRIBUTE", "ADDNETWORK", "*", "host"]),
            ("BOUNCER ADDNETWORK name=net2;colour=blue",
             ["BOUNCER", "UNKNOWN_ATTRIBUTE", "ADDNETWORK", "*", "colour"]),
            ("BOUNCER ADDNETWORK nickname=x", ["BOUNCER", "NEED_ATTRIBUTE", "ADDNETWORK", "host"]),
            ("BOUNCER ADDNETWORK", ["BOUNCER", "NEED_ATTRIBUTE", "ADDNETWORK", "host"]),
            ("BOUNCER CHANGENETWORK nope realname=x",
             ["BOUNCER", "INVALID_NETID", "CHANGENETWORK", "nope"]),
            ("BOUNCER DELNETWORK %s" % ("n" * 65),
             ["BOUNCER", "INVALID_NETID", "DELNETWORK", "n" * 64]),
            ("BOUNCER CHANGENETWORK net realname=" + "r" * 182,
             ["BOUNCER", "INVALID_ATTRIBUTE", "CHANGENETWORK", "net", "realname"]),
            ("BOUNCER CHANGENETWORK net " + ";".join(["nickname=a"] * 9),
             ["BOUNCER", "INVALID_ATTRIBUTE", "CHANGENETWORK", "net", "nickname"]),
            ("BOUNCER FROB", ["BOUNCER", "UNKNOWN_COMMAND", "FROB"]),
            ("BOUNCER :FROB NICATE", ["BOUNCER", "UNKNOWN_COMMAND", "FROB_NICATE"]),
            ("BOUNCER ADDNETWORK :=x", ["BOUNCER", "UNKNOWN_ATTRIBUTE", "ADDNETWORK", "*", "*"]),
            ("BOUNCER DELNETWORK ::x", ["BOUNCER", "INVALID_NETID", "DELNETWORK", "*"]),
            ("BOUNCER BIND net", ["BOUNCER", "REGISTRATION_IS_COMPLETED", "BIND"])):
        f = fail_of(bouncer_replies(ctx, c, line, fail_of))
        check(f[0][:len(want)] == want, "%s: FAIL %s, want %s" % (line, f, want))
    check(open(b.config).read() == before, "an error changed the file")

    # adding (spec example), then binding it
    got = bouncer_replies(ctx, c, "BOUNCER ADDNETWORK name=net2;nickname=bn2y;realname=Two\\sWords",
                          lambda ms: [m for m in ms if m.command in ("BOUNCER", "FAIL")])
    check([m.params for m in got if m.command in ("BOUNCER", "FAIL")] == [["ADDNETWORK", "net2"]],
          "ADDNETWORK: %s" % [m.raw for m in got])
    check("[user u000/net2]\nnick = bn2y\nrealname = Two Words\n" in open(b.config).read(),
          "net2 not in the file")
    c3 = bn_client(ctx, b, "net2", ["soju.im/bouncer-networks"],
                   pass_line="u000:%s" % s.password, bind="net2", nick="bn2y")
    ctx.loop.run_until(lambda: isupport(c3).get("BOUNCER_NETID") == "net2", 15,
                       "net2's client bound (005 BOUNCER_NETID=net2)")
    c3s = bn_client(ctx, b, "net2sasl", ["sasl", "soju.im/bouncer-networks"],
                    sasl=("u000", s.password), bind="net2", nick="bn2y")
    ctx.loop.run_until(lambda: isupport(c3s).get("BOUNCER_NETID") == "net2", 15,
                       "a SASL client bound to net2 (not the first network)")
    got = bouncer_replies(ctx, c, "BOUNCER LISTNETWORKS",
                          lambda ms: [m for m in ms if m.command == "BATCH"
                                      and m.param(0, "").startswith("-")])
    check(sorted(m.param(1) for m in got if m.command == "BOUNCER") == ["net", "net2"],
          "LISTNETWORKS after the add: %s" % [m.raw for m in got])

    # at the bounds: 8 attributes, realname= + 181 bytes (190 as the key's pair)
    got = bouncer_replies(ctx, c, "BOUNCER CHANGENETWORK net2 " + ";".join(["nickname=bn2y"] * 8),
                          lambda ms: [m for m in ms if m.command in ("BOUNCER", "FAIL")])
    check([m.params for m in got if m.command in ("BOUNCER", "FAIL")]
          == [["CHANGENETWORK", "net2"]], "8 attributes: %s" % [m.raw for m in got])
    got = bouncer_replies(ctx, c, "BOUNCER CHANGENETWORK net2 realname=" + "r" * 181,
                          lambda ms: [m for m in ms if m.command in ("BOUNCER", "FAIL")])
    check([m.params for m in got if m.command in ("BOUNCER", "FAIL")]
          == [["CHANGENETWORK", "net2"]], "181-byte realname: %s" % [m.raw for m in got])
    check("realname = %s\n" % ("r" * 181) in open(b.config).read(), "long realname not in the file")
    got = bouncer_replies(ctx, c, "BOUNCER CHANGENETWORK net2 realname=Simon",
                          lambda ms: [m for m in ms if m.command in ("BOUNCER", "FAIL")])
    check([m.params for m in got if m.command in ("BOUNCER", "FAIL")]
          == [["CHANGENETWORK", "net2"]], "CHANGENETWORK: %s" % [m.raw for m in got])
    check("realname = Simon\n" in open(b.config).read(), "realname not changed in the file")

    got = bouncer_replies(ctx, c, "BOUNCER DELNETWORK net2",
                          lambda ms: [m for m in ms if m.command in ("BOUNCER", "FAIL")])
    check([m.params for m in got if m.command in ("BOUNCER", "FAIL")]
          == [["DELNETWORK", "net2"]], "DELNETWORK: %s" % [m.raw for m in got])
    check("u000/net2" not in open(b.config).read(), "net2 still in the file")
    ctx.loop.run_until(lambda: c3.closed and c3s.closed, 15, "net2's clients closed")

    # BIND hostile or unknown; the cap is needed for a bare user
    c4 = bn_client(ctx, b, "long", ["soju.im/bouncer-networks"],
                   pass_line="u000:%s" % s.password, bind="x" * 65, wait=False)
    ctx.loop.run_until(lambda: fail_of(c4.msgs()), 10, "FAIL for a 65-byte BIND")
    check(fail_of(c4.msgs())[0][:2] == ["BOUNCER", "INVALID_NETID"], "%s" % fail_of(c4.msgs()))
    c5 = bn_client(ctx, b, "nonet", ["soju.im/bouncer-networks"],
                   pass_line="u000:%s" % s.password, bind="net2", wait=False)
    ctx.loop.run_until(lambda: c5.closed, 10, "a BIND of a deleted network refused")
    check(c5.msgs("464"), "no 464 for a deleted network: %s" % [m.raw for m in c5.msgs()])
    c6 = ctx.loop.connect(b.port, name="nocap")
    c6.send_many(["PASS u000:%s" % s.password, "NICK bn000", "USER u000 0 * :x"])
    ctx.loop.run_until(lambda: c6.closed, 10, "bare user without the cap refused")
    check(c6.msgs("464"), "bare user without the cap: %s" % [m.raw for m in c6.msgs()])
    for cl in (c, c1):
        check(not cl.closed, "%s closed: %s" % (cl.name, cl.close_reason))


def test_ircv3_bouncer_networks_notify(ctx):
    """soju.im/bouncer-networks-notify: client N (batch, bouncer-networks,
    -notify) gets the list in a batch once attached; another client's
    ADDNETWORK net2 reaches N as `BOUNCER NETWORK net2` with every
    attribute, then state=connecting and state=connected; the operator's
    `batonctl network set u000/net2 realname=...` reaches N as that one
    attribute; after an upgrade (N adopted by the new worker) the
    operator's `network del` reaches N as `net2 *` and a new `network add`
    as its attributes, then its connection (state=connected).
    Client C (bouncer-networks without -notify) never gets a BOUNCER
    NETWORK it did not ask for."""
    ng, b = setup_service(ctx, "add")
    s = b.sessions[0]
    pw = "u000:%s" % s.password
    nc = bn_client(ctx, b, "notify", ["batch", "soju.im/bouncer-networks",
                                      "soju.im/bouncer-networks-notify"], pass_line=pw)
    bl.wait_attached(ctx.loop, nc, s)
    ctx.loop.run_until(lambda: [m for m in nc.msgs("BATCH") if m.param(0, "").startswith("-")],
                       5, "the initial list")
    nets = [m for m in nc.msgs("BOUNCER")]
    check([m.params[:2] for m in nets] == [["NETWORK", "net"]]
          and tag_dict(nets[0].tags).get("batch"), "initial list: %s" % [m.raw for m in nets])
    c = bn_client(ctx, b, "c", ["soju.im/bouncer-networks"], pass_line=pw)
    bl.wait_attached(ctx.loop, c, s)

    def notes(since):
        return [m.params[1:] for m in nc.msgs("BOUNCER", since) if m.param(0) == "NETWORK"]

    n = len(nc.lines)
    bouncer_replies(ctx, c, "BOUNCER ADDNETWORK name=net2;nickname=bn2z",
                    lambda ms: [m for m in ms if m.command in ("BOUNCER", "FAIL")])
    ctx.loop.run_until(lambda: ["net2", "state=connected"] in notes(n), 15,
                       "net2 connected, notified")
    got = notes(n)
    full = [tag_dict(x[1]) for x in got if x[0] == "net2" and "name=" in x[1]]
    check(len(full) == 1 and full[0]["nickname"] == "bn2z" and full[0]["host"] == "127.0.0.1",
          "the added network's attributes: %s" % got)
    check(got.index(["net2", "state=connecting"]) < got.index(["net2", "state=connected"]),
          "states out of order: %s" % got)

    n = len(nc.lines)
    rc, res, out, err = b.ctl("network", "set", "u000/net2", "realname=Op Set", "--json")
    check(rc == 0, "batonctl network set: %s %s" % (out, err))
    ctx.loop.run_until(lambda: notes(n), 10, "the operator's change notified")
    check(notes(n) == [["net2", "realname=Op\\sSet"]], "change notified as %s" % notes(n))

    rc, res = b.upgrade(ctx.builds["b"].require())
    check(rc == 0 and res.get("result") == "committed", "upgrade: %s" % res)
    n = len(nc.lines)
    rc, res, out, err = b.ctl("network", "del", "u000/net2", "--json")
    check(rc == 0, "batonctl network del: %s %s" % (out, err))
    ctx.loop.run_until(lambda: ["net2", "*"] in notes(n), 10, "the removal notified")
    n = len(nc.lines)
    rc, res, out, err = b.ctl("network", "add", "u000/net2", "nick=bn2w", "--json")
    check(rc == 0, "batonctl network add: %s %s" % (out, err))
    ctx.loop.run_until(lambda: ["net2", "state=connected"] in notes(n), 15,
                       "the operator's add notified, then its connection")
    check([x for x in notes(n) if "nickname=bn2w" in x[1]], "no attributes: %s" % notes(n))
    check(not [m for m in c.msgs("BOUNCER") if m.param(0) == "NETWORK"],
          "a client without -notify got notifications: %s" % [m.raw for m in c.msgs("BOUNCER")])
    for cl in (nc, c):
        check(not cl.closed, "%s closed: %s" % (cl.name, cl.close_reason))


def test_ircv3_standard_replies(ctx):
    """standard-replies: baton's own errors and notes become FAIL/WARN/NOTE
    for a client that negotiated it, and stay the NOTICEs they were for
    the others. With the network gone (ngircd stopped): a PRIVMSG and a
    MODE from client A (standard-replies) get `FAIL PRIVMSG
    UPSTREAM_DISCONNECTED` and `FAIL MODE UPSTREAM_DISCONNECTED`, client
    B (none) the NOTICE; a client attaching meanwhile with the cap gets
    `NOTE * UPSTREAM_...` instead of the NOTICE."""
    ng = ctx.ngircd()
    b = bl.Baton(ctx, ng, nsessions=1, channels=[CHAN])
    b.start(wait=False)
    bl.pump_ready(ctx, b)
    s = b.sessions[0]
    a = negotiate(ctx, b, s, "a", ["standard-replies"])
    plain = negotiate(ctx, b, s, "plain", [])
    ng.stop()
    ctx.loop.run_until(lambda: [m for m in plain.msgs("NOTICE")
                                if "Disconnected from" in m.params[-1]], 10,
                       "the session losing its network")
    for c, want in ((a, "FAIL"), (plain, "NOTICE")):
        n = len(c.lines)
        c.send("PRIVMSG %s :hello" % CHAN)
        c.send("MODE %s" % CHAN)
        ctx.loop.run_until(lambda: len([m for m in c.msgs(None, n)
                                        if m.command in ("FAIL", "NOTICE")]) >= 2, 5,
                           "two answers to %s" % c.name)
        got = [m for m in c.msgs(None, n) if m.command in ("FAIL", "NOTICE")]
        if want == "FAIL":
            check([m.params[:2] for m in got] == [["PRIVMSG", "UPSTREAM_DISCONNECTED"],
                                                  ["MODE", "UPSTREAM_DISCONNECTED"]],
                  "standard replies: %s" % [m.raw for m in got])
            check(got[0].params[-1] == "net is disconnected: message not sent", got[0].raw)
        else:
            check([m.command for m in got] == ["NOTICE", "NOTICE"]
                  and got[0].params[-1] == "net is disconnected: message not sent",
                  "plain: %s" % [m.raw for m in got])
    late = negotiate(ctx, b, s, "late", ["standard-replies"])
    ctx.loop.run_until(lambda: late.msgs("NOTE"), 5, "a NOTE on attach")
    check(late.msgs("NOTE")[0].params[:2] in (["*", "UPSTREAM_DISCONNECTED"],
                                              ["*", "UPSTREAM_WAITING"]),
          "NOTE %s" % late.msgs("NOTE")[0].raw)
    check(not [m for m in late.msgs("NOTICE") if "disconnected" in m.params[-1]],
          "a NOTICE too: %s" % [m.raw for m in late.msgs("NOTICE")])


def labeled(c, label, since=0):
    return [m for m in c.msgs(None, since) if tag_dict(m.tags).get("label") == label]


def label_batch(c, label, since=0, timeout=5, loop=None):
    """The lines of the labeled-response batch whose start carries label
    (the start and the end included), once its end came."""
    def lines():
        ms = c.msgs(None, since)
        start = [i for i, m in enumerate(ms) if m.command == "BATCH"
                 and tag_dict(m.tags).get("label") == label]
        if not start:
            return None
        ref = ms[start[0]].params[0][1:]
        for j in range(start[0] + 1, len(ms)):
            if ms[j].command == "BATCH" and ms[j].params[0] == "-" + ref:
                return ms[start[0]:j + 1]
        return None
    loop.run_until(lines, timeout, "the labeled-response batch of %s" % label)
    return lines()


def test_ircv3_labeled_response(ctx):
    """labeled-response (with batch, its dependency) for what baton answers
    itself, against ngircd (no labeled-response of its own), the spec's
    shapes: a PING's one PONG carries the label; `/msg *baton help` (several
    NOTICEs) is a `labeled-response` batch whose BATCH + has the label and
    whose lines have @batch; `TAGMSG *baton` has no answer: a labeled ACK,
    and nothing reaches the network; a PRIVMSG with echo-message: the echo
    is labeled (one line), the other client's copy is not (the echo of a
    PRIVMSG *baton is the first line of its batch); CHATHISTORY
    (answered later, from the store): its chathistory batch inside a
    labeled one; MARKREAD: the one MARKREAD back labeled; an error baton
    generates (CHATHISTORY without parameters: FAIL) labeled. The label's
    bound (the spec's 64 bytes): 64 answered, 65 refused with FAIL
    INVALID_LABEL and not run. A WHO, forwarded to a network that cannot
    label: its replies come unlabeled and no ACK (baton never claims a
    label it cannot match). A client without labeled-response gets no
    label."""
    w, b, dave = setup(ctx)
    s = b.sessions[0]
    caps = ["batch", "labeled-response", "echo-message", "message-tags",
            "standard-replies", "draft/chathistory", "draft/read-marker"]
    c = negotiate(ctx, b, s, "lab", caps)
    other = negotiate(ctx, b, s, "other", ["message-tags"])
    loop = ctx.loop

    n = len(c.lines)
    c.send("@label=p1 PING :abc")
    loop.run_until(lambda: labeled(c, "p1", n), 5, "labeled PONG")
    pong = labeled(c, "p1", n)
    check(len(pong) == 1 and pong[0].command == "PONG" and pong[0].params[-1] == "abc",
          "PING: %s" % [m.raw for m in pong])

    n = len(c.lines)
    c.send("@label=h1 PRIVMSG *baton :help")
    got = label_batch(c, "h1", n, loop=loop)
    check(got[0].params[1] == "labeled-response", "batch type: %s" % got[0].raw)
    ref = got[0].params[0][1:]
    inner = got[1:-1]
    # echo-message: the command's echo is part of its response, first
    check(inner[0].command == "PRIVMSG" and inner[0].params == ["*baton", "help"]
          and len(inner) >= 3 and all(m.command == "NOTICE" for m in inner[1:])
          and all(tag_dict(m.tags).get("batch") == ref and "label" not in tag_dict(m.tags)
                  for m in inner),
          "help in the batch: %s" % [m.raw for m in inner])
    check(not [m for m in c.msgs("NOTICE", n) if m.raw not in [i.raw for i in inner]],
          "a NOTICE outside the batch")

    n = len(c.lines)
    c.send("@label=t1;+typing=active TAGMSG *baton")
    loop.run_until(lambda: labeled(c, "t1", n), 5, "ACK of TAGMSG *baton")
    ack = labeled(c, "t1", n)
    check([m.command for m in ack] == ["ACK"] and not ack[0].params, "TAGMSG: %s" % [m.raw for m in ack])

    n, no = len(c.lines), len(other.lines)
    text = "%s labeled" % bl.token("bn000", 1)
    c.send("@label=e1 PRIVMSG %s :%s" % (CHAN, text))
    loop.run_until(lambda: labeled(c, "e1", n), 5, "labeled echo")
    echo = labeled(c, "e1", n)
    check(len(echo) == 1 and echo[0].command == "PRIVMSG" and echo[0].params == [CHAN, text],
          "echo: %s" % [m.raw for m in echo])
    loop.run_until(lambda: privmsgs(other, no), 5, "the other client's copy")
    check("label" not in tag_dict(privmsgs(other, no)[0].tags), "the other client got the label")
    loop.run_until(lambda: [m for m in dave.msgs("PRIVMSG") if m.params[-1] == text], 5,
                   "the line on the network")
    ctx.loop.run_for(1.2)  # durable in the store before CHATHISTORY

    n = len(c.lines)
    c.send("@label=c1 CHATHISTORY LATEST %s * 5" % CHAN)
    got = label_batch(c, "c1", n, loop=loop)
    check(got[0].params[1] == "labeled-response", "CHATHISTORY batch: %s" % got[0].raw)
    outer = got[0].params[0][1:]
    check(got[1].command == "BATCH" and got[1].params[1] == "chathistory"
          and tag_dict(got[1].tags).get("batch") == outer,
          "the chathistory batch inside: %s" % [m.raw for m in got[:3]])
    check([m for m in got if m.command == "PRIVMSG" and m.params[-1] == text],
          "the line in the history: %s" % [m.raw for m in got])

    n = len(c.lines)
    c.send("@label=f1 CHATHISTORY")
    loop.run_until(lambda: labeled(c, "f1", n), 5, "labeled FAIL")
    f = labeled(c, "f1", n)
    check(len(f) == 1 and f[0].command == "FAIL" and f[0].params[:2] == ["CHATHISTORY", "NEED_MORE_PARAMS"],
          "FAIL: %s" % [m.raw for m in f])

    n = len(c.lines)
    c.send("@label=m1 MARKREAD %s timestamp=2026-01-01T00:00:00.000Z" % CHAN)
    loop.run_until(lambda: labeled(c, "m1", n), 5, "labeled MARKREAD")
    mr = labeled(c, "m1", n)
    check(len(mr) == 1 and mr[0].command == "MARKREAD", "MARKREAD: %s" % [m.raw for m in mr])

    l64, l65 = "x" * 64, "y" * 65
    n = len(c.lines)
    c.send("@label=%s PING :b64" % l64)
    c.send("@label=%s PING :b65" % l65)
    c.send("PING :after")
    loop.run_until(lambda: [m for m in c.msgs("PONG", n) if m.params[-1] == "after"], 5, "PONG after")
    check([m.params[-1] for m in labeled(c, l64, n)] == ["b64"], "64-byte label: %s"
          % [m.raw for m in c.msgs(None, n)])
    check(not [m for m in c.msgs("PONG", n) if m.params[-1] == "b65"], "65-byte label's PING ran")
    fl = [m for m in c.msgs("FAIL", n) if m.params[:2] == ["PING", "INVALID_LABEL"]]
    check(len(fl) == 1 and "label" not in tag_dict(fl[0].tags), "65-byte label: %s"
          % [m.raw for m in c.msgs(None, n)])

    n = len(c.lines)
    c.send("@label=w1 WHO %s" % CHAN)
    loop.run_until(lambda: c.msgs("315", n), 5, "WHO's end")
    ctx.loop.run_for(0.5)
    check(not labeled(c, "w1", n), "a label on what the network answered: %s"
          % [m.raw for m in labeled(c, "w1", n)])
    check(c.msgs("352", n), "no WHO reply")

    n = len(other.lines)
    other.send("@label=o1 PING :plain")
    loop.run_until(lambda: other.msgs("PONG", n), 5, "PONG without the cap")
    check(not labeled(other, "o1", n), "a label to a client without labeled-response")
    for cl in (c, other):
        check(not cl.closed, "%s closed: %s" % (cl.name, cl.close_reason))


def _inspircd_labeled(ctx):
    """inspircd 3 with labeled-response (its ircv3_labeledresponse and
    ircv3_batch modules: Debian 12's inspircd 3.15 has them; ngircd 26 has
    neither)."""
    import test_conformance as tc

    class Insp(tc.Inspircd):
        def config_text(self):
            return super().config_text() + "".join(
                '<module name="%s">\n' % m for m in ("ircv3_batch", "ircv3_labeledresponse"))
    return Insp(ctx).start()


def label_answer(c, label, since=0, timeout=5, loop=None):
    """The answer to label: its one labeled line (a list of one), or its
    labeled-response batch (start and end included)."""
    def lines():
        ms = c.msgs(None, since)
        for i, m in enumerate(ms):
            if tag_dict(m.tags).get("label") != label:
                continue
            if m.command != "BATCH":
                return [m]
            ref = m.params[0][1:]
            for j in range(i + 1, len(ms)):
                if ms[j].command == "BATCH" and ms[j].params[0] == "-" + ref:
                    return ms[i:j + 1]
        return None
    loop.run_until(lines, timeout, "the answer labeled %s" % label)
    return lines()


def test_ircv3_labeled_forwarded_inspircd(ctx):
    """Bug: a labeled command baton forwards to the network (WHO, MODE,
    JOIN...) went unlabeled and its client got no labeled answer and no ACK.
    Against inspircd 3 with labeled-response: baton forwards it with a label
    of its own and gives the network's answer back with the client's label:
    a WHO's labeled-response batch (352s and 315 inside, tagged with the
    batch) to the asker alone; a MODE that changes nothing: the network's
    ACK, labeled; a JOIN: its batch to the asker, the JOIN and NAMES plain
    to the other client (no BATCH, no label: who gets a line does not
    change); the same label from two clients at once: each gets its own
    answer; a client without message-tags still gets its label; the
    asker's 9th labeled command while 8 are outstanding goes unlabeled
    (UPSTREAM_LABELS_PER_CLIENT) and still gets its replies; a PRIVMSG: the
    network's echo labeled to a sender with echo-message, an ACK to one
    without (the others get the line unlabeled), a refusal (401) labeled;
    an asker that left: its answer reaches nobody; after an upgrade (the
    network's caps travel with the session) a WHO is labeled again."""
    B = ctx.builds["b"].require()
    ins = _inspircd_labeled(ctx)
    b = bl.Baton(ctx, ins, nsessions=1, channels=[CHAN])
    b.start(wait=False)
    bl.pump_ready(ctx, b)
    s = b.sessions[0]
    loop = ctx.loop
    c = negotiate(ctx, b, s, "lab", ["batch", "labeled-response"])
    c2 = negotiate(ctx, b, s, "lab2", ["batch", "labeled-response", "message-tags"])
    o = negotiate(ctx, b, s, "other", ["message-tags"])
    check("ircv3_labeledresponse" in open(ins.conf).read(), "module not loaded")

    n, n2, no = len(c.lines), len(c2.lines), len(o.lines)
    c.send("@label=w1 WHO %s" % CHAN)
    got = label_answer(c, "w1", n, loop=loop)
    check(got[0].command == "BATCH" and got[0].params[1] == "labeled-response",
          "WHO: %s" % [m.raw for m in got])
    ref = got[0].params[0][1:]
    inner = got[1:-1]
    check([m.command for m in inner][-1] == "315" and all(m.command in ("352", "315") for m in inner)
          and all(tag_dict(m.tags) == {"batch": ref} for m in inner),
          "WHO's lines: %s" % [m.raw for m in inner])
    check(not [m for m in c.msgs(None, n) if m.command in ("352", "315")
                and m.raw not in [i.raw for i in inner]],
          "WHO lines outside the batch: %s" % [m.raw for m in c.msgs(None, n)])
    loop.run_for(0.5)
    check(not o.msgs("352", no) and not o.msgs("BATCH", no) and not c2.msgs("BATCH", n2),
          "the WHO answer reached another client: %s %s"
          % ([m.raw for m in o.msgs(None, no)], [m.raw for m in c2.msgs(None, n2)]))

    n, no = len(c.lines), len(o.lines)
    c.send("@label=j1 JOIN #new")
    got = label_answer(c, "j1", n, loop=loop)
    check(got[0].command == "BATCH" and "JOIN" in [m.command for m in got]
          and "366" in [m.command for m in got], "JOIN: %s" % [m.raw for m in got])
    loop.run_until(lambda: o.msgs("366", no), 5, "the other client's NAMES of #new")
    check(o.msgs("JOIN", no) and not o.msgs("BATCH", no)
          and not [m for m in o.msgs(None, no) if {"label", "batch"} & set(tag_dict(m.tags))],
          "the other client's JOIN: %s" % [m.raw for m in o.msgs(None, no)])

    n = len(c.lines)
    c.send("@label=i1 MODE %s +i" % s.nick)
    label_answer(c, "i1", n, loop=loop)
    n = len(c.lines)
    c.send("@label=k1 MODE %s +i" % s.nick)  # already +i: no reply, an ACK
    got = label_answer(c, "k1", n, loop=loop)
    check([m.command for m in got] == ["ACK"] and tag_dict(got[0].tags) == {"label": "k1"},
          "ACK: %s" % [m.raw for m in got])

    n, n2 = len(c.lines), len(c2.lines)
    c.send("@label=same MODE %s" % CHAN)
    c2.send("@label=same WHO %s" % CHAN)
    a1 = label_answer(c, "same", n, loop=loop)
    a2 = label_answer(c2, "same", n2, loop=loop)
    check("324" in [m.command for m in a1] and "352" not in [m.command for m in a1],
          "c's MODE answer: %s" % [m.raw for m in a1])
    check("352" in [m.command for m in a2] and "324" not in [m.command for m in a2],
          "c2's WHO answer: %s" % [m.raw for m in a2])

    n = len(c.lines)
    c.send_many(["@label=q%d WHO %s" % (i, CHAN) for i in range(9)])
    for i in range(8):
        label_answer(c, "q%d" % i, n, loop=loop)
    loop.run_until(lambda: len(c.msgs("315", n)) == 9, 5, "nine WHO answers")
    check(not labeled(c, "q8", n), "the 9th got a label")
    batched = set(tag_dict(m.tags).get("batch") for m in c.msgs("315", n))
    check(None in batched, "no unlabeled WHO answer: %s" % [m.raw for m in c.msgs("315", n)])

    # messages: the network's echo (echo-message) is the answer
    e = negotiate(ctx, b, s, "echo", ["batch", "labeled-response", "echo-message"])
    # e's replay done (a line reaching e after it): a line for a client
    # still replaying goes through its replay, unlabeled, and the asker
    # gets an ACK (seen under load)
    c.send("PRIVMSG %s :e-caught-up" % CHAN)
    loop.run_until(lambda: [m for m in e.msgs("PRIVMSG") if m.params[-1] == "e-caught-up"],
                   10, "e caught up")
    n, ne, no = len(c.lines), len(e.lines), len(o.lines)
    e.send("@label=e1 PRIVMSG %s :labeled-echo" % CHAN)
    got = label_answer(e, "e1", ne, loop=loop)
    check([m.command for m in got] == ["PRIVMSG"] and got[0].params == [CHAN, "labeled-echo"],
          "the labeled echo: %s" % [m.raw for m in got])
    c.send("@label=e2 PRIVMSG %s :no-echo-cap" % CHAN)
    got = label_answer(c, "e2", n, loop=loop)
    check([m.command for m in got] == ["ACK"], "without echo-message: %s" % [m.raw for m in got])
    e.send("@label=e3 PRIVMSG nosuchnick :refused")
    got = label_answer(e, "e3", ne, loop=loop)
    check([m.command for m in got] == ["401"], "a refused message: %s" % [m.raw for m in got])
    loop.run_until(lambda: [m for m in o.msgs("PRIVMSG", no) if m.params[-1] == "no-echo-cap"],
                   5, "the other client's copy")
    check(len([m for m in e.msgs("PRIVMSG", ne) if m.params[-1] == "labeled-echo"]) == 1
          and not [m for m in c.msgs("PRIVMSG", n) if m.params[-1] == "no-echo-cap"]
          and not [m for m in o.msgs(None, no) if {"label", "batch"} & set(tag_dict(m.tags))],
          "echoes: e %s c %s o %s" % ([m.raw for m in e.msgs(None, ne)],
                                      [m.raw for m in c.msgs(None, n)],
                                      [m.raw for m in o.msgs(None, no)]))

    no = len(o.lines)
    c2.send("@label=gone WHO %s" % CHAN)
    c2.close()
    loop.run_for(1.0)
    check(not o.msgs("352", no) and not o.msgs("BATCH", no),
          "the answer of a client that left: %s" % [m.raw for m in o.msgs(None, no)])
    # the network's labeled-response travels with the session (its caps)
    rc, res = b.upgrade(B)
    check(rc == 0 and res.get("result") == "committed", "upgrade: %s" % res)
    n = len(c.lines)
    c.send("@label=up1 WHO %s" % CHAN)
    got = label_answer(c, "up1", n, loop=loop)
    check(got[0].command == "BATCH" and "315" in [m.command for m in got],
          "WHO after the upgrade: %s" % [m.raw for m in got])
    check("protocol error" not in b.log_text(), "our output refused: %s" % b.log_tail())
    for cl in (c, o):
        check(not cl.closed, "%s closed: %s" % (cl.name, cl.close_reason))
