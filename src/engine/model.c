/* model.c: the decoder's weights, its LoRA adapters, and its forward and backward passes.
 *
 * The model is a fixed architecture (Llama / Qwen2 / Qwen3 / Mistral), so there is no graph: eng_model_step
 * walks embedding -> layers -> final norm -> chunked head + fused loss, and, when asked, walks back through
 * the same list in reverse. Every op goes through the kernel table (m->k), the backend seam of ops.h.
 *
 * Weights. The frozen base lives in ONE f32 buffer (checkpoints in BF16/F16 are widened once at load: simple,
 * and exact), each tensor starting on a 64-byte boundary; eng_layer_weights points into it. The base never
 * gets a gradient buffer.
 *
 * LoRA. For every adapted projection W [out, in] there is A [r, in] and B [out, r] (PEFT layout, unscaled)
 * and the projection computes y = x W^T + b + (alpha / r) (x A^T) B^T. All A and B sit back to back in
 * m->lora_p; m->lora_g, m->adam_m and m->adam_v mirror it, so the gradient of a parameter is at the same
 * offset in lora_g. A starts uniform in +-1/sqrt(in) (PEFT's kaiming_uniform(a=sqrt(5))) from the adapter
 * seed, B starts at zero.
 *
 * Activations. The arena keeps, per layer, what backward needs: the layer input, the norm outputs and their
 * rstd, q/k/v after RoPE (and before the q/k norm for Qwen3), the attention output and per-row log-sum-exp
 * (no T x T probabilities: attention backward recomputes them), gate and up, and the LoRA intermediates x
 * A^T. SwiGLU's output is recomputed in backward instead of stored. The head never materialises (N, V)
 * logits: the kernel processes `head_chunk` rows at a time and folds dlogits into dx immediately. The arena
 * is sized for the largest B*T seen so far; positions restart at 0 in every row, and causal attention makes
 * right padding harmless to earlier positions.
 *
 * Backward accumulates into lora_g (+=), so several eng_model_step calls before an optimizer step act as one
 * larger batch. */
#include "engine/model.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf_model.h"
#include "engine/safetensors.h"
#include "util/util.h"

#define PROF(m, ph, ...)                                                                                     \
    do {                                                                                                     \
        double t0_ = lt_mono_s();                                                                            \
        __VA_ARGS__;                                                                                         \
        (m)->prof[ph] += lt_mono_s() - t0_;                                                                  \
    } while (0)

static const char *target_names[ENG_NTARGETS + 1] = {"q_proj",    "k_proj",  "v_proj",    "o_proj",
                                                     "gate_proj", "up_proj", "down_proj", "lm_head"};

const char *eng_target_name(eng_target t) {
    assert(t >= 0 && t <= ENG_T_HEAD);
    return target_names[t];
}

const char *eng_target_parent(eng_target t) {
    return t <= ENG_T_O ? "self_attn" : t == ENG_T_HEAD ? "" : "mlp";
}

int eng_target_parse(const char *name) {
    for (int t = 0; t <= ENG_T_HEAD; t++)
        if (strcmp(name, target_names[t]) == 0) return t;
    return -1;
}

uint64_t eng_rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

double eng_rng_uniform(uint64_t *s) {
    return (double)(eng_rng_next(s) >> 11) * 0x1.0p-53;
}

static size_t round16(size_t n) {
    return (n + 15) & ~(size_t)15;
}

/* 64-byte aligned, zeroed floats; NULL on OOM. */
static float *falloc(size_t n) {
    size_t bytes = round16(n ? n : 1) * sizeof(float);
    float *p = aligned_alloc(64, bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

/* ---- weights ------------------------------------------------------------------------------------------- */

/* Walks the base layout: with base == NULL it only counts, else it assigns pointers. Returns floats used. */
static size_t layout_base(eng_model *m, float *base) {
    size_t off = 0;
#define TAKE(ptr, n)                                                                                         \
    do {                                                                                                     \
        if (base) ptr = base + off;                                                                          \
        off += round16(n);                                                                                   \
    } while (0)
    size_t C = m->C, V = m->V, F = m->F, Dq = m->Dq, Dk = m->Dk, hd = m->hd;
    TAKE(m->wte, V * C);
    TAKE(m->norm, C);
    if (m->cfg.tie_word_embeddings) {
        if (base) m->head = m->wte;
    } else {
        TAKE(m->head, V * C);
    }
    for (int l = 0; l < m->L; l++) {
        eng_layer_weights *w = &m->layers[l];
        TAKE(w->ln1, C);
        TAKE(w->ln2, C);
        TAKE(w->wq, Dq * C);
        TAKE(w->wk, Dk * C);
        TAKE(w->wv, Dk * C);
        TAKE(w->wo, C * Dq);
        if (m->cfg.attention_bias) {
            TAKE(w->bq, Dq);
            TAKE(w->bk, Dk);
            TAKE(w->bv, Dk);
        }
        if (m->cfg.qk_norm) {
            TAKE(w->qn, hd);
            TAKE(w->kn, hd);
        }
        TAKE(w->wg, F * C);
        TAKE(w->wu, F * C);
        TAKE(w->wd, C * F);
    }
#undef TAKE
    return off;
}

eng_model *eng_model_new(const eng_config *cfg, const eng_kernels *k, lt_err *err) {
    assert(cfg && k);
    if (cfg->num_heads <= 0 || cfg->num_kv_heads <= 0 || cfg->num_heads % cfg->num_kv_heads != 0 ||
        cfg->head_dim <= 0 || cfg->head_dim % 2 != 0 || cfg->hidden_size <= 0 ||
        cfg->intermediate_size <= 0 || cfg->vocab_size <= 0 || cfg->num_layers <= 0) {
        lt_err_set(err, 400,
                   "model config: unusable shape (heads %d, kv heads %d, head_dim %d, hidden %d, layers %d): "
                   "num_heads must be a multiple of num_key_value_heads and head_dim even",
                   cfg->num_heads, cfg->num_kv_heads, cfg->head_dim, cfg->hidden_size, cfg->num_layers);
        return NULL;
    }
    eng_model *m = calloc(1, sizeof(*m));
    if (!m) goto oom;
    m->cfg = *cfg;
    m->k = k;
    m->C = cfg->hidden_size;
    m->H = cfg->num_heads;
    m->KV = cfg->num_kv_heads;
    m->hd = cfg->head_dim;
    m->F = cfg->intermediate_size;
    m->V = cfg->vocab_size;
    m->L = cfg->num_layers;
    m->Dq = m->H * m->hd;
    m->Dk = m->KV * m->hd;
    m->head_chunk = 256;
    m->layers = calloc((size_t)m->L, sizeof(*m->layers));
    if (!m->layers) goto oom;
    m->n_base = layout_base(m, NULL);
    m->base_refs = malloc(sizeof(int));
    if (!m->base_refs) goto oom;
    *m->base_refs = 1;
    m->base = falloc(m->n_base);
    if (!m->base) goto oom;
    layout_base(m, m->base);
    return m;
oom:
    eng_model_free(m);
    lt_err_set(err, 500, "out of memory allocating the model's base weights");
    return NULL;
}

eng_model *eng_model_share(eng_model *src, lt_err *err) {
    eng_model *m = calloc(1, sizeof(*m));
    eng_layer_weights *layers = calloc((size_t)src->L, sizeof(*layers));
    if (!m || !layers) {
        free(m), free(layers);
        lt_err_set(err, 500, "out of memory sharing a model");
        return NULL;
    }
    m->cfg = src->cfg;
    m->k = src->k;
    m->C = src->C, m->H = src->H, m->KV = src->KV, m->hd = src->hd, m->F = src->F, m->V = src->V,
    m->L = src->L;
    m->Dq = src->Dq, m->Dk = src->Dk;
    m->head_chunk = src->head_chunk;
    m->base = src->base, m->n_base = src->n_base, m->base_refs = src->base_refs;
    m->wte = src->wte, m->norm = src->norm, m->head = src->head;
    memcpy(layers, src->layers, (size_t)src->L * sizeof(*layers));
    m->layers = layers;
    __atomic_add_fetch(m->base_refs, 1, __ATOMIC_ACQ_REL);
    return m;
}

void eng_model_free(eng_model *m) {
    if (!m) return;
    if (!m->base_refs || __atomic_sub_fetch(m->base_refs, 1, __ATOMIC_ACQ_REL) == 0) {
        free(m->base);
        free(m->base_refs);
    }
    free(m->layers);
    free(m->lora_p);
    free(m->lora_g);
    free(m->adam_m);
    free(m->adam_v);
    free(m->slots);
    free(m->rope_cos);
    free(m->rope_sin);
    free(m->arena);
    free(m->acts);
    free(m->pos);
    free(m->scratch);
    free(m);
}

int eng_model_each_weight(eng_model *m, eng_weight_fn fn, void *ctx) {
    char name[160];
    int rc;
#define EMIT(nm, ptr, r, c)                                                                                  \
    do {                                                                                                     \
        if ((rc = fn(ctx, nm, ptr, r, c)) != 0) return rc;                                                   \
    } while (0)
    EMIT("model.embed_tokens.weight", m->wte, m->V, m->C);
    EMIT("model.norm.weight", m->norm, m->C, 0);
    if (!m->cfg.tie_word_embeddings) EMIT("lm_head.weight", m->head, m->V, m->C);
    for (int l = 0; l < m->L; l++) {
        eng_layer_weights *w = &m->layers[l];
        const struct {
            const char *suffix;
            float *p;
            int r, c;
        } t[] = {
            {"input_layernorm.weight", w->ln1, m->C, 0},
            {"post_attention_layernorm.weight", w->ln2, m->C, 0},
            {"self_attn.q_proj.weight", w->wq, m->Dq, m->C},
            {"self_attn.k_proj.weight", w->wk, m->Dk, m->C},
            {"self_attn.v_proj.weight", w->wv, m->Dk, m->C},
            {"self_attn.o_proj.weight", w->wo, m->C, m->Dq},
            {"self_attn.q_proj.bias", w->bq, m->Dq, 0},
            {"self_attn.k_proj.bias", w->bk, m->Dk, 0},
            {"self_attn.v_proj.bias", w->bv, m->Dk, 0},
            {"self_attn.q_norm.weight", w->qn, m->hd, 0},
            {"self_attn.k_norm.weight", w->kn, m->hd, 0},
            {"mlp.gate_proj.weight", w->wg, m->F, m->C},
            {"mlp.up_proj.weight", w->wu, m->F, m->C},
            {"mlp.down_proj.weight", w->wd, m->C, m->F},
        };
        for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
            if (!t[i].p) continue;
            snprintf(name, sizeof(name), "model.layers.%d.%s", l, t[i].suffix);
            EMIT(name, t[i].p, t[i].r, t[i].c);
        }
    }
#undef EMIT
    return 0;
}

typedef struct {
    const st_reader *r;
    lt_err *err;
} load_ctx;

static int load_one(void *vctx, const char *name, float *data, int rows, int cols) {
    load_ctx *c = vctx;
    int64_t shape[2] = {rows, cols};
    return st_load_f32(c->r, name, cols ? 2 : 1, shape, data, c->err) ? 1 : 0;
}

eng_model *eng_model_load(const char *dir, const eng_kernels *k, lt_err *err) {
    if (eng_path_is_gguf(dir)) return eng_gguf_model_load(dir, k, err);
    eng_config cfg;
    if (eng_config_load(dir, &cfg, err) != 0) return NULL;
    eng_model *m = eng_model_new(&cfg, k, err);
    if (!m) return NULL;
    st_reader *r = st_open(dir, err);
    if (!r) {
        eng_model_free(m);
        return NULL;
    }
    load_ctx c = {r, err};
    int rc = eng_model_each_weight(m, load_one, &c);
    st_close(r);
    if (rc) {
        eng_model_free(m);
        return NULL;
    }
    return m;
}

static float rng_normal(uint64_t *s) {
    double u1 = eng_rng_uniform(s), u2 = eng_rng_uniform(s);
    if (u1 < 1e-300) u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

typedef struct {
    uint64_t s;
    float std;
} rand_ctx;

static int rand_one(void *vctx, const char *name, float *data, int rows, int cols) {
    rand_ctx *c = vctx;
    size_t n = (size_t)rows * (size_t)(cols ? cols : 1);
    int is_norm = strstr(name, "norm") != NULL;
    for (size_t i = 0; i < n; i++) {
        float z = rng_normal(&c->s);
        data[i] = is_norm ? 1.0f + 0.1f * z : (cols ? c->std * z : 0.5f * c->std * z);
    }
    return 0;
}

void eng_model_init_random(eng_model *m, uint64_t seed, float std) {
    rand_ctx c = {seed, std};
    eng_model_each_weight(m, rand_one, &c);
}

/* ---- LoRA ---------------------------------------------------------------------------------------------- */

static void slot_dims(const eng_model *m, eng_target t, int *in, int *out) {
    switch (t) {
    case ENG_T_Q:
        *in = m->C, *out = m->Dq;
        break;
    case ENG_T_K:
    case ENG_T_V:
        *in = m->C, *out = m->Dk;
        break;
    case ENG_T_O:
        *in = m->Dq, *out = m->C;
        break;
    case ENG_T_GATE:
    case ENG_T_UP:
        *in = m->C, *out = m->F;
        break;
    default:
        *in = m->F, *out = m->C;
        break;
    }
}

int eng_model_lora_init(eng_model *m, const eng_lora_config *lc, lt_err *err) {
    if (lc->rank < 1 || lc->rank > 4096)
        return lt_err_set(err, 400, "lora rank %d: must be 1..4096", lc->rank);
    if (!(lc->alpha > 0)) return lt_err_set(err, 400, "lora alpha %g: must be > 0", (double)lc->alpha);
    if ((lc->targets & (ENG_LORA_ALL | ENG_LORA_HEAD)) == 0)
        return lt_err_set(err, 400,
                          "lora targets: at least one of q,k,v,o,gate,up,down_proj, lm_head is needed");
    free(m->lora_p), free(m->lora_g), free(m->adam_m), free(m->adam_v), free(m->slots);
    m->lora_p = m->lora_g = m->adam_m = m->adam_v = NULL;
    m->lora = *lc;
    m->lora.targets &= ENG_LORA_ALL | ENG_LORA_HEAD;
    memset(&m->head_lora, 0, sizeof(m->head_lora));
    m->scale = lc->alpha / (float)lc->rank;
    m->adam_t = 0;
    int r = lc->rank;
    size_t n = 0;
    for (int l = 0; l < m->L; l++)
        for (int t = 0; t < ENG_NTARGETS; t++) {
            if (!(m->lora.targets & (1u << t))) continue;
            int in, out;
            slot_dims(m, (eng_target)t, &in, &out);
            n += (size_t)r * (size_t)(in + out);
        }
    if (m->lora.targets & ENG_LORA_HEAD) n += (size_t)r * (size_t)(m->C + m->V);
    m->n_lora = n;
    m->slots = calloc((size_t)m->L * ENG_NTARGETS, sizeof(*m->slots));
    m->lora_p = falloc(n);
    m->lora_g = falloc(n);
    m->adam_m = falloc(n);
    m->adam_v = falloc(n);
    if (!m->slots || !m->lora_p || !m->lora_g || !m->adam_m || !m->adam_v) {
        m->n_lora = 0;
        return lt_err_set(err, 500, "out of memory allocating LoRA buffers (%zu parameters)", n);
    }
    uint64_t s = lc->seed;
    size_t off = 0;
    for (int l = 0; l < m->L; l++)
        for (int t = 0; t < ENG_NTARGETS; t++) {
            eng_lora_slot *sl = eng_model_slot(m, l, (eng_target)t);
            slot_dims(m, (eng_target)t, &sl->in, &sl->out);
            if (!(m->lora.targets & (1u << t))) continue;
            sl->A = m->lora_p + off;
            off += (size_t)r * (size_t)sl->in;
            sl->B = m->lora_p + off;
            off += (size_t)r * (size_t)sl->out;
            float bound = 1.0f / sqrtf((float)sl->in);
            for (size_t i = 0; i < (size_t)r * (size_t)sl->in; i++)
                sl->A[i] = (float)((2.0 * eng_rng_uniform(&s) - 1.0) * bound);
        }
    if (m->lora.targets & ENG_LORA_HEAD) {
        eng_lora_slot *sl = &m->head_lora;
        sl->in = m->C, sl->out = m->V;
        sl->A = m->lora_p + off;
        off += (size_t)r * (size_t)sl->in;
        sl->B = m->lora_p + off;
        off += (size_t)r * (size_t)sl->out;
        float bound = 1.0f / sqrtf((float)sl->in);
        for (size_t i = 0; i < (size_t)r * (size_t)sl->in; i++)
            sl->A[i] = (float)((2.0 * eng_rng_uniform(&s) - 1.0) * bound);
    }
    assert(off == n);
    return 0;
}

void eng_model_zero_grad(eng_model *m) {
    if (m->lora_g) memset(m->lora_g, 0, m->n_lora * sizeof(float));
}

/* ---- arena --------------------------------------------------------------------------------------------- */

int eng_model_rope_reserve(eng_model *m, int n, lt_err *err) {
    if (n <= m->rope_max) return 0;
    int cap = n < 64 ? 64 : n;
    if (cap < 2 * m->rope_max) cap = 2 * m->rope_max;
    float *c = falloc((size_t)cap * (size_t)(m->hd / 2)), *s = falloc((size_t)cap * (size_t)(m->hd / 2));
    if (!c || !s) {
        free(c), free(s);
        return lt_err_set(err, 500, "out of memory allocating RoPE tables for %d positions", cap);
    }
    eng_rope_tables(c, s, cap, m->hd, &m->cfg);
    free(m->rope_cos), free(m->rope_sin);
    m->rope_cos = c, m->rope_sin = s, m->rope_max = cap;
    return 0;
}

static size_t scratch_floats(const eng_model *m, size_t N) {
    size_t r = m->lora_p ? (size_t)m->lora.rank : 1; /* as point_scratch */
    size_t per = 3 * (size_t)m->C + 3 * (size_t)m->Dq + 3 * (size_t)m->Dk + 4 * (size_t)m->F + r + 2;
    return N * per + (size_t)m->head_chunk * ((size_t)m->V + 2 * r) + 64;
}

/* Lays the activations for N = B*T rows out in the arena: with assign == 0 it only counts. Returns floats. */
static size_t layout_acts(eng_model *m, size_t N, int assign) {
    size_t off = 0;
#define TAKE(ptr, n)                                                                                         \
    do {                                                                                                     \
        if (assign) ptr = m->arena + off;                                                                    \
        off += round16((size_t)(n));                                                                         \
    } while (0)
    size_t r = m->lora_p ? (size_t)m->lora.rank : 0;
    for (int l = 0; l < m->L; l++) {
        eng_layer_acts tmp = {0}, *a = assign ? &m->acts[l] : &tmp;
        memset(a, 0, sizeof(*a));
        TAKE(a->res, N * m->C);
        TAKE(a->ln1, N * m->C);
        TAKE(a->rstd1, N);
        if (m->cfg.qk_norm) {
            TAKE(a->qpre, N * m->Dq);
            TAKE(a->kpre, N * m->Dk);
            TAKE(a->qrstd, N * m->H);
            TAKE(a->krstd, N * m->KV);
        }
        TAKE(a->q, N * m->Dq);
        TAKE(a->k, N * m->Dk);
        TAKE(a->v, N * m->Dk);
        TAKE(a->att, N * m->Dq);
        TAKE(a->lse, N * m->H);
        TAKE(a->h, N * m->C);
        TAKE(a->ln2, N * m->C);
        TAKE(a->rstd2, N);
        TAKE(a->gate, N * m->F);
        TAKE(a->up, N * m->F);
        for (int t = 0; t < ENG_NTARGETS; t++)
            if (r && (m->lora.targets & (1u << t))) TAKE(a->xa[t], N * r);
    }
    float *resL, *lnf, *rstdf;
    TAKE(resL, N * m->C);
    TAKE(lnf, N * m->C);
    TAKE(rstdf, N);
    if (assign) m->resL = resL, m->lnf = lnf, m->rstdf = rstdf;
#undef TAKE
    return off;
}

static int arena_reserve(eng_model *m, int B, int T, lt_err *err) {
    size_t N = (size_t)B * (size_t)T;
    if (eng_model_rope_reserve(m, T, err)) return -1;
    size_t need_scratch = scratch_floats(m, N);
    size_t need = layout_acts(m, N, 0);
    if (need > m->arena_n || N > m->arena_cap || !m->arena) {
        free(m->arena), free(m->pos);
        m->arena = falloc(need);
        m->arena_n = need;
        m->pos = malloc(N * sizeof(int));
        if (!m->acts) m->acts = calloc((size_t)m->L, sizeof(*m->acts));
        if (!m->arena || !m->pos || !m->acts) {
            free(m->arena), free(m->pos);
            m->arena = NULL, m->pos = NULL, m->arena_cap = 0, m->arena_n = 0;
            return lt_err_set(err, 500, "out of memory allocating the activation arena for batch %d x seq %d",
                              B, T);
        }
        m->arena_cap = N;
    }
    if (need_scratch > m->scratch_n) {
        free(m->scratch);
        m->scratch = falloc(need_scratch);
        if (!m->scratch) {
            m->scratch_n = 0;
            return lt_err_set(err, 500, "out of memory allocating scratch for batch %d x seq %d", B, T);
        }
        m->scratch_n = need_scratch;
    }
    m->aB = B, m->aT = T;
    layout_acts(m, N, 1);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            m->pos[(size_t)b * T + t] = t;
    return 0;
}

size_t eng_model_base_bytes(const eng_model *m) {
    return m->n_base * sizeof(float);
}
size_t eng_model_lora_bytes(const eng_model *m) {
    return 4 * m->n_lora * sizeof(float);
}
size_t eng_model_arena_bytes(const eng_model *m) {
    return (m->arena_n + m->scratch_n) * sizeof(float);
}

/* ---- forward / backward -------------------------------------------------------------------------------- */

/* Scratch layout for one step (N rows). */
typedef struct {
    float *tmp, *dres, *dln;         /* [N, C] */
    float *datt, *dq, *dqpre;        /* [N, Dq] */
    float *dk, *dkpre, *dv;          /* [N, Dk] */
    float *act, *dact, *dgate, *dup; /* [N, F] */
    float *lscr;                     /* [N, r] */
    float *head;                     /* [chunk, V] */
} scratch_t;

static scratch_t point_scratch(eng_model *m, size_t N) {
    scratch_t s;
    float *p = m->scratch;
    size_t r = m->lora_p ? (size_t)m->lora.rank : 1;
    s.tmp = p, p += N * m->C;
    s.dres = p, p += N * m->C;
    s.dln = p, p += N * m->C;
    s.datt = p, p += N * m->Dq;
    s.dq = p, p += N * m->Dq;
    s.dqpre = p, p += N * m->Dq;
    s.dk = p, p += N * m->Dk;
    s.dkpre = p, p += N * m->Dk;
    s.dv = p, p += N * m->Dk;
    s.act = p, p += N * m->F;
    s.dact = p, p += N * m->F;
    s.dgate = p, p += N * m->F;
    s.dup = p, p += N * m->F;
    s.lscr = p, p += N * r;
    s.head = p, p += (size_t)m->head_chunk * (m->V + 2 * r);
    assert((size_t)(p - m->scratch) <= m->scratch_n);
    return s;
}

static void proj_fwd(eng_model *m, float *out, const float *inp, const float *W, const float *bias,
                     const eng_lora_slot *sl, float *xa, int N, int I, int O) {
    PROF(m, ENG_PH_GEMM, {
        m->k->linear_forward(out, inp, W, bias, N, I, O);
        if (sl && sl->A) m->k->lora_forward(out, xa, inp, sl->A, sl->B, m->scale, N, I, m->lora.rank, O);
    });
}

static void proj_bwd(eng_model *m, float *dinp, const float *dout, const float *inp, const float *W,
                     const eng_lora_slot *sl, const float *xa, float *lscr, int N, int I, int O) {
    PROF(m, ENG_PH_GEMM, {
        m->k->linear_backward(dinp, dout, W, N, I, O);
        if (sl && sl->A)
            m->k->lora_backward(dinp, eng_model_grad_of(m, sl->A), eng_model_grad_of(m, sl->B), dout, inp, xa,
                                sl->A, sl->B, m->scale, N, I, m->lora.rank, O, lscr);
    });
}

static void add3(float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for schedule(static) if (n >= ((size_t)1 << 16))
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}

static eng_lora_slot *slot_or_null(eng_model *m, int l, eng_target t) {
    if (!m->slots) return NULL;
    eng_lora_slot *s = eng_model_slot(m, l, t);
    return s->A ? s : NULL;
}

static void layer_forward(eng_model *m, int l, float *out, scratch_t *s, int B, int T) {
    const eng_kernels *k = m->k;
    eng_layer_weights *w = &m->layers[l];
    eng_layer_acts *a = &m->acts[l];
    int N = B * T, C = m->C, Dq = m->Dq, Dk = m->Dk, F = m->F, H = m->H, KV = m->KV, hd = m->hd;
    float eps = m->cfg.rms_norm_eps;
    int qk = m->cfg.qk_norm;

    PROF(m, ENG_PH_NORM, k->rmsnorm_forward(a->ln1, a->rstd1, a->res, w->ln1, N, C, eps));
    proj_fwd(m, qk ? a->qpre : a->q, a->ln1, w->wq, w->bq, slot_or_null(m, l, ENG_T_Q), a->xa[ENG_T_Q], N, C,
             Dq);
    proj_fwd(m, qk ? a->kpre : a->k, a->ln1, w->wk, w->bk, slot_or_null(m, l, ENG_T_K), a->xa[ENG_T_K], N, C,
             Dk);
    proj_fwd(m, a->v, a->ln1, w->wv, w->bv, slot_or_null(m, l, ENG_T_V), a->xa[ENG_T_V], N, C, Dk);
    PROF(m, ENG_PH_NORM, {
        if (qk) {
            k->rmsnorm_forward(a->q, a->qrstd, a->qpre, w->qn, N * H, hd, eps);
            k->rmsnorm_forward(a->k, a->krstd, a->kpre, w->kn, N * KV, hd, eps);
        }
        k->rope_forward(a->q, m->rope_cos, m->rope_sin, m->pos, N, H, hd);
        k->rope_forward(a->k, m->rope_cos, m->rope_sin, m->pos, N, KV, hd);
    });
    PROF(m, ENG_PH_ATTN, k->attention_forward(a->att, a->lse, a->q, a->k, a->v, B, T, H, KV, hd));
    proj_fwd(m, s->tmp, a->att, w->wo, NULL, slot_or_null(m, l, ENG_T_O), a->xa[ENG_T_O], N, Dq, C);
    PROF(m, ENG_PH_NORM, {
        add3(a->h, a->res, s->tmp, (size_t)N * C);
        k->rmsnorm_forward(a->ln2, a->rstd2, a->h, w->ln2, N, C, eps);
    });
    proj_fwd(m, a->gate, a->ln2, w->wg, NULL, slot_or_null(m, l, ENG_T_GATE), a->xa[ENG_T_GATE], N, C, F);
    proj_fwd(m, a->up, a->ln2, w->wu, NULL, slot_or_null(m, l, ENG_T_UP), a->xa[ENG_T_UP], N, C, F);
    PROF(m, ENG_PH_NORM, k->swiglu_forward(s->act, a->gate, a->up, N, F));
    proj_fwd(m, s->tmp, s->act, w->wd, NULL, slot_or_null(m, l, ENG_T_DOWN), a->xa[ENG_T_DOWN], N, F, C);
    PROF(m, ENG_PH_NORM, add3(out, a->h, s->tmp, (size_t)N * C));
}

/* s->dres holds d(layer output) on entry and d(layer input) on exit. */
static void layer_backward(eng_model *m, int l, scratch_t *s, int B, int T) {
    const eng_kernels *k = m->k;
    eng_layer_weights *w = &m->layers[l];
    eng_layer_acts *a = &m->acts[l];
    int N = B * T, C = m->C, Dq = m->Dq, Dk = m->Dk, F = m->F, H = m->H, KV = m->KV, hd = m->hd;
    size_t nF = (size_t)N * F, nC = (size_t)N * C;
    int qk = m->cfg.qk_norm;

    /* MLP: out = h + down(swiglu(gate(ln2), up(ln2))) */
    PROF(m, ENG_PH_NORM, {
        k->swiglu_forward(s->act, a->gate, a->up, N, F);
        memset(s->dact, 0, nF * sizeof(float));
    });
    proj_bwd(m, s->dact, s->dres, s->act, w->wd, slot_or_null(m, l, ENG_T_DOWN), a->xa[ENG_T_DOWN], s->lscr,
             N, F, C);
    PROF(m, ENG_PH_NORM, {
        memset(s->dgate, 0, nF * sizeof(float));
        memset(s->dup, 0, nF * sizeof(float));
        k->swiglu_backward(s->dgate, s->dup, s->dact, a->gate, a->up, N, F);
        memset(s->dln, 0, nC * sizeof(float));
    });
    proj_bwd(m, s->dln, s->dgate, a->ln2, w->wg, slot_or_null(m, l, ENG_T_GATE), a->xa[ENG_T_GATE], s->lscr,
             N, C, F);
    proj_bwd(m, s->dln, s->dup, a->ln2, w->wu, slot_or_null(m, l, ENG_T_UP), a->xa[ENG_T_UP], s->lscr, N, C,
             F);
    PROF(m, ENG_PH_NORM, k->rmsnorm_backward(s->dres, s->dln, a->h, w->ln2, a->rstd2, N, C));

    /* attention: h = res + o(attn(rope(q), rope(k), v)) */
    memset(s->datt, 0, (size_t)N * Dq * sizeof(float));
    proj_bwd(m, s->datt, s->dres, a->att, w->wo, slot_or_null(m, l, ENG_T_O), a->xa[ENG_T_O], s->lscr, N, Dq,
             C);
    PROF(m, ENG_PH_ATTN, {
        memset(s->dq, 0, (size_t)N * Dq * sizeof(float));
        memset(s->dk, 0, (size_t)N * Dk * sizeof(float));
        memset(s->dv, 0, (size_t)N * Dk * sizeof(float));
        k->attention_backward(s->dq, s->dk, s->dv, s->datt, a->att, a->lse, a->q, a->k, a->v, B, T, H, KV,
                              hd);
    });
    float *dq = s->dq, *dk = s->dk;
    PROF(m, ENG_PH_NORM, {
        k->rope_backward(s->dq, m->rope_cos, m->rope_sin, m->pos, N, H, hd);
        k->rope_backward(s->dk, m->rope_cos, m->rope_sin, m->pos, N, KV, hd);
        if (qk) {
            memset(s->dqpre, 0, (size_t)N * Dq * sizeof(float));
            memset(s->dkpre, 0, (size_t)N * Dk * sizeof(float));
            k->rmsnorm_backward(s->dqpre, s->dq, a->qpre, w->qn, a->qrstd, N * H, hd);
            k->rmsnorm_backward(s->dkpre, s->dk, a->kpre, w->kn, a->krstd, N * KV, hd);
            dq = s->dqpre, dk = s->dkpre;
        }
        memset(s->dln, 0, nC * sizeof(float));
    });
    proj_bwd(m, s->dln, dq, a->ln1, w->wq, slot_or_null(m, l, ENG_T_Q), a->xa[ENG_T_Q], s->lscr, N, C, Dq);
    proj_bwd(m, s->dln, dk, a->ln1, w->wk, slot_or_null(m, l, ENG_T_K), a->xa[ENG_T_K], s->lscr, N, C, Dk);
    proj_bwd(m, s->dln, s->dv, a->ln1, w->wv, slot_or_null(m, l, ENG_T_V), a->xa[ENG_T_V], s->lscr, N, C, Dk);
    PROF(m, ENG_PH_NORM, k->rmsnorm_backward(s->dres, s->dln, a->res, w->ln1, a->rstd1, N, C));
}

static float no_loss(float lp, int row, void *ctx, float *dlp) {
    (void)lp, (void)row, (void)ctx;
    *dlp = 0.0f;
    return 0.0f;
}

double eng_model_step(eng_model *m, const int *tokens, const int *targets, int B, int T,
                      eng_token_loss_fn loss_fn, void *ctx, float *logp, float *entropy, int backward,
                      lt_err *err) {
    assert(B > 0 && T > 0);
    if (backward && !m->lora_p) {
        lt_err_set(err, 400, "backward needs a LoRA adapter (call eng_model_lora_init first)");
        return NAN;
    }
    for (size_t i = 0; i < (size_t)B * T; i++) {
        if (tokens[i] < 0 || tokens[i] >= m->V || (targets && targets[i] >= m->V)) {
            lt_err_set(err, 400, "token id %d at position %zu is outside the vocabulary (0..%d)",
                       tokens[i] < 0 || tokens[i] >= m->V ? tokens[i] : targets[i], i, m->V - 1);
            return NAN;
        }
    }
    if (arena_reserve(m, B, T, err)) return NAN;
    int N = B * T, C = m->C;
    scratch_t s = point_scratch(m, (size_t)N);
    const eng_kernels *k = m->k;

    PROF(m, ENG_PH_NORM, k->embedding_forward(m->acts[0].res, tokens, m->wte, N, C));
    for (int l = 0; l < m->L; l++)
        layer_forward(m, l, l + 1 < m->L ? m->acts[l + 1].res : m->resL, &s, B, T);
    PROF(m, ENG_PH_NORM, k->rmsnorm_forward(m->lnf, m->rstdf, m->resL, m->norm, N, C, m->cfg.rms_norm_eps));

    /* Nothing asked of the head (a prefill that only wants the activations): skip it. */
    if (!targets && !logp && !entropy && !backward) return 0.0;
    /* targets may be NULL with logp/entropy wanted: the head then runs with every row masked. */
    int *tg = NULL;
    const int *targ = targets;
    if (!targ) {
        tg = malloc((size_t)N * sizeof(int));
        if (!tg) {
            lt_err_set(err, 500, "out of memory");
            return NAN;
        }
        for (int i = 0; i < N; i++)
            tg[i] = -1;
        targ = tg;
    }
    float *lp = logp ? logp : s.dqpre; /* dqpre is free until backward and holds >= N floats */
    if (backward) memset(s.dln, 0, (size_t)N * C * sizeof(float));
    double loss;
    const eng_lora_slot *hl = &m->head_lora;
    if (hl->A) {
        float *gA = backward ? eng_model_grad_of(m, hl->A) : NULL,
              *gB = backward ? eng_model_grad_of(m, hl->B) : NULL;
        PROF(m, ENG_PH_HEAD,
             loss = k->head_loss_lora(lp, backward ? s.dln : NULL, entropy, m->lnf, m->head, hl->A, hl->B,
                                      m->scale, m->lora.rank, gA, gB, targ, N, C, m->V, m->head_chunk,
                                      loss_fn ? loss_fn : no_loss, ctx, s.head));
    } else {
        PROF(m, ENG_PH_HEAD,
             loss = k->head_loss(lp, backward ? s.dln : NULL, entropy, m->lnf, m->head, targ, N, C, m->V,
                                 m->head_chunk, loss_fn ? loss_fn : no_loss, ctx, s.head));
    }
    free(tg);
    if (!backward) return loss;

    memset(s.dres, 0, (size_t)N * C * sizeof(float));
    PROF(m, ENG_PH_NORM, k->rmsnorm_backward(s.dres, s.dln, m->resL, m->norm, m->rstdf, N, C));
    for (int l = m->L - 1; l >= 0; l--)
        layer_backward(m, l, &s, B, T);
    /* the embedding is frozen: d(embedding) is dropped */
    return loss;
}
