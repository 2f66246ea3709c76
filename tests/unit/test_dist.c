/* Unit tests for train/dist: the rows files the ranks read back, what tr_rl_dist_run (rl_dist.c) writes for
 * the ranks, the transport outside MPI, and the launcher's errors (no model dir, no mpirun, mpirun failing at
 * once). The MPI exchange itself runs under mpirun in tests/py/test_dist.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "train/dist.h"
#include "train/rl.h"
#include "util/util.h"

static rows_set sample_rows(void) {
    rows_set s;
    memset(&s, 0, sizeof s);
    s.rows =
        json_loads("[{\"prompt\":\"2+2?\",\"answer\":\"4\"},{\"messages\":[{\"role\":\"user\",\"content\":"
                   "\"h\\u00e9\"}]},{\"question\":\"q\",\"reward\":0.5}]",
                   0, NULL);
    s.n = s.cap = 3;
    s.lines = calloc(3, sizeof *s.lines);
    s.file = calloc(3, sizeof *s.file);
    s.lines[0] = 1;
    s.lines[1] = 7;
    s.lines[2] = 2;
    s.file[0] = 0;
    s.file[1] = 0;
    s.file[2] = 1;
    s.nfiles = 2;
    s.files = calloc(2, sizeof *s.files);
    s.splits = calloc(2, sizeof *s.splits);
    s.files[0] = lt_strdup("data/train.jsonl");
    s.files[1] = lt_strdup("data/more.csv");
    s.splits[0] = lt_strdup("train");
    s.splits[1] = lt_strdup("train");
    return s;
}

static void assert_rows_equal(const rows_set *a, const rows_set *b) {
    assert_int_equal(a->n, b->n);
    assert_int_equal(a->nfiles, b->nfiles);
    assert_true(json_equal(a->rows, b->rows));
    for (size_t i = 0; i < a->n; i++) {
        assert_int_equal(a->lines[i], b->lines[i]);
        assert_int_equal(a->file[i], b->file[i]);
    }
    for (size_t k = 0; k < a->nfiles; k++) {
        assert_string_equal(a->files[k], b->files[k]);
        assert_string_equal(a->splits[k], b->splits[k]);
    }
}

static void test_rows_round_trip(void **state) {
    rows_set s = sample_rows(), back;
    json_t *j = tr_rl_rows_to_json(&s);
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    json_t *j2 = json_loads(text, 0, NULL);
    free(text);
    lt_err err = {0};
    assert_int_equal(tr_rl_rows_from_json(j2, &back, "train.json", &err), 0);
    json_decref(j2);
    assert_rows_equal(&s, &back);
    rows_set_free(&back);
    rows_set_free(&s);

    /* an empty set survives too */
    rows_set e;
    memset(&e, 0, sizeof e);
    j = tr_rl_rows_to_json(&e);
    assert_int_equal(tr_rl_rows_from_json(j, &back, "eval.json", &err), 0);
    assert_int_equal(back.n, 0);
    assert_int_equal(json_array_size(back.rows), 0);
    json_decref(j);
    rows_set_free(&back);
}

static void test_rows_bad_file(void **state) {
    rows_set back;
    lt_err err = {0};
    json_t *j = json_loads("{\"rows\":[{}],\"lines\":[],\"file\":[0],\"files\":[],\"splits\":[]}", 0, NULL);
    assert_int_equal(tr_rl_rows_from_json(j, &back, "/w/dist/train.json", &err), -1);
    assert_string_equal(err.msg, "/w/dist/train.json: not a rows file written by dist_run");
    json_decref(j);
}

static void test_transport_outside_mpi(void **state) {
    assert_int_equal(dist_rank(), 0);
    assert_int_equal(dist_size(), 1);
    char b[4] = "abc";
    assert_int_equal(dist_bcast(b, sizeof b, 0), 0); /* one process: nothing to do */
    assert_int_equal(dist_barrier(), 0);
    assert_int_equal(dist_send(0, 1, b, sizeof b), -1);
    void *buf = (void *)1;
    size_t n = 9;
    assert_int_equal(dist_recv(-1, 1, &buf, &n, NULL), -1);
    assert_null(buf);
    assert_int_equal(n, 0);
    assert_int_equal(dist_probe(1, NULL), -1);
}

static int ev_count;
static int count_event(void *ud, const json_t *ev, lt_err *err) {
    ev_count++;
    return 0;
}
static int never_stop(void *ud) {
    return 0;
}

typedef struct fixture {
    char dir[64];
    char *model_dir;
    rows_set train;
    json_t *job, *eff;
    tr_inputs in;
    tr_hooks h;
} fixture;

static void fixture_init(fixture *f) {
    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/lathe-test-dist-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    f->model_dir = lt_path_join(f->dir, "model");
    lt_err err;
    assert_int_equal(lt_mkdir_p(f->model_dir, 0755, &err), 0);
    f->train = sample_rows();
    f->job = json_pack("{s:s, s:s}", "id", "job-1", "backend", "ray");
    f->eff = json_pack("{s:s, s:i}", "execution_mode", "distributed", "num_rollout_workers", 2);
    f->in = (tr_inputs){.job = f->job,
                        .eff = f->eff,
                        .model_id = "tiny/test",
                        .model_dir = f->model_dir,
                        .capability_prompt = "Be brief.",
                        .train = &f->train,
                        .dataset_name = "d@1",
                        .work_dir = f->dir,
                        .threads = 2,
                        .seed = 18446744073709551615ull};
    f->h = (tr_hooks){.event = count_event, .stop = never_stop};
}

static void fixture_free(fixture *f) {
    lt_rm_rf(f->dir);
    free(f->model_dir);
    rows_set_free(&f->train);
    json_decref(f->job);
    json_decref(f->eff);
}

static void test_no_model_dir(void **state) {
    fixture f;
    fixture_init(&f);
    f.in.model_dir = NULL;
    lt_err err = {0};
    json_t *fm = (json_t *)1;
    assert_int_equal(tr_rl_dist_run(&f.in, &f.h, 3, &fm, &err), TR_FAILED);
    assert_null(fm);
    assert_non_null(strstr(err.msg, "tr_inputs.model_dir is not set"));
    fixture_free(&f);
}

/* Without mpirun the job is still written (what the ranks would read), then the error says what to install.
 */
static void test_no_mpirun_writes_job_and_explains(void **state) {
    fixture f;
    fixture_init(&f);
    char *old_path = lt_strdup(getenv("PATH"));
    setenv("PATH", f.dir, 1);
    unsetenv("LATHE_MPIRUN");
    lt_err err = {0};
    json_t *fm = NULL;
    assert_int_equal(tr_rl_dist_run(&f.in, &f.h, 3, &fm, &err), TR_FAILED);
    setenv("PATH", old_path, 1);
    free(old_path);
    assert_int_equal(err.code, 500);
    assert_string_equal(err.msg,
                        "execution_mode distributed needs OpenMPI, but 'mpirun' was not found on PATH: "
                        "install openmpi-bin (scripts/setup.sh), or set LATHE_MPIRUN to the mpirun "
                        "program");

    char *jp = lt_path_join(f.dir, "dist/job.json");
    json_t *job = json_load_file(jp, 0, NULL);
    free(jp);
    assert_non_null(job);
    assert_string_equal(json_string_value(json_object_get(job, "mode")), "rl");
    assert_true(json_equal(json_object_get(job, "job"), f.job));
    assert_true(json_equal(json_object_get(job, "eff"), f.eff));
    assert_string_equal(json_string_value(json_object_get(job, "model_id")), "tiny/test");
    char *real_model = realpath(f.model_dir, NULL);
    assert_string_equal(json_string_value(json_object_get(job, "model_dir")), real_model);
    free(real_model);
    assert_string_equal(json_string_value(json_object_get(job, "capability_prompt")), "Be brief.");
    assert_string_equal(json_string_value(json_object_get(job, "seed")), "18446744073709551615");
    assert_int_equal(json_integer_value(json_object_get(job, "threads")), 1); /* one engine thread per rank */
    assert_true(json_is_null(json_object_get(job, "init_adapter")));
    assert_int_equal(json_integer_value(json_object_get(job, "parent_pid")), getpid());
    json_decref(job);

    char *tp = lt_path_join(f.dir, "dist/train.json");
    json_t *tj = json_load_file(tp, 0, NULL);
    rows_set back;
    assert_int_equal(tr_rl_rows_from_json(tj, &back, tp, &err), 0);
    assert_rows_equal(&f.train, &back);
    rows_set_free(&back);
    json_decref(tj);
    free(tp);
    char *ep = lt_path_join(f.dir, "dist/eval.json");
    assert_int_not_equal(access(ep, F_OK), 0); /* no eval rows: no file */
    free(ep);
    fixture_free(&f);
}

/* An "mpirun" that fails at once: no rank started, so the error quotes mpirun's own output. */
static void test_mpirun_fails_at_once(void **state) {
    fixture f;
    fixture_init(&f);
    char *fake = lt_path_join(f.dir, "fake-mpirun");
    const char *script = "#!/bin/sh\necho 'no slots available for 3 processes' >&2\nexit 7\n";
    lt_err err = {0};
    assert_int_equal(lt_write_file_atomic(fake, script, strlen(script), 0755, &err), 0);
    setenv("LATHE_MPIRUN", fake, 1);
    ev_count = 0;
    json_t *fm = NULL;
    assert_int_equal(tr_rl_dist_run(&f.in, &f.h, 3, &fm, &err), TR_FAILED);
    unsetenv("LATHE_MPIRUN");
    assert_null(fm);
    assert_int_equal(ev_count, 0);
    assert_non_null(strstr(err.msg, "distributed run failed: mpirun exit status 7; "));
    assert_non_null(strstr(err.msg, "mpirun.log: no slots available for 3 processes"));
    assert_null(strstr(err.msg, "(rank"));
    free(fake);
    fixture_free(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rows_round_trip),
        cmocka_unit_test(test_rows_bad_file),
        cmocka_unit_test(test_transport_outside_mpi),
        cmocka_unit_test(test_no_model_dir),
        cmocka_unit_test(test_no_mpirun_writes_job_and_explains),
        cmocka_unit_test(test_mpirun_fails_at_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
