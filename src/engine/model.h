/* model.h: a Llama-family decoder with frozen base weights (kept as stored) and trainable LoRA adapters.
 *
 * Memory (one buffer per role, structs of pointers into them, llm.c style):
 *  - base:    the frozen weights kept as f32 (norms, biases, and every matrix of an F32 checkpoint), 64-byte
 *             aligned. The matrices (embedding, head, the seven projections) of a BF16/F16 safetensors
 *             checkpoint or of a GGUF file stay in their stored format, read in place from the file mapping
 *             (or from `wstore`, a buffer the model owns, for rows the load had to reorder and for random
 *             models made in a chosen storage type); each is described by an eng_wmat (wmat.h) and read only
 *             through the wmat kernels, which dequantize per tile or on the fly. Matrices stored f32 have
 *             an F32 eng_wmat pointing into `base` and run exactly the f32 kernels they always did.
 *  - lora:    every A [r, in] and B [out, r] of every adapted projection, back to back (layer-major, target
 * order q, k, v, o, gate, up, down); grad, adam_m and adam_v mirror it element for element, so AdamW and the
 *             global gradient norm are one loop over one array.
 *  - arena:   the activations kept for backward, sized from (B, T) at the first step (grown, never shrunk).
 *  - scratch: backward temporaries shared by all layers, and the head's chunk of logits.
 *
 * Ownership: eng_model_new / eng_model_load return a model the caller frees with eng_model_free; everything
 * the struct points to belongs to the model. Pointers passed in (tokens, targets, output arrays) are borrowed
 * for the call. A model is not thread-safe: one caller at a time (the kernels themselves are threaded with
 * OpenMP). */
#ifndef LATHE_ENGINE_MODEL_H
#define LATHE_ENGINE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/config.h"
#include "engine/ops.h"
#include "engine/wmat.h"
#include "util/err.h"

/* The projections LoRA can adapt, in buffer order. */
typedef enum {
    ENG_T_Q = 0,
    ENG_T_K,
    ENG_T_V,
    ENG_T_O,
    ENG_T_GATE,
    ENG_T_UP,
    ENG_T_DOWN,
    ENG_NTARGETS,              /* the per-layer targets above */
    ENG_T_HEAD = ENG_NTARGETS, /* lm_head (Tinker's train_unembed), one for the model */
} eng_target;
#define ENG_LORA_ALL 0x7fu  /* bit (1 << eng_target) per adapted projection: the seven per-layer ones */
#define ENG_LORA_HEAD 0x80u /* the LM head; with a tied head the adapter acts on the output side only */

/* HF module names ("q_proj", ..., "down_proj", "lm_head") and their parent ("self_attn" or "mlp"; "" for the
 * head). */
const char *eng_target_name(eng_target t);
const char *eng_target_parent(eng_target t);
/* Parses a module name into a target; -1 if unknown. */
int eng_target_parse(const char *name);

typedef struct eng_lora_config {
    int rank;         /* r >= 1 */
    float alpha;      /* scale = alpha / rank */
    unsigned targets; /* ENG_LORA_ALL, | ENG_LORA_HEAD, or a subset */
    uint64_t seed;    /* A ~ U(-1/sqrt(in), 1/sqrt(in)) from this seed; B = 0 */
} eng_lora_config;

typedef struct eng_layer_weights {
    float *ln1, *ln2;         /* [C] input_layernorm, post_attention_layernorm */
    float *wq, *wk, *wv, *wo; /* [H*hd, C], [KV*hd, C], [KV*hd, C], [C, H*hd] */
    float *bq, *bk, *bv;      /* biases (attention_bias) or NULL */
    float *qn, *kn;           /* [hd] q_norm / k_norm (qk_norm) or NULL */
    float *wg, *wu, *wd;      /* [F, C], [F, C], [C, F] */
    /* The seven matrices as stored; the float pointers above are NULL unless the type is GGUF_F32. */
    eng_wmat Wq, Wk, Wv, Wo, Wg, Wu, Wd;
} eng_layer_weights;

typedef struct eng_lora_slot {
    float *A, *B; /* NULL when the target is not adapted */
    int in, out;
} eng_lora_slot;

/* Activations of one layer kept for backward (pointers into the arena). */
typedef struct eng_layer_acts {
    float *res;              /* [N, C] layer input (residual stream) */
    float *ln1, *rstd1;      /* [N, C], [N] */
    float *qpre, *kpre;      /* [N, H*hd], [N, KV*hd] before q/k norm (qk_norm only) */
    float *qrstd, *krstd;    /* [N*H], [N*KV] (qk_norm only) */
    float *q, *k, *v;        /* after norm and rope: what attention saw */
    float *att, *lse;        /* [N, H*hd], [B, H, T] */
    float *h;                /* [N, C] residual after attention */
    float *ln2, *rstd2;      /* [N, C], [N] */
    float *gate, *up;        /* [N, F] */
    float *xa[ENG_NTARGETS]; /* [N, r] LoRA intermediates */
} eng_layer_acts;

/* Time spent per phase (seconds, accumulated until reset), for `lathe bench`. */
enum { ENG_PH_GEMM = 0, ENG_PH_ATTN, ENG_PH_NORM, ENG_PH_HEAD, ENG_PH_OPT, ENG_NPHASES };

typedef struct eng_model {
    eng_config cfg;
    const eng_kernels *k;
    int C, H, KV, hd, F, V, L, Dq, Dk;

    float *base;    /* one buffer for all frozen weights, possibly shared (eng_model_share) */
    int *base_refs; /* models using `base`; the last one frees it */
    size_t n_base;
    float *wte, *norm, *head; /* head == wte when tied; NULL when not stored f32 */
    eng_wmat Wte, Whead;      /* embedding and head as stored (Whead == Wte when tied) */
    eng_layer_weights *layers;
    int wtype;   /* storage of the matrices: GGUF_F32 (in base), another type (in wstore), -1 (loader-set) */
    int compute; /* ENG_COMPUTE_F32 (default) or ENG_COMPUTE_BF16: how the stored matrices' GEMMs run */
    /* Storage behind the matrices, shared with `base` (same refcount, released with it): */
    void *wstore;    /* owned buffer of matrices (or reordered rows), or NULL */
    size_t wstore_n; /* its bytes */
    void *wfile;     /* the open gguf_file / st_reader the matrices point into, or NULL */
    int wfile_kind;  /* 1 gguf_file, 2 st_reader */
    size_t n_wbytes; /* bytes of the matrices not stored f32 (in wstore or the mapping) */

    /* LoRA (all NULL / 0 until eng_model_lora_init) */
    eng_lora_config lora;
    float scale;
    float *lora_p, *lora_g, *adam_m, *adam_v;
    size_t n_lora;
    eng_lora_slot *slots;    /* [L * ENG_NTARGETS] */
    eng_lora_slot head_lora; /* A [r, C], B [V, r] with ENG_LORA_HEAD, else NULLs */
    int adam_t;              /* optimizer steps taken */

    /* RoPE tables [rope_max, hd/2] */
    float *rope_cos, *rope_sin;
    int rope_max;

    /* activation arena for (B, T) */
    int aB, aT;
    size_t arena_cap; /* tokens the arena holds (B*T) */
    size_t arena_n;   /* floats in the arena */
    float *arena;
    eng_layer_acts *acts;
    float *resL, *lnf, *rstdf; /* final residual, final norm output, its rstd */
    int *pos;                  /* [N] position of each row */
    float *scratch;            /* backward temporaries */
    size_t scratch_n;
    int head_chunk;

    double prof[ENG_NPHASES];
    char load_note[160]; /* "" or what is resident after the load (storage types and bytes) */
} eng_model;

/* A model of config `cfg` with all base weights zero (fill them with eng_model_init_random or load them).
 * Returns NULL with err on OOM or an unusable config. */
eng_model *eng_model_new(const eng_config *cfg, const eng_kernels *k, lt_err *err);
/* The same with the matrices (embedding, head, projections) allocated in storage type `wtype` (GGUF_F32,
 * GGUF_BF16, GGUF_F16 or GGUF_Q8_0; see gguf.h), zero; eng_model_init_random fills them (random f32 values
 * rounded into that type). With wtype < 0 the matrices are left unset (all-zero eng_wmat): a loader points
 * them into a file and sets wfile / wstore. */
eng_model *eng_model_new_stored(const eng_config *cfg, const eng_kernels *k, int wtype, lt_err *err);
/* Loads DIR (config.json + model.safetensors or a sharded index). F32 tensors are copied into the f32 base;
 * BF16/F16 matrices stay as stored in the mmap'd files (norms and biases are widened); load_note says what is
 * resident. A path ending in .gguf is read as a GGUF file instead (gguf_model.h: tensors kept as stored).
 * eng_model_load_f32 widens every weight to f32 (the reference the stored kernels are tested against);
 * eng_model_load does the same when the environment says LATHE_WEIGHTS=f32 (for before/after benchmarks). */
eng_model *eng_model_load(const char *dir, const eng_kernels *k, lt_err *err);
eng_model *eng_model_load_f32(const char *dir, const eng_kernels *k, lt_err *err);
void eng_model_free(eng_model *m); /* NULL is fine */
/* A new model that shares src's frozen weights (read-only; reference-counted, so src may be freed first) with
 * no adapter and its own arena: several jobs on one base model hold one copy of the weights, and models
 * sharing a base may run on different threads at once. Never write base weights (init_random, loading)
 * through a shared model. Returns NULL with err on OOM. */
eng_model *eng_model_share(eng_model *src, lt_err *err);
/* Fills base weights with N(0, std) (norm weights around 1, biases small) from seed (tests, benchmarks). */
void eng_model_init_random(eng_model *m, uint64_t seed, float std);

/* Calls fn for every frozen tensor with its HF name and shape (rows, cols; cols = 0 for a vector). The tied
 * head is not listed separately. Stops and returns the first non-zero value fn returns. A matrix not stored
 * f32 is passed as a temporary f32 copy (one matrix at a time) that is valid only during the call; writing
 * into it changes nothing (eng_model_all_f32 says whether data is the resident weight). Returns -1 when such
 * a copy cannot be allocated. */
typedef int (*eng_weight_fn)(void *ctx, const char *name, float *data, int rows, int cols);
int eng_model_each_weight(eng_model *m, eng_weight_fn fn, void *ctx);

/* For loaders: as each_weight, but a matrix not yet set (eng_model_new_stored with wtype < 0) is passed with
 * data NULL so that fn can point its eng_wmat (eng_model_wmat_of) at the stored bytes. */
int eng_model_each_weight_unset(eng_model *m, eng_weight_fn fn, void *ctx);
/* Writes every base tensor to path as one safetensors file, matrices in their stored type (F32, BF16 or F16:
 * the stored bytes themselves, no conversion), vectors F32 (the 8B bench preset writes its random bf16 model
 * this way once, then loads it mmap'd). Returns 0 or -1 with err (400 for a GGUF block type). */
int eng_model_save_safetensors(eng_model *m, const char *path, lt_err *err);
/* 1 when every matrix is stored f32 (each_weight then passes the resident weights themselves). */
int eng_model_all_f32(const eng_model *m);
/* How the stored matrices' GEMMs run: ENG_COMPUTE_F32 (default) or ENG_COMPUTE_BF16 (engine/wmat.h; bf16
 * inputs, f32 accumulation, engine/gemm_bf16.h). Parse user input with eng_compute_parse. */
static inline void eng_model_set_compute(eng_model *m, int compute) {
    m->compute = compute;
}
/* What is resident, e.g. "Q4_1 91.3 MB + Q8_0 30.1 MB (as stored) + F32 0.1 MB", into buf. */
void eng_model_resident(const eng_model *m, char *buf, size_t cap);

/* Allocates and initialises LoRA parameters, gradients and AdamW moments (replacing any existing adapter).
 * Returns 0 or -1 with err (rank < 1, alpha <= 0, no target, OOM). */
int eng_model_lora_init(eng_model *m, const eng_lora_config *lc, lt_err *err);
/* The slot of (layer, target); its gradient is at the same offset in lora_g. */
static inline eng_lora_slot *eng_model_slot(eng_model *m, int layer, eng_target t) {
    return &m->slots[layer * ENG_NTARGETS + (int)t];
}
static inline float *eng_model_grad_of(eng_model *m, const float *param) {
    return m->lora_g + (param - m->lora_p);
}
void eng_model_zero_grad(eng_model *m);

/* Runs the model on tokens[B*T] (row-major, each row a sequence starting at position 0; pad on the right).
 * targets[B*T]: the token each position predicts, < 0 for none. logp[B*T] (optional) gets the target
 * log-probability per position (0 where targets < 0). loss_fn/ctx (may be NULL: no loss, logp only) give the
 * per-token loss; entropy (optional) gets the softmax entropy per position. With backward != 0 the LoRA
 * gradients are ACCUMULATED into lora_g (requires a LoRA). With targets, logp and entropy all NULL and no
 * backward the head is skipped (prefill: only the arena's activations are wanted; m->lnf holds the final
 * normed rows). Returns the summed loss, or NAN with err (bad token id, OOM). */
double eng_model_step(eng_model *m, const int *tokens, const int *targets, int B, int T,
                      eng_token_loss_fn loss_fn, void *ctx, float *logp, float *entropy, int backward,
                      lt_err *err);

/* The storage-aware pieces the sampler shares with the step: out[N, O] = inp W^T + bias through the f32
 * kernel when W is non-NULL, else through the stored matrix Wm; the embedding rows of tokens[N] into
 * out[N, C] (dequantizing only those rows). */
void eng_model_linear(eng_model *m, float *out, const float *inp, const float *W, const eng_wmat *Wm,
                      const float *bias, int N, int In, int O);
void eng_model_embed(eng_model *m, float *out, const int *tokens, int N);
/* The eng_wmat of an HF matrix name ("model.layers.3.mlp.up_proj.weight", "lm_head.weight"); NULL for a
 * vector or an unknown name. */
eng_wmat *eng_model_wmat_of(eng_model *m, const char *name);

/* Makes sure the RoPE tables cover positions [0, n). Returns 0 or -1 with err. */
int eng_model_rope_reserve(eng_model *m, int n, lt_err *err);

/* Bytes of the frozen weights as resident (f32 base + stored matrices), of LoRA params+grads+moments, and of
 * the activation arena + scratch. */
size_t eng_model_base_bytes(const eng_model *m);
size_t eng_model_lora_bytes(const eng_model *m);
size_t eng_model_arena_bytes(const eng_model *m);

/* Deterministic RNG used by the engine (splitmix64): state in, next value out. */
uint64_t eng_rng_next(uint64_t *state);
double eng_rng_uniform(uint64_t *state); /* [0, 1) */

#endif
