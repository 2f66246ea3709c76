/* cmd_train_local.c: `lathe train sft --model DIR --data FILE --out DIR`, supervised LoRA fine-tuning on this
 * machine, without a server.
 *
 * The loop is SPEC §4.6's SFT on the engine directly: every row of the data file (JSONL, JSON or CSV; any row
 * shape of SPEC §5) becomes a conversation, rendered in the model's chat format with weight 1 on assistant
 * content and end-of-turn tokens; the sequence is truncated from the right to --max-seq-len, shifted by one
 * (position i predicts token i+1) and its weights are divided by their sum, so the loss of a step is the sum
 * of the examples' mean token NLL. A step runs --grad-accum forward_backward calls of --batch-size examples,
 * then one AdamW step (beta 0.9 / 0.95, eps 1e-8, no weight decay) at lr * (1 - step / total). The example
 * order is a shuffle per epoch seeded by the epoch index (plus --seed), and the data cycles when --steps asks
 * for more. Every --checkpoint-interval steps and at the end it writes
 * OUT/checkpoints/checkpoint-<n>-step<s>/ (state with optimizer + PEFT adapter), evaluates --eval when given,
 * and finally writes OUT/adapter/ (PEFT). */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "engine/engine.h"
#include "engine/tokenizer.h"
#include "train/render.h"
#include "train/rows.h"
#include "util/util.h"

int cmd_train_local(int argc, char **argv);

static void usage(FILE *f) {
    fputs(
        "usage: lathe train sft --model DIR --data FILE --out DIR [--eval FILE] [--steps N] [--epochs N]\n"
        "                       [--batch-size N] [--grad-accum N] [--lr X] [--lora-rank R] [--lora-alpha A]\n"
        "                       [--max-seq-len N] [--checkpoint-interval N] [--seed N] [--threads N]\n\n"
        "Fine-tunes a LoRA adapter on DIR (a Hugging Face model dir) with the rows of FILE (.jsonl, .json "
        "or\n"
        ".csv; chat, tool-calling, prompt/answer or trajectory rows), locally. Loss: cross-entropy on "
        "assistant\n"
        "tokens, each example's weights normalised to sum to 1. Defaults: --batch-size 16 --grad-accum 1\n"
        "--lr 1e-4 (linear decay to 0) --lora-rank 16 --lora-alpha 32 --max-seq-len 2048 (capped by the "
        "model)\n"
        "--checkpoint-interval 10 --seed 0; one epoch when neither --steps nor --epochs is given.\n"
        "Writes OUT/checkpoints/checkpoint-<n>-step<s>/{state.safetensors,adapter/} and OUT/adapter/ (PEFT:\n"
        "adapter_config.json + adapter_model.safetensors, loadable by HF peft and vLLM).\n",
        f);
}

typedef struct {
    int *tokens, *targets;
    float *weights;
    int n;
} example;

typedef struct {
    example *v;
    size_t n, cap;
    size_t skipped;
    const eng_tokenizer *tok;
    render_kind kind;
    int max_len;
} example_set;

static void examples_free(example_set *s) {
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i].tokens), free(s->v[i].targets), free(s->v[i].weights);
    free(s->v);
}

static int add_row(const json_t *row, long line, void *ud, lt_err *err) {
    example_set *s = ud;
    json_t *conv = rows_conversation(row, NULL, err);
    if (!conv) return -1;
    render_out ro = {0};
    int rc = render_chat(s->tok, s->kind, conv, 0, &ro, err);
    json_decref(conv);
    if (rc) return -1;
    size_t L = ro.n < (size_t)s->max_len ? ro.n : (size_t)s->max_len;
    double wsum = 0;
    for (size_t i = 1; i < L; i++)
        wsum += ro.weights[i];
    if (L < 2 || !(wsum > 0)) {
        s->skipped++; /* nothing to learn: no assistant token left after truncation */
        render_out_free(&ro);
        return 0;
    }
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 256;
        example *nv = realloc(s->v, s->cap * sizeof(example));
        if (!nv) abort();
        s->v = nv;
    }
    example *e = &s->v[s->n++];
    e->n = (int)L - 1;
    e->tokens = malloc((size_t)e->n * sizeof(int));
    e->targets = malloc((size_t)e->n * sizeof(int));
    e->weights = malloc((size_t)e->n * sizeof(float));
    if (!e->tokens || !e->targets || !e->weights) abort();
    for (int i = 0; i < e->n; i++) {
        e->tokens[i] = ro.ids[i];
        e->targets[i] = ro.ids[i + 1];
        e->weights[i] = (float)(ro.weights[i + 1] / wsum);
    }
    render_out_free(&ro);
    (void)line;
    return 0;
}

static int load_examples(const char *path, example_set *s, lt_err *err) {
    size_t len;
    char *data = lt_read_file(path, &len, err);
    if (!data) return -1;
    rows_loc loc;
    int rc = rows_parse(data, len, rows_format_for_path(path, ROWS_JSONL), NULL, path, add_row, s, &loc, err);
    free(data);
    if (rc) return -1;
    if (s->n == 0)
        return lt_err_set(err, 422, "%s: no example with an assistant message to train on (%zu rows skipped)",
                          path, s->skipped);
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

static double eval_loss(eng_engine *e, const example_set *ev, int bs, lt_err *err) {
    eng_datum *d = calloc((size_t)bs, sizeof(eng_datum));
    if (!d) abort();
    double total = 0;
    for (size_t i = 0; i < ev->n; i += (size_t)bs) {
        int nb = 0;
        for (size_t k = i; k < ev->n && nb < bs; k++, nb++)
            d[nb] = (eng_datum){.tokens = ev->v[k].tokens,
                                .n = ev->v[k].n,
                                .targets = ev->v[k].targets,
                                .weights = ev->v[k].weights};
        double l;
        if (eng_forward(e, d, nb, "cross_entropy", NULL, 0, NULL, &l, err)) {
            free(d);
            return NAN;
        }
        total += l;
    }
    free(d);
    return total / (double)ev->n;
}

static int checkpoint(eng_engine *e, const char *out, int n, long step, lt_err *err) {
    char name[96];
    snprintf(name, sizeof(name), "checkpoints/checkpoint-%d-step%ld", n, step);
    char *dir = lt_path_join(out, name), *state = lt_path_join(dir, "state.safetensors"),
         *adapter = lt_path_join(dir, "adapter");
    char extra[64];
    snprintf(extra, sizeof(extra), "{\"step\":%ld}", step);
    int rc = lt_mkdir_p(dir, 0755, err) || eng_save_state(e, state, 1, extra, err) ||
             eng_peft_export(e->m, adapter, e->base_model, err);
    if (!rc) printf("checkpoint %s\n", name);
    free(dir), free(state), free(adapter);
    return rc ? -1 : 0;
}

typedef struct {
    const char *model, *data, *eval, *out;
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
        else {
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
    opts o = {.bs = 16, .ga = 1, .rank = 16, .max_len = 2048, .interval = 10, .lr = 1e-4, .alpha = 32};
    int pr = parse_args(argc, argv, &o);
    if (pr) return pr > 0 ? EXIT_OK : EXIT_USAGE;
    eng_set_threads((int)o.threads);
    lt_err err = {0};
    int rc = EXIT_FAIL;
    example_set train = {0}, ev = {0};
    size_t *perm = NULL;
    eng_datum *d = NULL;
    eng_lora_config lc = {
        .rank = (int)o.rank, .alpha = (float)o.alpha, .targets = ENG_LORA_ALL, .seed = (uint64_t)o.seed};
    eng_tokenizer *tok = eng_tok_load(o.model, &err);
    eng_engine *e = tok ? eng_open(o.model, &lc, o.model, &err) : NULL;
    if (!e) goto fail;
    int ctx = e->m->cfg.max_position_embeddings;
    train.tok = ev.tok = tok;
    train.kind = ev.kind = render_pick(tok, e->m->cfg.family);
    train.max_len = ev.max_len = (int)(ctx > 0 && o.max_len > ctx ? ctx : o.max_len);
    if (load_examples(o.data, &train, &err) || (o.eval && load_examples(o.eval, &ev, &err))) goto fail;

    long per_epoch = (long)((train.n + (size_t)(o.bs * o.ga) - 1) / (size_t)(o.bs * o.ga));
    long total = o.steps ? o.steps : per_epoch;
    if (o.epochs) {
        total = o.epochs * per_epoch;
        if (o.steps && o.steps < total) {
            fprintf(stderr, "warning: --steps %ld caps --epochs %ld (%ld steps)\n", o.steps, o.epochs, total);
            total = o.steps;
        }
    }
    printf(
        "training %s on %zu examples (%zu skipped) from %s: %ld steps of %ld x %ld, renderer %s, LoRA r%ld\n",
        o.model, train.n, train.skipped, o.data, total, o.bs, o.ga, render_kind_name(train.kind), o.rank);
    if (lt_mkdir_p(o.out, 0755, &err)) goto fail;
    perm = malloc(train.n * sizeof(size_t));
    d = calloc((size_t)o.bs, sizeof(eng_datum));
    if (!perm || !d) abort();
    eng_adam_params ap;
    eng_adam_params_default(&ap);
    ap.eps = 1e-8f;
    long epoch = -1;
    size_t cursor = 0; /* examples consumed so far */
    int nckpt = 0;
    double t_start = lt_mono_s();
    for (long step = 0; step < total; step++) {
        double t0 = lt_mono_s(), loss = 0;
        long ntok = 0;
        for (long m = 0; m < o.ga; m++) {
            for (long b = 0; b < o.bs; b++, cursor++) {
                long ep = (long)(cursor / train.n);
                if (ep != epoch) shuffle(perm, train.n, (uint64_t)o.seed, epoch = ep);
                const example *x = &train.v[perm[cursor % train.n]];
                d[b] =
                    (eng_datum){.tokens = x->tokens, .n = x->n, .targets = x->targets, .weights = x->weights};
                ntok += x->n;
            }
            double l;
            if (eng_forward_backward(e, d, (int)o.bs, "cross_entropy", NULL, 0, NULL, &l, &err)) goto fail;
            loss += l;
        }
        ap.learning_rate = (float)(o.lr * (1.0 - (double)step / (double)total));
        if (eng_optim_step(e, &ap, &err)) goto fail;
        double dt = lt_mono_s() - t0;
        printf("step %ld/%ld  loss %.4f  lr %.3g  tokens/s %.0f\n", step + 1, total,
               loss / (double)(o.bs * o.ga), (double)ap.learning_rate, (double)ntok / dt);
        fflush(stdout);
        if ((step + 1) % o.interval == 0 || step + 1 == total) {
            if (checkpoint(e, o.out, ++nckpt, step + 1, &err)) goto fail;
            if (o.eval) {
                double el = eval_loss(e, &ev, (int)o.bs, &err);
                if (isnan(el)) goto fail;
                printf("eval/loss %.4f (%zu examples)\n", el, ev.n);
            }
        }
    }
    char *adir = lt_path_join(o.out, "adapter");
    int ok = eng_peft_export(e->m, adir, o.model, &err) == 0;
    if (ok) printf("wrote %s (PEFT) after %ld steps in %.1f s\n", adir, total, lt_mono_s() - t_start);
    free(adir);
    if (!ok) goto fail;
    rc = EXIT_OK;
    goto done;
fail:
    fprintf(stderr, "lathe train sft: %s\n", err.msg);
done:
    examples_free(&train);
    examples_free(&ev);
    free(perm);
    free(d);
    eng_close(e);
    eng_tok_free(tok);
    return rc;
}
