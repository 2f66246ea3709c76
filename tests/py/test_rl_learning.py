"""RL learns through the product: a tiny model (`lathe model init-tiny --init-std 0.3`) is warm-started by one
Tinker SFT job on two answers per prompt (the rewarded one once, the other twice, so about half of the samples
start right), then three RL jobs continue from that job's adapter (`model: jobs/<sft id>`) and must raise their
mean reward on a verifiable task by a clear margin (mean of the last 4 steps >= mean of the first 2 + 0.2, and
>= 0.75):

- Tinker RL `importance_sampling`, `execution_mode: sync`, reward `exact_match_v1` (the row's answer);
- Tinker RL `ppo`, `execution_mode: fully_async` (`max_steps_off_policy` 2), reward `exact_match_v1`;
- Ray GRPO, `execution_mode: distributed` with 2 rollout workers (mpirun -np 3), reward
  `task_env_verifier_v1` (the task's regex), since GRPO has no `stop` / `max_new_tokens` knob.

The task design is tests/unit/test_rl.c's, init std 0.3 as there: at 0.1 the SFT loss stalls near 1.25 per token
and the samples stay junk (reward ~0.03). With one training thread the sync and distributed runs are
deterministic; these settings were checked on init seeds 1-7 (last 4 steps >= 0.84, rise >= 0.29).
Everything goes through the HTTP API and the server's worker. The reward curves and staleness values are written
to <build>/test-logs/rl-learning.txt (build/test-logs/ for the default build) and printed (pytest -s shows them).
"""

import json
import pathlib
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import LATHE_BIN, ROOT, LatheServer
from jobs_helpers import JOBS, jsonl, push, wait_done

# beside the other test logs of the build under test (tests/run.sh: $BUILD/test-logs), else build/test-logs
_BUILD = LATHE_BIN.parent if ROOT / "build" in LATHE_BIN.resolve().parents else ROOT / "build"
LOG = _BUILD / "test-logs" / "rl-learning.txt"

# prompt, the rewarded answer, the other answer (the SFT rows hold the other one twice)
QA = [
    ("Favorite color?", "red", "blue"),
    ("Pick a fruit.", "apple", "pear"),
    ("Name a pet.", "cat", "dog"),
    ("Say a number.", "one", "two"),
]
CAP_PROMPT = "You are terse."
INSTRUCTION = "Answer in one word."
# GRPO completions run to "\n\nUser:", end-of-text or 128 tokens: the regex checks the first word only
PATTERN = r"^\s*(red|apple|cat|one)(\s|$)"

MARGIN = 0.2  # mean of the last 4 steps minus mean of the first 2
FINAL_MIN = 0.75  # mean of the last 4 steps
RL_LR = 0.002  # sum-of-tokens losses with AdamW (tests/unit/test_rl.c)


def dataset(name, rows):
    return {"dataset.yaml": "name: %s\nversion: 0.1.0\nformat: jsonl\nsplits:\n  train: train.jsonl\n" % name,
            "train.jsonl": jsonl(rows)}


def create(s, body):
    r = s.post(JOBS, json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def report(line):
    print(line)
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(LOG, "a") as f:
        f.write(line + "\n")


class Env:
    pass


@pytest.fixture(scope="module")
def env():
    tmp = tempfile.mkdtemp(prefix="lathe-py-rl-")
    # one training thread: sync and distributed runs are deterministic; fully_async depends on thread timing
    s = LatheServer(pathlib.Path(tmp) / "data", args=["--train-threads", "1"])
    try:
        LOG.parent.mkdir(parents=True, exist_ok=True)
        LOG.write_text("")
        cp = subprocess.run([str(LATHE_BIN), "model", "init-tiny", str(s.data_dir / "models" / "tiny"), "--init-std",
                             "0.3", "--seed", "3"], capture_output=True, text=True, timeout=60)
        assert cp.returncode == 0, cp.stderr
        # SFT rows: the RL prompt exactly (capability prompt, then the task instruction, as the system message),
        # with the rewarded answer once and the other twice
        sft = [{"messages": [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": q},
                             {"role": "assistant", "content": a}]} for q, good, bad in QA for a in (good, bad, bad)]
        push(s, "datasets", dataset("qa-sft", sft))
        push(s, "datasets", dataset("qa-prompts", [{"prompt": q, "answer": good} for q, good, _ in QA]))
        push(s, "capabilities", {"capability.yaml": "name: terse\nversion: 1.0.0\ndescription: terse\n"
                                 "entry_agent: main\n", "agents/main.md": CAP_PROMPT + "\n"})
        push(s, "tasks", {"task.yaml": "name: pick\nversion: 1.0.0\ninstruction: %s\nverification:\n"
                          "  method: regex\n  pattern: '%s'\n" % (INSTRUCTION, PATTERN)})
        e = Env()
        e.s = s
        e.cap = {"name": "terse", "version": "1.0.0"}
        t0 = time.monotonic()
        e.sft_id = create(s, {"backend": "tinker", "trainer_type": "sft", "model": "tiny", "capability_ref": e.cap,
                              "config": {"dataset_ref": {"name": "qa-sft", "version": "0.1.0"}, "batch_size": 12,
                                         "steps": 80, "learning_rate": 0.02, "lora_rank": 8, "lora_alpha": 16,
                                         "checkpoint_interval": 80}})
        e.sft = wait_done(s, e.sft_id)
        assert e.sft["status"] == "completed", e.sft["error"]
        loss = e.sft["metrics"]["train/loss"]
        report("# warm-start SFT %s: %d steps in %.1f s, loss %.3f -> %.3f" %
               (e.sft_id, len(loss), time.monotonic() - t0, loss[0], loss[-1]))
        yield e
    finally:
        rc = s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    assert rc == 0, "lathe serve did not exit 0"


def rl_body(e, backend, config):
    return {"backend": backend, "trainer_type": "rl", "model": "jobs/" + e.sft_id, "capability_ref": e.cap,
            "config": {"task_ref": "pick", "prompt_dataset_ref": {"name": "qa-prompts", "version": "0.1.0"},
                       **config}}


def run_and_check(e, label, body):
    t0 = time.monotonic()
    jid = create(e.s, body)
    j = wait_done(e.s, jid)
    dt = time.monotonic() - t0
    assert j["status"] == "completed", j["error"]
    m = j["metrics"]
    rewards = m["train/reward"]
    n = len(rewards)
    assert m["steps"] == list(range(1, n + 1)) and n == body["config"]["steps"], m["steps"]
    first, last = sum(rewards[:2]) / 2, sum(rewards[-4:]) / 4
    report("# %s (%s): %d steps in %.1f s; reward first 2 steps %.3f -> last 4 steps %.3f; per step %s" %
           (label, jid, n, dt, first, last, " ".join("%.2f" % r for r in rewards)))
    msgs = [l["message"] for l in e.s.get(JOBS + "/%s/logs?limit=1000" % jid).json()["items"]]
    assert any(x.startswith("starting from adapter") for x in msgs), msgs[:20]
    assert last >= first + MARGIN, "%s: reward did not rise: %.3f -> %.3f (%s)" % (label, first, last, rewards)
    assert last >= FINAL_MIN, "%s: final reward too low: %.3f (%s)" % (label, last, rewards)
    return jid, j


def test_warm_start_sft(env):
    m = env.sft["metrics"]
    assert m["train/loss"][-1] < m["train/loss"][0] / 2, m["train/loss"]
    assert env.sft["artifacts"]["latest_checkpoint"] == "final"


def test_tinker_importance_sampling_sync_learns(env):
    jid, j = run_and_check(env, "tinker-is-sync", rl_body(env, "tinker", {
        "algorithm": "importance_sampling", "execution_mode": "sync", "steps": 16, "learning_rate": RL_LR,
        "num_rollouts": 16, "batch_size": 4, "max_new_tokens": 4, "temperature": 1.0, "stop": ["\n"],
        "reward_recipe": {"name": "exact_match_v1", "params": {}}, "checkpoint_interval": 100}))
    assert j["artifacts"]["execution_mode"] == "sync"
    # weight_sync_interval 1: the sampler took the learner's weights after every step
    assert j["metrics"]["train/weight_sync_count"] == 16, j["metrics"]["train/weight_sync_count"]
    ctx = env.s.get(JOBS + "/%s/rl-context" % jid)
    assert ctx.status_code == 200, ctx.text
    c = ctx.json()
    assert c["capability_entry_prompt"] == CAP_PROMPT, c
    t = c["task"]
    assert t["reference"] == "pick@1.0.0" and t["name"] == "pick" and t["instruction"] == INSTRUCTION, t
    assert t["verification"] == {"method": "regex", "pattern": PATTERN}, t
    assert c["reward_recipe"]["name"] == "exact_match_v1", c
    report("# rl-context of %s: capability_entry_prompt %r, task %s, reward_recipe %s" %
           (jid, c["capability_entry_prompt"], t["reference"], json.dumps(c["reward_recipe"])))


def test_tinker_ppo_fully_async_learns(env):
    jid, j = run_and_check(env, "tinker-ppo-fully-async", rl_body(env, "tinker", {
        "algorithm": "ppo", "execution_mode": "fully_async", "max_steps_off_policy": 2, "steps": 16,
        "learning_rate": RL_LR, "num_rollouts": 16, "batch_size": 4, "max_new_tokens": 4, "temperature": 1.0,
        "stop": ["\n"], "reward_recipe": {"name": "exact_match_v1", "params": {}}, "checkpoint_interval": 100}))
    m = j["metrics"]
    assert j["artifacts"]["execution_mode"] == "fully_async"
    # every step reports how many versions behind the learner its batch was: never more than max_steps_off_policy
    st = m["train/staleness"]
    assert len(st) == 16 and all(0 <= x <= 2 for x in st), st
    assert len(m["train/generation_step"]) == 16 and len(m["train/dropped_groups"]) == 16
    report("# tinker-ppo-fully-async (%s): staleness per step %s; dropped_groups %s" %
           (jid, " ".join(str(x) for x in st), " ".join(str(x) for x in m.get("train/dropped_groups", []))))


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="OpenMPI (mpirun) is not installed")
def test_ray_grpo_distributed_learns(env):
    jid, j = run_and_check(env, "ray-grpo-distributed", rl_body(env, "ray", {
        "algorithm": "grpo", "execution_mode": "distributed", "num_rollout_workers": 2, "steps": 24,
        "learning_rate": RL_LR, "num_rollouts": 8, "batch_size": 4,
        "reward_recipe": {"name": "task_env_verifier_v1", "params": {}}, "checkpoint_interval": 100}))
    m = j["metrics"]
    assert j["artifacts"]["execution_mode"] == "distributed"
    eff = j["effective_config"]
    assert eff["execution_mode"] == "distributed" and eff["num_rollout_workers"] == 2, eff
    # rank 0 broadcast its weights to the rollout ranks; one step's groups in flight at most
    wsc = m["train/weight_sync_count"]
    assert isinstance(wsc, int) and wsc >= 1, wsc
    st = m["train/staleness"]
    assert len(st) == 24 and all(0 <= x <= 1 for x in st), st
    msgs = [l["message"] for l in env.s.get(JOBS + "/%s/logs?limit=1000" % jid).json()["items"]]
    assert any("distributed" in x for x in msgs), msgs[:20]
    c = env.s.get(JOBS + "/%s/rl-context" % jid).json()
    assert c["task"]["reference"] == "pick@1.0.0" and c["reward_recipe"]["name"] == "task_env_verifier_v1", c
    report("# ray-grpo-distributed (%s): weight_sync_count %d, staleness per step %s" %
           (jid, wsc, " ".join(str(x) for x in st)))
