/* wmat.h: a frozen weight matrix kept in its stored format, and the kernels that read it.
 *
 * A base weight W [rows, cols] (HF [out, in]) may be stored as F32, BF16, F16 or one of the GGUF block
 * quantizations Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K (and Q5_0 / Q5_1, which the GGUF reader also accepts).
 * eng_wmat describes it: the type (numbered as gguf_type), the shape, a pointer to row 0 (inside a file
 * mapping or a buffer the model owns) and the bytes of one row. Row r starts at data + r * row_bytes.
 *
 * Kernels. Nothing ever widens a whole matrix:
 *  - eng_wmat_nt: C[N, rows] (+)= A[N, cols] W^T (a linear's forward, the head's logits);
 *  - eng_wmat_nn: C[N, cols] (+)= A[N, rows] W   (dX of a linear, the head's dx).
 * For N <= ENG_WMAT_GEMV_MAX (decoding) each output row of W is dequantized on the fly in registers (AVX2
 * block kernels for F32, BF16, F16, Q8_0, Q4_0, Q4_1; a per-thread row buffer for the k-quants) and dotted
 * with the N input rows: the bytes read are the stored bytes. Above that, W is walked in tiles of rows (64 to
 * 256, at most about 1 MiB of f32): a tile is dequantized into a scratch buffer (OpenMP over its rows) and
 * goes to cblas_sgemm, so the GEMM runs at SGEMM speed and only one tile of f32 exists at a time. F32 storage
 * goes to cblas_sgemm directly. With compute ENG_COMPUTE_BF16 the tile is converted to bf16 instead (used in
 * place when stored BF16) and goes to the bf16 GEMM of gemm_bf16.h; the GEMV (a few rows: decoding, bound by
 * the bytes read, not by arithmetic) multiplies the stored values in f32 under either mode.
 *
 * Numerics: every dequantized value equals gguf_dequantize's (ggml's dequantize_row_*) exactly (same
 * operations), so results equal "dequantize the whole matrix, then sgemm" within the rounding of a different
 * summation order; the one-row Q4_1 GEMV sums d (q . x) + m sum(x) per block instead, the same sum
 * regrouped (tests/unit/test_wmat.c bounds both by 1e-5 of sum |a w|).
 *
 * Threads: the kernels open their own OpenMP regions and must not be called from inside one. A wmat is
 * read-only; any number of callers may use one at once. */
#ifndef LATHE_ENGINE_WMAT_H
#define LATHE_ENGINE_WMAT_H

#include <stddef.h>
#include <stdint.h>

#define ENG_WMAT_GEMV_MAX 8 /* N up to this uses the on-the-fly dequantizing GEMV */

enum { ENG_COMPUTE_F32 = 0, ENG_COMPUTE_BF16 = 1 };

typedef struct eng_wmat {
    int type;         /* gguf_type: GGUF_F32, GGUF_BF16, GGUF_F16, GGUF_Q8_0, GGUF_Q4_0, GGUF_Q4_1, ... */
    int rows, cols;   /* [out, in] */
    const void *data; /* row 0 */
    size_t row_bytes; /* gguf_row_bytes(type, cols) */
} eng_wmat;

/* Fills w; returns 0, or -1 when the type is unknown or cols is not a multiple of its block size. */
int eng_wmat_init(eng_wmat *w, int type, int rows, int cols, const void *data);
/* Bytes of the stored matrix (rows * row_bytes). */
size_t eng_wmat_bytes(const eng_wmat *w);
/* 1 when the type is supported by these kernels. */
int eng_wmat_type_ok(int type);

/* Rows [r0, r0 + n) of W as f32 into dst[n, cols]. */
void eng_wmat_rows_f32(const eng_wmat *w, int r0, int n, float *dst);
/* dst[i, :] = W[idx[i], :] for i < n (the embedding lookup); idx must be in range. */
void eng_wmat_gather_f32(const eng_wmat *w, const int *idx, int n, float *dst);

/* C[N, rows] = A[N, cols] W^T (+ C when accumulate). lda >= cols, ldc >= rows. */
void eng_wmat_nt(const eng_wmat *w, int N, const float *A, int lda, float *C, int ldc, int accumulate,
                 int compute);
/* C[N, cols] = A[N, rows] W (+ C when accumulate). lda >= rows, ldc >= cols. */
void eng_wmat_nn(const eng_wmat *w, int N, const float *A, int lda, float *C, int ldc, int accumulate,
                 int compute);

/* A linear on a stored weight, as the kernel table's linear_forward / linear_backward: out[N, rows] = inp
 * W^T + bias (bias may be NULL); dinp[N, cols] += dout W. */
void eng_wmat_linear_forward(float *out, const float *inp, const eng_wmat *w, const float *bias, int N,
                             int compute);
void eng_wmat_linear_backward(float *dinp, const float *dout, const eng_wmat *w, int N, int compute);

#endif
