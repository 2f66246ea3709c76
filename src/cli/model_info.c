/* model_info.c: the config part of `lathe model info`, shared by the model-dir and GGUF variants (see
 * model_info.h). */
#include "cli/model_info.h"

#include <stdio.h>

const char *model_info_rope_name(eng_rope_type t) {
    return t == ENG_ROPE_LLAMA3 ? "llama3" : "default";
}

void model_info_shape_json(json_t *o, const eng_config *c) {
    long long params = eng_config_num_params(c);
    json_object_set_new(o, "architecture", json_string(c->architecture));
    json_object_set_new(o, "family", json_string(c->family));
    json_object_set_new(o, "num_layers", json_integer(c->num_layers));
    json_object_set_new(o, "hidden_size", json_integer(c->hidden_size));
    json_object_set_new(o, "intermediate_size", json_integer(c->intermediate_size));
    json_object_set_new(o, "num_heads", json_integer(c->num_heads));
    json_object_set_new(o, "num_kv_heads", json_integer(c->num_kv_heads));
    json_object_set_new(o, "head_dim", json_integer(c->head_dim));
    json_object_set_new(o, "vocab_size", json_integer(c->vocab_size));
    json_object_set_new(o, "context_length", json_integer(c->max_position_embeddings));
    json_object_set_new(o, "params", json_integer(params));
    json_object_set_new(o, "size_b", json_real((double)params / 1e9));
}

void model_info_config_json(json_t *o, const eng_config *c) {
    json_object_set_new(o, "tie_word_embeddings", json_boolean(c->tie_word_embeddings));
    json_object_set_new(o, "attention_bias", json_boolean(c->attention_bias));
    json_object_set_new(o, "qk_norm", json_boolean(c->qk_norm));
    json_object_set_new(o, "rms_norm_eps", json_real(c->rms_norm_eps));
    json_t *rope =
        json_pack("{s:s, s:f}", "type", model_info_rope_name(c->rope_type), "theta", (double)c->rope_theta);
    if (c->rope_type == ENG_ROPE_LLAMA3) {
        json_object_set_new(rope, "factor", json_real(c->rope_factor));
        json_object_set_new(rope, "low_freq_factor", json_real(c->rope_low_freq_factor));
        json_object_set_new(rope, "high_freq_factor", json_real(c->rope_high_freq_factor));
        json_object_set_new(rope, "original_max_position_embeddings", json_integer(c->rope_original_max_pos));
    }
    json_object_set_new(o, "rope", rope);
    json_object_set_new(o, "bos_token_id",
                        c->bos_token_id >= 0 ? json_integer(c->bos_token_id) : json_null());
    json_object_set_new(o, "eos_token_id",
                        c->eos_token_id >= 0 ? json_integer(c->eos_token_id) : json_null());
}

void model_info_shape_text(const eng_config *c) {
    long long params = eng_config_num_params(c);
    printf("architecture  %s (family %s)\n", c->architecture, c->family);
    printf("layers        %d\n", c->num_layers);
    printf("hidden        %d (intermediate %d)\n", c->hidden_size, c->intermediate_size);
    printf("heads         %d query, %d key/value, head_dim %d\n", c->num_heads, c->num_kv_heads, c->head_dim);
    printf("features      %s%s%s\n", c->tie_word_embeddings ? "tied head" : "separate head",
           c->attention_bias ? ", q/k/v bias" : "", c->qk_norm ? ", q/k norm" : "");
    printf("rope          %s, theta %g", model_info_rope_name(c->rope_type), (double)c->rope_theta);
    if (c->rope_type == ENG_ROPE_LLAMA3)
        printf(", factor %g, low %g, high %g, original context %d", (double)c->rope_factor,
               (double)c->rope_low_freq_factor, (double)c->rope_high_freq_factor, c->rope_original_max_pos);
    printf("\nparams        %lld (%.4g M)\n", params, (double)params / 1e6);
}
