/* gemm_bf16.c: bf16-input, f32-accumulate GEMMs (see gemm_bf16.h), dispatched on the CPU at run time.
 *
 * Both operations reduce to one problem: C[M, NC] (+)= bf16(A)[M, R] Bt[R, NC], where R is the reduction
 * (K for nt, N for nn) and NC the output columns (N for nt, K for nn); they differ only in how B is read
 * when it is packed.
 *
 * Paths. The code of each path is compiled with function-level target attributes, so the file builds without
 * -march flags and the binary runs on any x86-64; detect() picks the best path from cpuid/xgetbv once.
 *  - amx: A is packed as bf16 rows [Mp][Rp] (Rp = R rounded up to 32, zero padded), B as "VNNI" panels of
 *    16 output columns, [Rp/2][16][2] (the two bf16 of one reduction pair side by side): exactly the layout
 *    of an AMX B tile, so a tile is 16 consecutive 64-byte rows. The micro-kernel holds a 32 x 32 block of C
 *    in four accumulator tiles (tmm0-3), two A tiles (tmm4-5) and two B tiles (tmm6-7), and steps the
 *    reduction by 32. The Linux permission for the tile data (arch_prctl ARCH_REQ_XCOMP_PERM) is requested
 *    once; the tile configuration is loaded per thread inside the parallel region.
 *  - avx512bf16: the same packing; vdpbf16ps on 8 rows x 32 columns (16 zmm accumulators), the A pair
 *    broadcast as one 32-bit element, the B pair-rows loaded as they lie in the panel.
 *  - avx2: no bf16 arithmetic on the CPU, so A is rounded to bf16 and kept as f32, B widened to f32 (exact,
 *    a shift), and OpenBLAS's SGEMM does the products (exact in f32: 8 + 8 significand bits) and the f32
 * sums.
 *  - generic: plain C, for non-x86 builds and CPUs without AVX2.
 * Packing is vectorized on the AVX-512 paths (the B transpose of nt is a 16 x 16 transpose of 32-bit pairs),
 * since at M = 512 the packing of B costs as much per element as the AMX products.
 *
 * Threads: one OpenMP region per call and no barrier inside it. The 32 x 32 tiles of C are split into a grid
 * of rectangles, one per thread (columns first, then rows); each thread packs its own A rows and, in chunks
 * of at most ~1 MiB (so they stay in L2), its own B panels, then walks its tiles rows outer (the A block
 * stays in L1 while the thread walks B). Packing A or B twice costs threads / NC or threads / M of the
 * products. Each tile is computed into a local 32 x 32 buffer and added to or stored into C (masked at the
 * edges), so padding never reaches C. Reductions longer than GB_RBLOCK run as blocks that accumulate. The
 * avx2 path calls cblas_sgemm outside any region (OpenBLAS is the OpenMP build and uses the same pool). */
#include "engine/gemm_bf16.h"

#include "engine/wmat.h"

#include <cblas.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define GB_X86 1
#else
#define GB_X86 0
#endif

enum { P_GENERIC = 0, P_AVX2, P_AVX512, P_AMX, P_COUNT };
static const char *const PATH_NAME[P_COUNT] = {"generic", "avx2", "avx512bf16", "amx"};

static int g_best = P_GENERIC;
static int g_path = -1; /* forced path; -1: best */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

int eng_compute_parse(const char *name) {
    if (!name) return -1;
    if (!strcmp(name, "f32")) return ENG_COMPUTE_F32;
    if (!strcmp(name, "bf16")) return ENG_COMPUTE_BF16;
    return -1;
}

const char *eng_compute_name(int compute) {
    return compute == ENG_COMPUTE_BF16 ? "bf16" : "f32";
}

/* ---- scalar helpers ---- */

static inline uint16_t bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float bf16_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void cvt_generic(const float *s, uint16_t *d, size_t n) {
    for (size_t i = 0; i < n; i++)
        d[i] = bf16_round(s[i]);
}

/* ---- run-time detection ---- */

#if GB_X86
static uint64_t xgetbv0(void) {
    uint32_t a, d;
    __asm__ volatile("xgetbv" : "=a"(a), "=d"(d) : "c"(0));
    return ((uint64_t)d << 32) | a;
}

/* Linux keeps the AMX tile data state off until a process asks for it. */
static int amx_permission(void) {
#if defined(__linux__) && defined(SYS_arch_prctl)
    enum { ARCH_GET_XCOMP_PERM = 0x1022, ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) return 0;
    unsigned long mask = 0;
    if (syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &mask) != 0) return 0;
    return (mask >> XFEATURE_XTILEDATA) & 1u;
#else
    return 0;
#endif
}
#endif

static void detect(void) {
    int best = P_GENERIC;
#if GB_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) goto done;
    const int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    if (!osxsave || !avx) goto done;
    const uint64_t xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6) goto done; /* XMM and YMM state */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) goto done;
    const int avx2 = (b >> 5) & 1, avx512f = (b >> 16) & 1, avx512bw = (b >> 30) & 1;
    const int amx_bf16 = (d >> 22) & 1, amx_tile = (d >> 24) & 1;
    unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
    __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1);
    const int avx512bf16 = (a1 >> 5) & 1;
    if (avx2 && fma) best = P_AVX2;
    if (best == P_AVX2 && avx512f && avx512bw && avx512bf16 && (xcr0 & 0xe0) == 0xe0) best = P_AVX512;
    if (best == P_AVX512 && amx_tile && amx_bf16 && amx_permission()) best = P_AMX;
done:
#endif
    g_best = best;
    const char *e = getenv("LATHE_BF16_PATH"); /* forces a path, as eng_bf16_set_path does */
    for (int i = 0; e && i < P_COUNT; i++)
        if (!strcmp(e, PATH_NAME[i]) && i <= best) g_path = i;
}

static int path_now(void) {
    pthread_once(&g_once, detect);
    int p = __atomic_load_n(&g_path, __ATOMIC_RELAXED);
    return p < 0 ? g_best : p;
}

const char *eng_bf16_path(void) {
    return PATH_NAME[path_now()];
}

const char *eng_bf16_set_path(const char *name) {
    pthread_once(&g_once, detect);
    int p = -1;
    for (int i = 0; name && i < P_COUNT; i++)
        if (!strcmp(name, PATH_NAME[i]) && i <= g_best) p = i;
    __atomic_store_n(&g_path, p, __ATOMIC_RELAXED);
    return eng_bf16_path();
}

/* ---- x86 vector code ---- */

#if GB_X86
#define T_AVX2 __attribute__((target("avx2,fma")))
#define T_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define T_AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16")))

/* f32 -> bf16 bits (in the low half of each 32-bit lane), round to nearest even, NaN kept quiet. */
T_AVX512 static inline __m512i rne16_512(__m512i u) {
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                  _mm512_set1_epi32(0x7f800000));
    return _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
}

T_AVX512 static void cvt_avx512(const float *s, uint16_t *d, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(d + i), _mm512_cvtepi32_epi16(rne16_512(_mm512_loadu_si512(s + i))));
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        _mm256_mask_storeu_epi16(d + i, m,
                                 _mm512_cvtepi32_epi16(rne16_512(_mm512_maskz_loadu_epi32(m, s + i))));
    }
}

/* f32 -> the f32 value of its bf16 rounding (AVX2 path): same rounding as rne16, kept in the high half. */
T_AVX2 static inline __m256i rne32_256(__m256i u) {
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    r = _mm256_and_si256(r, _mm256_set1_epi32((int)0xffff0000u));
    const __m256i abs = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
    const __m256i nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f800000)); /* abs is non-negative */
    const __m256i q = _mm256_or_si256(_mm256_and_si256(u, _mm256_set1_epi32((int)0xffff0000u)),
                                      _mm256_set1_epi32(0x00400000));
    return _mm256_blendv_epi8(r, q, nan);
}

T_AVX2 static void cvt_avx2(const float *s, uint16_t *d, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i lo = _mm256_srli_epi32(rne32_256(_mm256_loadu_si256((const __m256i *)(s + i))), 16);
        __m256i hi = _mm256_srli_epi32(rne32_256(_mm256_loadu_si256((const __m256i *)(s + i + 8))), 16);
        __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xD8);
        _mm256_storeu_si256((__m256i *)(d + i), p);
    }
    cvt_generic(s + i, d + i, n - i);
}

/* dst[i] = f32(bf16(src[i])) */
T_AVX2 static void round_f32_avx2(const float *s, float *d, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_si256((__m256i *)(d + i), rne32_256(_mm256_loadu_si256((const __m256i *)(s + i))));
    for (; i < n; i++)
        d[i] = bf16_f32(bf16_round(s[i]));
}

T_AVX2 static void widen_avx2(const uint16_t *s, float *d, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + i)));
        _mm256_storeu_si256((__m256i *)(d + i), _mm256_slli_epi32(v, 16));
    }
    for (; i < n; i++)
        d[i] = bf16_f32(s[i]);
}
#endif

void eng_bf16_from_f32(const float *src, uint16_t *dst, size_t n) {
#if GB_X86
    const int p = path_now();
    if (p >= P_AVX512)
        cvt_avx512(src, dst, n);
    else if (p == P_AVX2)
        cvt_avx2(src, dst, n);
    else
#endif
        cvt_generic(src, dst, n);
}

/* ---- the problem, and packing ---- */

typedef struct {
    int op; /* 0: nt, 1: nn */
    int M, NC, R;
    const float *A;
    int lda;
    const uint16_t *B;
    int ldb;
    float *C;
    int ldc, acc;
    int Mp, Rp; /* M rounded up to 32, R rounded up to 32 */
} gb_job;

static int up32(int x) {
    return (x + 31) & ~31;
}

/* Packed A row m (zeros past R, and for rows >= M). */
static void pack_a_row(const gb_job *j, int m, uint16_t *dst, int path) {
    if (m >= j->M) {
        memset(dst, 0, sizeof(uint16_t) * (size_t)j->Rp);
        return;
    }
    const float *src = j->A + (size_t)m * j->lda;
#if GB_X86
    if (path >= P_AVX512)
        cvt_avx512(src, dst, (size_t)j->R);
    else
#endif
        cvt_generic(src, dst, (size_t)j->R);
    memset(dst + j->R, 0, sizeof(uint16_t) * (size_t)(j->Rp - j->R));
}

/* B element (reduction r, output column c). */
static inline uint16_t b_at(const gb_job *j, int r, int c) {
    return j->op == 0 ? j->B[(size_t)c * j->ldb + r] : j->B[(size_t)r * j->ldb + c];
}

/* One VNNI panel: output columns c0 .. c0+15, [Rp/2][16][2]; zeros outside R x NC. */
static void pack_panel_generic(const gb_job *j, int c0, uint16_t *dst) {
    for (int q = 0; q < j->Rp / 2; q++)
        for (int jj = 0; jj < 16; jj++)
            for (int h = 0; h < 2; h++) {
                const int r = 2 * q + h, c = c0 + jj;
                dst[(size_t)q * 32 + jj * 2 + h] = (r < j->R && c < j->NC) ? b_at(j, r, c) : 0;
            }
}

#if GB_X86
/* nt: the panel's 16 rows of B (row = output column) hold the pairs as 32-bit elements, so a block of 16
 * pairs is a 16 x 16 transpose of 32-bit elements. */
T_AVX512 static void pack_panel_nt_avx512(const gb_job *j, int c0, uint16_t *dst) {
    const int ncol = j->NC - c0 < 16 ? j->NC - c0 : 16;
    for (int k0 = 0; k0 < j->Rp; k0 += 32) {
        const int left = j->R - k0;
        const __mmask32 m = left >= 32 ? 0xffffffffu : left <= 0 ? 0u : (__mmask32)((1u << left) - 1u);
        __m512i r[16], t[16], u[16];
        for (int i = 0; i < 16; i++)
            r[i] = i < ncol ? _mm512_maskz_loadu_epi16(m, j->B + (size_t)(c0 + i) * j->ldb + k0)
                            : _mm512_setzero_si512();
        for (int i = 0; i < 16; i += 2) {
            t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
            t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
        }
        for (int g = 0; g < 16; g += 4) {
            u[g + 0] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
            u[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
            u[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
            u[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
        }
        uint16_t *out = dst + (size_t)(k0 / 2) * 32;
        for (int e = 0; e < 4; e++) {
            const __m512i v0 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0x44),
                          v1 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0xEE);
            const __m512i w0 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0x44),
                          w1 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0xEE);
            _mm512_storeu_si512(out + (size_t)(0 + e) * 32, _mm512_shuffle_i32x4(v0, w0, 0x88));
            _mm512_storeu_si512(out + (size_t)(4 + e) * 32, _mm512_shuffle_i32x4(v0, w0, 0xDD));
            _mm512_storeu_si512(out + (size_t)(8 + e) * 32, _mm512_shuffle_i32x4(v1, w1, 0x88));
            _mm512_storeu_si512(out + (size_t)(12 + e) * 32, _mm512_shuffle_i32x4(v1, w1, 0xDD));
        }
    }
}

/* nn: reduction rows 2q and 2q+1 of B, 16 columns each, interleaved into 32-bit pairs. */
T_AVX512 static void pack_panel_nn_avx512(const gb_job *j, int c0, uint16_t *dst) {
    const int ncol = j->NC - c0 < 16 ? j->NC - c0 : 16; /* <= 0 for the padding panels */
    const __mmask16 m = ncol <= 0 ? 0 : (__mmask16)((1u << ncol) - 1u);
    for (int q = 0; q < j->Rp / 2; q++) {
        const int r0 = 2 * q, r1 = 2 * q + 1;
        __m256i lo =
            r0 < j->R ? _mm256_maskz_loadu_epi16(m, j->B + (size_t)r0 * j->ldb + c0) : _mm256_setzero_si256();
        __m256i hi =
            r1 < j->R ? _mm256_maskz_loadu_epi16(m, j->B + (size_t)r1 * j->ldb + c0) : _mm256_setzero_si256();
        __m512i v =
            _mm512_or_si512(_mm512_cvtepu16_epi32(lo), _mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16));
        _mm512_storeu_si512(dst + (size_t)q * 32, v);
    }
}

/* C rows i0.., columns n0..: store or add the local 32 x 32 block (row stride 32). */
T_AVX512 static void write_tile_avx512(const gb_job *j, int i0, int n0, const float *cb) {
    const int rows = j->M - i0 < 32 ? j->M - i0 : 32, cols = j->NC - n0 < 32 ? j->NC - n0 : 32;
    const __mmask16 m0 = cols >= 16 ? 0xffff : (__mmask16)((1u << cols) - 1u);
    const __mmask16 m1 = cols >= 32 ? 0xffff : cols <= 16 ? 0 : (__mmask16)((1u << (cols - 16)) - 1u);
    for (int i = 0; i < rows; i++) {
        float *c = j->C + (size_t)(i0 + i) * j->ldc + n0;
        __m512 a = _mm512_loadu_ps(cb + i * 32), b = _mm512_loadu_ps(cb + i * 32 + 16);
        if (j->acc) {
            a = _mm512_add_ps(a, _mm512_maskz_loadu_ps(m0, c));
            b = _mm512_add_ps(b, _mm512_maskz_loadu_ps(m1, c + 16));
        }
        _mm512_mask_storeu_ps(c, m0, a);
        _mm512_mask_storeu_ps(c + 16, m1, b);
    }
}

/* MR rows x 32 columns of vdpbf16ps, accumulators in registers (written out so GCC keeps them there). */
#define GB_ROW(i)                                                                                            \
    do {                                                                                                     \
        int32_t pr;                                                                                          \
        memcpy(&pr, a + (size_t)(i)*Rp + 2 * q, 4);                                                          \
        const __m512bh av = (__m512bh)_mm512_set1_epi32(pr);                                                 \
        c##i##0 = _mm512_dpbf16_ps(c##i##0, av, b0);                                                         \
        c##i##1 = _mm512_dpbf16_ps(c##i##1, av, b1);                                                         \
    } while (0)
#define GB_DECL(i) __m512 c##i##0 = _mm512_setzero_ps(), c##i##1 = _mm512_setzero_ps()
#define GB_STORE(i)                                                                                          \
    do {                                                                                                     \
        _mm512_storeu_ps(cb + (i)*32, c##i##0);                                                              \
        _mm512_storeu_ps(cb + (i)*32 + 16, c##i##1);                                                         \
    } while (0)

T_AVX512 static void mk_avx512_12(const uint16_t *a, int Rp, const uint16_t *p0, const uint16_t *p1,
                                  float *cb) {
    GB_DECL(0);
    GB_DECL(1);
    GB_DECL(2);
    GB_DECL(3);
    GB_DECL(4);
    GB_DECL(5);
    GB_DECL(6);
    GB_DECL(7);
    GB_DECL(8);
    GB_DECL(9);
    GB_DECL(a);
    GB_DECL(b);
    for (int q = 0; q < Rp / 2; q++) {
        const __m512bh b0 = (__m512bh)_mm512_load_si512(p0 + (size_t)q * 32);
        const __m512bh b1 = (__m512bh)_mm512_load_si512(p1 + (size_t)q * 32);
        GB_ROW(0);
        GB_ROW(1);
        GB_ROW(2);
        GB_ROW(3);
        GB_ROW(4);
        GB_ROW(5);
        GB_ROW(6);
        GB_ROW(7);
        GB_ROW(8);
        GB_ROW(9);
        {
            int32_t pr;
            memcpy(&pr, a + (size_t)10 * Rp + 2 * q, 4);
            const __m512bh av = (__m512bh)_mm512_set1_epi32(pr);
            ca0 = _mm512_dpbf16_ps(ca0, av, b0);
            ca1 = _mm512_dpbf16_ps(ca1, av, b1);
            memcpy(&pr, a + (size_t)11 * Rp + 2 * q, 4);
            const __m512bh bv = (__m512bh)_mm512_set1_epi32(pr);
            cb0 = _mm512_dpbf16_ps(cb0, bv, b0);
            cb1 = _mm512_dpbf16_ps(cb1, bv, b1);
        }
    }
    GB_STORE(0);
    GB_STORE(1);
    GB_STORE(2);
    GB_STORE(3);
    GB_STORE(4);
    GB_STORE(5);
    GB_STORE(6);
    GB_STORE(7);
    GB_STORE(8);
    GB_STORE(9);
    _mm512_storeu_ps(cb + 10 * 32, ca0);
    _mm512_storeu_ps(cb + 10 * 32 + 16, ca1);
    _mm512_storeu_ps(cb + 11 * 32, cb0);
    _mm512_storeu_ps(cb + 11 * 32 + 16, cb1);
}

T_AVX512 static void mk_avx512_4(const uint16_t *a, int Rp, const uint16_t *p0, const uint16_t *p1,
                                 float *cb) {
    GB_DECL(0);
    GB_DECL(1);
    GB_DECL(2);
    GB_DECL(3);
    for (int q = 0; q < Rp / 2; q++) {
        const __m512bh b0 = (__m512bh)_mm512_load_si512(p0 + (size_t)q * 32);
        const __m512bh b1 = (__m512bh)_mm512_load_si512(p1 + (size_t)q * 32);
        GB_ROW(0);
        GB_ROW(1);
        GB_ROW(2);
        GB_ROW(3);
    }
    GB_STORE(0);
    GB_STORE(1);
    GB_STORE(2);
    GB_STORE(3);
}

/* 32 x 32 block: A rows (stride Rp), two panels; rows: how many rows of the block are real (the rest of the
 * packed rows are zeros and are skipped in steps of 4). Rows 0-11, 12-23 with 12-row kernels, 24-31 with two
 * 4-row ones. */
T_AVX512 static void tile_avx512(const uint16_t *a, int Rp, const uint16_t *p0, const uint16_t *p1, float *cb,
                                 int rows) {
    int g = 0;
    for (; g + 12 <= 24 && g < rows; g += 12)
        mk_avx512_12(a + (size_t)g * Rp, Rp, p0, p1, cb + g * 32);
    for (; g < 32 && g < rows; g += 4)
        mk_avx512_4(a + (size_t)g * Rp, Rp, p0, p1, cb + g * 32);
    for (; g < 32; g++)
        memset(cb + g * 32, 0, 32 * sizeof(float));
}
#undef GB_ROW
#undef GB_DECL
#undef GB_STORE

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_cfg;

T_AMX static void amx_config(void) {
    amx_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    /* inline asm with the whole struct as input: GCC 12's builtin lets the stores to colsb/rows be dropped */
    __asm__ volatile("ldtilecfg %0" ::"m"(cfg));
}

T_AMX static void amx_release(void) {
    _tile_release();
}

T_AMX static void tile_amx(const uint16_t *a, int Rp, const uint16_t *p0, const uint16_t *p1, float *cb) {
    const long sa = (long)Rp * 2;
    const uint16_t *a1 = a + (size_t)16 * Rp;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    __asm__ volatile("" ::: "memory");
    for (int k = 0; k < Rp; k += 32) {
        _tile_loadd(4, a + k, sa);
        _tile_loadd(5, a1 + k, sa);
        _tile_loadd(6, p0 + (size_t)k * 16, 64);
        _tile_loadd(7, p1 + (size_t)k * 16, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, cb, 128);
    _tile_stored(1, cb + 16, 128);
    _tile_stored(2, cb + 16 * 32, 128);
    _tile_stored(3, cb + 16 * 32 + 16, 128);
    __asm__ volatile("" ::: "memory");
}
#endif

static void write_tile_generic(const gb_job *j, int i0, int n0, const float *cb) {
    for (int i = 0; i < 32 && i0 + i < j->M; i++)
        for (int n = 0; n < 32 && n0 + n < j->NC; n++) {
            float *c = j->C + (size_t)(i0 + i) * j->ldc + n0 + n;
            *c = j->acc ? *c + cb[i * 32 + n] : cb[i * 32 + n];
        }
}

static void tile_generic(const uint16_t *a, int Rp, const uint16_t *p0, const uint16_t *p1, float *cb,
                         int rows) {
    for (int i = 0; i < 32; i++)
        for (int n = 0; n < 32; n++) {
            const uint16_t *p = n < 16 ? p0 : p1;
            const int jj = n & 15;
            float s = 0.0f;
            if (i < rows)
                for (int q = 0; q < Rp / 2; q++)
                    s += bf16_f32(a[(size_t)i * Rp + 2 * q]) * bf16_f32(p[(size_t)q * 32 + jj * 2]) +
                         bf16_f32(a[(size_t)i * Rp + 2 * q + 1]) * bf16_f32(p[(size_t)q * 32 + jj * 2 + 1]);
            cb[i * 32 + n] = s;
        }
}

/* ---- drivers ---- */

#define GB_CHUNK_BYTES (1u << 20) /* packed B per column chunk */
#define GB_RBLOCK 2048            /* reduction block: packed A at most M x 2048 bf16 */

/* The calling thread's packing buffer of at least n elements, 64-byte aligned, kept for its next call (a
 * fresh multi-MiB allocation per call would cost its page faults every time); NULL when out of memory. */
static _Thread_local uint16_t *tl_buf;
static _Thread_local size_t tl_cap;
static uint16_t *scratch(size_t n) {
    if (n > tl_cap) {
        free(tl_buf);
        tl_buf = aligned_alloc(64, (n * sizeof(uint16_t) + 63) & ~(size_t)63);
        tl_cap = tl_buf ? n : 0;
    }
    return tl_buf;
}

/* C rows [i0, i1) x columns [c0, c1) with plain loops (no buffers: the out-of-memory fallback). */
static void plain_region(const gb_job *j, int i0, int i1, int c0, int c1) {
    for (int m = i0; m < i1 && m < j->M; m++)
        for (int c = c0; c < c1 && c < j->NC; c++) {
            float s = 0.0f;
            for (int r = 0; r < j->R; r++)
                s += bf16_f32(bf16_round(j->A[(size_t)m * j->lda + r])) * bf16_f32(b_at(j, r, c));
            float *cc = j->C + (size_t)m * j->ldc + c;
            *cc = j->acc ? *cc + s : s;
        }
}

/* One thread's rectangle of 32 x 32 tiles: rows [tm0, tm1) x columns [tn0, tn1) (in tiles). It packs its own
 * A rows and, chunk by chunk, its own B panels, so threads never wait for each other. Returns -1 when its
 * buffers cannot be allocated. */
static int run_region(const gb_job *j, int path, int tm0, int tm1, int tn0, int tn1, int ctile) {
    const int Rp = j->Rp, w0 = tn1 - tn0 < ctile ? tn1 - tn0 : ctile;
    const size_t na = (size_t)(tm1 - tm0) * 32 * Rp;
    uint16_t *pa = scratch(na + (size_t)w0 * 32 * Rp);
    if (!pa) return -1;
    uint16_t *pb = pa + na; /* na: a multiple of 32 elements, so pb stays 64-byte aligned */
#if GB_X86
    if (path == P_AMX) amx_config();
#endif
    for (int m = tm0 * 32; m < tm1 * 32; m++)
        pack_a_row(j, m, pa + (size_t)(m - tm0 * 32) * Rp, path);
    float cb[32 * 32] __attribute__((aligned(64)));
    for (int c = tn0; c < tn1; c += ctile) {
        const int w = tn1 - c < ctile ? tn1 - c : ctile;
        for (int p = 0; p < 2 * w; p++) {
            uint16_t *dst = pb + (size_t)p * Rp * 16;
            const int col = c * 32 + p * 16;
#if GB_X86
            if (path >= P_AVX512 && j->op == 0)
                pack_panel_nt_avx512(j, col, dst);
            else if (path >= P_AVX512)
                pack_panel_nn_avx512(j, col, dst);
            else
#endif
                pack_panel_generic(j, col, dst);
        }
        for (int mi = tm0; mi < tm1; mi++)
            for (int ni = 0; ni < w; ni++) {
                const int i0 = mi * 32, n0 = (c + ni) * 32, rows = j->M - i0;
                const uint16_t *a = pa + (size_t)(mi - tm0) * 32 * Rp, *p0 = pb + (size_t)(2 * ni) * Rp * 16,
                               *p1 = p0 + (size_t)Rp * 16;
#if GB_X86
                if (path == P_AMX) {
                    tile_amx(a, Rp, p0, p1, cb);
                    write_tile_avx512(j, i0, n0, cb);
                    continue;
                }
                if (path == P_AVX512) {
                    tile_avx512(a, Rp, p0, p1, cb, rows);
                    write_tile_avx512(j, i0, n0, cb);
                    continue;
                }
#endif
                tile_generic(a, Rp, p0, p1, cb, rows);
                write_tile_generic(j, i0, n0, cb);
            }
    }
#if GB_X86
    if (path == P_AMX) amx_release();
#endif
    return 0;
}

/* The threads split the tiles of C into a grid of rectangles, columns first (tn = min(threads, column
 * tiles)), then rows with the threads left; each rectangle is independent (run_region), so one call costs one
 * fork and one join and no barrier in between. */
static void run_packed(gb_job *j, int path) {
    const int mt = j->Mp / 32, ntl = up32(j->NC) / 32;
    int ctile = (int)(GB_CHUNK_BYTES / ((size_t)j->Rp * 2 * 32)); /* column tiles per chunk of packed B */
    if (ctile < 1) ctile = 1;
    const int T = omp_get_max_threads();
    int tn = T < ntl ? T : ntl, tm;
    if (tn < 1) tn = 1;
    tm = T / tn < mt ? T / tn : mt;
    if (tm < 1) tm = 1;
    const int nreg = tm * tn;
    /* tiny problems are not worth a fork */
    const int par = nreg > 1 && (double)j->M * j->NC * j->R >= 4e6;
#pragma omp parallel num_threads(par ? nreg : 1)
    {
        const int nt = omp_get_num_threads();
        for (int r = omp_get_thread_num(); r < (par ? nreg : 1); r += nt) {
            const int ti = par ? r / tn : 0, tj = par ? r % tn : 0, gm = par ? tm : 1, gn = par ? tn : 1;
            const int tm0 = (int)((long long)mt * ti / gm), tm1 = (int)((long long)mt * (ti + 1) / gm);
            const int tn0 = (int)((long long)ntl * tj / gn), tn1 = (int)((long long)ntl * (tj + 1) / gn);
            if (tm1 > tm0 && tn1 > tn0 && run_region(j, path, tm0, tm1, tn0, tn1, ctile))
                plain_region(j, tm0 * 32, tm1 * 32, tn0 * 32, tn1 * 32);
        }
    }
}

#if GB_X86
/* AVX2: bf16-rounded A and widened B as f32, products and sums by SGEMM. B is widened in row chunks of
 * about 4 MiB of f32 (rows of B are output columns for nt, reduction rows for nn). */
static int run_avx2(gb_job *j) {
    const int M = j->M, N = j->op == 0 ? j->NC : j->R, K = j->op == 0 ? j->R : j->NC;
    int rows = (int)((1u << 20) / (unsigned)(K > 0 ? K : 1));
    if (rows < 16) rows = 16;
    if (rows > N) rows = N;
    float *fa = malloc(sizeof(float) * (size_t)M * j->R), *fb = malloc(sizeof(float) * (size_t)rows * K);
    if (!fa || !fb) {
        free(fa);
        free(fb);
        return -1;
    }
#pragma omp parallel for schedule(static)
    for (int m = 0; m < M; m++)
        round_f32_avx2(j->A + (size_t)m * j->lda, fa + (size_t)m * j->R, (size_t)j->R);
    for (int r0 = 0; r0 < N; r0 += rows) {
        const int n = N - r0 < rows ? N - r0 : rows;
#pragma omp parallel for schedule(static)
        for (int r = 0; r < n; r++)
            widen_avx2(j->B + (size_t)(r0 + r) * j->ldb, fb + (size_t)r * K, (size_t)K);
        if (j->op == 0) /* C[:, r0 .. r0+n) = fa fb^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, n, K, 1.0f, fa, j->R, fb, K,
                        j->acc ? 1.0f : 0.0f, j->C + r0, j->ldc);
        else /* C += fa[:, r0 .. r0+n) fb */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, n, 1.0f, fa + r0, j->R, fb, K,
                        (j->acc || r0 > 0) ? 1.0f : 0.0f, j->C, j->ldc);
    }
    free(fa);
    free(fb);
    return 0;
}
#endif

#if GB_X86
/* Few rows (decoding): no packing, B is read once as it lies. nt: one vdpbf16ps dot product per (row, output
 * column) along K, threads over output columns. nn: each reduction row of B is widened (a shift) and added
 * into the GB_SMALL_M rows of C with FMAs, threads over column ranges. A is rounded to bf16 first. */
#define GB_SMALL_M 8

T_AVX512 static float hsum512(__m512 v) {
    return _mm512_reduce_add_ps(v);
}

/* One output column n of the nt product (a function of its own so that its AVX-512 code keeps the target
 * attribute: clang outlines an OpenMP loop body into a function without it). */
T_AVX512 static void small_nt_col(const gb_job *j, const uint16_t *a, int n) {
    const int M = j->M, R = j->R;
    const uint16_t *b = j->B + (size_t)n * j->ldb;
    __m512 acc[GB_SMALL_M];
    for (int m = 0; m < M; m++)
        acc[m] = _mm512_setzero_ps();
    for (int k = 0; k < R; k += 32) {
        const int left = R - k;
        const __mmask32 mk = left >= 32 ? 0xffffffffu : (__mmask32)((1u << left) - 1u);
        const __m512bh bv = (__m512bh)_mm512_maskz_loadu_epi16(mk, b + k);
        for (int m = 0; m < M; m++)
            acc[m] = _mm512_dpbf16_ps(acc[m], (__m512bh)_mm512_load_si512(a + (size_t)m * j->Rp + k), bv);
    }
    for (int m = 0; m < M; m++) {
        float *c = j->C + (size_t)m * j->ldc + n;
        const float v = hsum512(acc[m]);
        *c = j->acc ? *c + v : v;
    }
}

/* Output columns [64 blk, 64 blk + 64) of the nn product. */
T_AVX512 static void small_nn_block(const gb_job *j, const uint16_t *a, int blk) {
    const int M = j->M, R = j->R, NC = j->NC;
    const int c0 = blk * 64, w = NC - c0 < 64 ? NC - c0 : 64;
    __m512 acc[GB_SMALL_M][4];
    for (int m = 0; m < M; m++)
        for (int q = 0; q < 4; q++)
            acc[m][q] = _mm512_setzero_ps();
    for (int r = 0; r < R; r++) {
        const uint16_t *b = j->B + (size_t)r * j->ldb + c0;
        __m512 bv[4];
        for (int q = 0; q < 4; q++) {
            const int left = w - 16 * q;
            const __mmask16 mq = left >= 16 ? 0xffff : left <= 0 ? 0 : (__mmask16)((1u << left) - 1u);
            bv[q] = _mm512_castsi512_ps(
                _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mq, b + 16 * q)), 16));
        }
        for (int m = 0; m < M; m++) {
            const __m512 av = _mm512_set1_ps(bf16_f32(a[(size_t)m * j->Rp + r]));
            for (int q = 0; q < 4; q++)
                acc[m][q] = _mm512_fmadd_ps(av, bv[q], acc[m][q]);
        }
    }
    for (int m = 0; m < M; m++)
        for (int q = 0; q < 4 && 16 * q < w; q++) {
            const int left = w - 16 * q;
            const __mmask16 mq = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1u);
            float *c = j->C + (size_t)m * j->ldc + c0 + 16 * q;
            __m512 v = acc[m][q];
            if (j->acc) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mq, c));
            _mm512_mask_storeu_ps(c, mq, v);
        }
}

T_AVX512 static int run_small(gb_job *j) {
    const int M = j->M, R = j->R, NC = j->NC;
    uint16_t *a = aligned_alloc(64, sizeof(uint16_t) * (size_t)M * j->Rp);
    if (!a) return -1;
    for (int m = 0; m < M; m++)
        pack_a_row(j, m, a + (size_t)m * j->Rp, P_AVX512);
    if (j->op == 0) {
#pragma omp parallel for schedule(static) if ((size_t)NC * R >= 65536)
        for (int n = 0; n < NC; n++)
            small_nt_col(j, a, n);
    } else {
        const int blocks = (NC + 63) / 64; /* 64 output columns per task */
#pragma omp parallel for schedule(static) if ((size_t)NC * R >= 65536)
        for (int blk = 0; blk < blocks; blk++)
            small_nn_block(j, a, blk);
    }
    free(a);
    return 0;
}
#endif

static void gemm(gb_job *j) {
    if (j->M <= 0 || j->NC <= 0) return;
    if (j->R <= 0) {
        if (!j->acc)
            for (int m = 0; m < j->M; m++)
                memset(j->C + (size_t)m * j->ldc, 0, sizeof(float) * (size_t)j->NC);
        return;
    }
    const int path = path_now();
    j->Mp = up32(j->M);
    j->Rp = up32(j->R);
#if GB_X86
    if (path >= P_AVX512 && j->M <= GB_SMALL_M && run_small(j) == 0) return;
#endif
    /* A long reduction (the head's dX: R = vocab) is cut into blocks so that packed A stays in cache and the
     * column chunks of B stay wide; blocks after the first accumulate. */
    for (int r0 = 0; r0 < j->R; r0 += GB_RBLOCK) {
        gb_job s = *j;
        s.R = j->R - r0 < GB_RBLOCK ? j->R - r0 : GB_RBLOCK;
        s.Rp = up32(s.R);
        s.A = j->A + r0;
        s.B = j->op == 0 ? j->B + r0 : j->B + (size_t)r0 * j->ldb;
        s.acc = j->acc || r0 > 0;
#if GB_X86
        if (path == P_AVX2 && run_avx2(&s) == 0) continue;
#endif
        run_packed(&s, path == P_AVX2 ? P_GENERIC : path);
    }
}

/* Both products: op 0 reduces along B's rows (nt: NC = N output columns, R = K), op 1 along its columns (nn:
 * NC = K, R = N). */
static void gemm_op(int op, int M, int NC, int R, const float *A, int lda, const uint16_t *B, int ldb,
                    float *C, int ldc, int accumulate) {
    gb_job j = {.op = op,
                .M = M,
                .NC = NC,
                .R = R,
                .A = A,
                .lda = lda,
                .B = B,
                .ldb = ldb,
                .C = C,
                .ldc = ldc,
                .acc = accumulate};
    gemm(&j);
}

void eng_gemm_bf16_nt(int M, int N, int K, const float *A, int lda, const uint16_t *B, int ldb, float *C,
                      int ldc, int accumulate) {
    gemm_op(0, M, N, K, A, lda, B, ldb, C, ldc, accumulate);
}

void eng_gemm_bf16_nn(int M, int N, int K, const float *A, int lda, const uint16_t *B, int ldb, float *C,
                      int ldc, int accumulate) {
    gemm_op(1, M, K, N, A, lda, B, ldb, C, ldc, accumulate);
}
