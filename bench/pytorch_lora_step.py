#!/usr/bin/env python3
"""Plain PyTorch CPU LoRA training step on the shape `lathe bench train` uses, for comparison.

Random weights of the SmolLM2-135M shape (hidden 576, 30 layers, 9 heads, 3 KV heads, intermediate 1536, vocab
49152, tied head) built with transformers' LlamaForCausalLM in float32, LoRA rank 16 / alpha 32 on q,k,v,o,gate,
up,down through peft, cross-entropy on random tokens, AdamW(0.9, 0.95, eps 1e-8). Prints tokens/s, ms/step,
achieved GFLOP/s with the same formula as the engine (tokens x (4 N_mm + 6 L H hd T)) and the share of torch's own
measured SGEMM peak in the same run.

--autocast bf16 runs forward and loss under `torch.autocast("cpu", dtype=torch.bfloat16)` (the one line a
PyTorch user adds; backward follows the forward's dtypes), and reports the share of torch's measured bf16 matmul
peak too (what lathe's `--compute bf16` is compared with).

    $(scripts/venv-path)/bin/python bench/pytorch_lora_step.py --batch 4 --seq 128 --threads 2 --steps 3
    $(scripts/venv-path)/bin/python bench/pytorch_lora_step.py --autocast bf16 --threads 2
"""

import argparse
import json
import time

import torch


def sgemm_peak(dtype=torch.float32):
    best = 0.0
    for n in (1024, 2048):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        a @ b
        for _ in range(3):
            t0 = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--autocast", choices=["off", "bf16"], default="off",
                    help="bf16: forward + loss under torch.autocast('cpu', dtype=torch.bfloat16)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    import peft
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                                   num_key_value_heads=3, head_dim=64, intermediate_size=1536, vocab_size=49152,
                                   tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5,
                                   max_position_embeddings=8192)
    model = transformers.LlamaForCausalLM(cfg).float()
    lcfg = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                           "down_proj"])
    model = peft.get_peft_model(model, lcfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seq))

    autocast = a.autocast == "bf16"

    def step():
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()

    peak = sgemm_peak()
    bf16_peak = sgemm_peak(torch.bfloat16) if autocast else None
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    step_s = (time.perf_counter() - t0) / a.steps
    C, L, H, hd, F, V = 576, 30, 9, 64, 1536, 49152
    n_mm = L * (C * H * hd * 2 + C * 3 * hd * 2 + 3 * C * F) + V * C
    flop_per_tok = 4 * n_mm + 6 * L * H * hd * a.seq
    tokens = a.batch * a.seq
    gflops = flop_per_tok * tokens / step_s / 1e9
    r = {"bench": "pytorch_lora_step", "torch": torch.__version__, "threads": torch.get_num_threads(),
         "batch": a.batch, "seq": a.seq, "tokens_per_s": tokens / step_s, "ms_per_step": step_s * 1e3,
         "achieved_gflops": gflops, "sgemm_peak_gflops": peak, "share_of_sgemm_peak": gflops / peak,
         "autocast": a.autocast}
    if autocast:
        r["bf16_peak_gflops"] = bf16_peak
        r["share_of_bf16_peak"] = gflops / bf16_peak
    if a.json:
        print(json.dumps(r))
    else:
        print(f"pytorch LoRA step (torch {torch.__version__}, {r['threads']} threads, batch {a.batch} x seq {a.seq}, "
              f"autocast {a.autocast})")
        print(f"  tokens/s              {r['tokens_per_s']:10.1f}")
        print(f"  ms/step               {r['ms_per_step']:10.1f}")
        print(f"  achieved              {gflops:10.1f} GFLOP/s  (tokens x (4*N_mm + 6*L*H*hd*T))")
        print(f"  torch SGEMM peak      {peak:10.1f} GFLOP/s")
        print(f"  share of peak         {100 * gflops / peak:10.1f} %")
        if autocast:
            print(f"  torch bf16 mm peak    {bf16_peak:10.1f} GFLOP/s")
            print(f"  share of bf16 peak    {100 * gflops / bf16_peak:10.1f} %")


if __name__ == "__main__":
    main()
