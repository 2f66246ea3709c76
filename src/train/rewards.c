/* rewards.c: reward recipes (docs/spec.md §4.5). See rewards.h. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "train/rewards.h"

#include <ctype.h>
#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

typedef enum {
    RW_EXACT = 0,
    RW_CONTAINS,
    RW_ROW,
    RW_IMITATION,
    RW_TASK_VERIFIER,
    RW_GSM8K,
    RW_TASK_ENV_VERIFIER,
} rw_kind;

typedef enum { V_NONE = 0, V_FLAG, V_EXACT, V_REGEX } verify_method;

struct rw_recipe {
    rw_kind kind;
    char name[64];
    double if_true, if_false, dflt;
    char *expected; /* params.expected as text, or NULL */
    char *needle;
    verify_method method;
    char flag_hex[65];
    char *task_expected;
    pcre2_code *re;
};

static const char *const NAMES[] = {"exact_match_v1",          "contains_v1",      "row_reward_v1",
                                    "trajectory_imitation_v1", "task_verifier_v1", "gsm8k_v1",
                                    "task_env_verifier_v1"};

static double num_param(const json_t *params, const char *key, double dflt) {
    json_t *v = json_object_get(params, key);
    return json_is_number(v) ? json_number_value(v) : dflt;
}

/* malloc'd text of a string or number, NULL otherwise. */
static char *text_of(const json_t *v) {
    if (json_is_string(v)) return lt_strndup(json_string_value(v), json_string_length(v));
    char buf[64];
    if (json_is_integer(v)) {
        snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v));
        return lt_strdup(buf);
    }
    if (json_is_real(v)) {
        snprintf(buf, sizeof buf, "%.17g", json_real_value(v));
        return lt_strdup(buf);
    }
    return NULL;
}

static int task_verification(rw_recipe *r, const json_t *task, lt_err *err) {
    const char *tname = json_string_value(json_object_get(task, "name"));
    json_t *v = json_object_get(task, "verification");
    const char *m = json_string_value(json_object_get(v, "method"));
    if (!m)
        return lt_err_set(err, 422,
                          "reward recipe %s needs a task with a verification (method flag, exact or regex); "
                          "task %s has none: add one to its task.yaml or pick another reward_recipe",
                          r->name, tname ? tname : "(unnamed)");
    if (!strcmp(m, "flag")) {
        const char *h = json_string_value(json_object_get(v, "hash"));
        if (!h) h = json_string_value(json_object_get(v, "flag_hash"));
        if (!h || strncmp(h, "sha256:", 7) != 0 || strlen(h) != 7 + 64)
            return lt_err_set(err, 422,
                              "task %s: verification.hash must be \"sha256:\" followed by 64 hex digits",
                              tname ? tname : "(unnamed)");
        for (int i = 0; i < 64; i++)
            r->flag_hex[i] = (char)tolower((unsigned char)h[7 + i]);
        r->flag_hex[64] = '\0';
        r->method = V_FLAG;
        return 0;
    }
    if (!strcmp(m, "exact")) {
        r->task_expected = text_of(json_object_get(v, "expected"));
        if (!r->task_expected)
            return lt_err_set(err, 422, "task %s: verification.expected must be text for method exact",
                              tname ? tname : "(unnamed)");
        r->method = V_EXACT;
        return 0;
    }
    if (!strcmp(m, "regex")) {
        const char *p = json_string_value(json_object_get(v, "pattern"));
        if (!p)
            return lt_err_set(err, 422, "task %s: verification.pattern must be text for method regex",
                              tname ? tname : "(unnamed)");
        int ec = 0;
        PCRE2_SIZE off = 0;
        r->re = pcre2_compile((PCRE2_SPTR)p, PCRE2_ZERO_TERMINATED, PCRE2_UTF, &ec, &off, NULL);
        if (!r->re) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(ec, msg, sizeof msg);
            return lt_err_set(err, 422,
                              "task %s: verification.pattern is not a valid PCRE2 regex: %s at offset %zu",
                              tname ? tname : "(unnamed)", (const char *)msg, (size_t)off);
        }
        r->method = V_REGEX;
        return 0;
    }
    return lt_err_set(err, 422, "task %s: verification.method must be flag, exact or regex (got '%.40s')",
                      tname ? tname : "(unnamed)", m);
}

rw_recipe *rw_recipe_new(const json_t *recipe, const json_t *task, lt_err *err) {
    const char *name = json_string_value(json_object_get(recipe, "name"));
    if (!name) {
        lt_err_set(err, 422,
                   "reward_recipe.name is required (one of exact_match_v1, contains_v1, row_reward_v1, "
                   "trajectory_imitation_v1, task_verifier_v1, gsm8k_v1, task_env_verifier_v1)");
        return NULL;
    }
    if (!strcmp(name, "task_env_agent_v1")) {
        lt_err_set(
            err, 422,
            "reward_recipe task_env_agent_v1 runs multi-turn agent rollouts against an environment backend, "
            "which this worker does not have (LATHE_WORLDS_URL is not supported); use "
            "task_env_verifier_v1 to apply the task's verification to single completions");
        return NULL;
    }
    int kind = -1;
    for (int i = 0; i < (int)(sizeof NAMES / sizeof NAMES[0]); i++)
        if (!strcmp(name, NAMES[i])) kind = i;
    if (kind < 0) {
        lt_err_set(
            err, 422,
            "unknown reward_recipe '%.80s': must be one of exact_match_v1, contains_v1, row_reward_v1, "
            "trajectory_imitation_v1, task_verifier_v1, gsm8k_v1, task_env_verifier_v1, task_env_agent_v1",
            name);
        return NULL;
    }
    const json_t *params = json_object_get(recipe, "params");
    rw_recipe *r = calloc(1, sizeof *r);
    if (!r) {
        lt_err_set(err, 500, "out of memory");
        return NULL;
    }
    r->kind = (rw_kind)kind;
    snprintf(r->name, sizeof r->name, "%s", name);
    r->if_true = num_param(params, "reward_if_true", 1.0);
    r->if_false = num_param(params, "reward_if_false", 0.0);
    r->dflt = num_param(params, "default", 0.0);
    r->expected = text_of(json_object_get(params, "expected"));
    if (r->kind == RW_CONTAINS) {
        r->needle = text_of(json_object_get(params, "needle"));
        if (!r->needle || !r->needle[0]) {
            lt_err_set(err, 422, "reward_recipe contains_v1 needs params.needle (a non-empty string)");
            rw_recipe_free(r);
            return NULL;
        }
    }
    if (r->kind == RW_TASK_VERIFIER || r->kind == RW_TASK_ENV_VERIFIER) {
        if (!task) {
            lt_err_set(err, 422, "reward_recipe %s needs task_ref (a task with a verification)", name);
            rw_recipe_free(r);
            return NULL;
        }
        if (task_verification(r, task, err)) {
            rw_recipe_free(r);
            return NULL;
        }
        if (r->kind == RW_TASK_VERIFIER && r->method != V_FLAG) {
            lt_err_set(
                err, 422,
                "task_verifier_v1 needs a task whose verification is method: flag with a sha256: hash; use "
                "task_env_verifier_v1 for exact or regex verification");
            rw_recipe_free(r);
            return NULL;
        }
    }
    return r;
}

void rw_recipe_free(rw_recipe *r) {
    if (!r) return;
    free(r->expected);
    free(r->needle);
    free(r->task_expected);
    if (r->re) pcre2_code_free(r->re);
    free(r);
}

const char *rw_recipe_name(const rw_recipe *r) {
    return r->name;
}

/* ---- gsm8k ---- */

static int is_digit(char c) {
    return c >= '0' && c <= '9';
}

/* Scans the number starting at s[i] (a digit, or a sign/point before one). Writes its cleaned text into buf
 * and returns the index after it. */
static size_t scan_number(const char *s, size_t i, char *buf, size_t cap) {
    size_t o = 0;
    if (s[i] == '-' || s[i] == '+') {
        if (s[i] == '-' && o + 1 < cap) buf[o++] = '-';
        i++;
    }
    int seen_point = 0;
    for (;;) {
        char c = s[i];
        if (is_digit(c)) {
            if (o + 1 < cap) buf[o++] = c;
            i++;
        } else if (c == ',' && o > 0 && is_digit(s[i - 1]) && is_digit(s[i + 1]) && !seen_point) {
            i++; /* thousands separator: dropped */
        } else if (c == '.' && !seen_point && is_digit(s[i + 1])) {
            seen_point = 1;
            if (o + 1 < cap) buf[o++] = '.';
            i++;
        } else {
            break;
        }
    }
    buf[o] = '\0';
    return i;
}

/* Finds numbers in s[from..]; first != 0 stops at the first one. */
static int find_number(const char *s, size_t from, int first, double *out) {
    int found = 0;
    char buf[128];
    size_t n = strlen(s);
    for (size_t i = from; i < n;) {
        char c = s[i];
        int prev_alnum = i > from && (isalnum((unsigned char)s[i - 1]) || s[i - 1] == '.' || s[i - 1] == '_');
        int starts = is_digit(c) || (c == '.' && is_digit(s[i + 1]) && !(i > 0 && is_digit(s[i - 1]))) ||
                     ((c == '-' || c == '+') && !prev_alnum &&
                      (is_digit(s[i + 1]) || (s[i + 1] == '.' && is_digit(s[i + 2]))));
        if (!starts) {
            i++;
            continue;
        }
        size_t j = scan_number(s, i, buf, sizeof buf);
        if (j == i) j = i + 1;
        char *end = NULL;
        double v = strtod(buf, &end);
        if (end && end != buf && isfinite(v)) {
            *out = v;
            found = 1;
            if (first) return 1;
        }
        i = j;
    }
    return found;
}

int rw_gsm8k_extract(const char *text, double *out) {
    if (!text) return 0;
    const char *last = NULL;
    for (const char *p = strstr(text, "####"); p; p = strstr(p + 1, "####"))
        last = p;
    if (last) {
        /* after the last "####": the number that follows it */
        size_t from = (size_t)(last - text) + 4;
        while (text[from] == '#')
            from++;
        return find_number(text, from, 1, out);
    }
    return find_number(text, 0, 0, out);
}

/* ---- scoring ---- */

static char *stripped(const char *s) {
    char *c = lt_strdup(s ? s : "");
    char *t = lt_strip(c);
    if (t != c) memmove(c, t, strlen(t) + 1);
    return c;
}

static int eq_stripped(const char *a, const char *b) {
    char *x = stripped(a), *y = stripped(b);
    int eq = strcmp(x, y) == 0;
    free(x);
    free(y);
    return eq;
}

/* The expected text: params.expected, else the item's. Borrowed or NULL. */
static const char *expected_of(const rw_recipe *r, const json_t *item, char **owned) {
    *owned = NULL;
    if (r->expected) return r->expected;
    json_t *e = json_object_get(item, "expected");
    if (json_is_string(e)) return json_string_value(e);
    *owned = text_of(e);
    return *owned;
}

int rw_check_item(const rw_recipe *r, const json_t *item, lt_err *err) {
    if (r->kind != RW_EXACT && r->kind != RW_IMITATION && r->kind != RW_GSM8K) return 0;
    char *owned;
    const char *exp = expected_of(r, item, &owned);
    int rc = 0;
    if (!exp)
        rc = lt_err_set(err, 422,
                        "reward recipe %s needs an expected output: give the row an answer field "
                        "(expected_output, target, answer or output) or end its messages with an assistant "
                        "message%s",
                        r->name, r->kind == RW_IMITATION ? "" : ", or set reward_recipe.params.expected");
    else if (r->kind == RW_GSM8K) {
        double v;
        if (!rw_gsm8k_extract(exp, &v))
            rc =
                lt_err_set(err, 422,
                           "reward recipe gsm8k_v1: the expected output '%.60s' holds no number (write it as "
                           "\"#### 42\" or end it with the number)",
                           exp);
    }
    free(owned);
    return rc;
}

void rw_score(const rw_recipe *r, const char *completion, const json_t *item, rw_result *out) {
    memset(out, 0, sizeof *out);
    if (!completion) completion = "";
    char *owned = NULL;
    switch (r->kind) {
    case RW_EXACT: {
        const char *exp = expected_of(r, item, &owned);
        out->passed = exp && eq_stripped(completion, exp);
        out->reward = out->passed ? 1.0 : 0.0;
        break;
    }
    case RW_CONTAINS:
        out->passed = strstr(completion, r->needle) != NULL;
        out->reward = out->passed ? r->if_true : r->if_false;
        break;
    case RW_ROW: {
        json_t *rw = json_object_get(item, "reward");
        out->reward = json_is_number(rw) ? json_number_value(rw) : r->dflt;
        out->passed = out->reward > 0;
        break;
    }
    case RW_IMITATION: {
        const char *exp = expected_of(r, item, &owned);
        out->passed = exp && eq_stripped(completion, exp);
        json_t *rw = json_object_get(item, "reward");
        out->reward = out->passed ? (json_is_number(rw) ? json_number_value(rw) : r->if_true) : r->if_false;
        break;
    }
    case RW_GSM8K: {
        const char *exp = expected_of(r, item, &owned);
        double want = 0, got = 0;
        int have_want = exp && rw_gsm8k_extract(exp, &want);
        int have_got = rw_gsm8k_extract(completion, &got);
        out->extraction_failed = !have_got;
        out->passed = have_want && have_got && fabs(got - want) <= 1e-6;
        out->reward = out->passed ? r->if_true : r->if_false;
        break;
    }
    case RW_TASK_VERIFIER:
    case RW_TASK_ENV_VERIFIER: {
        if (r->method == V_FLAG) {
            char *s = stripped(completion);
            char hex[LT_SHA256_HEX];
            lt_sha256_hex(s, strlen(s), hex);
            out->passed = strcmp(hex, r->flag_hex) == 0;
            free(s);
        } else if (r->method == V_EXACT) {
            out->passed = eq_stripped(completion, r->task_expected);
        } else if (r->method == V_REGEX) {
            pcre2_match_data *md = pcre2_match_data_create_from_pattern(r->re, NULL);
            int rc = md ? pcre2_match(r->re, (PCRE2_SPTR)completion, strlen(completion), 0, 0, md, NULL) : -1;
            out->passed = rc >= 0;
            pcre2_match_data_free(md);
        }
        out->reward = out->passed ? r->if_true : r->if_false;
        break;
    }
    }
    free(owned);
}

/* ---- metrics ---- */

void rw_stats_init(rw_stats *s) {
    memset(s, 0, sizeof *s);
    s->max = -INFINITY;
    s->min = INFINITY;
}

void rw_stats_add(rw_stats *s, const rw_recipe *r, const json_t *item, const rw_result *res) {
    s->n++;
    s->sum += res->reward;
    if (res->reward > s->max) s->max = res->reward;
    if (res->reward < s->min) s->min = res->reward;
    s->passed += res->passed != 0;
    s->extraction_failed += res->extraction_failed != 0;
    if (r->kind == RW_ROW && json_is_number(json_object_get(item, "reward"))) s->row_reward_present++;
}

static void put(json_t *obj, const char *key, double v, int as_array) {
    json_t *x = json_real(v);
    if (as_array) {
        json_t *a = json_array();
        json_array_append_new(a, x);
        x = a;
    }
    json_object_set_new(obj, key, x);
}

void rw_stats_metrics(const rw_stats *s, const rw_recipe *r, json_t *obj, int as_arrays) {
    double n = s->n > 0 ? s->n : 1;
    json_object_set_new(obj, "reward/recipe", json_string(r->name));
    put(obj, "reward/passed", s->passed / n, as_arrays);
    switch (r->kind) {
    case RW_EXACT:
    case RW_IMITATION:
        put(obj, "reward/exact_match", s->passed / n, as_arrays);
        break;
    case RW_CONTAINS:
        put(obj, "reward/contains", s->passed / n, as_arrays);
        break;
    case RW_ROW:
        put(obj, "reward/row_reward_present", s->row_reward_present / n, as_arrays);
        break;
    case RW_TASK_VERIFIER:
        put(obj, "reward/flag_match", s->passed / n, as_arrays);
        break;
    case RW_GSM8K:
        put(obj, "reward/extraction_failed", s->extraction_failed / n, as_arrays);
        put(obj, "reward/correct", s->passed / n, as_arrays);
        break;
    case RW_TASK_ENV_VERIFIER:
        put(obj, "reward/verified", s->passed / n, as_arrays);
        break;
    }
}
