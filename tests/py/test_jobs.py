"""Training-job routes E1-E13 and the catalog (docs/spec.md §3.2, §4) against a real `lathe serve`.

The module's server runs without in-process workers (LATHE_WORKERS=0), so jobs stay where the test puts them;
a worker is played by a key with the `worker` scope posting progress events (E10). Real references: the
module pushes a dataset, a capability and two tasks through the artifact routes, and makes tiny models with
`lathe model init-tiny`.
"""

import copy
import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid

import pytest

from conftest import LATHE_BIN, _start, _stop_all, assert_envelope  # noqa: F401

BASE = "/api/v1/org/default/ws/main/training/jobs"
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
FLAG_HASH = "sha256:" + hashlib.sha256(b"FLAG{lathe}").hexdigest()

# The seed page's example body (create-training-job.txt), exactly as published.
SEED = {
    "backend": "tinker",
    "capability_ref": {"name": "example", "version": "example"},
    "config": {
        "batch_size": 1,
        "checkpoint_interval": 1,
        "dataset_ref": {"name": "example", "version": "example"},
        "epochs": 1,
        "eval_dataset_ref": {"name": "example", "version": "example"},
        "gradient_accumulation_steps": 1,
        "learning_rate": 1,
        "lora_alpha": 1,
        "lora_rank": 1,
        "max_sequence_length": 1,
        "steps": 1,
        "trajectory_dataset_refs": [{"name": "example", "version": "example"}],
    },
    "model": "example",
    "name": "example",
    "project_ref": "example",
    "run_ref": "example",
    "tags": ["example"],
    "trainer_type": "sft",
}

DS = {"name": "chat", "version": "1.0.0"}
CAP = {"name": "assistant", "version": "1.0.0"}


def targz(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def push(s, org, kind, files, key=None):
    sess = s.session(key=key) if key else s.session()
    r = sess.post("/api/v1/org/%s/%s" % (org, kind), data=targz(files), headers={"Content-Type": "application/gzip"})
    assert r.status_code == 201, r.text
    return r.json()


CHAT_ROW = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})


def push_fixtures(s, org="default", key=None):
    push(
        s,
        org,
        "datasets",
        {
            "dataset.yaml": "name: chat\nversion: 1.0.0\nformat: jsonl\nsplits:\n  train: train.jsonl\n  hard: hard.jsonl\n",
            "train.jsonl": (CHAT_ROW + "\n") * 3,
            "hard.jsonl": CHAT_ROW + "\n",
        },
        key,
    )
    push(
        s,
        org,
        "capabilities",
        {
            "capability.yaml": "name: assistant\nversion: 1.0.0\ndescription: A terse test assistant\nentry_agent: helper\n",
            "agents/helper.md": "---\nrole: helper\n---\nYou answer tersely.\n",
        },
        key,
    )
    push(
        s,
        org,
        "tasks",
        {
            "task.yaml": "name: flagtask\nversion: 1.0.0\ninstruction: Find the flag on {{host}}.\n"
            "verification:\n  method: flag\n  hash: \"%s\"\n" % FLAG_HASH
        },
        key,
    )
    push(
        s,
        org,
        "tasks",
        {
            "task.yaml": "name: exacttask\nversion: 1.0.0\ninstruction: Say 42.\n"
            "verification:\n  method: exact\n  expected: \"42\"\n"
        },
        key,
    )


def init_tiny(path):
    cp = subprocess.run([str(LATHE_BIN), "model", "init-tiny", str(path)], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr


@pytest.fixture(scope="module")
def srv():
    tmp = tempfile.mkdtemp(prefix="lathe-jobs-")
    servers = []
    s = _start(tmp, servers, env={"LATHE_WORKERS": "0"})
    init_tiny(s.data_dir / "models" / "tiny")
    push_fixtures(s)
    s.worker_key = s.post("/api/v1/user/api-keys", json={"name": "w", "scopes": ["worker"]}).json()["key"]
    s.reader_key = s.new_user("reader@example.com", role="reader")
    yield s
    _stop_all(servers)
    shutil.rmtree(tmp, ignore_errors=True)


def sft(**over):
    body = {
        "backend": "tinker",
        "trainer_type": "sft",
        "model": "tiny",
        "capability_ref": dict(CAP),
        "config": {"dataset_ref": dict(DS)},
    }
    cfg = over.pop("config", None)
    body.update(over)
    if cfg:
        body["config"].update(cfg)
    return body


def rl(**cfg):
    c = {"algorithm": "importance_sampling", "prompt_dataset_ref": dict(DS)}
    c.update(cfg)
    return {"backend": "tinker", "trainer_type": "rl", "model": "tiny", "capability_ref": dict(CAP), "config": c}


def grpo(**cfg):
    c = {"task_ref": "exacttask", "prompt_dataset_ref": dict(DS)}
    c.update(cfg)
    return {"backend": "ray", "trainer_type": "rl", "model": "tiny", "capability_ref": dict(CAP), "config": c}


def create(s, body, status=201, sess=None):
    r = (sess or s).post(BASE, json=body)
    assert r.status_code == status, r.text
    return r.json()


def errs(r, code, type_):
    body = assert_envelope(r, code, type_)
    return [(tuple(e["loc"]), e["type"]) for e in body["errors"]]


def progress(s, job_id, ev, status=200):
    r = s.session(key=s.worker_key).post("%s/%s/progress" % (BASE, job_id), json=ev)
    assert r.status_code == status, r.text
    return r.json()


# ---- E1: create ---------------------------------------------------------------------------------------


def test_seed_body_with_real_references(srv):
    body = copy.deepcopy(SEED)
    body["model"] = "tiny"
    body["capability_ref"] = dict(CAP)
    body["project_ref"] = "default"
    for k in ("dataset_ref", "eval_dataset_ref"):
        body["config"][k] = dict(DS)
    body["config"]["trajectory_dataset_refs"] = [dict(DS)]
    r = srv.post(BASE, json=body)
    assert r.status_code == 201, r.text
    job = r.json()
    assert r.headers["Location"] == "%s/%s" % (BASE, job["id"])
    assert uuid.UUID(job["id"]).version == 4
    assert job["status"] == "queued" and job["attempt"] == 1
    assert job["config"] == body["config"]  # exactly as submitted
    eff = job["effective_config"]
    assert eff["max_sequence_length"] == 1 and eff["learning_rate"] == 1.0 and eff["epochs"] == 1
    assert eff["lora_alpha"] == 1.0 and eff["checkpoint_interval"] == 1
    assert job["dataset_ref"] == DS and job["trajectory_dataset_refs"] == [DS]
    assert job["algorithm"] is None and job["task_ref"] is None
    cap = job["capability"]
    assert cap["name"] == "assistant" and cap["version"] == "1.0.0"
    assert cap["artifact_id"] and cap["runtime_digest"].startswith("sha256:")
    ds = srv.get("/api/v1/org/default/capabilities/assistant/1.0.0").json()
    assert cap["runtime_digest"] == ds["digest"]
    assert job["tags"] == ["example"] and job["name"] == "example" and job["run_ref"] == "example"
    assert job["project_ref"] == "default"
    assert job["created_by_email"] == "admin@localhost"
    assert job["created_by_user"]["email"] == "admin@localhost" and job["created_by_user"]["id"] == job["created_by"]
    assert TS_RE.match(job["created_at"]) and TS_RE.match(job["updated_at"])
    assert job["started_at"] is None and job["completed_at"] is None and job["cancel_requested_at"] is None
    assert job["progress"] == {"step": 0, "total_steps": None, "fraction": None, "tokens_per_s": None, "eta_s": None}
    assert job["metrics"] == {} and job["artifacts"] == {} and job["error"] is None
    assert srv.get(r.headers["Location"]).json() == job


def test_seed_body_as_published_is_404_per_reference(srv):
    e = errs(srv.post(BASE, json=SEED), 404, "not_found")
    assert set(e) == {
        (("body", "model"), "not_found"),
        (("body", "capability_ref"), "not_found"),
        (("body", "project_ref"), "not_found"),
        (("body", "config", "dataset_ref"), "not_found"),
        (("body", "config", "eval_dataset_ref"), "not_found"),
        (("body", "config", "trajectory_dataset_refs", 0), "not_found"),
    }


def test_sft_defaults(srv):
    job = create(srv, sft())
    eff = job["effective_config"]
    assert eff == {
        "dataset_ref": DS,
        "trajectory_dataset_refs": [],
        "eval_dataset_ref": None,
        "max_sequence_length": 2048,  # min(2048, the tiny model's 2048)
        "batch_size": 16,
        "gradient_accumulation_steps": 1,
        "learning_rate": 0.0001,
        "steps": None,
        "epochs": 1,
        "lora_rank": 16,
        "lora_alpha": 32.0,
        "checkpoint_interval": 10,
        "compute": "f32",
    }
    assert job["tags"] == [] and job["name"] is None


def test_rl_and_grpo_bodies(srv):
    job = create(srv, rl(task_ref="flagtask", reward_recipe={"name": "task_verifier_v1"}, prompt_split="hard"))
    eff = job["effective_config"]
    assert job["algorithm"] == "importance_sampling" and job["task_ref"] == "flagtask@1.0.0"
    assert job["prompt_dataset_ref"] == DS and job["dataset_ref"] is None
    assert eff["reward_recipe"] == {"name": "task_verifier_v1", "params": {"reward_if_true": 1.0, "reward_if_false": 0.0}}
    assert eff["batch_size"] == 8 and eff["num_rollouts"] == 8 and eff["steps"] == 1 and eff["checkpoint_interval"] == 1
    assert eff["execution_mode"] == "sync" and eff["max_new_tokens"] == 128 and eff["temperature"] == 1.0
    assert eff["eval_interval"] is None and eff["eval_max_rollouts"] is None and eff["prompt_split"] == "hard"
    job = create(srv, rl(num_rollouts=4, steps=5, eval_dataset_ref=dict(DS)))
    eff = job["effective_config"]
    assert eff["batch_size"] == 4 and eff["checkpoint_interval"] == 5
    assert eff["eval_interval"] == 10 and eff["eval_max_rollouts"] == 4
    assert eff["reward_recipe"] == {"name": "row_reward_v1", "params": {"default": 0.0}}
    job = create(srv, grpo())
    eff = job["effective_config"]
    assert job["algorithm"] == "grpo" and job["backend"] == "ray"
    assert eff["reward_recipe"]["name"] == "exact_match_v1" and eff["execution_mode"] == "async"
    assert eff["learning_rate"] == 1e-5 and eff["buffer_size"] == 8 and eff["num_rollout_workers"] == 1
    assert (eff["lora_rank"], eff["lora_alpha"], eff["temperature"], eff["max_new_tokens"], eff["max_turns"]) == (
        16,
        32.0,
        1.0,
        128,
        8,
    )
    job = create(srv, grpo(task_ref="default/flagtask@latest", batch_size=3))
    assert job["effective_config"]["reward_recipe"]["name"] == "task_verifier_v1"
    assert job["effective_config"]["buffer_size"] == 3 and job["task_ref"] == "flagtask@1.0.0"


@pytest.mark.parametrize(
    "body,loc,type_",
    [
        (rl(world_runtime_id="r"), ("body", "config", "world_runtime_id"), "value_error"),  # R1
        (rl(world_agent_name="a"), ("body", "config", "world_agent_name"), "value_error"),  # R2
        ({**rl(), "config": {"algorithm": "ppo"}}, ("body", "config"), "value_error"),  # R3
        (rl(execution_mode="fully_async"), ("body", "config", "execution_mode"), "value_error"),  # R4
        (rl(execution_mode="one_step_off_async", max_steps_off_policy=2), ("body", "config", "execution_mode"), "value_error"),  # R5
        (rl(eval_interval=3), ("body", "config", "eval_interval"), "value_error"),  # R6
        (rl(eval_max_rollouts=3), ("body", "config", "eval_max_rollouts"), "value_error"),  # R6
        (rl(num_rollouts=0), ("body", "config", "num_rollouts"), "greater_than_equal"),  # R7
        (rl(learning_rate=0), ("body", "config", "learning_rate"), "greater_than"),  # R7
        (rl(temperature=-1), ("body", "config", "temperature"), "greater_than_equal"),  # R7
        (rl(max_steps_off_policy=0), ("body", "config", "max_steps_off_policy"), "greater_than_equal"),  # R7
        (rl(reward_recipe={"name": "task_env_verifier_v1"}), ("body", "config", "reward_recipe"), "value_error"),  # R8
        (rl(reward_recipe={"name": "task_verifier_v1"}), ("body", "config", "reward_recipe"), "value_error"),  # R9
        (rl(task_ref="exacttask", reward_recipe={"name": "task_verifier_v1"}), ("body", "config", "reward_recipe"), "value_error"),  # R9
        (rl(world_manifest_id="m"), ("body", "config", "world_manifest_id"), "value_error"),  # R10
        (rl(task_ref="flagtask", reward_recipe={"name": "task_env_agent_v1"}), ("body", "config", "reward_recipe"), "value_error"),  # R10
    ],
)
def test_rules_r1_to_r10(srv, body, loc, type_):
    # (R1/R2 without an environment backend also break R10 at the same field: one item per broken rule)
    e = errs(srv.post(BASE, json=body), 422, "validation_error")
    assert set(e) == {(loc, type_)}, e


def test_r10_names_the_setting(srv):
    body = assert_envelope(srv.post(BASE, json=rl(world_goal="g")), 422)
    assert "LATHE_WORLDS_URL" in body["errors"][0]["msg"] and "LATHE_WORLDS_URL" in body["detail"]


def test_r10_with_worlds_backend(lathe_server):
    s = lathe_server(env={"LATHE_WORKERS": "0", "LATHE_WORLDS_URL": "http://127.0.0.1:9/worlds"})
    init_tiny(s.data_dir / "models" / "tiny")
    push_fixtures(s)
    job = create(s, rl(world_manifest_id="m", world_runtime_id="r", world_agent_name="a"))
    assert job["world_agent_name"] == "a"
    ctx = s.get("%s/%s/rl-context" % (BASE, job["id"])).json()
    assert ctx["world"]["id"] == "m" and ctx["world"]["server_url"] == "http://127.0.0.1:9/worlds"


@pytest.mark.parametrize(
    "body,loc,type_",
    [
        (sft(config={"batch_size": 0}), ("body", "config", "batch_size"), "greater_than_equal"),
        (sft(config={"batch_size": 4097}), ("body", "config", "batch_size"), "less_than_equal"),
        (sft(config={"batch_size": "8"}), ("body", "config", "batch_size"), "type_error"),
        (sft(config={"learning_rate": 2}), ("body", "config", "learning_rate"), "less_than_equal"),
        (sft(config={"lora_rank": 513}), ("body", "config", "lora_rank"), "less_than_equal"),
        (sft(config={"max_sequence_length": 4096}), ("body", "config", "max_sequence_length"), "less_than_equal"),
        (sft(config={"bogus": 1}), ("body", "config", "bogus"), "extra_forbidden"),
        (sft(extra=1), ("body", "extra"), "extra_forbidden"),
        (sft(backend="gpu"), ("body", "backend"), "enum"),
        (sft(backend="ray"), ("body", "trainer_type"), "value_error"),
        (sft(name="x" * 201), ("body", "name"), "string_too_long"),
        (sft(tags=["t"] * 33), ("body", "tags"), "less_than_equal"),
        (sft(tags=["x" * 65]), ("body", "tags", 0), "string_too_long"),
        (sft(model=None), ("body", "model"), "missing"),
        ({**sft(), "config": {"trajectory_dataset_refs": []}}, ("body", "config"), "value_error"),
        (rl(prompt_split="nope"), ("body", "config", "prompt_split"), "value_error"),
        (rl(reward_recipe={"name": "nope_v1"}), ("body", "config", "reward_recipe", "name"), "enum"),
        (grpo(lora_rank=8), ("body", "config", "lora_rank"), "extra_forbidden"),
        (grpo(num_rollout_workers=2), ("body", "config", "num_rollout_workers"), "value_error"),
    ],
)
def test_schema_errors(srv, body, loc, type_):
    e = errs(srv.post(BASE, json=body), 422, "validation_error")
    assert e == [(loc, type_)], e


def test_422_detail_and_every_error_reported(srv):
    body = assert_envelope(srv.post(BASE, json=sft(config={"batch_size": 0, "lora_rank": 0})), 422, "validation_error")
    assert body["detail"] == "config.batch_size must be >= 1 (and 1 more error)"
    assert len(body["errors"]) == 2
    assert all(set(e) == {"loc", "msg", "type"} for e in body["errors"])


def test_400_413_401(srv):
    r = srv.post(BASE, data=b"{not json", headers={"Content-Type": "application/json"})
    assert_envelope(r, 400, "bad_request")
    big = sft(name="n", config={"bogus": "x" * (1 << 20)})
    assert_envelope(srv.post(BASE, json=big), 413, "payload_too_large")
    anon = srv.session(key=None)
    assert_envelope(anon.post(BASE, json=sft()), 401, "authentication_error")
    assert_envelope(anon.get(BASE), 401, "authentication_error")
    assert_envelope(srv.session(key="lk_" + "x" * 40).get(BASE), 401, "authentication_error")


def test_404_references(srv):
    assert errs(srv.post(BASE, json=sft(model="nope")), 404, "not_found") == [(("body", "model"), "not_found")]
    assert errs(srv.post(BASE, json=sft(model="../tiny")), 404, "not_found") == [(("body", "model"), "not_found")]
    bad_cap = sft(capability_ref={"name": "assistant", "version": "9.9.9"})
    assert errs(srv.post(BASE, json=bad_cap), 404, "not_found") == [(("body", "capability_ref"), "not_found")]
    assert errs(srv.post(BASE, json=sft(project_ref="nope")), 404, "not_found") == [(("body", "project_ref"), "not_found")]
    assert errs(srv.post(BASE, json=rl(task_ref="nope")), 404, "not_found") == [(("body", "config", "task_ref"), "not_found")]
    # adapter targets: an unknown job, and a job without checkpoints
    unknown = "jobs/" + str(uuid.uuid4())
    assert errs(srv.post(BASE, json=sft(model=unknown)), 404, "not_found") == [(("body", "model"), "not_found")]
    job = create(srv, sft())
    assert errs(srv.post(BASE, json=sft(model="jobs/" + job["id"])), 404, "not_found") == [(("body", "model"), "not_found")]
    # unknown workspace / org
    assert_envelope(srv.post("/api/v1/org/default/ws/nope/training/jobs", json=sft()), 404, "not_found")
    assert_envelope(srv.get("/api/v1/org/nope/ws/main/training/jobs"), 404, "not_found")
    assert_envelope(srv.get(BASE + "/" + str(uuid.uuid4())), 404, "not_found")
    assert_envelope(srv.get(BASE + "/not-a-uuid"), 404, "not_found")


def test_named_project(srv):
    r = srv.post("/api/v1/org/default/ws/main/projects", json={"key": "research", "name": "Research"})
    assert r.status_code in (201, 409), r.text
    job = create(srv, sft(project_ref="research"))
    assert job["project_ref"] == "research"
    items = srv.get(BASE, params={"project_ref": "research"}).json()["items"]
    assert job["id"] in [j["id"] for j in items] and all(j["project_ref"] == "research" for j in items)


def test_idempotency_key(srv):
    key = {"Idempotency-Key": str(uuid.uuid4())}
    tag = "idem-" + key["Idempotency-Key"][:8]
    a = srv.post(BASE, json=sft(name="idem", tags=[tag]), headers=key)
    b = srv.post(BASE, json=sft(name="idem", tags=[tag]), headers=key)
    assert a.status_code == 201 and b.status_code == 201
    assert a.json()["id"] == b.json()["id"] and b.headers["Location"] == a.headers["Location"]
    assert srv.get(BASE, params={"tag": tag}).json()["total"] == 1  # one job, not two
    assert_envelope(srv.post(BASE, json=sft(name="other"), headers=key), 409, "idempotency_conflict")


# ---- roles, scopes, tenancy ---------------------------------------------------------------------------


def test_reader_can_read_not_write(srv):
    job = create(srv, sft())
    reader = srv.session(key=srv.reader_key)
    assert reader.get(BASE + "/" + job["id"]).status_code == 200
    assert reader.get(BASE).status_code == 200
    assert reader.get(BASE + "/" + job["id"] + "/logs").status_code == 200
    assert_envelope(reader.post(BASE, json=sft()), 403, "permission_denied")
    assert_envelope(reader.post(BASE + "/" + job["id"] + "/cancel"), 403, "permission_denied")
    assert_envelope(reader.post(BASE + "/" + job["id"] + "/retry"), 403, "permission_denied")
    assert_envelope(reader.delete(BASE + "/" + job["id"]), 403, "permission_denied")


def test_scopes(srv):
    ro = srv.post("/api/v1/user/api-keys", json={"name": "ro", "scopes": ["training:read"]}).json()["key"]
    art = srv.post("/api/v1/user/api-keys", json={"name": "art", "scopes": ["artifacts:read"]}).json()["key"]
    job = create(srv, sft())
    s_ro, s_art = srv.session(key=ro), srv.session(key=art)
    assert s_ro.get(BASE + "/" + job["id"]).status_code == 200
    assert s_ro.get("/api/v1/training/catalog").status_code == 200
    assert_envelope(s_ro.post(BASE, json=sft()), 403, "permission_denied")
    assert_envelope(s_ro.post(BASE + "/" + job["id"] + "/progress", json={"event_type": "training_start"}), 403)
    assert_envelope(s_art.get(BASE + "/" + job["id"]), 403, "permission_denied")
    assert_envelope(s_art.get("/api/v1/training/catalog"), 403, "permission_denied")
    # the worker scope reads jobs (the runner fetches its job) but cannot create
    w = srv.session(key=srv.worker_key)
    assert w.get(BASE + "/" + job["id"]).status_code == 200
    assert_envelope(w.post(BASE, json=sft()), 403, "permission_denied")


def test_cross_org_isolation(srv):
    eve_key = srv.new_user("eve@example.com", org=None)
    eve = srv.session(key=eve_key)
    assert eve.post("/api/v1/orgs", json={"key": "beta", "name": "Beta"}).status_code == 201
    push_fixtures(srv, org="beta", key=eve_key)
    beta = "/api/v1/org/beta/ws/main/training/jobs"
    r = eve.post(beta, json=sft())
    assert r.status_code == 201, r.text
    beta_job = r.json()
    mine = create(srv, sft())
    # the admin is not a member of beta: 404 for the org, its job, even by exact id through another org
    assert_envelope(srv.get(beta + "/" + beta_job["id"]), 404, "not_found")
    assert_envelope(srv.get(BASE + "/" + beta_job["id"]), 404, "not_found")
    assert_envelope(srv.post(BASE + "/" + beta_job["id"] + "/cancel"), 404, "not_found")
    assert_envelope(srv.delete(BASE + "/" + beta_job["id"]), 404, "not_found")
    assert_envelope(srv.get(BASE + "/" + beta_job["id"] + "/logs"), 404, "not_found")
    assert_envelope(progress_raw(srv, BASE + "/" + beta_job["id"]), 404, "not_found")
    # and eve cannot see the default org's job or artifacts
    assert_envelope(eve.get(BASE + "/" + mine["id"]), 404, "not_found")
    assert_envelope(eve.get("/api/v1/org/default/datasets/chat/1.0.0"), 404, "not_found")
    # a reference into another org is a 404 naming the field, never a peek
    body = sft(config={"eval_dataset_ref": {"name": "beta/chat", "version": "1.0.0"}})
    assert errs(srv.post(BASE, json=body), 404, "not_found") == [(("body", "config", "eval_dataset_ref"), "not_found")]
    # listing shows only the workspace's own jobs
    ids = [j["id"] for j in srv.get(BASE, params={"page_size": 100}).json()["items"]]
    assert beta_job["id"] not in ids
    assert [j["id"] for j in eve.get(beta).json()["items"]] == [beta_job["id"]]


def progress_raw(s, path):
    return s.session(key=s.worker_key).post(path + "/progress", json={"event_type": "training_start"})


def test_quota_429(lathe_server):
    s = lathe_server(env={"LATHE_WORKERS": "0", "LATHE_MAX_ACTIVE_JOBS": "2"})
    init_tiny(s.data_dir / "models" / "tiny")
    push_fixtures(s)
    a = create(s, sft())
    create(s, sft())
    r = s.post(BASE, json=sft())
    assert_envelope(r, 429, "quota_exceeded")
    assert int(r.headers["Retry-After"]) > 0
    # a finished job frees a slot
    assert s.post(BASE + "/" + a["id"] + "/cancel").status_code == 200
    create(s, sft())


# ---- E2: list -----------------------------------------------------------------------------------------


def test_list_paging_and_filters(lathe_server):
    s = lathe_server(env={"LATHE_WORKERS": "0"})
    init_tiny(s.data_dir / "models" / "tiny")
    push_fixtures(s)
    ids = [create(s, sft(tags=["even" if i % 2 == 0 else "odd", "all"]))["id"] for i in range(5)]
    rl_job = create(s, rl())
    g = create(s, grpo())
    everything = s.get(BASE, params={"page_size": 100}).json()
    assert everything["total"] == 7 and everything["page"] == 1 and everything["page_size"] == 100
    assert [j["id"] for j in everything["items"]] == [g["id"], rl_job["id"]] + ids[::-1]  # newest first
    seen = []
    for page in (1, 2, 3, 4):
        p = s.get(BASE, params={"page": page, "page_size": 2}).json()
        assert p["total"] == 7 and p["page"] == page and p["page_size"] == 2
        seen += [j["id"] for j in p["items"]]
    assert seen == [j["id"] for j in everything["items"]]
    assert s.get(BASE).json()["page_size"] == 20
    assert [j["id"] for j in s.get(BASE, params={"tag": "even"}).json()["items"]] == [ids[4], ids[2], ids[0]]
    assert s.get(BASE, params={"trainer_type": "rl"}).json()["total"] == 2
    assert s.get(BASE, params={"backend": "ray"}).json()["items"][0]["id"] == g["id"]
    assert s.post(BASE + "/" + ids[0] + "/cancel").status_code == 200
    cancelled = s.get(BASE, params={"status": "cancelled"}).json()
    assert [j["id"] for j in cancelled["items"]] == [ids[0]]
    assert s.get(BASE, params={"status": "queued", "tag": "all"}).json()["total"] == 4
    e = errs(s.get(BASE, params={"page_size": 101}), 422, "validation_error")
    assert e == [(("query", "page_size"), "less_than_equal")]
    assert errs(s.get(BASE, params={"page": 0}), 422, "validation_error") == [(("query", "page"), "greater_than_equal")]
    assert errs(s.get(BASE, params={"status": "done"}), 422, "validation_error") == [(("query", "status"), "enum")]


# ---- E4, E5, E13: the state machine -------------------------------------------------------------------


def test_cancel_retry_delete(srv):
    job = create(srv, sft())
    url = BASE + "/" + job["id"]
    # an active job cannot be retried or deleted
    assert_envelope(srv.post(url + "/retry"), 409, "conflict")
    assert_envelope(srv.delete(url), 409, "conflict")
    # queued -> cancelled at once
    c = srv.post(url + "/cancel").json()
    assert c["status"] == "cancelled" and TS_RE.match(c["completed_at"])
    assert_envelope(srv.post(url + "/cancel"), 409, "conflict")
    # retry: same id, attempt 2, cleared, logs kept
    r = srv.post(url + "/retry")
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["id"] == job["id"] and j["status"] == "queued" and j["attempt"] == 2
    assert j["completed_at"] is None and j["cancel_requested_at"] is None and j["error"] is None
    logs = srv.get(url + "/logs").json()["items"]
    assert {e["attempt"] for e in logs} == {1, 2}
    # running -> cancel requested, the job keeps running until the worker stops
    progress(srv, job["id"], {"event_type": "training_start"})
    c = srv.post(url + "/cancel").json()
    assert c["status"] == "running" and c["cancel_requested_at"] is not None
    progress(srv, job["id"], {"event_type": "training_error", "error": "stopped"})
    assert srv.get(url).json()["status"] == "failed"
    assert srv.delete(url).status_code == 204
    assert_envelope(srv.get(url), 404, "not_found")
    assert_envelope(srv.delete(url), 404, "not_found")


# ---- E6, E10: progress and logs -----------------------------------------------------------------------


def test_progress_merge_and_logs_cursor(srv):
    job = create(srv, sft())
    jid, url = job["id"], BASE + "/" + job["id"]
    j = progress(srv, jid, {"event_type": "training_start", "data": {"total_steps": 4}})
    assert j["status"] == "running" and TS_RE.match(j["started_at"])
    for step, level in ((1, "debug"), (2, "info"), (3, "warning")):
        j = progress(
            srv,
            jid,
            {
                "event_type": "step_complete",
                "level": level,
                "message": "step %d" % step,
                "metrics": {"steps": [step], "train/loss": [3.0 - step], "train/tokens_per_s": [100.0 * step]},
                "data": {"step": step},
            },
        )
    assert j["metrics"]["steps"] == [1, 2, 3] and j["metrics"]["train/loss"] == [2.0, 1.0, 0.0]
    assert j["progress"]["step"] == 3 and j["progress"]["total_steps"] == 4
    assert j["progress"]["fraction"] == 0.75 and j["progress"]["tokens_per_s"] == 300.0
    j = progress(srv, jid, {"event_type": "checkpoint_saved", "artifacts": {"latest_checkpoint": "checkpoint-1-step3", "world_server_auth_token": "s3cret"}})
    assert j["artifacts"] == {"latest_checkpoint": "checkpoint-1-step3"}  # secrets are never stored
    j = progress(
        srv,
        jid,
        {
            "event_type": "training_end",
            "metrics": {"train/loss_last": 0.0, "steps": [1, 2, 3, 4]},
            "artifacts": {"checkpoints": ["final"]},
        },
    )
    assert j["status"] == "completed" and TS_RE.match(j["completed_at"])
    assert j["metrics"]["steps"] == [1, 2, 3, 4] and j["metrics"]["train/loss"] == [2.0, 1.0, 0.0]
    assert j["artifacts"] == {"latest_checkpoint": "checkpoint-1-step3", "checkpoints": ["final"]}
    assert j["progress"]["step"] == 4 and j["progress"]["fraction"] == 1.0
    assert srv.get(url + "/artifacts").json() == {"artifacts": j["artifacts"]}
    assert_envelope(srv.session(key=srv.worker_key).post(url + "/progress", json={"event_type": "step_complete"}), 409, "conflict")
    # the log cursor: pages of 2 cover every entry once, in order
    seen, after = [], None
    while True:
        params = {"limit": 2}
        if after is not None:
            params["after"] = after
        page = srv.get(url + "/logs", params=params).json()
        assert len(page["items"]) <= 2
        seen += page["items"]
        after = page["next"]
        if after is None:
            break
    seqs = [e["seq"] for e in seen]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) == 7  # queued + 6 events
    assert all(set(e) == {"seq", "attempt", "timestamp", "level", "message", "data"} for e in seen)
    assert seen[1]["data"]["event_type"] == "training_start"
    assert "s3cret" not in json.dumps(seen)
    warn = srv.get(url + "/logs", params={"level": "warning"}).json()
    assert [e["message"] for e in warn["items"]] == ["step 3"] and warn["next"] is None
    assert errs(srv.get(url + "/logs", params={"limit": 1001}), 422, "validation_error") == [(("query", "limit"), "less_than_equal")]
    assert errs(srv.get(url + "/logs", params={"level": "loud"}), 422, "validation_error") == [(("query", "level"), "enum")]


def test_progress_body_validation(srv):
    job = create(srv, sft())
    w = srv.session(key=srv.worker_key)
    url = BASE + "/" + job["id"] + "/progress"
    assert errs(w.post(url, json={"event_type": "nope"}), 422, "validation_error") == [(("body", "event_type"), "enum")]
    assert errs(w.post(url, json={}), 422, "validation_error") == [(("body", "event_type"), "missing")]
    e = errs(w.post(url, json={"event_type": "step_complete", "metrics": [1], "x": 1}), 422, "validation_error")
    assert set(e) == {(("body", "x"), "extra_forbidden"), (("body", "metrics"), "type_error")}
    # a contributor key without the worker scope may not report progress
    wr = srv.post("/api/v1/user/api-keys", json={"name": "wr", "scopes": ["training:write", "training:read"]}).json()["key"]
    assert_envelope(srv.session(key=wr).post(url, json={"event_type": "training_start"}), 403, "permission_denied")


# ---- E7, E9, E12 --------------------------------------------------------------------------------------


def test_rl_context(srv):
    job = create(srv, sft())
    assert_envelope(srv.get(BASE + "/" + job["id"] + "/rl-context"), 409, "conflict")
    job = create(srv, rl(task_ref="flagtask", reward_recipe={"name": "task_verifier_v1"}))
    ctx = srv.get(BASE + "/" + job["id"] + "/rl-context").json()
    assert set(ctx) == {"capability_entry_prompt", "task", "world", "sampled_trajectory_dataset_ref", "reward_recipe"}
    assert ctx["capability_entry_prompt"].strip() == "You answer tersely."
    assert ctx["task"]["reference"] == "flagtask@1.0.0" and ctx["task"]["verification"]["method"] == "flag"
    assert ctx["world"] is None and ctx["reward_recipe"]["name"] == "task_verifier_v1"


def test_checkpoints_empty_until_training(srv):
    job = create(srv, sft())
    url = BASE + "/" + job["id"]
    assert srv.get(url + "/checkpoints").json() == {"items": []}
    assert_envelope(srv.get(url + "/checkpoints/final/download"), 404, "not_found")
    assert srv.get(url + "/artifacts").json() == {"artifacts": {}}


# ---- E11: events --------------------------------------------------------------------------------------


def sse_events(resp):
    """Yields (event, data) pairs from a streaming requests response."""
    event, data = None, []
    for raw in resp.iter_lines(decode_unicode=True):
        if raw is None:
            continue
        if raw == "":
            if event or data:
                yield event, json.loads("\n".join(data)) if data else None
            event, data = None, []
        elif raw.startswith("event:"):
            event = raw[6:].strip()
        elif raw.startswith("data:"):
            data.append(raw[5:].strip())


def test_events_stream(srv):
    job = create(srv, sft())
    url = BASE + "/" + job["id"]
    r = srv.session().get(url + "/events", params={"heartbeat": 1}, stream=True, timeout=20)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    ev = sse_events(r)
    name, data = next(ev)
    assert name == "snapshot" and data["id"] == job["id"] and data["status"] == "queued"
    progress(srv, job["id"], {"event_type": "training_start", "message": "go"})
    got = []
    for name, data in ev:
        got.append(name)
        if name == "progress" and data["status"] == "running":
            break
    assert "log" in got
    # a quiet stream sends heartbeats
    for name, data in ev:
        if name == "heartbeat":
            assert TS_RE.match(data["time"])
            break
    progress(srv, job["id"], {"event_type": "step_complete", "metrics": {"steps": [1], "train/loss": [1.5]}})
    for name, data in ev:
        if name == "progress":
            assert data["metrics"]["train/loss"] == 1.5
            break
    progress(srv, job["id"], {"event_type": "training_end"})
    names = [n for n, _ in ev]  # runs until the server closes the stream
    assert names[-1] == "end"
    r.close()
    # a finished job: snapshot then end at once
    r = srv.session().get(url + "/events", stream=True, timeout=20)
    assert [n for n, _ in sse_events(r)] == ["snapshot", "end"]


# ---- E8: catalog --------------------------------------------------------------------------------------


def test_catalog(lathe_server):
    s = lathe_server(env={"LATHE_WORKERS": "0"})
    assert s.get("/api/v1/training/catalog").json() == {"models": [], "total": 0, "limit": 20}
    models = s.data_dir / "models"
    init_tiny(models / "tiny-b")
    init_tiny(models / "Acme" / "tiny-a")
    (models / "broken").mkdir()
    (models / "broken" / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    (models / "linked").symlink_to(models / "tiny-b", target_is_directory=True)  # a symlinked model counts
    (models / "loop").symlink_to(models, target_is_directory=True)  # a loop is not followed twice
    (models / "notok").mkdir()
    shutil.copy(models / "tiny-b" / "config.json", models / "notok" / "config.json")  # no tokenizer, no weights
    cat = s.get("/api/v1/training/catalog").json()
    ids = [m["tinker_id"] for m in cat["models"]]
    assert ids == ["Acme/tiny-a", "linked", "tiny-b"], ids
    assert cat["total"] == 3 and cat["limit"] == 20
    m = cat["models"][0]
    assert m["display_name"] == "tiny-a" and m["family"] == "llama" and m["type"] == "dense"
    assert m["context_length"] == 2048 and m["extended_context"] is False and m["pricing"] is None
    assert m["supported_algorithms"] == ["sft", "importance_sampling", "ppo", "grpo"]
    assert 0 < m["size_b"] < 0.001
    q = s.get("/api/v1/training/catalog", params={"query": "ACME"}).json()
    assert [x["tinker_id"] for x in q["models"]] == ["Acme/tiny-a"]
    assert s.get("/api/v1/training/catalog", params={"family": "qwen"}).json()["total"] == 0
    assert s.get("/api/v1/training/catalog", params={"algorithm": "grpo"}).json()["total"] == 3
    assert s.get("/api/v1/training/catalog", params={"algorithm": "dpo"}).json()["total"] == 0
    assert s.get("/api/v1/training/catalog", params={"min_size_b": 1}).json()["total"] == 0
    assert s.get("/api/v1/training/catalog", params={"max_size_b": 1}).json()["total"] == 3
    lim = s.get("/api/v1/training/catalog", params={"limit": 1}).json()
    assert lim["total"] == 3 and len(lim["models"]) == 1 and lim["limit"] == 1
    assert errs(s.get("/api/v1/training/catalog", params={"limit": 0}), 422, "validation_error") == [(("query", "limit"), "greater_than_equal")]
    assert errs(s.get("/api/v1/training/catalog", params={"limit": 101}), 422, "validation_error") == [(("query", "limit"), "less_than_equal")]
    assert errs(s.get("/api/v1/training/catalog", params={"min_size_b": "big"}), 422, "validation_error") == [(("query", "min_size_b"), "type_error")]
    assert_envelope(s.session(key=None).get("/api/v1/training/catalog"), 401, "authentication_error")
    # a nested catalog id is a valid job model
    push_fixtures(s)
    assert create(s, sft(model="Acme/tiny-a"))["model"] == "Acme/tiny-a"


def test_metrics_jobs_by_status(srv):
    create(srv, sft())
    text = srv.session(key=None).get("/metrics").text
    assert re.search(r'^lathe_jobs\{status="queued"\} [1-9]\d*$', text, re.M), text[-2000:]
    assert 'lathe_jobs{status="completed"}' in text


def test_checkpoint_download_and_adapter_target(srv):
    """Plays the worker's checkpoint writer (a blob + a job_checkpoints row, as src/store/jobs.h records
    them), then downloads it (E12), trains on top of it (model jobs/<id>/checkpoints/<name>), and checks that
    the base job cannot be deleted while the job built on it is active (E13)."""
    from conftest import store_exec

    base = create(srv, sft())
    progress(srv, base["id"], {"event_type": "training_start"})
    progress(srv, base["id"], {"event_type": "training_end", "artifacts": {"checkpoints": ["final"]}})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in (("adapter_config.json", b'{"r": 16}'), ("adapter_model.safetensors", b"\0" * 64)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    tar = buf.getvalue()
    hexd = hashlib.sha256(tar).hexdigest()
    blob = srv.data_dir / "blobs" / "sha256" / hexd[:2] / hexd[2:]
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(tar)
    store_exec(
        srv,
        "INSERT INTO job_checkpoints (job_id, name, step, created_at, size_bytes, digest, blob_digest) "
        "VALUES (?, 'final', 3, ?, ?, ?, ?)",
        (base["id"], int(time.time() * 1000), len(tar), "sha256:" + hexd, "sha256:" + hexd),
    )
    url = BASE + "/" + base["id"]
    items = srv.get(url + "/checkpoints").json()["items"]
    assert [(c["name"], c["step"], c["size_bytes"], c["digest"]) for c in items] == [("final", 3, len(tar), "sha256:" + hexd)]
    r = srv.get(url + "/checkpoints/final/download")
    assert r.status_code == 200 and r.content == tar and r.headers["Content-Type"].startswith("application/x-tar")
    assert hashlib.sha256(r.content).hexdigest() == hexd
    # continue from it: by checkpoint name, and by job (its latest checkpoint)
    child = create(srv, sft(model="jobs/%s/checkpoints/final" % base["id"]))
    assert child["effective_config"]["max_sequence_length"] == 2048  # the base model's context
    create(srv, sft(model="jobs/" + base["id"]))
    e = errs(srv.post(BASE, json=sft(model="jobs/%s/checkpoints/nope" % base["id"])), 404, "not_found")
    assert e == [(("body", "model"), "not_found")]
    # the base job is in use while a job continues from it
    body = assert_envelope(srv.delete(url), 409, "conflict")
    assert child["id"] in body["detail"] or "continues from" in body["detail"]
    assert_envelope(srv.post(url + "/retry"), 409, "conflict")


def test_responses_parse_with_the_dreadnode_sdk_models(srv):
    """The upstream SDK's own response models (dreadnode.app.api.models) accept what these routes return."""
    models = pytest.importorskip("dreadnode.app.api.models")
    job = create(srv, rl(task_ref="flagtask", reward_recipe={"name": "task_verifier_v1"}))
    url = BASE + "/" + job["id"]
    progress(srv, job["id"], {"event_type": "training_start", "message": "go"})
    parsed = models.TrainingJob.model_validate(srv.get(url).json())
    assert parsed.created_by_user.username == "admin"  # no username set: the email's local part
    assert parsed.task_ref == "flagtask@1.0.0" and parsed.algorithm == "importance_sampling"
    models.TrainingJob.model_validate(create(srv, sft()))
    models.TrainingJobList.model_validate(srv.get(BASE).json())
    models.TrainingJobLogList.model_validate(srv.get(url + "/logs").json())
    models.TrainingJobArtifacts.model_validate(srv.get(url + "/artifacts").json())
    ctx = models.TrainingRLContext.model_validate(srv.get(url + "/rl-context").json())
    assert ctx.task.s3_key.startswith("sha256:") and ctx.task.sandbox_provider
    sdk = srv.session(user_agent="dreadnode-sdk/2.0.0")
    cat = models.TrainingCatalogResponse.model_validate(sdk.get("/api/v1/training/catalog").json())
    assert [m.tinker_id for m in cat.models] == ["tiny"]
    assert cat.models[0].supported_algorithms == ["sft", "importance_sampling", "ppo"]
    # other clients get docs/spec.md's full list
    full = srv.get("/api/v1/training/catalog").json()["models"][0]["supported_algorithms"]
    assert full == ["sft", "importance_sampling", "ppo", "grpo"]
    models.TrainingJobProgressUpdateRequest.model_validate({"event_type": "step_complete", "metrics": {"steps": [1]}})


def test_artifact_in_use_by_active_job_cannot_be_deleted(srv):
    push(
        srv,
        "default",
        "datasets",
        {"dataset.yaml": "name: chat\nversion: 2.0.0\nformat: jsonl\n", "train.jsonl": CHAT_ROW + "\n"},
    )
    job = create(srv, sft(config={"dataset_ref": {"name": "chat", "version": "2.0.0"}}))
    assert_envelope(srv.delete("/api/v1/org/default/datasets/chat/2.0.0"), 409, "conflict")
    assert srv.post(BASE + "/" + job["id"] + "/cancel").status_code == 200
    assert srv.delete("/api/v1/org/default/datasets/chat/2.0.0").status_code == 204
