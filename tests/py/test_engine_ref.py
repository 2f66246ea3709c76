"""The C engine against Hugging Face transformers + peft on tiny random models of every supported family.

For each variant (llama, qwen2 with q/k/v bias, qwen3 with q/k norm, llama with Llama 3 RoPE scaling, llama with
a tied head, mistral) `lathe model init-tiny` writes a model dir; then:
  * per-token log-probabilities of a right-padded batch match HF's log_softmax(logits) within 1e-4 relative;
  * with a PEFT adapter of random non-zero A and B (the seven projections and lm_head), the weighted cross-entropy loss and every LoRA gradient match
    torch autograd (gradients within 1e-3 relative to the tensor's largest entry), and the losses of a few AdamW
    steps (betas 0.9/0.95, eps 1e-8) match torch.optim.AdamW;
  * an adapter the engine trained and exported loads in HF peft and gives the engine's log-probabilities.
The engine is reached through `lathe model logprobs` (its test options are documented in its --help).
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

ROOT = Path(os.environ.get("LATHE_ROOT", Path(__file__).resolve().parents[2]))
LATHE = os.environ.get("LATHE_BIN", str(ROOT / "build" / "lathe"))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

VARIANTS = {
    "llama": ["--arch", "llama"],
    "qwen2-bias": ["--arch", "qwen2"],
    "qwen3-qknorm": ["--arch", "qwen3"],
    "llama3-rope": ["--arch", "llama", "--rope-scaling", "llama3"],
    "tied": ["--arch", "llama", "--tie", "1"],
    "mistral": ["--arch", "mistral"],
}


def lathe(*args):
    p = subprocess.run([LATHE, *args], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"lathe {' '.join(args)} failed ({p.returncode}): {p.stderr}"
    return p.stdout


def lathe_json(*args):
    return json.loads(lathe(*args))


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def model_dir(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param) / "model"
    lathe("model", "init-tiny", str(d), *VARIANTS[request.param], "--seed", "7")
    return d


def hf_model(d):
    m = transformers.AutoModelForCausalLM.from_pretrained(str(d), torch_dtype=torch.float32,
                                                          attn_implementation="eager")
    return m.eval()


def hf_logprobs(model, tokens):
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].double()
    lp = torch.log_softmax(logits, dim=-1)
    return [lp[i, tokens[i + 1]].item() for i in range(len(tokens) - 1)]


def seqs(vocab, lengths, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def close(a, b, rel):
    return abs(a - b) <= rel * max(1.0, abs(b))


def test_logprobs_match_hf_batch_with_padding(model_dir):
    model = hf_model(model_dir)
    batch = seqs(model.config.vocab_size, [12, 7, 3], 1)
    out = lathe_json("model", "logprobs", str(model_dir), "--tokens",
                     ";".join(",".join(map(str, s)) for s in batch), "--json")
    assert len(out["sequences"]) == 3
    for s, got in zip(batch, out["sequences"]):
        assert got["tokens"] == s
        assert got["logprobs"][0] is None
        ref = hf_logprobs(model, s)
        for i, (a, b) in enumerate(zip(got["logprobs"][1:], ref)):
            assert close(a, b, 1e-4), f"position {i + 1}: engine {a} vs HF {b}"
        assert close(got["sum"], sum(ref), 1e-4)


def random_adapter(model, path, seed, rank=4, alpha=8.0):
    cfg = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=TARGETS + ["lm_head"], lora_dropout=0.0,
                          bias="none", task_type="CAUSAL_LM")
    pm = peft.get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_((torch.rand(p.shape, generator=g) - 0.5) * 0.2)
    pm.save_pretrained(str(path))
    return pm


def peft_key(name):
    return name.replace(".default", "")


def test_lora_grads_and_adamw_match_torch(model_dir, tmp_path):
    pm = random_adapter(hf_model(model_dir), tmp_path / "adapter", seed=3)
    (tokens,) = seqs(pm.config.vocab_size, [14], 2)
    weights = [0.0] * 4 + [1.0] * 9 + [0.5]
    steps, lr = 3, 1e-2
    out = lathe_json("model", "logprobs", str(model_dir), "--adapter", str(tmp_path / "adapter"), "--tokens",
                     ",".join(map(str, tokens)), "--weights", ",".join(map(str, weights)), "--grads",
                     "--train-steps", str(steps), "--lr", str(lr), "--json")

    params = {peft_key(n): p for n, p in pm.named_parameters() if "lora_" in n}
    ids = torch.tensor([tokens])
    w = torch.tensor(weights[1:], dtype=torch.float32)

    def loss_fn():
        logits = pm(ids).logits[0, :-1].float()
        lp = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
        return -(w * lp).sum()

    pm.train()
    loss = loss_fn()
    loss.backward()
    assert close(out["loss"], loss.item(), 1e-4), f"loss engine {out['loss']} vs torch {loss.item()}"
    assert set(out["grads"]) == set(params), "gradient keys differ from PEFT's"
    for k, p in params.items():
        ref = p.grad.flatten()
        got = torch.tensor(out["grads"][k])
        scale = ref.abs().max().item()
        assert scale > 0, f"{k}: zero reference gradient (the check would be vacuous)"
        err = (got - ref).abs().max().item()
        assert err <= 1e-3 * scale, f"{k}: max |engine - torch| {err} vs max |torch| {scale}"

    opt = torch.optim.AdamW(list(params.values()), lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    losses = []
    for st in range(steps):
        if st > 0:
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
        losses.append(loss.item())
        opt.step()
    with torch.no_grad():
        losses.append(loss_fn().item())
    assert len(out["losses"]) == steps + 1
    for i, (a, b) in enumerate(zip(out["losses"], losses)):
        assert close(a, b, 1e-4), f"loss after {i} AdamW steps: engine {a} vs torch {b}"
    assert losses[-1] < losses[0]


def test_peft_loads_engine_adapter(model_dir, tmp_path):
    adir = tmp_path / "trained"
    (tokens,) = seqs(512, [10], 4)
    lathe("model", "logprobs", str(model_dir), "--lora-rank", "4", "--lora-alpha", "8", "--lora-seed", "5", "--lora-head",
          "--tokens", ",".join(map(str, tokens)), "--train-steps", "3", "--lr", "0.05", "--export-adapter",
          str(adir), "--json")
    cfg = json.loads((adir / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    assert sorted(cfg["target_modules"]) == sorted(TARGETS + ["lm_head"])
    pm = peft.PeftModel.from_pretrained(hf_model(model_dir), str(adir)).eval()
    base = hf_logprobs(hf_model(model_dir), tokens)
    ref = hf_logprobs(pm, tokens)
    assert max(abs(a - b) for a, b in zip(ref, base)) > 1e-3, "the trained adapter should change the model"
    got = lathe_json("model", "logprobs", str(model_dir), "--adapter", str(adir), "--tokens",
                     ",".join(map(str, tokens)), "--json")
    for i, (a, b) in enumerate(zip(got["logprobs"][1:], ref)):
        assert close(a, b, 1e-4), f"position {i + 1}: engine {a} vs peft {b}"
