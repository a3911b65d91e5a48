#!/usr/bin/env python3
"""Every option and subcommand of the three binaries is in their man pages.

usage: man_pages.py NAME BINARY MANPAGE SOURCE [NAME BINARY MANPAGE SOURCE ...]

For each binary: the options its --help prints and those its option table
parses (cli.py) must each be described in MANPAGE (the tag of a .TP
paragraph); for batonctl also every
subcommand (usage lines and the strcmp()s of its command dispatch). When
groff is installed, the pages must also format without a warning
(groff -man -ww -z), and their source has no control byte. Fails listing what is missing, so a new option cannot
ship undocumented."""

import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cli  # noqa: E402


def main():
    args = sys.argv[1:]
    if not args or len(args) % 4:
        print(__doc__)
        sys.exit(2)
    missing = []
    for i in range(0, len(args), 4):
        name, binary, page, source = args[i:i + 4]
        text = cli.help_text(binary)
        words = cli.roff_tags(page)  # described in a .TP, not only mentioned
        opts = cli.help_options(text) | cli.source_options(source)
        if len(opts) < 3:
            missing.append("%s: found only %s: the parsing is stale" % (name, sorted(opts)))
        for o in sorted(opts):
            if not re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(o), words):
                missing.append("%s: option %s not in %s" % (name, o, os.path.basename(page)))
        if name == "batonctl":
            subs = cli.help_subcommands(text) | cli.source_subcommands(source)
            if len(subs) < 5:
                missing.append("batonctl: found only subcommands %s" % sorted(subs))
            for s in sorted(subs):
                if not re.search(r"(?<![\w-])%s(?![\w-])" % s, words):
                    missing.append("batonctl: subcommand %s not in %s" % (s, os.path.basename(page)))
            print("batonctl: %d subcommands: %s" % (len(subs), " ".join(sorted(subs))))
        print("%s: %d options: %s" % (name, len(opts), " ".join(sorted(opts))))
        # A control byte in the roff source (a "\\f" turned into a form
        # feed by whoever wrote it) renders as "R[B--purgeR]": none.
        with open(page, "rb") as f:
            for n, ln in enumerate(f.read().split(b"\n"), 1):
                bad = [c for c in ln if c < 0x20 and c != 0x09]
                if bad:
                    missing.append("%s:%d: control byte 0x%02x in the roff source"
                                   % (page, n, bad[0]))
        if shutil.which("groff"):
            p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", page],
                               capture_output=True, text=True, timeout=30)
            if p.returncode != 0 or p.stderr.strip():
                missing.append("%s: groff warns:\n%s" % (page, p.stderr))
    if missing:
        print("FAIL:\n" + "\n".join(missing))
        sys.exit(1)
    print("man pages ok")


if __name__ == "__main__":
    main()
