/* cmd_worker.c: `lathe worker`: worker loops (src/worker/) outside the API server, against the same store and
 * data dir (blobs, models), e.g. on a second machine sharing them, or beside a `lathe serve --workers 0`.
 *
 * Settings follow `lathe serve`: flag > environment > default, with the same environment names. SIGINT and
 * SIGTERM stop the loops cleanly: a running job is stopped after its current step, checkpointed and put back
 * in the queue, to resume on the next claim. SIGXFSZ is ignored so that a file-size limit shows up as a
 * failed write (the job fails with a message saying what to free) instead of killing the process. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
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

static const char *env_or(const char *name, const char *dflt) {
    const char *e = getenv(name);
    return e && *e ? e : dflt;
}

int cmd_worker(int argc, char **argv) {
    const char *data_dir = env_or("LATHE_DATA_DIR", "./lathe-data"), *db_url = env_or("LATHE_DB", NULL);
    const char *models_dir = env_or("LATHE_MODELS_DIR", NULL);
    const char *threads_s = env_or("LATHE_TRAIN_THREADS", NULL), *workers_s = env_or("LATHE_WORKERS", NULL);
    const char *lease_s = env_or("LATHE_LEASE_S", NULL);
    int once = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return EXIT_OK;
        }
        if (!strcmp(a, "--once")) {
            once = 1;
            continue;
        }
        const char **dst = !strcmp(a, "--data-dir")     ? &data_dir
                           : !strcmp(a, "--db")         ? &db_url
                           : !strcmp(a, "--models-dir") ? &models_dir
                           : !strcmp(a, "--threads")    ? &threads_s
                           : !strcmp(a, "--workers")    ? &workers_s
                           : !strcmp(a, "--lease-s")    ? &lease_s
                                                        : NULL;
        if (!dst) {
            fprintf(stderr, "lathe worker: unknown flag '%s'\n\n", a);
            usage(stderr);
            return EXIT_USAGE;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "lathe worker: %s needs a value\n", a);
            return EXIT_USAGE;
        }
        *dst = argv[++i];
    }
    long threads = 0, workers = 1, lease = 60;
    if ((threads_s && parse_pos(threads_s, 1024, &threads)) ||
        (workers_s && parse_pos(workers_s, 256, &workers)) ||
        (lease_s && parse_pos(lease_s, 86400, &lease))) {
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
