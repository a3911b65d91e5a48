#!/usr/bin/env python3
"""bench/login_flood_bench.py: relay latency of live traffic while 100
clients log in at once with a slow password hash (issue 12 §1: no blocking
call on a worker's event loop; the password checks run on the authpool
threads, sessiond/authpool.h).

One command, one rig (bench/relay_bench.py's: ngircd, baton with one worker,
one client attached to each of --sessions sessions, speakers on ngircd):

1. quiet: --rate network lines/s into the sessions' channels for --phase s;
2. flood: the same traffic for --phase s, and --flood-after s into it
   --flood clients connect at once and log in to their own sessions, whose
   users' password is a sha512-crypt hash with --rounds rounds (500,000:
   ~0.13 s of CPU per check here; 100 checks = ~13 s on the default single
   auth thread).

Latency is network send -> client receive of every delivered line (p50/p99/
max, the first --warm s of a phase ignored); for the flood phase also over
the window from the first connect to the last login alone. Nothing may be
lost or duplicated. --repeat N runs it all N times (a fresh rig each) and
reports the medians.

    bench/login_flood_bench.py                    # 200 sessions, 100 logins, 3 runs
    bench/login_flood_bench.py --repeat 1 --phase 10

JSON on stdout and in bench/results/login-flood.json.
"""

import argparse
import json
import warnings
import os
import selectors
import socket
import statistics
import sys
import time

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt  # deprecated, still in Debian 12's python3 (3.11)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ircload  # noqa: E402
from ircload import log, latency_stats  # noqa: E402
import migration_bench as mb  # noqa: E402
import relay_bench as rb  # noqa: E402

FLOOD_CHANNEL = "#flood"  # no speaker talks there


def slow_hash(password, rounds):
    return crypt.crypt(password, "$6$rounds=%d$floodbenchsalt$" % rounds)


class FloodRig(rb.Rig):
    """The relay rig plus `nflood` sessions whose clients are not attached
    at start: they log in during the flood."""

    def __init__(self, sessions, channels, nflood, **kw):
        super().__init__(sessions, channels, **kw)
        self.base_users = list(self.users)
        self.flood_users = ["flood%d" % i for i in range(nflood)]
        self.users = self.base_users + self.flood_users
        for u in self.flood_users:
            self.channels_of[u] = [FLOOD_CHANNEL]
        self.window = None

    def client_specs(self):
        users, self.users = self.users, self.base_users
        try:
            return super().client_specs()
        finally:
            self.users = users

    def analyse(self, rate, uplink, t_start, t_stop, sent0, stop, usent, reports, *rest):
        res = super().analyse(rate, uplink, t_start, t_stop, sent0, stop, usent, reports,
                              *rest)
        if self.window:
            a, b = self.window
            res["latency_down_flood_window"] = latency_stats(
                [s for r in reports for s in r["samples"] if s[2] == 0 and a <= s[0] <= b])
        return res


def flood_maker(bins, rounds):
    """baton_maker, then the flood users' password becomes the slow hash."""
    slow = slow_hash(mb.PASSWORD, rounds)

    def make(rig):
        bb = rb.BatonBouncer(bins, rig.workdir, rig.port, rig.net_port, rig.users,
                             rig.channels_of)
        conf = bb.b.conf
        with open(conf) as f:
            lines = f.read().split("\n")
        cur = None
        for i, ln in enumerate(lines):
            if ln.startswith("[user ") and "/" not in ln:
                cur = ln[6:-1]
            elif ln.startswith("password = ") and cur in set(rig.flood_users):
                lines[i] = "password = %s" % slow
        with open(conf, "w") as f:
            f.write("\n".join(lines))
        return bb
    return make


def flood(port, users, password, timeout=120.0):
    """Connect every user at once, log in (PASS user/net:password), answer
    PINGs; until every client saw 001 or was closed. Returns login times."""
    sel = selectors.DefaultSelector()
    st = {}
    t0 = time.monotonic()
    for u in users:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex((ircload.LOOPBACK, port))
        st[s] = {"user": u, "sent": False, "buf": b"", "done": None, "error": None}
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    left = len(users)
    while left and time.monotonic() - t0 < timeout:
        for key, ev in sel.select(0.2):
            s = key.fileobj
            c = st[s]
            if ev & selectors.EVENT_WRITE and not c["sent"]:
                u = c["user"]
                try:
                    s.sendall(("PASS %s/%s:%s\r\nNICK %s\r\nUSER %s 0 * :flood\r\n"
                               % (u, mb.NETWORK, password, u, u)).encode())
                except OSError as e:
                    c["error"] = str(e)
                c["sent"] = True
                sel.modify(s, selectors.EVENT_READ)
                if c["error"]:
                    left -= 1
                    sel.unregister(s)
                continue
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                data, c["error"] = b"", str(e)
            if not data:
                c["error"] = c["error"] or "closed"
                left -= c["done"] is None
                sel.unregister(s)
                continue
            c["buf"] += data
            *lines, c["buf"] = c["buf"].split(b"\r\n")
            for ln in lines:
                p = ln.split(b" ")
                if p[0] == b"PING":
                    s.sendall(b"PONG " + b" ".join(p[1:]) + b"\r\n")
                elif len(p) > 1 and p[1] == b"001" and c["done"] is None:
                    c["done"] = time.monotonic() - t0
                    left -= 1
                elif p[0] == b"ERROR" and c["done"] is None:
                    c["error"] = ln.decode(errors="replace")[:120]
    for s in st:
        try:
            s.sendall(b"QUIT :done\r\n")
        except OSError:
            pass
    done = sorted(c["done"] for c in st.values() if c["done"] is not None)
    out = {"clients": len(users), "logged_in": len(done),
           "errors": sorted(set(c["error"] for c in st.values() if c["error"] and c["done"] is None))[:5],
           "first_login_s": round(done[0], 3) if done else None,
           "last_login_s": round(done[-1], 3) if done else None,
           "median_login_s": round(statistics.median(done), 3) if done else None}
    time.sleep(0.5)
    for s in st:
        s.close()
    return out


def one_run(bins, args, n):
    rig = FloodRig(args.sessions, args.channels, args.flood, speakers=args.speakers,
                   client_procs=args.client_procs, label="flood%d" % n)
    out = {}
    ready_timeout = max(90.0, (args.sessions + args.flood) * 0.1)
    try:
        rig.start_network()
        rig.start_bouncer(flood_maker(bins, args.rounds), ready_timeout)
        rig.start_clients(ready_timeout)
        rig.start_speakers()
        log("[run %d] quiet phase: %s lines/s for %s s" % (n, args.rate, args.phase))
        out["quiet"] = rb.strip_private(rig.phase(args.rate, args.phase, drain=args.drain,
                                                  warm=args.warm))

        def during(r):
            end = time.monotonic() + args.phase
            time.sleep(args.flood_after)
            t0 = time.monotonic_ns()
            res = flood(r.bouncer.port, r.flood_users, mb.PASSWORD,
                        timeout=max(1.0, end - time.monotonic() + 60))
            r.window = (t0, time.monotonic_ns())
            time.sleep(max(0.0, end - time.monotonic()))
            return res
        log("[run %d] flood phase: %d logins with rounds=%d after %s s"
            % (n, args.flood, args.rounds, args.flood_after))
        out["flood"] = rb.strip_private(rig.phase(args.rate, args.phase, drain=args.drain,
                                                  warm=args.warm, during=during))
        out["status_after"] = rig.bouncer.b.status()
    except Exception as e:
        out["error"] = "%s: %s" % (type(e).__name__, e)
        log("ERROR: %s" % out["error"])
    finally:
        rig.stop(keep="error" in out)
    return out


def summary(run):
    q, f = run.get("quiet", {}), run.get("flood", {})
    fl = f.get("during") or {}
    return {
        "quiet_p50_ms": (q.get("latency_down") or {}).get("p50_ms"),
        "quiet_p99_ms": (q.get("latency_down") or {}).get("p99_ms"),
        "flood_p50_ms": (f.get("latency_down") or {}).get("p50_ms"),
        "flood_p99_ms": (f.get("latency_down") or {}).get("p99_ms"),
        "flood_window_p99_ms": (f.get("latency_down_flood_window") or {}).get("p99_ms"),
        "flood_window_lines": (f.get("latency_down_flood_window") or {}).get("n"),
        "logged_in": fl.get("logged_in"),
        "last_login_s": fl.get("last_login_s"),
        "lost": (q.get("lost") or 0) + (f.get("lost") or 0),
        "duplicated": (q.get("duplicated") or 0) + (f.get("duplicated") or 0),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--rate", type=float, default=100.0,
                    help="network lines/s (deliveries/s = rate x sessions/channels)")
    ap.add_argument("--phase", type=float, default=20.0, help="seconds per phase")
    ap.add_argument("--flood", type=int, default=100, help="clients logging in at once")
    ap.add_argument("--flood-after", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=500000, help="sha512-crypt rounds")
    ap.add_argument("--warm", type=float, default=1.0)
    ap.add_argument("--drain", type=float, default=2.0)
    ap.add_argument("--speakers", type=int, default=4)
    ap.add_argument("--client-procs", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "login-flood.json"))
    args = ap.parse_args()
    ircload.raise_nofile()
    bins = mb.build_bins(rb.default_build())
    for k in ("sessiond", "supervisor", "batonctl"):
        if not mb.have(bins[k]):
            sys.exit("missing %s (set BATON_BUILD_A)" % bins[k])
    t0 = time.monotonic()
    h0 = time.monotonic()
    slow_hash(mb.PASSWORD, args.rounds)
    hash_s = time.monotonic() - h0
    result = {"bench": "login_flood", "version": 1,
              "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "params": dict(vars(args), out=os.path.relpath(args.out, os.path.dirname(HERE))), "build": os.path.basename(bins["root"].rstrip("/")),
              "nproc": os.cpu_count(), "one_hash_s": round(hash_s, 3),
              "loadavg_start": os.getloadavg(), "runs": []}
    for n in range(args.repeat):
        run = one_run(bins, args, n)
        run["summary"] = summary(run)
        log("[run %d] %s" % (n, run["summary"]))
        result["runs"].append(run)
    sums = [r["summary"] for r in result["runs"] if "error" not in r]

    def med(k):
        v = [s[k] for s in sums if s.get(k) is not None]
        return round(statistics.median(v), 3) if v else None
    result["median"] = {k: med(k) for k in ("quiet_p50_ms", "quiet_p99_ms", "flood_p50_ms",
                                            "flood_p99_ms", "flood_window_p99_ms",
                                            "last_login_s")}
    result["quiet_p99_ms"] = result["median"]["quiet_p99_ms"]
    result["flood_p99_ms"] = result["median"]["flood_p99_ms"]
    result["ok"] = (len(sums) == args.repeat and
                    all(s["lost"] == 0 and s["duplicated"] == 0 and s["logged_in"] == args.flood
                        for s in sums))
    result["loadavg_end"] = os.getloadavg()
    result["wall_s"] = round(time.monotonic() - t0, 1)
    for r in result["runs"]:  # keep the file small and free of this machine's paths
        for ph in ("quiet", "flood"):
            (r.get(ph) or {}).pop("mem_end", None)
        r.pop("status_after", None)
    text = json.dumps(result, indent=1)
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text + "\n")
    log("wrote %s" % args.out)
    sys.stderr.write("\n  medians of %d runs: quiet p50/p99 %s/%s ms, flood p50/p99 %s/%s ms "
                     "(p99 in the login window %s ms), last login after %s s\n"
                     % (len(sums), result["median"]["quiet_p50_ms"], result["median"]["quiet_p99_ms"],
                        result["median"]["flood_p50_ms"], result["median"]["flood_p99_ms"],
                        result["median"]["flood_window_p99_ms"], result["median"]["last_login_s"]))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
