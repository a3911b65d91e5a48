"""Chunked migrations that fail after some chunks were already committed.

Each chunk is its own transaction (docs/design.md §2), so when chunk k fails,
chunks 0..k-1 already live in the target. These tests pin what happens then,
with 12 sessions in chunks of 4 (chunks 0, 1, 2) and traffic flowing.
"""

import batonlib as bl
from batonlib import check
import re

from test_faults import (fault_case, start, upgrade, one_worker, stable_fd_count,
                         assert_old_still_serving, then_normal_upgrade)

CHUNKED = {"chunk_sessions": 4}


def test_abort_in_last_chunk_moves_committed_chunks_back(ctx):
    """Chunk 2 carries a corrupt item after chunks 0 and 1 committed: the
    supervisor migrates those 8 sessions back from the target (a reverse
    migration), so the old worker ends up with all 12 sessions, the same fd
    count, no connection closed and every line delivered exactly once; a
    normal upgrade afterwards commits."""
    fault_case(ctx, "source:corrupt-item@2", pattern=r"moved back",
               sessiond_opts=CHUNKED)


def test_target_death_in_last_chunk_restarts_lost_sessions(ctx):
    """The target dies on chunk 2's BEGIN, after chunks 0 and 1 committed to
    it: those 8 sessions died with it (their connections were the target's
    alone). The old worker keeps its own 4 sessions untouched and restarts
    the 8 lost ones (their users reconnect); the result says so."""
    scen = start(ctx, sessiond_opts=CHUNKED)
    b = scen.baton
    old_pid = b.worker_pid()
    b.set_fault("target:after-begin@2")
    try:
        rc, res = upgrade(scen, ctx.builds["b"])
    finally:
        b.clear_fault()
    check(rc == 1 and res.get("result") == "aborted", "exit %d, %r" % (rc, res))
    check("lost" in res.get("reason", ""), "reason does not mention lost sessions: %r" % res)
    check(res.get("sessions_lost") is True and (res.get("survivor") or {}).get("pid") == old_pid,
          "result must say sessions were lost and the old worker survives: %r" % res)
    check(res.get("sessions_lost_count") == 8, "result must count the 8 lost sessions: %r" % res)
    wk = one_worker(scen)
    check(wk["pid"] == old_pid, "active worker %s, old was %d" % (wk["pid"], old_pid))
    # every configured session exists again and is registered upstream
    deadline = bl.now() + 30
    while True:
        wk = one_worker(scen)
        if wk.get("sessions") == scen.nsessions and \
                wk.get("upstreams_connected") == scen.nsessions:
            break
        check(bl.now() < deadline, "sessions not restarted: %r" % wk)
        scen.loop.run_for(0.3)
    closed = [c for cl in scen.clients.values() for c in cl.conns if c.closed]
    check(len(closed) == 8, "%d client connections closed, want exactly the 8 of the "
          "lost chunks" % len(closed))


def test_slow_target_times_out(ctx):
    """Regression guard: a target that keeps reading but prepares each item
    in 300 ms (12 items: 3.6 s) against handoff_timeout = 2 s. The source
    must give up after its timeout, send ABORT and resume; the target must
    not commit anything; everything else as for any aborted migration."""
    fault_case(ctx, "target:slow-prepare", pattern=r"timed out|abort",
               handoff_timeout=2)


def test_chunk_in_flight_when_previous_fails_is_thawed(ctx):
    """Pipelined chunks (handoff/protocol.h): the source sends chunk 1 right
    behind COMMIT of chunk 0. The target reads COMMIT 0 and dies before
    COMMITTED 0 (target:after-commit@0, 200 ms after reading it, so chunk 1
    is on the channel by then). Chunk 0 was never acknowledged and chunk 1
    never got a COMMIT: the old worker thaws both and serves all 12
    sessions, same fd count, no connection closed, every line exactly once
    (nothing lost, nothing twice); a normal upgrade afterwards commits."""
    scen = start(ctx, sessiond_opts=CHUNKED)
    b = scen.baton
    old_pid = b.worker_pid()
    fd_before = stable_fd_count(scen, old_pid)
    b.set_fault("target:after-commit@0")
    try:
        rc, res = upgrade(scen, ctx.builds["b"])
    finally:
        b.clear_fault()
    assert_old_still_serving(scen, rc, res, old_pid, fd_before, "target:after-commit@0")
    log = b.log_text()
    check(re.search(r"baton-sessiond\[%d\].*chunk 1 \(sent behind the chunk before it\) "
                    r"aborted with it" % old_pid, log),
          "the old worker did not report chunk 1 in flight and aborted with chunk 0")
    scen.wait_traffic_through(what="traffic after the abort (old worker)")
    then_normal_upgrade(scen)
    scen.verify(drain_timeout=30)
