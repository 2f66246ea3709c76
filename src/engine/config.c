/* config.c: HF config.json -> eng_config, strictly.
 *
 * The four supported architectures share one block shape; what differs is read into flags:
 *  - Qwen2 always has q/k/v biases (transformers ignores `attention_bias` for it), Llama and Qwen3 read
 *    `attention_bias` (default false), Mistral never has them.
 *  - Qwen3 has per-head q/k RMSNorm and usually an explicit `head_dim` with heads * head_dim != hidden_size;
 *    when absent it is 128 (Qwen3Config's default), for the others hidden_size / num_attention_heads.
 *  - RoPE comes either from top-level `rope_theta` + `rope_scaling` (transformers 4.x) or from
 *    `rope_parameters` (transformers 5.x, which drops the top-level keys); both are read, the newer one wins.
 *    Only the default and "llama3" rope types are implemented; any other type is an error, never a silent
 *    fallback to unscaled RoPE.
 * Defaults for absent keys follow the transformers config classes of each architecture. Every error names the
 * file and the key and says what a valid value looks like. Things the engine cannot compute (MLP biases,
 * non-SiLU activations, quantized checkpoints) are rejected here so a model fails at load, not mid-training.
 */
#include "engine/config.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf_model.h"
#include "util/util.h"

typedef struct arch_info {
    const char *architecture, *model_type, *family;
    eng_arch arch;
    int default_max_pos;
} arch_info;

static const arch_info ARCHS[] = {
    {"LlamaForCausalLM", "llama", "llama", ENG_ARCH_LLAMA, 2048},
    {"Qwen2ForCausalLM", "qwen2", "qwen", ENG_ARCH_QWEN2, 32768},
    {"Qwen3ForCausalLM", "qwen3", "qwen", ENG_ARCH_QWEN3, 32768},
    {"MistralForCausalLM", "mistral", "mistral", ENG_ARCH_MISTRAL, 131072},
};
#define NARCHS (sizeof ARCHS / sizeof ARCHS[0])

/* Reads an optional integer key. Returns 0 (absent or null: *out = def), 1 (present), -1 (error). */
static int get_int(json_t *obj, const char *key, const char *name, int def, int *out, lt_err *err) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_integer(v)) return lt_err_set(err, 400, "%s: key \"%s\" must be an integer", name, key);
    json_int_t x = json_integer_value(v);
    if (x < INT_MIN || x > INT_MAX) return lt_err_set(err, 400, "%s: key \"%s\" is out of range", name, key);
    *out = (int)x;
    return 1;
}

/* Required positive integer. */
static int get_pos(json_t *obj, const char *key, const char *name, int *out, lt_err *err) {
    int rc = get_int(obj, key, name, 0, out, err);
    if (rc < 0) return -1;
    if (rc == 0)
        return lt_err_set(err, 400, "%s: key \"%s\" is missing (a positive integer is required)", name, key);
    if (*out <= 0)
        return lt_err_set(err, 400, "%s: key \"%s\" is %d; it must be a positive integer", name, key, *out);
    return 0;
}

/* Optional number (integer or real). Returns 0 absent, 1 present, -1 error. */
static int get_num(json_t *obj, const char *key, const char *name, double def, double *out, lt_err *err) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_number(v)) return lt_err_set(err, 400, "%s: key \"%s\" must be a number", name, key);
    *out = json_number_value(v);
    if (!isfinite(*out)) return lt_err_set(err, 400, "%s: key \"%s\" must be finite", name, key);
    return 1;
}

static int get_bool(json_t *obj, const char *key, const char *name, int def, int *out, lt_err *err) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v)) return lt_err_set(err, 400, "%s: key \"%s\" must be true or false", name, key);
    *out = json_is_true(v);
    return 1;
}

/* Token id: integer, list of integers (first taken), or absent/null (-1). */
static int get_token_id(json_t *obj, const char *key, const char *name, int *out, lt_err *err) {
    json_t *v = json_object_get(obj, key);
    *out = -1;
    if (!v || json_is_null(v)) return 0;
    if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > INT_MAX)
                return lt_err_set(err, 400, "%s: key \"%s\"[%zu] must be a non-negative integer", name, key,
                                  i);
            if (i == 0) *out = (int)json_integer_value(e);
        }
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT_MAX)
        return lt_err_set(err, 400, "%s: key \"%s\" must be a non-negative integer or a list of them", name,
                          key);
    *out = (int)json_integer_value(v);
    return 0;
}

/* Reads the rope settings of one object: either the top-level config (rope_theta + rope_scaling) or a
 * rope_parameters object (prefix names the key in errors). */
static int parse_rope_obj(json_t *obj, const char *prefix, const char *name, eng_config *cfg, lt_err *err) {
    json_t *t = json_object_get(obj, "rope_type");
    const char *tkey = "rope_type";
    if (!t || json_is_null(t)) {
        t = json_object_get(obj, "type");
        tkey = "type";
    }
    const char *type = "default";
    if (t && !json_is_null(t)) {
        if (!json_is_string(t))
            return lt_err_set(err, 400, "%s: key \"%s.%s\" must be a string", name, prefix, tkey);
        type = json_string_value(t);
    }
    if (strcmp(type, "default") == 0) {
        cfg->rope_type = ENG_ROPE_DEFAULT;
        return 0;
    }
    if (strcmp(type, "llama3") != 0)
        return lt_err_set(
            err, 400, "%s: key \"%s.%s\" is \"%.40s\"; supported rope types are \"default\" and \"llama3\"",
            name, prefix, tkey, type);
    cfg->rope_type = ENG_ROPE_LLAMA3;
    static const char *keys[] = {"factor", "low_freq_factor", "high_freq_factor"};
    float *dst[] = {&cfg->rope_factor, &cfg->rope_low_freq_factor, &cfg->rope_high_freq_factor};
    for (int i = 0; i < 3; i++) {
        double x;
        int rc = get_num(obj, keys[i], name, 0, &x, err);
        if (rc < 0) {
            lt_err_set(err, 400, "%s: key \"%s.%s\" must be a number", name, prefix, keys[i]);
            return -1;
        }
        if (rc == 0)
            return lt_err_set(err, 400, "%s: key \"%s.%s\" is missing (required for rope type llama3)", name,
                              prefix, keys[i]);
        if (x <= 0) return lt_err_set(err, 400, "%s: key \"%s.%s\" must be positive", name, prefix, keys[i]);
        *dst[i] = (float)x;
    }
    if (cfg->rope_high_freq_factor <= cfg->rope_low_freq_factor)
        return lt_err_set(err, 400, "%s: key \"%s.high_freq_factor\" must be greater than low_freq_factor",
                          name, prefix);
    int omp;
    int rc = get_int(obj, "original_max_position_embeddings", name, 0, &omp, err);
    if (rc < 0) return -1;
    if (rc == 0 || omp <= 0)
        return lt_err_set(
            err, 400,
            "%s: key \"%s.original_max_position_embeddings\" must be a positive integer (required for "
            "rope type llama3)",
            name, prefix);
    cfg->rope_original_max_pos = omp;
    return 0;
}

static int parse_root(json_t *root, const char *name, eng_config *cfg, lt_err *err) {
    memset(cfg, 0, sizeof *cfg);
    if (!json_is_object(root)) return lt_err_set(err, 400, "%s: not a JSON object", name);

    /* architecture: "architectures"[0], else model_type */
    const arch_info *ai = NULL;
    json_t *archs = json_object_get(root, "architectures");
    json_t *mt = json_object_get(root, "model_type");
    if (archs && !json_is_null(archs)) {
        if (!json_is_array(archs) || json_array_size(archs) == 0 || !json_is_string(json_array_get(archs, 0)))
            return lt_err_set(err, 400, "%s: key \"architectures\" must be a non-empty list of strings",
                              name);
        const char *a = json_string_value(json_array_get(archs, 0));
        for (size_t i = 0; i < NARCHS; i++)
            if (strcmp(a, ARCHS[i].architecture) == 0) ai = &ARCHS[i];
        if (!ai)
            return lt_err_set(err, 400,
                              "%s: key \"architectures\" is \"%.60s\"; supported: LlamaForCausalLM, "
                              "Qwen2ForCausalLM, Qwen3ForCausalLM, MistralForCausalLM",
                              name, a);
    } else if (json_is_string(mt)) {
        for (size_t i = 0; i < NARCHS; i++)
            if (strcmp(json_string_value(mt), ARCHS[i].model_type) == 0) ai = &ARCHS[i];
        if (!ai)
            return lt_err_set(err, 400,
                              "%s: key \"model_type\" is \"%.60s\"; supported: llama, qwen2, qwen3, mistral",
                              name, json_string_value(mt));
    } else {
        return lt_err_set(err, 400, "%s: key \"architectures\" is missing (e.g. [\"LlamaForCausalLM\"])",
                          name);
    }
    cfg->arch = ai->arch;
    snprintf(cfg->architecture, sizeof cfg->architecture, "%s", ai->architecture);
    snprintf(cfg->family, sizeof cfg->family, "%s", ai->family);

    if (json_object_get(root, "quantization_config"))
        return lt_err_set(err, 400,
                          "%s: key \"quantization_config\": quantized checkpoints are not supported", name);
    json_t *act = json_object_get(root, "hidden_act");
    if (act && !json_is_null(act) && (!json_is_string(act) || strcmp(json_string_value(act), "silu") != 0))
        return lt_err_set(err, 400, "%s: key \"hidden_act\" must be \"silu\"", name);

    if (get_pos(root, "vocab_size", name, &cfg->vocab_size, err) ||
        get_pos(root, "hidden_size", name, &cfg->hidden_size, err) ||
        get_pos(root, "intermediate_size", name, &cfg->intermediate_size, err) ||
        get_pos(root, "num_hidden_layers", name, &cfg->num_layers, err) ||
        get_pos(root, "num_attention_heads", name, &cfg->num_heads, err))
        return -1;
    int rc = get_int(root, "num_key_value_heads", name, cfg->num_heads, &cfg->num_kv_heads, err);
    if (rc < 0) return -1;
    if (cfg->num_kv_heads <= 0)
        return lt_err_set(err, 400, "%s: key \"num_key_value_heads\" is %d; it must be a positive integer",
                          name, cfg->num_kv_heads);
    if (cfg->num_heads % cfg->num_kv_heads != 0)
        return lt_err_set(err, 400,
                          "%s: key \"num_key_value_heads\" (%d) must divide \"num_attention_heads\" (%d)",
                          name, cfg->num_kv_heads, cfg->num_heads);
    rc = get_int(root, "head_dim", name, 0, &cfg->head_dim, err);
    if (rc < 0) return -1;
    if (rc == 1 && cfg->head_dim <= 0)
        return lt_err_set(err, 400, "%s: key \"head_dim\" is %d; it must be a positive integer", name,
                          cfg->head_dim);
    if (rc == 0 && cfg->arch == ENG_ARCH_QWEN3) {
        cfg->head_dim = 128; /* Qwen3Config's default, not hidden_size / heads */
    } else if (rc == 0) {
        if (cfg->hidden_size % cfg->num_heads != 0)
            return lt_err_set(err, 400,
                              "%s: key \"num_attention_heads\" (%d) must divide \"hidden_size\" (%d) when "
                              "\"head_dim\" is absent",
                              name, cfg->num_heads, cfg->hidden_size);
        cfg->head_dim = cfg->hidden_size / cfg->num_heads;
    }
    if (cfg->head_dim % 2 != 0)
        return lt_err_set(err, 400, "%s: key \"head_dim\" (%d) must be even for rotary embeddings", name,
                          cfg->head_dim);
    if ((long long)cfg->num_heads * cfg->head_dim > INT_MAX / 2)
        return lt_err_set(err, 400, "%s: key \"num_attention_heads\" * \"head_dim\" is too large", name);

    rc = get_int(root, "max_position_embeddings", name, ai->default_max_pos, &cfg->max_position_embeddings,
                 err);
    if (rc < 0) return -1;
    if (cfg->max_position_embeddings <= 0)
        return lt_err_set(err, 400, "%s: key \"max_position_embeddings\" must be a positive integer", name);

    double eps;
    if (get_num(root, "rms_norm_eps", name, 1e-6, &eps, err) < 0) return -1;
    if (eps <= 0 || eps >= 1)
        return lt_err_set(err, 400, "%s: key \"rms_norm_eps\" must be between 0 and 1 (e.g. 1e-6)", name);
    cfg->rms_norm_eps = (float)eps;

    if (get_bool(root, "tie_word_embeddings", name, 0, &cfg->tie_word_embeddings, err) < 0) return -1;
    int ab = 0, mlpb = 0;
    if (get_bool(root, "attention_bias", name, 0, &ab, err) < 0) return -1;
    if (get_bool(root, "mlp_bias", name, 0, &mlpb, err) < 0) return -1;
    if (mlpb)
        return lt_err_set(err, 400, "%s: key \"mlp_bias\": MLP biases are not supported (must be false)",
                          name);
    switch (cfg->arch) {
    case ENG_ARCH_QWEN2:
        cfg->attention_bias = 1;
        break;
    case ENG_ARCH_MISTRAL:
        cfg->attention_bias = 0;
        break;
    default:
        cfg->attention_bias = ab;
        break;
    }
    cfg->qk_norm = cfg->arch == ENG_ARCH_QWEN3;

    /* rope */
    double theta;
    if (get_num(root, "rope_theta", name, 10000.0, &theta, err) < 0) return -1;
    cfg->rope_type = ENG_ROPE_DEFAULT;
    json_t *rp = json_object_get(root, "rope_parameters");
    json_t *rs = json_object_get(root, "rope_scaling");
    if (rp && !json_is_null(rp)) {
        if (!json_is_object(rp))
            return lt_err_set(err, 400, "%s: key \"rope_parameters\" must be an object", name);
        if (get_num(rp, "rope_theta", name, theta, &theta, err) < 0) {
            lt_err_set(err, 400, "%s: key \"rope_parameters.rope_theta\" must be a number", name);
            return -1;
        }
        if (parse_rope_obj(rp, "rope_parameters", name, cfg, err) != 0) return -1;
    } else if (rs && !json_is_null(rs)) {
        if (!json_is_object(rs))
            return lt_err_set(err, 400, "%s: key \"rope_scaling\" must be an object or null", name);
        if (parse_rope_obj(rs, "rope_scaling", name, cfg, err) != 0) return -1;
    }
    if (!(theta > 0)) return lt_err_set(err, 400, "%s: key \"rope_theta\" must be positive", name);
    cfg->rope_theta = (float)theta;

    if (get_token_id(root, "bos_token_id", name, &cfg->bos_token_id, err) < 0) return -1;
    if (get_token_id(root, "eos_token_id", name, &cfg->eos_token_id, err) < 0) return -1;
    json_t *dt = json_object_get(root, "torch_dtype");
    if (!dt || json_is_null(dt)) dt = json_object_get(root, "dtype");
    if (dt && json_is_string(dt))
        snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "%s", json_string_value(dt));
    return 0;
}

int eng_config_parse(const char *json, size_t len, const char *name, eng_config *cfg, lt_err *err) {
    if (!name) name = "config.json";
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        memset(cfg, 0, sizeof *cfg);
        return lt_err_set(err, 400, "%s: line %d column %d: %s", name, jerr.line, jerr.column, jerr.text);
    }
    int rc = parse_root(root, name, cfg, err);
    json_decref(root);
    return rc;
}

int eng_config_load(const char *dir, eng_config *cfg, lt_err *err) {
    if (eng_path_is_gguf(dir)) return eng_gguf_config_load(dir, cfg, err);
    char *path = lt_path_join(dir, "config.json");
    size_t len;
    char *text = lt_read_file(path, &len, err);
    if (!text) {
        memset(cfg, 0, sizeof *cfg);
        free(path);
        return -1;
    }
    int rc = eng_config_parse(text, len, path, cfg, err);
    free(text);
    free(path);
    return rc;
}

long long eng_config_num_params(const eng_config *c) {
    long long C = c->hidden_size, V = c->vocab_size, I = c->intermediate_size, D = c->head_dim;
    long long Q = (long long)c->num_heads * D, K = (long long)c->num_kv_heads * D;
    long long layer = 2 * C               /* input / post-attention norms */
                      + C * Q + 2 * C * K /* q, k, v */
                      + Q * C             /* o */
                      + 3 * C * I;        /* gate, up, down */
    if (c->attention_bias) layer += Q + 2 * K;
    if (c->qk_norm) layer += 2 * D;
    return V * C * (c->tie_word_embeddings ? 1 : 2) + c->num_layers * layer + C;
}
