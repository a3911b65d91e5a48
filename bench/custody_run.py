#!/usr/bin/env python3
"""bench/custody_run.py: custody under trace-shaped load (issue 10, "What it
must show"), and what custody costs, in one command.

Two runs of bench/load_run.py's setup (ngircd, baton with N bouncer users
in C channels, baton-loadgen replaying the trace; no upgrade, netsplit or
mass reconnect), one after the other with the same seed:
  off: [supervisor] custody = no, no kill
  on:  custody = yes, and K `kill -9` of the serving worker at random moments
       (loadgen --exec), each adopted by the next worker from custody
Prints and saves (bench/results/custody-<N>u[-tls].json) per run loadgen's
delivery figures (lines, lost, duplicated, client disconnects, relay
latency p50/p99), the bouncer nicks ngircd saw unregister (QUIT: upstream
reconnects), the worker's CPU per line where known, and for the custody run
every `crashes[]` entry (sessions restored, connections kept/reconnected,
lines lost, restore_ms).

    bench/custody_run.py                               # 200 users, 20 kills
    bench/custody_run.py --bouncer-users 100 --kills 5 --duration 30
    bench/custody_run.py --tls                         # upstreams over TLS

--tls: every session's network connection is TLS (ngircd's TLS port, its
GnuTLS default: TLS 1.3), so the kills hit TLS record layers moving both
ways (sessiond/checkpoint.h CKPT_TLS). The loadgen's clients and network
peers stay plaintext (baton-loadgen speaks no TLS): client-side TLS under
custody is covered by tests/integration/test_worker_crash.py only.

The kills make the "off" and "on" relay figures differ for reasons other
than custody's cost: --kills 0 measures the cost alone. Exit 0 when the
custody run had no duplicated line, no client disconnect and no upstream
reconnect. Python standard library only.
"""

import json
import os
import random
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "integration"))

import batonlib as bl  # noqa: E402
import load_run  # noqa: E402


def kill_cmd(baton):
    """Shell: kill -9 of the serving worker (its pid from status)."""
    return ("kill -9 $(%s -c %s status --json | python3 -c 'import json,sys; "
            "print(json.load(sys.stdin)[\"workers\"][0][\"pid\"])')"
            % (baton.build.batonctl, baton.config))


def one_run(args, A, loadgen, custody, kills):
    ctx = bl.Context("custody-%s" % ("on" if custody else "off"), keep=args.keep)
    ok = False
    try:
        tls_kw = {}
        if args.tls:
            import tlslib
            pki = tlslib.PKI(os.path.join(ctx.dir, "pki")).create()
            ng = tlslib.NgircdTls(ctx, pki).start()
            # Baton's own network_opts (an instance attribute: the class
            # one LoadBaton sets below does not reach its config)
            tls_kw = {"upstream_port": ng.tls_port,
                      "network_opts": dict(load_run.GOVERNOR_OFF, tls="yes",
                                           tls_ca=pki.ca_cert)}
        else:
            ng = ctx.ngircd()
        rows = load_run.plan(loadgen, args)
        baton = load_run.LoadBaton(
            ctx, ng, nsessions=args.bouncer_users, channels=("#lg0",),
            sessiond_opts=dict(bl.roomy_backlog(args.backlog_lines)),
            supervisor_opts={"custody": "yes" if custody else "no",
                             "custody_checkpoint_ms": args.checkpoint_ms},
            handoff_timeout=60, rlimit_nofile=args.nofile, **tls_kw)
        for s, (user, nick, chans) in zip(baton.sessions, rows):
            s.channels = chans
        load_run.LoadBaton.network_opts = dict(load_run.GOVERNOR_OFF)
        baton.write_config()
        baton.start(wait=True, timeout=args.ready_timeout)
        cmd = load_run.loadgen_cmd(args, loadgen, ng, baton)
        rnd = random.Random(args.seed)
        at = sorted(round(rnd.uniform(0.1, 0.9) * args.duration, 2) for _ in range(kills))
        for t in at:
            cmd += ["--exec", "%g:%s" % (t, kill_cmd(baton))]
        mark = ng.log_size()
        t0 = time.monotonic()
        with open(os.path.join(ctx.dir, "loadgen.log"), "wb") as errf:
            p = ctx.procs.popen(cmd, stdout=subprocess.PIPE, stderr=errf)
            out, _ = p.communicate()
        wall = time.monotonic() - t0
        try:
            rep = json.loads(out.decode() or "null")
        except ValueError:
            rep = None
        st = baton.try_status() or {}
        unreg = ng.unregistered([s.nick for s in baton.sessions], since=mark)
        d = (rep or {}).get("delivery", {})
        c = (rep or {}).get("connections", {})
        res = {
            "custody": custody, "tls": bool(args.tls), "kills": kills, "kill_at_s": at,
            "loadgen_exit": p.returncode, "wall_s": round(wall, 1),
            # its verdict's reasons (e.g. a kill command that found no
            # worker to kill while the supervisor's crash-loop backoff ran)
            "loadgen_failures": (rep or {}).get("failures"),
            "lines_sent": d.get("lines_sent"), "received": d.get("received"),
            "expected": d.get("expected"), "lost": d.get("lost"),
            "duplicated": d.get("duplicated"), "out_of_order": d.get("out_of_order"),
            "client_disconnects": c.get("disconnects"),
            "latency_p50_ms": (d.get("latency_live") or {}).get("p50_ms"),
            "latency_p99_ms": (d.get("latency_live") or {}).get("p99_ms"),
            "upstream_reconnects": len(unreg),
            "crashes": st.get("crashes"), "custody_status": st.get("custody"),
        }
        ok = True
        return res
    finally:
        ctx.close(failed=not ok)


def main():
    ap = load_run.parser()
    ap.description = __doc__.split("\n\n")[0]
    ap.set_defaults(bouncer_users=200, channels=10, duration=60.0, drain=20.0,
                    rate=40.0, upgrades=0)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--checkpoint-ms", type=int, default=1000)
    ap.add_argument("--tls", action="store_true",
                    help="the sessions' network connections over TLS")
    args = ap.parse_args()
    try:
        A, B, loadgen = load_run.prepare(args)
    except bl.Skip as e:
        print("SKIP: %s" % e, file=sys.stderr)
        return 0
    runs = [one_run(args, A, loadgen, False, 0),
            one_run(args, A, loadgen, True, args.kills)]
    result = {"kind": "custody_run", "params": {
        k: v for k, v in vars(args).items() if k not in ("loadgen_args",)}, "runs": runs}
    os.makedirs(args.results, exist_ok=True)
    path = os.path.join(args.results, "custody-%du%s.json" % (args.bouncer_users, "-tls" if args.tls else ""))
    with open(path, "w") as f:
        f.write(bl.scrub_paths(json.dumps(result, indent=1)) + "\n")
    for r in runs:
        cr = r["crashes"] or []
        sys.stderr.write(
            "custody %-3s kills %2d: lines %s lost %s dup %s disconnects %s upstream "
            "reconnects %s p50 %s p99 %s ms; restores %d, kept %d, reconnected %d, "
            "lines_lost %d, restore_ms max %s\n" % (
                "on" if r["custody"] else "off", r["kills"], r["lines_sent"], r["lost"],
                r["duplicated"], r["client_disconnects"], r["upstream_reconnects"],
                r["latency_p50_ms"], r["latency_p99_ms"],
                sum(1 for x in cr if x.get("sessions_restored")),
                sum(x.get("connections_kept") or 0 for x in cr),
                sum(x.get("connections_reconnected") or 0 for x in cr),
                sum(x.get("lines_lost") or 0 for x in cr),
                max([x.get("restore_ms") or 0 for x in cr] or [None])))
    sys.stderr.write("saved %s\n" % path)
    on = runs[1]
    # loadgen's own verdict counts too: a run whose counts look clean but
    # whose loadgen failed is not a result to quote
    good = (on["duplicated"] == 0 and on["client_disconnects"] == 0 and
            on["upstream_reconnects"] == 0 and
            all(r["loadgen_exit"] == 0 for r in runs))
    if not all(r["loadgen_exit"] == 0 for r in runs):
        sys.stderr.write("baton-loadgen failed (exit %s): see its stderr above\n"
                         % [r["loadgen_exit"] for r in runs])
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
