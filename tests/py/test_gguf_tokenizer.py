"""Token-exact parity of lathe's GGUF tokenizer (engine/tokenizer_gguf.c: the tokenizer.json a GGUF's
tokenizer.ggml.* metadata describes) with Hugging Face `tokenizers`, over the corpus of test_tokenizer_parity.py
plus the strings where pre-tokenizers disagree ("1  2  3", " ½", "٣٤", ...).

  smollm     the real SmolLM2-135M-Instruct GGUF. The reference is built in Python from the GGUF's own vocab
             and merges (read with gguf-py) and SmolLM2's published pre-tokenizer, Sequence[Digits(individual),
             ByteLevel(add_prefix_space=False)]: NOT transformers' GGUF loader, which ignores `smollm` and
             falls back to plain GPT-2 rules.
  llama-bpe  a GGUF written here (gguf-py GGUFWriter) from the Llama 3 fixture tokenizer.json: vocab, merges,
             token types (3 for special added tokens, 4 for the others) and the pre name; the reference is
             Tokenizer.from_file(that tokenizer.json).
  qwen2      the same from the Qwen3 fixture (Qwen2's regex + NFC).
  gpt2       the same from SmolLM2's vocabulary with GPT-2's ByteLevel regex (the reference tokenizer above with
             pre_tokenizer ByteLevel(add_prefix_space=False), saved as tokenizer.json).
Encoding with special tokens parsed and as plain text, and decoding the reference ids back, must all agree."""
import os

import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from test_tokenizer_parity import CORPUS, FIX, HAND, report, run_lines

gguf = pytest.importorskip("gguf")

ROOT = os.environ.get("LATHE_ROOT", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SMOLLM2 = os.environ.get("LATHE_SMOLLM2_GGUF",
                         os.path.expanduser("~/.cache/lathe/models/SmolLM2-135M-Instruct.Q4_1.gguf"))

# where smollm's Digits(individual) and the GPT-2 regex (what transformers' GGUF loader uses) disagree
DIGITS = ["1  2  3", " ½", "٣٤", "٣٤٥ ½ ²", "12345", " 12345", "a1b22c333", "3.14159 and 2,718", "x  9  y",
          "1\u00a02", "０１２３", "Ⅻ 𝟘𝟙𝟚", "  1", "1  ", "<|im_start|>12<|im_end|>", "<|endoftext|> 7"]
STRINGS = HAND + DIGITS + CORPUS[len(HAND):]


def gguf_strings(reader, key):
    f = reader.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def gguf_ints(reader, key):
    f = reader.fields[key]
    return [int(f.parts[i][0]) for i in f.data]


def smollm_reference(path):
    r = gguf.GGUFReader(path)
    assert bytes(r.fields["tokenizer.ggml.pre"].parts[-1]).decode() == "smollm"
    toks = gguf_strings(r, "tokenizer.ggml.tokens")
    types = gguf_ints(r, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ")) for m in gguf_strings(r, "tokenizer.ggml.merges")]
    unk = toks[gguf_ints(r, "tokenizer.ggml.unknown_token_id")[0]]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(toks)}, merges, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(toks[i], special=True, normalized=False) for i in range(len(toks))
                            if types[i] == 3])
    tok.add_tokens([AddedToken(toks[i], special=False, normalized=False) for i in range(len(toks)) if types[i] == 4])
    return tok


def write_gguf_from_json(tj_path, pre, out):
    """A GGUF holding only the tokenizer of a tokenizer.json, as llama.cpp's converter writes it."""
    import json
    tj = json.load(open(tj_path, encoding="utf-8"))
    vocab = tj["model"]["vocab"]
    added = {a["id"]: a for a in tj["added_tokens"]}
    n = max(list(vocab.values()) + list(added)) + 1
    toks, types = [None] * n, [1] * n
    for t, i in vocab.items():
        toks[i] = t
    for i, a in added.items():
        toks[i] = a["content"]
        types[i] = 3 if a["special"] else 4
    assert None not in toks
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    w = gguf.GGUFWriter(out, "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="module", params=["smollm", "llama-bpe", "qwen2", "gpt2"])
def tok(request, tmp_path_factory):
    if request.param in ("smollm", "gpt2") and not os.path.exists(SMOLLM2):
        pytest.skip(f"{SMOLLM2} not found: scripts/setup.sh fetches the SmolLM2 GGUF")
    if request.param == "smollm":
        return request.param, SMOLLM2, smollm_reference(SMOLLM2)
    if request.param == "gpt2":
        ref = smollm_reference(SMOLLM2)
        ref.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        d = tmp_path_factory.mktemp("gpt2")
        ref.save(str(d / "tokenizer.json"))
        path = write_gguf_from_json(str(d / "tokenizer.json"), "gpt2", str(d / "gpt2.gguf"))
        return request.param, path, Tokenizer.from_file(str(d / "tokenizer.json"))
    fam = "llama3" if request.param == "llama-bpe" else "qwen3"
    tj = os.path.join(FIX, fam, "tokenizer.json")
    path = write_gguf_from_json(tj, request.param, str(tmp_path_factory.mktemp("gguf") / (fam + ".gguf")))
    return request.param, path, Tokenizer.from_file(tj)


def test_encode_parity(tok):
    name, path, hf = tok
    got = run_lines(["tokenize", "--tokenizer", path], STRINGS)
    bad = [(s, w, g) for s, g in zip(STRINGS, got) for w in [hf.encode(s, add_special_tokens=False).ids] if g != w]
    report(f"gguf {name} encode", len(STRINGS) - len(bad), len(STRINGS), bad)
    assert not bad


def test_encode_specials_as_text(tok):
    name, path, hf = tok
    hf.encode_special_tokens = True
    try:
        sample = [s for s in STRINGS if "<" in s] + HAND + DIGITS
        got = run_lines(["tokenize", "--tokenizer", path, "--no-special"], sample)
        bad = [(s, w, g) for s, g in zip(sample, got) for w in [hf.encode(s, add_special_tokens=False).ids]
               if g != w]
    finally:
        hf.encode_special_tokens = False
    report(f"gguf {name} encode --no-special", len(sample) - len(bad), len(sample), bad)
    assert not bad


def test_decode_parity(tok):
    name, path, hf = tok
    ids = [hf.encode(s, add_special_tokens=False).ids for s in STRINGS]
    got = run_lines(["detokenize", "--tokenizer", path], ids)
    bad = [(i, w, g) for i, g in zip(ids, got) for w in [hf.decode(i, skip_special_tokens=False)] if g != w]
    report(f"gguf {name} decode", len(ids) - len(bad), len(ids), bad)
    assert not bad


def test_smollm_differs_from_plain_gpt2_rules():
    """The rule transformers' GGUF loader misses: with plain GPT-2 rules digit runs stay whole ("1  2  3" keeps
    " 2" as one pre-token); lathe follows SmolLM2's Digits(individual) rule on every one of these strings."""
    if not os.path.exists(SMOLLM2):
        pytest.skip(f"{SMOLLM2} not found")
    ref = smollm_reference(SMOLLM2)
    gpt2 = smollm_reference(SMOLLM2)
    gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    got = run_lines(["tokenize", "--tokenizer", SMOLLM2], DIGITS)
    differ = []
    for s, g in zip(DIGITS, got):
        assert g == ref.encode(s, add_special_tokens=False).ids, s
        if g != gpt2.encode(s, add_special_tokens=False).ids:
            differ.append(s)
    print(f"\nsmollm vs plain GPT-2 rules: {len(differ)}/{len(DIGITS)} strings differ: {differ}")
    assert "1  2  3" in differ and " ½" in differ


def test_unknown_pre_tokenizer_is_named(tmp_path):
    tj = os.path.join(FIX, "qwen3", "tokenizer.json")
    path = write_gguf_from_json(tj, "falcon", str(tmp_path / "x.gguf"))
    import subprocess
    p = subprocess.run([os.environ.get("LATHE_BIN", os.path.join(ROOT, "build", "lathe")), "tokenize", path,
                        "--text", "hi"], capture_output=True, timeout=60)
    assert p.returncode != 0
    err = p.stderr.decode()
    assert 'tokenizer.ggml.pre "falcon"' in err and "smollm" in err and "llama-bpe" in err, err
