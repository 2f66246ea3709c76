/* test_jobs_schema.c: the create-job validator (src/api/jobs_schema.c): every type/range error type, the
 * cross-field rules R1-R10, null == missing, defaults and effective_config, and reference resolution.
 *
 * Resolution goes through the js_resolver callbacks; here they read a small in-memory registry (a JSON
 * object) that stands for the artifact store, the catalog and the workspace's projects. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "api/jobs_schema.h"
#include "util/strbuf.h"

/* ---- the registry behind the resolver ---- */

static const char *REGISTRY =
    "{\"models\": {\"tiny\": 512, \"big\": 131072},"
    " \"projects\": [\"default\", \"research\"],"
    " \"dataset\": {"
    "   \"chat@1.0.0\": {\"id\": \"d1\", \"digest\": \"sha256:aa\", \"splits\": {\"train\": 10, \"test\": "
    "2}},"
    "   \"prompts@0.1.0\": {\"id\": \"d2\", \"digest\": \"sha256:bb\", \"splits\": {\"train\": 5, \"hard\": "
    "3}},"
    "   \"traj@2.0.0\": {\"id\": \"d3\", \"digest\": \"sha256:cc\", \"splits\": {\"train\": 4}}},"
    " \"capability\": {"
    "   \"assistant@1.2.0\": {\"id\": \"c1\", \"digest\": \"sha256:dd\"}},"
    " \"task\": {"
    "   \"flagtask@1.0.0\": {\"id\": \"t1\", \"digest\": \"sha256:ee\", \"manifest\": {\"verification\":"
    "        {\"method\": \"flag\", \"hash\": \"sha256:0123\"}}},"
    "   \"flagtask@1.1.0\": {\"id\": \"t2\", \"digest\": \"sha256:ef\", \"manifest\": {\"verification\":"
    "        {\"method\": \"flag\", \"hash\": \"sha256:4567\"}}},"
    "   \"exacttask@1.0.0\": {\"id\": \"t3\", \"digest\": \"sha256:ff\", \"manifest\": {\"verification\":"
    "        {\"method\": \"exact\", \"expected\": \"42\"}}}}}";

static json_t *registry;
static int fail_code; /* when set, every artifact lookup fails with this code (store trouble) */

static int r_model(void *ud, const char *model, int *ctx_len, lt_err *err) {
    json_t *v = json_object_get(json_object_get(registry, "models"), model);
    if (!v) return lt_err_set(err, 404, "no model %s", model);
    *ctx_len = (int)json_integer_value(v);
    return 0;
}

static json_t *r_artifact(void *ud, const char *kind, const char *name, const char *version, lt_err *err) {
    if (fail_code) {
        lt_err_set(err, fail_code, "store unavailable");
        return NULL;
    }
    json_t *k = json_object_get(registry, kind);
    const char *key, *best = NULL;
    json_t *v, *hit = NULL;
    size_t nlen = strlen(name);
    json_object_foreach(k, key, v) {
        if (strncmp(key, name, nlen) != 0 || key[nlen] != '@') continue;
        if (version && strcmp(key + nlen + 1, version) != 0) continue;
        if (!best || strcmp(key + nlen + 1, best) > 0) {
            best = key + nlen + 1;
            hit = v;
        }
    }
    if (!hit) {
        lt_err_set(err, 404, "%s %s not found", kind, name);
        return NULL;
    }
    json_t *out = json_deep_copy(hit);
    json_object_set_new(out, "name", json_string(name));
    json_object_set_new(out, "version", json_string(best));
    return out;
}

static int r_project(void *ud, const char *key, char *out, size_t n, lt_err *err) {
    if (!key) key = "default";
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(registry, "projects"), i, v) {
        if (strcmp(json_string_value(v), key) == 0) {
            snprintf(out, n, "%s", key);
            return 0;
        }
    }
    return lt_err_set(err, 404, "no project %s", key);
}

static const js_resolver RES = {NULL, r_model, r_artifact, r_project};

/* ---- helpers ---- */

static js_result R;

static int run_ctx(const char *body, int resolve, int worlds) {
    json_error_t je;
    json_t *b = json_loads(body, JSON_DECODE_ANY, &je);
    if (!b) fail_msg("test body is not JSON: %s (%s)", je.text, body);
    js_ctx ctx = {"acme", worlds, resolve ? &RES : NULL};
    js_result_free(&R);
    int st = js_validate_create(b, &ctx, &R);
    json_decref(b);
    return st;
}

static int run(const char *body) {
    return run_ctx(body, 1, 0);
}

/* 1 when R has an error item with this loc (JSON text, e.g. "[\"body\",\"model\"]") and type. */
static int has(const char *loc, const char *type) {
    json_t *want = json_loads(loc, JSON_DECODE_ANY, NULL);
    assert_non_null(want);
    size_t i;
    json_t *e;
    int found = 0;
    json_array_foreach(R.errors, i, e) {
        if (json_equal(json_object_get(e, "loc"), want) &&
            strcmp(json_string_value(json_object_get(e, "type")), type) == 0)
            found = 1;
    }
    json_decref(want);
    return found;
}

static void expect_err(const char *loc, const char *type) {
    if (!has(loc, type)) {
        char *dump = json_dumps(R.errors, JSON_COMPACT);
        fail_msg("expected %s at %s; got %s", type, loc, dump);
    }
}

static void expect_only(const char *loc, const char *type) {
    expect_err(loc, type);
    if (json_array_size(R.errors) != 1) {
        char *dump = json_dumps(R.errors, JSON_COMPACT);
        fail_msg("expected exactly one error (%s at %s); got %s", type, loc, dump);
    }
}

static const char *msg0(void) {
    return json_string_value(json_object_get(json_array_get(R.errors, 0), "msg"));
}

static json_t *eff(const char *k) {
    return json_object_get(json_object_get(R.job, "effective_config"), k);
}

/* A valid SFT body with the given config members spliced in. */
static char buf[8192];
static const char *sft(const char *cfg) {
    snprintf(buf, sizeof buf,
             "{\"backend\":\"tinker\",\"trainer_type\":\"sft\",\"model\":\"tiny\","
             "\"capability_ref\":{\"name\":\"assistant\",\"version\":\"1.2.0\"},"
             "\"config\":{\"dataset_ref\":{\"name\":\"chat\",\"version\":\"1.0.0\"}%s%s}}",
             cfg[0] ? "," : "", cfg);
    return buf;
}

static const char *rl(const char *cfg) {
    snprintf(buf, sizeof buf,
             "{\"backend\":\"tinker\",\"trainer_type\":\"rl\",\"model\":\"tiny\","
             "\"capability_ref\":{\"name\":\"assistant\",\"version\":\"1.2.0\"},"
             "\"config\":{\"algorithm\":\"importance_sampling\"%s%s}}",
             cfg[0] ? "," : "", cfg);
    return buf;
}

#define PROMPTS "\"prompt_dataset_ref\":{\"name\":\"prompts\",\"version\":\"0.1.0\"}"

static const char *grpo(const char *cfg) {
    snprintf(buf, sizeof buf,
             "{\"backend\":\"ray\",\"trainer_type\":\"rl\",\"model\":\"tiny\","
             "\"capability_ref\":{\"name\":\"assistant\",\"version\":\"1.2.0\"},"
             "\"config\":{\"task_ref\":\"exacttask\"," PROMPTS "%s%s}}",
             cfg[0] ? "," : "", cfg);
    return buf;
}

/* ---- wrapper ---- */

static void test_seed_body_schema(void **state) {
    /* The seed page's example body, schema only (its references are placeholders). */
    const char *seed =
        "{\"backend\":\"tinker\",\"capability_ref\":{\"name\":\"example\",\"version\":\"example\"},"
        "\"config\":{\"batch_size\":1,\"checkpoint_interval\":1,\"dataset_ref\":{\"name\":\"example\","
        "\"version\":\"example\"},\"epochs\":1,\"eval_dataset_ref\":{\"name\":\"example\",\"version\":"
        "\"example\"},\"gradient_accumulation_steps\":1,\"learning_rate\":1,\"lora_alpha\":1,\"lora_rank\":1,"
        "\"max_sequence_length\":1,\"steps\":1,\"trajectory_dataset_refs\":[{\"name\":\"example\","
        "\"version\":"
        "\"example\"}]},\"model\":\"example\",\"name\":\"example\",\"project_ref\":\"example\",\"run_ref\":"
        "\"example\",\"tags\":[\"example\"],\"trainer_type\":\"sft\"}";
    assert_int_equal(run_ctx(seed, 0, 0), 0);
    assert_string_equal(json_string_value(json_object_get(R.job, "backend")), "tinker");
    assert_int_equal(json_integer_value(eff("max_sequence_length")), 1);
    assert_true(json_real_value(eff("learning_rate")) == 1.0);
    /* with resolution, the placeholders are 404s naming each field */
    assert_int_equal(run_ctx(seed, 1, 0), 404);
    expect_err("[\"body\",\"model\"]", "not_found");
    expect_err("[\"body\",\"capability_ref\"]", "not_found");
    expect_err("[\"body\",\"project_ref\"]", "not_found");
    expect_err("[\"body\",\"config\",\"dataset_ref\"]", "not_found");
    expect_err("[\"body\",\"config\",\"eval_dataset_ref\"]", "not_found");
    expect_err("[\"body\",\"config\",\"trajectory_dataset_refs\",0]", "not_found");
}

static void test_not_object(void **state) {
    assert_int_equal(run("[1,2]"), 422);
    expect_only("[\"body\"]", "type_error");
    assert_int_equal(run("{\"backend\":\"tinker\",\"trainer_type\":\"sft\",\"model\":\"tiny\","
                         "\"capability_ref\":{\"name\":\"assistant\",\"version\":\"1.2.0\"},\"config\":[]}"),
                     422);
    expect_only("[\"body\",\"config\"]", "type_error");
}

static void test_missing_required(void **state) {
    assert_int_equal(run("{}"), 422);
    expect_err("[\"body\",\"backend\"]", "missing");
    expect_err("[\"body\",\"trainer_type\"]", "missing");
    expect_err("[\"body\",\"model\"]", "missing");
    expect_err("[\"body\",\"capability_ref\"]", "missing");
    expect_err("[\"body\",\"config\"]", "missing");
    assert_int_equal(json_array_size(R.errors), 5);
    assert_non_null(strstr(R.detail, "(and 4 more errors)"));
}

static void test_null_is_missing(void **state) {
    /* optional nulls are accepted */
    assert_int_equal(run(sft("\"steps\":null,\"eval_dataset_ref\":null,\"batch_size\":null")), 0);
    assert_int_equal(json_integer_value(eff("batch_size")), 16);
    /* a required null is missing */
    assert_int_equal(run("{\"backend\":\"tinker\",\"trainer_type\":\"sft\",\"model\":null,"
                         "\"capability_ref\":{\"name\":\"assistant\",\"version\":\"1.2.0\"},\"name\":null,"
                         "\"config\":{\"dataset_ref\":{\"name\":\"chat\",\"version\":\"1.0.0\"}}}"),
                     422);
    expect_only("[\"body\",\"model\"]", "missing");
    assert_int_equal(run(rl("\"algorithm\":null," PROMPTS)), 422); /* duplicate key: last wins = null */
    expect_only("[\"body\",\"config\",\"algorithm\"]", "missing");
}

static void test_extra_forbidden(void **state) {
    assert_int_equal(run(sft("\"bogus\":1")), 422);
    expect_only("[\"body\",\"config\",\"bogus\"]", "extra_forbidden");
    assert_non_null(strstr(msg0(), "batch_size"));
    assert_int_equal(run("{\"backend\":\"tinker\",\"trainer_type\":\"sft\",\"model\":\"tiny\",\"x\":1,"
                         "\"capability_ref\":{\"name\":\"assistant\",\"version\":\"1.2.0\",\"y\":2},"
                         "\"config\":{\"dataset_ref\":{\"name\":\"chat\",\"version\":\"1.0.0\",\"z\":3}}}"),
                     422);
    expect_err("[\"body\",\"x\"]", "extra_forbidden");
    expect_err("[\"body\",\"capability_ref\",\"y\"]", "extra_forbidden");
    expect_err("[\"body\",\"config\",\"dataset_ref\",\"z\"]", "extra_forbidden");
    /* a field of another pair is unknown in this one */
    assert_int_equal(run(grpo("\"lora_rank\":8")), 422);
    expect_only("[\"body\",\"config\",\"lora_rank\"]", "extra_forbidden");
}

static void test_pairs_and_enums(void **state) {
    assert_int_equal(run("{\"backend\":\"ray\",\"trainer_type\":\"sft\",\"model\":\"tiny\","
                         "\"capability_ref\":{\"name\":\"assistant\",\"version\":\"1.2.0\"},\"config\":{}}"),
                     422);
    expect_only("[\"body\",\"trainer_type\"]", "value_error");
    assert_int_equal(run("{\"backend\":\"gpu\",\"trainer_type\":\"dpo\",\"model\":\"tiny\","
                         "\"capability_ref\":{\"name\":\"assistant\",\"version\":\"1.2.0\"},\"config\":{}}"),
                     422);
    expect_err("[\"body\",\"backend\"]", "enum");
    expect_err("[\"body\",\"trainer_type\"]", "enum");
    assert_int_equal(run(rl("\"algorithm\":\"grpo\"," PROMPTS)), 422);
    expect_only("[\"body\",\"config\",\"algorithm\"]", "enum");
    assert_int_equal(run(grpo("\"algorithm\":\"ppo\"")), 422);
    expect_only("[\"body\",\"config\",\"algorithm\"]", "enum");
    assert_int_equal(run(rl(PROMPTS ",\"execution_mode\":\"async\"")), 422);
    expect_only("[\"body\",\"config\",\"execution_mode\"]", "enum");
    assert_int_equal(run(grpo("\"execution_mode\":\"sync\"")), 422);
    expect_only("[\"body\",\"config\",\"execution_mode\"]", "enum");
}

static void test_type_errors(void **state) {
    assert_int_equal(run(sft("\"batch_size\":\"8\"")), 422);
    expect_only("[\"body\",\"config\",\"batch_size\"]", "type_error");
    assert_int_equal(run(sft("\"batch_size\":2.5")), 422);
    expect_only("[\"body\",\"config\",\"batch_size\"]", "type_error");
    assert_int_equal(run(sft("\"learning_rate\":true")), 422);
    expect_only("[\"body\",\"config\",\"learning_rate\"]", "type_error");
    assert_int_equal(run(sft("\"trajectory_dataset_refs\":{}")), 422);
    expect_only("[\"body\",\"config\",\"trajectory_dataset_refs\"]", "type_error");
    assert_int_equal(run(sft("\"eval_dataset_ref\":\"chat@1.0.0\"")), 422);
    expect_only("[\"body\",\"config\",\"eval_dataset_ref\"]", "type_error");
    assert_int_equal(run(sft("\"trajectory_dataset_refs\":[{\"name\":3,\"version\":\"1\"}]")), 422);
    expect_only("[\"body\",\"config\",\"trajectory_dataset_refs\",0,\"name\"]", "type_error");
    assert_int_equal(run(rl(PROMPTS ",\"stop\":[\"a\",1]")), 422);
    expect_only("[\"body\",\"config\",\"stop\",1]", "type_error");
    assert_int_equal(run(rl(PROMPTS ",\"reward_recipe\":\"row_reward_v1\"")), 422);
    expect_only("[\"body\",\"config\",\"reward_recipe\"]", "type_error");
    /* an integral real is an integer */
    assert_int_equal(run(sft("\"batch_size\":8.0")), 0);
    assert_int_equal(json_integer_value(eff("batch_size")), 8);
    assert_true(json_is_integer(eff("batch_size")));
}

static void test_ranges(void **state) {
    struct {
        const char *cfg, *field, *type, *msg;
    } cases[] = {
        {"\"batch_size\":0", "batch_size", "greater_than_equal", "must be >= 1"},
        {"\"batch_size\":4097", "batch_size", "less_than_equal", "must be <= 4096"},
        {"\"gradient_accumulation_steps\":0", "gradient_accumulation_steps", "greater_than_equal", NULL},
        {"\"gradient_accumulation_steps\":5000", "gradient_accumulation_steps", "less_than_equal", NULL},
        {"\"learning_rate\":0", "learning_rate", "greater_than", "must be > 0"},
        {"\"learning_rate\":-1e-4", "learning_rate", "greater_than", NULL},
        {"\"learning_rate\":1.5", "learning_rate", "less_than_equal", "must be <= 1"},
        {"\"steps\":0", "steps", "greater_than_equal", NULL},
        {"\"steps\":10000001", "steps", "less_than_equal", "must be <= 10000000"},
        {"\"epochs\":0", "epochs", "greater_than_equal", NULL},
        {"\"epochs\":10001", "epochs", "less_than_equal", NULL},
        {"\"lora_rank\":0", "lora_rank", "greater_than_equal", NULL},
        {"\"lora_rank\":513", "lora_rank", "less_than_equal", NULL},
        {"\"lora_alpha\":0", "lora_alpha", "greater_than", NULL},
        {"\"lora_alpha\":4096.5", "lora_alpha", "less_than_equal", NULL},
        {"\"checkpoint_interval\":0", "checkpoint_interval", "greater_than_equal", NULL},
        {"\"max_sequence_length\":0", "max_sequence_length", "greater_than_equal", NULL},
        {"\"max_sequence_length\":513", "max_sequence_length", "less_than_equal", "must be <= 512"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char loc[128];
        snprintf(loc, sizeof loc, "[\"body\",\"config\",\"%s\"]", cases[i].field);
        if (run(sft(cases[i].cfg)) != 422) fail_msg("case %zu (%s) was accepted", i, cases[i].cfg);
        expect_only(loc, cases[i].type);
        if (cases[i].msg && strncmp(msg0(), cases[i].msg, strlen(cases[i].msg)) != 0)
            fail_msg("case %zu: msg '%s', want '%s'", i, msg0(), cases[i].msg);
    }
    /* detail, as docs/spec.md §2.1 shows it */
    run(sft("\"batch_size\":0"));
    assert_string_equal(R.detail, "config.batch_size must be >= 1");
    /* upper bounds are inclusive */
    assert_int_equal(run(sft("\"batch_size\":4096,\"lora_rank\":512,\"max_sequence_length\":512,"
                             "\"learning_rate\":1,\"lora_alpha\":4096")),
                     0);
}

static void test_wrapper_strings_and_tags(void **state) {
    char name[260], body[4096];
    memset(name, 'n', 201);
    name[201] = '\0';
    snprintf(body, sizeof body,
             "{\"backend\":\"tinker\",\"trainer_type\":\"sft\",\"model\":\"tiny\",\"name\":\"%s\","
             "\"capability_ref\":{\"name\":\"assistant\",\"version\":\"1.2.0\"},"
             "\"config\":{\"dataset_ref\":{\"name\":\"chat\",\"version\":\"1.0.0\"}}}",
             name);
    assert_int_equal(run(body), 422);
    expect_only("[\"body\",\"name\"]", "string_too_long");
    /* 200 multi-byte characters are 200 characters */
    char uname[700] = "";
    for (int i = 0; i < 200; i++)
        strcat(uname, "\xc3\xa9");
    snprintf(body, sizeof body,
             "{\"backend\":\"tinker\",\"trainer_type\":\"sft\",\"model\":\"tiny\",\"run_ref\":\"%s\","
             "\"capability_ref\":{\"name\":\"assistant\",\"version\":\"1.2.0\"},"
             "\"config\":{\"dataset_ref\":{\"name\":\"chat\",\"version\":\"1.0.0\"}}}",
             uname);
    assert_int_equal(run(body), 0);

    char tb[1024] = "[";
    for (int i = 0; i < 33; i++)
        strcat(tb, i ? ",\"t\"" : "\"t\"");
    strcat(tb, "]");
    snprintf(body, sizeof body,
             "{\"backend\":\"tinker\",\"trainer_type\":\"sft\",\"model\":\"tiny\",\"tags\":%s,"
             "\"capability_ref\":{\"name\":\"assistant\",\"version\":\"1.2.0\"},"
             "\"config\":{\"dataset_ref\":{\"name\":\"chat\",\"version\":\"1.0.0\"}}}",
             tb);
    assert_int_equal(run(body), 422);
    expect_only("[\"body\",\"tags\"]", "less_than_equal");
    memset(name, 't', 65);
    name[65] = '\0';
    snprintf(
        body, sizeof body,
        "{\"backend\":\"tinker\",\"trainer_type\":\"sft\",\"model\":\"tiny\",\"tags\":[\"ok\",\"%s\",\"\"],"
        "\"capability_ref\":{\"name\":\"assistant\",\"version\":\"1.2.0\"},"
        "\"config\":{\"dataset_ref\":{\"name\":\"chat\",\"version\":\"1.0.0\"}}}",
        name);
    assert_int_equal(run(body), 422);
    expect_err("[\"body\",\"tags\",1]", "string_too_long");
    expect_err("[\"body\",\"tags\",2]", "value_error");
    assert_int_equal(json_array_size(R.errors), 2);
}

/* ---- SFT ---- */

static void test_sft_needs_data(void **state) {
    assert_int_equal(run("{\"backend\":\"tinker\",\"trainer_type\":\"sft\",\"model\":\"tiny\","
                         "\"capability_ref\":{\"name\":\"assistant\",\"version\":\"1.2.0\"},"
                         "\"config\":{\"trajectory_dataset_refs\":[]}}"),
                     422);
    expect_only("[\"body\",\"config\"]", "value_error");
    assert_string_equal(R.detail, "config needs dataset_ref or a non-empty trajectory_dataset_refs");
    /* trajectories alone are enough */
    assert_int_equal(
        run("{\"backend\":\"tinker\",\"trainer_type\":\"sft\",\"model\":\"tiny\","
            "\"capability_ref\":{\"name\":\"assistant\",\"version\":\"1.2.0\"},"
            "\"config\":{\"trajectory_dataset_refs\":[{\"name\":\"traj\",\"version\":\"2.0.0\"}]}}"),
        0);
    /* a broken dataset_ref is reported once, not also as "no data" */
    assert_int_equal(run("{\"backend\":\"tinker\",\"trainer_type\":\"sft\",\"model\":\"tiny\","
                         "\"capability_ref\":{\"name\":\"assistant\",\"version\":\"1.2.0\"},"
                         "\"config\":{\"dataset_ref\":{\"name\":\"chat\"}}}"),
                     422);
    expect_only("[\"body\",\"config\",\"dataset_ref\",\"version\"]", "missing");
}

static void test_sft_defaults(void **state) {
    assert_int_equal(run(sft("")), 0);
    assert_int_equal(json_integer_value(eff("max_sequence_length")), 512); /* min(2048, ctx 512) */
    assert_int_equal(json_integer_value(eff("batch_size")), 16);
    assert_int_equal(json_integer_value(eff("gradient_accumulation_steps")), 1);
    assert_true(json_real_value(eff("learning_rate")) == 1e-4);
    assert_true(json_is_null(eff("steps")));
    assert_int_equal(json_integer_value(eff("epochs")), 1);
    assert_int_equal(json_integer_value(eff("lora_rank")), 16);
    assert_true(json_number_value(eff("lora_alpha")) == 32.0);
    assert_int_equal(json_integer_value(eff("checkpoint_interval")), 10);
    assert_int_equal(json_array_size(eff("trajectory_dataset_refs")), 0);
    assert_true(json_is_null(eff("eval_dataset_ref")));
    assert_true(json_is_null(json_object_get(R.job, "algorithm")));
    /* the job's config is exactly what was sent */
    assert_int_equal(json_object_size(json_object_get(R.job, "config")), 1);
    /* with steps only, epochs stays unset */
    assert_int_equal(run(sft("\"steps\":5")), 0);
    assert_true(json_is_null(eff("epochs")));
    assert_int_equal(json_integer_value(eff("steps")), 5);
    /* with a big model, the default is 2048 */
    run(sft(""));
    char body[sizeof buf];
    snprintf(body, sizeof body, "%s", buf);
    char *m = strstr(body, "\"tiny\"");
    memcpy(m, "\"big\" ", 6);
    assert_int_equal(run(body), 0);
    assert_int_equal(json_integer_value(eff("max_sequence_length")), 2048);
}

/* compute: "f32" by default in every trainer's effective config, "bf16" kept, anything else a 422 naming it.
 */
static void test_compute(void **state) {
    assert_int_equal(run(sft("")), 0);
    assert_string_equal(json_string_value(eff("compute")), "f32");
    assert_int_equal(run(sft("\"compute\":\"bf16\"")), 0);
    assert_string_equal(json_string_value(eff("compute")), "bf16");
    assert_int_equal(run(rl(PROMPTS)), 0);
    assert_string_equal(json_string_value(eff("compute")), "f32");
    assert_int_equal(run(grpo("\"compute\":\"bf16\"")), 0);
    assert_string_equal(json_string_value(eff("compute")), "bf16");
    assert_int_equal(run(sft("\"compute\":\"fp16\"")), 422);
    expect_only("[\"body\",\"config\",\"compute\"]", "enum");
    assert_non_null(strstr(msg0(), "f32, bf16"));
    assert_int_equal(run(rl(PROMPTS ",\"compute\":16")), 422);
    expect_only("[\"body\",\"config\",\"compute\"]", "type_error");
}

/* ---- Tinker RL: R1-R10 ---- */

static void test_r1_r2(void **state) {
    assert_int_equal(run_ctx(rl(PROMPTS ",\"world_runtime_id\":\"rt\""), 1, 1), 422);
    expect_only("[\"body\",\"config\",\"world_runtime_id\"]", "value_error");
    assert_non_null(strstr(msg0(), "world_manifest_id"));
    assert_int_equal(run_ctx(rl(PROMPTS ",\"world_manifest_id\":\"m\",\"world_agent_name\":\"a\""), 1, 1),
                     422);
    expect_only("[\"body\",\"config\",\"world_agent_name\"]", "value_error");
    assert_non_null(strstr(msg0(), "world_runtime_id"));
    assert_int_equal(
        run_ctx(rl("\"world_manifest_id\":\"m\",\"world_runtime_id\":\"r\",\"world_agent_name\":\"a\""), 1,
                1),
        0);
    assert_string_equal(json_string_value(json_object_get(R.job, "world_agent_name")), "a");
}

static void test_r3(void **state) {
    assert_int_equal(run(rl("")), 422);
    expect_only("[\"body\",\"config\"]", "value_error");
    assert_non_null(strstr(msg0(), "prompt_dataset_ref"));
    assert_int_equal(run(rl("\"trajectory_dataset_refs\":[]")), 422);
    expect_only("[\"body\",\"config\"]", "value_error");
    assert_int_equal(run(rl("\"trajectory_dataset_refs\":[{\"name\":\"traj\",\"version\":\"2.0.0\"}]")), 0);
    /* no prompts but trajectories: the default recipe imitates */
    assert_string_equal(json_string_value(json_object_get(eff("reward_recipe"), "name")),
                        "trajectory_imitation_v1");
    assert_int_equal(run_ctx(rl("\"world_manifest_id\":\"m\""), 1, 1), 0);
}

static void test_r4_r5(void **state) {
    assert_int_equal(run(rl(PROMPTS ",\"execution_mode\":\"fully_async\"")), 422);
    expect_only("[\"body\",\"config\",\"execution_mode\"]", "value_error");
    assert_non_null(strstr(msg0(), "max_steps_off_policy"));
    assert_int_equal(run(rl(PROMPTS ",\"execution_mode\":\"one_step_off_async\"")), 422);
    expect_only("[\"body\",\"config\",\"execution_mode\"]", "value_error");
    assert_int_equal(run(rl(PROMPTS ",\"execution_mode\":\"one_step_off_async\",\"max_steps_off_policy\":2")),
                     422);
    expect_only("[\"body\",\"config\",\"execution_mode\"]", "value_error");
    assert_non_null(strstr(msg0(), "= 1"));
    assert_int_equal(run(rl(PROMPTS ",\"execution_mode\":\"one_step_off_async\",\"max_steps_off_policy\":1")),
                     0);
    assert_int_equal(run(rl(PROMPTS ",\"execution_mode\":\"fully_async\",\"max_steps_off_policy\":3")), 0);
    assert_int_equal(json_integer_value(eff("max_steps_off_policy")), 3);
    /* sync needs nothing */
    assert_int_equal(run(rl(PROMPTS ",\"execution_mode\":\"sync\"")), 0);
}

static void test_r6(void **state) {
    assert_int_equal(run(rl(PROMPTS ",\"eval_interval\":5,\"eval_max_rollouts\":2")), 422);
    expect_err("[\"body\",\"config\",\"eval_interval\"]", "value_error");
    expect_err("[\"body\",\"config\",\"eval_max_rollouts\"]", "value_error");
    assert_int_equal(json_array_size(R.errors), 2);
    assert_int_equal(
        run(rl(PROMPTS ",\"eval_interval\":5,\"eval_dataset_ref\":{\"name\":\"chat\",\"version\":"
                       "\"1.0.0\"}")),
        0);
    assert_int_equal(json_integer_value(eff("eval_interval")), 5);
    assert_int_equal(json_integer_value(eff("eval_max_rollouts")), 8); /* = batch_size */
}

static void test_r7_each_knob(void **state) {
    static const char *const INT_KNOBS[] = {"steps",
                                            "lora_rank",
                                            "max_turns",
                                            "max_episode_steps",
                                            "num_rollouts",
                                            "batch_size",
                                            "weight_sync_interval",
                                            "max_steps_off_policy",
                                            "max_new_tokens",
                                            "checkpoint_interval",
                                            NULL};
    char cfg[256], loc[128];
    for (int i = 0; INT_KNOBS[i]; i++) {
        snprintf(cfg, sizeof cfg, PROMPTS ",\"%s\":0", INT_KNOBS[i]);
        snprintf(loc, sizeof loc, "[\"body\",\"config\",\"%s\"]", INT_KNOBS[i]);
        if (run(rl(cfg)) != 422) fail_msg("%s = 0 accepted", INT_KNOBS[i]);
        expect_only(loc, "greater_than_equal");
        snprintf(cfg, sizeof cfg, PROMPTS ",\"%s\":-3", INT_KNOBS[i]);
        run(rl(cfg));
        expect_only(loc, "greater_than_equal");
    }
    assert_int_equal(run(rl(PROMPTS ",\"learning_rate\":0")), 422);
    expect_only("[\"body\",\"config\",\"learning_rate\"]", "greater_than");
    assert_int_equal(run(rl(PROMPTS ",\"temperature\":-0.5")), 422);
    expect_only("[\"body\",\"config\",\"temperature\"]", "greater_than_equal");
    assert_int_equal(run(rl(PROMPTS ",\"temperature\":2.01")), 422);
    expect_only("[\"body\",\"config\",\"temperature\"]", "less_than_equal");
    assert_int_equal(run(rl(PROMPTS ",\"temperature\":0")), 0); /* greedy */
    assert_int_equal(run(rl(PROMPTS ",\"num_rollouts\":65537")), 422);
    expect_only("[\"body\",\"config\",\"num_rollouts\"]", "less_than_equal");
    assert_int_equal(run(rl(PROMPTS ",\"max_turns\":1001")), 422);
    expect_only("[\"body\",\"config\",\"max_turns\"]", "less_than_equal");
    assert_int_equal(run(rl(PROMPTS ",\"max_episode_steps\":100001")), 422);
    expect_only("[\"body\",\"config\",\"max_episode_steps\"]", "less_than_equal");
    assert_int_equal(run(rl(PROMPTS ",\"batch_size\":9,\"num_rollouts\":8")), 422);
    expect_only("[\"body\",\"config\",\"batch_size\"]", "less_than_equal");
    assert_int_equal(run(rl(PROMPTS ",\"max_new_tokens\":513")), 422); /* ctx 512 */
    expect_only("[\"body\",\"config\",\"max_new_tokens\"]", "less_than_equal");
    assert_int_equal(
        run(rl(PROMPTS ",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\",\"j\",\"k\","
                       "\"l\",\"m\",\"n\",\"o\",\"p\",\"q\"]")),
        422);
    expect_only("[\"body\",\"config\",\"stop\"]", "less_than_equal");
}

static void test_r8(void **state) {
    assert_int_equal(run(rl(PROMPTS ",\"reward_recipe\":{\"name\":\"task_env_verifier_v1\"}")), 422);
    expect_only("[\"body\",\"config\",\"reward_recipe\"]", "value_error");
    assert_non_null(strstr(msg0(), "task_ref"));
    assert_int_equal(
        run(rl("\"task_ref\":\"flagtask\",\"trajectory_dataset_refs\":[{\"name\":\"traj\",\"version\":"
               "\"2.0.0\"}],\"reward_recipe\":{\"name\":\"task_env_verifier_v1\"}")),
        422);
    expect_only("[\"body\",\"config\",\"reward_recipe\"]", "value_error");
    assert_non_null(strstr(msg0(), "prompt_dataset_ref"));
    assert_int_equal(run(rl(PROMPTS ",\"task_ref\":\"exacttask\",\"reward_recipe\":{\"name\":"
                                    "\"task_env_verifier_v1\"}")),
                     0);
    json_t *p = json_object_get(eff("reward_recipe"), "params");
    assert_int_equal(json_integer_value(json_object_get(p, "env_timeout_sec")), 300);
    assert_int_equal(json_integer_value(json_object_get(p, "max_concurrent_rollouts")), 8);
}

static void test_r9(void **state) {
    /* no task at all */
    assert_int_equal(run(rl(PROMPTS ",\"reward_recipe\":{\"name\":\"task_verifier_v1\"}")), 422);
    expect_only("[\"body\",\"config\",\"reward_recipe\"]", "value_error");
    /* a task with another verification: found only after resolution */
    assert_int_equal(run(rl(PROMPTS ",\"task_ref\":\"exacttask@1.0.0\",\"reward_recipe\":{\"name\":"
                                    "\"task_verifier_v1\"}")),
                     422);
    expect_only("[\"body\",\"config\",\"reward_recipe\"]", "value_error");
    assert_non_null(strstr(msg0(), "exact"));
    assert_int_equal(run(rl(PROMPTS ",\"task_ref\":\"flagtask\",\"reward_recipe\":{\"name\":"
                                    "\"task_verifier_v1\"}")),
                     0);
    assert_string_equal(json_string_value(json_object_get(R.job, "task_ref")), "flagtask@1.1.0"); /* latest */
}

static void test_r10(void **state) {
    assert_int_equal(
        run_ctx(rl(PROMPTS ",\"world_goal\":\"g\",\"world_reward\":{\"name\":\"goal_only_v1\"}"), 1, 0), 422);
    expect_err("[\"body\",\"config\",\"world_goal\"]", "value_error");
    expect_err("[\"body\",\"config\",\"world_reward\"]", "value_error");
    assert_non_null(strstr(msg0(), "LATHE_WORLDS_URL"));
    assert_int_equal(run_ctx(rl(PROMPTS ",\"task_ref\":\"flagtask\",\"reward_recipe\":{\"name\":"
                                        "\"task_env_agent_v1\"}"),
                             1, 0),
                     422);
    expect_only("[\"body\",\"config\",\"reward_recipe\"]", "value_error");
    assert_non_null(strstr(msg0(), "LATHE_WORLDS_URL"));
    assert_int_equal(run_ctx(rl(PROMPTS ",\"task_ref\":\"flagtask\",\"reward_recipe\":{\"name\":"
                                        "\"task_env_agent_v1\"}"),
                             1, 1),
                     0);
}

static void test_recipes(void **state) {
    assert_int_equal(run(rl(PROMPTS ",\"reward_recipe\":{\"name\":\"made_up_v9\"}")), 422);
    expect_only("[\"body\",\"config\",\"reward_recipe\",\"name\"]", "enum");
    assert_int_equal(run(rl(PROMPTS ",\"reward_recipe\":{\"name\":\"contains_v1\",\"params\":{}}")), 422);
    expect_only("[\"body\",\"config\",\"reward_recipe\",\"params\",\"needle\"]", "missing");
    assert_int_equal(
        run(rl(PROMPTS ",\"reward_recipe\":{\"name\":\"contains_v1\",\"params\":{\"needle\":\"x\","
                       "\"reward_if_true\":\"yes\"}}")),
        422);
    expect_only("[\"body\",\"config\",\"reward_recipe\",\"params\",\"reward_if_true\"]", "type_error");
    assert_int_equal(
        run(rl(PROMPTS ",\"reward_recipe\":{\"name\":\"contains_v1\",\"params\":{\"needle\":\"x\"}}")), 0);
    json_t *p = json_object_get(eff("reward_recipe"), "params");
    assert_string_equal(json_string_value(json_object_get(p, "needle")), "x");
    assert_true(json_number_value(json_object_get(p, "reward_if_true")) == 1.0);
    assert_true(json_number_value(json_object_get(p, "reward_if_false")) == 0.0);
    assert_true(js_is_reward_recipe("gsm8k_v1"));
    assert_false(js_is_reward_recipe("gsm8k"));
}

static void test_rl_defaults(void **state) {
    assert_int_equal(run(rl(PROMPTS)), 0);
    assert_string_equal(json_string_value(json_object_get(R.job, "algorithm")), "importance_sampling");
    json_t *rr = eff("reward_recipe");
    assert_string_equal(json_string_value(json_object_get(rr, "name")), "row_reward_v1");
    assert_true(json_number_value(json_object_get(json_object_get(rr, "params"), "default")) == 0.0);
    assert_string_equal(json_string_value(eff("execution_mode")), "sync");
    assert_int_equal(json_integer_value(eff("steps")), 1);
    assert_int_equal(json_integer_value(eff("num_rollouts")), 8);
    assert_int_equal(json_integer_value(eff("batch_size")), 8);
    assert_int_equal(json_integer_value(eff("max_turns")), 8);
    assert_int_equal(json_integer_value(eff("max_new_tokens")), 128);
    assert_int_equal(json_integer_value(eff("weight_sync_interval")), 1);
    assert_int_equal(json_integer_value(eff("checkpoint_interval")), 1); /* = steps */
    assert_true(json_real_value(eff("temperature")) == 1.0);
    assert_true(json_is_null(eff("eval_interval")));
    assert_true(json_is_null(eff("eval_max_rollouts")));
    assert_true(json_is_null(eff("prompt_split")));
    /* batch_size = min(num_rollouts, 8); checkpoint_interval follows steps */
    assert_int_equal(run(rl(PROMPTS ",\"num_rollouts\":4,\"steps\":7")), 0);
    assert_int_equal(json_integer_value(eff("batch_size")), 4);
    assert_int_equal(json_integer_value(eff("checkpoint_interval")), 7);
    assert_int_equal(run(rl(PROMPTS ",\"num_rollouts\":64")), 0);
    assert_int_equal(json_integer_value(eff("batch_size")), 8);
    /* the lifted prompt dataset */
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(R.job, "prompt_dataset_ref"), "name")), "prompts");
}

static void test_prompt_split(void **state) {
    assert_int_equal(run(rl(PROMPTS ",\"prompt_split\":\"hard\"")), 0);
    assert_string_equal(json_string_value(eff("prompt_split")), "hard");
    assert_int_equal(run(rl(PROMPTS ",\"prompt_split\":\"nope\"")), 422);
    expect_only("[\"body\",\"config\",\"prompt_split\"]", "value_error");
    assert_non_null(strstr(msg0(), "hard"));
    assert_int_equal(run(rl("\"prompt_split\":\"x\",\"trajectory_dataset_refs\":[{\"name\":\"traj\","
                            "\"version\":\"2.0.0\"}]")),
                     422);
    expect_only("[\"body\",\"config\",\"prompt_split\"]", "value_error");
}

/* ---- Ray GRPO ---- */

static void test_grpo(void **state) {
    assert_int_equal(run(grpo("")), 0);
    assert_string_equal(json_string_value(json_object_get(R.job, "algorithm")), "grpo");
    assert_string_equal(json_string_value(eff("execution_mode")), "async");
    assert_string_equal(json_string_value(json_object_get(eff("reward_recipe"), "name")), "exact_match_v1");
    assert_true(json_real_value(eff("learning_rate")) == 1e-5);
    assert_int_equal(json_integer_value(eff("num_rollouts")), 8);
    assert_int_equal(json_integer_value(eff("batch_size")), 8);
    assert_int_equal(json_integer_value(eff("buffer_size")), 8);
    assert_int_equal(json_integer_value(eff("num_rollout_workers")), 1);
    assert_int_equal(json_integer_value(eff("lora_rank")), 16);
    assert_true(json_number_value(eff("lora_alpha")) == 32.0);
    assert_true(json_number_value(eff("temperature")) == 1.0);
    assert_int_equal(json_integer_value(eff("max_new_tokens")), 128);
    assert_int_equal(json_integer_value(eff("max_turns")), 8);
    assert_int_equal(json_integer_value(eff("steps")), 1);
    assert_int_equal(json_integer_value(eff("checkpoint_interval")), 1);
    /* buffer_size follows batch_size; flag task -> task_verifier_v1 */
    assert_int_equal(run(grpo("\"batch_size\":3")), 0);
    assert_int_equal(json_integer_value(eff("buffer_size")), 3);
    char body[sizeof buf];
    snprintf(body, sizeof body, "%s", grpo(""));
    char *t = strstr(body, "exacttask");
    memcpy(t, "flagtask\"", 9);
    memmove(t + 8, t + 9, strlen(t + 9) + 1);
    assert_int_equal(run(body), 0);
    assert_string_equal(json_string_value(json_object_get(eff("reward_recipe"), "name")), "task_verifier_v1");
    /* required fields */
    assert_int_equal(run("{\"backend\":\"ray\",\"trainer_type\":\"rl\",\"model\":\"tiny\","
                         "\"capability_ref\":{\"name\":\"assistant\",\"version\":\"1.2.0\"},\"config\":{}}"),
                     422);
    expect_err("[\"body\",\"config\",\"task_ref\"]", "missing");
    expect_err("[\"body\",\"config\",\"prompt_dataset_ref\"]", "missing");
    /* workers > 1 only when distributed */
    assert_int_equal(run(grpo("\"num_rollout_workers\":2")), 422);
    expect_only("[\"body\",\"config\",\"num_rollout_workers\"]", "value_error");
    assert_int_equal(run(grpo("\"num_rollout_workers\":2,\"execution_mode\":\"distributed\"")), 0);
    /* R9 on GRPO */
    assert_int_equal(run(grpo("\"reward_recipe\":{\"name\":\"task_verifier_v1\"}")), 422);
    expect_only("[\"body\",\"config\",\"reward_recipe\"]", "value_error");
}

/* ---- resolution ---- */

static void test_resolution(void **state) {
    assert_int_equal(run(sft("\"eval_dataset_ref\":{\"name\":\"acme/chat\",\"version\":\"1.0.0\"}")), 0);
    /* the capability snapshot */
    json_t *cap = json_object_get(R.job, "capability");
    assert_string_equal(json_string_value(json_object_get(cap, "artifact_id")), "c1");
    assert_string_equal(json_string_value(json_object_get(cap, "version")), "1.2.0");
    assert_string_equal(json_string_value(json_object_get(cap, "runtime_digest")), "sha256:dd");
    /* default project, own-org prefix stripped, refs listed once each */
    assert_string_equal(json_string_value(json_object_get(R.job, "project_ref")), "default");
    assert_string_equal(json_string_value(json_object_get(eff("eval_dataset_ref"), "name")), "chat");
    assert_int_equal(json_array_size(R.refs), 2); /* capability + dataset chat (twice: once) */
    /* another org's prefix: 404, without saying whether it exists */
    assert_int_equal(run(sft("\"eval_dataset_ref\":{\"name\":\"other/chat\",\"version\":\"1.0.0\"}")), 404);
    expect_only("[\"body\",\"config\",\"eval_dataset_ref\"]", "not_found");
    assert_non_null(strstr(R.detail, "config.eval_dataset_ref"));
    /* wrong version */
    assert_int_equal(run(sft("\"eval_dataset_ref\":{\"name\":\"chat\",\"version\":\"9.9.9\"}")), 404);
    expect_only("[\"body\",\"config\",\"eval_dataset_ref\"]", "not_found");
    /* task refs: name, name@version, name@latest; unknown */
    assert_int_equal(run(rl(PROMPTS ",\"task_ref\":\"flagtask@1.0.0\"")), 0);
    assert_string_equal(json_string_value(json_object_get(R.job, "task_ref")), "flagtask@1.0.0");
    assert_int_equal(run(rl(PROMPTS ",\"task_ref\":\"acme/flagtask@latest\"")), 0);
    assert_string_equal(json_string_value(json_object_get(R.job, "task_ref")), "flagtask@1.1.0");
    assert_int_equal(json_array_size(R.refs), 3);
    assert_int_equal(run(rl(PROMPTS ",\"task_ref\":\"nosuch\"")), 404);
    expect_only("[\"body\",\"config\",\"task_ref\"]", "not_found");
    /* a named project */
    assert_int_equal(
        run("{\"backend\":\"tinker\",\"trainer_type\":\"sft\",\"model\":\"tiny\","
            "\"project_ref\":\"research\",\"capability_ref\":{\"name\":\"assistant\",\"version\":"
            "\"1.2.0\"},\"config\":{\"dataset_ref\":{\"name\":\"chat\",\"version\":\"1.0.0\"}}}"),
        0);
    assert_string_equal(json_string_value(json_object_get(R.job, "project_ref")), "research");
    /* store trouble is not a 404 */
    fail_code = 503;
    assert_int_equal(run(sft("")), 503);
    assert_int_equal(json_array_size(R.errors), 0);
    assert_non_null(strstr(R.detail, "store unavailable"));
    fail_code = 0;
}

static void test_schema_errors_before_resolution(void **state) {
    /* a 422 wins over unresolvable references: nothing is looked up until the body is well-formed */
    assert_int_equal(
        run("{\"backend\":\"tinker\",\"trainer_type\":\"sft\",\"model\":\"nosuch\","
            "\"capability_ref\":{\"name\":\"x\",\"version\":\"1.0.0\"},"
            "\"config\":{\"dataset_ref\":{\"name\":\"y\",\"version\":\"1.0.0\"},\"batch_size\":0}}"),
        422);
    expect_only("[\"body\",\"config\",\"batch_size\"]", "greater_than_equal");
}

static void test_loc_str(void **state) {
    json_t *loc = json_pack("[s,s,s,i,s]", "body", "config", "trajectory_dataset_refs", 2, "name");
    char out[128];
    js_loc_str(loc, out, sizeof out);
    assert_string_equal(out, "config.trajectory_dataset_refs[2].name");
    js_loc_str(loc, out, 10);
    assert_int_equal(strlen(out) < 10, 1);
    json_decref(loc);
}

static int setup(void **state) {
    registry = json_loads(REGISTRY, 0, NULL);
    return registry ? 0 : -1;
}

static int teardown(void **state) {
    js_result_free(&R);
    json_decref(registry);
    return 0;
}

/* 50,000 unknown keys: at most JS_ERRORS_MAX items, the detail counts all of them. */
static void test_errors_capped(void **state) {
    (void)state;
    strbuf sb = STRBUF_INIT;
    sb_puts(&sb, "{\"backend\":\"tinker\",\"trainer_type\":\"sft\",\"model\":\"tiny\"");
    for (int i = 0; i < 50000; i++)
        sb_printf(&sb, ",\"x%d\":1", i);
    sb_puts(&sb, "}");
    assert_int_equal(run_ctx(sb.buf, 0, 0), 422);
    sb_free(&sb);
    assert_int_equal(json_array_size(R.errors), JS_ERRORS_MAX);
    assert_true(R.errors_omitted >= 50000 - JS_ERRORS_MAX);
    char want[64];
    snprintf(want, sizeof want, "(and %zu more errors; the first %d are listed)",
             JS_ERRORS_MAX - 1 + R.errors_omitted, JS_ERRORS_MAX);
    assert_non_null(strstr(R.detail, want));
    /* Under the cap nothing changes. */
    assert_int_equal(run("{\"backend\":\"tinker\",\"trainer_type\":\"sft\",\"a\":1,\"b\":2}"), 422);
    assert_int_equal(R.errors_omitted, 0);
    assert_null(strstr(R.detail, "listed"));
}

static void test_secret_filter(void **state) {
    (void)state;
    const char *secret_names[] = {"apiKey",
                                  "api-key",
                                  "X-API-Key",
                                  "authorization",
                                  "Authorization",
                                  "credentials",
                                  "secret",
                                  "token",
                                  "password",
                                  "hf_token",
                                  "client_secret",
                                  "private_key",
                                  "AWS_SECRET_ACCESS_KEY",
                                  "access_token",
                                  "Cookie",
                                  "world_server_auth_token",
                                  "db.password",
                                  "passwd",
                                  NULL};
    for (int i = 0; secret_names[i]; i++)
        if (!js_secret_name(secret_names[i])) fail_msg("%s should be filtered", secret_names[i]);
    const char *plain[] = {"step",  "total_steps",       "tokens_per_s", "num_tokens",      "loss",
                           "eta_s", "latest_checkpoint", "tokenizer",    "secretary_count", "author",
                           NULL};
    for (int i = 0; plain[i]; i++)
        if (js_secret_name(plain[i])) fail_msg("%s should be kept", plain[i]);
    json_t *v = json_loads("{\"step\":3,\"apiKey\":\"k1\",\"nested\":{\"Authorization\":\"x\",\"deep\":"
                           "{\"x-api-key\":\"k2\",\"ok\":1}},\"list\":[{\"token\":\"t\",\"n\":2},\"Bearer "
                           "abc\",\"fine\"],\"headers\":{\"h\":\"basic Zm9v\"},\"credentials\":{\"u\":1}}",
                           0, NULL);
    assert_non_null(v);
    assert_int_equal(js_redact_secrets(v), 7);
    json_t *want = json_loads("{\"step\":3,\"nested\":{\"deep\":{\"ok\":1}},\"list\":[{\"n\":2},\"fine\"],"
                              "\"headers\":{}}",
                              0, NULL);
    if (!json_equal(v, want)) {
        char *d = json_dumps(v, JSON_COMPACT);
        fail_msg("filtered to %s", d);
    }
    assert_int_equal(js_redact_secrets(v), 0);
    json_decref(v);
    json_decref(want);
    assert_int_equal(js_redact_secrets(NULL), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seed_body_schema),
        cmocka_unit_test(test_not_object),
        cmocka_unit_test(test_missing_required),
        cmocka_unit_test(test_null_is_missing),
        cmocka_unit_test(test_extra_forbidden),
        cmocka_unit_test(test_pairs_and_enums),
        cmocka_unit_test(test_type_errors),
        cmocka_unit_test(test_ranges),
        cmocka_unit_test(test_wrapper_strings_and_tags),
        cmocka_unit_test(test_sft_needs_data),
        cmocka_unit_test(test_sft_defaults),
        cmocka_unit_test(test_compute),
        cmocka_unit_test(test_r1_r2),
        cmocka_unit_test(test_r3),
        cmocka_unit_test(test_r4_r5),
        cmocka_unit_test(test_r6),
        cmocka_unit_test(test_r7_each_knob),
        cmocka_unit_test(test_r8),
        cmocka_unit_test(test_r9),
        cmocka_unit_test(test_r10),
        cmocka_unit_test(test_recipes),
        cmocka_unit_test(test_rl_defaults),
        cmocka_unit_test(test_prompt_split),
        cmocka_unit_test(test_grpo),
        cmocka_unit_test(test_resolution),
        cmocka_unit_test(test_schema_errors_before_resolution),
        cmocka_unit_test(test_loc_str),
        cmocka_unit_test(test_errors_capped),
        cmocka_unit_test(test_secret_filter),
    };
    return cmocka_run_group_tests_name("jobs_schema", tests, setup, teardown);
}
