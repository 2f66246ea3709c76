/* cmd_worker.c: `lathe worker`: worker loops (src/worker/) outside the API server, against the same store and
 * data dir (blobs, models), e.g. on a second machine sharing them, or beside a `lathe serve --workers 0`.
 *
 * Settings follow `lathe serve`: flag > environment > default, with the same environment names. SIGINT and
 * SIGTERM stop the loops cleanly: a running job is stopped after its current step, checkpointed and put back
 * in the queue, to resume on the next claim. SIGXFSZ is ignored so that a file-size limit shows up as a
 * failed write (the job fails with a message saying what to free) instead of killing the process.
 *
 * Options are parsed by the table below (client.h's lc_args: unknown options, missing or empty values are a
 * usage error, exit 2); usage() is the --help text, kept by hand for its environment column and checked
 * against the table by tests/py/test_admin_cli.py (every flag it names is accepted). */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/client.h"
#include "store/db.h"
#include "util/log.h"
#include "util/util.h"
#include "worker/worker.h"

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

static int w_stopping(void *ud) {
    (void)ud;
    return g_stop != 0;
}

static int w_sleep(void *ud, int ms) {
    (void)ud;
    for (int left = ms; left > 0 && !g_stop; left -= 50)
        usleep((useconds_t)(left < 50 ? left : 50) * 1000);
    return g_stop != 0;
}

static void usage(FILE *f) {
    fputs(
        "usage: lathe worker [--data-dir DIR] [--db URL] [--models-dir DIR] [--threads N] [--workers N]\n"
        "                    [--lease-s S] [--once]\n\n"
        "Claims queued training jobs from the store and runs them here, like the workers of `lathe serve`.\n"
        "Flags beat the environment, which beats the default:\n\n"
        "  --data-dir DIR   LATHE_DATA_DIR     data dir shared with the server: blobs, work dirs "
        "(./lathe-data)\n"
        "  --db URL         LATHE_DB           store URL (sqlite:<data dir>/lathe.db)\n"
        "  --models-dir DIR LATHE_MODELS_DIR   base models (<data dir>/models)\n"
        "  --threads N      LATHE_TRAIN_THREADS engine threads per job (default: the cores / --workers)\n"
        "  --workers N      LATHE_WORKERS      worker loops in this process, each runs one job (1)\n"
        "  --lease-s S      LATHE_LEASE_S      job lease; renewed every S/3 s while a job runs (60)\n"
        "  --once                              run at most one job, exit when the queue is empty\n\n"
        "SIGINT/SIGTERM: the running job stops after its step, is checkpointed and goes back to the queue.\n",
        f);
}

static int parse_pos(const char *s, long max, long *out) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s ? s : "", &end, 10);
    if (errno || !s || !*s || *end || v < 1 || v > max) return -1;
    *out = v;
    return 0;
}

typedef struct loop_arg {
    worker_opts *o;
    int index;
} loop_arg;

static void *loop_main(void *p) {
    loop_arg *a = p;
    char ctx[32];
    snprintf(ctx, sizeof ctx, "worker-%d", a->index);
    lt_log_set_context(ctx);
    worker_loop(a->o, a->index);
    return NULL;
}

static const lc_opt worker_flags[] = {
    {"data-dir", LC_STR, "DIR", "data dir shared with the server (LATHE_DATA_DIR; ./lathe-data)"},
    {"db", LC_STR, "URL", "store URL (LATHE_DB; sqlite:<data dir>/lathe.db)"},
    {"blob-dir", LC_STR, "DIR", "blob directory shared with the servers (LATHE_BLOB_DIR; <data dir>/blobs)"},
    {"models-dir", LC_STR, "DIR", "base models (LATHE_MODELS_DIR; <data dir>/models)"},
    {"threads", LC_INT, "N", "engine threads per job (LATHE_TRAIN_THREADS)"},
    {"workers", LC_INT, "N", "worker loops in this process (LATHE_WORKERS; 1)"},
    {"lease-s", LC_INT, "S", "job lease in seconds (LATHE_LEASE_S; 60)"},
    {"once", LC_FLAG, NULL, "run at most one job, exit when the queue is empty"},
    {NULL, 0, NULL, NULL},
};

/* Parses the flags; EXIT_OK to go on, -1 when --help was printed, else the usage exit code. */
static int parse_args(lc_args *a, int argc, char **argv) {
    lt_err err = {0};
    if (lc_args_parse(a, worker_flags, LC_NO_JSON | LC_NONEMPTY, argc, argv, &err)) {
        fprintf(stderr, "lathe worker: %s\n(see lathe worker --help)\n", err.msg);
        return EXIT_USAGE;
    }
    if (lc_flag(a, "help")) {
        usage(stdout);
        return -1;
    }
    if (a->npos) {
        fprintf(stderr, "lathe worker: unexpected argument '%s' (lathe worker takes only options)\n\n",
                a->pos[0]);
        usage(stderr);
        return EXIT_USAGE;
    }
    return EXIT_OK;
}

int cmd_worker(int argc, char **argv) {
    lc_args flags;
    int prc = parse_args(&flags, argc, argv);
    if (prc != EXIT_OK) {
        lc_args_free(&flags);
        return prc < 0 ? EXIT_OK : prc;
    }
    const char *data_dir = lc_arg_or_env(&flags, "data-dir", "LATHE_DATA_DIR", "./lathe-data");
    const char *db_url = lc_arg_or_env(&flags, "db", "LATHE_DB", NULL);
    const char *models_dir = lc_arg_or_env(&flags, "models-dir", "LATHE_MODELS_DIR", NULL);
    const char *blob_dir = lc_arg_or_env(&flags, "blob-dir", "LATHE_BLOB_DIR", NULL);
    if (blob_dir) setenv("LATHE_BLOB_DIR", blob_dir, 1); /* blob_open reads it */
    const char *threads_s = lc_arg_or_env(&flags, "threads", "LATHE_TRAIN_THREADS", NULL);
    const char *workers_s = lc_arg_or_env(&flags, "workers", "LATHE_WORKERS", NULL);
    const char *lease_s = lc_arg_or_env(&flags, "lease-s", "LATHE_LEASE_S", NULL);
    int once = lc_flag(&flags, "once");
    long threads = 0, workers = 1, lease = 60;
    int bad = (threads_s && parse_pos(threads_s, 1024, &threads)) ||
              (workers_s && parse_pos(workers_s, 256, &workers)) ||
              (lease_s && parse_pos(lease_s, 86400, &lease));
    lc_args_free(&flags); /* the strings above live in argv or the environment */
    if (bad) {
        fprintf(stderr, "lathe worker: --threads, --workers and --lease-s take a positive integer\n");
        return EXIT_USAGE;
    }
    const char *lvl = getenv("LATHE_LOG_LEVEL");
    if (lvl && !strcmp(lvl, "debug")) lt_log_set_level(LOG_DEBUG);

    char *url = NULL, *mdir = NULL;
    if (!db_url) {
        size_t n = strlen(data_dir) + 32;
        url = malloc(n);
        if (!url) abort();
        snprintf(url, n, "sqlite:%s/lathe.db", data_dir);
        db_url = url;
    }
    if (!models_dir) models_dir = mdir = lt_path_join(data_dir, "models");

    lt_err err = {0};
    db *d = NULL;
    blob_store *bs = NULL;
    int rc = EXIT_OK;
    if (lt_mkdir_p(data_dir, 0755, &err) != 0 || !(d = db_open(db_url, &err)) || db_migrate(d, &err) != 0 ||
        !(bs = blob_open(data_dir, &err))) {
        fprintf(stderr, "lathe worker: %s\n", err.msg);
        rc = EXIT_FAIL;
        goto out;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN);

    worker_opts o = {.db = d,
                     .blobs = bs,
                     .data_dir = data_dir,
                     .models_dir = models_dir,
                     .lease_s = (int)lease,
                     .threads = threads ? (int)threads : worker_default_threads((int)workers),
                     .once = once,
                     .stopping = w_stopping,
                     .sleep = w_sleep};
    lt_log(LOG_INFO, "lathe worker: store %s, data dir %s, models %s, %ld loop(s)", db_url, data_dir,
           models_dir, workers);
    pthread_t tids[256];
    loop_arg args[256];
    int started = 0;
    for (int i = 1; i < workers; i++) {
        args[i] = (loop_arg){&o, i};
        if (pthread_create(&tids[i], NULL, loop_main, &args[i]) != 0) break;
        started = i;
    }
    args[0] = (loop_arg){&o, 0};
    loop_main(&args[0]);
    for (int i = 1; i <= started; i++)
        pthread_join(tids[i], NULL);
    lt_log(LOG_INFO, "lathe worker: stopped cleanly");
out:
    blob_close(bs);
    db_close(d);
    free(url);
    free(mdir);
    return rc;
}
