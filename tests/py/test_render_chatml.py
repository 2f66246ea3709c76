"""The chatml renderer, token-exact with the models' own templates rendered by jinja2 (as transformers does) and
encoded by the reference tokenizer, with weights on assistant content + <|im_end|> only:

  SmolLM2    the real SmolLM2-135M-Instruct GGUF: its tokenizer.chat_template (default system message "You are a
             helpful AI assistant named SmolLM, trained by Hugging Face" when the first message is not a system
             one), encoded by the reference tokenizer built from the GGUF (test_gguf_tokenizer.smollm_reference).
             lathe reads the template from the file and picks chatml itself (--renderer auto).
  Qwen2.5    Qwen2.5-Instruct's template (written below; default system "You are Qwen, created by Alibaba Cloud.
             You are a helpful assistant.", Hermes tool calls, <tool_response> turns) in a model directory with
             the Qwen3 fixture tokenizer.json (the same vocabulary family).
Hand-written conversations (with and without a system message, multi-turn, generation prompt) and generated
ones; the parity counts go to <build>/test-logs/tokenizer-parity.txt."""
import json
import os
import random
import re
import shutil

import pytest
from tokenizers import Tokenizer

from test_render_parity import (BASIC, BIN, FIX, NO_SYSTEM, lathe_chat, lathe_chat_lines, random_text,
                                render_template, weighted_runs)

gguf = pytest.importorskip("gguf")

SMOLLM2 = os.environ.get("LATHE_SMOLLM2_GGUF",
                         os.path.expanduser("~/.cache/lathe/models/SmolLM2-135M-Instruct.Q4_1.gguf"))

QWEN25_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

CASES = {
    "basic": BASIC,
    "no_system": NO_SYSTEM,
    "prompt_only": [{"role": "user", "content": "Write a haiku."}],
    "multi_turn_no_system": [
        {"role": "user", "content": "Q1 1  2  3"}, {"role": "assistant", "content": "A1 ½"},
        {"role": "user", "content": "Q2\r\n  "}, {"role": "assistant", "content": "\n A2 \n"},
        {"role": "user", "content": "Q3 日本語 😀"},
    ],
    "system_later": [
        {"role": "user", "content": "Hi"}, {"role": "system", "content": "Now be brief."},
        {"role": "assistant", "content": "Ok."},
    ],
}
QWEN_TOOLS = {
    "tool_calls": [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}},
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}]},
        {"role": "tool", "content": "{\"temp\": 18}", "tool_call_id": "1"},
        {"role": "tool", "content": "{\"temp\": 25.5}", "tool_call_id": "2"},
        {"role": "assistant", "content": "Paris 18°C, Tokyo 25.5°C."},
    ],
    "tool_call_no_content_no_system": [
        {"role": "user", "content": "Search cats"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"name": "search", "arguments": {"q": "cats", "n": 3, "score": 0.5, "deep": {"a": [1, 2.0, None, True]}}}]},
        {"role": "tool", "content": "many cats"},
        {"role": "assistant", "content": "Found many."},
    ],
}
SPAN_RE = re.compile(r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)", re.S)


def smollm_setup():
    if not os.path.exists(SMOLLM2):
        pytest.skip(f"{SMOLLM2} not found: scripts/setup.sh fetches the SmolLM2 GGUF")
    from test_gguf_tokenizer import smollm_reference
    r = gguf.GGUFReader(SMOLLM2)
    f = r.fields["tokenizer.chat_template"]
    tpl = bytes(f.parts[f.data[0]]).decode("utf-8")
    cfg = {"chat_template": tpl, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
    return SMOLLM2, smollm_reference(SMOLLM2), cfg


@pytest.fixture(scope="module")
def smollm():
    return smollm_setup()


@pytest.fixture(scope="module")
def qwen25(tmp_path_factory):
    d = tmp_path_factory.mktemp("qwen25")
    shutil.copy(os.path.join(FIX, "qwen3", "tokenizer.json"), d / "tokenizer.json")
    cfg = {"chat_template": QWEN25_TEMPLATE, "bos_token": None, "eos_token": "<|im_end|>",
           "pad_token": "<|endoftext|>", "add_bos_token": False}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return str(d), Tokenizer.from_file(str(d / "tokenizer.json")), cfg


def check(model, msgs, gen, renderer="auto"):
    path, hf, cfg = model
    ids, w = lathe_chat(path, msgs, renderer, gen=gen)
    text = render_template(cfg, msgs, gen)
    assert ids == hf.encode(text, add_special_tokens=False).ids, text
    spans = [hf.decode(hf.encode(x, add_special_tokens=False).ids, skip_special_tokens=False)
             for x in SPAN_RE.findall(text)]
    runs = weighted_runs(hf, ids, w)
    assert len(runs) == len(spans) and all(sp.endswith(r) and not sp[:len(sp) - len(r)].strip()
                                           for sp, r in zip(spans, runs)), (runs, spans)
    return text


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("gen", [False, True])
def test_smollm2_matches_template(smollm, case, gen):
    text = check(smollm, CASES[case], gen)
    default = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    assert text.startswith(default) == (CASES[case][0]["role"] != "system")


@pytest.mark.parametrize("case", sorted(CASES) + sorted(QWEN_TOOLS))
@pytest.mark.parametrize("gen", [False, True])
def test_qwen25_matches_template(qwen25, case, gen):
    msgs = CASES.get(case) or QWEN_TOOLS[case]
    text = check(qwen25, msgs, gen)
    default = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    assert text.startswith(default) == (msgs[0]["role"] != "system")


def random_conversation(rng, tools):
    msgs = []
    if rng.random() < 0.5:
        msgs.append({"role": "system", "content": random_text(rng, 1)})
    for turn in range(rng.randint(1, 4)):
        msgs.append({"role": "user", "content": random_text(rng, 1)})
        if rng.random() < 0.15 and turn > 0:
            continue  # ends on a user turn
        if tools and rng.random() < 0.3:
            msgs.append({"role": "assistant", "content": random_text(rng, 0, 3), "tool_calls": [
                {"type": "function", "function": {"name": "f%d" % k, "arguments": {
                    "q": random_text(rng, 1, 3), "n": rng.randint(0, 99), "x": rng.choice([0.5, 1e-7, 2.0, None])}}}
                for k in range(rng.randint(1, 2))]})
            for _ in range(rng.randint(1, 2)):
                msgs.append({"role": "tool", "content": random_text(rng, 1)})
        msgs.append({"role": "assistant", "content": random_text(rng)})
    return msgs


def random_parity(model, name, tools, seed):
    path, hf, cfg = model
    rng = random.Random(seed)
    convs = [random_conversation(rng, tools) for _ in range(200)]
    bad = bad_w = 0
    for gen in (False, True):
        got = lathe_chat_lines(path, convs, "chatml", gen)
        for c, g in zip(convs, got):
            assert "ids" in g, g
            text = render_template(cfg, c, gen)
            if g["ids"] != hf.encode(text, add_special_tokens=False).ids:
                bad += 1
                if bad <= 3:
                    print("MISMATCH", json.dumps(c, ensure_ascii=False)[:400])
            spans = [hf.decode(hf.encode(x, add_special_tokens=False).ids, skip_special_tokens=False)
                     for x in SPAN_RE.findall(text)]
            runs = weighted_runs(hf, g["ids"], g["weights"])
            if not (len(runs) == len(spans) and all(sp.endswith(r) and not sp[:len(sp) - len(r)].strip()
                                                    for sp, r in zip(spans, runs))):
                bad_w += 1
    line = f"{name} chatml random conversations: parity {400 - bad}/400, weights {400 - bad_w}/400"
    print("\n" + line)
    log = os.path.join(os.path.dirname(BIN), "test-logs", "tokenizer-parity.txt")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(line + "\n")
    assert bad == 0 and bad_w == 0


def test_smollm2_random_conversations(smollm):
    random_parity(smollm, "SmolLM2 GGUF", False, 11)


def test_qwen25_random_conversations(qwen25):
    random_parity(qwen25, "Qwen2.5 template", True, 12)
