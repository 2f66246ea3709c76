/* Unit tests for engine/gguf: files built by hand (a small byte builder) and by the writer, round trips
 * through memory and disk, typed metadata look-ups, one test per malformed-file rule (each checking the
 * message names the file and what is wrong), truncation at every byte of a valid file, and dequantization of
 * hand-built blocks of every type against element-by-element formulas written from the block layouts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/gguf.h"
#include "engine/safetensors.h"
#include "util/strbuf.h"
#include "util/util.h"

/* ---- byte builder ---- */

static void b_u32(strbuf *b, uint32_t v) {
    for (int i = 0; i < 4; i++)
        sb_putc(b, (char)(v >> (8 * i)));
}
static void b_u64(strbuf *b, uint64_t v) {
    for (int i = 0; i < 8; i++)
        sb_putc(b, (char)(v >> (8 * i)));
}
static void b_str(strbuf *b, const char *s) {
    b_u64(b, strlen(s));
    sb_puts(b, s);
}
static void b_head(strbuf *b, uint32_t version, uint64_t nt, uint64_t nkv) {
    b_u32(b, 0x46554747u);
    b_u32(b, version);
    b_u64(b, nt);
    b_u64(b, nkv);
}
static void b_kv_u32(strbuf *b, const char *key, uint32_t type, uint32_t v) {
    b_str(b, key);
    b_u32(b, type);
    b_u32(b, v);
}
/* tensor info with ndim dims */
static void b_tensor(strbuf *b, const char *name, int ndim, const uint64_t *ne, uint32_t type, uint64_t off) {
    b_str(b, name);
    b_u32(b, (uint32_t)ndim);
    for (int i = 0; i < ndim; i++)
        b_u64(b, ne[i]);
    b_u32(b, type);
    b_u64(b, off);
}
static void b_pad(strbuf *b, size_t a) {
    while (b->len % a)
        sb_putc(b, 0);
}
static void b_fill(strbuf *b, size_t n, int byte) {
    for (size_t i = 0; i < n; i++)
        sb_putc(b, (char)byte);
}

/* A valid file: 3 keys (a string, a string array, a u32) and two tensors: Q8_0 [2 x 32] and F32 [3]. */
static void valid_file(strbuf *b) {
    b_head(b, 3, 2, 3);
    b_str(b, "general.architecture");
    b_u32(b, GGUF_V_STR);
    b_str(b, "llama");
    b_str(b, "tokenizer.ggml.tokens");
    b_u32(b, GGUF_V_ARR);
    b_u32(b, GGUF_V_STR);
    b_u64(b, 3);
    b_str(b, "a");
    b_str(b, "");
    b_str(b, "xyz");
    b_kv_u32(b, "llama.block_count", GGUF_V_U32, 30);
    uint64_t ne[2] = {32, 2};
    b_tensor(b, "w", 2, ne, GGUF_Q8_0, 0);
    uint64_t ne1[1] = {3};
    b_tensor(b, "v", 1, ne1, GGUF_F32, 96);
    b_pad(b, 32);
    b_fill(b, 68, 0x11);
    b_fill(b, 28, 0);
    b_fill(b, 12, 0x22);
}

static gguf_file *open_buf(const strbuf *b, lt_err *err) {
    lt_err_clear(err);
    return gguf_open_memory(b->buf, b->len, "bad.gguf", err);
}

static void expect_bad_buf(const strbuf *b, const char *needle) {
    lt_err err;
    gguf_file *f = open_buf(b, &err);
    if (f || !strstr(err.msg, needle)) fprintf(stderr, "got '%s' (wanted '%s')\n", err.msg, needle);
    assert_null(f);
    assert_int_equal(err.code, 400);
    assert_non_null(strstr(err.msg, needle));
    assert_non_null(strstr(err.msg, "bad.gguf"));
}

/* ---- reading ---- */

static void test_valid_by_hand(void **state) {
    (void)state;
    strbuf b = STRBUF_INIT;
    valid_file(&b);
    lt_err err;
    gguf_file *f = open_buf(&b, &err);
    if (!f) fprintf(stderr, "%s\n", err.msg);
    assert_non_null(f);
    assert_int_equal(gguf_version(f), 3);
    assert_int_equal(gguf_alignment(f), 32);
    assert_string_equal(gguf_path(f), "bad.gguf");
    assert_int_equal(gguf_kv_count(f), 3);
    assert_string_equal(gguf_kv_at(f, 0)->key, "general.architecture");
    const char *s;
    size_t n;
    assert_int_equal(gguf_get_str(f, "general.architecture", &s, &n, &err), 0);
    assert_int_equal(n, 5);
    assert_memory_equal(s, "llama", 5);
    int64_t v = 0;
    assert_int_equal(gguf_get_int(f, "llama.block_count", &v, &err), 0);
    assert_int_equal(v, 30);
    double d = 0;
    assert_int_equal(gguf_get_float(f, "llama.block_count", &d, &err), 0);
    assert_true(d == 30.0);
    /* absent: 1, outputs untouched */
    v = 7;
    assert_int_equal(gguf_get_int(f, "nope", &v, &err), 1);
    assert_int_equal(v, 7);
    /* wrong type: -1 naming the key */
    assert_int_equal(gguf_get_int(f, "general.architecture", &v, &err), -1);
    assert_int_equal(err.code, 400);
    assert_non_null(strstr(err.msg, "general.architecture"));
    int bv;
    assert_int_equal(gguf_get_bool(f, "llama.block_count", &bv, &err), -1);
    assert_int_equal(gguf_get_str(f, "llama.block_count", &s, &n, &err), -1);
    const gguf_kv *kv = gguf_find_kv(f, "tokenizer.ggml.tokens");
    assert_non_null(kv);
    assert_int_equal(kv->type, GGUF_V_ARR);
    assert_int_equal(kv->arr_type, GGUF_V_STR);
    assert_int_equal(kv->n, 3);
    assert_int_equal(gguf_arr_str(kv, 2, &s, &n), 0);
    assert_int_equal(n, 3);
    assert_memory_equal(s, "xyz", 3);
    assert_int_equal(gguf_arr_str(kv, 1, &s, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(gguf_arr_str(kv, 0, &s, &n), 0);
    assert_memory_equal(s, "a", 1);
    assert_int_equal(gguf_arr_str(kv, 3, &s, &n), -1);
    assert_int_equal(gguf_arr_int(kv, 0, &v), -1);
    assert_int_equal(gguf_tensor_count(f), 2);
    const gguf_tensor *t = gguf_find_tensor(f, "w");
    assert_non_null(t);
    assert_ptr_equal(t, gguf_tensor_at(f, 0));
    assert_int_equal(t->type, GGUF_Q8_0);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->ne[0], 32);
    assert_int_equal(t->ne[1], 2);
    assert_int_equal(t->ne[2], 1);
    assert_int_equal(t->numel, 64);
    assert_int_equal(t->nbytes, 68);
    assert_int_equal(((const uint8_t *)t->data)[0], 0x11);
    const gguf_tensor *u = gguf_find_tensor(f, "v");
    assert_non_null(u);
    assert_int_equal(u->offset, 96);
    assert_int_equal(((const uint8_t *)u->data)[0], 0x22);
    assert_null(gguf_find_tensor(f, "x"));
    float out[64];
    assert_int_equal(gguf_tensor_to_f32(t, out, 64, &err), 0);
    /* d = f16 0x1111, q = 0x11 = 17 */
    assert_true(out[5] == 17.0f * st_f16_to_f32(0x1111));
    assert_int_equal(gguf_tensor_to_f32(t, out, 63, &err), -1);
    gguf_close(f);
    sb_free(&b);
}

/* Every proper prefix of a valid file is rejected as truncated; the message names the file. */
static void test_truncated_everywhere(void **state) {
    (void)state;
    strbuf b = STRBUF_INIT;
    valid_file(&b);
    for (size_t len = 0; len < b.len; len++) {
        lt_err err;
        lt_err_clear(&err);
        gguf_file *f = gguf_open_memory(b.buf, len, "bad.gguf", &err);
        if (f || !strstr(err.msg, "past the end of the file"))
            fprintf(stderr, "prefix %zu: '%s'\n", len, err.msg);
        assert_null(f);
        assert_int_equal(err.code, 400);
        assert_non_null(strstr(err.msg, "bad.gguf"));
        assert_non_null(strstr(err.msg, "past the end of the file"));
    }
    sb_free(&b);
}

static void test_bad_magic_version(void **state) {
    (void)state;
    strbuf b = STRBUF_INIT;
    b_u32(&b, 0x46554746u);
    b_u32(&b, 3);
    b_u64(&b, 0);
    b_u64(&b, 0);
    expect_bad_buf(&b, "bad magic");
    sb_reset(&b);
    b_head(&b, 1, 0, 0);
    expect_bad_buf(&b, "version 1 is not supported");
    sb_reset(&b);
    b_head(&b, 4, 0, 0);
    expect_bad_buf(&b, "unsupported GGUF version 4");
    sb_reset(&b);
    b_head(&b, 0, 0, 0);
    expect_bad_buf(&b, "unsupported GGUF version 0");
    /* v2 with no tensors is fine */
    sb_reset(&b);
    b_head(&b, 2, 0, 1);
    b_kv_u32(&b, "k", GGUF_V_U32, 1);
    lt_err err;
    gguf_file *f = open_buf(&b, &err);
    assert_non_null(f);
    assert_int_equal(gguf_version(f), 2);
    gguf_close(f);
    sb_free(&b);
}

static void test_bad_counts_and_strings(void **state) {
    (void)state;
    strbuf b = STRBUF_INIT;
    b_head(&b, 3, 0, UINT64_MAX);
    expect_bad_buf(&b, "kv_count");
    sb_reset(&b);
    b_head(&b, 3, 1000000, 0);
    expect_bad_buf(&b, "tensor_count");
    sb_reset(&b);
    b_head(&b, 3, 0, 1);
    b_u64(&b, 1000); /* key length past EOF */
    b_fill(&b, 12, 'k');
    expect_bad_buf(&b, "string length 1000 runs past the end of the file");
    sb_reset(&b);
    b_head(&b, 3, 0, 1);
    b_str(&b, "name");
    b_u32(&b, GGUF_V_STR);
    b_u64(&b, UINT64_MAX);
    expect_bad_buf(&b, "value of key 'name': string length");
    sb_reset(&b);
    b_head(&b, 3, 0, 1);
    b_str(&b, "strs");
    b_u32(&b, GGUF_V_ARR);
    b_u32(&b, GGUF_V_STR);
    b_u64(&b, 2);
    b_str(&b, "ok");
    b_u64(&b, 99);
    b_fill(&b, 4, 'x');
    expect_bad_buf(&b, "element of key 'strs': string length 99");
    sb_reset(&b);
    b_head(&b, 3, 0, 1);
    b_str(&b, "ints");
    b_u32(&b, GGUF_V_ARR);
    b_u32(&b, GGUF_V_I32);
    b_u64(&b, 1ull << 62);
    b_fill(&b, 16, 0);
    expect_bad_buf(&b, "key 'ints': array of 4611686018427387904 i32 values runs past the end");
    sb_reset(&b); /* a key with an embedded NUL */
    b_head(&b, 3, 0, 1);
    b_u64(&b, 3);
    sb_append(&b, "a\0b", 3);
    b_u32(&b, GGUF_V_U8);
    sb_putc(&b, 1);
    expect_bad_buf(&b, "contains a NUL byte");
    sb_free(&b);
}

static void test_bad_types(void **state) {
    (void)state;
    strbuf b = STRBUF_INIT;
    b_head(&b, 3, 0, 1);
    b_kv_u32(&b, "odd", 13, 0);
    expect_bad_buf(&b, "key 'odd': unknown value type 13");
    sb_reset(&b);
    b_head(&b, 3, 0, 1);
    b_str(&b, "arr");
    b_u32(&b, GGUF_V_ARR);
    b_u32(&b, 77);
    b_u64(&b, 1);
    b_u32(&b, 0);
    expect_bad_buf(&b, "key 'arr': unknown array element type 77");
    sb_reset(&b);
    b_head(&b, 3, 0, 1);
    b_str(&b, "nest");
    b_u32(&b, GGUF_V_ARR);
    b_u32(&b, GGUF_V_ARR);
    b_u64(&b, 1);
    b_u32(&b, GGUF_V_U8);
    b_u64(&b, 0);
    expect_bad_buf(&b, "key 'nest': arrays of arrays are not supported");
    /* unknown tensor type (4 was Q4_2, removed from ggml) */
    sb_reset(&b);
    b_head(&b, 3, 1, 0);
    uint64_t ne[1] = {32};
    b_tensor(&b, "t", 1, ne, 4, 0);
    b_pad(&b, 32);
    b_fill(&b, 128, 0);
    expect_bad_buf(&b, "tensor 't': unknown tensor type 4");
    sb_free(&b);
}

/* A one-tensor file with the given info and `data` bytes of data. */
static void one_tensor(strbuf *b, const char *name, int ndim, const uint64_t *ne, uint32_t type, uint64_t off,
                       size_t data) {
    sb_reset(b);
    b_head(b, 3, 1, 0);
    b_tensor(b, name, ndim, ne, type, off);
    b_pad(b, 32);
    b_fill(b, data, 0);
}

static void test_bad_shapes(void **state) {
    (void)state;
    strbuf b = STRBUF_INIT;
    uint64_t ne[5] = {4, 4, 4, 4, 4};
    one_tensor(&b, "t0", 0, ne, GGUF_F32, 0, 64);
    expect_bad_buf(&b, "tensor 't0': n_dims 0 outside 1..4");
    one_tensor(&b, "t5", 5, ne, GGUF_F32, 0, 64);
    expect_bad_buf(&b, "tensor 't5': n_dims 5 outside 1..4");
    uint64_t z[2] = {4, 0};
    one_tensor(&b, "tz", 2, z, GGUF_F32, 0, 64);
    expect_bad_buf(&b, "tensor 'tz': dimension 1 is 0");
    uint64_t big[2] = {1ull << 40, 1ull << 40};
    one_tensor(&b, "tbig", 2, big, GGUF_F32, 0, 64);
    expect_bad_buf(&b, "tensor 'tbig': the element count overflows");
    uint64_t huge[1] = {UINT64_MAX};
    one_tensor(&b, "th", 1, huge, GGUF_F32, 0, 64);
    expect_bad_buf(&b, "tensor 'th': dimension 0");
    uint64_t bytes[1] = {1ull << 62}; /* numel fits, bytes (x4) do not */
    one_tensor(&b, "tb", 1, bytes, GGUF_F32, 0, 64);
    expect_bad_buf(&b, "tensor 'tb': the byte size overflows");
    uint64_t q[2] = {16, 2};
    one_tensor(&b, "tq", 2, q, GGUF_Q8_0, 0, 64);
    expect_bad_buf(&b, "tensor 'tq': row length 16 is not a multiple of the Q8_0 block size 32");
    uint64_t k[1] = {128};
    one_tensor(&b, "tk", 1, k, GGUF_Q6_K, 0, 512);
    expect_bad_buf(&b, "row length 128 is not a multiple of the Q6_K block size 256");
    sb_free(&b);
}

static void test_bad_offsets(void **state) {
    (void)state;
    strbuf b = STRBUF_INIT;
    uint64_t ne[1] = {4};
    one_tensor(&b, "mis", 1, ne, GGUF_F32, 8, 64);
    expect_bad_buf(&b, "tensor 'mis': offset 8 is not a multiple of the alignment 32");
    one_tensor(&b, "past", 1, ne, GGUF_F32, 32, 40);
    expect_bad_buf(&b, "tensor 'past': data (offset 32, 16 bytes) runs past the end of the file");
    one_tensor(&b, "far", 1, ne, GGUF_F32, 1ull << 63, 64);
    expect_bad_buf(&b, "tensor 'far'");
    /* truncated data: the last tensor lacks bytes */
    one_tensor(&b, "short", 1, ne, GGUF_F32, 0, 15);
    expect_bad_buf(&b, "tensor 'short': data (offset 0, 16 bytes) runs past the end of the file");
    /* overlap */
    sb_reset(&b);
    b_head(&b, 3, 2, 0);
    uint64_t ne2[1] = {16};
    b_tensor(&b, "a", 1, ne2, GGUF_F32, 0);
    b_tensor(&b, "b", 1, ne, GGUF_F32, 32);
    b_pad(&b, 32);
    b_fill(&b, 96, 0);
    expect_bad_buf(&b, "tensors 'a' and 'b' overlap");
    /* same offset, both */
    sb_reset(&b);
    b_head(&b, 3, 2, 0);
    b_tensor(&b, "a", 1, ne, GGUF_F32, 0);
    b_tensor(&b, "b", 1, ne, GGUF_F32, 0);
    b_pad(&b, 32);
    b_fill(&b, 32, 0);
    expect_bad_buf(&b, "overlap");
    /* adjacent (not overlapping) with a custom alignment 16 is fine */
    sb_reset(&b);
    b_head(&b, 3, 2, 1);
    b_kv_u32(&b, "general.alignment", GGUF_V_U32, 16);
    b_tensor(&b, "a", 1, ne, GGUF_F32, 0);
    b_tensor(&b, "b", 1, ne, GGUF_F32, 16);
    b_pad(&b, 16);
    b_fill(&b, 32, 0);
    lt_err err;
    gguf_file *f = open_buf(&b, &err);
    if (!f) fprintf(stderr, "%s\n", err.msg);
    assert_non_null(f);
    assert_int_equal(gguf_alignment(f), 16);
    gguf_close(f);
    sb_free(&b);
}

static void test_duplicates_and_alignment(void **state) {
    (void)state;
    strbuf b = STRBUF_INIT;
    b_head(&b, 3, 0, 2);
    b_kv_u32(&b, "x", GGUF_V_U32, 1);
    b_kv_u32(&b, "x", GGUF_V_U32, 2);
    expect_bad_buf(&b, "duplicate key 'x'");
    sb_reset(&b);
    b_head(&b, 3, 2, 0);
    uint64_t ne[1] = {4};
    b_tensor(&b, "w", 1, ne, GGUF_F32, 0);
    b_tensor(&b, "w", 1, ne, GGUF_F32, 32);
    b_pad(&b, 32);
    b_fill(&b, 64, 0);
    expect_bad_buf(&b, "duplicate tensor name 'w'");
    uint32_t bad[] = {0, 3, 24, 0x80000001u};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sb_reset(&b);
        b_head(&b, 3, 0, 1);
        b_kv_u32(&b, "general.alignment", GGUF_V_U32, bad[i]);
        expect_bad_buf(&b, "key 'general.alignment' is");
        expect_bad_buf(&b, "not a power of two");
    }
    sb_reset(&b);
    b_head(&b, 3, 0, 1);
    b_kv_u32(&b, "general.alignment", GGUF_V_I32, 32);
    expect_bad_buf(&b, "key 'general.alignment' has type i32, expected u32");
    sb_free(&b);
}

static void test_typed_getters(void **state) {
    (void)state;
    gguf_writer *w = gguf_writer_new();
    gguf_writer_set_u32(w, "u", 4000000000u);
    gguf_writer_set_i32(w, "i", -5);
    gguf_writer_set_f32(w, "f", 0.25f);
    gguf_writer_set_bool(w, "b", 1);
    gguf_writer_set_str(w, "s", "hello");
    gguf_writer_set_str(w, "s", "again"); /* replaces */
    int32_t iv[3] = {1, -2, 3};
    gguf_writer_set_arr_i32(w, "ai", iv, 3);
    float fv[2] = {1.5f, -0.5f};
    gguf_writer_set_arr_f32(w, "af", fv, 2);
    const char *sv[2] = {"x", "yy"};
    gguf_writer_set_arr_str(w, "as", sv, NULL, 2);
    void *buf;
    size_t len;
    lt_err err;
    assert_int_equal(gguf_writer_serialize(w, &buf, &len, &err), 0);
    gguf_writer_free(w);
    gguf_file *f = gguf_open_memory(buf, len, "mem", &err);
    assert_non_null(f);
    assert_int_equal(gguf_kv_count(f), 9); /* 8 + general.alignment */
    assert_string_equal(gguf_kv_at(f, 0)->key, "general.alignment");
    int64_t v;
    double d;
    int bv;
    const char *s;
    size_t n;
    assert_int_equal(gguf_get_int(f, "u", &v, &err), 0);
    assert_int_equal(v, 4000000000ll);
    assert_int_equal(gguf_get_int(f, "i", &v, &err), 0);
    assert_int_equal(v, -5);
    assert_int_equal(gguf_get_float(f, "f", &d, &err), 0);
    assert_true(d == 0.25);
    assert_int_equal(gguf_get_float(f, "i", &d, &err), 0);
    assert_true(d == -5.0);
    assert_int_equal(gguf_get_int(f, "f", &v, &err), -1);
    assert_non_null(strstr(err.msg, "key 'f' has type f32"));
    assert_int_equal(gguf_get_bool(f, "b", &bv, &err), 0);
    assert_int_equal(bv, 1);
    assert_int_equal(gguf_get_str(f, "s", &s, &n, &err), 0);
    assert_int_equal(n, 5);
    assert_memory_equal(s, "again", 5);
    assert_int_equal(gguf_get_str(f, "ai", &s, &n, &err), -1);
    assert_non_null(strstr(err.msg, "has type array"));
    const gguf_kv *kv = gguf_find_kv(f, "ai");
    assert_int_equal(gguf_arr_int(kv, 1, &v), 0);
    assert_int_equal(v, -2);
    assert_int_equal(gguf_arr_float(kv, 2, &d), 0);
    assert_true(d == 3.0);
    assert_int_equal(gguf_arr_int(kv, 3, &v), -1);
    kv = gguf_find_kv(f, "af");
    assert_int_equal(gguf_arr_float(kv, 0, &d), 0);
    assert_true(d == 1.5);
    assert_int_equal(gguf_arr_int(kv, 0, &v), -1);
    assert_int_equal(gguf_arr_str(kv, 0, &s, &n), -1);
    kv = gguf_find_kv(f, "as");
    assert_int_equal(gguf_arr_str(kv, 1, &s, &n), 0);
    assert_memory_equal(s, "yy", 2);
    assert_int_equal(gguf_arr_str(gguf_find_kv(f, "u"), 0, &s, &n), -1);
    gguf_close(f);
    free(buf);
    /* u64 above INT64_MAX is out of range for gguf_get_int, fine as a double */
    strbuf b = STRBUF_INIT;
    b_head(&b, 3, 0, 1);
    b_str(&b, "big");
    b_u32(&b, GGUF_V_U64);
    b_u64(&b, UINT64_MAX);
    f = open_buf(&b, &err);
    assert_non_null(f);
    assert_int_equal(gguf_get_int(f, "big", &v, &err), -1);
    assert_non_null(strstr(err.msg, "out of range"));
    assert_int_equal(gguf_get_float(f, "big", &d, &err), 0);
    assert_true(d == 18446744073709551615.0);
    gguf_close(f);
    sb_free(&b);
}

/* ---- writer ---- */

static uint32_t rng = 12345;
static uint32_t rnd(void) {
    rng = rng * 1103515245u + 12345u;
    return rng >> 8;
}

/* Random bytes for n elements of type, with every f16 scale field set to a sane value. */
static uint8_t *random_blocks(int type, int64_t n, size_t *bytes) {
    size_t bb = gguf_block_bytes(type);
    int64_t nb = n / gguf_block_elems(type);
    *bytes = (size_t)nb * bb;
    uint8_t *p = malloc(*bytes);
    for (size_t i = 0; i < *bytes; i++)
        p[i] = (uint8_t)rnd();
    for (int64_t k = 0; k < nb; k++) {
        uint8_t *blk = p + k * bb;
        uint16_t h = st_f32_to_f16(((float)(rnd() % 1000) + 1.0f) / 4096.0f);
        uint16_t h2 = st_f32_to_f16(((float)(rnd() % 1000)) / 8192.0f);
        switch (type) {
        case GGUF_F16:
        case GGUF_BF16:
        case GGUF_F32:
            break;
        case GGUF_Q6_K:
            blk[208] = (uint8_t)h;
            blk[209] = (uint8_t)(h >> 8);
            break;
        default:
            blk[0] = (uint8_t)h;
            blk[1] = (uint8_t)(h >> 8);
            if (type == GGUF_Q4_1 || type == GGUF_Q5_1 || type == GGUF_Q4_K || type == GGUF_Q5_K) {
                blk[2] = (uint8_t)h2;
                blk[3] = (uint8_t)(h2 >> 8);
            }
        }
    }
    if (type == GGUF_F16)
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = st_f32_to_f16((float)((int)(rnd() % 2001) - 1000) / 64.0f);
            p[2 * i] = (uint8_t)h;
            p[2 * i + 1] = (uint8_t)(h >> 8);
        }
    return p;
}

static const int ALL_TYPES[] = {GGUF_F32,  GGUF_F16,  GGUF_BF16, GGUF_Q4_0, GGUF_Q4_1, GGUF_Q5_0,
                                GGUF_Q5_1, GGUF_Q8_0, GGUF_Q4_K, GGUF_Q5_K, GGUF_Q6_K};
#define N_TYPES (sizeof ALL_TYPES / sizeof ALL_TYPES[0])

static void check_same(const gguf_file *f, uint8_t **data, const int64_t (*ne)[2]) {
    assert_int_equal(gguf_tensor_count(f), N_TYPES);
    for (size_t i = 0; i < N_TYPES; i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        char name[32];
        snprintf(name, sizeof name, "t.%s", gguf_type_name(ALL_TYPES[i]));
        assert_string_equal(t->name, name);
        assert_int_equal(t->type, ALL_TYPES[i]);
        assert_int_equal(t->ne[0], ne[i][0]);
        assert_int_equal(t->ne[1], ne[i][1]);
        assert_int_equal((uintptr_t)t->offset % 32, 0);
        assert_memory_equal(t->data, data[i], t->nbytes);
    }
}

static void test_writer_roundtrip(void **state) {
    (void)state;
    gguf_writer *w = gguf_writer_new();
    gguf_writer_set_str(w, "general.architecture", "llama");
    uint8_t *data[N_TYPES];
    int64_t ne[N_TYPES][2];
    lt_err err;
    for (size_t i = 0; i < N_TYPES; i++) {
        int be = gguf_block_elems(ALL_TYPES[i]);
        ne[i][0] = be == 1 ? 7 : 2 * be;
        ne[i][1] = 3;
        size_t nb;
        data[i] = random_blocks(ALL_TYPES[i], ne[i][0] * 3, &nb);
        assert_int_equal(nb, gguf_row_bytes(ALL_TYPES[i], ne[i][0]) * 3);
        char name[32];
        snprintf(name, sizeof name, "t.%s", gguf_type_name(ALL_TYPES[i]));
        assert_int_equal(gguf_writer_add_tensor(w, name, ALL_TYPES[i], 2, ne[i], data[i], &err), 0);
    }
    /* writer errors */
    int64_t bad[2] = {16, 1};
    assert_int_equal(gguf_writer_add_tensor(w, "t.F32", GGUF_F32, 2, ne[0], data[0], &err), -1);
    assert_non_null(strstr(err.msg, "duplicate tensor 't.F32'"));
    assert_int_equal(gguf_writer_add_tensor(w, "q", GGUF_Q8_0, 2, bad, data[0], &err), -1);
    assert_non_null(strstr(err.msg, "not a multiple of the Q8_0 block size 32"));
    assert_int_equal(gguf_writer_add_tensor(w, "q", GGUF_F32, 0, bad, data[0], &err), -1);
    assert_non_null(strstr(err.msg, "ndim 0"));
    assert_int_equal(gguf_writer_add_tensor(w, "q", (gguf_type)4, 1, bad, data[0], &err), -1);
    assert_non_null(strstr(err.msg, "unknown tensor type 4"));
    int64_t zero[2] = {0, 1};
    assert_int_equal(gguf_writer_add_tensor(w, "q", GGUF_F32, 2, zero, data[0], &err), -1);
    void *buf;
    size_t len;
    assert_int_equal(gguf_writer_serialize(w, &buf, &len, &err), 0);
    gguf_file *f = gguf_open_memory(buf, len, "mem", &err);
    if (!f) fprintf(stderr, "%s\n", err.msg);
    assert_non_null(f);
    check_same(f, data, ne);
    gguf_close(f);
    /* to disk: same bytes, mmap reader */
    char dir[] = "/tmp/lathe-gguf-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *path = lt_path_join(dir, "m.gguf");
    assert_int_equal(gguf_writer_write(w, path, &err), 0);
    size_t flen;
    char *disk = lt_read_file(path, &flen, &err);
    assert_int_equal(flen, len);
    assert_memory_equal(disk, buf, len);
    free(disk);
    f = gguf_open(path, &err);
    assert_non_null(f);
    check_same(f, data, ne);
    assert_string_equal(gguf_path(f), path);
    gguf_close(f);
    char *nope = lt_path_join(dir, "nope.gguf");
    assert_null(gguf_open(nope, &err));
    assert_int_equal(err.code, 404);
    assert_null(gguf_open(dir, &err));
    assert_int_equal(err.code, 400);
    assert_non_null(strstr(err.msg, "not a regular file"));
    /* a write into a missing directory fails cleanly */
    char *bad_path = lt_path_join(nope, "x.gguf");
    assert_int_equal(gguf_writer_write(w, bad_path, &err), -1);
    assert_int_equal(err.code, 500);
    free(bad_path);
    free(nope);
    lt_rm_rf(dir);
    free(path);
    free(buf);
    for (size_t i = 0; i < N_TYPES; i++)
        free(data[i]);
    gguf_writer_free(w);
}

/* ---- dequantization: element-by-element formulas from the block layouts ---- */

static float h2f(const uint8_t *p) {
    return st_f16_to_f32((uint16_t)(p[0] | (p[1] << 8)));
}

/* Expected value of element e (0..block-1) of one block, computed independently of the library's loops. */
static float expect_elem(int type, const uint8_t *b, int e) {
    switch (type) {
    case GGUF_Q4_0: {
        int q = e < 16 ? (b[2 + e] & 15) : (b[2 + e - 16] >> 4);
        return (float)(q - 8) * h2f(b);
    }
    case GGUF_Q4_1: {
        int q = e < 16 ? (b[4 + e] & 15) : (b[4 + e - 16] >> 4);
        return (float)q * h2f(b) + h2f(b + 2);
    }
    case GGUF_Q5_0:
    case GGUF_Q5_1: {
        int o = type == GGUF_Q5_0 ? 2 : 4;
        uint32_t qh = (uint32_t)b[o] | ((uint32_t)b[o + 1] << 8) | ((uint32_t)b[o + 2] << 16) |
                      ((uint32_t)b[o + 3] << 24);
        const uint8_t *qs = b + o + 4;
        int q = e < 16 ? (qs[e] & 15) : (qs[e - 16] >> 4);
        q |= (int)((qh >> e) & 1) << 4;
        if (type == GGUF_Q5_0) return (float)(q - 16) * h2f(b);
        return (float)q * h2f(b) + h2f(b + 2);
    }
    case GGUF_Q8_0:
        return (float)(int8_t)b[2 + e] * h2f(b);
    case GGUF_Q4_K:
    case GGUF_Q5_K: {
        const uint8_t *sc = b + 4;
        int sub = e / 32, chunk = e / 64, l = e % 32, hi = (e / 32) % 2;
        int s, m;
        if (sub < 4) {
            s = sc[sub] & 63;
            m = sc[sub + 4] & 63;
        } else {
            s = (sc[sub + 4] & 15) | ((sc[sub - 4] >> 6) << 4);
            m = (sc[sub + 4] >> 4) | ((sc[sub] >> 6) << 4);
        }
        const uint8_t *qs = b + (type == GGUF_Q4_K ? 16 : 48);
        int q = hi ? (qs[chunk * 32 + l] >> 4) : (qs[chunk * 32 + l] & 15);
        if (type == GGUF_Q5_K) q += ((b[16 + l] >> (2 * chunk + hi)) & 1) * 16;
        return (h2f(b) * (float)s) * (float)q - h2f(b + 2) * (float)m;
    }
    case GGUF_Q6_K: {
        int half = e / 128, r = e % 128, g = r / 32, l = r % 32;
        const uint8_t *ql = b + half * 64, *qh = b + 128 + half * 32;
        const int8_t *sc = (const int8_t *)(b + 192 + half * 8);
        int lo = (g & 1) ? ql[l + 32] : ql[l];
        lo = g >= 2 ? lo >> 4 : lo & 15;
        int q = (lo | (((qh[l] >> (2 * g)) & 3) << 4)) - 32;
        return h2f(b + 208) * (float)sc[l / 16 + 2 * g] * (float)q;
    }
    }
    return NAN;
}

static void test_dequant_blocks(void **state) {
    (void)state;
    const int qtypes[] = {GGUF_Q4_0, GGUF_Q4_1, GGUF_Q5_0, GGUF_Q5_1,
                          GGUF_Q8_0, GGUF_Q4_K, GGUF_Q5_K, GGUF_Q6_K};
    for (size_t k = 0; k < sizeof qtypes / sizeof qtypes[0]; k++) {
        int type = qtypes[k], be = gguf_block_elems(type);
        size_t bb = gguf_block_bytes(type), nbytes;
        uint8_t *blocks = random_blocks(type, 3 * be, &nbytes);
        float *y = malloc(3 * be * sizeof *y);
        assert_int_equal(gguf_dequantize(type, blocks, y, 3 * be), 0);
        for (int blk = 0; blk < 3; blk++)
            for (int e = 0; e < be; e++) {
                float want = expect_elem(type, blocks + blk * bb, e);
                if (y[blk * be + e] != want)
                    fprintf(stderr, "%s block %d elem %d: %g vs %g\n", gguf_type_name(type), blk, e,
                            y[blk * be + e], want);
                assert_true(y[blk * be + e] == want);
            }
        assert_int_equal(gguf_dequantize(type, blocks, y, be - 1), -1);
        free(y);
        free(blocks);
    }
    assert_int_equal(gguf_dequantize(4, "", NULL, 0), -1);
    /* exact hand values: Q4_0 with d = 0.5, qs[j] = j | (15 - j) << 4 */
    uint8_t q40[18] = {0x00, 0x38};
    for (int j = 0; j < 16; j++)
        q40[2 + j] = (uint8_t)(j | ((15 - j) << 4));
    float y[32];
    assert_int_equal(gguf_dequantize(GGUF_Q4_0, q40, y, 32), 0);
    for (int j = 0; j < 16; j++) {
        assert_true(y[j] == (j - 8) * 0.5f);
        assert_true(y[j + 16] == (7 - j) * 0.5f);
    }
    /* Q6_K: d = 1, all scales 2, ql = 0x21 (lo 1, hi 2), qh = 0 -> q = 1 - 32 / 2 - 32 */
    uint8_t q6[210];
    memset(q6, 0x21, 128);
    memset(q6 + 128, 0, 64);
    memset(q6 + 192, 2, 16);
    q6[208] = 0x00;
    q6[209] = 0x3c;
    float y6[256];
    assert_int_equal(gguf_dequantize(GGUF_Q6_K, q6, y6, 256), 0);
    assert_true(y6[0] == -62.0f && y6[32] == -62.0f && y6[64] == -60.0f && y6[255] == -60.0f);
    /* F16 / BF16: exact widening of every pattern */
    uint8_t h[2];
    float out;
    for (uint32_t v = 0; v < 65536; v++) {
        h[0] = (uint8_t)v;
        h[1] = (uint8_t)(v >> 8);
        assert_int_equal(gguf_dequantize(GGUF_F16, h, &out, 1), 0);
        float want = st_f16_to_f32((uint16_t)v);
        assert_memory_equal(&out, &want, 4);
        assert_int_equal(gguf_dequantize(GGUF_BF16, h, &out, 1), 0);
        uint32_t bits = v << 16;
        assert_memory_equal(&out, &bits, 4);
    }
}

static void test_quantize(void **state) {
    (void)state;
    float x[64];
    for (int i = 0; i < 64; i++)
        x[i] = (float)(i - 20) * 0.1f;
    uint8_t q[68];
    assert_int_equal(gguf_quantize(GGUF_Q8_0, x, q, 64), 0);
    /* block 0: amax = 2.0 (i = 0), d = 2/127, q = round(x * 127 / 2) */
    float d = h2f(q);
    assert_true(d == st_f16_to_f32(st_f32_to_f16(2.0f / 127.0f)));
    assert_int_equal((int8_t)q[2], -127);
    assert_int_equal((int8_t)q[2 + 20], 0);
    assert_int_equal((int8_t)q[2 + 25], (int)roundf(0.5f * (127.0f / 2.0f) * (1.0f / 1.0f)));
    float y[64];
    assert_int_equal(gguf_dequantize(GGUF_Q8_0, q, y, 64), 0);
    for (int i = 0; i < 64; i++)
        assert_true(fabsf(y[i] - x[i]) <= 0.02f);
    float zero[32] = {0};
    assert_int_equal(gguf_quantize(GGUF_Q8_0, zero, q, 32), 0);
    assert_int_equal(q[0] | q[1], 0);
    assert_int_equal(gguf_quantize(GGUF_Q8_0, x, q, 31), -1);
    assert_int_equal(gguf_quantize(GGUF_Q4_K, x, q, 256), -1);
    uint8_t h[4];
    float two[2] = {1.0f / 3.0f, -65520.0f};
    assert_int_equal(gguf_quantize(GGUF_F16, two, h, 2), 0);
    assert_int_equal(h[0] | (h[1] << 8), st_f32_to_f16(1.0f / 3.0f));
    assert_int_equal(h[2] | (h[3] << 8), 0xfc00); /* rounds to -inf */
    assert_int_equal(gguf_quantize(GGUF_BF16, two, h, 2), 0);
    assert_int_equal(h[0] | (h[1] << 8), 0x3eab); /* 0x3eaaaaab rounds up */
    float back;
    assert_int_equal(gguf_quantize(GGUF_F32, two, &back, 1), 0);
    assert_true(back == two[0]);
    assert_string_equal(gguf_type_name(GGUF_Q5_K), "Q5_K");
    assert_null(gguf_type_name(5));
    assert_int_equal(gguf_row_bytes(GGUF_Q4_K, 512), 288);
    assert_int_equal(gguf_row_bytes(GGUF_Q4_K, 100), 0);
    assert_int_equal(gguf_block_bytes(99), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_by_hand),     cmocka_unit_test(test_truncated_everywhere),
        cmocka_unit_test(test_bad_magic_version), cmocka_unit_test(test_bad_counts_and_strings),
        cmocka_unit_test(test_bad_types),         cmocka_unit_test(test_bad_shapes),
        cmocka_unit_test(test_bad_offsets),       cmocka_unit_test(test_duplicates_and_alignment),
        cmocka_unit_test(test_typed_getters),     cmocka_unit_test(test_writer_roundtrip),
        cmocka_unit_test(test_dequant_blocks),    cmocka_unit_test(test_quantize),
    };
    return cmocka_run_group_tests_name("gguf", tests, NULL, NULL);
}
