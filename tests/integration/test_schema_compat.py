"""State schema compatibility of the shared member lists
(sessiond/chanstore.h, state schema 2: each channel's member list travels
once per chunk and the sessions refer to it).

- A <-> B (both read schema 2): an upgrade and a rollback in chunks of 8
  write schema 2, and after each a client attaching to any session gets the
  full member list of its channels, including changes made in between.
- A <-> the last released build (schema 1 only; BATON_BUILD_RELEASED, by
  default <checkout>/build-released, skipped when missing): the supervisor
  asks A to write schema 1 for the released worker, which adopts it; the
  way back (released -> A) is schema 1 read by A. Member lists are complete
  on both sides."""

import os
import re

import batonlib as bl
from batonlib import check

CHANNELS = ["#chat", "#ops"]
NSESSIONS = 24
CHUNKED = {"chunk_sessions": 8}


def released_build(ctx):
    root = os.environ.get("BATON_ROOT", bl.REPO_ROOT)
    path = os.environ.get("BATON_BUILD_RELEASED", os.path.join(root, "build-released"))
    return bl.Build("released", path).require()


def start(ctx, build=None):
    ng = ctx.ngircd()
    b = bl.Baton(ctx, ng, nsessions=NSESSIONS, channels=CHANNELS, build=build,
                 sessiond_opts=CHUNKED)
    w = bl.Watcher(ctx.loop, ng, CHANNELS, watch=[s.nick for s in b.sessions])
    b.start(wait=False)
    bl.pump_ready(ctx, b)
    w.wait_present([s.nick for s in b.sessions], timeout=60)
    dave = bl.direct_user(ctx.loop, ng, "dave", CHANNELS)
    erin = bl.direct_user(ctx.loop, ng, "erin", ["#chat"])
    return ng, b, dave, erin


def names_of(c, channel):
    """Nicks of the NAMES (353) conn c got for channel, prefixes dropped."""
    out = set()
    for m in c.msgs("353"):
        if len(m.params) >= 4 and m.params[2].lower() == channel:
            out.update(n.lstrip("@+%&~").lower() for n in m.params[-1].split())
    return out


def check_names(ctx, b, i, want, tag):
    """A client attaching to session i gets exactly `want` for each channel."""
    s = b.sessions[i]
    c = bl.bouncer_client(ctx.loop, b, s, client="names%d" % i)
    ctx.loop.run_until(lambda: all(names_of(c, ch) for ch in want), 10,
                       raise_on_timeout=False)
    for ch, nicks in want.items():
        got = names_of(c, ch)
        check(got == nicks, "%s: session %d %s: NAMES differ: missing %s, extra %s"
              % (tag, i, ch, sorted(nicks - got), sorted(got - nicks)))
    c.send("QUIT :bye")
    ctx.loop.run_for(0.3)


def expected(b, chat_extra, ops_extra):
    bn = {s.nick.lower() for s in b.sessions} | {"watcher"}
    return {"#chat": bn | set(chat_extra), "#ops": bn | set(ops_extra)}


def migrate(ctx, b, op, build=None):
    if op == "upgrade":
        rc, res = b.upgrade(build)
    else:
        rc, res = b.rollback()
    check(rc == 0 and res.get("result") == "committed", "%s: exit %d, %s" % (op, rc, res))
    check(res.get("sessions") == NSESSIONS, "%s: sessions %r" % (op, res.get("sessions")))
    check((res.get("chunks") or 0) >= 3, "%s: %r chunks, want >= 3" % (op, res.get("chunks")))
    return res


def schemas_written(b):
    return [int(x) for x in re.findall(r"state schema (\d+)\)", b.log_text())]


def test_shared_lists_upgrade_and_rollback(ctx):
    """A -> B -> A with 24 sessions in chunks of 8: both migrations write
    schema 3 (the newest both read; it has the shared lists of 2); NAMES after each is complete on several sessions (first,
    middle, last chunk), also after a PART and a JOIN in between."""
    bB = ctx.builds["b"].require()
    ng, b, dave, erin = start(ctx)
    check_names(ctx, b, 0, expected(b, ["dave", "erin"], ["dave"]), "before")
    migrate(ctx, b, "upgrade", bB)
    check(schemas_written(b) == [3], "schemas written %s, want [3]" % schemas_written(b))
    for i in (1, 12, NSESSIONS - 1):
        check_names(ctx, b, i, expected(b, ["dave", "erin"], ["dave"]), "after upgrade")
    erin.send("PART #chat")
    frank = bl.direct_user(ctx.loop, ng, "frank", ["#chat", "#ops"])
    ctx.loop.run_for(1.0)
    for i in (2, 20):
        check_names(ctx, b, i, expected(b, ["dave", "frank"], ["dave", "frank"]),
                    "after PART/JOIN")
    migrate(ctx, b, "rollback")
    check(schemas_written(b) == [3, 3], "schemas written %s" % schemas_written(b))
    frank.send("NICK frankie")
    ctx.loop.run_for(1.0)
    for i in (3, 11, NSESSIONS - 2):
        check_names(ctx, b, i, expected(b, ["dave", "frankie"], ["dave", "frankie"]),
                    "after rollback")


def test_released_build_both_ways(ctx):
    """A (schema 1-3) -> the released build (schema 1-1) and back: the
    supervisor makes A write schema 1, the released worker adopts it with
    every member list complete; back on A (schema 1 read), complete again."""
    rel = released_build(ctx)
    check(rel.version != ctx.builds["a"].version,
          "released build and A report the same version %r" % rel.version)
    ng, b, dave, erin = start(ctx)
    migrate(ctx, b, "upgrade", rel)
    check(schemas_written(b) == [1], "A wrote %s to the released build, want [1]"
          % schemas_written(b))
    for i in (0, 9, NSESSIONS - 1):
        check_names(ctx, b, i, expected(b, ["dave", "erin"], ["dave"]), "on the released build")
    erin.send("PART #chat")
    ctx.loop.run_for(1.0)
    migrate(ctx, b, "rollback")
    for i in (1, 16, NSESSIONS - 2):
        check_names(ctx, b, i, expected(b, ["dave"], ["dave"]), "back on A")
    # and A -> B afterwards writes schema 3 again
    bB = ctx.builds["b"].require()
    migrate(ctx, b, "upgrade", bB)
    check(schemas_written(b)[-1] == 3, "A -> B wrote %s" % schemas_written(b))
    check_names(ctx, b, 5, expected(b, ["dave"], ["dave"]), "on B")
