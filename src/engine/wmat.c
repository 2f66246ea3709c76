/* wmat.c: kernels over frozen weights in their stored format (see wmat.h for the contract).
 *
 * Block decoders. Every supported type is read 32 values at a time into four 8-float vectors (AVX2): F32 as
 * is, BF16 by a 16-bit shift, F16 through F16C, Q8_0 as q * d, Q4_0 as (q - 8) * d, Q4_1 as q * d + m, with
 * the same operations (and so the same roundings) as gguf.c's ggml-exact dequantizers. The k-quants (256
 * values a block, packed 6-bit scales) and Q5_0/Q5_1 go through gguf_dequantize into a per-thread row buffer.
 * Builds without AVX2 use gguf_dequantize for everything (same values, slower).
 *
 * GEMV (N <= ENG_WMAT_GEMV_MAX). nt: OpenMP over output rows; each thread decodes one row of W block by
 * block and multiplies it into up to four input rows at once (N > 4 runs in passes of four), with four
 * accumulators when N = 1 to hide FMA latency. nn (dX with few rows, used by tests and tiny batches): OpenMP
 * over column ranges of W (block-aligned), each thread dequantizes its segment of every row into a buffer
 * and adds A[n, r] times it to its own columns of C, so no two threads write the same output.
 *
 * GEMM (larger N). nt: one OpenMP region; each thread takes whole tiles of rows (distinct output columns),
 * dequantizes a tile into its own buffer and multiplies it with a single-threaded cblas_sgemm. nn (tiles
 * would add into the same C): tiles dequantized one after another into one buffer (threads over the tile's
 * rows), then one OpenBLAS-threaded sgemm per tile, accumulating (beta 1 after the first).
 *
 * SIMD: AVX-512 decoders (two 16-float vectors a block) where the build has AVX512F/BW, else AVX2. */
#include "engine/wmat.h"

#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "engine/safetensors.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define WM_SIMD 1
#else
#define WM_SIMD 0
#endif

#if __has_include("engine/gemm_bf16.h")
#include "engine/gemm_bf16.h"
#define WM_HAVE_BF16_GEMM 1
#else
#define WM_HAVE_BF16_GEMM 0
#endif

#define PAR_MIN ((size_t)1 << 14)

int eng_wmat_type_ok(int type) {
    switch (type) {
    case GGUF_F32:
    case GGUF_F16:
    case GGUF_BF16:
    case GGUF_Q4_0:
    case GGUF_Q4_1:
    case GGUF_Q5_0:
    case GGUF_Q5_1:
    case GGUF_Q8_0:
    case GGUF_Q4_K:
    case GGUF_Q5_K:
    case GGUF_Q6_K:
        return 1;
    }
    return 0;
}

int eng_wmat_init(eng_wmat *w, int type, int rows, int cols, const void *data) {
    memset(w, 0, sizeof *w);
    if (!eng_wmat_type_ok(type) || rows < 0 || cols <= 0 || cols % gguf_block_elems(type)) return -1;
    w->type = type, w->rows = rows, w->cols = cols, w->data = data;
    w->row_bytes = gguf_row_bytes(type, cols);
    return 0;
}

size_t eng_wmat_bytes(const eng_wmat *w) {
    return (size_t)w->rows * w->row_bytes;
}

static inline const uint8_t *row_ptr(const eng_wmat *w, int r) {
    return (const uint8_t *)w->data + (size_t)r * w->row_bytes;
}

/* 1 when the type has a 32-value SIMD decoder. */
static int has_dec32(int type) {
    return WM_SIMD && (type == GGUF_F32 || type == GGUF_BF16 || type == GGUF_F16 || type == GGUF_Q8_0 ||
                       type == GGUF_Q4_0 || type == GGUF_Q4_1);
}

#if WM_SIMD
static inline float h2f(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* Values [32 b, 32 b + 32) of a row into w[4]. */
static inline __attribute__((always_inline)) void dec32(int type, const uint8_t *row, int b, __m256 w[4]) {
    switch (type) {
    case GGUF_F32: {
        const float *p = (const float *)(const void *)(row + (size_t)b * 128);
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++)
            w[i] = _mm256_loadu_ps(p + 8 * i);
        break;
    }
    case GGUF_BF16: {
        const uint8_t *p = row + (size_t)b * 64;
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p + 16 * i)));
            w[i] = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
        }
        break;
    }
    case GGUF_F16: {
        const uint8_t *p = row + (size_t)b * 64;
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++)
            w[i] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(p + 16 * i)));
        break;
    }
    case GGUF_Q8_0: {
        const uint8_t *p = row + (size_t)b * 34;
        const __m256 d = _mm256_set1_ps(h2f(p));
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(p + 2 + 8 * i)));
            w[i] = _mm256_mul_ps(_mm256_cvtepi32_ps(q), d);
        }
        break;
    }
    case GGUF_Q4_0: {
        const uint8_t *p = row + (size_t)b * 18;
        const __m256 d = _mm256_set1_ps(h2f(p));
        const __m128i q = _mm_loadu_si128((const __m128i *)(const void *)(p + 2)), m4 = _mm_set1_epi8(0x0F),
                      e8 = _mm_set1_epi8(8);
        const __m128i lo = _mm_sub_epi8(_mm_and_si128(q, m4), e8),
                      hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m4), e8);
        w[0] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), d);
        w[1] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))), d);
        w[2] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), d);
        w[3] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))), d);
        break;
    }
    default: { /* GGUF_Q4_1 */
        const uint8_t *p = row + (size_t)b * 20;
        const __m256 d = _mm256_set1_ps(h2f(p)), m = _mm256_set1_ps(h2f(p + 2));
        const __m128i q = _mm_loadu_si128((const __m128i *)(const void *)(p + 4)), m4 = _mm_set1_epi8(0x0F);
        const __m128i lo = _mm_and_si128(q, m4), hi = _mm_and_si128(_mm_srli_epi16(q, 4), m4);
        w[0] = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), d), m);
        w[1] = _mm256_add_ps(
            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), d), m);
        w[2] = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), d), m);
        w[3] = _mm256_add_ps(
            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), d), m);
        break;
    }
    }
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define WM_512 1
/* Values [32 b, 32 b + 32) of a row into w[2] (16 floats each), with the operations of dec32. */
static inline __attribute__((always_inline)) void dec32x(int type, const uint8_t *row, int b, __m512 w[2]) {
    switch (type) {
    case GGUF_F32: {
        const float *p = (const float *)(const void *)(row + (size_t)b * 128);
        w[0] = _mm512_loadu_ps(p), w[1] = _mm512_loadu_ps(p + 16);
        break;
    }
    case GGUF_BF16: {
        const uint8_t *p = row + (size_t)b * 64;
#pragma GCC unroll 4
        for (int i = 0; i < 2; i++) {
            __m512i v =
                _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(p + 32 * i)));
            w[i] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
        }
        break;
    }
    case GGUF_F16: {
        const uint8_t *p = row + (size_t)b * 64;
#pragma GCC unroll 4
        for (int i = 0; i < 2; i++)
            w[i] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(p + 32 * i)));
        break;
    }
    case GGUF_Q8_0: {
        const uint8_t *p = row + (size_t)b * 34;
        const __m512 d = _mm512_set1_ps(h2f(p));
#pragma GCC unroll 4
        for (int i = 0; i < 2; i++) {
            __m512i q =
                _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p + 2 + 16 * i)));
            w[i] = _mm512_mul_ps(_mm512_cvtepi32_ps(q), d);
        }
        break;
    }
    case GGUF_Q4_0: {
        const uint8_t *p = row + (size_t)b * 18;
        const __m512 d = _mm512_set1_ps(h2f(p));
        const __m128i q = _mm_loadu_si128((const __m128i *)(const void *)(p + 2)), m4 = _mm_set1_epi8(0x0F),
                      e8 = _mm_set1_epi8(8);
        const __m128i lo = _mm_sub_epi8(_mm_and_si128(q, m4), e8),
                      hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m4), e8);
        w[0] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)), d);
        w[1] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)), d);
        break;
    }
    default: { /* GGUF_Q4_1 */
        const uint8_t *p = row + (size_t)b * 20;
        const __m512 d = _mm512_set1_ps(h2f(p)), m = _mm512_set1_ps(h2f(p + 2));
        const __m128i q = _mm_loadu_si128((const __m128i *)(const void *)(p + 4)), m4 = _mm_set1_epi8(0x0F);
        const __m128i lo = _mm_and_si128(q, m4), hi = _mm_and_si128(_mm_srli_epi16(q, 4), m4);
        w[0] = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)), d), m);
        w[1] = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi)), d), m);
        break;
    }
    }
}
#else
#define WM_512 0
#endif

/* out[n] = row . A[n, :cols] for n < NN (1..4); the row is decoded once per block. */
static inline __attribute__((always_inline)) void dot_rows(int type, const uint8_t *row, int cols, int NN,
                                                           const float *A, int lda, float *out) {
    const int nb = cols / 32;
#if WM_512
    {
        const int nacc = NN == 1 ? 4 : 2;
        __m512 acc[4][4];
#pragma GCC unroll 4
        for (int n = 0; n < NN; n++)
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++)
                acc[n][i] = _mm512_setzero_ps();
        int b = 0;
        const size_t bb = gguf_block_bytes(type) * (type == GGUF_F32                        ? 32
                                                    : type == GGUF_BF16 || type == GGUF_F16 ? 32
                                                                                            : 1);
        for (; b + 2 <= nb; b += 2) {
            _mm_prefetch((const char *)row + (size_t)(b + 8) * bb, _MM_HINT_T0);
            __m512 w[4];
            dec32x(type, row, b, w);
            dec32x(type, row, b + 1, w + 2);
#pragma GCC unroll 4
            for (int n = 0; n < NN; n++) {
                const float *x = A + (size_t)n * lda + (size_t)b * 32;
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++)
                    acc[n][i % nacc] = _mm512_fmadd_ps(w[i], _mm512_loadu_ps(x + 16 * i), acc[n][i % nacc]);
            }
        }
        for (; b < nb; b++) {
            __m512 w[2];
            dec32x(type, row, b, w);
#pragma GCC unroll 4
            for (int n = 0; n < NN; n++) {
                const float *x = A + (size_t)n * lda + (size_t)b * 32;
#pragma GCC unroll 4
                for (int i = 0; i < 2; i++)
                    acc[n][i] = _mm512_fmadd_ps(w[i], _mm512_loadu_ps(x + 16 * i), acc[n][i]);
            }
        }
#pragma GCC unroll 4
        for (int n = 0; n < NN; n++) {
            __m512 t = _mm512_add_ps(acc[n][0], acc[n][1]);
            if (nacc == 4) t = _mm512_add_ps(t, _mm512_add_ps(acc[n][2], acc[n][3]));
            out[n] = _mm512_reduce_add_ps(t);
        }
    }
#else
    const int nacc = NN == 1 ? 4 : 2;
    __m256 acc[4][4];
#pragma GCC unroll 4
    for (int n = 0; n < NN; n++)
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++)
            acc[n][i] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        __m256 w[4];
        dec32(type, row, b, w);
#pragma GCC unroll 4
        for (int n = 0; n < NN; n++) {
            const float *x = A + (size_t)n * lda + (size_t)b * 32;
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++)
                acc[n][i % nacc] = _mm256_fmadd_ps(w[i], _mm256_loadu_ps(x + 8 * i), acc[n][i % nacc]);
        }
    }
#pragma GCC unroll 4
    for (int n = 0; n < NN; n++) {
        __m256 s = _mm256_add_ps(acc[n][0], acc[n][1]);
        if (nacc == 4) s = _mm256_add_ps(s, _mm256_add_ps(acc[n][2], acc[n][3]));
        out[n] = hsum(s);
    }
#endif
    /* F32/BF16/F16 rows need not be a multiple of 32 */
    for (int c = nb * 32; c < cols; c++) {
        float v = type == GGUF_F32    ? ((const float *)(const void *)row)[c]
                  : type == GGUF_BF16 ? st_bf16_to_f32((uint16_t)(row[2 * c] | row[2 * c + 1] << 8))
                                      : st_f16_to_f32((uint16_t)(row[2 * c] | row[2 * c + 1] << 8));
#pragma GCC unroll 4
        for (int n = 0; n < NN; n++)
            out[n] += v * A[(size_t)n * lda + c];
    }
}

#if WM_512
/* Q4_1, one input row: sum_b d_b (q_b . x_b) + sum_b m_b sx_b with sx_b = the sum of x over block b
 * (precomputed once per call), which equals the dequantized dot product up to summation order and saves the
 * per-value multiply-add of q d + m. mbuf: nb floats of scratch. */
static float dot_q4_1_n1(const uint8_t *row, int nb, const float *x, const float *sx, float *mbuf) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    const __m128i m4 = _mm_set1_epi8(0x0F);
    int b = 0;
    for (; b < nb; b++) {
        const uint8_t *p = row + (size_t)b * 20;
        _mm_prefetch((const char *)p + 320, _MM_HINT_T0);
        uint32_t dm;
        memcpy(&dm, p, 4);
        const __m128 dmf = _mm_cvtph_ps(_mm_cvtsi32_si128((int)dm)); /* d, m */
        const __m128i q = _mm_loadu_si128((const __m128i *)(const void *)(p + 4));
        const __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(q, m4)));
        const __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(q, 4), m4)));
        __m512 t = _mm512_mul_ps(q0, _mm512_loadu_ps(x + (size_t)b * 32));
        t = _mm512_fmadd_ps(q1, _mm512_loadu_ps(x + (size_t)b * 32 + 16), t);
        const __m512 d = _mm512_broadcastss_ps(dmf);
        if (b & 1)
            a1 = _mm512_fmadd_ps(d, t, a1);
        else
            a0 = _mm512_fmadd_ps(d, t, a0);
        mbuf[b] = _mm_cvtss_f32(_mm_movehdup_ps(dmf));
    }
    __m512 am = _mm512_setzero_ps();
    for (b = 0; b + 16 <= nb; b += 16)
        am = _mm512_fmadd_ps(_mm512_loadu_ps(mbuf + b), _mm512_loadu_ps(sx + b), am);
    float r = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), am));
    for (; b < nb; b++)
        r += mbuf[b] * sx[b];
    return r;
}
#endif

#define DOT_CASE(T)                                                                                          \
    case T:                                                                                                  \
        switch (NN) {                                                                                        \
        case 1:                                                                                              \
            dot_rows(T, row, cols, 1, A, lda, out);                                                          \
            break;                                                                                           \
        case 2:                                                                                              \
            dot_rows(T, row, cols, 2, A, lda, out);                                                          \
            break;                                                                                           \
        case 3:                                                                                              \
            dot_rows(T, row, cols, 3, A, lda, out);                                                          \
            break;                                                                                           \
        default:                                                                                             \
            dot_rows(T, row, cols, 4, A, lda, out);                                                          \
            break;                                                                                           \
        }                                                                                                    \
        break

/* Dispatch with the type and NN as compile-time constants inside each instance. */
static void dot_dispatch(int type, const uint8_t *row, int cols, int NN, const float *A, int lda,
                         float *out) {
    switch (type) {
        DOT_CASE(GGUF_F32);
        DOT_CASE(GGUF_BF16);
        DOT_CASE(GGUF_F16);
        DOT_CASE(GGUF_Q8_0);
        DOT_CASE(GGUF_Q4_0);
    default:
        DOT_CASE(GGUF_Q4_1);
    }
}
#endif

/* Columns [c0, c1) of row r as f32 into dst (c0, c1 multiples of the block size, or c1 == cols). */
static void deq_range(const eng_wmat *w, int r, int c0, int c1, float *dst) {
    const uint8_t *row = row_ptr(w, r);
#if WM_SIMD
    if (has_dec32(w->type)) {
        int c = c0;
        if (c0 % 32 == 0) {
            for (; c + 32 <= c1; c += 32) {
                __m256 v[4];
                dec32(w->type, row, c / 32, v);
                for (int i = 0; i < 4; i++)
                    _mm256_storeu_ps(dst + (c - c0) + 8 * i, v[i]);
            }
        }
        if (c < c1) { /* F32/BF16/F16 tails only: quantized ranges are whole blocks */
            int es = w->type == GGUF_F32 ? 4 : 2;
            gguf_dequantize(w->type, row + (size_t)c * es, dst + (c - c0), c1 - c);
        }
        return;
    }
#endif
    const int be = gguf_block_elems(w->type);
    gguf_dequantize(w->type, row + (size_t)(c0 / be) * gguf_block_bytes(w->type), dst, c1 - c0);
}

void eng_wmat_rows_f32(const eng_wmat *w, int r0, int n, float *dst) {
#pragma omp parallel for schedule(static) if ((size_t)n * w->cols >= PAR_MIN)
    for (int i = 0; i < n; i++)
        deq_range(w, r0 + i, 0, w->cols, dst + (size_t)i * w->cols);
}

void eng_wmat_gather_f32(const eng_wmat *w, const int *idx, int n, float *dst) {
#pragma omp parallel for schedule(static) if ((size_t)n * w->cols >= PAR_MIN)
    for (int i = 0; i < n; i++)
        deq_range(w, idx[i], 0, w->cols, dst + (size_t)i * w->cols);
}

/* ---- GEMV (small N) ---- */

static void gemv_nt(const eng_wmat *w, int N, const float *A, int lda, float *C, int ldc, int accumulate) {
    const int K = w->cols, R = w->rows, fused = has_dec32(w->type);
#if WM_512
    if (w->type == GGUF_Q4_1 && N == 1) {
        const int nb = K / 32;
        float *sx = aligned_alloc(64, ((size_t)nb * sizeof(float) + 63) & ~(size_t)63);
        for (int b = 0; b < nb; b++) {
            float t = 0;
            for (int i = 0; i < 32; i++)
                t += A[(size_t)b * 32 + i];
            sx[b] = t;
        }
#pragma omp parallel if ((size_t)R * K >= PAR_MIN)
        {
            float *mb = aligned_alloc(64, ((size_t)nb * sizeof(float) + 63) & ~(size_t)63);
#pragma omp for schedule(static)
            for (int r = 0; r < R; r++) {
                float v = dot_q4_1_n1(row_ptr(w, r), nb, A, sx, mb);
                C[r] = accumulate ? C[r] + v : v;
            }
            free(mb);
        }
        free(sx);
        return;
    }
#endif
#pragma omp parallel if ((size_t)R * K >= PAR_MIN)
    {
        float *buf = fused ? NULL : aligned_alloc(64, ((size_t)K * sizeof(float) + 63) & ~(size_t)63);
#pragma omp for schedule(static)
        for (int r = 0; r < R; r++) {
            const uint8_t *row = row_ptr(w, r);
            int type = w->type;
            if (!fused) deq_range(w, r, 0, K, buf), row = (const uint8_t *)buf, type = GGUF_F32;
            for (int n0 = 0; n0 < N; n0 += 4) {
                const int NN = N - n0 < 4 ? N - n0 : 4;
                float out[4];
#if WM_SIMD
                dot_dispatch(type, row, K, NN, A + (size_t)n0 * lda, lda, out);
#else
                (void)type;
                (void)row;
                for (int n = 0; n < NN; n++) {
                    float s = 0;
                    for (int c = 0; c < K; c++)
                        s += buf[c] * A[(size_t)(n0 + n) * lda + c];
                    out[n] = s;
                }
#endif
                for (int n = 0; n < NN; n++) {
                    float *y = C + (size_t)(n0 + n) * ldc + r;
                    *y = accumulate ? *y + out[n] : out[n];
                }
            }
        }
        free(buf);
    }
}

/* C[N, cols] (+)= A[N, rows] W with few rows: threads own block-aligned column ranges. */
static void gemv_nn(const eng_wmat *w, int N, const float *A, int lda, float *C, int ldc, int accumulate) {
    const int K = w->cols, R = w->rows,
              be = w->type == GGUF_F32 || w->type == GGUF_BF16 || w->type == GGUF_F16
                       ? 32
                       : gguf_block_elems(w->type);
    const int units = (K + be - 1) / be;
#pragma omp parallel if ((size_t)R * K >= PAR_MIN)
    {
        const int nt = omp_get_num_threads(), t = omp_get_thread_num();
        const int u0 = (int)((long long)units * t / nt), u1 = (int)((long long)units * (t + 1) / nt);
        const int c0 = u0 * be, c1 = u1 * be < K ? u1 * be : K;
        if (c1 > c0) {
            float *buf = aligned_alloc(64, ((size_t)(c1 - c0) * sizeof(float) + 63) & ~(size_t)63);
            if (!accumulate)
                for (int n = 0; n < N; n++)
                    memset(C + (size_t)n * ldc + c0, 0, (size_t)(c1 - c0) * sizeof(float));
            for (int r = 0; r < R; r++) {
                deq_range(w, r, c0, c1, buf);
                for (int n = 0; n < N; n++) {
                    const float a = A[(size_t)n * lda + r];
                    float *restrict y = C + (size_t)n * ldc + c0;
#pragma omp simd
                    for (int c = 0; c < c1 - c0; c++)
                        y[c] += a * buf[c];
                }
            }
            free(buf);
        }
    }
}

/* ---- tiled GEMM (larger N) ---- */

/* Rows per tile: about 1 MiB of f32, 64..256 rows, a multiple of 16. */
static int tile_rows(int K) {
    int tr = (int)(((size_t)1 << 18) / (size_t)K);
    tr = tr < 64 ? 64 : tr > 256 ? 256 : tr;
    return tr & ~15;
}

static void tile_f32(const eng_wmat *w, int r0, int n, float *buf) {
    const int K = w->cols;
#pragma omp parallel for schedule(static) if ((size_t)n * K >= PAR_MIN)
    for (int i = 0; i < n; i++)
        deq_range(w, r0 + i, 0, K, buf + (size_t)i * K);
}

#if WM_HAVE_BF16_GEMM
/* Rows [r0, r0 + n) as bf16 (round to nearest even) into buf[n, K]. */
static void tile_bf16(const eng_wmat *w, int r0, int n, uint16_t *buf, float *fbuf) {
    const int K = w->cols;
#pragma omp parallel for schedule(static) if ((size_t)n * K >= PAR_MIN)
    for (int i = 0; i < n; i++) {
        float *f = fbuf + (size_t)omp_get_thread_num() * K;
        deq_range(w, r0 + i, 0, K, f);
        eng_bf16_from_f32(f, buf + (size_t)i * K, (size_t)K); /* vectorized, same rounding */
    }
}
#endif

static void gemm_tiled(const eng_wmat *w, int N, const float *A, int lda, float *C, int ldc, int accumulate,
                       int nn, int compute) {
    const int K = w->cols, R = w->rows, TR = tile_rows(K);
#if WM_HAVE_BF16_GEMM
    if (compute == ENG_COMPUTE_BF16) {
        const int stored = w->type == GGUF_BF16 && ((uintptr_t)w->data & 1) == 0;
        uint16_t *tb = stored ? NULL : malloc((size_t)TR * K * sizeof(uint16_t));
        float *fb = stored ? NULL : malloc((size_t)omp_get_max_threads() * K * sizeof(float));
        const int step = stored ? R : TR; /* stored bf16: one call, gemm_bf16 blocks it itself */
        for (int r0 = 0; r0 < R; r0 += step) {
            const int n = R - r0 < step ? R - r0 : step;
            const uint16_t *B = stored ? (const uint16_t *)(const void *)row_ptr(w, r0) : tb;
            if (!stored) tile_bf16(w, r0, n, tb, fb);
            if (!nn)
                eng_gemm_bf16_nt(N, n, K, A, lda, B, K, C + r0, ldc, accumulate);
            else
                eng_gemm_bf16_nn(N, n, K, A + r0, lda, B, K, C, ldc, accumulate || r0 > 0);
        }
        free(tb), free(fb);
        return;
    }
#else
    (void)compute; /* TODO(h10b): bf16 tiles go to gemm_bf16.h once it is in the tree */
#endif
    if (w->type == GGUF_F32) {
        const float *W = w->data;
        if (!nn)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, R, K, 1.0f, A, lda, W, K,
                        accumulate ? 1.0f : 0.0f, C, ldc);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, K, R, 1.0f, A, lda, W, K,
                        accumulate ? 1.0f : 0.0f, C, ldc);
        return;
    }
    if (!nn) {
        /* Every thread owns whole tiles (distinct output columns): it dequantizes a tile into its own buffer
         * and multiplies it with a single-threaded sgemm (BLAS inside a parallel region runs on the calling
         * thread), so there is one fork/join per call instead of two per tile. */
        const int nt = omp_get_max_threads();
        int tr = (R + 4 * nt - 1) / (4 * nt);
        tr = ((tr + 15) & ~15) < TR ? ((tr + 15) & ~15) : TR;
        const int ntiles = (R + tr - 1) / tr;
#pragma omp parallel if (ntiles > 1 && (size_t)R * K >= PAR_MIN)
        {
            float *buf = aligned_alloc(64, (size_t)tr * K * sizeof(float));
#pragma omp for schedule(dynamic, 1)
            for (int t = 0; t < ntiles; t++) {
                const int r0 = t * tr, n = R - r0 < tr ? R - r0 : tr;
                for (int i = 0; i < n; i++)
                    deq_range(w, r0 + i, 0, K, buf + (size_t)i * K);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, n, K, 1.0f, A, lda, buf, K,
                            accumulate ? 1.0f : 0.0f, C + r0, ldc);
            }
            free(buf);
        }
        return;
    }
    float *buf = aligned_alloc(64, (size_t)TR * K * sizeof(float));
    for (int r0 = 0; r0 < R; r0 += TR) {
        const int n = R - r0 < TR ? R - r0 : TR;
        tile_f32(w, r0, n, buf);
        if (!nn)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, n, K, 1.0f, A, lda, buf, K,
                        accumulate ? 1.0f : 0.0f, C + r0, ldc);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, K, n, 1.0f, A + r0, lda, buf, K,
                        accumulate || r0 > 0 ? 1.0f : 0.0f, C, ldc);
    }
    free(buf);
}

void eng_wmat_nt(const eng_wmat *w, int N, const float *A, int lda, float *C, int ldc, int accumulate,
                 int compute) {
    if (N <= 0 || w->rows <= 0) return;
    if (N <= ENG_WMAT_GEMV_MAX)
        gemv_nt(w, N, A, lda, C, ldc, accumulate);
    else
        gemm_tiled(w, N, A, lda, C, ldc, accumulate, 0, compute);
}

void eng_wmat_nn(const eng_wmat *w, int N, const float *A, int lda, float *C, int ldc, int accumulate,
                 int compute) {
    if (N <= 0) return;
    if (w->rows <= 0) {
        if (!accumulate)
            for (int n = 0; n < N; n++)
                memset(C + (size_t)n * ldc, 0, (size_t)w->cols * sizeof(float));
        return;
    }
    if (N <= ENG_WMAT_GEMV_MAX)
        gemv_nn(w, N, A, lda, C, ldc, accumulate);
    else
        gemm_tiled(w, N, A, lda, C, ldc, accumulate, 1, compute);
}

void eng_wmat_linear_forward(float *out, const float *inp, const eng_wmat *w, const float *bias, int N,
                             int compute) {
    const int O = w->rows;
    eng_wmat_nt(w, N, inp, w->cols, out, O, 0, compute);
    if (!bias) return;
#pragma omp parallel for schedule(static) if ((size_t)N * O >= PAR_MIN)
    for (int i = 0; i < N; i++) {
        float *restrict y = out + (size_t)i * O;
#pragma omp simd
        for (int o = 0; o < O; o++)
            y[o] += bias[o];
    }
}

void eng_wmat_linear_backward(float *dinp, const float *dout, const eng_wmat *w, int N, int compute) {
    eng_wmat_nn(w, N, dout, w->rows, dinp, w->cols, 1, compute);
}
