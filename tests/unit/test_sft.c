/* Unit tests for train/sft (tr_sft_run) on a tiny random model written into a temp dir: the loss falls,
 * every event carries docs/spec.md §4.6's metric keys, checkpoints are named and written as trainer.h says, a
 * run stopped through h->stop and resumed ends bit-exact with an uninterrupted one, bad rows fail with 422
 * before any event, steps capping epochs warns, gradient accumulation matches one big batch, truncation keeps
 * max_sequence_length tokens, and the capability prompt is part of what is trained on. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/engine.h"
#include "engine/tiny.h"
#include "engine/tokenizer.h"
#include "train/render.h"
#include "util/rows.h"
#include "train/trainer.h"
#include "util/util.h"

static char tmp[] = "/tmp/lathe-test-sft-XXXXXX";
static char *model_dir;
static eng_engine *base;
static eng_tokenizer *tok;

static int setup(void **state) {
    (void)state;
    if (!mkdtemp(tmp)) return -1;
    model_dir = lt_path_join(tmp, "model");
    eng_tiny_opts o;
    eng_tiny_defaults(&o);
    o.seed = 3;
    o.init_std = 0.1; /* learnable through LoRA alone (tiny.h) */
    lt_err err = {0};
    if (eng_tiny_write(model_dir, &o, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    eng_set_threads(1);
    tok = eng_tok_load(model_dir, &err);
    base = tok ? eng_open(model_dir, NULL, "tiny", &err) : NULL;
    if (!base) fprintf(stderr, "%s\n", err.msg);
    return base ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    eng_close(base);
    eng_tok_free(tok);
    lt_rm_rf(tmp);
    free(model_dir);
    return 0;
}

/* ---- inputs ---- */

/* A rows_set of the given JSON rows, all from one file of split "train", row i on line 2 * i + 1. */
static void make_rows(rows_set *s, const char *const *rows, size_t n) {
    memset(s, 0, sizeof *s);
    s->rows = json_array();
    s->lines = calloc(n + 1, sizeof *s->lines);
    s->file = calloc(n + 1, sizeof *s->file);
    s->files = malloc(sizeof *s->files);
    s->splits = malloc(sizeof *s->splits);
    assert_true(s->rows && s->lines && s->file && s->files && s->splits);
    s->files[0] = lt_strdup("data/train.jsonl");
    s->splits[0] = lt_strdup("train");
    s->nfiles = 1;
    for (size_t i = 0; i < n; i++) {
        json_error_t je;
        json_t *r = json_loads(rows[i], 0, &je);
        if (!r) fprintf(stderr, "bad test row %s: %s\n", rows[i], je.text);
        assert_non_null(r);
        json_array_append_new(s->rows, r);
        s->lines[i] = 2 * (long)i + 1;
        s->n++;
    }
    s->cap = n;
}

static const char *const ADD_ROWS[] = {
    "{\"messages\":[{\"role\":\"user\",\"content\":\"What is 1 plus "
    "2?\"},{\"role\":\"assistant\",\"content\":\"3\"}]}",
    "{\"messages\":[{\"role\":\"user\",\"content\":\"What is 2 plus "
    "2?\"},{\"role\":\"assistant\",\"content\":\"4\"}]}",
    "{\"messages\":[{\"role\":\"user\",\"content\":\"What is 3 plus "
    "2?\"},{\"role\":\"assistant\",\"content\":\"5\"}]}",
    "{\"prompt\":\"Say hi.\",\"answer\":\"hi there\"}",
    "{\"messages\":[{\"role\":\"user\",\"content\":\"What is 4 plus "
    "4?\"},{\"role\":\"assistant\",\"content\":\"8\"}]}",
    "{\"question\":\"Name a color.\",\"expected_output\":\"blue\"}",
    "{\"messages\":[{\"role\":\"system\",\"content\":\"Be terse.\"},{\"role\":\"user\",\"content\":\"The cat "
    "sat on the?\"},{\"role\":\"assistant\",\"content\":\"mat\"}]}",
    "{\"input\":\"What is 1 plus 1?\",\"target\":\"2\"}",
};
#define N_ADD (sizeof ADD_ROWS / sizeof *ADD_ROWS)

/* What the hooks saw. */
typedef struct {
    json_t *events; /* every event, in order */
    json_t *ckpts;  /* [[name, step], ...] */
    int stop_after; /* h->stop says yes once this many steps completed (0: never) */
    int nsteps;
} rec;

static int on_event(void *ud, const json_t *ev, lt_err *err) {
    (void)err;
    rec *r = ud;
    json_array_append_new(r->events, json_deep_copy(ev));
    const char *t = json_string_value(json_object_get(ev, "event_type"));
    if (t && !strcmp(t, "step_complete")) r->nsteps++;
    return 0;
}

static int on_ckpt(void *ud, const char *name, long step, const char *dir, lt_err *err) {
    (void)err;
    rec *r = ud;
    const char *files[] = {"adapter_config.json", "adapter_model.safetensors", "training_state.safetensors"};
    for (int i = 0; i < 3; i++) {
        char *p = lt_path_join(dir, files[i]);
        struct stat st;
        assert_int_equal(stat(p, &st), 0);
        free(p);
    }
    json_array_append_new(r->ckpts, json_pack("[s, I]", name, (json_int_t)step));
    return 0;
}

static int on_stop(void *ud) {
    rec *r = ud;
    return r->stop_after && r->nsteps >= r->stop_after;
}

static void rec_init(rec *r, tr_hooks *h) {
    memset(r, 0, sizeof *r);
    r->events = json_array();
    r->ckpts = json_array();
    *h = (tr_hooks){.ud = r, .event = on_event, .checkpoint = on_ckpt, .stop = on_stop};
}

static void rec_free(rec *r) {
    json_decref(r->events);
    json_decref(r->ckpts);
}

static json_t *eff_of(const char *text) {
    json_error_t je;
    json_t *e = json_loads(text, 0, &je);
    if (!e) fprintf(stderr, "bad eff: %s\n", je.text);
    assert_non_null(e);
    return e;
}

/* A fresh work dir under tmp. */
static char *work_dir(const char *name) {
    char *d = lt_path_join(tmp, name);
    lt_rm_rf(d);
    lt_err err = {0};
    assert_int_equal(lt_mkdir_p(d, 0755, &err), 0);
    return d;
}

static tr_inputs inputs(const json_t *eff, const rows_set *train, const rows_set *eval, const char *work) {
    return (tr_inputs){.eff = eff,
                       .base = base,
                       .tok = tok,
                       .model_id = "tiny",
                       .capability_prompt = "",
                       .train = train,
                       .eval = eval,
                       .dataset_name = "adds@1.0.0",
                       .work_dir = work,
                       .threads = 1,
                       .seed = 0};
}

/* The metric arrays of the step_complete events, e.g. "train/loss". */
static void step_values(const rec *r, const char *key, double *out, int n) {
    int k = 0;
    size_t i;
    json_t *ev;
    json_array_foreach(r->events, i, ev) {
        const char *t = json_string_value(json_object_get(ev, "event_type"));
        if (!t || strcmp(t, "step_complete") != 0) continue;
        assert_true(k < n);
        out[k++] = json_number_value(json_array_get(json_object_get(json_object_get(ev, "metrics"), key), 0));
    }
    assert_int_equal(k, n);
}

static int count_logs(const rec *r, const char *level, const char *needle) {
    int c = 0;
    size_t i;
    json_t *ev;
    json_array_foreach(r->events, i, ev) {
        if (json_object_get(ev, "event_type")) continue;
        const char *l = json_string_value(json_object_get(ev, "level"));
        const char *m = json_string_value(json_object_get(ev, "message"));
        if (l && m && !strcmp(l, level) && strstr(m, needle)) c++;
    }
    return c;
}

static unsigned char *file_bytes(const char *dir, const char *name, size_t *n) {
    char *p = lt_path_join(dir, name);
    lt_err err = {0};
    char *b = lt_read_file(p, n, &err);
    if (!b) fprintf(stderr, "%s\n", err.msg);
    assert_non_null(b);
    free(p);
    return (unsigned char *)b;
}

/* ---- tests ---- */

static void test_loss_falls_and_events(void **state) {
    (void)state;
    rows_set train, eval;
    make_rows(&train, ADD_ROWS, N_ADD);
    make_rows(&eval, ADD_ROWS, 3);
    json_t *eff = eff_of("{\"batch_size\":4,\"gradient_accumulation_steps\":1,\"learning_rate\":0.02,"
                         "\"steps\":30,\"epochs\":null,\"lora_rank\":8,\"lora_alpha\":16,"
                         "\"max_sequence_length\":2048,\"checkpoint_interval\":10}");
    char *work = work_dir("falls");
    tr_inputs in = inputs(eff, &train, &eval, work);
    rec r;
    tr_hooks h;
    rec_init(&r, &h);
    json_t *fm = NULL;
    lt_err err = {0};
    int rc = tr_sft_run(&in, &h, &fm, &err);
    if (rc) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(rc, TR_DONE);

    double loss[30];
    step_values(&r, "train/loss", loss, 30);
    double first = (loss[0] + loss[1] + loss[2]) / 3, last = (loss[27] + loss[28] + loss[29]) / 3;
    assert_true(last < first - 0.5);

    /* every event: step_complete / eval_complete with their keys, or a log line */
    const char *keys[] = {"steps",
                          "train/loss",
                          "train/learning_rate",
                          "train/num_sequences",
                          "train/num_tokens",
                          "train/tokens_per_s"};
    size_t i;
    json_t *ev;
    long nstep = 0, neval = 0;
    json_array_foreach(r.events, i, ev) {
        const char *t = json_string_value(json_object_get(ev, "event_type"));
        json_t *m = json_object_get(ev, "metrics"), *d = json_object_get(ev, "data");
        if (!t) {
            assert_non_null(json_string_value(json_object_get(ev, "message")));
            assert_non_null(json_string_value(json_object_get(ev, "level")));
        } else if (!strcmp(t, "step_complete")) {
            nstep++;
            for (int k = 0; k < 6; k++) {
                json_t *a = json_object_get(m, keys[k]);
                assert_true(json_is_array(a) && json_array_size(a) == 1 &&
                            json_is_number(json_array_get(a, 0)));
            }
            assert_int_equal(json_integer_value(json_array_get(json_object_get(m, "steps"), 0)), nstep);
            assert_int_equal(json_integer_value(json_array_get(json_object_get(m, "train/num_sequences"), 0)),
                             4);
            assert_int_equal(json_integer_value(json_object_get(d, "step")), nstep);
            assert_int_equal(json_integer_value(json_object_get(d, "total_steps")), 30);
            assert_true(json_is_number(json_object_get(d, "tokens_per_s")));
            double lr = json_number_value(json_array_get(json_object_get(m, "train/learning_rate"), 0));
            assert_true(fabs(lr - 0.02 * (1.0 - (double)(nstep - 1) / 30.0)) < 1e-7);
        } else {
            assert_string_equal(t, "eval_complete");
            neval++;
            json_t *es = json_object_get(m, "eval/steps"), *el = json_object_get(m, "eval/loss");
            assert_true(json_is_array(es) && json_is_array(el));
            assert_int_equal(json_integer_value(json_array_get(es, 0)), 10 * neval);
            assert_true(json_number_value(json_array_get(el, 0)) > 0);
            assert_int_equal(json_integer_value(json_object_get(m, "eval/num_examples")), 3);
        }
    }
    assert_int_equal(nstep, 30);
    assert_int_equal(neval, 3);
    assert_int_equal(count_logs(&r, "info", "training on 8 examples"), 1);

    /* checkpoints 10, 20, 30, then final */
    assert_int_equal(json_array_size(r.ckpts), 4);
    const char *names[] = {"checkpoint-1-step10", "checkpoint-2-step20", "checkpoint-3-step30", "final"};
    for (int k = 0; k < 4; k++) {
        assert_string_equal(json_string_value(json_array_get(json_array_get(r.ckpts, k), 0)), names[k]);
        assert_int_equal(json_integer_value(json_array_get(json_array_get(r.ckpts, k), 1)),
                         k < 3 ? 10 * (k + 1) : 30);
    }
    char *fin = lt_path_join(work, "final"), *last3 = lt_path_join(work, "checkpoint-3-step30");
    size_t na, nb;
    unsigned char *a = file_bytes(fin, "adapter_model.safetensors", &na),
                  *b = file_bytes(last3, "adapter_model.safetensors", &nb);
    assert_true(na == nb && memcmp(a, b, na) == 0);
    free(a), free(b), free(fin), free(last3);

    /* final metrics */
    assert_int_equal(json_integer_value(json_object_get(fm, "train/steps")), 30);
    assert_int_equal(json_integer_value(json_object_get(fm, "train/num_examples")), 8);
    assert_int_equal(json_integer_value(json_object_get(fm, "train/epochs_completed")), 15);
    assert_true(json_integer_value(json_object_get(fm, "train/num_tokens_processed")) > 30 * 4);
    assert_true(json_number_value(json_object_get(fm, "train/loss_last")) == loss[29]);
    double best = loss[0], sum = 0;
    for (int k = 0; k < 30; k++)
        best = loss[k] < best ? loss[k] : best, sum += loss[k];
    assert_true(json_number_value(json_object_get(fm, "train/loss_best")) == best);
    assert_true(fabs(json_number_value(json_object_get(fm, "train/loss_mean")) - sum / 30) < 1e-12);
    assert_true(json_number_value(json_object_get(fm, "eval/loss")) > 0);
    assert_int_equal(json_integer_value(json_object_get(fm, "eval/num_examples")), 3);

    json_decref(fm);
    rec_free(&r);
    json_decref(eff);
    rows_set_free(&train);
    rows_set_free(&eval);
    free(work);
}

/* 8 steps with interval 3 straight through vs. stopped after step 4 and resumed: same adapter bytes. */
static void test_resume_bit_exact(void **state) {
    (void)state;
    rows_set train, eval;
    make_rows(&train, ADD_ROWS, 6); /* 4 examples a step over 6: batches straddle epochs */
    make_rows(&eval, ADD_ROWS + 5, 2);
    json_t *eff = eff_of("{\"batch_size\":2,\"gradient_accumulation_steps\":2,\"learning_rate\":0.02,"
                         "\"steps\":8,\"lora_rank\":4,\"lora_alpha\":8,\"checkpoint_interval\":3}");
    lt_err err = {0};

    char *wa = work_dir("straight");
    tr_inputs in = inputs(eff, &train, &eval, wa);
    in.seed = 7;
    rec ra;
    tr_hooks h;
    rec_init(&ra, &h);
    json_t *fa = NULL;
    assert_int_equal(tr_sft_run(&in, &h, &fa, &err), TR_DONE);

    char *wb = work_dir("stopped");
    in.work_dir = wb;
    rec rb;
    rec_init(&rb, &h);
    rb.stop_after = 4;
    json_t *fb = NULL;
    assert_int_equal(tr_sft_run(&in, &h, &fb, &err), TR_STOPPED);
    assert_int_equal(rb.nsteps, 4);
    assert_int_equal(json_array_size(rb.ckpts), 2);
    assert_string_equal(json_string_value(json_array_get(json_array_get(rb.ckpts, 1), 0)),
                        "checkpoint-2-step4");
    assert_int_equal(json_integer_value(json_object_get(fb, "train/steps")), 4);

    char *wc = work_dir("resumed");
    char *from = lt_path_join(wb, "checkpoint-2-step4");
    in.work_dir = wc;
    in.resume_dir = from;
    rec rc_;
    rec_init(&rc_, &h);
    json_t *fc = NULL;
    int rc = tr_sft_run(&in, &h, &fc, &err);
    if (rc) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(rc, TR_DONE);
    assert_int_equal(rc_.nsteps, 4);
    const char *names[] = {"checkpoint-3-step6", "checkpoint-4-step8", "final"};
    assert_int_equal(json_array_size(rc_.ckpts), 3);
    for (int k = 0; k < 3; k++)
        assert_string_equal(json_string_value(json_array_get(json_array_get(rc_.ckpts, k), 0)), names[k]);

    /* the step losses after the resume are the straight run's, bit for bit */
    double la[8], lc[4];
    step_values(&ra, "train/loss", la, 8);
    step_values(&rc_, "train/loss", lc, 4);
    for (int k = 0; k < 4; k++)
        assert_true(la[4 + k] == lc[k]);

    char *fa_dir = lt_path_join(wa, "final"), *fc_dir = lt_path_join(wc, "final");
    size_t na, nc;
    unsigned char *a = file_bytes(fa_dir, "adapter_model.safetensors", &na),
                  *c = file_bytes(fc_dir, "adapter_model.safetensors", &nc);
    assert_int_equal(na, nc);
    assert_memory_equal(a, c, na);
    free(a), free(c);

    /* final metrics over all 8 steps, from the running sums kept in the checkpoint */
    const char *same[] = {
        "train/steps",     "train/num_tokens_processed", "train/loss_last", "train/loss_mean",
        "train/loss_best", "train/epochs_completed",     "eval/loss",       "eval/num_examples"};
    for (int k = 0; k < 8; k++) {
        json_t *x = json_object_get(fa, same[k]), *y = json_object_get(fc, same[k]);
        assert_non_null(x);
        assert_true(json_equal(x, y));
    }

    free(fa_dir), free(fc_dir), free(from);
    json_decref(fa), json_decref(fb), json_decref(fc);
    rec_free(&ra), rec_free(&rb), rec_free(&rc_);
    json_decref(eff);
    rows_set_free(&train);
    rows_set_free(&eval);
    free(wa), free(wb), free(wc);
}

static void test_bad_row_422(void **state) {
    (void)state;
    const char *rows[] = {ADD_ROWS[0], ADD_ROWS[1], "{\"nothing\": 1}", ADD_ROWS[2]};
    rows_set train;
    make_rows(&train, rows, 4);
    json_t *eff = eff_of("{\"batch_size\":2,\"steps\":2}");
    char *work = work_dir("bad");
    tr_inputs in = inputs(eff, &train, NULL, work);
    rec r;
    tr_hooks h;
    rec_init(&r, &h);
    json_t *fm = NULL;
    lt_err err = {0};
    assert_int_equal(tr_sft_run(&in, &h, &fm, &err), TR_FAILED);
    assert_int_equal(err.code, 422);
    assert_non_null(strstr(err.msg, "dataset adds@1.0.0 split train, file data/train.jsonl line 5: "));
    assert_non_null(strstr(err.msg, "accepted shapes"));
    assert_null(fm);
    assert_int_equal(json_array_size(r.events), 0);
    assert_int_equal(json_array_size(r.ckpts), 0);
    rows_set_free(&train);

    /* a row with no assistant answer at all (not a truncation): 422 naming the dataset, split, file, line */
    const char *users[] = {"{\"messages\":[{\"role\":\"user\",\"content\":\"hello\"},{\"role\":"
                           "\"assistant\",\"content\":\"hi\"}]}",
                           "{\"prompt\":\"no answer\"}"};
    make_rows(&train, users, 2);
    lt_err_clear(&err);
    assert_int_equal(tr_sft_run(&in, &h, &fm, &err), TR_FAILED);
    assert_int_equal(err.code, 422);
    assert_non_null(strstr(err.msg, "dataset adds@1.0.0"));
    assert_non_null(strstr(err.msg, "split train, file data/train.jsonl line 3"));
    assert_non_null(strstr(err.msg, "no assistant answer"));
    assert_non_null(strstr(err.msg, "accepted shapes"));
    assert_int_equal(json_array_size(r.events), 0);

    rec_free(&r);
    json_decref(eff);
    rows_set_free(&train);
    free(work);
}

static void test_steps_cap_epochs(void **state) {
    (void)state;
    rows_set train;
    make_rows(&train, ADD_ROWS, N_ADD);
    json_t *eff = eff_of("{\"batch_size\":2,\"epochs\":3,\"steps\":2,\"checkpoint_interval\":100}");
    char *work = work_dir("cap");
    tr_inputs in = inputs(eff, &train, NULL, work);
    rec r;
    tr_hooks h;
    rec_init(&r, &h);
    json_t *fm = NULL;
    lt_err err = {0};
    assert_int_equal(tr_sft_run(&in, &h, &fm, &err), TR_DONE);
    assert_int_equal(r.nsteps, 2);
    assert_int_equal(count_logs(&r, "warning", "steps 2 caps epochs 3 (12 steps)"), 1);
    assert_int_equal(json_integer_value(json_object_get(fm, "train/epochs_completed")), 0);
    json_decref(fm);
    rec_free(&r);

    /* epochs alone: 2 epochs of ceil(8 / 3) = 3 steps, no warning */
    json_t *eff2 = eff_of("{\"batch_size\":3,\"epochs\":2,\"steps\":null}");
    in.eff = eff2;
    rec_init(&r, &h);
    assert_int_equal(tr_sft_run(&in, &h, &fm, &err), TR_DONE);
    assert_int_equal(r.nsteps, 6);
    assert_int_equal(count_logs(&r, "warning", "caps"), 0);
    assert_int_equal(json_integer_value(json_object_get(fm, "train/epochs_completed")), 2);
    json_decref(fm);
    rec_free(&r);

    json_decref(eff);
    json_decref(eff2);
    rows_set_free(&train);
    free(work);
}

static void test_grad_accum_equals_batch(void **state) {
    (void)state;
    rows_set train;
    make_rows(&train, ADD_ROWS, N_ADD);
    double l[2][4];
    const char *effs[2] = {
        "{\"batch_size\":8,\"gradient_accumulation_steps\":1,\"steps\":4,\"learning_rate\":0.02}",
        "{\"batch_size\":2,\"gradient_accumulation_steps\":4,\"steps\":4,\"learning_rate\":0.02}"};
    for (int v = 0; v < 2; v++) {
        json_t *eff = eff_of(effs[v]);
        char *work = work_dir(v ? "ga4" : "ga1");
        tr_inputs in = inputs(eff, &train, NULL, work);
        rec r;
        tr_hooks h;
        rec_init(&r, &h);
        lt_err err = {0};
        assert_int_equal(tr_sft_run(&in, &h, NULL, &err), TR_DONE);
        step_values(&r, "train/loss", l[v], 4);
        double ns[4];
        step_values(&r, "train/num_sequences", ns, 4);
        assert_true(ns[0] == 8);
        rec_free(&r);
        json_decref(eff);
        free(work);
    }
    for (int k = 0; k < 4; k++)
        assert_true(fabs(l[0][k] - l[1][k]) < 1e-5);
    assert_true(l[0][3] < l[0][0]); /* it trained: later steps are not the first */
    rows_set_free(&train);
}

/* Loss of one example rendered here (no adapter: the trainer's first step has B = 0), truncated to max_len.
 */
static double ref_loss(const char *msgs_json, int max_len, int *ntok) {
    json_t *msgs = json_loads(msgs_json, 0, NULL);
    assert_non_null(msgs);
    render_out ro;
    lt_err err = {0};
    assert_int_equal(render_chat(tok, render_pick(tok, NULL), msgs, 0, &ro, &err), 0);
    json_decref(msgs);
    int L = (int)ro.n < max_len ? (int)ro.n : max_len;
    double ws = 0;
    for (int i = 1; i < L; i++)
        ws += ro.weights[i];
    int n = L - 1;
    int *t = malloc(n * sizeof(int)), *g = malloc(n * sizeof(int));
    float *w = malloc(n * sizeof(float));
    for (int i = 0; i < n; i++)
        t[i] = ro.ids[i], g[i] = ro.ids[i + 1], w[i] = (float)(ro.weights[i + 1] / ws);
    eng_datum d = {.tokens = t, .n = n, .targets = g, .weights = w};
    double loss;
    assert_int_equal(eng_forward(base, &d, 1, "cross_entropy", NULL, 0, NULL, &loss, &err), 0);
    *ntok = n;
    free(t), free(g), free(w);
    render_out_free(&ro);
    return loss;
}

/* One step on one row; its train/loss and train/num_tokens. */
static void first_step(const char *row, const char *cap, const char *eff_text, double *loss, double *ntok,
                       rec *keep) {
    rows_set train;
    make_rows(&train, &row, 1);
    json_t *eff = eff_of(eff_text);
    char *work = work_dir("one");
    tr_inputs in = inputs(eff, &train, NULL, work);
    in.capability_prompt = cap;
    rec r;
    tr_hooks h;
    rec_init(&r, &h);
    lt_err err = {0};
    int rc = tr_sft_run(&in, &h, NULL, &err);
    if (rc) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(rc, TR_DONE);
    step_values(&r, "train/loss", loss, 1);
    step_values(&r, "train/num_tokens", ntok, 1);
    if (keep)
        *keep = r;
    else
        rec_free(&r);
    json_decref(eff);
    rows_set_free(&train);
    free(work);
}

static void test_truncation(void **state) {
    (void)state;
    const char *row =
        "{\"messages\":[{\"role\":\"user\",\"content\":\"Tell a story.\"},{\"role\":\"assistant\","
        "\"content\":\"The cat sat on the mat and the dog sat on the log and then they went home "
        "to sleep.\"}]}";
    const char *msgs =
        "[{\"role\":\"user\",\"content\":\"Tell a story.\"},{\"role\":\"assistant\","
        "\"content\":\"The cat sat on the mat and the dog sat on the log and then they went home "
        "to sleep.\"}]";
    int full_n;
    ref_loss(msgs, 1 << 20, &full_n);
    int max_len = full_n - 6; /* cut into the assistant message */
    assert_true(max_len > 8);
    int n;
    double want = ref_loss(msgs, max_len, &n);
    assert_int_equal(n, max_len - 1);
    char eff[160];
    snprintf(eff, sizeof eff, "{\"batch_size\":1,\"steps\":1,\"max_sequence_length\":%d}", max_len);
    double loss, ntok;
    first_step(row, "", eff, &loss, &ntok, NULL);
    assert_true(ntok == max_len - 1);
    assert_true(fabs(loss - want) < 1e-5);

    /* a row whose assistant text lies wholly past max_sequence_length is skipped, with a warning */
    const char *rows[] = {
        row,
        "{\"messages\":[{\"role\":\"user\",\"content\":\"The cat sat on the mat and the dog "
        "sat on the log and then they went home to sleep, all of them. The cat sat on the mat and the dog "
        "sat on the log and then they went home to sleep.\"},{\"role\":"
        "\"assistant\",\"content\":\"ok\"}]}"};
    rows_set train;
    make_rows(&train, rows, 2);
    json_t *e = eff_of(eff);
    char *work = work_dir("trunc");
    tr_inputs in = inputs(e, &train, NULL, work);
    rec r;
    tr_hooks h;
    rec_init(&r, &h);
    json_t *fm = NULL;
    lt_err err = {0};
    int rc = tr_sft_run(&in, &h, &fm, &err);
    if (rc) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(rc, TR_DONE);
    assert_int_equal(json_integer_value(json_object_get(fm, "train/num_examples")), 1);
    assert_int_equal(count_logs(&r, "warning", "1 rows skipped"), 1);
    assert_int_equal(count_logs(&r, "warning", "file data/train.jsonl line 3"), 1);
    double nt;
    step_values(&r, "train/num_tokens", &nt, 1);
    assert_true(nt == max_len - 1);
    json_decref(fm);
    rec_free(&r);
    json_decref(e);
    rows_set_free(&train);
    free(work);
}

static void test_capability_prompt(void **state) {
    (void)state;
    const char *row = "{\"messages\":[{\"role\":\"user\",\"content\":\"What is 2 plus 2?\"},{\"role\":"
                      "\"assistant\",\"content\":\"4\"}]}";
    const char *eff = "{\"batch_size\":1,\"steps\":1}";
    int n0, n1, n2;
    double plain = ref_loss("[{\"role\":\"user\",\"content\":\"What is 2 plus 2?\"},{\"role\":\"assistant\","
                            "\"content\":\"4\"}]",
                            1 << 20, &n0);
    double with = ref_loss("[{\"role\":\"system\",\"content\":\"Answer with a number.\"},{\"role\":\"user\","
                           "\"content\":\"What is 2 plus 2?\"},{\"role\":\"assistant\",\"content\":\"4\"}]",
                           1 << 20, &n1);
    assert_true(n1 > n0 && fabs(with - plain) > 1e-6);
    double loss, ntok;
    first_step(row, "Answer with a number.", eff, &loss, &ntok, NULL);
    assert_true(ntok == n1);
    assert_true(fabs(loss - with) < 1e-5);
    first_step(row, "", eff, &loss, &ntok, NULL);
    assert_true(ntok == n0);
    assert_true(fabs(loss - plain) < 1e-5);

    /* an existing system message gets P + "\n\n" in front */
    const char *sys_row = "{\"messages\":[{\"role\":\"system\",\"content\":\"Be terse.\"},{\"role\":\"user\","
                          "\"content\":\"What is 2 plus 2?\"},{\"role\":\"assistant\",\"content\":\"4\"}]}";
    double merged =
        ref_loss("[{\"role\":\"system\",\"content\":\"Answer with a number.\\n\\nBe terse.\"},{\"role\":"
                 "\"user\",\"content\":\"What is 2 plus 2?\"},{\"role\":\"assistant\",\"content\":\"4\"}]",
                 1 << 20, &n2);
    first_step(sys_row, "Answer with a number.", eff, &loss, &ntok, NULL);
    assert_true(ntok == n2);
    assert_true(fabs(loss - merged) < 1e-5);
}

/* Starting from a PEFT adapter: its rank wins over lora_rank, and it is the starting point. */
static void test_init_adapter(void **state) {
    (void)state;
    rows_set train;
    make_rows(&train, ADD_ROWS, N_ADD);
    json_t *eff =
        eff_of("{\"batch_size\":4,\"steps\":3,\"lora_rank\":4,\"lora_alpha\":8,\"learning_rate\":0.02}");
    char *w1 = work_dir("init1");
    tr_inputs in = inputs(eff, &train, NULL, w1);
    rec r;
    tr_hooks h;
    rec_init(&r, &h);
    lt_err err = {0};
    assert_int_equal(tr_sft_run(&in, &h, NULL, &err), TR_DONE);
    double l1[3];
    step_values(&r, "train/loss", l1, 3);
    rec_free(&r);

    json_t *eff2 = eff_of("{\"batch_size\":4,\"steps\":1,\"lora_rank\":32,\"learning_rate\":0.02}");
    char *w2 = work_dir("init2"), *from = lt_path_join(w1, "final");
    in = inputs(eff2, &train, NULL, w2);
    in.init_adapter = from;
    rec_init(&r, &h);
    int rc = tr_sft_run(&in, &h, NULL, &err);
    if (rc) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(rc, TR_DONE);
    assert_int_equal(count_logs(&r, "info", "lora_rank 32 is ignored"), 1);
    double l2;
    step_values(&r, "train/loss", &l2, 1);
    assert_true(l2 < l1[0] - 1e-3); /* starts where the first run left off, not from scratch */
    size_t n;
    char *fin = lt_path_join(w2, "final");
    char *cfg = (char *)file_bytes(fin, "adapter_config.json", &n);
    assert_non_null(strstr(cfg, "\"r\": 4") ? cfg : strstr(cfg, "\"r\":4"));
    free(cfg), free(fin);
    rec_free(&r);

    /* a missing adapter is an error naming it */
    in.init_adapter = "/nonexistent-adapter";
    rec_init(&r, &h);
    lt_err_clear(&err);
    assert_int_equal(tr_sft_run(&in, &h, NULL, &err), TR_FAILED);
    assert_non_null(strstr(err.msg, "/nonexistent-adapter"));
    rec_free(&r);

    /* tr_read_checkpoint: an SFT checkpoint resumes an SFT run, and is refused, naming it, for another
     * trainer */
    eng_lora_config lc = {.rank = 4, .alpha = 8, .targets = ENG_LORA_ALL, .seed = 0};
    eng_engine *e = eng_share(in.base, &lc, &err);
    assert_non_null(e);
    long step = -1;
    int nckpt = -1;
    json_t *x = tr_read_checkpoint(e, from, "sft", &step, &nckpt, &err);
    assert_non_null(x);
    assert_int_equal(step, 3);
    assert_true(nckpt >= 1);
    json_decref(x);
    lt_err_clear(&err);
    assert_null(tr_read_checkpoint(e, from, "rl", &step, &nckpt, &err));
    assert_non_null(strstr(err.msg, "not written by the rl trainer"));
    assert_non_null(strstr(err.msg, from));
    eng_close(e);

    json_decref(eff), json_decref(eff2);
    rows_set_free(&train);
    free(w1), free(w2), free(from);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loss_falls_and_events),
        cmocka_unit_test(test_resume_bit_exact),
        cmocka_unit_test(test_bad_row_422),
        cmocka_unit_test(test_steps_cap_epochs),
        cmocka_unit_test(test_grad_accum_equals_batch),
        cmocka_unit_test(test_truncation),
        cmocka_unit_test(test_capability_prompt),
        cmocka_unit_test(test_init_adapter),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
