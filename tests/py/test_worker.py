"""The worker (src/worker/): jobs claimed from the queue and trained for real on a tiny model, by the workers
inside `lathe serve` and by a standalone `lathe worker`: results, failures with actionable errors, cancel,
crash and kill -9 with resume (bit-identical adapter), clean stop, retry, delete, shared base model.

Each test builds a tiny Llama-architecture model with `lathe model init-tiny` under the server's models dir and
pushes a small prompt/answer dataset and a capability through the API.
"""

import json
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import LATHE_BIN, LatheServer, store_env
from jobs_helpers import JOBS, checkpoints, download, get, jsonl, lathe, logs, push, wait_done, wait_until


# ---- helpers ----


def pair_rows(n, start=0, words=1):
    return [{"prompt": "%d+1?%s" % (i, " please" * (words - 1)), "answer": str(i + 1)} for i in range(start, start + n)]


def make_model(s, name="tiny"):
    lathe("model", "init-tiny", s.data_dir / "models" / name, "--init-std", "0.1")


def push_data(s, train=None, val=None, name="pairs"):
    train = train if train is not None else pair_rows(16)
    val = val if val is not None else pair_rows(4, start=100)
    files = {"dataset.yaml": "name: %s\nversion: 0.1.0\nformat: jsonl\nsplits:\n  train: train.jsonl\n"
             "  validation: val.jsonl\n" % name, "train.jsonl": jsonl(train), "val.jsonl": jsonl(val)}
    push(s, "datasets", files)
    if not s.get("/api/v1/org/default/capabilities/assistant").ok:
        push(s, "capabilities", {"capability.yaml": "name: assistant\nversion: 1.0.0\ndescription: helpful\n"})


def create(s, model="tiny", dataset="pairs", eval_ds=True, **cfg):
    config = {"dataset_ref": {"name": dataset, "version": "0.1.0"}, "batch_size": 4, "lora_rank": 4,
              "learning_rate": 0.01}
    if eval_ds:
        config["eval_dataset_ref"] = {"name": dataset, "version": "0.1.0"}
    config.update(cfg)
    r = s.post(JOBS, json={"backend": "tinker", "trainer_type": "sft", "model": model,
                           "capability_ref": {"name": "assistant", "version": "1.0.0"}, "config": config})
    assert r.status_code == 201, r.text
    return r.json()


def blob_files(data_dir):
    root = data_dir / "blobs" / "sha256"
    return {"sha256:" + p.parent.name + p.name for p in root.glob("*/*")} if root.exists() else set()


def stopped_server(data_dir, env=None, args=()):
    """A LatheServer the test manages itself (it may be killed with -9: the fixture would call that a failure)."""
    return LatheServer(data_dir, env=env, args=args)


def kill9(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


# ---- a job from start to end ----


def test_sft_end_to_end(lathe_server, tmp_path):
    s = lathe_server()
    make_model(s)
    push_data(s)
    job = create(s, steps=20, checkpoint_interval=5)
    assert job["status"] in ("queued", "running")
    job = wait_done(s, job["id"])
    assert job["status"] == "completed", job["error"]
    assert job["error"] is None and job["attempt"] == 1
    m = job["metrics"]
    assert m["steps"] == list(range(1, 21))
    for k in ("train/loss", "train/learning_rate", "train/num_sequences", "train/num_tokens", "train/tokens_per_s"):
        assert len(m[k]) == 20, k
    for k in ("train/loss_last", "train/loss_mean", "train/loss_best", "eval/loss"):
        assert isinstance(m[k], float), k
    assert m["train/steps"] == 20 and m["train/num_examples"] == 16 and m["eval/num_examples"] == 4
    p = job["progress"]
    assert p["step"] == p["total_steps"] == 20 and p["fraction"] == 1.0
    names = [c["name"] for c in checkpoints(s, job["id"])]
    assert names == ["checkpoint-1-step5", "checkpoint-2-step10", "checkpoint-3-step15", "checkpoint-4-step20", "final"]
    a = job["artifacts"]
    assert a["capability"] == "assistant@1.0.0" and a["dataset"] == "pairs@0.1.0" and a["eval_dataset"] == "pairs@0.1.0"
    assert a["trajectory_datasets"] == [] and a["checkpoints"] == names and a["latest_checkpoint"] == "final"
    assert a["adapter"] == {"format": "peft", "checkpoint": "final",
                            "download": JOBS.replace("default", "default", 1) + "/%s/checkpoints/final/download" % job["id"]}
    assert s.get(a["adapter"]["download"]).status_code == 200
    assert s.get(JOBS + "/%s/artifacts" % job["id"]).json()["artifacts"] == a
    msgs = [l["message"] for l in logs(s, job["id"])]
    assert "base model tiny loaded" in msgs and "training completed" in msgs
    assert not (s.data_dir / "work" / job["id"]).exists(), "the work dir is removed at the end"

    files = download(s, job["id"])
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(files)
    out = tmp_path / "adapter"
    out.mkdir()
    for n in ("adapter_config.json", "adapter_model.safetensors"):
        (out / n).write_bytes(files[n])
    assert json.loads(files["adapter_config.json"])["r"] == 4
    # the adapter scores the eval rows (as the role_colon format renders them) better than the base model
    model = s.data_dir / "models" / "tiny"
    base = tuned = 0.0
    for r in pair_rows(4, start=100):
        text = "User: %s\n\nAssistant: %s\n\n" % (r["prompt"], r["answer"])
        base += json.loads(lathe("model", "logprobs", model, "--text", text, "--json").stdout)["sum"]
        tuned += json.loads(lathe("model", "logprobs", model, "--adapter", out, "--text", text, "--json").stdout)["sum"]
    assert tuned > base + 1.0, (tuned, base)


def test_rl_jobs_run_with_their_artifacts(lathe_server):
    s = lathe_server()
    make_model(s)
    push_data(s, train=pair_rows(8))
    push(s, "tasks", {"task.yaml": "name: add\nversion: 1.0.0\ninstruction: add one\nverification:\n"
                      "  method: exact\n  expected: '2'\n"})
    common = {"model": "tiny", "capability_ref": {"name": "assistant", "version": "1.0.0"}}
    bodies = [
        {"backend": "tinker", "trainer_type": "rl", **common,
         "config": {"algorithm": "importance_sampling", "task_ref": "add",
                    "prompt_dataset_ref": {"name": "pairs", "version": "0.1.0"},
                    "reward_recipe": {"name": "contains_v1", "params": {"needle": "1"}}, "steps": 2,
                    "num_rollouts": 4, "batch_size": 2, "max_new_tokens": 8, "lora_rank": 4}},
        {"backend": "ray", "trainer_type": "rl", **common,
         "config": {"task_ref": "add", "prompt_dataset_ref": {"name": "pairs", "version": "0.1.0"}, "steps": 2,
                    "num_rollouts": 4, "batch_size": 2, "execution_mode": "colocated"}},
    ]
    for body, mode in zip(bodies, ("sync", "colocated")):
        r = s.post(JOBS, json=body)
        assert r.status_code == 201, r.text
        j = wait_done(s, r.json()["id"], timeout=240)
        assert j["status"] == "completed", j["error"]
        assert j["metrics"]["steps"] == [1, 2] and len(j["metrics"]["train/reward"]) == 2
        a = j["artifacts"]
        assert a["task"] == "add@1.0.0" and a["prompt_dataset"] == "pairs@0.1.0" and a["execution_mode"] == mode, a
        assert a["capability"] == "assistant@1.0.0" and a["latest_checkpoint"] == "final"
        assert a["adapter"]["checkpoint"] == "final" and "final" in a["checkpoints"]
        assert j["metrics"]["train/num_examples"] == 8  # the train split (the dataset has no other)


def test_sft_trains_on_every_row_shape(lathe_server):
    s = lathe_server()
    make_model(s)
    rows = [
        {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]},
        {"messages": [{"role": "user", "content": "Weather in Oslo?"},
                      {"role": "assistant", "content": "", "tool_calls": [
                          {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}]},
                      {"role": "tool", "tool_call_id": "c1", "content": "rain"},
                      {"role": "assistant", "content": "Rain."}]},
        {"question": "2+2?", "answer": "4"},
        {"steps": [{"step_id": 1, "source": "user", "message": "List files."},
                   {"step_id": 2, "source": "agent", "message": "", "reasoning_content": "use ls",
                    "tool_calls": [{"tool_call_id": "t1", "function_name": "bash", "arguments": {"cmd": "ls"}}],
                    "observation": {"results": [{"source_call_id": "t1", "content": "a.txt"}]}},
                   {"step_id": 3, "source": "agent", "message": "One file: a.txt."}], "success": True},
    ]
    push_data(s, train=rows, val=rows[:1], name="shapes")
    job = wait_done(s, create(s, dataset="shapes", steps=2, checkpoint_interval=2)["id"])
    assert job["status"] == "completed", job["error"]
    assert job["metrics"]["train/num_examples"] == 4, job["metrics"]
    assert all(x > 0 for x in job["metrics"]["train/num_tokens"])


def test_rl_prompt_split_picks_the_rows(lathe_server):
    s = lathe_server()
    make_model(s)
    push(s, "datasets", {"dataset.yaml": "name: split\nversion: 0.1.0\nformat: jsonl\nsplits:\n  train: train.jsonl\n"
                         "  hard: hard.jsonl\n", "train.jsonl": jsonl(pair_rows(8)),
                         "hard.jsonl": jsonl(pair_rows(3, start=500))})
    push_data(s)  # the capability
    body = {"backend": "tinker", "trainer_type": "rl", "model": "tiny",
            "capability_ref": {"name": "assistant", "version": "1.0.0"},
            "config": {"algorithm": "importance_sampling", "prompt_dataset_ref": {"name": "split", "version": "0.1.0"},
                       "reward_recipe": {"name": "exact_match_v1"}, "steps": 1, "num_rollouts": 2, "batch_size": 2,
                       "max_new_tokens": 4}}
    for split, n in ((None, 8), ("hard", 3)):
        if split:
            body["config"]["prompt_split"] = split
        r = s.post(JOBS, json=body)
        assert r.status_code == 201, r.text
        j = wait_done(s, r.json()["id"])
        assert j["status"] == "completed", j["error"]
        assert j["metrics"]["train/num_examples"] == n, (split, j["metrics"])
        assert any("%d prompts" % n in l["message"] for l in logs(s, j["id"])), split


# ---- failures ----


def test_rows_without_answers_fail_before_any_step(lathe_server):
    s = lathe_server()
    make_model(s)
    # prompt rows without an answer are accepted on upload (RL uses them), but SFT has nothing to learn from them
    push_data(s, train=[{"prompt": "%d+1?" % i} for i in range(4)])
    job = wait_done(s, create(s, steps=5)["id"])
    assert job["status"] == "failed"
    err = job["error"]
    assert "dataset pairs@0.1.0" in err and "split train" in err and "line 1" in err, err
    assert "no assistant answer" in err and "accepted shapes" in err, err
    assert job["metrics"].get("steps") in (None, []), "failed before any step"
    assert checkpoints(s, job["id"]) == []
    assert any(l["level"] == "error" and l["message"] == err for l in logs(s, job["id"]))


def test_unknown_model_is_404_at_submit(lathe_server):
    s = lathe_server(args=["--workers", "0"])
    make_model(s)
    push_data(s)
    r = s.post(JOBS, json={"backend": "tinker", "trainer_type": "sft", "model": "nope",
                           "capability_ref": {"name": "assistant", "version": "1.0.0"},
                           "config": {"dataset_ref": {"name": "pairs", "version": "0.1.0"}}})
    assert r.status_code == 404 and r.json()["errors"][0]["loc"] == ["body", "model"], r.text


def test_corrupt_weights_fail_the_job_and_the_server_stays_healthy(lathe_server):
    s = lathe_server()
    make_model(s)
    make_model(s, "tiny2")
    push_data(s)
    assert "tiny2" in [m["tinker_id"] for m in s.get("/api/v1/training/catalog").json()["models"]]
    w = s.data_dir / "models" / "tiny2" / "model.safetensors"
    os.truncate(w, w.stat().st_size // 2)
    job = wait_done(s, create(s, model="tiny2", steps=3)["id"])
    assert job["status"] == "failed"
    assert "cannot read base model weights" in job["error"] and "tiny2" in job["error"], job["error"]
    assert "models dir" in job["error"] and "truncated" in job["error"], job["error"]
    assert s.get("/healthz").status_code == 200
    good = wait_done(s, create(s, steps=3, checkpoint_interval=3)["id"])
    assert good["status"] == "completed", good["error"]


def test_disk_full_fails_the_job_with_what_to_free(lathe_server, tmp_path):
    data = tmp_path / "full"
    work = data / "work"
    work.mkdir(parents=True)
    cp = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(work)], capture_output=True, text=True)
    if cp.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (%s): the disk-full path needs one" % cp.stderr.strip())
    try:
        s = lathe_server(name="full")
        make_model(s)
        push_data(s)
        job = wait_done(s, create(s, steps=4, checkpoint_interval=2)["id"])
        assert job["status"] == "failed"
        assert "no space left on device" in job["error"] and "free disk space" in job["error"], job["error"]
        assert str(data) in job["error"]
        assert s.get("/healthz").status_code == 200
        assert s.stop() == 0
    finally:
        subprocess.run(["umount", "-l", str(work)], capture_output=True)


def test_cancel_mid_run_stops_within_a_step_and_keeps_a_checkpoint(lathe_server):
    s = lathe_server()
    make_model(s)
    push_data(s, train=pair_rows(64, words=20))
    job = create(s, steps=2000, checkpoint_interval=100000, eval_ds=False, batch_size=16)
    j = wait_until(s, job["id"], lambda j: j["progress"]["step"] >= 3, what="step 3")
    r = s.post(JOBS + "/%s/cancel" % job["id"])
    assert r.status_code == 200, r.text
    at_cancel = r.json()["progress"]["step"]
    j = wait_done(s, job["id"])
    assert j["status"] == "cancelled" and j["cancel_requested_at"] and j["completed_at"]
    assert len(j["metrics"]["steps"]) <= at_cancel + 2, (at_cancel, j["metrics"]["steps"][-3:])
    ck = checkpoints(s, job["id"])
    assert ck and ck[-1]["step"] == j["metrics"]["steps"][-1], ck
    assert j["artifacts"]["latest_checkpoint"] == ck[-1]["name"]
    assert not (s.data_dir / "work" / job["id"]).exists()


# ---- crash, kill -9, clean stop: resume bit for bit ----

RESUME_CFG = dict(steps=24, checkpoint_interval=6, eval_ds=False, batch_size=16)


def resume_data(s):
    make_model(s)
    push_data(s, train=pair_rows(48, words=24))


def final_adapter(s, jid):
    return download(s, jid)["adapter_model.safetensors"]


def check_resumed(s, jid):
    j = wait_done(s, jid)
    assert j["status"] == "completed", j["error"]
    assert j["attempt"] == 1
    assert j["metrics"]["steps"] == list(range(1, 25)), j["metrics"]["steps"]
    assert len(j["metrics"]["train/loss"]) == 24
    resumed = [l["message"] for l in logs(s, jid) if "resumed from checkpoint" in l["message"]]
    assert resumed and re.match(r"resumed from checkpoint checkpoint-\d-step\d+ \(step \d+\)", resumed[0]), resumed
    return j


def test_server_killed_mid_job_resumes_bit_identical(tmp_path):
    data = tmp_path / "d"
    env = {"LATHE_LEASE_S": "2"}
    args = ["--train-threads", "1"]
    s = stopped_server(data, env=env, args=args)
    try:
        resume_data(s)
        job = create(s, **RESUME_CFG)
        wait_until(s, job["id"], lambda j: j["progress"]["step"] >= 8 and len(checkpoints(s, job["id"])) >= 1,
                   what="a checkpoint and a later step")
        kill9(s.proc)
        s._stderr.close()
        s = stopped_server(data, env=env, args=args)
        check_resumed(s, job["id"])
        ref = wait_done(s, create(s, **RESUME_CFG)["id"])
        assert ref["status"] == "completed"
        assert final_adapter(s, job["id"]) == final_adapter(s, ref["id"])
        assert s.get("/healthz").status_code == 200
        assert s.stop() == 0
    finally:
        if s.proc.poll() is None:
            kill9(s.proc)


def start_worker(data, *extra):
    log = open(str(data) + "-worker-%d.log" % time.monotonic_ns(), "wb")
    return subprocess.Popen([str(LATHE_BIN), "worker", "--data-dir", str(data), "--lease-s", "2", "--threads", "1",
                             *extra], stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, **store_env(data)))


def test_standalone_worker_stopped_then_killed_resumes_bit_identical(lathe_server):
    s = lathe_server(args=["--workers", "0"])
    resume_data(s)
    ref = create(s, **RESUME_CFG)
    w = start_worker(s.data_dir, "--once")
    assert w.wait(timeout=120) == 0
    ref = get(s, ref["id"])
    assert ref["status"] == "completed", ref["error"]

    job = create(s, **RESUME_CFG)
    # a clean stop (SIGTERM): the job goes back to the queue, not cancelled
    w = start_worker(s.data_dir)
    wait_until(s, job["id"], lambda j: j["progress"]["step"] >= 4, what="step 4")
    w.send_signal(signal.SIGTERM)
    assert w.wait(timeout=60) == 0
    j = get(s, job["id"])
    assert j["status"] == "queued" and j["cancel_requested_at"] is None and j["attempt"] == 1, j
    assert any("is stopping; the job resumes from checkpoint" in l["message"] for l in logs(s, job["id"]))
    # then a kill -9 past the next checkpoint: the lease runs out and the next worker resumes
    w = start_worker(s.data_dir)
    before = len(checkpoints(s, job["id"]))
    wait_until(s, job["id"], lambda j: len(checkpoints(s, job["id"])) > before and j["progress"]["step"] % 6 >= 2,
               what="a new checkpoint and a later step")
    kill9(w)
    assert get(s, job["id"])["status"] == "running"
    w = start_worker(s.data_dir)
    try:
        check_resumed(s, job["id"])
    finally:
        w.send_signal(signal.SIGTERM)
        assert w.wait(timeout=60) == 0
    assert final_adapter(s, job["id"]) == final_adapter(s, ref["id"])
    assert not (s.data_dir / "work" / job["id"]).exists()


# ---- retry, delete, shared base model ----


def test_retry_runs_again_and_delete_frees_blobs(lathe_server):
    s = lathe_server()
    make_model(s)
    push_data(s)
    job = wait_done(s, create(s, steps=4, checkpoint_interval=2)["id"])
    assert job["status"] == "completed", job["error"]
    r = s.post(JOBS + "/%s/retry" % job["id"])
    assert r.status_code == 200 and r.json()["attempt"] == 2, r.text
    job = wait_done(s, job["id"])
    assert job["status"] == "completed" and job["attempt"] == 2, job["error"]
    assert job["metrics"]["steps"] == [1, 2, 3, 4], "metrics of attempt 1 were cleared"
    assert not any("resumed from" in l["message"] for l in logs(s, job["id"]) if l["attempt"] == 2)
    digests = {c["digest"] for c in checkpoints(s, job["id"])}
    assert digests and digests <= blob_files(s.data_dir)
    assert s.delete(JOBS + "/" + job["id"]).status_code == 204
    assert not (digests & blob_files(s.data_dir)), "checkpoint blobs are freed"
    assert not (s.data_dir / "work" / job["id"]).exists()


def metric(s, name):
    text = s.get("/metrics").text
    m = re.search(r"^%s (\d+)" % re.escape(name), text, re.M)
    assert m, text[-2000:]
    return int(m.group(1))


def test_two_jobs_on_one_model_share_the_weights(lathe_server):
    s = lathe_server(args=["--workers", "2"])
    make_model(s)
    push_data(s, train=pair_rows(32, words=12))
    a = create(s, steps=80, checkpoint_interval=80, eval_ds=False, batch_size=16)
    b = create(s, steps=80, checkpoint_interval=80, eval_ds=False, batch_size=16)
    wait_until(s, b["id"], lambda j: j["progress"]["step"] >= 1, what="both running")
    assert metric(s, "lathe_worker_base_models_loaded") == 1
    assert metric(s, "lathe_worker_base_model_users") == 2
    for jid in (a["id"], b["id"]):
        assert wait_done(s, jid)["status"] == "completed"
    assert metric(s, "lathe_worker_base_model_loads_total") == 1
    assert metric(s, "lathe_worker_base_model_shares_total") == 1
    msgs = [l["message"] for jid in (a["id"], b["id"]) for l in logs(s, jid) if l["message"].startswith("base model")]
    assert sorted(msgs) == ["base model tiny loaded", "base model tiny shared with a running job (already loaded)"]
    assert metric(s, "lathe_worker_base_models_loaded") == 0
