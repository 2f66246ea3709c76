/* routes_jobs.c: the training-job routes E1-E13 of docs/spec.md §4.1 and the model catalog of §3.2.
 *
 * Each handler follows the same few steps: authorize the caller on the org and workspace of the path (a
 * non-member gets 404, a reader writing or a key without the scope gets 403: api_authorize), find the job in
 * that workspace (another workspace's or org's job is a plain 404, even by exact id), then call the store
 * (src/store/jobs.h) and answer with the job object. Validation of a create body lives in jobs_schema.c;
 * here it gets a resolver that reads the catalog (models dir), the artifact registry and the workspace's
 * projects, and adapter targets `jobs/<id>[/checkpoints/<name>]` of earlier jobs.
 *
 * Scopes: reads need `training:read` (or `worker`, which the training runner's per-job key carries), writes
 * `training:write`, progress events `worker`. Readers may only GET.
 *
 * The event stream (E11) is a polled stream (http.h: no thread of its own; the server's stream poller ticks
 * it) that looks at the job's watermark (updated_at and the last log seq) every 250 ms: one indexed SELECT,
 * cheap next to a training step, and it keeps the stream independent of which process (API server,
 * in-process worker, remote worker) changed the job. */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/http.h"
#include "api/jobs_schema.h"
#include "store/artifacts.h"
#include "store/jobs.h"
#include "catalog/catalog.h"
#include "util/json.h"
#include "util/log.h"
#include "util/util.h"

#define JOBS_BASE "/api/v1/org/{org}/ws/{ws}/training/jobs"
#define QUOTA_RETRY_AFTER_S "30"
#define SSE_POLL_MS 250
#define SSE_HEARTBEAT_S 15
#define LEASE_SWEEP_MS 5000
#define ADAPTER_DEPTH_MAX 8

/* ---------------------------------------------------------------------------------------------------------
 * common steps */

typedef struct scope_ctx {
    store_org org;
    store_workspace ws;
} scope_ctx;

/* Authorizes the request on {org}/{ws}; 0 or -1 with the error already in resp. */
static int authorize(api_req *req, api_resp *resp, int min_role, unsigned scope, scope_ctx *sc) {
    return api_authorize(req, resp, api_param(req, "org"), api_param(req, "ws"), min_role, scope, &sc->org,
                         &sc->ws, NULL);
}

static int auth_read(api_req *req, api_resp *resp, scope_ctx *sc) {
    return authorize(req, resp, STORE_ROLE_READER, STORE_SCOPE_TRAINING_READ | STORE_SCOPE_WORKER, sc);
}

static int auth_write(api_req *req, api_resp *resp, scope_ctx *sc) {
    return authorize(req, resp, STORE_ROLE_CONTRIBUTOR, STORE_SCOPE_TRAINING_WRITE, sc);
}

/* The {job_id} of the path, or NULL after a 404 (not a UUID: it cannot name a job). */
static const char *job_param(api_req *req, api_resp *resp) {
    const char *id = api_param(req, "job_id");
    if (!id || !lt_is_uuid(id)) {
        api_error(resp, 404, "not_found", "training job '%.80s' not found", id ? id : "");
        return NULL;
    }
    return id;
}

/* Loads the job of the path within the authorized workspace; 0 or -1 with resp set. */
static int load(api_req *req, api_resp *resp, const scope_ctx *sc, const char **id, json_t **job) {
    lt_err err = {0};
    assert(sc->ws.id[0] && sc->org.id[0]); /* authorized on a workspace first: job lookups are scoped by it */
    *id = job_param(req, resp);
    if (!*id) return -1;
    if (jobs_get(req->ctx->db, sc->ws.id, *id, job, &err) != 0) {
        api_error_from(resp, &err);
        return -1;
    }
    return 0;
}

/* Deletes blobs nothing references any more (inside the caller's transaction). */
static int free_blobs(api_ctx *ctx, json_t *freed, lt_err *err) {
    size_t i;
    json_t *dg;
    json_array_foreach(freed, i, dg) {
        if (blob_delete(ctx->blobs, json_string_value(dg), err) != 0) return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------
 * E1: create */

typedef struct resolve_ud {
    api_req *req;
    const scope_ctx *sc;
} resolve_ud;

/* A catalog id, or an adapter target jobs/<id>[/checkpoints/<name>] of a job of the same workspace that has
 * that checkpoint (or, without a name, any checkpoint): its context length is its base model's. */
static int model_ctx_len(resolve_ud *u, const char *model, int depth, int *ctx_len, lt_err *err) {
    db *d = u->req->ctx->db;
    if (strncmp(model, "jobs/", 5) == 0) {
        char id[LT_UUID_LEN + 1];
        const char *rest = model + 5, *slash = strchr(rest, '/');
        size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
        if (n != LT_UUID_LEN - 1 || depth >= ADAPTER_DEPTH_MAX)
            return lt_err_set(err, 404, "model '%.200s' not found", model);
        memcpy(id, rest, n);
        id[n] = '\0';
        json_t *job = NULL;
        if (!lt_is_uuid(id)) return lt_err_set(err, 404, "model '%.200s' not found", model);
        if (jobs_get(d, u->sc->ws.id, id, &job, err) != 0) {
            if (err->code != 404) return -1; /* store trouble: passed through as it is */
            return lt_err_set(err, 404, "model '%.200s' not found: no such job in this workspace", model);
        }
        int rc = 0;
        if (slash) {
            char blob[72];
            if (strncmp(slash, "/checkpoints/", 13) != 0 || !slash[13] ||
                jobs_checkpoint_blob(d, id, slash + 13, blob, NULL, err) != 0)
                rc = lt_err_set(err, 404, "model '%.200s' not found: the job has no such checkpoint", model);
        } else {
            json_t *cks = NULL;
            if (jobs_checkpoints(d, id, &cks, err) != 0 || json_array_size(cks) == 0)
                rc = lt_err_set(err, 404, "model '%.200s' not found: the job has no checkpoint yet", model);
            json_decref(cks);
        }
        if (rc == 0)
            rc = model_ctx_len(u, json_string_value(json_object_get(job, "model")), depth + 1, ctx_len, err);
        json_decref(job);
        return rc;
    }
    eng_config cfg;
    if (catalog_find(u->req->ctx->models_dir, model, NULL, &cfg, err) != 0) return -1;
    *ctx_len = cfg.max_position_embeddings;
    return 0;
}

static int r_model(void *ud, const char *model, int *ctx_len, lt_err *err) {
    return model_ctx_len(ud, model, 0, ctx_len, err);
}

static json_t *r_artifact(void *ud, const char *kind, const char *name, const char *version, lt_err *err) {
    resolve_ud *u = ud;
    artifact_version v;
    if (artifacts_get(u->req->ctx->db, u->sc->org.id, kind, name, version, &v, err) != 0) return NULL;
    json_t *out = json_pack("{s:s,s:s,s:s,s:s,s:O,s:O}", "id", v.id, "name", v.name, "version", v.version,
                            "digest", v.digest, "manifest", v.manifest ? v.manifest : json_null(), "splits",
                            v.splits ? v.splits : json_null());
    artifact_version_free(&v);
    if (!out) lt_err_set(err, 500, "out of memory");
    return out;
}

static int r_project(void *ud, const char *key, char *out, size_t len, lt_err *err) {
    resolve_ud *u = ud;
    store_project p;
    int rc = key ? store_project_by_key(u->req->ctx->db, u->sc->ws.id, key, &p, err)
                 : store_project_default(u->req->ctx->db, u->sc->ws.id, &p, err);
    if (rc != 0) return -1;
    snprintf(out, len, "%s", p.key);
    return 0;
}

static int h_create(api_req *req, api_resp *resp) {
    scope_ctx sc;
    if (auth_write(req, resp, &sc)) return 0;
    if (!req->json) {
        json_t *errors = json_array();
        api_verr_add(errors, api_loc("body", NULL), "missing", "a JSON body is required");
        api_validation_error(resp, errors);
        return 0;
    }
    resolve_ud ud = {req, &sc};
    js_resolver res = {&ud, r_model, r_artifact, r_project};
    const char *worlds = req->ctx->cfg ? req->ctx->cfg->worlds_url : NULL;
    js_ctx jc = {sc.org.key, worlds && *worlds, &res};
    js_result r;
    int st = js_validate_create(req->json, &jc, &r);
    if (st == 422 || st == 404) {
        api_error_with(resp, st, st == 422 ? "validation_error" : "not_found", json_incref(r.errors), "%s",
                       r.detail);
        js_result_free(&r);
        return 0;
    }
    if (st != 0) {
        lt_err err;
        lt_err_set(&err, st, "%s", r.detail);
        api_error_from(resp, &err);
        js_result_free(&r);
        return 0;
    }
    /* created_by_user: a username is always shown (clients require one): the user's, else the local part of
     * the email */
    const store_user *u = &req->principal.user;
    char uname[STORE_NAME_MAX];
    snprintf(uname, sizeof uname, "%s", u->username);
    if (!uname[0]) {
        snprintf(uname, sizeof uname, "%s", u->email);
        char *at = strchr(uname, '@');
        if (at) *at = '\0';
    }
    json_t *user = json_pack("{s:s,s:s,s:s,s:o}", "id", u->id, "email", u->email, "username", uname,
                             "full_name", lt_json_str_or_null(u->full_name));
    jobs_new n = {
        sc.org.id, sc.ws.id, u->id, user, r.job, r.refs, req->ctx->cfg ? req->ctx->cfg->max_active_jobs : 0};
    json_t *job = NULL;
    lt_err err = {0};
    int rc = jobs_create(req->ctx->db, &n, &job, &err);
    json_decref(user);
    js_result_free(&r);
    if (rc != 0) {
        if (err.code == 429) {
            api_header_add(resp, "Retry-After", QUOTA_RETRY_AFTER_S);
            api_error(resp, 429, "quota_exceeded", "%s", err.msg);
        } else {
            api_error_from(resp, &err);
        }
        return 0;
    }
    char loc[512];
    snprintf(loc, sizeof loc, "/api/v1/org/%s/ws/%s/training/jobs/%s", sc.org.key, sc.ws.key,
             json_string_value(json_object_get(job, "id")));
    api_header_add(resp, "Location", loc);
    lt_log(LOG_INFO, "job %s queued in %s/%s", json_string_value(json_object_get(job, "id")), sc.org.key,
           sc.ws.key);
    api_json(resp, 201, job);
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------
 * E2, E3: list, get */

/* An optional enum query parameter; -1 after a 422. */
static int query_enum(api_req *req, api_resp *resp, const char *name, const char *const *choices,
                      const char **out) {
    const char *v = api_query(req, name);
    *out = v && *v ? v : NULL;
    if (!*out) return 0;
    for (int i = 0; choices[i]; i++)
        if (strcmp(v, choices[i]) == 0) return 0;
    char list[200] = "";
    for (int i = 0; choices[i]; i++) {
        strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
        strncat(list, choices[i], sizeof list - strlen(list) - 1);
    }
    json_t *errors = json_array();
    api_verr_add(errors, api_loc("query", name, NULL), "enum", "must be one of: %s", list);
    api_validation_error(resp, errors);
    return -1;
}

static int h_list(api_req *req, api_resp *resp) {
    scope_ctx sc;
    if (auth_read(req, resp, &sc)) return 0;
    static const char *const STATUSES[] = {"queued",    "running", "completed", "failed",
                                           "cancelled", "pending", NULL};
    static const char *const BACKENDS[] = {"tinker", "ray", NULL};
    static const char *const TRAINERS[] = {"sft", "rl", NULL};
    jobs_filter f = {0};
    if (api_query_int(req, resp, "page", 1, 1, 1000000000, &f.page) ||
        api_query_int(req, resp, "page_size", 20, 1, 100, &f.page_size) ||
        query_enum(req, resp, "status", STATUSES, &f.status) ||
        query_enum(req, resp, "backend", BACKENDS, &f.backend) ||
        query_enum(req, resp, "trainer_type", TRAINERS, &f.trainer_type))
        return 0;
    f.project_ref = api_query(req, "project_ref");
    f.tag = api_query(req, "tag");
    if (f.project_ref && !*f.project_ref) f.project_ref = NULL;
    if (f.tag && !*f.tag) f.tag = NULL;
    json_t *items = NULL;
    int64_t total = 0;
    lt_err err = {0};
    if (jobs_list(req->ctx->db, sc.ws.id, &f, &items, &total, &err) != 0) {
        api_error_from(resp, &err);
        return 0;
    }
    api_json(resp, 200,
             json_pack("{s:o,s:I,s:I,s:I}", "items", items, "total", (json_int_t)total, "page",
                       (json_int_t)f.page, "page_size", (json_int_t)f.page_size));
    return 0;
}

static int h_get(api_req *req, api_resp *resp) {
    scope_ctx sc;
    const char *id;
    json_t *job;
    if (auth_read(req, resp, &sc) || load(req, resp, &sc, &id, &job)) return 0;
    api_json(resp, 200, job);
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------
 * E4, E5, E13: cancel, retry, delete */

static int h_cancel(api_req *req, api_resp *resp) {
    scope_ctx sc;
    if (auth_write(req, resp, &sc)) return 0;
    const char *id = job_param(req, resp);
    if (!id) return 0;
    json_t *job = NULL;
    lt_err err = {0};
    if (jobs_cancel(req->ctx->db, sc.ws.id, id, &job, &err) != 0) {
        api_error_from(resp, &err);
        return 0;
    }
    api_json(resp, 200, job);
    return 0;
}

/* retry and delete free checkpoint blobs inside the store transaction, so a concurrent checkpoint with the
 * same bytes cannot lose its blob. */
static int retry_or_delete(api_req *req, api_resp *resp, int is_delete) {
    scope_ctx sc;
    if (auth_write(req, resp, &sc)) return 0;
    const char *id = job_param(req, resp);
    if (!id) return 0;
    db *d = req->ctx->db;
    assert(sc.ws.id[0]);
    json_t *job = NULL, *freed = NULL;
    lt_err err = {0};
    int rc = db_begin_immediate(d, &err);
    if (rc == 0)
        rc = is_delete ? jobs_delete(d, sc.ws.id, id, &freed, &err)
                       : jobs_retry(d, sc.ws.id, id, NULL, &freed, &err);
    if (rc == 0) rc = free_blobs(req->ctx, freed, &err);
    if (rc == 0)
        rc = db_commit(d, &err);
    else
        db_rollback(d);
    json_decref(freed);
    if (rc == 0 && !is_delete) rc = jobs_get(d, sc.ws.id, id, &job, &err);
    if (rc != 0) {
        api_error_from(resp, &err);
        return 0;
    }
    if (is_delete)
        api_no_content(resp);
    else
        api_json(resp, 200, job);
    return 0;
}

static int h_retry(api_req *req, api_resp *resp) {
    return retry_or_delete(req, resp, 0);
}

static int h_delete(api_req *req, api_resp *resp) {
    return retry_or_delete(req, resp, 1);
}

/* ---------------------------------------------------------------------------------------------------------
 * E6, E7: logs, artifacts */

static int h_logs(api_req *req, api_resp *resp) {
    scope_ctx sc;
    const char *id;
    json_t *job;
    if (auth_read(req, resp, &sc) || load(req, resp, &sc, &id, &job)) return 0;
    json_decref(job);
    static const char *const LEVELS[] = {"debug", "info", "warning", "error", NULL};
    int64_t after, limit;
    const char *level;
    if (api_query_int(req, resp, "after", 0, 0, INT64_MAX, &after) ||
        api_query_int(req, resp, "limit", 100, 1, 1000, &limit) ||
        query_enum(req, resp, "level", LEVELS, &level))
        return 0;
    json_t *items = NULL;
    int64_t next = 0;
    lt_err err = {0};
    if (jobs_logs(req->ctx->db, id, after, limit, level ? jobs_level_parse(level) : JOBS_LOG_DEBUG, &items,
                  &next, &err) != 0) {
        api_error_from(resp, &err);
        return 0;
    }
    api_json(resp, 200,
             json_pack("{s:o,s:o}", "items", items, "next", next ? json_integer(next) : json_null()));
    return 0;
}

static int h_artifacts(api_req *req, api_resp *resp) {
    scope_ctx sc;
    const char *id;
    json_t *job;
    if (auth_read(req, resp, &sc) || load(req, resp, &sc, &id, &job)) return 0;
    api_json(resp, 200, json_pack("{s:O}", "artifacts", json_object_get(job, "artifacts")));
    json_decref(job);
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------
 * E8: catalog */

/* A finite decimal number: "1e400" (overflow), "inf", "nan" and hex floats are refused. */
static int parse_num(const char *s, double *out) {
    char *end;
    if (strpbrk(s, "xXnNiI")) return -1;
    errno = 0;
    *out = strtod(s, &end);
    return *s && !*end && errno == 0 && isfinite(*out) ? 0 : -1;
}

static int h_catalog(api_req *req, api_resp *resp) {
    if (!(req->principal.key.scopes & (STORE_SCOPE_TRAINING_READ | STORE_SCOPE_WORKER))) {
        api_error(resp, 403, "permission_denied", "this API key lacks the scope training:read");
        return 0;
    }
    int64_t limit;
    if (api_query_int(req, resp, "limit", 20, 1, 100, &limit)) return 0;
    const char *query = api_query(req, "query"), *family = api_query(req, "family"),
               *algorithm = api_query(req, "algorithm");
    double bounds[2] = {-1, -1};
    static const char *const BOUND_NAMES[] = {"min_size_b", "max_size_b"};
    json_t *errors = json_array();
    for (int i = 0; i < 2; i++) {
        const char *v = api_query(req, BOUND_NAMES[i]);
        if (v && *v && (parse_num(v, &bounds[i]) || bounds[i] < 0))
            api_verr_add(errors, api_loc("query", BOUND_NAMES[i], NULL), "type_error",
                         "must be a finite number >= 0 (billions of parameters)");
    }
    if (json_array_size(errors)) {
        api_validation_error(resp, errors);
        return 0;
    }
    json_decref(errors);
    json_t *all = NULL;
    lt_err err = {0};
    if (catalog_scan(req->ctx->models_dir, &all, &err) != 0) {
        api_error_from(resp, &err);
        return 0;
    }
    json_t *models = json_array();
    int64_t total = 0;
    size_t i;
    json_t *m;
    json_array_foreach(all, i, m) {
        const char *id = json_string_value(json_object_get(m, "tinker_id"));
        const char *name = json_string_value(json_object_get(m, "display_name"));
        double size = json_number_value(json_object_get(m, "size_b"));
        if (query && *query && !strcasestr(id, query) && !strcasestr(name, query)) continue;
        if (family && *family && strcmp(family, json_string_value(json_object_get(m, "family"))) != 0)
            continue;
        if (algorithm && *algorithm) {
            int has = 0;
            size_t k;
            json_t *a;
            json_array_foreach(json_object_get(m, "supported_algorithms"), k, a) has |=
                strcmp(json_string_value(a), algorithm) == 0;
            if (!has) continue;
        }
        if (bounds[0] >= 0 && size < bounds[0]) continue;
        if (bounds[1] >= 0 && size > bounds[1]) continue;
        if (total++ < limit) json_array_append(models, m);
    }
    json_decref(all);
    /* The dreadnode SDK validates supported_algorithms against the algorithms it knows (no "grpo") and
     * rejects the whole response otherwise: its clients get the list without the ones it cannot parse. */
    const char *ua = api_header(req, "User-Agent");
    if (ua && strncmp(ua, "dreadnode-sdk/", 14) == 0) {
        json_array_foreach(models, i, m) {
            json_t *algs = json_object_get(m, "supported_algorithms");
            for (size_t k = json_array_size(algs); k-- > 0;)
                if (strcmp(json_string_value(json_array_get(algs, k)), "grpo") == 0)
                    json_array_remove(algs, k);
        }
    }
    api_json(
        resp, 200,
        json_pack("{s:o,s:I,s:I}", "models", models, "total", (json_int_t)total, "limit", (json_int_t)limit));
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------
 * E9: rl-context */

static int h_rl_context(api_req *req, api_resp *resp) {
    scope_ctx sc;
    const char *id;
    json_t *job;
    if (auth_read(req, resp, &sc) || load(req, resp, &sc, &id, &job)) return 0;
    if (strcmp(json_string_value(json_object_get(job, "trainer_type")), "rl") != 0) {
        api_error(resp, 409, "conflict", "training job '%s' is an SFT job: it has no RL context", id);
        json_decref(job);
        return 0;
    }
    db *d = req->ctx->db;
    lt_err err = {0};
    json_t *cap = json_object_get(job, "capability");
    artifact_version v;
    json_t *prompt = json_null();
    if (artifacts_get(d, sc.org.id, "capability", json_string_value(json_object_get(cap, "name")),
                      json_string_value(json_object_get(cap, "version")), &v, &err) == 0) {
        prompt = v.prompt ? json_string(v.prompt) : json_null();
        artifact_version_free(&v);
    }
    json_t *task = json_null();
    const char *tref = json_string_value(json_object_get(job, "task_ref"));
    if (tref) {
        char *tname, *tversion;
        lt_ref_split(tref, &tname, &tversion);
        if (tversion && artifacts_get(d, sc.org.id, "task", tname, tversion, &v, &err) == 0) {
            json_t *man = v.manifest;
            /* s3_key: where the task archive is stored (here: its blob in the data dir) */
            task = json_pack(
                "{s:s,s:s,s:s,s:s,s:O,s:O,s:n,s:s,s:s}", "id", v.id, "reference", tref, "name", v.name,
                "version", v.version, "instruction",
                json_object_get(man, "instruction") ? json_object_get(man, "instruction") : json_null(),
                "verification",
                json_object_get(man, "verification") ? json_object_get(man, "verification") : json_null(),
                "ports", "sandbox_provider", "local", "s3_key", v.blob_digest);
            artifact_version_free(&v);
        }
        free(tname);
        free(tversion);
    }
    json_t *world = json_null();
    const char *wm = json_string_value(json_object_get(job, "world_manifest_id"));
    const char *worlds = req->ctx->cfg ? req->ctx->cfg->worlds_url : NULL;
    if (wm && worlds && *worlds)
        world = json_pack("{s:s,s:n,s:n,s:s,s:{},s:{}}", "id", wm, "name", "manifest_backend_id",
                          "server_url", worlds, "artifact_refs", "stats");
    json_t *eff = json_object_get(job, "effective_config");
    api_json(resp, 200,
             json_pack("{s:o,s:o,s:o,s:n,s:O}", "capability_entry_prompt", prompt, "task", task, "world",
                       world, "sampled_trajectory_dataset_ref", "reward_recipe",
                       json_object_get(eff, "reward_recipe") ? json_object_get(eff, "reward_recipe")
                                                             : json_null()));
    json_decref(job);
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------
 * E10: progress */

/* The E10 body {event_type, message, level, metrics, data, artifacts, error}: errors into `errors`. */
static void validate_event(const json_t *b, json_t *errors) {
    static const char *const KEYS[] = {"event_type", "message",   "level", "metrics",
                                       "data",       "artifacts", "error", NULL};
    static const char *const TYPES[] = {"training_start",
                                        "step_complete",
                                        "eval_complete",
                                        "checkpoint_saved",
                                        "training_error",
                                        "training_end",
                                        NULL};
    if (!json_is_object(b)) {
        api_verr_add(errors, api_loc("body", NULL), "type_error", "the body must be a JSON object");
        return;
    }
    json_t *body_loc = api_loc("body", NULL);
    api_verr_extra_fields(errors, b, KEYS, body_loc);
    json_decref(body_loc);
    json_t *et = json_object_get(b, "event_type");
    int ok = 0;
    for (int i = 0; json_is_string(et) && TYPES[i]; i++)
        ok |= strcmp(json_string_value(et), TYPES[i]) == 0;
    if (!et || json_is_null(et))
        api_verr_add(errors, api_loc("body", "event_type", NULL), "missing", "is required");
    else if (!json_is_string(et))
        api_verr_add(errors, api_loc("body", "event_type", NULL), "type_error", "must be a string");
    else if (!ok)
        api_verr_add(errors, api_loc("body", "event_type", NULL), "enum",
                     "must be one of: training_start, step_complete, eval_complete, checkpoint_saved, "
                     "training_error, training_end");
    json_t *lv = json_object_get(b, "level");
    if (lv && !json_is_null(lv) && (!json_is_string(lv) || jobs_level_parse(json_string_value(lv)) < 0))
        api_verr_add(errors, api_loc("body", "level", NULL), "enum",
                     "must be one of: debug, info, warning, error");
    static const char *const OBJS[] = {"metrics", "data", "artifacts", NULL};
    for (int i = 0; OBJS[i]; i++) {
        json_t *v = json_object_get(b, OBJS[i]);
        if (v && !json_is_null(v) && !json_is_object(v))
            api_verr_add(errors, api_loc("body", OBJS[i], NULL), "type_error", "must be an object");
    }
    static const char *const STRS[] = {"message", "error", NULL};
    for (int i = 0; STRS[i]; i++) {
        json_t *v = json_object_get(b, STRS[i]);
        if (v && !json_is_null(v) && !json_is_string(v))
            api_verr_add(errors, api_loc("body", STRS[i], NULL), "type_error", "must be a string");
    }
}

static int h_progress(api_req *req, api_resp *resp) {
    scope_ctx sc;
    if (authorize(req, resp, STORE_ROLE_CONTRIBUTOR, STORE_SCOPE_WORKER, &sc)) return 0;
    const char *id = job_param(req, resp);
    if (!id) return 0;
    json_t *b = req->json, *errors = json_array();
    validate_event(b, errors);
    if (json_array_size(errors)) {
        api_validation_error(resp, errors);
        return 0;
    }
    json_decref(errors);
    json_t *ev = json_deep_copy(b);
    /* Credentials a reporter put in data or artifacts are never stored or shown (jobs_schema.h). */
    js_redact_secrets(json_object_get(ev, "data"));
    js_redact_secrets(json_object_get(ev, "artifacts"));
    json_t *job = NULL;
    lt_err err = {0};
    /* the job must be in this workspace */
    char ws_id[LT_UUID_LEN];
    int rc = jobs_peek(req->ctx->db, id, NULL, NULL, ws_id, NULL, &err);
    if (rc == 0 && strcmp(ws_id, sc.ws.id) != 0)
        rc = lt_err_set(&err, 404, "training job '%s' not found", id);
    if (rc == 0) rc = jobs_progress(req->ctx->db, id, ev, &job, &err);
    json_decref(ev);
    if (rc != 0) {
        api_error_from(resp, &err);
        return 0;
    }
    api_json(resp, 200, job);
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------
 * E11: events */

typedef struct sse_arg {
    char id[LT_UUID_LEN];
    char ws_id[LT_UUID_LEN];
    int heartbeat_s;
    int64_t after; /* replay logs after this seq; -1 = only new ones */
    /* the stream's state between ticks */
    int phase;         /* SSE_START, SSE_REPLAY, SSE_FOLLOW, SSE_DRAIN */
    int64_t updated;   /* the job's updated_at as last seen */
    int64_t log_after; /* the last log seq sent */
    double last_beat;
    json_t *final; /* the terminal job, sent as `end` once the logs are out */
} sse_arg;

enum { SSE_START, SSE_REPLAY, SSE_FOLLOW, SSE_DRAIN };

static void sse_arg_free(void *p) {
    sse_arg *a = p;
    json_decref(a->final);
    free(a);
}

/* The compact `progress` event: status, progress and the latest value of each metric. */
static json_t *progress_event(const json_t *job) {
    json_t *latest = json_object(), *v;
    const char *k;
    json_object_foreach(json_object_get(job, "metrics"), k, v) {
        if (json_is_array(v))
            json_object_set(latest, k,
                            json_array_size(v) ? json_array_get(v, json_array_size(v) - 1) : json_null());
        else
            json_object_set(latest, k, v);
    }
    static const char *const KEYS[] = {
        "id",         "status",       "attempt",    "progress", "error", "cancel_requested_at",
        "started_at", "completed_at", "updated_at", NULL};
    json_t *out = json_object();
    for (int i = 0; KEYS[i]; i++)
        json_object_set(out, KEYS[i], json_object_get(job, KEYS[i]));
    json_object_set_new(out, "metrics", latest);
    return out;
}

/* Sends one page of log entries after *after; advances it. 1 when more are waiting, 0 when all are out,
 * -1 when the client has gone. */
static int send_logs_page(api_stream *s, db *d, const char *id, int64_t *after) {
    json_t *items = NULL;
    int64_t next = 0;
    lt_err err;
    if (jobs_logs(d, id, *after, 500, JOBS_LOG_DEBUG, &items, &next, &err) != 0) return 0;
    size_t i;
    json_t *e;
    int rc = 0;
    json_array_foreach(items, i, e) {
        *after = json_integer_value(json_object_get(e, "seq"));
        if (rc == 0) rc = api_stream_event(s, "log", json_incref(e));
    }
    json_decref(items);
    return rc != 0 ? -1 : next ? 1 : 0;
}

static int sse_end_deleted(api_stream *s, const sse_arg *a) {
    api_stream_event(s, "end", json_pack("{s:s,s:b}", "id", a->id, "deleted", 1));
    return API_TICK_DONE;
}

/* The events stream as a polled stream (no thread of its own): a snapshot, the logs after `after`, then
 * every SSE_POLL_MS a look at the job's watermark (updated_at and the last log seq), sending new logs and a
 * `progress` event when the job changed, a heartbeat when quiet, and `end` once the job is terminal. */
static int sse_tick(api_stream *s, void *arg) {
    sse_arg *a = arg;
    db *d = api_stream_ctx(s)->db;
    lt_err err;
    json_t *job = NULL;
    int64_t up, seq;
    switch (a->phase) {
    case SSE_START:
        /* The watermark first: a change between the two reads is then in the snapshot and also sent as an
         * event (harmless), never in neither. */
        if (jobs_watermark(d, a->id, &up, &seq, &err) != 0 || jobs_get(d, a->ws_id, a->id, &job, &err) != 0) {
            json_decref(job);
            return sse_end_deleted(s, a);
        }
        a->updated = up;
        if (jobs_status_terminal(json_string_value(json_object_get(job, "status"))))
            a->final = json_incref(job);
        if (api_stream_event(s, "snapshot", job) != 0) return API_TICK_DONE;
        a->log_after = a->after >= 0 ? a->after : seq;
        a->phase = SSE_REPLAY;
        return API_TICK_SOON;
    case SSE_REPLAY:
    case SSE_DRAIN: {
        int r = send_logs_page(s, d, a->id, &a->log_after);
        if (r < 0) return API_TICK_DONE;
        if (r > 0) return API_TICK_SOON;
        if (a->final) {
            api_stream_event(s, "end", a->final);
            a->final = NULL;
            return API_TICK_DONE;
        }
        a->phase = SSE_FOLLOW;
        a->last_beat = lt_mono_s();
        return API_TICK_AGAIN;
    }
    default:
        break;
    }
    if (jobs_watermark(d, a->id, &up, &seq, &err) != 0)
        return err.code == 404 ? sse_end_deleted(s, a) : API_TICK_AGAIN; /* store busy: next tick */
    if (seq > a->log_after) {
        int r = send_logs_page(s, d, a->id, &a->log_after);
        if (r < 0) return API_TICK_DONE;
        if (r > 0) return API_TICK_SOON; /* the job's change is looked at once the logs are out */
    }
    if (up != a->updated) {
        if (jobs_get(d, a->ws_id, a->id, &job, &err) != 0) return API_TICK_AGAIN;
        a->updated = up;
        int terminal = jobs_status_terminal(json_string_value(json_object_get(job, "status")));
        if (api_stream_event(s, "progress", progress_event(job)) != 0) {
            json_decref(job);
            return API_TICK_DONE;
        }
        if (terminal) {
            a->final = job;
            a->phase = SSE_DRAIN;
            return API_TICK_SOON;
        }
        json_decref(job);
    }
    if (lt_mono_s() - a->last_beat >= a->heartbeat_s) {
        char now[LT_TIME_LEN];
        lt_time_fmt(lt_now_ms(), now);
        if (api_stream_event(s, "heartbeat", json_pack("{s:s}", "time", now)) != 0) return API_TICK_DONE;
        a->last_beat = lt_mono_s();
    }
    return API_TICK_AGAIN;
}

static int h_events(api_req *req, api_resp *resp) {
    scope_ctx sc;
    const char *id;
    json_t *job;
    if (auth_read(req, resp, &sc) || load(req, resp, &sc, &id, &job)) return 0;
    json_decref(job);
    int64_t hb, after;
    if (api_query_int(req, resp, "heartbeat", SSE_HEARTBEAT_S, 1, 300, &hb) ||
        api_query_int(req, resp, "after", -1, -1, INT64_MAX, &after))
        return 0;
    sse_arg *a = calloc(1, sizeof *a);
    if (!a) abort();
    snprintf(a->id, sizeof a->id, "%s", id);
    snprintf(a->ws_id, sizeof a->ws_id, "%s", sc.ws.id);
    a->heartbeat_s = (int)hb;
    a->after = after;
    api_stream_start_polled(resp, 200, "text/event-stream", sse_tick, SSE_POLL_MS, a, sse_arg_free);
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------
 * E12: checkpoints */

static int h_checkpoints(api_req *req, api_resp *resp) {
    scope_ctx sc;
    const char *id;
    json_t *job;
    if (auth_read(req, resp, &sc) || load(req, resp, &sc, &id, &job)) return 0;
    json_decref(job);
    json_t *items = NULL;
    lt_err err = {0};
    if (jobs_checkpoints(req->ctx->db, id, &items, &err) != 0) {
        api_error_from(resp, &err);
        return 0;
    }
    api_json(resp, 200, json_pack("{s:o}", "items", items));
    return 0;
}

static int h_checkpoint_download(api_req *req, api_resp *resp) {
    scope_ctx sc;
    const char *id;
    json_t *job;
    if (auth_read(req, resp, &sc) || load(req, resp, &sc, &id, &job)) return 0;
    json_decref(job);
    const char *name = api_param(req, "name");
    char blob[72];
    lt_err err = {0};
    char *path = NULL;
    if (jobs_checkpoint_blob(req->ctx->db, id, name, blob, NULL, &err) != 0 ||
        !(path = blob_path(req->ctx->blobs, blob, &err))) {
        api_error_from(resp, &err);
        return 0;
    }
    char disp[256];
    snprintf(disp, sizeof disp, "attachment; filename=\"%.80s-%.100s.tar\"", id, name);
    if (api_file(resp, 200, "application/x-tar", path) == 0)
        api_header_add(resp, "Content-Disposition", disp);
    free(path);
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------
 * metrics and registration */

static void collect_jobs(api_ctx *ctx, strbuf *out) {
    int64_t counts[JOBS_NSTATUS];
    lt_err err;
    if (jobs_count_by_status(ctx->db, counts, &err) != 0) return;
    sb_puts(out, "# HELP lathe_jobs Training jobs in the store, by status.\n# TYPE lathe_jobs gauge\n");
    for (int i = 0; i < JOBS_NSTATUS; i++)
        sb_printf(out, "lathe_jobs{status=\"%s\"} %lld\n", jobs_statuses[i], (long long)counts[i]);
}

static void register_collector(void) {
    api_metrics_add_collector(collect_jobs);
}

/* Re-queues jobs whose worker stopped renewing its lease, even while no worker is claiming (the claim does
 * the same sweep): the job list then shows them queued again within a few seconds of the lease's end. */
static void lease_sweeper(api_ctx *ctx, void *arg) {
    while (!api_ctx_sleep(ctx, LEASE_SWEEP_MS)) {
        lt_err err;
        int64_t n = jobs_requeue_expired(ctx->db, lt_now_ms(), &err);
        if (n < 0)
            lt_log(LOG_WARN, "lease sweep: %s", err.msg);
        else if (n > 0)
            lt_log(LOG_INFO, "lease sweep: %lld job(s) whose lease expired were re-queued or cancelled",
                   (long long)n);
    }
}

void api_routes_jobs(api_router *r) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_collector);
    lt_err err;
    if (api_ctx_spawn(api_router_ctx(r), "lease-sweeper", lease_sweeper, NULL, &err) != 0)
        lt_log(LOG_WARN, "cannot start the lease sweeper (leases still expire at the next claim): %s",
               err.msg);
    api_route(r, "POST", JOBS_BASE, h_create, API_IDEMPOTENT, 0);
    api_route(r, "GET", JOBS_BASE, h_list, 0, 0);
    api_route(r, "GET", JOBS_BASE "/{job_id}", h_get, 0, 0);
    api_route(r, "DELETE", JOBS_BASE "/{job_id}", h_delete, 0, 0);
    api_route(r, "POST", JOBS_BASE "/{job_id}/cancel", h_cancel, 0, 0);
    api_route(r, "POST", JOBS_BASE "/{job_id}/retry", h_retry, 0, 0);
    api_route(r, "GET", JOBS_BASE "/{job_id}/logs", h_logs, 0, 0);
    api_route(r, "GET", JOBS_BASE "/{job_id}/artifacts", h_artifacts, 0, 0);
    api_route(r, "GET", JOBS_BASE "/{job_id}/rl-context", h_rl_context, 0, 0);
    api_route(r, "POST", JOBS_BASE "/{job_id}/progress", h_progress, 0, 0);
    api_route(r, "GET", JOBS_BASE "/{job_id}/events", h_events, 0, 0);
    api_route(r, "GET", JOBS_BASE "/{job_id}/checkpoints", h_checkpoints, 0, 0);
    api_route(r, "GET", JOBS_BASE "/{job_id}/checkpoints/{name}/download", h_checkpoint_download, 0, 0);
    api_route(r, "GET", "/api/v1/training/catalog", h_catalog, 0, 0);
}
