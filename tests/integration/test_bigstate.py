"""Sessions whose state grows without bound (issue 8, bug 2): each test
grows one session the way a user or a stranger can (a private-message flood
from many nicks, a bouncer user writing to many targets, hundreds of clients,
clients that stop reading) and then runs `batonctl upgrade` and `rollback`,
which must commit while another user's client receives every channel line
exactly once. Before the fix each of these made every migration fail with
"sending chunk failed: Invalid argument" (the session's state was over the
16 MiB frame, or its fds over 253).

Sessions: u000 (nick bn000) is the one that grows; u001 (bn001) is the
other user, with a client "other" in #chat, where the direct user dave
talks during the migrations."""

import batonlib as bl
from batonlib import check

# run.py --jobs: these tests run with no other test beside them
# (large sessions under deadlines).
RUN_ALONE = True

CHANNELS = ["#chat"]


def setup(ctx, sessiond_opts=None, nsessions=2):
    ng = ctx.ngircd()
    b = bl.Baton(ctx, ng, nsessions=nsessions, channels=CHANNELS,
                 sessiond_opts=sessiond_opts)
    w = bl.Watcher(ctx.loop, ng, CHANNELS, watch=[s.nick for s in b.sessions])
    b.start(wait=False)
    bl.pump_ready(ctx, b)
    w.wait_present([s.nick for s in b.sessions], timeout=30)
    dave = bl.direct_user(ctx.loop, ng, "dave", CHANNELS)
    other = bl.bouncer_client(ctx.loop, b, b.sessions[1], client="other")
    return ng, w, b, dave, other


def token_lines(conn):
    return [tk for _, ln in conn.lines for tk in bl.tokens(ln)]


def migrate_both_ways(ctx, b, dave, other, base=1000000):
    """upgrade to B, then rollback, each while dave talks in #chat every
    20 ms; both must commit, and `other` (u001's client) must get dave's
    lines exactly once in order, without its connection closing. Returns
    the two results."""
    results = []
    sent = []
    n = {"i": base}
    for op in ("upgrade", "rollback"):
        p = b.ctl_async("rollback", "--json") if op == "rollback" else \
            b.ctl_async("upgrade", ctx.builds["b"].require().sessiond, "--json")

        def tick():
            if p.poll() is not None:
                return False
            n["i"] += 1
            dave.privmsg("#chat", "<<dave:%d>> during %s" % (n["i"], op))
            sent.append(("dave", n["i"]))
            return True
        ctx.loop.every(0.02, tick)
        ctx.loop.wait_process(p, timeout=180)
        rc, res, out, err = b.finish_ctl(p)
        check(rc == 0 and res and res.get("result") == "committed",
              "%s: exit %d, result %r %s; log:\n%s" % (op, rc, res, err[-300:], b.log_tail(15)))
        bl.log("%s: %d sessions, %d fds, %d chunks, freeze %.1f ms, total %.1f ms, trimmed %s"
               % (op, res["sessions"], res["fds"], res["chunks"], res["freeze_ms"],
                  res["total_ms"], res.get("shrunk")))
        results.append(res)
        n["i"] += 1
        dave.privmsg("#chat", "<<dave:%d>> after %s" % (n["i"], op))
        sent.append(("dave", n["i"]))
    want = set(sent)
    ctx.loop.run_until(lambda: want <= set(token_lines(other)), 20, raise_on_timeout=False)
    ctx.loop.run_for(0.5)
    got = [tk for tk in token_lines(other) if tk in want]
    check(got == sent, "other user's client: %d of %d lines, duplicated %d, in order %s"
          % (len(set(got)), len(sent), len(got) - len(set(got)), got == sorted(got)))
    check(not other.closed, "other user's client closed: %s" % other.close_reason)
    return results


def test_pm_flood_from_strangers(ctx):
    """Bug: 75 network users without an account flooding one bouncer user
    with 37,500 private messages of 440 characters in 9 s (75 query buffers
    of 500 lines, ~19 MB of backlog) made every upgrade and rollback fail.
    At the default limits the backlog stays within 100 buffers and 4 MiB;
    the user's client is told that lines were dropped; upgrade and rollback
    commit; another user loses nothing. Without a store: with one, the
    backlog in memory is a cache of backlog_cache_lines per buffer (far
    below these bounds) and what it drops is in the store, not lost."""
    nstrangers, per, textlen = 75, 500, 440
    ng, w, b, dave, other = setup(ctx, sessiond_opts={"store": "off"})
    victim = b.sessions[0]
    phone = bl.bouncer_client(ctx.loop, b, victim, client="phone")
    strangers = [bl.direct_user(ctx.loop, ng, "s%02d" % i) for i in range(nstrangers)]
    t0 = bl.now()
    pad = "x" * (textlen - 16)
    sent = {"k": 0}

    def tick():  # the report's pace: everything within 9 s
        if sent["k"] >= per:
            return False
        batch = range(sent["k"] + 1, min(per, sent["k"] + 6) + 1)
        for i, s in enumerate(strangers):
            s.send_many("PRIVMSG %s :<<s%02d:%d>> %s" % (victim.nick, i, k, pad) for k in batch)
        sent["k"] = batch[-1]
        return True
    ctx.loop.every(0.1, tick)
    want = {("s%02d" % i, per) for i in range(nstrangers)}
    ok = ctx.loop.run_until(lambda: want <= set(token_lines(phone)), 60,
                            raise_on_timeout=False)
    if not ok:
        got = set(token_lines(phone))
        closed = [(s.name, s.close_reason) for s in strangers if s.closed]
        counts = sorted(sum(1 for t in got if t[0] == "s%02d" % i) for i in range(nstrangers))
        check(False, "the flood did not reach the victim's client: per-sender counts %s; "
              "strangers closed %s; phone closed %s; stranger errors %s"
              % (counts[:5] + counts[-5:], closed[:5], phone.close_reason,
                 [s.errors[:1] for s in strangers if s.errors][:3]))
    bl.log("%d PMs of %d characters from %d nicks delivered in %.1f s"
           % (nstrangers * per, textlen, nstrangers, bl.now() - t0))
    check(not phone.closed, "victim's client closed: %s" % phone.close_reason)
    notices = [ln for _, ln in phone.lines if " NOTICE " in ln and "dropped" in ln]
    check(notices, "no notice about dropped backlog lines reached the victim's client")
    bl.log("notice: %s" % notices[0][:200])
    migrate_both_ways(ctx, b, dave, other)
    # What the backlog kept: a new client name replays all of it.
    late = bl.bouncer_client(ctx.loop, b, victim, client="late")
    ctx.loop.run_for(3.0)
    replayed = [tk for tk in token_lines(late) if tk[0].startswith("s")]
    senders = {s for s, _ in replayed}
    nbytes = sum(len(ln) for _, ln in late.lines if " PRIVMSG " in ln)
    bl.log("replay to a new client: %d lines from %d senders, %d bytes"
           % (len(replayed), len(senders), nbytes))
    check(0 < len(replayed) and len(senders) <= 100, "replay: %d lines from %d buffers"
          % (len(replayed), len(senders)))
    check(nbytes <= 4 * 1024 * 1024 + 64 * 1024, "replay of %d bytes: over the 4 MiB backlog" % nbytes)
    check(not phone.closed, "victim's client closed: %s" % phone.close_reason)


def test_bouncer_user_many_targets(ctx):
    """Bug: one bouncer user sending 2,000 PRIVMSGs to 50 targets each
    (100,000 backlog lines with backlog_lines = 2000) made every upgrade and
    rollback fail. The session totals (20,000 lines, 4 MiB) bound it;
    upgrade and rollback commit; another user loses nothing. Without a
    store (with one, the cache's backlog_cache_lines bound it far below)."""
    nmsg, ntargets = 2000, 50
    ng, w, b, dave, other = setup(ctx, sessiond_opts={"backlog_lines": 2000,
                                                      "store": "off"})
    u = b.sessions[0]
    c = bl.bouncer_client(ctx.loop, b, u, client="desk")
    targets = ",".join("q%02d" % i for i in range(ntargets))
    pad = "y" * 180
    c.send_many("PRIVMSG %s :<<u000:%d>> %s" % (targets, k, pad) for k in range(1, nmsg + 1))
    # The network answers in order: its reply to a WHOIS sent after the
    # messages says that all of them went through.
    c.send("WHOIS zz-end")
    ctx.loop.run_until(lambda: c.find(lambda m: m.command == "318" and m.param(1) == "zz-end")
                       is not None or c.closed, 90, "the network answering all %d messages" % nmsg)
    bl.log("client got %d 401 replies" % len(c.msgs("401")))
    check(not c.closed, "client closed: %s" % c.close_reason)
    notices = [ln for _, ln in c.lines if " NOTICE " in ln and "dropped" in ln]
    check(notices, "no notice about dropped backlog lines reached the client")
    bl.log("notice: %s" % notices[0][:200])
    migrate_both_ways(ctx, b, dave, other)
    late = bl.bouncer_client(ctx.loop, b, u, client="late")
    ctx.loop.run_for(3.0)
    replayed = [tk for tk in token_lines(late) if tk[0] == "u000"]
    bl.log("replay to a new client: %d lines" % len(replayed))
    check(0 < len(replayed) <= 20000, "replay of %d lines: over the 20,000-line session bound"
          % len(replayed))


def test_254_clients(ctx):
    """Bug: one user attaching 254 clients (255 sockets in one session, over
    the 253 fds one message can carry) made every upgrade and rollback
    fail. With max_clients_per_session at its maximum (252: one session item
    then carries 253 fds, exactly the limit) the 253rd and 254th client get
    an ERROR and are closed; upgrade and rollback commit with every
    attached client still connected."""
    cap, tries = 252, 254
    ng, w, b, dave, other = setup(ctx, sessiond_opts={"max_clients_per_session": cap})
    u = b.sessions[0]
    conns = [bl.bouncer_client(ctx.loop, b, u, client="c%03d" % i, wait=False)
             for i in range(tries)]

    def settled():
        return all(c.closed or c.registered for c in conns)
    ctx.loop.run_until(settled, 60, "every client attached or refused")
    ctx.loop.run_for(0.5)
    attached = [c for c in conns if not c.closed]
    refused = [c for c in conns if c.closed]
    bl.log("%d attached, %d refused: %s" % (len(attached), len(refused),
                                             refused[0].errors[:1] if refused else None))
    check(len(attached) == cap and len(refused) == tries - cap,
          "%d attached, %d refused (want %d, %d)" % (len(attached), len(refused), cap, tries - cap))
    check(all(c.errors and "too many clients" in c.errors[0][1] for c in refused),
          "refused clients' ERROR: %s" % [c.errors for c in refused])
    check(b.worker()["clients"] == cap + 1, "status clients %r" % b.worker().get("clients"))
    res = migrate_both_ways(ctx, b, dave, other)
    check(res[0]["fds"] == cap + 1 + 2, "upgrade moved %d fds (want %d)" % (res[0]["fds"], cap + 3))
    dave.privmsg(u.nick, "<<dave:1>> to all clients")
    ctx.loop.run_until(lambda: all(("dave", 1) in token_lines(c) for c in attached), 20,
                       "every attached client getting a line after the rollback")
    check(all(not c.closed for c in attached), "attached clients closed: %s"
          % [c.close_reason for c in attached if c.closed][:3])


def test_stalled_clients_shrunk_to_fit(ctx):
    """Last line of defence: clients' unwritten output is bounded per client
    (4 MiB) but not per session. 24 clients of one session stop reading
    while 45,000 lines (4.05 MB: below one client's sendq, so none is
    closed for it, however little its kernel socket takes) reach them.
    Each client then holds its output (in the bouncer or in the kernel)
    and a delivery mark per unacknowledged line (>= 0.54 MB in the state),
    so with the backlog of those lines the session is over one migration
    message whatever the kernels took: the upgrade still commits, after
    disconnecting the clients with the most output (counted in the
    result's "shrunk"); they log in again with the same client names and,
    across both connections, get every line exactly once; another user
    loses nothing."""
    nclients, nlines = 24, 45000
    # The backlog keeps all of them (the disconnected clients replay
    # nearly all), with channels and member lists lowered to make room.
    opts = {"backlog_lines": 60000, "backlog_session_lines": 60000,
            "max_clients_per_session": 32,
            "backlog_buffer_bytes": 8 << 20, "backlog_session_bytes": 8 << 20,
            "max_channels": 10, "member_list_bytes": 1 << 20}
    ng, w, b, dave, other = setup(ctx, sessiond_opts=opts)
    u = b.sessions[0]
    slow = [bl.bouncer_client(ctx.loop, b, u, client="slow%d" % i, rcvbuf=4096)
            for i in range(nclients)]
    for c in slow:
        c.pause_reading()
    pad = "z" * 60
    # In steps of 300 lines (27 KB), each through the bouncer (another
    # user's client got its last line) before the next: ngircd drops a
    # connection whose write buffer passes 32 KB ("Write buffer space
    # exhausted"), and the worker, busy queueing every line for 24
    # stalled clients, did not always read its two upstreams that fast
    # (1 run in 3 lost both sessions mid-flood and never got the last
    # line). Every line is in the bouncer afterwards, so the stalled
    # clients' output is all queued whatever the machine's load.
    step, seen = 300, [0]

    def through(last):
        for _, ln in other.lines[seen[0]:]:
            if "<<dave:%d>>" % last in ln:
                seen[0] = len(other.lines)
                return True
        return False
    for first in range(1, nlines + 1, step):
        last = min(first + step - 1, nlines)
        dave.send_many("PRIVMSG #chat :<<dave:%d>> %s" % (i, pad) for i in range(first, last + 1))
        ctx.loop.run_until(lambda: through(last), 30, "line %d through the bouncer" % last)
    check(("dave", nlines) in set(token_lines(other)), "the last line not at the other user")
    ctx.loop.run_for(1.0)
    res = migrate_both_ways(ctx, b, dave, other)
    sh = res[0].get("shrunk") or {}
    check(sh.get("sessions") == 1 and sh.get("clients", 0) >= 1,
          "upgrade did not shrink the session by its stalled clients: %r" % sh)
    check(sh.get("backlog_lines") == 0, "backlog lines dropped although clients could go: %r" % sh)
    check("state shrunk to fit one migration message" in b.log_text(), "no log line about the shrink")
    want = [("dave", i) for i in range(1, nlines + 1)]
    for i, c in enumerate(slow):
        c.resume_reading()
    ctx.loop.run_for(2.0)
    gone = [i for i, c in enumerate(slow) if c.closed]
    bl.log("%d stalled clients disconnected by the upgrade: %s" % (len(gone), gone))
    check(len(gone) == sh["clients"], "%d clients closed, result says %d" % (len(gone), sh["clients"]))
    again = {i: bl.bouncer_client(ctx.loop, b, u, client="slow%d" % i) for i in gone}
    for i, c in enumerate(slow):
        conns = [c] + ([again[i]] if i in again else [])
        ctx.loop.run_until(lambda: set(want) <= {t for x in conns for t in token_lines(x)}, 60,
                           raise_on_timeout=False)
        got = [t for x in conns for t in token_lines(x) if t[0] == "dave" and t[1] <= nlines]
        check(got == want, "client slow%d (%s): %d of %d lines, duplicated %d, in order %s"
              % (i, "reconnected" if i in again else "kept", len(set(got)), nlines,
                 len(got) - len(set(got)), got == sorted(got)))


def test_big_session_alone_in_its_chunk(ctx):
    """Bug: a chunk closed only after the item that took it past
    chunk_bytes, so a session far over chunk_bytes froze every session
    before it in its chunk for as long as it took. Sessions u000..u005 in
    config order, u003 holding ~256 KB of backlog, chunk_bytes 64 KiB: the
    upgrade and the rollback each move u000-u002, then u003 alone, then
    u004-u005 (3 chunks; 2 before: u000-u003, u004-u005). With `store =
    off`: with the store the committed backlog travels as a position
    (state schema 3) and no session is big."""
    ng, w, b, dave, other = setup(ctx, nsessions=6,
                                  sessiond_opts={"chunk_bytes": 65536, "store": "off"})
    big = b.sessions[3]
    pad = "b" * 250
    dave.send_many("PRIVMSG %s :<<dave:%d>> %s" % (big.nick, i, pad) for i in range(1, 1201))
    ctx.loop.run_until(lambda: dave.pending_output() == 0, 30, "dave's lines sent")
    ctx.loop.run_for(1.0)
    res = migrate_both_ways(ctx, b, dave, other)
    for op, r in zip(("upgrade", "rollback"), res):
        check(r["chunks"] == 3 and r["sessions"] == 6,
              "%s: %d chunks for %d sessions (want 3: the big session alone)"
              % (op, r["chunks"], r["sessions"]))
    check(b.log_text().count("travels alone in the next chunk") >= 2,
          "no log line about the big item travelling alone")
