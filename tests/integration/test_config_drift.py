"""The founding incident, pinned: configuration tuned on the old host was
missing on the new one. A new worker must notice before it takes anything
over, say exactly what is missing, and leave the old worker serving."""

import re

import batonlib as bl
from batonlib import check
from test_faults import (assert_old_still_serving, stable_fd_count, start,
                         then_normal_upgrade, upgrade)


def test_session_missing_from_new_config(ctx):
    """The config the new worker loads lacks one [user U/N] section that the
    old worker serves: the new worker refuses that session while preparing
    (the chunk aborts with 'session U/N is not in this worker's config'),
    the upgrade is aborted, the old worker keeps every session, fd count
    unchanged, nothing lost; with the section restored the upgrade commits."""
    scen = start(ctx)
    b = scen.baton
    old_pid = b.worker_pid()
    fd_before = stable_fd_count(scen, old_pid)
    good = b.config_text()
    s = b.sessions[-1]
    bad = re.sub(r"\[user %s/%s\]\n(?:[^\[].*\n)*" % (re.escape(s.user), re.escape(s.network)),
                 "", good)
    check(bad != good, "harness: the session section was not removed")
    b.write_config(bad)
    try:
        rc, res = upgrade(scen, ctx.builds["b"])
    finally:
        b.write_config(good)
    assert_old_still_serving(scen, rc, res, old_pid, fd_before, "missing session")
    want = "session %s/%s is not in this worker's config" % (s.user, s.network)
    check(want in res.get("reason", ""), "reason %r does not say %r" % (res.get("reason"), want))
    then_normal_upgrade(scen)
    scen.verify(drain_timeout=30)
