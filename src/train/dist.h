/* dist.h: distributed execution of Ray GRPO jobs (`execution_mode: distributed`) under OpenMPI.
 *
 * Processes. The worker calls tr_rl_run, which (for a distributed job) calls dist_run. dist_run writes what
 * the ranks need into <work_dir>/dist/ and runs
 *
 *     mpirun -np N [--hostfile F] [--allow-run-as-root] --oversubscribe --bind-to none [LATHE_MPI_ARGS]
 *            <lathe> rl-rank <work_dir>/dist
 *
 * with N = 1 + num_rollout_workers. Every rank (`lathe rl-rank DIR`, src/cli/cmd_rl_rank.c) calls
 * MPI_Init_thread, loads the inputs back (tr_inputs with rows, the base engine, the tokenizer), and calls
 * tr_rl_rank_main (rl.c). Rank 0 learns; ranks 1..N-1 sample. Rank 0's hooks are relayed to the parent:
 *
 *   event        a JSON line on rank 0's stdout (mpirun forwards it to the parent's pipe), which the parent
 *                passes to h->event. Asynchronous: when the parent's hook fails, the parent writes
 *                DIR/fail (the error) and rank 0's next event/checkpoint hook returns -1 with that error.
 *   checkpoint   a JSON line too, but synchronous: rank 0 waits for DIR/ack-<k> (the parent's hook result),
 *                so a checkpoint directory is published before the trainer goes on.
 *   stop         every rank: 1 once DIR/stop exists (the parent writes it when h->stop() turns 1), DIR/fail
 *                exists, or the parent process is gone (checked on the parent's host).
 * On other ranks event and checkpoint are no-ops that return 0. Every rank's stdout and stderr go to
 * DIR/rank-<r>.log (when a rank crashes, dist_run's error quotes its tail). Every rank writes its outcome to
 * DIR/rank-<r>.json ({"rank", "status": TR_*, "final_metrics" (rank 0), "error": {code, message}}); a failed
 * rank then calls MPI_Abort so that no other rank waits for it forever. The parent's result is rank 0's.
 *
 * Requirements when ranks run on other machines (see docs/distributed.md): the same lathe binary path, and
 * DIR, the base model directory, init_adapter and resume_dir at the same paths on every host (a shared file
 * system), passwordless ssh between the hosts (OpenMPI's launcher).
 *
 * Environment read by dist_run:
 *   LATHE_MPIRUN         mpirun to run (default: `mpirun` on PATH)
 *   LATHE_MPI_HOSTFILE   an OpenMPI hostfile (`--hostfile`); default: every rank on this machine
 *   LATHE_MPI_ARGS       extra mpirun arguments, split on spaces (e.g. "--mca btl self,tcp")
 *   LATHE_RANK_EXE       the program the ranks run (default: /proc/self/exe, i.e. this lathe binary)
 *   LATHE_RANK_THREADS   engine threads per rank (default 1)
 *   LATHE_DIST_STOP_GRACE_S  seconds the ranks get to stop after DIR/stop before mpirun is terminated (600)
 *
 * Transport. Collective and point-to-point calls over MPI_COMM_WORLD, valid between MPI_Init and MPI_Finalize
 * in a rank process (the thread that called MPI_Init_thread makes every call: MPI_THREAD_FUNNELED). They
 * return 0, or -1 and a message on stderr (MPI errors abort the job by default anyway). Sizes are unlimited:
 * buffers over 1 GiB go in chunks. Tags are 0..DIST_TAG_MAX; ordering between one sender and one receiver on
 * one tag is preserved. */
#ifndef LATHE_TRAIN_DIST_H
#define LATHE_TRAIN_DIST_H

#include <jansson.h>
#include <stddef.h>

#include "train/trainer.h"
#include "util/err.h"

#define DIST_TAG_MAX 30000

/* Parent side: runs the job on nranks ranks (see above) and blocks until mpirun exits. Returns what rank 0's
 * tr_rl_rank_main returned: TR_DONE, TR_STOPPED, or TR_FAILED with err (mpirun missing: "install openmpi-bin
 * (scripts/setup.sh)"; a rank crashed or exited early: which one and the tail of its log). *final_metrics is
 * a new reference (may be set to NULL when rank 0 reported none). */
int dist_run(const tr_inputs *in, const tr_hooks *h, int nranks, json_t **final_metrics, lt_err *err);

/* The same launcher with `lathe rl-rank --check`'s transport exchange instead of training (dist_selftest
 * below on every rank). Used by `lathe rl-rank --check` to test an MPI setup (a hostfile) and by the tests.
 */
int dist_check(const char *work_dir, const tr_hooks *h, int nranks, json_t **final_metrics, lt_err *err);

/* dist_check with options merged into the ranks' job.json: {"chunk": bytes (transport chunk size, to test
 * chunking with small buffers), "crash_rank": r (that rank aborts after the bcast, to test crash reports),
 * "ignore_stop": true (rank 0 never honours the stop request, to test LATHE_DIST_STOP_GRACE_S)}.
 */
int dist_check_opts(const char *work_dir, const tr_hooks *h, int nranks, const json_t *opts,
                    json_t **final_metrics, lt_err *err);

/* `lathe rl-rank DIR`: MPI_Init_thread, this rank's log, the job in DIR/job.json (mode "rl": the inputs
 * loaded back and tr_rl_rank_main; mode "check": dist_selftest), DIR/rank-<r>.json, MPI_Finalize (MPI_Abort
 * after a failure, so that no rank waits forever). Returns the process exit code. */
int dist_rank_entry(const char *dir, int *argc, char ***argv);

/* The rows files in DIR: a rows_set as JSON {rows, lines, file, files, splits} and back (out is overwritten;
 * free it with rows_set_free). path names the file in errors. */
json_t *dist_rows_to_json(const rows_set *s);
int dist_rows_from_json(const json_t *o, rows_set *out, const char *path, lt_err *err);

/* Rank side, implemented by rl.c: the GRPO job on this rank. in/h as for tr_rl_run (h relays to the parent on
 * rank 0). Called on every rank between MPI_Init and MPI_Finalize. Returns TR_DONE, TR_STOPPED or TR_FAILED.
 */
int tr_rl_rank_main(const tr_inputs *in, const tr_hooks *h, json_t **final_metrics, lt_err *err);

/* Rank side: the transport self-test (`rl-rank --check`): a bcast of a float buffer from rank 0, an
 * allreduce, sends from every rank > 0 to rank 0 received with dist_probe + dist_recv from any source, three
 * step events and a checkpoint through h (rank 0), then, when job.wait_stop is true, h->stop polled on rank 0
 * and its answer broadcast until it turns 1. Returns TR_DONE, TR_STOPPED, or TR_FAILED with err. */
int dist_selftest(const json_t *job, const tr_hooks *h, json_t **final_metrics, lt_err *err);

/* ---- transport (rank processes only) ---- */

int dist_rank(void); /* 0 outside MPI */
int dist_size(void); /* 1 outside MPI */
/* Collective: every rank calls it with the same n; root's buf is copied into everyone's. */
int dist_bcast(void *buf, size_t n, int root);
/* Blocking standard send (may wait until the receiver takes a large message). */
int dist_send(int to, int tag, const void *buf, size_t n);
/* Blocking receive of the next message on tag from `from` (-1: any rank). *buf is malloc'd (free it; NULL
 * when n is 0), *n its size, *from_out (may be NULL) the sender. */
int dist_recv(int from, int tag, void **buf, size_t *n, int *from_out);
/* Non-blocking: 1 when a message on tag waits (*from, may be NULL, gets the sender), 0 when none, -1. */
int dist_probe(int tag, int *from);
/* Collective: element-wise sum of every rank's buf[0..n) into every rank's buf (in place; float32). */
int dist_allreduce_sum(float *buf, size_t n);
/* Collective barrier. */
int dist_barrier(void);
/* The largest single MPI message (default 1 GiB; 0 restores it). Every rank must use the same value. */
void dist_set_chunk(size_t n);

#endif
