/* main.c: the lathe binary's entry point: dispatches argv[1] to a subcommand (see cli.h).
 *
 * The table names every command's function directly: a subcommand that is declared in cli.h but not linked
 * in is a link error, never a run-time surprise. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

typedef int (*cmd_fn)(int, char **);
static const struct {
    const char *name;
    cmd_fn fn;
    const char *help;
} commands[] = {
    {"serve", cmd_serve, "run the API server (and in-process workers)"},
    {"worker", cmd_worker, "run a standalone worker against a store"},
    {"admin", cmd_admin,
     "bootstrap and recovery on the server's store (init, create-user, create-key, grant...)"},
    {"login", cmd_login, "save the server URL and API key for the client verbs"},
    {"train", cmd_train,
     "training jobs: sft|rl|grpo|list|get|wait|watch|logs|artifacts|cancel|retry|catalog"},
    {"dataset", cmd_artifact, "datasets: push|list|show|pull"},
    {"capability", cmd_artifact, "capabilities: push|list|show|pull"},
    {"task", cmd_artifact, "tasks: push|list|show|pull"},
    {"model", cmd_model, "local models: init-tiny|info|logprobs|sample"},
    {"tokenize", cmd_tokenize, "text to token ids with a model's tokenizer"},
    {"detokenize", cmd_detokenize, "token ids to text"},
    {"bench", cmd_bench, "measure: gemm|train|sample"},
    {"rl-rank", cmd_rl_rank,
     "one rank of a distributed GRPO job (run by mpirun); --check tests the MPI setup"},
};

static void usage(FILE *f) {
    fprintf(
        f,
        "lathe %s: self-hosted LoRA fine-tuning service\n\nusage: lathe <command> [args] (--help on any)\n\n",
        LATHE_VERSION);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-11s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : EXIT_OK;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        printf("lathe %s\n", LATHE_VERSION);
        return EXIT_OK;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(argv[1], commands[i].name) != 0) continue;
        return commands[i].fn(argc - 1, argv + 1);
    }
    fprintf(stderr, "lathe: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return EXIT_USAGE;
}
