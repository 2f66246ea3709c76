/* worker.c: the worker loop and the run of one job (see worker.h for the whole story).
 *
 * One job, one run (wk_run): the claiming thread resolves the job, sends training_start and calls the trainer
 * with three hooks; a heartbeat thread renews the lease every lease/3 s and notices a cancel or a lost lease
 * meanwhile. The trainer polls the stop hook at least once per optimizer step; the hook reads the job's
 * cancel flag from the store each time (one indexed read), so a cancel stops the run within one step. When
 * the trainer returns, the run ends the job exactly once: training_end, cancelled, training_error, or (the
 * worker is stopping) back to the queue. A lost lease means another worker owns the job now: the run then
 * writes nothing more.
 *
 * Resume: checkpoints are dropped by retry, so a claimed job that has numbered checkpoints was interrupted in
 * this attempt (a crash, a kill, a stopped worker). The run unpacks the latest numbered one, trims the job's
 * metric arrays to its step, and hands it to the trainer as resume_dir; the trainer continues after that step
 * with the same data order and RNG.
 *
 * Errors that end a job: 422 (data the job cannot use) are reported verbatim; disk-full errors say what to
 * free; model-load errors name the weights (models.c); anything else keeps the trainer's message. */
#include <dirent.h>
#include <omp.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "store/jobs.h"
#include "store/identity.h"
#include "train/trainer.h"
#include "util/archive.h"
#include "util/log.h"
#include "util/util.h"
#include "worker/worker_internal.h"

#define DEFAULT_LEASE_S 60
#define DEFAULT_POLL_MS 500
#define REPORT_TRIES 5

typedef struct wk_run {
    const worker_opts *o;
    const char *worker_id;
    char id[LT_UUID_LEN];
    int64_t attempt;
    int64_t lease_ms;
    char *work_dir; /* <data dir>/work/<id>/attempt-<n> */
    json_t *ckpts;  /* checkpoint names, in the order they were made */
    char latest[256];
    json_t *base_artifacts; /* capability, datasets, task... (wk_job.artifacts) */
    atomic_int cancel, lost, shutdown;
    /* heartbeat thread */
    pthread_t hb;
    int hb_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
} wk_run;

static const char *jstr(const json_t *o, const char *k) {
    return json_string_value(json_object_get(o, k));
}

static int stopping(const worker_opts *o) {
    return o->stopping && o->stopping(o->ud);
}

/* ---------------------------------------------------------------------------------------------------------
 * heartbeat */

static void *heartbeat_main(void *arg) {
    wk_run *r = arg;
    char ctx[64];
    snprintf(ctx, sizeof ctx, "%.20s-hb", r->worker_id);
    lt_log_set_context(ctx);
    int64_t every = r->lease_ms / 3 > 0 ? r->lease_ms / 3 : 1;
    pthread_mutex_lock(&r->mu);
    while (!r->done) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += every / 1000;
        ts.tv_nsec += (long)(every % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&r->cv, &r->mu, &ts);
        if (r->done) break;
        pthread_mutex_unlock(&r->mu);
        lt_err err = {0};
        int cancel = 0;
        if (jobs_heartbeat(r->o->db, r->id, r->worker_id, r->lease_ms, &cancel, &err) != 0) {
            if (err.code == 409 || err.code == 404) {
                if (!atomic_exchange(&r->lost, 1))
                    lt_log(LOG_WARN, "job %s: %s; stopping it here", r->id, err.msg);
            } else {
                lt_log(LOG_WARN, "job %s: heartbeat failed (retrying): %s", r->id, err.msg);
            }
        } else if (cancel) {
            atomic_store(&r->cancel, 1);
        }
        pthread_mutex_lock(&r->mu);
    }
    pthread_mutex_unlock(&r->mu);
    lt_log_set_context(NULL);
    return NULL;
}

static void heartbeat_start(wk_run *r) {
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->hb_started = pthread_create(&r->hb, NULL, heartbeat_main, r) == 0;
    if (!r->hb_started)
        lt_log(LOG_WARN, "job %s: cannot start the heartbeat thread; the lease is renewed at each step only",
               r->id);
}

static void heartbeat_stop(wk_run *r) {
    if (r->hb_started) {
        pthread_mutex_lock(&r->mu);
        r->done = 1;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        pthread_join(r->hb, NULL);
    }
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
}

/* ---------------------------------------------------------------------------------------------------------
 * reporting */

/* jobs_progress with a few retries when the store is busy. 409 (the job ended or moved on) is returned. */
static int report(wk_run *r, const json_t *ev, lt_err *err) {
    for (int i = 0;; i++) {
        if (jobs_progress(r->o->db, r->id, ev, NULL, err) == 0) return 0;
        if (err->code == 409 || err->code == 404 || i + 1 >= REPORT_TRIES) return -1;
        usleep(200000u << i);
    }
}

static void log_line(wk_run *r, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void log_line(wk_run *r, int level, const char *fmt, ...) {
    char msg[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    lt_err err;
    if (jobs_log_add(r->o->db, r->id, level, msg, NULL, &err) < 0)
        lt_log(LOG_WARN, "job %s: cannot add a log line (%s): %s", r->id, err.msg, msg);
    lt_log(level >= JOBS_LOG_WARNING ? LOG_WARN : LOG_INFO, "job %s: %s", r->id, msg);
}

static int contains_ci(const char *s, const char *needle) {
    return s && strcasestr(s, needle) != NULL;
}

/* The job's error text for a failed run. */
static void actionable(const wk_run *r, const lt_err *e, char *out, size_t n) {
    const char *m = e->msg[0] ? e->msg : "unknown error";
    if (contains_ci(m, "No space left") || contains_ci(m, "File too large") ||
        contains_ci(m, "quota exceeded"))
        snprintf(
            out, n,
            "no space left on device writing checkpoint under %.300s: free disk space there (or raise the "
            "file size limit) and retry the job (%.600s)",
            r->o->data_dir, m);
    else if (e->code == 422 || contains_ci(m, "base model"))
        snprintf(out, n, "%s", m);
    else
        snprintf(out, n, "training failed: %s", m);
}

static void fail_job(wk_run *r, const lt_err *e) {
    char msg[1100];
    actionable(r, e, msg, sizeof msg);
    json_t *ev = json_pack("{s:s,s:s,s:s,s:s}", "event_type", "training_error", "level", "error", "message",
                           msg, "error", msg);
    lt_err err = {0};
    if (!ev || report(r, ev, &err) != 0)
        lt_log(LOG_WARN, "job %s: could not record the failure (%s): %s", r->id, err.msg, msg);
    else
        lt_log(LOG_INFO, "job %s failed: %s", r->id, msg);
    json_decref(ev);
}

/* The artifacts of docs/spec.md §4.6 as they stand: references, checkpoints, latest, adapter (when "final"
 * exists).
 */
static json_t *artifacts_now(wk_run *r, int with_adapter) {
    json_t *a = r->base_artifacts ? json_deep_copy(r->base_artifacts) : json_object();
    if (!a) abort();
    json_object_set_new(a, "checkpoints", json_deep_copy(r->ckpts));
    json_object_set_new(a, "latest_checkpoint", r->latest[0] ? json_string(r->latest) : json_null());
    if (!with_adapter) return a;
    int has_final = 0;
    size_t i;
    json_t *c;
    json_array_foreach(r->ckpts, i, c) has_final |= strcmp(json_string_value(c), "final") == 0;
    if (!has_final) {
        json_object_set_new(a, "adapter", json_null());
        return a;
    }
    store_org org;
    store_workspace ws;
    lt_err err;
    char url[512];
    if (store_org_get(r->o->db, jstr(r->base_artifacts, "_org_id"), &org, &err) != 0 ||
        store_workspace_get(r->o->db, jstr(r->base_artifacts, "_ws_id"), &ws, &err) != 0)
        snprintf(url, sizeof url, "training/jobs/%s/checkpoints/final/download", r->id);
    else
        snprintf(url, sizeof url, "/api/v1/org/%s/ws/%s/training/jobs/%s/checkpoints/final/download", org.key,
                 ws.key, r->id);
    json_object_set_new(a, "adapter",
                        json_pack("{s:s,s:s,s:s}", "format", "peft", "checkpoint", "final", "download", url));
    return a;
}

static json_t *public_artifacts(wk_run *r, int with_adapter) {
    json_t *a = artifacts_now(r, with_adapter);
    json_object_del(a, "_org_id");
    json_object_del(a, "_ws_id");
    return a;
}

/* ---------------------------------------------------------------------------------------------------------
 * trainer hooks */

static int hook_event(void *ud, const json_t *ev, lt_err *err) {
    wk_run *r = ud;
    if (atomic_load(&r->lost))
        return lt_err_set(err, 409, "worker %s lost the lease of job %s", r->worker_id, r->id);
    const char *type = jstr(ev, "event_type");
    if (!type) {
        int level = jobs_level_parse(jstr(ev, "level"));
        const json_t *data = json_object_get(ev, "data");
        const char *msg = jstr(ev, "message");
        if (jobs_log_add(r->o->db, r->id, level < 0 ? JOBS_LOG_INFO : level, msg ? msg : "",
                         json_is_object(data) ? data : NULL, err) < 0)
            return -1;
        return 0;
    }
    if (report(r, ev, err) != 0) {
        if (err->code == 409) atomic_store(&r->lost, 1);
        return -1;
    }
    return 0;
}

static int hook_checkpoint(void *ud, const char *name, long step, const char *dir, lt_err *err) {
    wk_run *r = ud;
    unsigned char *buf = NULL;
    size_t len = 0;
    char digest[BLOB_DIGEST_LEN];
    if (archive_pack_dir(dir, 0, &buf, &len, err) != 0) {
        lt_err_prefix(err, "cannot pack checkpoint %s: ", name);
        return -1;
    }
    int rc = blob_put(r->o->blobs, buf, len, digest, err);
    free(buf);
    if (rc != 0) {
        lt_err_prefix(err, "cannot store checkpoint %s: ", name);
        return -1;
    }
    if (jobs_checkpoint_add(r->o->db, r->id, name, step, (int64_t)len, digest, digest, err) != 0) return -1;
    size_t i;
    json_t *c;
    int seen = 0;
    json_array_foreach(r->ckpts, i, c) seen |= strcmp(json_string_value(c), name) == 0;
    if (!seen) json_array_append_new(r->ckpts, json_string(name));
    snprintf(r->latest, sizeof r->latest, "%s", name);
    char msg[320];
    snprintf(msg, sizeof msg, "checkpoint %s saved (step %ld)", name, step);
    json_t *ev = json_pack("{s:s,s:s,s:{s:s,s:I,s:I},s:o}", "event_type", "checkpoint_saved", "message", msg,
                           "data", "name", name, "step", (json_int_t)step, "size_bytes", (json_int_t)len,
                           "artifacts", public_artifacts(r, 0));
    rc = hook_event(r, ev, err);
    json_decref(ev);
    return rc;
}

static int hook_stop(void *ud) {
    wk_run *r = ud;
    if (stopping(r->o)) {
        atomic_store(&r->shutdown, 1);
        return 1;
    }
    if (atomic_load(&r->cancel) || atomic_load(&r->lost)) return 1;
    lt_err err;
    if (jobs_cancel_requested(r->o->db, r->id, &err) == 1) {
        atomic_store(&r->cancel, 1);
        return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------
 * one job */

static char *job_dir(const worker_opts *o, const char *id) {
    char *work = lt_path_join(o->data_dir, "work");
    char *d = lt_path_join(work, id);
    free(work);
    return d;
}

/* The latest numbered checkpoint of the job (an interrupted run of this attempt), 0 when none. */
static int find_resume(wk_run *r, char name[256], int64_t *step, char blob[BLOB_DIGEST_LEN], lt_err *err) {
    json_t *items = NULL;
    if (jobs_checkpoints(r->o->db, r->id, &items, err) != 0) return -1;
    int found = 0;
    size_t i;
    json_t *c;
    json_array_foreach(items, i, c) {
        const char *n = jstr(c, "name");
        json_array_append_new(r->ckpts, json_string(n));
        snprintf(r->latest, sizeof r->latest, "%s", n);
        if (strncmp(n, "checkpoint-", 11) != 0) continue;
        int64_t s = json_integer_value(json_object_get(c, "step"));
        if (!found || s >= *step) {
            found = 1;
            *step = s;
            snprintf(name, 256, "%s", n);
        }
    }
    json_decref(items);
    if (found && jobs_checkpoint_blob(r->o->db, r->id, name, blob, NULL, err) != 0) return -1;
    return found;
}

/* The checkpoint an interrupted run of this attempt resumes from (find_resume). */
typedef struct resume_pt {
    int found;
    char name[256], blob[BLOB_DIGEST_LEN];
    int64_t step;
    char *dir; /* <work_dir>/resume once unpacked (owned) */
} resume_pt;

/* This attempt's work dir, fresh: <data dir>/work/<id>/attempt-<n>. */
static int open_work_dir(wk_run *r, const json_t *job, lt_err *err) {
    r->attempt = json_integer_value(json_object_get(job, "attempt"));
    char *jd = job_dir(r->o, r->id), sub[64];
    snprintf(sub, sizeof sub, "attempt-%lld", (long long)r->attempt);
    r->work_dir = lt_path_join(jd, sub);
    free(jd);
    lt_rm_rf(r->work_dir); /* leftovers of an interrupted run of this attempt */
    return lt_mkdir_p(r->work_dir, 0755, err);
}

/* The resume checkpoint unpacked into <work_dir>/resume and the job's metrics trimmed to its step. */
static int unpack_resume(wk_run *r, resume_pt *rs, lt_err *err) {
    rs->dir = lt_path_join(r->work_dir, "resume");
    if (wk_unpack_blob(r->o->blobs, rs->blob, rs->dir, err) != 0) {
        lt_err_prefix(err, "cannot unpack checkpoint %s to resume from: ", rs->name);
        return -1;
    }
    if (jobs_trim_metrics(r->o->db, r->id, rs->step, err) != 0) return -1;
    log_line(r, JOBS_LOG_INFO, "resumed from checkpoint %s (step %lld)", rs->name, (long long)rs->step);
    return 0;
}

static int is_rl_job(const json_t *job) {
    return jstr(job, "trainer_type") && strcmp(jstr(job, "trainer_type"), "rl") == 0;
}

static int report_start(wk_run *r, const json_t *job, const resume_pt *rs, lt_err *err) {
    const json_t *eff = json_object_get(job, "effective_config");
    json_t *data = json_object();
    const json_t *steps = json_object_get(eff, "steps");
    if (json_is_integer(steps) && (is_rl_job(job) || !json_is_integer(json_object_get(eff, "epochs"))))
        json_object_set(data, "total_steps", (json_t *)steps);
    if (rs->found) json_object_set_new(data, "resumed_from", json_string(rs->name));
    char msg[400];
    snprintf(msg, sizeof msg, "training %s on %s", rs->found ? "resumed" : "started", jstr(job, "model"));
    json_t *ev = json_pack("{s:s,s:s,s:o,s:o}", "event_type", "training_start", "message", msg, "data", data,
                           "artifacts", public_artifacts(r, 0));
    int rc = report(r, ev, err);
    json_decref(ev);
    return rc;
}

/* Everything before the trainer: the job, the work dir, the resume point, the resolved inputs (*resolved set
 * once wj holds them), training_start. */
static int start_run(wk_run *r, json_t **job, wk_job *wj, int *resolved, resume_pt *rs, lt_err *err) {
    if (jobs_get(r->o->db, NULL, r->id, job, err) != 0) return -1;
    if (open_work_dir(r, *job, err) != 0) return -1;
    int found = find_resume(r, rs->name, &rs->step, rs->blob, err);
    if (found < 0) return -1;
    rs->found = found;
    if (wk_resolve(r->o, *job, r->work_dir, wj, err) != 0) return -1;
    *resolved = 1;
    r->base_artifacts = json_deep_copy(wj->artifacts);
    json_object_set_new(r->base_artifacts, "_org_id", json_string(jstr(*job, "organization_id")));
    json_object_set_new(r->base_artifacts, "_ws_id", json_string(jstr(*job, "workspace_id")));
    if (rs->found && unpack_resume(r, rs, err) != 0) return -1;
    return report_start(r, *job, rs, err);
}

/* The trainer on the resolved inputs; returns its TR_* outcome. */
static int train(wk_run *r, json_t *job, wk_job *wj, const char *resume_dir, json_t **final_metrics,
                 lt_err *err) {
    const worker_opts *o = r->o;
    const json_t *eff = json_object_get(job, "effective_config");
    if (o->threads > 0) eng_set_threads(o->threads);
    const json_t *seed = json_object_get(eff, "seed");
    tr_inputs in = {
        .job = job,
        .eff = eff,
        .base = wj->model->eng,
        .tok = wj->model->tok,
        .model_id = wj->model->id,
        .model_dir = wj->model->dir,
        .init_adapter = wj->init_adapter,
        .capability_prompt = wj->capability_prompt ? wj->capability_prompt : "",
        .train = wj->has_train ? &wj->train : NULL,
        .trajectories = wj->has_trajectories ? &wj->trajectories : NULL,
        .eval = wj->has_eval ? &wj->eval : NULL,
        .dataset_name = wj->dataset_name,
        .task = wj->task,
        .work_dir = r->work_dir,
        .resume_dir = resume_dir,
        .threads = o->threads,
        .seed = json_is_integer(seed) ? (uint64_t)json_integer_value(seed) : 0,
    };
    tr_hooks h = {r, hook_event, hook_checkpoint, hook_stop};
    lt_err_clear(err);
    return (is_rl_job(job) ? tr_rl_run : tr_sft_run)(&in, &h, final_metrics, err);
}

/* Clean up before the job's end is written: whoever sees the end sees no work dir and no model hold. */
static void cleanup(wk_run *r, wk_job *wj, int resolved) {
    if (resolved) wk_job_free(wj);
    if (!r->work_dir) return;
    lt_rm_rf(r->work_dir);
    char *jd = job_dir(r->o, r->id);
    rmdir(jd); /* only when empty: another attempt's dir may still be there */
    free(jd);
}

/* A stopped run: cancelled when that was asked, else back to the queue (it resumes from its latest
 * checkpoint). */
static void end_stopped(wk_run *r) {
    const worker_opts *o = r->o;
    lt_err e2 = {0};
    int cancel = atomic_load(&r->cancel) || jobs_cancel_requested(o->db, r->id, &e2) == 1;
    if (cancel) {
        if (jobs_mark_cancelled(o->db, r->id, r->worker_id, &e2) != 0)
            lt_log(LOG_WARN, "job %s: cannot mark it cancelled: %s", r->id, e2.msg);
        return;
    }
    char why[400];
    snprintf(why, sizeof why, "worker %s is stopping; the job resumes from %s%s", r->worker_id,
             r->latest[0] ? "checkpoint " : "the start", r->latest);
    if (jobs_release(o->db, r->id, r->worker_id, why, &e2) != 0)
        lt_log(LOG_WARN, "job %s: cannot put it back in the queue (the lease will): %s", r->id, e2.msg);
}

/* Ends the job exactly once (see the top): rc is start_run's, outcome the trainer's. */
static void end_job(wk_run *r, int rc, int outcome, int resolved, const json_t *final_metrics, lt_err *err) {
    if (atomic_load(&r->lost)) {
        lt_log(LOG_WARN, "job %s: the lease was lost; another worker owns the job now", r->id);
    } else if (rc == 0 && outcome == TR_DONE) {
        json_t *ev =
            json_pack("{s:s,s:s,s:o,s:o}", "event_type", "training_end", "message", "training completed",
                      "metrics", final_metrics ? json_incref((json_t *)final_metrics) : json_object(),
                      "artifacts", public_artifacts(r, 1));
        if (report(r, ev, err) != 0) lt_log(LOG_WARN, "job %s: cannot record the end: %s", r->id, err->msg);
        json_decref(ev);
    } else if ((rc == 0 && outcome == TR_STOPPED) || (rc != 0 && stopping(r->o) && !resolved)) {
        end_stopped(r);
    } else {
        if (err->code == 0) lt_err_set(err, 500, "the trainer failed without a message");
        fail_job(r, err);
    }
}

static void run_job(const worker_opts *o, const char *worker_id, const char *id) {
    wk_run r;
    memset(&r, 0, sizeof r);
    r.o = o;
    r.worker_id = worker_id;
    snprintf(r.id, sizeof r.id, "%s", id);
    r.lease_ms = (int64_t)(o->lease_s > 0 ? o->lease_s : DEFAULT_LEASE_S) * 1000;
    r.ckpts = json_array();
    heartbeat_start(&r);

    lt_err err = {0};
    json_t *job = NULL, *final_metrics = NULL;
    wk_job wj;
    memset(&wj, 0, sizeof wj);
    resume_pt rs = {0};
    int resolved = 0, outcome = TR_FAILED;
    int rc = start_run(&r, &job, &wj, &resolved, &rs, &err);
    if (rc == 0 && stopping(o)) {
        atomic_store(&r.shutdown, 1);
        outcome = TR_STOPPED;
    } else if (rc == 0) {
        outcome = train(&r, job, &wj, rs.dir, &final_metrics, &err);
    }
    heartbeat_stop(&r);
    cleanup(&r, &wj, resolved);
    end_job(&r, rc, outcome, resolved, final_metrics, &err);

    json_decref(final_metrics);
    json_decref(job);
    json_decref(r.ckpts);
    json_decref(r.base_artifacts);
    free(rs.dir);
    free(r.work_dir);
}

/* ---------------------------------------------------------------------------------------------------------
 * the loop */

void worker_sweep_work_dirs(const worker_opts *o) {
    char *work = lt_path_join(o->data_dir, "work");
    DIR *dir = opendir(work);
    if (!dir) {
        free(work);
        return;
    }
    struct dirent *de;
    while ((de = readdir(dir))) {
        if (!lt_is_uuid(de->d_name)) continue;
        char status[16] = "";
        lt_err err = {0};
        int rc = jobs_peek(o->db, de->d_name, status, NULL, NULL, NULL, &err);
        if ((rc == 0 && strcmp(status, "running") != 0) || (rc != 0 && err.code == 404)) {
            char *p = lt_path_join(work, de->d_name);
            lt_rm_rf(p);
            free(p);
        }
    }
    closedir(dir);
    free(work);
}

static int nap(const worker_opts *o, int ms) {
    if (o->sleep) return o->sleep(o->ud, ms);
    usleep((useconds_t)ms * 1000);
    return stopping(o);
}

int worker_loop(const worker_opts *o, int index) {
    char host[64] = "host";
    gethostname(host, sizeof host);
    host[sizeof host - 1] = '\0';
    char wid[72];
    snprintf(wid, sizeof wid, "%.40s-%ld-w%d", host, (long)getpid(), index);
    int64_t lease_ms = (int64_t)(o->lease_s > 0 ? o->lease_s : DEFAULT_LEASE_S) * 1000;
    int poll = o->poll_ms > 0 ? o->poll_ms : DEFAULT_POLL_MS;
    lt_log(LOG_INFO, "worker %s started (lease %lld s)", wid, (long long)(lease_ms / 1000));
    if (index == 0) worker_sweep_work_dirs(o);
    int jobs = 0;
    while (!stopping(o)) {
        char id[LT_UUID_LEN];
        lt_err err = {0};
        int got = jobs_claim(o->db, wid, lease_ms, id, &err);
        if (got < 0) {
            lt_log(LOG_WARN, "worker %s: cannot claim a job (will retry): %s", wid, err.msg);
            if (nap(o, poll * 4)) break;
            continue;
        }
        if (got == 0) {
            if (o->once || nap(o, poll)) break;
            continue;
        }
        lt_log(LOG_INFO, "worker %s: running job %s", wid, id);
        double t0 = lt_mono_s();
        run_job(o, wid, id);
        lt_log(LOG_INFO, "worker %s: job %s done in %.1f s", wid, id, lt_mono_s() - t0);
        worker_sweep_work_dirs(o); /* e.g. what a crashed run left of a job that was deleted since */
        jobs++;
        if (o->once) break;
    }
    lt_log(LOG_INFO, "worker %s stopped after %d job(s)", wid, jobs);
    return jobs;
}

int worker_default_threads(int loops) {
    if (loops <= 1) return 0;
    int n = omp_get_num_procs() / loops;
    return n > 0 ? n : 1;
}
