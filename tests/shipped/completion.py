#!/usr/bin/env python3
"""The bash completion of batonctl, run in bash.

usage: completion.py COMPLETION BATONCTL SOURCE

Sources COMPLETION in a non-interactive bash, checks `complete -p
batonctl`, then simulates completions (COMP_WORDS / COMP_CWORD, calling
the registered function): every subcommand and every long option that
batonctl's --help prints or its source parses (cli.py) must be offered in
some context, subcommands where they belong; option values come from the
config given with -c ([network NAME], [user NAME] sections)."""

import os
import shlex
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cli  # noqa: E402

failures = []


def check(ok, msg):
    if not ok:
        failures.append(msg)


def bash(script, completion):
    p = subprocess.run(["bash", "--norc", "--noprofile", "-c",
                        "source %s\n%s" % (shlex.quote(completion), script)],
                       capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        failures.append("bash failed (%d): %s" % (p.returncode, p.stderr))
    return p.stdout


def complete(completion, line):
    """Completions for the command line `line` (the cursor at its end)."""
    words = line.split(" ")
    script = ("COMP_WORDS=(%s); COMP_CWORD=%d; COMP_LINE=%s; COMP_POINT=${#COMP_LINE}\n"
              "fn=$(complete -p batonctl | sed -n 's/.*-F \\([^ ]*\\).*/\\1/p')\n"
              "$fn batonctl %s %s; printf '%%s\\n' \"${COMPREPLY[@]}\""
              % (" ".join(shlex.quote(w) for w in words), len(words) - 1,
                 shlex.quote(line), shlex.quote(words[-1]),
                 shlex.quote(words[-2] if len(words) > 1 else "")))
    return set(w for w in bash(script, completion).split("\n") if w)


def main():
    completion, batonctl, source = sys.argv[1:4]
    text = cli.help_text(batonctl)
    subs = cli.help_subcommands(text) | cli.source_subcommands(source)
    longs = {o for o in cli.help_options(text) | cli.source_options(source) if o.startswith("--")}
    check(len(subs) >= 5 and len(longs) >= 10, "stale parsing: %s %s" % (subs, longs))

    out = bash("complete -p batonctl", completion)
    check(out.startswith("complete -F ") and out.rstrip().endswith(" batonctl"),
          "complete -p batonctl: %r" % out)

    top = complete(completion, "batonctl ")
    actions = complete(completion, "batonctl canary ")
    check("canary" in top and "start" not in top, "top level: %s" % sorted(top))
    check({"start", "grow", "promote", "abort", "status"} <= actions,
          "canary actions: %s" % sorted(actions))
    user_actions = complete(completion, "batonctl user ")
    network_actions = complete(completion, "batonctl network ")
    check({"add", "del", "passwd", "list"} <= user_actions,
          "user actions: %s" % sorted(user_actions))
    check({"add", "del", "set"} == network_actions,
          "network actions: %s" % sorted(network_actions))
    actions |= user_actions | network_actions
    check(subs <= top | actions, "subcommands never offered: %s"
          % sorted(subs - top - actions))
    check(complete(completion, "batonctl -c x.ini --json rol") == {"rollback"},
          "prefix after options")

    offered = set()
    for line in ("batonctl -", "batonctl status -", "batonctl upgrade ./b -",
                 "batonctl rollback -", "batonctl releases -",
                 "batonctl canary start ./b -", "batonctl canary grow -",
                 "batonctl canary -", "batonctl reload -",
                 "batonctl user add x -", "batonctl user del x -",
                 "batonctl network set a/b -"):
        offered |= complete(completion, line)
    check(longs <= offered, "options never offered: %s" % sorted(longs - offered))
    check("--force" in complete(completion, "batonctl rollback --f"), "rollback --force")
    check("--steps" in complete(completion, "batonctl upgrade ./b --canary 5 --st"),
          "upgrade --steps")
    check("--percent" in complete(completion, "batonctl canary grow --p"), "grow --percent")
    check("--steps" not in complete(completion, "batonctl rollback --"),
          "rollback offers upgrade's options")

    with tempfile.TemporaryDirectory(prefix="baton-compl-") as tmp:
        cfg = os.path.join(tmp, "baton.ini")
        with open(cfg, "w") as f:
            f.write("[network libera]\nhost = a\n[network oftc]\nhost = b\n"
                    "[user alice]\npassword = x\n[user alice/libera]\n"
                    "[user bob]\npassword = x\n")
        got = complete(completion, "batonctl -c %s canary start ./b --network " % cfg)
        check(got == {"libera", "oftc"}, "--network values: %s" % sorted(got))
        got = complete(completion, "batonctl -c %s canary start ./b --users alice," % cfg)
        check(got == {"alice,alice", "alice,bob"}, "--users values: %s" % sorted(got))
        got = complete(completion, "batonctl -c %s user passwd " % cfg)
        check(got == {"alice", "bob"}, "user passwd values: %s" % sorted(got))
        got = complete(completion, "batonctl -c %s network set " % cfg)
        check(got == {"alice/libera"}, "network set values: %s" % sorted(got))
        got = complete(completion, "batonctl -c %s/baton.i" % tmp)
        check(got == {cfg}, "-c file: %s" % sorted(got))

    if failures:
        print("FAIL:\n" + "\n".join(failures))
        sys.exit(1)
    print("completion ok: %d subcommands, %d options" % (len(subs), len(longs)))


if __name__ == "__main__":
    main()
