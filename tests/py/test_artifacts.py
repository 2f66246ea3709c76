"""The artifact registry (docs/spec.md §3.1) against a real `lathe serve`: pushing datasets, capabilities and tasks as
archives built here with `tarfile`, the checks made on push (archive safety, manifests, rows with file and
line), versions and "latest", download == upload, delete with its in-use protection, and who may do what."""

import hashlib
import io
import json
import pathlib
import subprocess
import tarfile

import pytest

from conftest import LATHE_BIN, ROOT, assert_envelope

EXAMPLES = ROOT / "examples"
CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


# ---- building archives ----


def tar_bytes(files, gz=True, prefix="", extra=None):
    """files: {path: str|bytes}; extra(tar) may add hostile members. Returns the archive bytes."""
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w:gz" if gz else "w", format=tarfile.PAX_FORMAT) as t:
        for name, data in files.items():
            data = data.encode() if isinstance(data, str) else data
            ti = tarfile.TarInfo(prefix + name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
        if extra:
            extra(t)
    return bio.getvalue()


def tar_dir(path, gz=True):
    """A directory as an archive with one top-level directory (what `tar czf x.tgz DIR` makes)."""
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w:gz" if gz else "w") as t:
        t.add(str(path), arcname=pathlib.Path(path).name)
    return bio.getvalue()


def push(s, kind, body, org="default", ctype="application/gzip", sess=None):
    return (sess or s).post("/api/v1/org/%s/%s" % (org, kind), data=body, headers={"Content-Type": ctype})


def jsonl(*rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


def dataset(name="ds", version="1.0.0", rows=3, **more):
    files = {"dataset.yaml": "name: %s\nversion: %s\n" % (name, version), "train.jsonl": jsonl(*[CHAT] * rows)}
    files.update(more)
    return files


def loc_of(r):
    body = assert_envelope(r, 422, "validation_error")
    assert len(body["errors"]) == 1, body
    return body["errors"][0]["loc"], body["detail"]


def blob_files(s):
    root = s.data_dir / "blobs" / "sha256"
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


# ---- pushing the examples ----


def test_push_examples_and_read_back(module_server):
    s = module_server
    pushed = {}
    for kind, d in [
        ("datasets", "wrap-words"),
        ("datasets", "add-small"),
        ("capabilities", "terse-assistant"),
        ("tasks", "find-flag"),
        ("tasks", "add-check"),
    ]:
        body = tar_dir(EXAMPLES / kind / d)
        r = push(s, kind, body)
        assert r.status_code == 201, r.text
        rec = r.json()
        assert rec["digest"] == "sha256:" + hashlib.sha256(body).hexdigest()
        assert rec["size_bytes"] == len(body)
        assert rec["name"] == d and rec["version"] == "0.1.0"
        assert r.headers["Location"] == "/api/v1/org/default/%s/%s/0.1.0" % (kind, d)
        pushed[d] = rec
    ww = pushed["wrap-words"]
    assert ww["splits"] == {"train": 40, "validation": 8} and ww["row_count"] == 48
    assert ww["manifest"]["splits"] == {"train": ["data/train.jsonl"], "validation": ["data/validation.jsonl"]}
    assert pushed["add-small"]["splits"] == {"train": 32}
    assert pushed["add-small"]["manifest"]["format"] == "jsonl"
    cap = pushed["terse-assistant"]
    assert cap["prompt"] == "You are a terse assistant. Answer with the result only, no explanations."
    assert cap["splits"] == {}
    assert pushed["find-flag"]["manifest"]["verification"]["method"] == "flag"
    # one version, read back
    r = s.get("/api/v1/org/default/capabilities/terse-assistant/0.1.0")
    assert r.status_code == 200 and r.json() == cap


def test_download_equals_upload(module_server):
    s = module_server
    for gz, ctype in ((True, "application/gzip"), (False, "application/x-tar")):
        body = tar_bytes(dataset(name="dl-%d" % gz), gz=gz)
        rec = push(s, "datasets", body, ctype=ctype).json()
        r = s.get("/api/v1/org/default/datasets/dl-%d/1.0.0/download" % gz)
        assert r.status_code == 200
        assert r.content == body
        assert "sha256:" + hashlib.sha256(r.content).hexdigest() == rec["digest"]
        assert r.headers["Content-Type"] == ctype
        assert r.headers["ETag"] == '"%s"' % rec["digest"]
        assert "dl-%d-1.0.0.tar" % gz in r.headers["Content-Disposition"]


# ---- versions ----


def test_versions_latest_semver_and_duplicates(module_server):
    s = module_server
    for v in ("0.9.0", "0.10.0", "0.2.0"):
        r = push(s, "datasets", tar_bytes(dataset(name="multi", version=v)))
        assert r.status_code == 201, r.text
    r = push(s, "datasets", tar_bytes(dataset(name="multi", version="0.9.0", rows=5)))
    body = assert_envelope(r, 409, "conflict")
    assert "already exists" in body["detail"]
    a = s.get("/api/v1/org/default/datasets/multi").json()
    assert a["latest_version"] == "0.10.0"
    assert [v["version"] for v in a["versions"]] == ["0.10.0", "0.9.0", "0.2.0"]
    assert a["versions"][1]["splits"] == {"train": 3}  # the first push of 0.9.0 is untouched
    lst = s.get("/api/v1/org/default/datasets?page_size=100").json()
    item = [i for i in lst["items"] if i["name"] == "multi"][0]
    assert item["latest_version"] == "0.10.0" and item["latest"]["version"] == "0.10.0"
    assert item["version_count"] == 3
    assert_envelope(s.get("/api/v1/org/default/datasets/multi/1.0.0"), 404, "not_found")
    assert_envelope(s.get("/api/v1/org/default/datasets/nope"), 404, "not_found")


def test_list_paging(server):
    for n in ("c", "a", "b"):
        assert push(server, "tasks", tar_bytes({"task.yaml": "name: %s\nversion: 1.0.0\ninstruction: x\n" % n})).status_code == 201
    p1 = server.get("/api/v1/org/default/tasks?page=1&page_size=2").json()
    assert (p1["total"], p1["page"], p1["page_size"]) == (3, 1, 2)
    assert [i["name"] for i in p1["items"]] == ["a", "b"]
    p2 = server.get("/api/v1/org/default/tasks?page=2&page_size=2").json()
    assert [i["name"] for i in p2["items"]] == ["c"]
    assert server.get("/api/v1/org/default/datasets").json() == {"items": [], "total": 0, "page": 1, "page_size": 20}
    body = assert_envelope(server.get("/api/v1/org/default/tasks?page_size=101"), 422, "validation_error")
    assert body["errors"][0]["loc"] == ["query", "page_size"]
    assert_envelope(server.get("/api/v1/org/default/tasks?page=0"), 422, "validation_error")


# ---- what a push checks ----


def test_bad_rows_name_file_and_line(module_server):
    s = module_server
    cases = [
        ({"dataset.yaml": "name: bad1\n", "data/a.jsonl": jsonl(CHAT, CHAT) + "\n" + jsonl({"text": "x"})},
         ["archive", "data/a.jsonl", 4], "split train, file data/a.jsonl line 4: the row fits no accepted shape"),
        ({"dataset.yaml": "name: bad2\n", "a.jsonl": jsonl(CHAT) + "{not json\n"},
         ["archive", "a.jsonl", 2], "split train, file a.jsonl line 2: invalid JSON"),
        ({"dataset.yaml": "name: bad3\nsplits:\n  test: t.json\n", "t.json": '[\n  {"prompt": "a"},\n  {"x": 1}\n]'},
         ["archive", "t.json", 3], "split test, file t.json line 3: the row fits no accepted shape"),
        ({"dataset.yaml": "name: bad4\n", "q.csv": 'question,answer\n"multi\nline",ok\nonly-one-field\n'},
         ["archive", "q.csv", 4], "split train, file q.csv line 4: the record has 1 fields but the header has 2"),
        ({"dataset.yaml": "name: bad5\n", "a.jsonl": jsonl({"messages": [{"role": "robot", "content": "x"}]})},
         ["archive", "a.jsonl", 1], "messages[0].role must be system, user, assistant or tool"),
    ]
    for files, loc, msg in cases:
        r = push(s, "datasets", tar_bytes(files))
        got_loc, detail = loc_of(r)
        assert got_loc == loc, (got_loc, detail)
        assert msg in detail, detail
    assert all(i["name"] not in ("bad1", "bad2", "bad3", "bad4", "bad5")
               for i in s.get("/api/v1/org/default/datasets?page_size=100").json()["items"])


def test_good_rows_of_every_shape_and_format(module_server):
    s = module_server
    rows = [
        CHAT,
        {"messages": [{"role": "user", "content": "w?"},
                      {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                            "function": {"name": "get", "arguments": "{}"}}]},
                      {"role": "tool", "tool_call_id": "c", "content": "sun"}]},
        {"question": "2+2", "answer": 4, "reward": 1.0, "context": {"a": 1}},
        {"steps": [{"step_id": 1, "source": "user", "message": "go"},
                   {"step_id": 2, "source": "agent", "message": "done", "reasoning_content": "easy"}],
         "success": True},
    ]
    files = {
        "dataset.yaml": "name: shapes\nversion: 2.0.0\nrow_count: 7\nsplits:\n  train: [a.jsonl, b.csv]\n  test: c.json\n",
        "a.jsonl": jsonl(*rows),
        "b.csv": "prompt,expected_output\nhello,world\n\"x, y\",z\n",
        "c.json": json.dumps([CHAT]),
    }
    r = push(s, "datasets", tar_bytes(files))
    assert r.status_code == 201, r.text
    assert r.json()["splits"] == {"train": 6, "test": 1}
    files["dataset.yaml"] = files["dataset.yaml"].replace("row_count: 7", "row_count: 9").replace("2.0.0", "2.0.1")
    loc, detail = loc_of(push(s, "datasets", tar_bytes(files)))
    assert loc == ["archive", "dataset.yaml", 3]
    assert "row_count is 9 but the data files hold 7 rows" in detail


def test_manifest_errors_name_the_line(module_server):
    s = module_server
    cases = [
        ("datasets", {"dataset.yaml": "name: m1\nversion: 1.0\n", "a.jsonl": jsonl(CHAT)},
         ["archive", "dataset.yaml", 2], "version must be text, not a number (put it in quotes)"),
        ("datasets", {"dataset.yaml": "name: m2\nformat: parquet\n", "a.jsonl": jsonl(CHAT)},
         ["archive", "dataset.yaml", 2], "format must be one of jsonl, json, csv"),
        ("datasets", {"dataset.yaml": "name: m3\nsplits:\n  train: missing.jsonl\n", "a.jsonl": jsonl(CHAT)},
         ["archive", "dataset.yaml", 3], "'missing.jsonl' is not a file in the archive"),
        ("datasets", {"dataset.yaml": "summary: no name\n", "a.jsonl": jsonl(CHAT)},
         ["archive", "dataset.yaml"], "name is required"),
        ("datasets", {"a.jsonl": jsonl(CHAT)}, ["archive", "dataset.yaml"], "not found"),
        ("capabilities", {"capability.yaml": "name: Bad\nversion: 1.0.0\ndescription: d\n"},
         ["archive", "capability.yaml", 1], "name 'Bad' is not allowed"),
        ("capabilities", {"capability.yaml": "name: c\nversion: 1.0.0\ndescription: ''\n"},
         ["archive", "capability.yaml", 3], "description must not be empty"),
        ("capabilities", {"capability.yaml": "name: c\nversion: 1.0.0\ndescription: d\nentry_agent: x\n"},
         ["archive", "capability.yaml", 4], "neither agents/x.md nor agents/x.txt"),
        ("tasks", {"task.yaml": "name: t\nversion: 1.0.0-beta\ninstruction: x\n"},
         ["archive", "task.yaml", 2], "is not a semantic version"),
        ("tasks", {"task.yaml": "name: t\nversion: 1.0.0\ninstruction: x\nverification:\n  method: regex\n  pattern: '('\n"},
         ["archive", "task.yaml", 6], "not a valid PCRE2 regex"),
        ("tasks", {"task.yaml": "name: t\nversion: 1.0.0\ninstruction: x\nverification:\n  method: flag\n  hash: md5:x\n"},
         ["archive", "task.yaml", 6], "must be \"sha256:\" followed by 64 hex digits"),
        ("tasks", {"task.yaml": "name: t\nname: u\nversion: 1.0.0\ninstruction: x\n"},
         ["archive", "task.yaml", 2], "duplicate key 'name'"),
        ("tasks", {"task.yaml": "a: &x [1]\nb: *x\n"}, ["archive", "task.yaml", 2], "aliases"),
        ("tasks", {"task.yaml": "name: [t\nversion: 1.0.0\n"}, ["archive", "task.yaml", 2], "invalid YAML"),
    ]
    for kind, files, loc, msg in cases:
        got, detail = loc_of(push(s, kind, tar_bytes(files)))
        assert got == loc, (files, got, detail)
        assert msg in detail, detail


def test_manifest_location_in_archive(server):
    # inside a single top-level directory: accepted, prefix stripped
    r = push(server, "datasets", tar_bytes(dataset(name="nested"), prefix="mydir/"))
    assert r.status_code == 201, r.text
    assert r.json()["manifest"]["splits"] == {"train": ["train.jsonl"]}
    # two top-level directories: the manifest is not found
    def second_dir(t):
        ti = tarfile.TarInfo("other/x.jsonl")
        ti.size = 2
        t.addfile(ti, io.BytesIO(b"{}"))
    loc, detail = loc_of(push(server, "datasets", tar_bytes(dataset(name="two"), prefix="mydir/", extra=second_dir)))
    assert loc == ["archive", "dataset.yaml"] and "single top-level directory" in detail


def hostile(kind_of):
    def add(t):
        ti = tarfile.TarInfo(kind_of[0])
        if kind_of[1] == "sym":
            ti.type, ti.linkname = tarfile.SYMTYPE, kind_of[2]
        elif kind_of[1] == "hard":
            ti.type, ti.linkname = tarfile.LNKTYPE, kind_of[2]
        elif kind_of[1] == "chr":
            ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
        elif kind_of[1] == "fifo":
            ti.type = tarfile.FIFOTYPE
        elif kind_of[1] == "file":
            ti.size = 1
            t.addfile(ti, io.BytesIO(b"x"))
            return
        t.addfile(ti)
    return add


@pytest.mark.parametrize(
    "entry,msg",
    [
        (("/etc/evil", "file"), "absolute path"),
        (("../evil", "file"), "'..' in path"),
        (("a/../../evil", "file"), "'..' in path"),
        (("link", "sym", "../../etc/passwd"), "points outside the archive root"),
        (("link", "sym", "/etc/passwd"), "points outside the archive root"),
        (("hl", "hard", "../outside"), "points outside the archive"),
        (("link", "sym", "nothing-here"), "is not a file in the archive"),
        (("dev", "chr"), "is a device file"),
        (("pipe", "fifo"), "is a fifo"),
        (("train.jsonl", "file"), "appears twice"),
    ],
)
def test_archive_safety(server, entry, msg):
    before = blob_files(server)
    r = push(server, "datasets", tar_bytes(dataset(name="evil"), extra=hostile(entry)))
    body = assert_envelope(r, 400, "bad_request")
    assert msg in body["detail"], body
    assert server.get("/api/v1/org/default/datasets").json()["total"] == 0
    assert blob_files(server) == before  # nothing stored


def test_links_inside_the_archive_are_followed(server):
    r = push(server, "datasets", tar_bytes(
        {"dataset.yaml": "name: linked\nsplits:\n  train: alias.jsonl\n", "real.jsonl": jsonl(CHAT, CHAT)},
        extra=hostile(("alias.jsonl", "sym", "real.jsonl"))))
    assert r.status_code == 201, r.text
    assert r.json()["splits"] == {"train": 2}


def test_malformed_bodies(server):
    assert "not a tar" in assert_envelope(push(server, "datasets", b"hello world, not a tarball"), 400)["detail"]
    assert "empty" in assert_envelope(push(server, "datasets", b""), 400, "bad_request")["detail"]
    good = tar_bytes(dataset(name="trunc"))
    assert_envelope(push(server, "datasets", good[: len(good) // 2]), 400, "bad_request")
    r = push(server, "datasets", tar_bytes(dataset(name="ct")), ctype="application/json")
    assert "Content-Type" in assert_envelope(r, 400, "bad_request")["detail"]
    r = push(server, "datasets", tar_bytes(dataset(name="empty", rows=0)))
    assert loc_of(r)[1] == "dataset.yaml: the data files hold no rows"
    assert server.get("/api/v1/org/default/datasets").json()["total"] == 0
    assert blob_files(server) == []


# ---- delete ----


def test_delete_and_blob_cleanup(server):
    body = tar_bytes(dataset(name="gone"))
    rec = push(server, "datasets", body).json()
    digest = rec["digest"].split(":")[1]
    assert digest[2:] in blob_files(server)
    assert push(server, "datasets", tar_bytes(dataset(name="gone", version="2.0.0"))).status_code == 201
    assert server.delete("/api/v1/org/default/datasets/gone/1.0.0").status_code == 204
    assert digest[2:] not in blob_files(server)
    assert_envelope(server.get("/api/v1/org/default/datasets/gone/1.0.0"), 404, "not_found")
    assert_envelope(server.get("/api/v1/org/default/datasets/gone/1.0.0/download"), 404, "not_found")
    assert_envelope(server.delete("/api/v1/org/default/datasets/gone/1.0.0"), 404, "not_found")
    assert server.get("/api/v1/org/default/datasets/gone").json()["latest_version"] == "2.0.0"
    assert server.delete("/api/v1/org/default/datasets/gone/2.0.0").status_code == 204
    assert_envelope(server.get("/api/v1/org/default/datasets/gone"), 404, "not_found")
    assert server.get("/api/v1/org/default/datasets").json()["total"] == 0
    # the same bytes pushed again after deletion: stored again, downloadable
    assert push(server, "datasets", body).status_code == 201
    assert server.get("/api/v1/org/default/datasets/gone/1.0.0/download").content == body


def test_delete_in_use_by_a_queued_job(lathe_server):
    s = lathe_server(env={"LATHE_WORKERS": "0"})
    cp = subprocess.run([str(LATHE_BIN), "model", "init-tiny", str(s.data_dir / "models" / "tiny")],
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    assert push(s, "datasets", tar_bytes(dataset(name="busy"))).status_code == 201
    assert push(s, "capabilities", tar_bytes({"capability.yaml": "name: cap\nversion: 1.0.0\ndescription: d\n"})).status_code == 201
    job = s.post("/api/v1/org/default/ws/main/training/jobs", json={
        "backend": "tinker", "trainer_type": "sft", "model": "tiny",
        "capability_ref": {"name": "cap", "version": "1.0.0"},
        "config": {"dataset_ref": {"name": "busy", "version": "1.0.0"}}})
    assert job.status_code == 201, job.text
    job = job.json()
    body = assert_envelope(s.delete("/api/v1/org/default/datasets/busy/1.0.0"), 409, "conflict")
    assert "in use" in body["detail"]
    assert_envelope(s.delete("/api/v1/org/default/capabilities/cap/1.0.0"), 409, "conflict")
    r = s.post("/api/v1/org/default/ws/main/training/jobs/%s/cancel" % job["id"])
    assert r.status_code == 200, r.text
    assert s.delete("/api/v1/org/default/datasets/busy/1.0.0").status_code == 204


# ---- who may do what ----


def test_roles_scopes_and_orgs(server):
    assert push(server, "datasets", tar_bytes(dataset(name="mine"))).status_code == 201
    reader = server.session(key=server.new_user("reader@example.com", role="reader"))
    assert reader.get("/api/v1/org/default/datasets/mine").status_code == 200
    assert reader.get("/api/v1/org/default/datasets/mine/1.0.0/download").status_code == 200
    assert_envelope(push(server, "datasets", tar_bytes(dataset(name="r")), sess=reader), 403, "permission_denied")
    assert_envelope(reader.delete("/api/v1/org/default/datasets/mine/1.0.0"), 403, "permission_denied")
    contrib = server.session(key=server.new_user("contrib@example.com", role="contributor"))
    assert push(server, "capabilities", tar_bytes({"capability.yaml": "name: c\nversion: 1.0.0\ndescription: d\n"}),
                sess=contrib).status_code == 201
    # a key limited to artifacts:read cannot push; training scopes alone cannot read
    ro = server.post("/api/v1/user/api-keys", json={"name": "ro", "scopes": ["artifacts:read"]}).json()["key"]
    ro = server.session(key=ro)
    assert ro.get("/api/v1/org/default/datasets").status_code == 200
    assert_envelope(push(server, "datasets", tar_bytes(dataset(name="x")), sess=ro), 403, "permission_denied")
    tr = server.post("/api/v1/user/api-keys", json={"name": "tr", "scopes": ["training:read"]}).json()["key"]
    assert_envelope(server.session(key=tr).get("/api/v1/org/default/datasets"), 403, "permission_denied")
    # another org: invisible (404), both ways
    outsider = server.session(key=server.new_user("out@example.com", org=None))
    for path in ("/api/v1/org/default/datasets", "/api/v1/org/default/datasets/mine",
                 "/api/v1/org/default/datasets/mine/1.0.0", "/api/v1/org/default/datasets/mine/1.0.0/download"):
        assert_envelope(outsider.get(path), 404, "not_found")
    assert_envelope(push(server, "datasets", tar_bytes(dataset(name="o")), sess=outsider), 404, "not_found")
    assert_envelope(outsider.delete("/api/v1/org/default/datasets/mine/1.0.0"), 404, "not_found")
    assert outsider.post("/api/v1/orgs", json={"key": "theirs", "name": "Theirs"}).status_code == 201
    assert push(server, "datasets", tar_bytes(dataset(name="mine")), org="theirs", sess=outsider).status_code == 201
    assert_envelope(server.get("/api/v1/org/theirs/datasets/mine"), 404, "not_found")
    # same name and version in two orgs are two artifacts
    assert server.get("/api/v1/org/default/datasets/mine/1.0.0").json()["org"] == "default"
    assert_envelope(server.session(key=None).get("/api/v1/org/default/datasets"), 401, "authentication_error")


def test_cli_push_is_reproducible(server, tmp_path):
    """`lathe dataset push` packs with util/archive: the same directory gives the same bytes, hence digest."""
    env = {**server.env, "LATHE_SERVER": server.url, "LATHE_API_KEY": server.key, "XDG_CONFIG_HOME": str(tmp_path)}
    cmd = [str(LATHE_BIN), "dataset", "push", str(EXAMPLES / "datasets" / "wrap-words"), "--json"]
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert cp.returncode == 0, cp.stderr
    first = json.loads(cp.stdout)
    assert first["splits"] == {"train": 40, "validation": 8}
    dl = server.get("/api/v1/org/default/datasets/wrap-words/0.1.0/download")
    assert "sha256:" + hashlib.sha256(dl.content).hexdigest() == first["digest"]
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert cp.returncode != 0 and "already exists" in cp.stderr  # 409: versions are immutable
    assert server.delete("/api/v1/org/default/datasets/wrap-words/0.1.0").status_code == 204
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["digest"] == first["digest"]
