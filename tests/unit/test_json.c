/* Unit tests for the small shared helpers: util/json.h (string or null, times, type words), lt_ref_split
 * (util.h) and the allocators that abort on out of memory (err.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "util/err.h"
#include "util/json.h"
#include "util/util.h"

static void test_str_or_null(void **state) {
    json_t *j = lt_json_str_or_null("alice");
    assert_string_equal(json_string_value(j), "alice");
    json_decref(j);
    assert_true(json_is_null(lt_json_str_or_null("")));
    assert_true(json_is_null(lt_json_str_or_null(NULL)));
    assert_null(lt_json_str_or_null("\xff")); /* not UTF-8: jansson refuses */
}

static void test_time(void **state) {
    json_t *j = lt_json_time(1796126400123LL);
    assert_string_equal(json_string_value(j), "2026-12-01T12:00:00.123Z");
    json_decref(j);
    j = lt_json_time(0);
    assert_string_equal(json_string_value(j), "1970-01-01T00:00:00.000Z");
    json_decref(j);
    assert_true(json_is_null(lt_json_time_or_null(0)));
    assert_true(json_is_null(lt_json_time_or_null(-5)));
    j = lt_json_time_or_null(1796126400123LL);
    assert_string_equal(json_string_value(j), "2026-12-01T12:00:00.123Z");
    json_decref(j);
}

static void test_type_name(void **state) {
    json_t *v[] = {json_object(),  json_array(), json_string("x"), json_integer(1),
                   json_real(1.5), json_true(),  json_false(),     json_null()};
    const char *js[] = {"an object", "a list",    "a string",  "a number",
                        "a number",  "a boolean", "a boolean", "null"};
    const char *ya[] = {"a mapping", "a list",    "text",      "an integer",
                        "a number",  "a boolean", "a boolean", "null"};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        assert_string_equal(lt_json_type_name(v[i], LT_WORDS_JSON), js[i]);
        assert_string_equal(lt_json_type_name(v[i], LT_WORDS_YAML), ya[i]);
        json_decref(v[i]);
    }
}

static void split(const char *ref, const char *want_name, const char *want_version) {
    char *name = NULL, *version = NULL;
    lt_ref_split(ref, &name, &version);
    assert_string_equal(name, want_name);
    if (want_version)
        assert_string_equal(version, want_version);
    else
        assert_null(version);
    free(name);
    free(version);
}

static void test_ref_split(void **state) {
    split("my-data@0.1.0", "my-data", "0.1.0");
    split("org/task@latest", "org/task", "latest");
    split("plain", "plain", NULL);
    split("a@b@1.0", "a@b", "1.0"); /* the last '@' separates */
    split("@1", "", "1");
    split("a@", "a", "");
    split("", "", NULL);
}

static void test_xalloc(void **state) {
    char *p = lt_xmalloc(0); /* never NULL, even for 0 */
    assert_non_null(p);
    free(p);
    int *z = lt_xcalloc(16, sizeof *z);
    for (int i = 0; i < 16; i++)
        assert_int_equal(z[i], 0);
    z = lt_xrealloc(z, 1024 * sizeof *z);
    assert_int_equal(z[15], 0); /* the old contents are kept */
    z[1023] = 7;
    assert_int_equal(z[1023], 7);
    free(z);
    void *one = lt_xcalloc(0, 0); /* one byte */
    assert_non_null(one);
    free(one);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_str_or_null), cmocka_unit_test(test_time),   cmocka_unit_test(test_type_name),
        cmocka_unit_test(test_ref_split),   cmocka_unit_test(test_xalloc),
    };
    return cmocka_run_group_tests_name("json", tests, NULL, NULL);
}
