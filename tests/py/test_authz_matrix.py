"""The standing authorization test (issue 15): every route of the OpenAPI document x every kind of caller.

The routes come from the server's own /api/v1/openapi.json; the expected rule of each is written below in
RULES (route -> who may call it). A route in the document without a row, or a row for a route the document
no longer has, fails the test: a new route cannot ship without saying who may call it.

Callers (PRINCIPALS): no key, a malformed key, a revoked key, an unrestricted key of a reader, a contributor,
the owner, the owner of another org (not a member here), the owner's keys with each scope alone, and the
owner's keys limited to this org, to another org, to this workspace and to another workspace.

What is measured is the authorization outcome only: "ok" (authorization passed: any answer but 401, 403 and
a 404 for the org or workspace), 401, 403 or 404 (the org does not exist for this caller). Bodies are chosen
so that an authorized call changes nothing: invalid bodies (422 after authorization), ids that do not exist
for DELETE/cancel/retry (404 for the job or key, not for the org). Real ids (a job, artifacts, a member)
come from the module fixture. The whole matrix runs against one server in a few seconds.

The rule (docs/security.md): org routes need membership (else 404), the key's org/workspace limit (else 403;
a workspace-limited key may read org-level things but not change them), the role (readers read,
contributors run jobs and push artifacts, owners administer) and one of the route's scopes. Identity
administration (orgs, workspaces, projects, members, API keys) also needs an unrestricted key: all scopes,
no org or workspace limit."""

import collections
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
import uuid

import pytest

from conftest import LATHE_BIN, _start, _stop_all

READER, CONTRIBUTOR, OWNER = 1, 2, 3
SCOPES = ["training:read", "training:write", "artifacts:read", "artifacts:write", "worker"]
ALL = frozenset(SCOPES)
ORG, WS = "default", "main"

# level: "public" (no key needed), "user" (no org in the path), "org" (an org-level route), "ws" (a route of
# one workspace). role: the lowest org role. scopes: the key needs one of them (None: no scope needed).
# admin: identity administration, needs an unrestricted key.
Rule = collections.namedtuple("Rule", "level role scopes admin")


def R(level, role=0, scopes=None, admin=False):
    return Rule(level, role, frozenset(scopes) if scopes else None, admin)


PUBLIC = R("public")
TR_READ = ("training:read", "worker")
ART = ["datasets", "capabilities", "tasks"]

RULES = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/api/v1/openapi.json"): PUBLIC,
    # identity (docs/spec.md §3, hardened by issue 15)
    ("GET", "/api/v1/user"): R("user"),
    ("GET", "/api/v1/user/api-keys"): R("user", admin=True),
    ("POST", "/api/v1/user/api-keys"): R("user", admin=True),
    ("DELETE", "/api/v1/user/api-keys/{id}"): R("user", admin=True),  # another key; its own key: always
    ("GET", "/api/v1/orgs"): R("user"),
    ("POST", "/api/v1/orgs"): R("user", admin=True),
    ("GET", "/api/v1/org/{org}/workspaces"): R("org", READER),
    ("POST", "/api/v1/org/{org}/workspaces"): R("org", OWNER, admin=True),
    ("GET", "/api/v1/org/{org}/ws/{ws}/projects"): R("ws", READER),
    ("POST", "/api/v1/org/{org}/ws/{ws}/projects"): R("ws", OWNER, admin=True),
    ("GET", "/api/v1/org/{org}/members"): R("org", READER, admin=True),
    ("POST", "/api/v1/org/{org}/members"): R("org", OWNER, admin=True),
    ("DELETE", "/api/v1/org/{org}/members/{user_id}"): R("org", OWNER, admin=True),
    # upstream-compatible reads
    ("GET", "/api/v1/org/{org}"): R("org", READER),
    ("GET", "/api/v1/org/{org}/ws"): R("org", READER),
    ("GET", "/api/v1/org/{org}/ws/{ws}"): R("ws", READER),
    ("GET", "/api/v1/org/{org}/ws/{ws}/projects/{project}"): R("ws", READER),
    # training (docs/spec.md §4)
    ("POST", "/api/v1/org/{org}/ws/{ws}/training/jobs"): R("ws", CONTRIBUTOR, ["training:write"]),
    ("GET", "/api/v1/org/{org}/ws/{ws}/training/jobs"): R("ws", READER, TR_READ),
    ("GET", "/api/v1/org/{org}/ws/{ws}/training/jobs/{job_id}"): R("ws", READER, TR_READ),
    ("DELETE", "/api/v1/org/{org}/ws/{ws}/training/jobs/{job_id}"): R("ws", CONTRIBUTOR, ["training:write"]),
    ("POST", "/api/v1/org/{org}/ws/{ws}/training/jobs/{job_id}/cancel"): R("ws", CONTRIBUTOR, ["training:write"]),
    ("POST", "/api/v1/org/{org}/ws/{ws}/training/jobs/{job_id}/retry"): R("ws", CONTRIBUTOR, ["training:write"]),
    ("GET", "/api/v1/org/{org}/ws/{ws}/training/jobs/{job_id}/logs"): R("ws", READER, TR_READ),
    ("GET", "/api/v1/org/{org}/ws/{ws}/training/jobs/{job_id}/artifacts"): R("ws", READER, TR_READ),
    ("GET", "/api/v1/org/{org}/ws/{ws}/training/jobs/{job_id}/rl-context"): R("ws", READER, TR_READ),
    ("POST", "/api/v1/org/{org}/ws/{ws}/training/jobs/{job_id}/progress"): R("ws", CONTRIBUTOR, ["worker"]),
    ("GET", "/api/v1/org/{org}/ws/{ws}/training/jobs/{job_id}/events"): R("ws", READER, TR_READ),
    ("GET", "/api/v1/org/{org}/ws/{ws}/training/jobs/{job_id}/checkpoints"): R("ws", READER, TR_READ),
    ("GET", "/api/v1/org/{org}/ws/{ws}/training/jobs/{job_id}/checkpoints/{name}/download"): R(
        "ws", READER, TR_READ
    ),
    ("GET", "/api/v1/training/catalog"): R("user", scopes=TR_READ),
}
for _kind in ART:  # artifacts (docs/spec.md §3.1)
    _b = "/api/v1/org/{org}/" + _kind
    RULES[("POST", _b)] = R("org", CONTRIBUTOR, ["artifacts:write"])
    RULES[("GET", _b)] = R("org", READER, ["artifacts:read"])
    RULES[("GET", _b + "/{name}")] = R("org", READER, ["artifacts:read"])
    RULES[("GET", _b + "/{name}/{version}")] = R("org", READER, ["artifacts:read"])
    RULES[("GET", _b + "/{name}/{version}/download")] = R("org", READER, ["artifacts:read"])
    RULES[("DELETE", _b + "/{name}/{version}")] = R("org", CONTRIBUTOR, ["artifacts:write"])

# A caller: its key, its role in ORG (None: not a member), its scopes, its org and workspace limits.
Principal = collections.namedtuple("Principal", "name key role scopes org_limit ws_limit auth_fails")


def unrestricted(p):
    return p.scopes == ALL and not p.org_limit and not p.ws_limit


def expected(rule, p):
    """The outcome RULES says p must get: "ok", 401, 403 or 404."""
    if rule.level == "public":
        return "ok"
    if p.auth_fails:
        return 401
    if rule.level == "user":
        if rule.scopes and not (p.scopes & rule.scopes):
            return 403
        return 403 if rule.admin and not unrestricted(p) else "ok"
    if p.role is None:
        return 404
    if p.org_limit and p.org_limit != ORG:
        return 403
    if p.ws_limit and p.ws_limit != WS and rule.level == "ws":
        return 403
    if p.ws_limit and rule.level == "org" and rule.role > READER:
        return 403
    if p.role < rule.role:
        return 403
    if rule.scopes and not (p.scopes & rule.scopes):
        return 403
    if rule.admin and not unrestricted(p):
        return 403
    return "ok"


def outcome(r):
    """What the server did: "ok" when authorization passed, else 401 / 403 / 404 (org or workspace)."""
    if r.status_code in (401, 403):
        return r.status_code
    if r.status_code == 404:
        detail = r.json().get("detail", "")
        if detail.startswith("organization ") or detail.startswith("workspace "):
            return 404
    return "ok"


def targz(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


CHAT_ROW = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
FIXTURES = {
    "datasets": {"dataset.yaml": "name: chat\nversion: 1.0.0\nformat: jsonl\nsplits:\n  train: train.jsonl\n",
                 "train.jsonl": (CHAT_ROW + "\n") * 3},
    "capabilities": {"capability.yaml": "name: assistant\nversion: 1.0.0\ndescription: t\nentry_agent: helper\n",
                     "agents/helper.md": "---\nrole: helper\n---\nYou answer tersely.\n"},
    "tasks": {"task.yaml": "name: exacttask\nversion: 1.0.0\ninstruction: Say 42.\n"
              "verification:\n  method: exact\n  expected: \"42\"\n"},
}
ART_NAMES = {"datasets": "chat", "capabilities": "assistant", "tasks": "exacttask"}


class World:
    """The server, the ids the paths need, and the callers."""


@pytest.fixture(scope="module")
def world():
    tmp = tempfile.mkdtemp(prefix="lathe-authz-")
    servers = []
    s = _start(tmp, servers, env={"LATHE_WORKERS": "0"})
    cp = subprocess.run([str(LATHE_BIN), "model", "init-tiny", str(s.data_dir / "models" / "tiny")],
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    for kind, files in FIXTURES.items():
        r = s.post("/api/v1/org/%s/%s" % (ORG, kind), data=targz(files), headers={"Content-Type": "application/gzip"})
        assert r.status_code == 201, r.text
    job = s.post("/api/v1/org/%s/ws/%s/training/jobs" % (ORG, WS), json={
        "backend": "tinker", "trainer_type": "sft", "model": "tiny",
        "capability_ref": {"name": "assistant", "version": "1.0.0"},
        "config": {"dataset_ref": {"name": "chat", "version": "1.0.0"}, "steps": 1},
    })
    assert job.status_code == 201, job.text
    assert s.post("/api/v1/org/%s/workspaces" % ORG, json={"key": "research"}).status_code == 201
    assert s.post("/api/v1/orgs", json={"key": "side"}).status_code == 201

    def key(**body):
        r = s.post("/api/v1/user/api-keys", json={"name": "authz", **body})
        assert r.status_code == 201, r.text
        return r.json()["key"]

    revoked = s.post("/api/v1/user/api-keys", json={"name": "revoked"}).json()
    assert s.delete("/api/v1/user/api-keys/" + revoked["id"]).status_code == 204
    other = s.new_user("other-owner@example.com", org=None)
    assert s.session(key=other).post("/api/v1/orgs", json={"key": "elsewhere"}).status_code == 201
    P = Principal
    ps = [
        P("no key", None, None, frozenset(), None, None, True),
        P("bad key", "lk_" + "x" * 40, None, frozenset(), None, None, True),
        P("revoked key", revoked["key"], OWNER, ALL, None, None, True),
        P("reader", s.new_user("reader@example.com", role="reader"), READER, ALL, None, None, False),
        P("contributor", s.new_user("contrib@example.com", role="contributor"), CONTRIBUTOR, ALL, None, None, False),
        P("owner", s.key, OWNER, ALL, None, None, False),
        P("other org's owner", other, None, ALL, None, None, False),
    ]
    ps += [P("scope " + sc, key(scopes=[sc]), OWNER, frozenset([sc]), None, None, False) for sc in SCOPES]
    ps += [
        P("org-limited (this org)", key(org=ORG), OWNER, ALL, ORG, None, False),
        P("org-limited (other org)", key(org="side"), OWNER, ALL, "side", None, False),
        P("ws-limited (this ws)", key(org=ORG, workspace=WS), OWNER, ALL, ORG, WS, False),
        P("ws-limited (other ws)", key(org=ORG, workspace="research"), OWNER, ALL, ORG, "research", False),
    ]
    w = World()
    w.server = s
    w.principals = ps
    w.job_id = job.json()["id"]
    w.member_id = [m["user_id"] for m in s.get("/api/v1/org/%s/members" % ORG).json()["items"]
                   if m["email"] == "reader@example.com"][0]
    w.doc = s.session(key=None).get("/api/v1/openapi.json").json()
    yield w
    _stop_all(servers)
    shutil.rmtree(tmp, ignore_errors=True)


def doc_routes(doc):
    return {(m.upper(), path) for path, item in doc["paths"].items() for m in item
            if m in ("get", "post", "put", "patch", "delete")}


def test_every_route_has_a_rule(world):
    routes = doc_routes(world.doc)
    missing = sorted(routes - set(RULES))
    stale = sorted(set(RULES) - routes)
    assert not missing, "routes in openapi.json without a row in RULES (say who may call them): %s" % missing
    assert not stale, "rows in RULES for routes openapi.json does not have: %s" % stale
    # The callers include a key of each scope alone: a new scope must show up here (and in RULES).
    enum = world.doc["components"]["schemas"]["CreateApiKeyRequest"]["properties"]["scopes"]["items"]["enum"]
    assert enum == SCOPES, "the scopes of openapi.json changed: update SCOPES and RULES (%s)" % enum


def request_for(w, method, pattern):
    """(path, kwargs) for a call that changes nothing when authorized."""
    ghost = str(uuid.uuid4())
    destructive = method == "DELETE" or pattern.endswith("/cancel") or pattern.endswith("/retry")
    kind = next((k for k in ART if "/" + k in pattern), None)
    values = {
        "org": ORG, "ws": WS, "project": "default", "id": ghost, "user_id": ghost,
        "job_id": ghost if destructive else w.job_id,
        "name": ART_NAMES[kind] if kind else "final",
        "version": "9.9.9" if destructive else "1.0.0",
    }
    path = pattern
    for k, v in values.items():
        path = path.replace("{%s}" % k, v)
    kw = {}
    if method in ("POST", "PUT", "PATCH"):
        if kind and pattern.endswith(kind):
            kw = {"data": b"this is not an archive", "headers": {"Content-Type": "application/gzip"}}
        else:
            kw = {"json": {"unexpected_field_for_authz_matrix": 1}}
    if pattern.endswith("/events"):
        kw["stream"] = True
    return path, kw


def test_authorization_matrix(world):
    w = world
    sessions = {p.name: w.server.session(key=p.key) if p.key else w.server.session(key=None) for p in w.principals}
    wrong, cells = [], 0
    for method, pattern in sorted(doc_routes(w.doc)):
        rule = RULES.get((method, pattern))
        if rule is None:
            continue  # test_every_route_has_a_rule names it
        path, kw = request_for(w, method, pattern)
        for p in w.principals:
            r = sessions[p.name].request(method, path, **kw)
            try:
                cells += 1
                assert r.status_code < 500, (method, path, p.name, r.status_code, r.text[:300])
                got, want = outcome(r), expected(rule, p)
                if got != want:
                    wrong.append("%s %s as %s: expected %s, got %d %s" % (
                        method, pattern, p.name, want, r.status_code, r.text[:160] if not kw.get("stream") else ""))
                if r.status_code >= 400:
                    body = r.json()
                    assert body["code"] == r.status_code and isinstance(body["detail"], str), body
            finally:
                r.close()
    print("authorization matrix: %d routes x %d callers = %d cells" % (len(doc_routes(w.doc)), len(w.principals), cells))
    assert not wrong, "%d of %d cells disagree with RULES:\n  %s" % (len(wrong), cells, "\n  ".join(wrong))
    assert cells == len(doc_routes(w.doc)) * len(w.principals)


def test_own_key_revocation_needs_no_rights(world):
    """The one exception to the admin rule: any key may revoke itself (a leaked CI key is killed by itself)."""
    s = world.server
    for body in ({"scopes": ["artifacts:read"]}, {"org": ORG, "workspace": "research"}, {"org": "side"}):
        k = s.post("/api/v1/user/api-keys", json={"name": "self", **body}).json()
        own = s.session(key=k["key"])
        assert own.delete("/api/v1/user/api-keys/" + k["id"]).status_code == 204
        assert own.get("/api/v1/user").status_code == 401


def test_job_create_replay_only_after_authorization(world):
    """Defect 2 on job create: the Idempotency-Key replay ran before the scope check, so an artifacts:read key
    sending the owner's Idempotency-Key and body received the owner's 201. Now every restricted caller gets its
    403, another key of the same user runs the create itself, and only the key that made the record replays."""
    s = world.server
    jobs = "/api/v1/org/%s/ws/%s/training/jobs" % (ORG, WS)
    body = {"backend": "tinker", "trainer_type": "sft", "model": "tiny", "name": "idem-authz",
            "capability_ref": {"name": "assistant", "version": "1.0.0"},
            "config": {"dataset_ref": {"name": "chat", "version": "1.0.0"}, "steps": 1}}
    hdr = {"Idempotency-Key": "authz-job-1"}
    first = s.post(jobs, json=body, headers=hdr)
    assert first.status_code == 201, first.text
    again = s.post(jobs, json=body, headers=hdr)
    assert again.status_code == 201 and again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["id"] == first.json()["id"]
    by_name = {p.name: p for p in world.principals}
    for name in ("scope artifacts:read", "scope training:read", "scope worker", "ws-limited (other ws)",
                 "org-limited (other org)", "reader", "other org's owner", "revoked key"):
        r = s.session(key=by_name[name].key).post(jobs, json=body, headers=hdr)
        assert r.status_code in (401, 403, 404), (name, r.status_code, r.text)
        assert first.json()["id"] not in r.text and "Idempotent-Replayed" not in r.headers, name
    # Keys allowed to create jobs, other than the one that made the record, create their own job.
    for name in ("scope training:write", "ws-limited (this ws)", "contributor"):
        r = s.session(key=by_name[name].key).post(jobs, json=body, headers=hdr)
        assert r.status_code == 201, (name, r.text)
        assert "Idempotent-Replayed" not in r.headers and r.json()["id"] != first.json()["id"], name
