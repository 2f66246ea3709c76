"""`--compute bf16` against PyTorch: an exact emulation of its numerics, and torch's CPU bf16 autocast.

What lathe's bf16 compute is: every GEMM with a frozen base weight (q, k, v, o, gate, up, down and the LM head)
takes bf16 inputs (the activation, or in backward the output gradient, rounded to nearest even; the weight as
stored or rounded) and sums the exact products in f32. LoRA, attention, norms, softmax and the loss stay f32.

Two references, on a tiny random Llama with bf16 weights (so the weights are exactly representable on both
sides and only the rounding of activations differs):

  1. Emulation: the same model in f32 PyTorch where each base linear computes bf16(x) bf16(W)^T in f32, and its
     backward bf16(dy) bf16(W) (a custom autograd function: autograd through .to(bfloat16) would round the
     result instead of the input). This is lathe's arithmetic up to f32 summation order, and up to the rare
     input that order puts on the other side of a bf16 rounding boundary (FLIP below): log-probabilities
     within 1e-3 relative (2.5e-4 on average), LoRA gradients within 1e-2 of the tensor's largest entry. A
     kernel that rounded differently (truncation: biased, up to 2^-8 relative per input) or read a weight
     transposed fails by far more.

  2. Autocast: `torch.autocast("cpu", dtype=torch.bfloat16)`, what a PyTorch user gets, which rounds more
     (LoRA and attention matmuls too, and it returns bf16 logits: |logit| 2^-9 of rounding each). Both
     computations sit at a bf16 distance from the f32 result; we assert that lathe's bf16 is no farther from f32
     than 2x torch's own bf16 deviation plus 2^-9 (1 + |logprob|) (one bf16 rounding of the logit scale), and
     that lathe and autocast agree within the sum of their deviations. The 2^-9 term is one unit of bf16
     rounding: a single rounding per input of K-term dot products gives a relative output error of at most
     2 * 2^-9 * sum|a w| / |sum a w| per layer, which random weights keep O(1), over 2 layers + head.
     Gradients: lathe's LoRA gradients against autocast's within 5e-2 of the tensor's largest entry (bf16
     carries 8 significant bits, 2^-8 = 4e-3 per rounding, through forward and backward of 2 layers), and
     against the f32 gradients no farther than 2x autocast's distance from them.

And bf16 really runs: lathe --compute bf16 differs from lathe f32 by far more than f32 summation noise.
The engine is reached through `lathe model logprobs` (--compute, --grads, as in test_engine_ref.py).
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
U = 2.0**-9  # one bf16 rounding (relative, round to nearest)
# Emulation vs lathe: f32 summation order differs (~1e-7 relative), and where a value lies that close to a bf16
# rounding boundary the two round it to neighbouring bf16 values: a flip moves that one input by 2^-8 of itself,
# which moves the log-probabilities downstream by ~1e-5..1e-4 on this model (measured: most positions 1e-8..1e-5).
# Allowed: 1e-3 at most and 2.5e-4 on average (measured up to 1.2e-4 between the amx and avx2 paths), an order of magnitude under autocast's bf16 deviation (~1e-2),
# where a systematic difference (truncation's bias of -2^-9 per input, a wrong operand) moves every position.
FLIP = 1e-3


def lathe(*args, env=None):
    p = subprocess.run([LATHE, *args], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, f"lathe {' '.join(args)} failed ({p.returncode}): {p.stderr}"
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bf16") / "model"
    subprocess.run([LATHE, "model", "init-tiny", str(d), "--dtype", "bf16", "--hidden", "128", "--heads", "4",
                    "--kv-heads", "2", "--intermediate", "384", "--layers", "2", "--seed", "7", "--init-std",
                    "0.05"], check=True, capture_output=True, timeout=120)
    return d


def hf_model(d):
    return transformers.AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32,
                                                             attn_implementation="eager").eval()


def bf(t):
    return t.to(torch.bfloat16).to(torch.float32)


class Bf16Linear(torch.autograd.Function):
    """y = bf16(x) bf16(W)^T (+ b) summed in f32; dx = bf16(dy) bf16(W): lathe's base-weight GEMMs."""

    @staticmethod
    def forward(ctx, x, w, b):
        wb = bf(w)
        ctx.save_for_backward(wb)
        y = bf(x) @ wb.t()
        return y if b is None else y + b

    @staticmethod
    def backward(ctx, dy):
        (wb,) = ctx.saved_tensors
        return bf(dy) @ wb, None, None


def emulate(model):
    """Every base linear (the LoRA wrappers' base_layer, and the head) computes as lathe's bf16 compute."""
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and "lora_" not in name:
            mod.forward = (lambda m: lambda x: Bf16Linear.apply(x, m.weight, m.bias))(mod)
    return model


def tokens_of(vocab, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


def hf_logprobs(model, toks, autocast=False):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(torch.tensor([toks])).logits[0].float().double()
    lp = torch.log_softmax(logits, dim=-1)
    return torch.tensor([lp[i, toks[i + 1]].item() for i in range(len(toks) - 1)], dtype=torch.float64)


def lathe_logprobs(d, toks, compute):
    out = lathe("model", "logprobs", str(d), "--tokens", ",".join(map(str, toks)), "--json", "--compute", compute)
    return torch.tensor(out["logprobs"][1:], dtype=torch.float64)


def test_logprobs_bf16(model_dir):
    toks = tokens_of(512, 24, 1)
    f32 = hf_logprobs(hf_model(model_dir), toks)
    emu = hf_logprobs(emulate(hf_model(model_dir)), toks)
    auto = hf_logprobs(hf_model(model_dir), toks, autocast=True)
    l32, lb = lathe_logprobs(model_dir, toks, "f32"), lathe_logprobs(model_dir, toks, "bf16")
    scale = 1.0 + f32.abs()
    # the f32 path is unchanged, and bf16 really ran (f32 reordering noise is ~1e-6 here)
    assert ((l32 - f32).abs() <= 1e-4 * scale).all()
    assert (lb - l32).abs().max().item() > 1e-3, "--compute bf16 gave the f32 result: bf16 did not run"
    # 1. lathe bf16 == the emulation of its arithmetic (up to rounding flips, see FLIP)
    err = (lb - emu).abs() / scale
    assert err.max().item() <= FLIP, f"lathe bf16 vs emulation: max relative {err.max().item():.3g}"
    assert err.mean().item() <= FLIP / 4, f"lathe bf16 vs emulation: mean relative {err.mean().item():.3g}"
    # 2. against autocast: both at a bf16 distance from f32
    d_auto = ((auto - f32).abs() / scale).max().item()
    d_lathe = ((lb - f32).abs() / scale).max().item()
    assert d_lathe <= 2 * d_auto + U, f"lathe bf16 {d_lathe:.3g} from f32, autocast {d_auto:.3g}"
    d_both = ((lb - auto).abs() / scale).max().item()
    assert d_both <= d_auto + d_lathe + U, f"lathe bf16 vs autocast {d_both:.3g}"


def random_adapter(model, path, seed, rank=4, alpha=8.0):
    cfg = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=TARGETS, lora_dropout=0.0, bias="none",
                          task_type="CAUSAL_LM")
    pm = peft.get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_((torch.rand(p.shape, generator=g) - 0.5) * 0.2)
    pm.save_pretrained(str(path))
    return pm


def torch_grads(pm, toks, weights, autocast=False):
    ids = torch.tensor([toks])
    w = torch.tensor(weights[1:], dtype=torch.float32)
    pm.train()
    pm.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = pm(ids).logits[0, :-1].float()
    lp = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
    loss = -(w * lp).sum()
    loss.backward()
    return loss.item(), {n.replace(".default", ""): p.grad.flatten().clone() for n, p in pm.named_parameters()
                         if "lora_" in n}


def test_lora_grads_bf16(model_dir, tmp_path):
    adapter = tmp_path / "adapter"
    pm = random_adapter(hf_model(model_dir), adapter, seed=3)
    toks = tokens_of(512, 20, 2)
    weights = [0.0] * 4 + [1.0] * 15 + [0.5]
    out = {c: lathe("model", "logprobs", str(model_dir), "--adapter", str(adapter), "--tokens",
                    ",".join(map(str, toks)), "--weights", ",".join(map(str, weights)), "--grads", "--json",
                    "--compute", c) for c in ("f32", "bf16")}
    loss32, g32 = torch_grads(pm, toks, weights)
    loss_auto, gauto = torch_grads(pm, toks, weights, autocast=True)
    emu = emulate(random_adapter(hf_model(model_dir), tmp_path / "adapter2", seed=3))
    loss_emu, gemu = torch_grads(emu, toks, weights)
    lb = out["bf16"]
    assert abs(out["f32"]["loss"] - loss32) <= 1e-4 * max(1.0, abs(loss32))
    assert abs(lb["loss"] - loss_emu) <= 1e-4 * max(1.0, abs(loss_emu)), f"loss {lb['loss']} vs {loss_emu}"
    assert abs(lb["loss"] - loss_auto) <= 4 * U * max(1.0, abs(loss_auto)), f"loss {lb['loss']} vs {loss_auto}"
    assert set(lb["grads"]) == set(g32)
    moved = 0.0
    for k, ref in g32.items():
        got = torch.tensor(lb["grads"][k])
        scale = ref.abs().max().item()
        assert scale > 0, f"{k}: zero reference gradient (the check would be vacuous)"
        e_emu = (got - gemu[k]).abs().max().item()
        assert e_emu <= 10 * FLIP * scale, f"{k}: lathe bf16 vs emulation {e_emu:.3g} (max |g| {scale:.3g})"
        e_auto = (got - gauto[k]).abs().max().item()
        assert e_auto <= 5e-2 * scale, f"{k}: lathe bf16 vs autocast {e_auto:.3g} (max |g| {scale:.3g})"
        d_lathe = (got - ref).abs().max().item()
        d_auto = (gauto[k] - ref).abs().max().item()
        assert d_lathe <= 2 * d_auto + 1e-3 * scale, f"{k}: from f32 lathe {d_lathe:.3g}, autocast {d_auto:.3g}"
        moved = max(moved, (got - torch.tensor(out["f32"]["grads"][k])).abs().max().item() / scale)
    assert moved > 1e-4, "bf16 gradients equal the f32 ones: bf16 did not run"


@pytest.mark.parametrize("path", ["amx", "avx512bf16", "avx2"])
def test_paths_agree(model_dir, path):
    """Every bf16 path this CPU has (LATHE_BF16_PATH forces one; a missing one falls back) gives the same
    log-probabilities, up to rounding flips (the paths sum in different orders)."""
    toks = tokens_of(512, 16, 4)
    base = lathe("model", "logprobs", str(model_dir), "--tokens", ",".join(map(str, toks)), "--json",
                 "--compute", "bf16", env={**os.environ, "LATHE_BF16_PATH": "avx2"})
    got = lathe("model", "logprobs", str(model_dir), "--tokens", ",".join(map(str, toks)), "--json",
                "--compute", "bf16", env={**os.environ, "LATHE_BF16_PATH": path})
    a, b = torch.tensor(got["logprobs"][1:]), torch.tensor(base["logprobs"][1:])
    err = (a - b).abs() / (1.0 + b.abs())
    assert err.max().item() <= FLIP and err.mean().item() <= FLIP / 4, f"path {path} vs avx2: {err.max().item()}"
