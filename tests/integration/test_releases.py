"""Releases on disk and their history (issue 9, items 6-8;
supervisor/releases.h): every release that serves is installed under
state_dir/releases/<version>/, state_dir/releases.json records its state
(serving, good, bad, candidate), rollback goes to the last good release
instead of toggling, the history survives a supervisor restart, and a
release that crashes within [canary] rollback_window after an upgrade made
it the serving worker is replaced by the previous good release and marked
bad, which upgrade then refuses unless --force."""

import json
import os
import stat
import subprocess

import batonlib as bl
from batonlib import check

NSESSIONS = 2


def start(ctx, **kw):
    ctx.builds["b"].require()
    n = ctx.ngircd()
    b = bl.Baton(ctx, n, nsessions=NSESSIONS, **kw)
    b.start()
    return b


def state_dir(b):
    return os.path.join(b.dir, "state")


def installed(b, version):
    return os.path.join(state_dir(b), "releases", version, "baton-sessiond")


def releases(b):
    rc, data, out, err = b.ctl("releases", "--json", timeout=30)
    check(rc == 0 and isinstance(data, dict), "releases --json: exit %d %r %r" % (rc, out, err))
    return data


def by_version(data):
    return {r["version"]: r for r in data["releases"]}


def states(b):
    return {v: r["state"] for v, r in by_version(releases(b)).items()}


def ctl_json(b, *args):
    rc, data, out, err = b.ctl(*args, "--json", timeout=120)
    return rc, (data if data is not None else {"_stdout": out, "_stderr": err})


def committed(rc, res, what):
    check(rc == 0 and res.get("result") == "committed",
          "%s: exit %d, %r" % (what, rc, res))


def refused(rc, res, what, pattern):
    check(rc == 1 and res.get("refused") is True and res.get("result") == "aborted",
          "%s: want refused (exit 1), got exit %d %r" % (what, rc, res))
    check(pattern in (res.get("reason") or ""),
          "%s: reason %r does not say %r" % (what, res.get("reason"), pattern))


def crashing_copy(ctx, build, delay=4):
    """A 'release' that serves like build B and is killed (SIGKILL) `delay`
    seconds after it starts: a shell wrapper whose background child kills
    the pid the real worker inherits through exec (fd 3, the control
    socket, closed in that child)."""
    path = os.path.join(ctx.dir, "crashing-sessiond")
    with open(path, "w") as f:
        f.write("#!/bin/sh\n(sleep %d; kill -9 $$) 3>&- >/dev/null 2>&1 &\nexec %s \"$@\"\n"
                % (delay, build.sessiond))
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def wait_serving(b, version, timeout=60):
    """Until one worker of `version` serves every session again."""
    def ok():
        st = b.try_status()
        ws = (st or {}).get("workers") or []
        return (len(ws) == 1 and ws[0].get("version") == version
                and ws[0].get("sessions") == NSESSIONS and st)
    bl.wait_for(ok, timeout, what="a worker of %s serving" % version)
    return b.status()


def test_history_rollback_and_restart(ctx):
    """A -> B, rollback (to A: B is a candidate again), rollback again
    (refused: no good release, it does not flip back to B), upgrade to B,
    upgrade to B again (how config is applied: the rollback target stays A),
    the listing (newest first, binaries under releases/), then a supervisor
    restart: the history is still there and rollback knows where to go; a
    corrupt releases.json is reported by --check (a warning: the service
    must still start) and rebuilt at start."""
    A, B = ctx.builds["a"], ctx.builds["b"]
    vA, vB = A.version, B.version
    b = start(ctx)
    data = releases(b)
    check(data["serving"] == vA and data["rollback_target"] is None,
          "at start: %r" % data)
    check(by_version(data)[vA]["binary"] == installed(b, vA)
          and os.access(installed(b, vA), os.X_OK), "A not installed: %r" % data)

    rc, res = ctl_json(b, "upgrade", B.sessiond)
    committed(rc, res, "upgrade A -> B")
    check(res.get("release_from") == vA and res.get("release_to") == vB,
          "upgrade release_from/to: %r" % res)
    check(states(b) == {vA: "good", vB: "serving"}, "after the upgrade: %r" % states(b))
    check(os.access(installed(b, vB), os.X_OK), "B not copied to releases/")

    rc, res = ctl_json(b, "rollback")
    committed(rc, res, "rollback B -> A")
    check(res.get("kind") == "rollback" and res["to"]["version"] == vA
          and res.get("release_from") == vB and res.get("release_to") == vA,
          "rollback result: %r" % res)
    check(b.worker()["binary"] == installed(b, vA),
          "rollback started %r, not the installed release" % b.worker()["binary"])
    check(states(b) == {vA: "serving", vB: "candidate"}, "after the rollback: %r" % states(b))

    pid = b.worker_pid()
    rc, res = ctl_json(b, "rollback")
    refused(rc, res, "second rollback", "no good release")
    check(b.worker_pid() == pid and b.version() == vA, "second rollback touched the worker")
    # human output: exit 1 and the reason on stderr
    rc, _, out, err = b.ctl("rollback")
    check(rc == 1 and "no good release" in err, "rollback text: %d %r %r" % (rc, out, err))

    rc, res = ctl_json(b, "upgrade", B.sessiond)
    committed(rc, res, "upgrade to B again")
    rc, res = ctl_json(b, "upgrade", B.sessiond)
    committed(rc, res, "upgrade B -> B (config apply)")
    check(res.get("release_from") == vB and res.get("release_to") == vB, "%r" % res)
    data = releases(b)
    check(data["serving"] == vB and data["rollback_target"] == vA,
          "the same-binary upgrade wiped the rollback target: %r" % data)
    check([r["version"] for r in data["releases"]][0] == vB, "not newest first: %r" % data)
    rc, _, out, err = b.ctl("releases")
    check(rc == 0 and vA in out and vB in out and "serving" in out and "good" in out,
          "releases text: %d %r %r" % (rc, out, err))
    st = b.status()
    check(st.get("release") == vB and st.get("rollback_target") == vA
          and st.get("previous_binary") == installed(b, vA), "status: %r" % st)

    # supervisor restart: the configured binary (A) serves, B was left good
    b.stop()
    b.start()
    data = releases(b)
    check(data["serving"] == vA and data["rollback_target"] == vB and not data["problem"],
          "after a supervisor restart: %r" % data)
    rc, res = ctl_json(b, "rollback")
    committed(rc, res, "rollback after the restart")
    check(res["to"]["version"] == vB and b.worker()["binary"] == installed(b, vB),
          "rollback after restart went to %r" % res.get("to"))

    # corrupt history: --check says so; the supervisor starts and rebuilds
    b.stop()
    with open(os.path.join(state_dir(b), "releases.json"), "w") as f:
        f.write('{"format":1,"releases":[{"version":')
    out = subprocess.run([A.supervisor, "-c", b.config, "--check"],
                         capture_output=True, text=True, timeout=60)
    # a warning, not a problem: ExecStartPre must not keep the service down
    check(out.returncode == 0 and "warning: release history" in out.stdout
          and "corrupt" in out.stdout,
          "--check on a corrupt history: %d %r %r" % (out.returncode, out.stdout, out.stderr))
    b.start()
    data = releases(b)
    check(data["problem"] and "corrupt" in data["problem"], "problem not reported: %r" % data)
    check(states(b) == {vA: "serving", vB: "candidate"}, "rebuilt history: %r" % states(b))
    check("corrupt" in b.log_text(), "corrupt history not logged")
    with open(os.path.join(state_dir(b), "releases.json")) as f:
        check(json.load(f)["releases"], "releases.json not rewritten")
    check(os.path.exists(os.path.join(state_dir(b), "releases.json.corrupt")),
          "corrupt file not kept aside")


def test_auto_rollback_after_crash(ctx):
    """An upgrade to a build that is SIGKILLed 4 s after it starts commits;
    when it crashes (within rollback_window) the supervisor restarts the
    previous good release (A's installed binary, not the crashing one),
    marks the crashing release bad with the exit status, logs it as an
    error and counts it in status. Upgrading to it again is refused (exit
    1, reason) unless --force, and a forced one that crashes again is
    rolled back again. The real B (same version, another binary) is
    refused too: one version, one binary."""
    A, B = ctx.builds["a"], ctx.builds["b"]
    vA, vB = A.version, B.version
    b = start(ctx)
    crashing = crashing_copy(ctx, B)

    rc, res = ctl_json(b, "upgrade", crashing)
    committed(rc, res, "upgrade to the crashing build")
    check(res["to"]["version"] == vB, "%r" % res)
    bad_pid = res["to"]["pid"]
    bl.wait_for(lambda: not bl.pid_alive(bad_pid), 20, what="the crashing worker to die")
    st = wait_serving(b, vA)
    w = st["workers"][0]
    check(w["binary"] == installed(b, vA), "restarted %r, not release %s" % (w["binary"], vA))
    check(st.get("crash_count") == 1 and st.get("auto_rollbacks") == 1,
          "crashes %r, auto_rollbacks %r" % (st.get("crashes"), st.get("auto_rollbacks")))
    ar = st.get("last_auto_rollback") or {}
    check(ar.get("from") == vB and ar.get("to") == vA and "signal 9" in (ar.get("reason") or "")
          and ar.get("time"), "last_auto_rollback: %r" % ar)
    check("ERROR" in "".join(ln for ln in b.log_text().splitlines()
                             if "automatic rollback" in ln),
          "automatic rollback not logged at error level:\n%s" % b.log_tail())
    data = releases(b)
    rel = by_version(data)
    check(rel[vB]["state"] == "bad" and "signal 9" in (rel[vB]["reason"] or ""),
          "crashing release: %r" % rel[vB])
    check(rel[vA]["state"] == "serving", "A: %r" % rel[vA])

    rc, res = ctl_json(b, "upgrade", crashing)
    refused(rc, res, "upgrade to the bad release", "marked bad")
    rc, _, out, err = b.ctl("upgrade", crashing)
    check(rc == 1 and "marked bad" in err, "text: %d %r %r" % (rc, out, err))
    rc, res = ctl_json(b, "upgrade", B.sessiond)
    refused(rc, res, "the real B under the same version", "another binary")
    check(b.version() == vA, "a refused upgrade changed the worker")
    # the CI script fails the job with batonctl's exit code and the reason
    env = dict(os.environ, BATONCTL=A.batonctl)
    env.pop("GITHUB_ACTIONS", None)
    out = subprocess.run(["sh", os.path.join(bl.REPO_ROOT, "deploy", "ci-upgrade.sh"),
                          "-c", b.config, crashing], capture_output=True, text=True,
                         timeout=120, env=env)
    check(out.returncode == 1 and "FAILED" in out.stderr and "marked bad" in out.stderr
          and json.loads(out.stdout)["refused"] is True,
          "ci-upgrade.sh on a bad release: %d %r %r" % (out.returncode, out.stdout, out.stderr))

    rc, res = ctl_json(b, "upgrade", crashing, "--force")
    committed(rc, res, "forced upgrade to the bad release")
    check(states(b)[vB] == "serving", "forced release: %r" % states(b))
    bl.wait_for(lambda: not bl.pid_alive(res["to"]["pid"]), 20, what="the forced worker to die")
    st = wait_serving(b, vA)
    check(st.get("auto_rollbacks") == 2 and st["workers"][0]["binary"] == installed(b, vA),
          "second crash: %r" % st)
    check(states(b) == {vA: "serving", vB: "bad"}, "after the second crash: %r" % states(b))
