#!/usr/bin/env python3
"""bench/rss_bench.py: baton's memory per session at 1k and 5k sessions,
idle and under the trace's load (issue 4, Benchmarks item 2).

For each session count (default 1000, 5000), on a fresh ngircd + baton:

1. upstream only: every session registered and in its channels, no client
   attached (the common bouncer case: users detached);
2. clients attached, idle: one client per session (bench/ircload.py), no
   traffic;
3. under load, for --load s, RSS sampled every second (max and last
   reported), with the load generator of --load-gen:
   - loadgen (default): the ircload clients leave, then bench/loadgen's
     baton-loadgen replays the sample trace scaled to the point's users
     and --channels: network users (and its observer) directly on the
     bench's ngircd, one client per bouncer user through baton
     (PASS user/bench@lg:pw); the trace's mix of PRIVMSG/JOIN/PART/QUIT/
     NICK, talker skew, message lengths and bursts at --trace-rate events/s;
     every line checked exactly once and in order. Users and channels come
     from `baton-loadgen --emit-users` (the trace's channel sizes, 2
     channels per user), so baton's config matches what loadgen drives.
     Only samples between loadgen's "traffic starts" and "traffic ends"
     count as "under load"; loadgen's report (mix vs trace, deliveries,
     lost/dup, latency) is stored next to the RSS figures;
   - ircload: the previous load: --rate network lines/s into --channels
     channels (1 channel per user, evenly filled) plus --uplink-rate client
     lines/s, numbered PRIVMSGs only;
4. after load (traffic stopped, --settle s; with loadgen its clients and
   network users have gone by then, and `after_load_attached` is the last
   sample taken after the drain with loadgen's clients still attached).

RSS = VmRSS of the sessiond worker (and, separately, of the supervisor) from
/proc/PID/status; per session = worker RSS / sessions. The marginal cost
(RSS(5k) - RSS(1k)) / 4000 of each state is reported too: it takes out the
fixed part (binary, libraries, allocator arenas).

    bench/rss_bench.py                       # 1000 and 5000 sessions, trace load
    bench/rss_bench.py --points 1000 --load 30 --trace-rate 50
    bench/rss_bench.py --load-gen ircload --rate 100   # the old PRIVMSG-only load
    bench/rss_bench.py --loadgen-arg=--netsplit --loadgen-arg=20:0.3   # extra loadgen options

baton-loadgen: $BATON_LOADGEN, else <build>/bench/baton-loadgen, else
build/ or build-load/. Trace: --trace (default ../shared/traces/sample-trace.jsonl).
JSON on stdout and in bench/results/rss-trace.json (with loadgen, the
default) or bench/results/rss.json (--load-gen ircload), overwritten by the
next run of the same kind.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ircload  # noqa: E402
from ircload import log  # noqa: E402
import migration_bench as mb  # noqa: E402
import relay_bench as rb  # noqa: E402

REPO = os.path.dirname(HERE)
TRACE = os.path.join(os.path.dirname(REPO), "shared", "traces", "sample-trace.jsonl")


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


# --------------------------------------------------------------------------
# baton-loadgen

def find_loadgen(build_root):
    cands = [os.environ.get("BATON_LOADGEN"),
             os.path.join(build_root, "bench", "baton-loadgen"),
             os.path.join(REPO, "build", "bench", "baton-loadgen"),
             os.path.join(REPO, "build-load", "bench", "baton-loadgen")]
    for c in cands:
        if c and os.access(c, os.X_OK):
            return c
    sys.exit("baton-loadgen not found (looked in %s; set BATON_LOADGEN)"
             % ", ".join(c for c in cands if c))


def loadgen_plan(loadgen, n, args):
    """[(user, [channels])] from baton-loadgen --emit-users; nick = user
    (--nick-prefix = --user-prefix = u), which is what the rig's baton
    config writes."""
    out = subprocess.run([loadgen, "--emit-users", "--trace", args.trace,
                          "--bouncer-users", str(n), "--channels", str(args.channels),
                          "--chans-per-user", str(args.chans_per_user),
                          "--seed", str(args.seed), "--user-prefix", "u",
                          "--nick-prefix", "u"],
                         capture_output=True, text=True, check=True)
    rows = []
    for ln in out.stdout.splitlines():
        user, nick, chans = ln.split()
        assert user == nick, ln
        rows.append((user, chans.split(",")))
    if len(rows) != n:
        raise RuntimeError("loadgen planned %d users, wanted %d" % (len(rows), n))
    return rows


def channel_sizes(plan):
    sizes = {}
    for _, chs in plan:
        for c in chs:
            sizes[c] = sizes.get(c, 0) + 1
    v = sorted(sizes.values())
    return {"channels": len(v), "min": v[0], "median": v[len(v) // 2], "max": v[-1],
            "memberships": sum(v)}


def loadgen_summary(rep):
    """The part of loadgen's report kept next to the RSS figures."""
    if not rep:
        return None
    d, c, m = rep["delivery"], rep["connections"], rep["event_mix"]
    traffic = rep.get("traffic_s") or 0
    return {
        "pass": rep.get("pass"),
        "params": rep.get("params"),
        "event_mix": {k: {"generated": m[k]["generated"],
                          "generated_pct": round(m[k]["generated_pct"], 2),
                          "trace_pct": round(m[k]["trace_pct"], 2)}
                      for k in ("privmsg", "join", "part", "quit", "nick") if k in m},
        "event_mix_max_diff_pp": round(m.get("max_diff_pp", 0.0), 2),
        "message_length_bytes": rep.get("message_length_bytes"),
        "lines_sent": d["lines_sent"], "via_bouncer": d.get("via_bouncer"),
        "via_network": d.get("via_network"),
        "deliveries_expected": d["expected"], "deliveries_received": d["received"],
        "deliveries_per_s": round(d["received"] / traffic, 1) if traffic else None,
        "replayed": d.get("replayed"),
        "lost": d["lost"], "duplicated": d["duplicated"], "out_of_order": d["out_of_order"],
        "foreign": d.get("foreign"), "malformed": d.get("malformed"),
        "latency_live": d.get("latency_live"), "latency_replayed": d.get("latency_replayed"),
        "connections": c,
        "setup_s": rep.get("setup_s"), "traffic_s": rep.get("traffic_s"),
        "drain_s": rep.get("drain_s"), "drained": rep.get("drained"),
        "failed_commands": rep.get("failed_commands"),
        "send_failures": rep.get("send_failures"),
    }


def run_loadgen(rig, loadgen, args, duration=None, network=None, password=None,
                sampler=None):
    """Runs baton-loadgen against the rig's ngircd and bouncer (rig.port),
    sampling sampler(rig) (default: snap) every second. Returns (samples,
    marks, report, exit code, wall s, cpu ms per role during the traffic,
    loadgen's stderr log path). network/password: what loadgen puts in
    PASS user/NETWORK@lg:PASSWORD (default the rig's bench/benchpw)."""
    n = rig.sessions
    sampler = sampler or snap
    duration = args.load if duration is None else duration
    cmd = [loadgen, "--json", "-v", "--trace", args.trace,
           "--server", "127.0.0.1:%d" % rig.net_port,
           "--baton", "127.0.0.1:%d" % rig.port,
           "--network", network or rb.NETWORK, "--password", password or rb.PASSWORD,
           "--user-prefix", "u", "--nick-prefix", "u",
           "--bouncer-users", str(n), "--channels", str(args.channels),
           "--chans-per-user", str(args.chans_per_user), "--seed", str(args.seed),
           "--rate", str(args.trace_rate), "--duration", str(duration),
           "--drain", str(getattr(args, "loadgen_drain", None) or args.drain), "--attach-timeout", str(max(180.0, n * 0.06))]
    cmd += args.loadgen_arg
    log("[rss %d] running: %s" % (n, " ".join(cmd)))
    marks = {}
    cpu_at = {}
    errpath = os.path.join(rig.workdir, "loadgen.log")
    t0 = time.monotonic()
    with open(errpath, "w") as errf:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        out_chunks = []
        tout = threading.Thread(target=lambda: out_chunks.append(p.stdout.read()), daemon=True)
        tout.start()
        pat = {"every client attached": "attached", "traffic starts": "traffic_start",
               "traffic ends": "traffic_end", "drain complete": "drained",
               "drain timed out": "drained"}

        def read_err():
            for raw in p.stderr:
                ln = raw.decode(errors="replace")
                errf.write(ln)
                for k, v in pat.items():
                    if k in ln and v not in marks:
                        marks[v] = time.monotonic()
                        if v in ("traffic_start", "traffic_end"):
                            cpu_at[v] = rig.cpu()
                        if v == "attached":
                            marks["attached_snap"] = sampler(rig)
                if ln.startswith("[loadgen") and ("phase" in ln or "traffic" in ln):
                    log(ln.rstrip())
        terr = threading.Thread(target=read_err, daemon=True)
        terr.start()
        samples = []
        try:
            while p.poll() is None:
                time.sleep(1.0)
                if p.poll() is not None:
                    break
                sm = sampler(rig)
                sm["t"] = time.monotonic()
                samples.append(sm)
                if time.monotonic() - t0 > duration + max(600.0, n * 0.2):
                    raise RuntimeError("baton-loadgen still running after %.0f s"
                                       % (time.monotonic() - t0))
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()
            tout.join(10)
            terr.join(10)
    wall = time.monotonic() - t0
    try:
        rep = json.loads((b"".join(out_chunks)).decode() or "null")
    except ValueError:
        rep = None
    cpu = None
    if "traffic_start" in cpu_at and "traffic_end" in cpu_at:
        cpu = {}
        for role in cpu_at["traffic_end"]:
            if role.startswith("harness"):
                continue
            a, b = cpu_at["traffic_start"].get(role, {}), cpu_at["traffic_end"].get(role, {})
            cpu[role] = round(sum((b[pid][0] or 0) - ((a.get(pid) or (0,))[0] or 0)
                                  for pid in b if b[pid][0] is not None), 1)
    return samples, marks, rep, p.returncode, wall, cpu, errpath


def under_load_loadgen(rig, loadgen, args, out):
    n = rig.sessions
    # the ircload clients leave; loadgen brings its own (client name "lg")
    for w in rig.workers:
        w.stop()
    rig.workers = []
    time.sleep(args.settle)
    out["clients_detached"] = snap(rig)
    samples, marks, rep, rc, wall, cpu, errpath = run_loadgen(rig, loadgen, args)
    ts, te = marks.get("traffic_start"), marks.get("traffic_end")
    if ts is None or te is None:
        raise RuntimeError("loadgen (exit %s) did not run its traffic phase; log %s"
                           % (rc, errpath))
    during = [x for x in samples if ts <= x["t"] <= te]
    if not during:
        raise RuntimeError("no RSS sample during loadgen's traffic")
    last = during[-1]
    out["under_load"] = dict(last, max_worker_rss_kb=max(x["worker_rss_kb"] for x in during),
                             samples=len(during))
    out["under_load"]["max_per_session_kb"] = round(
        out["under_load"]["max_worker_rss_kb"] / float(n), 2)
    # worker RSS (kB) of every 1 s sample, traffic phase only: does it level off?
    out["under_load"]["worker_rss_kb_series"] = [x["worker_rss_kb"] for x in during]
    if "attached_snap" in marks:
        out["loadgen_clients_attached_pre_traffic"] = marks["attached_snap"]
    after = [x for x in samples if x["t"] > te]
    if after:
        out["after_load_attached"] = after[-1]
    lg = loadgen_summary(rep)
    if lg is not None and cpu is not None:
        lg["cpu_ms_during_traffic"] = cpu
        if lg["deliveries_received"]:
            lg["bouncer_cpu_ms_per_1000_deliveries"] = round(
                sum(cpu.get(k, 0.0) for k in ("worker", "supervisor", "znc")) * 1000.0
                / lg["deliveries_received"], 2)
    out["load"] = {"generator": "baton-loadgen", "binary": loadgen, "exit": rc,
                   "wall_s": round(wall, 1), "summary": lg}
    for k in ("under_load", "after_load_attached"):
        if k in out:
            out[k].pop("t", None)
    if lg is None:
        raise RuntimeError("loadgen (exit %s) produced no report; log %s" % (rc, errpath))
    log("[rss %d] loadgen exit %s: mix max diff %s pp, deliveries %s/%s, lost %s, dup %s, "
        "ooo %s, p50/p99 %s/%s ms" % (
            n, rc, lg["event_mix_max_diff_pp"], lg["deliveries_received"],
            lg["deliveries_expected"], lg["lost"], lg["duplicated"], lg["out_of_order"],
            (lg["latency_live"] or {}).get("p50_ms"), (lg["latency_live"] or {}).get("p99_ms")))


def under_load_ircload(rig, args, out):
    n = rig.sessions
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
    out["load"]["generator"] = "ircload"


def run_point(n, args, bins, loadgen):
    plan = None
    if args.load_gen == "loadgen":
        plan = loadgen_plan(loadgen, n, args)
    rig = rb.Rig(n, args.channels, speakers=args.speakers, client_procs=args.client_procs,
                 label="rss%d" % n, plan=plan)
    out = {"sessions": n}
    if plan is not None:
        out["layout"] = dict(channel_sizes(plan), source="baton-loadgen --emit-users",
                             chans_per_user=args.chans_per_user)
    else:
        out["layout"] = {"channels": args.channels, "chans_per_user": 1,
                         "members_per_channel": n // args.channels, "source": "even"}
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
        if args.load_gen == "loadgen":
            under_load_loadgen(rig, loadgen, args, out)
        else:
            under_load_ircload(rig, args, out)
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
        rig.stop(keep="error" in out or args.keep)
    for k in STATES + ("clients_detached", "loadgen_clients_attached_pre_traffic",
                       "after_load_attached"):
        if k in out:
            out[k].pop("detail", None)
    return out


STATES = ("upstream_only", "clients_idle", "under_load", "after_load")


def load_ok(p):
    ld = p.get("load") or {}
    if ld.get("generator") == "baton-loadgen":
        s = ld.get("summary") or {}
        return ld.get("exit") == 0 and s.get("lost") == 0 and s.get("duplicated") == 0
    return ld.get("lost") == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", default="1000,5000")
    ap.add_argument("--load-gen", choices=("loadgen", "ircload"), default="loadgen",
                    help="load of the under-load phase (default loadgen: the trace)")
    ap.add_argument("--channels", type=int, default=50)
    ap.add_argument("--load", type=float, default=None,
                    help="s of load (default 60 with loadgen, 20 with ircload)")
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--client-procs", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the work dirs (logs)")
    g = ap.add_argument_group("loadgen")
    g.add_argument("--trace", default=TRACE)
    g.add_argument("--trace-rate", type=float, default=30.0,
                   help="trace events/s, all channel copies (default 30, like load_run.py)")
    g.add_argument("--chans-per-user", type=int, default=2)
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--drain", type=float, default=30.0)
    g.add_argument("--loadgen-arg", action="append", default=[],
                   help="extra baton-loadgen option (repeat; e.g. --loadgen-arg=--netsplit "
                        "--loadgen-arg=20:0.3)")
    g = ap.add_argument_group("ircload")
    g.add_argument("--rate", type=float, default=50.0)
    g.add_argument("--uplink-rate", type=float, default=10.0)
    g.add_argument("--speakers", type=int, default=10)
    args = ap.parse_args()
    if args.load is None:
        args.load = 60.0 if args.load_gen == "loadgen" else 20.0
    ircload.raise_nofile()
    bins = mb.build_bins(rb.default_build())
    loadgen = None
    if args.load_gen == "loadgen":
        loadgen = find_loadgen(bins["root"])
        if not os.path.exists(args.trace):
            sys.exit("trace %s not found (--trace)" % args.trace)
    result = {"bench": "rss", "version": 2,
              "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "params": vars(args), "build": bins["root"],
              "load_generator": ("baton-loadgen %s (trace %s)" % (loadgen, args.trace)
                                 if loadgen else "bench/ircload.py"),
              "nproc": os.cpu_count(), "loadavg_start": os.getloadavg(), "points": []}
    for n in [int(x) for x in args.points.split(",")]:
        result["points"].append(run_point(n, args, bins, loadgen))
    result["loadavg_end"] = os.getloadavg()
    pts = [p for p in result["points"] if "error" not in p]
    if len(pts) >= 2:
        a, b = pts[0], pts[-1]
        dn = float(b["sessions"] - a["sessions"])
        result["marginal_per_session_kb"] = {
            k: round((b[k]["worker_rss_kb"] - a[k]["worker_rss_kb"]) / dn, 2)
            for k in STATES if k in a and k in b}
    result["ok"] = len(pts) == len(result["points"]) and all(load_ok(p) for p in pts)
    sys.stderr.write("\n  %-9s %-14s %-14s %-20s %-14s\n" % (
        "sessions", "upstream only", "clients idle", "under load (max)", "after load"))
    for p in pts:
        sys.stderr.write("  %-9s %-14s %-14s %-20s %-14s  kB/session (worker)\n" % (
            p["sessions"], p["upstream_only"]["per_session_kb"],
            p["clients_idle"]["per_session_kb"],
            "%s (%s)" % (p["under_load"]["per_session_kb"], p["under_load"]["max_per_session_kb"]),
            p["after_load"]["per_session_kb"]))
        s = (p.get("load") or {}).get("summary")
        if s:
            sys.stderr.write("    loadgen: mix %s (max diff %s pp); deliveries %s/%s (%s/s), "
                             "lost %s, dup %s, ooo %s; latency p50/p99 %s/%s ms\n" % (
                                 ", ".join("%s %.1f/%.1f%%" % (k, v["generated_pct"],
                                                               v["trace_pct"])
                                           for k, v in s["event_mix"].items()),
                                 s["event_mix_max_diff_pp"], s["deliveries_received"],
                                 s["deliveries_expected"], s["deliveries_per_s"], s["lost"],
                                 s["duplicated"], s["out_of_order"],
                                 (s["latency_live"] or {}).get("p50_ms"),
                                 (s["latency_live"] or {}).get("p99_ms")))
    if "marginal_per_session_kb" in result:
        sys.stderr.write("  marginal: %s\n" % result["marginal_per_session_kb"])
    rb.write_result(result, "rss-trace.json" if args.load_gen == "loadgen" else "rss.json")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
