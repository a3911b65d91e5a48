"""Defaults and messages for many users (issue 11 §5).

A new operator puts more users of one network into baton than its reconnect
governor lets connect from one source address (`max_connections_per_ip`,
default 3). Before this was fixed, the fourth user's client was told
"net is disconnected; reconnecting" and nothing else, for ever. Now the
waiting users are told why they wait and what the operator can do (bind
addresses, an exemption from the network), `batonctl status --json` says
the same per network, and when the network itself refuses (ngIRCd's
MaxConnectionsIP lower than baton's limit) the source address backs off
instead of hammering the network."""

import json
import re
import subprocess
import time

import batonlib as bl
from batonlib import check


def notices(c):
    return [ln for _, ln in c.lines if " NOTICE " in ln]


def network_status(b, name="net"):
    w = b.worker()
    for n in w.get("networks") or []:
        if n.get("network") == name:
            return n
    raise AssertionError("no network %s in status: %s" % (name, w))


def wait_registered(b, want, timeout=30):
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        st = b.try_status()
        ws = (st or {}).get("workers") or []
        if len(ws) == 1 and ws[0].get("upstreams_connected", 0) >= want:
            return ws[0]
        time.sleep(0.1)
    raise AssertionError("not %d registered after %d s: %s\n%s"
                         % (want, timeout, st, b.log_tail()))


def test_fourth_user_told_why_it_waits(ctx):
    """4 users of one network with baton's default governor limits (one
    source address, max_connections_per_ip 3) and an ngIRCd without a
    per-IP limit: 3 connect, the 4th waits. Its client is told that every
    slot is in use and what the operator can do; status --json shows the
    network with waiting 1, wait_reason "slots", capacity 3; the text
    status prints the advice too."""
    ng = ctx.ngircd()
    b = bl.Baton(ctx, ng, nsessions=4, channels=("#many",), network_opts={})
    # --check says so before anyone waits: a warning (exit 0), and in JSON
    out = subprocess.run([b.build.supervisor, "-c", b.config, "--check"],
                         capture_output=True, text=True, timeout=60)
    check(out.returncode == 0 and "4 sessions but only 3 can connect at once" in out.stdout
          and "check: network net: 4 sessions, 3 can connect at once" in out.stdout,
          "--check: rc=%d\n%s%s" % (out.returncode, out.stdout, out.stderr))
    out = subprocess.run([b.build.supervisor, "-c", b.config, "--check", "--json"],
                         capture_output=True, text=True, timeout=60)
    doc = json.loads(out.stdout)
    net = doc["networks"][0]
    check(out.returncode == 0 and doc["ok"] and net["network"] == "net"
          and net["capacity"] == 3 and net["can_connect"] == 3 and net["waiting"] == 1
          and any("raise max_connections_per_ip" in w for w in doc["warnings"]),
          "--check --json: rc=%d\n%s" % (out.returncode, out.stdout))
    b.start(wait=False)
    wait_registered(b, 3)
    time.sleep(1.0)  # the 4th would have connected by now if it could
    w = b.worker()
    check(w["upstreams_connected"] == 3 and w["upstreams_waiting"] == 1,
          "want 3 connected, 1 waiting: %s" % w)
    n = network_status(b)
    check(n["sessions"] == 4 and n["connected"] == 3 and n["waiting"] == 1,
          "network counts: %s" % n)
    check(n["capacity"] == 3 and n["addresses"] == 1 and n["max_connections_per_ip"] == 3,
          "network limits: %s" % n)
    check(n["wait_reason"] == "slots", "wait_reason: %s" % n)
    check(n["advice"] and "bind" in n["advice"] and "exemption" in n["advice"],
          "advice: %s" % n)

    waiting = [s for s in b.sessions if s.user == "u003"][0]
    c = bl.bouncer_client(ctx.loop, b, waiting, wait=False)
    ctx.loop.run_until(lambda: c.closed or any("Waiting for a connection slot" in ln
                                               for ln in notices(c)),
                       10, "the waiting user's NOTICE")
    text = [ln for ln in notices(c) if "Waiting for a connection slot" in ln][0]
    for word in ("all 3 are in use", "max_connections_per_ip 3", "bind", "exemption"):
        check(word in text, "%r not in the NOTICE: %s" % (word, text))
    check(not any("reconnecting" in ln for ln in notices(c)),
          "still told only 'reconnecting': %s" % notices(c))

    rc, _, out, err = b.ctl("status")
    check(rc == 0 and "1 waiting (slots)" in out and "exemption" in out,
          "text status does not explain the wait: rc=%d\n%s%s" % (rc, out, err))
    b.stop()


def test_network_refusal_backs_off(ctx):
    """baton allows 5 per address, the network (ngIRCd MaxConnectionsIP 3)
    only 3: sessions 4 and 5 are refused with "ERROR :Connection refused, too
    many connections from your IP address". The governor blocks the address
    (60 s, doubling): in 8 s the network sees at most 2 refused attempts, not
    a reconnect storm, and the waiting users are told the network refused
    and what the operator can do; status says wait_reason "throttled"."""
    ng = ctx.ngircd(max_connections_ip=3)
    b = bl.Baton(ctx, ng, nsessions=5, channels=("#many",),
                 sessiond_opts={"reconnect_min": 1, "reconnect_max": 4},
                 network_opts={"connects_per_minute": 600, "connect_burst": 10,
                               "max_connections_per_ip": 5})
    b.start(wait=False)
    wait_registered(b, 3)
    waiting = [s for s in b.sessions if s.user in ("u003", "u004")]
    clients = [bl.bouncer_client(ctx.loop, b, s, wait=False) for s in waiting]
    time.sleep(8)
    log = b.log_text()
    refused = len(re.findall(r"throttles source address", log))
    check(1 <= refused <= 2, "want 1-2 throttle replies in 8 s, got %d:\n%s"
          % (refused, b.log_tail(40)))
    n = network_status(b)
    check(n["connected"] == 3 and n["waiting"] >= 1, "network counts: %s" % n)
    check(n["wait_reason"] == "throttled" and n["throttled_addresses"] == 1,
          "status: %s" % n)
    check(n["advice"] and "refused" in n["advice"] and "exemption" in n["advice"],
          "advice: %s" % n)
    ctx.loop.run_until(lambda: all(any("the network refused" in ln for ln in notices(c))
                                   for c in clients), 10, "the refused users' NOTICEs")
    b.stop()


class OperNgircd(bl.Ngircd):
    """The fixture's ngIRCd with an IRC operator (to KILL a connection)."""

    def config_text(self):
        return super().config_text() + "[Operator]\nName = op\nPassword = oppw\n"


def test_freed_slot_goes_to_the_waiter_and_the_next_is_told(ctx):
    """4 users, 3 slots: the network KILLs a connected user's connection.
    The waiting 4th session takes the freed slot and connects (its client
    sees its channel joined), and the killed session, now the one waiting,
    is told why — also though the queue had as many waiters before (the
    told-state is per session, not a count)."""
    ng = OperNgircd(ctx)
    ng.start()
    b = bl.Baton(ctx, ng, nsessions=4, channels=("#many",), network_opts={},
                 sessiond_opts={"reconnect_min": 1, "reconnect_max": 2})
    b.start(wait=False)
    wait_registered(b, 3)
    time.sleep(0.5)
    first, fourth = b.sessions[0], b.sessions[3]
    c1 = bl.bouncer_client(ctx.loop, b, first)  # connected: attaches fully
    c4 = bl.bouncer_client(ctx.loop, b, fourth, wait=False)
    ctx.loop.run_until(lambda: any("Waiting for a connection slot" in ln for ln in notices(c4)),
                       10, "the 4th user's NOTICE")
    op = bl.direct_user(ctx.loop, ng, "oper1")
    op.send("OPER op oppw")
    ctx.loop.run_until(lambda: any(" 381 " in ln for _, ln in op.lines), 10, "OPER")
    op.send("KILL %s :making room" % first.nick)
    ctx.loop.run_until(lambda: "#many" in bl.joined_channels(c4, fourth.nick), 20,
                       "the 4th session connecting on the freed slot")
    ctx.loop.run_until(lambda: any("Waiting for a connection slot" in ln for ln in notices(c1)),
                       20, "the killed session's NOTICE")
    n = network_status(b)
    check(n["connected"] == 3 and n["waiting"] == 1 and n["wait_reason"] == "slots",
          "after the KILL: %s" % n)
    b.stop()


def test_waiting_session_across_upgrade(ctx):
    """A session waiting for a slot migrates like any other: after an
    upgrade (to build B) and a rollback it still waits, in the new worker's
    status with its reason, and its client (attached throughout) is told
    again at most once per migration, never disconnected."""
    B = ctx.builds["b"].require()
    ng = ctx.ngircd()
    b = bl.Baton(ctx, ng, nsessions=4, channels=("#many",), network_opts={})
    b.start(wait=False)
    wait_registered(b, 3)
    time.sleep(0.5)
    c4 = bl.bouncer_client(ctx.loop, b, b.sessions[3], wait=False)
    ctx.loop.run_until(lambda: any("Waiting for a connection slot" in ln for ln in notices(c4)),
                       10, "the 4th user's NOTICE")
    for build in (B, b.build):
        rc, res = b.upgrade(build)
        check(rc == 0 and res.get("result") == "committed", "upgrade: %s %s" % (rc, res))
        ctx.loop.run_for(1.0)
        n = network_status(b)
        check(n["connected"] == 3 and n["waiting"] == 1 and n["wait_reason"] == "slots",
              "after the upgrade to %s: %s" % (build.sessiond, n))
    told = [ln for ln in notices(c4) if "Waiting for a connection slot" in ln]
    check(not c4.closed, "the waiting user's client was closed: %s" % c4.close_reason)
    bl.log("waiting user told %d times over 2 migrations" % len(told))
    check(1 <= len(told) <= 3, "told %d times over 2 migrations: %s" % (len(told), told))
    b.stop()


class TwoNetBaton(bl.Baton):
    """The last session on a second network `other` (the same ngIRCd)."""

    def config_text(self):
        text = super().config_text()
        last = self.sessions[-1]
        net = "[network other]\nhost = 127.0.0.1\nport = %d\n" % self.ngircd.port
        text = text.replace("[user %s/%s]" % (last.user, self.network),
                            "[user %s/other]" % last.user)
        return text.replace("\n[user ", "\n" + net + "[user ", 1)


def test_status_counts_each_network(ctx):
    """Two networks, 4 sessions on one (3 slots), 1 on the other: status
    --json counts each network's own sessions (3 connected + 1 waiting on
    net, 1 connected on other, reason none) and --check its capacity."""
    ng = ctx.ngircd()
    b = TwoNetBaton(ctx, ng, nsessions=5, channels=("#many",), network_opts={})
    b.sessions[-1].network = "other"
    b.write_config()
    out = subprocess.run([b.build.supervisor, "-c", b.config, "--check", "--json"],
                         capture_output=True, text=True, timeout=60)
    doc = json.loads(out.stdout)
    got = {n["network"]: (n["sessions"], n["waiting"]) for n in doc["networks"]}
    check(got == {"net": (4, 1), "other": (1, 0)}, "--check --json networks: %s" % got)
    b.start(wait=False)
    wait_registered(b, 4)
    time.sleep(0.5)
    net, other = network_status(b, "net"), network_status(b, "other")
    check((net["sessions"], net["connected"], net["waiting"], net["wait_reason"])
          == (4, 3, 1, "slots"), "net: %s" % net)
    check((other["sessions"], other["connected"], other["waiting"], other["wait_reason"],
           other["advice"]) == (1, 1, 0, "none", None), "other: %s" % other)
    b.stop()
