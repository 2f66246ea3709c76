/* gguf_export.c: `lathe model convert` both ways (see gguf_export.h for what is written).
 *
 * Both directions go through the engine's own loaders, so a converted model is by construction the model
 * lathe computes with: GGUF -> HF loads the GGUF (dequantized, Q/K permutation undone) and writes it with
 * the merged-export writer; model -> GGUF loads SRC, merges the adapter, writes the merged f32 weights to a
 * temp safetensors next to DST (eng_export_merged: no second merge implementation), maps that file's
 * tensors onto llama.cpp names, re-applies the Q/K permutation for the llama architecture and quantizes.
 *
 * Tokenizer metadata for a GGUF target: a GGUF source's tokenizer.* keys are copied as they are; for a
 * directory they are built from tokenizer.json (vocab + added tokens in id order; token type 1 normal,
 * 3 control for special added tokens, 4 user-defined for the others; merges as "a b"), the pre-tokenizer
 * named after what the pre_tokenizer section does (Digits(individual) + ByteLevel: smollm; ByteLevel with
 * its own regex: gpt2; a Split whose regex takes digits one at a time: qwen2, up to three: llama-bpe;
 * anything else is refused, naming it), and bos / eos / add_bos / chat template from tokenizer_config.json
 * (ids through the vocab) or config.json. */
#include "engine/gguf_export.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/gguf_model.h"
#include "engine/model.h"
#include "engine/ops.h"
#include "engine/peft.h"
#include "engine/tokenizer_internal.h"
#include "util/util.h"

const char *eng_gguf_arch_name(eng_arch arch) {
    switch (arch) {
    case ENG_ARCH_QWEN2:
        return "qwen2";
    case ENG_ARCH_QWEN3:
        return "qwen3";
    default:
        return "llama";
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* HF config files */

static const char *hf_arch_name(eng_arch a) {
    switch (a) {
    case ENG_ARCH_QWEN2:
        return "Qwen2ForCausalLM";
    case ENG_ARCH_QWEN3:
        return "Qwen3ForCausalLM";
    case ENG_ARCH_MISTRAL:
        return "MistralForCausalLM";
    default:
        return "LlamaForCausalLM";
    }
}

static const char *hf_model_type(eng_arch a) {
    switch (a) {
    case ENG_ARCH_QWEN2:
        return "qwen2";
    case ENG_ARCH_QWEN3:
        return "qwen3";
    case ENG_ARCH_MISTRAL:
        return "mistral";
    default:
        return "llama";
    }
}

static void dump_json(json_t *o, strbuf *out) {
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    sb_puts(out, s);
    sb_putc(out, '\n');
    free(s);
}

/* The shortest decimal that reads back as the same float (config.json says 1e-05, not 9.99999974e-06). */
static json_t *json_float(float v) {
    char buf[32];
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v) break;
    }
    return json_real(strtod(buf, NULL));
}

void eng_hf_config_json(const eng_config *c, const char *torch_dtype, strbuf *out) {
    json_t *o = json_object();
    json_object_set_new(o, "architectures", json_pack("[s]", hf_arch_name(c->arch)));
    json_object_set_new(o, "model_type", json_string(hf_model_type(c->arch)));
    json_object_set_new(o, "vocab_size", json_integer(c->vocab_size));
    json_object_set_new(o, "hidden_size", json_integer(c->hidden_size));
    json_object_set_new(o, "intermediate_size", json_integer(c->intermediate_size));
    json_object_set_new(o, "num_hidden_layers", json_integer(c->num_layers));
    json_object_set_new(o, "num_attention_heads", json_integer(c->num_heads));
    json_object_set_new(o, "num_key_value_heads", json_integer(c->num_kv_heads));
    json_object_set_new(o, "head_dim", json_integer(c->head_dim));
    json_object_set_new(o, "hidden_act", json_string("silu"));
    json_object_set_new(o, "max_position_embeddings", json_integer(c->max_position_embeddings));
    json_object_set_new(o, "rms_norm_eps", json_float(c->rms_norm_eps));
    json_object_set_new(o, "rope_theta", json_float(c->rope_theta));
    if (c->rope_type == ENG_ROPE_LLAMA3)
        json_object_set_new(o, "rope_scaling",
                            json_pack("{s:s, s:f, s:f, s:f, s:i}", "rope_type", "llama3", "factor",
                                      (double)c->rope_factor, "low_freq_factor",
                                      (double)c->rope_low_freq_factor, "high_freq_factor",
                                      (double)c->rope_high_freq_factor, "original_max_position_embeddings",
                                      c->rope_original_max_pos));
    else
        json_object_set_new(o, "rope_scaling", json_null());
    json_object_set_new(o, "tie_word_embeddings", json_boolean(c->tie_word_embeddings));
    if (c->arch == ENG_ARCH_LLAMA || c->arch == ENG_ARCH_MISTRAL || c->arch == ENG_ARCH_QWEN3)
        json_object_set_new(o, "attention_bias", json_boolean(c->attention_bias));
    if (c->arch == ENG_ARCH_LLAMA) json_object_set_new(o, "mlp_bias", json_false());
    if (c->arch != ENG_ARCH_LLAMA) json_object_set_new(o, "sliding_window", json_null());
    if (c->arch == ENG_ARCH_QWEN2 || c->arch == ENG_ARCH_QWEN3)
        json_object_set_new(o, "use_sliding_window", json_false());
    json_object_set_new(o, "attention_dropout", json_real(0.0));
    if (c->bos_token_id >= 0) json_object_set_new(o, "bos_token_id", json_integer(c->bos_token_id));
    if (c->eos_token_id >= 0) json_object_set_new(o, "eos_token_id", json_integer(c->eos_token_id));
    json_object_set_new(o, "torch_dtype", json_string(torch_dtype));
    json_object_set_new(o, "use_cache", json_true());
    dump_json(o, out);
    json_decref(o);
}

static int write_text(const char *dir, const char *file, const strbuf *sb, lt_err *err) {
    char *p = lt_path_join(dir, file);
    int rc = lt_write_file_atomic(p, sb->buf ? sb->buf : "", sb->len, 0644, err);
    free(p);
    return rc;
}

/* Token i of tokenizer.ggml.tokens as a new JSON string, or JSON null. */
static json_t *token_json(const gguf_file *f, int64_t id) {
    const gguf_kv *kv = gguf_find_kv(f, "tokenizer.ggml.tokens");
    const char *s;
    size_t n;
    if (id < 0 || gguf_arr_str(kv, (uint64_t)id, &s, &n)) return json_null();
    return json_stringn(s, n);
}

static int hf_tokenizer_files(const gguf_file *f, const char *dir, const eng_config *c, lt_err *err) {
    strbuf sb = STRBUF_INIT;
    if (eng_tok_gguf_json(f, &sb, err) || write_text(dir, "tokenizer.json", &sb, err)) {
        sb_free(&sb);
        return -1;
    }
    json_t *tc = json_object();
    int add_bos = 0;
    gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &add_bos, NULL);
    json_object_set_new(tc, "add_bos_token", json_boolean(add_bos));
    json_object_set_new(tc, "add_eos_token", json_false());
    json_object_set_new(tc, "add_prefix_space", json_false());
    json_object_set_new(tc, "bos_token", token_json(f, c->bos_token_id));
    json_object_set_new(tc, "eos_token", token_json(f, c->eos_token_id));
    int64_t pad = -1, unk = -1;
    gguf_get_int(f, "tokenizer.ggml.padding_token_id", &pad, NULL);
    gguf_get_int(f, "tokenizer.ggml.unknown_token_id", &unk, NULL);
    json_object_set_new(tc, "pad_token", token_json(f, pad >= 0 ? pad : c->eos_token_id));
    json_object_set_new(tc, "unk_token", token_json(f, unk));
    json_object_set_new(tc, "clean_up_tokenization_spaces", json_false());
    json_object_set_new(tc, "model_max_length", json_integer(c->max_position_embeddings));
    json_object_set_new(tc, "tokenizer_class", json_string("PreTrainedTokenizerFast"));
    const char *tpl;
    size_t tl;
    if (gguf_get_str(f, "tokenizer.chat_template", &tpl, &tl, NULL) == 0)
        json_object_set_new(tc, "chat_template", json_stringn(tpl, tl));
    sb_reset(&sb);
    dump_json(tc, &sb);
    json_decref(tc);
    int rc = write_text(dir, "tokenizer_config.json", &sb, err);
    json_t *gc = json_object();
    json_object_set_new(gc, "_from_model_config", json_true());
    if (c->bos_token_id >= 0) json_object_set_new(gc, "bos_token_id", json_integer(c->bos_token_id));
    if (c->eos_token_id >= 0) json_object_set_new(gc, "eos_token_id", json_integer(c->eos_token_id));
    sb_reset(&sb);
    dump_json(gc, &sb);
    json_decref(gc);
    if (!rc) rc = write_text(dir, "generation_config.json", &sb, err);
    sb_free(&sb);
    return rc;
}

static const char *torch_dtype_name(st_dtype d) {
    return d == ST_BF16 ? "bfloat16" : d == ST_F16 ? "float16" : "float32";
}

int eng_convert_gguf_to_hf(const char *src, const char *dir, st_dtype dtype, lt_err *err) {
    gguf_file *f = gguf_open(src, err);
    if (!f) return -1;
    eng_config cfg;
    int rc = -1;
    eng_model *m = NULL;
    if (eng_gguf_config(f, &cfg, err) || lt_mkdir_p(dir, 0755, err)) goto out;
    if (!(m = eng_gguf_model_from(f, eng_kernels_cpu(), err))) goto out;
    char *st = lt_path_join(dir, "model.safetensors");
    rc = eng_export_merged(m, st, dtype, err);
    free(st);
    if (rc) goto out;
    strbuf sb = STRBUF_INIT;
    eng_hf_config_json(&cfg, torch_dtype_name(dtype), &sb);
    rc = write_text(dir, "config.json", &sb, err);
    sb_free(&sb);
    if (!rc) rc = hf_tokenizer_files(f, dir, &cfg, err);
out:
    eng_model_free(m);
    gguf_close(f);
    return rc ? -1 : 0;
}

/* ------------------------------------------------------------------------------------------------------ */
/* GGUF target: metadata */

static int file_type_of(gguf_type t) {
    switch (t) {
    case GGUF_F16:
        return 1;
    case GGUF_Q8_0:
        return 7;
    case GGUF_BF16:
        return 32;
    default:
        return 0;
    }
}

static void set_arch_keys(gguf_writer *w, const eng_config *c, const char *name, gguf_type dtype) {
    const char *a = eng_gguf_arch_name(c->arch);
    char k[96];
    gguf_writer_set_str(w, "general.architecture", a);
    gguf_writer_set_str(w, "general.name", name);
    gguf_writer_set_u32(w, "general.file_type", (uint32_t)file_type_of(dtype));
    gguf_writer_set_u32(w, "general.quantization_version", 2);
#define KEY(suffix) (snprintf(k, sizeof k, "%s.%s", a, suffix), k)
    gguf_writer_set_u32(w, KEY("vocab_size"), (uint32_t)c->vocab_size);
    gguf_writer_set_u32(w, KEY("context_length"), (uint32_t)c->max_position_embeddings);
    gguf_writer_set_u32(w, KEY("embedding_length"), (uint32_t)c->hidden_size);
    gguf_writer_set_u32(w, KEY("block_count"), (uint32_t)c->num_layers);
    gguf_writer_set_u32(w, KEY("feed_forward_length"), (uint32_t)c->intermediate_size);
    gguf_writer_set_u32(w, KEY("attention.head_count"), (uint32_t)c->num_heads);
    gguf_writer_set_u32(w, KEY("attention.head_count_kv"), (uint32_t)c->num_kv_heads);
    gguf_writer_set_u32(w, KEY("attention.key_length"), (uint32_t)c->head_dim);
    gguf_writer_set_u32(w, KEY("attention.value_length"), (uint32_t)c->head_dim);
    gguf_writer_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), c->rms_norm_eps);
    gguf_writer_set_f32(w, KEY("rope.freq_base"), c->rope_theta);
    gguf_writer_set_u32(w, KEY("rope.dimension_count"), (uint32_t)c->head_dim);
#undef KEY
}

/* Copies one metadata entry into the writer (integers as u32 / i32, arrays of integers as i32). */
static void copy_kv(gguf_writer *w, const gguf_kv *kv) {
    if (kv->type == GGUF_V_STR) {
        char *s = lt_strndup(kv->data, kv->len);
        gguf_writer_set_str(w, kv->key, s);
        free(s);
    } else if (kv->type == GGUF_V_BOOL) {
        gguf_writer_set_bool(w, kv->key, *(const uint8_t *)kv->data != 0);
    } else if (kv->type == GGUF_V_F32 || kv->type == GGUF_V_F64) {
        double d = 0;
        float v;
        if (kv->type == GGUF_V_F32)
            memcpy(&v, kv->data, 4);
        else
            memcpy(&d, kv->data, 8), v = (float)d;
        gguf_writer_set_f32(w, kv->key, v);
    } else if (kv->type != GGUF_V_ARR) {
        int64_t v = 0;
        gguf_kv one = *kv; /* a scalar integer read as a one-element array */
        one.type = GGUF_V_ARR;
        one.arr_type = kv->type;
        one.n = 1;
        if (gguf_arr_int(&one, 0, &v) == 0) {
            if (v >= 0 && v <= UINT32_MAX)
                gguf_writer_set_u32(w, kv->key, (uint32_t)v);
            else
                gguf_writer_set_i32(w, kv->key, (int32_t)v);
        }
    } else if (kv->arr_type == GGUF_V_STR) {
        const char **v = malloc((kv->n ? kv->n : 1) * sizeof *v);
        size_t *lens = malloc((kv->n ? kv->n : 1) * sizeof *lens);
        if (!v || !lens) abort();
        for (uint64_t i = 0; i < kv->n; i++)
            gguf_arr_str(kv, i, &v[i], &lens[i]);
        gguf_writer_set_arr_str(w, kv->key, v, lens, kv->n);
        free(v);
        free(lens);
    } else if (kv->arr_type == GGUF_V_F32 || kv->arr_type == GGUF_V_F64) {
        float *v = malloc((kv->n ? kv->n : 1) * sizeof *v);
        if (!v) abort();
        for (uint64_t i = 0; i < kv->n; i++) {
            double d = 0;
            gguf_arr_float(kv, i, &d);
            v[i] = (float)d;
        }
        gguf_writer_set_arr_f32(w, kv->key, v, kv->n);
        free(v);
    } else {
        int32_t *v = malloc((kv->n ? kv->n : 1) * sizeof *v);
        if (!v) abort();
        for (uint64_t i = 0; i < kv->n; i++) {
            int64_t x = 0;
            gguf_arr_int(kv, i, &x);
            v[i] = (int32_t)x;
        }
        gguf_writer_set_arr_i32(w, kv->key, v, kv->n);
        free(v);
    }
}

static void copy_tokenizer_keys(gguf_writer *w, const gguf_file *f) {
    for (size_t i = 0; i < gguf_kv_count(f); i++) {
        const gguf_kv *kv = gguf_kv_at(f, i);
        if (!strncmp(kv->key, "tokenizer.", 10)) copy_kv(w, kv);
    }
}

/* ---- tokenizer metadata from an HF directory ---- */

static json_t *load_json(const char *dir, const char *file, int required, lt_err *err) {
    char *p = lt_path_join(dir, file);
    size_t n;
    lt_err e2;
    char *text = lt_read_file(p, &n, required ? err : &e2);
    json_t *o = NULL;
    if (text) {
        json_error_t je;
        o = json_loadb(text, n, 0, &je);
        if (!o) lt_err_set(err, 400, "%s: line %d: %s", p, je.line, je.text);
        free(text);
    } else if (!required) {
        o = json_object();
    }
    free(p);
    return o;
}

/* The pre-tokenizer name llama.cpp uses for what a tokenizer.json pre_tokenizer section does. */
static const char *pre_name(json_t *pre, char *what, size_t cap) {
    const char *type = json_string_value(json_object_get(pre, "type"));
    snprintf(what, cap, "%s", type ? type : "null");
    if (!type) return NULL;
    if (!strcmp(type, "ByteLevel")) return json_is_false(json_object_get(pre, "use_regex")) ? NULL : "gpt2";
    if (strcmp(type, "Sequence")) return NULL;
    json_t *arr = json_object_get(pre, "pretokenizers");
    int digits = 0, bytelevel = 0, split = 0;
    const char *regex = NULL;
    size_t i;
    json_t *p;
    strbuf sb = STRBUF_INIT;
    json_array_foreach(arr, i, p) {
        const char *t = json_string_value(json_object_get(p, "type"));
        sb_printf(&sb, "%s%s", i ? "+" : "Sequence[", t ? t : "?");
        if (t && !strcmp(t, "Digits") && json_is_true(json_object_get(p, "individual_digits")))
            digits++;
        else if (t && !strcmp(t, "ByteLevel"))
            bytelevel++;
        else if (t && !strcmp(t, "Split")) {
            split++;
            regex = json_string_value(json_object_get(json_object_get(p, "pattern"), "Regex"));
        } else
            split += 100;
    }
    sb_putc(&sb, ']');
    snprintf(what, cap, "%s", sb.buf);
    sb_free(&sb);
    if (digits == 1 && bytelevel == 1 && split == 0) return "smollm";
    if (split == 1 && bytelevel == 1 && digits == 0 && regex) {
        if (strstr(regex, "\\p{N}{1,3}")) return "llama-bpe";
        if (strstr(regex, "\\p{N}")) return "qwen2";
    }
    return NULL;
}

/* Id of a token string (vocab or added), -1 when absent. */
static int64_t token_id_of(json_t *vocab, json_t *added, const char *s) {
    json_t *v = json_object_get(vocab, s);
    if (json_is_integer(v)) return json_integer_value(v);
    size_t i;
    json_t *a;
    json_array_foreach(added, i, a) {
        const char *c = json_string_value(json_object_get(a, "content"));
        if (c && !strcmp(c, s)) return json_integer_value(json_object_get(a, "id"));
    }
    return -1;
}

/* A special token named in tokenizer_config.json: a string or {"content": ...}. */
static const char *token_field(json_t *tc, const char *key) {
    json_t *v = json_object_get(tc, key);
    if (json_is_object(v)) v = json_object_get(v, "content");
    return json_string_value(v);
}

static int hf_tokenizer_keys(gguf_writer *w, const char *dir, const eng_config *cfg, lt_err *err) {
    json_t *tj = load_json(dir, "tokenizer.json", 1, err);
    if (!tj) return -1;
    json_t *tc = load_json(dir, "tokenizer_config.json", 0, err);
    int rc = -1;
    const char **toks = NULL;
    int32_t *types = NULL;
    char **merges = NULL;
    size_t n_merges = 0, ntok = 0;
    json_t *model = json_object_get(tj, "model");
    json_t *vocab = json_object_get(model, "vocab"), *added = json_object_get(tj, "added_tokens");
    const char *mtype = json_string_value(json_object_get(model, "type"));
    char what[256];
    if (!tc) goto out;
    if (!mtype || strcmp(mtype, "BPE") || !json_is_object(vocab)) {
        lt_err_set(err, 400,
                   "%s/tokenizer.json: model.type is %s: only byte-level BPE tokenizers convert to GGUF", dir,
                   mtype ? mtype : "missing");
        goto out;
    }
    const char *pre = pre_name(json_object_get(tj, "pre_tokenizer"), what, sizeof what);
    if (!pre) {
        lt_err_set(err, 400,
                   "%s/tokenizer.json: pre_tokenizer %s is not one llama.cpp names (supported: smollm, gpt2, "
                   "qwen2, llama-bpe)",
                   dir, what);
        goto out;
    }
    /* tokens in id order */
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v) {
        if (json_integer_value(v) + 1 > (json_int_t)ntok) ntok = (size_t)json_integer_value(v) + 1;
    }
    size_t i;
    json_array_foreach(added, i, v) {
        json_int_t id = json_integer_value(json_object_get(v, "id"));
        if (id + 1 > (json_int_t)ntok) ntok = (size_t)id + 1;
    }
    if (ntok < (size_t)cfg->vocab_size) ntok = (size_t)cfg->vocab_size;
    toks = calloc(ntok, sizeof *toks);
    types = calloc(ntok, sizeof *types);
    if (!toks || !types) abort();
    json_object_foreach(vocab, key, v) {
        json_int_t id = json_integer_value(v);
        if (id >= 0) toks[id] = key, types[id] = 1;
    }
    json_array_foreach(added, i, v) {
        json_int_t id = json_integer_value(json_object_get(v, "id"));
        const char *c = json_string_value(json_object_get(v, "content"));
        if (id < 0 || !c) continue;
        toks[id] = c;
        types[id] = json_is_true(json_object_get(v, "special")) ? 3 : 4;
    }
    char(*pad)[32] = calloc(ntok, sizeof *pad);
    if (!pad) abort();
    for (size_t t = 0; t < ntok; t++)
        if (!toks[t]) {
            snprintf(pad[t], sizeof pad[t], "[PAD%zu]", t); /* llama.cpp's name for ids without a token */
            toks[t] = pad[t];
            types[t] = 5; /* unused */
        }
    gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    gguf_writer_set_str(w, "tokenizer.ggml.pre", pre);
    gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, NULL, ntok);
    gguf_writer_set_arr_i32(w, "tokenizer.ggml.token_type", types, ntok);
    free(pad);
    json_t *jm = json_object_get(model, "merges");
    n_merges = json_array_size(jm);
    merges = calloc(n_merges ? n_merges : 1, sizeof *merges);
    if (!merges) abort();
    json_array_foreach(jm, i, v) {
        if (json_is_string(v))
            merges[i] = lt_strdup(json_string_value(v));
        else {
            const char *a = json_string_value(json_array_get(v, 0)),
                       *b = json_string_value(json_array_get(v, 1));
            if (!a || !b) {
                lt_err_set(err, 400, "%s/tokenizer.json: model.merges[%zu] is not a pair of strings", dir, i);
                n_merges = i;
                goto out;
            }
            size_t n = strlen(a) + strlen(b) + 2;
            merges[i] = malloc(n);
            snprintf(merges[i], n, "%s %s", a, b);
        }
    }
    gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)merges, NULL, n_merges);
    int64_t bos = cfg->bos_token_id, eos = cfg->eos_token_id;
    const char *bs = token_field(tc, "bos_token"), *es = token_field(tc, "eos_token");
    if (bs && token_id_of(vocab, added, bs) >= 0) bos = token_id_of(vocab, added, bs);
    if (es && token_id_of(vocab, added, es) >= 0) eos = token_id_of(vocab, added, es);
    if (bos >= 0) gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)bos);
    if (eos >= 0) gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)eos);
    const char *ps = token_field(tc, "pad_token");
    if (ps && token_id_of(vocab, added, ps) >= 0)
        gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)token_id_of(vocab, added, ps));
    gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token",
                         json_is_true(json_object_get(tc, "add_bos_token")));
    json_t *tpl = json_object_get(tc, "chat_template");
    if (json_is_string(tpl)) gguf_writer_set_str(w, "tokenizer.chat_template", json_string_value(tpl));
    rc = 0;
out:
    for (size_t m = 0; m < n_merges; m++)
        free(merges[m]);
    free(merges);
    free(toks);
    free(types);
    json_decref(tj);
    json_decref(tc);
    return rc;
}

/* ------------------------------------------------------------------------------------------------------ */
/* GGUF target: tensors */

typedef struct {
    void **bufs;
    size_t n;
} buf_list;

static int is_qk(const char *hf, int *kv) {
    size_t n = strlen(hf);
    const char *s;
    if (n > 21 && (s = strstr(hf, ".self_attn.")) != NULL) {
        s += 11;
        if (!strncmp(s, "q_proj.", 7)) return *kv = 0, 1;
        if (!strncmp(s, "k_proj.", 7)) return *kv = 1, 1;
    }
    return 0;
}

static int add_tensor(gguf_writer *w, const st_tensor *t, const eng_config *c, gguf_type dtype, buf_list *bl,
                      lt_err *err) {
    char gname[160];
    if (!eng_gguf_name_for_hf(t->name, gname, sizeof gname))
        return lt_err_set(err, 400, "GGUF export: tensor '%s' has no llama.cpp name", t->name);
    float *f = st_tensor_to_f32_alloc(t, err);
    if (!f) return -1;
    int64_t rows = t->shape[0], cols = t->ndim == 2 ? t->shape[1] : 1;
    int kv;
    if (c->arch != ENG_ARCH_QWEN2 && c->arch != ENG_ARCH_QWEN3 && is_qk(t->name, &kv))
        eng_gguf_permute_qk(f, (int)rows, (int)cols, kv ? c->num_kv_heads : c->num_heads, 0);
    gguf_type ty = t->ndim == 1 ? GGUF_F32 : dtype;
    if (ty == GGUF_Q8_0 && cols % 32) ty = GGUF_F16;
    void *out = f;
    if (ty != GGUF_F32) {
        out = malloc(gguf_row_bytes(ty, cols) * (size_t)rows);
        if (!out) abort();
        gguf_quantize(ty, f, out, rows * cols);
        free(f);
    }
    bl->bufs = realloc(bl->bufs, (bl->n + 1) * sizeof *bl->bufs);
    if (!bl->bufs) abort();
    bl->bufs[bl->n++] = out;
    int64_t ne[2] = {t->ndim == 2 ? cols : rows, t->ndim == 2 ? rows : 1};
    return gguf_writer_add_tensor(w, gname, ty, t->ndim == 2 ? 2 : 1, ne, out, err);
}

static const char *base_name(const char *path, char *buf, size_t cap) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    size_t s = n;
    while (s > 0 && path[s - 1] != '/')
        s--;
    size_t len = n - s;
    if (len > 5 && !strncmp(path + n - 5, ".gguf", 5)) len -= 5;
    if (len >= cap) len = cap - 1;
    memcpy(buf, path + s, len);
    buf[len] = 0;
    return buf;
}

int eng_convert_to_gguf(const char *src, const char *adapter, const char *dst, gguf_type dtype, lt_err *err) {
    if (dtype != GGUF_F32 && dtype != GGUF_F16 && dtype != GGUF_BF16 && dtype != GGUF_Q8_0)
        return lt_err_set(err, 400, "GGUF export: dtype %s is not supported (f32, f16, bf16, q8_0)",
                          gguf_type_name(dtype) ? gguf_type_name(dtype) : "?");
    int from_gguf = eng_path_is_gguf(src);
    gguf_file *gf = NULL;
    if (from_gguf && !(gf = gguf_open(src, err))) return -1;
    eng_model *m = eng_model_load(src, eng_kernels_cpu(), err);
    if (!m) {
        gguf_close(gf);
        return -1;
    }
    eng_config cfg = m->cfg;
    int rc = -1;
    gguf_writer *w = NULL;
    st_reader *r = NULL;
    buf_list bl = {NULL, 0};
    char *tmp = NULL;
    if (cfg.rope_type != ENG_ROPE_DEFAULT) {
        lt_err_set(err, 400,
                   "GGUF export: %s uses llama3 RoPE scaling, which the GGUF export does not write yet", src);
        goto out;
    }
    if (adapter && eng_peft_import(m, adapter, err)) goto out;
    size_t n = strlen(dst) + 40;
    tmp = malloc(n);
    if (!tmp) abort();
    snprintf(tmp, n, "%s.merged-%d.safetensors", dst, (int)getpid());
    rc = eng_export_merged(m, tmp, ST_F32, err);
    eng_model_free(m);
    m = NULL;
    if (rc) goto out;
    rc = -1;
    r = st_open(tmp, err);
    unlink(tmp); /* the mapping stays valid */
    if (!r) goto out;
    w = gguf_writer_new();
    char name[128];
    set_arch_keys(w, &cfg, base_name(src, name, sizeof name), dtype);
    if (gf)
        copy_tokenizer_keys(w, gf);
    else if (hf_tokenizer_keys(w, src, &cfg, err))
        goto out;
    for (size_t i = 0; i < st_count(r); i++)
        if (add_tensor(w, st_at(r, i), &cfg, dtype, &bl, err)) goto out;
    rc = gguf_writer_write(w, dst, err);
out:
    for (size_t i = 0; i < bl.n; i++)
        free(bl.bufs[i]);
    free(bl.bufs);
    gguf_writer_free(w);
    st_close(r);
    free(tmp);
    eng_model_free(m);
    gguf_close(gf);
    return rc ? -1 : 0;
}
