/* Unit tests for train/rewards: every recipe of docs/spec.md §4.5, gsm8k extraction edge cases, recipe errors
 * and the metrics each recipe reports. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/rewards.h"
#include "util/util.h"

static rw_recipe *recipe(const char *json, const json_t *task) {
    json_t *j = json_loads(json, 0, NULL);
    assert_non_null(j);
    lt_err err = {0};
    rw_recipe *r = rw_recipe_new(j, task, &err);
    json_decref(j);
    if (!r) fail_msg("recipe %s: %s", json, err.msg);
    return r;
}

static void recipe_bad(const char *json, const json_t *task, const char *msg) {
    json_t *j = json_loads(json, 0, NULL);
    assert_non_null(j);
    lt_err err = {0};
    rw_recipe *r = rw_recipe_new(j, task, &err);
    json_decref(j);
    assert_null(r);
    assert_int_equal(err.code, 422);
    if (!strstr(err.msg, msg)) fail_msg("'%s' not in '%s'", msg, err.msg);
}

static rw_result score(const rw_recipe *r, const char *completion, const char *item_json) {
    json_t *it = json_loads(item_json, 0, NULL);
    assert_non_null(it);
    rw_result res;
    rw_score(r, completion, it, &res);
    json_decref(it);
    return res;
}

static void test_gsm8k_extract(void **state) {
    (void)state;
    double v = 0;
    assert_int_equal(rw_gsm8k_extract("The answer is 42.", &v), 1);
    assert_true(v == 42);
    assert_int_equal(rw_gsm8k_extract("so 3 apples and 5 pears: 8", &v), 1);
    assert_true(v == 8);
    /* after the last ####, even when other numbers follow */
    assert_int_equal(rw_gsm8k_extract("5 + 7 = 12\n#### 12\nthanks 99", &v), 1);
    assert_true(v == 12);
    assert_int_equal(rw_gsm8k_extract("#### 3 wrong\n#### 7", &v), 1);
    assert_true(v == 7);
    assert_int_equal(rw_gsm8k_extract("####72", &v), 1);
    assert_true(v == 72);
    /* commas dropped */
    assert_int_equal(rw_gsm8k_extract("It costs $1,234,567 in total", &v), 1);
    assert_true(v == 1234567);
    /* a list separator is not a thousands comma */
    assert_int_equal(rw_gsm8k_extract("1, 2, 3", &v), 1);
    assert_true(v == 3);
    /* negative, decimals */
    assert_int_equal(rw_gsm8k_extract("the change is -15 degrees", &v), 1);
    assert_true(v == -15);
    assert_int_equal(rw_gsm8k_extract("#### -3.25", &v), 1);
    assert_true(fabs(v + 3.25) < 1e-12);
    assert_int_equal(rw_gsm8k_extract("it is 0.5.", &v), 1);
    assert_true(v == 0.5);
    assert_int_equal(rw_gsm8k_extract("pay 1,000.50 now", &v), 1);
    assert_true(fabs(v - 1000.5) < 1e-12);
    assert_int_equal(rw_gsm8k_extract("10-4", &v), 1); /* a minus between digits is not a sign */
    assert_true(v == 4);
    /* no number */
    assert_int_equal(rw_gsm8k_extract("I do not know", &v), 0);
    assert_int_equal(rw_gsm8k_extract("", &v), 0);
    assert_int_equal(rw_gsm8k_extract("#### none", &v), 0);
    assert_int_equal(rw_gsm8k_extract("12 then #### ?", &v), 0); /* #### present: only what follows counts */
    assert_int_equal(rw_gsm8k_extract("- . -", &v), 0);
}

static void test_gsm8k(void **state) {
    (void)state;
    rw_recipe *r = recipe("{\"name\":\"gsm8k_v1\",\"params\":{}}", NULL);
    assert_string_equal(rw_recipe_name(r), "gsm8k_v1");
    const char *item = "{\"expected\":\"Natalia sold 48/2 = 24 clips in May.\\n#### 72\"}";
    rw_result x = score(r, "She sold 72 in total. #### 72", item);
    assert_true(x.reward == 1.0 && x.passed && !x.extraction_failed);
    x = score(r, "72.0000000001", item);
    assert_true(x.reward == 1.0 && x.passed);
    x = score(r, "I think 71", item);
    assert_true(x.reward == 0.0 && !x.passed && !x.extraction_failed);
    x = score(r, "no idea", item);
    assert_true(x.reward == 0.0 && x.extraction_failed);
    /* numeric expected and commas on both sides */
    x = score(r, "#### 1,200", "{\"expected\":\"1200\"}");
    assert_true(x.passed);
    x = score(r, "#### -0.5", "{\"expected\":\"-.5\"}");
    assert_true(x.passed);
    /* check: an expected output with no number, and none at all */
    lt_err err = {0};
    json_t *it = json_loads("{\"expected\":\"seventy\"}", 0, NULL);
    assert_int_equal(rw_check_item(r, it, &err), -1);
    assert_non_null(strstr(err.msg, "holds no number"));
    json_decref(it);
    it = json_loads("{\"expected\":null}", 0, NULL);
    assert_int_equal(rw_check_item(r, it, &err), -1);
    assert_non_null(strstr(err.msg, "needs an expected output"));
    json_decref(it);
    /* metrics */
    rw_stats s;
    rw_stats_init(&s);
    rw_result a = score(r, "#### 72", item), b = score(r, "nothing", item);
    rw_stats_add(&s, r, NULL, &a);
    rw_stats_add(&s, r, NULL, &b);
    json_t *m = json_object();
    rw_stats_metrics(&s, r, m, 0);
    assert_string_equal(json_string_value(json_object_get(m, "reward/recipe")), "gsm8k_v1");
    assert_true(json_real_value(json_object_get(m, "reward/passed")) == 0.5);
    assert_true(json_real_value(json_object_get(m, "reward/extraction_failed")) == 0.5);
    assert_true(json_real_value(json_object_get(m, "reward/correct")) == 0.5);
    assert_true(s.max == 1.0 && s.min == 0.0 && s.sum == 1.0);
    json_decref(m);
    rw_recipe_free(r);
}

static void test_exact_match(void **state) {
    (void)state;
    rw_recipe *r = recipe("{\"name\":\"exact_match_v1\"}", NULL);
    rw_result x = score(r, "  Paris\n", "{\"expected\":\"Paris\"}");
    assert_true(x.reward == 1.0 && x.passed);
    x = score(r, "paris", "{\"expected\":\"Paris\"}");
    assert_true(x.reward == 0.0 && !x.passed);
    x = score(r, "Paris is it", "{\"expected\":\" Paris \"}");
    assert_true(x.reward == 0.0);
    lt_err err = {0};
    json_t *it = json_loads("{\"expected\":null}", 0, NULL);
    assert_int_equal(rw_check_item(r, it, &err), -1);
    assert_non_null(strstr(err.msg, "params.expected"));
    json_decref(it);
    rw_recipe_free(r);
    /* params.expected wins over the row's; numbers are text */
    r = recipe("{\"name\":\"exact_match_v1\",\"params\":{\"expected\":42}}", NULL);
    x = score(r, "42", "{\"expected\":\"41\"}");
    assert_true(x.passed);
    it = json_loads("{\"expected\":null}", 0, NULL);
    assert_int_equal(rw_check_item(r, it, &err), 0);
    json_decref(it);
    json_t *m = json_object();
    rw_stats s;
    rw_stats_init(&s);
    rw_stats_add(&s, r, NULL, &x);
    rw_stats_metrics(&s, r, m, 1);
    assert_true(json_real_value(json_array_get(json_object_get(m, "reward/exact_match"), 0)) == 1.0);
    assert_string_equal(json_string_value(json_object_get(m, "reward/recipe")), "exact_match_v1");
    json_decref(m);
    rw_recipe_free(r);
}

static void test_contains(void **state) {
    (void)state;
    rw_recipe *r = recipe("{\"name\":\"contains_v1\",\"params\":{\"needle\":\"yes\"}}", NULL);
    assert_true(score(r, "oh yes!", "{}").reward == 1.0);
    assert_true(score(r, "Yes", "{}").reward == 0.0);
    rw_recipe_free(r);
    r = recipe("{\"name\":\"contains_v1\",\"params\":{\"needle\":\"ok\",\"reward_if_true\":2.5,"
               "\"reward_if_false\":-1}}",
               NULL);
    assert_true(score(r, "ok", "{}").reward == 2.5);
    assert_true(score(r, "no", "{}").reward == -1.0);
    rw_recipe_free(r);
    recipe_bad("{\"name\":\"contains_v1\",\"params\":{}}", NULL, "params.needle");
    recipe_bad("{\"name\":\"contains_v1\",\"params\":{\"needle\":\"\"}}", NULL, "params.needle");
}

static void test_row_reward(void **state) {
    (void)state;
    rw_recipe *r = recipe("{\"name\":\"row_reward_v1\",\"params\":{\"default\":0.25}}", NULL);
    rw_result x = score(r, "anything", "{\"reward\":0.75}");
    assert_true(x.reward == 0.75 && x.passed);
    x = score(r, "anything", "{\"reward\":null}");
    assert_true(x.reward == 0.25);
    rw_stats s;
    rw_stats_init(&s);
    json_t *a = json_loads("{\"reward\":1}", 0, NULL), *b = json_loads("{}", 0, NULL);
    rw_result ra, rb;
    rw_score(r, "", a, &ra);
    rw_score(r, "", b, &rb);
    rw_stats_add(&s, r, a, &ra);
    rw_stats_add(&s, r, b, &rb);
    json_t *m = json_object();
    rw_stats_metrics(&s, r, m, 0);
    assert_true(json_real_value(json_object_get(m, "reward/row_reward_present")) == 0.5);
    json_decref(m), json_decref(a), json_decref(b);
    rw_recipe_free(r);
    r = recipe("{\"name\":\"row_reward_v1\"}", NULL);
    assert_true(score(r, "x", "{}").reward == 0.0);
    rw_recipe_free(r);
}

static void test_imitation(void **state) {
    (void)state;
    rw_recipe *r = recipe("{\"name\":\"trajectory_imitation_v1\",\"params\":{\"reward_if_true\":1,"
                          "\"reward_if_false\":0}}",
                          NULL);
    rw_result x = score(r, " ls -la ", "{\"expected\":\"ls -la\",\"reward\":0.0}");
    assert_true(x.passed && x.reward == 0.0); /* the row's reward on a match (a failed trajectory) */
    x = score(r, "ls -la", "{\"expected\":\"ls -la\",\"reward\":null}");
    assert_true(x.passed && x.reward == 1.0);
    x = score(r, "ls", "{\"expected\":\"ls -la\",\"reward\":1.0}");
    assert_true(!x.passed && x.reward == 0.0);
    rw_recipe_free(r);
}

static json_t *task(const char *verification) {
    char buf[512];
    snprintf(buf, sizeof buf, "{\"name\":\"t\",\"version\":\"0.1.0\",\"instruction\":\"do\"%s%s}",
             verification ? ",\"verification\":" : "", verification ? verification : "");
    json_t *t = json_loads(buf, 0, NULL);
    assert_non_null(t);
    return t;
}

static void test_task_verifier(void **state) {
    (void)state;
    char hex[LT_SHA256_HEX], v[200];
    lt_sha256_hex("FLAG{x}", 7, hex);
    snprintf(v, sizeof v, "{\"method\":\"flag\",\"hash\":\"sha256:%s\"}", hex);
    json_t *t = task(v);
    rw_recipe *r =
        recipe("{\"name\":\"task_verifier_v1\",\"params\":{\"reward_if_true\":1,\"reward_if_false\":0}}", t);
    rw_result x = score(r, "  FLAG{x}\n", "{}");
    assert_true(x.passed && x.reward == 1.0);
    assert_false(score(r, "FLAG{y}", "{}").passed);
    rw_recipe_free(r);
    json_decref(t);
    /* wrong task kinds */
    recipe_bad("{\"name\":\"task_verifier_v1\"}", NULL, "needs task_ref");
    t = task("{\"method\":\"regex\",\"pattern\":\"a+\"}");
    recipe_bad("{\"name\":\"task_verifier_v1\"}", t, "method: flag");
    json_decref(t);
    t = task(NULL);
    recipe_bad("{\"name\":\"task_env_verifier_v1\"}", t, "has none");
    json_decref(t);
}

static void test_task_env_verifier(void **state) {
    (void)state;
    json_t *t = task("{\"method\":\"regex\",\"pattern\":\"^ans(wer)?: [0-9]+$\"}");
    rw_recipe *r = recipe("{\"name\":\"task_env_verifier_v1\"}", t);
    assert_true(score(r, "answer: 12", "{}").reward == 1.0);
    assert_true(score(r, "answer: x", "{}").reward == 0.0);
    json_t *m = json_object();
    rw_stats s;
    rw_stats_init(&s);
    rw_result x = score(r, "ans: 3", "{}");
    rw_stats_add(&s, r, NULL, &x);
    rw_stats_metrics(&s, r, m, 0);
    assert_true(json_real_value(json_object_get(m, "reward/verified")) == 1.0);
    json_decref(m);
    rw_recipe_free(r);
    json_decref(t);
    t = task("{\"method\":\"exact\",\"expected\":\"done\"}");
    r = recipe("{\"name\":\"task_env_verifier_v1\"}", t);
    assert_true(score(r, " done\n", "{}").passed);
    assert_false(score(r, "not done", "{}").passed);
    rw_recipe_free(r);
    json_decref(t);
    char hex[LT_SHA256_HEX], v[200];
    lt_sha256_hex("42", 2, hex);
    snprintf(v, sizeof v, "{\"method\":\"flag\",\"hash\":\"sha256:%s\"}", hex);
    t = task(v);
    r = recipe("{\"name\":\"task_env_verifier_v1\"}", t);
    assert_true(score(r, "42", "{}").passed);
    rw_recipe_free(r);
    json_decref(t);
    t = task("{\"method\":\"regex\",\"pattern\":\"(\"}");
    recipe_bad("{\"name\":\"task_env_verifier_v1\"}", t, "not a valid PCRE2 regex");
    json_decref(t);
}

static void test_recipe_errors(void **state) {
    (void)state;
    recipe_bad("{\"name\":\"task_env_agent_v1\"}", NULL, "environment backend");
    recipe_bad("{\"name\":\"nope_v9\"}", NULL, "unknown reward_recipe 'nope_v9'");
    recipe_bad("{}", NULL, "reward_recipe.name is required");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gsm8k_extract), cmocka_unit_test(test_gsm8k),
        cmocka_unit_test(test_exact_match),   cmocka_unit_test(test_contains),
        cmocka_unit_test(test_row_reward),    cmocka_unit_test(test_imitation),
        cmocka_unit_test(test_task_verifier), cmocka_unit_test(test_task_env_verifier),
        cmocka_unit_test(test_recipe_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
