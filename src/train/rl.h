/* rl.h: internals of the Tinker RL / Ray GRPO trainer (rl.c) and its distributed job (rl_dist.c), exposed
 * for tests and the distributed rank process (`lathe rl-rank`, src/cli/cmd_rl_rank.c).
 *
 * tr_rl_run (trainer.h) is the entry point a worker calls; for execution_mode distributed it calls
 * tr_rl_dist_run, which runs the job on dist.h's launcher. Each MPI rank runs tr_rl_rank_job (the job.json
 * mode "rl"), which loads the inputs back and calls tr_rl_rank_main: rank 0 learns, the others sample. */
#ifndef LATHE_TRAIN_RL_H
#define LATHE_TRAIN_RL_H

#include <jansson.h>

#include "train/trainer.h"
#include "util/err.h"

/* One rank of execution_mode distributed (Ray GRPO). Same contract as tr_rl_run; hooks are only called on
 * rank 0. */
int tr_rl_rank_main(const tr_inputs *in, const tr_hooks *h, json_t **final_metrics, lt_err *err);

/* Parent side (rl_dist.c): writes the job (mode "rl", the paths made absolute, the rows sets) into a fresh
 * <work_dir>/dist and runs it on nranks ranks with dist_launch. in->model_dir must be set (every rank opens
 * the base model itself). Returns what rank 0's tr_rl_rank_main returned: TR_DONE, TR_STOPPED, or TR_FAILED
 * with err (dist_launch's errors). *final_metrics is a new reference (may be set to NULL). */
int tr_rl_dist_run(const tr_inputs *in, const tr_hooks *h, int nranks, json_t **final_metrics, lt_err *err);

/* Rank side (rl_dist.c), the dist_rank_mode "rl": the inputs in DIR loaded back (tr_inputs with rows, the
 * base engine, the tokenizer, LATHE_RANK_THREADS engine threads) and tr_rl_rank_main run on them. */
int tr_rl_rank_job(const char *dir, const json_t *job, const tr_hooks *h, json_t **final_metrics,
                   lt_err *err);

/* The rows files in DIR: a rows_set as JSON {rows, lines, file, files, splits} and back (out is overwritten;
 * free it with rows_set_free). path names the file in errors. */
json_t *tr_rl_rows_to_json(const rows_set *s);
int tr_rl_rows_from_json(const json_t *o, rows_set *out, const char *path, lt_err *err);

#endif
