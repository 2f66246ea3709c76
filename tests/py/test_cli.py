"""The lathe client verbs (`lathe login`, `lathe train ...`, `lathe dataset|capability|task ...`) against a real
`lathe serve` (conftest.py's LatheServer, started with --workers 0 so jobs stay where the test puts them).

Covers: login writes a 0600 config and later verbs use it; flag > environment > config file; exit codes (0 ok,
1 failed operation, 2 usage, 3 connection/auth, 4 not found); artifact push/list/show/pull/delete for the three
kinds; train sft/rl/grpo submit with every knob flag (the body the server stored is checked field by field);
list/get/logs/artifacts/checkpoints/cancel/retry/delete/catalog; wait; watch over the SSE stream while a
worker-scoped key pushes progress events; --json output of every verb parses; --help of every verb.
"""

import json
import os
import pathlib
import queue
import shutil
import stat
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import LATHE_BIN, _start, _stop_all

TRAIN_VERBS = ["sft", "rl", "grpo", "list", "get", "wait", "watch", "logs", "artifacts", "checkpoints", "pull",
               "cancel", "retry", "delete", "catalog"]
ARTIFACT_VERBS = ["push", "list", "show", "pull", "delete"]


@pytest.fixture(scope="module")
def srv():
    tmp = tempfile.mkdtemp(prefix="lathe-cli-")
    servers = []
    s = _start(tmp, servers, args=["--workers", "0"])
    cp = subprocess.run([str(LATHE_BIN), "model", "init-tiny", str(s.data_dir / "models" / "tiny")],
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    yield s
    _stop_all(servers)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def home():
    """A config home no test leaves a file in by accident (each login test uses its own)."""
    d = tempfile.mkdtemp(prefix="lathe-cli-home-")
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


def lathe(*args, srv=None, env=None, home=None, input=None, timeout=120):
    """Runs the lathe binary. With srv: LATHE_SERVER / LATHE_API_KEY point at it. The caller's LATHE_* and config
    never leak in: XDG_CONFIG_HOME and HOME point at `home` (a temp dir when None)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("LATHE_")}
    tmp = None
    if home is None:
        tmp = tempfile.mkdtemp(prefix="lathe-cli-h-")
        home = tmp
    e["XDG_CONFIG_HOME"] = str(home)
    e["HOME"] = str(home)
    if srv is not None:
        e["LATHE_SERVER"] = srv.url
        e["LATHE_API_KEY"] = srv.key
    e.update(env or {})
    try:
        return subprocess.run([str(LATHE_BIN), *map(str, args)], capture_output=True, text=True, env=e,
                              input=input, timeout=timeout)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def ok_json(cp):
    assert cp.returncode == 0, (cp.returncode, cp.stdout, cp.stderr)
    return json.loads(cp.stdout)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture(scope="module")
def artifacts(srv):
    """Pushes a dataset (two versions' worth of names), a capability and a task through the CLI."""
    root = pathlib.Path(tempfile.mkdtemp(prefix="lathe-cli-art-"))
    write(root / "ds" / "dataset.yaml", "name: support\nversion: 0.1.0\nsummary: support chats\nformat: jsonl\n")
    write(root / "ds" / "train.jsonl",
          '{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}\n'
          '{"prompt":"2+2?","answer":"4"}\n')
    write(root / "prompts" / "dataset.yaml", "name: prompts\nversion: 1.0.0\nformat: jsonl\n")
    write(root / "prompts" / "train.jsonl", '{"prompt":"2+2?","expected_output":"4"}\n{"prompt":"3+3?","expected_output":"6"}\n')
    write(root / "cap" / "capability.yaml", "name: assistant\nversion: 1.0.0\ndescription: a helpful assistant\n")
    write(root / "cap" / "agents" / "main.md", "---\ntitle: main\n---\nYou are helpful.\n")
    write(root / "task" / "task.yaml",
          'name: add\nversion: 0.1.0\ninstruction: "Add the numbers."\nverification:\n  method: exact\n  expected: "4"\n')
    out = {}
    for kind, d in (("dataset", "ds"), ("dataset", "prompts"), ("capability", "cap"), ("task", "task")):
        out[d] = ok_json(lathe(kind, "push", root / d, "--json", srv=srv))
    yield root, out
    shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# help, usage errors
# ---------------------------------------------------------------------------------------------------------------


def test_every_verb_has_help():
    cp = lathe("train", "--help")
    assert cp.returncode == 0
    for v in TRAIN_VERBS:
        assert "  " + v in cp.stdout, v
        h = lathe("train", v, "--help")
        assert h.returncode == 0 and "--json" in h.stdout and "--server URL" in h.stdout, (v, h.stdout)
    for kind in ("dataset", "capability", "task"):
        for v in ARTIFACT_VERBS:
            h = lathe(kind, v, "--help")
            assert h.returncode == 0 and "usage: lathe %s %s" % (kind, v) in h.stdout
    h = lathe("login", "--help")
    assert h.returncode == 0 and "--api-key KEY" in h.stdout
    # every sft/rl knob of the upstream CLI is a flag here
    sft = lathe("train", "sft", "--help").stdout
    for f in ("--model", "--capability", "--dataset", "--trajectory-dataset", "--eval-dataset", "--name",
              "--project-ref", "--run-ref", "--tag", "--max-sequence-length", "--batch-size",
              "--gradient-accumulation-steps", "--learning-rate", "--steps", "--epochs", "--lora-rank",
              "--lora-alpha", "--checkpoint-interval", "--wait", "--poll-interval-sec", "--timeout-sec"):
        assert f + " " in sft, f
    rl = lathe("train", "rl", "--help").stdout
    for f in ("--algorithm", "--prompt-dataset", "--world-manifest-id", "--world-runtime-id", "--world-agent-name",
              "--world-goal", "--task", "--reward-recipe", "--reward-params", "--world-reward",
              "--world-reward-params", "--execution-mode", "--prompt-split", "--max-turns", "--max-episode-steps",
              "--num-rollouts", "--weight-sync-interval", "--max-steps-off-policy", "--max-new-tokens",
              "--temperature", "--stop", "--eval-interval", "--eval-max-rollouts"):
        assert f + " " in rl, f


@pytest.mark.parametrize("args, needle", [
    (["train"], "usage: lathe train"),
    (["train", "frobnicate"], "unknown verb 'frobnicate'"),
    (["train", "sft", "--bogus"], "unknown option '--bogus'"),
    (["train", "sft", "--steps", "ten"], "--steps expects an integer, got 'ten'"),
    (["train", "sft", "--learning-rate", "fast"], "--learning-rate expects a number"),
    (["train", "get"], "expected 1 argument, got 0"),
    (["train", "get", "a", "b"], "expected 1 argument, got 2"),
    (["train", "list", "--page"], "--page needs a value"),
    (["dataset", "pull", "no-version"], "expects NAME@VERSION"),
    (["train", "sft", "--model", "tiny"], "--model and --capability NAME@VERSION are required"),
    (["train", "sft", "--model", "tiny", "--capability", "nover"], "--capability expects NAME@VERSION"),
    (["train", "rl", "--model", "tiny", "--capability", "c@1.0.0"], "--algorithm importance_sampling|ppo"),
    (["train", "rl", "--model", "m", "--capability", "c@1.0.0", "--algorithm", "ppo", "--reward-recipe", "x",
      "--reward-params", "[1]"], "--reward-params must be a JSON object"),
    (["train", "list", "--server", "ftp://x"], "must start with http://"),
    # an empty connection option is an error, never the default (`train get --org= JOB` used the default org)
    (["train", "get", "--org=", "job-1"], "--org is empty"),
    (["train", "get", "--workspace", "", "job-1"], "--workspace is empty"),
    (["dataset", "list", "--project="], "--project is empty"),
    (["login", "--org="], "--org is empty"),
    # misplaced arguments: a verb option before the verb, an extra argument
    (["train", "--status", "queued", "list"], "'--status' comes before the verb"),
    (["train", "list", "extra"], "unexpected argument 'extra'"),
    (["train", "list", "get"], "unexpected argument 'get' (that is another verb"),
    (["train", "--server"], "--server needs a value"),
])
def test_usage_errors_exit_2(args, needle):
    cp = lathe(*args, env={"LATHE_SERVER": "http://127.0.0.1:9"})
    assert cp.returncode == 2, (cp.returncode, cp.stdout, cp.stderr)
    assert needle in cp.stderr, cp.stderr


def test_connection_options_before_the_verb(srv):
    """--server, --api-key, --org, --json... may come before the verb as well as after it: same output."""
    after = lathe("train", "list", "--json", "--server", srv.url, "--org", "default", srv=srv)
    before = lathe("train", "--server", srv.url, "--org=default", "--json", "list", srv=srv)
    assert before.returncode == 0 and before.stdout == after.stdout, before.stderr
    h = lathe("train", "help", "get")
    assert h.returncode == 0 and h.stdout == lathe("train", "get", "--help").stdout


def test_local_trainer_is_not_a_server_call():
    cp = lathe("train", "sft", "--data", "/nonexistent.jsonl", "--out", "/tmp/x", env={"LATHE_SERVER": "http://127.0.0.1:9"})
    assert "cannot reach" not in cp.stderr and "unknown option '--data'" not in cp.stderr


# ---------------------------------------------------------------------------------------------------------------
# login, settings, exit codes 3 and 4
# ---------------------------------------------------------------------------------------------------------------


def test_login_writes_0600_config_used_later(srv, tmp_path):
    cp = lathe("login", "--server", srv.url + "/api/v1/", "--api-key", srv.key, "--workspace", "main", home=tmp_path)
    assert cp.returncode == 0, cp.stderr
    cfg = tmp_path / "lathe" / "config"
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    assert stat.S_IMODE(cfg.parent.stat().st_mode) == 0o700
    text = cfg.read_text()
    assert "server = %s\n" % srv.url in text and "api_key = %s\n" % srv.key in text, text
    assert "admin@" in cp.stdout or "logged in" in cp.stdout
    # no flags, no environment: the file is enough
    assert ok_json(lathe("train", "list", "--json", home=tmp_path))["page"] == 1
    # HOME/.config is used when XDG_CONFIG_HOME is unset
    e = {k: v for k, v in os.environ.items() if not k.startswith("LATHE_") and k != "XDG_CONFIG_HOME"}
    e["HOME"] = str(tmp_path / "h2")
    subprocess.run([str(LATHE_BIN), "login", "--server", srv.url, "--api-key", srv.key], env=e, check=True,
                   capture_output=True)
    assert (tmp_path / "h2" / ".config" / "lathe" / "config").exists()
    # key from stdin
    cp = lathe("login", "--server", srv.url, "--json", home=tmp_path / "h3", input=srv.key + "\n")
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["server"] == srv.url


def test_login_refuses_bad_key_and_keeps_file(srv, tmp_path):
    assert lathe("login", "--server", srv.url, "--api-key", srv.key, home=tmp_path).returncode == 0
    before = (tmp_path / "lathe" / "config").read_text()
    cp = lathe("login", "--server", srv.url, "--api-key", "lk_" + "x" * 40, home=tmp_path)
    assert cp.returncode == 3, cp.stderr
    assert "401 authentication_error" in cp.stderr
    assert (tmp_path / "lathe" / "config").read_text() == before
    assert lathe("login", "--server", srv.url, home=tmp_path / "empty", input="").returncode == 2


def test_env_overrides_file_and_flag_overrides_env(srv, tmp_path):
    write(tmp_path / "lathe" / "config", "server = %s\napi_key = lk_%s\n" % (srv.url, "0" * 40))
    assert lathe("train", "list", home=tmp_path).returncode == 3  # the file's key is bad
    cp = lathe("train", "list", "--json", home=tmp_path, env={"LATHE_API_KEY": srv.key})
    assert cp.returncode == 0, cp.stderr  # env beats the file
    cp = lathe("train", "list", "--api-key", "lk_" + "1" * 40, home=tmp_path, env={"LATHE_API_KEY": srv.key})
    assert cp.returncode == 3  # the flag beats env
    cp = lathe("train", "list", "--json", "--server", "http://127.0.0.1:9", home=tmp_path,
               env={"LATHE_API_KEY": srv.key, "LATHE_SERVER": srv.url})
    assert cp.returncode == 3 and "cannot reach the server at http://127.0.0.1:9" in cp.stderr
    # --org / LATHE_ORG select the org: an unknown one is a 404
    cp = lathe("train", "list", "--org", "nope", home=tmp_path, env={"LATHE_API_KEY": srv.key})
    assert cp.returncode == 4 and "404 not_found" in cp.stderr
    cp = lathe("train", "list", home=tmp_path, env={"LATHE_API_KEY": srv.key, "LATHE_WORKSPACE": "nope"})
    assert cp.returncode == 4


def test_no_key_is_exit_3(srv):
    cp = lathe("train", "list", env={"LATHE_SERVER": srv.url})
    assert cp.returncode == 3 and "check the API key" in cp.stderr


# ---------------------------------------------------------------------------------------------------------------
# artifacts
# ---------------------------------------------------------------------------------------------------------------


def test_artifact_push_list_show_pull(srv, artifacts, tmp_path):
    root, pushed = artifacts
    assert pushed["ds"]["name"] == "support" and pushed["ds"]["version"] == "0.1.0"
    assert pushed["ds"]["splits"] == {"train": 2}
    assert pushed["ds"]["digest"].startswith("sha256:")
    assert pushed["cap"]["name"] == "assistant" and pushed["task"]["name"] == "add"

    names = [i["name"] for i in ok_json(lathe("dataset", "list", "--json", srv=srv))["items"]]
    assert {"support", "prompts"} <= set(names)
    cp = lathe("dataset", "list", srv=srv)
    assert cp.returncode == 0 and "support" in cp.stdout and "0.1.0" in cp.stdout
    assert [i["name"] for i in ok_json(lathe("capability", "list", "--json", srv=srv))["items"]] == ["assistant"]
    assert [i["name"] for i in ok_json(lathe("task", "list", "--json", srv=srv))["items"]] == ["add"]

    art = ok_json(lathe("dataset", "show", "support", "--json", srv=srv))
    assert [v["version"] for v in art["versions"]] == ["0.1.0"]
    ver = ok_json(lathe("dataset", "show", "support@0.1.0", "--json", srv=srv))
    assert ver["digest"] == pushed["ds"]["digest"]
    cp = lathe("dataset", "show", "support@0.1.0", srv=srv)
    assert "splits:    train=2" in cp.stdout and "support chats" in cp.stdout

    for kind, name, d in (("dataset", "support@0.1.0", "ds"), ("capability", "assistant@1.0.0", "cap"),
                          ("task", "add@0.1.0", "task")):
        out = tmp_path / d
        cp = lathe(kind, "pull", name, out, srv=srv)
        assert cp.returncode == 0, cp.stderr
        for f in (root / d).rglob("*"):
            if f.is_file():
                assert (out / f.relative_to(root / d)).read_bytes() == f.read_bytes(), f
    # the same tree packs to the same bytes: pushing it again is the same version, refused as a duplicate
    cp = lathe("dataset", "push", root / "ds", srv=srv)
    assert cp.returncode == 1 and "409 conflict" in cp.stderr
    # default pull dir is the name
    cp = lathe("task", "pull", "add@0.1.0", "--json", srv=srv)
    got = json.loads(cp.stdout)
    assert got["dir"] == "add" and got["files"] >= 1
    shutil.rmtree("add", ignore_errors=True)


def test_artifact_errors(srv, artifacts, tmp_path):
    assert lathe("dataset", "show", "nothere", srv=srv).returncode == 4
    assert lathe("dataset", "show", "support@9.9.9", srv=srv).returncode == 4
    assert lathe("dataset", "pull", "support@9.9.9", tmp_path / "x", srv=srv).returncode == 4
    bad = tmp_path / "bad"
    write(bad / "dataset.yaml", "name: bad\nversion: 0.1.0\nformat: jsonl\n")
    write(bad / "train.jsonl", '{"messages":[{"role":"user","content":"hi"}]}\nnot json\n')
    cp = lathe("dataset", "push", bad, srv=srv)
    assert cp.returncode == 1, cp.stderr
    assert "422" in cp.stderr and "archive" in cp.stderr, cp.stderr
    cp = lathe("dataset", "push", tmp_path / "missing-dir", srv=srv)
    assert cp.returncode == 1 and "missing-dir" in cp.stderr


def test_artifact_delete(srv, tmp_path):
    d = tmp_path / "gone"
    write(d / "dataset.yaml", "name: gone\nversion: 0.2.0\nformat: jsonl\n")
    write(d / "train.jsonl", '{"prompt":"a","answer":"b"}\n')
    ok_json(lathe("dataset", "push", d, "--json", srv=srv))
    cp = lathe("dataset", "delete", "gone@0.2.0", srv=srv)
    assert cp.returncode == 0, cp.stderr
    assert lathe("dataset", "show", "gone@0.2.0", srv=srv).returncode == 4


# ---------------------------------------------------------------------------------------------------------------
# training jobs
# ---------------------------------------------------------------------------------------------------------------

SEED_FLAGS = ["--batch-size", "1", "--checkpoint-interval", "1", "--epochs", "1", "--gradient-accumulation-steps", "1",
              "--learning-rate", "1", "--lora-alpha", "1", "--lora-rank", "1", "--max-sequence-length", "1",
              "--steps", "1", "--name", "seed-like", "--project-ref", "default", "--run-ref", "run-1",
              "--tag", "example", "--tags", "a, b"]


def submit_sft(srv, *extra):
    return ok_json(lathe("train", "sft", "--model", "tiny", "--capability", "assistant@1.0.0",
                         "--dataset", "support@0.1.0", "--json", *extra, srv=srv))


def test_sft_submit_with_every_knob(srv, artifacts):
    job = submit_sft(srv, "--eval-dataset", "support@0.1.0", "--trajectory-dataset", "support@0.1.0", *SEED_FLAGS)
    assert job["status"] == "queued" and job["backend"] == "tinker" and job["trainer_type"] == "sft"
    assert job["config"] == {
        "dataset_ref": {"name": "support", "version": "0.1.0"},
        "eval_dataset_ref": {"name": "support", "version": "0.1.0"},
        "trajectory_dataset_refs": [{"name": "support", "version": "0.1.0"}],
        "batch_size": 1, "checkpoint_interval": 1, "epochs": 1, "gradient_accumulation_steps": 1,
        "learning_rate": 1, "lora_alpha": 1, "lora_rank": 1, "max_sequence_length": 1, "steps": 1,
    }, job["config"]
    assert job["name"] == "seed-like" and job["run_ref"] == "run-1" and job["project_ref"] == "default"
    assert job["tags"] == ["example", "a", "b"]
    assert job["capability"]["name"] == "assistant" and job["capability"]["version"] == "1.0.0"
    # the human view
    cp = lathe("train", "get", job["id"], srv=srv)
    assert cp.returncode == 0 and job["id"] in cp.stdout and "status:      queued" in cp.stdout
    assert "capability:  assistant@1.0.0" in cp.stdout


def test_rl_and_grpo_submit(srv, artifacts):
    rl = ok_json(lathe("train", "rl", "--model", "tiny", "--capability", "assistant@1.0.0", "--algorithm", "ppo",
                       "--prompt-dataset", "prompts@1.0.0", "--task", "add@0.1.0", "--reward-recipe", "contains_v1",
                       "--reward-params", '{"needle": "4"}', "--execution-mode", "fully_async",
                       "--max-steps-off-policy", "2", "--num-rollouts", "4", "--batch-size", "2",
                       "--temperature", "0.7", "--stop", "\n\n", "--stop", "END", "--max-new-tokens", "16",
                       "--steps", "2", "--json", srv=srv))
    cfg = rl["config"]
    assert rl["trainer_type"] == "rl" and rl["backend"] == "tinker" and rl["algorithm"] == "ppo"
    assert cfg["reward_recipe"] == {"name": "contains_v1", "params": {"needle": "4"}}
    assert cfg["stop"] == ["\n\n", "END"] and cfg["temperature"] == 0.7 and cfg["max_steps_off_policy"] == 2
    assert cfg["prompt_dataset_ref"] == {"name": "prompts", "version": "1.0.0"} and cfg["task_ref"] == "add@0.1.0"
    grpo = ok_json(lathe("train", "grpo", "--model", "tiny", "--capability", "assistant@1.0.0", "--task", "add",
                         "--prompt-dataset", "prompts@1.0.0", "--execution-mode", "colocated", "--num-rollouts", "4",
                         "--batch-size", "2", "--json", srv=srv))
    assert grpo["backend"] == "ray" and grpo["trainer_type"] == "rl"
    assert grpo["config"]["execution_mode"] == "colocated"
    # a rule broken server-side: 422 printed item by item, exit 1
    cp = lathe("train", "rl", "--model", "tiny", "--capability", "assistant@1.0.0", "--algorithm", "ppo",
               "--world-runtime-id", "rt", srv=srv)
    assert cp.returncode == 1 and "422 validation_error" in cp.stderr, cp.stderr
    assert "  body.config" in cp.stderr


def test_job_lifecycle_verbs(srv, artifacts):
    job = submit_sft(srv, "--steps", "2", "--tag", "lifecycle")
    jid = job["id"]
    listed = ok_json(lathe("train", "list", "--json", "--tag", "lifecycle", srv=srv))
    assert [j["id"] for j in listed["items"]] == [jid]
    assert all(j["status"] == "queued" for j in ok_json(lathe("train", "list", "--json", "--status", "queued",
                                                              srv=srv))["items"])
    page = ok_json(lathe("train", "list", "--json", "--page-size", "1", srv=srv))
    assert page["page_size"] == 1 and len(page["items"]) == 1
    assert jid in lathe("train", "list", srv=srv).stdout
    assert ok_json(lathe("train", "get", jid, "--json", srv=srv))["id"] == jid

    logs = ok_json(lathe("train", "logs", jid, "--json", srv=srv))
    assert logs["items"] and all("seq" in e and "message" in e for e in logs["items"])
    one = ok_json(lathe("train", "logs", jid, "--limit", "1", "--json", srv=srv))
    assert len(one["items"]) == 1
    assert ok_json(lathe("train", "artifacts", jid, "--json", srv=srv))["artifacts"] == {}
    assert ok_json(lathe("train", "checkpoints", jid, "--json", srv=srv))["items"] == []
    cp = lathe("train", "pull", jid, "out", srv=srv)
    assert cp.returncode == 4 and "no checkpoints" in cp.stderr

    cp = lathe("train", "cancel", jid, "--yes", srv=srv)
    assert cp.returncode == 0 and "cancelled" in cp.stdout
    cp = lathe("train", "cancel", jid, srv=srv)
    assert cp.returncode == 1 and "409 conflict" in cp.stderr
    assert lathe("train", "wait", jid, "--poll-interval-sec", "0.2", srv=srv).returncode == 1  # cancelled != completed
    retried = ok_json(lathe("train", "retry", jid, "--json", srv=srv))
    assert retried["status"] == "queued" and retried["attempt"] == 2
    assert lathe("train", "retry", jid, srv=srv).returncode == 1  # not terminal
    assert lathe("train", "delete", jid, srv=srv).returncode == 1  # active
    cp = lathe("train", "wait", jid, "--poll-interval-sec", "0.2", "--timeout-sec", "1", srv=srv)
    assert cp.returncode == 1 and "gave up waiting" in cp.stderr
    assert lathe("train", "cancel", jid, srv=srv).returncode == 0
    assert lathe("train", "delete", jid, srv=srv).returncode == 0
    assert lathe("train", "get", jid, srv=srv).returncode == 4
    assert lathe("train", "get", "00000000-0000-4000-8000-000000000000", srv=srv).returncode == 4


def test_idempotency_key(srv, artifacts):
    a = submit_sft(srv, "--idempotency-key", "cli-idem-1")
    b = submit_sft(srv, "--idempotency-key", "cli-idem-1")
    assert a["id"] == b["id"]
    cp = lathe("train", "sft", "--model", "tiny", "--capability", "assistant@1.0.0", "--dataset", "support@0.1.0",
               "--steps", "3", "--idempotency-key", "cli-idem-1", srv=srv)
    assert cp.returncode == 1 and "409" in cp.stderr
    lathe("train", "cancel", a["id"], srv=srv)


def test_catalog(srv):
    cat = ok_json(lathe("train", "catalog", "--json", srv=srv))
    assert [m["tinker_id"] for m in cat["models"]] == ["tiny"]
    assert cat["models"][0]["family"] == "llama"
    cp = lathe("train", "catalog", "--query", "tiny", "--limit", "5", srv=srv)
    assert cp.returncode == 0 and "tiny" in cp.stdout and "sft" in cp.stdout
    assert ok_json(lathe("train", "catalog", "--family", "qwen", "--json", srv=srv))["models"] == []


def _progress(srv, jid, body):
    r = srv.post("/api/v1/org/default/ws/main/training/jobs/%s/progress" % jid, json=body)
    assert r.status_code == 200, r.text


def test_watch_and_wait_follow_progress_events(srv, artifacts):
    job = submit_sft(srv, "--steps", "2")
    jid = job["id"]
    e = {k: v for k, v in os.environ.items() if not k.startswith("LATHE_")}
    e.update(LATHE_SERVER=srv.url, LATHE_API_KEY=srv.key, XDG_CONFIG_HOME=tempfile.gettempdir() + "/nonexistent-h7")
    p = subprocess.Popen([str(LATHE_BIN), "train", "watch", jid], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=e)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in p.stdout] and None, daemon=True).start()
    seen = []

    def until(needle):  # reads watch's output until a line holds needle (the server coalesces fast events)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                ln = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            seen.append(ln)
            if needle in ln:
                return
        raise AssertionError("watch never printed %r; got %r" % (needle, seen))

    try:
        until("queued")  # the snapshot line: the stream is open
        _progress(srv, jid, {"event_type": "training_start", "message": "started", "data": {"total_steps": 2}})
        _progress(srv, jid, {"event_type": "step_complete", "message": "step 1",
                             "metrics": {"steps": [1], "train/loss": [2.5], "train/tokens_per_s": [1000.0]}})
        until("loss 2.5000")
        _progress(srv, jid, {"event_type": "step_complete", "message": "step 2",
                             "metrics": {"steps": [2], "train/loss": [1.25], "train/tokens_per_s": [1000.0]}})
        until("loss 1.2500")
        _progress(srv, jid, {"event_type": "training_end", "message": "done",
                             "metrics": {"train/loss_last": 1.25, "train/steps": 2}})
        p.wait(timeout=60)
        err = p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    time.sleep(0.2)
    while not lines.empty():
        seen.append(lines.get())
    out = "".join(seen)
    assert p.returncode == 0, (out, err)
    assert "step 1" in out and "step 2/2" in out, out
    assert "completed" in out and "train/loss_last" in out, out
    # wait on a completed job: exit 0 and the job printed
    cp = lathe("train", "wait", jid, "--json", "--poll-interval-sec", "0.1", srv=srv)
    assert cp.returncode == 0 and json.loads(cp.stdout)["status"] == "completed"
    # --json watch: one JSON object per event, ending with `end`
    cp = lathe("train", "watch", jid, "--json", srv=srv)
    events = [json.loads(line) for line in cp.stdout.splitlines()]
    assert events[0]["event"] == "snapshot" and events[-1]["event"] == "end", events
    assert cp.returncode == 0
    # a failed job: watch and wait exit 1
    job2 = submit_sft(srv, "--steps", "1")
    _progress(srv, job2["id"], {"event_type": "training_start"})
    _progress(srv, job2["id"], {"event_type": "training_error", "level": "error", "error": "row 3 is not JSON"})
    cp = lathe("train", "watch", job2["id"], srv=srv)
    assert cp.returncode == 1 and "row 3 is not JSON" in cp.stdout
    cp = lathe("train", "wait", job2["id"], srv=srv)
    assert cp.returncode == 1 and "row 3 is not JSON" in cp.stderr


def test_sft_wait_flag(srv, artifacts):
    # --wait returns once the job ends; a cancel from another client ends it
    e = {k: v for k, v in os.environ.items() if not k.startswith("LATHE_")}
    e.update(LATHE_SERVER=srv.url, LATHE_API_KEY=srv.key, XDG_CONFIG_HOME=tempfile.gettempdir() + "/nonexistent-h7")
    p = subprocess.Popen([str(LATHE_BIN), "train", "sft", "--model", "tiny", "--capability", "assistant@1.0.0",
                          "--dataset", "support@0.1.0", "--steps", "1", "--name", "waiter", "--wait",
                          "--poll-interval-sec", "0.2", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=e)
    try:
        deadline = time.time() + 30
        jid = None
        while time.time() < deadline and not jid:
            items = srv.get("/api/v1/org/default/ws/main/training/jobs?page_size=100").json()["items"]
            jid = next((j["id"] for j in items if j["name"] == "waiter"), None)
            time.sleep(0.1)
        assert jid
        assert srv.post("/api/v1/org/default/ws/main/training/jobs/%s/cancel" % jid).status_code == 200
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 1, err
    assert json.loads(out)["status"] == "cancelled" and "ended with status cancelled" in err


def test_reader_cannot_submit(srv, artifacts):
    key = srv.new_user("reader-cli@example.com", role="reader")
    cp = lathe("train", "sft", "--model", "tiny", "--capability", "assistant@1.0.0", "--dataset", "support@0.1.0",
               srv=srv, env={"LATHE_API_KEY": key})
    assert cp.returncode == 3 and "403 permission_denied" in cp.stderr
    assert lathe("train", "list", "--json", srv=srv, env={"LATHE_API_KEY": key}).returncode == 0


def test_pull_adapter_of_a_trained_job(lathe_server, tmp_path):
    """End to end with the in-process worker: train 2 steps on the tiny model, then `lathe train pull`."""
    s = lathe_server(args=["--workers", "1"])
    cp = subprocess.run([str(LATHE_BIN), "model", "init-tiny", str(s.data_dir / "models" / "tiny")],
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    d = tmp_path / "ds"
    write(d / "dataset.yaml", "name: pairs\nversion: 0.1.0\nformat: jsonl\n")
    write(d / "train.jsonl", "".join('{"prompt": "%d+1?", "answer": "%d"}\n' % (i, i + 1) for i in range(8)))
    write(tmp_path / "cap" / "capability.yaml", "name: assistant\nversion: 1.0.0\ndescription: helpful\n")
    assert lathe("dataset", "push", d, srv=s).returncode == 0
    assert lathe("capability", "push", tmp_path / "cap", srv=s).returncode == 0
    cp = lathe("train", "sft", "--model", "tiny", "--capability", "assistant@1.0.0", "--dataset", "pairs@0.1.0",
               "--steps", "2", "--batch-size", "2", "--lora-rank", "2", "--wait", "--poll-interval-sec", "0.5",
               "--timeout-sec", "300", "--json", srv=s, timeout=400)
    assert cp.returncode == 0, (cp.stdout[-2000:], cp.stderr[-2000:])
    job = json.loads(cp.stdout)
    assert job["status"] == "completed"
    ckpts = ok_json(lathe("train", "checkpoints", job["id"], "--json", srv=s))["items"]
    assert "final" in [c["name"] for c in ckpts]
    out = tmp_path / "adapter"
    got = ok_json(lathe("train", "pull", job["id"], out, "--json", srv=s))
    assert got["checkpoint"] == "final" and got["files"] >= 2
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 2
    from safetensors import safe_open

    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(".lora_A.weight" in k or ".lora_B.weight" in k for k in keys), keys[:5]


def test_login_checks_org_and_workspace(srv, tmp_path):
    cp = lathe("login", "--server", srv.url, "--api-key", srv.key, "--workspace", "nope", home=tmp_path)
    assert cp.returncode == 4 and "404 not_found" in cp.stderr, cp.stderr
    assert not (tmp_path / "lathe" / "config").exists()


def test_user_agent_names_the_cli(lathe_server):
    s = lathe_server(env={"LATHE_MIN_CLIENT_VERSION": "lathe-cli=99.0.0"}, args=["--workers", "0"])
    cp = lathe("train", "list", srv=s)
    assert cp.returncode == 1 and "426 upgrade_required" in cp.stderr, cp.stderr
