#!/usr/bin/env python3
"""bench/rss_bench.py: baton's memory per session at 1k and 5k sessions,
idle and under load (issue 4, Benchmarks item 2).

For each session count (default 1000, 5000), on a fresh ngircd + baton:

1. upstream only: every session registered and in its channel, no client
   attached (the common bouncer case: users detached);
2. clients attached, idle: one client per session, no traffic;
3. under load: --rate network lines/s into --channels channels plus
   --uplink-rate client lines/s, for --load s; RSS sampled every second
   (max and last reported);
4. after load (traffic stopped, --settle s).

RSS = VmRSS of the sessiond worker (and, separately, of the supervisor) from
/proc/PID/status; per session = worker RSS / sessions. The marginal cost
(RSS(5k) - RSS(1k)) / 4000 of each state is reported too: it takes out the
fixed part (binary, libraries, allocator arenas).

Load: bench/ircload.py (numbered PRIVMSGs with the trace's length mix, evenly
paced). The trace-driven C load generator (baton-loadgen, bench/loadgen) was
not in the tree when this was written, so the trace's membership churn,
bursts and talker skew are not part of this load.

    bench/rss_bench.py                       # 1000 and 5000 sessions
    bench/rss_bench.py --points 1000 --load 30 --rate 100

JSON on stdout and in bench/results/rss-<UTC>.json.
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ircload  # noqa: E402
from ircload import log  # noqa: E402
import migration_bench as mb  # noqa: E402
import relay_bench as rb  # noqa: E402


def snap(rig):
    m = rig.mem(("supervisor", "worker"))
    w = rig.rss_kb(m, ("worker",))
    s = rig.rss_kb(m, ("supervisor",))
    anon = sum(v.get("RssAnon", 0) for v in m.get("worker", {}).values())
    return {"worker_rss_kb": w, "supervisor_rss_kb": s, "worker_rss_anon_kb": anon,
            "worker_fds": sum(v.get("fds", 0) for v in m.get("worker", {}).values()),
            "per_session_kb": round(w / float(rig.sessions), 2),
            "per_session_incl_supervisor_kb": round((w + s) / float(rig.sessions), 2),
            "detail": m}


def run_point(n, args, bins):
    rig = rb.Rig(n, args.channels, speakers=args.speakers, client_procs=args.client_procs,
                 label="rss%d" % n)
    out = {"sessions": n}
    timeout = max(120.0, n * 0.05)
    try:
        rig.start_network()
        rig.start_bouncer(rb.baton_maker(bins), timeout)
        time.sleep(args.settle)
        out["upstream_only"] = snap(rig)
        log("[rss %d] upstream only: %s kB/session" % (n, out["upstream_only"]["per_session_kb"]))
        rig.start_clients(timeout)
        time.sleep(args.settle)
        out["clients_idle"] = snap(rig)
        log("[rss %d] clients idle: %s kB/session" % (n, out["clients_idle"]["per_session_kb"]))
        rig.start_speakers()
        samples = []

        def during(r):
            end = time.monotonic() + args.load
            while time.monotonic() < end:
                time.sleep(1.0)
                samples.append(snap(r))
            return None
        ph = rig.phase(args.rate, args.load, uplink=args.uplink_rate, drain=1.0, during=during)
        last = samples[-1] if samples else snap(rig)
        out["under_load"] = dict(last, max_worker_rss_kb=max(s["worker_rss_kb"] for s in samples),
                                 samples=len(samples))
        out["under_load"]["max_per_session_kb"] = round(
            out["under_load"]["max_worker_rss_kb"] / float(n), 2)
        out["load"] = {k: ph[k] for k in ("rate_offered_lines_s", "uplink_lines_s",
                                          "duration_s", "deliveries_received",
                                          "deliveries_per_s", "lost", "duplicated",
                                          "latency_down", "bouncer_cpu_ms_per_1000_deliveries")}
        log("[rss %d] under load: %s kB/session (max %s)" % (
            n, out["under_load"]["per_session_kb"], out["under_load"]["max_per_session_kb"]))
        time.sleep(args.settle)
        out["after_load"] = snap(rig)
        out["timings"] = rig.timings
        st = rig.bouncer.b.status()
        out["status"] = st
    except Exception as e:
        out["error"] = "%s: %s" % (type(e).__name__, e)
        log("ERROR [rss %d]: %s" % (n, out["error"]))
    finally:
        rig.stop(keep="error" in out)
    for k in ("upstream_only", "clients_idle", "under_load", "after_load"):
        if k in out:
            out[k].pop("detail", None)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", default="1000,5000")
    ap.add_argument("--channels", type=int, default=50)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--uplink-rate", type=float, default=10.0)
    ap.add_argument("--load", type=float, default=20.0)
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--speakers", type=int, default=10)
    ap.add_argument("--client-procs", type=int, default=0)
    args = ap.parse_args()
    ircload.raise_nofile()
    bins = mb.build_bins(rb.default_build())
    result = {"bench": "rss", "version": 1,
              "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "params": vars(args), "build": bins["root"],
              "load_generator": "bench/ircload.py (baton-loadgen not available)",
              "loadavg_start": os.getloadavg(), "points": []}
    for n in [int(x) for x in args.points.split(",")]:
        result["points"].append(run_point(n, args, bins))
    result["loadavg_end"] = os.getloadavg()
    pts = [p for p in result["points"] if "error" not in p]
    if len(pts) >= 2:
        a, b = pts[0], pts[-1]
        dn = float(b["sessions"] - a["sessions"])
        result["marginal_per_session_kb"] = {
            k: round((b[k]["worker_rss_kb"] - a[k]["worker_rss_kb"]) / dn, 2)
            for k in ("upstream_only", "clients_idle", "under_load", "after_load")
            if k in a and k in b}
    result["ok"] = len(pts) == len(result["points"]) and all(
        p["load"]["lost"] == 0 for p in pts)
    sys.stderr.write("\n  %-9s %-14s %-14s %-20s %-14s\n" % (
        "sessions", "upstream only", "clients idle", "under load (max)", "after load"))
    for p in pts:
        sys.stderr.write("  %-9s %-14s %-14s %-20s %-14s  kB/session (worker)\n" % (
            p["sessions"], p["upstream_only"]["per_session_kb"],
            p["clients_idle"]["per_session_kb"],
            "%s (%s)" % (p["under_load"]["per_session_kb"], p["under_load"]["max_per_session_kb"]),
            p["after_load"]["per_session_kb"]))
    if "marginal_per_session_kb" in result:
        sys.stderr.write("  marginal: %s\n" % result["marginal_per_session_kb"])
    rb.write_result(result, "rss-%s.json" % rb.utc_stamp())
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
