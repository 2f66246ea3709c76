/* jobs.c: training jobs, their logs and checkpoints, and the job queue, on the portable SQL runner.
 *
 * One row per job in `jobs`. The columns that routes filter or the queue scans on are real columns (status,
 * backend, trainer_type, project_ref, workspace, seq, lease); the rest of the job object lives in JSON text
 * columns: `spec` holds what came from the create body (config, effective_config, references, capability
 * snapshot, tags), `metrics`, `artifacts` and `progress` hold what the worker reported. `seq` is a creation
 * counter (MAX + 1 under the write lock) that orders jobs newest first and the queue oldest first even when
 * two jobs share a millisecond. `updated_at` only ever grows (at least +1 ms per change), so a stream that
 * polls it never misses a change.
 *
 * Every state change runs in one write transaction (BEGIN IMMEDIATE on SQLite; on PostgreSQL the claim adds
 * FOR UPDATE SKIP LOCKED): read the row, check the transition, write it, add a log line. The claim also
 * conditions its UPDATE on `status = 'queued'` and checks the changed-row count, so even two claimers that
 * picked the same row cannot both win.
 *
 * Logs are numbered per job (MAX(seq) + 1 in the same transaction), carry the attempt they belong to, and
 * are kept across retries. The progress merge rule (docs/spec.md §4.1) is applied here, so the E10 route and
 * an in-process worker produce identical jobs. */
#include "store/jobs.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/strbuf.h"

const db_migration db_migrations_jobs[] = {
    {"jobs, job_refs, job_tags, job_logs, job_checkpoints",
     "CREATE TABLE jobs ("
     " id TEXT PRIMARY KEY,"
     " seq INTEGER NOT NULL,"
     " org_id TEXT NOT NULL,"
     " workspace_id TEXT NOT NULL,"
     " status TEXT NOT NULL,"
     " name TEXT,"
     " backend TEXT NOT NULL,"
     " trainer_type TEXT NOT NULL,"
     " algorithm TEXT,"
     " model TEXT NOT NULL,"
     " project_ref TEXT,"
     " run_ref TEXT,"
     " task_ref TEXT,"
     " spec TEXT NOT NULL,"
     " metrics TEXT NOT NULL,"
     " artifacts TEXT NOT NULL,"
     " progress TEXT NOT NULL,"
     " error TEXT,"
     " attempt INTEGER NOT NULL,"
     " created_at INTEGER NOT NULL,"
     " created_by TEXT,"
     " created_by_user TEXT,"
     " started_at INTEGER,"
     " completed_at INTEGER,"
     " cancel_requested_at INTEGER,"
     " updated_at INTEGER NOT NULL,"
     " worker_id TEXT,"
     " lease_expires_at INTEGER"
     ");"
     "CREATE UNIQUE INDEX jobs_seq ON jobs(seq);"
     "CREATE INDEX jobs_ws_seq ON jobs(workspace_id, seq);"
     "CREATE INDEX jobs_status_seq ON jobs(status, seq);"
     "CREATE TABLE job_refs ("
     " job_id TEXT NOT NULL,"
     " org_id TEXT NOT NULL,"
     " kind TEXT NOT NULL,"
     " name TEXT NOT NULL,"
     " version TEXT NOT NULL"
     ");"
     "CREATE INDEX job_refs_job ON job_refs(job_id);"
     "CREATE INDEX job_refs_artifact ON job_refs(org_id, kind, name, version);"
     "CREATE TABLE job_tags (job_id TEXT NOT NULL, tag TEXT NOT NULL);"
     "CREATE INDEX job_tags_tag ON job_tags(tag, job_id);"
     "CREATE INDEX job_tags_job ON job_tags(job_id);"
     "CREATE TABLE job_logs ("
     " job_id TEXT NOT NULL,"
     " seq INTEGER NOT NULL,"
     " attempt INTEGER NOT NULL,"
     " ts INTEGER NOT NULL,"
     " level INTEGER NOT NULL,"
     " message TEXT NOT NULL,"
     " data TEXT NOT NULL,"
     " PRIMARY KEY (job_id, seq)"
     ");"
     "CREATE TABLE job_checkpoints ("
     " job_id TEXT NOT NULL,"
     " name TEXT NOT NULL,"
     " step INTEGER NOT NULL,"
     " created_at INTEGER NOT NULL,"
     " size_bytes INTEGER NOT NULL,"
     " digest TEXT NOT NULL,"
     " blob_digest TEXT NOT NULL,"
     " PRIMARY KEY (job_id, name)"
     ");"
     "CREATE INDEX job_checkpoints_blob ON job_checkpoints(blob_digest);"},
    /* The active-job quota counts a workspace's queued and running jobs on every create: without this
     * index that walked every job the workspace ever had, reading each row. */
    {"jobs by workspace and status", "CREATE INDEX jobs_ws_status ON jobs(workspace_id, status)"},
    {NULL, NULL},
};

const char *const jobs_statuses[JOBS_NSTATUS] = {"queued", "running", "completed", "failed", "cancelled"};

int jobs_status_valid(const char *s) {
    for (int i = 0; s && i < JOBS_NSTATUS; i++)
        if (strcmp(s, jobs_statuses[i]) == 0) return 1;
    return 0;
}

int jobs_status_terminal(const char *s) {
    return s && (strcmp(s, "completed") == 0 || strcmp(s, "failed") == 0 || strcmp(s, "cancelled") == 0);
}

static const char *const LEVELS[] = {"debug", "info", "warning", "error"};

int jobs_level_parse(const char *s) {
    for (int i = 0; s && i < 4; i++)
        if (strcmp(s, LEVELS[i]) == 0) return i;
    return -1;
}

const char *jobs_level_name(int level) {
    return level >= 0 && level < 4 ? LEVELS[level] : "info";
}

/* ---------------------------------------------------------------------------------------------------------
 * helpers */

static json_t *chk(json_t *j) {
    if (!j) abort(); /* out of memory building a small JSON value */
    return j;
}

static void oset(json_t *o, const char *k, json_t *v) {
    if (json_object_set_new(o, k, v ? v : json_null()) != 0) abort();
}

static char *dumps(const json_t *j) {
    char *s = json_dumps(j ? j : json_null(), JSON_COMPACT | JSON_ENCODE_ANY);
    if (!s) abort();
    return s;
}

/* A JSON text column, parsed; dflt (stolen) when NULL or unparsable. */
static json_t *col_json(db_stmt *s, int col, json_t *dflt) {
    const char *t = db_column_text(s, col);
    json_t *j = t ? json_loads(t, JSON_DECODE_ANY, NULL) : NULL;
    if (!j) return dflt;
    json_decref(dflt);
    return j;
}

static json_t *col_str(db_stmt *s, int col) {
    const char *t = db_column_text(s, col);
    return t ? chk(json_string(t)) : json_null();
}

static json_t *ms_json(int64_t ms) {
    char buf[LT_TIME_LEN];
    lt_time_fmt(ms, buf);
    return chk(json_string(buf));
}

static json_t *col_time(db_stmt *s, int col) {
    return db_column_is_null(s, col) ? json_null() : ms_json(db_column_int64(s, col));
}

static int tx_begin(db *d, int *own, lt_err *err) {
    *own = !db_in_transaction(d);
    return *own ? db_begin_immediate(d, err) : 0;
}

/* Ends a transaction begun by tx_begin: commits when rc is 0, else rolls back (only an own one). */
static int tx_end(db *d, int own, int rc, lt_err *err) {
    if (!own) return rc;
    if (rc != 0) {
        db_rollback(d);
        return rc;
    }
    return db_commit(d, err);
}

/* The updated_at value for a change now: strictly greater than the stored one. */
#define BUMP_UPDATED "updated_at = CASE WHEN ? > updated_at THEN ? ELSE updated_at + 1 END"

static json_t *progress_initial(void) {
    json_t *p = chk(json_object());
    oset(p, "step", chk(json_integer(0)));
    oset(p, "total_steps", NULL);
    oset(p, "fraction", NULL);
    oset(p, "tokens_per_s", NULL);
    oset(p, "eta_s", NULL);
    return p;
}

#define JOB_COLS                                                                                             \
    "id, org_id, workspace_id, status, name, backend, trainer_type, algorithm, model, project_ref, "         \
    "run_ref, "                                                                                              \
    "task_ref, spec, metrics, artifacts, progress, error, attempt, created_at, created_by, "                 \
    "created_by_user, "                                                                                      \
    "started_at, completed_at, cancel_requested_at, updated_at"

/* The job fields kept in the `spec` JSON column (everything of the job object that is fixed at creation and
 * not a column of its own). */
static const char *const SPEC_KEYS[] = {"dataset_ref",
                                        "trajectory_dataset_refs",
                                        "world_manifest_id",
                                        "world_runtime_id",
                                        "world_agent_name",
                                        "world_goal",
                                        "prompt_dataset_ref",
                                        "capability",
                                        "config",
                                        "effective_config",
                                        "tags",
                                        NULL};

/* The job object of docs/spec.md §4.2 from a row selected with JOB_COLS. */
static json_t *row_to_job(db_stmt *s) {
    json_t *j = chk(json_object());
    json_t *spec = col_json(s, 12, chk(json_object()));
    oset(j, "id", col_str(s, 0));
    oset(j, "organization_id", col_str(s, 1));
    oset(j, "workspace_id", col_str(s, 2));
    oset(j, "status", col_str(s, 3));
    oset(j, "name", col_str(s, 4));
    oset(j, "backend", col_str(s, 5));
    oset(j, "trainer_type", col_str(s, 6));
    oset(j, "algorithm", col_str(s, 7));
    oset(j, "model", col_str(s, 8));
    oset(j, "project_ref", col_str(s, 9));
    oset(j, "run_ref", col_str(s, 10));
    for (int i = 0; SPEC_KEYS[i]; i++) {
        json_t *v = json_object_get(spec, SPEC_KEYS[i]);
        oset(j, SPEC_KEYS[i], v ? json_incref(v) : NULL);
    }
    if (!json_is_array(json_object_get(j, "tags"))) oset(j, "tags", chk(json_array()));
    if (!json_is_array(json_object_get(j, "trajectory_dataset_refs")))
        oset(j, "trajectory_dataset_refs", chk(json_array()));
    oset(j, "task_ref", col_str(s, 11));
    oset(j, "metrics", col_json(s, 13, chk(json_object())));
    oset(j, "artifacts", col_json(s, 14, chk(json_object())));
    oset(j, "error", col_str(s, 16));
    oset(j, "attempt", chk(json_integer(db_column_int64(s, 17))));
    oset(j, "created_at", col_time(s, 18));
    oset(j, "created_by", col_str(s, 19));
    json_t *user = col_json(s, 20, json_null());
    oset(j, "created_by_email",
         json_is_object(user) && json_object_get(user, "email") ? json_incref(json_object_get(user, "email"))
                                                                : NULL);
    oset(j, "created_by_user", user);
    oset(j, "started_at", col_time(s, 21));
    oset(j, "completed_at", col_time(s, 22));
    oset(j, "cancel_requested_at", col_time(s, 23));
    oset(j, "updated_at", col_time(s, 24));
    oset(j, "progress", col_json(s, 15, progress_initial()));
    json_decref(spec);
    return j;
}

/* Loads a job by id (and workspace when given). 404 when absent. */
static int load_job(db *d, const char *ws, const char *id, json_t **job, lt_err *err) {
    db_stmt *s =
        ws ? db_query(d, err, "SELECT " JOB_COLS " FROM jobs WHERE id = ? AND workspace_id = ?", "tt", id, ws)
           : db_query(d, err, "SELECT " JOB_COLS " FROM jobs WHERE id = ?", "t", id);
    if (!s) return -1;
    int rc = db_step(s, err);
    if (rc == DB_ROW) {
        if (job) *job = row_to_job(s);
        db_finalize(s);
        return 0;
    }
    db_finalize(s);
    if (rc == DB_ERROR) return -1;
    return lt_err_set(err, 404, "training job '%s' not found", id);
}

/* The state a transition needs, read under the write lock. */
typedef struct job_state {
    char status[16];
    char workspace_id[LT_UUID_LEN];
    char worker_id[LT_UUID_LEN * 2];
    int64_t attempt;
    int64_t started_at; /* 0 = NULL */
    int64_t cancel_requested_at;
} job_state;

static int load_state(db *d, const char *ws, const char *id, job_state *st, lt_err *err) {
    db_stmt *s = db_query(d, err,
                          "SELECT status, workspace_id, worker_id, attempt, started_at, cancel_requested_at "
                          "FROM jobs WHERE id = ?",
                          "t", id);
    if (!s) return -1;
    int rc = db_step(s, err);
    if (rc == DB_ROW) {
        db_column_copy(s, 0, st->status, sizeof st->status);
        db_column_copy(s, 1, st->workspace_id, sizeof st->workspace_id);
        db_column_copy(s, 2, st->worker_id, sizeof st->worker_id);
        st->attempt = db_column_int64(s, 3);
        st->started_at = db_column_int64(s, 4);
        st->cancel_requested_at = db_column_int64(s, 5);
    }
    db_finalize(s);
    if (rc == DB_ERROR) return -1;
    if (rc != DB_ROW || (ws && strcmp(ws, st->workspace_id) != 0))
        return lt_err_set(err, 404, "training job '%s' not found", id);
    return 0;
}

/* Appends a log entry inside the open transaction; returns its seq or -1. */
static int64_t log_add_tx(db *d, const char *id, int64_t attempt, int level, const char *message,
                          const json_t *data, int64_t now, lt_err *err) {
    db_stmt *s = db_query(d, err, "SELECT COALESCE(MAX(seq), 0) + 1 FROM job_logs WHERE job_id = ?", "t", id);
    if (!s) return -1;
    int rc = db_step(s, err);
    int64_t seq = rc == DB_ROW ? db_column_int64(s, 0) : -1;
    db_finalize(s);
    if (rc != DB_ROW) return rc == DB_ERROR ? -1 : lt_err_set(err, 500, "could not number a log line");
    char *dj = dumps(json_is_object(data) ? data : NULL);
    if (!json_is_object(data)) {
        free(dj);
        dj = lt_strdup("{}");
    }
    int64_t n = db_run(d, err,
                       "INSERT INTO job_logs (job_id, seq, attempt, ts, level, message, data) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       "tiiiitt", id, seq, attempt, now, (int64_t)level, message ? message : "", dj);
    free(dj);
    return n < 0 ? -1 : seq;
}

/* Deletes the job's checkpoint rows and appends to freed the blob digests nothing references any more. */
static int drop_checkpoints(db *d, const char *id, json_t *freed, lt_err *err) {
    json_t *digests = chk(json_array());
    db_stmt *s =
        db_query(d, err, "SELECT DISTINCT blob_digest FROM job_checkpoints WHERE job_id = ?", "t", id);
    if (!s) {
        json_decref(digests);
        return -1;
    }
    int rc;
    while ((rc = db_step(s, err)) == DB_ROW)
        json_array_append_new(digests, col_str(s, 0));
    db_finalize(s);
    if (rc == DB_ERROR || db_run(d, err, "DELETE FROM job_checkpoints WHERE job_id = ?", "t", id) < 0) {
        json_decref(digests);
        return -1;
    }
    size_t i;
    json_t *dg;
    json_array_foreach(digests, i, dg) {
        s = db_query(d, err, "SELECT 1 FROM job_checkpoints WHERE blob_digest = ? LIMIT 1", "t",
                     json_string_value(dg));
        if (!s) {
            json_decref(digests);
            return -1;
        }
        rc = db_step(s, err);
        db_finalize(s);
        if (rc == DB_ERROR) {
            json_decref(digests);
            return -1;
        }
        if (rc == DB_DONE && freed) json_array_append(freed, dg);
    }
    json_decref(digests);
    return 0;
}

/* 409 when a queued or running job trains on top of this job's checkpoints (model "jobs/<id>[/...]"):
 * deleting or retrying it would take the adapter away from under that job. */
static int check_not_a_base(db *d, const char *id, const char *what, lt_err *err) {
    char exact[64], prefix[80];
    snprintf(exact, sizeof exact, "jobs/%s", id);
    snprintf(prefix, sizeof prefix, "jobs/%s/%%", id);
    db_stmt *s =
        db_query(d, err,
                 "SELECT id FROM jobs WHERE status IN ('queued', 'running') AND (model = ? OR model LIKE ?) "
                 "LIMIT 1",
                 "tt", exact, prefix);
    if (!s) return -1;
    int rc = db_step(s, err);
    char other[LT_UUID_LEN] = "";
    if (rc == DB_ROW) db_column_copy(s, 0, other, sizeof other);
    db_finalize(s);
    if (rc == DB_ERROR) return -1;
    if (rc == DB_ROW)
        return lt_err_set(
            err, 409, "training job '%s' cannot be %s: the active job '%s' continues from its checkpoints",
            id, what, other);
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------
 * create, read, list */

int64_t jobs_active_count(db *d, const char *workspace_id, lt_err *err) {
    db_stmt *s = db_query(
        d, err, "SELECT COUNT(*) FROM jobs WHERE workspace_id = ? AND status IN ('queued', 'running')", "t",
        workspace_id);
    if (!s) return -1;
    int rc = db_step(s, err);
    int64_t n = rc == DB_ROW ? db_column_int64(s, 0) : -1;
    db_finalize(s);
    return n;
}

int jobs_create(db *d, const jobs_new *n, json_t **job, lt_err *err) {
    assert(n && n->org_id && n->workspace_id && json_is_object(n->fields));
    const json_t *f = n->fields;
    json_t *spec = chk(json_object());
    for (int i = 0; SPEC_KEYS[i]; i++) {
        json_t *v = json_object_get(f, SPEC_KEYS[i]);
        oset(spec, SPEC_KEYS[i], v ? json_incref(v) : NULL);
    }
    char *spec_s = dumps(spec), *user_s = n->created_by_user ? dumps(n->created_by_user) : NULL;
    json_t *prog = progress_initial();
    char *prog_s = dumps(prog);
    json_decref(prog);
    json_decref(spec);
    char id[LT_UUID_LEN];
    lt_uuid4(id);
    int64_t now = lt_now_ms();
    int own, rc = tx_begin(d, &own, err);
    if (rc != 0) goto out;
    rc = -1;
    if (n->max_active > 0) {
        /* Count no further than the limit (the usual case is far below it); only a refusal needs the exact
         * number for its message. */
        db_stmt *c = db_query(d, err,
                              "SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE workspace_id = ? AND status IN "
                              "('queued', 'running') LIMIT ?) AS a",
                              "ti", n->workspace_id, n->max_active);
        if (!c) goto end;
        int64_t active = db_step(c, err) == DB_ROW ? db_column_int64(c, 0) : -1;
        db_finalize(c);
        if (active >= n->max_active) active = jobs_active_count(d, n->workspace_id, err);
        if (active < 0) goto end;
        if (active >= n->max_active) {
            lt_err_set(err, 429,
                       "the workspace already has %lld queued or running jobs, its limit "
                       "(LATHE_MAX_ACTIVE_JOBS=%lld): wait for one to finish or cancel one",
                       (long long)active, (long long)n->max_active);
            goto end;
        }
    }
    db_stmt *s = db_query(d, err, "SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs", "");
    if (!s) goto end;
    int64_t seq = db_step(s, err) == DB_ROW ? db_column_int64(s, 0) : -1;
    db_finalize(s);
    if (seq < 0) goto end;
#define FS(k) json_string_value(json_object_get(f, k))
    if (db_run(d, err,
               "INSERT INTO jobs (id, seq, org_id, workspace_id, status, name, backend, trainer_type, "
               "algorithm, "
               "model, project_ref, run_ref, task_ref, spec, metrics, artifacts, progress, error, attempt, "
               "created_at, created_by, created_by_user, updated_at) "
               "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, '{}', '{}', ?, NULL, 1, ?, ?, ?, ?)",
               "tittttttttttttitti", id, seq, n->org_id, n->workspace_id, FS("name"), FS("backend"),
               FS("trainer_type"), FS("algorithm"), FS("model"), FS("project_ref"), FS("run_ref"),
               FS("task_ref"), spec_s, prog_s, now, n->created_by, user_s, now) < 0)
        goto end;
#undef FS
    size_t i;
    json_t *v;
    json_array_foreach(n->refs, i, v) {
        if (db_run(d, err,
                   "INSERT INTO job_refs (job_id, org_id, kind, name, version) VALUES (?, ?, ?, ?, ?)",
                   "ttttt", id, n->org_id, json_string_value(json_object_get(v, "kind")),
                   json_string_value(json_object_get(v, "name")),
                   json_string_value(json_object_get(v, "version"))) < 0)
            goto end;
    }
    json_array_foreach(json_object_get(f, "tags"), i, v) {
        if (db_run(d, err, "INSERT INTO job_tags (job_id, tag) VALUES (?, ?)", "tt", id,
                   json_string_value(v)) < 0)
            goto end;
    }
    if (log_add_tx(d, id, 1, JOBS_LOG_INFO, "job queued", NULL, now, err) < 0) goto end;
    rc = 0;
end:
    rc = tx_end(d, own, rc, err);
    if (rc == 0 && job) rc = load_job(d, NULL, id, job, err);
out:
    free(spec_s);
    free(user_s);
    free(prog_s);
    return rc;
}

int jobs_get(db *d, const char *workspace_id, const char *id, json_t **job, lt_err *err) {
    return load_job(d, workspace_id, id, job, err);
}

int jobs_peek(db *d, const char *id, char status[16], char org_id[LT_UUID_LEN],
              char workspace_id[LT_UUID_LEN], int64_t *attempt, lt_err *err) {
    db_stmt *s =
        db_query(d, err, "SELECT status, org_id, workspace_id, attempt FROM jobs WHERE id = ?", "t", id);
    if (!s) return -1;
    int rc = db_step(s, err);
    if (rc == DB_ROW) {
        if (status) db_column_copy(s, 0, status, 16);
        if (org_id) db_column_copy(s, 1, org_id, LT_UUID_LEN);
        if (workspace_id) db_column_copy(s, 2, workspace_id, LT_UUID_LEN);
        if (attempt) *attempt = db_column_int64(s, 3);
    }
    db_finalize(s);
    if (rc == DB_ERROR) return -1;
    return rc == DB_ROW ? 0 : lt_err_set(err, 404, "training job '%s' not found", id);
}

int jobs_list(db *d, const char *workspace_id, const jobs_filter *f, json_t **items, int64_t *total,
              lt_err *err) {
    assert(f && f->page >= 1 && f->page_size >= 1);
    strbuf where = STRBUF_INIT;
    const char *binds[6];
    int nb = 0;
    sb_puts(&where, " WHERE workspace_id = ?");
    binds[nb++] = workspace_id;
    struct {
        const char *val, *sql;
    } conds[] = {
        {f->status, " AND status = ?"},
        {f->backend, " AND backend = ?"},
        {f->trainer_type, " AND trainer_type = ?"},
        {f->project_ref, " AND project_ref = ?"},
        {f->tag, " AND EXISTS (SELECT 1 FROM job_tags t WHERE t.job_id = jobs.id AND t.tag = ?)"},
    };
    for (size_t i = 0; i < sizeof conds / sizeof conds[0]; i++) {
        if (!conds[i].val) continue;
        sb_puts(&where, conds[i].sql);
        binds[nb++] = conds[i].val;
    }
    int ret = -1;
    json_t *out = NULL;
    strbuf sql = STRBUF_INIT;
    sb_printf(&sql, "SELECT COUNT(*) FROM jobs%s", where.buf);
    db_stmt *s = db_prepare(d, sql.buf, err);
    if (!s) goto done;
    for (int i = 0; i < nb; i++)
        db_bind_text(s, i + 1, binds[i]);
    if (db_step(s, err) != DB_ROW) {
        db_finalize(s);
        goto done;
    }
    *total = db_column_int64(s, 0);
    db_finalize(s);
    sb_reset(&sql);
    sb_printf(&sql, "SELECT " JOB_COLS " FROM jobs%s ORDER BY seq DESC LIMIT ? OFFSET ?", where.buf);
    s = db_prepare(d, sql.buf, err);
    if (!s) goto done;
    for (int i = 0; i < nb; i++)
        db_bind_text(s, i + 1, binds[i]);
    db_bind_int64(s, nb + 1, f->page_size);
    db_bind_int64(s, nb + 2, (f->page - 1) * f->page_size);
    out = chk(json_array());
    int rc;
    while ((rc = db_step(s, err)) == DB_ROW)
        json_array_append_new(out, row_to_job(s));
    db_finalize(s);
    if (rc == DB_ERROR) goto done;
    *items = out;
    out = NULL;
    ret = 0;
done:
    json_decref(out);
    sb_free(&sql);
    sb_free(&where);
    return ret;
}

int jobs_count_by_status(db *d, int64_t counts[JOBS_NSTATUS], lt_err *err) {
    for (int i = 0; i < JOBS_NSTATUS; i++)
        counts[i] = 0;
    db_stmt *s = db_query(d, err, "SELECT status, COUNT(*) FROM jobs GROUP BY status", "");
    if (!s) return -1;
    int rc;
    while ((rc = db_step(s, err)) == DB_ROW) {
        const char *st = db_column_text(s, 0);
        for (int i = 0; st && i < JOBS_NSTATUS; i++)
            if (strcmp(st, jobs_statuses[i]) == 0) counts[i] = db_column_int64(s, 1);
    }
    db_finalize(s);
    return rc == DB_ERROR ? -1 : 0;
}

int jobs_watermark(db *d, const char *id, int64_t *updated_at, int64_t *last_log_seq, lt_err *err) {
    db_stmt *s = db_query(d, err,
                          "SELECT updated_at, (SELECT COALESCE(MAX(seq), 0) FROM job_logs WHERE job_id = ?) "
                          "FROM jobs WHERE id = ?",
                          "tt", id, id);
    if (!s) return -1;
    int rc = db_step(s, err);
    if (rc == DB_ROW) {
        *updated_at = db_column_int64(s, 0);
        *last_log_seq = db_column_int64(s, 1);
    }
    db_finalize(s);
    if (rc == DB_ERROR) return -1;
    return rc == DB_ROW ? 0 : lt_err_set(err, 404, "training job '%s' not found", id);
}

/* ---------------------------------------------------------------------------------------------------------
 * state machine */

int jobs_cancel(db *d, const char *workspace_id, const char *id, json_t **job, lt_err *err) {
    job_state st;
    int64_t now = lt_now_ms();
    int own, rc = tx_begin(d, &own, err);
    if (rc != 0) return -1;
    rc = load_state(d, workspace_id, id, &st, err);
    if (rc == 0 && jobs_status_terminal(st.status))
        rc = lt_err_set(err, 409,
                        "training job '%s' is already %s: only a queued or running job can be cancelled", id,
                        st.status);
    if (rc == 0 && strcmp(st.status, "queued") == 0) {
        rc = db_run(d, err,
                    "UPDATE jobs SET status = 'cancelled', cancel_requested_at = ?, completed_at = ?, "
                    "worker_id = NULL, lease_expires_at = NULL, " BUMP_UPDATED " WHERE id = ?",
                    "iiiit", now, now, now, now, id) < 0
                 ? -1
                 : 0;
        if (rc == 0 &&
            log_add_tx(d, id, st.attempt, JOBS_LOG_INFO, "cancelled while queued", NULL, now, err) < 0)
            rc = -1;
    } else if (rc == 0 && st.cancel_requested_at == 0) {
        rc = db_run(d, err, "UPDATE jobs SET cancel_requested_at = ?, " BUMP_UPDATED " WHERE id = ?", "iiit",
                    now, now, now, id) < 0
                 ? -1
                 : 0;
        if (rc == 0 &&
            log_add_tx(d, id, st.attempt, JOBS_LOG_INFO,
                       "cancel requested: the worker stops after the current step", NULL, now, err) < 0)
            rc = -1;
    }
    rc = tx_end(d, own, rc, err);
    if (rc == 0 && job) rc = load_job(d, NULL, id, job, err);
    return rc;
}

int jobs_retry(db *d, const char *workspace_id, const char *id, json_t **job, json_t **freed, lt_err *err) {
    job_state st;
    int64_t now = lt_now_ms();
    json_t *fr = chk(json_array());
    int own, rc = tx_begin(d, &own, err);
    if (rc != 0) {
        json_decref(fr);
        return -1;
    }
    rc = load_state(d, workspace_id, id, &st, err);
    if (rc == 0 && !jobs_status_terminal(st.status))
        rc = lt_err_set(err, 409,
                        "training job '%s' is %s: only a completed, failed or cancelled job can be retried",
                        id, st.status);
    if (rc == 0) rc = check_not_a_base(d, id, "retried", err);
    if (rc == 0) {
        json_t *prog = progress_initial();
        char *prog_s = dumps(prog);
        json_decref(prog);
        rc = db_run(
                 d, err,
                 "UPDATE jobs SET status = 'queued', attempt = attempt + 1, error = NULL, started_at = NULL, "
                 "completed_at = NULL, cancel_requested_at = NULL, metrics = '{}', artifacts = '{}', "
                 "progress = ?, worker_id = NULL, lease_expires_at = NULL, " BUMP_UPDATED " WHERE id = ?",
                 "tiit", prog_s, now, now, id) < 0
                 ? -1
                 : 0;
        free(prog_s);
    }
    if (rc == 0) rc = drop_checkpoints(d, id, fr, err);
    if (rc == 0) {
        char msg[96];
        snprintf(msg, sizeof msg, "retried: attempt %lld queued", (long long)(st.attempt + 1));
        if (log_add_tx(d, id, st.attempt + 1, JOBS_LOG_INFO, msg, NULL, now, err) < 0) rc = -1;
    }
    rc = tx_end(d, own, rc, err);
    if (rc == 0 && job) rc = load_job(d, NULL, id, job, err);
    if (rc == 0 && freed)
        *freed = fr;
    else
        json_decref(fr);
    return rc;
}

int jobs_delete(db *d, const char *workspace_id, const char *id, json_t **freed, lt_err *err) {
    job_state st;
    json_t *fr = chk(json_array());
    int own, rc = tx_begin(d, &own, err);
    if (rc != 0) {
        json_decref(fr);
        return -1;
    }
    rc = load_state(d, workspace_id, id, &st, err);
    if (rc == 0 && !jobs_status_terminal(st.status))
        rc = lt_err_set(err, 409, "training job '%s' is %s: cancel it first, then delete it", id, st.status);
    if (rc == 0) rc = check_not_a_base(d, id, "deleted", err);
    if (rc == 0) rc = drop_checkpoints(d, id, fr, err);
    static const char *const DEL[] = {
        "DELETE FROM job_logs WHERE job_id = ?", "DELETE FROM job_refs WHERE job_id = ?",
        "DELETE FROM job_tags WHERE job_id = ?", "DELETE FROM jobs WHERE id = ?", NULL};
    for (int i = 0; rc == 0 && DEL[i]; i++)
        if (db_run(d, err, DEL[i], "t", id) < 0) rc = -1;
    rc = tx_end(d, own, rc, err);
    if (rc == 0 && freed)
        *freed = fr;
    else
        json_decref(fr);
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------
 * queue */

/* Inside the open transaction: handles every running job whose lease expired before now. */
static int64_t requeue_expired_tx(db *d, int64_t now, lt_err *err) {
    json_t *expired = chk(json_array());
    db_stmt *s =
        db_query(d, err,
                 "SELECT id, attempt, cancel_requested_at, worker_id FROM jobs WHERE status = 'running' "
                 "AND lease_expires_at IS NOT NULL AND lease_expires_at < ?",
                 "i", now);
    if (!s) {
        json_decref(expired);
        return -1;
    }
    int rc;
    while ((rc = db_step(s, err)) == DB_ROW)
        json_array_append_new(expired, json_pack("{s:s,s:I,s:b,s:s?}", "id", db_column_text(s, 0), "attempt",
                                                 (json_int_t)db_column_int64(s, 1), "cancel",
                                                 !db_column_is_null(s, 2), "worker", db_column_text(s, 3)));
    db_finalize(s);
    int64_t count = rc == DB_ERROR ? -1 : 0;
    size_t i;
    json_t *e;
    json_array_foreach(expired, i, e) {
        if (count < 0) break;
        const char *id = json_string_value(json_object_get(e, "id"));
        const char *worker = json_string_value(json_object_get(e, "worker"));
        int64_t attempt = json_integer_value(json_object_get(e, "attempt"));
        int cancel = json_is_true(json_object_get(e, "cancel"));
        char msg[256];
        int64_t n;
        if (cancel) {
            n = db_run(d, err,
                       "UPDATE jobs SET status = 'cancelled', completed_at = ?, worker_id = NULL, "
                       "lease_expires_at = NULL, " BUMP_UPDATED " WHERE id = ? AND status = 'running'",
                       "iiit", now, now, now, id);
            snprintf(msg, sizeof msg, "the lease of worker %s expired with a cancel pending: cancelled",
                     worker ? worker : "?");
        } else {
            n = db_run(
                d, err,
                "UPDATE jobs SET status = 'queued', worker_id = NULL, lease_expires_at = NULL, " BUMP_UPDATED
                " WHERE id = ? AND status = 'running'",
                "iit", now, now, id);
            snprintf(msg, sizeof msg, "the lease of worker %s expired: re-queued (attempt %lld kept)",
                     worker ? worker : "?", (long long)attempt);
        }
        if (n < 0 || log_add_tx(d, id, attempt, JOBS_LOG_WARNING, msg, NULL, now, err) < 0)
            count = -1;
        else
            count += n;
    }
    json_decref(expired);
    return count;
}

int64_t jobs_requeue_expired(db *d, int64_t now_ms, lt_err *err) {
    int own;
    if (tx_begin(d, &own, err) != 0) return -1;
    int64_t n = requeue_expired_tx(d, now_ms, err);
    if (tx_end(d, own, n < 0 ? -1 : 0, err) != 0) return -1;
    return n;
}

int jobs_claim(db *d, const char *worker_id, int64_t lease_ms, char id_out[LT_UUID_LEN], lt_err *err) {
    assert(worker_id && lease_ms > 0);
    int64_t now = lt_now_ms();
    int own, rc = tx_begin(d, &own, err);
    if (rc != 0) return -1;
    int claimed = 0;
    rc = requeue_expired_tx(d, now, err) < 0 ? -1 : 0;
    const char *pick =
        strcmp(db_driver(d), "postgres") == 0
            ? "SELECT id, attempt, started_at FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1 "
              "FOR UPDATE SKIP LOCKED"
            : "SELECT id, attempt, started_at FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1";
    char id[LT_UUID_LEN] = "";
    int64_t attempt = 0, started = 0;
    if (rc == 0) {
        db_stmt *s = db_query(d, err, pick, "");
        if (!s) rc = -1;
        int st = s ? db_step(s, err) : DB_ERROR;
        if (st == DB_ROW) {
            db_column_copy(s, 0, id, sizeof id);
            attempt = db_column_int64(s, 1);
            started = db_column_int64(s, 2);
        }
        db_finalize(s);
        if (st == DB_ERROR) rc = -1;
    }
    if (rc == 0 && id[0]) {
        int64_t n = db_run(d, err,
                           "UPDATE jobs SET status = 'running', worker_id = ?, lease_expires_at = ?, "
                           "started_at = COALESCE(started_at, ?), " BUMP_UPDATED
                           " WHERE id = ? AND status = 'queued'",
                           "tiiiit", worker_id, now + lease_ms, now, now, now, id);
        if (n < 0) rc = -1;
        claimed = n == 1;
        if (claimed) {
            char msg[256];
            snprintf(msg, sizeof msg, "%s by worker %s (attempt %lld)", started ? "resumed" : "started",
                     worker_id, (long long)attempt);
            if (log_add_tx(d, id, attempt, JOBS_LOG_INFO, msg, NULL, now, err) < 0) rc = -1;
        }
    }
    rc = tx_end(d, own, rc, err);
    if (rc != 0) return -1;
    if (claimed) snprintf(id_out, LT_UUID_LEN, "%s", id);
    return claimed;
}

int jobs_heartbeat(db *d, const char *id, const char *worker_id, int64_t lease_ms, int *cancel_requested,
                   lt_err *err) {
    int64_t now = lt_now_ms();
    int64_t n = db_run(
        d, err, "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND worker_id = ? AND status = 'running'",
        "itt", now + lease_ms, id, worker_id);
    if (n < 0) return -1;
    if (n == 0)
        return lt_err_set(err, 409,
                          "worker %s no longer holds training job '%s' (lease lost, or the job ended)",
                          worker_id, id);
    if (cancel_requested) {
        db_stmt *s = db_query(d, err, "SELECT cancel_requested_at FROM jobs WHERE id = ?", "t", id);
        if (!s) return -1;
        int rc = db_step(s, err);
        *cancel_requested = rc == DB_ROW && !db_column_is_null(s, 0);
        db_finalize(s);
        if (rc == DB_ERROR) return -1;
    }
    return 0;
}

int jobs_mark_cancelled(db *d, const char *id, const char *worker_id, lt_err *err) {
    job_state st;
    int64_t now = lt_now_ms();
    int own, rc = tx_begin(d, &own, err);
    if (rc != 0) return -1;
    rc = load_state(d, NULL, id, &st, err);
    if (rc == 0 && (strcmp(st.status, "running") != 0 || strcmp(st.worker_id, worker_id) != 0))
        rc = lt_err_set(err, 409, "worker %s does not hold training job '%s' (it is %s)", worker_id, id,
                        st.status);
    if (rc == 0)
        rc = db_run(d, err,
                    "UPDATE jobs SET status = 'cancelled', completed_at = ?, worker_id = NULL, "
                    "lease_expires_at = NULL, "
                    "cancel_requested_at = COALESCE(cancel_requested_at, ?), " BUMP_UPDATED " WHERE id = ?",
                    "iiiit", now, now, now, now, id) < 0
                 ? -1
                 : 0;
    if (rc == 0 && log_add_tx(d, id, st.attempt, JOBS_LOG_INFO, "cancelled", NULL, now, err) < 0) rc = -1;
    return tx_end(d, own, rc, err);
}

int jobs_cancel_requested(db *d, const char *id, lt_err *err) {
    db_stmt *s = db_query(d, err, "SELECT cancel_requested_at FROM jobs WHERE id = ?", "t", id);
    if (!s) return -1;
    int rc = db_step(s, err);
    int out = rc == DB_ROW && !db_column_is_null(s, 0);
    db_finalize(s);
    if (rc == DB_ERROR) return -1;
    return rc == DB_ROW ? out : lt_err_set(err, 404, "training job '%s' not found", id);
}

int jobs_release(db *d, const char *id, const char *worker_id, const char *reason, lt_err *err) {
    job_state st;
    int64_t now = lt_now_ms();
    int own, rc = tx_begin(d, &own, err);
    if (rc != 0) return -1;
    rc = load_state(d, NULL, id, &st, err);
    if (rc == 0 && (strcmp(st.status, "running") != 0 || strcmp(st.worker_id, worker_id) != 0))
        rc = lt_err_set(err, 409, "worker %s does not hold training job '%s' (it is %s)", worker_id, id,
                        st.status);
    int cancel = rc == 0 && st.cancel_requested_at != 0;
    if (rc == 0 && cancel)
        rc = db_run(d, err,
                    "UPDATE jobs SET status = 'cancelled', completed_at = ?, worker_id = NULL, "
                    "lease_expires_at = NULL, " BUMP_UPDATED " WHERE id = ?",
                    "iiit", now, now, now, id) < 0
                 ? -1
                 : 0;
    else if (rc == 0)
        rc = db_run(
                 d, err,
                 "UPDATE jobs SET status = 'queued', worker_id = NULL, lease_expires_at = NULL, " BUMP_UPDATED
                 " WHERE id = ?",
                 "iit", now, now, id) < 0
                 ? -1
                 : 0;
    if (rc == 0) {
        char msg[512];
        if (cancel)
            snprintf(msg, sizeof msg, "%s; a cancel was pending: cancelled", reason ? reason : "released");
        else
            snprintf(msg, sizeof msg, "%s: re-queued (attempt %lld kept)", reason ? reason : "released",
                     (long long)st.attempt);
        if (log_add_tx(d, id, st.attempt, cancel ? JOBS_LOG_INFO : JOBS_LOG_WARNING, msg, NULL, now, err) < 0)
            rc = -1;
    }
    return tx_end(d, own, rc, err);
}

/* Keeps the entries of the arrays on one axis whose step is <= step. */
static void trim_axis(json_t *m, const char *axis, int eval, int64_t step) {
    json_t *steps = json_object_get(m, axis);
    if (!json_is_array(steps)) return;
    size_t keep = 0;
    while (keep < json_array_size(steps) && json_number_value(json_array_get(steps, keep)) <= (double)step)
        keep++;
    const char *k;
    json_t *v;
    json_object_foreach(m, k, v) {
        if (!json_is_array(v) || (strncmp(k, "eval/", 5) == 0) != eval) continue;
        while (json_array_size(v) > keep)
            json_array_remove(v, json_array_size(v) - 1);
    }
}

int jobs_trim_metrics(db *d, const char *id, int64_t step, lt_err *err) {
    int64_t now = lt_now_ms();
    int own, rc = tx_begin(d, &own, err);
    if (rc != 0) return -1;
    json_t *m = NULL, *p = NULL;
    db_stmt *s = db_query(d, err, "SELECT metrics, progress FROM jobs WHERE id = ?", "t", id);
    int r = s ? db_step(s, err) : DB_ERROR;
    if (r == DB_ROW) {
        m = col_json(s, 0, chk(json_object()));
        p = col_json(s, 1, progress_initial());
    }
    db_finalize(s);
    if (r != DB_ROW) rc = r == DB_ERROR ? -1 : lt_err_set(err, 404, "training job '%s' not found", id);
    if (rc == 0) {
        trim_axis(m, "steps", 0, step);
        trim_axis(m, "eval/steps", 1, step);
        oset(p, "step", chk(json_integer(step)));
        double t = json_number_value(json_object_get(p, "total_steps"));
        if (t > 0) oset(p, "fraction", chk(json_real((double)step >= t ? 1.0 : (double)step / t)));
        char *ms = dumps(m), *ps = dumps(p);
        rc = db_run(d, err, "UPDATE jobs SET metrics = ?, progress = ?, " BUMP_UPDATED " WHERE id = ?",
                    "ttiit", ms, ps, now, now, id) < 0
                 ? -1
                 : 0;
        free(ms);
        free(ps);
    }
    json_decref(m);
    json_decref(p);
    return tx_end(d, own, rc, err);
}

/* ---------------------------------------------------------------------------------------------------------
 * progress */

/* The merge rule of docs/spec.md §4.1. Non-terminal events: an array value is appended to the stored array (a
 * scalar or missing stored value is replaced by a copy), anything else replaces. Terminal events carry the
 * final metrics: each key replaces the stored one. */
static void merge_metrics(json_t *stored, const json_t *incoming, int terminal) {
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)incoming, k, v) {
        json_t *cur = json_object_get(stored, k);
        if (!terminal && json_is_array(v) && json_is_array(cur)) {
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e) json_array_append(cur, e);
        } else {
            oset(stored, k, chk(json_deep_copy(v)));
        }
    }
}

static double num_or(const json_t *v, double dflt) {
    return json_is_number(v) ? json_number_value(v) : dflt;
}

static const json_t *last_of(const json_t *metrics, const char *k) {
    const json_t *a = json_object_get(metrics, k);
    if (json_is_array(a)) return json_array_size(a) ? json_array_get(a, json_array_size(a) - 1) : NULL;
    return a;
}

/* progress {step, total_steps, fraction, tokens_per_s, eta_s} after an event. */
static void update_progress(json_t *p, const char *type, const json_t *metrics, const json_t *data,
                            int64_t started_at, int64_t now) {
    const json_t *step = json_object_get(data, "step");
    if (!json_is_integer(step)) step = last_of(metrics, "steps");
    if (strcmp(type, "eval_complete") != 0 && json_is_number(step))
        oset(p, "step", chk(json_integer((json_int_t)json_number_value(step))));
    const json_t *total = json_object_get(data, "total_steps");
    if (json_is_number(total))
        oset(p, "total_steps", chk(json_integer((json_int_t)json_number_value(total))));
    const json_t *tps = json_object_get(data, "tokens_per_s");
    if (!json_is_number(tps)) tps = last_of(metrics, "train/tokens_per_s");
    if (json_is_number(tps)) oset(p, "tokens_per_s", chk(json_real(json_number_value(tps))));
    double s = num_or(json_object_get(p, "step"), 0), t = num_or(json_object_get(p, "total_steps"), 0);
    if (strcmp(type, "training_end") == 0 && t > 0) {
        s = t;
        oset(p, "step", chk(json_integer((json_int_t)t)));
    }
    if (t > 0) oset(p, "fraction", chk(json_real(s >= t ? 1.0 : s / t)));
    const json_t *eta = json_object_get(data, "eta_s");
    if (json_is_number(eta))
        oset(p, "eta_s", chk(json_real(json_number_value(eta))));
    else if (strcmp(type, "training_end") == 0 || (t > 0 && s >= t))
        oset(p, "eta_s", chk(json_real(0.0)));
    else if (t > 0 && s > 0 && started_at > 0 && now >= started_at) /* same ms: rounds to 0.0 anyway */
        oset(p, "eta_s", chk(json_real(round((double)(now - started_at) / 1000.0 / s * (t - s) * 10) / 10)));
}

int jobs_progress(db *d, const char *id, const json_t *event, json_t **job, lt_err *err) {
    const char *type = json_string_value(json_object_get(event, "event_type"));
    assert(type);
    int terminal = strcmp(type, "training_end") == 0 || strcmp(type, "training_error") == 0;
    const json_t *metrics = json_object_get(event, "metrics"), *data = json_object_get(event, "data");
    const json_t *arts = json_object_get(event, "artifacts");
    int64_t now = lt_now_ms();
    int own, rc = tx_begin(d, &own, err);
    if (rc != 0) return -1;
    job_state st;
    json_t *m = NULL, *a = NULL, *p = NULL;
    rc = load_state(d, NULL, id, &st, err);
    if (rc == 0 && jobs_status_terminal(st.status))
        rc = lt_err_set(err, 409, "training job '%s' has ended (%s): it takes no more progress events", id,
                        st.status);
    if (rc == 0) {
        db_stmt *s = db_query(d, err, "SELECT metrics, artifacts, progress FROM jobs WHERE id = ?", "t", id);
        int r = s ? db_step(s, err) : DB_ERROR;
        if (r == DB_ROW) {
            m = col_json(s, 0, chk(json_object()));
            a = col_json(s, 1, chk(json_object()));
            p = col_json(s, 2, progress_initial());
        }
        db_finalize(s);
        if (r != DB_ROW) rc = r == DB_ERROR ? -1 : lt_err_set(err, 404, "training job '%s' not found", id);
    }
    if (rc == 0) {
        if (json_is_object(metrics)) merge_metrics(m, metrics, terminal);
        if (json_is_object(arts)) json_object_update(a, (json_t *)arts);
        int64_t started = st.started_at;
        const char *new_status = st.status;
        if (strcmp(type, "training_start") == 0 && strcmp(st.status, "queued") == 0) new_status = "running";
        if (strcmp(type, "training_end") == 0) new_status = "completed";
        if (strcmp(type, "training_error") == 0) new_status = "failed";
        if (strcmp(new_status, "running") == 0 && !started) started = now;
        update_progress(p, type, metrics, data, started, now);
        const char *error = NULL;
        if (strcmp(type, "training_error") == 0) {
            error = json_string_value(json_object_get(event, "error"));
            if (!error) error = json_string_value(json_object_get(event, "message"));
            if (!error) error = "training failed (the worker gave no reason)";
        }
        /* a terminal event ends the lease; other events leave it to the heartbeat */
        const char *sql =
            terminal ? "UPDATE jobs SET status = ?, metrics = ?, artifacts = ?, progress = ?, "
                       "error = COALESCE(?, error), started_at = ?, completed_at = ?, worker_id = NULL, "
                       "lease_expires_at = NULL, " BUMP_UPDATED " WHERE id = ?"
                     : "UPDATE jobs SET status = ?, metrics = ?, artifacts = ?, progress = ?, "
                       "error = COALESCE(?, error), started_at = ?, completed_at = ?, " BUMP_UPDATED
                       " WHERE id = ?";
        char *ms = dumps(m), *as = dumps(a), *ps = dumps(p);
        db_stmt *s = db_prepare(d, sql, err);
        if (!s) {
            rc = -1;
        } else {
            db_bind_text(s, 1, new_status);
            db_bind_text(s, 2, ms);
            db_bind_text(s, 3, as);
            db_bind_text(s, 4, ps);
            db_bind_text(s, 5, error);
            if (started)
                db_bind_int64(s, 6, started);
            else
                db_bind_null(s, 6);
            if (terminal)
                db_bind_int64(s, 7, now);
            else
                db_bind_null(s, 7);
            db_bind_int64(s, 8, now);
            db_bind_int64(s, 9, now);
            db_bind_text(s, 10, id);
            if (db_step(s, err) != DB_DONE) rc = -1;
            db_finalize(s);
        }
        free(ms);
        free(as);
        free(ps);
        if (rc == 0) {
            const char *msg = json_string_value(json_object_get(event, "message"));
            int level = jobs_level_parse(json_string_value(json_object_get(event, "level")));
            if (level < 0) level = strcmp(type, "training_error") == 0 ? JOBS_LOG_ERROR : JOBS_LOG_INFO;
            json_t *ld = json_is_object(data) ? chk(json_deep_copy(data)) : chk(json_object());
            if (!json_object_get(ld, "event_type")) oset(ld, "event_type", chk(json_string(type)));
            if (log_add_tx(d, id, st.attempt, level, msg ? msg : (error ? error : type), ld, now, err) < 0)
                rc = -1;
            json_decref(ld);
        }
    }
    json_decref(m);
    json_decref(a);
    json_decref(p);
    rc = tx_end(d, own, rc, err);
    if (rc == 0 && job) rc = load_job(d, NULL, id, job, err);
    return rc;
}

int64_t jobs_log_add(db *d, const char *id, int level, const char *message, const json_t *data, lt_err *err) {
    job_state st;
    int own;
    if (tx_begin(d, &own, err) != 0) return -1;
    int64_t seq = load_state(d, NULL, id, &st, err) == 0
                      ? log_add_tx(d, id, st.attempt, level, message, data, lt_now_ms(), err)
                      : -1;
    if (tx_end(d, own, seq < 0 ? -1 : 0, err) != 0) return -1;
    return seq;
}

int jobs_logs(db *d, const char *id, int64_t after, int64_t limit, int min_level, json_t **items,
              int64_t *next, lt_err *err) {
    assert(limit >= 1);
    /* one row more than asked tells whether there is a next page */
    db_stmt *s =
        db_query(d, err,
                 "SELECT seq, attempt, ts, level, message, data FROM job_logs WHERE job_id = ? AND seq > ? "
                 "AND level >= ? ORDER BY seq LIMIT ?",
                 "tiii", id, after, (int64_t)min_level, limit + 1);
    if (!s) return -1;
    json_t *out = chk(json_array());
    int rc;
    int64_t last = 0, count = 0;
    *next = 0;
    while ((rc = db_step(s, err)) == DB_ROW) {
        if (count == limit) {
            *next = last;
            break;
        }
        json_t *e = chk(json_object());
        last = db_column_int64(s, 0);
        oset(e, "seq", chk(json_integer(last)));
        oset(e, "attempt", chk(json_integer(db_column_int64(s, 1))));
        oset(e, "timestamp", ms_json(db_column_int64(s, 2)));
        oset(e, "level", chk(json_string(jobs_level_name((int)db_column_int64(s, 3)))));
        oset(e, "message", col_str(s, 4));
        oset(e, "data", col_json(s, 5, chk(json_object())));
        json_array_append_new(out, e);
        count++;
    }
    db_finalize(s);
    if (rc == DB_ERROR) {
        json_decref(out);
        return -1;
    }
    *items = out;
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------
 * checkpoints */

int jobs_checkpoint_add(db *d, const char *id, const char *name, int64_t step, int64_t size_bytes,
                        const char *digest, const char *blob_digest, lt_err *err) {
    int64_t now = lt_now_ms();
    int own, rc = tx_begin(d, &own, err);
    if (rc != 0) return -1;
    job_state st;
    rc = load_state(d, NULL, id, &st, err);
    if (rc == 0 &&
        db_run(d, err, "DELETE FROM job_checkpoints WHERE job_id = ? AND name = ?", "tt", id, name) < 0)
        rc = -1;
    if (rc == 0 &&
        db_run(
            d, err,
            "INSERT INTO job_checkpoints (job_id, name, step, created_at, size_bytes, digest, blob_digest) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            "ttiiitt", id, name, step, now, size_bytes, digest, blob_digest) < 0)
        rc = -1;
    if (rc == 0 && db_run(d, err, "UPDATE jobs SET " BUMP_UPDATED " WHERE id = ?", "iit", now, now, id) < 0)
        rc = -1;
    return tx_end(d, own, rc, err);
}

int jobs_checkpoints(db *d, const char *id, json_t **items, lt_err *err) {
    db_stmt *s =
        db_query(d, err,
                 "SELECT name, step, created_at, size_bytes, digest FROM job_checkpoints WHERE job_id = ? "
                 "ORDER BY step, name",
                 "t", id);
    if (!s) return -1;
    json_t *out = chk(json_array());
    int rc;
    while ((rc = db_step(s, err)) == DB_ROW) {
        json_t *e = chk(json_object());
        oset(e, "name", col_str(s, 0));
        oset(e, "step", chk(json_integer(db_column_int64(s, 1))));
        oset(e, "created_at", ms_json(db_column_int64(s, 2)));
        oset(e, "size_bytes", chk(json_integer(db_column_int64(s, 3))));
        oset(e, "digest", col_str(s, 4));
        json_array_append_new(out, e);
    }
    db_finalize(s);
    if (rc == DB_ERROR) {
        json_decref(out);
        return -1;
    }
    *items = out;
    return 0;
}

int jobs_checkpoint_blob(db *d, const char *id, const char *name, char blob_digest[72], int64_t *size_bytes,
                         lt_err *err) {
    db_stmt *s =
        db_query(d, err, "SELECT blob_digest, size_bytes FROM job_checkpoints WHERE job_id = ? AND name = ?",
                 "tt", id, name);
    if (!s) return -1;
    int rc = db_step(s, err);
    if (rc == DB_ROW) {
        db_column_copy(s, 0, blob_digest, 72);
        if (size_bytes) *size_bytes = db_column_int64(s, 1);
    }
    db_finalize(s);
    if (rc == DB_ERROR) return -1;
    return rc == DB_ROW ? 0 : lt_err_set(err, 404, "training job '%s' has no checkpoint '%s'", id, name);
}
