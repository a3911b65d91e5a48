"""batonlib: integration-test and benchmark harness for baton.

Everything here runs real processes on loopback (127.0.0.1, ports from the kernel)
and uses only the Python 3 standard library.

Building blocks (each usable on its own):

- Builds            where the three builds live (A, B, incompat), env overridable
- free_port()       a free TCP port chosen by the kernel (port 0)
- Procs             a registry of every process started, killed on cleanup/atexit
- Ngircd            a real IRC server fixture (ngircd -n -f CONF)
- Baton             a baton fixture: writes the INI config, runs baton-supervisor,
                    talks to it through batonctl (status/upgrade/rollback)
- IrcLoop/IrcConn   a single-threaded selectors event loop for hundreds of IRC
                    connections: non-blocking, line splitting, auto PONG,
                    every received line recorded with a receive timestamp,
                    connection close detected and recorded
- Watcher           a direct ngircd user that sits in the channels and records
                    JOIN/PART/QUIT/NICK of bouncer nicks and every numbered line
- token()/tokens()  numbered payloads "<<sender:n>>" that identify every line
- Ledger            who sent what, who must receive what; diff reports
- load_trace()      the anonymized real IRC trace, time-compressed

Conventions: functions raise AssertionError (via `check`) for test failures,
Skip for "cannot run here", HarnessError for harness/environment trouble.
"""

import atexit
import collections
import errno
import heapq
import json
import os
import random
import re
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import uuid

# The checkout this file belongs to (tests/integration/batonlib.py).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# --------------------------------------------------------------------------
# errors and small helpers
# --------------------------------------------------------------------------


class Skip(Exception):
    """Raised by a test (or fixture) that cannot run in this environment."""


class HarnessError(Exception):
    """The harness itself or the environment failed (not the code under test)."""


def check(cond, msg):
    """assert that also works under python -O."""
    if not cond:
        raise AssertionError(msg)


def now():
    return time.monotonic()


def log(*args):
    """Progress output of tests (stderr so the runner's result lines stay clean)."""
    import sys
    print("  ..", *args, file=sys.stderr, flush=True)


_ports_handed_out = set()


def scrub_paths(text):
    """Results kept in the tree name no machine's paths: the checkout
    becomes <checkout>, the shared folder beside it ../shared, temp dirs
    <tmp>."""
    shared = os.path.join(os.path.dirname(REPO_ROOT), "shared")
    text = text.replace(shared, "../shared").replace(REPO_ROOT, "<checkout>")
    tmp = tempfile.gettempdir()
    return re.sub(re.escape(tmp) + r"/[^\s\"']*", "<tmp>", text)


def free_port(host="127.0.0.1"):
    """A TCP port the kernel picks (bind to port 0), never handed out twice
    by this process. The socket is closed before the caller binds it, so
    another program could take it meanwhile (rare: the kernel hands out
    ephemeral ports round-robin); servers that can report their own port
    are better still."""
    for _ in range(100):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            s.bind((host, 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port in _ports_handed_out:
            continue
        _ports_handed_out.add(port)
        return port
    raise HarnessError("the kernel handed out no new port")


def wait_port(port, host="127.0.0.1", timeout=10.0, proc=None):
    """Wait until host:port accepts TCP connections (or proc exits)."""
    deadline = now() + timeout
    while now() < deadline:
        if proc is not None and proc.poll() is not None:
            raise HarnessError("process exited with %s before port %d opened"
                               % (proc.returncode, port))
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise HarnessError("port %d not accepting after %.1fs" % (port, timeout))


def wait_for(pred, timeout, interval=0.05, what="condition"):
    """Poll pred() until true; returns its value or raises AssertionError."""
    deadline = now() + timeout
    while True:
        v = pred()
        if v:
            return v
        if now() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


# --------------------------------------------------------------------------
# builds
# --------------------------------------------------------------------------


class Build:
    """One build directory: $B/sessiond/baton-sessiond, $B/supervisor/...,
    $B/batonctl/batonctl."""

    def __init__(self, name, path):
        self.name = name
        self.path = os.path.abspath(path)
        self.sessiond = os.path.join(self.path, "sessiond", "baton-sessiond")
        self.supervisor = os.path.join(self.path, "supervisor", "baton-supervisor")
        self.batonctl = os.path.join(self.path, "batonctl", "batonctl")
        self._version = None

    def exists(self):
        return all(os.access(p, os.X_OK)
                   for p in (self.sessiond, self.supervisor, self.batonctl))

    def require(self):
        """Skip the test unless the build's three binaries exist."""
        if not self.exists():
            raise Skip("build %s not found at %s (set BATON_BUILD_%s)"
                       % (self.name, self.path, self.name.upper()))
        return self

    @property
    def version(self):
        """Version string of this build (from `baton-sessiond --version`,
        falling back to the supervisor's): the word after the program name
        in "baton-sessiond 0.1.0 (state schema 1-1)"."""
        if self._version is None:
            for binary in (self.sessiond, self.supervisor):
                try:
                    out = subprocess.run([binary, "--version"], capture_output=True,
                                         text=True, timeout=10)
                except OSError:
                    continue
                text = (out.stdout or out.stderr).strip()
                if out.returncode == 0 and text:
                    words = text.splitlines()[0].split()
                    self._version = words[1] if len(words) > 1 else words[0]
                    break
            else:
                raise HarnessError("cannot get the version of build %s" % self.path)
        return self._version

    def __repr__(self):
        return "Build(%s, %s)" % (self.name, self.path)


def builds():
    """The three builds the tests use: A (HEAD), B (same code, another version
    string) and incompat (schema 99..99). Paths from BATON_BUILD_A/_B/_INCOMPAT.
    BATON_BUILD (a folder of the checkout or a path, e.g. build-asan) is A's
    default: BATON_BUILD=build-asan runs the supervisor, the first worker and
    batonctl built with ASan + UBSan (B stays the plain build-b)."""
    root = os.environ.get("BATON_ROOT", REPO_ROOT)
    a = os.path.join(root, os.environ.get("BATON_BUILD", "build"))
    return {
        "a": Build("a", os.environ.get("BATON_BUILD_A", a)),
        "b": Build("b", os.environ.get("BATON_BUILD_B", os.path.join(root, "build-b"))),
        "incompat": Build("incompat", os.environ.get("BATON_BUILD_INCOMPAT",
                                                     os.path.join(root, "build-incompat"))),
    }


# --------------------------------------------------------------------------
# processes: every child is registered and killed on cleanup / at exit
# --------------------------------------------------------------------------

RUN_TAG_VAR = "BATON_TEST_RUN_TAG"


class Procs:
    """Registry of started processes.

    Every process is started in its own session (so its pid is its process
    group id) and with the env var BATON_TEST_RUN_TAG=<tag>. Cleanup kills the
    process groups, then every process still carrying our tag in
    /proc/PID/environ (catches workers that moved to another process group).
    Only processes we started carry the tag, so nothing else is touched."""

    def __init__(self):
        self.tag = uuid.uuid4().hex
        self.procs = []

    def popen(self, argv, env=None, **kw):
        e = dict(os.environ if env is None else env)
        e[RUN_TAG_VAR] = self.tag
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(argv, env=e, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def tagged_pids(self):
        """pids of live processes that carry our tag (ours, any depth)."""
        pids = []
        needle = ("%s=%s" % (RUN_TAG_VAR, self.tag)).encode()
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                with open("/proc/%s/environ" % d, "rb") as f:
                    env = f.read()
            except OSError:
                continue
            if needle in env.split(b"\0"):
                pids.append(int(d))
        return pids

    @staticmethod
    def stop(p, sig=signal.SIGTERM, grace=3.0):
        """Signal p's process group, wait up to grace seconds, then SIGKILL it."""
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(p.pid, signal.SIGKILL)  # stragglers in the group
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def cleanup(self):
        for p in reversed(self.procs):
            self.stop(p, grace=2.0)
        for _ in range(3):
            pids = self.tagged_pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        self.procs = []


_all_procs = []  # every Procs ever created (atexit safety net)


def new_procs():
    p = Procs()
    _all_procs.append(p)
    return p


@atexit.register
def _cleanup_everything():
    for p in _all_procs:
        try:
            p.cleanup()
        except Exception:
            pass


def fd_count(pid):
    """Number of open fds of a process (from /proc/PID/fd)."""
    return len(os.listdir("/proc/%d/fd" % pid))


def fd_kinds(pid):
    """Counter of fd kinds of a process ('socket', 'pipe', file paths...)."""
    c = collections.Counter()
    d = "/proc/%d/fd" % pid
    for fd in os.listdir(d):
        try:
            t = os.readlink(os.path.join(d, fd))
        except OSError:
            continue
        c[t.split(":")[0] if ":[" in t else t] += 1
    return c


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


# --------------------------------------------------------------------------
# test context: temp dir + processes + loop, cleaned up by the runner
# --------------------------------------------------------------------------


SANITIZER_DEFAULTS = {
    "ASAN_OPTIONS": "abort_on_error=1:detect_leaks=1",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
}


def sanitizer_env(report_dir):
    """Point the sanitizer reports of every process started from now on into
    report_dir (ASan/UBSan `log_path`, one file per process); the options
    themselves are the caller's ASAN_OPTIONS/UBSAN_OPTIONS, or the defaults
    above. Harmless for binaries built without sanitizers."""
    for var, default in SANITIZER_DEFAULTS.items():
        base = _SANITIZER_BASE.setdefault(var, os.environ.get(var, default))
        opts = [o for o in base.split(":") if o and not o.startswith("log_path=")]
        opts.append("log_path=%s" % os.path.join(report_dir, var.split("_")[0].lower()))
        os.environ[var] = ":".join(opts)


_SANITIZER_BASE = {}


class Context:
    """Fresh fixtures for one test. The runner creates one per test and calls
    close() (kills processes, removes the temp dir unless keep=True)."""

    def __init__(self, name="test", keep=False):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="baton-it-%s-" % name, dir=None)
        self.sanitizer_dir = os.path.join(self.dir, "sanitizer")
        os.makedirs(self.sanitizer_dir, exist_ok=True)
        sanitizer_env(self.sanitizer_dir)
        self.procs = new_procs()
        self.keep = keep
        self.loop = IrcLoop()
        self.builds = builds()
        self._closers = []

    def on_close(self, fn):
        self._closers.append(fn)

    def sanitizer_reports(self):
        """[(file, text)] of every ASan/UBSan report a process of this test
        wrote (only sanitizer builds write any)."""
        out = []
        try:
            names = sorted(os.listdir(self.sanitizer_dir))
        except OSError:
            return out
        for f in names:
            path = os.path.join(self.sanitizer_dir, f)
            try:
                with open(path, errors="replace") as fh:
                    text = fh.read()
            except OSError:
                continue
            if text.strip():
                out.append((path, text))
        return out

    def ngircd(self, **kw):
        n = Ngircd(self, **kw)
        n.start()
        return n

    def baton(self, ngircd, **kw):
        b = Baton(self, ngircd, **kw)
        return b

    def close(self, failed=False, keep_reports=False):
        """Kill everything; remove the temp dir unless keep, failed or
        keep_reports (the runner reads the sanitizer reports first, then
        calls remove_dir())."""
        for fn in reversed(self._closers):
            try:
                fn()
            except Exception:
                pass
        self.loop.close_all()
        self.procs.cleanup()
        if not failed and not keep_reports:
            self.remove_dir()

    def remove_dir(self):
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------
# ngircd
# --------------------------------------------------------------------------

NGIRCD = os.environ.get("NGIRCD", "/usr/sbin/ngircd")


class Ngircd:
    """A real IRC server on 127.0.0.1:<port>, configured for load tests:
    no connection limits, no join limit, long nicks, no flood penalties
    (MaxPenaltyTime = 0), no DNS/ident/PAM lookups, huge ping timeouts."""

    def __init__(self, ctx, name="irc.baton.test", port=None, max_connections_ip=0,
                 ping_timeout=3600, pong_timeout=3600):
        """ping_timeout: seconds of silence after which ngircd PINGs a
        connection; pong_timeout: how long it then waits for data."""
        self.ctx = ctx
        self.name = name
        self.ping_timeout = ping_timeout
        self.pong_timeout = pong_timeout
        self.max_connections_ip = max_connections_ip  # 0: unlimited
        self.port = port or free_port()
        self.dir = os.path.join(ctx.dir, "ngircd")
        os.makedirs(self.dir, exist_ok=True)
        self.conf = os.path.join(self.dir, "ngircd.conf")
        self.log_path = os.path.join(self.dir, "ngircd.log")
        self.proc = None

    def config_text(self):
        return "\n".join([
            "[Global]",
            "Name = %s" % self.name,
            "Info = baton integration test server",
            "AdminInfo1 = baton tests", "AdminInfo2 = loopback", "AdminEMail = root@localhost",
            "Listen = 127.0.0.1",
            "Ports = %d" % self.port,
            "MotdPhrase = baton test server",
            "[Limits]",
            "MaxConnections = 0",
            "MaxConnectionsIP = %d" % self.max_connections_ip,
            "MaxJoins = 0",
            "MaxNickLength = 30",
            "MaxPenaltyTime = 0",  # disables flood penalties altogether (ngircd >= 26)
            "MaxListSize = 1000",
            "PingTimeout = %d" % self.ping_timeout,
            "PongTimeout = %d" % self.pong_timeout,
            "IdleTimeout = 0",
            "[Options]",
            "DNS = no",
            "Ident = no",
            "PAM = no",
            "MorePrivacy = no",
            "ScrubCTCP = no",
            "",
        ])

    def start(self):
        if not os.access(NGIRCD, os.X_OK):
            raise Skip("ngircd not installed at %s" % NGIRCD)
        with open(self.conf, "w") as f:
            f.write(self.config_text())
        self.logf = open(self.log_path, "ab")
        self.proc = self.ctx.procs.popen([NGIRCD, "-n", "-f", self.conf],
                                         stdout=self.logf, stderr=subprocess.STDOUT,
                                         cwd=self.dir)
        wait_port(self.port, proc=self.proc, timeout=10)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def unregistered(self, nicks, since=0):
        """ngircd log lines 'User "nick!..." unregistered' for any of `nicks`
        (lower-case set) after byte offset `since` of the log."""
        want = {n.lower() for n in nicks}
        out = []
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                text = f.read().decode(errors="replace")
        except OSError:
            return out
        for ln in text.splitlines():
            m = re.search(r'User "([^"!]+)![^"]*" unregistered', ln)
            if m and m.group(1).lower() in want:
                out.append(ln.strip())
        return out

    def stop(self):
        if self.proc:
            Procs.stop(self.proc)


# --------------------------------------------------------------------------
# baton
# --------------------------------------------------------------------------

_hash_cache = {}


def pump_ready(ctx, b, timeout=60, nsessions=None):
    """Baton.wait_ready() while ctx's IRC loop keeps running (watchers and
    clients answer PINGs meanwhile)."""
    end = now() + timeout
    while True:
        try:
            return b.wait_ready(timeout=0.5, nsessions=nsessions)
        except AssertionError:
            if now() > end or not b.alive():
                raise
        ctx.loop.run_for(0.2)


def password_hash(password):
    """crypt(3) SHA-512 hash via `openssl passwd -6`; computed once per password."""
    h = _hash_cache.get(password)
    if h is None:
        out = subprocess.run(["openssl", "passwd", "-6", password],
                             capture_output=True, text=True, check=True)
        h = out.stdout.strip()
        _hash_cache[password] = h
    return h


class Session:
    """One configured user/network session (one user per session here)."""

    def __init__(self, user, network, nick, channels, password):
        self.user = user
        self.network = network
        self.nick = nick
        self.channels = list(channels)
        self.password = password

    def pass_line(self, client=None):
        who = "%s/%s" % (self.user, self.network)
        if client:
            who += "@" + client
        return "%s:%s" % (who, self.password)


def roomy_backlog(lines):
    """[sessiond] keys for a test whose replays need up to `lines` lines of
    one buffer kept whole (the default bounds keep 256 KiB per buffer and
    4 MiB / 20,000 lines per session). Room for them comes from the channel
    and member-list bounds, so that the worker's preflight still finds every
    session able to fit one migration message (sessiond/state.h)."""
    return {"backlog_lines": lines,
            "backlog_cache_lines": lines,  # in memory too, store or not
            "backlog_buffer_bytes": 8 << 20,
            "backlog_session_lines": min(2 * lines, 60000),
            "backlog_session_bytes": 8 << 20,
            "max_channels": 10,
            "member_list_bytes": 1 << 20}


# [listen] limits per client address. Every test client comes from
# 127.0.0.1, so with the defaults (16 unregistered connections and 32 TLS
# handshakes per address) load tests with hundreds of clients logging in at
# once would be refused: unless a test sets its own listen_opts, those two
# are lifted (test_strangers.py tests them). The failed-login throttle and
# the totals keep their defaults.
LISTEN_LIFTED = {"max_pending_per_ip": 100000, "max_tls_handshakes_per_ip": 100000}


class Baton:
    """baton fixture: config + supervisor + batonctl.

    ctx: Context; ngircd: Ngircd (the network 'net' points at it).
    nsessions sessions for users u000..: nick <nick_prefix>NNN, in `channels`.
    sessiond_opts: extra [sessiond] keys; supervisor_opts: extra [supervisor]
    keys; fault_file: path exported as BATON_FAULT_FILE; build: Build of the
    first worker and of the supervisor/batonctl used."""

    def __init__(self, ctx, ngircd, nsessions=1, channels=("#chat", "#ops"),
                 build=None, network="net", nick_prefix="bn", user_prefix="u",
                 password="secret", sessiond_opts=None, supervisor_opts=None,
                 fault_file=None, handoff_timeout=10, nlisten=1, rlimit_nofile=None,
                 network_opts=None, ircs=None, upstream_port=None, session_opts=None,
                 listen_opts=None):
        """ircs: (cert_file, key_file) adds one TLS listener (self.tls_port)
        for clients. upstream_port: the network's port when it is not
        ngircd's plaintext one (e.g. its TLS port with network_opts
        tls = yes)."""
        self.ctx = ctx
        self.session_opts = dict(session_opts or {})  # extra keys of every [user U/N]
        # extra [listen] keys (limits on the client port)
        self.listen_opts = dict(listen_opts if listen_opts is not None else LISTEN_LIFTED)
        self.ircs = ircs
        self.tls_port = free_port() if ircs else None
        self.upstream_port = upstream_port
        # [network] keys. The reconnect governor's defaults (4 connects per
        # minute, 3 per source address) would make load tests with hundreds
        # of sessions from 127.0.0.1 take hours: unless a test sets its own,
        # the limits are lifted (test_governor.py tests them).
        self.network_opts = dict(network_opts if network_opts is not None else
                                 {"connects_per_minute": 6000, "connect_burst": 10000,
                                  "max_connections_per_ip": 100000})
        self.ngircd = ngircd
        self.build = (build or ctx.builds["a"]).require()
        self.network = network
        self.channels = list(channels)
        self.dir = os.path.join(ctx.dir, "baton")
        os.makedirs(self.dir, exist_ok=True)
        self.config = os.path.join(self.dir, "baton.ini")
        self.log_path = os.path.join(self.dir, "supervisor.log")
        self.fault_file = fault_file or os.path.join(self.dir, "faults")
        self.handoff_timeout = handoff_timeout
        self.sessiond_opts = dict(sessiond_opts or {})
        self.supervisor_opts = dict(supervisor_opts or {})
        self.rlimit_nofile = rlimit_nofile
        self.ports = [free_port() for _ in range(nlisten)]
        width = max(3, len(str(nsessions - 1)))
        self.sessions = [
            Session("%s%0*d" % (user_prefix, width, i), network,
                    "%s%0*d" % (nick_prefix, width, i), self.channels, password)
            for i in range(nsessions)]
        self.by_user = {s.user: s for s in self.sessions}
        self.by_nick = {s.nick.lower(): s for s in self.sessions}
        self.proc = None
        self.last_status = None
        self.worker_pids_seen = set()
        self.write_config()

    @property
    def port(self):
        return self.ports[0]

    # ---- config ----

    def config_text(self):
        L = ["; written by tests/integration/batonlib.py", "[supervisor]",
             "control = baton.sock",
             "sessiond = %s" % self.build.sessiond,
             "state_dir = state",
             "handoff_timeout = %d" % self.handoff_timeout]
        L += ["%s = %s" % kv for kv in self.supervisor_opts.items()]
        if self.sessiond_opts:
            L.append("[sessiond]")
            L += ["%s = %s" % kv for kv in self.sessiond_opts.items()]
        L.append("[listen]")
        L += ["irc = 127.0.0.1:%d" % p for p in self.ports]
        if self.ircs:
            L += ["ircs = 127.0.0.1:%d" % self.tls_port,
                  "tls_cert = %s" % self.ircs[0], "tls_key = %s" % self.ircs[1]]
        L += ["%s = %s" % kv for kv in self.listen_opts.items()]
        L += ["[network %s]" % self.network, "host = 127.0.0.1",
              "port = %d" % (self.upstream_port or self.ngircd.port)]
        L += ["%s = %s" % kv for kv in self.network_opts.items()]
        hashes = {}
        for s in self.sessions:
            h = hashes.get(s.password) or hashes.setdefault(s.password, password_hash(s.password))
            L += ["[user %s]" % s.user, "password = %s" % h,
                  "[user %s/%s]" % (s.user, s.network), "nick = %s" % s.nick,
                  "username = %s" % s.user, "realname = baton test %s" % s.user,
                  "channels = %s" % " ".join(s.channels)]
            L += ["%s = %s" % kv for kv in self.session_opts.items()]
        return "\n".join(L) + "\n"

    def write_config(self, text=None):
        with open(self.config, "w") as f:
            f.write(self.config_text() if text is None else text)

    # ---- processes ----

    def start(self, wait=True, timeout=60):
        """Start the supervisor (stderr+stdout to supervisor.log); with wait,
        block until status shows a worker with every session registered."""
        env = dict(os.environ)
        env["BATON_FAULT_FILE"] = self.fault_file
        argv = [self.build.supervisor, "-c", self.config]
        if self.rlimit_nofile:
            argv = ["prlimit", "--nofile=%d:%d" % (self.rlimit_nofile, self.rlimit_nofile),
                    "--"] + argv
        self.logf = open(self.log_path, "ab")
        self.proc = self.ctx.procs.popen(argv, env=env, stdout=self.logf,
                                         stderr=subprocess.STDOUT, cwd=self.dir)
        wait_port(self.port, proc=self.proc, timeout=15)
        if wait:
            self.wait_ready(timeout=timeout)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, n=30):
        return "\n".join(self.log_text().splitlines()[-n:])

    def stop(self):
        if self.proc:
            Procs.stop(self.proc, grace=5.0)

    # ---- batonctl ----

    def ctl(self, *args, timeout=120, build=None):
        """Run batonctl -c CONFIG ARGS...; returns (exit code, parsed JSON or
        None, raw stdout, stderr)."""
        b = build or self.build
        out = subprocess.run([b.batonctl, "-c", self.config] + list(args),
                             capture_output=True, text=True, timeout=timeout)
        data = None
        if out.stdout.strip():
            try:
                data = json.loads(out.stdout)
            except ValueError:
                data = None
        return out.returncode, data, out.stdout, out.stderr

    def ctl_async(self, *args):
        """Start batonctl without waiting (pump an IrcLoop meanwhile); finish
        with finish_ctl(p). stdout/stderr go to temp files (no pipe stalls)."""
        out = tempfile.TemporaryFile(dir=self.dir)
        err = tempfile.TemporaryFile(dir=self.dir)
        p = self.ctx.procs.popen([self.build.batonctl, "-c", self.config] + list(args),
                                 stdout=out, stderr=err)
        p._out, p._err = out, err
        return p

    @staticmethod
    def finish_ctl(p):
        p.wait()
        p._out.seek(0)
        p._err.seek(0)
        stdout = p._out.read().decode(errors="replace")
        stderr = p._err.read().decode(errors="replace")
        data = None
        try:
            data = json.loads(stdout) if stdout.strip() else None
        except ValueError:
            pass
        return p.returncode, data, stdout, stderr

    def status(self):
        """Parsed `batonctl status --json` (raises HarnessError on failure)."""
        rc, data, out, err = self.ctl("status", "--json", timeout=30)
        if rc != 0 or not isinstance(data, dict):
            raise HarnessError("batonctl status failed: rc=%s out=%r err=%r"
                               % (rc, out[-500:], err[-500:]))
        self.last_status = data
        for w in data.get("workers") or []:
            if w.get("pid"):
                self.worker_pids_seen.add(w["pid"])
        return data

    def try_status(self):
        try:
            return self.status()
        except (HarnessError, subprocess.TimeoutExpired):
            return None

    def workers(self):
        return self.status().get("workers") or []

    def worker(self):
        """The single active worker's status dict (fails if not exactly one)."""
        ws = self.workers()
        check(len(ws) == 1, "expected exactly one worker, status shows %d: %s" % (len(ws), ws))
        return ws[0]

    def worker_pid(self):
        return self.worker()["pid"]

    def version(self):
        return self.worker().get("version")

    def upgrade(self, build, timeout=120):
        """`batonctl upgrade BIN --json` -> (exit code, parsed JSON)."""
        rc, data, out, err = self.ctl("upgrade", build.sessiond, "--json", timeout=timeout)
        return rc, data if data is not None else {"_stdout": out, "_stderr": err}

    def rollback(self, timeout=120):
        rc, data, out, err = self.ctl("rollback", "--json", timeout=timeout)
        return rc, data if data is not None else {"_stdout": out, "_stderr": err}

    def fd_count(self, pid=None):
        return fd_count(pid or self.worker_pid())

    @staticmethod
    def worker_registered(w):
        """Number of sessions whose upstream is registered, if the worker
        status says so (key names tolerated: upstreams_connected, upstreams,
        registered); None if the status does not tell."""
        for k in ("upstreams_connected", "upstreams", "registered"):
            if isinstance(w.get(k), int):
                return w[k]
        return None

    def wait_ready(self, timeout=60, nsessions=None):
        """Until status shows one worker holding every session, all of them
        registered upstream (when status reports it)."""
        want = len(self.sessions) if nsessions is None else nsessions
        deadline = now() + timeout
        last = None
        while now() < deadline:
            if not self.alive():
                raise AssertionError("supervisor exited (rc=%s); log:\n%s"
                                     % (self.proc.returncode, self.log_tail()))
            st = self.try_status()
            last = st
            ws = (st or {}).get("workers") or []
            if len(ws) == 1 and ws[0].get("sessions") == want:
                reg = self.worker_registered(ws[0])
                if reg is None or reg >= want:
                    return st
            time.sleep(0.1)
        raise AssertionError("baton not ready after %.0fs; last status %s; log:\n%s"
                             % (timeout, last, self.log_tail()))

    def set_fault(self, spec):
        """Write the fault-injection file (e.g. 'target:after-begin')."""
        with open(self.fault_file, "w") as f:
            f.write(spec + "\n")

    def clear_fault(self):
        try:
            os.unlink(self.fault_file)
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------
# IRC: parsing
# --------------------------------------------------------------------------


class Msg:
    """A parsed IRC line: tags (raw str or None), prefix, nick, command
    (upper case), params (list, trailing included)."""
    __slots__ = ("raw", "tags", "prefix", "nick", "command", "params")

    def __init__(self, raw):
        self.raw = raw
        s = raw
        self.tags = None
        if s.startswith("@"):
            self.tags, _, s = s[1:].partition(" ")
        self.prefix = None
        if s.startswith(":"):
            self.prefix, _, s = s[1:].partition(" ")
        self.nick = self.prefix.split("!", 1)[0] if self.prefix else None
        trailing = None
        if " :" in s:
            s, trailing = s.split(" :", 1)
        parts = s.split()
        self.command = parts[0].upper() if parts else ""
        self.params = parts[1:]
        if trailing is not None:
            self.params.append(trailing)

    def param(self, i, default=None):
        return self.params[i] if len(self.params) > i else default

    def __repr__(self):
        return "Msg(%r)" % self.raw


def parse(raw):
    return Msg(raw)


# --------------------------------------------------------------------------
# IRC: event loop and connections
# --------------------------------------------------------------------------


class IrcConn:
    """One non-blocking IRC connection driven by an IrcLoop.

    lines:     every received line as (monotonic receive time, str)
    closed:    set when the peer closed (or the socket failed); close_time,
               close_reason ('eof', 'error: ...', 'local')
    errors:    received ERROR lines
    registered: True after 001; nick: the nick from 001
    on_line:   optional callback(conn, t, line) called for each line
    PING is answered with PONG automatically (and recorded like any line).
    """

    def __init__(self, loop, host, port, name=None, record=True, rcvbuf=None, tls=None,
                 source=None):
        """tls: an ssl.SSLContext: the connection does a (non-blocking) TLS
        handshake after connecting; lines flow once it is done. source: a
        local address to connect from (e.g. "127.0.0.2": every 127/8
        address is local, so a test can play several client addresses)."""
        self.loop = loop
        self.name = name or "%s:%d" % (host, port)
        self.addr = (host, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source:
            self.sock.bind((source, 0))
        if rcvbuf:
            # small receive window: lets a test build up output on the peer
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.paused = False
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connected = False
        self.closed = False
        self.close_time = None
        self.close_reason = None
        self.local_close = False
        self.rbuf = b""
        self.wbuf = bytearray()
        self.lines = []
        self.record = record
        self.errors = []
        self.registered = False
        self.nick = None
        self.on_line = None
        self.bytes_in = 0
        self.open_time = now()
        self.tls = tls is not None
        self.tls_done = False
        self._hs_want_write = True
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, do_handshake_on_connect=False,
                                        server_hostname=None if tls.check_hostname is False else host)
        rc = self.sock.connect_ex((host, port))
        if rc not in (0, errno.EINPROGRESS):
            self._closed("error: connect: %s" % os.strerror(rc))
            return
        loop._register(self)

    # -- sending --

    def send(self, line):
        """Queue one line (CRLF added) and try to write at once."""
        if self.closed:
            raise HarnessError("send on closed connection %s: %r" % (self.name, line))
        self.wbuf += line.encode("utf-8", "replace") + b"\r\n"
        if self.connected:
            self._flush()

    def send_many(self, lines):
        for ln in lines:
            self.wbuf += ln.encode("utf-8", "replace") + b"\r\n"
        if self.connected and not self.closed:
            self._flush()

    def privmsg(self, target, text):
        self.send("PRIVMSG %s :%s" % (target, text))

    def quit(self, reason="bye"):
        self.send("QUIT :%s" % reason)

    def close(self):
        """Close from our side (recorded as 'local', not as a peer close)."""
        if not self.closed:
            self.local_close = True
            self._closed("local")

    def pending_output(self):
        return len(self.wbuf)

    def pause_reading(self):
        """Stop reading (a slow client): the peer's output backs up."""
        self.paused = True
        self.loop._want_write(self, bool(self.wbuf))

    def resume_reading(self):
        self.paused = False
        self.loop._want_write(self, bool(self.wbuf))

    # -- internals --

    def _handshake(self):
        """TLS: advance the handshake; True once done."""
        if self.tls_done:
            return True
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._hs_want_write = False
            return False
        except ssl.SSLWantWriteError:
            self._hs_want_write = True
            return False
        except (OSError, ssl.SSLError) as e:
            self._closed("error: tls handshake: %s" % e)
            return False
        self.tls_done = True
        return True

    def tls_version(self):
        return (self.sock.version(), self.sock.cipher()[0]) if self.tls_done else None

    def _flush(self):
        if self.tls and not self._handshake():
            if not self.closed:
                self.loop._want_write(self, self._hs_want_write)
            return
        while self.wbuf:
            try:
                n = self.sock.send(self.wbuf)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError,
                    ssl.SSLWantReadError):
                break
            except OSError as e:
                self._closed("error: send: %s" % e)
                return
            del self.wbuf[:n]
        self.loop._want_write(self, bool(self.wbuf))

    def _on_writable(self):
        if not self.connected:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._closed("error: connect: %s" % os.strerror(err))
                return
            self.connected = True
        self._flush()

    def _on_readable(self):
        if self.tls:
            if not self._handshake():
                return
            # Decrypted bytes wait inside the SSL object, invisible to
            # select(): read until it wants more from the socket.
            chunks = []
            while True:
                try:
                    d = self.sock.recv(262144)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError,
                        BlockingIOError, InterruptedError):
                    break
                except (OSError, ssl.SSLError) as e:
                    if chunks:
                        break
                    self._closed("error: recv: %s" % e)
                    return
                if not d:
                    if not chunks:
                        self._closed("eof")
                        return
                    break
                chunks.append(d)
            if not chunks:
                if self.wbuf:
                    self._flush()
                return
            data = b"".join(chunks)
        else:
            try:
                data = self.sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._closed("error: recv: %s" % e)
                return
            if not data:
                self._closed("eof")
                return
        if not self.connected:
            self.connected = True
        self.bytes_in += len(data)
        t = now()
        buf = self.rbuf + data
        parts = buf.split(b"\n")
        self.rbuf = parts.pop()
        for raw in parts:
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            if not line:
                continue
            self._on_line(t, line)

    def _on_line(self, t, line):
        if self.record:
            self.lines.append((t, line))
        # cheap dispatch on the command word without a full parse
        sp = line.split(" ", 3)
        i = 0
        if sp[0].startswith("@"):
            i += 1
        if len(sp) > i and sp[i].startswith(":"):
            i += 1
        cmd = sp[i].upper() if len(sp) > i else ""
        if cmd == "PING":
            m = Msg(line)
            self.send("PONG :%s" % (m.params[-1] if m.params else ""))
        elif cmd == "001":
            self.registered = True
            m = Msg(line)
            self.nick = m.param(0)
        elif cmd == "ERROR":
            self.errors.append((t, line))
        elif cmd == "NICK" and self.nick:
            m = Msg(line)
            if m.nick and m.nick.lower() == self.nick.lower() and m.params:
                self.nick = m.params[0]
        if self.on_line is not None:
            self.on_line(self, t, line)

    def _closed(self, reason):
        if self.closed:
            return
        self.closed = True
        self.close_time = now()
        self.close_reason = reason
        self.loop._unregister(self)
        try:
            self.sock.close()
        except OSError:
            pass

    # -- queries --

    def msgs(self, command=None, since=0):
        """Parsed received lines (optionally only `command`), from index `since`."""
        out = []
        for t, ln in self.lines[since:]:
            m = Msg(ln)
            if command is None or m.command == command:
                out.append(m)
        return out

    def find(self, pred, since=0):
        for t, ln in self.lines[since:]:
            m = Msg(ln)
            if pred(m):
                return m
        return None

    def __repr__(self):
        return "IrcConn(%s%s)" % (self.name, ", closed=%s" % self.close_reason if self.closed else "")


class IrcLoop:
    """A selectors event loop for many IrcConn plus simple timers.

    poll(timeout) runs one round; run_until(pred, timeout) pumps until pred()
    is true; run_for(seconds) pumps for a while; call_at/call_later schedule
    callbacks (run from the loop); every(interval, fn) repeats fn."""

    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.conns = set()
        self.timers = []
        self._seq = 0

    def connect(self, port, host="127.0.0.1", name=None, record=True, rcvbuf=None, tls=None,
                source=None):
        return IrcConn(self, host, port, name=name, record=record, rcvbuf=rcvbuf, tls=tls,
                       source=source)

    def _register(self, c):
        self.conns.add(c)
        self.sel.register(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
        c._events = selectors.EVENT_READ | selectors.EVENT_WRITE

    def _unregister(self, c):
        self.conns.discard(c)
        if getattr(c, "_events", 0):
            try:
                self.sel.unregister(c.sock)
            except (KeyError, ValueError, OSError):
                pass
        c._events = 0

    def _want_write(self, c, on):
        if c.closed:
            return
        ev = (0 if c.paused else selectors.EVENT_READ) | (selectors.EVENT_WRITE if on else 0)
        if ev == 0:
            # selectors cannot hold an fd with no events: park it
            if c._events:
                try:
                    self.sel.unregister(c.sock)
                except (KeyError, ValueError, OSError):
                    pass
                c._events = 0
            return
        if c._events == 0:
            c._events = ev
            self.sel.register(c.sock, ev, c)
            return
        if ev != c._events:
            c._events = ev
            try:
                self.sel.modify(c.sock, ev, c)
            except (KeyError, ValueError, OSError):
                pass

    def call_at(self, t, fn, *args):
        self._seq += 1
        heapq.heappush(self.timers, (t, self._seq, fn, args))

    def call_later(self, dt, fn, *args):
        self.call_at(now() + dt, fn, *args)

    def every(self, interval, fn, until=None):
        """Call fn() every interval seconds (until fn returns False or the
        monotonic time `until`)."""
        def tick():
            if until is not None and now() >= until:
                return
            if fn() is False:
                return
            self.call_later(interval, tick)
        self.call_later(interval, tick)

    def poll(self, timeout=0.05):
        """One round: wait at most timeout for I/O, then run due timers."""
        if self.timers:
            timeout = max(0.0, min(timeout, self.timers[0][0] - now()))
        if self.conns:
            events = self.sel.select(timeout)
            for key, mask in events:
                c = key.data
                if c.closed:
                    continue
                if mask & selectors.EVENT_WRITE:
                    c._on_writable()
                if mask & selectors.EVENT_READ and not c.closed:
                    c._on_readable()
        elif timeout > 0:
            time.sleep(timeout)
        t = now()
        while self.timers and self.timers[0][0] <= t:
            _, _, fn, args = heapq.heappop(self.timers)
            fn(*args)

    def run_for(self, seconds):
        end = now() + seconds
        while now() < end:
            self.poll(min(0.05, max(0.0, end - now())))

    def run_until(self, pred, timeout, what="condition", raise_on_timeout=True):
        """Pump until pred() is true. Returns True, or raises AssertionError
        (or returns False with raise_on_timeout=False) after timeout."""
        end = now() + timeout
        while True:
            if pred():
                return True
            if now() >= end:
                if raise_on_timeout:
                    raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
                return False
            self.poll(min(0.05, max(0.0, end - now())))

    def wait_process(self, p, timeout=300):
        """Pump the loop until subprocess p exits (traffic keeps flowing)."""
        end = now() + timeout
        while p.poll() is None:
            if now() > end:
                raise AssertionError("process %s did not finish in %.0fs" % (p.args, timeout))
            self.poll(0.02)
        return p.returncode

    def close_all(self):
        for c in list(self.conns):
            c.close()
        self.timers = []


# --------------------------------------------------------------------------
# IRC: logging in
# --------------------------------------------------------------------------


def direct_user(loop, ngircd, nick, channels=(), user=None, wait=True, timeout=10):
    """A plain user connected straight to ngircd (no bouncer); joins channels.
    With wait, returns after 001 and the server's JOIN echo of every channel."""
    c = loop.connect(ngircd.port, name="direct:" + nick)
    c.send("NICK %s" % nick)
    c.send("USER %s 0 * :direct %s" % (user or nick, nick))
    if channels:
        c.send("JOIN %s" % ",".join(channels))
    if wait:
        loop.run_until(lambda: c.registered or c.closed, timeout, "%s registration" % nick)
        check(not c.closed, "direct user %s closed: %s" % (nick, c.close_reason))
        want = {ch.lower() for ch in channels}
        loop.run_until(lambda: want <= joined_channels(c, nick) or c.closed, timeout,
                       "%s joining %s" % (nick, channels))
    return c


def joined_channels(conn, nick):
    """Channels for which conn received a JOIN of `nick`."""
    out = set()
    for m in conn.msgs("JOIN"):
        if m.nick and m.nick.lower() == nick.lower() and m.params:
            out.update(ch.lower() for ch in m.params[0].split(","))
    return out


def bouncer_client(loop, baton, session, client=None, password=None, nick=None,
                   wait=True, timeout=15, port=None, name=None, rcvbuf=None, tls=None,
                   source=None):
    """A client logging in to baton as `session` (PASS user/net[@client]:pw,
    NICK, USER). With wait: returns after 001 and a JOIN for each of the
    session's channels (fails if the connection closes first). tls: an
    ssl.SSLContext: connect to the ircs listener over TLS."""
    if port is None and tls is not None:
        port = baton.tls_port
    c = loop.connect(port or baton.port, name=name or "client:%s@%s" % (session.user, client),
                     rcvbuf=rcvbuf, tls=tls, source=source)
    pw = session.pass_line(client) if password is None else password
    c.send("PASS %s" % pw)
    c.send("NICK %s" % (nick or session.nick))
    c.send("USER %s 0 * :test client" % session.user)
    if wait:
        wait_attached(loop, c, session, timeout)
    return c


def wait_attached(loop, c, session, timeout=15):
    want = {ch.lower() for ch in session.channels}

    def ok():
        return c.closed or (c.registered and want <= joined_channels(c, c.nick or session.nick))
    loop.run_until(ok, timeout, "client %s attach (001 + JOINs)" % c.name)
    check(not c.closed, "client %s was closed while attaching (%s); last lines: %s"
          % (c.name, c.close_reason, [ln for _, ln in c.lines[-5:]]))


# --------------------------------------------------------------------------
# numbered payloads
# --------------------------------------------------------------------------

TOKEN_RE = re.compile(r"<<([A-Za-z0-9_.\-]+):(\d+)>>")


def token(sender, n):
    """The unique mark of line n of sender; put it in the text of a line."""
    return "<<%s:%d>>" % (sender, n)


def tokens(line):
    """All (sender, n) marks in a received line."""
    return [(s, int(n)) for s, n in TOKEN_RE.findall(line)]


def clean_text(text, limit=300):
    """Trace text made safe for a PRIVMSG payload (no CR/LF/NUL, no marks)."""
    text = re.sub(r"[\r\n\x00]", " ", text).replace("<<", "< <").replace(">>", "> >")
    return text[:limit]


class Ledger:
    """Bookkeeping of numbered lines.

    sent(sender, target, text) assigns the next number, returns the payload
    token and records (sender, n) -> (target, time). Receivers record what
    arrived via receive(receiver, line) (typically from IrcConn.on_line).
    expected(receiver) is supplied by the test as a set of (sender, n).
    diff() compares and reports precise differences."""

    def __init__(self):
        self.counter = collections.Counter()
        self.sent = {}                      # (sender, n) -> (target, t)
        self.by_sender = collections.defaultdict(list)
        self.received = collections.defaultdict(list)   # receiver -> [(sender, n, t)]

    def next(self, sender, target):
        self.counter[sender] += 1
        n = self.counter[sender]
        self.sent[(sender, n)] = (target, now())
        self.by_sender[sender].append(n)
        return token(sender, n)

    def receive(self, receiver, line, t=None):
        for s, n in tokens(line):
            self.received[receiver].append((s, n, t))

    def hook(self, conn, receiver, pred=None):
        """Record numbered lines arriving on conn under `receiver`
        (only lines for which pred(line) is true, if given)."""
        def on_line(c, t, line):
            if "<<" in line and (pred is None or pred(line)):
                self.receive(receiver, line, t)
        conn.on_line = on_line

    @staticmethod
    def diff_one(expected, got, limit=8):
        """Compare an expected set of (sender, n) with an arrival list of
        (sender, n, t). Returns a dict of problems (empty if perfect)."""
        cnt = collections.Counter((s, n) for s, n, _ in got)
        missing = sorted(expected - set(cnt))
        dups = sorted(k for k, v in cnt.items() if v > 1)
        unexpected = sorted(set(cnt) - expected)
        order = []
        last = {}
        for s, n, _ in got:
            if s in last and n < last[s]:
                order.append((s, last[s], n))
            last[s] = max(n, last.get(s, 0))
        out = {}
        if missing:
            out["missing"] = (len(missing), missing[:limit])
        if dups:
            out["duplicated"] = (len(dups), dups[:limit])
        if unexpected:
            out["unexpected"] = (len(unexpected), unexpected[:limit])
        if order:
            out["out_of_order"] = (len(order), order[:limit])
        return out

    def diff(self, expected_by_receiver, limit_receivers=10):
        """{receiver: problems} for every receiver with a problem."""
        bad = {}
        for r, exp in expected_by_receiver.items():
            d = self.diff_one(exp, self.received.get(r, []))
            if d:
                bad[r] = d
        return bad

    @staticmethod
    def format_diff(bad, limit=12):
        lines = []
        for r in sorted(bad)[:limit]:
            parts = ["%s=%d first %s" % (k, v[0], v[1]) for k, v in sorted(bad[r].items())]
            lines.append("  %s: %s" % (r, "; ".join(parts)))
        if len(bad) > limit:
            lines.append("  ... and %d more receivers" % (len(bad) - limit))
        return "\n".join(lines)


# --------------------------------------------------------------------------
# watcher
# --------------------------------------------------------------------------


class Watcher:
    """A direct ngircd user sitting in `channels`, recording membership
    events (JOIN/PART/QUIT/NICK/KICK) of the nicks in `watch` (lower-case
    set; None = everybody) with receive times, and the numbered lines it sees
    (into ledger under receiver name 'watcher', if given)."""

    def __init__(self, loop, ngircd, channels, watch=None, nick="watcher", ledger=None):
        self.loop = loop
        self.channels = list(channels)
        self.watch = {n.lower() for n in watch} if watch is not None else None
        self.events = []        # (t, command, nick, raw)
        self.members = {ch.lower(): set() for ch in channels}
        self.ledger = ledger
        self.conn = direct_user(loop, ngircd, nick, channels, wait=False)
        self.conn.on_line = self._on_line
        self.nick = nick
        loop.run_until(lambda: self.conn.closed or
                       {c.lower() for c in channels} <= joined_channels(self.conn, nick),
                       10, "watcher joining")
        check(not self.conn.closed, "watcher connection closed: %s" % self.conn.close_reason)

    def _watched(self, nick):
        return nick and (self.watch is None or nick.lower() in self.watch)

    def _on_line(self, c, t, line):
        if "<<" in line and self.ledger is not None:
            m = Msg(line)
            if m.command == "PRIVMSG":
                self.ledger.receive("watcher", line, t)
            return
        m = Msg(line)
        cmd = m.command
        if cmd == "353":     # NAMES reply: = #chan :nick1 @nick2
            ch = m.param(2, "").lower()
            if ch in self.members:
                for n in m.params[-1].split():
                    self.members[ch].add(n.lstrip("@+%&~").lower())
        elif cmd == "JOIN" and m.nick:
            for ch in m.param(0, "").split(","):
                self.members.setdefault(ch.lower(), set()).add(m.nick.lower())
            if self._watched(m.nick):
                self.events.append((t, cmd, m.nick.lower(), line))
        elif cmd == "PART" and m.nick:
            for ch in m.param(0, "").split(","):
                self.members.setdefault(ch.lower(), set()).discard(m.nick.lower())
            if self._watched(m.nick):
                self.events.append((t, cmd, m.nick.lower(), line))
        elif cmd == "QUIT" and m.nick:
            for s in self.members.values():
                s.discard(m.nick.lower())
            if self._watched(m.nick):
                self.events.append((t, cmd, m.nick.lower(), line))
        elif cmd == "KICK":
            victim = m.param(1, "").lower()
            self.members.setdefault(m.param(0, "").lower(), set()).discard(victim)
            if self._watched(victim):
                self.events.append((t, cmd, victim, line))
        elif cmd == "NICK" and m.nick:
            new = m.param(0, "").lower()
            for s in self.members.values():
                if m.nick.lower() in s:
                    s.discard(m.nick.lower())
                    s.add(new)
            if self._watched(m.nick) or self._watched(new):
                self.events.append((t, cmd, m.nick.lower(), line))

    def all_present(self, nicks):
        """True when every nick is a member of every watched channel."""
        want = {n.lower() for n in nicks}
        return all(want <= self.members[ch.lower()] for ch in self.channels)

    def wait_present(self, nicks, timeout=60):
        def ok():
            return self.all_present(nicks)
        if not self.loop.run_until(ok, timeout, raise_on_timeout=False):
            missing = {ch: sorted({n.lower() for n in nicks} - self.members[ch.lower()])[:10]
                       for ch in self.channels}
            raise AssertionError("bouncer nicks not all in channels after %ds; missing: %s"
                                 % (timeout, missing))

    def events_between(self, t0, t1=None, commands=("JOIN", "PART", "QUIT", "KICK", "NICK")):
        return [e for e in self.events
                if e[0] >= t0 and (t1 is None or e[0] <= t1) and e[1] in commands]


# --------------------------------------------------------------------------
# traces
# --------------------------------------------------------------------------

# The suite replays a trimmed slice of the real trace that lives in the
# project (tests/data/, the first 18,000 events: 22 days, the same mix), so a
# fresh clone alone runs every test. Benchmarks read the full trace from
# shared/ beside the checkout when it is there (FULL_TRACE_PATH).
TRACE_PATH = os.environ.get("BATON_TRACE", os.path.join(
    REPO_ROOT, "tests", "data", "trace-slice.jsonl"))
FULL_TRACE_PATH = os.path.join(
    os.path.dirname(REPO_ROOT), "shared", "traces", "sample-trace.jsonl")


def load_trace(path=TRACE_PATH, limit=None, start=0):
    """Events of the anonymized real IRC trace as dicts (t, chan, nick, type,
    text | reason | newnick | chans), in file order. Raises Skip when the
    file is absent."""
    if not os.path.exists(path):
        raise Skip("trace file %s is absent: trace-driven traffic skipped" % path)
    out = []
    with open(path) as f:
        for i, line in enumerate(f):
            if i < start:
                continue
            if limit is not None and len(out) >= limit:
                break
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def compress_trace(events, duration, max_gap=None):
    """Time-compress events onto [0, duration] seconds: gaps longer than
    max_gap trace-seconds (idle nights) are shortened to max_gap first, then
    everything is scaled linearly. Returns a list of (offset_s, event)."""
    if not events:
        return []
    out = []
    t_prev = events[0]["t"]
    acc = 0.0
    for e in events:
        gap = e["t"] - t_prev
        if max_gap is not None:
            gap = min(gap, max_gap)
        acc += max(0.0, gap)
        t_prev = e["t"]
        out.append((acc, e))
    scale = duration / acc if acc > 0 else 0.0
    return [(off * scale, e) for off, e in out]


def trace_window(duration, privmsg_rate, path=TRACE_PATH, start_fraction=0.3, max_gap=600.0):
    """A window of the trace holding about duration*privmsg_rate privmsg
    events (plus the joins/quits/parts/nicks in between), compressed onto
    `duration` seconds. Returns a list of (offset_s, event)."""
    events = load_trace(path)
    want = int(duration * privmsg_rate)
    i0 = int(len(events) * start_fraction)
    n_msgs = 0
    i = i0
    while i < len(events) and n_msgs < want:
        if events[i]["type"] in ("privmsg", "action"):
            n_msgs += 1
        i += 1
    return compress_trace(events[i0:i], duration, max_gap=max_gap)


# --------------------------------------------------------------------------
# load scenario: ngircd + watcher + baton + network users + bouncer clients,
# numbered traffic in both directions, and the exactly-once verification
# --------------------------------------------------------------------------


class Client:
    """A bouncer client of one session under a fixed client name. Survives
    detach/reattach: conns lists every connection it ever had; all numbered
    lines they received go to the ledger under the session's user name."""

    def __init__(self, scen, session, client_name="c"):
        self.scen = scen
        self.session = session
        self.client_name = client_name
        self.conns = []
        self.conn = None
        self.joined = set()
        self.state = "detached"   # detached | attaching | attached | quitting
        self.quit_times = []
        self.notes = []           # harness observations (e.g. no close after QUIT)

    @property
    def user(self):
        return self.session.user

    def attach(self):
        s = self.session
        tls = self.scen.client_tls
        c = self.scen.loop.connect(self.scen.baton.tls_port if tls else self.scen.baton.port,
                                   name="client:%s@%s#%d"
                                   % (s.user, self.client_name, len(self.conns) + 1), tls=tls)
        self.conns.append(c)
        self.conn = c
        self.joined = set()
        self.state = "attaching"
        want = {ch.lower() for ch in s.channels}
        ledger = self.scen.ledger
        user = s.user

        def on_line(conn, t, line):
            if "<<" in line:
                ledger.receive(user, line, t)
                return
            if conn is self.conn and self.state == "attaching":
                m = Msg(line)
                if m.command == "JOIN" and m.nick and conn.nick and m.nick.lower() == conn.nick.lower():
                    self.joined.update(ch.lower() for ch in m.param(0, "").split(","))
                    if want <= self.joined:
                        self.state = "attached"
        c.on_line = on_line
        c.send("PASS %s" % s.pass_line(self.client_name))
        c.send("NICK %s" % s.nick)
        c.send("USER %s 0 * :load client" % s.user)
        return c

    def detach(self):
        """Send QUIT; the bouncer is expected to close the connection. If it
        has not after 5 s we close it and note that."""
        if self.state != "attached":
            return False
        self.state = "quitting"
        self.quit_times.append(now())
        c = self.conn
        c.quit("detaching")

        def give_up():
            if not c.closed:
                self.notes.append("bouncer did not close %s within 5s of QUIT" % c.name)
                c.close()
            if self.conn is c:
                self.state = "detached"
        self.scen.loop.call_later(5.0, give_up)

        def poll_closed():
            if c.closed:
                if self.conn is c:
                    self.state = "detached"
                return False
            return True
        self.scen.loop.every(0.05, poll_closed)
        return True

    def can_send(self):
        return self.state == "attached" and not self.conn.closed


class NetUser:
    """A user connected straight to ngircd (a 'network user'), driven either
    by fixed-rate traffic or by trace events (join/part/quit/nick/privmsg).
    A trace quit really quits; the next event reconnects with a new nick and
    a new sender id (ordering is per connection)."""

    def __init__(self, scen, slot, channels_all):
        self.scen = scen
        self.slot = slot
        self.gen = 0
        self.nickno = 0
        self.conn = None
        self.sender = None
        self.chans = set()       # channels joined (as far as we sent)
        self.pending = []        # actions queued until registration
        self.retired = []        # connections we QUIT
        self.all_conns = []

    def nick(self):
        return "t%dn%d" % (self.slot, self.nickno)

    def ensure_online(self):
        if self.conn is not None:
            return
        self.gen += 1
        self.nickno += 1
        self.sender = "t%dc%d" % (self.slot, self.gen)
        self.chans = set()
        c = self.scen.loop.connect(self.scen.ngircd.port, name="net:%s" % self.sender)
        self.conn = c
        self.all_conns.append(c)
        c.send("NICK %s" % self.nick())
        c.send("USER t%d 0 * :network user" % self.slot)

        def on_line(conn, t, line):
            if conn is self.conn and self.pending and conn.registered:
                self.flush()
        c.on_line = on_line

    def do(self, action):
        self.ensure_online()
        self.pending.append(action)
        if self.conn.registered:
            self.flush()

    def flush(self):
        c = self.conn
        pend, self.pending = self.pending, []
        out = []
        for i, a in enumerate(pend):
            kind = a[0]
            if kind == "join":
                if a[1] not in self.chans:
                    self.chans.add(a[1])
                    out.append("JOIN %s" % a[1])
            elif kind == "part":
                if a[1] in self.chans:
                    self.chans.discard(a[1])
                    out.append("PART %s :%s" % (a[1], a[2] if len(a) > 2 else "bye"))
            elif kind == "nick":
                self.nickno += 1
                out.append("NICK %s" % self.nick())
            elif kind == "msg":
                chan, text, action = a[1], a[2], a[3]
                if chan not in self.chans:
                    self.chans.add(chan)
                    out.append("JOIN %s" % chan)
                tok = self.scen.ledger.next(self.sender, chan)
                body = "%s %s" % (tok, text)
                if action:
                    body = "\x01ACTION %s\x01" % body
                out.append("PRIVMSG %s :%s" % (chan, body))
            elif kind == "quit":
                out.append("QUIT :%s" % a[1])
                c.send_many(out)
                self.retired.append(c)
                self.conn = None
                for b in pend[i + 1:]:   # anything after the quit: new connection
                    self.do(b)
                return
        c.send_many(out)

    def unexpected_closes(self):
        return [c for c in self.all_conns if c.closed and c not in self.retired and not c.local_close]


class LoadScenario:
    """Everything a traffic test needs, wired together.

    nsessions bouncer sessions (users u000.., nicks bn000..) in `channels`;
    the first nattached have a client attached (client name 'c');
    nnet network users straight on ngircd. Numbered lines everywhere:
    clients send to channels and PRIVMSGs to other bouncer nicks; network
    users send to channels (fixed rate or from the trace). verify() checks
    exactly-once/in-order delivery to every attached client and to the
    network (the watcher), plus no closed connections."""

    def __init__(self, ctx, nsessions, nattached, channels=("#c1", "#c2", "#c3"),
                 nnet=4, baton_kw=None, seed=1, ngircd_factory=None, baton_kw_for=None,
                 client_tls=None):
        """TLS everywhere: ngircd_factory(ctx) returns a started server
        (e.g. tlslib.NgircdTls), baton_kw_for(ngircd) extra Baton keywords
        (ircs listener, upstream TLS port and keys), client_tls an
        ssl.SSLContext the bouncer clients use on the ircs listener.
        Network users and the watcher stay on the plaintext port."""
        self.ngircd_factory = ngircd_factory
        self.baton_kw_for = baton_kw_for
        self.client_tls = client_tls
        self.ctx = ctx
        self.loop = ctx.loop
        self.rng = random.Random(seed)
        self.channels = list(channels)
        self.nsessions = nsessions
        self.nattached = nattached
        self.nnet = nnet
        self.baton_kw = dict(baton_kw or {})
        self.ledger = Ledger()
        self.clients = {}
        self.netusers = []
        self.traffic_on = False

    # ---- setup ----

    def setup(self, ready_timeout=120):
        ctx = self.ctx
        self.ngircd = self.ngircd_factory(ctx) if self.ngircd_factory else ctx.ngircd()
        kw = dict(self.baton_kw)
        if self.baton_kw_for:
            kw.update(self.baton_kw_for(self.ngircd))
        self.baton = Baton(ctx, self.ngircd, nsessions=self.nsessions,
                           channels=self.channels, **kw)
        self.nicks = [s.nick for s in self.baton.sessions]
        self.watcher = Watcher(self.loop, self.ngircd, self.channels, watch=self.nicks,
                               ledger=self.ledger)
        self.baton.start(wait=False)
        self.pump_until_ready(ready_timeout)
        self.watcher.wait_present(self.nicks, timeout=ready_timeout)
        for i in range(self.nnet):
            nu = NetUser(self, i, self.channels)
            self.netusers.append(nu)
            for ch in self.channels:
                nu.do(("join", ch))
        for s in self.baton.sessions[:self.nattached]:
            cl = Client(self, s)
            self.clients[s.user] = cl
            cl.attach()
        self.loop.run_until(lambda: all(c.state == "attached" or c.conn.closed
                                        for c in self.clients.values()), 60,
                            "all clients attached")
        bad = [c for c in self.clients.values() if c.conn.closed]
        check(not bad, "%d clients closed while attaching, e.g. %s (%s), last lines %s" % (
            len(bad), bad[0].conn.name, bad[0].conn.close_reason,
            [ln for _, ln in bad[0].conn.lines[-5:]]) if bad else "")
        self.loop.run_until(lambda: all(nu.conn and nu.conn.registered for nu in self.netusers),
                            20, "network users registered")
        self.loop.run_for(0.5)    # let replays of pre-traffic lines settle
        self.t_setup = now()
        self.ngircd_log_mark = self.ngircd.log_size()
        log("setup done: %d sessions, %d clients, %d network users"
            % (self.nsessions, len(self.clients), self.nnet))

    def pump_until_ready(self, timeout):
        """Like Baton.wait_ready but pumps the loop (the watcher must keep
        answering PINGs and recording)."""
        deadline = now() + timeout
        b = self.baton
        while now() < deadline:
            check(b.alive(), "supervisor exited: %s" % b.log_tail())
            st = b.try_status()
            ws = (st or {}).get("workers") or []
            if len(ws) == 1 and ws[0].get("sessions") == self.nsessions:
                reg = Baton.worker_registered(ws[0])
                if reg is None or reg >= self.nsessions:
                    return st
            self.loop.run_for(0.2)
        raise AssertionError("baton not ready in %ds; last status %s; log:\n%s"
                             % (timeout, b.last_status, b.log_tail()))

    # ---- traffic ----

    def client_send(self, cl, pm_ratio=0.5):
        """One numbered line from client cl: to a random channel or as a
        PRIVMSG to a random other bouncer nick."""
        if not cl.can_send():
            return
        if self.rng.random() < pm_ratio:
            other = self.rng.choice(self.baton.sessions)
            if other is cl.session:
                return
            target = other.nick
        else:
            target = self.rng.choice(self.channels)
        tok = self.ledger.next(cl.user, target)
        cl.conn.privmsg(target, "%s from %s" % (tok, cl.user))

    def start_fixed_traffic(self, client_rate=5.0, net_rate=5.0, pm_ratio=0.4, tick=0.05):
        """Aggregate rates in lines/s: clients (random attached client) and
        network users (round robin, random channel)."""
        self.traffic_on = True
        acc = {"c": 0.0, "n": 0.0}
        idx = {"n": 0}
        clients = list(self.clients.values())

        def step():
            if not self.traffic_on:
                return False
            acc["c"] += client_rate * tick
            acc["n"] += net_rate * tick
            while acc["c"] >= 1:
                acc["c"] -= 1
                self.client_send(self.rng.choice(clients), pm_ratio)
            while acc["n"] >= 1 and self.netusers:
                acc["n"] -= 1
                nu = self.netusers[idx["n"] % len(self.netusers)]
                idx["n"] += 1
                nu.do(("msg", self.rng.choice(self.channels), "fixed-rate line", False))
            return True
        self.loop.every(tick, step)

    def start_trace_traffic(self, duration, privmsg_rate, pool=None):
        """Network-user traffic from the real trace: trace nicks hashed onto
        the network-user pool, the trace's channels mapped onto ours in
        order of frequency; joins, parts, quits, nick changes, messages and
        actions replayed time-compressed onto `duration` seconds."""
        window = trace_window(duration, privmsg_rate)
        freq = collections.Counter(e["chan"] for _, e in window)
        chanmap = {c: self.channels[i % len(self.channels)]
                   for i, (c, _) in enumerate(freq.most_common())}
        pool = self.netusers if pool is None else pool
        t0 = now()
        self.trace_stats = collections.Counter(e["type"] for _, e in window)

        def slot(nick):
            return pool[hash_nick(nick) % len(pool)]

        def handle(e):
            if not self.traffic_on:
                return
            nu = slot(e["nick"])
            ch = chanmap.get(e["chan"], self.channels[0])
            typ = e["type"]
            if typ in ("privmsg", "action"):
                nu.do(("msg", ch, clean_text(e.get("text", "")), typ == "action"))
            elif typ == "join":
                nu.do(("join", ch))
            elif typ == "part":
                if nu.conn is not None:
                    nu.do(("part", ch, clean_text(e.get("reason", "") or "part", 100)))
            elif typ == "quit":
                if nu.conn is not None:
                    nu.do(("quit", clean_text(e.get("reason", "") or "quit", 100)))
            elif typ == "nick":
                if nu.conn is not None:
                    nu.do(("nick",))
        self.traffic_on = True
        for off, e in window:
            self.loop.call_at(t0 + off, handle, e)
        return window

    def stop_traffic(self):
        self.traffic_on = False

    def wait_traffic_through(self, timeout=15, what="traffic"):
        """Pump until every attached client and the watcher have received a
        numbered line sent after this call: lines flow end to end through
        whichever worker serves now (what a fixed "let traffic flow for a
        second" meant to leave behind, checked, and in about 0.2 s at the
        fixed rates of the fault tests). Needs traffic running (a fixed
        rate or the trace)."""
        t0 = now()
        sent = self.ledger.sent
        receivers = ["watcher"] + [u for u, cl in self.clients.items()
                                   if cl.state == "attached"]
        waiting = set(receivers)

        def through():
            for r in list(waiting):
                got = self.ledger.received.get(r, ())
                # arrivals are in order: the newest few are enough
                if any((sent.get((s, n)) or (None, 0))[1] >= t0 for s, n, _ in got[-20:]):
                    waiting.discard(r)
            return not waiting
        if not self.loop.run_until(through, timeout, raise_on_timeout=False):
            raise AssertionError("%s: after %.0f s, %d of %d receivers got no line sent since, "
                                 "e.g. %s" % (what, timeout, len(waiting), len(receivers),
                                              sorted(waiting)[:5]))

    # ---- verification ----

    def expected(self):
        """receiver -> set of (sender, n) it must get exactly once."""
        exp = {u: set() for u in self.clients}
        exp["watcher"] = set()
        nick_to_user = {s.nick.lower(): s.user for s in self.baton.sessions}
        users = list(self.clients)
        for (sender, n), (target, _) in self.ledger.sent.items():
            if target.startswith("#"):
                exp["watcher"].add((sender, n))
                for u in users:
                    if u != sender:
                        exp[u].add((sender, n))
            else:
                u = nick_to_user.get(target.lower())
                if u in exp:
                    exp[u].add((sender, n))
        return exp

    def drain(self, timeout=60):
        """Pump until every expected line has arrived (or timeout)."""
        exp = self.expected()

        def done():
            for r, e in exp.items():
                if len(self.ledger.received.get(r, ())) < len(e):
                    return False
            return True
        ok = self.loop.run_until(done, timeout, raise_on_timeout=False)
        self.loop.run_for(1.0)   # catch late duplicates
        return ok

    def connection_problems(self, since=None):
        """Closed client connections (other than after our QUIT), ERROR
        lines, watcher-seen membership events of bouncer nicks, ngircd-logged
        unregistrations, network users closed by the server."""
        probs = []
        closed, errors, attaching = [], [], []
        for cl in self.clients.values():
            for c in cl.conns:
                quit_sent = c is not cl.conn or cl.state in ("quitting", "detached")
                if c.closed and not quit_sent and not c.local_close:
                    closed.append("%s (%s) at +%.2fs, last lines %s"
                                  % (c.name, c.close_reason, c.close_time - self.t_setup,
                                     [ln for _, ln in c.lines[-2:]]))
                if c.errors and not quit_sent:
                    errors.append("%s got %s" % (c.name, c.errors[0][1]))
            if cl.state == "attaching":
                attaching.append(cl.conn.name)
        if closed:
            probs.append("%d client connections closed by the bouncer, first: %s"
                         % (len(closed), "; ".join(closed[:3])))
        if errors:
            probs.append("%d client connections got ERROR, first: %s" % (len(errors), errors[:3]))
        if attaching:
            probs.append("%d clients did not finish re-attaching: %s" % (len(attaching), attaching[:5]))
        evs = self.watcher.events_between(self.t_setup if since is None else since)
        if evs:
            probs.append("watcher saw %d membership events of bouncer nicks, first: %s"
                         % (len(evs), [e[3] for e in evs[:5]]))
        unreg = self.ngircd.unregistered(self.nicks, self.ngircd_log_mark)
        if unreg:
            probs.append("ngircd log: %d bouncer nicks unregistered, first: %s" % (len(unreg), unreg[:3]))
        if self.watcher.conn.closed:
            probs.append("watcher closed: %s" % self.watcher.conn.close_reason)
        for nu in self.netusers:
            for c in nu.unexpected_closes():
                probs.append("network user connection %s closed by server (%s): harness/ngircd"
                             % (c.name, c.close_reason))
        return probs

    def delivery_problems(self):
        bad = self.ledger.diff(self.expected())
        if not bad:
            return []
        out = ["delivery errors for %d receivers (of %d):\n%s"
               % (len(bad), len(self.clients) + 1, Ledger.format_diff(bad))]
        for r in sorted(bad)[:5]:
            out.append(self.timeline(r, bad[r]))
        return out

    def timeline(self, receiver, problems):
        """Times (s after setup) of a receiver's connections and of the
        lines it missed or got twice, to tell replay gaps from live losses."""
        t0 = self.t_setup
        rel = lambda t: "%.3f" % (t - t0) if t is not None else "-"
        parts = ["  timeline of %s:" % receiver]
        cl = self.clients.get(receiver)
        if cl is not None:
            for c in cl.conns:
                toks = [(tk, t) for t, ln in c.lines for tk in tokens(ln)]
                parts.append("    conn %s: opened %s closed %s (%s), %d numbered lines, first %s last %s"
                             % (c.name, rel(c.open_time), rel(c.close_time), c.close_reason,
                                len(toks), toks[0][0] if toks else None, toks[-1][0] if toks else None))
            parts.append("    QUIT sent at %s" % [rel(t) for t in cl.quit_times])
        for kind in ("missing", "duplicated"):
            if kind in problems:
                for key in problems[kind][1][:4]:
                    tgt, ts = self.ledger.sent.get(key, ("?", None))
                    arr = [rel(t) for s_, n_, t in self.ledger.received.get(receiver, [])
                           if (s_, n_) == key]
                    parts.append("    %s %s: sent at %s to %s, arrived at %s"
                                 % (kind, key, rel(ts), tgt, arr))
        return "\n".join(parts)

    def verify(self, drain_timeout=60):
        """Stop traffic, drain, and raise AssertionError listing every problem."""
        self.stop_traffic()
        self.drain(drain_timeout)
        probs = self.connection_problems() + self.delivery_problems()
        notes = [n for cl in self.clients.values() for n in cl.notes]
        if notes:
            log("notes (not failures): %d, e.g. %s" % (len(notes), notes[:3]))
        check(not probs, "\n".join(probs))
        sent = len(self.ledger.sent)
        got = sum(len(v) for v in self.ledger.received.values())
        log("verified: %d numbered lines sent, %d deliveries checked" % (sent, got))
        return sent, got

    def summary(self):
        return {"sent": len(self.ledger.sent),
                "received": sum(len(v) for v in self.ledger.received.values())}


def hash_nick(nick):
    """Stable (not randomized per process) hash of a trace nick."""
    h = 2166136261
    for ch in nick.encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return h
