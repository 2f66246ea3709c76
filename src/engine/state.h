/* state.h: training state checkpoints (save_state / load_state) of a model's LoRA adapter.
 *
 * File format: one safetensors file. Tensors (F32, flat, in the model's LoRA buffer order): "lora" [n], and
 * with the optimizer "adam_m" [n] and "adam_v" [n]. __metadata__ "lathe_state" holds a JSON object:
 * {"version":1,
 * "rank","alpha","targets":["q_proj",...],"seed","n_lora","adam_t","rng","with_optimizer","layers","hidden",
 * "architecture"}; "lathe_extra" holds the caller's JSON (data cursor, step, ...) verbatim. Values are stored
 * bit for bit, so save -> load -> continue reproduces an uninterrupted run exactly (same threads).
 *
 * Ownership: paths are borrowed; *extra_json from eng_state_load is malloc'd (caller frees) or NULL. */
#ifndef LATHE_ENGINE_STATE_H
#define LATHE_ENGINE_STATE_H

#include <stdint.h>

#include "engine/model.h"
#include "util/err.h"

/* Writes the adapter (and AdamW moments + step count when with_optimizer) to path atomically. rng is the
 * caller's RNG state to restore later; extra_json (may be NULL) must be a JSON value. Returns 0 or -1 with
 * err. */
int eng_state_save(const eng_model *m, const char *path, int with_optimizer, uint64_t rng,
                   const char *extra_json, lt_err *err);

/* Loads a state file into m: the adapter is (re)created with the saved rank/alpha/targets, gradients are
 * zeroed; with_optimizer restores AdamW moments and step count (error if the file has none), else they are
 * reset. rng (may be NULL) gets the saved RNG state; extra_json (may be NULL) the caller's JSON. The model's
 * shape must match the one that wrote the file (layers, hidden size, parameter count), else 400 naming the
 * mismatch. */
int eng_state_load(eng_model *m, const char *path, int with_optimizer, uint64_t *rng, char **extra_json,
                   lt_err *err);

#endif
