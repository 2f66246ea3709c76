/* sample.c: KV-cached decoding of num_samples completions of one prompt, in one batch.
 *
 * The prompt is run once through the model's training forward (B = 1, T = prompt length, head skipped); the
 * RoPE'd K and V of every layer are copied from the activation arena into a per-sample cache
 * [layer][sample][position][KV*hd], and the last row's final-norm output gives the first token's logits. Each
 * decode step then runs the S live rows together through the same kernels (rmsnorm, linear + LoRA, q/k norm,
 * rope, swiglu) with N = S rows; only attention of one new query against the cache is written here, because
 * the kernel table's attention is the full causal (B, T) block. Rows that finished keep being computed until
 * all are done (their output is ignored): a short batch is cheaper than compacting caches.
 *
 * Weights are read as stored (eng_model_linear / eng_model_embed): a quantized or bf16 base is decoded
 * through the wmat GEMV (N <= ENG_WMAT_GEMV_MAX rows: dequantized on the fly, so a token costs the stored
 * bytes of the weights) or the tiled GEMM for more rows; an f32 base goes to the f32 kernels as before.
 *
 * Token choice (pick): greedy at temperature 0; otherwise softmax(logits / T) restricted to the top_k best
 * and then to the smallest prefix whose probability reaches top_p, renormalised, drawn with the sample's own
 * RNG. */
#include "engine/sample.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

void eng_sample_params_default(eng_sample_params *p) {
    memset(p, 0, sizeof(*p));
    p->max_tokens = 16;
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->top_k = 0;
    p->num_samples = 1;
}

const char *eng_stop_reason_name(int reason) {
    return reason == ENG_STOP_STOP ? "stop" : "length";
}

void eng_sample_result_free(eng_sample_result *r) {
    if (!r) return;
    for (int i = 0; i < r->n; i++) {
        free(r->seqs[i].tokens);
        free(r->seqs[i].logprobs);
    }
    free(r->seqs);
    r->seqs = NULL;
    r->n = 0;
}

static void head_logits(eng_model *m, float *logits, const float *x, float *xa, int N);

/* Decode buffers for S rows and a cache of maxT positions. */
typedef struct {
    int S, maxT;
    float *mem;
    float *kc, *vc; /* [L][S][maxT][Dk] */
    float *x, *ln, *rstd, *q, *kk, *vv, *qpre, *kpre, *qrstd, *krstd, *att, *tmp, *gate, *up, *act, *xa,
        *logits;
    float *scores; /* [S*H][maxT] */
    int *pos;
} dec_t;

static int dec_alloc(dec_t *d, const eng_model *m, int S, int maxT) {
    size_t Sz = (size_t)S, cache = (size_t)m->L * Sz * (size_t)maxT * (size_t)m->Dk;
    size_t r = m->lora_p ? (size_t)m->lora.rank : 1;
    size_t n = 2 * cache + Sz * (2 * (size_t)m->C + 1 + 3 * (size_t)m->Dq + 3 * (size_t)m->Dk + m->H + m->KV +
                                 (size_t)m->C + 3 * (size_t)m->F + r + (size_t)m->V + (size_t)m->H * maxT);
    n += 64 * 24;
    d->mem = aligned_alloc(64, ((n * sizeof(float)) + 63) & ~(size_t)63);
    d->pos = malloc(Sz * sizeof(int));
    if (!d->mem || !d->pos) return -1;
    float *p = d->mem;
#define TAKE(ptr, cnt)                                                                                       \
    do {                                                                                                     \
        ptr = p;                                                                                             \
        p += (((size_t)(cnt)) + 15) & ~(size_t)15;                                                           \
    } while (0)
    TAKE(d->kc, cache);
    TAKE(d->vc, cache);
    TAKE(d->x, Sz * m->C);
    TAKE(d->ln, Sz * m->C);
    TAKE(d->rstd, Sz);
    TAKE(d->q, Sz * m->Dq);
    TAKE(d->qpre, Sz * m->Dq);
    TAKE(d->kk, Sz * m->Dk);
    TAKE(d->vv, Sz * m->Dk);
    TAKE(d->kpre, Sz * m->Dk);
    TAKE(d->qrstd, Sz * m->H);
    TAKE(d->krstd, Sz * m->KV);
    TAKE(d->att, Sz * m->Dq);
    TAKE(d->tmp, Sz * m->C);
    TAKE(d->gate, Sz * m->F);
    TAKE(d->up, Sz * m->F);
    TAKE(d->act, Sz * m->F);
    TAKE(d->xa, Sz * r);
    TAKE(d->logits, Sz * m->V);
    TAKE(d->scores, Sz * m->H * (size_t)maxT);
#undef TAKE
    assert((size_t)(p - d->mem) <= n);
    d->S = S, d->maxT = maxT;
    return 0;
}

static void proj(eng_model *m, float *out, const float *inp, const float *W, const eng_wmat *Wm,
                 const float *b, int l, eng_target t, float *xa, int N, int I, int O) {
    eng_model_linear(m, out, inp, W, Wm, b, N, I, O);
    if (m->slots) {
        eng_lora_slot *sl = eng_model_slot(m, l, t);
        if (sl->A) m->k->lora_forward(out, xa, inp, sl->A, sl->B, m->scale, N, I, m->lora.rank, O);
    }
}

static void add_inplace(float *x, const float *y, size_t n) {
#pragma omp parallel for schedule(static) if (n >= ((size_t)1 << 16))
    for (size_t i = 0; i < n; i++)
        x[i] += y[i];
}

/* One new position p for every row: attention of q against cache rows 0..p. */
static void decode_attention(eng_model *m, dec_t *d, int l, int p) {
    int S = d->S, H = m->H, hd = m->hd, Dk = m->Dk, grp = m->H / m->KV;
    const float *kc = d->kc + (size_t)l * S * d->maxT * Dk, *vc = d->vc + (size_t)l * S * d->maxT * Dk;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)S * H * (p + 1) * hd >= ((size_t)1 << 16))
    for (int s = 0; s < S; s++)
        for (int h = 0; h < H; h++) {
            const float *q = d->q + ((size_t)s * H + h) * hd;
            float *sc = d->scores + ((size_t)s * H + h) * d->maxT;
            int kvh = h / grp;
            float mx = -INFINITY;
            for (int j = 0; j <= p; j++) {
                const float *kr = kc + ((size_t)s * d->maxT + j) * Dk + (size_t)kvh * hd;
                float dot = 0;
                for (int i = 0; i < hd; i++)
                    dot += q[i] * kr[i];
                sc[j] = dot * scale;
                if (sc[j] > mx) mx = sc[j];
            }
            float sum = 0;
            for (int j = 0; j <= p; j++)
                sum += (sc[j] = expf(sc[j] - mx));
            float *o = d->att + ((size_t)s * H + h) * hd;
            for (int i = 0; i < hd; i++)
                o[i] = 0;
            for (int j = 0; j <= p; j++) {
                const float *vr = vc + ((size_t)s * d->maxT + j) * Dk + (size_t)kvh * hd;
                float w = sc[j] / sum;
                for (int i = 0; i < hd; i++)
                    o[i] += w * vr[i];
            }
        }
}

/* Runs the S rows of tokens at position p through the model; d->logits gets [S, V]. */
static void decode_step(eng_model *m, dec_t *d, const int *tokens, int p) {
    const eng_kernels *k = m->k;
    int S = d->S, C = m->C, Dq = m->Dq, Dk = m->Dk, F = m->F, H = m->H, KV = m->KV, hd = m->hd;
    float eps = m->cfg.rms_norm_eps;
    int qk = m->cfg.qk_norm;
    for (int s = 0; s < S; s++)
        d->pos[s] = p;
    eng_model_embed(m, d->x, tokens, S);
    for (int l = 0; l < m->L; l++) {
        eng_layer_weights *w = &m->layers[l];
        k->rmsnorm_forward(d->ln, d->rstd, d->x, w->ln1, S, C, eps);
        proj(m, qk ? d->qpre : d->q, d->ln, w->wq, &w->Wq, w->bq, l, ENG_T_Q, d->xa, S, C, Dq);
        proj(m, qk ? d->kpre : d->kk, d->ln, w->wk, &w->Wk, w->bk, l, ENG_T_K, d->xa, S, C, Dk);
        proj(m, d->vv, d->ln, w->wv, &w->Wv, w->bv, l, ENG_T_V, d->xa, S, C, Dk);
        if (qk) {
            k->rmsnorm_forward(d->q, d->qrstd, d->qpre, w->qn, S * H, hd, eps);
            k->rmsnorm_forward(d->kk, d->krstd, d->kpre, w->kn, S * KV, hd, eps);
        }
        k->rope_forward(d->q, m->rope_cos, m->rope_sin, d->pos, S, H, hd);
        k->rope_forward(d->kk, m->rope_cos, m->rope_sin, d->pos, S, KV, hd);
        for (int s = 0; s < S; s++) {
            size_t at = (((size_t)l * S + s) * d->maxT + p) * Dk;
            memcpy(d->kc + at, d->kk + (size_t)s * Dk, (size_t)Dk * sizeof(float));
            memcpy(d->vc + at, d->vv + (size_t)s * Dk, (size_t)Dk * sizeof(float));
        }
        decode_attention(m, d, l, p);
        proj(m, d->tmp, d->att, w->wo, &w->Wo, NULL, l, ENG_T_O, d->xa, S, Dq, C);
        add_inplace(d->x, d->tmp, (size_t)S * C);
        k->rmsnorm_forward(d->ln, d->rstd, d->x, w->ln2, S, C, eps);
        proj(m, d->gate, d->ln, w->wg, &w->Wg, NULL, l, ENG_T_GATE, d->xa, S, C, F);
        proj(m, d->up, d->ln, w->wu, &w->Wu, NULL, l, ENG_T_UP, d->xa, S, C, F);
        k->swiglu_forward(d->act, d->gate, d->up, S, F);
        proj(m, d->tmp, d->act, w->wd, &w->Wd, NULL, l, ENG_T_DOWN, d->xa, S, F, C);
        add_inplace(d->x, d->tmp, (size_t)S * C);
    }
    k->rmsnorm_forward(d->ln, d->rstd, d->x, m->norm, S, C, eps);
    head_logits(m, d->logits, d->ln, d->xa, S);
}

/* logits[N, V] of the final-norm rows x[N, C], with the head's LoRA when there is one. xa: N*r floats. */
static void head_logits(eng_model *m, float *logits, const float *x, float *xa, int N) {
    eng_model_linear(m, logits, x, m->head, &m->Whead, NULL, N, m->C, m->V);
    const eng_lora_slot *hl = &m->head_lora;
    if (hl->A) m->k->lora_forward(logits, xa, x, hl->A, hl->B, m->scale, N, m->C, m->lora.rank, m->V);
}

/* qsort_r comparator: token ids by descending z (ties by id), z passed as the context (no globals, so several
 * engines may sample at once). */
static int cmp_desc(const void *a, const void *b, void *ctx) {
    const float *z = ctx;
    float x = z[*(const int *)a], y = z[*(const int *)b];
    if (x != y) return x > y ? -1 : 1;
    return *(const int *)a - *(const int *)b;
}

/* Chooses a token from logits[V]; *lp gets its log-probability (see the top comment). work: V floats + V
 * ints. */
static int pick(const float *logits, int V, const eng_sample_params *p, uint64_t *rng, float *lp, float *z,
                int *idx) {
    float T = p->temperature > 0 ? p->temperature : 1.0f;
    float mx = -INFINITY;
    int best = 0;
    for (int i = 0; i < V; i++) {
        z[i] = logits[i] / T;
        if (z[i] > mx) mx = z[i], best = i;
    }
    double sum = 1.0; /* exp(z[best] - mx) */
    for (int i = 0; i < V; i++)
        if (i != best) sum += exp((double)(z[i] - mx));
    float lse = mx + (float)log(sum);
    if (p->temperature <= 0) {
        *lp = z[best] - lse;
        return best;
    }
    int n = V;
    for (int i = 0; i < V; i++)
        idx[i] = i;
    if ((p->top_k > 0 && p->top_k < V) || p->top_p < 1.0f) {
        qsort_r(idx, (size_t)V, sizeof(int), cmp_desc, z);
        if (p->top_k > 0 && p->top_k < n) n = p->top_k;
        if (p->top_p < 1.0f) {
            double cum = 0;
            int keep = n;
            for (int i = 0; i < n; i++) {
                cum += exp((double)(z[idx[i]] - lse));
                if (cum >= p->top_p) {
                    keep = i + 1;
                    break;
                }
            }
            n = keep;
        }
    }
    double total = 0;
    for (int i = 0; i < n; i++)
        total += exp((double)(z[idx[i]] - mx));
    double u = eng_rng_uniform(rng) * total, acc = 0;
    int tok = idx[n - 1];
    for (int i = 0; i < n; i++) {
        acc += exp((double)(z[idx[i]] - mx));
        if (u < acc) {
            tok = idx[i];
            break;
        }
    }
    *lp = z[tok] - lse;
    return tok;
}

static int hits_stop_string(const eng_sequence *sq, const eng_sample_params *p, const eng_tokenizer *tok) {
    if (!p->n_stop_strings) return 0;
    char *text = eng_tok_decode(tok, sq->tokens, (size_t)sq->n, 0, NULL);
    int hit = 0;
    for (int i = 0; i < p->n_stop_strings && !hit; i++)
        if (p->stop_strings[i][0] && strstr(text, p->stop_strings[i])) hit = 1;
    free(text);
    return hit;
}

static int check_params(const eng_model *m, int n_prompt, const eng_sample_params *p,
                        const eng_tokenizer *tok, lt_err *err) {
    if (n_prompt < 1) return lt_err_set(err, 400, "sample: the prompt is empty (give at least one token)");
    if (p->max_tokens < 1) return lt_err_set(err, 400, "sample: max_tokens %d must be >= 1", p->max_tokens);
    if (p->num_samples < 1 || p->num_samples > 4096)
        return lt_err_set(err, 400, "sample: num_samples %d must be 1..4096", p->num_samples);
    if (!(p->temperature >= 0)) return lt_err_set(err, 400, "sample: temperature must be >= 0");
    if (!(p->top_p > 0 && p->top_p <= 1)) return lt_err_set(err, 400, "sample: top_p must be in (0, 1]");
    if (p->n_stop_strings > 0 && !tok)
        return lt_err_set(err, 400, "sample: stop strings need the model's tokenizer");
    int ctx = m->cfg.max_position_embeddings;
    if (ctx > 0 && n_prompt + p->max_tokens > ctx)
        return lt_err_set(
            err, 400, "sample: prompt (%d tokens) + max_tokens (%d) exceeds the model's context window of %d",
            n_prompt, p->max_tokens, ctx);
    return 0;
}

int eng_sample(eng_model *m, const int *prompt, int n_prompt, const eng_sample_params *p,
               const eng_tokenizer *tok, eng_sample_result *out, lt_err *err) {
    memset(out, 0, sizeof(*out));
    if (check_params(m, n_prompt, p, tok, err)) return -1;
    int S = p->num_samples, maxT = n_prompt + p->max_tokens, V = m->V;
    if (eng_model_rope_reserve(m, maxT, err)) return -1;
    if (isnan(eng_model_step(m, prompt, NULL, 1, n_prompt, NULL, NULL, NULL, NULL, 0, err))) return -1;

    dec_t d = {0};
    uint64_t *rng = calloc((size_t)S, sizeof(uint64_t));
    int *cur = calloc((size_t)S, sizeof(int)), *done = calloc((size_t)S, sizeof(int));
    int *idx = malloc((size_t)V * sizeof(int));
    float *z = malloc((size_t)V * sizeof(float));
    out->seqs = calloc((size_t)S, sizeof(eng_sequence));
    int rc = -1;
    if (!rng || !cur || !done || !idx || !z || !out->seqs || dec_alloc(&d, m, S, maxT)) {
        lt_err_set(err, 500, "sample: out of memory for %d samples of %d positions", S, maxT);
        goto done;
    }
    out->n = S;
    for (int s = 0; s < S; s++) {
        out->seqs[s].tokens = malloc((size_t)p->max_tokens * sizeof(int));
        out->seqs[s].logprobs = malloc((size_t)p->max_tokens * sizeof(float));
        if (!out->seqs[s].tokens || !out->seqs[s].logprobs) {
            lt_err_set(err, 500, "sample: out of memory");
            goto done;
        }
        rng[s] = p->seed ^ (0x9e3779b97f4a7c15ULL * (uint64_t)(s + 1));
        eng_rng_next(&rng[s]);
    }
    /* cache the prompt's K/V (post-RoPE) for every sample; first logits from the last prompt row */
    size_t Dk = (size_t)m->Dk;
    for (int l = 0; l < m->L; l++)
        for (int s = 0; s < S; s++) {
            size_t at = ((size_t)l * S + s) * (size_t)maxT * Dk;
            memcpy(d.kc + at, m->acts[l].k, (size_t)n_prompt * Dk * sizeof(float));
            memcpy(d.vc + at, m->acts[l].v, (size_t)n_prompt * Dk * sizeof(float));
        }
    head_logits(m, d.logits, m->lnf + (size_t)(n_prompt - 1) * m->C, d.xa, 1);
    for (int s = 1; s < S; s++)
        memcpy(d.logits + (size_t)s * V, d.logits, (size_t)V * sizeof(float));

    int live = S;
    for (int step = 0; step < p->max_tokens && live > 0; step++) {
        if (step > 0) decode_step(m, &d, cur, n_prompt + step - 1);
        for (int s = 0; s < S; s++) {
            if (done[s]) continue;
            eng_sequence *sq = &out->seqs[s];
            float lp;
            int t = pick(d.logits + (size_t)s * V, V, p, &rng[s], &lp, z, idx);
            sq->tokens[sq->n] = t;
            sq->logprobs[sq->n] = lp;
            sq->n++;
            cur[s] = t;
            int stop = 0;
            for (int i = 0; i < p->n_stop_tokens && !stop; i++)
                stop = t == p->stop_tokens[i];
            if (!stop) stop = hits_stop_string(sq, p, tok);
            if (stop) {
                sq->stop_reason = ENG_STOP_STOP;
                done[s] = 1;
                live--;
            } else if (sq->n == p->max_tokens) {
                sq->stop_reason = ENG_STOP_LENGTH;
                done[s] = 1;
                live--;
            }
        }
    }
    rc = 0;
done:
    if (rc) eng_sample_result_free(out);
    free(d.mem), free(d.pos), free(rng), free(cur), free(done), free(idx), free(z);
    return rc;
}
