#!/usr/bin/env python3
"""bench/migration_bench.py: live-upgrade benchmark of baton (docs/design.md §9).

One command: starts ngircd (tuned for thousands of connections), baton
(supervisor + worker) with N bouncer sessions on it, attaches clients to every
session, drives timestamped channel traffic from speakers directly on ngircd
through the bouncer to the clients, measures relay latency at steady state,
runs `batonctl upgrade` (K times) while traffic flows, measures latency during
each migration window, records the upgrade result (freeze, total time,
sessions, connections, fds), the worker's RSS before and after, and the
fd-passing floor (fdpass-floor) for the same fd count in the same run.
Afterwards it checks that no client connection closed and that every client
received every line of its channels exactly once and in order.

JSON result on stdout (and in --json-out, default
bench/results/migration-<N>s.json, overwritten by the next run of the same
kind), a human table on stderr. See bench/README.md.

    bench/migration_bench.py --sessions 500
    bench/migration_bench.py --sessions 5000 --upgrades 2
    bench/migration_bench.py --direct --sessions 5000   # ngircd only baseline
    bench/migration_bench.py --sessions 5000 --upgrades 2 --tls          # all on TLS
    bench/migration_bench.py --sessions 5000 --upgrades 2 --compare-tls  # plain, TLS, ratios

--tls: a throw-away CA + server cert (openssl CLI, in the work dir); ngircd
gets a TLS port (GnuTLS), baton's network uses `tls = yes` + `tls_ca`, baton
listens with `ircs` only, and every bench client connects over TLS (Python
ssl, verifying baton's certificate). Speakers stay plaintext on ngircd (they
are the network side). --compare-tls runs plaintext and TLS back to back in
one invocation (--repeat R times, alternating), each on a fresh ngircd and
baton, and writes one JSON with every run and the TLS/plain ratios.

Builds: BATON_BUILD_A (default <checkout>/build) runs first; upgrades go to
BATON_BUILD_B (default <checkout>/build-b; the same binary as A if B has none),
alternating A -> B -> A ... for --upgrades > 1.
"""

import argparse
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ircload  # noqa: E402
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
from batonlib import scrub_paths  # noqa: E402
from ircload import log, Proc, latency_stats  # noqa: E402

REPO = os.path.dirname(HERE)
NETWORK = "bench"
PASSWORD = "benchpw"


# --------------------------------------------------------------------------
# builds and processes

def build_bins(root):
    return {
        "root": root,
        "sessiond": os.path.join(root, "sessiond", "baton-sessiond"),
        "supervisor": os.path.join(root, "supervisor", "baton-supervisor"),
        "batonctl": os.path.join(root, "batonctl", "batonctl"),
        "fdpass_floor": os.path.join(root, "bench", "fdpass-floor"),
    }


def have(path):
    return os.path.isfile(path) and os.access(path, os.X_OK)


def proc_children(ppid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        rp = st.rfind(")")
        fields = st[rp + 2:].split()
        if int(fields[1]) == ppid:
            out.append((int(d), st[st.find("(") + 1:rp]))
    return out


def proc_status(pid):
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "RssAnon", "VmSize"):
                    out[k] = int(v.split()[0])  # kB
    except OSError:
        pass
    try:
        out["fds"] = len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        pass
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
        fields = st[st.rfind(")") + 2:].split()
        tick = os.sysconf("SC_CLK_TCK")
        out["cpu_ms"] = round((int(fields[11]) + int(fields[12])) * 1000.0 / tick, 1)
    except (OSError, ValueError, IndexError):
        pass
    return out


def hash_password(pw):
    r = subprocess.run(["openssl", "passwd", "-6", pw], capture_output=True,
                       text=True, check=True)
    return r.stdout.strip()


def workers_of(status):
    """The per-worker objects of `batonctl status --json`
    ({"supervisor":{..},"workers":[{pid,sessions,connections,clients,
    upstreams_connected,..}],..})."""
    if not isinstance(status, dict):
        return []
    ws = status.get("workers")
    if isinstance(ws, list):
        return [w for w in ws if isinstance(w, dict)]
    if isinstance(status.get("result"), dict):
        return workers_of(status["result"])
    return []


# The reconnect governor (connects_per_minute / connect_burst /
# max_connections_per_ip, defaults 4 / 4 / 3) would pace the bench's N
# upstream connects from 127.0.0.1 to minutes; open it to the config maxima.
GOVERNOR_OFF = ["connects_per_minute = 6000", "connect_burst = 10000",
                "max_connections_per_ip = 100000"]
# Every benchmark client logs in from 127.0.0.1, thousands at once: the
# [listen] limits on unregistered connections and TLS handshakes (per
# address and in all) are lifted here; they are not what is measured.
STRANGER_LIMITS_OFF = ["max_pending = 0", "max_pending_per_ip = 0",
                       "max_tls_handshakes = 0", "max_tls_handshakes_per_ip = 0"]


class Baton:
    def __init__(self, bins, workdir, listen_port, net_port, users, channels_of,
                 chunk_sessions, handoff_timeout, extra_sessiond="", extra_network="",
                 tls=None, extra_supervisor=""):
        """tls: None, or {"cert", "key", "ca"}: the listener is `ircs` with
        that certificate and the network uses TLS (net_port = ngircd's TLS
        port), verified against the CA."""
        self.bins = bins
        self.dir = os.path.join(workdir, "baton")
        os.makedirs(self.dir, exist_ok=True)
        self.conf = os.path.join(self.dir, "baton.ini")
        self.port = listen_port
        self.proc = None
        self.logf = None
        pwhash = hash_password(PASSWORD)
        lines = [
            "[supervisor]",
            "control = baton.sock",
            "sessiond = %s" % bins["sessiond"],
            "handoff_timeout = %d" % handoff_timeout,
        ] + [kv.strip() for kv in extra_supervisor.split(";") if kv.strip()] + [
            "",
            "[sessiond]",
            "chunk_sessions = %d" % chunk_sessions,
        ]
        if extra_sessiond:
            lines += [kv.strip() for kv in extra_sessiond.split(";") if kv.strip()]
        lines += [
            "",
            "[listen]",
        ]
        if tls:
            lines += ["ircs = 127.0.0.1:%d" % listen_port,
                      "tls_cert = %s" % tls["cert"], "tls_key = %s" % tls["key"]]
        else:
            lines += ["irc = 127.0.0.1:%d" % listen_port]
        lines += STRANGER_LIMITS_OFF
        lines += [
            "",
            "[network %s]" % NETWORK,
            "host = 127.0.0.1",
            "port = %d" % net_port,
        ] + GOVERNOR_OFF
        if tls:
            lines += ["tls = yes", "tls_ca = %s" % tls["ca"]]
        if extra_network:
            lines += [kv.strip() for kv in extra_network.split(";") if kv.strip()]
        lines += [""]
        for u in users:
            lines += ["[user %s]" % u, "password = %s" % pwhash, "",
                      "[user %s/%s]" % (u, NETWORK), "nick = %s" % u,
                      "channels = %s" % " ".join(channels_of[u]), ""]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines))

    def start(self, args_fmt):
        cmd = [self.bins["supervisor"]] + [a.format(conf=self.conf) for a in args_fmt.split()]
        if shutil.which("prlimit"):
            cmd = ["prlimit", "--nofile=20000", "--"] + cmd
        self.logf = open(os.path.join(self.dir, "supervisor.log"), "w")
        log("starting %s" % " ".join(cmd))
        self.proc = subprocess.Popen(cmd, cwd=self.dir, stdout=self.logf,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        return self

    def ctl(self, *args, timeout=120):
        cmd = [self.bins["batonctl"], "-c", self.conf] + list(args)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return r

    def status(self):
        try:
            r = self.ctl("status", "--json", timeout=10)
        except subprocess.TimeoutExpired:
            return None
        if r.returncode != 0:
            return None
        try:
            return json.loads(r.stdout)
        except ValueError:
            return None

    def supervisor_pid(self):
        # prlimit execs the supervisor: same pid.
        return self.proc.pid if self.proc else None

    def workers(self):
        """Worker pids: children of the supervisor named baton-sessiond
        (else the pids `batonctl status` reports)."""
        pids = sorted(pid for pid, comm in proc_children(self.supervisor_pid())
                      if comm.startswith("baton-session"))
        if not pids:
            pids = sorted(int(w["pid"]) for w in workers_of(self.status())
                          if isinstance(w.get("pid"), int) and w["pid"] > 0
                          and os.path.exists("/proc/%d" % w["pid"]))
        return pids

    def stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # workers are in the same session/process group; make sure they die
        if self.proc:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.logf:
            self.logf.close()


def ensure_fdpass_floor(bins, workdir):
    if have(bins["fdpass_floor"]):
        return bins["fdpass_floor"]
    out = os.path.join(workdir, "fdpass-floor")
    src = os.path.join(HERE, "fdpass_floor.c")
    r = subprocess.run(["gcc", "-O2", "-D_GNU_SOURCE", "-o", out, src],
                       capture_output=True, text=True)
    if r.returncode != 0:
        log("cannot build fdpass-floor: %s" % r.stderr[-500:])
        return None
    return out


def run_floor(exe, fds, state_bytes, sweep):
    if not exe or fds < 1:
        return None
    cmd = [exe, "-n", str(fds), "-s", str(state_bytes)]
    if sweep:
        cmd.append("--sweep")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        log("fdpass-floor failed: %s" % r.stderr.strip()[-300:])
        return None
    return json.loads(r.stdout)


# --------------------------------------------------------------------------

def wait_until(pred, timeout, what, interval=0.5, progress=None):
    deadline = time.monotonic() + timeout
    last = 0
    while True:
        ok, info = pred()
        if ok:
            return info
        if time.monotonic() > deadline:
            raise RuntimeError("timeout waiting for %s: %s" % (what, info))
        if progress and time.monotonic() - last > 5:
            log("waiting for %s: %s" % (what, info))
            last = time.monotonic()
        time.sleep(interval)


def canary_cycles(args, baton, build_b):
    """--canary P: K cycles of `canary start B --percent P`, a bake of
    --canary-bake seconds under the health gates, `canary abort` (the cohort
    moves back). Per cycle: the cohort's move (freeze, total), the rollback
    (rollback_ms: T -> S, every cohort session), and what judging cost: the
    supervisor's gate evaluation and both workers' building of their
    answers, in CPU seconds and in % of one core over the bake."""
    out = []
    for k in range(args.canary_cycles):
        t0 = time.monotonic()
        r = baton.ctl("canary", "start", build_b["sessiond"], "--percent", str(args.canary),
                      "--json", timeout=args.handoff_timeout * 10 + 60)
        try:
            start = json.loads(r.stdout)
        except ValueError:
            start = {"unparsed_stdout": r.stdout[-2000:], "stderr": r.stderr[-1000:]}
        bake_t0 = time.monotonic()
        time.sleep(args.canary_bake)
        st = baton.ctl("canary", "status", "--json", timeout=30)
        try:
            status = json.loads(st.stdout)
        except ValueError:
            status = {}
        bake_s = time.monotonic() - bake_t0
        r = baton.ctl("canary", "abort", "--json", timeout=args.handoff_timeout * 10 + 60)
        try:
            abort = json.loads(r.stdout)
        except ValueError:
            abort = {"unparsed_stdout": r.stdout[-2000:], "stderr": r.stderr[-1000:]}
        cost = (status.get("gates_cpu_s", 0) + status.get("health_build_s_cohort", 0) +
                status.get("health_build_s_control", 0))
        c = {"cycle": k + 1, "percent": args.canary,
             "start_result": start.get("result"), "cohort_sessions": start.get("cohort_sessions"),
             "move_freeze_ms": start.get("freeze_ms"), "move_total_ms": start.get("total_ms"),
             "abort_result": abort.get("result"), "rollback_ms": abort.get("rollback_ms"),
             "abort_total_ms": abort.get("total_ms"), "disconnects": abort.get("disconnects"),
             "samples": status.get("samples"), "bake_s": round(bake_s, 2),
             "gates_cpu_s": status.get("gates_cpu_s"),
             "health_build_s_cohort": status.get("health_build_s_cohort"),
             "health_build_s_control": status.get("health_build_s_control"),
             "judging_cpu_pct_of_one_core": round(100.0 * cost / bake_s, 3) if bake_s else None,
             "gates": status.get("gates"), "wall_s": round(time.monotonic() - t0, 2)}
        log("canary %d: %s %s sessions, move freeze %s ms total %s ms; %s samples, judging "
            "%.3f %% of a core; abort %s, rollback %s ms, %s disconnects"
            % (k + 1, c["start_result"], c["cohort_sessions"], c["move_freeze_ms"],
               c["move_total_ms"], c["samples"], c["judging_cpu_pct_of_one_core"] or 0,
               c["abort_result"], c["rollback_ms"], c["disconnects"]))
        out.append(c)
        time.sleep(args.gap)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=5000)
    ap.add_argument("--clients-per-session", type=int, default=1)
    ap.add_argument("--channels", type=int, default=50,
                    help="channels in total (user i joins channel i %% C)")
    ap.add_argument("--channels-per-user", type=int, default=1)
    ap.add_argument("--rate", type=float, default=50.0,
                    help="channel lines/s sent by the speakers in total "
                         "(deliveries/s = rate * sessions/channels * clients-per-session)")
    ap.add_argument("--uplink-rate", type=float, default=10.0,
                    help="lines/s sent by clients through the bouncer into their "
                         "channels, in total (received by the speakers on ngircd "
                         "and by the other members' clients)")
    ap.add_argument("--speakers", type=int, default=10)
    ap.add_argument("--steady", type=float, default=10.0,
                    help="seconds of steady-state traffic before the first upgrade")
    ap.add_argument("--gap", type=float, default=5.0,
                    help="seconds of traffic after each upgrade")
    ap.add_argument("--drain", type=float, default=3.0,
                    help="seconds to wait for the last lines after the speakers stop")
    ap.add_argument("--upgrades", type=int, default=1)
    ap.add_argument("--kills", type=int, default=0,
                    help="instead of upgrades: this many kill -9 of the serving worker, "
                         "--gap s apart, each restored from custody (issue 10: every "
                         "session served again within 1 s of the kill); per kill the "
                         "supervisor's crashes[] entry (restore_ms, connections kept / "
                         "reconnected, lines_lost) and the time until status showed a "
                         "ready worker with every session")
    ap.add_argument("--canary", type=float, default=0,
                    help="instead of upgrades: canaries of this percentage, each baked and "
                         "aborted (cohort move, rollback time, cost of the gates)")
    ap.add_argument("--canary-cycles", type=int, default=3)
    ap.add_argument("--canary-bake", type=float, default=20.0)
    ap.add_argument("--timeline-bin-ms", type=float, default=50.0,
                    help="bin width of the per-upgrade latency timeline")
    ap.add_argument("--window-margin-ms", type=float, default=100.0,
                    help="migration latency window = lines sent from this long "
                         "before batonctl upgrade starts until this long after it "
                         "returns")
    ap.add_argument("--chunk-sessions", type=int, default=256)
    ap.add_argument("--handoff-timeout", type=int, default=10)
    ap.add_argument("--sessiond-extra", default="",
                    help="extra [sessiond] keys, 'k = v; k2 = v2'")
    ap.add_argument("--supervisor-extra", default="",
                    help="extra [supervisor] keys, 'k = v; k2 = v2' (e.g. 'custody = no')")
    ap.add_argument("--network-extra", default="",
                    help="extra [network bench] keys, 'k = v; k2 = v2'")
    ap.add_argument("--client-procs", type=int, default=0,
                    help="client worker processes (default: 1 per 3000 clients, min 1)")
    ap.add_argument("--connect-window", type=int, default=None,
                    help="clients logging in at once (default 200; 10 with "
                         "--direct: ngircd's listen backlog is small)")
    ap.add_argument("--ready-timeout", type=float, default=0,
                    help="seconds to wait for sessions/clients (default scales with N)")
    ap.add_argument("--state-bytes", type=int, default=2048,
                    help="state bytes per fd for fdpass-floor")
    ap.add_argument("--no-floor-sweep", dest="floor_sweep", action="store_false",
                    help="skip fdpass-floor --sweep (batches 1,16,64,253)")
    ap.add_argument("--supervisor-args", default="-c {conf}")
    ap.add_argument("--direct", action="store_true",
                    help="no baton: clients log in to ngircd directly "
                         "(baseline latency; no upgrade)")
    ap.add_argument("--json-out", default=None,
                    help="write the JSON here too (default bench/results/"
                         "migration-[direct-]<N>s[-tls].json, canary-<N>.json "
                         "with --canary, migration-tls-compare-<N>s.json with "
                         "--compare-tls; overwritten; '-' for none)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--tls", action="store_true",
                    help="every baton connection on TLS: upstreams to ngircd's TLS "
                         "port, clients on an ircs listener (speakers stay plaintext)")
    ap.add_argument("--compare-tls", action="store_true",
                    help="run plaintext and TLS back to back (--repeat times, "
                         "alternating) and report both with TLS/plain ratios")
    ap.add_argument("--repeat", type=int, default=1,
                    help="with --compare-tls: plain+TLS pairs to run")
    ap.add_argument("--perf-dir", default=None,
                    help="record `perf record -a -g` (system-wide, 999 Hz) around "
                         "every upgrade into DIR/<transport>-upgrade<N>.data "
                         "(started 1 s before batonctl, stopped when it returns)")
    args = ap.parse_args()

    nofile = ircload.raise_nofile()
    nclients = args.sessions * args.clients_per_session
    if nclients + 200 > nofile:
        log("warning: RLIMIT_NOFILE %d is low for %d clients" % (nofile, nclients))
    build_a = build_bins(os.environ.get("BATON_BUILD_A", os.path.join(REPO, "build")))
    build_b = build_bins(os.environ.get("BATON_BUILD_B", os.path.join(REPO, "build-b")))
    if not args.direct:
        for k in ("sessiond", "supervisor", "batonctl"):
            if not have(build_a[k]):
                sys.exit("missing %s (set BATON_BUILD_A)" % build_a[k])
        if not have(build_b["sessiond"]):
            log("no %s: upgrading to the same binary" % build_b["sessiond"])
            build_b = build_a
    ready_timeout = args.ready_timeout or max(60.0, args.sessions * 0.05)
    if args.connect_window is None:
        args.connect_window = 10 if args.direct else 200
    if args.direct and (args.tls or args.compare_tls):
        sys.exit("--tls/--compare-tls need baton (not --direct)")

    if args.compare_tls:
        return compare_tls(args, build_a, build_b, ready_timeout)
    result = run_once(args, build_a, build_b, ready_timeout, args.tls)
    text = json.dumps(result, indent=1, sort_keys=False)
    print(text)
    out = args.json_out
    if out is None:
        os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
        if args.canary and not args.direct:
            name = "canary-%d.json" % args.sessions
        else:
            name = "migration-%s%ds%s.json" % (
                "direct-" if args.direct else "", args.sessions,
                "-tls" if args.tls else "")
        out = os.path.join(HERE, "results", name)
    if out != "-":
        with open(out, "w") as f:
            f.write(scrub_paths(text) + "\n")
        log("wrote %s" % out)
    return 1 if result.get("error") or not result.get("ok") else 0


def run_once(args, build_a, build_b, ready_timeout, tls):
    """One full run (plaintext or TLS) -> result dict (summarized)."""
    transport = "tls" if tls else "plain"
    workdir = tempfile.mkdtemp(prefix="baton-bench-")
    log("work dir %s" % workdir)
    ng = baton = spk = None
    workers = []
    result = {"bench": "migration", "version": 1,
              "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "transport": transport,
              "params": {k: v for k, v in vars(args).items()
                         if k not in ("json_out", "keep")},
              "builds": {"a": build_a["root"], "b": build_b["root"]}}
    pki = None
    try:
        if tls:
            p_ng, p_bt, p_ngs = ircload.pick_ports(3)
            t0 = time.monotonic()
            pki = ircload.make_pki(os.path.join(workdir, "pki"))
            log("PKI (CA + localhost/127.0.0.1 server cert) in %.1fs" % (time.monotonic() - t0))
            ng = ircload.Ngircd(p_ng, workdir, tls=dict(pki, port=p_ngs)).start()
            log("ngircd on %d, TLS on %d" % (p_ng, p_ngs))
            result["tls"] = {"ngircd_tls_port": p_ngs, "baton_listener": "ircs",
                             "server_cert": "RSA 2048, CA-signed, SAN localhost/127.0.0.1",
                             "clients": "Python ssl %s, verifying" % ssl.OPENSSL_VERSION,
                             "speakers": "plaintext on ngircd"}
        else:
            p_ng, p_bt = ircload.pick_ports(2)
            ng = ircload.Ngircd(p_ng, workdir).start()
            log("ngircd on %d" % p_ng)

        channels = ["#bench%d" % i for i in range(args.channels)]
        users = ["u%d" % i for i in range(args.sessions)]
        channels_of = {u: [channels[(i + j * 7) % len(channels)]
                           for j in range(args.channels_per_user)]
                       for i, u in enumerate(users)}

        if not args.direct:
            baton = Baton(build_a, workdir, p_bt, p_ngs if tls else p_ng, users, channels_of,
                          args.chunk_sessions, args.handoff_timeout,
                          args.sessiond_extra, args.network_extra,
                          tls=pki, extra_supervisor=args.supervisor_extra).start(args.supervisor_args)
            ircload.wait_port(p_bt, timeout=30, proc=baton.proc)
            log("baton listening on %d; waiting for %d sessions upstream"
                % (p_bt, args.sessions))
            t0 = time.monotonic()

            def sessions_up():
                st = baton.status()
                if baton.proc.poll() is not None:
                    raise RuntimeError("supervisor exited (%s)" % baton.proc.returncode)
                if st is None:
                    return False, "no status"
                ws = workers_of(st)
                ns = sum(w.get("sessions", 0) for w in ws)
                upc = sum(w.get("upstreams_connected", 0) for w in ws)
                have_up = any("upstreams_connected" in w for w in ws)
                ok = ns >= args.sessions and (not have_up or upc >= args.sessions)
                return ok, {"sessions": ns, "upstreams_connected": upc if have_up else None,
                            "workers": len(ws)}
            info = wait_until(sessions_up, ready_timeout, "sessions upstream",
                              interval=1.0, progress=True)
            result["startup_upstream_s"] = round(time.monotonic() - t0, 2)
            log("sessions up: %s after %.1fs" % (info, time.monotonic() - t0))

        # clients
        specs = []
        for i, u in enumerate(users):
            for k in range(args.clients_per_session):
                login = None if args.direct else "%s/%s:%s" % (u, NETWORK, PASSWORD)
                nick = u if (args.direct or k == 0) else "%s_%d" % (u, k)
                # the first client of each session sends the uplink lines
                specs.append((len(specs), nick, login, channels_of[u], args.direct,
                              k == 0))
        nproc = args.client_procs or max(1, (len(specs) + 2999) // 3000)
        port = p_ng if args.direct else p_bt
        t0 = time.monotonic()
        for w in range(nproc):
            if tls:
                workers.append(Proc(ircload.client_worker, port, specs[w::nproc],
                                    max(1, args.connect_window // nproc), 2,
                                    {"ca": pki["ca"], "server_hostname": "localhost"}))
            else:
                workers.append(Proc(ircload.client_worker, port, specs[w::nproc],
                                    max(1, args.connect_window // nproc)))

        def clients_ready():
            sts = [w.call("status") for w in workers]
            ready = sum(s["ready"] for s in sts)
            closed = sum(s["closed"] for s in sts)
            info = {"ready": ready, "registered": sum(s["registered"] for s in sts),
                    "connected": sum(s["connected"] for s in sts), "closed": closed,
                    "of": len(specs)}
            if closed:
                info["close_reasons"] = sorted(set(r for s in sts for r in s["close_reasons"]))
            if closed > len(specs) // 100 + 5:
                raise RuntimeError("clients closed during login: %s" % info)
            return ready >= len(specs) - closed and ready > 0, info
        info = wait_until(clients_ready, ready_timeout, "clients", progress=True)
        result["startup_clients_s"] = round(time.monotonic() - t0, 2)
        log("clients ready: %s after %.1fs" % (info, time.monotonic() - t0))
        if info["closed"]:
            log("WARNING: %d clients closed during login" % info["closed"])

        spk = Proc(ircload.speaker_worker, p_ng, channels, args.speakers)
        wait_until(lambda: ((lambda s: (s["ready"] == s["total"], s))(spk.call("status"))),
                   30, "speakers")
        time.sleep(0.5)  # JOINs of the speakers reach everyone
        for w in workers + [spk]:
            w.call("reset")

        if baton:
            st = baton.status()
            result["status_before"] = st
            wpids = baton.workers()
            result["worker_before"] = {"pids": wpids,
                                       "proc": {str(p): proc_status(p) for p in wpids}}

        # ---- traffic ----
        t_start = spk.call("traffic", args.rate)["t0"]
        for w in workers:
            w.call("traffic", args.uplink_rate / len(workers))
        log("traffic on: %.0f lines/s from the network, %.0f lines/s from clients, "
            "into %d channels" % (args.rate, args.uplink_rate, len(channels)))
        time.sleep(args.steady)
        upgrades = []
        if baton and args.canary:
            result["canaries"] = canary_cycles(args, baton, build_b)
        kills = []
        for k in range(args.kills if baton and not args.canary else 0):
            st0 = baton.status() or {}
            n0 = st0.get("crash_count") or 0
            ws0 = workers_of(st0)
            victim = ws0[0]["pid"] if ws0 else baton.workers()[0]
            log("kill %d: kill -9 of worker %d" % (k + 1, victim))
            t_k0 = time.monotonic_ns()
            os.kill(victim, signal.SIGKILL)
            st, served = None, False
            while time.monotonic_ns() - t_k0 < 60e9:
                st = baton.status() or {}
                ws = workers_of(st)
                if ((st.get("crash_count") or 0) > n0 and ws and ws[0].get("ready")
                        and ws[0].get("pid") != victim
                        and ws[0].get("sessions") == args.sessions):
                    served = True
                    break
                time.sleep(0.01)
            t_k1 = time.monotonic_ns()
            crash = ((st or {}).get("crashes") or [None])[-1]
            kills.append({"n": k + 1, "pid": victim, "served": served,
                          "status_served_ms": round((t_k1 - t_k0) / 1e6, 1),
                          "t0_ns": t_k0, "crash": crash})
            log("kill %d: %s, status showed every session served after %.0f ms; "
                "crash entry %s" % (k + 1, "restored" if served else "NOT restored",
                                     (t_k1 - t_k0) / 1e6, json.dumps(crash)[:400]))
            time.sleep(args.gap)
        if kills:
            result["kills"] = kills
        for u in range(args.upgrades if baton and not args.canary and not args.kills else 0):
            target = build_b if u % 2 == 0 else build_a
            before = baton.workers()
            proc_before = {str(p): proc_status(p) for p in before}
            log("upgrade %d -> %s" % (u + 1, target["sessiond"]))
            perf = None
            if args.perf_dir and shutil.which("perf"):
                os.makedirs(args.perf_dir, exist_ok=True)
                pdata = os.path.join(args.perf_dir, "%s-upgrade%d-%s.data" % (
                    transport, u + 1, time.strftime("%H%M%S", time.gmtime())))
                perf = subprocess.Popen(["perf", "record", "-a", "-g", "-F", "999",
                                         "-o", pdata], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
                time.sleep(1.0)
            t_u0 = time.monotonic_ns()
            try:
                r = baton.ctl("upgrade", target["sessiond"], "--json",
                              timeout=args.handoff_timeout * 10 + 60)
                rc, out, err = r.returncode, r.stdout, r.stderr
            except subprocess.TimeoutExpired as e:
                rc, out, err = None, e.stdout or "", "timeout"
            t_u1 = time.monotonic_ns()
            if perf:
                perf.send_signal(signal.SIGINT)
                try:
                    perf.wait(60)
                except subprocess.TimeoutExpired:
                    perf.kill()
                    perf.wait()
                result.setdefault("perf_data", []).append(pdata)
            try:
                uj = json.loads(out)
            except (ValueError, TypeError):
                uj = {"unparsed_stdout": (out or "")[-2000:]}
            # wait for the old worker to leave (total_ms ends at its exit)
            committed = isinstance(uj, dict) and uj.get("result") == "committed"
            deadline = time.monotonic() + (15 if committed else 0)
            while time.monotonic() < deadline and any(p in baton.workers() for p in before):
                time.sleep(0.05)
            after = baton.workers()
            # right after batonctl returned: the new worker's CPU so far is
            # its start-up plus adopting everything
            up_proc_after = {str(p): proc_status(p) for p in after}
            up = {"n": u + 1, "to": target["sessiond"], "rc": rc,
                  "stderr": (err or "")[-1000:], "result": uj,
                  "wall_ms": round((t_u1 - t_u0) / 1e6, 3),
                  "t0_ns": t_u0, "t1_ns": t_u1,
                  "workers_before": before, "workers_after": after,
                  "proc_before": proc_before, "proc_after": up_proc_after}
            upgrades.append(up)
            log("upgrade %d: rc=%s %s" % (u + 1, rc, json.dumps(uj)[:400]))
            time.sleep(args.gap)
        if not baton:
            time.sleep(args.gap)
        stop = spk.call("traffic", 0)
        t_stop = stop["t_ns"]
        ustops = [w.call("traffic", 0) for w in workers]
        stop["uplink_sent"] = {}
        for us in ustops:
            stop["uplink_sent"].update(us["sent"])
        stop["uplink_sched_lag_max_ms"] = max([us["sched_lag_max_ms"] for us in ustops] or [0])
        log("traffic off: %d lines from the network, %d from clients" % (
            stop["lines"], sum(stop["uplink_sent"].values())))
        time.sleep(args.drain)

        if baton:
            result["status_after"] = baton.status()
            wpids = baton.workers()
            result["worker_after"] = {"pids": wpids,
                                      "proc": {str(p): proc_status(p) for p in wpids}}

        reports = [w.call("report", timeout=120) for w in workers]
        if tls:
            seen = {}
            for r in reports:
                for k, v in (r.get("tls") or {}).items():
                    seen[k] = seen.get(k, 0) + v
            result["tls"]["client_connections"] = seen
        reports.append(dict(spk.call("report", timeout=60), speakers=True))
        analyse(result, args, specs, channels_of, reports, stop, t_start, t_stop,
                upgrades)

        # fd-passing floor for the fd count actually migrated
        fds = None
        for up in upgrades:
            v = up["result"].get("fds") if isinstance(up["result"], dict) else None
            if isinstance(v, int) and v > 0:
                fds = v
        if fds is None and not args.direct:
            fds = 2 * args.sessions + args.sessions * (args.clients_per_session - 1)
            result["floor_fds_guessed"] = True
        if fds:
            exe = ensure_fdpass_floor(build_a, workdir)
            log("fdpass-floor with %d fds" % fds)
            result["fdpass_floor"] = run_floor(exe, fds, args.state_bytes, False)
            if args.floor_sweep:
                result["fdpass_floor_sweep"] = run_floor(exe, fds, args.state_bytes, True)
    except Exception as e:  # report what we have
        result["error"] = "%s: %s" % (type(e).__name__, e)
        log("ERROR: %s" % result["error"])
    finally:
        for w in workers:
            w.stop()
        if spk:
            spk.stop()
        if baton:
            baton.stop()
        if ng:
            ng.stop()
        if args.keep or "error" in result:
            log("logs kept in %s" % workdir)
            result["workdir"] = workdir
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    summarize(result)
    return result


def _median(vals):
    vals = sorted(v for v in vals if isinstance(v, (int, float)))
    return round(ircload.percentile(vals, 50), 3) if vals else None


# (label, how to get one number per run from result["headline"])
COMPARE_METRICS = [
    ("freeze_ms_max", lambda h: h.get("freeze_ms_max")),
    ("freeze_ms_median", lambda h: _median(h.get("freeze_ms") or [])),
    ("total_ms_max", lambda h: h.get("total_ms_max")),
    ("total_ms_median", lambda h: _median(h.get("total_ms") or [])),
    ("upgrade_wall_ms_median", lambda h: _median(h.get("upgrade_wall_ms") or [])),
    ("latency_steady_p50_ms", lambda h: h.get("latency_steady_p50_ms")),
    ("latency_steady_p99_ms", lambda h: h.get("latency_steady_p99_ms")),
    ("latency_migration_p50_ms", lambda h: h.get("latency_migration_p50_ms")),
    ("latency_migration_p99_ms", lambda h: h.get("latency_migration_p99_ms")),
    ("latency_migration_max_ms", lambda h: h.get("latency_migration_max_ms")),
    ("latency_after_p50_ms", lambda h: h.get("latency_after_p50_ms")),
    ("latency_after_p99_ms", lambda h: h.get("latency_after_p99_ms")),
    ("latency_steady_up_p99_ms", lambda h: h.get("latency_steady_up_p99_ms")),
    ("latency_migration_up_p99_ms", lambda h: h.get("latency_migration_up_p99_ms")),
    ("latency_steady_c2c_p99_ms", lambda h: h.get("latency_steady_c2c_p99_ms")),
    ("latency_migration_c2c_p99_ms", lambda h: h.get("latency_migration_c2c_p99_ms")),
    ("rss_per_session_before_kb", lambda h: h.get("rss_per_session_before_kb")),
    ("rss_per_session_after_kb", lambda h: h.get("rss_per_session_after_kb")),
]


def compare_tls(args, build_a, build_b, ready_timeout):
    """Plain and TLS back to back (alternating, --repeat pairs; the first
    pair plain first, the next TLS first, ...), one JSON with every run,
    per-transport medians and TLS/plain ratios of the medians."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    runs = []
    for r in range(max(1, args.repeat)):
        order = (False, True) if r % 2 == 0 else (True, False)
        for tls in order:
            log("=== compare run %d/%d: %s ===" % (r + 1, args.repeat,
                                                   "TLS" if tls else "plaintext"))
            res = run_once(args, build_a, build_b, ready_timeout, tls)
            res["pair"] = r + 1
            runs.append(res)
    per = {}
    for t in ("plain", "tls"):
        hs = [x["headline"] for x in runs if x["transport"] == t]
        per[t] = {"runs": len(hs)}
        for name, get in COMPARE_METRICS:
            vals = [get(h) for h in hs]
            per[t][name] = {"median": _median(vals), "values": vals}
        per[t]["freeze_ms_all"] = [v for h in hs for v in (h.get("freeze_ms") or [])]
        per[t]["total_ms_all"] = [v for h in hs for v in (h.get("total_ms") or [])]
        per[t]["ok"] = all(x.get("ok") for x in runs if x["transport"] == t)
        per[t]["correctness"] = [x.get("correctness") for x in runs if x["transport"] == t]
    ratios = {}
    for name, _ in COMPARE_METRICS:
        a, b = per["plain"][name]["median"], per["tls"][name]["median"]
        ratios[name] = round(b / a, 3) if a and b is not None else None
    # freeze over every upgrade of every run (median of all upgrades)
    fa, fb = _median(per["plain"]["freeze_ms_all"]), _median(per["tls"]["freeze_ms_all"])
    ratios["freeze_ms_all_upgrades_median"] = round(fb / fa, 3) if fa and fb is not None else None
    target = 1.25
    out = {"bench": "migration-tls-compare", "version": 1, "utc": stamp,
           "params": {k: v for k, v in vars(args).items() if k not in ("json_out", "keep")},
           "builds": {"a": build_a["root"], "b": build_b["root"]},
           "summary": per, "ratios_tls_over_plain": ratios,
           "target": {"freeze_ratio_max": target,
                      "freeze_max_ratio": ratios.get("freeze_ms_max"),
                      "met": (ratios.get("freeze_ms_max") is not None
                              and ratios["freeze_ms_max"] <= target)},
           "ok": all(x.get("ok") for x in runs),
           "runs": runs}
    rows = [("", "plain", "TLS", "TLS/plain")]
    for name, _ in COMPARE_METRICS:
        rows.append((name, per["plain"][name]["median"], per["tls"][name]["median"],
                     ratios[name]))
    rows.append(("freeze_ms (every upgrade)", per["plain"]["freeze_ms_all"],
                 per["tls"]["freeze_ms_all"], ratios["freeze_ms_all_upgrades_median"]))
    rows.append(("ok (no close/loss/dup, all committed)", per["plain"]["ok"],
                 per["tls"]["ok"], ""))
    w = max(len(str(r[0])) for r in rows)
    sys.stderr.write("\nTLS vs plaintext, %d sessions, %d pair(s) (medians over runs):\n"
                     % (args.sessions, args.repeat))
    for r in rows:
        sys.stderr.write("  %-*s  %-14s %-14s %s\n" % (w, r[0], r[1], r[2], r[3]))
    sys.stderr.write("  target: TLS freeze max <= %.2f x plain: %s\n\n"
                     % (target, out["target"]["met"]))
    text = json.dumps(out, indent=1, sort_keys=False)
    print(text)
    path = args.json_out
    if path is None:
        os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
        path = os.path.join(HERE, "results", "migration-tls-compare-%ds.json"
                            % args.sessions)
    if path != "-":
        with open(path, "w") as f:
            f.write(scrub_paths(text) + "\n")
        log("wrote %s" % path)
    return 0 if out["ok"] else 1


KINDS = {0: "down", 1: "c2c", 2: "up"}
KIND_DOC = {"down": "network speaker -> ngircd -> baton -> client",
            "up": "client -> baton -> ngircd -> speaker",
            "c2c": "client -> baton -> ngircd -> baton -> other client"}


def analyse(result, args, specs, channels_of, reports, stop, t_start, t_stop, upgrades):
    # every line sent, by "chan sender" -> count (seq ran 1..count)
    sent = dict(stop["sent"])
    sent.update(stop["uplink_sent"])
    by_chan = {}
    for key, n in sent.items():
        ch, _, nick = key.partition(" ")
        by_chan.setdefault(ch, []).append((nick, n))
    samples = [s for r in reports for s in r["samples"]]
    lost = dup = disorder = unexpected = 0
    member_events = [0, 0]  # JOIN/PART/QUIT/NICK seen by clients, by speakers
    bad = closed = 0
    close_reasons = set()
    expected_total = 0
    for r in reports:
        for (idx, nick, lines_in, dups, dis, seqs, was_closed, reason, _,
             events) in r["clients"]:
            member_events[1 if r.get("speakers") else 0] += events
            if r.get("speakers"):
                chans = [ch.lower() for ch in args_channels_of_speaker(args, idx)]
                own = nick
            else:
                chans = [ch.lower() for ch in specs[idx][3]]
                own = nick if specs[idx][5] else None  # a sender never gets its own
            exp = {}
            for ch in chans:
                for snick, n in by_chan.get(ch, []):
                    if snick != own:
                        exp["%s %s" % (ch, snick)] = n
            expected_total += sum(exp.values())
            miss = sum(max(0, n - seqs.get(k, 0)) for k, n in exp.items())
            unexp = sum(v for k, v in seqs.items() if k not in exp)
            lost += miss + dis
            dup += dups
            disorder += dis
            unexpected += unexp
            if was_closed:
                closed += 1
                close_reasons.add(str(reason))
            if miss or dups or dis or unexp or was_closed:
                bad += 1
    result["traffic"] = {
        "lines_sent_network": stop["lines"],
        "lines_sent_clients": sum(stop["uplink_sent"].values()),
        "rate": args.rate,
        "uplink_rate": args.uplink_rate,
        "deliveries_expected": expected_total,
        "deliveries_received": len(samples),
        "duration_s": round((t_stop - t_start) / 1e9, 3),
        "speaker_sched_lag_max_ms": round(stop["sched_lag_max_ms"], 3),
        "uplink_sched_lag_max_ms": round(stop["uplink_sched_lag_max_ms"], 3),
        "speakers_closed": stop["closed"],
        "kinds": KIND_DOC,
    }
    result["correctness"] = {
        "clients": sum(len(r["clients"]) for r in reports if not r.get("speakers")),
        "connections_checked": sum(len(r["clients"]) for r in reports),
        "clients_closed": closed,
        "close_reasons": sorted(close_reasons)[:10],
        "lines_lost": lost,
        "lines_duplicated": dup,
        "gaps_or_reorders": disorder,
        "lines_unexpected": unexpected,
        "connections_with_problems": bad,
        # the IRC server must see no QUIT/JOIN of bouncer users (DESIGN §9)
        "membership_changes_seen_by_network": member_events[1],
        "membership_changes_seen_by_clients": member_events[0],
    }
    # latency windows by send time, per kind
    first_up = upgrades[0]["t0_ns"] if upgrades else t_stop
    warm = t_start + int(1e9)  # skip the first second
    margin = int(args.window_margin_ms * 1e6)
    by_kind = {name: [s for s in samples if s[2] == k] for k, name in KINDS.items()}

    def stats(name, pred):
        return latency_stats([s for s in by_kind[name] if pred(s[0])])

    for name in ("down", "up", "c2c"):
        sfx = "" if name == "down" else "_" + name
        result["latency_steady" + sfx] = stats(name, lambda t: warm <= t < first_up)
        if upgrades:
            result["latency_migration" + sfx] = stats(
                name, lambda t: any(up["t0_ns"] - margin <= t <= up["t1_ns"] + margin
                                    for up in upgrades))
            result["latency_migration" + sfx]["margin_ms"] = args.window_margin_ms
            last = upgrades[-1]["t1_ns"] + int(1e9)
            result["latency_after" + sfx] = stats(name, lambda t: t > last)
    for up in upgrades:
        lo, hi = up["t0_ns"] - margin, up["t1_ns"] + margin
        up["latency"] = {}
        up["latency_strict"] = {}
        for name in ("down", "up", "c2c"):
            st = latency_stats([s for s in by_kind[name] if lo <= s[0] <= hi])
            st["window_ms"] = round((hi - lo) / 1e6, 3)
            up["latency"][name] = st
            # the same, only lines sent while batonctl upgrade ran
            up["latency_strict"][name] = latency_stats(
                [s for s in by_kind[name] if up["t0_ns"] <= s[0] <= up["t1_ns"]])
        up["timeline"] = {name: timeline(by_kind[name], up["t0_ns"], up["t1_ns"],
                                         args.timeline_bin_ms)
                          for name in ("down", "up")}
    for up in upgrades:
        del up["t0_ns"], up["t1_ns"]
    result["upgrades"] = upgrades


def args_channels_of_speaker(args, k):
    channels = ["#bench%d" % i for i in range(args.channels)]
    return channels[k::args.speakers]


def timeline(samples, t0, t1, bin_ms, before_ms=500, after_ms=500):
    """Latency by send time around one upgrade: bins of bin_ms from
    before_ms before batonctl started to after_ms after it returned;
    t_ms = bin start relative to the start of batonctl upgrade."""
    lo = t0 - int(before_ms * 1e6)
    hi = t1 + int(after_ms * 1e6)
    width = int(bin_ms * 1e6)
    bins = {}
    for s, r, _ in samples:
        if lo <= s <= hi:
            bins.setdefault((s - lo) // width, []).append((r - s) / 1e6)
    out = []
    for b in sorted(bins):
        lat = sorted(bins[b])
        out.append({"t_ms": round((lo + b * width - t0) / 1e6, 1), "n": len(lat),
                    "p50_ms": round(ircload.percentile(lat, 50), 2),
                    "max_ms": round(lat[-1], 2)})
    return out


def summarize(result):
    """Flat headline numbers + human table on stderr."""
    h = {}
    ups = result.get("upgrades") or []
    res = [u["result"] for u in ups if isinstance(u.get("result"), dict)]
    for key in ("sessions", "connections", "fds"):
        vals = [r.get(key) for r in res if isinstance(r.get(key), (int, float))]
        if vals:
            h[key] = vals[-1]
    for key in ("freeze_ms", "total_ms"):
        vals = [r.get(key) for r in res if isinstance(r.get(key), (int, float))]
        if vals:
            h[key + "_max"] = max(vals)
            h[key] = vals
    h["upgrade_results"] = [r.get("result") for r in res]
    h["upgrade_wall_ms"] = [u["wall_ms"] for u in ups]
    fl = result.get("fdpass_floor")
    if fl:
        h["floor_ms"] = fl["total_ms"]
        h["floor_fds"] = fl["fds"]
        if "total_ms_max" in h and fl["total_ms"]:
            h["total_over_floor"] = round(h["total_ms_max"] / fl["total_ms"], 1)
    for k in ("latency_steady", "latency_migration", "latency_after",
              "latency_steady_up", "latency_migration_up", "latency_after_up",
              "latency_steady_c2c", "latency_migration_c2c", "latency_after_c2c"):
        if k in result:
            h[k + "_p50_ms"] = result[k]["p50_ms"]
            h[k + "_p99_ms"] = result[k]["p99_ms"]
            h[k + "_max_ms"] = result[k]["max_ms"]
    rb = result.get("worker_before", {}).get("proc", {})
    ra = result.get("worker_after", {}).get("proc", {})
    nsess = result["params"]["sessions"]
    if rb:
        kb = sum(v.get("VmRSS", 0) for v in rb.values())
        h["rss_before_kb"] = kb
        h["rss_per_session_before_kb"] = round(kb / nsess, 2)
    if ra:
        kb = sum(v.get("VmRSS", 0) for v in ra.values())
        h["rss_after_kb"] = kb
        h["rss_per_session_after_kb"] = round(kb / nsess, 2)
    c = result.get("correctness", {})
    ok = ("error" not in result and c.get("clients_closed") == 0
          and c.get("lines_lost") == 0 and c.get("lines_duplicated") == 0
          and c.get("gaps_or_reorders") == 0 and c.get("lines_unexpected") == 0
          and c.get("membership_changes_seen_by_network") == 0
          and result.get("traffic", {}).get("speakers_closed") == 0
          and all(r.get("result") == "committed" for r in res)
          and len(res) == len(ups))
    kl = result.get("kills") or []
    if kl:
        cr = [x.get("crash") or {} for x in kl]
        h["kills"] = len(kl)
        h["kill_restore_ms"] = [c.get("restore_ms") for c in cr]
        h["kill_status_served_ms"] = [x["status_served_ms"] for x in kl]
        h["kill_sessions_restored"] = [c.get("sessions_restored") for c in cr]
        h["kill_connections_kept"] = [c.get("connections_kept") for c in cr]
        h["kill_connections_reconnected"] = [c.get("connections_reconnected") for c in cr]
        h["kill_lines_lost"] = [c.get("lines_lost") for c in cr]
        # a kill may lose lines (counted by the supervisor, goal 0): the
        # verdict is on closes, duplicates and every kill restored
        ok = ("error" not in result and c.get("clients_closed") == 0
              and c.get("lines_duplicated") == 0
              and c.get("membership_changes_seen_by_network") == 0
              and all(x["served"] for x in kl))
    result["ok"] = ok
    result["headline"] = h

    h["transport"] = result.get("transport", "plain")
    rows = [("transport", h["transport"]),
            ("sessions", nsess),
            ("clients", c.get("clients")),
            ("migrated sessions/connections/fds", "%s / %s / %s" % (
                h.get("sessions"), h.get("connections"), h.get("fds"))),
            ("upgrade results", h.get("upgrade_results")),
            ("kills: restore_ms (supervisor)", h.get("kill_restore_ms")),
            ("kills: every session served per status, ms", h.get("kill_status_served_ms")),
            ("kills: sessions restored / connections kept / reconnected / lines lost",
             "%s / %s / %s / %s" % (h.get("kill_sessions_restored"), h.get("kill_connections_kept"),
                                    h.get("kill_connections_reconnected"), h.get("kill_lines_lost"))
             if h.get("kills") else None),
            ("freeze_ms (max over sessions)", h.get("freeze_ms")),
            ("total_ms (spawn..old exit)", h.get("total_ms")),
            ("batonctl wall ms", h.get("upgrade_wall_ms")),
            ("fd-pass floor ms (same fds)", h.get("floor_ms")),
            ("total / floor", h.get("total_over_floor")),
            ("latency down steady p50/p99/max ms", "%s / %s / %s" % (
                h.get("latency_steady_p50_ms"), h.get("latency_steady_p99_ms"),
                h.get("latency_steady_max_ms"))),
            ("latency down migration p50/p99/max ms", "%s / %s / %s" % (
                h.get("latency_migration_p50_ms"), h.get("latency_migration_p99_ms"),
                h.get("latency_migration_max_ms"))),
            ("latency down after p50/p99/max ms", "%s / %s / %s" % (
                h.get("latency_after_p50_ms"), h.get("latency_after_p99_ms"),
                h.get("latency_after_max_ms"))),
            ("latency up steady p50/p99/max ms", "%s / %s / %s" % (
                h.get("latency_steady_up_p50_ms"), h.get("latency_steady_up_p99_ms"),
                h.get("latency_steady_up_max_ms"))),
            ("latency up migration p50/p99/max ms", "%s / %s / %s" % (
                h.get("latency_migration_up_p50_ms"), h.get("latency_migration_up_p99_ms"),
                h.get("latency_migration_up_max_ms"))),
            ("latency up after p50/p99/max ms", "%s / %s / %s" % (
                h.get("latency_after_up_p50_ms"), h.get("latency_after_up_p99_ms"),
                h.get("latency_after_up_max_ms"))),
            ("latency c2c steady p50/p99/max ms", "%s / %s / %s" % (
                h.get("latency_steady_c2c_p50_ms"), h.get("latency_steady_c2c_p99_ms"),
                h.get("latency_steady_c2c_max_ms"))),
            ("latency c2c migration p50/p99/max ms", "%s / %s / %s" % (
                h.get("latency_migration_c2c_p50_ms"), h.get("latency_migration_c2c_p99_ms"),
                h.get("latency_migration_c2c_max_ms"))),
            ("latency c2c after p50/p99/max ms", "%s / %s / %s" % (
                h.get("latency_after_c2c_p50_ms"), h.get("latency_after_c2c_p99_ms"),
                h.get("latency_after_c2c_max_ms"))),
            ("worker RSS before/after kB", "%s / %s" % (h.get("rss_before_kb"),
                                                        h.get("rss_after_kb"))),
            ("RSS per session before/after kB", "%s / %s" % (
                h.get("rss_per_session_before_kb"), h.get("rss_per_session_after_kb"))),
            ("lines sent network / clients", "%s / %s" % (
                result.get("traffic", {}).get("lines_sent_network"),
                result.get("traffic", {}).get("lines_sent_clients"))),
            ("deliveries expected / received", "%s / %s" % (
                result.get("traffic", {}).get("deliveries_expected"),
                result.get("traffic", {}).get("deliveries_received"))),
            ("closed / lost / dup / gaps / unexpected", "%s / %s / %s / %s / %s" % (
                c.get("clients_closed"), c.get("lines_lost"), c.get("lines_duplicated"),
                c.get("gaps_or_reorders"), c.get("lines_unexpected"))),
            ("JOIN/PART/QUIT seen by network / clients", "%s / %s" % (
                c.get("membership_changes_seen_by_network"),
                c.get("membership_changes_seen_by_clients"))),
            ("OK", ok)]
    if "error" in result:
        rows.append(("ERROR", result["error"]))
    w = max(len(r[0]) for r in rows)
    sys.stderr.write("\n")
    for k, v in rows:
        sys.stderr.write("  %-*s  %s\n" % (w, k, v))
    sys.stderr.write("\n")


if __name__ == "__main__":
    sys.exit(main())
