"""Failed and interrupted migrations never harm the source (docs/design.md §2).

Each test: 12 bouncer sessions on ngircd, all with a client attached,
3 network users; numbered traffic flows in both directions the whole time
(before, during and after the fault). A fault is injected through
BATON_FAULT_FILE (or by breaking the target's environment), then
`batonctl upgrade` runs. For an aborted migration we assert: exit code 1,
result 'aborted' with a reason, exactly one worker remains and it is the old
one (same pid, version A), its fd count returns to the value before the
attempt (nothing leaked), no client or upstream connection closed (watcher
and ngircd log), every numbered line is delivered exactly once in
per-sender order, and a following normal upgrade commits.
"""

import os
import re
import signal
import subprocess

import batonlib as bl
from batonlib import check

NSESSIONS = 12


def start(ctx, nsessions=NSESSIONS, **baton_kw):
    ctx.builds["b"].require()
    scen = bl.LoadScenario(ctx, nsessions=nsessions, nattached=nsessions, nnet=3,
                           baton_kw=baton_kw)
    scen.setup()
    scen.start_fixed_traffic(client_rate=8.0, net_rate=8.0)
    scen.wait_traffic_through(what="traffic before the fault")
    return scen


def ctl(scen, *args, timeout=120):
    """batonctl ARGS while traffic keeps flowing; returns (rc, json-or-raw)."""
    p = scen.baton.ctl_async(*args)
    scen.loop.wait_process(p, timeout=timeout)
    rc, data, out, err = scen.baton.finish_ctl(p)
    return rc, (data if data is not None else {"_stdout": out, "_stderr": err})


def upgrade(scen, build):
    return ctl(scen, "upgrade", build.sessiond, "--json")


def stable_fd_count(scen, pid):
    """fd count of pid, read twice 0.3 s apart until two reads agree."""
    last = bl.fd_count(pid)
    for _ in range(10):
        scen.loop.run_for(0.3)
        cur = bl.fd_count(pid)
        if cur == last:
            return cur
        last = cur
    return last


def one_worker(scen, timeout=15):
    """Pump until status shows exactly one worker; return it."""
    end = bl.now() + timeout
    while True:
        ws = scen.baton.workers()
        if len(ws) == 1:
            return ws[0]
        if bl.now() > end:
            raise AssertionError("status still shows %d workers after %ds: %s"
                                 % (len(ws), timeout, ws))
        scen.loop.run_for(0.2)


def assert_old_still_serving(scen, rc, res, old_pid, fd_before, what):
    """The common post-conditions of an aborted migration."""
    vA = scen.ctx.builds["a"].version
    check(rc == 1, "%s: batonctl exit %d (want 1), output %r" % (what, rc, res))
    check(res.get("result") == "aborted", "%s: result %r" % (what, res))
    check(isinstance(res.get("reason"), str) and res["reason"].strip(),
          "%s: no reason in %r" % (what, res))
    check((res.get("survivor") or {}).get("pid") == old_pid and res.get("sessions_lost") is False,
          "%s: result must name the old worker as survivor with no sessions lost: %r" % (what, res))
    wk = one_worker(scen)
    check(wk["pid"] == old_pid, "%s: active worker pid %s, old worker was %d" % (what, wk["pid"], old_pid))
    check(wk.get("version") == vA, "%s: active worker version %r, want %r" % (what, wk.get("version"), vA))
    check(wk.get("sessions") == scen.nsessions, "%s: worker has %r sessions" % (what, wk.get("sessions")))
    check(bl.pid_alive(old_pid), "%s: old worker died" % what)
    # fds: back to the count before the attempt (closing may lag a little)
    end = bl.now() + 5
    cur = bl.fd_count(old_pid)
    while cur != fd_before and bl.now() < end:
        scen.loop.run_for(0.2)
        cur = bl.fd_count(old_pid)
    if cur != fd_before:
        scen.loop.run_for(1.0)
        probs = scen.connection_problems()
        raise AssertionError("%s: old worker fd count %d after abort, %d before; kinds now %s;"
                             " connection problems: %s; supervisor log:\n%s"
                             % (what, cur, fd_before, dict(bl.fd_kinds(old_pid)),
                                probs or "none", scen.baton.log_tail(25)))
    bl.log("%s: aborted as expected: %s" % (what, res.get("reason")))


def then_normal_upgrade(scen):
    """A clean upgrade to build B right after; must commit."""
    scen.baton.clear_fault()
    scen.wait_traffic_through(what="traffic before the normal upgrade")
    old = scen.baton.worker_pid()
    rc, res = upgrade(scen, scen.ctx.builds["b"])
    check(rc == 0 and res.get("result") == "committed",
          "normal upgrade after the fault: exit %d, %r" % (rc, res))
    wk = one_worker(scen)
    check(wk["pid"] != old and wk.get("version") == scen.ctx.builds["b"].version,
          "after the normal upgrade status shows %r" % wk)
    scen.wait_traffic_through(what="traffic after the normal upgrade (new worker)")


def fault_case(ctx, spec, pattern=None, **baton_kw):
    """The whole aborted-migration scenario for one fault line. pattern: a
    regex the reason must match (case-insensitive), if given."""
    scen = start(ctx, **baton_kw)
    b = scen.baton
    old_pid = b.worker_pid()
    fd_before = stable_fd_count(scen, old_pid)
    b.set_fault(spec)
    try:
        rc, res = upgrade(scen, ctx.builds["b"])
    finally:
        b.clear_fault()
    assert_old_still_serving(scen, rc, res, old_pid, fd_before, spec)
    if pattern:
        check(re.search(pattern, res.get("reason", ""), re.I),
              "%s: reason %r does not match /%s/" % (spec, res.get("reason"), pattern))
    scen.wait_traffic_through(what="traffic after the abort (old worker)")
    then_normal_upgrade(scen)
    scen.verify(drain_timeout=30)


# ---- target faults ----------------------------------------------------------

def test_target_dies_before_ready(ctx):
    """target:before-ready: the new worker dies before READY; the migration
    is aborted before anything is frozen and the old worker serves on."""
    fault_case(ctx, "target:before-ready")


def test_target_dies_after_begin(ctx):
    """target:after-begin: the target dies after receiving BEGIN, while the
    source is frozen; the source unfreezes and serves on, nothing lost."""
    fault_case(ctx, "target:after-begin")


def test_target_dies_after_end(ctx):
    """target:after-end: the target dies after receiving every item and END,
    before PREPARED; the source resumes exactly where it froze."""
    fault_case(ctx, "target:after-end")


def test_target_dies_after_prepared(ctx):
    """target:after-prepared: the target dies after sending PREPARED (before
    COMMIT reaches it); the source sees the channel die and resumes."""
    fault_case(ctx, "target:after-prepared")


def test_target_hangs_after_begin(ctx):
    """target:hang-after-begin with handoff_timeout = 2: the target stops
    reading; the source times out, aborts and resumes; the hung target is
    gone afterwards (only one worker in status)."""
    t0 = bl.now()
    fault_case(ctx, "target:hang-after-begin", pattern=r"time|hang|deadline", handoff_timeout=2)
    bl.log("hang case took %.1fs" % (bl.now() - t0))


def test_target_hangs_before_ready_refused_in_time(ctx):
    """target:hang-before-ready: the new worker never answers READY (it
    sleeps at start). The upgrade is refused within handoff_timeout (plus
    3 s of slack), the hung target is killed (not asked to leave and waited
    on for another timeout), and the old worker serves on untouched.
    Bug: the refusal took twice the timeout (20 s for a 10 s setting)."""
    timeout = 5
    scen = start(ctx, handoff_timeout=timeout)
    b = scen.baton
    old_pid = b.worker_pid()
    fd_before = stable_fd_count(scen, old_pid)
    b.set_fault("target:hang-before-ready")
    t0 = bl.now()
    try:
        rc, res = upgrade(scen, ctx.builds["b"])
    finally:
        b.clear_fault()
    took = bl.now() - t0
    bl.log("hung target refused after %.2f s (handoff_timeout %d s)" % (took, timeout))
    check(took <= timeout + 3, "refusal took %.2f s for handoff_timeout %d s: %r"
          % (took, timeout, res))
    check(res.get("refused") is True and re.search(r"READY", res.get("reason", "")),
          "want a refusal naming READY: %r" % res)
    hung = (res.get("to") or {}).get("pid")
    check(hung and not bl.pid_alive(hung), "the hung target pid %r is still alive" % hung)
    assert_old_still_serving(scen, rc, res, old_pid, fd_before, "hang-before-ready")
    then_normal_upgrade(scen)
    scen.verify(drain_timeout=30)


# ---- source faults ----------------------------------------------------------

def test_source_corrupt_item(ctx):
    """source:corrupt-item: the source sends a malformed item payload; the
    target rejects it (ABORT + reason), the source resumes."""
    fault_case(ctx, "source:corrupt-item")


def test_source_extra_fd(ctx):
    """source:extra-fd: an item carries one unannounced extra fd; the target
    closes it and aborts; the source resumes without leaking an fd."""
    fault_case(ctx, "source:extra-fd")


def test_source_truncated_item(ctx):
    """source:truncate-item: an item payload cut in half; the target aborts,
    the source resumes."""
    fault_case(ctx, "source:truncate-item")


def test_source_dies_after_prepared(ctx):
    """source:after-prepared: the source dies after PREPARED, before COMMIT.
    It never resumed, so the target commits on its own: batonctl reports a
    clear result (exit 0 / committed, or exit 1 with a reason), status shows
    one worker = the new one (version B, all sessions), every client and
    upstream connection is still open and every line is delivered exactly
    once; a further upgrade commits."""
    scen = start(ctx)
    b = scen.baton
    old_pid = b.worker_pid()
    b.set_fault("source:after-prepared")
    try:
        rc, res = upgrade(scen, ctx.builds["b"])
    finally:
        b.clear_fault()
    check(rc in (0, 1) and res.get("result") in ("committed", "aborted"),
          "unclear result: exit %d, %r" % (rc, res))
    bl.log("source died after PREPARED: batonctl exit %d result %r reason %r"
           % (rc, res.get("result"), res.get("reason")))
    check((res.get("survivor") or {}).get("pid") == (res.get("to") or {}).get("pid")
          and res.get("sessions_lost") is False,
          "result must name the new worker as survivor, nothing lost: %r" % res)
    bl.wait_for(lambda: not bl.pid_alive(old_pid), 10, what="old worker dead")
    end = bl.now() + 15
    while True:
        ws = b.workers()
        if len(ws) == 1 and ws[0]["pid"] != old_pid:
            break
        check(bl.now() < end, "status after source death: %s" % ws)
        scen.loop.run_for(0.2)
    wk = ws[0]
    check(wk.get("version") == ctx.builds["b"].version, "serving worker %r is not build B" % wk)
    check(wk.get("sessions") == scen.nsessions, "serving worker has %r sessions" % wk.get("sessions"))
    scen.wait_traffic_through(what="traffic after the source died (new worker)")
    # next upgrade: back to A
    rc2, res2 = upgrade(scen, ctx.builds["a"])
    check(rc2 == 0 and res2.get("result") == "committed", "upgrade after: exit %d %r" % (rc2, res2))
    scen.wait_traffic_through(what="traffic after the upgrade back to A")
    scen.verify(drain_timeout=30)


# ---- target preflight refusals ---------------------------------------------

def test_target_refuses_bad_config(ctx):
    """With the config file made invalid after start, an upgrade is refused:
    the target fails its preflight, batonctl exits 1 with result 'aborted'
    and a reason naming the config problem, the old worker serves on
    untouched. With the config restored a normal upgrade commits."""
    scen = start(ctx)
    b = scen.baton
    old_pid = b.worker_pid()
    fd_before = stable_fd_count(scen, old_pid)
    good = b.config_text()
    b.write_config(good + "[network broken]\nport = not-a-port\n[user ghost/nonet]\nnick = ghost\n")
    try:
        rc, res = upgrade(scen, ctx.builds["b"])
    finally:
        b.write_config(good)
    assert_old_still_serving(scen, rc, res, old_pid, fd_before, "bad config")
    check(re.search(r"config|baton\.ini|:\d+:|port|network", res.get("reason", ""), re.I),
          "reason does not say what is wrong with the config: %r" % res.get("reason"))
    then_normal_upgrade(scen)
    scen.verify(drain_timeout=30)


def refuses_low_nofile(ctx, custody):
    scen = start(ctx, nsessions=20, supervisor_opts={"custody": "yes" if custody else "no"})
    b = scen.baton
    old_pid = b.worker_pid()
    fd_before = stable_fd_count(scen, old_pid)
    kinds = bl.fd_kinds(old_pid)
    sockets = kinds.get("socket", 0)
    sup_fds = bl.fd_count(b.proc.pid)
    low = max(sup_fds + 8, 16)
    # the target must hold every socket it adopts; with custody the
    # supervisor also gets a copy of each as the target registers it, on
    # top of the copies it holds already (config_fds_needed()'s custody term)
    need = sockets + (sup_fds if custody else 0)
    check(low < need, "test setup: limit %d not below the %d fds the upgrade needs" % (low, need))
    orig = open("/proc/%d/limits" % b.proc.pid).read()
    m = re.search(r"Max open files\s+(\d+)\s+(\d+)", orig)
    soft, hard = int(m.group(1)), int(m.group(2))
    subprocess.run(["prlimit", "--pid", str(b.proc.pid), "--nofile=%d:%d" % (low, hard)], check=True)
    try:
        rc, res = upgrade(scen, ctx.builds["b"])
    finally:
        subprocess.run(["prlimit", "--pid", str(b.proc.pid), "--nofile=%d:%d" % (soft, hard)],
                       check=True)
    bl.log("nofile: limit %d, %d sockets to move, supervisor had %d fds" % (low, sockets, sup_fds))
    assert_old_still_serving(scen, rc, res, old_pid, fd_before, "low RLIMIT_NOFILE")
    check(re.search(r"nofile|rlimit|file descriptor|fds|limit", res.get("reason", ""), re.I),
          "reason does not mention the fd limit: %r" % res.get("reason"))
    # with custody the reason says what custody costs and what turning it
    # off would need instead (it is on by default: a config that fitted
    # before must learn why it does not now)
    check(("custody = no" in res.get("reason", "")) == custody,
          "reason and custody (%s): %r" % (custody, res.get("reason")))
    then_normal_upgrade(scen)
    scen.verify(drain_timeout=30)


def test_target_refuses_low_nofile(ctx):
    """The supervisor's RLIMIT_NOFILE is lowered (prlimit --pid) below the
    number of fds the upgrade needs (custody on, the default: the target's
    sockets and the supervisor's copies of them); the new worker inherits
    it, the supervisor's preflight (or the target's fd count check)
    refuses, batonctl exits 1 with 'aborted' and a reason that names the
    limit and `custody = no`, and the old worker serves on with no fd
    leaked. With the limit restored a normal upgrade commits."""
    refuses_low_nofile(ctx, custody=True)


def test_target_refuses_low_nofile_no_custody(ctx):
    """The same with `custody = no`: the limit is below the sockets the
    target would receive (the formula without custody's term), and the
    reason does not offer turning custody off."""
    refuses_low_nofile(ctx, custody=False)


def test_incompatible_schema_refused(ctx):
    """An upgrade to build-incompat (state schema 99..99; A reads 1..3) is refused
    before anything is frozen: exit 1, 'aborted', the reason mentions the
    schema; the old worker serves on untouched."""
    inc = ctx.builds["incompat"].require()
    scen = start(ctx)
    b = scen.baton
    old_pid = b.worker_pid()
    fd_before = stable_fd_count(scen, old_pid)
    rc, res = upgrade(scen, inc)
    assert_old_still_serving(scen, rc, res, old_pid, fd_before, "incompatible schema")
    check(re.search(r"schema", res.get("reason", ""), re.I),
          "reason does not mention the schema: %r" % res.get("reason"))
    then_normal_upgrade(scen)
    scen.verify(drain_timeout=30)


# ---- crash outside a migration ---------------------------------------------

def wait_crash_recovered(scen, old_pid):
    """Until the supervisor counted the crash and a new worker holds every
    session; returns the status."""
    b = scen.baton
    end = bl.now() + 60
    while True:
        st = b.try_status()
        ws = (st or {}).get("workers") or []
        if (st and st.get("crash_count") == 1 and len(ws) == 1 and ws[0]["pid"] != old_pid
                and ws[0].get("sessions") == scen.nsessions):
            reg = bl.Baton.worker_registered(ws[0])
            if reg is None or reg >= scen.nsessions:
                return st
        check(bl.now() < end, "no recovery after worker crash; status %s; log:\n%s"
              % (st, b.log_tail()))
        scen.loop.run_for(0.3)


def test_worker_crash_restarts(ctx):
    """Without custody (`custody = no`; on by default since issue 10), kill
    -9 of the worker outside any migration: the supervisor counts it
    (crash_count = 1, one record in `crashes`), starts a new worker (new pid) holding every session, the
    sessions reconnect upstream (the watcher sees the nicks back in all
    channels), clients log in again and numbered lines flow both ways
    exactly once."""
    scen = start(ctx, nsessions=8, supervisor_opts={"custody": "no"})
    b = scen.baton
    scen.stop_traffic()
    scen.loop.run_for(0.5)
    old_pid = b.worker_pid()
    os.kill(old_pid, signal.SIGKILL)
    st = wait_crash_recovered(scen, old_pid)
    check(st.get("custody") is None, "custody = no: status custody %r" % st.get("custody"))
    check(st.get("crash_count") == 1, "crash_count = %r" % st.get("crash_count"))
    # issue 10's crash record; without custody nothing is kept: the 8
    # sessions lost their connections (they reconnect), none restored
    cr = (st.get("crashes") or [{}])[-1]
    check(len(st.get("crashes") or []) == 1 and cr.get("pid") == old_pid and cr.get("signal") == 9
          and cr.get("sessions_restored") == 0 and cr.get("sessions_lost") == scen.nsessions
          and cr.get("connections_kept") == 0 and cr.get("connections_reconnected", 0) >= scen.nsessions
          and "lines_lost" in cr and isinstance(cr.get("restore_ms"), int) and cr["restore_ms"] > 0,
          "crash record %r" % st.get("crashes"))
    scen.watcher.wait_present(scen.nicks, timeout=60)
    # every old client connection died with the worker; log in again
    led = bl.Ledger()
    conns = []
    for s in b.sessions[:4]:
        c = bl.bouncer_client(scen.loop, b, s, client="after-crash")
        led.hook(c, s.user)
        conns.append((s, c))
    nu = scen.netusers[0]
    for i in range(5):
        nu.conn.privmsg("#c1", "%s after crash" % led.next("net", "#c1"))
    for s, c in conns:
        c.privmsg("#c2", "%s from %s" % (led.next(s.user, "#c2"), s.user))
    scen.watcher.ledger = led
    exp = {s.user: {k for k in led.sent if k[0] != s.user} for s, _ in conns}
    exp["watcher"] = set(led.sent)
    scen.loop.run_until(lambda: all(len(led.received[r]) >= len(e) for r, e in exp.items()), 15,
                        raise_on_timeout=False)
    scen.loop.run_for(0.5)
    bad = led.diff(exp)
    check(not bad, "after crash:\n" + bl.Ledger.format_diff(bad))


def test_worker_crash_adopted_with_custody(ctx):
    """The same kill -9 with `custody = yes` (issue 10; off by default until
    its records scale, README "Custody"): the new worker adopts every
    session from custody, so the crash
    record says 8 restored, 0 lost, every connection kept (8 upstream, 8
    client), no client connection closes, the network sees no QUIT/JOIN,
    and numbered lines sent before and after flow both ways exactly once on
    the same connections."""
    scen = start(ctx, nsessions=8, supervisor_opts={"custody": "yes"})
    b = scen.baton
    check(b.status().get("custody") is not None, "custody is not on: status %r"
          % b.status().get("custody"))
    scen.stop_traffic()
    scen.drain(30)
    old_pid = b.worker_pid()
    os.kill(old_pid, signal.SIGKILL)
    st = wait_crash_recovered(scen, old_pid)
    cr = (st.get("crashes") or [{}])[-1]
    check(len(st.get("crashes") or []) == 1 and cr.get("pid") == old_pid and cr.get("signal") == 9
          and cr.get("sessions_restored") == scen.nsessions and cr.get("sessions_lost") == 0
          and cr.get("connections_kept") == 2 * scen.nsessions
          and cr.get("connections_reconnected") == 0 and isinstance(cr.get("lines_lost"), int),
          "crash record %r" % st.get("crashes"))
    scen.start_fixed_traffic(client_rate=8.0, net_rate=8.0)
    scen.wait_traffic_through(what="traffic after the crash")
    scen.verify(drain_timeout=30)


def test_source_dies_after_commit(ctx):
    """source:after-commit: the source dies right after sending COMMIT, before
    COMMITTED arrives. Having sent COMMIT it could only have resumed after
    killing the target, so the target must commit (its COMMITTED fails with
    EPIPE) and take over: one worker, build B, all sessions, no connection
    closed, every line exactly once."""
    scen = start(ctx)
    b = scen.baton
    old_pid = b.worker_pid()
    b.set_fault("source:after-commit")
    try:
        rc, res = upgrade(scen, ctx.builds["b"])
    finally:
        b.clear_fault()
    check(rc in (0, 1) and res.get("result") in ("committed", "aborted"),
          "unclear result: exit %d, %r" % (rc, res))
    check((res.get("survivor") or {}).get("pid") == (res.get("to") or {}).get("pid")
          and res.get("sessions_lost") is False,
          "result must name the new worker as survivor, nothing lost: %r" % res)
    bl.wait_for(lambda: not bl.pid_alive(old_pid), 10, what="old worker dead")
    wk = one_worker(scen)
    check(wk["pid"] != old_pid and wk.get("version") == ctx.builds["b"].version
          and wk.get("sessions") == scen.nsessions, "serving worker %r" % wk)
    scen.wait_traffic_through(what="traffic after the source died (new worker)")
    scen.verify(drain_timeout=30)
