/* rl.h: internals of the Tinker RL / Ray GRPO trainer (rl.c), exposed for tests and the distributed rank
 * process (`lathe rl-rank`, src/train/dist.c).
 *
 * tr_rl_run (trainer.h) is the entry point a worker calls. tr_rl_rank_main is what each MPI rank of a
 * distributed GRPO job runs: rank 0 learns, the others sample. */
#ifndef LATHE_TRAIN_RL_H
#define LATHE_TRAIN_RL_H

#include <jansson.h>

#include "train/trainer.h"
#include "util/err.h"

/* One rank of execution_mode distributed (Ray GRPO). Same contract as tr_rl_run; hooks are only called on
 * rank 0. */
int tr_rl_rank_main(const tr_inputs *in, const tr_hooks *h, json_t **final_metrics, lt_err *err);

#endif
