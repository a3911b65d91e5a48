"""systemd's protocols without systemd: this test plays the service manager
(a NOTIFY_SOCKET it reads, listening sockets passed as fds 3.. with
LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES), so the default suite covers what
deploy/systemd-test checks under a real systemd as PID 1 (minutes of
setup, root): socket activation, the fd store across a restart, READY=1,
RELOADING=1 + MONOTONIC_USEC / READY=1 around an upgrade, STATUS=, and the
refusals when the passed sockets and the config disagree."""

import array
import os
import socket
import subprocess
import time

import batonlib as bl
from batonlib import check

# Moves the fds named in BATON_T_FDS to 3, 4, ... and sets LISTEN_PID to its
# own pid (which exec keeps), as systemd does between fork and exec.
EXEC_WRAPPER = r"""
import fcntl, os, sys
fds = [int(x) for x in os.environ.pop("BATON_T_FDS").split(",") if x]
high = [fcntl.fcntl(f, fcntl.F_DUPFD_CLOEXEC, 200) for f in fds]
for f in fds:
    os.close(f)
for i, h in enumerate(high):
    os.dup2(h, 3 + i)          # inheritable
    os.close(h)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = str(len(fds))
os.execv(sys.argv[1], sys.argv[1:])
"""


class FakeSystemd:
    """The notify socket and the fd store of one service."""

    def __init__(self, ctx):
        self.path = os.path.join(ctx.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.store = {}     # FDNAME -> socket
        self.messages = []  # every message, in order
        self.cursor = 0     # wait_for looks from here on

    def read(self, timeout):
        """Messages that arrive within timeout (stops early when idle)."""
        got = []
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.sock.settimeout(max(0.01, min(0.2, end - time.monotonic())))
            fds = array.array("i")
            try:
                msg, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(16 * fds.itemsize))
            except socket.timeout:
                if got:
                    break
                continue
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
            text = msg.decode()
            fields = dict(kv.split("=", 1) for kv in text.split("\n") if "=" in kv)
            if fields.get("FDSTORE") == "1":
                for fd in fds:
                    self.store[fields["FDNAME"]] = socket.socket(fileno=fd)
            elif fields.get("FDSTOREREMOVE") == "1":
                s = self.store.pop(fields["FDNAME"], None)
                if s:
                    s.close()
            else:
                for fd in fds:
                    os.close(fd)
            got.append(fields)
            self.messages.append(fields)
        return got

    def wait_for(self, key, value, timeout=15):
        """The next message (after the last one wait_for returned) with
        KEY=value."""
        end = time.monotonic() + timeout
        while True:
            while self.cursor < len(self.messages):
                m = self.messages[self.cursor]
                self.cursor += 1
                if m.get(key) == value:
                    return m
            if time.monotonic() >= end:
                break
            self.read(0.5)
        raise AssertionError("no %s=%s from the supervisor in %ss; got %s"
                             % (key, value, timeout, self.messages[-5:]))

    def close(self):
        for s in self.store.values():
            s.close()
        self.sock.close()


def listening(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    return s


def start(ctx, b, sd, passed, fdnames=None):
    """Start b's supervisor with `passed` [(name, socket)] as fds 3.. and
    NOTIFY_SOCKET; returns the process (its log: b.log_path)."""
    env = dict(os.environ)
    env["BATON_FAULT_FILE"] = b.fault_file
    env["NOTIFY_SOCKET"] = sd.path
    env["BATON_T_FDS"] = ",".join(str(s.fileno()) for _, s in passed)
    env["LISTEN_FDNAMES"] = fdnames or ":".join(n for n, _ in passed)
    b.logf = open(b.log_path, "ab")
    b.proc = ctx.procs.popen(["python3", "-c", EXEC_WRAPPER, b.build.supervisor,
                              "-c", b.config],
                             env=env, stdout=b.logf, stderr=subprocess.STDOUT,
                             cwd=b.dir, pass_fds=[s.fileno() for _, s in passed])
    return b.proc


def inode(s):
    return os.fstat(s.fileno()).st_ino


def test_socket_activation_reload_fd_store(ctx):
    """Listener 1 comes from a socket unit (named irc), listener 2 is bound
    by the supervisor and handed to the fd store (FDSTORE=1,
    FDNAME=listen-irc-127.0.0.1-PORT, with the fd). READY=1 with a STATUS
    once the worker serves; a client logs in on the passed socket. An
    upgrade is framed by RELOADING=1 (MONOTONIC_USEC on CLOCK_MONOTONIC) and
    READY=1 and keeps the client. A "restart" (a new supervisor given the
    socket unit's fd and the stored one) takes the stored listener back
    without binding or storing it again, and clients log in on both."""
    ctx.builds["b"].require()
    ng = ctx.ngircd()
    b = bl.Baton(ctx, ng, nsessions=1, nlisten=2)
    p_unit, p_store = b.ports
    sd = FakeSystemd(ctx)
    ctx.on_close(sd.close)
    unit_sock = listening(p_unit)
    ctx.on_close(unit_sock.close)
    start(ctx, b, sd, [("irc", unit_sock)])

    name = "listen-irc-127.0.0.1-%d" % p_store
    sd.wait_for("FDSTORE", "1")
    check(list(sd.store) == [name], "fd store: %s, want [%s]" % (list(sd.store), name))
    stored = sd.store[name]
    check(stored.getsockname() == ("127.0.0.1", p_store),
          "stored fd is bound to %s" % (stored.getsockname(),))
    ready = sd.wait_for("READY", "1")
    check(ready.get("STATUS", "").startswith("worker pid "), "READY without STATUS: %s" % ready)
    b.wait_ready()
    log = b.log_text()
    check("listener irc 127.0.0.1:%d: from baton.socket" % p_unit in log, "log:\n" + b.log_tail())
    check("listener irc 127.0.0.1:%d: bound" % p_store in log, "log:\n" + b.log_tail())
    s = b.sessions[0]
    c = bl.bouncer_client(ctx.loop, b, s, port=p_unit)

    # An upgrade: RELOADING=1 + MONOTONIC_USEC, then READY=1.
    before = time.monotonic()
    rc, res, out, err = b.ctl("--json", "upgrade", ctx.builds["b"].sessiond)
    after = time.monotonic()
    check(rc == 0 and res["result"] == "committed", "upgrade: %s %s" % (out, err))
    sd.read(1)
    msgs = sd.messages[sd.cursor:]
    keys = [("RELOADING" in m, "READY" in m) for m in msgs]
    check((True, False) in keys and (False, True) in keys
          and keys.index((True, False)) < keys.index((False, True)),
          "messages around the upgrade: %s" % msgs)
    rel = next(m for m in msgs if "RELOADING" in m)
    usec = int(rel["MONOTONIC_USEC"])
    check(before * 1e6 - 1e5 <= usec <= after * 1e6 + 1e5,
          "MONOTONIC_USEC %d not within the upgrade [%d, %d] (CLOCK_MONOTONIC)"
          % (usec, before * 1e6, after * 1e6))
    check(rel.get("STATUS", "").startswith("upgrade to "), "RELOADING without STATUS: %s" % rel)
    ctx.loop.run_for(0.3)
    check(not c.closed, "client closed by the upgrade: %s" % c.close_reason)

    # "systemctl restart": the old supervisor stops, the new one gets the
    # socket unit's fd and the stored one.
    sd.read(0.2)
    b.stop()
    ino = inode(stored)
    sd.messages.clear()
    sd.cursor = 0
    start(ctx, b, sd, [("irc", unit_sock), (name, stored)])
    sd.wait_for("READY", "1")
    b.wait_ready()
    check("listener irc 127.0.0.1:%d: from the systemd fd store" % p_store in b.log_text(),
          "log:\n" + b.log_tail())
    check(not any(m.get("FDSTORE") == "1" for m in sd.messages),
          "the stored listener was stored again: %s" % sd.messages)
    check(inode(sd.store[name]) == ino, "fd store entry changed")
    c2 = bl.bouncer_client(ctx.loop, b, s, client="b", port=p_store)
    c3 = bl.bouncer_client(ctx.loop, b, s, client="c", port=p_unit)
    check(not c2.closed and not c3.closed, "logins after the restart")


def test_disagreements_refused(ctx):
    """The supervisor refuses to start, exit 1, with a message naming both
    sides: a socket named ircs for an irc line; a socket whose address no
    [listen] line has; a socket unit without FileDescriptorName= (its name
    is the unit's); LISTEN_FDNAMES with fewer names than LISTEN_FDS. A stored
    listener the config no longer has is released (FDSTOREREMOVE=1) and the
    supervisor starts."""
    ng = ctx.ngircd()
    b = bl.Baton(ctx, ng, nsessions=1)
    sd = FakeSystemd(ctx)
    ctx.on_close(sd.close)
    other = bl.free_port()
    cases = [
        ([("ircs", b.port)], "as 'ircs' (FileDescriptorName= in baton.socket): the two must agree"),
        ([("irc", b.port), ("irc", other)],
         "systemd socket 'irc' (fd 4) on 127.0.0.1:%d matches no [listen] line" % other),
        ([("baton.socket", b.port)], "named 'baton.socket': not a baton listener"),
    ]
    for passed, want in cases:
        socks = [(n, listening(p)) for n, p in passed]
        p = start(ctx, b, sd, socks)
        rc = p.wait(timeout=20)
        for _, s in socks:
            s.close()
        tail = b.log_tail(5)
        check(rc == 1, "%s: exit %s\n%s" % (passed, rc, tail))
        check(want in tail, "%s: want %r in the log:\n%s" % (passed, want, tail))
    # more names than fds
    s = listening(b.port)
    p = start(ctx, b, sd, [("irc", s)], fdnames="irc:ircs")
    rc = p.wait(timeout=20)
    s.close()
    tail = b.log_tail(5)
    check(rc == 1 and "LISTEN_FDNAMES has more names than LISTEN_FDS=1" in tail,
          "name count: exit %s\n%s" % (rc, tail))

    # a stale stored listener: released, and the supervisor starts
    stale = listening(other)
    unit = listening(b.port)
    start(ctx, b, sd, [("irc", unit), ("listen-irc-127.0.0.1-%d" % other, stale)])
    m = sd.wait_for("FDSTOREREMOVE", "1")
    check(m.get("FDNAME") == "listen-irc-127.0.0.1-%d" % other, "removed: %s" % m)
    sd.wait_for("READY", "1")
    stale.close()
    # closed by the supervisor too: the port is free again
    listening(other).close()
    b.stop()
    unit.close()
