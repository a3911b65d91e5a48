#!/usr/bin/env python3
"""One canary after another, each as soon as the one before has ended:
what baton-loadgen runs as the one --exec of bench/canary_run.py's
sequence_run (tests/integration/test_canary_faults.py).

    canary_chain.py PLAN.json

PLAN.json: {"batonctl": PATH, "config": PATH, "sessions": N, "clients": N,
"settle_timeout": S, "results": PATH, "steps": [{"cmd": SHELL COMMAND,
"not_before": S}, ...]}; not_before (optional) counts seconds from our own
start (a step that needs the busier part of the trace waits for it).

Before each step (and not before its not_before) it waits until `batonctl
status --json` shows one worker holding every session, every upstream connected and every client attached:
a canary's gates compare the cohort against the control, so each must start
level (a crash build's cohort reconnects first; a rolled-back canary's
worker must have exited). Then it runs the step (a `batonctl upgrade
--canary` or deploy/ci-upgrade.sh, which return when the canary ended and
write their own result files). A step's exit status is not ours: a
rolled-back canary exits 1 by design. Writes {"settle_s": [per step],
"started_s": [per step], "unsettled": [step indexes whose wait timed out,
with the last status]} to
"results" and exits 0, or 1 if a wait timed out (the step still runs).
Standard library only.
"""

import json
import subprocess
import sys
import time


def status(batonctl, config):
    try:
        p = subprocess.run([batonctl, "-c", config, "status", "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=10)
        return json.loads(p.stdout.decode() or "null")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def settled(st, sessions, clients):
    ws = (st or {}).get("workers") or []
    return (len(ws) == 1 and ws[0].get("sessions") == sessions
            and ws[0].get("upstreams_connected") == sessions
            and ws[0].get("clients") == clients)


def main():
    with open(sys.argv[1]) as f:
        plan = json.load(f)
    out = {"settle_s": [], "unsettled": [], "started_s": []}
    start = time.monotonic()
    for i, step in enumerate(plan["steps"]):
        wait = start + step.get("not_before", 0) - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        t0 = time.monotonic()
        end = t0 + plan["settle_timeout"]
        st = status(plan["batonctl"], plan["config"])
        while not settled(st, plan["sessions"], plan["clients"]):
            if time.monotonic() > end:
                out["unsettled"].append({"step": i, "status": st})
                print("canary_chain: step %d: not settled after %g s: %s"
                      % (i, plan["settle_timeout"], json.dumps(st)[:600]), file=sys.stderr)
                break
            time.sleep(0.1)
            st = status(plan["batonctl"], plan["config"])
        out["settle_s"].append(round(time.monotonic() - t0, 2))
        out["started_s"].append(round(time.monotonic() - start, 2))
        subprocess.run(step["cmd"], shell=True)
    with open(plan["results"], "w") as f:
        json.dump(out, f)
    return 1 if out["unsettled"] else 0


if __name__ == "__main__":
    sys.exit(main())
