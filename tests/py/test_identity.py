"""Identity and tenancy routes of docs/spec.md §3 against a real `lathe serve`: /user, API keys, orgs, workspaces,
projects, members, with their role rules (404 for non-members, 403 for roles too low or keys too narrow)."""

import json
import re

import pytest

from conftest import assert_envelope

KEY_RE = re.compile(r"^lk_[0-9A-Za-z]{40}$")
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_user_shows_orgs_and_roles(server):
    r = server.get("/api/v1/user")
    assert r.status_code == 200
    u = r.json()
    assert u["email"] == "admin@localhost"
    assert TS_RE.match(u["created_at"])
    assert [(o["key"], o["role"]) for o in u["orgs"]] == [("default", "owner")]
    assert u["api_key"]["masked_key"].startswith(server.key[:7])
    assert server.key not in r.text  # the key itself is never echoed


def test_bootstrap_made_default_tree(server):
    ws = server.get("/api/v1/org/default/workspaces").json()["items"]
    assert [(w["key"], w["is_default"]) for w in ws] == [("main", True)]
    ps = server.get("/api/v1/org/default/ws/main/projects").json()["items"]
    assert [(p["key"], p["is_default"]) for p in ps] == [("default", True)]
    assert (server.data_dir / "admin.key").stat().st_mode & 0o777 == 0o600
    assert "admin API key" in server.stdout and server.key in server.stdout


def test_api_key_lifecycle(server):
    r = server.post("/api/v1/user/api-keys", json={"name": "ci"})
    assert r.status_code == 201, r.text
    k = r.json()
    assert set(k) == {"id", "key", "masked_key", "name", "org", "workspace", "scopes", "created_at"}
    assert KEY_RE.match(k["key"]) and k["org"] is None and k["workspace"] is None
    assert k["masked_key"] == k["key"][:7] + "..." + k["key"][-4:]
    assert len(k["scopes"]) == 5
    other = server.session(key=k["key"])
    assert other.get("/api/v1/user").status_code == 200
    # Listing never shows a key, and last_used_at moved.
    lst = server.get("/api/v1/user/api-keys").json()["items"]
    assert k["key"] not in str(lst)
    mine = [x for x in lst if x["id"] == k["id"]][0]
    assert TS_RE.match(mine["last_used_at"]) and mine["revoked_at"] is None
    # Revoke: 204, then the key fails with 401; revoking again is fine.
    assert server.delete("/api/v1/user/api-keys/" + k["id"]).status_code == 204
    assert_envelope(other.get("/api/v1/user"), 401, "authentication_error")
    assert server.delete("/api/v1/user/api-keys/" + k["id"]).status_code == 204
    lst = server.get("/api/v1/user/api-keys").json()["items"]
    assert [x for x in lst if x["id"] == k["id"]][0]["revoked_at"] is not None
    assert_envelope(server.delete("/api/v1/user/api-keys/00000000-0000-4000-8000-000000000000"), 404, "not_found")
    assert_envelope(server.delete("/api/v1/user/api-keys/not-a-uuid"), 404, "not_found")


def test_api_key_of_another_user_cannot_be_revoked(server):
    bob = server.session(key=server.new_user("bob@example.com"))
    k = server.post("/api/v1/user/api-keys", json={"name": "admin2"}).json()
    assert_envelope(bob.delete("/api/v1/user/api-keys/" + k["id"]), 404, "not_found")
    assert server.session(key=k["key"]).get("/api/v1/user").status_code == 200


def test_api_key_validation(server):
    b = assert_envelope(server.post("/api/v1/user/api-keys", json={}), 422, "validation_error")
    assert b["errors"][0]["loc"] == ["body", "name"] and b["errors"][0]["type"] == "missing"
    b = assert_envelope(
        server.post("/api/v1/user/api-keys", json={"name": "x", "scopes": ["training:read", "admin"], "color": 1}),
        422,
        "validation_error",
    )
    locs = {tuple(e["loc"]): e["type"] for e in b["errors"]}
    assert locs[("body", "scopes", 1)] == "enum"
    assert locs[("body", "color")] == "extra_forbidden"
    b = assert_envelope(server.post("/api/v1/user/api-keys", json={"name": "x", "workspace": "main"}), 422)
    assert b["errors"][0]["loc"] == ["body", "workspace"] and b["errors"][0]["type"] == "value_error"
    b = assert_envelope(server.post("/api/v1/user/api-keys", json={"name": "x", "org": "nope"}), 404, "not_found")
    assert b["errors"][0]["loc"] == ["body", "org"]
    b = assert_envelope(
        server.post("/api/v1/user/api-keys", json={"name": "x", "org": "default", "workspace": "nope"}), 404
    )
    assert b["errors"][0]["loc"] == ["body", "workspace"]


def test_limited_keys(server):
    server.post("/api/v1/orgs", json={"key": "beta"})
    server.post("/api/v1/org/default/workspaces", json={"key": "research"})
    k = server.post(
        "/api/v1/user/api-keys",
        json={"name": "ws", "org": "default", "workspace": "main", "scopes": ["training:read"]},
    ).json()
    assert (k["org"], k["workspace"], k["scopes"]) == ("default", "main", ["training:read"])
    s = server.session(key=k["key"])
    assert s.get("/api/v1/org/default/ws/main/projects").status_code == 200
    # Member of beta, but the key is limited to default: 403; other workspace of its org: 403.
    assert_envelope(s.get("/api/v1/org/beta/workspaces"), 403, "permission_denied")
    assert_envelope(s.get("/api/v1/org/default/ws/research/projects"), 403, "permission_denied")
    # Org-level writes are out for a workspace-limited key even for an owner.
    assert_envelope(s.post("/api/v1/org/default/workspaces", json={"key": "w2"}), 403, "permission_denied")
    assert_envelope(s.post("/api/v1/orgs", json={"key": "gamma"}), 403, "permission_denied")
    # It cannot mint keys at all (identity administration needs an unrestricted key), not even a narrower one.
    assert_envelope(s.post("/api/v1/user/api-keys", json={"name": "wider"}), 403, "permission_denied")
    assert_envelope(
        s.post(
            "/api/v1/user/api-keys",
            json={"name": "more scopes", "org": "default", "workspace": "main", "scopes": ["training:write"]},
        ),
        403,
    )
    assert_envelope(
        s.post(
            "/api/v1/user/api-keys",
            json={"name": "same", "org": "default", "workspace": "main", "scopes": ["training:read"]},
        ),
        403,
        "permission_denied",
    )
    # It lists only its own org and workspace.
    assert [o["key"] for o in s.get("/api/v1/orgs").json()["items"]] == ["default"]
    assert [w["key"] for w in s.get("/api/v1/org/default/workspaces").json()["items"]] == ["main"]


def test_orgs(server):
    r = server.post("/api/v1/orgs", json={"key": "acme", "name": "Acme Inc"})
    assert r.status_code == 201, r.text
    o = r.json()
    assert (o["key"], o["name"], o["role"]) == ("acme", "Acme Inc", "owner")
    assert_envelope(server.post("/api/v1/orgs", json={"key": "acme"}), 409, "conflict")
    b = assert_envelope(server.post("/api/v1/orgs", json={"key": "Bad_Slug"}), 422, "validation_error")
    assert b["errors"][0] == {"loc": ["body", "key"], "msg": b["errors"][0]["msg"], "type": "string_pattern"}
    assert_envelope(server.post("/api/v1/orgs", json={"key": "a" * 64}), 422)
    assert server.post("/api/v1/orgs", json={"key": "a" * 63}).status_code == 201
    assert_envelope(server.post("/api/v1/orgs", json={"name": "no key"}), 422)
    assert_envelope(server.post("/api/v1/orgs", json=["key"]), 422)
    keys = [x["key"] for x in server.get("/api/v1/orgs").json()["items"]]
    assert keys == sorted(["acme", "default", "a" * 63])
    # The new org has workspace main and project default.
    ws = server.get("/api/v1/org/acme/workspaces").json()["items"]
    assert [w["key"] for w in ws] == ["main"]
    assert [p["key"] for p in server.get("/api/v1/org/acme/ws/main/projects").json()["items"]] == ["default"]


def test_workspaces_and_projects(server):
    r = server.post("/api/v1/org/default/workspaces", json={"key": "research", "name": "Research"})
    assert r.status_code == 201, r.text
    assert (r.json()["key"], r.json()["is_default"]) == ("research", False)
    assert_envelope(server.post("/api/v1/org/default/workspaces", json={"key": "research"}), 409, "conflict")
    assert_envelope(server.post("/api/v1/org/default/workspaces", json={"key": "-x"}), 422, "validation_error")
    assert_envelope(server.get("/api/v1/org/nope/workspaces"), 404, "not_found")
    r = server.post("/api/v1/org/default/ws/research/projects", json={"key": "exp-1"})
    assert r.status_code == 201 and r.json()["name"] == "exp-1"
    assert_envelope(server.post("/api/v1/org/default/ws/research/projects", json={"key": "exp-1"}), 409, "conflict")
    assert_envelope(server.get("/api/v1/org/default/ws/nope/projects"), 404, "not_found")
    keys = [p["key"] for p in server.get("/api/v1/org/default/ws/research/projects").json()["items"]]
    assert keys == ["default", "exp-1"]
    # The same project key in another workspace is fine.
    assert server.post("/api/v1/org/default/ws/main/projects", json={"key": "exp-1"}).status_code == 201


def test_roles_reader_contributor_non_member(server):
    reader = server.session(key=server.new_user("r@example.com", role="reader"))
    contrib = server.session(key=server.new_user("c@example.com", role="contributor"))
    outsider = server.session(key=server.new_user("o@example.com", org=None))
    for s in (reader, contrib):
        assert s.get("/api/v1/org/default/workspaces").status_code == 200
        assert s.get("/api/v1/org/default/members").status_code == 200
        assert_envelope(s.post("/api/v1/org/default/workspaces", json={"key": "x"}), 403, "permission_denied")
        assert_envelope(s.post("/api/v1/org/default/ws/main/projects", json={"key": "x"}), 403)
        assert_envelope(s.post("/api/v1/org/default/members", json={"email": "z@z", "role": "reader"}), 403)
    # A non-member never learns that the org exists: same 404 as for an org that does not exist.
    a = assert_envelope(outsider.get("/api/v1/org/default/workspaces"), 404, "not_found")
    b = assert_envelope(outsider.get("/api/v1/org/nosuch/workspaces"), 404, "not_found")
    assert a["detail"].replace("default", "X") == b["detail"].replace("nosuch", "X")
    assert_envelope(outsider.post("/api/v1/org/default/workspaces", json={"key": "x"}), 404)
    assert_envelope(outsider.get("/api/v1/org/default/ws/main/projects"), 404)
    assert outsider.get("/api/v1/user").json()["orgs"] == []
    # But anyone may create an org of their own.
    assert outsider.post("/api/v1/orgs", json={"key": "mine"}).status_code == 201
    assert_envelope(server.get("/api/v1/org/mine/workspaces"), 404)  # admin is not a member there


def test_members(server):
    r = server.post("/api/v1/org/default/members", json={"email": "new@example.com", "role": "reader"})
    assert r.status_code == 201, r.text
    m = r.json()
    assert (m["email"], m["role"]) == ("new@example.com", "reader")
    assert_envelope(
        server.post("/api/v1/org/default/members", json={"email": "new@example.com", "role": "reader"}), 409
    )
    r = server.post("/api/v1/org/default/members", json={"email": "new@example.com", "role": "contributor"})
    assert r.status_code == 200 and r.json()["role"] == "contributor"
    b = assert_envelope(server.post("/api/v1/org/default/members", json={"email": "x@y", "role": "boss"}), 422)
    assert b["errors"][0]["loc"] == ["body", "role"] and b["errors"][0]["type"] == "enum"
    b = assert_envelope(server.post("/api/v1/org/default/members", json={"email": "nope"}), 422)
    assert {tuple(e["loc"]) for e in b["errors"]} == {("body", "email"), ("body", "role")}
    members = server.get("/api/v1/org/default/members").json()["items"]
    assert {(x["email"], x["role"]) for x in members} == {
        ("admin@localhost", "owner"),
        ("new@example.com", "contributor"),
    }
    admin_id = [x["user_id"] for x in members if x["role"] == "owner"][0]
    assert_envelope(server.delete("/api/v1/org/default/members/" + admin_id), 409, "conflict")  # last owner
    assert server.delete("/api/v1/org/default/members/" + m["user_id"]).status_code == 204
    assert_envelope(server.delete("/api/v1/org/default/members/" + m["user_id"]), 404, "not_found")
    assert len(server.get("/api/v1/org/default/members").json()["items"]) == 1


def test_admin_cli_verbs(server):
    out = server.admin("create-org", "--key", "ops", "--name", "Operations")
    assert '"key": "ops"' in out.stdout
    assert server.admin("create-org", "--key", "ops", check=False).returncode != 0
    server.admin("create-user", "--email", "ops@example.com", "--username", "ops")
    server.admin("grant", "--email", "ops@example.com", "--org", "ops", "--role", "owner")
    k = json.loads(server.admin("create-key", "--email", "ops@example.com", "--org", "ops", "--scopes",
                                "training:read,artifacts:read").stdout)
    assert KEY_RE.match(k["key"]) and k["org"] == "ops" and k["scopes"] == ["training:read", "artifacts:read"]
    s = server.session(key=k["key"])
    assert [o["key"] for o in s.get("/api/v1/user").json()["orgs"]] == ["ops"]
    assert s.get("/api/v1/org/ops/workspaces").status_code == 200
    server.admin("revoke-key", "--id", k["id"])
    assert_envelope(s.get("/api/v1/user"), 401)
    cp = server.admin("grant", "--email", "nobody@example.com", "--org", "ops", "--role", "owner", check=False)
    assert cp.returncode == 4 and "nobody@example.com" in cp.stderr
    # init is idempotent and hands out a fresh owner key each time (also into admin.key).
    first = json.loads(server.admin("init").stdout)
    second = json.loads(server.admin("init").stdout)
    assert not first["created_org"] and not second["created_user"]
    assert first["key"] != second["key"]
    assert (server.data_dir / "admin.key").read_text().strip() == second["key"]
    assert server.session(key=first["key"]).get("/api/v1/user").status_code == 200


# ---- issue 15 regressions: identity administration, idempotency, file modes, two keys ----

SCOPES = ["training:read", "training:write", "artifacts:read", "artifacts:write", "worker"]


def _key(server, **body):
    r = server.post("/api/v1/user/api-keys", json={"name": "k", **body})
    assert r.status_code == 201, r.text
    return r.json()


def test_restricted_keys_do_no_identity_admin(server):
    """Defect 1: scoped, org- and workspace-limited keys of an owner get 403 on every identity write and on the
    member list (emails); only an unrestricted key administers identity."""
    server.post("/api/v1/org/default/workspaces", json={"key": "research"})
    victim = _key(server)  # the owner's second unrestricted key: nobody restricted may revoke it
    bob = server.post("/api/v1/org/default/members", json={"email": "bob@example.com", "role": "reader"}).json()
    keys = [_key(server, scopes=[s]) for s in SCOPES] + [
        _key(server, org="default"),
        _key(server, org="default", workspace="main"),
        _key(server, org="default", workspace="main", scopes=SCOPES),
    ]
    for k in keys:
        s = server.session(key=k["key"])
        why = (k["scopes"], k["org"], k["workspace"])
        for r in (
            s.post("/api/v1/orgs", json={"key": "evil"}),
            s.post("/api/v1/org/default/workspaces", json={"key": "evil"}),
            s.post("/api/v1/org/default/ws/main/projects", json={"key": "evil"}),
            s.post("/api/v1/org/default/members", json={"email": "evil@example.com", "role": "owner"}),
            s.post("/api/v1/org/default/members", json={"email": "bob@example.com", "role": "owner"}),
            s.delete("/api/v1/org/default/members/" + bob["user_id"]),
            s.get("/api/v1/org/default/members"),
            s.get("/api/v1/user/api-keys"),
            s.post("/api/v1/user/api-keys", json={"name": "x", "org": "default", "workspace": "main",
                                                  "scopes": ["training:read"]}),
            s.delete("/api/v1/user/api-keys/" + victim["id"]),
        ):
            b = assert_envelope(r, 403, "permission_denied")
            assert "unrestricted" in b["detail"] or "limited" in b["detail"], (why, b)
            assert "bob@example.com" not in r.text
    # Nothing happened: the victim key works, bob is still a reader, no org/workspace/project "evil".
    assert server.session(key=victim["key"]).get("/api/v1/user").status_code == 200
    members = {m["email"]: m["role"] for m in server.get("/api/v1/org/default/members").json()["items"]}
    assert members == {"admin@localhost": "owner", "bob@example.com": "reader"}
    assert "evil" not in [o["key"] for o in server.get("/api/v1/orgs").json()["items"]]
    assert "evil" not in str(server.get("/api/v1/org/default/workspaces").json())
    # A restricted key may still read the tenancy it needs, and revoke itself.
    s = server.session(key=keys[0]["key"])
    assert s.get("/api/v1/user").status_code == 200
    assert s.get("/api/v1/org/default/ws/main/projects").status_code == 200
    assert s.delete("/api/v1/user/api-keys/" + keys[0]["id"]).status_code == 204
    assert_envelope(s.get("/api/v1/user"), 401, "authentication_error")


def test_limited_key_cannot_revoke_keys_outside_its_limit(server):
    """Defect 1: an org- or workspace-limited key revoked any key of its user."""
    server.post("/api/v1/orgs", json={"key": "beta"})
    beta_key = _key(server, org="beta")
    ws_key = _key(server, org="default", workspace="main")
    org_key = _key(server, org="default")
    for limited, target in ((ws_key, beta_key), (org_key, beta_key), (ws_key, org_key), (org_key, ws_key)):
        assert_envelope(server.session(key=limited["key"]).delete("/api/v1/user/api-keys/" + target["id"]), 403)
    for k in (beta_key, ws_key, org_key):
        assert server.session(key=k["key"]).get("/api/v1/user").status_code == 200
    # The org-limited key sees only its org in GET /user too.
    assert [o["key"] for o in server.session(key=org_key["key"]).get("/api/v1/user").json()["orgs"]] == ["default"]


def _db_rows(server, sql):
    from conftest import store_rows

    return store_rows(server, sql)


def test_api_key_create_refuses_idempotency_key(server):
    """Defect 2: POST /user/api-keys with an Idempotency-Key stored the plaintext key and replayed it to any key
    of the user. Now it is a 400 and nothing is stored."""
    hdr = {"Idempotency-Key": "mint-1"}
    b = assert_envelope(server.post("/api/v1/user/api-keys", json={"name": "ci"}, headers=hdr), 400, "bad_request")
    assert "Idempotency-Key" in b["detail"]
    ro = _key(server, scopes=["training:read"])
    r = server.session(key=ro["key"]).post("/api/v1/user/api-keys", json={"name": "ci"}, headers=hdr)
    assert r.status_code == 403 and "lk_" not in r.text
    # Without the header it works, and no idempotency record holds a key.
    assert server.post("/api/v1/user/api-keys", json={"name": "ci"}).status_code == 201
    assert _db_rows(server, "SELECT COUNT(*) FROM idempotency_keys WHERE response LIKE '%lk_%'") == [(0,)]
    assert _db_rows(server, "SELECT COUNT(*) FROM idempotency_keys") == [(0,)]


def test_idempotency_records_are_per_key_and_after_authorization(server):
    """Defect 2: another key of the same user (a training:read key, a workspace-limited key) replayed the 201
    of an owner's create; records are now per API key and looked up after authorization."""
    hdr = {"Idempotency-Key": "ws-create-1"}
    body = {"key": "idem-ws"}
    r1 = server.post("/api/v1/org/default/workspaces", json=body, headers=hdr)
    assert r1.status_code == 201 and "Idempotent-Replayed" not in r1.headers
    r2 = server.post("/api/v1/org/default/workspaces", json=body, headers=hdr)
    assert r2.status_code == 201 and r2.headers.get("Idempotent-Replayed") == "true" and r2.json() == r1.json()
    # Restricted keys of the same user: refused by authorization, never the stored 201.
    for k in (_key(server, scopes=["training:read"]), _key(server, scopes=["artifacts:read"]),
              _key(server, org="default", workspace="main")):
        r = server.session(key=k["key"]).post("/api/v1/org/default/workspaces", json=body, headers=hdr)
        assert_envelope(r, 403, "permission_denied")
        assert "Idempotent-Replayed" not in r.headers
    # Another unrestricted key of the same user runs the request itself: the workspace exists, 409.
    other = server.session(key=_key(server)["key"])
    r = other.post("/api/v1/org/default/workspaces", json=body, headers=hdr)
    assert_envelope(r, 409, "conflict")
    assert "Idempotent-Replayed" not in r.headers
    # A reader (another user) with the same Idempotency-Key: 403, not the owner's answer.
    reader = server.session(key=server.new_user("r@example.com", role="reader"))
    assert_envelope(reader.post("/api/v1/org/default/workspaces", json=body, headers=hdr), 403)
    # Records carry the key id.
    rows = _db_rows(server, "SELECT api_key_id FROM idempotency_keys")
    me = server.get("/api/v1/user").json()["api_key"]["id"]
    assert rows == [(me,)]


@pytest.mark.sqlite_only("the SQLite file's modes")
def test_data_dir_and_store_file_modes(server):
    """Defect 2: lathe.db was 0644; the data dir, the store and its WAL files are now private."""
    d = server.data_dir
    assert server.post("/api/v1/orgs", json={"key": "modes"}).status_code == 201  # make the WAL exist
    assert d.stat().st_mode & 0o777 == 0o700
    assert (d / "tmp").stat().st_mode & 0o777 == 0o700
    for name in ("lathe.db", "lathe.db-wal", "lathe.db-shm", "admin.key"):
        p = d / name
        if p.exists() or name == "lathe.db":
            assert p.stat().st_mode & 0o777 == 0o600, name
    # Whatever else the server writes (blobs of an upload, their directories) is private too.
    import io
    import os
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, text in {"dataset.yaml": "name: m\nversion: 1.0.0\nformat: jsonl\nsplits:\n  train: t.jsonl\n",
                           "t.jsonl": json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n"}.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(text.encode())
            tf.addfile(ti, io.BytesIO(text.encode()))
    r = server.post("/api/v1/org/default/datasets", data=buf.getvalue(), headers={"Content-Type": "application/gzip"})
    assert r.status_code == 201, r.text
    loose = []
    for root, dirs, files in os.walk(d):
        for n in dirs + files:
            m = os.lstat(os.path.join(root, n)).st_mode
            if m & 0o077 and not os.path.islink(os.path.join(root, n)):
                loose.append((os.path.join(root, n), oct(m & 0o777)))
    assert not loose, loose


@pytest.mark.sqlite_only("the SQLite file's modes")
def test_existing_data_dir_is_tightened(lathe_server, tmp_path):
    d = tmp_path / "loose"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    s = lathe_server(name="loose")
    s.stop()
    (d / "lathe.db").chmod(0o644)
    d.chmod(0o755)
    s2 = lathe_server(name="loose")
    assert d.stat().st_mode & 0o777 == 0o700
    assert (d / "lathe.db").stat().st_mode & 0o777 == 0o600
    assert s2.get("/api/v1/user").status_code == 200


def _raw_get(server, headers):
    import http.client
    import urllib.parse

    u = urllib.parse.urlparse(server.url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    c.putrequest("GET", "/api/v1/user")
    for name, value in headers:
        c.putheader(name, value)
    c.endheaders()
    r = c.getresponse()
    body = json.loads(r.read())
    c.close()
    return r.status, body


def test_two_api_keys_are_refused(server):
    """Defect 12: with two X-API-Key headers the first one won."""
    bob = server.new_user("bob@example.com")
    cases = [
        [("X-API-Key", server.key), ("X-API-Key", bob)],
        [("X-API-Key", bob), ("X-API-Key", server.key)],
        [("X-API-Key", server.key), ("X-API-Key", server.key)],
        [("Authorization", "Bearer " + server.key), ("Authorization", "Bearer " + bob)],
        [("X-API-Key", server.key), ("Authorization", "Bearer " + bob)],
    ]
    for headers in cases:
        status, body = _raw_get(server, headers)
        assert status == 401, (headers, body)
        assert body["type"] == "authentication_error" and "more than one API key" in body["detail"], body
    assert _raw_get(server, [("X-API-Key", server.key)])[0] == 200
