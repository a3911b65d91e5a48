#!/usr/bin/env python3
"""docs/baton.ini.sample is a config `baton-supervisor --check` accepts.

usage: sample_config.py SUPERVISOR SESSIOND SAMPLE

The sample names the paths and ports of a real host (/run/baton,
/var/lib/baton, /usr/bin/baton-sessiond, port 6667); only those values are
replaced (a temporary folder, this build's worker, a free port) and every
other line is checked as shipped: --check must exit 0, print "ok" and the
capacity line of its network. Then every commented-out example `; key =
value` is uncommented in its section and --check must know every key (the
files and addresses it names need not exist here), so the sample's
examples cannot drift from the key table."""

import os
import re
import socket
import subprocess
import sys
import tempfile

# key -> replacement (a function of the temporary folder and the build)
HOST_SPECIFIC = ("control", "state_dir", "sessiond", "irc")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def localize(text, tmp, sessiond):
    values = {"control": os.path.join(tmp, "baton.sock"),
              "state_dir": os.path.join(tmp, "state"),
              "sessiond": sessiond,
              "irc": "127.0.0.1:%d" % free_port()}
    out, seen = [], set()
    for ln in text.splitlines():
        m = re.match(r"^([a-z_]+)\s*=", ln)
        if m and m.group(1) in values:
            seen.add(m.group(1))
            ln = "%s = %s" % (m.group(1), values[m.group(1)])
        out.append(ln)
    missing = set(HOST_SPECIFIC) - seen
    if missing:
        fail("the sample no longer sets %s: update this test" % sorted(missing))
    return "\n".join(out) + "\n"


def run_check(supervisor, path):
    p = subprocess.run([supervisor, "--check", "-c", path], capture_output=True,
                       text=True, timeout=60)
    return p.returncode, p.stdout + p.stderr


def main():
    supervisor, sessiond, sample = (os.path.abspath(a) for a in sys.argv[1:4])
    with open(sample) as f:
        text = f.read()
    with tempfile.TemporaryDirectory(prefix="baton-sample-") as tmp:
        path = os.path.join(tmp, "baton.ini")
        with open(path, "w") as f:
            f.write(localize(text, tmp, sessiond))
        rc, out = run_check(supervisor, path)
        print(out, end="")
        if rc != 0 or not out.rstrip().endswith("ok"):
            fail("--check refused the sample (rc %d)" % rc)
        if not re.search(r"^check: network libera: 1 session, 1 can connect at once", out, re.M):
            fail("no capacity line for [network libera]")

        # every commented example names a key of its section
        examples = 0
        lines = []
        for ln in localize(text, tmp, sessiond).splitlines():
            m = re.match(r"^;\s?([a-z_]+ = \S.*)$", ln)
            if m:
                examples += 1
                ln = m.group(1)
            lines.append(ln)
        # repeated keys (irc) and TLS files are fine to be problems; an
        # unknown key or section is not
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        rc, out = run_check(supervisor, path)
        bad = [ln for ln in out.splitlines() if "unknown key" in ln or "unknown section" in ln]
        if examples < 10:
            fail("only %d commented examples found: the pattern is stale" % examples)
        if bad:
            fail("commented examples name unknown keys:\n" + "\n".join(bad))
    print("sample ok: %d commented examples" % examples)


if __name__ == "__main__":
    main()
