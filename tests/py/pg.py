"""The PostgreSQL side of the Python suite's store switch (used by conftest.py).

LATHE_TEST_STORE=postgres runs every server of the suite on PostgreSQL instead of its SQLite file: each data
dir gets its own fresh database (so a test that restarts a server on the same data dir finds its store
again), passed to `lathe serve`, `lathe admin` and `lathe worker` as LATHE_DB. The server is the one named by
LATHE_TEST_PG (tests/run.sh starts one for the whole run), else one this module starts on first use with
tests/pg-start.sh and stops when the test session ends. Where PostgreSQL cannot be started, the tests that
need it are skipped with the reason pg-start.sh gave.
"""

import glob
import itertools
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading

ROOT = pathlib.Path(__file__).resolve().parents[2]

_lock = threading.Lock()
_server = None  # (admin URL, started dir or None) once known
_failure = None  # why PostgreSQL is unavailable, once known
_dbs = {}  # resolved data dir -> URL
_seq = itertools.count()


def _psql():
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"))
    return bins[-1] if bins else shutil.which("psql")


def _admin_url():
    """(admin URL, None) or (None, reason). Starts a server the first time when LATHE_TEST_PG is not set."""
    global _server, _failure
    if _server:
        return _server[0], None
    if _failure:
        return None, _failure
    url = os.environ.get("LATHE_TEST_PG")
    started = None
    if not url:
        started = tempfile.mkdtemp(prefix="lathe-pg-")
        cp = subprocess.run([str(ROOT / "tests" / "pg-start.sh"), started], capture_output=True, text=True)
        if cp.returncode != 0:
            shutil.rmtree(started, ignore_errors=True)
            _failure = "PostgreSQL could not be started: " + (cp.stderr.strip() or "pg-start.sh exit %d" % cp.returncode)
            return None, _failure
        url = cp.stdout.strip().splitlines()[-1]
    if not _psql():
        _failure = "psql not found (install Debian's postgresql: scripts/setup.sh --test)"
        return None, _failure
    _server = (url, started)
    return url, None


def database_for(data_dir):
    """The URL of data_dir's own database (created on first use), or raises RuntimeError with the reason
    PostgreSQL is unavailable."""
    key = str(pathlib.Path(data_dir).resolve())
    with _lock:
        if key in _dbs:
            return _dbs[key]
        admin, why = _admin_url()
        if not admin:
            raise RuntimeError(why)
        name = "lt_py_%d_%d" % (os.getpid(), next(_seq))
        cp = subprocess.run([_psql(), admin, "-qAtc", "CREATE DATABASE %s TEMPLATE template0" % name],
                            capture_output=True, text=True, timeout=60)
        if cp.returncode != 0:
            raise RuntimeError("CREATE DATABASE on %s failed: %s" % (admin, cp.stderr.strip()))
        url = admin + ("&" if "?" in admin else "?") + "dbname=" + name
        _dbs[key] = url
        return url


def drop(data_dir):
    """Drops data_dir's database, if it has one (its servers have stopped). Errors are ignored: the whole
    server is thrown away at the end anyway."""
    key = str(pathlib.Path(data_dir).resolve())
    with _lock:
        url = _dbs.pop(key, None)
        admin = _server[0] if _server else None
    if url and admin:
        name = url.rsplit("dbname=", 1)[1]
        subprocess.run([_psql(), admin, "-qAtc", "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name],
                       capture_output=True, timeout=60)


def unavailable():
    """None when PostgreSQL can be used, else the reason."""
    with _lock:
        return _admin_url()[1]


def psql(url, sql):
    """Runs sql on url; returns stdout (unaligned, tuples only). Raises on failure."""
    cp = subprocess.run([_psql(), url, "-qAtc", sql], capture_output=True, text=True, timeout=60)
    if cp.returncode != 0:
        raise RuntimeError("psql failed: %s" % cp.stderr.strip())
    return cp.stdout


def shutdown():
    """Stops the server this module started (if any). The databases go with it; with LATHE_TEST_PG, they are
    left for the caller's server, which tests/run.sh throws away."""
    global _server
    with _lock:
        if _server and _server[1]:
            subprocess.run([str(ROOT / "tests" / "pg-stop.sh"), _server[1]], capture_output=True)
        _server = None


# ---- a private server, for tests that stop and restart PostgreSQL under a running lathe ----


def start_private():
    """(dir, admin URL) of a new server of the caller's own, or (None, reason) when none can start."""
    d = tempfile.mkdtemp(prefix="lathe-pg-")
    cp = subprocess.run([str(ROOT / "tests" / "pg-start.sh"), d], capture_output=True, text=True)
    if cp.returncode != 0:
        shutil.rmtree(d, ignore_errors=True)
        return None, "PostgreSQL could not be started: " + (cp.stderr.strip() or "exit %d" % cp.returncode)
    if not _psql():
        subprocess.run([str(ROOT / "tests" / "pg-stop.sh"), d], capture_output=True)
        return None, "psql not found (install Debian's postgresql: scripts/setup.sh --test)"
    return d, cp.stdout.strip().splitlines()[-1]


def stop_keep(d):
    """Stops the private server in d (fast shutdown: open connections are cut), keeping its data."""
    data = pathlib.Path(d) / "data"
    owner = data.owner()
    pg_ctl = str(pathlib.Path(_psql()).parent / "pg_ctl")
    if not os.path.exists(pg_ctl):
        pg_ctl = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))[-1]
    run = ["runuser", "-u", owner, "--"] if os.geteuid() == 0 else []
    subprocess.run(run + [pg_ctl, "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"], check=True,
                   capture_output=True)


def start_again(d):
    """Starts the private server in d again on its data (after stop_keep)."""
    subprocess.run([str(ROOT / "tests" / "pg-start.sh"), d], check=True, capture_output=True)


def destroy(d):
    subprocess.run([str(ROOT / "tests" / "pg-stop.sh"), d], capture_output=True)


def create_database(admin, name):
    """Creates database name on admin's server; returns its URL."""
    psql(admin, "CREATE DATABASE %s TEMPLATE template0" % name)
    return admin + ("&" if "?" in admin else "?") + "dbname=" + name
