"""`lathe serve` on PostgreSQL itself (`--db postgres://...`), beyond what the suite's PostgreSQL pass covers:
the database going away under a running server and workers (503 service_unavailable with Retry-After, /readyz
503, workers retrying their claims, no crash, recovery by itself once it is back, nothing lost), sessions cut
by the database (reset and retried), several servers starting together on one empty database
(migrations and the first-start bootstrap run once), and what one server writes being seen by another at once.

Each test gets a private PostgreSQL server (tests/pg-start.sh) so that it can stop and start it; where
PostgreSQL cannot start here, the tests are skipped with the reason."""

import itertools
import signal
import subprocess
import threading
import time

import pytest

import pg
from conftest import LATHE_BIN, LatheServer, assert_envelope

_seq = itertools.count()


@pytest.fixture
def private_pg():
    d, url = pg.start_private()
    if not d:
        pytest.skip(url)
    yield d, url
    pg.destroy(d)


def _fresh_db(admin):
    return pg.create_database(admin, "lt_store_pg_%d" % next(_seq))


def _wait(pred, timeout=30, every=0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(every)
    return pred()


def test_outage_is_503_and_the_server_recovers_by_itself(private_pg, tmp_path):
    d, admin = private_pg
    url = _fresh_db(admin)
    # An in-process worker and a standalone `lathe worker` poll the queue through the outage.
    s = LatheServer(tmp_path / "srv", args=["--db", url, "--workers", "1"])
    wlog = open(tmp_path / "worker.log", "wb")
    w = subprocess.Popen([str(LATHE_BIN), "worker", "--db", url, "--data-dir", str(tmp_path / "w")],
                         stdout=wlog, stderr=subprocess.STDOUT)
    try:
        assert s.get("/readyz").status_code == 200
        assert s.post("/api/v1/orgs", json={"key": "before"}).status_code == 201
        time.sleep(1)  # the workers are polling
        pg.stop_keep(d)
        # Every request that needs the store fails cleanly while the database is down: 503, never a crash.
        for path in ("/api/v1/user", "/api/v1/orgs"):
            r = s.get(path)
            body = assert_envelope(r, 503, "service_unavailable")
            assert r.headers.get("Retry-After"), r.headers
            assert "store" in body["detail"]
        assert_envelope(s.post("/api/v1/orgs", json={"key": "during"}), 503, "service_unavailable")
        assert s.get("/readyz").status_code == 503
        assert s.get("/healthz").status_code == 200  # alive, only not ready
        assert s.proc.poll() is None
        time.sleep(3)  # long enough for both workers to poll the queue while the store is down
        assert s.proc.poll() is None and w.poll() is None
        pg.start_again(d)
        # Back by itself: the per-thread connections are reset on their next use.
        assert _wait(lambda: s.get("/readyz").status_code == 200), s.log()[-2000:]
        assert _wait(lambda: s.get("/api/v1/user").status_code == 200), s.log()[-2000:]
        assert s.post("/api/v1/orgs", json={"key": "after"}).status_code == 201
        keys = [o["key"] for o in s.get("/api/v1/orgs").json()["items"]]
        assert "before" in keys and "after" in keys and "during" not in keys
        assert w.poll() is None, (tmp_path / "worker.log").read_text()
        assert "cannot claim a job (will retry)" in (tmp_path / "worker.log").read_text()
        w.send_signal(signal.SIGTERM)
        assert w.wait(timeout=60) == 0, (tmp_path / "worker.log").read_text()
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
        wlog.close()
        assert s.stop() == 0, s.log()[-3000:]


def test_servers_starting_together_migrate_and_bootstrap_once(private_pg, tmp_path):
    _, admin = private_pg
    url = _fresh_db(admin)
    servers, errors = [None] * 3, []

    def start(i):
        # A server that finds the store already bootstrapped by another writes no admin.key: a placeholder
        # lets the fixture start it; the key to use is the one a bootstrapping server printed.
        d = tmp_path / ("srv%d" % i)
        d.mkdir()
        (d / "admin.key").write_text("none\n")
        try:
            servers[i] = LatheServer(d, args=["--db", url, "--workers", "0"])
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=start, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        rows = pg.psql(url, "SELECT area, version, COUNT(*) FROM schema_migrations GROUP BY area, version")
        counts = [line.split("|") for line in rows.splitlines()]
        assert counts and all(c[2] == "1" for c in counts), counts
        assert {c[0] for c in counts} == {"core", "artifacts", "jobs"}, counts
        # One first-start bootstrap: one admin user, one default org, whoever won.
        assert pg.psql(url, "SELECT COUNT(*) FROM users").strip() == "1"
        assert pg.psql(url, "SELECT COUNT(*) FROM orgs WHERE slug = 'default'").strip() == "1"
        # Every server serves, and sees what another wrote at once.
        a, b = servers[0], servers[1]
        key = next(s.key for s in servers if "admin API key" in s.stdout)
        sa, sb = a.session(key=key), b.session(key=key)
        assert sa.post("/api/v1/orgs", json={"key": "shared"}).status_code == 201
        assert "shared" in [o["key"] for o in sb.get("/api/v1/orgs").json()["items"]]
        assert_envelope(sb.post("/api/v1/orgs", json={"key": "shared"}), 409, "conflict")
    finally:
        for s in servers:
            if s:
                s.stop()


def test_two_servers_share_one_blob_dir(private_pg, tmp_path):
    """--blob-dir: what one server stores (a dataset archive) the other serves, byte for byte; nothing lands in
    either data dir's own blobs/."""
    from test_artifacts import dataset, push, tar_bytes

    _, admin = private_pg
    url = _fresh_db(admin)
    shared = tmp_path / "shared-blobs"
    servers = []
    try:
        a = LatheServer(tmp_path / "a", args=["--db", url, "--workers", "0", "--blob-dir", str(shared)])
        servers.append(a)
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / "admin.key").write_text("none\n")  # b finds the store bootstrapped: it writes no key
        b = LatheServer(tmp_path / "b", env={"LATHE_BLOB_DIR": str(shared)}, args=["--db", url, "--workers", "0"])
        servers.append(b)
        body = tar_bytes(dataset(name="shared-ds"))
        rec = push(a, "datasets", body, ctype="application/gzip").json()
        r = b.session(key=a.key).get("/api/v1/org/default/datasets/shared-ds/1.0.0/download")
        assert r.status_code == 200 and r.content == body, r.text[:500]
        hexd = rec["digest"].split(":", 1)[1]
        assert (shared / "sha256" / hexd[:2] / hexd[2:]).exists()
        assert not (a.data_dir / "blobs").exists() and not (b.data_dir / "blobs").exists()
    finally:
        assert [x.stop() for x in servers] == [0] * len(servers)


def test_connections_cut_by_the_database_are_reset_and_retried(private_pg, tmp_path):
    """PostgreSQL ends every session of the server (pg_terminate_backend, as a failover or an idle-session
    killer does): the next statements run on fresh connections, so no request fails."""
    _, admin = private_pg
    url = _fresh_db(admin)
    name = url.rsplit("dbname=", 1)[1]
    s = LatheServer(tmp_path / "srv", args=["--db", url, "--workers", "0", "--threads", "4"])
    try:
        for rnd in range(3):
            for _ in range(8):  # touch several of the server's threads, so each has a connection
                assert s.get("/api/v1/user").status_code == 200
            cut = pg.psql(admin, "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                 "WHERE datname = '%s' AND pid <> pg_backend_pid()" % name)
            assert int(cut) > 0
            codes = [s.get("/api/v1/user").status_code for _ in range(12)]
            codes.append(s.post("/api/v1/orgs", json={"key": "cut-%d" % rnd}).status_code)
            assert codes == [200] * 12 + [201], (codes, s.log()[-2000:])
        assert s.proc.poll() is None
    finally:
        assert s.stop() == 0, s.log()[-3000:]
