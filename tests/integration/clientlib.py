"""clientlib: IRC clients people use, as fixtures of the integration tests
(issue 11 section 6). Python 3 standard library only.

- Weechat     WeeChat from Debian's weechat-headless (no terminal at all):
              configured and connected by --run-command, driven through
              its FIFO plugin (weechat-plugins), read through its logger
              plugin's files (flushed at once) and through /eval of its own
              data (the nicklist WeeChat holds, the capabilities it enabled)
              printed into its core buffer log.
- irssi       tlslib.IrssiTmux (irssi under tmux, autolog).

Like tlslib: processes run through the test's batonlib.Context (killed at
the end, also on failure), everything lives in the test's temp dir, a
missing program is a batonlib.Skip naming it.
"""

import os
import re
import subprocess
import time

import batonlib as bl
import tlslib as tl
from batonlib import HarnessError

WEECHAT = os.environ.get("WEECHAT", "weechat-headless")
# WeeChat 3.8 (Debian 12): its "*" in irc.server.*.capabilities asks for
# every capability of this list that the server offers (irc-protocol.c;
# echo-message came with WeeChat 4.0, so 3.8 shows its own lines itself).
# (no batch: WeeChat 3.8 does not ask for it when offered, seen in its log)
WEECHAT_38_CAPS = {"account-notify", "away-notify", "cap-notify", "chghost",
                   "extended-join", "invite-notify", "message-tags", "multi-prefix",
                   "server-time", "setname", "userhost-in-names"}


class LogLine:
    """One line of a WeeChat logger file: date (time.struct_time, local
    time), prefix (the nick column, with its mode prefix: "@watcher"),
    text."""
    __slots__ = ("date", "prefix", "text", "raw")

    def __init__(self, raw):
        self.raw = raw
        parts = raw.split("\t", 2) + ["", ""]
        try:
            self.date = time.strptime(parts[0], "%Y-%m-%d %H:%M:%S")
        except ValueError:
            self.date = None
        self.prefix, self.text = parts[1], parts[2]

    def epoch(self):
        return time.mktime(self.date) if self.date else None

    def __repr__(self):
        return "LogLine(%r)" % self.raw


class Weechat:
    """weechat-headless in the foreground (stdin /dev/null, its output to
    DIR/stdout), home DIR/home, with one IRC server "baton" at
    127.0.0.1:port: password (the PASS line), nick, autojoin `channels`;
    tls=True: over TLS, verifying the server's certificate against ca (a
    file) when ca is given.

    Only the plugins irc, logger and fifo are loaded. Logs in DIR/logs,
    one file per buffer ("core.weechat", "irc.server.baton",
    "irc.baton.#chat"), written at once (logger.file.flush_delay 0).

    command(text, buffer): a line into the FIFO (a /command or text for
    the buffer); say(target, text): a message to a channel buffer;
    log(buffer) -> [LogLine]; wait_log(buffer, pred); query(expr): the
    value of a WeeChat /eval expression (printed into the core buffer log
    and read back); nicklist(channel) -> sorted ["@watcher", "bn000", ...]
    as WeeChat holds it; caps() -> (what the server offered, what WeeChat
    enabled) from its server buffer."""

    SERVER = "baton"

    def __init__(self, ctx, port, nick, password, channels=("#chat",), tls=False, ca=None,
                 name="weechat", user=None):
        self.ctx = ctx
        self.port = port
        self.nick = nick
        self.password = password
        self.channels = list(channels)
        self.tls = tls
        self.ca = ca
        self.user = user or nick
        self.dir = os.path.join(ctx.dir, "%s-%d" % (name, port))
        self.home = os.path.join(self.dir, "home")
        self.logdir = os.path.join(self.dir, "logs")
        self.fifo = os.path.join(self.dir, "fifo")
        os.makedirs(self.home, exist_ok=True)
        self.proc = None
        self.nquery = 0
        ctx.on_close(self.stop)

    def run_commands(self):
        """What --run-command does at startup (one -r each: WeeChat splits
        a -r at ';' and evaluates ${...}, neither of which our values
        have; checked here)."""
        srv = "irc.server.%s." % self.SERVER
        for v in (self.password, self.nick, self.user, self.dir) + tuple(self.channels):
            if ";" in v or "${" in v or '"' in v:
                raise HarnessError("weechat: %r cannot go through --run-command" % v)
        cmds = ["/plugin load logger",
                "/set logger.file.flush_delay 0",
                "/set logger.file.path %s" % self.logdir,
                "/set logger.file.info_lines on",
                "/plugin load fifo",
                "/set fifo.file.path %s" % self.fifo,
                "/plugin load irc",
                "/server add %s 127.0.0.1/%d%s" % (self.SERVER, self.port,
                                                   " -ssl" if self.tls else ""),
                '/set %spassword "%s"' % (srv, self.password),
                '/set %snicks "%s"' % (srv, self.nick),
                '/set %susername "%s"' % (srv, self.user),
                '/set %srealname "weechat %s"' % (srv, self.nick),
                '/set %sautojoin "%s"' % (srv, ",".join(self.channels)),
                "/set %sautoreconnect off" % srv,
                # no anti-flood queue (2 s between lines by default)
                "/set %santi_flood_prio_high 0" % srv,
                "/set %santi_flood_prio_low 0" % srv,
                '/set %scapabilities "*"' % srv]
        if self.tls:
            cmds.append("/set %sssl_verify %s" % (srv, "on" if self.ca else "off"))
            if self.ca:
                cmds += ["/set weechat.network.gnutls_ca_system off",
                         '/set weechat.network.gnutls_ca_user "%s"' % self.ca]
        cmds.append("/connect %s" % self.SERVER)
        return cmds

    def start(self, wait=True, timeout=20):
        binary = tl.require_binary(WEECHAT, "weechat-headless")
        argv = [binary, "-d", self.home, "-p"]
        for c in self.run_commands():
            argv += ["-r", c]
        self.out = open(os.path.join(self.dir, "stdout"), "ab")
        env = dict(os.environ, HOME=self.home, TERM="dumb")
        self.proc = self.ctx.procs.popen(argv, env=env, stdin=subprocess.DEVNULL,
                                         stdout=self.out, stderr=self.out, cwd=self.dir)
        if wait:
            bl.wait_for(lambda: os.path.exists(self.fifo) or self.proc.poll() is not None,
                        timeout, what="weechat's FIFO %s" % self.fifo)
            if not os.path.exists(self.fifo):
                raise HarnessError("weechat exited (rc %s) without its FIFO (fifo.so is in "
                                   "Debian's weechat-plugins)" % self.proc.returncode)
            self.wait_joined(timeout=timeout)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    # ---- input ----

    def command(self, text, buffer=None):
        """One line into the FIFO: `buffer` ("irc.server.baton", "irc.baton.#chat",
        "core.weechat"; default the server buffer) gets `text` (a
        /command, or a message for the buffer's target)."""
        if "\n" in text:
            raise HarnessError("weechat: one line at a time")
        line = "%s *%s\n" % (buffer or "irc.server.%s" % self.SERVER, text)
        try:
            fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            raise HarnessError("weechat FIFO %s: %s (weechat alive: %s)"
                               % (self.fifo, e, self.alive()))
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def say(self, target, text):
        self.command(text, buffer=self.buffer_name(target))

    def buffer_name(self, target):
        return "irc.%s.%s" % (self.SERVER, target)

    # ---- output ----

    def log_path(self, buffer):
        return os.path.join(self.logdir, "%s.weechatlog" % buffer.lower())

    def log(self, buffer):
        """[LogLine] of a buffer's log so far ("irc.server.baton",
        "irc.baton.#chat", "core.weechat")."""
        try:
            with open(self.log_path(buffer), errors="replace") as f:
                return [LogLine(ln.rstrip("\n")) for ln in f if ln.strip()]
        except OSError:
            return []

    def chan_log(self, channel):
        return self.log(self.buffer_name(channel))

    def server_log(self):
        return self.log("irc.server.%s" % self.SERVER)

    def wait_log(self, buffer, pred, timeout=15, loop=None):
        """The first LogLine of buffer whose raw text matches pred (a
        substring, a compiled regex or a function of the raw line);
        `loop` (an IrcLoop) is pumped meanwhile."""
        test = tl._matcher(pred)

        def found():
            for ln in self.log(buffer):
                if test(ln.raw):
                    return ln
            return None
        if loop is not None:
            got = {}

            def ok():
                got["v"] = found()
                return got["v"] is not None or not self.alive()
            loop.run_until(ok, timeout, raise_on_timeout=False)
            if got.get("v") is not None:
                return got["v"]
            raise AssertionError("weechat log %s: no line matching %r after %ss (alive %s); "
                                 "last lines: %s" % (buffer, pred, timeout, self.alive(),
                                                    [ln.raw for ln in self.log(buffer)[-8:]]))
        return bl.wait_for(found, timeout, what="weechat log %s: %r" % (buffer, pred))

    def wait_joined(self, timeout=20, loop=None):
        for ch in self.channels:
            self.wait_log(self.buffer_name(ch),
                          re.compile(r"\t-->\t%s \(.*\) has joined %s" % (re.escape(self.nick),
                                                                          re.escape(ch)),
                                     re.I), timeout=timeout, loop=loop)

    def query(self, expr, loop=None, timeout=10):
        """The value of a WeeChat evaluated expression: `/eval /print
        Q<n>=<expr>` in the core buffer, read back from its log."""
        self.nquery += 1
        mark = "Q%d=" % self.nquery
        self.command("/eval /print %s%s" % (mark, expr), buffer="core.weechat")
        ln = self.wait_log("core.weechat", lambda raw: ("\t" + mark) in raw, timeout=timeout,
                           loop=loop)
        return ln.text[len(mark):]

    def nicklist(self, channel, loop=None):
        """The nicks of `channel` as WeeChat holds them (its irc_channel
        nick list, through hdata: the server's channels are searched for
        the name), each with its highest mode prefix ("@watcher",
        "bn000"), sorted."""
        srv = "${irc_server[irc_servers]"
        names = self.query(" ".join("[%s.channels%s.name}]" % (srv, ".next_channel" * i)
                                    for i in range(6)), loop=loop)
        found = re.findall(r"\[([^\]]*)\]", names)
        if channel.lower() not in [n.lower() for n in found]:
            raise AssertionError("weechat has no channel %s (channels %s)" % (channel, found))
        ch = "%s.channels%s" % (srv, ".next_channel" * [n.lower() for n in found]
                                .index(channel.lower()))
        count = int(self.query("%s.nicks_count}" % ch, loop=loop) or "0")
        parts = []
        for i in range(count):
            p = "%s.nicks%s" % (ch, ".next_nick" * i)
            parts.append("[%s.prefix}%s.name}]" % (p, p))
        got = re.findall(r"\[([^\]]*)\]", self.query(" ".join(parts), loop=loop)) if parts \
            else []
        return sorted(n.strip() for n in got)

    def caps(self):
        """(offered, enabled): the sets of capability names WeeChat's
        server buffer says the server supports and WeeChat enabled
        (its "client capability, server supports: ..." and "...,
        enabled: ..." lines; the last of each)."""
        offered, enabled = None, None
        for ln in self.server_log():
            m = re.search(r"client capability, server supports: (.*)$", ln.text)
            if m:
                offered = set(m.group(1).split())
            m = re.search(r"client capability, enabled: (.*)$", ln.text)
            if m:
                enabled = set(m.group(1).split())
        return offered, enabled

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.command("/quit")
                self.proc.wait(timeout=3)
            except Exception:
                pass
            bl.Procs.stop(self.proc, grace=2.0)
        self.proc = None
