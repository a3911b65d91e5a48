"""Canaries judged by the health gates under trace-shaped load (issue 9,
"What it must show"; bench/canary_run.py runs the longer series): 200
bouncer users in 10 channels, baton-loadgen replaying the trace slice, and
one canary of 10 % after another in the same run (each as soon as the one
before has ended and every session and client is back), each to a fault
build of sessiond/fault.h. Each must end `rolled_back` by its gate within its
bake (12 s):

    drop -> delivery, dup -> delivery, latency -> relay_latency_p99,
    leak -> rss_growth_per_session, malformed -> protocol_errors,
    noping -> ping_unanswered, crash -> worker_crash

then the good B build through deploy/ci-upgrade.sh (the example CI
pipeline, end to end against ngircd) must end `promoted` with exit 0.
Across the run nothing may be lost or duplicated for users outside the
cohort (baton-loadgen's receivers with problems are all cohort users: the
drop and dup builds do lose and duplicate lines for their cohort, and the
crash build, which aborts 3 s after its cohort moved, has that cohort
restored into the old worker from its custody (on by default; a canary that
died during a move would take its cohort with it: README "Custody")."""

import os
import sys

import batonlib as bl
from batonlib import check

sys.path.insert(0, os.path.join(bl.REPO_ROOT, "bench"))
import canary_run  # noqa: E402

# run.py --jobs: these tests run with no other test beside them
# (the canary gates compare relay latency and CPU per line of two workers).
RUN_ALONE = True

# Those that need no traffic first (the trace's first seconds are quiet:
# the statistical gates wait for min_lines), crash among them (its cohort's
# sessions die with it and restart: the next canary waits until every
# session and client is back).
FAULTS = ["malformed", "noping", "crash", "dup", "drop", "latency", "leak"]
# The trace's first 28 s carry about 10 lines/s (mostly joins and quits),
# then 50-70: the delivery gate needs 11 s to see the dup build's 1 in 50
# extra lines in the quiet part, 2 s after it. The canaries that need lines
# start there at the earliest (those that do not run before).
NOT_BEFORE = {"dup": 28}


def test_canary_faults_roll_back_and_good_build_promotes(ctx):
    """Seven fault builds rolled back by the right gate, then the good build
    promoted through deploy/ci-upgrade.sh; nothing lost outside the cohort."""
    args = canary_run.parser().parse_args([
        "--trace", bl.TRACE_PATH, "--bouncer-users", "200", "--channels", "10",
        "--rate", "80", "--percent", "10", "--bake", "10", "--start-at", "3",
        "--drain", "5"])
    A, B, loadgen = canary_run.prepare(args)
    script = os.path.join(bl.REPO_ROOT, "deploy", "ci-upgrade.sh")
    # One canary after the other (each ends when its gate trips; the
    # drop build's lost lines keep the drain busy for all of --drain).
    r = canary_run.sequence_run(ctx, args, A, B, loadgen, FAULTS, fault_bake=12,
                                ci_script=script, not_before=NOT_BEFORE)
    check(not r["chain"].get("error") and not r["chain"].get("unsettled"),
          "a canary started before every session and client was back: %s" % r["chain"])
    bad = [x for x in r["runs"] if not x["pass"]]
    check(not bad, "canaries not as expected: %s" % [
        (x["fault"], x["result"], x["gate"], x["reason"], x["stderr"][-300:]) for x in bad])
    check(r["loadgen_exit"] is not None and r["lines_sent"] and r["lines_sent"] > 500,
          "too little traffic: %s" % r)
    check(not r["receivers_with_problems_outside_cohort"],
          "users outside the cohort lost or got duplicated lines: %s"
          % r["receivers_with_problems_outside_cohort"])
    good = r["runs"][-1]
    check("promoted" in good["stderr"], "ci-upgrade.sh did not say it promoted: %r" % good["stderr"])
    bl.log("%d lines sent in %s s of traffic, %d receivers with problems (all %d cohort "
           "users), %s client disconnects; each canary waited %s s for every session and "
           "client and started at %s s of the chain"
           % (r["lines_sent"], r["traffic_s"], r["receivers_with_problems"], r["cohort_users"],
              r["client_disconnects"], r["chain"].get("settle_s"), r["chain"].get("started_s")))
