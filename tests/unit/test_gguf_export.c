/* Unit tests for engine/gguf_export (`lathe model convert`) on tiny random models: an HF dir becomes a GGUF
 * with llama.cpp's keys, F32 norms, the chosen matrix type and Q/K rows permuted exactly for the llama
 * architecture (not for qwen); the GGUF converts back into an HF dir whose weights equal the originals
 * (f32 exact, f16 within rounding) and whose config.json and tokenizer files say what the source says; the
 * pre-tokenizer is named from the tokenizer.json; unsupported inputs fail with messages naming the cause. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/gguf.h"
#include "engine/gguf_export.h"
#include "engine/gguf_model.h"
#include "engine/safetensors.h"
#include "engine/tiny.h"
#include "util/strbuf.h"
#include "util/util.h"

static char *tmpdir(void) {
    char t[] = "/tmp/lathe-gx-XXXXXX";
    assert_non_null(mkdtemp(t));
    return lt_strdup(t);
}

static char *tiny(const char *root, const char *name, eng_arch arch) {
    eng_tiny_opts o;
    eng_tiny_defaults(&o);
    o.arch = arch;
    o.layers = 1;
    char *d = lt_path_join(root, name);
    lt_err err;
    assert_int_equal(eng_tiny_write(d, &o, &err), 0);
    return d;
}

static float *tensor_f32(const st_reader *r, const char *name, int64_t *n) {
    const st_tensor *t = st_find(r, name);
    assert_non_null(t);
    lt_err err;
    float *f = st_tensor_to_f32_alloc(t, &err);
    assert_non_null(f);
    *n = t->numel;
    return f;
}

static float *gguf_f32(const gguf_file *g, const char *name, int64_t *n) {
    const gguf_tensor *t = gguf_find_tensor(g, name);
    assert_non_null(t);
    float *f = malloc((size_t)t->numel * sizeof *f);
    lt_err err;
    assert_int_equal(gguf_tensor_to_f32(t, f, (size_t)t->numel, &err), 0);
    *n = t->numel;
    return f;
}

static void test_dir_to_gguf_and_back(void **state) {
    (void)state;
    char *root = tmpdir();
    const eng_arch archs[] = {ENG_ARCH_LLAMA, ENG_ARCH_QWEN3};
    for (int a = 0; a < 2; a++) {
        char *d = tiny(root, a ? "q3" : "ll", archs[a]);
        char *out = lt_path_join(root, "m.gguf");
        lt_err err;
        if (eng_convert_to_gguf(d, NULL, out, GGUF_F32, &err)) fprintf(stderr, "%s\n", err.msg);
        assert_int_equal(eng_convert_to_gguf(d, NULL, out, GGUF_F32, &err), 0);
        gguf_file *g = gguf_open(out, &err);
        assert_non_null(g);
        const char *s;
        size_t n;
        assert_int_equal(gguf_get_str(g, "general.architecture", &s, &n, &err), 0);
        assert_memory_equal(s, a ? "qwen3" : "llama", n);
        char key[64];
        snprintf(key, sizeof key, "%s.attention.head_count_kv", a ? "qwen3" : "llama");
        int64_t v;
        assert_int_equal(gguf_get_int(g, key, &v, &err), 0);
        assert_int_equal(v, 2);
        assert_int_equal(gguf_get_str(g, "tokenizer.ggml.pre", &s, &n, &err), 0);
        assert_memory_equal(s, "qwen2", n);
        assert_non_null(gguf_find_kv(g, "tokenizer.ggml.merges"));
        assert_int_equal(gguf_find_kv(g, "tokenizer.ggml.tokens")->n, 512);
        /* Q rows: llama permuted per head, qwen as is */
        st_reader *r = st_open(d, &err);
        assert_non_null(r);
        int64_t nq, ng;
        float *q = tensor_f32(r, "model.layers.0.self_attn.q_proj.weight", &nq);
        float *gq = gguf_f32(g, "blk.0.attn_q.weight", &ng);
        assert_int_equal(nq, ng);
        int rows = 64, cols = 64, heads = 4, hd = 16;
        if (a == 0) {
            /* forward permutation: HF row h*hd + j*hd/2 + i goes to h*hd + 2i + j */
            for (int h = 0; h < heads; h++)
                for (int j = 0; j < 2; j++)
                    for (int i = 0; i < hd / 2; i++)
                        assert_memory_equal(gq + (size_t)(h * hd + 2 * i + j) * cols,
                                            q + (size_t)(h * hd + j * hd / 2 + i) * cols,
                                            cols * sizeof(float));
        } else {
            assert_memory_equal(gq, q, (size_t)rows * cols * sizeof(float));
        }
        assert_int_equal(gguf_find_tensor(g, "blk.0.attn_norm.weight")->type, GGUF_F32);
        /* back to HF: the same weights */
        char *back = lt_path_join(root, "back");
        assert_int_equal(eng_convert_gguf_to_hf(out, back, ST_F32, &err), 0);
        st_reader *r2 = st_open(back, &err);
        assert_non_null(r2);
        assert_int_equal(st_count(r2), st_count(r));
        for (size_t i = 0; i < st_count(r); i++) {
            int64_t n1, n2;
            float *x = tensor_f32(r, st_at(r, i)->name, &n1), *y = tensor_f32(r2, st_at(r, i)->name, &n2);
            assert_int_equal(n1, n2);
            assert_memory_equal(x, y, (size_t)n1 * sizeof(float));
            free(x);
            free(y);
        }
        eng_config c1, c2;
        assert_int_equal(eng_config_load(d, &c1, &err), 0);
        assert_int_equal(eng_config_load(back, &c2, &err), 0);
        assert_int_equal(c1.arch, c2.arch);
        assert_int_equal(c1.num_kv_heads, c2.num_kv_heads);
        assert_int_equal(c1.qk_norm, c2.qk_norm);
        assert_true(c1.rope_theta == c2.rope_theta && c1.rms_norm_eps == c2.rms_norm_eps);
        char *tc = lt_path_join(back, "tokenizer_config.json");
        json_t *j = json_load_file(tc, 0, NULL);
        assert_non_null(j);
        assert_non_null(json_string_value(json_object_get(j, "chat_template")));
        assert_string_equal(json_string_value(json_object_get(j, "eos_token")), "<|endoftext|>");
        json_decref(j);
        free(tc);
        st_close(r2);
        st_close(r);
        free(q);
        free(gq);
        gguf_close(g);
        free(back);
        free(out);
        free(d);
    }
    lt_rm_rf(root);
    free(root);
}

static void test_dtypes(void **state) {
    (void)state;
    char *root = tmpdir();
    char *d = tiny(root, "m", ENG_ARCH_LLAMA);
    char *f32p = lt_path_join(root, "a.gguf"), *q8p = lt_path_join(root, "b.gguf");
    lt_err err;
    assert_int_equal(eng_convert_to_gguf(d, NULL, f32p, GGUF_F32, &err), 0);
    assert_int_equal(eng_convert_to_gguf(d, NULL, q8p, GGUF_Q8_0, &err), 0);
    gguf_file *a = gguf_open(f32p, &err), *b = gguf_open(q8p, &err);
    assert_non_null(a);
    assert_non_null(b);
    int64_t v;
    assert_int_equal(gguf_get_int(b, "general.file_type", &v, &err), 0);
    assert_int_equal(v, 7);
    const gguf_tensor *t = gguf_find_tensor(b, "blk.0.ffn_down.weight");
    assert_int_equal(t->type, GGUF_Q8_0);
    assert_int_equal(gguf_find_tensor(b, "output_norm.weight")->type, GGUF_F32);
    /* the q8_0 bytes are gguf_quantize of the f32 values */
    int64_t n;
    float *x = gguf_f32(a, "blk.0.ffn_down.weight", &n);
    uint8_t *q = malloc(gguf_row_bytes(GGUF_Q8_0, n));
    assert_int_equal(gguf_quantize(GGUF_Q8_0, x, q, n), 0);
    assert_memory_equal(q, t->data, t->nbytes);
    free(q);
    free(x);
    gguf_close(a);
    gguf_close(b);
    assert_int_equal(eng_convert_to_gguf(d, NULL, f32p, GGUF_Q4_K, &err), -1);
    assert_non_null(strstr(err.msg, "Q4_K is not supported"));
    /* a tokenizer.json without byte-level BPE pre-tokenization llama.cpp names */
    char *tj = lt_path_join(d, "tokenizer.json");
    json_t *j = json_load_file(tj, 0, NULL);
    json_object_set_new(j, "pre_tokenizer", json_pack("{s:s}", "type", "Metaspace"));
    json_dump_file(j, tj, 0);
    json_decref(j);
    assert_int_equal(eng_convert_to_gguf(d, NULL, f32p, GGUF_F16, &err), -1);
    assert_non_null(strstr(err.msg, "pre_tokenizer Metaspace is not one llama.cpp names"));
    /* missing source, adapter dir that is not one */
    char *nope = lt_path_join(root, "nope");
    assert_int_equal(eng_convert_to_gguf(nope, NULL, f32p, GGUF_F16, &err), -1);
    assert_int_equal(eng_convert_gguf_to_hf(q8p, nope, ST_F16, &err), 0); /* a fresh dir is created */
    st_reader *h = st_open(nope, &err);
    assert_non_null(h);
    const st_tensor *ht = st_find(h, "model.layers.0.mlp.down_proj.weight");
    assert_non_null(ht);
    assert_int_equal(ht->dtype, ST_F16);
    eng_config hc;
    assert_int_equal(eng_config_load(nope, &hc, &err), 0);
    assert_string_equal(hc.torch_dtype, "float16");
    st_close(h);
    char *nope2 = lt_path_join(root, "nope2.gguf");
    assert_int_equal(eng_convert_gguf_to_hf(nope2, root, ST_F32, &err), -1);
    assert_int_equal(err.code, 404);
    free(nope2);
    free(nope);
    free(tj);
    free(f32p);
    free(q8p);
    free(d);
    lt_rm_rf(root);
    free(root);
}

static void test_hf_config_json(void **state) {
    (void)state;
    eng_config c;
    memset(&c, 0, sizeof c);
    c.arch = ENG_ARCH_QWEN2;
    c.vocab_size = 100;
    c.hidden_size = 8;
    c.num_heads = 2;
    c.num_kv_heads = 1;
    c.head_dim = 4;
    c.num_layers = 1;
    c.intermediate_size = 16;
    c.max_position_embeddings = 64;
    c.rms_norm_eps = 1e-6f;
    c.rope_theta = 1000000.0f;
    c.attention_bias = 1;
    c.bos_token_id = -1;
    c.eos_token_id = 3;
    strbuf sb = STRBUF_INIT;
    eng_hf_config_json(&c, "bfloat16", &sb);
    json_t *j = json_loads(sb.buf, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_array_get(json_object_get(j, "architectures"), 0)),
                        "Qwen2ForCausalLM");
    assert_true(json_real_value(json_object_get(j, "rms_norm_eps")) == 1e-6);
    assert_true(json_real_value(json_object_get(j, "rope_theta")) == 1e6);
    assert_null(json_object_get(j, "bos_token_id"));
    assert_int_equal(json_integer_value(json_object_get(j, "eos_token_id")), 3);
    eng_config back;
    lt_err err;
    assert_int_equal(eng_config_parse(sb.buf, sb.len, "config.json", &back, &err), 0);
    assert_int_equal(back.arch, ENG_ARCH_QWEN2);
    assert_int_equal(back.attention_bias, 1);
    json_decref(j);
    sb_free(&sb);
    assert_string_equal(eng_gguf_arch_name(ENG_ARCH_MISTRAL), "llama");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dir_to_gguf_and_back),
        cmocka_unit_test(test_dtypes),
        cmocka_unit_test(test_hf_config_json),
    };
    return cmocka_run_group_tests_name("gguf_export", tests, NULL, NULL);
}
