/* sample.h: autoregressive sampling with a KV cache, num_samples completions of one prompt decoded together.
 *
 * Semantics (Tinker's SamplingParams): temperature 0 = greedy; top_k <= 0 = off; top_p 1 = off; generation
 * stops at max_tokens (stop_reason "length"), at a stop token (the token is kept, stop_reason "stop") or when
 * the decoded completion contains a stop string (the tokens up to and including the one that completed it are
 * kept). The logprob reported for each sampled token is log softmax(logits / T) at that token (T = 1 when
 * greedy), before top-k / top-p truncation, so with T = 1 it is the model's own log-probability.
 *
 * Determinism: sample i draws from its own RNG stream derived from (seed, i), so a completion does not depend
 * on how many others were decoded with it, and the same seed gives the same tokens.
 *
 * Ownership: eng_sample fills a caller-owned eng_sample_result whose arrays it allocates; release them with
 * eng_sample_result_free. The model is used (its arena and RoPE tables may grow) but its weights never
 * change. */
#ifndef LATHE_ENGINE_SAMPLE_H
#define LATHE_ENGINE_SAMPLE_H

#include <stdint.h>

#include "engine/model.h"
#include "engine/tokenizer.h"
#include "util/err.h"

typedef struct eng_sample_params {
    int max_tokens;                  /* >= 1 */
    float temperature;               /* >= 0; 0 = greedy */
    float top_p;                     /* (0, 1]; 1 = off */
    int top_k;                       /* <= 0 = off */
    const char *const *stop_strings; /* needs a tokenizer */
    int n_stop_strings;
    const int *stop_tokens;
    int n_stop_tokens;
    uint64_t seed;
    int num_samples; /* >= 1 */
} eng_sample_params;

/* Defaults: max_tokens 16, temperature 1, top_p 1, top_k off, no stops, seed 0, one sample. */
void eng_sample_params_default(eng_sample_params *p);

enum { ENG_STOP_LENGTH = 0, ENG_STOP_STOP = 1 };
const char *eng_stop_reason_name(int reason); /* "length" | "stop" */

typedef struct eng_sequence {
    int *tokens;     /* generated tokens only (not the prompt) */
    float *logprobs; /* one per token */
    int n;
    int stop_reason;
} eng_sequence;

typedef struct eng_sample_result {
    eng_sequence *seqs;
    int n;
} eng_sample_result;

void eng_sample_result_free(eng_sample_result *r);

/* Samples p->num_samples completions of prompt[n_prompt]. tok is needed only for stop strings (may be NULL
 * otherwise). Returns 0, or -1 with err (400: empty prompt, bad parameter, prompt + max_tokens beyond the
 * context window, stop strings without a tokenizer; 500: OOM). */
int eng_sample(eng_model *m, const int *prompt, int n_prompt, const eng_sample_params *p,
               const eng_tokenizer *tok, eng_sample_result *out, lt_err *err);

#endif
