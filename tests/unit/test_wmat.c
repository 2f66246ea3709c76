/* Unit tests for the stored-weight kernels (engine/wmat.c) and models whose matrices stay as stored.
 *
 * Reference: the whole matrix dequantized with gguf_dequantize (ggml-exact), then the product in double.
 * Tolerance: |y - ref| <= 1e-5 * sum_k |a_k w_k| + 1e-7 per output element, i.e. float rounding of a
 * different summation order (float's unit roundoff is 6e-8; a K-term sum in any order stays within
 * about K * 6e-8 of sum |a w| in the worst case and far less in practice; K <= 512 here). Every storage
 * type is covered at odd shapes: rows not a multiple of the tile (37, 300), N = 1, 3, 5, 17 (GEMV passes of
 * four rows, and the tiled GEMM above ENG_WMAT_GEMV_MAX), with and without accumulation. The quantized
 * types without a reference quantizer (Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) get random block bytes with
 * sane f16 scales: the kernels must agree with the dequantizer on any bit pattern. Under compute bf16 (the
 * tiled GEMM through gemm_bf16.h, N = 17) the tolerance is 8e-3 * sum |a w|: both factors are rounded to
 * bf16 (relative error up to 2^-9 each) before the f32 products.
 *
 * Models: a random model made in BF16 / F16 / Q8_0 storage gives the same log-probs, loss and LoRA
 * gradients as the same weights widened into an f32 model (within 1e-4 relative), prefill and decode
 * agree, and each_weight passes the values the kernels use. */
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

#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/sample.h"
#include "engine/tiny.h"
#include "engine/wmat.h"

static uint64_t rng = 42;
static double urand(void) {
    return eng_rng_uniform(&rng);
}

static void put_f16(uint8_t *p, float v) {
    uint16_t h = st_f32_to_f16(v);
    p[0] = (uint8_t)h, p[1] = (uint8_t)(h >> 8);
}

/* A random [rows, cols] matrix of `type`; *out_f32 gets its exact dequantization. */
static void *make_matrix(int type, int rows, int cols, float **out_f32) {
    size_t rb = gguf_row_bytes(type, cols);
    uint8_t *d = malloc(rb * rows);
    float *f = malloc(sizeof(float) * (size_t)rows * cols);
    assert_non_null(d);
    assert_non_null(f);
    if (type == GGUF_F32 || type == GGUF_F16 || type == GGUF_BF16 || type == GGUF_Q8_0) {
        float *src = malloc(sizeof(float) * (size_t)rows * cols);
        for (size_t i = 0; i < (size_t)rows * cols; i++)
            src[i] = (float)(urand() * 2 - 1);
        for (int r = 0; r < rows; r++)
            assert_int_equal(gguf_quantize(type, src + (size_t)r * cols, d + r * rb, cols), 0);
        free(src);
    } else {
        for (size_t i = 0; i < rb * rows; i++)
            d[i] = (uint8_t)(eng_rng_next(&rng) >> 24);
        size_t bb = gguf_block_bytes(type);
        for (size_t b = 0; b < rb * rows / bb; b++) {
            uint8_t *p = d + b * bb;
            float s = (float)(0.01 + 0.05 * urand());
            switch (type) {
            case GGUF_Q4_0:
            case GGUF_Q5_0:
                put_f16(p, s);
                break;
            case GGUF_Q4_1:
            case GGUF_Q5_1:
            case GGUF_Q4_K:
            case GGUF_Q5_K:
                put_f16(p, s);
                put_f16(p + 2, (float)(0.02 * urand() - 0.01));
                break;
            case GGUF_Q6_K:
                put_f16(p + 208, s * 0.1f);
                break;
            }
        }
    }
    for (int r = 0; r < rows; r++)
        assert_int_equal(gguf_dequantize(type, d + r * rb, f + (size_t)r * cols, cols), 0);
    *out_f32 = f;
    return d;
}

static const int TYPES[] = {GGUF_F32,  GGUF_BF16, GGUF_F16,  GGUF_Q8_0, GGUF_Q4_0, GGUF_Q4_1,
                            GGUF_Q5_0, GGUF_Q5_1, GGUF_Q4_K, GGUF_Q5_K, GGUF_Q6_K};
#define NTYPES ((int)(sizeof TYPES / sizeof TYPES[0]))

/* Checks y against ref (double) with the tolerance of the top comment; abs_sum holds sum |a w|. */
static double rel_tol = 1e-5;

static void check_close(const float *y, const double *ref, const double *abs_sum, size_t n, const char *what,
                        int type) {
    for (size_t i = 0; i < n; i++) {
        double tol = rel_tol * abs_sum[i] + 1e-7;
        if (fabs((double)y[i] - ref[i]) > tol) {
            fprintf(stderr, "%s %s: element %zu: %.9g vs %.9g (tol %.3g)\n", what, gguf_type_name(type), i,
                    (double)y[i], ref[i], tol);
            fail();
        }
    }
}

static void run_shape(int type, int rows, int cols, int N) {
    float *Wf;
    void *Wd = make_matrix(type, rows, cols, &Wf);
    eng_wmat w;
    assert_int_equal(eng_wmat_init(&w, type, rows, cols, Wd), 0);
    assert_int_equal(eng_wmat_bytes(&w), gguf_row_bytes(type, cols) * rows);
    /* rows and gather are the dequantizer's values exactly */
    float *rowsf = malloc(sizeof(float) * (size_t)rows * cols);
    eng_wmat_rows_f32(&w, 0, rows, rowsf);
    assert_memory_equal(rowsf, Wf, sizeof(float) * (size_t)rows * cols);
    int idx[3] = {rows - 1, 0, rows / 2};
    eng_wmat_gather_f32(&w, idx, 3, rowsf);
    for (int i = 0; i < 3; i++)
        assert_memory_equal(rowsf + (size_t)i * cols, Wf + (size_t)idx[i] * cols, sizeof(float) * cols);
    free(rowsf);

    float *A = malloc(sizeof(float) * (size_t)N * (cols > rows ? cols : rows));
    for (int i = 0; i < N * (cols > rows ? cols : rows); i++)
        A[i] = (float)(urand() * 2 - 1);
    /* nt: C[N, rows] = A[N, cols] W^T, then accumulate onto it */
    float *C = malloc(sizeof(float) * (size_t)N * rows);
    double *ref = malloc(sizeof(double) * (size_t)N * (rows > cols ? rows : cols)),
           *as = malloc(sizeof(double) * (size_t)N * (rows > cols ? rows : cols));
    for (int n = 0; n < N; n++)
        for (int r = 0; r < rows; r++) {
            double s = 0, a = 0;
            for (int c = 0; c < cols; c++) {
                s += (double)A[(size_t)n * cols + c] * Wf[(size_t)r * cols + c];
                a += fabs((double)A[(size_t)n * cols + c] * Wf[(size_t)r * cols + c]);
            }
            ref[(size_t)n * rows + r] = s, as[(size_t)n * rows + r] = a;
        }
    if (N > ENG_WMAT_GEMV_MAX) {
        /* compute bf16: A and the tile rounded to bf16 (relative 2^-9 each), f32 sums: 8e-3 of sum |a w| */
        rel_tol = 8e-3;
        eng_wmat_nt(&w, N, A, cols, C, rows, 0, ENG_COMPUTE_BF16);
        check_close(C, ref, as, (size_t)N * rows, "nt bf16", type);
        rel_tol = 1e-5;
    }
    eng_wmat_nt(&w, N, A, cols, C, rows, 0, ENG_COMPUTE_F32);
    check_close(C, ref, as, (size_t)N * rows, "nt", type);
    for (size_t i = 0; i < (size_t)N * rows; i++)
        ref[i] *= 2, as[i] *= 2;
    eng_wmat_nt(&w, N, A, cols, C, rows, 1, ENG_COMPUTE_F32);
    check_close(C, ref, as, (size_t)N * rows, "nt accumulate", type);
    free(C);
    /* nn: D[N, cols] = 0.5 + A[N, rows] W (accumulate onto 0.5), and overwrite */
    float *D = malloc(sizeof(float) * (size_t)N * cols);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < cols; c++) {
            double s = 0, a = 0;
            for (int r = 0; r < rows; r++) {
                s += (double)A[(size_t)n * rows + r] * Wf[(size_t)r * cols + c];
                a += fabs((double)A[(size_t)n * rows + r] * Wf[(size_t)r * cols + c]);
            }
            ref[(size_t)n * cols + c] = s, as[(size_t)n * cols + c] = a;
        }
    if (N > ENG_WMAT_GEMV_MAX) {
        rel_tol = 8e-3;
        eng_wmat_nn(&w, N, A, rows, D, cols, 0, ENG_COMPUTE_BF16);
        check_close(D, ref, as, (size_t)N * cols, "nn bf16", type);
        rel_tol = 1e-5;
    }
    eng_wmat_nn(&w, N, A, rows, D, cols, 0, ENG_COMPUTE_F32);
    check_close(D, ref, as, (size_t)N * cols, "nn", type);
    for (size_t i = 0; i < (size_t)N * cols; i++)
        D[i] = 0.5f, ref[i] += 0.5;
    eng_wmat_linear_backward(D, A, &w, N, ENG_COMPUTE_F32);
    check_close(D, ref, as, (size_t)N * cols, "nn accumulate", type);
    free(D), free(A), free(ref), free(as), free(Wf), free(Wd);
}

static void test_kernels_every_type(void **state) {
    (void)state;
    const int Ns[] = {1, 3, 5, 17};
    for (int t = 0; t < NTYPES; t++) {
        int type = TYPES[t], be = gguf_block_elems(type);
        int cols = be == 256 ? 512 : 96;
        for (size_t i = 0; i < sizeof Ns / sizeof Ns[0]; i++) {
            run_shape(type, 37, cols, Ns[i]);
            run_shape(type, 300, be == 256 ? 256 : 64, Ns[i]);
        }
        if (be == 1) { /* element types: any row length */
            run_shape(type, 19, 17, 1);
            run_shape(type, 19, 17, 17);
            run_shape(type, 5, 45, 3);
        }
    }
}

static void test_init_refusals(void **state) {
    (void)state;
    eng_wmat w;
    assert_int_equal(eng_wmat_init(&w, GGUF_Q4_1, 4, 48, NULL), -1); /* 48 is not a multiple of 32 */
    assert_int_equal(eng_wmat_init(&w, 99, 4, 64, NULL), -1);
    assert_int_equal(eng_wmat_init(&w, GGUF_Q4_K, 4, 256, NULL), 0);
    assert_int_equal(w.row_bytes, gguf_block_bytes(GGUF_Q4_K));
}

/* ---- models ---- */

static eng_config tiny_cfg(int tied, int bias) {
    eng_config c;
    memset(&c, 0, sizeof c);
    c.arch = ENG_ARCH_LLAMA;
    c.hidden_size = 64;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 16;
    c.intermediate_size = 96;
    c.vocab_size = 67;
    c.num_layers = 2;
    c.rms_norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.max_position_embeddings = 128;
    c.bos_token_id = c.eos_token_id = -1;
    c.tie_word_embeddings = tied;
    c.attention_bias = bias;
    return c;
}

typedef struct {
    eng_model *dst;
} widen_ctx;

static int find_vec(void *vctx, const char *name, float *data, int rows, int cols) {
    void **q = vctx;
    if (!strcmp(name, q[0])) {
        q[1] = data;
        return 1;
    }
    return 0;
}

static int copy_into(void *vctx, const char *name, float *data, int rows, int cols) {
    widen_ctx *c = vctx;
    eng_wmat *W = eng_model_wmat_of(c->dst, name);
    size_t n = (size_t)rows * (cols ? cols : 1);
    float *dst = NULL;
    if (W && cols) {
        assert_int_equal(W->type, GGUF_F32);
        dst = (float *)W->data;
    } else {
        /* vectors: find by walking the destination */
        void *q[2] = {(void *)name, NULL};
        eng_model_each_weight(c->dst, find_vec, q);
        dst = q[1];
    }
    assert_non_null(dst);
    memcpy(dst, data, n * sizeof(float));
    return 0;
}

static float ce_loss(float lp, int row, void *ctx, float *dlp) {
    (void)row, (void)ctx;
    *dlp = -1.0f;
    return -lp;
}

static void compare_models(int wtype, int tied, int bias) {
    eng_config cfg = tiny_cfg(tied, bias);
    lt_err err;
    lt_err_clear(&err);
    eng_model *q = eng_model_new_stored(&cfg, eng_kernels_cpu(), wtype, &err);
    assert_non_null(q);
    eng_model_init_random(q, 11, 0.2f);
    assert_int_equal(q->layers[0].Wq.type, wtype);
    assert_true(eng_model_base_bytes(q) < eng_model_base_bytes(q) + 1);
    eng_model *f = eng_model_new(&cfg, eng_kernels_cpu(), &err);
    widen_ctx wc = {f};
    assert_int_equal(eng_model_each_weight(q, copy_into, &wc), 0);
    /* the f32 model holds exactly what the stored one dequantizes to; now both with the same LoRA */
    eng_lora_config lc = {4, 8.0f, ENG_LORA_ALL | (tied ? 0 : ENG_LORA_HEAD), 5};
    assert_int_equal(eng_model_lora_init(q, &lc, &err), 0);
    assert_int_equal(eng_model_lora_init(f, &lc, &err), 0);
    for (size_t i = 0; i < q->n_lora; i++) /* non-zero B */
        q->lora_p[i] = f->lora_p[i] = f->lora_p[i] + (float)(0.01 * (urand() - 0.5));
    enum { B = 2, T = 9 };
    int tok[B * T], tg[B * T];
    for (int i = 0; i < B * T; i++)
        tok[i] = (int)(urand() * cfg.vocab_size),
        tg[i] = i % T == T - 1 ? -1 : (int)(urand() * cfg.vocab_size);
    float lpq[B * T], lpf[B * T];
    double Lq = eng_model_step(q, tok, tg, B, T, ce_loss, NULL, lpq, NULL, 1, &err);
    double Lf = eng_model_step(f, tok, tg, B, T, ce_loss, NULL, lpf, NULL, 1, &err);
    assert_false(isnan(Lq));
    assert_true(fabs(Lq - Lf) <= 1e-4 * fabs(Lf));
    for (int i = 0; i < B * T; i++)
        assert_true(fabsf(lpq[i] - lpf[i]) <= 1e-4f * (fabsf(lpf[i]) + 1e-2f));
    double num = 0, den = 0;
    for (size_t i = 0; i < q->n_lora; i++) {
        double d = (double)q->lora_g[i] - f->lora_g[i];
        num += d * d, den += (double)f->lora_g[i] * f->lora_g[i];
    }
    assert_true(den > 0);
    assert_true(sqrt(num / den) <= 1e-4);
    /* decode (GEMV path) == f32 decode: greedy tokens and their log-probs */
    eng_sample_params sp;
    eng_sample_params_default(&sp);
    sp.temperature = 0;
    sp.max_tokens = 6;
    sp.num_samples = 2;
    eng_sample_result rq, rf;
    assert_int_equal(eng_sample(q, tok, 5, &sp, NULL, &rq, &err), 0);
    assert_int_equal(eng_sample(f, tok, 5, &sp, NULL, &rf, &err), 0);
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < rf.seqs[s].n; i++) {
            assert_int_equal(rq.seqs[s].tokens[i], rf.seqs[s].tokens[i]);
            assert_true(fabsf(rq.seqs[s].logprobs[i] - rf.seqs[s].logprobs[i]) <=
                        1e-4f * (fabsf(rf.seqs[s].logprobs[i]) + 1e-2f));
        }
    eng_sample_result_free(&rq), eng_sample_result_free(&rf);
    /* resident bytes: the stored matrices plus the f32 vectors */
    char res[160];
    eng_model_resident(q, res, sizeof res);
    assert_non_null(strstr(res, gguf_type_name(wtype)));
    assert_true(eng_model_base_bytes(q) < eng_model_base_bytes(f));
    /* a shared model reads the same storage */
    eng_model *sh = eng_model_share(q, &err);
    assert_ptr_equal(sh->layers[1].Wd.data, q->layers[1].Wd.data);
    eng_model_free(q);
    eng_model *shf = eng_model_share(f, &err); /* neither share has the adapter */
    float lps[B * T], lpsf[B * T];
    eng_model_step(sh, tok, tg, B, T, NULL, NULL, lps, NULL, 0, &err);
    eng_model_step(shf, tok, tg, B, T, NULL, NULL, lpsf, NULL, 0, &err);
    for (int i = 0; i < B * T; i++)
        assert_true(fabsf(lps[i] - lpsf[i]) <= 1e-4f * (fabsf(lpsf[i]) + 1e-2f));
    eng_model_free(shf);
    eng_model_free(sh);
    eng_model_free(f);
}

static void test_model_stored_equals_widened(void **state) {
    (void)state;
    compare_models(GGUF_BF16, 1, 0);
    compare_models(GGUF_F16, 0, 1);
    compare_models(GGUF_Q8_0, 0, 0);
    compare_models(GGUF_Q8_0, 1, 1);
}

static void test_new_stored_refusals(void **state) {
    (void)state;
    eng_config cfg = tiny_cfg(1, 0);
    lt_err err;
    lt_err_clear(&err);
    assert_null(eng_model_new_stored(&cfg, eng_kernels_cpu(), GGUF_Q4_K, &err));
    assert_int_equal(err.code, 400);
    cfg.hidden_size = 48; /* not a multiple of Q8_0's 32 */
    cfg.head_dim = 12;
    assert_null(eng_model_new_stored(&cfg, eng_kernels_cpu(), GGUF_Q8_0, &err));
    assert_int_equal(err.code, 400);
}

/* The real SmolLM2-135M-Instruct Q4_1 GGUF (Q4_1 linears, Q8_0 tied embedding): kept as stored it gives
 * the log-probs and greedy continuation of the same file widened to f32. Skipped when the file is absent. */
static void test_smollm2_stored_equals_widened(void **state) {
    (void)state;
    char path[1024];
    const char *env = getenv("LATHE_SMOLLM2"), *home = getenv("HOME");
    if (env)
        snprintf(path, sizeof path, "%s", env);
    else
        snprintf(path, sizeof path, "%s/.cache/lathe/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                 home ? home : "");
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        fprintf(stderr, "skipped: %s is missing (scripts/smollm2-path fetches it)\n", path);
        skip();
    }
    fclose(fp);
    lt_err err;
    lt_err_clear(&err);
    eng_model *q = eng_model_load(path, eng_kernels_cpu(), &err);
    assert_non_null(q);
    assert_true(q->wtype < 0);
    assert_int_equal(q->layers[0].Wq.type, GGUF_Q4_1);
    assert_int_equal(q->Wte.type, GGUF_Q8_0);
    assert_non_null(strstr(q->load_note, "kept as stored"));
    assert_true(eng_model_base_bytes(q) < 110 * 1000 * 1000);
    eng_model *f = eng_model_load_f32(path, eng_kernels_cpu(), &err);
    assert_non_null(f);
    enum { T = 24 };
    int tok[T], tg[T];
    uint64_t s = 3;
    for (int i = 0; i < T; i++)
        tok[i] = (int)(eng_rng_next(&s) % 49152);
    for (int i = 0; i < T; i++)
        tg[i] = i + 1 < T ? tok[i + 1] : -1;
    float lq[T], lf[T], eq[T], ef[T];
    assert_false(isnan(eng_model_step(q, tok, tg, 1, T, NULL, NULL, lq, eq, 0, &err)));
    assert_false(isnan(eng_model_step(f, tok, tg, 1, T, NULL, NULL, lf, ef, 0, &err)));
    double worst = 0;
    for (int i = 0; i < T - 1; i++) {
        double r = fabs((double)lq[i] - lf[i]) / (fabs((double)lf[i]) > 1 ? fabs((double)lf[i]) : 1);
        double re = fabs((double)eq[i] - ef[i]) / (fabs((double)ef[i]) > 1 ? fabs((double)ef[i]) : 1);
        worst = r > worst ? r : worst;
        worst = re > worst ? re : worst;
    }
    fprintf(stderr, "SmolLM2 stored vs widened: worst relative log-prob/entropy difference %.3g\n", worst);
    assert_true(worst <= 1e-4);
    eng_sample_params sp;
    eng_sample_params_default(&sp);
    sp.temperature = 0, sp.max_tokens = 8;
    eng_sample_result rq, rf;
    assert_int_equal(eng_sample(q, tok, 8, &sp, NULL, &rq, &err), 0);
    assert_int_equal(eng_sample(f, tok, 8, &sp, NULL, &rf, &err), 0);
    assert_int_equal(rq.seqs[0].n, rf.seqs[0].n);
    for (int i = 0; i < rf.seqs[0].n; i++)
        assert_int_equal(rq.seqs[0].tokens[i], rf.seqs[0].tokens[i]);
    eng_sample_result_free(&rq), eng_sample_result_free(&rf);
    eng_model_free(q);
    eng_model_free(f);
}

/* A BF16 / F16 safetensors checkpoint (init-tiny) keeps its matrices in the mapping, as stored, and gives
 * what the same dir widened to f32 gives; an F32 checkpoint still loads into the f32 base. */
static void test_safetensors_stored(void **state) {
    (void)state;
    const st_dtype dts[3] = {ST_BF16, ST_F16, ST_F32};
    for (int i = 0; i < 3; i++) {
        char dir[] = "/tmp/lathe-wmat-XXXXXX";
        assert_non_null(mkdtemp(dir));
        eng_tiny_opts o;
        eng_tiny_defaults(&o);
        o.dtype = dts[i], o.init_std = 0.1, o.tie = i == 1;
        lt_err err;
        lt_err_clear(&err);
        assert_int_equal(eng_tiny_write(dir, &o, &err), 0);
        eng_model *q = eng_model_load(dir, eng_kernels_cpu(), &err);
        eng_model *f = eng_model_load_f32(dir, eng_kernels_cpu(), &err);
        assert_non_null(q);
        assert_non_null(f);
        int want = dts[i] == ST_BF16 ? GGUF_BF16 : dts[i] == ST_F16 ? GGUF_F16 : GGUF_F32;
        assert_int_equal(q->layers[1].Wu.type, want);
        assert_int_equal(q->Whead.type, want);
        assert_true(want == GGUF_F32 ? q->wtype == GGUF_F32 : q->wfile_kind == 2);
        if (want != GGUF_F32) assert_true(eng_model_base_bytes(q) < eng_model_base_bytes(f) / 2 + 4096);
        assert_non_null(strstr(q->load_note, want == GGUF_F32 ? "all f32" : gguf_type_name(want)));
        enum { T = 12 };
        int tok[T], tg[T];
        for (int t = 0; t < T; t++)
            tok[t] = 3 + (t * 37) % 250, tg[t] = t + 1 < T ? 3 + ((t + 1) * 37) % 250 : -1;
        float lq[T], lf[T];
        eng_model_step(q, tok, tg, 1, T, NULL, NULL, lq, NULL, 0, &err);
        eng_model_step(f, tok, tg, 1, T, NULL, NULL, lf, NULL, 0, &err);
        for (int t = 0; t < T - 1; t++)
            assert_true(fabsf(lq[t] - lf[t]) <= 1e-4f * (fabsf(lf[t]) > 1 ? fabsf(lf[t]) : 1));
        eng_model_free(q);
        eng_model_free(f);
        char cmd[256];
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        assert_int_equal(system(cmd), 0);
    }
}

/* eng_model_save_safetensors writes the stored bf16 bytes themselves, and the file loads back as stored. */
static void test_save_stored(void **state) {
    (void)state;
    eng_config cfg = tiny_cfg(0, 1);
    lt_err err;
    lt_err_clear(&err);
    eng_model *q = eng_model_new_stored(&cfg, eng_kernels_cpu(), GGUF_BF16, &err);
    assert_non_null(q);
    eng_model_init_random(q, 3, 0.2f);
    char path[] = "/tmp/lathe-wmat-save-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(eng_model_save_safetensors(q, path, &err), 0);
    st_reader *r = st_open(path, &err);
    assert_non_null(r);
    const st_tensor *t = st_find(r, "model.layers.1.mlp.down_proj.weight");
    assert_non_null(t);
    assert_int_equal(t->dtype, ST_BF16);
    assert_memory_equal(t->data, q->layers[1].Wd.data, eng_wmat_bytes(&q->layers[1].Wd));
    t = st_find(r, "model.layers.0.self_attn.q_proj.bias");
    assert_non_null(t);
    assert_int_equal(t->dtype, ST_F32);
    assert_non_null(st_find(r, "lm_head.weight"));
    st_close(r);
    eng_model *qq = eng_model_new_stored(&cfg, eng_kernels_cpu(), GGUF_Q8_0, &err);
    assert_int_equal(eng_model_save_safetensors(qq, path, &err), -1);
    assert_int_equal(err.code, 400);
    eng_model_free(qq);
    eng_model_free(q);
    unlink(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_refusals),
        cmocka_unit_test(test_kernels_every_type),
        cmocka_unit_test(test_model_stored_equals_widened),
        cmocka_unit_test(test_new_stored_refusals),
        cmocka_unit_test(test_safetensors_stored),
        cmocka_unit_test(test_save_stored),
        cmocka_unit_test(test_smollm2_stored_equals_widened),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
