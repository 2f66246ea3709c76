/* losses.c: Tinker's five token losses and global-norm gradient clipping.
 *
 * Each loss is written once as a double-precision core `*_core(lp, row, cfg, &dlp)`; the public float
 * eng_token_loss_fn and the double twin used by the gradient checks are thin wrappers around it, so the
 * function the trainer runs is the function the tests differentiate. Definitions and defaults are documented
 * in losses.h; they follow docs/engine-kernels.md (sums over tokens, no normalisation, absolute
 * clip thresholds, stop-gradient on CISPO's clipped ratio).
 *
 * PPO: -min(rA, clip(r)A). Where the unclipped term is the smaller (or they tie, i.e. r inside [lo, hi]) the
 * gradient is d(-rA)/dlp = -rA; where the clipped term wins the gradient is 0 (torch's min and clamp give the
 * same). A row whose weight is zero returns 0 before evaluating exp, so masked rows can never produce inf or
 * NaN (e.g. inf * 0) whatever their logprobs.
 *
 * eng_clip_grad_norm sums squares in double over fixed 4096-element blocks (OpenMP over blocks, then the
 * block sums in order), so the norm is independent of the thread count, and scales in float like torch's
 * mul_. */
/* The sanitizer/fuzzer builds (clang -O1) cannot honour every `omp simd`; that is expected, not an error. */
#ifdef __clang__
#pragma clang diagnostic ignored "-Wpass-failed"
#endif
#include "engine/losses.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static double row_weight(const eng_loss_cfg *c, int row) {
    return c->weights ? (double)c->weights[row] : 1.0;
}

static double ce_core(double lp, int row, const eng_loss_cfg *c, double *dlp) {
    double w = row_weight(c, row);
    *dlp = -w;
    return -w * lp;
}

static double is_core(double lp, int row, const eng_loss_cfg *c, double *dlp) {
    double w = row_weight(c, row), A = c->advantages[row];
    if (w == 0 || A == 0) {
        *dlp = 0;
        return 0;
    }
    double r = exp(lp - (double)c->logprobs[row]);
    *dlp = -w * r * A;
    return -w * r * A;
}

static double clampd(double x, double lo, double hi) {
    return x < lo ? lo : (x > hi ? hi : x);
}

static double ppo_core(double lp, int row, const eng_loss_cfg *c, double *dlp) {
    double w = row_weight(c, row), A = c->advantages[row];
    if (w == 0 || A == 0) {
        *dlp = 0;
        return 0;
    }
    double r = exp(lp - (double)c->logprobs[row]);
    double unclipped = r * A, clipped = clampd(r, c->clip_low, c->clip_high) * A;
    if (unclipped <= clipped) {
        *dlp = -w * r * A;
        return -w * unclipped;
    }
    *dlp = 0;
    return -w * clipped;
}

static double cispo_core(double lp, int row, const eng_loss_cfg *c, double *dlp) {
    double w = row_weight(c, row), A = c->advantages[row];
    if (w == 0 || A == 0) {
        *dlp = 0;
        return 0;
    }
    double cr = clampd(exp(lp - (double)c->logprobs[row]), c->clip_low, c->clip_high);
    *dlp = -w * cr * A;
    return -w * cr * lp * A;
}

static double dro_core(double lp, int row, const eng_loss_cfg *c, double *dlp) {
    double w = row_weight(c, row);
    if (w == 0) {
        *dlp = 0;
        return 0;
    }
    double A = c->advantages[row], d = lp - (double)c->logprobs[row], beta = c->beta;
    *dlp = -w * (A - beta * d);
    return -w * (lp * A - 0.5 * beta * d * d);
}

#define LOSS_WRAPPERS(pub, core)                                                                             \
    float pub(float lp, int row, void *ctx, float *dlp) {                                                    \
        double d;                                                                                            \
        double l = core((double)lp, row, (const eng_loss_cfg *)ctx, &d);                                     \
        *dlp = (float)d;                                                                                     \
        return (float)l;                                                                                     \
    }                                                                                                        \
    static double pub##_f64(double lp, int row, void *ctx, double *dlp) {                                    \
        return core(lp, row, (const eng_loss_cfg *)ctx, dlp);                                                \
    }

LOSS_WRAPPERS(eng_loss_cross_entropy, ce_core)
LOSS_WRAPPERS(eng_loss_importance_sampling, is_core)
LOSS_WRAPPERS(eng_loss_ppo, ppo_core)
LOSS_WRAPPERS(eng_loss_cispo, cispo_core)
LOSS_WRAPPERS(eng_loss_dro, dro_core)

const eng_loss eng_losses[5] = {
    {"cross_entropy", ENG_LOSS_CROSS_ENTROPY, eng_loss_cross_entropy, eng_loss_cross_entropy_f64, 0},
    {"importance_sampling", ENG_LOSS_IMPORTANCE_SAMPLING, eng_loss_importance_sampling,
     eng_loss_importance_sampling_f64, 1},
    {"ppo", ENG_LOSS_PPO, eng_loss_ppo, eng_loss_ppo_f64, 1},
    {"cispo", ENG_LOSS_CISPO, eng_loss_cispo, eng_loss_cispo_f64, 1},
    {"dro", ENG_LOSS_DRO, eng_loss_dro, eng_loss_dro_f64, 1},
};

const eng_loss *eng_loss_by_name(const char *name, lt_err *err) {
    for (size_t i = 0; i < sizeof eng_losses / sizeof eng_losses[0]; i++)
        if (name && strcmp(name, eng_losses[i].name) == 0) return &eng_losses[i];
    lt_err_set(err, 400,
               "unknown loss_fn \"%s\": expected one of cross_entropy, importance_sampling, ppo, cispo, dro",
               name ? name : "(null)");
    return NULL;
}

void eng_loss_cfg_init(eng_loss_cfg *cfg, const eng_loss *loss) {
    memset(cfg, 0, sizeof *cfg);
    cfg->beta = NAN;
    if (loss->kind == ENG_LOSS_CISPO) {
        cfg->clip_low = 0.0f;
        cfg->clip_high = 4.0f;
    } else {
        cfg->clip_low = 0.8f;
        cfg->clip_high = 1.2f;
    }
}

int eng_loss_cfg_set(eng_loss_cfg *cfg, const eng_loss *loss, const char *key, double value, lt_err *err) {
    const int clips = loss->kind == ENG_LOSS_PPO || loss->kind == ENG_LOSS_CISPO;
    if (clips && strcmp(key, "clip_low_threshold") == 0) {
        cfg->clip_low = (float)value;
        return 0;
    }
    if (clips && strcmp(key, "clip_high_threshold") == 0) {
        cfg->clip_high = (float)value;
        return 0;
    }
    if (loss->kind == ENG_LOSS_DRO && strcmp(key, "beta") == 0) {
        cfg->beta = (float)value;
        return 0;
    }
    const char *accepted = clips                        ? "clip_low_threshold and clip_high_threshold"
                           : loss->kind == ENG_LOSS_DRO ? "beta"
                                                        : "no keys";
    return lt_err_set(err, 400, "loss_fn_config: key \"%s\" is not valid for loss %s (it accepts %s)", key,
                      loss->name, accepted);
}

int eng_loss_cfg_check(const eng_loss_cfg *cfg, const eng_loss *loss, lt_err *err) {
    if (loss->rl && (!cfg->advantages || !cfg->logprobs))
        return lt_err_set(err, 400,
                          "loss %s needs loss_fn_inputs \"advantages\" and \"logprobs\" (the sampler's "
                          "log-probabilities) for every datum",
                          loss->name);
    if (loss->kind == ENG_LOSS_PPO || loss->kind == ENG_LOSS_CISPO) {
        if (!isfinite(cfg->clip_low) || !isfinite(cfg->clip_high) || cfg->clip_low < 0 ||
            cfg->clip_low > cfg->clip_high)
            return lt_err_set(err, 400,
                              "loss_fn_config for %s: need 0 <= clip_low_threshold <= clip_high_threshold "
                              "(absolute ratio bounds such as 0.8 and 1.2), got %g and %g",
                              loss->name, (double)cfg->clip_low, (double)cfg->clip_high);
    }
    if (loss->kind == ENG_LOSS_DRO && !(isfinite(cfg->beta) && cfg->beta >= 0))
        return lt_err_set(err, 400,
                          "loss dro needs loss_fn_config \"beta\" (a finite number >= 0, e.g. 0.05)%s",
                          isnan(cfg->beta) ? "" : ", got an invalid value");
    return 0;
}

#define CLIP_BLOCK 4096

double eng_clip_grad_norm(float *const grads[], const size_t n[], int count, double max_norm) {
    double total = 0;
    for (int k = 0; k < count; k++) {
        const float *g = grads[k];
        const size_t nb = (n[k] + CLIP_BLOCK - 1) / CLIP_BLOCK;
        double part[64]; /* block sums, folded in order in groups of 64 */
        for (size_t b0 = 0; b0 < nb; b0 += 64) {
            const size_t bn = nb - b0 < 64 ? nb - b0 : 64;
#pragma omp parallel for schedule(static) if (bn * CLIP_BLOCK >= (1u << 16))
            for (size_t b = 0; b < bn; b++) {
                const size_t lo = (b0 + b) * CLIP_BLOCK, hi = lo + CLIP_BLOCK < n[k] ? lo + CLIP_BLOCK : n[k];
                double s = 0;
#pragma omp simd reduction(+ : s)
                for (size_t i = lo; i < hi; i++)
                    s += (double)g[i] * (double)g[i];
                part[b] = s;
            }
            for (size_t b = 0; b < bn; b++)
                total += part[b];
        }
    }
    const double norm = sqrt(total);
    if (max_norm > 0) {
        double coef = max_norm / (norm + 1e-6);
        if (coef < 1.0) {
            const float c = (float)coef;
            for (int k = 0; k < count; k++) {
                float *g = grads[k];
                const size_t m = n[k];
#pragma omp parallel for simd schedule(static) if (m >= (1u << 16))
                for (size_t i = 0; i < m; i++)
                    g[i] *= c;
            }
        }
    }
    return norm;
}
