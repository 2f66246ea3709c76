"""Learning on a real model: SmolLM2-135M-Instruct (the Q4_1 GGUF that scripts/setup.sh fetched, placed in the
server's models dir as smollm2-135m-instruct.gguf) trained through the HTTP API and the server's worker, and by
the local trainer on the .gguf file itself.

- SFT (Tinker job, and `lathe train sft --model FILE.gguf`): examples/datasets/json-answers teaches a format,
  {"answer": "..."} and nothing else, that the base model does not follow even when its system prompt asks for
  it (examples/capabilities/json-answer). Held-out behaviour is checked two ways on the validation split and on
  questions in neither split: the log-likelihood of the JSON answers (`lathe model logprobs --adapter`, per
  answer token, base vs adapter) and greedy generations (`lathe model sample --adapter`) in the format.
- RL (Tinker `importance_sampling` in `sync`, Ray GRPO in `colocated`) from the base model, no warm start, on a
  verifiable format: the task asks for a lowercase yes/no and its regex rewards a completion that starts with
  `yes` or `no` (`task_env_verifier_v1`). The base model mostly answers "No, ..." with a capital: at
  temperature 1 about 1 sample in 12 is rewarded (4 of 48 in a probe), so groups of 8 carry a signal within the
  first steps. The mean reward of the last 3 steps must exceed that of the first 3 by MARGIN. Measured while
  writing this: IS 0.03 0.16 0.84 0.94 1.00 1.00 1.00 1.00 (0.34 -> 1.00), run twice, the same curve; GRPO
  0.12 0.00 0.00 0.25 0.50 0.62 0.75 1.00 (0.04 -> 0.79); 0.25 leaves room for another sampling order. The
  reward checks the format only: the IS policy ends up answering "yes" throughout. GRPO has no max_new_tokens
  knob, so its samples run to <|im_end|> or 128 tokens: one prompt per step keeps its steps short.

The curves (loss per step, reward per step) are written to <build>/test-logs/real-model.txt and printed
(pytest -s shows them). Every test skips, with the reason, when the GGUF is not there (scripts/setup.sh).
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import LATHE_BIN, ROOT, LatheServer
from jobs_helpers import JOBS, download, jsonl, push, wait_done

_BUILD = LATHE_BIN.parent if ROOT / "build" in LATHE_BIN.resolve().parents else ROOT / "build"
LOG = _BUILD / "test-logs" / "real-model.txt"


def _gguf():
    try:
        p = subprocess.run([str(ROOT / "scripts" / "smollm2-path")], capture_output=True, text=True).stdout.strip()
    except OSError:
        return None
    return pathlib.Path(p) if p and pathlib.Path(p).is_file() else None


GGUF = _gguf()
pytestmark = pytest.mark.skipif(GGUF is None, reason="SmolLM2-135M-Instruct GGUF not found (run scripts/setup.sh)")

MODEL = "smollm2-135m-instruct"
DS_DIR = ROOT / "examples" / "datasets" / "json-answers"
CAP_DIR = ROOT / "examples" / "capabilities" / "json-answer"
CAP_PROMPT = (CAP_DIR / "agents" / "assistant.md").read_text().strip()
TAUGHT = re.compile(r'^\{"answer": ("[^"]*"|-?[0-9.]+)\}$')
# in neither split of json-answers
UNSEEN = ["What is the capital of Australia?", "Who discovered penicillin?", "How many strings does a violin have?"]
SFT_STEPS = 20
SFT = {"batch_size": 8, "learning_rate": 0.001, "lora_rank": 8, "lora_alpha": 16}

# RL: lowercase yes/no, rewarded by the task's regex
RL_CAP_PROMPT = "You are a quiz assistant."
RL_INSTRUCTION = "Answer with yes or no, in lowercase."
RL_PATTERN = r"^(yes|no)\b"
RL_QUESTIONS = ["Is the sun hot?", "Can fish swim?", "Is a cat a bird?", "Is ice cold?", "Do birds have wings?",
                "Is the sea salty?", "Can a dog fly?", "Is fire wet?"]
MARGIN = 0.25  # mean reward of the last 3 steps minus that of the first 3


def report(line):
    print(line)
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(LOG, "a") as f:
        f.write(line + "\n")


def run(*args, timeout=600):
    cp = subprocess.run([str(LATHE_BIN), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert cp.returncode == 0, (args[:3], cp.stdout[-2000:], cp.stderr[-2000:])
    return cp.stdout


def tree(d):
    """{relative path: text} of every file under d (an artifact to push)."""
    return {str(p.relative_to(d)): p.read_text() for p in sorted(d.rglob("*")) if p.is_file()}


def create(s, body):
    r = s.post(JOBS, json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def rows(split):
    return [json.loads(l) for l in (DS_DIR / "data" / (split + ".jsonl")).read_text().splitlines() if l.strip()]


def with_system(row):
    return {"messages": [{"role": "system", "content": CAP_PROMPT}] + row["messages"]}


def answer_logprobs(tmp, adapter=None):
    """Mean log p per answer token of each validation row's JSON answer, with the capability prompt as the
    system message, in the model's own chat format (the weights of `lathe tokenize --renderer auto` mark the
    assistant tokens). One batched logprobs call."""
    lines = tmp / "val-chats.jsonl"
    lines.write_text("".join(json.dumps(with_system(r)) + "\n" for r in rows("validation")))
    out = run("tokenize", GGUF, "--lines", lines, "--renderer", "auto")
    rendered = [json.loads(l) for l in out.splitlines() if l.strip()]
    toks = ";".join(",".join(map(str, r["ids"])) for r in rendered)
    cmd = ["model", "logprobs", GGUF, "--tokens", toks, "--json"] + (["--adapter", adapter] if adapter else [])
    seqs = json.loads(run(*cmd))["sequences"]
    means = []
    for r, s in zip(rendered, seqs):
        lp = [s["logprobs"][i] for i, w in enumerate(r["weights"]) if w > 0 and i < len(s["logprobs"])]
        assert lp and all(x is not None for x in lp), r
        means.append(sum(lp) / len(lp))
    return means


def greedy(question, adapter=None):
    prompt = "<|im_start|>system\n%s<|im_end|>\n<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n" % (
        CAP_PROMPT, question)
    cmd = ["model", "sample", GGUF, "--prompt", prompt, "--max-tokens", "24", "--temperature", "0"]
    return run(*(cmd + (["--adapter", adapter] if adapter else []))).strip()


def check_held_out(label, tmp, adapter, base_means):
    """The adapter raised the likelihood of the taught answers on every held-out row, and its greedy answers to
    questions in neither split are in the format while the base model's are not."""
    means = answer_logprobs(tmp, adapter)
    gain = [a - b for a, b in zip(means, base_means)]
    report("# %s: held-out mean log p per answer token, base %.3f -> adapter %.3f (gain min %.3f, mean %.3f)" %
           (label, sum(base_means) / len(base_means), sum(means) / len(means), min(gain), sum(gain) / len(gain)))
    assert min(gain) > 0 and sum(gain) / len(gain) > 1.0, (base_means, means)
    answers = [(q, greedy(q), greedy(q, adapter)) for q in UNSEEN]
    for q, b, a in answers:
        report("#   %-40s base %-50r adapter %r" % (q, b[:50], a))
    assert not any(TAUGHT.match(b) for _, b, _ in answers), answers
    assert sum(bool(TAUGHT.match(a)) for _, _, a in answers) >= 2, answers


class Env:
    pass


@pytest.fixture(scope="module")
def env():
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="lathe-py-real-"))
    s = LatheServer(tmp / "data")
    try:
        LOG.parent.mkdir(parents=True, exist_ok=True)
        LOG.write_text("")
        (s.data_dir / "models").mkdir(exist_ok=True)
        os.symlink(GGUF, s.data_dir / "models" / (MODEL + ".gguf"))
        push(s, "datasets", tree(DS_DIR))
        push(s, "capabilities", tree(CAP_DIR))
        push(s, "datasets", {"dataset.yaml": "name: yes-no\nversion: 0.1.0\nformat: jsonl\n"
                             "splits:\n  train: train.jsonl\n",
                             "train.jsonl": jsonl([{"prompt": q} for q in RL_QUESTIONS])})
        push(s, "capabilities", {"capability.yaml": "name: quiz\nversion: 1.0.0\ndescription: quiz\n"
                                 "entry_agent: main\n", "agents/main.md": RL_CAP_PROMPT + "\n"})
        push(s, "tasks", {"task.yaml": "name: yes-no-lower\nversion: 1.0.0\ninstruction: %s\nverification:\n"
                          "  method: regex\n  pattern: '%s'\n" % (RL_INSTRUCTION, RL_PATTERN)})
        e = Env()
        e.s, e.tmp = s, tmp
        e.base_means = answer_logprobs(tmp)
        yield e
    finally:
        rc = s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    assert rc == 0, "lathe serve did not exit 0"


def test_catalog_lists_the_gguf(env):
    r = env.s.get("/api/v1/training/catalog")
    assert r.status_code == 200, r.text
    assert MODEL in json.dumps(r.json()), r.text[:2000]


def test_sft_job_teaches_the_format(env):
    t0 = time.monotonic()
    jid = create(env.s, {"backend": "tinker", "trainer_type": "sft", "model": MODEL,
                         "capability_ref": {"name": "json-answer", "version": "0.1.0"},
                         "config": {"dataset_ref": {"name": "json-answers", "version": "0.1.0"},
                                    "eval_dataset_ref": {"name": "json-answers", "version": "0.1.0"},
                                    "steps": SFT_STEPS, "checkpoint_interval": SFT_STEPS, **SFT}})
    j = wait_done(env.s, jid, timeout=1200)
    assert j["status"] == "completed", j["error"]
    loss = j["metrics"]["train/loss"]
    report("# sft job %s on %s: %d steps in %.1f s, eval/loss %s; loss per step %s" %
           (jid, MODEL, len(loss), time.monotonic() - t0, j["metrics"].get("eval/loss"),
            " ".join("%.3f" % x for x in loss)))
    assert len(loss) == SFT_STEPS and sum(loss[-3:]) / 3 < loss[0] / 4, loss
    files = download(env.s, jid)
    adapter = env.tmp / "sft-adapter"
    adapter.mkdir()
    for name, data in files.items():
        (adapter / pathlib.Path(name).name).write_bytes(data)
    assert (adapter / "adapter_config.json").is_file(), sorted(files)
    check_held_out("sft job", env.tmp, adapter, env.base_means)


def test_local_trainer_on_the_gguf(env):
    data = env.tmp / "local-train.jsonl"
    data.write_text(jsonl([with_system(r) for r in rows("train")]))
    out = env.tmp / "local-out"
    t0 = time.monotonic()
    log = run("train", "sft", "--model", GGUF, "--data", data, "--out", out, "--steps", SFT_STEPS,
              "--batch-size", SFT["batch_size"], "--lr", SFT["learning_rate"], "--lora-rank", SFT["lora_rank"],
              "--lora-alpha", SFT["lora_alpha"], "--checkpoint-interval", SFT_STEPS, timeout=1200)
    loss = [float(x) for x in re.findall(r"^step \d+/\d+  loss (\d+\.\d+)", log, re.M)]
    assert "renderer chatml" in log, log[:500]
    report("# local trainer on %s: %d steps in %.1f s; loss per step %s" %
           (GGUF.name, len(loss), time.monotonic() - t0, " ".join("%.3f" % x for x in loss)))
    assert len(loss) == SFT_STEPS and sum(loss[-3:]) / 3 < loss[0] / 4, loss
    check_held_out("local trainer", env.tmp, out / "adapter", env.base_means)


def rl(env, label, backend, config):
    t0 = time.monotonic()
    jid = create(env.s, {"backend": backend, "trainer_type": "rl", "model": MODEL,
                         "capability_ref": {"name": "quiz", "version": "1.0.0"},
                         "config": {"task_ref": "yes-no-lower",
                                    "prompt_dataset_ref": {"name": "yes-no", "version": "0.1.0"},
                                    "reward_recipe": {"name": "task_env_verifier_v1", "params": {}}, **config}})
    j = wait_done(env.s, jid, timeout=1200)
    assert j["status"] == "completed", j["error"]
    rewards = j["metrics"]["train/reward"]
    n = len(rewards)
    assert n == config["steps"], rewards
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    report("# %s (%s): %d steps in %.1f s; reward first 3 steps %.3f -> last 3 steps %.3f; per step %s" %
           (label, jid, n, time.monotonic() - t0, first, last, " ".join("%.2f" % r for r in rewards)))
    assert last >= first + MARGIN, "%s: reward did not rise: %.3f -> %.3f (%s)" % (label, first, last, rewards)
    return j


def test_tinker_importance_sampling_sync_learns(env):
    j = rl(env, "tinker-is-sync", "tinker", {
        "algorithm": "importance_sampling", "execution_mode": "sync", "steps": 8, "learning_rate": 0.001,
        "lora_rank": 8, "lora_alpha": 16, "num_rollouts": 32, "batch_size": 4, "max_new_tokens": 3,
        "temperature": 1.0, "stop": ["\n"], "checkpoint_interval": 100})
    assert j["artifacts"]["execution_mode"] == "sync"


def test_ray_grpo_colocated_learns(env):
    j = rl(env, "ray-grpo-colocated", "ray", {
        "algorithm": "grpo", "execution_mode": "colocated", "steps": 8, "learning_rate": 0.003,
        "num_rollouts": 8, "batch_size": 1, "checkpoint_interval": 100})
    assert j["artifacts"]["execution_mode"] == "colocated"
