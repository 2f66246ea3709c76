/* gguf_export.h: `lathe model convert`: GGUF -> Hugging Face model directory, and model (+ PEFT adapter)
 * -> GGUF that llama.cpp loads.
 *
 * GGUF -> HF: the file is loaded as the engine loads it (gguf_model.h: every tensor dequantized to f32, the
 * llama Q/K permutation undone, HF names), then written as DIR/model.safetensors (f32, bf16 or f16),
 * DIR/config.json (LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM with the hyper-parameters),
 * DIR/tokenizer.json (synthesized from the tokenizer.ggml.* metadata: tokenizer_gguf.c),
 * DIR/tokenizer_config.json (chat template, bos / eos tokens, add_bos_token) and
 * DIR/generation_config.json (bos / eos ids).
 *
 * Model -> GGUF: SRC (an HF model dir or a .gguf) is loaded, the adapter (a PEFT dir) merged in when given
 * (W + alpha/r B A, peft.h), and the merged weights written as GGUF v3: general.architecture (llama for
 * Llama and Mistral, qwen2, qwen3) with llama.cpp's hyper-parameter keys, the tokenizer metadata (copied
 * from a GGUF source; from tokenizer.json / tokenizer_config.json for a directory: tokens, token types,
 * merges, model gpt2, the pre-tokenizer recognised from the pre_tokenizer section, bos / eos, chat
 * template), Q/K rows permuted for the llama architecture, 1-D tensors (norms, biases) in F32 and matrices in
 * the chosen type (F32, F16, BF16 or Q8_0; a matrix whose rows do not fit Q8_0 blocks falls back to F16).
 *
 * Everything is written atomically (temp file + rename); nothing prints. */
#ifndef LATHE_ENGINE_GGUF_EXPORT_H
#define LATHE_ENGINE_GGUF_EXPORT_H

#include "engine/config.h"
#include "engine/gguf.h"
#include "engine/safetensors.h"
#include "util/err.h"
#include "util/strbuf.h"

/* GGUF file -> HF model dir (created if missing; files in it replaced). dtype of model.safetensors. */
int eng_convert_gguf_to_hf(const char *src, const char *dir, st_dtype dtype, lt_err *err);

/* HF dir or .gguf (+ adapter dir, may be NULL) -> GGUF file at dst. dtype: GGUF_F32, GGUF_F16, GGUF_BF16 or
 * GGUF_Q8_0. */
int eng_convert_to_gguf(const char *src, const char *adapter, const char *dst, gguf_type dtype, lt_err *err);

/* The HF config.json of cfg (torch_dtype "float32" / "bfloat16" / "float16"), appended to out. */
void eng_hf_config_json(const eng_config *cfg, const char *torch_dtype, strbuf *out);

/* llama.cpp's general.architecture for an engine architecture ("llama", "qwen2", "qwen3"). */
const char *eng_gguf_arch_name(eng_arch arch);

#endif
