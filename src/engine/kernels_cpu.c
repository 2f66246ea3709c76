/* kernels_cpu.c: the CPU backend of the engine's kernel table (ops.h), and the RoPE tables.
 *
 * The kernel bodies live once in kernels_cpu_impl.h, generic over the scalar type. This file instantiates
 * them twice: float for eng_kernels_cpu() (what the trainer uses) and double for eng_kernels_cpu_f64() (what
 * the gradient checks use, see kernels_cpu_f64.h). GEMMs go to OpenBLAS through CBLAS (sgemm / dgemm); the
 * OpenMP build of OpenBLAS draws its threads from the same OpenMP pool as our loops, and BLAS is never called
 * from inside a parallel region, so threads never multiply. Loops over rows are OpenMP-parallel; contiguous
 * inner loops are `omp simd` so they vectorise at -O2 -march=native; the attention micro-kernels keep their
 * accumulators in explicit 32-byte vectors (GCC/clang vector extension), and GCC is allowed to contract
 * a * b + c into FMA here. Attention uses stack tiles of up to (2 hd + 128) * 64 scalars per thread.
 *
 * exp in the wide loops (softmax over the vocabulary, attention, SiLU) is a Cephes-style polynomial that
 * vectorises (about 1 ulp in float); the double instantiation uses the libm exp. Scalar exp/log/sqrt come
 * from <tgmath.h> and follow REAL.
 *
 * eng_rope_tables reproduces HF's float32 computation of inv_freq (default and Llama 3 scaling, the formula
 * of transformers' _compute_llama3_parameters) operation by operation in float, then cos/sin of pos *
 * inv_freq.
 *
 * The float table's head_loss_w reads a head kept in its stored format through wmat.h (HEAD_NT / HEAD_NN);
 * the double table has no stored weights. */
/* The sanitizer/fuzzer builds (clang -O1) cannot honour every `omp simd`; that is expected, not an error. */
#ifdef __clang__
#pragma clang diagnostic ignored "-Wpass-failed"
#endif
/* Builds without -mavx warn that 32-byte vectors passed by value change the ABI; ours are static functions.
 */
#pragma GCC diagnostic ignored "-Wpsabi"
#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>
#include <tgmath.h>

#include "engine/config.h"
#include "engine/kernels_cpu_f64.h"
#include "engine/ops.h"
#include "engine/wmat.h"

/* Loops smaller than this many elements stay on one thread (fork/join costs more than it saves). */
#define PAR_MIN ((size_t)1 << 14)
/* Attention works on tiles of ATT_TILE keys (transposed onto the stack: hd * ATT_TILE values) and blocks of
 * ATT_QB query rows; scores live on the stack, never in a T x T buffer. */
#define ATT_TILE 64
#define ATT_QB 64

/* exp(x) for float that vectorises under the default -ftrapping-math: only integer and plain float
 * arithmetic, no float compares, no float-to-int conversion and no branches (any of these stops GCC's
 * if-conversion). x is clamped to [-87, 88] by comparing its bit pattern as an integer, so results stay
 * finite and normal (exp(-inf) gives 1.6e-38, exp(+inf) 1.7e38); a NaN input gives NaN (restored through a
 * bit mask). x = n ln2
 * + r with n rounded to nearest by the 1.5 * 2^23 trick (whose bit pattern then holds n), |r| <= ln2/2,
 * degree-6 polynomial (Cephes expf): relative error below 1e-7 over the whole range. */
static inline float fast_expf(float x) {
    uint32_t ux;
    memcpy(&ux, &x, sizeof ux);
    const int32_t nan_in = -(int32_t)((ux & 0x7FFFFFFFu) > 0x7F800000u); /* all ones when x is NaN */
    ux = ux > 0xC2AE0000u ? 0xC2AE0000u : ux;
    int32_t ix = (int32_t)ux;
    ix = ix > 0x42B00000 ? 0x42B00000 : ix;
    memcpy(&x, &ix, sizeof x);
    const float t = x * 1.44269504088896341f + 12582912.0f;
    const float n = t - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits;
    memcpy(&bits, &t, sizeof bits);
    bits = (bits - 0x4B400000 + 127) << 23;
    float sc;
    memcpy(&sc, &bits, sizeof sc);
    float res = p * sc;
    uint32_t ur;
    memcpy(&ur, &res, sizeof ur);
    ur = (ur & ~(uint32_t)nan_in) | (0x7FC00000u & (uint32_t)nan_in);
    memcpy(&res, &ur, sizeof res);
    return res;
}

/* Let GCC fuse a * b + c into FMA in these kernels (ISO C mode turns contraction off by default); clang
 * contracts within an expression by default. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=fast")
#endif

/* ---- float instantiation ---- */
#define REAL float
#define SFX(name) name##_f32
#define GEMM cblas_sgemm
#define GEMV cblas_sgemv
#define EXPV(x) fast_expf(x)
#define LOSSFN eng_token_loss_fn
#define KTABLE eng_kernels
#define KNAME "cpu"
#define WMAT_HEAD 1
#define HEAD_NT(Wm, n, x, ldx, out, ldo, acc, cmp) eng_wmat_nt(Wm, n, x, ldx, out, ldo, acc, cmp)
#define HEAD_NN(Wm, n, g, ldg, dx, ldd, acc, cmp) eng_wmat_nn(Wm, n, g, ldg, dx, ldd, acc, cmp)
#include "engine/kernels_cpu_impl.h"
#undef WMAT_HEAD
#undef HEAD_NT
#undef HEAD_NN
#undef REAL
#undef SFX
#undef GEMM
#undef GEMV
#undef EXPV
#undef LOSSFN
#undef KTABLE
#undef KNAME

/* ---- double instantiation (gradient checks) ---- */
#define REAL double
#define SFX(name) name##_f64
#define GEMM cblas_dgemm
#define GEMV cblas_dgemv
#define EXPV(x) exp(x)
#define LOSSFN eng_token_loss_fn_f64
#define KTABLE eng_kernels_f64
#define KNAME "cpu-f64"
#define HEAD_NT(Wm, n, x, ldx, out, ldo, acc, cmp) ((void)(Wm), (void)(cmp), assert(!"no stored head in f64"))
#define HEAD_NN(Wm, n, g, ldg, dx, ldd, acc, cmp) ((void)(Wm), (void)(cmp), assert(!"no stored head in f64"))
#include "engine/kernels_cpu_impl.h"
#undef HEAD_NT
#undef HEAD_NN
#undef REAL
#undef SFX
#undef GEMM
#undef GEMV
#undef EXPV
#undef LOSSFN
#undef KTABLE
#undef KNAME

const eng_kernels *eng_kernels_cpu(void) {
    return &table_f32;
}

const eng_kernels_f64 *eng_kernels_cpu_f64(void) {
    return &table_f64;
}

/* inv_freq_d = 1 / theta^(2d / hd), in float as torch computes it; then Llama 3's piecewise rescaling. */
static float rope_inv_freq(int d, int hd, const eng_config *cfg) {
    const float expo = (float)(2 * d) / (float)hd;
    const float inv = 1.0f / powf(cfg->rope_theta, expo);
    if (cfg->rope_type != ENG_ROPE_LLAMA3) return inv;
    const float factor = cfg->rope_factor, lo = cfg->rope_low_freq_factor, hi = cfg->rope_high_freq_factor;
    const float old_ctx = (float)cfg->rope_original_max_pos;
    const float low_freq_wavelen = old_ctx / lo, high_freq_wavelen = old_ctx / hi;
    const float wavelen = (float)(2.0 * M_PI) / inv;
    float inv_llama = wavelen > low_freq_wavelen ? inv / factor : inv;
    if (!(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen)) {
        const float smooth = (old_ctx / wavelen - lo) / (float)((double)hi - (double)lo);
        inv_llama = (1.0f - smooth) * inv_llama / factor + smooth * inv_llama;
    }
    return inv_llama;
}

void eng_rope_tables(float *cos_t, float *sin_t, int max_pos, int hd, const eng_config *cfg) {
    assert(hd > 0 && hd % 2 == 0 && max_pos >= 0);
    const int h2 = hd / 2;
    float inv[h2];
    for (int d = 0; d < h2; d++)
        inv[d] = rope_inv_freq(d, hd, cfg);
#pragma omp parallel for schedule(static) if ((size_t)max_pos * h2 >= PAR_MIN)
    for (int p = 0; p < max_pos; p++)
        for (int d = 0; d < h2; d++) {
            const float f = (float)p * inv[d];
            cos_t[(size_t)p * h2 + d] = (float)cos((double)f);
            sin_t[(size_t)p * h2 + d] = (float)sin((double)f);
        }
}
