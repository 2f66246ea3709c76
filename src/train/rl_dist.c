/* rl_dist.c: a distributed Ray GRPO job on dist.h's launcher: the parent writes the job's inputs (the
 * resolved config, paths every rank opens, the rows sets) into DIR, and each rank (job.json mode "rl") loads
 * them back, opens the base model and tokenizer itself, and runs tr_rl_rank_main (rl.c). The rows files are
 * {rows, lines, file, files, splits}, so that a rank's errors name the same dataset file and line as a local
 * run's. */
#include "train/rl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "train/dist.h"
#include "util/util.h"

/* ---------------------------------------------------------------- rows files */

json_t *tr_rl_rows_to_json(const rows_set *s) {
    json_t *o = json_object();
    json_object_set_new(o, "rows", s->rows ? json_incref(s->rows) : json_array());
    json_t *lines = json_array(), *file = json_array(), *files = json_array(), *splits = json_array();
    for (size_t i = 0; i < s->n; i++) {
        json_array_append_new(lines, json_integer(s->lines ? s->lines[i] : 0));
        json_array_append_new(file, json_integer(s->file ? (json_int_t)s->file[i] : 0));
    }
    for (size_t k = 0; k < s->nfiles; k++) {
        json_array_append_new(files, json_string(s->files[k] ? s->files[k] : ""));
        json_array_append_new(splits, json_string(s->splits && s->splits[k] ? s->splits[k] : ""));
    }
    json_object_set_new(o, "lines", lines);
    json_object_set_new(o, "file", file);
    json_object_set_new(o, "files", files);
    json_object_set_new(o, "splits", splits);
    return o;
}

int tr_rl_rows_from_json(const json_t *o, rows_set *s, const char *path, lt_err *err) {
    memset(s, 0, sizeof *s);
    json_t *rows = json_object_get(o, "rows"), *lines = json_object_get(o, "lines"),
           *file = json_object_get(o, "file"), *files = json_object_get(o, "files"),
           *splits = json_object_get(o, "splits");
    if (!json_is_array(rows) || !json_is_array(lines) || !json_is_array(file) || !json_is_array(files) ||
        !json_is_array(splits) || json_array_size(lines) != json_array_size(rows) ||
        json_array_size(file) != json_array_size(rows) || json_array_size(splits) != json_array_size(files))
        return lt_err_set(err, 500, "%s: not a rows file written by dist_run", path);
    s->n = s->cap = json_array_size(rows);
    s->nfiles = json_array_size(files);
    s->rows = json_incref(rows);
    s->lines = lt_xcalloc(s->n ? s->n : 1, sizeof *s->lines);
    s->file = lt_xcalloc(s->n ? s->n : 1, sizeof *s->file);
    s->files = lt_xcalloc(s->nfiles ? s->nfiles : 1, sizeof *s->files);
    s->splits = lt_xcalloc(s->nfiles ? s->nfiles : 1, sizeof *s->splits);
    for (size_t i = 0; i < s->n; i++) {
        s->lines[i] = (long)json_integer_value(json_array_get(lines, i));
        s->file[i] = (size_t)json_integer_value(json_array_get(file, i));
    }
    for (size_t k = 0; k < s->nfiles; k++) {
        s->files[k] = lt_strdup(json_string_value(json_array_get(files, k)) ?: "");
        s->splits[k] = lt_strdup(json_string_value(json_array_get(splits, k)) ?: "");
    }
    return 0;
}

/* ---------------------------------------------------------------- rank side (mode "rl") */

/* DIR/<name>.json (written by tr_rl_dist_run) into s; *have 0 when the job had no such set. */
static int load_rows(const char *dir, const char *name, rows_set *s, int *have, lt_err *err) {
    *have = 0;
    char fname[64];
    snprintf(fname, sizeof fname, "%s.json", name);
    char *p = lt_path_join(dir, fname);
    if (access(p, F_OK) != 0) {
        free(p);
        return 0;
    }
    json_t *j = dist_read_json(p, err);
    int rc = j ? tr_rl_rows_from_json(j, s, p, err) : -1;
    json_decref(j);
    free(p);
    if (rc == 0) *have = 1;
    return rc;
}

int tr_rl_rank_job(const char *dir, const json_t *job, const tr_hooks *h, json_t **final, lt_err *err) {
    tr_inputs in;
    memset(&in, 0, sizeof in);
    rows_set train, traj, eval;
    int have_train = 0, have_traj = 0, have_eval = 0;
    memset(&train, 0, sizeof train);
    memset(&traj, 0, sizeof traj);
    memset(&eval, 0, sizeof eval);
    eng_engine *base = NULL;
    eng_tokenizer *tok = NULL;
    int rc = TR_FAILED;
    if (load_rows(dir, "train", &train, &have_train, err) != 0 ||
        load_rows(dir, "trajectories", &traj, &have_traj, err) != 0 ||
        load_rows(dir, "eval", &eval, &have_eval, err) != 0)
        goto out;
    const char *model_dir = json_string_value(json_object_get(job, "model_dir"));
    const char *model_id = json_string_value(json_object_get(job, "model_id"));
    int threads = (int)json_integer_value(json_object_get(job, "threads"));
    if (threads < 1) threads = 1;
    eng_set_threads(threads);
    if (!model_dir) {
        lt_err_set(err, 500, "%s/job.json: no model_dir", dir);
        goto out;
    }
    base = eng_open(model_dir, NULL, model_id, err);
    if (!base) {
        lt_err_prefix(err, "rank %d: base model %s: ", dist_rank(), model_dir ? model_dir : "(none)");
        goto out;
    }
    tok = eng_tok_load(model_dir, err);
    if (!tok) {
        lt_err_prefix(err, "rank %d: ", dist_rank());
        goto out;
    }
    const char *seed = json_string_value(json_object_get(job, "seed"));
    in.job = json_object_get(job, "job");
    in.eff = json_object_get(job, "eff");
    in.base = base;
    in.tok = tok;
    in.model_id = model_id;
    in.model_dir = model_dir;
    in.init_adapter = json_string_value(json_object_get(job, "init_adapter"));
    in.capability_prompt = json_string_value(json_object_get(job, "capability_prompt")) ?: "";
    in.train = have_train ? &train : NULL;
    in.trajectories = have_traj ? &traj : NULL;
    in.eval = have_eval ? &eval : NULL;
    in.dataset_name = json_string_value(json_object_get(job, "dataset_name")) ?: "";
    in.task = json_object_get(job, "task");
    if (json_is_null(in.task)) in.task = NULL;
    in.work_dir = json_string_value(json_object_get(job, "work_dir"));
    in.resume_dir = json_string_value(json_object_get(job, "resume_dir"));
    in.threads = threads;
    in.seed = seed ? strtoull(seed, NULL, 10) : 0;
    rc = tr_rl_rank_main(&in, h, final, err);
out:
    eng_tok_free(tok);
    eng_close(base);
    rows_set_free(&train);
    rows_set_free(&traj);
    rows_set_free(&eval);
    return rc;
}

/* ---------------------------------------------------------------- parent side */

static int rank_threads(void) {
    const char *t = getenv("LATHE_RANK_THREADS");
    int n = t && *t ? atoi(t) : 1;
    return n >= 1 ? n : 1;
}

int tr_rl_dist_run(const tr_inputs *in, const tr_hooks *h, int nranks, json_t **final_metrics, lt_err *err) {
    if (final_metrics) *final_metrics = NULL;
    if (!in->model_dir)
        return lt_err_set(
            err, 500,
            "distributed run: tr_inputs.model_dir is not set (the worker must pass the base model's "
            "directory so that every rank can open it)");
    char *dir = dist_prepare_dir(in->work_dir, err);
    if (!dir) return TR_FAILED;
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)in->seed);
    char *wd = dist_abs_path(in->work_dir), *md = dist_abs_path(in->model_dir),
         *ia = dist_abs_path(in->init_adapter), *rd = dist_abs_path(in->resume_dir);
    json_t *job = json_pack("{s:s, s:O?, s:O?, s:s, s:s?, s:s?, s:s?, s:s, s:s, s:O?, s:s, s:s, s:i}", "mode",
                            "rl", "job", in->job, "eff", in->eff, "model_dir", md, "model_id", in->model_id,
                            "init_adapter", ia, "resume_dir", rd, "capability_prompt",
                            in->capability_prompt ? in->capability_prompt : "", "dataset_name",
                            in->dataset_name ? in->dataset_name : "", "task", in->task, "work_dir", wd,
                            "seed", seed, "threads", rank_threads());
    free(wd);
    free(md);
    free(ia);
    free(rd);
    int rc = TR_FAILED;
    if (!job) {
        lt_err_set(err, 500, "distributed run: cannot encode the job for the ranks");
        goto out;
    }
    const struct {
        const char *name;
        const rows_set *s;
    } sets[] = {{"train", in->train}, {"trajectories", in->trajectories}, {"eval", in->eval}};
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++) {
        if (!sets[i].s) continue;
        char fname[64];
        snprintf(fname, sizeof fname, "%s.json", sets[i].name);
        char *p = lt_path_join(dir, fname);
        json_t *j = tr_rl_rows_to_json(sets[i].s);
        int wrc = dist_write_json(p, j, err);
        json_decref(j);
        free(p);
        if (wrc != 0) goto out;
    }
    rc = dist_launch(dir, job, h, nranks, final_metrics, err);
out:
    json_decref(job);
    free(dir);
    return rc;
}
