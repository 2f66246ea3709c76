/* artifacts.c: the artifact registry's tables and queries (see artifacts.h).
 *
 * Two tables. `artifacts` holds one row per (org, kind, name) and exists only while it has versions;
 * `artifact_versions` holds the immutable versions, with the semver parts split into integer columns so that
 * "latest" is an ORDER BY v_major DESC, v_minor DESC, v_patch DESC that any SQL engine runs the same way. The
 * normalized manifest and the split row counts are stored as JSON text; the archive itself is a blob.
 *
 * Writes that touch both tables run in one transaction: the caller's when it has one open (the upload and
 * delete routes do, so that storing or deleting the blob happens under the same write lock), else our own.
 * The uniqueness of a version is the UNIQUE constraint on (org_id, kind, name, version): two racing pushes of
 * the same version both get as far as the INSERT, and the loser gets the 409 from the store. */
#include "store/artifacts.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "util/manifest.h"

const db_migration db_migrations_artifacts[] = {
    {"artifacts and artifact_versions",
     "CREATE TABLE artifacts ("
     " id TEXT PRIMARY KEY,"
     " org_id TEXT NOT NULL,"
     " kind TEXT NOT NULL,"
     " name TEXT NOT NULL,"
     " created_at INTEGER NOT NULL,"
     " updated_at INTEGER NOT NULL,"
     " UNIQUE (org_id, kind, name));"
     "CREATE TABLE artifact_versions ("
     " id TEXT PRIMARY KEY,"
     " artifact_id TEXT NOT NULL REFERENCES artifacts(id) ON DELETE CASCADE,"
     " org_id TEXT NOT NULL,"
     " kind TEXT NOT NULL,"
     " name TEXT NOT NULL,"
     " version TEXT NOT NULL,"
     " v_major INTEGER NOT NULL,"
     " v_minor INTEGER NOT NULL,"
     " v_patch INTEGER NOT NULL,"
     " digest TEXT NOT NULL,"
     " blob_digest TEXT NOT NULL,"
     " size_bytes INTEGER NOT NULL,"
     " unpacked_bytes INTEGER NOT NULL,"
     " manifest TEXT NOT NULL,"
     " splits TEXT NOT NULL,"
     " prompt TEXT,"
     " created_at INTEGER NOT NULL,"
     " created_by TEXT,"
     " UNIQUE (org_id, kind, name, version));"
     "CREATE INDEX artifact_versions_artifact ON artifact_versions (artifact_id);"
     "CREATE INDEX artifact_versions_blob ON artifact_versions (blob_digest)"},
    {NULL, NULL},
};

/* ---- kinds ---- */

const char *artifacts_kind_from_plural(const char *plural) {
    if (!plural) return NULL;
    if (!strcmp(plural, "datasets")) return "dataset";
    if (!strcmp(plural, "capabilities")) return "capability";
    if (!strcmp(plural, "tasks")) return "task";
    return NULL;
}

int artifacts_kind_valid(const char *kind) {
    return kind && (!strcmp(kind, "dataset") || !strcmp(kind, "capability") || !strcmp(kind, "task"));
}

/* ---- freeing ---- */

void artifact_version_free(artifact_version *v) {
    if (!v) return;
    json_decref(v->manifest);
    json_decref(v->splits);
    free(v->prompt);
    v->manifest = v->splits = NULL;
    v->prompt = NULL;
}

void artifact_versions_free(artifact_version *items, size_t n) {
    for (size_t i = 0; i < n; i++)
        artifact_version_free(&items[i]);
    free(items);
}

void artifact_summaries_free(artifact_summary *items, size_t n) {
    for (size_t i = 0; i < n; i++)
        artifact_version_free(&items[i].latest);
    free(items);
}

/* ---- rows ---- */

#define VERSION_COLS                                                                                         \
    "v.id, v.org_id, v.kind, v.name, v.version, v.digest, v.blob_digest, v.size_bytes, v.unpacked_bytes, "   \
    "v.manifest, v.splits, v.prompt, v.created_at, v.created_by"
#define SEMVER_DESC "v.v_major DESC, v.v_minor DESC, v.v_patch DESC"

static json_t *load_json(const char *text, const char *what, lt_err *err) {
    json_error_t je;
    json_t *j = text ? json_loads(text, 0, &je) : NULL;
    if (!j) lt_err_set(err, 500, "artifact store: stored %s is not valid JSON", what);
    return j;
}

/* Fills out from a row selected with VERSION_COLS starting at column 0. */
static int read_version(db_stmt *s, artifact_version *out, lt_err *err) {
    memset(out, 0, sizeof *out);
    db_column_copy(s, 0, out->id, sizeof out->id);
    db_column_copy(s, 1, out->org_id, sizeof out->org_id);
    db_column_copy(s, 2, out->kind, sizeof out->kind);
    db_column_copy(s, 3, out->name, sizeof out->name);
    db_column_copy(s, 4, out->version, sizeof out->version);
    db_column_copy(s, 5, out->digest, sizeof out->digest);
    db_column_copy(s, 6, out->blob_digest, sizeof out->blob_digest);
    out->size_bytes = db_column_int64(s, 7);
    out->unpacked_bytes = db_column_int64(s, 8);
    out->manifest = load_json(db_column_text(s, 9), "manifest", err);
    out->splits = load_json(db_column_text(s, 10), "splits", err);
    out->prompt = db_column_text_dup(s, 11);
    out->created_at = db_column_int64(s, 12);
    db_column_copy(s, 13, out->created_by, sizeof out->created_by);
    if (!out->manifest || !out->splits) {
        artifact_version_free(out);
        return -1;
    }
    return 0;
}

/* ---- create ---- */

static int create_rows(db *d, artifact_version *v, const long sv[3], lt_err *err) {
    char aid[LT_UUID_LEN];
    lt_uuid4(aid);
    if (db_run(d, err,
               "INSERT INTO artifacts (id, org_id, kind, name, created_at, updated_at) VALUES (?, ?, ?, ?, "
               "?, ?) "
               "ON CONFLICT (org_id, kind, name) DO NOTHING",
               "ttttii", aid, v->org_id, v->kind, v->name, (int64_t)v->created_at,
               (int64_t)v->created_at) < 0)
        return -1;
    db_stmt *s = db_query(d, err, "SELECT id FROM artifacts WHERE org_id = ? AND kind = ? AND name = ?",
                          "ttt", v->org_id, v->kind, v->name);
    if (!s) return -1;
    int r = db_step(s, err);
    if (r == DB_ROW) db_column_copy(s, 0, aid, sizeof aid);
    db_finalize(s);
    if (r != DB_ROW)
        return r == DB_ERROR ? -1 : lt_err_set(err, 500, "artifact store: artifact row vanished");
    char *manifest = json_dumps(v->manifest, JSON_COMPACT);
    json_t *empty = json_object();
    char *splits = json_dumps(v->splits ? v->splits : empty, JSON_COMPACT);
    json_decref(empty);
    if (!manifest || !splits) abort();
    int64_t rc = db_run(
        d, err,
        "INSERT INTO artifact_versions (id, artifact_id, org_id, kind, name, version, v_major, v_minor, "
        "v_patch, digest, blob_digest, size_bytes, unpacked_bytes, manifest, splits, prompt, "
        "created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        "ttttttiiittiitttit", v->id, aid, v->org_id, v->kind, v->name, v->version, (int64_t)sv[0],
        (int64_t)sv[1], (int64_t)sv[2], v->digest, v->blob_digest, (int64_t)v->size_bytes,
        (int64_t)v->unpacked_bytes, manifest, splits, v->prompt, (int64_t)v->created_at,
        v->created_by[0] ? v->created_by : NULL);
    free(manifest);
    free(splits);
    if (rc < 0) {
        if (err && err->code == 409)
            lt_err_set(err, 409,
                       "%s '%s' version %s already exists; versions are immutable, push a new version",
                       v->kind, v->name, v->version);
        return -1;
    }
    return db_run(d, err, "UPDATE artifacts SET updated_at = ? WHERE id = ?", "it", (int64_t)v->created_at,
                  aid) < 0
               ? -1
               : 0;
}

int artifacts_create(db *d, artifact_version *v, lt_err *err) {
    assert(d && v);
    if (!artifacts_kind_valid(v->kind)) return lt_err_set(err, 400, "unknown artifact kind '%s'", v->kind);
    long sv[3];
    if (manifest_semver_parse(v->version, sv) != 0)
        return lt_err_set(err, 400, "version '%s' is not X.Y.Z", v->version);
    if (!v->manifest) return lt_err_set(err, 400, "artifact version without a manifest");
    lt_uuid4(v->id);
    v->created_at = lt_now_ms();
    int own = !db_in_transaction(d);
    if (own && db_begin_immediate(d, err) != 0) return -1;
    int rc = create_rows(d, v, sv, err);
    if (own) {
        if (rc == 0)
            rc = db_commit(d, err);
        else
            db_rollback(d);
    }
    return rc;
}

/* ---- read ---- */

static void not_found(lt_err *err, const char *kind, const char *name, const char *version) {
    if (version)
        lt_err_set(err, 404, "%s '%s' version %s not found", kind, name, version);
    else
        lt_err_set(err, 404, "%s '%s' not found", kind, name);
}

int artifacts_get(db *d, const char *org_id, const char *kind, const char *name, const char *version,
                  artifact_version *out, lt_err *err) {
    assert(d && out);
    memset(out, 0, sizeof *out);
    db_stmt *s;
    if (version)
        s = db_query(d, err,
                     "SELECT " VERSION_COLS " FROM artifact_versions v WHERE v.org_id = ? AND v.kind = ? AND "
                     "v.name = ? AND v.version = ?",
                     "tttt", org_id, kind, name, version);
    else
        s = db_query(d, err,
                     "SELECT " VERSION_COLS " FROM artifact_versions v WHERE v.org_id = ? AND v.kind = ? AND "
                     "v.name = ? ORDER BY " SEMVER_DESC " LIMIT 1",
                     "ttt", org_id, kind, name);
    if (!s) return -1;
    int r = db_step(s, err), rc = -1;
    if (r == DB_ROW)
        rc = read_version(s, out, err);
    else if (r == DB_DONE)
        not_found(err, kind, name, version);
    db_finalize(s);
    return rc;
}

int artifacts_versions(db *d, const char *org_id, const char *kind, const char *name,
                       artifact_version **items, size_t *n, lt_err *err) {
    assert(items && n);
    *items = NULL;
    *n = 0;
    db_stmt *s =
        db_query(d, err,
                 "SELECT " VERSION_COLS " FROM artifact_versions v WHERE v.org_id = ? AND v.kind = ? AND "
                 "v.name = ? ORDER BY " SEMVER_DESC,
                 "ttt", org_id, kind, name);
    if (!s) return -1;
    size_t cap = 0;
    int r, rc = 0;
    while ((r = db_step(s, err)) == DB_ROW) {
        if (*n == cap) {
            cap = cap ? cap * 2 : 8;
            artifact_version *v = realloc(*items, cap * sizeof *v);
            if (!v) abort();
            *items = v;
        }
        if (read_version(s, &(*items)[*n], err) != 0) {
            rc = -1;
            break;
        }
        (*n)++;
    }
    db_finalize(s);
    if (r == DB_ERROR) rc = -1;
    if (rc == 0 && *n == 0) rc = (not_found(err, kind, name, NULL), -1);
    if (rc != 0) {
        artifact_versions_free(*items, *n);
        *items = NULL;
        *n = 0;
    }
    return rc;
}

int artifacts_list(db *d, const char *org_id, const char *kind, int64_t page, int64_t page_size,
                   artifact_summary **items, size_t *n, int64_t *total, lt_err *err) {
    assert(items && n && total);
    *items = NULL;
    *n = 0;
    *total = 0;
    if (page < 1 || page_size < 1 || page_size > 100)
        return lt_err_set(err, 400, "page must be >= 1 and page_size 1..100");
    db_stmt *s =
        db_query(d, err, "SELECT COUNT(*) FROM artifacts WHERE org_id = ? AND kind = ?", "tt", org_id, kind);
    if (!s) return -1;
    int r = db_step(s, err);
    if (r == DB_ROW) *total = db_column_int64(s, 0);
    db_finalize(s);
    if (r != DB_ROW) return -1;
    s = db_query(
        d, err,
        "SELECT a.id, a.name, a.created_at, a.updated_at, (SELECT COUNT(*) FROM artifact_versions c WHERE "
        "c.artifact_id = a.id) FROM artifacts a WHERE a.org_id = ? AND a.kind = ? ORDER BY a.name "
        "LIMIT ? OFFSET ?",
        "ttii", org_id, kind, page_size, (page - 1) * page_size);
    if (!s) return -1;
    artifact_summary *v = calloc((size_t)page_size, sizeof *v);
    if (!v) abort();
    while ((r = db_step(s, err)) == DB_ROW && *n < (size_t)page_size) {
        artifact_summary *x = &v[(*n)++];
        db_column_copy(s, 0, x->id, sizeof x->id);
        db_column_copy(s, 1, x->name, sizeof x->name);
        x->created_at = db_column_int64(s, 2);
        x->updated_at = db_column_int64(s, 3);
        x->versions = db_column_int64(s, 4);
    }
    db_finalize(s);
    int rc = r == DB_ERROR ? -1 : 0;
    for (size_t i = 0; rc == 0 && i < *n; i++)
        rc = artifacts_get(d, org_id, kind, v[i].name, NULL, &v[i].latest, err);
    if (rc != 0) {
        artifact_summaries_free(v, *n);
        *n = 0;
        return -1;
    }
    *items = v;
    return 0;
}

/* ---- delete ---- */

int artifacts_in_use(db *d, const char *org_id, const char *kind, const char *name, const char *version,
                     lt_err *err) {
    lt_err qerr = {0};
    db_stmt *s =
        db_query(d, &qerr,
                 "SELECT 1 FROM job_refs r JOIN jobs j ON j.id = r.job_id WHERE j.status IN "
                 "('queued','running') AND r.org_id = ? AND r.kind = ? AND r.name = ? AND r.version = ? "
                 "LIMIT 1",
                 "tttt", org_id, kind, name, version);
    if (!s) {
        /* No jobs tables yet means no jobs at all; anything else is a real store error. */
        lt_err verr = {0};
        int jobs_version = db_schema_version(d, "jobs", &verr);
        if (jobs_version == 0) return 0;
        if (err) *err = qerr;
        return -1;
    }
    int r = db_step(s, err);
    db_finalize(s);
    return r == DB_ROW ? 1 : r == DB_DONE ? 0 : -1;
}

static int delete_rows(db *d, const char *org_id, const char *kind, const char *name, const char *version,
                       char *blob_digest, int *blob_unreferenced, lt_err *err) {
    db_stmt *s =
        db_query(d, err,
                 "SELECT v.id, v.artifact_id, v.blob_digest FROM artifact_versions v WHERE v.org_id = ? AND "
                 "v.kind = ? AND v.name = ? AND v.version = ?",
                 "tttt", org_id, kind, name, version);
    if (!s) return -1;
    char vid[LT_UUID_LEN] = "", aid[LT_UUID_LEN] = "", blob[ARTIFACT_DIGEST_LEN] = "";
    int r = db_step(s, err);
    if (r == DB_ROW) {
        db_column_copy(s, 0, vid, sizeof vid);
        db_column_copy(s, 1, aid, sizeof aid);
        db_column_copy(s, 2, blob, sizeof blob);
    }
    db_finalize(s);
    if (r == DB_ERROR) return -1;
    if (r == DB_DONE) return not_found(err, kind, name, version), -1;
    int use = artifacts_in_use(d, org_id, kind, name, version, err);
    if (use < 0) return -1;
    if (use)
        return lt_err_set(err, 409,
                          "%s '%s' version %s is in use by a queued or running job; cancel it or wait", kind,
                          name, version);
    if (db_run(d, err, "DELETE FROM artifact_versions WHERE id = ?", "t", vid) < 0) return -1;
    if (db_run(d, err,
               "DELETE FROM artifacts WHERE id = ? AND NOT EXISTS (SELECT 1 FROM artifact_versions WHERE "
               "artifact_id = ?)",
               "tt", aid, aid) < 0)
        return -1;
    if (db_run(d, err, "UPDATE artifacts SET updated_at = ? WHERE id = ?", "it", lt_now_ms(), aid) < 0)
        return -1;
    s = db_query(d, err, "SELECT COUNT(*) FROM artifact_versions WHERE blob_digest = ?", "t", blob);
    if (!s) return -1;
    r = db_step(s, err);
    int64_t refs = r == DB_ROW ? db_column_int64(s, 0) : -1;
    db_finalize(s);
    if (r != DB_ROW) return -1;
    if (blob_digest) memcpy(blob_digest, blob, sizeof blob);
    if (blob_unreferenced) *blob_unreferenced = refs == 0;
    return 0;
}

int artifacts_delete(db *d, const char *org_id, const char *kind, const char *name, const char *version,
                     char *blob_digest, int *blob_unreferenced, lt_err *err) {
    if (blob_unreferenced) *blob_unreferenced = 0;
    int own = !db_in_transaction(d);
    if (own && db_begin_immediate(d, err) != 0) return -1;
    int rc = delete_rows(d, org_id, kind, name, version, blob_digest, blob_unreferenced, err);
    if (own) {
        if (rc == 0)
            rc = db_commit(d, err);
        else
            db_rollback(d);
    }
    return rc;
}
