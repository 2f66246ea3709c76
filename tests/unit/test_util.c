/* Unit tests for util/: time formatting, uuids, hashing, utf-8 validation, atomic files, strbuf. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/err.h"
#include "util/strbuf.h"
#include "util/util.h"

static void test_time_roundtrip(void **state) {
    char s[LT_TIME_LEN];
    lt_time_fmt(1796126400123LL, s);
    assert_string_equal(s, "2026-12-01T12:00:00.123Z");
    int64_t ms = 0;
    assert_int_equal(lt_time_parse(s, &ms), 0);
    assert_true(ms == 1796126400123LL);
    assert_int_equal(lt_time_parse("yesterday", &ms), -1);
}

static void test_uuid(void **state) {
    char a[LT_UUID_LEN], b[LT_UUID_LEN];
    lt_uuid4(a);
    lt_uuid4(b);
    assert_true(lt_is_uuid(a));
    assert_string_not_equal(a, b);
    assert_int_equal(a[14], '4');
    assert_false(lt_is_uuid("not-a-uuid"));
}

static void test_sha256(void **state) {
    char hex[LT_SHA256_HEX];
    lt_sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_true(lt_ct_equal("abc", "abc", 3));
    assert_false(lt_ct_equal("abc", "abd", 3));
}

static void test_utf8(void **state) {
    assert_true(lt_utf8_valid("h\xc3\xa9llo \xe4\xb8\xad \xf0\x9f\x98\x80", 15));
    assert_false(lt_utf8_valid("\xc3", 1));         /* truncated */
    assert_false(lt_utf8_valid("\xc0\xaf", 2));     /* overlong */
    assert_false(lt_utf8_valid("\xed\xa0\x80", 3)); /* surrogate */
    assert_false(lt_utf8_valid("\xff", 1));
}

static void test_strbuf(void **state) {
    strbuf sb = STRBUF_INIT;
    for (int i = 0; i < 1000; i++)
        sb_printf(&sb, "%d,", i);
    assert_int_equal(sb.len, strlen(sb.buf));
    assert_memory_equal(sb.buf, "0,1,2,", 6);
    char *s = sb_steal(&sb);
    assert_null(sb.buf);
    free(s);
}

static void test_atomic_file(void **state) {
    char dir[] = "/tmp/lathe-test-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *sub = lt_path_join(dir, "a/b/c");
    lt_err err = {0};
    assert_int_equal(lt_mkdir_p(sub, 0755, &err), 0);
    char *f = lt_path_join(sub, "x.txt");
    assert_int_equal(lt_write_file_atomic(f, "hello", 5, 0600, &err), 0);
    size_t n = 0;
    char *got = lt_read_file(f, &n, &err);
    assert_non_null(got);
    assert_int_equal(n, 5);
    assert_string_equal(got, "hello");
    free(got);
    assert_null(lt_read_file("/nonexistent/file", &n, &err));
    assert_int_equal(err.code, 404);
    assert_non_null(strstr(err.msg, "/nonexistent/file"));
    assert_int_equal(lt_rm_rf(dir), 0);
    assert_int_not_equal(access(dir, F_OK), 0);
    free(f);
    free(sub);
}

static void test_err_prefix(void **state) {
    lt_err err = {0};
    assert_int_equal(lt_err_set(&err, 422, "line %d: bad", 3), -1);
    lt_err_prefix(&err, "%s: ", "train.jsonl");
    assert_string_equal(err.msg, "train.jsonl: line 3: bad");
    assert_int_equal(err.code, 422);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_time_roundtrip), cmocka_unit_test(test_uuid),
        cmocka_unit_test(test_sha256),         cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_strbuf),         cmocka_unit_test(test_atomic_file),
        cmocka_unit_test(test_err_prefix),
    };
    return cmocka_run_group_tests_name("util", tests, NULL, NULL);
}
