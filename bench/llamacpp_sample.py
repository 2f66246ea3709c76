"""llama.cpp's generation speed at batch 1 on a GGUF file, measured the way `lathe bench sample` measures lathe.

`lathe bench sample --model FILE.gguf --peer llama.cpp` runs this script (with the test venv's python, where
llama-cpp-python is installed) on the same file and thread count and prints both figures and their ratio. It
can be run alone:

    ~/.cache/lathe/venv/bin/python bench/llamacpp_sample.py --model FILE.gguf --threads 2 [--json]

Method (as lathe's): a 16-token prompt of fixed pseudo-random ids, then 32 tokens decoded one at a time
(greedy: argmax of the last logits, fed back); the time of a 1-token run (prefill + first token) is subtracted
from the full run, each the best of 3, so the figure is decode tokens/s. The prompt is fed one token per
decode call (llama-cpp-python 0.3.36 segfaults in llama_decode on multi-token batches on this machine); the
prefill is subtracted anyway. llama.cpp keeps the weights as stored
(Q4_1 here) and runs its own quantized kernels; lathe widens them to f32 at load, so the two read different
bytes per token: that is the comparison's point, not a flaw of it.
"""

import argparse
import json
import sys
import time


def splitmix(state):
    state = (state + 0x9E3779B97F4A7C15) & (2**64 - 1)
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return state, z ^ (z >> 31)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    try:
        import numpy as np
        from llama_cpp import Llama
        import llama_cpp
    except ImportError as e:
        print(f"llamacpp_sample.py: llama-cpp-python is not installed in {sys.executable}: {e}", file=sys.stderr)
        return 2
    llm = Llama(model_path=a.model, n_ctx=a.prompt_tokens + a.gen + 8, n_batch=64, n_threads=a.threads,
                n_threads_batch=a.threads, verbose=False)
    vocab = llm.n_vocab()
    s, prompt = 7, []
    for _ in range(a.prompt_tokens):  # the same ids lathe's bench uses (splitmix64 from seed 7)
        s, z = splitmix(s)
        prompt.append(z % vocab)

    def run(n):
        llm.reset()
        t0 = time.perf_counter()
        for t in prompt:  # one token per decode call: multi-token batches crash llama-cpp-python 0.3.36 here
            llm.eval([t])
        for _ in range(n):
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            llm.eval([tok])
        return time.perf_counter() - t0

    run(2)  # warm-up
    t1 = min(run(1) for _ in range(a.reps))
    tn = min(run(a.gen) for _ in range(a.reps))
    decode = tn - t1 if tn > t1 else tn
    tps = (a.gen - 1) / decode
    out = {"peer": "llama.cpp", "llama_cpp_python": llama_cpp.__version__, "threads": a.threads,
           "prompt_tokens": a.prompt_tokens, "generated_per_run": a.gen, "tokens_per_s_batch1": tps}
    if a.json:
        print(json.dumps(out))
    else:
        print(f"llama.cpp (llama-cpp-python {llama_cpp.__version__}): {tps:.1f} tokens/s at batch 1, "
              f"{a.threads} thread(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
