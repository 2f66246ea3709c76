"""Token-exact parity of `lathe tokenize` / `lathe detokenize` with Hugging Face `tokenizers` on the real
Llama 3 and Qwen3 tokenizer.json files (tests/fixtures/tokenizers).

The corpus is a hand-written list of hard cases (contractions in any case, digit runs, CJK, emoji, combining
marks, NBSP and other Unicode spaces, CRLF, long whitespace runs, special tokens inside text) plus a few
thousand lines generated deterministically from the same ingredients. The C side runs in batch mode
(`--lines`), one process per tokenizer and direction."""
import json
import os
import random
import subprocess
import tempfile
import unicodedata

import pytest
from tokenizers import Tokenizer

ROOT = os.environ.get("LATHE_ROOT", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BIN = os.environ.get("LATHE_BIN", os.path.join(ROOT, "build", "lathe"))
FIX = os.path.join(ROOT, "tests", "fixtures", "tokenizers")
FAMILIES = ["llama3", "qwen3"]

HAND = [
    "",
    " ",
    "Hello world",
    "I'm sure you'll see they've done what we'd said: it's John's.",
    "I'M SURE YOU'LL SEE THEY'VE DONE WHAT WE'D SAID: IT'S JOHN'S.",
    "i'M sUrE yOu'Ll sEe ThEy'Ve",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'Ve 'M 'LL 'D x'ſ Y'ſ",
    "1 12 123 1234 12345 123456 1234567 3.14159 1,000,000 0x7f",
    "٣٤٥ ৫৬ ²³ ½ Ⅻ 𝟘𝟙𝟚",
    "你好，世界！这是一个测试。",
    "日本語のテキスト、カタカナとひらがな。",
    "한국어 텍스트 안녕하세요",
    "\u1100\u1161\u11a8 decomposed hangul \u1112\u1161\u11ab",
    "emoji 😀👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️",
    "cafe\u0301 nai\u0308ve A\u030a \u0041\u0301\u0302 e\u0323\u0302",
    "café naïve Å ệ",
    "Z\u0351\u0352\u0353a\u0354\u0355l\u0356g\u0357o",
    "nbsp\u00a0here\u00a0\u00a0two",
    "thin\u2009space em\u2003space ideographic\u3000space nnbsp\u202fx",
    "line\u2028sep para\u2029sep nel\u0085x ogham\u1680x mvs\u180ex",
    "zero\u200bwidth joiner\u200dx bom\ufeffx",
    "x\u180e\u180e! \u180e \u180e\n a \u180e\u180e  b \u0085\u0085! \u0085\n",
    "CRLF\r\nline\r\n\r\nend\r",
    "tabs\tand\t\ttabs \t \t",
    "trailing spaces    ",
    "    leading spaces",
    "a" + " " * 40 + "b",
    "\n\n\n\n\nmany newlines\n\n\n",
    " \n \n \n",
    "mixed   \n   \t\n  x",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "text<|endoftext|>more<|end_of_text|>",
    "<think>reasoning</think> answer <tool_call>{}</tool_call>",
    "<|im_end|><|im_end|> <|eot_id|>  <|eot_id|>",
    "almost <|im_end| special <|eot_id",
    "code: def f(x):\n    return x**2  # comment\n",
    "{\"json\": [1, 2.5, true, null], \"k\": \"v\"}",
    "https://example.com/path?q=1&r=%20#frag",
    "email@example.org, @handle, #hashtag, $100.00, 50%",
    "ﬁ ﬂ ﬀ ligatures Ω Å K",
    "Ελληνικά κείμενο και Русский текст и עברית וערבית العربية",
    "हिन्दी पाठ और தமிழ்",
    "ascii control \x01\x02\x07\x1b[31m red \x7f",
    "\u0000 nul inside",
    "...!!!???---___***",
    "x" * 300,
    "word " * 100,
    "1" * 50,
    "\U0010fffd \U0001f9ea \ue000 private",
]

WORDS = [
    "the", "The", "THE", "quick", "Brown", "fox", "jumps", "over", "lazy", "dog", "don't", "DON'T", "it's", "IT'S",
    "we'll", "They'RE", "I'd", "you've", "Ma'am", "rock'n'roll", "naïve", "café", "Zürich", "straße", "İstanbul",
    "東京", "北京市", "中文字符", "ラーメン", "서울특별시", "Москва", "Ἀθῆναι", "مرحبا", "שלום", "नमस्ते", "🙂", "🚀🚀",
    "👩‍💻", "🇫🇷", "12", "2024", "3.5", "1e-9", "0007", "٣", "½", "e\u0301", "o\u0308\u0304", "\u1100\u1161",
    "<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>", "'s", "'LL", "'Ve",
]
SEPS = [" ", " ", " ", "  ", "\n", "\r\n", "\t", "\u00a0", "\u2009", "\u3000", ", ", ". ", "!", "?", "", "-", "_",
        "/", "   \n", "\n\n", " \u2028 ", "\u0085", "'", "\"", "(", ")", ":", ";", "   "]


def generated(n=3000, seed=1234):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(1, 14)
        parts = []
        for _ in range(k):
            parts.append(rng.choice(WORDS))
            parts.append(rng.choice(SEPS))
        if rng.random() < 0.15:
            parts.append(" " * rng.randint(1, 12))
        if rng.random() < 0.1:
            parts.append(chr(rng.choice([rng.randint(0x20, 0x7e), rng.randint(0xa0, 0x24f), rng.randint(0x300, 0x36f),
                                          rng.randint(0x4e00, 0x9fff), rng.randint(0x1f300, 0x1f6ff),
                                          rng.randint(0xac00, 0xd7a3)])))
        out.append("".join(parts))
    return out


CORPUS = HAND + generated()


def run_lines(args, lines):
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
        path = f.name
    try:
        p = subprocess.run([BIN] + args + ["--lines", path], capture_output=True, timeout=600)
    finally:
        os.unlink(path)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    out = [json.loads(l) for l in p.stdout.decode("utf-8").split("\n")[:-1]]  # not splitlines: U+2028 is data
    assert len(out) == len(lines)
    return out


@pytest.fixture(scope="module", params=FAMILIES)
def fam(request):
    path = os.path.join(FIX, request.param, "tokenizer.json")
    return request.param, path, Tokenizer.from_file(path)


PARITY_LOG = os.path.join(os.path.dirname(BIN), "test-logs", "tokenizer-parity.txt")


def report(name, good, total, bad):
    """Prints the parity count (pytest -s) and appends it to <build>/test-logs/tokenizer-parity.txt."""
    print(f"\n{name}: parity {good}/{total}")
    os.makedirs(os.path.dirname(PARITY_LOG), exist_ok=True)
    with open(PARITY_LOG, "a", encoding="utf-8") as f:
        f.write(f"{name}: parity {good}/{total}\n")
    for s, want, got in bad[:5]:
        print(f"  MISMATCH {s!r}\n    hf   {want}\n    lathe {got}")


def test_encode_parity(fam):
    name, path, hf = fam
    got = run_lines(["tokenize", "--tokenizer", path], CORPUS)
    bad = []
    for s, g in zip(CORPUS, got):
        want = hf.encode(s, add_special_tokens=False).ids
        if g != want:
            bad.append((s, want, g))
    report(f"{name} encode", len(CORPUS) - len(bad), len(CORPUS), bad)
    assert not bad


def test_encode_parity_specials_as_text(fam):
    name, path, _ = fam
    hf = Tokenizer.from_file(path)
    hf.encode_special_tokens = True  # HF's switch for "special tokens in text are plain text"
    sample = [s for s in CORPUS if "<" in s][:400] + HAND
    got = run_lines(["tokenize", "--tokenizer", path, "--no-special"], sample)
    bad = [(s, hf.encode(s, add_special_tokens=False).ids, g) for s, g in zip(sample, got)
           if g != hf.encode(s, add_special_tokens=False).ids]
    report(f"{name} encode --no-special", len(sample) - len(bad), len(sample), bad)
    assert not bad


def test_decode_round_trip(fam):
    name, path, hf = fam
    ids = [hf.encode(s, add_special_tokens=False).ids for s in CORPUS]
    got = run_lines(["detokenize", "--tokenizer", path], ids)
    bad = []
    for s, i, g in zip(CORPUS, ids, got):
        want = hf.decode(i, skip_special_tokens=False)
        # the round trip gives back the text as the normalizer left it (NFC for Qwen3)
        expect = unicodedata.normalize("NFC", s) if name == "qwen3" else s
        if g != want or g != expect:
            bad.append((s, want, g))
    report(f"{name} decode round trip", len(CORPUS) - len(bad), len(CORPUS), bad)
    assert not bad


def test_decode_arbitrary_ids_matches_hf(fam):
    """Random id sequences decode to invalid UTF-8 byte soups; both sides must replace the same bytes."""
    name, path, hf = fam
    rng = random.Random(99)
    n = hf.get_vocab_size()
    seqs = [[rng.randrange(n) for _ in range(rng.randint(1, 12))] for _ in range(500)]
    # lone byte tokens (continuation bytes, lead bytes without continuation)
    byte_ids = [hf.token_to_id(c) for c in "ÃÂ¤¿Ġĉ" if hf.token_to_id(c) is not None]
    seqs += [[b] for b in byte_ids] + [byte_ids]
    for skip in (False, True):
        args = ["detokenize", "--tokenizer", path] + (["--skip-special"] if skip else [])
        got = run_lines(args, seqs)
        bad = [(s, hf.decode(s, skip_special_tokens=skip), g) for s, g in zip(seqs, got)
               if g != hf.decode(s, skip_special_tokens=skip)]
        report(f"{name} decode random ids skip={skip}", len(seqs) - len(bad), len(seqs), bad)
        assert not bad


def test_invalid_utf8_is_rejected(fam):
    name, path, _ = fam
    for raw in (b"abc\xff", b"\xc3(", b"\xed\xa0\x80 surrogate", b"\xf0\x9f\x98 truncated"):
        p = subprocess.run([BIN, "tokenize", "--tokenizer", path, "--text", raw, "--json"], capture_output=True,
                           timeout=60)
        assert p.returncode == 1
        assert b"not valid UTF-8" in p.stderr, p.stderr


def test_single_text_and_ids_cli(fam):
    name, path, hf = fam
    s = "Hello, world! I'm 42 today 😀"
    p = subprocess.run([BIN, "tokenize", os.path.dirname(path), "--text", s, "--json"], capture_output=True,
                       timeout=60, check=True)
    ids = json.loads(p.stdout)["ids"]
    assert ids == hf.encode(s, add_special_tokens=False).ids
    p = subprocess.run([BIN, "detokenize", os.path.dirname(path), "--ids", ",".join(map(str, ids)), "--json"],
                       capture_output=True, timeout=60, check=True)
    assert json.loads(p.stdout)["text"] == s


ADDED_CASES = ["a <mask> b", "a<mask>b", "  <mask>  end", "<mask>", "x [SEP] y", "x[SEP]y", "[SEP]", "([SEP])",
               "say hello world!", "Ω! ohm \u2126! sign", "<|endoftext|>tail", "\u00a0<mask>\u3000x", "1234567890"]


def trained_tokenizer(kind, tmpdir):
    """Small tokenizers trained with HF on the corpus, covering pre-tokenizers and added-token flags the two real
    files do not use (GPT-2 ByteLevel regex with add_prefix_space, Digits, Split behaviors, lstrip/rstrip,
    single_word, normalized added tokens, characters missing from the vocab)."""
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if kind == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    elif kind == "smollm":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    elif kind == "empty_matches":  # trained on GPT-2 pieces, then run with patterns that match empty strings
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:  # split behaviors, and no full byte alphabet: unseen bytes are dropped
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"\s+"), behavior="merged_with_next"),
            pre_tokenizers.Split(Regex(r"[,.!?]"), behavior="merged_with_previous"),
            pre_tokenizers.Split("-", behavior="removed"),
            pre_tokenizers.Digits(individual_digits=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        alphabet = []
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, initial_alphabet=alphabet, special_tokens=["<|endoftext|>"],
                                  show_progress=False)
    tok.train_from_iterator(CORPUS[:2000], trainer)
    if kind == "empty_matches":  # onig find_iter reports empty matches (not right after a match): they split
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"[0-9]*(?=[a-z])|(?=,)"), behavior="isolated"),
            pre_tokenizers.Split(Regex(r"e?"), behavior="merged_with_next"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=True, special=True),
                            AddedToken("[SEP]", single_word=True, special=True)])
    tok.add_tokens([AddedToken(" hello world", normalized=True), AddedToken("Ω!", normalized=True)])
    path = os.path.join(tmpdir, kind + ".json")
    tok.save(path)
    return path, Tokenizer.from_file(path)


@pytest.mark.parametrize("kind", ["gpt2", "smollm", "split", "empty_matches"])
def test_trained_tokenizers_parity(kind, tmp_path):
    path, hf = trained_tokenizer(kind, str(tmp_path))
    sample = HAND + ADDED_CASES + CORPUS[2000:2600]
    got = run_lines(["tokenize", "--tokenizer", path], sample)
    bad = [(s, hf.encode(s, add_special_tokens=False).ids, g) for s, g in zip(sample, got)
           if g != hf.encode(s, add_special_tokens=False).ids]
    report(f"trained {kind} encode", len(sample) - len(bad), len(sample), bad)
    assert not bad
    ids = [hf.encode(s, add_special_tokens=False).ids for s in sample]
    dec = run_lines(["detokenize", "--tokenizer", path], ids)
    bad = [(i, hf.decode(i, skip_special_tokens=False), g) for i, g in zip(ids, dec)
           if g != hf.decode(i, skip_special_tokens=False)]
    report(f"trained {kind} decode", len(sample) - len(bad), len(sample), bad)
    assert not bad
