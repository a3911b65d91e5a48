#!/usr/bin/env python3
"""bench/znc_compare.py: baton vs. ZNC on the same machine and the same load
(issue 4, Benchmarks item 4).

For each bouncer in turn (baton, then Debian's znc), on a fresh ngircd with
identical parameters: N users, each with one network (the local ngircd) and
one channel of C, one attached client per user, speakers on ngircd sending
numbered, timestamped lines into the channels at R lines/s, and a watcher on
ngircd that sees every JOIN/PART/QUIT of the bouncer users.

Measured for both:
- start-up: time until every user is in its channel (seen by the watcher);
- RSS per user: upstream only (no clients), with clients attached idle, and
  at the end of the steady traffic phase (baton: supervisor + worker;
  ZNC: its single process);
- relay latency network -> ngircd -> bouncer -> client, p50/p99/max, and CPU
  per 1,000 delivered lines, at steady state. With --load-gen loadgen
  (default) the steady phase is baton-loadgen replaying the sample trace
  (users and channels laid out by its --emit-users, 2 channels per user,
  the same plan for both bouncers): the harness clients leave, loadgen's
  network users join the bench's ngircd and one loadgen client per user
  attaches through the bouncer, every line checked exactly once and in
  order; then the harness clients attach again for the replacement phase.
  Against ZNC loadgen's PASS user/NET@lg:PW is bent into ZNC's
  user[@id][/network]:password by --network "bench:benchpw" and a ZNC
  password of "benchpw@lg:benchpw" (see ZNC_LG_NETWORK). --load-gen
  ircload: the old steady phase (speakers, PRIVMSGs only);
- the cost of replacing the running binary under the same traffic:
  * baton: `batonctl upgrade <sessiond>` (to the same build);
  * ZNC: SIGTERM, wait for exit, start again (what an upgrade of ZNC is);
    the harness reconnects every client as soon as ZNC listens again (a
    real client would reconnect later, not sooner);
  reported: client connections dropped, upstream connections dropped
  (QUITs seen by the network), time until every user is back in its channel
  (watcher) and until every client is attached again, lines sent in the
  phase that clients never received, duplicates.

ZNC config (generated in a tmp datadir, `znc --foreground --datadir X`):
one listener on 127.0.0.1 (IRC only, no web), no modules, per user one
network with its channel, password as ZNC's own SHA256+salt <Pass> block,
ChanBufferSize 500 (baton's backlog_lines default), timestamps off (so
played-back lines stay parseable), FloodRate/FloodBurst high (no outgoing
throttling), AnonIPLimit high (all clients come from 127.0.0.1), and by
default ConnectDelay 0 and ServerThrottle 0: ZNC's defaults (5 s between
network connects, 30 s throttle per server) would make 500 users take
hours to come back; --znc-default-throttle keeps them.

    bench/znc_compare.py                       # 200 users, 50 channels, trace load + 50 lines/s
    bench/znc_compare.py --load-gen ircload    # steady phase with ircload's PRIVMSGs
    bench/znc_compare.py --users 500 --rate 100

ZNC (re)connects its users' networks at about one per second even with
ConnectDelay 0 (observed), so a ZNC start or restart of N users takes ~N
seconds: 200 users ~8 min for the whole command, 500 users ~20 min.
    bench/znc_compare.py --only znc

JSON on stdout and in bench/results/znc-compare-<N>u.json (overwritten by
the next run with the same N).
"""

import argparse
import hashlib
import json
import os
import secrets
import shutil
import signal
import string
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ircload  # noqa: E402
from ircload import log, Proc  # noqa: E402
import migration_bench as mb  # noqa: E402
import relay_bench as rb  # noqa: E402
import rss_bench as rss  # noqa: E402

PASSWORD = rb.PASSWORD
NETWORK = rb.NETWORK


def znc_pass_block(password):
    salt = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(20))
    h = hashlib.sha256((password + salt).encode()).hexdigest()
    return ["\t<Pass password>", "\t\tMethod = SHA256", "\t\tHash = %s" % h,
            "\t\tSalt = %s" % salt, "\t</Pass>"]


def znc_version():
    try:
        r = subprocess.run(["znc", "--version"], capture_output=True, text=True, timeout=10)
        return r.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return None


class Znc:
    kind = "znc"

    def __init__(self, workdir, port, net_port, users, channels_of, default_throttle=False,
                 buffer_lines=500, password=PASSWORD):
        self.dir = os.path.join(workdir, "znc")
        os.makedirs(os.path.join(self.dir, "configs"), exist_ok=True)
        # ZNC run as root waits 30 s ("Hit CTRL+C now") even with
        # --allow-root: run it as nobody, like a real deployment would.
        self.uid = 65534 if os.getuid() == 0 else None
        if self.uid is not None:
            os.chmod(workdir, 0o755)
        self.port = port
        self.users = users
        self.proc = None
        self.logf = None
        self.starts = 0
        ver = (znc_version() or "ZNC 1.8.2").split()[1].split("+")[0]
        lines = ["Version = %s" % ver,
                 "AnonIPLimit = 100000",
                 "MaxBufferSize = %d" % max(500, buffer_lines),
                 "ProtectWebSessions = false",
                 "HideVersion = true"]
        if not default_throttle:
            lines += ["ConnectDelay = 0", "ServerThrottle = 0"]
        lines += ["<Listener l>", "\tPort = %d" % port, "\tIPv4 = true", "\tIPv6 = false",
                  "\tSSL = false", "\tHost = 127.0.0.1", "\tAllowIRC = true",
                  "\tAllowWeb = false", "</Listener>"]
        pw = znc_pass_block(password)  # same salt for all: hashing is not what we measure
        for i, u in enumerate(users):
            lines += ["<User %s>" % u,
                      "\tAdmin = %s" % ("true" if i == 0 else "false"),
                      "\tNick = %s" % u, "\tAltNick = %s_" % u, "\tIdent = %s" % u,
                      "\tRealName = %s" % u,
                      "\tChanBufferSize = %d" % buffer_lines,
                      "\tQueryBufferSize = 50",
                      "\tAutoClearChanBuffer = true",
                      "\tPrependTimestamp = false", "\tAppendTimestamp = false",
                      "\tMaxNetworks = 1",
                      "\t<Network %s>" % NETWORK,
                      "\t\tServer = 127.0.0.1 %d" % net_port,
                      "\t\tFloodRate = 1000.00", "\t\tFloodBurst = 1000"]
            for ch in channels_of[u]:
                lines += ["\t\t<Chan %s>" % ch, "\t\t</Chan>"]
            lines += ["\t</Network>"] + pw + ["</User>", ""]
        with open(os.path.join(self.dir, "configs", "znc.conf"), "w") as f:
            f.write("\n".join(lines) + "\n")
        if self.uid is not None:
            for root, dirs, files in os.walk(self.dir):
                for x in [root] + [os.path.join(root, y) for y in files]:
                    os.chown(x, self.uid, self.uid)

    def start(self):
        cmd = ["znc", "--foreground", "--no-color", "--datadir", self.dir]
        if self.uid is not None:
            cmd = ["setpriv", "--reuid=%d" % self.uid, "--regid=%d" % self.uid,
                   "--clear-groups"] + cmd
        if shutil.which("prlimit"):
            cmd = ["prlimit", "--nofile=20000", "--"] + cmd
        self.starts += 1
        self.logf = open(os.path.join(self.dir, "znc-%d.log" % self.starts), "w")
        log("starting %s" % " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        ircload.wait_port(self.port, timeout=60, proc=self.proc)
        return self

    def upstream_ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError("znc exited (%s)" % self.proc.returncode)
        return True, {}

    def pids(self):
        return {"znc": [self.proc.pid]} if self.proc and self.proc.poll() is None else {}

    def terminate(self, timeout=30):
        """SIGTERM and wait for the exit; -> seconds it took."""
        t0 = time.monotonic()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.logf:
            self.logf.close()
            self.logf = None
        return time.monotonic() - t0

    def stop(self):
        self.terminate(10)
        if self.proc:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --------------------------------------------------------------------------

def membership_counts(events):
    out = {}
    for e in events:
        out[e[1]] = out.get(e[1], 0) + 1
    return out


def baton_upgrade(args, bins):
    def during(rig):
        time.sleep(args.pre)
        nicks = set(u.lower() for u in rig.users)
        t0 = time.monotonic_ns()
        cpu0 = rig.cpu()
        try:
            r = rig.bouncer.ctl("upgrade", bins["sessiond"], "--json", timeout=300)
            rc, out = r.returncode, r.stdout
        except subprocess.TimeoutExpired as e:
            rc, out = None, e.stdout or ""
        t1 = time.monotonic_ns()
        try:
            uj = json.loads(out)
        except (ValueError, TypeError):
            uj = {"unparsed": (out or "")[-1000:]}
        time.sleep(args.gap)
        ev = rig.watcher.events_since(t0, nicks)
        return {"action": "batonctl upgrade %s" % bins["sessiond"], "rc": rc, "result": uj,
                "wall_ms": round((t1 - t0) / 1e6, 1),
                "membership_events_seen_by_network": membership_counts(ev),
                "upstream_connections_dropped": sum(1 for e in ev if e[1] == "QUIT"),
                "time_until_all_users_back_in_channels_s": 0.0 if not ev else None,
                "time_until_all_clients_attached_s": 0.0,
                "users_in_channels_after": rig.watcher.users_in(rig.channels_of),
                "_cpu0": cpu0}
    return during


def znc_restart(args):
    def during(rig):
        time.sleep(args.pre)
        nicks = set(u.lower() for u in rig.users)
        n = len(rig.users)
        t0 = time.monotonic_ns()
        stop_s = rig.bouncer.terminate()
        t_exit = time.monotonic_ns()
        # the network sees the QUITs
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and rig.watcher.users_in(rig.channels_of) > 0:
            time.sleep(0.05)
        users_left_in_channels = rig.watcher.users_in(rig.channels_of)
        old = rig.workers
        old_status = rig.client_status(old)
        old_stop = [w.call("traffic", 0) for w in old]
        old_reports = [w.call("report", timeout=120) for w in old]
        rig.old_workers = old
        rig.bouncer.start()
        t_listen = time.monotonic_ns()
        # clients reconnect at once (same specs, new processes)
        nproc = len(old)
        window = rig.connect_window
        rig.workers = [Proc(ircload.client_worker, rig.bouncer.port, rig.specs[w::nproc],
                            max(1, window // nproc)) for w in range(nproc)]
        t_net = t_cli = None
        deadline = time.monotonic() + args.restart_timeout
        last = 0
        while time.monotonic() < deadline and (t_net is None or t_cli is None):
            if t_net is None and rig.watcher.users_in(rig.channels_of) >= n:
                t_net = time.monotonic_ns()
            if t_cli is None:
                st = rig.client_status()
                if st["ready"] >= n:
                    t_cli = time.monotonic_ns()
            if time.monotonic() - last > 5:
                log("[znc] restart: %d/%d users back in channels, clients %s" % (
                    rig.watcher.users_in(rig.channels_of), n, rig.client_status()))
                last = time.monotonic()
            time.sleep(0.05)
        time.sleep(args.gap)
        ev = rig.watcher.events_since(t0, nicks)
        return {"action": "SIGTERM znc, wait for exit, start znc; clients reconnect "
                          "as soon as it listens",
                "stop_s": round(stop_s, 3),
                "restart_to_listening_s": round((t_listen - t_exit) / 1e9, 3),
                "membership_events_seen_by_network": membership_counts(ev),
                "upstream_connections_dropped": sum(1 for e in ev if e[1] == "QUIT"),
                "users_in_channels_right_after_stop": users_left_in_channels,
                "client_connections_dropped": old_status["closed"],
                "client_close_reasons": old_status["close_reasons"],
                "time_until_all_users_back_in_channels_s":
                    round((t_net - t0) / 1e9, 3) if t_net else None,
                "time_until_all_clients_attached_s":
                    round((t_cli - t0) / 1e9, 3) if t_cli else None,
                "users_in_channels_after": rig.watcher.users_in(rig.channels_of),
                "_old_reports": old_reports, "_old_stop": old_stop}
    return during


# baton-loadgen logs in with PASS user/NETWORK@lg:PASSWORD (baton's format).
# ZNC reads PASS as [user[@identifier][/network]:]password with the FIRST
# colon ending the user part, and takes everything after the LAST "/" as the
# network, so "u000/bench@lg:pw" would ask for network "bench@lg". Against
# ZNC loadgen gets --network "bench:benchpw", i.e. sends
# "u000/bench:benchpw@lg:benchpw": user u000, network bench, password
# "benchpw@lg:benchpw" -- which is the ZNC users' password here (and what
# the harness's own clients send to ZNC, as user/bench:<that>).
ZNC_LG_NETWORK = "%s:%s" % (NETWORK, PASSWORD)
ZNC_LG_PASSWORD = "%s@lg:%s" % (PASSWORD, PASSWORD)


def steady_loadgen(kind, rig, args, loadgen, out, roles):
    """The steady phase with baton-loadgen: the harness clients leave,
    loadgen replays the trace for --steady s (its clients through the
    bouncer, network users on ngircd), RSS sampled every second; then the
    harness clients attach again for the replacement phase."""
    for w in rig.workers:
        w.stop()
    rig.workers = []
    time.sleep(args.settle)

    def sampler(r):
        m = r.mem()
        return {"kb": r.rss_kb(m, roles)}
    net, pw = (ZNC_LG_NETWORK, PASSWORD) if kind == "znc" else (None, None)
    samples, marks, rep, rc, wall, cpu, errpath = rss.run_loadgen(
        rig, loadgen, args, duration=args.steady, network=net, password=pw, sampler=sampler)
    ts, te = marks.get("traffic_start"), marks.get("traffic_end")
    during = [x for x in samples if ts and te and ts <= x["t"] <= te]
    lg = rss.loadgen_summary(rep)
    if lg is not None and cpu is not None:
        lg["cpu_ms_during_traffic"] = cpu
        if lg["deliveries_received"]:
            lg["bouncer_cpu_ms_per_1000_deliveries"] = round(
                sum(cpu.get(k, 0.0) for k in ("worker", "supervisor", "znc")) * 1000.0
                / lg["deliveries_received"], 2)
    if during:
        out["rss_under_load"] = {"kb": during[-1]["kb"],
                                 "max_sampled_kb": max(x["kb"] for x in during),
                                 "samples": len(during)}
    out["steady"] = {"generator": "baton-loadgen", "exit": rc, "wall_s": round(wall, 1),
                     "loadgen": lg}
    if lg is None or not during:
        raise RuntimeError("loadgen (exit %s) produced no report or no traffic phase; log %s"
                           % (rc, errpath))
    log("[%s] steady (loadgen, exit %s): deliveries %s/%s, lost %s, dup %s, p50 %s p99 %s ms, "
        "mix max diff %s pp" % (kind, rc, lg["deliveries_received"], lg["deliveries_expected"],
                                lg["lost"], lg["duplicated"],
                                (lg["latency_live"] or {}).get("p50_ms"),
                                (lg["latency_live"] or {}).get("p99_ms"),
                                lg["event_mix_max_diff_pp"]))
    timeout = max(120.0, args.users * 0.2)
    rig.start_clients(timeout)


def run_one(kind, args, bins, loadgen=None):
    plan = rss.loadgen_plan(loadgen, args.users, args) if loadgen else None
    rig = rb.Rig(args.users, args.channels, speakers=args.speakers,
                 client_procs=args.client_procs, watcher=True, label=kind, plan=plan)
    out = {"kind": kind}
    if plan is not None:
        out["layout"] = dict(rss.channel_sizes(plan), source="baton-loadgen --emit-users",
                             chans_per_user=args.chans_per_user)
        if kind == "znc":
            rig.client_password = ZNC_LG_PASSWORD
    # ZNC connects at most ~1 network per second (observed with ConnectDelay 0)
    timeout = max(120.0, args.users * 0.2) if kind == "baton" else 120.0 + args.users * 2.0
    try:
        rig.start_network()
        if kind == "baton":
            make = rb.baton_maker(bins)
        else:
            def make(r):
                return Znc(r.workdir, r.port, r.net_port, r.users, r.channels_of,
                           default_throttle=args.znc_default_throttle,
                           password=r.client_password)
        rig.start_bouncer(make, timeout)
        time.sleep(args.settle)
        m = rig.mem()
        roles = ("supervisor", "worker", "znc")
        out["rss_upstream_only"] = {"kb": rig.rss_kb(m, roles), "detail": m}
        rig.start_clients(timeout)
        time.sleep(args.settle)
        m = rig.mem()
        out["rss_clients_idle"] = {"kb": rig.rss_kb(m, roles), "detail": m}
        if loadgen:
            log("[%s] steady: baton-loadgen, trace at %s events/s for %s s" % (
                kind, args.trace_rate, args.steady))
            steady_loadgen(kind, rig, args, loadgen, out, roles)
            rig.start_speakers()
            out["timings"] = dict(rig.timings)
        else:
            rig.start_speakers()
            out["timings"] = dict(rig.timings)
            log("[%s] steady: %s lines/s for %s s" % (kind, args.rate, args.steady))
            st = rig.phase(args.rate, args.steady, drain=args.drain, warm=1.0)
            out["rss_under_load"] = {"kb": rig.rss_kb(st["mem_end"], roles),
                                     "max_sampled_kb": st.get("bouncer_rss_kb_samples",
                                                              {}).get("max")}
            st.pop("_per_client", None)
            out["steady"] = st
            log("[%s] steady: p50 %s p99 %s ms, lost %s" % (
                kind, st["latency_down"]["p50_ms"], st["latency_down"]["p99_ms"], st["lost"]))
        # the replacement under traffic
        during = baton_upgrade(args, bins) if kind == "baton" else znc_restart(args)
        log("[%s] %s under %s lines/s" % (kind, "upgrade" if kind == "baton" else "restart",
                                           args.rate))
        ev = rig.phase(args.rate, None, drain=args.drain, warm=0.0, during=during)
        d = ev["during"]
        per_client = ev.pop("_per_client")
        if kind == "baton":
            d.pop("_cpu0", None)
            missed = ev["lost"]
            d["client_connections_dropped"] = ev["clients_closed"]
        else:
            old = {}
            for r in d.pop("_old_reports"):
                for (idx, nick, lines_in, dups, dis, seqs, closed, reason, _, e) in r["clients"]:
                    old[idx] = (lines_in, dups)
            d.pop("_old_stop", None)
            missed = 0
            got_all = 0
            for idx, (exp, lines_in, dups, closed) in per_client.items():
                o = old.get(idx, (0, 0))
                m_ = exp - (lines_in - dups) - (o[0] - o[1])
                missed += m_
                got_all += m_ == 0
            ev["received_before_restart"] = sum(v[0] for v in old.values())
            ev["clients_that_got_every_line"] = got_all
        ev["lines_missed"] = missed
        ev["lines_missed_per_user"] = round(missed / float(args.users), 1)
        ev["missed_share"] = round(missed / float(ev["deliveries_expected"]), 4) \
            if ev["deliveries_expected"] else None
        out["replace"] = ev
        log("[%s] replace: %s" % (kind, json.dumps({k: v for k, v in d.items()
                                                    if k != "result"})[:600]))
        log("[%s] missed %s of %s deliveries, dup %s" % (kind, missed, ev["deliveries_expected"],
                                                        ev["duplicated"]))
    except Exception as e:
        out["error"] = "%s: %s" % (type(e).__name__, e)
        log("ERROR [%s]: %s" % (kind, out["error"]))
        import traceback
        traceback.print_exc()
    finally:
        rig.stop(keep="error" in out or args.keep)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--channels", type=int, default=50)
    ap.add_argument("--rate", type=float, default=50.0, help="network lines/s into the channels")
    ap.add_argument("--steady", type=float, default=15.0)
    ap.add_argument("--pre", type=float, default=2.0,
                    help="s of traffic in the replacement phase before the upgrade/restart")
    ap.add_argument("--gap", type=float, default=3.0,
                    help="s of traffic after the upgrade / after everyone is back")
    ap.add_argument("--drain", type=float, default=2.0)
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--speakers", type=int, default=10)
    ap.add_argument("--client-procs", type=int, default=0)
    ap.add_argument("--restart-timeout", type=float, default=0,
                    help="s to wait for everyone to be back after the ZNC restart "
                         "(default 120 + 2 s per user)")
    ap.add_argument("--only", choices=("baton", "znc"), default=None)
    ap.add_argument("--znc-default-throttle", action="store_true",
                    help="keep ZNC's ConnectDelay (5 s) and ServerThrottle (30 s)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--load-gen", choices=("loadgen", "ircload"), default="loadgen",
                    help="load of the steady phase (default loadgen: the trace; the "
                         "replacement phase always uses ircload's speakers and clients)")
    g = ap.add_argument_group("loadgen (steady phase)")
    g.add_argument("--trace", default=rss.TRACE)
    g.add_argument("--trace-rate", type=float, default=30.0,
                   help="trace events/s, all channel copies (default 30)")
    g.add_argument("--chans-per-user", type=int, default=2)
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--loadgen-drain", type=float, default=30.0)
    g.add_argument("--loadgen-arg", action="append", default=[],
                   help="extra baton-loadgen option (repeat)")
    args = ap.parse_args()
    ircload.raise_nofile()
    if not args.restart_timeout:
        args.restart_timeout = 120.0 + 2.0 * args.users
    bins = mb.build_bins(rb.default_build())
    result = {"bench": "znc_compare", "version": 1,
              "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "params": vars(args), "baton_build": bins["root"], "znc": znc_version(),
              "loadavg_start": os.getloadavg()}
    kinds = [args.only] if args.only else ["baton", "znc"]
    loadgen = None
    if args.load_gen == "loadgen":
        loadgen = rss.find_loadgen(bins["root"])
        if not os.path.exists(args.trace):
            sys.exit("trace %s not found (--trace)" % args.trace)
        result["load_generator"] = "baton-loadgen %s (trace %s)" % (loadgen, args.trace)
    else:
        result["load_generator"] = "bench/ircload.py"
    for k in kinds:
        result[k] = run_one(k, args, bins, loadgen)
    result["loadavg_end"] = os.getloadavg()
    h = {}
    for k in kinds:
        r = result[k]
        if "error" in r and "replace" not in r:
            continue
        st = r.get("steady", {})
        lg = st.get("loadgen")
        if lg:   # baton-loadgen's figures in the places of ircload's
            lat = lg.get("latency_live") or {}
            st = {"latency_down": {"p50_ms": lat.get("p50_ms"), "p99_ms": lat.get("p99_ms"),
                                   "max_ms": lat.get("max_ms")},
                  "deliveries_per_s": lg.get("deliveries_per_s"),
                  "lost": lg.get("lost"),
                  "bouncer_cpu_ms_per_1000_deliveries":
                      lg.get("bouncer_cpu_ms_per_1000_deliveries")}
        rp = r.get("replace", {})
        d = rp.get("during", {})
        h[k] = {
            "rss_per_user_upstream_only_kb": round(r["rss_upstream_only"]["kb"] / args.users, 1),
            "rss_per_user_clients_idle_kb": round(r["rss_clients_idle"]["kb"] / args.users, 1),
            "rss_per_user_under_load_kb": round(r["rss_under_load"]["kb"] / args.users, 1)
            if "rss_under_load" in r else None,
            "startup_all_in_channels_s": r.get("timings", {}).get("startup_upstream_s"),
            "latency_p50_ms": st.get("latency_down", {}).get("p50_ms"),
            "latency_p99_ms": st.get("latency_down", {}).get("p99_ms"),
            "latency_max_ms": st.get("latency_down", {}).get("max_ms"),
            "steady_deliveries_per_s": st.get("deliveries_per_s"),
            "steady_lost": st.get("lost"),
            "cpu_ms_per_1000_deliveries": st.get("bouncer_cpu_ms_per_1000_deliveries"),
            "cpu_ms_per_1000_deliveries_schedstat":
                st.get("bouncer_cpu_ms_per_1000_deliveries_schedstat"),
            "replace_client_connections_dropped": d.get("client_connections_dropped"),
            "replace_upstream_connections_dropped": d.get("upstream_connections_dropped"),
            "replace_time_all_back_in_channels_s": d.get("time_until_all_users_back_in_channels_s"),
            "replace_time_all_clients_attached_s": d.get("time_until_all_clients_attached_s"),
            "replace_wall_ms": d.get("wall_ms"),
            "replace_result": (d.get("result") or {}).get("result")
            if isinstance(d.get("result"), dict) else None,
            "replace_total_ms": (d.get("result") or {}).get("total_ms")
            if isinstance(d.get("result"), dict) else None,
            "replace_freeze_ms": (d.get("result") or {}).get("freeze_ms")
            if isinstance(d.get("result"), dict) else None,
            "replace_lines_missed": rp.get("lines_missed"),
            "replace_deliveries_expected": rp.get("deliveries_expected"),
            "replace_duplicated": rp.get("duplicated"),
            "replace_latency_p99_ms": rp.get("latency_down", {}).get("p99_ms"),
            "replace_latency_max_ms": rp.get("latency_down", {}).get("max_ms"),
        }
        if lg:
            h[k].update({
                "steady_loadgen_exit": r["steady"].get("exit"),
                "steady_duplicated": lg.get("duplicated"),
                "steady_out_of_order": lg.get("out_of_order"),
                "steady_deliveries": "%s/%s" % (lg.get("deliveries_received"),
                                                lg.get("deliveries_expected")),
                "steady_mix_max_diff_pp": lg.get("event_mix_max_diff_pp"),
                "steady_disconnects": (lg.get("connections") or {}).get("disconnects"),
            })
    result["headline"] = h
    result["ok"] = all("error" not in result[k] for k in kinds)
    keys = sorted(set(x for v in h.values() for x in v), key=lambda x: list(
        h[kinds[0]].keys()).index(x) if kinds[0] in h and x in h[kinds[0]] else 99)
    sys.stderr.write("\n  %-42s %s\n" % ("", "  ".join("%-14s" % k for k in kinds)))
    for key in keys:
        sys.stderr.write("  %-42s %s\n" % (key, "  ".join(
            "%-14s" % (h.get(k, {}).get(key),) for k in kinds)))
    rb.write_result(rb.strip_private(result), "znc-compare-%du.json" % args.users)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
