#!/usr/bin/env python3
"""Canary runs under trace-shaped load: ngircd + baton with N bouncer users
(baton-loadgen's layout) + baton-loadgen replaying the trace; at --start-at
seconds the one-command CI form runs

    batonctl upgrade BIN --canary P --bake S --json

with BIN the B build (a good build) or one fault build of sessiond/fault.h
(`-Dfault_builds=true`: drop, dup, latency, leak, crash, malformed, noping).
Each run reports the canary's result, the gate that tripped, when (detected_ms
from the start of the canary; the bake starts when the cohort moved), the
rollback time, baton's own disconnect count, and from baton-loadgen: lines
lost / duplicated, the receivers with problems and whether all of them are
cohort users, client disconnects and bouncer nicks seen leaving by the
network.

    bench/canary_run.py                          # good build, 20 runs (no false alarms)
    bench/canary_run.py --fault all --runs 1     # every fault build once
    bench/canary_run.py --fault drop --runs 5

Expected: the good build `promoted` in every run; each fault `rolled_back` by
its gate (EXPECTED_GATE) within the bake, nothing lost or duplicated outside
the cohort, no client disconnected outside the cohort. The suite runs the
same with shorter settings (tests/integration/test_canary_faults.py).
"""

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
sys.path.insert(0, HERE)

import batonlib as bl  # noqa: E402
import load_run  # noqa: E402

FAULTS = ["drop", "dup", "latency", "leak", "crash", "malformed", "noping"]
EXPECTED_GATE = {
    "drop": "delivery",
    "dup": "delivery",
    "latency": "relay_latency_p99",
    "leak": "rss_growth_per_session",
    "crash": "worker_crash",
    "malformed": "protocol_errors",
    "noping": "ping_unanswered",
}


def cohort_bucket(user):
    """common/cohort.c: FNV-1a 32 of the user name, modulo 10000."""
    h = 2166136261
    for ch in user.encode():
        h ^= ch
        h = (h * 16777619) & 0xffffffff
    return h % 10000


def fault_binary(ctx, A, kind):
    """The faulty sessiond under the name that selects `kind`."""
    src = os.path.join(A.path, "sessiond", "baton-sessiond-faulty")
    if not os.access(src, os.X_OK):
        raise bl.Skip("no fault build at %s (meson -Dfault_builds=true; scripts/build does it)"
                      % src)
    d = os.path.join(ctx.dir, "faults")
    os.makedirs(d, exist_ok=True)
    dst = os.path.join(d, "baton-sessiond-fault-%s" % kind)
    if not os.path.exists(dst):
        # a copy, not a symlink: batonctl passes the real path on, and the
        # program's name is what selects the fault
        shutil.copy2(src, dst)
    return dst


def canary_opts(args):
    return {"sample_ms": args.sample_ms, "min_lines": args.min_lines,
            "ping_answer_timeout": 3, "adopt_ping_timeout": 10}


def start_baton(ctx, args, loadgen):
    """ngircd (PINGing idle connections after --ngircd-ping-timeout s) and
    baton with baton-loadgen's users and the run's [canary] keys, ready.
    Returns (ngircd, baton)."""
    ngircd = ctx.ngircd(ping_timeout=args.ngircd_ping_timeout, pong_timeout=60)
    rows = load_run.plan(loadgen, args)
    baton = load_run.LoadBaton(ctx, ngircd, nsessions=args.bouncer_users, channels=("#lg0",),
                               sessiond_opts=dict(bl.roomy_backlog(args.backlog_lines)),
                               handoff_timeout=30, rlimit_nofile=args.nofile)
    for s, (user, nick, chans) in zip(baton.sessions, rows):
        s.channels = chans
    load_run.LoadBaton.network_opts = dict(load_run.GOVERNOR_OFF)
    text = baton.config_text() + "[canary]\n" + "".join(
        "%s = %s\n" % kv for kv in canary_opts(args).items())
    baton.write_config(text)
    baton.config_text = lambda: text  # keep [canary] on rewrites
    baton.start(wait=True, timeout=args.ready_timeout)
    return ngircd, baton


def one_run(ctx, args, A, B, loadgen, fault, log=bl.log):
    """One canary under load in ctx. Returns a result dict ("pass" says
    whether it ended as expected)."""
    ngircd, baton = start_baton(ctx, args, loadgen)
    binary = B.sessiond if fault == "none" else fault_binary(ctx, A, fault)
    out = os.path.join(ctx.dir, "canary.json")
    cmd = load_run.loadgen_cmd(args, loadgen, ngircd, baton) + [
        "--exec", "%g:%s -c %s upgrade %s --canary %g --bake %g --json > %s" % (
            args.start_at, A.batonctl, baton.config, binary, args.percent, args.bake, out)]
    t = time.monotonic()
    with open(os.path.join(ctx.dir, "loadgen.log"), "wb") as errf:
        p = ctx.procs.popen(cmd, stdout=subprocess.PIPE, stderr=errf)
        stdout, _ = p.communicate()
    wall = time.monotonic() - t
    try:
        report = json.loads(stdout.decode() or "null")
    except ValueError:
        report = None
    try:
        with open(out) as f:
            canary = json.load(f)
    except (OSError, ValueError) as e:
        canary = {"error": "no JSON from batonctl: %s" % e}
    cohort = {s.user for s in baton.sessions if cohort_bucket(s.user) < args.percent * 100}
    users = [s.user for s in baton.sessions]
    d = (report or {}).get("delivery", {})
    bad = [users[i] if i < len(users) else "observer"
           for i in d.get("receivers_with_problems_index", [])]
    bad_outside = [u for u in bad if u not in cohort]
    conn = (report or {}).get("connections", {})
    want = "promoted" if fault == "none" else "rolled_back"
    gate_ok = fault == "none" or canary.get("gate") == EXPECTED_GATE[fault]
    in_bake = fault == "none" or (0 < canary.get("detected_ms", 0) <=
                                  (args.bake + 30) * 1000)
    res = {
        "fault": fault,
        "result": canary.get("result", canary.get("error")),
        "gate": canary.get("gate"),
        "reason": canary.get("reason"),
        "detected_ms": canary.get("detected_ms"),
        "rollback_ms": canary.get("rollback_ms"),
        "freeze_ms": canary.get("freeze_ms"),
        "total_ms": canary.get("total_ms"),
        "cohort_sessions": canary.get("cohort_sessions"),
        "control_sessions": canary.get("control_sessions"),
        "baton_disconnects": canary.get("disconnects"),
        "cohort_users": len(cohort),
        "lines_sent": d.get("lines_sent"),
        "lost": d.get("lost"), "duplicated": d.get("duplicated"),
        "receivers_with_problems": len(bad),
        "receivers_with_problems_outside_cohort": bad_outside[:10],
        "client_disconnects": conn.get("disconnects"),
        "bouncer_nicks_seen_leaving": conn.get("upstream_membership_events"),
        "loadgen_wall_s": round(wall, 1),
        "gates": canary.get("gates"),
    }
    res["pass"] = bool(res["result"] == want and gate_ok and in_bake and not bad_outside)
    if fault == "none":
        # a good build: nothing may be lost, duplicated or disconnected
        res["pass"] = res["pass"] and d.get("lost") == 0 and d.get("duplicated") == 0 and \
            conn.get("disconnects") == 0 and canary.get("disconnects") == 0
    log("canary %-9s %-11s gate %-24s detected %s ms, rollback %s ms, lost %s dup %s "
        "(outside the cohort: %d receivers), disconnects %s/%s: %s"
        % (fault, res["result"], res["gate"], res["detected_ms"], res["rollback_ms"],
           res["lost"], res["duplicated"], len(bad_outside), res["client_disconnects"],
           res["baton_disconnects"], "ok" if res["pass"] else "UNEXPECTED"))
    baton.stop()
    ngircd.stop()
    return res


def sequence_run(ctx, args, A, B, loadgen, faults, fault_bake, ci_script=None,
                 not_before=None, settle_timeout=30, log=bl.log):
    """One load run with one canary after another: each fault of `faults`
    (forced: the fault builds share one binary, which the first rollback
    marks bad; a bake of `fault_bake` s, within which its gate must trip),
    then the good B build (args.bake) through `ci_script`
    (deploy/ci-upgrade.sh) when given, else batonctl. They run in sequence
    from args.start_at (bench/canary_chain.py, baton-loadgen's one --exec),
    each once the one before has ended and status shows every session and
    client back, and not before not_before[fault] seconds of traffic if
    given; traffic ends 3 s after the last (--end-after-exec), at the
    latest at args.duration (set here). Returns {"runs": [per canary: fault, result, gate, ...],
    "loadgen": {...}, "pass": bool}."""
    ngircd, baton = start_baton(ctx, args, loadgen)
    steps = [(f, fault_binary(ctx, A, f)) for f in faults] + [("none", B.sessiond)]
    cmds, outs = [], []
    for i, (fault, binary) in enumerate(steps):
        out = os.path.join(ctx.dir, "canary-%d-%s.json" % (i, fault))
        err = os.path.join(ctx.dir, "canary-%d-%s.err" % (i, fault))
        outs.append((fault, out, err))
        if fault == "none" and ci_script:
            cmd = "BATONCTL=%s %s -c %s %s --canary %g --bake %g --result %s > /dev/null 2> %s" % (
                A.batonctl, ci_script, baton.config, binary, args.percent, args.bake, out, err)
        else:
            cmd = "%s -c %s upgrade %s --canary %g --bake %g --force --json > %s 2> %s" % (
                A.batonctl, baton.config, binary, args.percent,
                args.bake if fault == "none" else fault_bake, out, err)
        nb = (not_before or {}).get(fault, 0) - args.start_at
        cmds.append({"cmd": cmd, "not_before": max(nb, 0)})
    chain_results = os.path.join(ctx.dir, "chain.json")
    plan = os.path.join(ctx.dir, "chain-plan.json")
    with open(plan, "w") as f:
        json.dump({"batonctl": A.batonctl, "config": baton.config,
                   "sessions": args.bouncer_users, "clients": args.bouncer_users,
                   "settle_timeout": settle_timeout, "results": chain_results,
                   "steps": cmds}, f)
    # The upper bound, and what shapes the trace replay (baton-loadgen
    # picks each channel copy's window of the trace for the whole
    # duration): what the canaries had when they ran `fault_bake + 1` s
    # apart on a fixed schedule.
    args.duration = args.start_at + len(steps) * (fault_bake + 1) + args.bake + 5
    execs = ["--exec", "%g:%s %s %s" % (args.start_at, sys.executable,
                                        os.path.join(HERE, "canary_chain.py"), plan),
             "--end-after-exec", "3"]
    cmd = load_run.loadgen_cmd(args, loadgen, ngircd, baton) + execs
    with open(os.path.join(ctx.dir, "loadgen.log"), "wb") as errf:
        p = ctx.procs.popen(cmd, stdout=subprocess.PIPE, stderr=errf)
        stdout, _ = p.communicate()
    try:
        report = json.loads(stdout.decode() or "null")
    except ValueError:
        report = None
    cohort = {s.user for s in baton.sessions if cohort_bucket(s.user) < args.percent * 100}
    users = [s.user for s in baton.sessions]
    d = (report or {}).get("delivery", {})
    conn = (report or {}).get("connections", {})
    bad = [users[i] if i < len(users) else "observer"
           for i in d.get("receivers_with_problems_index", [])]
    bad_outside = [u for u in bad if u not in cohort]
    try:
        with open(chain_results) as f:
            chain = json.load(f)
    except (OSError, ValueError) as e:
        chain = {"error": "no results from canary_chain.py (%s)" % e}
    runs, ok = [], True
    for fault, out, err in outs:
        try:
            with open(out) as f:
                r = json.loads(f.read().strip().splitlines()[-1])
        except (OSError, ValueError, IndexError) as e:
            r = {"error": "no JSON result (%s)" % e}
        try:
            with open(err) as f:
                stderr = f.read()[-2000:]
        except OSError:
            stderr = ""
        want = "promoted" if fault == "none" else "rolled_back"
        good = r.get("result") == want and (fault == "none" or r.get("gate") == EXPECTED_GATE[fault])
        runs.append({"fault": fault, "result": r.get("result", r.get("error")),
                     "gate": r.get("gate"), "reason": r.get("reason"),
                     "detected_ms": r.get("detected_ms"), "rollback_ms": r.get("rollback_ms"),
                     "disconnects": r.get("disconnects"), "stderr": stderr, "pass": good})
        ok = ok and good
        log("canary %-9s %-11s gate %-24s detected %s ms, rollback %s ms%s"
            % (fault, runs[-1]["result"], r.get("gate"), r.get("detected_ms"),
               r.get("rollback_ms"), "" if good else "  UNEXPECTED"))
    res = {"runs": runs, "cohort_users": len(cohort),
           "lines_sent": d.get("lines_sent"), "lost": d.get("lost"),
           "duplicated": d.get("duplicated"),
           "receivers_with_problems": len(bad),
           "receivers_with_problems_outside_cohort": bad_outside[:10],
           "client_disconnects": conn.get("disconnects"),
           "loadgen_exit": p.returncode,
           "traffic_s": (report or {}).get("traffic_s"), "chain": chain}
    res["pass"] = ok and report is not None and not bad_outside and \
        not chain.get("error") and not chain.get("unsettled")
    baton.stop()
    ngircd.stop()
    return res


def parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fault", default="none",
                    help="none (the good B build), all, or one of " + ", ".join(FAULTS))
    ap.add_argument("--runs", type=int, default=20, help="runs per fault (default 20)")
    ap.add_argument("--bouncer-users", type=int, default=200)
    ap.add_argument("--channels", type=int, default=10)
    ap.add_argument("--chans-per-user", type=int, default=2)
    ap.add_argument("--rate", type=float, default=40.0)
    ap.add_argument("--percent", type=float, default=10.0)
    ap.add_argument("--bake", type=float, default=30.0)
    ap.add_argument("--start-at", type=float, default=3.0)
    ap.add_argument("--duration", type=float, default=0,
                    help="seconds of traffic (default: start + bake + 15)")
    ap.add_argument("--drain", type=float, default=20.0)
    ap.add_argument("--sample-ms", type=int, default=500)
    ap.add_argument("--min-lines", type=int, default=300)
    ap.add_argument("--ngircd-ping-timeout", type=int, default=4,
                    help="ngircd PINGs a connection idle this long (the noping fault)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--backlog-lines", type=int, default=2000)
    ap.add_argument("--ready-timeout", type=float, default=120.0)
    ap.add_argument("--trace", default=bl.FULL_TRACE_PATH if os.path.exists(bl.FULL_TRACE_PATH)
                    else bl.TRACE_PATH)
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--keep", action="store_true")
    return ap


def prepare(args):
    A, B, loadgen = load_run.prepare(args)
    if args.duration <= 0:
        args.duration = args.start_at + args.bake + 15
    return A, B, loadgen


def main():
    args = parser().parse_args()
    try:
        A, B, loadgen = prepare(args)
    except bl.Skip as e:
        print("SKIP: %s" % e, file=sys.stderr)
        return 0
    faults = FAULTS if args.fault == "all" else [args.fault]
    runs, ok = [], True
    for fault in faults:
        for i in range(args.runs):
            ctx = bl.Context("canary-%s-%d" % (fault, i), keep=args.keep)
            good = False
            try:
                r = one_run(ctx, args, A, B, loadgen, fault)
                r["run"] = i
                runs.append(r)
                good = r["pass"]
            except bl.Skip as e:
                print("SKIP: %s" % e, file=sys.stderr)
                return 0
            finally:
                ctx.close(failed=not good)
                if not good:
                    bl.log("artifacts kept in %s" % ctx.dir)
            ok = ok and good
    summary = {}
    for fault in faults:
        rs = [r for r in runs if r["fault"] == fault]
        det = [r["detected_ms"] for r in rs if r.get("detected_ms")]
        rb = [r["rollback_ms"] for r in rs if r.get("rollback_ms")]
        summary[fault] = {
            "runs": len(rs),
            "as_expected": sum(1 for r in rs if r["pass"]),
            "results": sorted({r["result"] for r in rs if r["result"]}),
            "gates": sorted({r["gate"] for r in rs if r["gate"]}),
            "detected_ms_median": statistics.median(det) if det else None,
            "rollback_ms_median": statistics.median(rb) if rb else None,
            "lost_outside_cohort_receivers": sum(len(r["receivers_with_problems_outside_cohort"])
                                                 for r in rs),
        }
    out = {
        "kind": "canary_run",
        "time_utc": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
        "build": "meson default (debugoptimized), A %s, B %s" % (A.version, B.version),
        "params": {k: v for k, v in vars(args).items() if k not in ("results",)},
        "summary": summary,
        "runs": runs,
        "pass": ok,
    }
    os.makedirs(args.results, exist_ok=True)
    name = "canary-%s.json" % ("good" if args.fault == "none" else
                               "faults" if args.fault == "all" else args.fault)
    path = os.path.join(args.results, name)
    with open(path, "w") as f:
        f.write(bl.scrub_paths(json.dumps(out, indent=1)) + "\n")
    for fault, s in summary.items():
        print("%-9s %d/%d as expected; results %s; gates %s; detected median %s ms; "
              "rollback median %s ms" % (fault, s["as_expected"], s["runs"], s["results"],
                                         s["gates"], s["detected_ms_median"],
                                         s["rollback_ms_median"]))
    print("saved %s" % path)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
