"""Canary rollouts (issue 9, README "Canary rollouts") against a real ngircd:
two workers at once, the cohort chosen by percentage / users / network,
clients that log in during a canary reach the worker that holds their
session (forwarded over the peer link, never reconnecting), promote, abort,
and the automatic rollback of a build that misbehaves (the fault builds of
sessiond/fault.h) with the gate that caught it.

Every test runs baton with users u00..; a direct ngircd user 'dave' talks in
the channels so delivery can be checked exactly once per client."""

import os

import batonlib as bl
import test_metrics
from batonlib import check

# run.py --jobs: these tests run with no other test beside them
# (the canary gates compare relay latency and CPU per line of two workers).
RUN_ALONE = True

CHANNELS = ["#chat", "#ops"]


def setup(ctx, nsessions=20, canary_opts=None, metrics_port=None, **kw):
    ng = ctx.ngircd()
    if metrics_port:
        kw["supervisor_opts"] = {"metrics": "127.0.0.1:%d" % metrics_port}
    b = bl.Baton(ctx, ng, nsessions=nsessions, channels=CHANNELS, **kw)
    opts = {"sample_ms": 200, "min_lines": 50}
    opts.update(canary_opts or {})
    b.write_config(b.config_text() + "[canary]\n" +
                   "".join("%s = %s\n" % kv for kv in opts.items()))
    b.start(wait=False)
    bl.pump_ready(ctx, b)
    dave = bl.direct_user(ctx.loop, ng, "dave", CHANNELS)
    return ng, b, dave



def ctl_pumping(ctx, b, *args, timeout=120):
    """batonctl ARGS --json while the IRC loop keeps running."""
    p = b.ctl_async(*(list(args) + ["--json"]))
    end = bl.now() + timeout
    while p.poll() is None:
        check(bl.now() < end, "batonctl %s did not finish in %d s" % (args, timeout))
        ctx.loop.run_for(0.1)
    rc, data, out, err = b.finish_ctl(p)
    check(isinstance(data, dict), "batonctl %s: no JSON (rc %s): %s %s" % (args, rc, out, err))
    return rc, data


def workers_by_role(b):
    st = b.status()
    return {w["role"]: w for w in st["workers"]}, st


def cohort_users(b, percent):
    """Users of the cohort at percent (common/cohort.c: FNV-1a 32 % 10000)."""
    def bucket(name):
        h = 2166136261
        for ch in name.encode():
            h ^= ch
            h = (h * 16777619) & 0xffffffff
        return h % 10000
    return [s for s in b.sessions if bucket(s.user) < percent * 100]


def talk_and_check(ctx, dave, clients, n=5, tag="x"):
    """dave says n numbered lines in #chat; every client gets each once."""
    for i in range(n):
        dave.privmsg("#chat", "%s %s" % (bl.token("dave" + tag, i), "hello"))
    want = [("dave" + tag, i) for i in range(n)]

    def got(c):
        return [t for _, ln in c.lines for t in bl.tokens(ln) if t[0] == "dave" + tag]
    ctx.loop.run_until(lambda: all(set(want) <= set(got(c)) for c in clients), 15,
                       raise_on_timeout=False)
    ctx.loop.run_for(0.5)
    for c in clients:
        g = got(c)
        for x in want:
            check(g.count(x) == 1, "%s got %s %d times (want once)" % (c.name, x, g.count(x)))


def test_canary_routes_promotes_and_aborts(ctx):
    """A 50 % canary on the B build: the cohort moves to the new worker
    (status shows both, with versions and counts), clients attached before
    keep their connection, clients that log in during the canary — for a
    cohort session and for a control session — attach where their session
    is and get channel lines exactly once; promote moves the rest and retires
    the old worker; a second canary is aborted and everything returns to one
    worker. No client is ever disconnected."""
    mport = bl.free_port()
    ng, b, dave = setup(ctx, nsessions=20, metrics_port=mport)
    build_b = ctx.builds["b"].require()
    cohort = cohort_users(b, 50)
    check(0 < len(cohort) < 20, "50 %% cohort of 20 users has %d" % len(cohort))
    before = [bl.bouncer_client(ctx.loop, b, s) for s in b.sessions[:6]]
    for c, s in zip(before, b.sessions[:6]):
        bl.wait_attached(ctx.loop, c, s)
    old_pid = b.worker_pid()

    rc, r = ctl_pumping(ctx, b, "canary", "start", build_b.sessiond, "--percent", "50")
    check(rc == 0 and r["result"] == "started", "canary start: rc %s %s" % (rc, r))
    check(r["cohort_sessions"] == len(cohort), "cohort %s, expected %d" % (r["cohort_sessions"], len(cohort)))
    roles, st = workers_by_role(b)
    check(set(roles) == {"canary", "control"}, "roles during the canary: %s" % list(roles))
    check(roles["canary"]["version"] == build_b.version, "canary version %s" % roles["canary"]["version"])
    check(roles["control"]["pid"] == old_pid, "control is the old worker")
    check(roles["canary"]["sessions"] == len(cohort) and
          roles["control"]["sessions"] == 20 - len(cohort),
          "counts: %s" % {k: v["sessions"] for k, v in roles.items()})
    check(st["canary"] and st["canary"]["result"] == "running", "status shows the canary: %s" % st.get("canary"))

    # New logins during the canary, for cohort and control sessions alike.
    during = []
    for s in b.sessions[6:14]:
        c = bl.bouncer_client(ctx.loop, b, s)
        bl.wait_attached(ctx.loop, c, s)
        during.append(c)
    clients = before + during
    talk_and_check(ctx, dave, clients, tag="a")
    # a client of a cohort session reconnects with the same client name
    cs = next(s for s in b.sessions[6:14] if s in cohort)
    i = b.sessions.index(cs) - 6 + len(before)
    clients[i].quit()
    ctx.loop.run_for(0.5)
    again = bl.bouncer_client(ctx.loop, b, cs)
    bl.wait_attached(ctx.loop, again, cs)
    clients[i] = again
    talk_and_check(ctx, dave, clients, tag="b")
    # every gate's value is in the metrics, and they pass promtool
    ctx.loop.run_for(1.5)
    text = test_metrics.scrape(mport)
    test_metrics.promtool_check(ctx, text)
    for fam in ("baton_canary_gate_cohort", "baton_canary_gate_threshold",
                "baton_canary_gate_tripped", "baton_canaries_total"):
        check(fam in text, "metrics lack %s" % fam)
    check('baton_canary_gate_cohort{gate="delivery"}' in text, "no delivery gate in the metrics")
    st = b.status()
    gates = {g["name"]: g for g in st["canary"]["gates"]}
    check(len(gates) == 14 and all(g["verdict"] in ("pass", "waiting") for g in gates.values()),
          "gates during a healthy canary: %s" % {n: g["verdict"] for n, g in gates.items()})

    rc, r = ctl_pumping(ctx, b, "canary", "promote")
    check(rc == 0 and r["result"] == "promoted", "promote: rc %s %s" % (rc, r))
    check(r["disconnects"] == 0, "disconnects during the canary: %s" % r["disconnects"])
    roles, st = workers_by_role(b)
    check(list(roles) == ["active"] and roles["active"]["version"] == build_b.version
          and roles["active"]["sessions"] == 20, "after promote: %s" % st["workers"])
    talk_and_check(ctx, dave, clients, tag="c")

    # A second canary back to A, aborted: the cohort returns.
    build_a = ctx.builds["a"].require()
    users = [s.user for s in b.sessions[:3]]
    rc, r = ctl_pumping(ctx, b, "canary", "start", build_a.sessiond, "--users", ",".join(users))
    check(rc == 0 and r["cohort_sessions"] == 3, "canary --users: rc %s %s" % (rc, r))
    talk_and_check(ctx, dave, clients, tag="d")
    rc, r = ctl_pumping(ctx, b, "canary", "abort")
    check(rc == 0 and r["result"] == "aborted", "abort: rc %s %s" % (rc, r))
    check(r["rollback_ms"] > 0 and r["disconnects"] == 0, "abort figures: %s" % r)
    roles, st = workers_by_role(b)
    check(list(roles) == ["active"] and roles["active"]["sessions"] == 20 and
          roles["active"]["version"] == build_b.version, "after abort: %s" % st["workers"])
    talk_and_check(ctx, dave, clients, tag="e")
    for c in clients:
        check(not c.closed, "%s was disconnected" % c.name)


def detached_replay(ctx, b, dave, session, name, tag, during):
    """Client `name` of `session` detaches (QUIT), dave says 3 lines, then
    `during()` runs (a canary phase starts), and the client comes back with
    the same name while it runs: it must get those 3 lines exactly once
    (backlog replay) and then live lines. Returns the new connection."""
    c = bl.bouncer_client(ctx.loop, b, session, client=name)
    c.quit()
    ctx.loop.run_for(0.4)
    for i in range(3):
        dave.privmsg("#chat", "%s missed" % bl.token("dave" + tag, i))
    ctx.loop.run_for(0.3)
    during()
    ctx.loop.run_for(0.2)
    again = bl.bouncer_client(ctx.loop, b, session, client=name, timeout=30)
    want = [("dave" + tag, i) for i in range(3)]

    def got():
        return [t for _, ln in again.lines for t in bl.tokens(ln) if t[0] == "dave" + tag]
    ctx.loop.run_until(lambda: set(want) <= set(got()), 15, raise_on_timeout=False)
    ctx.loop.run_for(0.3)
    for x in want:
        check(got().count(x) == 1, "%s@%s: replayed %s %d times (want once): %s"
              % (session.user, name, x, got().count(x), got()))
    return again


def test_canary_clients_in_every_phase(ctx):
    """Clients log in, reconnect and detach while each canary phase runs —
    the cohort's move (stretched: the new worker adopts slowly), the bake,
    the promotion (stretched), and the abort of a second canary (stretched,
    the old worker adopts slowly) — for cohort and control sessions: each
    lands on the worker that holds its session (parked while the session is
    frozen, forwarded over the peer link otherwise), gets what it missed
    exactly once and then every live line exactly once; nobody is
    disconnected."""
    ng, b, dave = setup(ctx, nsessions=10)
    build_b = ctx.builds["b"].require()
    build_a = ctx.builds["a"].require()
    cohort = cohort_users(b, 50)
    control = [s for s in b.sessions if s not in cohort]
    check(cohort and control, "need both groups: cohort %d of 10" % len(cohort))
    clients = []
    pending = []

    def start_async(*args):
        pending.append(b.ctl_async(*(list(args) + ["--json"])))
        ctx.loop.run_for(0.3)  # inside the stretched move now

    def finish():
        p = pending.pop()
        while p.poll() is None:
            ctx.loop.run_for(0.1)
        rc, data, out, err = b.finish_ctl(p)
        check(isinstance(data, dict), "no JSON: %s %s" % (out, err))
        return rc, data

    # 1. during the cohort's move
    b.set_fault("target:slow-prepare")
    clients.append(detached_replay(ctx, b, dave, cohort[0], "p1", "m",
                   lambda: start_async("canary", "start", build_b.sessiond, "--percent", "50")))
    clients.append(bl.bouncer_client(ctx.loop, b, control[0], client="n1", timeout=30))
    rc, r = finish()
    b.clear_fault()
    check(rc == 0 and r["result"] == "started", "canary start: %s" % r)
    talk_and_check(ctx, dave, clients, tag="m2")

    # 2. during the bake
    clients.append(detached_replay(ctx, b, dave, cohort[1 % len(cohort)], "p2", "k", lambda: None))
    clients.append(detached_replay(ctx, b, dave, control[1 % len(control)], "p3", "l", lambda: None))
    talk_and_check(ctx, dave, clients, tag="k2")

    # 3. during the promotion
    b.set_fault("target:slow-prepare")
    clients.append(detached_replay(ctx, b, dave, control[0], "p4", "p",
                   lambda: start_async("canary", "promote")))
    rc, r = finish()
    b.clear_fault()
    check(rc == 0 and r["result"] == "promoted" and r["disconnects"] == 0, "promote: %s" % r)
    talk_and_check(ctx, dave, clients, tag="p2")

    # 4. a second canary, aborted: during the abort's move back
    rc, r = ctl_pumping(ctx, b, "canary", "start", build_a.sessiond, "--percent", "50")
    check(rc == 0, "second canary: %s" % r)
    b.set_fault("target:slow-prepare")
    clients.append(detached_replay(ctx, b, dave, cohort[0], "p5", "a",
                   lambda: start_async("canary", "abort")))
    rc, r = finish()
    b.clear_fault()
    check(rc == 0 and r["result"] == "aborted" and r["disconnects"] == 0, "abort: %s" % r)
    talk_and_check(ctx, dave, clients, tag="a2")
    for c in clients:
        check(not c.closed, "%s was disconnected (%s)" % (c.name, c.close_reason))


def test_canary_refusals(ctx):
    """A canary of nobody (unknown users) is refused, the new worker leaves
    and the old one serves everyone; a second canary while one runs, a
    promote without a canary, a grow below the current percentage and an
    unknown binary are refused with exit 1 and a reason; usage errors exit
    2."""
    ng, b, dave = setup(ctx, nsessions=4)
    build_b = ctx.builds["b"].require()
    rc, r = ctl_pumping(ctx, b, "canary", "start", build_b.sessiond, "--users", "nobody,noone")
    check(rc == 1 and r["result"] == "refused" and "no session matches" in r["reason"],
          "empty cohort: rc %s %s" % (rc, r))
    roles, st = workers_by_role(b)
    check(list(roles) == ["active"] and roles["active"]["sessions"] == 4, "after: %s" % st["workers"])
    rc, r = ctl_pumping(ctx, b, "canary", "promote")
    check(rc == 1 and "no canary" in r["reason"], "promote without a canary: %s" % r)
    rc, r = ctl_pumping(ctx, b, "canary", "start", "/nonexistent/baton-sessiond", "--percent", "50")
    check(rc == 2, "unknown binary: rc %s %s" % (rc, r))
    rc, r = ctl_pumping(ctx, b, "canary", "start", build_b.sessiond, "--percent", "100")
    check(rc == 0 and r["cohort_sessions"] == 4, "canary 100 %%: %s" % r)
    rc, r = ctl_pumping(ctx, b, "canary", "start", build_b.sessiond, "--percent", "10")
    check(rc == 1 and "already running" in r["reason"], "second canary: %s" % r)
    rc, r = ctl_pumping(ctx, b, "canary", "grow", "--percent", "50")
    check(rc == 1 and "above the current" in r["reason"], "grow below: %s" % r)
    rc, _, out, err = b.ctl("canary", "start", build_b.sessiond)
    check(rc == 2 and "exactly one of" in err, "no cohort: rc %s %s" % (rc, err))
    rc, r = ctl_pumping(ctx, b, "canary", "abort")
    check(rc == 0 and r["result"] == "aborted", "abort: %s" % r)


def canary_crash(ctx, custody):
    """kill -9 of the canary worker while its cohort bakes; returns the
    cohort, the clients, the canary's result, the watcher's events and the
    time of the kill."""
    import signal
    kw = {"supervisor_opts": {"custody": "yes" if custody else "no"}}
    ng, b, dave = setup(ctx, nsessions=10, **kw)
    w = bl.Watcher(ctx.loop, ng, CHANNELS, watch=[s.nick for s in b.sessions])
    build_b = ctx.builds["b"].require()
    cohort = cohort_users(b, 50)
    check(0 < len(cohort) < 10, "50 %% cohort of 10 users has %d" % len(cohort))
    clients = [bl.bouncer_client(ctx.loop, b, s) for s in b.sessions]
    for c, s in zip(clients, b.sessions):
        bl.wait_attached(ctx.loop, c, s)
    rc, r = ctl_pumping(ctx, b, "canary", "start", build_b.sessiond, "--percent", "50")
    check(rc == 0 and r["result"] == "started", "canary start: rc %s %s" % (rc, r))
    talk_and_check(ctx, dave, clients, tag="a")
    ctx.loop.run_for(1.5)  # the cohort's records after that I/O (1 s)
    roles, _ = workers_by_role(b)
    t0 = bl.now()
    os.kill(roles["canary"]["pid"], signal.SIGKILL)

    def over():
        st = b.try_status() or {}
        cn = st.get("last_canary") or {}
        ws = st.get("workers") or []
        return (st.get("canary") is None and cn.get("result") and len(ws) == 1
                and ws[0].get("sessions") == 10 and cn)
    res = bl.wait_for(lambda: (ctx.loop.run_for(0.2), over())[1], 30,
                      what="the canary to end after its worker's kill -9")
    bl.log("canary result: %s" % {k: res.get(k) for k in (
        "result", "cohort_sessions", "sessions_restored", "sessions_lost_count",
        "disconnects", "rollback_ms", "reason")})
    return b, dave, w, cohort, clients, res, t0


def test_canary_worker_crash_restored_from_custody(ctx):
    """kill -9 of the canary worker while its cohort bakes, custody on (the
    default): the old worker adopts the cohort's sessions from the canary's
    custody instead of starting them again, so the result is `rolled_back`
    with every cohort session restored and none lost, no client connection
    closes, the network sees no QUIT/JOIN of any bouncer nick, and lines
    reach every client exactly once on the same connections (before: the
    cohort's users reconnected)."""
    b, dave, w, cohort, clients, res, t0 = canary_crash(ctx, custody=True)
    ctx.loop.run_for(1.0)
    closed = [c.name for c in clients if c.closed]
    check(not closed, "client connections closed by the crash: %s" % closed)
    evs = w.events_between(t0)
    check(not evs, "the network saw membership events: %s" % [e[3] for e in evs[:5]])
    check(res["result"] == "rolled_back" and res.get("sessions_restored") == len(cohort)
          and res["sessions_lost_count"] == 0 and res["disconnects"] == 0,
          "canary result after the crash: %s" % res)
    talk_and_check(ctx, dave, clients, tag="b")


def test_canary_worker_crash_without_custody(ctx):
    """The same kill -9 with `custody = no`: the cohort's sessions died with
    the canary worker and the old one starts them again (their users
    reconnect), which the result counts as lost."""
    b, dave, w, cohort, clients, res, t0 = canary_crash(ctx, custody=False)
    check(res["result"] == "rolled_back" and res.get("sessions_restored", 0) == 0
          and res["sessions_lost_count"] == len(cohort),
          "canary result after the crash: %s" % res)
