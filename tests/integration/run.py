#!/usr/bin/env python3
"""Runner for baton's integration tests.

Discovers tests/integration/test_*.py and runs every function named test_*
in file order. Each test function takes one argument (or none), a fresh
batonlib.Context (temp dir under $TMPDIR (default /tmp), process registry, IrcLoop, builds);
the context is closed after the test, killing every process it started.

Output: one line per test
    PASS name (Xs) | FAIL name: reason | SKIP name: reason
and a final line "N passed, N failed, N skipped". Exit code 1 if any test
failed (2 for usage errors, 130 on Ctrl-C).

Options:
    -k SUBSTRING   run only tests whose name (module.function) contains it
                   (repeatable; a test matching any is selected)
    --list         list the selected tests and exit
    --keep         keep the temp dirs of every test (failed tests' dirs are
                   always kept and printed)
    --timeout S    per-test timeout in seconds (default 900)
    -v             show the tests' progress output (otherwise shown for
                   failed tests only)
    --jobs N       run up to N tests at once, each in its own runner
                   process (default 1). A module that sets RUN_ALONE = True
                   (load, timing and canary-gate tests, whose figures a
                   neighbour's CPU use would move) runs its tests with
                   nothing beside them, before the others. Lines are
                   printed as tests end.
    --only NAME    run exactly the test NAME (what --jobs gives each child)

Environment: BATON_BUILD_A, BATON_BUILD_B, BATON_BUILD_INCOMPAT (build dirs),
BATON_BUILD (A's default folder, e.g. build-asan: a sanitizer report of any
process fails the test), BATON_TRACE (trace file), NGIRCD (ngircd binary).
"""

import argparse
import glob
import importlib.util
import inspect
import io
import os
import signal
import sys
import time
import re
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import batonlib  # noqa: E402


SUMMARY = re.compile(r"^\d+ passed, \d+ failed")


class TestTimeout(Exception):
    pass


def discover(module=None):
    """[(name, function)] in file and definition order; a function's
    module is fn.__module__ (sys.modules does not hold them). With module,
    only that file's (what a --jobs child needs: importing all 40 modules
    cost each of ~200 children 0.3 s)."""
    tests = []
    pattern = (module + ".py") if module else "test_*.py"
    for path in sorted(glob.glob(os.path.join(HERE, pattern))):
        modname = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(modname, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        funcs = [(n, f) for n, f in vars(mod).items()
                 if n.startswith("test_") and inspect.isfunction(f) and f.__module__ == modname]
        funcs.sort(key=lambda nf: nf[1].__code__.co_firstlineno)
        for n, f in funcs:
            f.run_alone = bool(getattr(mod, "RUN_ALONE", False))
            tests.append(("%s.%s" % (modname, n), f))
    return tests


class Tee(io.TextIOBase):
    """Captures a test's stderr progress; echoes it when verbose."""

    def __init__(self, echo):
        self.buf = io.StringIO()
        self.echo = echo

    def write(self, s):
        self.buf.write(s)
        if self.echo:
            sys.__stderr__.write(s)
        return len(s)

    def flush(self):
        if self.echo:
            sys.__stderr__.flush()


def run_test(name, fn, args):
    """Run one test; returns ('PASS'|'FAIL'|'SKIP', detail, seconds)."""
    short = name.split(".", 1)[1]
    ctx = batonlib.Context(name=short, keep=args.keep)
    tee = Tee(args.verbose)
    old_stderr = sys.stderr
    sys.stderr = tee
    t0 = time.monotonic()
    verdict, detail, failed = "PASS", "", False

    def on_alarm(signum, frame):
        raise TestTimeout("test exceeded %ds" % args.timeout)
    old_alarm = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.timeout)
    try:
        if inspect.signature(fn).parameters:
            fn(ctx)
        else:
            fn()
    except batonlib.Skip as e:
        verdict, detail = "SKIP", str(e)
    except KeyboardInterrupt:
        raise
    except AssertionError as e:
        verdict, detail, failed = "FAIL", str(e) or "assertion failed", True
        tee.write(traceback.format_exc())
    except TestTimeout as e:
        verdict, detail, failed = "FAIL", str(e), True
        tee.write(traceback.format_exc())
    except Exception as e:  # harness errors, crashes of the test code
        verdict, detail, failed = "FAIL", "%s: %s" % (type(e).__name__, e), True
        tee.write(traceback.format_exc())
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_alarm)
        sys.stderr = old_stderr
        ctx.close(failed=failed, keep_reports=True)
    # A sanitizer report (BATON_BUILD=build-asan) fails the test, whatever
    # the test itself concluded: the processes are gone by now.
    reports = ctx.sanitizer_reports()
    if reports and verdict != "SKIP":
        first = reports[0][1].strip().splitlines()
        detail = ("%s%d sanitizer report(s), first %s:\n    %s"
                  % (detail + "; " if failed else "", len(reports), reports[0][0],
                     "\n    ".join(first[:40])))
        verdict, failed = "FAIL", True
    if not failed:
        ctx.remove_dir()
    if failed:
        detail += "\n    (artifacts kept in %s)" % ctx.dir
        if not args.verbose:
            out = tee.buf.getvalue().rstrip()
            if out:
                detail += "\n    --- test output ---\n" + "\n".join(
                    "    " + ln for ln in out.splitlines()[-60:])
    return verdict, detail, time.monotonic() - t0


def run_parallel(tests, args, counts):
    """Each test in a child runner (`--only NAME`), up to args.jobs at once;
    the run_alone tests first, each by itself, then the others. A
    child's output goes to a temp file (no pipe to fill) and is printed
    when it ends, without the child's summary line; the child's
    PASS/FAIL/SKIP line for its test is the verdict (none: FAIL)."""
    import subprocess
    import tempfile
    base = [sys.executable, os.path.abspath(__file__), "--timeout", str(args.timeout)]
    if args.keep:
        base.append("--keep")
    if args.verbose:
        base.append("-v")
    running = []  # [name, Popen, output file, run_alone]
    # The run_alone tests first, one after the other, then the rest: in
    # file order, each run_alone module in the middle left one slot idle
    # until its neighbour ended (about 5 s each time).
    pending = [t for t in tests if t[1].run_alone] + [t for t in tests if not t[1].run_alone]

    def finish(entry):
        name, p, out, _ = entry
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
        out.close()
        verdict = None
        for ln in text.splitlines():
            if SUMMARY.match(ln):
                continue
            word = ln.split(" ", 1)[0]
            if word in counts and ln[len(word) + 1:].startswith(name):
                verdict = word
            print(ln, flush=True)
        if verdict is None:
            verdict = "FAIL"
            print("FAIL %s: its runner exited %s without a verdict" % (name, p.returncode),
                  flush=True)
        counts[verdict] += 1

    try:
        while pending or running:
            for entry in [e for e in running if e[1].poll() is not None]:
                running.remove(entry)
                finish(entry)
            if pending:
                name, fn = pending[0]
                busy = (any(e[3] for e in running) or (fn.run_alone and running)
                        or len(running) >= args.jobs)
                if not busy:
                    out = tempfile.TemporaryFile()
                    p = subprocess.Popen(base + ["--only", name], stdout=out,
                                         stderr=subprocess.STDOUT)
                    running.append([name, p, out, fn.run_alone])
                    pending.pop(0)
                    continue
            time.sleep(0.05)
    finally:
        # Ctrl-C/SIGTERM: each child cleans up its own processes on SIGTERM
        for _, p, _, _ in running:
            if p.poll() is None:
                p.terminate()
        for _, p, _, _ in running:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def main():
    ap = argparse.ArgumentParser(description="baton integration tests")
    ap.add_argument("-k", action="append", default=[], metavar="SUBSTRING")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--only", metavar="NAME")
    args = ap.parse_args()
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")

    tests = discover(args.only.split(".", 1)[0] if args.only else None)
    if args.only:
        tests = [(n, f) for n, f in tests if n == args.only]
        if not tests:
            ap.error("no test named %s" % args.only)
    if args.k:
        tests = [(n, f) for n, f in tests if any(k in n for k in args.k)]
    if args.list:
        for n, _ in tests:
            print(n)
        return 0

    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    # Ctrl-C even if SIGINT was ignored by whoever started us (background
    # jobs of non-interactive shells); SIGTERM behaves the same: clean up,
    # then exit.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda s, f: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        if args.jobs > 1 and len(tests) > 1:
            run_parallel(tests, args, counts)
        for name, fn in tests if args.jobs == 1 or len(tests) == 1 else []:
            verdict, detail, secs = run_test(name, fn, args)
            counts[verdict] += 1
            if verdict == "PASS":
                print("PASS %s (%.1fs)" % (name, secs), flush=True)
            else:
                print("%s %s: %s" % (verdict, name, detail), flush=True)
    except KeyboardInterrupt:
        batonlib._cleanup_everything()
        print("interrupted", flush=True)
        print("%d passed, %d failed, %d skipped" % (counts["PASS"], counts["FAIL"], counts["SKIP"]),
              flush=True)
        return 130
    finally:
        batonlib._cleanup_everything()
    print("%d passed, %d failed, %d skipped" % (counts["PASS"], counts["FAIL"], counts["SKIP"]),
          flush=True)
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
