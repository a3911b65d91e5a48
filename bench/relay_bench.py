#!/usr/bin/env python3
"""bench/relay_bench.py: steady-state relay throughput, latency and CPU cost
of baton (issue 4, Benchmarks item 1).

One command: starts ngircd, baton (supervisor + one worker) with N bouncer
sessions, one client attached to every session, and speakers directly on
ngircd. Then it offers channel traffic in steps of increasing rate
(network user -> ngircd -> channel -> baton session -> attached client) and,
per step, measures

- throughput: lines delivered to clients per second vs. offered,
- latency p50 / p99 / max (send timestamp in the line -> receive at the client),
- CPU per 1,000 relayed lines: utime+stime deltas from /proc/PID/stat of the
  sessiond worker and of the supervisor (ngircd's and the harness's own CPU
  are recorded next to them),
- lost / duplicated lines (delivered vs. expected).

With --baseline (default on) the same steps run with the same clients
directly on ngircd (no bouncer) in the same command, so the bouncer hop can
be told apart from the harness's own cost.

    bench/relay_bench.py                         # 200 sessions, 4 channels
    bench/relay_bench.py --sessions 1000 --rates 10,50,100,200
    bench/relay_bench.py --no-baseline
    bench/relay_bench.py --store-compare --no-baseline --rates 800   # store off vs on
    bench/relay_bench.py --no-baseline --custody  # custody's cost, same command
    bench/relay_bench.py --no-baseline --custody --repeat 3 --rates 100,400,800
        # off, on, off, on, off, on: the headline is the median of the 3 runs
    bench/relay_bench.py --no-baseline --custody --store-off  # lines inline again

JSON on stdout and in bench/results/relay-<N>s.json (overwritten by the
next run with the same N).

This file also holds the rig shared by bench/rss_bench.py and
bench/znc_compare.py (ngircd + a bouncer + client workers + speakers +
/proc accounting).
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ircload  # noqa: E402
from ircload import log, Proc, latency_stats  # noqa: E402
import migration_bench as mb  # noqa: E402

REPO = os.path.dirname(HERE)
NETWORK = mb.NETWORK
PASSWORD = mb.PASSWORD
TICK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------
# /proc accounting

def proc_cpu_ms(pid):
    """utime+stime of pid in ms (None if gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
    except OSError:
        return None
    fields = st[st.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) * 1000.0 / TICK


def proc_sched_ms(pid):
    """CPU time of all threads of pid from /proc/PID/task/*/schedstat (ns
    resolution; /proc/PID/stat counts clock ticks of 10 ms)."""
    tot = 0
    try:
        for t in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/schedstat" % (pid, t)) as f:
                tot += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return tot / 1e6


def proc_mem(pid):
    return mb.proc_status(pid)


def default_build():
    env = os.environ.get("BATON_BUILD_A") or os.environ.get("BATON_BUILD")
    if env:
        return env
    for d in ("build-bench", "build"):
        p = os.path.join(REPO, d)
        if mb.have(os.path.join(p, "sessiond", "baton-sessiond")):
            return p
    return os.path.join(REPO, "build")


def write_result(result, name):
    """Print the result and write it to bench/results/NAME (a stable name:
    the next run of the same kind overwrites it), naming no machine's
    paths."""
    text = json.dumps(result, indent=1)
    print(text)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    out = os.path.join(HERE, "results", name)
    with open(out, "w") as f:
        f.write(mb.scrub_paths(text) + "\n")
    log("wrote %s" % out)
    return out


def wait_until(pred, timeout, what, interval=0.5):
    return mb.wait_until(pred, timeout, what, interval=interval, progress=True)


# --------------------------------------------------------------------------
# bouncers

class BatonBouncer:
    """baton supervisor + worker (migration_bench.Baton) behind one interface."""
    kind = "baton"

    def __init__(self, bins, workdir, port, net_port, users, channels_of,
                 chunk_sessions=256, handoff_timeout=10, sessiond_extra="",
                 supervisor_extra=""):
        self.bins = bins
        self.port = port
        self.users = users
        self.b = mb.Baton(bins, workdir, port, net_port, users, channels_of,
                          chunk_sessions, handoff_timeout, sessiond_extra,
                          extra_supervisor=supervisor_extra)

    def start(self):
        self.b.start("-c {conf}")
        ircload.wait_port(self.port, timeout=30, proc=self.b.proc)
        return self

    def upstream_ready(self):
        if self.b.proc.poll() is not None:
            raise RuntimeError("supervisor exited (%s)" % self.b.proc.returncode)
        st = self.b.status()
        if st is None:
            return False, "no status"
        ws = mb.workers_of(st)
        ns = sum(w.get("sessions", 0) for w in ws)
        upc = sum(w.get("upstreams_connected", 0) for w in ws)
        have_up = any("upstreams_connected" in w for w in ws)
        n = len(self.users)
        return (ns >= n and (not have_up or upc >= n)), {"sessions": ns,
                                                         "upstreams_connected": upc}

    def pids(self):
        return {"supervisor": [self.b.supervisor_pid()], "worker": self.b.workers()}

    def ctl(self, *a, **kw):
        return self.b.ctl(*a, **kw)

    def stop(self):
        self.b.stop()


class DirectBouncer:
    """No bouncer: clients log in to ngircd themselves (baseline)."""
    kind = "direct"

    def __init__(self, net_port):
        self.port = net_port

    def start(self):
        return self

    def upstream_ready(self):
        return True, {}

    def pids(self):
        return {}

    def stop(self):
        pass


# --------------------------------------------------------------------------
# a watcher on ngircd: who is in which channel, when (JOIN/PART/QUIT)

class Watcher(threading.Thread):
    """One plain IRC connection on ngircd joined to every channel; tracks
    membership from NAMES and JOIN/PART/QUIT/NICK/KICK, timestamps every
    membership event (CLOCK_MONOTONIC ns). PRIVMSGs are skipped cheaply."""

    def __init__(self, port, channels, nick="watcher0"):
        super().__init__(daemon=True)
        self.port = port
        self.channels = [c.lower() for c in channels]
        self.nick = nick
        self.members = {c: set() for c in self.channels}
        self.events = []  # (t_ns, cmd, nick, chan_or_None)
        self.lock = threading.Lock()
        self.stopped = False
        self.joined = set()
        self.closed = None

    def run(self):
        s = socket.create_connection((ircload.LOOPBACK, self.port))
        s.sendall(("NICK %s\r\nUSER %s 0 * :watcher\r\n" % (self.nick, self.nick)).encode())
        s.settimeout(0.2)
        buf = b""
        while not self.stopped:
            try:
                data = s.recv(262144)
            except socket.timeout:
                continue
            except OSError as e:
                self.closed = str(e)
                break
            if not data:
                self.closed = "eof"
                break
            now = time.monotonic_ns()
            buf += data
            lines = buf.split(b"\r\n")
            buf = lines.pop()
            out = []
            with self.lock:
                for ln in lines:
                    if b" PRIVMSG " in ln[:120]:
                        continue
                    self._line(ln, now, out)
            if out:
                s.sendall(b"".join(out))
        s.close()

    def _line(self, ln, now, out):
        nick, cmd, params = ircload.parse_prefix_cmd(ln)
        nick = nick.decode(errors="replace").lower()
        if cmd == b"PING":
            out.append(b"PONG :" + (params[-1] if params else b"") + b"\r\n")
        elif cmd == b"001":
            for i in range(0, len(self.channels), 20):
                out.append(("JOIN %s\r\n" % ",".join(self.channels[i:i + 20])).encode())
        elif cmd == b"353" and len(params) >= 4:
            ch = params[2].decode().lower()
            for n in params[3].split():
                n = n.decode(errors="replace").lstrip("@+%~&").lower()
                if n != self.nick:
                    self.members.setdefault(ch, set()).add(n)
        elif cmd == b"JOIN" and params:
            for ch in params[0].decode().lower().split(","):
                if nick == self.nick:
                    self.joined.add(ch)
                else:
                    self.members.setdefault(ch, set()).add(nick)
                    self.events.append((now, "JOIN", nick, ch))
        elif cmd == b"PART" and params:
            for ch in params[0].decode().lower().split(","):
                self.members.setdefault(ch, set()).discard(nick)
                self.events.append((now, "PART", nick, ch))
        elif cmd == b"KICK" and len(params) >= 2:
            ch = params[0].decode().lower()
            who = params[1].decode(errors="replace").lower()
            self.members.setdefault(ch, set()).discard(who)
            self.events.append((now, "KICK", who, ch))
        elif cmd == b"QUIT":
            for m in self.members.values():
                m.discard(nick)
            self.events.append((now, "QUIT", nick, None))
        elif cmd == b"NICK" and params:
            new = params[0].decode(errors="replace").lower()
            for m in self.members.values():
                if nick in m:
                    m.discard(nick)
                    m.add(new)
            self.events.append((now, "NICK", nick, new))

    def ready(self):
        return self.joined >= set(self.channels)

    def users_in(self, channels_of):
        """How many users are in every one of their channels."""
        with self.lock:
            return sum(1 for u, chs in channels_of.items()
                       if all(u.lower() in self.members.get(c.lower(), ()) for c in chs))

    def events_since(self, t_ns, nicks=None):
        with self.lock:
            return [e for e in self.events if e[0] >= t_ns
                    and (nicks is None or e[2] in nicks)]

    def stop(self):
        self.stopped = True


# --------------------------------------------------------------------------
# the rig

class Rig:
    """ngircd + bouncer + client workers + speakers for one measurement.

    make_bouncer(rig) -> a bouncer object (BatonBouncer, DirectBouncer or
    znc_compare.Znc) created after ngircd is up (rig.net_port, rig.port,
    rig.users, rig.channels_of, rig.workdir are set)."""

    def __init__(self, sessions, channels, channels_per_user=1, speakers=10,
                 client_procs=0, connect_window=200, watcher=False, label="", plan=None):
        """plan: None (users u0..uN-1, channels #bench0.., user i in channel
        i % C) or [(user, [channels])] (e.g. baton-loadgen --emit-users;
        nick = user name), which then sets users, channels and layout."""
        self.sessions = sessions
        self.label = label
        self.workdir = tempfile.mkdtemp(prefix="baton-bench-%s-" % (label or "rig"))
        if plan is not None:
            self.users = [u for u, _ in plan]
            self.channels_of = {u: list(chs) for u, chs in plan}
            self.channels = sorted(set(c for _, chs in plan for c in chs),
                                   key=lambda c: (len(c), c))
        else:
            self.channels = ["#bench%d" % i for i in range(channels)]
            self.users = ["u%d" % i for i in range(sessions)]
            self.channels_of = {u: [self.channels[(i + j * 7) % len(self.channels)]
                                    for j in range(channels_per_user)]
                                for i, u in enumerate(self.users)}
        self.nspeakers = min(speakers, channels)
        self.client_procs = client_procs
        self.connect_window = connect_window
        self.want_watcher = watcher
        self.ng = self.bouncer = self.spk = self.watcher = None
        self.workers = []
        self.specs = []
        self.old_workers = []
        self.net_port, self.port = ircload.pick_ports(2)
        self.timings = {}
        # the password part of the clients' PASS user/network:password
        # (znc_compare.py changes it for ZNC when baton-loadgen drives ZNC)
        self.client_password = PASSWORD

    # -- start-up
    def start_network(self):
        self.ng = ircload.Ngircd(self.net_port, self.workdir).start()
        log("[%s] ngircd on %d" % (self.label, self.net_port))
        if self.want_watcher:
            self.watcher = Watcher(self.net_port, self.channels)
            self.watcher.start()
            wait_until(lambda: (self.watcher.ready(), "joining"), 30, "watcher")

    def start_bouncer(self, make_bouncer, ready_timeout):
        t0 = time.monotonic()
        self.bouncer = make_bouncer(self).start()
        self.wait_upstream(ready_timeout)
        self.timings["startup_upstream_s"] = round(time.monotonic() - t0, 2)
        log("[%s] %s: %d sessions upstream after %.1f s" % (
            self.label, self.bouncer.kind, self.sessions, time.monotonic() - t0))

    def wait_upstream(self, timeout):
        def ok():
            r, info = self.bouncer.upstream_ready()
            if self.watcher is not None:
                n = self.watcher.users_in(self.channels_of)
                info = dict(info, users_in_channels=n)
                r = r and n >= self.sessions
            return r, info
        return wait_until(ok, timeout, "%s upstream" % self.bouncer.kind, interval=0.5)

    def client_specs(self):
        direct = self.bouncer.kind == "direct"
        specs = []
        for u in self.users:
            login = None if direct else "%s/%s:%s" % (u, NETWORK, self.client_password)
            specs.append((len(specs), u, login, self.channels_of[u], direct, True))
        return specs

    def start_clients(self, ready_timeout):
        self.specs = self.client_specs()
        nproc = self.client_procs or max(1, (len(self.specs) + 2999) // 3000)
        window = self.connect_window if self.bouncer.kind != "direct" else 10
        t0 = time.monotonic()
        self.workers = [Proc(ircload.client_worker, self.bouncer.port, self.specs[w::nproc],
                             max(1, window // nproc)) for w in range(nproc)]
        info = self.wait_clients(ready_timeout)
        self.timings["startup_clients_s"] = round(time.monotonic() - t0, 2)
        log("[%s] clients ready: %s after %.1f s" % (self.label, info, time.monotonic() - t0))
        return info

    def client_status(self, workers=None):
        sts = [w.call("status") for w in (workers or self.workers)]
        return {"ready": sum(s["ready"] for s in sts),
                "registered": sum(s["registered"] for s in sts),
                "connected": sum(s["connected"] for s in sts),
                "closed": sum(s["closed"] for s in sts),
                "close_reasons": sorted(set(r for s in sts for r in s["close_reasons"]))[:5],
                "of": len(self.specs)}

    def wait_clients(self, timeout, workers=None, allow_closed=True):
        def ok():
            info = self.client_status(workers)
            if info["closed"] > len(self.specs) // 100 + 5:
                raise RuntimeError("clients closed during login: %s" % info)
            return info["ready"] >= len(self.specs) - info["closed"] and info["ready"] > 0, info
        return wait_until(ok, timeout, "clients", interval=0.5)

    def start_speakers(self):
        self.spk = Proc(ircload.speaker_worker, self.net_port, self.channels, self.nspeakers)
        wait_until(lambda: ((lambda s: (s["ready"] == s["total"], s))(self.spk.call("status"))),
                   30, "speakers")
        time.sleep(0.5)

    # -- accounting
    def pids(self):
        p = dict(self.bouncer.pids()) if self.bouncer else {}
        if self.ng and self.ng.proc:
            # prlimit execs ngircd: same pid
            p["ngircd"] = [self.ng.proc.pid]
        p["harness_clients"] = [w.p.pid for w in self.workers]
        if self.spk:
            p["harness_speakers"] = [self.spk.p.pid]
        return p

    def cpu(self):
        """{role: {pid: (stat utime+stime ms, schedstat ms)}}"""
        out = {}
        for role, pids in self.pids().items():
            out[role] = {str(pid): (proc_cpu_ms(pid), proc_sched_ms(pid)) for pid in pids}
        return out

    def mem(self, roles=("supervisor", "worker", "znc")):
        out = {}
        for role, pids in self.pids().items():
            if role in roles:
                out[role] = {str(pid): proc_mem(pid) for pid in pids}
        return out

    @staticmethod
    def rss_kb(mem, roles):
        return sum(v.get("VmRSS", 0) for r in roles for v in mem.get(r, {}).values())

    # -- one traffic phase
    def phase(self, rate, duration, uplink=0.0, drain=2.0, warm=1.0, during=None,
              mem_every=1.0):
        """Traffic at `rate` network lines/s (+ `uplink` client lines/s) for
        `duration` s (or while during(rig) runs), then drain. Returns stats of
        the network->client lines (kind 'down') and CPU deltas."""
        for w in self.workers + [self.spk]:
            w.call("reset")
        cpu0 = self.cpu()
        st = self.spk.call("traffic", rate)
        t_start = st["t0"]
        sent0 = st["sent"]
        for w in self.workers:
            w.call("traffic", uplink / len(self.workers))
        mems = []
        extra = None
        if during:
            extra = during(self)
        else:
            end = time.monotonic() + duration
            while time.monotonic() < end:
                time.sleep(min(mem_every, max(0.0, end - time.monotonic())))
                mems.append(self.rss_kb(self.mem(), ("worker", "supervisor", "znc")))
        stop = self.spk.call("traffic", 0)
        t_stop = stop["t_ns"]
        usent = {}
        for w in self.workers:
            usent.update(w.call("traffic", 0)["sent"])
        time.sleep(drain)
        cpu1 = self.cpu()
        mem_end = self.mem()
        reports = [w.call("report", timeout=120) for w in self.workers]
        return self.analyse(rate, uplink, t_start, t_stop, sent0, stop, usent, reports,
                            cpu0, cpu1, warm, mems, mem_end, extra)

    def expected_down(self, sent0, sent1):
        """per channel: network lines sent in the phase"""
        per_chan = {}
        for k, n in sent1.items():
            ch = k.partition(" ")[0].lower()
            per_chan[ch] = per_chan.get(ch, 0) + n - sent0.get(k, 0)
        return per_chan

    def analyse(self, rate, uplink, t_start, t_stop, sent0, stop, usent, reports,
                cpu0, cpu1, warm, mems, mem_end, extra):
        per_chan = self.expected_down(sent0, stop["sent"])
        samples = [s for r in reports for s in r["samples"]]
        down = [s for s in samples if s[2] == 0]
        expected = 0
        per_client = {}
        for r in reports:
            for (idx, nick, lines_in, dups, dis, seqs, closed, reason, _, ev) in r["clients"]:
                e = sum(per_chan.get(ch.lower(), 0) for ch in self.specs[idx][3])
                expected += e
                per_client[idx] = (e, lines_in, dups, closed)
        dups = sum(v[2] for v in per_client.values())
        closed = sum(1 for v in per_client.values() if v[3])
        dur = (t_stop - t_start) / 1e9
        warm_ns = t_start + int(warm * 1e9)
        lat = latency_stats([s for s in down if s[0] >= warm_ns])
        cpu = {}
        cpu_sched = {}
        for role in cpu1:
            d = ds = 0.0
            for pid, v in cpu1[role].items():
                v0 = cpu0.get(role, {}).get(pid) or (None, None)
                if v[0] is not None:
                    d += v[0] - (v0[0] or 0.0)
                if v[1] is not None:
                    ds += v[1] - (v0[1] or 0.0)
            cpu[role] = round(d, 1)
            cpu_sched[role] = round(ds, 2)
        delivered = len(down)
        res = {
            "rate_offered_lines_s": rate,
            "uplink_lines_s": uplink,
            "duration_s": round(dur, 3),
            "network_lines_sent": stop["lines"],
            "network_lines_per_s": round(stop["lines"] / dur, 1) if dur else None,
            "speaker_sched_lag_max_ms": round(stop["sched_lag_max_ms"], 2),
            "deliveries_expected": expected,
            "deliveries_received": delivered,
            "deliveries_per_s": round(delivered / dur, 1) if dur else None,
            "lost": expected - (delivered - dups) if not self.old_workers else None,
            "duplicated": dups,
            "clients_closed": closed,
            "uplink_lines_sent": sum(usent.values()),
            "latency_down": lat,
            "cpu_ms": cpu,
            "cpu_ms_schedstat": cpu_sched,
        }
        bcpu = sum(v for k, v in cpu.items() if k in ("worker", "supervisor", "znc"))
        res["bouncer_cpu_ms"] = round(bcpu, 1)
        if delivered:
            res["bouncer_cpu_ms_per_1000_deliveries"] = round(bcpu * 1000.0 / delivered, 2)
            for k in ("worker", "supervisor", "znc", "ngircd"):
                if k in cpu:
                    res["%s_cpu_ms_per_1000_deliveries" % k] = round(cpu[k] * 1000.0 / delivered, 2)
        bsch = sum(v for k, v in cpu_sched.items() if k in ("worker", "supervisor", "znc"))
        res["bouncer_cpu_ms_schedstat"] = round(bsch, 2)
        if delivered:
            res["bouncer_cpu_ms_per_1000_deliveries_schedstat"] = round(bsch * 1000.0 / delivered, 3)
            for k in ("worker", "supervisor", "znc"):
                if k in cpu_sched:
                    res["%s_cpu_ms_per_1000_deliveries_schedstat" % k] = round(
                        cpu_sched[k] * 1000.0 / delivered, 3)
        if stop["lines"]:
            res["bouncer_cpu_ms_per_1000_network_lines"] = round(bcpu * 1000.0 / stop["lines"], 2)
        if dur:
            res["bouncer_cpu_share_of_one_core"] = round(bcpu / 1000.0 / (dur + 0), 3)
        if mems:
            res["bouncer_rss_kb_samples"] = {"n": len(mems), "max": max(mems),
                                             "last": mems[-1]}
        res["mem_end"] = mem_end
        if extra is not None:
            res["during"] = extra
        res["_per_client"] = per_client
        return res

    def stop(self, keep=False):
        for w in self.workers + self.old_workers:
            try:
                w.stop()
            except Exception:
                pass
        if self.spk:
            self.spk.stop()
        if self.watcher:
            self.watcher.stop()
        if self.bouncer:
            try:
                self.bouncer.stop()
            except Exception as e:
                log("stopping bouncer: %s" % e)
        if self.ng:
            self.ng.stop()
        if keep:
            log("logs kept in %s" % self.workdir)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def baton_maker(bins, chunk_sessions=256, sessiond_extra="", supervisor_extra=""):
    def make(rig):
        return BatonBouncer(bins, rig.workdir, rig.port, rig.net_port, rig.users,
                            rig.channels_of, chunk_sessions=chunk_sessions,
                            sessiond_extra=sessiond_extra,
                            supervisor_extra=supervisor_extra)
    return make


def strip_private(d):
    if isinstance(d, dict):
        return {k: strip_private(v) for k, v in d.items() if not k.startswith("_")}
    if isinstance(d, list):
        return [strip_private(v) for v in d]
    return d


# --------------------------------------------------------------------------

def store_disk(baton_dir):
    """The message store's file (state/messages.db, with its WAL) after a
    run: bytes on disk per stored line (None with the store off)."""
    import sqlite3
    db = os.path.join(baton_dir, "state", "messages.db")
    if not os.path.exists(db):
        return None
    files = [db + s for s in ("", "-wal", "-shm") if os.path.exists(db + s)]
    size = sum(os.path.getsize(f) for f in files)
    c = sqlite3.connect(db, timeout=30)
    try:
        lines, text = c.execute("SELECT count(*), coalesce(sum(length(line)), 0)"
                                " FROM baton_message").fetchone()
    finally:
        c.close()
    return {"files_bytes": size, "lines": lines, "line_text_bytes": text,
            "disk_bytes_per_line": round(size / lines, 1) if lines else None,
            "text_bytes_per_line": round(text / lines, 1) if lines else None}


def median_run(repeats):
    """One run whose steps hold, per rate, the median over REPEATS of the
    numbers the headline reads (the runs themselves are kept beside it)."""
    def med(xs):
        xs = sorted(x for x in xs if x is not None)
        return xs[len(xs) // 2] if len(xs) % 2 else (
            (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2.0 if xs else None)
    out = {}
    for kind in repeats[0]:
        runs = [r[kind] for r in repeats if kind in r]
        steps = []
        for i, s0 in enumerate(runs[0].get("steps", [])):
            same = [r["steps"][i] for r in runs if len(r.get("steps", [])) > i]
            st = {"rate_offered_lines_s": s0["rate_offered_lines_s"],
                  "deliveries_offered_per_s": s0.get("deliveries_offered_per_s"),
                  "latency_down": {}, "median_of": len(same)}
            for k in ("p50_ms", "p99_ms"):
                st["latency_down"][k] = med([(x.get("latency_down") or {}).get(k) for x in same])
            for k in ("deliveries_per_s", "bouncer_cpu_ms_per_1000_deliveries",
                      "worker_cpu_ms_per_1000_deliveries",
                      "supervisor_cpu_ms_per_1000_deliveries",
                      "bouncer_cpu_ms_per_1000_deliveries_schedstat",
                      "worker_cpu_ms_per_1000_deliveries_schedstat",
                      "supervisor_cpu_ms_per_1000_deliveries_schedstat",
                      "bouncer_cpu_share_of_one_core"):
                st[k] = med([x.get(k) for x in same])
            st["lost"] = sum(x.get("lost") or 0 for x in same)
            st["duplicated"] = sum(x.get("duplicated") or 0 for x in same)
            steps.append(st)
        out[kind] = {"kind": kind, "steps": steps,
                     "errors": [r["error"] for r in runs if "error" in r]}
    return out


def run_steps(label, make_bouncer, args):
    rig = Rig(args.sessions, args.channels, speakers=args.speakers,
              client_procs=args.client_procs, label=label)
    out = {"kind": label, "steps": []}
    ready_timeout = max(60.0, args.sessions * 0.05)
    try:
        rig.start_network()
        rig.start_bouncer(make_bouncer, ready_timeout)
        rig.start_clients(ready_timeout)
        rig.start_speakers()
        out["timings"] = rig.timings
        out["pids"] = rig.pids()
        members = args.sessions / float(args.channels)
        for rate in args.rates:
            log("[%s] step: %s network lines/s (~%.0f deliveries/s) for %ss"
                % (label, rate, rate * members, args.step))
            r = rig.phase(rate, args.step, uplink=0.0, drain=args.drain, warm=args.warm)
            r["deliveries_offered_per_s"] = round(rate * members, 1)
            log("[%s]   -> %s deliveries/s, p50 %s p99 %s ms, bouncer CPU %s ms/1000, "
                "lost %s" % (label, r["deliveries_per_s"], r["latency_down"]["p50_ms"],
                             r["latency_down"]["p99_ms"],
                             r.get("bouncer_cpu_ms_per_1000_deliveries"), r["lost"]))
            out["steps"].append(strip_private(r))
        if rig.bouncer.kind == "baton":
            out["status_after"] = rig.bouncer.b.status()
            out["store_disk"] = store_disk(rig.bouncer.b.dir)
    except Exception as e:
        out["error"] = "%s: %s" % (type(e).__name__, e)
        log("ERROR [%s]: %s" % (label, out["error"]))
    finally:
        rig.stop(keep="error" in out)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--channels", type=int, default=4,
                    help="channels (user i joins channel i %% C); members per "
                         "channel = sessions / channels")
    ap.add_argument("--rates", default="20,100,200,400,800",
                    help="network lines/s per step (deliveries/s = rate x members)")
    ap.add_argument("--step", type=float, default=6.0, help="seconds per step")
    ap.add_argument("--warm", type=float, default=1.0,
                    help="latency ignores the first WARM s of each step")
    ap.add_argument("--drain", type=float, default=2.0)
    ap.add_argument("--speakers", type=int, default=4)
    ap.add_argument("--client-procs", type=int, default=2)
    ap.add_argument("--store-compare", action="store_true",
                    help="the same steps with [sessiond] store = off first, then "
                         "with the default store (SQLite), in this run")
    ap.add_argument("--store-opts", default="",
                    help="more [sessiond] keys for the store-on run, KEY = V;KEY = V")
    ap.add_argument("--no-baseline", dest="baseline", action="store_false",
                    help="skip the same steps with clients directly on ngircd")
    ap.add_argument("--custody", action="store_true",
                    help="also the same steps with [supervisor] custody = yes (its cost: "
                    "columns custody p50/p99 and cpu/1000 next to baton's)")
    ap.add_argument("--store-off", action="store_true",
                    help="[sessiond] store = off for the baton runs (custody records "
                    "hold the backlog's lines inline); the result is "
                    "relay-<N>s[-custody]-nostore.json")
    ap.add_argument("--repeat", type=int, default=1,
                    help="with --custody: run custody off then on REPEAT times, "
                    "alternating; the headline columns are the medians (every run "
                    "is kept under repeats)")
    args = ap.parse_args()
    args.rates = [float(x) for x in args.rates.split(",") if x.strip()]
    ircload.raise_nofile()
    bins = mb.build_bins(default_build())
    for k in ("sessiond", "supervisor", "batonctl"):
        if not mb.have(bins[k]):
            sys.exit("missing %s (set BATON_BUILD_A)" % bins[k])
    result = {"bench": "relay", "version": 1,
              "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "params": vars(args), "build": bins["root"], "nproc": os.cpu_count(),
              "loadavg_start": os.getloadavg()}
    if args.store_compare:
        result["baton_store_off"] = run_steps("baton-store-off",
                                              baton_maker(bins, sessiond_extra="store = off"), args)
    store = "store = off" if args.store_off else "store = sqlite;" + args.store_opts
    repeats = []
    for i in range(max(1, args.repeat if args.custody else 1)):
        # with --custody the off run says so (custody is on by default);
        # without it baton runs as configured by default
        run = {"baton": run_steps("baton", baton_maker(
            bins, sessiond_extra=store,
            supervisor_extra="custody = no" if args.custody else ""), args)}
        if args.custody:
            run["baton_custody"] = run_steps("baton-custody", baton_maker(
                bins, sessiond_extra=store, supervisor_extra="custody = yes"), args)
        repeats.append(run)
    result.update(repeats[0] if len(repeats) == 1 else median_run(repeats))
    if len(repeats) > 1:
        result["repeats"] = repeats
    if args.baseline:
        result["direct"] = run_steps("direct", lambda rig: DirectBouncer(rig.net_port), args)
    result["loadavg_end"] = os.getloadavg()

    # headline table
    rows = []
    base = {s["rate_offered_lines_s"]: s for s in result.get("direct", {}).get("steps", [])}
    cust = {s["rate_offered_lines_s"]: s
            for s in result.get("baton_custody", {}).get("steps", [])}
    for s in result["baton"]["steps"]:
        b = base.get(s["rate_offered_lines_s"], {})
        cu = cust.get(s["rate_offered_lines_s"], {})
        rows.append({
            "network_lines_s": s["rate_offered_lines_s"],
            "deliveries_offered_s": s["deliveries_offered_per_s"],
            "baton_deliveries_s": s["deliveries_per_s"],
            "baton_p50_ms": s["latency_down"]["p50_ms"],
            "baton_p99_ms": s["latency_down"]["p99_ms"],
            "baton_cpu_ms_per_1000": s.get("bouncer_cpu_ms_per_1000_deliveries"),
            "worker_cpu_ms_per_1000": s.get("worker_cpu_ms_per_1000_deliveries"),
            "supervisor_cpu_ms_per_1000": s.get("supervisor_cpu_ms_per_1000_deliveries"),
            "baton_cpu_ms_per_1000_schedstat": s.get("bouncer_cpu_ms_per_1000_deliveries_schedstat"),
            "worker_cpu_ms_per_1000_schedstat": s.get("worker_cpu_ms_per_1000_deliveries_schedstat"),
            "supervisor_cpu_ms_per_1000_schedstat": s.get(
                "supervisor_cpu_ms_per_1000_deliveries_schedstat"),
            "baton_cpu_core_share": s.get("bouncer_cpu_share_of_one_core"),
            "baton_lost": s["lost"], "baton_dup": s["duplicated"],
            "direct_deliveries_s": b.get("deliveries_per_s"),
            "direct_p50_ms": (b.get("latency_down") or {}).get("p50_ms"),
            "direct_p99_ms": (b.get("latency_down") or {}).get("p99_ms"),
            "custody_deliveries_s": cu.get("deliveries_per_s"),
            "custody_p50_ms": (cu.get("latency_down") or {}).get("p50_ms"),
            "custody_p99_ms": (cu.get("latency_down") or {}).get("p99_ms"),
            "custody_cpu_ms_per_1000": cu.get("bouncer_cpu_ms_per_1000_deliveries"),
            "custody_lost": cu.get("lost"), "custody_dup": cu.get("duplicated"),
        })
    result["headline"] = rows
    if args.store_compare:
        off = {s["rate_offered_lines_s"]: s for s in result["baton_store_off"].get("steps", [])}
        result["store_compare"] = [{
            "network_lines_s": s["rate_offered_lines_s"],
            "deliveries_offered_s": s["deliveries_offered_per_s"],
            "store_on_p50_ms": s["latency_down"]["p50_ms"],
            "store_on_p99_ms": s["latency_down"]["p99_ms"],
            "store_off_p50_ms": (off.get(s["rate_offered_lines_s"], {}).get("latency_down") or {}).get("p50_ms"),
            "store_off_p99_ms": (off.get(s["rate_offered_lines_s"], {}).get("latency_down") or {}).get("p99_ms"),
            "store_on_lost": s["lost"], "store_on_dup": s["duplicated"],
            "store_on_worker_cpu_ms_per_1000": s.get("worker_cpu_ms_per_1000_deliveries"),
            "store_off_worker_cpu_ms_per_1000": off.get(s["rate_offered_lines_s"], {}).get(
                "worker_cpu_ms_per_1000_deliveries"),
        } for s in result["baton"]["steps"]]
        result["store_disk"] = result["baton"].get("store_disk")
        for r in result["store_compare"]:
            sys.stderr.write("  store on/off at %s lines/s: p50 %s/%s p99 %s/%s ms\n" % (
                r["network_lines_s"], r["store_on_p50_ms"], r["store_off_p50_ms"],
                r["store_on_p99_ms"], r["store_off_p99_ms"]))
        sys.stderr.write("  store disk: %s\n" % result["store_disk"])
    result["ok"] = ("error" not in result["baton"] and not result["baton"].get("errors") and
                    all(s["lost"] == 0 and s["duplicated"] == 0 for s in result["baton"]["steps"]))
    sys.stderr.write("\n  %-8s %-10s %-10s %-14s %-12s %-10s\n" % (
        "lines/s", "offered/s", "baton/s", "p50/p99 ms", "cpu/1000", "direct p50/p99"))
    for r in rows:
        sys.stderr.write("  %-8s %-10s %-10s %-14s %-12s %s/%s\n" % (
            r["network_lines_s"], r["deliveries_offered_s"], r["baton_deliveries_s"],
            "%s/%s" % (r["baton_p50_ms"], r["baton_p99_ms"]),
            "%s (%s)" % (r["baton_cpu_ms_per_1000"], r["baton_cpu_ms_per_1000_schedstat"]),
            r["direct_p50_ms"], r["direct_p99_ms"]))
        if args.custody:
            sys.stderr.write("  %-8s %-10s %-10s %-14s %-12s (custody on)\n" % (
                "", "", r["custody_deliveries_s"],
                "%s/%s" % (r["custody_p50_ms"], r["custody_p99_ms"]),
                r["custody_cpu_ms_per_1000"]))
    write_result(result, "relay-%ds%s%s%s.json" % (args.sessions,
                                                   "-store" if args.store_compare else "",
                                                   "-custody" if args.custody else "",
                                                   "-nostore" if args.store_off else ""))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
