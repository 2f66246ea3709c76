"""Chat rendering parity: `lathe tokenize --chat` against each tokenizer's own chat_template rendered with
jinja2 the way transformers does (trim_blocks, lstrip_blocks, loopcontrols, raise_exception, tojson), then
encoded by Hugging Face `tokenizers`. Also checks the per-token weights: exactly the assistant output (content,
reasoning, tool calls, end-of-turn token) carries weight 1."""
import functools
import json
import os
import random
import re
import subprocess
import tempfile

import jinja2
import jinja2.ext
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

ROOT = os.environ.get("LATHE_ROOT", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BIN = os.environ.get("LATHE_BIN", os.path.join(ROOT, "build", "lathe"))
FIX = os.path.join(ROOT, "tests", "fixtures", "tokenizers")


@functools.lru_cache(maxsize=None)
def load(family):
    d = os.path.join(FIX, family)
    cfg = json.load(open(os.path.join(d, "tokenizer_config.json"), encoding="utf-8"))
    return d, Tokenizer.from_file(os.path.join(d, "tokenizer.json")), cfg


def render_template(cfg, messages, add_generation_prompt, **extra):
    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    tok = lambda k: cfg.get(k) if isinstance(cfg.get(k), (str, type(None))) else cfg.get(k, {}).get("content")
    return env.from_string(cfg["chat_template"]).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                        bos_token=tok("bos_token") or "",
                                                        eos_token=tok("eos_token") or "", **extra)


def lathe_chat(d, messages, renderer, gen=False):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as f:
        json.dump(messages, f, ensure_ascii=False)
        path = f.name
    try:
        args = [BIN, "tokenize", d, "--chat", path, "--renderer", renderer, "--json"]
        if gen:
            args.append("--add-generation-prompt")
        p = subprocess.run(args, capture_output=True, timeout=120)
    finally:
        os.unlink(path)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    out = json.loads(p.stdout)
    assert len(out["ids"]) == len(out["weights"])
    return out["ids"], out["weights"]


def weighted_runs(hf, ids, weights):
    """The decoded text of each maximal run of weight-1 tokens."""
    runs, cur = [], []
    for i, w in zip(ids, weights):
        assert w in (0, 1)
        if w:
            cur.append(i)
        elif cur:
            runs.append(hf.decode(cur, skip_special_tokens=False))
            cur = []
    if cur:
        runs.append(hf.decode(cur, skip_special_tokens=False))
    return runs


BASIC = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "2+2 is 4."},
    {"role": "user", "content": "And 3+3? Answer in Chinese: 你好"},
    {"role": "assistant", "content": "  六 (6)  \n"},
]
NO_SYSTEM = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}]

QWEN_CASES = {
    "basic": BASIC,
    "no_system": NO_SYSTEM,
    "prompt_only": [{"role": "user", "content": "Write a haiku."}],
    "thinking_last": [
        {"role": "user", "content": "Is 17 prime?"},
        {"role": "assistant", "content": "<think>\nCheck divisors up to 4.\n</think>\n\nYes, 17 is prime."},
    ],
    "thinking_history_stripped": [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "<think>old reasoning</think>A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "<think>\n\nnew reasoning\n\n</think>\n\n\nA2"},
    ],
    "reasoning_content_field": [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "Answer.", "reasoning_content": "\nThink hard.\n"},
    ],
    "tool_calls": [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}},
            {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Tokyo\"}"}}]},
        {"role": "tool", "content": "{\"temp\": 18}", "tool_call_id": "1"},
        {"role": "tool", "content": "{\"temp\": 25.5}", "tool_call_id": "2"},
        {"role": "assistant", "content": "Paris 18°C, Tokyo 25.5°C."},
    ],
    "tool_call_no_content": [
        {"role": "user", "content": "Search cats"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"name": "search", "arguments": {"q": "cats", "n": 3, "score": 0.5, "deep": {"a": [1, 2.0, None, True]}}}]},
        {"role": "tool", "content": "many cats"},
    ],
    "system_later": [
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "be brief"},
        {"role": "assistant", "content": "ok"},
    ],
    "whitespace_content": [
        {"role": "user", "content": "\n\nleading newlines and trailing spaces   "},
        {"role": "assistant", "content": "\n  indented\r\n\tanswer  \n\n"},
    ],
}

LLAMA_CASES = {
    "basic": BASIC,
    "no_system": NO_SYSTEM,
    "prompt_only": [{"role": "user", "content": "Write a haiku."}],
    "trim": [
        {"role": "system", "content": "\n  sys  \n"},
        {"role": "user", "content": "\t question \u3000"},
        {"role": "assistant", "content": "\n\n answer\u00a0"},
    ],
    "unicode": [{"role": "user", "content": "Ελληνικά 😀 café"}, {"role": "assistant", "content": "日本語 ok"}],
}


@pytest.mark.parametrize("case", sorted(QWEN_CASES))
@pytest.mark.parametrize("gen", [False, True])
def test_qwen3_matches_template(case, gen):
    d, hf, cfg = load("qwen3")
    msgs = QWEN_CASES[case]
    text = render_template(cfg, msgs, gen)
    want = hf.encode(text, add_special_tokens=False).ids
    ids, weights = lathe_chat(d, msgs, "qwen3", gen)
    assert ids == want, f"\ntemplate: {text!r}\nlathe:    {hf.decode(ids, skip_special_tokens=False)!r}"


@pytest.mark.parametrize("case", sorted(LLAMA_CASES))
def test_llama3_matches_template(case):
    d, hf, cfg = load("llama3")
    msgs = LLAMA_CASES[case]
    # this template always ends with the assistant header, whatever add_generation_prompt says
    text = render_template(cfg, msgs, True)
    want = hf.encode(text, add_special_tokens=False).ids
    ids_gen, _ = lathe_chat(d, msgs, "llama3", True)
    assert ids_gen == want, f"\ntemplate: {text!r}\nlathe:    {hf.decode(ids_gen, skip_special_tokens=False)!r}"
    ids, _ = lathe_chat(d, msgs, "llama3", False)
    header = hf.encode("<|start_header_id|>assistant<|end_header_id|>\n\n", add_special_tokens=False).ids
    assert ids + header == want


def test_qwen3_weights():
    d, hf, _ = load("qwen3")
    ids, w = lathe_chat(d, QWEN_CASES["tool_calls"], "qwen3")
    runs = weighted_runs(hf, ids, w)
    assert runs == [
        "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"c\"}}"
        "\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Tokyo\"}}\n</tool_call>"
        "<|im_end|>",
        "<think>\n\n</think>\n\nParis 18°C, Tokyo 25.5°C.<|im_end|>",
    ]
    ids, w = lathe_chat(d, QWEN_CASES["thinking_last"], "qwen3", gen=False)
    assert weighted_runs(hf, ids, w) == ["<think>\nCheck divisors up to 4.\n</think>\n\nYes, 17 is prime.<|im_end|>"]
    ids, w = lathe_chat(d, QWEN_CASES["prompt_only"], "qwen3", gen=True)
    assert sum(w) == 0
    assert hf.decode(ids, skip_special_tokens=False).endswith("<|im_start|>assistant\n")


def test_llama3_weights():
    d, hf, _ = load("llama3")
    ids, w = lathe_chat(d, BASIC, "llama3")
    assert ids[0] == hf.token_to_id("<|begin_of_text|>") and w[0] == 0
    assert weighted_runs(hf, ids, w) == ["2+2 is 4.<|eot_id|>", "六 (6)<|eot_id|>"]


@pytest.mark.parametrize("family", ["llama3", "qwen3"])
def test_role_colon(family):
    d, hf, cfg = load(family)
    msgs = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    ids, w = lathe_chat(d, msgs, "role_colon", gen=True)
    text = hf.decode(ids, skip_special_tokens=False)
    bos = "<|begin_of_text|>" if family == "llama3" else ""
    assert text == bos + "System: Be terse.\n\nUser: Hi\n\nAssistant: Hello.\n\nUser: Bye\n\nAssistant:"
    assert ids == hf.encode(text, add_special_tokens=False).ids
    assert weighted_runs(hf, ids, w) == [" Hello.\n\n"]


def test_auto_picks_family_renderer():
    for family, want in (("llama3", "llama3"), ("qwen3", "qwen3")):
        d, _, _ = load(family)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump({"messages": NO_SYSTEM}, f)
        p = subprocess.run([BIN, "tokenize", d, "--chat", f.name, "--renderer", "auto", "--json"],
                           capture_output=True, timeout=60, check=True)
        os.unlink(f.name)
        assert json.loads(p.stdout)["renderer"] == want


def test_bad_chat_is_rejected():
    d, _, _ = load("qwen3")
    for msgs, needle in (({"role": "user"}, b"messages must be a JSON array"),
                         ([{"role": "wizard", "content": "x"}], b"messages[0].role"),
                         ([{"role": "user", "content": 5}], b"messages[0].content"),
                         ([{"role": "assistant", "content": "", "tool_calls": [{"arguments": {}}]}],
                          b"tool_calls[0]")):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(msgs, f)
        p = subprocess.run([BIN, "tokenize", d, "--chat", f.name, "--renderer", "qwen3"], capture_output=True,
                           timeout=60)
        os.unlink(f.name)
        assert p.returncode == 1 and needle in p.stderr, p.stderr


PIECES = ["Hello", "world", " ", "  ", "\n", "\n\n", "\t", "I'm", "DON'T", "2+2=4", "123456", "你好", "日本語", "😀",
          "👩\u200d💻", "cafe\u0301", "Å", "\u00a0", "\u3000", "\r\n", "   \n  ", "!?", "{\"k\": 1}", "x" * 30,
          "<think>", "</think>", "<tool_call>", "ﬁ", "e\u0301\u0323", "\u1100\u1161"]


def random_text(rng, lo=0, hi=8):
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(lo, hi)))


def random_conversation(rng, family):
    msgs = []
    if rng.random() < 0.5:
        msgs.append({"role": "system", "content": random_text(rng, 1)})
    for turn in range(rng.randint(1, 4)):
        user = random_text(rng, 1)
        if family == "qwen3" and rng.random() < 0.1:
            user = "<tool_response>" + user + "</tool_response>"
        msgs.append({"role": "user", "content": user})
        if rng.random() < 0.15 and turn > 0:
            continue  # ends on a user turn
        content = random_text(rng)
        if family == "qwen3" and rng.random() < 0.4:
            content = "<think>" + random_text(rng) + "</think>" + random_text(rng)
        msg = {"role": "assistant", "content": content}
        if family == "qwen3" and rng.random() < 0.3:
            msg["tool_calls"] = [{"type": "function", "function": {"name": "f%d" % k, "arguments": rng.choice(
                [{"q": random_text(rng, 1, 3), "n": rng.randint(0, 99), "x": rng.choice([0.5, 1e-7, 2.0, None, True])},
                 "{\"raw\": " + json.dumps(random_text(rng, 0, 3)) + "}"])}} for k in range(rng.randint(1, 2))]
            msgs.append(msg)
            for _ in range(rng.randint(1, 2)):
                msgs.append({"role": "tool", "content": random_text(rng, 1)})
            msgs.append({"role": "assistant", "content": random_text(rng, 1)})
        else:
            msgs.append(msg)
    return msgs


def lathe_chat_lines(d, convs, renderer, gen):
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as f:
        for c in convs:
            f.write(json.dumps(c) + "\n")
        path = f.name
    try:
        args = [BIN, "tokenize", d, "--lines", path, "--renderer", renderer] + (["--add-generation-prompt"] if gen else [])
        p = subprocess.run(args, capture_output=True, timeout=300)
    finally:
        os.unlink(path)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return [json.loads(l) for l in p.stdout.decode("utf-8").split("\n")[:-1]]


@pytest.mark.parametrize("family", ["qwen3", "llama3"])
def test_random_conversations_match_template(family):
    """300 generated conversations per family (whitespace at every edge, NFC-sensitive text, thinking, tools),
    each with and without the generation prompt, against the template."""
    d, hf, cfg = load(family)
    rng = random.Random(7 if family == "qwen3" else 8)
    convs = [random_conversation(rng, family) for _ in range(300)]
    header = hf.encode("<|start_header_id|>assistant<|end_header_id|>\n\n", add_special_tokens=False).ids
    span_re = re.compile(r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)" if family == "qwen3" else
                         r"<\|start_header_id\|>assistant<\|end_header_id\|>\n\n(.*?<\|eot_id\|>)", re.S)
    bad = bad_w = 0
    for gen in (False, True):
        got = lathe_chat_lines(d, convs, family, gen)
        for c, g in zip(convs, got):
            assert "ids" in g, g
            text = render_template(cfg, c, gen or family == "llama3")
            want = hf.encode(text, add_special_tokens=False).ids
            mine = g["ids"] + (header if family == "llama3" and not gen else [])
            if mine != want:
                bad += 1
                if bad <= 3:
                    print("MISMATCH", json.dumps(c, ensure_ascii=False)[:400])
            # weights: each trained run is one assistant output as the template wrote it (content, reasoning,
            # tool calls, end-of-turn token), except leading whitespace that BPE glued to the header's "\n"
            spans = [hf.decode(hf.encode(x, add_special_tokens=False).ids, skip_special_tokens=False)
                     for x in span_re.findall(text)]
            runs = weighted_runs(hf, g["ids"], g["weights"])
            ok = len(runs) == len(spans) and all(
                sp.endswith(run) and not sp[:len(sp) - len(run)].strip() for sp, run in zip(spans, runs))
            if not ok:
                bad_w += 1
                if bad_w <= 3:
                    print("WEIGHTS", runs, spans)
    line = f"{family} random conversations: parity {600 - bad}/600, weights {600 - bad_w}/600"
    print("\n" + line)
    log = os.path.join(os.path.dirname(BIN), "test-logs", "tokenizer-parity.txt")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(line + "\n")
    assert bad == 0 and bad_w == 0
