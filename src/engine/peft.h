/* peft.h: LoRA adapters in Hugging Face PEFT's layout, and merged weights.
 *
 * An adapter directory holds adapter_config.json
 * ({"peft_type":"LORA","task_type":"CAUSAL_LM","r","lora_alpha",
 * "target_modules":[...],"base_model_name_or_path",...}, the fields HF PEFT and vLLM read) and
 * adapter_model.safetensors with keys base_model.model.model.layers.<i>.<self_attn|mlp>.<proj>.lora_A.weight
 * [r, in] and ...lora_B.weight [out, r], F32, unscaled (PEFT applies lora_alpha / r).
 *
 * Ownership: every path and name is borrowed. */
#ifndef LATHE_ENGINE_PEFT_H
#define LATHE_ENGINE_PEFT_H

#include "engine/model.h"
#include "engine/safetensors.h"
#include "util/err.h"

/* Writes DIR/adapter_config.json and DIR/adapter_model.safetensors (DIR is created). base_model may be NULL
 * (then the architecture name is recorded). Returns 0 or -1 with err. */
int eng_peft_export(const eng_model *m, const char *dir, const char *base_model, lt_err *err);

/* Parses adapter_config.json text (len bytes; `name` for messages) into rank, alpha and targets (seed 0).
 * Returns 0, or -1 with err (400 naming the field) for non-JSON, r outside 1..4096, lora_alpha <= 0,
 * use_rslora / use_dora, an empty or unknown target_modules entry. */
int eng_peft_config_parse(const char *text, size_t len, const char *name, eng_lora_config *lc, lt_err *err);

/* Loads a PEFT adapter dir (or its adapter_model.safetensors' parent) into m, replacing any adapter; AdamW
 * state is reset. Rejects use_rslora / use_dora, unknown target modules, and missing or misshaped tensors
 * (400 naming the key). Returns 0 or -1 with err. */
int eng_peft_import(eng_model *m, const char *dir, lt_err *err);

/* Writes the base weights with every adapted projection replaced by W + (alpha / r) B A, as one safetensors
 * file in `dtype` (F32, BF16 or F16) with the HF tensor names. Returns 0 or -1 with err. */
int eng_export_merged(eng_model *m, const char *path, st_dtype dtype, lt_err *err);

#endif
