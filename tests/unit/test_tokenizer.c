/* Unit tests for engine/tokenizer: small hand-written tokenizer.json files, one per feature (merge formats,
 * ignore_merges, added tokens and their flags, NFC, split behaviors, Digits, unk handling, ByteLevel decode
 * with invalid UTF-8), the error messages for malformed files and input, and a smoke test on the real Llama 3
 * and Qwen3 files in tests/fixtures/tokenizers (expected ids from Hugging Face tokenizers 0.23). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/tokenizer.h"
#include "engine/tokenizer_internal.h"
#include "util/strbuf.h"
#include "util/util.h"

static eng_tokenizer *load_str(const char *json) {
    lt_err err = {0};
    eng_tokenizer *t = eng_tok_load_mem(json, strlen(json), &err);
    if (!t) fprintf(stderr, "load failed: %s\n", err.msg);
    assert_non_null(t);
    return t;
}

static void load_fails(const char *json, const char *needle) {
    lt_err err = {0};
    eng_tokenizer *t = eng_tok_load_mem(json, strlen(json), &err);
    assert_null(t);
    assert_int_equal(err.code, 400);
    if (!strstr(err.msg, needle)) fprintf(stderr, "message '%s' lacks '%s'\n", err.msg, needle);
    assert_non_null(strstr(err.msg, needle));
}

/* Encodes text and compares with the expected ids (terminated by -1). */
static void expect_ids(const eng_tokenizer *t, const char *text, int allow_special, const int *want) {
    int *ids;
    size_t n;
    lt_err err = {0};
    assert_int_equal(eng_tok_encode(t, text, strlen(text), allow_special, &ids, &n, &err), 0);
    size_t wn = 0;
    while (want[wn] >= 0)
        wn++;
    if (n != wn || (n && memcmp(ids, want, n * sizeof *ids))) {
        fprintf(stderr, "'%s': got", text);
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\n");
    }
    assert_int_equal(n, wn);
    if (n) assert_memory_equal(ids, want, n * sizeof *ids);
    free(ids);
}

/* A byte-level tokenizer: all 256 byte characters (ids 0-255 in byte order) plus extra vocab entries and
 * merges; `extra` is ",\"tok\": id..." text appended to the vocab, merges and added tokens as JSON. */
static char *bytelevel_json(const char *extra_vocab, const char *merges, const char *added,
                            const char *normalizer, const char *pretok_regex, int ignore_merges) {
    strbuf sb = STRBUF_INIT;
    sb_puts(&sb, "{\"version\":\"1.0\",\"added_tokens\":[");
    sb_puts(&sb, added);
    sb_puts(&sb, "],\"normalizer\":");
    sb_puts(&sb, normalizer);
    sb_puts(&sb, ",\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[");
    if (pretok_regex) {
        sb_puts(&sb, "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"");
        sb_puts(&sb, pretok_regex);
        sb_puts(&sb, "\"},\"behavior\":\"Isolated\",\"invert\":false},");
    }
    sb_puts(
        &sb,
        "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":false,\"use_regex\":false}]},"
        "\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\","
        "\"ignore_merges\":");
    sb_puts(&sb, ignore_merges ? "true" : "false");
    sb_puts(&sb, ",\"vocab\":{");
    for (int b = 0; b < 256; b++) {
        char u[4];
        eng_tok_byte_char(b, u);
        if (b) sb_putc(&sb, ',');
        if (b == '"' || b == '\\')
            sb_printf(&sb, "\"\\%c\":%d", b, b);
        else
            sb_printf(&sb, "\"%s\":%d", u, b);
    }
    sb_puts(&sb, extra_vocab);
    sb_puts(&sb, "},\"merges\":[");
    sb_puts(&sb, merges);
    sb_puts(&sb, "]}}");
    return sb_steal(&sb);
}

#define GPT4_RE                                                                                              \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| "                   \
    "?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+"

/* GPT-2's bytes_to_unicode, as HF's ByteLevel defines it: printable Latin-1 stands for itself, the other 68
 * bytes map to U+0100.. in byte order (so NUL -> U+0100, space -> U+0120, soft hyphen 0xAD -> U+0143). */
static void test_byte_alphabet(void **state) {
    char u[4];
    assert_int_equal(eng_tok_byte_char('a', u), 1);
    assert_string_equal(u, "a");
    assert_int_equal(eng_tok_byte_char(0, u), 2);
    assert_string_equal(u, "\xc4\x80");
    eng_tok_byte_char(' ', u);
    assert_string_equal(u, "\xc4\xa0");
    eng_tok_byte_char(0xAD, u);
    assert_string_equal(u, "\xc5\x83");
    eng_tok_byte_char(0xFF, u);
    assert_string_equal(u, "\xc3\xbf");
    char seen[256][4];
    for (int b = 0; b < 256; b++) { /* a bijection: no two bytes share a character */
        eng_tok_byte_char(b, seen[b]);
        for (int c = 0; c < b; c++)
            assert_string_not_equal(seen[b], seen[c]);
    }
}

static void test_merge_formats_agree(void **state) {
    const char *vocab = ",\"he\":256,\"ll\":257,\"hell\":258,\"hello\":259,\"Ġw\":260";
    char *legacy =
        bytelevel_json(vocab, "\"h e\",\"l l\",\"he ll\",\"hell o\",\"Ġ w\"", "", "null", GPT4_RE, 0);
    char *pairs =
        bytelevel_json(vocab, "[\"h\",\"e\"],[\"l\",\"l\"],[\"he\",\"ll\"],[\"hell\",\"o\"],[\"Ġ\",\"w\"]",
                       "", "null", GPT4_RE, 0);
    eng_tokenizer *a = load_str(legacy), *b = load_str(pairs);
    const int want[] = {259, 260, 'o', 'r', 'l', 'd', -1};
    expect_ids(a, "hello world", 1, want);
    expect_ids(b, "hello world", 1, want);
    assert_int_equal(eng_tok_vocab_size(a), 261);
    assert_int_equal(eng_tok_token_id(a, "Ġw"), 260);
    assert_int_equal(eng_tok_token_id(a, "nope"), -1);
    assert_string_equal(eng_tok_id_to_token(a, 259), "hello");
    assert_null(eng_tok_id_to_token(a, 999));
    eng_tok_free(a);
    eng_tok_free(b);
    free(legacy);
    free(pairs);
}

static void test_merge_rank_order(void **state) {
    /* "abc": merges "b c" (rank 0) before "a b" (rank 1) -> a + bc; reversed ranks -> ab + c */
    const char *vocab = ",\"ab\":256,\"bc\":257";
    char *j1 = bytelevel_json(vocab, "\"b c\",\"a b\"", "", "null", NULL, 0);
    char *j2 = bytelevel_json(vocab, "\"a b\",\"b c\"", "", "null", NULL, 0);
    eng_tokenizer *t1 = load_str(j1), *t2 = load_str(j2);
    expect_ids(t1, "abc", 1, (const int[]){'a', 257, -1});
    expect_ids(t2, "abc", 1, (const int[]){256, 'c', -1});
    /* equal pairs: the leftmost merges first: "aaa" with "a a" -> aa + a */
    char *j3 = bytelevel_json(",\"aa\":256", "\"a a\"", "", "null", NULL, 0);
    eng_tokenizer *t3 = load_str(j3);
    expect_ids(t3, "aaa", 1, (const int[]){256, 'a', -1});
    expect_ids(t3, "aaaa", 1, (const int[]){256, 256, -1});
    eng_tok_free(t1);
    eng_tok_free(t2);
    eng_tok_free(t3);
    free(j1);
    free(j2);
    free(j3);
}

static void test_ignore_merges(void **state) {
    /* "abc" is a vocab entry but the merges alone can only reach "ab" + "c" */
    const char *vocab = ",\"ab\":256,\"abc\":257";
    char *with = bytelevel_json(vocab, "\"a b\"", "", "null", NULL, 1);
    char *without = bytelevel_json(vocab, "\"a b\"", "", "null", NULL, 0);
    eng_tokenizer *a = load_str(with), *b = load_str(without);
    expect_ids(a, "abc", 1, (const int[]){257, -1});
    expect_ids(b, "abc", 1, (const int[]){256, 'c', -1});
    eng_tok_free(a);
    eng_tok_free(b);
    free(with);
    free(without);
}

static void test_added_tokens(void **state) {
    const char *added =
        "{\"id\":300,\"content\":\"<|end|>\",\"special\":true,\"lstrip\":false,\"rstrip\":false,"
        "\"normalized\":false,\"single_word\":false},"
        "{\"id\":301,\"content\":\"<|end|>x\",\"special\":true,\"normalized\":false},"
        "{\"id\":302,\"content\":\"<t>\",\"special\":false,\"normalized\":false},"
        "{\"id\":303,\"content\":\"[L]\",\"special\":true,\"lstrip\":true,\"normalized\":false},"
        "{\"id\":304,\"content\":\"[R]\",\"special\":true,\"rstrip\":true,\"normalized\":false},"
        "{\"id\":305,\"content\":\"cat\",\"special\":false,\"single_word\":true,"
        "\"normalized\":false}";
    char *j = bytelevel_json("", "", added, "null", NULL, 0);
    eng_tokenizer *t = load_str(j);
    expect_ids(t, "a<|end|>b", 1, (const int[]){'a', 300, 'b', -1});
    /* leftmost-longest */
    expect_ids(t, "<|end|>xy", 1, (const int[]){301, 'y', -1});
    /* specials disallowed: plain bytes, but non-special added tokens still match */
    expect_ids(t, "<|end|><t>", 0, (const int[]){'<', '|', 'e', 'n', 'd', '|', '>', 302, -1});
    /* lstrip eats the spaces before, rstrip the spaces after (space is byte 0x20 -> id 32) */
    expect_ids(t, "a  [L]b", 1, (const int[]){'a', 303, 'b', -1});
    expect_ids(t, "a[R]  b", 1, (const int[]){'a', 304, 'b', -1});
    /* single_word: only when not inside a word */
    expect_ids(t, "cat", 1, (const int[]){305, -1});
    expect_ids(t, "a cat.", 1, (const int[]){'a', ' ', 305, '.', -1});
    expect_ids(t, "cats", 1, (const int[]){'c', 'a', 't', 's', -1});
    assert_true(eng_tok_is_special(t, 300));
    assert_false(eng_tok_is_special(t, 302));
    assert_int_equal(eng_tok_token_id(t, "<|end|>"), 300);
    assert_string_equal(eng_tok_id_to_token(t, 302), "<t>");
    /* decode with and without specials */
    int ids[] = {'h', 300, 'i', 302};
    char *s = eng_tok_decode(t, ids, 4, 0, NULL);
    assert_string_equal(s, "h<|end|>i<t>");
    free(s);
    s = eng_tok_decode(t, ids, 4, 1, NULL);
    assert_string_equal(s, "hi<t>");
    free(s);
    eng_tok_free(t);
    free(j);
}

static void test_nfc_normalizer(void **state) {
    /* é precomposed is bytes C3 A9 -> chars Ã (0xC3) © (0xA9) */
    char *j = bytelevel_json(",\"Ã©\":256", "\"Ã ©\"", "", "{\"type\":\"NFC\"}", NULL, 0);
    eng_tokenizer *t = load_str(j);
    expect_ids(t, "e\xcc\x81", 1, (const int[]){256, -1}); /* e + U+0301 composes to é */
    expect_ids(t, "\xc3\xa9", 1, (const int[]){256, -1});
    eng_tok_free(t);
    free(j);
    size_t n;
    char *s = eng_tok_nfc("\xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8", 9, &n); /* jamo G A K -> 각 */
    assert_int_equal(n, 3);
    assert_memory_equal(s, "\xea\xb0\x81", 3);
    free(s);
    s = eng_tok_nfc("a\xcc\xa3\xcc\x82", 5, &n); /* a + dot below + circumflex -> ậ */
    assert_string_equal(s, "\xe1\xba\xad");
    free(s);
    s = eng_tok_nfc("a\xcc\x82\xcc\xa3", 5, &n); /* reordered marks give the same result */
    assert_string_equal(s, "\xe1\xba\xad");
    free(s);
}

static char *split_json(const char *behavior) {
    static char buf[2048];
    snprintf(
        buf, sizeof buf,
        "{\"added_tokens\":[],\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":"
        "{\"String\":\"-\"},\"behavior\":\"%s\",\"invert\":false},\"decoder\":null,\"model\":{\"type\":"
        "\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"-\":2,\"a-\":3,\"-b\":4,\"--\":5},\"merges\":[\"a -\",\"- b\","
        "\"- -\"]}}",
        behavior);
    return buf;
}

static void test_split_behaviors(void **state) {
    struct {
        const char *behavior;
        int want[6];
    } cases[] = {
        {"Isolated", {0, 2, 2, 1, -1}},        {"Removed", {0, 1, -1}},
        {"MergedWithPrevious", {3, 2, 1, -1}}, {"MergedWithNext", {0, 2, 4, -1}},
        {"Contiguous", {0, 5, 1, -1}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        eng_tokenizer *t = load_str(split_json(cases[i].behavior));
        expect_ids(t, "a--b", 1, cases[i].want);
        eng_tok_free(t);
    }
    /* no decoder: tokens are joined with spaces, like HF */
    eng_tokenizer *t = load_str(split_json("Isolated"));
    int ids[] = {0, 2, 1};
    char *s = eng_tok_decode(t, ids, 3, 0, NULL);
    assert_string_equal(s, "a - b");
    free(s);
    eng_tok_free(t);
}

static void test_digits_and_unk(void **state) {
    const char *j =
        "{\"pre_tokenizer\":{\"type\":\"Digits\",\"individual_digits\":true},\"model\":{\"type\":\"BPE\","
        "\"unk_token\":\"?\",\"fuse_unk\":true,\"vocab\":{\"?\":0,\"1\":1,\"2\":2,\"12\":3,\"x\":4},"
        "\"merges\":[\"1 2\"]}}";
    eng_tokenizer *t = load_str(j);
    expect_ids(t, "12x", 1, (const int[]){1, 2, 4, -1});
    expect_ids(t, "x\xc3\xa9\xc3\xa9x", 1, (const int[]){4, 0, 4, -1}); /* fused unk */
    eng_tok_free(t);
    const char *j2 =
        "{\"pre_tokenizer\":{\"type\":\"Digits\",\"individual_digits\":false},\"model\":{\"type\":"
        "\"BPE\",\"vocab\":{\"1\":1,\"2\":2,\"12\":3,\"x\":4},\"merges\":[\"1 2\"]}}";
    t = load_str(j2);
    expect_ids(t, "x12", 1, (const int[]){4, 3, -1});
    expect_ids(t, "x\xe2\x82\xac", 1,
               (const int[]){4, -1}); /* no unk_token: unknown characters are dropped */
    eng_tok_free(t);
}

static void test_bytelevel_decode_invalid_utf8(void **state) {
    char *j = bytelevel_json("", "", "", "null", NULL, 0);
    eng_tokenizer *t = load_str(j);
    /* byte 0xC3 alone, then 'A': one U+FFFD for the lone lead byte */
    int ids[] = {0xC3, 'A', 0xE2, 0x82, 'B', 0x80};
    size_t len;
    char *s = eng_tok_decode(t, ids, 6, 0, &len);
    assert_string_equal(s, "\xef\xbf\xbd"
                           "A"
                           "\xef\xbf\xbd"
                           "B"
                           "\xef\xbf\xbd");
    assert_int_equal(len, strlen(s));
    free(s);
    char buf[4];
    assert_int_equal(eng_tok_token_bytes(t, ' ', buf, sizeof buf), 1);
    assert_int_equal(buf[0], ' ');
    /* round trip of arbitrary valid text */
    const char *text = "Mixed: 日本 😀 \t\r\n end";
    int *out;
    size_t n;
    lt_err err = {0};
    assert_int_equal(eng_tok_encode(t, text, strlen(text), 1, &out, &n, &err), 0);
    s = eng_tok_decode(t, out, n, 0, NULL);
    assert_string_equal(s, text);
    free(s);
    free(out);
    eng_tok_free(t);
    free(j);
}

static void test_invalid_utf8_input(void **state) {
    char *j = bytelevel_json("", "", "", "null", NULL, 0);
    eng_tokenizer *t = load_str(j);
    int *ids = (int *)1;
    size_t n = 7;
    lt_err err = {0};
    assert_int_equal(eng_tok_encode(t, "ok\xff", 3, 1, &ids, &n, &err), -1);
    assert_int_equal(err.code, 400);
    assert_non_null(strstr(err.msg, "not valid UTF-8"));
    assert_non_null(strstr(err.msg, "offset 2"));
    assert_null(ids);
    assert_int_equal(n, 0);
    /* surrogates and overlong forms are invalid too */
    assert_int_equal(eng_tok_encode(t, "\xed\xa0\x80", 3, 1, &ids, &n, &err), -1);
    assert_int_equal(eng_tok_encode(t, "\xc0\xaf", 2, 1, &ids, &n, &err), -1);
    /* empty text is fine */
    assert_int_equal(eng_tok_encode(t, "", 0, 1, &ids, &n, &err), 0);
    assert_int_equal(n, 0);
    free(ids);
    eng_tok_free(t);
    free(j);
}

static void test_load_errors(void **state) {
    load_fails("{\"model\": ", "invalid JSON at line 1");
    load_fails("[]", "top level must be an object");
    load_fails("{\"added_tokens\":[]}", "missing \"model\"");
    load_fails("{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}}}", "only \"BPE\"");
    load_fails("{\"model\":{\"type\":\"BPE\",\"vocab\":[]}}", "model.vocab must be an object");
    load_fails("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-3}}}", "model.vocab[\"a\"]");
    load_fails("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a c\"]}}",
               "model.merges[0]: token \"c\" is not in model.vocab");
    load_fails("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a b\"]}}",
               "token \"ab\" is not in model.vocab");
    load_fails("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"abc\"]}}", "two tokens");
    load_fails("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[7]}}", "model.merges[0]");
    load_fails("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"byte_fallback\":true}}", "byte_fallback");
    load_fails("{\"normalizer\":{\"type\":\"Lowercase\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0}}}",
               "normalizer type \"Lowercase\" is not supported");
    load_fails("{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(unclosed\"},\"behavior\":"
               "\"Isolated\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0}}}",
               "pre_tokenizer.pattern: cannot compile pattern \"(unclosed\"");
    load_fails(
        "{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},\"behavior\":\"Sideways\"},"
        "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0}}}",
        "behavior \"Sideways\"");
    load_fails("{\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Whitespace\"}]},"
               "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0}}}",
               "pre_tokenizer.pretokenizers[0]: pre-tokenizer type \"Whitespace\"");
    load_fails("{\"added_tokens\":[{\"content\":\"x\"}],\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0}}}",
               "added_tokens[0]");
    load_fails("{\"decoder\":{\"type\":\"WordPiece\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0}}}",
               "decoder: type \"WordPiece\"");

    lt_err err = {0};
    assert_null(eng_tok_load("/nonexistent/tokenizer.json", &err));
    assert_int_equal(err.code, 404);
    char dir[] = "/tmp/lathe-tok-test-XXXXXX";
    assert_non_null(mkdtemp(dir));
    assert_null(eng_tok_load(dir, &err));
    assert_int_equal(err.code, 404);
    assert_non_null(strstr(err.msg, "no tokenizer.json"));
    char *file = lt_path_join(dir, "tokenizer.json");
    assert_int_equal(lt_write_file_atomic(file, "{\"model\":{}", 11, 0644, &err), 0);
    assert_null(eng_tok_load(dir, &err));
    assert_int_equal(err.code, 400);
    assert_non_null(strstr(err.msg, file)); /* names the file */
    unlink(file);
    free(file);
    rmdir(dir);
}

static void test_repeated_vocab_key(void **state) {
    /* the last value wins, as in jansson (and serde): id 5 is not used at all */
    const char *j = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":5,\"b\":1,\"a\":0}}}";
    for (int fast = 0; fast < 2; fast++) {
        lt_err err = {0};
        eng_tokenizer *t = eng_tok_load_mem_path(j, strlen(j), fast, &err);
        assert_non_null(t);
        assert_int_equal(eng_tok_token_id(t, "a"), 0);
        assert_int_equal(eng_tok_vocab_size(t), 2);
        assert_null(eng_tok_id_to_token(t, 5));
        eng_tok_free(t);
    }
}

static void test_bos_eos_without_config(void **state) {
    /* no tokenizer_config.json: BOS from the TemplateProcessing post-processor, EOS from the added tokens */
    const char *j =
        "{\"added_tokens\":[{\"id\":2,\"content\":\"<|start|>\",\"special\":true},{\"id\":3,"
        "\"content\":\"<|endoftext|>\",\"special\":true}],\"post_processor\":{\"type\":"
        "\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<|start|>\",\"type_id\":0}},"
        "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}]},\"model\":{\"type\":\"BPE\",\"vocab\":"
        "{\"a\":0,\"<s>\":1}}}";
    eng_tokenizer *t = load_str(j);
    assert_int_equal(eng_tok_bos_id(t), 2);
    assert_int_equal(eng_tok_eos_id(t), 3);
    assert_null(eng_tok_chat_template(t));
    /* encoding never applies the post-processor */
    expect_ids(t, "a", 1, (const int[]){0, -1});
    eng_tok_free(t);
    /* a plain vocab entry named like a special token does not count */
    t = load_str("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"<s>\":1,\"</s>\":2}}}");
    assert_int_equal(eng_tok_bos_id(t), -1);
    assert_int_equal(eng_tok_eos_id(t), -1);
    eng_tok_free(t);
}

static void test_real_files(void **state) {
    const char *root = getenv("LATHE_ROOT");
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/fixtures/tokenizers/llama3", root ? root : ".");
    lt_err err = {0};
    eng_tokenizer *l = eng_tok_load(path, &err);
    if (!l) fprintf(stderr, "%s\n", err.msg);
    assert_non_null(l);
    assert_int_equal(eng_tok_vocab_size(l), 128256);
    assert_int_equal(eng_tok_bos_id(l), 128000);
    assert_int_equal(eng_tok_eos_id(l), 128001);
    assert_int_equal(eng_tok_token_id(l, "<|eot_id|>"), 128009);
    assert_non_null(eng_tok_chat_template(l));
    /* HF: [9906, 1917, 11, 358, 28703, 1618, 220, 4513, 1774, 118195, 53901, 220, 128009] */
    expect_ids(
        l, "Hello world, I'M here 12345 你好 <|eot_id|>", 1,
        (const int[]){9906, 1917, 11, 358, 28703, 1618, 220, 4513, 1774, 118195, 53901, 220, 128009, -1});
    eng_tok_free(l);
    snprintf(path, sizeof path, "%s/tests/fixtures/tokenizers/qwen3/tokenizer.json", root ? root : ".");
    eng_tokenizer *q = eng_tok_load(path, &err);
    assert_non_null(q);
    assert_int_equal(eng_tok_bos_id(q), -1); /* bos_token: null in tokenizer_config.json */
    assert_int_equal(eng_tok_eos_id(q), 151645);
    expect_ids(q, "Hello world, I'M here 12345 你好 <|im_end|>", 1,
               (const int[]){9707, 1879, 11, 358, 27603, 1588, 220, 16, 17, 18, 19, 20, 220, 108386, 220,
                             151645, -1});
    eng_tok_free(q);
}

typedef struct {
    const eng_tokenizer *tok;
    const char *text;
    int *want;
    size_t nwant;
    int ok;
} thread_job;

static void *encode_many(void *arg) {
    thread_job *j = arg;
    j->ok = 1;
    for (int it = 0; it < 200; it++) {
        int *ids;
        size_t n;
        lt_err err = {0};
        if (eng_tok_encode(j->tok, j->text, strlen(j->text), 1, &ids, &n, &err) || n != j->nwant ||
            memcmp(ids, j->want, n * sizeof *ids) != 0)
            j->ok = 0;
        free(ids);
    }
    return NULL;
}

static void test_shared_between_threads(void **state) {
    const char *root = getenv("LATHE_ROOT");
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/fixtures/tokenizers/qwen3", root ? root : ".");
    lt_err err = {0};
    eng_tokenizer *t = eng_tok_load(path, &err);
    assert_non_null(t);
    const char *text =
        "Threads share one tokenizer: café, 東京, 12345, <|im_end|>, emoji 😀 and\r\n  spaces   ";
    int *want;
    size_t nwant;
    assert_int_equal(eng_tok_encode(t, text, strlen(text), 1, &want, &nwant, &err), 0);
    pthread_t th[4];
    thread_job jobs[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (thread_job){t, text, want, nwant, 0};
        assert_int_equal(pthread_create(&th[i], NULL, encode_many, &jobs[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_true(jobs[i].ok);
    }
    free(want);
    eng_tok_free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_byte_alphabet),
        cmocka_unit_test(test_merge_formats_agree),
        cmocka_unit_test(test_merge_rank_order),
        cmocka_unit_test(test_ignore_merges),
        cmocka_unit_test(test_added_tokens),
        cmocka_unit_test(test_nfc_normalizer),
        cmocka_unit_test(test_split_behaviors),
        cmocka_unit_test(test_digits_and_unk),
        cmocka_unit_test(test_bytelevel_decode_invalid_utf8),
        cmocka_unit_test(test_invalid_utf8_input),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_repeated_vocab_key),
        cmocka_unit_test(test_bos_eos_without_config),
        cmocka_unit_test(test_real_files),
        cmocka_unit_test(test_shared_between_threads),
    };
    return cmocka_run_group_tests_name("tokenizer", tests, NULL, NULL);
}
