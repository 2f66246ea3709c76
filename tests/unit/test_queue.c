/* test_queue.c: the jobs store (src/store/jobs.c) on a real SQLite file, or on a real PostgreSQL server
 * when LATHE_TEST_PG names one (store_url.h; tests/run.sh runs this binary both ways): create/list/quota, the
 * state machine (cancel, retry, delete), the queue (claim, lease, heartbeat, expiry re-queue), the progress
 * merge rule, the log cursor, what workers add (release on shutdown, cancel_requested, metrics trimmed on
 * resume), and claim races: threads sharing one handle, and several processes with their own connections,
 * must never both win one job. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "store/db.h"
#include "store/jobs.h"
#include "util/util.h"
#include "store_url.h"

#define ORG "00000000-0000-4000-8000-00000000000a"
#define WS "00000000-0000-4000-8000-0000000000b1"
#define WS2 "00000000-0000-4000-8000-0000000000b2"

static char dir[256], url[300];
static db *D;

static db *open_db(void) {
    lt_err err;
    db *d = db_open(url, &err);
    if (!d) fail_msg("db_open: %s", err.msg);
    return d;
}

static int setup(void **state) {
    snprintf(dir, sizeof dir, "/tmp/lathe-test-queue-XXXXXX");
    if (!mkdtemp(dir)) return -1;
    if (test_store_url(url, sizeof url, dir, "t.db") != 0) return -1;
    lt_err err;
    D = db_open(url, &err);
    if (!D || db_migrate(D, &err)) {
        fprintf(stderr, "setup: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    db_close(D);
    test_store_drop(url);
    lt_rm_rf(dir);
    return 0;
}

/* Empties the jobs tables between tests. */
static int reset(void **state) {
    lt_err err;
    return db_exec(D,
                   "DELETE FROM jobs; DELETE FROM job_logs; DELETE FROM job_refs; DELETE FROM job_tags; "
                   "DELETE FROM job_checkpoints;",
                   &err);
}

static const char *model_for_next = "tiny"; /* the model of the next new_job */

static void new_job(const char *ws, const char *trainer, const char *tag, const char *project,
                    int64_t max_active, char id[LT_UUID_LEN], int expect_rc) {
    json_t *fields = json_pack("{s:s,s:s,s:s,s:s,s:s,s:{},s:{s:i},s:[s],s:{s:s,s:s}}", "backend", "tinker",
                               "trainer_type", trainer, "model", model_for_next, "project_ref", project,
                               "name", "j", "config", "effective_config", "steps", 3, "tags", tag,
                               "capability", "name", "cap", "version", "1.0.0");
    json_t *refs = json_pack("[{s:s,s:s,s:s}]", "kind", "dataset", "name", "chat", "version", "1.0.0");
    json_t *user = json_pack("{s:s,s:s,s:n,s:n}", "id", "u1", "email", "a@b.c", "username", "full_name");
    jobs_new n = {ORG, ws, "u1", user, fields, refs, max_active};
    json_t *job = NULL;
    lt_err err;
    int rc = jobs_create(D, &n, &job, &err);
    if (rc != expect_rc) fail_msg("jobs_create rc %d (%s)", rc, err.msg);
    if (rc == 0) {
        snprintf(id, LT_UUID_LEN, "%s", json_string_value(json_object_get(job, "id")));
        assert_string_equal(json_string_value(json_object_get(job, "status")), "queued");
        assert_int_equal(json_integer_value(json_object_get(job, "attempt")), 1);
        assert_string_equal(json_string_value(json_object_get(job, "created_by_email")), "a@b.c");
        assert_int_equal(json_integer_value(json_object_get(json_object_get(job, "progress"), "step")), 0);
        assert_true(json_is_null(json_object_get(job, "started_at")));
    } else {
        assert_int_equal(err.code, 429);
    }
    json_decref(job);
    json_decref(fields);
    json_decref(refs);
    json_decref(user);
}

static json_t *get(const char *id) {
    json_t *job = NULL;
    lt_err err;
    if (jobs_get(D, NULL, id, &job, &err)) fail_msg("jobs_get: %s", err.msg);
    return job;
}

static const char *status_of(const char *id) {
    static char st[16];
    lt_err err;
    if (jobs_peek(D, id, st, NULL, NULL, NULL, &err)) fail_msg("peek: %s", err.msg);
    return st;
}

static int claim(const char *worker, int64_t lease_ms, char id[LT_UUID_LEN]) {
    lt_err err;
    int rc = jobs_claim(D, worker, lease_ms, id, &err);
    if (rc < 0) fail_msg("claim: %s", err.msg);
    return rc;
}

/* ---- tests ---- */

static void test_create_list_quota(void **state) {
    char a[LT_UUID_LEN], b[LT_UUID_LEN], c[LT_UUID_LEN], x[LT_UUID_LEN];
    new_job(WS, "sft", "red", "default", 2, a, 0);
    new_job(WS, "rl", "blue", "research", 2, b, 0);
    new_job(WS, "sft", "red", "default", 2, x, -1); /* quota: 2 active */
    new_job(WS2, "sft", "red", "default", 2, c, 0); /* another workspace has its own quota */
    lt_err err;
    assert_int_equal(jobs_active_count(D, WS, &err), 2);
    /* newest first, filters, paging */
    json_t *items;
    int64_t total;
    jobs_filter f = {NULL, NULL, NULL, NULL, NULL, 1, 20};
    assert_int_equal(jobs_list(D, WS, &f, &items, &total, &err), 0);
    assert_int_equal(total, 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(items, 0), "id")), b);
    assert_string_equal(json_string_value(json_object_get(json_array_get(items, 1), "id")), a);
    json_decref(items);
    f.page_size = 1;
    f.page = 2;
    assert_int_equal(jobs_list(D, WS, &f, &items, &total, &err), 0);
    assert_int_equal(total, 2);
    assert_int_equal(json_array_size(items), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(items, 0), "id")), a);
    json_decref(items);
    jobs_filter g = {NULL, NULL, "rl", NULL, NULL, 1, 20};
    assert_int_equal(jobs_list(D, WS, &g, &items, &total, &err), 0);
    assert_int_equal(total, 1);
    json_decref(items);
    jobs_filter h = {"queued", "tinker", NULL, "default", "red", 1, 20};
    assert_int_equal(jobs_list(D, WS, &h, &items, &total, &err), 0);
    assert_int_equal(total, 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(items, 0), "id")), a);
    json_decref(items);
    jobs_filter none = {NULL, NULL, NULL, NULL, "green", 1, 20};
    assert_int_equal(jobs_list(D, WS, &none, &items, &total, &err), 0);
    assert_int_equal(total, 0);
    json_decref(items);
    /* another workspace's job is not found through this one */
    json_t *job = NULL;
    assert_int_equal(jobs_get(D, WS, c, &job, &err), -1);
    assert_int_equal(err.code, 404);
    int64_t counts[JOBS_NSTATUS];
    assert_int_equal(jobs_count_by_status(D, counts, &err), 0);
    assert_int_equal(counts[0], 3);
    /* refs are recorded with the org for the artifact registry */
    db_stmt *s = db_query(D, &err,
                          "SELECT COUNT(*) FROM job_refs r JOIN jobs j ON j.id = r.job_id WHERE "
                          "j.status IN ('queued','running') AND r.org_id=? AND r.kind=? AND r.name=? AND "
                          "r.version=?",
                          "tttt", ORG, "dataset", "chat", "1.0.0");
    assert_int_equal(db_step(s, &err), DB_ROW);
    assert_int_equal(db_column_int64(s, 0), 3);
    db_finalize(s);
}

static void test_claim_heartbeat_order(void **state) {
    char a[LT_UUID_LEN], b[LT_UUID_LEN], got[LT_UUID_LEN];
    new_job(WS, "sft", "t", "default", 0, a, 0);
    new_job(WS, "sft", "t", "default", 0, b, 0);
    assert_int_equal(claim("w1", 60000, got), 1);
    assert_string_equal(got, a); /* oldest first */
    assert_int_equal(claim("w2", 60000, got), 1);
    assert_string_equal(got, b);
    assert_int_equal(claim("w3", 60000, got), 0); /* empty */
    json_t *job = get(a);
    assert_string_equal(json_string_value(json_object_get(job, "status")), "running");
    assert_false(json_is_null(json_object_get(job, "started_at")));
    json_decref(job);
    lt_err err;
    int cancel = -1;
    assert_int_equal(jobs_heartbeat(D, a, "w1", 60000, &cancel, &err), 0);
    assert_int_equal(cancel, 0);
    assert_int_equal(jobs_heartbeat(D, a, "w2", 60000, NULL, &err), -1); /* not w2's */
    assert_int_equal(err.code, 409);
}

static void test_lease_expiry_requeues(void **state) {
    char a[LT_UUID_LEN], got[LT_UUID_LEN];
    new_job(WS, "sft", "t", "default", 0, a, 0);
    assert_int_equal(claim("w1", 1000, got), 1);
    json_t *job = get(a);
    char started[64];
    snprintf(started, sizeof started, "%s", json_string_value(json_object_get(job, "started_at")));
    json_decref(job);
    lt_err err;
    /* not yet expired */
    assert_int_equal(jobs_requeue_expired(D, lt_now_ms(), &err), 0);
    assert_string_equal(status_of(a), "running");
    /* expired (the clock is passed in, no sleeping) */
    assert_int_equal(jobs_requeue_expired(D, lt_now_ms() + 5000, &err), 1);
    assert_string_equal(status_of(a), "queued");
    assert_int_equal(jobs_heartbeat(D, a, "w1", 1000, NULL, &err), -1); /* w1 lost it */
    job = get(a);
    assert_int_equal(json_integer_value(json_object_get(job, "attempt")), 1); /* attempt kept */
    json_decref(job);
    /* the next claimer resumes it; started_at is kept */
    assert_int_equal(claim("w2", 60000, got), 1);
    assert_string_equal(got, a);
    job = get(a);
    assert_string_equal(json_string_value(json_object_get(job, "started_at")), started);
    json_decref(job);
    json_t *logs;
    int64_t next;
    assert_int_equal(jobs_logs(D, a, 0, 100, JOBS_LOG_WARNING, &logs, &next, &err), 0);
    assert_int_equal(json_array_size(logs), 1);
    assert_non_null(
        strstr(json_string_value(json_object_get(json_array_get(logs, 0), "message")), "re-queued"));
    json_decref(logs);
    assert_int_equal(jobs_logs(D, a, 0, 100, JOBS_LOG_DEBUG, &logs, &next, &err), 0);
    assert_non_null(
        strstr(json_string_value(json_object_get(json_array_get(logs, 3), "message")), "resumed"));
    json_decref(logs);
}

static void test_cancel(void **state) {
    char a[LT_UUID_LEN], b[LT_UUID_LEN], c[LT_UUID_LEN], got[LT_UUID_LEN];
    new_job(WS, "sft", "t", "default", 0, a, 0);
    lt_err err;
    json_t *job = NULL;
    /* queued -> cancelled at once */
    assert_int_equal(jobs_cancel(D, WS, a, &job, &err), 0);
    assert_string_equal(json_string_value(json_object_get(job, "status")), "cancelled");
    assert_false(json_is_null(json_object_get(job, "completed_at")));
    json_decref(job);
    assert_int_equal(jobs_cancel(D, WS, a, NULL, &err), -1); /* terminal */
    assert_int_equal(err.code, 409);
    assert_int_equal(jobs_cancel(D, WS2, a, NULL, &err), -1); /* other workspace */
    assert_int_equal(err.code, 404);
    /* running -> cancel requested; the worker sees it and acknowledges */
    new_job(WS, "sft", "t", "default", 0, b, 0);
    assert_int_equal(claim("w1", 60000, got), 1);
    assert_int_equal(jobs_cancel(D, WS, b, &job, &err), 0);
    assert_string_equal(json_string_value(json_object_get(job, "status")), "running");
    assert_false(json_is_null(json_object_get(job, "cancel_requested_at")));
    json_decref(job);
    assert_int_equal(jobs_cancel(D, WS, b, NULL, &err), 0); /* asking twice is fine */
    int cancel = 0;
    assert_int_equal(jobs_heartbeat(D, b, "w1", 60000, &cancel, &err), 0);
    assert_int_equal(cancel, 1);
    assert_int_equal(jobs_mark_cancelled(D, b, "w2", &err), -1);
    assert_int_equal(jobs_mark_cancelled(D, b, "w1", &err), 0);
    assert_string_equal(status_of(b), "cancelled");
    /* a lease that expires with a cancel pending ends cancelled, not re-queued */
    new_job(WS, "sft", "t", "default", 0, c, 0);
    assert_int_equal(claim("w1", 1000, got), 1);
    assert_int_equal(jobs_cancel(D, WS, c, NULL, &err), 0);
    assert_int_equal(jobs_requeue_expired(D, lt_now_ms() + 5000, &err), 1);
    assert_string_equal(status_of(c), "cancelled");
}

static json_t *ev(const char *text) {
    json_error_t je;
    json_t *e = json_loads(text, 0, &je);
    if (!e) fail_msg("bad event JSON: %s", je.text);
    return e;
}

static void progress(const char *id, const char *text, int expect_rc) {
    json_t *e = ev(text);
    lt_err err;
    int rc = jobs_progress(D, id, e, NULL, &err);
    json_decref(e);
    if (rc != expect_rc) fail_msg("progress %s: rc %d (%s)", text, rc, err.msg);
}

static void test_progress_merge(void **state) {
    char a[LT_UUID_LEN], got[LT_UUID_LEN];
    new_job(WS, "sft", "t", "default", 0, a, 0);
    progress(a, "{\"event_type\":\"training_start\",\"data\":{\"total_steps\":4}}", 0);
    assert_string_equal(status_of(a), "running");
    progress(a,
             "{\"event_type\":\"step_complete\",\"metrics\":{\"steps\":[1],\"train/loss\":[2.5],"
             "\"train/tokens_per_s\":[100.0],\"train/num_examples\":10},\"data\":{\"step\":1}}",
             0);
    progress(a,
             "{\"event_type\":\"step_complete\",\"metrics\":{\"steps\":[2],\"train/loss\":[2.0],"
             "\"train/tokens_per_s\":[120.0],\"train/num_examples\":11}}",
             0);
    progress(a, "{\"event_type\":\"eval_complete\",\"metrics\":{\"eval/steps\":[2],\"eval/loss\":[1.9]}}", 0);
    progress(
        a,
        "{\"event_type\":\"checkpoint_saved\",\"artifacts\":{\"latest_checkpoint\":\"checkpoint-1-step2\"},"
        "\"message\":\"saved checkpoint-1-step2\",\"level\":\"debug\"}",
        0);
    json_t *job = get(a), *m = json_object_get(job, "metrics");
    assert_int_equal(json_array_size(json_object_get(m, "steps")), 2);
    assert_true(json_real_value(json_array_get(json_object_get(m, "train/loss"), 1)) == 2.0);
    assert_int_equal(json_integer_value(json_object_get(m, "train/num_examples")), 11); /* scalar replaced */
    assert_int_equal(json_array_size(json_object_get(m, "eval/loss")), 1);
    json_t *p = json_object_get(job, "progress");
    assert_int_equal(json_integer_value(json_object_get(p, "step")), 2);
    assert_int_equal(json_integer_value(json_object_get(p, "total_steps")), 4);
    assert_true(json_real_value(json_object_get(p, "fraction")) == 0.5);
    assert_true(json_real_value(json_object_get(p, "tokens_per_s")) == 120.0);
    assert_true(json_is_number(json_object_get(p, "eta_s")));
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(job, "artifacts"), "latest_checkpoint")),
        "checkpoint-1-step2");
    json_decref(job);
    /* terminal: full final metrics merged key by key, artifacts merged, status completed */
    progress(a,
             "{\"event_type\":\"training_end\",\"metrics\":{\"steps\":[1,2,3,4],\"train/loss_last\":1.5},"
             "\"artifacts\":{\"checkpoints\":[\"final\"]}}",
             0);
    job = get(a);
    m = json_object_get(job, "metrics");
    assert_string_equal(json_string_value(json_object_get(job, "status")), "completed");
    assert_int_equal(json_array_size(json_object_get(m, "steps")), 4);      /* replaced, not appended */
    assert_int_equal(json_array_size(json_object_get(m, "train/loss")), 2); /* kept */
    assert_true(json_real_value(json_object_get(m, "train/loss_last")) == 1.5);
    json_t *arts = json_object_get(job, "artifacts");
    assert_non_null(json_object_get(arts, "latest_checkpoint"));
    assert_non_null(json_object_get(arts, "checkpoints"));
    p = json_object_get(job, "progress");
    assert_int_equal(json_integer_value(json_object_get(p, "step")), 4);
    assert_true(json_real_value(json_object_get(p, "fraction")) == 1.0);
    assert_false(json_is_null(json_object_get(job, "completed_at")));
    json_decref(job);
    /* an ended job takes no more events */
    progress(a, "{\"event_type\":\"step_complete\",\"metrics\":{\"steps\":[5]}}", -1);
    /* every event became a log line with its level and data */
    lt_err err;
    json_t *logs;
    int64_t next;
    assert_int_equal(jobs_logs(D, a, 0, 100, JOBS_LOG_DEBUG, &logs, &next, &err), 0);
    assert_int_equal(json_array_size(logs), 7); /* queued + 6 events */
    json_t *ck = json_array_get(logs, 5);
    assert_string_equal(json_string_value(json_object_get(ck, "level")), "debug");
    assert_string_equal(json_string_value(json_object_get(ck, "message")), "saved checkpoint-1-step2");
    assert_string_equal(json_string_value(json_object_get(json_object_get(ck, "data"), "event_type")),
                        "checkpoint_saved");
    json_decref(logs);
    /* training_error fails a job with its error */
    char b[LT_UUID_LEN];
    new_job(WS, "sft", "t", "default", 0, b, 0);
    assert_int_equal(claim("w1", 60000, got), 1);
    progress(b,
             "{\"event_type\":\"training_error\",\"error\":\"dataset chat split train line 3: no messages\"}",
             0);
    job = get(b);
    assert_string_equal(json_string_value(json_object_get(job, "status")), "failed");
    assert_string_equal(json_string_value(json_object_get(job, "error")),
                        "dataset chat split train line 3: no messages");
    json_decref(job);
    assert_int_equal(jobs_heartbeat(D, b, "w1", 1000, NULL, &err), -1); /* the lease ended with the job */
}

static void test_retry_delete_checkpoints(void **state) {
    char a[LT_UUID_LEN], b[LT_UUID_LEN], got[LT_UUID_LEN];
    lt_err err;
    new_job(WS, "sft", "t", "default", 0, a, 0);
    new_job(WS, "sft", "t", "default", 0, b, 0);
    assert_int_equal(jobs_retry(D, WS, a, NULL, NULL, &err), -1); /* queued: not terminal */
    assert_int_equal(err.code, 409);
    assert_int_equal(jobs_delete(D, WS, a, NULL, &err), -1); /* active */
    assert_int_equal(err.code, 409);
    assert_int_equal(claim("w1", 60000, got), 1);
    assert_int_equal(claim("w1", 60000, got), 1);
    const char *shared = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const char *own = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    assert_int_equal(jobs_checkpoint_add(D, a, "checkpoint-1-step2", 2, 100, shared, shared, &err), 0);
    assert_int_equal(jobs_checkpoint_add(D, a, "final", 3, 120, own, own, &err), 0);
    assert_int_equal(jobs_checkpoint_add(D, b, "final", 3, 100, shared, shared, &err), 0);
    json_t *items;
    assert_int_equal(jobs_checkpoints(D, a, &items, &err), 0);
    assert_int_equal(json_array_size(items), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(items, 1), "name")), "final");
    json_decref(items);
    char blob[72];
    int64_t size;
    assert_int_equal(jobs_checkpoint_blob(D, a, "final", blob, &size, &err), 0);
    assert_string_equal(blob, own);
    assert_int_equal(jobs_checkpoint_blob(D, a, "nope", blob, &size, &err), -1);
    assert_int_equal(err.code, 404);
    progress(a, "{\"event_type\":\"step_complete\",\"metrics\":{\"steps\":[1]}}", 0);
    progress(a, "{\"event_type\":\"training_error\",\"error\":\"boom\",\"artifacts\":{\"x\":1}}", 0);
    /* retry: same id, attempt 2, fields cleared, logs kept, checkpoints dropped */
    json_t *job = NULL, *freed = NULL;
    assert_int_equal(jobs_retry(D, WS, a, &job, &freed, &err), 0);
    assert_string_equal(json_string_value(json_object_get(job, "id")), a);
    assert_string_equal(json_string_value(json_object_get(job, "status")), "queued");
    assert_int_equal(json_integer_value(json_object_get(job, "attempt")), 2);
    static const char *const CLEARED[] = {"error", "started_at", "completed_at", "cancel_requested_at", NULL};
    for (int i = 0; CLEARED[i]; i++)
        assert_true(json_is_null(json_object_get(job, CLEARED[i])));
    assert_int_equal(json_object_size(json_object_get(job, "metrics")), 0);
    assert_int_equal(json_object_size(json_object_get(job, "artifacts")), 0);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(job, "progress"), "step")), 0);
    json_decref(job);
    assert_int_equal(json_array_size(freed), 1); /* own blob freed; the shared one is still b's */
    assert_string_equal(json_string_value(json_array_get(freed, 0)), own);
    json_decref(freed);
    json_t *logs;
    int64_t next;
    assert_int_equal(jobs_logs(D, a, 0, 100, JOBS_LOG_DEBUG, &logs, &next, &err), 0);
    json_t *last = json_array_get(logs, json_array_size(logs) - 1);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(logs, 0), "attempt")), 1);
    assert_int_equal(json_integer_value(json_object_get(last, "attempt")), 2);
    json_decref(logs);
    /* delete b (terminal): its blob is now unreferenced */
    progress(b, "{\"event_type\":\"training_end\"}", 0);
    assert_int_equal(jobs_delete(D, WS2, b, NULL, &err), -1);
    assert_int_equal(err.code, 404);
    assert_int_equal(jobs_delete(D, WS, b, &freed, &err), 0);
    assert_int_equal(json_array_size(freed), 1);
    assert_string_equal(json_string_value(json_array_get(freed, 0)), shared);
    json_decref(freed);
    assert_int_equal(jobs_get(D, NULL, b, NULL, &err), -1);
    assert_int_equal(err.code, 404);
    assert_int_equal(jobs_logs(D, b, 0, 100, 0, &logs, &next, &err), 0);
    assert_int_equal(json_array_size(logs), 0);
    json_decref(logs);
}

static void test_log_cursor(void **state) {
    char a[LT_UUID_LEN];
    lt_err err;
    new_job(WS, "sft", "t", "default", 0, a, 0); /* seq 1: info "job queued" */
    for (int i = 0; i < 10; i++) {
        char msg[32];
        snprintf(msg, sizeof msg, "line %d", i);
        json_t *data = json_pack("{s:i}", "i", i);
        assert_true(jobs_log_add(D, a, i % 4, msg, data, &err) >= 2);
        json_decref(data);
    }
    json_t *items;
    int64_t next, after = 0, seen = 0, prev = 0;
    do { /* pages of 3 cover everything once, in order */
        assert_int_equal(jobs_logs(D, a, after, 3, JOBS_LOG_DEBUG, &items, &next, &err), 0);
        size_t i;
        json_t *e;
        json_array_foreach(items, i, e) {
            int64_t seq = json_integer_value(json_object_get(e, "seq"));
            assert_true(seq > prev);
            prev = seq;
            seen++;
        }
        json_decref(items);
        after = next;
    } while (next);
    assert_int_equal(seen, 11);
    /* level is a minimum: error lines are i = 3, 7 */
    assert_int_equal(jobs_logs(D, a, 0, 100, JOBS_LOG_ERROR, &items, &next, &err), 0);
    assert_int_equal(json_array_size(items), 2);
    assert_int_equal(next, 0);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(json_array_get(items, 1), "data"), "i")), 7);
    json_decref(items);
    /* the watermark moves with logs */
    int64_t up, lastseq;
    assert_int_equal(jobs_watermark(D, a, &up, &lastseq, &err), 0);
    assert_int_equal(lastseq, 11);
}

static void test_base_job_is_protected(void **state) {
    char a[LT_UUID_LEN], b[LT_UUID_LEN], got[LT_UUID_LEN];
    lt_err err;
    new_job(WS, "sft", "t", "default", 0, a, 0);
    assert_int_equal(claim("w1", 60000, got), 1);
    progress(a, "{\"event_type\":\"training_end\"}", 0);
    char model[64];
    snprintf(model, sizeof model, "jobs/%s/checkpoints/final", a);
    model_for_next = model;
    new_job(WS, "sft", "t", "default", 0, b, 0);
    model_for_next = "tiny";
    /* b continues from a's checkpoint: a can be neither deleted nor retried while b is active */
    assert_int_equal(jobs_delete(D, WS, a, NULL, &err), -1);
    assert_int_equal(err.code, 409);
    assert_non_null(strstr(err.msg, b));
    assert_int_equal(jobs_retry(D, WS, a, NULL, NULL, &err), -1);
    assert_int_equal(err.code, 409);
    assert_int_equal(jobs_cancel(D, WS, b, NULL, &err), 0);
    assert_int_equal(jobs_delete(D, WS, a, NULL, &err), 0);
}

/* ---- races ---- */

#define RACE_JOBS 24
/* ---- what workers add: release, cancel_requested, trim_metrics ---- */

/* A new queued job, claimed by worker w1. */
static void running_job(char id[LT_UUID_LEN]) {
    new_job(WS, "sft", "t", "default", 0, id, 0);
    char got[LT_UUID_LEN];
    assert_int_equal(claim("w1", 60000, got), 1);
    assert_string_equal(got, id);
}

static void test_release_requeues_with_the_same_attempt(void **state) {
    char id[LT_UUID_LEN];
    running_job(id);
    lt_err err;
    assert_int_equal(jobs_release(D, id, "w2", "w2 stopping", &err), -1);
    assert_int_equal(err.code, 409);
    assert_int_equal(jobs_release(D, id, "w1", "worker w1 is stopping", &err), 0);
    json_t *job = get(id);
    assert_string_equal(status_of(id), "queued");
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
    json_t *job = get(id);
    assert_string_equal(status_of(id), "cancelled");
    assert_false(json_is_null(json_object_get(job, "completed_at")));
    json_decref(job);
    assert_int_equal(jobs_cancel_requested(D, "00000000-0000-4000-8000-0000000000ff", &err), -1);
    assert_int_equal(err.code, 404);
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
        progress(id, ev, 0);
        if (s % 2 == 0) {
            snprintf(
                ev, sizeof ev,
                "{\"event_type\":\"eval_complete\",\"metrics\":{\"eval/steps\":[%d],\"eval/loss\":[%d.25]}}",
                s, s);
            progress(id, ev, 0);
        }
    }
    progress(id, "{\"event_type\":\"step_complete\",\"metrics\":{\"train/seen\":7}}", 0);
    lt_err err;
    assert_int_equal(jobs_trim_metrics(D, id, 3, &err), 0);
    json_t *job = get(id);
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
    progress(id, "{\"event_type\":\"step_complete\",\"metrics\":{\"steps\":[4],\"train/loss\":[9.5]}}", 0);
    job = get(id);
    m = json_object_get(job, "metrics");
    assert_int_equal(json_integer_value(json_array_get(json_object_get(m, "steps"), 3)), 4);
    json_decref(job);
    assert_int_equal(jobs_trim_metrics(D, "00000000-0000-4000-8000-0000000000ff", 1, &err), -1);
    assert_int_equal(err.code, 404);
}

#define RACE_THREADS 6

static char claimed[RACE_THREADS][RACE_JOBS + 1][LT_UUID_LEN];
static int nclaimed[RACE_THREADS];
static pthread_barrier_t barrier;

static void *claimer(void *arg) {
    int t = (int)(intptr_t)arg;
    char worker[16];
    snprintf(worker, sizeof worker, "t%d", t);
    pthread_barrier_wait(&barrier);
    for (;;) {
        lt_err err;
        char id[LT_UUID_LEN];
        int rc = jobs_claim(D, worker, 60000, id, &err);
        if (rc < 0) {
            fprintf(stderr, "claim error: %s\n", err.msg);
            nclaimed[t] = -1000;
            return NULL;
        }
        if (rc == 0) return NULL;
        if (nclaimed[t] >= RACE_JOBS) return NULL; /* more claims than jobs: check_once fails */
        snprintf(claimed[t][nclaimed[t]++], LT_UUID_LEN, "%s", id);
    }
}

static int cmp_id(const void *a, const void *b) {
    return strcmp(a, b);
}

/* ids: every claimed id; each of the n created jobs exactly once. */
static void check_once(char (*ids)[LT_UUID_LEN], int n, char (*created)[LT_UUID_LEN], int ncreated) {
    assert_int_equal(n, ncreated);
    qsort(ids, (size_t)n, LT_UUID_LEN, cmp_id);
    qsort(created, (size_t)ncreated, LT_UUID_LEN, cmp_id);
    for (int i = 0; i < n; i++)
        assert_string_equal(ids[i], created[i]);
}

static void test_race_threads(void **state) {
    /* one job, many claimers at once: exactly one winner */
    char one[1][LT_UUID_LEN];
    new_job(WS, "sft", "t", "default", 0, one[0], 0);
    memset(nclaimed, 0, sizeof nclaimed);
    pthread_t th[RACE_THREADS];
    pthread_barrier_init(&barrier, NULL, RACE_THREADS);
    for (int t = 0; t < RACE_THREADS; t++)
        pthread_create(&th[t], NULL, claimer, (void *)(intptr_t)t);
    for (int t = 0; t < RACE_THREADS; t++)
        pthread_join(th[t], NULL);
    int winners = 0;
    for (int t = 0; t < RACE_THREADS; t++) {
        assert_true(nclaimed[t] >= 0);
        winners += nclaimed[t];
    }
    assert_int_equal(winners, 1);
    /* many jobs: each claimed exactly once */
    reset(NULL);
    char created[RACE_JOBS][LT_UUID_LEN];
    for (int i = 0; i < RACE_JOBS; i++)
        new_job(WS, "sft", "t", "default", 0, created[i], 0);
    memset(nclaimed, 0, sizeof nclaimed);
    for (int t = 0; t < RACE_THREADS; t++)
        pthread_create(&th[t], NULL, claimer, (void *)(intptr_t)t);
    for (int t = 0; t < RACE_THREADS; t++)
        pthread_join(th[t], NULL);
    pthread_barrier_destroy(&barrier);
    char all[RACE_JOBS * RACE_THREADS][LT_UUID_LEN];
    int n = 0;
    for (int t = 0; t < RACE_THREADS; t++) {
        assert_true(nclaimed[t] >= 0);
        for (int i = 0; i < nclaimed[t]; i++)
            memcpy(all[n++], claimed[t][i], LT_UUID_LEN);
    }
    check_once(all, n, created, RACE_JOBS);
}

#define RACE_PROCS 4

static void test_race_processes(void **state) {
    char created[RACE_JOBS][LT_UUID_LEN];
    for (int i = 0; i < RACE_JOBS; i++)
        new_job(WS, "sft", "t", "default", 0, created[i], 0);
    /* children must not inherit a live SQLite connection: close ours, reopen after */
    db_close(D);
    D = NULL;
    int fds[RACE_PROCS][2];
    pid_t pids[RACE_PROCS];
    for (int p = 0; p < RACE_PROCS; p++) {
        assert_int_equal(pipe(fds[p]), 0);
        pids[p] = fork();
        assert_true(pids[p] >= 0);
        if (pids[p] == 0) {
            close(fds[p][0]);
            lt_err err;
            db *d = db_open(url, &err);
            if (!d) _exit(2);
            char worker[16], id[LT_UUID_LEN];
            snprintf(worker, sizeof worker, "proc%d", p);
            int rc;
            while ((rc = jobs_claim(d, worker, 60000, id, &err)) == 1)
                if (write(fds[p][1], id, LT_UUID_LEN) != LT_UUID_LEN) _exit(3);
            db_close(d);
            _exit(rc == 0 ? 0 : 4);
        }
        close(fds[p][1]);
    }
    char all[RACE_JOBS * RACE_PROCS][LT_UUID_LEN];
    int n = 0;
    for (int p = 0; p < RACE_PROCS; p++) {
        ssize_t r;
        while (n < RACE_JOBS * RACE_PROCS && (r = read(fds[p][0], all[n], LT_UUID_LEN)) == LT_UUID_LEN)
            n++;
        close(fds[p][0]);
        int status;
        assert_int_equal(waitpid(pids[p], &status, 0), pids[p]);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
    }
    D = open_db();
    check_once(all, n, created, RACE_JOBS);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_create_list_quota, reset),
        cmocka_unit_test_setup(test_claim_heartbeat_order, reset),
        cmocka_unit_test_setup(test_lease_expiry_requeues, reset),
        cmocka_unit_test_setup(test_cancel, reset),
        cmocka_unit_test_setup(test_progress_merge, reset),
        cmocka_unit_test_setup(test_retry_delete_checkpoints, reset),
        cmocka_unit_test_setup(test_log_cursor, reset),
        cmocka_unit_test_setup(test_base_job_is_protected, reset),
        cmocka_unit_test_setup(test_release_requeues_with_the_same_attempt, reset),
        cmocka_unit_test_setup(test_release_with_a_cancel_pending_cancels, reset),
        cmocka_unit_test_setup(test_trim_metrics_keeps_steps_up_to_the_checkpoint, reset),
        cmocka_unit_test_setup(test_race_threads, reset),
        cmocka_unit_test_setup(test_race_processes, reset),
    };
    return cmocka_run_group_tests_name("queue", tests, setup, teardown);
}
