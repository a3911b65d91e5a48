"""THE acceptance test: hot upgrades and rollbacks under realistic live
traffic lose, duplicate and disconnect nothing.

Setup (real processes on loopback): ngircd; baton with 200 bouncer users on
one network, every session in the 3 shared channels #c1 #c2 #c3;
150 of them with a client attached (client name 'c'); 24 'network users'
connected straight to ngircd, driven by the real anonymized trace
(tests/data/trace-slice.jsonl, a slice of shared/traces/sample-trace.jsonl, time-compressed: joins, parts, real quits
and reconnects, nick changes, messages and actions; the trace's three
channels map onto ours); bouncer clients send numbered lines to the channels
and PRIVMSGs to other bouncer users; a watcher on ngircd records membership
events of bouncer nicks and every numbered channel line.

While traffic flows: 25 operations, 20 `batonctl upgrade`s alternating
between build B and build A plus a `batonctl rollback` as every 5th
operation, so the version in status alternates A, B, A, B, ... Meanwhile 20
clients QUIT (detach) around an operation and reattach with the same client
name two operations later; for every other operation the QUIT and the new
login are sent while the migration is running.

Asserted at the end (after draining):
- every operation exits 0 with result 'committed', from/to versions as
  expected, status shows exactly one worker with the new pid and version;
  old workers exit; no worker process is left over;
- zero client connections closed (except the detaching ones, after their
  own QUIT), no ERROR line received;
- zero upstream connections closed: the watcher saw no JOIN/PART/QUIT/NICK/
  KICK of any bouncer nick after setup, and ngircd logged no unregistration
  of a bouncer nick;
- every client (across its connections) received every line addressed to
  it (channel lines of everyone but its own session, and its PRIVMSGs)
  exactly once and in per-sender order; detached clients therefore got
  exactly what they missed (replay) and then live lines;
- every channel line any client or network user sent reached the network
  exactly once (the watcher).
"""

import collections

import batonlib as bl
from batonlib import check

# run.py --jobs: these tests run with no other test beside them
# (load on both cores for minutes).
RUN_ALONE = True

NSESSIONS = 200
NATTACHED = 150
NNET = 24
NOPS = 25                 # 20 upgrades + 5 rollbacks
NDETACH = 20
OP_GAP_S = 2.5            # traffic between operations (about 25 traced and 25 client lines)
# The TLS run: the same 25 operations and 20 detaches with less traffic
# between operations (about 8 traced and 8 client lines, and what flows
# during each operation): it shows the record layers carried across every
# migration; the plaintext run above keeps the full gaps.
TLS_OP_GAP_S = 0.8
TRACE_SPAN_S = 240        # the trace window (traffic stops when the ops are done)
TRACE_MSG_RATE = 10.0     # network users' channel lines per second
CLIENT_RATE = 10.0        # bouncer clients' lines per second (half PRIVMSGs)


def test_acceptance_upgrades_under_trace_load(ctx):
    """200 users / 150 clients / 3 channels / PRIVMSGs, trace-driven traffic,
    20 upgrades alternating A<->B plus 5 rollbacks: nothing lost, duplicated,
    reordered or disconnected (see the module docstring for the full list)."""
    run_acceptance(ctx)


def test_acceptance_tls_everywhere(ctx):
    """The same run with every baton connection on TLS: the 200 upstreams to
    ngircd's TLS port (GnuTLS; baton verifies against the test CA) and the
    150 clients on baton's ircs listener (Python ssl, verifying baton's
    certificate). Same guarantees: nothing lost, duplicated, reordered or
    disconnected across 20 upgrades and 5 rollbacks (0.8 s of traffic
    between operations, not 2.5)."""
    import tlslib
    pki = tlslib.pki(ctx)
    run_acceptance(ctx, scen_kw=dict(
        ngircd_factory=lambda c: tlslib.NgircdTls(c, pki).start(),
        baton_kw_for=lambda ng: dict(
            ircs=(pki.server.cert, pki.server.key), upstream_port=ng.tls_port,
            network_opts={"tls": "yes", "tls_ca": pki.ca_cert,
                          "connects_per_minute": 6000, "connect_burst": 10000,
                          "max_connections_per_ip": 100000}),
        client_tls=pki.client_context(verify=True)), op_gap=TLS_OP_GAP_S)


def run_acceptance(ctx, scen_kw=None, op_gap=OP_GAP_S):
    A = ctx.builds["a"].require()
    B = ctx.builds["b"].require()
    vA, vB = A.version, B.version
    check(vA != vB, "builds A and B have the same version %r" % vA)
    bl.load_trace(limit=1)   # Skip early if the trace is absent

    scen = bl.LoadScenario(ctx, nsessions=NSESSIONS, nattached=NATTACHED, nnet=NNET,
                           baton_kw=dict(sessiond_opts=dict(bl.roomy_backlog(20000),
                                                            chunk_sessions=64)),
                           **(scen_kw or {}))
    scen.setup(ready_timeout=180)
    b, loop = scen.baton, scen.loop

    window = scen.start_trace_traffic(duration=TRACE_SPAN_S,
                                      privmsg_rate=TRACE_MSG_RATE)
    scen.start_fixed_traffic(client_rate=CLIENT_RATE, net_rate=0.0, pm_ratio=0.5)
    t_traffic = bl.now()
    loop.run_for(5.0)

    rng = scen.rng
    detachers = rng.sample(sorted(scen.clients), NDETACH)
    detached_at = {}            # op index -> [Client]
    reattached = []             # (Client, time of reattach)
    versions = [b.version()]
    pids = [b.worker_pid()]
    results = []
    cur, other = (A, B)
    check(versions[0] == vA, "first worker runs %r, not build A %r" % (versions[0], vA))

    for i in range(NOPS):
        # Detach one client around ops 0..19 and reattach it two ops later.
        # Even ops: both happen between operations; odd ops: 20-150 ms after
        # the operation started, i.e. while the migration is running
        # (a QUIT or a login racing the freeze/handoff).
        during = i % 2 == 1
        if i < NDETACH:
            cl = scen.clients[detachers[i]]
            detached_at.setdefault(i, []).append(cl)
            if during:
                loop.call_later(rng.uniform(0.02, 0.15), cl.detach)
            else:
                cl.detach()
        due = detached_at.pop(i - 2, [])
        if not during:
            for cl in due:
                reattach(scen, cl, reattached)

        op = "rollback" if (i + 1) % 5 == 0 else "upgrade"
        old_pid = pids[-1]
        p = b.ctl_async("rollback", "--json") if op == "rollback" else \
            b.ctl_async("upgrade", other.sessiond, "--json")
        if during:
            for cl in due:
                loop.call_later(rng.uniform(0.02, 0.15), reattach, scen, cl, reattached)
        loop.wait_process(p, timeout=180)
        rc, res, out, err = b.finish_ctl(p)
        res = res or {"_stdout": out, "_stderr": err}
        check(rc == 0 and res.get("result") == "committed",
              "op %d (%s to %s): exit %d, %r; supervisor log:\n%s"
              % (i + 1, op, other.version, rc, res, b.log_tail()))
        fr, to = res.get("from") or {}, res.get("to") or {}
        check(fr.get("version") == cur.version and to.get("version") == other.version,
              "op %d (%s): from %r to %r, want %s -> %s" % (i + 1, op, fr, to, cur.version,
                                                              other.version))
        check(res.get("sessions") == NSESSIONS, "op %d: moved %r sessions" % (i + 1, res.get("sessions")))
        wk = one_worker(scen)
        check(wk["pid"] == to.get("pid") and wk["pid"] != old_pid and wk.get("version") == other.version,
              "op %d: status worker %r, want pid %s version %s" % (i + 1, wk, to.get("pid"), other.version))
        versions.append(wk["version"])
        pids.append(wk["pid"])
        results.append((op, res))
        bl.log("op %2d %-8s %s -> %s: freeze %.1f ms, total %.1f ms, %s fds"
               % (i + 1, op, cur.version, other.version, res.get("freeze_ms", -1),
                  res.get("total_ms", -1), res.get("fds")))
        cur, other = other, cur
        loop.run_for(op_gap)

    for i in sorted(detached_at):
        for cl in detached_at.pop(i):
            reattach(scen, cl, reattached)
    loop.run_until(lambda: len(reattached) == NDETACH, 30, "every detached client reattached")
    loop.run_for(5.0)
    t_end = bl.now()
    scen.stop_traffic()

    # versions alternate in status; every old worker exited; none left over
    for k in range(1, len(versions)):
        check(versions[k] != versions[k - 1], "version did not alternate: %s" % versions)
    check(len(set(pids)) == len(pids), "a worker pid repeated: %s" % pids)
    bl.wait_for(lambda: not any(bl.pid_alive(p) for p in pids[:-1]), 15,
                what="old workers to exit (%s)" % [p for p in pids[:-1] if bl.pid_alive(p)])
    workers = [p for p in scen.ctx.procs.tagged_pids() if is_sessiond(p)]
    check(workers == [pids[-1]], "worker processes alive: %s, want only %d" % (workers, pids[-1]))

    sent, got = scen.verify(drain_timeout=90)

    # detached clients: got live lines after reattaching (the full
    # exactly-once check above already covers the replay)
    for cl, t_re in reattached:
        live = sum(1 for (s, n, t) in scen.ledger.received[cl.user]
                   if t is not None and scen.ledger.sent[(s, n)][1] > t_re + 0.5)
        check(live > 0, "client %s got no live line after reattaching" % cl.user)
    check(len(reattached) == NDETACH, "only %d of %d clients detached and reattached"
          % (len(reattached), NDETACH))
    check(len(scen.clients) == NATTACHED and all(cl.state == "attached" for cl in scen.clients.values()),
          "not all clients attached at the end: %s"
          % collections.Counter(cl.state for cl in scen.clients.values()))

    freeze = [r.get("freeze_ms", 0) for _, r in results]
    total = [r.get("total_ms", 0) for _, r in results]
    bl.log("acceptance: %d ops, traffic %.0fs, %d lines sent, %d deliveries verified, "
           "trace events %s; freeze max %.1f ms, total max %.1f ms"
           % (len(results), t_end - t_traffic, sent, got, dict(scen.trace_stats),
              max(freeze), max(total)))


def reattach(scen, cl, reattached, tries=200):
    """Reattach a detached client (same client name) as soon as its old
    connection is closed (polled from the loop, so callable from a timer)."""
    if cl.state == "detached":
        cl.attach()
        reattached.append((cl, bl.now()))
    elif cl.state in ("attached", "quitting") and tries > 0:
        # the detach has not happened/finished yet (it may be a timer too)
        scen.loop.call_later(0.05, reattach, scen, cl, reattached, tries - 1)
    else:
        raise AssertionError("client %s cannot reattach from state %s" % (cl.user, cl.state))


def one_worker(scen, timeout=15):
    end = bl.now() + timeout
    while True:
        ws = scen.baton.workers()
        if len(ws) == 1:
            return ws[0]
        check(bl.now() < end, "status shows %d workers: %s" % (len(ws), ws))
        scen.loop.run_for(0.1)


def is_sessiond(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return b"baton-sessiond" in f.read().split(b"\0")[0]
    except OSError:
        return False
