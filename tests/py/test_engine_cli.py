"""The engine's command-line verbs end to end on a tiny model: `lathe train sft` (local), `lathe model sample`,
`lathe model logprobs`, `lathe bench` — outputs, files written, and error messages."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("LATHE_ROOT", Path(__file__).resolve().parents[2]))
LATHE = os.environ.get("LATHE_BIN", str(ROOT / "build" / "lathe"))


def run(*args, ok=True):
    p = subprocess.run([LATHE, *args], capture_output=True, text=True, timeout=300)
    if ok:
        assert p.returncode == 0, f"lathe {' '.join(args)} failed ({p.returncode}): {p.stderr}"
    return p


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny") / "model"
    run("model", "init-tiny", str(d), "--arch", "qwen3", "--seed", "3")
    return d


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                          {"role": "assistant", "content": str(a + b)}]} for a in range(5) for b in range(4)]
    rows.append({"prompt": "Say hi.", "answer": "hi"})
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


def test_train_sft_local_writes_checkpoints_and_adapter(tiny, data, tmp_path):
    out = tmp_path / "out"
    p = run("train", "sft", "--model", str(tiny), "--data", str(data), "--eval", str(data), "--out", str(out),
            "--steps", "12", "--batch-size", "4", "--lr", "0.02", "--checkpoint-interval", "5", "--threads", "1")
    losses = [float(x) for x in re.findall(r"^step \d+/12  loss ([0-9.]+)", p.stdout, re.M)]
    assert len(losses) == 12
    assert losses[-1] < losses[0] - 0.3, f"loss did not fall: {losses}"
    assert "eval/loss" in p.stdout
    names = sorted(x.name for x in (out / "checkpoints").iterdir())
    assert names == ["checkpoint-1-step5", "checkpoint-2-step10", "checkpoint-3-step12"]
    for n in names:
        assert (out / "checkpoints" / n / "state.safetensors").is_file()
        assert (out / "checkpoints" / n / "adapter" / "adapter_model.safetensors").is_file()
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 16 and cfg["lora_alpha"] == 32 and cfg["peft_type"] == "LORA"

    # the trained adapter changes the model, and sampling with it works in chat mode
    base = json.loads(run("model", "logprobs", str(tiny), "--text", "What is 2 plus 1?", "--json").stdout)
    tuned = json.loads(run("model", "logprobs", str(tiny), "--adapter", str(out / "adapter"), "--text",
                           "What is 2 plus 1?", "--json").stdout)
    assert base["tokens"] == tuned["tokens"] and base["sum"] != tuned["sum"]
    s = json.loads(run("model", "sample", str(tiny), "--adapter", str(out / "adapter"), "--prompt",
                       "What is 2 plus 1?", "--chat", "--max-tokens", "6", "--num-samples", "3", "--seed", "1",
                       "--json").stdout)
    assert len(s["samples"]) == 3
    for smp in s["samples"]:
        assert smp["stop_reason"] in ("stop", "length")
        assert len(smp["tokens"]) == len(smp["logprobs"]) <= 6
        assert all(lp <= 0 for lp in smp["logprobs"])


def test_train_sft_errors(tiny, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                   '{"nothing": 1}\n')
    p = run("train", "sft", "--model", str(tiny), "--data", str(bad), "--out", str(tmp_path / "o"), ok=False)
    assert p.returncode == 1
    assert "line 2" in p.stderr and "accepted shapes" in p.stderr
    p = run("train", "sft", "--model", str(tiny), "--data", str(bad), "--out", str(tmp_path / "o"), "--lr", "2",
            ok=False)
    assert p.returncode == 2 and "--lr" in p.stderr


def test_sample_greedy_is_deterministic_and_logprobs_agree(tiny):
    args = ["model", "sample", str(tiny), "--prompt", "The cat", "--temperature", "0", "--max-tokens", "8",
            "--json"]
    a = json.loads(run(*args).stdout)
    b = json.loads(run(*args).stdout)
    assert a == b
    smp = a["samples"][0]
    prompt = json.loads(run("model", "logprobs", str(tiny), "--text", "The cat", "--json").stdout)["tokens"]
    full = json.loads(run("model", "logprobs", str(tiny), "--tokens", ",".join(map(str, prompt + smp["tokens"])),
                          "--json").stdout)
    for got, ref in zip(smp["logprobs"], full["logprobs"][len(prompt):]):
        assert abs(got - ref) <= 1e-4 * max(1, abs(ref))


def test_cli_errors(tiny):
    p = run("model", "logprobs", str(tiny), "--tokens", "1,x", ok=False)
    assert p.returncode == 2 and "comma-separated" in p.stderr
    p = run("model", "logprobs", str(tiny), "--tokens", "1,99999", ok=False)
    assert p.returncode == 1 and "vocabulary" in p.stderr
    p = run("model", "sample", str(tiny), "--prompt", "x", "--max-tokens", "100000", ok=False)
    assert p.returncode == 1 and "context window" in p.stderr
    p = run("model", "logprobs", str(tiny), "--adapter", "/nonexistent", "--tokens", "1,2", ok=False)
    assert p.returncode == 1 and "adapter_config.json" in p.stderr
    p = run("bench", "nope", ok=False)
    assert p.returncode == 2


def test_bench_tiny_json():
    r = json.loads(run("bench", "train", "--preset", "tiny", "--batch", "2", "--seq", "16", "--steps", "1",
                       "--threads", "1", "--json").stdout)
    assert r["tokens_per_s"] > 0 and r["achieved_gflops"] > 0 and r["sgemm_peak_gflops"] > 0
    assert set(r["ms_by_phase"]) == {"gemm", "attention", "norms_rope_act", "head_loss", "optimizer", "other"}
    s = json.loads(run("bench", "sample", "--preset", "tiny", "--threads", "1", "--json").stdout)
    assert s["tokens_per_s_batch1"] > 0 and s["tokens_per_s_batch16"] > 0 and s["copy_bandwidth_gbs"] > 0
    r = json.loads(run("bench", "rl", "--preset", "tiny", "--batch", "4", "--steps", "1", "--threads", "1",
                       "--json").stdout)
    assert r["group"] == 4 and set(r["ms_by_phase"]) == {"sampling", "scoring", "training"}
    assert r["sampled_tokens_per_s"] > 0 and r["trained_tokens_per_s"] > 0
