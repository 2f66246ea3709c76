/* Unit tests for the whole model and the engine API (model.c, engine.c, sample.c, state.c, peft.c):
 * directional derivatives of the loss for every family variant, invariants (B = 0 is the base model, adapter
 * == merged weights, right padding), checkpoint -> resume bit for bit, overfitting one batch, sampling
 * (determinism, top_k = 1 == greedy, stop tokens and strings, KV cache == full forward), PEFT round trip. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/engine.h"
#include "engine/losses.h"
#include "engine/safetensors.h"
#include "engine/tiny.h"
#include "engine/tokenizer.h"
#include "util/util.h"

enum { V_LLAMA = 0, V_QWEN2, V_QWEN3, V_LLAMA3, V_TIED, V_COUNT };
static const char *variant_names[V_COUNT] = {"llama", "qwen2-bias", "qwen3-qknorm", "llama3-rope", "tied"};

static eng_config tiny_cfg(int variant) {
    eng_config c;
    memset(&c, 0, sizeof(c));
    c.arch = ENG_ARCH_LLAMA;
    snprintf(c.architecture, sizeof(c.architecture), "LlamaForCausalLM");
    snprintf(c.family, sizeof(c.family), "llama");
    c.vocab_size = 64;
    c.hidden_size = 16;
    c.intermediate_size = 32;
    c.num_layers = 2;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 4;
    c.max_position_embeddings = 128;
    c.rms_norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.bos_token_id = c.eos_token_id = -1;
    switch (variant) {
    case V_QWEN2:
        c.arch = ENG_ARCH_QWEN2, c.attention_bias = 1;
        break;
    case V_QWEN3:
        c.arch = ENG_ARCH_QWEN3, c.qk_norm = 1, c.head_dim = 8;
        break;
    case V_LLAMA3:
        c.rope_type = ENG_ROPE_LLAMA3, c.rope_factor = 8, c.rope_low_freq_factor = 1,
        c.rope_high_freq_factor = 4;
        c.rope_original_max_pos = 16;
        break;
    case V_TIED:
        c.tie_word_embeddings = 1;
        break;
    }
    return c;
}

static eng_model *tiny_model(int variant, uint64_t seed, int with_lora, int random_b) {
    eng_config c = tiny_cfg(variant);
    lt_err err = {0};
    eng_model *m = eng_model_new(&c, eng_kernels_cpu(), &err);
    assert_non_null(m);
    eng_model_init_random(m, seed, 0.3f);
    if (with_lora) {
        eng_lora_config lc = {
            .rank = 4, .alpha = 8, .targets = ENG_LORA_ALL | ENG_LORA_HEAD, .seed = seed + 1};
        assert_int_equal(eng_model_lora_init(m, &lc, &err), 0);
        if (random_b) {
            uint64_t s = seed + 2;
            for (size_t i = 0; i < m->n_lora; i++)
                m->lora_p[i] = (float)(eng_rng_uniform(&s) - 0.5) * 0.6f;
        }
    }
    return m;
}

static void random_tokens(int *t, size_t n, int V, uint64_t seed) {
    for (size_t i = 0; i < n; i++)
        t[i] = (int)(eng_rng_next(&seed) % (uint64_t)V);
}

/* Loss of the model on a fixed batch with cross_entropy and mixed weights (some rows masked). */
typedef struct {
    int B, T;
    int tokens[64], targets[64];
    float weights[64];
} fixed_batch;

static void make_batch(fixed_batch *fb, int V) {
    fb->B = 2, fb->T = 8;
    random_tokens(fb->tokens, 16, V, 11);
    random_tokens(fb->targets, 16, V, 12);
    uint64_t s = 13;
    for (int i = 0; i < 16; i++)
        fb->weights[i] = (float)(0.5 + eng_rng_uniform(&s));
    fb->targets[3] = -1;     /* masked position */
    fb->weights[9] = 0.0f;   /* zero weight */
    fb->weights[12] = -0.7f; /* negative weights are allowed (forward_backward_custom) */
}

static double batch_loss(eng_model *m, const fixed_batch *fb, int backward) {
    lt_err err = {0};
    const eng_loss *ce = eng_loss_by_name("cross_entropy", &err);
    assert_non_null(ce);
    eng_loss_cfg cfg;
    eng_loss_cfg_init(&cfg, ce);
    cfg.weights = fb->weights;
    double l =
        eng_model_step(m, fb->tokens, fb->targets, fb->B, fb->T, ce->fn, &cfg, NULL, NULL, backward, &err);
    assert_false(isnan(l));
    return l;
}

/* d/de loss(theta + e d) at e = 0 by central differences, against grad . d, for d over all LoRA parameters
 * and over each target's parameters alone. */
static void check_directional(int variant) {
    eng_model *m = tiny_model(variant, 100 + (uint64_t)variant, 1, 1);
    fixed_batch fb;
    make_batch(&fb, m->V);
    eng_model_zero_grad(m);
    batch_loss(m, &fb, 1);
    float *g = malloc(m->n_lora * sizeof(float)), *d = malloc(m->n_lora * sizeof(float)),
          *p0 = malloc(m->n_lora * sizeof(float));
    memcpy(g, m->lora_g, m->n_lora * sizeof(float));
    memcpy(p0, m->lora_p, m->n_lora * sizeof(float));
    for (int which = -1; which <= ENG_T_HEAD; which++) {
        uint64_t s = 77 + (uint64_t)which;
        memset(d, 0, m->n_lora * sizeof(float));
        for (int i = 0; i <= m->L * ENG_NTARGETS; i++) {
            int t = i < m->L * ENG_NTARGETS ? i % ENG_NTARGETS : ENG_T_HEAD;
            if (which >= 0 && t != which) continue;
            eng_lora_slot *sl = t == ENG_T_HEAD ? &m->head_lora : &m->slots[i];
            size_t off = (size_t)(sl->A - m->lora_p), n = (size_t)m->lora.rank * (sl->in + sl->out);
            for (size_t k = 0; k < n; k++)
                d[off + k] = eng_rng_uniform(&s) < 0.5 ? -1.0f : 1.0f;
        }
        double ana = 0, dn = 0;
        for (size_t i = 0; i < m->n_lora; i++)
            ana += (double)g[i] * d[i], dn += (double)d[i] * d[i];
        /* step of norm 0.1 along d, Richardson-extrapolated central differences (error O(h^4)): large
         * enough that f32 rounding of the loss stays far below the signal */
        double h = 0.1 / sqrt(dn), D[2];
        for (int k = 0; k < 2; k++, h /= 2) {
            for (size_t i = 0; i < m->n_lora; i++)
                m->lora_p[i] = p0[i] + (float)h * d[i];
            double lp = batch_loss(m, &fb, 0);
            for (size_t i = 0; i < m->n_lora; i++)
                m->lora_p[i] = p0[i] - (float)h * d[i];
            double lm = batch_loss(m, &fb, 0);
            D[k] = (lp - lm) / (2 * h);
        }
        memcpy(m->lora_p, p0, m->n_lora * sizeof(float));
        double num = (4 * D[1] - D[0]) / 3;
        double rel = fabs(num - ana) / fmax(fabs(ana), 1.0);
        if (rel > 5e-3)
            fail_msg("%s, direction %s: numeric %.6g vs analytic %.6g (rel %.2e)", variant_names[variant],
                     which < 0 ? "all" : eng_target_name((eng_target)which), num, ana, rel);
        assert_true(fabs(ana) > 1e-3); /* the direction really moves the loss: the check is not vacuous */
    }
    free(g), free(d), free(p0);
    eng_model_free(m);
}

static void test_directional_llama(void **state) {
    check_directional(V_LLAMA);
}
static void test_directional_qwen2(void **state) {
    check_directional(V_QWEN2);
}
static void test_directional_qwen3(void **state) {
    check_directional(V_QWEN3);
}
static void test_directional_llama3(void **state) {
    check_directional(V_LLAMA3);
}
static void test_directional_tied(void **state) {
    check_directional(V_TIED);
}

static void logp_of(eng_model *m, const fixed_batch *fb, float *out) {
    lt_err err = {0};
    double l = eng_model_step(m, fb->tokens, fb->targets, fb->B, fb->T, NULL, NULL, out, NULL, 0, &err);
    assert_false(isnan(l));
}

static void test_b_zero_is_base(void **state) {
    for (int v = 0; v < V_COUNT; v++) {
        eng_model *m = tiny_model(v, 5, 0, 0);
        fixed_batch fb;
        make_batch(&fb, m->V);
        float a[16], b[16];
        logp_of(m, &fb, a);
        lt_err err = {0};
        eng_lora_config lc = {.rank = 4, .alpha = 32, .targets = ENG_LORA_ALL, .seed = 9};
        assert_int_equal(eng_model_lora_init(m, &lc, &err), 0);
        logp_of(m, &fb, b);
        assert_memory_equal(a, b, sizeof(a));
        eng_model_free(m);
    }
}

typedef struct {
    const st_reader *r;
    lt_err *err;
} load_ctx;

static int load_tensor(void *vctx, const char *name, float *data, int rows, int cols) {
    load_ctx *c = vctx;
    int64_t shape[2] = {rows, cols};
    return st_load_f32(c->r, name, cols ? 2 : 1, shape, data, c->err) ? 1 : 0;
}

static void test_adapter_equals_merged(void **state) {
    char dir[] = "/tmp/lathe-test-model-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *path = lt_path_join(dir, "merged.safetensors");
    for (int v = 0; v < V_COUNT; v++) {
        eng_model *m = tiny_model(v, 21, 1, 1);
        fixed_batch fb;
        make_batch(&fb, m->V);
        float a[16], b[16];
        logp_of(m, &fb, a);
        lt_err err = {0};
        if (v == V_TIED) {
            /* an lm_head adapter cannot be merged into a head shared with the embedding */
            assert_int_equal(eng_export_merged(m, path, ST_F32, &err), -1);
            assert_non_null(strstr(err.msg, "ties lm_head"));
            eng_lora_config lc = {.rank = 4, .alpha = 8, .targets = ENG_LORA_ALL, .seed = 3};
            assert_int_equal(eng_model_lora_init(m, &lc, &err), 0);
            uint64_t s = 4;
            for (size_t i = 0; i < m->n_lora; i++)
                m->lora_p[i] = (float)(eng_rng_uniform(&s) - 0.5) * 0.6f;
            logp_of(m, &fb, a);
        }
        assert_int_equal(eng_export_merged(m, path, ST_F32, &err), 0);
        eng_config c = tiny_cfg(v);
        eng_model *m2 = eng_model_new(&c, eng_kernels_cpu(), &err);
        st_reader *r = st_open(path, &err);
        assert_non_null(r);
        load_ctx lc = {r, &err};
        assert_int_equal(eng_model_each_weight(m2, load_tensor, &lc), 0);
        st_close(r);
        logp_of(m2, &fb, b);
        for (int i = 0; i < 16; i++)
            assert_true(fabsf(a[i] - b[i]) <= 1e-4f * (1 + fabsf(a[i])));
        eng_model_free(m);
        eng_model_free(m2);
    }
    free(path);
    lt_rm_rf(dir);
}

static void test_right_padding(void **state) {
    for (int v = 0; v < V_COUNT; v++) {
        eng_model *m = tiny_model(v, 31, 1, 1);
        lt_err err = {0};
        int tok[16], tg[16];
        random_tokens(tok, 16, m->V, 3);
        random_tokens(tg, 16, m->V, 4);
        float short_lp[5], long_lp[16];
        assert_false(isnan(eng_model_step(m, tok, tg, 1, 5, NULL, NULL, short_lp, NULL, 0, &err)));
        /* same first 5 tokens, then 3 padding tokens, next to a second unrelated row */
        int tok2[16], tg2[16];
        memcpy(tok2, tok, sizeof(tok2));
        memcpy(tg2, tg, sizeof(tg2));
        for (int i = 5; i < 8; i++)
            tok2[i] = (i * 7) % m->V, tg2[i] = -1;
        assert_false(isnan(eng_model_step(m, tok2, tg2, 2, 8, NULL, NULL, long_lp, NULL, 0, &err)));
        for (int i = 0; i < 5; i++)
            assert_true(fabsf(short_lp[i] - long_lp[i]) <= 1e-5f * (1 + fabsf(short_lp[i])));
        for (int i = 5; i < 8; i++)
            assert_true(long_lp[i] == 0.0f); /* masked rows report 0 */
        eng_model_free(m);
    }
}

/* Two datums of different lengths for engine-level tests. */
static int d_tok[2][8], d_tg[2][8];
static float d_w[2][8];
static void make_datums(eng_datum d[2], int V) {
    random_tokens(&d_tok[0][0], 16, V, 41);
    random_tokens(&d_tg[0][0], 16, V, 42);
    for (int i = 0; i < 2; i++)
        for (int t = 0; t < 8; t++)
            d_w[i][t] = t < 2 ? 0.0f : 1.0f; /* "prompt" positions untrained */
    memset(d, 0, 2 * sizeof(eng_datum));
    d[0] = (eng_datum){.tokens = d_tok[0], .n = 8, .targets = d_tg[0], .weights = d_w[0]};
    d[1] = (eng_datum){.tokens = d_tok[1], .n = 6, .targets = d_tg[1], .weights = d_w[1]};
}

static double train_step(eng_engine *e, const eng_datum *d, float lr) {
    lt_err err = {0};
    double loss = 0;
    float lp[14];
    assert_int_equal(eng_forward_backward(e, d, 2, "cross_entropy", NULL, 0, lp, &loss, &err), 0);
    eng_adam_params ap;
    eng_adam_params_default(&ap);
    ap.learning_rate = lr;
    ap.eps = 1e-8f;
    ap.grad_clip_norm = 10.0f;
    assert_int_equal(eng_optim_step(e, &ap, &err), 0);
    return loss;
}

static void test_resume_bit_exact(void **state) {
    char dir[] = "/tmp/lathe-test-state-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *path = lt_path_join(dir, "state.safetensors"), *path2 = lt_path_join(dir, "noopt.safetensors");
    eng_engine *e = eng_from_model(tiny_model(V_QWEN3, 51, 1, 0), "tiny");
    eng_datum d[2];
    make_datums(d, e->m->V);
    lt_err err = {0};
    for (int i = 0; i < 3; i++)
        train_step(e, d, 1e-2f);
    assert_int_equal(eng_save_state(e, path, 1, "{\"cursor\":3}", &err), 0);
    assert_int_equal(eng_save_state(e, path2, 0, NULL, &err), 0);
    double ref[3];
    for (int i = 0; i < 3; i++)
        ref[i] = train_step(e, d, 1e-2f);
    float *pref = malloc(e->m->n_lora * sizeof(float));
    memcpy(pref, e->m->lora_p, e->m->n_lora * sizeof(float));

    eng_model *m2 = tiny_model(V_QWEN3, 51, 1, 0);
    eng_lora_config other = {.rank = 2, .alpha = 1, .targets = 1, .seed = 999}; /* replaced by the load */
    assert_int_equal(eng_model_lora_init(m2, &other, &err), 0);
    eng_engine *e2 = eng_from_model(m2, "tiny");
    char *extra = NULL;
    assert_int_equal(eng_load_state(e2, path, 1, &extra, &err), 0);
    assert_string_equal(extra, "{\"cursor\":3}");
    free(extra);
    assert_int_equal(e2->m->adam_t, 3);
    for (int i = 0; i < 3; i++) {
        double l = train_step(e2, d, 1e-2f);
        assert_memory_equal(&l, &ref[i], sizeof(double));
    }
    assert_memory_equal(e2->m->lora_p, pref, e->m->n_lora * sizeof(float));

    /* a state saved without the optimizer cannot be loaded with it, and loads without it (moments reset) */
    assert_int_equal(eng_load_state(e2, path2, 1, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "no optimizer state"));
    assert_int_equal(eng_load_state(e2, path2, 0, NULL, &err), 0);
    assert_int_equal(e2->m->adam_t, 0);
    /* a state from a differently shaped model is refused */
    eng_config c = tiny_cfg(V_LLAMA);
    c.num_layers = 3;
    lt_err err3 = {0};
    eng_model *m3 = eng_model_new(&c, eng_kernels_cpu(), &err3);
    assert_int_equal(eng_state_load(m3, path, 1, NULL, NULL, &err3), -1);
    assert_non_null(strstr(err3.msg, "3 layers") ? strstr(err3.msg, "3 layers") : strstr(err3.msg, "layers"));
    eng_model_free(m3);
    free(pref);
    eng_close(e);
    eng_close(e2);
    free(path), free(path2);
    lt_rm_rf(dir);
}

static void test_overfit_one_batch(void **state) {
    eng_engine *e = eng_from_model(tiny_model(V_LLAMA, 61, 0, 0), "tiny");
    lt_err err = {0};
    eng_lora_config lc = {.rank = 8, .alpha = 16, .targets = ENG_LORA_ALL, .seed = 3};
    assert_int_equal(eng_model_lora_init(e->m, &lc, &err), 0);
    /* the head acts on a normed hidden state: with std-0.3 rows its logits span only about +-5, which caps
     * how sure the model can get. Sharpen it so that "near 0" is reachable. */
    for (size_t i = 0; i < (size_t)e->m->V * e->m->C; i++)
        e->m->head[i] *= 4.0f;
    eng_datum d[2];
    make_datums(d, e->m->V);
    float lr = 2e-2f;
    double first = train_step(e, d, lr), last = first;
    for (int i = 0; i < 150; i++)
        last = train_step(e, d, lr);
    /* 10 trained tokens: from ~ln(64) each to near 0 */
    assert_true(first > 10 * 2.0);
    if (!(last < 10 * 0.05)) fail_msg("loss went from %g to %g only", first, last);
    eng_close(e);
}

static void test_engine_errors(void **state) {
    eng_engine *e = eng_from_model(tiny_model(V_LLAMA, 71, 1, 0), "tiny");
    eng_datum d[2];
    make_datums(d, e->m->V);
    lt_err err = {0};
    float lp[14];
    double loss;
    assert_int_equal(eng_forward_backward(e, d, 2, "mse", NULL, 0, lp, &loss, &err), -1);
    assert_non_null(strstr(err.msg, "cross_entropy"));
    lt_err_clear(&err);
    assert_int_equal(eng_forward_backward(e, d, 2, "ppo", NULL, 0, lp, &loss, &err), -1);
    assert_non_null(strstr(err.msg, "advantages"));
    lt_err_clear(&err);
    int bad = 9999;
    eng_datum b = {.tokens = &bad, .n = 1, .targets = &bad};
    assert_int_equal(eng_forward(e, &b, 1, "cross_entropy", NULL, 0, lp, &loss, &err), -1);
    assert_non_null(strstr(err.msg, "vocabulary"));
    lt_err_clear(&err);
    assert_int_equal(eng_forward(e, d, 0, "cross_entropy", NULL, 0, lp, &loss, &err), -1);
    assert_non_null(strstr(err.msg, "empty"));
    /* RL losses run with advantages and sampler logprobs; ppo's clip config is accepted */
    float adv[8] = {1, 1, 1, -1, -1, 1, 0, 0}, q[8] = {-4, -4, -4, -4, -4, -4, -4, -4};
    eng_datum r = {.tokens = d_tok[0], .n = 8, .targets = d_tg[0], .advantages = adv, .logprobs = q};
    eng_loss_kv kv[2] = {{"clip_low_threshold", 0.9}, {"clip_high_threshold", 1.1}};
    lt_err_clear(&err);
    assert_int_equal(eng_forward_backward(e, &r, 1, "ppo", kv, 2, lp, &loss, &err), 0);
    assert_true(isfinite(loss));
    eng_close(e);
}

/* The KV-cached sampler must agree with the full forward: greedy tokens' logprobs == compute_logprobs. */
static void test_sample_matches_forward(void **state) {
    for (int v = 0; v < V_COUNT; v++) {
        eng_engine *e = eng_from_model(tiny_model(v, 81, 1, 1), "tiny");
        lt_err err = {0};
        int prompt[5] = {1, 2, 3, 4, 5};
        eng_sample_params p;
        eng_sample_params_default(&p);
        p.temperature = 0;
        p.max_tokens = 10;
        p.num_samples = 2;
        eng_sample_result r;
        assert_int_equal(eng_engine_sample(e, prompt, 5, &p, 1, NULL, &r, &err), 0);
        assert_int_equal(r.n, 2);
        assert_int_equal(r.seqs[0].n, 10);
        assert_int_equal(r.seqs[0].stop_reason, ENG_STOP_LENGTH);
        assert_memory_equal(r.seqs[0].tokens, r.seqs[1].tokens, 10 * sizeof(int));
        int all[15];
        float lp[15];
        memcpy(all, prompt, sizeof(prompt));
        memcpy(all + 5, r.seqs[0].tokens, 10 * sizeof(int));
        assert_int_equal(eng_compute_logprobs(e, all, 15, lp, &err), 0);
        assert_true(isnan(lp[0]));
        for (int i = 0; i < 10; i++)
            if (fabsf(lp[5 + i] - r.seqs[0].logprobs[i]) > 1e-4f * (1 + fabsf(lp[5 + i])))
                fail_msg("%s: token %d logprob %g (sampler) vs %g (forward)", variant_names[v], i,
                         (double)r.seqs[0].logprobs[i], (double)lp[5 + i]);
        eng_sample_result_free(&r);
        eng_close(e);
    }
}

static void test_sample_determinism_and_stops(void **state) {
    eng_engine *e = eng_from_model(tiny_model(V_LLAMA, 91, 1, 1), "tiny");
    lt_err err = {0};
    int prompt[3] = {7, 8, 9};
    eng_sample_params p;
    eng_sample_params_default(&p);
    p.max_tokens = 12;
    p.num_samples = 3;
    p.seed = 1234;
    eng_sample_result a, b, c;
    assert_int_equal(eng_engine_sample(e, prompt, 3, &p, 1, NULL, &a, &err), 0);
    assert_int_equal(eng_engine_sample(e, prompt, 3, &p, 1, NULL, &b, &err), 0);
    for (int s = 0; s < 3; s++) {
        assert_int_equal(a.seqs[s].n, b.seqs[s].n);
        assert_memory_equal(a.seqs[s].tokens, b.seqs[s].tokens, (size_t)a.seqs[s].n * sizeof(int));
        assert_memory_equal(a.seqs[s].logprobs, b.seqs[s].logprobs, (size_t)a.seqs[s].n * sizeof(float));
    }
    /* sample 0 does not depend on how many were decoded with it */
    p.num_samples = 1;
    assert_int_equal(eng_engine_sample(e, prompt, 3, &p, 1, NULL, &c, &err), 0);
    assert_memory_equal(a.seqs[0].tokens, c.seqs[0].tokens, (size_t)c.seqs[0].n * sizeof(int));
    /* different samples differ (temperature 1 over a random model) */
    assert_true(memcmp(a.seqs[0].tokens, a.seqs[1].tokens, 12 * sizeof(int)) ||
                memcmp(a.seqs[0].tokens, a.seqs[2].tokens, 12 * sizeof(int)));
    eng_sample_result_free(&b);
    eng_sample_result_free(&c);

    /* top_k = 1 is greedy */
    eng_sample_result g, k1;
    p.temperature = 0;
    assert_int_equal(eng_engine_sample(e, prompt, 3, &p, 1, NULL, &g, &err), 0);
    p.temperature = 1, p.top_k = 1, p.seed = 99;
    assert_int_equal(eng_engine_sample(e, prompt, 3, &p, 1, NULL, &k1, &err), 0);
    assert_memory_equal(g.seqs[0].tokens, k1.seqs[0].tokens, 12 * sizeof(int));
    eng_sample_result_free(&k1);
    /* a tiny top_p keeps only the most likely token: greedy again */
    p.top_k = 0, p.top_p = 1e-6f;
    assert_int_equal(eng_engine_sample(e, prompt, 3, &p, 1, NULL, &k1, &err), 0);
    assert_memory_equal(g.seqs[0].tokens, k1.seqs[0].tokens, 12 * sizeof(int));
    eng_sample_result_free(&k1);

    /* stop token: the first token of the greedy run not seen before position i stops it there, included */
    int i = 1;
    while (i < 12) {
        int seen = 0;
        for (int j = 0; j < i; j++)
            seen |= g.seqs[0].tokens[j] == g.seqs[0].tokens[i];
        if (!seen) break;
        i++;
    }
    if (i < 12) {
        p.temperature = 0, p.top_p = 1;
        p.stop_tokens = &g.seqs[0].tokens[i];
        p.n_stop_tokens = 1;
        assert_int_equal(eng_engine_sample(e, prompt, 3, &p, 1, NULL, &k1, &err), 0);
        assert_int_equal(k1.seqs[0].n, i + 1);
        assert_int_equal(k1.seqs[0].stop_reason, ENG_STOP_STOP);
        assert_string_equal(eng_stop_reason_name(k1.seqs[0].stop_reason), "stop");
        eng_sample_result_free(&k1);
    }
    eng_sample_result_free(&g);
    eng_sample_result_free(&a);

    /* parameter errors */
    eng_sample_params bad;
    eng_sample_params_default(&bad);
    bad.max_tokens = 200; /* 3 + 200 > 128 positions */
    assert_int_equal(eng_engine_sample(e, prompt, 3, &bad, 1, NULL, &k1, &err), -1);
    assert_non_null(strstr(err.msg, "context window"));
    eng_sample_params_default(&bad);
    const char *stop = "x";
    bad.stop_strings = &stop, bad.n_stop_strings = 1;
    assert_int_equal(eng_engine_sample(e, prompt, 3, &bad, 1, NULL, &k1, &err), -1);
    assert_non_null(strstr(err.msg, "tokenizer"));
    assert_int_equal(eng_engine_sample(e, prompt, 0, &p, 1, NULL, &k1, &err), -1);
    eng_close(e);
}

/* A real model dir (init-tiny), its tokenizer, stop strings, and the PEFT round trip. */
static void test_tiny_dir_stop_strings_and_peft(void **state) {
    char dir[] = "/tmp/lathe-test-tiny-XXXXXX";
    assert_non_null(mkdtemp(dir));
    lt_err err = {0};
    eng_tiny_opts o;
    eng_tiny_defaults(&o);
    o.arch = ENG_ARCH_QWEN2;
    o.seed = 5;
    assert_int_equal(eng_tiny_write(dir, &o, &err), 0);
    eng_lora_config lc = {.rank = 4, .alpha = 8, .targets = ENG_LORA_ALL | ENG_LORA_HEAD, .seed = 1};
    eng_engine *e = eng_open(dir, &lc, "tiny-qwen2", &err);
    assert_non_null(e);
    eng_tokenizer *tok = eng_tok_load(dir, &err);
    assert_non_null(tok);
    int *ids;
    size_t n;
    const char *text = "The cat sat on the mat.";
    assert_int_equal(eng_tok_encode(tok, text, strlen(text), 1, &ids, &n, &err), 0);
    eng_sample_params p;
    eng_sample_params_default(&p);
    p.temperature = 0;
    p.max_tokens = 12;
    eng_sample_result g, s;
    assert_int_equal(eng_engine_sample(e, ids, (int)n, &p, 1, tok, &g, &err), 0);
    char *full = eng_tok_decode(tok, g.seqs[0].tokens, 4, 0, NULL);
    if (full[0]) {
        const char *stops[2] = {"\x01never", full};
        p.stop_strings = stops, p.n_stop_strings = 2;
        assert_int_equal(eng_engine_sample(e, ids, (int)n, &p, 1, tok, &s, &err), 0);
        assert_int_equal(s.seqs[0].stop_reason, ENG_STOP_STOP);
        assert_true(s.seqs[0].n <= 4);
        char *got = eng_tok_decode(tok, s.seqs[0].tokens, (size_t)s.seqs[0].n, 0, NULL);
        assert_non_null(strstr(got, full));
        free(got);
        eng_sample_result_free(&s);
    }
    free(full);
    eng_sample_result_free(&g);

    /* PEFT export -> import into a fresh engine gives the same logprobs */
    uint64_t r = 3;
    for (size_t i = 0; i < e->m->n_lora; i++)
        e->m->lora_p[i] = (float)(eng_rng_uniform(&r) - 0.5) * 0.2f;
    float a[64], b[64];
    assert_true(n <= 64);
    assert_int_equal(eng_compute_logprobs(e, ids, (int)n, a, &err), 0);
    char *adir = lt_path_join(dir, "adapter");
    assert_int_equal(eng_peft_export(e->m, adir, e->base_model, &err), 0);
    char *cfgp = lt_path_join(adir, "adapter_config.json");
    size_t len;
    char *cfg = lt_read_file(cfgp, &len, &err);
    assert_non_null(strstr(cfg, "\"base_model_name_or_path\": \"tiny-qwen2\""));
    assert_non_null(strstr(cfg, "\"down_proj\""));
    free(cfg), free(cfgp);
    char *stp = lt_path_join(adir, "adapter_model.safetensors");
    st_reader *rd = st_open(stp, &err);
    assert_non_null(rd);
    const st_tensor *t = st_find(rd, "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight");
    assert_non_null(t);
    assert_int_equal(t->shape[0], e->m->Dk);
    assert_int_equal(t->shape[1], 4);
    t = st_find(rd, "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight");
    assert_non_null(t);
    assert_int_equal(t->shape[0], 4);
    assert_int_equal(t->shape[1], e->m->F);
    assert_int_equal(st_count(rd), (size_t)(2 * ENG_NTARGETS * e->m->L + 2));
    t = st_find(rd, "base_model.model.lm_head.lora_B.weight");
    assert_non_null(t);
    assert_int_equal(t->shape[0], e->m->V);
    st_close(rd);
    free(stp);
    eng_engine *e2 = eng_open(dir, NULL, NULL, &err);
    assert_non_null(e2);
    assert_int_equal(eng_peft_import(e2->m, adir, &err), 0);
    assert_int_equal(eng_compute_logprobs(e2, ids, (int)n, b, &err), 0);
    for (size_t i = 1; i < n; i++)
        assert_true(a[i] == b[i]);
    /* a broken config is refused with the field named */
    char *cp = lt_path_join(adir, "adapter_config.json");
    const char *badcfg = "{\"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"q_proj\", \"embed_tokens\"]}";
    assert_int_equal(lt_write_file_atomic(cp, badcfg, strlen(badcfg), 0644, &err), 0);
    assert_int_equal(eng_peft_import(e2->m, adir, &err), -1);
    assert_non_null(strstr(err.msg, "target_modules[1]"));
    free(cp);
    free(adir);
    free(ids);
    eng_tok_free(tok);
    eng_close(e);
    eng_close(e2);
    lt_rm_rf(dir);
}

/* Two engines on one base: the weights are shared (same buffer), the adapters and arenas are not, and the
 * base outlives whichever engine is closed first. */
static void test_shared_base(void **state) {
    lt_err err = {0};
    eng_engine *a = eng_from_model(tiny_model(V_QWEN2, 111, 1, 1), "tiny");
    eng_lora_config lc = {.rank = 2, .alpha = 4, .targets = 1u << ENG_T_V, .seed = 5};
    eng_engine *b = eng_share(a, &lc, &err);
    assert_non_null(b);
    assert_ptr_equal(a->m->base, b->m->base);
    assert_ptr_not_equal(a->m->lora_p, b->m->lora_p);
    fixed_batch fb;
    make_batch(&fb, a->m->V);
    float la[16], lb[16], lb2[16];
    logp_of(b->m, &fb, lb); /* b's adapter has B = 0: the base model */
    eng_model *plain = tiny_model(V_QWEN2, 111, 0, 0);
    logp_of(plain, &fb, la);
    assert_memory_equal(la, lb, sizeof(la));
    eng_model_free(plain);
    logp_of(a->m, &fb, la);
    assert_true(memcmp(la, lb, sizeof(la)) != 0); /* a's random adapter is its own */
    eng_close(a);
    logp_of(b->m, &fb, lb2);
    assert_memory_equal(lb, lb2, sizeof(lb));
    eng_close(b);
}

static void check_cfg_error(const char *json, const char *needle) {
    eng_lora_config lc;
    lt_err err = {0};
    assert_int_equal(eng_peft_config_parse(json, strlen(json), "a.json", &lc, &err), -1);
    if (!strstr(err.msg, needle)) fail_msg("'%s' -> '%s' (expected '%s')", json, err.msg, needle);
}

static void test_peft_config_parse(void **state) {
    eng_lora_config lc;
    lt_err err = {0};
    const char *ok = "{\"r\": 8, \"lora_alpha\": 16, \"target_modules\": [\"q_proj\", \"lm_head\"]}";
    assert_int_equal(eng_peft_config_parse(ok, strlen(ok), "a.json", &lc, &err), 0);
    assert_int_equal(lc.rank, 8);
    assert_true(lc.alpha == 16.0f);
    assert_int_equal(lc.targets, (1u << ENG_T_Q) | ENG_LORA_HEAD);
    check_cfg_error("{\"r\": 8", "a.json: not JSON (line 1");
    check_cfg_error("[1]", "must be a JSON object");
    check_cfg_error("{\"lora_alpha\": 8, \"target_modules\": [\"q_proj\"]}",
                    "\"r\" must be an integer in 1..4096");
    check_cfg_error("{\"r\": 5000, \"lora_alpha\": 8, \"target_modules\": [\"q_proj\"]}", "1..4096");
    check_cfg_error("{\"r\": 4, \"lora_alpha\": 0, \"target_modules\": [\"q_proj\"]}",
                    "\"lora_alpha\" must be");
    check_cfg_error("{\"r\": 4, \"lora_alpha\": 8, \"target_modules\": []}", "non-empty list");
    check_cfg_error("{\"r\": 4, \"lora_alpha\": 8, \"target_modules\": \"all-linear\"}", "non-empty list");
    check_cfg_error("{\"r\": 4, \"lora_alpha\": 8, \"use_dora\": true, \"target_modules\": [\"q_proj\"]}",
                    "use_dora");
    check_cfg_error("{\"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"q_proj\", 3]}",
                    "target_modules[1]");
}

int main(void) {
    eng_set_threads(2);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_directional_llama),
        cmocka_unit_test(test_directional_qwen2),
        cmocka_unit_test(test_directional_qwen3),
        cmocka_unit_test(test_directional_llama3),
        cmocka_unit_test(test_directional_tied),
        cmocka_unit_test(test_b_zero_is_base),
        cmocka_unit_test(test_adapter_equals_merged),
        cmocka_unit_test(test_right_padding),
        cmocka_unit_test(test_resume_bit_exact),
        cmocka_unit_test(test_overfit_one_batch),
        cmocka_unit_test(test_engine_errors),
        cmocka_unit_test(test_sample_matches_forward),
        cmocka_unit_test(test_sample_determinism_and_stops),
        cmocka_unit_test(test_tiny_dir_stop_strings_and_peft),
        cmocka_unit_test(test_shared_base),
        cmocka_unit_test(test_peft_config_parse),
    };
    return cmocka_run_group_tests_name("model", tests, NULL, NULL);
}
