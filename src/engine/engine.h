/* engine.h: the training engine's public API, mirroring Tinker's primitives on one local model.
 *
 *   forward            datums -> per-token logprobs (and the loss, no gradients)
 *   forward_backward   datums + loss name + loss config -> per-token logprobs and "loss:sum"; gradients of
 * the LoRA parameters ACCUMULATE until the next optim_step optim_step         AdamW (torch semantics,
 * optional global-norm clipping), then gradients are zeroed sample             KV-cached sampling (sample.h)
 *   compute_logprobs   log p(token i | tokens < i) for a sequence; element 0 has none (NAN)
 *   save_state / load_state   adapter + optional AdamW state + RNG (state.h)
 *   PEFT export / import, merged export (peft.h)
 *
 * A datum follows Tinker's alignment rule: position i of `tokens` predicts targets[i], and every per-token
 * array has the same length n. Datums of one call are right-padded into one (B, T) batch.
 *
 * Ownership: eng_open returns an engine freed with eng_close, which owns its model. Datum arrays and output
 * arrays are the caller's; outputs are written, never allocated. Not thread-safe: one call at a time. */
#ifndef LATHE_ENGINE_ENGINE_H
#define LATHE_ENGINE_ENGINE_H

#include <stdint.h>

#include "engine/model.h"
#include "engine/peft.h"
#include "engine/sample.h"
#include "engine/state.h"
#include "util/err.h"

typedef struct eng_datum {
    const int *tokens; /* model_input, n tokens */
    int n;
    const int *targets;      /* target_tokens[n]; < 0 = no target (contributes nothing) */
    const float *weights;    /* cross_entropy weights[n]; NULL = all 1 */
    const float *advantages; /* RL losses: advantages[n] */
    const float *logprobs;   /* RL losses: sampler logprobs[n] */
} eng_datum;

/* loss_fn_config entry, e.g. {"clip_low_threshold", 0.8}. */
typedef struct eng_loss_kv {
    const char *key;
    double value;
} eng_loss_kv;

typedef struct eng_adam_params {
    float learning_rate;  /* 1e-4 */
    float beta1;          /* 0.9 */
    float beta2;          /* 0.95 */
    float eps;            /* 1e-12 (Tinker's default; the SFT trainer passes 1e-8) */
    float weight_decay;   /* 0 */
    float grad_clip_norm; /* 0 = off */
} eng_adam_params;

void eng_adam_params_default(eng_adam_params *p);

typedef struct eng_engine {
    eng_model *m;
    uint64_t rng;          /* engine RNG: seeds sampling when no seed is given; saved in states */
    char base_model[512];  /* recorded in PEFT exports (base_model_name_or_path) */
    double last_grad_norm; /* pre-clip global gradient norm of the last optim_step */
} eng_engine;

/* Loads DIR (config.json + safetensors) and, when lc != NULL, creates a fresh LoRA adapter. base_model_name
 * is recorded in PEFT exports (NULL: DIR). Returns NULL with err. */
eng_engine *eng_open(const char *dir, const eng_lora_config *lc, const char *base_model_name, lt_err *err);
/* A second engine on the same base weights as src (shared, not copied; see eng_model_share), with a fresh
 * adapter when lc != NULL. Returns NULL with err. */
eng_engine *eng_share(eng_engine *src, const eng_lora_config *lc, lt_err *err);
/* Wraps an existing model (ownership passes to the engine). */
eng_engine *eng_from_model(eng_model *m, const char *base_model_name);
void eng_close(eng_engine *e); /* NULL is fine */

/* Sum of the datums' lengths: the size of the logprobs output arrays below. */
size_t eng_datums_tokens(const eng_datum *d, int nd);

/* Runs the datums without gradients. logprobs (may be NULL) gets each datum's n logprobs back to back.
 * loss_name may be NULL (then *loss_sum is 0). Returns 0 or -1 with err (400: bad loss name / config key /
 * missing input, token id out of range, empty batch). */
int eng_forward(eng_engine *e, const eng_datum *d, int nd, const char *loss_name, const eng_loss_kv *cfg,
                int ncfg, float *logprobs, double *loss_sum, lt_err *err);

/* As eng_forward, and accumulates the LoRA gradients of the summed loss. */
int eng_forward_backward(eng_engine *e, const eng_datum *d, int nd, const char *loss_name,
                         const eng_loss_kv *cfg, int ncfg, float *logprobs, double *loss_sum, lt_err *err);

/* One AdamW step on the accumulated gradients, then zeroes them. Returns 0 or -1 with err (no adapter, bad
 * parameter). */
int eng_optim_step(eng_engine *e, const eng_adam_params *p, lt_err *err);

/* out[n]: out[0] = NAN, out[i] = log p(tokens[i] | tokens[< i]). Returns 0 or -1 with err. */
int eng_compute_logprobs(eng_engine *e, const int *tokens, int n, float *out, lt_err *err);

/* Sampling; with has_seed == 0 the seed is drawn from the engine's RNG. See sample.h. */
int eng_engine_sample(eng_engine *e, const int *prompt, int n_prompt, const eng_sample_params *p,
                      int has_seed, const eng_tokenizer *tok, eng_sample_result *out, lt_err *err);

/* save_state / load_state on the engine's model and RNG (state.h). */
int eng_save_state(eng_engine *e, const char *path, int with_optimizer, const char *extra_json, lt_err *err);
int eng_load_state(eng_engine *e, const char *path, int with_optimizer, char **extra_json, lt_err *err);

/* Sets the number of threads for OpenMP loops and the OpenMP build of OpenBLAS (one pool; no
 * oversubscription). n <= 0 leaves the default. */
void eng_set_threads(int n);

#endif
