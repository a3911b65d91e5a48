#!/usr/bin/env python3
"""bench/users_live.py: live user management at scale (issue 11 §4: "add
and remove 100 users while 1,000 sessions carry traffic, with 0 disconnects
of the other sessions").

The scenario of tests/integration/test_users.py (test_users_live) with
bigger numbers: N sessions with a client attached carry numbered traffic
through ngircd while `batonctl user add` + `network add` run for A new
users and `batonctl user del` for R users, one command after the other
(each edits the config file and reloads the running worker), and one
session's channels change. Pass: the N see no disconnect (no QUIT/JOIN of
their nicks on the network, no client closed, every line delivered exactly
once), the R QUIT with baton's reason, the A JOIN. Prints one JSON object
(wall time per batonctl edit: median, p99, max) and saves it to
bench/results/users-live-<N>.json.

    bench/users_live.py                          # 1,000 sessions, 100 + 100
    bench/users_live.py --sessions 200 --add 20 --remove 20
"""

import argparse
import datetime
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import batonlib as bl  # noqa: E402
import test_users  # noqa: E402


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p / 100.0 * len(v)))] if v else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--add", type=int, default=100)
    ap.add_argument("--remove", type=int, default=100)
    ap.add_argument("--rate", type=float, default=50.0,
                    help="client and network lines per second (each)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()
    ctx = bl.Context("users-live-%d" % args.sessions, keep=args.keep)
    t0 = bl.now()
    try:
        r = test_users.run(ctx, nattached=args.sessions, nremoved=args.remove,
                           nadded=args.add, rate=args.rate)
    finally:
        ctx.close()
    edits = [t * 1000 for t in r["edit_s"]]
    out = {"when": datetime.datetime.utcnow().isoformat() + "Z",
           "sessions": args.sessions, "added": args.add, "removed": args.remove,
           "edits": len(edits), "edit_ms_median": round(pct(edits, 50), 1),
           "edit_ms_p99": round(pct(edits, 99), 1), "edit_ms_max": round(max(edits), 1),
           "lines_sent": r["lines_sent"], "deliveries": r["deliveries"],
           "disconnects": 0, "total_s": round(bl.now() - t0, 1)}
    print(json.dumps(out))
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "users-live-%d.json" % args.sessions), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
