/* cmd_train.c: `lathe train ...`, the client of the training-job API (docs/spec.md §4), with the verbs and
 * flags of the upstream `dn train` CLI (sft, rl, list, get, wait, logs, artifacts, cancel, catalog) plus
 * lathe's own (grpo, watch, retry, checkpoints, pull, delete).
 *
 * Submitting. sft, rl and grpo build one create body: the wrapper (backend, trainer_type, model,
 * capability_ref, name, project_ref, run_ref, tags) and a config object assembled from a single table of
 * knobs (flag -> config key and kind). A flag the verb does not accept is simply absent, so one table serves
 * the three verbs; values the user did not give are left out (the server fills defaults and reports them in
 * effective_config). Validation is the server's: its 422 envelope is printed item by item.
 *
 * `lathe train sft --data FILE --out DIR ...` is not a client call: it runs the local trainer
 * (cmd_train_local, in cmd_train_local.c).
 *
 * Waiting and watching. wait polls GET job until a terminal status (exit 0 only for completed). watch reads
 * the job's event stream (E11): the snapshot, then one line per progress event (step/total, loss, tokens/s,
 * ETA), log lines, and the final metrics at `end`.
 *
 * Output. Tables and key/value lines for people; --json prints the server's JSON unchanged. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/client.h"
#include "util/util.h"

/* ============================================================================================================
 * Small JSON readers
 * ==========================================================================================================
 */

static const char *jstr(const json_t *o, const char *key) {
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "-";
}

/* A metric's latest value: the last element of an array, or the number itself. NAN when absent. */
static double jnum_last(const json_t *o, const char *key) {
    const json_t *v = json_object_get(o, key);
    if (json_is_array(v) && json_array_size(v)) v = json_array_get(v, json_array_size(v) - 1);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

static int is_terminal(const char *status) {
    return !strcmp(status, "completed") || !strcmp(status, "failed") || !strcmp(status, "cancelled");
}

static void fmt_duration(char *buf, size_t n, double s) {
    if (!(s >= 0) || !isfinite(s))
        snprintf(buf, n, "-");
    else if (s < 120)
        snprintf(buf, n, "%.0fs", s);
    else if (s < 7200)
        snprintf(buf, n, "%.0fm%02.0fs", floor(s / 60), fmod(s, 60));
    else
        snprintf(buf, n, "%.0fh%02.0fm", floor(s / 3600), fmod(floor(s / 60), 60));
}

static void ref_str(char *buf, size_t n, const json_t *ref) {
    if (json_is_object(ref))
        snprintf(buf, n, "%s@%s", jstr(ref, "name"), jstr(ref, "version"));
    else
        snprintf(buf, n, "-");
}

static void print_job(FILE *f, const json_t *j) {
    char buf[512];
    fprintf(f, "id:          %s\n", jstr(j, "id"));
    fprintf(f, "name:        %s\n", jstr(j, "name"));
    fprintf(f, "status:      %s\n", jstr(j, "status"));
    fprintf(f, "kind:        %s/%s%s%s\n", jstr(j, "backend"), jstr(j, "trainer_type"),
            json_is_string(json_object_get(j, "algorithm")) ? " " : "",
            json_is_string(json_object_get(j, "algorithm")) ? jstr(j, "algorithm") : "");
    fprintf(f, "model:       %s\n", jstr(j, "model"));
    const json_t *cap = json_object_get(j, "capability");
    ref_str(buf, sizeof buf, cap);
    fprintf(f, "capability:  %s\n", buf);
    ref_str(buf, sizeof buf, json_object_get(j, "dataset_ref"));
    if (strcmp(buf, "-")) fprintf(f, "dataset:     %s\n", buf);
    ref_str(buf, sizeof buf, json_object_get(j, "prompt_dataset_ref"));
    if (strcmp(buf, "-")) fprintf(f, "prompts:     %s\n", buf);
    if (json_is_string(json_object_get(j, "task_ref"))) fprintf(f, "task:        %s\n", jstr(j, "task_ref"));
    fprintf(f, "project:     %s\n", jstr(j, "project_ref"));
    const json_t *tags = json_object_get(j, "tags");
    if (json_array_size(tags)) {
        fprintf(f, "tags:        ");
        size_t i;
        json_t *t;
        json_array_foreach(tags, i, t) fprintf(f, "%s%s", i ? ", " : "", json_string_value(t));
        fputc('\n', f);
    }
    fprintf(f, "attempt:     %lld\n", (long long)json_integer_value(json_object_get(j, "attempt")));
    fprintf(f, "created:     %s\n", jstr(j, "created_at"));
    if (json_is_string(json_object_get(j, "started_at")))
        fprintf(f, "started:     %s\n", jstr(j, "started_at"));
    if (json_is_string(json_object_get(j, "completed_at")))
        fprintf(f, "completed:   %s\n", jstr(j, "completed_at"));
    const json_t *p = json_object_get(j, "progress");
    if (json_is_object(p)) {
        json_t *tot = json_object_get(p, "total_steps");
        fprintf(f, "progress:    step %lld", (long long)json_integer_value(json_object_get(p, "step")));
        if (json_is_integer(tot)) fprintf(f, "/%lld", (long long)json_integer_value(tot));
        fputc('\n', f);
    }
    const json_t *m = json_object_get(j, "metrics");
    double loss = jnum_last(m, "train/loss");
    if (isfinite(loss)) fprintf(f, "loss:        %.4f\n", loss);
    double reward = jnum_last(m, "train/reward");
    if (isfinite(reward)) fprintf(f, "reward:      %.4f\n", reward);
    if (json_is_string(json_object_get(j, "error"))) fprintf(f, "error:       %s\n", jstr(j, "error"));
}

/* ============================================================================================================
 * Calls
 * ==========================================================================================================
 */

/* GET/POST on a workspace route; prints errors; on success *out holds the JSON (caller decrefs). Returns an
 * exit code. suffix is appended to ".../ws/<ws>". */
static int ws_call(lc_client *c, const char *method, const char *suffix, json_t *body, const char *hdr,
                   const char *what, json_t **out) {
    strbuf path = STRBUF_INIT;
    lc_ws_path(&path, c);
    sb_puts(&path, suffix);
    lc_resp r;
    lt_err err = {0};
    int rc = lc_call(c, method, path.buf, body, hdr, &r, &err);
    sb_free(&path);
    if (rc) {
        lc_resp_free(&r);
        return lc_print_conn_error(stderr, c, &err);
    }
    if (r.status < 200 || r.status >= 300) {
        rc = lc_print_error(stderr, what, &r);
        lc_resp_free(&r);
        return rc;
    }
    if (out) {
        *out = r.json ? json_incref(r.json) : json_object();
    }
    lc_resp_free(&r);
    return EXIT_OK;
}

static void job_path(strbuf *sb, const char *job_id, const char *tail) {
    sb_puts(sb, "/training/jobs/");
    lc_esc(sb, job_id);
    if (tail) sb_puts(sb, tail);
}

static int job_call(lc_client *c, const char *method, const char *job_id, const char *tail, const char *what,
                    json_t **out) {
    strbuf s = STRBUF_INIT;
    job_path(&s, job_id, tail);
    int rc = ws_call(c, method, s.buf, NULL, NULL, what, out);
    sb_free(&s);
    return rc;
}

static int print_job_or_json(const lc_args *a, json_t *j) {
    if (lc_flag(a, "json"))
        lc_print_json(stdout, j);
    else
        print_job(stdout, j);
    return EXIT_OK;
}

/* Polls the job until it is terminal or timeout_s (<= 0: no limit) passes. *out is the last job seen. */
static int poll_job(lc_client *c, const char *job_id, double interval_s, double timeout_s, json_t **out) {
    double start = lt_mono_s();
    const char *last = NULL;
    char last_buf[32] = "";
    for (;;) {
        json_t *j = NULL;
        int rc = job_call(c, "GET", job_id, NULL, "get job", &j);
        if (rc) return rc;
        const char *st = jstr(j, "status");
        if (!last || strcmp(last, st)) {
            fprintf(stderr, "lathe: job %s is %s\n", job_id, st);
            snprintf(last_buf, sizeof last_buf, "%s", st);
            last = last_buf;
        }
        if (is_terminal(st)) {
            *out = j;
            return EXIT_OK;
        }
        if (timeout_s > 0 && lt_mono_s() - start + interval_s > timeout_s) {
            *out = j;
            fprintf(stderr, "lathe: gave up waiting for job %s after %.0fs (status %s)\n", job_id, timeout_s,
                    st);
            return EXIT_FAIL;
        }
        json_decref(j);
        usleep((useconds_t)(interval_s * 1e6));
    }
}

static int wait_and_report(lc_client *c, const lc_args *a, const char *job_id) {
    const char *pi = lc_arg(a, "poll-interval-sec"), *to = lc_arg(a, "timeout-sec");
    double interval = pi ? atof(pi) : 5.0, timeout = to ? atof(to) : 0;
    if (!(interval > 0)) {
        fprintf(stderr, "lathe train: --poll-interval-sec must be > 0\n");
        return EXIT_USAGE;
    }
    json_t *j = NULL;
    int rc = poll_job(c, job_id, interval, timeout, &j);
    if (!j) return rc;
    print_job_or_json(a, j);
    const char *st = jstr(j, "status");
    if (rc == EXIT_OK && strcmp(st, "completed")) {
        const char *e = json_string_value(json_object_get(j, "error"));
        fprintf(stderr, "lathe: training job %s ended with status %s%s%s\n", job_id, st, e ? ": " : "",
                e ? e : "");
        rc = EXIT_FAIL;
    }
    json_decref(j);
    return rc;
}

/* ============================================================================================================
 * Submitting: sft, rl, grpo
 * ==========================================================================================================
 */

static int watch_job(lc_client *c, const char *job_id, int json, double deadline_s, json_t **job_out,
                     int *closed, int *timed_out);

/* --wait without --json: the live progress of watch, then the final metrics and the adapter hint; polls
 * instead when the event stream closes early. Exit 0 only for completed. */
static int wait_live(lc_client *c, const lc_args *a, const char *job_id) {
    const char *to = lc_arg(a, "timeout-sec");
    double timeout = to ? atof(to) : 0;
    json_t *job = NULL;
    int closed, timed_out;
    int rc = watch_job(c, job_id, 0, timeout, &job, &closed, &timed_out);
    if (timed_out) {
        fprintf(stderr, "lathe: gave up waiting for job %s after %.0fs\n", job_id, timeout);
        return EXIT_FAIL;
    }
    if (closed) {
        fprintf(stderr, "lathe: the event stream of job %s closed early; polling it instead\n", job_id);
        return wait_and_report(c, a, job_id);
    }
    if (job && rc == EXIT_FAIL) {
        const char *e = json_string_value(json_object_get(job, "error"));
        fprintf(stderr, "lathe: training job %s ended with status %s%s%s\n", job_id, jstr(job, "status"),
                e ? ": " : "", e ? e : "");
    }
    json_decref(job);
    return rc;
}

enum { K_INT, K_NUM, K_STR, K_REF, K_REFLIST, K_STRLIST, K_RECIPE };

/* Every config knob of docs/spec.md §4.4, by flag. A verb only sees the flags in its own option table. */
static const struct knob {
    const char *flag, *key;
    int kind;
    const char *params_flag; /* K_RECIPE: the flag holding its params JSON */
} knobs[] = {
    {"algorithm", "algorithm", K_STR, NULL},
    {"dataset", "dataset_ref", K_REF, NULL},
    {"trajectory-dataset", "trajectory_dataset_refs", K_REFLIST, NULL},
    {"eval-dataset", "eval_dataset_ref", K_REF, NULL},
    {"prompt-dataset", "prompt_dataset_ref", K_REF, NULL},
    {"task", "task_ref", K_STR, NULL},
    {"max-sequence-length", "max_sequence_length", K_INT, NULL},
    {"batch-size", "batch_size", K_INT, NULL},
    {"gradient-accumulation-steps", "gradient_accumulation_steps", K_INT, NULL},
    {"learning-rate", "learning_rate", K_NUM, NULL},
    {"steps", "steps", K_INT, NULL},
    {"epochs", "epochs", K_INT, NULL},
    {"lora-rank", "lora_rank", K_INT, NULL},
    {"lora-alpha", "lora_alpha", K_NUM, NULL},
    {"checkpoint-interval", "checkpoint_interval", K_INT, NULL},
    {"world-manifest-id", "world_manifest_id", K_STR, NULL},
    {"world-runtime-id", "world_runtime_id", K_STR, NULL},
    {"world-agent-name", "world_agent_name", K_STR, NULL},
    {"world-goal", "world_goal", K_STR, NULL},
    {"reward-recipe", "reward_recipe", K_RECIPE, "reward-params"},
    {"world-reward", "world_reward", K_RECIPE, "world-reward-params"},
    {"execution-mode", "execution_mode", K_STR, NULL},
    {"prompt-split", "prompt_split", K_STR, NULL},
    {"max-turns", "max_turns", K_INT, NULL},
    {"max-episode-steps", "max_episode_steps", K_INT, NULL},
    {"num-rollouts", "num_rollouts", K_INT, NULL},
    {"weight-sync-interval", "weight_sync_interval", K_INT, NULL},
    {"max-steps-off-policy", "max_steps_off_policy", K_INT, NULL},
    {"max-new-tokens", "max_new_tokens", K_INT, NULL},
    {"temperature", "temperature", K_NUM, NULL},
    {"stop", "stop", K_STRLIST, NULL},
    {"eval-interval", "eval_interval", K_INT, NULL},
    {"eval-max-rollouts", "eval_max_rollouts", K_INT, NULL},
    {"num-rollout-workers", "num_rollout_workers", K_INT, NULL},
    {"buffer-size", "buffer_size", K_INT, NULL},
};

static json_t *number_json(const char *v) {
    char *end;
    long long x = strtoll(v, &end, 10);
    if (!*end) return json_integer(x);
    return json_real(strtod(v, NULL));
}

static json_t *build_config(const lc_args *a, lt_err *err) {
    json_t *cfg = json_object();
    for (size_t i = 0; i < sizeof knobs / sizeof knobs[0]; i++) {
        const struct knob *k = &knobs[i];
        const char *v = lc_arg(a, k->flag);
        if (!v) continue;
        json_t *val = NULL;
        size_t n;
        const char *const *list;
        switch (k->kind) {
        case K_INT:
            val = json_integer(strtoll(v, NULL, 10));
            break;
        case K_NUM:
            val = number_json(v);
            break;
        case K_STR:
            val = json_string(v);
            break;
        case K_REF:
            val = lc_ref_json(v, k->flag, err);
            break;
        case K_REFLIST:
            list = lc_list(a, k->flag, &n);
            val = json_array();
            for (size_t j = 0; j < n && val; j++) {
                json_t *r = lc_ref_json(list[j], k->flag, err);
                if (!r) {
                    json_decref(val);
                    val = NULL;
                } else {
                    json_array_append_new(val, r);
                }
            }
            break;
        case K_STRLIST:
            list = lc_list(a, k->flag, &n);
            val = json_array();
            for (size_t j = 0; j < n; j++)
                json_array_append_new(val, json_string(list[j]));
            break;
        case K_RECIPE: {
            const char *pv = lc_arg(a, k->params_flag);
            json_t *params = pv ? json_loads(pv, 0, NULL) : json_object();
            if (!json_is_object(params)) {
                json_decref(params);
                lt_err_set(err, 2, "--%s must be a JSON object, e.g. '{\"needle\": \"yes\"}'",
                           k->params_flag);
                break;
            }
            val = json_pack("{s:s, s:o}", "name", v, "params", params);
            break;
        }
        }
        if (!val) {
            json_decref(cfg);
            if (!err->code) lt_err_set(err, 2, "--%s: bad value '%s'", k->flag, v);
            return NULL;
        }
        json_object_set_new(cfg, k->key, val);
    }
    for (size_t i = 0; i < sizeof knobs / sizeof knobs[0]; i++) {
        const struct knob *k = &knobs[i];
        if (k->kind == K_RECIPE && lc_arg(a, k->params_flag) && !lc_arg(a, k->flag)) {
            json_decref(cfg);
            lt_err_set(err, 2, "--%s needs --%s", k->params_flag, k->flag);
            return NULL;
        }
    }
    return cfg;
}

static int submit(lc_client *c, const lc_args *a, const char *backend, const char *trainer_type) {
    lt_err err = {0};
    const char *model = lc_arg(a, "model"), *cap = lc_arg(a, "capability");
    if (!model || !cap) {
        fprintf(stderr, "lathe train: --model and --capability NAME@VERSION are required (see --help)\n");
        return EXIT_USAGE;
    }
    json_t *capref = lc_ref_json(cap, "--capability", &err);
    json_t *cfg = capref ? build_config(a, &err) : NULL;
    if (!cfg) {
        fprintf(stderr, "lathe train: %s\n", err.msg);
        json_decref(capref);
        return EXIT_USAGE;
    }
    json_t *body = json_pack("{s:s, s:s, s:s, s:o, s:o}", "backend", backend, "trainer_type", trainer_type,
                             "model", model, "capability_ref", capref, "config", cfg);
    if (lc_arg(a, "name")) json_object_set_new(body, "name", json_string(lc_arg(a, "name")));
    const char *project = lc_arg(a, "project-ref") ? lc_arg(a, "project-ref") : c->conf.project;
    if (project) json_object_set_new(body, "project_ref", json_string(project));
    if (lc_arg(a, "run-ref")) json_object_set_new(body, "run_ref", json_string(lc_arg(a, "run-ref")));
    json_t *tags = json_array();
    size_t n;
    const char *const *tl = lc_list(a, "tag", &n);
    for (size_t i = 0; i < n; i++)
        json_array_append_new(tags, json_string(tl[i]));
    tl = lc_list(a, "tags", &n);
    for (size_t i = 0; i < n; i++) {
        char *copy = lt_strdup(tl[i]);
        for (char *save = NULL, *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            char *s = lt_strip(t);
            if (*s) json_array_append_new(tags, json_string(s));
        }
        free(copy);
    }
    json_object_set_new(body, "tags", tags);

    strbuf hdr = STRBUF_INIT;
    if (lc_arg(a, "idempotency-key")) sb_printf(&hdr, "Idempotency-Key: %s", lc_arg(a, "idempotency-key"));
    json_t *job = NULL;
    int rc = ws_call(c, "POST", "/training/jobs", body, hdr.buf, "create training job", &job);
    sb_free(&hdr);
    json_decref(body);
    if (rc) return rc;
    const char *id = jstr(job, "id");
    if (lc_flag(a, "wait")) {
        char idbuf[LT_UUID_LEN + 64];
        snprintf(idbuf, sizeof idbuf, "%s", id);
        fprintf(stderr, "lathe: submitted training job %s\n", idbuf);
        json_decref(job);
        return lc_flag(a, "json") ? wait_and_report(c, a, idbuf) : wait_live(c, a, idbuf);
    }
    if (lc_flag(a, "json")) {
        lc_print_json(stdout, job);
    } else {
        print_job(stdout, job);
        fprintf(stdout, "\nfollow it with: lathe train watch %s\n", id);
    }
    json_decref(job);
    return EXIT_OK;
}

static int v_sft(lc_client *c, const lc_args *a, const char *g) {
    return submit(c, a, "tinker", "sft");
}
static int v_rl(lc_client *c, const lc_args *a, const char *g) {
    if (!lc_arg(a, "algorithm")) {
        fprintf(stderr, "lathe train rl: --algorithm importance_sampling|ppo is required\n");
        return EXIT_USAGE;
    }
    return submit(c, a, "tinker", "rl");
}
static int v_grpo(lc_client *c, const lc_args *a, const char *g) {
    return submit(c, a, "ray", "rl");
}

/* ============================================================================================================
 * Reading: list, get, wait, logs, artifacts, checkpoints, catalog
 * ==========================================================================================================
 */

static void add_query(strbuf *sb, const lc_args *a, const char *flag, const char *param) {
    const char *v = lc_arg(a, flag);
    if (!v) return;
    sb_putc(sb, strchr(sb->buf, '?') ? '&' : '?');
    sb_puts(sb, param);
    sb_putc(sb, '=');
    lc_esc(sb, v);
}

static int v_list(lc_client *c, const lc_args *a, const char *g) {
    strbuf q = STRBUF_INIT;
    sb_puts(&q, "/training/jobs");
    add_query(&q, a, "page", "page");
    add_query(&q, a, "page-size", "page_size");
    add_query(&q, a, "status", "status");
    add_query(&q, a, "backend", "backend");
    add_query(&q, a, "trainer-type", "trainer_type");
    add_query(&q, a, "project-ref", "project_ref");
    add_query(&q, a, "tag", "tag");
    json_t *j = NULL;
    int rc = ws_call(c, "GET", q.buf, NULL, NULL, "list training jobs", &j);
    sb_free(&q);
    if (rc) return rc;
    if (lc_flag(a, "json")) {
        lc_print_json(stdout, j);
    } else {
        json_t *items = json_object_get(j, "items");
        if (!json_array_size(items)) {
            printf("no training jobs\n");
        } else {
            printf("%-36s  %-9s  %-12s  %-24s  %-20s  %s\n", "ID", "STATUS", "KIND", "MODEL", "NAME",
                   "CREATED");
            size_t i;
            json_t *it;
            json_array_foreach(items, i, it) {
                char kind[64];
                snprintf(kind, sizeof kind, "%s/%s", jstr(it, "backend"), jstr(it, "trainer_type"));
                printf("%-36s  %-9s  %-12s  %-24s  %-20s  %s\n", jstr(it, "id"), jstr(it, "status"), kind,
                       jstr(it, "model"), jstr(it, "name"), jstr(it, "created_at"));
            }
            printf("(page %lld, %zu of %lld)\n", (long long)json_integer_value(json_object_get(j, "page")),
                   json_array_size(items), (long long)json_integer_value(json_object_get(j, "total")));
        }
    }
    json_decref(j);
    return EXIT_OK;
}

static int v_get(lc_client *c, const lc_args *a, const char *g) {
    json_t *j = NULL;
    int rc = job_call(c, "GET", a->pos[0], NULL, "get training job", &j);
    if (rc) return rc;
    print_job_or_json(a, j);
    json_decref(j);
    return EXIT_OK;
}

static int v_wait(lc_client *c, const lc_args *a, const char *g) {
    return wait_and_report(c, a, a->pos[0]);
}

static int v_cancel(lc_client *c, const lc_args *a, const char *g) {
    json_t *j = NULL;
    int rc = job_call(c, "POST", a->pos[0], "/cancel", "cancel training job", &j);
    if (rc) return rc;
    if (!lc_flag(a, "json")) {
        const char *st = jstr(j, "status");
        printf("%s: %s\n", a->pos[0],
               !strcmp(st, "cancelled") ? "cancelled" : "cancel requested (stops within one optimizer step)");
    } else {
        lc_print_json(stdout, j);
    }
    json_decref(j);
    return EXIT_OK;
}

static int v_retry(lc_client *c, const lc_args *a, const char *g) {
    json_t *j = NULL;
    int rc = job_call(c, "POST", a->pos[0], "/retry", "retry training job", &j);
    if (rc) return rc;
    if (!lc_flag(a, "json"))
        printf("%s: %s again (attempt %lld)\n", a->pos[0], jstr(j, "status"),
               (long long)json_integer_value(json_object_get(j, "attempt")));
    else
        lc_print_json(stdout, j);
    json_decref(j);
    return EXIT_OK;
}

static int v_delete(lc_client *c, const lc_args *a, const char *g) {
    int rc = job_call(c, "DELETE", a->pos[0], NULL, "delete training job", NULL);
    if (rc == EXIT_OK && !lc_flag(a, "json")) printf("%s: deleted\n", a->pos[0]);
    if (rc == EXIT_OK && lc_flag(a, "json")) printf("{}\n");
    return rc;
}

static int v_logs(lc_client *c, const lc_args *a, const char *g) {
    /* Pages through the log with the `next` cursor unless --limit asks for one page. */
    const char *after = lc_arg(a, "after");
    char cursor[32] = "";
    if (after) snprintf(cursor, sizeof cursor, "%s", after);
    json_t *all = json_array();
    int one_page = lc_arg(a, "limit") != NULL, rc = EXIT_OK;
    for (int pages = 0; pages < 10000; pages++) {
        strbuf s = STRBUF_INIT;
        job_path(&s, a->pos[0], "/logs");
        add_query(&s, a, "limit", "limit");
        add_query(&s, a, "level", "level");
        if (*cursor) {
            sb_putc(&s, strchr(s.buf, '?') ? '&' : '?');
            sb_printf(&s, "after=%s", cursor);
        }
        json_t *j = NULL;
        rc = ws_call(c, "GET", s.buf, NULL, NULL, "training job logs", &j);
        sb_free(&s);
        if (rc) break;
        json_array_extend(all, json_object_get(j, "items"));
        json_t *next = json_object_get(j, "next");
        if (json_is_integer(next))
            snprintf(cursor, sizeof cursor, "%lld", (long long)json_integer_value(next));
        else if (json_is_string(next))
            snprintf(cursor, sizeof cursor, "%s", json_string_value(next));
        int more =
            (json_is_integer(next) || json_is_string(next)) && json_array_size(json_object_get(j, "items"));
        json_decref(j);
        if (!more || one_page) break;
    }
    if (rc == EXIT_OK) {
        if (lc_flag(a, "json")) {
            json_t *out = json_pack("{s:O, s:o}", "items", all, "next",
                                    *cursor && one_page ? json_string(cursor) : json_null());
            lc_print_json(stdout, out);
            json_decref(out);
        } else {
            size_t i;
            json_t *e;
            json_array_foreach(all, i, e) {
                printf("%s  %-7s [%lld] %s", jstr(e, "timestamp"), jstr(e, "level"),
                       (long long)json_integer_value(json_object_get(e, "attempt")), jstr(e, "message"));
                json_t *d = json_object_get(e, "data");
                if (json_object_size(d)) {
                    char *t = json_dumps(d, JSON_COMPACT);
                    printf("  %s", t ? t : "");
                    free(t);
                }
                putchar('\n');
            }
        }
    }
    json_decref(all);
    return rc;
}

static int v_artifacts(lc_client *c, const lc_args *a, const char *g) {
    json_t *j = NULL;
    int rc = job_call(c, "GET", a->pos[0], "/artifacts", "training job artifacts", &j);
    if (rc) return rc;
    if (lc_flag(a, "json")) {
        lc_print_json(stdout, j);
    } else {
        json_t *arts = json_object_get(j, "artifacts");
        if (!json_object_size(arts)) printf("no artifacts yet\n");
        const char *k;
        json_t *v;
        json_object_foreach(arts, k, v) {
            char *t = json_is_string(v) ? NULL : json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
            printf("%-20s %s\n", k, t ? t : json_string_value(v));
            free(t);
        }
    }
    json_decref(j);
    return EXIT_OK;
}

static int v_checkpoints(lc_client *c, const lc_args *a, const char *g) {
    json_t *j = NULL;
    int rc = job_call(c, "GET", a->pos[0], "/checkpoints", "training job checkpoints", &j);
    if (rc) return rc;
    if (lc_flag(a, "json")) {
        lc_print_json(stdout, j);
    } else {
        json_t *items = json_object_get(j, "items");
        if (!json_array_size(items)) printf("no checkpoints yet\n");
        size_t i;
        json_t *it;
        json_array_foreach(items, i, it) {
            printf("%-28s step %-8lld %10lld bytes  %s  %s\n", jstr(it, "name"),
                   (long long)json_integer_value(json_object_get(it, "step")),
                   (long long)json_integer_value(json_object_get(it, "size_bytes")), jstr(it, "digest"),
                   jstr(it, "created_at"));
        }
    }
    json_decref(j);
    return EXIT_OK;
}

static int v_pull(lc_client *c, const lc_args *a, const char *g) {
    const char *job_id = a->pos[0], *dir = a->pos[1];
    char name[256];
    if (lc_arg(a, "checkpoint")) {
        snprintf(name, sizeof name, "%s", lc_arg(a, "checkpoint"));
    } else { /* "final" when there is one, else the newest */
        json_t *j = NULL;
        int rc = job_call(c, "GET", job_id, "/checkpoints", "training job checkpoints", &j);
        if (rc) return rc;
        json_t *items = json_object_get(j, "items");
        size_t n = json_array_size(items);
        name[0] = '\0';
        for (size_t i = 0; i < n; i++)
            if (!strcmp(jstr(json_array_get(items, i), "name"), "final"))
                snprintf(name, sizeof name, "final");
        if (!name[0] && n) snprintf(name, sizeof name, "%s", jstr(json_array_get(items, n - 1), "name"));
        json_decref(j);
        if (!name[0]) {
            fprintf(stderr, "lathe train pull: job %s has no checkpoints yet\n", job_id);
            return EXIT_NOTFOUND;
        }
    }
    strbuf path = STRBUF_INIT;
    lc_ws_path(&path, c);
    job_path(&path, job_id, "/checkpoints/");
    lc_esc(&path, name);
    sb_puts(&path, "/download");
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    if (!mem) abort();
    lc_resp r;
    lt_err err = {0};
    int rc = lc_download(c, path.buf, mem, &r, &err);
    fclose(mem);
    sb_free(&path);
    if (rc) {
        rc = lc_print_conn_error(stderr, c, &err);
    } else if (r.status < 200 || r.status >= 300) {
        rc = lc_print_error(stderr, "download checkpoint", &r);
    } else {
        long files = lc_untar(buf, len, dir, &err);
        if (files < 0) {
            fprintf(stderr, "lathe train pull: %s\n", err.msg);
            rc = EXIT_FAIL;
        } else if (lc_flag(a, "json")) {
            json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:I}", "job_id", job_id, "checkpoint", name, "dir",
                                  dir, "files", (json_int_t)files, "bytes", (json_int_t)len);
            lc_print_json(stdout, o);
            json_decref(o);
        } else {
            printf("checkpoint %s of job %s: %ld files written to %s\n", name, job_id, files, dir);
        }
    }
    lc_resp_free(&r);
    free(buf);
    return rc;
}

static int v_catalog(lc_client *c, const lc_args *a, const char *g) {
    strbuf q = STRBUF_INIT;
    sb_puts(&q, "/api/v1/training/catalog");
    add_query(&q, a, "query", "query");
    add_query(&q, a, "search", "query");
    add_query(&q, a, "family", "family");
    add_query(&q, a, "algorithm", "algorithm");
    add_query(&q, a, "min-size-b", "min_size_b");
    add_query(&q, a, "max-size-b", "max_size_b");
    add_query(&q, a, "limit", "limit");
    lc_resp r;
    lt_err err = {0};
    int rc = lc_call(c, "GET", q.buf, NULL, NULL, &r, &err);
    sb_free(&q);
    if (rc) {
        lc_resp_free(&r);
        return lc_print_conn_error(stderr, c, &err);
    }
    if (r.status != 200) {
        rc = lc_print_error(stderr, "training catalog", &r);
    } else if (lc_flag(a, "json")) {
        lc_print_json(stdout, r.json);
    } else {
        json_t *models = json_object_get(r.json, "models");
        if (!json_array_size(models))
            printf("no models (put HF model directories under the server's models dir)\n");
        else
            printf("%-32s  %-7s  %7s  %8s  %s\n", "TINKER_ID", "FAMILY", "SIZE_B", "CONTEXT", "ALGORITHMS");
        size_t i;
        json_t *m;
        json_array_foreach(models, i, m) {
            strbuf al = STRBUF_INIT;
            size_t k;
            json_t *x;
            json_array_foreach(json_object_get(m, "supported_algorithms"), k, x) {
                if (k) sb_puts(&al, ",");
                sb_puts(&al, json_string_value(x) ? json_string_value(x) : "?");
            }
            printf("%-32s  %-7s  %7.3g  %8lld  %s\n", jstr(m, "tinker_id"), jstr(m, "family"),
                   json_number_value(json_object_get(m, "size_b")),
                   (long long)json_integer_value(json_object_get(m, "context_length")), al.buf ? al.buf : "");
            sb_free(&al);
        }
        if (json_array_size(models))
            printf("(%zu of %lld)\n", json_array_size(models),
                   (long long)json_integer_value(json_object_get(r.json, "total")));
    }
    lc_resp_free(&r);
    return rc;
}

/* ============================================================================================================
 * watch: the event stream
 *
 * On a terminal, progress is one line redrawn in place (\r): `step 12/60 [#####     ] loss 2.3100  412 tok/s
 * ETA 8s`; status changes and log lines (eval, checkpoints, warnings) are printed above it. When stdout is
 * not a terminal, progress is plain lines: the first step, the last, and at most one every WATCH_PLAIN_S
 * seconds in between. The per-step log entries (event_type step_complete) are left out: the progress line
 * shows them. At the end: the status, the final scalar metrics and, when the job has an adapter, how to
 * download it.
 * ==========================================================================================================
 */

#define WATCH_PLAIN_S 2.0 /* seconds between plain progress lines */
#define WATCH_BAR 24      /* cells of the bar */

typedef struct watch {
    int json;
    int tty;  /* stdout is a terminal: one redrawn progress line */
    int cols; /* its width */
    const char *job_id;
    char status[32];
    int ended;
    json_t *final_job;
    char line[512]; /* the progress line on screen (tty) or not yet printed (plain) */
    int shown;      /* tty: line is on screen; plain: line was printed */
    long last_step; /* step of the last progress line composed */
    double last_print;
    double deadline; /* > 0: stop reading at this lt_mono_s() (--wait --timeout-sec) */
    int timed_out;
} watch;

/* Composes the progress line of a `progress` event (or a job object) into w->line. Returns the step, or -1
 * when the event has no step yet. */
static long compose_progress(watch *w, const json_t *d, long *total) {
    const json_t *p = json_object_get(d, "progress");
    if (!json_is_object(p)) p = d;
    const json_t *m = json_object_get(d, "metrics");
    json_t *step = json_object_get(p, "step"), *tot = json_object_get(p, "total_steps");
    double s = json_is_integer(step) ? (double)json_integer_value(step) : jnum_last(m, "steps");
    *total = json_is_integer(tot) ? (long)json_integer_value(tot) : 0;
    if (!isfinite(s) || s < 1) return -1;
    strbuf b = STRBUF_INIT;
    sb_printf(&b, "step %.0f", s);
    if (*total > 0) {
        sb_printf(&b, "/%ld", *total);
        if (w->tty) {
            double f = s / (double)*total;
            int fill = (int)lround((f > 1 ? 1 : f) * WATCH_BAR);
            sb_puts(&b, " [");
            for (int i = 0; i < WATCH_BAR; i++)
                sb_putc(&b, i < fill ? '#' : ' ');
            sb_putc(&b, ']');
        }
    }
    double loss = jnum_last(m, "train/loss"), reward = jnum_last(m, "train/reward");
    double tps = json_is_number(json_object_get(p, "tokens_per_s"))
                     ? json_number_value(json_object_get(p, "tokens_per_s"))
                     : jnum_last(m, "train/tokens_per_s");
    double eta =
        json_is_number(json_object_get(p, "eta_s")) ? json_number_value(json_object_get(p, "eta_s")) : NAN;
    if (isfinite(loss)) sb_printf(&b, "  loss %.4f", loss);
    if (isfinite(reward)) sb_printf(&b, "  reward %.4f", reward);
    if (isfinite(tps)) sb_printf(&b, "  %.0f tok/s", tps);
    if (isfinite(eta)) {
        char e[32];
        fmt_duration(e, sizeof e, eta);
        sb_printf(&b, "  ETA %s", e);
    }
    snprintf(w->line, sizeof w->line, "%s", b.buf ? b.buf : "");
    sb_free(&b);
    return (long)s;
}

/* tty: redraws the progress line, cut to the terminal width. */
static void draw_bar(watch *w) {
    int max = w->cols > 1 ? w->cols - 1 : 79;
    printf("\r%.*s\033[K", max, w->line);
    fflush(stdout);
    w->shown = 1;
}

/* Before printing a whole line: clears the tty progress line, or prints a plain line held back. */
static void before_line(watch *w) {
    if (w->tty && w->shown) {
        fputs("\r\033[K", stdout);
    } else if (!w->tty && !w->shown && w->line[0]) {
        printf("%s\n", w->line);
        w->shown = 1;
        w->last_print = lt_mono_s();
    }
}

/* After a whole line: the tty progress line comes back under it. */
static void after_line(watch *w) {
    if (w->tty && w->shown) draw_bar(w);
    fflush(stdout);
}

/* Leaves the progress for good: the tty line is kept (newline), a held-back plain line is printed. */
static void end_progress(watch *w) {
    if (w->tty && w->shown) {
        putchar('\n');
        w->shown = 0;
    } else if (!w->tty) {
        before_line(w);
    }
    fflush(stdout);
}

static void watch_progress(watch *w, const json_t *d) {
    long total;
    long step = compose_progress(w, d, &total);
    if (step < 0) return;
    if (w->tty) {
        w->last_step = step;
        draw_bar(w);
        return;
    }
    if (step == w->last_step) return; /* an eval or checkpoint event of a step already shown */
    int first = w->last_step <= 0;
    w->last_step = step;
    w->shown = 0; /* a new line, held back until it is due */
    double now = lt_mono_s();
    if (first || (total > 0 && step >= total) || now - w->last_print >= WATCH_PLAIN_S) before_line(w);
    fflush(stdout);
}

static void print_final_metrics(const json_t *job) {
    const json_t *m = json_object_get(job, "metrics");
    const char *k;
    json_t *v;
    int any = 0;
    json_object_foreach((json_t *)m, k, v) {
        if (!json_is_number(v)) continue; /* scalars only: the per-step arrays were shown live */
        if (!any++) printf("final metrics:\n");
        printf("  %-28s %g\n", k, json_number_value(v));
    }
}

/* Where the trained adapter is and how to get it (docs/spec.md §4.6 artifacts.adapter). */
static void print_adapter_hint(const json_t *job) {
    const json_t *ad = json_object_get(json_object_get(job, "artifacts"), "adapter");
    if (!json_is_object(ad)) return;
    const char *ck = json_string_value(json_object_get(ad, "checkpoint"));
    printf("adapter: %s, checkpoint %s\n", jstr(ad, "format"), ck ? ck : "final");
    int other = ck && strcmp(ck, "final"); /* pull takes final by default */
    printf("  download it with: lathe train pull %s DIR%s%s\n", jstr(job, "id"),
           other ? " --checkpoint " : "", other ? ck : "");
    if (json_is_string(json_object_get(ad, "download"))) printf("  (or GET %s)\n", jstr(ad, "download"));
}

static int on_watch_event(void *ud, const char *event, const char *data, size_t len, const char *id) {
    watch *w = ud;
    json_t *d = json_loadb(data, len, JSON_DECODE_ANY, NULL);
    if (w->json) {
        json_t *o = json_pack("{s:s, s:o}", "event", event, "data", d ? d : json_null());
        char *t = json_dumps(o, JSON_COMPACT);
        printf("%s\n", t ? t : "{}");
        fflush(stdout);
        free(t);
        d = json_incref(json_object_get(o, "data"));
        json_decref(o);
    }
    if (!strcmp(event, "snapshot") || !strcmp(event, "end")) {
        json_t *job = json_is_object(json_object_get(d, "job")) ? json_object_get(d, "job") : d;
        if (json_is_string(json_object_get(job, "status")))
            snprintf(w->status, sizeof w->status, "%s", jstr(job, "status"));
        if (!w->json && !strcmp(event, "snapshot")) {
            printf("job %s (%s/%s, %s): %s\n", jstr(job, "id"), jstr(job, "backend"),
                   jstr(job, "trainer_type"), jstr(job, "model"), w->status);
            fflush(stdout);
            if (!strcmp(w->status, "running")) watch_progress(w, job);
        }
        if (!strcmp(event, "end")) {
            w->ended = 1;
            if (json_is_object(job) && json_object_get(job, "metrics")) w->final_job = json_incref(job);
        }
    } else if (!strcmp(event, "progress")) {
        const char *st = json_string_value(json_object_get(d, "status"));
        if (st && strcmp(st, w->status)) {
            snprintf(w->status, sizeof w->status, "%s", st);
            if (!w->json && !is_terminal(st)) {
                before_line(w);
                printf("job %s is %s\n", w->job_id, st);
                after_line(w);
            }
        }
        if (!w->json) watch_progress(w, d);
    } else if (!w->json && !strcmp(event, "log")) {
        const char *et = json_string_value(json_object_get(json_object_get(d, "data"), "event_type"));
        if (!et || strcmp(et, "step_complete")) {
            before_line(w);
            printf("  [%s] %s\n", jstr(d, "level"), jstr(d, "message"));
            after_line(w);
        }
    }
    json_decref(d);
    if (w->deadline > 0 && !w->ended && lt_mono_s() >= w->deadline) w->timed_out = 1;
    return w->ended || w->timed_out; /* stop reading after `end` */
}

/* Follows job_id's event stream until the job ends (or deadline_s > 0 passes), printing as described above
 * (or one JSON object per event with json). *job_out (may be NULL) gets the final job. Returns EXIT_OK when
 * the job ended completed; EXIT_FAIL when it ended otherwise, or the stream closed first (*closed set: the
 * caller may poll instead), or the deadline passed (*timed_out set); another exit code for call errors. */
static int watch_job(lc_client *c, const char *job_id, int json, double deadline_s, json_t **job_out,
                     int *closed, int *timed_out) {
    strbuf path = STRBUF_INIT;
    lc_ws_path(&path, c);
    job_path(&path, job_id, "/events");
    if (deadline_s > 0) sb_puts(&path, "?heartbeat=1"); /* an event a second, to notice the deadline */
    watch w = {.json = json, .job_id = job_id, .cols = 80};
    w.tty = !json && isatty(STDOUT_FILENO);
    if (w.tty) {
        struct winsize ws;
        if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) w.cols = ws.ws_col;
    }
    if (deadline_s > 0) w.deadline = lt_mono_s() + deadline_s;
    if (job_out) *job_out = NULL;
    *closed = *timed_out = 0;
    lc_sse p;
    lc_sse_init(&p, on_watch_event, &w);
    lc_resp r;
    lt_err err = {0};
    int rc = lc_stream(c, path.buf, &p, &r, &err);
    sb_free(&path);
    lc_sse_free(&p);
    if (!w.json) end_progress(&w);
    if (rc) {
        lc_resp_free(&r);
        json_decref(w.final_job);
        if (err.code == 503) return lc_print_conn_error(stderr, c, &err);
        fprintf(stderr, "lathe train watch: %s\n", err.msg);
        return EXIT_FAIL;
    }
    if (r.status < 200 || r.status >= 300) {
        rc = lc_print_error(stderr, "watch training job", &r);
        lc_resp_free(&r);
        json_decref(w.final_job);
        return rc;
    }
    lc_resp_free(&r);
    if (w.timed_out) {
        json_decref(w.final_job);
        *timed_out = 1;
        return EXIT_FAIL;
    }
    /* the stream may end without `end` (server restart): ask for the job itself */
    json_t *job = w.final_job;
    if (!job || !is_terminal(w.status)) {
        json_decref(job);
        job = NULL;
        rc = job_call(c, "GET", job_id, NULL, "get training job", &job);
        if (rc) return rc;
        snprintf(w.status, sizeof w.status, "%s", jstr(job, "status"));
    }
    if (!is_terminal(w.status)) {
        json_decref(job);
        *closed = 1;
        return EXIT_FAIL;
    }
    if (!w.json) {
        printf("job %s %s\n", job_id, w.status);
        if (json_is_string(json_object_get(job, "error"))) printf("error: %s\n", jstr(job, "error"));
        print_final_metrics(job);
        if (!strcmp(w.status, "completed")) print_adapter_hint(job);
        fflush(stdout);
    }
    if (job_out)
        *job_out = job;
    else
        json_decref(job);
    return !strcmp(w.status, "completed") ? EXIT_OK : EXIT_FAIL;
}

static int v_watch(lc_client *c, const lc_args *a, const char *g) {
    const char *job_id = a->pos[0];
    int closed, timed_out;
    int rc = watch_job(c, job_id, lc_flag(a, "json"), 0, NULL, &closed, &timed_out);
    if (closed)
        fprintf(stderr,
                "lathe train watch: the event stream closed before job %s ended; run the command again to go "
                "on\n",
                job_id);
    return rc;
}

/* ============================================================================================================
 * Verb table
 * ==========================================================================================================
 */

#define COMMON_SUBMIT                                                                                        \
    {"model", LC_STR, "ID",                                                                                  \
     "base model: a catalog tinker_id, or jobs/<job_id>[/checkpoints/<name>] (required)"},                   \
        {"capability", LC_STR, "NAME@VERSION", "capability (required)"},                                     \
        {"name", LC_STR, "NAME", "job display name"},                                                        \
        {"project-ref", LC_STR, "KEY", "project (default: --project, else the workspace default)"},          \
        {"run-ref", LC_STR, "REF", "run reference, for lineage"}, {"tag", LC_LIST, "TAG", "job tag"},        \
        {"tags", LC_LIST, "A,B", "comma-separated job tags"},                                                \
        {"idempotency-key", LC_STR, "KEY", "send Idempotency-Key (a retried submit returns the same job)"},  \
        {"wait", LC_FLAG, NULL, "wait until the job ends; exit 0 only if it completed"},                     \
        {"poll-interval-sec", LC_NUM, "S", "with --wait: seconds between polls (default 5)"},                \
        {"timeout-sec", LC_NUM, "S", "with --wait: give up after S seconds (exit 1)"},                       \
        {"checkpoint-interval", LC_INT, "N", "optimizer steps between checkpoints"},                         \
        {"learning-rate", LC_NUM, "LR", "learning rate"}, {                                                  \
        "steps", LC_INT, "N", "optimizer steps"                                                              \
    }

static const lc_opt sft_opts[] = {
    COMMON_SUBMIT,
    {"dataset", LC_STR, "NAME@VERSION", "training dataset"},
    {"trajectory-dataset", LC_LIST, "NAME@VERSION", "Worlds trajectory dataset"},
    {"eval-dataset", LC_STR, "NAME@VERSION", "evaluation dataset (eval/loss at checkpoints and the end)"},
    {"max-sequence-length", LC_INT, "N", "tokens per example (default min(2048, model context))"},
    {"batch-size", LC_INT, "N", "sequences per micro-batch (default 16)"},
    {"gradient-accumulation-steps", LC_INT, "N", "micro-batches per optimizer step (default 1)"},
    {"epochs", LC_INT, "N", "passes over the data (default 1 when --steps is unset)"},
    {"lora-rank", LC_INT, "N", "LoRA rank (default 16)"},
    {"lora-alpha", LC_NUM, "A", "LoRA alpha (default 32; scale = alpha / rank)"},
    {"data", LC_STR, "FILE", "LOCAL training: train on this JSONL file without a server"},
    {"out", LC_STR, "DIR", "LOCAL training: write the adapter here"},
    {NULL, 0, NULL, NULL},
};

#define RL_COMMON                                                                                            \
    {"prompt-dataset", LC_STR, "NAME@VERSION", "prompt dataset"},                                            \
        {"reward-recipe", LC_STR, "NAME",                                                                    \
         "reward recipe (exact_match_v1, contains_v1, row_reward_v1, ...)"},                                 \
        {"reward-params", LC_STR, "JSON", "reward recipe params as a JSON object"},                          \
        {"max-turns", LC_INT, "N", "maximum conversation turns"},                                            \
        {"max-episode-steps", LC_INT, "N", "maximum steps per episode"},                                     \
        {"num-rollouts", LC_INT, "N", "rollouts per step (group size)"}, {                                   \
        "batch-size", LC_INT, "N", "prompts per step"                                                        \
    }

static const lc_opt rl_opts[] = {
    COMMON_SUBMIT,
    RL_COMMON,
    {"algorithm", LC_STR, "ALG", "importance_sampling | ppo (required)"},
    {"task", LC_STR, "NAME[@VERSION]", "task"},
    {"trajectory-dataset", LC_LIST, "NAME@VERSION", "trajectory dataset (offline RL)"},
    {"world-manifest-id", LC_STR, "ID", "Worlds manifest"},
    {"world-runtime-id", LC_STR, "ID", "Worlds runtime (needs --world-manifest-id)"},
    {"world-agent-name", LC_STR, "NAME", "Worlds agent (needs --world-runtime-id)"},
    {"world-goal", LC_STR, "TEXT", "Worlds goal"},
    {"world-reward", LC_STR, "NAME", "world reward policy"},
    {"world-reward-params", LC_STR, "JSON", "world reward params as a JSON object"},
    {"execution-mode", LC_STR, "MODE", "sync | one_step_off_async | fully_async (default sync)"},
    {"prompt-split", LC_STR, "SPLIT", "split of the prompt dataset"},
    {"lora-rank", LC_INT, "N", "LoRA rank (default 16)"},
    {"lora-alpha", LC_NUM, "A", "LoRA alpha (default 32)"},
    {"weight-sync-interval", LC_INT, "N", "steps between sampler weight refreshes"},
    {"max-steps-off-policy", LC_INT, "N", "async staleness bound"},
    {"max-new-tokens", LC_INT, "N", "tokens per completion"},
    {"temperature", LC_NUM, "T", "sampling temperature (0 = greedy)"},
    {"stop", LC_LIST, "TEXT", "stop string"},
    {"eval-dataset", LC_STR, "NAME@VERSION", "held-out prompt dataset"},
    {"eval-interval", LC_INT, "N", "eval every N steps"},
    {"eval-max-rollouts", LC_INT, "N", "prompts per eval pass"},
    {NULL, 0, NULL, NULL},
};

static const lc_opt grpo_opts[] = {
    COMMON_SUBMIT,
    RL_COMMON,
    {"task", LC_STR, "NAME[@VERSION]", "task (required)"},
    {"execution-mode", LC_STR, "MODE", "async | colocated | distributed (default async)"},
    {"num-rollout-workers", LC_INT, "N", "rollout workers (> 1 only with distributed)"},
    {"buffer-size", LC_INT, "N", "rollout groups buffered between workers and learner"},
    {NULL, 0, NULL, NULL},
};

static const lc_opt list_opts[] = {
    {"page", LC_INT, "N", "page (default 1)"},
    {"page-size", LC_INT, "N", "jobs per page, 1..100 (default 20)"},
    {"status", LC_STR, "STATUS", "queued | running | completed | failed | cancelled"},
    {"backend", LC_STR, "BACKEND", "tinker | ray"},
    {"trainer-type", LC_STR, "TYPE", "sft | rl"},
    {"project-ref", LC_STR, "KEY", "project"},
    {"tag", LC_STR, "TAG", "jobs carrying this tag"},
    {NULL, 0, NULL, NULL},
};

static const lc_opt wait_opts[] = {
    {"poll-interval-sec", LC_NUM, "S", "seconds between polls (default 5)"},
    {"timeout-sec", LC_NUM, "S", "give up after S seconds (exit 1)"},
    {NULL, 0, NULL, NULL},
};

static const lc_opt logs_opts[] = {
    {"after", LC_INT, "SEQ", "entries after this sequence number"},
    {"limit", LC_INT, "N", "one page of at most N entries (default: every entry)"},
    {"level", LC_STR, "LEVEL", "minimum level: debug | info | warning | error"},
    {NULL, 0, NULL, NULL},
};

static const lc_opt cancel_opts[] = {
    {"yes", LC_FLAG, NULL, "accepted for dn compatibility (lathe never prompts)"},
    {NULL, 0, NULL, NULL},
};

static const lc_opt pull_opts[] = {
    {"checkpoint", LC_STR, "NAME", "checkpoint to download (default: final, else the newest)"},
    {NULL, 0, NULL, NULL},
};

static const lc_opt catalog_opts[] = {
    {"query", LC_STR, "TEXT", "free-text search over id and display name"},
    {"search", LC_STR, "TEXT", "same as --query"},
    {"family", LC_STR, "FAMILY", "llama | qwen | mistral"},
    {"algorithm", LC_STR, "ALG", "sft | importance_sampling | ppo | grpo"},
    {"min-size-b", LC_NUM, "B", "minimum size in billions of parameters"},
    {"max-size-b", LC_NUM, "B", "maximum size in billions of parameters"},
    {"limit", LC_INT, "N", "1..100 (default 20)"},
    {NULL, 0, NULL, NULL},
};

static const lc_opt no_opts[] = {{NULL, 0, NULL, NULL}};

static const lc_verb verbs[] = {
    {"sft", v_sft, sft_opts, "sft --model ID --capability NAME@VERSION --dataset NAME@VERSION [knobs]",
     "submit a Tinker SFT job (with --data/--out: train locally instead)", 0, 0},
    {"rl", v_rl, rl_opts, "rl --model ID --capability NAME@VERSION --algorithm ALG [knobs]",
     "submit a Tinker RL job (importance_sampling or ppo)", 0, 0},
    {"grpo", v_grpo, grpo_opts, "grpo --model ID --capability C@V --task T --prompt-dataset D@V [knobs]",
     "submit a Ray GRPO job", 0, 0},
    {"list", v_list, list_opts, "list [--status S] [--page N]", "list training jobs, newest first", 0, 0},
    {"get", v_get, no_opts, "get JOB_ID", "show a job", 1, 1},
    {"wait", v_wait, wait_opts, "wait JOB_ID", "wait until the job ends; exit 0 only if it completed", 1, 1},
    {"watch", v_watch, no_opts, "watch JOB_ID",
     "live progress (step, loss, tokens/s, ETA), then final metrics", 1, 1},
    {"logs", v_logs, logs_opts, "logs JOB_ID", "the job's log entries", 1, 1},
    {"artifacts", v_artifacts, no_opts, "artifacts JOB_ID", "the job's outputs (checkpoints, adapter)", 1, 1},
    {"checkpoints", v_checkpoints, no_opts, "checkpoints JOB_ID", "the job's saved checkpoints", 1, 1},
    {"pull", v_pull, pull_opts, "pull JOB_ID DIR [--checkpoint NAME]",
     "download a checkpoint's PEFT adapter into DIR", 2, 2},
    {"cancel", v_cancel, cancel_opts, "cancel JOB_ID", "cancel a queued or running job", 1, 1},
    {"retry", v_retry, no_opts, "retry JOB_ID", "queue an ended job again (same id, attempt + 1)", 1, 1},
    {"delete", v_delete, no_opts, "delete JOB_ID", "delete an ended job and its checkpoints", 1, 1},
    {"catalog", v_catalog, catalog_opts, "catalog [--query TEXT]", "base models the workers can train", 0, 0},
};

static int wants_local(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "sft")) return 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--")) break;
        if (!strcmp(argv[i], "--data") || !strncmp(argv[i], "--data=", 7) || !strcmp(argv[i], "--out") ||
            !strncmp(argv[i], "--out=", 6))
            return 1;
    }
    return 0;
}

int cmd_train(int argc, char **argv) {
    if (wants_local(argc, argv)) return cmd_train_local(argc - 1, argv + 1);
    return lc_dispatch("Training jobs on a lathe server (the `dn train` verbs, plus grpo, watch, retry, "
                       "checkpoints, pull, delete).",
                       verbs, sizeof verbs / sizeof verbs[0], argc, argv);
}
