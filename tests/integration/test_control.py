"""The control surface: the control socket is private to its owner, batonctl
exit codes mean what the README says, and every binary reports its version
and state schema range."""

import ctypes
import json
import os
import re
import socket
import stat
import subprocess

import batonlib as bl
from batonlib import check

NOBODY = 65534


def start(ctx):
    n = ctx.ngircd()
    b = bl.Baton(ctx, n, nsessions=1)
    b.start()
    return b


def control_path(b):
    return os.path.join(b.dir, "baton.sock")


def connect_as_nobody(path, keep_root_fs):
    """In a child: effective uid nobody (file-system uid root if keep_root_fs,
    so the 0600 file mode does not stop it and the supervisor's peer-uid
    check is what answers), send a status request, report what happened."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.seteuid(NOBODY)
            if keep_root_fs:
                ctypes.CDLL(None, use_errno=True).setfsuid(0)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.connect(path)
            except OSError as e:
                os.write(w, ("connect:%s" % e.errno).encode())
                os._exit(0)
            data = b""
            try:
                s.sendall(b'{"cmd":"status"}\n')
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except (ConnectionResetError, BrokenPipeError):
                pass    # closed before or with our request unread: no reply
            os.write(w, ("reply:%d" % len(data)).encode())
        except Exception as e:  # report, never raise in the child
            os.write(w, ("error:%r" % e).encode())
        os._exit(0)
    os.close(w)
    out = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        out += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return out.decode()


def test_control_socket_private(ctx):
    """The control socket is mode 0600; another uid cannot open it, and one
    that gets past the file mode (file-system uid root, effective uid
    nobody) is refused by the supervisor's SO_PEERCRED check: the
    connection closes without a reply and the refusal is logged."""
    b = start(ctx)
    path = control_path(b)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    check(mode == 0o600, "control socket mode %o, want 600" % mode)
    got = connect_as_nobody(path, keep_root_fs=False)
    check(got == "connect:13", "nobody connecting: %r, want EACCES" % got)
    got = connect_as_nobody(path, keep_root_fs=True)
    check(got == "reply:0", "nobody past the file mode got %r, want a close without reply" % got)
    bl.wait_for(lambda: "refused" in b.log_text(), 5, what="refusal logged")
    check(re.search(r"uid %d refused" % NOBODY, b.log_text()),
          "log does not name the refused uid")
    rc, data, _, _ = b.ctl("status", "--json")
    check(rc == 0 and data["workers"], "status for the owner still works: %d %r" % (rc, data))


def test_batonctl_exit_codes(ctx):
    """0 success; 1 refused (rollback with no previous binary, with the
    reason); 2 usage errors and an unreachable supervisor (naming the
    socket)."""
    b = start(ctx)
    rc, data, out, err = b.ctl("rollback", "--json")
    check(rc == 1 and data and data.get("result") == "aborted" and data.get("reason"),
          "rollback without a previous binary: exit %d, %r %r" % (rc, out, err))
    rc, _, out, err = b.ctl("frobnicate")
    check(rc == 2, "unknown command: exit %d (%r %r)" % (rc, out, err))
    rc, _, out, err = b.ctl("upgrade")
    check(rc == 2, "upgrade without a path: exit %d (%r %r)" % (rc, out, err))
    b.stop()
    rc, _, out, err = b.ctl("status", "--json")
    check(rc == 2 and "baton.sock" in err,
          "status with the supervisor gone: exit %d, stderr %r" % (rc, err))


def test_versions(ctx):
    """Every binary of both builds prints its version and the state schema
    range; the two builds differ only in the version string."""
    seen = {}
    for name in ("a", "b"):
        build = ctx.builds[name].require()
        for binary in (build.sessiond, build.supervisor, build.batonctl):
            out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                 timeout=10)
            text = out.stdout.strip()
            m = re.match(r"^(\S+) (\S+) \(state schema (\d+)-(\d+)\)$", text)
            check(out.returncode == 0 and m, "%s --version: %r (exit %d)"
                  % (binary, text, out.returncode))
            check(m.group(1) == os.path.basename(binary), "program name in %r" % text)
            seen.setdefault(name, set()).add((m.group(2), m.group(3), m.group(4)))
    check(len(seen["a"]) == 1 and len(seen["b"]) == 1,
          "binaries of one build disagree: %r" % seen)
    (va, *ra), = seen["a"]
    (vb, *rb), = seen["b"]
    check(va != vb and ra == rb, "builds: %r vs %r" % (seen["a"], seen["b"]))
