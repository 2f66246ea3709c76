/* cmd_serve.c: `lathe serve`: configuration, first-run bootstrap, the server's life, graceful shutdown.
 *
 * Configuration follows docs/spec.md §1: every flag has an environment twin, and a flag beats the
 * environment, which beats the default. The table below is the single source: parsing, --help and the env
 * lookup all walk it, so a new setting is one line.
 *
 * Bootstrap: on a store with no users, create org `default`, workspace `main`, project `default`, an owner
 * user and an API key; the key goes to <data dir>/admin.key (mode 0600) and is printed once. Later starts
 * find users and do nothing.
 *
 * Signals: SIGINT and SIGTERM are blocked before any thread starts (so every thread inherits the mask) and
 * the main thread waits for them with sigwait; then api_server_stop drains in-flight requests and closes the
 * store. Exit status 0 after a clean stop. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "api/http.h"
#include "cli/cli.h"
#include "store/db.h"
#include "store/identity.h"
#include "util/log.h"
#include "util/util.h"
#include "worker/worker.h"

enum { OPT_STR, OPT_INT, OPT_RATE, OPT_SIZE };

typedef struct serve_opt {
    const char *flag; /* "--data-dir" */
    const char *env;  /* "LATHE_DATA_DIR" */
    int kind;
    const char *dflt_text; /* for --help */
    const char *help;
    const char *value; /* resolved text (flag > env), NULL = default */
} serve_opt;

static serve_opt OPTS[] = {
    {"--data-dir", "LATHE_DATA_DIR", OPT_STR, "./lathe-data",
     "data directory: SQLite DB, blobs, models, admin.key", NULL},
    {"--db", "LATHE_DB", OPT_STR, "sqlite:<data dir>/lathe.db",
     "store URL: sqlite:PATH or postgres://USER@HOST:PORT/DB", NULL},
    {"--blob-dir", "LATHE_BLOB_DIR", OPT_STR, "<data dir>/blobs",
     "blob directory (archives, checkpoints, adapters); one shared dir for several servers and workers",
     NULL},
    {"--listen", "LATHE_LISTEN", OPT_STR, "127.0.0.1:8080",
     "HOST:PORT to listen on; port 0 picks a free port", NULL},
    {"--models-dir", "LATHE_MODELS_DIR", OPT_STR, "<data dir>/models", "where base models live (the catalog)",
     NULL},
    {"--workers", "LATHE_WORKERS", OPT_INT, "1", "in-process training workers; 0 = none", NULL},
    {"--rate-limit", "LATHE_RATE_LIMIT", OPT_RATE, "50:100", "per-key token bucket RATE:BURST; 0 = off",
     NULL},
    {"--max-active-jobs", "LATHE_MAX_ACTIVE_JOBS", OPT_INT, "64", "queued+running jobs per workspace", NULL},
    {"--min-client-version", "LATHE_MIN_CLIENT_VERSION", OPT_STR, "(none)",
     "oldest accepted clients, e.g. lathe-cli=0.3.0,dreadnode-sdk=2.0.0 (older: 426)", NULL},
    {"--max-body", "LATHE_MAX_BODY", OPT_SIZE, "1M", "largest JSON request body (bytes; K/M/G suffixes)",
     NULL},
    {"--lease-s", "LATHE_LEASE_S", OPT_INT, "60", "seconds a worker's job lease lasts without a heartbeat",
     NULL},
    {"--worlds-url", "LATHE_WORLDS_URL", OPT_STR, "(none)",
     "environment (Worlds) backend for RL world_* fields", NULL},
    {"--threads", "LATHE_HTTP_THREADS", OPT_INT, "8", "HTTP worker threads", NULL},
    {"--ui", "LATHE_UI", OPT_INT, "1", "the web dashboard at / (0 = off; --no-ui is the same)", NULL},
    {"--keep-alive", "LATHE_KEEP_ALIVE", OPT_INT, "1",
     "0 = close each connection after its response (every request then passes the connection gate)", NULL},
    {"--max-streams", "LATHE_MAX_STREAMS", OPT_INT, "256", "open event streams in all (more: 429)", NULL},
    {"--max-streams-per-key", "LATHE_MAX_STREAMS_PER_KEY", OPT_INT, "32",
     "open event streams per API key (more: 429)", NULL},
    {"--train-threads", "LATHE_TRAIN_THREADS", OPT_INT, "cores / workers", "engine threads per training job",
     NULL},
    /* upload limits: read by the artifact routes from the environment (routes_artifacts.c) */
    {"--upload-max-entries", "LATHE_UPLOAD_MAX_ENTRIES", OPT_SIZE, "10000",
     "entries in one archive (more: 413)", NULL},
    {"--upload-max-file", "LATHE_UPLOAD_MAX_FILE", OPT_SIZE, "2G", "one unpacked file (more: 413)", NULL},
    {"--upload-max-unpacked", "LATHE_UPLOAD_MAX_UNPACKED", OPT_SIZE, "4G", "one archive unpacked (more: 413)",
     NULL},
    {"--upload-max-ratio", "LATHE_UPLOAD_MAX_RATIO", OPT_SIZE, "200",
     "unpacked / archive size past 64 MiB (more: 413)", NULL},
    {"--upload-max-row", "LATHE_UPLOAD_MAX_ROW", OPT_SIZE, "2M",
     "one data row / line / CSV record (more: 413)", NULL},
    {"--upload-max-columns", "LATHE_UPLOAD_MAX_COLUMNS", OPT_SIZE, "10000", "CSV columns (more: 422)", NULL},
    {"--upload-concurrency", "LATHE_UPLOAD_CONCURRENCY", OPT_SIZE, "2",
     "archives checked at once (more: 503 + Retry-After)", NULL},
};
#define NOPTS ((int)(sizeof OPTS / sizeof OPTS[0]))

static void usage(FILE *f) {
    fprintf(f,
            "usage: lathe serve [flags]\n\nRuns the API server (and in-process workers). Every flag has an "
            "environment twin;\na flag beats the environment, which beats the default.\n\n");
    for (int i = 0; i < NOPTS; i++)
        fprintf(f, "  %-22s %-26s %s (default %s)\n", OPTS[i].flag, OPTS[i].env, OPTS[i].help,
                OPTS[i].dflt_text);
    fprintf(f, "  %-22s %-26s %s\n", "--help", "", "this text");
}

static serve_opt *find_opt(const char *flag, size_t n) {
    for (int i = 0; i < NOPTS; i++)
        if (strlen(OPTS[i].flag) == n && !strncmp(OPTS[i].flag, flag, n)) return &OPTS[i];
    return NULL;
}

static int parse_int(const char *s, long min, long max, long *out) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || !*s || *end || v < min || v > max) return -1;
    *out = v;
    return 0;
}

static int parse_size(const char *s, size_t *out) {
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || s[0] == '-') return -1;
    unsigned long long mul = 1;
    if (*end) {
        switch (*end) {
        case 'k':
        case 'K':
            mul = 1ULL << 10;
            break;
        case 'm':
        case 'M':
            mul = 1ULL << 20;
            break;
        case 'g':
        case 'G':
            mul = 1ULL << 30;
            break;
        default:
            return -1;
        }
        end++;
        if (*end == 'i' || *end == 'I') end++;
        if (*end == 'b' || *end == 'B') end++;
        if (*end) return -1;
    }
    if (v == 0 || v > (1ULL << 40) / mul) return -1;
    *out = (size_t)(v * mul);
    return 0;
}

/* Writes the admin key file (0600, atomically) and prints the key once. */
static int write_admin_key(const char *data_dir, const char *key, lt_err *err) {
    char *path = lt_path_join(data_dir, "admin.key");
    char line[STORE_KEY_LEN + 2];
    snprintf(line, sizeof line, "%s\n", key);
    int rc = lt_write_file_atomic(path, line, strlen(line), 0600, err);
    if (rc == 0) chmod(path, 0600);
    free(path);
    return rc;
}

/* On a store without users: the default org tree, an owner and a key (printed once, saved to admin.key). It
 * runs on the server's own store handle (so that sqlite::memory: works too), right after the listener opened
 * and before the "listening" line: a request in that instant finds no keys and gets a 401. */
static int bootstrap_if_empty(const api_config *cfg, db *d, lt_err *err) {
    int64_t users = store_user_count(d, err);
    if (users < 0) return -1;
    if (users > 0) return 0;
    char key[STORE_KEY_LEN];
    store_bootstrap_result r;
    if (store_bootstrap(d, "default", "main", "admin@localhost", key, &r, err) != 0) return -1;
    if (write_admin_key(cfg->data_dir, key, err) != 0) return -1;
    printf("lathe: new store: created org 'default', workspace 'main', project 'default', owner %s\n",
           r.user.email);
    printf("lathe: admin API key (shown once; saved to %s/admin.key): %s\n", cfg->data_dir, key);
    fflush(stdout);
    return 0;
}

/* In-process workers (src/worker/): N loops on server threads, stopped with the server. A running job is
 * stopped after its step at shutdown, checkpointed and put back in the queue. */
static worker_opts g_wopts;
static int g_windex[256];
static int g_train_threads;

static int w_stopping(void *ud) {
    return api_ctx_stopping(ud);
}

static int w_sleep(void *ud, int ms) {
    return api_ctx_sleep(ud, ms);
}

static void worker_thread(api_ctx *ctx, void *arg) {
    worker_loop(&g_wopts, *(int *)arg);
}

static void collect_workers(api_ctx *ctx, strbuf *out) {
    worker_model_stats st;
    worker_model_stats_get(&st);
    sb_printf(
        out,
        "# HELP lathe_worker_base_models_loaded Base models in memory in this process (one copy each, "
        "shared by its jobs).\n# TYPE lathe_worker_base_models_loaded gauge\n"
        "lathe_worker_base_models_loaded %lld\n"
        "# HELP lathe_worker_base_model_users Running jobs holding a loaded base model.\n"
        "# TYPE lathe_worker_base_model_users gauge\nlathe_worker_base_model_users %lld\n"
        "# HELP lathe_worker_base_model_loads_total Base model loads since start.\n"
        "# TYPE lathe_worker_base_model_loads_total counter\nlathe_worker_base_model_loads_total %lld\n"
        "# HELP lathe_worker_base_model_shares_total Jobs that found their base model already loaded.\n"
        "# TYPE lathe_worker_base_model_shares_total counter\nlathe_worker_base_model_shares_total %lld\n",
        (long long)st.loaded, (long long)st.users, (long long)st.loads, (long long)st.shares);
}

static int start_workers(api_ctx *ctx, int n, lt_err *err) {
    api_metrics_add_collector(collect_workers);
    g_wopts = (worker_opts){.db = ctx->db,
                            .blobs = ctx->blobs,
                            .data_dir = ctx->data_dir,
                            .models_dir = ctx->models_dir,
                            .lease_s = ctx->cfg->lease_s,
                            .threads = g_train_threads ? g_train_threads : worker_default_threads(n),
                            .stopping = w_stopping,
                            .sleep = w_sleep,
                            .ud = ctx};
    for (int i = 0; i < n && i < 256; i++) {
        char name[32];
        snprintf(name, sizeof name, "worker-%d", i);
        g_windex[i] = i;
        if (api_ctx_spawn(ctx, name, worker_thread, &g_windex[i], err) != 0) return -1;
    }
    if (n > 0) lt_log(LOG_INFO, "%d in-process worker(s) started", n);
    return 0;
}

int cmd_serve(int argc, char **argv) {
    for (int i = 0; i < NOPTS; i++) {
        const char *e = getenv(OPTS[i].env);
        OPTS[i].value = e && *e ? e : NULL;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--no-ui")) {
            find_opt("--ui", 4)->value = "0";
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return EXIT_OK;
        }
        const char *eq = strchr(a, '=');
        serve_opt *o = find_opt(a, eq ? (size_t)(eq - a) : strlen(a));
        if (!o) {
            fprintf(stderr, "lathe serve: unknown flag '%s'\n\n", a);
            usage(stderr);
            return EXIT_USAGE;
        }
        if (eq) {
            o->value = eq + 1;
        } else {
            if (i + 1 >= argc) {
                fprintf(stderr, "lathe serve: %s needs a value\n", a);
                return EXIT_USAGE;
            }
            o->value = argv[++i];
        }
    }
    api_config cfg;
    api_config_defaults(&cfg);
    for (int i = 0; i < NOPTS; i++) {
        serve_opt *o = &OPTS[i];
        if (!o->value) continue;
        const char *src = o->value;
        long v = 0;
        lt_err err = {0};
        int bad = 0;
        if (!strncmp(o->flag, "--upload-", 9)) {
            size_t sz = 0;
            bad = parse_size(src, &sz);
            if (!bad) setenv(o->env, src, 1); /* the artifact routes read it at start */
        } else if (!strcmp(o->flag, "--data-dir"))
            cfg.data_dir = src;
        else if (!strcmp(o->flag, "--blob-dir"))
            setenv(o->env, src, 1); /* blob_open reads it */
        else if (!strcmp(o->flag, "--db"))
            cfg.db_url = src;
        else if (!strcmp(o->flag, "--listen"))
            cfg.listen = src;
        else if (!strcmp(o->flag, "--models-dir"))
            cfg.models_dir = src;
        else if (!strcmp(o->flag, "--min-client-version")) {
            char need[32];
            if (api_client_too_old(src, "probe/0.0.0", need, &err) < 0) {
                fprintf(stderr, "lathe serve: %s: %s\n", o->flag, err.msg);
                return EXIT_USAGE;
            }
            cfg.min_client_version = src;
        } else if (!strcmp(o->flag, "--worlds-url"))
            cfg.worlds_url = src;
        else if (!strcmp(o->flag, "--workers")) {
            bad = parse_int(src, 0, 256, &v);
            cfg.workers = (int)v;
        } else if (!strcmp(o->flag, "--max-active-jobs")) {
            bad = parse_int(src, 1, 1000000, &v);
            cfg.max_active_jobs = (int)v;
        } else if (!strcmp(o->flag, "--lease-s")) {
            bad = parse_int(src, 1, 86400, &v);
            cfg.lease_s = (int)v;
        } else if (!strcmp(o->flag, "--train-threads")) {
            bad = parse_int(src, 1, 1024, &v);
            g_train_threads = (int)v;
        } else if (!strcmp(o->flag, "--threads")) {
            bad = parse_int(src, 1, 1024, &v);
            cfg.threads = (int)v;
        } else if (!strcmp(o->flag, "--keep-alive")) {
            bad = parse_int(src, 0, 1, &v);
            cfg.no_keep_alive = v == 0;
        } else if (!strcmp(o->flag, "--ui")) {
            bad = parse_int(src, 0, 1, &v);
            cfg.no_ui = v == 0;
        } else if (!strcmp(o->flag, "--max-streams")) {
            bad = parse_int(src, 1, 100000, &v);
            cfg.max_streams = (int)v;
        } else if (!strcmp(o->flag, "--max-streams-per-key")) {
            bad = parse_int(src, 1, 100000, &v);
            cfg.max_streams_per_key = (int)v;
        } else if (!strcmp(o->flag, "--max-body"))
            bad = parse_size(src, &cfg.max_body);
        else if (!strcmp(o->flag, "--rate-limit")) {
            if (api_parse_rate_limit(src, &cfg.rate_per_s, &cfg.rate_burst, &err) != 0) {
                fprintf(stderr, "lathe serve: %s: %s\n", o->flag, err.msg);
                return EXIT_USAGE;
            }
        }
        if (bad) {
            fprintf(stderr, "lathe serve: %s (or %s) '%s' is not a valid value (default %s)\n", o->flag,
                    o->env, src, o->dflt_text);
            return EXIT_USAGE;
        }
    }
    const char *lvl = getenv("LATHE_LOG_LEVEL");
    if (lvl && !strcmp(lvl, "debug")) lt_log_set_level(LOG_DEBUG);

    lt_err err = {0};
    if (lt_mkdir_p(cfg.data_dir, 0755, &err) != 0) {
        fprintf(stderr, "lathe serve: cannot create data dir: %s\n", err.msg);
        return EXIT_FAIL;
    }
    char *db_url = NULL;
    if (!cfg.db_url) {
        size_t n = strlen(cfg.data_dir) + 32;
        db_url = malloc(n);
        if (!db_url) abort();
        snprintf(db_url, n, "sqlite:%s/lathe.db", cfg.data_dir);
        cfg.db_url = db_url;
    }
    /* Block the stop signals before any thread exists, so that all inherit the mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN); /* a file-size limit: failed writes (the job fails and says so), not a kill */

    api_server *srv = api_server_start(&cfg, &err);
    if (!srv) {
        fprintf(stderr, "lathe serve: %s\n", err.msg);
        free(db_url);
        return EXIT_FAIL;
    }
    if (bootstrap_if_empty(&cfg, api_server_ctx(srv)->db, &err) != 0) {
        fprintf(stderr, "lathe serve: first-start bootstrap failed: %s\n", err.msg);
        api_server_stop(srv);
        free(db_url);
        return EXIT_FAIL;
    }
    if (start_workers(api_server_ctx(srv), cfg.workers, &err) != 0) {
        fprintf(stderr, "lathe serve: cannot start the workers: %s\n", err.msg);
        api_server_stop(srv);
        free(db_url);
        return EXIT_FAIL;
    }
    const char *host = api_server_host(srv);
    int v6 = strchr(host, ':') != NULL;
    printf("lathe: listening on http://%s%s%s:%d\n", v6 ? "[" : "", host, v6 ? "]" : "",
           api_server_port(srv));
    fflush(stdout);
    char shown_url[512];
    lt_log(LOG_INFO, "serving; data dir %s, store %s, rate limit %g:%g", cfg.data_dir,
           db_url_redacted(cfg.db_url, shown_url, sizeof shown_url), cfg.rate_per_s, cfg.rate_burst);
    int sig = 0;
    while (sigwait(&set, &sig) != 0) {
    }
    lt_log(LOG_INFO, "received %s: finishing in-flight requests", sig == SIGINT ? "SIGINT" : "SIGTERM");
    api_server_stop(srv);
    lt_log(LOG_INFO, "stopped cleanly");
    free(db_url);
    return EXIT_OK;
}
