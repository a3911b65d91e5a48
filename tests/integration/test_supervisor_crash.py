"""A supervisor crash disconnects no one (issue 10 §6; sessiond/rendezvous.h,
supervisor/orphans.h).

Regression: the worker exited 0.04 s after its supervisor died (EOF on its
control channel), closing every client and network connection. Now it is
orphaned and serves on; a supervisor started again adopts it (the same
worker pid, its listeners, no second connection of any session), and an
upgrade and a normal stop work as before. ngircd and a direct user `dave`
check that the network saw no QUIT/JOIN of the bouncer nick and that lines
flow both ways throughout."""

import os
import signal
import subprocess
import time

import batonlib as bl
import test_basic
from batonlib import check

CHANNELS = ["#chat"]


def setup(ctx):
    """ngircd, a watcher, baton with 2 sessions in test_basic's channels,
    and the direct user dave: (ngircd, watcher, baton, dave)."""
    return test_basic.setup(ctx, nsessions=2)


def worker_pids(ctx):
    """Live baton-sessiond processes this test started (any parent)."""
    pids = []
    for pid in ctx.procs.tagged_pids():
        try:
            with open("/proc/%d/comm" % pid) as f:
                if f.read().strip() == "baton-sessiond":
                    pids.append(pid)
        except OSError:
            pass
    return pids


def kill_supervisor_mid_upgrade(ctx, b, build):
    """`batonctl upgrade` to build, its target adopting each item in 300 ms
    (fault target:slow-prepare), and kill -9 of the supervisor 0.3 s into
    the handoff; returns when batonctl has ended. The fault stays set:
    the caller clears it."""
    b.set_fault("target:slow-prepare")
    p = b.ctl_async("upgrade", build.sessiond, "--json")
    bl.wait_for(lambda: "migrate" in b.log_text().split("upgrade", 1)[-1], 10,
                what="the migration to start")
    ctx.loop.run_for(0.3)
    os.kill(b.proc.pid, signal.SIGKILL)
    b.proc.wait(5)
    ctx.loop.wait_process(p, timeout=30)


def relay_both_ways(ctx, c, dave, tag):
    """One line each way; each must arrive exactly once."""
    dave.privmsg("#chat", "from dave %s" % tag)
    c.privmsg("#chat", "from client %s" % tag)
    ctx.loop.run_until(lambda: any(("from dave %s" % tag) in ln for _, ln in c.lines), 10,
                       raise_on_timeout=False)
    ctx.loop.run_until(lambda: any(("from client %s" % tag) in ln for _, ln in dave.lines), 10,
                       raise_on_timeout=False)
    ctx.loop.run_for(0.3)
    n_c = sum(("from dave %s" % tag) in ln for _, ln in c.lines)
    n_d = sum(("from client %s" % tag) in ln for _, ln in dave.lines)
    check(n_c == 1 and n_d == 1, "%s: client got dave's line %d times, dave got the "
          "client's %d times (want 1 and 1)" % (tag, n_c, n_d))


def test_supervisor_kill9_worker_serves_on_and_is_adopted(ctx):
    """kill -9 of the supervisor: clients stay connected and lines flow; a
    new supervisor adopts the same worker (status: same pid), the network
    sees no reconnect; an upgrade then commits; a stop ends the worker."""
    bB = ctx.builds["b"].require()
    ng, w, b, dave = setup(ctx)
    s = b.sessions[0]
    c = bl.bouncer_client(ctx.loop, b, s, client="laptop")
    relay_both_ways(ctx, c, dave, "before")
    mark = len(w.events)  # membership events from here on are reconnects
    pid = b.worker_pid()
    state = os.path.join(b.dir, "state")
    check(os.path.exists(os.path.join(state, "worker-%d.sock" % pid)),
          "no rendezvous socket worker-%d.sock in %s: %s"
          % (pid, state, os.listdir(state) if os.path.isdir(state) else "no state dir"))

    os.kill(b.proc.pid, signal.SIGKILL)
    b.proc.wait(5)
    ctx.loop.run_for(1.0)
    check(bl.pid_alive(pid), "worker %d died with its supervisor" % pid)
    check(not c.closed, "client connection closed when the supervisor died")
    relay_both_ways(ctx, c, dave, "orphaned")
    # a new client can still log in: the orphan keeps accepting
    c2 = bl.bouncer_client(ctx.loop, b, b.sessions[1], client="phone")
    check(not c2.closed, "login to the orphaned worker failed")

    b.start(wait=False)
    bl.pump_ready(ctx, b)
    check(b.worker_pid() == pid, "the new supervisor serves pid %s, not the orphan %d"
          % (b.worker_pid(), pid))
    log = b.log_text()
    check("adopted orphaned worker pid %d" % pid in log,
          "no adoption in the supervisor log:\n%s" % b.log_tail())
    relay_both_ways(ctx, c, dave, "adopted")
    wk = b.worker()
    check(wk.get("sessions") == 2, "status after adoption: %r" % wk)

    rc, res = b.upgrade(bB)
    check(rc == 0 and res.get("result") == "committed",
          "upgrade after adoption: exit %d, %r" % (rc, res))
    bl.wait_for(lambda: not bl.pid_alive(pid), 10, what="adopted worker %d to exit" % pid)
    relay_both_ways(ctx, c, dave, "upgraded")
    check(not c.closed and not c2.closed, "a client was closed")
    for nick in (x.nick for x in b.sessions):
        ev = [e for e in w.events[mark:] if e[2] == nick.lower() and e[1] in ("QUIT", "JOIN", "PART")]
        check(not ev, "the network saw %s reconnect: %s" % (nick, ev))

    new_pid = b.worker_pid()
    b.stop()
    bl.wait_for(lambda: not bl.pid_alive(new_pid), 10, what="worker %d to exit on stop" % new_pid)


def test_orphan_without_sessions_exits(ctx):
    """An orphan holding no session has nothing to keep: it exits, and its
    rendezvous socket file goes with it; a supervisor started later binds
    the listeners anew and starts a fresh worker."""
    ng = ctx.ngircd()
    b = bl.Baton(ctx, ng, nsessions=0, channels=CHANNELS)
    b.start(wait=False)
    bl.pump_ready(ctx, b)
    pid = b.worker_pid()
    os.kill(b.proc.pid, signal.SIGKILL)
    b.proc.wait(5)
    bl.wait_for(lambda: not bl.pid_alive(pid), 10, what="the empty orphan %d to exit" % pid)
    state = os.path.join(b.dir, "state")
    check(not os.path.exists(os.path.join(state, "worker-%d.sock" % pid)),
          "rendezvous socket of the exited worker left: %s" % os.listdir(state))
    b.start(wait=False)
    bl.pump_ready(ctx, b)
    check(b.worker_pid() not in (None, pid), "no fresh worker: %s" % b.worker_pid())


def test_rendezvous_refuses_while_supervised(ctx):
    """A second supervisor on the same config while the first lives: the
    worker closes the rendezvous (it is not orphaned), so nothing is
    adopted; the second supervisor then fails to bind the listeners and
    exits 1, and the first one's worker serves on undisturbed."""
    ng = ctx.ngircd()
    b = bl.Baton(ctx, ng, nsessions=1, channels=CHANNELS)
    b.start(wait=False)
    bl.pump_ready(ctx, b)
    pid = b.worker_pid()
    t0 = time.monotonic()
    with open(os.path.join(ctx.dir, "second.log"), "wb") as logf:
        p = ctx.procs.popen([b.build.supervisor, "-c", b.config], cwd=b.dir,
                            stdout=logf, stderr=subprocess.STDOUT)
    rc = p.wait(20)
    took = time.monotonic() - t0
    out = open(os.path.join(ctx.dir, "second.log"), errors="replace").read()
    check(rc == 1, "second supervisor exit %r (want 1):\n%s" % (rc, out))
    # A refusal is asked again for a while (main.c MAIN_ORPHAN_WAIT_MS: a
    # worker whose supervisor just exited -- systemctl restart -- refuses
    # until it has read the EOF), whether the worker closed before our
    # ADOPT went out (EPIPE) or after (ECONNRESET). Regression: EPIPE
    # counted as "no orphan here" at once, and after a restart a second
    # worker could start beside the one left serving.
    check(took >= 0.9 and "adoption failed" not in out,
          "the refusing worker was not asked again (%.2f s):\n%s" % (took, out))
    check("adopted" not in out, "the second supervisor adopted a supervised worker:\n%s" % out)
    check(b.worker_pid() == pid and bl.pid_alive(pid), "the first supervisor's worker changed")


def test_adopted_worker_crash_restarts(ctx):
    """The adopted worker is not the new supervisor's child (no SIGCHLD):
    its death is seen on its pidfd, counted as a crash, and a fresh worker
    serves on the same listeners."""
    ng, w, b, dave = setup(ctx)
    pid = b.worker_pid()
    os.kill(b.proc.pid, signal.SIGKILL)
    b.proc.wait(5)
    b.start(wait=False)
    bl.pump_ready(ctx, b)
    check(b.worker_pid() == pid, "not adopted: %s" % b.worker_pid())
    os.kill(pid, signal.SIGKILL)
    bl.wait_for(lambda: (b.try_status() or {}).get("crash_count") == 1, 15,
                what="the adopted worker's death counted as a crash")
    bl.pump_ready(ctx, b, timeout=30)
    new = b.worker_pid()
    check(new != pid, "still pid %d" % pid)
    c = bl.bouncer_client(ctx.loop, b, b.sessions[0], client="laptop")
    relay_both_ways(ctx, c, dave, "restarted")


def test_supervisor_kill9_mid_migration(ctx):
    """kill -9 of the supervisor while an upgrade moves the sessions (the
    target adopts each item slowly): the two workers finish the handoff
    between themselves, the one left without sessions exits, and a new
    supervisor adopts the one holding them. No client is disconnected and
    the network sees no reconnect."""
    bB = ctx.builds["b"].require()
    ng, w, b, dave = setup(ctx)
    c = bl.bouncer_client(ctx.loop, b, b.sessions[0], client="laptop")
    relay_both_ways(ctx, c, dave, "before")
    mark = len(w.events)
    old = b.worker_pid()
    kill_supervisor_mid_upgrade(ctx, b, bB)
    b.clear_fault()
    # one of the two holds every session; the other exits
    bl.wait_for(lambda: len(worker_pids(ctx)) == 1, 20,
                what="one worker left after the handoff")
    ctx.loop.run_for(0.5)
    check(not c.closed, "client closed while its supervisor was dead mid-migration")
    # The orphan holding the sessions serves: a client logs in (regression:
    # the target never got the ACCEPT that a dead supervisor would have
    # sent after the commit, so nobody accepted on the listeners).
    c2 = bl.bouncer_client(ctx.loop, b, b.sessions[1], client="phone", wait=False)
    ctx.loop.run_until(lambda: c2.closed or c2.registered, 10, raise_on_timeout=False)
    check(c2.registered and not c2.closed,
          "no login on the orphan that holds the sessions after the handoff: %s"
          % [ln for _, ln in c2.lines[-5:]])
    b.start(wait=False)
    bl.pump_ready(ctx, b, timeout=30)
    wk = b.worker()
    check(wk.get("sessions") == 2, "adopted worker %r" % wk)
    relay_both_ways(ctx, c, dave, "after")
    for nick in (x.nick for x in b.sessions):
        ev = [e for e in w.events[mark:] if e[2] == nick.lower() and e[1] in ("QUIT", "JOIN", "PART")]
        check(not ev, "the network saw %s reconnect: %s" % (nick, ev))
    bl.log("old worker %d, serving after adoption: %d (%s)" % (old, wk["pid"], wk.get("version")))


def test_upgrade_supervisor_in_place(ctx):
    """`batonctl upgrade-supervisor B` (issue 10 §5): the supervisor
    re-executes itself as build B's supervisor with the same pid (the one
    systemd watches), the worker serves on and is adopted (same worker pid),
    the client stays connected and the network sees no reconnect; and back
    to A. Refused: a binary that is not a supervisor, a relative path."""
    bB = ctx.builds["b"].require()
    ng, w, b, dave = setup(ctx)
    c = bl.bouncer_client(ctx.loop, b, b.sessions[0], client="laptop")
    relay_both_ways(ctx, c, dave, "before")
    mark = len(w.events)
    sup_pid, wpid = b.proc.pid, b.worker_pid()
    for step, build in enumerate((bB, ctx.builds["a"])):
        p = b.ctl_async("upgrade-supervisor", build.supervisor, "--json")
        ctx.loop.wait_process(p, timeout=30)
        rc, res, out, err = b.finish_ctl(p)
        check(rc == 0 and res and res.get("result") == "committed",
              "upgrade-supervisor %s: exit %d, %r %r" % (build.version, rc, out, err))
        check(res["to"]["pid"] == sup_pid and res["to"]["version"] == build.version,
              "result %r (want pid %d, version %s)" % (res, sup_pid, build.version))
        check(res.get("worker_pid") == wpid, "worker %r, want %d adopted" % (res.get("worker_pid"), wpid))
        st = b.status()
        check(st["supervisor"]["pid"] == sup_pid and st["supervisor"]["version"] == build.version,
              "status supervisor %r" % st["supervisor"])
        check(b.worker_pid() == wpid, "worker changed: %s" % b.worker_pid())
        relay_both_ways(ctx, c, dave, "after-step-%d" % step)
    check(b.alive(), "supervisor process gone")
    check(not c.closed, "client closed")
    for nick in (x.nick for x in b.sessions):
        ev = [e for e in w.events[mark:] if e[2] == nick.lower() and e[1] in ("QUIT", "JOIN", "PART")]
        check(not ev, "the network saw %s reconnect: %s" % (nick, ev))
    # the binary already running: unchanged (what `systemctl reload` asks
    # every time); --force re-executes it anyway
    rc, res, out, err = b.ctl("upgrade-supervisor", ctx.builds["a"].supervisor, "--json")
    check(rc == 0 and res and res.get("result") == "unchanged" and res.get("pid") == sup_pid,
          "the running binary again: exit %d, %r %r" % (rc, out, err))
    p = b.ctl_async("upgrade-supervisor", ctx.builds["a"].supervisor, "--force", "--json")
    ctx.loop.wait_process(p, timeout=30)
    rc, res, out, err = b.finish_ctl(p)
    check(rc == 0 and res and res.get("result") == "committed" and res.get("worker_pid") == wpid,
          "--force: exit %d, %r %r" % (rc, out, err))
    relay_both_ways(ctx, c, dave, "after-force")
    # refusals: nothing changes
    rc, res, out, err = b.ctl("upgrade-supervisor", bB.sessiond, "--json")
    check(rc == 1 and res and res.get("result") == "refused" and "not a baton supervisor" in res.get("reason", ""),
          "a worker binary as supervisor: exit %d, %r %r" % (rc, out, err))
    rc, res, out, err = b.ctl("upgrade-supervisor", "/nonexistent/baton-supervisor", "--json")
    check(rc == 2, "a missing binary: exit %d, %r %r" % (rc, out, err))
    check(b.worker_pid() == wpid and b.proc.pid == sup_pid, "a refusal changed something")


def test_upgrade_supervisor_slow_probe_keeps_serving(ctx):
    """Regression: `upgrade-supervisor BIN` ran `BIN --version` on the
    supervisor's loop and waited up to 5 s for it, so status requests (and
    the workers' messages) waited too. Now the probe is a child the loop
    watches: while a BIN that never answers is probed, status answers at
    once and lines flow; after 5 s BIN is refused and nothing changed."""
    ng, w, b, dave = setup(ctx)
    c = bl.bouncer_client(ctx.loop, b, b.sessions[0], client="laptop")
    sup_pid, wpid = b.proc.pid, b.worker_pid()
    slow = os.path.join(ctx.dir, "slow-supervisor")
    with open(slow, "w") as f:
        f.write("#!/bin/sh\nexec sleep 30\n")
    os.chmod(slow, 0o755)
    t0 = bl.now()
    p = b.ctl_async("upgrade-supervisor", slow, "--json")
    ctx.loop.run_for(0.5)
    t1 = bl.now()
    st = b.status()
    took = bl.now() - t1
    check(st["supervisor"]["pid"] == sup_pid and took < 1.5,
          "status during the probe took %.2f s (want < 1.5)" % took)
    relay_both_ways(ctx, c, dave, "during-probe")
    rc, res, out, err = b.ctl("upgrade-supervisor", slow, "--json")
    check(rc == 1 and res and "being prepared" in res.get("reason", ""),
          "a second re-exec during the probe: exit %d, %r %r" % (rc, out, err))
    ctx.loop.wait_process(p, timeout=30)
    rc, res, out, err = b.finish_ctl(p)
    took = bl.now() - t0
    check(rc == 1 and res and res.get("result") == "refused" and
          "did not answer within 5 s" in res.get("reason", ""),
          "a probe that never answers: exit %d, %r %r" % (rc, out, err))
    check(4.5 < took < 10, "refused after %.1f s (want about 5)" % took)
    check(b.worker_pid() == wpid and b.proc.pid == sup_pid and not c.closed,
          "the refusal changed something")
    relay_both_ways(ctx, c, dave, "after-probe")


def test_supervisor_restarted_mid_migration(ctx):
    """kill -9 of the supervisor mid-upgrade, and a new supervisor started
    at once (as systemd's Restart= does) while the two orphans still hand
    the sessions over: whichever it adopts, no session may be started a
    second time (ACCEPT makes a worker start the configured sessions it
    does not hold, and a worker mid-migration does not hold those in
    transit). The network sees no second connection of any user."""
    bB = ctx.builds["b"].require()
    ng = ctx.ngircd()
    b = bl.Baton(ctx, ng, nsessions=2, channels=CHANNELS)
    w = bl.Watcher(ctx.loop, ng, CHANNELS, watch=None)
    b.start(wait=False)
    bl.pump_ready(ctx, b)
    w.wait_present([s.nick for s in b.sessions], timeout=30)
    dave = bl.direct_user(ctx.loop, ng, "dave", CHANNELS)
    c = bl.bouncer_client(ctx.loop, b, b.sessions[0], client="laptop")
    relay_both_ways(ctx, c, dave, "before")
    mark = len(w.events)
    kill_supervisor_mid_upgrade(ctx, b, bB)
    b.start(wait=False)
    b.clear_fault()
    ctx.loop.run_for(6.0)
    ev = [e for e in w.events[mark:] if e[1] in ("QUIT", "JOIN", "PART")]
    check(not ev, "the network saw a second connection or a reconnect: %s\n%s"
          % (ev, b.log_tail()))
    check(not c.closed, "client closed")
    bl.pump_ready(ctx, b, timeout=30)
    wk = b.worker()
    check(wk.get("sessions") == 2 and worker_pids(ctx) == [wk.get("pid")],
          "adopted %r; workers alive: %s" % (wk, worker_pids(ctx)))
    check("adoption deferred" in b.log_text(),
          "the supervisor did not come back mid-migration (nothing tested):\n%s" % b.log_tail())
    relay_both_ways(ctx, c, dave, "after")


def test_supervisor_kill9_during_canary(ctx):
    """kill -9 of the supervisor during a canary: two orphans, both holding
    sessions. Regression: the new supervisor adopted whichever readdir()
    listed first -- often the canary, which serves no listener -- let the
    control worker go, and the ACCEPT made the adopted one start the other's
    sessions a second time (nick_ on the network). Now neither is adopted:
    both serve on (clients and the peer link untouched), the supervisor
    says which pids to stop and exits 1."""
    bB = ctx.builds["b"].require()
    ng = ctx.ngircd()
    b = bl.Baton(ctx, ng, nsessions=6, channels=CHANNELS)
    b.write_config(b.config_text() + "[canary]\nsample_ms = 200\nmin_lines = 50\n")
    w = bl.Watcher(ctx.loop, ng, CHANNELS, watch=None)
    b.start(wait=False)
    bl.pump_ready(ctx, b)
    w.wait_present([s.nick for s in b.sessions], timeout=30)
    dave = bl.direct_user(ctx.loop, ng, "dave", CHANNELS)
    p = b.ctl_async("canary", "start", bB.sessiond, "--percent", "50", "--json")
    ctx.loop.wait_process(p, timeout=60)
    st = b.status()
    check(len(st["workers"]) == 2, "canary workers: %s" % st["workers"])
    pids = sorted(wk["pid"] for wk in st["workers"])
    c = bl.bouncer_client(ctx.loop, b, b.sessions[0], client="laptop")
    mark = len(w.events)
    os.kill(b.proc.pid, signal.SIGKILL)
    b.proc.wait(5)
    ctx.loop.run_for(0.5)
    b.start(wait=False)
    rc = ctx.loop.wait_process(b.proc, timeout=30)
    check(rc == 1 and "none adopted" in b.log_text(),
          "second supervisor exit %r:\n%s" % (rc, b.log_tail()))
    ctx.loop.run_for(3.0)
    ev = [e for e in w.events[mark:] if e[1] in ("QUIT", "JOIN", "PART")]
    check(not ev, "the network saw a second connection or a reconnect: %s\n%s"
          % (ev, b.log_tail()))
    check(all(bl.pid_alive(x) for x in pids), "a worker died: %s" % pids)
    check(sorted(worker_pids(ctx)) == pids, "workers %s, want %s" % (worker_pids(ctx), pids))
    relay_both_ways(ctx, c, dave, "orphans")
    # the operator stops one: the next supervisor adopts the other
    os.kill(pids[1], signal.SIGKILL)
    bl.wait_for(lambda: not bl.pid_alive(pids[1]), 10, what="pid %d to exit" % pids[1])
    b.start(wait=False)
    bl.pump_ready(ctx, b, timeout=60)
    check(b.worker_pid() == pids[0], "adopted %s, want %d" % (b.worker_pid(), pids[0]))

def test_adopted_worker_with_replaced_binary_restarts(ctx):
    """The adopted worker's binary was replaced on disk since it started (a
    package upgrade: /proc/PID/exe reads "PATH (deleted)"). Regression: the
    new supervisor took "PATH (deleted)" as the binary a crash restarts, so
    after the adopted worker's crash no worker could be started again (and
    it was not recorded as a release). Now a restart works."""
    import shutil
    ng = ctx.ngircd()
    b = bl.Baton(ctx, ng, nsessions=1, channels=CHANNELS)
    bindir = os.path.join(ctx.dir, "pkg")
    os.makedirs(bindir)
    path = os.path.join(bindir, "baton-sessiond")
    shutil.copy2(b.build.sessiond, path)
    b.write_config(b.config_text().replace("sessiond = %s" % b.build.sessiond,
                                           "sessiond = %s" % path))
    b.start(wait=False)
    bl.pump_ready(ctx, b)
    pid = b.worker_pid()
    # the package is upgraded under the running worker
    os.unlink(path)
    shutil.copy2(b.build.sessiond, path)
    os.kill(b.proc.pid, signal.SIGKILL)
    b.proc.wait(5)
    b.start(wait=False)
    bl.pump_ready(ctx, b)
    check(b.worker_pid() == pid, "not adopted: %s" % b.worker_pid())
    os.kill(pid, signal.SIGKILL)
    bl.wait_for(lambda: (b.try_status() or {}).get("crash_count") == 1, 15,
                what="the adopted worker's death counted as a crash")
    bl.pump_ready(ctx, b, timeout=30)
    check(b.worker_pid() not in (None, pid), "no worker after the crash:\n%s" % b.log_tail())
    check("its binary %s (deleted) was replaced" % path in b.log_text(),
          "the replaced binary went unnoticed:\n%s" % b.log_tail())


def test_supervisor_restarted_during_long_migration_waits(ctx):
    """A new supervisor whose orphan is still in a migration longer than
    the adoption's wait (12 sessions, each adopted in 300 ms by the target:
    about 4 s): it must not start a worker beside the live ones (that
    would connect every session a second time): it exits 1 saying so, and
    one started after the handoff ended adopts the worker holding them."""
    bB = ctx.builds["b"].require()
    ng, w, b, dave = test_basic.setup(ctx, nsessions=12)
    c = bl.bouncer_client(ctx.loop, b, b.sessions[0], client="laptop")
    mark = len(w.events)
    kill_supervisor_mid_upgrade(ctx, b, bB)
    b.clear_fault()
    b.start(wait=False)
    ctx.loop.wait_process(b.proc, timeout=30)
    check(b.proc.returncode == 1, "the supervisor started beside a live orphan: exit %s\n%s"
          % (b.proc.returncode, b.log_tail()))
    check("did not answer the adoption in time" in b.log_text(), "no reason logged:\n%s" % b.log_tail())
    bl.wait_for(lambda: len(worker_pids(ctx)) == 1, 30, what="the handoff to end")
    b.start(wait=False)
    bl.pump_ready(ctx, b, timeout=30)
    check(b.worker().get("sessions") == 12, "adopted %r" % b.worker())
    ev = [e for e in w.events[mark:] if e[1] in ("QUIT", "JOIN", "PART")]
    check(not ev, "the network saw a reconnect: %s" % ev)
    check(not c.closed, "client closed")
