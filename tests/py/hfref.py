"""hfref: the PyTorch / Hugging Face reference the C engine is checked against (a helper module, not a test).

Everything here runs the real `transformers` model class of a checkpoint directory (LlamaForCausalLM,
Qwen2ForCausalLM, Qwen3ForCausalLM, MistralForCausalLM) with `peft` LoRA on top, so the numbers are HF's by
construction: rotate_half RoPE with rope_theta / llama3 scaling, RMSNorm, GQA, Qwen2 q/k/v bias, Qwen3 q/k norm,
tied or separate head.

Precision: dtype "f32" (default) or "f64". In f64 the weights, matmuls, attention (SDPA) and loss run in
float64; HF itself still computes RMSNorm and the RoPE cos/sin tables in float32 and casts back, so f64 results
are "HF numerics with f64 matmuls", which is what an f32 engine that follows HF should approach.

Engine conventions reproduced here (docs/spec.md §6, docs/engine-kernels.md):
  * A datum is (tokens[T], targets[T], weights[T]): position t predicts targets[t] from tokens[0..t].
    When targets are not given, the next-token shift is used: tokens[:-1] predict tokens[1:].
  * logprobs[t] = log softmax(logits[t])[targets[t]].
  * cross_entropy loss = sum over datums and positions of -weights[t] * logprobs[t] (a plain sum, no mean);
    weights may be any real numbers (0 masks a position). The other Tinker losses are available too
    (importance_sampling, ppo, cispo, dro; see `token_losses`).
  * LoRA: y = W x (+ b) + (alpha / r) * B (A x); A [r, in], B [out, r]; targets among q,k,v,o,gate,up,down
    (and lm_head); dropout 0.
  * AdamW: torch.optim.AdamW(betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0), optional global grad-norm clip.

PEFT key names (what `adapter_model.safetensors` holds and what every function here uses for A, B and their
gradients):
    base_model.model.model.layers.{i}.self_attn.{q,k,v,o}_proj.lora_A.weight      [r, in]
    base_model.model.model.layers.{i}.self_attn.{q,k,v,o}_proj.lora_B.weight      [out, r]
    base_model.model.model.layers.{i}.mlp.{gate,up,down}_proj.lora_A.weight        [r, in]
    base_model.model.model.layers.{i}.mlp.{gate,up,down}_proj.lora_B.weight        [out, r]
    base_model.model.lm_head.lora_A.weight / lora_B.weight                          (target "lm_head")
(In memory PEFT inserts the adapter name: "...q_proj.lora_A.default.weight"; `peft_key` strips it.)

Command line (every command prints JSON with --json, a short summary otherwise; --out FILE writes the JSON to
a file instead of stdout):
    python tests/py/hfref.py logits   --model DIR --tokens 1,2,3 [--tokens 4,5] [--dtype f64] --json
    python tests/py/hfref.py logprobs --model DIR --tokens 1,2,3 --targets 2,3,4 --json
    python tests/py/hfref.py loss     --model DIR --input batch.json [--lora lora.json | --adapter DIR] --json
    python tests/py/hfref.py train    --model DIR --input batch.json --lora lora.json --steps 3 --lr 1e-3 --json
    python tests/py/hfref.py keys     --model DIR --rank 4 [--lora-targets q,v] --json
--input is a JSON file {"tokens": [[...], ...], "targets": [[...]], "weights": [[...]], optional "loss_fn",
"loss_config", "logprobs" (sampler logprobs), "advantages"}; command-line --tokens/--targets/--weights (repeat
one per datum, comma-separated) override it. --lora is a JSON file {"rank": r, "alpha": a, "targets": ["q",
"k", ...], "seed": s, "A": {peft_key: nested list}, "B": {...}} (A/B optional: PEFT's init, seeded, when
absent); --adapter is a PEFT adapter directory (adapter_config.json + adapter_model.safetensors).
Output keys: logits [datum][t][vocab], logprobs [datum][t], loss, grads {peft_key: nested list},
losses [step], params {peft_key: nested list} (after the last step), grad_norms [step].
"""

import argparse
import json
import os
import sys

import torch

SHORT_TARGETS = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "o": "o_proj",
    "gate": "gate_proj",
    "up": "up_proj",
    "down": "down_proj",
    "lm_head": "lm_head",
}
ALL_TARGETS = ["q", "k", "v", "o", "gate", "up", "down"]
DTYPES = {"f32": torch.float32, "f64": torch.float64}


def module_name(t):
    """'q' or 'q_proj' -> 'q_proj'; 'lm_head' stays."""
    if t in SHORT_TARGETS:
        return SHORT_TARGETS[t]
    if t in SHORT_TARGETS.values():
        return t
    raise ValueError(f"unknown LoRA target {t!r}; use q,k,v,o,gate,up,down,lm_head")


def peft_key(name):
    """In-memory PEFT parameter name -> the saved key (drops the adapter name '.default')."""
    return name.replace(".default.", ".")


def load_model(model_dir, dtype="f32"):
    """The HF model of a checkpoint directory in eval mode (no dropout), on CPU, in dtype f32 or f64."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch_dtype = DTYPES[dtype]
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch_dtype, attn_implementation="sdpa"
    )
    model.to(torch_dtype)
    model.eval()
    return model


def add_lora(model, rank, alpha, targets=None, seed=0, A=None, B=None):
    """Wraps model with a PEFT LoRA adapter. A/B: {peft_key: array-like} overriding PEFT's seeded init."""
    import warnings

    import peft

    warnings.filterwarnings("ignore", category=FutureWarning)
    targets = [module_name(t) for t in (targets or ALL_TARGETS)]
    torch.manual_seed(seed)
    cfg = peft.LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"
    )
    pm = peft.get_peft_model(model, cfg)
    set_lora(pm, A or {}, B or {})
    pm.eval()
    return pm


def load_adapter(model, adapter_dir):
    """Wraps model with a PEFT adapter directory, trainable."""
    import peft

    pm = peft.PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
    dtype = next(model.parameters()).dtype
    pm.to(dtype)
    pm.eval()
    return pm


def lora_params(pm):
    """{peft_key: Parameter} of the trainable LoRA tensors, sorted by key."""
    out = {peft_key(n): p for n, p in pm.named_parameters() if p.requires_grad}
    return dict(sorted(out.items()))


def set_lora(pm, A, B):
    """Copies given values ({peft_key: array-like}) into the adapter; unknown keys are an error."""
    params = lora_params(pm)
    for src in (A, B):
        for k, v in src.items():
            if k not in params:
                raise KeyError(f"{k!r} is not a LoRA parameter of this model; known: {list(params)[:4]}...")
            t = torch.as_tensor(v, dtype=params[k].dtype)
            if tuple(t.shape) != tuple(params[k].shape):
                raise ValueError(f"{k}: shape {tuple(t.shape)}, expected {tuple(params[k].shape)}")
            with torch.no_grad():
                params[k].copy_(t)


def lora_keys(model, rank, targets=None):
    """[(peft_key, shape)] for a rank-r adapter on `targets` of this model (no values)."""
    pm = add_lora(model, rank, rank, targets)
    return [(k, list(p.shape)) for k, p in lora_params(pm).items()]


def make_batch(tokens, targets=None, weights=None):
    """Normalises a batch to lists of (tokens, targets, weights) per datum (next-token shift when no targets)."""
    out = []
    for i, toks in enumerate(tokens):
        toks = [int(x) for x in toks]
        if targets is None:
            tg, toks = toks[1:], toks[:-1]
        else:
            tg = [int(x) for x in targets[i]]
        if len(tg) != len(toks):
            raise ValueError(f"datum {i}: {len(toks)} tokens but {len(tg)} targets")
        w = [1.0] * len(toks) if weights is None else [float(x) for x in weights[i]]
        if len(w) != len(toks):
            raise ValueError(f"datum {i}: {len(toks)} tokens but {len(w)} weights")
        out.append((toks, tg, w))
    return out


def forward_logits(model, toks):
    """Logits [T, V] of one sequence (batch of 1: ragged batches need no padding)."""
    ids = torch.tensor([toks], dtype=torch.long)
    return model(input_ids=ids, use_cache=False).logits[0]


def token_logprobs(logits, targets):
    lp = torch.log_softmax(logits, dim=-1)
    return lp.gather(-1, torch.tensor(targets, dtype=torch.long).unsqueeze(-1)).squeeze(-1)


def token_losses(lp, loss_fn="cross_entropy", weights=None, sampler_lp=None, advantages=None, config=None):
    """Per-token losses of Tinker's built-in loss functions (the batch loss is their plain sum)."""
    config = config or {}
    dt = lp.dtype
    if loss_fn == "cross_entropy":
        return -torch.as_tensor(weights, dtype=dt) * lp
    q = torch.as_tensor(sampler_lp, dtype=dt)
    a = torch.as_tensor(advantages, dtype=dt)
    r = torch.exp(lp - q)
    if loss_fn == "importance_sampling":
        return -r * a
    if loss_fn == "ppo":
        lo, hi = config.get("clip_low_threshold", 0.8), config.get("clip_high_threshold", 1.2)
        return -torch.minimum(r * a, torch.clamp(r, lo, hi) * a)
    if loss_fn == "cispo":
        lo, hi = config.get("clip_low_threshold", 0.0), config.get("clip_high_threshold", 4.0)
        return -torch.clamp(r, lo, hi).detach() * lp * a
    if loss_fn == "dro":
        beta = config["beta"]
        return -(lp * a - 0.5 * beta * (lp - q) ** 2)
    raise ValueError(f"unknown loss_fn {loss_fn!r}")


def batch_loss(model, batch, loss_fn="cross_entropy", extra=None, config=None):
    """(loss tensor, [logprobs per datum]) summed over the batch. extra: per-datum logprobs/advantages lists."""
    extra = extra or {}
    total = None
    lps = []
    for i, (toks, tg, w) in enumerate(batch):
        lp = token_logprobs(forward_logits(model, toks), tg)
        lps.append(lp)
        per = token_losses(
            lp,
            loss_fn,
            weights=w,
            sampler_lp=extra.get("logprobs", [None] * len(batch))[i],
            advantages=extra.get("advantages", [None] * len(batch))[i],
            config=config,
        )
        total = per.sum() if total is None else total + per.sum()
    return total, lps


def lora_grads(pm, batch, loss_fn="cross_entropy", extra=None, config=None):
    """(loss, logprobs, {peft_key: grad}) of the summed loss w.r.t. every LoRA tensor."""
    params = lora_params(pm)
    for p in params.values():
        p.grad = None
    loss, lps = batch_loss(pm, batch, loss_fn, extra, config)
    loss.backward()
    grads = {k: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)) for k, p in params.items()}
    return loss.detach(), [lp.detach() for lp in lps], grads


def adamw_train(pm, batch, steps, lr, clip=None, loss_fn="cross_entropy", extra=None, config=None):
    """Runs `steps` AdamW steps on the same batch. Returns (losses, grad_norms, {peft_key: final value})."""
    params = lora_params(pm)
    opt = torch.optim.AdamW(list(params.values()), lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    losses, norms = [], []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss, _ = batch_loss(pm, batch, loss_fn, extra, config)
        loss.backward()
        gn = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params.values() if p.grad is not None))
        if clip:
            torch.nn.utils.clip_grad_norm_(list(params.values()), clip)
        opt.step()
        losses.append(float(loss.detach()))
        norms.append(float(gn))
    return losses, norms, {k: p.detach().clone() for k, p in params.items()}


# ---------------------------------------------------------------------------------------------------------------
# command line


def _ints(s):
    return [int(x) for x in s.split(",") if x.strip() != ""]


def _floats(s):
    return [float(x) for x in s.split(",") if x.strip() != ""]


def _tolist(x):
    return x.detach().double().tolist() if torch.is_tensor(x) else x


def _build(args):
    spec = {}
    if args.input:
        with open(args.input) as f:
            spec = json.load(f)
    tokens = [_ints(s) for s in args.tokens] if args.tokens else spec.get("tokens")
    if not tokens:
        raise SystemExit("hfref: no tokens (give --tokens 1,2,3 or --input FILE)")
    targets = [_ints(s) for s in args.targets] if args.targets else spec.get("targets")
    weights = [_floats(s) for s in args.weights] if args.weights else spec.get("weights")
    batch = make_batch(tokens, targets, weights)
    extra = {k: spec[k] for k in ("logprobs", "advantages") if k in spec}
    model = load_model(args.model, args.dtype)
    lora = None
    if args.adapter:
        model = load_adapter(model, args.adapter)
        lora = True
    elif args.lora:
        with open(args.lora) as f:
            lc = json.load(f)
        model = add_lora(
            model, lc["rank"], lc.get("alpha", lc["rank"]), lc.get("targets"), lc.get("seed", 0), lc.get("A"), lc.get("B")
        )
        lora = True
    return model, batch, extra, spec, lora


def main(argv=None):
    ap = argparse.ArgumentParser(prog="hfref.py", description="HF/PEFT reference numbers for the lathe engine")
    ap.add_argument("command", choices=["logits", "logprobs", "loss", "train", "keys"])
    ap.add_argument("--model", required=True, help="HF model directory")
    ap.add_argument("--tokens", action="append", help="one datum's input ids, comma-separated (repeat per datum)")
    ap.add_argument("--targets", action="append", help="target ids per datum (default: next-token shift)")
    ap.add_argument("--weights", action="append", help="per-token weights per datum (default 1)")
    ap.add_argument("--input", help="JSON batch file (see the module docstring)")
    ap.add_argument("--lora", help="JSON LoRA spec file")
    ap.add_argument("--adapter", help="PEFT adapter directory")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--clip", type=float, default=None, help="global grad-norm clip for train")
    ap.add_argument("--loss-fn", default=None, help="cross_entropy (default) or a Tinker RL loss")
    ap.add_argument("--rank", type=int, default=8, help="rank for keys")
    ap.add_argument("--lora-targets", default=None, help="comma-separated targets for keys (default all seven)")
    ap.add_argument("--json", action="store_true", help="print JSON")
    ap.add_argument("--out", help="write the JSON here instead of stdout")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(True)

    out = {}
    if args.command == "keys":
        model = load_model(args.model, args.dtype)
        tg = args.lora_targets.split(",") if args.lora_targets else None
        out["keys"] = [{"name": k, "shape": s} for k, s in lora_keys(model, args.rank, tg)]
    else:
        model, batch, extra, spec, lora = _build(args)
        loss_fn = args.loss_fn or spec.get("loss_fn", "cross_entropy")
        config = spec.get("loss_config")
        if args.command == "logits":
            with torch.no_grad():
                out["logits"] = [_tolist(forward_logits(model, toks)) for toks, _, _ in batch]
        elif args.command == "logprobs":
            with torch.no_grad():
                _, lps = batch_loss(model, batch, loss_fn, extra, config)
            out["logprobs"] = [_tolist(lp) for lp in lps]
        elif args.command == "loss":
            if lora:
                loss, lps, grads = lora_grads(model, batch, loss_fn, extra, config)
                out["grads"] = {k: _tolist(g) for k, g in grads.items()}
            else:
                with torch.no_grad():
                    loss, lps = batch_loss(model, batch, loss_fn, extra, config)
            out["loss"] = float(loss)
            out["logprobs"] = [_tolist(lp) for lp in lps]
        elif args.command == "train":
            if not lora:
                raise SystemExit("hfref: train needs --lora or --adapter")
            losses, norms, params = adamw_train(model, batch, args.steps, args.lr, args.clip, loss_fn, extra, config)
            out["losses"] = losses
            out["grad_norms"] = norms
            out["params"] = {k: _tolist(v) for k, v in params.items()}
    text = json.dumps(out)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    elif args.json:
        sys.stdout.write(text + "\n")
    else:
        for k, v in out.items():
            if k in ("loss", "losses", "grad_norms"):
                print(f"{k}: {v}")
            elif k == "keys":
                for e in v:
                    print(f"{e['name']} {e['shape']}")
            else:
                print(f"{k}: {len(v)} entries")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sys.exit(main())
