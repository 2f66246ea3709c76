/* jobs_schema.h: validation of a create-training-job body (docs/spec.md §4.3-§4.5) and its effective config.
 *
 * Pure: no HTTP, no store. References (model, capability, datasets, task, project) are looked up through a
 * caller-supplied resolver, so the same code runs in the API route, the unit tests and the fuzzer.
 *
 * Ownership: js_validate_create fills a caller-owned js_result; js_result_free releases what it holds. The
 * resolver's artifact callback returns a new json_t reference that this module takes over. */
#ifndef LATHE_API_JOBS_SCHEMA_H
#define LATHE_API_JOBS_SCHEMA_H

#include <stddef.h>

#include <jansson.h>

#include "util/err.h"

/* Reference lookups. Each returns success or fails with err->code 404 when the thing does not exist (the
 * validator turns that into a `not_found` item whose loc names the field); any other code (500, 502) is
 * passed through as the result's status. */
typedef struct js_resolver {
    void *ud;
    /* A catalog model id or an adapter target (`jobs/<id>[/checkpoints/<name>]`): 0 and *context_length
     * (>= 1) on success, -1 with err otherwise. */
    int (*model)(void *ud, const char *model, int *context_length, lt_err *err);
    /* An artifact version of the job's organization. kind is "dataset", "capability" or "task"; name has
     * no org prefix; version NULL means the latest version. Returns a new object (the caller owns it):
     *   {"id": str, "name": str, "version": str, "digest": "sha256:<hex>",
     *    "manifest": {...} (tasks: holds "verification"), "splits": {split: rows} (datasets)}
     * or NULL with err. */
    json_t *(*artifact)(void *ud, const char *kind, const char *name, const char *version, lt_err *err);
    /* A project key of the job's workspace, NULL for the default project: writes the project's key into
     * out (NUL-terminated, at most out_len bytes) and returns 0, or -1 with err. */
    int (*project)(void *ud, const char *key, char *out, size_t out_len, lt_err *err);
} js_resolver;

typedef struct js_ctx {
    const char *org_key;    /* the job's org slug; a ref's "org/" prefix must equal it (else 404) */
    int worlds_enabled;     /* an environment backend is configured (LATHE_WORLDS_URL), rule R10 */
    const js_resolver *res; /* NULL: schema and rules only, no resolution (fuzzer, pure tests) */
} js_ctx;

typedef struct js_result {
    int status;        /* 0 valid; 422 schema/rule errors; 404 unresolved reference; else a resolver code */
    char detail[1024]; /* one line: "config.batch_size must be >= 1" (first error, and how many more) */
    json_t *errors;    /* array of {"loc": [...], "msg": str, "type": str}; empty when status is 0. At most
                          JS_ERRORS_MAX items: the rest are only counted (errors_omitted) and the detail
                          says how many there were in all */
    size_t errors_omitted;
    /* On success only (else NULL): the job's fields that come from the body, as docs/spec.md §4.2 names them:
     * backend, trainer_type, algorithm, model, name, project_ref, run_ref, dataset_ref,
     * trajectory_dataset_refs, task_ref ("name@version"), world_manifest_id, world_runtime_id,
     * world_agent_name, world_goal, prompt_dataset_ref, capability {artifact_id, name, version,
     * runtime_digest}, config (as submitted), effective_config, tags. */
    json_t *job;
    json_t *refs; /* on success: [{"kind", "name", "version"}], each resolved reference once */
} js_result;

/* The most error items a result lists (a body with 50,000 unknown keys must not become a 4 MB answer). */
#define JS_ERRORS_MAX 100

/* Validates `body` (any JSON value) and, when ctx->res is set, resolves its references. Always fills *out
 * (free it with js_result_free); returns out->status. */
int js_validate_create(const json_t *body, const js_ctx *ctx, js_result *out);
void js_result_free(js_result *r);

/* 1 if name is a reward recipe of docs/spec.md §4.5. */
int js_is_reward_recipe(const char *name);

/* Renders a loc array as "config.trajectory_dataset_refs[0].name" (the leading "body"/"query"/... dropped)
 * into out (always NUL-terminated). */
void js_loc_str(const json_t *loc, char *out, size_t out_len);
/* The secret filter for free-form JSON that is stored and shown again (progress-event data and artifacts):
 * drops every member whose name looks like a credential, at any depth (objects in objects, objects in
 * arrays), and any string that carries an HTTP credential ("Bearer ...", "Basic ..."), object member or
 * array item. Names are compared case-insensitively with '-', '_', '.' and spaces ignored: auth, apiKey,
 * api-key, x-api-key, authorization, credentials, cookie, set-cookie, passphrase, private_key, and anything
 * ending in token, secret, password, passwd, apikey, privatekey, accesskey, secretkey, credential(s) or
 * authorization (access_token, client_secret, AWS_SECRET_ACCESS_KEY). Returns the number dropped. */
int js_redact_secrets(json_t *v);
/* 1 when a member name is one the secret filter redacts. */
int js_secret_name(const char *name);

#endif
