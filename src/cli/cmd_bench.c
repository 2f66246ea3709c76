/* cmd_bench.c: `lathe bench gemm|train|sample`, the engine's speed and memory measured on this machine.
 *
 * Every comparison is made inside one run: `train` and `sample` first measure their own ceiling (SGEMM
 * GFLOP/s at the thread count in use; copy bandwidth) and report their result as a share of it.
 *
 *   gemm    cblas_sgemm on square 1024 / 2048 matrices and on the training shape (B*T x 1536 x 576): the best
 *           GFLOP/s is the practical peak; the same shapes through eng_gemm_bf16_nt give the bf16 peak (the
 *           ceiling of --compute bf16), with the path that ran.
 *   train   random weights of a preset shape, LoRA on all seven projections; warm-up step, then timed steps
 * of forward_backward(cross_entropy) + optim_step. FLOPs per token = 4 N_mm + 6 L H hd T (LoRA with a frozen
 * base: forward 2 N_mm + input gradients 2 N_mm, no weight gradients; causal attention forward 2 H hd T and
 * backward twice that per layer); N_mm counts every projection and the head once. Peak RSS is compared
 * with 1.3 x (base weights + adapter, gradients and moments + activation arena and scratch). sample  the same
 * weights; a 16-token prompt, then 32 tokens generated with the KV cache at batch 1 and 16. Bound at batch 1:
 * (copy bandwidth) / (weight bytes read per generated token), since decoding one token reads every weight
 * once; copy bandwidth counts bytes read plus bytes written.
 *   rl      one RL step of the trainers (src/train/rl.c) on the same weights, split by phase: a 32-token
 * prompt,
 *           --batch completions of 32 tokens sampled together (one batched KV-cache decode), scored (a cheap
 *           synthetic reward: the share of even token ids), group advantages, then forward_backward
 *           (importance_sampling against the sampler's logprobs) + optim_step on the group. */
#include <cblas.h>
#include <errno.h>
#include <jansson.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli.h"
#include "engine/engine.h"
#include "engine/gemm_bf16.h"
#include "engine/gguf_model.h"
#include "engine/losses.h"
#include "util/util.h"

static void usage(FILE *f) {
    fputs(
        "usage: lathe bench gemm|train|sample|rl [--preset smollm2-135m | --model DIR|FILE.gguf] [--batch "
        "B]\n"
        "                                    [--seq T] [--steps N] [--threads N] [--peer llama.cpp] "
        "[--json]\n"
        "                                    [--compute f32|bf16] [--weights f32|bf16]\n\n"
        "  gemm    measured SGEMM and bf16-GEMM GFLOP/s at the thread count (the practical peaks; the bf16\n"
        "          path that ran: amx, avx512bf16 or avx2, LATHE_BF16_PATH forces one)\n"
        "  train   tokens/s, ms/step by phase, achieved GFLOP/s and share of the SGEMM peak, peak RSS vs "
        "the\n"
        "          1.3x memory budget, for LoRA r16 on all seven projections of random weights of the "
        "preset\n"
        "  sample  generated tokens/s at batch 1 and 16 with the KV cache vs the memory-bandwidth bound\n"
        "  rl      one RL step split into sampling / scoring / training ms: --batch completions (default 8) "
        "of\n"
        "          32 tokens after a 32-token prompt, then an importance_sampling update on them\n"
        "Defaults: --preset smollm2-135m --batch 4 (rl: 8) --seq 128 --steps 3, threads = OpenMP's default,\n"
        "--compute f32 (train: bf16 runs the base weights' GEMMs with bf16 inputs and f32 sums), --weights "
        "f32\n"
        "(bf16: the preset's random matrices stored as bf16, as a bf16 checkpoint is kept).\n"
        "Presets: smollm2-135m (hidden 576, 30 layers, 9 heads, 3 kv heads, intermediate 1536, vocab 49152,\n"
        "tied), tiny (hidden 64, 2 layers, vocab 512; for smoke tests).\n"
        "--model runs on a real model's weights instead (a model dir or a GGUF file, its matrices kept as "
        "stored).\n"
        "--peer llama.cpp (sample --model FILE.gguf): also runs bench/llamacpp_sample.py (llama-cpp-python,\n"
        "LATHE_PYTHON or the test venv's python) on the same file and thread count and prints the ratio.\n",
        f);
}

static int preset(const char *name, eng_config *c) {
    memset(c, 0, sizeof(*c));
    c->arch = ENG_ARCH_LLAMA;
    snprintf(c->architecture, sizeof(c->architecture), "LlamaForCausalLM");
    snprintf(c->family, sizeof(c->family), "llama");
    c->rms_norm_eps = 1e-5f;
    c->bos_token_id = c->eos_token_id = -1;
    c->max_position_embeddings = 8192;
    c->tie_word_embeddings = 1;
    if (!strcmp(name, "smollm2-135m")) {
        c->hidden_size = 576, c->num_layers = 30, c->num_heads = 9, c->num_kv_heads = 3, c->head_dim = 64;
        c->intermediate_size = 1536, c->vocab_size = 49152, c->rope_theta = 100000.0f;
        return 0;
    }
    if (!strcmp(name, "tiny")) {
        c->hidden_size = 64, c->num_layers = 2, c->num_heads = 4, c->num_kv_heads = 2, c->head_dim = 16;
        c->intermediate_size = 128, c->vocab_size = 512, c->rope_theta = 10000.0f;
        return 0;
    }
    return -1;
}

static double peak_rss_bytes(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss * 1024.0;
}

/* Best GFLOP/s of sgemm C[M,N] = A[M,K] B[N,K]^T (the engine's layout) over a few repetitions. */
static double gemm_gflops(int M, int N, int K) {
    float *A = aligned_alloc(64, (size_t)M * K * sizeof(float)),
          *B = aligned_alloc(64, (size_t)N * K * sizeof(float)),
          *C = aligned_alloc(64, (size_t)M * N * sizeof(float));
    if (!A || !B || !C) abort();
    for (size_t i = 0; i < (size_t)M * K; i++)
        A[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < (size_t)N * K; i++)
        B[i] = (float)(i % 5) * 0.1f;
    double best = 0, flop = 2.0 * M * N * K;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, K, B, K, 0.0f, C, N); /* warm-up */
    for (int rep = 0; rep < 5; rep++) {
        double t0 = lt_mono_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, K, B, K, 0.0f, C, N);
        double g = flop / (lt_mono_s() - t0) / 1e9;
        if (g > best) best = g;
    }
    free(A), free(B), free(C);
    return best;
}

/* The same for eng_gemm_bf16_nt (f32 A rounded to bf16 as it is packed, B stored bf16, f32 sums): the
 * peak that --compute bf16 is measured against. */
static double bf16_gemm_gflops(int M, int N, int K) {
    float *A = aligned_alloc(64, (size_t)M * K * sizeof(float)),
          *Bf = aligned_alloc(64, (size_t)N * K * sizeof(float)),
          *C = aligned_alloc(64, (size_t)M * N * sizeof(float));
    uint16_t *B = aligned_alloc(64, (size_t)N * K * sizeof(uint16_t));
    if (!A || !Bf || !B || !C) abort();
    for (size_t i = 0; i < (size_t)M * K; i++)
        A[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < (size_t)N * K; i++)
        Bf[i] = (float)(i % 5) * 0.1f;
    eng_bf16_from_f32(Bf, B, (size_t)N * K);
    double best = 0, flop = 2.0 * M * N * K;
    eng_gemm_bf16_nt(M, N, K, A, K, B, K, C, N, 0); /* warm-up */
    for (int rep = 0; rep < 5; rep++) {
        double t0 = lt_mono_s();
        eng_gemm_bf16_nt(M, N, K, A, K, B, K, C, N, 0);
        double g = flop / (lt_mono_s() - t0) / 1e9;
        if (g > best) best = g;
    }
    free(A), free(Bf), free(B), free(C);
    return best;
}

typedef struct {
    double peak, sq1024, sq2048, train_shape;
    double bf16_peak, bf16_sq1024, bf16_sq2048, bf16_train_shape; /* eng_gemm_bf16_nt, path eng_bf16_path() */
} gemm_result;

static gemm_result gemm_probe(int rows) {
    gemm_result g;
    g.sq1024 = gemm_gflops(1024, 1024, 1024);
    g.sq2048 = gemm_gflops(2048, 2048, 2048);
    g.train_shape = gemm_gflops(rows, 1536, 576);
    g.peak = g.sq1024 > g.sq2048 ? g.sq1024 : g.sq2048;
    if (g.train_shape > g.peak) g.peak = g.train_shape;
    g.bf16_sq1024 = bf16_gemm_gflops(1024, 1024, 1024);
    g.bf16_sq2048 = bf16_gemm_gflops(2048, 2048, 2048);
    g.bf16_train_shape = bf16_gemm_gflops(rows, 1536, 576);
    g.bf16_peak = g.bf16_sq1024 > g.bf16_sq2048 ? g.bf16_sq1024 : g.bf16_sq2048;
    if (g.bf16_train_shape > g.bf16_peak) g.bf16_peak = g.bf16_train_shape;
    return g;
}

/* Copy bandwidth in GB/s (bytes read + bytes written per second), best of a few 256 MiB copies. */
static double copy_bandwidth(void) {
    size_t n = (size_t)256 << 20;
    char *a = malloc(n), *b = malloc(n);
    if (!a || !b) abort();
    memset(a, 1, n);
    memset(b, 2, n);
    double best = 0;
    for (int rep = 0; rep < 4; rep++) {
        double t0 = lt_mono_s();
        size_t chunk = n / 64;
#pragma omp parallel for schedule(static)
        for (int c = 0; c < 64; c++)
            memcpy(b + (size_t)c * chunk, a + (size_t)c * chunk, chunk);
        double bw = 2.0 * (double)n / (lt_mono_s() - t0) / 1e9;
        if (bw > best) best = bw;
    }
    free(a), free(b);
    return best;
}

typedef struct {
    const char *what, *preset;
    const char *model; /* --model PATH (a model dir or .gguf): its real weights instead of the preset's */
    const char *peer;  /* --peer llama.cpp (sample on a .gguf) */
    int batch, seq, steps, threads, json;
    int compute;     /* --compute f32|bf16 (train): ENG_COMPUTE_F32 or ENG_COMPUTE_BF16 */
    int bf16w;       /* --weights bf16: the preset's matrices stored bf16 (as a bf16 checkpoint is kept) */
    char label[600]; /* "preset NAME" or "model PATH" */
} bench_opts;

/* The JSON's "preset" is null and "model" the path when the run used --model. */
static void json_source(json_t *j, const bench_opts *o) {
    if (!o->model) return;
    json_object_set_new(j, "preset", json_null());
    json_object_set_new(j, "model", json_string(o->model));
}

static long long nmm_params(const eng_model *m) {
    long long per = (long long)m->C * m->Dq * 2 + (long long)m->C * m->Dk * 2 + 3LL * m->C * m->F;
    return per * m->L + (long long)m->V * m->C;
}

static eng_model *bench_model(const bench_opts *o, lt_err *err) {
    eng_config c;
    eng_model *m = NULL;
    if (o->model) {
        m = eng_model_load(o->model, eng_kernels_cpu(), err);
        if (!m) return NULL;
        if (m->load_note[0] && !o->json) printf("%s: %s\n", o->model, m->load_note);
    } else {
        if (preset(o->preset, &c)) {
            lt_err_set(err, 400, "unknown --preset '%s' (smollm2-135m or tiny)", o->preset);
            return NULL;
        }
        m = o->bf16w ? eng_model_new_stored(&c, eng_kernels_cpu(), GGUF_BF16, err)
                     : eng_model_new(&c, eng_kernels_cpu(), err);
        if (!m) return NULL;
        eng_model_init_random(m, 1, 0.02f);
    }
    eng_lora_config lc = {.rank = 16, .alpha = 32, .targets = ENG_LORA_ALL, .seed = 1};
    if (eng_model_lora_init(m, &lc, err)) {
        eng_model_free(m);
        return NULL;
    }
    return m;
}

static void print_json(json_t *o) {
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
    puts(s);
    free(s);
    json_decref(o);
}

static int bench_gemm(const bench_opts *o) {
    gemm_result g = gemm_probe(o->batch * o->seq);
    if (o->json) {
        json_t *j = json_pack("{s:s, s:i, s:f, s:f, s:f, s:f}", "bench", "gemm", "threads", o->threads,
                              "sgemm_1024_gflops", g.sq1024, "sgemm_2048_gflops", g.sq2048,
                              "sgemm_train_shape_gflops", g.train_shape, "peak_gflops", g.peak);
        json_object_set_new(j, "bf16_path", json_string(eng_bf16_path()));
        json_object_set_new(j, "bf16_1024_gflops", json_real(g.bf16_sq1024));
        json_object_set_new(j, "bf16_2048_gflops", json_real(g.bf16_sq2048));
        json_object_set_new(j, "bf16_train_shape_gflops", json_real(g.bf16_train_shape));
        json_object_set_new(j, "bf16_peak_gflops", json_real(g.bf16_peak));
        print_json(j);
        return EXIT_OK;
    }
    printf("SGEMM at %d thread(s)\n", o->threads);
    printf("  %-34s %10.1f GFLOP/s\n", "1024 x 1024 x 1024", g.sq1024);
    printf("  %-34s %10.1f GFLOP/s\n", "2048 x 2048 x 2048", g.sq2048);
    printf("  %-34s %10.1f GFLOP/s\n", "train shape (B*T x 1536 x 576)", g.train_shape);
    printf("  %-34s %10.1f GFLOP/s\n", "peak (best of the above)", g.peak);
    printf("bf16 GEMM (bf16 inputs, f32 sums; path %s) at %d thread(s)\n", eng_bf16_path(), o->threads);
    printf("  %-34s %10.1f GFLOP/s\n", "1024 x 1024 x 1024", g.bf16_sq1024);
    printf("  %-34s %10.1f GFLOP/s\n", "2048 x 2048 x 2048", g.bf16_sq2048);
    printf("  %-34s %10.1f GFLOP/s\n", "train shape (B*T x 1536 x 576)", g.bf16_train_shape);
    printf("  %-34s %10.1f GFLOP/s  (%.2fx SGEMM)\n", "peak (best of the above)", g.bf16_peak,
           g.bf16_peak / g.peak);
    return EXIT_OK;
}

static int bench_train(const bench_opts *o) {
    gemm_result g = gemm_probe(o->batch * o->seq);
    lt_err err = {0};
    eng_model *m = bench_model(o, &err);
    if (!m) {
        fprintf(stderr, "lathe bench train: %s\n", err.msg);
        return EXIT_FAIL;
    }
    eng_model_set_compute(m, o->compute);
    eng_engine *e = eng_from_model(m, o->preset);
    int B = o->batch, T = o->seq;
    size_t N = (size_t)B * T;
    int *tok = malloc(N * sizeof(int)), *tg = malloc(N * sizeof(int));
    eng_datum *d = calloc((size_t)B, sizeof(eng_datum));
    float *lp = malloc(N * sizeof(float));
    if (!tok || !tg || !d || !lp) abort();
    uint64_t s = 42;
    for (size_t i = 0; i < N; i++)
        tok[i] = (int)(eng_rng_next(&s) % (uint64_t)m->V);
    for (size_t i = 0; i < N; i++)
        tg[i] = i + 1 < N ? tok[i + 1] : tok[0];
    for (int b = 0; b < B; b++)
        d[b] = (eng_datum){.tokens = tok + (size_t)b * T, .n = T, .targets = tg + (size_t)b * T};
    eng_adam_params ap;
    eng_adam_params_default(&ap);
    ap.eps = 1e-8f;
    double loss = 0, total = 0;
    int rc = EXIT_FAIL;
    for (int st = -1; st < o->steps; st++) {
        if (st == 0) memset(m->prof, 0, sizeof(m->prof));
        double t0 = lt_mono_s();
        if (eng_forward_backward(e, d, B, "cross_entropy", NULL, 0, lp, &loss, &err) ||
            eng_optim_step(e, &ap, &err)) {
            fprintf(stderr, "lathe bench train: %s\n", err.msg);
            goto done;
        }
        if (st >= 0) total += lt_mono_s() - t0;
    }
    double step_s = total / o->steps, tps = (double)N / step_s;
    long long nmm = nmm_params(m);
    double attn_per_tok = 6.0 * m->L * m->H * m->hd * T;
    double flop_per_tok = 4.0 * (double)nmm + attn_per_tok;
    double gflops = flop_per_tok * tps / 1e9;
    double ph[ENG_NPHASES];
    for (int i = 0; i < ENG_NPHASES; i++)
        ph[i] = m->prof[i] / o->steps * 1e3;
    double other = step_s * 1e3;
    for (int i = 0; i < ENG_NPHASES; i++)
        other -= ph[i];
    double base = (double)eng_model_base_bytes(m), lora = (double)eng_model_lora_bytes(m),
           arena = (double)eng_model_arena_bytes(m), rss = peak_rss_bytes();
    double budget = 1.3 * (base + lora + arena);
    if (o->json) {
        json_t *j = json_pack("{s:s, s:s, s:i, s:i, s:i, s:i}", "bench", "train", "preset", o->preset,
                              "batch", B, "seq", T, "threads", o->threads, "steps", o->steps);
        json_source(j, o);
        json_object_set_new(j, "tokens_per_s", json_real(tps));
        json_object_set_new(j, "ms_per_step", json_real(step_s * 1e3));
        json_t *p = json_pack("{s:f, s:f, s:f, s:f, s:f, s:f}", "gemm", ph[ENG_PH_GEMM], "attention",
                              ph[ENG_PH_ATTN], "norms_rope_act", ph[ENG_PH_NORM], "head_loss",
                              ph[ENG_PH_HEAD], "optimizer", ph[ENG_PH_OPT], "other", other);
        json_object_set_new(j, "ms_by_phase", p);
        json_object_set_new(j, "flop_formula", json_string("tokens x (4*N_mm + 6*L*H*hd*T)"));
        json_object_set_new(j, "n_mm", json_integer(nmm));
        json_object_set_new(j, "gflop_per_token", json_real(flop_per_tok / 1e9));
        json_object_set_new(j, "achieved_gflops", json_real(gflops));
        json_object_set_new(j, "sgemm_peak_gflops", json_real(g.peak));
        json_object_set_new(j, "share_of_sgemm_peak", json_real(gflops / g.peak));
        json_object_set_new(j, "compute", json_string(eng_compute_name(o->compute)));
        json_object_set_new(j, "weights", json_string(o->bf16w ? "bf16" : "f32"));
        json_object_set_new(j, "bf16_path", json_string(eng_bf16_path()));
        json_object_set_new(j, "bf16_peak_gflops", json_real(g.bf16_peak));
        json_object_set_new(j, "share_of_bf16_peak", json_real(gflops / g.bf16_peak));
        json_object_set_new(j, "loss", json_real(loss));
        json_object_set_new(j, "peak_rss_bytes", json_real(rss));
        json_object_set_new(j, "budget_bytes", json_real(budget));
        json_object_set_new(j, "base_bytes", json_real(base));
        json_object_set_new(j, "lora_bytes", json_real(lora));
        json_object_set_new(j, "arena_bytes", json_real(arena));
        print_json(j);
    } else {
        printf("train: %s, batch %d x seq %d, LoRA r16 on q,k,v,o,gate,up,down, %d thread(s), %d steps, "
               "compute %s, weights %s\n",
               o->label, B, T, o->threads, o->steps, eng_compute_name(o->compute), o->bf16w ? "bf16" : "f32");
        printf("  %-28s %12.1f\n", "tokens/s", tps);
        printf("  %-28s %12.1f\n", "ms/step", step_s * 1e3);
        const char *names[ENG_NPHASES] = {"GEMM (linear + LoRA)", "attention", "norms/rope/act/residual",
                                          "head + loss", "optimizer"};
        for (int i = 0; i < ENG_NPHASES; i++)
            printf("    %-26s %12.1f ms\n", names[i], ph[i]);
        printf("    %-26s %12.1f ms\n", "other (batching, memset)", other);
        printf("  FLOPs/token = 4*N_mm + 6*L*H*hd*T = 4*%lld + 6*%d*%d*%d*%d = %.3f GFLOP\n", nmm, m->L, m->H,
               m->hd, T, flop_per_tok / 1e9);
        printf("  %-28s %12.1f GFLOP/s\n", "achieved", gflops);
        printf("  %-28s %12.1f GFLOP/s\n", "measured SGEMM peak", g.peak);
        printf("  %-28s %11.1f %%\n", "share of SGEMM peak", 100.0 * gflops / g.peak);
        printf("  %-28s %12.1f GFLOP/s  (path %s)\n", "measured bf16 GEMM peak", g.bf16_peak,
               eng_bf16_path());
        printf("  %-28s %11.1f %%\n", "share of bf16 GEMM peak", 100.0 * gflops / g.bf16_peak);
        printf("  %-28s %12.1f MiB\n", "peak RSS", rss / 1048576.0);
        printf("  %-28s %12.1f MiB  (1.3 x (base %.1f + adapter/grad/moments %.1f + arena %.1f))\n", "budget",
               budget / 1048576.0, base / 1048576.0, lora / 1048576.0, arena / 1048576.0);
        printf("  %-28s %12s\n", "RSS within budget", rss <= budget ? "yes" : "NO");
    }
    rc = EXIT_OK;
done:
    free(tok), free(tg), free(d), free(lp);
    eng_close(e);
    return rc;
}

/* bench/llamacpp_sample.py beside this build (LATHE_ROOT, else two levels above the binary), run with
 * LATHE_PYTHON (else the test venv's python, else python3). Returns its tokens/s at batch 1, or -1 with a
 * message on stderr. */
static int peer_script(char *script, size_t cap) {
    char exe[4096] = "";
    const char *root = getenv("LATHE_ROOT");
    if (!root || !*root) {
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n > 0) exe[n] = 0;
        for (int up = 0; up < 2; up++) {
            char *sl = strrchr(exe, '/');
            if (sl) *sl = 0;
        }
        root = exe;
    }
    snprintf(script, cap, "%s/bench/llamacpp_sample.py", root);
    if (access(script, R_OK) == 0) return 0;
    fprintf(stderr, "lathe bench: %s not found (set LATHE_ROOT to the lathe checkout)\n", script);
    return -1;
}

static double run_llamacpp_peer(const char *model, int threads) {
    char script[4200], py[4200], th[16];
    if (peer_script(script, sizeof script)) return -1;
    const char *envpy = getenv("LATHE_PYTHON"), *home = getenv("HOME");
    if (envpy && *envpy)
        snprintf(py, sizeof py, "%s", envpy);
    else {
        snprintf(py, sizeof py, "%s/.cache/lathe/venv/bin/python", home ? home : "/root");
        if (access(py, X_OK) != 0) snprintf(py, sizeof py, "python3");
    }
    snprintf(th, sizeof th, "%d", threads);
    int fd[2];
    if (pipe(fd) != 0) return -1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        dup2(fd[1], 1);
        close(fd[0]), close(fd[1]);
        execlp(py, py, script, "--model", model, "--threads", th, "--json", (char *)NULL);
        fprintf(stderr, "lathe bench: cannot run %s: %s\n", py, strerror(errno));
        _exit(127);
    }
    close(fd[1]);
    char buf[4096];
    size_t len = 0;
    ssize_t r;
    while (len < sizeof buf - 1 && (r = read(fd[0], buf + len, sizeof buf - 1 - len)) > 0)
        len += (size_t)r;
    buf[len] = 0;
    close(fd[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    json_error_t je;
    json_t *j = WIFEXITED(st) && WEXITSTATUS(st) == 0 ? json_loads(buf, 0, &je) : NULL;
    double tps = j ? json_number_value(json_object_get(j, "tokens_per_s_batch1")) : 0;
    json_decref(j);
    if (!(tps > 0)) {
        fprintf(stderr, "lathe bench: %s %s failed (exit %d)\n", py, script,
                WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        return -1;
    }
    return tps;
}

static int bench_sample(const bench_opts *o) {
    char script[4200];
    if (o->peer && peer_script(script, sizeof script)) return EXIT_FAIL; /* before minutes of measuring */
    double bw = copy_bandwidth();
    lt_err err = {0};
    eng_model *m = bench_model(o, &err);
    if (!m) {
        fprintf(stderr, "lathe bench sample: %s\n", err.msg);
        return EXIT_FAIL;
    }
    eng_engine *e = eng_from_model(m, o->preset);
    int prompt[16];
    uint64_t s = 7;
    for (int i = 0; i < 16; i++)
        prompt[i] = (int)(eng_rng_next(&s) % (uint64_t)m->V);
    const int batches[2] = {1, 16}, gen = 32;
    double tps[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        eng_sample_params p;
        eng_sample_params_default(&p);
        p.max_tokens = gen, p.num_samples = batches[k], p.seed = 1;
        eng_sample_result r;
        /* time the decode loop only: subtract a 1-token run (prefill + first token). Each is the best of
         * three runs, so a busy machine cannot make the difference negative. */
        double t_pre = 1e30, t_full = 1e30;
        for (int rep = 0; rep < 3; rep++) {
            p.max_tokens = 1;
            double t0 = lt_mono_s();
            if (eng_engine_sample(e, prompt, 16, &p, 1, NULL, &r, &err)) goto fail;
            double dt = lt_mono_s() - t0;
            t_pre = dt < t_pre ? dt : t_pre;
            eng_sample_result_free(&r);
            p.max_tokens = gen;
            t0 = lt_mono_s();
            if (eng_engine_sample(e, prompt, 16, &p, 1, NULL, &r, &err)) goto fail;
            dt = lt_mono_s() - t0;
            t_full = dt < t_full ? dt : t_full;
            if (rep < 2) eng_sample_result_free(&r);
        }
        double t = t_full > t_pre ? t_full - t_pre : t_full;
        int ntok = 0;
        for (int i = 0; i < r.n; i++)
            ntok += r.seqs[i].n - 1;
        eng_sample_result_free(&r);
        tps[k] = ntok / t;
    }
    double wbytes = (double)eng_model_base_bytes(m) + (double)m->n_lora * sizeof(float);
    double bound = bw * 1e9 / wbytes;
    double peer = o->peer ? run_llamacpp_peer(o->model, o->threads) : 0;
    if (o->peer && peer < 0) goto fail_quiet;
    if (o->json) {
        json_t *j = json_pack("{s:s, s:s, s:i, s:i}", "bench", "sample", "preset", o->preset, "threads",
                              o->threads, "generated_per_run", gen);
        json_source(j, o);
        json_object_set_new(j, "tokens_per_s_batch1", json_real(tps[0]));
        json_object_set_new(j, "tokens_per_s_batch16", json_real(tps[1]));
        json_object_set_new(j, "copy_bandwidth_gbs", json_real(bw));
        json_object_set_new(j, "weight_bytes_per_token", json_real(wbytes));
        json_object_set_new(j, "bandwidth_bound_tokens_per_s", json_real(bound));
        json_object_set_new(j, "batch1_share_of_bound", json_real(tps[0] / bound));
        if (o->peer) {
            json_object_set_new(j, "peer", json_string(o->peer));
            json_object_set_new(j, "peer_tokens_per_s_batch1", json_real(peer));
            json_object_set_new(j, "ratio_to_peer_batch1", json_real(tps[0] / peer));
        }
        print_json(j);
    } else {
        printf("sample: %s, 16-token prompt, %d generated tokens, %d thread(s)\n", o->label, gen, o->threads);
        printf("  %-34s %10.1f tokens/s\n", "batch 1", tps[0]);
        printf("  %-34s %10.1f tokens/s\n", "batch 16", tps[1]);
        printf("  %-34s %10.1f GB/s (read + write)\n", "copy bandwidth", bw);
        printf("  %-34s %10.1f MB\n", "weight bytes per token (as stored)", wbytes / 1e6);
        printf("  %-34s %10.1f tokens/s\n", "bandwidth bound at batch 1", bound);
        printf("  %-34s %9.1f %%\n", "batch 1 share of the bound", 100.0 * tps[0] / bound);
        if (o->peer) {
            printf("  %-34s %10.1f tokens/s (same file, %d thread(s))\n", "llama.cpp batch 1", peer,
                   o->threads);
            printf("  %-34s %10.2f x\n", "lathe / llama.cpp at batch 1", tps[0] / peer);
        }
    }
    eng_close(e);
    return EXIT_OK;
fail:
    fprintf(stderr, "lathe bench sample: %s\n", err.msg);
fail_quiet:
    eng_close(e);
    return EXIT_FAIL;
}

/* One RL step, timed by phase (see the header). */
static int bench_rl(const bench_opts *o) {
    lt_err err = {0};
    eng_model *m = bench_model(o, &err);
    if (!m) {
        fprintf(stderr, "lathe bench rl: %s\n", err.msg);
        return EXIT_FAIL;
    }
    eng_engine *e = eng_from_model(m, o->preset);
    enum { P = 32, GEN = 32 };
    const int G = o->batch;
    int prompt[P];
    uint64_t s = 11;
    for (int i = 0; i < P; i++)
        prompt[i] = (int)(eng_rng_next(&s) % (uint64_t)m->V);
    size_t cap = (size_t)G * (P + GEN);
    int *tok = malloc(cap * sizeof(int)), *tg = malloc(cap * sizeof(int));
    float *adv = calloc(cap, sizeof(float)), *lq = calloc(cap, sizeof(float));
    eng_datum *d = calloc((size_t)G, sizeof(eng_datum));
    double *reward = calloc((size_t)G, sizeof(double));
    if (!tok || !tg || !adv || !lq || !d || !reward) abort();
    eng_adam_params ap;
    eng_adam_params_default(&ap);
    ap.eps = 1e-8f;
    double t_sample = 0, t_score = 0, t_train = 0;
    long sampled = 0, trained = 0;
    int rc = EXIT_FAIL;
    for (int st = -1; st < o->steps; st++) { /* step -1 warms up */
        eng_sample_params sp;
        eng_sample_params_default(&sp);
        sp.max_tokens = GEN, sp.num_samples = G, sp.seed = (uint64_t)(st + 2);
        eng_sample_result r;
        double t0 = lt_mono_s();
        if (eng_engine_sample(e, prompt, P, &sp, 1, NULL, &r, &err)) goto done;
        double t1 = lt_mono_s();
        double mean = 0;
        for (int g = 0; g < r.n; g++) {
            int even = 0;
            for (int i = 0; i < r.seqs[g].n; i++)
                even += r.seqs[g].tokens[i] % 2 == 0;
            reward[g] = r.seqs[g].n ? (double)even / r.seqs[g].n : 0;
            mean += reward[g] / r.n;
        }
        size_t off = 0;
        long ntrain = 0;
        for (int g = 0; g < r.n; g++) {
            const eng_sequence *q = &r.seqs[g];
            int n = P + q->n - 1; /* model input: prompt + completion without its last token */
            for (int i = 0; i < n; i++) {
                tok[off + i] = i < P ? prompt[i] : q->tokens[i - P];
                tg[off + i] = i + 1 < P ? prompt[i + 1] : q->tokens[i + 1 - P];
                int sampled_pos = i >= P - 1;
                adv[off + i] = sampled_pos ? (float)(reward[g] - mean) : 0.0f;
                lq[off + i] = sampled_pos ? q->logprobs[i + 1 - P] : 0.0f;
            }
            d[g] = (eng_datum){.tokens = tok + off,
                               .n = n,
                               .targets = tg + off,
                               .advantages = adv + off,
                               .logprobs = lq + off};
            off += (size_t)n;
            ntrain += n;
        }
        double t2 = lt_mono_s();
        double loss;
        int bad = eng_forward_backward(e, d, r.n, "importance_sampling", NULL, 0, NULL, &loss, &err) ||
                  eng_optim_step(e, &ap, &err);
        double t3 = lt_mono_s();
        long nsampled = 0;
        for (int g = 0; g < r.n; g++)
            nsampled += r.seqs[g].n;
        eng_sample_result_free(&r);
        if (bad) goto done;
        if (st < 0) continue;
        t_sample += t1 - t0, t_score += t2 - t1, t_train += t3 - t2;
        sampled += nsampled, trained += ntrain;
    }
    double n = o->steps, total = t_sample + t_score + t_train;
    if (o->json) {
        json_t *j =
            json_pack("{s:s, s:s, s:i, s:i, s:i, s:i, s:i}", "bench", "rl", "preset", o->preset, "group", G,
                      "prompt_tokens", P, "max_new_tokens", GEN, "threads", o->threads, "steps", o->steps);
        json_source(j, o);
        json_object_set_new(j, "ms_per_step", json_real(total / n * 1e3));
        json_object_set_new(j, "ms_by_phase",
                            json_pack("{s:f, s:f, s:f}", "sampling", t_sample / n * 1e3, "scoring",
                                      t_score / n * 1e3, "training", t_train / n * 1e3));
        json_object_set_new(j, "sampled_tokens_per_s", json_real(sampled / t_sample));
        json_object_set_new(j, "trained_tokens_per_s", json_real(trained / t_train));
        print_json(j);
    } else {
        printf("rl: %s, %d completions x %d tokens after a %d-token prompt, LoRA r16, %d thread(s), %d "
               "steps\n",
               o->label, G, GEN, P, o->threads, o->steps);
        printf("  %-28s %10.1f ms  (%4.1f %%)  %8.1f sampled tokens/s (one batched decode)\n", "sampling",
               t_sample / n * 1e3, 100 * t_sample / total, sampled / t_sample);
        printf("  %-28s %10.2f ms  (%4.1f %%)\n", "scoring + advantages", t_score / n * 1e3,
               100 * t_score / total);
        printf("  %-28s %10.1f ms  (%4.1f %%)  %8.1f trained tokens/s (forward_backward + optim_step)\n",
               "training", t_train / n * 1e3, 100 * t_train / total, trained / t_train);
        printf("  %-28s %10.1f ms\n", "step", total / n * 1e3);
    }
    rc = EXIT_OK;
done:
    if (rc) fprintf(stderr, "lathe bench rl: %s\n", err.msg);
    free(tok), free(tg), free(adv), free(lq), free(d), free(reward);
    eng_close(e);
    return rc;
}

static int parse_pos(const char *opt, const char *v, int *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || end == v || x < 1 || x > 1 << 20) {
        fprintf(stderr, "lathe bench: %s must be a positive integer, got '%s'\n", opt, v);
        return -1;
    }
    *out = (int)x;
    return 0;
}

int cmd_bench(int argc, char **argv) {
    bench_opts o = {.preset = "smollm2-135m", .batch = 0, .seq = 128, .steps = 3};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return EXIT_OK;
        }
        if (!strcmp(a, "--json")) {
            o.json = 1;
            continue;
        }
        if (a[0] != '-') {
            if (o.what) {
                fprintf(stderr, "lathe bench: unexpected argument '%s'\n", a);
                return EXIT_USAGE;
            }
            o.what = a;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "lathe bench: unknown option '%s' or missing value (see --help)\n", a);
            return EXIT_USAGE;
        }
        const char *v = argv[++i];
        int bad = 0;
        if (!strcmp(a, "--preset"))
            o.preset = v;
        else if (!strcmp(a, "--model"))
            o.model = v;
        else if (!strcmp(a, "--peer"))
            o.peer = v;
        else if (!strcmp(a, "--batch"))
            bad = parse_pos(a, v, &o.batch);
        else if (!strcmp(a, "--seq"))
            bad = parse_pos(a, v, &o.seq);
        else if (!strcmp(a, "--steps"))
            bad = parse_pos(a, v, &o.steps);
        else if (!strcmp(a, "--threads"))
            bad = parse_pos(a, v, &o.threads);
        else if (!strcmp(a, "--weights")) {
            if (strcmp(v, "f32") && strcmp(v, "bf16")) {
                fprintf(stderr, "lathe bench: --weights must be f32 or bf16, got '%s'\n", v);
                bad = -1;
            }
            o.bf16w = !strcmp(v, "bf16");
        } else if (!strcmp(a, "--compute")) {
            if ((o.compute = eng_compute_parse(v)) < 0) {
                fprintf(stderr, "lathe bench: --compute must be f32 or bf16, got '%s'\n", v);
                bad = -1;
            }
        } else {
            fprintf(stderr, "lathe bench: unknown option '%s' (see --help)\n", a);
            return EXIT_USAGE;
        }
        if (bad) return EXIT_USAGE;
    }
    if (!o.what) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (!o.batch) o.batch = strcmp(o.what, "rl") ? 4 : 8;
    if (o.peer && (strcmp(o.peer, "llama.cpp") != 0 || strcmp(o.what, "sample") != 0 || !o.model ||
                   !eng_path_is_gguf(o.model))) {
        fprintf(stderr, "lathe bench: --peer llama.cpp is the only peer, for `sample --model FILE.gguf`\n");
        return EXIT_USAGE;
    }
    snprintf(o.label, sizeof o.label, "%s %s", o.model ? "model" : "preset", o.model ? o.model : o.preset);
    eng_set_threads(o.threads);
    o.threads = omp_get_max_threads();
    if (!strcmp(o.what, "gemm")) return bench_gemm(&o);
    if (!strcmp(o.what, "train")) return bench_train(&o);
    if (!strcmp(o.what, "sample")) return bench_sample(&o);
    if (!strcmp(o.what, "rl")) return bench_rl(&o);
    fprintf(stderr, "lathe bench: unknown benchmark '%s' (gemm, train, sample or rl)\n", o.what);
    return EXIT_USAGE;
}
