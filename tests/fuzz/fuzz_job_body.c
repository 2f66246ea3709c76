/* fuzz_job_body.c: the create-job validator (src/api/jobs_schema.c) on arbitrary bytes.
 *
 * Bytes that parse as JSON go through js_validate_create twice: schema only, and with a resolver that finds
 * a reference when its name has an even length (so passes 2 and 3 run too, with context lengths taken from
 * the input). The invariants checked: a valid result has a job with an effective_config and no errors; an
 * invalid one has errors (or a resolver status) and no job; every error item has loc/msg/type. */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "api/jobs_schema.h"

static int f_model(void *ud, const char *model, int *ctx_len, lt_err *err) {
    size_t n = strlen(model);
    if (n % 2) return lt_err_set(err, 404, "no model");
    *ctx_len = 1 + (int)(n * 37 % 4096);
    return 0;
}

static json_t *f_artifact(void *ud, const char *kind, const char *name, const char *version, lt_err *err) {
    if (strlen(name) % 2) {
        lt_err_set(err, 404, "no %s", kind);
        return NULL;
    }
    return json_pack("{s:s,s:s,s:s,s:s,s:{s:i},s:{s:{s:s,s:s}}}", "id", "x", "name", name, "version",
                     version ? version : "1.0.0", "digest", "sha256:00", "splits", "train", 1, "manifest",
                     "verification", "method", strlen(name) % 4 ? "exact" : "flag", "hash", "sha256:ab");
}

static int f_project(void *ud, const char *key, char *out, size_t n, lt_err *err) {
    if (key && strlen(key) % 2) return lt_err_set(err, 404, "no project");
    snprintf(out, n, "%s", key ? key : "default");
    return 0;
}

static const js_resolver RES = {NULL, f_model, f_artifact, f_project};

static void check(const js_result *r) {
    if (r->status == 0) {
        assert(r->job && json_is_object(json_object_get(r->job, "effective_config")));
        assert(json_array_size(r->errors) == 0 && json_is_array(r->refs));
    } else {
        assert(!r->job && r->detail[0]);
        size_t i;
        json_t *e;
        json_array_foreach(r->errors, i, e) {
            assert(json_is_array(json_object_get(e, "loc")));
            assert(json_is_string(json_object_get(e, "msg")));
            assert(json_is_string(json_object_get(e, "type")));
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    json_t *body = json_loadb((const char *)data, size, JSON_DECODE_ANY, NULL);
    if (!body) return 0;
    js_result r;
    js_ctx plain = {"acme", (int)(size % 2), NULL};
    js_validate_create(body, &plain, &r);
    check(&r);
    js_result_free(&r);
    js_ctx full = {"acme", (int)(size % 2), &RES};
    js_validate_create(body, &full, &r);
    check(&r);
    js_result_free(&r);
    json_decref(body);
    return 0;
}
