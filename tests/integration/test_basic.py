"""Basic behaviour of baton against a real ngircd: login, relaying in both
directions, several clients per session, authentication, detach, backlog
replay by client name, config checking, status, one upgrade and a rollback.

Every test runs one bouncer user u000 (nick bn000) on network 'net' in
#chat and #ops, plus a direct ngircd user 'dave' and a watcher."""

import os
import re
import subprocess

import batonlib as bl
from batonlib import check

CHANNELS = ["#chat", "#ops"]


def setup(ctx, nsessions=1, **kw):
    """ngircd + watcher + baton (all sessions registered and in channels) +
    a direct user 'dave' in CHANNELS. Returns (ngircd, watcher, baton, dave)."""
    ng = ctx.ngircd()
    b = bl.Baton(ctx, ng, nsessions=nsessions, channels=CHANNELS, **kw)
    w = bl.Watcher(ctx.loop, ng, CHANNELS, watch=[s.nick for s in b.sessions])
    b.start(wait=False)
    bl.pump_ready(ctx, b)
    w.wait_present([s.nick for s in b.sessions], timeout=30)
    dave = bl.direct_user(ctx.loop, ng, "dave", CHANNELS)
    return ng, w, b, dave



def token_lines(conn, since=0):
    """[(sender, n)] of numbered lines conn received, in arrival order."""
    out = []
    for _, ln in conn.lines[since:]:
        out += bl.tokens(ln)
    return out


def wait_tokens(ctx, conn, want, timeout=10, settle=0.7):
    """Pump until conn received every (sender, n) in want, then a little
    longer to catch duplicates. Returns the arrival list."""
    want = set(want)
    ctx.loop.run_until(lambda: want <= set(token_lines(conn)), timeout, raise_on_timeout=False)
    ctx.loop.run_for(settle)
    return token_lines(conn)


def exactly_once(got, want, who):
    """got (arrival list) holds every element of want exactly once, in order."""
    sub = [x for x in got if x in set(want)]
    check(sub == list(want), "%s: expected exactly %s in order, got %s" % (who, list(want), sub))


def each_once(got, want, who):
    """got holds every element of want exactly once (any order)."""
    for x in want:
        check(got.count(x) == 1, "%s: %s arrived %d times (want once); got %s"
              % (who, x, got.count(x), got))


def test_login_and_relay(ctx):
    """A client logging in with PASS u000/net:pw gets 001..005 before the
    JOINs of both configured channels (each JOIN followed by NAMES 353/366);
    a channel line and a private line from a direct ngircd user reach it
    exactly once; its channel line and private line reach the direct user
    exactly once; a client PING is answered with a PONG."""
    ng, w, b, dave = setup(ctx)
    s = b.sessions[0]
    c = bl.bouncer_client(ctx.loop, b, s, client="laptop")
    cmds = [bl.parse(ln).command for _, ln in c.lines]
    for num in ("001", "002", "003", "004", "005"):
        check(num in cmds, "no %s in welcome; got %s" % (num, cmds[:20]))
    first_join = cmds.index("JOIN")
    check(max(cmds.index(n) for n in ("001", "002", "003", "004")) < first_join,
          "welcome numerics after JOIN: %s" % cmds[:30])
    check(cmds.index("005") < first_join, "005 after JOIN: %s" % cmds[:30])
    joined = bl.joined_channels(c, c.nick)
    check(joined == {"#chat", "#ops"}, "joined %s" % joined)
    check(c.nick == s.nick, "001 nick %r, session nick %r" % (c.nick, s.nick))
    ctx.loop.run_until(lambda: cmds_of(c).count("366") >= 2, 5, "NAMES end (366) for both channels")

    # network -> client
    dave.privmsg("#chat", "<<dave:1>> hello channel")
    dave.privmsg(s.nick, "<<dave:2>> hello private")
    got = wait_tokens(ctx, c, [("dave", 1), ("dave", 2)])
    exactly_once(got, [("dave", 1), ("dave", 2)], "client")
    m = c.find(lambda m: "<<dave:1>>" in m.raw)
    check(m.command == "PRIVMSG" and m.param(0) == "#chat" and m.nick == "dave",
          "channel line arrived as %r" % m.raw)

    # client -> network
    c.privmsg("#chat", "<<u000:1>> hi from the bouncer")
    c.privmsg("dave", "<<u000:2>> private from the bouncer")
    got = wait_tokens(ctx, dave, [("u000", 1), ("u000", 2)])
    exactly_once(got, [("u000", 1), ("u000", 2)], "dave")
    m = dave.find(lambda m: "<<u000:1>>" in m.raw)
    check(m.nick.lower() == s.nick and m.param(0) == "#chat", "client line arrived as %r" % m.raw)

    # local PING
    c.send("PING :baton-ping-42")
    ctx.loop.run_until(lambda: c.find(lambda m: m.command == "PONG" and "baton-ping-42" in m.raw),
                       5, "PONG to client PING")
    check(not c.closed and not dave.closed, "a connection closed")


def cmds_of(c):
    return [bl.parse(ln).command for _, ln in c.lines]


def test_two_clients_one_session(ctx):
    """Two clients (laptop, phone) attached to the same session: a line sent
    by one goes upstream exactly once (dave sees it once) and is shown
    exactly once to the other client, not echoed to the sender; a network
    line reaches both exactly once."""
    ng, w, b, dave = setup(ctx)
    s = b.sessions[0]
    lap = bl.bouncer_client(ctx.loop, b, s, client="laptop")
    pho = bl.bouncer_client(ctx.loop, b, s, client="phone")
    lap.privmsg("#chat", "<<lap:1>> from laptop")
    pho.privmsg("#ops", "<<pho:1>> from phone")
    dave.privmsg("#chat", "<<dave:1>> to both")
    got_d = wait_tokens(ctx, dave, [("lap", 1), ("pho", 1)])
    each_once(got_d, [("lap", 1), ("pho", 1)], "dave")   # two connections: no order
    got_l = wait_tokens(ctx, lap, [("pho", 1), ("dave", 1)], settle=0.2)
    got_p = wait_tokens(ctx, pho, [("lap", 1), ("dave", 1)], settle=0.2)
    exactly_once(got_l, [("pho", 1)], "laptop (line of phone)")
    exactly_once(got_l, [("dave", 1)], "laptop (line of dave)")
    exactly_once(got_p, [("lap", 1)], "phone (line of laptop)")
    exactly_once(got_p, [("dave", 1)], "phone (line of dave)")
    check(("lap", 1) not in got_l, "laptop got its own line echoed: %s" % got_l)
    check(("pho", 1) not in got_p, "phone got its own line echoed: %s" % got_p)
    m = pho.find(lambda m: "<<lap:1>>" in m.raw)
    check(m.command == "PRIVMSG" and m.param(0) == "#chat" and (m.nick or "").lower() == s.nick,
          "phone saw laptop's line as %r (want :%s!... PRIVMSG #chat)" % (m.raw, s.nick))


def test_bad_password(ctx):
    """A wrong password, an unknown user and an unknown network each get
    numeric 464 and the connection is closed by the bouncer within 5 s; no
    001 is sent; the session's upstream is untouched."""
    ng, w, b, dave = setup(ctx)
    s = b.sessions[0]
    cases = {"wrong password": "u000/net:wrong",
             "unknown user": "nobody/net:secret",
             "unknown network": "u000/nonet:secret"}
    t0 = bl.now()
    for what, pw in cases.items():
        c = bl.bouncer_client(ctx.loop, b, s, password=pw, wait=False, name="bad:" + what)
        ctx.loop.run_until(lambda: c.closed, 5, "close after bad login (%s)" % what)
        cmds = cmds_of(c)
        check("464" in cmds, "%s: no 464; got %s" % (what, [ln for _, ln in c.lines]))
        check("001" not in cmds, "%s: got 001 despite bad password" % what)
    check(not w.events_between(t0), "watcher saw %s" % w.events_between(t0))


def test_client_quit_detaches(ctx):
    """A client QUIT detaches only: the bouncer nick does not QUIT/PART on
    the network (watcher sees nothing for 2 s), stays in both channels, and
    the session keeps receiving (a line sent meanwhile is replayed on
    reattach, proving the upstream is alive)."""
    ng, w, b, dave = setup(ctx)
    s = b.sessions[0]
    c = bl.bouncer_client(ctx.loop, b, s, client="laptop")
    t0 = bl.now()
    c.quit("going away")
    ctx.loop.run_until(lambda: c.closed, 5, "bouncer closing the client after QUIT")
    dave.privmsg("#chat", "<<dave:1>> while detached")
    ctx.loop.run_for(2.0)
    check(not w.events_between(t0), "network saw %s" % [e[3] for e in w.events_between(t0)])
    check(w.all_present([s.nick]), "bouncer nick left channels: %s" % w.members)
    c2 = bl.bouncer_client(ctx.loop, b, s, client="laptop")
    got = wait_tokens(ctx, c2, [("dave", 1)])
    exactly_once(got, [("dave", 1)], "reattached client")


def test_replay_by_client_name(ctx):
    """Backlog replay is per client name: 'phone' sees lines 1-3 live,
    detaches, misses channel lines 4-8 and private lines 9-10, reattaches
    and gets exactly 4-10 (in order, after its JOINs), then live line 11
    once. 'laptop', attached throughout, gets 1-11 exactly once with no
    replay on top."""
    ng, w, b, dave = setup(ctx)
    s = b.sessions[0]
    lap = bl.bouncer_client(ctx.loop, b, s, client="laptop")
    pho = bl.bouncer_client(ctx.loop, b, s, client="phone")
    for n in (1, 2, 3):
        dave.privmsg("#chat", "<<dave:%d>> live" % n)
    exactly_once(wait_tokens(ctx, pho, [("dave", n) for n in (1, 2, 3)]),
                 [("dave", n) for n in (1, 2, 3)], "phone before detach")
    pho.quit("detach")
    ctx.loop.run_until(lambda: pho.closed, 5, "phone closed after QUIT")
    for n in range(4, 9):
        dave.privmsg("#chat" if n % 2 else "#ops", "<<dave:%d>> missed" % n)
    for n in (9, 10):
        dave.privmsg(s.nick, "<<dave:%d>> missed private" % n)
    missed = [("dave", n) for n in range(4, 11)]
    wait_tokens(ctx, lap, missed, settle=0.3)   # the session has them
    pho2 = bl.bouncer_client(ctx.loop, b, s, client="phone")
    got = wait_tokens(ctx, pho2, missed)
    check(got == missed, "phone replay: expected exactly %s, got %s" % (missed, got))
    idx_last_join = max(i for i, (_, ln) in enumerate(pho2.lines) if bl.parse(ln).command == "JOIN")
    idx_first_tok = min(i for i, (_, ln) in enumerate(pho2.lines) if bl.tokens(ln))
    check(idx_first_tok > idx_last_join, "replay came before the channel JOINs")
    dave.privmsg("#chat", "<<dave:11>> live again")
    got = wait_tokens(ctx, pho2, missed + [("dave", 11)])
    check(got == missed + [("dave", 11)], "phone after replay: %s" % got)
    got_l = wait_tokens(ctx, lap, [("dave", n) for n in range(1, 12)], settle=0.3)
    check(got_l == [("dave", n) for n in range(1, 12)], "laptop: %s" % got_l)


def test_check_reports_every_problem(ctx):
    """`baton-supervisor --check` exits 0 on a good config and, on a config
    with four independent mistakes, exits 1 printing one FILE:LINE: message
    per problem for each of the four lines (bad number, bad listen address,
    bad port, session on an undefined network)."""
    bA = ctx.builds["a"].require()
    ng = ctx.ngircd()
    b = bl.Baton(ctx, ng, nsessions=1, channels=CHANNELS)
    out = subprocess.run([bA.supervisor, "-c", b.config, "--check"],
                         capture_output=True, text=True, timeout=30)
    check(out.returncode == 0, "--check on a good config: rc=%d\n%s%s"
          % (out.returncode, out.stdout, out.stderr))

    good = b.config_text().splitlines()
    lines = []
    marks = {}

    def add(text, mark=None):
        lines.append(text)
        if mark:
            marks[mark] = len(lines)
    for ln in good:
        if ln.startswith("handoff_timeout"):
            add("handoff_timeout = banana", "number")
        else:
            add(ln)
        if ln == "[listen]":
            add("irc = not-an-address", "listen")
    add("[network other]")
    add("host = 127.0.0.1")
    add("port = 99999999", "port")
    add("[user u000/nosuchnet]", "session")
    add("nick = ghost")
    add("channels = #x")
    bad = os.path.join(ctx.dir, "bad.ini")
    with open(bad, "w") as f:
        f.write("\n".join(lines) + "\n")
    out = subprocess.run([bA.supervisor, "-c", bad, "--check"],
                         capture_output=True, text=True, timeout=30)
    text = out.stdout + out.stderr
    check(out.returncode == 1, "--check on a bad config: rc=%d (want 1)\n%s" % (out.returncode, text))
    reported = {}
    for ln in text.splitlines():
        m = re.match(r"^(\S*?):(\d+): (.+)$", ln.strip())
        if m and os.path.basename(m.group(1)) == "bad.ini":
            reported.setdefault(int(m.group(2)), []).append(m.group(3))
    check(len(reported) >= 3, "expected >= 3 FILE:LINE problems, got:\n%s" % text)
    session_lines = {marks["session"], marks["session"] + 1, marks["session"] + 2}
    missing = [k for k in ("number", "listen", "port") if marks[k] not in reported]
    if not session_lines & set(reported):
        missing.append("session")
    check(not missing, "problems not reported at their lines: %s (marks %s); output:\n%s"
          % (missing, marks, text))


def test_status_json(ctx):
    """`batonctl status --json` has supervisor {pid = the supervisor's pid,
    version = build A's}, exactly one worker {pid: a live child of the
    supervisor, binary = build A's sessiond, version, sessions = 3,
    connections >= 3 upstreams + 1 client}, crashes = 0; and
    `baton-supervisor --version` prints the same version."""
    ng, w, b, dave = setup(ctx, nsessions=3)
    c = bl.bouncer_client(ctx.loop, b, b.sessions[0], client="x")
    ctx.loop.run_for(0.3)
    st = b.status()
    sup = st.get("supervisor") or {}
    check(sup.get("pid") == b.proc.pid, "supervisor.pid %s, real %d" % (sup.get("pid"), b.proc.pid))
    vA = ctx.builds["a"].version
    check(sup.get("version") == vA, "supervisor.version %r, build A %r" % (sup.get("version"), vA))
    ws = st.get("workers")
    check(isinstance(ws, list) and len(ws) == 1, "workers: %r" % ws)
    wk = ws[0]
    for k in ("pid", "binary", "version", "sessions", "connections"):
        check(k in wk, "worker lacks %r: %r" % (k, wk))
    check(bl.pid_alive(wk["pid"]), "worker pid %s not alive" % wk["pid"])
    with open("/proc/%d/stat" % wk["pid"]) as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    check(ppid == b.proc.pid, "worker's parent is %d, not the supervisor %d" % (ppid, b.proc.pid))
    check(os.path.realpath(wk["binary"]) == os.path.realpath(ctx.builds["a"].sessiond),
          "worker binary %r" % wk["binary"])
    check(wk["version"] == vA, "worker version %r" % wk["version"])
    check(wk["sessions"] == 3, "sessions %r" % wk["sessions"])
    check(isinstance(wk["connections"], int) and wk["connections"] >= 4,
          "connections %r (want >= 4: 3 upstreams + 1 client)" % wk["connections"])
    check(st.get("crash_count") == 0 and st.get("crashes") == [], "crashes %r" % st.get("crashes"))
    out = subprocess.run([ctx.builds["a"].supervisor, "--version"], capture_output=True,
                         text=True, timeout=10)
    check(out.returncode == 0 and vA in out.stdout + out.stderr,
          "--version: rc=%d %r" % (out.returncode, out.stdout + out.stderr))
    check(not c.closed, "client closed")


def upgrade_with_traffic(ctx, b, dave, client, session, op, sender_base):
    """Run `op` ('upgrade' to build B, 'upgrade-a', or 'rollback') while dave
    and the client exchange numbered lines every 20 ms. Returns
    (rc, json, lines dave sent, lines client sent)."""
    p = b.ctl_async("rollback", "--json") if op == "rollback" else \
        b.ctl_async("upgrade", (ctx.builds["b"] if op == "upgrade" else ctx.builds["a"]).sessiond,
                    "--json")
    sent_d, sent_c = [], []
    k = {"n": sender_base}

    def tick():
        if p.poll() is not None:
            return False
        k["n"] += 1
        dave.privmsg("#chat", "<<dave:%d>> during %s" % (k["n"], op))
        sent_d.append(("dave", k["n"]))
        if not client.closed:
            client.privmsg("#ops", "<<u000:%d>> during %s" % (k["n"], op))
            sent_c.append(("u000", k["n"]))
        return True
    ctx.loop.every(0.02, tick)
    ctx.loop.wait_process(p, timeout=120)
    rc, data, out, err = b.finish_ctl(p)
    return rc, (data if data is not None else {"_stdout": out, "_stderr": err}), sent_d, sent_c


def test_upgrade_then_rollback(ctx):
    """`batonctl upgrade <B> --json` under traffic exits 0 with result
    'committed', from = {old pid, version A}, to = {new pid, version B},
    sessions = 1; status then shows one worker with B's pid and version and
    the old worker exits; the client's TCP connection stays open and every
    numbered line sent before/during/after reaches the client resp. dave
    exactly once in order. `batonctl rollback --json` then commits back to
    version A the same way."""
    bB = ctx.builds["b"].require()
    vA, vB = ctx.builds["a"].version, bB.version
    check(vA != vB, "builds A and B report the same version %r" % vA)
    ng, w, b, dave = setup(ctx)
    s = b.sessions[0]
    c = bl.bouncer_client(ctx.loop, b, s, client="laptop")
    t_start = bl.now()
    base = 0
    for op, v_from, v_to in (("upgrade", vA, vB), ("rollback", vB, vA)):
        old_pid = b.worker_pid()
        rc, res, sent_d, sent_c = upgrade_with_traffic(ctx, b, dave, c, s, op, base)
        base += 1000
        check(rc == 0, "%s: exit %d, %s" % (op, rc, res))
        check(res.get("result") == "committed", "%s: result %r" % (op, res))
        fr, to = res.get("from") or {}, res.get("to") or {}
        check(fr.get("pid") == old_pid and fr.get("version") == v_from,
              "%s: from %r (want pid %d version %s)" % (op, fr, old_pid, v_from))
        check(to.get("version") == v_to and to.get("pid") not in (None, old_pid),
              "%s: to %r (want version %s, new pid)" % (op, to, v_to))
        check(res.get("sessions") == 1, "%s: sessions %r" % (op, res.get("sessions")))
        for k in ("connections", "fds", "freeze_ms", "total_ms"):
            check(isinstance(res.get(k), (int, float)), "%s: %s missing/not a number in %r" % (op, k, res))
        wk = b.worker()
        check(wk["pid"] == to["pid"] and wk["version"] == v_to,
              "%s: status worker %r, want pid %s version %s" % (op, wk, to["pid"], v_to))
        bl.wait_for(lambda: not bl.pid_alive(old_pid), 10, what="old worker %d to exit" % old_pid)
        # after: one more line each way
        dave.privmsg("#chat", "<<dave:%d>> after %s" % (base - 1, op))
        c.privmsg("#ops", "<<u000:%d>> after %s" % (base - 1, op))
        sent_d.append(("dave", base - 1))
        sent_c.append(("u000", base - 1))
        got_c = wait_tokens(ctx, c, sent_d, timeout=15)
        got_d = wait_tokens(ctx, dave, sent_c, timeout=15)
        exactly_once(got_c, sent_d, "client (%s)" % op)
        exactly_once(got_d, sent_c, "dave (%s)" % op)
        check(not c.closed, "client connection closed during %s: %s" % (op, c.close_reason))
        check(not c.errors, "client got ERROR: %s" % c.errors)
        bl.log("%s: %d+%d lines during, freeze %.1f ms, total %.1f ms"
               % (op, len(sent_d), len(sent_c), res["freeze_ms"], res["total_ms"]))
    evs = w.events_between(t_start)
    check(not evs, "network saw membership events of the bouncer nick: %s" % [e[3] for e in evs])


def test_quit_with_unflushed_output(ctx):
    """A slow client (4 KiB receive buffer, not reading) has output backed
    up in the bouncer when it sends QUIT. Lines the bouncer had queued but
    not written are not lost: what did not reach the socket before the
    close is replayed when the same client name logs in again, so the two
    connections together receive all 30000 channel lines (~2.7 MB, more
    than the socket buffers hold) exactly once, in order."""
    n = 30000    # ~2.7 MB: more than the kernel socket buffers hold
    ng, w, b, dave = setup(ctx, sessiond_opts=bl.roomy_backlog(40000))
    s = b.sessions[0]
    slow = bl.bouncer_client(ctx.loop, b, s, client="slow", rcvbuf=4096)
    lap = bl.bouncer_client(ctx.loop, b, s, client="laptop")
    slow.pause_reading()
    pad = "x" * 60
    dave.send_many("PRIVMSG #chat :<<dave:%d>> %s" % (i, pad) for i in range(1, n + 1))
    want = [("dave", i) for i in range(1, n + 1)]
    got_l = wait_tokens(ctx, lap, want, timeout=30, settle=0.2)
    check(got_l == want, "laptop (fast) did not get the %d lines exactly: %d got" % (n, len(got_l)))
    slow.send("QUIT :bye")
    ctx.loop.run_for(0.5)
    slow.resume_reading()
    ctx.loop.run_until(lambda: slow.closed, 10, "slow client closed after QUIT")
    first = token_lines(slow)
    bl.log("slow client got %d of %d lines before the close" % (len(first), n))
    slow2 = bl.bouncer_client(ctx.loop, b, s, client="slow")
    rest = wait_tokens(ctx, slow2, want[len(first):], timeout=20)
    both = first + rest
    check(both == want, "slow client: before close %d lines (last %s), replay %d lines (first %s); "
          "missing %d, duplicated %d"
          % (len(first), first[-1:] if first else None, len(rest), rest[:1],
             len(set(want) - set(both)), len(both) - len(set(both))))


ROUNDS = 30


def test_quit_during_burst_exactly_once(ctx):
    """A chatty client (PING/PONG exchanges first, so its TCP delays ACKs)
    that QUITs while lines are streaming to it (in the middle of a burst of
    300 channel lines from dave), 30 times in a row with
    the same client name, then attaches for good: its connections together
    receive all 9000 lines exactly once and in order. Catches positions that
    under-count what the client already received (duplicates on replay) as
    well as over-count (gaps)."""
    ng, w, b, dave = setup(ctx, sessiond_opts=bl.roomy_backlog(10000))
    s = b.sessions[0]
    conns = []
    k = 0
    for rnd in range(ROUNDS):
        c = bl.bouncer_client(ctx.loop, b, s, client="burst")
        conns.append(c)
        # a little interactive traffic first: the client's TCP then delays
        # its ACKs (as real, chatty clients' do)
        for j in range(5):
            c.send("PING :p%d" % j)
            ctx.loop.run_until(lambda: c.find(lambda m: m.command == "PONG" and "p%d" % j in m.raw),
                               5, "PONG")
        before = len(token_lines(c))
        dave.send_many("PRIVMSG #chat :<<dave:%d>> burst %d" % (k + i, rnd) for i in range(1, 301))
        k += 300
        # QUIT while the burst is still streaming in
        ctx.loop.run_until(lambda: len(token_lines(c)) - before >= 30 * (rnd % 5 + 1), 5,
                           raise_on_timeout=False)
        c.quit("bye")
        ctx.loop.run_until(lambda: c.closed, 10, "close after QUIT (round %d)" % rnd)
    last = bl.bouncer_client(ctx.loop, b, s, client="burst")
    conns.append(last)
    want = [("dave", i) for i in range(1, k + 1)]
    ctx.loop.run_until(lambda: sum(len(token_lines(c)) for c in conns) >= k, 20,
                       raise_on_timeout=False)
    ctx.loop.run_for(0.5)
    per = [token_lines(c) for c in conns]
    got = [t for p in per for t in p]
    dups = sorted(t for t in set(got) if got.count(t) > 1)
    missing = sorted(set(want) - set(got))
    detail = ["conn %d: %d lines %s..%s, closed by %s" % (i, len(p), p[:1], p[-1:], conns[i].close_reason)
              for i, p in enumerate(per)
              if len(p) != len(set(p) - set(dups)) or any(t in dups for t in p)]
    check(got == want, "union over %d connections: %d lines, %d duplicated (first %s), %d missing "
          "(first %s), in order %s\n    %s" % (len(conns), len(got), len(dups), dups[:5],
                                             len(missing), missing[:5], got == sorted(got),
                                             "\n    ".join(detail)))
