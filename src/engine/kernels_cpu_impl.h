/* kernels_cpu_impl.h: the CPU kernel bodies, written once and generic over the scalar type.
 *
 * kernels_cpu.c includes this file twice: once with REAL = float (the production table returned by
 * eng_kernels_cpu) and once with REAL = double (eng_kernels_cpu_f64, used only by the finite-difference
 * gradient checks, which need double precision to reach 1e-6 relative error). The includer defines:
 *
 *   REAL        the scalar type
 *   SFX(name)   a suffixed name (name##_f32 / name##_f64) so both instantiations live in one object file
 *   GEMM        cblas_sgemm / cblas_dgemm
 *   GEMV        cblas_sgemv / cblas_dgemv (single-row linear and LoRA calls)
 *   EXPV(x)     an exp that vectorises inside `omp simd` loops (a polynomial for float, exp for double)
 *   LOSSFN      the per-token loss callback type (eng_token_loss_fn / eng_token_loss_fn_f64)
 *   KTABLE      the table type (eng_kernels / eng_kernels_f64) and KNAME its name string
 *
 * Scalar math goes through <tgmath.h>, so sqrt/exp/log pick the float or double version from the argument.
 *
 * Threading: every loop over rows is an `omp parallel for` (with an `if` clause so tiny calls stay serial);
 * inner loops over contiguous memory carry `omp simd` so GCC vectorises them at -O2. BLAS is called outside
 * parallel regions (the OpenMP build of OpenBLAS takes its threads from the same pool), except in the LoRA
 * kernels, which call it on per-thread slices inside their own region (BLAS then runs on the calling thread).
 * No kernel allocates. Every output element is written by exactly one thread in a fixed order, so results do
 * not depend on scheduling (they may depend on the thread count only through OpenBLAS's partitioning). */

/* ---- embedding ---- */

static void SFX(embedding_forward)(REAL *out, const int *tokens, const REAL *wte, int N, int C) {
#pragma omp parallel for schedule(static) if ((size_t)N * C >= PAR_MIN)
    for (int i = 0; i < N; i++) {
        assert(tokens[i] >= 0);
        memcpy(out + (size_t)i * C, wte + (size_t)tokens[i] * C, (size_t)C * sizeof(REAL));
    }
}

/* ---- RMSNorm: y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps) ---- */

static void SFX(rmsnorm_forward)(REAL *restrict out, REAL *restrict rstd, const REAL *restrict inp,
                                 const REAL *restrict weight, int N, int C, float eps) {
#pragma omp parallel for schedule(static) if ((size_t)N * C >= PAR_MIN)
    for (int i = 0; i < N; i++) {
        const REAL *x = inp + (size_t)i * C;
        REAL *y = out + (size_t)i * C;
        REAL ss = 0;
#pragma omp simd reduction(+ : ss)
        for (int c = 0; c < C; c++)
            ss += x[c] * x[c];
        REAL r = (REAL)1 / sqrt(ss / (REAL)C + (REAL)eps);
        rstd[i] = r;
#pragma omp simd
        for (int c = 0; c < C; c++)
            y[c] = weight[c] * (x[c] * r);
    }
}

/* dx_k += r w_k dy_k - r^3 x_k / C * sum_c(dy_c w_c x_c) */
static void SFX(rmsnorm_backward)(REAL *restrict dinp, const REAL *restrict dout, const REAL *restrict inp,
                                  const REAL *restrict weight, const REAL *restrict rstd, int N, int C) {
#pragma omp parallel for schedule(static) if ((size_t)N * C >= PAR_MIN)
    for (int i = 0; i < N; i++) {
        const REAL *x = inp + (size_t)i * C, *dy = dout + (size_t)i * C;
        REAL *dx = dinp + (size_t)i * C;
        REAL r = rstd[i], dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int c = 0; c < C; c++)
            dot += dy[c] * weight[c] * x[c];
        REAL k = r * r * r * dot / (REAL)C;
#pragma omp simd
        for (int c = 0; c < C; c++)
            dx[c] += r * weight[c] * dy[c] - k * x[c];
    }
}

/* ---- RoPE, rotate_half convention: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) per half ---- */

static void SFX(rope_rotate)(REAL *x, const float *cos, const float *sin, const int *pos, int N, int nheads,
                             int hd, REAL sign) {
    const int h2 = hd / 2;
    assert(hd % 2 == 0);
#pragma omp parallel for schedule(static) if ((size_t)N * nheads * hd >= PAR_MIN)
    for (int i = 0; i < N; i++) {
        assert(pos[i] >= 0);
        const float *cs = cos + (size_t)pos[i] * h2, *sn = sin + (size_t)pos[i] * h2;
        for (int h = 0; h < nheads; h++) {
            REAL *restrict a = x + ((size_t)i * nheads + h) * hd;
            REAL *restrict b = a + h2;
#pragma omp simd
            for (int d = 0; d < h2; d++) {
                REAL c = (REAL)cs[d], s = sign * (REAL)sn[d];
                REAL x1 = a[d], x2 = b[d];
                a[d] = x1 * c - x2 * s;
                b[d] = x2 * c + x1 * s;
            }
        }
    }
}

static void SFX(rope_forward)(REAL *x, const float *cos, const float *sin, const int *pos, int N, int nheads,
                              int hd) {
    SFX(rope_rotate)(x, cos, sin, pos, N, nheads, hd, (REAL)1);
}

/* The rotation is orthogonal, so its transpose (the backward) is the rotation by -angle. */
static void SFX(rope_backward)(REAL *dx, const float *cos, const float *sin, const int *pos, int N,
                               int nheads, int hd) {
    SFX(rope_rotate)(dx, cos, sin, pos, N, nheads, hd, (REAL)-1);
}

/* ---- causal GQA attention, flash-style ---- */

/* Explicit short vectors (GCC/clang vector extension, 32 bytes: 8 floats or 4 doubles) hold the accumulators
 * of the attention micro-kernels in registers. VECU is the same type with element alignment, so VLD/VST are
 * unaligned loads and stores (vector types may alias their element type). */
typedef REAL SFX(vec) __attribute__((vector_size(32)));
typedef REAL SFX(vecu) __attribute__((vector_size(32), aligned(sizeof(REAL))));
#define VEC SFX(vec)
#define VL ((int)(32 / sizeof(REAL)))
#define VLD(p) (*(const SFX(vecu) *)(const void *)(p))
#define VST(p, x) (*(SFX(vecu) *)(void *)(p) = (x))

static inline REAL SFX(dot)(const REAL *restrict a, const REAL *restrict b, int n) {
    REAL s = 0;
#pragma omp simd reduction(+ : s)
    for (int d = 0; d < n; d++)
        s += a[d] * b[d];
    return s;
}

/* Copies rows j0 .. j0+jn-1 of kv head kvh of x (B,T,KV,hd) into xt[d * ATT_TILE + jj] and zeroes columns
 * jn .. ATT_TILE-1, so that scores against a tile are whole-vector work over jj. */
static void SFX(tile_transpose)(REAL *restrict xt, const REAL *restrict x, int b, int T, int KV, int kvh,
                                int hd, int j0, int jn) {
    const REAL *x0 = x + (((size_t)b * T + j0) * KV + kvh) * hd;
    const size_t rs = (size_t)KV * hd;
    for (int jb = 0; jb < jn; jb += 8) { /* 8 rows at a time: 8 contiguous reads, then 8-wide writes */
        const int je = jb + 8 < jn ? jb + 8 : jn;
        for (int d = 0; d < hd; d++)
            for (int jj = jb; jj < je; jj++)
                xt[(size_t)d * ATT_TILE + jj] = x0[jj * rs + d];
    }
    for (int d = 0; d < hd && jn < ATT_TILE; d++)
        memset(xt + (size_t)d * ATT_TILE + jn, 0, (ATT_TILE - jn) * sizeof(REAL));
}

/* s[jj] = scale * x . t_jj for jj < n rounded up to 4 vectors (the rest of s is scratch), t transposed
 * [hd][TILE]. Four vector accumulators stay in registers over the whole d loop. */
static inline void SFX(tile_scores)(REAL *restrict s, const REAL *restrict x, const REAL *restrict t, int hd,
                                    int n, REAL scale) {
    for (int j0 = 0; j0 < n; j0 += 4 * VL) {
        VEC a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (int d = 0; d < hd; d++) {
            const REAL xd = x[d] * scale;
            const REAL *td = t + (size_t)d * ATT_TILE + j0;
            a0 += xd * VLD(td);
            a1 += xd * VLD(td + VL);
            a2 += xd * VLD(td + 2 * VL);
            a3 += xd * VLD(td + 3 * VL);
        }
        VST(s + j0, a0);
        VST(s + j0 + VL, a1);
        VST(s + j0 + 2 * VL, a2);
        VST(s + j0 + 3 * VL, a3);
    }
}

/* o[0..hd) += sum_{u < n} w[u * ws] * rows[u * rs + 0..hd): a weighted sum of n rows, accumulated in
 * registers 4 vectors of o at a time. */
static inline void SFX(rows_axpy)(REAL *restrict o, const REAL *restrict w, size_t ws,
                                  const REAL *restrict rows, size_t rs, int n, int hd) {
    int d0 = 0;
    for (; d0 + 4 * VL <= hd; d0 += 4 * VL) {
        VEC a0 = VLD(o + d0), a1 = VLD(o + d0 + VL), a2 = VLD(o + d0 + 2 * VL), a3 = VLD(o + d0 + 3 * VL);
        for (int u = 0; u < n; u++) {
            const REAL wu = w[u * ws];
            const REAL *r = rows + u * rs + d0;
            a0 += wu * VLD(r);
            a1 += wu * VLD(r + VL);
            a2 += wu * VLD(r + 2 * VL);
            a3 += wu * VLD(r + 3 * VL);
        }
        VST(o + d0, a0);
        VST(o + d0 + VL, a1);
        VST(o + d0 + 2 * VL, a2);
        VST(o + d0 + 3 * VL, a3);
    }
    for (; d0 + VL <= hd; d0 += VL) {
        VEC a = VLD(o + d0);
        for (int u = 0; u < n; u++)
            a += w[u * ws] * VLD(rows + u * rs + d0);
        VST(o + d0, a);
    }
    for (; d0 < hd; d0++) {
        REAL a = o[d0];
        for (int u = 0; u < n; u++)
            a += w[u * ws] * rows[u * rs + d0];
        o[d0] = a;
    }
}

/* tile_scores for two query rows at once: each tile vector loaded serves both, and the eight accumulators
 * keep both FMA pipes busy. */
static inline void SFX(tile_scores2)(REAL *restrict s0, REAL *restrict s1, const REAL *restrict x0,
                                     const REAL *restrict x1, const REAL *restrict t, int hd, int n,
                                     REAL scale) {
    for (int j0 = 0; j0 < n; j0 += 4 * VL) {
        VEC a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
        for (int d = 0; d < hd; d++) {
            const REAL u = x0[d] * scale, w = x1[d] * scale;
            const REAL *td = t + (size_t)d * ATT_TILE + j0;
            const VEC t0 = VLD(td), t1 = VLD(td + VL), t2 = VLD(td + 2 * VL), t3 = VLD(td + 3 * VL);
            a0 += u * t0;
            a1 += u * t1;
            a2 += u * t2;
            a3 += u * t3;
            b0 += w * t0;
            b1 += w * t1;
            b2 += w * t2;
            b3 += w * t3;
        }
        VST(s0 + j0, a0);
        VST(s0 + j0 + VL, a1);
        VST(s0 + j0 + 2 * VL, a2);
        VST(s0 + j0 + 3 * VL, a3);
        VST(s1 + j0, b0);
        VST(s1 + j0 + VL, b1);
        VST(s1 + j0 + 2 * VL, b2);
        VST(s1 + j0 + 3 * VL, b3);
    }
}

/* rows_axpy for two outputs over the same rows (weights w0[u * ws], w1[u * ws]): each row vector loaded
 * serves both. */
static inline void SFX(rows_axpy2)(REAL *restrict o0, REAL *restrict o1, const REAL *restrict w0,
                                   const REAL *restrict w1, size_t ws, const REAL *restrict rows, size_t rs,
                                   int n, int hd) {
    int d0 = 0;
    for (; d0 + 2 * VL <= hd; d0 += 2 * VL) {
        VEC a0 = VLD(o0 + d0), a1 = VLD(o0 + d0 + VL), b0 = VLD(o1 + d0), b1 = VLD(o1 + d0 + VL);
        for (int u = 0; u < n; u++) {
            const REAL *r = rows + u * rs + d0;
            const VEC r0 = VLD(r), r1 = VLD(r + VL);
            const REAL x0 = w0[u * ws], x1 = w1[u * ws];
            a0 += x0 * r0;
            a1 += x0 * r1;
            b0 += x1 * r0;
            b1 += x1 * r1;
        }
        VST(o0 + d0, a0);
        VST(o0 + d0 + VL, a1);
        VST(o1 + d0, b0);
        VST(o1 + d0 + VL, b1);
    }
    if (d0 < hd) {
        SFX(rows_axpy)(o0 + d0, w0, ws, rows + d0, rs, n, hd - d0);
        SFX(rows_axpy)(o1 + d0, w1, ws, rows + d0, rs, n, hd - d0);
    }
}

/* Online-softmax step of one query row over one tile: scores s[0..nv) become probabilities relative to the
 * running max *m (the output row o and the running sum *l are rescaled when the max grows); s[nv..n) are
 * zeroed so a weighted sum over n rows ignores them. */
static inline void SFX(online_step)(REAL *restrict s, int nv, int n, REAL *m, REAL *l, REAL *restrict o,
                                    int hd) {
    REAL mt = *m;
#pragma omp simd reduction(max : mt)
    for (int jj = 0; jj < nv; jj++)
        mt = s[jj] > mt ? s[jj] : mt;
    if (mt > *m) { /* rescale what was accumulated under the old max */
        const REAL corr = exp(*m - mt);
        *l *= corr;
#pragma omp simd
        for (int d = 0; d < hd; d++)
            o[d] *= corr;
        *m = mt;
    }
    REAL sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int jj = 0; jj < nv; jj++) {
        s[jj] = EXPV(s[jj] - mt);
        sum += s[jj];
    }
    *l += sum;
    for (int jj = nv; jj < n; jj++)
        s[jj] = 0;
}

/* Work item: (batch, kv head, block of ATT_QB query rows), handed out dynamically since later blocks see more
 * keys (each item is computed whole by one thread, so results do not depend on the schedule). The key tile is
 * transposed once and serves every query row of the block and every query head sharing the kv head. Each
 * query row keeps a running max m and sum l; its output row is the accumulator, rescaled once per tile when
 * the max grows. */
static void SFX(attention_forward)(REAL *out, REAL *lse, const REAL *q, const REAL *k, const REAL *v, int B,
                                   int T, int H, int KV, int hd) {
    assert(H % KV == 0 && hd > 0);
    const int group = H / KV, nqb = (T + ATT_QB - 1) / ATT_QB;
    const REAL scale = (REAL)1 / sqrt((REAL)hd);
    const size_t vs = (size_t)KV * hd;
#pragma omp parallel for collapse(3) schedule(dynamic, 1) if ((size_t)B * H * T * T * hd >= PAR_MIN)
    for (int b = 0; b < B; b++)
        for (int kvh = 0; kvh < KV; kvh++)
            for (int qb = 0; qb < nqb; qb++) {
                const int i0 = qb * ATT_QB, i1 = (i0 + ATT_QB) < T ? (i0 + ATT_QB) : T;
                REAL kt[hd * ATT_TILE], s[ATT_TILE], s2[ATT_TILE], m[group * ATT_QB], l[group * ATT_QB];
                for (int h = kvh * group; h < (kvh + 1) * group; h++)
                    for (int i = i0; i < i1; i++) {
                        memset(out + (((size_t)b * T + i) * H + h) * hd, 0, (size_t)hd * sizeof(REAL));
                        m[(h - kvh * group) * ATT_QB + i - i0] = -INFINITY;
                        l[(h - kvh * group) * ATT_QB + i - i0] = 0;
                    }
                for (int j0 = 0; j0 < i1; j0 += ATT_TILE) {
                    const int jn = (i1 - j0) < ATT_TILE ? (i1 - j0) : ATT_TILE;
                    SFX(tile_transpose)(kt, k, b, T, KV, kvh, hd, j0, jn);
                    const REAL *vt0 = v + (((size_t)b * T + j0) * KV + kvh) * hd;
                    for (int h = kvh * group; h < (kvh + 1) * group; h++) {
                        const int hh = (h - kvh * group) * ATT_QB - i0;
                        int i = i0 > j0 ? i0 : j0;
                        for (; i + 1 < i1; i += 2) { /* two query rows at a time share the tile loads */
                            const int nv0 = (i + 1 - j0) < jn ? (i + 1 - j0) : jn; /* causal: keys <= i */
                            const int nv1 = (i + 2 - j0) < jn ? (i + 2 - j0) : jn;
                            REAL *o0 = out + (((size_t)b * T + i) * H + h) * hd, *o1 = o0 + (size_t)H * hd;
                            const REAL *q0 = q + (((size_t)b * T + i) * H + h) * hd,
                                       *q1 = q0 + (size_t)H * hd;
                            SFX(tile_scores2)(s, s2, q0, q1, kt, hd, nv1, scale);
                            SFX(online_step)(s, nv0, nv1, &m[hh + i], &l[hh + i], o0, hd);
                            SFX(online_step)(s2, nv1, nv1, &m[hh + i + 1], &l[hh + i + 1], o1, hd);
                            SFX(rows_axpy2)(o0, o1, s, s2, 1, vt0, vs, nv1, hd);
                        }
                        if (i < i1) {
                            const int nv = (i + 1 - j0) < jn ? (i + 1 - j0) : jn;
                            REAL *o0 = out + (((size_t)b * T + i) * H + h) * hd;
                            SFX(tile_scores)(s, q + (((size_t)b * T + i) * H + h) * hd, kt, hd, nv, scale);
                            SFX(online_step)(s, nv, nv, &m[hh + i], &l[hh + i], o0, hd);
                            SFX(rows_axpy)(o0, s, 1, vt0, vs, nv, hd);
                        }
                    }
                }
                for (int h = kvh * group; h < (kvh + 1) * group; h++)
                    for (int i = i0; i < i1; i++) {
                        const REAL mi = m[(h - kvh * group) * ATT_QB + i - i0];
                        const REAL li = l[(h - kvh * group) * ATT_QB + i - i0];
                        REAL *restrict oi = out + (((size_t)b * T + i) * H + h) * hd;
                        const REAL inv = (REAL)1 / li;
#pragma omp simd
                        for (int d = 0; d < hd; d++)
                            oi[d] *= inv;
                        lse[((size_t)b * H + h) * T + i] = mi + log(li);
                    }
            }
}

/* One backward row over a tile: p holds scaled scores, ds holds dout . v_j; they become P = exp(s - lse) and
 * dS = P (dout . v_j - D) * scale for jj < nv, and zero for nv <= jj < jn (masked keys). */
static inline void SFX(prob_grad)(REAL *restrict p, REAL *restrict ds, int nv, int jn, REAL lse_i, REAL D,
                                  REAL scale) {
#pragma omp simd
    for (int jj = 0; jj < nv; jj++) {
        p[jj] = EXPV(p[jj] - lse_i);
        ds[jj] = p[jj] * (ds[jj] - D) * scale;
    }
    for (int jj = nv; jj < jn; jj++)
        p[jj] = ds[jj] = 0;
}

/* P_ij = exp(s_ij - lse_i), D_i = dout_i . out_i, dS_ij = P_ij (dout_i . v_j - D_i);
 * dq_i += scale sum_j dS_ij k_j, dk_j += scale sum_i dS_ij q_i, dv_j += sum_i P_ij dout_i.
 * Work is split by (batch, kv head): one thread owns dk and dv of its kv head and dq of the query heads that
 * share it, so nothing is written by two threads. Keys go by tiles (K and V transposed once per tile);
 * queries i >= j0 pass by in blocks of ATT_QB whose P and dS (zero where masked) sit on the stack, so the
 * dk/dv updates of a tile are weighted sums over the block's rows. */
static void SFX(attention_backward)(REAL *dq, REAL *dk, REAL *dv, const REAL *dout, const REAL *out,
                                    const REAL *lse, const REAL *q, const REAL *k, const REAL *v, int B,
                                    int T, int H, int KV, int hd) {
    assert(H % KV == 0 && hd > 0);
    const int group = H / KV;
    const REAL scale = (REAL)1 / sqrt((REAL)hd);
    const size_t ks = (size_t)KV * hd, qs = (size_t)H * hd;
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)B * H * T * T * hd >= PAR_MIN)
    for (int b = 0; b < B; b++)
        for (int kvh = 0; kvh < KV; kvh++) {
            REAL kt[hd * ATT_TILE], vt[hd * ATT_TILE], P[ATT_QB * ATT_TILE], dS[ATT_QB * ATT_TILE];
            for (int j0 = 0; j0 < T; j0 += ATT_TILE) {
                const int jn = (T - j0) < ATT_TILE ? (T - j0) : ATT_TILE;
                SFX(tile_transpose)(kt, k, b, T, KV, kvh, hd, j0, jn);
                SFX(tile_transpose)(vt, v, b, T, KV, kvh, hd, j0, jn);
                const size_t kv0 = (((size_t)b * T + j0) * KV + kvh) * hd;
                for (int h = kvh * group; h < (kvh + 1) * group; h++)
                    for (int ib = j0; ib < T; ib += ATT_QB) {
                        const int ie = (ib + ATT_QB) < T ? (ib + ATT_QB) : T;
                        const REAL *lh = lse + ((size_t)b * H + h) * T;
                        int i = ib;
                        for (; i + 1 < ie; i += 2) { /* P, dS and dq of two query rows at a time */
                            const int nv0 = (i + 1 - j0) < jn ? (i + 1 - j0) : jn;
                            const int nv1 = (i + 2 - j0) < jn ? (i + 2 - j0) : jn;
                            const size_t o0 = (((size_t)b * T + i) * H + h) * hd, o1 = o0 + qs;
                            REAL *p0 = P + (size_t)(i - ib) * ATT_TILE, *p1 = p0 + ATT_TILE;
                            REAL *d0 = dS + (size_t)(i - ib) * ATT_TILE, *d1 = d0 + ATT_TILE;
                            SFX(tile_scores2)(p0, p1, q + o0, q + o1, kt, hd, nv1, scale);
                            SFX(tile_scores2)(d0, d1, dout + o0, dout + o1, vt, hd, nv1, (REAL)1);
                            SFX(prob_grad)(p0, d0, nv0, jn, lh[i], SFX(dot)(dout + o0, out + o0, hd), scale);
                            SFX(prob_grad)
                            (p1, d1, nv1, jn, lh[i + 1], SFX(dot)(dout + o1, out + o1, hd), scale);
                            SFX(rows_axpy2)(dq + o0, dq + o1, d0, d1, 1, k + kv0, ks, nv1, hd);
                        }
                        if (i < ie) {
                            const int nv = (i + 1 - j0) < jn ? (i + 1 - j0) : jn;
                            const size_t o0 = (((size_t)b * T + i) * H + h) * hd;
                            REAL *p0 = P + (size_t)(i - ib) * ATT_TILE,
                                 *d0 = dS + (size_t)(i - ib) * ATT_TILE;
                            SFX(tile_scores)(p0, q + o0, kt, hd, nv, scale);
                            SFX(tile_scores)(d0, dout + o0, vt, hd, nv, (REAL)1);
                            SFX(prob_grad)(p0, d0, nv, jn, lh[i], SFX(dot)(dout + o0, out + o0, hd), scale);
                            SFX(rows_axpy)(dq + o0, d0, 1, k + kv0, ks, nv, hd);
                        }
                        /* dk_j, dv_j: weighted sums of the block's q and dout rows, two keys at a time */
                        const size_t q0 = (((size_t)b * T + ib) * H + h) * hd;
                        const int nb = ie - ib;
                        int jj = 0;
                        for (; jj + 1 < jn; jj += 2) {
                            REAL *dk0 = dk + kv0 + jj * ks, *dv0 = dv + kv0 + jj * ks;
                            SFX(rows_axpy2)
                            (dk0, dk0 + ks, dS + jj, dS + jj + 1, ATT_TILE, q + q0, qs, nb, hd);
                            SFX(rows_axpy2)
                            (dv0, dv0 + ks, P + jj, P + jj + 1, ATT_TILE, dout + q0, qs, nb, hd);
                        }
                        if (jj < jn) {
                            SFX(rows_axpy)(dk + kv0 + jj * ks, dS + jj, ATT_TILE, q + q0, qs, nb, hd);
                            SFX(rows_axpy)(dv + kv0 + jj * ks, P + jj, ATT_TILE, dout + q0, qs, nb, hd);
                        }
                    }
            }
        }
}

#undef VEC
#undef VL
#undef VLD
#undef VST

/* ---- SwiGLU: out = silu(g) * u ---- */

static void SFX(swiglu_forward)(REAL *restrict out, const REAL *restrict gate, const REAL *restrict up, int N,
                                int F) {
    const size_t n = (size_t)N * F;
#pragma omp parallel for simd schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        REAL g = gate[i];
        out[i] = g / ((REAL)1 + EXPV(-g)) * up[i];
    }
}

/* d silu(g)/dg = sigmoid(g) (1 + g (1 - sigmoid(g))) */
static void SFX(swiglu_backward)(REAL *restrict dgate, REAL *restrict dup, const REAL *restrict dout,
                                 const REAL *restrict gate, const REAL *restrict up, int N, int F) {
    const size_t n = (size_t)N * F;
#pragma omp parallel for simd schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        REAL g = gate[i];
        REAL sg = (REAL)1 / ((REAL)1 + EXPV(-g));
        dup[i] += g * sg * dout[i];
        dgate[i] += dout[i] * up[i] * sg * ((REAL)1 + g * ((REAL)1 - sg));
    }
}

/* ---- linear and LoRA, through BLAS ---- */

/* A single row (N == 1, batch-1 decoding) goes to GEMV: sgemm with one row is several times slower. */
static void SFX(linear_forward)(REAL *out, const REAL *inp, const REAL *W, const REAL *bias, int N, int In,
                                int O) {
    if (N == 1)
        GEMV(CblasRowMajor, CblasNoTrans, O, In, (REAL)1, W, In, inp, 1, (REAL)0, out, 1);
    else
        GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, N, O, In, (REAL)1, inp, In, W, In, (REAL)0, out, O);
    if (bias) {
#pragma omp parallel for schedule(static) if ((size_t)N * O >= PAR_MIN)
        for (int i = 0; i < N; i++) {
            REAL *restrict y = out + (size_t)i * O;
#pragma omp simd
            for (int o = 0; o < O; o++)
                y[o] += bias[o];
        }
    }
}

static void SFX(linear_backward)(REAL *dinp, const REAL *dout, const REAL *W, int N, int In, int O) {
    if (N == 1)
        GEMV(CblasRowMajor, CblasTrans, O, In, (REAL)1, W, In, dout, 1, (REAL)1, dinp, 1);
    else
        GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, In, O, (REAL)1, dout, O, W, In, (REAL)1, dinp, In);
}

/* The rank-r GEMMs of LoRA are thin (one dimension is r) and memory-bound; OpenBLAS's own threading of such
 * shapes costs more in synchronisation than the work (up to 5x slower at 2 threads than at 1, measured). So
 * the LoRA kernels open ONE OpenMP region and give each thread a contiguous slice of every output, which it
 * computes with a single-threaded GEMM (BLAS called inside a parallel region runs on the calling thread).
 * slice() splits [0, n) into nt parts, part t is [*lo, *hi), boundaries on multiples of `align`. */
static inline void SFX(slice)(int n, int nt, int t, int align, int *lo, int *hi) {
    const int units = (n + align - 1) / align, per = units / nt, extra = units % nt;
    const int u0 = t * per + (t < extra ? t : extra), u1 = u0 + per + (t < extra ? 1 : 0);
    *lo = u0 * align < n ? u0 * align : n;
    *hi = u1 * align < n ? u1 * align : n;
}

/* Work (floats touched) below which the LoRA kernels stay on one thread. */
#define LORA_PAR_MIN ((size_t)1 << 15)

/* Each thread owns rows [i0, i1) of xa and of out: xa rows first, then out rows += s xa B^T from the same
 * rows, so no barrier is needed. N == 1 uses two GEMVs. */
static void SFX(lora_forward)(REAL *out, REAL *xa, const REAL *inp, const REAL *A, const REAL *B, float scale,
                              int N, int In, int r, int O) {
    const REAL s = (REAL)scale;
    if (N == 1) {
        GEMV(CblasRowMajor, CblasNoTrans, r, In, (REAL)1, A, In, inp, 1, (REAL)0, xa, 1);
        GEMV(CblasRowMajor, CblasNoTrans, O, r, s, B, r, xa, 1, (REAL)1, out, 1);
        return;
    }
#pragma omp parallel if ((size_t)N * (In + O) >= LORA_PAR_MIN)
    {
        int i0, i1;
        SFX(slice)(N, omp_get_num_threads(), omp_get_thread_num(), 1, &i0, &i1);
        if (i1 > i0) {
            GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, i1 - i0, r, In, (REAL)1, inp + (size_t)i0 * In, In,
                 A, In, (REAL)0, xa + (size_t)i0 * r, r);
            GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, i1 - i0, O, r, s, xa + (size_t)i0 * r, r, B, r,
                 (REAL)1, out + (size_t)i0 * O, O);
        }
    }
}

/* g = dout B [N,r] in scratch; dA += s g^T inp; dB += s dout^T xa; dinp += s g A (skipped when dinp is NULL).
 * One region, two phases: (1) rows of g and rows of dB (split over O); barrier; (2) columns of dA (split over
 * In) and rows of dinp. Every output element is written by one thread, in a fixed summation order per slice.
 */
static void SFX(lora_backward)(REAL *dinp, REAL *dA, REAL *dB, const REAL *dout, const REAL *inp,
                               const REAL *xa, const REAL *A, const REAL *B, float scale, int N, int In,
                               int r, int O, REAL *scratch) {
    const REAL s = (REAL)scale;
    REAL *g = scratch;
#pragma omp parallel if ((size_t)N * (In + O) >= LORA_PAR_MIN)
    {
        const int nt = omp_get_num_threads(), t = omp_get_thread_num();
        int i0, i1, o0, o1, c0, c1;
        SFX(slice)(N, nt, t, 1, &i0, &i1);
        SFX(slice)(O, nt, t, 16, &o0, &o1);
        SFX(slice)(In, nt, t, 16, &c0, &c1);
        if (i1 > i0)
            GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, i1 - i0, r, O, (REAL)1, dout + (size_t)i0 * O, O,
                 B, r, (REAL)0, g + (size_t)i0 * r, r);
        if (o1 > o0)
            GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, o1 - o0, r, N, s, dout + o0, O, xa, r, (REAL)1,
                 dB + (size_t)o0 * r, r);
#pragma omp barrier
        if (c1 > c0)
            GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, r, c1 - c0, N, s, g, r, inp + c0, In, (REAL)1,
                 dA + c0, In);
        if (dinp && i1 > i0)
            GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, i1 - i0, In, r, s, g + (size_t)i0 * r, r, A, In,
                 (REAL)1, dinp + (size_t)i0 * In, In);
    }
}

/* ---- head + fused log-softmax + loss, chunked over rows ---- */

/* One row of logits z (length V) in place: returns log p[target] (0 when target < 0) and writes the entropy.
 * When want_grad, z is replaced by dlp * (onehot(target) - softmax(z)) (zeros when dlp == 0). */
static REAL SFX(head_row)(REAL *restrict z, int V, int target, REAL *entropy, int want_grad, LOSSFN loss_fn,
                          void *ctx, int row) {
    REAL m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int j = 0; j < V; j++)
        m = z[j] > m ? z[j] : m;
    const REAL zt = target >= 0 ? z[target] : 0;
    REAL S = 0, Sz = 0; /* S = sum e_j, Sz = sum e_j (z_j - m); entropy = log S - Sz / S */
#pragma omp simd reduction(+ : S, Sz)
    for (int j = 0; j < V; j++) {
        REAL t = z[j] - m;
        REAL e = EXPV(t);
        z[j] = e;
        S += e;
        Sz += e * t;
    }
    const REAL logS = log(S);
    if (entropy) *entropy = logS - Sz / S;
    const REAL lp = target >= 0 ? zt - m - logS : 0;
    if (want_grad) {
        REAL dlp = 0;
        if (target >= 0) (void)loss_fn(lp, row, ctx, &dlp);
        if (dlp == 0) {
            memset(z, 0, (size_t)V * sizeof(REAL));
        } else {
            const REAL c = -dlp / S;
#pragma omp simd
            for (int j = 0; j < V; j++)
                z[j] *= c;
            z[target] += dlp;
        }
    }
    return lp;
}

/* head_loss with an optional LoRA on the head (r > 0): per chunk, xa = x A^T [n, r] and logits += s xa B^T;
 * backward adds dB += s dlogits^T xa, g = dlogits B [n, r], dA += s g^T x, dx += s g A. scratch holds the
 * chunk's logits [chunk, V], then xa and g [chunk, r] each. */
/* Wm (float instantiation only): the head as stored, used when W is NULL (HEAD_NT / HEAD_NN). */
static double SFX(head_loss_core)(REAL *logp, REAL *dx, REAL *entropy, const REAL *x, const REAL *W,
                                  const REAL *A, const REAL *B, float scale, int r, REAL *dA, REAL *dB,
                                  const int *targets, int N, int C, int V, int chunk, LOSSFN loss_fn,
                                  void *ctx, REAL *scratch, const struct eng_wmat *Wm, int compute) {
    assert(chunk > 0 && V > 0 && C > 0 && r >= 0);
    assert(r == 0 || (A && B && (!dx || (dA && dB))));
    const REAL s = (REAL)scale;
    REAL *xa = scratch + (size_t)chunk * V, *g = xa + (size_t)chunk * r;
    double total = 0;
    for (int r0 = 0; r0 < N; r0 += chunk) {
        const int n = (N - r0) < chunk ? (N - r0) : chunk;
        const REAL *xc = x + (size_t)r0 * C;
        if (W)
            GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, n, V, C, (REAL)1, xc, C, W, C, (REAL)0, scratch, V);
        else
            HEAD_NT(Wm, n, xc, C, scratch, V, 0, compute);
        if (r > 0) {
            GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, n, r, C, (REAL)1, xc, C, A, C, (REAL)0, xa, r);
            GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, n, V, r, s, xa, r, B, r, (REAL)1, scratch, V);
        }
#pragma omp parallel for schedule(static) if ((size_t)n * V >= PAR_MIN)
        for (int i = 0; i < n; i++) {
            const int row = r0 + i, t = targets[row];
            assert(t < V);
            logp[row] = SFX(head_row)(scratch + (size_t)i * V, V, t, entropy ? entropy + row : NULL,
                                      dx != NULL, loss_fn, ctx, row);
        }
        /* The loss itself is summed serially, in row order, so it does not depend on the thread count. */
        for (int i = 0; i < n; i++) {
            const int row = r0 + i;
            if (targets[row] < 0) continue;
            REAL dlp;
            total += (double)loss_fn(logp[row], row, ctx, &dlp);
        }
        if (!dx) continue;
        REAL *dxc = dx + (size_t)r0 * C;
        if (W)
            GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, C, V, (REAL)1, scratch, V, W, C, (REAL)1, dxc,
                 C);
        else
            HEAD_NN(Wm, n, scratch, V, dxc, C, 1, compute);
        if (r > 0) {
            GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, V, r, n, s, scratch, V, xa, r, (REAL)1, dB, r);
            GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, r, V, (REAL)1, scratch, V, B, r, (REAL)0, g,
                 r);
            GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, r, C, n, s, g, r, xc, C, (REAL)1, dA, C);
            GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, C, r, s, g, r, A, C, (REAL)1, dxc, C);
        }
    }
    return total;
}

static double SFX(head_loss_lora)(REAL *logp, REAL *dx, REAL *entropy, const REAL *x, const REAL *W,
                                  const REAL *A, const REAL *B, float scale, int r, REAL *dA, REAL *dB,
                                  const int *targets, int N, int C, int V, int chunk, LOSSFN loss_fn,
                                  void *ctx, REAL *scratch) {
    return SFX(head_loss_core)(logp, dx, entropy, x, W, A, B, scale, r, dA, dB, targets, N, C, V, chunk,
                               loss_fn, ctx, scratch, NULL, 0);
}

#ifdef WMAT_HEAD
static double SFX(head_loss_w)(REAL *logp, REAL *dx, REAL *entropy, const REAL *x, const REAL *W,
                               const REAL *A, const REAL *B, float scale, int r, REAL *dA, REAL *dB,
                               const int *targets, int N, int C, int V, int chunk, LOSSFN loss_fn, void *ctx,
                               REAL *scratch, const struct eng_wmat *Wm, int compute) {
    return SFX(head_loss_core)(logp, dx, entropy, x, W, A, B, scale, r, dA, dB, targets, N, C, V, chunk,
                               loss_fn, ctx, scratch, Wm, compute);
}
#endif

static double SFX(head_loss)(REAL *logp, REAL *dx, REAL *entropy, const REAL *x, const REAL *W,
                             const int *targets, int N, int C, int V, int chunk, LOSSFN loss_fn, void *ctx,
                             REAL *scratch) {
    return SFX(head_loss_lora)(logp, dx, entropy, x, W, NULL, NULL, 0.0f, 0, NULL, NULL, targets, N, C, V,
                               chunk, loss_fn, ctx, scratch);
}

/* ---- AdamW, in the operation order of torch.optim.AdamW (single-tensor path) ---- */

static void SFX(adamw)(REAL *restrict p, const REAL *restrict g, REAL *restrict m, REAL *restrict v, size_t n,
                       float lr, float b1, float b2, float eps, float wd, int t) {
    assert(t >= 1);
    const double bc1 = 1.0 - pow((double)b1, t), bc2 = 1.0 - pow((double)b2, t);
    const REAL decay = (REAL)(1.0 - (double)lr * wd);
    const REAL step = (REAL)((double)lr / bc1);
    const REAL bc2s = (REAL)sqrt(bc2);
    const REAL w1 = (REAL)(1.0 - (double)b1), rb2 = (REAL)b2, w2 = (REAL)(1.0 - (double)b2), e = (REAL)eps;
#pragma omp parallel for simd schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        REAL gi = g[i];
        REAL pi = p[i] * decay;
        REAL mi = m[i] + w1 * (gi - m[i]); /* torch lerp_ with weight < 0.5 */
        REAL vi = v[i] * rb2 + w2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - step * (mi / (sqrt(vi) / bc2s + e));
    }
}

static const KTABLE SFX(table) = {
    .name = KNAME,
    .embedding_forward = SFX(embedding_forward),
    .rmsnorm_forward = SFX(rmsnorm_forward),
    .rmsnorm_backward = SFX(rmsnorm_backward),
    .rope_forward = SFX(rope_forward),
    .rope_backward = SFX(rope_backward),
    .attention_forward = SFX(attention_forward),
    .attention_backward = SFX(attention_backward),
    .swiglu_forward = SFX(swiglu_forward),
    .swiglu_backward = SFX(swiglu_backward),
    .linear_forward = SFX(linear_forward),
    .linear_backward = SFX(linear_backward),
    .lora_forward = SFX(lora_forward),
    .lora_backward = SFX(lora_backward),
    .head_loss = SFX(head_loss),
    .head_loss_lora = SFX(head_loss_lora),
#ifdef WMAT_HEAD
    .head_loss_w = SFX(head_loss_w),
#endif
    .adamw = SFX(adamw),
};
