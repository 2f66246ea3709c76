/* Unit tests for the CPU kernels (engine/kernels_cpu.c).
 *
 * Gradients: every backward kernel is checked against central finite differences of a scalar objective
 * L = sum(out * R) (R fixed random), in double precision through the double instantiation of the same kernel
 * bodies (kernels_cpu_f64.h), with a norm-wise relative error below 1e-6. Forward kernels are checked against
 * naive formulas written out here, and the float table against the double one. Shapes are tiny so the whole
 * file runs in well under a second; the random numbers come from a fixed-seed generator. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/config.h"
#include "engine/kernels_cpu_f64.h"
#include "engine/losses.h"
#include "engine/ops.h"

#define FD_H 1e-5
#define GRAD_TOL 1e-6

/* ---- scratch memory, freed at the end of each test ---- */

static void *allocs[512];
static int nallocs;

static void *zalloc(size_t bytes) {
    assert_true(nallocs < 512);
    void *p = calloc(1, bytes ? bytes : 1);
    assert_non_null(p);
    allocs[nallocs++] = p;
    return p;
}
static double *dz(size_t n) {
    return zalloc(n * sizeof(double));
}
static float *fz(size_t n) {
    return zalloc(n * sizeof(float));
}
static int teardown(void **state) {
    for (int i = 0; i < nallocs; i++)
        free(allocs[i]);
    nallocs = 0;
    return 0;
}

/* ---- deterministic random numbers ---- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static int default_threads = 1;

/* Gradient checks run thousands of tiny kernel calls: one thread keeps them fast even on a busy machine
 * (fork/join per call would dominate). test_parallel_paths runs with every thread. */
static int setup(void **state) {
    rng_state = 0x9E3779B97F4A7C15ull;
    omp_set_num_threads(1);
    return 0;
}
static int setup_parallel(void **state) {
    rng_state = 0x9E3779B97F4A7C15ull;
    omp_set_num_threads(default_threads > 1 ? default_threads : 2);
    return 0;
}
static double urand(void) { /* uniform in [-1, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}
static double *drand_vec(size_t n, double scale) {
    double *p = dz(n);
    for (size_t i = 0; i < n; i++)
        p[i] = scale * urand();
    return p;
}
static float *to_f32(const double *x, size_t n) {
    float *p = fz(n);
    for (size_t i = 0; i < n; i++)
        p[i] = (float)x[i];
    return p;
}

/* ---- comparisons ---- */

static double rel_err(const double *a, const double *b, size_t n) {
    double num = 0, na = 0, nb = 0;
    for (size_t i = 0; i < n; i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        na += a[i] * a[i];
        nb += b[i] * b[i];
    }
    double den = sqrt(na > nb ? na : nb);
    return den > 0 ? sqrt(num) / den : sqrt(num);
}
static double rel_err_f(const float *a, const double *b, size_t n) {
    double *ad = dz(n);
    for (size_t i = 0; i < n; i++)
        ad[i] = a[i];
    return rel_err(ad, b, n);
}
static double dot_d(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

#define K64 (eng_kernels_cpu_f64())
#define K32 (eng_kernels_cpu())

/* Central differences of obj(ctx) w.r.t. every element of x (perturbed in place and restored). */
typedef double (*objective_fn)(void *ctx);
static void fd_grad(objective_fn obj, void *ctx, double *x, size_t n, double *num) {
    for (size_t i = 0; i < n; i++) {
        double save = x[i];
        x[i] = save + FD_H;
        double fp = obj(ctx);
        x[i] = save - FD_H;
        double fm = obj(ctx);
        x[i] = save;
        num[i] = (fp - fm) / (2 * FD_H);
    }
}
static void check_grad(const char *what, objective_fn obj, void *ctx, double *x, size_t n,
                       const double *analytic) {
    double *num = dz(n);
    fd_grad(obj, ctx, x, n, num);
    double e = rel_err(analytic, num, n);
    if (!(e < GRAD_TOL)) print_error("%s: relative gradient error %g\n", what, e);
    assert_true(e < GRAD_TOL);
    assert_true(dot_d(analytic, analytic, n) > 0); /* a zero gradient would make the check vacuous */
}

/* ---- rmsnorm (also q/k norm: the same kernel over N*heads rows of head_dim) ---- */

typedef struct {
    int N, C;
    double *x, *w, *R, *out, *rstd;
    float eps;
} rms_ctx;

static double rms_obj(void *p) {
    rms_ctx *c = p;
    K64->rmsnorm_forward(c->out, c->rstd, c->x, c->w, c->N, c->C, c->eps);
    return dot_d(c->out, c->R, (size_t)c->N * c->C);
}

static void rmsnorm_case(int N, int C) {
    rms_ctx c = {N,
                 C,
                 drand_vec((size_t)N * C, 2),
                 drand_vec(C, 1.5),
                 drand_vec((size_t)N * C, 1),
                 dz((size_t)N * C),
                 dz(N),
                 1e-5f};
    rms_obj(&c);
    for (int i = 0; i < N; i++) { /* forward against the formula */
        double ss = 0;
        for (int k = 0; k < C; k++)
            ss += c.x[i * C + k] * c.x[i * C + k];
        double r = 1.0 / sqrt(ss / C + 1e-5f);
        assert_true(fabs(c.rstd[i] - r) < 1e-12 * r);
        for (int k = 0; k < C; k++)
            assert_true(fabs(c.out[i * C + k] - c.x[i * C + k] * r * c.w[k]) < 1e-12);
    }
    double *dx = drand_vec((size_t)N * C, 0), *base = drand_vec((size_t)N * C, 1);
    memcpy(dx, base, sizeof(double) * N * C); /* backward accumulates: start from a non-zero value */
    K64->rmsnorm_backward(dx, c.R, c.x, c.w, c.rstd, N, C);
    for (size_t i = 0; i < (size_t)N * C; i++)
        dx[i] -= base[i];
    check_grad("rmsnorm dx", rms_obj, &c, c.x, (size_t)N * C, dx);
}

static void test_rmsnorm_grad(void **state) {
    rmsnorm_case(3, 8);
    rmsnorm_case(4, 37);
}

static void test_qk_norm_grad(void **state) {
    /* Qwen3 q/k norm: (N tokens, 3 heads, head_dim 4) is rmsnorm over 3N rows of 4 with one shared weight */
    rmsnorm_case(2 * 3, 4);
}

/* ---- RoPE ---- */

static eng_config rope_cfg(int llama3) {
    eng_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.rope_theta = llama3 ? 500000.0f : 10000.0f;
    cfg.rope_type = llama3 ? ENG_ROPE_LLAMA3 : ENG_ROPE_DEFAULT;
    cfg.rope_factor = 8.0f;
    cfg.rope_low_freq_factor = 1.0f;
    cfg.rope_high_freq_factor = 4.0f;
    cfg.rope_original_max_pos = 8192;
    return cfg;
}

/* The inverse frequencies written out in double, straight from HF's formulas. */
static double ref_inv_freq(int d, int hd, const eng_config *cfg) {
    double inv = 1.0 / pow(cfg->rope_theta, 2.0 * d / hd);
    if (cfg->rope_type != ENG_ROPE_LLAMA3) return inv;
    double wavelen = 2 * M_PI / inv, old = cfg->rope_original_max_pos;
    double lo_w = old / cfg->rope_low_freq_factor, hi_w = old / cfg->rope_high_freq_factor;
    if (wavelen < hi_w) return inv;
    if (wavelen > lo_w) return inv / cfg->rope_factor;
    double s = (old / wavelen - cfg->rope_low_freq_factor) /
               (cfg->rope_high_freq_factor - cfg->rope_low_freq_factor);
    return (1 - s) * inv / cfg->rope_factor + s * inv;
}

typedef struct {
    int N, nh, hd;
    const float *cos, *sin;
    const int *pos;
    double *x, *y, *R;
} rope_ctx;

static double rope_obj(void *p) {
    rope_ctx *c = p;
    size_t n = (size_t)c->N * c->nh * c->hd;
    memcpy(c->y, c->x, n * sizeof(double));
    K64->rope_forward(c->y, c->cos, c->sin, c->pos, c->N, c->nh, c->hd);
    return dot_d(c->y, c->R, n);
}

static void rope_case(int llama3) {
    const int hd = 8, h2 = hd / 2, maxpos = 16, N = 4, nh = 3;
    eng_config cfg = rope_cfg(llama3);
    float *cs = fz(maxpos * h2), *sn = fz(maxpos * h2);
    eng_rope_tables(cs, sn, maxpos, hd, &cfg);
    int branch[3] = {0, 0, 0}; /* llama3: high, medium and low frequencies all present */
    for (int d = 0; d < h2; d++) {
        double inv = ref_inv_freq(d, hd, &cfg);
        double wl = 2 * M_PI / (1.0 / pow(cfg.rope_theta, 2.0 * d / hd));
        branch[wl < 2048 ? 0 : (wl > 8192 ? 2 : 1)]++;
        for (int p = 0; p < maxpos; p++) {
            assert_true(fabs(cs[p * h2 + d] - cos(p * inv)) < 4e-6);
            assert_true(fabs(sn[p * h2 + d] - sin(p * inv)) < 4e-6);
        }
    }
    if (llama3) assert_true(branch[0] > 0 && branch[1] > 0 && branch[2] > 0);
    static const int pos[4] = {3, 0, 15, 7};
    size_t n = (size_t)N * nh * hd;
    rope_ctx c = {N, nh, hd, cs, sn, pos, drand_vec(n, 1), dz(n), drand_vec(n, 1)};
    rope_obj(&c);
    for (int i = 0; i < N; i++) /* forward against rotate_half: x * cos + rotate_half(x) * sin */
        for (int h = 0; h < nh; h++)
            for (int d = 0; d < hd; d++) {
                const double *x = c.x + (i * nh + h) * hd;
                double co = cs[pos[i] * h2 + d % h2], si = sn[pos[i] * h2 + d % h2];
                double rot = d < h2 ? -x[d + h2] : x[d - h2];
                assert_true(fabs(c.y[(i * nh + h) * hd + d] - (x[d] * co + rot * si)) < 1e-12);
            }
    double *dx = dz(n);
    memcpy(dx, c.R, n * sizeof(double));
    K64->rope_backward(dx, cs, sn, pos, N, nh, hd);
    check_grad(llama3 ? "rope llama3 dx" : "rope dx", rope_obj, &c, c.x, n, dx);
}

static void test_rope_default_grad(void **state) {
    rope_case(0);
}
static void test_rope_llama3_grad(void **state) {
    rope_case(1);
}

/* ---- causal GQA attention ---- */

/* Naive reference: full score rows, softmax, weighted sum. */
static void attention_ref(double *out, double *lse, const double *q, const double *k, const double *v, int B,
                          int T, int H, int KV, int hd) {
    double *s = dz(T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int kvh = h / (H / KV);
            for (int i = 0; i < T; i++) {
                const double *qi = q + ((size_t)(b * T + i) * H + h) * hd;
                double m = -INFINITY;
                for (int j = 0; j <= i; j++) {
                    s[j] = dot_d(qi, k + ((size_t)(b * T + j) * KV + kvh) * hd, hd) / sqrt(hd);
                    if (s[j] > m) m = s[j];
                }
                double sum = 0;
                for (int j = 0; j <= i; j++)
                    sum += exp(s[j] - m);
                double *o = out + ((size_t)(b * T + i) * H + h) * hd;
                for (int d = 0; d < hd; d++)
                    o[d] = 0;
                for (int j = 0; j <= i; j++)
                    for (int d = 0; d < hd; d++)
                        o[d] += exp(s[j] - m) / sum * v[((size_t)(b * T + j) * KV + kvh) * hd + d];
                lse[((size_t)b * H + h) * T + i] = m + log(sum);
            }
        }
}

typedef struct {
    int B, T, H, KV, hd;
    double *q, *k, *v, *out, *lse, *R;
} att_ctx;

static double att_obj(void *p) {
    att_ctx *c = p;
    K64->attention_forward(c->out, c->lse, c->q, c->k, c->v, c->B, c->T, c->H, c->KV, c->hd);
    return dot_d(c->out, c->R, (size_t)c->B * c->T * c->H * c->hd);
}

static att_ctx att_make(int B, int T, int H, int KV, int hd, double scale) {
    size_t nq = (size_t)B * T * H * hd, nk = (size_t)B * T * KV * hd;
    att_ctx c = {B,
                 T,
                 H,
                 KV,
                 hd,
                 drand_vec(nq, scale),
                 drand_vec(nk, scale),
                 drand_vec(nk, 1),
                 dz(nq),
                 dz((size_t)B * H * T),
                 drand_vec(nq, 1)};
    return c;
}

static void test_attention_forward_ref(void **state) {
    /* T = 130 crosses two key tiles, so the running-max rescaling between tiles is exercised */
    att_ctx c = att_make(2, 130, 4, 2, 8, 2.0);
    size_t nq = (size_t)c.B * c.T * c.H * c.hd, nl = (size_t)c.B * c.H * c.T;
    double *ro = dz(nq), *rl = dz(nl);
    att_obj(&c);
    attention_ref(ro, rl, c.q, c.k, c.v, c.B, c.T, c.H, c.KV, c.hd);
    assert_true(rel_err(c.out, ro, nq) < 1e-12);
    assert_true(rel_err(c.lse, rl, nl) < 1e-12);
    /* the float instantiation agrees with the double one */
    size_t nk = (size_t)c.B * c.T * c.KV * c.hd;
    float *o32 = fz(nq), *l32 = fz(nl);
    K32->attention_forward(o32, l32, to_f32(c.q, nq), to_f32(c.k, nk), to_f32(c.v, nk), c.B, c.T, c.H, c.KV,
                           c.hd);
    assert_true(rel_err_f(o32, ro, nq) < 1e-5);
    assert_true(rel_err_f(l32, rl, nl) < 1e-5);
}

static void test_attention_causal(void **state) {
    /* changing the last position (as right padding would) leaves every earlier row bit-identical */
    att_ctx c = att_make(1, 6, 2, 1, 4, 1.0);
    size_t nq = (size_t)c.T * c.H * c.hd;
    att_obj(&c);
    double *o1 = dz(nq);
    memcpy(o1, c.out, nq * sizeof(double));
    for (int d = 0; d < c.hd; d++) {
        c.k[(c.T - 1) * c.KV * c.hd + d] += 3.0;
        c.v[(c.T - 1) * c.KV * c.hd + d] -= 2.0;
    }
    for (int d = 0; d < c.H * c.hd; d++)
        c.q[(c.T - 1) * c.H * c.hd + d] *= -1;
    att_obj(&c);
    size_t prefix = (size_t)(c.T - 1) * c.H * c.hd;
    assert_memory_equal(o1, c.out, prefix * sizeof(double));
    assert_memory_not_equal(o1 + prefix, c.out + prefix, (nq - prefix) * sizeof(double));
}

static void test_attention_grad(void **state) {
    att_ctx c = att_make(2, 5, 4, 2, 4, 1.5); /* H != KV: two query heads per kv head */
    size_t nq = (size_t)c.B * c.T * c.H * c.hd, nk = (size_t)c.B * c.T * c.KV * c.hd;
    att_obj(&c);
    double *dq = dz(nq), *dk = dz(nk), *dv = dz(nk);
    K64->attention_backward(dq, dk, dv, c.R, c.out, c.lse, c.q, c.k, c.v, c.B, c.T, c.H, c.KV, c.hd);
    check_grad("attention dq", att_obj, &c, c.q, nq, dq);
    check_grad("attention dk", att_obj, &c, c.k, nk, dk);
    check_grad("attention dv", att_obj, &c, c.v, nk, dv);
    /* float backward agrees with double */
    float *dq32 = fz(nq), *dk32 = fz(nk), *dv32 = fz(nk);
    att_obj(&c);
    K32->attention_backward(dq32, dk32, dv32, to_f32(c.R, nq), to_f32(c.out, nq),
                            to_f32(c.lse, (size_t)c.B * c.H * c.T), to_f32(c.q, nq), to_f32(c.k, nk),
                            to_f32(c.v, nk), c.B, c.T, c.H, c.KV, c.hd);
    assert_true(rel_err_f(dq32, dq, nq) < 1e-5);
    assert_true(rel_err_f(dk32, dk, nk) < 1e-5);
    assert_true(rel_err_f(dv32, dv, nk) < 1e-5);
}

static void test_attention_grad_tiles(void **state) {
    /* T = 70: keys span two tiles of 64 and queries three blocks of 32 */
    att_ctx c = att_make(1, 70, 2, 1, 4, 1.5);
    size_t nq = (size_t)c.B * c.T * c.H * c.hd, nk = (size_t)c.B * c.T * c.KV * c.hd;
    att_obj(&c);
    double *dq = dz(nq), *dk = dz(nk), *dv = dz(nk);
    K64->attention_backward(dq, dk, dv, c.R, c.out, c.lse, c.q, c.k, c.v, c.B, c.T, c.H, c.KV, c.hd);
    check_grad("attention dq (tiles)", att_obj, &c, c.q, nq, dq);
    check_grad("attention dk (tiles)", att_obj, &c, c.k, nk, dk);
    check_grad("attention dv (tiles)", att_obj, &c, c.v, nk, dv);
}

static void test_attention_head_dims(void **state) {
    /* head_dim 64 and 40 take the 4-vector and 1-vector register paths of both instantiations */
    static const int hds[3] = {64, 40, 128};
    for (int t = 0; t < 3; t++) {
        att_ctx c = att_make(1, 40, 3, 1, hds[t], 1.0);
        size_t nq = (size_t)c.B * c.T * c.H * c.hd, nk = (size_t)c.B * c.T * c.KV * c.hd,
               nl = (size_t)c.H * c.T;
        double *ro = dz(nq), *rl = dz(nl);
        att_obj(&c);
        attention_ref(ro, rl, c.q, c.k, c.v, c.B, c.T, c.H, c.KV, c.hd);
        assert_true(rel_err(c.out, ro, nq) < 1e-12 && rel_err(c.lse, rl, nl) < 1e-12);
        float *q32 = to_f32(c.q, nq), *k32 = to_f32(c.k, nk), *v32 = to_f32(c.v, nk), *o32 = fz(nq),
              *l32 = fz(nl);
        K32->attention_forward(o32, l32, q32, k32, v32, c.B, c.T, c.H, c.KV, c.hd);
        assert_true(rel_err_f(o32, ro, nq) < 1e-5 && rel_err_f(l32, rl, nl) < 1e-5);
        double *dq = dz(nq), *dk = dz(nk), *dv = dz(nk);
        float *dq32 = fz(nq), *dk32 = fz(nk), *dv32 = fz(nk);
        K64->attention_backward(dq, dk, dv, c.R, c.out, c.lse, c.q, c.k, c.v, c.B, c.T, c.H, c.KV, c.hd);
        K32->attention_backward(dq32, dk32, dv32, to_f32(c.R, nq), o32, l32, q32, k32, v32, c.B, c.T, c.H,
                                c.KV, c.hd);
        assert_true(rel_err_f(dq32, dq, nq) < 1e-5 && rel_err_f(dk32, dk, nk) < 1e-5 &&
                    rel_err_f(dv32, dv, nk) < 1e-5);
    }
}

/* ---- SwiGLU ---- */

typedef struct {
    int N, F;
    double *g, *u, *out, *R;
} swi_ctx;

static double swi_obj(void *p) {
    swi_ctx *c = p;
    K64->swiglu_forward(c->out, c->g, c->u, c->N, c->F);
    return dot_d(c->out, c->R, (size_t)c->N * c->F);
}

static void test_swiglu_grad(void **state) {
    const int N = 3, F = 5;
    size_t n = (size_t)N * F;
    swi_ctx c = {N, F, drand_vec(n, 4), drand_vec(n, 2), dz(n), drand_vec(n, 1)};
    swi_obj(&c);
    for (size_t i = 0; i < n; i++)
        assert_true(fabs(c.out[i] - c.g[i] / (1 + exp(-c.g[i])) * c.u[i]) < 1e-12);
    double *dg = dz(n), *du = dz(n);
    K64->swiglu_backward(dg, du, c.R, c.g, c.u, N, F);
    check_grad("swiglu dgate", swi_obj, &c, c.g, n, dg);
    check_grad("swiglu dup", swi_obj, &c, c.u, n, du);
    swi_obj(&c); /* the checks leave out[] at a perturbed point */
    float *o32 = fz(n), *dg32 = fz(n), *du32 = fz(n);
    float *g32 = to_f32(c.g, n), *u32 = to_f32(c.u, n), *R32 = to_f32(c.R, n);
    K32->swiglu_forward(o32, g32, u32, N, F);
    K32->swiglu_backward(dg32, du32, R32, g32, u32, N, F);
    assert_true(rel_err_f(o32, c.out, n) < 1e-6);
    assert_true(rel_err_f(dg32, dg, n) < 1e-6);
    assert_true(rel_err_f(du32, du, n) < 1e-6);
}

/* ---- linear + bias ---- */

typedef struct {
    int N, I, O;
    double *x, *W, *b, *out, *R;
} lin_ctx;

static double lin_obj(void *p) {
    lin_ctx *c = p;
    K64->linear_forward(c->out, c->x, c->W, c->b, c->N, c->I, c->O);
    return dot_d(c->out, c->R, (size_t)c->N * c->O);
}

static void test_linear_grad(void **state) {
    const int N = 3, I = 4, O = 5;
    lin_ctx c = {
        N, I, O, drand_vec(N * I, 1), drand_vec(O * I, 1), drand_vec(O, 1), dz(N * O), drand_vec(N * O, 1)};
    lin_obj(&c);
    for (int i = 0; i < N; i++)
        for (int o = 0; o < O; o++) {
            double y = c.b[o];
            for (int k = 0; k < I; k++)
                y += c.x[i * I + k] * c.W[o * I + k];
            assert_true(fabs(c.out[i * O + o] - y) < 1e-12);
        }
    double *dx = dz(N * I);
    K64->linear_backward(dx, c.R, c.W, N, I, O);
    check_grad("linear dx", lin_obj, &c, c.x, N * I, dx);
    lin_obj(&c); /* the check leaves out[] at a perturbed point */
    /* bias may be NULL */
    double *o2 = dz(N * O);
    K64->linear_forward(o2, c.x, c.W, NULL, N, I, O);
    for (int i = 0; i < N; i++)
        for (int o = 0; o < O; o++)
            assert_true(fabs(c.out[i * O + o] - o2[i * O + o] - c.b[o]) < 1e-12);
    float *o32 = fz(N * O);
    K32->linear_forward(o32, to_f32(c.x, N * I), to_f32(c.W, O * I), to_f32(c.b, O), N, I, O);
    assert_true(rel_err_f(o32, c.out, N * O) < 1e-6);
}

/* ---- LoRA ---- */

typedef struct {
    int N, I, r, O;
    float scale;
    double *x, *A, *B, *base, *out, *xa, *R;
} lora_ctx;

static double lora_obj(void *p) {
    lora_ctx *c = p;
    memcpy(c->out, c->base, sizeof(double) * c->N * c->O);
    K64->lora_forward(c->out, c->xa, c->x, c->A, c->B, c->scale, c->N, c->I, c->r, c->O);
    return dot_d(c->out, c->R, (size_t)c->N * c->O);
}

static void test_lora_grad(void **state) {
    const int N = 3, I = 4, r = 2, O = 5;
    lora_ctx c = {N,
                  I,
                  r,
                  O,
                  0.75f,
                  drand_vec(N * I, 1),
                  drand_vec(r * I, 1),
                  drand_vec(O * r, 1),
                  drand_vec(N * O, 1),
                  dz(N * O),
                  dz(N * r),
                  drand_vec(N * O, 1)};
    lora_obj(&c);
    for (int i = 0; i < N; i++) /* out = base + s (x A^T) B^T */
        for (int o = 0; o < O; o++) {
            double y = 0;
            for (int j = 0; j < r; j++) {
                double xa = 0;
                for (int k = 0; k < I; k++)
                    xa += c.x[i * I + k] * c.A[j * I + k];
                y += xa * c.B[o * r + j];
            }
            assert_true(fabs(c.out[i * O + o] - c.base[i * O + o] - 0.75 * y) < 1e-12);
        }
    double *dx = dz(N * I), *dA = dz(r * I), *dB = dz(O * r), *scratch = dz(N * r);
    K64->lora_backward(dx, dA, dB, c.R, c.x, c.xa, c.A, c.B, c.scale, N, I, r, O, scratch);
    check_grad("lora dA", lora_obj, &c, c.A, r * I, dA);
    check_grad("lora dB", lora_obj, &c, c.B, O * r, dB);
    check_grad("lora dx", lora_obj, &c, c.x, N * I, dx);
    /* dinp NULL skips the input gradient but still accumulates dA, dB */
    double *dA2 = dz(r * I), *dB2 = dz(O * r);
    lora_obj(&c);
    K64->lora_backward(NULL, dA2, dB2, c.R, c.x, c.xa, c.A, c.B, c.scale, N, I, r, O, scratch);
    assert_true(rel_err(dA2, dA, r * I) < 1e-14 && rel_err(dB2, dB, O * r) < 1e-14);
}

/* The LoRA kernels split their GEMMs over threads (row, column and output slices inside one region) once the
 * work is large enough, and single rows (batch-1 decoding) go through GEMV. Both paths against a naive
 * reference of the formulas that test_lora_grad checks by finite differences; 3 threads give uneven slices.
 */
static void lora_naive(double *out, double *xa, double *din, double *dA, double *dB, const double *in,
                       const double *A, const double *B, const double *dout, double s, int N, int In, int r,
                       int O) {
    double *g = dz((size_t)N * r);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < r; j++) {
            double a = 0, gg = 0;
            for (int k = 0; k < In; k++)
                a += in[(size_t)i * In + k] * A[(size_t)j * In + k];
            for (int o = 0; o < O; o++)
                gg += dout[(size_t)i * O + o] * B[(size_t)o * r + j];
            xa[(size_t)i * r + j] = a, g[(size_t)i * r + j] = gg;
        }
    for (int i = 0; i < N; i++) {
        for (int o = 0; o < O; o++)
            for (int j = 0; j < r; j++)
                out[(size_t)i * O + o] += s * xa[(size_t)i * r + j] * B[(size_t)o * r + j];
        for (int k = 0; k < In; k++)
            for (int j = 0; j < r; j++)
                din[(size_t)i * In + k] += s * g[(size_t)i * r + j] * A[(size_t)j * In + k];
    }
    for (int i = 0; i < N; i++)
        for (int j = 0; j < r; j++) {
            for (int k = 0; k < In; k++)
                dA[(size_t)j * In + k] += s * g[(size_t)i * r + j] * in[(size_t)i * In + k];
            for (int o = 0; o < O; o++)
                dB[(size_t)o * r + j] += s * dout[(size_t)i * O + o] * xa[(size_t)i * r + j];
        }
}

static void test_lora_paths(void **state) {
    static const int shapes[][4] = {{70, 300, 5, 260}, {1, 40, 3, 24}}; /* N, In, r, O */
    for (int sh = 0; sh < 2; sh++)
        for (int nt = 1; nt <= 3; nt++) {
            omp_set_num_threads(nt);
            const int N = shapes[sh][0], In = shapes[sh][1], r = shapes[sh][2], O = shapes[sh][3];
            double *in = drand_vec((size_t)N * In, 1), *A = drand_vec((size_t)r * In, 1),
                   *B = drand_vec((size_t)O * r, 1), *dout = drand_vec((size_t)N * O, 1),
                   *base = drand_vec((size_t)N * O, 1);
            double *out = dz((size_t)N * O), *xa = dz((size_t)N * r), *din = drand_vec((size_t)N * In, 1),
                   *dA = drand_vec((size_t)r * In, 1), *dB = drand_vec((size_t)O * r, 1),
                   *sc = dz((size_t)N * r);
            double *rout = dz((size_t)N * O), *rxa = dz((size_t)N * r), *rdin = dz((size_t)N * In),
                   *rdA = dz((size_t)r * In), *rdB = dz((size_t)O * r);
            memcpy(out, base, sizeof(double) * N * O);
            memcpy(rout, base, sizeof(double) * N * O);
            memcpy(rdin, din, sizeof(double) * N * In);
            memcpy(rdA, dA, sizeof(double) * r * In);
            memcpy(rdB, dB, sizeof(double) * O * r);
            K64->lora_forward(out, xa, in, A, B, 0.5f, N, In, r, O);
            K64->lora_backward(din, dA, dB, dout, in, xa, A, B, 0.5f, N, In, r, O, sc);
            lora_naive(rout, rxa, rdin, rdA, rdB, in, A, B, dout, 0.5, N, In, r, O);
            assert_true(rel_err(out, rout, (size_t)N * O) < 1e-13 && rel_err(xa, rxa, (size_t)N * r) < 1e-13);
            assert_true(rel_err(din, rdin, (size_t)N * In) < 1e-13);
            assert_true(rel_err(dA, rdA, (size_t)r * In) < 1e-13 && rel_err(dB, rdB, (size_t)O * r) < 1e-13);
            /* the plain linear on the same shape: y = in W^T + b, and dinp += dout W */
            double *bias = drand_vec(O, 1), *y = dz((size_t)N * O), *dx = dz((size_t)N * In);
            double *W = drand_vec((size_t)O * In, 1);
            K64->linear_forward(y, in, W, bias, N, In, O);
            K64->linear_backward(dx, dout, W, N, In, O);
            for (int i = 0; i < N; i += 7)
                for (int o = 0; o < O; o += 5) {
                    double ref = bias[o];
                    for (int k = 0; k < In; k++)
                        ref += in[(size_t)i * In + k] * W[(size_t)o * In + k];
                    assert_true(fabs(y[(size_t)i * O + o] - ref) < 1e-11);
                }
            for (int i = 0; i < N; i += 7)
                for (int k = 0; k < In; k += 5) {
                    double ref = 0;
                    for (int o = 0; o < O; o++)
                        ref += dout[(size_t)i * O + o] * W[(size_t)o * In + k];
                    assert_true(fabs(dx[(size_t)i * In + k] - ref) < 1e-11);
                }
        }
}

/* ---- embedding (a gather: frozen, so there is no backward) ---- */

static void test_embedding(void **state) {
    const int V = 7, C = 5, N = 4;
    double *wte = drand_vec(V * C, 1), *out = dz(N * C);
    static const int tok[4] = {6, 0, 3, 6};
    K64->embedding_forward(out, tok, wte, N, C);
    for (int i = 0; i < N; i++)
        assert_memory_equal(out + i * C, wte + tok[i] * C, C * sizeof(double));
    float *o32 = fz(N * C), *w32 = to_f32(wte, V * C);
    K32->embedding_forward(o32, tok, w32, N, C);
    for (int i = 0; i < N; i++)
        assert_memory_equal(o32 + i * C, w32 + tok[i] * C, C * sizeof(float));
}

/* ---- head + fused cross-entropy ---- */

typedef struct {
    int N, C, V, chunk;
    double *x, *W, *logp, *ent, *scratch;
    const int *targets;
    eng_token_loss_fn_f64 fn;
    void *lctx;
} head_ctx;

static double head_obj(void *p) {
    head_ctx *c = p;
    return K64->head_loss(c->logp, NULL, NULL, c->x, c->W, c->targets, c->N, c->C, c->V, c->chunk, c->fn,
                          c->lctx, c->scratch);
}

static head_ctx head_make(int N, int C, int V, int chunk, const int *targets, const eng_loss *loss,
                          void *lctx) {
    head_ctx c = {N,
                  C,
                  V,
                  chunk,
                  drand_vec((size_t)N * C, 1.5),
                  drand_vec((size_t)V * C, 1.5),
                  dz(N),
                  dz(N),
                  dz((size_t)N * V),
                  targets,
                  loss->fn_f64,
                  lctx};
    return c;
}

static const int head_targets[6] = {-1, 3, 0, 6, -1, 2};
static const float head_weights[6] = {1.0f, 0.5f, 0.0f, -1.5f, 2.0f, 1.0f};

static void test_head_ce(void **state) {
    const int N = 6, C = 5, V = 7;
    eng_loss_cfg lc;
    const eng_loss *ce = eng_loss_by_name("cross_entropy", NULL);
    eng_loss_cfg_init(&lc, ce);
    lc.weights = head_weights;
    head_ctx c = head_make(N, C, V, N, head_targets, ce, &lc);
    double *dx = dz(N * C);
    double loss = K64->head_loss(c.logp, dx, c.ent, c.x, c.W, c.targets, N, C, V, N, c.fn, c.lctx, c.scratch);
    /* logp, entropy and loss against a naive log-softmax */
    double want = 0;
    for (int i = 0; i < N; i++) {
        double z[7], m = -INFINITY, s = 0, h = 0;
        for (int j = 0; j < V; j++) {
            z[j] = dot_d(c.x + i * C, c.W + j * C, C);
            if (z[j] > m) m = z[j];
        }
        for (int j = 0; j < V; j++)
            s += exp(z[j] - m);
        for (int j = 0; j < V; j++) {
            double lpj = z[j] - m - log(s);
            h -= exp(lpj) * lpj;
        }
        assert_true(fabs(c.ent[i] - h) < 1e-12);
        int t = head_targets[i];
        double lp = t >= 0 ? z[t] - m - log(s) : 0;
        assert_true(fabs(c.logp[i] - lp) < 1e-12);
        if (t >= 0) want += -head_weights[i] * lp;
    }
    assert_true(fabs(loss - want) < 1e-12);
    /* masked rows (target -1, or weight 0) get no gradient */
    for (int k = 0; k < C; k++)
        assert_true(dx[0 * C + k] == 0 && dx[2 * C + k] == 0 && dx[4 * C + k] == 0);
    check_grad("head cross-entropy dx", head_obj, &c, c.x, N * C, dx);
}

static void test_head_chunked(void **state) {
    const int N = 6, C = 5, V = 7;
    eng_loss_cfg lc;
    const eng_loss *ce = eng_loss_by_name("cross_entropy", NULL);
    eng_loss_cfg_init(&lc, ce);
    lc.weights = head_weights;
    head_ctx c = head_make(N, C, V, N, head_targets, ce, &lc);
    double *dx_full = dz(N * C), *lp_full = dz(N);
    double l_full =
        K64->head_loss(lp_full, dx_full, NULL, c.x, c.W, c.targets, N, C, V, N, c.fn, c.lctx, c.scratch);
    static const int chunks[3] = {1, 4, 5};
    for (int k = 0; k < 3; k++) {
        double *dx = dz(N * C), *lp = dz(N);
        double l =
            K64->head_loss(lp, dx, NULL, c.x, c.W, c.targets, N, C, V, chunks[k], c.fn, c.lctx, c.scratch);
        assert_true(fabs(l - l_full) < 1e-12 * fabs(l_full));
        assert_true(rel_err(lp, lp_full, N) < 1e-13);
        assert_true(rel_err(dx, dx_full, N * C) < 1e-13);
    }
    /* float instantiation, chunked, against double */
    float *dx32 = fz(N * C), *lp32 = fz(N), *sc32 = fz(4 * V);
    double l32 = K32->head_loss(lp32, dx32, NULL, to_f32(c.x, N * C), to_f32(c.W, V * C), c.targets, N, C, V,
                                4, ce->fn, &lc, sc32);
    assert_true(fabs(l32 - l_full) < 1e-5 * fabs(l_full));
    assert_true(rel_err_f(lp32, lp_full, N) < 1e-5);
    assert_true(rel_err_f(dx32, dx_full, N * C) < 1e-5);
}

/* RL losses through the head: dx against finite differences (cispo excluded: its stop-gradient makes the
 * analytic gradient differ from the derivative of its value by design; see test_losses.c). */
static void test_head_rl_grad(void **state) {
    const int N = 6, C = 5, V = 7;
    static const float adv[6] = {0.0f, 1.5f, -0.7f, 2.0f, 0.3f, -1.2f};
    static const char *names[3] = {"importance_sampling", "ppo", "dro"};
    for (int k = 0; k < 3; k++) {
        const eng_loss *loss = eng_loss_by_name(names[k], NULL);
        assert_non_null(loss);
        eng_loss_cfg lc;
        eng_loss_cfg_init(&lc, loss);
        head_ctx c = head_make(N, C, V, 4, head_targets, loss, &lc);
        /* sampler logprobs near the learner's so PPO's ratios straddle the clip range */
        double *lp0 = dz(N);
        K64->head_loss(lp0, NULL, NULL, c.x, c.W, c.targets, N, C, V, N, eng_losses[0].fn_f64,
                       &(eng_loss_cfg){0}, c.scratch);
        static const double shift[6] = {0.0, 0.05, -0.5, 0.6, 0.1, -0.02};
        float *q = fz(N);
        for (int i = 0; i < N; i++)
            q[i] = (float)(lp0[i] + shift[i]);
        lc.logprobs = q;
        lc.advantages = adv;
        lc.beta = 0.3f;
        double *dx = dz(N * C);
        K64->head_loss(c.logp, dx, NULL, c.x, c.W, c.targets, N, C, V, 4, c.fn, c.lctx, c.scratch);
        check_grad(names[k], head_obj, &c, c.x, N * C, dx);
    }
}

/* ---- head with a LoRA on it (train_unembed) ---- */

typedef struct {
    head_ctx h;
    int r;
    float scale;
    double *A, *B;
} head_lora_ctx;

static double head_lora_obj(void *p) {
    head_lora_ctx *c = p;
    return K64->head_loss_lora(c->h.logp, NULL, NULL, c->h.x, c->h.W, c->A, c->B, c->scale, c->r, NULL, NULL,
                               c->h.targets, c->h.N, c->h.C, c->h.V, c->h.chunk, c->h.fn, c->h.lctx,
                               c->h.scratch);
}

static void test_head_lora_grad(void **state) {
    const int N = 6, C = 5, V = 7, r = 3, chunk = 4;
    eng_loss_cfg lc;
    const eng_loss *ce = eng_loss_by_name("cross_entropy", NULL);
    eng_loss_cfg_init(&lc, ce);
    lc.weights = head_weights;
    head_lora_ctx c = {head_make(N, C, V, chunk, head_targets, ce, &lc), r, 0.6f, drand_vec(r * C, 1),
                       drand_vec(V * r, 1)};
    c.h.scratch = dz((size_t)chunk * V + 2 * chunk * r);
    double *dx = dz(N * C), *dA = dz(r * C), *dB = dz(V * r);
    K64->head_loss_lora(c.h.logp, dx, NULL, c.h.x, c.h.W, c.A, c.B, c.scale, r, dA, dB, c.h.targets, N, C, V,
                        chunk, c.h.fn, c.h.lctx, c.h.scratch);
    check_grad("head lora dA", head_lora_obj, &c, c.A, r * C, dA);
    check_grad("head lora dB", head_lora_obj, &c, c.B, V * r, dB);
    check_grad("head lora dx", head_lora_obj, &c, c.h.x, N * C, dx);
    /* the same as head_loss on the merged weight W + s B A */
    double *Wm = dz(V * C);
    for (int v = 0; v < V; v++)
        for (int k = 0; k < C; k++) {
            double a = 0;
            for (int j = 0; j < r; j++)
                a += c.B[v * r + j] * c.A[j * C + k];
            Wm[v * C + k] = c.h.W[v * C + k] + 0.6f * a;
        }
    double *lp1 = dz(N), *lp2 = dz(N), *dx1 = dz(N * C), *dx2 = dz(N * C), *dA1 = dz(r * C), *dB1 = dz(V * r);
    double l1 = K64->head_loss_lora(lp1, dx1, NULL, c.h.x, c.h.W, c.A, c.B, c.scale, r, dA1, dB1, c.h.targets,
                                    N, C, V, chunk, c.h.fn, c.h.lctx, c.h.scratch);
    double l2 =
        K64->head_loss(lp2, dx2, NULL, c.h.x, Wm, c.h.targets, N, C, V, chunk, c.h.fn, c.h.lctx, c.h.scratch);
    assert_true(fabs(l1 - l2) < 1e-12 * fabs(l2));
    assert_true(rel_err(lp1, lp2, N) < 1e-12 && rel_err(dx1, dx2, N * C) < 1e-12);
    /* float agrees */
    float *lp32 = fz(N), *dx32 = fz(N * C), *dA32 = fz(r * C), *dB32 = fz(V * r);
    float *sc32 = fz((size_t)chunk * V + 2 * chunk * r);
    K32->head_loss_lora(lp32, dx32, NULL, to_f32(c.h.x, N * C), to_f32(c.h.W, V * C), to_f32(c.A, r * C),
                        to_f32(c.B, V * r), c.scale, r, dA32, dB32, c.h.targets, N, C, V, chunk, ce->fn, &lc,
                        sc32);
    assert_true(rel_err_f(lp32, lp1, N) < 1e-5 && rel_err_f(dx32, dx1, N * C) < 1e-5);
    assert_true(rel_err_f(dA32, dA1, r * C) < 1e-5 && rel_err_f(dB32, dB1, V * r) < 1e-5);
}

/* ---- float instantiation against double for the kernels not compared above ---- */

static void test_float_matches_double(void **state) {
    const int N = 5, C = 24, nh = 3, hd = 8, In = 12, r = 4, O = 10;
    /* rmsnorm forward and backward */
    double *x = drand_vec(N * C, 2), *w = drand_vec(C, 1), *dy = drand_vec(N * C, 1);
    double *y = dz(N * C), *rs = dz(N), *dx = dz(N * C);
    K64->rmsnorm_forward(y, rs, x, w, N, C, 1e-6f);
    K64->rmsnorm_backward(dx, dy, x, w, rs, N, C);
    float *y32 = fz(N * C), *rs32 = fz(N), *dx32 = fz(N * C), *x32 = to_f32(x, N * C), *w32 = to_f32(w, C);
    K32->rmsnorm_forward(y32, rs32, x32, w32, N, C, 1e-6f);
    K32->rmsnorm_backward(dx32, to_f32(dy, N * C), x32, w32, rs32, N, C);
    assert_true(rel_err_f(y32, y, N * C) < 1e-6 && rel_err_f(rs32, rs, N) < 1e-6 &&
                rel_err_f(dx32, dx, N * C) < 1e-6);
    /* rope forward and backward, Llama 3 tables */
    eng_config cfg = rope_cfg(1);
    float *cs = fz(32 * hd / 2), *sn = fz(32 * hd / 2);
    eng_rope_tables(cs, sn, 32, hd, &cfg);
    static const int pos[5] = {31, 0, 9, 17, 4};
    double *q = drand_vec(N * nh * hd, 1);
    float *q32 = to_f32(q, N * nh * hd);
    K64->rope_forward(q, cs, sn, pos, N, nh, hd);
    K32->rope_forward(q32, cs, sn, pos, N, nh, hd);
    assert_true(rel_err_f(q32, q, N * nh * hd) < 1e-6);
    K64->rope_backward(q, cs, sn, pos, N, nh, hd);
    K32->rope_backward(q32, cs, sn, pos, N, nh, hd);
    assert_true(rel_err_f(q32, q, N * nh * hd) < 1e-6);
    /* LoRA forward and backward */
    double *in = drand_vec(N * In, 1), *A = drand_vec(r * In, 1), *B = drand_vec(O * r, 1),
           *dout = drand_vec(N * O, 1);
    double *out = dz(N * O), *xa = dz(N * r), *dA = dz(r * In), *dB = dz(O * r), *din = dz(N * In),
           *sc = dz(N * r);
    K64->lora_forward(out, xa, in, A, B, 2.0f, N, In, r, O);
    K64->lora_backward(din, dA, dB, dout, in, xa, A, B, 2.0f, N, In, r, O, sc);
    float *out32 = fz(N * O), *xa32 = fz(N * r), *dA32 = fz(r * In), *dB32 = fz(O * r), *din32 = fz(N * In);
    float *in32 = to_f32(in, N * In), *A32 = to_f32(A, r * In), *B32 = to_f32(B, O * r);
    K32->lora_forward(out32, xa32, in32, A32, B32, 2.0f, N, In, r, O);
    K32->lora_backward(din32, dA32, dB32, to_f32(dout, N * O), in32, xa32, A32, B32, 2.0f, N, In, r, O,
                       fz(N * r));
    assert_true(rel_err_f(out32, out, N * O) < 1e-6 && rel_err_f(din32, din, N * In) < 1e-6);
    assert_true(rel_err_f(dA32, dA, r * In) < 1e-6 && rel_err_f(dB32, dB, O * r) < 1e-6);
}

/* ---- AdamW ---- */

static void test_adamw(void **state) {
    const int n = 6, steps = 4;
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f;
    float p[6], m[6] = {0}, v[6] = {0}, g[6];
    double rp[6], rm[6] = {0}, rv[6] = {0};
    for (int i = 0; i < n; i++)
        rp[i] = p[i] = (float)urand();
    for (int t = 1; t <= steps; t++) {
        for (int i = 0; i < n; i++)
            g[i] = (float)(urand() * (i + 1));
        K32->adamw(p, g, m, v, n, lr, b1, b2, eps, wd, t);
        for (int i = 0; i < n; i++) { /* torch.optim.AdamW, written out */
            rp[i] *= 1.0 - (double)lr * wd;
            rm[i] = b1 * rm[i] + (1.0 - b1) * g[i];
            rv[i] = b2 * rv[i] + (1.0 - b2) * (double)g[i] * g[i];
            double mh = rm[i] / (1.0 - pow(b1, t)), vh = rv[i] / (1.0 - pow(b2, t));
            rp[i] -= lr * mh / (sqrt(vh) + eps);
        }
        for (int i = 0; i < n; i++) {
            assert_true(fabs(p[i] - rp[i]) < 1e-6);
            assert_true(fabs(m[i] - rm[i]) < 1e-6 * (1 + fabs(rm[i])));
            assert_true(fabs(v[i] - rv[i]) < 1e-6 * (1 + fabs(rv[i])));
        }
    }
    /* first step by hand: m^ = g, v^ = g^2, so p1 = p0 (1 - lr wd) - lr g / (|g| + eps) */
    float p1[2] = {0.5f, -2.0f}, g1[2] = {3.0f, -0.25f}, m1[2] = {0}, v1[2] = {0};
    K32->adamw(p1, g1, m1, v1, 2, lr, b1, b2, eps, wd, 1);
    assert_true(fabs(p1[0] - (0.5 * (1 - 1e-3) - 1e-2 * 3.0 / (3.0 + 1e-8))) < 1e-7);
    assert_true(fabs(p1[1] - (-2.0 * (1 - 1e-3) + 1e-2 * 0.25 / (0.25 + 1e-8))) < 1e-7);
    /* double instantiation follows the same formula */
    double pd[2] = {0.5, -2.0}, gd[2] = {3.0, -0.25}, md[2] = {0}, vd[2] = {0};
    K64->adamw(pd, gd, md, vd, 2, lr, b1, b2, eps, wd, 1);
    assert_true(fabs(pd[0] - p1[0]) < 1e-7 && fabs(pd[1] - p1[1]) < 1e-7);
}

/* ---- threading: a large enough problem to take the parallel paths gives the serial answer ---- */

static void test_parallel_paths(void **state) {
    /* rmsnorm over 256 rows of 128 (> PAR_MIN elements) against a serial loop */
    const int N = 256, C = 128;
    size_t n = (size_t)N * C;
    double *x = drand_vec(n, 1), *w = drand_vec(C, 1), *out = dz(n), *rstd = dz(N);
    K64->rmsnorm_forward(out, rstd, x, w, N, C, 1e-6f);
    for (int i = 0; i < N; i += 17) {
        double ss = 0;
        for (int k = 0; k < C; k++)
            ss += x[i * C + k] * x[i * C + k];
        double r = 1.0 / sqrt(ss / C + 1e-6f);
        for (int k = 0; k < C; k++)
            assert_true(fabs(out[i * C + k] - x[i * C + k] * r * w[k]) < 1e-12);
    }
    /* attention big enough to fork: same as the naive reference */
    att_ctx c = att_make(2, 64, 3, 1, 16, 1.0);
    size_t nq = (size_t)c.B * c.T * c.H * c.hd, nl = (size_t)c.B * c.H * c.T;
    double *ro = dz(nq), *rl = dz(nl);
    att_obj(&c);
    attention_ref(ro, rl, c.q, c.k, c.v, c.B, c.T, c.H, c.KV, c.hd);
    assert_true(rel_err(c.out, ro, nq) < 1e-12);
    /* the float attention is bit-identical on one thread and on several (each output has one owner) */
    att_ctx d = att_make(2, 96, 4, 2, 64, 1.0);
    size_t dq_n = (size_t)d.B * d.T * d.H * d.hd, dk_n = (size_t)d.B * d.T * d.KV * d.hd,
           dl_n = (size_t)d.B * d.H * d.T;
    float *q32 = to_f32(d.q, dq_n), *k32 = to_f32(d.k, dk_n), *v32 = to_f32(d.v, dk_n),
          *R32 = to_f32(d.R, dq_n);
    float *ao[2], *l[2], *gq[2], *gk[2], *gv[2];
    for (int run = 0; run < 2; run++) {
        omp_set_num_threads(run == 0 ? 1 : (default_threads > 1 ? default_threads : 2));
        ao[run] = fz(dq_n), l[run] = fz(dl_n), gq[run] = fz(dq_n), gk[run] = fz(dk_n), gv[run] = fz(dk_n);
        K32->attention_forward(ao[run], l[run], q32, k32, v32, d.B, d.T, d.H, d.KV, d.hd);
        K32->attention_backward(gq[run], gk[run], gv[run], R32, ao[run], l[run], q32, k32, v32, d.B, d.T, d.H,
                                d.KV, d.hd);
    }
    assert_memory_equal(ao[0], ao[1], dq_n * sizeof(float));
    assert_memory_equal(l[0], l[1], dl_n * sizeof(float));
    assert_memory_equal(gq[0], gq[1], dq_n * sizeof(float));
    assert_memory_equal(gk[0], gk[1], dk_n * sizeof(float));
    assert_memory_equal(gv[0], gv[1], dk_n * sizeof(float));
    /* SwiGLU with the float vectorised exp over a wide range of gates */
    const size_t m = 40000;
    float *g = fz(m), *u = fz(m), *o = fz(m);
    for (size_t i = 0; i < m; i++) {
        g[i] = (float)(-60.0 + 120.0 * (double)i / (double)m);
        u[i] = 1.0f;
    }
    K32->swiglu_forward(o, g, u, 1, (int)m);
    for (size_t i = 0; i < m; i++) {
        double want = g[i] / (1.0 + exp(-(double)g[i]));
        assert_true(fabs(o[i] - want) <= 1e-6 * fabs(want) + 1e-30);
    }
}

int main(void) {
    default_threads = omp_get_max_threads();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_rmsnorm_grad, setup, teardown),
        cmocka_unit_test_setup_teardown(test_qk_norm_grad, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rope_default_grad, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rope_llama3_grad, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attention_forward_ref, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attention_causal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attention_grad, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attention_grad_tiles, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attention_head_dims, setup, teardown),
        cmocka_unit_test_setup_teardown(test_swiglu_grad, setup, teardown),
        cmocka_unit_test_setup_teardown(test_linear_grad, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lora_grad, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lora_paths, setup_parallel, teardown),
        cmocka_unit_test_setup_teardown(test_embedding, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head_ce, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head_chunked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head_rl_grad, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head_lora_grad, setup, teardown),
        cmocka_unit_test_setup_teardown(test_float_matches_double, setup, teardown),
        cmocka_unit_test_setup_teardown(test_adamw, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parallel_paths, setup_parallel, teardown),
    };
    return cmocka_run_group_tests_name("kernels", tests, NULL, NULL);
}
