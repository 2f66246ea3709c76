/* jobs.h: training jobs in the store: the job rows, their references, logs, checkpoints, and the queue.
 *
 * Tables (migration area "jobs", src/store/jobs.c): `jobs` (one row per job; config, effective_config,
 * metrics, artifacts and progress as JSON text), `job_refs(job_id, org_id, kind, name, version)` (the
 * artifact versions a job uses: the artifact registry refuses to delete one while a queued or running job
 * references it), `job_tags`, `job_logs` (per-job increasing seq, attempt, level) and `job_checkpoints`.
 *
 * Lifecycle (docs/spec.md §4.2): queued -> running -> completed | failed | cancelled; queued -> cancelled;
 * any terminal state -> queued by retry. The queue is the set of queued jobs, oldest first. A worker claims
 * one with a lease (worker id + expiry), renews the lease by heartbeat, and reports through jobs_progress. A
 * lease that expires puts the job back in the queue with the same `attempt` (the next worker resumes it), or
 * finishes it as cancelled when a cancel was requested meanwhile. Every state change happens in one write
 * transaction, so two claimers racing for one job cannot both win.
 *
 * Jobs are returned as JSON objects in the shape of docs/spec.md §4.2 (the API's job object), timestamps
 * formatted as RFC 3339 with milliseconds.
 *
 * Return convention: 0 (or a count) on success, -1 with err on failure; err->code 404 when the job does not
 * exist (in that workspace), 409 for a state conflict (cancel of a terminal job, retry of an active one,
 * delete of an active one, progress for an ended job, a lost lease), 429 when the workspace's active-job
 * quota is full, 500/503 for store trouble. Functions that change several rows run in the caller's
 * transaction when one is open on this thread (db_in_transaction), else in their own.
 *
 * Ownership: json_t ** outputs are new references the caller releases with json_decref. Inputs are
 * borrowed. */
#ifndef LATHE_STORE_JOBS_H
#define LATHE_STORE_JOBS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "store/db.h"
#include "util/err.h"
#include "util/util.h"

/* The migration scripts of area "jobs" (see db.h). */
extern const db_migration db_migrations_jobs[];

/* ---- statuses and levels ---- */

#define JOBS_NSTATUS 5
extern const char *const jobs_statuses[JOBS_NSTATUS]; /* queued, running, completed, failed, cancelled */
int jobs_status_valid(const char *s);
int jobs_status_terminal(const char *s); /* completed, failed, cancelled */

enum { JOBS_LOG_DEBUG = 0, JOBS_LOG_INFO = 1, JOBS_LOG_WARNING = 2, JOBS_LOG_ERROR = 3 };
/* "debug" | "info" | "warning" | "error" -> the enum; -1 for anything else. */
int jobs_level_parse(const char *s);
const char *jobs_level_name(int level);

/* ---- create, read, list ---- */

typedef struct jobs_new {
    const char *org_id, *workspace_id;
    const char *created_by;        /* user id (may be NULL) */
    const json_t *created_by_user; /* {id, email, username, full_name} snapshot, or NULL */
    const json_t *fields;          /* the body-derived fields (jobs_schema.h js_result.job) */
    const json_t *refs;            /* [{kind, name, version}] (js_result.refs), or NULL */
    int64_t max_active;            /* quota of queued+running jobs in the workspace; 0 = none */
} jobs_new;

/* Inserts a queued job (attempt 1) with its refs, tags and a first log line. 429 when the workspace already
 * holds max_active active jobs. *job receives the job object (may be NULL: not wanted). */
int jobs_create(db *d, const jobs_new *n, json_t **job, lt_err *err);

/* The job object. workspace_id NULL = any workspace (workers); else a job of another workspace is 404. */
int jobs_get(db *d, const char *workspace_id, const char *id, json_t **job, lt_err *err);

/* The job's status, org, workspace and attempt (cheap; any of the outputs may be NULL). */
int jobs_peek(db *d, const char *id, char status[16], char org_id[LT_UUID_LEN],
              char workspace_id[LT_UUID_LEN], int64_t *attempt, lt_err *err);

typedef struct jobs_filter {
    const char *status, *backend, *trainer_type, *project_ref, *tag; /* NULL = any */
    int64_t page;                                                    /* >= 1 */
    int64_t page_size;                                               /* 1..100 */
} jobs_filter;

/* A page of the workspace's jobs, newest first: *items is a JSON array, *total counts every match. */
int jobs_list(db *d, const char *workspace_id, const jobs_filter *f, json_t **items, int64_t *total,
              lt_err *err);

/* Queued + running jobs in the workspace, or -1 with err. */
int64_t jobs_active_count(db *d, const char *workspace_id, lt_err *err);
/* Jobs per status (indexed like jobs_statuses), over the whole store. */
int jobs_count_by_status(db *d, int64_t counts[JOBS_NSTATUS], lt_err *err);

/* Change counter of a job: *updated_at (ms) and *last_log_seq move whenever the job or its logs change. SSE
 * streams poll it. */
int jobs_watermark(db *d, const char *id, int64_t *updated_at, int64_t *last_log_seq, lt_err *err);

/* ---- state machine (E4, E5, E13) ---- */

/* E4: queued -> cancelled at once (completed_at set); running -> cancel_requested_at set (the worker stops
 * and calls jobs_mark_cancelled); running with a request already pending: unchanged. Terminal: 409. */
int jobs_cancel(db *d, const char *workspace_id, const char *id, json_t **job, lt_err *err);

/* E5: terminal -> queued, attempt + 1; error, started_at, completed_at, cancel_requested_at, metrics,
 * artifacts, progress and checkpoints cleared; logs kept. Active: 409. *freed (may be NULL) receives an array
 * of blob digests no other checkpoint references any more (delete them in the same transaction). */
int jobs_retry(db *d, const char *workspace_id, const char *id, json_t **job, json_t **freed, lt_err *err);

/* E13: deletes a terminal job with its refs, tags, logs and checkpoints; active: 409. *freed as for retry. */
int jobs_delete(db *d, const char *workspace_id, const char *id, json_t **freed, lt_err *err);

/* ---- queue (workers) ---- */

/* Re-queues the jobs whose lease expired before now_ms (attempt kept; a log line says so), or cancels them
 * when a cancel was requested. Returns how many, or -1 with err. */
int64_t jobs_requeue_expired(db *d, int64_t now_ms, lt_err *err);

/* Claims the oldest queued job for worker_id with a lease of lease_ms (expired leases are re-queued first):
 * queued -> running, started_at set (kept on a resumed job), worker_id and lease expiry set. Returns 1 with
 * id_out filled, 0 when the queue is empty, -1 with err. Race-free: one job goes to one claimer. */
int jobs_claim(db *d, const char *worker_id, int64_t lease_ms, char id_out[LT_UUID_LEN], lt_err *err);

/* Renews worker_id's lease on the running job. *cancel_requested (may be NULL) tells whether a cancel is
 * pending. 409 when the job is no longer running under this worker (lease lost, job cancelled/finished). */
int jobs_heartbeat(db *d, const char *id, const char *worker_id, int64_t lease_ms, int *cancel_requested,
                   lt_err *err);

/* 1 when a cancel was requested for the job, 0 when not, -1 with err (404 when it does not exist). A read,
 * cheap enough for a worker to ask once per optimizer step. */
int jobs_cancel_requested(db *d, const char *id, lt_err *err);

/* The worker acknowledges a cancel request: running -> cancelled (completed_at set, lease dropped). */
int jobs_mark_cancelled(db *d, const char *id, const char *worker_id, lt_err *err);

/* The worker gives a running job back to the queue (it is shutting down; the job resumes from its last
 * checkpoint on the next claim): running -> queued, lease dropped, `attempt` kept, reason (may be NULL)
 * logged. With a cancel pending the job becomes cancelled instead. 409 when worker_id does not hold the job.
 */
int jobs_release(db *d, const char *id, const char *worker_id, const char *reason, lt_err *err);

/* Resume support: drops from the job's metric arrays every entry of a step after `step` (the "steps" axis for
 * the arrays not named "eval/...", the "eval/steps" axis for the "eval/..." arrays) and sets progress.step to
 * step, so that the steps a resumed run repeats are not counted twice. Scalars are left as they are. */
int jobs_trim_metrics(db *d, const char *id, int64_t step, lt_err *err);

/* ---- progress and logs ---- */

/* Applies one progress event {event_type, message, level, metrics, data, artifacts, error} (the E10 body,
 * already validated; unknown members are ignored) with the merge rule of docs/spec.md §4.1: one-element
 * arrays are appended, scalars replace, terminal events (training_end, training_error) merge their metrics
 * key by key, artifacts merge key by key; training_start moves a queued job to running, training_end
 * completes it, training_error fails it with `error`. Every event also becomes a log entry. 409 when the job
 * has ended. *job (may be NULL) receives the updated job. */
int jobs_progress(db *d, const char *id, const json_t *event, json_t **job, lt_err *err);

/* Appends one log entry (attempt = the job's current attempt). data may be NULL ({}). Returns the entry's
 * seq (>= 1) or -1 with err. */
int64_t jobs_log_add(db *d, const char *id, int level, const char *message, const json_t *data, lt_err *err);

/* Log entries with seq > after and level >= min_level, oldest first, at most limit (1..1000): *items is a
 * JSON array of {seq, attempt, timestamp, level, message, data}; *next is the seq to pass as `after` for the
 * next page, or 0 when there is nothing more. */
int jobs_logs(db *d, const char *id, int64_t after, int64_t limit, int min_level, json_t **items,
              int64_t *next, lt_err *err);

/* ---- checkpoints ---- */

/* Records (or replaces, by name) a checkpoint of the job. digest: "sha256:<hex>" of the download (a tar);
 * blob_digest: the blob holding it. */
int jobs_checkpoint_add(db *d, const char *id, const char *name, int64_t step, int64_t size_bytes,
                        const char *digest, const char *blob_digest, lt_err *err);
/* The job's checkpoints, by step then name: [{name, step, created_at, size_bytes, digest}]. */
int jobs_checkpoints(db *d, const char *id, json_t **items, lt_err *err);
/* One checkpoint's blob digest (BLOB_DIGEST_LEN = 72 bytes) and size; 404 when absent. */
int jobs_checkpoint_blob(db *d, const char *id, const char *name, char blob_digest[72], int64_t *size_bytes,
                         lt_err *err);

#endif
