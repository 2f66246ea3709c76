/* ops.h: the engine's kernels, forward and backward side by side, on raw float pointers with explicit shapes.
 *
 * Conventions (llm.c style, HF numerics):
 *  - Row-major. N = B*T token rows. Linear weights are [out, in] as in HF checkpoints: y = x W^T (+ b).
 *  - Activations of attention: q is (B, T, H, hd), k and v are (B, T, KV, hd); GQA maps head h to kv head
 *    h / (H / KV) by index (no copies).
 *  - Backward functions ACCUMULATE (+=) into parameter gradients (dA, dB) and into input gradients (dinp),
 *    so callers zero what they need zeroed. Exception: where a comment says "writes".
 *  - Nothing allocates except where a scratch argument is documented; all pointers are caller-owned.
 *  - Frozen base weights get no gradient: there are no dW for base linears, norms or embeddings.
 *  - No parameter is named I: <complex.h> (which OpenBLAS's cblas.h pulls in) defines I as a macro.
 *
 * The kernel table (eng_kernels) is the backend seam: the trainer calls kernels only through it, so a CUDA
 * backend can provide the same table. eng_kernels_cpu() returns the CPU one (OpenBLAS GEMMs, OpenMP loops;
 * GEMV for single-row linear/LoRA calls; the LoRA kernels split their thin GEMMs over threads themselves). */
#ifndef LATHE_ENGINE_OPS_H
#define LATHE_ENGINE_OPS_H

#include <stddef.h>

/* Per-token loss: given the target's log-probability lp at row i, returns the loss contribution of that row
 * and writes d(loss)/d(lp) into *dlp. Losses of docs/spec.md §6 (cross_entropy, importance_sampling, ppo,
 * cispo, dro) are all of this form. A row with zero weight returns 0 and *dlp = 0. */
struct eng_wmat;

typedef float (*eng_token_loss_fn)(float lp, int row, void *ctx, float *dlp);

typedef struct eng_kernels {
    const char *name; /* "cpu", "cuda" */

    /* out[N,C] = wte[tokens[i], :] */
    void (*embedding_forward)(float *out, const int *tokens, const float *wte, int N, int C);

    /* out = x * rstd * weight, rstd[N] saved (f32 math, eps inside the sqrt, as HF LlamaRMSNorm). */
    void (*rmsnorm_forward)(float *out, float *rstd, const float *inp, const float *weight, int N, int C,
                            float eps);
    /* dinp += d/dinp; weight frozen. */
    void (*rmsnorm_backward)(float *dinp, const float *dout, const float *inp, const float *weight,
                             const float *rstd, int N, int C);

    /* x[N, nheads, hd] rotated in place with rotate_half (first half / second half), using tables
     * cos/sin [max_pos, hd/2] at positions pos[N]. backward applies the inverse rotation to dx in place. */
    void (*rope_forward)(float *x, const float *cos, const float *sin, const int *pos, int N, int nheads,
                         int hd);
    void (*rope_backward)(float *dx, const float *cos, const float *sin, const int *pos, int N, int nheads,
                          int hd);

    /* Causal GQA attention, flash-style: out (B,T,H,hd) writes; lse (B,H,T) writes (per-row log-sum-exp of
     * the scaled scores, kept for backward). Scale 1/sqrt(hd). Positions j > i masked. Rows beyond valid
     * length are still computed (right padding never changes earlier rows). */
    void (*attention_forward)(float *out, float *lse, const float *q, const float *k, const float *v, int B,
                              int T, int H, int KV, int hd);
    /* dq, dk, dv accumulate; recomputes scores from q, k and lse (no stored probabilities). */
    void (*attention_backward)(float *dq, float *dk, float *dv, const float *dout, const float *out,
                               const float *lse, const float *q, const float *k, const float *v, int B, int T,
                               int H, int KV, int hd);

    /* out = silu(gate) * up, all [N, F]; out writes. backward: dgate, dup accumulate. */
    void (*swiglu_forward)(float *out, const float *gate, const float *up, int N, int F);
    void (*swiglu_backward)(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                            int N, int F);

    /* out[N,O] = inp[N,In] W[O,In]^T + bias[O] (bias may be NULL); out writes. backward: dinp[N,In] += dout
     * W. */
    void (*linear_forward)(float *out, const float *inp, const float *W, const float *bias, int N, int In,
                           int O);
    void (*linear_backward)(float *dinp, const float *dout, const float *W, int N, int In, int O);

    /* LoRA: xa[N,r] = inp A^T (writes, kept for backward); out[N,O] += scale * xa B^T.
     * A is [r, In], B is [O, r] (PEFT layout, unscaled). */
    void (*lora_forward)(float *out, float *xa, const float *inp, const float *A, const float *B, float scale,
                         int N, int In, int r, int O);
    /* dA[r,In] += scale * (dout B)^T inp; dB[O,r] += scale * dout^T xa; dinp[N,In] += scale * (dout B) A.
     * dinp may be NULL (then only dA and dB). scratch: at least N*r floats. */
    void (*lora_backward)(float *dinp, float *dA, float *dB, const float *dout, const float *inp,
                          const float *xa, const float *A, const float *B, float scale, int N, int In, int r,
                          int O, float *scratch);

    /* The head with fused loss, in chunks of `chunk` rows so (N, V) logits never exist:
     * logits = x[N,C] W[V,C]^T; logp[i] = log_softmax(logits_i)[targets[i]] (writes; rows with targets[i] < 0
     * get 0 and no loss); total loss = sum_i loss_fn(logp[i], i, ctx). If dx != NULL, dx[N,C] += dlogits W
     * where dlogits_i = dlp_i * (onehot(target_i) - softmax(logits_i)). If entropy != NULL, entropy[i] writes
     * the softmax entropy of row i. scratch: at least chunk*V floats. Returns the summed loss (double).
     * loss_fn must be pure: it is called from several threads and more than once per row. */
    double (*head_loss)(float *logp, float *dx, float *entropy, const float *x, const float *W,
                        const int *targets, int N, int C, int V, int chunk, eng_token_loss_fn loss_fn,
                        void *ctx, float *scratch);

    /* head_loss with a LoRA on the head (Tinker's train_unembed): logits = x W^T + scale * (x A^T) B^T, with
     * A [r, C] and B [V, r] (PEFT layout, unscaled). Outputs as head_loss; when dx != NULL, dx also gets the
     * LoRA path and dA[r,C] += scale * (dlogits B)^T x, dB[V,r] += scale * dlogits^T (x A^T) (both
     * accumulate; required then). r == 0 (A, B, dA, dB NULL) is exactly head_loss. scratch: at least chunk*V
     * + 2*chunk*r floats. */
    double (*head_loss_lora)(float *logp, float *dx, float *entropy, const float *x, const float *W,
                             const float *A, const float *B, float scale, int r, float *dA, float *dB,
                             const int *targets, int N, int C, int V, int chunk, eng_token_loss_fn loss_fn,
                             void *ctx, float *scratch);

    /* head_loss_lora with the head's weight as stored: W (f32) when non-NULL, else Wm (wmat.h; dequantized
     * per tile inside the chunk GEMMs, `compute` an ENG_COMPUTE_* mode). The CPU table's f32 path with W is
     * exactly head_loss_lora. */
    double (*head_loss_w)(float *logp, float *dx, float *entropy, const float *x, const float *W,
                          const float *A, const float *B, float scale, int r, float *dA, float *dB,
                          const int *targets, int N, int C, int V, int chunk, eng_token_loss_fn loss_fn,
                          void *ctx, float *scratch, const struct eng_wmat *Wm, int compute);

    /* AdamW step (torch semantics): m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr * wd * p (decoupled);
     * p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps). t is the 1-based step count. */
    void (*adamw)(float *p, const float *g, float *m, float *v, size_t n, float lr, float b1, float b2,
                  float eps, float wd, int t);
} eng_kernels;

const eng_kernels *eng_kernels_cpu(void);

/* RoPE tables for positions [0, max_pos): cos/sin [max_pos, hd/2], with Llama 3 frequency scaling when the
 * config asks for it (the inv_freq formula of HF's _compute_llama3_parameters). Backend-independent. */
struct eng_config;
void eng_rope_tables(float *cos, float *sin, int max_pos, int hd, const struct eng_config *cfg);

#endif
