/* Unit tests for the bf16 GEMMs (engine/gemm_bf16.c).
 *
 * Every path this CPU has (eng_bf16_set_path forces each: amx, avx512bf16, avx2, and the portable generic
 * one) is checked against a reference computed here: the same bf16-rounded inputs (A rounded to nearest even,
 * B as given), products and sums in double. Tolerance per element: the products of two bf16 values are exact
 * in f32 (8 + 8 significand bits), so the only error of a correct kernel is f32 summation: at most K * u *
 * sum_k |a_k b_k| for any summation order (u = 2^-24), plus one rounding u |c| for the accumulate add. We
 * allow 2 (K + 2) u sum|ab| + 2 u |c0|. A kernel that rounded A by truncation instead of to nearest even
 * would be off by up to 2^-8 of |a b| per term, far outside that bound for the K used here (<= 1100: bound
 * ~ 1.3e-4 relative). Two paths must agree within the sum of their bounds. Sizes are odd on purpose (M = 1,
 * 3, 17, 130; N and K not multiples of 16 or 32; M <= 8 takes the unpacked few-rows kernels; reductions of
 * 2100 cross the 2048 block), with leading dimensions larger than the rows, both accumulate modes, and
 * sentinels in the stride gaps of C that must stay untouched. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gemm_bf16.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float frand(void) { /* uniform in [-1, 1) */
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float bf(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint16_t bits16(float f) {
    uint16_t h;
    eng_bf16_from_f32(&f, &h, 1);
    return h;
}
static float fbits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void test_round(void **state) {
    assert_int_equal(bits16(1.0f), 0x3f80);
    assert_int_equal(bits16(-2.0f), 0xc000);
    assert_int_equal(bits16(fbits(0x3f808000u)), 0x3f80); /* tie, even stays */
    assert_int_equal(bits16(fbits(0x3f818000u)), 0x3f82); /* tie, odd goes up */
    assert_int_equal(bits16(fbits(0x3f808001u)), 0x3f81); /* above the tie */
    assert_int_equal(bits16(fbits(0x3f807fffu)), 0x3f80); /* below the tie */
    assert_int_equal(bits16(fbits(0x7f7fffffu)), 0x7f80); /* FLT_MAX rounds to inf */
    assert_int_equal(bits16(INFINITY), 0x7f80);
    uint16_t n = bits16(NAN);
    assert_true((n & 0x7f80) == 0x7f80 && (n & 0x7f) != 0);
    assert_true((bits16(fbits(0x7f800001u)) & 0x7f) != 0); /* a NaN whose payload is in the low bits */
    /* A long array goes through the vector code (when there is one) and agrees with one-at-a-time. */
    enum { L = 1003 };
    float src[L];
    uint16_t a[L];
    for (int i = 0; i < L; i++)
        src[i] = frand() * 1e3f;
    src[5] = fbits(0x3f818000u);
    src[40] = NAN;
    eng_bf16_from_f32(src, a, L);
    for (int i = 0; i < L; i++)
        assert_int_equal(a[i], bits16(src[i]));
}

typedef struct {
    int M, N, K;
} shape;

static const shape SHAPES[] = {{1, 45, 71},     {3, 17, 33},    {17, 130, 1},   {17, 33, 130},
                               {130, 77, 1100}, {130, 200, 47}, {3, 1, 5},      {33, 65, 96},
                               {8, 70, 40},     {9, 31, 65},    {17, 40, 2100}, {17, 2100, 40}};
#define NSHAPES (int)(sizeof SHAPES / sizeof SHAPES[0])
#define SENT 12345.0f

/* One case: op 0 = nt (C[M,N] (+)= A[M,K] B[N,K]^T), 1 = nn (C[M,K] (+)= A[M,N] B[N,K]). Fills out (the C
 * rows, with stride) and checks against the double reference; returns the per-element bounds in tol. */
static void run_case(int op, shape s, int acc, float *out, double *tol, int ldc) {
    const int M = s.M, N = s.N, K = s.K;
    const int R = op == 0 ? K : N, NC = op == 0 ? N : K; /* reduction, output columns */
    const int lda = R + 5, ldb = K + 3;
    float *A = malloc(sizeof(float) * (size_t)M * lda);
    uint16_t *B = malloc(sizeof(uint16_t) * (size_t)N * ldb);
    float *C0 = malloc(sizeof(float) * (size_t)M * ldc);
    assert_non_null(A);
    assert_non_null(B);
    assert_non_null(C0);
    for (size_t i = 0; i < (size_t)M * lda; i++)
        A[i] = frand();
    for (size_t i = 0; i < (size_t)N * ldb; i++)
        B[i] = bits16(frand());
    for (int m = 0; m < M; m++)
        for (int j = 0; j < ldc; j++)
            C0[(size_t)m * ldc + j] = j < NC ? frand() : SENT;
    memcpy(out, C0, sizeof(float) * (size_t)M * ldc);
    if (op == 0)
        eng_gemm_bf16_nt(M, N, K, A, lda, B, ldb, out, ldc, acc);
    else
        eng_gemm_bf16_nn(M, N, K, A, lda, B, ldb, out, ldc, acc);
    const double u = 1.0 / 16777216.0;
    for (int m = 0; m < M; m++)
        for (int j = 0; j < ldc; j++) {
            float got = out[(size_t)m * ldc + j];
            if (j >= NC) {
                assert_true(got == SENT);
                tol[(size_t)m * ldc + j] = 0.0;
                continue;
            }
            double ref = acc ? C0[(size_t)m * ldc + j] : 0.0, mag = 0.0;
            for (int r = 0; r < R; r++) {
                double a = bf(bits16(A[(size_t)m * lda + r]));
                double b = op == 0 ? bf(B[(size_t)j * ldb + r]) : bf(B[(size_t)r * ldb + j]);
                ref += a * b;
                mag += fabs(a * b);
            }
            double t =
                2.0 * (R + 2) * u * mag + (acc ? 2.0 * u * fabs(C0[(size_t)m * ldc + j]) : 0.0) + 1e-30;
            tol[(size_t)m * ldc + j] = t;
            if (!(fabs(got - ref) <= t))
                fail_msg("path %s op %s M=%d N=%d K=%d acc=%d C[%d,%d] = %.9g, reference %.9g, bound %.3g",
                         eng_bf16_path(), op ? "nn" : "nt", M, N, K, acc, m, j, got, ref, t);
        }
    free(A);
    free(B);
    free(C0);
}

static const char *const PATHS[] = {"amx", "avx512bf16", "avx2", "generic"};
#define NPATHS 4

static void test_paths(void **state) {
    int have[NPATHS];
    for (int p = 0; p < NPATHS; p++)
        have[p] = strcmp(eng_bf16_set_path(PATHS[p]), PATHS[p]) == 0;
    eng_bf16_set_path(NULL);
#if defined(__x86_64__)
    assert_true(have[2] || !__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"));
#endif
    for (int op = 0; op < 2; op++)
        for (int si = 0; si < NSHAPES; si++)
            for (int acc = 0; acc < 2; acc++) {
                shape s = SHAPES[si];
                const int NC = op == 0 ? s.N : s.K, ldc = NC + 7;
                const size_t n = (size_t)s.M * ldc;
                float *first = NULL;
                double *ftol = NULL;
                for (int p = 0; p < NPATHS; p++) {
                    if (!have[p]) continue;
                    assert_string_equal(eng_bf16_set_path(PATHS[p]), PATHS[p]);
                    rng = 0x1234567ull + (uint64_t)(si * 4 + op * 2 + acc); /* same inputs on every path */
                    float *out = malloc(sizeof(float) * n);
                    double *tol = malloc(sizeof(double) * n);
                    assert_non_null(out);
                    assert_non_null(tol);
                    run_case(op, s, acc, out, tol, ldc);
                    if (!first) {
                        first = out;
                        ftol = tol;
                        continue;
                    }
                    for (size_t i = 0; i < n; i++)
                        if (!(fabs((double)out[i] - first[i]) <= tol[i] + ftol[i]))
                            fail_msg("paths disagree at %zu: %.9g vs %.9g", i, out[i], first[i]);
                    free(out);
                    free(tol);
                }
                free(first);
                free(ftol);
            }
    eng_bf16_set_path(NULL);
}

/* Degenerate sizes: nothing to sum zeroes C (without accumulate) and leaves it (with); M = 0 touches nothing.
 */
static void test_empty(void **state) {
    float A[4] = {1, 2, 3, 4}, C[4] = {5, 6, 7, 8};
    uint16_t B[4] = {0x3f80, 0x3f80, 0x3f80, 0x3f80};
    eng_gemm_bf16_nt(2, 2, 0, A, 2, B, 2, C, 2, 1);
    assert_true(C[0] == 5 && C[3] == 8);
    eng_gemm_bf16_nt(2, 2, 0, A, 2, B, 2, C, 2, 0);
    assert_true(C[0] == 0 && C[3] == 0);
    C[0] = 9;
    eng_gemm_bf16_nn(0, 2, 2, A, 2, B, 2, C, 2, 0);
    eng_gemm_bf16_nn(2, 2, 0, A, 2, B, 2, C, 2, 0);
    assert_true(C[0] == 9);
    eng_gemm_bf16_nn(2, 0, 2, A, 2, B, 2, C, 2, 0);
    assert_true(C[0] == 0 && C[3] == 0);
}

/* The path name is one of the three (or generic off x86), and an unknown name picks the best one. */
static void test_names(void **state) {
    const char *best = eng_bf16_set_path(NULL);
    assert_string_equal(eng_bf16_set_path("nonsense"), best);
    assert_string_equal(eng_bf16_path(), best);
    assert_true(!strcmp(best, "amx") || !strcmp(best, "avx512bf16") || !strcmp(best, "avx2") ||
                !strcmp(best, "generic"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round),
        cmocka_unit_test(test_paths),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
