/* kernels_cpu_f64.h: the double-precision instantiation of the CPU kernels, for tests only.
 *
 * kernels_cpu_impl.h holds every kernel body once, generic over the scalar type; kernels_cpu.c compiles it
 * for float (the production table, eng_kernels_cpu) and for double (this table). The finite-difference
 * gradient checks of tests/unit/test_kernels.c run on the double table, where central differences reach 1e-6
 * relative error, and compare the float table against it. The trainer never uses this table.
 *
 * Semantics, layouts and ownership are exactly those of ops.h with double in place of float (RoPE tables and
 * the scalar hyperparameters stay float). */
#ifndef LATHE_ENGINE_KERNELS_CPU_F64_H
#define LATHE_ENGINE_KERNELS_CPU_F64_H

#include <stddef.h>

/* The double twin of eng_token_loss_fn. */
typedef double (*eng_token_loss_fn_f64)(double lp, int row, void *ctx, double *dlp);

typedef struct eng_kernels_f64 {
    const char *name; /* "cpu-f64" */
    void (*embedding_forward)(double *out, const int *tokens, const double *wte, int N, int C);
    void (*rmsnorm_forward)(double *out, double *rstd, const double *inp, const double *weight, int N, int C,
                            float eps);
    void (*rmsnorm_backward)(double *dinp, const double *dout, const double *inp, const double *weight,
                             const double *rstd, int N, int C);
    void (*rope_forward)(double *x, const float *cos, const float *sin, const int *pos, int N, int nheads,
                         int hd);
    void (*rope_backward)(double *dx, const float *cos, const float *sin, const int *pos, int N, int nheads,
                          int hd);
    void (*attention_forward)(double *out, double *lse, const double *q, const double *k, const double *v,
                              int B, int T, int H, int KV, int hd);
    void (*attention_backward)(double *dq, double *dk, double *dv, const double *dout, const double *out,
                               const double *lse, const double *q, const double *k, const double *v, int B,
                               int T, int H, int KV, int hd);
    void (*swiglu_forward)(double *out, const double *gate, const double *up, int N, int F);
    void (*swiglu_backward)(double *dgate, double *dup, const double *dout, const double *gate,
                            const double *up, int N, int F);
    void (*linear_forward)(double *out, const double *inp, const double *W, const double *bias, int N, int In,
                           int O);
    void (*linear_backward)(double *dinp, const double *dout, const double *W, int N, int In, int O);
    void (*lora_forward)(double *out, double *xa, const double *inp, const double *A, const double *B,
                         float scale, int N, int In, int r, int O);
    void (*lora_backward)(double *dinp, double *dA, double *dB, const double *dout, const double *inp,
                          const double *xa, const double *A, const double *B, float scale, int N, int In,
                          int r, int O, double *scratch);
    double (*head_loss)(double *logp, double *dx, double *entropy, const double *x, const double *W,
                        const int *targets, int N, int C, int V, int chunk, eng_token_loss_fn_f64 loss_fn,
                        void *ctx, double *scratch);
    double (*head_loss_lora)(double *logp, double *dx, double *entropy, const double *x, const double *W,
                             const double *A, const double *B, float scale, int r, double *dA, double *dB,
                             const int *targets, int N, int C, int V, int chunk,
                             eng_token_loss_fn_f64 loss_fn, void *ctx, double *scratch);
    void (*adamw)(double *p, const double *g, double *m, double *v, size_t n, float lr, float b1, float b2,
                  float eps, float wd, int t);
} eng_kernels_f64;

const eng_kernels_f64 *eng_kernels_cpu_f64(void);

#endif
