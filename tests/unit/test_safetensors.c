/* Unit tests for engine/safetensors: writer -> reader round trips (memory, file, model dir, sharded index),
 * exact BF16/F16 conversions over every 16-bit pattern, rounding edge cases, and one test per malformed-file
 * rule, each checking the error names what is wrong. */
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

#include "engine/safetensors.h"
#include "util/strbuf.h"
#include "util/util.h"

/* ---- helpers ---- */

static char *make_tmpdir(void) {
    char tmpl[] = "/tmp/lathe-st-XXXXXX";
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    return lt_strdup(d);
}

/* Builds [8-byte len][header][data_len bytes of 0x11] from a header string. */
static uint8_t *image(const char *header, size_t data_len, size_t *len) {
    size_t n = strlen(header);
    *len = 8 + n + data_len;
    uint8_t *b = malloc(*len ? *len : 1);
    assert_non_null(b);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)n >> (8 * i));
    memcpy(b + 8, header, n);
    memset(b + 8 + n, 0x11, data_len);
    return b;
}

/* Expects the header + data to be rejected with a message containing `needle`. */
static void expect_bad(const char *header, size_t data_len, const char *needle) {
    size_t len;
    uint8_t *b = image(header, data_len, &len);
    lt_err err;
    lt_err_clear(&err);
    st_reader *r = st_open_memory(b, len, "bad.safetensors", &err);
    if (r || !strstr(err.msg, needle))
        fprintf(stderr, "header %s\n  -> '%s' (wanted '%s')\n", header, err.msg, needle);
    assert_null(r);
    assert_int_equal(err.code, 400);
    assert_non_null(strstr(err.msg, needle));
    assert_non_null(strstr(err.msg, "bad.safetensors"));
    free(b);
}

static void write_bytes(const char *path, const void *p, size_t n) {
    lt_err err;
    assert_int_equal(lt_write_file_atomic(path, p, n, 0644, &err), 0);
}

/* ---- conversions ---- */

static void test_bf16_all_patterns(void **state) {
    for (uint32_t h = 0; h < 65536; h++) {
        float f = st_bf16_to_f32((uint16_t)h);
        uint32_t bits;
        memcpy(&bits, &f, 4);
        assert_int_equal(bits, h << 16); /* widening is exact */
        uint16_t back = st_f32_to_bf16(f);
        if (isnan(f)) {
            assert_true(isnan(st_bf16_to_f32(back)));
            assert_int_equal(back | 0x40, h | 0x40); /* sign and payload kept, made quiet */
        } else {
            assert_int_equal(back, h);
        }
    }
}

static void test_f16_all_patterns(void **state) {
    for (uint32_t h = 0; h < 65536; h++) {
        float f = st_f16_to_f32((uint16_t)h);
        uint16_t back = st_f32_to_f16(f);
        if (isnan(f)) {
            assert_true(isnan(st_f16_to_f32(back)));
            assert_int_equal(back | 0x200, h | 0x200);
            continue;
        }
        assert_int_equal(back, h);
        /* value check against the definition */
        int e = (h >> 10) & 31, m = h & 1023;
        double v = e == 0 ? ldexp(m, -24) : e == 31 ? INFINITY : ldexp(1024 + m, e - 25);
        if (h & 0x8000) v = -v;
        assert_true((double)f == v);
    }
}

static void test_rounding(void **state) {
    assert_int_equal(st_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(st_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);     /* tie -> even */
    assert_int_equal(st_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82); /* tie -> even (up) */
    assert_int_equal(st_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
    assert_int_equal(st_f32_to_bf16(INFINITY), 0x7f80);
    assert_int_equal(st_f32_to_bf16(3.4028235e38f), 0x7f80); /* rounds past the largest bf16 */
    assert_int_equal(st_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(st_f32_to_f16(-2.0f), 0xc000);
    assert_int_equal(st_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(st_f32_to_f16(65519.0f), 0x7bff);
    assert_int_equal(st_f32_to_f16(65520.0f), 0x7c00); /* tie at the top rounds to even = inf */
    assert_int_equal(st_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);
    assert_int_equal(st_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);
    assert_int_equal(st_f32_to_f16(0x1p-24f), 0x0001);
    assert_int_equal(st_f32_to_f16(0x1p-25f), 0x0000);     /* tie -> even zero */
    assert_int_equal(st_f32_to_f16(3 * 0x1p-26f), 0x0001); /* 0.75 ulp rounds up */
    assert_int_equal(st_f32_to_f16(3 * 0x1p-25f), 0x0002); /* 1.5 ulp tie -> even */
    assert_int_equal(st_f32_to_f16(-0x1p-30f), 0x8000);
    assert_int_equal(st_f32_to_f16(0x1p-14f), 0x0400);            /* smallest normal */
    assert_int_equal(st_f32_to_f16(0x1p-14f - 0x1p-25f), 0x0400); /* subnormal rounding carries into normal */
    assert_true(st_f16_to_f32(0x0001) == 0x1p-24f);
    assert_true(isinf(st_f16_to_f32(0xfc00)) && st_f16_to_f32(0xfc00) < 0);
    /* unaligned bulk conversion */
    uint8_t buf[9] = {0, 0x80, 0x3f, 0x00, 0xc0, 0, 0, 0, 0};
    float out[2];
    st_convert_to_f32(ST_BF16, buf + 1, out, 2);
    assert_true(out[0] == 1.0f && out[1] == -2.0f);
}

/* ---- round trips ---- */

static void test_roundtrip_memory(void **state) {
    float a[6] = {1.5f, -2.25f, 3.0f, 0.1f, -0.0f, 1e-3f};
    float b[4] = {1.0f, 0.5f, -0.333333f, 65504.0f};
    float s = 42.0f;
    uint16_t raw[3] = {0x3f80, 0x4000, 0xbf80}; /* BF16 1, 2, -1 */
    st_writer *w = st_writer_new();
    lt_err err;
    lt_err_clear(&err);
    int64_t sa[2] = {2, 3}, sb[1] = {4}, sr[1] = {3}, se[2] = {0, 5};
    assert_int_equal(st_writer_add_f32(w, "a.weight", ST_F32, 2, sa, a, &err), 0);
    assert_int_equal(st_writer_add_f32(w, "b.bf16", ST_BF16, 1, sb, b, &err), 0);
    assert_int_equal(st_writer_add_f32(w, "b.f16", ST_F16, 1, sb, b, &err), 0);
    assert_int_equal(st_writer_add_f32(w, "scalar", ST_F32, 0, NULL, &s, &err), 0);
    assert_int_equal(st_writer_add(w, "raw", ST_BF16, 1, sr, raw, &err), 0);
    assert_int_equal(st_writer_add_f32(w, "empty", ST_F32, 2, se, NULL, &err), 0);
    assert_int_equal(st_writer_add_f32(w, "a.weight", ST_F32, 2, sa, a, &err), -1); /* duplicate */
    assert_non_null(strstr(err.msg, "added twice"));
    assert_int_equal(st_writer_add_f32(w, "__metadata__", ST_F32, 2, sa, a, &err), -1);
    int64_t neg[1] = {-1};
    assert_int_equal(st_writer_add_f32(w, "neg", ST_F32, 1, neg, a, &err), -1);
    st_writer_set_metadata(w, "note", "he said \"hi\"\n");
    void *buf;
    size_t len;
    assert_int_equal(st_writer_serialize(w, &buf, &len, &err), 0);
    st_writer_free(w);

    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | ((uint8_t *)buf)[i];
    assert_int_equal(n % 8, 0); /* header padded to 8 */

    st_reader *r = st_open_memory(buf, len, "mem", &err);
    assert_non_null(r);
    assert_int_equal(st_count(r), 6);
    assert_string_equal(st_metadata(r, "format"), "pt");
    assert_string_equal(st_metadata(r, "note"), "he said \"hi\"\n");
    assert_null(st_metadata(r, "absent"));
    /* sorted by name */
    for (size_t i = 1; i < st_count(r); i++)
        assert_true(strcmp(st_at(r, i - 1)->name, st_at(r, i)->name) < 0);

    const st_tensor *t = st_find(r, "a.weight");
    assert_non_null(t);
    assert_int_equal(t->dtype, ST_F32);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], 2);
    assert_int_equal(t->shape[1], 3);
    assert_int_equal(t->nbytes, 24);
    assert_int_equal(((uintptr_t)t->data - (uintptr_t)buf) % 4, 0); /* F32 first, aligned */
    float out[6];
    assert_int_equal(st_tensor_to_f32(t, out, 6, &err), 0);
    assert_memory_equal(out, a, sizeof a);
    assert_int_equal(st_tensor_to_f32(t, out, 5, &err), -1);
    assert_non_null(strstr(err.msg, "6 elements"));

    t = st_find(r, "b.bf16");
    assert_int_equal(t->dtype, ST_BF16);
    float *fb = st_tensor_to_f32_alloc(t, &err);
    assert_non_null(fb);
    assert_int_equal(((uintptr_t)fb) % 64, 0);
    for (int i = 0; i < 4; i++)
        assert_true(fb[i] == st_bf16_to_f32(st_f32_to_bf16(b[i])));
    free(fb);
    t = st_find(r, "b.f16");
    float ff[4];
    assert_int_equal(st_tensor_to_f32(t, ff, 4, &err), 0);
    for (int i = 0; i < 4; i++)
        assert_true(ff[i] == st_f16_to_f32(st_f32_to_f16(b[i])));
    assert_true(ff[3] == 65504.0f);

    t = st_find(r, "scalar");
    assert_int_equal(t->ndim, 0);
    assert_int_equal(t->numel, 1);
    float sv;
    assert_int_equal(st_tensor_to_f32(t, &sv, 1, &err), 0);
    assert_true(sv == 42.0f);
    t = st_find(r, "raw");
    float rv[3];
    st_tensor_to_f32(t, rv, 3, &err);
    assert_true(rv[0] == 1.0f && rv[1] == 2.0f && rv[2] == -1.0f);
    t = st_find(r, "empty");
    assert_int_equal(t->numel, 0);
    assert_int_equal(t->nbytes, 0);
    assert_null(st_find(r, "nope"));
    assert_int_equal(st_total_bytes(r), 24 + 8 + 8 + 4 + 6);

    /* st_expect / st_load_f32 */
    int64_t good[2] = {2, 3}, badshape[2] = {3, 2};
    assert_non_null(st_expect(r, "a.weight", 2, good, &err));
    assert_null(st_expect(r, "a.weight", 2, badshape, &err));
    assert_non_null(strstr(err.msg, "'a.weight' has shape [2, 3], expected [3, 2]"));
    assert_null(st_expect(r, "missing.weight", 2, good, &err));
    assert_non_null(strstr(err.msg, "'missing.weight' is missing"));
    float la[6];
    assert_int_equal(st_load_f32(r, "a.weight", 2, good, la, &err), 0);
    assert_memory_equal(la, a, sizeof a);
    st_close(r);
    free(buf);
}

static void test_roundtrip_file_and_dir(void **state) {
    char *dir = make_tmpdir();
    char *path = lt_path_join(dir, "model.safetensors");
    float v[5] = {1, 2, 3, 4, 5};
    int64_t sh[1] = {5};
    st_writer *w = st_writer_new();
    lt_err err;
    assert_int_equal(st_writer_add_f32(w, "x", ST_BF16, 1, sh, v, &err), 0);
    assert_int_equal(st_writer_write(w, path, &err), 0);
    st_writer_free(w);
    st_reader *r = st_open(path, &err);
    assert_non_null(r);
    assert_string_equal(st_file_path(r, 0), path);
    st_close(r);
    r = st_open(dir, &err); /* directory: model.safetensors */
    assert_non_null(r);
    assert_int_equal(st_num_files(r), 1);
    float o[5];
    int64_t sh5[1] = {5};
    assert_int_equal(st_load_f32(r, "x", 1, sh5, o, &err), 0);
    assert_memory_equal(o, v, sizeof v);
    st_close(r);
    unlink(path);
    r = st_open(dir, &err);
    assert_null(r);
    assert_int_equal(err.code, 404);
    assert_non_null(strstr(err.msg, "no model.safetensors"));
    char *missing = lt_path_join(dir, "nope.safetensors");
    assert_null(st_open(missing, &err));
    assert_int_equal(err.code, 404);
    free(missing);
    free(path);
    lt_rm_rf(dir);
    free(dir);
}

static void write_shard(const char *dir, const char *file, const char *const *names, int n, float base) {
    st_writer *w = st_writer_new();
    lt_err err;
    float vals[4][3];
    int64_t sh[1] = {3};
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < 3; k++)
            vals[i][k] = base + (float)(10 * i + k);
        assert_int_equal(st_writer_add_f32(w, names[i], ST_F32, 1, sh, vals[i], &err), 0);
    }
    char *p = lt_path_join(dir, file);
    assert_int_equal(st_writer_write(w, p, &err), 0);
    free(p);
    st_writer_free(w);
}

static void test_sharded(void **state) {
    char *dir = make_tmpdir();
    const char *n1[] = {"a", "b"}, *n2[] = {"c"};
    write_shard(dir, "model-00001-of-00002.safetensors", n1, 2, 0);
    write_shard(dir, "model-00002-of-00002.safetensors", n2, 1, 100);
    /* a stray single-file checkpoint must be ignored when an index exists */
    write_shard(dir, "model.safetensors", n2, 1, -1);
    char *idx = lt_path_join(dir, "model.safetensors.index.json");
    const char *good =
        "{\"metadata\":{\"total_size\":36},\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\","
        "\"b\":\"model-00001-of-00002.safetensors\",\"c\":\"model-00002-of-00002.safetensors\"}}";
    write_bytes(idx, good, strlen(good));
    lt_err err;
    lt_err_clear(&err);
    st_reader *r = st_open(dir, &err);
    if (!r) fprintf(stderr, "%s\n", err.msg);
    assert_non_null(r);
    assert_int_equal(st_count(r), 3);
    assert_int_equal(st_num_files(r), 2);
    const st_tensor *c = st_find(r, "c");
    assert_non_null(c);
    assert_non_null(strstr(c->file, "model-00002-of-00002"));
    float o[3];
    st_tensor_to_f32(c, o, 3, &err);
    assert_true(o[0] == 100.0f && o[2] == 102.0f);
    st_close(r);

    /* weight_map names a tensor its shard lacks */
    const char *wrong = "{\"weight_map\":{\"a\":\"model-00002-of-00002.safetensors\"}}";
    write_bytes(idx, wrong, strlen(wrong));
    assert_null(st_open(dir, &err));
    assert_non_null(strstr(err.msg, "tensor 'a'"));
    /* the same tensor in two shards */
    write_shard(dir, "model-00002-of-00002.safetensors", n1, 1, 0);
    write_bytes(idx, good, strlen(good));
    assert_null(st_open(dir, &err));
    assert_non_null(strstr(err.msg, "appears twice"));
    /* escaping the directory */
    const char *esc = "{\"weight_map\":{\"a\":\"../x.safetensors\"}}";
    write_bytes(idx, esc, strlen(esc));
    assert_null(st_open(dir, &err));
    assert_non_null(strstr(err.msg, "inside the model directory"));
    /* missing shard */
    const char *miss = "{\"weight_map\":{\"a\":\"model-00009-of-00009.safetensors\"}}";
    write_bytes(idx, miss, strlen(miss));
    assert_null(st_open(dir, &err));
    assert_non_null(strstr(err.msg, "model-00009-of-00009"));
    /* bad index JSON */
    write_bytes(idx, "{\"weight_map\":", 14);
    assert_null(st_open(dir, &err));
    assert_non_null(strstr(err.msg, "model.safetensors.index.json"));
    free(idx);
    lt_rm_rf(dir);
    free(dir);
}

/* ---- malformed files ---- */

static void test_bad_lengths(void **state) {
    lt_err err;
    uint8_t tiny[5] = {1, 2, 3, 4, 5};
    assert_null(st_open_memory(tiny, 5, "t.safetensors", &err));
    assert_non_null(strstr(err.msg, "too short"));
    uint8_t huge[16] = {0};
    uint64_t n = 200000000;
    for (int i = 0; i < 8; i++)
        huge[i] = (uint8_t)(n >> (8 * i));
    assert_null(st_open_memory(huge, 16, "h.safetensors", &err));
    assert_non_null(strstr(err.msg, "exceeds"));
    uint8_t past[16] = {100, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
    assert_null(st_open_memory(past, 16, "p.safetensors", &err));
    assert_non_null(strstr(err.msg, "does not fit"));
    uint8_t one[16] = {1, 0, 0, 0, 0, 0, 0, 0, '{'};
    assert_null(st_open_memory(one, 9, "o.safetensors", &err));
    assert_non_null(strstr(err.msg, "too small"));
    uint8_t ff[16];
    memset(ff, 0xff, sizeof ff);
    assert_null(st_open_memory(ff, 16, "f.safetensors", &err));
    assert_non_null(strstr(err.msg, "exceeds"));
}

static void test_bad_headers(void **state) {
    expect_bad("{\"a\":", 0, "header JSON invalid");
    expect_bad("[1,2]   ", 0, "not a JSON object");
    expect_bad("   \"x\"  ", 0, "not a JSON object");
    expect_bad("{\"a\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, "dtype I64");
    expect_bad("{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8,
               "F32, BF16 and F16 only");
    expect_bad("{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "\"dtype\"");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, "needs 8 bytes");
    expect_bad("{\"a\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16, "needs 8 bytes");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "shape[0]");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "shape[0]");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}}", 4, "\"shape\"");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
               "9 dims");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, "data_offsets");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, "end before begin");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4, "non-negative");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,4]}}", 4,
               "too large");
    expect_bad("{\"a\":[1,2,3]}", 0, "not an object");
    expect_bad("{\"__metadata__\":{\"format\":1}}", 0, "not a string");
    expect_bad("{\"__metadata__\":[1]}", 0, "__metadata__");
    /* duplicate names */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
               8, "duplicate");
}

static void test_bad_offsets(void **state) {
    /* out of range: past the data buffer */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "run past");
    /* overlap */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
               12, "overlaps");
    /* the same span twice */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
               8, "overlaps");
    /* hole at the start and between tensors */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "gap");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
               12, "gap");
    /* trailing bytes after the last tensor */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 9, "trailing");
}

static void test_truncated_and_whitespace(void **state) {
    float v[64];
    for (int i = 0; i < 64; i++)
        v[i] = (float)i;
    int64_t sh[2] = {8, 8};
    st_writer *w = st_writer_new();
    lt_err err;
    st_writer_add_f32(w, "w", ST_F32, 2, sh, v, &err);
    void *buf;
    size_t len;
    st_writer_serialize(w, &buf, &len, &err);
    st_writer_free(w);
    /* every truncation is rejected, never read past the end */
    for (size_t cut = 0; cut < len; cut++) {
        uint8_t *copy = malloc(cut ? cut : 1);
        memcpy(copy, buf, cut);
        st_reader *r = st_open_memory(copy, cut, "cut.safetensors", &err);
        assert_null(r);
        assert_int_equal(err.code, 400);
        free(copy);
    }
    st_reader *r = st_open_memory(buf, len, "ok", &err);
    assert_non_null(r);
    st_close(r);
    free(buf);
    /* leading / trailing whitespace around the header object is accepted */
    size_t ilen;
    uint8_t *img = image("  {\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}  \n", 4, &ilen);
    r = st_open_memory(img, ilen, "ws", &err);
    assert_non_null(r);
    assert_int_equal(st_count(r), 1);
    st_close(r);
    free(img);
    /* an empty header object with no data is a valid (empty) file */
    img = image("{}      ", 0, &ilen);
    r = st_open_memory(img, ilen, "empty", &err);
    assert_non_null(r);
    assert_int_equal(st_count(r), 0);
    st_close(r);
    free(img);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bf16_all_patterns),
        cmocka_unit_test(test_f16_all_patterns),
        cmocka_unit_test(test_rounding),
        cmocka_unit_test(test_roundtrip_memory),
        cmocka_unit_test(test_roundtrip_file_and_dir),
        cmocka_unit_test(test_sharded),
        cmocka_unit_test(test_bad_lengths),
        cmocka_unit_test(test_bad_headers),
        cmocka_unit_test(test_bad_offsets),
        cmocka_unit_test(test_truncated_and_whitespace),
    };
    return cmocka_run_group_tests_name("safetensors", tests, NULL, NULL);
}
