/* Unit tests for engine/tokenizer_gguf: small GGUF files written with the gguf writer, one per pre-tokenizer
 * (smollm, gpt2, llama-bpe, qwen2: digits, ignore_merges and NFC tell them apart), control and user-defined
 * tokens, bos/eos/add_bos/chat template, eng_tok_load on a .gguf path, and every malformed case the loader
 * names (unknown pre-tokenizer, another tokenizer model, missing arrays, mismatched lengths, merges naming
 * unknown tokens, ids out of range, strings that are not UTF-8). Token-exactness against HF `tokenizers` on
 * real vocabularies is tests/py/test_gguf_tokenizer.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "engine/tokenizer_internal.h"
#include "util/strbuf.h"
#include "util/util.h"

/* ---- building test files ---- */

enum { F_NO_TYPES = 1, F_SHORT_TYPES = 2, F_NO_MERGES = 4, F_NO_TOKENS = 8, F_NO_PRE = 16 };

/* 256 byte tokens (ids 0..255), then the extras with their types; merges as given. */
typedef struct {
    const char *model, *pre;
    const char *const *extra; /* NULL-terminated */
    const int *extra_type;
    const char *const *merges; /* NULL-terminated */
    int flags;
} spec;

static const char *const EXTRA[] = {"12",   "Ġ3", "abc",        "Ġt",      "he",
                                    "Ġthe", "Ã©", "<|im_end|>", "<think>", NULL};
static const int EXTRA_T[] = {1, 1, 1, 1, 1, 1, 1, 3, 4};
static const char *const MERGES[] = {"1 2", "Ġ 3", "Ġ t", "h e", "Ġt he", "Ã ©", NULL};
enum { ID_12 = 256, ID_G3, ID_ABC, ID_GT, ID_HE, ID_GTHE, ID_EACUTE, ID_IM_END, ID_THINK };

static gguf_writer *build(const spec *s) {
    gguf_writer *w = gguf_writer_new();
    gguf_writer_set_str(w, "general.architecture", "llama");
    if (s->model) gguf_writer_set_str(w, "tokenizer.ggml.model", s->model);
    if (!(s->flags & F_NO_PRE)) gguf_writer_set_str(w, "tokenizer.ggml.pre", s->pre ? s->pre : "gpt2");
    const char *toks[300];
    size_t lens[300];
    int32_t types[300];
    char bytes[256][4];
    size_t n = 0;
    for (int b = 0; b < 256; b++) {
        eng_tok_byte_char(b, bytes[b]);
        toks[n] = bytes[b], lens[n] = strlen(bytes[b]), types[n++] = 1;
    }
    const char *const *extra = s->extra ? s->extra : EXTRA;
    const int *et = s->extra ? s->extra_type : EXTRA_T;
    for (size_t i = 0; extra[i]; i++)
        toks[n] = extra[i], lens[n] = strlen(extra[i]), types[n++] = et[i];
    if (!(s->flags & F_NO_TOKENS)) gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, lens, n);
    if (!(s->flags & F_NO_TYPES))
        gguf_writer_set_arr_i32(w, "tokenizer.ggml.token_type", types, s->flags & F_SHORT_TYPES ? n - 1 : n);
    const char *const *merges = s->merges ? s->merges : MERGES;
    const char *m[16];
    size_t ml[16], nm = 0;
    for (; merges[nm]; nm++)
        m[nm] = merges[nm], ml[nm] = strlen(merges[nm]);
    if (!(s->flags & F_NO_MERGES)) gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", m, ml, nm);
    return w;
}

static gguf_file *open_w(gguf_writer *w, void **buf) {
    size_t len;
    lt_err err = {0};
    assert_int_equal(gguf_writer_serialize(w, buf, &len, &err), 0);
    gguf_file *f = gguf_open_memory(*buf, len, "t.gguf", &err);
    if (!f) fprintf(stderr, "gguf_open_memory: %s\n", err.msg);
    assert_non_null(f);
    return f;
}

static eng_tokenizer *load_w(gguf_writer *w) {
    void *buf;
    gguf_file *f = open_w(w, &buf);
    lt_err err = {0};
    eng_tokenizer *t = eng_tok_load_gguf(f, &err);
    if (!t) fprintf(stderr, "eng_tok_load_gguf: %s\n", err.msg);
    gguf_close(f);
    free(buf);
    gguf_writer_free(w);
    assert_non_null(t);
    return t;
}

static eng_tokenizer *load_spec(const spec *s) {
    return load_w(build(s));
}

static void fails_w(gguf_writer *w, const char *needle, const char *needle2) {
    void *buf;
    gguf_file *f = open_w(w, &buf);
    lt_err err = {0};
    eng_tokenizer *t = eng_tok_load_gguf(f, &err);
    assert_null(t);
    assert_int_equal(err.code, 400);
    if (!strstr(err.msg, needle) || (needle2 && !strstr(err.msg, needle2)))
        fprintf(stderr, "message '%s' lacks '%s' / '%s'\n", err.msg, needle, needle2 ? needle2 : "");
    assert_non_null(strstr(err.msg, needle));
    if (needle2) assert_non_null(strstr(err.msg, needle2));
    assert_non_null(strstr(err.msg, "t.gguf"));
    gguf_close(f);
    free(buf);
    gguf_writer_free(w);
}

static void fails(const spec *s, const char *needle, const char *needle2) {
    fails_w(build(s), needle, needle2);
}

/* Encodes text and compares with want (terminated by -1). */
static void expect_ids(const eng_tokenizer *t, const char *text, int allow_special, const int *want) {
    int *ids;
    size_t n, nw = 0;
    lt_err err = {0};
    assert_int_equal(eng_tok_encode(t, text, strlen(text), allow_special, &ids, &n, &err), 0);
    while (want[nw] >= 0)
        nw++;
    if (n != nw || memcmp(ids, want, n * sizeof *ids) != 0) {
        fprintf(stderr, "'%s': got", text);
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\n");
    }
    assert_int_equal(n, nw);
    assert_memory_equal(ids, want, n * sizeof *ids);
    free(ids);
}

/* ---- pre-tokenizers ---- */

static void test_pre_tokenizers(void **state) {
    /* "12 34": digits in ones (smollm, qwen2), in runs of three (llama-bpe) or glued to the space (gpt2) */
    eng_tokenizer *sm = load_spec(&(spec){.model = "gpt2", .pre = "smollm"});
    eng_tokenizer *g2 = load_spec(&(spec){.model = "gpt2", .pre = "gpt2"});
    eng_tokenizer *g2b = load_spec(&(spec){.model = "gpt2", .pre = "gpt-2"});
    eng_tokenizer *ll = load_spec(&(spec){.model = "gpt2", .pre = "llama-bpe"});
    eng_tokenizer *qw = load_spec(&(spec){.model = "gpt2", .pre = "qwen2"});
    expect_ids(sm, "12 34", 1, (int[]){'1', '2', ' ', '3', '4', -1});
    expect_ids(g2, "12 34", 1, (int[]){ID_12, ID_G3, '4', -1});
    expect_ids(g2b, "12 34", 1, (int[]){ID_12, ID_G3, '4', -1});
    expect_ids(ll, "12 34", 1, (int[]){ID_12, ' ', '3', '4', -1});
    expect_ids(qw, "12 34", 1, (int[]){'1', '2', ' ', '3', '4', -1});
    /* ignore_merges (llama-bpe only): a pre-token that is a vocab entry is emitted whole */
    expect_ids(ll, "abc", 1, (int[]){ID_ABC, -1});
    expect_ids(g2, "abc", 1, (int[]){'a', 'b', 'c', -1});
    expect_ids(qw, "abc", 1, (int[]){'a', 'b', 'c', -1});
    /* NFC (qwen2 only): e + U+0301 becomes é, which the merge "Ã ©" builds */
    expect_ids(qw, "e\xcc\x81", 1, (int[]){ID_EACUTE, -1});
    int *ids;
    size_t n;
    lt_err err = {0};
    assert_int_equal(eng_tok_encode(g2, "e\xcc\x81", 3, 1, &ids, &n, &err), 0);
    assert_int_equal(n, 3); /* e, Ì, ģ: no normalizer */
    free(ids);
    /* merges run by rank on every pre-tokenizer */
    expect_ids(sm, " the", 1, (int[]){ID_GTHE, -1});
    expect_ids(ll, " the", 1, (int[]){ID_GTHE, -1});
    /* decode gives the text back */
    char *dec = eng_tok_decode(sm, (int[]){ID_GTHE, ID_12}, 2, 0, NULL);
    assert_string_equal(dec, " the12");
    free(dec);
    eng_tok_free(sm);
    eng_tok_free(g2);
    eng_tok_free(g2b);
    eng_tok_free(ll);
    eng_tok_free(qw);
}

/* ---- special and user-defined tokens, ids, template ---- */

static void test_special_tokens(void **state) {
    gguf_writer *w = build(&(spec){.model = "gpt2", .pre = "smollm"});
    gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", ID_IM_END);
    gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", ID_THINK);
    gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", 1);
    gguf_writer_set_str(w, "tokenizer.chat_template", "{{ messages }}");
    eng_tokenizer *t = load_w(w);
    assert_int_equal(eng_tok_vocab_size(t), ID_THINK + 1);
    assert_true(eng_tok_is_special(t, ID_IM_END));
    assert_false(eng_tok_is_special(t, ID_THINK));
    assert_false(eng_tok_is_special(t, ID_GTHE));
    assert_int_equal(eng_tok_token_id(t, "<|im_end|>"), ID_IM_END);
    assert_int_equal(eng_tok_bos_id(t), ID_IM_END);
    assert_int_equal(eng_tok_eos_id(t), ID_THINK);
    assert_int_equal(eng_tok_add_bos(t), 1);
    assert_string_equal(eng_tok_chat_template(t), "{{ messages }}");
    /* control tokens only with special parsing on; user-defined ones always */
    expect_ids(t, "a<|im_end|>", 1, (int[]){'a', ID_IM_END, -1});
    int *ids;
    size_t n;
    lt_err err = {0};
    assert_int_equal(eng_tok_encode(t, "<|im_end|>", 10, 0, &ids, &n, &err), 0);
    assert_true(n > 1);
    free(ids);
    expect_ids(t, "<think>x", 0, (int[]){ID_THINK, 'x', -1});
    char *dec = eng_tok_decode(t, (int[]){ID_IM_END, 'a', ID_THINK}, 3, 1, NULL);
    assert_string_equal(dec, "a<think>");
    free(dec);
    eng_tok_free(t);

    /* no ids, no add_bos, no template in the file */
    t = load_spec(&(spec){.model = "gpt2", .pre = "gpt2"});
    assert_int_equal(eng_tok_add_bos(t), -1);
    assert_null(eng_tok_chat_template(t));
    assert_int_equal(eng_tok_bos_id(t), -1);
    eng_tok_free(t);

    w = build(&(spec){.model = "gpt2", .pre = "gpt2"});
    gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", 0);
    t = load_w(w);
    assert_int_equal(eng_tok_add_bos(t), 0);
    eng_tok_free(t);
}

static void test_json_and_file_path(void **state) {
    /* the synthesized tokenizer.json is a document jansson reads, with the named pre-tokenizer */
    void *buf;
    gguf_writer *w = build(&(spec){.model = "gpt2", .pre = "llama-bpe"});
    gguf_file *f = open_w(w, &buf);
    strbuf sb = STRBUF_INIT;
    lt_err err = {0};
    assert_int_equal(eng_tok_gguf_json(f, &sb, &err), 0);
    json_error_t je;
    json_t *root = json_loadb(sb.buf, sb.len, 0, &je);
    assert_non_null(root);
    json_t *model = json_object_get(root, "model");
    assert_true(json_is_true(json_object_get(model, "ignore_merges")));
    assert_int_equal(json_object_size(json_object_get(model, "vocab")), ID_THINK + 1);
    assert_int_equal(json_array_size(json_object_get(model, "merges")), 6);
    assert_int_equal(json_array_size(json_object_get(root, "added_tokens")), 2);
    json_t *split =
        json_array_get(json_object_get(json_object_get(root, "pre_tokenizer"), "pretokenizers"), 0);
    assert_non_null(strstr(json_string_value(json_object_get(json_object_get(split, "pattern"), "Regex")),
                           "\\p{N}{1,3}"));
    json_decref(root);
    sb_free(&sb);
    gguf_close(f);
    free(buf);

    /* eng_tok_load recognises a GGUF file by its magic, whatever its name */
    char dir[] = "/tmp/lathe-tokgguf-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *path = lt_path_join(dir, "model.bin");
    assert_int_equal(gguf_writer_write(w, path, &err), 0);
    gguf_writer_free(w);
    eng_tokenizer *t = eng_tok_load(path, &err);
    if (!t) fprintf(stderr, "%s\n", err.msg);
    assert_non_null(t);
    expect_ids(t, "abc", 1, (int[]){ID_ABC, -1});
    eng_tok_free(t);
    unlink(path);
    free(path);
    rmdir(dir);
}

/* ---- malformed metadata ---- */

static void test_errors(void **state) {
    fails(&(spec){.model = "gpt2", .pre = "falcon"}, "tokenizer.ggml.pre \"falcon\"", "smollm, gpt2");
    fails(&(spec){.model = "gpt2", .pre = NULL, .flags = F_NO_PRE}, "tokenizer.ggml.pre is missing",
          "llama-bpe");
    fails(&(spec){.model = "llama", .pre = "default"}, "tokenizer.ggml.model is \"llama\"", "\"gpt2\"");
    fails(&(spec){.model = "bert", .pre = "default"}, "\"bert\"", NULL);
    fails(&(spec){.model = NULL, .pre = "gpt2"}, "tokenizer.ggml.model is missing", NULL);
    fails(&(spec){.model = "gpt2", .pre = "gpt2", .flags = F_NO_TOKENS}, "tokenizer.ggml.tokens is missing",
          NULL);
    fails(&(spec){.model = "gpt2", .pre = "gpt2", .flags = F_NO_MERGES}, "tokenizer.ggml.merges is missing",
          NULL);
    fails(&(spec){.model = "gpt2", .pre = "gpt2", .flags = F_SHORT_TYPES}, "tokenizer.ggml.token_type",
          "264 entries for 265");
    fails(&(spec){.model = "gpt2", .pre = "gpt2", .merges = (const char *const[]){"Ġ t", "x yz", NULL}},
          "tokenizer.ggml.merges[1] \"x yz\": \"yz\"", "is not in tokenizer.ggml.tokens");
    fails(&(spec){.model = "gpt2", .pre = "gpt2", .merges = (const char *const[]){"a b", NULL}},
          "merges[0] \"a b\": \"ab\"", NULL);
    fails(&(spec){.model = "gpt2", .pre = "gpt2", .merges = (const char *const[]){"ab", NULL}},
          "merges[0] \"ab\" must be two", NULL);
    fails(&(spec){.model = "gpt2", .pre = "gpt2", .merges = (const char *const[]){"a b c", NULL}},
          "merges[0]", "one space");
    fails(&(spec){.model = "gpt2",
                  .pre = "gpt2",
                  .extra = (const char *const[]){"x", NULL},
                  .extra_type = (const int[]){9},
                  .merges = (const char *const[]){NULL}},
          "tokenizer.ggml.token_type[256] is 9", NULL);
    fails(&(spec){.model = "gpt2",
                  .pre = "gpt2",
                  .extra = (const char *const[]){"\xff\xfe", NULL},
                  .extra_type = (const int[]){1},
                  .merges = (const char *const[]){NULL}},
          "tokenizer.ggml.tokens[256] is not valid UTF-8", NULL);

    gguf_writer *w = build(&(spec){.model = "gpt2", .pre = "gpt2"});
    gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 5000);
    fails_w(w, "tokenizer.ggml.eos_token_id is 5000", "outside the 265 tokens");
    w = build(&(spec){.model = "gpt2", .pre = "gpt2"});
    gguf_writer_set_str(w, "tokenizer.ggml.bos_token_id", "one");
    fails_w(w, "tokenizer.ggml.bos_token_id must be an integer", NULL);
    w = build(&(spec){.model = "gpt2", .pre = "gpt2"});
    gguf_writer_set_u32(w, "tokenizer.ggml.tokens", 3);
    fails_w(w, "tokenizer.ggml.tokens must be an array of strings", NULL);
    w = build(&(spec){.model = "gpt2", .pre = "gpt2"});
    gguf_writer_set_arr_f32(w, "tokenizer.ggml.token_type", (const float[]){1, 2}, 2);
    fails_w(w, "tokenizer.ggml.token_type", NULL);
    w = build(&(spec){.model = "gpt2", .pre = "gpt2"});
    gguf_writer_set_u32(w, "tokenizer.ggml.pre", 7);
    fails_w(w, "tokenizer.ggml.pre must be a string", NULL);
    w = build(&(spec){.model = "gpt2", .pre = "gpt2"});
    gguf_writer_set_u32(w, "tokenizer.chat_template", 7);
    fails_w(w, "tokenizer.chat_template must be a UTF-8 string", NULL);
    w = build(&(spec){.model = "gpt2", .pre = "gpt2"});
    gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", NULL, NULL, 0);
    gguf_writer_set_arr_i32(w, "tokenizer.ggml.token_type", NULL, 0);
    fails_w(w, "tokenizer.ggml.tokens is empty", NULL);

    /* a GGUF without a tokenizer at all, through eng_tok_load */
    char dir[] = "/tmp/lathe-tokgguf-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *path = lt_path_join(dir, "weights.gguf");
    w = gguf_writer_new();
    gguf_writer_set_str(w, "general.architecture", "llama");
    lt_err err = {0};
    assert_int_equal(gguf_writer_write(w, path, &err), 0);
    gguf_writer_free(w);
    assert_null(eng_tok_load(path, &err));
    assert_int_equal(err.code, 400);
    assert_non_null(strstr(err.msg, "weights.gguf"));
    assert_non_null(strstr(err.msg, "tokenizer.ggml.model is missing"));
    unlink(path);
    free(path);
    rmdir(dir);
}

/* ---- the real SmolLM2 file, when the setup fetched it ---- */

static void test_smollm2(void **state) {
    const char *home = getenv("HOME");
    char path[1024];
    snprintf(path, sizeof path, "%s/.cache/lathe/models/SmolLM2-135M-Instruct.Q4_1.gguf",
             home ? home : "/root");
    const char *env = getenv("LATHE_SMOLLM2_GGUF");
    if (env) snprintf(path, sizeof path, "%s", env);
    if (access(path, R_OK) != 0) {
        fprintf(stderr, "skipped: %s not found (scripts/setup.sh fetches it)\n", path);
        skip();
    }
    lt_err err = {0};
    eng_tokenizer *t = eng_tok_load(path, &err);
    if (!t) fprintf(stderr, "%s\n", err.msg);
    assert_non_null(t);
    assert_int_equal(eng_tok_vocab_size(t), 49152);
    assert_int_equal(eng_tok_bos_id(t), 1);
    assert_int_equal(eng_tok_eos_id(t), 2);
    assert_int_equal(eng_tok_add_bos(t), 0);
    assert_non_null(strstr(eng_tok_chat_template(t), "You are a helpful AI assistant named SmolLM"));
    for (int i = 0; i <= 16; i++)
        assert_true(eng_tok_is_special(t, i));
    /* ids from HF tokenizers with SmolLM2's published pre-tokenizer (Digits individual + ByteLevel) */
    expect_ids(t, "1  2  3", 1, (int[]){33, 256, 34, 256, 35, -1});
    expect_ids(t, "Hello world 12345", 1, (int[]){19556, 905, 216, 33, 34, 35, 36, 37, -1});
    expect_ids(t, "<|im_start|>user\nHi<|im_end|>", 1, (int[]){1, 4093, 198, 26843, 2, -1});
    eng_tok_free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pre_tokenizers),
        cmocka_unit_test(test_special_tokens),
        cmocka_unit_test(test_json_and_file_path),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_smollm2),
    };
    return cmocka_run_group_tests_name("tokenizer_gguf", tests, NULL, NULL);
}
