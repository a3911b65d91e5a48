#!/usr/bin/env python3
"""A tiny IRC client for deploy/systemd-test, run inside the container.

    irc-probe.py HOST PORT NICK DIR [PASS] [CHANNEL]

Connects, sends PASS (if given), NICK, USER, joins CHANNEL when it has no
PASS (a direct client of the IRC server; baton's session joins by itself),
and writes what happens to DIR/log, one event a line with a monotonic time:
  attached                 001 and our JOIN of CHANNEL seen
  pong N                   the answer to our PING :N (sent every 0.5 s)
  msg FROM TARGET TEXT     a PRIVMSG received
  seen QUIT|JOIN|PART NICK what others did (a reconnecting bouncer shows here)
  closed REASON            the connection ended; the probe exits
Commands: a file DIR/say-N holding "TARGET TEXT" is sent as a PRIVMSG and
removed (written as say-N.tmp, then renamed). The probe stops by itself after 600 s. Standard library only.
"""
import os
import socket
import sys
import time


def main():
    host, port, nick, d = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    pw = sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] else None
    chan = sys.argv[6] if len(sys.argv) > 6 else "#chat"
    log = open(os.path.join(d, "log"), "a", buffering=1)

    def ev(text):
        log.write("%.3f %s\n" % (time.monotonic(), text))

    try:
        s = socket.create_connection((host, port), timeout=10)
    except OSError as e:
        ev("closed connect: %s" % e)
        return 1
    s.settimeout(0.25)

    def send(line):
        s.sendall((line + "\r\n").encode())

    if pw:
        send("PASS " + pw)
    send("NICK " + nick)
    send("USER %s 0 * :systemd-test probe" % nick)
    buf = b""
    registered = joined = False
    tick = 0
    last_ping = 0.0
    end = time.monotonic() + 600
    while time.monotonic() < end:
        for name in sorted(os.listdir(d)):
            if name.startswith("say-"):
                p = os.path.join(d, name)
                if name.endswith(".tmp"):
                    continue  # being written
                target, text = open(p).read().strip().split(" ", 1)
                os.unlink(p)
                send("PRIVMSG %s :%s" % (target, text))
        now = time.monotonic()
        if registered and now - last_ping >= 0.5:
            tick += 1
            last_ping = now
            send("PING :%d" % tick)
        try:
            data = s.recv(65536)
        except socket.timeout:
            continue
        except OSError as e:
            ev("closed %s" % e)
            return 0
        if not data:
            ev("closed eof")
            return 0
        buf += data
        while b"\n" in buf:
            raw, buf = buf.split(b"\n", 1)
            line = raw.decode("utf-8", "replace").rstrip("\r")
            prefix = ""
            if line.startswith(":"):
                prefix, _, line = line[1:].partition(" ")
            cmd, _, rest = line.partition(" ")
            who = prefix.split("!")[0]
            if cmd == "PING":
                send("PONG " + rest)
            elif cmd == "001":
                registered = True
                if pw is None:
                    send("JOIN " + chan)
                # through baton the session joins by itself: its JOIN
                # comes with the attach, or when it has joined
            elif cmd == "JOIN" and who == nick and not joined \
                    and rest.lstrip(":").lower() == chan.lower():
                joined = True
                ev("attached")
            elif cmd == "PONG":
                ev("pong %s" % rest.rsplit(":", 1)[-1])
            elif cmd == "PRIVMSG":
                target, _, text = rest.partition(" :")
                ev("msg %s %s %s" % (who, target, text))
            elif cmd in ("QUIT", "JOIN", "PART") and who != nick:
                ev("seen %s %s" % (cmd, who))
            elif cmd == "ERROR":
                ev("error %s" % rest)
    ev("closed timeout")
    return 0


if __name__ == "__main__":
    sys.exit(main())
