/* cmd_model_info_gguf.c: `lathe model info FILE.gguf`, called by cmd_info (cmd_model.c) for a GGUF path.
 *
 * Reads the file the way the engine would (eng_gguf_config: the metadata, then every tensor checked by name
 * and shape against it), so a file that passes `info` is one the engine loads, and prints what a user needs
 * to choose and size it: architecture and family, parameters, layers and heads, context length, the
 * quantization (llama.cpp's file type and the count of tensors per stored type), the tokenizer the file
 * carries, and what is resident in memory once loaded (eng_gguf_model_load keeps the matrices as stored,
 * mmap'd, and widens the vectors, norms and biases, to f32; an all-F32 file is all f32). JSON keys match the
 * model-dir variant where they mean the same thing. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "engine/gguf.h"
#include "engine/gguf_model.h"
#include "cli/model_info.h"

/* A string key as a NUL-terminated copy ("" when absent or not a string). */
static void str_key(const gguf_file *f, const char *key, char *buf, size_t cap) {
    const char *s = NULL;
    size_t n = 0;
    lt_err e;
    buf[0] = 0;
    if (gguf_get_str(f, key, &s, &n, &e) == 0 && s)
        snprintf(buf, cap, "%.*s", (int)(n < cap ? n : cap - 1), s);
}

static json_t *types_json(const eng_gguf_summary *s) {
    json_t *o = json_object();
    for (int t = 0; t < 32; t++)
        if (s->count[t] && gguf_type_name(t))
            json_object_set_new(
                o, gguf_type_name(t),
                json_pack("{s:i,s:I}", "tensors", s->count[t], "bytes", (json_int_t)s->bytes[t]));
    return o;
}

/* Bytes resident once loaded: matrices as stored, vectors as f32 (as eng_gguf_model_load does). */
static unsigned long long resident_bytes(const gguf_file *f) {
    unsigned long long n = 0;
    for (size_t i = 0; i < gguf_tensor_count(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        if (!strcmp(t->name, "rope_freqs.weight")) continue;
        n += t->ndim == 2 ? (unsigned long long)t->nbytes : (unsigned long long)t->numel * 4;
    }
    return n;
}

int cmd_model_info_gguf(const char *path, int as_json) {
    lt_err err;
    lt_err_clear(&err);
    gguf_file *f = gguf_open(path, &err);
    if (!f) {
        fprintf(stderr, "lathe model info: %s\n", err.msg);
        return err.code == 404 ? EXIT_NOTFOUND : EXIT_FAIL;
    }
    eng_config c;
    if (eng_gguf_config(f, &c, &err) != 0) {
        fprintf(stderr, "lathe model info: %s\n", err.msg);
        gguf_close(f);
        return EXIT_FAIL;
    }
    eng_gguf_summary s;
    eng_gguf_summarize(f, &s);
    char name[128], gguf_arch[32], tok_model[32], tok_pre[32];
    str_key(f, "general.name", name, sizeof name);
    str_key(f, "general.architecture", gguf_arch, sizeof gguf_arch);
    str_key(f, "tokenizer.ggml.model", tok_model, sizeof tok_model);
    str_key(f, "tokenizer.ggml.pre", tok_pre, sizeof tok_pre);
    const gguf_kv *toks = gguf_find_kv(f, "tokenizer.ggml.tokens");
    const gguf_kv *merges = gguf_find_kv(f, "tokenizer.ggml.merges");
    int has_template = gguf_find_kv(f, "tokenizer.chat_template") != NULL;
    long long tokv = toks && toks->type == GGUF_V_ARR ? (long long)toks->n : -1;
    long long nmerges = merges && merges->type == GGUF_V_ARR ? (long long)merges->n : 0;
    if (as_json) {
        json_t *o = json_object();
        json_object_set_new(o, "format", json_string("gguf"));
        json_object_set_new(o, "gguf_version", json_integer(gguf_version(f)));
        json_object_set_new(o, "name", json_string(name));
        json_object_set_new(o, "gguf_architecture", json_string(gguf_arch));
        model_info_shape_json(o, &c);
        json_object_set_new(o, "tokenizer_vocab", tokv >= 0 ? json_integer(tokv) : json_null());
        json_object_set_new(o, "quantization", json_string(s.file_type >= 0 ? s.file_type_name : s.types));
        json_object_set_new(o, "file_type", s.file_type >= 0 ? json_integer(s.file_type) : json_null());
        json_object_set_new(o, "dtype", json_string(s.types));
        json_object_set_new(o, "tensor_types", types_json(&s));
        json_object_set_new(o, "tensors", json_integer(s.n_tensors));
        json_object_set_new(o, "weight_bytes", json_integer((json_int_t)s.file_bytes));
        json_object_set_new(o, "resident",
                            json_pack("{s:s,s:s,s:I,s:I}", "matrices", "as stored", "vectors", "f32", "bytes",
                                      (json_int_t)resident_bytes(f), "f32_bytes", (json_int_t)s.f32_bytes));
        model_info_config_json(o, &c);
        json_object_set_new(o, "tokenizer",
                            json_pack("{s:s,s:s,s:I,s:b}", "model", tok_model, "pre", tok_pre, "merges",
                                      (json_int_t)nmerges, "chat_template", has_template));
        char *js = json_dumps(o, JSON_INDENT(2));
        printf("%s\n", js);
        free(js);
        json_decref(o);
    } else {
        if (name[0]) printf("name          %s\n", name);
        printf("format        GGUF v%d, architecture %s\n", gguf_version(f), gguf_arch);
        model_info_shape_text(&c);
        printf("quantization  file type %s; tensors:",
               s.file_type >= 0 ? s.file_type_name : "(not recorded)");
        for (int t = 0; t < 32; t++)
            if (s.count[t] && gguf_type_name(t)) printf(" %s x%d", gguf_type_name(t), s.count[t]);
        printf("\nweights       %d tensors, %llu bytes stored\n", s.n_tensors,
               (unsigned long long)s.file_bytes);
        printf("resident      %llu bytes once loaded (matrices as stored, mmap'd; norms and biases f32); "
               "%llu if widened to f32\n",
               resident_bytes(f), (unsigned long long)s.f32_bytes);
        printf("tokenizer     %s%s%s, %lld tokens, %lld merges%s\n", tok_model[0] ? tok_model : "(none)",
               tok_pre[0] ? " pre-tokenizer " : "", tok_pre, tokv, nmerges,
               has_template ? ", chat template" : "");
        printf("vocab         %d (model)\n", c.vocab_size);
        printf("context       %d\n", c.max_position_embeddings);
    }
    gguf_close(f);
    return EXIT_OK;
}
