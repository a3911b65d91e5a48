"""The old worker (S) killed at many moments of a chunked migration.

When S dies halfway, the sessions of the chunks it had not handed over die
with it; the new worker (T) serves what it committed and restarts the rest.
The result batonctl prints must say exactly that: here it is compared, kill
after kill, with what the clients and the IRC server saw.
"""

import os
import random
import signal

import batonlib as bl
from batonlib import check

NSESSIONS = 50
CHUNK = 5                 # 10 chunks
ITERATIONS = 14


def closed_clients(scen):
    """Users whose current client connection is closed."""
    return {u for u, cl in scen.clients.items() if cl.conn.closed}


def network_quits(scen, t0):
    """Bouncer nicks the network saw QUIT since t0."""
    return {e[2] for e in scen.watcher.events_between(t0, commands=("QUIT",))}


def settle(scen, old_pid, timeout=20):
    """Until the old worker is gone and one worker serves; returns it."""
    bl.wait_for(lambda: not bl.pid_alive(old_pid), 10, what="old worker dead")
    end = bl.now() + timeout
    while True:
        ws = scen.baton.workers()
        if len(ws) == 1 and ws[0]["pid"] != old_pid:
            return ws[0]
        check(bl.now() < end, "status after killing the source: %s" % ws)
        scen.loop.run_for(0.2)


def restore(scen, users):
    """Every session back in its channels and every dropped client attached
    again, so the next kill starts from the full picture."""
    scen.watcher.wait_present(scen.nicks, timeout=60)
    for u in users:
        scen.clients[u].attach()
    scen.loop.run_until(lambda: all(scen.clients[u].state == "attached" for u in users), 30,
                        "dropped clients attached again")
    check(not closed_clients(scen), "clients closed while re-attaching: %s" % closed_clients(scen))


def test_source_killed_mid_migration_result_is_truthful(ctx):
    """Bug 8: with S killed mid-migration, batonctl exited 0 with 'committed'
    and sessions_lost false although up to 40 of 50 users had been dropped.

    50 sessions, each with a client, in chunks of 5; 14 upgrades in a row,
    each killing S at another moment: after PREPARED or after COMMIT of a
    random chunk (fault points), or by SIGKILL from outside at a random
    time while the target prepares a deliberately slow chunk (anywhere from
    before the migration starts to mid-chunk). After each: the sessions
    lost are those whose client connection closed, and the network saw
    exactly those nicks QUIT; the result must report the same count
    (sessions_lost, sessions_lost_count), say 'committed' and exit 0 only
    when nothing was lost, and name the new worker as survivor."""
    seed = int(os.environ.get("BATON_TEST_SEED", "8"))
    rng = random.Random(seed)
    ctx.builds["b"].require()
    scen = bl.LoadScenario(ctx, nsessions=NSESSIONS, nattached=NSESSIONS, nnet=0,
                           channels=("#c1",),
                           baton_kw={"sessiond_opts": {"chunk_sessions": CHUNK}})
    scen.setup()
    b = scen.baton
    builds = [ctx.builds["b"], ctx.builds["a"]]
    kinds = ["after-prepared", "after-commit", "external"]
    plan = [(kinds[i % 3], rng.randrange(NSESSIONS // CHUNK)) for i in range(ITERATIONS)]
    plan[1] = ("after-commit", NSESSIONS // CHUNK - 1)   # the last chunk: nothing lost
    bl.log("seed %d, plan %s" % (seed, plan))
    summary = []
    for i, (kind, chunk) in enumerate(plan):
        old_pid = b.worker_pid()
        to = builds[i % 2]
        t0 = bl.now()
        if kind == "external":
            b.set_fault("target:slow-prepare@%d" % chunk)
            p = b.ctl_async("upgrade", to.sessiond, "--json")
            delay = rng.uniform(0.05, 1.8)
            scen.loop.run_for(delay)
            try:
                os.kill(old_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            what = "SIGKILL after %.2fs, target slow in chunk %d" % (delay, chunk)
        else:
            b.set_fault("source:%s@%d" % (kind, chunk))
            p = b.ctl_async("upgrade", to.sessiond, "--json")
            what = "source:%s@%d" % (kind, chunk)
        scen.loop.wait_process(p, timeout=120)
        rc, res, out, err = b.finish_ctl(p)
        b.clear_fault()
        check(isinstance(res, dict), "%s: no JSON result: %r %r" % (what, out, err))
        wk = settle(scen, old_pid)
        # What really happened: closes reach the clients and ngircd at once;
        # give them a moment, then the lost sessions reconnect.
        scen.loop.run_for(1.0)
        dropped = closed_clients(scen)
        quits = network_quits(scen, t0)
        lost = len(dropped)
        bl.log("%d: %s: exit %d, result %s, sessions_lost %s/%s; %d clients dropped, %d nicks quit"
               % (i, what, rc, res.get("result"), res.get("sessions_lost"),
                  res.get("sessions_lost_count"), lost, len(quits)))
        summary.append((what, res.get("result"), res.get("sessions_lost_count"), lost))
        check(quits == {b.by_user[u].nick.lower() for u in dropped},
              "%s: the network saw %d nicks quit, %d clients were dropped: %s vs %s"
              % (what, len(quits), lost, sorted(quits)[:8], sorted(dropped)[:8]))
        check((res.get("survivor") or {}).get("pid") == wk["pid"] == (res.get("to") or {}).get("pid"),
              "%s: the new worker serves (pid %s) but the result names %r"
              % (what, wk["pid"], res.get("survivor")))
        check(res.get("sessions_lost") is (lost > 0)
              and res.get("sessions_lost_count", 0) == lost,
              "%s: %d of %d sessions were lost but the result says sessions_lost %r, count %r: %r"
              % (what, lost, NSESSIONS, res.get("sessions_lost"), res.get("sessions_lost_count"), res))
        if lost:
            check(rc == 1 and res.get("result") == "partial",
                  "%s: %d sessions lost, yet exit %d and result %r"
                  % (what, lost, rc, res.get("result")))
        else:
            check(rc == 0 and res.get("result") == "committed",
                  "%s: nothing lost, yet exit %d and result %r (%s)"
                  % (what, rc, res.get("result"), res.get("reason")))
        check(wk.get("version") == to.version, "%s: serving worker %r" % (what, wk))
        restore(scen, dropped)
    bl.log("summary (what, result, reported lost, really lost): %s" % summary)
    check(any(s[3] > 0 for s in summary) and any(s[3] == 0 for s in summary),
          "the kills should both lose sessions and not: %s" % summary)
