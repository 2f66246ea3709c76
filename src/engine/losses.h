/* losses.h: the per-token losses of docs/spec.md §6 (Tinker definitions) and global-norm gradient clipping.
 *
 * Every loss is a sum over tokens of a term in the learner's log-probability lp = log p(target) of that
 * token, evaluated by the head (ops.h head_loss) through an eng_token_loss_fn whose ctx is a `const
 * eng_loss_cfg *`. With q = the sampler's log-probability, A = the advantage, r = exp(lp - q), w = the row's
 * weight:
 *
 *   cross_entropy        w * (-lp)                                         w = weights[row] (any real, may be
 * < 0) importance_sampling  w * (-r A) ppo                  w * (-min(r A, clip(r, lo, hi) A)) lo/hi default
 * 0.8 / 1.2 (eps 0.2 / 0.2) cispo                w * (-sg(clip(r, lo, hi)) lp A)                  lo/hi
 * default 0.0 / 4.0 dro                  w * (-(lp A - beta/2 (lp - q)^2))                beta has no
 * default: it must be set
 *
 * sg is stop-gradient: cispo's d/dlp is -w clip(r) A. lo/hi are absolute ratio bounds, named as in Tinker's
 * loss_fn_config ("clip_low_threshold", "clip_high_threshold"). For the RL losses `weights` is optional (NULL
 * means 1 on every row) and acts as a mask: rows with w = 0 contribute exactly 0 with zero gradient. Note
 * that A = 0 silences importance_sampling, ppo and cispo but NOT dro (its beta term remains), so mask prompt
 * tokens with weights when using dro. For cross_entropy, weights NULL means w = 1 on every row.
 *
 * The functions are pure (they read cfg and the arrays only), so head_loss may call them from several
 * threads. Ownership: eng_loss_cfg only points at caller-owned arrays indexed by the head's row (b * T + t);
 * nothing here allocates or frees. */
#ifndef LATHE_ENGINE_LOSSES_H
#define LATHE_ENGINE_LOSSES_H

#include <stddef.h>

#include "engine/ops.h"
#include "util/err.h"

typedef enum {
    ENG_LOSS_CROSS_ENTROPY = 0,
    ENG_LOSS_IMPORTANCE_SAMPLING,
    ENG_LOSS_PPO,
    ENG_LOSS_CISPO,
    ENG_LOSS_DRO,
} eng_loss_kind;

/* The ctx of every loss function. Arrays are indexed by row, length >= the head's N. */
typedef struct eng_loss_cfg {
    const float *weights;    /* per-row weight; NULL = 1 everywhere */
    const float *advantages; /* A; required by the RL losses */
    const float *logprobs;   /* q, the sampler's log-probabilities; required by the RL losses */
    float clip_low;          /* ppo / cispo lower ratio bound (absolute, e.g. 0.8) */
    float clip_high;         /* ppo / cispo upper ratio bound (absolute, e.g. 1.2) */
    float beta;              /* dro; NAN until set */
} eng_loss_cfg;

typedef struct eng_loss {
    const char *name; /* "cross_entropy", "importance_sampling", "ppo", "cispo", "dro" */
    eng_loss_kind kind;
    eng_token_loss_fn fn;
    /* The same loss in double precision, for gradient checks (see kernels_cpu_f64.h). */
    double (*fn_f64)(double lp, int row, void *ctx, double *dlp);
    int rl; /* 1 when advantages and logprobs are required */
} eng_loss;

/* The five losses, in the order of eng_loss_kind. */
extern const eng_loss eng_losses[5];

/* Looks a loss up by its Tinker name. Returns NULL with err (400, listing the valid names) when unknown. */
const eng_loss *eng_loss_by_name(const char *name, lt_err *err);

/* Fills cfg with the defaults of `loss` (clip thresholds; beta NAN; all arrays NULL). */
void eng_loss_cfg_init(eng_loss_cfg *cfg, const eng_loss *loss);

/* Applies one loss_fn_config entry: "clip_low_threshold", "clip_high_threshold" (ppo, cispo) or "beta" (dro).
 * Returns 0, or -1 with err (400) naming the key and what the loss accepts. */
int eng_loss_cfg_set(eng_loss_cfg *cfg, const eng_loss *loss, const char *key, double value, lt_err *err);

/* Checks that cfg is complete for `loss`: advantages and logprobs present for RL losses, 0 <= lo <= hi and
 * finite for ppo/cispo, beta set and >= 0 for dro. Returns 0, or -1 with err (400). */
int eng_loss_cfg_check(const eng_loss_cfg *cfg, const eng_loss *loss, lt_err *err);

/* The loss functions themselves (ctx = const eng_loss_cfg *). */
float eng_loss_cross_entropy(float lp, int row, void *ctx, float *dlp);
float eng_loss_importance_sampling(float lp, int row, void *ctx, float *dlp);
float eng_loss_ppo(float lp, int row, void *ctx, float *dlp);
float eng_loss_cispo(float lp, int row, void *ctx, float *dlp);
float eng_loss_dro(float lp, int row, void *ctx, float *dlp);

/* Global L2-norm clipping with torch.nn.utils.clip_grad_norm_ semantics: norm = sqrt(sum of squares over all
 * `count` tensors grads[k] of n[k] floats); if max_norm > 0, every gradient is multiplied by
 * min(1, max_norm / (norm + 1e-6)). max_norm <= 0 leaves the gradients alone. Returns the norm before
 * clipping. The sum is taken in double over fixed blocks, so the result does not depend on the thread count.
 */
double eng_clip_grad_norm(float *const grads[], const size_t n[], int count, double max_norm);

#endif
