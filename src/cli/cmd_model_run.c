/* cmd_model_run.c: `lathe model logprobs` and `lathe model sample`, the engine run from the command line.
 *
 * Both load a model dir (config.json + safetensors + tokenizer.json) or a .gguf file into an engine (what the
 * load widened is said on stderr), optionally with a PEFT adapter dir, and print text or JSON. `logprobs`
 * scores a token sequence (log p(token i | tokens < i), the first has none); its test options (--grads,
 * --train-steps) also run forward_backward with cross_entropy and AdamW steps and print the loss, the LoRA
 * gradients under their PEFT key names and the loss after each step, so that tests/py/test_engine_ref.py can
 * compare the engine with Hugging Face transformers + peft. `sample` encodes a prompt (or renders it as a
 * one-message chat with the model's chat format, --chat) and decodes num_samples completions with the
 * KV-cached sampler. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "engine/engine.h"
#include "engine/gemm_bf16.h"
#include "engine/tokenizer.h"
#include "train/render.h"
#include "util/strbuf.h"
#include "util/util.h"

int cmd_model_logprobs(int argc, char **argv);
int cmd_model_sample(int argc, char **argv);

static void usage_logprobs(FILE *f) {
    fputs(
        "usage: lathe model logprobs DIR [--adapter ADAPTER_DIR] (--text STR | --tokens 1,2,3) [--json]\n"
        "                              [--threads N] [--compute f32|bf16]\n\n"
        "Prints log p(token i | tokens before i) for every token of the sequence (the first has none) and\n"
        "their sum. --text is encoded with DIR's tokenizer as is (no BOS is added); --tokens takes ids, and\n"
        "several sequences separated by ';' are scored as one right-padded batch. With --adapter the PEFT\n"
        "adapter (adapter_config.json + adapter_model.safetensors) is applied.\n"
        "JSON: {\"tokens\":[...],\"logprobs\":[null,...],\"sum\":X} (a batch: {\"sequences\":[...]}).\n"
        "--compute bf16 runs the base weights' GEMMs with bf16 inputs and f32 accumulation (default f32).\n\n"
        "Test options (used by tests/py/test_engine_ref.py):\n"
        "  --weights W1,W2,...   cross_entropy weight per token (the first is ignored; default 1)\n"
        "  --grads               also run forward_backward(cross_entropy) and print \"loss\" and \"grads\"\n"
        "                        {PEFT key: flat values}; needs --adapter or --lora-rank\n"
        "  --lora-rank R --lora-alpha A --lora-seed S [--lora-head]   a fresh adapter instead of --adapter\n"
        "                        (q,k,v,o,gate,up,down; --lora-head adds lm_head)\n"
        "  --train-steps N --lr X  N steps of forward_backward + AdamW(0.9, 0.95, eps 1e-8, wd 0); prints\n"
        "                        \"losses\": the loss before each step and after the last\n"
        "  --export-adapter DIR  afterwards, write the adapter as PEFT (adapter_config.json +\n"
        "                        adapter_model.safetensors) to DIR\n",
        f);
}

static void usage_sample(FILE *f) {
    fputs(
        "usage: lathe model sample DIR [--adapter ADAPTER_DIR] --prompt STR [--chat] [--max-tokens N]\n"
        "                            [--temperature T] [--top-p P] [--top-k K] [--seed S] [--num-samples N]\n"
        "                            [--stop STR]... [--json] [--threads N] [--compute f32|bf16]\n\n"
        "Generates completions of the prompt with the KV-cached sampler (all samples decoded together).\n"
        "Without --chat the prompt is encoded as is and generation stops at the tokenizer's end-of-text "
        "token;\n"
        "with --chat it becomes one user message in the model's chat format (qwen3, llama3, chatml or\n"
        "role_colon) followed by the assistant header, and generation stops at that format's end-of-turn.\n"
        "Defaults: --max-tokens 64 --temperature 1 (0 = greedy) --top-p 1 --top-k 0 (off) --seed 0\n"
        "--num-samples 1. JSON: {\"prompt_tokens\":N,\"samples\":[{\"text\",\"tokens\",\"logprobs\",\n"
        "\"stop_reason\":\"stop\"|\"length\"}]}. --compute bf16: the base weights' GEMMs in bf16 (f32 "
        "sums).\n",
        f);
}

static int is_help(const char *s) {
    return !strcmp(s, "--help") || !strcmp(s, "-h");
}

static int parse_long(const char *verb, const char *opt, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "lathe model %s: %s must be an integer in %ld..%ld, got '%s'\n", verb, opt, lo, hi,
                s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_float(const char *verb, const char *opt, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || !(v >= lo && v <= hi)) {
        fprintf(stderr, "lathe model %s: %s must be a number in [%g, %g], got '%s'\n", verb, opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* "1,2,3" -> ints; returns count or -1. *out malloc'd. */
static int parse_int_list(const char *s, int **out) {
    int cap = 16, n = 0;
    int *v = malloc((size_t)cap * sizeof(int));
    if (!v) abort();
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (errno || end == p || x < 0 || x > 0x7fffffff || (*end && *end != ',')) {
            free(v);
            return -1;
        }
        if (n == cap) {
            int *nv = realloc(v, (size_t)(cap *= 2) * sizeof(int));
            if (!nv) abort();
            v = nv;
        }
        v[n++] = (int)x;
        p = *end ? end + 1 : end;
    }
    *out = v;
    return n;
}

static int parse_float_list(const char *s, float **out) {
    int cap = 16, n = 0;
    float *v = malloc((size_t)cap * sizeof(float));
    if (!v) abort();
    const char *p = s;
    while (*p) {
        char *end;
        double x = strtod(p, &end);
        if (end == p || (*end && *end != ',')) {
            free(v);
            return -1;
        }
        if (n == cap) {
            float *nv = realloc(v, (size_t)(cap *= 2) * sizeof(float));
            if (!nv) abort();
            v = nv;
        }
        v[n++] = (float)x;
        p = *end ? end + 1 : end;
    }
    *out = v;
    return n;
}

static json_t *json_num(double x) {
    return isfinite(x) ? json_real(x) : json_null();
}

/* Options shared by both verbs. */
typedef struct {
    const char *dir, *adapter;
    int json, threads, compute; /* compute: ENG_COMPUTE_F32 or ENG_COMPUTE_BF16 */
} common_opts;

/* Handles DIR, --adapter, --json, --threads, --compute. Returns 1 if consumed (i advanced), 0 if not, -1 on
 * error. */
static int common_arg(const char *verb, common_opts *c, int argc, char **argv, int *i) {
    const char *a = argv[*i];
    if (!strcmp(a, "--json")) return c->json = 1, 1;
    if (!strcmp(a, "--adapter") || !strcmp(a, "--threads") || !strcmp(a, "--compute")) {
        if (*i + 1 >= argc) {
            fprintf(stderr, "lathe model %s: %s needs a value\n", verb, a);
            return -1;
        }
        const char *v = argv[++*i];
        if (!strcmp(a, "--adapter")) return c->adapter = v, 1;
        if (!strcmp(a, "--compute")) {
            if ((c->compute = eng_compute_parse(v)) < 0) {
                fprintf(stderr, "lathe model %s: --compute must be f32 or bf16, got '%s'\n", verb, v);
                return -1;
            }
            return 1;
        }
        long t;
        if (parse_long(verb, a, v, 1, 1024, &t)) return -1;
        c->threads = (int)t;
        return 1;
    }
    if (a[0] != '-') {
        if (c->dir) {
            fprintf(stderr, "lathe model %s: unexpected argument '%s'\n", verb, a);
            return -1;
        }
        c->dir = a;
        return 1;
    }
    return 0;
}

static eng_engine *open_engine(const char *verb, const common_opts *c, const eng_lora_config *lc) {
    lt_err err = {0};
    eng_set_threads(c->threads);
    eng_engine *e = eng_open(c->dir, c->adapter ? NULL : lc, c->dir, &err);
    if (!e) {
        fprintf(stderr, "lathe model %s: %s\n", verb, err.msg);
        return NULL;
    }
    if (e->m->load_note[0]) fprintf(stderr, "lathe model %s: %s\n", verb, e->m->load_note);
    eng_model_set_compute(e->m, c->compute);
    if (c->adapter && eng_peft_import(e->m, c->adapter, &err)) {
        fprintf(stderr, "lathe model %s: %s\n", verb, err.msg);
        eng_close(e);
        return NULL;
    }
    return e;
}

static void grad_entry(json_t *g, eng_model *m, const eng_lora_slot *sl, const char *module) {
    char key[256];
    for (int ab = 0; ab < 2; ab++) {
        const float *p = eng_model_grad_of(m, ab ? sl->B : sl->A);
        size_t n = (size_t)m->lora.rank * (size_t)(ab ? sl->out : sl->in);
        json_t *a = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(a, json_real(p[i]));
        snprintf(key, sizeof(key), "base_model.model.%s.lora_%c.weight", module, ab ? 'B' : 'A');
        json_object_set_new(g, key, a);
    }
}

static json_t *grads_json(eng_model *m) {
    json_t *g = json_object();
    char module[160];
    for (int l = 0; l < m->L; l++)
        for (int t = 0; t < ENG_NTARGETS; t++) {
            eng_lora_slot *sl = eng_model_slot(m, l, (eng_target)t);
            if (!sl->A) continue;
            snprintf(module, sizeof(module), "model.layers.%d.%s.%s", l, eng_target_parent((eng_target)t),
                     eng_target_name((eng_target)t));
            grad_entry(g, m, sl, module);
        }
    if (m->head_lora.A) grad_entry(g, m, &m->head_lora, "lm_head");
    return g;
}

int cmd_model_logprobs(int argc, char **argv) {
    common_opts c = {0};
    const char *text = NULL, *tokens_arg = NULL, *weights_arg = NULL, *export_dir = NULL;
    int grads = 0, lora_head = 0;
    long steps = 0, rank = 0, seed = 0;
    double lr = 1e-3, alpha = 0;
    for (int i = 1; i < argc; i++) {
        if (is_help(argv[i])) {
            usage_logprobs(stdout);
            return EXIT_OK;
        }
        int r = common_arg("logprobs", &c, argc, argv, &i);
        if (r < 0) return EXIT_USAGE;
        if (r) continue;
        const char *a = argv[i];
        if (!strcmp(a, "--grads")) {
            grads = 1;
            continue;
        }
        if (!strcmp(a, "--lora-head")) {
            lora_head = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "lathe model logprobs: unknown option '%s' or missing value (see --help)\n", a);
            return EXIT_USAGE;
        }
        const char *v = argv[++i];
        int bad = 0;
        if (!strcmp(a, "--text"))
            text = v;
        else if (!strcmp(a, "--tokens"))
            tokens_arg = v;
        else if (!strcmp(a, "--weights"))
            weights_arg = v;
        else if (!strcmp(a, "--export-adapter"))
            export_dir = v;
        else if (!strcmp(a, "--train-steps"))
            bad = parse_long("logprobs", a, v, 0, 100000, &steps);
        else if (!strcmp(a, "--lr"))
            bad = parse_float("logprobs", a, v, 0, 1, &lr);
        else if (!strcmp(a, "--lora-rank"))
            bad = parse_long("logprobs", a, v, 1, 4096, &rank);
        else if (!strcmp(a, "--lora-alpha"))
            bad = parse_float("logprobs", a, v, 1e-9, 1e6, &alpha);
        else if (!strcmp(a, "--lora-seed"))
            bad = parse_long("logprobs", a, v, 0, 0x7fffffffL, &seed);
        else {
            fprintf(stderr, "lathe model logprobs: unknown option '%s' (see --help)\n", a);
            return EXIT_USAGE;
        }
        if (bad) return EXIT_USAGE;
    }
    if (!c.dir || (!text) == (!tokens_arg)) {
        fprintf(stderr,
                "lathe model logprobs: give DIR and exactly one of --text or --tokens (see --help)\n");
        return EXIT_USAGE;
    }
    if ((grads || steps) && !c.adapter && !rank) {
        fprintf(stderr, "lathe model logprobs: --grads and --train-steps need --adapter or --lora-rank\n");
        return EXIT_USAGE;
    }
    eng_lora_config lc = {.rank = (int)rank,
                          .alpha = alpha > 0 ? (float)alpha : (float)(2 * rank),
                          .targets = ENG_LORA_ALL | (lora_head ? ENG_LORA_HEAD : 0u),
                          .seed = (uint64_t)seed};
    eng_engine *e = open_engine("logprobs", &c, rank ? &lc : NULL);
    if (!e) return EXIT_FAIL;

    int rc = EXIT_FAIL, nseq = 0;
    int *seqs[64] = {0}, lens[64] = {0};
    float *w = NULL, *out = NULL;
    int nw = 0;
    lt_err err = {0};
    eng_datum d[64];
    json_t *root = NULL;
    eng_tokenizer *tok = NULL;
    if (text) {
        tok = eng_tok_load(c.dir, &err);
        size_t n = 0;
        if (!tok || eng_tok_encode(tok, text, strlen(text), 1, &seqs[0], &n, &err)) {
            fprintf(stderr, "lathe model logprobs: %s\n", err.msg);
            goto done;
        }
        lens[0] = (int)n, nseq = 1;
    } else {
        char *copy = lt_strdup(tokens_arg), *save = NULL;
        for (char *part = strtok_r(copy, ";", &save); part; part = strtok_r(NULL, ";", &save)) {
            if (nseq == 64 || (lens[nseq] = parse_int_list(part, &seqs[nseq])) < 0) {
                fprintf(stderr,
                        "lathe model logprobs: --tokens must be comma-separated ids (up to 64 sequences "
                        "separated by ';'), got '%s'\n",
                        part);
                free(copy);
                rc = EXIT_USAGE;
                goto done;
            }
            nseq++;
        }
        free(copy);
    }
    for (int s = 0; s < nseq; s++)
        if (lens[s] < 2) {
            fprintf(stderr, "lathe model logprobs: sequence %d has %d token(s); at least 2 are needed\n", s,
                    lens[s]);
            rc = EXIT_USAGE;
            goto done;
        }
    if (weights_arg && ((nw = parse_float_list(weights_arg, &w)) < 0 || nseq != 1 || nw != lens[0])) {
        fprintf(stderr, "lathe model logprobs: --weights needs one number per token of a single sequence\n");
        rc = EXIT_USAGE;
        goto done;
    }
    size_t total = 0;
    for (int s = 0; s < nseq; s++) {
        d[s] = (eng_datum){
            .tokens = seqs[s], .n = lens[s] - 1, .targets = seqs[s] + 1, .weights = w ? w + 1 : NULL};
        total += (size_t)lens[s] - 1;
    }
    out = malloc(total * sizeof(float));
    if (!out) abort();
    double loss = 0;
    int train = grads || steps;
    if ((train ? eng_forward_backward : eng_forward)(e, d, nseq, "cross_entropy", NULL, 0, out, &loss,
                                                     &err)) {
        fprintf(stderr, "lathe model logprobs: %s\n", err.msg);
        goto done;
    }
    root = json_object();
    json_t *seqarr = json_array();
    size_t o = 0;
    for (int s = 0; s < nseq; s++) {
        json_t *js = json_object(), *jt = json_array(), *jl = json_array();
        double sum = 0;
        json_array_append_new(jl, json_null());
        for (int i = 0; i < lens[s]; i++)
            json_array_append_new(jt, json_integer(seqs[s][i]));
        for (int i = 1; i < lens[s]; i++, o++) {
            json_array_append_new(jl, json_num(out[o]));
            sum += out[o];
        }
        json_object_set_new(js, "tokens", jt);
        json_object_set_new(js, "logprobs", jl);
        json_object_set_new(js, "sum", json_num(sum));
        json_array_append_new(seqarr, js);
    }
    if (nseq == 1) {
        json_object_update(root, json_array_get(seqarr, 0));
        json_decref(seqarr);
    } else {
        json_object_set_new(root, "sequences", seqarr);
    }
    if (train) {
        json_object_set_new(root, "loss", json_num(loss));
        if (grads) json_object_set_new(root, "grads", grads_json(e->m));
        json_t *losses = json_array();
        eng_adam_params ap;
        eng_adam_params_default(&ap);
        ap.learning_rate = (float)lr;
        ap.eps = 1e-8f;
        for (long st = 0; st < steps; st++) {
            if (st > 0 && eng_forward_backward(e, d, nseq, "cross_entropy", NULL, 0, out, &loss, &err)) break;
            json_array_append_new(losses, json_num(loss));
            if (eng_optim_step(e, &ap, &err)) break;
        }
        if (!err.code && steps && eng_forward(e, d, nseq, "cross_entropy", NULL, 0, out, &loss, &err) == 0)
            json_array_append_new(losses, json_num(loss));
        if (err.code) {
            fprintf(stderr, "lathe model logprobs: %s\n", err.msg);
            json_decref(losses);
            goto done;
        }
        json_object_set_new(root, "losses", losses);
    }
    if (export_dir && eng_peft_export(e->m, export_dir, c.dir, &err)) {
        fprintf(stderr, "lathe model logprobs: %s\n", err.msg);
        goto done;
    }
    if (c.json) {
        char *s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
        puts(s);
        free(s);
    } else {
        o = 0;
        for (int s = 0; s < nseq; s++) {
            if (nseq > 1) printf("sequence %d\n", s);
            double sum = 0;
            printf("%6s %8s %12s\n", "pos", "token", "logprob");
            printf("%6d %8d %12s\n", 0, seqs[s][0], "-");
            for (int i = 1; i < lens[s]; i++, o++) {
                printf("%6d %8d %12.6f\n", i, seqs[s][i], (double)out[o]);
                sum += out[o];
            }
            printf("sum: %.6f\n", sum);
        }
        if (train) printf("loss: %.6f\n", loss);
    }
    rc = EXIT_OK;
done:
    json_decref(root);
    for (int s = 0; s < nseq; s++)
        free(seqs[s]);
    if (text && nseq == 0) free(seqs[0]);
    free(w);
    free(out);
    eng_tok_free(tok);
    eng_close(e);
    return rc;
}

int cmd_model_sample(int argc, char **argv) {
    common_opts c = {0};
    const char *prompt = NULL;
    int chat = 0;
    eng_sample_params p;
    eng_sample_params_default(&p);
    p.max_tokens = 64;
    const char *stops[16];
    int nstops = 0;
    for (int i = 1; i < argc; i++) {
        if (is_help(argv[i])) {
            usage_sample(stdout);
            return EXIT_OK;
        }
        int r = common_arg("sample", &c, argc, argv, &i);
        if (r < 0) return EXIT_USAGE;
        if (r) continue;
        const char *a = argv[i];
        if (!strcmp(a, "--chat")) {
            chat = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "lathe model sample: unknown option '%s' or missing value (see --help)\n", a);
            return EXIT_USAGE;
        }
        const char *v = argv[++i];
        long x;
        double f;
        int bad = 0;
        if (!strcmp(a, "--prompt"))
            prompt = v;
        else if (!strcmp(a, "--max-tokens"))
            bad = parse_long("sample", a, v, 1, 1 << 20, &x), p.max_tokens = (int)x;
        else if (!strcmp(a, "--temperature"))
            bad = parse_float("sample", a, v, 0, 100, &f), p.temperature = (float)f;
        else if (!strcmp(a, "--top-p"))
            bad = parse_float("sample", a, v, 1e-9, 1, &f), p.top_p = (float)f;
        else if (!strcmp(a, "--top-k"))
            bad = parse_long("sample", a, v, 0, 1 << 30, &x), p.top_k = (int)x;
        else if (!strcmp(a, "--seed"))
            bad = parse_long("sample", a, v, 0, 0x7fffffffL, &x), p.seed = (uint64_t)x;
        else if (!strcmp(a, "--num-samples"))
            bad = parse_long("sample", a, v, 1, 4096, &x), p.num_samples = (int)x;
        else if (!strcmp(a, "--stop")) {
            if (nstops == 14) {
                fprintf(stderr, "lathe model sample: at most 14 --stop strings\n");
                return EXIT_USAGE;
            }
            stops[nstops++] = v;
        } else {
            fprintf(stderr, "lathe model sample: unknown option '%s' (see --help)\n", a);
            return EXIT_USAGE;
        }
        if (bad) return EXIT_USAGE;
    }
    if (!c.dir || !prompt) {
        fprintf(stderr, "lathe model sample: give DIR and --prompt (see --help)\n");
        return EXIT_USAGE;
    }
    eng_engine *e = open_engine("sample", &c, NULL);
    if (!e) return EXIT_FAIL;
    int rc = EXIT_FAIL;
    lt_err err = {0};
    int *ids = NULL, stop_ids[8];
    size_t n = 0;
    int nstop_ids = 0;
    eng_sample_result res = {0};
    render_out ro = {0};
    eng_tokenizer *tok = eng_tok_load(c.dir, &err);
    if (!tok) {
        fprintf(stderr, "lathe model sample: %s\n", err.msg);
        goto done;
    }
    if (chat) {
        json_t *msgs = json_pack("[{s:s, s:s}]", "role", "user", "content", prompt);
        render_kind kind = render_pick(tok, e->m->cfg.family);
        int r = render_chat(tok, kind, msgs, 1, &ro, &err);
        json_decref(msgs);
        if (r) {
            fprintf(stderr, "lathe model sample: %s\n", err.msg);
            goto done;
        }
        render_stops st;
        render_stops_for(tok, kind, &st);
        for (int i = 0; i < st.n_stop_ids && nstop_ids < 8; i++)
            stop_ids[nstop_ids++] = st.stop_ids[i];
        for (int i = 0; i < st.n_stop_strings && nstops < 16; i++)
            stops[nstops++] = st.stop_strings[i];
        ids = ro.ids, n = ro.n;
    } else {
        if (eng_tok_encode(tok, prompt, strlen(prompt), 1, &ids, &n, &err)) {
            fprintf(stderr, "lathe model sample: %s\n", err.msg);
            goto done;
        }
        int eos = eng_tok_eos_id(tok);
        if (eos >= 0) stop_ids[nstop_ids++] = eos;
    }
    p.stop_tokens = stop_ids, p.n_stop_tokens = nstop_ids;
    p.stop_strings = stops, p.n_stop_strings = nstops;
    if (eng_engine_sample(e, ids, (int)n, &p, 1, tok, &res, &err)) {
        fprintf(stderr, "lathe model sample: %s\n", err.msg);
        goto done;
    }
    json_t *root = json_object(), *samples = json_array();
    json_object_set_new(root, "prompt_tokens", json_integer((json_int_t)n));
    for (int s = 0; s < res.n; s++) {
        eng_sequence *sq = &res.seqs[s];
        char *txt = eng_tok_decode(tok, sq->tokens, (size_t)sq->n, 1, NULL);
        if (c.json) {
            json_t *js = json_object(), *jt = json_array(), *jl = json_array();
            for (int i = 0; i < sq->n; i++) {
                json_array_append_new(jt, json_integer(sq->tokens[i]));
                json_array_append_new(jl, json_num(sq->logprobs[i]));
            }
            json_object_set_new(js, "text", json_string(txt));
            json_object_set_new(js, "tokens", jt);
            json_object_set_new(js, "logprobs", jl);
            json_object_set_new(js, "stop_reason", json_string(eng_stop_reason_name(sq->stop_reason)));
            json_array_append_new(samples, js);
        } else {
            if (res.n > 1)
                printf("--- sample %d (%s, %d tokens)\n", s, eng_stop_reason_name(sq->stop_reason), sq->n);
            printf("%s\n", txt);
        }
        free(txt);
    }
    json_object_set_new(root, "samples", samples);
    if (c.json) {
        char *s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
        puts(s);
        free(s);
    }
    json_decref(root);
    rc = EXIT_OK;
done:
    eng_sample_result_free(&res);
    if (chat)
        render_out_free(&ro);
    else
        free(ids);
    eng_tok_free(tok);
    eng_close(e);
    return rc;
}
