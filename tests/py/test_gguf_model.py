"""Models read from GGUF files compute what Hugging Face transformers computes on the same file.

* The real SmolLM2-135M-Instruct GGUF (llama architecture, Q4_1 linears, Q8_0 embeddings, F32 norms, tied head,
  Q/K rows permuted by llama.cpp's converter): lathe's per-token log-probabilities (`lathe model logprobs
  FILE.gguf --tokens ...`) against transformers' `from_pretrained(dir, gguf_file=name, dtype=float32)` over a
  few hundred tokens (natural text and random ids). transformers dequantizes the blocks to f32; lathe keeps them
  as stored and dequantizes per tile inside its GEMMs, so the difference is float32 rounding: the max abs
  difference is printed and must stay below 1e-3.
* Tiny random qwen2 (q/k/v bias, separate head), qwen3 (q/k norm, head_dim != hidden/heads) and llama models:
  `lathe model init-tiny` writes the HF dir, gguf-py's GGUFWriter writes it as GGUF the way convert_hf_to_gguf
  names and lays out tensors (llama Q/K rows permuted), and lathe on the GGUF must equal transformers on the GGUF
  and lathe on the original dir.
Token ids are fed to both sides as ids: transformers 5.x's GGUF tokenizer ignores the `smollm` pre-tokenizer, so
it is used for weights only (the text below has no digits, where the two rules differ).
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")
safetensors_torch = pytest.importorskip("safetensors.torch")

ROOT = Path(os.environ.get("LATHE_ROOT", Path(__file__).resolve().parents[2]))
LATHE = os.environ.get("LATHE_BIN", str(ROOT / "build" / "lathe"))

TEXT = (
    "The old lighthouse keeper climbed the spiral stairs every evening, counting the steps out of habit. "
    "From the top he could see the whole bay: fishing boats returning with their nets, gulls circling over "
    "the harbour, and the long shadow of the cliffs stretching across the water. He lit the lamp, wiped the "
    "salt from the glass, and wrote a short line in the logbook, as his father had done before him. "
    "Nobody had asked him to keep the log; the ships all carried radios now, and the light itself was "
    "switched by a timer that the harbour office had installed years ago. Still, he liked the ritual. "
    "It reminded him that someone was watching, that the sea was not empty, and that every small light "
    "on the horizon belonged to a person trying to get home before the weather turned."
)


def smollm2_path():
    try:
        p = subprocess.run([str(ROOT / "scripts" / "smollm2-path")], capture_output=True, text=True).stdout.strip()
    except OSError:
        return None
    return p if p and Path(p).is_file() else None


def lathe(*args):
    p = subprocess.run([LATHE, *args], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"lathe {' '.join(args)} failed ({p.returncode}): {p.stderr}"
    return p


def lathe_logprobs(model, seqs):
    """Per-token log-probs of each sequence (a right-padded batch), element 0 dropped."""
    arg = ";".join(",".join(str(t) for t in s) for s in seqs)
    out = json.loads(lathe("model", "logprobs", str(model), "--tokens", arg, "--json").stdout)
    rows = out["sequences"] if "sequences" in out else [out]
    return [torch.tensor(r["logprobs"][1:], dtype=torch.float64) for r in rows]


def hf_logprobs(model, seq):
    ids = torch.tensor([seq])
    with torch.no_grad():
        logits = model(ids).logits.double()
    return torch.log_softmax(logits, -1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]


def hf_from_gguf(path):
    path = Path(path)
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()


def test_smollm2_logprobs_match_transformers():
    path = smollm2_path()
    if not path:
        pytest.skip("SmolLM2-135M-Instruct.Q4_1.gguf is not installed (scripts/setup.sh fetches it)")
    d, name = os.path.split(path)
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=name)
    text_ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert 150 <= len(text_ids) <= 400, len(text_ids)
    g = torch.Generator().manual_seed(0)
    random_ids = torch.randint(0, 49152, (120,), generator=g).tolist()
    model = hf_from_gguf(path)

    info = lathe("model", "logprobs", path, "--tokens", "1,2,3")
    assert "GGUF weights kept as stored: Q4_1" in info.stderr, info.stderr

    ours = lathe_logprobs(path, [text_ids, random_ids])
    worst = 0.0
    n = 0
    for seq, lp in zip([text_ids, random_ids], ours):
        ref = hf_logprobs(model, seq)
        assert lp.shape == ref.shape
        worst = max(worst, (lp - ref).abs().max().item())
        n += len(seq) - 1
    # the text is real English: the model predicts it far better than chance
    assert ours[0].mean().item() > -4.0, ours[0].mean().item()
    print(f"\nSmolLM2 GGUF: {n} tokens, max |lathe - transformers| log-prob = {worst:.3g}")
    assert worst < 1e-3


def write_gguf_from_dir(model_dir, out, arch):
    """An HF dir (f32 safetensors) as a GGUF the way convert_hf_to_gguf writes it."""
    cfg = json.loads((model_dir / "config.json").read_text())
    sd = safetensors_torch.load_file(str(model_dir / "model.safetensors"))
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    C = cfg["hidden_size"]
    hd = cfg.get("head_dim") or C // H
    w = gguf.GGUFWriter(str(out), arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(C)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"<t{i}>" for i in range(cfg["vocab_size"])])
    w.add_token_types([1] * cfg["vocab_size"])
    w.add_token_merges([])
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])

    def permute(t, n_head):
        return t.reshape(n_head, 2, t.shape[0] // n_head // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    names = {
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "self_attn.q_proj.bias": "attn_q.bias",
        "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.v_proj.bias": "attn_v.bias",
        "self_attn.q_norm.weight": "attn_q_norm.weight",
        "self_attn.k_norm.weight": "attn_k_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    for k, t in sd.items():
        t = t.float()
        if k == "model.embed_tokens.weight":
            g = "token_embd.weight"
        elif k == "model.norm.weight":
            g = "output_norm.weight"
        elif k == "lm_head.weight":
            g = "output.weight"
        else:
            parts = k.split(".")
            g = f"blk.{parts[2]}." + names[".".join(parts[3:])]
            if arch == "llama" and parts[4] in ("q_proj", "k_proj"):
                t = permute(t, H if parts[4] == "q_proj" else KV)
        w.add_tensor(g, t.numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


TINY = {
    "llama": ["--arch", "llama", "--vocab", "byte"],
    "qwen2": ["--arch", "qwen2", "--vocab", "byte"],
    # head_dim 128 (every published Qwen3's; != hidden/heads): transformers' GGUF loader ignores
    # qwen3.attention.key_length and assumes Qwen3Config's default 128. lathe reads the key (unit-tested).
    "qwen3": ["--arch", "qwen3", "--vocab", "byte", "--head-dim", "128"],
}


@pytest.mark.parametrize("arch", sorted(TINY))
def test_tiny_gguf_matches_transformers_and_dir(arch, tmp_path):
    d = tmp_path / "model"
    lathe("model", "init-tiny", str(d), *TINY[arch], "--init-std", "0.1", "--seed", "3")
    f = tmp_path / f"tiny-{arch}.gguf"
    write_gguf_from_dir(d, f, arch)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 256, (40,), generator=g).tolist(), torch.randint(0, 256, (25,), generator=g).tolist()]
    from_gguf = lathe_logprobs(f, seqs)
    from_dir = lathe_logprobs(d, seqs)
    for a, b in zip(from_gguf, from_dir):
        assert torch.equal(a, b), (a - b).abs().max()
    if arch == "llama":  # the benches run on a GGUF's own weights (figures are not asserted)
        out = json.loads(lathe("bench", "sample", "--model", str(f), "--threads", "1", "--json").stdout)
        assert out["model"] == str(f) and out["preset"] is None and out["tokens_per_s_batch1"] > 0
        out = json.loads(lathe("bench", "train", "--model", str(f), "--steps", "1", "--seq", "16", "--json").stdout)
        assert out["model"] == str(f) and out["tokens_per_s"] > 0
        p = subprocess.run([LATHE, "bench", "sample", "--model", str(d), "--peer", "llama.cpp"], capture_output=True,
                           text=True)
        assert p.returncode == 2 and "FILE.gguf" in p.stderr  # the peer needs a GGUF
    try:
        model = hf_from_gguf(f)
    except (ValueError, KeyError, NotImplementedError) as e:  # an architecture transformers' GGUF loader lacks
        pytest.skip(f"transformers cannot load a {arch} GGUF: {e}")
    worst = 0.0
    for seq, lp in zip(seqs, from_gguf):
        worst = max(worst, (lp - hf_logprobs(model, seq)).abs().max().item())
    print(f"\ntiny {arch} GGUF: max |lathe - transformers| log-prob = {worst:.3g}")
    assert worst < 1e-4


def test_smollm2_info_and_local_sft(tmp_path):
    path = smollm2_path()
    if not path:
        pytest.skip("SmolLM2-135M-Instruct.Q4_1.gguf is not installed (scripts/setup.sh fetches it)")
    info = json.loads(lathe("model", "info", path, "--json").stdout)
    assert info["format"] == "gguf" and info["gguf_version"] == 3
    assert info["architecture"] == "LlamaForCausalLM" and info["family"] == "llama"
    assert (info["num_layers"], info["hidden_size"], info["num_heads"], info["num_kv_heads"]) == (30, 576, 9, 3)
    assert info["params"] == 134515008 and info["context_length"] == 8192 and info["vocab_size"] == 49152
    assert info["quantization"] == "Q4_1" and info["file_type"] == 3
    assert {k: v["tensors"] for k, v in info["tensor_types"].items()} == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    assert info["tie_word_embeddings"] is True and info["rope"] == {"type": "default", "theta": 100000.0}
    res = info["resident"]  # matrices as stored; the norms are F32 in the file already
    assert res["matrices"] == "as stored" and res["f32_bytes"] == 4 * info["params"]
    assert res["bytes"] == info["weight_bytes"]
    assert info["tokenizer"]["model"] == "gpt2" and info["tokenizer"]["pre"] == "smollm"
    assert info["tokenizer"]["chat_template"] is True
    text = lathe("model", "info", path).stdout
    assert "Q4_1 x210" in text and "matrices as stored" in text

    # the local trainer takes the file as --model
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": "Say the secret word.", "answer": "Pumpernickel."}) + "\n" for _ in range(2)))
    out = tmp_path / "out"
    p = lathe("train", "sft", "--model", path, "--data", str(data), "--out", str(out), "--steps", "2",
              "--batch-size", "1", "--lr", "0.003", "--lora-rank", "2")
    assert "GGUF weights kept as stored" in p.stdout, p.stdout
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 2
