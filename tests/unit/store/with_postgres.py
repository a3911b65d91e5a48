#!/usr/bin/env python3
"""Run a command against a PostgreSQL 15 of its own.

initdb into a temp dir under TMPDIR, start postgres listening only on a Unix
socket in that dir (no TCP), run the command with STORE_TEST_PG set to a
libpq connection string (without dbname), then stop the server and remove
the dir. As root the server runs as 'nobody' (postgres refuses root).
Binaries: `pg_config --bindir`, else /usr/lib/postgresql/15/bin.
"""
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time


def bindir():
    try:
        d = subprocess.run(['pg_config', '--bindir'], capture_output=True,
                           text=True, check=True).stdout.strip()
        if os.path.exists(os.path.join(d, 'initdb')):
            return d
    except (OSError, subprocess.CalledProcessError):
        pass
    d = '/usr/lib/postgresql/15/bin'
    if os.path.exists(os.path.join(d, 'initdb')):
        return d
    sys.exit('with_postgres: no PostgreSQL server binaries (initdb); '
             'run scripts/install-deps (postgresql-15)')


def on_term(signum, frame):
    # A timeout's SIGTERM: leave through the finally below, which stops the
    # server and removes its files.
    raise SystemExit(1)


def main():
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    if len(sys.argv) < 2:
        sys.exit('usage: with_postgres.py COMMAND [ARGS...]')
    bins = bindir()
    top = tempfile.mkdtemp(prefix='baton-pg-')
    data = os.path.join(top, 'data')
    drop = None
    if os.geteuid() == 0:
        pw = pwd.getpwnam('nobody')
        os.chown(top, pw.pw_uid, pw.pw_gid)

        def drop():
            os.setgid(pw.pw_gid)
            os.setgroups([])
            os.setuid(pw.pw_uid)
    env = dict(os.environ, LC_ALL='C')
    log = open(os.path.join(top, 'initdb.log'), 'w')
    try:
        subprocess.run([os.path.join(bins, 'initdb'), '-D', data, '-U', 'baton',
                        '--auth=trust', '--no-sync', '-E', 'UTF8'],
                       stdout=log, stderr=subprocess.STDOUT, check=True,
                       preexec_fn=drop, env=env)
    except subprocess.CalledProcessError:
        log.close()
        sys.stderr.write(open(os.path.join(top, 'initdb.log')).read())
        shutil.rmtree(top, ignore_errors=True)
        sys.exit('with_postgres: initdb failed (is TMPDIR reachable by nobody?)')
    srv_log = open(os.path.join(top, 'server.log'), 'w')
    srv = subprocess.Popen([os.path.join(bins, 'postgres'), '-D', data, '-k', top,
                            '-c', "listen_addresses=", '-c', 'fsync=on',
                            '-p', '5432'],
                           stdout=srv_log, stderr=subprocess.STDOUT,
                           preexec_fn=drop, env=env)
    rc = 1
    child = None
    try:
        sock = os.path.join(top, '.s.PGSQL.5432')
        deadline = time.time() + 30
        ready = False
        while time.time() < deadline and srv.poll() is None:
            if os.path.exists(sock) and subprocess.run(
                    [os.path.join(bins, 'pg_isready'), '-h', top, '-p', '5432'],
                    capture_output=True).returncode == 0:
                ready = True
                break
            time.sleep(0.1)
        if not ready:
            srv_log.flush()
            sys.stderr.write(open(os.path.join(top, 'server.log')).read())
            sys.exit('with_postgres: the server did not start')
        env = dict(os.environ,
                   STORE_TEST_PG='host=%s port=5432 user=baton' % top)
        child = subprocess.Popen(sys.argv[1:], env=env)
        rc = child.wait()
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        if srv.poll() is None:
            srv.send_signal(signal.SIGINT)  # fast shutdown
            try:
                srv.wait(timeout=30)
            except subprocess.TimeoutExpired:
                srv.kill()
                srv.wait()
        shutil.rmtree(top, ignore_errors=True)
    sys.exit(rc)


if __name__ == '__main__':
    main()
