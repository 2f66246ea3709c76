"""Model formats across the C/Python boundary.

* `lathe model init-tiny` for every architecture (and the tied-head, llama3-RoPE and bf16 variants) produces a
  directory that `transformers.AutoModelForCausalLM.from_pretrained` loads with the config lathe reports, whose
  tokenizer `tokenizers` loads (common words are single tokens, special tokens are added tokens, decode round
  trips) and whose chat template renders.
* A safetensors file written by C reads in Python `safetensors` (metadata, alignment, values); files written
  by Python (F32/BF16/F16, scalars, empty tensors, HF `save_pretrained` sharded checkpoints) read in C with the
  same values (`lathe model tensors` / `lathe model info`); malformed files fail with a message, not a crash.
"""

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
safetensors_torch = pytest.importorskip("safetensors.torch")
from safetensors import safe_open  # noqa: E402

ROOT = os.environ.get("LATHE_ROOT") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LATHE = os.environ.get("LATHE_BIN") or os.path.join(ROOT, "build", "lathe")
sys.path.insert(0, os.path.join(ROOT, "tests", "py"))
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


def lathe(*args, check=True):
    p = subprocess.run([LATHE, *args], capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"lathe {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p


def info(d):
    return json.loads(lathe("model", "info", d, "--json").stdout)


def c_tensors(path):
    return {t["name"]: t for t in json.loads(lathe("model", "tensors", path, "--json").stdout)["tensors"]}


VARIANTS = [
    ("llama", []),
    ("qwen2", []),
    ("qwen3", []),
    ("mistral", []),
    ("llama", ["--tie", "1", "--rope-scaling", "llama3", "--dtype", "bf16"]),
    ("qwen3", ["--tie", "1", "--head-dim", "32", "--dtype", "f16"]),
]


@pytest.mark.parametrize("arch,extra", VARIANTS, ids=[f"{a}{'-' + '-'.join(e[1::2]) if e else ''}" for a, e in VARIANTS])
def test_init_tiny_loads_in_transformers(tmp_path, arch, extra):
    d = str(tmp_path / arch)
    lathe("model", "init-tiny", d, "--arch", arch, "--seed", "7", *extra)
    meta = info(d)
    cfg = json.load(open(os.path.join(d, "config.json")))
    model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    assert type(model).__name__ == meta["architecture"] == cfg["architectures"][0]
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == meta["params"]
    assert meta["head_dim"] == model.config.head_dim
    assert meta["tie_word_embeddings"] == bool(model.config.tie_word_embeddings)
    if arch == "qwen2":
        assert model.model.layers[0].self_attn.q_proj.bias is not None
        assert meta["attention_bias"] is True
        assert float(model.model.layers[0].self_attn.k_proj.bias.detach().abs().sum()) > 0
    if arch == "qwen3":
        assert meta["qk_norm"] is True and hasattr(model.model.layers[0].self_attn, "q_norm")
    if "llama3" in extra:
        rp = model.config.rope_parameters
        assert rp["rope_type"] == "llama3" and meta["rope"]["type"] == "llama3"
        assert meta["rope"]["factor"] == rp["factor"]
    # HF state dict == what C reads (values through each reader)
    sd = model.state_dict()
    ct = c_tensors(d)
    for name, t in ct.items():
        assert name in sd, name
        assert list(sd[name].shape) == t["shape"]
        assert abs(float(sd[name].double().sum()) - t["sum"]) <= 1e-6 * (1 + abs(t["sum"]))
    # norms are 1, weights ~ N(0, 0.02)
    assert torch.all(model.model.norm.weight == 1)
    std = float(model.model.layers[0].mlp.up_proj.weight.detach().std())
    assert 0.015 < std < 0.025
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    logits = model(ids).logits
    assert logits.shape == (1, 5, meta["vocab_size"]) and torch.isfinite(logits).all()


def test_init_tiny_tokenizer(tmp_path):
    d = str(tmp_path / "m")
    lathe("model", "init-tiny", d)
    tok = tokenizers.Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    meta = info(d)
    assert tok.get_vocab_size(with_added_tokens=True) == meta["tokenizer_vocab"] == meta["vocab_size"] == 512
    for word in [" the", " and", " of", "The", " is", " model"]:
        assert len(tok.encode(word).ids) == 1, word
    text = "The quick brown fox: 12 tests, naïve café 😀!\r\n  done"
    enc = tok.encode(text)
    assert tok.decode(enc.ids) == text
    eot = tok.token_to_id("<|endoftext|>")
    assert eot == 509 and tok.token_to_id("<|im_end|>") == 511
    assert tok.encode("hi<|im_end|>").ids[-1] == 511
    # the chat template renders through transformers (jinja2)
    ht = transformers.AutoTokenizer.from_pretrained(d)
    s = ht.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert s == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    gen = json.load(open(os.path.join(d, "generation_config.json")))
    assert gen["eos_token_id"] == [509, 511]
    # byte vocabulary: no merges, 259 tokens, still a valid tokenizer
    b = str(tmp_path / "b")
    lathe("model", "init-tiny", b, "--vocab", "byte")
    tb = tokenizers.Tokenizer.from_file(os.path.join(b, "tokenizer.json"))
    assert tb.get_vocab_size(with_added_tokens=True) == 259
    assert len(tb.encode(" the").ids) == 4
    assert tb.decode(tb.encode(text).ids) == text
    # a vocab beyond what the corpus supports pads the embedding; the tokenizer stays valid
    big = str(tmp_path / "big")
    lathe("model", "init-tiny", big, "--vocab", "1024")
    mb = info(big)
    assert mb["vocab_size"] == 1024 and 259 < mb["tokenizer_vocab"] < 1024
    model = transformers.AutoModelForCausalLM.from_pretrained(big)
    assert model.get_input_embeddings().weight.shape[0] == 1024


def test_init_tiny_deterministic(tmp_path):
    a, b, c = (str(tmp_path / x) for x in "abc")
    lathe("model", "init-tiny", a, "--seed", "5")
    lathe("model", "init-tiny", b, "--seed", "5")
    lathe("model", "init-tiny", c, "--seed", "6")
    read = lambda d, f: open(os.path.join(d, f), "rb").read()  # noqa: E731
    for f in ["config.json", "tokenizer.json", "model.safetensors"]:
        assert read(a, f) == read(b, f)
    assert read(a, "model.safetensors") != read(c, "model.safetensors")


def test_c_written_safetensors_reads_in_python(tmp_path):
    d = str(tmp_path / "m")
    lathe("model", "init-tiny", d, "--arch", "qwen2", "--dtype", "bf16")
    path = os.path.join(d, "model.safetensors")
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        keys = list(f.keys())
        t = f.get_tensor("model.layers.0.self_attn.q_proj.bias")
        assert t.dtype == torch.bfloat16 and t.shape == (64,)
    ct = c_tensors(path)
    assert sorted(keys) == sorted(ct)
    # header padded to 8 bytes, every tensor aligned to its element size
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    assert n % 8 == 0
    header = json.loads(raw[8 : 8 + n])
    for k, v in header.items():
        if k != "__metadata__":
            assert v["data_offsets"][0] % (4 if v["dtype"] == "F32" else 2) == 0
    loaded = safetensors_torch.load_file(path)
    for k, t in loaded.items():
        assert abs(float(t.double().sum()) - ct[k]["sum"]) <= 1e-6 * (1 + abs(ct[k]["sum"]))


def test_python_written_safetensors_reads_in_c(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 5, generator=g),
        "bf16": torch.randn(7, generator=g).to(torch.bfloat16),
        "f16": (torch.randn(2, 2, 2, generator=g) * 1000).to(torch.float16),
        "f16.sub": torch.tensor([6e-8, -6e-8, 1e-5, 65504.0], dtype=torch.float16),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    path = str(tmp_path / "py.safetensors")
    safetensors_torch.save_file(tensors, path, metadata={"format": "pt"})
    ct = c_tensors(path)
    dt = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
    assert sorted(ct) == sorted(tensors)
    for k, t in tensors.items():
        assert ct[k]["dtype"] == dt[t.dtype]
        assert ct[k]["shape"] == list(t.shape)
        # widening is exact, so sums agree to double rounding
        assert abs(float(t.double().sum()) - ct[k]["sum"]) <= 1e-9 * (1 + abs(ct[k]["sum"]))
        if t.numel():
            assert ct[k]["first"] == float(t.flatten()[0].double())


def test_hf_sharded_checkpoint_reads_in_c(tmp_path):
    src = str(tmp_path / "src")
    lathe("model", "init-tiny", src, "--arch", "qwen3")
    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    out = str(tmp_path / "sharded")
    model.save_pretrained(out, max_shard_size="100KB")
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        with open(os.path.join(src, f), "rb") as a, open(os.path.join(out, f), "wb") as b:
            b.write(a.read())
    assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
    meta = info(out)
    assert meta["weight_files"] > 1
    assert meta["params"] == sum(p.numel() for p in model.parameters())
    ct = c_tensors(out)
    sd = model.state_dict()
    for name, t in ct.items():
        assert abs(float(sd[name].double().sum()) - t["sum"]) <= 1e-6 * (1 + abs(t["sum"]))


def test_malformed_inputs_fail_cleanly(tmp_path):
    d = str(tmp_path / "m")
    lathe("model", "init-tiny", d)
    path = os.path.join(d, "model.safetensors")
    raw = open(path, "rb").read()
    bad = str(tmp_path / "trunc.safetensors")
    open(bad, "wb").write(raw[:-10])
    p = lathe("model", "tensors", bad, check=False)
    assert p.returncode == 1 and "trunc.safetensors" in p.stderr and "run past" in p.stderr
    # a config key broken -> info names it
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["num_key_value_heads"] = 3
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    p = lathe("model", "info", d, check=False)
    assert p.returncode == 1 and "num_key_value_heads" in p.stderr
    # a weight with the wrong shape -> info names the tensor and both shapes
    cfg["num_key_value_heads"] = 2
    cfg["intermediate_size"] = 96
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    p = lathe("model", "info", d, check=False)
    assert p.returncode == 1 and "mlp.gate_proj.weight' has shape [128, 64], expected [96, 64]" in p.stderr
    p = lathe("model", "info", str(tmp_path / "nowhere"), check=False)
    assert p.returncode == 4
    p = lathe("model", "init-tiny", str(tmp_path / "x"), "--heads", "5", check=False)
    assert p.returncode == 2 and "--heads" in p.stderr


def test_hfref_lora_keys_and_loss(tmp_path):
    import hfref

    d = str(tmp_path / "m")
    lathe("model", "init-tiny", d, "--arch", "qwen2")
    model = hfref.load_model(d, "f64")
    keys = dict(hfref.lora_keys(model, 4, ["q", "down"]))
    assert keys["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] == [4, 64]
    assert keys["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"] == [64, 4]
    model = hfref.load_model(d, "f64")
    pm = hfref.add_lora(model, 2, 4, ["q", "v"], seed=1)
    batch = hfref.make_batch([[5, 6, 7, 8], [9, 10, 11]], weights=[[1, 0, 2], [1, -1]])
    loss, lps, grads = hfref.lora_grads(pm, batch)
    manual = -(lps[0][0] + 2 * lps[0][2] + lps[1][0] - lps[1][1])
    assert abs(float(loss) - float(manual)) < 1e-12
    # B = 0 at init: dA is zero, dB is not
    a = grads["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = grads["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    assert float(a.abs().max()) == 0.0 and float(b.abs().max()) > 0.0
    # with B = 0 the adapter is a no-op: logprobs equal the base model's
    base = hfref.load_model(d, "f64")
    _, base_lps = hfref.batch_loss(base, batch)
    assert torch.allclose(base_lps[0], lps[0], rtol=0, atol=1e-12)
    losses, norms, params = hfref.adamw_train(pm, batch, steps=3, lr=1e-2)
    assert len(losses) == 3 and losses[2] < losses[0]


def test_init_tiny_tokenizer_matches_c_tokenizer(tmp_path):
    """lathe's own tokenizer (`lathe tokenize --lines`) is token-exact with `tokenizers` on the tiny tokenizer."""
    d = str(tmp_path / "m")
    lathe("model", "init-tiny", d)
    texts = [
        "The quick brown fox: 12 tests, naïve café 😀!",
        "What is the capital of France?\r\n  It's Paris.  ",
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        "   leading spaces and\ttabs\n\n\nTHE END'S NEAR 2024",
    ]
    lines = str(tmp_path / "lines.jsonl")
    with open(lines, "w") as f:
        for t in texts:
            f.write(json.dumps(t) + "\n")
    p = lathe("tokenize", d, "--lines", lines, check=False)
    assert p.returncode == 0, p.stderr
    got = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
    tok = tokenizers.Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    assert got == [tok.encode(t).ids for t in texts]


def test_init_std(tmp_path):
    # default: HF's initializer_range exactly; --init-std scales every normal-initialised weight
    lathe("model", "init-tiny", str(tmp_path / "d"), "--seed", "5")
    lathe("model", "init-tiny", str(tmp_path / "w"), "--seed", "5", "--init-std", "0.1")
    assert json.load(open(tmp_path / "d" / "config.json"))["initializer_range"] == 0.02
    assert json.load(open(tmp_path / "w" / "config.json"))["initializer_range"] == 0.1
    d = safetensors_torch.load_file(str(tmp_path / "d" / "model.safetensors"))
    w = safetensors_torch.load_file(str(tmp_path / "w" / "model.safetensors"))
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "lm_head.weight"):
        assert abs(d[name].std().item() - 0.02) < 0.002, name
        assert abs(w[name].std().item() - 0.1) < 0.01, name
    assert torch.equal(w["model.norm.weight"], torch.ones_like(w["model.norm.weight"]))
    assert lathe("model", "init-tiny", str(tmp_path / "x"), "--init-std", "0", check=False).returncode == 2
