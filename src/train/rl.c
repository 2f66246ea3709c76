/* rl.c: Tinker RL (importance_sampling, ppo) and Ray GRPO (docs/spec.md §4.4-§4.6). See docs/rl.md.
 *
 * Prompts. Every row of in->train (prompt rows) and in->trajectories (one prompt per agent step: offline RL)
 * becomes RL items (rows_rl_items, with the capability prompt and the task instruction); each item's messages
 * are rendered with the generation prompt in the model's chat format. Step k takes the cyclic window of
 * batch_size items starting at k * batch_size; each prompt gets a group of G completions (Tinker:
 * num_rollouts / batch_size, at least 1; GRPO: num_rollouts), sampled together from the sampler engine with a
 * seed derived from (seed, k, prompt), so a step's samples depend only on the sampler weights.
 *
 * Learning. Rewards from the recipe (rewards.h); advantages A = r - group mean (Tinker; a group of one uses
 * the running mean of all training rewards so far, this step's included) or (r - mean) / (std + 1e-6) with
 * the unbiased std (GRPO; a group of one: A = r), written on every sampled token and 0 on the prompt. The
 * learner runs forward_backward with importance_sampling or ppo (clip 0.8 / 1.2; GRPO always ppo) against the
 * sampler's logprobs, in micro-batches whose gradients accumulate, then one AdamW step (0.9 / 0.95 / 1e-8, no
 * weight decay) at the constant learning rate. The sampler engine (eng_share of the base) gets the learner's
 * LoRA buffers copied every weight_sync_interval steps.
 *
 * Execution modes. sync (and GRPO colocated): sample, then learn, in the calling thread; bit-exact resume.
 * one_step_off_async (and GRPO async) and fully_async: one sampler thread with its own engine generates step
 * batches ahead (at most 1, resp. max_steps_off_policy, waiting), taking the learner's published weights
 * before each batch; the learner drops a batch whose staleness (learner version - generating version) exceeds
 * max_steps_off_policy and has it regenerated. Threads: the sampler thread runs 1 OpenMP thread, the learner
 * max(1, threads - 1), so the process keeps `threads` busy. GRPO distributed: tr_rl_dist_run (rl_dist.c, on
 * dist.h's launcher and transport) and tr_rl_rank_main below. */
#include "train/rl.h"

#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/dist.h"
#include "train/render.h"
#include "train/rewards.h"
#include "util/util.h"

enum { MODE_SYNC = 0, MODE_ONE_OFF, MODE_FULLY, MODE_DIST };

typedef struct rl_cfg {
    int grpo;
    const char *loss; /* "importance_sampling" | "ppo" */
    const char *mode_name;
    int mode;
    long steps;
    double lr;
    long rank;
    double alpha;
    long batch, group;
    long wsync;
    long max_off;
    long max_new;
    double temp;
    long ckpt_interval;
    long eval_interval, eval_max;
    long workers, buffer_size;
} rl_cfg;

typedef struct rl_item {
    json_t *item; /* {messages, expected, reward, context} */
    int *prompt;
    int np;
} rl_item;

typedef struct rl_items {
    rl_item *v;
    size_t n, cap;
    size_t truncated;
} rl_items;

typedef struct rl_rollout {
    int item;
    int *tokens;
    float *logprobs;
    int n;
    rw_result res;
} rl_rollout;

typedef struct rl_batch {
    long index;   /* the step whose prompt window this is */
    long version; /* sampler model version that generated it */
    int n;        /* rollouts: batch * group */
    rl_rollout *r;
    long sampled_tokens;
    double sample_s, score_s;
    char *first_text; /* the first completion, for the debug log */
} rl_batch;

typedef struct rl_run rl_run;

/* The sampler thread of the async modes. */
typedef struct rl_async {
    pthread_t th;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    eng_engine *eng;  /* the thread's sampler engine */
    float *pub;       /* published learner adapter */
    long pub_version; /* version of pub */
    long eng_version; /* version the thread's engine holds */
    long next_index;  /* next batch index to generate */
    long redo[64];    /* indices to regenerate first */
    int nredo;
    rl_batch **q;          /* ready batches, oldest first */
    int qn, cap, inflight; /* inflight: 1 while the thread generates */
    int quit;
    int failed;
    lt_err err;
} rl_async;

struct rl_run {
    const tr_inputs *in;
    const tr_hooks *h;
    rl_cfg c;
    rw_recipe *rw;
    render_kind kind;
    render_stops stops;
    const char **stop_strings;
    int n_stop_strings;
    rl_items items, evals;
    eng_engine *learner, *sampler;
    long version; /* learner optimizer steps */
    long sampler_version;
    long sync_count;
    double rsum; /* running reward sum / count (training rewards) */
    long rcount;
    double reward_steps_sum;
    long reward_steps;
    double reward_last, eval_last;
    int have_eval;
    int nckpt;
    long tokens_total;
    double t_sample, t_score, t_train; /* totals, seconds */
    rl_async *as;
    rl_batch *pending; /* distributed: the batch rank 0 assembled for the next step */
    int dist;          /* distributed rank 0: 1, or 2 while the samplers generate the next step */
    int dist_started;  /* the start broadcast happened */
};

/* ---- knobs ---- */

static const char *jstr(const json_t *o, const char *k) {
    return json_string_value(json_object_get(o, k));
}

static int parse_cfg(const tr_inputs *in, rl_cfg *c, lt_err *err) {
    const json_t *eff = in->eff;
    const char *backend = jstr(in->job, "backend");
    c->grpo = backend && !strcmp(backend, "ray");
    const char *alg = jstr(eff, "algorithm");
    if (!alg) alg = jstr(in->job, "algorithm");
    if (c->grpo) {
        if (alg && strcmp(alg, "grpo") != 0)
            return lt_err_set(err, 422, "config.algorithm: Ray RL jobs only support grpo (got '%.40s')", alg);
        c->loss = "ppo";
    } else if (alg && !strcmp(alg, "importance_sampling")) {
        c->loss = "importance_sampling";
    } else if (alg && !strcmp(alg, "ppo")) {
        c->loss = "ppo";
    } else {
        return lt_err_set(err, 422, "config.algorithm must be importance_sampling or ppo (got '%.40s')",
                          alg ? alg : "nothing");
    }
    const char *mode = jstr(eff, "execution_mode");
    if (!mode) mode = c->grpo ? "async" : "sync";
    c->mode_name = mode;
    if (!strcmp(mode, "sync") || (c->grpo && !strcmp(mode, "colocated")))
        c->mode = MODE_SYNC;
    else if (!strcmp(mode, "one_step_off_async") || (c->grpo && !strcmp(mode, "async")))
        c->mode = MODE_ONE_OFF;
    else if (!c->grpo && !strcmp(mode, "fully_async"))
        c->mode = MODE_FULLY;
    else if (c->grpo && !strcmp(mode, "distributed"))
        c->mode = MODE_DIST;
    else
        return lt_err_set(err, 422, "config.execution_mode '%.40s' is not one of %s", mode,
                          c->grpo ? "async, colocated, distributed"
                                  : "sync, one_step_off_async, fully_async");
    if (tr_knob_l(eff, "steps", 1, 1, 10000000, &c->steps, err) ||
        tr_knob_d(eff, "learning_rate", c->grpo ? 1e-5 : 1e-4, 0, 1, 1, &c->lr, err) ||
        tr_knob_l(eff, "lora_rank", 16, 1, 512, &c->rank, err) ||
        tr_knob_d(eff, "lora_alpha", 32, 0, 1, 4096, &c->alpha, err) ||
        tr_knob_l(eff, "num_rollouts", 8, 1, 65536, &c->group, err) ||
        tr_knob_l(eff, "batch_size", c->grpo ? 8 : (c->group < 8 ? c->group : 8), 1, 65536, &c->batch, err) ||
        tr_knob_l(eff, "weight_sync_interval", 1, 1, 1L << 40, &c->wsync, err) ||
        tr_knob_l(eff, "max_steps_off_policy", c->mode == MODE_SYNC ? 0 : 1, 0, 1L << 40, &c->max_off, err) ||
        tr_knob_l(eff, "max_new_tokens", 0, 0, 1L << 30, &c->max_new, err) ||
        tr_knob_d(eff, "temperature", 1.0, 0, 0, 2, &c->temp, err) ||
        tr_knob_l(eff, "checkpoint_interval", c->steps, 1, 1L << 40, &c->ckpt_interval, err) ||
        tr_knob_l(eff, "eval_interval", 10, 1, 1L << 40, &c->eval_interval, err) ||
        tr_knob_l(eff, "num_rollout_workers", 1, 1, 4096, &c->workers, err))
        return -1;
    if (tr_knob_l(eff, "eval_max_rollouts", c->batch, 1, 1L << 30, &c->eval_max, err) ||
        tr_knob_l(eff, "buffer_size", c->batch, 1, 1L << 30, &c->buffer_size, err))
        return -1;
    if (!c->grpo) {
        if (c->batch > c->group)
            return lt_err_set(err, 422, "config.batch_size (%ld) must be <= num_rollouts (%ld)", c->batch,
                              c->group);
        c->group = c->group / c->batch;
        if (c->group < 1) c->group = 1;
    }
    if (c->mode == MODE_ONE_OFF) c->max_off = 1;
    if (c->mode == MODE_FULLY && c->max_off < 1)
        return lt_err_set(err, 422, "config.max_steps_off_policy is required (>= 1) with execution_mode %s",
                          mode);
    return 0;
}

/* ---- prompts ---- */

static void items_free(rl_items *s) {
    for (size_t i = 0; i < s->n; i++) {
        json_decref(s->v[i].item);
        free(s->v[i].prompt);
    }
    free(s->v);
    memset(s, 0, sizeof *s);
}

/* Adds the RL items of every row of rs. max_prompt: the longest prompt that leaves room for max_new_tokens
 * (longer ones keep their last max_prompt tokens). */
static int add_items(rl_run *r, const rows_set *rs, const char *what, rl_items *out, int max_prompt,
                     int check_recipe, lt_err *err) {
    const char *instr = r->in->task ? jstr(r->in->task, "instruction") : NULL;
    const char *cap = r->in->capability_prompt ? r->in->capability_prompt : "";
    for (size_t i = 0; rs && i < rs->n; i++) {
        const json_t *row = json_array_get(rs->rows, i);
        lt_err e2 = {0};
        json_t *arr = rows_rl_items(row, cap, instr, &e2);
        char where[512];
        if (!arr) {
            tr_row_where(rs, i, where, sizeof where);
            int has = strstr(e2.msg, "accepted shapes") != NULL;
            return lt_err_set(err, 422, "%s %s: %s%s%s", what, where, e2.msg, has ? "" : "; ",
                              has ? "" : ROWS_ACCEPTED_SHAPES);
        }
        for (size_t k = 0; k < json_array_size(arr); k++) {
            json_t *it = json_array_get(arr, k);
            if (check_recipe && rw_check_item(r->rw, it, &e2)) {
                tr_row_where(rs, i, where, sizeof where);
                json_decref(arr);
                return lt_err_set(err, 422, "%s %s: %s", what, where, e2.msg);
            }
            render_out ro = {0};
            if (render_chat(r->in->tok, r->kind, json_object_get(it, "messages"), 1, &ro, &e2)) {
                tr_row_where(rs, i, where, sizeof where);
                json_decref(arr);
                return lt_err_set(err, 422, "%s %s: %s", what, where, e2.msg);
            }
            if (out->n == out->cap) {
                out->cap = out->cap ? 2 * out->cap : 64;
                rl_item *nv = lt_xrealloc(out->v, out->cap * sizeof *nv);
                out->v = nv;
            }
            rl_item *x = &out->v[out->n++];
            size_t skip = ro.n > (size_t)max_prompt ? ro.n - (size_t)max_prompt : 0;
            if (skip) out->truncated++;
            x->np = (int)(ro.n - skip);
            x->prompt = lt_xmalloc((size_t)(x->np > 0 ? x->np : 1) * sizeof(int));
            memcpy(x->prompt, ro.ids + skip, (size_t)x->np * sizeof(int));
            x->item = json_incref(it);
            render_out_free(&ro);
        }
        json_decref(arr);
    }
    return 0;
}

/* ---- sampling ---- */

static uint64_t mix(uint64_t a, uint64_t b, uint64_t c) {
    uint64_t s = a * 0x9e3779b97f4a7c15ULL ^ (b + 0x632be59bd9b4e019ULL) * 0xbf58476d1ce4e5b9ULL ^
                 (c + 0x1234567ULL) * 0x94d049bb133111ebULL;
    return eng_rng_next(&s);
}

static void batch_free(rl_batch *b) {
    if (!b) return;
    for (int i = 0; i < b->n; i++) {
        free(b->r[i].tokens);
        free(b->r[i].logprobs);
    }
    free(b->r);
    free(b->first_text);
    free(b);
}

/* The completion's text: without a final stop token, cut at the first stop string. */
static char *completion_text(const rl_run *r, const eng_sequence *s) {
    int n = s->n;
    if (n > 0 && s->stop_reason == ENG_STOP_STOP)
        for (int k = 0; k < r->stops.n_stop_ids; k++)
            if (s->tokens[n - 1] == r->stops.stop_ids[k]) {
                n--;
                break;
            }
    size_t len = 0;
    char *t = eng_tok_decode(r->in->tok, s->tokens, (size_t)n, 1, &len);
    if (!t) return lt_strdup("");
    for (int k = 0; k < r->n_stop_strings; k++) {
        char *p = strstr(t, r->stop_strings[k]);
        if (p) *p = '\0';
    }
    return t;
}

/* Samples `group` completions of each item in idx[0..nidx) with engine e and scores them into a new batch. */
static int sample_items(const rl_run *r, eng_engine *e, const rl_items *items, const size_t *idx, int nidx,
                        int group, double temp, long index, uint64_t salt, const int *seedpos, rl_batch **out,
                        lt_err *err) {
    rl_batch *b = lt_xcalloc(1, sizeof *b);
    b->index = index;
    b->r = lt_xcalloc((size_t)nidx * (size_t)group, sizeof *b->r);
    int stop_ids[8];
    int nsi = r->stops.n_stop_ids;
    memcpy(stop_ids, r->stops.stop_ids, (size_t)nsi * sizeof(int));
    int eos = eng_tok_eos_id(r->in->tok);
    int have = 0;
    for (int k = 0; k < nsi; k++)
        have |= stop_ids[k] == eos;
    if (eos >= 0 && !have && nsi < 8) stop_ids[nsi++] = eos;
    for (int p = 0; p < nidx; p++) {
        const rl_item *it = &items->v[idx[p]];
        eng_sample_params sp;
        eng_sample_params_default(&sp);
        sp.max_tokens = (int)r->c.max_new;
        sp.temperature = (float)temp;
        sp.stop_strings = r->stop_strings;
        sp.n_stop_strings = r->n_stop_strings;
        sp.stop_tokens = stop_ids;
        sp.n_stop_tokens = nsi;
        sp.num_samples = group;
        sp.seed = mix(r->in->seed ^ salt, (uint64_t)index, (uint64_t)(seedpos ? seedpos[p] : p));
        eng_sample_result res = {0};
        double t0 = lt_mono_s();
        if (eng_engine_sample(e, it->prompt, it->np, &sp, 1, r->in->tok, &res, err)) {
            batch_free(b);
            return -1;
        }
        double t1 = lt_mono_s();
        for (int g = 0; g < res.n && g < group; g++) {
            rl_rollout *ro = &b->r[b->n++];
            eng_sequence *s = &res.seqs[g];
            ro->item = (int)idx[p];
            ro->n = s->n;
            ro->tokens = s->tokens, s->tokens = NULL;
            ro->logprobs = s->logprobs, s->logprobs = NULL;
            b->sampled_tokens += ro->n;
            eng_sequence tmp = {
                .tokens = ro->tokens, .logprobs = ro->logprobs, .n = ro->n, .stop_reason = s->stop_reason};
            char *text = completion_text(r, &tmp);
            rw_score(r->rw, text, it->item, &ro->res);
            if (!b->first_text)
                b->first_text = text;
            else
                free(text);
        }
        eng_sample_result_free(&res);
        b->sample_s += t1 - t0;
        b->score_s += lt_mono_s() - t1;
    }
    *out = b;
    return 0;
}

/* The training batch of step `index`: the cyclic window of batch_size items. */
static int gen_batch(const rl_run *r, eng_engine *e, long index, rl_batch **out, lt_err *err) {
    size_t nb = (size_t)r->c.batch;
    size_t *idx = lt_xmalloc(nb * sizeof *idx);
    for (size_t i = 0; i < nb; i++)
        idx[i] = (size_t)(((unsigned long long)index * nb + i) % r->items.n);
    int rc =
        sample_items(r, e, &r->items, idx, (int)nb, (int)r->c.group, r->c.temp, index, 0, NULL, out, err);
    free(idx);
    return rc;
}

/* ---- learning ---- */

typedef struct step_stats {
    double reward_mean, reward_max, reward_min;
    double entropy, kl, loss;
    long sampled_tokens, trained_tokens;
    rw_stats rws;
} step_stats;

static int learn(rl_run *r, const rl_batch *b, step_stats *st, lt_err *err) {
    int n = b->n, G = (int)r->c.group;
    memset(st, 0, sizeof *st);
    rw_stats_init(&st->rws);
    for (int i = 0; i < n; i++) {
        rw_stats_add(&st->rws, r->rw, r->items.v[b->r[i].item].item, &b->r[i].res);
        r->rsum += b->r[i].res.reward;
        r->rcount++;
    }
    st->reward_mean = st->rws.sum / (n ? n : 1);
    st->reward_max = st->rws.max;
    st->reward_min = st->rws.min;
    double *A = lt_xcalloc((size_t)n + 1, sizeof *A);
    for (int g0 = 0; g0 < n; g0 += G) {
        int gn = g0 + G <= n ? G : n - g0;
        double mean = 0;
        for (int i = 0; i < gn; i++)
            mean += b->r[g0 + i].res.reward;
        mean /= gn;
        double sd = 0;
        for (int i = 0; i < gn; i++)
            sd += (b->r[g0 + i].res.reward - mean) * (b->r[g0 + i].res.reward - mean);
        sd = gn > 1 ? sqrt(sd / (gn - 1)) : 0;
        for (int i = 0; i < gn; i++) {
            double x = b->r[g0 + i].res.reward;
            if (r->c.grpo)
                A[g0 + i] = gn > 1 ? (x - mean) / (sd + 1e-6) : x;
            else
                A[g0 + i] = gn > 1 ? x - mean : x - r->rsum / (double)r->rcount;
        }
    }
    /* datums: prompt + completion, shifted by one */
    eng_datum *d = lt_xcalloc((size_t)n, sizeof *d);
    int **tok = lt_xcalloc((size_t)n, sizeof *tok), **tgt = lt_xcalloc((size_t)n, sizeof *tgt);
    float **adv = lt_xcalloc((size_t)n, sizeof *adv), **q = lt_xcalloc((size_t)n, sizeof *q);
    for (int i = 0; i < n; i++) {
        const rl_rollout *ro = &b->r[i];
        const rl_item *it = &r->items.v[ro->item];
        int L = it->np + ro->n, m = L - 1;
        tok[i] = lt_xmalloc((size_t)m * sizeof(int));
        tgt[i] = lt_xmalloc((size_t)m * sizeof(int));
        adv[i] = lt_xmalloc((size_t)m * sizeof(float));
        q[i] = lt_xmalloc((size_t)m * sizeof(float));
        for (int k = 0; k < m; k++) {
            int next = k + 1 < it->np ? it->prompt[k + 1] : ro->tokens[k + 1 - it->np];
            tok[i][k] = k < it->np ? it->prompt[k] : ro->tokens[k - it->np];
            int sampled = k + 1 >= it->np;
            tgt[i][k] = sampled ? next : -1;
            adv[i][k] = sampled ? (float)A[i] : 0.0f;
            q[i][k] = sampled ? ro->logprobs[k + 1 - it->np] : 0.0f;
        }
        d[i] =
            (eng_datum){.tokens = tok[i], .n = m, .targets = tgt[i], .advantages = adv[i], .logprobs = q[i]};
        st->trained_tokens += m;
    }
    eng_loss_kv cfg[2] = {{"clip_low_threshold", 0.8}, {"clip_high_threshold", 1.2}};
    int ncfg = strcmp(r->c.loss, "ppo") == 0 ? 2 : 0;
    int rc = 0;
    double ent = 0, kl = 0, loss = 0;
    long ns = 0;
    for (int i0 = 0; i0 < n && !rc;) {
        int i1 = i0;
        long toks = 0;
        while (i1 < n && (i1 == i0 || (toks + d[i1].n <= 4096 && i1 - i0 < 16)))
            toks += d[i1++].n;
        size_t nt = eng_datums_tokens(d + i0, i1 - i0);
        float *lp = lt_xmalloc(nt * sizeof *lp);
        double ls = 0;
        rc = eng_forward_backward(r->learner, d + i0, i1 - i0, r->c.loss, cfg, ncfg, lp, &ls, err);
        if (!rc) {
            loss += ls;
            size_t off = 0;
            for (int i = i0; i < i1; i++) {
                for (int k = 0; k < d[i].n; k++)
                    if (d[i].targets[k] >= 0) {
                        ent += -d[i].logprobs[k];
                        kl += d[i].logprobs[k] - lp[off + k];
                        ns++;
                    }
                off += (size_t)d[i].n;
            }
        }
        free(lp);
        i0 = i1;
    }
    for (int i = 0; i < n; i++)
        free(tok[i]), free(tgt[i]), free(adv[i]), free(q[i]);
    free(tok), free(tgt), free(adv), free(q), free(d), free(A);
    if (rc) return -1;
    eng_adam_params ap;
    eng_adam_params_default(&ap);
    ap.learning_rate = (float)r->c.lr;
    ap.beta1 = 0.9f, ap.beta2 = 0.95f, ap.eps = 1e-8f, ap.weight_decay = 0;
    if (eng_optim_step(r->learner, &ap, err)) return -1;
    r->version++;
    st->sampled_tokens = ns;
    st->entropy = ns ? ent / (double)ns : 0;
    st->kl = ns ? kl / (double)ns : 0;
    st->loss = ns ? loss / (double)ns : 0;
    return 0;
}

/* ---- events ---- */

static int send(const rl_run *r, json_t *ev, lt_err *err) {
    int rc = 0;
    if (r->h && r->h->event) rc = r->h->event(r->h->ud, ev, err);
    json_decref(ev);
    if (rc && err && !err->code) lt_err_set(err, 500, "the progress hook failed");
    return rc ? -1 : 0;
}

static void put1(json_t *m, const char *k, double v) {
    json_t *a = json_array();
    json_array_append_new(a, json_real(v));
    json_object_set_new(m, k, a);
}

static void put1i(json_t *m, const char *k, long v) {
    json_t *a = json_array();
    json_array_append_new(a, json_integer(v));
    json_object_set_new(m, k, a);
}

static int run_eval(rl_run *r, long step, lt_err *err) {
    if (!r->evals.n) return 0;
    size_t ne = r->evals.n < (size_t)r->c.eval_max ? r->evals.n : (size_t)r->c.eval_max;
    size_t *idx = lt_xmalloc(ne * sizeof *idx);
    for (size_t i = 0; i < ne; i++)
        idx[i] = i;
    rl_batch *b = NULL;
    int rc =
        sample_items(r, r->learner, &r->evals, idx, (int)ne, 1, r->c.temp, step, 0xe7a1ULL, NULL, &b, err);
    free(idx);
    if (rc) return -1;
    rw_stats s;
    rw_stats_init(&s);
    for (int i = 0; i < b->n; i++)
        rw_stats_add(&s, r->rw, r->evals.v[b->r[i].item].item, &b->r[i].res);
    batch_free(b);
    double mean = s.sum / (s.n ? s.n : 1);
    r->eval_last = mean;
    r->have_eval = 1;
    json_t *m = json_object();
    put1i(m, "eval/steps", step);
    put1(m, "eval/reward", mean);
    put1(m, "eval/reward_max", s.max);
    put1(m, "eval/reward_min", s.min);
    put1(m, "eval/extraction_failed_rate", s.extraction_failed / (double)(s.n ? s.n : 1));
    put1(m, "eval/passed", s.passed / (double)(s.n ? s.n : 1));
    json_object_set_new(m, "eval/num_rollouts", json_integer(s.n));
    char msg[160];
    snprintf(msg, sizeof msg, "eval at step %ld: reward %.4f over %d rollouts", step, mean, s.n);
    json_t *ev = json_pack("{s:s, s:s, s:s, s:o}", "event_type", "eval_complete", "message", msg, "level",
                           "info", "metrics", m);
    if (!ev) abort();
    return send(r, ev, err);
}

/* ---- checkpoints ---- */

static char *extra_json(const rl_run *r, long step) {
    json_t *x =
        json_pack("{s:s, s:I, s:i, s:I, s:f, s:I, s:I, s:I, s:I, s:f, s:I, s:I}", "trainer", "rl", "step",
                  (json_int_t)step, "checkpoints", r->nckpt, "cursor",
                  (json_int_t)((unsigned long long)step * (unsigned long long)r->c.batch % r->items.n),
                  "reward_sum", r->rsum, "reward_count", (json_int_t)r->rcount, "model_version",
                  (json_int_t)r->version, "sampler_version", (json_int_t)r->sampler_version,
                  "weight_sync_count", (json_int_t)r->sync_count, "reward_steps_sum", r->reward_steps_sum,
                  "reward_steps", (json_int_t)r->reward_steps, "seed", (json_int_t)r->in->seed);
    if (!x) abort();
    json_object_set_new(x, "reward_last", json_real(r->reward_last));
    json_object_set_new(x, "eval_reward", r->have_eval ? json_real(r->eval_last) : json_null());
    json_object_set_new(x, "tokens_total", json_integer(r->tokens_total));
    char *s = json_dumps(x, JSON_COMPACT);
    json_decref(x);
    if (!s) abort();
    return s;
}

static int write_ckpt(rl_run *r, const char *name, long step, lt_err *err) {
    char *dir = lt_path_join(r->in->work_dir, name), *extra = extra_json(r, step);
    lt_rm_rf(dir);
    int rc = tr_write_checkpoint(r->learner, dir, r->in->model_id, extra, err);
    if (!rc && r->sampler && r->sampler_version != r->version) {
        /* the sampler lags the learner (weight_sync_interval > 1): keep its weights for an exact resume */
        char *sp = lt_path_join(dir, "sampler_state.safetensors");
        rc = eng_save_state(r->sampler, sp, 0, NULL, err);
        free(sp);
    }
    if (!rc) rc = tr_publish_checkpoint(r->h, name, step, dir, err);
    free(dir), free(extra);
    return rc ? -1 : 0;
}

static int numbered_ckpt(rl_run *r, long step, lt_err *err) {
    char name[96];
    r->nckpt++;
    tr_checkpoint_name(name, sizeof name, r->nckpt, step);
    return write_ckpt(r, name, step, err);
}

static int resume(rl_run *r, long *start, lt_err *err) {
    json_t *x = tr_read_checkpoint(r->learner, r->in->resume_dir, "rl", start, &r->nckpt, err);
    if (!x) return -1;
    r->rsum = json_number_value(json_object_get(x, "reward_sum"));
    r->rcount = (long)json_integer_value(json_object_get(x, "reward_count"));
    r->version = (long)json_integer_value(json_object_get(x, "model_version"));
    r->sampler_version = (long)json_integer_value(json_object_get(x, "sampler_version"));
    r->sync_count = (long)json_integer_value(json_object_get(x, "weight_sync_count"));
    r->reward_steps_sum = json_number_value(json_object_get(x, "reward_steps_sum"));
    r->reward_steps = (long)json_integer_value(json_object_get(x, "reward_steps"));
    r->reward_last = json_number_value(json_object_get(x, "reward_last"));
    r->tokens_total = (long)json_integer_value(json_object_get(x, "tokens_total"));
    json_t *ev = json_object_get(x, "eval_reward");
    if (json_is_number(ev)) r->eval_last = json_number_value(ev), r->have_eval = 1;
    json_decref(x);
    return 0;
}

/* ---- engines ---- */

/* A sampler engine holding a copy of the learner's adapter. */
static eng_engine *new_sampler(rl_run *r, lt_err *err) {
    eng_engine *s = eng_share(r->in->base, &r->learner->m->lora, err);
    if (!s) return NULL;
    eng_model_set_compute(s->m, r->learner->m->compute);
    if (s->m->n_lora != r->learner->m->n_lora) {
        eng_close(s);
        lt_err_set(err, 500, "sampler adapter size mismatch");
        return NULL;
    }
    memcpy(s->m->lora_p, r->learner->m->lora_p, r->learner->m->n_lora * sizeof(float));
    return s;
}

/* ---- async sampler thread ---- */

static void *sampler_main(void *arg) {
    rl_run *r = arg;
    rl_async *a = r->as;
    omp_set_num_threads(1);
    pthread_mutex_lock(&a->mu);
    for (;;) {
        while (!a->quit && a->qn >= a->cap && a->nredo == 0)
            pthread_cond_wait(&a->cv, &a->mu);
        if (a->quit) break;
        long index = a->nredo ? a->redo[--a->nredo] : a->next_index++;
        if (a->pub_version != a->eng_version) {
            memcpy(a->eng->m->lora_p, a->pub, a->eng->m->n_lora * sizeof(float));
            a->eng_version = a->pub_version;
        }
        long version = a->eng_version;
        a->inflight = 1;
        pthread_mutex_unlock(&a->mu);
        rl_batch *b = NULL;
        lt_err e = {0};
        int rc = gen_batch(r, a->eng, index, &b, &e);
        pthread_mutex_lock(&a->mu);
        a->inflight = 0;
        if (rc) {
            a->failed = 1;
            a->err = e;
            pthread_cond_broadcast(&a->cv);
            break;
        }
        b->version = version;
        a->q[a->qn++] = b;
        pthread_cond_broadcast(&a->cv);
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

static int async_start(rl_run *r, long first_index, lt_err *err) {
    rl_async *a = lt_xcalloc(1, sizeof *a);
    r->as = a;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    a->cap = (int)(r->c.max_off < 32 ? r->c.max_off : 32);
    if (a->cap < 1) a->cap = 1;
    a->q = lt_xcalloc((size_t)a->cap + 2, sizeof *a->q);
    a->pub = lt_xmalloc(r->learner->m->n_lora * sizeof(float));
    memcpy(a->pub, r->learner->m->lora_p, r->learner->m->n_lora * sizeof(float));
    a->pub_version = a->eng_version = r->version;
    a->next_index = first_index;
    a->eng = new_sampler(r, err);
    if (!a->eng) return -1;
    if (pthread_create(&a->th, NULL, sampler_main, r))
        return lt_err_set(err, 500, "cannot start a sampler thread");
    a->started = 1;
    return 0;
}

static void async_stop(rl_run *r) {
    rl_async *a = r->as;
    if (!a) return;
    if (a->started) {
        pthread_mutex_lock(&a->mu);
        a->quit = 1;
        pthread_cond_broadcast(&a->cv);
        pthread_mutex_unlock(&a->mu);
        pthread_join(a->th, NULL);
    }
    for (int i = 0; i < a->qn; i++)
        batch_free(a->q[i]);
    free(a->q);
    free(a->pub);
    eng_close(a->eng);
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->cv);
    free(a);
    r->as = NULL;
}

/* The next batch for step `index` from the sampler thread; drops (and has regenerated) too stale ones.
 * *pending gets the batches still waiting or in flight. */
static int async_take(rl_run *r, long index, rl_batch **out, long *dropped, int *pending, lt_err *err) {
    rl_async *a = r->as;
    pthread_mutex_lock(&a->mu);
    for (;;) {
        int found = -1;
        for (int i = 0; i < a->qn; i++)
            if (a->q[i]->index == index) found = i;
        if (found >= 0) {
            rl_batch *b = a->q[found];
            memmove(a->q + found, a->q + found + 1, (size_t)(a->qn - found - 1) * sizeof *a->q);
            a->qn--;
            pthread_cond_broadcast(&a->cv);
            /* off-policy by more than max_steps_off_policy versions of the published weights (with
             * weight_sync_interval > 1 the sampler lags on purpose: only a batch older than the latest
             * publication by more than the bound is dropped, so a regenerated one always passes) */
            if (a->pub_version - b->version > r->c.max_off) {
                batch_free(b);
                (*dropped)++;
                if (a->nredo < 64) a->redo[a->nredo++] = index;
                continue;
            }
            *pending = a->qn + a->inflight;
            pthread_mutex_unlock(&a->mu);
            *out = b;
            return 0;
        }
        if (a->failed) {
            if (err) *err = a->err;
            pthread_mutex_unlock(&a->mu);
            return -1;
        }
        pthread_cond_wait(&a->cv, &a->mu);
    }
}

static void async_publish(rl_run *r) {
    rl_async *a = r->as;
    pthread_mutex_lock(&a->mu);
    memcpy(a->pub, r->learner->m->lora_p, r->learner->m->n_lora * sizeof(float));
    a->pub_version = r->version;
    pthread_mutex_unlock(&a->mu);
}

/* ---- distributed (GRPO execution_mode distributed; see dist.h) ----
 *
 * Rank 0 learns; ranks 1..W sample. Start: rank 0 broadcasts the LoRA config and weights. Round k: every
 * sampler sends its share of step k's batch (the prompts p of the window with p % W == rank - 1, each with
 * its whole group, seeds as in the other modes) to rank 0 on TAG_BATCH; rank 0 assembles the batch, then
 * broadcasts the control word {quit, send_weights} (and the weights when weight_sync_interval says so); the
 * samplers start step k + 1's share while rank 0 learns on step k (staleness <= 1, one batch in flight, which
 * buffer_size >= batch_size always allows). A sampler that fails sends its error instead of a share; rank 0
 * fails the job after telling everyone to quit. */

enum { TAG_BATCH = 7101 };

typedef struct wbuf {
    char *p;
    size_t n, cap;
} wbuf;

static void wput(wbuf *b, const void *x, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 256;
        b->p = lt_xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, x, n);
    b->n += n;
}

static int rget(const char **p, const char *end, void *x, size_t n) {
    if ((size_t)(end - *p) < n) return -1;
    memcpy(x, *p, n);
    *p += n;
    return 0;
}

/* A share: int64 count (-1: error text follows), doubles sample_s, score_s, then per rollout int32 item, n,
 * passed, extraction_failed, double reward, int32 tokens[n], float logprobs[n]. */
static void share_pack(const rl_batch *b, wbuf *w) {
    int64_t cnt = b->n;
    wput(w, &cnt, 8);
    wput(w, &b->sample_s, 8);
    wput(w, &b->score_s, 8);
    for (int i = 0; i < b->n; i++) {
        const rl_rollout *r = &b->r[i];
        int32_t h[4] = {r->item, r->n, r->res.passed, r->res.extraction_failed};
        wput(w, h, sizeof h);
        wput(w, &r->res.reward, 8);
        wput(w, r->tokens, (size_t)r->n * sizeof(int));
        wput(w, r->logprobs, (size_t)r->n * sizeof(float));
    }
}

static int share_unpack(const char *buf, size_t n, size_t nitems, rl_batch **out, lt_err *err) {
    const char *p = buf, *end = buf + n;
    int64_t cnt;
    rl_batch *b = lt_xcalloc(1, sizeof *b);
    *out = b;
    if (rget(&p, end, &cnt, 8)) return lt_err_set(err, 500, "distributed: a truncated rollout message");
    if (cnt < 0) return lt_err_set(err, 500, "a rollout worker failed: %.*s", (int)(end - p), p);
    if (rget(&p, end, &b->sample_s, 8) || rget(&p, end, &b->score_s, 8) || cnt > (1 << 26))
        return lt_err_set(err, 500, "distributed: a truncated rollout message");
    b->r = lt_xcalloc((size_t)cnt + 1, sizeof *b->r);
    for (int64_t i = 0; i < cnt; i++) {
        rl_rollout *r = &b->r[b->n];
        int32_t h[4];
        if (rget(&p, end, h, sizeof h) || rget(&p, end, &r->res.reward, 8) || h[1] < 0 || h[0] < 0 ||
            (size_t)h[0] >= nitems)
            return lt_err_set(err, 500, "distributed: a malformed rollout message");
        r->item = h[0], r->n = h[1], r->res.passed = h[2], r->res.extraction_failed = h[3];
        r->tokens = lt_xmalloc((size_t)(r->n + 1) * sizeof(int));
        r->logprobs = lt_xmalloc((size_t)(r->n + 1) * sizeof(float));
        b->n++;
        if (rget(&p, end, r->tokens, (size_t)r->n * sizeof(int)) ||
            rget(&p, end, r->logprobs, (size_t)r->n * sizeof(float)))
            return lt_err_set(err, 500, "distributed: a truncated rollout message");
        b->sampled_tokens += r->n;
    }
    return 0;
}

/* Rank 0: the start broadcast. */
static int dist_bcast_adapter(rl_run *r, eng_engine *e, lt_err *err) {
    int64_t hdr[5] = {0};
    if (dist_rank() == 0) {
        const eng_lora_config *lc = &e->m->lora;
        float a = lc->alpha;
        uint32_t ab;
        memcpy(&ab, &a, 4);
        hdr[0] = lc->rank, hdr[1] = ab, hdr[2] = lc->targets, hdr[3] = (int64_t)lc->seed,
        hdr[4] = (int64_t)e->m->n_lora;
    }
    if (dist_bcast(hdr, sizeof hdr, 0)) return lt_err_set(err, 500, "distributed: broadcast failed");
    return 0;
}

/* Round k on rank 0 (see above). force_quit: tell the samplers to stop after this round. */
static int dist_round(rl_run *r, long k, int force_quit, lt_err *err) {
    int W = dist_size() - 1;
    rl_batch **sh = lt_xcalloc((size_t)W, sizeof *sh);
    int rc = 0;
    lt_err e2 = {0};
    for (int w = 0; w < W; w++) {
        void *buf = NULL;
        size_t n = 0;
        if (dist_recv(w + 1, TAG_BATCH, &buf, &n, NULL)) {
            rc = -1;
            if (!e2.code) lt_err_set(&e2, 500, "distributed: receiving from rank %d failed", w + 1);
            continue;
        }
        lt_err e3 = {0};
        if (share_unpack(buf, n, r->items.n, &sh[w], &e3) && !rc) {
            rc = -1;
            e2 = e3;
            lt_err_prefix(&e2, "rank %d: ", w + 1);
        }
        free(buf);
    }
    int quit = force_quit || rc || k + 1 >= r->c.steps;
    int send_w = !quit && (k % r->c.wsync == 0) && r->version != r->sampler_version;
    long gen_version = r->sampler_version;
    int64_t ctrl[2] = {quit, send_w};
    if (dist_bcast(ctrl, sizeof ctrl, 0) ||
        (send_w && dist_bcast(r->learner->m->lora_p, r->learner->m->n_lora * sizeof(float), 0))) {
        rc = -1;
        if (!e2.code) lt_err_set(&e2, 500, "distributed: broadcast failed");
    }
    if (send_w) {
        r->sampler_version = r->version;
        r->sync_count++;
    }
    r->dist = quit ? 1 : 2; /* 2: the samplers are working on step k + 1 */
    if (!rc && !force_quit) {
        /* assemble: prompt p's group comes from rank p % W + 1, in prompt order */
        rl_batch *b = lt_xcalloc(1, sizeof *b);
        b->index = k;
        b->version = gen_version;
        b->r = lt_xcalloc((size_t)r->c.batch * (size_t)r->c.group + 1, sizeof *b->r);
        int *cur = lt_xcalloc((size_t)W, sizeof *cur);
        for (long p = 0; p < r->c.batch && !rc; p++) {
            int w = (int)(p % W);
            for (long g = 0; g < r->c.group; g++) {
                if (cur[w] >= sh[w]->n) {
                    rc = lt_err_set(&e2, 500, "distributed: rank %d sent too few rollouts", w + 1);
                    break;
                }
                b->r[b->n++] = sh[w]->r[cur[w]];
                memset(&sh[w]->r[cur[w]++], 0, sizeof(rl_rollout));
            }
        }
        for (int w = 0; w < W; w++) {
            b->sample_s = sh[w]->sample_s > b->sample_s ? sh[w]->sample_s : b->sample_s;
            b->score_s = sh[w]->score_s > b->score_s ? sh[w]->score_s : b->score_s;
        }
        if (!rc && b->n > 0) { /* for the step's debug log line, as the local samplers do */
            eng_sequence s0 = {.tokens = b->r[0].tokens, .logprobs = b->r[0].logprobs, .n = b->r[0].n};
            b->first_text = completion_text(r, &s0);
        }
        free(cur);
        if (rc)
            batch_free(b);
        else
            r->pending = b;
    }
    for (int w = 0; w < W; w++)
        batch_free(sh[w]);
    free(sh);
    if (rc && err) *err = e2;
    return rc;
}

/* Ranks 1..W: sample shares until rank 0 says quit. */
static int sampler_rank(rl_run *r, long start, lt_err *err) {
    int me = dist_rank(), W = dist_size() - 1;
    int64_t hdr[5];
    if (dist_bcast(hdr, sizeof hdr, 0)) return lt_err_set(err, 500, "distributed: broadcast failed");
    if (hdr[4] < 0) return lt_err_set(err, 500, "distributed: rank 0 failed before training started");
    uint32_t ab = (uint32_t)hdr[1];
    float alpha;
    memcpy(&alpha, &ab, 4);
    eng_lora_config lc = {
        .rank = (int)hdr[0], .alpha = alpha, .targets = (unsigned)hdr[2], .seed = (uint64_t)hdr[3]};
    eng_engine *e = eng_share(r->in->base, &lc, err);
    if (!e) return -1;
    int rc = 0;
    if ((int64_t)e->m->n_lora != hdr[4]) {
        eng_close(e);
        return lt_err_set(err, 500, "distributed: adapter size mismatch on rank %d", me);
    }
    if (dist_bcast(e->m->lora_p, e->m->n_lora * sizeof(float), 0)) {
        eng_close(e);
        return lt_err_set(err, 500, "distributed: broadcast failed");
    }
    if (start >= r->c.steps) { /* resumed after the last step: rank 0 only writes "final" */
        eng_close(e);
        return 0;
    }
    size_t *idx = lt_xmalloc((size_t)r->c.batch * sizeof *idx);
    int *pos = lt_xmalloc((size_t)r->c.batch * sizeof *pos);
    for (long k = start;; k++) {
        int ni = 0;
        for (long p = me - 1; p < r->c.batch; p += W) {
            idx[ni] =
                (size_t)(((unsigned long long)k * (unsigned long long)r->c.batch + (unsigned long long)p) %
                         r->items.n);
            pos[ni++] = (int)p;
        }
        rl_batch *b = NULL;
        lt_err e2 = {0};
        wbuf w = {0};
        if (sample_items(r, e, &r->items, idx, ni, (int)r->c.group, r->c.temp, k, 0, pos, &b, &e2)) {
            int64_t neg = -1;
            wput(&w, &neg, 8);
            wput(&w, e2.msg, strlen(e2.msg));
        } else {
            share_pack(b, &w);
            batch_free(b);
        }
        int src = dist_send(0, TAG_BATCH, w.p, w.n);
        free(w.p);
        int64_t ctrl[2];
        if (src || dist_bcast(ctrl, sizeof ctrl, 0) ||
            (ctrl[1] && dist_bcast(e->m->lora_p, e->m->n_lora * sizeof(float), 0))) {
            rc = lt_err_set(err, 500, "distributed: rank %d lost contact with rank 0", me);
            break;
        }
        if (ctrl[0]) break;
    }
    free(idx), free(pos);
    eng_close(e);
    return rc;
}

/* ---- the loop ---- */

static json_t *final_metrics(const rl_run *r, long steps_done) {
    json_t *m = json_object();
    json_object_set_new(m, "train/steps", json_integer(steps_done));
    json_object_set_new(m, "train/num_examples", json_integer((json_int_t)r->items.n));
    json_object_set_new(m, "train/model_version", json_integer(r->version));
    json_object_set_new(m, "train/weight_sync_count", json_integer(r->sync_count));
    json_object_set_new(m, "train/num_tokens_processed", json_integer(r->tokens_total));
    json_object_set_new(m, "train/reward_last", r->reward_steps ? json_real(r->reward_last) : json_null());
    json_object_set_new(m, "train/reward_mean",
                        r->reward_steps ? json_real(r->reward_steps_sum / (double)r->reward_steps)
                                        : json_null());
    json_object_set_new(m, "reward/recipe", json_string(rw_recipe_name(r->rw)));
    if (r->evals.n)
        json_object_set_new(m, "eval/reward_last", r->have_eval ? json_real(r->eval_last) : json_null());
    return m;
}

static int one_step(rl_run *r, long step, lt_err *err) {
    double t0 = lt_mono_s();
    rl_batch *b = NULL;
    long dropped = 0;
    int pending = 0;
    if (r->pending) {
        b = r->pending;
        r->pending = NULL;
    } else if (r->as) {
        if (async_take(r, step, &b, &dropped, &pending, err)) return -1;
    } else {
        if (gen_batch(r, r->sampler, step, &b, err)) return -1;
        b->version = r->sampler_version;
    }
    double t1 = lt_mono_s();
    long staleness = r->version - b->version;
    step_stats st;
    int rc = learn(r, b, &st, err);
    double t2 = lt_mono_s();
    long gen_version = b->version;
    double sample_s = b->sample_s, score_s = b->score_s;
    double first_reward = b->n ? b->r[0].res.reward : 0;
    char *first_text = b->first_text;
    b->first_text = NULL;
    batch_free(b);
    if (rc) {
        free(first_text);
        return -1;
    }
    rc = tr_log(r->h, "debug", err, "step %ld: first completion %.200s (reward %g)", step + 1,
                first_text ? first_text : "", first_reward);
    free(first_text);
    if (rc) return -1;
    long n = step + 1;
    if (n % r->c.wsync == 0 && !r->dist) {
        if (r->as)
            async_publish(r);
        else
            memcpy(r->sampler->m->lora_p, r->learner->m->lora_p, r->learner->m->n_lora * sizeof(float));
        r->sampler_version = r->version;
        r->sync_count++;
    }
    r->reward_last = st.reward_mean;
    r->reward_steps_sum += st.reward_mean;
    r->reward_steps++;
    long ntok = st.trained_tokens + st.sampled_tokens;
    r->tokens_total += ntok;
    r->t_sample += sample_s, r->t_score += score_s, r->t_train += t2 - t1;
    double dt = lt_mono_s() - t0;
    double tps = dt > 0 ? (double)ntok / dt : 0;
    json_t *m = json_object();
    put1i(m, "steps", n);
    put1(m, "train/reward", st.reward_mean);
    put1(m, "train/reward_max", st.reward_max);
    put1(m, "train/reward_min", st.reward_min);
    put1i(m, "train/model_version", r->version);
    put1i(m, "train/weight_sync_count", r->sync_count);
    put1(m, "train/entropy", st.entropy);
    put1(m, "train/kl_sample_train", st.kl);
    put1(m, "train/loss", st.loss);
    put1i(m, "train/num_sequences", (long)r->c.batch * r->c.group);
    put1i(m, "train/num_tokens", ntok);
    put1(m, "train/tokens_per_s", tps);
    put1(m, "train/sampling_ms", sample_s * 1e3);
    put1(m, "train/scoring_ms", score_s * 1e3);
    put1(m, "train/training_ms", (t2 - t1) * 1e3);
    if (r->c.mode != MODE_SYNC) {
        put1i(m, "train/staleness", staleness);
        put1i(m, "train/generation_step", gen_version);
        put1i(m, "train/pending_generation_groups", pending);
        put1i(m, "train/dropped_groups", dropped);
    }
    rw_stats_metrics(&st.rws, r->rw, m, 1);
    char msg[200];
    snprintf(msg, sizeof msg, "step %ld/%ld reward %.4f (max %.4f, min %.4f)", n, r->c.steps, st.reward_mean,
             st.reward_max, st.reward_min);
    json_t *ev = json_pack("{s:s, s:s, s:s, s:o, s:{s:I, s:I, s:f}}", "event_type", "step_complete",
                           "message", msg, "level", "info", "metrics", m, "data", "step", (json_int_t)n,
                           "total_steps", (json_int_t)r->c.steps, "tokens_per_s", tps);
    if (!ev) abort();
    return send(r, ev, err);
}

static int setup(rl_run *r, lt_err *err) {
    const tr_inputs *in = r->in;
    if (!in->base || !in->tok || !in->work_dir)
        return lt_err_set(err, 500, "the RL trainer needs a base model, a tokenizer and a work dir");
    const json_t *recipe = json_object_get(in->eff, "reward_recipe");
    json_t *dflt = NULL;
    if (!json_is_object(recipe)) {
        int imit = (!in->train || !in->train->n) && in->trajectories && in->trajectories->n;
        dflt = json_pack("{s:s, s:{}}", "name",
                         r->c.grpo ? "exact_match_v1"
                         : imit    ? "trajectory_imitation_v1"
                                   : "row_reward_v1",
                         "params");
        recipe = dflt;
    }
    r->rw = rw_recipe_new(recipe, in->task, err);
    json_decref(dflt);
    if (!r->rw) {
        lt_err_prefix(err, "config.reward_recipe: ");
        return -1;
    }
    const eng_config *cfg = &in->base->m->cfg;
    long ctx = cfg->max_position_embeddings > 0 ? cfg->max_position_embeddings : 2048;
    if (r->c.max_new <= 0) r->c.max_new = ctx - 1 < 128 ? ctx - 1 : 128;
    if (r->c.max_new >= ctx)
        return lt_err_set(err, 422,
                          "config.max_new_tokens (%ld) must be below the model's context length (%ld)",
                          r->c.max_new, ctx);
    r->kind = render_pick(in->tok, cfg->family[0] ? cfg->family : NULL);
    render_stops_for(in->tok, r->kind, &r->stops);
    const json_t *stop = json_object_get(in->eff, "stop");
    size_t ns = (size_t)r->stops.n_stop_strings + json_array_size(stop);
    r->stop_strings = lt_xcalloc(ns + 1, sizeof *r->stop_strings);
    for (int k = 0; k < r->stops.n_stop_strings; k++)
        r->stop_strings[r->n_stop_strings++] = r->stops.stop_strings[k];
    for (size_t k = 0; k < json_array_size(stop); k++) {
        const char *s = json_string_value(json_array_get(stop, k));
        if (s && s[0]) r->stop_strings[r->n_stop_strings++] = s;
    }
    int max_prompt = (int)(ctx - r->c.max_new);
    const char *dsname = in->dataset_name && in->dataset_name[0] ? in->dataset_name : "";
    char what[600];
    snprintf(what, sizeof what, "%s%s", dsname[0] ? "dataset " : "prompt dataset", dsname);
    if (add_items(r, in->train, what, &r->items, max_prompt, 1, err) ||
        add_items(r, in->trajectories, "trajectory dataset", &r->items, max_prompt, 1, err) ||
        add_items(r, in->eval, "eval dataset", &r->evals, max_prompt, 1, err))
        return -1;
    if (r->items.n == 0)
        return lt_err_set(
            err, 422, "no RL prompts: the job needs prompt_dataset_ref or trajectory_dataset_refs with rows");
    return 0;
}

static int run_local(rl_run *r, json_t **final_out, lt_err *err) {
    const tr_inputs *in = r->in;
    const tr_hooks *h = r->h;
    int result = TR_FAILED;
    if (!(r->learner = tr_open_engine(r->in, r->h, (int)r->c.rank, r->c.alpha, err))) return TR_FAILED;
    snprintf(r->learner->base_model, sizeof r->learner->base_model, "%s", in->model_id ? in->model_id : "");
    long start = 0;
    if (in->resume_dir && resume(r, &start, err)) return TR_FAILED;
    if (r->c.mode == MODE_SYNC) { /* the other modes sample on their own engines */
        r->sampler = new_sampler(r, err);
        if (!r->sampler) return TR_FAILED;
    }
    if (!in->resume_dir || !r->sampler) r->sampler_version = r->version;
    if (in->resume_dir && r->sampler) {
        char *sp = lt_path_join(in->resume_dir, "sampler_state.safetensors");
        FILE *f = fopen(sp, "rb");
        if (f) {
            fclose(f);
            if (eng_load_state(r->sampler, sp, 0, NULL, err)) {
                free(sp);
                return TR_FAILED;
            }
        } else {
            r->sampler_version = r->version;
        }
        free(sp);
    }
    if (tr_log(
            h, "info", err,
            "RL (%s, %s loss, %s): %zu prompts (%zu truncated on the left), %ld steps of %ld prompts x %ld "
            "samples, recipe %s, renderer %s, LoRA r%d, max_new_tokens %ld, temperature %g%s",
            r->c.grpo ? "grpo" : "tinker", r->c.loss, r->c.mode_name, r->items.n, r->items.truncated,
            r->c.steps, r->c.batch, r->c.group, rw_recipe_name(r->rw), render_kind_name(r->kind),
            r->learner->m->lora.rank, r->c.max_new, r->c.temp, in->eval ? "" : ", no eval dataset"))
        return TR_FAILED;
    if (r->dist && r->c.buffer_size < r->c.batch &&
        tr_log(h, "warning", err,
               "buffer_size %ld is below batch_size %ld: the rollout workers keep one step (%ld groups) in "
               "flight, which is the least distributed GRPO needs",
               r->c.buffer_size, r->c.batch, r->c.batch))
        return TR_FAILED;
    if (in->resume_dir && tr_log(h, "info", err, "continuing after step %ld of %ld (checkpoint %d)", start,
                                 r->c.steps, r->nckpt))
        return TR_FAILED;
    int threads = in->threads > 0 ? in->threads : omp_get_max_threads();
    long step = start;
    int async = r->c.mode == MODE_ONE_OFF || r->c.mode == MODE_FULLY;
    if (async) {
        eng_set_threads(threads > 1 ? threads - 1 : 1);
        if (async_start(r, start, err)) goto done;
    }
    if (r->dist) {
        r->sampler_version = r->version; /* the start broadcast */
        r->dist_started = 1;
        if (dist_bcast_adapter(r, r->learner, err) ||
            dist_bcast(r->learner->m->lora_p, r->learner->m->n_lora * sizeof(float), 0)) {
            r->dist = 1;
            if (err && !err->code) lt_err_set(err, 500, "distributed: broadcast failed");
            goto done;
        }
        r->dist = start < r->c.steps ? 2 : 1;
    }
    long last_ckpt = in->resume_dir ? start : -1, last_eval = -1;
    for (step = start; step < r->c.steps; step++) {
        if (r->dist && dist_round(r, step, 0, err)) goto done;
        if (one_step(r, step, err)) goto done;
        long n = step + 1;
        if (r->evals.n && (n % r->c.eval_interval == 0 || n == r->c.steps)) {
            if (run_eval(r, n, err)) goto done;
            last_eval = n;
        }
        if (n % r->c.ckpt_interval == 0 || n == r->c.steps) {
            if (numbered_ckpt(r, n, err)) goto done;
            last_ckpt = n;
        }
        if (n < r->c.steps && h && h->stop && h->stop(h->ud)) {
            if (r->dist == 2 && dist_round(r, n, 1, err)) goto done;
            if (last_ckpt != n && numbered_ckpt(r, n, err)) goto done;
            if (tr_log(h, "info", err, "stopped after step %ld of %ld", n, r->c.steps)) goto done;
            if (final_out) *final_out = final_metrics(r, n);
            result = TR_STOPPED;
            goto done;
        }
    }
    if (start >= r->c.steps && r->evals.n && last_eval < 0 && run_eval(r, r->c.steps, err)) goto done;
    if (write_ckpt(r, "final", r->c.steps, err)) goto done;
    if (tr_log(h, "info", err,
               "time split over %ld steps: sampling %.0f ms, scoring %.0f ms, training %.0f ms",
               r->c.steps - start, r->t_sample * 1e3, r->t_score * 1e3, r->t_train * 1e3))
        goto done;
    if (final_out) *final_out = final_metrics(r, r->c.steps);
    result = TR_DONE;
done:
    if (r->dist == 2) {
        lt_err e2 = {0}; /* a failure while the samplers work: let them finish the round and quit */
        dist_round(r, step + 1, 1, &e2);
    }
    async_stop(r);
    if (async) eng_set_threads(threads);
    return result;
}

static void run_free(rl_run *r) {
    items_free(&r->items);
    items_free(&r->evals);
    rw_recipe_free(r->rw);
    free(r->stop_strings);
    eng_close(r->sampler);
    eng_close(r->learner);
}

int tr_rl_run(const tr_inputs *in, const tr_hooks *h, json_t **final_metrics_out, lt_err *err) {
    if (final_metrics_out) *final_metrics_out = NULL;
    rl_run r = {.in = in, .h = h};
    if (parse_cfg(in, &r.c, err)) return TR_FAILED;
    if (r.c.mode == MODE_DIST) return tr_rl_dist_run(in, h, (int)(1 + r.c.workers), final_metrics_out, err);
    int result = TR_FAILED;
    if (setup(&r, err)) goto done;
    result = run_local(&r, final_metrics_out, err);
done:
    if (result == TR_FAILED && err && !err->code) lt_err_set(err, 500, "RL training failed");
    run_free(&r);
    return result;
}

int tr_rl_rank_main(const tr_inputs *in, const tr_hooks *h, json_t **final_metrics_out, lt_err *err) {
    if (final_metrics_out) *final_metrics_out = NULL;
    rl_run r = {.in = in, .h = h};
    int result = TR_FAILED;
    if (parse_cfg(in, &r.c, err)) return TR_FAILED;
    if (setup(&r, err)) goto done;
    if (dist_size() < 2) {
        r.c.mode = MODE_SYNC; /* a single rank: colocated */
        result = run_local(&r, final_metrics_out, err);
    } else if (dist_rank() == 0) {
        r.dist = 1;
        result = run_local(&r, final_metrics_out, err);
        if (!r.dist_started) {
            int64_t hdr[5] = {0, 0, 0, 0, -1}; /* failed before the start broadcast: release the samplers */
            dist_bcast(hdr, sizeof hdr, 0);
        }
    } else {
        long start = 0;
        if (in->resume_dir) {
            /* the step to continue after, from the checkpoint's extra JSON */
            eng_engine *tmp = eng_share(in->base, NULL, err);
            char *path = lt_path_join(in->resume_dir, "training_state.safetensors"), *extra = NULL;
            int rc = tmp ? eng_load_state(tmp, path, 0, &extra, err) : -1;
            free(path);
            eng_close(tmp);
            json_t *x = extra ? json_loads(extra, 0, NULL) : NULL;
            free(extra);
            start = (long)json_integer_value(json_object_get(x, "step"));
            json_decref(x);
            if (rc) goto done;
        }
        result = sampler_rank(&r, start, err) ? TR_FAILED : TR_DONE;
    }
done:
    if (result == TR_FAILED && err && !err->code) lt_err_set(err, 500, "RL training failed");
    run_free(&r);
    return result;
}
