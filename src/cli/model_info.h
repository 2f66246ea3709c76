/* model_info.h: what both variants of `lathe model info` (a model dir in cmd_model.c, a GGUF file in
 * cmd_model_info_gguf.c) print about a model's config, so the two outputs say the same things the same way.
 *
 * Ownership: the functions only read the config; model_info_config_json adds keys to the caller's object. */
#ifndef LATHE_CLI_MODEL_INFO_H
#define LATHE_CLI_MODEL_INFO_H

#include <jansson.h>

#include "engine/config.h"

/* The GGUF variant's entry point (cmd_model_info_gguf.c), called by cmd_info for a .gguf path. */
int cmd_model_info_gguf(const char *path, int as_json);

/* "default" | "llama3". */
const char *model_info_rope_name(eng_rope_type t);
/* Adds architecture, family, num_layers, hidden_size, intermediate_size, num_heads, num_kv_heads, head_dim,
 * vocab_size, context_length, params and size_b to o. */
void model_info_shape_json(json_t *o, const eng_config *c);
/* Adds tie_word_embeddings, attention_bias, qk_norm, rms_norm_eps, rope {type, theta, llama3 factors},
 * bos_token_id and eos_token_id (null when absent) to o. */
void model_info_config_json(json_t *o, const eng_config *c);
/* Prints the architecture, layers, hidden, heads, features, rope and params lines. */
void model_info_shape_text(const eng_config *c);

#endif
