/* dist_check.h: the transport self-check of dist.h (`lathe rl-rank --check`): the launcher runs ranks in mode
 * "check", which exercise every transport call and relay hook the way a GRPO job uses them, so that an MPI
 * setup (a hostfile, a network) can be tested without a model. Used by `lathe rl-rank --check` and the tests.
 */
#ifndef LATHE_TRAIN_DIST_CHECK_H
#define LATHE_TRAIN_DIST_CHECK_H

#include <jansson.h>

#include "train/trainer.h"
#include "util/err.h"

/* Parent side: dist_launch on a fresh work_dir/dist with a job of mode "check" (dist_selftest on every rank).
 * Same result contract as dist_launch. */
int dist_check(const char *work_dir, const tr_hooks *h, int nranks, json_t **final_metrics, lt_err *err);

/* dist_check with options merged into the ranks' job.json: {"chunk": bytes (transport chunk size, to test
 * chunking with small buffers), "crash_rank": r (that rank aborts after the bcast, to test crash reports),
 * "ignore_stop": true (rank 0 never honours the stop request, to test LATHE_DIST_STOP_GRACE_S)}.
 */
int dist_check_opts(const char *work_dir, const tr_hooks *h, int nranks, const json_t *opts,
                    json_t **final_metrics, lt_err *err);

/* Rank side, mode "check" (a dist_rank_mode run function; dir unused): a bcast of a float buffer from rank 0,
 * an allreduce, sends from every rank > 0 to rank 0 received with dist_probe + dist_recv from any source,
 * three step events and a checkpoint through h (rank 0), then, when job.wait_stop is true, h->stop polled on
 * rank 0 and its answer broadcast until it turns 1. Returns TR_DONE, TR_STOPPED, or TR_FAILED with err. */
int dist_selftest(const char *dir, const json_t *job, const tr_hooks *h, json_t **final_metrics, lt_err *err);

#endif
