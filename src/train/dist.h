/* dist.h: running a job on MPI ranks under OpenMPI (Ray GRPO's `execution_mode: distributed`, rl_dist.c, and
 * the transport self-check, dist_check.h): the launcher, the rank-side entry and the transport. Nothing here
 * knows what the ranks compute.
 *
 * Processes. The caller (tr_rl_dist_run for a GRPO job) writes what the ranks need into <work_dir>/dist/
 * and calls dist_launch, which writes DIR/job.json and runs
 *
 *     mpirun -np N [--hostfile F] [--allow-run-as-root] --oversubscribe --bind-to none [LATHE_MPI_ARGS]
 *            <lathe> rl-rank <work_dir>/dist
 *
 * (for GRPO N = 1 + num_rollout_workers). Every rank (`lathe rl-rank DIR`, src/cli/cmd_rl_rank.c) calls
 * MPI_Init_thread and runs the function job.json's "mode" names in cmd_rl_rank.c's table ("rl": the GRPO
 * job, rl.h's tr_rl_rank_job; "check": dist_check.h's dist_selftest). Rank 0's hooks are relayed to the
 * parent:
 *
 *   event        a JSON line on rank 0's stdout (mpirun forwards it to the parent's pipe), which the parent
 *                passes to h->event. Asynchronous: when the parent's hook fails, the parent writes
 *                DIR/fail (the error) and rank 0's next event/checkpoint hook returns -1 with that error.
 *   checkpoint   a JSON line too, but synchronous: rank 0 waits for DIR/ack-<k> (the parent's hook result),
 *                so a checkpoint directory is published before the trainer goes on.
 *   stop         every rank: 1 once DIR/stop exists (the parent writes it when h->stop() turns 1), DIR/fail
 *                exists, or the parent process is gone (checked on the parent's host).
 * On other ranks event and checkpoint are no-ops that return 0. Every rank's stdout and stderr go to
 * DIR/rank-<r>.log (when a rank crashes, dist_launch's error quotes its tail). Every rank writes its outcome
 * to DIR/rank-<r>.json ({"rank", "status": TR_*, "final_metrics" (rank 0), "error": {code, message}}); a
 * failed rank then calls MPI_Abort so that no other rank waits for it forever. The parent's result is rank
 * 0's.
 *
 * Requirements when ranks run on other machines (see docs/distributed.md): the same lathe binary path, and
 * DIR, the base model directory, init_adapter and resume_dir at the same paths on every host (a shared file
 * system), passwordless ssh between the hosts (OpenMPI's launcher).
 *
 * Environment read by dist_launch:
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

/* Parent side. A fresh DIR for a run: <work_dir>/dist, emptied (malloc'd; NULL with err). */
char *dist_prepare_dir(const char *work_dir, lt_err *err);

/* Runs nranks ranks on DIR (see above): adds parent_pid/parent_host to job (an object with "mode" naming an
 * entry of the ranks' dist_rank_mode table, plus whatever that mode reads), writes DIR/job.json and blocks
 * until mpirun exits. Returns what rank 0's mode function returned: TR_DONE, TR_STOPPED, or TR_FAILED with
 * err (mpirun missing: "install openmpi-bin (scripts/setup.sh)"; a rank crashed or exited early: which one
 * and the tail of its log). *final_metrics is a new reference (NULL when rank 0 reported none). */
int dist_launch(const char *dir, json_t *job, const tr_hooks *h, int nranks, json_t **final_metrics,
                lt_err *err);

/* Files in DIR: JSON written atomically and read back (path names the file in errors), and the absolute form
 * of a path the ranks open (realpath, or a copy of p when it does not exist; NULL in, NULL out). */
int dist_write_json(const char *path, const json_t *j, lt_err *err);
json_t *dist_read_json(const char *path, lt_err *err);
char *dist_abs_path(const char *p);

/* Rank side: what a job.json "mode" runs on every rank, between MPI_Init and MPI_Finalize. dir is DIR, job
 * the parsed job.json, h the hooks relayed to the parent (no-ops on ranks other than 0). Returns TR_DONE,
 * TR_STOPPED or TR_FAILED with err. */
typedef struct dist_rank_mode {
    const char *name;
    int (*run)(const char *dir, const json_t *job, const tr_hooks *h, json_t **final_metrics, lt_err *err);
} dist_rank_mode;

/* `lathe rl-rank DIR`: MPI_Init_thread, this rank's log, the job in DIR/job.json run by the entry of modes
 * (ended by a {NULL, NULL} entry) its "mode" names, DIR/rank-<r>.json, MPI_Finalize (MPI_Abort after a
 * failure, so that no rank waits forever). Returns the process exit code. */
int dist_rank_entry(const char *dir, int *argc, char ***argv, const dist_rank_mode *modes);

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
