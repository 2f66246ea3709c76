/* routes_artifacts.c: the artifact registry routes of docs/spec.md §3.1, the same six for each kind
 * (datasets, capabilities, tasks): push, list, show, one version, download, delete.
 *
 * A push is checked completely before anything is stored, in bounded memory whatever the archive holds: the
 * body (spooled to a file by the server) is scanned with the defensive reader of util/archive.h, which checks
 * every header against the upload limits and keeps only the manifest (and a capability's prompts) in memory;
 * the manifest is located and validated (util/manifest.h); an existing name@version is a 409 as soon as the
 * scan has read the manifest (and again after validation), before any row is read; then, for datasets, a
 * second pass streams each data file through the row parser (util/rows.h: one row in memory at a time), so
 * an accepted dataset is one a job can use. Only then is the archive copied into the blob store and the
 * version recorded. Errors answer 400 (not an archive, unsafe entry), 413 (over a limit: the message names
 * it), or 422 with loc ["archive", FILE, LINE] naming the manifest key or the row to fix.
 *
 * Upload limits (LATHE_UPLOAD_*, also `lathe serve --upload-*` flags; read once at start, see
 * upload_limits_load): entries, bytes per file, unpacked bytes, expansion ratio, bytes per row, CSV columns,
 * and the upload pool: at most LATHE_UPLOAD_CONCURRENCY archives are checked at once; a push beyond that is
 * answered 503 with Retry-After at once rather than holding one of the server's request threads, so uploads
 * can never starve /healthz or the API.
 *
 * Blobs and version rows change together under the store's write lock: the push records the version inside
 * a write transaction and re-stores the blob there if a concurrent delete removed it; the delete removes a
 * blob only inside its transaction and only when no version in any org still names it. If recording fails,
 * a blob this push created is removed again the same way, so a failed push leaves nothing behind.
 *
 * The kind comes from the matched pattern's segment after {org}; roles: any member reads (scope
 * artifacts:read), contributors and owners write (artifacts:write); another org's artifacts are 404. */
#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "api/http.h"
#include "store/artifacts.h"
#include "util/rows.h"
#include "util/archive.h"
#include "util/json.h"
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

static int64_t total_rows(const json_t *splits) {
    int64_t t = 0;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)splits, k, v) t += json_integer_value(v);
    return t;
}

/* The version record of docs/spec.md §3.1 plus id, kind, org, unpacked size, row total and a capability's
 * prompt. */
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
    json_object_set_new(o, "created_at", lt_json_time(v->created_at));
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

/* ---- upload limits and the upload pool ---- */

/* The limits every push is read under; from the environment of `lathe serve` once, at route registration
 * (see upload_limits_load for the names and defaults). */
typedef struct upload_limits {
    archive_limits arch;
    rows_limits rows;
    int concurrency; /* archive checks at once; more get 503 + Retry-After */
} upload_limits;

static upload_limits g_lim;
static atomic_int g_active; /* pushes being checked now */

#define MANIFEST_MAX_BYTES ((size_t)1 << 20)   /* one manifest or prompt file held in memory */
#define MANIFESTS_MAX_BYTES ((size_t)16 << 20) /* all of them together */
#define RATIO_FLOOR ((size_t)64 << 20)         /* the ratio rule starts past 64 MiB unpacked */

/* "123", "64K", "2M", "4G", "4GiB" (powers of 1024), as `lathe serve` reads sizes. 0 or -1. */
static int parse_size(const char *s, size_t *out) {
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || s[0] == '-') return -1;
    unsigned long long mul = 1;
    if (*end == 'k' || *end == 'K') mul = 1ULL << 10;
    if (*end == 'm' || *end == 'M') mul = 1ULL << 20;
    if (*end == 'g' || *end == 'G') mul = 1ULL << 30;
    if (mul > 1) {
        end++;
        if (*end == 'i' || *end == 'I') end++;
        if (*end == 'b' || *end == 'B') end++;
    }
    if (*end || v == 0 || v > (1ULL << 42) / mul) return -1;
    *out = (size_t)(v * mul);
    return 0;
}

static void env_size(const char *name, size_t *v) {
    const char *s = getenv(name);
    if (!s || !*s) return;
    if (parse_size(s, v) != 0)
        lt_log(LOG_ERROR, "%s='%.40s' is not a size (e.g. 4096, 64K, 2M, 4G); using the default %zu", name, s,
               *v);
}

/* Reads LATHE_UPLOAD_* once. Defaults: 10,000 entries, 2 GiB per file, 4 GiB unpacked, expansion ratio 200
 * (past 64 MiB), 2 MiB per row, 10,000 CSV columns, 2 concurrent checks. */
static void upload_limits_load(void) {
    upload_limits l;
    l.arch = (archive_limits){10000, (size_t)2 << 30, (size_t)4 << 30, 200, RATIO_FLOOR};
    l.rows = rows_limits_default();
    l.concurrency = 2;
    size_t v;
    env_size("LATHE_UPLOAD_MAX_ENTRIES", &l.arch.max_entries);
    env_size("LATHE_UPLOAD_MAX_FILE", &l.arch.max_file_bytes);
    env_size("LATHE_UPLOAD_MAX_UNPACKED", &l.arch.max_total_bytes);
    v = l.arch.max_ratio;
    env_size("LATHE_UPLOAD_MAX_RATIO", &v);
    l.arch.max_ratio = v > 1000000 ? 1000000 : (unsigned)v;
    env_size("LATHE_UPLOAD_MAX_ROW", &l.rows.max_row_bytes);
    env_size("LATHE_UPLOAD_MAX_COLUMNS", &l.rows.max_columns);
    v = (size_t)l.concurrency;
    env_size("LATHE_UPLOAD_CONCURRENCY", &v);
    l.concurrency = v > 1024 ? 1024 : (int)v;
    g_lim = l;
    lt_log(LOG_DEBUG,
           "upload limits: %zu entries, %zu bytes per file, %zu unpacked, ratio %u, %zu bytes per row, %zu "
           "columns, %d at once",
           l.arch.max_entries, l.arch.max_file_bytes, l.arch.max_total_bytes, l.arch.max_ratio,
           l.rows.max_row_bytes, l.rows.max_columns, l.concurrency);
}

/* Takes a slot of the upload pool; 0, or -1 after answering 503 with Retry-After. */
static int pool_enter(api_resp *resp) {
    int n = atomic_fetch_add(&g_active, 1);
    if (n < g_lim.concurrency) return 0;
    atomic_fetch_sub(&g_active, 1);
    api_error(resp, 503, "server_busy",
              "%d uploads are being checked already, the limit (LATHE_UPLOAD_CONCURRENCY); retry in 2 s",
              g_lim.concurrency);
    api_header_add(resp, "Retry-After", "2");
    return -1;
}

static void pool_leave(void) {
    atomic_fetch_sub(&g_active, 1);
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

/* Which files the scan reads into memory: the kind's manifest (at the root or one directory down) and, for
 * capabilities, prompt files under agents/. Everything else is streamed. */
typedef struct want_ctx {
    const char *mfile;
    int capability;
    const api_req *req;
    const char *org_id, *kind;
} want_ctx;

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

static int is_manifest_path(const want_ctx *w, const char *path);

static int want_file(const char *path, void *ud) {
    const want_ctx *w = ud;
    const char *slash = strchr(path, '/');
    const char *rest = slash ? slash + 1 : path;
    if (is_manifest_path(w, path)) return 1;
    if (!w->capability) return 0;
    const char *agents = !strncmp(path, "agents/", 7)            ? path
                         : slash && !strncmp(rest, "agents/", 7) ? rest
                                                                 : NULL;
    return agents && !strchr(agents + 7, '/') && (ends_with(agents, ".md") || ends_with(agents, ".txt"));
}

/* 1 when path is the kind's manifest at the root or one directory down (where archive_items_root looks). */
static int is_manifest_path(const want_ctx *w, const char *path) {
    const char *slash = strchr(path, '/');
    return !strcmp(path, w->mfile) || (slash && !strcmp(slash + 1, w->mfile));
}

/* The earliest duplicate check: as soon as the scan has read the manifest, a name@version the org already has
 * is a 409, before the rest of the archive is even read. A manifest that does not parse here is left to the
 * full check after the scan, which reports it properly. */
static int seen_file(const char *path, const unsigned char *data, size_t size, void *ud, lt_err *err) {
    const want_ctx *w = ud;
    if (!is_manifest_path(w, path)) return 0;
    manifest_yaml doc = {NULL, NULL};
    lt_err perr = {0};
    if (manifest_yaml_parse((const char *)data, size, w->mfile, &doc, NULL, &perr) != 0) return 0;
    const char *name = json_string_value(json_object_get(doc.root, "name"));
    const char *version = json_string_value(json_object_get(doc.root, "version"));
    int rc = 0;
    artifact_version v;
    if (name && version &&
        artifacts_get(w->req->ctx->db, w->org_id, w->kind, name, version, &v, &perr) == 0) {
        artifact_version_free(&v);
        rc = lt_err_set(err, 409,
                        "%s '%s' version %s already exists; versions are immutable, push a new version",
                        w->kind, name, version);
    }
    manifest_yaml_free(&doc);
    return rc;
}

/* One data file of a split, and where its bytes are in the archive. */
typedef struct split_file {
    const char *split, *path, *src;
    size_t rows;
    int done;
} split_file;

typedef struct rows_pass {
    split_file *v;
    size_t n;
    rows_format dflt;
    rows_loc *loc;
} rows_pass;

static int split_file_cmp(const void *a, const void *b) {
    return strcmp(((const split_file *)a)->src, ((const split_file *)b)->src);
}

static long read_entry(void *ud, char *buf, size_t n, lt_err *err) {
    return archive_stream_read(ud, buf, n, err);
}

/* archive_stream_files callback: parses an entry once for every split file whose bytes it holds. */
static int rows_of_entry(const char *src, archive_stream *s, void *ud, lt_err *err) {
    rows_pass *p = ud;
    split_file key = {NULL, NULL, src, 0, 0};
    split_file *f = bsearch(&key, p->v, p->n, sizeof *p->v, split_file_cmp);
    if (!f) return 0;
    while (f > p->v && !strcmp(f[-1].src, src))
        f--;
    if (f->done) return 0; /* a duplicate entry name cannot pass the scan; be safe anyway */
    size_t n = 0;
    if (rows_check_stream(read_entry, s, rows_format_for_path(f->path, p->dflt), &g_lim.rows, f->split,
                          f->path, &n, p->loc, err) != 0) {
        if (p->loc && !p->loc->file[0]) snprintf(p->loc->file, sizeof p->loc->file, "%s", f->path);
        return -1;
    }
    for (split_file *g = f; g < p->v + p->n && !strcmp(g->src, src); g++) {
        g->rows = n;
        g->done = 1;
    }
    return 0;
}

/* Counts and checks the rows of every split, streaming each data file from the archive at path once. 0, or
 * -1 with err and the file/line in loc. */
static int check_rows(const char *path, const archive_items *items, const json_t *manifest, json_t *splits,
                      rows_loc *loc, lt_err *err) {
    rows_pass p = {NULL, 0, ROWS_JSONL, loc};
    rows_format_parse(json_string_value(json_object_get(manifest, "format")), &p.dflt);
    const char *split;
    json_t *files;
    size_t cap = 0;
    json_object_foreach(json_object_get(manifest, "splits"), split, files) {
        size_t i;
        json_t *f;
        json_array_foreach(files, i, f) {
            const archive_item *it = archive_items_find(items, json_string_value(f));
            if (!it) { /* manifest_dataset checked it */
                free(p.v);
                return lt_err_set(err, 500, "split file %s vanished", json_string_value(f));
            }
            if (p.n == cap) {
                cap = cap ? cap * 2 : 16;
                p.v = realloc(p.v, cap * sizeof *p.v);
                if (!p.v) abort();
            }
            p.v[p.n++] = (split_file){split, it->path, it->src, 0, 0};
        }
    }
    if (p.n) qsort(p.v, p.n, sizeof *p.v, split_file_cmp);
    int rc = archive_stream_files(path, &g_lim.arch, rows_of_entry, &p, err);
    for (size_t i = 0; rc == 0 && i < p.n; i++)
        if (!p.v[i].done) rc = lt_err_set(err, 500, "split file %s was not found when reading", p.v[i].path);
    if (rc == 0) {
        json_object_foreach(json_object_get(manifest, "splits"), split, files) {
            size_t total = 0;
            for (size_t i = 0; i < p.n; i++)
                if (!strcmp(p.v[i].split, split)) total += p.v[i].rows;
            json_object_set_new(splits, split, json_integer((json_int_t)total));
        }
    }
    free(p.v);
    return rc;
}

/* 409 when the org already has this name and version: answered before any row is read. */
static int check_new_version(const api_req *req, const char *org_id, const char *kind, const json_t *manifest,
                             api_resp *resp) {
    const char *name = json_string_value(json_object_get(manifest, "name"));
    const char *version = json_string_value(json_object_get(manifest, "version"));
    if (!name || !version) return 0;
    artifact_version v;
    lt_err err = {0};
    if (artifacts_get(req->ctx->db, org_id, kind, name, version, &v, &err) != 0) return 0;
    artifact_version_free(&v);
    api_error(resp, 409, "conflict",
              "%s '%s' version %s already exists; versions are immutable, push a new version", kind, name,
              version);
    return -1;
}

/* Checks the archive at path for kind, in bounded memory: a scan of every header (the archive limits) that
 * keeps only the manifest and prompts, the manifest's rules, the duplicate-version check, then (datasets) a
 * second pass streaming each data file through the row parser. On failure writes the error response and
 * returns -1. */
static int inspect(const api_req *req, const char *org_id, const char *kind, inspected *out, api_resp *resp) {
    memset(out, 0, sizeof *out);
    lt_err err = {0};
    archive_items items = ARCHIVE_ITEMS_INIT;
    manifest_kind mk = manifest_kind_of(kind);
    const char *mfile = manifest_file_name(mk);
    want_ctx wc = {mfile, mk == MANIFEST_CAPABILITY, req, org_id, kind};
    archive_want want = {want_file, &wc, MANIFEST_MAX_BYTES, MANIFESTS_MAX_BYTES, seen_file};
    if (archive_scan_file(req->body_path, &g_lim.arch, &want, &items, &err) != 0) {
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
    if (mk == MANIFEST_DATASET)
        out->manifest = manifest_dataset(&items, &mloc, &err);
    else if (mk == MANIFEST_CAPABILITY)
        out->manifest = manifest_capability(&items, &out->prompt, &mloc, &err);
    else
        out->manifest = manifest_task(&items, &mloc, &err);
    if (!out->manifest) { /* every manifest problem points into the file */
        if (err.code == 422)
            archive_error(resp, &err, mloc.file, mloc.line);
        else
            api_error_from(resp, &err);
        goto out;
    }
    if (check_new_version(req, org_id, kind, out->manifest, resp) != 0) goto out;
    if (mk == MANIFEST_DATASET) {
        rows_loc rloc = {"", "", 0};
        if (check_rows(req->body_path, &items, out->manifest, out->splits, &rloc, &err) != 0) {
            if (err.code == 422)
                archive_error(resp, &err, rloc.file, rloc.line);
            else
                api_error_from(resp, &err);
            goto out;
        }
        if (manifest_dataset_check_count(&items, out->manifest, total_rows(out->splits), &mloc, &err) != 0) {
            archive_error(resp, &err, mloc.file, mloc.line);
            goto out;
        }
        if (total_rows(out->splits) == 0) {
            lt_err_set(&err, 422, "dataset.yaml: the data files hold no rows");
            archive_error(resp, &err, "dataset.yaml", 0);
            goto out;
        }
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
    if (pool_enter(resp) != 0) return 0;
    inspected x;
    int bad = inspect(req, org.id, kind, &x, resp);
    pool_leave();
    if (bad) return 0;

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
        json_object_set_new(o, "created_at", lt_json_time(items[i].created_at));
        json_object_set_new(o, "updated_at", lt_json_time(items[i].updated_at));
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
    json_object_set_new(o, "created_at", lt_json_time(first));
    json_object_set_new(o, "updated_at", lt_json_time(last));
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
    upload_limits_load();
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
