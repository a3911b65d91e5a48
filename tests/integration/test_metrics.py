"""The metrics of a running supervisor pass `promtool check metrics`
(installed by scripts/install-deps from Debian's prometheus package), and
say what README "Metrics" promises: base units, build info of the
supervisor and of each live worker, per-worker families labelled {pid,
role, version}, the migration freeze histogram, the relay latency histogram
from each worker's HEALTH. And every log line names its program, pid and
version, so the old and the new worker of a migration can be told apart.

One bouncer user u000 with a client attached, a direct ngircd user 'dave'
talking in #chat (so relay latency has observations), one upgrade A -> B.
"""

import os
import re
import shutil
import subprocess
import urllib.request

import batonlib as bl
from batonlib import check

CHANNELS = ["#chat"]
# the supervisor asks every worker for HEALTH every 10 s (supervisor.c
# REFRESH_INTERVAL_S); a little slack over one period
HEALTH_WAIT_S = 25


def scrape(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        check(r.status == 200, "GET /metrics: HTTP %d" % r.status)
        ctype = r.headers.get("Content-Type", "")
        check(ctype.startswith("text/plain"), "Content-Type %r" % ctype)
        return r.read().decode()


def samples(text, name):
    """{labels-string: value} of every sample of `name` (exact name)."""
    out = {}
    for ln in text.splitlines():
        m = re.match(r"^%s(\{[^}]*\})? (\S+)$" % re.escape(name), ln)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


def labels(s):
    return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', s))


def promtool_check(ctx, text):
    promtool = shutil.which("promtool")
    check(promtool, "promtool not found: scripts/install-deps installs Debian's prometheus package")
    path = os.path.join(ctx.dir, "metrics.txt")
    with open(path, "w") as f:
        f.write(text)
    with open(path) as f:
        p = subprocess.run([promtool, "check", "metrics"], stdin=f, capture_output=True,
                           text=True, timeout=30)
    bl.log("promtool check metrics: exit %d, output %r" % (p.returncode, p.stdout + p.stderr))
    check(p.returncode == 0 and not (p.stdout + p.stderr).strip(),
          "promtool check metrics: exit %d:\n%s%s\n(text in %s)"
          % (p.returncode, p.stdout, p.stderr, path))


def test_metrics_pass_promtool_after_upgrade(ctx):
    bB = ctx.builds["b"].require()
    vA, vB = ctx.builds["a"].version, bB.version
    mport = bl.free_port()
    ng = ctx.ngircd()
    b = bl.Baton(ctx, ng, nsessions=1, channels=CHANNELS,
                 supervisor_opts={"metrics": "127.0.0.1:%d" % mport})
    w = bl.Watcher(ctx.loop, ng, CHANNELS, watch=[s.nick for s in b.sessions])
    b.start(wait=False)
    bl.pump_ready(ctx, b)
    w.wait_present([s.nick for s in b.sessions], timeout=30)
    dave = bl.direct_user(ctx.loop, ng, "dave", CHANNELS)
    c = bl.bouncer_client(ctx.loop, b, b.sessions[0], client="laptop")
    old_pid = b.worker_pid()

    # Before any migration: valid too, and no freeze observed yet.
    text = scrape(mport)
    promtool_check(ctx, text)
    check(samples(text, "baton_migration_freeze_seconds_count") == {"": 0.0},
          "freeze count before any migration: %r" % samples(text, "baton_migration_freeze_seconds_count"))

    rc, res = b.upgrade(bB)
    check(rc == 0 and res.get("result") == "committed", "upgrade: exit %d, %r" % (rc, res))
    new_pid = b.worker_pid()
    bl.wait_for(lambda: not bl.pid_alive(old_pid), 10, what="old worker to exit")

    # Traffic through the new worker, then wait for its HEALTH to show.
    k = {"n": 0}

    def tick():
        k["n"] += 1
        dave.privmsg("#chat", "<<dave:%d>> line" % k["n"])
        return k["n"] < 40
    ctx.loop.every(0.05, tick)
    ctx.loop.run_for(2.5)
    end = bl.now() + HEALTH_WAIT_S
    while True:
        text = scrape(mport)
        if samples(text, "baton_relay_latency_seconds_count") or bl.now() > end:
            break
        ctx.loop.run_for(0.5)
    promtool_check(ctx, text)

    # Base units only: no _ms, _millis or _milliseconds anywhere.
    check(not re.search(r"^baton_\w*_(ms|millis|milliseconds)\b", text, re.M),
          "a metric in ms:\n%s" % text)

    # Build info: the supervisor (A) and exactly the live worker (B).
    bi = {frozenset(labels(k).items()): v for k, v in samples(text, "baton_build_info").items()}
    want_sup = frozenset({"component": "supervisor", "version": vA}.items())
    want_wk = frozenset({"component": "sessiond", "pid": str(new_pid), "version": vB,
                         "role": "active"}.items())
    check(bi == {want_sup: 1.0, want_wk: 1.0}, "baton_build_info: %r" % bi)

    # Per-worker families carry {pid, role, version}.
    ws = {labels(k)["pid"]: v for k, v in samples(text, "baton_worker_sessions").items()}
    check(ws == {str(new_pid): 1.0}, "baton_worker_sessions: %r" % ws)
    up = samples(text, "baton_worker_up")
    check(list(up.values()) == [1.0] and labels(list(up)[0]) ==
          {"pid": str(new_pid), "role": "active", "version": vB}, "baton_worker_up: %r" % up)

    # The upgrade is in the freeze histogram (in seconds) and the counter.
    cnt = samples(text, "baton_migration_freeze_seconds_count")
    check(cnt == {"": 1.0}, "freeze count %r" % cnt)
    fsum = samples(text, "baton_migration_freeze_seconds_sum")[""]
    check(abs(fsum - res["freeze_ms"] / 1e3) < 1e-6,
          "freeze sum %r s, result freeze_ms %r" % (fsum, res["freeze_ms"]))
    inf = samples(text, "baton_migration_freeze_seconds_bucket")
    check(inf.get('{le="+Inf"}') == 1.0, "freeze buckets %r" % inf)
    mt = samples(text, "baton_migrations_total")
    check(mt.get('{result="committed"}') == 1.0, "baton_migrations_total %r" % mt)

    # Relay latency from the worker's HEALTH, or (only while the worker
    # does not implement HEALTH_REQUEST) no series at all, never zeros.
    lat = samples(text, "baton_relay_latency_seconds_count")
    log = b.log_text()
    if not lat:
        # sessiond/control_channel.c of a build without HEALTH logs this once
        unanswered = "unexpected control message type 11" in log
        check(unanswered, "no relay latency histogram after %d s, and the worker did not "
              "say it ignores HEALTH_REQUEST:\n%s" % (HEALTH_WAIT_S, text))
        check("baton_relay_latency_seconds_bucket" not in text,
              "relay latency buckets without a HEALTH answer")
        bl.log("NOTE: the worker does not answer HEALTH_REQUEST yet: no relay latency histogram")
    else:
        check(len(lat) == 1 and labels(list(lat)[0]).get("pid") == str(new_pid),
              "relay latency series %r" % lat)
        buckets = samples(text, "baton_relay_latency_seconds_bucket")
        check(len(buckets) == 14, "relay latency buckets %r" % buckets)

    # Logs: the old and the new worker are told apart by pid and version.
    check(re.search(r"^\S+ baton-sessiond\[%d\] %s (INFO|WARN|ERROR|DEBUG) "
                    % (old_pid, re.escape(vA)), log, re.M),
          "no log line of the old worker with pid %d and version %s" % (old_pid, vA))
    check(re.search(r"^\S+ baton-sessiond\[%d\] %s (INFO|WARN|ERROR|DEBUG) "
                    % (new_pid, re.escape(vB)), log, re.M),
          "no log line of the new worker with pid %d and version %s" % (new_pid, vB))
    check(re.search(r"^\S+ baton-supervisor\[%d\] %s INFO " % (b.proc.pid, re.escape(vA)),
                    log, re.M), "no supervisor log line with its pid and version")
    check(not c.closed, "client closed: %s" % c.close_reason)
