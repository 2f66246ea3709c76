"""Cross-cutting HTTP rules of docs/spec.md §2 against a real `lathe serve`: the error envelope on every failure
path, auth headers, body checks (400/413), client versions (426), rate limits (429), Idempotency-Key,
request ids, probes, metrics, and graceful shutdown with a request in flight."""

import os
import re
import signal
import socket
import threading
import time
import uuid

import pytest
import requests

from conftest import assert_envelope

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_probes(module_server):
    anon = module_server.session(key=None)
    r = anon.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert r.headers["Content-Type"].startswith("application/json")
    r = anon.get("/readyz")
    assert r.status_code == 200


@pytest.mark.sqlite_only("moves the SQLite file away (test_store_pg.py stops PostgreSQL instead)")
def test_readyz_fails_when_store_file_is_gone(server):
    db = server.data_dir / "lathe.db"
    moved = server.data_dir / "lathe.db.away"
    os.rename(db, moved)
    try:
        assert_envelope(server.session(key=None).get("/readyz"), 503)
    finally:
        os.rename(moved, db)
    assert server.session(key=None).get("/readyz").status_code == 200


def test_auth_headers(module_server):
    s = module_server
    anon = s.session(key=None)
    b = assert_envelope(anon.get("/api/v1/user"), 401, "authentication_error")
    assert b["detail"] == "Authentication failed"
    assert_envelope(anon.get("/api/v1/user", headers={"X-API-Key": "lk_" + "a" * 40}), 401, "authentication_error")
    assert_envelope(anon.get("/api/v1/user", headers={"X-API-Key": "garbage"}), 401)
    assert_envelope(anon.get("/api/v1/user", headers={"Authorization": "Basic Zm9vOmJhcg=="}), 401)
    # Refused on the headers alone; the body is read and dropped, the client sees the 401 (not a reset).
    assert_envelope(anon.post("/api/v1/orgs", json={"key": "x", "name": "n" * 200000}), 401)
    assert anon.get("/api/v1/user", headers={"X-API-Key": s.key}).status_code == 200
    assert anon.get("/api/v1/user", headers={"Authorization": "Bearer " + s.key}).status_code == 200
    assert anon.get("/api/v1/user", headers={"Authorization": "bearer " + s.key}).status_code == 200
    # Both headers: accepted when they agree, refused when they differ.
    assert anon.get("/api/v1/user", headers={"X-API-Key": s.key, "Authorization": "Bearer " + s.key}).ok
    assert_envelope(
        anon.get("/api/v1/user", headers={"X-API-Key": s.key, "Authorization": "Bearer lk_" + "b" * 40}), 401
    )


def test_revoked_key_is_401(server):
    k = server.post("/api/v1/user/api-keys", json={"name": "tmp"}).json()
    s = server.session(key=k["key"])
    assert s.get("/api/v1/user").ok
    server.delete("/api/v1/user/api-keys/" + k["id"])
    assert_envelope(s.get("/api/v1/user"), 401, "authentication_error")


def test_unknown_route_and_method(module_server):
    b = assert_envelope(module_server.get("/api/v1/nothing/here"), 404, "not_found")
    assert "/api/v1/nothing/here" in b["detail"]
    assert_envelope(module_server.session(key=None).get("/nope"), 404, "not_found")
    r = module_server.delete("/api/v1/orgs")
    assert_envelope(r, 405)
    assert "GET" in r.headers["Allow"] and "POST" in r.headers["Allow"]
    # A body on an unknown route is read and answered, not reset.
    assert_envelope(module_server.post("/api/v1/nothing", json={"a": "b" * 10000}), 404)


def test_bad_bodies_are_400(module_server):
    s = module_server
    h = {"Content-Type": "application/json"}
    b = assert_envelope(s.post("/api/v1/orgs", data=b'{"key": ', headers=h), 400, "bad_request")
    assert "not valid JSON" in b["detail"]
    b = assert_envelope(s.post("/api/v1/orgs", data=b'{"key": "\xff\xfe"}', headers=h), 400, "bad_request")
    assert "UTF-8" in b["detail"]
    b = assert_envelope(
        s.post("/api/v1/orgs", data=b'{"key": "x"}', headers={"Content-Type": "text/plain"}), 400, "bad_request"
    )
    assert "Content-Type" in b["detail"]
    assert_envelope(s.post("/api/v1/orgs", data=b'{"key": "x", "key": "y"}', headers=h), 400)  # duplicate keys
    assert s.post("/api/v1/orgs", data=b'{"key": "ct-params"}',
                  headers={"Content-Type": "application/json; charset=utf-8"}).status_code == 201


def test_body_limit_413(lathe_server):
    s = lathe_server(env={"LATHE_MAX_BODY": "1K"})
    h = {"Content-Type": "application/json"}
    big = b'{"key": "big-ok", "name": "padded"}' + b" " * 2000
    b = assert_envelope(s.post("/api/v1/orgs", data=big, headers=h), 413, "payload_too_large")
    assert "1024" in b["detail"]

    def chunks():  # no Content-Length: the limit is found while reading
        for _ in range(4):
            yield b" " * 600

    assert_envelope(
        s.post("/api/v1/orgs", data=chunks(), headers=h), 413, "payload_too_large"
    )
    assert s.post("/api/v1/orgs", json={"key": "small"}).status_code == 201
    # Flag beats environment.
    s2 = lathe_server(env={"LATHE_MAX_BODY": "1K"}, args=["--max-body", "1M"])
    assert s2.post("/api/v1/orgs", data=big, headers=h).status_code == 201


def test_client_version_426(lathe_server):
    s = lathe_server(env={"LATHE_MIN_CLIENT_VERSION": "lathe-cli=0.3.0,dreadnode-sdk=2.0.0"})
    old = s.session(user_agent="lathe-cli/0.2.9")
    b = assert_envelope(old.get("/api/v1/user"), 426, "upgrade_required")
    assert "0.3.0" in b["detail"]
    assert_envelope(s.session(user_agent="dreadnode-sdk/1.9.0 python/3.12").get("/api/v1/user"), 426)
    for ua in ("lathe-cli/0.3.0", "lathe-cli/0.10.0", "dreadnode-sdk/2.0.0-rc1", "curl/8.0", "python-requests/2"):
        assert s.session(user_agent=ua).get("/api/v1/user").status_code == 200, ua
    assert old.get("/healthz").status_code == 200  # probes stay open


def test_rate_limit_429(lathe_server):
    s = lathe_server(env={"LATHE_RATE_LIMIT": "0.5:3"})
    other_key = s.new_user("other@example.com")
    codes = [s.get("/api/v1/user").status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429], codes
    r = s.get("/api/v1/user")
    b = assert_envelope(r, 429, "rate_limited")
    assert int(r.headers["Retry-After"]) >= 1
    assert "retry" in b["detail"]
    # Buckets are per key; probes are not limited.
    assert s.session(key=other_key).get("/api/v1/user").status_code == 200
    assert s.session(key=None).get("/healthz").status_code == 200
    # Off: many requests pass.
    s0 = lathe_server(env={"LATHE_RATE_LIMIT": "0"})
    assert all(s0.get("/api/v1/user").status_code == 200 for _ in range(120))


def test_idempotency_key(module_server):
    s = module_server
    k = "idem-" + uuid.uuid4().hex
    body = {"key": "idem-org-" + uuid.uuid4().hex[:8]}
    r1 = s.post("/api/v1/orgs", json=body, headers={"Idempotency-Key": k})
    assert r1.status_code == 201
    r2 = s.post("/api/v1/orgs", json=body, headers={"Idempotency-Key": k})
    assert r2.status_code == 201 and r2.json() == r1.json()
    assert r2.headers.get("Idempotent-Replayed") == "true"
    b = assert_envelope(
        s.post("/api/v1/orgs", json={"key": "something-else"}, headers={"Idempotency-Key": k}),
        409,
        "idempotency_conflict",
    )
    assert k in b["detail"]
    # Without the header, the same body is a plain duplicate.
    assert_envelope(s.post("/api/v1/orgs", json=body), 409, "conflict")
    # A failed first attempt is not remembered: the retry runs again.
    k2 = "idem-" + uuid.uuid4().hex
    assert_envelope(s.post("/api/v1/orgs", json={"key": "BAD"}, headers={"Idempotency-Key": k2}), 422)
    assert_envelope(s.post("/api/v1/orgs", json={"key": "BAD"}, headers={"Idempotency-Key": k2}), 422)


def test_request_id(module_server):
    s = module_server
    r = s.get("/api/v1/user", headers={"X-Request-Id": "trace-abc.123"})
    assert r.headers["X-Request-Id"] == "trace-abc.123"
    r = s.get("/api/v1/user")
    assert UUID_RE.match(r.headers["X-Request-Id"])
    r = s.get("/api/v1/user", headers={"X-Request-Id": "bad id with spaces"})
    assert UUID_RE.match(r.headers["X-Request-Id"])
    for resp in (s.get("/nope"), s.session(key=None).get("/api/v1/user"), s.delete("/api/v1/user")):
        assert UUID_RE.match(resp.headers["X-Request-Id"])
    rid = "find-me-" + uuid.uuid4().hex[:8]
    s.get("/api/v1/org/default/workspaces", headers={"X-Request-Id": rid})
    time.sleep(0.2)
    lines = [ln for ln in s.log().splitlines() if rid in ln]
    assert lines and "[%s]" % rid in lines[0] and "/api/v1/org/default/workspaces" in lines[0]


def test_metrics(module_server):
    s = module_server
    s.get("/api/v1/org/default/workspaces")
    s.get("/api/v1/org/nope/workspaces")
    r = s.session(key=None).get("/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    t = r.text
    assert "# TYPE lathe_http_requests_total counter" in t
    assert 'lathe_http_requests_total{method="GET",route="/api/v1/org/{org}/workspaces",status="200"}' in t
    assert 'route="/api/v1/org/{org}/workspaces",status="404"' in t
    assert "# TYPE lathe_http_request_duration_seconds histogram" in t
    assert re.search(r'lathe_http_request_duration_seconds_bucket\{[^}]*le="\+Inf"\} \d+', t)
    assert "lathe_http_request_duration_seconds_count{" in t


def test_graceful_shutdown_finishes_in_flight_request(lathe_server):
    s = lathe_server()
    host, port = s.url[len("http://") :].split(":")
    body = b'{"key": "late-org", "name": "made during shutdown"}'
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (
        "POST /api/v1/orgs HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nContent-Type: application/json\r\n"
        "Content-Length: %d\r\n\r\n" % (s.key, len(body))
    ).encode()
    sock.sendall(head + body[:10])
    time.sleep(0.3)
    s.proc.send_signal(signal.SIGTERM)  # arrives while the request is half read
    time.sleep(0.5)
    assert s.proc.poll() is None, "server must wait for the in-flight request"
    # New connections are refused once shutdown began.
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        refused = False
    except OSError:
        refused = True
    assert refused
    sock.sendall(body[10:])
    resp = b""
    while b"\r\n\r\n" not in resp:
        chunk = sock.recv(65536)
        if not chunk:
            break
        resp += chunk
    sock.close()
    assert resp.startswith(b"HTTP/1.1 201"), resp[:200]
    assert s.stop() == 0
    assert "stopped cleanly" in s.log()


def test_many_concurrent_clients(module_server):
    s = module_server
    results = []

    def worker():
        sess = s.session()
        for _ in range(10):
            results.append(sess.get("/api/v1/user").status_code)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(200) == 80


def test_serve_help_lists_every_setting():
    from conftest import LATHE_BIN
    import subprocess

    out = subprocess.run([str(LATHE_BIN), "serve", "--help"], capture_output=True, text=True, timeout=10).stdout
    for flag, env in [
        ("--data-dir", "LATHE_DATA_DIR"), ("--db", "LATHE_DB"), ("--listen", "LATHE_LISTEN"),
        ("--models-dir", "LATHE_MODELS_DIR"), ("--workers", "LATHE_WORKERS"), ("--rate-limit", "LATHE_RATE_LIMIT"),
        ("--max-active-jobs", "LATHE_MAX_ACTIVE_JOBS"), ("--min-client-version", "LATHE_MIN_CLIENT_VERSION"),
        ("--max-body", "LATHE_MAX_BODY"), ("--lease-s", "LATHE_LEASE_S"), ("--worlds-url", "LATHE_WORLDS_URL"),
        ("--max-streams", "LATHE_MAX_STREAMS"), ("--max-streams-per-key", "LATHE_MAX_STREAMS_PER_KEY"),
        ("--keep-alive", "LATHE_KEEP_ALIVE"),
    ]:
        assert flag in out and env in out, flag
    bad = subprocess.run([str(LATHE_BIN), "serve", "--rate-limit", "fast"], capture_output=True, text=True,
                         timeout=10)
    assert bad.returncode == 2 and "RATE:BURST" in bad.stderr
    bad = subprocess.run([str(LATHE_BIN), "serve", "--no-such-flag"], capture_output=True, text=True, timeout=10)
    assert bad.returncode == 2 and "unknown flag" in bad.stderr
    for flag, value in (("--max-streams", "0"), ("--max-streams-per-key", "x"), ("--keep-alive", "2")):
        bad = subprocess.run([str(LATHE_BIN), "serve", flag, value], capture_output=True, text=True, timeout=10)
        assert bad.returncode == 2 and flag in bad.stderr, (flag, bad.stderr)


def test_serve_refuses_bad_store_and_listen(tmp_path):
    from conftest import LATHE_BIN
    import subprocess

    def run(*args):
        return subprocess.run([str(LATHE_BIN), "serve", "--data-dir", str(tmp_path / "d"), *args],
                              capture_output=True, text=True, timeout=30)

    cp = run("--db", "postgres://lathe@127.0.0.1:1/lathe", "--listen", "127.0.0.1:0")  # nothing listens there
    assert cp.returncode == 1 and "cannot connect to 127.0.0.1/lathe" in cp.stderr, cp.stderr
    cp = run("--listen", "127.0.0.1:notaport")
    assert cp.returncode == 1 and "HOST:PORT" in cp.stderr


def test_restart_keeps_data_and_does_not_rebootstrap(lathe_server, tmp_path):
    s = lathe_server(name="persist")
    s.post("/api/v1/orgs", json={"key": "kept"})
    key = s.key
    assert s.stop() == 0
    s2 = lathe_server(name="persist")
    assert "admin API key" not in s2.stdout
    assert s2.key == key
    assert "kept" in [o["key"] for o in s2.get("/api/v1/orgs").json()["items"]]
    assert requests.get(s2.url + "/healthz", timeout=10).ok
