"""What a baton binary's command line offers, from two sides that must
agree with the man pages and the bash completion: what `--help` prints and
what the source parses (getopt_long's option table and short-option string,
batonctl's `strcmp(cmd, "...")` / `strcmp(action, "...")` subcommands).
Standard library only."""

import re
import subprocess

OPT_RE = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-zA-Z])(?![\w-])")


def help_text(binary):
    p = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30)
    return p.stdout + p.stderr


def help_options(text):
    return set(OPT_RE.findall(text))


def source_options(source):
    with open(source) as f:
        src = f.read()
    opts = {"--" + m for m in re.findall(r'\{\s*"([a-z][a-z0-9-]*)",\s*(?:no|required|optional)_argument', src)}
    for short in re.findall(r'getopt_long\([^,]+,[^,]+,\s*"([^"]*)"', src):
        opts |= {"-" + ch for ch in short if ch.isalpha()}
    return opts


def help_subcommands(text):
    """Lower-case words of the usage lines (the program name aside):
    placeholders are upper case, options start with '-'."""
    words = set()
    for ln in text.splitlines():
        s = ln.strip()
        if s.startswith("usage:"):
            s = s[len("usage:"):].strip()
        parts = s.split()
        if not parts or not parts[0].startswith("batonctl"):
            continue
        for w in re.split(r"[\s|()\[\]]+", " ".join(parts[1:])):
            if re.fullmatch(r"[a-z]+(?:-[a-z]+)*", w):
                words.add(w)
    return words


def source_subcommands(source):
    with open(source) as f:
        src = f.read()
    return set(re.findall(r'strcmp\((?:cmd|action), "([a-z]+(?:-[a-z]+)*)"\)', src))


def roff_text(path):
    """The man page's words: escapes for hyphens and fonts undone."""
    with open(path) as f:
        t = f.read()
    t = re.sub(r"^\.\\\".*$", "", t, flags=re.M)       # comments
    t = t.replace("\\-", "-")
    t = re.sub(r"\\f[BIRP]", "", t)
    t = re.sub(r"^\.[A-Z]{1,2}\b ?", "", t, flags=re.M)  # macros
    return t.replace('"', " ")


def roff_tags(path):
    """The tag lines of the page's .TP paragraphs (a command or option
    being described there, not merely mentioned)."""
    with open(path) as f:
        lines = f.read().splitlines()
    tags = [lines[i + 1] for i, ln in enumerate(lines[:-1]) if ln.strip() == ".TP"]
    t = "\n".join(tags).replace("\\-", "-")
    t = re.sub(r"\\f[BIRP]", "", t)
    t = re.sub(r"^\.[A-Z]{1,2}\b ?", "", t, flags=re.M)
    return t.replace('"', " ")
