"""Shared pytest fixtures: a real `lathe serve` per test (or per module), and helpers to talk to it.

How to use it in a test file (no import needed: pytest loads this file itself):

    def test_something(server):                      # a fresh server, default settings
        r = server.get("/api/v1/user")               # relative paths go to server.url, with the admin key
        assert r.status_code == 200

    def test_other(lathe_server):                    # the factory: choose env / flags
        s = lathe_server(env={"LATHE_RATE_LIMIT": "1:2"}, args=["--workers", "0"])
        anon = s.session(key=None)                   # a requests.Session without a key
        r = anon.get("/healthz")

    def test_many(module_server): ...                # one server shared by a whole test module (faster)

The server object (LatheServer) has:
    url        "http://127.0.0.1:PORT"
    key        the admin key the server bootstrapped (read from <data dir>/admin.key)
    data_dir   pathlib.Path of the server's data dir (a temp dir; blobs, lathe.db, admin.key, models/)
    proc       the subprocess.Popen
    session(key=<admin key>, user_agent=None) -> requests.Session whose relative URLs go to url and which
               sends X-API-Key (key=None: no key). Default timeout 30 s per request.
    get/post/put/patch/delete(path, **kw)  shortcuts on a shared admin session
    admin(*args, check=True) -> subprocess.CompletedProcess of `lathe admin ARGS --data-dir DATA_DIR --json`;
               .json() is not available there: use json.loads(cp.stdout)
    new_user(email, org="default", role="contributor") -> key: creates a user (lathe admin), grants the role,
               creates a key, returns it
    log()      the server's stderr so far (log lines carry request ids)
    stop(sig=SIGTERM, timeout=30) -> exit code (the fixture checks it is 0 at teardown)

Environment: LATHE_BIN (default <repo>/build/lathe) is the binary under test; LATHE_ROOT the repo root
(default: two levels above this file). FIXTURES is <repo>/tests/fixtures (tokenizer files). The factory sets
LATHE_RATE_LIMIT=0 (off) unless the test passes its own, so that bursts of test requests are not throttled;
every other setting keeps the server's default unless given in env= or args=.

Store switch: LATHE_TEST_STORE=postgres (default sqlite) puts every server on PostgreSQL: each data dir gets
its own fresh database (pg.py), given to `lathe serve` and `lathe admin` as LATHE_DB (server.env carries it:
pass env=server.env, or store_env(data_dir), to other lathe processes such as `lathe worker`). The server is
LATHE_TEST_PG's, or one pg.py starts itself. Tests that check SQLite itself (its file, its modes) carry
@pytest.mark.sqlite_only("why") and are skipped there, saying why.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest
import requests

import pg

ROOT = pathlib.Path(os.environ.get("LATHE_ROOT", pathlib.Path(__file__).resolve().parents[2]))
LATHE_BIN = pathlib.Path(os.environ.get("LATHE_BIN", ROOT / "build" / "lathe"))
FIXTURES = ROOT / "tests" / "fixtures"

START_TIMEOUT_S = 30

STORE = os.environ.get("LATHE_TEST_STORE", "sqlite")
if STORE not in ("sqlite", "postgres"):
    raise RuntimeError("LATHE_TEST_STORE must be sqlite or postgres, not %r" % STORE)


def store_env(data_dir):
    """The environment that puts a lathe process on data_dir's store: {} on SQLite (the data dir's lathe.db),
    {"LATHE_DB": <its own PostgreSQL database>} on PostgreSQL (skips the test when PostgreSQL is unavailable)."""
    if STORE != "postgres":
        return {}
    try:
        return {"LATHE_DB": pg.database_for(data_dir)}
    except RuntimeError as e:
        pytest.skip("LATHE_TEST_STORE=postgres: %s" % e)


def store_rows(server, sql):
    """Rows (tuples) of a read-only query on server's store, SQLite file or PostgreSQL database alike
    (integers come back as int, other values as str; NULL as None on SQLite, "" on PostgreSQL)."""
    url = server.env.get("LATHE_DB")
    if url and url.startswith(("postgres://", "postgresql://")):
        out = pg.psql(url, sql)
        conv = lambda v: int(v) if v.lstrip("-").isdigit() else v
        return [tuple(conv(v) for v in line.split("|")) for line in out.splitlines() if line]
    import sqlite3

    path = url[len("sqlite:") :] if url and url.startswith("sqlite:") else server.data_dir / "lathe.db"
    con = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def store_exec(server, sql, params=()):
    """Runs one writing statement with `?` parameters (str or int) on server's store, SQLite or PostgreSQL."""
    url = server.env.get("LATHE_DB")
    if url and url.startswith(("postgres://", "postgresql://")):
        parts = sql.split("?")
        assert len(parts) == len(params) + 1, "one parameter per '?'"
        lit = lambda v: str(int(v)) if isinstance(v, int) else "'" + str(v).replace("'", "''") + "'"
        pg.psql(url, parts[0] + "".join(lit(v) + p for v, p in zip(params, parts[1:])))
        return
    import sqlite3

    path = url[len("sqlite:") :] if url and url.startswith("sqlite:") else server.data_dir / "lathe.db"
    con = sqlite3.connect(str(path), timeout=30)
    try:
        with con:
            con.execute(sql, params)
    finally:
        con.close()


def pytest_configure(config):
    config.addinivalue_line("markers", "sqlite_only(reason): checks SQLite itself; skipped on PostgreSQL")


def pytest_collection_modifyitems(config, items):
    if STORE != "postgres":
        return
    for item in items:
        m = item.get_closest_marker("sqlite_only")
        if m:
            item.add_marker(pytest.mark.skip(reason="SQLite only: %s" % (m.args[0] if m.args else "")))


def pytest_sessionfinish(session, exitstatus):
    pg.shutdown()


class ApiSession(requests.Session):
    """A requests.Session bound to a server: relative URLs ("/api/v1/user") are joined to the base URL."""

    def __init__(self, base, key=None, user_agent=None):
        super().__init__()
        self.base = base
        if key:
            self.headers["X-API-Key"] = key
        if user_agent:
            self.headers["User-Agent"] = user_agent

    def request(self, method, url, *args, **kwargs):
        if url.startswith("/"):
            url = self.base + url
        kwargs.setdefault("timeout", 30)
        return super().request(method, url, *args, **kwargs)


class LatheServer:
    def __init__(self, data_dir, env=None, args=()):
        self.data_dir = pathlib.Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The caller's shell must not leak LATHE_* settings into the server under test.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LATHE_") or k in ("LATHE_BIN", "LATHE_ROOT")}
        self.env["LATHE_RATE_LIMIT"] = "0"
        self.env.update(env or {})
        self.args = list(args)
        if STORE == "postgres" and "LATHE_DB" not in self.env and "--db" not in self.args:
            self.env.update(store_env(self.data_dir))
        self._stdout_lines = []
        self._stderr_path = self.data_dir.parent / (self.data_dir.name + "-server.log")
        self._stderr = open(self._stderr_path, "wb")
        cmd = [str(LATHE_BIN), "serve", "--data-dir", str(self.data_dir), "--listen", "127.0.0.1:0", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr, env=self.env)
        self._ready = threading.Event()
        self.url = None
        threading.Thread(target=self._read_stdout, daemon=True).start()
        if not self._ready.wait(START_TIMEOUT_S) or self.url is None:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(
                "lathe serve did not start: stdout=%r stderr=%s" % (self._stdout_lines, self.log()[-4000:])
            )
        self.key = (self.data_dir / "admin.key").read_text().strip()
        self._admin_session = self.session()
        self.returncode = None

    def _read_stdout(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._stdout_lines.append(line)
            if line.startswith("lathe: listening on "):
                self.url = line[len("lathe: listening on ") :].strip()
                self._ready.set()
        self._ready.set()  # process ended

    @property
    def stdout(self):
        return "\n".join(self._stdout_lines)

    def log(self):
        if not self._stderr.closed:
            self._stderr.flush()
        return self._stderr_path.read_text(errors="replace")

    def session(self, key="__admin__", user_agent=None):
        return ApiSession(self.url, self.key if key == "__admin__" else key, user_agent)

    def get(self, path, **kw):
        return self._admin_session.get(path, **kw)

    def post(self, path, **kw):
        return self._admin_session.post(path, **kw)

    def put(self, path, **kw):
        return self._admin_session.put(path, **kw)

    def patch(self, path, **kw):
        return self._admin_session.patch(path, **kw)

    def delete(self, path, **kw):
        return self._admin_session.delete(path, **kw)

    def admin(self, *args, check=True):
        cmd = [str(LATHE_BIN), "admin", *args, "--data-dir", str(self.data_dir), "--json"]
        cp = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=60)
        if check and cp.returncode != 0:
            raise AssertionError("lathe admin %s failed (%d): %s" % (" ".join(args), cp.returncode, cp.stderr))
        return cp

    def new_user(self, email, org="default", role="contributor", **key_args):
        self.admin("create-user", "--email", email)
        if org:
            self.admin("grant", "--email", email, "--org", org, "--role", role)
        extra = []
        for k, v in key_args.items():
            extra += ["--" + k.replace("_", "-"), v]
        out = self.admin("create-key", "--email", email, *extra)
        return json.loads(out.stdout)["key"]

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.returncode is not None:
            return self.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.returncode = -9
        self._stderr.close()
        return self.returncode


def _start(tmp_dir, servers, env=None, args=(), name=None):
    name = name or "data%d" % len(servers)
    s = LatheServer(pathlib.Path(tmp_dir) / name, env=env, args=args)
    servers.append(s)
    return s


def _stop_all(servers):
    bad = []
    for s in servers:
        rc = s.stop()
        if rc != 0:
            bad.append((s.data_dir, rc, s.log()[-2000:]))
    if STORE == "postgres":
        for s in servers:
            pg.drop(s.data_dir)
    assert not bad, "lathe serve did not exit 0 at teardown: %r" % (bad,)


@pytest.fixture
def lathe_server(tmp_path):
    """Factory: lathe_server(env=None, args=(), name=None) -> LatheServer; all are stopped at teardown."""
    servers = []
    yield lambda env=None, args=(), name=None: _start(tmp_path, servers, env, args, name)
    _stop_all(servers)


@pytest.fixture
def server(lathe_server):
    """A fresh server with default settings (rate limit off)."""
    return lathe_server()


@pytest.fixture(scope="module")
def module_server():
    """One server for a whole test module."""
    tmp = tempfile.mkdtemp(prefix="lathe-py-")
    servers = []
    _start(tmp, servers)
    yield servers[0]
    _stop_all(servers)
    shutil.rmtree(tmp, ignore_errors=True)


def assert_envelope(r, code, type_=None):
    """Checks that r is the docs/spec.md §2.1 error envelope with this status (and type); returns the body."""
    assert r.status_code == code, (r.status_code, r.text)
    body = r.json()
    assert set(body) <= {"code", "detail", "type", "errors"}, body
    assert body["code"] == code and isinstance(body["detail"], str) and isinstance(body["type"], str), body
    if type_ is not None:
        assert body["type"] == type_, body
    assert r.headers.get("X-Request-Id"), "every response carries X-Request-Id"
    return body
