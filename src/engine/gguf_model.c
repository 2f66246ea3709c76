/* gguf_model.c: GGUF metadata -> eng_config, GGUF tensors -> eng_model.
 *
 * Config. general.architecture picks the architecture (llama, which Mistral files also say; qwen2; qwen3)
 * and every hyper-parameter is read from `<arch>.<key>` as llama.cpp's converter writes it. What HF
 * config.json says with flags, GGUF says with tensors: a tied head is the absence of output.weight, q/k/v
 * biases the presence of blk.0.attn_q.bias, the Qwen3 q/k norm the presence of blk.0.attn_q_norm.weight.
 * RoPE scaling: llama.cpp writes Llama 3 scaling as a per-frequency factor tensor rope_freqs.weight (not as
 * keys); the Llama 3 parameters are recovered from it (the formula depends only on the ratios of the original
 * context to the two frequency factors, so the original context is taken from rope.scaling.
 * original_context_length or 8192 and the factors solved for) and the fit is checked against every factor;
 * any other scaling (linear, yarn, factors that are not Llama 3's) is refused, never run unscaled. After the
 * metadata, every tensor of the file is checked against the config (name, dims, shape), so a config that
 * loads is one whose weights load.
 *
 * Weights. The matrices (embedding, head, projections) stay as stored: their eng_wmat points into the
 * file's mapping, which the model then owns (eng_gguf_model_load) and reads through the wmat kernels. Vectors
 * (norms, biases) are dequantized into the f32 base. A file whose matrices are all F32 loads into the f32
 * base as before, and eng_gguf_model_from_f32 widens every tensor (row by row, OpenMP over rows), the
 * reference the stored path is tested against. llama.cpp's converter permutes the Q and K rows of
 * llama-architecture files (weights and biases) so its RoPE can rotate adjacent pairs; HF rotates halves, so
 * the load applies the inverse permutation: on f32 rows when widening, by copying whole stored rows (a row of
 * a block format is self-contained) into the model's own buffer when kept as stored. qwen2/qwen3 files are
 * unpermuted.
 *
 * Names. One table maps the HF names eng_model_each_weight uses to llama.cpp's names, both ways. */
#include "engine/gguf_model.h"

#include <ctype.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/util.h"

/* ---- names --------------------------------------------------------------------------------------------- */

typedef struct name_pair {
    const char *hf, *gg;
} name_pair;

static const name_pair GLOBAL_NAMES[] = {
    {"model.embed_tokens.weight", "token_embd.weight"},
    {"model.norm.weight", "output_norm.weight"},
    {"lm_head.weight", "output.weight"},
};

static const name_pair LAYER_NAMES[] = {
    {"input_layernorm.weight", "attn_norm.weight"},    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},      {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.v_proj.weight", "attn_v.weight"},      {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.q_proj.bias", "attn_q.bias"},          {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.bias", "attn_v.bias"},          {"self_attn.q_norm.weight", "attn_q_norm.weight"},
    {"self_attn.k_norm.weight", "attn_k_norm.weight"}, {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},           {"mlp.down_proj.weight", "ffn_down.weight"},
};
#define NGLOBAL (sizeof GLOBAL_NAMES / sizeof GLOBAL_NAMES[0])
#define NLAYER (sizeof LAYER_NAMES / sizeof LAYER_NAMES[0])

/* "<prefix><N>.<rest>" -> N (a plain decimal, no sign or leading zero) and rest; -1 if it does not match. */
static long split_layer(const char *name, const char *prefix, const char **rest) {
    size_t pl = strlen(prefix);
    if (strncmp(name, prefix, pl) != 0) return -1;
    const char *p = name + pl;
    if (!isdigit((unsigned char)*p) || (p[0] == '0' && isdigit((unsigned char)p[1]))) return -1;
    long n = 0;
    while (isdigit((unsigned char)*p)) {
        n = n * 10 + (*p++ - '0');
        if (n > INT_MAX) return -1;
    }
    if (*p != '.') return -1;
    *rest = p + 1;
    return n;
}

static const char *map_name(const char *from, int to_gguf, char *buf, size_t cap) {
    for (size_t i = 0; i < NGLOBAL; i++) {
        const char *a = to_gguf ? GLOBAL_NAMES[i].hf : GLOBAL_NAMES[i].gg;
        const char *b = to_gguf ? GLOBAL_NAMES[i].gg : GLOBAL_NAMES[i].hf;
        if (strcmp(from, a) == 0) {
            if ((size_t)snprintf(buf, cap, "%s", b) >= cap) return NULL;
            return buf;
        }
    }
    const char *rest;
    long l = split_layer(from, to_gguf ? "model.layers." : "blk.", &rest);
    if (l < 0) return NULL;
    for (size_t i = 0; i < NLAYER; i++) {
        const char *a = to_gguf ? LAYER_NAMES[i].hf : LAYER_NAMES[i].gg;
        const char *b = to_gguf ? LAYER_NAMES[i].gg : LAYER_NAMES[i].hf;
        if (strcmp(rest, a) == 0) {
            if ((size_t)snprintf(buf, cap, "%s%ld.%s", to_gguf ? "blk." : "model.layers.", l, b) >= cap)
                return NULL;
            return buf;
        }
    }
    return NULL;
}

const char *eng_gguf_name_for_hf(const char *hf, char *buf, size_t cap) {
    return map_name(hf, 1, buf, cap);
}

const char *eng_gguf_name_to_hf(const char *gguf, char *buf, size_t cap) {
    return map_name(gguf, 0, buf, cap);
}

/* ---- Q/K permutation ----------------------------------------------------------------------------------- */

void eng_gguf_permute_qk(float *w, int rows, int cols, int n_head, int inverse) {
    if (n_head <= 0 || rows % n_head != 0 || (rows / n_head) % 2 != 0 || cols <= 0) return;
    int hd = rows / n_head, half = hd / 2;
    size_t head_n = (size_t)hd * (size_t)cols;
    float *tmp = malloc(head_n * sizeof(float));
    if (!tmp) abort(); /* one head's rows: a few hundred KB at most */
    for (int h = 0; h < n_head; h++) {
        float *W = w + (size_t)h * head_n;
        memcpy(tmp, W, head_n * sizeof(float));
        for (int j = 0; j < 2; j++)
            for (int i = 0; i < half; i++) {
                size_t hf_row = (size_t)j * half + i, gg_row = (size_t)2 * i + j;
                size_t dst = inverse ? hf_row : gg_row, src = inverse ? gg_row : hf_row;
                memcpy(W + dst * cols, tmp + src * cols, (size_t)cols * sizeof(float));
            }
    }
    free(tmp);
}

/* ---- config -------------------------------------------------------------------------------------------- */

typedef struct arch_info {
    const char *gguf, *architecture, *family;
    eng_arch arch;
    int default_ctx;
} arch_info;

static const arch_info ARCHS[] = {
    {"llama", "LlamaForCausalLM", "llama", ENG_ARCH_LLAMA, 2048},
    {"qwen2", "Qwen2ForCausalLM", "qwen", ENG_ARCH_QWEN2, 32768},
    {"qwen3", "Qwen3ForCausalLM", "qwen", ENG_ARCH_QWEN3, 32768},
};
#define NARCHS (sizeof ARCHS / sizeof ARCHS[0])

int eng_path_is_gguf(const char *path) {
    size_t n = path ? strlen(path) : 0;
    if (n < 5 || strcmp(path + n - 5, ".gguf") != 0) return 0;
    struct stat st;
    return !(stat(path, &st) == 0 && S_ISDIR(st.st_mode));
}

/* `<arch>.<key>` as an int in [lo, hi]. Returns 0 (present), 1 (absent: *out = def), -1 error. */
static int arch_int(const gguf_file *f, const char *arch, const char *key, int required, long long def,
                    long long lo, long long hi, int *out, lt_err *err) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    int64_t v;
    int rc = gguf_get_int(f, k, &v, err);
    if (rc < 0) return -1;
    if (rc == 1) {
        if (required)
            return lt_err_set(err, 400, "%s: metadata key \"%s\" is missing (an integer is required)",
                              gguf_path(f), k);
        *out = (int)def;
        return 1;
    }
    if (v < lo || v > hi)
        return lt_err_set(err, 400, "%s: metadata key \"%s\" is %" PRId64 "; it must be in %lld..%lld",
                          gguf_path(f), k, v, lo, hi);
    *out = (int)v;
    return 0;
}

static int arch_float(const gguf_file *f, const char *arch, const char *key, double def, double *out,
                      int *present, lt_err *err) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    int rc = gguf_get_float(f, k, out, err);
    if (rc < 0) return -1;
    if (present) *present = rc == 0;
    if (rc == 1) *out = def;
    if (!isfinite(*out))
        return lt_err_set(err, 400, "%s: metadata key \"%s\" must be finite", gguf_path(f), k);
    return 0;
}

static int token_id(const gguf_file *f, const char *key, int *out, lt_err *err) {
    int64_t v;
    *out = -1;
    int rc = gguf_get_int(f, key, &v, err);
    if (rc < 0) return -1;
    if (rc == 0) {
        if (v < 0 || v > INT_MAX)
            return lt_err_set(err, 400, "%s: metadata key \"%s\" is %" PRId64 "; it must be a token id",
                              gguf_path(f), key, v);
        *out = (int)v;
    }
    return 0;
}

/* The factor kernels_cpu.c's Llama 3 RoPE divides frequency d by (1 for default RoPE), in double. */
static double llama3_factor(const eng_config *c, int d, int hd) {
    double inv = pow((double)c->rope_theta, -2.0 * d / hd);
    double old = c->rope_original_max_pos, lo = c->rope_low_freq_factor, hi = c->rope_high_freq_factor;
    double wavelen = 2.0 * M_PI / inv, factor = c->rope_factor;
    if (wavelen < old / hi) return 1.0;
    if (wavelen > old / lo) return factor;
    double smooth = (old / wavelen - lo) / (hi - lo);
    return 1.0 / ((1.0 - smooth) / factor + smooth);
}

/* rope_freqs.weight (per-frequency divisors, llama.cpp's Llama 3 encoding) -> Llama 3 parameters. */
static int fit_rope_freqs(const gguf_file *f, const gguf_tensor *t, eng_config *c, int old_ctx, lt_err *err) {
    const char *path = gguf_path(f);
    int h2 = c->head_dim / 2;
    if (t->ndim != 1 || t->ne[0] != h2)
        return lt_err_set(err, 400,
                          "%s: tensor rope_freqs.weight has %" PRId64 " elements; head_dim %d needs %d", path,
                          t->numel, c->head_dim, h2);
    float *fac = malloc((size_t)h2 * sizeof(float));
    if (!fac) return lt_err_set(err, 500, "out of memory");
    if (gguf_tensor_to_f32(t, fac, (size_t)h2, err) != 0) {
        free(fac);
        return -1;
    }
    int all_one = 1;
    for (int d = 0; d < h2; d++)
        if (!(fabsf(fac[d] - 1.0f) < 1e-6f)) all_one = 0;
    if (all_one) {
        free(fac);
        return 0;
    }
    double factor = fac[h2 - 1];
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    int ns = 0;
    for (int d = 0; d < h2 && factor > 1; d++) {
        double fd = fac[d];
        if (!(fd > 1 + 1e-4 && fd < factor * (1 - 1e-4))) continue;
        double x = pow((double)c->rope_theta, -2.0 * d / c->head_dim) / (2.0 * M_PI);
        double y = (1.0 / fd - 1.0 / factor) / (1.0 - 1.0 / factor);
        sx += x, sy += y, sxx += x * x, sxy += x * y, ns++;
    }
    double lo = 1.0, hi = 4.0; /* llama 3.1's, when too few factors lie between the two bands to solve */
    if (ns >= 2 && ns * sxx - sx * sx > 0) {
        double a = (ns * sxy - sx * sy) / (ns * sxx - sx * sx), b = (a * sx - sy) / ns;
        if (a > 0) hi = old_ctx / a + b * old_ctx / a, lo = b * old_ctx / a;
    }
    c->rope_type = ENG_ROPE_LLAMA3;
    c->rope_factor = (float)factor;
    c->rope_low_freq_factor = (float)lo;
    c->rope_high_freq_factor = (float)hi;
    c->rope_original_max_pos = old_ctx;
    int ok = factor > 1 && lo > 0 && hi > lo;
    for (int d = 0; d < h2 && ok; d++)
        if (fabs(llama3_factor(c, d, c->head_dim) - fac[d]) > 1e-3 * fac[d]) ok = 0;
    free(fac);
    if (!ok)
        return lt_err_set(
            err, 400,
            "%s: tensor rope_freqs.weight holds per-frequency RoPE factors that are not Llama 3 "
            "scaling; only default RoPE and Llama 3 scaling are supported",
            path);
    return 0;
}

static int read_rope(const gguf_file *f, const char *arch, eng_config *c, lt_err *err) {
    const char *path = gguf_path(f);
    double theta;
    if (arch_float(f, arch, "rope.freq_base", 10000.0, &theta, NULL, err)) return -1;
    if (!(theta > 0))
        return lt_err_set(err, 400, "%s: metadata key \"%s.rope.freq_base\" must be positive", path, arch);
    c->rope_theta = (float)theta;
    c->rope_type = ENG_ROPE_DEFAULT;
    int rdim;
    if (arch_int(f, arch, "rope.dimension_count", 0, c->head_dim, 1, INT_MAX, &rdim, err) < 0) return -1;
    if (rdim != c->head_dim)
        return lt_err_set(err, 400,
                          "%s: metadata key \"%s.rope.dimension_count\" is %d but head_dim is %d; partial "
                          "rotary embeddings are not supported",
                          path, arch, rdim, c->head_dim);
    char k[128];
    snprintf(k, sizeof k, "%s.rope.scaling.type", arch);
    const char *type = NULL;
    size_t tlen = 0;
    if (gguf_get_str(f, k, &type, &tlen, err) < 0) return -1;
    if (type && !(tlen == 4 && memcmp(type, "none", 4) == 0)) {
        double factor = 1.0;
        if (arch_float(f, arch, "rope.scaling.factor", 1.0, &factor, NULL, err)) return -1;
        if (!(factor == 1.0))
            return lt_err_set(
                err, 400,
                "%s: metadata key \"%s\" is \"%.*s\" (factor %g); supported RoPE scaling: none, and "
                "Llama 3 scaling as a rope_freqs.weight tensor",
                path, k, (int)(tlen > 40 ? 40 : tlen), type, factor);
    }
    const gguf_tensor *rf = gguf_find_tensor(f, "rope_freqs.weight");
    if (!rf) return 0;
    int old_ctx;
    if (arch_int(f, arch, "rope.scaling.original_context_length", 0, 8192, 1, INT_MAX, &old_ctx, err) < 0)
        return -1;
    return fit_rope_freqs(f, rf, c, old_ctx, err);
}

static int check_tensors(const gguf_file *f, const eng_config *c, lt_err *err);

int eng_gguf_config(const gguf_file *f, eng_config *c, lt_err *err) {
    memset(c, 0, sizeof *c);
    const char *path = gguf_path(f);
    const char *a = NULL;
    size_t alen = 0;
    int rc = gguf_get_str(f, "general.architecture", &a, &alen, err);
    if (rc < 0) return -1;
    if (rc == 1)
        return lt_err_set(
            err, 400, "%s: metadata key \"general.architecture\" is missing (supported: llama, qwen2, qwen3)",
            path);
    const arch_info *ai = NULL;
    for (size_t i = 0; i < NARCHS; i++)
        if (alen == strlen(ARCHS[i].gguf) && memcmp(a, ARCHS[i].gguf, alen) == 0) ai = &ARCHS[i];
    if (!ai)
        return lt_err_set(
            err, 400,
            "%s: architecture \"%.*s\" (general.architecture) is not supported; supported: llama "
            "(and Mistral files, which say llama), qwen2, qwen3",
            path, (int)(alen > 60 ? 60 : alen), a);
    const char *arch = ai->gguf;
    c->arch = ai->arch;
    snprintf(c->architecture, sizeof c->architecture, "%s", ai->architecture);
    snprintf(c->family, sizeof c->family, "%s", ai->family);
    snprintf(c->torch_dtype, sizeof c->torch_dtype, "float32"); /* what is resident once loaded */

    int experts;
    if (arch_int(f, arch, "expert_count", 0, 0, 0, INT_MAX, &experts, err) < 0) return -1;
    if (experts > 0)
        return lt_err_set(err, 400,
                          "%s: metadata key \"%s.expert_count\" is %d: mixture-of-experts models are "
                          "not supported",
                          path, arch, experts);
    const int BIG = 1 << 24;
    if (arch_int(f, arch, "block_count", 1, 0, 1, 4096, &c->num_layers, err) < 0 ||
        arch_int(f, arch, "embedding_length", 1, 0, 1, BIG, &c->hidden_size, err) < 0 ||
        arch_int(f, arch, "feed_forward_length", 1, 0, 1, BIG, &c->intermediate_size, err) < 0 ||
        arch_int(f, arch, "attention.head_count", 1, 0, 1, 65536, &c->num_heads, err) < 0 ||
        arch_int(f, arch, "attention.head_count_kv", 0, c->num_heads, 1, 65536, &c->num_kv_heads, err) < 0)
        return -1;
    if (c->num_heads % c->num_kv_heads != 0)
        return lt_err_set(err, 400,
                          "%s: metadata key \"%s.attention.head_count_kv\" (%d) must divide "
                          "\"%s.attention.head_count\" (%d)",
                          path, arch, c->num_kv_heads, arch, c->num_heads);
    rc = arch_int(f, arch, "attention.key_length", 0, 0, 2, 65536, &c->head_dim, err);
    if (rc < 0) return -1;
    if (rc == 1) {
        if (c->hidden_size % c->num_heads != 0)
            return lt_err_set(err, 400,
                              "%s: \"%s.attention.head_count\" (%d) must divide \"%s.embedding_length\" (%d) "
                              "when \"%s.attention.key_length\" is absent",
                              path, arch, c->num_heads, arch, c->hidden_size, arch);
        c->head_dim = c->hidden_size / c->num_heads;
    }
    int vlen;
    if (arch_int(f, arch, "attention.value_length", 0, c->head_dim, 1, 65536, &vlen, err) < 0) return -1;
    if (vlen != c->head_dim)
        return lt_err_set(
            err, 400,
            "%s: metadata key \"%s.attention.value_length\" (%d) differs from the key length (%d); "
            "the engine needs them equal",
            path, arch, vlen, c->head_dim);
    if (c->head_dim % 2 != 0)
        return lt_err_set(err, 400, "%s: head_dim %d must be even for rotary embeddings", path, c->head_dim);
    if ((long long)c->num_heads * c->head_dim > INT_MAX / 2)
        return lt_err_set(err, 400, "%s: head_count * head_dim is too large", path);
    if (arch_int(f, arch, "context_length", 0, ai->default_ctx, 1, INT_MAX, &c->max_position_embeddings,
                 err) < 0)
        return -1;
    double eps;
    int has_eps;
    if (arch_float(f, arch, "attention.layer_norm_rms_epsilon", 1e-5, &eps, &has_eps, err)) return -1;
    if (!has_eps)
        return lt_err_set(err, 400,
                          "%s: metadata key \"%s.attention.layer_norm_rms_epsilon\" is missing (e.g. 1e-5)",
                          path, arch);
    if (!(eps > 0 && eps < 1))
        return lt_err_set(err, 400,
                          "%s: metadata key \"%s.attention.layer_norm_rms_epsilon\" must be between 0 and 1",
                          path, arch);
    c->rms_norm_eps = (float)eps;

    /* vocabulary: <arch>.vocab_size, else the tokenizer's token list, else the embedding's rows */
    rc = arch_int(f, arch, "vocab_size", 0, 0, 1, INT_MAX, &c->vocab_size, err);
    if (rc < 0) return -1;
    if (rc == 1) {
        const gguf_kv *toks = gguf_find_kv(f, "tokenizer.ggml.tokens");
        const gguf_tensor *emb = gguf_find_tensor(f, "token_embd.weight");
        if (toks && toks->type == GGUF_V_ARR && toks->n > 0 && toks->n <= INT_MAX)
            c->vocab_size = (int)toks->n;
        else if (emb && emb->ndim == 2 && emb->ne[1] <= INT_MAX)
            c->vocab_size = (int)emb->ne[1];
        else
            return lt_err_set(
                err, 400,
                "%s: no vocabulary size (\"%s.vocab_size\", \"tokenizer.ggml.tokens\" and tensor "
                "token_embd.weight are all missing)",
                path, arch);
    }

    c->tie_word_embeddings = gguf_find_tensor(f, "output.weight") == NULL;
    c->attention_bias = gguf_find_tensor(f, "blk.0.attn_q.bias") != NULL;
    c->qk_norm = gguf_find_tensor(f, "blk.0.attn_q_norm.weight") != NULL;
    if (c->arch == ENG_ARCH_QWEN3 && !c->qk_norm)
        return lt_err_set(err, 400,
                          "%s: tensor blk.0.attn_q_norm.weight is missing (every qwen3 layer has q/k "
                          "norms)",
                          path);
    if (c->arch != ENG_ARCH_QWEN3 && c->qk_norm)
        return lt_err_set(err, 400,
                          "%s: tensor blk.0.attn_q_norm.weight: q/k norms are not part of a %s model", path,
                          arch);
    if (read_rope(f, arch, c, err)) return -1;
    if (token_id(f, "tokenizer.ggml.bos_token_id", &c->bos_token_id, err) ||
        token_id(f, "tokenizer.ggml.eos_token_id", &c->eos_token_id, err))
        return -1;
    return check_tensors(f, c, err);
}

int eng_gguf_config_load(const char *path, eng_config *cfg, lt_err *err) {
    gguf_file *f = gguf_open(path, err);
    if (!f) {
        memset(cfg, 0, sizeof *cfg);
        return -1;
    }
    int rc = eng_gguf_config(f, cfg, err);
    gguf_close(f);
    return rc;
}

/* ---- tensor checks ------------------------------------------------------------------------------------- */

/* The shape (rows, cols; cols 0 for a vector) the config implies for an HF-named tensor; 0 when the config
 * has no such tensor. */
static int expected_shape(const eng_config *c, const char *hf, int64_t *rows, int64_t *cols) {
    int64_t C = c->hidden_size, V = c->vocab_size, F = c->intermediate_size, D = c->head_dim;
    int64_t Q = (int64_t)c->num_heads * D, K = (int64_t)c->num_kv_heads * D;
    *cols = 0;
    if (!strcmp(hf, "model.embed_tokens.weight")) return *rows = V, *cols = C, 1;
    if (!strcmp(hf, "model.norm.weight")) return *rows = C, 1;
    if (!strcmp(hf, "lm_head.weight")) return c->tie_word_embeddings ? 0 : (*rows = V, *cols = C, 1);
    const char *s;
    long l = split_layer(hf, "model.layers.", &s);
    if (l < 0 || l >= c->num_layers) return 0;
    if (!strcmp(s, "input_layernorm.weight") || !strcmp(s, "post_attention_layernorm.weight"))
        return *rows = C, 1;
    if (!strcmp(s, "self_attn.q_proj.weight")) return *rows = Q, *cols = C, 1;
    if (!strcmp(s, "self_attn.k_proj.weight") || !strcmp(s, "self_attn.v_proj.weight"))
        return *rows = K, *cols = C, 1;
    if (!strcmp(s, "self_attn.o_proj.weight")) return *rows = C, *cols = Q, 1;
    if (!strcmp(s, "self_attn.q_proj.bias")) return c->attention_bias ? (*rows = Q, 1) : 0;
    if (!strcmp(s, "self_attn.k_proj.bias") || !strcmp(s, "self_attn.v_proj.bias"))
        return c->attention_bias ? (*rows = K, 1) : 0;
    if (!strcmp(s, "self_attn.q_norm.weight") || !strcmp(s, "self_attn.k_norm.weight"))
        return c->qk_norm ? (*rows = D, 1) : 0;
    if (!strcmp(s, "mlp.gate_proj.weight") || !strcmp(s, "mlp.up_proj.weight"))
        return *rows = F, *cols = C, 1;
    if (!strcmp(s, "mlp.down_proj.weight")) return *rows = C, *cols = F, 1;
    return 0;
}

static int check_shape(const gguf_file *f, const gguf_tensor *t, int64_t rows, int64_t cols, lt_err *err) {
    int want_nd = cols ? 2 : 1;
    int64_t w0 = cols ? cols : rows, w1 = cols ? rows : 1;
    int ok = t->ne[0] == w0 && t->ne[1] == w1 && t->ne[2] == 1 && t->ne[3] == 1;
    if (ok) return 0;
    char have[96];
    int n = snprintf(have, sizeof have, "[%" PRId64, t->ne[0]);
    for (int d = 1; d < t->ndim && n < (int)sizeof have; d++)
        n += snprintf(have + n, sizeof have - (size_t)n, ", %" PRId64, t->ne[d]);
    if (n < (int)sizeof have) snprintf(have + n, sizeof have - (size_t)n, "]");
    if (want_nd == 2)
        return lt_err_set(
            err, 400,
            "%s: tensor %s has shape %s (GGUF order, fastest first); the model's hyper-parameters "
            "imply [%" PRId64 ", %" PRId64 "]",
            gguf_path(f), t->name, have, w0, w1);
    return lt_err_set(err, 400,
                      "%s: tensor %s has shape %s; the model's hyper-parameters imply a vector of %" PRId64,
                      gguf_path(f), t->name, have, w0);
}

/* Every tensor the config implies is present with its shape, and the file holds nothing else (but
 * rope_freqs.weight, read with the config). */
static int check_tensors(const gguf_file *f, const eng_config *c, lt_err *err) {
    const char *path = gguf_path(f);
    char gg[160], hf[160];
    int64_t rows, cols;
    /* presence and shape, in the engine's order */
    for (long l = -1; l < c->num_layers; l++) {
        size_t n = l < 0 ? NGLOBAL : NLAYER;
        for (size_t i = 0; i < n; i++) {
            if (l < 0)
                snprintf(hf, sizeof hf, "%s", GLOBAL_NAMES[i].hf);
            else
                snprintf(hf, sizeof hf, "model.layers.%ld.%s", l, LAYER_NAMES[i].hf);
            if (!expected_shape(c, hf, &rows, &cols)) continue;
            eng_gguf_name_for_hf(hf, gg, sizeof gg);
            const gguf_tensor *t = gguf_find_tensor(f, gg);
            if (!t)
                return lt_err_set(
                    err, 400,
                    "%s: tensor %s (HF %s) is missing; a %s model with these hyper-parameters has it", path,
                    gg, hf, c->architecture);
            if (check_shape(f, t, rows, cols, err)) return -1;
        }
    }
    /* nothing else */
    for (size_t i = 0; i < gguf_tensor_count(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        if (!strcmp(t->name, "rope_freqs.weight")) continue;
        if (!eng_gguf_name_to_hf(t->name, hf, sizeof hf))
            return lt_err_set(err, 400, "%s: tensor %s is not part of a %s model (unknown name)", path,
                              t->name, c->architecture);
        if (!expected_shape(c, hf, &rows, &cols))
            return lt_err_set(err, 400,
                              "%s: tensor %s is not part of this model (%d layers%s%s): the metadata and the "
                              "tensors disagree",
                              path, t->name, c->num_layers, c->attention_bias ? ", q/k/v bias" : ", no bias",
                              c->qk_norm ? ", q/k norm" : "");
    }
    return 0;
}

/* ---- weights ------------------------------------------------------------------------------------------- */

typedef struct load_ctx {
    const gguf_file *f;
    const eng_model *m;
    lt_err *err;
} load_ctx;

static int load_one(void *vctx, const char *name, float *data, int rows, int cols) {
    load_ctx *c = vctx;
    char gg[160];
    if (!eng_gguf_name_for_hf(name, gg, sizeof gg))
        return lt_err_set(c->err, 500, "internal: no GGUF name for tensor %s", name), 1;
    const gguf_tensor *t = gguf_find_tensor(c->f, gg);
    if (!t) return lt_err_set(c->err, 400, "%s: tensor %s is missing", gguf_path(c->f), gg), 1;
    if (check_shape(c->f, t, rows, cols, c->err)) return 1;
    int64_t rowlen = t->ne[0], nrows = t->numel / t->ne[0];
    size_t rb = gguf_row_bytes(t->type, rowlen);
    int bad = 0;
    const unsigned char *src = t->data;
#pragma omp parallel for schedule(static) reduction(| : bad) if (nrows >= 64)
    for (int64_t r = 0; r < nrows; r++)
        bad |= gguf_dequantize(t->type, src + (size_t)r * rb, data + (size_t)r * (size_t)rowlen, rowlen) != 0;
    if (bad)
        return lt_err_set(c->err, 400, "%s: tensor %s: cannot dequantize type %s", gguf_path(c->f), gg,
                          gguf_type_name(t->type) ? gguf_type_name(t->type) : "?"),
               1;
    const eng_model *m = c->m;
    if (m->cfg.arch == ENG_ARCH_LLAMA) {
        const char *s;
        if (split_layer(name, "model.layers.", &s) >= 0) {
            if (!strncmp(s, "self_attn.q_proj.", 17))
                eng_gguf_permute_qk(data, rows, cols ? cols : 1, m->H, 1);
            else if (!strncmp(s, "self_attn.k_proj.", 17))
                eng_gguf_permute_qk(data, rows, cols ? cols : 1, m->KV, 1);
        }
    }
    return 0;
}

/* The note of a widened load: "GGUF Q4_1/Q8_0 weights widened to f32 at load: 538 MB". */
static void widened_note(const gguf_file *f, eng_model *m) {
    eng_gguf_summary s;
    eng_gguf_summarize(f, &s);
    char quant[64] = "";
    size_t n = 0;
    /* the stored types but F32, most bytes first (s.types is in that order) */
    for (const char *p = s.types; *p;) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (!(len == 3 && !memcmp(p, "F32", 3)) && n + len + 2 < sizeof quant)
            n += (size_t)snprintf(quant + n, sizeof quant - n, "%s%.*s", n ? "/" : "", (int)len, p);
        p += len + (e ? 1 : 0);
    }
    double mb = (double)eng_model_base_bytes(m) / 1e6;
    if (n)
        snprintf(m->load_note, sizeof m->load_note, "GGUF %s weights widened to f32 at load: %.0f MB", quant,
                 mb);
    else
        snprintf(m->load_note, sizeof m->load_note, "GGUF F32 weights loaded: %.0f MB", mb);
}

eng_model *eng_gguf_model_from_f32(const gguf_file *f, const eng_kernels *k, lt_err *err) {
    eng_config cfg;
    if (eng_gguf_config(f, &cfg, err) != 0) return NULL;
    eng_model *m = eng_model_new(&cfg, k, err);
    if (!m) return NULL;
    load_ctx c = {f, m, err};
    if (eng_model_each_weight(m, load_one, &c) != 0) {
        eng_model_free(m);
        return NULL;
    }
    widened_note(f, m);
    return m;
}

/* Q/K rows of a llama-architecture file: HF row h*hd + j*hd/2 + i is GGUF row h*hd + 2i + j. */
static void permute_rows(const unsigned char *src, unsigned char *dst, size_t rb, int rows, int n_head) {
    const int hd = rows / n_head, h2 = hd / 2;
    for (int h = 0; h < n_head; h++)
        for (int j = 0; j < 2; j++)
            for (int i = 0; i < h2; i++)
                memcpy(dst + ((size_t)h * hd + (size_t)j * h2 + i) * rb,
                       src + ((size_t)h * hd + 2 * i + j) * rb, rb);
}

typedef struct stored_ctx {
    load_ctx lc;
    eng_model *m;
    size_t woff; /* next free byte of m->wstore */
} stored_ctx;

/* Vectors are widened into the f32 base (load_one); matrices are pointed at the file's bytes, except the
 * Q/K matrices of llama files, whose rows are copied un-permuted into wstore. */
static int load_stored_one(void *vctx, const char *name, float *data, int rows, int cols) {
    stored_ctx *c = vctx;
    if (data || !cols) return load_one(&c->lc, name, data, rows, cols);
    eng_model *m = c->m;
    eng_wmat *W = eng_model_wmat_of(m, name);
    char gg[160];
    if (!W || !eng_gguf_name_for_hf(name, gg, sizeof gg))
        return lt_err_set(c->lc.err, 500, "internal: no GGUF name for tensor %s", name), 1;
    const gguf_file *f = c->lc.f;
    const gguf_tensor *t = gguf_find_tensor(f, gg);
    if (!t) return lt_err_set(c->lc.err, 400, "%s: tensor %s is missing", gguf_path(f), gg), 1;
    if (check_shape(f, t, rows, cols, c->lc.err)) return 1;
    if (!eng_wmat_type_ok(t->type) || eng_wmat_init(W, t->type, rows, cols, t->data) != 0)
        return lt_err_set(c->lc.err, 400, "%s: tensor %s: type %s cannot be used as stored", gguf_path(f), gg,
                          gguf_type_name(t->type) ? gguf_type_name(t->type) : "?"),
               1;
    const char *s;
    int nh = 0;
    if (m->cfg.arch == ENG_ARCH_LLAMA && split_layer(name, "model.layers.", &s) >= 0)
        nh = !strncmp(s, "self_attn.q_proj.", 17) ? m->H : !strncmp(s, "self_attn.k_proj.", 17) ? m->KV : 0;
    if (nh) {
        unsigned char *dst = (unsigned char *)m->wstore + c->woff;
        permute_rows(t->data, dst, W->row_bytes, rows, nh);
        W->data = dst;
        c->woff += (eng_wmat_bytes(W) + 63) & ~(size_t)63;
    }
    m->n_wbytes += eng_wmat_bytes(W);
    return 0;
}

/* 1 when some matrix of the file is stored in another type than F32. */
static int has_non_f32_matrix(const gguf_file *f) {
    for (size_t i = 0; i < gguf_tensor_count(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        if (t->ndim == 2 && t->type != GGUF_F32 && strcmp(t->name, "rope_freqs.weight")) return 1;
    }
    return 0;
}

eng_model *eng_gguf_model_from(const gguf_file *f, const eng_kernels *k, lt_err *err) {
    if (!has_non_f32_matrix(f)) return eng_gguf_model_from_f32(f, k, err);
    eng_config cfg;
    if (eng_gguf_config(f, &cfg, err) != 0) return NULL;
    eng_model *m = eng_model_new_stored(&cfg, k, -1, err);
    if (!m) return NULL;
    size_t need = 0; /* the Q/K matrices of a llama file are reordered into wstore */
    if (cfg.arch == ENG_ARCH_LLAMA)
        for (size_t i = 0; i < gguf_tensor_count(f); i++) {
            const gguf_tensor *t = gguf_tensor_at(f, i);
            size_t nl = strlen(t->name);
            if (nl > 14 && (!strcmp(t->name + nl - 14, ".attn_q.weight") ||
                            !strcmp(t->name + nl - 14, ".attn_k.weight")))
                need += (t->nbytes + 63) & ~(size_t)63;
        }
    if (need && !(m->wstore = aligned_alloc(64, need))) {
        eng_model_free(m);
        lt_err_set(err, 500, "out of memory for the reordered Q/K rows (%zu bytes)", need);
        return NULL;
    }
    m->wstore_n = need;
    stored_ctx c = {{f, m, err}, m, 0};
    if (eng_model_each_weight_unset(m, load_stored_one, &c) != 0) {
        eng_model_free(m);
        return NULL;
    }
    if (cfg.tie_word_embeddings) m->Whead = m->Wte;
    char res[120];
    eng_model_resident(m, res, sizeof res);
    snprintf(m->load_note, sizeof m->load_note, "GGUF weights kept as stored: %s", res);
    return m;
}

eng_model *eng_gguf_model_load(const char *path, const eng_kernels *k, lt_err *err) {
    gguf_file *f = gguf_open(path, err);
    if (!f) return NULL;
    eng_model *m = eng_gguf_model_from(f, k, err);
    if (m && m->wtype < 0) {
        m->wfile = f, m->wfile_kind = 1; /* the model reads the mapping: it owns the file now */
        return m;
    }
    gguf_close(f);
    return m;
}

eng_model *eng_gguf_model_load_f32(const char *path, const eng_kernels *k, lt_err *err) {
    gguf_file *f = gguf_open(path, err);
    if (!f) return NULL;
    eng_model *m = eng_gguf_model_from_f32(f, k, err);
    gguf_close(f);
    return m;
}

/* ---- summary ------------------------------------------------------------------------------------------- */

const char *eng_gguf_ftype_name(int ft) {
    static const struct {
        int id;
        const char *name;
    } T[] = {{0, "F32"},     {1, "F16"},     {2, "Q4_0"},    {3, "Q4_1"},    {7, "Q8_0"},    {8, "Q5_0"},
             {9, "Q5_1"},    {10, "Q2_K"},   {11, "Q3_K_S"}, {12, "Q3_K_M"}, {13, "Q3_K_L"}, {14, "Q4_K_S"},
             {15, "Q4_K_M"}, {16, "Q5_K_S"}, {17, "Q5_K_M"}, {18, "Q6_K"},   {32, "BF16"}};
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++)
        if (T[i].id == ft) return T[i].name;
    return "unknown";
}

void eng_gguf_summarize(const gguf_file *f, eng_gguf_summary *s) {
    memset(s, 0, sizeof *s);
    int64_t ft;
    lt_err e;
    s->file_type =
        gguf_get_int(f, "general.file_type", &ft, &e) == 0 && ft >= 0 && ft < INT_MAX ? (int)ft : -1;
    s->file_type_name = s->file_type >= 0 ? eng_gguf_ftype_name(s->file_type) : "unknown";
    s->n_tensors = (int)gguf_tensor_count(f);
    for (size_t i = 0; i < gguf_tensor_count(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        if ((int)t->type >= 0 && (int)t->type < 32) {
            s->count[t->type]++;
            s->bytes[t->type] += t->nbytes;
        }
        s->file_bytes += t->nbytes;
        s->f32_bytes += (uint64_t)t->numel * 4;
    }
    int done[32] = {0};
    size_t n = 0;
    for (;;) {
        int best = -1;
        for (int ty = 0; ty < 32; ty++)
            if (s->count[ty] && !done[ty] && (best < 0 || s->bytes[ty] > s->bytes[best])) best = ty;
        if (best < 0) break;
        done[best] = 1;
        const char *nm = gguf_type_name(best);
        if (nm && n + strlen(nm) + 2 < sizeof s->types)
            n += (size_t)snprintf(s->types + n, sizeof s->types - n, "%s%s", n ? "/" : "", nm);
    }
}
