/* jobs_schema.c: the create-training-job body, checked field by field, then rule by rule.
 *
 * A body is one of three shapes chosen by the pair (backend, trainer_type): Tinker SFT, Tinker RL and Ray
 * GRPO. Each shape's config is described by a declarative table of fields (type, bounds, choices, whether
 * it is required). Validation runs in three passes, and every broken thing becomes its own error item
 * {loc, msg, type} in the style of SPEC §2.1:
 *
 *   1. schema: unknown keys (extra_forbidden), missing required keys, wrong JSON types (type_error), enum
 *      values, numeric ranges (greater_than, greater_than_equal, less_than_equal), string lengths; then the
 *      cross-field rules R1-R8 and R10 that need nothing but the body (value_error). Explicit null is the
 *      same as a missing key everywhere.
 *   2. resolution (only when the caller passes a resolver, and only when pass 1 found nothing): model,
 *      capability, project, datasets, task. A reference that does not resolve is a `not_found` item and the
 *      result is a 404.
 *   3. rules that need what was resolved: max_sequence_length / max_new_tokens against the model's context
 *      length, prompt_split against the prompt dataset's splits, R9 against the task's verification.
 *
 * A valid body yields the job's body-derived fields, including `effective_config`: the config with every
 * default of SPEC §4.4 filled in with the value the job will use. Nothing here allocates beyond jansson
 * objects, which abort-free code checks: a failed allocation aborts through oom(), since a request-sized
 * JSON document that cannot be built leaves nothing useful to report. */
#include "api/jobs_schema.h"

#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---------------------------------------------------------------------------------------------------------
 * small helpers */

static void oom(void) {
    abort(); /* out of memory while building a small JSON document */
}

static json_t *chk(json_t *j) {
    if (!j) oom();
    return j;
}

static void oset(json_t *o, const char *k, json_t *v) {
    if (json_object_set_new(o, k, v ? v : json_null()) != 0) oom();
}

static void apush(json_t *a, json_t *v) {
    if (json_array_append_new(a, v) != 0) oom();
}

static json_t *str_or_null(const char *s) {
    return s ? chk(json_string(s)) : json_null();
}

/* Number of UTF-8 code points (jansson has already checked the encoding). */
static size_t utf8_len(const char *s) {
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80) n++;
    return n;
}

/* A field value: NULL when the key is absent or null (the two mean the same). */
static json_t *get(const json_t *o, const char *k) {
    json_t *v = json_object_get(o, k);
    return json_is_null(v) ? NULL : v;
}

static const char *get_str(const json_t *o, const char *k) {
    return json_string_value(get(o, k));
}

static json_t *loc_new(const char *first, ...) {
    json_t *a = chk(json_array());
    va_list ap;
    va_start(ap, first);
    for (const char *s = first; s; s = va_arg(ap, const char *))
        apush(a, chk(json_string(s)));
    va_end(ap);
    return a;
}

static json_t *loc_key(const json_t *base, const char *key) {
    json_t *a = chk(json_copy((json_t *)base));
    apush(a, chk(json_string(key)));
    return a;
}

static json_t *loc_idx(const json_t *base, size_t i) {
    json_t *a = chk(json_copy((json_t *)base));
    apush(a, chk(json_integer((json_int_t)i)));
    return a;
}

void js_loc_str(const json_t *loc, char *out, size_t out_len) {
    size_t n = 0;
    assert(out_len > 0);
    out[0] = '\0';
    for (size_t i = 0; i < json_array_size(loc); i++) {
        const json_t *e = json_array_get(loc, i);
        int w;
        if (i == 0 && json_is_string(e)) continue; /* body / query / path / header / archive */
        if (json_is_integer(e))
            w = snprintf(out + n, out_len - n, "[%lld]", (long long)json_integer_value(e));
        else
            w = snprintf(out + n, out_len - n, "%s%s", n ? "." : "", json_string_value(e));
        if (w < 0 || (size_t)w >= out_len - n) return; /* truncated, still NUL-terminated */
        n += (size_t)w;
    }
}

/* Adds one error item; takes ownership of loc. */
static void add_err(js_result *r, json_t *loc, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void add_err(js_result *r, json_t *loc, const char *type, const char *fmt, ...) {
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (json_array_size(r->errors) >= JS_ERRORS_MAX) {
        json_decref(loc);
        r->errors_omitted++;
        return;
    }
    json_t *item = chk(json_object());
    oset(item, "loc", loc);
    oset(item, "msg", chk(json_string(msg)));
    oset(item, "type", chk(json_string(type)));
    apush(r->errors, item);
}

/* ---------------------------------------------------------------------------------------------------------
 * field tables */

typedef enum {
    T_INT,     /* JSON integer (a real with an integral value is accepted) */
    T_NUM,     /* JSON number */
    T_STR,     /* string, at most maxlen characters (0 = no limit) */
    T_ENUM,    /* string from choices */
    T_DSREF,   /* {name, version} */
    T_DSREFS,  /* [{name, version}], at most maxlen items */
    T_STRLIST, /* [string], at most maxlen items */
    T_RECIPE,  /* {name (a §4.5 recipe), params} */
    T_POLICY,  /* {name, params} */
} ftype;

typedef struct fdef {
    const char *name;
    ftype type;
    int required;
    double lo;   /* NAN: no lower bound */
    int lo_excl; /* lo is exclusive (> rather than >=) */
    double hi;   /* NAN: no upper bound (bounds set by other fields are checked by the pair's rules) */
    size_t maxlen;
    const char *const *choices;
} fdef;

#define NB NAN
static const char *const BACKENDS[] = {"tinker", "ray", NULL};
static const char *const TRAINERS[] = {"sft", "rl", NULL};
static const char *const ALG_RL[] = {"importance_sampling", "ppo", NULL};
static const char *const EXEC_RL[] = {"sync", "one_step_off_async", "fully_async", NULL};
static const char *const ALG_GRPO[] = {"grpo", NULL};
static const char *const EXEC_GRPO[] = {"async", "colocated", "distributed", NULL};
static const char *const COMPUTES[] = {"f32", "bf16", NULL}; /* the engine's GEMM precision (gemm_bf16.h) */

static const char *const RECIPES[] = {"exact_match_v1",          "contains_v1",       "row_reward_v1",
                                      "trajectory_imitation_v1", "task_verifier_v1",  "gsm8k_v1",
                                      "task_env_verifier_v1",    "task_env_agent_v1", NULL};

#define NAME_MAX_CHARS 200
#define MAX_REFS 16
#define MAX_STOP 16
#define MAX_TAGS 32
#define TAG_MAX_CHARS 64

static const fdef SFT_FIELDS[] = {
    {"dataset_ref", T_DSREF, 0, NB, 0, NB, 0, NULL},
    {"trajectory_dataset_refs", T_DSREFS, 0, NB, 0, NB, MAX_REFS, NULL},
    {"eval_dataset_ref", T_DSREF, 0, NB, 0, NB, 0, NULL},
    {"max_sequence_length", T_INT, 0, 1, 0, NB, 0, NULL}, /* <= context length: pass 3 */
    {"batch_size", T_INT, 0, 1, 0, 4096, 0, NULL},
    {"gradient_accumulation_steps", T_INT, 0, 1, 0, 4096, 0, NULL},
    {"learning_rate", T_NUM, 0, 0, 1, 1, 0, NULL},
    {"steps", T_INT, 0, 1, 0, 1e7, 0, NULL},
    {"epochs", T_INT, 0, 1, 0, 1e4, 0, NULL},
    {"lora_rank", T_INT, 0, 1, 0, 512, 0, NULL},
    {"lora_alpha", T_NUM, 0, 0, 1, 4096, 0, NULL},
    {"checkpoint_interval", T_INT, 0, 1, 0, 1e7, 0, NULL},
    {"compute", T_ENUM, 0, NB, 0, NB, 0, COMPUTES},
    {NULL, 0, 0, 0, 0, 0, 0, NULL},
};

static const fdef RL_FIELDS[] = {
    {"algorithm", T_ENUM, 1, NB, 0, NB, 0, ALG_RL},
    {"task_ref", T_STR, 0, NB, 0, NB, 400, NULL},
    {"world_manifest_id", T_STR, 0, NB, 0, NB, NAME_MAX_CHARS, NULL},
    {"world_runtime_id", T_STR, 0, NB, 0, NB, NAME_MAX_CHARS, NULL},
    {"world_agent_name", T_STR, 0, NB, 0, NB, NAME_MAX_CHARS, NULL},
    {"world_goal", T_STR, 0, NB, 0, NB, NAME_MAX_CHARS, NULL},
    {"prompt_dataset_ref", T_DSREF, 0, NB, 0, NB, 0, NULL},
    {"trajectory_dataset_refs", T_DSREFS, 0, NB, 0, NB, MAX_REFS, NULL},
    {"reward_recipe", T_RECIPE, 0, NB, 0, NB, 0, NULL},
    {"world_reward", T_POLICY, 0, NB, 0, NB, 0, NULL},
    {"execution_mode", T_ENUM, 0, NB, 0, NB, 0, EXEC_RL},
    {"prompt_split", T_STR, 0, NB, 0, NB, NAME_MAX_CHARS, NULL},
    {"steps", T_INT, 0, 1, 0, 1e7, 0, NULL},
    {"lora_rank", T_INT, 0, 1, 0, 512, 0, NULL},
    {"lora_alpha", T_NUM, 0, 0, 1, 4096, 0, NULL},
    {"learning_rate", T_NUM, 0, 0, 1, 1, 0, NULL},
    {"max_turns", T_INT, 0, 1, 0, 1000, 0, NULL},
    {"max_episode_steps", T_INT, 0, 1, 0, 1e5, 0, NULL},
    {"num_rollouts", T_INT, 0, 1, 0, 65536, 0, NULL},
    {"batch_size", T_INT, 0, 1, 0, NB, 0, NULL}, /* <= num_rollouts: pair rules */
    {"weight_sync_interval", T_INT, 0, 1, 0, NB, 0, NULL},
    {"max_steps_off_policy", T_INT, 0, 1, 0, NB, 0, NULL},
    {"max_new_tokens", T_INT, 0, 1, 0, NB, 0, NULL}, /* <= context length: pass 3 */
    {"temperature", T_NUM, 0, 0, 0, 2, 0, NULL},
    {"stop", T_STRLIST, 0, NB, 0, NB, MAX_STOP, NULL},
    {"checkpoint_interval", T_INT, 0, 1, 0, NB, 0, NULL},
    {"eval_dataset_ref", T_DSREF, 0, NB, 0, NB, 0, NULL},
    {"eval_interval", T_INT, 0, 1, 0, NB, 0, NULL},
    {"eval_max_rollouts", T_INT, 0, 1, 0, NB, 0, NULL},
    {"compute", T_ENUM, 0, NB, 0, NB, 0, COMPUTES},
    {NULL, 0, 0, 0, 0, 0, 0, NULL},
};

static const fdef GRPO_FIELDS[] = {
    {"algorithm", T_ENUM, 0, NB, 0, NB, 0, ALG_GRPO},
    {"task_ref", T_STR, 1, NB, 0, NB, 400, NULL},
    {"prompt_dataset_ref", T_DSREF, 1, NB, 0, NB, 0, NULL},
    {"reward_recipe", T_RECIPE, 0, NB, 0, NB, 0, NULL},
    {"execution_mode", T_ENUM, 0, NB, 0, NB, 0, EXEC_GRPO},
    {"num_rollouts", T_INT, 0, 1, 0, 65536, 0, NULL},
    {"batch_size", T_INT, 0, 1, 0, 65536, 0, NULL},
    {"num_rollout_workers", T_INT, 0, 1, 0, 4096, 0, NULL},
    {"buffer_size", T_INT, 0, 1, 0, NB, 0, NULL},
    {"max_turns", T_INT, 0, 1, 0, 1000, 0, NULL},
    {"max_episode_steps", T_INT, 0, 1, 0, 1e5, 0, NULL},
    {"learning_rate", T_NUM, 0, 0, 1, 1, 0, NULL},
    {"checkpoint_interval", T_INT, 0, 1, 0, NB, 0, NULL},
    {"steps", T_INT, 0, 1, 0, 1e7, 0, NULL},
    {"compute", T_ENUM, 0, NB, 0, NB, 0, COMPUTES},
    {NULL, 0, 0, 0, 0, 0, 0, NULL},
};

static const fdef WRAPPER_FIELDS[] = {
    {"backend", T_ENUM, 1, NB, 0, NB, 0, BACKENDS},
    {"trainer_type", T_ENUM, 1, NB, 0, NB, 0, TRAINERS},
    {"model", T_STR, 1, NB, 0, NB, 400, NULL},
    {"capability_ref", T_DSREF, 1, NB, 0, NB, 0, NULL},
    {"config", T_POLICY /* placeholder: checked by hand */, 1, NB, 0, NB, 0, NULL},
    {"name", T_STR, 0, NB, 0, NB, NAME_MAX_CHARS, NULL},
    {"project_ref", T_STR, 0, NB, 0, NB, NAME_MAX_CHARS, NULL},
    {"run_ref", T_STR, 0, NB, 0, NB, NAME_MAX_CHARS, NULL},
    {"tags", T_STRLIST, 0, NB, 0, NB, MAX_TAGS, NULL},
    {NULL, 0, 0, 0, 0, 0, 0, NULL},
};

int js_is_reward_recipe(const char *name) {
    for (int i = 0; name && RECIPES[i]; i++)
        if (strcmp(name, RECIPES[i]) == 0) return 1;
    return 0;
}

static int in_choices(const char *s, const char *const *choices) {
    for (int i = 0; choices[i]; i++)
        if (strcmp(s, choices[i]) == 0) return 1;
    return 0;
}

static void choices_str(const char *const *choices, char *out, size_t len) {
    size_t n = 0;
    out[0] = '\0';
    for (int i = 0; choices[i]; i++) {
        int w = snprintf(out + n, len - n, "%s%s", i ? ", " : "", choices[i]);
        if (w < 0 || (size_t)w >= len - n) return;
        n += (size_t)w;
    }
}

static void names_str(const fdef *table, char *out, size_t len) {
    size_t n = 0;
    out[0] = '\0';
    for (int i = 0; table[i].name; i++) {
        int w = snprintf(out + n, len - n, "%s%s", i ? ", " : "", table[i].name);
        if (w < 0 || (size_t)w >= len - n) return;
        n += (size_t)w;
    }
}

static const fdef *find_field(const fdef *table, const char *name) {
    for (int i = 0; table[i].name; i++)
        if (strcmp(table[i].name, name) == 0) return &table[i];
    return NULL;
}

/* Formats a bound without a trailing ".000000": 4096, 1e-05, 0.5. */
static void fmt_num(double v, char out[32]) {
    if (v == floor(v) && fabs(v) < 1e15)
        snprintf(out, 32, "%.0f", v);
    else
        snprintf(out, 32, "%g", v);
}

/* Range check of a numeric value; adds the error and returns -1 when out of bounds. */
static int check_range(js_result *r, const json_t *loc, double v, double lo, int lo_excl, double hi) {
    char b[32];
    if (!isnan(lo) && (lo_excl ? !(v > lo) : !(v >= lo))) {
        fmt_num(lo, b);
        add_err(r, chk(json_copy((json_t *)loc)), lo_excl ? "greater_than" : "greater_than_equal",
                "must be %s %s", lo_excl ? ">" : ">=", b);
        return -1;
    }
    if (!isnan(hi) && !(v <= hi)) {
        fmt_num(hi, b);
        add_err(r, chk(json_copy((json_t *)loc)), "less_than_equal", "must be <= %s", b);
        return -1;
    }
    return 0;
}

/* Unknown keys of an object: one extra_forbidden item each. */
static void check_extra(js_result *r, const json_t *obj, const json_t *loc, const char *const *allowed,
                        const char *allowed_text) {
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v) {
        (void)v;
        if (!in_choices(k, allowed))
            add_err(r, loc_key(loc, k), "extra_forbidden", "unknown field '%s'; allowed: %s", k,
                    allowed_text);
    }
}

/* {name, version}: returns a normalized copy, or NULL after adding errors. */
static json_t *parse_ref(js_result *r, const json_t *v, const json_t *loc) {
    static const char *const KEYS[] = {"name", "version", NULL};
    if (!json_is_object(v)) {
        add_err(r, chk(json_copy((json_t *)loc)), "type_error", "must be an object {name, version}");
        return NULL;
    }
    int before = (int)json_array_size(r->errors);
    check_extra(r, v, loc, KEYS, "name, version");
    for (int i = 0; KEYS[i]; i++) {
        json_t *f = get(v, KEYS[i]);
        if (!f)
            add_err(r, loc_key(loc, KEYS[i]), "missing", "is required");
        else if (!json_is_string(f))
            add_err(r, loc_key(loc, KEYS[i]), "type_error", "must be a string");
        else if (json_string_length(f) == 0)
            add_err(r, loc_key(loc, KEYS[i]), "value_error", "must not be empty");
        else if (utf8_len(json_string_value(f)) > NAME_MAX_CHARS)
            add_err(r, loc_key(loc, KEYS[i]), "string_too_long", "must be at most %d characters",
                    NAME_MAX_CHARS);
    }
    if ((int)json_array_size(r->errors) != before) return NULL;
    json_t *out = chk(json_object());
    oset(out, "name", chk(json_string(get_str(v, "name"))));
    oset(out, "version", chk(json_string(get_str(v, "version"))));
    return out;
}

/* Params of a reward recipe: free-form, with the few keys the recipes read type-checked and the
 * defaults of SPEC §4.5 filled in. Returns the effective params or NULL after adding errors. */
static json_t *recipe_params(js_result *r, const char *name, const json_t *params, const json_t *loc) {
    int before = (int)json_array_size(r->errors);
    json_t *out = params ? chk(json_deep_copy((json_t *)params)) : chk(json_object());
    static const char *const NUMERIC[] = {
        "reward_if_true",          "reward_if_false", "default", "env_timeout_sec",
        "max_concurrent_rollouts", "max_turns",       NULL};
    for (int i = 0; NUMERIC[i]; i++) {
        json_t *v = get(out, NUMERIC[i]);
        if (v && !json_is_number(v)) add_err(r, loc_key(loc, NUMERIC[i]), "type_error", "must be a number");
    }
    json_t *exp = get(out, "expected");
    if (exp && !json_is_string(exp) && !json_is_number(exp))
        add_err(r, loc_key(loc, "expected"), "type_error", "must be a string");
    if (strcmp(name, "contains_v1") == 0) {
        json_t *needle = get(out, "needle");
        if (!needle)
            add_err(r, loc_key(loc, "needle"), "missing", "is required by contains_v1");
        else if (!json_is_string(needle))
            add_err(r, loc_key(loc, "needle"), "type_error", "must be a string");
        else if (json_string_length(needle) == 0)
            add_err(r, loc_key(loc, "needle"), "value_error", "must not be empty");
    }
    if ((int)json_array_size(r->errors) != before) {
        json_decref(out);
        return NULL;
    }
    /* defaults */
    struct {
        const char *recipe, *key;
        double v;
    } D[] = {
        {"row_reward_v1", "default", 0.0},
        {"*", "reward_if_true", 1.0},
        {"*", "reward_if_false", 0.0},
        {"task_env_verifier_v1", "max_concurrent_rollouts", 8},
        {"task_env_verifier_v1", "env_timeout_sec", 300},
        {"task_env_agent_v1", "max_turns", 20},
        {"task_env_agent_v1", "max_concurrent_rollouts", 8},
        {"task_env_agent_v1", "env_timeout_sec", 600},
    };
    for (size_t i = 0; i < sizeof D / sizeof D[0]; i++) {
        int applies =
            strcmp(D[i].recipe, name) == 0 || (D[i].recipe[0] == '*' && strcmp(name, "row_reward_v1") != 0 &&
                                               strcmp(name, "exact_match_v1") != 0);
        if (!applies || get(out, D[i].key)) continue;
        if (D[i].v == floor(D[i].v) && D[i].v > 1)
            oset(out, D[i].key, chk(json_integer((json_int_t)D[i].v)));
        else
            oset(out, D[i].key, chk(json_real(D[i].v)));
    }
    return out;
}

/* {name, params}: T_RECIPE checks the name against §4.5. Returns a normalized copy or NULL. */
static json_t *parse_named(js_result *r, const json_t *v, const json_t *loc, int is_recipe) {
    static const char *const KEYS[] = {"name", "params", NULL};
    if (!json_is_object(v)) {
        add_err(r, chk(json_copy((json_t *)loc)), "type_error", "must be an object {name, params}");
        return NULL;
    }
    int before = (int)json_array_size(r->errors);
    check_extra(r, v, loc, KEYS, "name, params");
    json_t *name = get(v, "name"), *params = get(v, "params");
    if (!name)
        add_err(r, loc_key(loc, "name"), "missing", "is required");
    else if (!json_is_string(name))
        add_err(r, loc_key(loc, "name"), "type_error", "must be a string");
    else if (is_recipe && !js_is_reward_recipe(json_string_value(name))) {
        char c[400];
        choices_str(RECIPES, c, sizeof c);
        add_err(r, loc_key(loc, "name"), "enum", "unknown reward recipe '%.80s'; must be one of: %s",
                json_string_value(name), c);
    } else if (!is_recipe && json_string_length(name) > NAME_MAX_CHARS)
        add_err(r, loc_key(loc, "name"), "string_too_long", "must be at most %d characters", NAME_MAX_CHARS);
    if (params && !json_is_object(params))
        add_err(r, loc_key(loc, "params"), "type_error", "must be an object");
    if ((int)json_array_size(r->errors) != before) return NULL;
    json_t *ploc = loc_key(loc, "params");
    json_t *p = is_recipe ? recipe_params(r, json_string_value(name), params, ploc)
                          : (params ? chk(json_deep_copy(params)) : chk(json_object()));
    json_decref(ploc);
    if (!p) return NULL;
    json_t *out = chk(json_object());
    oset(out, "name", chk(json_string(json_string_value(name))));
    oset(out, "params", p);
    return out;
}

/* One field value against its definition. Returns the normalized value (new reference) or NULL after
 * adding errors. */
static json_t *parse_field(js_result *r, const fdef *f, const json_t *v, const json_t *loc) {
    switch (f->type) {
    case T_INT: {
        double d;
        if (json_is_integer(v))
            d = (double)json_integer_value(v);
        else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
                 fabs(json_real_value(v)) < 9e15)
            d = json_real_value(v);
        else {
            add_err(r, chk(json_copy((json_t *)loc)), "type_error", "must be an integer");
            return NULL;
        }
        if (check_range(r, loc, d, f->lo, f->lo_excl, f->hi)) return NULL;
        return chk(json_integer(json_is_integer(v) ? json_integer_value(v) : (json_int_t)d));
    }
    case T_NUM: {
        if (!json_is_number(v)) {
            add_err(r, chk(json_copy((json_t *)loc)), "type_error", "must be a number");
            return NULL;
        }
        double d = json_number_value(v);
        if (check_range(r, loc, d, f->lo, f->lo_excl, f->hi)) return NULL;
        return chk(json_real(d));
    }
    case T_STR:
    case T_ENUM: {
        if (!json_is_string(v)) {
            add_err(r, chk(json_copy((json_t *)loc)), "type_error", "must be a string");
            return NULL;
        }
        const char *s = json_string_value(v);
        if (f->type == T_ENUM && !in_choices(s, f->choices)) {
            char c[200];
            choices_str(f->choices, c, sizeof c);
            add_err(r, chk(json_copy((json_t *)loc)), "enum", "must be one of: %s", c);
            return NULL;
        }
        if (f->maxlen && utf8_len(s) > f->maxlen) {
            add_err(r, chk(json_copy((json_t *)loc)), "string_too_long", "must be at most %zu characters",
                    f->maxlen);
            return NULL;
        }
        return chk(json_string(s));
    }
    case T_DSREF:
        return parse_ref(r, v, loc);
    case T_DSREFS:
    case T_STRLIST: {
        if (!json_is_array(v)) {
            add_err(r, chk(json_copy((json_t *)loc)), "type_error",
                    f->type == T_DSREFS ? "must be an array of {name, version} objects"
                                        : "must be an array of strings");
            return NULL;
        }
        int before = (int)json_array_size(r->errors);
        int is_tags = strcmp(f->name, "tags") == 0;
        if (f->maxlen && json_array_size(v) > f->maxlen)
            add_err(r, chk(json_copy((json_t *)loc)), "less_than_equal", "must have at most %zu items",
                    f->maxlen);
        json_t *out = chk(json_array());
        for (size_t i = 0; i < json_array_size(v) && i < 4096; i++) {
            json_t *e = json_array_get(v, i), *el = loc_idx(loc, i);
            if (f->type == T_DSREFS) {
                json_t *ref = parse_ref(r, e, el);
                if (ref) apush(out, ref);
            } else if (!json_is_string(e)) {
                add_err(r, json_incref(el), "type_error", "must be a string");
            } else if (is_tags && json_string_length(e) == 0) {
                add_err(r, json_incref(el), "value_error", "must not be empty (tags are 1..%d characters)",
                        TAG_MAX_CHARS);
            } else if (is_tags && utf8_len(json_string_value(e)) > TAG_MAX_CHARS) {
                add_err(r, json_incref(el), "string_too_long", "must be at most %d characters",
                        TAG_MAX_CHARS);
            } else {
                apush(out, chk(json_string(json_string_value(e))));
            }
            json_decref(el);
        }
        if ((int)json_array_size(r->errors) != before) {
            json_decref(out);
            return NULL;
        }
        return out;
    }
    case T_RECIPE:
    case T_POLICY:
        return parse_named(r, v, loc, f->type == T_RECIPE);
    }
    return NULL;
}

/* Checks every key of obj against table; fills vals with normalized values of the valid ones. */
static void parse_object(js_result *r, const json_t *obj, const fdef *table, const json_t *loc,
                         json_t *vals) {
    char allowed[1200];
    names_str(table, allowed, sizeof allowed);
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v) {
        const fdef *f = find_field(table, k);
        if (!f) {
            add_err(r, loc_key(loc, k), "extra_forbidden", "unknown field '%s'; allowed: %s", k, allowed);
            continue;
        }
        if (json_is_null(v) || strcmp(k, "config") == 0) continue; /* config is checked by its pair */
        json_t *fl = loc_key(loc, k);
        json_t *pv = parse_field(r, f, v, fl);
        json_decref(fl);
        if (pv) oset(vals, k, pv);
    }
    for (int i = 0; table[i].name; i++)
        if (table[i].required && !get(obj, table[i].name))
            add_err(r, loc_key(loc, table[i].name), "missing", "is required");
}

/* ---------------------------------------------------------------------------------------------------------
 * defaults and rules of each pair (pass 1) */

typedef enum { P_NONE, P_SFT, P_RL, P_GRPO } pair;

static json_int_t ival(const json_t *vals, const char *k, json_int_t dflt) {
    json_t *v = json_object_get(vals, k);
    return v ? json_integer_value(v) : dflt;
}

/* The client sent k (valid or not): a non-null value, and for a list a non-empty one. Rules of the kind
 * "at least one of" use it so that a field which already failed its own check is not reported twice. */
static int provided(const json_t *vals, const char *k) {
    json_t *v = get(json_object_get(vals, "__raw"), k);
    return v && (!json_is_array(v) || json_array_size(v) > 0);
}

static json_t *cfg_loc(const char *k) {
    return loc_new("body", "config", k, NULL);
}

static void rule(js_result *r, const char *k, const char *fmt, const char *name) {
    char msg[300];
    snprintf(msg, sizeof msg, fmt, name);
    add_err(r, k ? cfg_loc(k) : loc_new("body", "config", NULL), "value_error", "%s", msg);
}

/* Copy of vals[k], or a default (stolen), into eff. */
static void eff_set(json_t *eff, const json_t *vals, const char *k, json_t *dflt) {
    json_t *v = json_object_get(vals, k);
    if (v) {
        json_decref(dflt);
        oset(eff, k, chk(json_deep_copy(v)));
    } else {
        oset(eff, k, dflt);
    }
}

static void rules_sft(js_result *r, const json_t *vals, json_t *eff) {
    if (!provided(vals, "dataset_ref") && !provided(vals, "trajectory_dataset_refs"))
        rule(r, NULL, "%s", "needs dataset_ref or a non-empty trajectory_dataset_refs");
    eff_set(eff, vals, "dataset_ref", NULL);
    eff_set(eff, vals, "trajectory_dataset_refs", chk(json_array()));
    eff_set(eff, vals, "eval_dataset_ref", NULL);
    eff_set(eff, vals, "max_sequence_length", NULL); /* filled in pass 3 (needs the model) */
    eff_set(eff, vals, "batch_size", chk(json_integer(16)));
    eff_set(eff, vals, "gradient_accumulation_steps", chk(json_integer(1)));
    eff_set(eff, vals, "learning_rate", chk(json_real(1e-4)));
    eff_set(eff, vals, "steps", NULL);
    int neither = !json_object_get(vals, "steps") && !json_object_get(vals, "epochs");
    eff_set(eff, vals, "epochs", neither ? chk(json_integer(1)) : NULL);
    eff_set(eff, vals, "lora_rank", chk(json_integer(16)));
    eff_set(eff, vals, "lora_alpha", chk(json_real(32.0)));
    eff_set(eff, vals, "checkpoint_interval", chk(json_integer(10)));
    eff_set(eff, vals, "compute", chk(json_string("f32")));
}

/* Rules R8 and R10 on a recipe name; R9's first half (a task is needed at all). */
static void rules_recipe(js_result *r, const json_t *vals, const char *recipe, int worlds) {
    int has_task = json_object_get(vals, "task_ref") != NULL;
    int has_prompts = json_object_get(vals, "prompt_dataset_ref") != NULL;
    if ((strcmp(recipe, "task_env_verifier_v1") == 0 || strcmp(recipe, "task_env_agent_v1") == 0) &&
        (!has_task || !has_prompts)) {
        char msg[200];
        snprintf(msg, sizeof msg, "%%s needs %s%s%s", !has_task ? "task_ref" : "",
                 !has_task && !has_prompts ? " and " : "", !has_prompts ? "prompt_dataset_ref" : "");
        rule(r, "reward_recipe", msg, recipe);
    }
    if (strcmp(recipe, "task_verifier_v1") == 0 && !has_task)
        rule(r, "reward_recipe",
             "%s needs task_ref naming a task whose verification is method: flag with a "
             "sha256: hash",
             recipe);
    if (strcmp(recipe, "task_env_agent_v1") == 0 && !worlds)
        rule(r, "reward_recipe",
             "%s needs an environment backend: start the server with --worlds-url (LATHE_WORLDS_URL)",
             recipe);
}

static void rules_rl(js_result *r, const json_t *vals, json_t *eff, int worlds) {
    const char *mode = get_str(vals, "execution_mode");
    json_t *traj = json_object_get(vals, "trajectory_dataset_refs");
    int has_prompts = json_object_get(vals, "prompt_dataset_ref") != NULL;
    int has_traj = json_array_size(traj) > 0;
    /* R1, R2 */
    if (json_object_get(vals, "world_runtime_id") && !json_object_get(vals, "world_manifest_id"))
        rule(r, "world_runtime_id", "%s needs world_manifest_id", "world_runtime_id");
    if (json_object_get(vals, "world_agent_name") && !json_object_get(vals, "world_runtime_id"))
        rule(r, "world_agent_name", "%s needs world_runtime_id", "world_agent_name");
    /* R3: a list that failed its own checks is not reported again as missing */
    json_t *raw = json_object_get(vals, "__raw");
    if (!provided(vals, "prompt_dataset_ref") && !provided(vals, "world_manifest_id") &&
        !provided(vals, "trajectory_dataset_refs"))
        rule(r, NULL, "%s",
             "needs at least one of prompt_dataset_ref, world_manifest_id or a non-empty "
             "trajectory_dataset_refs");
    /* R4, R5 */
    json_t *msop = json_object_get(vals, "max_steps_off_policy");
    if (mode && strcmp(mode, "sync") != 0 && !msop && !get(raw, "max_steps_off_policy"))
        rule(r, "execution_mode", "execution_mode %s needs max_steps_off_policy", mode);
    else if (mode && strcmp(mode, "one_step_off_async") == 0 && msop && json_integer_value(msop) != 1)
        rule(r, "execution_mode", "execution_mode %s needs max_steps_off_policy = 1", mode);
    /* R6 */
    if (!json_object_get(vals, "eval_dataset_ref") && !get(raw, "eval_dataset_ref")) {
        if (get(raw, "eval_interval")) rule(r, "eval_interval", "%s needs eval_dataset_ref", "eval_interval");
        if (get(raw, "eval_max_rollouts"))
            rule(r, "eval_max_rollouts", "%s needs eval_dataset_ref", "eval_max_rollouts");
    }
    /* R10 */
    static const char *const WORLD[] = {"world_manifest_id", "world_runtime_id", "world_agent_name",
                                        "world_goal",        "world_reward",     NULL};
    for (int i = 0; WORLD[i] && !worlds; i++)
        if (get(raw, WORLD[i]))
            rule(r, WORLD[i],
                 "%s needs an environment backend: start the server with --worlds-url (LATHE_WORLDS_URL)",
                 WORLD[i]);
    if (get(raw, "prompt_split") && !has_prompts && !get(raw, "prompt_dataset_ref"))
        rule(r, "prompt_split", "%s needs prompt_dataset_ref", "prompt_split");
    /* recipe: row_reward_v1, or trajectory_imitation_v1 without prompts but with trajectories */
    json_t *recipe = json_object_get(vals, "reward_recipe");
    if (recipe) rules_recipe(r, vals, get_str(recipe, "name"), worlds);
    json_int_t num_rollouts = ival(vals, "num_rollouts", 8);
    json_int_t batch = ival(vals, "batch_size", num_rollouts < 8 ? num_rollouts : 8);
    if (json_object_get(vals, "batch_size") && batch > num_rollouts)
        add_err(r, cfg_loc("batch_size"), "less_than_equal", "must be <= num_rollouts (%lld)",
                (long long)num_rollouts);
    json_int_t steps = ival(vals, "steps", 1);
    int has_eval = json_object_get(vals, "eval_dataset_ref") != NULL;

    eff_set(eff, vals, "algorithm", NULL);
    eff_set(eff, vals, "task_ref", NULL); /* replaced by the resolved name@version in pass 2 */
    eff_set(eff, vals, "world_manifest_id", NULL);
    eff_set(eff, vals, "world_runtime_id", NULL);
    eff_set(eff, vals, "world_agent_name", NULL);
    eff_set(eff, vals, "world_goal", NULL);
    eff_set(eff, vals, "prompt_dataset_ref", NULL);
    eff_set(eff, vals, "trajectory_dataset_refs", chk(json_array()));
    if (!recipe) {
        const char *dflt = !has_prompts && has_traj ? "trajectory_imitation_v1" : "row_reward_v1";
        json_t *rr = chk(json_object());
        oset(rr, "name", chk(json_string(dflt)));
        oset(rr, "params", recipe_params(r, dflt, NULL, NULL));
        oset(eff, "reward_recipe", rr);
    } else {
        oset(eff, "reward_recipe", chk(json_deep_copy(recipe)));
    }
    eff_set(eff, vals, "world_reward", NULL);
    eff_set(eff, vals, "execution_mode", chk(json_string("sync")));
    eff_set(eff, vals, "prompt_split", NULL);
    eff_set(eff, vals, "steps", chk(json_integer(1)));
    eff_set(eff, vals, "lora_rank", chk(json_integer(16)));
    eff_set(eff, vals, "lora_alpha", chk(json_real(32.0)));
    eff_set(eff, vals, "learning_rate", chk(json_real(1e-4)));
    eff_set(eff, vals, "max_turns", chk(json_integer(8)));
    eff_set(eff, vals, "max_episode_steps", NULL);
    eff_set(eff, vals, "num_rollouts", chk(json_integer(num_rollouts)));
    eff_set(eff, vals, "batch_size", chk(json_integer(batch)));
    eff_set(eff, vals, "weight_sync_interval", chk(json_integer(1)));
    eff_set(eff, vals, "max_steps_off_policy", NULL);
    eff_set(eff, vals, "max_new_tokens", NULL); /* pass 3: min(128, context length) */
    eff_set(eff, vals, "temperature", chk(json_real(1.0)));
    eff_set(eff, vals, "stop", chk(json_array()));
    eff_set(eff, vals, "checkpoint_interval", chk(json_integer(steps)));
    eff_set(eff, vals, "eval_dataset_ref", NULL);
    eff_set(eff, vals, "eval_interval", has_eval ? chk(json_integer(10)) : NULL);
    eff_set(eff, vals, "eval_max_rollouts", has_eval ? chk(json_integer(batch)) : NULL);
    eff_set(eff, vals, "compute", chk(json_string("f32")));
}

static void rules_grpo(js_result *r, const json_t *vals, json_t *eff, int worlds) {
    const char *mode = get_str(vals, "execution_mode");
    if (!mode) mode = "async";
    json_int_t workers = ival(vals, "num_rollout_workers", 1);
    if (workers > 1 && strcmp(mode, "distributed") != 0)
        rule(r, "num_rollout_workers", "%s > 1 needs execution_mode distributed", "num_rollout_workers");
    json_t *recipe = json_object_get(vals, "reward_recipe");
    if (recipe) rules_recipe(r, vals, get_str(recipe, "name"), worlds);
    json_int_t batch = ival(vals, "batch_size", 8);
    json_int_t steps = ival(vals, "steps", 1);

    oset(eff, "algorithm", chk(json_string("grpo")));
    eff_set(eff, vals, "task_ref", NULL);
    eff_set(eff, vals, "prompt_dataset_ref", NULL);
    /* without a recipe: pass 3 derives it from the task's verification */
    oset(eff, "reward_recipe", recipe ? chk(json_deep_copy(recipe)) : NULL);
    oset(eff, "execution_mode", chk(json_string(mode)));
    eff_set(eff, vals, "num_rollouts", chk(json_integer(8)));
    eff_set(eff, vals, "batch_size", chk(json_integer(8)));
    eff_set(eff, vals, "num_rollout_workers", chk(json_integer(1)));
    eff_set(eff, vals, "buffer_size", chk(json_integer(batch)));
    eff_set(eff, vals, "max_turns", chk(json_integer(8)));
    eff_set(eff, vals, "max_episode_steps", NULL);
    eff_set(eff, vals, "learning_rate", chk(json_real(1e-5)));
    eff_set(eff, vals, "steps", chk(json_integer(1)));
    eff_set(eff, vals, "checkpoint_interval", chk(json_integer(steps)));
    eff_set(eff, vals, "compute", chk(json_string("f32")));
    /* engine knobs GRPO uses without exposing them as fields */
    oset(eff, "lora_rank", chk(json_integer(16)));
    oset(eff, "lora_alpha", chk(json_real(32.0)));
    oset(eff, "temperature", chk(json_real(1.0)));
    oset(eff, "max_new_tokens", NULL); /* pass 3 */
}

/* ---------------------------------------------------------------------------------------------------------
 * resolution (pass 2) and the rules that need it (pass 3) */

typedef struct resolve_state {
    const js_ctx *ctx;
    js_result *r;
    json_t *refs; /* [{kind, name, version}] */
    int hard;     /* a non-404 failure happened: status and detail already set */
} resolve_state;

static void hard_fail(resolve_state *s, const lt_err *e) {
    if (s->hard) return;
    s->hard = 1;
    s->r->status = e->code ? e->code : 500;
    snprintf(s->r->detail, sizeof s->r->detail, "%s", e->msg[0] ? e->msg : "reference lookup failed");
}

/* Splits an optional "org/" prefix off name; returns the bare name, or NULL when the prefix names another
 * org (the caller reports not_found without saying whether it exists). */
static const char *strip_org(const js_ctx *ctx, const char *name) {
    const char *slash = strchr(name, '/');
    if (!slash) return name;
    size_t n = (size_t)(slash - name);
    if (!ctx->org_key || strlen(ctx->org_key) != n || strncmp(ctx->org_key, name, n) != 0) return NULL;
    return slash + 1;
}

static void add_ref(resolve_state *s, const char *kind, const json_t *art) {
    const char *name = get_str(art, "name"), *version = get_str(art, "version");
    for (size_t i = 0; i < json_array_size(s->refs); i++) {
        json_t *e = json_array_get(s->refs, i);
        if (strcmp(get_str(e, "kind"), kind) == 0 && strcmp(get_str(e, "name"), name) == 0 &&
            strcmp(get_str(e, "version"), version) == 0)
            return;
    }
    json_t *e = chk(json_object());
    oset(e, "kind", chk(json_string(kind)));
    oset(e, "name", chk(json_string(name)));
    oset(e, "version", chk(json_string(version)));
    apush(s->refs, e);
}

/* Resolves one artifact; on success returns it (owned) and records the ref, else adds not_found at loc
 * (stolen either way). */
static json_t *resolve_art(resolve_state *s, const char *kind, const char *name, const char *version,
                           json_t *loc) {
    const char *bare = strip_org(s->ctx, name);
    lt_err e;
    lt_err_clear(&e);
    json_t *art = NULL;
    if (bare && *bare) art = s->ctx->res->artifact(s->ctx->res->ud, kind, bare, version, &e);
    if (!art) {
        if (bare && *bare && e.code != 404 && e.code != 0)
            hard_fail(s, &e);
        else
            add_err(s->r, json_incref(loc), "not_found",
                    "not found: no %s '%.200s%s%.100s' in this organization", kind, name, version ? "@" : "",
                    version ? version : "");
        json_decref(loc);
        return NULL;
    }
    json_decref(loc);
    if (!get_str(art, "name") || !get_str(art, "version")) {
        lt_err bad;
        lt_err_set(&bad, 500, "the artifact store returned %s '%s' without a name or version", kind, name);
        hard_fail(s, &bad);
        json_decref(art);
        return NULL;
    }
    add_ref(s, kind, art);
    return art;
}

/* Resolves a {name, version} ref held in eff[key] (or eff[key][i]) and rewrites it to the bare name. */
static json_t *resolve_dsref(resolve_state *s, json_t *ref, json_t *loc) {
    json_t *art = resolve_art(s, "dataset", get_str(ref, "name"), get_str(ref, "version"), loc);
    if (art) oset(ref, "name", chk(json_string(get_str(art, "name"))));
    return art;
}

/* task_ref "[org/]name[@version]" ("@latest" = no version). */
static json_t *resolve_task(resolve_state *s, const char *ref, json_t *loc) {
    char buf[512];
    snprintf(buf, sizeof buf, "%s", ref);
    char *at = strrchr(buf, '@');
    const char *version = NULL;
    if (at) {
        *at = '\0';
        version = at + 1;
        if (strcmp(version, "latest") == 0 || !*version) version = NULL;
    }
    return resolve_art(s, "task", buf, version, loc);
}

/* Verification object of a resolved task (manifest.verification). */
static const json_t *task_verification(const json_t *task) {
    return task ? get(get(task, "manifest"), "verification") : NULL;
}

static int is_flag_task(const json_t *task) {
    const json_t *v = task_verification(task);
    const char *method = get_str(v, "method");
    const char *hash = get_str(v, "hash");
    if (!hash) hash = get_str(v, "flag_hash");
    return method && strcmp(method, "flag") == 0 && hash && strncmp(hash, "sha256:", 7) == 0;
}

static void resolve_and_finish(resolve_state *s, pair p, const json_t *vals_w, json_t *job, json_t *eff) {
    const js_resolver *res = s->ctx->res;
    js_result *r = s->r;
    lt_err e;

    /* model */
    int ctx_len = 0;
    const char *model = get_str(vals_w, "model");
    lt_err_clear(&e);
    if (res->model(res->ud, model, &ctx_len, &e) != 0) {
        if (e.code == 404 || e.code == 0)
            add_err(r, loc_new("body", "model", NULL), "not_found",
                    "not found: '%.200s' is neither a catalog model (GET /api/v1/training/catalog) nor a "
                    "checkpoint of a "
                    "job of this workspace (jobs/<job_id>[/checkpoints/<name>])",
                    model);
        else
            hard_fail(s, &e);
    }
    /* capability */
    json_t *cref = json_object_get(vals_w, "capability_ref");
    json_t *cap = resolve_art(s, "capability", get_str(cref, "name"), get_str(cref, "version"),
                              loc_new("body", "capability_ref", NULL));
    if (cap) {
        json_t *c = chk(json_object());
        oset(c, "artifact_id", str_or_null(get_str(cap, "id")));
        oset(c, "name", chk(json_string(get_str(cap, "name"))));
        oset(c, "version", chk(json_string(get_str(cap, "version"))));
        oset(c, "runtime_digest", str_or_null(get_str(cap, "digest")));
        oset(job, "capability", c);
        json_decref(cap);
    }
    /* project */
    char project[256];
    lt_err_clear(&e);
    const char *pref = get_str(vals_w, "project_ref");
    if (res->project(res->ud, pref, project, sizeof project, &e) != 0) {
        if (e.code == 404 || e.code == 0)
            add_err(r, loc_new("body", "project_ref", NULL), "not_found",
                    "not found: no project '%.200s' in this workspace", pref ? pref : "(default)");
        else
            hard_fail(s, &e);
    } else {
        oset(job, "project_ref", chk(json_string(project)));
    }
    /* datasets */
    static const char *const SINGLE[] = {"dataset_ref", "eval_dataset_ref", "prompt_dataset_ref", NULL};
    json_t *prompt_ds = NULL;
    for (int i = 0; SINGLE[i]; i++) {
        json_t *ref = get(eff, SINGLE[i]);
        if (!ref) continue;
        json_t *art = resolve_dsref(s, ref, cfg_loc(SINGLE[i]));
        if (art && strcmp(SINGLE[i], "prompt_dataset_ref") == 0)
            prompt_ds = art;
        else
            json_decref(art);
    }
    json_t *traj = get(eff, "trajectory_dataset_refs");
    for (size_t i = 0; i < json_array_size(traj); i++) {
        json_t *l = cfg_loc("trajectory_dataset_refs");
        json_t *li = loc_idx(l, i);
        json_decref(l);
        json_decref(resolve_dsref(s, json_array_get(traj, i), li));
    }
    /* task */
    json_t *task = NULL;
    const char *tref = get_str(eff, "task_ref");
    if (tref) {
        task = resolve_task(s, tref, cfg_loc("task_ref"));
        if (task) {
            char tr[512];
            snprintf(tr, sizeof tr, "%s@%s", get_str(task, "name"), get_str(task, "version"));
            oset(eff, "task_ref", chk(json_string(tr)));
        }
    }
    if (s->hard || json_array_size(r->errors)) goto out;
    r->status = 0;

    /* pass 3: context length */
    const char *ctx_field = p == P_SFT ? "max_sequence_length" : "max_new_tokens";
    json_int_t dflt = p == P_SFT ? 2048 : 128;
    json_t *cur = get(eff, ctx_field);
    if (cur && json_integer_value(cur) > ctx_len)
        add_err(r, cfg_loc(ctx_field), "less_than_equal",
                "must be <= %d (the context length of model %.200s)", ctx_len, model);
    else if (!cur)
        oset(eff, ctx_field, chk(json_integer(dflt < ctx_len ? dflt : ctx_len)));
    /* prompt_split */
    const char *split = get_str(eff, "prompt_split");
    if (split && prompt_ds && !json_object_get(get(prompt_ds, "splits"), split)) {
        char names[300] = "";
        size_t n = 0;
        const char *k;
        json_t *v;
        json_object_foreach(get(prompt_ds, "splits"), k, v) {
            (void)v;
            int w = snprintf(names + n, sizeof names - n, "%s%s", n ? ", " : "", k);
            if (w < 0 || (size_t)w >= sizeof names - n) break;
            n += (size_t)w;
        }
        add_err(r, cfg_loc("prompt_split"), "value_error",
                "split '%.100s' is not in dataset %s@%s (splits: %s)", split, get_str(prompt_ds, "name"),
                get_str(prompt_ds, "version"), n ? names : "none");
    }
    /* R9, and GRPO's task-derived recipe */
    json_t *recipe = get(eff, "reward_recipe");
    if (recipe && strcmp(get_str(recipe, "name"), "task_verifier_v1") == 0 && task && !is_flag_task(task))
        add_err(r, cfg_loc("reward_recipe"), "value_error",
                "task_verifier_v1 needs a task whose verification is method: flag with a sha256: hash; task "
                "%s@%s uses %s",
                get_str(task, "name"), get_str(task, "version"),
                get_str(task_verification(task), "method") ? get_str(task_verification(task), "method")
                                                           : "no verification");
    if (p == P_GRPO && !recipe) {
        const char *name = is_flag_task(task) ? "task_verifier_v1" : "exact_match_v1";
        json_t *rr = chk(json_object());
        oset(rr, "name", chk(json_string(name)));
        oset(rr, "params", recipe_params(r, name, NULL, NULL));
        oset(eff, "reward_recipe", rr);
    }
    if (json_array_size(r->errors)) r->status = 422;
out:
    json_decref(prompt_ds);
    json_decref(task);
}

/* Without a resolver (fuzzer, schema-only tests): context-dependent defaults use the SPEC's numbers. */
static void finish_unresolved(pair p, json_t *eff) {
    const char *ctx_field = p == P_SFT ? "max_sequence_length" : "max_new_tokens";
    if (!get(eff, ctx_field)) oset(eff, ctx_field, chk(json_integer(p == P_SFT ? 2048 : 128)));
    if (p == P_GRPO && !get(eff, "reward_recipe")) {
        json_t *rr = chk(json_object());
        oset(rr, "name", chk(json_string("exact_match_v1")));
        oset(rr, "params", chk(json_object()));
        oset(eff, "reward_recipe", rr);
    }
}

/* ---------------------------------------------------------------------------------------------------------
 * entry point */

static void set_detail(js_result *r) {
    size_t n = json_array_size(r->errors);
    if (n == 0) return;
    if (r->errors_omitted) {
        const json_t *e = json_array_get(r->errors, 0);
        char loc[256];
        js_loc_str(json_object_get(e, "loc"), loc, sizeof loc);
        snprintf(r->detail, sizeof r->detail, "%s%s%s (and %zu more errors; the first %zu are listed)", loc,
                 loc[0] ? " " : "", json_string_value(json_object_get(e, "msg")), n - 1 + r->errors_omitted,
                 n);
        return;
    }
    const json_t *e = json_array_get(r->errors, 0);
    char loc[256];
    js_loc_str(json_object_get(e, "loc"), loc, sizeof loc);
    if (n == 1)
        snprintf(r->detail, sizeof r->detail, "%s%s%s", loc, loc[0] ? " " : "",
                 json_string_value(json_object_get(e, "msg")));
    else
        snprintf(r->detail, sizeof r->detail, "%s%s%s (and %zu more error%s)", loc, loc[0] ? " " : "",
                 json_string_value(json_object_get(e, "msg")), n - 1, n - 1 == 1 ? "" : "s");
}

static json_t *pick(const json_t *o, const char *k) {
    json_t *v = get(o, k);
    return v ? chk(json_deep_copy(v)) : json_null();
}

int js_validate_create(const json_t *body, const js_ctx *ctx, js_result *out) {
    memset(out, 0, sizeof *out);
    out->errors = chk(json_array());
    js_result *r = out;
    json_t *vals_w = chk(json_object()), *vals_c = chk(json_object()), *eff = NULL, *job = NULL;
    pair p = P_NONE;

    if (!json_is_object(body)) {
        add_err(r, loc_new("body", NULL), "type_error", "the body must be a JSON object");
        goto done;
    }
    json_t *bl = loc_new("body", NULL);
    parse_object(r, body, WRAPPER_FIELDS, bl, vals_w);
    json_decref(bl);
    const char *backend = get_str(vals_w, "backend"), *trainer = get_str(vals_w, "trainer_type");
    if (backend && trainer) {
        if (strcmp(backend, "tinker") == 0)
            p = strcmp(trainer, "sft") == 0 ? P_SFT : P_RL;
        else if (strcmp(trainer, "rl") == 0)
            p = P_GRPO;
        else
            add_err(
                r, loc_new("body", "trainer_type", NULL), "value_error",
                "backend ray supports only trainer_type rl (allowed pairs: tinker/sft, tinker/rl, ray/rl)");
    }
    json_t *config = get(body, "config");
    if (config && !json_is_object(config)) {
        add_err(r, loc_new("body", "config", NULL), "type_error", "must be an object");
        config = NULL;
    }
    if (config && p != P_NONE) {
        json_t *cl = loc_new("body", "config", NULL);
        parse_object(r, config, p == P_SFT ? SFT_FIELDS : p == P_RL ? RL_FIELDS : GRPO_FIELDS, cl, vals_c);
        json_decref(cl);
        oset(vals_c, "__raw", json_incref(config)); /* read only: what the client sent, for rule checks */
        eff = chk(json_object());
        int worlds = ctx ? ctx->worlds_enabled : 0;
        if (p == P_SFT)
            rules_sft(r, vals_c, eff);
        else if (p == P_RL)
            rules_rl(r, vals_c, eff, worlds);
        else
            rules_grpo(r, vals_c, eff, worlds);
    }
    if (json_array_size(r->errors) || !eff) {
        r->status = 422;
        goto done;
    }

    job = chk(json_object());
    oset(job, "backend", chk(json_string(backend)));
    oset(job, "trainer_type", chk(json_string(trainer)));
    oset(job, "algorithm", p == P_SFT ? json_null() : pick(eff, "algorithm"));
    oset(job, "model", pick(vals_w, "model"));
    oset(job, "name", pick(vals_w, "name"));
    oset(job, "project_ref", pick(vals_w, "project_ref"));
    oset(job, "run_ref", pick(vals_w, "run_ref"));
    json_t *cref = json_object_get(vals_w, "capability_ref");
    json_t *cap = chk(json_object());
    oset(cap, "artifact_id", json_null());
    oset(cap, "name", pick(cref, "name"));
    oset(cap, "version", pick(cref, "version"));
    oset(cap, "runtime_digest", json_null());
    oset(job, "capability", cap);
    oset(job, "config", chk(json_deep_copy(config)));
    oset(job, "tags", get(vals_w, "tags") ? pick(vals_w, "tags") : chk(json_array()));

    if (ctx && ctx->res) {
        resolve_state s = {ctx, r, chk(json_array()), 0};
        r->status = 404;
        resolve_and_finish(&s, p, vals_w, job, eff);
        if (s.hard) {
            json_decref(s.refs);
            json_array_clear(r->errors);
            goto done;
        }
        if (r->status != 0) {
            json_decref(s.refs);
            goto done;
        }
        r->refs = s.refs;
    } else {
        finish_unresolved(p, eff);
        r->refs = chk(json_array());
    }
    /* lifted copies of the config's references, as the job object shows them */
    oset(job, "dataset_ref", pick(eff, "dataset_ref"));
    oset(job, "trajectory_dataset_refs",
         get(eff, "trajectory_dataset_refs") ? pick(eff, "trajectory_dataset_refs") : chk(json_array()));
    oset(job, "task_ref", pick(eff, "task_ref"));
    oset(job, "world_manifest_id", pick(eff, "world_manifest_id"));
    oset(job, "world_runtime_id", pick(eff, "world_runtime_id"));
    oset(job, "world_agent_name", pick(eff, "world_agent_name"));
    oset(job, "world_goal", pick(eff, "world_goal"));
    oset(job, "prompt_dataset_ref", pick(eff, "prompt_dataset_ref"));
    oset(job, "effective_config", eff);
    eff = NULL;
    r->job = job;
    job = NULL;
    r->status = 0;

done:
    set_detail(r);
    if (r->status == 0 && json_array_size(r->errors)) r->status = 422;
    if (r->status != 0 && r->detail[0] == '\0') snprintf(r->detail, sizeof r->detail, "invalid request");
    json_decref(vals_w);
    json_decref(vals_c);
    json_decref(eff);
    json_decref(job);
    return r->status;
}

void js_result_free(js_result *r) {
    if (!r) return;
    json_decref(r->errors);
    json_decref(r->job);
    json_decref(r->refs);
    r->errors = r->job = r->refs = NULL;
}

/* ---------------------------------------------------------------------------------------------------------
 * the secret filter */

int js_secret_name(const char *name) {
    static const char *const EXACT[] = {"auth",    "authorization", "credentials", "credential",
                                        "cookie",  "setcookie",     "passphrase",  "apikey",
                                        "xapikey", "privatekey",    NULL};
    static const char *const SUFFIX[] = {"token",      "secret",      "password",      "passwd",
                                         "apikey",     "privatekey",  "accesskey",     "secretkey",
                                         "credential", "credentials", "authorization", NULL};
    char norm[128];
    size_t n = 0;
    for (const char *p = name; *p && n + 1 < sizeof norm; p++) {
        char c = *p;
        if (c == '-' || c == '_' || c == '.' || c == ' ') continue;
        norm[n++] = (char)(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    }
    norm[n] = '\0';
    for (int i = 0; EXACT[i]; i++)
        if (!strcmp(norm, EXACT[i])) return 1;
    for (int i = 0; SUFFIX[i]; i++) {
        size_t m = strlen(SUFFIX[i]);
        if (n >= m && !strcmp(norm + n - m, SUFFIX[i])) return 1;
    }
    return 0;
}

static int secret_value(const json_t *v) {
    const char *s = json_string_value(v);
    if (!s) return 0;
    while (*s == ' ')
        s++;
    return !strncasecmp(s, "bearer ", 7) || !strncasecmp(s, "basic ", 6);
}

int js_redact_secrets(json_t *v) {
    int n = 0;
    if (json_is_object(v)) {
        const char *k;
        json_t *m;
        void *tmp;
        json_object_foreach_safe(v, tmp, k, m) {
            if (js_secret_name(k) || secret_value(m)) {
                json_object_del(v, k);
                n++;
            } else {
                n += js_redact_secrets(m);
            }
        }
    } else if (json_is_array(v)) {
        for (size_t i = json_array_size(v); i-- > 0;) {
            json_t *m = json_array_get(v, i);
            if (secret_value(m)) {
                json_array_remove(v, i);
                n++;
            } else {
                n += js_redact_secrets(m);
            }
        }
    }
    return n;
}
