/* cli.h: the lathe subcommands. Each lives in its own src/cli/cmd_*.c and takes (argc, argv) with argv[0]
 * being the subcommand name. Return value is the process exit code:
 *   0 success, 1 failure of the operation (e.g. a job that did not complete), 2 usage error,
 *   3 could not reach the server / authentication failed, 4 not found. */
#ifndef LATHE_CLI_CLI_H
#define LATHE_CLI_CLI_H

#define LATHE_VERSION "0.1.0"

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_CONN = 3, EXIT_NOTFOUND = 4 };

int cmd_serve(int argc, char **argv);       /* api server (+ in-process workers) */
int cmd_worker(int argc, char **argv);      /* standalone worker against a store */
int cmd_admin(int argc, char **argv);       /* local bootstrap/recovery on the store */
int cmd_login(int argc, char **argv);       /* save server URL + key */
int cmd_train(int argc, char **argv);       /* job client verbs; `train sft --data` runs locally */
int cmd_train_local(int argc, char **argv); /* `lathe train sft --model DIR --data FILE --out DIR` */
int cmd_artifact(int argc, char **argv);    /* dataset|capability|task push|list|show|pull */
int cmd_model(int argc, char **argv);       /* init-tiny, info, logprobs, sample */
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_rl_rank(int argc, char **argv); /* one rank of a distributed GRPO job (mpirun); --check */

#endif
