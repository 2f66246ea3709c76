/* trainer.h: the contract between a worker (src/worker/) and the trainers: SFT (sft.c), Tinker RL and Ray
 * GRPO (rl.c). The local CLI trainer (`lathe train sft --data --out`) uses the same entry points with hooks
 * that print and write directories.
 *
 * The worker resolves everything a job names (SPEC §4.6): capability prompt, dataset rows, task, base model,
 * an adapter to start from, a checkpoint to resume from. It hands the trainer a tr_inputs and a tr_hooks; the
 * trainer builds examples (SPEC §5), trains, and reports through the hooks:
 *
 *   event        every SPEC §4.1 progress event except training_start / training_end (the worker sends
 * those): step_complete {metrics: {steps:[n], train/<m>:[x]...}, data: {step, total_steps, tokens_per_s}},
 * eval_complete {metrics: {eval/steps:[n], eval/<m>:[x]}}, and log lines as events with event_type NULL (the
 * worker turns those into log entries only). checkpoint   called after the trainer wrote a checkpoint
 * directory (see "checkpoints" below); the worker packs it into a blob, records it and sends checkpoint_saved
 * with the artifacts. stop         polled at least once per optimizer step: non-zero when a cancel was
 * requested or the worker is shutting down. The trainer then writes a checkpoint of the current step (unless
 * it just wrote one) and returns TR_STOPPED.
 *
 * Checkpoints. A checkpoint directory holds adapter_config.json + adapter_model.safetensors (PEFT export,
 * base_model_name_or_path = in->model_id) and training_state.safetensors (eng_save_state with the optimizer;
 * extra JSON carries the trainer's cursor: {"trainer": "sft"|"rl", "step": N, "checkpoints": K, ...}). Names:
 * "checkpoint-<k>-step<N>" (k counts from 1, every checkpoint_interval steps, on stop, and after the last
 * step) and "final" after the last step (same contents as the last numbered one).
 *
 * Resume. When in->resume_dir is set, the trainer loads training_state.safetensors from it and continues
 * after its step with the same data order, RNG and learning-rate schedule: a run killed after checkpoint K
 * and resumed ends with the same adapter, bit for bit, as an uninterrupted run with the same thread count.
 * Metrics of steps after the checkpoint were already trimmed from the job by the worker.
 *
 * Ownership: inputs and hooks are borrowed for the call. *final_metrics (scalars of SPEC §4.6, e.g.
 * train/loss_last) is a new reference for the caller. */
#ifndef LATHE_TRAIN_TRAINER_H
#define LATHE_TRAIN_TRAINER_H

#include <jansson.h>

#include "engine/engine.h"
#include "engine/tokenizer.h"
#include "util/rows.h"
#include "util/err.h"

typedef struct tr_inputs {
    const json_t *job;             /* the job object (SPEC §4.2): id, backend, trainer_type, algorithm... */
    const json_t *eff;             /* the job's effective_config: every knob, defaults filled */
    eng_engine *base;              /* base model opened without an adapter; trainers eng_share() it */
    const eng_tokenizer *tok;      /* the base model's tokenizer */
    const char *model_id;          /* catalog id of the base model (PEFT base_model_name_or_path) */
    const char *init_adapter;      /* NULL, or a PEFT dir to start from (model: jobs/<id>[/checkpoints/N]) */
    const char *capability_prompt; /* "" when the capability has none */
    /* Rows. SFT: train = dataset_ref rows + trajectory_dataset_refs rows (merged), eval = eval dataset.
     * RL: train = prompt rows (prompt_split applied), trajectories = trajectory dataset rows, eval = eval
     * dataset. Absent: NULL. Errors about a row name rows->splits/files/lines of that row. */
    const rows_set *train;
    const rows_set *trajectories;
    const rows_set *eval;
    const char *dataset_name; /* "name@version" of train's dataset, for messages ("" when merged/none) */
    const json_t *task;       /* the task's normalized manifest (instruction, verification...), or NULL */
    const char *work_dir;     /* private scratch dir of this attempt; checkpoint dirs go under it */
    const char *resume_dir;   /* NULL, or an unpacked checkpoint dir to resume from */
    int threads;              /* engine threads (already applied with eng_set_threads) */
    uint64_t seed;            /* data order / LoRA init / sampling seed (0 by default) */
    const char *model_dir; /* the base model's directory (what `base` was opened from); dist_run needs it */
} tr_inputs;

typedef struct tr_hooks {
    void *ud;
    /* A progress event (SPEC §4.1 body) or, with event_type absent, a log line {message, level, data}.
     * Returns 0, or -1 with err: the trainer stops and returns TR_FAILED with that err (e.g. a lost lease).
     */
    int (*event)(void *ud, const json_t *event, lt_err *err);
    /* The checkpoint directory dir was written for step; publish it under name. 0 or -1 with err. */
    int (*checkpoint)(void *ud, const char *name, long step, const char *dir, lt_err *err);
    /* Non-zero: stop after the current step (cancel or shutdown). */
    int (*stop)(void *ud);
} tr_hooks;

enum { TR_FAILED = -1, TR_DONE = 0, TR_STOPPED = 1 };

/* Tinker SFT (SPEC §4.4, §4.6). Returns TR_DONE, TR_STOPPED, or TR_FAILED with err (422 for bad data: the
 * message names split, file, line and the accepted shapes; 500 otherwise). */
int tr_sft_run(const tr_inputs *in, const tr_hooks *h, json_t **final_metrics, lt_err *err);

/* Tinker RL (importance_sampling, ppo) and Ray GRPO (SPEC §4.4-§4.6), chosen by in->job's backend. */
int tr_rl_run(const tr_inputs *in, const tr_hooks *h, json_t **final_metrics, lt_err *err);

/* Helpers shared by the trainers (trainer.c). */

/* Writes a checkpoint directory dir for engine e: PEFT export + training_state.safetensors with extra. */
int tr_write_checkpoint(eng_engine *e, const char *dir, const char *model_id, const char *extra_json,
                        lt_err *err);
/* The training engine on in->base: for a resume (the state file then brings the adapter), from
 * in->init_adapter (its own rank and alpha; a log line says so), or a fresh LoRA adapter of rank/alpha seeded
 * by in->seed; its GEMMs run at effective_config.compute (tr_knob_compute). NULL with err. */
eng_engine *tr_open_engine(const tr_inputs *in, const tr_hooks *h, int rank, double alpha, lt_err *err);
/* effective_config.compute: "f32" (also when absent or null) or "bf16" -> ENG_COMPUTE_*; 422 otherwise. */
int tr_knob_compute(const json_t *eff, int *out, lt_err *err);
/* A knob of the effective config: dflt when absent or null, else it must be an integer in lo..hi (a whole
 * real is accepted) / a number in [lo, hi] or, with lo_open, (lo, hi]. 0, or -1 with err 422 naming it. */
int tr_knob_l(const json_t *eff, const char *key, long dflt, long lo, long hi, long *out, lt_err *err);
int tr_knob_d(const json_t *eff, const char *key, double dflt, double lo, int lo_open, double hi, double *out,
              lt_err *err);
/* "split S, file F line N" (or "file F line N") of row i of rs, for error messages. */
void tr_row_where(const rows_set *rs, size_t i, char *buf, size_t n);
/* Hands the checkpoint directory dir to h->checkpoint (nothing without a hook). 0, or -1 with err. */
int tr_publish_checkpoint(const tr_hooks *h, const char *name, long step, const char *dir, lt_err *err);
/* The other half of tr_write_checkpoint: loads dir/training_state.safetensors (with the optimizer) into e and
 * returns its extra JSON object, after checking it was written by `trainer` ("sft" | "rl"); *step and *nckpt
 * receive its step and checkpoint count. NULL with err (naming dir) otherwise. */
json_t *tr_read_checkpoint(eng_engine *e, const char *dir, const char *trainer, long *step, int *nckpt,
                           lt_err *err);
/* "checkpoint-<k>-step<N>" into buf. */
void tr_checkpoint_name(char *buf, size_t n, int k, long step);
/* Sends a log line through h->event (level "debug"|"info"|"warning"|"error"). Returns the hook's result. */
int tr_log(const tr_hooks *h, const char *level, lt_err *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
