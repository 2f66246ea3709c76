/* gemm_bf16.h: GEMMs with bf16 inputs and f32 accumulation, dispatched on the CPU's features at run time.
 *
 * The large GEMMs of a linear layer under `--compute bf16` (PyTorch's CPU autocast does the same): the weight
 * W [N = out, K = in] is stored as bf16, the activations are f32 and are rounded to bf16 (round to nearest
 * even) as they are packed, products are summed in f32.
 *
 *  - eng_gemm_bf16_nt: C[M, N] (+)= bf16(A)[M, K] B[N, K]^T   (forward y = x W^T)
 *  - eng_gemm_bf16_nn: C[M, K] (+)= bf16(A)[M, N] B[N, K]     (input gradient dX += dY W)
 * Row-major with leading dimensions lda, ldb, ldc (in elements); accumulate != 0 adds to C, else C is
 * overwritten. M, N or K of 0 is allowed (with K or N of 0 and accumulate == 0, C is zeroed).
 *
 * Paths (eng_bf16_path names the one that runs): "amx" (AMX-BF16 tiles, Sapphire Rapids and later; needs the
 * Linux permission for the tile data state, requested once), "avx512bf16" (vdpbf16ps, Zen 4, Cooper Lake),
 * "avx2" (bf16 widened to f32 by a shift, FMA; any x86-64 with AVX2+FMA). The environment variable
 * LATHE_BF16_PATH=amx|avx512bf16|avx2 forces a path (for tests and benchmarks); a forced path the CPU lacks
 * falls back to the best available one. Every path computes the same products of the same bf16 values in f32;
 * results differ between paths only by f32 summation order (relative ~ K * 2^-24 of sum |a b|).
 *
 * Threads: the kernels open their own OpenMP regions over output tiles and must not be called from inside
 * one. Inputs are read-only; any number of callers may use the same B at once. */
#ifndef LATHE_ENGINE_GEMM_BF16_H
#define LATHE_ENGINE_GEMM_BF16_H

#include <stddef.h>
#include <stdint.h>

void eng_gemm_bf16_nt(int M, int N, int K, const float *A, int lda, const uint16_t *B, int ldb, float *C,
                      int ldc, int accumulate);
void eng_gemm_bf16_nn(int M, int N, int K, const float *A, int lda, const uint16_t *B, int ldb, float *C,
                      int ldc, int accumulate);

/* "amx", "avx512bf16" or "avx2": the path the kernels above take in this process. */
const char *eng_bf16_path(void);

/* dst[i] = bf16(src[i]), round to nearest even (NaN stays NaN). */
void eng_bf16_from_f32(const float *src, uint16_t *dst, size_t n);

/* The compute knob (--compute, the job field "compute"): "f32" -> ENG_COMPUTE_F32, "bf16" -> ENG_COMPUTE_BF16
 * (engine/wmat.h), anything else (or NULL) -> -1. eng_compute_name is the inverse ("f32" for unknown values).
 */
int eng_compute_parse(const char *name);
const char *eng_compute_name(int compute);

/* Tests: force a path by name ("amx", "avx512bf16", "avx2"); returns the path now in use (the best available
 * one when the named path is missing on this CPU or NULL). */
const char *eng_bf16_set_path(const char *name);

#endif
