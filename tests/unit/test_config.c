/* Unit tests for engine/config: each architecture's config.json (defaults and flags), both RoPE forms, token
 * ids, parameter counts of published models, and one test per validation error, checking the message names
 * the file and the key. */
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

#include "engine/config.h"
#include "util/util.h"

#define BASE "\"vocab_size\":1000,\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,"

static eng_config parse_ok(const char *json) {
    eng_config c;
    lt_err err;
    lt_err_clear(&err);
    int rc = eng_config_parse(json, strlen(json), "m/config.json", &c, &err);
    if (rc) fprintf(stderr, "unexpected error: %s\n", err.msg);
    assert_int_equal(rc, 0);
    return c;
}

static void expect_err(const char *json, const char *key) {
    eng_config c;
    lt_err err;
    lt_err_clear(&err);
    int rc = eng_config_parse(json, strlen(json), "m/config.json", &c, &err);
    if (rc == 0 || !strstr(err.msg, key))
        fprintf(stderr, "%s\n  -> '%s' (wanted '%s')\n", json, err.msg, key);
    assert_int_equal(rc, -1);
    assert_int_equal(err.code, 400);
    assert_non_null(strstr(err.msg, "m/config.json"));
    assert_non_null(strstr(err.msg, key));
}

static void test_llama_defaults(void **state) {
    eng_config c = parse_ok("{\"architectures\":[\"LlamaForCausalLM\"]," BASE "\"num_attention_heads\":4}");
    assert_int_equal(c.arch, ENG_ARCH_LLAMA);
    assert_string_equal(c.architecture, "LlamaForCausalLM");
    assert_string_equal(c.family, "llama");
    assert_int_equal(c.num_kv_heads, 4);
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.max_position_embeddings, 2048);
    assert_true(c.rms_norm_eps == 1e-6f);
    assert_true(c.rope_theta == 10000.0f);
    assert_int_equal(c.rope_type, ENG_ROPE_DEFAULT);
    assert_int_equal(c.tie_word_embeddings, 0);
    assert_int_equal(c.attention_bias, 0);
    assert_int_equal(c.qk_norm, 0);
    assert_int_equal(c.bos_token_id, -1);
    assert_int_equal(c.eos_token_id, -1);
    c = parse_ok("{\"architectures\":[\"LlamaForCausalLM\"]," BASE
                 "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"attention_bias\":true,"
                 "\"tie_word_embeddings\":true,\"rms_norm_eps\":1e-5,\"max_position_embeddings\":8192,"
                 "\"bos_token_id\":1,\"eos_token_id\":[7,8],\"torch_dtype\":\"bfloat16\",\"head_dim\":null}");
    assert_int_equal(c.attention_bias, 1);
    assert_int_equal(c.tie_word_embeddings, 1);
    assert_int_equal(c.num_kv_heads, 2);
    assert_int_equal(c.head_dim, 16);
    assert_true(c.rms_norm_eps == 1e-5f);
    assert_int_equal(c.max_position_embeddings, 8192);
    assert_int_equal(c.bos_token_id, 1);
    assert_int_equal(c.eos_token_id, 7);
    assert_string_equal(c.torch_dtype, "bfloat16");
    /* model_type alone identifies the architecture; v5's "dtype" key */
    c = parse_ok("{\"model_type\":\"llama\"," BASE
                 "\"num_attention_heads\":4,\"dtype\":\"float32\",\"eos_token_id\":3}");
    assert_int_equal(c.arch, ENG_ARCH_LLAMA);
    assert_string_equal(c.torch_dtype, "float32");
    assert_int_equal(c.eos_token_id, 3);
}

static void test_qwen2_always_bias(void **state) {
    eng_config c = parse_ok("{\"architectures\":[\"Qwen2ForCausalLM\"]," BASE
                            "\"num_attention_heads\":4,\"num_key_value_heads\":1,\"attention_bias\":false,"
                            "\"rope_theta\":1000000.0,\"use_sliding_window\":false,\"sliding_window\":4096}");
    assert_int_equal(c.arch, ENG_ARCH_QWEN2);
    assert_string_equal(c.family, "qwen");
    assert_int_equal(c.attention_bias, 1);
    assert_int_equal(c.qk_norm, 0);
    assert_true(c.rope_theta == 1e6f);
    assert_int_equal(c.max_position_embeddings, 32768);
}

static void test_qwen3_head_dim_and_qk_norm(void **state) {
    eng_config c =
        parse_ok("{\"architectures\":[\"Qwen3ForCausalLM\"],\"vocab_size\":151936,\"hidden_size\":1024,"
                 "\"intermediate_size\":3072,\"num_hidden_layers\":28,\"num_attention_heads\":16,"
                 "\"num_key_value_heads\":8,\"head_dim\":128,\"tie_word_embeddings\":true,"
                 "\"rope_theta\":1000000,\"rms_norm_eps\":1e-06,\"attention_bias\":false}");
    assert_int_equal(c.arch, ENG_ARCH_QWEN3);
    assert_int_equal(c.head_dim, 128);
    assert_int_equal(c.qk_norm, 1);
    assert_int_equal(c.attention_bias, 0);
    /* published Qwen3-0.6B: 596,049,920 parameters (tied head) */
    assert_true(eng_config_num_params(&c) == 596049920LL);
    /* absent head_dim: Qwen3Config's default of 128, not hidden/heads */
    c = parse_ok("{\"architectures\":[\"Qwen3ForCausalLM\"]," BASE "\"num_attention_heads\":4}");
    assert_int_equal(c.head_dim, 128);
}

static void test_mistral(void **state) {
    eng_config c = parse_ok("{\"architectures\":[\"MistralForCausalLM\"]," BASE
                            "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"attention_bias\":true,"
                            "\"sliding_window\":null}");
    assert_int_equal(c.arch, ENG_ARCH_MISTRAL);
    assert_string_equal(c.family, "mistral");
    assert_int_equal(c.attention_bias, 0);
    assert_int_equal(c.max_position_embeddings, 131072);
}

static void test_rope_forms(void **state) {
    /* transformers 4.x: top-level rope_theta + rope_scaling (Llama 3.2) */
    eng_config c =
        parse_ok("{\"architectures\":[\"LlamaForCausalLM\"]," BASE
                 "\"num_attention_heads\":4,\"rope_theta\":500000.0,\"max_position_embeddings\":131072,"
                 "\"rope_scaling\":{\"factor\":32.0,\"high_freq_factor\":4.0,\"low_freq_factor\":1.0,"
                 "\"original_max_position_embeddings\":8192,\"rope_type\":\"llama3\"}}");
    assert_int_equal(c.rope_type, ENG_ROPE_LLAMA3);
    assert_true(c.rope_theta == 500000.0f);
    assert_true(c.rope_factor == 32.0f);
    assert_true(c.rope_low_freq_factor == 1.0f);
    assert_true(c.rope_high_freq_factor == 4.0f);
    assert_int_equal(c.rope_original_max_pos, 8192);
    /* older "type" key */
    c = parse_ok("{\"architectures\":[\"LlamaForCausalLM\"]," BASE
                 "\"num_attention_heads\":4,\"rope_scaling\":{\"type\":\"llama3\",\"factor\":8,"
                 "\"low_freq_factor\":1,\"high_freq_factor\":4,\"original_max_position_embeddings\":256}}");
    assert_int_equal(c.rope_type, ENG_ROPE_LLAMA3);
    assert_true(c.rope_factor == 8.0f);
    /* transformers 5.x: rope_parameters replaces both */
    c = parse_ok("{\"architectures\":[\"Qwen3ForCausalLM\"]," BASE
                 "\"num_attention_heads\":4,\"head_dim\":16,\"rope_parameters\":{\"rope_theta\":1000000.0,"
                 "\"rope_type\":\"default\"}}");
    assert_true(c.rope_theta == 1e6f);
    assert_int_equal(c.rope_type, ENG_ROPE_DEFAULT);
    c = parse_ok("{\"architectures\":[\"LlamaForCausalLM\"]," BASE
                 "\"num_attention_heads\":4,\"rope_parameters\":{\"rope_type\":\"llama3\",\"factor\":32.0,"
                 "\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192,"
                 "\"rope_theta\":500000.0}}");
    assert_int_equal(c.rope_type, ENG_ROPE_LLAMA3);
    assert_true(c.rope_theta == 500000.0f);
    assert_int_equal(c.rope_original_max_pos, 8192);
    /* explicit null scaling and "default" type */
    c = parse_ok("{\"architectures\":[\"LlamaForCausalLM\"]," BASE
                 "\"num_attention_heads\":4,\"rope_scaling\":null,\"rope_theta\":100000}");
    assert_int_equal(c.rope_type, ENG_ROPE_DEFAULT);
    assert_true(c.rope_theta == 100000.0f);
}

static void test_num_params(void **state) {
    /* SmolLM2-135M: published 134,515,008 parameters */
    eng_config c =
        parse_ok("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":49152,\"hidden_size\":576,"
                 "\"intermediate_size\":1536,\"num_hidden_layers\":30,\"num_attention_heads\":9,"
                 "\"num_key_value_heads\":3,\"tie_word_embeddings\":true,\"rope_theta\":100000}");
    assert_true(eng_config_num_params(&c) == 134515008LL);
    /* Qwen2.5-0.5B: published 494,032,768 parameters (q/k/v bias, tied) */
    c = parse_ok("{\"architectures\":[\"Qwen2ForCausalLM\"],\"vocab_size\":151936,\"hidden_size\":896,"
                 "\"intermediate_size\":4864,\"num_hidden_layers\":24,\"num_attention_heads\":14,"
                 "\"num_key_value_heads\":2,\"tie_word_embeddings\":true}");
    assert_true(eng_config_num_params(&c) == 494032768LL);
}

static void test_errors_name_the_key(void **state) {
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"],", "line 1");
    expect_err("[1,2]", "not a JSON object");
    expect_err("{\"architectures\":[\"GPT2LMHeadModel\"]," BASE "\"num_attention_heads\":4}",
               "architectures");
    expect_err("{\"architectures\":\"LlamaForCausalLM\"," BASE "\"num_attention_heads\":4}", "architectures");
    expect_err("{\"model_type\":\"gemma\"," BASE "\"num_attention_heads\":4}", "model_type");
    expect_err("{" BASE "\"num_attention_heads\":4}", "architectures");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":1000,\"intermediate_size\":128,"
               "\"num_hidden_layers\":2,\"num_attention_heads\":4}",
               "\"hidden_size\" is missing");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":1000,\"hidden_size\":-64,"
               "\"intermediate_size\":128,\"num_hidden_layers\":2,\"num_attention_heads\":4}",
               "\"hidden_size\" is -64");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":\"big\",\"hidden_size\":64,"
               "\"intermediate_size\":128,\"num_hidden_layers\":2,\"num_attention_heads\":4}",
               "\"vocab_size\" must be an integer");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"]," BASE "\"num_attention_heads\":0}",
               "num_attention_heads");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"]," BASE
               "\"num_attention_heads\":4,\"num_key_value_heads\":3}",
               "\"num_key_value_heads\" (3) must divide");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"]," BASE
               "\"num_attention_heads\":4,\"num_key_value_heads\":0}",
               "num_key_value_heads");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"]," BASE "\"num_attention_heads\":5}",
               "\"num_attention_heads\" (5) must divide \"hidden_size\"");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"]," BASE "\"num_attention_heads\":4,\"head_dim\":-2}",
               "head_dim");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"]," BASE "\"num_attention_heads\":4,\"head_dim\":15}",
               "must be even");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"]," BASE
               "\"num_attention_heads\":4,\"rms_norm_eps\":0}",
               "rms_norm_eps");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"]," BASE
               "\"num_attention_heads\":4,\"rope_theta\":-1}",
               "rope_theta");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"]," BASE "\"num_attention_heads\":4,"
               "\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}",
               "\"rope_scaling.rope_type\" is \"yarn\"");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"]," BASE "\"num_attention_heads\":4,"
               "\"rope_scaling\":{\"type\":\"linear\",\"factor\":4}}",
               "\"rope_scaling.type\" is \"linear\"");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"]," BASE "\"num_attention_heads\":4,"
               "\"rope_parameters\":{\"rope_type\":\"dynamic\",\"rope_theta\":10000}}",
               "\"rope_parameters.rope_type\" is \"dynamic\"");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"]," BASE "\"num_attention_heads\":4,"
               "\"rope_scaling\":{\"rope_type\":\"llama3\",\"low_freq_factor\":1,\"high_freq_factor\":4,"
               "\"original_max_position_embeddings\":8192}}",
               "\"rope_scaling.factor\" is missing");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"]," BASE "\"num_attention_heads\":4,"
               "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":1,"
               "\"high_freq_factor\":4}}",
               "original_max_position_embeddings");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"]," BASE "\"num_attention_heads\":4,"
               "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":4,"
               "\"high_freq_factor\":1,\"original_max_position_embeddings\":8192}}",
               "high_freq_factor");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"]," BASE
               "\"num_attention_heads\":4,\"rope_scaling\":3}",
               "rope_scaling");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"]," BASE
               "\"num_attention_heads\":4,\"mlp_bias\":true}",
               "mlp_bias");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"]," BASE
               "\"num_attention_heads\":4,\"hidden_act\":\"gelu\"}",
               "hidden_act");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"]," BASE "\"num_attention_heads\":4,"
               "\"quantization_config\":{\"bits\":4}}",
               "quantization_config");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"]," BASE
               "\"num_attention_heads\":4,\"eos_token_id\":[1,\"x\"]}",
               "\"eos_token_id\"[1]");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"]," BASE
               "\"num_attention_heads\":4,\"bos_token_id\":-1}",
               "bos_token_id");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"]," BASE
               "\"num_attention_heads\":4,\"tie_word_embeddings\":1}",
               "tie_word_embeddings");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"]," BASE "\"num_attention_heads\":4,"
               "\"max_position_embeddings\":0}",
               "max_position_embeddings");
    expect_err("{\"architectures\":[\"LlamaForCausalLM\"]," BASE
               "\"num_attention_heads\":4,\"num_attention_heads\":4}",
               "duplicate");
}

static void test_load_from_dir(void **state) {
    char tmpl[] = "/tmp/lathe-cfg-XXXXXX";
    char *dir = mkdtemp(tmpl);
    assert_non_null(dir);
    eng_config c;
    lt_err err;
    assert_int_equal(eng_config_load(dir, &c, &err), -1);
    assert_int_equal(err.code, 404);
    assert_non_null(strstr(err.msg, "config.json"));
    char *path = lt_path_join(dir, "config.json");
    const char *j = "{\"architectures\":[\"Qwen2ForCausalLM\"]," BASE "\"num_attention_heads\":4}";
    assert_int_equal(lt_write_file_atomic(path, j, strlen(j), 0644, &err), 0);
    assert_int_equal(eng_config_load(dir, &c, &err), 0);
    assert_int_equal(c.arch, ENG_ARCH_QWEN2);
    const char *bad =
        "{\"architectures\":[\"Qwen2ForCausalLM\"]," BASE "\"num_attention_heads\":4,\"rope_theta\":\"x\"}";
    assert_int_equal(lt_write_file_atomic(path, bad, strlen(bad), 0644, &err), 0);
    assert_int_equal(eng_config_load(dir, &c, &err), -1);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "rope_theta"));
    unlink(path);
    free(path);
    rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama_defaults),
        cmocka_unit_test(test_qwen2_always_bias),
        cmocka_unit_test(test_qwen3_head_dim_and_qk_norm),
        cmocka_unit_test(test_mistral),
        cmocka_unit_test(test_rope_forms),
        cmocka_unit_test(test_num_params),
        cmocka_unit_test(test_errors_name_the_key),
        cmocka_unit_test(test_load_from_dir),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
