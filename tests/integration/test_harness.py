"""Self-tests of the harness against ngircd alone (no baton binaries needed).

They prove the instruments the other tests rely on are sound: if one of these
fails, a failure elsewhere says nothing about baton."""

import batonlib as bl
from batonlib import check


def test_ngircd_relays_without_throttling(ctx):
    """ngircd fixture + client library: 2000 numbered lines sent in one burst
    by one direct user reach another user and the watcher exactly once, in
    order, within 20 s (no flood penalty), and nobody is disconnected."""
    ng = ctx.ngircd()
    loop = ctx.loop
    led = bl.Ledger()
    w = bl.Watcher(loop, ng, ["#a", "#b"], ledger=led)
    a = bl.direct_user(loop, ng, "alice", ["#a"])
    b = bl.direct_user(loop, ng, "bob", ["#a", "#b"])
    led.hook(b, "bob")
    n = 2000
    a.send_many("PRIVMSG #a :%s some text" % led.next("alice", "#a") for _ in range(n))
    loop.run_until(lambda: len(led.received["bob"]) >= n and len(led.received["watcher"]) >= n,
                   20, "burst delivery")
    bad = led.diff({"bob": set(led.sent), "watcher": set(led.sent)})
    check(not bad, bl.Ledger.format_diff(bad))
    check(not (a.closed or b.closed or w.conn.closed), "a connection closed")
    check(w.members["#a"] >= {"alice", "bob", "watcher"}, "watcher members %s" % w.members)


def test_client_library_close_and_ping(ctx):
    """IrcConn records a server-side close (QUIT -> ERROR + EOF, reason 'eof'),
    answers server PINGs (no timeout), and the watcher records QUIT/NICK/PART
    of watched nicks only."""
    ng = ctx.ngircd()
    loop = ctx.loop
    w = bl.Watcher(loop, ng, ["#x"], watch={"carol", "carol2"})
    c = bl.direct_user(loop, ng, "carol", ["#x"])
    d = bl.direct_user(loop, ng, "dave", ["#x"])
    c.send("PING :hello")
    loop.run_until(lambda: c.find(lambda m: m.command == "PONG"), 5, "PONG")
    c.send("NICK carol2")
    c.send("PART #x :gone")
    d.send("PART #x :not watched")
    c.quit("bye")
    loop.run_until(lambda: c.closed, 5, "close after QUIT")
    check(c.close_reason == "eof", "close reason %r" % c.close_reason)
    check(c.errors, "no ERROR line recorded before close")
    loop.run_for(0.3)
    kinds = [e[1] for e in w.events]
    check(kinds == ["JOIN", "NICK", "PART"], "watcher events %s" % w.events)
    check(not d.closed, "dave closed")


def test_trace_driver_exactly_once(ctx):
    """Trace loader + trace-driven network users (joins, parts, real quits
    and reconnects, nick changes, messages, actions) against ngircd: every
    numbered channel line reaches the watcher exactly once and in per-sender
    order, and no network user is disconnected by the server."""
    ng = ctx.ngircd()
    scen = bl.LoadScenario(ctx, nsessions=0, nattached=0, nnet=8)
    scen.ngircd = ng
    scen.watcher = bl.Watcher(ctx.loop, ng, scen.channels, watch=set(), ledger=scen.ledger)
    for i in range(scen.nnet):
        scen.netusers.append(bl.NetUser(scen, i, scen.channels))
    window = scen.start_trace_traffic(duration=6.0, privmsg_rate=40)
    types = {e["type"] for _, e in window}
    check({"privmsg", "join", "quit"} <= types, "trace window lacks event types: %s" % types)
    ctx.loop.run_for(6.5)
    scen.stop_traffic()
    exp = {"watcher": set(scen.ledger.sent)}
    ctx.loop.run_until(lambda: len(scen.ledger.received["watcher"]) >= len(exp["watcher"]), 10,
                       raise_on_timeout=False)
    bad = scen.ledger.diff(exp)
    check(not bad, bl.Ledger.format_diff(bad))
    check(len(scen.ledger.sent) >= 150, "only %d lines sent" % len(scen.ledger.sent))
    closes = [c.name for nu in scen.netusers for c in nu.unexpected_closes()]
    check(not closes, "network users closed by server: %s" % closes)
    bl.log("trace window: %s; %d lines" % (dict(scen.trace_stats), len(scen.ledger.sent)))


def test_time_compression():
    """compress_trace maps the window onto [0, duration], keeps order, and
    caps idle gaps before scaling."""
    ev = [{"t": 0}, {"t": 10}, {"t": 1000}, {"t": 1010}]
    out = bl.compress_trace(ev, 3.0, max_gap=10)
    offs = [o for o, _ in out]
    check(offs == [0.0, 1.0, 2.0, 3.0], "offsets %s" % offs)

