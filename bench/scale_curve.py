#!/usr/bin/env python3
"""bench/scale_curve.py: migration scale curve (issue 4, Benchmarks item 3).

Runs bench/migration_bench.py once per session count (default 100, 1000,
5000), each with live traffic and K upgrades, and collects per point: freeze
max, total time, batonctl wall time, the fd-passing floor for the same fd
count measured in the same run (fdpass-floor, 253 fds/sendmsg, and the sweep
1/16/64/253 unless --no-floor-sweep), total/floor, relay latency during the
migration, RSS per session, correctness. migration_bench.py itself is
unchanged; the curve goes to bench/results/scale-curve.json and every
point's full JSON next to it (scale-<N>s.json), overwritten by the next run.

    bench/scale_curve.py                          # 100, 1000, 5000 sessions, 2 upgrades each
    bench/scale_curve.py --points 100,1000,5000,10000 --upgrades 3
    bench/scale_curve.py -- --channels 10         # extra args for migration_bench.py

One worker per baton instance (baton has no multi-worker mode), so there is
no "more workers" axis. Builds: BATON_BUILD_A / BATON_BUILD_B as for
migration_bench.py (default: build-bench for both if it exists, i.e. an
upgrade to the same binary, else build / build-b).
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from ircload import log  # noqa: E402
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
from batonlib import scrub_paths  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", default="100,1000,5000")
    ap.add_argument("--upgrades", type=int, default=2)
    ap.add_argument("--steady", type=float, default=5.0)
    ap.add_argument("--gap", type=float, default=3.0)
    ap.add_argument("--no-floor-sweep", dest="floor_sweep", action="store_false")
    ap.add_argument("extra", nargs="*", help="after --: more migration_bench.py args")
    args = ap.parse_args()
    env = dict(os.environ)
    bb = os.path.join(REPO, "build-bench")
    if "BATON_BUILD_A" not in env and os.path.isfile(os.path.join(bb, "sessiond", "baton-sessiond")):
        env["BATON_BUILD_A"] = bb
        env.setdefault("BATON_BUILD_B", bb)
    result = {"bench": "scale_curve", "version": 1,
              "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "params": vars(args),
              "builds": {"a": env.get("BATON_BUILD_A", os.path.join(REPO, "build")),
                         "b": env.get("BATON_BUILD_B", os.path.join(REPO, "build-b"))},
              "points": []}
    ok = True
    for n in [int(x) for x in args.points.split(",")]:
        out = os.path.join(HERE, "results", "scale-%ds.json" % n)
        cmd = [sys.executable, os.path.join(HERE, "migration_bench.py"),
               "--sessions", str(n), "--upgrades", str(args.upgrades),
               "--steady", str(args.steady), "--gap", str(args.gap),
               "--json-out", out] + ([] if args.floor_sweep else ["--no-floor-sweep"]) + args.extra
        log("scale point %d: %s" % (n, " ".join(cmd)))
        t0 = time.monotonic()
        r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        point = {"sessions": n, "rc": r.returncode, "json": os.path.relpath(out, REPO),
                 "wall_s": round(time.monotonic() - t0, 1)}
        try:
            mr = json.loads(r.stdout)
        except ValueError:
            mr = {"error": "unparsable output"}
        h = mr.get("headline", {})
        sweep = mr.get("fdpass_floor_sweep")
        point.update({
            "ok": mr.get("ok"),
            "error": mr.get("error"),
            "fds": h.get("fds"),
            "chunks": [u.get("result", {}).get("chunks") for u in mr.get("upgrades", [])
                       if isinstance(u.get("result"), dict)],
            "freeze_ms": h.get("freeze_ms"),
            "freeze_ms_max": h.get("freeze_ms_max"),
            "total_ms": h.get("total_ms"),
            "total_ms_max": h.get("total_ms_max"),
            "batonctl_wall_ms": h.get("upgrade_wall_ms"),
            "floor_ms": h.get("floor_ms"),
            "floor_fds": h.get("floor_fds"),
            "total_over_floor": h.get("total_over_floor"),
            "floor_sweep_ms": ({str(s.get("batch")): s.get("total_ms") for s in sweep}
                               if isinstance(sweep, list) else None),
            "latency_steady_p50_p99_ms": [h.get("latency_steady_p50_ms"),
                                          h.get("latency_steady_p99_ms")],
            "latency_migration_p50_p99_max_ms": [h.get("latency_migration_p50_ms"),
                                                 h.get("latency_migration_p99_ms"),
                                                 h.get("latency_migration_max_ms")],
            "rss_per_session_before_after_kb": [h.get("rss_per_session_before_kb"),
                                                h.get("rss_per_session_after_kb")],
            "correctness": mr.get("correctness"),
        })
        ok = ok and bool(mr.get("ok"))
        result["points"].append(point)
        log("point %d: freeze %s total %s floor %s ok %s" % (
            n, point["freeze_ms"], point["total_ms"], point["floor_ms"], point["ok"]))
    result["ok"] = ok
    sys.stderr.write("\n  %-8s %-8s %-18s %-18s %-10s %-10s %s\n" % (
        "sessions", "fds", "freeze ms", "total ms", "floor ms", "tot/floor", "ok"))
    for p in result["points"]:
        sys.stderr.write("  %-8s %-8s %-18s %-18s %-10s %-10s %s\n" % (
            p["sessions"], p["fds"], p["freeze_ms"], p["total_ms"], p["floor_ms"],
            p["total_over_floor"], p["ok"]))
    text = json.dumps(result, indent=1)
    print(text)
    out = os.path.join(HERE, "results", "scale-curve.json")
    with open(out, "w") as f:
        f.write(scrub_paths(text) + "\n")
    log("wrote %s" % out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
