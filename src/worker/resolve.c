/* resolve.c: everything a job names, from the store and the blob store, turned into trainer inputs.
 *
 * Artifacts are read the way they were pushed: the version record (artifacts_get) gives the blob, the blob is
 * a tar/tar.gz archive, the archive is unpacked in memory and its rows loaded with the split the job uses
 * (docs/spec.md §3.1): training and prompt data {"train"} (RL's prompt_split instead when set), eval data
 * {"validation", "test"}, all rows when the dataset has none of those. Files of the rows are named
 * "<dataset>@<version>/<file>" so that a trainer's message about a row says which dataset it came from.
 *
 * The model is a catalog id (base model from models.c) or an adapter target jobs/<id>[/checkpoints/<name>]:
 * that job's base model (followed through its own adapter target, if any) plus the checkpoint's tar unpacked
 * into <work dir>/init-adapter. Without a name the job's "final" checkpoint is used, else its latest. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/artifacts.h"
#include "store/jobs.h"
#include "util/archive.h"
#include "util/json.h"
#include "util/log.h"
#include "util/util.h"
#include "worker/worker_internal.h"

#define ADAPTER_DEPTH_MAX 8

static const char *jstr(const json_t *o, const char *k) {
    return json_string_value(json_object_get(o, k));
}

/* One member of an unpacked archive written under dir, its directories made. */
static int write_item(const char *dir, const archive_item *it, lt_err *err) {
    char *path = lt_path_join(dir, it->path);
    char *slash = strrchr(path, '/');
    int rc = 0;
    if (slash) {
        *slash = '\0';
        rc = lt_mkdir_p(path, 0755, err);
        *slash = '/';
    }
    if (rc == 0) rc = lt_write_file_atomic(path, it->data, it->size, 0644, err);
    free(path);
    return rc;
}

int wk_unpack_blob(blob_store *bs, const char *digest, const char *dir, lt_err *err) {
    size_t n = 0;
    char *buf = blob_read(bs, digest, &n, err);
    if (!buf) return -1;
    archive_items items = ARCHIVE_ITEMS_INIT;
    int rc = archive_unpack_mem(buf, n, NULL, &items, err);
    free(buf);
    if (rc == 0) rc = lt_mkdir_p(dir, 0755, err);
    for (size_t i = 0; rc == 0 && i < items.n; i++)
        rc = write_item(dir, &items.v[i], err);
    archive_items_free(&items);
    return rc;
}

/* Appends b's rows to a (b is emptied). */
static void rows_merge(rows_set *a, rows_set *b) {
    if (!a->rows) {
        *a = *b;
        memset(b, 0, sizeof *b);
        return;
    }
    size_t n = a->n + b->n, nf = a->nfiles + b->nfiles;
    a->lines = lt_xrealloc(a->lines, (n ? n : 1) * sizeof *a->lines);
    a->file = lt_xrealloc(a->file, (n ? n : 1) * sizeof *a->file);
    a->files = lt_xrealloc(a->files, (nf ? nf : 1) * sizeof *a->files);
    a->splits = lt_xrealloc(a->splits, (nf ? nf : 1) * sizeof *a->splits);
    for (size_t i = 0; i < b->n; i++) {
        a->lines[a->n + i] = b->lines[i];
        a->file[a->n + i] = b->file[i] + a->nfiles;
    }
    for (size_t k = 0; k < b->nfiles; k++) {
        a->files[a->nfiles + k] = b->files[k];
        a->splits[a->nfiles + k] = b->splits[k];
    }
    json_array_extend(a->rows, b->rows);
    a->n = n;
    a->cap = n;
    a->nfiles = nf;
    json_decref(b->rows);
    free(b->lines);
    free(b->file);
    free(b->files);
    free(b->splits);
    memset(b, 0, sizeof *b);
}

/* The rows of dataset version v in the split use (NULL: rows_pick_split with prefs). */
static int load_rows(const worker_opts *o, const artifact_version *v, const char *split,
                     const char *const *prefs, rows_set *out, lt_err *err) {
    size_t n = 0;
    char *buf = blob_read(o->blobs, v->blob_digest, &n, err);
    if (!buf) return -1;
    archive_items items = ARCHIVE_ITEMS_INIT;
    int rc = archive_unpack_mem(buf, n, NULL, &items, err);
    free(buf);
    if (rc == 0) rc = archive_items_root(&items, "dataset.yaml", err);
    if (rc == 0) {
        const char *use = split ? split : rows_pick_split(v->manifest, prefs);
        rows_loc loc;
        memset(out, 0, sizeof *out);
        rc = rows_load(&items, v->manifest, use, out, &loc, err);
    }
    archive_items_free(&items);
    return rc;
}

/* Loads the rows of dataset ref {name, version} of org; prefs as for rows_pick_split (split != NULL wins).
 * *label receives "name@version". */
static int load_dataset(const worker_opts *o, const char *org, const json_t *ref, const char *split,
                        const char *const *prefs, rows_set *out, char *label, size_t label_len, lt_err *err) {
    const char *name = jstr(ref, "name"), *version = jstr(ref, "version");
    if (!name) return lt_err_set(err, 422, "a dataset reference of the job has no name");
    const char *slash = strchr(name, '/');
    if (slash) name = slash + 1; /* "org/name": the job's own org (checked on submit) */
    artifact_version v;
    if (artifacts_get(o->db, org, "dataset", name, version, &v, err) != 0) {
        if (err->code == 404)
            lt_err_prefix(err, "dataset '%s%s%s' of the job is gone: ", name, version ? "@" : "",
                          version ? version : "");
        return -1;
    }
    snprintf(label, label_len, "%s@%s", v.name, v.version);
    int rc = load_rows(o, &v, split, prefs, out, err);
    artifact_version_free(&v);
    if (rc != 0) {
        lt_err_prefix(err, "dataset %s: ", label);
        return -1;
    }
    for (size_t k = 0; k < out->nfiles; k++) {
        size_t len = strlen(label) + strlen(out->files[k]) + 2;
        char *f = lt_xmalloc(len);
        snprintf(f, len, "%s/%s", label, out->files[k]);
        free(out->files[k]);
        out->files[k] = f;
    }
    return 0;
}

/* The checkpoint of job id (a model 'jobs/<id>[/checkpoints/<name>]'; rest is what follows the id) into
 * name: the one named, else "final", else the last by step. */
static int pick_checkpoint(const worker_opts *o, const char *model, const char *id, const char *rest,
                           char name[256], lt_err *err) {
    name[0] = '\0';
    if (rest) {
        if (strncmp(rest, "/checkpoints/", 13) != 0)
            return lt_err_set(err, 404, "model '%s' not found", model);
        snprintf(name, 256, "%s", rest + 13);
        return 0;
    }
    json_t *cks = NULL;
    int rc = jobs_checkpoints(o->db, id, &cks, err);
    size_t i;
    json_t *c;
    json_array_foreach(cks, i, c) {
        const char *cn = jstr(c, "name");
        if (cn && (strcmp(cn, "final") == 0 || strcmp(name, "final") != 0))
            snprintf(name, 256, "%s", cn); /* by step: the last one, "final" preferred */
    }
    json_decref(cks);
    if (rc != 0) return -1;
    if (!name[0]) return lt_err_set(err, 404, "model '%s': that job has no checkpoint any more", model);
    return 0;
}

/* The blob of job id's checkpoint (pick_checkpoint) into adapter_blob, and its label. */
static int checkpoint_blob(const worker_opts *o, const char *model, const char *id, const char *rest,
                           char adapter_blob[BLOB_DIGEST_LEN], char *adapter_label, size_t label_len,
                           lt_err *err) {
    char name[256];
    if (pick_checkpoint(o, model, id, rest, name, err) != 0) return -1;
    if (jobs_checkpoint_blob(o->db, id, name, adapter_blob, NULL, err) != 0) {
        if (err->code == 404)
            lt_err_set(err, 404, "model '%s': that job has no checkpoint '%s'", model, name);
        return -1;
    }
    snprintf(adapter_label, label_len, "jobs/%s/checkpoints/%s", id, name);
    return 0;
}

/* A catalog id for model, following adapter targets; the first adapter target's checkpoint blob goes to
 * *adapter_blob (when adapter_blob[0] is still empty). */
static int resolve_model(const worker_opts *o, const char *ws, const char *model, int depth, char **base_id,
                         char adapter_blob[BLOB_DIGEST_LEN], char *adapter_label, size_t label_len,
                         lt_err *err) {
    if (strncmp(model, "jobs/", 5) != 0) {
        *base_id = lt_strdup(model);
        return 0;
    }
    if (depth >= ADAPTER_DEPTH_MAX)
        return lt_err_set(err, 422, "model '%s': adapter targets nest more than %d deep", model,
                          ADAPTER_DEPTH_MAX);
    char id[LT_UUID_LEN];
    const char *rest = model + 5, *slash = strchr(rest, '/');
    size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
    if (n != LT_UUID_LEN - 1) return lt_err_set(err, 404, "model '%s' not found", model);
    memcpy(id, rest, n);
    id[n] = '\0';
    json_t *job = NULL;
    if (jobs_get(o->db, ws, id, &job, err) != 0) {
        if (err->code == 404) lt_err_set(err, 404, "model '%s': the job it names no longer exists", model);
        return -1;
    }
    int rc = -1;
    if (!adapter_blob[0] &&
        checkpoint_blob(o, model, id, slash, adapter_blob, adapter_label, label_len, err) != 0)
        goto out;
    const char *m = jstr(job, "model");
    rc = m ? resolve_model(o, ws, m, depth + 1, base_id, adapter_blob, adapter_label, label_len, err)
           : lt_err_set(err, 500, "job '%s' has no model", id);
out:
    json_decref(job);
    return rc;
}

/* ---- wk_resolve's phases: each fills its part of out and its entries of out->artifacts (in this order) */

static int resolve_capability(const worker_opts *o, const char *org, wk_job *out, lt_err *err) {
    const json_t *cap = json_object_get(out->job, "capability");
    artifact_version v;
    if (artifacts_get(o->db, org, "capability", jstr(cap, "name") ? jstr(cap, "name") : "",
                      jstr(cap, "version"), &v, err) != 0) {
        if (err->code == 404) lt_err_prefix(err, "the job's capability is gone: ");
        return -1;
    }
    char label[300];
    out->capability_prompt = lt_strdup(v.prompt ? v.prompt : "");
    snprintf(label, sizeof label, "%s@%s", v.name, v.version);
    json_object_set_new(out->artifacts, "capability", json_string(label));
    artifact_version_free(&v);
    return 0;
}

static const char *const TRAIN[] = {"train", NULL};
static const char *const EVAL[] = {"validation", "test", NULL};

/* The training (RL: prompt) dataset, then the trajectory datasets merged into it (RL: into trajectories),
 * then the eval dataset. */
static int resolve_datasets(const worker_opts *o, const char *org, int rl, wk_job *out, lt_err *err) {
    const json_t *eff = out->eff;
    char label[300];
    const json_t *ds = json_object_get(eff, rl ? "prompt_dataset_ref" : "dataset_ref");
    if (json_is_object(ds)) {
        const char *split = rl ? jstr(eff, "prompt_split") : NULL;
        if (load_dataset(o, org, ds, split, TRAIN, &out->train, label, sizeof label, err) != 0) return -1;
        out->has_train = 1;
        snprintf(out->dataset_name, sizeof out->dataset_name, "%s", label);
        json_object_set_new(out->artifacts, rl ? "prompt_dataset" : "dataset", json_string(label));
    } else {
        json_object_set_new(out->artifacts, rl ? "prompt_dataset" : "dataset", json_null());
    }
    json_t *trajs = json_array();
    json_object_set_new(out->artifacts, "trajectory_datasets", trajs);
    size_t i;
    json_t *ref;
    json_array_foreach(json_object_get(eff, "trajectory_dataset_refs"), i, ref) {
        rows_set one;
        if (load_dataset(o, org, ref, NULL, TRAIN, &one, label, sizeof label, err) != 0) return -1;
        json_array_append_new(trajs, json_string(label));
        if (rl) {
            rows_merge(&out->trajectories, &one);
            out->has_trajectories = 1;
        } else {
            if (out->has_train) out->dataset_name[0] = '\0'; /* merged */
            rows_merge(&out->train, &one);
            out->has_train = 1;
        }
    }
    const json_t *ev = json_object_get(eff, "eval_dataset_ref");
    if (!json_is_object(ev)) {
        json_object_set_new(out->artifacts, "eval_dataset", json_null());
        return 0;
    }
    if (load_dataset(o, org, ev, NULL, EVAL, &out->eval, label, sizeof label, err) != 0) return -1;
    out->has_eval = 1;
    json_object_set_new(out->artifacts, "eval_dataset", json_string(label));
    return 0;
}

/* task_ref "[org/]name[@version]" (effective_config's, else the job's). */
static int resolve_task(const worker_opts *o, const char *org, int rl, wk_job *out, lt_err *err) {
    const char *task_ref = jstr(out->eff, "task_ref");
    if (!task_ref) task_ref = jstr(out->job, "task_ref");
    char label[300] = "";
    if (task_ref) {
        char *name, *version;
        lt_ref_split(task_ref, &name, &version);
        const char *bare = strchr(name, '/') ? strchr(name, '/') + 1 : name;
        artifact_version v;
        int rc = artifacts_get(o->db, org, "task", bare, version, &v, err);
        free(name);
        free(version);
        if (rc != 0) {
            if (err->code == 404) lt_err_prefix(err, "the job's task '%s' is gone: ", task_ref);
            return -1;
        }
        out->task = json_incref(v.manifest);
        snprintf(label, sizeof label, "%s@%s", v.name, v.version);
        artifact_version_free(&v);
    }
    if (rl) {
        json_object_set_new(out->artifacts, "task", lt_json_str_or_null(task_ref ? label : NULL));
        json_object_set_new(out->artifacts, "execution_mode",
                            lt_json_str_or_null(jstr(out->eff, "execution_mode")));
    }
    return 0;
}

/* The base model (through adapter targets) held from the catalog, the start adapter unpacked into
 * <work_dir>/init-adapter, and a job log line saying which. */
static int resolve_base(const worker_opts *o, const char *ws, const char *work_dir, wk_job *out,
                        lt_err *err) {
    const char *model = jstr(out->job, "model"), *id = jstr(out->job, "id");
    if (!model) return lt_err_set(err, 500, "the job has no model");
    char *base_id = NULL, blob[BLOB_DIGEST_LEN] = "", adapter[400] = "";
    int rc = -1, shared = 0;
    if (resolve_model(o, ws, model, 0, &base_id, blob, adapter, sizeof adapter, err) != 0) goto out;
    if (blob[0]) {
        out->init_adapter = lt_path_join(work_dir, "init-adapter");
        if (wk_unpack_blob(o->blobs, blob, out->init_adapter, err) != 0) {
            lt_err_prefix(err, "cannot unpack the start adapter %s: ", adapter);
            goto out;
        }
    }
    if (wk_model_acquire(o->models_dir, base_id, &out->model, &shared, err) != 0) goto out;
    char msg[600];
    snprintf(msg, sizeof msg, "base model %s %s%s%s", base_id,
             shared ? "shared with a running job (already loaded)" : "loaded", adapter[0] ? "; adapter " : "",
             adapter);
    lt_err e;
    jobs_log_add(o->db, id, JOBS_LOG_INFO, msg, NULL, &e);
    lt_log(LOG_INFO, "job %s: %s", id, msg);
    rc = 0;
out:
    free(base_id);
    return rc;
}

int wk_resolve(const worker_opts *o, json_t *job, const char *work_dir, wk_job *out, lt_err *err) {
    memset(out, 0, sizeof *out);
    out->job = json_incref(job);
    out->eff = json_object_get(job, "effective_config");
    out->artifacts = json_object();
    const char *org = jstr(job, "organization_id"), *ws = jstr(job, "workspace_id");
    int rl = strcmp(jstr(job, "trainer_type") ? jstr(job, "trainer_type") : "", "rl") == 0;
    if (resolve_capability(o, org, out, err) != 0 || resolve_datasets(o, org, rl, out, err) != 0 ||
        resolve_task(o, org, rl, out, err) != 0 || resolve_base(o, ws, work_dir, out, err) != 0) {
        wk_job_free(out);
        return -1;
    }
    return 0;
}

void wk_job_free(wk_job *j) {
    json_decref(j->job);
    free(j->capability_prompt);
    rows_set_free(&j->train);
    rows_set_free(&j->trajectories);
    rows_set_free(&j->eval);
    json_decref(j->task);
    wk_model_release(j->model);
    free(j->init_adapter);
    json_decref(j->artifacts);
    memset(j, 0, sizeof *j);
}
