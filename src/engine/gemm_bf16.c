/* gemm_bf16.c: bf16-input, f32-accumulate GEMMs (see gemm_bf16.h).
 *
 * First cut: one portable C path (correct, slow) behind the contract so the callers can build; the
 * AVX512-BF16 and AMX micro-kernels follow. */
#include "engine/gemm_bf16.h"

#include <string.h>

static uint16_t bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static float bf16_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

void eng_bf16_from_f32(const float *src, uint16_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++)
        dst[i] = bf16_round(src[i]);
}

const char *eng_bf16_path(void) {
    return "generic";
}
const char *eng_bf16_set_path(const char *name) {
    (void)name;
    return eng_bf16_path();
}

void eng_gemm_bf16_nt(int M, int N, int K, const float *A, int lda, const uint16_t *B, int ldb, float *C,
                      int ldc, int accumulate) {
#pragma omp parallel for schedule(static)
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            float s = 0.0f;
            for (int k = 0; k < K; k++)
                s += bf16_f32(bf16_round(A[(size_t)m * lda + k])) * bf16_f32(B[(size_t)n * ldb + k]);
            C[(size_t)m * ldc + n] = accumulate ? C[(size_t)m * ldc + n] + s : s;
        }
}

void eng_gemm_bf16_nn(int M, int N, int K, const float *A, int lda, const uint16_t *B, int ldb, float *C,
                      int ldc, int accumulate) {
#pragma omp parallel for schedule(static)
    for (int m = 0; m < M; m++)
        for (int k = 0; k < K; k++) {
            float s = 0.0f;
            for (int n = 0; n < N; n++)
                s += bf16_f32(bf16_round(A[(size_t)m * lda + n])) * bf16_f32(B[(size_t)n * ldb + k]);
            C[(size_t)m * ldc + k] = accumulate ? C[(size_t)m * ldc + k] + s : s;
        }
}
