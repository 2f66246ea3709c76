/* config.h: a Llama-family model's shape, read from HF config.json.
 *
 * One struct covers LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM and MistralForCausalLM; the
 * differences are flags (attention bias, q/k norm, tied head) and the RoPE settings. eng_config_load
 * validates strictly and names the offending key in its error. */
#ifndef LATHE_ENGINE_CONFIG_H
#define LATHE_ENGINE_CONFIG_H

#include "util/err.h"

typedef enum { ENG_ARCH_LLAMA = 0, ENG_ARCH_QWEN2, ENG_ARCH_QWEN3, ENG_ARCH_MISTRAL } eng_arch;

typedef enum { ENG_ROPE_DEFAULT = 0, ENG_ROPE_LLAMA3 } eng_rope_type;

typedef struct eng_config {
    eng_arch arch;
    char architecture[64]; /* as written in config.json, e.g. "Qwen3ForCausalLM" */
    char family[16];       /* "llama" | "qwen" | "mistral" (catalog family) */
    int vocab_size;
    int hidden_size;       /* d */
    int intermediate_size; /* ffn */
    int num_layers;
    int num_heads;
    int num_kv_heads;
    int head_dim; /* explicit for Qwen3; else hidden_size / num_heads */
    int max_position_embeddings;
    float rms_norm_eps;
    int tie_word_embeddings;
    int attention_bias; /* q/k/v have bias (Qwen2; Llama's attention_bias flag) */
    int qk_norm;        /* per-head RMSNorm on q and k before RoPE (Qwen3) */
    float rope_theta;
    eng_rope_type rope_type;
    float rope_factor; /* llama3 scaling */
    float rope_low_freq_factor;
    float rope_high_freq_factor;
    int rope_original_max_pos;
    int bos_token_id; /* -1 when absent */
    int eos_token_id; /* first of the list when a list; -1 when absent */
    char torch_dtype[16];
} eng_config;

/* Parses DIR/config.json (or, for a path ending in .gguf, the GGUF file's metadata: gguf_model.h). Returns 0
 * or -1 with err naming the file and the key. */
int eng_config_load(const char *dir, eng_config *cfg, lt_err *err);
/* Parses config.json text (for tests and the fuzzer). `name` is used in error messages. */
int eng_config_parse(const char *json, size_t len, const char *name, eng_config *cfg, lt_err *err);
/* Number of parameters of the base model (embedding counted once when tied). */
long long eng_config_num_params(const eng_config *cfg);

#endif
