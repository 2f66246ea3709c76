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

#include "engine/gguf.h"
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

/* Walks the base layout: with base == NULL it only counts, else it assigns pointers. Returns floats used.
 * Matrices take base space only when m->wtype is GGUF_F32 (their eng_wmat then points into base); vectors
 * (norms, biases) always do. */
static size_t layout_base(eng_model *m, float *base) {
    size_t off = 0;
    const int f32 = m->wtype == GGUF_F32;
#define TAKE(ptr, n)                                                                                         \
    do {                                                                                                     \
        if (base) ptr = base + off;                                                                          \
        off += round16(n);                                                                                   \
    } while (0)
#define TAKE_M(ptr, W, r, c)                                                                                 \
    do {                                                                                                     \
        if (f32) {                                                                                           \
            TAKE(ptr, (size_t)(r) * (size_t)(c));                                                            \
            if (base) eng_wmat_init(&(W), GGUF_F32, (int)(r), (int)(c), ptr);                                \
        }                                                                                                    \
    } while (0)
    size_t C = m->C, V = m->V, F = m->F, Dq = m->Dq, Dk = m->Dk, hd = m->hd;
    TAKE_M(m->wte, m->Wte, V, C);
    TAKE(m->norm, C);
    if (m->cfg.tie_word_embeddings) {
        if (base) m->head = m->wte, m->Whead = m->Wte;
    } else {
        TAKE_M(m->head, m->Whead, V, C);
    }
    for (int l = 0; l < m->L; l++) {
        eng_layer_weights *w = &m->layers[l];
        TAKE(w->ln1, C);
        TAKE(w->ln2, C);
        TAKE_M(w->wq, w->Wq, Dq, C);
        TAKE_M(w->wk, w->Wk, Dk, C);
        TAKE_M(w->wv, w->Wv, Dk, C);
        TAKE_M(w->wo, w->Wo, C, Dq);
        if (m->cfg.attention_bias) {
            TAKE(w->bq, Dq);
            TAKE(w->bk, Dk);
            TAKE(w->bv, Dk);
        }
        if (m->cfg.qk_norm) {
            TAKE(w->qn, hd);
            TAKE(w->kn, hd);
        }
        TAKE_M(w->wg, w->Wg, F, C);
        TAKE_M(w->wu, w->Wu, F, C);
        TAKE_M(w->wd, w->Wd, C, F);
    }
#undef TAKE_M
#undef TAKE
    return off;
}

/* The matrices of the model in a fixed order (embedding, head when untied, then per layer q k v o g u d). */
static int model_mats(eng_model *m, eng_wmat **out) {
    int n = 0;
    out[n++] = &m->Wte;
    if (!m->cfg.tie_word_embeddings) out[n++] = &m->Whead;
    for (int l = 0; l < m->L; l++) {
        eng_layer_weights *w = &m->layers[l];
        eng_wmat *t[] = {&w->Wq, &w->Wk, &w->Wv, &w->Wo, &w->Wg, &w->Wu, &w->Wd};
        for (int i = 0; i < 7; i++)
            out[n++] = t[i];
    }
    return n;
}

/* Allocates the matrices of a non-f32 model in wstore (storage type m->wtype). Returns 0 or -1 (OOM). */
static int alloc_stored(eng_model *m) {
    eng_wmat **mats = malloc(((size_t)m->L * 7 + 2) * sizeof *mats);
    if (!mats) return -1;
    int n = model_mats(m, mats);
    size_t C = m->C, V = m->V, F = m->F, Dq = m->Dq, Dk = m->Dk;
    const size_t shp[7][2] = {{Dq, C}, {Dk, C}, {Dk, C}, {C, Dq}, {F, C}, {F, C}, {C, F}};
    size_t total = 0;
    for (int pass = 0; pass < 2; pass++) {
        size_t off = 0;
        for (int i = 0; i < n; i++) {
            int li = i - (m->cfg.tie_word_embeddings ? 1 : 2);
            size_t r = li < 0 ? V : shp[li % 7][0], c = li < 0 ? C : shp[li % 7][1];
            if (pass) eng_wmat_init(mats[i], m->wtype, (int)r, (int)c, (char *)m->wstore + off);
            off += (gguf_row_bytes(m->wtype, (int64_t)c) * r + 63) & ~(size_t)63;
        }
        if (!pass) {
            total = off;
            m->wstore = aligned_alloc(64, total ? total : 64);
            if (!m->wstore) {
                free(mats);
                return -1;
            }
            memset(m->wstore, 0, total);
            m->wstore_n = total;
        }
    }
    if (m->cfg.tie_word_embeddings) m->Whead = m->Wte;
    m->n_wbytes = total;
    free(mats);
    return 0;
}

static eng_model *model_new(const eng_config *cfg, const eng_kernels *k, int wtype, lt_err *err) {
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
    if (wtype > 0 &&
        (cfg->hidden_size % gguf_block_elems(wtype) || cfg->intermediate_size % gguf_block_elems(wtype) ||
         (cfg->num_heads * cfg->head_dim) % gguf_block_elems(wtype))) {
        lt_err_set(err, 400,
                   "model storage %s: hidden, intermediate and attention sizes must be multiples of %d",
                   gguf_type_name(wtype) ? gguf_type_name(wtype) : "?", gguf_block_elems(wtype));
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
    m->wtype = wtype;
    m->layers = calloc((size_t)m->L, sizeof(*m->layers));
    if (!m->layers) goto oom;
    m->n_base = layout_base(m, NULL);
    m->base_refs = malloc(sizeof(int));
    if (!m->base_refs) goto oom;
    *m->base_refs = 1;
    m->base = falloc(m->n_base);
    if (!m->base) goto oom;
    layout_base(m, m->base);
    if (wtype > 0 && alloc_stored(m)) goto oom;
    return m;
oom:
    eng_model_free(m);
    lt_err_set(err, 500, "out of memory allocating the model's base weights");
    return NULL;
}

eng_model *eng_model_new(const eng_config *cfg, const eng_kernels *k, lt_err *err) {
    return model_new(cfg, k, GGUF_F32, err);
}

eng_model *eng_model_new_stored(const eng_config *cfg, const eng_kernels *k, int wtype, lt_err *err) {
    if (wtype >= 0 && wtype != GGUF_F32 && wtype != GGUF_BF16 && wtype != GGUF_F16 && wtype != GGUF_Q8_0) {
        lt_err_set(err, 400, "model storage type %s: a new model can be f32, bf16, f16 or q8_0",
                   gguf_type_name(wtype) ? gguf_type_name(wtype) : "?");
        return NULL;
    }
    return model_new(cfg, k, wtype < 0 ? -1 : wtype, err);
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
    m->Wte = src->Wte, m->Whead = src->Whead, m->wtype = src->wtype, m->compute = src->compute;
    m->wstore = src->wstore, m->wstore_n = src->wstore_n, m->wfile = src->wfile,
    m->wfile_kind = src->wfile_kind, m->n_wbytes = src->n_wbytes;
    memcpy(m->load_note, src->load_note, sizeof m->load_note);
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
        free(m->wstore);
        if (m->wfile_kind == 1) gguf_close(m->wfile);
        if (m->wfile_kind == 2) st_close(m->wfile);
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

/* fn on one tensor; a matrix not stored f32 goes through a temporary f32 copy, written back (rounded into
 * its type) when writeback is 1 and the model owns the storage. writeback 2 (loaders): an unset matrix is
 * passed with data NULL, for the loader to point it at its stored bytes; writeback 3 (save): a stored matrix
 * is passed with data NULL (the callback reads its eng_wmat), no copy made. */
static int visit(eng_model *m, eng_weight_fn fn, void *ctx, const char *name, float *p, eng_wmat *W, int r,
                 int c, int writeback) {
    if (W && !W->data && writeback == 2) return fn(ctx, name, NULL, r, c); /* a loader filling it */
    if (W && W->data && W->type != GGUF_F32 && writeback == 3) return fn(ctx, name, NULL, r, c); /* stored */
    if (!W || W->type == GGUF_F32 || !W->data) return p || !W ? fn(ctx, name, p, r, c) : 0;
    float *tmp = malloc((size_t)r * (size_t)c * sizeof(float));
    if (!tmp) return -1;
    eng_wmat_rows_f32(W, 0, r, tmp);
    int rc = fn(ctx, name, tmp, r, c);
    if (!rc && writeback && m->wstore && (const char *)W->data >= (const char *)m->wstore &&
        (const char *)W->data < (const char *)m->wstore + m->wstore_n) {
#pragma omp parallel for schedule(static) if (r >= 64)
        for (int i = 0; i < r; i++)
            gguf_quantize(W->type, tmp + (size_t)i * c, (char *)W->data + (size_t)i * W->row_bytes, c);
    }
    free(tmp);
    return rc;
}

static int each_weight(eng_model *m, eng_weight_fn fn, void *ctx, int writeback) {
    char name[160];
    int rc;
#define EMIT(nm, ptr, W, r, c)                                                                               \
    do {                                                                                                     \
        if ((rc = visit(m, fn, ctx, nm, ptr, W, r, c, writeback)) != 0) return rc;                           \
    } while (0)
    EMIT("model.embed_tokens.weight", m->wte, &m->Wte, m->V, m->C);
    EMIT("model.norm.weight", m->norm, NULL, m->C, 0);
    if (!m->cfg.tie_word_embeddings) EMIT("lm_head.weight", m->head, &m->Whead, m->V, m->C);
    for (int l = 0; l < m->L; l++) {
        eng_layer_weights *w = &m->layers[l];
        const struct {
            const char *suffix;
            float *p;
            eng_wmat *W;
            int r, c;
        } t[] = {
            {"input_layernorm.weight", w->ln1, NULL, m->C, 0},
            {"post_attention_layernorm.weight", w->ln2, NULL, m->C, 0},
            {"self_attn.q_proj.weight", w->wq, &w->Wq, m->Dq, m->C},
            {"self_attn.k_proj.weight", w->wk, &w->Wk, m->Dk, m->C},
            {"self_attn.v_proj.weight", w->wv, &w->Wv, m->Dk, m->C},
            {"self_attn.o_proj.weight", w->wo, &w->Wo, m->C, m->Dq},
            {"self_attn.q_proj.bias", w->bq, NULL, m->Dq, 0},
            {"self_attn.k_proj.bias", w->bk, NULL, m->Dk, 0},
            {"self_attn.v_proj.bias", w->bv, NULL, m->Dk, 0},
            {"self_attn.q_norm.weight", w->qn, NULL, m->hd, 0},
            {"self_attn.k_norm.weight", w->kn, NULL, m->hd, 0},
            {"mlp.gate_proj.weight", w->wg, &w->Wg, m->F, m->C},
            {"mlp.up_proj.weight", w->wu, &w->Wu, m->F, m->C},
            {"mlp.down_proj.weight", w->wd, &w->Wd, m->C, m->F},
        };
        for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
            if (!t[i].p && !t[i].W) continue;
            snprintf(name, sizeof(name), "model.layers.%d.%s", l, t[i].suffix);
            EMIT(name, t[i].p, t[i].W, t[i].r, t[i].c);
        }
    }
#undef EMIT
    return 0;
}

int eng_model_each_weight(eng_model *m, eng_weight_fn fn, void *ctx) {
    return each_weight(m, fn, ctx, 0);
}

int eng_model_each_weight_unset(eng_model *m, eng_weight_fn fn, void *ctx) {
    return each_weight(m, fn, ctx, 2);
}

int eng_model_all_f32(const eng_model *m) {
    return m->wtype == GGUF_F32;
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

static eng_model *load_f32(const char *dir, const eng_kernels *k, lt_err *err) {
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
    eng_model_resident(m, m->load_note, sizeof m->load_note);
    return m;
}

eng_model *eng_model_load_f32(const char *dir, const eng_kernels *k, lt_err *err) {
    if (eng_path_is_gguf(dir)) return eng_gguf_model_load_f32(dir, k, err);
    return load_f32(dir, k, err);
}

typedef struct {
    eng_model *m;
    const st_reader *r;
    lt_err *err;
} stored_ctx;

/* Finds the wmat behind an HF matrix name (NULL for vectors). */
static eng_wmat *wmat_of(eng_model *m, const char *name) {
    if (!strcmp(name, "model.embed_tokens.weight")) return &m->Wte;
    if (!strcmp(name, "lm_head.weight")) return &m->Whead;
    int l, n = 0;
    char part[64];
    if (sscanf(name, "model.layers.%d.%63[a-z_.]%n", &l, part, &n) != 2 || name[n] || l < 0 || l >= m->L)
        return NULL;
    eng_layer_weights *w = &m->layers[l];
    static const char *nm[7] = {"self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                                "mlp.gate_proj.weight",    "mlp.up_proj.weight",
                                "mlp.down_proj.weight"};
    eng_wmat *t[7] = {&w->Wq, &w->Wk, &w->Wv, &w->Wo, &w->Wg, &w->Wu, &w->Wd};
    for (int i = 0; i < 7; i++)
        if (!strcmp(part, nm[i])) return t[i];
    return NULL;
}

eng_wmat *eng_model_wmat_of(eng_model *m, const char *name) {
    return wmat_of(m, name);
}

/* Vectors are widened into base (load_one); matrices point into the mapping in their own dtype. */
static int load_stored_one(void *vctx, const char *name, float *data, int rows, int cols) {
    stored_ctx *c = vctx;
    eng_wmat *W = cols ? wmat_of(c->m, name) : NULL;
    if (!W) {
        load_ctx lc = {c->r, c->err};
        return load_one(&lc, name, data, rows, cols);
    }
    int64_t shape[2] = {rows, cols};
    const st_tensor *t = st_expect(c->r, name, 2, shape, c->err);
    if (!t) return 1;
    int type = t->dtype == ST_BF16 ? GGUF_BF16 : t->dtype == ST_F16 ? GGUF_F16 : GGUF_F32;
    if (((uintptr_t)t->data & (type == GGUF_F32 ? 3u : 1u)) != 0)
        return lt_err_set(c->err, 400,
                          "%s: tensor %s is not aligned to its element size in the file; rewrite the "
                          "checkpoint with safetensors (which aligns tensors) or load it widened",
                          t->file, name),
               1;
    eng_wmat_init(W, type, rows, cols, t->data);
    c->m->n_wbytes += eng_wmat_bytes(W);
    return 0;
}

/* Any matrix stored BF16/F16? Then the checkpoint is kept as stored. */
static int st_has_half(const st_reader *r) {
    for (size_t i = 0; i < st_count(r); i++) {
        const st_tensor *t = st_at(r, i);
        if (t->ndim == 2 && t->dtype != ST_F32) return 1;
    }
    return 0;
}

eng_model *eng_model_load(const char *dir, const eng_kernels *k, lt_err *err) {
    const char *wv =
        getenv("LATHE_WEIGHTS"); /* "f32": widen everything, the pre-wmat behaviour (benchmarks) */
    if (wv && !strcmp(wv, "f32")) return eng_model_load_f32(dir, k, err);
    if (eng_path_is_gguf(dir)) return eng_gguf_model_load(dir, k, err);
    eng_config cfg;
    if (eng_config_load(dir, &cfg, err) != 0) return NULL;
    st_reader *r = st_open(dir, err);
    if (!r) return NULL;
    if (!st_has_half(r)) {
        st_close(r);
        return load_f32(dir, k, err);
    }
    eng_model *m = eng_model_new_stored(&cfg, k, -1, err);
    if (!m) {
        st_close(r);
        return NULL;
    }
    m->wfile = r, m->wfile_kind = 2;
    m->n_wbytes = 0;
    stored_ctx c = {m, r, err};
    if (each_weight(m, load_stored_one, &c, 2) != 0) {
        eng_model_free(m);
        return NULL;
    }
    if (m->cfg.tie_word_embeddings) m->Whead = m->Wte;
    eng_model_resident(m, m->load_note, sizeof m->load_note);
    return m;
}

typedef struct {
    eng_model *m;
    st_writer *w;
    lt_err *err;
} save_ctx;

static int save_one(void *vctx, const char *name, float *data, int rows, int cols) {
    save_ctx *c = vctx;
    int64_t shape[2] = {rows, cols};
    eng_wmat *W = cols ? wmat_of(c->m, name) : NULL;
    if (!W || W->type == GGUF_F32)
        return st_writer_add_f32(c->w, name, ST_F32, cols ? 2 : 1, shape, W ? (const float *)W->data : data,
                                 c->err)
                   ? 1
                   : 0;
    if (W->type != GGUF_BF16 && W->type != GGUF_F16)
        return lt_err_set(c->err, 400,
                          "save: %s is stored %s, which safetensors cannot hold (use F32, BF16, F16)", name,
                          gguf_type_name(W->type)),
               1;
    return st_writer_add(c->w, name, W->type == GGUF_BF16 ? ST_BF16 : ST_F16, 2, shape, W->data, c->err) ? 1
                                                                                                         : 0;
}

int eng_model_save_safetensors(eng_model *m, const char *path, lt_err *err) {
    save_ctx c = {m, st_writer_new(), err};
    int rc = each_weight(m, save_one, &c, 3);
    if (!rc) rc = st_writer_write(c.w, path, err);
    st_writer_free(c.w);
    return rc ? -1 : 0;
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
    each_weight(m, rand_one, &c, 1);
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
    return m->n_base * sizeof(float) + m->n_wbytes;
}

void eng_model_resident(const eng_model *m, char *buf, size_t cap) {
    double by[32] = {0};
    eng_model *mm = (eng_model *)m;
    eng_wmat *mats[2 + 7 * 1024];
    size_t n = 0;
    if (m->L <= 1024) {
        mats[n++] = &mm->Wte;
        if (!m->cfg.tie_word_embeddings) mats[n++] = &mm->Whead;
        for (int l = 0; l < m->L; l++) {
            eng_layer_weights *w = &mm->layers[l];
            eng_wmat *t[] = {&w->Wq, &w->Wk, &w->Wv, &w->Wo, &w->Wg, &w->Wu, &w->Wd};
            for (int i = 0; i < 7; i++)
                mats[n++] = t[i];
        }
    }
    double in_base = (double)m->n_base * sizeof(float);
    for (size_t i = 0; i < n; i++) {
        if (mats[i]->type < 0 || mats[i]->type >= 32 || !mats[i]->data) continue;
        if (m->wtype == GGUF_F32) continue; /* inside base */
        by[mats[i]->type] += (double)eng_wmat_bytes(mats[i]);
    }
    size_t len = 0;
    buf[0] = 0;
    int done[32] = {0};
    for (;;) {
        int best = -1;
        for (int t = 0; t < 32; t++)
            if (by[t] > 0 && !done[t] && (best < 0 || by[t] > by[best])) best = t;
        if (best < 0) break;
        done[best] = 1;
        len += (size_t)snprintf(buf + len, len < cap ? cap - len : 0, "%s%s %.1f MB", len ? " + " : "",
                                gguf_type_name(best), by[best] / 1e6);
        if (len >= cap) return;
    }
    snprintf(buf + len, len < cap ? cap - len : 0, "%s%s f32 %.1f MB (resident %.1f MB)",
             len ? " as stored" : "", len ? " +" : "all", in_base / 1e6,
             (double)eng_model_base_bytes(m) / 1e6);
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

/* A matrix stored f32 runs the kernel table's linear exactly as before (compute f32); any other storage, and
 * every matrix under compute bf16, goes through the wmat kernels (dequantized per tile, or on the fly for a
 * few rows; bf16 tiles into gemm_bf16 under compute bf16). */
static void lin_fwd(eng_model *m, float *out, const float *inp, const float *W, const eng_wmat *Wm,
                    const float *bias, int N, int I, int O) {
    if (W && m->compute == ENG_COMPUTE_F32)
        m->k->linear_forward(out, inp, W, bias, N, I, O);
    else
        eng_wmat_linear_forward(out, inp, Wm, bias, N, m->compute);
}

static void lin_bwd(eng_model *m, float *dinp, const float *dout, const float *W, const eng_wmat *Wm, int N,
                    int I, int O) {
    if (W && m->compute == ENG_COMPUTE_F32)
        m->k->linear_backward(dinp, dout, W, N, I, O);
    else
        eng_wmat_linear_backward(dinp, dout, Wm, N, m->compute);
}

static void proj_fwd(eng_model *m, float *out, const float *inp, const float *W, const eng_wmat *Wm,
                     const float *bias, const eng_lora_slot *sl, float *xa, int N, int I, int O) {
    PROF(m, ENG_PH_GEMM, {
        lin_fwd(m, out, inp, W, Wm, bias, N, I, O);
        if (sl && sl->A) m->k->lora_forward(out, xa, inp, sl->A, sl->B, m->scale, N, I, m->lora.rank, O);
    });
}

static void proj_bwd(eng_model *m, float *dinp, const float *dout, const float *inp, const float *W,
                     const eng_wmat *Wm, const eng_lora_slot *sl, const float *xa, float *lscr, int N, int I,
                     int O) {
    PROF(m, ENG_PH_GEMM, {
        lin_bwd(m, dinp, dout, W, Wm, N, I, O);
        if (sl && sl->A)
            m->k->lora_backward(dinp, eng_model_grad_of(m, sl->A), eng_model_grad_of(m, sl->B), dout, inp, xa,
                                sl->A, sl->B, m->scale, N, I, m->lora.rank, O, lscr);
    });
}

void eng_model_linear(eng_model *m, float *out, const float *inp, const float *W, const eng_wmat *Wm,
                      const float *bias, int N, int I, int O) {
    lin_fwd(m, out, inp, W, Wm, bias, N, I, O);
}

void eng_model_embed(eng_model *m, float *out, const int *tokens, int N) {
    if (m->wte)
        m->k->embedding_forward(out, tokens, m->wte, N, m->C);
    else
        eng_wmat_gather_f32(&m->Wte, tokens, N, out);
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
    proj_fwd(m, qk ? a->qpre : a->q, a->ln1, w->wq, &w->Wq, w->bq, slot_or_null(m, l, ENG_T_Q),
             a->xa[ENG_T_Q], N, C, Dq);
    proj_fwd(m, qk ? a->kpre : a->k, a->ln1, w->wk, &w->Wk, w->bk, slot_or_null(m, l, ENG_T_K),
             a->xa[ENG_T_K], N, C, Dk);
    proj_fwd(m, a->v, a->ln1, w->wv, &w->Wv, w->bv, slot_or_null(m, l, ENG_T_V), a->xa[ENG_T_V], N, C, Dk);
    PROF(m, ENG_PH_NORM, {
        if (qk) {
            k->rmsnorm_forward(a->q, a->qrstd, a->qpre, w->qn, N * H, hd, eps);
            k->rmsnorm_forward(a->k, a->krstd, a->kpre, w->kn, N * KV, hd, eps);
        }
        k->rope_forward(a->q, m->rope_cos, m->rope_sin, m->pos, N, H, hd);
        k->rope_forward(a->k, m->rope_cos, m->rope_sin, m->pos, N, KV, hd);
    });
    PROF(m, ENG_PH_ATTN, k->attention_forward(a->att, a->lse, a->q, a->k, a->v, B, T, H, KV, hd));
    proj_fwd(m, s->tmp, a->att, w->wo, &w->Wo, NULL, slot_or_null(m, l, ENG_T_O), a->xa[ENG_T_O], N, Dq, C);
    PROF(m, ENG_PH_NORM, {
        add3(a->h, a->res, s->tmp, (size_t)N * C);
        k->rmsnorm_forward(a->ln2, a->rstd2, a->h, w->ln2, N, C, eps);
    });
    proj_fwd(m, a->gate, a->ln2, w->wg, &w->Wg, NULL, slot_or_null(m, l, ENG_T_GATE), a->xa[ENG_T_GATE], N, C,
             F);
    proj_fwd(m, a->up, a->ln2, w->wu, &w->Wu, NULL, slot_or_null(m, l, ENG_T_UP), a->xa[ENG_T_UP], N, C, F);
    PROF(m, ENG_PH_NORM, k->swiglu_forward(s->act, a->gate, a->up, N, F));
    proj_fwd(m, s->tmp, s->act, w->wd, &w->Wd, NULL, slot_or_null(m, l, ENG_T_DOWN), a->xa[ENG_T_DOWN], N, F,
             C);
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
    proj_bwd(m, s->dact, s->dres, s->act, w->wd, &w->Wd, slot_or_null(m, l, ENG_T_DOWN), a->xa[ENG_T_DOWN],
             s->lscr, N, F, C);
    PROF(m, ENG_PH_NORM, {
        memset(s->dgate, 0, nF * sizeof(float));
        memset(s->dup, 0, nF * sizeof(float));
        k->swiglu_backward(s->dgate, s->dup, s->dact, a->gate, a->up, N, F);
        memset(s->dln, 0, nC * sizeof(float));
    });
    proj_bwd(m, s->dln, s->dgate, a->ln2, w->wg, &w->Wg, slot_or_null(m, l, ENG_T_GATE), a->xa[ENG_T_GATE],
             s->lscr, N, C, F);
    proj_bwd(m, s->dln, s->dup, a->ln2, w->wu, &w->Wu, slot_or_null(m, l, ENG_T_UP), a->xa[ENG_T_UP], s->lscr,
             N, C, F);
    PROF(m, ENG_PH_NORM, k->rmsnorm_backward(s->dres, s->dln, a->h, w->ln2, a->rstd2, N, C));

    /* attention: h = res + o(attn(rope(q), rope(k), v)) */
    memset(s->datt, 0, (size_t)N * Dq * sizeof(float));
    proj_bwd(m, s->datt, s->dres, a->att, w->wo, &w->Wo, slot_or_null(m, l, ENG_T_O), a->xa[ENG_T_O], s->lscr,
             N, Dq, C);
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
    proj_bwd(m, s->dln, dq, a->ln1, w->wq, &w->Wq, slot_or_null(m, l, ENG_T_Q), a->xa[ENG_T_Q], s->lscr, N, C,
             Dq);
    proj_bwd(m, s->dln, dk, a->ln1, w->wk, &w->Wk, slot_or_null(m, l, ENG_T_K), a->xa[ENG_T_K], s->lscr, N, C,
             Dk);
    proj_bwd(m, s->dln, s->dv, a->ln1, w->wv, &w->Wv, slot_or_null(m, l, ENG_T_V), a->xa[ENG_T_V], s->lscr, N,
             C, Dk);
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

    PROF(m, ENG_PH_NORM, eng_model_embed(m, m->acts[0].res, tokens, N));
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
    /* f32 head under compute f32: the f32 kernels as before; otherwise the stored head (wmat) */
    const float *hw = m->compute == ENG_COMPUTE_F32 ? m->head : NULL;
    const eng_lora_slot *hl = &m->head_lora;
    if (hl->A) {
        float *gA = backward ? eng_model_grad_of(m, hl->A) : NULL,
              *gB = backward ? eng_model_grad_of(m, hl->B) : NULL;
        PROF(m, ENG_PH_HEAD,
             loss = k->head_loss_w(lp, backward ? s.dln : NULL, entropy, m->lnf, hw, hl->A, hl->B, m->scale,
                                   m->lora.rank, gA, gB, targ, N, C, m->V, m->head_chunk,
                                   loss_fn ? loss_fn : no_loss, ctx, s.head, &m->Whead, m->compute));
    } else {
        PROF(m, ENG_PH_HEAD,
             loss = hw ? k->head_loss(lp, backward ? s.dln : NULL, entropy, m->lnf, hw, targ, N, C, m->V,
                                      m->head_chunk, loss_fn ? loss_fn : no_loss, ctx, s.head)
                       : k->head_loss_w(lp, backward ? s.dln : NULL, entropy, m->lnf, NULL, NULL, NULL, 0.0f,
                                        0, NULL, NULL, targ, N, C, m->V, m->head_chunk,
                                        loss_fn ? loss_fn : no_loss, ctx, s.head, &m->Whead, m->compute));
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
