/* worker.h: the training worker: claims queued jobs from the store, runs them with the trainers, reports.
 *
 * A worker loop (worker_loop) runs on one thread: it re-queues jobs whose lease expired, claims the oldest
 * queued job with a lease, and runs it; when the queue is empty it polls again after poll_ms. `lathe serve
 * --workers N` runs N loops on server threads; `lathe worker` runs them standalone against the same store and
 * blob dir. Several loops, in one process or many, share the queue safely (jobs_claim is race-free).
 *
 * Running a job (worker.c):
 *   1. resolve (resolve.c): capability prompt, dataset rows, task, base model (models.c: one engine per model
 *      dir and process, shared by every job on that model), an adapter to start from, a checkpoint to resume
 *      from (a job that already has numbered checkpoints in this attempt was interrupted: its metrics are
 *      trimmed to that checkpoint's step and the trainer continues from it);
 *   2. training_start, then tr_sft_run / tr_rl_run with hooks: events -> jobs_progress (log lines ->
 *      jobs_log_add), checkpoints -> a tar in the blob store + jobs_checkpoint_add + checkpoint_saved, stop
 * -> a cancel was requested, the lease was lost, or the worker is stopping;
 *   3. the end: training_end with the final metrics and artifacts (docs/spec.md §4.6), or cancelled
 * (checkpoints kept), or training_error with an actionable message, or, when the worker is stopping, back to
 * the queue (jobs_release) to resume elsewhere from the checkpoint the trainer wrote on stop. A heartbeat
 * thread renews the lease every lease/3 s while the job runs. Nothing a job does can take the process down:
 * every failure ends as a failed job.
 *
 * Files: the attempt's scratch dir <data dir>/work/<job id>/attempt-<n> (checkpoint dirs, an unpacked resume
 * checkpoint or start adapter) is removed when the run ends; dirs of jobs that no longer run are swept.
 *
 * Ownership: worker_opts and everything it points to are the caller's and must outlive the loop. */
#ifndef LATHE_WORKER_WORKER_H
#define LATHE_WORKER_WORKER_H

#include <stdint.h>

#include "blob/blob.h"
#include "store/db.h"
#include "util/err.h"

typedef struct worker_opts {
    db *db;                 /* the store (shared; each thread gets its own connection) */
    blob_store *blobs;      /* <data dir>/blobs: artifact archives and checkpoints */
    const char *data_dir;   /* work dirs go to <data dir>/work */
    const char *models_dir; /* base models: <models dir>/<catalog id> */
    int lease_s;            /* job lease; <= 0 = 60 */
    int threads;            /* engine threads per job (eng_set_threads); <= 0 = the engine's default */
    int poll_ms;            /* idle poll interval; <= 0 = 500 */
    int once;               /* 1: run at most one job, return when the queue is empty */
    /* Shutdown: stopping(ud) non-zero means return soon; sleep(ud, ms) sleeps up to ms and returns 1 when
     * stopping. */
    int (*stopping)(void *ud);
    int (*sleep)(void *ud, int ms);
    void *ud;
} worker_opts;

/* Runs the loop until o->stopping (or, with once, after one job / an empty queue). index tells loops of one
 * process apart in the worker id ("<host>-<pid>-w<index>"). Returns the number of jobs run. */
int worker_loop(const worker_opts *o, int index);

/* Removes <data dir>/work/<id> for every job that is not running any more (or no longer exists). */
void worker_sweep_work_dirs(const worker_opts *o);

/* Base models loaded in this process right now, and how often a job got one that was already loaded
 * (shared) or had to load it. For /metrics and tests. */
typedef struct worker_model_stats {
    int64_t loaded; /* distinct base models in memory */
    int64_t users;  /* jobs holding one */
    int64_t loads;  /* loads since start */
    int64_t shares; /* acquisitions that found the model already loaded */
} worker_model_stats;
void worker_model_stats_get(worker_model_stats *out);

/* Engine threads per job when none were given: with one loop the engine's default (0: every core); with n
 * loops in one process, the cores divided among them (at least 1), so concurrent jobs do not oversubscribe.
 */
int worker_default_threads(int loops);

#endif
