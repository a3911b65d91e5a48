#!/usr/bin/env python3
"""bench/load_run.py: the issue's load run in one command.

Starts ngircd and baton (tests/integration/batonlib.py fixtures) with N
bouncer users in C channels laid out by `baton-loadgen --emit-users` (the
trace's channel sizes), then runs baton-loadgen against both: the sample
trace scaled to those users and channels, a netsplit and a mass client
reconnect in the middle, and K `batonctl upgrade`s during the run
(alternating build B, build A, ... like test_acceptance; run by loadgen's
--exec so they sit on its timeline). Prints a summary and saves JSON
(loadgen's report + the upgrades' results + what ngircd logged) to
bench/results/load-<N>u.json (overwritten by the next run with the same N).

    bench/load_run.py                                   # 2,000 users, 50 channels, 3 upgrades
    bench/load_run.py --bouncer-users 150 --channels 10 --duration 40
    bench/load_run.py --upgrades 0 -- --reconnect-mode drop   # extra loadgen options after --

Exit 0 only if loadgen passed (nothing lost/duplicated/reordered, no
disconnect, no upstream QUIT/JOIN seen by the network) and every upgrade
committed. Python standard library only.
"""

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import batonlib as bl  # noqa: E402

# The governor's Solanum-safe defaults (3 connections per IP, 4 per minute)
# would keep a load test's thousands of sessions from ever connecting over
# loopback: lifted here, when the build knows the keys.
GOVERNOR_OFF = {"connects_per_minute": "6000", "connect_burst": "10000",
                "max_connections_per_ip": "100000"}


def find_loadgen(build):
    cands = [os.environ.get("BATON_LOADGEN"),
             os.path.join(build.path, "bench", "baton-loadgen"),
             os.path.join(ROOT, "build-load", "bench", "baton-loadgen")]
    for c in cands:
        if c and os.access(c, os.X_OK):
            return c
    raise bl.Skip("baton-loadgen not built (looked in %s; set BATON_LOADGEN)"
                  % ", ".join(c for c in cands if c))


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class LoadBaton(bl.Baton):
    """batonlib's Baton with extra [network] keys (the governor lifted)."""

    network_opts = {}

    def config_text(self):
        text = super().config_text()
        if not self.network_opts:
            return text
        head = "[network %s]\n" % self.network
        extra = "".join("%s = %s\n" % kv for kv in self.network_opts.items())
        i = text.index(head) + len(head)
        j = text.index("[", i)           # the next section
        return text[:j] + extra + text[j:]


def governor_keys_known(baton):
    """True when `baton-supervisor --check` accepts the governor keys."""
    out = subprocess.run([baton.build.supervisor, "-c", baton.config, "--check"],
                         capture_output=True, text=True, timeout=60)
    return "unknown key 'connects_per_minute'" not in (out.stdout + out.stderr)


def plan(loadgen, args):
    """[(user, nick, [channels])] from baton-loadgen --emit-users."""
    out = subprocess.run([loadgen, "--emit-users", "--trace", args.trace,
                          "--bouncer-users", str(args.bouncer_users),
                          "--channels", str(args.channels),
                          "--chans-per-user", str(args.chans_per_user),
                          "--seed", str(args.seed)],
                         capture_output=True, text=True, check=True)
    rows = []
    for ln in out.stdout.splitlines():
        user, nick, chans = ln.split()
        rows.append((user, nick, chans.split(",")))
    return rows


def setup(ctx, args, loadgen, log):
    """ngircd + baton with the planned users; returns (ngircd, baton)."""
    ngircd = ctx.ngircd()
    rows = plan(loadgen, args)
    baton = LoadBaton(ctx, ngircd, nsessions=args.bouncer_users, channels=("#lg0",),
                      sessiond_opts=dict(bl.roomy_backlog(args.backlog_lines),
                                         chunk_sessions=args.chunk_sessions),
                      handoff_timeout=60, rlimit_nofile=args.nofile)
    for s, (user, nick, chans) in zip(baton.sessions, rows):
        bl.check(s.user == user and s.nick == nick,
                 "naming differs: batonlib %s/%s, loadgen %s/%s" % (s.user, s.nick, user, nick))
        s.channels = chans
    LoadBaton.network_opts = dict(GOVERNOR_OFF)
    baton.write_config()
    if not governor_keys_known(baton):
        LoadBaton.network_opts = {}
        baton.write_config()
    log("baton: %d sessions in %d channels; starting (config %s)"
        % (args.bouncer_users, args.channels, baton.config))
    t = time.monotonic()
    baton.start(wait=True, timeout=args.ready_timeout)
    log("baton ready in %.1f s: %s" % (time.monotonic() - t, baton.worker()))
    return ngircd, baton


def upgrade_times(args):
    """When the upgrades run (s after traffic start): evenly spread over the
    run, except the middle one, which starts 2.5 s after the mass reconnect
    (when the reconnecting clients log in again: logins race the migration)."""
    k = args.upgrades
    if k <= 0:
        return []
    at = [round(args.duration * (i + 1) / (k + 1), 2) for i in range(k)]
    if args.reconnect_at >= 0:
        at[k // 2] = round(args.reconnect_at * args.duration + 2.5, 2)
    return sorted(at)


def wait_port_cmd(port):
    """A shell snippet that waits (up to 20 s) until 127.0.0.1:port accepts."""
    return ("python3 -c 'import socket,sys,time\n"
            "for _ in range(400):\n"
            "    try: socket.create_connection((\"127.0.0.1\", %d), 1).close(); sys.exit(0)\n"
            "    except OSError: time.sleep(0.05)\n"
            "sys.exit(1)'" % port)


# Wait until pid %d has exited: it is our child, so it stays a zombie (and
# `kill -0` keeps succeeding) until we reap it after the run.
GONE = ("while [ -e /proc/%d ] && [ \"$(awk \'{print $3}\' /proc/%d/stat 2>/dev/null)\" != Z ]; "
        "do sleep 0.05; done")


def restart_cmds(ngircd, baton):
    """Commands for --server-restart / --baton-restart: stop the process
    (SIGTERM, wait for it to go), start it again the way the fixture did
    (same config, log appended), return once it accepts connections. The new
    processes inherit the run's process tag, so cleanup finds them."""
    server = (("kill %d; " + GONE + "; (%s -n -f %s >> %s 2>&1 &); %s")
              % (ngircd.proc.pid, ngircd.proc.pid, ngircd.proc.pid, bl.NGIRCD, ngircd.conf, ngircd.log_path,
                 wait_port_cmd(ngircd.port)))
    sup = (("kill %d; " + GONE + "; (cd %s && BATON_FAULT_FILE=%s %s -c %s >> %s 2>&1 &); %s")
           % (baton.proc.pid, baton.proc.pid, baton.proc.pid, baton.dir, baton.fault_file,
              baton.build.supervisor, baton.config, baton.log_path, wait_port_cmd(baton.port)))
    return server, sup


def prepare(args):
    """Builds, trace and loadgen for a run; fills args.nofile. Raises Skip."""
    A = bl.builds()["a"].require()
    B = bl.builds()["b"]
    if not B.exists():
        bl.log("build B missing at %s: upgrading A -> A" % B.path)
        B = A
    bl.load_trace(path=args.trace, limit=1)       # Skip if absent
    loadgen = find_loadgen(A)
    nofile = raise_nofile()
    args.nofile = max(4096, min(nofile, 3 * args.bouncer_users + 2048))
    return A, B, loadgen


def loadgen_cmd(args, loadgen, ngircd, baton):
    """baton-loadgen against ngircd and baton with args' users, channels,
    trace, rate, duration and drain (JSON report on stdout); callers add
    scenarios and --exec commands."""
    return [loadgen, "--json", "-v", "--trace", args.trace,
            "--server", "127.0.0.1:%d" % ngircd.port,
            "--baton", "127.0.0.1:%d" % baton.port,
            "--network", baton.network, "--password", baton.sessions[0].password,
            "--bouncer-users", str(args.bouncer_users), "--channels", str(args.channels),
            "--chans-per-user", str(args.chans_per_user), "--seed", str(args.seed),
            "--rate", str(args.rate), "--duration", str(args.duration),
            "--drain", str(args.drain)]


def load_run(ctx, args, A, B, loadgen, log=bl.log):
    """One run in ctx: ngircd + baton + baton-loadgen with the scenarios and
    upgrades of args. Returns the result dict (see the module docstring);
    result["pass"] says whether everything held."""
    ngircd, baton = setup(ctx, args, loadgen, log)
    outdir = os.path.join(ctx.dir, "upgrades")
    os.makedirs(outdir, exist_ok=True)
    cmd = loadgen_cmd(args, loadgen, ngircd, baton)
    if args.netsplit_at >= 0:
        cmd += ["--netsplit", "%g:%g" % (args.netsplit_at * args.duration, args.netsplit_fraction)]
    if args.reconnect_at >= 0:
        cmd += ["--mass-reconnect", "%g:%g" % (args.reconnect_at * args.duration,
                                                args.reconnect_fraction)]
    server_cmd, baton_cmd = restart_cmds(ngircd, baton)
    if args.server_restart_at >= 0:
        cmd += ["--server-restart", "%g:%s" % (args.server_restart_at * args.duration, server_cmd)]
    if args.baton_restart_at >= 0:
        cmd += ["--baton-restart", "%g:%s" % (args.baton_restart_at * args.duration, baton_cmd)]
    upgrades = []
    for i, at in enumerate(upgrade_times(args)):
        target = B if i % 2 == 0 else A
        out = os.path.join(outdir, "upgrade-%d.json" % (i + 1))
        upgrades.append({"at_s": at, "to_build": target.name, "out": out})
        cmd += ["--exec", "%g:%s -c %s upgrade %s --json > %s" % (
            at, A.batonctl, baton.config, target.sessiond, out)]
    cmd += args.loadgen_args
    log("running: %s" % " ".join(cmd))
    ngircd_mark = ngircd.log_size()
    t = time.monotonic()
    with open(os.path.join(ctx.dir, "loadgen.log"), "wb") as errf:
        p = ctx.procs.popen(cmd, stdout=subprocess.PIPE, stderr=errf if args.quiet else None)
        stdout, _ = p.communicate()
    wall = time.monotonic() - t
    try:
        report = json.loads(stdout.decode() or "null")
    except ValueError:
        report = None
    for u in upgrades:
        try:
            with open(u["out"]) as f:
                u["result"] = json.load(f)
        except (OSError, ValueError) as e:
            u["result"] = {"error": "no JSON from batonctl: %s" % e}
        del u["out"]
    unreg = ngircd.unregistered([s.nick for s in baton.sessions], since=ngircd_mark)
    status = baton.try_status()
    ups_ok = all(u["result"].get("result") == "committed" for u in upgrades)
    restarted = args.server_restart_at >= 0 or args.baton_restart_at >= 0
    if restarted:
        unreg = []   # restarts unregister everyone, by design
    ok = (p.returncode == 0 and report is not None and ups_ok and not unreg and
          (baton.alive() or args.baton_restart_at >= 0))
    return {
        "kind": "load_run",
        "time_utc": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
        "params": {k: v for k, v in vars(args).items() if k not in ("loadgen_args",)},
        "loadgen_args": args.loadgen_args,
        "loadgen_exit": p.returncode,
        "loadgen_wall_s": round(wall, 1),
        "builds": {"a": A.version, "b": B.version},
        "upgrades": upgrades,
        "ngircd_unregistered_bouncer_nicks": len(unreg),
        "ngircd_unregistered_first": unreg[:5],
        "worker_after": (status or {}).get("workers"),
        "loadgen": report,
        "pass": ok,
    }


def run(args):
    A, B, loadgen = prepare(args)
    ctx = bl.Context("loadrun", keep=args.keep)
    ok = False
    try:
        result = load_run(ctx, args, A, B, loadgen)
        ok = result["pass"]
        os.makedirs(args.results, exist_ok=True)
        path = os.path.join(args.results, "load-%du.json" % args.bouncer_users)
        with open(path, "w") as f:
            f.write(bl.scrub_paths(json.dumps(result, indent=1)) + "\n")
        print(json.dumps(result))
        summary(result, path)
    finally:
        ctx.close(failed=not ok)
        if not ok:
            bl.log("artifacts kept in %s" % ctx.dir)
    return 0 if ok else 1


def parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bouncer-users", type=int, default=2000)
    ap.add_argument("--channels", type=int, default=50)
    ap.add_argument("--chans-per-user", type=int, default=2)
    ap.add_argument("--rate", type=float, default=30.0, help="trace events/s (default 30)")
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of traffic (default 120)")
    ap.add_argument("--upgrades", type=int, default=3)
    ap.add_argument("--netsplit-at", type=float, default=0.35,
                    help="fraction of the duration (negative: none; default 0.35)")
    ap.add_argument("--netsplit-fraction", type=float, default=0.3)
    ap.add_argument("--reconnect-at", type=float, default=0.48,
                    help="mass client reconnect, fraction of the duration (default 0.48)")
    ap.add_argument("--reconnect-fraction", type=float, default=0.3)
    ap.add_argument("--server-restart-at", type=float, default=-1,
                    help="restart ngircd at this fraction of the duration (default: no)")
    ap.add_argument("--baton-restart-at", type=float, default=-1,
                    help="restart baton-supervisor at this fraction of the duration (default: no)")
    ap.add_argument("--drain", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--backlog-lines", type=int, default=20000)
    ap.add_argument("--chunk-sessions", type=int, default=256)
    ap.add_argument("--ready-timeout", type=float, default=300.0)
    ap.add_argument("--trace", default=bl.FULL_TRACE_PATH if os.path.exists(bl.FULL_TRACE_PATH)
                    else bl.TRACE_PATH,
                    help="trace to replay (default: the full trace in ../shared/traces when "
                    "present, else the suite's slice in tests/data)")
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--quiet", action="store_true",
                    help="loadgen's progress and report to <tmp>/loadgen.log, not stderr")
    ap.add_argument("loadgen_args", nargs="*", help="after --: extra baton-loadgen options")
    return ap


def summary(r, path):
    e = sys.stderr.write
    e("\n== load run: %d bouncer users, %d channels, %s\n" % (
        r["params"]["bouncer_users"], r["params"]["channels"], "PASS" if r["pass"] else "FAIL"))
    for u in r["upgrades"]:
        res = u["result"]
        e("  upgrade at +%.1fs to %s: %s, freeze %s ms, total %s ms\n" % (
            u["at_s"], u["to_build"], res.get("result", res.get("error")),
            res.get("freeze_ms"), res.get("total_ms")))
    e("  ngircd logged %d bouncer nicks unregistered\n" % r["ngircd_unregistered_bouncer_nicks"])
    lg = r["loadgen"]
    if lg:
        d, c, m = lg["delivery"], lg["connections"], lg["event_mix"]
        e("  mix (generated vs trace): %s; max diff %.2f pp\n" % (
            ", ".join("%s %.1f/%.1f%%" % (k, m[k]["generated_pct"], m[k]["trace_pct"])
                      for k in ("privmsg", "join", "part", "quit", "nick")), m["max_diff_pp"]))
        e("  lines %d, deliveries %d/%d, lost %d, dup %d, ooo %d; latency live p50 %.1f p99 %.1f ms; "
          "disconnects %d\n" % (d["lines_sent"], d["received"], d["expected"], d["lost"],
                                d["duplicated"], d["out_of_order"], d["latency_live"]["p50_ms"],
                                d["latency_live"]["p99_ms"], c["disconnects"]))
    else:
        e("  loadgen produced no report (exit %s)\n" % r["loadgen_exit"])
    e("  saved %s\n" % path)


def main():
    args = parser().parse_args()
    try:
        return run(args)
    except bl.Skip as e:
        print("SKIP: %s" % e, file=sys.stderr)
        return 0


if __name__ == "__main__":
    sys.exit(main())
