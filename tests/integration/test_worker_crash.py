"""A worker crash is an adoption, not a disconnect (issue 10 §1-§3;
sessiond/checkpoint.h, supervisor/custody.h).

With [supervisor] custody on, the supervisor holds a duplicate of every
socket and the worker's checkpoint log; after kill -9 of the worker the next
worker adopts every session from them. Checked with ngircd and a direct
user: the client's TCP connection stays (no reconnect: the same socket
keeps working), the network sees no QUIT/JOIN of the bouncer nicks, lines
flow both ways exactly once after the crash, and status `crashes[]` and
`custody` say what happened. Without custody (the regression) every
client is disconnected by the same kill."""

import os
import signal
import time

import batonlib as bl
import test_basic
from batonlib import check
from test_supervisor_crash import relay_both_ways

CUSTODY = {"custody": "yes", "custody_checkpoint_ms": 50}


def setup(ctx, custody=True, nsessions=2):
    return test_basic.setup(ctx, nsessions=nsessions,
                            supervisor_opts=CUSTODY if custody else {"custody": "no"})


def kill_worker(ctx, b):
    pid = b.worker_pid()
    os.kill(pid, signal.SIGKILL)
    bl.wait_for(lambda: b.worker_pid() not in (None, pid), 20,
                what="a new worker after kill -9")
    bl.wait_for(lambda: (b.status().get("crashes") or [{}])[-1].get("restore_ms") is not None,
                20, what="the restore to end")
    return b.status()


def test_worker_kill9_keeps_clients_and_network(ctx):
    """kill -9 of the idle worker: the client stays connected and relays
    both ways, no QUIT/JOIN at the network, crashes[] counts the sessions
    restored and connections kept; twice in a row."""
    ng, w, b, dave = setup(ctx)
    s = b.sessions[0]
    c = bl.bouncer_client(ctx.loop, b, s, client="laptop")
    relay_both_ways(ctx, c, dave, "before")
    st = b.status()
    cu = st.get("custody")
    check(cu is not None and cu["fds"] >= 3, "status custody: %r" % (cu,))
    check(cu["sessions"] == 2 and cu["checkpoint_bytes"] > 64, "status custody: %r" % (cu,))
    t0 = time.monotonic()
    for rnd in range(2):
        ctx.loop.run_for(0.2)
        st = kill_worker(ctx, b)
        cr = st["crashes"][-1]
        check(cr["signal"] == 9, "crash entry: %r" % cr)
        check(cr["sessions_restored"] == 2 and cr["sessions_lost"] == 0,
              "round %d: crash entry %r" % (rnd, cr))
        check(cr["connections_kept"] == 3 and cr["connections_reconnected"] == 0,
              "round %d: crash entry %r" % (rnd, cr))
        check(cr["lines_lost"] == 0, "round %d: idle worker lost lines: %r" % (rnd, cr))
        check(not c.closed, "round %d: the client was disconnected" % rnd)
        relay_both_ways(ctx, c, dave, "after%d" % rnd)
    ev = w.events_between(t0)
    check(ev == [], "the network saw the bouncer reconnect: %r" % ev)


def test_worker_kill9_under_traffic_no_duplicates(ctx):
    """kill -9 while dave sends numbered lines: each line reaches the client
    at most once, the lines the client missed are at most those counted in
    crashes[].lines_lost, and the client and network connections stay."""
    ng, w, b, dave = setup(ctx)
    s = b.sessions[0]
    c = bl.bouncer_client(ctx.loop, b, s, client="laptop")
    relay_both_ways(ctx, c, dave, "before")
    t0 = time.monotonic()
    n = 300
    for i in range(n):
        dave.privmsg("#chat", "tok dave %d" % i)
        if i == 150:
            os.kill(b.worker_pid(), signal.SIGKILL)
        ctx.loop.run_for(0.005)
    bl.wait_for(lambda: (b.status().get("crashes") or [{}])[-1].get("restore_ms") is not None,
                20, what="the restore to end")
    relay_both_ways(ctx, c, dave, "after")
    got = [ln for _, ln in c.lines if "tok dave " in ln]
    nums = [int(ln.rsplit(" ", 1)[1]) for ln in got]
    dup = sorted({x for x in nums if nums.count(x) > 1})
    check(dup == [], "duplicated lines at the client: %s" % dup)
    cr = b.status()["crashes"][-1]
    missing = n - len(set(nums))
    print("crash entry %r; client missed %d lines" % (cr, missing))
    check(not c.closed, "the client was disconnected")
    check(cr["connections_kept"] == 3, "crash entry %r" % cr)
    check(missing <= cr["lines_lost"] * 2 + 0, "client missed %d lines, lines_lost says %r"
          % (missing, cr["lines_lost"]))
    ev = w.events_between(t0)
    check(ev == [], "the network saw the bouncer reconnect: %r" % ev)


def test_worker_kill9_without_custody_disconnects(ctx):
    """The regression this fixes: custody off, kill -9 closes the client."""
    ng, w, b, dave = setup(ctx, custody=False, nsessions=1)
    s = b.sessions[0]
    c = bl.bouncer_client(ctx.loop, b, s, client="laptop")
    relay_both_ways(ctx, c, dave, "before")
    os.kill(b.worker_pid(), signal.SIGKILL)
    ctx.loop.run_until(lambda: c.closed, 10, raise_on_timeout=False)
    check(c.closed, "without custody the client should see the crash")
    check(b.status().get("custody") is None, "custody off: status custody should be null")
