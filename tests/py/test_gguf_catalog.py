"""A GGUF file in the server's models dir is a base model: NAME.gguf is the catalog entry NAME.

With the real SmolLM2-135M-Instruct GGUF symlinked in as smollm2.gguf, `GET /api/v1/training/catalog` lists
`smollm2` with its family, size, context length and quantization (from the file's metadata), and a short SFT
job on it completes: the worker opens the file through eng_open / eng_tok_load like a model directory (its log
says the weights are kept as stored), trains a few LoRA steps and publishes a PEFT adapter.
"""

import os
import subprocess
from pathlib import Path

import pytest

from jobs_helpers import JOBS, checkpoints, jsonl, logs, push, wait_done

ROOT = Path(os.environ.get("LATHE_ROOT", Path(__file__).resolve().parents[2]))


def smollm2_path():
    p = subprocess.run([str(ROOT / "scripts" / "smollm2-path")], capture_output=True, text=True).stdout.strip()
    return p if p and Path(p).is_file() else None


@pytest.fixture
def gguf_server(lathe_server):
    path = smollm2_path()
    if not path:
        pytest.skip("SmolLM2-135M-Instruct.Q4_1.gguf is not installed (scripts/setup.sh fetches it)")
    s = lathe_server()
    models = s.data_dir / "models"
    models.mkdir(exist_ok=True)
    (models / "smollm2.gguf").symlink_to(path)
    (models / "notes.txt").write_text("not a model")  # other files are ignored
    (models / "broken.gguf").write_bytes(b"GGUF\x07\x00\x00\x00" + bytes(64))  # version 7: not listed
    return s


def test_catalog_lists_the_gguf_with_its_quantization(gguf_server):
    s = gguf_server
    r = s.get("/api/v1/training/catalog")
    assert r.status_code == 200, r.text
    items = {m["tinker_id"]: m for m in r.json()["models"]}
    assert set(items) == {"smollm2"}, items
    m = items["smollm2"]
    assert m["display_name"] == "smollm2"
    assert m["family"] == "llama"
    assert m["quantization"] == "Q4_1"
    assert m["context_length"] == 8192
    assert abs(m["size_b"] - 0.135) < 1e-9
    assert m["extended_context"] is False
    assert "sft" in m["supported_algorithms"]
    # the family filter sees it too
    r = s.get("/api/v1/training/catalog?family=llama")
    assert [x["tinker_id"] for x in r.json()["models"]] == ["smollm2"]
    # a job on the unreadable file is refused at submit like an unknown model
    push(s, "capabilities", {"capability.yaml": "name: assistant\nversion: 1.0.0\ndescription: helpful\n"})
    push(s, "datasets", {"dataset.yaml": "name: d\nversion: 0.1.0\nformat: jsonl\nsplits:\n  train: train.jsonl\n",
                         "train.jsonl": jsonl([{"prompt": "a", "answer": "b"}])})
    r = s.post(JOBS, json={"backend": "tinker", "trainer_type": "sft", "model": "broken",
                           "capability_ref": {"name": "assistant", "version": "1.0.0"},
                           "config": {"dataset_ref": {"name": "d", "version": "0.1.0"}}})
    assert r.status_code == 404 and "'broken'" in r.text, r.text


def test_sft_job_on_the_gguf_completes(gguf_server):
    s = gguf_server
    rows = [{"prompt": "Say the secret word.", "answer": "Pumpernickel."} for _ in range(4)]
    push(s, "datasets", {"dataset.yaml": "name: secret\nversion: 0.1.0\nformat: jsonl\nsplits:\n  train: train.jsonl\n",
                         "train.jsonl": jsonl(rows)})
    push(s, "capabilities", {"capability.yaml": "name: assistant\nversion: 1.0.0\ndescription: helpful\n"})
    config = {"dataset_ref": {"name": "secret", "version": "0.1.0"}, "batch_size": 2, "lora_rank": 4,
              "learning_rate": 0.003, "steps": 3}
    r = s.post(JOBS, json={"backend": "tinker", "trainer_type": "sft", "model": "smollm2",
                           "capability_ref": {"name": "assistant", "version": "1.0.0"}, "config": config})
    assert r.status_code == 201, r.text
    job = wait_done(s, r.json()["id"], timeout=300)
    assert job["status"] == "completed", job["error"]
    losses = job["metrics"]["train/loss"]
    assert len(losses) == 3 and all(x == x and x > 0 for x in losses), losses
    assert [c["name"] for c in checkpoints(s, job["id"])][-1] == "final"
    msgs = [l["message"] for l in logs(s, job["id"])]
    assert "base model smollm2 loaded" in msgs and "training completed" in msgs
    assert "GGUF weights kept as stored" in s.log()
    print("\nSFT on smollm2.gguf: train/loss", losses)
