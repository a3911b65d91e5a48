#!/usr/bin/env python3
"""scripts/demo: a live upgrade and a rollback under traffic, summarized.

Uses the integration-test harness (tests/integration/batonlib.py): a real
ngircd on loopback, baton-supervisor with N sessions, attached clients and
network users exchanging numbered lines, and the same exactly-once checks as
the tests. By default every baton connection is TLS (upstreams to ngircd's
TLS port, verified against a throw-away CA; clients on baton's ircs
listener), so the summary shows live TLS connections crossing the upgrade.
Options: --sessions N --clients N --plain (no TLS) --keep (keep the temp dir).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "tests", "integration"))
import batonlib as bl  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--clients", type=int, default=40)
    ap.add_argument("--plain", action="store_true", help="plaintext instead of TLS")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    ctx = bl.Context("demo", keep=args.keep)
    ok = False
    try:
        A = ctx.builds["a"].require()
        B = ctx.builds["b"].require()
        tls_kw = {}
        if not args.plain:
            import tlslib
            pki = tlslib.pki(ctx)
            tls_kw = dict(
                ngircd_factory=lambda c: tlslib.NgircdTls(c, pki).start(),
                baton_kw_for=lambda ng: dict(
                    ircs=(pki.server.cert, pki.server.key), upstream_port=ng.tls_port,
                    network_opts={"tls": "yes", "tls_ca": pki.ca_cert,
                                  "connects_per_minute": 6000, "connect_burst": 1000,
                                  "max_connections_per_ip": 1000}),
                client_tls=pki.client_context(verify=True))
        print("network: ngircd on 127.0.0.1; baton: %d sessions, %d clients attached; %s"
              % (args.sessions, args.clients,
                 "plaintext" if args.plain else
                 "TLS everywhere (upstreams to ngircd's TLS port, clients on the ircs listener)"))
        scen = bl.LoadScenario(ctx, nsessions=args.sessions, nattached=args.clients, nnet=4,
                               **tls_kw)
        scen.setup(ready_timeout=120)
        b, loop = scen.baton, scen.loop
        print("running: version %s, worker pid %s" % (b.version(), b.worker_pid()))
        if not args.plain:
            c0 = next(iter(scen.clients.values())).conn
            v = c0.tls_version()
            print("client TLS session: %s %s (baton's own record layer after OpenSSL's handshake)"
                  % (v[0], v[1]) if v else "client TLS session: none?")
        scen.start_fixed_traffic(client_rate=20.0, net_rate=20.0, pm_ratio=0.4)
        loop.run_for(3.0)

        ops = []
        for label, args in (("upgrade to %s" % B.version, ("upgrade", B.sessiond, "--json")),
                            ("rollback to %s" % A.version, ("rollback", "--json"))):
            proc = b.ctl_async(*args)
            loop.wait_process(proc, timeout=120)
            rc, res, _, err = b.finish_ctl(proc)
            res = res or {"result": "error", "reason": err.strip()}
            ops.append((label, rc, res))
            print("%-22s -> %s (exit %d): %s sessions, %s fds, freeze %.2f ms, total %.1f ms%s"
                  % (label, res.get("result"), rc, res.get("sessions"), res.get("fds"),
                     res.get("freeze_ms") or 0, res.get("total_ms") or 0,
                     (", reason: " + res["reason"]) if res.get("reason") else ""))
            loop.run_for(3.0)
        try:
            sent, got = scen.verify(drain_timeout=30)
            problems = []
        except AssertionError as e:
            sent = len(scen.ledger.sent)
            got = sum(len(v) for v in scen.ledger.received.values())
            problems = str(e).splitlines()
        print("traffic: %d numbered lines sent, %d deliveries checked" % (sent, got))
        print("now running: version %s, worker pid %s" % (b.version(), b.worker_pid()))
        if problems:
            print("PROBLEMS:")
            for p in problems:
                print("  " + p)
        else:
            print("result: no connection closed, no line lost, duplicated or reordered")
        ok = not problems and all(rc == 0 for _, rc, _ in ops)
    finally:
        ctx.close(failed=not ok)
        if not ok:
            print("logs kept in %s" % ctx.dir)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
