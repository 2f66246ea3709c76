/* worker_internal.h: what the worker's files share: the base-model cache (models.c) and the resolution of a
 * job into trainer inputs (resolve.c). Not a public surface: only src/worker/ includes it. */
#ifndef LATHE_WORKER_WORKER_INTERNAL_H
#define LATHE_WORKER_WORKER_INTERNAL_H

#include <jansson.h>

#include "engine/engine.h"
#include "engine/tokenizer.h"
#include "util/rows.h"
#include "worker/worker.h"

/* ---- base models (models.c) ---- */

/* One loaded base model: an engine without adapter and its tokenizer, shared by the jobs that hold it. */
typedef struct wk_model {
    char *dir;          /* <models dir>/<id> (the cache key) */
    char *id;           /* catalog id */
    eng_engine *eng;    /* base engine (trainers eng_share it) */
    eng_tokenizer *tok; /* read-only, usable from several threads */
    int refs;
    struct wk_model *next;
} wk_model;

/* The model of catalog id under models_dir, loaded on first use. *shared is 1 when it was already loaded.
 * Errors name the model dir and what to check (404 not a model, 500 unreadable weights). */
int wk_model_acquire(const char *models_dir, const char *id, wk_model **out, int *shared, lt_err *err);
/* Drops one hold; the last one frees the model. NULL is a no-op. */
void wk_model_release(wk_model *m);

/* ---- resolution (resolve.c) ---- */

typedef struct wk_job {
    json_t *job;       /* the job object (owned) */
    const json_t *eff; /* its effective_config */
    char *capability_prompt;
    rows_set train, trajectories, eval;
    int has_train, has_trajectories, has_eval;
    char dataset_name[300];
    json_t *task;       /* the task's manifest, or NULL (owned) */
    wk_model *model;    /* held */
    char *init_adapter; /* unpacked start adapter dir, or NULL */
    json_t *artifacts;  /* the reference part of the final artifacts: capability, dataset, ... (owned) */
} wk_job;

/* Resolves job (borrowed; a reference is kept) for a run in work_dir. 0, or -1 with err: 422 for data the
 * job cannot use (message names split, file, line), 404 for a vanished reference, 500 otherwise. On failure
 * out holds nothing to free; on success release it with wk_job_free. */
int wk_resolve(const worker_opts *o, json_t *job, const char *work_dir, wk_job *out, lt_err *err);
void wk_job_free(wk_job *j);

/* Unpacks a tar blob into dir (created). 0 or -1 with err. */
int wk_unpack_blob(blob_store *bs, const char *digest, const char *dir, lt_err *err);

#endif
