/* artifacts.h: the artifact registry in the store: datasets, capabilities and tasks, each a named artifact of
 * an org with immutable semver versions (docs/spec.md §3.1).
 *
 * Tables (migration area "artifacts", src/store/artifacts.c): `artifacts` (one row per org + kind +
 * name) and `artifact_versions` (one row per pushed version: digests, sizes, normalized manifest, split row
 * counts, a capability's resolved prompt). The archive bytes themselves live in the blob store under
 * `blob_digest`; this module never touches blobs.
 *
 * Kinds are the singular words "dataset", "capability", "task" (the same words jobs use in `job_refs.kind`);
 * artifacts_kind_from_plural maps the route words ("datasets", ...) to them.
 *
 * "Latest" means highest semver (1.10.0 > 1.9.0), never string order.
 *
 * Return convention: 0 on success, -1 with err on failure; err->code 404 when the artifact or version does
 * not exist, 409 when a version already exists or is in use by a queued/running job, 400 for a bad argument
 * (unknown kind, version not X.Y.Z), 500/503 for store trouble.
 *
 * Ownership: an artifact_version owns its json_t members and prompt; release them with artifact_version_free
 * (the struct itself is the caller's; free does not free it). Arrays returned in **items are malloc'd: free
 * them with artifact_versions_free / artifact_summaries_free. */
#ifndef LATHE_STORE_ARTIFACTS_H
#define LATHE_STORE_ARTIFACTS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "store/db.h"
#include "util/err.h"
#include "util/util.h"

#define ARTIFACT_KIND_MAX 16    /* "capability" + NUL fits */
#define ARTIFACT_NAME_MAX 132   /* names are at most 128 bytes */
#define ARTIFACT_VERSION_MAX 40 /* "X.Y.Z", each part < 2^31 */
#define ARTIFACT_DIGEST_LEN 72  /* "sha256:" + 64 hex + NUL (= BLOB_DIGEST_LEN) */

typedef struct artifact_version {
    char id[LT_UUID_LEN];
    char org_id[LT_UUID_LEN];
    char kind[ARTIFACT_KIND_MAX]; /* "dataset" | "capability" | "task" */
    char name[ARTIFACT_NAME_MAX];
    char version[ARTIFACT_VERSION_MAX];
    char digest[ARTIFACT_DIGEST_LEN];      /* "sha256:<hex>" of the archive bytes as uploaded */
    char blob_digest[ARTIFACT_DIGEST_LEN]; /* the blob holding those bytes (content-addressed: = digest) */
    int64_t size_bytes;                    /* archive size */
    int64_t unpacked_bytes;                /* sum of the unpacked file sizes */
    json_t *manifest;                      /* the normalized manifest (util/manifest.h) */
    json_t *splits;                        /* datasets: {split: row_count}; other kinds: {} */
    char *prompt;                 /* capabilities: the resolved prompt ("" without agents); else NULL */
    int64_t created_at;           /* ms since the epoch */
    char created_by[LT_UUID_LEN]; /* user id of the pusher ("" when unknown) */
} artifact_version;

/* One row of a listing: an artifact with its latest version. */
typedef struct artifact_summary {
    char id[LT_UUID_LEN];
    char name[ARTIFACT_NAME_MAX];
    int64_t versions;   /* how many versions exist */
    int64_t created_at; /* first push */
    int64_t updated_at; /* last push or delete */
    artifact_version latest;
} artifact_summary;

/* The migration scripts of area "artifacts" (see db.h). */
extern const db_migration db_migrations_artifacts[];

/* "datasets" -> "dataset", "capabilities" -> "capability", "tasks" -> "task"; NULL for anything else. */
const char *artifacts_kind_from_plural(const char *plural);
/* 1 when kind is "dataset", "capability" or "task". */
int artifacts_kind_valid(const char *kind);

/* Records a new version. Reads org_id, kind, name, version, digest, blob_digest, size_bytes, unpacked_bytes,
 * manifest, splits (NULL = {}), prompt (may be NULL) and created_by from v; writes v->id and v->created_at.
 * Creates the artifact row on its first version. 409 ("dataset 'x' version 1.0.0 already exists") when the
 * version exists. Runs in the caller's transaction when one is open (so the caller can store the blob under
 * the same write lock), else in its own. */
int artifacts_create(db *d, artifact_version *v, lt_err *err);

/* One version; version NULL = the latest. 404 when the artifact or that version does not exist. On success
 * out is filled (release with artifact_version_free); on failure out holds nothing to free. */
int artifacts_get(db *d, const char *org_id, const char *kind, const char *name, const char *version,
                  artifact_version *out, lt_err *err);

/* Every version of one artifact, newest (highest semver) first. 404 when the artifact does not exist. */
int artifacts_versions(db *d, const char *org_id, const char *kind, const char *name,
                       artifact_version **items, size_t *n, lt_err *err);

/* A page of the org's artifacts of one kind, ordered by name, each with its latest version. page >= 1,
 * page_size 1..100; *total is the number of artifacts of that kind in the org. */
int artifacts_list(db *d, const char *org_id, const char *kind, int64_t page, int64_t page_size,
                   artifact_summary **items, size_t *n, int64_t *total, lt_err *err);

/* 1 when a queued or running job references the version (jobs' `job_refs` joined with `jobs`), 0 when none,
 * -1 with err. Before the jobs area is migrated there are no jobs: 0. */
int artifacts_in_use(db *d, const char *org_id, const char *kind, const char *name, const char *version,
                     lt_err *err);

/* Deletes one version: 404 when absent, 409 when in use (artifacts_in_use). The artifact row goes with its
 * last version. blob_digest (may be NULL, ARTIFACT_DIGEST_LEN bytes) receives the deleted version's blob, and
 * *blob_unreferenced (may be NULL) is 1 when no other version in any org still uses that blob, so the caller
 * may delete it (do that inside the same transaction to stay clear of a concurrent push of the same bytes).
 * Runs in the caller's transaction when one is open, else in its own. */
int artifacts_delete(db *d, const char *org_id, const char *kind, const char *name, const char *version,
                     char *blob_digest, int *blob_unreferenced, lt_err *err);

void artifact_version_free(artifact_version *v);
void artifact_versions_free(artifact_version *items, size_t n);
void artifact_summaries_free(artifact_summary *items, size_t n);

#endif
