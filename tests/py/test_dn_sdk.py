"""The upstream Dreadnode SDK (PyPI `dreadnode`, its `dn` CLI and `dreadnode.app.api.client.ApiClient`), unmodified,
against a real `lathe serve`.

What the SDK does (read from its source, dreadnode/app/cli/train.py, args.py, config.py, api/client.py):
- the URL gets `/api/v1` appended; every request sends `X-API-Key`, `Accept: application/json`,
  `User-Agent: dreadnode-sdk/<version>`;
- `--api-key` needs `--server`; `--organization` / `--workspace` (or DREADNODE_* env) pick the scope;
- before any `dn train` verb, Profile.validate_scope reads GET /user, GET /org/{org}, GET /org/{org}/ws/{ws}
  (or GET /org/{org}/ws without --workspace) and, with --project, GET /org/{org}/ws/{ws}/projects/{project};
- then one training route per verb: catalog -> GET /training/catalog?limit=20; list -> GET jobs?page&page_size;
  get/wait -> GET jobs/{id}; sft/rl -> POST jobs (nulls dropped); logs -> GET jobs/{id}/logs; artifacts ->
  GET jobs/{id}/artifacts; cancel --yes -> POST jobs/{id}/cancel. Responses are parsed with pydantic models
  (TrainingJob, TrainingJobList, TrainingCatalogResponse, User, Organization, Workspace, Project...).

Two compatibility points (docs/api.md): GET /api/v1/user carries `email_address` beside `email` (the SDK's User
model requires it, so every `dn` verb stops in its scope check without it), and the catalog leaves "grpo" out of
supported_algorithms for clients whose User-Agent is the SDK's (its TrainingModel enum accepts only sft /
importance_sampling / ppo); other clients get docs/spec.md §3.2's full list.
"""

import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile

import pytest

from conftest import LATHE_BIN, _start, _stop_all

DN = pathlib.Path(sys.executable).parent / "dn"
pytestmark = pytest.mark.skipif(not DN.exists(), reason="the dreadnode SDK (dn) is not installed in the test venv")


def targz(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def srv():
    tmp = tempfile.mkdtemp(prefix="lathe-dn-")
    servers = []
    s = _start(tmp, servers, args=["--workers", "0"])
    cp = subprocess.run([str(LATHE_BIN), "model", "init-tiny", str(s.data_dir / "models" / "tiny")],
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    pushes = {
        "datasets": {"dataset.yaml": "name: support\nversion: 0.1.0\nformat: jsonl\n",
                     "train.jsonl": '{"prompt": "2+2?", "answer": "4"}\n{"prompt": "3+3?", "answer": "6"}\n'},
        "capabilities": {"capability.yaml": "name: assistant\nversion: 1.0.0\ndescription: an assistant\n",
                         "agents/main.md": "You are helpful.\n"},
        "tasks": {"task.yaml": 'name: add\nversion: 0.1.0\ninstruction: "Add."\n'
                               'verification:\n  method: exact\n  expected: "4"\n'},
    }
    for kind, files in pushes.items():
        r = s.post("/api/v1/org/default/" + kind, data=targz(files), headers={"Content-Type": "application/gzip"})
        assert r.status_code == 201, r.text
    yield s
    _stop_all(servers)
    shutil.rmtree(tmp, ignore_errors=True)


def dn(srv, *args, scope=True, env=None, timeout=120):
    """Runs the real `dn` CLI with a private HOME and no DREADNODE_* settings from the caller."""
    home = tempfile.mkdtemp(prefix="lathe-dn-home-")
    e = {k: v for k, v in os.environ.items() if not k.startswith(("DREADNODE_", "LATHE_"))}
    e.update(HOME=home, NO_COLOR="1", COLUMNS="200")
    e.update(env or {})
    flags = ["--server", srv.url, "--api-key", srv.key, "--organization", "default", "--workspace", "main"] if scope else []
    try:
        return subprocess.run([str(DN), *map(str, args), *flags], capture_output=True, text=True, env=e,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def dn_json(srv, *args):
    cp = dn(srv, *args, "--json")
    assert cp.returncode == 0, (args, cp.stdout[-2000:], cp.stderr[-2000:])
    return json.loads(cp.stdout)


def assert_user_has_sdk_fields(srv):
    # the SDK's User model requires these; without them every dn verb stops in Profile.validate_scope
    user = srv.get("/api/v1/user").json()
    missing = [k for k in ("id", "email_address", "username") if not isinstance(user.get(k), str)]
    assert not missing, missing


def catalog_algorithms(srv, user_agent):
    r = srv.get("/api/v1/training/catalog", headers={"User-Agent": user_agent})
    return {a for m in r.json()["models"] for a in m.get("supported_algorithms", [])}


def progress(srv, jid, body):
    r = srv.post("/api/v1/org/default/ws/main/training/jobs/%s/progress" % jid, json=body)
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------------------------------------------------------
# The SDK's ApiClient: every route `dn train` uses, parsed by the SDK's own pydantic models
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(srv):
    from dreadnode.app.api.client import ApiClient

    return ApiClient(srv.url, api_key=srv.key)


def test_scope_routes_parse_as_sdk_models(srv, api):
    org = api.get_organization("default")
    assert org.key == "default" and org.id
    ws = api.get_workspace("default", "main")
    assert ws.key == "main" and ws.is_default and ws.org_id == org.id
    listed = api.list_workspaces("default")
    assert [w.key for w in listed] == ["main"]
    proj = api.get_project("default", "main", "default")
    assert proj.key == "default" and proj.is_default and proj.workspace_id == ws.id
    from dreadnode.app.api.client import NotFoundError

    with pytest.raises(NotFoundError):
        api.get_project("default", "main", "nope")
    with pytest.raises(NotFoundError):  # not a member: 404, never reveals the org
        api.get_organization("someone-elses")


def test_sdk_user_model(srv, api):
    assert_user_has_sdk_fields(srv)
    user = api.get_user()
    assert user.email_address and user.id


def test_training_routes_parse_as_sdk_models(srv, api):
    from dreadnode.app.api import models as m
    from dreadnode.app.api.client import ConflictError, NotFoundError

    req = m.CreateTinkerSFTJobRequest(
        name="sdk-sft", model="tiny", tags=["sdk"],
        capability_ref=m.CapabilityRef(name="assistant", version="1.0.0"),
        config=m.TinkerSFTJobConfig(dataset_ref=m.DatasetRef(name="support", version="0.1.0"), steps=2, lora_rank=4))
    job = api.create_training_job("default", "main", req)
    assert job.status == "queued" and job.backend == "tinker" and job.trainer_type == "sft"
    assert job.capability.name == "assistant" and job.capability.version == "1.0.0"
    assert job.dataset_ref == m.DatasetRef(name="support", version="0.1.0") and job.tags == ["sdk"]
    assert job.config["lora_rank"] == 4 and job.created_by_user and job.created_by_user.email
    got = api.get_training_job("default", "main", job.id)
    assert got.id == job.id and got.created_at == job.created_at
    page = api.list_training_jobs("default", "main", page=1, page_size=5, status="queued", backend="tinker",
                                  trainer_type="sft", project_ref="default")
    assert job.id in [j.id for j in page.items] and page.page_size == 5
    logs = api.list_training_job_logs("default", "main", job.id)
    assert logs.items and logs.items[0].level in ("debug", "info", "warning", "error")
    assert api.get_training_job_artifacts("default", "main", job.id).artifacts == {}
    rl = api.create_training_job("default", "main", m.CreateTinkerRLJobRequest(
        model="tiny", capability_ref=m.CapabilityRef(name="assistant", version="1.0.0"),
        config=m.TinkerRLJobConfig(algorithm="importance_sampling", task_ref="add@0.1.0",
                                   prompt_dataset_ref=m.DatasetRef(name="support", version="0.1.0"),
                                   reward_recipe=m.RewardRecipe(name="exact_match_v1", params={}))))
    assert rl.algorithm == "importance_sampling" and rl.task_ref == "add@0.1.0"
    assert api.cancel_training_job("default", "main", job.id).status == "cancelled"
    with pytest.raises(ConflictError):
        api.cancel_training_job("default", "main", job.id)
    again = api.retry_training_job("default", "main", job.id)
    assert again.status == "queued" and again.id == job.id
    with pytest.raises(NotFoundError):
        api.get_training_job("default", "main", "00000000-0000-4000-8000-000000000000")
    api.cancel_training_job("default", "main", job.id)
    api.cancel_training_job("default", "main", rl.id)


def test_rl_context_parses_as_sdk_model(srv, api):
    """E9 is the sandbox runner's route (dreadnode.training.jobs), not a dn verb; its model forbids extra keys."""
    from dreadnode.app.api import models as m

    rl = api.create_training_job("default", "main", m.CreateTinkerRLJobRequest(
        model="tiny", capability_ref=m.CapabilityRef(name="assistant", version="1.0.0"),
        config=m.TinkerRLJobConfig(algorithm="ppo", task_ref="add",
                                   prompt_dataset_ref=m.DatasetRef(name="support", version="0.1.0"))))
    raw = srv.get("/api/v1/org/default/ws/main/training/jobs/%s/rl-context" % rl.id).json()
    api.cancel_training_job("default", "main", rl.id)
    bad = [k for k in ("id", "reference", "name", "version", "sandbox_provider", "s3_key")
           if not isinstance((raw.get("task") or {}).get(k), str)]
    assert not bad, {k: raw["task"].get(k) for k in bad}
    ctx = m.TrainingRLContext(**raw)
    assert ctx.task.reference == "add@0.1.0" and ctx.capability_entry_prompt == "You are helpful."


def test_catalog_parses_as_sdk_model(srv, api):
    # docs/spec.md §3.2 lists "grpo"; the SDK's TrainingModel enum has no such value, so the server leaves it out for
    # clients that identify as the SDK (docs/api.md) and keeps it for everyone else
    assert "grpo" in catalog_algorithms(srv, "lathe-cli/0.1.0")
    assert "grpo" not in catalog_algorithms(srv, "dreadnode-sdk/2.0.52")
    cat = api.get_training_catalog(limit=5)
    assert [x.tinker_id for x in cat.models] == ["tiny"] and cat.limit == 5


# ---------------------------------------------------------------------------------------------------------------
# The `dn` CLI itself
# ---------------------------------------------------------------------------------------------------------------


def test_dn_needs_server_with_api_key(srv):
    cp = dn(srv, "train", "list", "--api-key", srv.key, scope=False)
    assert cp.returncode != 0 and "--api-key requires --server" in (cp.stdout + cp.stderr)


def test_dn_user_agent_is_checked_by_min_client_version(lathe_server):
    s = lathe_server(env={"LATHE_MIN_CLIENT_VERSION": "dreadnode-sdk=99.0.0"}, args=["--workers", "0"])
    cp = dn(s, "train", "list")
    out = cp.stdout + cp.stderr
    assert cp.returncode != 0 and "426" in out, out[-2000:]


def test_dn_train_verbs(srv):
    # each dn start costs seconds (a large import), so one call per verb
    assert_user_has_sdk_fields(srv)
    job = dn_json(srv, "train", "sft", "--model", "tiny", "--capability", "assistant@1.0.0", "--dataset",
                  "support@0.1.0", "--steps", "2", "--batch-size", "1", "--learning-rate", "0.0001", "--lora-rank", "4",
                  "--lora-alpha", "8", "--checkpoint-interval", "1", "--name", "dn-sft", "--tag", "dn")
    jid = job["id"]
    assert job["status"] == "queued" and job["name"] == "dn-sft" and job["tags"] == ["dn"]
    assert job["config"]["batch_size"] == 1 and job["config"]["lora_alpha"] == 8
    rows = dn_json(srv, "train", "list")
    assert jid in [r["id"] for r in rows] and all(r["status"] == "queued" for r in rows if r["id"] == jid)
    assert dn_json(srv, "train", "get", jid)["id"] == jid
    assert dn_json(srv, "train", "logs", jid)["items"]
    assert dn_json(srv, "train", "artifacts", jid) == {"artifacts": {}}
    rl = dn_json(srv, "train", "rl", "--model", "tiny", "--capability", "assistant@1.0.0", "--algorithm", "ppo",
                 "--prompt-dataset", "support@0.1.0", "--task", "add@0.1.0", "--reward-recipe", "contains_v1",
                 "--reward-params", '{"needle": "4"}', "--steps", "1")
    assert rl["trainer_type"] == "rl" and rl["config"]["reward_recipe"]["params"] == {"needle": "4"}
    # wait: the job ends (pushed by a worker-scoped key here), dn exits 0 for completed
    progress(srv, jid, {"event_type": "training_start"})
    progress(srv, jid, {"event_type": "step_complete", "metrics": {"steps": [1], "train/loss": [1.5]}})
    progress(srv, jid, {"event_type": "training_end", "metrics": {"train/loss_last": 1.5}})
    done = dn_json(srv, "train", "wait", jid, "--poll-interval-sec", "0.2")
    assert done["status"] == "completed" and done["metrics"]["train/loss"] == [1.5]
    cancelled = dn_json(srv, "train", "cancel", rl["id"], "--yes")
    assert cancelled["status"] == "cancelled"
    cp = dn(srv, "train", "get", "00000000-0000-4000-8000-000000000000")
    assert cp.returncode != 0 and "404" in (cp.stdout + cp.stderr)


def test_dn_catalog(srv):
    assert_user_has_sdk_fields(srv)
    cat = dn_json(srv, "train", "catalog")
    assert [x["tinker_id"] for x in cat["models"]] == ["tiny"]
