/* Unit tests for train/rl: learning tests on a tiny model (warm-started by a short SFT on mixed answers, then
 * RL on exact match raises the mean reward), the metrics keys, bit-exact resume in sync mode, and data
 * errors. Each test prints its first vs last rewards and the sampling / scoring / training time split. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/tiny.h"
#include "train/render.h"
#include "train/rl.h"
#include "util/util.h"

/* ---- fixture: a tiny model, its tokenizer, a warm-start adapter ---- */

typedef struct fx {
    char dir[64]; /* scratch dir; the model is in dir/model */
    char *model_dir;
    char adapter[96]; /* SFT warm-start PEFT dir */
    eng_engine *base;
    eng_tokenizer *tok;
    json_t *rows; /* RL prompt rows */
    json_t *task; /* the task handed to jobs (NULL: none) */
    json_t *traj; /* trajectory rows handed to jobs (NULL: none) */
} fx;

static fx F;

/* prompt, the rewarded answer, the other answer (SFT sees both equally often) */
static const char *const QA[][3] = {
    {"Favorite color?", "red", "blue"},
    {"Pick a fruit.", "apple", "pear"},
    {"Name a pet.", "cat", "dog"},
    {"Say a number.", "one", "two"},
};
#define NQA 4
#define NSFT (4 * NQA) /* both answers, without and with the GRPO test's task instruction */
#define INSTRUCTION "Answer in one word."

#ifndef RL_LR
#define RL_LR "0.002" /* sum-of-tokens losses with AdamW: 0.01 overshoots after a few steps */
#endif

static double now_s(void) {
    return lt_mono_s();
}

static int setup(void **state) {
    (void)state;
    memset(&F, 0, sizeof F);
    snprintf(F.dir, sizeof F.dir, "/tmp/lathe-test-rl-XXXXXX");
    if (!mkdtemp(F.dir)) return -1;
    lt_err err = {0};
    eng_tiny_opts o;
    eng_tiny_defaults(&o);
    o.init_std = 0.3;
    o.seed = 3;
    char *mdir = lt_path_join(F.dir, "model");
    if (eng_tiny_write(mdir, &o, &err)) {
        fprintf(stderr, "tiny: %s\n", err.msg);
        return -1;
    }
    F.base = eng_open(mdir, NULL, "tiny", &err);
    char *tj = lt_path_join(mdir, "tokenizer.json");
    F.tok = eng_tok_load(tj, &err);
    free(tj);
    F.model_dir = mdir;
    if (!F.base || !F.tok) {
        fprintf(stderr, "open: %s\n", err.msg);
        return -1;
    }
    eng_set_threads(1);
    /* warm start: SFT on both answers of every prompt, so the policy starts near 50% right */
    eng_lora_config lc = {.rank = 8, .alpha = 16, .targets = ENG_LORA_ALL, .seed = 1};
    eng_engine *e = eng_share(F.base, &lc, &err);
    if (!e) return -1;
    render_kind kind = render_pick(F.tok, NULL);
    int *tok[NSFT], *tgt[NSFT];
    float *w[NSFT];
    eng_datum d[NSFT];
    for (int i = 0; i < NSFT; i++) {
        json_t *conv = json_pack("[{s:s, s:s}, {s:s, s:s}]", "role", "user", "content", QA[i / 4][0], "role",
                                 "assistant", "content", QA[i / 4][1 + i % 2]);
        if (i % 4 >= 2)
            json_array_insert_new(conv, 0, json_pack("{s:s, s:s}", "role", "system", "content", INSTRUCTION));
        render_out ro = {0};
        if (render_chat(F.tok, kind, conv, 0, &ro, &err)) return -1;
        json_decref(conv);
        int n = (int)ro.n - 1;
        double ws = 0;
        for (int k = 1; k < (int)ro.n; k++)
            ws += ro.weights[k];
        tok[i] = malloc(n * sizeof(int)), tgt[i] = malloc(n * sizeof(int)), w[i] = malloc(n * sizeof(float));
        for (int k = 0; k < n; k++)
            tok[i][k] = ro.ids[k], tgt[i][k] = ro.ids[k + 1], w[i][k] = (float)(ro.weights[k + 1] / ws);
        d[i] = (eng_datum){.tokens = tok[i], .n = n, .targets = tgt[i], .weights = w[i]};
        render_out_free(&ro);
    }
    eng_adam_params ap;
    eng_adam_params_default(&ap);
    ap.learning_rate = 1e-2f, ap.eps = 1e-8f;
    int sft_steps = 80;
    for (int s = 0; s < sft_steps; s++) {
        double loss;
        if (eng_forward_backward(e, d, NSFT, "cross_entropy", NULL, 0, NULL, &loss, &err) ||
            eng_optim_step(e, &ap, &err)) {
            fprintf(stderr, "sft: %s\n", err.msg);
            return -1;
        }
        if (s == sft_steps - 1)
            fprintf(stderr, "# warm-start SFT: 80 steps, final mean token loss %.4f\n", loss / (NSFT));
    }
    for (int i = 0; i < NSFT; i++)
        free(tok[i]), free(tgt[i]), free(w[i]);
    snprintf(F.adapter, sizeof F.adapter, "%s/warm", F.dir);
    if (eng_peft_export(e->m, F.adapter, "tiny", &err)) return -1;
    eng_close(e);
    F.rows = json_array();
    for (int i = 0; i < NQA; i++)
        json_array_append_new(F.rows, json_pack("{s:s, s:s}", "prompt", QA[i][0], "answer", QA[i][1]));
    return 0;
}

static int teardown(void **state) {
    (void)state;
    eng_close(F.base);
    eng_tok_free(F.tok);
    json_decref(F.rows);
    lt_rm_rf(F.dir);
    free(F.model_dir);
    return 0;
}

/* ---- running a job ---- */

typedef struct rec {
    double reward[256];
    int nsteps;
    double eval[64];
    int nevals;
    int nckpt;
    char ckpt[16][64];
    json_t *last_metrics; /* the last step_complete metrics */
    double sample_ms, score_ms, train_ms;
    int stop_after; /* > 0: the stop hook turns 1 after this many steps */
} rec;

static int on_event(void *ud, const json_t *ev, lt_err *err) {
    rec *r = ud;
    const char *type = json_string_value(json_object_get(ev, "event_type"));
    json_t *m = json_object_get(ev, "metrics");
    if (getenv("RL_TEST_VERBOSE"))
        fprintf(stderr, "  [%s] %s\n", type ? type : "log",
                json_string_value(json_object_get(ev, "message")));
    if (type && !strcmp(type, "step_complete")) {
        if (r->nsteps < 256)
            r->reward[r->nsteps++] = json_number_value(json_array_get(json_object_get(m, "train/reward"), 0));
        r->sample_ms += json_number_value(json_array_get(json_object_get(m, "train/sampling_ms"), 0));
        r->score_ms += json_number_value(json_array_get(json_object_get(m, "train/scoring_ms"), 0));
        r->train_ms += json_number_value(json_array_get(json_object_get(m, "train/training_ms"), 0));
        json_decref(r->last_metrics);
        r->last_metrics = json_deep_copy(m);
    } else if (type && !strcmp(type, "eval_complete")) {
        if (r->nevals < 64)
            r->eval[r->nevals++] = json_number_value(json_array_get(json_object_get(m, "eval/reward"), 0));
    }
    return 0;
}

static int on_ckpt(void *ud, const char *name, long step, const char *dir, lt_err *err) {
    rec *r = ud;
    if (r->nckpt < 16) snprintf(r->ckpt[r->nckpt++], 64, "%s", name);
    return 0;
}

static int on_stop(void *ud) {
    rec *r = ud;
    return r->stop_after > 0 && r->nsteps >= r->stop_after;
}

static rows_set rows_of(json_t *rows) {
    static long lines[64];
    static size_t files[64];
    static char *fnames[] = {"train.jsonl"}, *splits[] = {"train"};
    for (int i = 0; i < 64; i++)
        lines[i] = i + 1, files[i] = 0;
    rows_set s = {.rows = rows,
                  .lines = lines,
                  .file = files,
                  .files = fnames,
                  .splits = splits,
                  .n = json_array_size(rows),
                  .nfiles = 1};
    return s;
}

static int run_job(const char *job_json, const char *eff_json, const char *work, const char *resume,
                   const rows_set *eval, rec *r, json_t **final, lt_err *err) {
    json_t *job = json_loads(job_json, 0, NULL), *eff = json_loads(eff_json, 0, NULL);
    assert_non_null(job);
    assert_non_null(eff);
    rows_set train = rows_of(F.rows ? F.rows : json_array()), traj = {0};
    if (F.traj) traj = rows_of(F.traj);
    tr_inputs in = {.job = job,
                    .eff = eff,
                    .base = F.base,
                    .tok = F.tok,
                    .model_id = "tiny",
                    .init_adapter = resume ? NULL : F.adapter,
                    .capability_prompt = "",
                    .train = F.rows ? &train : NULL,
                    .trajectories = F.traj ? &traj : NULL,
                    .eval = eval,
                    .dataset_name = "qa@0.1.0",
                    .task = F.task,
                    .work_dir = work,
                    .model_dir = F.model_dir,
                    .resume_dir = resume,
                    .threads = 1,
                    .seed = 7};
    tr_hooks h = {.ud = r, .event = on_event, .checkpoint = on_ckpt, .stop = on_stop};
    int rc = tr_rl_run(&in, &h, final, err);
    if (!F.rows) json_decref(train.rows);
    json_decref(job);
    json_decref(eff);
    return rc;
}

static double mean(const double *x, int n) {
    double s = 0;
    for (int i = 0; i < n; i++)
        s += x[i];
    return n ? s / n : 0;
}

static char *work_dir(const char *name) {
    char *w = lt_path_join(F.dir, name);
    lt_err err = {0};
    assert_int_equal(lt_mkdir_p(w, 0755, &err), 0);
    return w;
}

/* Runs a learning job and checks the reward rises: mean of the last 4 steps >= mean of the first 2 + margin.
 */
static void learns(const char *label, const char *job, const char *eff, double margin) {
    rec r = {0};
    lt_err err = {0};
    json_t *final = NULL;
    char *w = work_dir(label);
    double t0 = now_s();
    int rc = run_job(job, eff, w, NULL, NULL, &r, &final, &err);
    double dt = now_s() - t0;
    if (rc != TR_DONE) fail_msg("%s: %s", label, err.msg);
    assert_true(r.nsteps >= 8);
    double first = mean(r.reward, 2), last = mean(r.reward + r.nsteps - 4, 4);
    fprintf(stderr, "# %s: %d steps in %.1f s; reward first 2 steps %.3f -> last 4 steps %.3f; per step",
            label, r.nsteps, dt, first, last);
    for (int i = 0; i < r.nsteps; i++)
        fprintf(stderr, " %.2f", r.reward[i]);
    fprintf(stderr, "\n# %s: time split: sampling %.0f ms, scoring %.1f ms, training %.0f ms\n", label,
            r.sample_ms, r.score_ms, r.train_ms);
    if (!(last >= first + margin)) fail_msg("%s: reward did not rise: %.3f -> %.3f", label, first, last);
    assert_non_null(json_object_get(final, "train/reward_last"));
    json_decref(final);
    json_decref(r.last_metrics);
    free(w);
}

static void test_tinker_is_sync_learns(void **state) {
    (void)state;
    learns("tinker-is-sync", "{\"backend\":\"tinker\",\"trainer_type\":\"rl\"}",
           "{\"algorithm\":\"importance_sampling\",\"execution_mode\":\"sync\",\"steps\":16,"
           "\"learning_rate\":" RL_LR
           ",\"num_rollouts\":16,\"batch_size\":4,\"max_new_tokens\":4,\"temperature\":"
           "1.0,"
           "\"stop\":[\"\\n\"],\"reward_recipe\":{\"name\":\"exact_match_v1\",\"params\":{}},"
           "\"checkpoint_interval\":100}",
           0.25);
}

static void test_tinker_ppo_fully_async_learns(void **state) {
    (void)state;
    learns(
        "tinker-ppo-fully-async", "{\"backend\":\"tinker\",\"trainer_type\":\"rl\"}",
        "{\"algorithm\":\"ppo\",\"execution_mode\":\"fully_async\",\"max_steps_off_policy\":2,\"steps\":16,"
        "\"learning_rate\":" RL_LR
        ",\"num_rollouts\":16,\"batch_size\":4,\"max_new_tokens\":4,\"temperature\":1."
        "0,"
        "\"stop\":[\"\\n\"],\"reward_recipe\":{\"name\":\"exact_match_v1\",\"params\":{}},"
        "\"checkpoint_interval\":100}",
        0.25);
}

static void test_grpo_colocated_learns(void **state) {
    (void)state;
    /* GRPO has no stop knob: completions end at "\n\nUser:", end-of-text or max_new_tokens, so the task's
     * regex verification (task_env_verifier_v1) checks the first word. */
    F.task = json_loads(
        "{\"name\":\"pick\",\"version\":\"0.1.0\",\"instruction\":\"" INSTRUCTION "\","
        "\"verification\":{\"method\":\"regex\",\"pattern\":\"^\\\\s*(red|apple|cat|one)(\\\\s|$)\"}}",
        0, NULL);
    assert_non_null(F.task);
    learns("grpo-colocated", "{\"backend\":\"ray\",\"trainer_type\":\"rl\"}",
           "{\"algorithm\":\"grpo\",\"execution_mode\":\"colocated\",\"steps\":16,\"learning_rate\":" RL_LR
           ","
           "\"num_rollouts\":4,\"batch_size\":4,\"max_new_tokens\":4,"
           "\"reward_recipe\":{\"name\":\"task_env_verifier_v1\",\"params\":{}},\"checkpoint_interval\":100}",
           0.25);
    json_decref(F.task);
    F.task = NULL;
}

static void test_grpo_async_runs(void **state) {
    (void)state;
    rec r = {0};
    lt_err err = {0};
    json_t *final = NULL;
    char *w = work_dir("grpo-async");
    int rc =
        run_job("{\"backend\":\"ray\",\"trainer_type\":\"rl\"}",
                "{\"algorithm\":\"grpo\",\"execution_mode\":\"async\",\"steps\":4,\"learning_rate\":0.01,"
                "\"num_rollouts\":4,\"batch_size\":2,\"max_new_tokens\":4,\"stop\":[\"\\n\"],"
                "\"reward_recipe\":{\"name\":\"exact_match_v1\"},\"checkpoint_interval\":2}",
                w, NULL, NULL, &r, &final, &err);
    if (rc != TR_DONE) fail_msg("%s", err.msg);
    assert_int_equal(r.nsteps, 4);
    /* async metrics; staleness never above 1 */
    json_t *m = r.last_metrics;
    assert_true(json_integer_value(json_array_get(json_object_get(m, "train/staleness"), 0)) <= 1);
    assert_non_null(json_object_get(m, "train/generation_step"));
    assert_non_null(json_object_get(m, "train/pending_generation_groups"));
    assert_int_equal(json_integer_value(json_array_get(json_object_get(m, "train/model_version"), 0)), 4);
    assert_int_equal(r.nckpt, 3);
    assert_string_equal(r.ckpt[0], "checkpoint-1-step2");
    assert_string_equal(r.ckpt[1], "checkpoint-2-step4");
    assert_string_equal(r.ckpt[2], "final");
    json_decref(final);
    json_decref(r.last_metrics);
    free(w);
}

/* The lathe binary next to this test (build/X/tests/test_rl or build/X/asan/tests/test_rl -> build/X/lathe).
 */
static int find_lathe(char *out, size_t n) {
    char exe[4096];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (k <= 0) return -1;
    exe[k] = '\0';
    for (int up = 2; up <= 3; up++) {
        char d[4096];
        snprintf(d, sizeof d, "%s", exe);
        for (int i = 0; i < up; i++) {
            char *sl = strrchr(d, '/');
            if (!sl) return -1;
            *sl = '\0';
        }
        snprintf(out, n, "%s/lathe", d);
        if (access(out, X_OK) == 0) return 0;
    }
    return -1;
}

/* Distributed GRPO: rank 0 learns, two rollout ranks sample (mpirun -np 3 lathe rl-rank). Skipped without
 * mpirun or a lathe binary next to the test. */
static void test_grpo_distributed_learns(void **state) {
    (void)state;
    char lathe[4200];
    if (system("command -v mpirun >/dev/null 2>&1") != 0 || find_lathe(lathe, sizeof lathe) != 0) {
        fprintf(stderr, "# grpo-distributed: skipped (no mpirun or no lathe binary next to the test)\n");
        skip();
    }
    setenv("LATHE_RANK_EXE", lathe, 1);
    F.task = json_loads(
        "{\"name\":\"pick\",\"version\":\"0.1.0\",\"instruction\":\"" INSTRUCTION "\","
        "\"verification\":{\"method\":\"regex\",\"pattern\":\"^\\\\s*(red|apple|cat|one)(\\\\s|$)\"}}",
        0, NULL);
    assert_non_null(F.task);
    learns("grpo-distributed", "{\"backend\":\"ray\",\"trainer_type\":\"rl\"}",
           "{\"algorithm\":\"grpo\",\"execution_mode\":\"distributed\",\"num_rollout_workers\":2,"
           "\"steps\":16,\"learning_rate\":" RL_LR
           ",\"num_rollouts\":4,\"batch_size\":4,\"max_new_tokens\":4,"
           "\"reward_recipe\":{\"name\":\"task_env_verifier_v1\",\"params\":{}},\"checkpoint_interval\":8}",
           0.25);
    /* a stop request reaches the ranks: the job ends early with a checkpoint of the step it stopped at */
    rec r = {.stop_after = 3};
    lt_err err = {0};
    json_t *final = NULL;
    char *w = work_dir("grpo-distributed-stop");
    int rc = run_job("{\"backend\":\"ray\",\"trainer_type\":\"rl\"}",
                     "{\"algorithm\":\"grpo\",\"execution_mode\":\"distributed\",\"num_rollout_workers\":1,"
                     "\"steps\":200,\"num_rollouts\":4,\"batch_size\":4,\"max_new_tokens\":4,"
                     "\"reward_recipe\":{\"name\":\"task_env_verifier_v1\"},\"checkpoint_interval\":1000}",
                     w, NULL, NULL, &r, &final, &err);
    if (rc != TR_STOPPED) fail_msg("rc %d: %s", rc, err.msg);
    assert_true(r.nsteps >= 3 && r.nsteps < 200);
    assert_int_equal(r.nckpt, 1);
    char want[64];
    snprintf(want, sizeof want, "checkpoint-1-step%d", r.nsteps);
    assert_string_equal(r.ckpt[0], want);
    fprintf(stderr, "# grpo-distributed: stopped after step %d of 200\n", r.nsteps);
    json_decref(final);
    json_decref(r.last_metrics);
    free(w);
    json_decref(F.task);
    F.task = NULL;
}

/* fully_async with weight_sync_interval 3 > max_steps_off_policy 1: the sampler lags on purpose; batches from
 * an older publication are dropped and regenerated, never forever. */
static void test_fully_async_lagging_sampler(void **state) {
    (void)state;
    rec r = {0};
    lt_err err = {0};
    json_t *final = NULL;
    char *w = work_dir("fully-async-lag");
    int rc =
        run_job("{\"backend\":\"tinker\",\"trainer_type\":\"rl\"}",
                "{\"algorithm\":\"ppo\",\"execution_mode\":\"fully_async\",\"max_steps_off_policy\":1,"
                "\"weight_sync_interval\":3,\"steps\":7,\"num_rollouts\":4,\"batch_size\":2,"
                "\"max_new_tokens\":3,\"stop\":[\"\\n\"],\"reward_recipe\":{\"name\":\"exact_match_v1\"}}",
                w, NULL, NULL, &r, &final, &err);
    if (rc != TR_DONE) fail_msg("%s", err.msg);
    assert_int_equal(r.nsteps, 7);
    assert_int_equal(json_integer_value(json_object_get(final, "train/weight_sync_count")), 2);
    /* step 7 trains after the publication of step 6: an older batch (version 3) was dropped and regenerated
     */
    json_int_t gen =
        json_integer_value(json_array_get(json_object_get(r.last_metrics, "train/generation_step"), 0));
    assert_int_equal(gen, 6);
    json_decref(final);
    json_decref(r.last_metrics);
    free(w);
}

static char *read_all(const char *dir, const char *file, size_t *n) {
    char *p = lt_path_join(dir, file);
    lt_err err = {0};
    char *d = lt_read_file(p, n, &err);
    free(p);
    return d;
}

/* A sync run stopped after checkpoint 1 and resumed ends with the adapter of an uninterrupted run, bit for
 * bit; with weight_sync_interval 3 the sampler lags, so its weights travel in the checkpoint too. */
static void test_sync_resume_bit_exact(void **state) {
    (void)state;
    const char *job = "{\"backend\":\"tinker\",\"trainer_type\":\"rl\"}";
    const char *eff = "{\"algorithm\":\"ppo\",\"execution_mode\":\"sync\",\"steps\":5,\"learning_rate\":0.01,"
                      "\"num_rollouts\":8,\"batch_size\":2,\"max_new_tokens\":4,\"stop\":[\"\\n\"],"
                      "\"weight_sync_interval\":3,\"reward_recipe\":{\"name\":\"exact_match_v1\"},"
                      "\"checkpoint_interval\":2,\"eval_interval\":2,\"eval_max_rollouts\":3}";
    json_t *ev_rows = json_pack("[{s:s, s:s}, {s:s, s:s}]", "prompt", QA[0][0], "answer", QA[0][1], "prompt",
                                QA[2][0], "answer", QA[2][1]);
    rows_set evs = rows_of(ev_rows);
    rec a = {0}, b = {0};
    lt_err err = {0};
    json_t *fa = NULL, *fb = NULL;
    char *wa = work_dir("resume-a"), *wb = work_dir("resume-b");
    if (run_job(job, eff, wa, NULL, &evs, &a, &fa, &err) != TR_DONE) fail_msg("%s", err.msg);
    assert_int_equal(a.nsteps, 5);
    assert_int_equal(a.nevals, 3); /* steps 2, 4 and the last */
    /* interrupted: stop after step 2 (checkpoint-1-step2; the sampler still holds step 0's weights), then
     * resume from it */
    b.stop_after = 2;
    if (run_job(job, eff, wb, NULL, &evs, &b, &fb, &err) != TR_STOPPED) fail_msg("%s", err.msg);
    assert_int_equal(b.nsteps, 2);
    assert_int_equal(b.nckpt, 1);
    assert_string_equal(b.ckpt[0], "checkpoint-1-step2");
    json_decref(fb);
    fb = NULL;
    char *rdir = lt_path_join(wb, "checkpoint-1-step2");
    char *sp = lt_path_join(rdir, "sampler_state.safetensors");
    FILE *f = fopen(sp, "rb");
    assert_non_null(f);
    fclose(f);
    free(sp);
    rec c = {0};
    char *wc = work_dir("resume-c");
    if (run_job(job, eff, wc, rdir, &evs, &c, &fb, &err) != TR_DONE) fail_msg("resume: %s", err.msg);
    assert_int_equal(c.nsteps, 3);
    for (int i = 0; i < 3; i++)
        if (a.reward[2 + i] != c.reward[i])
            fail_msg("step %d reward %g vs %g", 3 + i, a.reward[2 + i], c.reward[i]);
    for (int i = 0; i < 2; i++)
        if (a.eval[1 + i] != c.eval[i]) fail_msg("eval %d: %g vs %g", i, a.eval[1 + i], c.eval[i]);
    size_t na, nc;
    char *fa_bytes = read_all(wa, "final/adapter_model.safetensors", &na);
    char *fc_bytes = read_all(wc, "final/adapter_model.safetensors", &nc);
    assert_non_null(fa_bytes);
    assert_non_null(fc_bytes);
    assert_int_equal(na, nc);
    assert_memory_equal(fa_bytes, fc_bytes, na);
    fprintf(stderr, "# resume: final adapters identical (%zu bytes); rewards", na);
    for (int i = 0; i < 5; i++)
        fprintf(stderr, " %.3f", a.reward[i]);
    fprintf(stderr, "\n");
    free(fa_bytes), free(fc_bytes);
    assert_int_equal(json_integer_value(json_object_get(fa, "train/weight_sync_count")), 1);
    json_decref(fa), json_decref(fb);
    json_decref(a.last_metrics), json_decref(b.last_metrics), json_decref(c.last_metrics);
    json_decref(ev_rows);
    free(rdir), free(wa), free(wb), free(wc);
}

static void test_metrics_keys(void **state) {
    (void)state;
    rec r = {0};
    lt_err err = {0};
    json_t *final = NULL;
    char *w = work_dir("keys");
    int rc = run_job("{\"backend\":\"tinker\",\"trainer_type\":\"rl\"}",
                     "{\"algorithm\":\"importance_sampling\",\"steps\":1,\"num_rollouts\":2,\"batch_size\":1,"
                     "\"max_new_tokens\":3,\"temperature\":0,\"reward_recipe\":{\"name\":\"gsm8k_v1\","
                     "\"params\":{\"expected\":\"7\"}}}",
                     w, NULL, NULL, &r, &final, &err);
    if (rc != TR_DONE) fail_msg("%s", err.msg);
    static const char *const keys[] = {"steps",
                                       "train/reward",
                                       "train/reward_max",
                                       "train/reward_min",
                                       "train/model_version",
                                       "train/weight_sync_count",
                                       "train/entropy",
                                       "train/kl_sample_train",
                                       "reward/passed",
                                       "reward/extraction_failed",
                                       NULL};
    for (int i = 0; keys[i]; i++)
        if (!json_is_array(json_object_get(r.last_metrics, keys[i]))) fail_msg("no %s", keys[i]);
    assert_string_equal(json_string_value(json_object_get(r.last_metrics, "reward/recipe")), "gsm8k_v1");
    /* greedy, same adapter as the sampler: learner and sampler logprobs agree */
    double kl =
        json_number_value(json_array_get(json_object_get(r.last_metrics, "train/kl_sample_train"), 0));
    assert_true(fabs(kl) < 1e-3);
    assert_int_equal(r.nckpt, 2); /* checkpoint-1-step1 and final */
    json_decref(final);
    json_decref(r.last_metrics);
    free(w);
}

/* Offline RL: trajectory rows only, no recipe given: each agent step is a prompt, scored by
 * trajectory_imitation_v1 (the row's success as the reward of an exact match). */
static void test_offline_trajectories(void **state) {
    (void)state;
    json_t *saved = F.rows;
    F.rows = NULL;
    F.traj = json_loads("[{\"steps\":[{\"step_id\":1,\"source\":\"user\",\"message\":\"Favorite color?\"},"
                        "{\"step_id\":2,\"source\":\"agent\",\"message\":\"red\"},"
                        "{\"step_id\":3,\"source\":\"user\",\"message\":\"Name a pet.\"},"
                        "{\"step_id\":4,\"source\":\"agent\",\"message\":\"cat\"}],\"success\":true}]",
                        0, NULL);
    assert_non_null(F.traj);
    rec r = {0};
    lt_err err = {0};
    json_t *final = NULL;
    char *w = work_dir("offline");
    int rc = run_job("{\"backend\":\"tinker\",\"trainer_type\":\"rl\"}",
                     "{\"algorithm\":\"importance_sampling\",\"steps\":2,\"num_rollouts\":4,\"batch_size\":2,"
                     "\"max_new_tokens\":4,\"stop\":[\"\\n\"]}",
                     w, NULL, NULL, &r, &final, &err);
    if (rc != TR_DONE) fail_msg("%s", err.msg);
    assert_int_equal(r.nsteps, 2);
    assert_string_equal(json_string_value(json_object_get(final, "reward/recipe")),
                        "trajectory_imitation_v1");
    assert_int_equal(json_integer_value(json_object_get(final, "train/num_examples")),
                     2); /* two agent steps */
    assert_non_null(json_object_get(r.last_metrics, "reward/exact_match"));
    json_decref(final);
    json_decref(r.last_metrics);
    json_decref(F.traj);
    F.traj = NULL;
    F.rows = saved;
    free(w);
}

static void test_errors(void **state) {
    (void)state;
    rec r = {0};
    lt_err err = {0};
    json_t *final = NULL;
    char *w = work_dir("errors");
    json_t *saved = F.rows;
    F.rows = json_pack("[{s:s, s:s}, {s:s}]", "prompt", "a", "answer", "b", "prompt", "no answer here");
    int rc = run_job("{\"backend\":\"tinker\",\"trainer_type\":\"rl\"}",
                     "{\"algorithm\":\"ppo\",\"reward_recipe\":{\"name\":\"exact_match_v1\"}}", w, NULL, NULL,
                     &r, &final, &err);
    assert_int_equal(rc, TR_FAILED);
    assert_int_equal(err.code, 422);
    if (!strstr(err.msg, "file train.jsonl line 2") || !strstr(err.msg, "needs an expected output"))
        fail_msg("%s", err.msg);
    rc = run_job("{\"backend\":\"tinker\",\"trainer_type\":\"rl\"}",
                 "{\"algorithm\":\"ppo\",\"reward_recipe\":{\"name\":\"task_env_agent_v1\"}}", w, NULL, NULL,
                 &r, &final, &err);
    assert_int_equal(rc, TR_FAILED);
    assert_non_null(strstr(err.msg, "environment backend"));
    rc = run_job("{\"backend\":\"tinker\",\"trainer_type\":\"rl\"}", "{\"algorithm\":\"dpo\"}", w, NULL, NULL,
                 &r, &final, &err);
    assert_int_equal(rc, TR_FAILED);
    assert_non_null(strstr(err.msg, "importance_sampling or ppo"));
    json_decref(F.rows);
    F.rows = saved;
    assert_int_equal(r.nsteps, 0);
    free(w);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_metrics_keys),
        cmocka_unit_test(test_offline_trajectories),
        cmocka_unit_test(test_tinker_is_sync_learns),
        cmocka_unit_test(test_tinker_ppo_fully_async_learns),
        cmocka_unit_test(test_grpo_colocated_learns),
        cmocka_unit_test(test_grpo_async_runs),
        cmocka_unit_test(test_fully_async_lagging_sampler),
        cmocka_unit_test(test_sync_resume_bit_exact),
        cmocka_unit_test(test_grpo_distributed_learns),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
