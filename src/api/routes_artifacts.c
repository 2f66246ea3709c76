/* routes_artifacts.c: the artifact registry routes of SPEC §3.1, the same six for each kind (datasets,
 * capabilities, tasks): push, list, show, one version, download, delete.
 *
 * A push is checked completely before anything is stored: the body (spooled to a file by the server) is
 * unpacked with the defensive reader of util/archive.h, the manifest is located and validated
 * (util/manifest.h), and for datasets every row of every split is parsed and given a shape (train/rows.h), so
 * an accepted dataset is one a job can use. Only then is the archive copied into the blob store and the
 * version recorded. Errors answer 400 (not an archive, unsafe entry), 413 (over a size limit) or 422 with
 * loc ["archive", FILE, LINE] naming the manifest key or the row to fix.
 *
 * Blobs and version rows change together under the store's write lock: the push records the version inside
 * a write transaction and re-stores the blob there if a concurrent delete removed it; the delete removes a
 * blob only inside its transaction and only when no version in any org still names it. If recording fails,
 * a blob this push created is removed again the same way, so a failed push leaves nothing behind.
 *
 * The kind comes from the matched pattern's segment after {org}; roles: any member reads (scope
 * artifacts:read), contributors and owners write (artifacts:write); another org's artifacts are 404. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <assert.h>

#include "api/http.h"
#include "store/artifacts.h"
#include "train/rows.h"
#include "util/archive.h"
#include "util/log.h"
#include "util/manifest.h"
#include "util/strbuf.h"
#include "util/util.h"

static const char *const KINDS[] = {"datasets", "capabilities", "tasks"};

/* ---- helpers ---- */

/* The singular kind from the matched pattern ("/api/v1/org/{org}/datasets/..." -> "dataset"). */
static const char *req_kind(const api_req *req) {
    const char *p = strstr(req->pattern, "/{org}/");
    if (!p) return NULL;
    p += strlen("/{org}/");
    char seg[32];
    size_t n = strcspn(p, "/");
    if (n >= sizeof seg) return NULL;
    memcpy(seg, p, n);
    seg[n] = '\0';
    const char *kind = artifacts_kind_from_plural(seg);
    assert(kind); /* only our own patterns route here */
    return kind;
}

static manifest_kind manifest_kind_of(const char *kind) {
    if (!strcmp(kind, "capability")) return MANIFEST_CAPABILITY;
    if (!strcmp(kind, "task")) return MANIFEST_TASK;
    return MANIFEST_DATASET;
}

static json_t *ts(int64_t ms) {
    char buf[LT_TIME_LEN];
    lt_time_fmt(ms, buf);
    return json_string(buf);
}

static int64_t total_rows(const json_t *splits) {
    int64_t t = 0;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)splits, k, v) t += json_integer_value(v);
    return t;
}

/* The version record of SPEC §3.1 plus id, kind, org, unpacked size, row total and a capability's prompt. */
static json_t *version_json(const artifact_version *v, const char *org_key) {
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(v->id));
    json_object_set_new(o, "kind", json_string(v->kind));
    json_object_set_new(o, "org", json_string(org_key));
    json_object_set_new(o, "name", json_string(v->name));
    json_object_set_new(o, "version", json_string(v->version));
    json_object_set_new(o, "digest", json_string(v->digest));
    json_object_set_new(o, "size_bytes", json_integer(v->size_bytes));
    json_object_set_new(o, "unpacked_bytes", json_integer(v->unpacked_bytes));
    json_object_set_new(o, "manifest", json_incref(v->manifest));
    json_object_set_new(o, "splits", json_incref(v->splits));
    if (!strcmp(v->kind, "dataset")) json_object_set_new(o, "row_count", json_integer(total_rows(v->splits)));
    if (v->prompt) json_object_set_new(o, "prompt", json_string(v->prompt));
    json_object_set_new(o, "created_at", ts(v->created_at));
    json_object_set_new(o, "created_by", v->created_by[0] ? json_string(v->created_by) : json_null());
    return o;
}

/* A 422 for a manifest or row problem: loc ["archive", FILE(, LINE)]. */
static void archive_error(api_resp *resp, const lt_err *err, const char *file, long line) {
    json_t *loc = api_loc("archive", file && file[0] ? file : "archive", NULL);
    if (line > 0) json_array_append_new(loc, json_integer(line));
    json_t *errors = json_array();
    api_verr_add(errors, loc, "value_error", "%s", err->msg);
    api_error_with(resp, 422, "validation_error", errors, "%s", err->msg);
}

static int content_type_ok(const char *ct) {
    if (!ct) return 0;
    size_t n = strcspn(ct, "; \t");
    static const char *ok[] = {"application/x-tar",
                               "application/tar",
                               "application/gzip",
                               "application/x-gzip",
                               "application/x-compressed-tar",
                               "application/x-gtar",
                               "application/octet-stream"};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++)
        if (strlen(ok[i]) == n && !strncasecmp(ct, ok[i], n)) return 1;
    return 0;
}

/* ---- checking a pushed archive ---- */

typedef struct inspected {
    json_t *manifest;
    json_t *splits; /* split -> rows (datasets) */
    char *prompt;   /* capabilities */
    int64_t unpacked;
} inspected;

static void inspected_free(inspected *x) {
    json_decref(x->manifest);
    json_decref(x->splits);
    free(x->prompt);
}

/* Counts and checks the rows of every split. 0, or -1 with err and the file/line in loc. */
static int check_rows(const archive_items *items, const json_t *manifest, json_t *splits, rows_loc *loc,
                      lt_err *err) {
    rows_format dflt = ROWS_JSONL;
    rows_format_parse(json_string_value(json_object_get(manifest, "format")), &dflt);
    const char *split;
    json_t *files;
    json_object_foreach(json_object_get(manifest, "splits"), split, files) {
        size_t total = 0, i;
        json_t *f;
        json_array_foreach(files, i, f) {
            const char *path = json_string_value(f);
            const archive_item *it = archive_items_find(items, path);
            if (!it)
                return lt_err_set(err, 500, "split file %s vanished", path); /* manifest_dataset checked it */
            size_t n = 0;
            if (rows_check_file((const char *)it->data, it->size, rows_format_for_path(path, dflt), split,
                                path, &n, loc, err) != 0)
                return -1;
            total += n;
        }
        json_object_set_new(splits, split, json_integer((json_int_t)total));
    }
    return 0;
}

/* Unpacks and validates the archive at path for kind. On failure writes the error response and returns -1. */
static int inspect(const char *path, const char *kind, inspected *out, api_resp *resp) {
    memset(out, 0, sizeof *out);
    lt_err err = {0};
    archive_items items = ARCHIVE_ITEMS_INIT;
    manifest_kind mk = manifest_kind_of(kind);
    const char *mfile = manifest_file_name(mk);
    if (archive_unpack_file(path, NULL, &items, &err) != 0) {
        api_error_from(resp, &err);
        return -1;
    }
    int rc = -1;
    manifest_loc mloc = {{0}, 0};
    if (archive_items_root(&items, mfile, &err) != 0) {
        archive_error(resp, &err, mfile, 0);
        goto out;
    }
    out->unpacked = (int64_t)items.total;
    out->splits = json_object();
    if (mk == MANIFEST_DATASET) {
        out->manifest = manifest_dataset(&items, &mloc, &err);
        if (out->manifest) {
            rows_loc rloc = {"", "", 0};
            if (check_rows(&items, out->manifest, out->splits, &rloc, &err) != 0) {
                if (err.code == 422)
                    archive_error(resp, &err, rloc.file, rloc.line);
                else
                    api_error_from(resp, &err);
                goto out;
            }
            if (manifest_dataset_check_count(&items, out->manifest, total_rows(out->splits), &mloc, &err) !=
                0) {
                archive_error(resp, &err, mloc.file, mloc.line);
                goto out;
            }
            int64_t n = total_rows(out->splits);
            if (n == 0) {
                lt_err_set(&err, 422, "dataset.yaml: the data files hold no rows");
                archive_error(resp, &err, "dataset.yaml", 0);
                goto out;
            }
        }
    } else if (mk == MANIFEST_CAPABILITY) {
        out->manifest = manifest_capability(&items, &out->prompt, &mloc, &err);
    } else {
        out->manifest = manifest_task(&items, &mloc, &err);
    }
    if (!out->manifest) { /* every manifest problem is a 422 pointing into the file */
        archive_error(resp, &err, mloc.file, mloc.line);
        goto out;
    }
    rc = 0;
out:
    archive_items_free(&items);
    if (rc != 0) {
        inspected_free(out);
        memset(out, 0, sizeof *out);
    }
    return rc;
}

/* ---- handlers ---- */

static int h_push(api_req *req, api_resp *resp) {
    const char *kind = req_kind(req);
    store_org org;
    if (api_authorize(req, resp, api_param(req, "org"), NULL, STORE_ROLE_CONTRIBUTOR,
                      STORE_SCOPE_ARTIFACTS_WRITE, &org, NULL, NULL) != 0)
        return 0;
    if (!content_type_ok(req->content_type)) {
        api_error(resp, 400, "bad_request",
                  "send the archive with Content-Type application/x-tar or application/gzip (got %s)",
                  req->content_type ? req->content_type : "none");
        return 0;
    }
    struct stat st;
    if (!req->body_path || stat(req->body_path, &st) != 0 || st.st_size == 0) {
        api_error(resp, 400, "bad_request", "the body is empty; send a tar or tar.gz archive");
        return 0;
    }
    inspected x;
    if (inspect(req->body_path, kind, &x, resp) != 0) return 0;

    db *d = req->ctx->db;
    blob_store *bs = req->ctx->blobs;
    lt_err err = {0};
    artifact_version v = {0};
    snprintf(v.org_id, sizeof v.org_id, "%s", org.id);
    snprintf(v.kind, sizeof v.kind, "%s", kind);
    snprintf(v.name, sizeof v.name, "%s", json_string_value(json_object_get(x.manifest, "name")));
    snprintf(v.version, sizeof v.version, "%s", json_string_value(json_object_get(x.manifest, "version")));
    snprintf(v.created_by, sizeof v.created_by, "%s", req->principal.user.id);
    v.manifest = x.manifest;
    v.splits = x.splits;
    v.prompt = x.prompt;
    v.unpacked_bytes = x.unpacked;

    /* Store the bytes (outside the write lock: it may be a large copy), then record the version. */
    char digest[BLOB_DIGEST_LEN];
    int64_t size = 0;
    if (blob_put_file(bs, req->body_path, digest, &size, &err) != 0) {
        inspected_free(&x);
        api_error_from(resp, &err);
        return 0;
    }
    snprintf(v.digest, sizeof v.digest, "%s", digest);
    snprintf(v.blob_digest, sizeof v.blob_digest, "%s", digest);
    v.size_bytes = size;

    int rc = db_begin_immediate(d, &err);
    if (rc == 0) rc = artifacts_create(d, &v, &err);
    if (rc == 0 && !blob_exists(bs, digest)) { /* a concurrent delete removed it after our put */
        char again[BLOB_DIGEST_LEN];
        rc = blob_put_file(bs, req->body_path, again, NULL, &err);
    }
    if (rc == 0)
        rc = db_commit(d, &err);
    else
        db_rollback(d);
    if (rc != 0) {
        /* Leave nothing behind: drop the blob unless some version (any org) already names it. */
        lt_err e2 = {0};
        if (db_begin_immediate(d, &e2) == 0) {
            db_stmt *s =
                db_query(d, &e2, "SELECT COUNT(*) FROM artifact_versions WHERE blob_digest = ?", "t", digest);
            if (s && db_step(s, &e2) == DB_ROW && db_column_int64(s, 0) == 0) blob_delete(bs, digest, &e2);
            db_finalize(s);
            db_commit(d, &e2);
        }
        api_error_from(resp, &err);
    } else {
        lt_log(LOG_INFO, "pushed %s %s@%s (%s, %lld bytes)", kind, v.name, v.version, v.digest,
               (long long)size);
        json_t *body = version_json(&v, org.key);
        strbuf loc = STRBUF_INIT;
        sb_printf(&loc, "/api/v1/org/%s/%s/%s/%s", org.key,
                  !strcmp(kind, "dataset")      ? "datasets"
                  : !strcmp(kind, "capability") ? "capabilities"
                                                : "tasks",
                  v.name, v.version);
        api_header_add(resp, "Location", loc.buf);
        sb_free(&loc);
        api_json(resp, 201, body);
    }
    inspected_free(&x);
    return 0;
}

static int h_list(api_req *req, api_resp *resp) {
    const char *kind = req_kind(req);
    store_org org;
    if (api_authorize(req, resp, api_param(req, "org"), NULL, STORE_ROLE_READER, STORE_SCOPE_ARTIFACTS_READ,
                      &org, NULL, NULL) != 0)
        return 0;
    int64_t page, page_size;
    if (api_query_int(req, resp, "page", 1, 1, INT32_MAX, &page) != 0) return 0;
    if (api_query_int(req, resp, "page_size", 20, 1, 100, &page_size) != 0) return 0;
    artifact_summary *items = NULL;
    size_t n = 0;
    int64_t total = 0;
    lt_err err = {0};
    if (artifacts_list(req->ctx->db, org.id, kind, page, page_size, &items, &n, &total, &err) != 0) {
        api_error_from(resp, &err);
        return 0;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_object();
        json_object_set_new(o, "id", json_string(items[i].id));
        json_object_set_new(o, "kind", json_string(kind));
        json_object_set_new(o, "org", json_string(org.key));
        json_object_set_new(o, "name", json_string(items[i].name));
        json_object_set_new(o, "latest_version", json_string(items[i].latest.version));
        json_object_set_new(o, "version_count", json_integer(items[i].versions));
        json_object_set_new(o, "latest", version_json(&items[i].latest, org.key));
        json_object_set_new(o, "created_at", ts(items[i].created_at));
        json_object_set_new(o, "updated_at", ts(items[i].updated_at));
        json_array_append_new(arr, o);
    }
    artifact_summaries_free(items, n);
    api_json(resp, 200,
             json_pack("{s:o, s:I, s:I, s:I}", "items", arr, "total", (json_int_t)total, "page",
                       (json_int_t)page, "page_size", (json_int_t)page_size));
    return 0;
}

static int h_show(api_req *req, api_resp *resp) {
    const char *kind = req_kind(req);
    store_org org;
    if (api_authorize(req, resp, api_param(req, "org"), NULL, STORE_ROLE_READER, STORE_SCOPE_ARTIFACTS_READ,
                      &org, NULL, NULL) != 0)
        return 0;
    const char *name = api_param(req, "name");
    artifact_version *vs = NULL;
    size_t n = 0;
    lt_err err = {0};
    if (artifacts_versions(req->ctx->db, org.id, kind, name, &vs, &n, &err) != 0) {
        api_error_from(resp, &err);
        return 0;
    }
    json_t *arr = json_array();
    int64_t first = vs[0].created_at, last = vs[0].created_at;
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(arr, version_json(&vs[i], org.key));
        if (vs[i].created_at < first) first = vs[i].created_at;
        if (vs[i].created_at > last) last = vs[i].created_at;
    }
    json_t *o = json_object();
    json_object_set_new(o, "kind", json_string(kind));
    json_object_set_new(o, "org", json_string(org.key));
    json_object_set_new(o, "name", json_string(name));
    json_object_set_new(o, "latest_version", json_string(vs[0].version));
    json_object_set_new(o, "versions", arr);
    json_object_set_new(o, "created_at", ts(first));
    json_object_set_new(o, "updated_at", ts(last));
    artifact_versions_free(vs, n);
    api_json(resp, 200, o);
    return 0;
}

/* Authorizes and loads the version named by the path; -1 after writing the error. */
static int load_version(api_req *req, api_resp *resp, store_org *org, artifact_version *v) {
    if (api_authorize(req, resp, api_param(req, "org"), NULL, STORE_ROLE_READER, STORE_SCOPE_ARTIFACTS_READ,
                      org, NULL, NULL) != 0)
        return -1;
    lt_err err = {0};
    if (artifacts_get(req->ctx->db, org->id, req_kind(req), api_param(req, "name"), api_param(req, "version"),
                      v, &err) != 0) {
        api_error_from(resp, &err);
        return -1;
    }
    return 0;
}

static int h_version(api_req *req, api_resp *resp) {
    store_org org;
    artifact_version v;
    if (load_version(req, resp, &org, &v) != 0) return 0;
    api_json(resp, 200, version_json(&v, org.key));
    artifact_version_free(&v);
    return 0;
}

static int h_download(api_req *req, api_resp *resp) {
    store_org org;
    artifact_version v;
    if (load_version(req, resp, &org, &v) != 0) return 0;
    lt_err err = {0};
    char *path = blob_path(req->ctx->blobs, v.blob_digest, &err);
    if (!path) {
        lt_log(LOG_ERROR, "artifact %s %s@%s: blob %s missing: %s", v.kind, v.name, v.version, v.blob_digest,
               err.msg);
        lt_err_set(&err, 500, "archive blob missing");
        api_error_from(resp, &err);
        artifact_version_free(&v);
        return 0;
    }
    unsigned char magic[2] = {0, 0};
    FILE *f = fopen(path, "rb");
    if (f) {
        if (fread(magic, 1, 2, f) != 2) magic[0] = 0;
        fclose(f);
    }
    int gz = magic[0] == 0x1f && magic[1] == 0x8b;
    char disp[ARTIFACT_NAME_MAX + ARTIFACT_VERSION_MAX + 64];
    snprintf(disp, sizeof disp, "attachment; filename=\"%s-%s.%s\"", v.name, v.version,
             gz ? "tar.gz" : "tar");
    char etag[ARTIFACT_DIGEST_LEN + 2];
    snprintf(etag, sizeof etag, "\"%s\"", v.digest);
    if (api_file(resp, 200, gz ? "application/gzip" : "application/x-tar", path) == 0) {
        api_header_add(resp, "Content-Disposition", disp);
        api_header_add(resp, "ETag", etag);
    }
    free(path);
    artifact_version_free(&v);
    return 0;
}

static int h_delete(api_req *req, api_resp *resp) {
    const char *kind = req_kind(req);
    store_org org;
    if (api_authorize(req, resp, api_param(req, "org"), NULL, STORE_ROLE_CONTRIBUTOR,
                      STORE_SCOPE_ARTIFACTS_WRITE, &org, NULL, NULL) != 0)
        return 0;
    db *d = req->ctx->db;
    lt_err err = {0};
    char blob[ARTIFACT_DIGEST_LEN] = "";
    int unref = 0;
    int rc = db_begin_immediate(d, &err);
    if (rc == 0)
        rc = artifacts_delete(d, org.id, kind, api_param(req, "name"), api_param(req, "version"), blob,
                              &unref, &err);
    if (rc == 0 && unref) rc = blob_delete(req->ctx->blobs, blob, &err);
    if (rc == 0)
        rc = db_commit(d, &err);
    else
        db_rollback(d);
    if (rc != 0) {
        api_error_from(resp, &err);
        return 0;
    }
    lt_log(LOG_INFO, "deleted %s %s@%s", kind, api_param(req, "name"), api_param(req, "version"));
    api_no_content(resp);
    return 0;
}

void api_routes_artifacts(api_router *r) {
    for (size_t i = 0; i < sizeof KINDS / sizeof *KINDS; i++) {
        char base[64], one[96], ver[128], dl[160];
        snprintf(base, sizeof base, "/api/v1/org/{org}/%s", KINDS[i]);
        snprintf(one, sizeof one, "%s/{name}", base);
        snprintf(ver, sizeof ver, "%s/{version}", one);
        snprintf(dl, sizeof dl, "%s/download", ver);
        api_route(r, "POST", base, h_push, API_RAW_BODY, API_UPLOAD_MAX_BODY);
        api_route(r, "GET", base, h_list, 0, 0);
        api_route(r, "GET", one, h_show, 0, 0);
        api_route(r, "GET", ver, h_version, 0, 0);
        api_route(r, "GET", dl, h_download, 0, 0);
        api_route(r, "DELETE", ver, h_delete, 0, 0);
    }
}
