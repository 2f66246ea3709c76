/* test_jobs_worker.c: the store functions the worker adds to the queue (src/store/jobs_sql.c):
 * jobs_release (a stopping worker gives its job back: queued with the same attempt, or cancelled when a
 * cancel is pending; only the holder may), jobs_trim_metrics (a resumed job forgets the steps after its
 * checkpoint, on both axes, scalars kept) and jobs_cancel_requested. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/db.h"
#include "store/jobs.h"
#include "util/util.h"
#include "worker/worker.h"
#include <omp.h>

#define ORG "00000000-0000-4000-8000-00000000000a"
#define WS "00000000-0000-4000-8000-0000000000b1"

static char dir[256], url[300];
static db *D;

static int setup(void **state) {
    snprintf(dir, sizeof dir, "/tmp/lathe-test-jobs-worker-XXXXXX");
    if (!mkdtemp(dir)) return -1;
    snprintf(url, sizeof url, "sqlite:%s/t.db", dir);
    lt_err err;
    D = db_open(url, &err);
    if (!D || db_migrate(D, &err) || db_migrate_area(D, "jobs", db_migrations_jobs, &err)) {
        fprintf(stderr, "setup: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    db_close(D);
    lt_rm_rf(dir);
    return 0;
}

/* A new queued job, claimed by worker w1. */
static void running_job(char id[LT_UUID_LEN]) {
    json_t *fields =
        json_pack("{s:s,s:s,s:s,s:s,s:{},s:{s:i},s:[],s:{s:s,s:s}}", "backend", "tinker", "trainer_type",
                  "sft", "model", "tiny", "name", "j", "config", "effective_config", "steps", 3, "tags",
                  "capability", "name", "cap", "version", "1.0.0");
    jobs_new n = {ORG, WS, "u1", NULL, fields, NULL, 0};
    json_t *job = NULL;
    lt_err err;
    assert_int_equal(jobs_create(D, &n, &job, &err), 0);
    json_decref(fields);
    json_decref(job);
    assert_int_equal(jobs_claim(D, "w1", 60000, id, &err), 1);
}

static json_t *job_of(const char *id) {
    json_t *job = NULL;
    lt_err err;
    assert_int_equal(jobs_get(D, NULL, id, &job, &err), 0);
    return job;
}

static const char *status_of(json_t *job) {
    return json_string_value(json_object_get(job, "status"));
}

static void test_release_requeues_with_the_same_attempt(void **state) {
    char id[LT_UUID_LEN];
    running_job(id);
    lt_err err;
    assert_int_equal(jobs_release(D, id, "w2", "w2 stopping", &err), -1);
    assert_int_equal(err.code, 409);
    assert_int_equal(jobs_release(D, id, "w1", "worker w1 is stopping", &err), 0);
    json_t *job = job_of(id);
    assert_string_equal(status_of(job), "queued");
    assert_int_equal(json_integer_value(json_object_get(job, "attempt")), 1);
    assert_true(json_is_null(json_object_get(job, "cancel_requested_at")));
    assert_true(json_is_null(json_object_get(job, "completed_at")));
    json_decref(job);
    json_t *items = NULL;
    int64_t next;
    assert_int_equal(jobs_logs(D, id, 0, 100, 0, &items, &next, &err), 0);
    const char *last =
        json_string_value(json_object_get(json_array_get(items, json_array_size(items) - 1), "message"));
    assert_non_null(strstr(last, "worker w1 is stopping: re-queued (attempt 1 kept)"));
    json_decref(items);
    /* released twice: no longer held */
    assert_int_equal(jobs_release(D, id, "w1", NULL, &err), -1);
    assert_int_equal(err.code, 409);
    /* claimable again, by anyone */
    char again[LT_UUID_LEN];
    assert_int_equal(jobs_claim(D, "w3", 60000, again, &err), 1);
    assert_string_equal(again, id);
}

static void test_release_with_a_cancel_pending_cancels(void **state) {
    char id[LT_UUID_LEN];
    running_job(id);
    lt_err err;
    assert_int_equal(jobs_cancel_requested(D, id, &err), 0);
    assert_int_equal(jobs_cancel(D, WS, id, NULL, &err), 0);
    assert_int_equal(jobs_cancel_requested(D, id, &err), 1);
    assert_int_equal(jobs_release(D, id, "w1", "stopping", &err), 0);
    json_t *job = job_of(id);
    assert_string_equal(status_of(job), "cancelled");
    assert_false(json_is_null(json_object_get(job, "completed_at")));
    json_decref(job);
    assert_int_equal(jobs_cancel_requested(D, "00000000-0000-4000-8000-0000000000ff", &err), -1);
    assert_int_equal(err.code, 404);
}

static void progress(const char *id, const char *json) {
    json_t *ev = json_loads(json, 0, NULL);
    assert_non_null(ev);
    lt_err err;
    if (jobs_progress(D, id, ev, NULL, &err) != 0) fail_msg("jobs_progress: %s", err.msg);
    json_decref(ev);
}

static void test_trim_metrics_keeps_steps_up_to_the_checkpoint(void **state) {
    char id[LT_UUID_LEN];
    running_job(id);
    for (int s = 1; s <= 5; s++) {
        char ev[256];
        snprintf(ev, sizeof ev,
                 "{\"event_type\":\"step_complete\",\"metrics\":{\"steps\":[%d],\"train/loss\":[%d.5]},"
                 "\"data\":{\"step\":%d,\"total_steps\":8}}",
                 s, s, s);
        progress(id, ev);
        if (s % 2 == 0) {
            snprintf(
                ev, sizeof ev,
                "{\"event_type\":\"eval_complete\",\"metrics\":{\"eval/steps\":[%d],\"eval/loss\":[%d.25]}}",
                s, s);
            progress(id, ev);
        }
    }
    progress(id, "{\"event_type\":\"step_complete\",\"metrics\":{\"train/seen\":7}}");
    lt_err err;
    assert_int_equal(jobs_trim_metrics(D, id, 3, &err), 0);
    json_t *job = job_of(id);
    json_t *m = json_object_get(job, "metrics");
    assert_int_equal(json_array_size(json_object_get(m, "steps")), 3);
    assert_int_equal(json_array_size(json_object_get(m, "train/loss")), 3);
    assert_true(json_real_value(json_array_get(json_object_get(m, "train/loss"), 2)) == 3.5);
    assert_int_equal(json_array_size(json_object_get(m, "eval/steps")), 1);
    assert_int_equal(json_array_size(json_object_get(m, "eval/loss")), 1);
    assert_int_equal(json_integer_value(json_object_get(m, "train/seen")), 7);
    json_t *p = json_object_get(job, "progress");
    assert_int_equal(json_integer_value(json_object_get(p, "step")), 3);
    assert_int_equal(json_integer_value(json_object_get(p, "total_steps")), 8);
    assert_true(json_real_value(json_object_get(p, "fraction")) == 3.0 / 8.0);
    json_decref(job);
    /* appending after the trim continues the arrays */
    progress(id, "{\"event_type\":\"step_complete\",\"metrics\":{\"steps\":[4],\"train/loss\":[9.5]}}");
    job = job_of(id);
    m = json_object_get(job, "metrics");
    assert_int_equal(json_integer_value(json_array_get(json_object_get(m, "steps"), 3)), 4);
    json_decref(job);
    assert_int_equal(jobs_trim_metrics(D, "00000000-0000-4000-8000-0000000000ff", 1, &err), -1);
    assert_int_equal(err.code, 404);
}

/* Threads per job: one loop gets the engine default (every core); n loops split the cores, at least 1 each.
 */
static void test_default_threads_split_the_cores(void **state) {
    (void)state;
    int cores = omp_get_num_procs();
    assert_int_equal(worker_default_threads(1), 0);
    assert_int_equal(worker_default_threads(0), 0);
    assert_int_equal(worker_default_threads(2), cores / 2 > 0 ? cores / 2 : 1);
    assert_int_equal(worker_default_threads(cores + 1), 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_release_requeues_with_the_same_attempt),
        cmocka_unit_test(test_release_with_a_cancel_pending_cancels),
        cmocka_unit_test(test_trim_metrics_keeps_steps_up_to_the_checkpoint),
        cmocka_unit_test(test_default_threads_split_the_cores),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
