/* engine.c: Tinker's primitives (forward, forward_backward, optim_step, sample, compute_logprobs, states) on
 * one eng_model.
 *
 * A call's datums are right-padded into one (B, T) batch (padding tokens 0, targets -1, weight 0), run
 * through eng_model_step with the named loss (losses.h) whose per-row arrays are the padded weights,
 * advantages and sampler logprobs, and the per-token logprobs are unpadded back into the caller's flat array.
 * Gradients accumulate in the model until eng_optim_step, which clips (optionally), applies AdamW through the
 * kernel table and zeroes them. Losses are sums over tokens (Tinker), so several forward_backward calls equal
 * one bigger one.
 *
 * Threads: OpenBLAS is the OpenMP build, so omp_set_num_threads sizes the one pool that GEMMs and the OpenMP
 * loops share; nothing else starts threads. */
#include "engine/engine.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/losses.h"
#include "util/util.h"

typedef struct {
    eng_loss_cfg cfg;
    eng_token_loss_fn fn;
    void *ctx;
} loss_binding;

typedef struct batch_t batch_t;
static int loss_bind(loss_binding *lb, const char *name, const eng_loss_kv *kv, int nkv, const eng_datum *d,
                     int nd, const batch_t *b, lt_err *err);

void eng_adam_params_default(eng_adam_params *p) {
    p->learning_rate = 1e-4f;
    p->beta1 = 0.9f;
    p->beta2 = 0.95f;
    p->eps = 1e-12f;
    p->weight_decay = 0.0f;
    p->grad_clip_norm = 0.0f;
}

void eng_set_threads(int n) {
    if (n > 0) omp_set_num_threads(n);
}

eng_engine *eng_from_model(eng_model *m, const char *base_model_name) {
    eng_engine *e = calloc(1, sizeof(*e));
    if (!e) abort(); /* a few bytes: nothing sensible to report */
    e->m = m;
    e->rng = 0x6c617468652d656eULL ^ m->lora.seed;
    snprintf(e->base_model, sizeof(e->base_model), "%s",
             base_model_name ? base_model_name : m->cfg.architecture);
    return e;
}

eng_engine *eng_open(const char *dir, const eng_lora_config *lc, const char *base_model_name, lt_err *err) {
    eng_model *m = eng_model_load(dir, eng_kernels_cpu(), err);
    if (!m) return NULL;
    if (lc && eng_model_lora_init(m, lc, err)) {
        eng_model_free(m);
        return NULL;
    }
    return eng_from_model(m, base_model_name ? base_model_name : dir);
}

eng_engine *eng_share(eng_engine *src, const eng_lora_config *lc, lt_err *err) {
    eng_model *m = eng_model_share(src->m, err);
    if (!m) return NULL;
    if (lc && eng_model_lora_init(m, lc, err)) {
        eng_model_free(m);
        return NULL;
    }
    return eng_from_model(m, src->base_model);
}

void eng_close(eng_engine *e) {
    if (!e) return;
    eng_model_free(e->m);
    free(e);
}

size_t eng_datums_tokens(const eng_datum *d, int nd) {
    size_t n = 0;
    for (int i = 0; i < nd; i++)
        n += (size_t)d[i].n;
    return n;
}

/* The datums right-padded into (B, T) arrays. */
struct batch_t {
    int B, T;
    int *tokens, *targets;
    float *weights, *adv, *lp, *logp;
};

static void batch_free(batch_t *b) {
    free(b->tokens), free(b->targets), free(b->weights), free(b->adv), free(b->lp), free(b->logp);
}

static int batch_build(const eng_datum *d, int nd, batch_t *b, lt_err *err) {
    memset(b, 0, sizeof(*b));
    if (nd < 1) return lt_err_set(err, 400, "the batch is empty (give at least one datum)");
    for (int i = 0; i < nd; i++) {
        if (d[i].n < 1 || !d[i].tokens)
            return lt_err_set(err, 400, "datum %d: model_input is empty (give at least one token)", i);
        if (d[i].n > b->T) b->T = d[i].n;
    }
    b->B = nd;
    size_t N = (size_t)nd * b->T;
    b->tokens = calloc(N, sizeof(int));
    b->targets = malloc(N * sizeof(int));
    b->weights = calloc(N, sizeof(float));
    b->adv = calloc(N, sizeof(float));
    b->lp = calloc(N, sizeof(float));
    b->logp = calloc(N, sizeof(float));
    if (!b->tokens || !b->targets || !b->weights || !b->adv || !b->lp || !b->logp) {
        batch_free(b);
        return lt_err_set(err, 500, "out of memory for a batch of %d x %d tokens", nd, b->T);
    }
    for (size_t i = 0; i < N; i++)
        b->targets[i] = -1;
    for (int i = 0; i < nd; i++) {
        size_t row = (size_t)i * b->T;
        for (int t = 0; t < d[i].n; t++) {
            b->tokens[row + t] = d[i].tokens[t];
            b->targets[row + t] = d[i].targets ? d[i].targets[t] : -1;
            b->weights[row + t] = d[i].weights ? d[i].weights[t] : 1.0f;
            b->adv[row + t] = d[i].advantages ? d[i].advantages[t] : 0.0f;
            b->lp[row + t] = d[i].logprobs ? d[i].logprobs[t] : 0.0f;
        }
    }
    return 0;
}

static int run(eng_engine *e, const eng_datum *d, int nd, const char *loss_name, const eng_loss_kv *cfg,
               int ncfg, float *logprobs, double *loss_sum, int backward, lt_err *err) {
    if (backward && !e->m->lora_p)
        return lt_err_set(err, 400, "forward_backward: the model has no LoRA adapter to train");
    if (backward && !loss_name)
        return lt_err_set(err, 400, "forward_backward: a loss function name is needed");
    batch_t b;
    if (batch_build(d, nd, &b, err)) return -1;
    loss_binding lb;
    if (loss_bind(&lb, loss_name, cfg, ncfg, d, nd, &b, err)) {
        batch_free(&b);
        return -1;
    }
    lt_err local = {0};
    lt_err *er = err ? err : &local;
    lt_err_clear(er);
    double loss =
        eng_model_step(e->m, b.tokens, b.targets, b.B, b.T, lb.fn, lb.ctx, b.logp, NULL, backward, er);
    if (isnan(loss) && er->code) {
        batch_free(&b);
        return -1;
    }
    if (logprobs) {
        size_t o = 0;
        for (int i = 0; i < nd; i++)
            for (int t = 0; t < d[i].n; t++)
                logprobs[o++] = b.logp[(size_t)i * b.T + t];
    }
    if (loss_sum) *loss_sum = loss_name ? loss : 0.0;
    batch_free(&b);
    return 0;
}

int eng_forward(eng_engine *e, const eng_datum *d, int nd, const char *loss_name, const eng_loss_kv *cfg,
                int ncfg, float *logprobs, double *loss_sum, lt_err *err) {
    return run(e, d, nd, loss_name, cfg, ncfg, logprobs, loss_sum, 0, err);
}

int eng_forward_backward(eng_engine *e, const eng_datum *d, int nd, const char *loss_name,
                         const eng_loss_kv *cfg, int ncfg, float *logprobs, double *loss_sum, lt_err *err) {
    return run(e, d, nd, loss_name, cfg, ncfg, logprobs, loss_sum, 1, err);
}

int eng_optim_step(eng_engine *e, const eng_adam_params *p, lt_err *err) {
    eng_model *m = e->m;
    if (!m->lora_p) return lt_err_set(err, 400, "optim_step: the model has no LoRA adapter");
    if (!(p->learning_rate >= 0) || !(p->beta1 >= 0 && p->beta1 < 1) || !(p->beta2 >= 0 && p->beta2 < 1) ||
        !(p->eps >= 0) || !(p->weight_decay >= 0) || !(p->grad_clip_norm >= 0))
        return lt_err_set(err, 400,
                          "optim_step: learning_rate, eps, weight_decay and grad_clip_norm must be >= 0 and "
                          "beta1, beta2 in [0, 1)");
    double t0 = lt_mono_s();
    float *g = m->lora_g;
    size_t n = m->n_lora;
    e->last_grad_norm = eng_clip_grad_norm(&g, &n, 1, p->grad_clip_norm);
    m->adam_t++;
    m->k->adamw(m->lora_p, m->lora_g, m->adam_m, m->adam_v, m->n_lora, p->learning_rate, p->beta1, p->beta2,
                p->eps, p->weight_decay, m->adam_t);
    eng_model_zero_grad(m);
    m->prof[ENG_PH_OPT] += lt_mono_s() - t0;
    return 0;
}

int eng_compute_logprobs(eng_engine *e, const int *tokens, int n, float *out, lt_err *err) {
    if (n < 1) return lt_err_set(err, 400, "compute_logprobs: the sequence is empty");
    out[0] = NAN;
    if (n == 1) return 0;
    eng_datum d = {.tokens = tokens, .n = n - 1, .targets = tokens + 1};
    return eng_forward(e, &d, 1, NULL, NULL, 0, out + 1, NULL, err);
}

int eng_engine_sample(eng_engine *e, const int *prompt, int n_prompt, const eng_sample_params *p,
                      int has_seed, const eng_tokenizer *tok, eng_sample_result *out, lt_err *err) {
    eng_sample_params q = *p;
    if (!has_seed) q.seed = eng_rng_next(&e->rng);
    return eng_sample(e->m, prompt, n_prompt, &q, tok, out, err);
}

int eng_save_state(eng_engine *e, const char *path, int with_optimizer, const char *extra_json, lt_err *err) {
    return eng_state_save(e->m, path, with_optimizer, e->rng, extra_json, err);
}

int eng_load_state(eng_engine *e, const char *path, int with_optimizer, char **extra_json, lt_err *err) {
    return eng_state_load(e->m, path, with_optimizer, &e->rng, extra_json, err);
}

static int loss_bind(loss_binding *lb, const char *name, const eng_loss_kv *kv, int nkv, const eng_datum *d,
                     int nd, const batch_t *b, lt_err *err) {
    memset(lb, 0, sizeof(*lb));
    if (!name) {
        if (nkv > 0) return lt_err_set(err, 400, "loss_fn_config given without a loss function");
        return 0;
    }
    const eng_loss *loss = eng_loss_by_name(name, err);
    if (!loss) return -1;
    eng_loss_cfg_init(&lb->cfg, loss);
    for (int i = 0; i < nkv; i++)
        if (eng_loss_cfg_set(&lb->cfg, loss, kv[i].key, kv[i].value, err)) return -1;
    if (loss->rl)
        for (int i = 0; i < nd; i++)
            if (!d[i].advantages || !d[i].logprobs)
                return lt_err_set(err, 400,
                                  "datum %d: loss %s needs loss_fn_inputs \"advantages\" and \"logprobs\"", i,
                                  name);
    lb->cfg.weights = b->weights;
    lb->cfg.advantages = b->adv;
    lb->cfg.logprobs = b->lp;
    if (eng_loss_cfg_check(&lb->cfg, loss, err)) return -1;
    lb->fn = loss->fn;
    lb->ctx = &lb->cfg;
    return 0;
}
