#!/usr/bin/env python3
"""bench/abuse_run.py: the hostile-input acceptance run of issue 8.

One worker serves N bouncer users (default 200) under trace-shaped traffic
from baton-loadgen (bench/load_run.py's setup: ngircd, the trace's channel
layout, a netsplit and a mass client reconnect), while three abuses run at
once against the same worker, and upgrades and rollbacks alternate:

- oversized state (bug 2): strangers on the network flood private messages
  at the victim session x001 from 75 nicks; the bouncer user x000 sends
  PRIVMSGs to 50 targets each; 254 clients try to attach to x000;
- password guessing (bug 6): 2,000 wrong passwords for x000 as fast as one
  address can send them (the review's figure);
- pre-login floods (bug 7): 200 unauthenticated connections sending
  60,000 `CAP LS` each as fast as they can (the review's figures).
With --relentless both go on until the end: guesses without a count, and
every connection baton closes opened again at once (a reconnect storm of
tens of thousands of connections a second from one Python process, which
takes a core of the 2 itself).

The abusers connect from 127.0.0.2-127.0.0.4 (loopback, but not the
address of the N users' clients, which is 127.0.0.1), so per-address
limits hit them and not the users, as on a real host.

Pass: every upgrade and rollback committed; for the N users nothing lost,
duplicated or reordered, no disconnect, relay latency p99 under 50 ms
(--p99-ms). Prints a summary and one JSON object; saves it to
bench/results/abuse-<N>u[-relentless].json.

    bench/abuse_run.py --duration 40                # 200 users, 4 migrations
    bench/abuse_run.py --duration 40 --relentless
"""

import argparse
import datetime
import json
import os
import random
import selectors
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, HERE)

import batonlib as bl  # noqa: E402
import load_run  # noqa: E402


def connect_from(src, port, timeout=5.0):
    s = socket.socket()
    s.bind((src, 0))
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


def read_until(s, needles, timeout=5.0):
    """Read until one of needles (bytes) shows up, EOF or timeout; returns
    what was read."""
    buf = b""
    end = time.monotonic() + timeout
    s.settimeout(0.2)
    while time.monotonic() < end:
        try:
            d = s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
        if not d:
            break
        buf += d
        if any(n in buf for n in needles):
            break
    return buf


class Abuse(threading.Thread):
    """A thread that runs fn(self) until stop; counters in self.n."""

    def __init__(self, name, fn):
        super().__init__(daemon=True, name=name)
        self.fn = fn
        self.stop_ev = threading.Event()
        self.n = {}
        self.error = None

    def count(self, key, k=1):
        self.n[key] = self.n.get(key, 0) + k

    def run(self):
        try:
            self.fn(self)
        except Exception as e:  # reported, never fatal to the run
            self.error = "%s: %s" % (type(e).__name__, e)


def pm_flood(ngircd_port, victim_nick, nicks=75, size=440):
    """Strangers (direct ngircd users) send private messages at the victim."""
    def fn(t):
        conns = []
        for i in range(nicks):
            try:
                s = connect_from("127.0.0.2", ngircd_port)
                s.sendall(b"NICK strg%03d\r\nUSER s 0 * :stranger\r\n" % i)
                if b" 001 " in read_until(s, [b" 001 "]):
                    s.setblocking(False)
                    conns.append(s)
            except OSError:
                t.count("connect_failed")
        t.count("strangers", len(conns))
        text = ("x" * size).encode()
        i = 0
        while not t.stop_ev.is_set() and conns:
            for s in list(conns):
                i += 1
                line = b"PRIVMSG %s :%d %s\r\n" % (victim_nick.encode(), i, text)
                try:
                    s.send(line)
                    t.count("sent")
                except BlockingIOError:
                    t.count("blocked")
                except OSError:
                    conns.remove(s)
                    t.count("closed_by_server")
                try:
                    s.recv(65536)   # PINGs, penalties: keep the socket drained
                except (BlockingIOError, OSError):
                    pass
            time.sleep(0.001)
        for s in conns:
            s.close()
    return fn


def target_flood(baton_port, session, targets=50, lines=2000):
    """The bouncer user x000 sends PRIVMSGs to many targets each."""
    def fn(t):
        s = connect_from("127.0.0.3", baton_port)
        s.sendall(("PASS %s\r\nNICK %s\r\nUSER x 0 * :abuser\r\n"
                   % (session.pass_line("flood"), session.nick)).encode())
        if b" 001 " not in read_until(s, [b" 001 "], timeout=20):
            t.count("login_failed")
            return
        s.setblocking(False)
        tg = ",".join("tgt%02d" % i for i in range(targets))
        for i in range(lines):
            if t.stop_ev.is_set():
                break
            try:
                s.sendall(("PRIVMSG %s :flood line %d\r\n" % (tg, i)).encode())
                t.count("sent")
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                t.count("closed")
                break
            try:
                s.recv(65536)
            except (BlockingIOError, OSError):
                pass
        t.stop_ev.wait()
        s.close()
    return fn


def client_swarm(baton_port, session, n=254):
    """n clients try to attach to x000 at once."""
    def fn(t):
        socks = []
        for i in range(n):
            try:
                s = connect_from("127.0.0.3", baton_port)
                s.sendall(("PASS %s\r\nNICK %s\r\nUSER x 0 * :swarm\r\n"
                           % (session.pass_line("sw%03d" % i), session.nick)).encode())
                socks.append(s)
            except OSError:
                t.count("connect_failed")
        for s in socks:
            buf = read_until(s, [b" 001 ", b"ERROR"], timeout=20)
            t.count("attached" if b" 001 " in buf else "refused")
        t.stop_ev.wait()
        for s in socks:
            s.close()
    return fn


def password_guess(baton_port, session, attempts):
    """Wrong passwords for x000 from one address, as fast as answered:
    `attempts` of them (the review's 2,000), or until the end (0)."""
    def fn(t):
        i = 0
        while not t.stop_ev.is_set() and (attempts == 0 or i < attempts):
            i += 1
            try:
                s = connect_from("127.0.0.4", baton_port)
                s.sendall(("PASS %s/%s:wrong%d\r\nNICK g\r\nUSER g 0 * :g\r\n"
                           % (session.user, session.network, i)).encode())
                buf = read_until(s, [b" 464 ", b"ERROR"], timeout=10)
                t.count("attempts")
                if b"ERROR" in buf and b"464" not in buf:
                    t.count("throttled")
                s.close()
            except OSError:
                t.count("refused")
                time.sleep(0.01)
    return fn


def prelogin_flood(baton_port, conns=200, per_conn=60000, reconnect=False):
    """conns unauthenticated connections, each sending per_conn `CAP LS`
    lines as fast as it can (the review's 200 x 60,000); with reconnect, a
    connection baton closes is opened again at once, until the end."""
    def fn(t):
        sel = selectors.DefaultSelector()
        chunk = b"CAP LS\r\n" * 512
        left = {}

        def open_one():
            try:
                s = connect_from("127.0.0.2", baton_port, timeout=2)
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
                left[s] = per_conn * len(b"CAP LS\r\n")
                t.count("opened")
            except OSError:
                t.count("refused")

        for _ in range(conns):
            open_one()
        while not t.stop_ev.is_set():
            for key, ev in sel.select(0.05):
                s = key.fileobj
                try:
                    if ev & selectors.EVENT_READ and not s.recv(65536):
                        raise OSError("closed")
                    if ev & selectors.EVENT_WRITE:
                        n = s.send(chunk[:left[s]])
                        t.count("bytes", n)
                        left[s] -= n
                        if left[s] <= 0:   # all sent: only read from now on
                            sel.modify(s, selectors.EVENT_READ)
                except BlockingIOError:
                    pass
                except OSError:
                    sel.unregister(s)
                    left.pop(s, None)
                    s.close()
                    t.count("closed_by_baton")
                    if reconnect:
                        open_one()
        for key in list(sel.get_map().values()):
            key.fileobj.close()
    return fn


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bouncer-users", type=int, default=200)
    ap.add_argument("--channels", type=int, default=10)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--migrations", type=int, default=4,
                    help="upgrades and rollbacks, alternating (default 4)")
    ap.add_argument("--p99-ms", type=float, default=50.0)
    ap.add_argument("--relentless", action="store_true",
                    help="abuse without end: password guesses and pre-login connections "
                    "reopened as fast as they are refused or closed (default: the review's "
                    "2,000 guesses and 200 x 60,000 CAP LS)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    args = ap.parse_args()

    largs = load_run.parser().parse_args([
        "--bouncer-users", str(args.bouncer_users), "--channels", str(args.channels),
        "--duration", str(args.duration), "--rate", str(args.rate), "--upgrades", "0",
        "--drain", "30", "--ready-timeout", "120", "--quiet", "--backlog-lines", "500"])
    try:
        A, B, loadgen = load_run.prepare(largs)
    except bl.Skip as e:
        print("SKIP: %s" % e, file=sys.stderr)
        return 0
    ctx = bl.Context("abuse", keep=args.keep)
    ok = False
    try:
        result = run(ctx, args, largs, A, B, loadgen)
        ok = result["pass"]
        os.makedirs(args.results, exist_ok=True)
        path = os.path.join(args.results, "abuse-%du%s.json" % (
            args.bouncer_users, "-relentless" if args.relentless else ""))
        with open(path, "w") as f:
            f.write(bl.scrub_paths(json.dumps(result, indent=1)) + "\n")
        print(json.dumps(result))
        summary(result, path)
    finally:
        ctx.close(failed=not ok)
        if not ok:
            bl.log("artifacts kept in %s" % ctx.dir)
    return 0 if ok else 1


def run(ctx, args, largs, A, B, loadgen):
    # The N users (loadgen's) plus two more: x000 (the abusing bouncer
    # user) and x001 (the victim of the strangers' flood).
    orig_setup = load_run.setup

    def setup(ctx_, largs_, loadgen_, log):
        ngircd = ctx_.ngircd()
        rows = load_run.plan(loadgen_, largs_)
        # The [listen] limits keep their defaults except unregistered
        # connections per address: the N users' clients all come from
        # 127.0.0.1 and 30% of them reconnect at once (a real host sees
        # them from many addresses, and 200 logins queue for one crypt thread),
        # so that one is 256 (default 16); the
        # abusers' addresses get the same 256.
        baton = load_run.LoadBaton(ctx_, ngircd, nsessions=largs_.bouncer_users,
                                   channels=("#lg0",),
                                   sessiond_opts={"backlog_lines": largs_.backlog_lines},
                                   listen_opts={"max_pending_per_ip": 256},
                                   handoff_timeout=60, rlimit_nofile=largs_.nofile)
        for s, (user, nick, chans) in zip(baton.sessions, rows):
            s.channels = chans
        baton.extra = [bl.Session("x000", baton.network, "xab000", ["#abuse"], "secret"),
                       bl.Session("x001", baton.network, "xvic001", ["#abuse"], "secret")]
        baton.sessions += baton.extra
        load_run.LoadBaton.network_opts = dict(load_run.GOVERNOR_OFF)
        baton.write_config()
        baton.start(wait=True, timeout=largs_.ready_timeout)
        ctx_.abuse_targets = (ngircd, baton)
        return ngircd, baton

    load_run.setup = setup
    abusers = []
    migrations = []

    def start_abuse():
        ngircd, baton = ctx.abuse_targets
        x000, x001 = baton.extra
        for name, fn in (("pm_flood", pm_flood(ngircd.port, x001.nick)),
                         ("target_flood", target_flood(baton.port, x000)),
                         ("client_swarm", client_swarm(baton.port, x000)),
                         ("password_guess", password_guess(
                             baton.port, x000, 0 if args.relentless else 2000)),
                         ("prelogin_flood", prelogin_flood(
                             baton.port, reconnect=args.relentless))):
            a = Abuse(name, fn)
            a.start()
            abusers.append(a)

    # migrations run from here (not loadgen's --exec) so rollbacks can be
    # interleaved; spread over the run, after the abuse has built up
    def migrate_loop():
        ngircd, baton = ctx.abuse_targets
        for i in range(args.migrations):
            time.sleep(args.duration / (args.migrations + 1))
            t = time.monotonic()
            if i % 2 == 0:
                rc, res = baton.upgrade(B, timeout=120)
                kind = "upgrade"
            else:
                rc, res = baton.rollback(timeout=120)
                kind = "rollback"
            migrations.append({"kind": kind, "exit": rc, "result": res.get("result"),
                               "freeze_ms": res.get("freeze_ms"),
                               "total_ms": res.get("total_ms"),
                               "wall_s": round(time.monotonic() - t, 2),
                               "reason": res.get("reason")})

    orig_popen = ctx.procs.popen

    def popen(argv, **kw):
        p = orig_popen(argv, **kw)
        if argv and argv[0] == loadgen:
            start_abuse()
            threading.Thread(target=migrate_loop, daemon=True).start()
        return p

    ctx.procs.popen = popen
    try:
        r = load_run.load_run(ctx, largs, A, B, loadgen)
    finally:
        load_run.setup = orig_setup
        ctx.procs.popen = orig_popen
        for a in abusers:
            a.stop_ev.set()
        for a in abusers:
            a.join(10)
    ngircd, baton = ctx.abuse_targets
    status = baton.try_status() or {}
    lg = r.get("loadgen") or {}
    d = lg.get("delivery") or {}
    c = lg.get("connections") or {}
    p99 = (d.get("latency_live") or {}).get("p99_ms")
    checks = {
        "migrations_committed": len(migrations) == args.migrations and
        all(m["result"] == "committed" for m in migrations),
        "nothing_lost": d.get("lost") == 0 and d.get("duplicated") == 0 and
        d.get("out_of_order") == 0 and d.get("expected", 0) > 0,
        "no_disconnects": c.get("disconnects") == 0,
        "p99_under_limit": p99 is not None and p99 < args.p99_ms,
        "worker_alive": baton.alive() and not status.get("crash_count"),
    }
    return {
        "kind": "abuse_run",
        "time_utc": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
        "build": "build/ (meson buildtype debugoptimized)",
        "params": {k: v for k, v in vars(args).items() if k != "results"},
        "migrations": migrations,
        "abuse": {a.name: dict(a.n, error=a.error) for a in abusers},
        "users": {"lines_sent": d.get("lines_sent"), "deliveries": d.get("received"),
                  "expected": d.get("expected"), "lost": d.get("lost"),
                  "duplicated": d.get("duplicated"), "out_of_order": d.get("out_of_order"),
                  "latency_live": d.get("latency_live"), "disconnects": c.get("disconnects")},
        "loadgen_exit": r.get("loadgen_exit"),
        "checks": checks,
        "pass": all(checks.values()),
    }


def summary(r, path):
    e = sys.stderr.write
    e("\n== abuse run: %d users + abusers, %s\n" % (r["params"]["bouncer_users"],
                                                    "PASS" if r["pass"] else "FAIL"))
    for m in r["migrations"]:
        e("  %-8s %s (exit %s) freeze %s ms total %s ms%s\n" % (
            m["kind"], m["result"], m["exit"], m["freeze_ms"], m["total_ms"],
            "" if not m.get("reason") else ": " + str(m["reason"])))
    for k, v in r["abuse"].items():
        e("  %-15s %s\n" % (k, v))
    u = r["users"]
    lat = u.get("latency_live") or {}
    e("  users: %s/%s deliveries, lost %s dup %s ooo %s, disconnects %s, latency p50 %s p99 %s ms\n"
      % (u["deliveries"], u["expected"], u["lost"], u["duplicated"], u["out_of_order"],
         u["disconnects"], lat.get("p50_ms"), lat.get("p99_ms")))
    e("  checks: %s\n  saved %s\n" % (r["checks"], path))


if __name__ == "__main__":
    sys.exit(main())
