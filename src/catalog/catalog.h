/* catalog.h: the model catalog, the base models jobs can train on: directories under the models dir
 * (docs/spec.md §3.2).
 *
 * A model is a directory below the models dir, named by its path relative to it (nested ids like
 * "Qwen/Qwen3-0.6B" are fine), that holds config.json of a supported architecture, tokenizer.json and
 * safetensors weights (model.safetensors, model.safetensors.index.json, or any *.safetensors file), or a GGUF
 * file NAME.gguf (the model NAME; config, weights and tokenizer all in the file). The catalog route lists
 * them; job creation and the worker resolve a job's `model` through catalog_find.
 *
 * Ownership: json_t ** outputs and char ** outputs are the caller's (json_decref / free). */
#ifndef LATHE_CATALOG_CATALOG_H
#define LATHE_CATALOG_CATALOG_H

#include <jansson.h>

#include "engine/config.h"
#include "util/err.h"

#define CATALOG_MAX_DEPTH 4 /* directory levels searched below the models dir */

/* Every model under models_dir as catalog items {tinker_id, display_name, family, type, size_b,
 * context_length, extended_context, supported_algorithms, pricing, quantization}, sorted by tinker_id
 * (quantization: a GGUF file type such as "Q4_1", a model dir's torch_dtype, or null). A missing models dir
 * is an empty catalog. Directories that are not valid models are skipped. 0 or -1 with err. */
int catalog_scan(const char *models_dir, json_t **items, lt_err *err);

/* Resolves one model id: checks it is a clean relative path (no "..", no leading "/", no empty or hidden
 * segments), that the directory (or ID.gguf) is a valid model, and loads its config. *dir (may be NULL)
 * receives the model's directory or .gguf path (malloc'd), which eng_open and eng_tok_load accept. 404
 * (naming the id and what is missing) when it is not a model. */
int catalog_find(const char *models_dir, const char *id, char **dir, eng_config *cfg, lt_err *err);

/* The catalog item of a model (new reference). */
json_t *catalog_item(const char *id, const eng_config *cfg);

#endif
