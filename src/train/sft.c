/* sft.c: the Tinker SFT trainer (docs/spec.md §4.4, §4.6, §5), shared by the worker and `lathe train sft
 * --data`.
 *
 * Examples. Every row of in->train becomes a conversation (rows_conversation with the capability prompt),
 * rendered in the model's chat format (render_pick) with weight 1 on assistant content and end-of-turn
 * tokens, truncated from the right to max_sequence_length, shifted by one (position i predicts token i+1) and
 * its weights divided by their sum, so an example's loss is its mean token NLL. A row that fails to convert
 * fails the run (422, naming dataset, split, file and line) before anything is sent, and so does a row with
 * no assistant answer at all (nothing to learn); a row whose assistant tokens all fall past
 * max_sequence_length is skipped and counted (a warning names the first).
 *
 * Loop. A step runs gradient_accumulation_steps forward_backward calls of batch_size examples (gradients of
 * the summed loss accumulate), then one AdamW step (beta 0.9 / 0.95, eps 1e-8, no weight decay) at
 * learning_rate * (1 - step / total). The example order is a Fisher-Yates shuffle per epoch seeded by the
 * epoch index (plus the seed); a global cursor over the shuffled epochs makes the data cycle when steps asks
 * for more than one epoch. Everything that decides the next step (adapter, AdamW moments and step count,
 * cursor) is in a checkpoint, so a resumed run is bit-exact with an uninterrupted one.
 *
 * Checkpoints every checkpoint_interval steps, on stop and after the last step (then also "final"), each with
 * eval/loss first when there is an eval set. The extra JSON of training_state.safetensors carries the cursor
 * and the running loss sums the final metrics need. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/render.h"
#include "train/trainer.h"
#include "util/util.h"

typedef struct {
    int *tokens, *targets;
    float *weights;
    int n;
} sft_ex;

typedef struct {
    sft_ex *v;
    size_t n, cap;
    size_t skipped;
    long first_skip; /* row index of the first skipped row, -1 when none */
} sft_set;

static void set_free(sft_set *s) {
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i].tokens), free(s->v[i].targets), free(s->v[i].weights);
    free(s->v);
    memset(s, 0, sizeof *s);
}

/* The rows of rs as examples. what: "dataset NAME" / "eval dataset" for messages. */
static int build_set(const rows_set *rs, const char *what, const tr_inputs *in, render_kind kind, int max_len,
                     sft_set *out, lt_err *err) {
    out->first_skip = -1;
    for (size_t i = 0; rs && i < rs->n; i++) {
        const json_t *row = json_array_get(rs->rows, i);
        lt_err e2 = {0};
        render_out ro = {0};
        json_t *conv = rows_conversation(row, in->capability_prompt, &e2);
        int rc = conv ? render_chat(in->tok, kind, conv, 0, &ro, &e2) : -1;
        json_decref(conv);
        if (rc) {
            char where[512];
            tr_row_where(rs, i, where, sizeof where);
            int has_shapes = strstr(e2.msg, "accepted shapes") != NULL;
            return lt_err_set(err, 422, "%s%s%s: %s%s%s", what, what[0] ? " " : "", where, e2.msg,
                              has_shapes ? "" : "; ", has_shapes ? "" : ROWS_ACCEPTED_SHAPES);
        }
        double wall = 0;
        for (size_t k = 1; k < ro.n; k++)
            wall += ro.weights[k];
        if (!(wall > 0)) { /* not a truncation: the row itself has nothing to learn */
            char where[512];
            tr_row_where(rs, i, where, sizeof where);
            render_out_free(&ro);
            return lt_err_set(err, 422,
                              "%s%s%s: the row has no assistant answer to train on (SFT needs an assistant "
                              "message, or an answer in expected_output, target, answer or output); %s",
                              what, what[0] ? " " : "", where, ROWS_ACCEPTED_SHAPES);
        }
        size_t L = ro.n < (size_t)max_len ? ro.n : (size_t)max_len;
        double wsum = 0;
        for (size_t k = 1; k < L; k++)
            wsum += ro.weights[k];
        if (L < 2 || !(wsum > 0)) {
            if (out->first_skip < 0) out->first_skip = (long)i;
            out->skipped++;
            render_out_free(&ro);
            continue;
        }
        if (out->n == out->cap) {
            out->cap = out->cap ? 2 * out->cap : 64;
            sft_ex *nv = realloc(out->v, out->cap * sizeof *nv);
            if (!nv) abort();
            out->v = nv;
        }
        sft_ex *x = &out->v[out->n++];
        x->n = (int)L - 1;
        x->tokens = malloc((size_t)x->n * sizeof(int));
        x->targets = malloc((size_t)x->n * sizeof(int));
        x->weights = malloc((size_t)x->n * sizeof(float));
        if (!x->tokens || !x->targets || !x->weights) abort();
        for (int k = 0; k < x->n; k++) {
            x->tokens[k] = ro.ids[k];
            x->targets[k] = ro.ids[k + 1];
            x->weights[k] = (float)(ro.weights[k + 1] / wsum);
        }
        render_out_free(&ro);
    }
    return 0;
}

/* Fisher-Yates with the engine's RNG seeded by (seed, epoch). */
static void shuffle(size_t *perm, size_t n, uint64_t seed, long epoch) {
    for (size_t i = 0; i < n; i++)
        perm[i] = i;
    uint64_t s = seed * 0x9e3779b97f4a7c15ULL + (uint64_t)epoch;
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(eng_rng_next(&s) % i);
        size_t t = perm[i - 1];
        perm[i - 1] = perm[j], perm[j] = t;
    }
}

/* ---- the run ---- */

typedef struct {
    const tr_inputs *in;
    const tr_hooks *h;
    eng_engine *e;
    sft_set train, ev;
    long bs, ga, interval, total, per_epoch;
    double lr;
    size_t cursor; /* examples consumed so far */
    size_t *perm;
    long perm_epoch;
    eng_datum *d;
    int nckpt;       /* numbered checkpoints written so far */
    long loss_steps; /* steps in loss_sum */
    double loss_sum, loss_best, loss_last, eval_last;
    long ntok_total;
} sft_run;

static int emit(const sft_run *r, json_t *ev, lt_err *err) {
    int rc = 0;
    if (r->h && r->h->event) rc = r->h->event(r->h->ud, ev, err);
    json_decref(ev);
    if (rc && err && !err->code) lt_err_set(err, 500, "the progress hook failed");
    return rc ? -1 : 0;
}

static double eval_loss(sft_run *r, lt_err *err) {
    double total = 0;
    for (size_t i = 0; i < r->ev.n; i += (size_t)r->bs) {
        int nb = 0;
        for (size_t k = i; k < r->ev.n && nb < r->bs; k++, nb++)
            r->d[nb] = (eng_datum){.tokens = r->ev.v[k].tokens,
                                   .n = r->ev.v[k].n,
                                   .targets = r->ev.v[k].targets,
                                   .weights = r->ev.v[k].weights};
        double l;
        if (eng_forward(r->e, r->d, nb, "cross_entropy", NULL, 0, NULL, &l, err)) return NAN;
        total += l;
    }
    return total / (double)r->ev.n;
}

static int run_eval(sft_run *r, long step, lt_err *err) {
    if (r->ev.n == 0) return 0;
    double el = eval_loss(r, err);
    if (isnan(el)) return -1;
    r->eval_last = el;
    char msg[128];
    snprintf(msg, sizeof msg, "eval/loss %.4f (%zu examples)", el, r->ev.n);
    json_t *ev = json_pack("{s:s, s:s, s:s, s:{s:[I], s:[f], s:I}}", "event_type", "eval_complete", "message",
                           msg, "level", "info", "metrics", "eval/steps", (json_int_t)step, "eval/loss", el,
                           "eval/num_examples", (json_int_t)r->ev.n);
    if (!ev) abort();
    return emit(r, ev, err);
}

static char *extra_json(const sft_run *r, long step) {
    json_t *x =
        json_pack("{s:s, s:I, s:i, s:I, s:I, s:f, s:f, s:I, s:I}", "trainer", "sft", "step", (json_int_t)step,
                  "checkpoints", r->nckpt, "cursor", (json_int_t)r->cursor, "loss_steps",
                  (json_int_t)r->loss_steps, "loss_sum", r->loss_sum, "loss_last", r->loss_last,
                  "num_tokens_processed", (json_int_t)r->ntok_total, "seed", (json_int_t)r->in->seed);
    if (!x) abort();
    json_object_set_new(x, "loss_best", isfinite(r->loss_best) ? json_real(r->loss_best) : json_null());
    json_object_set_new(x, "eval_loss", isnan(r->eval_last) ? json_null() : json_real(r->eval_last));
    char *s = json_dumps(x, JSON_COMPACT);
    json_decref(x);
    if (!s) abort();
    return s;
}

/* Writes work_dir/name for step and publishes it. */
static int write_ckpt(sft_run *r, const char *name, long step, lt_err *err) {
    char *dir = lt_path_join(r->in->work_dir, name), *extra = extra_json(r, step);
    lt_rm_rf(dir); /* a leftover of an earlier attempt */
    int rc = tr_write_checkpoint(r->e, dir, r->in->model_id, extra, err) ||
             tr_publish_checkpoint(r->h, name, step, dir, err);
    free(dir), free(extra);
    return rc ? -1 : 0;
}

/* Eval (when there is an eval set), then the next numbered checkpoint. */
static int numbered_ckpt(sft_run *r, long step, lt_err *err) {
    if (run_eval(r, step, err)) return -1;
    char name[96];
    r->nckpt++;
    tr_checkpoint_name(name, sizeof name, r->nckpt, step);
    return write_ckpt(r, name, step, err);
}

static int one_step(sft_run *r, long step, lt_err *err) {
    double t0 = lt_mono_s(), loss = 0;
    long ntok = 0;
    size_t N = r->train.n;
    for (long m = 0; m < r->ga; m++) {
        for (long b = 0; b < r->bs; b++, r->cursor++) {
            long ep = (long)(r->cursor / N);
            if (ep != r->perm_epoch) shuffle(r->perm, N, r->in->seed, r->perm_epoch = ep);
            const sft_ex *x = &r->train.v[r->perm[r->cursor % N]];
            r->d[b] =
                (eng_datum){.tokens = x->tokens, .n = x->n, .targets = x->targets, .weights = x->weights};
            ntok += x->n;
        }
        double l;
        if (eng_forward_backward(r->e, r->d, (int)r->bs, "cross_entropy", NULL, 0, NULL, &l, err)) return -1;
        loss += l;
    }
    eng_adam_params ap;
    eng_adam_params_default(&ap);
    ap.beta1 = 0.9f, ap.beta2 = 0.95f, ap.eps = 1e-8f, ap.weight_decay = 0;
    double lr = r->lr * (1.0 - (double)step / (double)r->total);
    ap.learning_rate = (float)lr;
    if (eng_optim_step(r->e, &ap, err)) return -1;
    double dt = lt_mono_s() - t0;
    double tps = dt > 0 ? (double)ntok / dt : 0;
    long k = r->bs * r->ga;
    loss /= (double)k;
    if (!isfinite(loss))
        return lt_err_set(
            err, 422, "train/loss is %g at step %ld of %ld: training diverged; lower learning_rate (now %g)",
            loss, step + 1, r->total, r->lr);
    r->loss_last = loss;
    r->loss_sum += loss;
    r->loss_steps++;
    if (!(loss >= r->loss_best)) r->loss_best = loss;
    r->ntok_total += ntok;
    char msg[160];
    snprintf(msg, sizeof msg, "step %ld/%ld loss %.4f", step + 1, r->total, loss);
    json_t *ev = json_pack("{s:s, s:s, s:s, s:{s:[I], s:[f], s:[f], s:[I], s:[I], s:[f]}, s:{s:I, s:I, s:f}}",
                           "event_type", "step_complete", "message", msg, "level", "info", "metrics", "steps",
                           (json_int_t)(step + 1), "train/loss", loss, "train/learning_rate", lr,
                           "train/num_sequences", (json_int_t)k, "train/num_tokens", (json_int_t)ntok,
                           "train/tokens_per_s", tps, "data", "step", (json_int_t)(step + 1), "total_steps",
                           (json_int_t)r->total, "tokens_per_s", tps);
    if (!ev) abort();
    return emit(r, ev, err);
}

static json_t *final_metrics(const sft_run *r, long steps_done) {
    json_t *m =
        json_pack("{s:I, s:I, s:I, s:I}", "train/steps", (json_int_t)steps_done, "train/num_examples",
                  (json_int_t)r->train.n, "train/num_tokens_processed", (json_int_t)r->ntok_total,
                  "train/epochs_completed", (json_int_t)(r->per_epoch ? steps_done / r->per_epoch : 0));
    if (!m) abort();
    json_object_set_new(m, "train/loss_last", r->loss_steps ? json_real(r->loss_last) : json_null());
    json_object_set_new(m, "train/loss_mean",
                        r->loss_steps ? json_real(r->loss_sum / (double)r->loss_steps) : json_null());
    json_object_set_new(m, "train/loss_best", isfinite(r->loss_best) ? json_real(r->loss_best) : json_null());
    if (r->ev.n) {
        json_object_set_new(m, "eval/loss", isnan(r->eval_last) ? json_null() : json_real(r->eval_last));
        json_object_set_new(m, "eval/num_examples", json_integer((json_int_t)r->ev.n));
    }
    return m;
}

/* Loads in->resume_dir into r->e; *start = the step to continue after. */
static int resume(sft_run *r, long *start, lt_err *err) {
    json_t *x = tr_read_checkpoint(r->e, r->in->resume_dir, "sft", start, &r->nckpt, err);
    if (!x) return -1;
    json_t *c = json_object_get(x, "cursor");
    r->cursor = json_is_integer(c) ? (size_t)json_integer_value(c) : (size_t)(*start * r->bs * r->ga);
    r->loss_steps = (long)json_integer_value(json_object_get(x, "loss_steps"));
    r->loss_sum = json_number_value(json_object_get(x, "loss_sum"));
    r->loss_last = json_number_value(json_object_get(x, "loss_last"));
    json_t *b = json_object_get(x, "loss_best");
    if (json_is_number(b)) r->loss_best = json_number_value(b);
    json_t *el = json_object_get(x, "eval_loss");
    if (json_is_number(el)) r->eval_last = json_number_value(el);
    r->ntok_total = (long)json_integer_value(json_object_get(x, "num_tokens_processed"));
    json_decref(x);
    return 0;
}

int tr_sft_run(const tr_inputs *in, const tr_hooks *h, json_t **final_out, lt_err *err) {
    if (final_out) *final_out = NULL;
    sft_run r = {.in = in, .h = h, .perm_epoch = -1, .loss_best = INFINITY, .eval_last = NAN};
    int result = TR_FAILED;
    long steps = 0, epochs = 0, rank = 0, max_len = 0;
    double alpha = 0;
    const json_t *eff = in->eff;
    if (tr_knob_l(eff, "batch_size", 16, 1, 4096, &r.bs, err) ||
        tr_knob_l(eff, "gradient_accumulation_steps", 1, 1, 4096, &r.ga, err) ||
        tr_knob_d(eff, "learning_rate", 1e-4, 0, 1, 1, &r.lr, err) ||
        tr_knob_l(eff, "steps", 0, 1, 10000000, &steps, err) ||
        tr_knob_l(eff, "epochs", 0, 1, 10000, &epochs, err) ||
        tr_knob_l(eff, "lora_rank", 16, 1, 512, &rank, err) ||
        tr_knob_d(eff, "lora_alpha", 32, 0, 1, 4096, &alpha, err) ||
        tr_knob_l(eff, "max_sequence_length", 2048, 1, 1L << 30, &max_len, err) ||
        tr_knob_l(eff, "checkpoint_interval", 10, 1, 10000000, &r.interval, err))
        return TR_FAILED;
    if (!in->base || !in->tok || !in->work_dir) {
        lt_err_set(err, 500, "the SFT trainer needs a base model, a tokenizer and a work dir");
        return TR_FAILED;
    }
    const eng_config *cfg = &in->base->m->cfg;
    long ctx = cfg->max_position_embeddings;
    if (ctx > 0 && max_len > ctx) max_len = ctx;
    render_kind kind = render_pick(in->tok, cfg->family[0] ? cfg->family : NULL);
    const char *dsname = in->dataset_name ? in->dataset_name : "";
    char what[600];
    snprintf(what, sizeof what, "%s%s", dsname[0] ? "dataset " : "", dsname);
    if (!in->train || in->train->n == 0) {
        lt_err_set(err, 422,
                   "%s%sno training rows: the job needs a dataset_ref or trajectory_dataset_refs with rows",
                   what, what[0] ? ": " : "");
        return TR_FAILED;
    }
    if (build_set(in->train, what, in, kind, (int)max_len, &r.train, err) ||
        (in->eval && build_set(in->eval, "eval dataset", in, kind, (int)max_len, &r.ev, err)))
        goto done;
    if (r.train.n == 0) {
        lt_err_set(err, 422,
                   "%s%sno example with an assistant message to train on (%zu rows skipped: no assistant "
                   "token within max_sequence_length %ld)",
                   what, what[0] ? ": " : "", r.train.skipped, max_len);
        goto done;
    }
    long k = r.bs * r.ga;
    r.per_epoch = (long)((r.train.n + (size_t)k - 1) / (size_t)k);
    r.total = steps ? steps : r.per_epoch;
    int capped = 0;
    if (epochs) {
        r.total = epochs * r.per_epoch;
        if (steps && steps < r.total) capped = 1, r.total = steps;
    }
    r.perm = malloc(r.train.n * sizeof *r.perm);
    r.d = calloc((size_t)r.bs, sizeof *r.d);
    if (!r.perm || !r.d) abort();
    if (!(r.e = tr_open_engine(in, h, (int)rank, alpha, err))) goto done;
    snprintf(r.e->base_model, sizeof r.e->base_model, "%s", in->model_id ? in->model_id : "");
    long start = 0;
    if (in->resume_dir && resume(&r, &start, err)) goto done;

    if (tr_log(h, "info", err,
               "training on %zu examples (%zu rows skipped): %ld steps of %ld x %ld, %ld steps per epoch, "
               "renderer %s, LoRA r%d, max_sequence_length %ld%s",
               r.train.n, r.train.skipped, r.total, r.bs, r.ga, r.per_epoch, render_kind_name(kind),
               r.e->m->lora.rank, max_len, in->eval ? "" : ", no eval dataset"))
        goto done;
    if (capped &&
        tr_log(h, "warning", err, "steps %ld caps epochs %ld (%ld steps): training stops after %ld steps",
               steps, epochs, epochs * r.per_epoch, steps))
        goto done;
    if (r.train.skipped) {
        char where[512];
        tr_row_where(in->train, (size_t)r.train.first_skip, where, sizeof where);
        if (tr_log(
                h, "warning", err,
                "%zu rows skipped: no assistant token to train on within max_sequence_length %ld (first: %s)",
                r.train.skipped, max_len, where))
            goto done;
    }
    if (r.ev.skipped &&
        tr_log(h, "warning", err, "eval dataset: %zu rows skipped (no assistant token)", r.ev.skipped))
        goto done;
    if (in->eval && r.ev.n == 0 &&
        tr_log(h, "warning", err, "the eval dataset has no usable example: no eval/loss will be reported"))
        goto done;
    if (in->resume_dir &&
        tr_log(h, "info", err, "continuing after step %ld of %ld (checkpoint %d)", start, r.total, r.nckpt))
        goto done;

    long step = start;
    long last_ckpt = in->resume_dir ? start : -1;
    for (; step < r.total; step++) {
        if (one_step(&r, step, err)) goto done;
        long n = step + 1;
        if (n % r.interval == 0 || n == r.total) {
            if (numbered_ckpt(&r, n, err)) goto done;
            last_ckpt = n;
        }
        if (n < r.total && h && h->stop && h->stop(h->ud)) {
            if (last_ckpt != n && numbered_ckpt(&r, n, err)) goto done;
            if (tr_log(h, "info", err, "stopped after step %ld of %ld", n, r.total)) goto done;
            if (final_out) *final_out = final_metrics(&r, n);
            result = TR_STOPPED;
            goto done;
        }
    }
    if (start >= r.total && run_eval(&r, r.total, err)) goto done; /* resumed at the very end */
    if (write_ckpt(&r, "final", r.total, err)) goto done;
    if (final_out) *final_out = final_metrics(&r, r.total);
    result = TR_DONE;
done:
    if (result == TR_FAILED && err && !err->code) lt_err_set(err, 500, "SFT training failed");
    set_free(&r.train);
    set_free(&r.ev);
    free(r.perm);
    free(r.d);
    eng_close(r.e);
    return result;
}
