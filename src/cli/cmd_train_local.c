/* cmd_train_local.c: `lathe train sft --model DIR --data FILE --out DIR`, supervised LoRA fine-tuning on this
 * machine, without a server.
 *
 * The loop is the worker's SFT trainer, tr_sft_run (src/train/sft.c, SPEC §4.6): this file turns the flags
 * into an effective_config, the data file (JSONL, JSON or CSV; any row shape of SPEC §5) into a rows_set,
 * and passes hooks that print the progress events (`step N/T  loss X  lr Y  tokens/s Z`, `eval/loss X (N
 * examples)`, log lines; warnings on stderr) and lay the checkpoints out under OUT: the trainer writes them
 * into OUT/.work/NAME/, a numbered one becomes OUT/checkpoints/checkpoint-<n>-step<s>/ (state.safetensors
 * with the optimizer + adapter/, PEFT) and "final" becomes OUT/adapter/ (PEFT). */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "engine/engine.h"
#include "engine/gemm_bf16.h"
#include "engine/tokenizer.h"
#include "train/render.h"
#include "util/rows.h"
#include "train/trainer.h"
#include "util/util.h"

int cmd_train_local(int argc, char **argv);

static void usage(FILE *f) {
    fputs(
        "usage: lathe train sft --model DIR|FILE.gguf --data FILE --out DIR [--eval FILE] [--steps N]\n"
        "                       [--epochs N] [--batch-size N] [--grad-accum N] [--lr X] [--lora-rank R]\n"
        "                       [--lora-alpha A] [--max-seq-len N] [--checkpoint-interval N] [--seed N]\n"
        "                       [--threads N] [--compute f32|bf16]\n\n"
        "Fine-tunes a LoRA adapter on DIR (a Hugging Face model dir, or a .gguf file) with the rows of FILE\n"
        "(.jsonl, .json or "
        ".csv; chat, tool-calling, prompt/answer or trajectory rows), locally. Loss: cross-entropy on "
        "assistant\n"
        "tokens, each example's weights normalised to sum to 1. Defaults: --batch-size 16 --grad-accum 1\n"
        "--lr 1e-4 (linear decay to 0) --lora-rank 16 --lora-alpha 32 --max-seq-len 2048 (capped by the "
        "model)\n"
        "--checkpoint-interval 10 --seed 0 --compute f32 (bf16: the base weights' GEMMs take bf16 inputs, "
        "f32\n"
        "sums); one epoch when neither --steps nor --epochs is given.\n"
        "Writes OUT/checkpoints/checkpoint-<n>-step<s>/{state.safetensors,adapter/} and OUT/adapter/ (PEFT:\n"
        "adapter_config.json + adapter_model.safetensors, loadable by HF peft and vLLM).\n",
        f);
}

/* ---- the data file as a rows_set (one file, no split) ---- */

static int add_row(const json_t *row, long line, void *ud, lt_err *err) {
    rows_set *s = ud;
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 256;
        s->lines = realloc(s->lines, s->cap * sizeof *s->lines);
        s->file = realloc(s->file, s->cap * sizeof *s->file);
        if (!s->lines || !s->file) abort();
    }
    json_array_append(s->rows, (json_t *)row);
    s->lines[s->n] = line;
    s->file[s->n] = 0;
    s->n++;
    return 0;
}

static int load_rows(const char *path, rows_set *s, lt_err *err) {
    size_t len;
    char *data = lt_read_file(path, &len, err);
    if (!data) return -1;
    s->rows = json_array();
    s->files = malloc(sizeof *s->files);
    s->splits = malloc(sizeof *s->splits);
    if (!s->rows || !s->files || !s->splits) abort();
    s->files[0] = lt_strdup(path);
    s->splits[0] = lt_strdup("");
    s->nfiles = 1;
    rows_loc loc;
    int rc = rows_parse(data, len, rows_format_for_path(path, ROWS_JSONL), NULL, path, add_row, s, &loc, err);
    free(data);
    return rc ? -1 : 0;
}

/* ---- hooks: print progress, lay checkpoints out under OUT ---- */

typedef struct {
    const char *out;
    double t_start;
} cli_ud;

static long metric_l(const json_t *m, const char *k) {
    return (long)json_integer_value(json_array_get(json_object_get(m, k), 0));
}
static double metric_d(const json_t *m, const char *k) {
    return json_number_value(json_array_get(json_object_get(m, k), 0));
}

static int on_event(void *ud, const json_t *ev, lt_err *err) {
    (void)ud, (void)err;
    const char *type = json_string_value(json_object_get(ev, "event_type"));
    const json_t *m = json_object_get(ev, "metrics"), *d = json_object_get(ev, "data");
    if (type && !strcmp(type, "step_complete")) {
        printf("step %ld/%ld  loss %.4f  lr %.3g  tokens/s %.0f\n", metric_l(m, "steps"),
               (long)json_integer_value(json_object_get(d, "total_steps")), metric_d(m, "train/loss"),
               metric_d(m, "train/learning_rate"), metric_d(m, "train/tokens_per_s"));
    } else if (type && !strcmp(type, "eval_complete")) {
        printf("eval/loss %.4f (%ld examples)\n", metric_d(m, "eval/loss"),
               (long)json_integer_value(json_object_get(m, "eval/num_examples")));
    } else {
        const char *level = json_string_value(json_object_get(ev, "level"));
        const char *msg = json_string_value(json_object_get(ev, "message"));
        if (level && (!strcmp(level, "warning") || !strcmp(level, "error")))
            fprintf(stderr, "%s: %s\n", level, msg ? msg : "");
        else if (!level || strcmp(level, "debug") != 0)
            printf("%s\n", msg ? msg : "");
    }
    fflush(stdout);
    return 0;
}

static int move(const char *from, const char *to, lt_err *err) {
    if (rename(from, to) != 0) return lt_err_set(err, 500, "moving %s to %s: %s", from, to, strerror(errno));
    return 0;
}

/* dir holds adapter_config.json, adapter_model.safetensors and training_state.safetensors. A numbered
 * checkpoint becomes OUT/checkpoints/NAME/{state.safetensors, adapter/}; "final" becomes OUT/adapter/. */
static int on_checkpoint(void *ud, const char *name, long step, const char *dir, lt_err *err) {
    cli_ud *u = ud;
    char *state = lt_path_join(dir, "training_state.safetensors");
    int rc;
    if (!strcmp(name, "final")) {
        char *dst = lt_path_join(u->out, "adapter");
        unlink(state);
        lt_rm_rf(dst);
        rc = move(dir, dst, err);
        if (!rc) printf("wrote %s (PEFT) after %ld steps in %.1f s\n", dst, step, lt_mono_s() - u->t_start);
        free(dst);
    } else {
        char rel[160];
        snprintf(rel, sizeof rel, "checkpoints/%s", name);
        char *cdir = lt_path_join(u->out, rel), *cstate = lt_path_join(cdir, "state.safetensors"),
             *cadapter = lt_path_join(cdir, "adapter");
        lt_rm_rf(cdir);
        rc = lt_mkdir_p(cdir, 0755, err) || move(state, cstate, err) || move(dir, cadapter, err);
        if (!rc) printf("checkpoint %s\n", rel);
        free(cdir), free(cstate), free(cadapter);
    }
    fflush(stdout);
    free(state);
    return rc ? -1 : 0;
}

typedef struct {
    const char *model, *data, *eval, *out, *compute;
    long steps, epochs, bs, ga, rank, max_len, interval, seed, threads;
    double lr, alpha;
} opts;

static int parse_l(const char *opt, const char *v, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "lathe train sft: %s must be an integer in %ld..%ld, got '%s'\n", opt, lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

static int parse_d(const char *opt, const char *v, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || *end || end == v || !(x > lo && x <= hi)) {
        fprintf(stderr, "lathe train sft: %s must be a number in (%g, %g], got '%s'\n", opt, lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

static int parse_args(int argc, char **argv, opts *o) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 1;
        }
        char key[64];
        const char *v, *eq = strchr(a, '=');
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "lathe train sft: unexpected argument '%s' (see --help)\n", a);
            return -1;
        }
        if (eq) {
            snprintf(key, sizeof(key), "%.*s", (int)(eq - a), a);
            v = eq + 1;
        } else {
            snprintf(key, sizeof(key), "%s", a);
            if (i + 1 >= argc) {
                fprintf(stderr, "lathe train sft: %s needs a value\n", a);
                return -1;
            }
            v = argv[++i];
        }
        int bad = 0;
        if (!strcmp(key, "--model"))
            o->model = v;
        else if (!strcmp(key, "--data"))
            o->data = v;
        else if (!strcmp(key, "--eval"))
            o->eval = v;
        else if (!strcmp(key, "--out"))
            o->out = v;
        else if (!strcmp(key, "--steps"))
            bad = parse_l(key, v, 1, 10000000, &o->steps);
        else if (!strcmp(key, "--epochs"))
            bad = parse_l(key, v, 1, 10000, &o->epochs);
        else if (!strcmp(key, "--batch-size"))
            bad = parse_l(key, v, 1, 4096, &o->bs);
        else if (!strcmp(key, "--grad-accum"))
            bad = parse_l(key, v, 1, 4096, &o->ga);
        else if (!strcmp(key, "--lr"))
            bad = parse_d(key, v, 0, 1, &o->lr);
        else if (!strcmp(key, "--lora-rank"))
            bad = parse_l(key, v, 1, 512, &o->rank);
        else if (!strcmp(key, "--lora-alpha"))
            bad = parse_d(key, v, 0, 4096, &o->alpha);
        else if (!strcmp(key, "--max-seq-len"))
            bad = parse_l(key, v, 2, 1 << 20, &o->max_len);
        else if (!strcmp(key, "--checkpoint-interval"))
            bad = parse_l(key, v, 1, 10000000, &o->interval);
        else if (!strcmp(key, "--seed"))
            bad = parse_l(key, v, 0, 0x7fffffffL, &o->seed);
        else if (!strcmp(key, "--threads"))
            bad = parse_l(key, v, 1, 1024, &o->threads);
        else if (!strcmp(key, "--compute")) {
            o->compute = v;
            if (eng_compute_parse(v) < 0) {
                fprintf(stderr, "lathe train sft: --compute must be f32 or bf16, got '%s'\n", v);
                bad = -1;
            }
        } else {
            fprintf(stderr, "lathe train sft: unknown option '%s' (see --help)\n", key);
            return -1;
        }
        if (bad) return -1;
    }
    if (!o->model || !o->data || !o->out) {
        fprintf(stderr,
                "lathe train sft: --model, --data and --out are required for local training (see --help)\n");
        return -1;
    }
    return 0;
}

int cmd_train_local(int argc, char **argv) {
    opts o = {.compute = "f32",
              .bs = 16,
              .ga = 1,
              .rank = 16,
              .max_len = 2048,
              .interval = 10,
              .lr = 1e-4,
              .alpha = 32};
    int pr = parse_args(argc, argv, &o);
    if (pr) return pr > 0 ? EXIT_OK : EXIT_USAGE;
    eng_set_threads((int)o.threads);
    lt_err err = {0};
    int rc = EXIT_FAIL;
    rows_set train = {0}, ev = {0};
    json_t *eff = NULL, *job = NULL, *final = NULL;
    char *work = NULL;
    eng_tokenizer *tok = eng_tok_load(o.model, &err);
    eng_engine *base = tok ? eng_open(o.model, NULL, o.model, &err) : NULL;
    if (!base) goto fail;
    if (base->m->load_note[0]) printf("%s\n", base->m->load_note);
    if (load_rows(o.data, &train, &err) || (o.eval && load_rows(o.eval, &ev, &err))) goto fail;
    eff = json_pack("{s:I, s:I, s:f, s:I, s:f, s:I, s:I, s:I}", "batch_size", (json_int_t)o.bs,
                    "gradient_accumulation_steps", (json_int_t)o.ga, "learning_rate", o.lr, "lora_rank",
                    (json_int_t)o.rank, "lora_alpha", o.alpha, "max_sequence_length", (json_int_t)o.max_len,
                    "checkpoint_interval", (json_int_t)o.interval, "seed", (json_int_t)o.seed);
    job = json_pack("{s:s, s:s}", "backend", "tinker", "trainer_type", "sft");
    if (!eff || !job) abort();
    json_object_set_new(eff, "steps", o.steps ? json_integer(o.steps) : json_null());
    json_object_set_new(eff, "compute", json_string(o.compute));
    json_object_set_new(eff, "epochs", o.epochs ? json_integer(o.epochs) : json_null());
    work = lt_path_join(o.out, ".work");
    lt_rm_rf(work);
    if (lt_mkdir_p(work, 0755, &err)) goto fail;
    cli_ud u = {.out = o.out, .t_start = lt_mono_s()};
    tr_inputs in = {.job = job,
                    .eff = eff,
                    .base = base,
                    .tok = tok,
                    .model_id = o.model,
                    .capability_prompt = "",
                    .train = &train,
                    .eval = o.eval ? &ev : NULL,
                    .dataset_name = "",
                    .work_dir = work,
                    .threads = (int)o.threads,
                    .seed = (uint64_t)o.seed};
    tr_hooks h = {.ud = &u, .event = on_event, .checkpoint = on_checkpoint};
    if (tr_sft_run(&in, &h, &final, &err) != TR_DONE) goto fail;
    rc = EXIT_OK;
    goto done;
fail:
    fprintf(stderr, "lathe train sft: %s\n", err.msg);
done:
    if (work) lt_rm_rf(work);
    free(work);
    json_decref(final);
    json_decref(eff);
    json_decref(job);
    rows_set_free(&train);
    rows_set_free(&ev);
    eng_close(base);
    eng_tok_free(tok);
    return rc;
}
