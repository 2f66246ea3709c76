/* tokenizer_gguf.c: the tokenizer a GGUF file's metadata describes, as a Hugging Face tokenizer.json.
 *
 * llama.cpp stores a byte-level BPE tokenizer as metadata (tokenizer.ggml.*): the token strings in id order
 * (already in GPT-2's byte-level alphabet), one type per token, the merges as "left right" strings in rank
 * order, the special ids, and a pre-tokenizer *name* (tokenizer.ggml.pre) that stands for a regex llama.cpp
 * hard-codes. Rather than a second encoder, this file writes the tokenizer.json that name stands for and
 * loads it through the tokenizer.json path (eng_tok_load_mem), so a GGUF model tokenizes exactly as its
 * published tokenizer.json does under HF `tokenizers`.
 *
 * Mapping:
 *   tokens[i]            model.vocab entry i (every token, control ones included, as in SmolLM2's file)
 *   token_type[i] == 3   (control) also an added token with special = true
 *   token_type[i] == 4   (user-defined) also an added token with special = false (Qwen's <think>,
 * <tool_call>) other types          (1 normal, 2 unknown, 5 unused, 6 byte) plain vocab entries merges[r] "a
 * b"      model.merges[r] = ["a", "b"]; a, b and a+b must be tokens unknown_token_id     model.unk_token pre
 * normalizer + pre_tokenizer (+ model.ignore_merges) from the table below bos/eos/add_bos_token and
 * tokenizer.chat_template are not part of tokenizer.json: eng_tok_load_gguf sets them on the loaded
 * tokenizer.
 *
 * Pre-tokenizers (the rules llama.cpp applies for each name, spelled as the models' own tokenizer.json):
 *   smollm      Sequence[Digits(individual_digits), ByteLevel(use_regex)]              SmolLM / SmolLM2
 *   gpt2        ByteLevel(use_regex): GPT-2's regex                                    ("gpt-2" too)
 *   llama-bpe   Split(Llama 3 regex, Isolated) + ByteLevel(use_regex=false), ignore_merges ("llama3",
 *               "llama-v3" too)
 *   qwen2       NFC, Split(Qwen2 regex, Isolated) + ByteLevel(use_regex=false)        ("deepseek-r1-qwen")
 * Anything else, and any tokenizer.ggml.model but "gpt2" (SentencePiece "llama", WordPiece "bert", ...), is a
 * 400 naming the value and listing what is supported. Every other error names the key and the index. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "engine/tokenizer_internal.h"
#include "util/strbuf.h"

#define LLAMA3_RE                                                                                            \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|" \
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define QWEN2_RE                                                                                             \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"      \
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

enum { PRE_SMOLLM, PRE_GPT2, PRE_LLAMA3, PRE_QWEN2 };

static const struct {
    const char *name;
    int kind;
} PRE_NAMES[] = {
    {"smollm", PRE_SMOLLM}, {"gpt2", PRE_GPT2},       {"gpt-2", PRE_GPT2},  {"llama-bpe", PRE_LLAMA3},
    {"llama3", PRE_LLAMA3}, {"llama-v3", PRE_LLAMA3}, {"qwen2", PRE_QWEN2}, {"deepseek-r1-qwen", PRE_QWEN2},
};
#define SUPPORTED_PRE "smollm, gpt2 (gpt-2), llama-bpe (llama3, llama-v3), qwen2 (deepseek-r1-qwen)"

/* ---- token string set (merge checks) ---- */

typedef struct {
    const char **s;
    size_t *len;
    size_t cap; /* power of two */
} strset;

static uint64_t fnv(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static void set_init(strset *t, size_t n) {
    t->cap = 16;
    while (t->cap < n * 2)
        t->cap <<= 1;
    t->s = calloc(t->cap, sizeof *t->s);
    t->len = calloc(t->cap, sizeof *t->len);
    if (!t->s || !t->len) abort();
}

static void set_free(strset *t) {
    free(t->s);
    free(t->len);
}

/* Slot of s: where it is, or the empty slot where it would go. */
static size_t set_slot(const strset *t, const char *s, size_t n) {
    size_t i = (size_t)fnv(s, n) & (t->cap - 1);
    while (t->s[i] && !(t->len[i] == n && memcmp(t->s[i], s, n) == 0))
        i = (i + 1) & (t->cap - 1);
    return i;
}

static void set_add(strset *t, const char *s, size_t n) {
    size_t i = set_slot(t, s, n);
    t->s[i] = s;
    t->len[i] = n;
}

static int set_has(const strset *t, const char *s, size_t n) {
    return t->s[set_slot(t, s, n)] != NULL;
}

/* ---- metadata access ---- */

static const char *fname(const gguf_file *f) {
    const char *p = gguf_path(f);
    return p ? p : "(gguf)";
}

/* The string array under key, required (*kv NULL only with an error). */
static int str_array(const gguf_file *f, const char *key, const gguf_kv **kv, lt_err *err) {
    *kv = gguf_find_kv(f, key);
    if (!*kv)
        return lt_err_set(err, 400, "%s: %s is missing: the file has no tokenizer this loader can read",
                          fname(f), key);
    if ((*kv)->type != GGUF_V_ARR || (*kv)->arr_type != GGUF_V_STR)
        return lt_err_set(err, 400, "%s: %s must be an array of strings", fname(f), key);
    return 0;
}

/* An optional token id: -1 when absent; 400 when not an integer in [0, n). */
static int opt_id(const gguf_file *f, const char *key, uint64_t n, int *id, lt_err *err) {
    int64_t v;
    *id = -1;
    int rc = gguf_get_int(f, key, &v, err);
    if (rc < 0) return lt_err_set(err, 400, "%s: %s must be an integer token id", fname(f), key);
    if (rc == 1) return 0;
    if (v < 0 || (uint64_t)v >= n)
        return lt_err_set(err, 400, "%s: %s is %lld, outside the %llu tokens of tokenizer.ggml.tokens",
                          fname(f), key, (long long)v, (unsigned long long)n);
    *id = (int)v;
    return 0;
}

/* A JSON string literal of s[0..n), which must be valid UTF-8 without NUL. */
static int json_str(strbuf *sb, const char *s, size_t n) {
    if (eng_tok_utf8_invalid_at(s, n) != n || memchr(s, 0, n)) return -1;
    sb_putc(sb, '"');
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        sb_append(sb, s + run, i - run);
        if (c == '"' || c == '\\') {
            sb_putc(sb, '\\');
            sb_putc(sb, (char)c);
        } else {
            sb_printf(sb, "\\u%04x", c);
        }
        run = i + 1;
    }
    sb_append(sb, s + run, n - run);
    sb_putc(sb, '"');
    return 0;
}

static int pre_kind(const gguf_file *f, int *kind, lt_err *err) {
    const char *s;
    size_t n;
    int rc = gguf_get_str(f, "tokenizer.ggml.model", &s, &n, err);
    if (rc < 0) return lt_err_set(err, 400, "%s: tokenizer.ggml.model must be a string", fname(f));
    if (rc == 1)
        return lt_err_set(err, 400, "%s: tokenizer.ggml.model is missing: the file has no tokenizer",
                          fname(f));
    if (n != 4 || memcmp(s, "gpt2", 4) != 0)
        return lt_err_set(
            err, 400,
            "%s: tokenizer.ggml.model is \"%.*s\": only \"gpt2\" (byte-level BPE, as Llama 3, "
            "Qwen2 and SmolLM use) is supported; SentencePiece (\"llama\"), WordPiece (\"bert\") "
            "and other tokenizers are not",
            fname(f), (int)(n > 40 ? 40 : n), s);
    rc = gguf_get_str(f, "tokenizer.ggml.pre", &s, &n, err);
    if (rc < 0) return lt_err_set(err, 400, "%s: tokenizer.ggml.pre must be a string", fname(f));
    if (rc == 1)
        return lt_err_set(err, 400,
                          "%s: tokenizer.ggml.pre is missing: the pre-tokenizer cannot be known (supported: "
                          "%s)",
                          fname(f), SUPPORTED_PRE);
    for (size_t i = 0; i < sizeof PRE_NAMES / sizeof *PRE_NAMES; i++)
        if (strlen(PRE_NAMES[i].name) == n && memcmp(PRE_NAMES[i].name, s, n) == 0) {
            *kind = PRE_NAMES[i].kind;
            return 0;
        }
    return lt_err_set(err, 400,
                      "%s: tokenizer.ggml.pre \"%.*s\" is not a supported pre-tokenizer (supported: %s)",
                      fname(f), (int)(n > 60 ? 60 : n), s, SUPPORTED_PRE);
}

/* normalizer, pre_tokenizer and decoder members for a pre-tokenizer kind. */
static void pre_json(strbuf *sb, int kind) {
    json_t *bl = json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets",
                           1, "use_regex", kind == PRE_SMOLLM || kind == PRE_GPT2);
    json_t *pre;
    if (kind == PRE_SMOLLM) {
        pre = json_pack("{s:s, s:[{s:s, s:b}, o]}", "type", "Sequence", "pretokenizers", "type", "Digits",
                        "individual_digits", 1, bl);
    } else if (kind == PRE_GPT2) {
        pre = bl;
    } else {
        pre = json_pack("{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, o]}", "type", "Sequence", "pretokenizers", "type",
                        "Split", "pattern", "Regex", kind == PRE_LLAMA3 ? LLAMA3_RE : QWEN2_RE, "behavior",
                        "Isolated", "invert", 0, bl);
    }
    char *p = json_dumps(pre, JSON_COMPACT);
    if (!p) abort();
    sb_printf(sb, "\"normalizer\":%s,\"pre_tokenizer\":%s,",
              kind == PRE_QWEN2 ? "{\"type\":\"NFC\"}" : "null", p);
    sb_puts(sb, "\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\",\"add_prefix_space\":true,"
                "\"trim_offsets\":true,\"use_regex\":true},");
    free(p);
    json_decref(pre);
}

static int added_json(strbuf *sb, const gguf_file *f, const gguf_kv *toks, const gguf_kv *types,
                      lt_err *err) {
    sb_puts(sb, "\"added_tokens\":[");
    int first = 1;
    for (uint64_t i = 0; types && i < toks->n; i++) {
        int64_t ty;
        if (gguf_arr_int(types, i, &ty))
            return lt_err_set(err, 400, "%s: tokenizer.ggml.token_type must be an array of integers",
                              fname(f));
        if (ty < 0 || ty > 6)
            return lt_err_set(
                err, 400,
                "%s: tokenizer.ggml.token_type[%llu] is %lld; token types are 0..6 (1 normal, 3 "
                "control, 4 user-defined, 6 byte)",
                fname(f), (unsigned long long)i, (long long)ty);
        if (ty != 3 && ty != 4) continue;
        const char *s;
        size_t n;
        gguf_arr_str(toks, i, &s, &n);
        if (n == 0) continue; /* HF ignores empty added tokens */
        sb_printf(sb, "%s{\"id\":%llu,\"content\":", first ? "" : ",", (unsigned long long)i);
        json_str(sb, s, n); /* checked by vocab_json first */
        sb_printf(sb,
                  ",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,"
                  "\"special\":%s}",
                  ty == 3 ? "true" : "false");
        first = 0;
    }
    sb_puts(sb, "],");
    return 0;
}

static int vocab_json(strbuf *sb, const gguf_file *f, const gguf_kv *toks, strset *set, lt_err *err) {
    sb_puts(sb, "\"vocab\":{");
    for (uint64_t i = 0; i < toks->n; i++) {
        const char *s;
        size_t n;
        if (gguf_arr_str(toks, i, &s, &n))
            return lt_err_set(err, 400, "%s: tokenizer.ggml.tokens[%llu] is not a string", fname(f),
                              (unsigned long long)i);
        if (i) sb_putc(sb, ',');
        if (json_str(sb, s, n))
            return lt_err_set(err, 400, "%s: tokenizer.ggml.tokens[%llu] is not valid UTF-8 (or holds a NUL)",
                              fname(f), (unsigned long long)i);
        sb_printf(sb, ":%llu", (unsigned long long)i);
        set_add(set, s, n);
    }
    sb_puts(sb, "},");
    return 0;
}

static int merges_json(strbuf *sb, const gguf_file *f, const gguf_kv *merges, const strset *set,
                       lt_err *err) {
    sb_puts(sb, "\"merges\":[");
    strbuf cat = STRBUF_INIT;
    int rc = 0;
    for (uint64_t i = 0; i < merges->n && rc == 0; i++) {
        const char *s;
        size_t n;
        if (gguf_arr_str(merges, i, &s, &n)) {
            rc = lt_err_set(err, 400, "%s: tokenizer.ggml.merges[%llu] is not a string", fname(f),
                            (unsigned long long)i);
            break;
        }
        const char *sp = n > 1 ? memchr(s + 1, ' ', n - 1) : NULL;
        if (!sp || sp + 1 == s + n || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - s))) {
            rc = lt_err_set(
                err, 400,
                "%s: tokenizer.ggml.merges[%llu] \"%.*s\" must be two tokens separated by one space",
                fname(f), (unsigned long long)i, (int)(n > 80 ? 80 : n), s);
            break;
        }
        size_t al = (size_t)(sp - s), bl = n - al - 1;
        sb_reset(&cat);
        sb_append(&cat, s, al);
        sb_append(&cat, sp + 1, bl);
        const char *miss = !set_has(set, s, al) ? s : !set_has(set, sp + 1, bl) ? sp + 1 : NULL;
        size_t ml = miss == s ? al : bl;
        if (!miss && !set_has(set, cat.buf, cat.len)) miss = cat.buf, ml = cat.len;
        if (miss) {
            rc = lt_err_set(
                err, 400,
                "%s: tokenizer.ggml.merges[%llu] \"%.*s\": \"%.*s\" is not in tokenizer.ggml.tokens",
                fname(f), (unsigned long long)i, (int)(n > 80 ? 80 : n), s, (int)(ml > 80 ? 80 : ml), miss);
            break;
        }
        sb_puts(sb, i ? ",[" : "[");
        json_str(sb, s, al);
        sb_putc(sb, ',');
        json_str(sb, sp + 1, bl);
        sb_putc(sb, ']');
    }
    sb_free(&cat);
    if (rc == 0) sb_puts(sb, "]");
    return rc;
}

int eng_tok_gguf_json(const gguf_file *f, strbuf *out, lt_err *err) {
    int kind = PRE_GPT2;
    const gguf_kv *toks, *merges, *types = gguf_find_kv(f, "tokenizer.ggml.token_type");
    if (pre_kind(f, &kind, err) || str_array(f, "tokenizer.ggml.tokens", &toks, err) ||
        str_array(f, "tokenizer.ggml.merges", &merges, err))
        return -1;
    if (toks->n == 0) return lt_err_set(err, 400, "%s: tokenizer.ggml.tokens is empty", fname(f));
    if (toks->n > ENG_TOK_MAX_ID)
        return lt_err_set(err, 400, "%s: tokenizer.ggml.tokens has %llu tokens; at most %d are supported",
                          fname(f), (unsigned long long)toks->n, ENG_TOK_MAX_ID);
    if (types && (types->type != GGUF_V_ARR || types->n != toks->n))
        return lt_err_set(err, 400,
                          "%s: tokenizer.ggml.token_type must be an array with one type per token (%llu "
                          "entries for %llu tokens)",
                          fname(f), types->type == GGUF_V_ARR ? (unsigned long long)types->n : 0ull,
                          (unsigned long long)toks->n);
    int unk;
    int bos, eos, pad;
    if (opt_id(f, "tokenizer.ggml.unknown_token_id", toks->n, &unk, err) ||
        opt_id(f, "tokenizer.ggml.bos_token_id", toks->n, &bos, err) ||
        opt_id(f, "tokenizer.ggml.eos_token_id", toks->n, &eos, err) ||
        opt_id(f, "tokenizer.ggml.padding_token_id", toks->n, &pad, err))
        return -1;
    strset set;
    set_init(&set, toks->n);
    strbuf sb = STRBUF_INIT;
    sb_puts(&sb, "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,");
    size_t added_at = sb.len;
    pre_json(&sb, kind);
    sb_printf(&sb, "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":");
    if (unk >= 0) {
        const char *s;
        size_t n;
        gguf_arr_str(toks, (uint64_t)unk, &s, &n);
        if (json_str(&sb, s, n)) sb_puts(&sb, "null"); /* reported by vocab_json below */
    } else {
        sb_puts(&sb, "null");
    }
    sb_printf(&sb,
              ",\"continuing_subword_prefix\":null,\"end_of_word_suffix\":null,\"fuse_unk\":false,"
              "\"byte_fallback\":false,\"ignore_merges\":%s,",
              kind == PRE_LLAMA3 ? "true" : "false");
    int rc = vocab_json(&sb, f, toks, &set, err);
    if (rc == 0) rc = merges_json(&sb, f, merges, &set, err);
    if (rc == 0) {
        sb_puts(&sb, "}}");
        strbuf added = STRBUF_INIT;
        rc = added_json(&added, f, toks, types, err);
        if (rc == 0) {
            /* added tokens go before the normalizer, as HF writes them */
            strbuf all = STRBUF_INIT;
            sb_append(&all, sb.buf, added_at);
            sb_append(&all, added.buf, added.len);
            sb_append(&all, sb.buf + added_at, sb.len - added_at);
            sb_free(&sb);
            sb = all;
        }
        sb_free(&added);
    }
    set_free(&set);
    if (rc) {
        sb_free(&sb);
        return -1;
    }
    sb_append(out, sb.buf, sb.len);
    sb_free(&sb);
    return 0;
}

eng_tokenizer *eng_tok_load_gguf(const gguf_file *f, lt_err *err) {
    strbuf js = STRBUF_INIT;
    if (eng_tok_gguf_json(f, &js, err)) return NULL;
    eng_tokenizer *t = eng_tok_load_mem(js.buf, js.len, err);
    sb_free(&js);
    if (!t) {
        lt_err_prefix(err, "%s: the tokenizer its metadata describes: ", fname(f));
        return NULL;
    }
    int n = eng_tok_vocab_size(t), bos, eos, add_bos = -1;
    const char *tpl = NULL;
    size_t tpl_len = 0;
    opt_id(f, "tokenizer.ggml.bos_token_id", (uint64_t)n, &bos, err); /* checked by eng_tok_gguf_json */
    opt_id(f, "tokenizer.ggml.eos_token_id", (uint64_t)n, &eos, err);
    int rc = gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &add_bos, err);
    if (rc < 0) {
        lt_err_set(err, 400, "%s: tokenizer.ggml.add_bos_token must be a bool", fname(f));
        eng_tok_free(t);
        return NULL;
    }
    if (rc == 1) add_bos = -1;
    rc = gguf_get_str(f, "tokenizer.chat_template", &tpl, &tpl_len, err);
    if (rc < 0 ||
        (rc == 0 && (eng_tok_utf8_invalid_at(tpl, tpl_len) != tpl_len || memchr(tpl, 0, tpl_len)))) {
        lt_err_set(err, 400, "%s: tokenizer.chat_template must be a UTF-8 string", fname(f));
        eng_tok_free(t);
        return NULL;
    }
    eng_tok_set_file_meta(t, bos, eos, add_bos, rc == 0 ? tpl : NULL, tpl_len);
    return t;
}

eng_tokenizer *eng_tok_load_gguf_path(const char *path, lt_err *err) {
    gguf_file *f = gguf_open(path, err);
    if (!f) return NULL;
    eng_tokenizer *t = eng_tok_load_gguf(f, err);
    gguf_close(f);
    return t;
}
