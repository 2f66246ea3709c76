"""The OpenAPI 3.1 document (src/api/openapi.json, embedded in the binary and served at GET /api/v1/openapi.json)
is kept true here:

1. it is what the server serves, what its generator (src/api/openapi.py) writes, and a valid OpenAPI 3.1 document (openapi-spec-validator when installed, else
   structural checks: versions, unique operation ids, declared path parameters, resolvable $refs, every schema a
   valid JSON Schema 2020-12, error envelope on every error response, both security schemes);
2. it documents every route of docs/spec.md §2-§4;
3. every documented operation (path x method) is called against a real server with real data, and the status
   must be one the document lists for it and the body must match the documented schema;
4. a bounded schemathesis run over the document finds no 5xx and no response that breaks the document.
"""

import gzip
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from conftest import LATHE_BIN, ROOT, _start, _stop_all

DOC = json.loads((ROOT / "src" / "api" / "openapi.json").read_text())
METHODS = ("get", "post", "put", "patch", "delete")
KINDS = (("datasets", "dataset"), ("capabilities", "capability"), ("tasks", "task"))

# docs/spec.md §2-§4, route by route (method, path). The compat routes are extra and also documented.
SPEC_ROUTES = [
    ("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics"), ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/user"), ("get", "/api/v1/user/api-keys"), ("post", "/api/v1/user/api-keys"),
    ("delete", "/api/v1/user/api-keys/{id}"), ("get", "/api/v1/orgs"), ("post", "/api/v1/orgs"),
    ("get", "/api/v1/org/{org}/workspaces"), ("post", "/api/v1/org/{org}/workspaces"),
    ("get", "/api/v1/org/{org}/ws/{ws}/projects"), ("post", "/api/v1/org/{org}/ws/{ws}/projects"),
    ("get", "/api/v1/org/{org}/members"), ("post", "/api/v1/org/{org}/members"),
    ("delete", "/api/v1/org/{org}/members/{user_id}"),
    ("get", "/api/v1/training/catalog"),
]
for _kind, _ in KINDS:
    _b = "/api/v1/org/{org}/" + _kind
    SPEC_ROUTES += [("post", _b), ("get", _b), ("get", _b + "/{name}"), ("get", _b + "/{name}/{version}"),
                    ("delete", _b + "/{name}/{version}"), ("get", _b + "/{name}/{version}/download")]
_J = "/api/v1/org/{org}/ws/{ws}/training/jobs"
SPEC_ROUTES += [("post", _J), ("get", _J), ("get", _J + "/{job_id}"), ("post", _J + "/{job_id}/cancel"),
                ("post", _J + "/{job_id}/retry"), ("get", _J + "/{job_id}/logs"), ("get", _J + "/{job_id}/artifacts"),
                ("get", _J + "/{job_id}/rl-context"), ("post", _J + "/{job_id}/progress"),
                ("get", _J + "/{job_id}/events"), ("get", _J + "/{job_id}/checkpoints"),
                ("get", _J + "/{job_id}/checkpoints/{name}/download"), ("delete", _J + "/{job_id}")]


def operations():
    for path, item in DOC["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def resolve(ref):
    assert ref.startswith("#/"), ref
    node = DOC
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def walk(node, fn, where="#"):
    fn(node, where)
    if isinstance(node, dict):
        for k, v in node.items():
            walk(v, fn, where + "/" + k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            walk(v, fn, "%s/%d" % (where, i))


# ---------------------------------------------------------------------------------------------------------------
# 1-2: the document itself
# ---------------------------------------------------------------------------------------------------------------


def test_server_serves_the_embedded_document(server):
    r = server.session(key=None).get("/api/v1/openapi.json")  # public: no key
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    assert r.json() == DOC


def test_document_is_valid_openapi_31():
    try:
        from openapi_spec_validator import validate  # optional
    except ImportError:
        validate = None
    if validate:
        validate(DOC)
    assert re.match(r"^3\.1\.\d+$", DOC["openapi"])
    assert DOC["info"]["title"] and DOC["info"]["version"]
    schemes = DOC["components"]["securitySchemes"]
    assert {"type": "apiKey", "in": "header", "name": "X-API-Key"}.items() <= schemes["ApiKeyHeader"].items()
    assert schemes["BearerAuth"]["type"] == "http" and schemes["BearerAuth"]["scheme"] == "bearer"
    assert DOC["security"] == [{"ApiKeyHeader": []}, {"BearerAuth": []}]

    def check_ref(node, where):
        if isinstance(node, dict) and isinstance(node.get("$ref"), str):
            resolve(node["$ref"])  # KeyError = dangling

    walk(DOC, check_ref)
    for name, schema in DOC["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
    ids = set()
    for path, method, op in operations():
        assert op["operationId"] not in ids, op["operationId"]
        ids.add(op["operationId"])
        assert op.get("summary") and op.get("responses"), (method, path)
        declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"{(\w+)}", path)), (method, path, declared)
        for p in op.get("parameters", []):
            Draft202012Validator.check_schema(p["schema"])
        public = op.get("security") == []
        for status, resp in op["responses"].items():
            resp = resolve(resp["$ref"]) if "$ref" in resp else resp
            assert re.match(r"^[1-5]\d\d$", status), status
            for media in resp.get("content", {}).values():
                Draft202012Validator.check_schema(media["schema"])
            if status >= "400":
                assert resp["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
        if not public:
            assert "401" in op["responses"] and "403" in op["responses"], (method, path)
        assert any(s.startswith("2") for s in op["responses"]), (method, path)
    # the create body: a oneOf of the three kinds with every field typed, defaults and ranges included
    one = [resolve(x["$ref"]) for x in DOC["components"]["schemas"]["CreateTrainingJobRequest"]["oneOf"]]
    assert [(o["properties"]["backend"]["const"], o["properties"]["trainer_type"]["const"]) for o in one] == [
        ("tinker", "sft"), ("tinker", "rl"), ("ray", "rl")]
    sft = DOC["components"]["schemas"]["TinkerSFTJobConfig"]["properties"]
    assert sft["lora_rank"]["maximum"] == 512 and sft["batch_size"]["maximum"] == 4096
    for cfg in ("TinkerSFTJobConfig", "TinkerRLJobConfig", "RayGRPOJobConfig"):
        s = DOC["components"]["schemas"][cfg]
        assert s["additionalProperties"] is False
        for name, prop in s["properties"].items():
            assert "type" in prop or "$ref" in prop or "anyOf" in prop, (cfg, name)
    # schemathesis can load it
    import schemathesis

    schema = schemathesis.openapi.from_dict(DOC)
    assert sum(1 for _ in schema.get_all_operations()) == sum(1 for _ in operations())


def test_document_matches_its_generator():
    cp = subprocess.run([sys.executable, str(ROOT / "src" / "api" / "openapi.py"), "--check"], capture_output=True,
                        text=True, timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr


def test_every_spec_route_is_documented():
    documented = {(m, p) for p, m, _ in operations()}
    missing = [r for r in SPEC_ROUTES if r not in documented]
    assert not missing, missing


# ---------------------------------------------------------------------------------------------------------------
# 3: every operation against a real server
# ---------------------------------------------------------------------------------------------------------------


def targz(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


ARCHIVES = {
    "dataset": {"dataset.yaml": "name: {n}\nversion: {v}\nformat: jsonl\n",
                "train.jsonl": '{{"prompt": "2+2?", "answer": "4"}}\n'},
    "capability": {"capability.yaml": "name: {n}\nversion: {v}\ndescription: an assistant\n",
                   "agents/main.md": "You are helpful.\n"},
    "task": {"task.yaml": 'name: {n}\nversion: {v}\ninstruction: "Add."\nverification:\n  method: exact\n  expected: "4"\n'},
}


def archive(kind, name, version):
    return targz({k: v.format(n=name, v=version) for k, v in ARCHIVES[kind].items()})


@pytest.fixture(scope="module")
def live():
    tmp = tempfile.mkdtemp(prefix="lathe-openapi-")
    servers = []
    s = _start(tmp, servers, args=["--workers", "0"])
    cp = subprocess.run([str(LATHE_BIN), "model", "init-tiny", str(s.data_dir / "models" / "tiny")],
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    for kind, single in KINDS:
        for name in ("base", "doomed"):
            r = s.post("/api/v1/org/default/" + kind, data=archive(single, name, "1.0.0"),
                       headers={"Content-Type": "application/gzip"})
            assert r.status_code == 201, r.text
    yield s
    _stop_all(servers)
    shutil.rmtree(tmp, ignore_errors=True)


def sft_body(**cfg):
    return {"backend": "tinker", "trainer_type": "sft", "model": "tiny",
            "capability_ref": {"name": "base", "version": "1.0.0"},
            "config": {"dataset_ref": {"name": "base", "version": "1.0.0"}, "steps": 2, **cfg}}


def validator_for(schema):
    return Draft202012Validator({**schema, "components": DOC["components"]}, format_checker=FormatChecker())


def check_response(method, path, op, r, expect_2xx=True):
    status = str(r.status_code)
    assert status in op["responses"], "%s %s -> %s not documented (%s): %s" % (
        method.upper(), path, status, sorted(op["responses"]), r.text[:500])
    if expect_2xx:
        assert status.startswith("2"), "%s %s -> %s: %s" % (method.upper(), path, status, r.text[:500])
    resp = op["responses"][status]
    resp = resolve(resp["$ref"]) if "$ref" in resp else resp
    content = resp.get("content")
    if not content:
        assert not r.content, (method, path, r.content[:200])
        return
    ctype = r.headers.get("Content-Type", "").split(";")[0].strip()
    assert ctype in content, "%s %s -> %s: content type %r not in %s" % (method.upper(), path, status, ctype,
                                                                        sorted(content))
    if ctype == "application/json":
        errors = sorted(validator_for(content[ctype]["schema"]).iter_errors(r.json()), key=str)
        assert not errors, "%s %s -> %s: body breaks the document: %s\n%s" % (
            method.upper(), path, status, "; ".join("%s at %s" % (e.message, list(e.absolute_path)) for e in errors[:5]),
            r.text[:800])


def test_every_operation_against_the_server(live):
    s = live
    jobs = "/api/v1/org/default/ws/main/training/jobs"
    job = s.post(jobs, json=sft_body()).json()
    rl = s.post(jobs, json={"backend": "tinker", "trainer_type": "rl", "model": "tiny",
                            "capability_ref": {"name": "base", "version": "1.0.0"},
                            "config": {"algorithm": "importance_sampling",
                                       "prompt_dataset_ref": {"name": "base", "version": "1.0.0"}}}).json()
    progress_job = s.post(jobs, json=sft_body()).json()
    doomed_job = s.post(jobs, json=sft_body()).json()
    assert s.post(jobs + "/%s/cancel" % doomed_job["id"]).status_code == 200
    key = s.post("/api/v1/user/api-keys", json={"name": "doomed"}).json()
    s.admin("create-user", "--email", "member-oa@example.com")

    values = {"org": "default", "ws": "main", "project": "default", "job_id": job["id"], "id": key["id"],
              "name": "base", "version": "1.0.0"}
    bodies = {
        "create_training_job": sft_body(),
        "create_api_key": {"name": "openapi-test", "scopes": ["training:read"]},
        "create_org": {"key": "oa-org", "name": "OA"},
        "create_workspace": {"key": "oa-ws", "name": "OA"},
        "create_project": {"key": "oa-proj", "name": "OA"},
        "add_member": {"email": "member-oa@example.com", "role": "reader"},
        "post_training_job_progress": {"event_type": "training_start", "message": "start"},
    }
    per_op = {  # operations that act on something of their own, or answer a documented non-2xx here
        "get_training_job_rl_context": ({"job_id": rl["id"]}, True),
        "post_training_job_progress": ({"job_id": progress_job["id"]}, True),
        "delete_training_job": ({"job_id": doomed_job["id"]}, True),
        "download_training_job_checkpoint": ({"name": "final"}, False),  # no checkpoint without a worker: 404
        "revoke_api_key": ({}, True),
    }
    order = {"get": 0, "post": 1, "delete": 2}
    ops = sorted(operations(), key=lambda x: (order[x[1]], x[0]))
    called = 0
    for path, method, op in ops:
        oid = op["operationId"]
        vals = dict(values)
        override, expect_2xx = per_op.get(oid, ({}, True))
        vals.update(override)
        if oid.startswith(("delete_dataset", "delete_capability", "delete_task")):
            vals["name"] = "doomed"
        if oid == "remove_member":
            members = s.get("/api/v1/org/default/members").json()["items"]
            vals["user_id"] = next(m.get("user_id") or m.get("id") for m in members if "member-oa@" in json.dumps(m))
        url = re.sub(r"{(\w+)}", lambda m: vals[m.group(1)], path)
        kw = {}
        if oid.startswith("push_"):
            single = oid[len("push_"):]
            kw = {"data": archive(single, "pushed", "2.0.0"), "headers": {"Content-Type": "application/gzip"}}
        elif "requestBody" in op:
            kw = {"json": bodies[oid]}
        if oid == "stream_training_job_events":
            url = url.replace(job["id"], doomed_job["id"])  # an ended job: snapshot, end, close
            kw["stream"] = True
        sess = s.session(key=None) if op.get("security") == [] else s.session()
        r = sess.request(method.upper(), url, **kw)
        if oid == "stream_training_job_events":
            text = b"".join(r.iter_content(4096)).decode()
            assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            assert text.startswith("event: snapshot") and "event: end" in text, text[:300]
        else:
            check_response(method, path, op, r, expect_2xx)
        called += 1
    assert called == len(list(operations()))
    # and an error of each common kind, against its documented envelope
    anon = s.session(key=None)
    ended = s.post(jobs, json=sft_body()).json()["id"]
    assert s.post(jobs + "/%s/cancel" % ended).status_code == 200
    for method, url, want in (("get", jobs, "401"), ("get", "/api/v1/org/nope/ws/main/training/jobs", "404"),
                              ("get", jobs + "?page_size=1000", "422"),
                              ("post", jobs, "422"), ("post", jobs + "/%s/cancel" % ended, "409")):
        sess = anon if want == "401" else s.session()
        r = sess.request(method.upper(), url, json={} if method == "post" else None)
        assert str(r.status_code) == want, (url, r.status_code, r.text)
        op = DOC["paths"]["/api/v1/org/{org}/ws/{ws}/training/jobs" + ("/{job_id}/cancel" if "cancel" in url else "")][method]
        check_response(method, url, op, r, expect_2xx=False)


# ---------------------------------------------------------------------------------------------------------------
# 4: schemathesis
# ---------------------------------------------------------------------------------------------------------------

ST_SECONDS = int(os.environ.get("LATHE_SCHEMATHESIS_SECONDS", "45"))


def test_schemathesis_finds_no_5xx_and_no_schema_violation(live, tmp_path):
    st = pathlib.Path(sys.executable).parent / "st"
    if not st.exists():
        pytest.skip("schemathesis CLI not installed in the test virtualenv")
    key = live.post("/api/v1/user/api-keys", json={"name": "schemathesis"}).json()["key"]
    cfg = tmp_path / "schemathesis.toml"
    # org, workspace and artifact pinned to real ones so generated requests reach the handlers instead of 404ing
    cfg.write_text('[parameters]\n"path.org" = "default"\n"path.ws" = "main"\n"path.name" = "base"\n'
                   '"path.version" = "1.0.0"\n')
    report = tmp_path / "report.json"
    cmd = [str(st), "--config-file", str(cfg), "run", str(ROOT / "src" / "api" / "openapi.json"), "--url", live.url,
           "-H", "X-API-Key: " + key, "--generation-with-security-parameters", "false",
           "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
           "--phases", "examples,fuzzing", "-n", "20", "--max-time", str(ST_SECONDS), "-w", "2",
           "--generation-database", "none", "--no-color", "--seed", "1", "--suppress-health-check", "all",
           # revoking keys / pushing archives are covered above; revoking would cut the run's own key
           "--exclude-operation-id", "revoke_api_key", "--exclude-operation-id-regex", "^push_",
           "--report", "json", "--report-json-path", str(report)]
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=ST_SECONDS + 240)
    out = cp.stdout + cp.stderr
    assert "FAILURES" not in out, out[-6000:]
    assert cp.returncode == 0, out[-6000:]
    assert live.proc.poll() is None, "the server died under schemathesis"
