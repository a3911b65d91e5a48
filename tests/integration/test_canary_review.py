"""Regression tests from the review of the canary (issue 9). Each test
opens with the bug it shows."""

import os
import signal

import batonlib as bl
from batonlib import check
from test_canary import setup, ctl_pumping, workers_by_role, cohort_users


def test_canary_control_crash_keeps_candidate_unjudged(ctx):
    """Regression (review): the old worker S crashing during a canary's bake made
    the candidate T -- a build the gates never finished judging and nobody
    promoted -- the serving worker (supervisor/canary.c WORKER_EXITED, is_s:
    canary_end("aborted", c->t, NULL)); the result says "aborted", the
    release store still recorded the old release as serving and the
    candidate as nothing, so `batonctl releases` and the restart-after-crash
    binary disagreed with what runs. Now the candidate is recorded as the
    serving release with its rollback window open (a crash soon after rolls
    it back: item 7)."""
    ng, b, dave = setup(ctx, nsessions=10)
    build_b = ctx.builds["b"].require()
    rc, r = ctl_pumping(ctx, b, "canary", "start", build_b.sessiond, "--percent", "50")
    check(rc == 0 and r["result"] == "started", "canary start: rc %s %s" % (rc, r))
    roles, st = workers_by_role(b)
    os.kill(roles["control"]["pid"], signal.SIGKILL)
    end = bl.now() + 30
    while bl.now() < end:
        ctx.loop.run_for(0.5)
        st = b.try_status()
        if st and not st.get("canary") and len(st.get("workers") or []) == 1:
            break
    st = b.status()
    ws = st["workers"]
    check(len(ws) == 1, "workers after the control crashed: %s" % ws)
    serving_version = ws[0]["version"]
    rc, rel, out, err = b.ctl("releases", "--json")
    check(rc == 0 and isinstance(rel, dict), "releases: rc %s %s %s" % (rc, out, err))
    bl.log("last canary: %s" % (st.get("last_canary") or {}).get("result"))
    bl.log("releases: %s" % rel)
    check(rel.get("serving") == serving_version,
          "release store says %s serves, but %s (%s) runs; last canary: %s" %
          (rel.get("serving"), ws[0]["pid"], serving_version,
           (st.get("last_canary") or {}).get("result")))
