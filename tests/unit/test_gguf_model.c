/* Unit tests for engine/gguf_model: small random GGUF files written with the GGUF writer (the way llama.cpp's
 * converter lays them out: llama Q/K rows permuted, qwen not), read back into a config and a model.
 * Covered: the Q/K permutation (against the reshape/swapaxes definition, and its round trip), the HF <-> GGUF
 * name table, each architecture's hyper-parameters and flags, bit-exact weights after the load's
 * un-permutation, Q8_0 weights widened, Llama 3 RoPE recovered from rope_freqs.weight, and one test per
 * refusal (missing / mis-shaped / unexpected tensor, unknown architecture, missing key, unsupported RoPE
 * scaling), each checking the message names the file and the tensor or key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/gguf.h"
#include "engine/gguf_model.h"
#include "engine/model.h"
#include "util/util.h"

/* ---- a random model written as GGUF ---------------------------------------------------------------------
 */

typedef struct spec {
    const char *arch; /* llama | qwen2 | qwen3 | anything (for the refusal test) */
    int L, C, H, KV, hd, F, V;
    int tie, bias, qkn;
    int q8;                  /* 2-D weights stored as Q8_0 */
    const char *drop;        /* GGUF name of a tensor to leave out */
    const char *bad;         /* GGUF name of a 2-D tensor written with one row too many */
    const char *extra;       /* GGUF name of an extra vector [C] */
    const char *no_key;      /* metadata key (without "<arch>.") to leave out */
    const float *rope_freqs; /* hd/2 factors, or NULL */
} spec;

typedef struct built {
    eng_model *src; /* the HF-layout weights the file was written from */
    void *buf;      /* the serialized file */
    size_t len;
    void *keep[512]; /* tensor bytes the writer borrowed */
    int nkeep;
} built;

typedef struct wctx {
    gguf_writer *w;
    const spec *s;
    built *b;
} wctx;

static int add_one(void *vctx, const char *hf, float *data, int rows, int cols) {
    wctx *c = vctx;
    char gg[160];
    assert_non_null(eng_gguf_name_for_hf(hf, gg, sizeof gg));
    if (c->s->drop && !strcmp(gg, c->s->drop)) return 0;
    int extra_row = c->s->bad && !strcmp(gg, c->s->bad);
    size_t n = (size_t)rows * (size_t)(cols ? cols : 1);
    size_t n_out = n + (extra_row ? (size_t)cols : 0);
    float *f = calloc(n_out, sizeof(float));
    memcpy(f, data, n * sizeof(float));
    /* llama.cpp permutes the Q/K rows of llama files (weights and biases) */
    if (!strcmp(c->s->arch, "llama") && (strstr(gg, ".attn_q.") || strstr(gg, ".attn_k.")))
        eng_gguf_permute_qk(f, rows, cols ? cols : 1, strstr(gg, ".attn_q.") ? c->s->H : c->s->KV, 0);
    int64_t ne[2] = {cols ? cols : rows, cols ? rows + extra_row : 1};
    int nd = cols ? 2 : 1;
    lt_err err;
    lt_err_clear(&err);
    if (cols && c->s->q8) {
        size_t rb = gguf_row_bytes(GGUF_Q8_0, cols);
        void *q = malloc(rb * (size_t)ne[1]);
        for (int64_t r = 0; r < ne[1]; r++)
            assert_int_equal(gguf_quantize(GGUF_Q8_0, f + r * cols, (char *)q + r * rb, cols), 0);
        free(f);
        c->b->keep[c->b->nkeep++] = q;
        assert_int_equal(gguf_writer_add_tensor(c->w, gg, GGUF_Q8_0, nd, ne, q, &err), 0);
    } else {
        c->b->keep[c->b->nkeep++] = f;
        assert_int_equal(gguf_writer_add_tensor(c->w, gg, GGUF_F32, nd, ne, f, &err), 0);
    }
    return 0;
}

static void key_u32(gguf_writer *w, const spec *s, const char *key, uint32_t v) {
    if (s->no_key && !strcmp(s->no_key, key)) return;
    char k[128];
    snprintf(k, sizeof k, "%s.%s", s->arch, key);
    gguf_writer_set_u32(w, k, v);
}

static void build(const spec *s, built *b) {
    memset(b, 0, sizeof *b);
    eng_config cfg = {0};
    cfg.arch = !strcmp(s->arch, "qwen3") ? ENG_ARCH_QWEN3 : !strcmp(s->arch, "qwen2") ? ENG_ARCH_QWEN2 : 0;
    cfg.vocab_size = s->V, cfg.hidden_size = s->C, cfg.intermediate_size = s->F, cfg.num_layers = s->L;
    cfg.num_heads = s->H, cfg.num_kv_heads = s->KV, cfg.head_dim = s->hd, cfg.max_position_embeddings = 256;
    cfg.rms_norm_eps = 1e-5f, cfg.rope_theta = 10000.0f, cfg.tie_word_embeddings = s->tie;
    cfg.attention_bias = s->bias, cfg.qk_norm = s->qkn, cfg.bos_token_id = -1, cfg.eos_token_id = -1;
    lt_err err;
    lt_err_clear(&err);
    b->src = eng_model_new(&cfg, eng_kernels_cpu(), &err);
    assert_non_null(b->src);
    eng_model_init_random(b->src, 7, 0.1f);

    gguf_writer *w = gguf_writer_new();
    gguf_writer_set_str(w, "general.architecture", s->arch);
    gguf_writer_set_u32(w, "general.file_type", s->q8 ? 7 : 0);
    key_u32(w, s, "block_count", (uint32_t)s->L);
    key_u32(w, s, "context_length", 256);
    key_u32(w, s, "embedding_length", (uint32_t)s->C);
    key_u32(w, s, "feed_forward_length", (uint32_t)s->F);
    key_u32(w, s, "attention.head_count", (uint32_t)s->H);
    key_u32(w, s, "attention.head_count_kv", (uint32_t)s->KV);
    if (s->hd * s->H != s->C) key_u32(w, s, "attention.key_length", (uint32_t)s->hd);
    char k[128];
    snprintf(k, sizeof k, "%s.rope.freq_base", s->arch);
    gguf_writer_set_f32(w, k, 10000.0f);
    if (!(s->no_key && !strcmp(s->no_key, "attention.layer_norm_rms_epsilon"))) {
        snprintf(k, sizeof k, "%s.attention.layer_norm_rms_epsilon", s->arch);
        gguf_writer_set_f32(w, k, 1e-5f);
    }
    const char **toks = malloc((size_t)s->V * sizeof(char *));
    size_t *lens = malloc((size_t)s->V * sizeof(size_t));
    char(*names)[16] = malloc((size_t)s->V * 16);
    for (int i = 0; i < s->V; i++) {
        snprintf(names[i], 16, "t%d", i);
        toks[i] = names[i], lens[i] = strlen(names[i]);
    }
    gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, lens, (size_t)s->V);
    free(toks), free(lens), free(names);
    gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
    gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2);

    wctx c = {w, s, b};
    assert_int_equal(eng_model_each_weight(b->src, add_one, &c), 0);
    int64_t ne1[1] = {s->C};
    if (s->extra) {
        float *f = calloc((size_t)s->C, sizeof(float));
        b->keep[b->nkeep++] = f;
        assert_int_equal(gguf_writer_add_tensor(w, s->extra, GGUF_F32, 1, ne1, f, &err), 0);
    }
    if (s->rope_freqs) {
        int64_t nh[1] = {s->hd / 2};
        assert_int_equal(gguf_writer_add_tensor(w, "rope_freqs.weight", GGUF_F32, 1, nh, s->rope_freqs, &err),
                         0);
    }
    if (gguf_writer_serialize(w, &b->buf, &b->len, &err)) fprintf(stderr, "%s\n", err.msg);
    assert_non_null(b->buf);
    gguf_writer_free(w);
}

static void built_free(built *b) {
    eng_model_free(b->src);
    for (int i = 0; i < b->nkeep; i++)
        free(b->keep[i]);
    free(b->buf);
}

static gguf_file *open_built(const built *b) {
    lt_err err;
    lt_err_clear(&err);
    gguf_file *f = gguf_open_memory(b->buf, b->len, "t.gguf", &err);
    if (!f) fprintf(stderr, "%s\n", err.msg);
    assert_non_null(f);
    return f;
}

static const spec LLAMA = {"llama", 2, 64, 4, 2, 16, 128, 96, 1, 0, 0, 0, NULL, NULL, NULL, NULL, NULL};
static const spec QWEN2 = {"qwen2", 2, 64, 4, 2, 16, 128, 96, 0, 1, 0, 0, NULL, NULL, NULL, NULL, NULL};
static const spec QWEN3 = {"qwen3", 2, 64, 4, 2, 32, 128, 96, 1, 0, 1, 0, NULL, NULL, NULL, NULL, NULL};

/* ---- permutation and names ----------------------------------------------------------------------------- */

static void test_permute_definition(void **state) {
    (void)state;
    /* 2 heads x hd 6, 3 columns: GGUF row h*hd + 2i + j holds HF row h*hd + j*3 + i */
    enum { H = 2, HD = 6, COLS = 3, ROWS = H * HD };
    float w[ROWS * COLS], orig[ROWS * COLS];
    for (int i = 0; i < ROWS * COLS; i++)
        w[i] = orig[i] = (float)i;
    eng_gguf_permute_qk(w, ROWS, COLS, H, 0);
    for (int h = 0; h < H; h++)
        for (int i = 0; i < HD / 2; i++)
            for (int j = 0; j < 2; j++)
                for (int c = 0; c < COLS; c++)
                    assert_true(w[(h * HD + 2 * i + j) * COLS + c] ==
                                orig[(h * HD + j * (HD / 2) + i) * COLS + c]);
    eng_gguf_permute_qk(w, ROWS, COLS, H, 1);
    assert_memory_equal(w, orig, sizeof w);
    /* a bias (one column) and a larger round trip */
    float *big = malloc(sizeof(float) * 8 * 64 * 5), *copy = malloc(sizeof(float) * 8 * 64 * 5);
    uint64_t s = 3;
    for (int i = 0; i < 8 * 64 * 5; i++)
        big[i] = copy[i] = (float)eng_rng_uniform(&s);
    eng_gguf_permute_qk(big, 8 * 64, 5, 8, 0);
    assert_true(memcmp(big, copy, sizeof(float) * 8 * 64 * 5) != 0);
    eng_gguf_permute_qk(big, 8 * 64, 5, 8, 1);
    assert_memory_equal(big, copy, sizeof(float) * 8 * 64 * 5);
    float bias[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    eng_gguf_permute_qk(bias, 8, 1, 1, 0);
    const float want[8] = {0, 4, 1, 5, 2, 6, 3, 7};
    assert_memory_equal(bias, want, sizeof bias);
    free(big), free(copy);
}

static void test_names(void **state) {
    (void)state;
    static const char *pairs[][2] = {
        {"model.embed_tokens.weight", "token_embd.weight"},
        {"model.norm.weight", "output_norm.weight"},
        {"lm_head.weight", "output.weight"},
        {"model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight"},
        {"model.layers.11.post_attention_layernorm.weight", "blk.11.ffn_norm.weight"},
        {"model.layers.3.self_attn.q_proj.weight", "blk.3.attn_q.weight"},
        {"model.layers.3.self_attn.k_proj.bias", "blk.3.attn_k.bias"},
        {"model.layers.3.self_attn.v_proj.weight", "blk.3.attn_v.weight"},
        {"model.layers.3.self_attn.o_proj.weight", "blk.3.attn_output.weight"},
        {"model.layers.3.self_attn.q_norm.weight", "blk.3.attn_q_norm.weight"},
        {"model.layers.3.self_attn.k_norm.weight", "blk.3.attn_k_norm.weight"},
        {"model.layers.29.mlp.gate_proj.weight", "blk.29.ffn_gate.weight"},
        {"model.layers.29.mlp.up_proj.weight", "blk.29.ffn_up.weight"},
        {"model.layers.29.mlp.down_proj.weight", "blk.29.ffn_down.weight"},
    };
    char buf[160];
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        assert_string_equal(eng_gguf_name_for_hf(pairs[i][0], buf, sizeof buf), pairs[i][1]);
        assert_string_equal(eng_gguf_name_to_hf(pairs[i][1], buf, sizeof buf), pairs[i][0]);
    }
    assert_null(eng_gguf_name_for_hf("model.layers.x.mlp.up_proj.weight", buf, sizeof buf));
    assert_null(eng_gguf_name_to_hf("blk.01.ffn_up.weight", buf, sizeof buf));
    assert_null(eng_gguf_name_to_hf("blk.1.ffn_up", buf, sizeof buf));
    assert_null(eng_gguf_name_to_hf("rope_freqs.weight", buf, sizeof buf));
    assert_null(eng_gguf_name_to_hf("blk.1.ffn_up.weight", buf, 8)); /* does not fit */
}

static void test_path_is_gguf(void **state) {
    (void)state;
    char dir[] = "/tmp/lathe-gguf-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *d = lt_path_join(dir, "m.gguf");
    assert_int_equal(mkdir(d, 0755), 0);
    assert_int_equal(eng_path_is_gguf(d), 0); /* a directory named *.gguf is a model dir */
    assert_int_equal(eng_path_is_gguf("/nonexistent/x.gguf"), 1);
    assert_int_equal(eng_path_is_gguf("x.safetensors"), 0);
    assert_int_equal(eng_path_is_gguf(".gguf"), 1);
    assert_int_equal(eng_path_is_gguf("gguf"), 0);
    rmdir(d);
    rmdir(dir);
    free(d);
}

/* ---- config per architecture --------------------------------------------------------------------------- */

static eng_config config_of(const spec *s) {
    built b;
    build(s, &b);
    gguf_file *f = open_built(&b);
    eng_config c;
    lt_err err;
    lt_err_clear(&err);
    int rc = eng_gguf_config(f, &c, &err);
    if (rc) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(rc, 0);
    gguf_close(f);
    built_free(&b);
    return c;
}

static void test_config_llama(void **state) {
    (void)state;
    eng_config c = config_of(&LLAMA);
    assert_int_equal(c.arch, ENG_ARCH_LLAMA);
    assert_string_equal(c.architecture, "LlamaForCausalLM");
    assert_string_equal(c.family, "llama");
    assert_int_equal(c.num_layers, 2);
    assert_int_equal(c.hidden_size, 64);
    assert_int_equal(c.intermediate_size, 128);
    assert_int_equal(c.num_heads, 4);
    assert_int_equal(c.num_kv_heads, 2);
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.vocab_size, 96); /* from tokenizer.ggml.tokens */
    assert_int_equal(c.max_position_embeddings, 256);
    assert_true(fabsf(c.rms_norm_eps - 1e-5f) < 1e-12f);
    assert_true(c.rope_theta == 10000.0f);
    assert_int_equal(c.rope_type, ENG_ROPE_DEFAULT);
    assert_int_equal(c.tie_word_embeddings, 1);
    assert_int_equal(c.attention_bias, 0);
    assert_int_equal(c.qk_norm, 0);
    assert_int_equal(c.bos_token_id, 1);
    assert_int_equal(c.eos_token_id, 2);
}

static void test_config_qwen(void **state) {
    (void)state;
    eng_config c = config_of(&QWEN2);
    assert_int_equal(c.arch, ENG_ARCH_QWEN2);
    assert_string_equal(c.architecture, "Qwen2ForCausalLM");
    assert_string_equal(c.family, "qwen");
    assert_int_equal(c.tie_word_embeddings, 0);
    assert_int_equal(c.attention_bias, 1);
    assert_int_equal(c.qk_norm, 0);
    c = config_of(&QWEN3);
    assert_int_equal(c.arch, ENG_ARCH_QWEN3);
    assert_string_equal(c.architecture, "Qwen3ForCausalLM");
    assert_int_equal(c.head_dim, 32); /* attention.key_length, heads * head_dim != hidden */
    assert_int_equal(c.qk_norm, 1);
    assert_int_equal(c.attention_bias, 0);
    assert_int_equal(c.tie_word_embeddings, 1);
}

/* ---- weights ------------------------------------------------------------------------------------------- */

typedef struct cmp_ctx {
    eng_model *other;
    double max_err, max_abs;
    int n;
} cmp_ctx;

static int find_data(void *vctx, const char *name, float *data, int rows, int cols) {
    /* ctx: {name wanted, out pointer} */
    void **c = vctx;
    if (!strcmp(name, (const char *)c[0])) {
        c[1] = data;
        return 1;
    }
    return 0;
}

static int cmp_one(void *vctx, const char *name, float *data, int rows, int cols) {
    cmp_ctx *c = vctx;
    void *q[2] = {(void *)name, NULL};
    eng_model_each_weight(c->other, find_data, q);
    assert_non_null(q[1]);
    const float *o = q[1];
    size_t n = (size_t)rows * (size_t)(cols ? cols : 1);
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)data[i] - o[i]);
        if (e > c->max_err) c->max_err = e;
        if (fabs(o[i]) > c->max_abs) c->max_abs = fabs(o[i]);
    }
    c->n++;
    return 0;
}

static void load_and_compare(const spec *s, double tol) {
    built b;
    build(s, &b);
    gguf_file *f = open_built(&b);
    lt_err err;
    lt_err_clear(&err);
    eng_model *m = eng_gguf_model_from(f, eng_kernels_cpu(), &err);
    if (!m) fprintf(stderr, "%s\n", err.msg);
    assert_non_null(m);
    cmp_ctx c = {b.src, 0, 0, 0};
    assert_int_equal(eng_model_each_weight(m, cmp_one, &c), 0);
    if (c.max_err > tol) fprintf(stderr, "%s: max error %g\n", s->arch, c.max_err);
    assert_true(c.max_err <= tol);
    assert_true(c.n > 10);
    assert_non_null(strstr(m->load_note, s->q8 ? "GGUF weights kept as stored: Q8_0" : "GGUF F32"));
    /* the model runs */
    int toks[6] = {1, 5, 9, 3, 7, 2}, tg[6] = {5, 9, 3, 7, 2, -1};
    float lp[6];
    double loss = eng_model_step(m, toks, tg, 1, 6, NULL, NULL, lp, NULL, 0, &err);
    assert_false(isnan(loss));
    float lp_src[6];
    eng_model_step(b.src, toks, tg, 1, 6, NULL, NULL, lp_src, NULL, 0, &err);
    for (int i = 0; i < 5; i++)
        assert_true(fabsf(lp[i] - lp_src[i]) <= (tol == 0 ? 1e-6f : 0.05f));
    eng_model_free(m);
    gguf_close(f);
    built_free(&b);
}

static void test_load_exact(void **state) {
    (void)state;
    load_and_compare(&LLAMA, 0); /* permuted in the file, un-permuted at load: bit-exact */
    load_and_compare(&QWEN2, 0);
    load_and_compare(&QWEN3, 0);
    spec biased = LLAMA;
    biased.bias = 1, biased.tie = 0; /* llama with attention biases: biases are permuted too */
    load_and_compare(&biased, 0);
}

static void test_load_q8(void **state) {
    (void)state;
    spec s = QWEN2;
    s.q8 = 1;
    load_and_compare(&s, 0.004); /* |w| <~ 0.45 (4.5 sigma); Q8_0 rounds to amax/127 per block */
}

static void test_load_from_path(void **state) {
    (void)state;
    built b;
    build(&LLAMA, &b);
    char dir[] = "/tmp/lathe-gguf-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *p = lt_path_join(dir, "tiny.gguf");
    FILE *fp = fopen(p, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(b.buf, 1, b.len, fp), b.len);
    fclose(fp);
    lt_err err;
    lt_err_clear(&err);
    eng_config c;
    assert_int_equal(eng_config_load(p, &c, &err), 0); /* the dispatch in config.c */
    assert_int_equal(c.num_layers, 2);
    eng_model *m = eng_model_load(p, eng_kernels_cpu(), &err); /* and in model.c */
    assert_non_null(m);
    assert_int_equal(m->L, 2);
    eng_model_free(m);
    gguf_file *f = gguf_open(p, &err);
    eng_gguf_summary s;
    eng_gguf_summarize(f, &s);
    assert_int_equal(s.file_type, 0);
    assert_string_equal(s.file_type_name, "F32");
    assert_int_equal(s.count[GGUF_F32], s.n_tensors);
    assert_string_equal(s.types, "F32");
    assert_true(s.f32_bytes == s.file_bytes);
    gguf_close(f);
    unlink(p);
    char *missing = lt_path_join(dir, "missing.gguf");
    assert_int_equal(eng_config_load(missing, &c, &err), -1);
    assert_non_null(strstr(err.msg, "missing.gguf"));
    rmdir(dir);
    free(p), free(missing);
    built_free(&b);
}

/* ---- refusals ------------------------------------------------------------------------------------------ */

static void expect_refusal(const spec *s, const char *needle) {
    built b;
    build(s, &b);
    gguf_file *f = open_built(&b);
    eng_config c;
    lt_err err;
    lt_err_clear(&err);
    int rc = eng_gguf_config(f, &c, &err);
    if (rc == 0 || !strstr(err.msg, needle)) fprintf(stderr, "got '%s', wanted '%s'\n", err.msg, needle);
    assert_int_equal(rc, -1);
    assert_int_equal(err.code, 400);
    assert_non_null(strstr(err.msg, "t.gguf"));
    assert_non_null(strstr(err.msg, needle));
    /* the model load refuses the same way */
    lt_err_clear(&err);
    assert_null(eng_gguf_model_from(f, eng_kernels_cpu(), &err));
    assert_non_null(strstr(err.msg, needle));
    gguf_close(f);
    built_free(&b);
}

static void test_refusals(void **state) {
    (void)state;
    spec s = LLAMA;
    s.drop = "blk.1.ffn_down.weight";
    expect_refusal(&s, "blk.1.ffn_down.weight");
    s = LLAMA;
    s.bad = "blk.0.attn_k.weight";
    expect_refusal(&s, "blk.0.attn_k.weight");
    s = QWEN2;
    s.drop = "blk.1.attn_v.bias"; /* bias on layer 0 only */
    expect_refusal(&s, "blk.1.attn_v.bias");
    s = LLAMA;
    s.extra = "blk.2.attn_norm.weight"; /* one layer more than block_count */
    expect_refusal(&s, "blk.2.attn_norm.weight");
    s = LLAMA;
    s.extra = "blk.0.attn_sinks.weight";
    expect_refusal(&s, "blk.0.attn_sinks.weight");
    s = LLAMA;
    s.arch = "gpt2";
    expect_refusal(&s, "\"gpt2\"");
    expect_refusal(&s, "llama");
    expect_refusal(&s, "qwen2, qwen3");
    s = LLAMA;
    s.no_key = "block_count";
    expect_refusal(&s, "llama.block_count");
    s = LLAMA;
    s.no_key = "attention.layer_norm_rms_epsilon";
    expect_refusal(&s, "llama.attention.layer_norm_rms_epsilon");
    s = QWEN3;
    s.qkn = 0; /* qwen3 without its q/k norms */
    expect_refusal(&s, "attn_q_norm");
}

static void test_rope_scaling(void **state) {
    (void)state;
    /* Llama 3.1's scaling encoded as llama.cpp writes it: factors per frequency */
    enum { HD = 32 }; /* two frequencies fall between the bands: the fit is determined */
    float fac[HD / 2];
    for (int d = 0; d < HD / 2; d++) {
        double inv = pow(10000.0, -2.0 * d / HD), wl = 2 * M_PI / inv;
        double old = 8192, lo = 2, hi = 8, f = 16;
        if (wl < old / hi)
            fac[d] = 1;
        else if (wl > old / lo)
            fac[d] = (float)f;
        else {
            double sm = (old / wl - lo) / (hi - lo);
            fac[d] = (float)(1 / ((1 - sm) / f + sm));
        }
    }
    int n_smooth = 0;
    for (int d = 0; d < HD / 2; d++)
        n_smooth += fac[d] > 1.001f && fac[d] < 15.99f;
    spec s = LLAMA;
    s.hd = 32;
    s.rope_freqs = fac;
    eng_config c = config_of(&s);
    assert_int_equal(c.rope_type, ENG_ROPE_LLAMA3);
    assert_true(fabsf(c.rope_factor - 16) < 1e-5f);
    assert_int_equal(c.rope_original_max_pos, 8192);
    assert_true(n_smooth >= 2);
    assert_true(fabsf(c.rope_low_freq_factor - 2) < 1e-3f);
    assert_true(fabsf(c.rope_high_freq_factor - 8) < 1e-3f);
    /* all ones: plain RoPE */
    float ones[HD / 2];
    for (int d = 0; d < HD / 2; d++)
        ones[d] = 1;
    s.rope_freqs = ones;
    assert_int_equal(config_of(&s).rope_type, ENG_ROPE_DEFAULT);
    /* factors that are not Llama 3's */
    float odd[HD / 2];
    for (int d = 0; d < HD / 2; d++)
        odd[d] = (d % 2) ? 3.0f : 1.5f;
    s.rope_freqs = odd;
    expect_refusal(&s, "rope_freqs.weight");
}

static void test_rope_scaling_keys(void **state) {
    (void)state;
    /* a linear-scaling file: refused, naming the key (metadata only: the refusal comes first) */
    gguf_writer *w = gguf_writer_new();
    gguf_writer_set_str(w, "general.architecture", "llama");
    gguf_writer_set_u32(w, "llama.block_count", 1);
    gguf_writer_set_u32(w, "llama.embedding_length", 32);
    gguf_writer_set_u32(w, "llama.feed_forward_length", 64);
    gguf_writer_set_u32(w, "llama.attention.head_count", 2);
    gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    gguf_writer_set_u32(w, "llama.vocab_size", 32);
    gguf_writer_set_str(w, "llama.rope.scaling.type", "linear");
    gguf_writer_set_f32(w, "llama.rope.scaling.factor", 4.0f);
    void *buf;
    size_t len;
    lt_err err;
    lt_err_clear(&err);
    assert_int_equal(gguf_writer_serialize(w, &buf, &len, &err), 0);
    gguf_writer_free(w);
    gguf_file *f = gguf_open_memory(buf, len, "lin.gguf", &err);
    assert_non_null(f);
    eng_config c;
    assert_int_equal(eng_gguf_config(f, &c, &err), -1);
    assert_non_null(strstr(err.msg, "llama.rope.scaling.type"));
    assert_non_null(strstr(err.msg, "linear"));
    gguf_close(f);
    free(buf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_permute_definition),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_path_is_gguf),
        cmocka_unit_test(test_config_llama),
        cmocka_unit_test(test_config_qwen),
        cmocka_unit_test(test_load_exact),
        cmocka_unit_test(test_load_q8),
        cmocka_unit_test(test_load_from_path),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_rope_scaling),
        cmocka_unit_test(test_rope_scaling_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
