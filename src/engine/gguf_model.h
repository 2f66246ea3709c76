/* gguf_model.h: a Llama-family model from a GGUF file (llama.cpp's format), read through gguf.h.
 *
 * eng_gguf_config maps the GGUF metadata (general.architecture = llama | qwen2 | qwen3, with the
 * `<arch>.*` hyper-parameters) onto the same eng_config an HF config.json gives, so everything downstream of
 * the config is shared. eng_gguf_model_load fills an eng_model from the file's tensors: every tensor is
 * dequantized to f32 at load (the base buffer is f32 either way) and the note saying so is left in
 * m->load_note for callers to log. llama-architecture files have their Q and K rows permuted by llama.cpp's
 * converter; the load undoes it, so the model computes what transformers computes on the same file.
 *
 * The tensor-name table (HF <-> GGUF) is exported for the converter (`lathe model convert`). */
#ifndef LATHE_ENGINE_GGUF_MODEL_H
#define LATHE_ENGINE_GGUF_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/config.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/ops.h"
#include "util/err.h"

/* 1 when path names a GGUF file: it ends in ".gguf" and is not a directory (a missing file counts, so that
 * the error comes from the GGUF reader, naming the file). */
int eng_path_is_gguf(const char *path);

/* The config of an open GGUF file. Returns 0 or -1 with err (400 naming the file and the key or tensor). */
int eng_gguf_config(const gguf_file *f, eng_config *cfg, lt_err *err);
/* Opens path, reads its config, closes it. */
int eng_gguf_config_load(const char *path, eng_config *cfg, lt_err *err);

/* Loads the model of a GGUF file (every tensor checked against the config: name, dims, shape; a tensor the
 * config does not imply is an error too). The matrices stay as stored (mmap'd; the model keeps the file open)
 * and vectors are widened to f32; m->load_note says what is resident. */
eng_model *eng_gguf_model_load(const char *path, const eng_kernels *k, lt_err *err);
/* The same from an open file, which the model BORROWS when it keeps matrices as stored (m->wtype < 0): the
 * file must outlive the model. */
eng_model *eng_gguf_model_from(const gguf_file *f, const eng_kernels *k, lt_err *err);
/* Every tensor widened to f32 (the reference for the stored kernels; what loading did before). */
eng_model *eng_gguf_model_load_f32(const char *path, const eng_kernels *k, lt_err *err);
eng_model *eng_gguf_model_from_f32(const gguf_file *f, const eng_kernels *k, lt_err *err);

/* HF tensor name <-> GGUF tensor name ("model.layers.3.self_attn.q_proj.weight" <-> "blk.3.attn_q.weight").
 * Both write into buf (cap bytes) and return it, or NULL for a name outside the table (or one that does not
 * fit). */
const char *eng_gguf_name_for_hf(const char *hf, char *buf, size_t cap);
const char *eng_gguf_name_to_hf(const char *gguf, char *buf, size_t cap);

/* llama.cpp's Q/K row permutation of llama-architecture files. w is [rows, cols] row-major with rows =
 * n_head * head_dim (cols = 1 for a bias). Forward (inverse = 0, HF -> GGUF), per head, row j * hd/2 + i
 * moves to row 2 i + j (w.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2)); inverse = 1 undoes it. K uses the
 * number of key/value heads. In place (one head's rows of scratch on the stack or heap). */
void eng_gguf_permute_qk(float *w, int rows, int cols, int n_head, int inverse);

/* What a file holds, for `lathe model info` and the model catalog. */
typedef struct eng_gguf_summary {
    int file_type;              /* general.file_type, -1 when absent */
    const char *file_type_name; /* "Q4_1", "MOSTLY_Q4_K_M"-style short name ("Q4_K_M"), or "unknown" */
    int n_tensors;
    int count[32];       /* tensors per gguf_type (index = type number) */
    uint64_t bytes[32];  /* bytes as stored per type */
    uint64_t file_bytes; /* total tensor bytes as stored */
    uint64_t f32_bytes;  /* bytes once widened to f32 */
    char types[64];      /* "Q4_1/Q8_0/F32": the types present, most bytes first */
} eng_gguf_summary;

void eng_gguf_summarize(const gguf_file *f, eng_gguf_summary *s);
/* The name of a llama.cpp file type (llama_ftype: 0 F32, 1 F16, 2 Q4_0, 3 Q4_1, 7 Q8_0, 8 Q5_0, 9 Q5_1,
 * 14 Q4_K_S, 15 Q4_K_M, 16 Q5_K_S, 17 Q5_K_M, 18 Q6_K, 32 BF16, ...); "unknown" otherwise. */
const char *eng_gguf_ftype_name(int ftype);

#endif
