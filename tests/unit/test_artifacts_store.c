/* Unit tests for store/artifacts: versions, semver "latest", paging, immutability, delete protection.
 *
 * Runs against a real SQLite file in a temp dir (or PostgreSQL with LATHE_TEST_PG), migrated exactly as the
 * lathe binary migrates it; the delete check inserts minimal rows into the real jobs and job_refs tables. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/artifacts.h"
#include "store/db.h"
#include "util/util.h"
#include "store_url.h"

#define ORG_A "11111111-1111-4111-8111-111111111111"
#define ORG_B "22222222-2222-4222-8222-222222222222"
#define DIGEST_1 "sha256:1111111111111111111111111111111111111111111111111111111111111111"
#define DIGEST_2 "sha256:2222222222222222222222222222222222222222222222222222222222222222"

typedef struct fixture {
    char dir[64];
    char url[300];
    db *d;
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    strcpy(f->dir, "/tmp/lathe-test-artifacts-XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    if (test_store_url(f->url, sizeof f->url, f->dir, "t.db") != 0) return -1;
    lt_err err;
    f->d = db_open(f->url, &err);
    if (!f->d || db_migrate(f->d, &err) != 0) return -1; /* every area, as the lathe binary migrates */
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    db_close(f->d);
    test_store_drop(f->url);
    lt_rm_rf(f->dir);
    free(f);
    return 0;
}

/* Pushes a version with a minimal manifest; returns the rc and leaves err. */
static int push(db *d, const char *org, const char *kind, const char *name, const char *version,
                const char *digest, lt_err *err) {
    artifact_version v = {0};
    snprintf(v.org_id, sizeof v.org_id, "%s", org);
    snprintf(v.kind, sizeof v.kind, "%s", kind);
    snprintf(v.name, sizeof v.name, "%s", name);
    snprintf(v.version, sizeof v.version, "%s", version);
    snprintf(v.digest, sizeof v.digest, "%s", digest);
    snprintf(v.blob_digest, sizeof v.blob_digest, "%s", digest);
    snprintf(v.created_by, sizeof v.created_by, "%s", "33333333-3333-4333-8333-333333333333");
    v.size_bytes = 1234;
    v.unpacked_bytes = 4321;
    v.manifest = json_pack("{ss ss}", "name", name, "version", version);
    v.splits = !strcmp(kind, "dataset") ? json_pack("{si si}", "train", 10, "test", 2) : NULL;
    v.prompt = !strcmp(kind, "capability") ? lt_strdup("You are terse.") : NULL;
    int rc = artifacts_create(d, &v, err);
    if (rc == 0) {
        assert_true(lt_is_uuid(v.id));
        assert_true(v.created_at > 0);
    }
    artifact_version_free(&v);
    return rc;
}

static void test_kinds(void **state) {
    assert_string_equal(artifacts_kind_from_plural("datasets"), "dataset");
    assert_string_equal(artifacts_kind_from_plural("capabilities"), "capability");
    assert_string_equal(artifacts_kind_from_plural("tasks"), "task");
    assert_null(artifacts_kind_from_plural("models"));
    assert_true(artifacts_kind_valid("task"));
    assert_false(artifacts_kind_valid("tasks"));
}

static void test_create_get_latest(void **state) {
    fixture *f = *state;
    lt_err err;
    assert_int_equal(push(f->d, ORG_A, "dataset", "chat", "1.9.0", DIGEST_1, &err), 0);
    assert_int_equal(push(f->d, ORG_A, "dataset", "chat", "1.10.0", DIGEST_2, &err), 0);
    assert_int_equal(push(f->d, ORG_A, "dataset", "chat", "0.2.0", DIGEST_1, &err), 0);
    artifact_version v;
    assert_int_equal(artifacts_get(f->d, ORG_A, "dataset", "chat", NULL, &v, &err), 0);
    assert_string_equal(v.version, "1.10.0"); /* semver order, not string order */
    assert_string_equal(v.digest, DIGEST_2);
    assert_int_equal(v.size_bytes, 1234);
    assert_int_equal(v.unpacked_bytes, 4321);
    assert_int_equal(json_integer_value(json_object_get(v.splits, "train")), 10);
    assert_string_equal(json_string_value(json_object_get(v.manifest, "version")), "1.10.0");
    assert_string_equal(v.created_by, "33333333-3333-4333-8333-333333333333");
    assert_null(v.prompt);
    artifact_version_free(&v);
    assert_int_equal(artifacts_get(f->d, ORG_A, "dataset", "chat", "0.2.0", &v, &err), 0);
    assert_string_equal(v.version, "0.2.0");
    artifact_version_free(&v);

    assert_int_equal(artifacts_get(f->d, ORG_A, "dataset", "chat", "9.9.9", &v, &err), -1);
    assert_int_equal(err.code, 404);
    assert_string_equal(err.msg, "dataset 'chat' version 9.9.9 not found");
    assert_int_equal(artifacts_get(f->d, ORG_B, "dataset", "chat", NULL, &v, &err), -1); /* other org */
    assert_string_equal(err.msg, "dataset 'chat' not found");
    assert_int_equal(artifacts_get(f->d, ORG_A, "task", "chat", NULL, &v, &err), -1); /* other kind */
    assert_int_equal(err.code, 404);
}

static void test_capability_prompt(void **state) {
    fixture *f = *state;
    lt_err err;
    assert_int_equal(push(f->d, ORG_A, "capability", "terse", "1.0.0", DIGEST_1, &err), 0);
    artifact_version v;
    assert_int_equal(artifacts_get(f->d, ORG_A, "capability", "terse", "1.0.0", &v, &err), 0);
    assert_string_equal(v.prompt, "You are terse.");
    assert_int_equal(json_object_size(v.splits), 0);
    artifact_version_free(&v);
}

static void test_immutable_and_bad_input(void **state) {
    fixture *f = *state;
    lt_err err;
    assert_int_equal(push(f->d, ORG_A, "task", "ctf", "1.0.0", DIGEST_1, &err), 0);
    assert_int_equal(push(f->d, ORG_A, "task", "ctf", "1.0.0", DIGEST_2, &err), -1);
    assert_int_equal(err.code, 409);
    assert_string_equal(
        err.msg, "task 'ctf' version 1.0.0 already exists; versions are immutable, push a new version");
    assert_int_equal(push(f->d, ORG_B, "task", "ctf", "1.0.0", DIGEST_1, &err), 0); /* another org is free */
    assert_int_equal(push(f->d, ORG_A, "tasks", "ctf", "1.0.1", DIGEST_1, &err), -1);
    assert_int_equal(err.code, 400);
    assert_int_equal(push(f->d, ORG_A, "task", "ctf", "1.0", DIGEST_1, &err), -1);
    assert_string_equal(err.msg, "version '1.0' is not X.Y.Z");
    assert_int_equal(push(f->d, ORG_A, "task", "ctf", "1.0.0-rc1", DIGEST_1, &err), -1);
    assert_int_equal(err.code, 400);
}

static void test_versions_and_list(void **state) {
    fixture *f = *state;
    lt_err err;
    const char *names[] = {"delta", "alpha", "charlie", "bravo"};
    for (int i = 0; i < 4; i++)
        assert_int_equal(push(f->d, ORG_A, "dataset", names[i], "0.1.0", DIGEST_1, &err), 0);
    assert_int_equal(push(f->d, ORG_A, "dataset", "bravo", "0.10.0", DIGEST_1, &err), 0);
    assert_int_equal(push(f->d, ORG_A, "dataset", "bravo", "0.9.0", DIGEST_1, &err), 0);
    assert_int_equal(push(f->d, ORG_B, "dataset", "zulu", "0.1.0", DIGEST_1, &err), 0);
    assert_int_equal(push(f->d, ORG_A, "task", "tango", "0.1.0", DIGEST_1, &err), 0);

    artifact_version *vs;
    size_t n;
    assert_int_equal(artifacts_versions(f->d, ORG_A, "dataset", "bravo", &vs, &n, &err), 0);
    assert_int_equal(n, 3);
    assert_string_equal(vs[0].version, "0.10.0");
    assert_string_equal(vs[1].version, "0.9.0");
    assert_string_equal(vs[2].version, "0.1.0");
    artifact_versions_free(vs, n);
    assert_int_equal(artifacts_versions(f->d, ORG_A, "dataset", "nope", &vs, &n, &err), -1);
    assert_int_equal(err.code, 404);
    assert_null(vs);

    artifact_summary *items;
    int64_t total;
    assert_int_equal(artifacts_list(f->d, ORG_A, "dataset", 1, 3, &items, &n, &total, &err), 0);
    assert_int_equal(total, 4);
    assert_int_equal(n, 3);
    assert_string_equal(items[0].name, "alpha");
    assert_string_equal(items[1].name, "bravo");
    assert_int_equal(items[1].versions, 3);
    assert_string_equal(items[1].latest.version, "0.10.0");
    assert_string_equal(items[2].name, "charlie");
    artifact_summaries_free(items, n);
    assert_int_equal(artifacts_list(f->d, ORG_A, "dataset", 2, 3, &items, &n, &total, &err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(items[0].name, "delta");
    artifact_summaries_free(items, n);
    assert_int_equal(artifacts_list(f->d, ORG_A, "dataset", 3, 3, &items, &n, &total, &err), 0);
    assert_int_equal(n, 0);
    assert_int_equal(total, 4);
    artifact_summaries_free(items, n);
    assert_int_equal(artifacts_list(f->d, ORG_A, "dataset", 0, 3, &items, &n, &total, &err), -1);
    assert_int_equal(err.code, 400);
    assert_int_equal(artifacts_list(f->d, ORG_A, "dataset", 1, 101, &items, &n, &total, &err), -1);
}

static void test_delete(void **state) {
    fixture *f = *state;
    lt_err err;
    assert_int_equal(push(f->d, ORG_A, "dataset", "d", "1.0.0", DIGEST_1, &err), 0);
    assert_int_equal(push(f->d, ORG_A, "dataset", "d", "2.0.0", DIGEST_2, &err), 0);
    assert_int_equal(push(f->d, ORG_B, "dataset", "d", "1.0.0", DIGEST_1, &err),
                     0); /* same bytes, other org */
    /* a queued job uses A's 1.0.0; a completed one uses 2.0.0 */
    assert_true(
        db_run(f->d, &err,
               "INSERT INTO jobs (id, seq, org_id, workspace_id, status, backend, trainer_type, model, "
               "spec, metrics, artifacts, progress, attempt, created_at, updated_at) VALUES "
               "('j1', 1, ?, 'w', 'queued', 'tinker', 'sft', 'm', '{}', '{}', '{}', '{}', 1, 0, 0), "
               "('j2', 2, ?, 'w', 'completed', 'tinker', 'sft', 'm', '{}', '{}', '{}', '{}', 1, 0, 0)",
               "tt", ORG_A, ORG_A) >= 0);
    assert_true(db_run(f->d, &err,
                       "INSERT INTO job_refs (job_id, org_id, kind, name, version) VALUES "
                       "('j1', ?, 'dataset', 'd', '1.0.0'), ('j2', ?, 'dataset', 'd', '2.0.0')",
                       "tt", ORG_A, ORG_A) >= 0);
    assert_int_equal(artifacts_in_use(f->d, ORG_A, "dataset", "d", "1.0.0", &err), 1);
    assert_int_equal(artifacts_in_use(f->d, ORG_B, "dataset", "d", "1.0.0", &err), 0);
    char blob[ARTIFACT_DIGEST_LEN];
    int unref = -1;
    assert_int_equal(artifacts_delete(f->d, ORG_A, "dataset", "d", "1.0.0", blob, &unref, &err), -1);
    assert_int_equal(err.code, 409);
    assert_string_equal(err.msg,
                        "dataset 'd' version 1.0.0 is in use by a queued or running job; cancel it or wait");
    assert_true(db_run(f->d, &err, "UPDATE jobs SET status = 'running' WHERE id = 'j1'", "") >= 0);
    assert_int_equal(artifacts_delete(f->d, ORG_A, "dataset", "d", "1.0.0", blob, &unref, &err), -1);
    assert_int_equal(err.code, 409);
    assert_true(db_run(f->d, &err, "UPDATE jobs SET status = 'cancelled' WHERE id = 'j1'", "") >= 0);
    assert_int_equal(artifacts_delete(f->d, ORG_A, "dataset", "d", "1.0.0", blob, &unref, &err), 0);
    assert_string_equal(blob, DIGEST_1);
    assert_int_equal(unref, 0); /* org B still uses those bytes */
    assert_int_equal(artifacts_delete(f->d, ORG_A, "dataset", "d", "1.0.0", blob, &unref, &err), -1);
    assert_int_equal(err.code, 404);
    artifact_version v;
    assert_int_equal(artifacts_get(f->d, ORG_A, "dataset", "d", NULL, &v, &err), 0);
    assert_string_equal(v.version, "2.0.0");
    artifact_version_free(&v);
    assert_int_equal(artifacts_delete(f->d, ORG_A, "dataset", "d", "2.0.0", blob, &unref, &err), 0);
    assert_int_equal(unref, 1);
    /* the artifact is gone with its last version */
    artifact_summary *items;
    size_t n;
    int64_t total;
    assert_int_equal(artifacts_list(f->d, ORG_A, "dataset", 1, 20, &items, &n, &total, &err), 0);
    assert_int_equal(total, 0);
    artifact_summaries_free(items, n);
    assert_int_equal(artifacts_delete(f->d, ORG_B, "dataset", "d", "1.0.0", blob, &unref, &err), 0);
    assert_int_equal(unref, 1);
    /* re-pushing a deleted version works: immutability is about existing versions */
    assert_int_equal(push(f->d, ORG_A, "dataset", "d", "1.0.0", DIGEST_1, &err), 0);
}

static void test_create_inside_caller_transaction(void **state) {
    fixture *f = *state;
    lt_err err;
    assert_int_equal(db_begin_immediate(f->d, &err), 0);
    assert_int_equal(push(f->d, ORG_A, "task", "t", "1.0.0", DIGEST_1, &err), 0);
    db_rollback(f->d); /* the caller changes its mind: nothing stays */
    artifact_version v;
    assert_int_equal(artifacts_get(f->d, ORG_A, "task", "t", NULL, &v, &err), -1);
    assert_int_equal(err.code, 404);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kinds),
        cmocka_unit_test_setup_teardown(test_create_get_latest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_capability_prompt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_immutable_and_bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_versions_and_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_inside_caller_transaction, setup, teardown),
    };
    return cmocka_run_group_tests_name("artifacts_store", tests, NULL, NULL);
}
