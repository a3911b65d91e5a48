#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/<target>/.

    tests/fuzz/make_corpus.py [--gen-state BUILD/tests/fuzz/gen_state_seeds]

Small and hand-made, each seed in the target's own input format (see the
top of each tests/fuzz/fuzz_*.c): IRC lines (from the test trace and by
hand), server line sequences for a registered session, migration channel
conversations, TLS record operations for every version/cipher/role. The
seeds of fuzz_state_adopt are serialized items and come from the C
generator gen_state_seeds (built with -Dfuzz=true); without --gen-state
that folder is left as it is. Deterministic: rerunning rewrites the same
files.
"""

import argparse
import json
import os
import shutil
import struct
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(HERE, "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def fresh(target):
    """Empty the target's corpus, except its regression-* seeds (inputs of
    bugs that were found and fixed: they stay for good)."""
    d = os.path.join(CORPUS, target)
    if not os.path.isdir(d):
        return
    for name in os.listdir(d):
        if not name.startswith("regression-"):
            os.unlink(os.path.join(d, name))


# ---- fuzz_irc: one line, or several separated by \n ----------------------

def irc_seeds():
    t = "fuzz_irc"
    fresh(t)
    lines = [
        ":nick!user@host PRIVMSG #chan :hello there",
        "@time=2025-11-27T08:00:00.000Z;+draft/reply=abc :n!u@h PRIVMSG #c :tagged",
        "@a=b\\sc;d;e=\\:\\\\ :srv NOTICE * :escaped tag values",
        "PING :irc.example.net",
        ":irc.example.net 001 alice :Welcome to the network alice!a@h",
        ":irc.example.net 005 alice CHANTYPES=#& PREFIX=(qaohv)~&@%+ NETWORK=Ex CASEMAPPING=rfc1459 :are supported",
        ":irc.example.net 353 alice = #chan :@op +voice ~owner &admin %half plain",
        ":irc.example.net CAP * LS * :server-time multi-prefix",
        ":irc.example.net CAP alice ACK :server-time away-notify",
        ":n!u@h JOIN #a,#b,&c",
        ":n!u@h PART #chan :reason with spaces",
        ":n!u@h KICK #chan victim :",
        ":n!u@h MODE #chan +ovb-k nick1 nick2 *!*@bad key",
        ":n!u@h NICK :newnick",
        ":n!u@h QUIT :Quit: bye",
        ":n!u@h TOPIC #chan :a new topic",
        "ERROR :Closing link: (alice@h) [Ping timeout]",
        "CMD " + " ".join("p%d" % i for i in range(20)) + " :trailing",
        ":prefix.only",
        "   leading spaces PRIVMSG",
        "@ :empty tags",
        ":n!u@h PRIVMSG #[]\\^ :casemapping {}|~",
        ":n!u@h PRIVMSG alice :\x01ACTION waves\x01",
        ":n!u@h PRIVMSG #c :" + "x" * 480,
        "privmsg #lower :lower case command",
        "\x00embedded nul",
        "PRIVMSG #a :one\nPRIVMSG #b :two\nPRIVMSG #a :three\nNOTICE #a :four",
        "\n".join(":n%d!u@h PRIVMSG #buf%d :line %d" % (i, i % 3, i) for i in range(12)),
    ]
    for i, ln in enumerate(lines):
        write(t, "%02d" % i, ln)
    # real chat lines from the test trace
    trace = os.path.join(ROOT, "tests", "data", "trace-slice.jsonl")
    n = 0
    kinds = {}
    with open(trace, errors="replace") as f:
        for raw in f:
            try:
                e = json.loads(raw)
            except ValueError:
                continue
            k = e.get("type")
            if kinds.get(k, 0) >= 3 or not e.get("nick"):
                continue
            pre = ":%s!~%s@host.example" % (e["nick"], e["nick"][:9])
            if k == "privmsg":
                ln = "%s PRIVMSG %s :%s" % (pre, e.get("chan", "#c"), e.get("text", ""))
            elif k == "join":
                ln = "%s JOIN %s" % (pre, e.get("chan", "#c"))
            elif k == "part":
                ln = "%s PART %s :%s" % (pre, e.get("chan", "#c"), e.get("reason", ""))
            elif k == "quit":
                ln = "%s QUIT :%s" % (pre, e.get("reason", ""))
            elif k == "nick":
                ln = "%s NICK :%s" % (pre, e.get("newnick", "x"))
            else:
                continue
            kinds[k] = kinds.get(k, 0) + 1
            write(t, "trace-%s-%d" % (k, kinds[k]), ln)
            n += 1
            if n >= 15:
                break


# ---- fuzz_upstream: what a server sends to a registered session ----------
# The session is alice on "example", in #baton (members alice, bob, carol)
# and #chat (dave, alice) (tests/unit/sessiond/sample_state.c).

def upstream_seeds():
    t = "fuzz_upstream"
    fresh(t)
    S = ":irc.example.net "
    seqs = {
        "ping": ["PING :irc.example.net"],
        "pong": [S + "PONG irc.example.net :lag-check"],
        "privmsg": [":bob!b@h PRIVMSG #baton :hello alice",
                    ":bob!b@h NOTICE alice :a notice",
                    ":carol!c@h PRIVMSG alice :a query"],
        "server-time": ["@time=2025-11-27T08:01:02.345Z :bob!b@h PRIVMSG #baton :stamped",
                        "@time=garbage :bob!b@h PRIVMSG #baton :bad stamp"],
        "registration": [S + "CAP * LS * :server-time multi-prefix",
                         S + "CAP * LS :away-notify sasl",
                         S + "CAP alice ACK :server-time multi-prefix away-notify",
                         S + "001 alice :Welcome to Example alice!a@h",
                         S + "002 alice :Your host is irc.example.net",
                         S + "003 alice :This server was created today",
                         S + "004 alice irc.example.net ngircd-26 abBcCFiIoqrRswx abehiIklmMnoOPqQrRstvVz",
                         S + "005 alice CHANTYPES=#& PREFIX=(qaohv)~&@%+ NETWORK=Example :are supported",
                         S + "005 alice -NETWORK CASEMAPPING=ascii :are supported",
                         S + "375 alice :- motd -", S + "372 alice :- hi", S + "376 alice :End"],
        "no-motd": [S + "001 alice :Welcome", S + "422 alice :MOTD File is missing"],
        "nick-in-use": [S + "433 * alice :Nickname already in use",
                        S + "432 * alice_ :Erroneous nickname"],
        "join-self": [":alice!a@h JOIN #new", S + "332 alice #new :the topic",
                      S + "333 alice #new bob!b@h 1764230400",
                      S + "353 alice = #new :alice @bob +carol ~dave",
                      S + "366 alice #new :End of NAMES", S + "324 alice #new +ntk key"],
        "names-multi-prefix": [S + "353 alice @ #baton :@+alice %bob &carol",
                               S + "366 alice #baton :End"],
        "others": [":erin!e@h JOIN #baton", ":erin!e@h PART #baton :later",
                   ":frank!f@h JOIN #chat", ":frank!f@h QUIT :gone",
                   ":bob!b@h NICK :robert", ":dave!d@h KICK #chat robert :out"],
        "self-leaves": [":alice!a@h PART #chat :bye", ":bob!b@h KICK #baton alice :out"],
        "self-nick": [":alice!a@h NICK :alicia", ":alicia!a@h PRIVMSG #baton :renamed"],
        "modes": [":bob!b@h MODE #baton +o-v+b carol carol *!*@spam",
                  ":bob!b@h MODE #baton +lk 10 secret",
                  S + "MODE alice :+iw", S + "221 alice +iwx"],
        "topic": [":bob!b@h TOPIC #baton :new topic", S + "331 alice #chat :No topic is set"],
        "away-notify": [":bob!b@h AWAY :lunch", ":bob!b@h AWAY"],
        "cap-new-del": [S + "CAP alice NEW :away-notify", S + "CAP alice DEL :multi-prefix"],
        "error": [":bob!b@h PRIVMSG #baton :last words", "ERROR :Closing link: (alice@h) [Quit]"],
        "banned": [S + "465 alice :You are banned from this server"],
        "throttled": ["ERROR :Trying to reconnect too fast."],
        "partial-line": [":bob!b@h PRIVMSG #baton :complete", ":bob!b@h PRIVMSG #baton :incompl"],
        "long-line": [":bob!b@h PRIVMSG #baton :" + "y" * 600],
        "unknown": [S + "999 alice :strange numeric", "FOO bar baz", ":x!y@z WALLOPS :hi"],
        "lf-only": ["PING :a", ":bob!b@h PRIVMSG #chat :lf only"],
        "tags-only": ["@a=b", "@", ":"],
    }
    for name, lines in seqs.items():
        sep = "\n" if name == "lf-only" else "\r\n"
        data = sep.join(lines)
        if name != "partial-line":
            data += sep
        write(t, name, data)


# ---- fuzz_handoff_frame: migration channel conversations -----------------

def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def pb(*fields):
    """fields: (number, int) or (number, bytes)."""
    out = b""
    for num, v in fields:
        if isinstance(v, int):
            out += varint(num << 3) + varint(v)
        else:
            out += varint((num << 3) | 2) + varint(len(v)) + v
    return out


BEGIN, ITEM, END, PREPARED, COMMIT, ABORT, DONE, COMMITTED = range(1, 9)


def frame(type_, payload, nfds=0, auto=True):
    """One datagram of the target's input format (mode, u16 len, bytes)."""
    if auto:
        body = bytes([type_]) + payload
        mode = 4 | nfds
    else:
        plen = len(payload)
        hdr = bytes([0x70, 0xBA, 1, type_, 0, 0, nfds, 0]) + struct.pack("<II", plen, plen)
        body = hdr + payload
        mode = nfds
    return bytes([mode]) + struct.pack("<H", len(body)) + body


def chunk(c, payloads, fds_each=1):
    out = frame(BEGIN, pb((1, c), (2, len(payloads)), (3, fds_each * len(payloads))))
    for i, p in enumerate(payloads):
        out += frame(ITEM, pb((1, i), (2, p), (3, fds_each)), nfds=fds_each)
    return out + frame(END, pb((1, c)))


def frame_seeds():
    t = "fuzz_handoff_frame"
    fresh(t)
    seeds = {
        "one-chunk-commit": chunk(0, [b"session-a"]) + frame(COMMIT, pb((1, 0))) + frame(DONE, pb((1, 1))),
        "two-chunks": (chunk(0, [b"a", b"b"]) + frame(COMMIT, pb((1, 0))) +
                       chunk(1, [b"c"]) + frame(COMMIT, pb((1, 1))) + frame(DONE, pb((1, 2)))),
        "three-fds": chunk(0, [b"s"], fds_each=3) + frame(COMMIT, pb((1, 0))) + frame(DONE, pb((1, 1))),
        "no-fds": chunk(0, [b"p1", b"p2"], fds_each=0) + frame(COMMIT, pb((1, 0))) + frame(DONE, pb((1, 1))),
        "target-refuses": chunk(0, [b"x-refused"]),
        "source-aborts": chunk(0, [b"a"]) + frame(ABORT, pb((1, 0), (2, b"changed my mind"))),
        "eof-in-prepared": chunk(0, [b"a"]),
        "eof-mid-chunk": frame(BEGIN, pb((1, 0), (2, 2), (3, 2))) + frame(ITEM, pb((1, 0), (2, b"a"), (3, 1)), nfds=1),
        "fd-count-mismatch": frame(BEGIN, pb((1, 0), (2, 1), (3, 2))) + frame(ITEM, pb((1, 0), (2, b"a"), (3, 2)), nfds=1),
        "wrong-index": frame(BEGIN, pb((1, 0), (2, 2), (3, 0))) + frame(ITEM, pb((1, 1), (2, b"a"), (3, 0))),
        "commit-first": frame(COMMIT, pb((1, 0))),
        "done-early": frame(DONE, pb((1, 0))),
        "wrong-chunk": frame(BEGIN, pb((1, 5), (2, 0), (3, 0))) + frame(END, pb((1, 5))),
        "raw-headers": (frame(BEGIN, pb((1, 0), (2, 1), (3, 1)), auto=False) +
                        frame(ITEM, pb((1, 0), (2, b"raw"), (3, 1)), nfds=1, auto=False) +
                        frame(END, pb((1, 0)), auto=False) + frame(COMMIT, pb((1, 0)), auto=False)),
        "bad-magic": bytes([0]) + struct.pack("<H", 16) + b"\x00" * 16,
        "committed-from-source": chunk(0, [b"a"]) + frame(COMMITTED, pb((1, 0))),
        "prepared-from-source": frame(PREPARED, pb((1, 0))),
        "malformed-pb": frame(BEGIN, b"\xff\xff\xff") + frame(ITEM, b"\x12\x80"),
        "empty-chunk": frame(BEGIN, pb((1, 0), (2, 0), (3, 0))) + frame(END, pb((1, 0))) + frame(COMMIT, pb((1, 0))),
    }
    for name, data in seeds.items():
        write(t, name, data)


# ---- fuzz_tls_record: byte 0 config, then (op, u16 len, bytes)* ----------

def op(code, data):
    return bytes([code]) + struct.pack("<H", len(data)) + data


def tls_seeds():
    t = "fuzz_tls_record"
    fresh(t)
    app = b"\x17PRIVMSG #baton :hello over tls\r\n"
    for cfg in range(12):
        v13 = not (cfg & 1)
        name = "%02d-%s" % (cfg, "tls13" if v13 else "tls12")
        data = bytes([cfg])
        data += op(1, app) + op(3, b"\x00" * 4) + op(1 | (3 << 2), app) + op(2, b"")
        data += op(1, app) + op(3 | 4, b"\x00" * 2)
        write(t, name + "-data", data)
        ctl = bytes([cfg])
        if v13:
            ctl += op(1, b"\x16\x18\x00\x00\x01\x01")   # KeyUpdate, update_requested
            ctl += op(2, b"") + op(1, app)
            ctl += op(1, b"\x16\x04\x00\x00\x04\x00\x00\x00\x00")  # NewSessionTicket (short)
        else:
            ctl += op(1, b"\x16\x00\x00\x00\x00")        # HelloRequest
            ctl += op(1, app)
        ctl += op(1, b"\x15\x01\x00")                     # close_notify
        write(t, name + "-control", ctl)
    write(t, "raw-garbage", bytes([0]) + op(0, b"\x17\x03\x03\x00\x05hello") + op(0, b"\x16\x03"))
    write(t, "bad-alert", bytes([1]) + op(1, b"\x15\x02\x28"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gen-state", metavar="BIN",
                    help="gen_state_seeds of a -Dfuzz=true build (fuzz_state_adopt seeds)")
    args = ap.parse_args()
    irc_seeds()
    upstream_seeds()
    frame_seeds()
    tls_seeds()
    if args.gen_state:
        fresh("fuzz_state_adopt")
        d = os.path.join(CORPUS, "fuzz_state_adopt")
        os.makedirs(d)
        subprocess.run([args.gen_state, d], check=True)
    for t in sorted(os.listdir(CORPUS)):
        print("%-20s %d seeds" % (t, len(os.listdir(os.path.join(CORPUS, t)))))


if __name__ == "__main__":
    main()
