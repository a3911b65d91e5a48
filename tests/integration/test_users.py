"""Live user management (issue 11 §4): `batonctl user|network|reload` apply
the config file to the running worker without an upgrade and without
touching the other sessions.

With 20 sessions carrying traffic (each with a client attached): 5 users are
added and 5 removed and one session's channels changed through batonctl,
one command after the other; the 20 see no disconnect (no QUIT/JOIN of their
nicks on the network, no client closed, every numbered line delivered
exactly once); the removed sessions QUIT from the network with baton's
reason; the new ones JOIN their channels; the changed one PARTs and JOINs
only what changed. An edit that would make the config invalid and a reload
of a broken file are refused and change nothing. The file keeps its
comments and the sections nobody touched, byte for byte."""

import re
import subprocess

import batonlib as bl
from batonlib import check

NATTACHED = 20
NREMOVED = 5
NADDED = 5


def ctl(scen, *args, timeout=60, times=None):
    """batonctl ARGS --json while traffic flows; (rc, parsed result).
    times: a list the command's wall time (s) is appended to."""
    t0 = bl.now()
    p = scen.baton.ctl_async(*(list(args) + ["--json"]))
    scen.loop.wait_process(p, timeout=timeout)
    rc, data, out, err = scen.baton.finish_ctl(p)
    if times is not None:
        times.append(bl.now() - t0)
    return rc, (data if data is not None else {"_stdout": out, "_stderr": err})


def section(text, name):
    m = re.search(r"^\[%s\]\n(?:[^\[\n].*\n)*" % re.escape(name), text, re.M)
    return m.group(0) if m else None


def test_users_live(ctx):
    run(ctx)


def run(ctx, nattached=NATTACHED, nremoved=NREMOVED, nadded=NADDED, rate=20.0):
    """The scenario; bench/users_live.py runs it at 1,000 sessions. Returns
    the wall time of every batonctl edit (s) and the traffic verified."""
    NATTACHED, NREMOVED, NADDED = nattached, nremoved, nadded
    times = []
    channels = ["#c1", "#c2", "#c3"]
    # sessions u000..u019 attached and carrying traffic; u020..u024 to be
    # removed; u025 gets its channels changed (neither has a client)
    scen = bl.LoadScenario(ctx, nsessions=NATTACHED + NREMOVED + 1, nattached=NATTACHED,
                           channels=channels, nnet=3)
    scen.setup()
    b = scen.baton
    loop = scen.loop
    removed = b.sessions[NATTACHED:NATTACHED + NREMOVED]
    changed = b.sessions[NATTACHED + NREMOVED]
    new = [bl.Session("n%04d" % i, b.network, "nn%04d" % i, ["#c1", "#c4"], "fresh")
           for i in range(NADDED)]
    # The membership events of these nicks are expected: a watcher of its
    # own records them; the scenario's watcher keeps watching the 20.
    special = [s.nick for s in removed] + [changed.nick] + [s.nick for s in new]
    for n in special:
        scen.watcher.watch.discard(n.lower())
    w2 = bl.Watcher(loop, scen.ngircd, channels + ["#c4"], watch=special, nick="watcher2")
    # no PRIVMSG to nicks about to leave
    b.sessions[:] = b.sessions[:NATTACHED] + [changed]
    scen.nicks = [s.nick for s in b.sessions]
    scen.start_fixed_traffic(client_rate=rate, net_rate=rate)
    loop.run_for(1.0)
    with open(b.config) as f:
        before = f.read()

    # refused: an edit naming a network the config does not have
    rc, res = ctl(scen, "network", "add", "u001/nosuchnet", "nick=x")
    check(rc == 1 and res.get("result") == "refused", "bad edit: rc %d %r" % (rc, res))
    check(any("nosuchnet" in p for p in res.get("problems", [])),
          "bad edit: problems %r" % res.get("problems"))
    check(not any(".baton.ini." in p for p in res.get("problems", [])),
          "the temporary file's name leaks into the problems: %r" % res.get("problems"))
    with open(b.config) as f:
        check(f.read() == before, "a refused edit changed the file")
    # refused: a reload of a broken file (by hand), nothing applied
    with open(b.config, "a") as f:
        f.write("[user u001/net]\nnick = dup\n")
    rc, res = ctl(scen, "reload")
    check(rc == 1 and res.get("result") == "refused" and res.get("problems"),
          "broken file: rc %d %r" % (rc, res))
    b.write_config(before)

    # 5 users added, each with a session (two commands, two reloads each)
    h = bl.password_hash("fresh")
    for s in new:
        rc, res = ctl(scen, "user", "add", s.user, "--password-hash", h, times=times)
        check(rc == 0 and res.get("result") == "applied"
              and "user %s" % s.user in res.get("added", []), "user add: rc %d %r" % (rc, res))
        rc, res = ctl(scen, "network", "add", "%s/%s" % (s.user, s.network),
                      "nick=%s" % s.nick, "username=%s" % s.user,
                      "realname=new user", "channels=%s" % " ".join(s.channels),
                      times=times)
        check(rc == 0 and "user %s/%s" % (s.user, s.network) in res.get("added", []),
              "network add: rc %d %r" % (rc, res))
    # 5 users removed
    for s in removed:
        rc, res = ctl(scen, "user", "del", s.user, times=times)
        check(rc == 0 and "user %s/%s" % (s.user, s.network) in res.get("removed", []),
              "user del: rc %d %r" % (rc, res))
    # one session's channels: #c1 #c2 #c3 -> #c1 #c4
    rc, res = ctl(scen, "network", "set", "%s/%s" % (changed.user, changed.network),
                  "channels=#c1 #c4")
    want = "user %s/%s: channels +#c4 -#c2 -#c3" % (changed.user, changed.network)
    check(rc == 0 and want in res.get("changed", []), "network set: rc %d %r" % (rc, res))

    def seen(cmd, nick, chan=None, text=None):
        return any(e[1] == cmd and e[2] == nick.lower() and
                   (chan is None or chan.lower() in e[3].lower()) and
                   (text is None or text in e[3]) for e in w2.events)

    loop.run_until(lambda: all(seen("QUIT", s.nick, text="Removed from the bouncer")
                               for s in removed)
                   and all(seen("JOIN", s.nick, "#c1") and seen("JOIN", s.nick, "#c4")
                           for s in new)
                   and seen("PART", changed.nick, "#c2") and seen("PART", changed.nick, "#c3")
                   and seen("JOIN", changed.nick, "#c4"),
                   20 + nadded // 5, "removed sessions QUIT, new ones JOIN, the changed one PART/JOIN")
    check(not seen("PART", changed.nick, "#c1") and not seen("QUIT", changed.nick),
          "the changed session left more than it should: %r" % w2.events)

    # a new user logs in; a password changed with --password-stdin counts
    c = bl.bouncer_client(loop, b, new[0])
    c.send("QUIT")
    p = subprocess.run([b.build.batonctl, "-c", b.config, "user", "passwd", new[0].user,
                        "--password-stdin", "--json"], input="changed\n",
                       capture_output=True, text=True, timeout=60)
    check(p.returncode == 0, "user passwd: %s %s" % (p.stdout, p.stderr))
    new[0].password = "changed"
    c = bl.bouncer_client(loop, b, new[0])
    c.send("QUIT")
    with open(b.config) as f:
        after = f.read()
    check("$6$" not in section(after, "user %s" % new[0].user)
          and "changed" not in section(after, "user %s" % new[0].user),
          "the password is not stored as a yescrypt hash: %r"
          % section(after, "user %s" % new[0].user))

    st = b.status()
    sessions = sum(w.get("sessions", 0) for w in st.get("workers", []))
    check(sessions == NATTACHED + 1 + NADDED, "status: %d sessions" % sessions)
    # the file: its comment and the untouched sections as they were
    check(after.startswith("; written by tests/integration/batonlib.py\n"),
          "the comment at the top is gone")
    for s in b.sessions[:NATTACHED]:
        for name in ("user %s" % s.user, "user %s/%s" % (s.user, s.network)):
            check(section(after, name) == section(before, name),
                  "section [%s] changed: %r" % (name, section(after, name)))
    sent, got = scen.verify(drain_timeout=30 + nattached // 10)
    return {"edits": len(times), "edit_s": times, "lines_sent": sent,
            "deliveries": got, "sessions": sessions}


def test_reload_then_upgrade(ctx):
    """A session added by a reload migrates like the others (an upgrade to
    build B commits with it, and the new worker keeps it); SIGHUP to the
    supervisor reloads a file edited by hand (the removed session QUITs,
    its client gets the ERROR)."""
    ctx.builds["b"].require()
    ngircd = ctx.ngircd()
    b = bl.Baton(ctx, ngircd, nsessions=2, channels=["#r"])
    w = bl.Watcher(ctx.loop, ngircd, ["#r"], watch=["bn000", "bn001", "nn9"], nick="watch")
    b.start(wait=False)
    bl.pump_ready(ctx, b, nsessions=2)
    s = bl.Session("n9", b.network, "nn9", ["#r"], "pw9")
    rc, _, out, err = b.ctl("user", "add", s.user, "--password-hash", bl.password_hash("pw9"))
    check(rc == 0, "user add: %s %s" % (out, err))
    rc, _, out, err = b.ctl("network", "add", "%s/%s" % (s.user, s.network),
                            "nick=nn9", "channels=#r")
    check(rc == 0 and "added" in out and "user n9/net" in out, "network add: %s %s" % (out, err))
    ctx.loop.run_until(lambda: any(e[1] == "JOIN" and e[2] == "nn9" for e in w.events),
                       15, "the new session joining")
    c = bl.bouncer_client(ctx.loop, b, s)
    ctx.loop.run_for(0.3)
    t0 = bl.now()
    rc, res = b.upgrade(ctx.builds["b"])
    check(rc == 0 and res.get("result") == "committed", "upgrade: rc %d %r" % (rc, res))
    ctx.loop.run_for(0.5)
    check(not c.closed, "the new session's client was closed by the upgrade: %s" % c.close_reason)
    check(not w.events_between(t0), "the network saw the upgrade: %r" % w.events_between(t0))
    # by hand + SIGHUP: the session goes
    with open(b.config) as f:
        text = f.read()
    with open(b.config, "w") as f:
        f.write(re.sub(r"\[user n9/net\]\n(?:[^\[].*\n)*", "", text))
    b.proc.send_signal(1)  # SIGHUP
    ctx.loop.run_until(lambda: any(e[1] == "QUIT" and e[2] == "nn9" and
                                   "Removed from the bouncer" in e[3] for e in w.events),
                       15, "SIGHUP: the removed session QUITs")
    ctx.loop.run_until(lambda: c.closed, 10, "its client closed")
    check(any("ERROR :Closing link: session removed" in ln for _, ln in c.lines),
          "client lines: %r" % [ln for _, ln in c.lines[-3:]])
    check("reload applied" in b.log_text(), "the log does not say the reload applied")
