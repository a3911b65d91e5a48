"""Client activity racing a chunked migration.

A client may QUIT (detach) or log in at any moment, including while its
session or the listeners are being handed over. Neither may cost a line
(the QUIT'ing client must get everything queued before its QUIT, and the
rest on replay) or be refused: 'nobody is disconnected, nothing is lost
or duplicated' (docs/design.md §2, §9)."""

import batonlib as bl
from batonlib import check

NSESSIONS = 24
NOPS = 12
PER_OP = 6


def test_detach_and_login_during_chunked_migration(ctx):
    """24 sessions migrated in chunks of 4 (6 transactions per upgrade), all
    with a client attached, network traffic at ~60 lines/s; 12 upgrades
    alternating A<->B. Around each upgrade 6 clients send QUIT and the 6
    that QUIT at the previous upgrade log in again (same client name), each
    at a random moment 0-200 ms after the upgrade started (i.e. during the
    migration). Asserted: every upgrade commits; every login succeeds (no
    'session not available', no closed connection); every client receives
    every line addressed to it exactly once in per-sender order across its
    connections (no gap at the detach, no duplicate in the replay); the
    network sees no JOIN/PART/QUIT of bouncer nicks."""
    A = ctx.builds["a"].require()
    B = ctx.builds["b"].require()
    scen = bl.LoadScenario(ctx, nsessions=NSESSIONS, nattached=NSESSIONS, nnet=4,
                           baton_kw=dict(sessiond_opts=dict(bl.roomy_backlog(5000),
                                                            chunk_sessions=4)))
    scen.setup()
    loop, rng, b = scen.loop, scen.rng, scen.baton
    scen.start_fixed_traffic(client_rate=10.0, net_rate=60.0, pm_ratio=0.3)
    loop.run_for(1.0)
    users = sorted(scen.clients)
    rng.shuffle(users)
    prev = []
    builds = [B, A]
    attempts = []
    for i in range(NOPS):
        quitting = [scen.clients[u] for u in users[(i * PER_OP) % NSESSIONS:][:PER_OP]
                    if scen.clients[u] not in prev]
        p = b.ctl_async("upgrade", builds[i % 2].sessiond, "--json")
        for cl in quitting:
            loop.call_later(rng.uniform(0.0, 0.2), cl.detach)
        for cl in prev:
            loop.call_later(rng.uniform(0.0, 0.2), relogin, scen, cl, attempts)
        loop.wait_process(p, timeout=120)
        rc, res, out, err = b.finish_ctl(p)
        check(rc == 0 and (res or {}).get("result") == "committed",
              "upgrade %d: exit %d %r %r" % (i + 1, rc, res, err[-300:]))
        prev = quitting
        loop.run_for(1.0)
    for cl in prev:
        relogin(scen, cl, attempts)
    loop.run_until(lambda: all(c.state == "attached" or c.conn.closed for c in scen.clients.values()),
                   20, raise_on_timeout=False)
    refused = [c.conn.name for c in scen.clients.values() if c.conn.closed]
    loop.run_for(2.0)
    check(not refused, "logins refused/closed: %s; e.g. last lines %s"
          % (refused, [ln for _, ln in scen.clients[refused[0].split(":")[1].split("@")[0]]
                       .conn.lines[-3:]] if refused else None))
    sent, got = scen.verify(drain_timeout=30)
    bl.log("%d relogins during migrations, %d lines, %d deliveries" % (len(attempts), sent, got))


def relogin(scen, cl, attempts, tries=100):
    """Log cl in again once its previous connection is closed (timer-safe)."""
    if cl.state == "detached":
        cl.attach()
        attempts.append(bl.now())
    elif tries > 0:
        scen.loop.call_later(0.05, relogin, scen, cl, attempts, tries - 1)
    else:
        raise AssertionError("client %s stuck in state %s" % (cl.user, cl.state))


def test_slow_client_output_survives_upgrade(ctx):
    """A slow client (4 KiB receive buffer, not reading) is sent 30000
    lines (~2.7 MB, more than the kernel socket buffers hold, so output
    backs up inside the bouncer); an upgrade A->B moves that unflushed
    output with the connection. When the client reads again it receives all
    30000 lines exactly once and in order on the same, still open TCP
    connection, followed by a live line."""
    A = ctx.builds["a"].require()
    B = ctx.builds["b"].require()
    n = 30000    # ~2.7 MB: more than the kernel socket buffers hold
    ng = ctx.ngircd()
    b = bl.Baton(ctx, ng, nsessions=1, channels=["#chat"],
                 sessiond_opts=bl.roomy_backlog(40000))
    b.start()
    dave = bl.direct_user(ctx.loop, ng, "dave", ["#chat"])
    s = b.sessions[0]
    slow = bl.bouncer_client(ctx.loop, b, s, client="slow", rcvbuf=4096)
    slow.pause_reading()
    pad = "y" * 60
    dave.send_many("PRIVMSG #chat :<<dave:%d>> %s" % (i, pad) for i in range(1, n + 1))
    ctx.loop.run_for(3.0)
    rc, res = b.upgrade(B)
    check(rc == 0 and res.get("result") == "committed", "upgrade: exit %d %r" % (rc, res))
    dave.privmsg("#chat", "<<dave:%d>> live after upgrade" % (n + 1))
    ctx.loop.run_for(0.5)
    slow.resume_reading()
    want = [("dave", i) for i in range(1, n + 2)]
    ctx.loop.run_until(lambda: len([1 for _, ln in slow.lines if "<<dave:" in ln]) >= n + 1
                       or slow.closed, 40, raise_on_timeout=False)
    ctx.loop.run_for(0.5)
    got = [tk for _, ln in slow.lines for tk in bl.tokens(ln)]
    check(not slow.closed, "slow client closed (%s) after %d lines" % (slow.close_reason, len(got)))
    check(got == want, "slow client: %d lines, missing %d, duplicated %d, in order: %s"
          % (len(got), len(set(want) - set(got)), len(got) - len(set(got)), got == sorted(got)))


def test_login_completing_during_chunked_migration(ctx):
    """Ten clients connect and send PASS+NICK (unauthenticated: 'pending'
    in the bouncer); an upgrade of 40 sessions in chunks of 4 starts, the
    sessions carrying ~3000 backlog lines each so the chunks take a while;
    the clients complete their login (USER) at staggered moments 0-90 ms
    into the upgrade, while their sessions (u030..u039, the last chunks)
    are still in flight. Every login must succeed (001 and JOIN, connection
    open) on whichever worker completes it, in each of three upgrades: a
    login racing the handoff is never refused."""
    A = ctx.builds["a"].require()
    B = ctx.builds["b"].require()
    ng = ctx.ngircd()
    b = bl.Baton(ctx, ng, nsessions=40, channels=["#chat"],
                 sessiond_opts=dict(bl.roomy_backlog(5000), chunk_sessions=4))
    b.start()
    loop = ctx.loop
    dave = bl.direct_user(loop, ng, "dave", ["#chat"])
    dave.send_many("PRIVMSG #chat :backlog filler line %d %s" % (i, "z" * 60) for i in range(3000))
    loop.run_for(3.0)
    refused = []
    total = 0
    for rnd, target in enumerate([B, A, B]):
        pend = []
        for s in b.sessions[30:40]:
            c = loop.connect(b.port, name="late:%s#%d" % (s.user, rnd))
            c.send("PASS %s" % s.pass_line("late%d" % rnd))
            c.send("NICK %s" % s.nick)
            pend.append((s, c))
        loop.run_for(0.3)                    # pending in the current worker
        p = b.ctl_async("upgrade", target.sessiond, "--json")
        for k, (s, c) in enumerate(pend):
            loop.call_later(0.01 * k, c.send, "USER %s 0 * :late" % s.user)
        loop.wait_process(p, timeout=60)
        rc, res, out, err = b.finish_ctl(p)
        check(rc == 0 and (res or {}).get("result") == "committed",
              "upgrade %d: exit %d %r" % (rnd + 1, rc, res))
        bl.log("upgrade %d: %.1f ms total" % (rnd + 1, res.get("total_ms", -1)))
        for s, c in pend:
            total += 1
            ok = loop.run_until(lambda: c.closed or "#chat" in bl.joined_channels(c, s.nick), 10,
                                raise_on_timeout=False)
            if c.closed or not ok:
                refused.append("%s: %s, last lines %s" % (c.name, c.close_reason or "no JOIN",
                                                         [ln for _, ln in c.lines[-2:]]))
    check(not refused, "%d of %d logins racing a migration failed:\n    %s"
          % (len(refused), total, "\n    ".join(refused[:6])))
