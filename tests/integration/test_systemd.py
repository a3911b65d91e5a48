"""systemd's protocols without systemd: this test plays the service manager
(a NOTIFY_SOCKET it reads, listening sockets passed as fds 3.. with
LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES), so the default suite covers what
deploy/systemd-test checks under a real systemd as PID 1 (minutes of
setup, root): socket activation, the fd store across a restart, READY=1,
RELOADING=1 + MONOTONIC_USEC / READY=1 around an upgrade, STATUS=, the
refusals when the passed sockets and the config disagree, and SIGTERM as
`systemctl restart` (the worker left serving and adopted) vs `systemctl
stop` (everything stops): the test plays systemd's manager on a private
D-Bus socket too (FakeBus: GetUnitByPID, ListJobs)."""

import array
import os
import signal
import socket
import struct
import subprocess
import threading
import time

import batonlib as bl
import test_supervisor_crash
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


class FakeBus:
    """systemd's manager on the system bus, as far as sysd_term_query()
    asks it (supervisor/sysd.h): a D-Bus server on a Unix socket
    (DBUS_SYSTEM_BUS_ADDRESS) that does the SASL EXTERNAL handshake,
    answers Hello, GetUnitByPID (self.unit_path) and ListJobs (self.jobs:
    [(id, unit, type, state)]) and records every call in self.calls. One
    thread; little-endian messages only (what sd-bus sends here)."""

    SYSTEMD = "org.freedesktop.systemd1"

    def __init__(self, ctx):
        self.path = os.path.join(ctx.dir, "bus.sock")
        self.address = "unix:path=" + self.path
        self.unit_path = "/org/freedesktop/systemd1/unit/baton_2eservice"
        self.unit = "baton.service"
        self.jobs = []
        self.calls = []  # (member, body bytes)
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def set_job(self, job_type, state="running", job_id=42):
        with self.lock:
            self.jobs = [] if job_type is None else [(job_id, self.unit, job_type, state)]

    def members(self):
        with self.lock:
            return [m for m, _ in self.calls]

    def close(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close()

    def _serve(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with c:
                try:
                    self._conversation(c)
                except (OSError, ValueError):
                    pass

    @staticmethod
    def _recv_exact(c, n, buf):
        while len(buf) < n:
            d = c.recv(65536)
            if not d:
                raise OSError("bus client closed")
            buf += d
        return buf

    def _conversation(self, c):
        c.settimeout(5)
        buf = b""
        # SASL: lines until BEGIN (sd-bus pipelines them)
        while True:
            while b"\r\n" not in buf:
                d = c.recv(4096)
                if not d:
                    return
                buf += d
            line, buf = buf.split(b"\r\n", 1)
            line = line.lstrip(b"\0")
            if line.startswith(b"AUTH"):
                # with an initial response: OK; without: an empty challenge
                c.sendall(b"OK " + b"0123456789abcdef" * 2 + b"\r\n"
                          if len(line.split()) > 2 else b"DATA\r\n")
            elif line.startswith(b"DATA"):
                c.sendall(b"OK " + b"0123456789abcdef" * 2 + b"\r\n")
            elif line == b"NEGOTIATE_UNIX_FD":
                c.sendall(b"AGREE_UNIX_FD\r\n")
            elif line == b"BEGIN":
                break
            else:
                c.sendall(b"ERROR\r\n")
        serial = 0
        while True:
            buf = self._recv_exact(c, 16, buf)
            if buf[0:1] != b"l":
                raise ValueError("big-endian message")
            body_len, cookie, fields_len = struct.unpack_from("<III", buf, 4)
            hdr_len = 16 + fields_len + (-(16 + fields_len) % 8)
            buf = self._recv_exact(c, hdr_len + body_len, buf)
            fields = self._fields(buf[:16 + fields_len])
            body = bytes(buf[hdr_len:hdr_len + body_len])
            buf = buf[hdr_len + body_len:]
            member = fields.get(3, "")
            with self.lock:
                self.calls.append((member, body))
                jobs = list(self.jobs)
            serial += 1
            if member == "Hello":
                reply = ("s", self._w_str(":1.1"), "org.freedesktop.DBus")
            elif member == "GetUnitByPID":
                reply = ("o", self._w_str(self.unit_path), self.SYSTEMD)
            elif member == "ListJobs":
                reply = ("a(usssoo)", self._jobs_body(jobs), self.SYSTEMD)
            else:
                c.sendall(self._message(3, serial, cookie, "s",
                                        self._w_str("unknown method " + member), self.SYSTEMD,
                                        error="org.freedesktop.DBus.Error.UnknownMethod"))
                continue
            c.sendall(self._message(2, serial, cookie, reply[0], reply[1], reply[2]))

    @staticmethod
    def _fields(h):
        """Header fields {code: value} of a little-endian message header."""
        out, pos, end = {}, 16, len(h)
        while pos < end:
            pos += -pos % 8
            code, slen = h[pos], h[pos + 1]
            sig = h[pos + 2:pos + 2 + slen].decode()
            pos += 3 + slen
            if sig in ("s", "o"):
                pos += -pos % 4
                n = struct.unpack_from("<I", h, pos)[0]
                out[code] = h[pos + 4:pos + 4 + n].decode()
                pos += 5 + n
            elif sig == "g":
                n = h[pos]
                out[code] = h[pos + 1:pos + 1 + n].decode()
                pos += 2 + n
            elif sig == "u":
                pos += -pos % 4
                out[code] = struct.unpack_from("<I", h, pos)[0]
                pos += 4
            else:
                raise ValueError("header field type %r" % sig)
        return out

    @staticmethod
    def _pad(b, n):
        b += b"\0" * (-len(b) % n)

    @classmethod
    def _put_str(cls, b, s):
        e = s.encode()
        cls._pad(b, 4)
        b += struct.pack("<I", len(e)) + e + b"\0"

    @classmethod
    def _w_str(cls, s):
        b = bytearray()
        cls._put_str(b, s)
        return bytes(b)

    @classmethod
    def _jobs_body(cls, jobs):
        b = bytearray(4)
        cls._pad(b, 8)
        start = len(b)
        for job_id, unit, job_type, state in jobs:
            cls._pad(b, 8)
            b += struct.pack("<I", job_id)
            cls._put_str(b, unit)
            cls._put_str(b, job_type)
            cls._put_str(b, state)
            cls._put_str(b, "/org/freedesktop/systemd1/job/%d" % job_id)
            cls._put_str(b, "/org/freedesktop/systemd1/unit/" +
                         unit.replace(".", "_2e").replace("-", "_2d"))
        struct.pack_into("<I", b, 0, len(b) - start if jobs else 0)
        return bytes(b)

    @classmethod
    def _message(cls, kind, serial, reply_to, sig, body, sender, error=None):
        h = bytearray(b"l" + bytes([kind, 1, 1]))
        h += struct.pack("<III", len(body), serial, 0)

        def field(code, t, put):
            cls._pad(h, 8)
            h.extend(bytes([code, len(t)]) + t.encode() + b"\0")
            put()

        field(5, "u", lambda: (cls._pad(h, 4), h.extend(struct.pack("<I", reply_to))))
        field(6, "s", lambda: cls._put_str(h, ":1.1"))
        field(7, "s", lambda: cls._put_str(h, sender))
        if error:
            field(4, "s", lambda: cls._put_str(h, error))
        field(8, "g", lambda: h.extend(bytes([len(sig)]) + sig.encode() + b"\0"))
        struct.pack_into("<I", h, 12, len(h) - 16)
        cls._pad(h, 8)
        return bytes(h) + body


def listening(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    return s


def start(ctx, b, sd, passed, fdnames=None, bus=None):
    """Start b's supervisor with `passed` [(name, socket)] as fds 3.. and
    NOTIFY_SOCKET; returns the process (its log: b.log_path). Its system
    bus is `bus` (a FakeBus) or none at all (an address nobody listens
    on), never the host's: a SIGTERM then means stop."""
    env = dict(os.environ)
    env["DBUS_SYSTEM_BUS_ADDRESS"] = (bus.address if bus else
                                      "unix:path=" + os.path.join(ctx.dir, "no-bus.sock"))
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


def test_sigterm_restart_keeps_sessions_stop_stops(ctx):
    """`systemctl restart` keeps every session; `systemctl stop` stops
    everything. systemd sends both the same SIGTERM; the supervisor asks the
    manager (here FakeBus) for its unit and its jobs. With a running
    restart job it exits 0 leaving its worker serving: the client stays
    connected, the network sees no QUIT/JOIN, and the next supervisor
    (given the socket unit's fd and the stored one, as systemd does) adopts
    the same worker pid. With a stop job (or a restart job still waiting:
    that SIGTERM is someone else's) the worker stops, the client is closed
    and the network sees the session QUIT.
    Regression: every SIGTERM stopped the workers, so `systemctl restart`
    disconnected everyone."""
    ng = ctx.ngircd()
    b = bl.Baton(ctx, ng, nsessions=1, nlisten=2, channels=("#chat",))
    s = b.sessions[0]
    w = bl.Watcher(ctx.loop, ng, ["#chat"], watch=[s.nick])
    p_unit, p_store = b.ports
    sd = FakeSystemd(ctx)
    ctx.on_close(sd.close)
    bus = FakeBus(ctx)
    ctx.on_close(bus.close)
    unit_sock = listening(p_unit)
    ctx.on_close(unit_sock.close)
    name = "listen-irc-127.0.0.1-%d" % p_store

    start(ctx, b, sd, [("irc", unit_sock)], bus=bus)
    sd.wait_for("READY", "1")
    b.wait_ready()
    w.wait_present([s.nick], timeout=30)
    dave = bl.direct_user(ctx.loop, ng, "dave", ["#chat"])
    c = bl.bouncer_client(ctx.loop, b, s, port=p_unit)
    pid = b.worker_pid()
    mark = len(w.events)

    def relay(tag):
        dave.privmsg("#chat", "from dave %s" % tag)
        c.privmsg("#chat", "from client %s" % tag)
        ctx.loop.run_until(lambda: any(("from dave %s" % tag) in ln for _, ln in c.lines)
                           and any(("from client %s" % tag) in ln for _, ln in dave.lines),
                           10, "lines both ways (%s)" % tag)

    relay("before")

    # `systemctl restart`: the job is "restart", running.
    bus.set_job("restart")
    sup = b.proc
    sup.send_signal(signal.SIGTERM)
    rc = sup.wait(15)
    check(rc == 0, "supervisor exit %s on a restart's SIGTERM:\n%s" % (rc, b.log_tail()))
    ctx.loop.run_for(0.5)
    check(bl.pid_alive(pid), "worker %d died with the restart's SIGTERM" % pid)
    check(not c.closed, "client closed by the restart: %s" % c.close_reason)
    log = b.log_text()
    check("Terminated: restart job 42 of baton.service is running: restarting" in log
          and "restart: leaving worker pid %d serving" % pid in log,
          "no restart decision in the log:\n%s" % b.log_tail())
    check(bus.members()[-2:] == ["GetUnitByPID", "ListJobs"],
          "bus calls: %s" % bus.members())
    check(struct.unpack_from("<I", bus.calls[-2][1])[0] == sup.pid,
          "GetUnitByPID asked for pid %d, not the supervisor's %d"
          % (struct.unpack_from("<I", bus.calls[-2][1])[0], sup.pid))
    relay("between")

    # systemd starts the unit again: the socket unit's fd and the store.
    sd.read(0.2)
    start(ctx, b, sd, [("irc", unit_sock), (name, sd.store[name])], bus=bus)
    b.wait_ready()
    check(b.worker_pid() == pid, "after the restart worker %s serves, not %d"
          % (b.worker_pid(), pid))
    check("adopted orphaned worker pid %d" % pid in b.log_text(),
          "no adoption:\n%s" % b.log_tail())
    relay("after")
    c2 = bl.bouncer_client(ctx.loop, b, s, client="b", port=p_store)
    check(not c.closed and not c2.closed, "a client was closed")
    ev = [e for e in w.events[mark:] if e[1] in ("QUIT", "JOIN", "PART")]
    check(not ev, "the network saw the session reconnect across the restart: %s" % ev)

    # A restart job still waiting did not send this SIGTERM (`systemctl
    # kill`): a stop. So is the stop job of `systemctl stop`.
    bus.set_job("restart", state="waiting")
    sup = b.proc
    sup.send_signal(signal.SIGTERM)
    rc = sup.wait(30)
    check(rc == 0, "supervisor exit %s on a stop:\n%s" % (rc, b.log_tail()))
    check("Terminated: stopping (restart job 42 of baton.service (waiting))" in b.log_text(),
          "no stop decision in the log:\n%s" % b.log_tail())
    bl.wait_for(lambda: not bl.pid_alive(pid), 10, what="worker %d to exit on the stop" % pid)
    ctx.loop.run_until(lambda: c.closed and c2.closed, 10, "clients closed by the stop")
    ctx.loop.run_until(lambda: any(e[1] == "QUIT" for e in w.events[mark:]), 10,
                       "the session's QUIT on the stop")

    # `systemctl stop` proper, on a fresh start: the stop job.
    sd.read(0.2)
    start(ctx, b, sd, [("irc", unit_sock), (name, sd.store[name])], bus=bus)
    b.wait_ready()
    pid = b.worker_pid()
    bus.set_job("stop")
    sup = b.proc
    sup.send_signal(signal.SIGTERM)
    rc = sup.wait(30)
    check(rc == 0 and "Terminated: stopping (stop job 42 of baton.service (running))"
          in b.log_text(), "stop job: exit %s\n%s" % (rc, b.log_tail()))
    bl.wait_for(lambda: not bl.pid_alive(pid), 10, what="worker %d to exit on the stop" % pid)


def test_sigterm_restart_during_migration_stops_everything(ctx):
    """A restart job's SIGTERM while an upgrade moves the sessions (the
    target adopts each item slowly): two workers hold parts of them, so
    neither can be left to the next supervisor. The supervisor says why,
    stops every worker as for a stop (batonctl gets the abort), exits 0,
    and no baton-sessiond is left."""
    bB = ctx.builds["b"].require()
    ng = ctx.ngircd()
    b = bl.Baton(ctx, ng, nsessions=2, channels=("#chat",))
    sd = FakeSystemd(ctx)
    ctx.on_close(sd.close)
    bus = FakeBus(ctx)
    ctx.on_close(bus.close)
    unit_sock = listening(b.port)
    ctx.on_close(unit_sock.close)
    start(ctx, b, sd, [("irc", unit_sock)], bus=bus)
    sd.wait_for("READY", "1")
    b.wait_ready()
    bus.set_job("restart")
    b.set_fault("target:slow-prepare")
    p = b.ctl_async("upgrade", bB.sessiond, "--json")
    bl.wait_for(lambda: "migrate" in b.log_text().split("upgrade", 1)[-1], 10,
                what="the migration to start")
    b.proc.send_signal(signal.SIGTERM)
    rc = b.proc.wait(30)
    ctx.loop.wait_process(p, timeout=30)
    b.clear_fault()
    check(rc == 0, "supervisor exit %s:\n%s" % (rc, b.log_tail()))
    check("restart: cannot leave the worker serving (a migration is running): "
          "stopping every worker instead" in b.log_text(), "log:\n" + b.log_tail())
    bl.wait_for(lambda: not test_supervisor_crash.worker_pids(ctx), 15,
                what="every worker to exit")


def test_refusing_worker_no_second_worker(ctx):
    """A live worker that still refuses the adoption when the new
    supervisor's wait ends (main.c MAIN_ORPHAN_WAIT_MS; after `systemctl
    restart`, one that has not read its old supervisor's EOF within it:
    played here by a rendezvous socket that accepts and closes, its owner
    alive) is left alone: the supervisor exits 1 without starting a worker
    beside it (systemd's Restart= asks again). Regression: a refusal that
    outlasted the wait counted as "no orphan", and under systemd (the
    listeners passed, no bind to fail) a second worker served the same
    sessions beside the one left serving."""
    ng = ctx.ngircd()
    b = bl.Baton(ctx, ng, nsessions=1, channels=("#chat",))
    state = os.path.join(b.dir, "state")
    os.makedirs(state, exist_ok=True)
    rv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    rv.bind(os.path.join(state, "worker-%d.sock" % os.getpid()))
    rv.listen(8)
    rv.settimeout(0.2)
    stop = threading.Event()

    def refuse():
        while not stop.is_set():
            try:
                conn, _ = rv.accept()
            except (socket.timeout, OSError):
                continue
            conn.close()

    t = threading.Thread(target=refuse, daemon=True)
    t.start()

    def done():
        stop.set()
        t.join(2)
        rv.close()
    ctx.on_close(done)
    logp = os.path.join(ctx.dir, "refused.log")
    with open(logp, "wb") as logf:
        p = ctx.procs.popen([b.build.supervisor, "-c", b.config], cwd=b.dir,
                            stdout=logf, stderr=subprocess.STDOUT)
    try:
        rc = p.wait(15)
    except subprocess.TimeoutExpired:
        rc = None
    log = open(logp, errors="replace").read()
    check(rc == 1, "supervisor exit %r (want 1):\n%s" % (rc, log))
    check("spawned pid" not in log and "adopted" not in log,
          "a worker started beside the refusing one:\n%s" % log)
    check("still refuse the adoption" in log, "no reason in the log:\n%s" % log)
